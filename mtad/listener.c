#include "listener.h"

#include "err.h"
#include "log.h"
#include "smtp_server.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

struct session {
	struct session *prev, *next;
	struct mtad_listener *l;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_shutdown_t shutdown_req;
	int handles_open;
	uint64_t sid;
	char client[INET6_ADDRSTRLEN];
	int client_port;
	uint8_t client_key[16]; /* IPv4 address, or IPv6 /64 prefix */
	bool trusted;		/* inside relay_networks */
	bool counted_untrusted; /* in l->nuntrusted (until closing) */
	/* deadlines, uv_now() milliseconds (arm_timer()) */
	uint32_t progress_seen;
	bool in_message;
	bool got_bytes; /* input arrived since the last arm_timer() */
	uint64_t cmd_deadline, idle_deadline, msg_deadline;
	struct mta_smtpd_config scfg;
	struct mta_smtpd smtpd;
	struct mta_buf inbuf;
	size_t in_off;
	bool tls_on;
	struct mta_tls tls;
	bool body_open;
	int body_err;
	struct mta_body body;
	struct mta_envelope env;
	struct mta_commit commit;
	char qid[MTA_QID_LEN + 1];
	bool commit_pending;
	size_t write_pending;
	bool reading;
	bool closing;
	bool shutdown_pending; /* daemon shutdown after the pending commit */
	bool processing;
	unsigned nmsgs;
	const char *close_reason;
};

struct mtad_listener {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	const struct mta_tls_creds *tls;
	void (*on_queued)(void *arg);
	void *on_queued_arg;
	uv_tcp_t servers[MTA_CONFIG_MAX_LISTEN];
	size_t nservers_open;
	struct session *sessions;
	size_t nsessions;
	size_t nuntrusted; /* sessions from outside relay_networks */
	size_t nclosing;   /* sessions closing, freed in a moment */
	uint64_t next_sid;
	uint32_t qid_seq;
	bool shutting_down;
	void (*done)(void *arg);
	void *done_arg;
	char readbuf[64 * 1024];
	bool readbuf_busy;
};

struct wreq {
	uv_write_t req;
	struct session *s;
	size_t len;
	uint8_t data[];
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

static void maybe_done(struct mtad_listener *l)
{
	if (l->shutting_down && l->nsessions == 0 && l->nservers_open == 0 &&
	    l->done != NULL) {
		void (*done)(void *) = l->done;
		l->done = NULL;
		done(l->done_arg);
	}
}

/* ---- output ---------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
	struct wreq *w = container_of(req, struct wreq, req);
	struct session *s = w->s;

	s->write_pending -= w->len;
	free(w);
	if (status < 0) {
		if (!s->closing)
			session_close(s, "write_error", false);
		return;
	}
	if (!s->closing && s->write_pending < MTAD_OUTBUF_MAX / 2)
		process(s);
}

static void session_write(struct session *s, const void *p, size_t n)
{
	struct wreq *w;
	uv_buf_t b;

	if (n == 0 || uv_is_closing((uv_handle_t *)&s->tcp))
		return;
	w = malloc(sizeof(*w) + n);
	if (w == NULL) {
		session_close(s, "out_of_memory", false);
		return;
	}
	w->s = s;
	w->len = n;
	memcpy(w->data, p, n);
	b = uv_buf_init((char *)w->data, (unsigned)n);
	s->write_pending += n;
	if (uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, on_write) != 0) {
		s->write_pending -= n;
		free(w);
		session_close(s, "write_error", false);
	}
}

static void flush_tls(struct session *s)
{
	struct mta_buf out;

	mta_tls_take_output(&s->tls, &out);
	session_write(s, out.data, out.len);
	mta_buf_free(&out);
}

/* Moves engine replies to the socket; false if output is backed up. */
static bool flush_engine(struct session *s)
{
	const uint8_t *p;
	size_t n = mta_smtpd_output(&s->smtpd, &p);

	if (n == 0)
		return true;
	if (s->write_pending >= MTAD_OUTBUF_MAX)
		return false;
	if (s->tls_on) {
		if (mta_tls_write(&s->tls, p, n) != 0) {
			session_close(s, "tls_error", false);
			return false;
		}
		flush_tls(s);
	} else {
		session_write(s, p, n);
	}
	mta_smtpd_output_consume(&s->smtpd, n);
	return true;
}

/* ---- closing --------------------------------------------------------- */

static void session_free(struct session *s)
{
	struct mtad_listener *l = s->l;
	struct mta_logline ll;

	mta_log_begin(&ll, MTA_LOG_INFO, "disconnect");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "client", s->client);
	mta_log_str(&ll, "reason", s->close_reason);
	mta_log_int(&ll, "messages", s->nmsgs);
	mta_log_end(&ll);

	mta_smtpd_free(&s->smtpd);
	if (s->tls_on)
		mta_tls_free(&s->tls);
	if (s->body_open)
		mta_body_free(&s->body);
	mta_envelope_free(&s->env);
	mta_buf_free(&s->inbuf);
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		l->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	l->nsessions--;
	if (s->counted_untrusted)
		l->nuntrusted--;
	if (s->closing)
		l->nclosing--;
	free(s);
	maybe_done(l);
}

static void on_handle_closed(uv_handle_t *h)
{
	struct session *s = h->data;

	if (--s->handles_open > 0)
		return;
	if (s->commit_pending)
		return; /* freed by the commit callback */
	session_free(s);
}

static void close_handles(struct session *s)
{
	if (!uv_is_closing((uv_handle_t *)&s->tcp))
		uv_close((uv_handle_t *)&s->tcp, on_handle_closed);
	if (!uv_is_closing((uv_handle_t *)&s->timer))
		uv_close((uv_handle_t *)&s->timer, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	struct session *s = container_of(req, struct session, shutdown_req);

	(void)status;
	close_handles(s);
}

static void session_close(struct session *s, const char *reason,
			  bool graceful)
{
	if (s->closing)
		return;
	s->closing = true;
	s->l->nclosing++;
	if (s->counted_untrusted) {
		s->l->nuntrusted--;
		s->counted_untrusted = false;
	}
	s->close_reason = reason;
	uv_read_stop((uv_stream_t *)&s->tcp);
	uv_timer_stop(&s->timer);
	if (graceful) {
		flush_engine(s);
		if (s->tls_on && s->tls.handshake_done) {
			mta_tls_bye(&s->tls);
			flush_tls(s);
		}
		if (uv_shutdown(&s->shutdown_req, (uv_stream_t *)&s->tcp,
				on_shutdown) == 0)
			return;
	}
	close_handles(s);
}

/* ---- messages -------------------------------------------------------- */

static void log_reject(struct session *s, const struct mta_smtpd_event *e)
{
	struct mta_logline ll;
	const char *t = e->text != NULL ? e->text : "";
	size_t tl = strlen(t);

	mta_log_begin(&ll, MTA_LOG_INFO, "reject");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "client", s->client);
	mta_log_str(&ll, "verb", e->verb);
	mta_log_int(&ll, "code", e->code);
	/* "550 5.6.0 text": the enhanced code is the second word */
	if (tl > 4 && (t[4] == '2' || t[4] == '4' || t[4] == '5') &&
	    t[5] == '.') {
		size_t n = strcspn(t + 4, " ");
		mta_log_strn(&ll, "dsn", t + 4, n);
	}
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
		mta_log_end(&ll);
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

	if (s->handles_open == 0) { /* connection already gone */
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
	struct mtad_listener *l = s->l;
	char rec[2048];
	int n;

	mta_qid_make(s->qid, now_us(), ++l->qid_seq);
	if (s->body_open)
		mta_body_free(&s->body);
	mta_body_init(&s->body, mta_spool_tmpdir(l->spool), MTAD_BODY_SPILL);
	s->body_open = true;
	s->body_err = 0;
	n = mta_smtpd_received(&s->smtpd, s->qid, time(NULL), rec,
			       sizeof(rec));
	if (n > 0)
		s->body_err = mta_body_append(&s->body, rec, (size_t)n);
}

static void submit_message(struct session *s)
{
	struct mtad_listener *l = s->l;
	char desc[128];

	mta_envelope_free(&s->env);
	if (!s->trusted) {
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
	if (s->tls_on && s->tls.handshake_done) {
		mta_tls_describe(&s->tls, desc, sizeof(desc));
		(void)mta_envelope_set_str(&s->env.tls, desc);
	}
	s->env.arrival_us = (int64_t)now_us();
	s->env.size = s->body.len;
	s->commit_pending = true;
	mta_writer_submit_new(l->writer, &s->commit, s->qid, &s->env, &s->body,
			      on_commit_done);
}

static void start_tls(struct session *s, size_t discarded)
{
	struct mta_logline ll;

	/* TLS-04: whatever followed STARTTLS in plaintext is dropped. */
	discarded += s->inbuf.len - s->in_off;
	s->inbuf.len = s->in_off = 0;
	flush_engine(s);
	mta_log_begin(&ll, MTA_LOG_INFO, "starttls");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_int(&ll, "discarded", (long long)discarded);
	mta_log_end(&ll);
	if (mta_tls_server_init(&s->tls, s->l->tls) != 0) {
		session_close(s, "tls_error", false);
		return;
	}
	s->tls_on = true;
}

/* Runs the engine over buffered input until it blocks or input ends. */
static void process(struct session *s)
{
	struct mta_smtpd_event e;
	int guard = 0;

	if (s->processing || s->closing)
		return;
	s->processing = true;
	while (!s->closing && !s->commit_pending) {
		size_t avail = s->inbuf.len - s->in_off;
		size_t n = 0;
		enum mta_smtpd_ev ev;

		if (avail == 0)
			break;
		memset(&e, 0, sizeof(e));
		ev = mta_smtpd_feed(&s->smtpd, s->inbuf.data + s->in_off,
				    avail, &n, &e);
		s->in_off += n;
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
		case MTA_SMTPD_EV_CLOSE:
			session_close(s, "quit", true);
			goto out;
		}
		if (ev != MTA_SMTPD_EV_NONE)
			guard = 0;
		if (s->write_pending < MTAD_OUTBUF_MAX)
			flush_engine(s);
	}
out:
	if (!s->closing) {
		flush_engine(s);
		if (mta_smtpd_closed(&s->smtpd))
			session_close(s, "closed", true);
	}
	if (!s->closing) {
		size_t left = s->inbuf.len - s->in_off;
		if (s->in_off > 0) {
			memmove(s->inbuf.data, s->inbuf.data + s->in_off, left);
			s->inbuf.len = left;
			s->in_off = 0;
		}
		if (left >= MTAD_INBUF_MAX && s->reading) {
			uv_read_stop((uv_stream_t *)&s->tcp);
			s->reading = false;
		}
	}
	s->processing = false;
	if (!s->closing)
		arm_timer(s);
	if (!s->closing && !s->reading && !s->commit_pending &&
	    s->inbuf.len < MTAD_INBUF_MAX)
		session_resume(s);
}

/* ---- input ----------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct session *s = h->data;
	struct mtad_listener *l = s->l;

	(void)hint;
	/* single loop thread: one read buffer serves every session, its
	 * bytes are copied out before on_read returns */
	if (l->readbuf_busy) {
		*buf = uv_buf_init(NULL, 0);
		return;
	}
	l->readbuf_busy = true;
	*buf = uv_buf_init(l->readbuf, sizeof(l->readbuf));
}

static void tls_input(struct session *s, const char *p, size_t n)
{
	char plain[16384];
	struct mta_logline ll;
	int rc;

	if (mta_tls_feed(&s->tls, p, n) != 0) {
		session_close(s, "out_of_memory", false);
		return;
	}
	if (!s->tls.handshake_done) {
		rc = mta_tls_handshake(&s->tls);
		flush_tls(s);
		if (rc == MTA_EAGAIN)
			return;
		if (rc != 0) {
			mta_log_begin(&ll, MTA_LOG_INFO, "tls_error");
			mta_log_int(&ll, "sid", (long long)s->sid);
			mta_log_str(&ll, "client", s->client);
			mta_log_str(&ll, "error", s->tls.error);
			mta_log_end(&ll);
			session_close(s, "tls_error", false);
			return;
		}
		char desc[128];
		mta_tls_describe(&s->tls, desc, sizeof(desc));
		mta_smtpd_tls_started(&s->smtpd, desc);
		mta_log_begin(&ll, MTA_LOG_INFO, "tls");
		mta_log_int(&ll, "sid", (long long)s->sid);
		mta_log_str(&ll, "tls", desc);
		mta_log_end(&ll);
	}
	for (;;) {
		size_t got = 0;
		rc = mta_tls_read(&s->tls, plain, sizeof(plain), &got);
		if (rc == MTA_EAGAIN)
			break;
		if (rc == MTA_ECLOSED) {
			session_close(s, "eof", false);
			return;
		}
		if (rc != 0) {
			session_close(s, "tls_error", false);
			return;
		}
		if (mta_buf_append(&s->inbuf, plain, got) != 0) {
			session_close(s, "out_of_memory", false);
			return;
		}
	}
	flush_tls(s); /* key updates, alerts */
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct session *s = st->data;
	struct mtad_listener *l = s->l;

	if (buf->base == l->readbuf)
		l->readbuf_busy = false;
	if (nread == 0)
		return;
	if (nread < 0) {
		session_close(s, nread == UV_EOF ? "eof" : uv_err_name((int)nread),
			      false);
		return;
	}
	s->got_bytes = true; /* the timer is re-armed after processing */
	if (s->tls_on) {
		tls_input(s, buf->base, (size_t)nread);
	} else if (mta_buf_append(&s->inbuf, buf->base, (size_t)nread) != 0) {
		session_close(s, "out_of_memory", false);
		return;
	}
	if (!s->closing)
		process(s); /* arms the timer for the state it leaves */
}

static void session_resume(struct session *s)
{
	if (s->reading || s->closing)
		return;
	if (uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read) == 0)
		s->reading = true;
}

static void on_timer(uv_timer_t *t)
{
	struct session *s = t->data;

	if (s->commit_pending) { /* our own slowness is not the client's */
		uv_timer_start(&s->timer, on_timer, 1000, 0);
		return;
	}
	mta_smtpd_timeout(&s->smtpd);
	session_close(s, "timeout", true);
}

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
	const struct mta_config *cfg = s->l->cfg;
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
	uv_timer_start(&s->timer, on_timer, due > now ? due - now : 0, 0);
}

/* ---- accepting ------------------------------------------------------- */

/*
 * Why session s may not start, or NULL.  s is already counted.  Limits:
 * server.max_sessions in all; server.max_sessions_per_client from one
 * client (an IPv4 address or an IPv6 /64); and clients outside
 * relay_networks, who can at most reach Postmaster, share a quarter of
 * server.max_sessions, so they can never crowd out the clients the relay
 * serves.  The per-client count walks the session list: O(sessions) per
 * connection, at most server.max_sessions.
 */
static const char *session_limit(struct mtad_listener *l,
				 const struct session *s)
{
	const struct mta_config *cfg = l->cfg;
	size_t same = 0, untrusted_max = cfg->max_sessions / 4;

	/* sessions already refused and closing do not hold a slot: a burst
	 * of refused connections must not lock out the next good client */
	if (l->nsessions - l->nclosing > cfg->max_sessions)
		return "too many connections";
	if (!s->trusted && l->nuntrusted > (untrusted_max ? untrusted_max : 1))
		return "too many connections from outside the relay networks";
	for (const struct session *o = l->sessions; o != NULL; o = o->next)
		if (!o->closing &&
		    memcmp(o->client_key, s->client_key,
			   sizeof(s->client_key)) == 0)
			same++;
	if (same > cfg->max_sessions_per_client)
		return "too many connections from your address";
	return NULL;
}

static void on_connection(uv_stream_t *server, int status)
{
	struct mtad_listener *l = server->data;
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	struct session *s;
	struct mta_logline ll;

	if (status < 0 || l->shutting_down)
		return;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return;
	s->l = l;
	s->sid = ++l->next_sid;
	uv_tcp_init(l->loop, &s->tcp);
	uv_timer_init(l->loop, &s->timer);
	s->tcp.data = s;
	s->timer.data = s;
	s->handles_open = 2;
	s->next = l->sessions;
	if (l->sessions != NULL)
		l->sessions->prev = s;
	l->sessions = s;
	l->nsessions++;
	s->close_reason = "unknown";

	if (uv_accept(server, (uv_stream_t *)&s->tcp) != 0) {
		s->close_reason = "accept_failed";
		s->closing = true;
		l->nclosing++;
		close_handles(s);
		return;
	}
	uv_tcp_nodelay(&s->tcp, 1);
	memset(&ss, 0, sizeof(ss));
	uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &sslen);
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
	s->scfg.starttls = l->tls != NULL;
	s->scfg.relay_allowed =
		mta_config_relay_allowed(l->cfg, (struct sockaddr *)&ss);
	s->trusted = s->scfg.relay_allowed;
	if (!s->trusted) {
		l->nuntrusted++;
		s->counted_untrusted = true;
	}
	/* outside relay_networks a client can only ever reach Postmaster:
	 * without server.postmaster it can reach nothing, so say so now */
	s->scfg.refused = !s->trusted && l->cfg->server_postmaster == NULL;
	s->scfg.postmaster = l->cfg->server_postmaster;
	s->scfg.client_addr = s->client;
	mta_smtpd_init(&s->smtpd, &s->scfg);

	mta_log_begin(&ll, MTA_LOG_INFO, "connect");
	mta_log_int(&ll, "sid", (long long)s->sid);
	mta_log_str(&ll, "client", s->client);
	mta_log_int(&ll, "port", s->client_port);
	mta_log_str(&ll, "relay", s->scfg.relay_allowed ? "yes" : "no");
	mta_log_end(&ll);

	const char *why = session_limit(l, s);
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
		session_write(s, msg, (size_t)n);
		session_close(s, "too_many_sessions", true);
		return;
	}
	mta_smtpd_greet(&s->smtpd);
	flush_engine(s);
	arm_timer(s);
	session_resume(s);
}

static void on_server_closed(uv_handle_t *h)
{
	struct mtad_listener *l = h->data;

	l->nservers_open--;
	maybe_done(l);
}

static void format_addr(const struct sockaddr_storage *ss, char *buf,
			size_t n)
{
	char ip[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)ss;
		uv_ip6_name(a, ip, sizeof(ip));
		snprintf(buf, n, "[%s]:%u", ip, ntohs(a->sin6_port));
	} else {
		const struct sockaddr_in *a = (const void *)ss;
		uv_ip4_name(a, ip, sizeof(ip));
		snprintf(buf, n, "%s:%u", ip, ntohs(a->sin_port));
	}
}

int mtad_listener_start(const struct mtad_listener_params *p,
			struct mtad_listener **out)
{
	struct mtad_listener *l = calloc(1, sizeof(*l));
	struct mta_logline ll;
	char addr[80];
	int rc = 0;

	if (l == NULL)
		return -ENOMEM;
	l->loop = p->loop;
	l->cfg = p->cfg;
	l->spool = p->spool;
	l->writer = p->writer;
	l->tls = p->tls;
	l->on_queued = p->on_queued;
	l->on_queued_arg = p->on_queued_arg;
	for (size_t i = 0; i < p->cfg->nlisten; i++) {
		uv_tcp_t *t = &l->servers[i];
		const struct sockaddr *sa =
			(const struct sockaddr *)&p->cfg->listen[i];

		format_addr(&p->cfg->listen[i], addr, sizeof(addr));
		uv_tcp_init(l->loop, t);
		t->data = l;
		l->nservers_open++;
		rc = uv_tcp_bind(t, sa, 0);
		if (rc == 0)
			rc = uv_listen((uv_stream_t *)t, 511, on_connection);
		if (rc != 0) {
			mta_log_begin(&ll, MTA_LOG_ERR, "listen_failed");
			mta_log_str(&ll, "addr", addr);
			mta_log_str(&ll, "error", uv_strerror(rc));
			mta_log_end(&ll);
			break;
		}
		mta_log_begin(&ll, MTA_LOG_INFO, "listen");
		mta_log_str(&ll, "addr", addr);
		mta_log_end(&ll);
	}
	*out = l; /* even on failure: the caller shuts it down */
	return rc; /* libuv codes are -errno on Unix */
}

void mtad_listener_shutdown(struct mtad_listener *l, void (*done)(void *arg),
			    void *arg)
{
	struct session *s, *next;

	if (l->shutting_down)
		return;
	l->shutting_down = true;
	l->done = done;
	l->done_arg = arg;
	for (size_t i = 0; i < MTA_CONFIG_MAX_LISTEN; i++) {
		uv_handle_t *h = (uv_handle_t *)&l->servers[i];
		if (h->loop != NULL && !uv_is_closing(h))
			uv_close(h, on_server_closed);
	}
	for (s = l->sessions; s != NULL; s = next) {
		next = s->next;
		if (s->closing)
			continue;
		if (s->commit_pending) {
			s->shutdown_pending = true;
			continue;
		}
		mta_smtpd_shutdown(&s->smtpd);
		session_close(s, "shutdown", true);
	}
	maybe_done(l);
}

void mtad_listener_free(struct mtad_listener *l)
{
	free(l);
}
