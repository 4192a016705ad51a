/*
 * evacuate.c - the SMTP side of "mtactl evacuate" (tool.h): a blocking
 * driver of libmta's sans-I/O client engine (smtp_client.h) over one
 * TCP connection, with opportunistic STARTTLS (mtactl.8.md says what is
 * verified and why).
 */
#include "err.h"
#include "smtp_client.h"
#include "tls.h"
#include "tool.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_S 30

struct tool_evac {
	char host[256], port[16];
	bool verify;
	struct mta_smtpc_config scfg;
	struct mta_smtpc c;
	struct mta_tls_creds *creds;
	struct mta_tls tls;
	bool tls_on;
	int fd; /* -1 = not connected */
	uint8_t in[16384]; /* plaintext not yet fed */
	size_t in_off, in_len;
	char tlsdesc[128];
};

int tool_evac_new(const char *host, const char *port, const char *helo,
		  bool verify, const char *ca_file, struct tool_evac **out,
		  char *why, size_t len)
{
	struct tool_evac *e = calloc(1, sizeof(*e));
	int rc;

	if (e == NULL)
		return -ENOMEM;
	snprintf(e->host, sizeof(e->host), "%s", host);
	snprintf(e->port, sizeof(e->port), "%s", port);
	e->verify = verify;
	e->fd = -1;
	e->scfg.helo_name = helo;
	e->scfg.tls = verify ? MTA_SMTPC_TLS_REQUIRE : MTA_SMTPC_TLS_MAY;
	rc = mta_tls_creds_client(verify ? ca_file : NULL, &e->creds, why,
				  len);
	if (rc != 0 && (verify || e->creds == NULL)) {
		if (e->creds != NULL)
			mta_tls_creds_free(e->creds);
		free(e);
		return rc;
	}
	*out = e;
	return 0;
}

static void drop(struct tool_evac *e)
{
	if (e->fd >= 0)
		close(e->fd);
	e->fd = -1;
	if (e->tls_on)
		mta_tls_free(&e->tls);
	e->tls_on = false;
	e->in_off = e->in_len = 0;
	mta_smtpc_free(&e->c);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Writes plaintext (through TLS when on); -1 on a write error. */
static int put(struct tool_evac *e, const uint8_t *p, size_t n)
{
	struct mta_buf b = {0};
	int rc;

	if (!e->tls_on)
		return write_all(e->fd, p, n);
	if (mta_tls_write(&e->tls, p, n) != 0)
		return -1;
	mta_tls_take_output(&e->tls, &b);
	rc = write_all(e->fd, b.data, b.len);
	mta_buf_free(&b);
	return rc;
}

static int flush_out(struct tool_evac *e)
{
	const uint8_t *p;
	size_t n;

	while ((n = mta_smtpc_output(&e->c, &p)) > 0) {
		if (put(e, p, n) != 0)
			return -1;
		mta_smtpc_output_consume(&e->c, n);
	}
	return 0;
}

/* Waits for ciphertext; >0 bytes read, 0 EOF, -1 error, -2 timeout. */
static ssize_t read_raw(struct tool_evac *e, void *buf, size_t n,
			unsigned ms)
{
	struct pollfd pfd = {.fd = e->fd, .events = POLLIN};
	int r;

	do
		r = poll(&pfd, 1, ms ? (int)ms : -1);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return -2;
	if (r < 0)
		return -1;
	ssize_t got;
	do
		got = recv(e->fd, buf, n, 0);
	while (got < 0 && errno == EINTR);
	return got;
}

/* Fills e->in with more plaintext, or tells the engine why not. */
static void read_more(struct tool_evac *e)
{
	uint8_t raw[16384];

	e->in_off = e->in_len = 0;
	for (;;) {
		if (e->tls_on) {
			size_t got = 0;
			int rc = mta_tls_read(&e->tls, e->in, sizeof(e->in),
					      &got);
			if (rc == 0 && got > 0) {
				e->in_len = got;
				return;
			}
			if (rc != MTA_EAGAIN) {
				mta_smtpc_eof(&e->c);
				return;
			}
		}
		ssize_t n = read_raw(e, e->tls_on ? raw : e->in,
				     e->tls_on ? sizeof(raw) : sizeof(e->in),
				     mta_smtpc_timeout_ms(&e->c));
		if (n == -2) {
			mta_smtpc_timeout(&e->c);
			return;
		}
		if (n <= 0) {
			mta_smtpc_eof(&e->c);
			return;
		}
		if (!e->tls_on) {
			e->in_len = (size_t)n;
			return;
		}
		if (mta_tls_feed(&e->tls, raw, (size_t)n) != 0) {
			mta_smtpc_abort(&e->c, "4.3.0", "out of memory");
			return;
		}
	}
}

/* After the 220 to STARTTLS: handshake, the optional check, then the
 * engine's EHLO; a failure is the engine's FAIL. */
static void start_tls(struct tool_evac *e)
{
	char why[600];
	uint8_t raw[16384];
	struct mta_buf b = {0};
	int rc;

	e->in_off = e->in_len = 0;
	if (flush_out(e) != 0 ||
	    mta_tls_client_init(&e->tls, e->creds, e->host) != 0) {
		mta_smtpc_abort(&e->c, "4.7.5", "TLS session setup failed");
		return;
	}
	e->tls_on = true;
	for (;;) {
		rc = mta_tls_handshake(&e->tls);
		mta_tls_take_output(&e->tls, &b);
		if (b.len > 0 && write_all(e->fd, b.data, b.len) != 0)
			rc = MTA_ETLS;
		mta_buf_free(&b);
		if (rc != MTA_EAGAIN)
			break;
		ssize_t n = read_raw(e, raw, sizeof(raw), 60000);
		if (n <= 0 || mta_tls_feed(&e->tls, raw, (size_t)n) != 0) {
			rc = MTA_ETLS;
			e->tls.error = "connection lost during the handshake";
			break;
		}
	}
	if (rc != 0) {
		snprintf(why, sizeof(why), "TLS handshake failed: %s",
			 e->tls.error ? e->tls.error : "?");
		mta_smtpc_abort(&e->c, "4.7.5", why);
		return;
	}
	if (e->verify) {
		char vwhy[250];
		if (mta_tls_verify_webpki(&e->tls, e->host, NULL, vwhy,
					  sizeof(vwhy)) != 0) {
			snprintf(why, sizeof(why),
				 "certificate of %s not accepted: %s", e->host,
				 vwhy);
			mta_smtpc_abort(&e->c, "4.7.5", why);
			return;
		}
	}
	mta_tls_describe(&e->tls, e->tlsdesc, sizeof(e->tlsdesc));
	(void)mta_smtpc_tls_started(&e->c);
}

/* The next event the driver must act on (never NONE). */
static enum mta_smtpc_ev next(struct tool_evac *e, struct mta_smtpc_event *ev)
{
	for (;;) {
		size_t n = 0;
		enum mta_smtpc_ev t = mta_smtpc_feed(
			&e->c, e->in + e->in_off, e->in_len - e->in_off, &n,
			ev);
		e->in_off += n;
		if (t == MTA_SMTPC_EV_STARTTLS) {
			start_tls(e);
			continue;
		}
		if (t != MTA_SMTPC_EV_NONE)
			return t;
		if (flush_out(e) != 0) {
			mta_smtpc_eof(&e->c);
			continue;
		}
		if (e->in_off < e->in_len)
			continue; /* output was full */
		if (mta_smtpc_closed(&e->c)) {
			/* FAIL/CLOSED are pending and come next */
			continue;
		}
		read_more(e);
	}
}

static int connect_to(struct tool_evac *e, char *why, size_t len)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV};
	struct addrinfo *res, *ai;
	struct timeval tv = {.tv_sec = CONNECT_TIMEOUT_S};
	int rc, fd = -1, err = 0;

	rc = getaddrinfo(e->host, e->port, &hints, &res);
	if (rc != 0) {
		snprintf(why, len, "%s: %s", e->host, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		/* bounds connect() and every write */
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		snprintf(why, len, "connect to %s port %s: %s", e->host,
			 e->port, strerror(err));
		return -1;
	}
	tv.tv_sec = 300;
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	e->fd = fd;
	return 0;
}

/* Connects and runs the engine to READY; 0, or -1 with why. */
static int open_session(struct tool_evac *e, char *why, size_t len)
{
	struct mta_smtpc_event ev;
	enum mta_smtpc_ev t;

	if (connect_to(e, why, len) != 0)
		return -1;
	if (mta_smtpc_init(&e->c, &e->scfg) != 0) {
		snprintf(why, len, "server.hostname is not usable in EHLO");
		close(e->fd);
		e->fd = -1;
		return -1;
	}
	e->tlsdesc[0] = '\0';
	t = next(e, &ev);
	if (t == MTA_SMTPC_EV_READY)
		return 0;
	if (t == MTA_SMTPC_EV_FAIL)
		snprintf(why, len, "%s port %s, at %s: %d %s %s", e->host,
			 e->port, ev.stage, ev.code, ev.status, ev.text);
	else
		snprintf(why, len, "%s:%s: unexpected engine event", e->host,
			 e->port);
	drop(e);
	return -1;
}

const char *tool_evac_tls(const struct tool_evac *e)
{
	return e->tlsdesc[0] ? e->tlsdesc : "none";
}

/* Over 100 lines: drives one SMTP transaction through the client engine
 * in a blocking loop; the body buffer and the recipient index are shared
 * by every step and released at one exit. */
int tool_evac_send(struct tool_evac *e, struct mta_spool *sp,
		   const char *qid, const struct mta_envelope *env, char *why,
		   size_t len)
{
	struct mta_smtpc_event ev;
	struct mta_smtpc_txn txn;
	size_t *idx, n = 0;
	uint8_t buf[16384];
	size_t boff = 0, blen = 0;
	uint64_t off = 0;
	bool bad = false, body_done = false;
	int rc;

	why[0] = '\0';
	idx = calloc(env->nrcpt + 1, sizeof(*idx));
	if (idx == NULL) {
		snprintf(why, len, "out of memory");
		return 1;
	}
	for (size_t i = 0; i < env->nrcpt; i++)
		if (env->rcpts[i].state == MTA_RCPT_QUEUED ||
		    env->rcpts[i].state == MTA_RCPT_DEFERRED)
			idx[n++] = i;
	if (n == 0) {
		free(idx);
		return 0; /* nothing pending: nothing to hand on */
	}
	if (n > MTA_SMTPC_MAX_RCPT) {
		free(idx);
		snprintf(why, len, "more than %d pending recipients",
			 MTA_SMTPC_MAX_RCPT);
		return 1;
	}
	if (e->fd < 0 && open_session(e, why, len) != 0) {
		free(idx);
		return 2;
	}
	txn = (struct mta_smtpc_txn){
		.env = env, .rcpts = idx, .nrcpt = n, .size = env->size};
	rc = mta_smtpc_start_txn(&e->c, &txn);
	if (rc != 0) {
		free(idx);
		snprintf(why, len, "cannot start the transaction: %s",
			 mta_strerror(rc));
		return 1;
	}
	for (;;) {
		enum mta_smtpc_ev t = next(e, &ev);
		if (t == MTA_SMTPC_EV_NEED_BODY) {
			while (!body_done) {
				if (flush_out(e) != 0) {
					mta_smtpc_eof(&e->c);
					break;
				}
				if (!mta_smtpc_wants_body(&e->c))
					break;
				if (boff == blen) {
					size_t got = 0;
					rc = mta_spool_read_body(sp, qid, off,
								 buf,
								 sizeof(buf),
								 &got);
					if (rc != 0) {
						mta_smtpc_abort(
							&e->c, "4.3.0",
							"cannot read the "
							"body from the "
							"spool");
						break;
					}
					boff = 0;
					blen = got;
					off += got;
				}
				bool last = off >= env->size;
				size_t k = mta_smtpc_body(&e->c, buf + boff,
							  blen - boff, last);
				boff += k;
				if (last && boff == blen)
					body_done = true;
			}
			continue;
		}
		if (t == MTA_SMTPC_EV_RCPT_RESULT) {
			if (ev.status[0] != '2' && !bad) {
				bad = true;
				snprintf(why, len, "<%s>: %d %s %s",
					 env->rcpts[idx[ev.index]].addr,
					 ev.code, ev.status, ev.text);
			}
			continue;
		}
		if (t == MTA_SMTPC_EV_TXN_DONE)
			continue;
		if (t == MTA_SMTPC_EV_READY)
			break;
		if (t == MTA_SMTPC_EV_FAIL) {
			if (!bad)
				snprintf(why, len, "at %s: %d %s %s", ev.stage,
					 ev.code, ev.status, ev.text);
			bad = true;
			continue;
		}
		if (t == MTA_SMTPC_EV_CLOSED) {
			(void)flush_out(e);
			drop(e);
			break;
		}
	}
	free(idx);
	return bad ? 1 : 0;
}

void tool_evac_free(struct tool_evac *e)
{
	struct mta_smtpc_event ev;

	if (e == NULL)
		return;
	if (e->fd >= 0 && mta_smtpc_quit(&e->c) == 0) {
		while (next(e, &ev) != MTA_SMTPC_EV_CLOSED)
			;
		(void)flush_out(e);
	}
	if (e->fd >= 0)
		drop(e);
	mta_tls_creds_free(e->creds);
	free(e);
}
