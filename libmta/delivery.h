/*
 * delivery.h - the scheduler and outbound SMTP: from the due index to the
 * destination's mail servers, with retries and bounces.
 *
 * DESCRIPTION
 *	mta_delivery_start() starts delivering on the loop: it scans the
 *	spool's due index now, then whenever the next entry falls due or
 *	mta_delivery_kick() says new mail was committed.  Every due message
 *	is loaded (one short read transaction), its pending recipients are
 *	grouped by destination (the lower-cased recipient domain, or the
 *	relayhost) and each group becomes a job on that destination's queue.
 *
 *	A destination opens connections as its queue demands: one at first,
 *	one more for every ten jobs waiting, at most
 *	delivery.max_per_destination, and delivery.max_connections in all.
 *	A connection resolves the route (MX in preference order, the
 *	domain itself when there is no MX, the relayhost's address records
 *	in relayhost mode), walks the hosts and their addresses (IPv4 and
 *	IPv6) until one carries the SMTP session, and then delivers job
 *	after job from the queue over that session (RSET/MAIL reuse) before
 *	it says QUIT.
 *
 *	Outcomes per recipient (DESIGN.md, conformance §5.12): 2xx sent; 5xx
 *	bounced; a 4xx reply deferred; a host that fails before or during a
 *	transaction (connection refused, 421, timeout, a TLS level it cannot
 *	meet) sends the undecided recipients to the next address, then the
 *	next MX host, and only when none is left are they deferred with the
 *	last reason.  DNS: NXDOMAIN bounces 5.1.2, a null MX bounces 5.1.10,
 *	SERVFAIL/timeout/bogus defers 4.4.3 and never falls back to the
 *	domain's address records.  When every host of a destination failed
 *	at connection level, every job waiting for it gets the same outcome
 *	(the destination is dead for this round).
 *
 *	When all jobs of a message are finished its new state goes to the
 *	writer in one update: per-recipient state, the next due time (backoff
 *	from queue.h) or removal when nothing is pending, and at most one DSN
 *	(dsn.h) for the recipients that failed or, with NOTIFY=SUCCESS, were
 *	relayed to a peer without DSN, stored in the same transaction.
 *
 *	TLS: the level comes from tls.default_level (issue #4 adds the
 *	policy table, DANE and MTA-STS at the seam host_level() in
 *	delivery.c): none never starts TLS; may uses STARTTLS when offered;
 *	encrypt requires it; verify requires it and a certificate valid in
 *	the WebPKI (tls.ca_file) for the MX host name; a relayhost with
 *	credentials requires TLS before AUTH PLAIN.  SNI is the host name.
 *
 *	mta_delivery_stop() closes every connection without recording the
 *	outcome of unfinished jobs (their messages keep their due entries
 *	and are tried again after a restart: at least once, never lost),
 *	waits for updates already handed to the writer, then calls done.
 *
 * LOG
 *	One line per recipient attempt: event=delivery qid to relay delay
 *	dsn status (sent, deferred, bounced) tls auth response; event=dsn
 *	when a bounce is queued; event=connect_failed per address.
 *
 * THREADS
 *	Loop thread; spool reads on the loop (short transactions, bodies in
 *	16 KiB pieces), every write through the writer thread.
 *
 * OWNERSHIP
 *	The params' pointers are borrowed and must outlive the delivery.
 *
 * STANDARDS
 *	RFC 5321 §4.5.4 (retries), §5.1 (MX), RFC 7505 (null MX), RFC 3461
 *	and 3464 (DSN), RFC 3207 (STARTTLS), RFC 4954 (AUTH PLAIN to the
 *	relayhost).
 */
#ifndef MTA_DELIVERY_H
#define MTA_DELIVERY_H

#include "config.h"
#include "dns.h"
#include "metrics.h"
#include "mtasts.h"
#include "tlspolicy.h"
#include "spool.h"
#include "tls.h"
#include "writer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct mta_delivery;
/* delivery.routes_file and delivery.shaping_file, parsed (routes.h,
 * shaping.h), with the site state of each shaping rule. */
struct mta_delivery_tables;

struct mta_delivery_params {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	struct mta_dns *dns;
	const struct mta_tls_creds *tls; /* client credentials */
	bool webpki;			 /* tls has tls.ca_file's trust */
	const struct mta_tlspolicy *policy; /* tls.policy_file, or NULL */
	const struct mta_ct_loglist *ct;    /* tls.ct_log_list, or NULL */
	struct mta_mtasts *mtasts;	    /* MTA-STS resolver, or NULL */
	const char *auth_user;		 /* relayhost AUTH, or NULL */
	const char *auth_pass;
	const char *auth_plain;		 /* or this (smtp_client.h) */
	struct mta_metrics *metrics;	 /* counters (metrics.h), or NULL */
	/* from mta_delivery_tables_load(), taken over by start and
	 * reconfigure (freed by the delivery, also when start fails);
	 * NULL: start loads cfg's files itself, reconfigure keeps its
	 * tables */
	struct mta_delivery_tables *tables;
};

/* Reads cfg's delivery.routes_file and delivery.shaping_file (each may be
 * unset: an empty table set) and checks them (auth= needs have_auth, the
 * relayhost credentials).  MTA_ECONFIG with "file:line: why" in err,
 * -ENOMEM; nothing is logged. */
int mta_delivery_tables_load(const struct mta_config *cfg, bool have_auth,
			     struct mta_delivery_tables **out, char *err,
			     size_t errlen);
void mta_delivery_tables_free(struct mta_delivery_tables *t);

int mta_delivery_start(const struct mta_delivery_params *p,
		       struct mta_delivery **out);
void mta_delivery_kick(struct mta_delivery *d);
/* Messages loaded for delivery now (in flight until their outcome is
 * committed): the control socket waits for them before changing one. */
bool mta_delivery_active(struct mta_delivery *d, const char *qid);
int mta_delivery_foreach_active(struct mta_delivery *d,
				int (*cb)(void *ud, const char *qid), void *ud);
/* What delivery decides with, for mtactl explain (explain.h): borrowed
 * pointers valid while the delivery runs, and the DNSSEC self-test state
 * now. */
struct mta_delivery_env {
	const struct mta_config *cfg;
	struct mta_dns *dns;
	const struct mta_tls_creds *tls;
	bool webpki;
	const struct mta_tlspolicy *policy;
	struct mta_mtasts *mtasts;
	enum mta_tls_level default_level;
	bool dnssec_ok, selftest_done;
	const char *relay_host; /* NULL: MX delivery */
	unsigned relay_port;
	bool relay_auth;
	const struct mta_routes *routes; /* delivery.routes_file, or NULL */
};
void mta_delivery_env(const struct mta_delivery *d,
		      struct mta_delivery_env *out);
/* DNSSEC self-test: 1 passing, 0 failing, -1 no verdict yet. */
int mta_delivery_dnssec_state(const struct mta_delivery *d);
/* Messages loaded for delivery now; connections open now. */
size_t mta_delivery_nactive(const struct mta_delivery *d);
size_t mta_delivery_nconn(const struct mta_delivery *d);
/* Reload (SIGHUP): from now on new decisions use p's cfg, tls, webpki,
 * policy, ct (and the backoff, lifetime and default level of p->cfg);
 * connections already open go on with what they started with where they
 * keep it (their TLS session holds its credentials).  The caller keeps
 * the old pointers alive until mta_delivery_nconn() has been 0 once
 * after the call.  delivery.relayhost is parsed again (jobs already
 * queued for the old relayhost go to the new one).  loop, spool, writer,
 * dns, mtasts and metrics do not change.
 * Tables (p->tables): every message routed from now on uses the new
 * routing table; a destination created under the old table keeps its
 * rule and delivers the jobs already queued on it (the old table is
 * reference counted by such destinations and freed with the last).
 * Shaping sites whose pattern the new table keeps carry their state
 * over (mta_shaping_site_carry(): a throttled rate stays throttled) and
 * count the open connections they had; a site whose pattern is gone
 * lets its connections finish unshaped. */
void mta_delivery_reconfigure(struct mta_delivery *d,
			      const struct mta_delivery_params *p);
/* Per shaping site now (control SITES, metrics): calls cb once per rule
 * of the shaping table in force, in table order; stops at cb's first
 * non-zero return and returns it. */
struct mta_delivery_site {
	const char *site;	 /* the rule's pattern */
	unsigned line;		 /* in delivery.shaping_file */
	unsigned nconn;		 /* connections open now */
	unsigned max_conn;	 /* connections=, 0 = no limit */
	double rate;		 /* messages per minute now, 0 = no limit */
	double ceiling;		 /* what recovery returns to, 0 = none */
	uint64_t sent, throttles;
	int64_t next_ms;	 /* until the next message may start, >= 0 */
};
int mta_delivery_foreach_site(const struct mta_delivery *d,
			      int (*cb)(void *ud,
					const struct mta_delivery_site *s),
			      void *ud);
/* TLSRPT-SEND: a reporter round now (tlsrpt_send.h
 * mta_tlsrpt_sender_run()); MTA_ECLOSED when tlsrpt.enabled is 0. */
int mta_delivery_tlsrpt_send(struct mta_delivery *d, const char *day,
			     void (*line)(void *ud, const char *text),
			     void (*done)(void *ud, int rc), void *ud);
void mta_delivery_tlsrpt_detach(struct mta_delivery *d, void *ud);
void mta_delivery_stop(struct mta_delivery *d, void (*done)(void *arg),
		       void *arg);

#endif
