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
	/* server.listen, submission.listen, submissions.listen */
	uv_tcp_t servers[3 * MTA_CONFIG_MAX_LISTEN];
	enum mta_inbound_kind kinds[3 * MTA_CONFIG_MAX_LISTEN];
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
	(void)mta_inbound_accept_kind(
		l->in, server, l->kinds[(uv_tcp_t *)server - l->servers]);
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
	const struct {
		const struct sockaddr_storage *addrs;
		size_t n;
		enum mta_inbound_kind kind;
		const char *name;
	} sets[] = {
		{cfg->listen, cfg->nlisten, MTA_INBOUND_SMTP, "smtp"},
		{cfg->submission, cfg->nsubmission, MTA_INBOUND_SUBMISSION,
		 "submission"},
		{cfg->submissions, cfg->nsubmissions, MTA_INBOUND_SUBMISSIONS,
		 "submissions"},
	};
	size_t ns = 0;

	for (size_t k = 0; k < 3 && rc == 0; k++) {
	for (size_t j = 0; j < sets[k].n; j++, ns++) {
		uv_tcp_t *t = &l->servers[ns];
		const struct sockaddr *sa =
			(const struct sockaddr *)&sets[k].addrs[j];

		l->kinds[ns] = sets[k].kind;
		format_addr(&sets[k].addrs[j], addr, sizeof(addr));
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
		mta_log_str(&ll, "kind", sets[k].name);
		mta_log_end(&ll);
	}
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
		.metrics = p->metrics,
		.users = p->users,
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
	for (size_t i = 0; i < 3 * MTA_CONFIG_MAX_LISTEN; i++) {
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

void mtad_listener_shutdown_now(struct mtad_listener *l)
{
	if (l->shutting_down && !l->sessions_done && l->in != NULL)
		mta_inbound_shutdown_now(l->in);
}

void mtad_listener_reconfigure(struct mtad_listener *l,
			       const struct mta_config *cfg,
			       const struct mta_tls_creds *tls)
{
	if (l->in != NULL)
		mta_inbound_reconfigure(l->in, cfg, tls);
}

void mtad_listener_set_users(struct mtad_listener *l,
			     struct mta_auth_users *users)
{
	if (l->in != NULL)
		mta_inbound_set_users(l->in, users);
}

size_t mtad_listener_nsessions(const struct mtad_listener *l)
{
	return l->in != NULL ? mta_inbound_nsessions(l->in) : 0;
}
