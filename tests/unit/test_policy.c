/* Table-driven tests of the outbound TLS decision (libmta/policy.c).
 *
 * Two tables.  named[] holds hand-written rows, each from a sentence of
 * RFC 7672, RFC 8461, RFC 8460 or docs/security.md, with its conformance
 * id.  The product test walks every combination of (table entry, default
 * level, TLSA result, MTA-STS policy) with a secure MX and secure
 * addresses -- 7 x 6 x 6 x 5 = 1260 rows -- plus every combination of
 * (MX status, self-test, address status, table entry, TLSA result) --
 * 4 x 2 x 5 x 3 x 6 = 720 rows -- and compares the decision with
 * expect(), which restates docs/security.md "Which check applies where"
 * rule by rule (not the code's structure), and checks the invariants of
 * policy.h SECURITY on every row.  A failing row is printed with its
 * inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "policy.h"

static int test_setup(void **state)
{
	(void)state;
	alarm(60);
	return 0;
}

/* ---- inputs ---- */

static const uint8_t digest[32] = {1, 2, 3};
static const struct mta_dns_tlsa usable[] = {{3, 1, 1, digest, 32}};
static const struct mta_dns_tlsa unusable[] = {{1, 1, 1, digest, 32},
					       {0, 0, 1, digest, 32}};
static struct mta_dns_tlsa too_many[MTA_DANE_TLSA_MAX + 1];

enum tl { TL_NONE, TL_USABLE, TL_UNUSABLE, TL_BOGUS, TL_FAILED, TL_MANY,
	  TL_N };
static const char *const tl_name[TL_N] = {"none", "usable", "unusable",
					  "bogus", "failed", "65-records"};
enum st { ST_NONE, ST_TEST_MATCH, ST_TEST_MISMATCH, ST_ENF_MATCH,
	  ST_ENF_MISMATCH, ST_N };
static const char *const st_name[ST_N] = {"none", "testing", "testing-mx-x",
					  "enforce", "enforce-mx-x"};

static struct mta_sts_policy sts_testing, sts_enforce;

static void set_tlsa(struct mta_policy_in *in, enum tl t)
{
	in->tlsa = MTA_POLICY_TLSA_SECURE;
	switch (t) {
	case TL_NONE:
		in->tlsa = MTA_POLICY_TLSA_NONE;
		break;
	case TL_USABLE:
		in->rrs = usable;
		in->nrrs = 1;
		break;
	case TL_UNUSABLE:
		in->rrs = unusable;
		in->nrrs = 2;
		break;
	case TL_BOGUS:
		in->tlsa = MTA_POLICY_TLSA_BOGUS;
		break;
	case TL_FAILED:
		in->tlsa = MTA_POLICY_TLSA_FAILED;
		break;
	case TL_MANY:
		in->rrs = too_many;
		in->nrrs = MTA_DANE_TLSA_MAX + 1;
		break;
	case TL_N:
		break;
	}
}

static void set_sts(struct mta_policy_in *in, enum st s)
{
	in->sts = s == ST_NONE ? MTA_POLICY_STS_NONE : MTA_POLICY_STS_HAVE;
	in->sts_policy = s == ST_TEST_MATCH || s == ST_TEST_MISMATCH
				 ? &sts_testing
			 : s == ST_NONE ? NULL
					: &sts_enforce;
	in->host = s == ST_TEST_MISMATCH || s == ST_ENF_MISMATCH
			   ? "other.example.net"
			   : "mx1.example.com";
	in->sts_id = "20260101";
}

static void base_in(struct mta_policy_in *in)
{
	memset(in, 0, sizeof(*in));
	in->domain = "example.com";
	in->host = "mx1.example.com";
	in->port = 25;
	in->default_level = MTA_TLS_MAY;
	in->dnssec_ok = true;
	in->mx = MTA_POLICY_MX_SECURE;
	in->addr = MTA_POLICY_ADDR_SECURE;
	in->tlsa_base = "mx1.example.com";
}

static int group_setup(void **state)
{
	(void)state;
	for (size_t i = 0; i < MTA_DANE_TLSA_MAX + 1; i++)
		too_many[i] = usable[0];
	sts_testing.mode = MTA_STS_MODE_TESTING;
	sts_testing.nmx = 1;
	strcpy(sts_testing.mx[0], "*.example.com");
	sts_enforce = sts_testing;
	sts_enforce.mode = MTA_STS_MODE_ENFORCE;
	return 0;
}

/* ---- the expected decision, from docs/security.md and the RFCs ---- */

struct want {
	enum mta_policy_action action;
	const char *skip; /* when not CONNECT */
	enum mta_tls_level level;
	enum mta_policy_verifier verifier;
	enum mta_smtpc_tls starttls;
	bool fallback;
};

static enum mta_smtpc_tls starttls_of(enum mta_tls_level l)
{
	/* docs/configuration.md: none never tries; may and dane (without
	 * TLSA) are opportunistic; the rest demand TLS */
	return l == MTA_TLS_NONE				? MTA_SMTPC_TLS_NONE
	       : l == MTA_TLS_MAY || l == MTA_TLS_DANE ? MTA_SMTPC_TLS_MAY
						       : MTA_SMTPC_TLS_REQUIRE;
}

static struct want refused(enum mta_policy_action a, const char *skip)
{
	struct want w = {0};
	w.action = a;
	w.skip = skip;
	return w;
}

static struct want expect(const struct mta_policy_in *in, enum tl t,
			  enum st s)
{
	struct want w = {0};
	/* 1. the local table entry, else the operator default */
	enum mta_tls_level op = in->has_table ? in->table_level
					      : in->default_level;
	bool dane_on = !in->has_table || in->table_level == MTA_TLS_DANE ||
		       in->table_level == MTA_TLS_DANE_ONLY;

	/* DANE-04/05: bogus or failed MX: delay, no implicit MX */
	if (in->mx == MTA_POLICY_MX_BOGUS)
		return refused(MTA_POLICY_DEFER, "mx-bogus");
	if (in->mx == MTA_POLICY_MX_FAILED)
		return refused(MTA_POLICY_DEFER, "mx-failed");
	/* DANE-01: without working validation "insecure" proves nothing */
	if (in->mx == MTA_POLICY_MX_INSECURE && !in->dnssec_ok)
		return refused(MTA_POLICY_DEFER, "dnssec-selftest");
	/* DANE-07: a bogus address: that host is not used */
	if (in->addr == MTA_POLICY_ADDR_BOGUS)
		return refused(MTA_POLICY_SKIP_HOST, "address-bogus");
	/* RFC 7672 §2.2.1-2.2.2: TLSA only behind a secure MX and secure
	 * (or secure-CNAME) addresses, and never for a literal (DANE-29) */
	if (!dane_on || in->mx != MTA_POLICY_MX_SECURE ||
	    !(in->addr == MTA_POLICY_ADDR_SECURE ||
	      in->addr == MTA_POLICY_ADDR_CNAME_INSECURE))
		t = TL_NONE;
	/* 2. DANE: DANE-08/09 bogus or failed TLSA: host not used;
	 * more than 64 records: fail closed */
	if (t == TL_BOGUS)
		return refused(MTA_POLICY_SKIP_HOST, "tlsa-bogus");
	if (t == TL_FAILED)
		return refused(MTA_POLICY_SKIP_HOST, "tlsa-failed");
	if (t == TL_MANY)
		return refused(MTA_POLICY_SKIP_HOST, "tlsa-too-many");
	if (t == TL_USABLE) { /* DANE-50 */
		w.level = MTA_TLS_DANE_ONLY;
		w.verifier = MTA_POLICY_V_DANE;
		w.starttls = MTA_SMTPC_TLS_REQUIRE;
		return w;
	}
	if (t == TL_UNUSABLE) { /* DANE-51: TLS mandatory, unauthenticated */
		if (op == MTA_TLS_DANE_ONLY)
			return refused(MTA_POLICY_SKIP_HOST, "tlsa-unusable");
		w.level = op == MTA_TLS_VERIFY ? MTA_TLS_VERIFY
					       : MTA_TLS_ENCRYPT;
		w.verifier = op == MTA_TLS_VERIFY
				     ? MTA_POLICY_V_WEBPKI
				     : MTA_POLICY_V_TLSA_UNUSABLE;
		w.starttls = MTA_SMTPC_TLS_REQUIRE;
		return w;
	}
	/* DANE-23: dane-only without usable TLSA */
	if (op == MTA_TLS_DANE_ONLY)
		return refused(MTA_POLICY_SKIP_HOST, "dane-required");
	/* 3. MTA-STS enforce (not with a table entry: RFC 7672 §6 local
	 * policy wins) */
	if (!in->has_table && (s == ST_ENF_MATCH || s == ST_ENF_MISMATCH)) {
		if (s == ST_ENF_MISMATCH) /* STS-82 */
			return refused(MTA_POLICY_SKIP_HOST,
				       "mta-sts-mx-mismatch");
		w.level = MTA_TLS_VERIFY; /* STS-90 */
		w.verifier = MTA_POLICY_V_STS;
		w.starttls = MTA_SMTPC_TLS_REQUIRE;
		return w;
	}
	/* 4. operator default; 5. testing only reports (STS-83, STS-112) and
	 * never lowers it */
	w.level = op;
	w.verifier = op == MTA_TLS_VERIFY ? MTA_POLICY_V_WEBPKI
		     : !in->has_table && s != ST_NONE
			     ? MTA_POLICY_V_STS_TESTING
			     : MTA_POLICY_V_NONE;
	w.starttls = starttls_of(op);
	w.fallback = op == MTA_TLS_MAY; /* DANE-62, only at may */
	return w;
}

/* policy.h SECURITY, on every row */
static void invariants(const struct mta_policy_in *in, enum tl t,
		       const struct mta_policy *p)
{
	enum mta_tls_level op = in->has_table ? in->table_level
					      : in->default_level;

	if (p->action != MTA_POLICY_CONNECT) {
		assert_non_null(p->skip);
		assert_true(p->skip[0] != '\0');
		assert_true(p->reason[0] != '\0');
		assert_true(p->status[0] == '4');
		return;
	}
	assert_true(in->mx != MTA_POLICY_MX_BOGUS);
	assert_true(in->addr != MTA_POLICY_ADDR_BOGUS);
	assert_true(in->tlsa != MTA_POLICY_TLSA_BOGUS || !p->dane);
	if (p->dane) { /* a secure TLSA set applies */
		assert_int_equal(p->starttls, MTA_SMTPC_TLS_REQUIRE);
		assert_false(p->fallback);
		assert_int_not_equal(p->verifier, MTA_POLICY_V_STS);
		assert_int_not_equal(p->verifier, MTA_POLICY_V_STS_TESTING);
	}
	if (t == TL_USABLE && p->dane)
		assert_int_equal(p->verifier, MTA_POLICY_V_DANE);
	if (p->fallback)
		assert_int_equal(p->level, MTA_TLS_MAY);
	/* never below the operator: a level demanding TLS stays demanding
	 * it; verify stays verified (by WebPKI or DANE) */
	if (starttls_of(op) == MTA_SMTPC_TLS_REQUIRE)
		assert_int_equal(p->starttls, MTA_SMTPC_TLS_REQUIRE);
	if (op == MTA_TLS_VERIFY)
		assert_true(p->verifier == MTA_POLICY_V_WEBPKI ||
			    p->verifier == MTA_POLICY_V_STS ||
			    p->verifier == MTA_POLICY_V_DANE);
}

static void check_row(const struct mta_policy_in *in, enum tl t, enum st s,
		      const char *label)
{
	struct want w = expect(in, t, s);
	struct mta_policy p;
	bool ok;

	mta_policy_decide(in, &p);
	ok = p.action == w.action;
	if (ok && w.action != MTA_POLICY_CONNECT)
		ok = strcmp(p.skip, w.skip) == 0;
	if (ok && w.action == MTA_POLICY_CONNECT)
		ok = p.level == w.level && p.verifier == w.verifier &&
		     p.starttls == w.starttls && p.fallback == w.fallback;
	if (!ok) {
		print_error("%s: table=%s default=%s mx=%s selftest=%d "
			    "addr=%s tlsa=%s sts=%s\n"
			    "  want %s %s level=%s verifier=%s starttls=%d "
			    "fallback=%d\n"
			    "  got  %s %s level=%s verifier=%s starttls=%d "
			    "fallback=%d (%s)\n",
			    label,
			    in->has_table ? mta_tls_level_name(in->table_level)
					  : "-",
			    mta_tls_level_name(in->default_level),
			    mta_policy_mx_name(in->mx), in->dnssec_ok,
			    mta_policy_addr_name(in->addr), tl_name[t],
			    st_name[s], mta_policy_action_name(w.action),
			    w.skip ? w.skip : "", mta_tls_level_name(w.level),
			    mta_policy_verifier_name(w.verifier), w.starttls,
			    w.fallback, mta_policy_action_name(p.action),
			    p.skip, mta_tls_level_name(p.level),
			    mta_policy_verifier_name(p.verifier), p.starttls,
			    p.fallback, p.reason);
		fail();
	}
	invariants(in, t, &p);
}

static void test_product_levels(void **state)
{
	size_t rows = 0;
	(void)state;
	for (int tab = -1; tab < MTA_TLS_LEVEL_COUNT; tab++)
		for (int def = 0; def < MTA_TLS_LEVEL_COUNT; def++)
			for (int t = 0; t < TL_N; t++)
				for (int s = 0; s < ST_N; s++) {
					struct mta_policy_in in;

					base_in(&in);
					in.has_table = tab >= 0;
					in.table_level = tab >= 0
								 ? (enum mta_tls_level)tab
								 : MTA_TLS_MAY;
					in.default_level =
						(enum mta_tls_level)def;
					set_tlsa(&in, (enum tl)t);
					set_sts(&in, (enum st)s);
					check_row(&in, (enum tl)t, (enum st)s,
						  "levels");
					rows++;
				}
	print_message("levels: %zu rows\n", rows);
	assert_int_equal(rows, 7 * 6 * 6 * 5);
}

static void test_product_dnssec(void **state)
{
	static const int tabs[] = {-1, MTA_TLS_DANE_ONLY, MTA_TLS_ENCRYPT};
	size_t rows = 0;
	(void)state;
	for (int mx = 0; mx <= MTA_POLICY_MX_FAILED; mx++)
		for (int ok = 0; ok < 2; ok++)
			for (int a = 0; a <= MTA_POLICY_ADDR_BOGUS; a++)
				for (size_t ti = 0; ti < 3; ti++)
					for (int t = 0; t < TL_N; t++) {
						struct mta_policy_in in;

						base_in(&in);
						in.mx = (enum mta_policy_mx)mx;
						in.dnssec_ok = ok;
						in.addr = (enum mta_policy_addr)a;
						in.has_table = tabs[ti] >= 0;
						if (in.has_table)
							in.table_level = (enum mta_tls_level)tabs[ti];
						set_tlsa(&in, (enum tl)t);
						check_row(&in, (enum tl)t,
							  ST_NONE, "dnssec");
						rows++;
					}
	print_message("dnssec: %zu rows\n", rows);
	assert_int_equal(rows, 4 * 2 * 5 * 3 * 6);
}

/* ---- named rows ---- */

struct named {
	const char *id;
	int table; /* -1: none */
	enum mta_tls_level def;
	enum mta_policy_mx mx;
	bool selftest;
	enum mta_policy_addr addr;
	enum tl tlsa;
	enum st sts;
	enum mta_policy_action action;
	const char *skip;
	enum mta_tls_level level;
	enum mta_policy_verifier verifier;
	bool fallback;
	enum mta_rpt rpt;
};

#define S MTA_POLICY_MX_SECURE
#define I MTA_POLICY_MX_INSECURE
#define AS MTA_POLICY_ADDR_SECURE
#define C MTA_POLICY_CONNECT
#define K MTA_POLICY_SKIP_HOST
#define D MTA_POLICY_DEFER
static const struct named named[] = {
	{"DANE-50 usable TLSA: authentication required", -1, MTA_TLS_MAY, S,
	 1, AS, TL_USABLE, ST_NONE, C, "", MTA_TLS_DANE_ONLY,
	 MTA_POLICY_V_DANE, 0, MTA_RPT_NONE},
	{"DANE-51 only unusable: TLS, no authentication", -1, MTA_TLS_MAY, S,
	 1, AS, TL_UNUSABLE, ST_NONE, C, "", MTA_TLS_ENCRYPT,
	 MTA_POLICY_V_TLSA_UNUSABLE, 0, MTA_RPT_NONE},
	{"DANE-51 unusable never lowers verify", -1, MTA_TLS_VERIFY, S, 1, AS,
	 TL_UNUSABLE, ST_NONE, C, "", MTA_TLS_VERIFY, MTA_POLICY_V_WEBPKI, 0,
	 MTA_RPT_NONE},
	{"DANE-51 dane-only refuses unusable-only", MTA_TLS_DANE_ONLY,
	 MTA_TLS_MAY, S, 1, AS, TL_UNUSABLE, ST_NONE, K, "tlsa-unusable", 0,
	 0, 0, MTA_RPT_DANE_REQUIRED},
	{"DANE-08 bogus TLSA: host not used", -1, MTA_TLS_MAY, S, 1, AS,
	 TL_BOGUS, ST_NONE, K, "tlsa-bogus", 0, 0, 0, MTA_RPT_DNSSEC_INVALID},
	{"DANE-09 failed TLSA: host not used", -1, MTA_TLS_MAY, S, 1, AS,
	 TL_FAILED, ST_NONE, K, "tlsa-failed", 0, 0, 0, MTA_RPT_NONE},
	{"DANE 65 records: fail closed", -1, MTA_TLS_MAY, S, 1, AS, TL_MANY,
	 ST_NONE, K, "tlsa-too-many", 0, 0, 0, MTA_RPT_NONE},
	{"DANE-22 insecure MX: no TLSA, opportunistic", -1, MTA_TLS_MAY, I, 1,
	 AS, TL_USABLE, ST_NONE, C, "", MTA_TLS_MAY, MTA_POLICY_V_NONE, 1,
	 MTA_RPT_NONE},
	{"DANE-23 insecure MX with dane-only: delay", MTA_TLS_DANE_ONLY,
	 MTA_TLS_MAY, I, 1, AS, TL_NONE, ST_NONE, K, "dane-required", 0, 0, 0,
	 MTA_RPT_DANE_REQUIRED},
	{"DANE-32 insecure addresses: no TLSA", -1, MTA_TLS_MAY, S, 1,
	 MTA_POLICY_ADDR_INSECURE, TL_BOGUS, ST_NONE, C, "", MTA_TLS_MAY,
	 MTA_POLICY_V_NONE, 1, MTA_RPT_NONE},
	{"DANE-36 secure CNAME, insecure target: TLSA applies", -1,
	 MTA_TLS_MAY, S, 1, MTA_POLICY_ADDR_CNAME_INSECURE, TL_USABLE, ST_NONE,
	 C, "", MTA_TLS_DANE_ONLY, MTA_POLICY_V_DANE, 0, MTA_RPT_NONE},
	{"DANE-29 address literal: no DANE", -1, MTA_TLS_MAY, S, 1,
	 MTA_POLICY_ADDR_LITERAL, TL_USABLE, ST_NONE, C, "", MTA_TLS_MAY,
	 MTA_POLICY_V_NONE, 1, MTA_RPT_NONE},
	{"DANE-07 bogus address: host not used", -1, MTA_TLS_MAY, S, 1,
	 MTA_POLICY_ADDR_BOGUS, TL_NONE, ST_NONE, K, "address-bogus", 0, 0, 0,
	 MTA_RPT_DNSSEC_INVALID},
	{"DANE-04 bogus MX: delay, no implicit MX", -1, MTA_TLS_MAY,
	 MTA_POLICY_MX_BOGUS, 1, AS, TL_NONE, ST_NONE, D, "mx-bogus", 0, 0, 0,
	 MTA_RPT_DNSSEC_INVALID},
	{"DANE-05 failed MX: delay", -1, MTA_TLS_MAY, MTA_POLICY_MX_FAILED, 1,
	 AS, TL_NONE, ST_NONE, D, "mx-failed", 0, 0, 0, MTA_RPT_NONE},
	{"DANE-01 self-test failed, insecure MX: delay", -1, MTA_TLS_MAY, I, 0,
	 AS, TL_NONE, ST_NONE, D, "dnssec-selftest", 0, 0, 0, MTA_RPT_NONE},
	{"DANE-01 self-test failed, secure MX proves itself", -1, MTA_TLS_MAY,
	 S, 0, AS, TL_USABLE, ST_NONE, C, "", MTA_TLS_DANE_ONLY,
	 MTA_POLICY_V_DANE, 0, MTA_RPT_NONE},
	{"DANE-113 table may turns DANE off", MTA_TLS_MAY, MTA_TLS_VERIFY, S,
	 1, AS, TL_USABLE, ST_NONE, C, "", MTA_TLS_MAY, MTA_POLICY_V_NONE, 1,
	 MTA_RPT_NONE},
	{"DANE-62 no TLSA at dane: no cleartext retry", -1, MTA_TLS_DANE, S, 1,
	 AS, TL_NONE, ST_NONE, C, "", MTA_TLS_DANE, MTA_POLICY_V_NONE, 0,
	 MTA_RPT_NONE},
	{"DANE-62 retry only at may", -1, MTA_TLS_ENCRYPT, S, 1, AS, TL_NONE,
	 ST_NONE, C, "", MTA_TLS_ENCRYPT, MTA_POLICY_V_NONE, 0, MTA_RPT_NONE},
	{"STS-120/121 DANE wins over enforce", -1, MTA_TLS_MAY, S, 1, AS,
	 TL_USABLE, ST_ENF_MISMATCH, C, "", MTA_TLS_DANE_ONLY,
	 MTA_POLICY_V_DANE, 0, MTA_RPT_NONE},
	{"STS-90 enforce: WebPKI required", -1, MTA_TLS_MAY, S, 1, AS, TL_NONE,
	 ST_ENF_MATCH, C, "", MTA_TLS_VERIFY, MTA_POLICY_V_STS, 0,
	 MTA_RPT_NONE},
	{"STS-82 enforce mismatch: no connection", -1, MTA_TLS_MAY, S, 1, AS,
	 TL_NONE, ST_ENF_MISMATCH, K, "mta-sts-mx-mismatch", 0, 0, 0,
	 MTA_RPT_VALIDATION_FAILURE},
	{"STS-83 testing mismatch still delivers", -1, MTA_TLS_MAY, S, 1, AS,
	 TL_NONE, ST_TEST_MISMATCH, C, "", MTA_TLS_MAY,
	 MTA_POLICY_V_STS_TESTING, 1, MTA_RPT_VALIDATION_FAILURE},
	{"STS-112 testing never lowers verify", -1, MTA_TLS_VERIFY, S, 1, AS,
	 TL_NONE, ST_TEST_MATCH, C, "", MTA_TLS_VERIFY, MTA_POLICY_V_WEBPKI, 0,
	 MTA_RPT_NONE},
	{"STS-122 host without TLSA held to enforce", -1, MTA_TLS_MAY, S, 1,
	 AS, TL_NONE, ST_ENF_MATCH, C, "", MTA_TLS_VERIFY, MTA_POLICY_V_STS, 0,
	 MTA_RPT_NONE},
	{"DANE-113 table entry wins over MTA-STS enforce", MTA_TLS_ENCRYPT,
	 MTA_TLS_MAY, S, 1, AS, TL_NONE, ST_ENF_MISMATCH, C, "",
	 MTA_TLS_ENCRYPT, MTA_POLICY_V_NONE, 0, MTA_RPT_NONE},
};

static void test_named(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
		const struct named *r = &named[i];
		struct mta_policy_in in;
		struct mta_policy p;

		base_in(&in);
		in.has_table = r->table >= 0;
		if (in.has_table)
			in.table_level = (enum mta_tls_level)r->table;
		in.default_level = r->def;
		in.mx = r->mx;
		in.dnssec_ok = r->selftest;
		in.addr = r->addr;
		set_tlsa(&in, r->tlsa);
		set_sts(&in, r->sts);
		mta_policy_decide(&in, &p);
		print_message("%s\n", r->id);
		assert_int_equal(p.action, r->action);
		assert_int_equal(p.rpt, r->rpt);
		if (r->action != C) {
			assert_string_equal(p.skip, r->skip);
			continue;
		}
		assert_int_equal(p.level, r->level);
		assert_int_equal(p.verifier, r->verifier);
		assert_int_equal(p.fallback, r->fallback);
		/* the generated oracle agrees with the hand-written row */
		check_row(&in, r->tlsa, r->sts, r->id);
	}
}

/* ---- RFC 8689: REQUIRETLS and TLS-Required: No ---- */

enum rq { RQ_RTLS = 1, RQ_OPT = 2 };

struct rtls_row {
	const char *id;
	int table; /* -1: none */
	enum mta_tls_level def;
	enum mta_policy_mx mx;
	enum mta_policy_addr addr;
	enum tl tlsa;
	enum st sts;
	enum rq rq;
	enum mta_policy_action action;
	const char *skip;
	enum mta_tls_level level;
	enum mta_policy_verifier verifier;
	bool fallback;
};

static const struct rtls_row rtls_rows[] = {
	{"RTLS-20 secure MX, no TLSA, no MTA-STS: verify", -1, MTA_TLS_MAY, S,
	 AS, TL_NONE, ST_NONE, RQ_RTLS, C, "", MTA_TLS_VERIFY,
	 MTA_POLICY_V_WEBPKI, 0},
	{"RTLS-21 insecure MX, no MTA-STS: not sent (5.7.10)", -1,
	 MTA_TLS_MAY, I, AS, TL_NONE, ST_NONE, RQ_RTLS, K, "requiretls", 0, 0,
	 0},
	{"RTLS-22 insecure MX, MTA-STS enforce match", -1, MTA_TLS_MAY, I, AS,
	 TL_NONE, ST_ENF_MATCH, RQ_RTLS, C, "", MTA_TLS_VERIFY,
	 MTA_POLICY_V_STS, 0},
	{"RTLS-22 (choice) insecure MX, MTA-STS testing match counts", -1,
	 MTA_TLS_MAY, I, AS, TL_NONE, ST_TEST_MATCH, RQ_RTLS, C, "",
	 MTA_TLS_VERIFY, MTA_POLICY_V_STS, 0},
	{"RTLS-22 insecure MX, testing mismatch: not sent", -1, MTA_TLS_MAY, I,
	 AS, TL_NONE, ST_TEST_MISMATCH, RQ_RTLS, K, "requiretls", 0, 0, 0},
	{"RTLS-23 DANE peer", -1, MTA_TLS_MAY, S, AS, TL_USABLE, ST_NONE,
	 RQ_RTLS, C, "", MTA_TLS_DANE_ONLY, MTA_POLICY_V_DANE, 0},
	{"RTLS unusable TLSA, secure MX: verify", -1, MTA_TLS_MAY, S, AS,
	 TL_UNUSABLE, ST_NONE, RQ_RTLS, C, "", MTA_TLS_VERIFY,
	 MTA_POLICY_V_WEBPKI, 0},
	{"RTLS table none never lowers REQUIRETLS", MTA_TLS_NONE, MTA_TLS_MAY,
	 S, AS, TL_NONE, ST_NONE, RQ_RTLS, C, "", MTA_TLS_VERIFY,
	 MTA_POLICY_V_WEBPKI, 0},
	{"RTLS address literal (relayhost [ip]): not sent", -1, MTA_TLS_MAY,
	 S, MTA_POLICY_ADDR_LITERAL, TL_NONE, ST_NONE, RQ_RTLS, K,
	 "requiretls", 0, 0, 0},
	{"RTLS bogus TLSA still skips the host", -1, MTA_TLS_MAY, S, AS,
	 TL_BOGUS, ST_NONE, RQ_RTLS, K, "tlsa-bogus", 0, 0, 0},
	{"RTLS-31 TLS-Required: No ignores DANE", -1, MTA_TLS_MAY, S, AS,
	 TL_USABLE, ST_NONE, RQ_OPT, C, "", MTA_TLS_MAY, MTA_POLICY_V_NONE,
	 1},
	{"RTLS-31 TLS-Required: No ignores a bogus TLSA", -1, MTA_TLS_MAY, S,
	 AS, TL_BOGUS, ST_NONE, RQ_OPT, C, "", MTA_TLS_MAY, MTA_POLICY_V_NONE,
	 1},
	{"RTLS-31 TLS-Required: No ignores MTA-STS enforce (mismatch too)",
	 -1, MTA_TLS_MAY, I, AS, TL_NONE, ST_ENF_MISMATCH, RQ_OPT, C, "",
	 MTA_TLS_MAY, MTA_POLICY_V_NONE, 1},
	{"RTLS TLS-Required: No keeps the operator's default level", -1,
	 MTA_TLS_ENCRYPT, S, AS, TL_USABLE, ST_NONE, RQ_OPT, C, "",
	 MTA_TLS_ENCRYPT, MTA_POLICY_V_NONE, 0},
};

static void test_rtls(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(rtls_rows) / sizeof(rtls_rows[0]); i++) {
		const struct rtls_row *r = &rtls_rows[i];
		struct mta_policy_in in;
		struct mta_policy p;
		struct mta_policy_check chk;
		struct mta_policy_verdict v;

		base_in(&in);
		in.has_table = r->table >= 0;
		if (in.has_table)
			in.table_level = (enum mta_tls_level)r->table;
		in.default_level = r->def;
		in.mx = r->mx;
		in.dnssec_ok = true;
		in.addr = r->addr;
		set_tlsa(&in, r->tlsa);
		set_sts(&in, r->sts);
		in.requiretls = r->rq == RQ_RTLS;
		in.tls_optional = r->rq == RQ_OPT;
		mta_policy_decide(&in, &p);
		print_message("%s\n", r->id);
		assert_int_equal(p.action, r->action);
		if (r->action != C) {
			assert_string_equal(p.skip, r->skip);
			if (strcmp(r->skip, "requiretls") == 0)
				assert_string_equal(p.status, "5.7.10");
			continue;
		}
		assert_int_equal(p.level, r->level);
		assert_int_equal(p.verifier, r->verifier);
		assert_int_equal(p.fallback, r->fallback);
		assert_int_equal(p.requiretls, in.requiretls);
		if (in.requiretls) {
			assert_int_equal(p.starttls, MTA_SMTPC_TLS_REQUIRE);
			/* RTLS-25: a certificate that fails: 5.7.10 */
			memset(&chk, 0, sizeof(chk));
			mta_policy_verdict(&in, &p, &chk, &v);
			assert_false(v.accept);
			assert_string_equal(v.status, "5.7.10");
		} else {
			assert_false(p.dane);
			assert_false(p.sts_host);
			assert_int_equal(p.ptype, MTA_POLICY_PT_NO_POLICY);
		}
	}
}

/* STS lost (out of memory holding it): the destination waits */
static void test_sts_lost(void **state)
{
	struct mta_policy_in in;
	struct mta_policy p;
	(void)state;

	base_in(&in);
	in.sts = MTA_POLICY_STS_LOST;
	mta_policy_decide(&in, &p);
	assert_int_equal(p.action, MTA_POLICY_DEFER);
	assert_string_equal(p.status, "4.3.0");
	assert_string_equal(p.skip, "no-memory");
}

/* ---- verdict after the handshake ---- */

static void verdict(enum tl t, enum st s, enum mta_tls_level def,
		    const struct mta_policy_check *chk,
		    struct mta_policy_verdict *v)
{
	struct mta_policy_in in;
	struct mta_policy p;

	base_in(&in);
	in.default_level = def;
	set_tlsa(&in, t);
	set_sts(&in, s);
	mta_policy_decide(&in, &p);
	assert_int_equal(p.action, MTA_POLICY_CONNECT);
	mta_policy_verdict(&in, &p, chk, v);
}

static void test_verdict(void **state)
{
	struct mta_policy_check chk;
	struct mta_policy_verdict v;
	(void)state;

	/* DANE-50: a match authenticates; the log names the record */
	memset(&chk, 0, sizeof(chk));
	chk.dane_match = true;
	chk.usage = 3, chk.selector = 1, chk.mtype = 1;
	verdict(TL_USABLE, ST_NONE, MTA_TLS_MAY, &chk, &v);
	assert_true(v.accept);
	assert_string_equal(v.auth, "dane 3 1 1");
	assert_string_equal(v.count_rpt, "successful-session");
	assert_int_equal(v.count_ptype, MTA_POLICY_PT_TLSA);

	/* STS-120: a failing DANE check is not rescued by WebPKI */
	memset(&chk, 0, sizeof(chk));
	chk.webpki_ok = true;
	chk.dane_rpt = "tlsa-invalid";
	verdict(TL_USABLE, ST_ENF_MATCH, MTA_TLS_MAY, &chk, &v);
	assert_false(v.accept);
	assert_string_equal(v.status, "4.7.5");
	assert_string_equal(v.auth, "dane-failed");
	assert_string_equal(v.count_rpt, "tlsa-invalid");

	/* STS-91/96: enforce refuses a bad certificate */
	memset(&chk, 0, sizeof(chk));
	chk.webpki_rpt = "certificate-host-mismatch";
	chk.webpki_why = "no DNS-ID";
	verdict(TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, &chk, &v);
	assert_false(v.accept);
	assert_string_equal(v.auth, "mta-sts-failed id=20260101");
	assert_string_equal(v.count_rpt, "certificate-host-mismatch");
	assert_int_equal(v.count_ptype, MTA_POLICY_PT_STS);
	assert_false(v.testing_failure);

	/* STS-112: testing reports and delivers */
	verdict(TL_NONE, ST_TEST_MATCH, MTA_TLS_MAY, &chk, &v);
	assert_true(v.accept);
	assert_true(v.testing_failure);
	assert_string_equal(v.auth, "none");

	/* testing never lowers verify: refused, and still reported */
	verdict(TL_NONE, ST_TEST_MATCH, MTA_TLS_VERIFY, &chk, &v);
	assert_false(v.accept);
	assert_true(v.testing_failure);
	assert_string_equal(v.auth, "verify-failed");

	/* STS-90 and verify success */
	chk.webpki_ok = true;
	verdict(TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, &chk, &v);
	assert_true(v.accept);
	assert_string_equal(v.auth, "mta-sts id=20260101");
	verdict(TL_NONE, ST_NONE, MTA_TLS_VERIFY, &chk, &v);
	assert_true(v.accept);
	assert_string_equal(v.auth, "verify");
	/* RPT-21: no published policy: a success under no-policy-found */
	assert_string_equal(v.count_rpt, "successful-session");
	assert_int_equal(v.count_ptype, MTA_POLICY_PT_NO_POLICY);
	verdict(TL_NONE, ST_NONE, MTA_TLS_MAY, &chk, &v);
	assert_true(v.accept);
	assert_string_equal(v.auth, "none");
	assert_string_equal(v.count_rpt, "successful-session");
	assert_int_equal(v.count_ptype, MTA_POLICY_PT_NO_POLICY);

	/* DANE-51: unusable only: encrypted, not authenticated */
	verdict(TL_UNUSABLE, ST_NONE, MTA_TLS_MAY, &chk, &v);
	assert_true(v.accept);
	assert_string_equal(v.auth, "encrypt (TLSA unusable)");
}

/* Issue 16: CT and key continuity enter the verdict as inputs.  Table:
 * verifier situation, require_sct, continuity mode, the check's CT and
 * continuity results -> accept, auth, log/learn flags. */
static const struct {
	enum tl t;
	enum st s;
	enum mta_tls_level def;
	bool webpki_ok, dane_match;
	unsigned require_sct;
	enum mta_ct_verdict ct;
	enum mta_policy_cont_mode mode;
	enum mta_policy_cont cont;
	bool accept;
	const char *auth;
	bool ct_refused, cont_log, cont_held, cont_learn;
} ctc[] = {
	/* CT off: SCTs are not looked at */
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 0, MTA_CT_MISSING,
	 MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NONE, true,
	 "mta-sts id=20260101", false, false, false, false},
	/* enforce + CT: each failing verdict refuses, named in auth */
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 2, MTA_CT_OK,
	 MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NONE, true,
	 "mta-sts id=20260101", false, false, false, false},
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 2, MTA_CT_MISSING,
	 MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NONE, false,
	 "mta-sts-failed id=20260101 ct=missing", true, false, false, false},
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 2, MTA_CT_INVALID,
	 MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NONE, false,
	 "mta-sts-failed id=20260101 ct=invalid", true, false, false, false},
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 2,
	 MTA_CT_ONE_OPERATOR, MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NONE,
	 false, "mta-sts-failed id=20260101 ct=one-operator", true, false,
	 false, false},
	/* not run although required: refused as missing (fails closed) */
	{TL_NONE, ST_NONE, MTA_TLS_VERIFY, true, false, 1, MTA_CT_NOT_CHECKED,
	 MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NONE, false,
	 "verify-failed ct=missing", true, false, false, false},
	/* a WebPKI failure stays a WebPKI failure */
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, false, false, 2, MTA_CT_MISSING,
	 MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NONE, false,
	 "mta-sts-failed id=20260101", false, false, false, false},
	/* DANE: CT never applies */
	{TL_USABLE, ST_ENF_MATCH, MTA_TLS_MAY, true, true, 2, MTA_CT_MISSING,
	 MTA_POLICY_CONT_MODE_HOLD, MTA_POLICY_CONT_NEW_ISSUER, true,
	 "dane 3 1 1", false, false, false, false},
	/* testing: CT not enforced */
	{TL_NONE, ST_TEST_MATCH, MTA_TLS_MAY, true, false, 2, MTA_CT_MISSING,
	 MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NONE, true,
	 "mta-sts-testing id=20260101", false, false, false, false},
	/* continuity: first contact learns; new key logged; new issuer
	 * logged in log mode, held in hold mode; accepted learns */
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 0, MTA_CT_NOT_CHECKED,
	 MTA_POLICY_CONT_MODE_LOG, MTA_POLICY_CONT_FIRST, true,
	 "mta-sts id=20260101", false, false, false, true},
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 0, MTA_CT_NOT_CHECKED,
	 MTA_POLICY_CONT_MODE_HOLD, MTA_POLICY_CONT_NEW_KEY, true,
	 "mta-sts id=20260101", false, true, false, true},
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 0, MTA_CT_NOT_CHECKED,
	 MTA_POLICY_CONT_MODE_LOG, MTA_POLICY_CONT_NEW_ISSUER, true,
	 "mta-sts id=20260101", false, true, false, true},
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 0, MTA_CT_NOT_CHECKED,
	 MTA_POLICY_CONT_MODE_HOLD, MTA_POLICY_CONT_NEW_ISSUER, false,
	 "mta-sts-held id=20260101 continuity=new_issuer", false, true, true,
	 false},
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 0, MTA_CT_NOT_CHECKED,
	 MTA_POLICY_CONT_MODE_HOLD, MTA_POLICY_CONT_ACCEPTED, true,
	 "mta-sts id=20260101", false, false, false, true},
	/* off: nothing */
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 0, MTA_CT_NOT_CHECKED,
	 MTA_POLICY_CONT_MODE_OFF, MTA_POLICY_CONT_NEW_ISSUER, true,
	 "mta-sts id=20260101", false, false, false, false},
	/* CT refusal comes before continuity */
	{TL_NONE, ST_ENF_MATCH, MTA_TLS_MAY, true, false, 2, MTA_CT_INVALID,
	 MTA_POLICY_CONT_MODE_HOLD, MTA_POLICY_CONT_NEW_ISSUER, false,
	 "mta-sts-failed id=20260101 ct=invalid", true, false, false, false},
};

static void test_verdict_ct_continuity(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(ctc) / sizeof(ctc[0]); i++) {
		struct mta_policy_in in;
		struct mta_policy p;
		struct mta_policy_check chk;
		struct mta_policy_verdict v;

		base_in(&in);
		in.default_level = ctc[i].def;
		set_tlsa(&in, ctc[i].t);
		set_sts(&in, ctc[i].s);
		in.require_sct = ctc[i].require_sct;
		in.continuity = ctc[i].mode;
		mta_policy_decide(&in, &p);
		assert_int_equal(p.action, MTA_POLICY_CONNECT);
		memset(&chk, 0, sizeof(chk));
		chk.webpki_ok = ctc[i].webpki_ok;
		chk.webpki_why = "x";
		chk.dane_match = ctc[i].dane_match;
		chk.usage = 3, chk.selector = 1, chk.mtype = 1;
		chk.ct = ctc[i].ct;
		chk.ct_why = "evidence";
		chk.cont = ctc[i].cont;
		mta_policy_verdict(&in, &p, &chk, &v);
		printf("row %zu: accept=%d auth=%s\n", i, v.accept, v.auth);
		assert_int_equal(v.accept, ctc[i].accept);
		assert_string_equal(v.auth, ctc[i].auth);
		assert_int_equal(v.ct_refused, ctc[i].ct_refused);
		assert_int_equal(v.cont_log, ctc[i].cont_log);
		assert_int_equal(v.cont_held, ctc[i].cont_held);
		assert_int_equal(v.cont_learn, ctc[i].cont_learn);
		if (!v.accept) {
			assert_string_equal(v.status, "4.7.5");
			if (v.ct_refused)
				assert_non_null(strstr(v.reason, "ct="));
		}
	}
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(mta_tls_level_name(MTA_TLS_DANE_ONLY),
			    "dane-only");
	assert_int_equal(mta_tls_level_parse("verify"), MTA_TLS_VERIFY);
	assert_string_equal(mta_tls_level_list(),
			    "none, may, encrypt, dane, dane-only, verify");
	assert_string_equal(mta_rpt_name(MTA_RPT_STS_WEBPKI_INVALID),
			    "sts-webpki-invalid");
	assert_string_equal(mta_policy_ptype_name(MTA_POLICY_PT_NO_POLICY),
			    "no-policy-found");
	assert_string_equal(mta_sts_mode_name(MTA_STS_MODE_ENFORCE),
			    "enforce");
	assert_string_equal(mta_policy_verifier_name((enum mta_policy_verifier)99),
			    "?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_named, test_setup),
		cmocka_unit_test_setup(test_product_levels, test_setup),
		cmocka_unit_test_setup(test_product_dnssec, test_setup),
		cmocka_unit_test_setup(test_sts_lost, test_setup),
		cmocka_unit_test_setup(test_verdict, test_setup),
		cmocka_unit_test_setup(test_verdict_ct_continuity, test_setup),
		cmocka_unit_test_setup(test_names, test_setup),
		cmocka_unit_test_setup(test_rtls, test_setup),
	};
	return cmocka_run_group_tests(tests, group_setup, NULL);
}
