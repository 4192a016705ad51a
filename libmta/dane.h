/*
 * dane.h - DANE TLSA matching for SMTP (RFC 7672): does the certificate
 * chain a peer presented satisfy a secure TLSA RRset?
 *
 * DESCRIPTION
 *	Sans-I/O: no DNS, no sockets, no clock.  The caller has the TLSA
 *	RRset (DNSSEC-secure, from mta_dns_tlsa()), the chain the server sent
 *	in the TLS handshake (gnutls_certificate_get_peers(): DER, leaf
 *	first, in the order sent) and the current time, and asks for a
 *	verdict.  libgnutls-dane is deliberately not used (it accepts a
 *	DANE-TA chain that does not lead to the trust anchor; see
 *	docs/dane.md).
 *
 *	mta_dane_unusable_why() classifies one record: NULL when it is
 *	usable, else a static text saying why not.  Usable means usage
 *	DANE-TA(2) or DANE-EE(3), selector Cert(0) or SPKI(1), matching type
 *	Full(0), SHA2-256(1) or SHA2-512(2), and well-formed data: 32 bytes
 *	for SHA2-256, 64 for SHA2-512, and for Full(0) a DER certificate
 *	(selector 0) or a DER SubjectPublicKeyInfo (selector 1) that parses.
 *	PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (RFC 7672 §3.1.3),
 *	as is anything unknown or malformed.  mta_dane_usable() is the
 *	boolean form; mta_dane_count_usable() counts a set.
 *
 *	mta_dane_verify() decides one connection.  It always fills *res.
 *	  1. Classify the set.  No usable record: outcome
 *	     MTA_DANE_UNUSABLE_ONLY (TLS is still mandatory, the peer is not
 *	     authenticated; DANE-51..53) and return 0 without looking at the
 *	     chain.
 *	  2. Digest agility (RFC 7671 §9): among the usable records of one
 *	     usage and selector, when a SHA2-512 record exists the SHA2-256
 *	     records do not take part (DANE-56/57).  Full(0) records always
 *	     take part (DANE-58).  res->superseded counts the dropped ones.
 *	  3. DANE-EE(3) records are compared with the leaf only: selector 0
 *	     the whole DER certificate, selector 1 its DER
 *	     SubjectPublicKeyInfo.  No name, date or chain check
 *	     (DANE-70..75).
 *	  4. DANE-TA(2) records are compared with the certificates the server
 *	     sent at depth >= 1 (never the leaf).  For each one matched, a
 *	     path is built from the leaf through the other certificates sent
 *	     below it, up to that certificate as the only trust anchor, and
 *	     GnuTLS checks the signatures, CA and path-length constraints
 *	     (the local CA store is never used: DANE-94).  Then every
 *	     certificate on the path below the anchor must be valid at now
 *	     (DANE-92), and the leaf must carry one of the reference names:
 *	     the TLSA base domain or a next-hop domain (DANE-85..91; DNS-ID
 *	     SANs, or the last subject CN when there is no DNS-ID; a "*"
 *	     wildcard only as the whole left-most label, matching one label).
 *	     A "2 0 0" record (the full TA certificate) that matches no
 *	     certificate sent is used as the anchor itself (DANE-83).
 *	  The first success is the result (MTA_DANE_MATCH; EE records
 *	  before TA records, each in RRset order).  Otherwise
 *	  MTA_DANE_NO_MATCH with the most specific reason found: name
 *	  mismatch, then dates, then chain, then "did not match".
 *
 *	res->reason is a one-line, printable-ASCII text for logs and
 *	bounces, e.g. "TLSA records for mx.example.net did not match the
 *	certificate presented".  Names from the query are copied into it
 *	with non-printable bytes replaced by '?'.  mta_dane_fail_rpt() maps
 *	res->fail to the RFC 8460 result-type.
 *
 * THREADS
 *	Any.  No global state; GnuTLS must be initialised (it is, by its
 *	library constructor).
 *
 * OWNERSHIP
 *	Everything in the query is borrowed for the duration of the call
 *	only.  The result is caller-owned and self-contained (no pointers).
 *
 * ERRORS
 *	mta_dane_verify() returns 0 with outcome MATCH, NO_MATCH or
 *	UNUSABLE_ONLY.  With outcome MTA_DANE_ERROR it returns: -EINVAL for
 *	an empty RRset, MTA_ETOOBIG for more than MTA_DANE_TLSA_MAX records
 *	or more than MTA_DANE_CHAIN_MAX certificates, MTA_ETLS for an empty
 *	chain or a certificate that does not parse, -ENOMEM.  The caller
 *	treats ERROR like NO_MATCH (not authenticated).
 *
 * SECURITY
 *	The chain is peer input and the TLSA data, although DNSSEC-signed,
 *	is zone-owner input: both are untrusted and bounded by the limits
 *	above.  Every chain element must parse as an X.509 certificate.
 *	The names in the query are trusted (resolver output) but are
 *	sanitised before being quoted in res->reason.
 *
 * STANDARDS
 *	RFC 7672 §2.2, §3.1, §3.2 (usages, reference identifiers, wildcards);
 *	RFC 6698 §2.1 (record format); RFC 7671 §5.1, §5.2, §9 (DANE-EE,
 *	DANE-TA, digest agility); RFC 7218 (acronyms).
 *
 * CAVEATS
 *	"2 1 0" (a bare TA public key in DNS) authenticates only when the
 *	server also sends a certificate with that key; the DANE-TA anchor's
 *	own dates are not checked (the TLSA record vouches for it).  Path
 *	building takes the first certificate sent whose subject names the
 *	issuer; duplicate subjects in one chain are not backtracked.  Digest
 *	agility is not configurable.
 */
#ifndef MTA_DANE_H
#define MTA_DANE_H

#include "records.h" /* struct mta_dns_tlsa */

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define MTA_DANE_CHAIN_MAX 16  /* certificates in one chain */
#define MTA_DANE_REASON_MAX 320

enum mta_dane_usage {
	MTA_DANE_PKIX_TA = 0,
	MTA_DANE_PKIX_EE = 1,
	MTA_DANE_DANE_TA = 2,
	MTA_DANE_DANE_EE = 3,
};

/* X(ENUM, "name"): MATCH authenticated; NO_MATCH usable records, none
 * satisfied; UNUSABLE_ONLY TLS required, unauthenticated; ERROR bad
 * input, not authenticated. */
#define MTA_DANE_OUTCOME_MAP(X)                                               \
	X(MATCH, "match")                                                     \
	X(NO_MATCH, "no-match")                                               \
	X(UNUSABLE_ONLY, "unusable-only")                                     \
	X(ERROR, "error")

enum mta_dane_outcome {
#define MTA_DANE_OUTCOME_ENUM(e, name) MTA_DANE_##e,
	MTA_DANE_OUTCOME_MAP(MTA_DANE_OUTCOME_ENUM)
#undef MTA_DANE_OUTCOME_ENUM
};

/* X(ENUM, RFC 8460 result type or NULL): NOMATCH no record matched a
 * certificate; CHAIN TA matched, no valid path to it; EXPIRED TA path
 * ok, a certificate expired; NOTYET not yet valid; NAME TA path and
 * dates ok, name mismatch. */
#define MTA_DANE_FAIL_MAP(X)                                                  \
	X(NONE, NULL)                                                         \
	X(NOMATCH, "tlsa-invalid")                                            \
	X(CHAIN, "validation-failure")                                        \
	X(EXPIRED, "certificate-expired")                                     \
	X(NOTYET, "validation-failure")                                       \
	X(NAME, "certificate-host-mismatch")

enum mta_dane_fail {
#define MTA_DANE_FAIL_ENUM(e, rpt) MTA_DANE_FAIL_##e,
	MTA_DANE_FAIL_MAP(MTA_DANE_FAIL_ENUM)
#undef MTA_DANE_FAIL_ENUM
};

struct mta_dane_query {
	const gnutls_datum_t *chain; /* DER, leaf first, as sent */
	size_t nchain;
	const struct mta_dns_tlsa *tlsa;
	size_t ntlsa;
	const char *base;	     /* TLSA base domain (SNI) */
	const char *const *nexthop;  /* next-hop domain(s); may be NULL */
	size_t nnexthop;
	time_t now;
};

struct mta_dane_result {
	enum mta_dane_outcome outcome;
	enum mta_dane_fail fail; /* NO_MATCH: the most specific failure */
	size_t usable;		 /* usable records in the set */
	size_t superseded;	 /* usable SHA2-256 dropped by agility */
	/* MATCH only: the record that matched and where */
	size_t record;		 /* index in the query's tlsa[] */
	uint8_t usage, selector, mtype;
	size_t depth;		 /* chain depth of the matched cert */
	bool anchor_from_dns;	 /* "2 0 0" anchor not sent: depth is
				    the path length (where it would be) */
	char reason[MTA_DANE_REASON_MAX];
};

const char *mta_dane_unusable_why(const struct mta_dns_tlsa *r);
bool mta_dane_usable(const struct mta_dns_tlsa *r);
size_t mta_dane_count_usable(const struct mta_dns_tlsa *set, size_t n);

int mta_dane_verify(const struct mta_dane_query *q,
		    struct mta_dane_result *res);

/* RFC 8460 result-type for a failure ("tlsa-invalid", ...); NULL for
 * MTA_DANE_FAIL_NONE. */
const char *mta_dane_fail_rpt(enum mta_dane_fail f);

#endif
