#include "delivery.h"

#include "dane.h"
#include "dsn.h"
#include "mtasts.h"
#include "err.h"
#include "log.h"
#include "queue.h"
#include "smtp_client.h"
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
	struct {
		char name[MTA_DNS_NAME_MAX];
		unsigned port;
	} hosts[MAX_HOSTS];
	size_t nhosts, hi;
	struct sockaddr_storage addrs[MAX_ADDRS];
	size_t naddrs, ai;
	uv_tcp_t tcp;
	bool tcp_open;
	uv_timer_t timer;
	uv_connect_t creq;
	uv_shutdown_t sreq;
	void (*after_close)(struct conn *c);
	struct mta_smtpc smtpc;
	struct mta_smtpc_config scfg;
	bool smtpc_live;
	struct mta_tls tls;
	bool tls_on;
	char tls_desc[128];
	char relay[MTA_DNS_NAME_MAX + 80]; /* host[ip]:port of this attempt */
	struct job *job;
	bool txn_started, txn_done;
	struct mta_smtpc_txn txn;
	uint64_t body_off;
	size_t write_pending;
	bool in_drive;
	/* policy: per destination, then per host (DESIGN.md "Outbound
	 * policy") */
	bool mx_secure;	 /* the MX RRset (or its absence) validated */
	char nexthop_cname[MTA_DNS_NAME_MAX]; /* CNAME-expanded domain */
	int table_level; /* tls.policy_file entry, or -1 */
	int level;	 /* effective level for the current host */
	int dane;	 /* 0 none, 1 usable TLSA, 2 only unusable TLSA */
	char tlsa_base[MTA_DNS_NAME_MAX];
	char tlsa_alt[MTA_DNS_NAME_MAX]; /* second candidate base, or "" */
	struct mta_dns_tlsa tlsa[MTA_DANE_TLSA_MAX];
	uint8_t *tlsa_data; /* owns every tlsa[i].data */
	size_t ntlsa;
	char auth[200]; /* log: "dane 3 1 1", "verify", "none" */
	/* MTA-STS policy of the destination (mode testing or enforce) */
	struct mta_mtasts_query *sq;
	struct mta_sts_policy *sts;
	char sts_id[MTA_STS_ID_MAX + 1];
	bool sts_host; /* the policy applies to the current host */
	/* last host failure, for the final deferral */
	int lcode;
	char lstatus[16];
	char ltext[512];
	char ltls[128];	 /* channel of the failed attempt, for the log */
	char lauth[200]; /* and its authentication outcome */
	bool any_session; /* some host answered SMTP */
};

struct mta_delivery {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	struct mta_dns *dns;
	const struct mta_tls_creds *tls;
	bool webpki;
	const char *auth_user, *auth_pass;
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
	int level; /* tls.default_level (enum mta_tls_level) */
	const struct mta_tlspolicy *policy;
	struct mta_mtasts *mtasts;
	uv_timer_t selftest_timer;
	struct mta_dns_query *selftest_q;
	bool dnssec_ok;	      /* last DNSSEC self-test passed */
	bool selftest_done;   /* at least one result */
	char relay_host[MTA_DNS_NAME_MAX];
	unsigned relay_port;
};


static void conn_drive(struct conn *c);
static void conn_next_addr(struct conn *c);
static void conn_next_host(struct conn *c);
static void conn_close(struct conn *c, void (*after)(struct conn *c));
static void host_ready(struct conn *c);
static void on_mx(const struct mta_dns_result *res, void *ud);
static void sts_testing_failure(struct conn *c, const char *what,
				const char *why);
static void dest_pump(struct mta_delivery *d, struct dest *ds);
static void msg_job_done(struct msg *m);
static void maybe_stopped(struct mta_delivery *d);

static int64_t now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static uint32_t rnd(void)
{
	uint32_t r = 0;
	if (getrandom(&r, sizeof(r), 0) != sizeof(r))
		r = (uint32_t)now_us();
	return r;
}

static unsigned hash_qid(const char *q)
{
	unsigned h = 5381;
	for (; *q; q++)
		h = h * 33 + (unsigned char)*q;
	return h % HASH_SIZE;
}

static struct msg *inflight_find(struct mta_delivery *d, const char *qid)
{
	for (struct msg *m = d->inflight[hash_qid(qid)]; m; m = m->hnext)
		if (strcmp(m->qid, qid) == 0)
			return m;
	return NULL;
}

static void inflight_del(struct mta_delivery *d, struct msg *m)
{
	struct msg **pp = &d->inflight[hash_qid(m->qid)];
	for (; *pp; pp = &(*pp)->hnext) {
		if (*pp == m) {
			*pp = m->hnext;
			d->ninflight--;
			return;
		}
	}
}

/* ---- logging and outcomes ------------------------------------------ */

static const char *state_word(int st)
{
	switch (st) {
	case MTA_RCPT_SENT:
		return "sent";
	case MTA_RCPT_BOUNCED:
		return "bounced";
	default:
		return "deferred";
	}
}

/* Records the outcome of one attempt for env recipient r and logs it. */
static void record(struct msg *m, size_t r, int code, const char *status,
		   const char *text, const char *relay, const char *tls,
		   const char *auth)
{
	struct mta_delivery *d = m->d;
	struct mta_queue_outcome o = {code, status, text, relay};
	char fs[16] = "";
	struct mta_logline ll;
	int64_t now = now_us();
	int st;

	/* one jitter per message attempt: recipients deferred together
	 * are retried together (CLI-12) */
	st = mta_queue_apply(&d->pol, &m->env, r, &o, now, m->jitter, fs,
			     sizeof(fs));
	memcpy(m->fstatus[r], fs, sizeof(fs));
	{
		/* the decision and its evidence stay with the recipient */
		char ev[400];
		snprintf(ev, sizeof(ev), "tls=%s auth=%s",
			 tls && tls[0] ? tls : "none",
			 auth && auth[0] ? auth : "none");
		(void)mta_envelope_set_str(&m->env.rcpts[r].evidence, ev);
	}
	mta_log_begin(&ll, st == MTA_RCPT_SENT ? MTA_LOG_INFO : MTA_LOG_WARN,
		      "delivery");
	mta_log_str(&ll, "qid", m->qid);
	mta_log_str(&ll, "to", m->env.rcpts[r].addr);
	mta_log_str(&ll, "relay", relay ? relay : "none");
	mta_log_fmt(&ll, "delay", "%.1f",
		    (double)(now - m->env.arrival_us) / 1e6);
	mta_log_str(&ll, "dsn", fs);
	mta_log_str(&ll, "status", st < 0 ? "error" : state_word(st));
	mta_log_str(&ll, "tls", tls && tls[0] ? tls : "none");
	mta_log_str(&ll, "auth", auth && auth[0] ? auth : "none");
	mta_log_str(&ll, "response", text);
	mta_log_end(&ll);
}

/* ---- jobs ----------------------------------------------------------- */

static void job_free(struct job *j)
{
	if (j == NULL)
		return;
	for (size_t i = 0; i < j->nrcpt; i++)
		free(j->ttext[i]);
	free(j->rcpts);
	free(j->rstate);
	free(j->tcode);
	free(j->tstatus);
	free(j->ttext);
	free(j);
}

static struct job *job_new(struct msg *m, struct dest *ds, size_t cap)
{
	struct job *j = calloc(1, sizeof(*j));
	if (j == NULL)
		return NULL;
	j->m = m;
	j->dest = ds;
	j->rcpts = calloc(cap, sizeof(*j->rcpts));
	j->rstate = calloc(cap, 1);
	j->tcode = calloc(cap, sizeof(*j->tcode));
	j->tstatus = calloc(cap, sizeof(*j->tstatus));
	j->ttext = calloc(cap, sizeof(*j->ttext));
	if (!j->rcpts || !j->rstate || !j->tcode || !j->tstatus ||
	    !j->ttext) {
		job_free(j);
		return NULL;
	}
	return j;
}

/* Every undecided recipient of j gets this outcome; then j ends. */
static void job_finish(struct job *j, int code, const char *status,
		       const char *text, const char *relay, const char *tls,
		       const char *auth)
{
	struct msg *m = j->m;

	for (size_t i = 0; i < j->nrcpt; i++) {
		if (j->rstate[i] == R_FINAL)
			continue;
		if (j->rstate[i] == R_TENTATIVE)
			record(m, j->rcpts[i], j->tcode[i], j->tstatus[i],
			       j->ttext[i], relay, tls, auth);
		else
			record(m, j->rcpts[i], code, status, text, relay,
			       tls, auth);
		j->rstate[i] = R_FINAL;
	}
	job_free(j);
	msg_job_done(m);
}

/* Tentative results (4xx inside a transaction) become undecided again:
 * the host failed, the next one gets another chance. */
static void job_reopen(struct job *j)
{
	for (size_t i = 0; i < j->nrcpt; i++)
		if (j->rstate[i] == R_TENTATIVE)
			j->rstate[i] = R_UNDECIDED;
}

static size_t job_undecided(const struct job *j, size_t *out)
{
	size_t n = 0;
	for (size_t i = 0; i < j->nrcpt; i++)
		if (j->rstate[i] == R_UNDECIDED)
			out[n++] = j->rcpts[i];
	return n;
}

/* ---- destinations --------------------------------------------------- */

static struct dest *dest_get(struct mta_delivery *d, const char *name,
			     bool relay)
{
	struct dest *ds;

	for (ds = d->dests; ds; ds = ds->next)
		if (strcmp(ds->name, name) == 0)
			return ds;
	ds = calloc(1, sizeof(*ds));
	if (ds == NULL)
		return NULL;
	snprintf(ds->name, sizeof(ds->name), "%s", name);
	ds->relay = relay;
	ds->next = d->dests;
	d->dests = ds;
	return ds;
}

static void dest_maybe_free(struct mta_delivery *d, struct dest *ds)
{
	if (ds->nq > 0 || ds->nconn > 0)
		return;
	for (struct dest **pp = &d->dests; *pp; pp = &(*pp)->next) {
		if (*pp == ds) {
			*pp = ds->next;
			free(ds);
			return;
		}
	}
}

static struct job *dest_take(struct dest *ds)
{
	struct job *j = ds->q_head;
	if (j == NULL)
		return NULL;
	ds->q_head = j->next;
	if (ds->q_head == NULL)
		ds->q_tail = NULL;
	ds->nq--;
	j->next = NULL;
	return j;
}

/* The destination is dead for this round: every waiting job shares the
 * outcome of the connection that found out. */
static void dest_fail_all(struct dest *ds, int code, const char *status,
			  const char *text, const char *relay)
{
	struct job *j;
	while ((j = dest_take(ds)) != NULL)
		job_finish(j, code, status, text, relay, NULL, NULL);
}

/* ---- connections: plumbing ------------------------------------------ */

static void conn_free(struct conn *c)
{
	struct mta_delivery *d = c->d;
	struct dest *ds = c->dest;

	if (c->prev)
		c->prev->next = c->next;
	else
		d->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	d->nconn--;
	ds->nconn--;
	free(c->tlsa_data);
	free(c->sts);
	free(c);
	if (!d->stopping)
		dest_pump(d, ds);
	dest_maybe_free(d, ds);
	/* a freed slot may let another destination start */
	if (!d->stopping)
		for (struct dest *o = d->dests; o; o = o->next)
			if (o->nq > 0)
				dest_pump(d, o);
	maybe_stopped(d);
}

static void on_timer_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	conn_free(c);
}

/* The connection is finished for good (after its socket closed). */
static void conn_end(struct conn *c)
{
	struct job *j = c->job;

	c->job = NULL;
	if (j != NULL) {
		/* undecided recipients wait for the next round */
		job_finish(j, c->lcode, c->lstatus[0] ? c->lstatus : "4.4.1",
			   c->ltext[0] ? c->ltext : "delivery interrupted",
			   c->relay[0] ? c->relay : NULL, c->ltls, c->lauth);
	}
	if (c->q != NULL) {
		mta_dns_cancel(c->q);
		c->q = NULL;
	}
	if (c->sq != NULL) {
		mta_mtasts_cancel(c->sq);
		c->sq = NULL;
	}
	c->phase = C_CLOSING;
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

static void set_error(struct conn *c, int code, const char *status,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void set_error(struct conn *c, int code, const char *status,
		      const char *fmt, ...)
{
	va_list ap;
	c->lcode = code;
	snprintf(c->ltls, sizeof(c->ltls), "%s",
		 c->tls_on && c->tls.handshake_done ? c->tls_desc : "");
	snprintf(c->lauth, sizeof(c->lauth), "%s", c->auth);
	snprintf(c->lstatus, sizeof(c->lstatus), "%s", status);
	va_start(ap, fmt);
	vsnprintf(c->ltext, sizeof(c->ltext), fmt, ap);
	va_end(ap);
}

static void on_tcp_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	void (*after)(struct conn *) = c->after_close;

	c->tcp_open = false;
	c->after_close = NULL;
	if (c->smtpc_live) {
		mta_smtpc_free(&c->smtpc);
		c->smtpc_live = false;
	}
	if (c->tls_on) {
		mta_tls_free(&c->tls);
		c->tls_on = false;
	}
	c->write_pending = 0;
	if (after)
		after(c);
}

static void conn_close(struct conn *c, void (*after)(struct conn *c))
{
	uv_timer_stop(&c->timer);
	if (!c->tcp_open) {
		after(c);
		return;
	}
	c->after_close = after;
	if (!uv_is_closing((uv_handle_t *)&c->tcp))
		uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
}

static void after_close_next_addr(struct conn *c)
{
	if (c->d->stopping) {
		conn_end(c);
		return;
	}
	c->ai++;
	conn_next_addr(c);
}

static void after_close_end(struct conn *c)
{
	conn_end(c);
}

/* The current host failed: try the next address or host. */
static void conn_host_failed(struct conn *c)
{
	c->phase = C_HOSTS; /* late connect/read callbacks are ignored */
	if (c->job)
		job_reopen(c->job);
	conn_close(c, after_close_next_addr);
}

struct wreq {
	uv_write_t req;
	struct conn *c;
	size_t len;
	uint8_t data[];
};

static void on_write(uv_write_t *req, int status)
{
	struct wreq *w = container_of(req, struct wreq, req);
	struct conn *c = w->c;

	c->write_pending -= w->len;
	free(w);
	if (status < 0 || c->phase != C_SMTP)
		return;
	if (c->smtpc_live && c->write_pending < WRITE_HIGH / 2)
		conn_drive(c);
}

static void conn_write(struct conn *c, const void *p, size_t n)
{
	struct wreq *w;
	uv_buf_t b;

	if (n == 0 || !c->tcp_open || uv_is_closing((uv_handle_t *)&c->tcp))
		return;
	w = malloc(sizeof(*w) + n);
	if (w == NULL)
		return;
	w->c = c;
	w->len = n;
	memcpy(w->data, p, n);
	b = uv_buf_init((char *)w->data, (unsigned)n);
	c->write_pending += n;
	if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
		c->write_pending -= n;
		free(w);
	}
}

static void flush_tls(struct conn *c)
{
	struct mta_buf out;
	mta_tls_take_output(&c->tls, &out);
	conn_write(c, out.data, out.len);
	mta_buf_free(&out);
}

/* Engine output to the socket (through TLS once it is up). */
static void flush_engine(struct conn *c)
{
	const uint8_t *p;
	size_t n = mta_smtpc_output(&c->smtpc, &p);

	if (n == 0)
		return;
	if (c->tls_on && c->tls.handshake_done) {
		if (mta_tls_write(&c->tls, p, n) == 0)
			flush_tls(c);
	} else {
		conn_write(c, p, n);
	}
	mta_smtpc_output_consume(&c->smtpc, n);
}

static void arm_timer(struct conn *c, uint64_t ms);
static void on_conn_timer(uv_timer_t *t);

/* ---- connections: SMTP session -------------------------------------- */

static int smtpc_tls_for(int level)
{
	switch (level) {
	case MTA_TLS_NONE:
		return MTA_SMTPC_TLS_NONE;
	case MTA_TLS_MAY:
	case MTA_TLS_DANE: /* no usable TLSA: opportunistic */
		return MTA_SMTPC_TLS_MAY;
	default:
		return MTA_SMTPC_TLS_REQUIRE;
	}
}

static void start_job(struct conn *c)
{
	struct job *j = c->job;
	size_t *idx = malloc(j->nrcpt * sizeof(*idx));
	size_t n;
	uint64_t size = j->m->env.size;
	int rc;

	if (idx == NULL) {
		conn_host_failed(c);
		return;
	}
	n = job_undecided(j, idx);
	if (n == 0) { /* nothing left (cannot happen): finish */
		free(idx);
		c->job = NULL;
		job_finish(j, 0, "4.0.0", "", NULL, NULL, NULL);
		return;
	}
	/* the txn borrows idx until TXN_DONE (freed there) */
	c->txn.env = &j->m->env;
	c->txn.rcpts = idx;
	c->txn.nrcpt = n;
	c->txn.size = size;
	c->txn_started = true;
	c->txn_done = false;
	c->body_off = 0;
	rc = mta_smtpc_start_txn(&c->smtpc, &c->txn);
	if (rc != 0) {
		free(idx);
		c->txn.rcpts = NULL;
		c->txn_started = false;
		set_error(c, 0, "4.3.0", "cannot start transaction: %s",
			  mta_strerror(rc));
		conn_host_failed(c);
	}
}

/* Maps a txn position back to the job's entry. */
static size_t job_pos(const struct job *j, size_t env_index)
{
	for (size_t i = 0; i < j->nrcpt; i++)
		if (j->rcpts[i] == env_index)
			return i;
	return j->nrcpt;
}

static void pump_body(struct conn *c)
{
	static uint8_t buf[BODY_PIECE];
	struct job *j = c->job;

	while (j != NULL && mta_smtpc_wants_body(&c->smtpc) &&
	       c->write_pending < WRITE_HIGH) {
		size_t got = 0;
		uint64_t size = j->m->env.size;
		int rc = mta_spool_read_body(c->d->spool, j->m->qid,
					     c->body_off, buf, sizeof(buf),
					     &got);
		if (rc != 0) {
			set_error(c, 0, "4.3.0", "spool read failed: %s",
				  mta_strerror(rc));
			mta_smtpc_abort(&c->smtpc, "4.3.0", c->ltext);
			return;
		}
		bool last = c->body_off + got >= size;
		size_t took = mta_smtpc_body(&c->smtpc, buf, got, last);
		c->body_off += took;
		flush_engine(c);
		if (last && took == got)
			break;
		if (took == 0 && got > 0)
			break;
	}
}

/* ---- TLS report counters (RFC 8460 result types) ------------------- */

struct count_req {
	struct mta_commit commit;
	struct mta_delivery *d;
	char key[400];
};

static void on_count_done(struct mta_commit *cm)
{
	struct count_req *r = container_of(cm, struct count_req, commit);
	struct mta_delivery *d = r->d;

	free(r);
	d->commits_pending--;
	maybe_stopped(d);
}

/* Counts one session result for the destination's TLS report: ptype is
 * "tlsa" or "sts", result an RFC 8460 result type or
 * "successful-session". */
static void tlsrpt_count(struct conn *c, const char *ptype,
			 const char *result)
{
	struct mta_delivery *d = c->d;
	struct count_req *r;
	char day[16];
	time_t now = time(NULL);
	struct tm tm;

	if (d->stopping || result == NULL)
		return;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return;
	gmtime_r(&now, &tm);
	strftime(day, sizeof(day), "%Y-%m-%d", &tm);
	snprintf(r->key, sizeof(r->key), "%s %s %s %s", day, c->dest->name,
		 ptype, result);
	r->d = d;
	r->commit.kind = MTA_COMMIT_COUNT;
	r->commit.key = r->key;
	r->commit.vlen = 1;
	r->commit.done = on_count_done;
	d->commits_pending++;
	mta_writer_submit(d->writer, &r->commit);
}

/* After the handshake: does this channel meet the host's level? */
static bool verify_tls(struct conn *c, const char *host)
{
	char why[512];

	if (c->dane == 1) {
		const char *nexthop[2] = {c->dest->name, c->nexthop_cname};
		struct mta_dane_query q = {0};
		struct mta_dane_result r;
		size_t n = 0;

		q.chain = mta_tls_peer_chain(&c->tls, &n);
		q.nchain = n;
		q.tlsa = c->tlsa;
		q.ntlsa = c->ntlsa;
		q.base = c->tlsa_base;
		q.nexthop = c->dest->relay ? NULL : nexthop;
		q.nnexthop = c->dest->relay		 ? 0
			     : c->nexthop_cname[0] != '\0' ? 2
							   : 1;
		q.now = time(NULL);
		memset(&r, 0, sizeof(r));
		(void)mta_dane_verify(&q, &r);
		if (r.outcome == MTA_DANE_MATCH) {
			snprintf(c->auth, sizeof(c->auth), "dane %u %u %u",
				 r.usage, r.selector, r.mtype);
			tlsrpt_count(c, "tlsa", "successful-session");
			return true;
		}
		tlsrpt_count(c, "tlsa",
			     r.fail != MTA_DANE_FAIL_NONE
				     ? mta_dane_fail_rpt(r.fail)
				     : "tlsa-invalid");
		snprintf(c->auth, sizeof(c->auth), "dane-failed");
		set_error(c, 0, "4.7.5", "%s",
			  r.reason[0] ? r.reason : "DANE authentication failed");
		return false;
	}
	if (c->dane == 2) {
		snprintf(c->auth, sizeof(c->auth), "encrypt (TLSA unusable)");
		return true;
	}
	if (c->sts_host) {
		bool enforce = c->sts->mode == MTA_STS_MODE_ENFORCE;
		int rc = MTA_ETLS;
		if (c->d->webpki)
			rc = mta_tls_verify_webpki(&c->tls, host, why,
						   sizeof(why));
		else
			snprintf(why, sizeof(why), "no usable tls.ca_file");
		if (rc == 0) {
			snprintf(c->auth, sizeof(c->auth), "mta-sts%s id=%s",
				 enforce ? "" : "-testing", c->sts_id);
			tlsrpt_count(c, "sts", "successful-session");
			return true;
		}
		tlsrpt_count(c, "sts", "certificate-not-trusted");
		if (!enforce) {
			sts_testing_failure(c, "certificate-not-trusted", why);
			return true;
		}
		snprintf(c->auth, sizeof(c->auth), "mta-sts-failed id=%s",
			 c->sts_id);
		set_error(c, 0, "4.7.5",
			  "MTA-STS (id %s): certificate of %s not valid: %s",
			  c->sts_id, host, why);
		return false;
	}
	if (c->level == MTA_TLS_VERIFY) {
		if (!c->d->webpki) {
			set_error(c, 0, "4.7.5",
				  "TLS verification of %s impossible: no "
				  "usable tls.ca_file",
				  host);
			return false;
		}
		if (mta_tls_verify_webpki(&c->tls, host, why, sizeof(why)) !=
		    0) {
			snprintf(c->auth, sizeof(c->auth), "verify-failed");
			set_error(c, 0, "4.7.5",
				  "certificate of %s not valid: %s", host, why);
			return false;
		}
		snprintf(c->auth, sizeof(c->auth), "verify");
		return true;
	}
	return true;
}

static void on_event(struct conn *c, enum mta_smtpc_ev ev,
		     const struct mta_smtpc_event *e)
{
	struct job *j = c->job;
	const char *host = c->hosts[c->hi].name;

	switch (ev) {
	case MTA_SMTPC_EV_NONE:
		break;
	case MTA_SMTPC_EV_STARTTLS:
		flush_engine(c);
		if (mta_tls_client_init(&c->tls, c->d->tls,
					c->dane ? c->tlsa_base : host) != 0) {
			mta_smtpc_abort(&c->smtpc, "4.7.5",
					"TLS initialisation failed");
			break;
		}
		c->tls_on = true;
		if (mta_tls_handshake(&c->tls) == MTA_ETLS)
			mta_smtpc_abort(&c->smtpc, "4.7.5", c->tls.error);
		flush_tls(c);
		break;
	case MTA_SMTPC_EV_READY:
		c->any_session = true;
		if (c->job == NULL && !c->d->stopping)
			c->job = dest_take(c->dest);
		if (c->job != NULL) {
			start_job(c);
		} else {
			mta_smtpc_quit(&c->smtpc);
		}
		break;
	case MTA_SMTPC_EV_NEED_BODY:
		pump_body(c);
		break;
	case MTA_SMTPC_EV_RCPT_RESULT: {
		if (j == NULL || e->index >= c->txn.nrcpt)
			break;
		size_t r = c->txn.rcpts[e->index];
		size_t pos = job_pos(j, r);
		int cls = e->status ? e->status[0] - '0' : e->code / 100;
		if (pos >= j->nrcpt)
			break;
		if (cls == 4) {
			j->rstate[pos] = R_TENTATIVE;
			j->tcode[pos] = e->code;
			snprintf(j->tstatus[pos], sizeof(j->tstatus[pos]), "%s",
				 e->status ? e->status : "4.0.0");
			free(j->ttext[pos]);
			j->ttext[pos] = strdup(e->text ? e->text : "");
		} else {
			if (cls == 2 && !mta_smtpc_caps(&c->smtpc)->dsn &&
			    (j->m->env.rcpts[r].notify & MTA_NOTIFY_SUCCESS))
				j->m->relayed[r] = true;
			record(j->m, r, e->code, e->status, e->text, c->relay,
			       c->tls_on ? c->tls_desc : NULL, c->auth);
			j->rstate[pos] = R_FINAL;
		}
		break;
	}
	case MTA_SMTPC_EV_TXN_DONE:
		free((void *)c->txn.rcpts);
		c->txn.rcpts = NULL;
		c->txn_started = false;
		c->txn_done = true;
		break;
	case MTA_SMTPC_EV_FAIL:
		if (e->status != NULL && strcmp(e->status, "4.7.4") == 0 &&
		    (c->dane != 0 || c->sts_host))
			tlsrpt_count(c, c->dane ? "tlsa" : "sts",
				     "starttls-not-supported");
		set_error(c, e->code, e->status ? e->status : "4.4.2", "%s",
			  e->text ? e->text : "connection failed");
		if (j != NULL)
			job_reopen(j);
		c->txn_done = false;
		break;
	case MTA_SMTPC_EV_CLOSED:
		break;
	}
}

/* Runs engine events until it has nothing more to say. */
static void conn_drive(struct conn *c)
{
	struct mta_smtpc_event e;
	enum mta_smtpc_ev ev;
	size_t n;

	if (c->in_drive || !c->smtpc_live)
		return;
	c->in_drive = true;
	for (;;) {
		memset(&e, 0, sizeof(e));
		ev = mta_smtpc_feed(&c->smtpc, NULL, 0, &n, &e);
		if (ev == MTA_SMTPC_EV_NONE)
			break;
		if (ev == MTA_SMTPC_EV_READY && c->txn_done && c->job) {
			/* previous transaction over without a host failure */
			struct job *j = c->job;
			c->job = NULL;
			c->txn_done = false;
			job_finish(j, 0, "4.0.0", "", c->relay,
				   c->tls_on ? c->tls_desc : NULL, c->auth);
		}
		on_event(c, ev, &e);
		if (ev == MTA_SMTPC_EV_CLOSED || ev == MTA_SMTPC_EV_FAIL)
			break;
	}
	flush_engine(c);
	if (mta_smtpc_in_tls(&c->smtpc) == false && c->tls_on &&
	    !c->tls.handshake_done) {
		/* handshake in progress: nothing more to drive */
	} else if (ev == MTA_SMTPC_EV_NEED_BODY ||
		   mta_smtpc_wants_body(&c->smtpc)) {
		pump_body(c);
	}
	c->in_drive = false;
	if (ev == MTA_SMTPC_EV_FAIL || ev == MTA_SMTPC_EV_CLOSED ||
	    mta_smtpc_closed(&c->smtpc)) {
		/* drain the last engine events (CLOSED after FAIL) */
		while (mta_smtpc_feed(&c->smtpc, NULL, 0, &n, &e) !=
		       MTA_SMTPC_EV_NONE)
			;
		flush_engine(c);
		if (c->job != NULL && c->txn_done) {
			/* tentative results of a finished transaction on a
			 * host that then failed: try them elsewhere */
			job_reopen(c->job);
		}
		c->txn_done = false;
		if (c->job != NULL) {
			conn_host_failed(c);
		} else {
			c->phase = C_CLOSING;
			conn_close(c, after_close_end);
		}
		return;
	}
	arm_timer(c, mta_smtpc_timeout_ms(&c->smtpc));
}

static void conn_input(struct conn *c, const uint8_t *p, size_t len)
{
	struct mta_smtpc_event e;
	size_t off = 0;

	while (off < len && c->smtpc_live && !mta_smtpc_closed(&c->smtpc)) {
		size_t n = 0;
		enum mta_smtpc_ev ev;

		memset(&e, 0, sizeof(e));
		ev = mta_smtpc_feed(&c->smtpc, p + off, len - off, &n, &e);
		off += n;
		if (ev == MTA_SMTPC_EV_NONE) {
			flush_engine(c);
			if (n == 0)
				continue;
			continue;
		}
		if (ev == MTA_SMTPC_EV_READY && c->txn_done && c->job) {
			struct job *j = c->job;
			c->job = NULL;
			c->txn_done = false;
			job_finish(j, 0, "4.0.0", "", c->relay,
				   c->tls_on ? c->tls_desc : NULL, c->auth);
		}
		on_event(c, ev, &e);
		if (ev == MTA_SMTPC_EV_STARTTLS)
			return; /* the rest was plaintext after 220: dropped */
		if (ev == MTA_SMTPC_EV_FAIL || ev == MTA_SMTPC_EV_CLOSED)
			break;
	}
	conn_drive(c);
}

static void tls_input(struct conn *c, const uint8_t *p, size_t len)
{
	uint8_t plain[16384];
	int rc;

	if (mta_tls_feed(&c->tls, p, len) != 0) {
		mta_smtpc_abort(&c->smtpc, "4.3.0", "out of memory");
		conn_drive(c);
		return;
	}
	if (!c->tls.handshake_done) {
		rc = mta_tls_handshake(&c->tls);
		flush_tls(c);
		if (rc == MTA_EAGAIN)
			return;
		if (rc != 0) {
			char why[300];
			snprintf(why, sizeof(why), "TLS handshake with %s failed: %s",
				 c->hosts[c->hi].name, c->tls.error);
			set_error(c, 0, "4.7.5", "%s", why);
			mta_smtpc_abort(&c->smtpc, "4.7.5", why);
			conn_drive(c);
			return;
		}
		mta_tls_describe(&c->tls, c->tls_desc, sizeof(c->tls_desc));
		if (!verify_tls(c, c->hosts[c->hi].name)) {
			mta_smtpc_abort(&c->smtpc, c->lstatus, c->ltext);
			conn_drive(c);
			return;
		}
		mta_smtpc_tls_started(&c->smtpc);
		conn_drive(c);
	}
	for (;;) {
		size_t got = 0;
		rc = mta_tls_read(&c->tls, plain, sizeof(plain), &got);
		if (rc == MTA_EAGAIN)
			break;
		if (rc != 0) {
			mta_smtpc_eof(&c->smtpc);
			conn_drive(c);
			return;
		}
		conn_input(c, plain, got);
		if (!c->smtpc_live || c->phase != C_SMTP)
			return;
	}
	flush_tls(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	static char rbuf[65536];
	(void)h;
	(void)hint;
	*buf = uv_buf_init(rbuf, sizeof(rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = s->data;

	if (nread == 0 || c->phase != C_SMTP)
		return;
	if (nread < 0) {
		uv_read_stop(s);
		mta_smtpc_eof(&c->smtpc);
		conn_drive(c);
		return;
	}
	if (c->tls_on)
		tls_input(c, (const uint8_t *)buf->base, (size_t)nread);
	else
		conn_input(c, (const uint8_t *)buf->base, (size_t)nread);
}

static void on_conn_timer(uv_timer_t *t)
{
	struct conn *c = t->data;

	if (c->phase == C_CONNECTING) {
		set_error(c, 0, "4.4.1", "connect to %s: timed out", c->relay);
		uv_cancel((uv_req_t *)&c->creq); /* no-op for connects */
		conn_host_failed(c);
		return;
	}
	if (c->phase == C_SMTP && c->smtpc_live) {
		mta_smtpc_timeout(&c->smtpc);
		conn_drive(c);
	}
}

static void arm_timer(struct conn *c, uint64_t ms)
{
	if (ms == 0)
		ms = 300000;
	uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

static void on_connect(uv_connect_t *req, int status)
{
	struct conn *c = req->data;
	struct mta_logline ll;

	if (c->phase != C_CONNECTING)
		return; /* timed out; the handle is closing */
	if (status < 0) {
		set_error(c, 0, "4.4.1", "connect to %s: %s", c->relay,
			  uv_strerror(status));
		mta_log_begin(&ll, MTA_LOG_INFO, "connect_failed");
		mta_log_str(&ll, "relay", c->relay);
		mta_log_str(&ll, "error", uv_strerror(status));
		mta_log_end(&ll);
		conn_host_failed(c);
		return;
	}
	c->phase = C_SMTP;
	if (mta_smtpc_init(&c->smtpc, &c->scfg) != 0) {
		set_error(c, 0, "4.3.0", "client engine init failed");
		conn_host_failed(c);
		return;
	}
	c->smtpc_live = true;
	uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
	arm_timer(c, mta_smtpc_timeout_ms(&c->smtpc));
}

static void conn_next_addr(struct conn *c)
{
	struct mta_delivery *d = c->d;
	char ip[INET6_ADDRSTRLEN];
	struct sockaddr_storage *sa;
	unsigned port = c->hosts[c->hi].port;

	if (d->stopping) {
		conn_end(c);
		return;
	}
	if (c->ai >= c->naddrs) {
		c->hi++;
		conn_next_host(c);
		return;
	}
	sa = &c->addrs[c->ai];
	if (sa->ss_family == AF_INET6) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)sa;
		a6->sin6_port = htons((uint16_t)port);
		uv_ip6_name(a6, ip, sizeof(ip));
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)sa;
		a4->sin_port = htons((uint16_t)port);
		uv_ip4_name(a4, ip, sizeof(ip));
	}
	snprintf(c->relay, sizeof(c->relay), "%s[%s]:%u",
		 c->hosts[c->hi].name, ip, port);
	c->tls_desc[0] = '\0';
	uv_tcp_init(d->loop, &c->tcp);
	c->tcp.data = c;
	c->tcp_open = true;
	c->phase = C_CONNECTING;
	c->creq.data = c;
	if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)sa,
			   on_connect) != 0) {
		set_error(c, 0, "4.4.1", "connect to %s failed", c->relay);
		conn_host_failed(c);
		return;
	}
	arm_timer(c, (uint64_t)d->cfg->connect_timeout * 1000u);
}

/* The level this host gets once its TLSA records (if any) are known. */
static void host_ready(struct conn *c)
{
	int tl = c->table_level;
	bool dane_ok = tl < 0 || tl == MTA_TLS_DANE || tl == MTA_TLS_DANE_ONLY;
	const char *host = c->hosts[c->hi].name;

	if (c->dane != 0 && dane_ok) {
		/* RFC 7672 §2.2: usable TLSA make authentication mandatory;
		 * only unusable ones still make TLS mandatory */
		c->level = c->dane == 1 ? MTA_TLS_DANE_ONLY : MTA_TLS_ENCRYPT;
	} else {
		c->dane = 0;
		c->level = tl >= 0 ? tl : c->d->level;
		if (c->level == MTA_TLS_DANE_ONLY) {
			set_error(c, 0, "4.7.5",
				  "DANE required for %s but it has no usable "
				  "DNSSEC-signed TLSA records",
				  host);
			c->hi++;
			conn_next_host(c);
			return;
		}
	}
	/* MTA-STS where DANE does not apply (DANE wins: DESIGN.md, also
	 * over the policy's mx patterns) */
	c->sts_host = c->dane == 0 && c->sts != NULL && c->table_level < 0;
	if (c->sts_host && !mta_sts_mx_match(c->sts, host)) {
		if (c->sts->mode == MTA_STS_MODE_ENFORCE) {
			/* RFC 8461 §5.1: a per-host temporary failure; no
			 * connection is made */
			tlsrpt_count(c, "sts", "validation-failure");
			set_error(c, 0, "4.7.5",
				  "mta-sts mx mismatch: %s is not allowed by "
				  "the MTA-STS policy of %s (id %s)",
				  host, c->dest->name, c->sts_id);
			c->hi++;
			conn_next_host(c);
			return;
		}
		tlsrpt_count(c, "sts", "validation-failure");
		sts_testing_failure(c, "validation-failure",
				    "MX host not in the policy");
	}
	if (c->sts_host && c->sts->mode == MTA_STS_MODE_ENFORCE)
		c->level = MTA_TLS_VERIFY;
	c->scfg.tls = smtpc_tls_for(c->level);
	if (c->dest->relay && c->d->auth_user != NULL)
		c->scfg.tls = MTA_SMTPC_TLS_REQUIRE;
	snprintf(c->auth, sizeof(c->auth), "none");
	conn_next_addr(c);
}

static void tlsa_lookup(struct conn *c);

static void on_tlsa(const struct mta_dns_result *res, void *ud)
{
	struct conn *c = ud;
	size_t total = 0, off = 0;

	c->q = NULL;
	if (res->status == MTA_DNS_OK && res->dnssec == MTA_DNSSEC_SECURE) {
		size_t n = res->count < MTA_DANE_TLSA_MAX ? res->count
							  : MTA_DANE_TLSA_MAX;
		for (size_t i = 0; i < n; i++)
			total += res->tlsa[i].len;
		free(c->tlsa_data);
		c->tlsa_data = malloc(total + 1);
		if (c->tlsa_data == NULL) {
			set_error(c, 0, "4.3.0", "out of memory");
			c->hi++;
			conn_next_host(c);
			return;
		}
		for (size_t i = 0; i < n; i++) {
			c->tlsa[i] = res->tlsa[i];
			memcpy(c->tlsa_data + off, res->tlsa[i].data,
			       res->tlsa[i].len);
			c->tlsa[i].data = c->tlsa_data + off;
			off += res->tlsa[i].len;
		}
		c->ntlsa = n;
		c->dane = mta_dane_count_usable(c->tlsa, n) > 0 ? 1 : 2;
		host_ready(c);
		return;
	}
	if (res->status == MTA_DNS_TEMPFAIL || res->status == MTA_DNS_BOGUS ||
	    (res->status == MTA_DNS_OK &&
	     res->dnssec != MTA_DNSSEC_INSECURE)) {
		/* RFC 7672 §2.1.1: no connection to this host */
		set_error(c, 0, "4.4.3",
			  "TLSA lookup for _%u._tcp.%s failed (%s): host "
			  "not used",
			  c->hosts[c->hi].port, c->tlsa_base,
			  res->why ? res->why : mta_dnssec_name(res->dnssec));
		c->hi++;
		conn_next_host(c);
		return;
	}
	/* no TLSA here (or an insecure answer): the other candidate, else
	 * no DANE for this host */
	if (c->tlsa_alt[0] != '\0') {
		memcpy(c->tlsa_base, c->tlsa_alt, sizeof(c->tlsa_base));
		c->tlsa_alt[0] = '\0';
		tlsa_lookup(c);
		return;
	}
	c->dane = 0;
	host_ready(c);
}

static void tlsa_lookup(struct conn *c)
{
	char owner[MTA_DNS_NAME_MAX + 32];
	int rc;

	snprintf(owner, sizeof(owner), "_%u._tcp.%s", c->hosts[c->hi].port,
		 c->tlsa_base);
	rc = mta_dns_tlsa(c->d->dns, owner, on_tlsa, c, &c->q);
	if (rc != 0) {
		set_error(c, 0, "4.4.3", "TLSA lookup for %s failed: %s",
			  owner, mta_strerror(rc));
		c->hi++;
		conn_next_host(c);
	}
}

/* Addresses known: decide whether DANE applies to this host (DESIGN.md
 * "Outbound policy" step 2, RFC 7672 §2.2.1-2.2.2). */
static void host_policy_start(struct conn *c, const struct mta_dns_result *res)
{
	int tl = c->table_level;
	const char *host = c->hosts[c->hi].name;
	bool want = tl < 0 || tl == MTA_TLS_DANE || tl == MTA_TLS_DANE_ONLY;

	c->dane = 0;
	c->ntlsa = 0;
	c->tlsa_base[0] = c->tlsa_alt[0] = '\0';
	if (!want || !c->mx_secure) {
		host_ready(c);
		return;
	}
	if (res->cname && res->canonical != NULL) {
		if (res->dnssec == MTA_DNSSEC_SECURE) {
			/* expanded name first, then the original */
			snprintf(c->tlsa_base, sizeof(c->tlsa_base), "%s",
				 res->canonical);
			snprintf(c->tlsa_alt, sizeof(c->tlsa_alt), "%s", host);
		} else if (res->initial_dnssec == MTA_DNSSEC_SECURE) {
			/* secure CNAME, insecure target: the original name */
			snprintf(c->tlsa_base, sizeof(c->tlsa_base), "%s",
				 host);
		}
	} else if (res->dnssec == MTA_DNSSEC_SECURE) {
		snprintf(c->tlsa_base, sizeof(c->tlsa_base), "%s", host);
	}
	if (c->tlsa_base[0] == '\0') {
		host_ready(c); /* insecure address records: no DANE */
		return;
	}
	tlsa_lookup(c);
}

static void on_addr(const struct mta_dns_result *res, void *ud)
{
	struct conn *c = ud;
	const char *host = c->hosts[c->hi].name;

	c->q = NULL;
	c->naddrs = c->ai = 0;
	if (res->status == MTA_DNS_OK) {
		for (size_t i = 0; i < res->count && c->naddrs < MAX_ADDRS;
		     i++)
			c->addrs[c->naddrs++] = res->addr[i];
	}
	if (c->naddrs == 0) {
		if (res->status == MTA_DNS_TEMPFAIL ||
		    res->status == MTA_DNS_BOGUS)
			set_error(c, 0, "4.4.3",
				  "address lookup for %s failed: %s", host,
				  res->why ? res->why : "error");
		else
			set_error(c, 0, "4.4.4",
				  "no address records for %s", host);
		c->hi++;
		conn_next_host(c);
		return;
	}
	host_policy_start(c, res);
}

static bool parse_literal(const char *host, struct sockaddr_storage *ss)
{
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	char buf[64];
	size_t n = strlen(host);

	memset(ss, 0, sizeof(*ss));
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n < sizeof(buf)) {
		memcpy(buf, host + 1, n - 2);
		buf[n - 2] = '\0';
		host = buf;
		if (strncasecmp(host, "IPv6:", 5) == 0)
			host += 5;
	}
	if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		return true;
	}
	return false;
}

static void conn_next_host(struct conn *c)
{
	struct mta_delivery *d = c->d;
	int rc;

	if (d->stopping) {
		conn_end(c);
		return;
	}
	if (c->hi >= c->nhosts) {
		/* every host failed */
		struct job *j = c->job;
		c->job = NULL;
		if (c->lstatus[0] == '\0')
			set_error(c, 0, "4.4.1", "no usable mail server");
		if (j != NULL)
			job_finish(j, c->lcode, c->lstatus, c->ltext,
				   c->relay[0] ? c->relay : NULL, c->ltls,
				   c->lauth);
		if (!c->any_session)
			dest_fail_all(c->dest, c->lcode, c->lstatus, c->ltext,
				      c->relay[0] ? c->relay : NULL);
		conn_end(c);
		return;
	}
	c->phase = C_HOSTS;
	snprintf(c->auth, sizeof(c->auth), "none");
	if (parse_literal(c->hosts[c->hi].name, &c->addrs[0])) {
		c->naddrs = 1;
		c->ai = 0;
		c->dane = 0;
		host_ready(c); /* no DNS name: no DANE */
		return;
	}
	rc = mta_dns_addr(d->dns, c->hosts[c->hi].name, on_addr, c, &c->q);
	if (rc != 0) {
		set_error(c, 0, "4.4.3", "address lookup for %s failed: %s",
			  c->hosts[c->hi].name, mta_strerror(rc));
		c->hi++;
		conn_next_host(c);
	}
}

static void on_mx(const struct mta_dns_result *res, void *ud)
{
	struct conn *c = ud;
	struct dest *ds = c->dest;
	unsigned port = c->d->cfg->delivery_port;
	struct job *j;

	c->q = NULL;
	c->mx_secure = res->dnssec == MTA_DNSSEC_SECURE;
	if (res->cname && res->canonical != NULL &&
	    res->dnssec == MTA_DNSSEC_SECURE)
		/* DANE-86: the expanded next-hop name is a reference name */
		snprintf(c->nexthop_cname, sizeof(c->nexthop_cname), "%s",
			 res->canonical);
	if (!c->d->dnssec_ok && !c->mx_secure &&
	    (res->status == MTA_DNS_OK || res->status == MTA_DNS_NODATA ||
	     res->status == MTA_DNS_NXDOMAIN)) {
		/* fail closed: without working validation an "insecure"
		 * answer may be a stripped secure one */
		set_error(c, 0, "4.4.3",
			  "DNSSEC validation is not working (self-test "
			  "failed): %s not resolved securely",
			  ds->name);
		goto fail_all;
	}
	switch (res->status) {
	case MTA_DNS_OK:
		if (res->null_mx) {
			set_error(c, 0, "5.1.10",
				  "domain %s does not accept mail (null MX)",
				  ds->name);
			goto fail_all;
		}
		for (size_t i = 0; i < res->count && c->nhosts < MAX_HOSTS;
		     i++) {
			snprintf(c->hosts[c->nhosts].name,
				 sizeof(c->hosts[0].name), "%s",
				 res->mx[i].host);
			c->hosts[c->nhosts++].port = port;
		}
		break;
	case MTA_DNS_NODATA: /* no MX: the domain itself (RFC 5321 §5.1) */
		snprintf(c->hosts[0].name, sizeof(c->hosts[0].name), "%s",
			 ds->name);
		c->hosts[0].port = port;
		c->nhosts = 1;
		break;
	case MTA_DNS_NXDOMAIN:
		set_error(c, 0, "5.1.2", "domain %s not found", ds->name);
		goto fail_all;
	default:
		set_error(c, 0, "4.4.3", "MX lookup for %s failed: %s",
			  ds->name, res->why ? res->why : "error");
		goto fail_all;
	}
	if (c->nhosts == 0) {
		set_error(c, 0, "4.4.4", "no mail servers for %s", ds->name);
		goto fail_all;
	}
	c->hi = 0;
	conn_next_host(c);
	return;

fail_all:
	j = c->job;
	c->job = NULL;
	if (j != NULL)
		job_finish(j, 0, c->lstatus, c->ltext, NULL, NULL, NULL);
	dest_fail_all(ds, 0, c->lstatus, c->ltext, NULL);
	conn_end(c);
}

static void conn_resolve_mx(struct conn *c)
{
	int rc = mta_dns_mx(c->d->dns, c->dest->name, on_mx, c, &c->q);

	if (rc != 0) {
		struct mta_dns_result res;
		memset(&res, 0, sizeof(res));
		res.status = rc == MTA_EDNS ? MTA_DNS_NXDOMAIN
					    : MTA_DNS_TEMPFAIL;
		res.why = mta_strerror(rc);
		on_mx(&res, c);
	}
}

/* The destination's MTA-STS policy is known (DESIGN.md step 3). */
static void on_sts(const struct mta_mtasts_result *r, void *ud)
{
	struct conn *c = ud;

	c->sq = NULL;
	if (r->have && r->policy->mode != MTA_STS_MODE_NONE) {
		c->sts = malloc(sizeof(*c->sts));
		if (c->sts != NULL) {
			*c->sts = *r->policy;
			snprintf(c->sts_id, sizeof(c->sts_id), "%s",
				 r->id ? r->id : "");
		}
	}
	conn_resolve_mx(c);
}

static void sts_testing_failure(struct conn *c, const char *what,
				const char *why)
{
	struct mta_logline ll;

	mta_log_begin(&ll, MTA_LOG_WARN, "sts_testing_failure");
	mta_log_str(&ll, "domain", c->dest->name);
	mta_log_str(&ll, "id", c->sts_id);
	mta_log_str(&ll, "host", c->hosts[c->hi].name);
	mta_log_str(&ll, "result", what);
	mta_log_str(&ll, "why", why);
	mta_log_end(&ll);
}

static void conn_start(struct mta_delivery *d, struct dest *ds)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return;
	c->d = d;
	c->dest = ds;
	c->job = dest_take(ds);
	uv_timer_init(d->loop, &c->timer);
	c->timer.data = c;
	c->next = d->conns;
	if (d->conns)
		d->conns->prev = c;
	d->conns = c;
	d->nconn++;
	ds->nconn++;
	c->scfg.helo_name = d->cfg->server_hostname;
	c->table_level = -1;
	if (d->policy != NULL) {
		int lv = mta_tlspolicy_lookup(
			d->policy, ds->relay ? d->relay_host : ds->name, NULL);
		if (lv >= 0)
			c->table_level = lv;
	}
	if (ds->relay) {
		c->scfg.auth_user = d->auth_user;
		c->scfg.auth_pass = d->auth_pass;
		snprintf(c->hosts[0].name, sizeof(c->hosts[0].name), "%s",
			 d->relay_host);
		c->hosts[0].port = d->relay_port;
		c->nhosts = 1;
		c->hi = 0;
		/* a relayhost is a non-MX destination: DANE applies when its
		 * own address records are secure (RFC 7672 §2.2.2) */
		c->mx_secure = true;
		conn_next_host(c);
		return;
	}
	c->phase = C_RESOLVE;
	if (d->mtasts != NULL && c->table_level < 0 &&
	    mta_mtasts_lookup(d->mtasts, ds->name, on_sts, c, &c->sq) == 0)
		return;
	conn_resolve_mx(c);
}

static void dest_pump(struct mta_delivery *d, struct dest *ds)
{
	while (ds->nq > 0 && !d->stopping &&
	       d->nconn < d->cfg->max_connections &&
	       ds->nconn < d->cfg->max_per_destination &&
	       ds->nconn < 1 + ds->nq / JOBS_PER_CONN)
		conn_start(d, ds);
}

/* ---- messages ------------------------------------------------------- */

static void msg_free(struct msg *m)
{
	mta_envelope_free(&m->env);
	mta_envelope_free(&m->dsn_env);
	mta_body_free(&m->dsn_body);
	free(m->was_pending);
	free(m->fstatus);
	free(m->relayed);
	free(m);
}

static void schedule_scan(struct mta_delivery *d, int64_t at_us);

static void on_update_done(struct mta_commit *cm)
{
	struct msg *m = container_of(cm, struct msg, commit);
	struct mta_delivery *d = m->d;
	struct mta_logline ll;

	d->commits_pending--;
	if (cm->result != 0 && cm->new_qid != NULL && !d->stopping) {
		/* try once more without the DSN: the state matters more */
		mta_log_begin(&ll, MTA_LOG_ERR, "dsn_lost");
		mta_log_str(&ll, "qid", m->qid);
		mta_log_str(&ll, "error", mta_errname(cm->result));
		mta_log_end(&ll);
		cm->new_qid = NULL;
		cm->new_env = NULL;
		cm->new_body = NULL;
		d->commits_pending++;
		mta_writer_submit(d->writer, cm);
		return;
	}
	if (cm->result != 0) {
		d->cur_due = -1; /* its old due entry is still there */
		mta_log_begin(&ll, MTA_LOG_ERR, "update_failed");
		mta_log_str(&ll, "qid", m->qid);
		mta_log_str(&ll, "error", mta_errname(cm->result));
		mta_log_end(&ll);
	}
	inflight_del(d, m);
	if (!d->stopping) {
		if (cm->new_due_us >= 0)
			schedule_scan(d, cm->new_due_us);
		if (cm->new_qid != NULL)
			schedule_scan(d, 0);
	}
	msg_free(m);
	maybe_stopped(d);
}

static int read_original(void *ud, uint64_t off, void *buf, size_t len,
			 size_t *got)
{
	struct msg *m = ud;
	return mta_spool_read_body(m->d->spool, m->qid, off, buf, len, got);
}

/* Builds the DSN of this attempt, if one is owed; 0 = none needed. */
static int build_dsn(struct msg *m, char *dsn_qid)
{
	struct mta_delivery *d = m->d;
	struct mta_dsn_rcpt *rs;
	struct mta_buf out = {0};
	struct mta_dsn_info info;
	size_t n = 0;
	int64_t now = now_us();
	int rc;

	char hosts[64][256];

	rs = calloc(m->env.nrcpt, sizeof(*rs));
	if (rs == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < m->env.nrcpt; i++) {
		const struct mta_rcpt *r = &m->env.rcpts[i];
		enum mta_dsn_action act;
		if (!m->was_pending[i])
			continue;
		if (r->state == MTA_RCPT_BOUNCED)
			act = MTA_DSN_FAILED;
		else if (r->state == MTA_RCPT_SENT && m->relayed[i])
			act = MTA_DSN_RELAYED;
		else
			continue;
		if (!mta_dsn_needed(&m->env, i, act))
			continue;
		const char *remote = NULL;
		if (r->relay != NULL && n < 64) {
			size_t k = strcspn(r->relay, "[");
			if (k >= sizeof(hosts[0]))
				k = sizeof(hosts[0]) - 1;
			memcpy(hosts[n], r->relay, k);
			hosts[n][k] = '\0';
			remote = hosts[n];
		}
		rs[n].index = i;
		rs[n].action = act;
		rs[n].status = m->fstatus[i][0] ? m->fstatus[i] : NULL;
		rs[n].diagnostic = r->last_response;
		rs[n].remote_mta = remote;
		rs[n].last_attempt_us = now;
		n++;
	}
	if (n == 0) {
		free(rs);
		return 0;
	}
	/* the status of each failed recipient is in its last outcome; keep
	 * the permanent form the queue computed */
	char unique[64];
	snprintf(unique, sizeof(unique), "%s.%u", m->qid,
		 m->env.rcpts[rs[0].index].attempts);
	struct mta_dsn_params p = {
		.reporting_mta = d->cfg->server_hostname,
		.env = &m->env,
		.rcpts = rs,
		.nrcpt = n,
		.now_us = now,
		.unique = unique,
		.read = read_original,
		.read_ud = m,
		.msg_size = m->env.size,
	};
	rc = mta_dsn_build(&p, &out, &info);
	free(rs);
	if (rc != 0) {
		mta_buf_free(&out);
		return rc;
	}
	mta_envelope_init(&m->dsn_env);
	if (mta_envelope_set_str(&m->dsn_env.sender, "") != 0 ||
	    mta_envelope_add_rcpt(&m->dsn_env, m->env.sender, NULL, NULL,
				  0) == NULL ||
	    mta_envelope_set_str(&m->dsn_env.helo, d->cfg->server_hostname) ||
	    mta_envelope_set_str(&m->dsn_env.client_addr, "local")) {
		mta_buf_free(&out);
		return -ENOMEM;
	}
	m->dsn_env.body = info.eightbit ? MTA_BODY_8BITMIME : MTA_BODY_NONE;
	m->dsn_env.smtputf8 = info.smtputf8;
	m->dsn_env.arrival_us = now;
	m->dsn_env.size = out.len;
	mta_body_init(&m->dsn_body, mta_spool_tmpdir(d->spool), SIZE_MAX);
	rc = mta_body_append(&m->dsn_body, out.data, out.len);
	mta_buf_free(&out);
	if (rc != 0)
		return rc;
	mta_qid_make(dsn_qid, (uint64_t)now, ++d->seq);
	return 1;
}

static void msg_finish(struct msg *m)
{
	struct mta_delivery *d = m->d;
	struct mta_commit *cm = &m->commit;
	int rc;

	memset(cm, 0, sizeof(*cm));
	snprintf(cm->qid, sizeof(cm->qid), "%s", m->qid);
	cm->kind = MTA_COMMIT_UPDATE;
	cm->env = &m->env;
	cm->old_due_us = m->due_key;
	cm->new_due_us = mta_queue_next_due(&m->env);
	cm->done = on_update_done;
	rc = build_dsn(m, m->dsn_qid_buf);
	if (rc > 0) {
		struct mta_logline ll;
		cm->new_qid = m->dsn_qid_buf;
		cm->new_env = &m->dsn_env;
		cm->new_body = &m->dsn_body;
		mta_log_begin(&ll, MTA_LOG_INFO, "dsn");
		mta_log_str(&ll, "qid", m->qid);
		mta_log_str(&ll, "dsn_qid", m->dsn_qid_buf);
		mta_log_fmt(&ll, "to", "<%s>", m->env.sender);
		mta_log_end(&ll);
	} else if (rc < 0) {
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_ERR, "dsn_failed");
		mta_log_str(&ll, "qid", m->qid);
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_end(&ll);
	}
	d->commits_pending++;
	mta_writer_submit(d->writer, cm);
}

static void msg_job_done(struct msg *m)
{
	if (--m->jobs_open == 0)
		msg_finish(m);
}

/* ---- scanning ------------------------------------------------------- */

struct due_batch {
	struct mta_delivery *d;
	size_t n;
	bool full; /* stopped for capacity */
	int64_t settled; /* entries due before this were committed */
	int64_t last_due;
	char last_qid[MTA_QID_LEN + 1];
	char qid[SCAN_BATCH][MTA_QID_LEN + 1];
	int64_t due[SCAN_BATCH];
};

static int on_due(void *ud, const char *qid, int64_t due_us)
{
	struct due_batch *b = ud;

	if (inflight_find(b->d, qid) == NULL) {
		if (b->n >= SCAN_BATCH ||
		    b->d->ninflight + b->n >= MAX_INFLIGHT) {
			b->full = true;
			return 1;
		}
		memcpy(b->qid[b->n], qid, MTA_QID_LEN + 1);
		b->due[b->n++] = due_us;
	}
	if (due_us <= b->settled) {
		b->last_due = due_us;
		memcpy(b->last_qid, qid, MTA_QID_LEN + 1);
	}
	return 0;
}

/* Loads one due message and queues a job per destination. */
static void msg_start(struct mta_delivery *d, const char *qid, int64_t due,
		      int64_t now)
{
	struct msg *m = calloc(1, sizeof(*m));
	char dname[300];
	int rc;

	if (m == NULL)
		return;
	m->d = d;
	m->jitter = rnd() % 2000;
	memcpy(m->qid, qid, MTA_QID_LEN + 1);
	m->due_key = due;
	mta_envelope_init(&m->env);
	mta_envelope_init(&m->dsn_env);
	mta_body_init(&m->dsn_body, NULL, 0);
	rc = mta_spool_get(d->spool, qid, &m->env);
	if (rc != 0) {
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_ERR, "load_failed");
		mta_log_str(&ll, "qid", qid);
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_end(&ll);
		free(m);
		return;
	}
	m->was_pending = calloc(m->env.nrcpt + 1, 1);
	m->relayed = calloc(m->env.nrcpt + 1, sizeof(bool));
	m->fstatus = calloc(m->env.nrcpt + 1, sizeof(*m->fstatus));
	if (m->was_pending == NULL || m->relayed == NULL ||
	    m->fstatus == NULL) {
		msg_free(m);
		return;
	}
	unsigned h = hash_qid(qid);
	m->hnext = d->inflight[h];
	d->inflight[h] = m;
	d->ninflight++;

	/* one job per destination, over the recipients due now */
	struct job **jobs = calloc(m->env.nrcpt + 1, sizeof(*jobs));
	size_t njobs = 0;
	if (jobs == NULL)
		goto none;
	for (size_t i = 0; i < m->env.nrcpt; i++) {
		struct mta_rcpt *r = &m->env.rcpts[i];
		struct job *j = NULL;
		bool relay = d->cfg->delivery_relayhost != NULL;

		m->was_pending[i] = mta_queue_pending(r);
		if (!mta_queue_due(r, now))
			continue;
		if (mta_queue_destination(r, d->cfg->delivery_relayhost, dname,
					  sizeof(dname)) != 0 ||
		    dname[0] == '\0') {
			/* no domain and no relayhost: nowhere to go */
			m->jobs_open++;
			record(m, i, 0, "5.1.3",
			       "recipient address has no domain", NULL, NULL,
			       NULL);
			m->jobs_open--;
			continue;
		}
		for (size_t k = 0; k < njobs; k++)
			if (strcmp(jobs[k]->dest->name, dname) == 0)
				j = jobs[k];
		if (j == NULL) {
			struct dest *ds = dest_get(d, dname, relay);
			if (ds == NULL || (j = job_new(m, ds, m->env.nrcpt)) ==
						  NULL)
				continue;
			jobs[njobs++] = j;
		}
		j->rcpts[j->nrcpt++] = i;
	}
	m->jobs_open = (unsigned)njobs;
	for (size_t k = 0; k < njobs; k++) {
		struct dest *ds = jobs[k]->dest;
		if (ds->q_tail)
			ds->q_tail->next = jobs[k];
		else
			ds->q_head = jobs[k];
		ds->q_tail = jobs[k];
		ds->nq++;
	}
	for (size_t k = 0; k < njobs; k++)
		dest_pump(d, jobs[k]->dest);
	free(jobs);
	if (njobs > 0)
		return;
none:
	/* nothing to deliver now (all recipients decided or not yet due):
	 * store what changed and move the due entry */
	m->jobs_open = 1;
	msg_job_done(m);
}

static void scan(struct mta_delivery *d)
{
	struct due_batch *b;
	int64_t now = now_us(), next = -1;
	int rc;

	d->scan_at = -1;
	if (d->stopping)
		return;
	b = malloc(sizeof(*b));
	if (b == NULL) {
		schedule_scan(d, now + 1000000);
		return;
	}
	b->d = d;
	b->n = 0;
	b->full = false;
	b->last_due = -1;
	/* a message's due key is its arrival time, taken a little before
	 * its commit becomes visible: never move the cursor over the last
	 * few seconds */
	b->settled = now - 5 * 1000000LL;
	if (now >= d->full_scan_at) {
		d->cur_due = -1;
		d->full_scan_at = now + 60 * 1000000LL;
	}
	rc = mta_spool_due(d->spool, d->cur_due,
			   d->cur_due >= 0 ? d->cur_qid : NULL, now,
			   SCAN_BATCH + d->ninflight, on_due, b, &next);
	if (rc == 0 && b->last_due >= 0) {
		d->cur_due = b->last_due;
		memcpy(d->cur_qid, b->last_qid, MTA_QID_LEN + 1);
	}
	if (rc != 0) {
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_ERR, "scan_failed");
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_end(&ll);
		next = now + 5000000;
	}
	for (size_t i = 0; i < b->n; i++)
		msg_start(d, b->qid[i], b->due[i], now);
	if (b->full || (next >= 0 && next <= now))
		next = now + 100000; /* more waiting: look again soon */
	free(b);
	if (next >= 0)
		schedule_scan(d, next);
}

static void on_scan_timer(uv_timer_t *t)
{
	scan(t->data);
}

static void schedule_scan(struct mta_delivery *d, int64_t at_us)
{
	int64_t now = now_us();
	uint64_t ms;

	if (d->stopping || !d->selftest_done)
		return;
	if (d->scan_at >= 0 && d->scan_at <= at_us)
		return;
	d->scan_at = at_us;
	ms = at_us > now ? (uint64_t)(at_us - now + 999) / 1000 : 0;
	uv_timer_start(&d->scan_timer, on_scan_timer, ms, 0);
}

/* DNSSEC self-test: the root must validate as secure (it is signed
 * under every trust anchor we accept: the real root's or the lab's). */
static void on_selftest(const struct mta_dns_result *res, void *ud)
{
	struct mta_delivery *d = ud;
	struct mta_logline ll;
	bool ok = res->dnssec == MTA_DNSSEC_SECURE &&
		  (res->status == MTA_DNS_OK || res->status == MTA_DNS_NODATA);

	d->selftest_q = NULL;
	if (!ok || !d->selftest_done || !d->dnssec_ok) {
		mta_log_begin(&ll, ok ? MTA_LOG_INFO : MTA_LOG_ERR,
			      "dnssec_selftest");
		mta_log_str(&ll, "status", ok ? "ok" : "failed");
		mta_log_str(&ll, "dns_status", mta_dns_status_name(res->status));
		mta_log_str(&ll, "dnssec", mta_dnssec_name(res->dnssec));
		if (!ok)
			mta_log_str(&ll, "effect",
				    "DNSSEC validation is broken: mail to "
				    "domains that do not resolve securely is "
				    "deferred; check dns.resolver and "
				    "dns.trust_anchor");
		mta_log_end(&ll);
	}
	d->dnssec_ok = ok;
	if (!d->selftest_done) {
		/* the first scan waits for the first verdict, so no mail
		 * goes out before we know whether validation works */
		d->selftest_done = true;
		schedule_scan(d, 0);
	}
}

static void on_selftest_timer(uv_timer_t *t)
{
	struct mta_delivery *d = t->data;

	if (d->stopping || d->selftest_q != NULL)
		return;
	if (mta_dns_txt(d->dns, ".", on_selftest, d, &d->selftest_q) != 0) {
		struct mta_dns_result res;
		memset(&res, 0, sizeof(res));
		res.status = MTA_DNS_TEMPFAIL;
		res.dnssec = MTA_DNSSEC_INDETERMINATE;
		d->selftest_q = NULL;
		on_selftest(&res, d);
	}
}

void mta_delivery_kick(struct mta_delivery *d)
{
	/* new mail: coalesce the kicks of a burst into one scan */
	schedule_scan(d, now_us() + 5000);
}

/* ---- start and stop ------------------------------------------------- */

static int parse_relayhost(const char *spec, unsigned defport, char *host,
			   size_t hlen, unsigned *port)
{
	const char *p = spec, *end;
	size_t n;

	*port = defport;
	if (*p == '[') {
		end = strchr(p, ']');
		if (end == NULL)
			return -EINVAL;
		n = (size_t)(end - p - 1);
		if (n == 0 || n >= hlen)
			return -EINVAL;
		memcpy(host, p + 1, n);
		host[n] = '\0';
		p = end + 1;
		if (*p == ':')
			*port = (unsigned)strtoul(p + 1, NULL, 10);
		return 0;
	}
	end = strrchr(p, ':');
	n = end ? (size_t)(end - p) : strlen(p);
	if (n == 0 || n >= hlen)
		return -EINVAL;
	memcpy(host, p, n);
	host[n] = '\0';
	if (end)
		*port = (unsigned)strtoul(end + 1, NULL, 10);
	return 0;
}

int mta_delivery_start(const struct mta_delivery_params *p,
		       struct mta_delivery **out)
{
	struct mta_delivery *d = calloc(1, sizeof(*d));
	const char *lv;

	if (d == NULL)
		return -ENOMEM;
	d->loop = p->loop;
	d->cfg = p->cfg;
	d->spool = p->spool;
	d->writer = p->writer;
	d->dns = p->dns;
	d->tls = p->tls;
	d->webpki = p->webpki;
	d->auth_user = p->auth_user;
	d->auth_pass = p->auth_pass;
	d->pol.min_backoff_us = (uint64_t)p->cfg->min_backoff * 1000000u;
	d->pol.max_backoff_us = (uint64_t)p->cfg->max_backoff * 1000000u;
	d->pol.queue_lifetime_us = (uint64_t)p->cfg->queue_lifetime * 1000000u;
	d->pol.jitter_permille = 100;
	d->scan_at = -1;
	d->cur_due = -1;
	d->seq = rnd() & 0xffff;
	lv = p->cfg->tls_default_level ? p->cfg->tls_default_level : "may";
	d->level = mta_tls_level_parse(lv);
	if (d->level < 0)
		d->level = MTA_TLS_MAY;
	d->policy = p->policy;
	d->mtasts = p->mtasts;
	if (p->cfg->delivery_relayhost != NULL &&
	    parse_relayhost(p->cfg->delivery_relayhost, p->cfg->delivery_port,
			    d->relay_host, sizeof(d->relay_host),
			    &d->relay_port) != 0) {
		free(d);
		return MTA_ECONFIG;
	}
	uv_timer_init(d->loop, &d->scan_timer);
	d->scan_timer.data = d;
	d->dnssec_ok = true; /* until the first self-test says otherwise */
	uv_timer_init(d->loop, &d->selftest_timer);
	d->selftest_timer.data = d;
	uv_timer_start(&d->selftest_timer, on_selftest_timer, 0,
		       3600 * 1000);
	*out = d;
	return 0;
}

static void on_scan_timer_closed(uv_handle_t *h)
{
	struct mta_delivery *d = h->data;
	void (*done)(void *) = d->done;
	void *arg = d->done_arg;

	for (struct dest *ds = d->dests, *n; ds; ds = n) {
		n = ds->next;
		free(ds);
	}
	free(d);
	if (done)
		done(arg);
}

static void maybe_stopped(struct mta_delivery *d)
{
	if (!d->stopping || d->nconn > 0 || d->commits_pending > 0 ||
	    uv_is_closing((uv_handle_t *)&d->scan_timer))
		return;
	/* messages whose jobs never ran keep their due entries */
	for (size_t h = 0; h < HASH_SIZE; h++) {
		struct msg *m = d->inflight[h], *n;
		for (; m; m = n) {
			n = m->hnext;
			msg_free(m);
		}
		d->inflight[h] = NULL;
	}
	for (struct dest *ds = d->dests; ds; ds = ds->next) {
		struct job *j;
		while ((j = dest_take(ds)) != NULL)
			job_free(j);
	}
	uv_close((uv_handle_t *)&d->selftest_timer, NULL);
	uv_close((uv_handle_t *)&d->scan_timer, on_scan_timer_closed);
}

void mta_delivery_stop(struct mta_delivery *d, void (*done)(void *arg),
		       void *arg)
{
	d->stopping = true;
	d->done = done;
	d->done_arg = arg;
	uv_timer_stop(&d->scan_timer);
	uv_timer_stop(&d->selftest_timer);
	if (d->selftest_q != NULL) {
		mta_dns_cancel(d->selftest_q);
		d->selftest_q = NULL;
	}
	for (struct conn *c = d->conns; c; c = c->next) {
		if (c->phase == C_CLOSING)
			continue;
		if (c->job != NULL) {
			/* unrecorded: the message keeps its due entry */
			job_free(c->job);
			c->job = NULL;
		}
		if (c->txn.rcpts != NULL) {
			free((void *)c->txn.rcpts);
			c->txn.rcpts = NULL;
		}
		if (c->q != NULL) {
			mta_dns_cancel(c->q);
			c->q = NULL;
		}
		if (c->sq != NULL) {
			mta_mtasts_cancel(c->sq);
			c->sq = NULL;
		}
		c->phase = C_CLOSING;
		conn_close(c, after_close_end);
	}
	maybe_stopped(d);
}
