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
 *	            into `in` and are valid until the next call.  After the
 *	            first content violation no more BODY events come for that
 *	            message (it will end in ABORT).
 *
 *	An event may come with *consumed short of the bytes it covers (even
 *	0): when one input byte ends in two events (the last byte of a
 *	"BDAT n LAST" chunk gives BODY then MESSAGE; "BDAT 0 LAST" as the
 *	first chunk gives DATA_START then MESSAGE) the engine leaves that
 *	byte unconsumed so the driver calls again, and skips it then.  A
 *	driver that feeds the unconsumed rest again, as above, needs no
 *	special case.
 *	  MESSAGE   the message is complete and passed every check.  The
 *	            driver takes the envelope (mta_smtpd_take_envelope()),
 *	            commits it, then calls mta_smtpd_message_done(); until then
 *	            feed() consumes nothing.
 *	  ABORT     the body in progress is dropped (too big, bare CR/LF, NUL,
 *	            line too long, too many Received headers; or RSET, EHLO or
 *	            HELO between BDAT chunks, whose code is then 250); the
 *	            engine has queued the reply; the driver discards its sink.
 *	            event.code/text/verb are set as for REJECT.
 *	  STARTTLS  "220 2.0.0 Ready to start TLS" was queued.  All input after
 *	            the STARTTLS line in this buffer was discarded (TLS-04):
 *	            *consumed == len and event.len says how many bytes were
 *	            dropped.  The driver flushes the output, discards anything
 *	            else it has buffered, runs the handshake, then calls
 *	            mta_smtpd_tls_started().
 *	  AUTH      an AUTH exchange (RFC 4954) produced credentials:
 *	            event.user and event.pass (NUL-terminated, inside the
 *	            engine, valid until mta_smtpd_auth_done()) are to be
 *	            verified by the driver, off the loop thread (the hash is
 *	            slow).  Until the driver calls mta_smtpd_auth_done(),
 *	            feed() consumes nothing.  The driver must never log
 *	            event.pass.
 *	  CLOSE     the session is over (221 after QUIT, 421 after 100
 *	            client-caused 5xx replies); flush the output, then close.
 *	            *consumed == len; later feeds return CLOSE and drop input.
 *
 *	mta_smtpd_output() returns the queued reply bytes (pointer valid until
 *	the next engine call); mta_smtpd_output_consume(s, n) drops n written
 *	bytes.  The buffer holds MTA_SMTPD_OUT_SIZE bytes; feed() takes no
 *	more input while less than 2 KiB of it is free (returns NONE with
 *	*consumed < len), so a client that pipelines without reading cannot
 *	grow memory.  Draining always unblocks it.
 *
 *	mta_smtpd_take_envelope() (after MESSAGE) moves the envelope out and
 *	fills helo, client_addr (cfg), tls (tls_desc) and size (body octets
 *	emitted, without the Received header).  Allocation failures there
 *	leave those fields NULL.
 *
 *	mta_smtpd_message_done(s, result, qid) answers the final dot / BDAT
 *	LAST: result 0 -> "250 2.0.0 Ok: queued as <qid>"; MTA_EMAPFULL,
 *	-ENOSPC, -EDQUOT -> "452 4.3.1 Insufficient system storage"; anything
 *	else -> "451 4.3.0 Local error in processing".  The session continues.
 *
 *	mta_smtpd_tls_started(s, tls_desc) is called after the handshake:
 *	the session goes back to its initial state (HELO/EHLO required,
 *	TLS-05), later EHLO replies omit STARTTLS, and tls_desc (e.g.
 *	"version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384", copied, at most 127
 *	bytes, characters other than printable ASCII and '(' ')' '\' become
 *	'?') goes into the Received header's WITH comment.
 *
 *	mta_smtpd_timeout() queues "421 4.4.2 <hostname> Error: timeout
 *	exceeded" and enters CLOSED; mta_smtpd_shutdown() queues "421 4.3.2
 *	<hostname> Service shutting down" and enters CLOSED.
 *	mta_smtpd_in_message() is true from DATA's 354 (or the first BDAT
 *	chunk) until the message ends: the span of the driver's
 *	whole-message deadline.  mta_smtpd_progress() counts completed
 *	command lines and answered messages; the driver starts a new
 *	command deadline whenever it moves, so bytes trickled into one
 *	command never extend it.  mta_smtpd_sender() is the reverse-path of
 *	the transaction in progress (NULL before MAIL), valid until the
 *	next engine call.
 *
 *	Clients outside relay_networks (relay_allowed false) may only send
 *	to <Postmaster>, which is stored as cfg->postmaster when that is
 *	set.  Their messages are taken with the null reverse-path and
 *	without RET, ENVID, NOTIFY or ORCPT, so no DSN is ever generated for
 *	them and no later bounce can reach the sender they claimed (no
 *	backscatter).  With cfg->refused the session is refused outright:
 *	the greeting is "554 5.7.1 ... Relay access denied" (RFC 5321 3.1),
 *	every command but QUIT gets 503 5.7.1, and the third such reply
 *	closes the session with 421.
 *
 *	AUTH (cfg->auth, the submission listeners): offered in EHLO as
 *	"AUTH PLAIN LOGIN" only once TLS is active; before that AUTH gets
 *	"530 5.7.0 Must issue a STARTTLS command first" (RFC 3207 4, RFC 4954
 *	4).  PLAIN (RFC 4616; an authorization identity other than the
 *	authentication identity gets 535 5.7.8) and LOGIN, each with or
 *	without an initial response; "*" cancels (501 5.0.0); bad base64 gets
 *	501 5.5.2; an unknown mechanism 504 5.5.4; AUTH before EHLO, during
 *	a transaction or after success 503 5.5.1.  mta_smtpd_auth_done(s,
 *	verdict) answers the AUTH event: OK "235 2.7.0 Authentication
 *	successful", and the session is relay-allowed from then on (exactly
 *	as if the client were in relay_networks: no postmaster-only or
 *	null-sender rules); FAIL "535 5.7.8 Authentication credentials
 *	invalid" (a client-caused 5xx); TEMP "454 4.7.0 Temporary
 *	authentication failure"; LIMIT "421 4.7.0 ... Too many failed
 *	authentications" and CLOSED.  The credentials and the response lines
 *	are wiped from the engine's buffers once used.  With cfg->auth, MAIL
 *	from a client that is neither relay-allowed nor authenticated gets
 *	"530 5.7.0 Authentication required" (RFC 4954 6).
 *	mta_smtpd_authenticated() says whether AUTH succeeded.
 *
 *	mta_smtpd_received() formats the Received header (RFC 5321 §4.4) for
 *	the current transaction into buf: from <helo> ([client-ip]), by
 *	<hostname> with SMTP/ESMTP/ESMTPS plus "(version=... cipher=...)" when
 *	TLS, id <qid>, for <rcpt> only when there is exactly one recipient,
 *	and the RFC 5322 date of `now` in UTC.  Lines folded, CRLF-terminated.
 *	Returns the length (buf is also NUL-terminated), or MTA_ETOOBIG if
 *	buf is too small.  The protocol word is SMTP after HELO, ESMTP or
 *	ESMTPS (TLS) after EHLO, UTF8SMTP/UTF8SMTPS when MAIL had SMTPUTF8.
 *	The HELO argument is client-controlled: at most 255 characters, any
 *	outside [A-Za-z0-9.:_[]-] replaced by '?'.
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
 *	Every input byte is hostile.  No allocation depends on input except
 *	the envelope (one string per parameter, <= max_recipients
 *	recipients).  Limits: command line MTA_SMTPD_LINE_MAX
 *	octets including CRLF (over: 500 5.5.2, line discarded, session kept);
 *	recipients cfg->max_recipients (excess: 452 4.5.3); message size
 *	cfg->max_message_size (declared over: 552 5.3.4 at MAIL; actual over:
 *	body discarded to the real end, then 552 5.3.4); 100 Received headers
 *	(554 5.4.6); message line 998 octets without CRLF (RFC 5322 2.1.1;
 *	longer: 550 5.6.0 after the real end of data); local-part 64,
 *	domain 255, path 512 octets (501); 100 client-caused 5xx replies
 *	(421 4.7.0, close).  Only <CRLF>.<CRLF> ends DATA.  A bare CR or LF or a NUL
 *	anywhere in the content is rejected after the real end of data with
 *	550 5.6.0 (mtad stores only CRLF-clean messages and so can never relay
 *	a smuggling sequence); in a command line it gives 500 5.5.2 for the
 *	whole line.  Plaintext pipelined after STARTTLS is discarded.  Reply
 *	texts echo at most 400 octets of client data (a validated address);
 *	replies never contain client CR or LF.
 *
 * STANDARDS
 *	RFC 5321 (§3.3, §4.1, §4.2, §4.4, §4.5.2, §4.5.3), RFC 3207 STARTTLS,
 *	RFC 2920 PIPELINING, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531
 *	SMTPUTF8, RFC 2034/3463 enhanced codes, RFC 3461 DSN parameters,
 *	RFC 3030 CHUNKING, RFC 4954 AUTH with RFC 4616 PLAIN and LOGIN.  Conformance ids: SMUG-*, SRV-*, LIM-*, TLS-01..07,
 *	PIPE-*, SIZE-01..04, 8BIT-01, ESC-*, DSN-01..02, UTF8-01..02, CHK-*.
 *	Behaviour choices are in docs/smtp-server.md.
 *
 * CAVEATS
 *	max_message_size 0 means no limit (SIZE 0 is advertised);
 *	max_recipients 0 means 100.  MAIL parameters are accepted after HELO
 *	too.  The AUTH= MAIL parameter is accepted and ignored; no
 *	BINARYMIME.  REQUIRETLS (RFC 8689) is listed in EHLO only after
 *	STARTTLS (RTLS-01); the MAIL parameter (no value: 501 5.5.4) outside
 *	TLS gets 530 5.7.10 (RTLS-03) and otherwise sets env.tlsreq.  One
 *	"TLS-Required: No" header field (value case-insensitive, folding and
 *	WSP allowed) from a relay_allowed client sets env.tlsreq OPTIONAL
 *	unless REQUIRETLS was given; two or more such fields are ignored
 *	(RTLS-06..09).  The engine logs only its mode changes,
 *	at debug level (event=smtpd_state old=<mode> new=<mode>, modes cmd,
 *	data, bdat, wait, tls, auth, closed); the driver logs from the events.
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
	bool refused;		   /* 554 greeting, 503 to all but QUIT */
	const char *postmaster;	   /* <Postmaster> goes here; NULL: kept */
	const char *client_addr;   /* printable IP, for Received */
	bool auth;		   /* offer AUTH (after TLS); submission */
};

enum mta_smtpd_auth_verdict {
	MTA_SMTPD_AUTH_OK = 0,
	MTA_SMTPD_AUTH_FAIL,
	MTA_SMTPD_AUTH_TEMP,
	MTA_SMTPD_AUTH_LIMIT,
};

#define MTA_SMTPD_AUTH_MAX 255 /* user name and password octets */

enum mta_smtpd_ev {
	MTA_SMTPD_EV_NONE = 0,
	MTA_SMTPD_EV_REJECT,
	MTA_SMTPD_EV_DATA_START,
	MTA_SMTPD_EV_BODY,
	MTA_SMTPD_EV_MESSAGE,
	MTA_SMTPD_EV_ABORT,
	MTA_SMTPD_EV_STARTTLS,
	MTA_SMTPD_EV_CLOSE,
	MTA_SMTPD_EV_AUTH,
};

struct mta_smtpd_event {
	const uint8_t *data; /* BODY */
	size_t len;	     /* BODY; STARTTLS: discarded plaintext bytes */
	int code;	     /* REJECT/ABORT: reply code */
	const char *text;    /* REJECT/ABORT: first reply line */
	const char *verb;    /* REJECT/ABORT: command verb */
	const char *user;    /* AUTH: authentication identity */
	const char *pass;    /* AUTH: password; never log it */
};

#define MTA_SMTPD_OUT_SIZE 16384 /* reply buffer inside the struct */

/* The engine state is visible so the caller can embed it; fields are
 * private to smtp_server.c. */
struct mta_smtpd {
	const struct mta_smtpd_config *cfg;
	uint8_t mode;	    /* input mode (smtp_server.c enum mode) */
	uint8_t helo_state; /* none, HELO, EHLO */
	bool tls;	    /* tls_started() was called */
	bool hold;	    /* next input byte already processed */
	unsigned errors;    /* client-caused 5xx replies */
	uint32_t progress;  /* commands and messages completed */

	/* transaction */
	struct mta_envelope env;
	bool mail_ok;	   /* MAIL accepted */
	bool bdat_open;	   /* first BDAT chunk accepted (sink open) */
	bool bdat_discard; /* current chunk is read and dropped */
	bool bdat_last;	   /* current chunk is LAST */
	uint64_t bdat_size, bdat_left;

	/* body checks, shared by DATA and BDAT */
	uint64_t b_size;    /* content octets (dot-unstuffed) */
	uint32_t b_linelen; /* octets in the current line, sans CRLF */
	uint32_t b_rcvd;    /* Received: headers seen */
	int8_t b_rmatch;    /* chars of "received:" matched, -1 none */
	int8_t b_tmatch;    /* chars of "tls-required:" matched, -1 none */
	bool b_tcapt;	    /* collecting a TLS-Required value */
	bool b_tpend;	    /* that value may continue (folding) */
	bool b_tno;	    /* the last TLS-Required value was "No" */
	uint8_t b_tcount;   /* TLS-Required fields seen */
	uint8_t b_tlen;	    /* octets of the value (> sizeof: too long) */
	char b_tval[16];
	bool b_cr;	    /* last content byte was CR */
	bool b_hdr_done;    /* empty line seen */
	uint8_t b_viol;	    /* first violation found */
	uint8_t d_state;    /* DATA framing: BOL, MID, DOT, DOTCR */

	/* command line */
	char line[MTA_SMTPD_LINE_MAX];
	size_t l_len;
	bool l_cr, l_bad, l_long;

	/* AUTH (RFC 4954) */
	bool authed;	    /* AUTH succeeded: relay-allowed */
	uint8_t auth_step;  /* awaiting a response line (smtp_server.c) */
	char auth_user[MTA_SMTPD_AUTH_MAX + 1];
	char auth_pass[MTA_SMTPD_AUTH_MAX + 1];

	char helo[MTA_SMTPD_LINE_MAX]; /* HELO/EHLO argument, raw */
	char tls_desc[128];
	char evtext[320]; /* event.text */

	uint8_t out[MTA_SMTPD_OUT_SIZE];
	size_t out_off, out_len;
};

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
bool mta_smtpd_in_message(const struct mta_smtpd *s);
uint32_t mta_smtpd_progress(const struct mta_smtpd *s);
const char *mta_smtpd_sender(const struct mta_smtpd *s);
bool mta_smtpd_closed(const struct mta_smtpd *s);
void mta_smtpd_auth_done(struct mta_smtpd *s,
			 enum mta_smtpd_auth_verdict verdict);
bool mta_smtpd_authenticated(const struct mta_smtpd *s);
int mta_smtpd_received(const struct mta_smtpd *s, const char *qid, time_t now,
		       char *buf, size_t len);

#endif
