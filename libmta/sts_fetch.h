/*
 * sts_fetch.h - fetch MTA-STS policies over HTTPS on the libuv loop
 * (libcurl multi-socket interface).
 *
 * SUMMARY
 *	GET https://mta-sts.<domain>/.well-known/mta-sts.txt the way RFC 8461
 *	3.3 wants it: HTTPS only, a WebPKI-valid certificate for
 *	mta-sts.<domain>, no redirects, no HTTP caching, status 200 and
 *	text/plain only, a bounded body and a bounded time.  The body is
 *	handed back as bytes; parsing it is sts.h's mta_sts_parse_policy().
 *
 * DESCRIPTION
 *	mta_sts_fetcher_init() creates a fetcher bound to a libuv loop: one
 *	curl multi handle, one uv_timer_t for curl's timeouts and one
 *	uv_poll_t per socket curl opens.  Any number of fetches may run at
 *	once on one fetcher.  It calls curl_global_init() (reference
 *	counted by curl).
 *
 *	mta_sts_fetch_start() starts one fetch and stores its handle in *out
 *	(out may be NULL when the caller never cancels).  The options:
 *	  domain        the policy domain: A-label, letters, digits, "-" and
 *	                ".", no trailing dot, <= 245 octets; the URL host is
 *	                "mta-sts." + domain (lower-cased).
 *	  connect_addr  IPv4 or IPv6 literal of mta-sts.<domain>, resolved by
 *	                the caller through mta_dns_addr() (required: curl never
 *	                resolves a name itself).  It is handed to curl with
 *	                CURLOPT_CONNECT_TO, so the URL, the Host header, the SNI
 *	                and the certificate name check all stay
 *	                mta-sts.<domain>.
 *	  https_port    the port to connect to (0: 443); tests move it.  The
 *	                URL keeps the default port, so Host has no port.
 *	  ca_file       PEM file of trusted roots (tls.ca_file); NULL: curl's
 *	                built-in default.  When given it is the only trust:
 *	                CURLOPT_CAPATH is cleared.
 *	  timeout_ms    limit for the whole transfer, connect included
 *	                (0: 10000).  A server that never answers or trickles
 *	                is cut at this time (STS-49).
 *	  max_body      largest accepted body (0: MTA_STS_POLICY_MAX, 64 KiB).
 *	                A larger Content-Length fails at once; without one,
 *	                the body is counted as it arrives and the transfer
 *	                aborted when it passes the limit (STS-48).
 *	The options and their strings are copied: they need not outlive the
 *	call.
 *
 *	Request: GET, HTTPS only (CURLOPT_PROTOCOLS_STR "https"), TLS >= 1.2,
 *	peer and host verification on, no redirects (a 3xx is a failure,
 *	STS-43), no conditional or cache headers and no cookies, no
 *	Accept-Encoding (the limit counts wire bytes), no proxy (the proxy
 *	environment variables are ignored), a fresh connection and no TLS
 *	session reuse per fetch, signals off (CURLOPT_NOSIGNAL).
 *
 *	POST mode (url set; the TLSRPT reporter, RFC 8460 5.4): POST the
 *	post bytes with Content-Type post_type to url, connecting to
 *	connect_addr (https_port, else url_port, else 443) with url_host
 *	kept for Host, SNI and the name check; same TLS, proxy, redirect
 *	and time rules; any 2xx status is OK (the response body is
 *	discarded, bounded by max_body), another status HTTP_STATUS.  post
 *	is borrowed (CURLOPT_POSTFIELDS): it must stay valid until the
 *	callback or the cancel.
 *
 *	The callback receives a struct mta_sts_fetch_result:
 *	  OK            HTTP 200 with a text/plain Content-Type (parameters
 *	                allowed, STS-46), body/body_len hold the policy bytes
 *	  HTTP_STATUS   any status other than 200, 3xx included (STS-42/43);
 *	                http_code tells which.  Detected from the headers: the
 *	                body of such a response is not read
 *	  CONTENT_TYPE  200 but no or another media type (STS-45/47)
 *	  TOO_BIG       the body exceeded max_body
 *	  TIMEOUT       timeout_ms elapsed (connect or transfer)
 *	  CONNECT       the TCP connection failed (refused, unreachable)
 *	  TLS           handshake failed or the certificate did not verify:
 *	                untrusted, expired, wrong name (STS-50), or no
 *	                subjectAltName DNS name (a CN-only certificate, which
 *	                GnuTLS alone would accept; RFC 8461 3.3 wants a DNS-ID)
 *	  ERROR         any other transfer failure (a malformed response, the
 *	                peer closed early, a close-delimited body without TLS
 *	                close_notify (possible truncation), out of memory)
 *	http_code is 0 when no response was seen; why is a short reason for
 *	the log (curl's error text or ours).
 *	The RFC 8460 result-type of a status: TLS is sts-webpki-invalid,
 *	CONTENT_TYPE sts-policy-invalid (STS-45 choice), the rest
 *	sts-policy-fetch-error (tests/sts_fetch_probe.c reports it).
 *
 *	mta_sts_fetch_cancel() stops a fetch: its callback is never called
 *	and the handle is invalid on return.  It may be called from inside
 *	another fetch's callback, not from inside its own.
 *
 *	mta_sts_fetcher_free() cancels every outstanding fetch (no
 *	callbacks), releases curl and closes the loop handles.  The caller
 *	then runs the loop until it has no more handles (uv_run DEFAULT);
 *	memory is released by the close callbacks.  Never call it from inside
 *	a fetch callback (asserted).
 *
 * THREADS
 *	Loop thread only: every call and every callback runs on the loop
 *	given to mta_sts_fetcher_init().  mta_sts_fetcher_init() and _free()
 *	call curl_global_init()/cleanup(): do not race them with another
 *	thread doing the same.
 *
 * OWNERSHIP
 *	The caller owns the loop and keeps it alive until the handles closed
 *	after mta_sts_fetcher_free().  A fetch handle belongs to the module:
 *	valid from mta_sts_fetch_start() until its callback is entered or it
 *	is cancelled.  The result and every pointer in it (body,
 *	content_type, why) are valid only during the callback: copy what you
 *	keep.
 *
 * ERRORS
 *	The async contract (STYLE.md): mta_sts_fetch_start() either returns a
 *	negative code and never calls the callback, or returns 0 and calls it
 *	exactly once, from the loop, never from inside the call.
 *	-EINVAL: a domain or connect_addr that is not valid; -ENOMEM; -ENOTSUP
 *	when the curl library lacks a needed option.  mta_sts_fetcher_init():
 *	-ENOMEM, MTA_ECONFIG when curl cannot be initialised, or a libuv code.
 *	curl codes are translated here and nowhere else.
 *
 * SECURITY
 *	The response is untrusted: the body is bounded by max_body before it
 *	is stored, the status and media type are checked before the body is
 *	read, and the time is bounded by timeout_ms.  The domain comes from a
 *	recipient address: it is checked to be a host name before it goes
 *	into the URL.  No redirect, proxy, cookie, netrc or HSTS/alt-svc
 *	file is ever used.  Trust is the ca_file (WebPKI).
 *
 * STANDARDS
 *	RFC 8461 3.2 (policy URL, media type), 3.3 (200 only, no redirects,
 *	no HTTP caching, certificate for mta-sts.<domain>, size and time
 *	limits), 7.1 (SNI); RFC 8460 4.3 (result types).
 *
 * CAVEATS
 *	HTTP/2 is used when the server offers it in ALPN (curl's default).
 *	The 5-minute back-off after a failed fetch for the same id (RFC 8461
 *	3.3) is the caller's.  Only one address is tried per fetch: the
 *	caller picks it (and may retry with the next).
 */
#ifndef MTA_STS_FETCH_H
#define MTA_STS_FETCH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct mta_sts_fetcher;
struct mta_sts_fetch;

struct mta_sts_fetch_opts {
	const char *domain;	  /* policy domain; URL host mta-sts.<domain> */
	const char *connect_addr; /* IP literal to connect to (required) */
	uint16_t https_port;	  /* 0: 443 */
	const char *ca_file;	  /* PEM roots; NULL: curl's default */
	unsigned timeout_ms;	  /* whole transfer; 0: 10000 */
	size_t max_body;	  /* 0: 65536 */
	/* POST mode (TLSRPT https rua): url set, domain unused */
	const char *url;	  /* https://host[:port]/path */
	const char *url_host;	  /* host of url (for CONNECT_TO) */
	uint16_t url_port;	  /* port of url (0: 443) */
	const void *post;	  /* body, borrowed until the callback */
	size_t post_len;
	const char *post_type;	  /* Content-Type of the body */
};

enum mta_sts_fetch_status {
	MTA_STS_FETCH_OK,
	MTA_STS_FETCH_HTTP_STATUS,
	MTA_STS_FETCH_CONTENT_TYPE,
	MTA_STS_FETCH_TOO_BIG,
	MTA_STS_FETCH_TIMEOUT,
	MTA_STS_FETCH_CONNECT,
	MTA_STS_FETCH_TLS,
	MTA_STS_FETCH_ERROR,
};

struct mta_sts_fetch_result {
	enum mta_sts_fetch_status status;
	long http_code;		  /* 0: no response */
	const char *content_type; /* as sent, or NULL */
	const char *body;	  /* OK only; else NULL */
	size_t body_len;
	const char *why;	  /* short reason, never NULL */
	int curl_code;		  /* CURLcode, for the log */
};

typedef void (*mta_sts_fetch_cb)(const struct mta_sts_fetch_result *r,
				 void *ud);

int mta_sts_fetcher_init(uv_loop_t *loop, struct mta_sts_fetcher **out);
void mta_sts_fetcher_free(struct mta_sts_fetcher *f);

int mta_sts_fetch_start(struct mta_sts_fetcher *f,
			const struct mta_sts_fetch_opts *o,
			mta_sts_fetch_cb cb, void *ud,
			struct mta_sts_fetch **out);
void mta_sts_fetch_cancel(struct mta_sts_fetch *q);

const char *mta_sts_fetch_status_name(enum mta_sts_fetch_status s);

#endif
