/*
 * route.h - the input gathering of the outbound TLS decision: how a DNS
 * answer, the policy table and the MTA-STS resolver become the fields of
 * struct mta_policy_in (policy.h), and how the verifier that policy.c
 * names is run after the handshake.  Shared by delivery (delivery_conn.c)
 * and mtactl explain (explain.c), so both gather the same inputs the same
 * way and policy.c decides for both.
 *
 * DESCRIPTION
 *	mta_route_table() looks the destination (or the relayhost) up in
 *	tls.policy_file: true and *level when an entry applies.
 *
 *	mta_route_mx_status() classifies the MX answer for policy.c
 *	(secure, insecure, bogus, failed).  mta_route_hosts() turns it into
 *	the host list: the MX hosts in preference order (at most max), the
 *	domain itself when there is no MX (RFC 5321 §5.1); or a refusal with
 *	an enhanced status and a text: null MX 5.1.10, NXDOMAIN 5.1.2, a
 *	failed or bogus lookup 4.4.3, no hosts 4.4.4.  Run
 *	mta_policy_check_dest() before it: a bogus or failed MX is policy.c's
 *	deferral first.
 *
 *	mta_route_addr_status() classifies a host's address answer (secure,
 *	a secure CNAME to an insecure target, insecure) and
 *	mta_route_tlsa_bases() picks the TLSA base names for it (RFC 7672
 *	§2.2.2): for a secure CNAME chain the expanded name first and the
 *	original second; otherwise the original name only.
 *
 *	mta_route_tlsa_status() classifies a TLSA answer: SECURE (records
 *	in the answer), BOGUS or FAILED (with *why), or NONE (no records or
 *	an insecure answer: the caller tries the second base, if any).
 *	mta_route_tlsa_copy() copies a SECURE answer's records (at most
 *	MTA_DANE_TLSA_MAX; *nout is the size of the set, which may be more:
 *	policy.c refuses such a set) into out[] with their data in one
 *	malloc'd block *data.
 *
 *	mta_route_check() runs, after the handshake, the verifier that the
 *	decision names: the DANE matcher over the peer's chain (base = the
 *	TLSA base, nexthop the reference names of RFC 7672 §3.2.3) or the
 *	WebPKI check of the host name, and fills struct mta_policy_check for
 *	mta_policy_verdict(); why receives the WebPKI failure text.  After a
 *	WebPKI check that passed it also runs the SCT check of ct.h (when
 *	require_sct > 0 and the verifier is WEBPKI or STS, never DANE nor
 *	STS_TESTING) and computes the leaf's and issuer's SPKI hashes for
 *	key continuity.
 *
 * THREADS
 *	Any (no state); the DNS results are the callback's, on the loop.
 *
 * OWNERSHIP
 *	Inputs are borrowed for the call.  mta_route_tlsa_copy()'s *data is
 *	the caller's to free (the records point into it).  The strings in
 *	struct mta_policy_check point into the caller's why buffer, into
 *	static text or into the DANE result r (caller-provided).
 *
 * ERRORS
 *	mta_route_hosts(): 0 or MTA_EDNS (a refusal, status and text set).
 *	mta_route_tlsa_copy(): 0 or -ENOMEM.
 *
 * SECURITY
 *	DNS data is untrusted; names come from dns.c already bounded and
 *	escaped.  The classification fails closed like dns.h: a TEMPFAIL, a
 *	BOGUS or an indeterminate TLSA answer is never NONE.
 *
 * STANDARDS
 *	RFC 5321 §5.1, RFC 7505, RFC 7672 §2.1.1, §2.2.1-2.2.2, §3.2.3.
 */
#ifndef MTA_ROUTE_H
#define MTA_ROUTE_H

#include "ct.h"
#include "dane.h"
#include "dns.h"
#include "policy.h"
#include "tls.h"
#include "tlspolicy.h"

#include <stdbool.h>
#include <stddef.h>

struct mta_route_host {
	char name[MTA_DNS_NAME_MAX];
	unsigned port;
};

/* An address literal host ("192.0.2.1", "[192.0.2.1]", "[IPv6:...]"):
 * true and *ss (port 0).  Only the relayhost or a bracketed domain is
 * one: the caller decides where a literal can be meant (an MX exchange is
 * always a name, RFC 5321 §5.1). */
bool mta_route_literal(const char *host, struct sockaddr_storage *ss);
bool mta_route_table(const struct mta_tlspolicy *table, const char *name,
		     enum mta_tls_level *level);

enum mta_policy_mx mta_route_mx_status(const struct mta_dns_result *res);
int mta_route_hosts(const struct mta_dns_result *res, const char *domain,
		    unsigned port, struct mta_route_host *hosts, size_t max,
		    size_t *n, char status[16], char *text, size_t textlen);

enum mta_policy_addr mta_route_addr_status(const struct mta_dns_result *res);
void mta_route_tlsa_bases(const struct mta_dns_result *res, const char *host,
			  enum mta_policy_addr addr, char *base, char *alt,
			  size_t len);

enum mta_policy_tlsa mta_route_tlsa_status(const struct mta_dns_result *res,
					   const char **why);
int mta_route_tlsa_copy(const struct mta_dns_result *res,
			struct mta_dns_tlsa *out, size_t *nout,
			uint8_t **data);

struct mta_route_verify {
	enum mta_policy_verifier verifier;
	struct mta_tls *tls;		/* the completed session */
	const struct mta_dns_tlsa *tlsa; /* the host's secure set */
	size_t ntlsa;
	const char *base;		/* TLSA base */
	const char *const *nexthop;	/* DANE reference names, or NULL */
	size_t nnexthop;
	bool webpki;			/* the creds carry tls.ca_file */
	const char *host;		/* WebPKI reference name */
	/* CT (tls.require_sct > 0, a required WebPKI check that passed):
	 * the list (may be NULL: no SCT counts) and the result storage */
	const struct mta_ct_loglist *ct_list;
	unsigned require_sct;
	struct mta_ct_result *ct_res;	/* required when require_sct > 0 */
	/* key continuity: when not NULL and the WebPKI check passed, the
	 * SPKI SHA-256 (hex) of the leaf and of its issuer ("" unknown) */
	char (*leaf_spki)[65];
	char (*issuer_spki)[65];
};

void mta_route_check(const struct mta_route_verify *q,
		     struct mta_dane_result *r, struct mta_policy_check *chk,
		     char *why, size_t whylen);

#endif
