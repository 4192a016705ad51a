/*
 * inbound.c - inbound SMTP sessions: the SMTP server engine on a stream
 * (stream.h), deadlines, session limits, messages to the writer thread.
 * See inbound.h.
 */
#include "inbound.h"

#include "auth.h"
#include "dkim.h"
#include "err.h"
#include "log.h"
#include "smtp_server.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define AUTH_WINDOW_MS (15u * 60u * 1000u) /* failures remembered */

struct session;

/*
 * What the session sets of all loop threads share (server.threads): the
 * sessions not closing (for the limits), the AUTH failure table, the
 * session and queue id sequences.  mu guards active, nactive, nuntrusted
 * and limit; the rest are atomics.
 */
struct mta_inbound_shared {
	pthread_mutex_t mu;
	struct session *active; /* not closing, every set (anext/aprev) */
	size_t nactive;
	size_t nuntrusted; /* of active: from outside relay_networks */
	struct mta_auth_limit limit; /* failed AUTH per client */
	atomic_size_t nsessions;     /* every session, closing too */
	atomic_uint_fast64_t next_sid;
	atomic_uint_fast32_t qid_seq;
};

/* One AUTH verification: the hash on the thread pool, then the delay of
 * a failure on the loop.  It outlives its session when the client goes
 * away meanwhile (s is then NULL and the job frees itself). */
struct auth_job {
	uv_work_t work;
	uv_timer_t timer;
	bool timer_on;
	struct session *s;
	struct mta_auth_users *users; /* a reference */
	char user[MTA_AUTH_NAME_MAX + 1];
	char pass[MTA_AUTH_PASS_MAX + 1];
	int result;
	enum mta_smtpd_auth_verdict verdict;
};

struct session {
	struct session *prev, *next;
	struct session *aprev, *anext; /* sh->active, under sh->mu */
	bool active;		       /* in sh->active */
	struct mta_inbound *l;
	/* the snapshot the session started with (kept alive by the owner
	 * until mta_inbound_nsessions() was 0 after a reconfigure) */
	const struct mta_config *cfg;
	const struct mta_tls_creds *tls;
	struct mta_auth_users *users; /* a reference, or NULL: no AUTH */
	enum mta_inbound_kind kind;
	bool greeted;		     /* the 220 was queued */
	struct auth_job *auth_job;   /* AUTH being verified, or NULL */
	char auth_name[MTA_AUTH_NAME_MAX + 1]; /* after a successful AUTH */
	struct mta_stream st; /* socket, timer, TLS, buffers */
	bool stream_closed;   /* ops.closed ran */
	uint64_t sid;
	char client[INET6_ADDRSTRLEN];
	int client_port;
	uint8_t client_key[16]; /* IPv4 address, or IPv6 /64 prefix */
	bool trusted;		/* inside relay_networks */
	bool counted_untrusted; /* in sh->nuntrusted (until closing) */
	/* deadlines, uv_now() milliseconds (arm_timer()) */
	uint32_t progress_seen;
	bool in_message;
	bool got_bytes; /* input arrived since the last arm_timer() */
	uint64_t cmd_deadline, idle_deadline, msg_deadline;
	struct mta_smtpd_config scfg;
	struct mta_smtpd smtpd;
	bool body_open;
	int body_err;
	struct mta_body body;
	struct mta_envelope env;
	struct mta_commit commit;
	char qid[MTA_QID_LEN + 1];
	bool commit_pending;
	bool closing;
	bool shutdown_pending; /* daemon shutdown after the pending commit */
	bool processing;
	unsigned nmsgs;
	const char *close_reason;
};

struct mta_inbound {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	const struct mta_tls_creds *tls;
	void (*on_queued)(void *arg);
	void *on_queued_arg;
	struct mta_metrics *metrics;
	struct mta_auth_users *users; /* a reference, or NULL */
	struct mta_inbound_shared *sh;
	bool own_sh; /* sh made by mta_inbound_new(), freed with l */
	struct mta_writer_port *port; /* or NULL: the writer's loop */
	unsigned thread;	      /* logged on connect lines */
	struct session *sessions;
	size_t nsessions;
	bool shutting_down;
	void (*done)(void *arg);
	void *done_arg;
	struct mta_stream_scratch scratch;
};

static void process(struct session *s);
static void arm_timer(struct session *s);
static void session_resume(struct session *s);
static void session_close(struct session *s, const char *reason,
			  bool graceful);

static uint64_t now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static void maybe_done(struct mta_inbound *l)
{
	if (l->shutting_down && l->nsessions == 0 && l->done != NULL) {
		void (*done)(void *) = l->done;
		l->done = NULL;
		done(l->done_arg);
	}
}

/* The session leaves the active list (it is closing): it no longer counts
 * against the limits. */
static void deactivate(struct session *s)
{
	struct mta_inbound_shared *sh = s->l->sh;

	if (!s->active)
		return;
	pthread_mutex_lock(&sh->mu);
	if (s->aprev != NULL)
		s->aprev->anext = s->anext;
	else
		sh->active = s->anext;
	if (s->anext != NULL)
		s->anext->aprev = s->aprev;
	sh->nactive--;
	if (s->counted_untrusted)
		sh->nuntrusted--;
	pthread_mutex_unlock(&sh->mu);
	s->active = false;
	s->counted_untrusted = false;
}

/* ---- output ---------------------------------------------------------- */

/* Moves engine replies to the stream; false if output is backed up or
 * the stream failed (it is then closing, see on_stream_error). */
static bool flush_engine(struct session *s)
{
	const uint8_t *p;
	size_t n = mta_smtpd_output(&s->smtpd, &p);

	if (n == 0)
		return true;
	if (s->st.write_pending >= MTA_INBOUND_OUTBUF_MAX)
		return false;
	if (mta_stream_write(&s->st, p, n) != 0)
		return false;
	mta_smtpd_output_consume(&s->smtpd, n);
	return true;
}

/* ---- closing --------------------------------------------------------- */

static void auth_detach(struct session *s);

static void session_free(struct session *s)
{
	struct mta_inbound *l = s->l;
	struct mta_logline ll;

	mta_log_begin(&ll, MTA_LOG_INFO, "disconnect");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "client", s->client);
	mta_log_str(&ll, "reason", s->close_reason);
	mta_log_int(&ll, "messages", s->nmsgs);
	mta_log_end(&ll);

	if (s->auth_job != NULL)
		auth_detach(s);
	mta_auth_users_unref(s->users);
	mta_smtpd_free(&s->smtpd);
	if (s->body_open)
		mta_body_free(&s->body);
	mta_envelope_free(&s->env);
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		l->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	deactivate(s);
	l->nsessions--;
	atomic_fetch_sub(&l->sh->nsessions, 1);
	mta_metrics_session(l->metrics, -1);
	free(s);
	maybe_done(l);
}

/* ops.closed: the socket and timer are closed (TLS and buffers freed). */
static void on_stream_closed(struct mta_stream *st)
{
	struct session *s = st->data;

	s->stream_closed = true;
	if (s->commit_pending)
		return; /* freed by the commit callback */
	session_free(s);
}

static void session_close(struct session *s, const char *reason,
			  bool graceful)
{
	if (s->closing)
		return;
	s->closing = true;
	deactivate(s);
	s->close_reason = reason;
	if (graceful)
		flush_engine(s);
	mta_stream_close(&s->st, graceful);
}

/* ops.error: a write or TLS failure closed the stream; the reason goes in
 * the disconnect line, TLS failures get their own line with the text. */
static void on_stream_error(struct mta_stream *st, const char *reason,
			    const char *detail)
{
	struct session *s = st->data;
	struct mta_logline ll;

	if (strcmp(reason, "tls_error") == 0) {
		mta_log_begin(&ll, MTA_LOG_INFO, "tls_error");
		mta_log_int(&ll, "sid", (long long)s->sid);
		mta_log_str(&ll, "client", s->client);
		mta_log_str(&ll, "error", detail);
		mta_log_end(&ll);
	}
	session_close(s, reason, false);
}

/* ---- messages -------------------------------------------------------- */

static void log_reject(struct session *s, const struct mta_smtpd_event *e)
{
	struct mta_logline ll;
	const char *t = e->text != NULL ? e->text : "";
	size_t tl = strlen(t);

	char dsn[MTA_METRICS_LABEL_LEN] = "";

	mta_log_begin(&ll, MTA_LOG_INFO, "reject");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "client", s->client);
	mta_log_str(&ll, "verb", e->verb);
	mta_log_int(&ll, "code", e->code);
	/* "550 5.6.0 text": the enhanced code is the second word */
	if (tl > 4 && (t[4] == '2' || t[4] == '4' || t[4] == '5') &&
	    t[5] == '.') {
		size_t n = strcspn(t + 4, " \r\n");
		mta_log_strn(&ll, "dsn", t + 4, n);
		if (n < sizeof(dsn)) {
			memcpy(dsn, t + 4, n);
			dsn[n] = '\0';
		}
	}
	mta_metrics_rejected(s->l->metrics, dsn);
	while (tl > 0 && (t[tl - 1] == '\r' || t[tl - 1] == '\n'))
		tl--;
	mta_log_strn(&ll, "text", t, tl);
	mta_log_end(&ll);
}

static void on_commit_done(struct mta_commit *c)
{
	struct session *s = container_of(c, struct session, commit);
	struct mta_logline ll;

	s->commit_pending = false;
	if (c->result == 0) {
		s->nmsgs++;
		mta_log_begin(&ll, MTA_LOG_INFO, "accept");
		mta_log_int(&ll, "sid", (long long)s->sid);
		mta_log_str(&ll, "qid", s->qid);
		mta_log_int(&ll, "size", (long long)s->env.size);
		mta_log_fmt(&ll, "from", "<%s>", s->env.sender);
		mta_log_int(&ll, "nrcpt", (long long)s->env.nrcpt);
		mta_log_str(&ll, "client", s->client);
		mta_log_str(&ll, "tls", s->env.tls ? s->env.tls : "none");
		if (s->auth_name[0] != '\0')
			mta_log_str(&ll, "auth", s->auth_name);
		mta_log_end(&ll);
		mta_metrics_accepted(s->l->metrics);
		if (s->l->on_queued != NULL)
			s->l->on_queued(s->l->on_queued_arg);
	} else {
		mta_log_begin(&ll, MTA_LOG_WARN, "commit_failed");
		mta_log_int(&ll, "sid", (long long)s->sid);
		mta_log_str(&ll, "qid", s->qid);
		mta_log_str(&ll, "error", mta_errname(c->result));
		mta_log_str(&ll, "reason", mta_strerror(c->result));
		mta_log_end(&ll);
	}
	mta_envelope_free(&s->env);
	mta_body_free(&s->body);
	s->body_open = false;

	if (s->stream_closed) { /* connection already gone */
		session_free(s);
		return;
	}
	if (s->closing)
		return;
	mta_smtpd_message_done(&s->smtpd, c->result, s->qid);
	if (s->shutdown_pending) {
		mta_smtpd_shutdown(&s->smtpd);
		session_close(s, "shutdown", true);
		return;
	}
	process(s);
}

static void start_message(struct session *s)
{
	struct mta_inbound *l = s->l;
	char rec[2048];
	int n;

	/* one sequence for every loop thread: ids stay unique */
	mta_qid_make(s->qid, now_us(),
		     (uint32_t)atomic_fetch_add(&l->sh->qid_seq, 1) + 1);
	if (s->body_open)
		mta_body_free(&s->body);
	mta_body_init(&s->body, mta_spool_tmpdir(l->spool), MTA_INBOUND_BODY_SPILL);
	s->body_open = true;
	s->body_err = 0;
	n = mta_smtpd_received(&s->smtpd, s->qid, time(NULL), rec,
			       sizeof(rec));
	if (n > 0)
		s->body_err = mta_body_append(&s->body, rec, (size_t)n);
}

/* DKIM (dkim.h): a message from a relay-allowed or authenticated client
 * whose From domain has a key in dkim.keys_file gets a DKIM-Signature
 * field in front of the stored body, before the commit and the 250.  The
 * whole body is read back (it may have spilled to a file) and hashed;
 * the signed copy replaces it.  A message that cannot be signed is
 * accepted unsigned (logged): signing is not a reason to refuse mail. */
static void dkim_sign(struct session *s)
{
	const struct mta_dkim_keys *keys = s->cfg->dkim_keys;
	struct mta_dkim_sign *ds = NULL;
	struct mta_body nb;
	struct mta_logline ll;
	uint8_t buf[16384];
	uint64_t off = 0;
	size_t got, hl = 0;
	char *h = NULL;
	int rc;

	if (keys == NULL || mta_dkim_keys_count(keys) == 0)
		return;
	if (!s->trusted && !mta_smtpd_authenticated(&s->smtpd))
		return;
	rc = mta_dkim_sign_new(keys, NULL, (int64_t)time(NULL), &ds);
	while (rc == 0) {
		rc = mta_body_pread(&s->body, off, buf, sizeof(buf), &got);
		if (rc != 0 || got == 0)
			break;
		off += got;
		rc = mta_dkim_sign_feed(ds, buf, got);
	}
	if (rc == 0)
		rc = mta_dkim_sign_finish(ds, &h, &hl);
	if (rc == MTA_ENOTFOUND || rc == MTA_EPROTO) {
		/* not ours to sign (no key for the From domain, no From) */
		mta_dkim_sign_free(ds);
		return;
	}
	if (rc == 0) {
		mta_body_init(&nb, mta_spool_tmpdir(s->l->spool),
			      MTA_INBOUND_BODY_SPILL);
		rc = mta_body_append(&nb, h, hl);
		for (off = 0; rc == 0;) {
			rc = mta_body_pread(&s->body, off, buf, sizeof(buf),
					    &got);
			if (rc != 0 || got == 0)
				break;
			off += got;
			rc = mta_body_append(&nb, buf, got);
		}
		if (rc == 0) {
			mta_body_free(&s->body);
			s->body = nb;
		} else {
			mta_body_free(&nb);
		}
	}
	mta_log_begin(&ll, rc == 0 ? MTA_LOG_INFO : MTA_LOG_WARN,
		      rc == 0 ? "dkim_signed" : "dkim_failed");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "qid", s->qid);
	mta_log_str(&ll, "domain", ds != NULL ? mta_dkim_sign_domain(ds) : "");
	if (rc == 0) {
		const char *sel = NULL;
		const char *alg = mta_dkim_keys_find(
			keys, mta_dkim_sign_domain(ds), &sel);
		mta_log_str(&ll, "selector", sel != NULL ? sel : "");
		mta_log_str(&ll, "alg", alg != NULL ? alg : "");
	} else {
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_str(&ll, "effect", "accepted unsigned");
	}
	mta_log_end(&ll);
	free(h);
	mta_dkim_sign_free(ds);
}

static void submit_message(struct session *s)
{
	struct mta_inbound *l = s->l;
	char desc[128];

	mta_envelope_free(&s->env);
	if (!s->trusted && !mta_smtpd_authenticated(&s->smtpd)) {
		/* the engine relays it with <>: log what the client claimed */
		const char *claimed = mta_smtpd_sender(&s->smtpd);
		struct mta_logline cl;
		mta_log_begin(&cl, MTA_LOG_INFO, "untrusted_message");
		mta_log_int(&cl, "sid", (long long)s->sid);
		mta_log_str(&cl, "qid", s->qid);
		mta_log_str(&cl, "client", s->client);
		mta_log_fmt(&cl, "claimed_from", "<%s>",
			    claimed != NULL ? claimed : "");
		mta_log_str(&cl, "sender", "<>");
		mta_log_end(&cl);
	}
	mta_smtpd_take_envelope(&s->smtpd, &s->env);
	if (s->body_err != 0) {
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_WARN, "commit_failed");
		mta_log_int(&ll, "sid", (long long)s->sid);
		mta_log_str(&ll, "qid", s->qid);
		mta_log_str(&ll, "error", mta_errname(s->body_err));
		mta_log_str(&ll, "reason", mta_strerror(s->body_err));
		mta_log_end(&ll);
		mta_smtpd_message_done(&s->smtpd, s->body_err, s->qid);
		mta_envelope_free(&s->env);
		mta_body_free(&s->body);
		s->body_open = false;
		return;
	}
	if (s->env.client_addr == NULL)
		(void)mta_envelope_set_str(&s->env.client_addr, s->client);
	if (mta_stream_tls_done(&s->st)) {
		mta_tls_describe(&s->st.tls, desc, sizeof(desc));
		(void)mta_envelope_set_str(&s->env.tls, desc);
	}
	dkim_sign(s);
	s->env.arrival_us = (int64_t)now_us();
	s->env.size = s->body.len;
	s->commit_pending = true;
	if (l->port != NULL)
		mta_writer_port_submit_new(l->port, &s->commit, s->qid, &s->env,
					   &s->body, on_commit_done);
	else
		mta_writer_submit_new(l->writer, &s->commit, s->qid, &s->env,
				      &s->body, on_commit_done);
}

static void start_tls(struct session *s, size_t discarded)
{
	struct mta_logline ll;
	size_t dropped = 0;

	flush_engine(s); /* the 220 goes out in plaintext */
	if (s->closing)
		return;
	if (mta_stream_starttls_server(&s->st, s->tls, &dropped) != 0) {
		session_close(s, "tls_error", false);
		return;
	}
	/* TLS-04: whatever followed STARTTLS in plaintext is dropped. */
	discarded += dropped;
	mta_log_begin(&ll, MTA_LOG_INFO, "starttls");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_int(&ll, "discarded", (long long)discarded);
	mta_log_end(&ll);
}

/* ---- AUTH ------------------------------------------------------------- */

static void log_auth(struct session *s, const char *result, unsigned fails)
{
	struct mta_logline ll;

	mta_log_begin(&ll, MTA_LOG_INFO, "auth");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "client", s->client);
	mta_log_str(&ll, "result", result);
	if (strcmp(result, "ok") == 0)
		mta_log_str(&ll, "user", s->auth_name);
	if (fails > 0)
		mta_log_int(&ll, "failures", fails);
	mta_log_end(&ll);
}

static unsigned client_failures(struct session *s)
{
	struct mta_inbound_shared *sh = s->l->sh;
	unsigned n = 0;

	pthread_mutex_lock(&sh->mu);
	for (size_t i = 0; i < MTA_AUTH_LIMIT_SLOTS; i++) {
		const struct mta_auth_limit_slot *sl = &sh->limit.slot[i];
		if (sl->last_ms != 0 &&
		    memcmp(sl->key, s->client_key, sizeof(s->client_key)) == 0) {
			n = sl->failures;
			break;
		}
	}
	pthread_mutex_unlock(&sh->mu);
	return n;
}

static void job_free(struct auth_job *j)
{
	mta_auth_users_unref(j->users);
	explicit_bzero(j, sizeof(*j));
	free(j);
}

static void on_job_timer_closed(uv_handle_t *h)
{
	job_free(h->data);
}

/* The verdict goes to the engine; the session goes on with its input. */
static void auth_answer(struct auth_job *j)
{
	struct session *s = j->s;

	s->auth_job = NULL;
	mta_smtpd_auth_done(&s->smtpd, j->verdict);
	if (j->timer_on)
		uv_close((uv_handle_t *)&j->timer, on_job_timer_closed);
	else
		job_free(j);
	process(s);
}

static void on_job_timer(uv_timer_t *t)
{
	auth_answer(t->data);
}

/* Thread pool: the slow part. */
static void auth_work(uv_work_t *w)
{
	struct auth_job *j = container_of(w, struct auth_job, work);

	j->result = mta_auth_verify(j->users, j->user, j->pass);
	explicit_bzero(j->pass, sizeof(j->pass));
}

/* Loop thread, after auth_work(). */
static void auth_after(uv_work_t *w, int status)
{
	struct auth_job *j = container_of(w, struct auth_job, work);
	struct session *s = j->s;
	uint64_t delay = 0;

	if (s == NULL) { /* the session is gone */
		job_free(j);
		return;
	}
	if (status != 0 || (j->result != 0 && j->result != MTA_ENOTFOUND)) {
		j->verdict = MTA_SMTPD_AUTH_TEMP;
		log_auth(s, "tempfail", 0);
	} else if (j->result == 0) {
		j->verdict = MTA_SMTPD_AUTH_OK;
		pthread_mutex_lock(&s->l->sh->mu);
		mta_auth_limit_ok(&s->l->sh->limit, s->client_key);
		pthread_mutex_unlock(&s->l->sh->mu);
		memcpy(s->auth_name, j->user, sizeof(s->auth_name));
		log_auth(s, "ok", 0);
	} else {
		j->verdict = MTA_SMTPD_AUTH_FAIL;
		pthread_mutex_lock(&s->l->sh->mu);
		delay = mta_auth_limit_fail(&s->l->sh->limit, s->client_key,
					    uv_now(s->l->loop));
		pthread_mutex_unlock(&s->l->sh->mu);
		log_auth(s, "fail", client_failures(s));
	}
	if (delay > 0 && uv_timer_init(s->l->loop, &j->timer) == 0) {
		/* the growing delay of a failure (auth.failure_delay) */
		j->timer_on = true;
		j->timer.data = j;
		uv_timer_start(&j->timer, on_job_timer, delay, 0);
		return;
	}
	auth_answer(j);
}

/* The session is freed while its job runs: the job finishes alone. */
static void auth_detach(struct session *s)
{
	struct auth_job *j = s->auth_job;

	s->auth_job = NULL;
	j->s = NULL;
	if (j->timer_on) /* the hash is done: only the delay is left */
		uv_close((uv_handle_t *)&j->timer, on_job_timer_closed);
	/* else auth_after() frees it */
}

/* The engine has credentials (EV_AUTH): check the limiter, then hash on
 * the thread pool.  e->pass is copied into the job, never logged. */
static void start_auth(struct session *s, const struct mta_smtpd_event *e)
{
	struct mta_inbound *l = s->l;
	struct auth_job *j;
	bool allowed;

	pthread_mutex_lock(&l->sh->mu);
	allowed = mta_auth_limit_check(&l->sh->limit, s->client_key,
				       uv_now(l->loop));
	pthread_mutex_unlock(&l->sh->mu);
	if (!allowed) {
		log_auth(s, "limit", client_failures(s));
		mta_smtpd_auth_done(&s->smtpd, MTA_SMTPD_AUTH_LIMIT);
		return;
	}
	j = calloc(1, sizeof(*j));
	if (j == NULL) {
		log_auth(s, "tempfail", 0);
		mta_smtpd_auth_done(&s->smtpd, MTA_SMTPD_AUTH_TEMP);
		return;
	}
	j->s = s;
	j->users = mta_auth_users_ref(s->users);
	snprintf(j->user, sizeof(j->user), "%s", e->user);
	snprintf(j->pass, sizeof(j->pass), "%s", e->pass);
	if (uv_queue_work(l->loop, &j->work, auth_work, auth_after) != 0) {
		job_free(j);
		log_auth(s, "tempfail", 0);
		mta_smtpd_auth_done(&s->smtpd, MTA_SMTPD_AUTH_TEMP);
		return;
	}
	s->auth_job = j;
}

/* A transaction is in flight: MAIL given, a message being received, or
 * its commit pending.  Shutdown lets it finish (server.shutdown_grace). */
static bool in_transaction(const struct session *s)
{
	return s->commit_pending || mta_smtpd_in_message(&s->smtpd) ||
	       mta_smtpd_sender(&s->smtpd) != NULL;
}

/* Runs the engine over buffered input until it blocks or input ends. */
static void process(struct session *s)
{
	struct mta_smtpd_event e;
	int guard = 0;

	if (s->processing || s->closing)
		return;
	s->processing = true;
	while (!s->closing && !s->commit_pending && s->auth_job == NULL) {
		const uint8_t *in;
		size_t avail = mta_stream_pending(&s->st, &in);
		size_t n = 0;
		enum mta_smtpd_ev ev;

		if (avail == 0)
			break;
		memset(&e, 0, sizeof(e));
		ev = mta_smtpd_feed(&s->smtpd, in, avail, &n, &e);
		mta_stream_consume(&s->st, n);
		switch (ev) {
		case MTA_SMTPD_EV_NONE:
			if (n == 0) {
				/* output high-water: drain and retry */
				if (!flush_engine(s) || ++guard > 2)
					goto out;
			}
			break;
		case MTA_SMTPD_EV_REJECT:
		case MTA_SMTPD_EV_ABORT:
			log_reject(s, &e);
			if (ev == MTA_SMTPD_EV_ABORT && s->body_open) {
				mta_body_free(&s->body);
				s->body_open = false;
			}
			break;
		case MTA_SMTPD_EV_DATA_START:
			start_message(s);
			break;
		case MTA_SMTPD_EV_BODY:
			if (s->body_err == 0 && s->body_open)
				s->body_err = mta_body_append(&s->body, e.data,
							      e.len);
			break;
		case MTA_SMTPD_EV_MESSAGE:
			submit_message(s);
			break;
		case MTA_SMTPD_EV_STARTTLS:
			start_tls(s, e.len);
			break;
		case MTA_SMTPD_EV_AUTH:
			start_auth(s, &e);
			break;
		case MTA_SMTPD_EV_CLOSE:
			session_close(s, "quit", true);
			goto out;
		}
		if (ev != MTA_SMTPD_EV_NONE)
			guard = 0;
		if (s->st.write_pending < MTA_INBOUND_OUTBUF_MAX)
			flush_engine(s);
	}
out:
	if (!s->closing) {
		flush_engine(s);
		if (mta_smtpd_closed(&s->smtpd))
			session_close(s, "closed", true);
	}
	if (!s->closing && s->shutdown_pending && !in_transaction(s)) {
		/* draining: the transaction in flight has ended */
		mta_smtpd_shutdown(&s->smtpd);
		session_close(s, "shutdown", true);
	}
	if (!s->closing) {
		const uint8_t *in;
		if (mta_stream_pending(&s->st, &in) >= MTA_INBOUND_INBUF_MAX)
			mta_stream_read_stop(&s->st);
	}
	s->processing = false;
	if (!s->closing)
		arm_timer(s);
	if (!s->closing && !s->st.reading && !s->commit_pending &&
	    s->auth_job == NULL) {
		const uint8_t *in;
		if (mta_stream_pending(&s->st, &in) < MTA_INBOUND_INBUF_MAX)
			session_resume(s);
	}
}

/* ---- input ----------------------------------------------------------- */

/* ops.tls_ready: the STARTTLS handshake completed. */
static void on_tls_ready(struct mta_stream *st)
{
	struct session *s = st->data;
	struct mta_logline ll;
	char desc[128];

	mta_tls_describe(&st->tls, desc, sizeof(desc));
	mta_smtpd_tls_started(&s->smtpd, desc);
	mta_log_begin(&ll, MTA_LOG_INFO, "tls");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "tls", desc);
	mta_log_end(&ll);
	if (!s->greeted) {
		/* implicit TLS (RFC 8314 3): the greeting comes over TLS */
		s->greeted = true;
		mta_smtpd_greet(&s->smtpd);
		flush_engine(s);
	}
}

/* ops.data: bytes arrived (maybe only handshake bytes). */
static void on_stream_data(struct mta_stream *st)
{
	struct session *s = st->data;

	s->got_bytes = true; /* the timer is re-armed after processing */
	if (!s->closing)
		process(s); /* arms the timer for the state it leaves */
}

/* ops.eof: the client closed or reset the connection. */
static void on_stream_eof(struct mta_stream *st, int status)
{
	session_close(st->data, status == UV_EOF ? "eof" : uv_err_name(status),
		      false);
}

/* ops.drained: output fell below half the limit. */
static void on_stream_drained(struct mta_stream *st)
{
	struct session *s = st->data;

	if (!s->closing)
		process(s);
}

static void session_resume(struct session *s)
{
	if (s->st.reading || s->closing)
		return;
	(void)mta_stream_read_start(&s->st);
}

/* ops.timeout */
static void on_timer(struct mta_stream *st)
{
	struct session *s = st->data;

	if (s->commit_pending || s->auth_job != NULL) {
		/* our own slowness (or the AUTH delay) is not the client's */
		mta_stream_timer(&s->st, 1000);
		return;
	}
	mta_smtpd_timeout(&s->smtpd);
	session_close(s, "timeout", true);
}

static const struct mta_stream_ops session_ops = {
	.data = on_stream_data,
	.tls_ready = on_tls_ready,
	.eof = on_stream_eof,
	.drained = on_stream_drained,
	.timeout = on_timer,
	.error = on_stream_error,
	.closed = on_stream_closed,
};

#define REFUSED_TIMEOUT_MS 10000u /* a refused client's time to QUIT */

/*
 * Arms the session timer for the state the engine is in now.  Called after
 * every round of processing (never before: the bytes just read may end a
 * command or a message and change which limit applies).
 *   command mode: the next command must be complete within
 *     server.command_timeout of the previous reply; bytes that do not
 *     complete a command do not extend it (a whole-command deadline, so a
 *     client trickling one byte at a time cannot hold the session).
 *   in a message: server.data_timeout of silence ends it, and so does
 *     server.message_timeout from the 354 (or first BDAT) on, however
 *     steadily the bytes arrive.
 */
static void arm_timer(struct session *s)
{
	const struct mta_config *cfg = s->cfg;
	uint64_t now = uv_now(s->l->loop), due;
	uint32_t prog = mta_smtpd_progress(&s->smtpd);

	if (mta_smtpd_in_message(&s->smtpd)) {
		if (!s->in_message) {
			s->in_message = true;
			s->msg_deadline =
				now + (uint64_t)cfg->message_timeout * 1000u;
			s->got_bytes = true;
		}
		if (s->got_bytes)
			s->idle_deadline =
				now + (uint64_t)cfg->data_timeout * 1000u;
		due = s->idle_deadline < s->msg_deadline ? s->idle_deadline
							 : s->msg_deadline;
	} else {
		if (s->in_message || prog != s->progress_seen ||
		    s->cmd_deadline == 0) {
			uint64_t ms = (uint64_t)cfg->command_timeout * 1000u;
			if (s->scfg.refused && ms > REFUSED_TIMEOUT_MS)
				ms = REFUSED_TIMEOUT_MS;
			s->cmd_deadline = now + ms;
		}
		s->in_message = false;
		due = s->cmd_deadline;
	}
	s->progress_seen = prog;
	s->got_bytes = false;
	mta_stream_timer(&s->st, due > now ? due - now : 0);
}

/* ---- accepting ------------------------------------------------------- */

/*
 * Why session s may not start, or NULL.  s is already counted.  Limits:
 * server.max_sessions in all; server.max_sessions_per_client from one
 * client (an IPv4 address or an IPv6 /64); and clients outside
 * relay_networks, who can at most reach Postmaster, share a quarter of
 * server.max_sessions, so they can never crowd out the clients the relay
 * serves.  The per-client count walks the active list: O(sessions) per
 * connection, at most server.max_sessions.  The counts are those of every
 * loop thread (struct mta_inbound_shared); the caller holds sh->mu.
 */
static const char *session_limit(struct mta_inbound *l,
				 const struct session *s)
{
	const struct mta_config *cfg = l->cfg;
	const struct mta_inbound_shared *sh = l->sh;
	size_t same = 0, untrusted_max = cfg->max_sessions / 4;

	/* sessions already refused and closing do not hold a slot: a burst
	 * of refused connections must not lock out the next good client */
	if (sh->nactive > cfg->max_sessions)
		return "too many connections";
	if (!s->trusted && sh->nuntrusted > (untrusted_max ? untrusted_max : 1))
		return "too many connections from outside the relay networks";
	for (const struct session *o = sh->active; o != NULL; o = o->anext)
		if (memcmp(o->client_key, s->client_key,
			   sizeof(s->client_key)) == 0)
			same++;
	if (same > cfg->max_sessions_per_client)
		return "too many connections from your address";
	return NULL;
}

/* s counts from now on (until it closes); why it may not start, or NULL. */
static const char *activate(struct session *s, bool untrusted)
{
	struct mta_inbound_shared *sh = s->l->sh;
	const char *why;

	pthread_mutex_lock(&sh->mu);
	s->anext = sh->active;
	if (sh->active != NULL)
		sh->active->aprev = s;
	sh->active = s;
	s->active = true;
	sh->nactive++;
	if (untrusted) {
		sh->nuntrusted++;
		s->counted_untrusted = true;
	}
	why = session_limit(s->l, s);
	pthread_mutex_unlock(&sh->mu);
	return why;
}

/* Longer than most (~125 lines) because it is the one place a session
 * comes to life: allocation, the shared limits, the peer's address and
 * the listener kind's settings, each failure unwound on the spot in
 * order; split, the unwinding would be spread over several functions. */
int mta_inbound_accept_kind(struct mta_inbound *l, uv_stream_t *server,
			    enum mta_inbound_kind kind)
{
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	struct session *s;
	struct mta_logline ll;
	int rc;

	if (l->shutting_down)
		return MTA_ECLOSED;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	rc = mta_stream_init(&s->st, l->loop, &session_ops, &l->scratch, s);
	if (rc != 0) {
		free(s); /* cannot happen on Unix; see mta_stream_init() */
		return rc;
	}
	s->l = l;
	s->cfg = l->cfg;
	s->tls = l->tls;
	s->kind = kind;
	if (kind != MTA_INBOUND_SMTP)
		s->users = mta_auth_users_ref(l->users);
	s->sid = atomic_fetch_add(&l->sh->next_sid, 1) + 1;
	s->st.write_low = MTA_INBOUND_OUTBUF_MAX / 2;
	s->next = l->sessions;
	if (l->sessions != NULL)
		l->sessions->prev = s;
	l->sessions = s;
	l->nsessions++;
	atomic_fetch_add(&l->sh->nsessions, 1);
	mta_metrics_session(l->metrics, 1);
	s->close_reason = "unknown";

	rc = mta_stream_accept(&s->st, server);
	if (rc != 0) {
		s->close_reason = "accept_failed";
		s->closing = true;
		mta_stream_close(&s->st, false);
		return rc;
	}
	memset(&ss, 0, sizeof(ss));
	uv_tcp_getpeername(&s->st.tcp, (struct sockaddr *)&ss, &sslen);
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
		uv_ip6_name(a6, s->client, sizeof(s->client));
		s->client_port = ntohs(a6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr))
			memcpy(s->client_key, &a6->sin6_addr.s6_addr[12], 4);
		else /* one client = one /64, what one host is given */
			memcpy(s->client_key + 4, &a6->sin6_addr, 8);
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
		uv_ip4_name(a4, s->client, sizeof(s->client));
		s->client_port = ntohs(a4->sin_port);
		memcpy(s->client_key, &a4->sin_addr, 4);
	}
	s->scfg.hostname = l->cfg->server_hostname;
	s->scfg.max_message_size = l->cfg->max_message_size;
	s->scfg.max_recipients = l->cfg->max_recipients;
	/* not offered once the key holder died (keyholder.h) */
	s->scfg.starttls = s->tls != NULL && mta_tls_creds_usable(s->tls) &&
			   kind != MTA_INBOUND_SUBMISSIONS;
	s->scfg.auth = s->users != NULL;
	s->scfg.relay_allowed =
		mta_config_relay_allowed(l->cfg, (struct sockaddr *)&ss);
	s->trusted = s->scfg.relay_allowed;
	/* outside relay_networks a client can only ever reach Postmaster:
	 * without server.postmaster it can reach nothing, so say so now */
	s->scfg.refused = !s->trusted && l->cfg->server_postmaster == NULL &&
			  kind == MTA_INBOUND_SMTP; /* submission: AUTH */
	s->scfg.postmaster = l->cfg->server_postmaster;
	s->scfg.client_addr = s->client;
	mta_smtpd_init(&s->smtpd, &s->scfg);

	mta_log_begin(&ll, MTA_LOG_INFO, "connect");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "client", s->client);
	mta_log_int(&ll, "port", s->client_port);
	mta_log_str(&ll, "relay", s->scfg.relay_allowed ? "yes" : "no");
	mta_log_int(&ll, "thread", l->thread);
	if (kind != MTA_INBOUND_SMTP)
		mta_log_str(&ll, "listener", kind == MTA_INBOUND_SUBMISSION
						     ? "submission"
						     : "submissions");
	mta_log_end(&ll);

	const char *why =
		activate(s, !s->trusted && kind == MTA_INBOUND_SMTP);
	if (why != NULL) {
		char msg[300];
		int n = snprintf(msg, sizeof(msg),
				 "421 4.7.0 %s Error: %s\r\n",
				 l->cfg->server_hostname, why);
		mta_log_begin(&ll, MTA_LOG_WARN, "reject");
		mta_log_int(&ll, "sid", (long long)s->sid);
		mta_log_str(&ll, "client", s->client);
		mta_log_str(&ll, "verb", "CONNECT");
		mta_log_int(&ll, "code", 421);
		mta_log_str(&ll, "dsn", "4.7.0");
		mta_log_str(&ll, "text", why);
		mta_log_end(&ll);
		(void)mta_stream_write(&s->st, msg, (size_t)n);
		session_close(s, "too_many_sessions", true);
		return 0;
	}
	if (kind == MTA_INBOUND_SUBMISSIONS) {
		/* RFC 8314 3: TLS first; on_tls_ready() greets */
		size_t dropped = 0;
		if (s->tls == NULL || !mta_tls_creds_usable(s->tls) ||
		    mta_stream_starttls_server(&s->st, s->tls, &dropped) != 0) {
			session_close(s, "tls_error", false);
			return 0;
		}
	} else {
		s->greeted = true;
		mta_smtpd_greet(&s->smtpd);
		flush_engine(s);
	}
	if (!s->closing) {
		arm_timer(s);
		session_resume(s);
	}
	return 0;
}

int mta_inbound_new(const struct mta_inbound_params *p,
		    struct mta_inbound **out)
{
	struct mta_inbound *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return -ENOMEM;
	l->loop = p->loop;
	l->cfg = p->cfg;
	l->spool = p->spool;
	l->writer = p->writer;
	l->tls = p->tls;
	l->on_queued = p->on_queued;
	l->on_queued_arg = p->on_queued_arg;
	l->metrics = p->metrics;
	l->port = p->port;
	l->thread = p->thread;
	l->sh = p->shared;
	if (l->sh == NULL) {
		int rc = mta_inbound_shared_new(p->cfg, &l->sh);
		if (rc != 0) {
			free(l);
			return rc;
		}
		l->own_sh = true;
	}
	l->users = mta_auth_users_ref(p->users);
	*out = l;
	return 0;
}

void mta_inbound_shutdown(struct mta_inbound *l, void (*done)(void *arg),
			  void *arg)
{
	struct session *s, *next;

	if (l->shutting_down)
		return;
	l->shutting_down = true;
	l->done = done;
	l->done_arg = arg;
	for (s = l->sessions; s != NULL; s = next) {
		next = s->next;
		if (s->closing)
			continue;
		if (in_transaction(s)) {
			/* finishes its transaction first (drain) */
			s->shutdown_pending = true;
			continue;
		}
		mta_smtpd_shutdown(&s->smtpd);
		session_close(s, "shutdown", true);
	}
	maybe_done(l);
}

void mta_inbound_shutdown_now(struct mta_inbound *l)
{
	struct session *s, *next;

	for (s = l->sessions; s != NULL; s = next) {
		next = s->next;
		if (s->closing)
			continue;
		if (s->commit_pending) {
			/* its reply comes with the commit, then the 421 */
			s->shutdown_pending = true;
			continue;
		}
		mta_smtpd_shutdown(&s->smtpd);
		session_close(s, "shutdown_grace_over", true);
	}
}

void mta_inbound_reconfigure(struct mta_inbound *l,
			     const struct mta_config *cfg,
			     const struct mta_tls_creds *tls)
{
	l->cfg = cfg;
	l->tls = tls;
	mta_inbound_shared_reconfigure(l->sh, cfg);
}

void mta_inbound_set_users(struct mta_inbound *l,
			   struct mta_auth_users *users)
{
	struct mta_auth_users *old = l->users;

	l->users = mta_auth_users_ref(users);
	mta_auth_users_unref(old);
}

size_t mta_inbound_nsessions(const struct mta_inbound *l)
{
	return l->nsessions;
}

void mta_inbound_free(struct mta_inbound *l)
{
	mta_auth_users_unref(l->users);
	if (l->own_sh)
		mta_inbound_shared_free(l->sh);
	free(l);
}

int mta_inbound_shared_new(const struct mta_config *cfg,
			   struct mta_inbound_shared **out)
{
	struct mta_inbound_shared *sh = calloc(1, sizeof(*sh));
	int rc;

	if (sh == NULL)
		return -ENOMEM;
	if ((rc = -pthread_mutex_init(&sh->mu, NULL)) != 0) {
		free(sh);
		return rc;
	}
	mta_auth_limit_init(&sh->limit, cfg->auth_max_failures,
			    (uint64_t)cfg->auth_failure_delay * 1000u,
			    AUTH_WINDOW_MS);
	atomic_init(&sh->nsessions, 0);
	atomic_init(&sh->next_sid, 0);
	atomic_init(&sh->qid_seq, 0);
	*out = sh;
	return 0;
}

void mta_inbound_shared_reconfigure(struct mta_inbound_shared *sh,
				    const struct mta_config *cfg)
{
	pthread_mutex_lock(&sh->mu);
	/* the failures counted so far stay */
	sh->limit.max_failures = cfg->auth_max_failures;
	sh->limit.base_delay_ms = (uint64_t)cfg->auth_failure_delay * 1000u;
	pthread_mutex_unlock(&sh->mu);
}

size_t mta_inbound_shared_nsessions(struct mta_inbound_shared *sh)
{
	return atomic_load(&sh->nsessions);
}

void mta_inbound_shared_free(struct mta_inbound_shared *sh)
{
	if (sh == NULL)
		return;
	assert(sh->active == NULL);
	pthread_mutex_destroy(&sh->mu);
	free(sh);
}
