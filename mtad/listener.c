/*
 * listener.c - mtad's listening sockets; the sessions are inbound.c's.
 */
#include "listener.h"

#include "err.h"
#include "log.h"

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

	if (status < 0 || l->shutting_down)
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
	struct mta_inbound_params ip = {
		.loop = p->loop,
		.cfg = p->cfg,
		.spool = p->spool,
		.writer = p->writer,
		.tls = p->tls,
		.on_queued = p->on_queued,
		.on_queued_arg = p->on_queued_arg,
		.metrics = p->metrics,
	};
	rc = mta_inbound_new(&ip, &l->in);
	if (rc != 0) {
		free(l);
		return rc;
	}
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
	mta_inbound_shutdown(l->in, on_sessions_done, l);
	maybe_done(l);
}

void mtad_listener_free(struct mtad_listener *l)
{
	mta_inbound_free(l->in);
	free(l);
}

void mtad_listener_shutdown_now(struct mtad_listener *l)
{
	if (l->shutting_down && !l->sessions_done)
		mta_inbound_shutdown_now(l->in);
}

void mtad_listener_reconfigure(struct mtad_listener *l,
			       const struct mta_config *cfg,
			       const struct mta_tls_creds *tls)
{
	mta_inbound_reconfigure(l->in, cfg, tls);
}

size_t mtad_listener_nsessions(const struct mtad_listener *l)
{
	return mta_inbound_nsessions(l->in);
}
