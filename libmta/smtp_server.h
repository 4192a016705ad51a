/*
 * smtp_server.h - sans-I/O SMTP server engine (RFC 5321 and extensions).
 *
 * DESCRIPTION
 *	One struct mta_smtpd per inbound session.  The driver (mtad's
 *	listener, a unit test, a fuzzer) feeds it the bytes the client sent and
 *	writes out the bytes the engine queued in its output buffer.  The engine
 *	does no I/O, reads no clock and keeps every buffer inside the struct;
 *	the only heap memory it uses is the envelope (bounded by
 *	max_recipients) via envelope.h.
 *
 *	mta_smtpd_init() prepares a session for cfg (the pointer is kept and
 *	must outlive the session).  mta_smtpd_greet() queues the 220 greeting.
 *	Input fed before the greeting is processed after it like any other
 *	input (junk lines get 500 5.5.2).
 *
 *	mta_smtpd_feed() consumes bytes from in[0..len) and stops at the first
 *	event the driver must act on, setting *consumed.  The driver loops:
 *
 *	    while (off < len) {
 *	        ev = mta_smtpd_feed(s, in + off, len - off, &n, &event);
 *	        off += n;
 *	        switch (ev) { ... }      // NONE with n == 0: stop, see below
 *	    }
 *
 *	Events (enum mta_smtpd_ev):
 *	  NONE      nothing to do; if *consumed < len the engine is blocked
 *	            (output buffer above its high-water mark, or waiting for
 *	            mta_smtpd_message_done()); drain output / wait, feed again.
 *	  REJECT    a 4xx/5xx reply was queued; event.code, event.text (the
 *	            reply's first line, NUL-terminated, valid until the next
 *	            call) and event.verb ("MAIL", "RCPT", "DATA", "BDAT",
 *	            "UNKNOWN", ...) are for the driver's log line.
 *	  DATA_START a message body begins (354 queued for DATA, or the first
 *	            BDAT chunk of a transaction); the driver assigns a queue id
 *	            and opens its body sink, writing the Received header first
 *	            (mta_smtpd_received()).
 *	  BODY      event.data/event.len are message bytes, already
 *	            dot-unstuffed, to append to the sink in order; they point
 *	            into `in` or into the engine and are valid until the next
 *	            call.
 *	  MESSAGE   the message is complete and passed every check.  The
 *	            driver takes the envelope (mta_smtpd_take_envelope()),
 *	            commits it, then calls mta_smtpd_message_done(); until then
 *	            feed() consumes nothing.
 *	  ABORT     the body in progress is dropped (too big, bare CR/LF, NUL,
 *	            too many Received headers, RSET between BDAT chunks...); the
 *	            engine has queued the error reply; the driver discards its
 *	            sink.  Also emitted as REJECT-like: event.code/text/verb set.
 *	  STARTTLS  "220 2.0.0 Ready to start TLS" was queued.  All input after
 *	            the STARTTLS line in this buffer was discarded (TLS-04):
 *	            *consumed == len and event.len says how many bytes were
 *	            dropped.  The driver flushes the output, discards anything
 *	            else it has buffered, runs the handshake, then calls
 *	            mta_smtpd_tls_started().
 *	  CLOSE     the session is over (221 after QUIT, 421 on a fatal
 *	            condition); flush the output, then close.
 *
 *	mta_smtpd_output() returns the queued reply bytes (pointer valid until
 *	the next engine call); mta_smtpd_output_consume(s, n) drops n written
 *	bytes.
 *
 *	mta_smtpd_message_done(s, result, qid) answers the final dot / BDAT
 *	LAST: result 0 -> "250 2.0.0 Ok: queued as <qid>"; MTA_EMAPFULL,
 *	-ENOSPC, -EDQUOT -> "452 4.3.1 Insufficient system storage"; anything
 *	else -> "451 4.3.0 Local error in processing".  The session continues.
 *
 *	mta_smtpd_timeout() queues "421 4.4.2 <hostname> Error: timeout
 *	exceeded" and enters CLOSED; mta_smtpd_shutdown() queues "421 4.3.2
 *	<hostname> Service shutting down" and enters CLOSED.
 *	mta_smtpd_in_data() tells the driver which timeout applies.
 *
 *	mta_smtpd_received() formats the Received header (RFC 5321 §4.4) for
 *	the current transaction into buf: from <helo> ([client-ip]), by
 *	<hostname> with SMTP/ESMTP/ESMTPS plus "(version=... cipher=...)" when
 *	TLS, id <qid>, for <rcpt> only when there is exactly one recipient,
 *	and the RFC 5322 date of `now` in UTC.  Lines folded, CRLF-terminated.
 *	Returns the length, or MTA_ETOOBIG if buf is too small.
 *
 * THREADS
 *	Loop thread (one session, one thread).
 *
 * OWNERSHIP
 *	struct mta_smtpd is caller-owned (embed it); mta_smtpd_free() releases
 *	the envelope in progress.  mta_smtpd_take_envelope() moves the
 *	envelope to the caller, who frees it with mta_envelope_free().
 *
 * SECURITY
 *	Every input byte is hostile.  Limits: command line MTA_SMTPD_LINE_MAX
 *	octets including CRLF (over: 500 5.5.2, line discarded, session kept);
 *	recipients cfg->max_recipients (excess: 452 4.5.3); message size
 *	cfg->max_message_size (declared over: 552 5.3.4 at MAIL; actual over:
 *	body discarded to the real end, then 552 5.3.4); 100 Received headers
 *	(554 5.4.6).  Only <CRLF>.<CRLF> ends DATA.  A bare CR or LF or a NUL
 *	anywhere in the content is rejected after the real end of data with
 *	550 5.6.0 (mtad stores only CRLF-clean messages and so can never relay
 *	a smuggling sequence); in a command line it gives 500 5.5.2 for the
 *	whole line.  Plaintext pipelined after STARTTLS is discarded.
 *
 * STANDARDS
 *	RFC 5321 (§3.3, §4.1, §4.2, §4.4, §4.5.2, §4.5.3), RFC 3207 STARTTLS,
 *	RFC 2920 PIPELINING, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531
 *	SMTPUTF8, RFC 2034/3463 enhanced codes, RFC 3461 DSN parameters,
 *	RFC 3030 CHUNKING.  Conformance ids: SMUG-*, SRV-*, LIM-*, TLS-01..07,
 *	PIPE-*, SIZE-01..04, 8BIT-01, ESC-*, DSN-01..02, UTF8-01..02, CHK-*.
 */
#ifndef MTA_SMTP_SERVER_H
#define MTA_SMTP_SERVER_H

#include "envelope.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define MTA_SMTPD_LINE_MAX 2048 /* command line incl. CRLF (>= 1036, LIM-03) */

struct mta_smtpd_config {
	const char *hostname;	   /* greeting, EHLO, Received */
	uint64_t max_message_size; /* SIZE advertised and enforced */
	unsigned max_recipients;   /* per transaction */
	bool starttls;		   /* advertise/accept STARTTLS (cert loaded) */
	bool relay_allowed;	   /* client may relay (relay_networks) */
	const char *client_addr;   /* printable IP, for Received */
};

enum mta_smtpd_ev {
	MTA_SMTPD_EV_NONE = 0,
	MTA_SMTPD_EV_REJECT,
	MTA_SMTPD_EV_DATA_START,
	MTA_SMTPD_EV_BODY,
	MTA_SMTPD_EV_MESSAGE,
	MTA_SMTPD_EV_ABORT,
	MTA_SMTPD_EV_STARTTLS,
	MTA_SMTPD_EV_CLOSE,
};

struct mta_smtpd_event {
	const uint8_t *data; /* BODY */
	size_t len;	     /* BODY; STARTTLS: discarded plaintext bytes */
	int code;	     /* REJECT/ABORT: reply code */
	const char *text;    /* REJECT/ABORT: first reply line */
	const char *verb;    /* REJECT/ABORT: command verb */
};

/* The engine state is visible so the caller can embed it; fields are
 * private to smtp_server.c. */
struct mta_smtpd;
#include "smtp_server_impl.h"

void mta_smtpd_init(struct mta_smtpd *s, const struct mta_smtpd_config *cfg);
void mta_smtpd_free(struct mta_smtpd *s);
void mta_smtpd_greet(struct mta_smtpd *s);
enum mta_smtpd_ev mta_smtpd_feed(struct mta_smtpd *s, const uint8_t *in,
				 size_t len, size_t *consumed,
				 struct mta_smtpd_event *ev);
size_t mta_smtpd_output(const struct mta_smtpd *s, const uint8_t **p);
void mta_smtpd_output_consume(struct mta_smtpd *s, size_t n);
void mta_smtpd_take_envelope(struct mta_smtpd *s, struct mta_envelope *out);
void mta_smtpd_message_done(struct mta_smtpd *s, int result, const char *qid);
void mta_smtpd_tls_started(struct mta_smtpd *s, const char *tls_desc);
void mta_smtpd_timeout(struct mta_smtpd *s);
void mta_smtpd_shutdown(struct mta_smtpd *s);
bool mta_smtpd_in_data(const struct mta_smtpd *s);
bool mta_smtpd_closed(const struct mta_smtpd *s);
int mta_smtpd_received(const struct mta_smtpd *s, const char *qid, time_t now,
		       char *buf, size_t len);

#endif
