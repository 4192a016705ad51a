/*
 * dsn.h - delivery status notifications (bounces, delay warnings, success
 * reports): when to send one, and the message itself.
 *
 * DESCRIPTION
 *	Sans-I/O: no clock (the caller passes now), no randomness (the caller
 *	passes a unique token), no I/O (the original message is read through
 *	a caller-supplied callback).  The module decides and builds; the
 *	caller sends the result with MAIL FROM:<> to env->sender, with no
 *	RET parameter and NOTIFY=NEVER if the next hop speaks DSN (DSN-09,
 *	RFC 3461 §6.1), dot-stuffing it as for any message.
 *
 *	mta_dsn_needed() says whether recipient rcpt_index of env wants a
 *	notice of the given action, per RFC 3461 NOTIFY rules:
 *	  - never for a null reverse-path (env->sender == "" or NULL): no
 *	    bounce of a bounce (DSN-06, RFC 5321 §4.5.5);
 *	  - never with NOTIFY=NEVER (it wins over any other bit);
 *	  - FAILED: unless NOTIFY was given without FAILURE;
 *	  - DELAYED: only if NOTIFY contains DELAY (DSN-05).  With NOTIFY
 *	    absent RFC 3461 §5.2 leaves delay warnings to the MTA; mtad
 *	    sends none;
 *	  - DELIVERED, RELAYED: only if NOTIFY contains SUCCESS (DSN-04).
 *	The caller filters the recipients of one attempt with it and builds
 *	one DSN for all those that need one (not one per recipient).
 *
 *	mta_dsn_build() appends to out a complete RFC 5322 message:
 *	  From: "Mail Delivery System" <MAILER-DAEMON@reporting_mta>
 *	  To: <env->sender>, Subject (by the most severe action: failed >
 *	  delayed > delivered/relayed), Date (now_us), Message-ID
 *	  (<unique@reporting_mta>), Auto-Submitted: auto-replied,
 *	  MIME-Version, Content-Type: multipart/report;
 *	  report-type=delivery-status; boundary=...
 *	and three parts (DSN-07):
 *	  1. text/plain; charset=us-ascii: what happened to whom, in plain
 *	     words, quoting each reason (the remote reply or mtad's own, e.g.
 *	     "TLSA records for mx.example.net did not match the certificate
 *	     presented") and the remote host.
 *	  2. message/delivery-status (RFC 3464 §2; DSN-08):
 *	     Original-Envelope-Id (iff ENVID; xtext decoded, RFC 3461 §6.3
 *	     (a)), Reporting-MTA: dns; Arrival-Date (if env->arrival_us
 *	     != 0); per recipient
 *	     Original-Recipient (iff ORCPT; "rfc822;" values xtext decoded),
 *	     Final-Recipient: rfc822; (utf-8; per RFC 6533 when the address is
 *	     not ASCII), Action, Status, Remote-MTA: dns; (iff remote_mta),
 *	     Diagnostic-Code (iff diagnostic: "smtp; " when it is an SMTP reply,
 *	     i.e. it begins with three digits 2xx-5xx then SP, "-" or end;
 *	     else "X-mtad; "), Last-Attempt-Date (iff last_attempt_us != 0),
 *	     Will-Retry-Until (iff action is DELAYED and the time is != 0).
 *	  3. the original, per RET (RFC 3461 §6.2): message/rfc822 with the
 *	     whole message when RET=FULL, at least one recipient FAILED,
 *	     the message is not a REQUIRETLS one (RFC 8689 §5: RET=HDRS,
 *	     RTLS-28) and msg_size <= max_full_size; otherwise text/rfc822-headers with the
 *	     header section (up to the first empty line, at most
 *	     max_headers_size bytes, cut at a line end).  When FULL was
 *	     asked but the message is too big, part 1 says so.  Omitted when
 *	     read is NULL.
 *	The boundary is derived from unique and checked against every part:
 *	a suffix is added until no part contains it.
 *
 *	Status strings that are not a valid status-code (RFC 3464 §2.3.4)
 *	are replaced by 5.0.0 / 4.0.0 / 2.0.0 according to the action
 *	(RFC 3461 §6.3 (g)).
 *
 *	The read callback fills buf with up to len bytes of the original
 *	message from offset off, sets *got and returns 0, or returns a
 *	negative error which mta_dsn_build() passes back.  *got == 0 before
 *	msg_size bytes were read is MTA_ECORRUPT.  It is called only during
 *	mta_dsn_build(), in offset order, never past msg_size.
 *
 * THREADS
 *	Any.  No global state; concurrent calls on distinct outputs are fine.
 *
 * OWNERSHIP
 *	Everything in params is borrowed for the duration of the call.  The
 *	message is appended to the caller's out (whose data may move); on
 *	failure out->len is restored (the capacity may have grown).  Nothing
 *	else is retained.
 *
 * ERRORS
 *	-EINVAL: no recipient, an index out of range, a null sender (never
 *	bounce a bounce), a missing or malformed reporting_mta or unique
 *	(reporting_mta must be a host name or address literal: letters,
 *	digits, "-", ".", "_", ":", "[", "]"; unique 1..48 of letters, digits,
 *	".", "-", "_").  -ENOMEM.  MTA_ECORRUPT: the reader returned fewer than
 *	msg_size bytes.  Any error of the read callback.
 *
 * SECURITY
 *	Untrusted: the sender and recipient addresses, ENVID, ORCPT (all from
 *	the SMTP client), the diagnostic (usually a remote server's reply) and
 *	the original message.  The output is always CRLF-only, with no NUL,
 *	no bare CR or LF, and no line above 998 octets.  Values placed in
 *	header fields of the DSN and of part 2 have CR, LF, NUL and other
 *	control characters replaced by spaces (so "550 x\r\nSubject: evil"
 *	stays inside its field), non-ASCII replaced by "?" (addresses:
 *	RFC 6533 xtext), are cut to 2000 octets and folded; parts 1 and 2 are
 *	7-bit.  Part 3 copies the original with line ends normalised (CRLF,
 *	bare LF and bare CR all become CRLF), NULs dropped and lines longer
 *	than 998 octets broken (in headers with CRLF SP, i.e. folded);
 *	8-bit bytes are kept (info->eightbit is set).  Header copies stop at
 *	max_headers_size, whole messages at max_full_size (measured before
 *	line ends are normalised, which can at most double it), so a DSN
 *	stays bounded.
 *
 * STANDARDS
 *	RFC 3461 §5.2 (when to notify), §6.1-6.3 (envelope and fields);
 *	RFC 3464 §2 (message/delivery-status); RFC 6522 (multipart/report);
 *	RFC 6533 §3 (utf-8 address type, xtext form only); RFC 3834
 *	(Auto-Submitted); RFC 5322 (date-time, line limits); RFC 2045/2046.
 *	Conformance ids DSN-04..DSN-09.
 *
 * CAVEATS
 *	No message/global-delivery-status: with SMTPUTF8 a non-ASCII address
 *	is written in RFC 6533 utf-8-addr-xtext form in part 2, and the To:
 *	field carries UTF-8 only when env->smtputf8 (info->smtputf8 is then
 *	set: send with SMTPUTF8).  A returned message with long lines is
 *	altered (lines broken); one with 8-bit bytes needs BODY=8BITMIME to
 *	be relayed intact (info->eightbit).  No In-Reply-To/References to the
 *	original message.  Dates are written in UTC (+0000).
 */
#ifndef MTA_DSN_H
#define MTA_DSN_H

#include "envelope.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mta_dsn_action {
	MTA_DSN_FAILED = 0,
	MTA_DSN_DELAYED = 1,
	MTA_DSN_DELIVERED = 2,
	MTA_DSN_RELAYED = 3,
};

/* Defaults used when the corresponding params field is 0. */
#define MTA_DSN_MAX_HEADERS_DEFAULT (64u * 1024u)
#define MTA_DSN_MAX_FULL_DEFAULT (1024u * 1024u)

struct mta_dsn_rcpt {
	size_t index;		    /* into env->rcpts */
	enum mta_dsn_action action;
	const char *status;	    /* "5.7.5"; NULL = x.0.0 by action */
	const char *diagnostic;	    /* "550 5.1.1 user unknown" or our
				     * reason; NULL = none */
	const char *remote_mta;	    /* host name if one was contacted */
	int64_t last_attempt_us;    /* unix us; 0 = unknown */
	int64_t will_retry_until_us; /* delayed only; 0 = unknown */
};

/* 0 and *got set, or a negative error; see DESCRIPTION. */
typedef int (*mta_dsn_read_fn)(void *ud, uint64_t off, void *buf, size_t len,
			       size_t *got);

struct mta_dsn_params {
	const char *reporting_mta;	   /* server.hostname */
	const struct mta_envelope *env;	   /* sender, ENVID, RET, rcpts */
	const struct mta_dsn_rcpt *rcpts; /* those needing notice */
	size_t nrcpt;
	int64_t now_us;	     /* Date: */
	const char *unique;  /* e.g. "<qid>.<attempt>": boundary, Message-ID */
	mta_dsn_read_fn read; /* NULL = no third part */
	void *read_ud;
	uint64_t msg_size;	   /* bytes the reader can give */
	uint64_t max_full_size;	   /* RET=FULL cap; 0 = default */
	size_t max_headers_size;   /* header copy cap; 0 = default */
};

struct mta_dsn_info {
	bool eightbit;	    /* part 3 has 8-bit octets: BODY=8BITMIME */
	bool smtputf8;	    /* To: holds UTF-8: needs SMTPUTF8 */
	bool full;	    /* part 3 is the whole message/rfc822 */
	bool truncated;	    /* part 3 was cut (header cap, FULL over cap) */
};

bool mta_dsn_needed(const struct mta_envelope *env, size_t rcpt_index,
		    enum mta_dsn_action action);
/* info may be NULL; it is set only on success. */
int mta_dsn_build(const struct mta_dsn_params *p, struct mta_buf *out,
		  struct mta_dsn_info *info);

#endif
