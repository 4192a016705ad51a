/*
 * fuzz_policy.c - libFuzzer target for the outbound TLS decision
 * (libmta/policy.c).  The input selects every input of
 * mta_policy_decide() (levels, DNSSEC states, a TLSA record set with
 * arbitrary usage/selector/type/data, an MTA-STS policy and the host) and
 * the outcome of the verifier; the invariants of policy.h SECURITY are
 * asserted with abort():
 *  - never plaintext, and never a cleartext retry, when a usable TLSA
 *    record applies (the TLSA set is secure, the MX and addresses too,
 *    and the table lets DANE apply);
 *  - never WebPKI-only (or no check) when DANE applies;
 *  - never a connection after a bogus MX, address or TLSA answer;
 *  - never below the operator's level (table entry, else default);
 *  - the DANE verifier accepts only a DANE match;
 *  - a REQUIRETLS message never gets a non-authenticated channel (only
 *    DANE, MTA-STS, or WebPKI after a secure MX; STARTTLS required, no
 *    cleartext retry, the keyword checked); TLS-Required: No never
 *    applies DANE or MTA-STS.
 * Byte layout: 0 table (7 = none), 1 default, 2 mx, 3 self-test, 4
 * address, 5 TLSA state, 6 MTA-STS state and mode, 7 host choice, 8
 * relay credentials, 9 record count, then 4 bytes a record (usage,
 * selector, type, data length 0..64) with data taken from the rest, then
 * the verifier outcome byte.  The last byte's bits 0x30 select
 * REQUIRETLS (0x10) or TLS-Required: No (0x20).
 */
#include "dane.h"
#include "policy.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t take(const uint8_t **p, const uint8_t *end)
{
	return *p < end ? *(*p)++ : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct mta_dns_tlsa rrs[MTA_DANE_TLSA_MAX + 8];
	static uint8_t pool[MTA_DANE_TLSA_MAX + 8][64];
	static const char *const hosts[] = {"mx1.example.com", "example.com",
					    "a.b.example.com", "other.test",
					    ""};
	const uint8_t *p = data, *end = data + size;
	struct mta_sts_policy sts;
	struct mta_policy_in in;
	struct mta_policy out;
	struct mta_policy_check chk;
	struct mta_policy_verdict v;
	enum mta_tls_level op;
	uint8_t b;
	size_t n, usable = 0;
	bool dane_on, usable_applies;

	memset(&in, 0, sizeof(in));
	memset(&sts, 0, sizeof(sts));
	b = take(&p, end) % 8;
	in.has_table = b < MTA_TLS_LEVEL_COUNT;
	in.table_level = in.has_table ? (enum mta_tls_level)b : MTA_TLS_MAY;
	in.default_level = (enum mta_tls_level)(take(&p, end) %
						MTA_TLS_LEVEL_COUNT);
	in.mx = (enum mta_policy_mx)(take(&p, end) % 4);
	in.dnssec_ok = take(&p, end) & 1;
	in.addr = (enum mta_policy_addr)(take(&p, end) % 5);
	in.tlsa = (enum mta_policy_tlsa)(take(&p, end) % 4);
	b = take(&p, end);
	in.sts = (enum mta_policy_sts)(b % 3);
	sts.mode = (enum mta_sts_mode)((b / 3) % 3);
	sts.nmx = 1;
	strcpy(sts.mx[0], (b / 9) & 1 ? "*.example.com" : "mx1.example.com");
	in.sts_policy = in.sts == MTA_POLICY_STS_HAVE ? &sts : NULL;
	in.sts_id = "id";
	in.host = hosts[take(&p, end) % 5];
	in.domain = "example.com";
	in.port = 25;
	in.tlsa_base = in.host;
	in.relay_auth = take(&p, end) & 1;
	n = take(&p, end) % (MTA_DANE_TLSA_MAX + 8);
	for (size_t i = 0; i < n; i++) {
		rrs[i].usage = take(&p, end) % 5;
		rrs[i].selector = take(&p, end) % 3;
		rrs[i].mtype = take(&p, end) % 4;
		rrs[i].len = take(&p, end) % 65;
		for (size_t k = 0; k < rrs[i].len; k++)
			pool[i][k] = take(&p, end);
		rrs[i].data = pool[i];
	}
	in.rrs = rrs;
	in.nrrs = n;
	if (in.tlsa == MTA_POLICY_TLSA_SECURE && n <= MTA_DANE_TLSA_MAX)
		usable = mta_dane_count_usable(rrs, n);

	/* RFC 8689 inputs from the last byte (older seeds: neither) */
	b = size > 0 ? data[size - 1] : 0;
	in.requiretls = (b & 0x30) == 0x10;
	in.tls_optional = (b & 0x30) == 0x20;

	mta_policy_decide(&in, &out);

	op = in.has_table ? in.table_level : in.default_level;
	dane_on = !in.has_table || in.table_level == MTA_TLS_DANE ||
		  in.table_level == MTA_TLS_DANE_ONLY;
	usable_applies = usable > 0 && dane_on && !in.tls_optional &&
			 in.mx == MTA_POLICY_MX_SECURE &&
			 (in.addr == MTA_POLICY_ADDR_SECURE ||
			  in.addr == MTA_POLICY_ADDR_CNAME_INSECURE);
	if (out.action != MTA_POLICY_CONNECT) {
		if (out.skip == NULL || out.skip[0] == '\0' ||
		    out.reason[0] == '\0')
			abort();
		return 0;
	}
	/* never a connection on bogus */
	if (in.mx == MTA_POLICY_MX_BOGUS || in.mx == MTA_POLICY_MX_FAILED ||
	    in.addr == MTA_POLICY_ADDR_BOGUS)
		abort();
	if (mta_policy_want_tlsa(&in) && (in.tlsa == MTA_POLICY_TLSA_BOGUS ||
					 in.tlsa == MTA_POLICY_TLSA_FAILED))
		abort();
	if (in.mx == MTA_POLICY_MX_INSECURE && !in.dnssec_ok)
		abort();
	/* never plaintext, never WebPKI-only when a usable TLSA applies */
	if (usable_applies &&
	    (out.starttls != MTA_SMTPC_TLS_REQUIRE || out.fallback ||
	     out.verifier != MTA_POLICY_V_DANE || !out.dane))
		abort();
	if (out.dane && (out.fallback || out.starttls != MTA_SMTPC_TLS_REQUIRE ||
			 out.sts_host))
		abort();
	/* never below the operator */
	if (op != MTA_TLS_NONE && op != MTA_TLS_MAY && op != MTA_TLS_DANE &&
	    out.starttls != MTA_SMTPC_TLS_REQUIRE)
		abort();
	if (op == MTA_TLS_VERIFY && out.verifier != MTA_POLICY_V_WEBPKI &&
	    out.verifier != MTA_POLICY_V_STS &&
	    out.verifier != MTA_POLICY_V_DANE)
		abort();
	if (out.fallback && out.level != MTA_TLS_MAY)
		abort();
	/* REQUIRETLS: only an authenticated channel, STARTTLS required, no
	 * cleartext retry, the keyword checked (RFC 8689 §4.2.1) */
	if (in.requiretls &&
	    (!out.requiretls || out.starttls != MTA_SMTPC_TLS_REQUIRE ||
	     out.fallback ||
	     (out.verifier != MTA_POLICY_V_DANE &&
	      out.verifier != MTA_POLICY_V_STS &&
	      out.verifier != MTA_POLICY_V_WEBPKI)))
		abort();
	if (in.requiretls && out.verifier == MTA_POLICY_V_WEBPKI &&
	    (in.mx != MTA_POLICY_MX_SECURE ||
	     in.addr == MTA_POLICY_ADDR_LITERAL))
		abort();
	if (in.requiretls && out.verifier == MTA_POLICY_V_STS &&
	    !out.sts_host)
		abort();
	/* TLS-Required: No: neither DANE nor MTA-STS */
	if (in.tls_optional && (out.dane || out.sts_host || out.requiretls))
		abort();
	if (strcmp(mta_tls_level_name(out.level), "?") == 0 ||
	    strcmp(mta_policy_verifier_name(out.verifier), "?") == 0)
		abort();

	/* the verdict: DANE accepts only a match */
	b = take(&p, end);
	memset(&chk, 0, sizeof(chk));
	chk.dane_match = b & 1;
	chk.webpki_ok = b & 2;
	chk.usage = 3;
	chk.webpki_why = "fuzz";
	/* issue 16: CT and continuity inputs */
	in.require_sct = (b >> 2) & 3;
	chk.ct = (enum mta_ct_verdict)((b >> 4) % 5);
	in.continuity = (enum mta_policy_cont_mode)(take(&p, end) % 3);
	chk.cont = (enum mta_policy_cont)(take(&p, end) % 6);
	mta_policy_verdict(&in, &out, &chk, &v);
	/* CT never applies to DANE (nor to testing, nor without require) */
	if (v.ct_refused && (out.verifier == MTA_POLICY_V_DANE ||
			     out.verifier == MTA_POLICY_V_STS_TESTING ||
			     in.require_sct == 0 || chk.ct == MTA_CT_OK))
		abort();
	/* continuity never holds a DANE host nor in log/off mode */
	if (v.cont_held && (out.verifier == MTA_POLICY_V_DANE ||
			    in.continuity != MTA_POLICY_CONT_MODE_HOLD))
		abort();
	if (out.verifier == MTA_POLICY_V_DANE && v.accept != chk.dane_match)
		abort();
	if ((out.verifier == MTA_POLICY_V_STS ||
	     out.verifier == MTA_POLICY_V_WEBPKI) && !chk.webpki_ok && v.accept)
		abort();
	if ((out.verifier == MTA_POLICY_V_STS ||
	     out.verifier == MTA_POLICY_V_WEBPKI) && chk.webpki_ok &&
	    v.accept != !(v.ct_refused || v.cont_held))
		abort();
	if (v.accept && (v.ct_refused || v.cont_held))
		abort();
	if (!v.accept &&
	    ((v.status[0] != '4' &&
	      !(out.requiretls && strcmp(v.status, "5.7.10") == 0)) ||
	     v.reason[0] == '\0'))
		abort();
	return 0;
}
