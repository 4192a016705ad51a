/*
 * http_request.h - a small sans-I/O HTTP/1.x request head parser for the health
 * and metrics endpoint: GET only, bounded, no bodies.
 *
 * DESCRIPTION
 *	mta_http_parse() looks at the bytes received so far on a connection
 *	(p, n) and returns:
 *	  > 0  the length of a complete request head (request line, header
 *	       lines, empty line); *req is filled.
 *	  0    the head is not complete yet and n is below
 *	       MTA_HTTP_HEAD_MAX: read more.
 *	  < 0  MTA_EPROTO: the request is refused; *status holds the reply
 *	       status (400 malformed, 405 a method other than GET,
 *	       414 target too long, 431 head too long or too many header
 *	       lines, 505 not HTTP/1.x).
 *	It may be called again with more bytes (it starts over each time;
 *	heads are small).  Lines end with CRLF or a bare LF.
 *
 *	req->path is the target's path (the query string cut off, no
 *	decoding: the endpoint only compares it with fixed names);
 *	req->keep_alive is false for HTTP/1.0 without "Connection:
 *	keep-alive" and for "Connection: close".  A request that announces a
 *	body (Content-Length other than 0, or Transfer-Encoding) is refused
 *	with 400: a GET carries none.
 *
 * THREADS
 *	Any; no state outside the arguments.
 *
 * OWNERSHIP
 *	Caller-provided req and status, set on return (status only on
 *	error).  No allocation.
 *
 * SECURITY
 *	Every byte is untrusted (the listener may be reachable from a
 *	cluster network).  The head is bounded by MTA_HTTP_HEAD_MAX bytes
 *	and MTA_HTTP_HEADERS_MAX lines; control bytes other than CR/LF/HTAB
 *	in a header and any byte outside visible ASCII in the target are
 *	errors.  The fuzz target tests/fuzz/fuzz_http.c drives it.
 *
 * STANDARDS
 *	RFC 9112 §3 (request line), §5 (field lines; obsolete line folding
 *	is refused, 400), §9.3 (persistence); RFC 9110 §15.5.6 (405).
 */
#ifndef MTA_HTTP_REQUEST_H
#define MTA_HTTP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_HTTP_HEAD_MAX 8192
#define MTA_HTTP_HEADERS_MAX 64
#define MTA_HTTP_PATH_MAX 256

struct mta_http_request {
	char path[MTA_HTTP_PATH_MAX];
	int minor; /* HTTP/1.<minor> */
	bool keep_alive;
};

int mta_http_parse(const uint8_t *p, size_t n, struct mta_http_request *req,
		   int *status);
/* "OK", "Not Found", ...; "Error" for a status it does not name. */
const char *mta_http_reason(int status);

#endif
