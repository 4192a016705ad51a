/*
 * http.h - mtad's HTTP endpoint (http.listen): a small HTTP/1.1 server on
 * the loop for /healthz, /readyz and /metrics.
 *
 * DESCRIPTION
 *	mtad_http_start() binds p->addr and serves one GET per connection
 *	(the reply says "Connection: close"): the request head is parsed by
 *	libmta/http_request.h, the reply is made by p->handle(p->arg, path, reply),
 *	which sets reply->status, reply->content_type and appends the body
 *	to reply->body.  Refused requests get the parser's status with a
 *	one-line text body.  A connection has MTAD_HTTP_TIMEOUT_MS to send
 *	its head; at most MTAD_HTTP_CONN_MAX connections are open, more are
 *	closed at once.
 *
 *	mtad_http_stop() closes the listening socket and every connection;
 *	done(arg) is called once they are all closed (never from inside the
 *	call).  Then mtad_http_free().
 *
 * THREADS
 *	Loop thread only.
 *
 * OWNERSHIP
 *	p->addr is copied; handle and arg are borrowed until done ran.
 *
 * SECURITY
 *	Requests are untrusted; the endpoint changes nothing (GET only) and
 *	reveals counters and queue figures, no addresses or message data.
 *	Bind it to loopback or a cluster-internal address.
 */
#ifndef MTAD_HTTP_H
#define MTAD_HTTP_H

#include "envelope.h" /* struct mta_buf */

#include <uv.h>

#define MTAD_HTTP_TIMEOUT_MS 10000
#define MTAD_HTTP_CONN_MAX 64

struct mtad_http;

struct mtad_http_reply {
	int status;
	const char *content_type;
	struct mta_buf body;
};

struct mtad_http_params {
	uv_loop_t *loop;
	const struct sockaddr_storage *addr;
	const char *name; /* addr as written in logs (http.listen) */
	void (*handle)(void *arg, const char *path, struct mtad_http_reply *r);
	void *arg;
};

/* 0 or a libuv code (logged); on failure *out is NULL and nothing is
 * left open after the loop ran once more. */
int mtad_http_start(const struct mtad_http_params *p, struct mtad_http **out);
void mtad_http_stop(struct mtad_http *h, void (*done)(void *arg), void *arg);
void mtad_http_free(struct mtad_http *h);

#endif
