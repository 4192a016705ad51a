/*
 * ctlsock.c - mtad's control socket (ctlsock.h).
 */
#include "ctlsock.h"

#include "control.h"
#include "dsn.h"
#include "err.h"
#include "explain.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define WAIT_MS 100
#define WAIT_MAX 300 /* 30 s for a message in delivery */
#define IN_MAX 4096

struct conn {
	uv_pipe_t pipe;
	uv_timer_t timer;
	struct mtad_control *ctl;
	struct conn *next, **pprev;
	struct mta_ctl_lines lines;
	uint8_t in[IN_MAX];
	size_t in_len;
	unsigned handles; /* open: pipe, timer */
	bool hello, busy, closing, commit_pending;
	long uid, gid, pid;
	struct mta_ctl_req req;
	unsigned waits;
	struct mta_commit commit;
	struct mta_envelope dsn_env;
	struct mta_body dsn_body;
	char dsn_qid[MTA_QID_LEN + 1];
	char qid[MTA_QID_LEN + 1]; /* the commit's message */
	char note[300]; /* POLICY-REFRESH: the OK text */
	struct mta_spool_keys_op keys; /* POLICY-ACCEPT */
	struct mta_mtasts_query *q;
	struct mta_explain *x; /* EXPLAIN running */
	bool tlsrpt_running;   /* TLSRPT-SEND waiting for its round */
};

struct mtad_control {
	struct mtad_control_params p;
	uv_pipe_t server;
	bool started; /* mtad_control_start() called: requests served */
	bool stopping;
	struct conn *conns;
	int64_t started_us;
	uint32_t seq;
};

static int64_t now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static struct mta_delivery *delivery_of(struct mtad_control *ctl)
{
	return ctl->p.delivery ? *ctl->p.delivery : NULL;
}

static struct mta_mtasts *mtasts_of(struct mtad_control *ctl)
{
	return ctl->p.mtasts ? *ctl->p.mtasts : NULL;
}

/* ---- connection lifetime ----------------------------------------- */

static void conn_maybe_free(struct conn *c)
{
	if (!c->closing || c->handles > 0 || c->commit_pending || c->q)
		return;
	if (c->pprev != NULL) {
		*c->pprev = c->next;
		if (c->next)
			c->next->pprev = c->pprev;
	}
	mta_envelope_free(&c->dsn_env);
	mta_body_free(&c->dsn_body);
	free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	c->handles--;
	conn_maybe_free(c);
}

static void conn_close(struct conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	if (c->q != NULL) {
		mta_mtasts_cancel(c->q);
		c->q = NULL;
	}
	if (c->x != NULL) {
		mta_explain_cancel(c->x);
		c->x = NULL;
	}
	if (c->tlsrpt_running) {
		mta_delivery_tlsrpt_detach(delivery_of(c->ctl), c);
		c->tlsrpt_running = false;
	}
	uv_close((uv_handle_t *)&c->timer, on_handle_closed);
	uv_close((uv_handle_t *)&c->pipe, on_handle_closed);
}

struct wreq {
	uv_write_t w;
	char data[];
};

static void on_written(uv_write_t *w, int status)
{
	(void)status;
	free(w);
}

/* One reply line; control bytes become '?'. */
__attribute__((format(printf, 2, 3))) static void send_line(struct conn *c,
							   const char *fmt,
							   ...)
{
	char buf[MTA_CTL_LINE_MAX + 1];
	va_list ap;
	int n;

	if (c->closing)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	for (int i = 0; i < n; i++)
		if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
			buf[i] = '?';
	buf[n++] = '\n';
	struct wreq *r = malloc(sizeof(*r) + (size_t)n);
	if (r == NULL)
		return;
	memcpy(r->data, buf, (size_t)n);
	uv_buf_t b = uv_buf_init(r->data, (unsigned)n);
	if (uv_write(&r->w, (uv_stream_t *)&c->pipe, &b, 1, on_written) != 0)
		free(r);
}

static void process_input(struct conn *c);

static void log_change(struct conn *c, const char *result, int err)
{
	struct mta_logline ll;

	if (!mta_ctl_verb_changes(c->req.verb))
		return;
	mta_log_begin(&ll, err == 0 ? MTA_LOG_INFO : MTA_LOG_WARN,
		      "control");
	mta_log_str(&ll, "verb", mta_ctl_verb_name(c->req.verb));
	if (c->req.nargs > 0)
		mta_log_str(&ll, "arg", c->req.args[0]);
	mta_log_int(&ll, "uid", c->uid);
	mta_log_int(&ll, "gid", c->gid);
	mta_log_int(&ll, "pid", c->pid);
	mta_log_str(&ll, "result", result);
	if (err != 0)
		mta_log_str(&ll, "error", mta_errname(err));
	if (c->req.verb == MTA_CTL_BOUNCE && err == 0 && c->dsn_qid[0])
		mta_log_str(&ll, "dsn_qid", c->dsn_qid);
	mta_log_end(&ll);
}

/* Ends the request in progress with OK text or ERR code text. */
static void done(struct conn *c, int err, const char *code, const char *text)
{
	if (code == NULL)
		send_line(c, "OK%s%s", text && *text ? " " : "",
			  text ? text : "");
	else
		send_line(c, "ERR %s %s", code, text);
	log_change(c, code ? code : "ok", err);
	c->busy = false;
	if (c->req.verb == MTA_CTL_QUIT) {
		conn_close(c);
		return;
	}
	process_input(c);
}

/* ---- requests ------------------------------------------------------ */

static bool qid_ok(const char *s)
{
	static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	if (strlen(s) != MTA_QID_LEN)
		return false;
	for (const char *p = s; *p; p++)
		if (strchr(b32, *p) == NULL)
			return false;
	return true;
}

/* Just over 100 lines: the commit result checks, then one short case per
 * verb for its answer (the -Wswitch-enum list of the verbs without one
 * included). */
static void on_commit(struct mta_commit *cm)
{
	struct conn *c = (struct conn *)((char *)cm -
					 offsetof(struct conn, commit));
	struct mta_delivery *d = delivery_of(c->ctl);
	const char *qid = c->req.args[0];
	char text[600];
	int err = cm->result;

	c->commit_pending = false;
	if (c->closing) {
		log_change(c, err ? "failed" : "ok", err);
		conn_maybe_free(c);
		return;
	}
	if (c->req.verb == MTA_CTL_POLICY_REFRESH) {
		/* the barrier behind the cache write */
		done(c, 0, NULL, c->note);
		return;
	}
	if (c->req.verb == MTA_CTL_POLICY_ACCEPT) {
		if (err == MTA_ENOTFOUND) {
			snprintf(text, sizeof(text),
				 "%s: no new key held by key continuity "
				 "(mtactl policy show %s)", c->req.args[0],
				 c->req.args[0]);
			done(c, err, "notfound", text);
		} else if (err != 0) {
			snprintf(text, sizeof(text), "spool: %s",
				 mta_strerror(err));
			done(c, err, "failed", text);
		} else {
			if (d != NULL)
				mta_delivery_kick(d);
			done(c, 0, NULL,
			     "accepted (held mail goes at its next attempt; "
			     "mtactl flush to retry now)");
		}
		return;
	}
	if (err == MTA_ENOTFOUND) {
		snprintf(text, sizeof(text),
			 "%s: no such message (delivered, deleted, or never "
			 "queued; see mtaq)", qid);
		done(c, err, "notfound", text);
		return;
	}
	if (err == -EALREADY) {
		done(c, err, "state",
		     c->req.verb == MTA_CTL_HOLD
			     ? "already held"
			     : "not held (nothing to release)");
		return;
	}
	if (err == -EPERM) {
		done(c, err, "state",
		     "the message is held: release it (mtactl release) to "
		     "deliver it");
		return;
	}
	if (err != 0) {
		snprintf(text, sizeof(text), "spool: %s", mta_strerror(err));
		done(c, err, "failed", text);
		return;
	}
	if ((c->req.verb == MTA_CTL_RELEASE ||
	     c->req.verb == MTA_CTL_FLUSH) && d != NULL)
		mta_delivery_kick(d);
	switch (c->req.verb) {
	case MTA_CTL_HOLD:
		done(c, 0, NULL, "held");
		break;
	case MTA_CTL_RELEASE:
		done(c, 0, NULL, "released");
		break;
	case MTA_CTL_FLUSH:
		done(c, 0, NULL, "due now");
		break;
	case MTA_CTL_DELETE:
		done(c, 0, NULL, "deleted");
		break;
	case MTA_CTL_BOUNCE:
		if (c->dsn_qid[0]) {
			snprintf(text, sizeof(text), "bounced dsn=%s",
				 c->dsn_qid);
			done(c, 0, NULL, text);
		} else {
			done(c, 0, NULL, "bounced (no DSN requested)");
		}
		break;
	case MTA_CTL_POLICY_PURGE:
		done(c, 0, NULL, "purged");
		break;
	case MTA_CTL_ACTIVE:
	case MTA_CTL_EXPLAIN:
	case MTA_CTL_NVERBS:
	case MTA_CTL_POLICY_ACCEPT:
	case MTA_CTL_POLICY_REFRESH:
	case MTA_CTL_QUIT:
	case MTA_CTL_SITES:
	case MTA_CTL_STATS:
	case MTA_CTL_TLSRPT_SEND:
	default:
		done(c, 0, NULL, NULL);
	}
}

static void submit(struct conn *c, enum mta_commit_kind kind,
		   enum mta_spool_admin_op op)
{
	struct mta_commit *cm = &c->commit;

	memset(cm, 0, sizeof(*cm));
	c->commit_pending = true;
	if (kind == MTA_COMMIT_KEYS) { /* POLICY-ACCEPT */
		c->keys = (struct mta_spool_keys_op){
			.kind = MTA_SPOOL_KEYS_ACCEPT,
			.domain = c->req.args[0],
			.now = now_us() / 1000000,
		};
		mta_writer_submit_keys(c->ctl->p.writer, cm, &c->keys,
				       on_commit);
		return;
	}
	if (kind == MTA_COMMIT_STS_PUT) { /* POLICY-PURGE: delete the entry */
		mta_writer_submit_sts_put(c->ctl->p.writer, cm, c->req.args[0],
					  NULL, 0, on_commit);
		return;
	}
	struct mta_commit_admin a = {.op = op, .now_us = now_us()};
	c->qid[0] = '\0';
	if (op != MTA_SPOOL_NOP)
		memcpy(c->qid, c->req.args[0], MTA_QID_LEN + 1); /* checked */
	a.qid = c->qid;
	if (c->req.verb == MTA_CTL_BOUNCE && c->dsn_qid[0]) {
		a.dsn_qid = c->dsn_qid;
		a.dsn_env = &c->dsn_env;
		a.dsn_body = &c->dsn_body;
	}
	mta_writer_submit_admin(c->ctl->p.writer, cm, &a, on_commit);
}

static int read_body(void *ud, uint64_t off, void *buf, size_t len,
		     size_t *got)
{
	struct conn *c = ud;
	return mta_spool_read_body(c->ctl->p.spool, c->req.args[0], off, buf,
				   len, got);
}

/* Marks the pending recipients failed and builds the DSN the sender is
 * owed (none: NOTIFY=NEVER, null sender).  0 or an error. */
static int build_bounce(struct conn *c)
{
	struct mtad_control *ctl = c->ctl;
	struct mta_envelope e;
	struct mta_dsn_rcpt *rs;
	struct mta_buf out = {0};
	struct mta_dsn_info info;
	size_t n = 0;
	int64_t now = now_us();
	int rc;

	c->dsn_qid[0] = '\0';
	mta_envelope_init(&e);
	rc = mta_spool_get(ctl->p.spool, c->req.args[0], &e);
	if (rc != 0)
		return rc;
	rs = calloc(e.nrcpt + 1, sizeof(*rs));
	if (rs == NULL) {
		mta_envelope_free(&e);
		return -ENOMEM;
	}
	for (size_t i = 0; i < e.nrcpt; i++) {
		struct mta_rcpt *r = &e.rcpts[i];
		if (r->state != MTA_RCPT_QUEUED &&
		    r->state != MTA_RCPT_DEFERRED)
			continue;
		r->state = MTA_RCPT_BOUNCED;
		if (!mta_dsn_needed(&e, i, MTA_DSN_FAILED))
			continue;
		rs[n].index = i;
		rs[n].action = MTA_DSN_FAILED;
		rs[n].status = "5.0.0";
		rs[n].diagnostic =
			"bounced by the mail administrator (mtactl bounce)";
		rs[n].last_attempt_us = now;
		n++;
	}
	if (n == 0) {
		free(rs);
		mta_envelope_free(&e);
		return 0;
	}
	char unique[64];
	snprintf(unique, sizeof(unique), "%.16s.admin", c->req.args[0]);
	struct mta_dsn_params dp = {
		.reporting_mta = ctl->p.cfg->server_hostname,
		.env = &e,
		.rcpts = rs,
		.nrcpt = n,
		.now_us = now,
		.unique = unique,
		.read = read_body,
		.read_ud = c,
		.msg_size = e.size,
	};
	rc = mta_dsn_build(&dp, &out, &info);
	free(rs);
	if (rc == 0) {
		mta_envelope_free(&c->dsn_env);
		mta_envelope_init(&c->dsn_env);
		if (mta_envelope_set_str(&c->dsn_env.sender, "") != 0 ||
		    mta_envelope_add_rcpt(&c->dsn_env, e.sender, NULL, NULL,
					  0) == NULL ||
		    mta_envelope_set_str(&c->dsn_env.helo,
					 ctl->p.cfg->server_hostname) ||
		    mta_envelope_set_str(&c->dsn_env.client_addr, "local"))
			rc = -ENOMEM;
	}
	if (rc == 0) {
		c->dsn_env.body =
			info.eightbit ? MTA_BODY_8BITMIME : MTA_BODY_NONE;
		c->dsn_env.smtputf8 = info.smtputf8;
		c->dsn_env.arrival_us = now;
		c->dsn_env.size = out.len;
		mta_body_free(&c->dsn_body);
		mta_body_init(&c->dsn_body, mta_spool_tmpdir(ctl->p.spool),
			      SIZE_MAX);
		rc = mta_body_append(&c->dsn_body, out.data, out.len);
	}
	mta_buf_free(&out);
	mta_envelope_free(&e);
	if (rc == 0)
		/* the pid keeps ids apart from the listener's sequence */
		mta_qid_make(c->dsn_qid, (uint64_t)now,
			     (uint32_t)getpid() << 12 | (++ctl->seq & 0xfff));
	return rc;
}

static void message_op(struct conn *c);

static void on_wait(uv_timer_t *t)
{
	message_op(t->data);
}

/* HOLD RELEASE DELETE BOUNCE FLUSH: after the message left delivery. */
static void message_op(struct conn *c)
{
	struct mta_delivery *d = delivery_of(c->ctl);
	char text[600];
	int rc;

	if (d != NULL && mta_delivery_active(d, c->req.args[0])) {
		if (++c->waits > WAIT_MAX) {
			done(c, MTA_EAGAIN, "busy",
			     "the message is still being delivered; try "
			     "again in a minute");
			return;
		}
		uv_timer_start(&c->timer, on_wait, WAIT_MS, 0);
		return;
	}
	switch (c->req.verb) {
	case MTA_CTL_HOLD:
		submit(c, MTA_COMMIT_ADMIN, MTA_SPOOL_HOLD);
		break;
	case MTA_CTL_RELEASE:
		submit(c, MTA_COMMIT_ADMIN, MTA_SPOOL_RELEASE);
		break;
	case MTA_CTL_FLUSH:
		submit(c, MTA_COMMIT_ADMIN, MTA_SPOOL_FLUSH);
		break;
	case MTA_CTL_DELETE:
		c->dsn_qid[0] = '\0';
		submit(c, MTA_COMMIT_ADMIN, MTA_SPOOL_DELETE);
		break;
	case MTA_CTL_BOUNCE:
		rc = build_bounce(c);
		if (rc == MTA_ENOTFOUND) {
			snprintf(text, sizeof(text),
				 "%s: no such message (see mtaq)",
				 c->req.args[0]);
			done(c, rc, "notfound", text);
			return;
		}
		if (rc != 0) {
			snprintf(text, sizeof(text), "cannot build the DSN: %s",
				 mta_strerror(rc));
			done(c, rc, "failed", text);
			return;
		}
		submit(c, MTA_COMMIT_ADMIN, MTA_SPOOL_DELETE);
		break;
	case MTA_CTL_ACTIVE:
	case MTA_CTL_EXPLAIN:
	case MTA_CTL_NVERBS:
	case MTA_CTL_POLICY_ACCEPT:
	case MTA_CTL_POLICY_PURGE:
	case MTA_CTL_POLICY_REFRESH:
	case MTA_CTL_QUIT:
	case MTA_CTL_SITES:
	case MTA_CTL_STATS:
	case MTA_CTL_TLSRPT_SEND:
	default:
		break;
	}
}

static void on_refreshed(const struct mta_mtasts_result *r, void *ud)
{
	struct conn *c = ud;
	char text[600];

	c->q = NULL;
	if (!r->have) {
		snprintf(text, sizeof(text), "%s: no policy: %s",
			 c->req.args[0], r->why ? r->why : "none published");
		done(c, MTA_ENOTFOUND, "failed", text);
		return;
	}
	snprintf(c->note, sizeof(c->note), "refreshed id=%s mode=%s",
		 r->id ? r->id : "?", mta_sts_mode_name(r->policy->mode));
	/* answer after the cache write handed to the writer before us */
	submit(c, MTA_COMMIT_ADMIN, MTA_SPOOL_NOP);
}

static int send_active(void *ud, const char *qid)
{
	send_line(ud, "* %s", qid);
	return 0;
}

/* One SITES line; the site is an operator's pattern (no spaces). */
static int send_site(void *ud, const struct mta_delivery_site *si)
{
	send_line(ud,
		  "* %s connections=%u max_connections=%u rate=%.1f "
		  "ceiling=%.1f sent=%llu throttles=%llu next_ms=%lld line=%u",
		  si->site, si->nconn, si->max_conn, si->rate, si->ceiling,
		  (unsigned long long)si->sent,
		  (unsigned long long)si->throttles, (long long)si->next_ms,
		  si->line);
	return 0;
}

static int count_held(void *ud, const char *qid, int64_t since)
{
	(void)qid;
	(void)since;
	(*(uint64_t *)ud)++;
	return 0;
}

static int count_active(void *ud, const char *qid)
{
	(void)qid;
	(*(uint64_t *)ud)++;
	return 0;
}

static void on_explain_line(void *ud, const char *text)
{
	send_line(ud, "* %s", text);
}

static void on_explain_done(void *ud, int rc)
{
	struct conn *c = ud;
	char text[200];

	c->x = NULL;
	if (rc != 0) {
		snprintf(text, sizeof(text), "explain stopped: %s",
			 mta_strerror(rc));
		done(c, rc, "failed", text);
		return;
	}
	done(c, 0, NULL, "explained");
}

/* EXPLAIN domain [CONNECT] [FROM=sender-domain]: the decision trace of
 * explain.h with what delivery decides with (its resolver, self-test
 * state, routing and policy tables, MTA-STS resolver and cache). */
static void explain(struct conn *c)
{
	struct mtad_control *ctl = c->ctl;
	struct mta_delivery *d = delivery_of(ctl);
	struct mta_explain_params xp = {0};
	char text[600];
	int rc;

	for (size_t i = 1; i < c->req.nargs; i++) {
		if (strcmp(c->req.args[i], "CONNECT") == 0)
			xp.connect = true;
		else if (strncmp(c->req.args[i], "FROM=", 5) == 0)
			xp.sender_domain = c->req.args[i] + 5;
		else {
			done(c, MTA_EPROTO, "usage",
			     "EXPLAIN domain [CONNECT] [FROM=sender-domain]");
			return;
		}
	}
	if (d == NULL) {
		done(c, MTA_ECLOSED, "unavailable",
		     "delivery is not running in mtad (no DNS resolver or "
		     "client TLS?); see the mtad log");
		return;
	}
	xp.loop = ctl->p.loop;
	mta_delivery_env(d, &xp.env);
	xp.spool = ctl->p.spool;
	xp.domain = c->req.args[0];
	xp.line = on_explain_line;
	xp.done = on_explain_done;
	xp.ud = c;
	rc = mta_explain_start(&xp, &c->x);
	if (rc != 0) {
		c->x = NULL;
		snprintf(text, sizeof(text), "%s: %s", c->req.args[0],
			 rc == -EINVAL ? "not a domain name" : mta_strerror(rc));
		done(c, rc, rc == -EINVAL ? "usage" : "failed", text);
	}
}

static void on_tlsrpt_line(void *ud, const char *text)
{
	send_line(ud, "* %s", text);
}

static void on_tlsrpt_done(void *ud, int rc)
{
	struct conn *c = ud;

	c->tlsrpt_running = false;
	if (rc != 0)
		done(c, rc, "failed", mta_strerror(rc));
	else
		done(c, 0, NULL, "round done");
}

/* TLSRPT-SEND [day]: a reporter round now (tlsrpt_send.h). */
static void tlsrpt_send(struct conn *c)
{
	struct mta_delivery *d = delivery_of(c->ctl);
	const char *day = c->req.nargs == 1 ? c->req.args[0] : NULL;
	int rc;

	if (day != NULL &&
	    (strlen(day) != 10 || strspn(day, "0123456789-") != 10 ||
	     day[4] != '-' || day[7] != '-')) {
		done(c, MTA_EPROTO, "usage", "TLSRPT-SEND [YYYY-MM-DD]");
		return;
	}
	if (d == NULL) {
		done(c, MTA_ECLOSED, "unavailable",
		     "delivery is not running in mtad; see the mtad log");
		return;
	}
	rc = mta_delivery_tlsrpt_send(d, day, on_tlsrpt_line, on_tlsrpt_done,
				      c);
	if (rc == MTA_ECLOSED)
		done(c, rc, "unavailable",
		     "the TLSRPT reporter is off (tlsrpt.enabled = 0)");
	else if (rc == MTA_EAGAIN)
		done(c, rc, "busy", "a TLSRPT round is running; retry");
	else if (rc != 0)
		done(c, rc, "failed", mta_strerror(rc));
	else
		c->tlsrpt_running = true;
}

/* Over 100 lines on purpose: one short case per control verb, so the
 * whole protocol dispatch reads in one place. */
static void handle_request(struct conn *c, const char *line)
{
	struct mtad_control *ctl = c->ctl;
	struct mta_delivery *d = delivery_of(ctl);
	struct mta_buf raw = {0};
	char text[600];
	int rc;

	if (mta_ctl_parse_req(line, &c->req) != 0) {
		c->req.verb = MTA_CTL_STATS; /* not a change: not logged */
		c->req.nargs = 0;
		done(c, MTA_EPROTO, "usage",
		     "unknown request or wrong arguments (mtactl and mtad "
		     "versions differ?)");
		return;
	}
	c->waits = 0;
	c->dsn_qid[0] = '\0';
	switch (c->req.verb) {
	case MTA_CTL_HOLD:
	case MTA_CTL_RELEASE:
	case MTA_CTL_DELETE:
	case MTA_CTL_BOUNCE:
	case MTA_CTL_FLUSH:
		if (!qid_ok(c->req.args[0])) {
			snprintf(text, sizeof(text),
				 "%s is not a queue id (16 characters, as "
				 "mtaq shows them)", c->req.args[0]);
			done(c, MTA_EPROTO, "usage", text);
			return;
		}
		message_op(c);
		return;
	case MTA_CTL_POLICY_PURGE:
		for (char *p = c->req.args[0]; *p; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p - 'A' + 'a');
		rc = mta_spool_sts_get(ctl->p.spool, c->req.args[0], &raw);
		mta_buf_free(&raw);
		if (rc == MTA_ENOTFOUND) {
			snprintf(text, sizeof(text),
				 "%s: no cached MTA-STS policy (mtactl policy "
				 "list shows the cache)", c->req.args[0]);
			done(c, rc, "notfound", text);
			return;
		}
		submit(c, MTA_COMMIT_STS_PUT, MTA_SPOOL_NOP);
		return;
	case MTA_CTL_POLICY_ACCEPT:
		for (char *p = c->req.args[0]; *p; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p - 'A' + 'a');
		submit(c, MTA_COMMIT_KEYS, MTA_SPOOL_NOP);
		return;
	case MTA_CTL_POLICY_REFRESH:
		if (mtasts_of(ctl) == NULL) {
			done(c, MTA_ECLOSED, "unavailable",
			     "MTA-STS is not running in mtad (no DNS "
			     "resolver?); see the mtad log");
			return;
		}
		rc = mta_mtasts_refresh(mtasts_of(ctl), c->req.args[0],
					on_refreshed, c, &c->q);
		if (rc != 0) {
			c->q = NULL;
			snprintf(text, sizeof(text), "%s: %s", c->req.args[0],
				 mta_strerror(rc));
			done(c, rc, rc == -EINVAL ? "usage" : "failed", text);
		}
		return;
	case MTA_CTL_ACTIVE:
		if (d != NULL)
			mta_delivery_foreach_active(d, send_active, c);
		done(c, 0, NULL, NULL);
		return;
	case MTA_CTL_STATS: {
		uint64_t m = 0, r = 0, b = 0, held = 0, active = 0;
		(void)mta_spool_totals(ctl->p.spool, &m, &r, &b);
		(void)mta_spool_held_foreach(ctl->p.spool, count_held, &held);
		if (d != NULL)
			mta_delivery_foreach_active(d, count_active, &active);
		send_line(c, "* version %s", ctl->p.version);
		send_line(c, "* uptime %lld",
			  (long long)((now_us() - ctl->started_us) / 1000000));
		send_line(c, "* messages %llu", (unsigned long long)m);
		send_line(c, "* recipients %llu", (unsigned long long)r);
		send_line(c, "* bytes %llu", (unsigned long long)b);
		send_line(c, "* held %llu", (unsigned long long)held);
		send_line(c, "* active %llu", (unsigned long long)active);
		send_line(c, "* delivery %s", d ? "running" : "stopped");
		send_line(c, "* mta_sts %s",
			  mtasts_of(ctl) ? "running" : "stopped");
		done(c, 0, NULL, NULL);
		return;
	}
	case MTA_CTL_EXPLAIN:
		explain(c);
		return;
	case MTA_CTL_TLSRPT_SEND:
		tlsrpt_send(c);
		return;
	case MTA_CTL_SITES:
		if (d == NULL) {
			done(c, MTA_ECLOSED, "unavailable",
			     "delivery is not running in mtad; see the mtad "
			     "log");
			return;
		}
		(void)mta_delivery_foreach_site(d, send_site, c);
		done(c, 0, NULL, NULL);
		return;
	case MTA_CTL_QUIT:
	case MTA_CTL_NVERBS:
	default:
		done(c, 0, NULL, "bye");
		return;
	}
}

static void handle_line(struct conn *c, const char *line)
{
	unsigned v;

	c->busy = true;
	if (!c->hello) {
		if (mta_ctl_parse_hello(line, &v) != 0 ||
		    v != MTA_CTL_VERSION) {
			send_line(c, "ERR version this mtad speaks MTACTL %d; "
				     "use the mtactl of the same release",
				  MTA_CTL_VERSION);
			conn_close(c);
			return;
		}
		c->hello = true;
		send_line(c, "OK mtad %s proto %d", c->ctl->p.version,
			  MTA_CTL_VERSION);
		c->busy = false;
		return;
	}
	handle_request(c, line);
}

static void process_input(struct conn *c)
{
	while (!c->busy && !c->closing && c->in_len > 0) {
		const char *line = NULL;
		size_t used = 0;
		int rc = mta_ctl_lines_feed(&c->lines, c->in, c->in_len, &used,
					    &line);
		if (rc < 0) {
			send_line(c, "ERR usage line too long");
			conn_close(c);
			return;
		}
		memmove(c->in, c->in + used, c->in_len - used);
		c->in_len -= used;
		if (rc == 1)
			handle_line(c, line);
	}
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct conn *c = h->data;
	(void)hint;
	buf->base = (char *)c->in + c->in_len;
	buf->len = IN_MAX - c->in_len;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	(void)buf;

	if (n < 0) {
		conn_close(c);
		return;
	}
	c->in_len += (size_t)n;
	if (c->in_len == IN_MAX && c->busy) {
		/* a client that does not wait for replies */
		send_line(c, "ERR usage one request at a time");
		conn_close(c);
		return;
	}
	process_input(c);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct mtad_control *ctl = server->data;
	struct conn *c;

	/* started before the loop first runs (start-up order) */
	if (status != 0 || ctl->stopping || !ctl->started)
		return;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return;
	c->ctl = ctl;
	c->uid = c->gid = c->pid = -1;
	mta_envelope_init(&c->dsn_env);
	mta_body_init(&c->dsn_body, NULL, 0);
	uv_pipe_init(ctl->p.loop, &c->pipe, 0);
	uv_timer_init(ctl->p.loop, &c->timer);
	c->pipe.data = c;
	c->timer.data = c;
	c->handles = 2;
	c->next = ctl->conns;
	if (ctl->conns)
		ctl->conns->pprev = &c->next;
	c->pprev = &ctl->conns;
	ctl->conns = c;
	if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
		conn_close(c);
		return;
	}
	uv_os_fd_t fd;
	struct ucred cr;
	socklen_t len = sizeof(cr);
	if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0) {
		c->uid = (long)cr.uid;
		c->gid = (long)cr.gid;
		c->pid = (long)cr.pid;
	}
	uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_server_closed(uv_handle_t *h)
{
	free(h->data);
}

static int resolve_group(const char *name, gid_t *out)
{
	char *end;
	unsigned long v = strtoul(name, &end, 10);
	struct group *g;

	if (*name != '\0' && *end == '\0') {
		*out = (gid_t)v;
		return 0;
	}
	g = getgrnam(name);
	if (g == NULL)
		return -ENOENT;
	*out = g->gr_gid;
	return 0;
}

static void fail_log(const char *path, const char *what, int err)
{
	struct mta_logline ll;
	mta_log_begin(&ll, MTA_LOG_ERR, "control_failed");
	mta_log_str(&ll, "socket", path);
	mta_log_str(&ll, "what", what);
	mta_log_str(&ll, "error", err < 0 ? mta_strerror(err) : uv_strerror(err));
	mta_log_end(&ll);
}

int mtad_control_open(uv_loop_t *loop, const struct mta_config *cfg,
		      struct mtad_control **out)
{
	const char *path = cfg->control_socket;
	struct mtad_control *ctl;
	struct stat st;
	gid_t gid = (gid_t)-1;
	int rc;

	*out = NULL;
	if (cfg->control_group != NULL &&
	    resolve_group(cfg->control_group, &gid) != 0) {
		fprintf(stderr,
			"mtad: control.group: %s: no such group (create it or "
			"fix control.group)\n", cfg->control_group);
		fail_log(path, "control.group: no such group", -ENOENT);
		return MTA_ECONFIG;
	}
	ctl = calloc(1, sizeof(*ctl));
	if (ctl == NULL)
		return -ENOMEM;
	ctl->p.loop = loop;
	ctl->p.cfg = cfg;
	/* a socket left by a killed mtad (the spool lock says none runs) */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		(void)unlink(path);
	uv_pipe_init(loop, &ctl->server, 0);
	ctl->server.data = ctl;
	mode_t old = umask(0117);
	rc = uv_pipe_bind(&ctl->server, path);
	umask(old);
	if (rc == 0 && chmod(path, 0660) != 0)
		rc = -errno;
	/* still root here: any group can be given (after the drop only
	 * the daemon's own could) */
	if (rc == 0 && gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) != 0)
		rc = -errno;
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&ctl->server, 16, on_connection);
	if (rc != 0) {
		fail_log(path, "listen", rc);
		fprintf(stderr, "mtad: control.socket %s: %s\n", path,
			uv_strerror(rc));
		uv_close((uv_handle_t *)&ctl->server, on_server_closed);
		return rc;
	}
	*out = ctl;
	return 0;
}

void mtad_control_start(struct mtad_control *ctl,
			const struct mtad_control_params *p)
{
	assert(p->loop == ctl->p.loop && p->cfg == ctl->p.cfg);
	ctl->p = *p;
	ctl->started_us = now_us();
	ctl->started = true;
}

void mtad_control_stop(struct mtad_control *ctl)
{
	if (ctl == NULL || ctl->stopping)
		return;
	ctl->stopping = true;
	(void)unlink(ctl->p.cfg->control_socket);
	for (struct conn *c = ctl->conns, *n; c != NULL; c = n) {
		n = c->next;
		c->pprev = NULL; /* the list dies with ctl */
		c->next = NULL;
		conn_close(c);
	}
	ctl->conns = NULL;
	uv_close((uv_handle_t *)&ctl->server, on_server_closed);
}
