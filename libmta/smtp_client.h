/*
 * smtp_client.h - sans-I/O SMTP client engine (one outbound connection).
 *
 * DESCRIPTION
 *	One struct mta_smtpc per outbound connection.  The driver (delivery,
 *	a unit test, a fuzzer) connects, feeds the engine the bytes the peer
 *	sent, writes out the bytes the engine queued, and acts on the events
 *	the engine returns.  The engine does no I/O, reads no clock and
 *	allocates nothing: every buffer is inside the struct.  The sequence it
 *	runs is: greeting, EHLO (HELO after a 5xx to EHLO), STARTTLS per
 *	cfg->tls, EHLO again over TLS, AUTH PLAIN when configured, then any
 *	number of transactions started by the driver, then QUIT.
 *
 *	mta_smtpc_init() prepares a connection for cfg (the pointer is kept
 *	and must outlive the connection) and waits for the greeting.  It
 *	returns MTA_ECONFIG, and the connection must not be used, when
 *	helo_name is missing or not an ASCII host name / address literal
 *	(UTF8-05), when only one of auth_user/auth_pass is set, when either
 *	is longer than MTA_SMTPC_AUTH_MAX, or when tls is out of range.
 *	mta_smtpc_free() wipes the struct (the output buffer may have held
 *	credentials); it never frees cfg or the transaction.
 *
 *	mta_smtpc_feed() consumes peer bytes from in[0..len) and stops at the
 *	first event the driver must act on, setting *consumed.  The driver
 *	loops exactly like the server engine's driver:
 *
 *	    while (off < len) {
 *	        e = mta_smtpc_feed(c, in + off, len - off, &n, &ev);
 *	        off += n;
 *	        switch (e) { ... }   // NONE with n == 0: drain output, retry
 *	    }
 *
 *	Events are only ever returned by feed().  After any other call that
 *	can create events (start_txn, quit, body, tls_started, timeout, eof,
 *	abort) the driver calls feed(c, NULL, 0, ...) until it returns NONE.
 *	Pending events are returned before any input is consumed (with
 *	*consumed == 0).  Events (enum mta_smtpc_ev):
 *	  NONE      nothing to do.  *consumed < len only when the output
 *	            buffer is nearly full: write it out, feed the rest again.
 *	  STARTTLS  the peer answered 220 to STARTTLS.  Every byte after that
 *	            reply line in this buffer was discarded (TLS-11, response
 *	            injection): *consumed == len and ev.len is the number of
 *	            bytes dropped.  Bytes fed before mta_smtpc_tls_started()
 *	            are dropped too.  The driver flushes the output, runs the
 *	            handshake and its policy checks (DANE, MTA-STS, verify),
 *	            then calls mta_smtpc_tls_started() (the engine sends EHLO
 *	            again and forgets every pre-TLS capability, TLS-10), or
 *	            mta_smtpc_abort() when the channel is not good enough.
 *	  READY     the connection is idle: greeting, EHLO, STARTTLS, AUTH
 *	            are done, or the previous transaction is finished.  The
 *	            driver calls mta_smtpc_start_txn() or mta_smtpc_quit().
 *	  NEED_BODY the peer answered 354.  The driver calls mta_smtpc_body()
 *	            with the stored body, in pieces, while
 *	            mta_smtpc_wants_body() is true, the last piece with
 *	            last = true.
 *	  RCPT_RESULT the final result of one recipient of the transaction,
 *	            exactly once per recipient: ev.index (position in
 *	            txn->rcpts), ev.code (the peer's reply code, or 0 when the
 *	            result was made by the engine or no reply came), ev.status
 *	            ("x.y.z": the reply's enhanced code when its class matches
 *	            the reply code, else 2.0.0/4.0.0/5.0.0 from the code
 *	            class, or the engine's own code), ev.text (one line for
 *	            logs and DSNs, control characters replaced by '?').
 *	            The class of ev.status decides: 2 delivered, 4 retry, 5
 *	            bounce.  A rejected RCPT is reported when its reply
 *	            arrives; accepted recipients are reported with the reply
 *	            to the final dot (CLI-05).
 *	  TXN_DONE  after the last RCPT_RESULT of a transaction; the engine no
 *	            longer uses the txn or the envelope.
 *	  FAIL      a host-level failure: ev.code, ev.status, ev.text and
 *	            ev.stage ("greeting", "ehlo", "helo", "starttls", "auth",
 *	            "idle", "rset", "mail", "rcpt", "data", "dot", "quit";
 *	            "connect" is left to the driver).  The recipients of an
 *	            open transaction first get their RCPT_RESULT and TXN_DONE;
 *	            while a transaction is open the status is always of class
 *	            4 (a host failure never bounces a recipient: CLI-06), and
 *	            the recipients get that same status.  CLOSED follows.
 *	  CLOSED    after the reply to QUIT (or EOF after QUIT) and after
 *	            FAIL.  The driver writes out what is left in the output
 *	            (a courtesy QUIT after some failures) and closes.
 *
 *	mta_smtpc_output() returns the queued bytes (pointer valid until the
 *	next engine call); mta_smtpc_output_consume(c, n) drops n written
 *	bytes and may queue more pipelined commands.
 *
 *	mta_smtpc_start_txn(c, txn) starts a transaction; only after READY.
 *	The engine first checks, without sending anything, what would make
 *	the peer's acceptance pointless: txn->size above the peer's SIZE
 *	(every recipient 5.3.4, SIZE-05), an SMTPUTF8 envelope and a peer
 *	without SMTPUTF8 (5.6.7, UTF8-03), a BODY=8BITMIME envelope and a
 *	peer without 8BITMIME (5.6.3, 8BIT-03: bounced, never downgraded),
 *	an envelope string the engine will not put on the wire (5.1.7 bad
 *	sender, 5.5.4 bad ENVID/RET; see SECURITY).  Such a transaction ends
 *	with its RCPT_RESULTs, TXN_DONE and READY; the connection stays
 *	usable.  A recipient with a bad address (5.1.3) or bad NOTIFY/ORCPT
 *	(5.5.4) is never sent and gets that result at the end.  Otherwise it
 *	sends [RSET] MAIL, the RCPTs and DATA: as one group when the peer
 *	offers PIPELINING (replies matched by count, RFC 2920), else one
 *	command at a time (no DATA when no RCPT was accepted).  MAIL carries
 *	SIZE=txn->size when SIZE is offered (SIZE-06), BODY= as the envelope
 *	says and SMTPUTF8 when needed and offered, RET= and ENVID= (raw,
 *	byte-identical) only when DSN is offered; RCPT carries NOTIFY= and
 *	ORCPT= (raw) only when DSN is offered (DSN-03/04).  A 4xx/5xx to MAIL
 *	is every recipient's result; a 4xx/5xx to RCPT is that recipient's;
 *	a 4xx/5xx to DATA or to the final dot is the result of every
 *	accepted recipient.  When DATA gets 354 but no RCPT was accepted the
 *	engine sends a lone ".\r\n" (PIPE-06).  Returns 0, -EINVAL (not
 *	READY, NULL env, no recipients, index out of range) or MTA_ETOOBIG
 *	(more than MTA_SMTPC_MAX_RCPT recipients); on error nothing changed.
 *
 *	mta_smtpc_wants_body() is true while the engine is in the body and
 *	has room for at least MTA_SMTPC_BODY_ROOM more output bytes.
 *	mta_smtpc_body(c, data, len, last) converts stored body bytes to the
 *	wire form and returns how many it took (less than len when the
 *	output is full: write out, call again with the rest).  Every bare CR
 *	and bare LF becomes CRLF (SMUG-05, CLI-13), a line starting with '.'
 *	gets another '.' (SMUG-08), and once the last byte is taken with last
 *	set, a missing final CRLF is added and ".\r\n" queued (SMUG-10).  A
 *	body that holds "\n.\r\n" therefore cannot end the data early
 *	(SMUG-11).  Returns 0 when not in the body.
 *
 *	mta_smtpc_quit() queues QUIT (only after READY); -EINVAL otherwise.
 *	mta_smtpc_tls_started() sends EHLO after the handshake; -EINVAL when
 *	no STARTTLS event is outstanding.
 *
 *	mta_smtpc_timeout_ms() returns the RFC 5321 §4.5.3.2 minimum for the
 *	current wait (CLI-08): 5 min for the greeting, EHLO/HELO, MAIL,
 *	RCPT and everything else; 2 min for the reply to DATA; 3 min per
 *	data block while the body is being written; 10 min for the reply to
 *	the final dot; 0 once closed.  The driver re-arms its timer after
 *	every read and write.  mta_smtpc_timeout() (the timer fired) ends
 *	the connection with FAIL 4.4.2 "timeout"; mta_smtpc_eof() (the peer
 *	closed, or a read/write error) with FAIL 4.4.2 "connection lost",
 *	or with CLOSED when QUIT was sent.  mta_smtpc_abort(c, status, text)
 *	is the driver's own host failure (a handshake or policy failure
 *	after STARTTLS, shutdown): FAIL with code 0 and the given status
 *	("4.7.5") and text.  All three do nothing once closed.
 *
 *	mta_smtpc_caps() returns the capabilities of the latest EHLO reply
 *	(all false after HELO or before EHLO); mta_smtpc_in_tls() says
 *	whether tls_started() was called; mta_smtpc_closed() whether the
 *	connection is over (FAIL or CLOSED returned or pending).
 *	Every state change is logged at debug level as event=smtpc_state
 *	old=<state> new=<state> (states "greeting", "ehlo", ..., "closed");
 *	the engine logs nothing else.
 *
 * THREADS
 *	Loop thread (one connection, one thread).
 *
 * OWNERSHIP
 *	struct mta_smtpc is caller-owned (embed it).  cfg is borrowed for the
 *	life of the connection.  The txn, its rcpts array and the envelope
 *	are borrowed from mta_smtpc_start_txn() until TXN_DONE has been
 *	returned.  Pointers in an event and from mta_smtpc_output() point
 *	into the struct and are valid until the next engine call.
 *
 * ERRORS
 *	Peer failures are events, never return codes.  Calls made in the
 *	wrong state return -EINVAL and change nothing.
 *
 * SECURITY
 *	Every byte from the peer is hostile.  A reply line may hold at most
 *	MTA_SMTPC_LINE_MAX octets before its LF and a whole (multi-line)
 *	reply at most MTA_SMTPC_REPLY_MAX; a longer line or reply, a line
 *	that does not start with a valid 3-digit code and SP/'-'/end, a CR
 *	inside a line, lines of one reply with different codes, a reply
 *	nothing was waiting for, and a reply code that makes no sense for the
 *	command (3xx to MAIL) end the connection: FAIL 4.5.0 "protocol
 *	error".  421 ends it at any time (FAIL, class 4 for open recipients).
 *	After the 220 to STARTTLS nothing received in plaintext is used
 *	(TLS-11), and after the handshake the capabilities come only from
 *	the new EHLO (TLS-10); STARTTLS is sent once at most, alone (TLS-12).
 *	Credentials are sent only with AUTH PLAIN, only after TLS: a peer
 *	that offers AUTH in clear, or no AUTH PLAIN, ends the connection
 *	with FAIL 4.7.0 before anything is sent.  Envelope strings are
 *	checked before they are put on the wire: no control characters, at
 *	most MTA_SMTPC_PARAM_MAX octets, and for ENVID, RET, NOTIFY, ORCPT
 *	only printable ASCII without spaces, so a corrupt spool record cannot
 *	inject commands.  The body is only ever sent CRLF-clean and
 *	dot-stuffed.  Output is bounded by MTA_SMTPC_OUT_SIZE; pipelined
 *	commands are queued as room appears.
 *
 * STANDARDS
 *	RFC 5321 (§3.1, §3.3, §4.1.1.4, §4.2, §4.5.2, §4.5.3.2, §4.5.4),
 *	RFC 3207 STARTTLS (client), RFC 2920 PIPELINING, RFC 1870 SIZE,
 *	RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3461 §5.2 (DSN relay),
 *	RFC 2034/3463 enhanced status codes, RFC 4954 + RFC 4616 AUTH PLAIN.
 *	Conformance ids: CLI-05/06/08/09/11/12/13, SMUG-05/08/10/11,
 *	TLS-10..13, PIPE-06, SIZE-05/06, 8BIT-02/03, DSN-03/04, UTF8-03/05,
 *	CHK-08 (BDAT is never sent, even to CHUNKING peers).
 *
 * CAVEATS
 *	8BIT-03 choice: an 8BITMIME message to a peer without 8BITMIME is
 *	bounced (5.6.3), never converted to 7 bit.
 *	SIZE= declares txn->size.  The engine adds bytes only to a body that
 *	is not CRLF-clean (bare CR/LF, missing final CRLF), which mtad never
 *	stores; for such a body the wire size may exceed the declaration.
 *	RSET is sent lazily, as the first command of the next transaction,
 *	after a transaction that did not end with a 2xx to the final dot;
 *	no RSET precedes QUIT.
 *	When auth_user is set and the peer does not offer AUTH PLAIN over
 *	TLS the connection fails (4.7.0): configured credentials mean the
 *	peer requires them.
 *	Reply lines ending in a bare LF are accepted (lenient reading); the
 *	engine itself only ever sends CRLF.
 *	STARTTLS REQUIRE: a 4xx/5xx to STARTTLS, or no STARTTLS in the EHLO
 *	reply, is FAIL 4.7.4 with the peer's code (0 when not offered).
 *	STARTTLS MAY: the same conditions continue in clear.
 *	cfg->requiretls: a session without TLS, or whose post-STARTTLS EHLO
 *	does not list REQUIRETLS, is FAIL 5.7.30 (stage "ehlo", QUIT sent).
 *	MAIL carries REQUIRETLS when the envelope has it (env->tlsreq) and
 *	the peer lists it over TLS (an NDR with a null sender goes on
 *	without it to a peer that does not: RTLS-29).
 *	A FAIL while a transaction is open turns a 5.x.y status into 4.x.y.
 */
#ifndef MTA_SMTP_CLIENT_H
#define MTA_SMTP_CLIENT_H

#include "envelope.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_SMTPC_LINE_MAX 4096	  /* reply line, before CR LF */
#define MTA_SMTPC_REPLY_MAX 65536 /* one reply, all lines, with CR LF */
#define MTA_SMTPC_TEXT_MAX 512	  /* event text incl. NUL (truncated) */
#define MTA_SMTPC_OUT_SIZE 16384  /* output buffer inside the struct */
#define MTA_SMTPC_BODY_ROOM 2048  /* wants_body() needs this much room */
#define MTA_SMTPC_MAX_RCPT 1000	  /* recipients per transaction */
#define MTA_SMTPC_PARAM_MAX 1000  /* an address or parameter value */
#define MTA_SMTPC_AUTH_MAX 255	  /* auth_user, auth_pass */
#define MTA_SMTPC_HELO_MAX 255

enum mta_smtpc_tls {
	MTA_SMTPC_TLS_NONE = 0,	   /* never STARTTLS */
	MTA_SMTPC_TLS_MAY = 1,	   /* if offered; 454 / absent: clear */
	MTA_SMTPC_TLS_REQUIRE = 2, /* absent / 4xx / 5xx: FAIL 4.7.4 */
};

struct mta_smtpc_config {
	const char *helo_name; /* EHLO/HELO argument: ASCII (A-labels) */
	enum mta_smtpc_tls tls;
	const char *auth_user; /* NULL = no AUTH; PLAIN, only after TLS */
	const char *auth_pass;
	/* or, instead of auth_pass: the ready AUTH PLAIN argument (base64 of
	 * "\0user\0pass", from the key holder), so the password itself is
	 * never in this process; auth_user must still be set (it turns
	 * AUTH on) */
	const char *auth_plain;
	bool requiretls; /* RFC 8689: after TLS the peer must list
			  * REQUIRETLS, else FAIL 5.7.30 (after QUIT) */
};

struct mta_smtpc_caps {
	bool esmtp; /* EHLO was accepted (false after HELO fallback) */
	bool pipelining;
	bool size;
	uint64_t size_max; /* SIZE parameter; 0 = none / no limit */
	bool eightbitmime;
	bool smtputf8;
	bool dsn;
	bool starttls;
	bool auth;	 /* AUTH offered (any mechanism) */
	bool auth_plain; /* PLAIN among the mechanisms */
	bool enhancedstatuscodes;
	bool chunking; /* parsed for logs; BDAT is never used */
	bool requiretls; /* RFC 8689 */
};

struct mta_smtpc_txn {
	const struct mta_envelope *env;
	const size_t *rcpts; /* indexes into env->rcpts */
	size_t nrcpt;
	uint64_t size; /* exact stored body bytes */
};

enum mta_smtpc_ev {
	MTA_SMTPC_EV_NONE = 0,
	MTA_SMTPC_EV_STARTTLS,
	MTA_SMTPC_EV_READY,
	MTA_SMTPC_EV_NEED_BODY,
	MTA_SMTPC_EV_RCPT_RESULT,
	MTA_SMTPC_EV_TXN_DONE,
	MTA_SMTPC_EV_FAIL,
	MTA_SMTPC_EV_CLOSED,
};

struct mta_smtpc_event {
	size_t len;	    /* STARTTLS: plaintext bytes discarded */
	size_t index;	    /* RCPT_RESULT: position in txn->rcpts */
	int code;	    /* RCPT_RESULT, FAIL: reply code, 0 = none */
	const char *status; /* RCPT_RESULT, FAIL: "x.y.z" */
	const char *text;   /* RCPT_RESULT, FAIL: one line */
	const char *stage;  /* FAIL: see DESCRIPTION */
};

/* The engine state is visible so the caller can embed it; the fields are
 * private to smtp_client.c. */
struct mta_smtpc {
	const struct mta_smtpc_config *cfg;
	uint8_t state;	     /* smtp_client.c enum state */
	bool tls;	     /* tls_started() was called */
	bool tried_tls;	     /* STARTTLS was sent (never twice) */
	bool authed;	     /* AUTH succeeded */
	bool need_rset;	     /* RSET before the next MAIL */
	struct mta_smtpc_caps caps;

	/* reply being read */
	char line[MTA_SMTPC_LINE_MAX + 2]; /* + CR + NUL */
	size_t l_len;
	int r_code;	   /* code of the reply being read, 0 = none */
	size_t r_size;	   /* octets of the reply so far */
	unsigned r_lines;  /* lines of the reply so far */
	char r_status[16]; /* of the last complete reply */
	char r_text[MTA_SMTPC_TEXT_MAX];

	/* transaction */
	const struct mta_smtpc_txn *txn;
	size_t w_rcpt, r_rcpt; /* next RCPT to write / to match a reply */
	size_t accepted;       /* RCPTs answered 2xx */
	bool t_rset, w_rset_done, w_mail_done, w_data_done;
	bool a_rset, a_mail, a_data; /* answered */
	bool t_stop;		     /* write nothing more (MAIL failed) */
	bool t_lone_dot;	     /* "." sent without content */
	uint8_t done[(MTA_SMTPC_MAX_RCPT + 7) / 8]; /* result returned */

	/* body */
	bool b_bol, b_cr, b_end;

	/* events to return */
	unsigned pend;	    /* smtp_client.c P_* bits */
	size_t p_cursor;    /* next recipient for P_RESULTS */
	size_t p_one;	    /* recipient for P_ONE (rejected RCPT) */
	int f_code;	    /* result for the remaining recipients */
	char f_status[16];
	char f_text[MTA_SMTPC_TEXT_MAX];
	int x_code;	    /* FAIL */
	char x_status[16];
	char x_text[MTA_SMTPC_TEXT_MAX];
	const char *x_stage;

	uint8_t out[MTA_SMTPC_OUT_SIZE];
	size_t out_off, out_len;
};

int mta_smtpc_init(struct mta_smtpc *c, const struct mta_smtpc_config *cfg);
void mta_smtpc_free(struct mta_smtpc *c);
enum mta_smtpc_ev mta_smtpc_feed(struct mta_smtpc *c, const uint8_t *in,
				 size_t len, size_t *consumed,
				 struct mta_smtpc_event *ev);
size_t mta_smtpc_output(const struct mta_smtpc *c, const uint8_t **p);
void mta_smtpc_output_consume(struct mta_smtpc *c, size_t n);
int mta_smtpc_start_txn(struct mta_smtpc *c,
			const struct mta_smtpc_txn *txn);
bool mta_smtpc_wants_body(const struct mta_smtpc *c);
size_t mta_smtpc_body(struct mta_smtpc *c, const uint8_t *data, size_t len,
		      bool last);
int mta_smtpc_quit(struct mta_smtpc *c);
int mta_smtpc_tls_started(struct mta_smtpc *c);
unsigned mta_smtpc_timeout_ms(const struct mta_smtpc *c);
void mta_smtpc_timeout(struct mta_smtpc *c);
void mta_smtpc_eof(struct mta_smtpc *c);
void mta_smtpc_abort(struct mta_smtpc *c, const char *status,
		     const char *text);
const struct mta_smtpc_caps *mta_smtpc_caps(const struct mta_smtpc *c);
bool mta_smtpc_in_tls(const struct mta_smtpc *c);
bool mta_smtpc_closed(const struct mta_smtpc *c);

#endif
