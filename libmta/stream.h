/*
 * stream.h - one TCP connection on the loop, with optional TLS over memory
 * buffers, a write queue, a read buffer and a timer: the transport shared
 * by inbound sessions (inbound.c) and outbound connections
 * (delivery_conn.c).
 *
 * DESCRIPTION
 *	A struct mta_stream embeds a uv_tcp_t, a uv_timer_t and, once
 *	STARTTLS ran, a struct mta_tls (tls.h).  The owner supplies a table of
 *	callbacks (struct mta_stream_ops) and reads and writes plaintext; the
 *	stream moves ciphertext between the socket and the TLS layer.
 *
 *	mta_stream_init() initialises both handles on a loop.  The socket is
 *	then either accepted (mta_stream_accept()) or connected
 *	(mta_stream_connect(), whose result arrives in ops->connected).
 *	Either way TCP_NODELAY is set: both directions write whole SMTP turns
 *	and then wait for the peer, so Nagle's algorithm only delays a
 *	turn's last segment (by the peer's delayed ACK, up to 40 ms).
 *
 *	Reading: mta_stream_read_start()/mta_stream_read_stop().  Received
 *	plaintext is appended to the read buffer and ops->data is called; the
 *	owner looks at it with mta_stream_pending() and marks what it used
 *	with mta_stream_consume().  Unconsumed bytes stay for the next call
 *	(the owner bounds them by stopping reading).  The peer's end of
 *	stream (FIN, reset, TLS close_notify) is reported once by ops->eof,
 *	with UV_EOF for an orderly end or a negative libuv code; reading has
 *	stopped then, the stream is still open and the owner closes it.
 *	ops->data is called after every socket read that did not fail, also
 *	when it brought no plaintext (TLS handshake records).
 *
 *	Writing: mta_stream_write() queues plaintext (encrypted first when the
 *	TLS handshake is complete).  st->write_pending counts the bytes queued
 *	and not yet written; when a completed write brings it below
 *	st->write_low, ops->drained is called so the owner can produce more.
 *
 *	TLS: mta_stream_starttls_server() (the unconsumed plaintext after
 *	STARTTLS is discarded and counted, TLS-04) and
 *	mta_stream_starttls_client() (sends the ClientHello).  The handshake
 *	is driven by received bytes; ops->tls_ready is called once it is
 *	complete, before any decrypted data.
 *
 *	Timer: mta_stream_timer(st, ms) (re)arms the one timer, ops->timeout
 *	fires when it expires; mta_stream_timer_stop().
 *
 *	Closing: mta_stream_close(st, graceful).  Graceful: TLS close_notify
 *	when the handshake completed, shutdown(2) after the queued writes,
 *	then close.  Otherwise the socket is closed at once (queued writes
 *	are dropped).  ops->closed is called exactly once, on a later loop
 *	turn, when both handles are closed; the owner may free the stream
 *	there (and may mta_stream_init() it again for a new connection).
 *
 * ERROR POLICY
 *	Any write failure (out of memory, uv_write refusing, a failed write
 *	completion) and any TLS failure (handshake, record decryption,
 *	encryption, buffering) closes the connection at once: reading and the
 *	timer stop, the socket is closed (not gracefully), and ops->error is
 *	called once with a reason ("write_error", "out_of_memory",
 *	"tls_error") and a detail (libuv or GnuTLS text), which the owner
 *	logs with its context.  ops->closed follows as for any close.  After
 *	that every call on the stream is a no-op (writes return MTA_ECLOSED).
 *	No failure is ever dropped silently.
 *
 * ASYNC CONTRACT (STYLE.md)
 *	mta_stream_connect() either returns an error and never calls
 *	ops->connected, or returns 0 and calls it exactly once (with a
 *	negative libuv status on failure, UV_ECANCELED when the stream was
 *	closed first).  mta_stream_close() always returns normally and calls
 *	ops->closed exactly once per initialised stream, never from inside
 *	the call.  ops->error, ops->eof, ops->data, ops->tls_ready and
 *	ops->drained may be called from inside mta_stream_write(),
 *	mta_stream_starttls_client() (error only) or a libuv callback; they
 *	must not free the stream (free it in ops->closed).
 *
 * THREADS
 *	Loop thread only.
 *
 * OWNERSHIP
 *	Caller-owned and embedded; ops and scratch are borrowed for the
 *	stream's life.  scratch is one receive buffer shared by every stream
 *	of a loop (its bytes are copied out before the read callback returns).
 *	The read buffer's data may move on any received bytes.
 *
 * SECURITY
 *	Peer bytes are untrusted.  Received plaintext is bounded by the owner
 *	(stop reading past its limit), queued output by write_pending (the
 *	owner stops producing past its limit).  TLS input is bounded by one
 *	socket read (scratch) at a time.
 *
 * CAVEATS
 *	A handshake that stalls (peer silent) is the owner's timer's business.
 */
#ifndef MTA_STREAM_H
#define MTA_STREAM_H

#include "envelope.h"
#include "tls.h"

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#define MTA_STREAM_SCRATCH (64 * 1024)

struct mta_stream;

struct mta_stream_scratch {
	char buf[MTA_STREAM_SCRATCH];
	bool busy;
};

struct mta_stream_ops {
	void (*connected)(struct mta_stream *st, int status);
	void (*data)(struct mta_stream *st);
	void (*tls_ready)(struct mta_stream *st);
	void (*eof)(struct mta_stream *st, int status);
	void (*drained)(struct mta_stream *st);
	void (*timeout)(struct mta_stream *st);
	void (*error)(struct mta_stream *st, const char *reason,
		      const char *detail);
	void (*closed)(struct mta_stream *st);
};

struct mta_stream {
	uv_tcp_t tcp; /* public for getpeername/nodelay */
	uv_timer_t timer;
	uv_connect_t creq;
	uv_shutdown_t sreq;
	const struct mta_stream_ops *ops;
	struct mta_stream_scratch *scratch;
	void *data; /* the owner's */
	int handles_open;
	bool reading;
	bool closing;
	bool tls_on; /* STARTTLS ran: tls is initialised */
	struct mta_tls tls;
	struct mta_buf in; /* received plaintext */
	size_t in_off;	   /* consumed prefix of in */
	size_t write_pending;
	size_t write_low; /* ops->drained below this (0: never) */
	const char *error; /* reason of the failure that closed it, or NULL */
};

int mta_stream_init(struct mta_stream *st, uv_loop_t *loop,
		    const struct mta_stream_ops *ops,
		    struct mta_stream_scratch *scratch, void *data);
/* uv_accept() from server; a libuv error (the owner then closes st). */
int mta_stream_accept(struct mta_stream *st, uv_stream_t *server);
int mta_stream_connect(struct mta_stream *st, const struct sockaddr *sa);

int mta_stream_read_start(struct mta_stream *st);
void mta_stream_read_stop(struct mta_stream *st);
/* Unconsumed plaintext: its length, *p set to its start. */
size_t mta_stream_pending(const struct mta_stream *st, const uint8_t **p);
/* Marks n bytes used (at most what is pending). */
void mta_stream_consume(struct mta_stream *st, size_t n);

/* 0, or MTA_ECLOSED when the stream is closing (nothing queued), or the
 * failure that has just closed it (ops->error was called). */
int mta_stream_write(struct mta_stream *st, const void *p, size_t n);

/* 0; an error (the stream is unchanged) when the session cannot be
 * initialised.  *discarded: plaintext bytes dropped. */
int mta_stream_starttls_server(struct mta_stream *st,
			       const struct mta_tls_creds *creds,
			       size_t *discarded);
/* 0; an error when the session cannot be initialised (the stream is
 * unchanged); a handshake failing at once closes the stream (ops->error)
 * and returns MTA_ETLS. */
int mta_stream_starttls_client(struct mta_stream *st,
			       const struct mta_tls_creds *creds,
			       const char *sni);
bool mta_stream_tls_done(const struct mta_stream *st);

void mta_stream_timer(struct mta_stream *st, uint64_t ms);
void mta_stream_timer_stop(struct mta_stream *st);

void mta_stream_close(struct mta_stream *st, bool graceful);

#endif
