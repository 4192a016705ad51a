/*
 * listener.h - mtad's inbound SMTP: the listening sockets.
 *
 * DESCRIPTION
 *	mtad_listener_open() binds and listens on every server.listen,
 *	submission.listen and submissions.listen address (start-up, still
 *	root: ports below 1024); *out is set even on
 *	failure, and the caller shuts it down.  No connection is accepted
 *	before mtad_listener_start(), which comes after the privilege drop
 *	and hands each accepted connection to the session set of
 *	libmta/inbound.h (which holds the sessions: engine, stream, limits,
 *	deadlines, commits).  Connections arriving in between wait in the
 *	kernel's backlog (the loop does not run before start-up ends).
 *
 *	mtad_listener_shutdown() stops accepting and shuts the sessions down
 *	(mta_inbound_shutdown(): "421 4.3.2" to idle sessions, a pending
 *	commit's reply first).  done() is called once every session and
 *	listening socket is closed.  Sessions in a transaction finish it
 *	first; mtad_listener_shutdown_now() ends that wait.  Shutting down a
 *	listener that was opened but never started only closes its sockets.
 *
 *	server.threads (N, 0 = online CPUs, at most 8): mtad_listener_open()
 *	binds every address N times with SO_REUSEPORT (once, as always,
 *	when N is 1) and makes N-1 more loops; mtad_listener_start() gives
 *	each loop a session set (inbound.h; limits, the AUTH failure table
 *	and ids shared by all), a writer port (writer.h) and, for loops
 *	1..N-1, a thread.  The kernel spreads new connections over the
 *	sockets.  Shutdown, shutdown_now, reconfigure and set_users reach
 *	every thread (uv_async); done() is called on thread 0 once every
 *	thread has closed its sessions and sockets and was joined.
 *	on_queued is always called on thread 0.  nsessions counts the
 *	sessions of all threads, plus one for each thread that has not yet
 *	taken the latest reconfigure (so the caller keeps the old config
 *	alive until every thread let go of it).
 *
 * THREADS
 *	These functions: loop thread 0 (the daemon's loop) only.
 *
 * SECURITY
 *	See inbound.h: per-session memory bounds and session limits.
 */
#ifndef MTAD_LISTENER_H
#define MTAD_LISTENER_H

#include "config.h"
#include "inbound.h"
#include "spool.h"
#include "tls.h"
#include "writer.h"

#include <uv.h>

struct mtad_listener;

struct mtad_listener_params {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	const struct mta_tls_creds *tls; /* NULL: no STARTTLS */
	void (*on_queued)(void *arg);	 /* after each committed message */
	void *on_queued_arg;
	struct mta_metrics *metrics;	 /* or NULL */
	struct mta_auth_users *users;	 /* AUTH table for the submission
					    listeners (referenced), or NULL */
};

int mtad_listener_open(uv_loop_t *loop, const struct mta_config *cfg,
		       struct mtad_listener **out);
int mtad_listener_start(struct mtad_listener *l,
			const struct mtad_listener_params *p);
/* SIGTERM, first step: every thread closes its listening sockets; on
 * return none accepts (new connections are refused), sessions go on.
 * mtad_listener_shutdown() does it too. */
void mtad_listener_stop_accepting(struct mtad_listener *l);
void mtad_listener_shutdown(struct mtad_listener *l, void (*done)(void *arg),
			    void *arg);
/* After mtad_listener_shutdown(): the drain is over (shutdown_grace),
 * close the sessions still in a transaction (inbound.h). */
void mtad_listener_shutdown_now(struct mtad_listener *l);
/* SIGHUP: new sessions use cfg and tls (inbound.h); the listening
 * sockets stay as they are. */
void mtad_listener_reconfigure(struct mtad_listener *l,
			       const struct mta_config *cfg,
			       const struct mta_tls_creds *tls);
/* SIGHUP: new sessions verify AUTH against users (inbound.h). */
void mtad_listener_set_users(struct mtad_listener *l,
			     struct mta_auth_users *users);
size_t mtad_listener_nsessions(const struct mtad_listener *l);
/* server.threads as resolved at open. */
unsigned mtad_listener_threads(const struct mtad_listener *l);
void mtad_listener_free(struct mtad_listener *l);

#endif
