/*
 * explain.c - mtactl explain inside mtad (explain.h).  The route is
 * walked like delivery_conn.c walks it, with route.h's gathering and
 * policy.c's decision; nothing here decides.
 */
#include "explain.h"

#include "dane.h"
#include "err.h"
#include "mtasts.h"
#include "policy.h"
#include "route.h"
#include "routes.h"
#include "smtp_client.h"
#include "stream.h"
#include "sts.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_HOSTS 16 /* as delivery */
#define MAX_ADDRS 8

struct xhost {
	struct mta_route_host h;
	enum mta_policy_addr addr;
	enum mta_policy_tlsa tlsa_state;
	struct mta_dns_tlsa tlsa[MTA_DANE_TLSA_MAX];
	size_t ntlsa;
	uint8_t *tlsa_data;
	char base[MTA_DNS_NAME_MAX], alt[MTA_DNS_NAME_MAX];
	const char *why;
	struct sockaddr_storage addrs[MAX_ADDRS];
	size_t naddrs;
	bool decided;
	struct mta_policy pol;
};

struct mta_explain {
	struct mta_explain_params p;
	char domain[MTA_DNS_NAME_MAX];
	uv_timer_t kick;
	unsigned handles;
	bool cancelled, finished;
	struct mta_dns_query *q;
	struct mta_mtasts_query *sq;
	/* the routing table's rule, copied at start (a reload may free the
	 * table while the trace runs) */
	bool has_rule, rule_skipped_from;
	struct mta_routes_rule rule;
	/* per destination */
	bool has_table;
	enum mta_tls_level table_level;
	bool relay, mx_secure;
	char nexthop_cname[MTA_DNS_NAME_MAX];
	enum mta_policy_sts sts_state;
	struct mta_sts_policy sts;
	char sts_id[MTA_STS_ID_MAX + 1];
	struct mta_sts_cache_rec cached; /* before the lookup */
	bool have_cached;
	struct xhost hosts[MAX_HOSTS];
	size_t nhosts, hi, usable;
	/* --connect */
	struct mta_stream st;
	bool tcp_open, smtpc_live, tls_checked;
	struct mta_smtpc smtpc;
	struct mta_smtpc_config scfg;
	struct mta_stream_scratch scratch;
};

static void next_host(struct mta_explain *x);
static void next_connect(struct mta_explain *x);

__attribute__((format(printf, 3, 4))) static void out(struct mta_explain *x,
						      const char *tag,
						      const char *fmt, ...)
{
	char buf[MTA_EXPLAIN_LINE];
	int n;
	va_list ap;

	if (x->cancelled)
		return;
	n = snprintf(buf, sizeof(buf), "%-8s ", tag);
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	x->p.line(x->p.ud, buf);
}

static void maybe_free(struct mta_explain *x)
{
	if (x->handles > 0 || x->tcp_open || !(x->finished || x->cancelled))
		return;
	for (size_t i = 0; i < MAX_HOSTS; i++)
		free(x->hosts[i].tlsa_data);
	free(x);
}

static void on_handle_closed(uv_handle_t *h)
{
	struct mta_explain *x = h->data;
	x->handles--;
	maybe_free(x);
}

static void finish(struct mta_explain *x, int rc)
{
	if (x->finished)
		return;
	x->finished = true;
	if (!x->cancelled) {
		x->p.done(x->p.ud, rc);
		x->cancelled = true; /* no more callbacks */
	}
	uv_close((uv_handle_t *)&x->kick, on_handle_closed);
}

void mta_explain_cancel(struct mta_explain *x)
{
	if (x == NULL || x->cancelled)
		return;
	x->cancelled = true;
	if (x->q != NULL) {
		mta_dns_cancel(x->q);
		x->q = NULL;
	}
	if (x->sq != NULL) {
		mta_mtasts_cancel(x->sq);
		x->sq = NULL;
	}
	if (x->tcp_open)
		mta_stream_close(&x->st, false);
	if (!x->finished) {
		x->finished = true;
		uv_close((uv_handle_t *)&x->kick, on_handle_closed);
	}
}

static void fmt_time(int64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void fmt_addr(const struct sockaddr_storage *sa, char *ip, size_t len)
{
	if (sa->ss_family == AF_INET6)
		uv_ip6_name((const struct sockaddr_in6 *)sa, ip, len);
	else
		uv_ip4_name((const struct sockaddr_in *)sa, ip, len);
}

/* policy.c's inputs for host h, as gathered (delivery_conn.c policy_in) */
static void policy_in(const struct mta_explain *x, const struct xhost *h,
		      struct mta_policy_in *in)
{
	memset(in, 0, sizeof(*in));
	in->domain = x->domain;
	in->host = h->h.name;
	in->port = h->h.port;
	in->has_table = x->has_table;
	in->table_level = x->table_level;
	in->default_level = x->p.env.default_level;
	/* as delivery_conn.c: a route's relay uses the relayhost
	 * credentials only with auth=default */
	in->relay_auth = x->relay && x->p.env.relay_auth &&
			 (!x->has_rule || strcmp(x->rule.auth, "default") == 0);
	in->dnssec_ok = x->p.env.dnssec_ok;
	in->mx = x->mx_secure ? MTA_POLICY_MX_SECURE : MTA_POLICY_MX_INSECURE;
	in->addr = h->addr;
	in->tlsa = h->tlsa_state;
	in->rrs = h->tlsa;
	in->nrrs = h->ntlsa;
	in->tlsa_base = h->base;
	in->sts = x->sts_state;
	in->sts_policy = x->sts_state == MTA_POLICY_STS_HAVE ? &x->sts : NULL;
	in->sts_id = x->sts_id;
	in->why = h->why;
}

/* Why a connect decision is what it is (policy.c gives reasons only for
 * refusals): the verifier in words. */
static const char *connect_why(const struct mta_explain *x,
			       const struct mta_policy *pol)
{
	switch (pol->verifier) {
	case MTA_POLICY_V_DANE:
		return "usable DNSSEC-signed TLSA: DANE authentication "
		       "mandatory, never cleartext (RFC 7672 2.2)";
	case MTA_POLICY_V_TLSA_UNUSABLE:
		return "secure TLSA RRset with no usable record: TLS "
		       "mandatory, unauthenticated (RFC 7672 2.2)";
	case MTA_POLICY_V_STS:
		return "MTA-STS enforce: WebPKI-valid certificate for the MX "
		       "name required (RFC 8461 4.2)";
	case MTA_POLICY_V_STS_TESTING:
		return "MTA-STS testing: certificate checked and reported, "
		       "not enforced";
	case MTA_POLICY_V_WEBPKI:
		return x->has_table ? "policy table level verify: WebPKI "
				      "certificate for the host required"
				    : "level verify: WebPKI certificate for "
				      "the host required";
	case MTA_POLICY_V_NONE:
		break;
	}
	switch (pol->level) {
	case MTA_TLS_NONE:
		return "level none: cleartext";
	case MTA_TLS_ENCRYPT:
		return "level encrypt: TLS mandatory, no certificate check";
	case MTA_TLS_MAY:
	case MTA_TLS_DANE:
	case MTA_TLS_DANE_ONLY:
	case MTA_TLS_VERIFY:
		break;
	}
	return "opportunistic: STARTTLS when offered, no certificate "
	       "check, cleartext otherwise (RFC 7435)";
}

static const char *starttls_name(enum mta_smtpc_tls t)
{
	switch (t) {
	case MTA_SMTPC_TLS_NONE:
		return "off";
	case MTA_SMTPC_TLS_MAY:
		return "if-offered";
	case MTA_SMTPC_TLS_REQUIRE:
		return "required";
	}
	return "?";
}

/* ---- the decision ------------------------------------------------- */

static void decide(struct mta_explain *x, struct xhost *h)
{
	struct mta_policy_in in;
	struct mta_policy *pol = &h->pol;

	policy_in(x, h, &in);
	mta_policy_decide(&in, pol);
	h->decided = true;
	if (pol->action == MTA_POLICY_CONNECT) {
		x->usable++;
		out(x, "decision", "%s: connect level=%s verifier=%s "
			"starttls=%s%s policy=%s", h->h.name,
		    mta_tls_level_name(pol->level),
		    mta_policy_verifier_name(pol->verifier),
		    starttls_name(pol->starttls),
		    pol->fallback ? " cleartext-retry" : "",
		    mta_policy_ptype_name(pol->ptype));
		out(x, "why", "%s", connect_why(x, pol));
		if (pol->sts_testing_mismatch)
			out(x, "why", "host not in the MTA-STS testing policy: "
				      "reported (%s), not enforced",
			    mta_rpt_name(pol->rpt));
	} else {
		out(x, "decision", "%s: %s %s %s policy=%s result=%s",
		    h->h.name, mta_policy_action_name(pol->action),
		    pol->status ? pol->status : "-",
		    pol->skip ? pol->skip : "-",
		    mta_policy_ptype_name(pol->ptype), mta_rpt_name(pol->rpt));
		out(x, "why", "%s", pol->reason);
	}
	x->hi++;
	next_host(x);
}

/* A host ruled out before policy.c (no address): as delivery's
 * host_skip() */
static void skip_host(struct mta_explain *x, const char *token,
		      const char *status, const char *text)
{
	out(x, "decision", "%s: skip-host %s %s", x->hosts[x->hi].h.name,
	    status, token);
	out(x, "why", "%s", text);
	x->hi++;
	next_host(x);
}

static void tlsa_lookup(struct mta_explain *x);

static void on_tlsa(const struct mta_dns_result *res, void *ud)
{
	struct mta_explain *x = ud;
	struct xhost *h = &x->hosts[x->hi];
	size_t usable;

	x->q = NULL;
	h->tlsa_state = mta_route_tlsa_status(res, &h->why);
	if (h->tlsa_state == MTA_POLICY_TLSA_SECURE) {
		free(h->tlsa_data);
		if (mta_route_tlsa_copy(res, h->tlsa, &h->ntlsa,
					&h->tlsa_data) != 0) {
			finish(x, -ENOMEM);
			return;
		}
		usable = h->ntlsa <= MTA_DANE_TLSA_MAX
				 ? mta_dane_count_usable(h->tlsa, h->ntlsa)
				 : 0;
		out(x, "tlsa", "_%u._tcp.%s: secure, %zu record%s, %zu usable",
		    h->h.port, h->base, h->ntlsa, h->ntlsa == 1 ? "" : "s",
		    usable);
		for (size_t i = 0; i < h->ntlsa && i < MTA_DANE_TLSA_MAX;
		     i++) {
			const struct mta_dns_tlsa *r = &h->tlsa[i];
			char hex[41];
			size_t k;

			for (k = 0; k < r->len && k < 16; k++)
				snprintf(hex + 2 * k, 3, "%02x", r->data[k]);
			hex[2 * k] = '\0';
			out(x, "tlsa", "  %u %u %u %s%s %s", r->usage,
			    r->selector, r->mtype, hex,
			    r->len > 16 ? "..." : "",
			    mta_dane_usable(r) ? "usable"
					       : mta_dane_unusable_why(r));
		}
		decide(x, h);
		return;
	}
	if (h->tlsa_state != MTA_POLICY_TLSA_NONE) {
		out(x, "tlsa", "_%u._tcp.%s: %s (%s)", h->h.port, h->base,
		    mta_policy_tlsa_name(h->tlsa_state),
		    h->why ? h->why : "error");
		decide(x, h);
		return;
	}
	out(x, "tlsa", "_%u._tcp.%s: none (%s, %s)", h->h.port, h->base,
	    mta_dns_status_name(res->status), mta_dnssec_name(res->dnssec));
	if (h->alt[0] != '\0') {
		memcpy(h->base, h->alt, sizeof(h->base));
		h->alt[0] = '\0';
		tlsa_lookup(x);
		return;
	}
	decide(x, h);
}

static void tlsa_lookup(struct mta_explain *x)
{
	struct xhost *h = &x->hosts[x->hi];
	char owner[MTA_DNS_NAME_MAX + 32];
	int rc;

	snprintf(owner, sizeof(owner), "_%u._tcp.%s", h->h.port, h->base);
	rc = mta_dns_tlsa(x->p.env.dns, owner, on_tlsa, x, &x->q);
	if (rc != 0) {
		x->q = NULL;
		h->tlsa_state = MTA_POLICY_TLSA_FAILED;
		h->why = mta_strerror(rc);
		decide(x, h);
	}
}

static void on_addr(const struct mta_dns_result *res, void *ud)
{
	struct mta_explain *x = ud;
	struct xhost *h = &x->hosts[x->hi];
	struct mta_policy_in in;
	char list[400], ip[INET6_ADDRSTRLEN], text[600];
	size_t used = 0;

	x->q = NULL;
	h->naddrs = 0;
	if (res->status == MTA_DNS_OK)
		for (size_t i = 0; i < res->count && h->naddrs < MAX_ADDRS;
		     i++)
			h->addrs[h->naddrs++] = res->addr[i];
	if (h->naddrs == 0) {
		out(x, "addr", "%s: %s (%s)", mta_dns_status_name(res->status),
		    res->why ? res->why : "no addresses",
		    mta_dnssec_name(res->dnssec));
		if (res->status == MTA_DNS_BOGUS) {
			h->addr = MTA_POLICY_ADDR_BOGUS;
			h->why = res->why ? res->why : "error";
			decide(x, h);
			return;
		}
		if (res->status == MTA_DNS_TEMPFAIL) {
			snprintf(text, sizeof(text),
				 "address lookup for %s failed: %s", h->h.name,
				 res->why ? res->why : "error");
			skip_host(x, "address-failed", "4.4.3", text);
		} else {
			snprintf(text, sizeof(text),
				 "no address records for %s", h->h.name);
			skip_host(x, "no-address", "4.4.4", text);
		}
		return;
	}
	list[0] = '\0';
	for (size_t i = 0; i < h->naddrs && used + 2 < sizeof(list); i++) {
		fmt_addr(&h->addrs[i], ip, sizeof(ip));
		used += (size_t)snprintf(list + used, sizeof(list) - used,
					 "%s%s", i ? " " : "", ip);
	}
	h->addr = mta_route_addr_status(res);
	out(x, "addr", "%s: %s%s%s", mta_policy_addr_name(h->addr), list,
	    res->cname ? " via CNAME " : "",
	    res->cname && res->canonical ? res->canonical : "");
	policy_in(x, h, &in);
	if (!mta_policy_want_tlsa(&in)) {
		out(x, "tlsa", "not looked up (%s)",
		    !x->mx_secure			     ? "MX RRset not secure"
		    : h->addr == MTA_POLICY_ADDR_INSECURE ? "addresses not secure"
		    : x->has_table ? "the policy table entry rules DANE out"
				   : "not applicable");
		decide(x, h);
		return;
	}
	mta_route_tlsa_bases(res, h->h.name, h->addr, h->base, h->alt,
			     sizeof(h->base));
	tlsa_lookup(x);
}

static void next_host(struct mta_explain *x)
{
	struct xhost *h;
	int rc;

	if (x->cancelled)
		return;
	if (x->hi >= x->nhosts) {
		out(x, "result", "%zu of %zu host%s usable now%s", x->usable,
		    x->nhosts, x->nhosts == 1 ? "" : "s",
		    x->usable == 0 ? ": mail for this destination is deferred"
				   : "");
		if (x->p.connect && x->usable > 0) {
			x->hi = 0;
			next_connect(x);
			return;
		}
		finish(x, 0);
		return;
	}
	h = &x->hosts[x->hi];
	h->why = NULL;
	h->tlsa_state = MTA_POLICY_TLSA_NONE;
	h->ntlsa = 0;
	h->base[0] = h->alt[0] = '\0';
	out(x, "host", "%s port %u", h->h.name, h->h.port);
	if ((x->relay || h->h.name[0] == '[') &&
	    mta_route_literal(h->h.name, &h->addrs[0])) {
		h->naddrs = 1;
		h->addr = MTA_POLICY_ADDR_LITERAL;
		out(x, "addr", "literal: no DNS name, no DANE");
		decide(x, h);
		return;
	}
	rc = mta_dns_addr(x->p.env.dns, h->h.name, on_addr, x, &x->q);
	if (rc != 0) {
		char text[600];

		x->q = NULL;
		snprintf(text, sizeof(text), "address lookup for %s failed: %s",
			 h->h.name, mta_strerror(rc));
		skip_host(x, "address-failed", "4.4.3", text);
	}
}

static void on_mx(const struct mta_dns_result *res, void *ud)
{
	struct mta_explain *x = ud;
	struct mta_policy_in in;
	struct mta_policy pol;
	struct xhost h0;
	char status[16], text[600], list[600];
	size_t used = 0;

	x->q = NULL;
	x->mx_secure = res->dnssec == MTA_DNSSEC_SECURE;
	if (res->cname && res->canonical != NULL &&
	    res->dnssec == MTA_DNSSEC_SECURE)
		snprintf(x->nexthop_cname, sizeof(x->nexthop_cname), "%s",
			 res->canonical);
	list[0] = '\0';
	for (size_t i = 0; res->status == MTA_DNS_OK && i < res->count &&
			   used + 2 < sizeof(list);
	     i++)
		used += (size_t)snprintf(list + used, sizeof(list) - used,
					 "%s%u %s", i ? ", " : "",
					 res->mx[i].pref, res->mx[i].host);
	out(x, "mx", "%s, dnssec %s%s%s%s",
	    mta_dns_status_name(res->status), mta_dnssec_name(res->dnssec),
	    res->null_mx ? ": null MX" : "", list[0] ? ": " : "", list);
	memset(&h0, 0, sizeof(h0));
	policy_in(x, &h0, &in);
	in.host = x->domain;
	in.mx = mta_route_mx_status(res);
	in.why = res->why ? res->why : "error";
	mta_policy_check_dest(&in, &pol);
	if (pol.action != MTA_POLICY_CONNECT) {
		out(x, "decision", "%s: %s %s %s policy=%s result=%s",
		    x->domain, mta_policy_action_name(pol.action),
		    pol.status ? pol.status : "-", pol.skip ? pol.skip : "-",
		    mta_policy_ptype_name(pol.ptype), mta_rpt_name(pol.rpt));
		out(x, "why", "%s", pol.reason);
		out(x, "result", "no host tried: mail for this destination "
				 "is deferred");
		finish(x, 0);
		return;
	}
	struct mta_route_host hosts[MAX_HOSTS];
	if (mta_route_hosts(res, x->domain, x->p.env.cfg->delivery_port,
			    hosts, MAX_HOSTS, &x->nhosts, status, text,
			    sizeof(text)) != 0) {
		out(x, "decision", "%s: %s %s", x->domain,
		    status[0] == '5' ? "bounce" : "defer", status);
		out(x, "why", "%s", text);
		out(x, "result", "no host tried");
		finish(x, 0);
		return;
	}
	if (res->status == MTA_DNS_NODATA)
		out(x, "route", "no MX: the domain's own addresses (RFC 5321 "
				"5.1)");
	for (size_t i = 0; i < x->nhosts; i++)
		x->hosts[i].h = hosts[i];
	x->hi = 0;
	next_host(x);
}

static void resolve_mx(struct mta_explain *x)
{
	int rc;

	rc = mta_dns_mx(x->p.env.dns, x->domain, on_mx, x, &x->q);
	if (rc != 0) {
		struct mta_dns_result res;

		x->q = NULL;
		memset(&res, 0, sizeof(res));
		res.status = rc == MTA_EDNS ? MTA_DNS_NXDOMAIN
					    : MTA_DNS_TEMPFAIL;
		res.dnssec = MTA_DNSSEC_INDETERMINATE;
		res.why = mta_strerror(rc);
		on_mx(&res, x);
	}
}

static void on_sts(const struct mta_mtasts_result *r, void *ud)
{
	struct mta_explain *x = ud;
	char a[32], b[32], pat[400];
	size_t used = 0;

	x->sq = NULL;
	if (!r->have || r->policy->mode == MTA_STS_MODE_NONE) {
		out(x, "mta-sts", "no policy in force: %s",
		    r->have ? "mode none"
		    : r->why ? r->why
			     : "none published");
		resolve_mx(x);
		return;
	}
	x->sts = *r->policy;
	x->sts_state = MTA_POLICY_STS_HAVE;
	snprintf(x->sts_id, sizeof(x->sts_id), "%s", r->id ? r->id : "");
	if (x->have_cached && strcmp(x->cached.id, x->sts_id) == 0) {
		fmt_time(x->cached.fetched_at, a, sizeof(a));
		fmt_time(x->cached.expires_at, b, sizeof(b));
		out(x, "mta-sts", "id=%s mode=%s max_age=%u cached, fetched %s, "
				  "expires %s", x->sts_id,
		    mta_sts_mode_name(x->sts.mode), x->sts.max_age, a, b);
	} else {
		fmt_time((int64_t)time(NULL) + x->sts.max_age, b, sizeof(b));
		out(x, "mta-sts", "id=%s mode=%s max_age=%u fetched now, "
				  "expires %s", x->sts_id,
		    mta_sts_mode_name(x->sts.mode), x->sts.max_age, b);
	}
	pat[0] = '\0';
	for (size_t i = 0; i < x->sts.nmx && used + 2 < sizeof(pat); i++)
		used += (size_t)snprintf(pat + used, sizeof(pat) - used, "%s%s",
					 i ? " " : "", x->sts.mx[i]);
	out(x, "sts-mx", "%s", pat);
	resolve_mx(x);
}

/* The routing table's rule (delivery.c route_rcpt(), dest_get() and
 * delivery_conn.c's use of level=, helo=, auth=, bind=): true when the
 * trace ends here (refuse, hold). */
static bool show_rule(struct mta_explain *x)
{
	const struct mta_routes_rule *r = &x->rule;
	char opts[700] = "", ip[64];
	size_t u = 0;

	if (r->has_level)
		u += (size_t)snprintf(opts + u, sizeof(opts) - u, " level=%s",
				      mta_tls_level_name(r->level));
	if (r->auth[0] != '\0' && u < sizeof(opts))
		u += (size_t)snprintf(opts + u, sizeof(opts) - u, " auth=%s",
				      r->auth);
	if (r->helo[0] != '\0' && u < sizeof(opts))
		u += (size_t)snprintf(opts + u, sizeof(opts) - u, " helo=%s",
				      r->helo);
	for (int f = 0; f < 2 && u < sizeof(opts); f++) {
		const struct sockaddr_storage *b = f ? &r->bind6 : &r->bind4;
		if (!(f ? r->has_bind6 : r->has_bind4))
			continue;
		if ((f ? uv_ip6_name((const struct sockaddr_in6 *)b, ip,
				     sizeof(ip))
		       : uv_ip4_name((const struct sockaddr_in *)b, ip,
				     sizeof(ip))) != 0)
			snprintf(ip, sizeof(ip), "?");
		u += (size_t)snprintf(opts + u, sizeof(opts) - u, " bind=%s",
				      ip);
	}
	out(x, "route", "delivery.routes_file line %u: %s%s%s %s%s%s",
	    r->line, r->rcpt, r->sender[0] ? " from " : "", r->sender,
	    mta_routes_action_name(r->action),
	    r->action == MTA_ROUTES_RELAY ? " " : "",
	    r->action == MTA_ROUTES_RELAY ? r->host : "");
	if (opts[0] != '\0')
		out(x, "route", "options:%s", opts);
	switch (r->action) {
	case MTA_ROUTES_REFUSE:
		out(x, "result", "refused by the routing table: recipients "
				 "bounce (550 %s %s); nothing is connected",
		    r->status, r->text);
		finish(x, 0);
		return true;
	case MTA_ROUTES_HOLD:
		out(x, "result", "held by the routing table: recipients stay "
				 "queued (4.3.2, retried at the normal "
				 "backoff); nothing is connected");
		finish(x, 0);
		return true;
	case MTA_ROUTES_RELAY:
	case MTA_ROUTES_MX:
		break;
	}
	if (r->fb_host[0] != '\0')
		out(x, "route", "fallback=%s:%u once a recipient has had %u "
				"attempts%s (not walked here)",
		    r->fb_host, r->fb_port ? r->fb_port : x->p.env.cfg->delivery_port,
		    r->fb_attempts, r->fb_age ? " or the message is that old"
					      : "");
	return false;
}

static void on_kick(uv_timer_t *t)
{
	struct mta_explain *x = t->data;
	const struct mta_delivery_env *e = &x->p.env;
	const char *relay_host = e->relay_host;
	unsigned relay_port = e->relay_port;
	struct mta_buf raw = {0};
	int rc;

	/* a rule of the routing table wins over delivery.relayhost */
	if (x->has_rule) {
		relay_host = x->rule.action == MTA_ROUTES_RELAY ? x->rule.host
								: NULL;
		relay_port = x->rule.port ? x->rule.port : e->cfg->delivery_port;
	}
	x->has_table = mta_route_table(e->policy,
				       relay_host ? relay_host : x->domain,
				       &x->table_level);
	if (x->has_rule && x->rule.has_level) {
		x->has_table = true;
		x->table_level = x->rule.level;
	}
	out(x, "domain", "%s (delivery port %u)", x->domain,
	    e->cfg->delivery_port);
	out(x, "dnssec", "%s",
	    !e->selftest_done ? "self-test not finished yet (treated as failed)"
	    : e->dnssec_ok    ? "self-test passed: DNSSEC validation works"
			      : "self-test FAILED: unsigned MX answers are "
				"deferred");
	if (x->has_rule && x->rule.has_level)
		out(x, "table", "the route's level=%s (wins over "
				"tls.policy_file, DANE and MTA-STS)",
		    mta_tls_level_name(x->table_level));
	else if (x->has_table)
		out(x, "table", "tls.policy_file entry: %s (wins over DANE "
				"and MTA-STS)",
		    mta_tls_level_name(x->table_level));
	else
		out(x, "table", "no tls.policy_file entry%s",
		    e->policy ? "" : " (no table loaded)");
	out(x, "default", "tls.default_level %s",
	    mta_tls_level_name(e->default_level));
	if (x->rule_skipped_from && !x->has_rule)
		out(x, "route", "delivery.routes_file: rules with a from clause "
				"were passed over (no sender given: --from)");
	if (x->has_rule && show_rule(x))
		return;
	if (!x->has_rule && e->routes != NULL)
		out(x, "route", "no delivery.routes_file rule matches");
	if (relay_host != NULL) {
		x->relay = true;
		x->mx_secure = true; /* a non-MX destination (delivery) */
		if (x->has_rule)
			out(x, "route", "relay %s:%u (no MX, no MTA-STS)",
			    relay_host, relay_port);
		else
			out(x, "route", "delivery.relayhost %s:%u: every "
					"destination goes there (no MX, no "
					"MTA-STS)",
			    relay_host, relay_port);
		snprintf(x->hosts[0].h.name, sizeof(x->hosts[0].h.name), "%s",
			 relay_host);
		x->hosts[0].h.port = relay_port;
		x->nhosts = 1;
		next_host(x);
		return;
	}
	if (x->has_table) {
		out(x, "mta-sts", "not looked up: the table entry rules");
		resolve_mx(x);
		return;
	}
	if (e->mtasts == NULL) {
		out(x, "mta-sts", "not looked up: MTA-STS is not running");
		resolve_mx(x);
		return;
	}
	if (x->p.spool != NULL &&
	    mta_spool_sts_get(x->p.spool, x->domain, &raw) == 0 &&
	    mta_sts_cache_decode(raw.data, raw.len, &x->cached) == 0) {
		x->have_cached = true;
		x->cached.text = NULL; /* borrowed from raw */
	}
	mta_buf_free(&raw);
	rc = mta_mtasts_lookup(e->mtasts, x->domain, on_sts, x, &x->sq);
	if (rc != 0) {
		x->sq = NULL;
		out(x, "mta-sts", "lookup failed: %s", mta_strerror(rc));
		resolve_mx(x);
	}
}

/* ---- --connect ----------------------------------------------------- */

static void flush_engine(struct mta_explain *x)
{
	const uint8_t *p;
	size_t n = mta_smtpc_output(&x->smtpc, &p);

	if (n == 0)
		return;
	if (mta_stream_write(&x->st, p, n) != 0)
		return;
	mta_smtpc_output_consume(&x->smtpc, n);
}

static void show_chain(struct mta_explain *x)
{
	const gnutls_datum_t *chain;
	size_t n = 0;
	char a[32], b[32];

	chain = mta_tls_peer_chain(&x->st.tls, &n);
	if (n == 0)
		out(x, "cert", "no certificate presented");
	for (size_t i = 0; i < n; i++) {
		struct mta_tls_certinfo ci;

		if (mta_tls_cert_info(&chain[i], &ci) != 0) {
			out(x, "cert", "%zu: does not parse", i);
			continue;
		}
		fmt_time(ci.not_before, a, sizeof(a));
		fmt_time(ci.not_after, b, sizeof(b));
		out(x, "cert", "%zu subject: %.80s", i, ci.subject);
		out(x, "cert", "%zu issuer:  %.80s", i, ci.issuer);
		out(x, "cert", "%zu spki-sha256: %s", i, ci.spki_sha256);
		out(x, "cert", "%zu valid: %s .. %s", i, a, b);
	}
}

/* the handshake completed: the verifier policy.c named, then its verdict
 * (delivery_conn.c verify_tls(), without the counting) */
static void on_stream_tls(struct mta_stream *st)
{
	struct mta_explain *x = st->data;
	struct xhost *h = &x->hosts[x->hi];
	const char *nexthop[2] = {x->domain, x->nexthop_cname};
	struct mta_route_verify q = {
		.verifier = h->pol.verifier,
		.tls = &st->tls,
		.tlsa = h->tlsa,
		.ntlsa = h->ntlsa,
		.base = h->base,
		.nexthop = x->relay ? NULL : nexthop,
		.nnexthop = x->nexthop_cname[0] != '\0' ? 2 : 1,
		.webpki = x->p.env.webpki,
		.host = h->h.name,
	};
	struct mta_policy_check chk;
	struct mta_policy_verdict v;
	struct mta_policy_in in;
	struct mta_dane_result r;
	char desc[128], why[512];

	if (!x->smtpc_live)
		return;
	mta_tls_describe(&st->tls, desc, sizeof(desc));
	out(x, "tls", "%s, SNI %s", desc, h->pol.dane ? h->base : h->h.name);
	show_chain(x);
	mta_route_check(&q, &r, &chk, why, sizeof(why));
	policy_in(x, h, &in);
	mta_policy_verdict(&in, &h->pol, &chk, &v);
	x->tls_checked = true;
	if (v.accept) {
		out(x, "verdict", "pass: auth=%s", v.auth);
		if (v.testing_failure)
			out(x, "verdict", "MTA-STS testing failure (%s): %s, "
					  "reported only",
			    v.count_rpt ? v.count_rpt : "?", why);
		mta_smtpc_tls_started(&x->smtpc);
	} else {
		out(x, "verdict", "fail: %s %s (result %s)",
		    v.status ? v.status : "4.7.5", v.reason,
		    v.count_rpt ? v.count_rpt : "-");
		mta_smtpc_abort(&x->smtpc, v.status, v.reason);
	}
}

static void close_conn(struct mta_explain *x)
{
	if (x->tcp_open && !x->st.closing)
		mta_stream_close(&x->st, true);
}

static void on_event(struct mta_explain *x, enum mta_smtpc_ev ev,
		     const struct mta_smtpc_event *e)
{
	struct xhost *h = &x->hosts[x->hi];

	switch (ev) {
	case MTA_SMTPC_EV_STARTTLS:
		flush_engine(x);
		if (x->st.closing)
			break;
		if (mta_stream_starttls_client(&x->st, x->p.env.tls,
					       h->pol.dane ? h->base
							   : h->h.name) != 0 &&
		    !x->st.closing)
			mta_smtpc_abort(&x->smtpc, "4.7.5",
					"TLS initialisation failed");
		break;
	case MTA_SMTPC_EV_READY:
		if (!mta_smtpc_in_tls(&x->smtpc))
			out(x, "tls", "none: %s (level %s allows cleartext)",
			    mta_smtpc_caps(&x->smtpc)->starttls
				    ? "STARTTLS not used"
				    : "STARTTLS not offered",
			    mta_tls_level_name(h->pol.level));
		else
			out(x, "connect", "EHLO after STARTTLS answered; QUIT "
					  "(no MAIL sent)");
		mta_smtpc_quit(&x->smtpc);
		break;
	case MTA_SMTPC_EV_FAIL:
		if (!x->tls_checked || e->status == NULL ||
		    strcmp(e->status, "4.7.5") != 0)
			out(x, "verdict", "fail: %s %s",
			    e->status ? e->status : "4.4.2",
			    e->text ? e->text : "connection failed");
		break;
	case MTA_SMTPC_EV_CLOSED:
		close_conn(x);
		break;
	case MTA_SMTPC_EV_NONE:
	case MTA_SMTPC_EV_NEED_BODY:
	case MTA_SMTPC_EV_RCPT_RESULT:
	case MTA_SMTPC_EV_TXN_DONE:
		break;
	}
}

static void drive(struct mta_explain *x, const uint8_t *p, size_t len)
{
	struct mta_smtpc_event e;
	size_t off = 0;

	while (x->smtpc_live && !x->st.closing) {
		size_t n = 0;
		enum mta_smtpc_ev ev;

		memset(&e, 0, sizeof(e));
		ev = mta_smtpc_feed(&x->smtpc, p + off, len - off, &n, &e);
		off += n;
		flush_engine(x);
		if (ev == MTA_SMTPC_EV_NONE) {
			if (off >= len || n == 0)
				break;
			continue;
		}
		on_event(x, ev, &e);
		if (ev == MTA_SMTPC_EV_STARTTLS || ev == MTA_SMTPC_EV_CLOSED)
			break; /* after 220: the rest was plaintext */
	}
	if (x->smtpc_live && !x->st.closing)
		mta_stream_timer(&x->st, mta_smtpc_timeout_ms(&x->smtpc));
}

static void on_stream_data(struct mta_stream *st)
{
	struct mta_explain *x = st->data;
	const uint8_t *p;
	size_t n = mta_stream_pending(st, &p);

	if (n > 0 && x->smtpc_live)
		drive(x, p, n);
	mta_stream_consume(st, n);
	if (x->tls_checked && x->smtpc_live && !x->st.closing)
		drive(x, NULL, 0);
}

static void handshake_failed(struct mta_explain *x, const char *what)
{
	char why[300];

	snprintf(why, sizeof(why), "TLS handshake with %s failed: %s",
		 x->hosts[x->hi].h.name, what);
	mta_smtpc_abort(&x->smtpc, "4.7.5", why);
	x->tls_checked = false;
	drive(x, NULL, 0);
}

static void on_stream_eof(struct mta_stream *st, int status)
{
	struct mta_explain *x = st->data;

	if (!x->smtpc_live)
		return;
	if (st->tls_on && !st->tls.handshake_done) {
		handshake_failed(x, status == UV_EOF ? "connection closed by "
						       "peer"
						     : uv_strerror(status));
		return;
	}
	mta_smtpc_eof(&x->smtpc);
	drive(x, NULL, 0);
	close_conn(x);
}

static void on_stream_drained(struct mta_stream *st)
{
	(void)st;
}

static void on_stream_error(struct mta_stream *st, const char *reason,
			    const char *detail)
{
	struct mta_explain *x = st->data;

	if (!x->smtpc_live)
		return;
	if (st->tls_on && !st->tls.handshake_done) {
		handshake_failed(x, detail);
		return;
	}
	out(x, "verdict", "fail: connection failed: %s (%.200s)", reason,
	    detail);
	x->tls_checked = true; /* said */
	mta_smtpc_abort(&x->smtpc, "4.4.2", reason);
	drive(x, NULL, 0);
}

static void on_stream_timeout(struct mta_stream *st)
{
	struct mta_explain *x = st->data;

	if (!x->smtpc_live) {
		out(x, "connect", "failed: timed out");
		close_conn(x);
		return;
	}
	if (st->tls_on && !st->tls.handshake_done) {
		handshake_failed(x, "timed out");
		return;
	}
	mta_smtpc_timeout(&x->smtpc);
	drive(x, NULL, 0);
	close_conn(x);
}

static void on_stream_closed(struct mta_stream *st)
{
	struct mta_explain *x = st->data;

	x->tcp_open = false;
	if (x->smtpc_live) {
		mta_smtpc_free(&x->smtpc);
		x->smtpc_live = false;
	}
	if (x->cancelled) {
		maybe_free(x);
		return;
	}
	x->hi++;
	next_connect(x);
}

static void on_connect(struct mta_stream *st, int status)
{
	struct mta_explain *x = st->data;
	struct xhost *h = &x->hosts[x->hi];

	if (x->cancelled)
		return;
	if (status < 0) {
		out(x, "connect", "failed: %s", uv_strerror(status));
		close_conn(x);
		return;
	}
	memset(&x->scfg, 0, sizeof(x->scfg));
	x->scfg.helo_name = x->p.env.cfg->server_hostname;
	x->scfg.tls = h->pol.starttls;
	if (mta_smtpc_init(&x->smtpc, &x->scfg) != 0 ||
	    mta_stream_read_start(&x->st) != 0) {
		out(x, "connect", "failed: cannot start the session");
		close_conn(x);
		return;
	}
	x->smtpc_live = true;
	mta_stream_timer(&x->st, mta_smtpc_timeout_ms(&x->smtpc));
}

static const struct mta_stream_ops x_ops = {
	.connected = on_connect,
	.data = on_stream_data,
	.tls_ready = on_stream_tls,
	.eof = on_stream_eof,
	.drained = on_stream_drained,
	.timeout = on_stream_timeout,
	.error = on_stream_error,
	.closed = on_stream_closed,
};

static void next_connect(struct mta_explain *x)
{
	struct xhost *h;
	char ip[INET6_ADDRSTRLEN];

	if (x->cancelled)
		return;
	while (x->hi < x->nhosts &&
	       (x->hosts[x->hi].pol.action != MTA_POLICY_CONNECT ||
		x->hosts[x->hi].naddrs == 0))
		x->hi++;
	if (x->hi >= x->nhosts) {
		finish(x, 0);
		return;
	}
	h = &x->hosts[x->hi];
	struct sockaddr_storage *sa = &h->addrs[0];
	if (sa->ss_family == AF_INET6)
		((struct sockaddr_in6 *)sa)->sin6_port =
			htons((uint16_t)h->h.port);
	else
		((struct sockaddr_in *)sa)->sin_port =
			htons((uint16_t)h->h.port);
	fmt_addr(sa, ip, sizeof(ip));
	out(x, "connect", "%s[%s]:%u starttls=%s", h->h.name, ip, h->h.port,
	    starttls_name(h->pol.starttls));
	x->tls_checked = false;
	if (mta_stream_init(&x->st, x->p.loop, &x_ops, &x->scratch, x) != 0) {
		out(x, "connect", "failed: cannot create the socket");
		x->hi++;
		next_connect(x);
		return;
	}
	x->tcp_open = true;
	if (mta_stream_connect(&x->st, (struct sockaddr *)sa) != 0) {
		out(x, "connect", "failed: connect refused at once");
		mta_stream_close(&x->st, false);
		return;
	}
	mta_stream_timer(&x->st,
			 (uint64_t)x->p.env.cfg->connect_timeout * 1000u);
}

/* The first routing rule for the domain, as delivery.c's route_rcpt()
 * matches it; without a sender, rules with a from clause other than "*"
 * are passed over (and that is said). */
static void match_rule(struct mta_explain *x, const char *sender_domain)
{
	const struct mta_routes *t = x->p.env.routes;
	size_t n = mta_routes_count(t);

	for (size_t i = 0; t != NULL && i < n; i++) {
		const struct mta_routes_rule *r = mta_routes_get(t, i);

		if (!mta_routes_pattern_match(r->rcpt, x->domain))
			continue;
		if (r->sender[0] != '\0' && sender_domain == NULL &&
		    strcmp(r->sender, "*") != 0) {
			x->rule_skipped_from = true;
			continue;
		}
		if (r->sender[0] != '\0' && sender_domain != NULL &&
		    !mta_routes_pattern_match(r->sender, sender_domain))
			continue;
		x->rule = *r;
		x->has_rule = true;
		return;
	}
}

int mta_explain_start(const struct mta_explain_params *p,
		      struct mta_explain **outp)
{
	struct mta_explain *x;
	size_t n = strlen(p->domain);

	if (n == 0 || n >= 254 || strspn(p->domain,
					  "abcdefghijklmnopqrstuvwxyz"
					  "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
					  "0123456789-._[]:") != n)
		return -EINVAL;
	x = calloc(1, sizeof(*x));
	if (x == NULL)
		return -ENOMEM;
	x->p = *p;
	for (size_t i = 0; i < n; i++)
		x->domain[i] = (char)(p->domain[i] >= 'A' && p->domain[i] <= 'Z'
					      ? p->domain[i] - 'A' + 'a'
					      : p->domain[i]);
	if (n > 0 && x->domain[n - 1] == '.')
		x->domain[n - 1] = '\0';
	x->p.domain = x->domain;
	match_rule(x, p->sender_domain);
	x->p.sender_domain = NULL; /* borrowed: not kept */
	uv_timer_init(p->loop, &x->kick);
	x->kick.data = x;
	x->handles = 1;
	uv_timer_start(&x->kick, on_kick, 0, 0);
	*outp = x;
	return 0;
}
