/*
 * delivery_int.h - what the files of the delivery module share:
 * delivery.c (scheduler, messages, destinations, DSNs, start/stop) and
 * delivery_conn.c (one outbound connection: route, TLS policy, SMTP) and
 * delivery_evidence.c (TLS report counters, key continuity, CT).
 * Private to those files; delivery.h is the module's interface.
 */
#ifndef MTA_DELIVERY_INT_H
#define MTA_DELIVERY_INT_H

#include "delivery.h"
#include "metrics.h"

#include "dane.h"
#include "dsn.h"
#include "mtasts.h"
#include "err.h"
#include "log.h"
#include "policy.h"
#include "queue.h"
#include "route.h"
#include "routes.h"
#include "shaping.h"
#include "smtp_client.h"
#include "stream.h"
#include "tlspolicy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>

#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define SCAN_BATCH 1000	      /* due entries looked at per scan */
#define MAX_INFLIGHT 20000    /* messages loaded at once */
#define HASH_SIZE 4096	      /* in-flight messages by qid */
#define MAX_HOSTS 16	      /* MX hosts tried per connection */
#define MAX_ADDRS 8	      /* addresses tried per host */
#define JOBS_PER_CONN 10      /* another connection per this many waiting */
#define BODY_PIECE 16384
#define WRITE_HIGH (256 * 1024)

enum rstate { R_UNDECIDED = 0, R_TENTATIVE, R_FINAL };

struct msg;
struct dest;

/* A routing table in use: one reference while it is the current one, one
 * per destination routed by one of its rules (dest.route points into
 * it), so a reload frees the old table only after the last of those. */
struct dlv_rtab {
	struct mta_routes *r;
	unsigned refs;
};

struct mta_delivery_tables {
	struct dlv_rtab *rtab;		/* or NULL: no routes_file */
	struct mta_shaping *shaping;	/* or NULL */
	struct mta_shaping_site *sites; /* one per shaping rule */
	size_t nsites;
};

struct job {
	struct job *next;
	struct msg *m;
	struct dest *dest;
	size_t nrcpt;
	size_t *rcpts;	    /* indexes into m->env.rcpts */
	uint8_t *rstate;    /* enum rstate per entry */
	int *tcode;	    /* tentative 4xx results */
	char (*tstatus)[16];
	char **ttext;
	bool peer_dsn;	    /* the accepting peer offered DSN */
	const char *skipped; /* MX hosts skipped, "host:reason ..." (the
			      * connection's, which outlives the job) */
};

struct msg {
	struct msg *hnext;
	struct mta_delivery *d;
	char qid[MTA_QID_LEN + 1];
	int64_t due_key;
	struct mta_envelope env;
	uint8_t *was_pending;
	char (*fstatus)[16]; /* status of this attempt's outcome */
	bool *relayed; /* sent to a peer without DSN */
	unsigned jobs_open;
	struct mta_commit commit;
	struct mta_envelope dsn_env;
	struct mta_body dsn_body;
	char dsn_qid_buf[MTA_QID_LEN + 1];
	uint32_t jitter; /* drawn once per attempt, in [0, 2000) */
};

struct dest {
	struct dest *next;
	char name[300];
	bool relay;
	/* routing (routes.h): the rule that sent the jobs here, or NULL for
	 * the plain MX / delivery.relayhost destination; a relay's host */
	const struct mta_routes_rule *route;
	struct dlv_rtab *rtab; /* holds route's table (NULL with route) */
	bool fallback;	     /* the route's fallback relay */
	char host[MTA_DNS_NAME_MAX]; /* relay: host name or [literal] */
	unsigned port;	     /* relay: port */
	/* shaping (shaping.h): the site, once a connection found it */
	bool site_known;
	struct mta_shaping_site *site;
	enum mta_tlsreq tlsreq; /* of its messages */
	struct job *q_head, *q_tail;
	size_t nq;
	unsigned nconn;
};

enum cphase {
	C_RESOLVE,
	C_HOSTS,
	C_CONNECTING,
	C_SMTP,
	C_CLOSING,
};

struct conn {
	struct conn *prev, *next;
	struct mta_delivery *d;
	struct dest *dest;
	enum cphase phase;
	struct mta_dns_query *q;
	struct mta_route_host hosts[MAX_HOSTS];
	size_t nhosts, hi;
	struct sockaddr_storage addrs[MAX_ADDRS];
	size_t naddrs, ai;
	struct mta_stream st; /* this attempt's socket, timer and TLS */
	bool tcp_open;	      /* st initialised, not yet closed */
	uv_timer_t timer;     /* the connection's life: closed last */
	void (*after_close)(struct conn *c);
	struct mta_smtpc smtpc;
	struct mta_smtpc_config scfg;
	bool smtpc_live;
	char tls_desc[128];
	char relay[MTA_DNS_NAME_MAX + 80]; /* host[ip]:port of this attempt */
	struct job *job;
	bool txn_started, txn_done;
	struct mta_smtpc_txn txn;
	uint64_t body_off;
	bool in_drive;
	/* policy: per destination, then per host (DESIGN.md "Outbound
	 * policy") */
	bool mx_secure;	 /* the MX RRset (or its absence) validated */
	char nexthop_cname[MTA_DNS_NAME_MAX]; /* CNAME-expanded domain */
	bool has_table;	 /* a tls.policy_file entry applies */
	enum mta_tls_level table_level;
	enum mta_policy_addr addr; /* the current host's address status */
	enum mta_policy_tlsa tlsa_state;
	const char *why;	   /* detail of the last failed lookup */
	struct mta_policy pol;	   /* policy.c's decision for the host */
	char tlsa_base[MTA_DNS_NAME_MAX];
	char tlsa_alt[MTA_DNS_NAME_MAX]; /* second candidate base, or "" */
	struct mta_dns_tlsa tlsa[MTA_DANE_TLSA_MAX];
	uint8_t *tlsa_data; /* owns every tlsa[i].data */
	size_t ntlsa;	    /* records of the set (may exceed the array) */
	char auth[200]; /* log: "dane 3 1 1", "verify", "none" */
	/* MTA-STS policy of the destination (mode testing or enforce) */
	struct mta_mtasts_query *sq;
	struct mta_sts_policy *sts;
	enum mta_policy_sts sts_state;
	char sts_id[MTA_STS_ID_MAX + 1];
	/* last host failure, for the final deferral */
	int lcode;
	char lstatus[16];
	char ltext[512];
	char ltls[128];	 /* channel of the failed attempt, for the log */
	char lauth[200]; /* and its authentication outcome */
	bool any_session; /* some host answered SMTP */
	char skipped[256]; /* hosts not tried: "host:reason ..." (evidence) */
	/* RFC 7672 §2.2, RFC 7435: at level may, a failed handshake is
	 * retried in cleartext on a new connection to the same address */
	bool hs_failed;	    /* this connection's TLS handshake failed */
	bool clear_retry;   /* the current attempt is that retry */
	char hs_error[200]; /* why the handshake failed */
	/* routing and shaping */
	bool relay_auth;		/* AUTH PLAIN on this hop */
	struct mta_shaping_site *site; /* holds one of its connections */
	unsigned nmsgs;			/* messages started on this conn */
	uint32_t rtls_failed; /* hosts (bits) refused for REQUIRETLS */
};

struct mta_delivery {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	struct mta_dns *dns;
	const struct mta_tls_creds *tls;
	bool webpki;
	const char *auth_user, *auth_pass, *auth_plain;
	struct mta_queue_policy pol;
	uv_timer_t scan_timer;
	int64_t scan_at; /* -1: not armed */
	/* Due entries before the cursor are all in flight: new entries are
	 * only ever inserted at or after "now" (arrivals, retries, DSNs),
	 * so a scan resumes there.  A full scan now and then (and after a
	 * failed update) is the safety net. */
	int64_t cur_due;
	char cur_qid[MTA_QID_LEN + 1];
	int64_t full_scan_at;
	bool scanning;
	struct msg *inflight[HASH_SIZE];
	size_t ninflight;
	struct dest *dests;
	struct conn *conns;
	unsigned nconn;
	unsigned commits_pending;
	uint32_t seq;
	bool stopping;
	void (*done)(void *arg);
	void *done_arg;
	enum mta_tls_level level; /* tls.default_level */
	const struct mta_tlspolicy *policy;
	const struct mta_ct_loglist *ct; /* tls.ct_log_list, or NULL */
	struct mta_mtasts *mtasts;
	struct mta_tlsrpt_sender *tlsrpt; /* tlsrpt.enabled, or NULL */
	uv_timer_t selftest_timer;
	struct mta_dns_query *selftest_q;
	bool dnssec_ok;	      /* last DNSSEC self-test passed */
	bool selftest_done;   /* at least one result */
	struct mta_metrics *metrics; /* or NULL */
	char relay_host[MTA_DNS_NAME_MAX];
	unsigned relay_port;
	struct mta_stream_scratch scratch; /* receive buffer of every conn */
	struct dlv_rtab *rtab;		   /* current routing table, or NULL */
	struct mta_routes *routes;	   /* rtab->r: delivery.routes_file */
	struct mta_shaping *shaping;	   /* delivery.shaping_file, or NULL */
	struct mta_shaping_site *sites;	   /* one per shaping rule */
	size_t nsites;
};

int64_t dlv_now_us(void);
uint32_t dlv_rnd(void);
void dlv_record(struct msg *m, size_t r, int code, const char *status,
		   const char *text, const char *relay, const char *tls,
		   const char *auth, const char *skipped);
void dlv_job_free(struct job *j);
void dlv_job_finish(struct job *j, int code, const char *status,
		       const char *text, const char *relay, const char *tls,
		       const char *auth);
void dlv_job_reopen(struct job *j);
size_t dlv_job_undecided(const struct job *j, size_t *out);
void dlv_dest_maybe_free(struct mta_delivery *d, struct dest *ds);
struct job *dlv_dest_take(struct dest *ds);
void dlv_dest_fail_all(struct dest *ds, int code, const char *status,
			  const char *text, const char *relay);
void dlv_dest_pump(struct mta_delivery *d, struct dest *ds);
void dlv_msg_job_done(struct msg *m);
void dlv_maybe_stopped(struct mta_delivery *d);
void dlv_conn_close(struct conn *c, void (*after)(struct conn *c));
void dlv_after_close_end(struct conn *c);
void dlv_conn_start(struct mta_delivery *d, struct dest *ds);
bool dlv_dest_may_connect(const struct mta_delivery *d,
			  const struct dest *ds);

/* delivery_evidence.c: counts one RFC 8460 session result of the current
 * host under policy type ptype (with its policy note). */
void dlv_tlsrpt_count(struct conn *c, const char *ptype, const char *result);
/* Key continuity of the current MTA-STS host's leaf and issuer (hex SPKI
 * hashes) against the spool's record of the destination. */
enum mta_policy_cont dlv_continuity_check(struct conn *c, const char *leaf,
					  const char *issuer);
/* After the verdict: CT and continuity log lines and metrics, and the
 * key record update (learn, or seen-pending when held). */
void dlv_ct_continuity_after(struct conn *c,
			     const struct mta_policy_check *chk,
			     const struct mta_policy_verdict *v,
			     const char *leaf, const char *issuer);

#endif
