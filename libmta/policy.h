/*
 * policy.h - the outbound TLS decision: one pure function from what is
 * known about a destination and one of its hosts to what the connection
 * must be (level, verifier, connect or refuse, and why).
 *
 * DESCRIPTION
 *	mta_policy_decide() takes struct mta_policy_in (the local policy
 *	table entry, tls.default_level, the DNSSEC self-test state, the MX
 *	RRset's DNSSEC status, the host's address status, the TLSA lookup
 *	result with its records, the MTA-STS policy in force and whether it
 *	could be held) and fills struct mta_policy: the action (connect,
 *	skip this host, defer the whole destination), the effective level,
 *	the verifier to apply after the handshake, the STARTTLS mode of the
 *	SMTP client, whether a cleartext retry is allowed after a failed
 *	handshake, the RFC 8460 policy type and result type for TLS
 *	reporting, and for a refusal the enhanced status, the mx_skipped
 *	reason token and a reason text.  Precedence (docs/security.md "Which
 *	check applies where"): local table > DANE > MTA-STS enforce >
 *	operator default > MTA-STS testing; a later rule never lowers an
 *	earlier one.  It calls mta_policy_check_dest() first.
 *
 *	mta_policy_check_dest() is the destination stage alone (MX status
 *	and self-test): delivery runs it as soon as the MX answer is in,
 *	before any host is looked at.
 *
 *	mta_policy_want_tlsa() says whether a TLSA lookup is to be made for
 *	the host (the table lets DANE apply, the MX RRset and the host's
 *	address records are secure).  When it is false, decide() ignores the
 *	tlsa fields.
 *
 *	mta_policy_verdict() is the second half, after the TLS handshake:
 *	given the decision and the outcome of the verifier it named (the
 *	DANE matcher's outcome, or the WebPKI check's), accept or refuse the
 *	channel, with the auth text for the delivery log ("dane 3 1 1",
 *	"mta-sts id=…", "verify", "encrypt (TLSA unusable)", "none"), what to
 *	count for TLS reporting, and whether an MTA-STS testing failure is to
 *	be logged.
 *
 *	Certificate Transparency and key continuity enter the verdict as
 *	inputs (in->require_sct and chk->ct; in->continuity and chk->cont),
 *	computed by delivery (route.c, ct.c, the spool's key record).  CT
 *	applies only to a required WebPKI check (verify, MTA-STS enforce)
 *	that passed, never to DANE nor to MTA-STS testing: with
 *	require_sct > 0 a verdict other than OK refuses the channel like a
 *	certificate that does not verify (4.7.5, auth "...-failed ...
 *	ct=<verdict>").  Continuity applies to hosts an MTA-STS policy covers
 *	whose WebPKI check passed: NEW_KEY and NEW_ISSUER are logged unless
 *	the mode is off; NEW_ISSUER refuses (4.7.5, continuity=new_issuer)
 *	in mode hold; an accepted channel on such a host is learnt.
 *	REQUIRETLS (RFC 8689 §4.2.1; in.requiretls, which the caller sets
 *	only for a non-null reverse-path, RTLS-29/30): the host is used only
 *	over an authenticated channel: DANE (usable TLSA), MTA-STS (enforce
 *	or testing, the host matching the mx patterns: RTLS-22), or a
 *	DNSSEC-secure MX (or relayhost) name with a WebPKI-valid certificate;
 *	otherwise it is skipped with 5.7.10 (reason token "requiretls").  The
 *	level is then at least verify, never a cleartext retry, and
 *	out.requiretls asks the client for the post-STARTTLS REQUIRETLS
 *	keyword.  A refused verdict has status 5.7.10.  The delivery turns
 *	the 5.7.x of a destination whose every host failed so into a bounce.
 *
 *	TLS-Required: No (in.tls_optional, RFC 8689 §4.2.2): DANE and
 *	MTA-STS are ignored (no TLSA lookup, no policy, no report: RTLS-33);
 *	the operator's level (table entry or default) still holds, so the
 *	default may gives opportunistic STARTTLS with a cleartext retry.
 *
 *	The *_name() functions return static names from the X-macro lists
 *	below ("?" for a value outside them).
 *
 * THREADS
 *	Any: no state, no I/O, no clock, no allocation.
 *
 * OWNERSHIP
 *	Inputs are borrowed for the call; outputs are plain data filled by the
 *	call (static strings or text copied into the output).
 *
 * ERRORS
 *	None: every input combination has a decision.  Out-of-range enum
 *	values are programmer errors (asserted).
 *
 * SECURITY
 *	The decision fails closed: a bogus or failed lookup, a TLSA RRset of
 *	more than MTA_DANE_TLSA_MAX records, a failed DNSSEC self-test with an
 *	unsigned MX answer, or an MTA-STS policy that could not be held never
 *	lead to a weaker connection.  Invariants, checked by
 *	tests/fuzz/fuzz_policy.c: never plaintext (or a cleartext retry) when
 *	a usable TLSA record applies; never WebPKI-only when DANE applies;
 *	never a connection after a bogus answer; never a level below the
 *	operator's (table entry or, without one, tls.default_level), except
 *	that DANE replaces verify/encrypt by authentication through DNSSEC;
 *	never a connection for a REQUIRETLS message other than an
 *	authenticated one (DANE, MTA-STS, or verify after a secure MX), with
 *	STARTTLS required, no cleartext retry and the keyword checked.
 *	Host and domain names are quoted into the reason as given (they come
 *	from DNS and the envelope; the logger escapes them).
 *
 * STANDARDS
 *	RFC 7672 §2.1.1 (bogus TLSA: host not used), §2.2 (usable TLSA:
 *	authentication mandatory; only unusable: TLS mandatory), §2.2.1-2.2.2
 *	(secure MX and addresses, CNAME), §6/§9.1 (local policy wins);
 *	RFC 8461 §4.1-§5.1 (enforce: MX pattern and WebPKI; testing: report
 *	only); RFC 8460 §4.3 (result types); RFC 7435 (opportunistic TLS);
 *	RFC 8689 §4.2.1-§4.2.2 (REQUIRETLS, TLS-Required: No).
 *	Conformance ids in tests/unit/test_policy.c.
 *
 * CAVEATS
 *	The TLSA base-name choice (CNAME expansion) stays with the caller, which
 *	knows the names; the decision needs only the address status.
 */
#ifndef MTA_POLICY_H
#define MTA_POLICY_H

#include "ct.h"		 /* enum mta_ct_verdict */
#include "records.h"	 /* struct mta_dns_tlsa */
#include "smtp_client.h" /* enum mta_smtpc_tls */
#include "sts.h"	 /* struct mta_sts_policy */
#include "tlspolicy.h"	 /* enum mta_tls_level */

#include <stdbool.h>
#include <stddef.h>

/* DNSSEC status of the MX RRset (or of its absence).  A relayhost is a
 * non-MX destination: the caller passes SECURE so that its own address
 * records decide (RFC 7672 §2.2.2). */
#define MTA_POLICY_MX_MAP(X)                                                  \
	X(SECURE, "secure")                                                   \
	X(INSECURE, "insecure")                                               \
	X(BOGUS, "bogus")                                                     \
	X(FAILED, "failed")

/* The host's address records: SECURE; INSECURE; CNAME_INSECURE a secure
 * CNAME to an insecure target (TLSA at the original name, RFC 7672
 * §2.2.2); LITERAL an address literal (no name: no DANE); BOGUS. */
#define MTA_POLICY_ADDR_MAP(X)                                                \
	X(SECURE, "secure")                                                   \
	X(INSECURE, "insecure")                                               \
	X(CNAME_INSECURE, "cname-insecure")                                   \
	X(LITERAL, "literal")                                                 \
	X(BOGUS, "bogus")

/* The TLSA lookup: NONE not made, no records, or an insecure answer;
 * SECURE a DNSSEC-secure RRset (records in rrs/nrrs); BOGUS; FAILED a
 * temporary failure or an indeterminate answer. */
#define MTA_POLICY_TLSA_MAP(X)                                                \
	X(NONE, "none")                                                       \
	X(SECURE, "secure")                                                   \
	X(BOGUS, "bogus")                                                     \
	X(FAILED, "failed")

/* The MTA-STS policy of the destination: NONE none in force (or not
 * looked up); HAVE a policy, cached or just fetched, in sts_policy (mode
 * none counts as no policy); LOST one was in force but could not be held
 * (out of memory): the destination is deferred, never treated as having
 * none. */
#define MTA_POLICY_STS_MAP(X)                                                 \
	X(NONE, "none")                                                       \
	X(HAVE, "have")                                                       \
	X(LOST, "lost")

#define MTA_POLICY_ACTION_MAP(X)                                              \
	X(CONNECT, "connect")                                                 \
	X(SKIP_HOST, "skip-host")                                             \
	X(DEFER, "defer")

/* What is checked after the handshake: NONE nothing; TLSA_UNUSABLE
 * nothing (TLS mandatory, only unusable TLSA); DANE the TLSA matcher;
 * WEBPKI the WebPKI check, required (level verify); STS the WebPKI check,
 * required (MTA-STS enforce); STS_TESTING the WebPKI check, reported
 * only. */
#define MTA_POLICY_VERIFIER_MAP(X)                                            \
	X(NONE, "none")                                                       \
	X(TLSA_UNUSABLE, "tlsa-unusable")                                     \
	X(DANE, "dane")                                                       \
	X(WEBPKI, "webpki")                                                   \
	X(STS, "sts")                                                         \
	X(STS_TESTING, "sts-testing")

/* RFC 8460 §4.4 policy-type of the TLS report this host counts under */
#define MTA_POLICY_PTYPE_MAP(X)                                               \
	X(NO_POLICY, "no-policy-found")                                       \
	X(TLSA, "tlsa")                                                       \
	X(STS, "sts")

/* RFC 8460 §4.3 result types (and NONE: nothing to count) */
#define MTA_RPT_MAP(X)                                                        \
	X(NONE, "none")                                                       \
	X(SUCCESS, "successful-session")                                      \
	X(STARTTLS_NOT_SUPPORTED, "starttls-not-supported")                   \
	X(CERTIFICATE_HOST_MISMATCH, "certificate-host-mismatch")             \
	X(CERTIFICATE_EXPIRED, "certificate-expired")                         \
	X(CERTIFICATE_NOT_TRUSTED, "certificate-not-trusted")                 \
	X(VALIDATION_FAILURE, "validation-failure")                           \
	X(TLSA_INVALID, "tlsa-invalid")                                       \
	X(DNSSEC_INVALID, "dnssec-invalid")                                   \
	X(DANE_REQUIRED, "dane-required")                                     \
	X(STS_POLICY_FETCH_ERROR, "sts-policy-fetch-error")                   \
	X(STS_POLICY_INVALID, "sts-policy-invalid")                           \
	X(STS_WEBPKI_INVALID, "sts-webpki-invalid")

/* tls.continuity mode (mta_sts.continuity) */
#define MTA_POLICY_CONT_MODE_MAP(X)                                           \
	X(OFF, "off")                                                         \
	X(LOG, "log")                                                         \
	X(HOLD, "hold")

/* Key continuity of an MTA-STS host (computed by delivery from the
 * spool's record of the destination): NONE not looked at; FIRST nothing
 * on record (learn); KNOWN key on record; NEW_KEY a key never seen under
 * a known issuer; NEW_ISSUER key and issuer never seen while the known
 * ones are recent; ACCEPTED a new issuer the operator accepted or that
 * healed (seen on every MX for mta_sts.continuity_hold). */
#define MTA_POLICY_CONT_MAP(X)                                                \
	X(NONE, "none")                                                       \
	X(FIRST, "first")                                                     \
	X(KNOWN, "known")                                                     \
	X(NEW_KEY, "new_key")                                                 \
	X(NEW_ISSUER, "new_issuer")                                           \
	X(ACCEPTED, "accepted")

#define MTA_POLICY_ENUM(prefix, e, name) prefix##e,
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_MX_, e, name)
enum mta_policy_mx { MTA_POLICY_MX_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_ADDR_, e, name)
enum mta_policy_addr { MTA_POLICY_ADDR_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_TLSA_, e, name)
enum mta_policy_tlsa { MTA_POLICY_TLSA_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_STS_, e, name)
enum mta_policy_sts { MTA_POLICY_STS_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_, e, name)
enum mta_policy_action { MTA_POLICY_ACTION_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_V_, e, name)
enum mta_policy_verifier { MTA_POLICY_VERIFIER_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_PT_, e, name)
enum mta_policy_ptype { MTA_POLICY_PTYPE_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_RPT_, e, name)
enum mta_rpt { MTA_RPT_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_CONT_MODE_, e, name)
enum mta_policy_cont_mode { MTA_POLICY_CONT_MODE_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E
#define MTA_POLICY_E(e, name) MTA_POLICY_ENUM(MTA_POLICY_CONT_, e, name)
enum mta_policy_cont { MTA_POLICY_CONT_MAP(MTA_POLICY_E) };
#undef MTA_POLICY_E

#define MTA_POLICY_REASON_MAX 512
#define MTA_POLICY_AUTH_MAX 200

struct mta_policy_in {
	const char *domain; /* destination (reasons) */
	const char *host;   /* MX host or relayhost (MTA-STS match, reasons) */
	unsigned port;	    /* (reasons: "_25._tcp.host") */
	bool has_table;	    /* a tls.policy_file entry applies */
	enum mta_tls_level table_level;
	enum mta_tls_level default_level;
	bool relay_auth;    /* relayhost with credentials: TLS before AUTH */
	bool dnssec_ok;	    /* the DNSSEC self-test passes */
	enum mta_policy_mx mx;
	enum mta_policy_addr addr;
	enum mta_policy_tlsa tlsa;
	const struct mta_dns_tlsa *rrs; /* tlsa == SECURE */
	size_t nrrs;
	const char *tlsa_base; /* where the TLSA were looked up (reasons) */
	enum mta_policy_sts sts;
	const struct mta_sts_policy *sts_policy; /* sts == HAVE */
	const char *sts_id;
	const char *why; /* detail of a failed MX, address or TLSA lookup
			  * ("servfail"), for the reason; may be NULL */
	unsigned require_sct;	/* tls.require_sct (0: CT off) */
	enum mta_policy_cont_mode continuity; /* mta_sts.continuity */
	bool requiretls;   /* RFC 8689 REQUIRETLS message, non-null sender */
	bool tls_optional; /* RFC 8689 "TLS-Required: No" message */
};

struct mta_policy {
	enum mta_policy_action action;
	enum mta_tls_level level;	 /* effective level for this host */
	enum mta_policy_verifier verifier;
	enum mta_smtpc_tls starttls;	 /* for the SMTP client */
	bool fallback;	 /* cleartext retry after a failed handshake */
	bool dane;	 /* a secure TLSA set applies (usable or not): SNI is
			  * the TLSA base, TLS is mandatory */
	bool sts_host;	 /* an MTA-STS policy covers this host */
	bool sts_testing_mismatch; /* testing policy, host not in it: log */
	enum mta_policy_ptype ptype;
	enum mta_rpt rpt;	 /* result type for the log (or NONE) */
	bool count;		 /* count rpt under ptype before connecting */
	const char *status;	 /* refusal: "4.7.5", "4.4.3" */
	const char *skip;	 /* refusal: mx_skipped reason token */
	bool requiretls; /* the peer must list REQUIRETLS after STARTTLS and
			  * gets the MAIL parameter (else 5.7.30) */
	char reason[MTA_POLICY_REASON_MAX];
};

/* What the verifier named by the decision found (only its part is read) */
struct mta_policy_check {
	bool dane_match;
	uint8_t usage, selector, mtype; /* the matched record */
	const char *dane_rpt;	  /* failure: RFC 8460 type, or NULL */
	const char *dane_reason;  /* failure: matcher's reason, or NULL */
	bool webpki_ok;
	const char *webpki_rpt;	  /* failure: RFC 8460 type */
	const char *webpki_why;	  /* failure: why */
	enum mta_ct_verdict ct;	  /* the SCT check (NOT_CHECKED: not run) */
	const char *ct_why;	  /* its evidence, or NULL */
	enum mta_policy_cont cont; /* key continuity (MTA-STS hosts) */
};

struct mta_policy_verdict {
	bool accept;
	char auth[MTA_POLICY_AUTH_MAX];
	enum mta_policy_ptype count_ptype; /* count_rpt under this type */
	const char *count_rpt;		   /* NULL: nothing to count */
	bool testing_failure;		   /* log event=sts_testing_failure */
	const char *status;		   /* refusal */
	char reason[MTA_POLICY_REASON_MAX];
	enum mta_ct_verdict ct;	/* CT verdict that applied (NOT_CHECKED:
				 * CT did not apply) */
	bool ct_refused;	/* refused by CT: ct=<verdict> */
	bool cont_log;		/* log event=tls_continuity status=cont */
	bool cont_held;		/* refused by continuity = hold */
	bool cont_learn;	/* record the key (webpki accepted, STS) */
};

void mta_policy_check_dest(const struct mta_policy_in *in,
			   struct mta_policy *out);
bool mta_policy_want_tlsa(const struct mta_policy_in *in);
void mta_policy_decide(const struct mta_policy_in *in, struct mta_policy *out);
void mta_policy_verdict(const struct mta_policy_in *in,
			const struct mta_policy *p,
			const struct mta_policy_check *chk,
			struct mta_policy_verdict *v);

const char *mta_policy_mx_name(enum mta_policy_mx v);
const char *mta_policy_addr_name(enum mta_policy_addr v);
const char *mta_policy_tlsa_name(enum mta_policy_tlsa v);
const char *mta_policy_action_name(enum mta_policy_action v);
const char *mta_policy_verifier_name(enum mta_policy_verifier v);
const char *mta_policy_ptype_name(enum mta_policy_ptype v);
const char *mta_rpt_name(enum mta_rpt v);
const char *mta_policy_cont_mode_name(enum mta_policy_cont_mode v);
const char *mta_policy_cont_name(enum mta_policy_cont v);

#endif
