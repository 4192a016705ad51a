/*
 * explain.h - mtactl explain: the outbound TLS decision for one
 * destination, traced line by line, with mtad's own resolver, trust
 * anchor, DNSSEC self-test state, MTA-STS cache and policy table.
 *
 * DESCRIPTION
 *	mta_explain_start() walks the route of a destination as delivery
 *	does (delivery_conn.c), with the same input gathering (route.h) and
 *	the same decision (policy.c): the routing table's rule
 *	(delivery.routes_file: the first rule for the domain and
 *	p->sender_domain, matched when explain starts; refuse and hold end
 *	the trace there, relay walks the relay host with the rule's level=,
 *	mx the MX hosts; fallback= is shown), the local table entry, the
 *	MTA-STS policy (mta_mtasts_lookup(), so a lookup may fetch and cache a
 *	policy, as the next delivery would), the MX RRset and its DNSSEC
 *	status, and for each host its addresses, the TLSA lookup (records,
 *	usable or why not) and mta_policy_decide()'s outcome: action, level,
 *	verifier, STARTTLS mode, RFC 8460 policy and result type, and the
 *	reason.  With connect, every host the decision lets through is then
 *	connected (its first address): EHLO, STARTTLS when the decision asks
 *	for it, the peer's chain (subject, issuer, SPKI SHA-256, validity),
 *	the verifier run by mta_route_check() and mta_policy_verdict()'s
 *	pass or fail with its reason; then QUIT.  MAIL is never sent.
 *
 *	Each output line is handed to p->line without a newline, at most
 *	MTA_EXPLAIN_LINE bytes, as "<tag> <text>" with the tag padded to
 *	nine columns (tags: domain, dnssec, table, default, route, mta-sts,
 *	sts-mx, mx, host, addr, tlsa, decision, why, connect, tls, cert,
 *	verdict, result).  p->done is called exactly once at the end with 0
 *	(the trace is complete, whatever it found) or an error.
 *
 *	mta_explain_cancel() stops a running explain: no more callbacks;
 *	its memory is released when its handles have closed.
 *
 * THREADS
 *	Loop thread.
 *
 * ASYNC CONTRACT
 *	mta_explain_start() returns an error and never calls back, or
 *	returns 0 and calls done exactly once (never from inside the call)
 *	unless cancelled.
 *
 * OWNERSHIP
 *	The params and what they point to are borrowed until done (or the
 *	cancel); the domain is copied.
 *
 * ERRORS
 *	-EINVAL (a domain that is not a host name), -ENOMEM.
 *
 * SECURITY
 *	The trace shows names and data from DNS and the peer: the caller's
 *	line writer replaces control bytes.  Nothing is sent to the peer but
 *	EHLO, STARTTLS and QUIT.  Each step has delivery's timeouts.
 *
 * CAVEATS
 *	A REQUIRETLS message or TLS-Required: No changes a delivery's level;
 *	explain shows the destination's decision for an ordinary message
 *	(policy.c's requiretls and tls_optional inputs false).  Up to 16 MX hosts and the first 8
 *	addresses of each, as delivery.
 */
#ifndef MTA_EXPLAIN_H
#define MTA_EXPLAIN_H

#include "delivery.h"
#include "spool.h"

#include <stdbool.h>
#include <uv.h>

#define MTA_EXPLAIN_LINE 900

struct mta_explain;

struct mta_explain_params {
	uv_loop_t *loop;
	struct mta_delivery_env env; /* what delivery decides with */
	struct mta_spool *spool;     /* the MTA-STS cache (times shown) */
	const char *domain;
	/* the sender's domain for delivery.routes_file rules with a from
	 * clause: "" the null sender, NULL none given (such rules are not
	 * considered) */
	const char *sender_domain;
	bool connect;
	void (*line)(void *ud, const char *text);
	void (*done)(void *ud, int rc);
	void *ud;
};

int mta_explain_start(const struct mta_explain_params *p,
		      struct mta_explain **out);
void mta_explain_cancel(struct mta_explain *x);

#endif
