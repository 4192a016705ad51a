/*
 * listener.c - mtad's listening sockets and the loop threads of inbound
 * SMTP (server.threads); the sessions are inbound.c's.
 *
 * Shard 0 runs on the daemon's loop (thread 0).  Shards 1..N-1 each have
 * a loop, a thread, a session set (sharing one struct mta_inbound_shared
 * with the others), a writer port and one SO_REUSEPORT socket per listen
 * address.  Thread 0 talks to them through one uv_async per shard (cmd:
 * shutdown, shutdown_now, a new config generation) and they answer
 * through one uv_async on thread 0 (hub: a message was queued, a shard
 * finished).  The command state lives under l->mu.
 */
#include "listener.h"

#include "auth.h"
#include "err.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SERVERS (3 * MTA_CONFIG_MAX_LISTEN)
#define THREADS_AUTO_MAX 8

struct mtad_listener;

struct shard {
	struct mtad_listener *l;
	unsigned index;
	uv_loop_t *loop;   /* l->loop for shard 0, else &own_loop */
	uv_loop_t own_loop;
	bool loop_init;
	uv_async_t cmd;	   /* shards 1..N-1: commands from thread 0 */
	bool cmd_init;
	struct mta_inbound *in;
	struct mta_writer_port *port; /* shards 1..N-1 */
	uv_tcp_t servers[MAX_SERVERS];
	size_t nservers_open;
	bool sessions_done; /* mta_inbound_shutdown() finished */
	bool shutting_down;
	bool now_done;	    /* shutdown_now applied */
	unsigned gen;	    /* config generation applied (under l->mu) */
	bool closed_servers; /* under l->mu: its sockets are closed */
	pthread_t thread;
	bool thread_started;
	atomic_bool finished; /* shard thread: all closed */
};

struct mtad_listener {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	unsigned nthreads;
	struct shard *shards;
	enum mta_inbound_kind kinds[MAX_SERVERS];
	size_t nservers;
	struct mta_inbound_shared *shared;
	uv_async_t hub; /* shards -> thread 0 */
	bool hub_init;
	atomic_bool queued;
	void (*on_queued)(void *arg);
	void *on_queued_arg;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* a shard closed its sockets */
	/* under mu: what thread 0 asked of the shards */
	bool cmd_stop, cmd_shutdown, cmd_now;
	unsigned gen;
	const struct mta_config *gen_cfg;
	const struct mta_tls_creds *gen_tls;
	struct mta_auth_users *gen_users; /* a reference */
	/* thread 0 */
	bool started;
	bool stopped_accepting;
	bool shutting_down;
	void (*done)(void *arg);
	void *done_arg;
};

static unsigned threads_of(const struct mta_config *cfg)
{
	long n;

	if (cfg->server_threads > 0)
		return cfg->server_threads;
	n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		return 1;
	return n > THREADS_AUTO_MAX ? THREADS_AUTO_MAX : (unsigned)n;
}

/* ---- thread 0: shards' reports ---------------------------------------- */

static bool others_finished(struct mtad_listener *l)
{
	for (unsigned i = 1; i < l->nthreads; i++)
		if (!atomic_load(&l->shards[i].finished))
			return false;
	return true;
}

static void maybe_done(struct mtad_listener *l)
{
	struct shard *s0 = &l->shards[0];

	if (!l->shutting_down || !s0->sessions_done || s0->nservers_open > 0 ||
	    !others_finished(l) || l->done == NULL)
		return;
	for (unsigned i = 1; i < l->nthreads; i++)
		if (l->shards[i].thread_started) {
			pthread_join(l->shards[i].thread, NULL);
			l->shards[i].thread_started = false;
		}
	if (l->hub_init && !uv_is_closing((uv_handle_t *)&l->hub))
		uv_close((uv_handle_t *)&l->hub, NULL);
	void (*done)(void *) = l->done;
	l->done = NULL;
	done(l->done_arg);
}

static void on_hub(uv_async_t *a)
{
	struct mtad_listener *l = a->data;

	if (atomic_exchange(&l->queued, false) && l->on_queued != NULL)
		l->on_queued(l->on_queued_arg);
	maybe_done(l);
}

/* A shard's on_queued: the scheduler lives on thread 0. */
static void shard_queued(void *arg)
{
	struct mtad_listener *l = arg;

	atomic_store(&l->queued, true);
	uv_async_send(&l->hub);
}

/* ---- any shard, on its own thread ------------------------------------- */

static void on_connection(uv_stream_t *server, int status)
{
	struct shard *s = server->data;

	/* s->in is set before the loop first runs (start-up order) */
	if (status < 0 || s->shutting_down || s->in == NULL)
		return;
	(void)mta_inbound_accept_kind(
		s->in, server, s->l->kinds[(uv_tcp_t *)server - s->servers]);
}

/* A shard other than 0 has closed everything: its loop ends. */
static void shard_finish(struct shard *s)
{
	if (s->index == 0 || !s->sessions_done || s->nservers_open > 0 ||
	    atomic_load(&s->finished))
		return;
	if (s->port != NULL) {
		mta_writer_port_close(s->port);
		s->port = NULL;
	}
	/* under mu: thread 0 sends to cmd only while it is not finished */
	pthread_mutex_lock(&s->l->mu);
	atomic_store(&s->finished, true);
	pthread_mutex_unlock(&s->l->mu);
	if (s->cmd_init && !uv_is_closing((uv_handle_t *)&s->cmd))
		uv_close((uv_handle_t *)&s->cmd, NULL);
	if (s->thread_started)
		uv_async_send(&s->l->hub);
}

static void shard_check(struct shard *s)
{
	if (s->index == 0)
		maybe_done(s->l);
	else
		shard_finish(s);
}

static void on_server_closed(uv_handle_t *h)
{
	struct shard *s = h->data;

	s->nservers_open--;
	shard_check(s);
}

static void on_sessions_done(void *arg)
{
	struct shard *s = arg;

	s->sessions_done = true;
	shard_check(s);
}

/* The shard's listening sockets are closed at once (uv_close() closes
 * the descriptor); their callbacks come later. */
static void shard_close_servers(struct shard *s)
{
	for (size_t i = 0; i < MAX_SERVERS; i++) {
		uv_handle_t *h = (uv_handle_t *)&s->servers[i];
		if (h->loop != NULL && !uv_is_closing(h))
			uv_close(h, on_server_closed);
	}
}

static void shard_shutdown(struct shard *s)
{
	if (s->shutting_down)
		return;
	s->shutting_down = true;
	shard_close_servers(s);
	if (s->in != NULL)
		mta_inbound_shutdown(s->in, on_sessions_done, s);
	else
		s->sessions_done = true; /* never started */
	shard_check(s);
}

/* Shard thread: thread 0 changed something under l->mu. */
static void on_cmd(uv_async_t *a)
{
	struct shard *s = a->data;
	struct mtad_listener *l = s->l;
	bool stop, down, now;

	pthread_mutex_lock(&l->mu);
	stop = l->cmd_stop;
	down = l->cmd_shutdown;
	now = l->cmd_now;
	if (s->gen != l->gen && s->in != NULL) {
		/* under mu: l holds a reference to gen_users meanwhile */
		mta_inbound_reconfigure(s->in, l->gen_cfg, l->gen_tls);
		mta_inbound_set_users(s->in, l->gen_users);
	}
	s->gen = l->gen;
	pthread_mutex_unlock(&l->mu);
	if (stop && !s->closed_servers) {
		shard_close_servers(s);
		pthread_mutex_lock(&l->mu);
		s->closed_servers = true;
		pthread_cond_signal(&l->cv);
		pthread_mutex_unlock(&l->mu);
	}
	if (down)
		shard_shutdown(s);
	if (now && !s->now_done && !s->sessions_done && s->in != NULL) {
		s->now_done = true;
		mta_inbound_shutdown_now(s->in);
	}
}

static void *shard_main(void *arg)
{
	struct shard *s = arg;

	uv_run(s->loop, UV_RUN_DEFAULT); /* until shard_finish() */
	return NULL;
}

/* ---- opening (thread 0, still root) ----------------------------------- */

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

/* One SO_REUSEPORT listening socket on sa, opened as t (libuv 1.44 has no
 * UV_TCP_REUSEPORT, so the socket is made here).  0 or -errno. */
static int open_reuseport(uv_tcp_t *t, const struct sockaddr *sa)
{
	socklen_t len = sa->sa_family == AF_INET6
				? sizeof(struct sockaddr_in6)
				: sizeof(struct sockaddr_in);
	int one = 1, zero = 0, rc;
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
	    (sa->sa_family == AF_INET6 &&
	     /* as uv_tcp_bind() without UV_TCP_IPV6ONLY: dual stack */
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) !=
		     0) ||
	    bind(fd, sa, len) != 0 || listen(fd, 511) != 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	rc = uv_tcp_open(t, fd);
	if (rc != 0)
		close(fd);
	return rc;
}

/*
 * Before a SO_REUSEPORT group is bound: is sa free?  Another process of
 * the same user with SO_REUSEPORT sockets on it (a second mtad) would
 * otherwise silently share the port; a socket without the option fails
 * with EADDRINUSE as uv_tcp_bind() always did.  0 or -errno.
 */
static int probe_free(const struct sockaddr *sa)
{
	socklen_t len = sa->sa_family == AF_INET6
				? sizeof(struct sockaddr_in6)
				: sizeof(struct sockaddr_in);
	int one = 1, zero = 0, rc = 0;
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    (sa->sa_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) !=
		     0) ||
	    bind(fd, sa, len) != 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* Port 0 asks the kernel for one: the other threads bind the port the
 * first socket got. */
static void resolve_port(uv_tcp_t *t, struct sockaddr_storage *ss)
{
	struct sockaddr_storage got;
	int len = sizeof(got);

	if (uv_tcp_getsockname(t, (struct sockaddr *)&got, &len) != 0)
		return;
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port =
			((struct sockaddr_in6 *)&got)->sin6_port;
	else
		((struct sockaddr_in *)ss)->sin_port =
			((struct sockaddr_in *)&got)->sin_port;
}

/* Server k of shard s on sa: a plain libuv socket with one thread (as
 * mtad always did), a SO_REUSEPORT one per thread otherwise. */
static int open_server(struct mtad_listener *l, struct shard *s, size_t k,
		       const struct sockaddr *sa)
{
	uv_tcp_t *t = &s->servers[k];
	int rc;

	uv_tcp_init(s->loop, t);
	t->data = s;
	s->nservers_open++;
	if (l->nthreads == 1)
		/* libuv reports EADDRINUSE from listen(), not bind() */
		rc = uv_tcp_bind(t, sa, 0);
	else
		rc = open_reuseport(t, sa);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)t, 511, on_connection);
	return rc;
}

/* Shards 1..N-1: their loop and command handle, before the sandbox. */
static int init_shards(struct mtad_listener *l)
{
	int rc;

	for (unsigned i = 0; i < l->nthreads; i++) {
		struct shard *s = &l->shards[i];
		s->l = l;
		s->index = i;
		atomic_init(&s->finished, false);
		if (i == 0) {
			s->loop = l->loop;
			continue;
		}
		s->loop = &s->own_loop;
		if ((rc = uv_loop_init(s->loop)) != 0)
			return rc;
		s->loop_init = true;
		if ((rc = uv_async_init(s->loop, &s->cmd, on_cmd)) != 0)
			return rc;
		s->cmd.data = s;
		s->cmd_init = true;
	}
	if ((rc = uv_async_init(l->loop, &l->hub, on_hub)) != 0)
		return rc;
	l->hub.data = l;
	l->hub_init = true;
	return 0;
}

static int open_all(struct mtad_listener *l, const struct mta_config *cfg)
{
	struct mta_logline ll;
	char addr[80];
	int rc = 0;
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

	for (size_t k = 0; k < 3 && rc == 0; k++) {
		for (size_t j = 0; j < sets[k].n && rc == 0; j++) {
			struct sockaddr_storage ss = sets[k].addrs[j];
			const struct sockaddr *sa = (const struct sockaddr *)&ss;
			size_t ns = l->nservers++;

			l->kinds[ns] = sets[k].kind;
			format_addr(&ss, addr, sizeof(addr));
			if (l->nthreads > 1)
				rc = probe_free(sa);
			for (unsigned i = 0; i < l->nthreads && rc == 0; i++) {
				rc = open_server(l, &l->shards[i], ns, sa);
				if (rc == 0 && i == 0)
					resolve_port(&l->shards[0].servers[ns],
						     &ss);
			}
			mta_log_begin(&ll, rc == 0 ? MTA_LOG_INFO : MTA_LOG_ERR,
				      rc == 0 ? "listen" : "listen_failed");
			mta_log_str(&ll, "addr", addr);
			if (rc == 0)
				mta_log_str(&ll, "kind", sets[k].name);
			else
				mta_log_str(&ll, "error", uv_strerror(rc));
			mta_log_end(&ll);
		}
	}
	return rc;
}

int mtad_listener_open(uv_loop_t *loop, const struct mta_config *cfg,
		       struct mtad_listener **out)
{
	struct mtad_listener *l = calloc(1, sizeof(*l));
	int rc;

	*out = NULL;
	if (l == NULL)
		return -ENOMEM;
	l->loop = loop;
	l->cfg = cfg;
	l->nthreads = threads_of(cfg);
	atomic_init(&l->queued, false);
	l->shards = calloc(l->nthreads, sizeof(*l->shards));
	if (l->shards == NULL) {
		free(l);
		return -ENOMEM;
	}
	pthread_mutex_init(&l->mu, NULL); /* cannot fail on Linux */
	pthread_cond_init(&l->cv, NULL);
	rc = init_shards(l);
	if (rc == 0)
		rc = mta_inbound_shared_new(cfg, &l->shared);
	if (rc == 0)
		rc = open_all(l, cfg);
	*out = l; /* even on failure: the caller shuts it down */
	return rc; /* libuv codes are -errno on Unix */
}

/* ---- starting (thread 0, after the privilege drop) -------------------- */

static int start_shard(struct mtad_listener *l, struct shard *s,
		       const struct mtad_listener_params *p)
{
	struct mta_inbound_params ip = {
		.loop = s->loop,
		.cfg = p->cfg,
		.spool = p->spool,
		.writer = p->writer,
		.tls = p->tls,
		.on_queued = s->index == 0 ? p->on_queued : shard_queued,
		.on_queued_arg = s->index == 0 ? p->on_queued_arg : (void *)l,
		.metrics = p->metrics,
		.users = p->users,
		.shared = l->shared,
		.thread = s->index,
	};
	int rc;

	if (s->index > 0) {
		rc = mta_writer_port_open(p->writer, s->loop, &s->port);
		if (rc != 0)
			return rc;
		ip.port = s->port;
	}
	rc = mta_inbound_new(&ip, &s->in);
	if (rc != 0 || s->index == 0)
		return rc;
	/* the thread owns the loop from here on (the sandbox is inherited) */
	rc = -pthread_create(&s->thread, NULL, shard_main, s);
	if (rc == 0)
		s->thread_started = true;
	return rc;
}

int mtad_listener_start(struct mtad_listener *l,
			const struct mtad_listener_params *p)
{
	int rc = 0;

	assert(!l->started && p->loop == l->loop);
	l->started = true;
	l->on_queued = p->on_queued;
	l->on_queued_arg = p->on_queued_arg;
	pthread_mutex_lock(&l->mu);
	l->gen_cfg = p->cfg;
	l->gen_tls = p->tls;
	l->gen_users = mta_auth_users_ref(p->users);
	pthread_mutex_unlock(&l->mu);
	for (unsigned i = 0; i < l->nthreads && rc == 0; i++)
		rc = start_shard(l, &l->shards[i], p);
	return rc;
}

unsigned mtad_listener_threads(const struct mtad_listener *l)
{
	return l->nthreads;
}

/* ---- thread 0: broadcasts --------------------------------------------- */

/* Under l->mu: wakes every running shard (on_cmd()). */
static void broadcast_locked(struct mtad_listener *l)
{
	for (unsigned i = 1; i < l->nthreads; i++)
		if (l->shards[i].thread_started &&
		    !atomic_load(&l->shards[i].finished))
			uv_async_send(&l->shards[i].cmd);
}

/* A shard whose thread never started: its handles are closed here, on
 * thread 0, and its loop run to the end. */
static void close_unstarted(struct shard *s)
{
	shard_shutdown(s); /* its set never had a session */
	if (s->port != NULL) {
		mta_writer_port_close(s->port);
		s->port = NULL;
	}
	if (s->cmd_init && !uv_is_closing((uv_handle_t *)&s->cmd))
		uv_close((uv_handle_t *)&s->cmd, NULL);
	uv_run(s->loop, UV_RUN_DEFAULT);
	atomic_store(&s->finished, true);
}

/*
 * Under l->mu: waits (at most a second) until every running shard has
 * closed its listening sockets, so that once shutdown returns no thread
 * accepts any more (a connection is refused, as with one thread).  The
 * shards never wait for thread 0 while holding anything it needs.
 */
static void wait_closed_locked(struct mtad_listener *l)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 1;
	for (unsigned i = 1; i < l->nthreads; i++) {
		struct shard *s = &l->shards[i];
		while (s->thread_started && !s->closed_servers &&
		       !atomic_load(&s->finished))
			if (pthread_cond_timedwait(&l->cv, &l->mu, &until) ==
			    ETIMEDOUT)
				return;
	}
}

void mtad_listener_stop_accepting(struct mtad_listener *l)
{
	if (l->stopped_accepting)
		return;
	l->stopped_accepting = true;
	for (unsigned i = 1; i < l->nthreads; i++)
		if (!l->shards[i].thread_started && l->shards[i].loop_init)
			shard_close_servers(&l->shards[i]); /* loop idle */
	pthread_mutex_lock(&l->mu);
	l->cmd_stop = true;
	broadcast_locked(l);
	wait_closed_locked(l);
	pthread_mutex_unlock(&l->mu);
	shard_close_servers(&l->shards[0]);
}

void mtad_listener_shutdown(struct mtad_listener *l, void (*done)(void *arg),
			    void *arg)
{
	if (l->shutting_down)
		return;
	mtad_listener_stop_accepting(l);
	l->shutting_down = true;
	l->done = done;
	l->done_arg = arg;
	for (unsigned i = 1; i < l->nthreads; i++)
		if (!l->shards[i].thread_started && l->shards[i].loop_init)
			close_unstarted(&l->shards[i]);
		else if (!l->shards[i].loop_init)
			atomic_store(&l->shards[i].finished, true);
	pthread_mutex_lock(&l->mu);
	l->cmd_shutdown = true;
	broadcast_locked(l);
	pthread_mutex_unlock(&l->mu);
	shard_shutdown(&l->shards[0]);
	maybe_done(l);
}

void mtad_listener_shutdown_now(struct mtad_listener *l)
{
	struct shard *s0 = &l->shards[0];

	pthread_mutex_lock(&l->mu);
	l->cmd_now = true;
	broadcast_locked(l);
	pthread_mutex_unlock(&l->mu);
	if (l->shutting_down && !s0->sessions_done && s0->in != NULL)
		mta_inbound_shutdown_now(s0->in);
}

/* A new generation for the shards; shard 0 applies it at once. */
static void new_generation(struct mtad_listener *l,
			   const struct mta_config *cfg,
			   const struct mta_tls_creds *tls,
			   struct mta_auth_users *users)
{
	struct mta_auth_users *old;

	pthread_mutex_lock(&l->mu);
	old = l->gen_users;
	l->gen_cfg = cfg;
	l->gen_tls = tls;
	l->gen_users = mta_auth_users_ref(users);
	l->gen++;
	l->shards[0].gen = l->gen;
	broadcast_locked(l);
	pthread_mutex_unlock(&l->mu);
	mta_auth_users_unref(old);
}

void mtad_listener_reconfigure(struct mtad_listener *l,
			       const struct mta_config *cfg,
			       const struct mta_tls_creds *tls)
{
	if (l->shards[0].in == NULL)
		return;
	mta_inbound_reconfigure(l->shards[0].in, cfg, tls);
	new_generation(l, cfg, tls, l->gen_users);
}

void mtad_listener_set_users(struct mtad_listener *l,
			     struct mta_auth_users *users)
{
	if (l->shards[0].in == NULL)
		return;
	mta_inbound_set_users(l->shards[0].in, users);
	new_generation(l, l->gen_cfg, l->gen_tls, users);
}

/*
 * Sessions of every thread, closing ones too.  A shard that has not yet
 * applied the latest reconfigure counts as one session: the caller frees
 * the old config once this was 0 (inbound.h, mta_inbound_reconfigure()).
 */
size_t mtad_listener_nsessions(const struct mtad_listener *l)
{
	struct mtad_listener *m = (struct mtad_listener *)l;
	size_t n = 0;

	if (l->shards[0].in == NULL)
		return 0;
	pthread_mutex_lock(&m->mu);
	for (unsigned i = 1; i < l->nthreads; i++)
		if (l->shards[i].thread_started && l->shards[i].gen != l->gen &&
		    !atomic_load(&l->shards[i].finished))
			n++;
	pthread_mutex_unlock(&m->mu);
	return n + mta_inbound_shared_nsessions(l->shared);
}

void mtad_listener_free(struct mtad_listener *l)
{
	if (l == NULL)
		return;
	for (unsigned i = 0; i < l->nthreads; i++) {
		struct shard *s = &l->shards[i];
		assert(!s->thread_started);
		if (s->in != NULL)
			mta_inbound_free(s->in);
		if (s->loop_init)
			(void)uv_loop_close(s->loop);
	}
	mta_inbound_shared_free(l->shared);
	mta_auth_users_unref(l->gen_users);
	pthread_cond_destroy(&l->cv);
	pthread_mutex_destroy(&l->mu);
	free(l->shards);
	free(l);
}
