/*
 * dns.h - DNS resolution with DNSSEC status on the libuv loop (getdns).
 *
 * SUMMARY
 *	The resolver of mtad: MX, address (A+AAAA), TLSA and TXT lookups that
 *	report, besides the data, a response class (OK, NODATA, NXDOMAIN,
 *	TEMPFAIL, BOGUS) and the DNSSEC status the delivery policy needs for
 *	DANE (RFC 7672).  getdns runs in stub mode and validates by itself
 *	against our own trust anchor: it sets DO+CD on every query, so the
 *	upstream need not validate and a bare AD bit is never trusted.
 *
 * DESCRIPTION
 *	mta_dns_init() creates a resolver bound to a libuv loop.  The options
 *	name the upstream (dns.resolver: "addr", "addr:port", "[v6]:port" or
 *	a bare IPv6 address, several separated by commas; NULL or empty reads
 *	the "nameserver" lines of /etc/resolv.conf, or of opts->resolv_conf),
 *	the trust anchor file (DS or DNSKEY lines in zone-file syntax; default
 *	/usr/share/dns/root.key), getdns's appdata directory (so getdns never
 *	touches ~/.getdns) and the per-query timeout (timeout_ms: each getdns
 *	request, i.e. the lookup and, for mta_dns_addr(), the extra CNAME
 *	question, gets its own deadline; enforced by this module, see
 *	CAVEATS).  Automatic trust-anchor
 *	fetching (RFC 7958) is disabled.  getdns's own loop extension is not
 *	used (it crashes over TCP in 1.6.0); a bridge inside dns.c drives
 *	getdns through getdns_context_set_eventloop(), one uv_poll_t per
 *	event plus one uv_timer_t.
 *
 *	mta_dns_mx(), mta_dns_addr(), mta_dns_tlsa() and mta_dns_txt() start
 *	one lookup each and store a handle for mta_dns_cancel() in *qp (qp
 *	may be NULL when the caller never cancels).  The name is
 *	an A-label domain in presentation form, with or without the trailing
 *	dot; TLSA takes the full owner ("_25._tcp.mx.example").  When the
 *	lookup completes the callback receives a struct mta_dns_result that
 *	is valid only during the callback.
 *
 *	mta_dns_cancel() stops a lookup: its callback is never called and the
 *	handle is invalid on return.  Do not cancel from inside that lookup's
 *	own callback (the handle is already finished there).
 *
 *	mta_dns_free() cancels every outstanding lookup (no callbacks), then
 *	destroys the getdns context and closes the loop handles.  The caller
 *	then runs the loop until it has no more handles (uv_run DEFAULT) and
 *	may close it; memory is released by the close callbacks.
 *
 *	mta_dns_status_name() and mta_dnssec_name() return static names
 *	("OK", "SECURE", ...) for logs and tests.
 *
 * RESULT CLASSES
 *	status   OK        data of the asked type (count > 0; for MX also a
 *	                   null MX)
 *	         NODATA    the name exists, no record of the type (for MX:
 *	                   the caller applies the implicit MX, RFC 5321 5.1)
 *	         NXDOMAIN  the name does not exist
 *	         TEMPFAIL  SERVFAIL, REFUSED, other rcodes, timeout, network
 *	                   error, malformed reply, or a DNSSEC status of
 *	                   INDETERMINATE (RFC 7672 2.1.1: an error)
 *	         BOGUS     DNSSEC validation failed for some part of the
 *	                   answer; data and denials are then withheld: a
 *	                   bogus denial is never reported as NODATA/NXDOMAIN
 *	dnssec   SECURE, INSECURE, BOGUS or INDETERMINATE (RFC 4035 4.3), the
 *	         worst over all replies (A and AAAA count separately) and all
 *	         RRsets getdns validated, including every CNAME step.  With
 *	         TEMPFAIL it is INDETERMINATE.  Secure denial = NXDOMAIN or
 *	         NODATA with SECURE.
 *
 *	Addresses: status is TEMPFAIL if either the A or the AAAA query failed,
 *	even when the other one returned addresses (conservative for DANE: a
 *	partial answer is never taken as the full set).  NXDOMAIN only when
 *	both say NXDOMAIN; NODATA when neither has addresses.
 *
 * CNAME AND DNSSEC (RFC 7672 2.2.2)
 *	getdns follows CNAME chains itself and reports one dnssec status per
 *	reply, covering the whole chain (a secure CNAME to an insecure target
 *	reads INSECURE).  It does not report the status per chain link.  So
 *	when mta_dns_addr() sees that a CNAME was followed (cname == true) and
 *	the reply is not SECURE, it asks one more question: the CNAME RRset of
 *	the original name itself, and reports its status as initial_dnssec.
 *	initial_dnssec == SECURE with dnssec == INSECURE is the "secure CNAME
 *	to insecure target" case: TLSA is then looked up at the original name.
 *	Without a CNAME, initial_dnssec equals dnssec.  We cannot tell the
 *	status of intermediate links of a longer chain (RFC 7672 2.2.3 never
 *	uses them as TLSA base domains, so none is needed).  canonical is the
 *	final owner name (the TLSA base domain for a fully secure chain).
 *
 * THREADS
 *	Loop thread only: every call, and every callback, runs on the loop
 *	given to mta_dns_init().
 *
 * OWNERSHIP
 *	The caller owns the loop and must keep it alive until the handles
 *	closed after mta_dns_free().  opts and its strings are copied or used
 *	only during mta_dns_init().  The result, every array and string in it
 *	are owned by the module and valid only until the callback returns:
 *	copy what you keep.  A query handle belongs to the module; it is valid
 *	from the mta_dns_*() call until its callback is entered or it is
 *	cancelled.
 *
 * ERRORS
 *	The async contract (STYLE.md): a lookup call either returns a negative
 *	code and never calls the callback, or returns 0 and calls it exactly
 *	once, always from the loop, never from inside the call (failures found
 *	during the call are delivered on the next loop turn as TEMPFAIL).
 *	MTA_EDNS: invalid name (non-ASCII, empty label, label > 63 octets,
 *	name > 253 octets, control characters); IDN conversion is the caller's
 *	job.  -ENOMEM: out of memory.  mta_dns_init(): MTA_ECONFIG for a bad
 *	resolver string, an unreadable or empty trust anchor, or no
 *	nameserver in resolv.conf; MTA_EDNS when getdns refuses its setup.
 *	Never call mta_dns_free() from inside a callback (asserted): getdns
 *	asserts when its context is destroyed while it dispatches.
 *
 * SECURITY
 *	Everything in a reply is untrusted.  Names are converted from wire
 *	form by this module (bounded, lower-cased, bytes outside [a-z0-9-_]
 *	escaped as \DDD so they can never look like a different host name);
 *	TLSA association data is at most 65535 bytes (wire limit); the record
 *	counts are bounded by the reply size.  The trust anchor file is local
 *	configuration.  validation uses the system clock with no skew.
 *
 * STANDARDS
 *	RFC 4035 4.3 (security status), RFC 5321 5.1 (MX ordering, equal
 *	preferences in random order), RFC 7505 (null MX), RFC 6698 2 (TLSA
 *	rdata), RFC 7672 2.1 (DNS errors, bogus vs insecure) and 2.2.2 (CNAME
 *	status as far as getdns exposes it).
 *
 * CAVEATS
 *	getdns answers with what the upstream returns; the first upstream that
 *	answers wins, there is no cache in this module.  A null MX is
 *	reported only for exactly one MX record "0 ."; a "." exchange among
 *	other MX records is dropped from the list.  Link-local resolv.conf
 *	entries (with %scope) are skipped.
 *
 *	getdns 1.6.0 itself (also its own getdns_query with its default poll
 *	loop, so not this bridge) can double-free when a DNSSEC chain query
 *	(e.g. the DS of an insecure delegation) times out while several
 *	lookups wait on it.  So getdns's own timeout is set a day beyond
 *	timeout_ms and never fires: a uv_timer_t per lookup cancels the getdns
 *	request (getdns_cancel_callback) at timeout_ms and reports TEMPFAIL
 *	"timeout".  A consequence: a DS query that the upstream never answers
 *	makes the lookup TEMPFAIL even below a proven-insecure delegation
 *	(getdns would have called it INSECURE after its own timeout, when it
 *	did not crash); and with several upstreams, getdns most likely no
 *	longer moves on from one that silently drops queries (it does so from
 *	its own timeout callback; not tested).  See docs/dns.md "Known
 *	problems".
 */
#ifndef MTA_DNS_H
#define MTA_DNS_H

#include "records.h" /* struct mta_dns_tlsa */

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define MTA_DNS_NAME_MAX 1024	/* presentation form, worst case \DDD */

struct mta_dns;
struct mta_dns_query;

struct mta_dns_opts {
	const char *resolver;	  /* "addr[:port]", "[v6]:port", list "a,b" */
	const char *resolv_conf;  /* NULL: /etc/resolv.conf (when no resolver) */
	const char *trust_anchor; /* NULL: /usr/share/dns/root.key */
	const char *appdata_dir;  /* getdns appdata dir; NULL: getdns default */
	unsigned timeout_ms;	  /* per lookup; 0: 5000 */
	/* Random source for shuffling equal MX preferences: returns a value in
	 * [0, bound).  NULL: arc4random_uniform(). */
	uint32_t (*random)(void *arg, uint32_t bound);
	void *random_arg;
};

enum mta_dns_qtype {
	MTA_DNS_Q_MX,
	MTA_DNS_Q_ADDR,
	MTA_DNS_Q_TLSA,
	MTA_DNS_Q_TXT,
};

enum mta_dns_status {
	MTA_DNS_OK,
	MTA_DNS_NODATA,
	MTA_DNS_NXDOMAIN,
	MTA_DNS_TEMPFAIL,
	MTA_DNS_BOGUS,
};

enum mta_dnssec {
	MTA_DNSSEC_SECURE,
	MTA_DNSSEC_INSECURE,
	MTA_DNSSEC_BOGUS,
	MTA_DNSSEC_INDETERMINATE,
};

struct mta_dns_mx {
	uint16_t pref;
	char host[MTA_DNS_NAME_MAX]; /* lower-case, no trailing dot */
};

struct mta_dns_txt {
	const char *text; /* the record's strings concatenated, NUL added */
	size_t len;	  /* may contain NUL bytes: use len */
};

struct mta_dns_result {
	enum mta_dns_qtype qtype;
	const char *qname;	  /* as asked, lower-case, no trailing dot */
	enum mta_dns_status status;
	enum mta_dnssec dnssec;
	const char *why;	  /* static detail: "servfail", "timeout", ... */

	/* CNAME handling (addresses; also filled for other types) */
	const char *canonical;	  /* final owner name, lower-case, no dot */
	bool cname;		  /* a CNAME (or DNAME) was followed */
	enum mta_dnssec initial_dnssec; /* see CNAME AND DNSSEC above */

	size_t count;		  /* entries in the array of qtype */
	bool null_mx;		  /* MX: single "0 ." (RFC 7505), count 0 */
	const struct mta_dns_mx *mx;	     /* by preference, ties shuffled */
	const struct sockaddr_storage *addr; /* AF_INET/AF_INET6, port 0 */
	const struct mta_dns_tlsa *tlsa;
	const struct mta_dns_txt *txt;
};

typedef void (*mta_dns_cb)(const struct mta_dns_result *res, void *ud);

int mta_dns_init(uv_loop_t *loop, const struct mta_dns_opts *o,
		 struct mta_dns **out);
void mta_dns_free(struct mta_dns *dns);

int mta_dns_mx(struct mta_dns *dns, const char *domain, mta_dns_cb cb,
	       void *ud, struct mta_dns_query **qp);
int mta_dns_addr(struct mta_dns *dns, const char *host, mta_dns_cb cb,
		 void *ud, struct mta_dns_query **qp);
int mta_dns_tlsa(struct mta_dns *dns, const char *owner, mta_dns_cb cb,
		 void *ud, struct mta_dns_query **qp);
int mta_dns_txt(struct mta_dns *dns, const char *name, mta_dns_cb cb,
		void *ud, struct mta_dns_query **qp);
void mta_dns_cancel(struct mta_dns_query *q);

const char *mta_dns_status_name(enum mta_dns_status s);
const char *mta_dnssec_name(enum mta_dnssec s);

#endif
