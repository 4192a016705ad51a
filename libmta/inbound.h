/*
 * inbound.h - inbound SMTP sessions: the SMTP server engine
 * (smtp_server.h) on a stream (stream.h), with deadlines, session limits
 * and the hand-over of complete messages to the writer thread.
 *
 * DESCRIPTION
 *	mta_inbound_new() makes an empty set of sessions.  The daemon binds
 *	the listening sockets (mtad/listener.c) and calls mta_inbound_accept_kind()
 *	for each incoming connection: it accepts the socket, applies the
 *	session limits (a "421 4.7.0" and a close when one is exceeded) and
 *	greets.  Each session couples a stream (socket, timer, optional TLS,
 *	write queue, read buffer), the sans-I/O SMTP engine and a body sink
 *	(spool.h); complete messages go to the writer thread (writer.h) and the
 *	250 is sent from the commit callback.
 *
 *	Limits: server.max_sessions in all, server.max_sessions_per_client
 *	from one client (IPv4 address or IPv6 /64), a quarter of
 *	server.max_sessions shared by clients outside relay_networks;
 *	sessions already closing do not count.  Deadlines: a whole-command
 *	deadline (server.command_timeout, at most 10 s for a refused client),
 *	server.data_timeout of silence and server.message_timeout in all
 *	inside a message.  The timer never fires against the client while a
 *	commit is pending.
 *
 *	Listener kinds (mta_inbound_accept_kind()): MTA_INBOUND_SMTP
 *	(server.listen: relay for relay_networks, Postmaster for the rest, no
 *	AUTH), MTA_INBOUND_SUBMISSION (submission.listen, port 587: STARTTLS,
 *	then AUTH) and MTA_INBOUND_SUBMISSIONS (submissions.listen, port 465:
 *	the TLS handshake starts at once and the greeting comes over TLS, RFC
 *	8314 3).  On both submission kinds AUTH is offered once TLS is up, a
 *	client outside relay_networks must authenticate before MAIL, and a
 *	client that did is relay-allowed for the rest of the session.  They
 *	do not count in the quarter of server.max_sessions kept for clients
 *	outside relay_networks (they cannot send anything before AUTH).
 *
 *	AUTH: the engine's AUTH event is verified against the users table
 *	(auth.h, mta_inbound_set_users()) on libuv's thread pool
 *	(uv_queue_work): the loop never waits on a password hash.  Failed
 *	attempts are counted per client address (IPv4 address or IPv6 /64):
 *	the 535 of the n-th consecutive failure is sent after
 *	auth.failure_delay << (n - 1) (at most 30 s); after
 *	auth.max_failures failures the client gets "421 4.7.0" at its next
 *	AUTH, without a hash, until 15 minutes have passed since its last
 *	failure.  A success forgets the client's failures.  Log lines
 *	(event=auth) carry the result and, on success, the user name; never
 *	a password or a SASL response.
 *
 *	mta_inbound_shutdown() refuses new sessions, tells every session not
 *	in a transaction "421 4.3.2" and closes it; a session in a
 *	transaction (MAIL given, a message coming in, its commit pending)
 *	finishes it first and gets the 421 after its reply, whenever the
 *	transaction ends.  mta_inbound_shutdown_now() ends the wait (the
 *	daemon's server.shutdown_grace): every session left is told 421 and
 *	closed, a pending commit's reply first.  done(arg) is called exactly once, when every
 *	session is gone (possibly before mta_inbound_shutdown() returns).
 *
 * THREADS
 *	A set and its sessions belong to one loop thread: call its functions
 *	there.  mtad runs one set per loop thread (server.threads); the sets
 *	share one struct mta_inbound_shared (mta_inbound_shared_new(), any
 *	thread; free it after the last set): the sessions not closing of
 *	all sets (so server.max_sessions, max_sessions_per_client and the
 *	quarter for outsiders hold across threads), the AUTH failure table
 *	(auth.max_failures per client, whichever thread the client reached),
 *	and the session id and queue id sequences (unique across threads),
 *	under a mutex or as atomics.  A set's messages go to the writer
 *	through its port (writer.h), so their done() runs on its thread;
 *	on_queued runs on the set's thread too (the daemon forwards it to
 *	thread 0).  A set made without a shared object makes its own.
 *
 * OWNERSHIP
 *	The set is owned by the caller: mta_inbound_free() after done ran.
 *	cfg, spool, writer and tls are borrowed for its life.
 *
 * ERRORS
 *	mta_inbound_accept_kind(): 0 when the connection was taken (it may be
 *	refused by a limit, which is not an error); -ENOMEM, MTA_ECLOSED
 *	while shutting down, or a libuv code when accepting failed.  Session
 *	failures (write or TLS errors, resets) close that session with a
 *	reason in its disconnect line (stream.h, ERROR POLICY).
 *
 * SECURITY
 *	Everything the client sends is untrusted.  Memory per session is
 *	bounded: the engine's fixed buffers, at most MTA_INBOUND_INBUF_MAX
 *	bytes of unprocessed input (reading stops beyond it), at most
 *	MTA_INBOUND_OUTBUF_MAX bytes of unsent output (the engine stops
 *	beyond it), and a body in memory up to MTA_INBOUND_BODY_SPILL bytes,
 *	then in an unlinked file in the spool's tmp directory.
 *
 * STANDARDS
 *	RFC 5321 (through smtp_server.h), RFC 3207 §4.2 (input after
 *	STARTTLS is discarded: TLS-04).
 */
#ifndef MTA_INBOUND_H
#define MTA_INBOUND_H

#include "config.h"
#include "metrics.h"
#include "spool.h"
#include "stream.h"
#include "tls.h"
#include "writer.h"

#include <uv.h>

#define MTA_INBOUND_INBUF_MAX (64 * 1024)
#define MTA_INBOUND_OUTBUF_MAX (256 * 1024)
#define MTA_INBOUND_BODY_SPILL (256 * 1024)

struct mta_inbound;
struct mta_inbound_shared;
struct mta_auth_users;

enum mta_inbound_kind {
	MTA_INBOUND_SMTP = 0,	 /* server.listen */
	MTA_INBOUND_SUBMISSION,	 /* submission.listen: STARTTLS, AUTH */
	MTA_INBOUND_SUBMISSIONS, /* submissions.listen: implicit TLS, AUTH */
};

struct mta_inbound_params {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	const struct mta_tls_creds *tls; /* NULL: no STARTTLS */
	void (*on_queued)(void *arg);	 /* after each committed message */
	void *on_queued_arg;
	struct mta_metrics *metrics;	 /* counters (metrics.h), or NULL */
	struct mta_auth_users *users;	 /* AUTH table (a reference is
					    taken), or NULL: no AUTH */
	/* several loop threads (server.threads): */
	struct mta_inbound_shared *shared; /* limits and ids shared with
					      the other sets, or NULL: its
					      own */
	struct mta_writer_port *port;	 /* commits through this port
					    (writer.h), or NULL: writer's
					    own loop */
	unsigned thread;		 /* logged as thread= on connect */
};

/* Shared between the sets of several loop threads; see THREADS. */
struct mta_inbound_shared;
int mta_inbound_shared_new(const struct mta_config *cfg,
			   struct mta_inbound_shared **out);
/* Reload: auth.max_failures and auth.failure_delay from cfg. */
void mta_inbound_shared_reconfigure(struct mta_inbound_shared *sh,
				    const struct mta_config *cfg);
/* Sessions of every set, closing ones too. */
size_t mta_inbound_shared_nsessions(struct mta_inbound_shared *sh);
/* After every set using it was freed. */
void mta_inbound_shared_free(struct mta_inbound_shared *sh);

int mta_inbound_new(const struct mta_inbound_params *p,
		    struct mta_inbound **out);
/* A connection on a listener of the given kind. */
int mta_inbound_accept_kind(struct mta_inbound *in, uv_stream_t *server,
			    enum mta_inbound_kind kind);
/* Reload: sessions accepted from now on verify AUTH against users (a
 * reference is taken; the old table is released when its last session
 * and verification are done).  NULL: no AUTH. */
void mta_inbound_set_users(struct mta_inbound *in,
			   struct mta_auth_users *users);
void mta_inbound_shutdown(struct mta_inbound *in, void (*done)(void *arg),
			  void *arg);
/* Drain over (server.shutdown_grace): every session still open gets
 * "421 4.3.2" and is closed, a pending commit's reply first. */
void mta_inbound_shutdown_now(struct mta_inbound *in);
/* Reload: sessions accepted from now on use cfg and tls; open sessions
 * keep the snapshot they started with.  The caller keeps the old ones
 * alive until mta_inbound_nsessions() has been 0 once after the call. */
void mta_inbound_reconfigure(struct mta_inbound *in,
			     const struct mta_config *cfg,
			     const struct mta_tls_creds *tls);
size_t mta_inbound_nsessions(const struct mta_inbound *in);
void mta_inbound_free(struct mta_inbound *in);

#endif
