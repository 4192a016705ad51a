/*
 * listener.c - mtad's listening sockets; the sessions are inbound.c's.
 */
#include "listener.h"

#include "err.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

struct mtad_listener {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_inbound *in;
	uv_tcp_t servers[MTA_CONFIG_MAX_LISTEN];
	size_t nservers_open;
	bool sessions_done; /* mta_inbound_shutdown() finished */
	bool shutting_down;
	void (*done)(void *arg);
	void *done_arg;
};

static void maybe_done(struct mtad_listener *l)
{
	if (l->shutting_down && l->sessions_done && l->nservers_open == 0 &&
	    l->done != NULL) {
		void (*done)(void *) = l->done;
		l->done = NULL;
		done(l->done_arg);
	}
}

static void on_connection(uv_stream_t *server, int status)
{
	struct mtad_listener *l = server->data;

	/* l->in is set before the loop first runs (start-up order) */
	if (status < 0 || l->shutting_down || l->in == NULL)
		return;
	(void)mta_inbound_accept(l->in, server);
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

int mtad_listener_open(uv_loop_t *loop, const struct mta_config *cfg,
		       struct mtad_listener **out)
{
	struct mtad_listener *l = calloc(1, sizeof(*l));
	struct mta_logline ll;
	char addr[80];
	int rc = 0;

	*out = NULL;
	if (l == NULL)
		return -ENOMEM;
	l->loop = loop;
	l->cfg = cfg;
	for (size_t i = 0; i < cfg->nlisten; i++) {
		uv_tcp_t *t = &l->servers[i];
		const struct sockaddr *sa =
			(const struct sockaddr *)&cfg->listen[i];

		format_addr(&cfg->listen[i], addr, sizeof(addr));
		uv_tcp_init(l->loop, t);
		t->data = l;
		l->nservers_open++;
		/* libuv reports EADDRINUSE from listen(), not bind() */
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

int mtad_listener_start(struct mtad_listener *l,
			const struct mtad_listener_params *p)
{
	struct mta_inbound_params ip = {
		.loop = p->loop,
		.cfg = p->cfg,
		.spool = p->spool,
		.writer = p->writer,
		.tls = p->tls,
		.on_queued = p->on_queued,
		.on_queued_arg = p->on_queued_arg,
	};

	assert(l->in == NULL && p->loop == l->loop);
	return mta_inbound_new(&ip, &l->in);
}

static void on_sessions_done(void *arg)
{
	struct mtad_listener *l = arg;

	l->sessions_done = true;
	maybe_done(l);
}

void mtad_listener_shutdown(struct mtad_listener *l, void (*done)(void *arg),
			    void *arg)
{
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
	if (l->in != NULL)
		mta_inbound_shutdown(l->in, on_sessions_done, l);
	else
		l->sessions_done = true; /* never started */
	maybe_done(l);
}

void mtad_listener_free(struct mtad_listener *l)
{
	if (l == NULL)
		return;
	if (l->in != NULL)
		mta_inbound_free(l->in);
	free(l);
}
