/*
 * delivery_conn.c - one outbound connection of the delivery module: route
 * (MX, addresses), per-host TLS policy (policy table, DANE, MTA-STS),
 * TCP, STARTTLS and the SMTP client engine.  See delivery.h.  The
 * evidence a session leaves (TLS report counters, key continuity, CT) is
 * delivery_evidence.c.
 */
#include "delivery_int.h"

static void conn_drive(struct conn *c);
static void conn_next_addr(struct conn *c);
static void conn_next_host(struct conn *c);
static void host_ready(struct conn *c);
static void on_mx(const struct mta_dns_result *res, void *ud);
static void sts_testing_failure(struct conn *c, const char *what,
				const char *why);

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
	if (c->site != NULL)
		c->site->nconn--;
	free(c->tlsa_data);
	free(c->sts);
	free(c);
	if (!d->stopping)
		dlv_dest_pump(d, ds);
	dlv_dest_maybe_free(d, ds);
	/* a freed slot may let another destination start */
	if (!d->stopping)
		for (struct dest *o = d->dests; o; o = o->next)
			if (o->nq > 0)
				dlv_dest_pump(d, o);
	dlv_maybe_stopped(d);
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
		dlv_job_finish(j, c->lcode, c->lstatus[0] ? c->lstatus : "4.4.1",
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

/* A REQUIRETLS refusal of the current host (RFC 8689 §4.2.1: 5.7.10 no
 * authenticated channel, 5.7.30 no REQUIRETLS at the peer). */
static bool rtls_code(const struct conn *c, const char *status)
{
	return c->dest->tlsreq == MTA_TLSREQ_REQUIRETLS &&
	       (strcmp(status, "5.7.10") == 0 ||
		strcmp(status, "5.7.30") == 0);
}

static void set_error(struct conn *c, int code, const char *status,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void set_error(struct conn *c, int code, const char *status,
		      const char *fmt, ...)
{
	va_list ap;
	c->lcode = code;
	snprintf(c->ltls, sizeof(c->ltls), "%s",
		 mta_stream_tls_done(&c->st) ? c->tls_desc : "");
	snprintf(c->lauth, sizeof(c->lauth), "%s", c->auth);
	snprintf(c->lstatus, sizeof(c->lstatus), "%s", status);
	if (rtls_code(c, status) && c->hi < 32)
		c->rtls_failed |= 1u << c->hi; /* this host cannot do it */
	va_start(ap, fmt);
	vsnprintf(c->ltext, sizeof(c->ltext), fmt, ap);
	va_end(ap);
}

/* Host c->hi is not tried (its lookups, DANE or MTA-STS rule it out;
 * the caller has set the error): one info line per host, kept for the
 * recipients' evidence (mtaq --json, mtactl show); then the next host. */
static void host_skip(struct conn *c, const char *reason)
{
	struct mta_logline ll;
	const char *host = c->hosts[c->hi].name;
	size_t used = strlen(c->skipped);

	mta_log_begin(&ll, MTA_LOG_INFO, "mx_skipped");
	if (c->job != NULL)
		mta_log_str(&ll, "qid", c->job->m->qid);
	mta_log_str(&ll, "domain", c->dest->name);
	mta_log_str(&ll, "host", host);
	mta_log_str(&ll, "reason", reason);
	mta_log_str(&ll, "detail", c->ltext);
	mta_log_end(&ll);
	if (used + strlen(host) + strlen(reason) + 3 < sizeof(c->skipped))
		snprintf(c->skipped + used, sizeof(c->skipped) - used,
			 "%s%s:%s", used > 0 ? "," : "", host, reason);
	c->hi++;
	conn_next_host(c);
}

static void after_close_next_addr(struct conn *c);

/* policy.c's inputs for the current host, as gathered so far. */
static void policy_in(const struct conn *c, struct mta_policy_in *in)
{
	memset(in, 0, sizeof(*in));
	in->domain = c->dest->name;
	in->host = c->hosts[c->hi < MAX_HOSTS ? c->hi : 0].name;
	in->port = c->hosts[c->hi < MAX_HOSTS ? c->hi : 0].port;
	in->has_table = c->has_table;
	in->table_level = c->table_level;
	in->default_level = c->d->level;
	in->relay_auth = c->relay_auth;
	in->dnssec_ok = c->d->dnssec_ok;
	in->mx = c->mx_secure ? MTA_POLICY_MX_SECURE : MTA_POLICY_MX_INSECURE;
	in->addr = c->addr;
	in->tlsa = c->tlsa_state;
	in->rrs = c->tlsa;
	in->nrrs = c->ntlsa;
	in->tlsa_base = c->tlsa_base;
	in->sts = c->sts_state;
	in->sts_policy = c->sts;
	in->sts_id = c->sts_id;
	in->why = c->why;
	in->require_sct = c->d->cfg->tls_require_sct;
	in->continuity = c->d->cfg->mta_sts_continuity;
	in->requiretls = c->dest->tlsreq == MTA_TLSREQ_REQUIRETLS;
	in->tls_optional = c->dest->tlsreq == MTA_TLSREQ_OPTIONAL;
}

/* ops.closed: this attempt's socket is gone (TLS and buffers freed). */
static void on_stream_closed(struct mta_stream *st)
{
	struct conn *c = st->data;
	void (*after)(struct conn *) = c->after_close;

	c->tcp_open = false;
	c->after_close = NULL;
	if (after == NULL) {
		/* closed by a stream failure before the engine ended the
		 * host (cannot happen: on_stream_error drives it there);
		 * the host failed all the same */
		c->phase = C_HOSTS;
		if (c->job)
			dlv_job_reopen(c->job);
		after = after_close_next_addr;
	}
	if (c->smtpc_live) {
		mta_smtpc_free(&c->smtpc);
		c->smtpc_live = false;
	}
	after(c);
}

void dlv_conn_close(struct conn *c, void (*after)(struct conn *c))
{
	uv_timer_stop(&c->timer);
	if (!c->tcp_open) {
		after(c);
		return;
	}
	c->after_close = after;
	mta_stream_close(&c->st, false);
}

/* The TLS handshake of this connection failed (error, reset, timeout). */
static void handshake_failed(struct conn *c, const char *why)
{
	c->hs_failed = true;
	snprintf(c->hs_error, sizeof(c->hs_error), "%s", why);
}

static void after_close_next_addr(struct conn *c)
{
	if (c->d->stopping) {
		conn_end(c);
		return;
	}
	if (c->hs_failed && !c->clear_retry && c->job != NULL &&
	    c->pol.fallback) { /* DANE-62: decided in policy.c */
		struct mta_logline ll;

		mta_log_begin(&ll, MTA_LOG_WARN, "tls_fallback");
		mta_log_str(&ll, "qid", c->job->m->qid);
		mta_log_str(&ll, "domain", c->dest->name);
		mta_log_str(&ll, "relay", c->relay);
		mta_log_str(&ll, "tls_fallback", "cleartext");
		mta_log_str(&ll, "error", c->hs_error);
		mta_log_end(&ll);
		dlv_tlsrpt_count(c, mta_policy_ptype_name(c->pol.ptype),
				 mta_rpt_name(MTA_RPT_VALIDATION_FAILURE));
		c->hs_failed = false;
		c->clear_retry = true;
		c->scfg.tls = MTA_SMTPC_TLS_NONE;
		conn_next_addr(c); /* the same address, a new connection */
		return;
	}
	if (c->clear_retry)
		c->scfg.tls = c->pol.starttls;
	c->hs_failed = c->clear_retry = false;
	c->ai++;
	conn_next_addr(c);
}

void dlv_after_close_end(struct conn *c)
{
	conn_end(c);
}

/* The current host failed: try the next address or host. */
static void conn_host_failed(struct conn *c)
{
	c->phase = C_HOSTS; /* late connect/read callbacks are ignored */
	if (c->job)
		dlv_job_reopen(c->job);
	dlv_conn_close(c, after_close_next_addr);
}

/* Engine output to the stream (through TLS once it is up).  A write or
 * TLS failure closes the stream and reaches on_stream_error(). */
static void flush_engine(struct conn *c)
{
	const uint8_t *p;
	size_t n = mta_smtpc_output(&c->smtpc, &p);

	if (n == 0)
		return;
	if (mta_stream_write(&c->st, p, n) != 0)
		return;
	mta_smtpc_output_consume(&c->smtpc, n);
}

static void arm_timer(struct conn *c, uint64_t ms);

/* ---- shaping (shaping.h) --------------------------------------------- */

static void shape_log(struct conn *c, const char *event, const char *reply)
{
	struct mta_logline ll;
	struct mta_shaping_site *st = c->site;

	mta_log_begin(&ll, MTA_LOG_WARN, event);
	mta_log_str(&ll, "site", st->rule->site);
	mta_log_str(&ll, "domain", c->dest->name);
	if (st->rate > 0)
		mta_log_fmt(&ll, "rate", "%.1f/m", st->rate);
	else
		mta_log_str(&ll, "rate", "unlimited");
	if (reply != NULL)
		mta_log_str(&ll, "reply", reply);
	mta_log_end(&ll);
}

/* The destination's site is known (its MX hosts, or the relay): the
 * connection holds one of the site's slots, or, at the site's limit,
 * gives its job back to the queue and ends.  false: c is ending. */
static bool shape_attach(struct conn *c)
{
	struct mta_delivery *d = c->d;
	struct dest *ds = c->dest;
	const char *names[MAX_HOSTS];
	struct mta_shaping_site *site = NULL;
	long i;

	if (d->shaping == NULL)
		return true;
	for (size_t k = 0; k < c->nhosts && k < MAX_HOSTS; k++)
		names[k] = c->hosts[k].name;
	i = mta_shaping_find(d->shaping, ds->relay ? ds->host : ds->name,
			     names, c->nhosts);
	if (i >= 0)
		site = &d->sites[i];
	ds->site_known = true;
	ds->site = site;
	if (c->site == site)
		return true; /* reserved at the start */
	if (c->site != NULL) {
		c->site->nconn--;
		c->site = NULL;
	}
	if (site == NULL)
		return true;
	if (!mta_shaping_conn_ok(site)) {
		struct job *j = c->job;
		struct mta_logline ll;

		c->job = NULL;
		if (j != NULL) {
			j->skipped = NULL;
			j->next = ds->q_head;
			ds->q_head = j;
			if (ds->q_tail == NULL)
				ds->q_tail = j;
			ds->nq++;
		}
		mta_log_begin(&ll, MTA_LOG_DEBUG, "shaping_wait");
		mta_log_str(&ll, "site", site->rule->site);
		mta_log_str(&ll, "domain", ds->name);
		mta_log_fmt(&ll, "connections", "%u", site->nconn);
		mta_log_end(&ll);
		conn_end(c);
		return false;
	}
	c->site = site;
	site->nconn++;
	return true;
}

/* The connection has sent what its site allows per connection. */
static bool shape_conn_spent(const struct conn *c)
{
	return c->site != NULL && c->site->rule->msgs_per_conn > 0 &&
	       c->nmsgs >= c->site->rule->msgs_per_conn;
}

static void start_job(struct conn *c);
static void on_shape_timer(uv_timer_t *t);

/* Before a message: the site's rate.  true = wait (the timer resumes). */
static bool shape_wait(struct conn *c)
{
	int64_t now = dlv_now_us(), w;

	if (c->site == NULL) {
		c->nmsgs++;
		return false;
	}
	if (mta_shaping_tick(c->site, now))
		shape_log(c, "shaping_recover", NULL);
	w = mta_shaping_take(c->site, now);
	if (w == 0) {
		c->nmsgs++;
		return false;
	}
	uv_timer_start(&c->timer, on_shape_timer, (uint64_t)(w + 999) / 1000,
		       0);
	return true;
}

static void on_shape_timer(uv_timer_t *t)
{
	struct conn *c = t->data;

	if (c->phase != C_SMTP || !c->smtpc_live || c->job == NULL ||
	    c->txn_started || c->d->stopping)
		return;
	if (shape_wait(c))
		return;
	start_job(c);
	conn_drive(c);
}

/* A reply from the site: 421 or 4.7.x throttling halves its rate. */
static void shape_reply(struct conn *c, int code, const char *status,
			const char *text)
{
	char reply[200];

	if (c->site == NULL || !mta_shaping_is_throttle(code, status))
		return;
	snprintf(reply, sizeof(reply), "%d %s %.150s", code,
		 status ? status : "", text ? text : "");
	if (mta_shaping_throttled(c->site, dlv_now_us()))
		shape_log(c, "shaping_throttle", reply);
}

/* ---- connections: SMTP session -------------------------------------- */

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
	n = dlv_job_undecided(j, idx);
	if (n == 0) { /* nothing left (cannot happen): finish */
		free(idx);
		c->job = NULL;
		dlv_job_finish(j, 0, "4.0.0", "", NULL, NULL, NULL);
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
	       !c->st.closing && c->st.write_pending < WRITE_HIGH) {
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

/* After the handshake: runs the verifier policy.c named for this host
 * (the DANE matcher or the WebPKI check) and applies its verdict. */
static bool verify_tls(struct conn *c, const char *host)
{
	const char *nexthop[2] = {c->dest->name, c->nexthop_cname};
	struct mta_route_verify q = {
		.verifier = c->pol.verifier,
		.tls = &c->st.tls,
		.tlsa = c->tlsa,
		.ntlsa = c->ntlsa,
		.base = c->tlsa_base,
		.nexthop = c->dest->relay ? NULL : nexthop,
		.nnexthop = c->nexthop_cname[0] != '\0' ? 2 : 1,
		.webpki = c->d->webpki,
		.host = host,
	};
	struct mta_policy_check chk;
	struct mta_policy_verdict v;
	struct mta_policy_in in;
	struct mta_dane_result r;
	struct mta_ct_result ctr;
	char why[512];
	char leaf_spki[65] = "", iss_spki[65] = "";

	q.ct_list = c->d->ct;
	q.require_sct = c->d->cfg->tls_require_sct;
	q.ct_res = &ctr;
	if (c->pol.sts_host &&
	    c->d->cfg->mta_sts_continuity != MTA_POLICY_CONT_MODE_OFF) {
		q.leaf_spki = &leaf_spki;
		q.issuer_spki = &iss_spki;
	}
	mta_route_check(&q, &r, &chk, why, sizeof(why));
	policy_in(c, &in);
	if (chk.webpki_ok && leaf_spki[0] != '\0')
		chk.cont = dlv_continuity_check(c, leaf_spki, iss_spki);
	mta_policy_verdict(&in, &c->pol, &chk, &v);
	dlv_ct_continuity_after(c, &chk, &v, leaf_spki, iss_spki);
	if (v.count_rpt != NULL)
		dlv_tlsrpt_count(c, mta_policy_ptype_name(v.count_ptype),
				 v.count_rpt);
	if (v.testing_failure)
		sts_testing_failure(c, v.count_rpt, why);
	snprintf(c->auth, sizeof(c->auth), "%s", v.auth);
	if (!v.accept)
		set_error(c, 0, v.status, "%s", v.reason);
	return v.accept;
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
		if (c->st.closing)
			break; /* the write failed: on_stream_error ran */
		/* a handshake failing at once reaches on_stream_error() */
		if (mta_stream_starttls_client(&c->st, c->d->tls,
					       c->pol.dane ? c->tlsa_base
						       : host) != 0 &&
		    !c->st.closing)
			mta_smtpc_abort(&c->smtpc, "4.7.5",
					"TLS initialisation failed");
		break;
	case MTA_SMTPC_EV_READY:
		c->any_session = true;
		if (c->job == NULL && !c->d->stopping && !shape_conn_spent(c)) {
			c->job = dlv_dest_take(c->dest);
			if (c->job != NULL)
				c->job->skipped = c->skipped;
		}
		if (c->job != NULL) {
			if (!shape_wait(c))
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
		if (cls == 4)
			shape_reply(c, e->code, e->status, e->text);
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
			dlv_record(j->m, r, e->code, e->status, e->text, c->relay,
			       c->st.tls_on ? c->tls_desc : NULL, c->auth,
			       c->skipped);
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
		if (e->code != 0)
			shape_reply(c, e->code, e->status, e->text);
		if (e->status != NULL && strcmp(e->status, "4.7.4") == 0 &&
		    c->pol.ptype != MTA_POLICY_PT_NO_POLICY)
			dlv_tlsrpt_count(c, mta_policy_ptype_name(c->pol.ptype),
					 mta_rpt_name(MTA_RPT_STARTTLS_NOT_SUPPORTED));
		if (e->status != NULL && strcmp(e->status, "4.7.4") == 0 &&
		    c->pol.requiretls)
			/* RTLS-26: no TLS, no REQUIRETLS delivery */
			set_error(c, e->code, "5.7.10",
				  "REQUIRETLS: %s",
				  e->text ? e->text : "STARTTLS failed");
		else
			set_error(c, e->code,
				  e->status ? e->status : "4.4.2", "%s",
				  e->text ? e->text : "connection failed");
		if (j != NULL)
			dlv_job_reopen(j);
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

	if (c->in_drive || !c->smtpc_live || c->phase != C_SMTP)
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
			dlv_job_finish(j, 0, "4.0.0", "", c->relay,
				   c->st.tls_on ? c->tls_desc : NULL, c->auth);
		}
		on_event(c, ev, &e);
		if (ev == MTA_SMTPC_EV_CLOSED || ev == MTA_SMTPC_EV_FAIL)
			break;
	}
	flush_engine(c);
	if (mta_smtpc_in_tls(&c->smtpc) == false && c->st.tls_on &&
	    !c->st.tls.handshake_done) {
		/* handshake in progress: nothing more to drive */
	} else if (ev == MTA_SMTPC_EV_NEED_BODY ||
		   mta_smtpc_wants_body(&c->smtpc)) {
		pump_body(c);
	}
	c->in_drive = false;
	if (ev == MTA_SMTPC_EV_FAIL || ev == MTA_SMTPC_EV_CLOSED ||
	    mta_smtpc_closed(&c->smtpc)) {
		/* the last engine events: CLOSED after FAIL, or all of
		 * them when an abort (a stream failure in the flush
		 * above) closed the engine after the loop */
		while ((ev = mta_smtpc_feed(&c->smtpc, NULL, 0, &n, &e)) !=
		       MTA_SMTPC_EV_NONE) {
			on_event(c, ev, &e);
			memset(&e, 0, sizeof(e));
		}
		flush_engine(c);
		if (c->job != NULL && c->txn_done) {
			/* tentative results of a finished transaction on a
			 * host that then failed: try them elsewhere */
			dlv_job_reopen(c->job);
		}
		c->txn_done = false;
		if (c->job != NULL) {
			conn_host_failed(c);
		} else {
			c->phase = C_CLOSING;
			dlv_conn_close(c, dlv_after_close_end);
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
			dlv_job_finish(j, 0, "4.0.0", "", c->relay,
				   c->st.tls_on ? c->tls_desc : NULL, c->auth);
		}
		on_event(c, ev, &e);
		if (ev == MTA_SMTPC_EV_STARTTLS)
			return; /* the rest was plaintext after 220: dropped */
		if (ev == MTA_SMTPC_EV_FAIL || ev == MTA_SMTPC_EV_CLOSED)
			break;
	}
	conn_drive(c);
}

/* The peer closed, reset or went quiet in the middle of the handshake. */
static void handshake_in_flight_failed(struct conn *c, const char *what)
{
	char why[300];

	handshake_failed(c, what);
	snprintf(why, sizeof(why), "TLS handshake with %s failed: %s",
		 c->hosts[c->hi].name, what);
	set_error(c, 0, "4.7.5", "%s", why);
	mta_smtpc_abort(&c->smtpc, "4.7.5", why);
	conn_drive(c);
}

/* ops.tls_ready: the handshake completed; apply the host's policy. */
static void on_stream_tls(struct mta_stream *st)
{
	struct conn *c = st->data;

	if (c->phase != C_SMTP || !c->smtpc_live)
		return;
	mta_tls_describe(&st->tls, c->tls_desc, sizeof(c->tls_desc));
	if (!verify_tls(c, c->hosts[c->hi].name)) {
		mta_smtpc_abort(&c->smtpc, c->lstatus, c->ltext);
		conn_drive(c);
		return;
	}
	mta_smtpc_tls_started(&c->smtpc);
	conn_drive(c);
}

/* ops.data: plaintext from the peer. */
static void on_stream_data(struct mta_stream *st)
{
	struct conn *c = st->data;
	const uint8_t *p;
	size_t n = mta_stream_pending(st, &p);

	if (n > 0 && c->phase == C_SMTP && c->smtpc_live)
		conn_input(c, p, n); /* may drop the rest (STARTTLS) */
	mta_stream_consume(st, n);
}

/* ops.eof: the peer closed or reset the connection. */
static void on_stream_eof(struct mta_stream *st, int status)
{
	struct conn *c = st->data;

	if (c->phase != C_SMTP || !c->smtpc_live)
		return;
	if (st->tls_on && !st->tls.handshake_done) {
		handshake_in_flight_failed(c, status == UV_EOF
						      ? "connection closed by peer"
						      : uv_strerror(status));
		return;
	}
	mta_smtpc_eof(&c->smtpc);
	conn_drive(c);
}

/* ops.drained */
static void on_stream_drained(struct mta_stream *st)
{
	struct conn *c = st->data;

	if (c->phase == C_SMTP && c->smtpc_live)
		conn_drive(c);
}

/*
 * ops.error: a write or TLS failure closed the connection (stream.h, ERROR
 * POLICY).  A failed handshake is a handshake failure (DANE-62 cleartext
 * retry where allowed); anything else ends the host at once, logged, and
 * the engine's FAIL defers what was not delivered.
 */
static void on_stream_error(struct mta_stream *st, const char *reason,
			    const char *detail)
{
	struct conn *c = st->data;
	struct mta_logline ll;
	char why[300];

	if (c->phase != C_SMTP || !c->smtpc_live)
		return;
	if (st->tls_on && !st->tls.handshake_done) {
		handshake_in_flight_failed(c, detail);
		return;
	}
	mta_log_begin(&ll, MTA_LOG_WARN, "conn_error");
	if (c->job != NULL)
		mta_log_str(&ll, "qid", c->job->m->qid);
	mta_log_str(&ll, "domain", c->dest->name);
	mta_log_str(&ll, "relay", c->relay);
	mta_log_str(&ll, "reason", reason);
	mta_log_str(&ll, "error", detail);
	mta_log_end(&ll);
	snprintf(why, sizeof(why), "connection failed: %s (%.200s)", reason,
		 detail);
	set_error(c, 0, "4.4.2", "%s", why);
	mta_smtpc_abort(&c->smtpc, "4.4.2", why);
	conn_drive(c); /* from inside a drive, the outer one goes on */
}

/* ops.timeout */
static void on_conn_timer(struct mta_stream *st)
{
	struct conn *c = st->data;

	if (c->phase == C_CONNECTING) {
		set_error(c, 0, "4.4.1", "connect to %s: timed out", c->relay);
		conn_host_failed(c); /* closing cancels the connect */
		return;
	}
	if (c->phase == C_SMTP && c->smtpc_live) {
		if (st->tls_on && !st->tls.handshake_done) {
			handshake_in_flight_failed(c, "timed out");
			return;
		}
		mta_smtpc_timeout(&c->smtpc);
		conn_drive(c);
	}
}

static void arm_timer(struct conn *c, uint64_t ms)
{
	if (ms == 0)
		ms = 300000;
	mta_stream_timer(&c->st, ms);
}

static void on_connect(struct mta_stream *st, int status);

static const struct mta_stream_ops conn_ops = {
	.connected = on_connect,
	.data = on_stream_data,
	.tls_ready = on_stream_tls,
	.eof = on_stream_eof,
	.drained = on_stream_drained,
	.timeout = on_conn_timer,
	.error = on_stream_error,
	.closed = on_stream_closed,
};

/* ops.connected */
static void on_connect(struct mta_stream *st, int status)
{
	struct conn *c = st->data;
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
	if (c->clear_retry)
		snprintf(c->auth, sizeof(c->auth),
			 "none (tls_fallback=cleartext)");
	if (mta_smtpc_init(&c->smtpc, &c->scfg) != 0) {
		set_error(c, 0, "4.3.0", "client engine init failed");
		conn_host_failed(c);
		return;
	}
	c->smtpc_live = true;
	if (mta_stream_read_start(&c->st) != 0) {
		set_error(c, 0, "4.4.1", "connect to %s: cannot read",
			  c->relay);
		conn_host_failed(c);
		return;
	}
	arm_timer(c, mta_smtpc_timeout_ms(&c->smtpc));
}

/* The route's source address for this family (bind=), before connect:
 * 0, or the host failed (set and handled here). */
static int bind_source(struct conn *c, const struct sockaddr_storage *to)
{
	const struct mta_routes_rule *x = c->dest->route;
	const struct sockaddr_storage *from = NULL;
	char ip[INET6_ADDRSTRLEN] = "";
	int rc;

	if (x == NULL)
		return 0;
	if (to->ss_family == AF_INET && x->has_bind4)
		from = &x->bind4;
	else if (to->ss_family == AF_INET6 && x->has_bind6)
		from = &x->bind6;
	if (from == NULL)
		return 0;
	rc = uv_tcp_bind(&c->st.tcp, (const struct sockaddr *)from, 0);
	if (rc == 0)
		return 0;
	if (from->ss_family == AF_INET)
		uv_ip4_name((const struct sockaddr_in *)from, ip, sizeof(ip));
	else
		uv_ip6_name((const struct sockaddr_in6 *)from, ip, sizeof(ip));
	set_error(c, 0, "4.4.1", "cannot bind source address %s: %s", ip,
		  uv_strerror(rc));
	conn_host_failed(c);
	return -1;
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
	if (mta_stream_init(&c->st, d->loop, &conn_ops, &d->scratch, c) != 0) {
		set_error(c, 0, "4.4.1", "connect to %s failed", c->relay);
		conn_host_failed(c);
		return;
	}
	c->st.write_low = WRITE_HIGH / 2;
	c->tcp_open = true;
	c->phase = C_CONNECTING;
	if (bind_source(c, sa) != 0)
		return;
	if (mta_stream_connect(&c->st, (struct sockaddr *)sa) != 0) {
		set_error(c, 0, "4.4.1", "connect to %s failed", c->relay);
		conn_host_failed(c);
		return;
	}
	arm_timer(c, (uint64_t)d->cfg->connect_timeout * 1000u);
}

/* Everything about this host is known: policy.c decides, this applies
 * (precedence: docs/security.md "Which check applies where"). */
static void host_ready(struct conn *c)
{
	struct mta_policy_in in;

	c->hs_failed = c->clear_retry = false;
	policy_in(c, &in);
	mta_policy_decide(&in, &c->pol);
	if (c->pol.count)
		dlv_tlsrpt_count(c, mta_policy_ptype_name(c->pol.ptype),
				 mta_rpt_name(c->pol.rpt));
	if (c->pol.action != MTA_POLICY_CONNECT) {
		set_error(c, 0, c->pol.status, "%s", c->pol.reason);
		host_skip(c, c->pol.skip);
		return;
	}
	if (c->pol.sts_testing_mismatch)
		sts_testing_failure(c, mta_rpt_name(c->pol.rpt),
				    "MX host not in the policy");
	if (in.tls_optional) {
		/* RFC 8689 §4.2.2 (RTLS-31): logged per host */
		struct mta_logline ll;

		mta_log_begin(&ll, MTA_LOG_INFO, "tls_policy_lowered");
		if (c->job != NULL)
			mta_log_str(&ll, "qid", c->job->m->qid);
		mta_log_str(&ll, "domain", c->dest->name);
		mta_log_str(&ll, "host", c->hosts[c->hi].name);
		mta_log_str(&ll, "reason", "tls-required-no");
		mta_log_end(&ll);
	}
	c->scfg.tls = c->pol.starttls;
	snprintf(c->auth, sizeof(c->auth), "none");
	conn_next_addr(c);
}

static void tlsa_lookup(struct conn *c);

static void on_tlsa(const struct mta_dns_result *res, void *ud)
{
	struct conn *c = ud;

	c->q = NULL;
	c->tlsa_state = mta_route_tlsa_status(res, &c->why);
	if (c->tlsa_state == MTA_POLICY_TLSA_SECURE) {
		free(c->tlsa_data);
		if (mta_route_tlsa_copy(res, c->tlsa, &c->ntlsa,
					&c->tlsa_data) != 0) {
			set_error(c, 0, "4.3.0", "out of memory");
			host_skip(c, "no-memory");
			return;
		}
		host_ready(c); /* more than MTA_DANE_TLSA_MAX: refused there */
		return;
	}
	if (c->tlsa_state != MTA_POLICY_TLSA_NONE) {
		host_ready(c); /* no connection to this host (policy.c) */
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
		c->tlsa_state = MTA_POLICY_TLSA_FAILED;
		c->why = mta_strerror(rc);
		host_ready(c);
	}
}

/* Addresses known: their DNSSEC status, and the TLSA lookup when
 * policy.c wants one (DESIGN.md "Outbound policy" step 2, RFC 7672
 * §2.2.1-2.2.2); the TLSA base names are chosen here. */
static void host_policy_start(struct conn *c, const struct mta_dns_result *res)
{
	const char *host = c->hosts[c->hi].name;
	struct mta_policy_in in;

	c->tlsa_state = MTA_POLICY_TLSA_NONE;
	c->ntlsa = 0;
	c->tlsa_base[0] = c->tlsa_alt[0] = '\0';
	c->addr = mta_route_addr_status(res);
	policy_in(c, &in);
	if (!mta_policy_want_tlsa(&in)) {
		host_ready(c);
		return;
	}
	mta_route_tlsa_bases(res, host, c->addr, c->tlsa_base, c->tlsa_alt,
			     sizeof(c->tlsa_base));
	tlsa_lookup(c);
}

/* The host's addresses in the order delivery.ip_version asks for:
 * ipv4/ipv6 keep one family, prefer-* put one family first. */
static void pick_addrs(struct conn *c, const struct mta_dns_result *res)
{
	int v = c->d->cfg->ip_version;

	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < res->count && c->naddrs < MAX_ADDRS;
		     i++) {
			int fam = res->addr[i].ss_family;
			bool first;

			switch (v) {
			case MTA_IPVER_4:
				first = fam == AF_INET;
				if (pass == 1)
					continue;
				break;
			case MTA_IPVER_6:
				first = fam == AF_INET6;
				if (pass == 1)
					continue;
				break;
			case MTA_IPVER_PREFER_4:
				first = fam == AF_INET;
				break;
			case MTA_IPVER_PREFER_6:
				first = fam == AF_INET6;
				break;
			default:
				first = true;
				break;
			}
			if (first == (pass == 0))
				c->addrs[c->naddrs++] = res->addr[i];
		}
	}
}

static void on_addr(const struct mta_dns_result *res, void *ud)
{
	struct conn *c = ud;
	const char *host = c->hosts[c->hi].name;

	c->q = NULL;
	c->naddrs = c->ai = 0;
	if (res->status == MTA_DNS_OK)
		pick_addrs(c, res);
	if (c->naddrs == 0) {
		const char *reason = "no-address";

		if (res->status == MTA_DNS_BOGUS) {
			/* never a connection on bogus (policy.c) */
			c->addr = MTA_POLICY_ADDR_BOGUS;
			c->why = res->why ? res->why : "error";
			host_ready(c);
			return;
		}
		if (res->status == MTA_DNS_TEMPFAIL) {
			set_error(c, 0, "4.4.3",
				  "address lookup for %s failed: %s", host,
				  res->why ? res->why : "error");
			reason = "address-failed";
		} else {
			set_error(c, 0, "4.4.4",
				  "no address records for %s", host);
		}
		host_skip(c, reason);
		return;
	}
	host_policy_start(c, res);
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
		if (rtls_code(c, c->lstatus) &&
		    (size_t)__builtin_popcount(c->rtls_failed) < c->nhosts)
			/* RTLS-27: bounce only when every host failed the
			 * REQUIRETLS requirements; TCP/DNS failures defer */
			c->lstatus[0] = '4';
		if (j != NULL)
			dlv_job_finish(j, c->lcode, c->lstatus, c->ltext,
				   c->relay[0] ? c->relay : NULL, c->ltls,
				   c->lauth);
		if (!c->any_session)
			dlv_dest_fail_all(c->dest, c->lcode, c->lstatus, c->ltext,
				      c->relay[0] ? c->relay : NULL);
		conn_end(c);
		return;
	}
	c->phase = C_HOSTS;
	c->why = NULL;
	snprintf(c->auth, sizeof(c->auth), "none");
	/* An address literal only where one can be meant: the relayhost,
	 * or a bracketed recipient domain.  An MX exchange that looks like
	 * an address ("192.0.2.1.") is a host name (RFC 5321 §5.1, RFC
	 * 7672): names from DNS never carry '[' (dns.c escapes it). */
	if ((c->dest->relay || c->hosts[c->hi].name[0] == '[') &&
	    mta_route_literal(c->hosts[c->hi].name, &c->addrs[0])) {
		c->naddrs = 1;
		c->ai = 0;
		c->addr = MTA_POLICY_ADDR_LITERAL;
		c->tlsa_state = MTA_POLICY_TLSA_NONE;
		c->ntlsa = 0;
		host_ready(c); /* no DNS name: no DANE */
		return;
	}
	rc = mta_dns_addr(d->dns, c->hosts[c->hi].name, on_addr, c, &c->q);
	if (rc != 0) {
		set_error(c, 0, "4.4.3", "address lookup for %s failed: %s",
			  c->hosts[c->hi].name, mta_strerror(rc));
		host_skip(c, "address-failed");
	}
}

static void on_mx(const struct mta_dns_result *res, void *ud)
{
	struct conn *c = ud;
	struct dest *ds = c->dest;
	unsigned port = c->d->cfg->delivery_port;
	struct mta_policy_in in;
	struct job *j;

	c->q = NULL;
	c->mx_secure = res->dnssec == MTA_DNSSEC_SECURE;
	if (res->cname && res->canonical != NULL &&
	    res->dnssec == MTA_DNSSEC_SECURE)
		/* DANE-86: the expanded next-hop name is a reference name */
		snprintf(c->nexthop_cname, sizeof(c->nexthop_cname), "%s",
			 res->canonical);
	/* the destination stage of policy.c: MX status, DNSSEC self-test,
	 * an MTA-STS policy that could not be held */
	policy_in(c, &in);
	in.mx = mta_route_mx_status(res);
	in.why = res->why ? res->why : "error";
	mta_policy_check_dest(&in, &c->pol);
	if (c->pol.action != MTA_POLICY_CONNECT) {
		set_error(c, 0, c->pol.status, "%s", c->pol.reason);
		goto fail_all;
	}
	if (mta_route_hosts(res, ds->name, port, c->hosts, MAX_HOSTS,
			    &c->nhosts, c->lstatus, c->ltext,
			    sizeof(c->ltext)) != 0) {
		c->lcode = 0;
		c->ltls[0] = c->lauth[0] = '\0';
		goto fail_all;
	}
	c->hi = 0;
	if (!shape_attach(c))
		return;
	conn_next_host(c);
	return;

fail_all:
	j = c->job;
	c->job = NULL;
	if (j != NULL)
		dlv_job_finish(j, 0, c->lstatus, c->ltext, NULL, NULL, NULL);
	dlv_dest_fail_all(ds, 0, c->lstatus, c->ltext, NULL);
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
		if (c->sts == NULL) {
			/* fail closed: policy.c defers the destination
			 * (never as if there were no policy) */
			c->sts_state = MTA_POLICY_STS_LOST;
			conn_resolve_mx(c);
			return;
		}
		*c->sts = *r->policy;
		c->sts_state = MTA_POLICY_STS_HAVE;
		snprintf(c->sts_id, sizeof(c->sts_id), "%s",
			 r->id ? r->id : "");
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

void dlv_conn_start(struct mta_delivery *d, struct dest *ds)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return;
	c->d = d;
	c->dest = ds;
	c->job = dlv_dest_take(ds);
	if (c->job != NULL)
		c->job->skipped = c->skipped;
	uv_timer_init(d->loop, &c->timer);
	c->timer.data = c;
	c->next = d->conns;
	if (d->conns)
		d->conns->prev = c;
	d->conns = c;
	d->nconn++;
	ds->nconn++;
	c->scfg.helo_name = d->cfg->server_hostname;
	c->scfg.requiretls = ds->tlsreq == MTA_TLSREQ_REQUIRETLS;
	if (ds->route != NULL && ds->route->helo[0] != '\0')
		c->scfg.helo_name = ds->route->helo;
	/* a relay's own name is looked up in tls.policy_file (as in
	 * Postfix, the policy of the next hop applies); a route's level=
	 * is the entry for its hop and wins over the table */
	c->has_table = mta_route_table(d->policy, ds->relay ? ds->host
							    : ds->name,
				       &c->table_level);
	if (ds->route != NULL && ds->route->has_level) {
		c->has_table = true;
		c->table_level = ds->route->level;
	}
	/* a known site: take its slot now (shape_attach() checks again) */
	if (ds->site_known && ds->site != NULL) {
		c->site = ds->site;
		c->site->nconn++;
	}
	if (ds->relay) {
		c->relay_auth = d->auth_user != NULL &&
				(ds->route == NULL ||
				 strcmp(ds->route->auth, "default") == 0);
		if (c->relay_auth) {
			c->scfg.auth_user = d->auth_user;
			c->scfg.auth_pass = d->auth_pass;
			c->scfg.auth_plain = d->auth_plain;
		}
		snprintf(c->hosts[0].name, sizeof(c->hosts[0].name), "%s",
			 ds->host);
		c->hosts[0].port = ds->port;
		c->nhosts = 1;
		c->hi = 0;
		/* a relayhost is a non-MX destination: DANE applies when its
		 * own address records are secure (RFC 7672 §2.2.2) */
		c->mx_secure = true;
		if (!shape_attach(c))
			return;
		conn_next_host(c);
		return;
	}
	c->phase = C_RESOLVE;
	if (d->mtasts != NULL && !c->has_table &&
	    ds->tlsreq != MTA_TLSREQ_OPTIONAL &&
	    mta_mtasts_lookup(d->mtasts, ds->name, on_sts, c, &c->sq) == 0)
		return;
	conn_resolve_mx(c);
}
