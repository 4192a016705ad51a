/*
 * http.c - the HTTP endpoint's server side on the loop.  See http.h.
 */
#include "http.h"

#include "err.h"
#include "http_request.h"
#include "log.h"
#include "stream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct conn {
	struct conn *prev, *next;
	struct mtad_http *h;
	struct mta_stream st;
	bool answered;
};

struct mtad_http {
	uv_loop_t *loop;
	uv_tcp_t server;
	bool server_open;
	struct conn *conns;
	size_t nconns;
	bool stopping;
	void (*handle)(void *arg, const char *path, struct mtad_http_reply *r);
	void *arg;
	void (*done)(void *arg);
	void *done_arg;
	struct mta_stream_scratch scratch;
};

static void maybe_done(struct mtad_http *h)
{
	if (h->stopping && !h->server_open && h->nconns == 0 &&
	    h->done != NULL) {
		void (*done)(void *) = h->done;
		h->done = NULL;
		done(h->done_arg);
	}
}

static void on_conn_closed(struct mta_stream *st)
{
	struct conn *c = st->data;
	struct mtad_http *h = c->h;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		h->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	h->nconns--;
	free(c);
	maybe_done(h);
}

static void reply(struct conn *c, int status, const char *ctype,
		  const struct mta_buf *body)
{
	char head[256];
	int n;

	c->answered = true;
	mta_stream_read_stop(&c->st);
	n = snprintf(head, sizeof(head),
		     "HTTP/1.1 %d %s\r\n"
		     "Content-Type: %s\r\n"
		     "Content-Length: %zu\r\n"
		     "Cache-Control: no-store\r\n"
		     "Connection: close\r\n\r\n",
		     status, mta_http_reason(status), ctype,
		     body != NULL ? body->len : 0);
	if (mta_stream_write(&c->st, head, (size_t)n) == 0 && body != NULL &&
	    body->len > 0)
		(void)mta_stream_write(&c->st, body->data, body->len);
	mta_stream_close(&c->st, true);
}

static void error_reply(struct conn *c, int status)
{
	struct mta_buf b = {0};
	char line[80];
	int n = snprintf(line, sizeof(line), "%d %s\n", status,
			 mta_http_reason(status));

	if (mta_buf_append(&b, line, (size_t)n) != 0) {
		reply(c, status, "text/plain; charset=utf-8", NULL);
		return;
	}
	reply(c, status, "text/plain; charset=utf-8", &b);
	mta_buf_free(&b);
}

static void on_conn_data(struct mta_stream *st)
{
	struct conn *c = st->data;
	struct mtad_http_request_holder {
		struct mta_http_request req;
	} r;
	const uint8_t *p;
	size_t n;
	int status = 0, rc;

	if (c->answered || c->st.closing)
		return;
	n = mta_stream_pending(st, &p);
	rc = mta_http_parse(p, n, &r.req, &status);
	if (rc == 0)
		return;
	mta_stream_consume(st, n);
	if (rc < 0) {
		error_reply(c, status);
		return;
	}
	struct mtad_http_reply out = {
		.status = 500,
		.content_type = "text/plain; charset=utf-8",
	};
	c->h->handle(c->h->arg, r.req.path, &out);
	reply(c, out.status, out.content_type, &out.body);
	mta_buf_free(&out.body);
}

static void on_conn_eof(struct mta_stream *st, int status)
{
	struct conn *c = st->data;

	if (!c->answered) /* else the reply is on its way (graceful close) */
		mta_stream_close(&c->st, false);
}

static void on_conn_timeout(struct mta_stream *st)
{
	struct conn *c = st->data;

	if (!c->answered) {
		error_reply(c, 408);
		return;
	}
	mta_stream_close(&c->st, false);
}

static void on_conn_error(struct mta_stream *st, const char *reason,
			  const char *detail)
{
	/* the stream has closed itself; ops.closed frees the conn */
}

static const struct mta_stream_ops conn_ops = {
	.data = on_conn_data,
	.eof = on_conn_eof,
	.timeout = on_conn_timeout,
	.error = on_conn_error,
	.closed = on_conn_closed,
};

static void on_connection(uv_stream_t *server, int status)
{
	struct mtad_http *h = server->data;
	struct conn *c;

	if (status < 0 || h->stopping)
		return;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return;
	if (mta_stream_init(&c->st, h->loop, &conn_ops, &h->scratch, c) != 0) {
		free(c);
		return;
	}
	c->h = h;
	c->next = h->conns;
	if (h->conns != NULL)
		h->conns->prev = c;
	h->conns = c;
	h->nconns++;
	if (mta_stream_accept(&c->st, server) != 0 ||
	    h->nconns > MTAD_HTTP_CONN_MAX) {
		c->answered = true;
		mta_stream_close(&c->st, false);
		return;
	}
	mta_stream_timer(&c->st, MTAD_HTTP_TIMEOUT_MS);
	if (mta_stream_read_start(&c->st) != 0)
		mta_stream_close(&c->st, false);
}

static void on_server_closed(uv_handle_t *hd)
{
	struct mtad_http *h = hd->data;

	h->server_open = false;
	maybe_done(h);
}

static void on_failed_closed(uv_handle_t *hd)
{
	free(hd->data);
}

int mtad_http_start(const struct mtad_http_params *p, struct mtad_http **out)
{
	struct mtad_http *h = calloc(1, sizeof(*h));
	struct mta_logline ll;
	int rc;

	*out = NULL;
	if (h == NULL)
		return -ENOMEM;
	h->loop = p->loop;
	h->handle = p->handle;
	h->arg = p->arg;
	uv_tcp_init(h->loop, &h->server);
	h->server.data = h;
	h->server_open = true;
	rc = uv_tcp_bind(&h->server, (const struct sockaddr *)p->addr, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&h->server, 64, on_connection);
	if (rc != 0) {
		mta_log_begin(&ll, MTA_LOG_ERR, "http_listen_failed");
		mta_log_str(&ll, "addr", p->name);
		mta_log_str(&ll, "error", uv_strerror(rc));
		mta_log_end(&ll);
		uv_close((uv_handle_t *)&h->server, on_failed_closed);
		return rc;
	}
	mta_log_begin(&ll, MTA_LOG_INFO, "http_listen");
	mta_log_str(&ll, "addr", p->name);
	mta_log_end(&ll);
	*out = h;
	return 0;
}

void mtad_http_stop(struct mtad_http *h, void (*done)(void *arg), void *arg)
{
	h->stopping = true;
	h->done = done;
	h->done_arg = arg;
	if (!uv_is_closing((uv_handle_t *)&h->server))
		uv_close((uv_handle_t *)&h->server, on_server_closed);
	for (struct conn *c = h->conns; c != NULL; c = c->next)
		mta_stream_close(&c->st, false);
}

void mtad_http_free(struct mtad_http *h)
{
	free(h);
}
