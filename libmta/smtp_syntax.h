/*
 * smtp_syntax.h - SMTP address and parameter syntax (RFC 5321, 6531, 3461).
 *
 * DESCRIPTION
 *	Pure checks and splitters used by the SMTP server engine for MAIL and
 *	RCPT arguments.  None allocates; the splitters work in the caller's
 *	buffer.
 *
 *	mta_smtp_path_split() splits "<...>" at the start of p: *in and *inlen
 *	get the text between the brackets (a quoted '>' does not end it),
 *	*rest what follows '>'.  -1 when there is no such path, when '>' is
 *	followed by something other than SP or the end, or when the path is
 *	longer than MTA_SMTP_PATH_MAX octets.
 *
 *	mta_smtp_strip_route() removes an A-d-l source route ("@a,@b:")
 *	from the front of the mailbox *m (*n octets) after checking its
 *	domains; 0 (also when there is none) or -1.
 *
 *	mta_smtp_mailbox_ok() checks Mailbox = Local-part "@" (Domain /
 *	address-literal); the '@' is the last one outside a quoted string.
 *	utf8 allows UTF-8 octets in the local part and U-labels (SMTPUTF8).
 *	Limits: local part 64, domain 255, label 63 octets.
 *
 *	mta_smtp_has_8bit() is true when any octet is >= 0x80;
 *	mta_smtp_utf8_ok() accepts well-formed UTF-8 only (no overlongs, no
 *	surrogates, nothing past U+10FFFF).
 *
 *	mta_smtp_next_param() takes the next "kw[=val]" of a parameter list
 *	at *pp, NUL-terminating kw and val in place: 1 found, 0 end, -1 bad
 *	syntax.  val is NULL when there is no '='.
 *
 *	mta_smtp_xtext_ok() checks RFC 3461 4 xtext; mta_smtp_orcpt_ok() an
 *	ORCPT value (addr-type ";" xtext, at most MTA_SMTP_ORCPT_MAX octets
 *	of xtext); mta_smtp_notify_parse() a NOTIFY list into MTA_NOTIFY_*
 *	bits (NEVER alone, no duplicates), 0 or -1.
 *
 *	mta_smtp_b64_decode() decodes RFC 4648 base64 (with padding, no
 *	blanks: the SASL responses of RFC 4954 4) from in[0..n) into
 *	out[0..cap), setting *outlen: 0, or -1 for bad syntax or when the
 *	result does not fit.  "=" alone is the empty response (RFC 4954 4).
 *
 * THREADS
 *	Any; no state.
 *
 * OWNERSHIP
 *	Outputs point into the caller's buffer.
 *
 * ERRORS
 *	-1 / false for bad syntax; nothing is logged.
 *
 * SECURITY
 *	Every input is untrusted client text.  No function reads past n
 *	(or the NUL of a string argument); path_split bounds the path.
 *
 * STANDARDS
 *	RFC 5321 4.1.2 (Path, Mailbox, Domain, address-literal), 4.5.3.1
 *	(size limits); RFC 6531 3.3 (UTF-8 in addresses); RFC 3461 4
 *	(xtext, NOTIFY, ORCPT).
 *
 * CAVEATS
 *	The address-literal check uses inet_pton(); General-address-literal
 *	tags other than IPv6 are refused.
 */
#ifndef MTA_SMTP_SYNTAX_H
#define MTA_SMTP_SYNTAX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_SMTP_PATH_MAX 512  /* "<...>" incl. source route */
#define MTA_SMTP_ORCPT_MAX 500 /* RFC 3461 4.2 */

int mta_smtp_path_split(char *p, char **in, size_t *inlen, char **rest);
int mta_smtp_strip_route(char **m, size_t *n);
bool mta_smtp_mailbox_ok(const char *m, size_t n, bool utf8);
bool mta_smtp_has_8bit(const char *p, size_t n);
bool mta_smtp_utf8_ok(const uint8_t *p, size_t n);
int mta_smtp_next_param(char **pp, char **kw, char **val);
bool mta_smtp_xtext_ok(const char *v, size_t n);
bool mta_smtp_orcpt_ok(const char *v);
int mta_smtp_notify_parse(const char *v, unsigned *out);
int mta_smtp_b64_decode(const char *in, size_t n, uint8_t *out, size_t cap,
			size_t *outlen);

#endif
