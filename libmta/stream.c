/*
 * stream.c - TCP + TLS over memory buffers, write queue, read buffer,
 * timer and orderly close for one connection.  See stream.h.
 */
#include "stream.h"

#include "err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

struct wreq {
	uv_write_t req;
	struct mta_stream *st;
	size_t len;
	uint8_t data[];
};

static void on_handle_closed(uv_handle_t *h)
{
	struct mta_stream *st = h->data;

	if (--st->handles_open > 0)
		return;
	if (st->tls_on) {
		mta_tls_free(&st->tls);
		st->tls_on = false;
	}
	mta_buf_free(&st->in);
	st->in_off = 0;
	st->ops->closed(st);
}

static void close_handles(struct mta_stream *st)
{
	if (!uv_is_closing((uv_handle_t *)&st->tcp))
		uv_close((uv_handle_t *)&st->tcp, on_handle_closed);
	if (!uv_is_closing((uv_handle_t *)&st->timer))
		uv_close((uv_handle_t *)&st->timer, on_handle_closed);
}

static void begin_close(struct mta_stream *st)
{
	st->closing = true;
	if (st->reading) {
		uv_read_stop((uv_stream_t *)&st->tcp);
		st->reading = false;
	}
	uv_timer_stop(&st->timer);
}

/* The one error policy: a write or TLS failure closes the connection at
 * once and the owner is told why (it logs the reason with its context). */
static void fail(struct mta_stream *st, const char *reason,
		 const char *detail)
{
	if (st->closing)
		return;
	st->error = reason;
	begin_close(st);
	close_handles(st);
	if (st->ops->error != NULL)
		st->ops->error(st, reason, detail != NULL ? detail : reason);
}

static void on_write(uv_write_t *req, int status)
{
	struct wreq *w = container_of(req, struct wreq, req);
	struct mta_stream *st = w->st;

	st->write_pending -= w->len;
	free(w);
	if (st->closing)
		return; /* cancelled or written during a close */
	if (status < 0) {
		fail(st, "write_error", uv_strerror(status));
		return;
	}
	if (st->write_pending < st->write_low && st->ops->drained != NULL)
		st->ops->drained(st);
}

/* Queues n raw bytes; also used while a graceful close flushes. */
static int queue_write(struct mta_stream *st, const void *p, size_t n)
{
	struct wreq *w;
	uv_buf_t b;
	int rc;

	if (n == 0)
		return 0;
	if (uv_is_closing((uv_handle_t *)&st->tcp))
		return MTA_ECLOSED;
	w = malloc(sizeof(*w) + n);
	if (w == NULL) {
		fail(st, "out_of_memory", "cannot queue output");
		return -ENOMEM;
	}
	w->st = st;
	w->len = n;
	memcpy(w->data, p, n);
	b = uv_buf_init((char *)w->data, (unsigned)n);
	st->write_pending += n;
	rc = uv_write(&w->req, (uv_stream_t *)&st->tcp, &b, 1, on_write);
	if (rc != 0) {
		st->write_pending -= n;
		free(w);
		fail(st, "write_error", uv_strerror(rc));
		return rc;
	}
	return 0;
}

static int flush_tls(struct mta_stream *st)
{
	struct mta_buf out;
	int rc;

	mta_tls_take_output(&st->tls, &out);
	rc = queue_write(st, out.data, out.len);
	mta_buf_free(&out);
	return rc;
}

int mta_stream_write(struct mta_stream *st, const void *p, size_t n)
{
	int rc;

	if (st->closing)
		return MTA_ECLOSED;
	if (n == 0)
		return 0;
	if (!st->tls_on || !st->tls.handshake_done)
		return queue_write(st, p, n);
	rc = mta_tls_write(&st->tls, p, n);
	if (rc != 0) {
		fail(st, "tls_error",
		     st->tls.error != NULL ? st->tls.error : mta_strerror(rc));
		return rc;
	}
	return flush_tls(st);
}

/* ---- input ----------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct mta_stream *st = h->data;

	(void)hint;
	/* one buffer serves every stream of the loop: its bytes are
	 * copied out before on_read returns */
	if (st->scratch->busy) {
		*buf = uv_buf_init(NULL, 0);
		return;
	}
	st->scratch->busy = true;
	*buf = uv_buf_init(st->scratch->buf, sizeof(st->scratch->buf));
}

static void peer_ended(struct mta_stream *st, int status)
{
	if (st->reading) {
		uv_read_stop((uv_stream_t *)&st->tcp);
		st->reading = false;
	}
	st->ops->eof(st, status);
}

static int append_plain(struct mta_stream *st, const void *p, size_t n)
{
	if (st->in_off > 0) {
		size_t left = st->in.len - st->in_off;
		memmove(st->in.data, st->in.data + st->in_off, left);
		st->in.len = left;
		st->in_off = 0;
	}
	if (mta_buf_append(&st->in, p, n) != 0) {
		fail(st, "out_of_memory", "cannot buffer input");
		return -ENOMEM;
	}
	return 0;
}

static void tls_input(struct mta_stream *st, const char *p, size_t n)
{
	char plain[16384];
	bool ended = false;
	int rc;

	if (mta_tls_feed(&st->tls, p, n) != 0) {
		fail(st, "out_of_memory", "cannot buffer TLS input");
		return;
	}
	if (!st->tls.handshake_done) {
		rc = mta_tls_handshake(&st->tls);
		if (flush_tls(st) != 0)
			return;
		if (rc == MTA_EAGAIN) {
			st->ops->data(st); /* bytes arrived, no plaintext */
			return;
		}
		if (rc != 0) {
			fail(st, "tls_error", st->tls.error);
			return;
		}
		if (st->ops->tls_ready != NULL)
			st->ops->tls_ready(st);
		if (st->closing)
			return;
	}
	for (;;) {
		size_t got = 0;
		rc = mta_tls_read(&st->tls, plain, sizeof(plain), &got);
		if (rc == MTA_EAGAIN)
			break;
		if (rc == MTA_ECLOSED) {
			ended = true;
			break;
		}
		if (rc != 0) {
			fail(st, "tls_error", st->tls.error);
			return;
		}
		if (append_plain(st, plain, got) != 0)
			return;
	}
	if (flush_tls(st) != 0) /* key updates, alerts */
		return;
	st->ops->data(st);
	if (ended && !st->closing)
		peer_ended(st, UV_EOF);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct mta_stream *st = s->data;

	if (buf->base == st->scratch->buf)
		st->scratch->busy = false;
	if (nread == 0 || st->closing)
		return;
	if (nread < 0) {
		peer_ended(st, (int)nread);
		return;
	}
	if (st->tls_on) {
		tls_input(st, buf->base, (size_t)nread);
		return;
	}
	if (append_plain(st, buf->base, (size_t)nread) != 0)
		return;
	st->ops->data(st);
}

int mta_stream_read_start(struct mta_stream *st)
{
	int rc;

	if (st->closing)
		return MTA_ECLOSED;
	if (st->reading)
		return 0;
	rc = uv_read_start((uv_stream_t *)&st->tcp, on_alloc, on_read);
	if (rc == 0)
		st->reading = true;
	return rc;
}

void mta_stream_read_stop(struct mta_stream *st)
{
	if (!st->reading)
		return;
	uv_read_stop((uv_stream_t *)&st->tcp);
	st->reading = false;
}

size_t mta_stream_pending(const struct mta_stream *st, const uint8_t **p)
{
	*p = st->in.data + st->in_off;
	return st->in.len - st->in_off;
}

void mta_stream_consume(struct mta_stream *st, size_t n)
{
	size_t left = st->in.len - st->in_off;

	st->in_off += n < left ? n : left;
	if (st->in_off == st->in.len)
		st->in.len = st->in_off = 0;
}

/* ---- TLS ------------------------------------------------------------- */

int mta_stream_starttls_server(struct mta_stream *st,
			       const struct mta_tls_creds *creds,
			       size_t *discarded)
{
	int rc;

	if (st->closing)
		return MTA_ECLOSED;
	/* TLS-04: whatever followed STARTTLS in plaintext is dropped */
	*discarded = st->in.len - st->in_off;
	st->in.len = st->in_off = 0;
	rc = mta_tls_server_init(&st->tls, creds);
	if (rc != 0)
		return rc;
	st->tls_on = true;
	return 0;
}

int mta_stream_starttls_client(struct mta_stream *st,
			       const struct mta_tls_creds *creds,
			       const char *sni)
{
	int rc;

	if (st->closing)
		return MTA_ECLOSED;
	st->in.len = st->in_off = 0; /* plaintext after the 220: dropped */
	rc = mta_tls_client_init(&st->tls, creds, sni);
	if (rc != 0)
		return rc;
	st->tls_on = true;
	rc = mta_tls_handshake(&st->tls);
	if (flush_tls(st) != 0)
		return MTA_ECLOSED;
	if (rc == MTA_ETLS) {
		fail(st, "tls_error", st->tls.error);
		return rc;
	}
	return 0;
}

bool mta_stream_tls_done(const struct mta_stream *st)
{
	return st->tls_on && st->tls.handshake_done;
}

/* ---- timer, connect, life cycle ---------------------------------------- */

static void on_timer(uv_timer_t *t)
{
	struct mta_stream *st = t->data;

	if (!st->closing)
		st->ops->timeout(st);
}

void mta_stream_timer(struct mta_stream *st, uint64_t ms)
{
	if (!st->closing)
		uv_timer_start(&st->timer, on_timer, ms, 0);
}

void mta_stream_timer_stop(struct mta_stream *st)
{
	uv_timer_stop(&st->timer);
}

/* Both directions write whole SMTP turns (a pipelined group of commands,
 * a reply batch, a body ending with its dot) and then wait for the peer:
 * Nagle's algorithm would hold the last small segment of a turn until the
 * previous one is acknowledged, and with the peer's delayed ACK that costs
 * up to 40 ms per message (seen on 100 KB relays). */
static void no_nagle(struct mta_stream *st)
{
	(void)uv_tcp_nodelay(&st->tcp, 1); /* a failure costs speed only */
}

static void on_connect(uv_connect_t *req, int status)
{
	struct mta_stream *st = req->data;

	if (status == 0 && !st->closing)
		no_nagle(st);
	st->ops->connected(st, st->closing && status == 0 ? UV_ECANCELED
							 : status);
}

int mta_stream_connect(struct mta_stream *st, const struct sockaddr *sa)
{
	if (st->closing)
		return MTA_ECLOSED;
	st->creq.data = st;
	return uv_tcp_connect(&st->creq, &st->tcp, sa, on_connect);
}

int mta_stream_accept(struct mta_stream *st, uv_stream_t *server)
{
	int rc = uv_accept(server, (uv_stream_t *)&st->tcp);

	if (rc == 0)
		no_nagle(st);
	return rc;
}

int mta_stream_init(struct mta_stream *st, uv_loop_t *loop,
		    const struct mta_stream_ops *ops,
		    struct mta_stream_scratch *scratch, void *data)
{
	int rc;

	memset(st, 0, sizeof(*st));
	st->ops = ops;
	st->scratch = scratch;
	st->data = data;
	rc = uv_tcp_init(loop, &st->tcp);
	if (rc != 0)
		return rc;
	rc = uv_timer_init(loop, &st->timer);
	if (rc != 0) {
		/* closes on the next turn; nothing else refers to it */
		st->handles_open = 1;
		st->closing = true;
		st->tcp.data = st;
		uv_close((uv_handle_t *)&st->tcp, NULL);
		return rc;
	}
	st->tcp.data = st;
	st->timer.data = st;
	st->handles_open = 2;
	return 0;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	struct mta_stream *st = container_of(req, struct mta_stream, sreq);

	(void)status;
	close_handles(st);
}

void mta_stream_close(struct mta_stream *st, bool graceful)
{
	if (st->closing)
		return;
	begin_close(st);
	if (graceful) {
		if (st->tls_on && st->tls.handshake_done) {
			mta_tls_bye(&st->tls);
			if (flush_tls(st) != 0) {
				close_handles(st);
				return;
			}
		}
		if (uv_shutdown(&st->sreq, (uv_stream_t *)&st->tcp,
				on_shutdown) == 0)
			return;
	}
	close_handles(st);
}
