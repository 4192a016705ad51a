/*
 * delivery.c - the scheduler half of the delivery module: the due-index
 * scan, messages and jobs, destinations, outcomes, DSNs, the DNSSEC
 * self-test, start and stop.  See delivery.h.
 */
#include "delivery_int.h"
#include "tlsrpt_send.h"

#include <strings.h>

int64_t dlv_now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

uint32_t dlv_rnd(void)
{
	uint32_t r = 0;
	if (getrandom(&r, sizeof(r), 0) != sizeof(r))
		r = (uint32_t)dlv_now_us();
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

#define DUE_SLACK_US 1000000 /* see msg_start() */

/* Records the outcome of one attempt for env recipient r and logs it. */
void dlv_record(struct msg *m, size_t r, int code, const char *status,
		   const char *text, const char *relay, const char *tls,
		   const char *auth, const char *skipped)
{
	struct mta_delivery *d = m->d;
	struct mta_queue_outcome o = {code, status, text, relay};
	char fs[16] = "";
	struct mta_logline ll;
	int64_t now = dlv_now_us();
	int st;

	/* one jitter per message attempt: recipients deferred together
	 * are retried together (CLI-12) */
	st = mta_queue_apply(&d->pol, &m->env, r, &o, now, m->jitter, fs,
			     sizeof(fs));
	memcpy(m->fstatus[r], fs, sizeof(fs));
	{
		/* the decision and its evidence stay with the recipient */
		char ev[600];
		snprintf(ev, sizeof(ev), "tls=%s auth=%s%s%s",
			 tls && tls[0] ? tls : "none",
			 auth && auth[0] ? auth : "none",
			 skipped && skipped[0] ? " mx_skipped=" : "",
			 skipped && skipped[0] ? skipped : "");
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
	if (skipped && skipped[0])
		mta_log_str(&ll, "mx_skipped", skipped);
	mta_log_str(&ll, "response", text);
	mta_log_end(&ll);
	if (st >= 0)
		mta_metrics_delivery(d->metrics, state_word(st), auth, fs);
}

/* ---- jobs ----------------------------------------------------------- */

void dlv_job_free(struct job *j)
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
		dlv_job_free(j);
		return NULL;
	}
	return j;
}

/* Every undecided recipient of j gets this outcome; then j ends. */
void dlv_job_finish(struct job *j, int code, const char *status,
		       const char *text, const char *relay, const char *tls,
		       const char *auth)
{
	struct msg *m = j->m;

	for (size_t i = 0; i < j->nrcpt; i++) {
		if (j->rstate[i] == R_FINAL)
			continue;
		if (j->rstate[i] == R_TENTATIVE)
			dlv_record(m, j->rcpts[i], j->tcode[i], j->tstatus[i],
			       j->ttext[i], relay, tls, auth, j->skipped);
		else
			dlv_record(m, j->rcpts[i], code, status, text, relay,
			       tls, auth, j->skipped);
		j->rstate[i] = R_FINAL;
	}
	dlv_job_free(j);
	dlv_msg_job_done(m);
}

/* Tentative results (4xx inside a transaction) become undecided again:
 * the host failed, the next one gets another chance. */
void dlv_job_reopen(struct job *j)
{
	for (size_t i = 0; i < j->nrcpt; i++)
		if (j->rstate[i] == R_TENTATIVE)
			j->rstate[i] = R_UNDECIDED;
}

size_t dlv_job_undecided(const struct job *j, size_t *out)
{
	size_t n = 0;
	for (size_t i = 0; i < j->nrcpt; i++)
		if (j->rstate[i] == R_UNDECIDED)
			out[n++] = j->rcpts[i];
	return n;
}

/* ---- destinations --------------------------------------------------- */

/* The TLS requirement class of a message's destinations: a REQUIRETLS
 * message with the null reverse-path (an NDR) is not held to RFC 8689
 * §4.2.1 (RTLS-29/30) but passes the parameter on where it can. */
#define DEST_NDR_REQUIRETLS 3
static uint8_t dest_class(const struct mta_envelope *e)
{
	if (e->tlsreq == MTA_TLSREQ_REQUIRETLS && e->sender[0] == '\0')
		return DEST_NDR_REQUIRETLS;
	return e->tlsreq;
}

/* The destination of a job: name (the recipient domain, or the relay's
 * host), whether it is a relay, the route that chose it, and the TLS
 * requirement class (RFC 8689: REQUIRETLS and TLS-Required: No messages
 * never share a connection with others, whose policy is per host). */
static struct dest *dest_get(struct mta_delivery *d, const char *name,
			     bool relay, const struct mta_routes_rule *route,
			     bool fallback, uint8_t tlsreq)
{
	struct dest *ds;

	for (ds = d->dests; ds; ds = ds->next)
		if (strcmp(ds->name, name) == 0 && ds->relay == relay &&
		    ds->route == route && ds->fallback == fallback &&
		    ds->tlsreq == tlsreq)
			return ds;
	ds = calloc(1, sizeof(*ds));
	if (ds == NULL)
		return NULL;
	snprintf(ds->name, sizeof(ds->name), "%s", name);
	ds->relay = relay;
	ds->route = route;
	if (route != NULL) {
		ds->rtab = d->rtab; /* route came from d->routes */
		ds->rtab->refs++;
	}
	ds->fallback = fallback;
	if (relay && route == NULL) {
		snprintf(ds->host, sizeof(ds->host), "%s", d->relay_host);
		ds->port = d->relay_port;
	} else if (relay) {
		snprintf(ds->host, sizeof(ds->host), "%s",
			 fallback ? route->fb_host : route->host);
		ds->port = fallback ? route->fb_port : route->port;
		if (ds->port == 0)
			ds->port = d->cfg->delivery_port;
	}
	ds->tlsreq = tlsreq;
	ds->next = d->dests;
	d->dests = ds;
	return ds;
}

static void rtab_unref(struct dlv_rtab *t)
{
	if (t == NULL || --t->refs > 0)
		return;
	mta_routes_free(t->r);
	free(t);
}

void dlv_dest_maybe_free(struct mta_delivery *d, struct dest *ds)
{
	if (ds->nq > 0 || ds->nconn > 0)
		return;
	for (struct dest **pp = &d->dests; *pp; pp = &(*pp)->next) {
		if (*pp == ds) {
			*pp = ds->next;
			rtab_unref(ds->rtab);
			free(ds);
			return;
		}
	}
}

struct job *dlv_dest_take(struct dest *ds)
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
void dlv_dest_fail_all(struct dest *ds, int code, const char *status,
			  const char *text, const char *relay)
{
	struct job *j;
	while ((j = dlv_dest_take(ds)) != NULL)
		dlv_job_finish(j, code, status, text, relay, NULL, NULL);
}

void dlv_dest_pump(struct mta_delivery *d, struct dest *ds)
{
	while (ds->nq > 0 && !d->stopping &&
	       d->nconn < d->cfg->max_connections &&
	       ds->nconn < d->cfg->max_per_destination &&
	       ds->nconn < 1 + ds->nq / JOBS_PER_CONN &&
	       dlv_dest_may_connect(d, ds))
		dlv_conn_start(d, ds);
}

/* Shaping: until a connection has found the destination's site (after
 * its MX lookup), one connection at a time; then the site's limit. */
bool dlv_dest_may_connect(const struct mta_delivery *d, const struct dest *ds)
{
	if (d->shaping == NULL)
		return true;
	if (!ds->site_known)
		return ds->nconn == 0;
	return ds->site == NULL || mta_shaping_conn_ok(ds->site);
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
	struct mta_commit_update *u = &cm->u.update;
	struct mta_logline ll;

	d->commits_pending--;
	if (cm->result != 0 && u->dsn_qid != NULL && !d->stopping) {
		/* try once more without the DSN: the state matters more */
		mta_log_begin(&ll, MTA_LOG_ERR, "dsn_lost");
		mta_log_str(&ll, "qid", m->qid);
		mta_log_str(&ll, "error", mta_errname(cm->result));
		mta_log_end(&ll);
		struct mta_commit_update retry = *u;
		retry.dsn_qid = NULL;
		retry.dsn_env = NULL;
		retry.dsn_body = NULL;
		d->commits_pending++;
		mta_writer_submit_update(d->writer, cm, &retry, on_update_done);
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
		if (u->new_due_us >= 0)
			schedule_scan(d, u->new_due_us);
		if (u->dsn_qid != NULL)
			schedule_scan(d, 0);
	}
	msg_free(m);
	dlv_maybe_stopped(d);
}

static int read_original(void *ud, uint64_t off, void *buf, size_t len,
			 size_t *got)
{
	struct msg *m = ud;
	return mta_spool_read_body(m->d->spool, m->qid, off, buf, len, got);
}

/* delivery.delay_warning: recipient i is still queued, has waited that
 * long and was never warned; never for the null sender (DSN-06) or
 * NOTIFY=NEVER; with NOTIFY given, only when it names DELAY. */
static bool delay_warning_due(const struct msg *m, size_t i, int64_t now)
{
	const struct mta_rcpt *r = &m->env.rcpts[i];
	unsigned warn = m->d->cfg->delay_warning;

	if (warn == 0 || r->state != MTA_RCPT_DEFERRED ||
	    (r->flags & MTA_RCPT_F_DELAY_WARNED) != 0 ||
	    m->env.sender == NULL || m->env.sender[0] == '\0' ||
	    (r->notify & MTA_NOTIFY_NEVER) != 0 ||
	    (r->notify != 0 && (r->notify & MTA_NOTIFY_DELAY) == 0))
		return false;
	return now - m->env.arrival_us >= (int64_t)warn * 1000000;
}

/* Builds the DSN of this attempt, if one is owed; 0 = none needed. */
/* Just over 100 lines: gathers the recipients a DSN is owed for, builds
 * it and fills the DSN's envelope, with one release of the recipient
 * array. */
static int build_dsn(struct msg *m, char *dsn_qid)
{
	struct mta_delivery *d = m->d;
	struct mta_dsn_rcpt *rs;
	struct mta_buf out = {0};
	struct mta_dsn_info info;
	size_t n = 0;
	int64_t now = dlv_now_us();
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
		else if (delay_warning_due(m, i, now))
			act = MTA_DSN_DELAYED;
		else
			continue;
		if (act != MTA_DSN_DELAYED && !mta_dsn_needed(&m->env, i, act))
			continue;
		if (act == MTA_DSN_DELAYED) {
			/* at most once: the flag is stored with the DSN */
			m->env.rcpts[i].flags |= MTA_RCPT_F_DELAY_WARNED;
			rs[n].will_retry_until_us =
				m->env.arrival_us +
				(int64_t)d->cfg->queue_lifetime * 1000000;
		}
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
	if (m->env.tlsreq == MTA_TLSREQ_REQUIRETLS)
		/* RFC 8689 §5 (RTLS-28): the NDR itself carries REQUIRETLS */
		m->dsn_env.tlsreq = MTA_TLSREQ_REQUIRETLS;
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
	struct mta_commit_update u = {
		.qid = m->qid,
		.env = &m->env,
		.old_due_us = m->due_key,
		.new_due_us = mta_queue_next_due(&m->env),
	};
	int rc;

	rc = build_dsn(m, m->dsn_qid_buf);
	if (rc > 0) {
		struct mta_logline ll;
		u.dsn_qid = m->dsn_qid_buf;
		u.dsn_env = &m->dsn_env;
		u.dsn_body = &m->dsn_body;
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
	mta_writer_submit_update(d->writer, &m->commit, &u, on_update_done);
}

void dlv_msg_job_done(struct msg *m)
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

/* A stale due entry was dropped (or the message came back). */
static void on_undue_done(struct mta_commit *cm)
{
	struct msg *m = container_of(cm, struct msg, commit);
	struct mta_delivery *d = m->d;

	d->commits_pending--;
	if (cm->result != 0) {
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_ERR, "undue_failed");
		mta_log_str(&ll, "qid", m->qid);
		mta_log_str(&ll, "error", mta_errname(cm->result));
		mta_log_end(&ll);
	}
	mta_envelope_free(&m->env);
	mta_envelope_free(&m->dsn_env);
	mta_body_free(&m->dsn_body);
	free(m);
	dlv_maybe_stopped(d);
}

/*
 * The routing table's decision for recipient i (routes.h): 0 = MX to the
 * domain in dname, 1 = to the relay named in dname (*route says which),
 * -1 = decided here (refuse bounces, hold defers; recorded).  No rule:
 * what delivery does without a table (delivery.relayhost, else MX).
 */
static int route_rcpt(struct msg *m, size_t i, int64_t now, char *dname,
		      size_t dlen, const struct mta_routes_rule **route,
		      bool *fallback)
{
	struct mta_delivery *d = m->d;
	struct mta_rcpt *r = &m->env.rcpts[i];
	const char *at = strrchr(r->addr, '@');
	const char *sat = strrchr(m->env.sender, '@');
	const struct mta_routes_rule *x;
	char text[320];

	*route = NULL;
	*fallback = false;
	if (mta_queue_destination(r, NULL, dname, dlen) != 0 || at == NULL ||
	    dname[0] == '\0') {
		m->jobs_open++;
		dlv_record(m, i, 0, "5.1.3", "recipient address has no domain",
			   NULL, NULL, NULL, NULL);
		m->jobs_open--;
		return -1;
	}
	x = mta_routes_match(d->routes, dname, sat ? sat + 1 : "");
	if (x == NULL) {
		if (d->relay_host[0] == '\0')
			return 0;
		snprintf(dname, dlen, "%s", d->cfg->delivery_relayhost);
		for (char *p = dname; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		return 1;
	}
	switch (x->action) {
	case MTA_ROUTES_REFUSE:
	case MTA_ROUTES_HOLD:
		m->jobs_open++;
		if (x->action == MTA_ROUTES_REFUSE)
			dlv_record(m, i, 550, x->status, x->text, NULL, NULL,
				   NULL, NULL);
		else {
			snprintf(text, sizeof(text),
				 "held by the routing table (line %u)",
				 x->line);
			dlv_record(m, i, 0, "4.3.2", text, NULL, NULL, NULL,
				   NULL);
		}
		m->jobs_open--;
		return -1;
	case MTA_ROUTES_RELAY:
		*route = x;
		snprintf(dname, dlen, "%s", x->host);
		return 1;
	case MTA_ROUTES_MX:
		*route = x;
		if (x->fb_host[0] != '\0' &&
		    ((x->fb_attempts > 0 && r->attempts >= x->fb_attempts) ||
		     (x->fb_age > 0 &&
		      now - m->env.arrival_us >=
			      (int64_t)x->fb_age * 1000000))) {
			*fallback = true;
			snprintf(dname, dlen, "%s", x->fb_host);
			return 1;
		}
		return 0;
	}
	return 0;
}

/* Loads one due message and queues a job per destination. */
/* Over 100 lines: loading the message, registering it in flight and
 * making its jobs share one partly built struct msg, and each failure
 * unwinds exactly what exists at that point. */
static void msg_start(struct mta_delivery *d, const char *qid, int64_t due,
		      int64_t now)
{
	struct msg *m = calloc(1, sizeof(*m));
	char dname[300];
	int rc;

	if (m == NULL)
		return;
	m->d = d;
	m->jitter = dlv_rnd() % 2000;
	memcpy(m->qid, qid, MTA_QID_LEN + 1);
	m->due_key = due;
	mta_envelope_init(&m->env);
	mta_envelope_init(&m->dsn_env);
	mta_body_init(&m->dsn_body, NULL, 0);
	rc = mta_spool_get(d->spool, qid, &m->env);
	if (rc == MTA_ENOTFOUND) {
		/* deleted (mtactl delete/bounce, a finished attempt) between
		 * the scan and the load: drop the due entry if it is left */
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_DEBUG, "load_skipped");
		mta_log_str(&ll, "qid", qid);
		mta_log_str(&ll, "reason", "gone");
		mta_log_end(&ll);
		struct mta_commit_admin a = {
			.op = MTA_SPOOL_UNDUE, .qid = m->qid, .now_us = due};
		memset(&m->commit, 0, sizeof(m->commit));
		d->commits_pending++;
		mta_writer_submit_admin(d->writer, &m->commit, &a,
					on_undue_done);
		return;
	}
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
		const struct mta_routes_rule *route = NULL;
		bool fallback = false;

		m->was_pending[i] = mta_queue_pending(r);
		/* recipients deferred in one attempt were stamped a few
		 * moments apart (one clock read per reply): a second of
		 * slack keeps them together on the retry (CLI-12) */
		if (!mta_queue_due(r, now + DUE_SLACK_US))
			continue;
		if (d->routes != NULL) {
			int act = route_rcpt(m, i, now, dname, sizeof(dname),
					     &route, &fallback);
			if (act < 0)
				continue; /* decided here (refuse, hold) */
			relay = act > 0;
		} else if (mta_queue_destination(r, d->cfg->delivery_relayhost,
						 dname, sizeof(dname)) != 0 ||
			   dname[0] == '\0') {
			/* no domain and no relayhost: nowhere to go */
			m->jobs_open++;
			dlv_record(m, i, 0, "5.1.3",
			       "recipient address has no domain", NULL, NULL,
			       NULL, NULL);
			m->jobs_open--;
			continue;
		}
		for (size_t k = 0; k < njobs; k++)
			if (strcmp(jobs[k]->dest->name, dname) == 0 &&
			    jobs[k]->dest->relay == relay &&
			    jobs[k]->dest->route == route &&
			    jobs[k]->dest->fallback == fallback)
				j = jobs[k];
		if (j == NULL) {
			struct dest *ds = dest_get(d, dname, relay, route,
						   fallback,
						   dest_class(&m->env));
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
		dlv_dest_pump(d, jobs[k]->dest);
	free(jobs);
	if (njobs > 0)
		return;
none:
	/* nothing to deliver now (all recipients decided or not yet due):
	 * store what changed and move the due entry */
	m->jobs_open = 1;
	dlv_msg_job_done(m);
}

static void scan(struct mta_delivery *d)
{
	struct due_batch *b;
	int64_t now = dlv_now_us(), next = -1;
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
	int64_t now = dlv_now_us();
	uint64_t ms;

	if (d->stopping || !d->selftest_done)
		return;
	if (d->scan_at >= 0 && d->scan_at <= at_us)
		return;
	d->scan_at = at_us;
	ms = at_us > now ? (uint64_t)(at_us - now + 999) / 1000 : 0;
	uv_timer_start(&d->scan_timer, on_scan_timer, ms, 0);
}

#define SELFTEST_EVERY_MS (3600u * 1000u)
#define SELFTEST_RETRY_MS (5u * 1000u)

static void on_selftest_timer(uv_timer_t *t);

/* DNSSEC self-test: the root must validate as secure (it is signed
 * under every trust anchor we accept: the real root's or the lab's). */
static void on_selftest(const struct mta_dns_result *res, void *ud)
{
	struct mta_delivery *d = ud;
	struct mta_logline ll;
	bool ok = res->dnssec == MTA_DNSSEC_SECURE &&
		  (res->status == MTA_DNS_OK || res->status == MTA_DNS_NODATA);

	d->selftest_q = NULL;
	/* logged at the first verdict and at every change (a failing test
	 * is retried every few seconds) */
	if (!d->selftest_done || ok != d->dnssec_ok) {
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
	/* failing: try again soon, so readiness (/readyz) and delivery
	 * follow a resolver that comes back; passing: hourly */
	if (!d->stopping)
		uv_timer_start(&d->selftest_timer, on_selftest_timer,
			       ok ? SELFTEST_EVERY_MS : SELFTEST_RETRY_MS,
			       SELFTEST_EVERY_MS);
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
	schedule_scan(d, dlv_now_us() + 5000);
}

void mta_delivery_env(const struct mta_delivery *d,
		      struct mta_delivery_env *out)
{
	memset(out, 0, sizeof(*out));
	out->cfg = d->cfg;
	out->dns = d->dns;
	out->tls = d->tls;
	out->webpki = d->webpki;
	out->policy = d->policy;
	out->mtasts = d->mtasts;
	out->default_level = d->level;
	out->dnssec_ok = d->dnssec_ok;
	out->selftest_done = d->selftest_done;
	out->relay_host = d->relay_host[0] != '\0' ? d->relay_host : NULL;
	out->relay_port = d->relay_port;
	out->relay_auth = d->auth_user != NULL;
	out->routes = d->routes;
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

void mta_delivery_tables_free(struct mta_delivery_tables *t)
{
	if (t == NULL)
		return;
	rtab_unref(t->rtab);
	mta_shaping_free(t->shaping);
	free(t->sites);
	free(t);
}

int mta_delivery_tables_load(const struct mta_config *cfg, bool have_auth,
			     struct mta_delivery_tables **out, char *err,
			     size_t errlen)
{
	struct mta_delivery_tables *t = calloc(1, sizeof(*t));
	int rc;

	if (t == NULL)
		return -ENOMEM;
	if (cfg->routes_file != NULL) {
		struct mta_routes *r = NULL;
		rc = mta_routes_load(cfg->routes_file, &r, err, errlen);
		if (rc != 0)
			goto fail;
		t->rtab = calloc(1, sizeof(*t->rtab));
		if (t->rtab == NULL) {
			mta_routes_free(r);
			snprintf(err, errlen, "out of memory");
			rc = -ENOMEM;
			goto fail;
		}
		t->rtab->r = r;
		t->rtab->refs = 1;
		for (size_t i = 0; i < mta_routes_count(r); i++) {
			const struct mta_routes_rule *x = mta_routes_get(r, i);
			if (x->auth[0] != '\0' &&
			    (strcmp(x->auth, "default") != 0 || !have_auth)) {
				snprintf(err, errlen,
					 "%s:%u: auth=%s: only \"default\" "
					 "(delivery.relayhost_auth_file, "
					 "which must be set)",
					 cfg->routes_file, x->line, x->auth);
				rc = MTA_ECONFIG;
				goto fail;
			}
		}
	}
	if (cfg->shaping_file != NULL) {
		rc = mta_shaping_load(cfg->shaping_file, &t->shaping, err,
				      errlen);
		if (rc != 0)
			goto fail;
		t->nsites = mta_shaping_count(t->shaping);
		t->sites = calloc(t->nsites + 1, sizeof(*t->sites));
		if (t->sites == NULL) {
			snprintf(err, errlen, "out of memory");
			rc = -ENOMEM;
			goto fail;
		}
		for (size_t i = 0; i < t->nsites; i++)
			mta_shaping_site_init(&t->sites[i],
					      mta_shaping_get(t->shaping, i),
					      dlv_now_us());
	}
	*out = t;
	return 0;
fail:
	mta_delivery_tables_free(t);
	return rc;
}

/* Makes t the tables in force (taken over); d's old ones are the
 * caller's business (tables_swap). */
static void tables_install(struct mta_delivery *d,
			   struct mta_delivery_tables *t)
{
	d->rtab = t->rtab;
	d->routes = t->rtab != NULL ? t->rtab->r : NULL;
	d->shaping = t->shaping;
	d->sites = t->sites;
	d->nsites = t->nsites;
	free(t);
}

/* ---- the TLSRPT reporter (tlsrpt_send.h) ----------------------------- */

static void tlsrpt_kick(void *ud)
{
	mta_delivery_kick(ud);
}

/* Start or stop the reporter as tlsrpt.enabled says; a failure to start
 * is logged and delivery goes on without reports. */
static void tlsrpt_apply(struct mta_delivery *d)
{
	struct mta_tlsrpt_sender_params tp = {0};
	int rc;

	if (!d->cfg->tlsrpt_enabled) {
		if (d->tlsrpt != NULL)
			mta_tlsrpt_sender_stop(d->tlsrpt);
		d->tlsrpt = NULL;
		return;
	}
	if (d->tlsrpt != NULL) {
		mta_tlsrpt_sender_set_config(d->tlsrpt, d->cfg);
		return;
	}
	tp.loop = d->loop;
	tp.cfg = d->cfg;
	tp.spool = d->spool;
	tp.writer = d->writer;
	tp.dns = d->dns;
	tp.qid_seq = &d->seq;
	tp.kick = tlsrpt_kick;
	tp.kick_ud = d;
	rc = mta_tlsrpt_sender_start(&tp, &d->tlsrpt);
	if (rc != 0) {
		struct mta_logline ll;
		d->tlsrpt = NULL;
		mta_log_begin(&ll, MTA_LOG_ERR, "tlsrpt_round");
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_str(&ll, "effect", "no TLS reports are sent");
		mta_log_end(&ll);
	}
}

int mta_delivery_tlsrpt_send(struct mta_delivery *d, const char *day,
			     void (*line)(void *ud, const char *text),
			     void (*done)(void *ud, int rc), void *ud)
{
	if (d->tlsrpt == NULL)
		return MTA_ECLOSED;
	return mta_tlsrpt_sender_run(d->tlsrpt, day, line, done, ud);
}

void mta_delivery_tlsrpt_detach(struct mta_delivery *d, void *ud)
{
	if (d != NULL && d->tlsrpt != NULL)
		mta_tlsrpt_sender_detach(d->tlsrpt, ud);
}

int mta_delivery_start(const struct mta_delivery_params *p,
		       struct mta_delivery **out)
{
	struct mta_delivery *d = calloc(1, sizeof(*d));

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
	d->auth_plain = p->auth_plain;
	d->pol.min_backoff_us = (uint64_t)p->cfg->min_backoff * 1000000u;
	d->pol.max_backoff_us = (uint64_t)p->cfg->max_backoff * 1000000u;
	d->pol.queue_lifetime_us = (uint64_t)p->cfg->queue_lifetime * 1000000u;
	d->pol.jitter_permille = 100;
	d->scan_at = -1;
	d->cur_due = -1;
	d->seq = dlv_rnd() & 0xffff;
	d->level = p->cfg->tls_default_level;
	d->policy = p->policy;
	d->ct = p->ct;
	d->mtasts = p->mtasts;
	d->metrics = p->metrics;
	if (p->cfg->delivery_relayhost != NULL &&
	    parse_relayhost(p->cfg->delivery_relayhost, p->cfg->delivery_port,
			    d->relay_host, sizeof(d->relay_host),
			    &d->relay_port) != 0) {
		free(d);
		return MTA_ECONFIG;
	}
	struct mta_delivery_tables *tab = p->tables;
	if (tab == NULL) {
		char err[512];
		int rc = mta_delivery_tables_load(p->cfg, p->auth_user != NULL,
						  &tab, err, sizeof(err));
		if (rc != 0) {
			struct mta_logline ll;
			mta_log_begin(&ll, MTA_LOG_ERR, "config_error");
			mta_log_str(&ll, "error", err);
			mta_log_end(&ll);
			free(d);
			return MTA_ECONFIG;
		}
	}
	/* the daemon refuses to start on a table error (logged above) */
	tables_install(d, tab);
	uv_timer_init(d->loop, &d->scan_timer);
	d->scan_timer.data = d;
	d->dnssec_ok = true; /* until the first self-test says otherwise */
	uv_timer_init(d->loop, &d->selftest_timer);
	d->selftest_timer.data = d;
	uv_timer_start(&d->selftest_timer, on_selftest_timer, 0,
		       SELFTEST_EVERY_MS);
	tlsrpt_apply(d);
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
		rtab_unref(ds->rtab);
		free(ds);
	}
	rtab_unref(d->rtab);
	mta_shaping_free(d->shaping);
	free(d->sites);
	free(d);
	if (done)
		done(arg);
}

void dlv_maybe_stopped(struct mta_delivery *d)
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
		while ((j = dlv_dest_take(ds)) != NULL)
			dlv_job_free(j);
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
	if (d->tlsrpt != NULL) {
		mta_tlsrpt_sender_stop(d->tlsrpt); /* frees itself */
		d->tlsrpt = NULL;
	}
	if (d->selftest_q != NULL) {
		mta_dns_cancel(d->selftest_q);
		d->selftest_q = NULL;
	}
	for (struct conn *c = d->conns; c; c = c->next) {
		if (c->phase == C_CLOSING)
			continue;
		if (c->job != NULL) {
			/* unrecorded: the message keeps its due entry */
			dlv_job_free(c->job);
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
		dlv_conn_close(c, dlv_after_close_end);
	}
	dlv_maybe_stopped(d);
}

/* ---- for the health endpoint and reload ----------------------------- */

int mta_delivery_dnssec_state(const struct mta_delivery *d)
{
	if (!d->selftest_done)
		return -1;
	return d->dnssec_ok ? 1 : 0;
}

size_t mta_delivery_nactive(const struct mta_delivery *d)
{
	return d->ninflight;
}

size_t mta_delivery_nconn(const struct mta_delivery *d)
{
	return d->nconn;
}

/* The shaping site of the new table with the pattern of old, or NULL. */
static struct mta_shaping_site *
site_same(struct mta_shaping_site *sites, size_t n,
	  const struct mta_shaping_site *old)
{
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(sites[i].rule->site, old->rule->site) == 0)
			return &sites[i];
	return NULL;
}

/*
 * Reload: t's tables replace d's.  Routing: the current reference of the
 * old table is dropped; destinations routed by it keep theirs.  Shaping:
 * the new sites take over the state of the old ones with the same
 * pattern, every connection and destination is moved to the new site (or
 * to none: a connection finishes unshaped, a destination finds its site
 * again with its next connection), then the old sites and rules go.
 */
static void tables_swap(struct mta_delivery *d, struct mta_delivery_tables *t)
{
	struct dlv_rtab *ortab = d->rtab;
	struct mta_shaping *oshaping = d->shaping;
	struct mta_shaping_site *osites = d->sites;
	size_t onsites = d->nsites;
	struct mta_shaping_site *ns;

	for (size_t i = 0; i < t->nsites; i++) {
		struct mta_shaping_site *old =
			site_same(osites, onsites, &t->sites[i]);
		if (old != NULL &&
		    site_same(t->sites, t->nsites, old) == &t->sites[i])
			mta_shaping_site_carry(&t->sites[i], old);
	}
	for (struct conn *c = d->conns; c; c = c->next) {
		if (c->site == NULL)
			continue;
		ns = site_same(t->sites, t->nsites, c->site);
		c->site = ns;
		if (ns != NULL)
			ns->nconn++;
	}
	for (struct dest *ds = d->dests; ds; ds = ds->next) {
		if (!ds->site_known)
			continue;
		ns = ds->site ? site_same(t->sites, t->nsites, ds->site)
			      : NULL;
		ds->site = ns;
		ds->site_known = ns != NULL;
	}
	tables_install(d, t);
	rtab_unref(ortab);
	mta_shaping_free(oshaping);
	free(osites);
	{
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_INFO, "tables_reloaded");
		mta_log_int(&ll, "routes",
			    d->routes ? (long long)mta_routes_count(d->routes)
				      : 0);
		mta_log_int(&ll, "shaping", (long long)d->nsites);
		mta_log_end(&ll);
	}
}

void mta_delivery_reconfigure(struct mta_delivery *d,
			      const struct mta_delivery_params *p)
{
	d->cfg = p->cfg;
	d->tls = p->tls;
	d->webpki = p->webpki;
	d->policy = p->policy;
	d->ct = p->ct;
	d->auth_user = p->auth_user;
	d->auth_pass = p->auth_pass;
	d->auth_plain = p->auth_plain;
	d->pol.min_backoff_us = (uint64_t)p->cfg->min_backoff * 1000000u;
	d->pol.max_backoff_us = (uint64_t)p->cfg->max_backoff * 1000000u;
	d->pol.queue_lifetime_us = (uint64_t)p->cfg->queue_lifetime * 1000000u;
	d->level = p->cfg->tls_default_level;
	/* the relayhost (checked at load); destinations already queued
	 * for the old one connect to the new one from now on */
	if (p->cfg->delivery_relayhost != NULL &&
	    parse_relayhost(p->cfg->delivery_relayhost, p->cfg->delivery_port,
			    d->relay_host, sizeof(d->relay_host),
			    &d->relay_port) != 0)
		d->relay_host[0] = '\0';
	if (p->tables != NULL)
		tables_swap(d, p->tables);
	if (!d->stopping)
		tlsrpt_apply(d);
}

static void site_info(const struct mta_shaping_site *st, int64_t now,
		      struct mta_delivery_site *out)
{
	memset(out, 0, sizeof(*out));
	out->site = st->rule->site;
	out->line = st->rule->line;
	out->nconn = st->nconn;
	out->max_conn = st->rule->connections;
	out->rate = st->rate;
	out->ceiling = st->ceiling;
	out->sent = st->sent;
	out->throttles = st->throttles;
	if (st->rate > 0 && st->next_us > now)
		out->next_ms = (st->next_us - now + 999) / 1000;
}

int mta_delivery_foreach_site(const struct mta_delivery *d,
			      int (*cb)(void *ud,
					const struct mta_delivery_site *s),
			      void *ud)
{
	int64_t now = dlv_now_us();
	struct mta_delivery_site si;

	for (size_t i = 0; i < d->nsites; i++) {
		site_info(&d->sites[i], now, &si);
		int rc = cb(ud, &si);
		if (rc != 0)
			return rc;
	}
	return 0;
}

/* ---- for the control socket ------------------------------------------ */

bool mta_delivery_active(struct mta_delivery *d, const char *qid)
{
	return strlen(qid) == MTA_QID_LEN && inflight_find(d, qid) != NULL;
}

int mta_delivery_foreach_active(struct mta_delivery *d,
				int (*cb)(void *ud, const char *qid), void *ud)
{
	for (size_t h = 0; h < HASH_SIZE; h++)
		for (struct msg *m = d->inflight[h]; m != NULL; m = m->hnext) {
			int rc = cb(ud, m->qid);
			if (rc != 0)
				return rc;
		}
	return 0;
}
