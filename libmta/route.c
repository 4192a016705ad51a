/*
 * route.c - the input gathering of the outbound TLS decision (route.h).
 */
#include "route.h"

#include "err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

bool mta_route_literal(const char *host, struct sockaddr_storage *ss)
{
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	char buf[64];
	size_t n = strlen(host);

	memset(ss, 0, sizeof(*ss));
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n < sizeof(buf)) {
		memcpy(buf, host + 1, n - 2);
		buf[n - 2] = '\0';
		host = buf;
		if (strncasecmp(host, "IPv6:", 5) == 0)
			host += 5;
	}
	if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		return true;
	}
	return false;
}

bool mta_route_table(const struct mta_tlspolicy *table, const char *name,
		     enum mta_tls_level *level)
{
	int lv;

	if (table == NULL)
		return false;
	lv = mta_tlspolicy_lookup(table, name, NULL);
	if (lv < 0)
		return false;
	*level = (enum mta_tls_level)lv;
	return true;
}

enum mta_policy_mx mta_route_mx_status(const struct mta_dns_result *res)
{
	if (res->status == MTA_DNS_BOGUS)
		return MTA_POLICY_MX_BOGUS;
	if (res->status == MTA_DNS_TEMPFAIL)
		return MTA_POLICY_MX_FAILED;
	return res->dnssec == MTA_DNSSEC_SECURE ? MTA_POLICY_MX_SECURE
						: MTA_POLICY_MX_INSECURE;
}

int mta_route_hosts(const struct mta_dns_result *res, const char *domain,
		    unsigned port, struct mta_route_host *hosts, size_t max,
		    size_t *n, char status[16], char *text, size_t textlen)
{
	*n = 0;
	switch (res->status) {
	case MTA_DNS_OK:
		if (res->null_mx) {
			snprintf(status, 16, "5.1.10");
			snprintf(text, textlen,
				 "domain %s does not accept mail (null MX)",
				 domain);
			return MTA_EDNS;
		}
		for (size_t i = 0; i < res->count && *n < max; i++) {
			snprintf(hosts[*n].name, sizeof(hosts[0].name), "%s",
				 res->mx[i].host);
			hosts[(*n)++].port = port;
		}
		break;
	case MTA_DNS_NODATA: /* no MX: the domain itself (RFC 5321 §5.1) */
		if (max == 0)
			break;
		snprintf(hosts[0].name, sizeof(hosts[0].name), "%s", domain);
		hosts[0].port = port;
		*n = 1;
		break;
	case MTA_DNS_NXDOMAIN:
		snprintf(status, 16, "5.1.2");
		snprintf(text, textlen, "domain %s not found", domain);
		return MTA_EDNS;
	case MTA_DNS_TEMPFAIL: /* deferred by policy.c before */
	case MTA_DNS_BOGUS:
	default:
		snprintf(status, 16, "4.4.3");
		snprintf(text, textlen, "MX lookup for %s failed: %s", domain,
			 res->why ? res->why : "error");
		return MTA_EDNS;
	}
	if (*n == 0) {
		snprintf(status, 16, "4.4.4");
		snprintf(text, textlen, "no mail servers for %s", domain);
		return MTA_EDNS;
	}
	return 0;
}

enum mta_policy_addr mta_route_addr_status(const struct mta_dns_result *res)
{
	if (res->dnssec == MTA_DNSSEC_SECURE)
		return MTA_POLICY_ADDR_SECURE;
	if (res->cname && res->canonical != NULL &&
	    res->initial_dnssec == MTA_DNSSEC_SECURE)
		return MTA_POLICY_ADDR_CNAME_INSECURE;
	return MTA_POLICY_ADDR_INSECURE;
}

void mta_route_tlsa_bases(const struct mta_dns_result *res, const char *host,
			  enum mta_policy_addr addr, char *base, char *alt,
			  size_t len)
{
	alt[0] = '\0';
	if (res->cname && res->canonical != NULL &&
	    addr == MTA_POLICY_ADDR_SECURE) {
		/* expanded name first, then the original */
		snprintf(base, len, "%s", res->canonical);
		snprintf(alt, len, "%s", host);
	} else {
		/* no CNAME, or a secure CNAME to an insecure target: the
		 * original name */
		snprintf(base, len, "%s", host);
	}
}

enum mta_policy_tlsa mta_route_tlsa_status(const struct mta_dns_result *res,
					   const char **why)
{
	*why = NULL;
	if (res->status == MTA_DNS_OK && res->dnssec == MTA_DNSSEC_SECURE)
		return MTA_POLICY_TLSA_SECURE;
	if (res->status == MTA_DNS_TEMPFAIL || res->status == MTA_DNS_BOGUS ||
	    (res->status == MTA_DNS_OK &&
	     res->dnssec != MTA_DNSSEC_INSECURE)) {
		/* RFC 7672 §2.1.1: no connection to this host (policy.c) */
		*why = res->why ? res->why : mta_dnssec_name(res->dnssec);
		return res->status == MTA_DNS_BOGUS ||
				       res->dnssec == MTA_DNSSEC_BOGUS
			       ? MTA_POLICY_TLSA_BOGUS
			       : MTA_POLICY_TLSA_FAILED;
	}
	/* no TLSA here, or an insecure answer */
	return MTA_POLICY_TLSA_NONE;
}

int mta_route_tlsa_copy(const struct mta_dns_result *res,
			struct mta_dns_tlsa *out, size_t *nout,
			uint8_t **data)
{
	size_t n = res->count, total = 0, off = 0;
	uint8_t *p;

	*nout = n;
	*data = NULL;
	if (n > MTA_DANE_TLSA_MAX)
		return 0; /* refused by policy.c: too many */
	for (size_t i = 0; i < n; i++)
		total += res->tlsa[i].len;
	p = malloc(total + 1);
	if (p == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		out[i] = res->tlsa[i];
		memcpy(p + off, res->tlsa[i].data, res->tlsa[i].len);
		out[i].data = p + off;
		off += res->tlsa[i].len;
	}
	*data = p;
	return 0;
}

static void spki_hex(const gnutls_datum_t *der, char (*out)[65])
{
	struct mta_tls_certinfo ci;

	(*out)[0] = '\0';
	if (der != NULL && mta_tls_cert_info(der, &ci) == 0)
		snprintf(*out, sizeof(*out), "%s", ci.spki_sha256);
}

/* CT and the continuity hashes, once the WebPKI check passed */
static void after_webpki(const struct mta_route_verify *q,
			 struct mta_policy_check *chk)
{
	gnutls_datum_t iss = {NULL, 0};
	const gnutls_datum_t *chain;
	size_t n = 0;
	bool have_iss;
	struct timespec ts;

	chain = mta_tls_peer_chain(q->tls, &n);
	if (n == 0)
		return;
	have_iss = mta_tls_peer_issuer(q->tls, &iss) == 0;
	if (q->require_sct > 0 && q->verifier != MTA_POLICY_V_STS_TESTING) {
		clock_gettime(CLOCK_REALTIME, &ts);
		mta_ct_check(q->ct_list, &chain[0], have_iss ? &iss : NULL,
			     q->require_sct,
			     (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000,
			     q->ct_res);
		chk->ct = q->ct_res->verdict;
		chk->ct_why = q->ct_res->why;
	}
	if (q->leaf_spki != NULL)
		spki_hex(&chain[0], q->leaf_spki);
	if (q->issuer_spki != NULL)
		spki_hex(have_iss ? &iss : NULL, q->issuer_spki);
	gnutls_free(iss.data);
}

void mta_route_check(const struct mta_route_verify *q,
		     struct mta_dane_result *r, struct mta_policy_check *chk,
		     char *why, size_t whylen)
{
	memset(chk, 0, sizeof(*chk));
	why[0] = '\0';
	switch (q->verifier) {
	case MTA_POLICY_V_DANE: {
		struct mta_dane_query dq = {0};
		size_t n = 0;

		dq.chain = mta_tls_peer_chain(q->tls, &n);
		dq.nchain = n;
		dq.tlsa = q->tlsa;
		dq.ntlsa = q->ntlsa;
		dq.base = q->base;
		dq.nexthop = q->nexthop;
		dq.nnexthop = q->nexthop ? q->nnexthop : 0;
		dq.now = time(NULL);
		memset(r, 0, sizeof(*r));
		(void)mta_dane_verify(&dq, r);
		chk->dane_match = r->outcome == MTA_DANE_MATCH;
		chk->usage = r->usage;
		chk->selector = r->selector;
		chk->mtype = r->mtype;
		chk->dane_rpt = mta_dane_fail_rpt(r->fail);
		chk->dane_reason = r->reason;
		break;
	}
	case MTA_POLICY_V_WEBPKI:
	case MTA_POLICY_V_STS:
	case MTA_POLICY_V_STS_TESTING: {
		const char *rpt = "certificate-not-trusted";
		int rc = MTA_ETLS;

		if (q->webpki)
			rc = mta_tls_verify_webpki(q->tls, q->host, &rpt, why,
						   whylen);
		else
			snprintf(why, whylen, "no usable tls.ca_file");
		chk->webpki_ok = rc == 0;
		chk->webpki_rpt = rpt;
		chk->webpki_why = why;
		if (rc == 0)
			after_webpki(q, chk);
		break;
	}
	case MTA_POLICY_V_NONE:
	case MTA_POLICY_V_TLSA_UNUSABLE:
		break;
	}
}
