/* Unit tests of the MTA-STS building blocks (libmta/sts.c): the _mta-sts
 * TXT record and record-set rules, the policy parser (every STS-2x/3x row
 * of conformance.md that is about syntax), MX pattern matching (STS-8x),
 * the Content-Type check (STS-45..47), the cache record codec and the
 * cache / refresh decisions (STS-13, 14, 32, 60..65).  Table-driven; the
 * random parts use a fixed seed that is printed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
/* the module itself: its static parse_txt(), txt_is_sts(), refresh_at()
 * are tested here directly (libmta's copy is not linked in) */
#include "../../libmta/sts.c"

#include <errno.h>

/* The cache decisions' names, for the test output (the library has no
 * use for them). */
static const char *decision_name(enum mta_sts_decision d)
{
	switch (d) {
#define DECISION_CASE(e, name)                                                \
	case MTA_STS_##e:                                                     \
		return name;
		MTA_STS_DECISION_MAP(DECISION_CASE)
#undef DECISION_CASE
	}
	return "?";
}

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t rng_state;

static uint32_t rng(void)
{
	/* xorshift64*, seeded per test and printed */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}

static void seed(uint64_t s)
{
	rng_state = s ? s : 1;
	print_message("seed %llu\n", (unsigned long long)s);
}

/* ---- TXT record (STS-01..11) ---- */

struct txt_case {
	const char *name;
	const char *txt;
	size_t len; /* 0: strlen */
	int rc;
	const char *id;
};

#define ID32 "abcdefghijklmnopqrstuvwxyz012345"

static const struct txt_case txt_cases[] = {
	{"STS-01 plain", "v=STSv1; id=1", 0, 0, "1"},
	{"no space", "v=STSv1;id=20160831085700Z", 0, 0, "20160831085700Z"},
	{"STS-05 concatenated", "v=STSv1; id=abcd", 0, 0, "abcd"},
	{"STS-07 no id", "v=STSv1;", 0, MTA_EPROTO, NULL},
	{"version only", "v=STSv1", 0, MTA_EPROTO, NULL},
	{"empty id", "v=STSv1; id=", 0, MTA_EPROTO, NULL},
	{"32-char id", "v=STSv1; id=" ID32, 0, 0, ID32},
	{"STS-08a 33-char id", "v=STSv1; id=" ID32 "6", 0, MTA_EPROTO, NULL},
	{"STS-08b id with '-'", "v=STSv1; id=2024-01-01", 0, MTA_EPROTO, NULL},
	{"id with '_'", "v=STSv1; id=a_b", 0, MTA_EPROTO, NULL},
	{"STS-09 version not first", "id=1; v=STSv1", 0, MTA_EPROTO, NULL},
	{"STS-06 case", "V=stsv1; id=1", 0, MTA_EPROTO, NULL},
	{"STS-10 extension", "v=STSv1; id=1; foo=bar;", 0, 0, "1"},
	{"STS-11 WSP before ;", "v=STSv1 ; id=1", 0, 0, "1"},
	{"tabs around ;", "v=STSv1\t;\tid=1\t;\t", 0, 0, "1"},
	{"trailing WSP", "v=STSv1; id=1 ", 0, 0, "1"},
	{"missing ;", "v=STSv1 id=1", 0, MTA_EPROTO, NULL},
	{"empty field", "v=STSv1;; id=1", 0, MTA_EPROTO, NULL},
	{"two final ;", "v=STSv1; id=1;;", 0, MTA_EPROTO, NULL},
	{"field without =", "v=STSv1; id=1; foo", 0, MTA_EPROTO, NULL},
	{"empty ext value", "v=STSv1; id=1; foo=", 0, MTA_EPROTO, NULL},
	{"= in ext value", "v=STSv1; id=1; foo=a=b", 0, MTA_EPROTO, NULL},
	{"ext name starts with _", "v=STSv1; id=1; _x=1", 0, MTA_EPROTO,
	 NULL},
	{"ext name chars", "v=STSv1; id=1; x_y.z-1=v!~", 0, 0, "1"},
	{"ext name 32", "v=STSv1; id=1; " ID32 "=v", 0, 0, "1"},
	{"ext name 33", "v=STSv1; id=1; " ID32 "x=v", 0, MTA_EPROTO, NULL},
	{"ID upper-case", "v=STSv1; ID=1", 0, MTA_EPROTO, NULL},
	{"repeated id: first", "v=STSv1; id=1; id=2", 0, 0, "1"},
	{"repeated id invalid", "v=STSv1; id=1; id=b-d", 0, MTA_EPROTO, NULL},
	{"v=STSv10", "v=STSv10; id=1", 0, MTA_EPROTO, NULL},
	{"leading WSP", " v=STSv1; id=1", 0, MTA_EPROTO, NULL},
	{"NUL inside", "v=STSv1; id=1\0x", 15, MTA_EPROTO, NULL},
	{"NUL in ext", "v=STSv1; id=1; a=\0", 18, MTA_EPROTO, NULL},
	{"no id, ext", "v=STSv1; foo=bar", 0, MTA_EPROTO, NULL},
	{"non-ASCII ext", "v=STSv1; id=1; a=\xc3\xbc", 0, MTA_EPROTO, NULL},
	{"empty", "", 0, MTA_EPROTO, NULL},
	{"spf", "v=spf1 -all", 0, MTA_EPROTO, NULL},
};

static void txt_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(txt_cases); i++) {
		const struct txt_case *c = &txt_cases[i];
		struct mta_sts_txt out;
		const char *why = NULL;
		size_t len = c->len ? c->len : strlen(c->txt);
		int rc;

		memset(&out, 0x55, sizeof(out));
		rc = parse_txt(c->txt, len, &out, &why);
		print_message("%-28s rc=%s why=%s\n", c->name,
			      mta_errname(rc), why ? why : "-");
		assert_int_equal(rc, c->rc);
		if (rc == 0)
			assert_string_equal(out.id, c->id);
		else
			assert_non_null(why);
	}
}

struct pick_case {
	const char *name;
	const char *txt[3];
	size_t n;
	enum mta_sts_txt_verdict v;
	const char *id;
};

static const struct pick_case pick_cases[] = {
	{"STS-02 no records", {NULL}, 0, MTA_STS_TXT_NONE, NULL},
	{"only spf", {"v=spf1 -all"}, 1, MTA_STS_TXT_NONE, NULL},
	{"STS-03 spf + sts", {"v=spf1 -all", "v=STSv1; id=1"}, 2,
	 MTA_STS_TXT_OK, "1"},
	{"STS-04 two records", {"v=STSv1; id=1", "v=STSv1; id=2"}, 2,
	 MTA_STS_TXT_MULTIPLE, NULL},
	{"STS-04 one invalid counts", {"v=STSv1; id=1", "v=STSv1"}, 2,
	 MTA_STS_TXT_MULTIPLE, NULL},
	{"STS-06 other case ignored", {"V=stsv1; id=2", "v=STSv1; id=1"}, 2,
	 MTA_STS_TXT_OK, "1"},
	{"STS-07 one invalid", {"v=STSv1;"}, 1, MTA_STS_TXT_INVALID, NULL},
	{"STS-09 not first: ignored", {"id=1; v=STSv1"}, 1, MTA_STS_TXT_NONE,
	 NULL},
	{"STS-11 WSP counts", {"v=STSv1 ; id=3", "x"}, 2, MTA_STS_TXT_OK,
	 "3"},
	{"v=STSv10 ignored", {"v=STSv10; id=1", "v=STSv1; id=9"}, 2,
	 MTA_STS_TXT_OK, "9"},
};

static void pick_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(pick_cases); i++) {
		const struct pick_case *c = &pick_cases[i];
		size_t lens[3];
		struct mta_sts_txt out = {{0}};
		enum mta_sts_txt_verdict v;

		for (size_t k = 0; k < c->n; k++)
			lens[k] = strlen(c->txt[k]);
		v = mta_sts_pick_txt(c->txt, lens, c->n, &out, NULL);
		print_message("%-28s verdict=%d\n", c->name, (int)v);
		assert_int_equal(v, c->v);
		if (v == MTA_STS_TXT_OK)
			assert_string_equal(out.id, c->id);
	}
}

/* ---- policy (STS-20..38, 48) ---- */

#define P0_CRLF                                                           \
	"version: STSv1\r\nmode: enforce\r\nmx: mx1.m.u.test\r\n"         \
	"mx: mx2.m.u.test\r\nmax_age: 604800\r\n"
#define P0_LF                                                             \
	"version: STSv1\nmode: enforce\nmx: mx1.m.u.test\n"               \
	"mx: mx2.m.u.test\nmax_age: 604800\n"
#define HEAD "version: STSv1\nmode: enforce\nmax_age: 86400\n"
#define L63 "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"
#define L64 L63 "l"

struct pol_case {
	const char *name;
	const char *body;
	size_t len; /* 0: strlen */
	int rc;
	enum mta_sts_mode mode;
	uint32_t max_age;
	bool capped;
	const char *mx[4]; /* expected patterns (NULL-terminated) */
};

static const struct pol_case pol_cases[] = {
	{"STS-21 CRLF", P0_CRLF, 0, 0, MTA_STS_MODE_ENFORCE, 604800, false,
	 {"mx1.m.u.test", "mx2.m.u.test"}},
	{"STS-20 LF", P0_LF, 0, 0, MTA_STS_MODE_ENFORCE, 604800, false,
	 {"mx1.m.u.test", "mx2.m.u.test"}},
	{"STS-22 mixed", "version: STSv1\nmode: enforce\r\nmx: a.test\n"
			 "max_age: 5\r\n",
	 0, 0, MTA_STS_MODE_ENFORCE, 5, false, {"a.test"}},
	{"STS-23 no final CRLF", "version: STSv1\r\nmode: testing\r\n"
				 "mx: a.test\r\nmax_age: 5",
	 0, 0, MTA_STS_MODE_TESTING, 5, false, {"a.test"}},
	{"STS-24 unknown keys", HEAD "mx: a.test\nfoo: bar\n"
				     "x_y.z-1: \xc3\xbc\n",
	 0, 0, MTA_STS_MODE_ENFORCE, 86400, false, {"a.test"}},
	{"STS-25 duplicates", "version: STSv1\nmode: testing\nmode: enforce\n"
			      "max_age: 86400\nmax_age: 604800\nmx: a.test\n",
	 0, 0, MTA_STS_MODE_TESTING, 86400, false, {"a.test"}},
	{"STS-25 dup version", "version: STSv1\nversion: STSv2\nmode: none\n"
			       "max_age: 1\n",
	 0, 0, MTA_STS_MODE_NONE, 1, false, {NULL}},
	{"STS-25 dup mode bad", HEAD "mode: reject\nmx: a.test\n", 0, 0,
	 MTA_STS_MODE_ENFORCE, 86400, false, {"a.test"}},
	{"STS-26 three mx", HEAD "mx: a.test\nmx: *.b.test\nmx: c.test\n", 0,
	 0, MTA_STS_MODE_ENFORCE, 86400, false,
	 {"a.test", "*.b.test", "c.test"}},
	{"STS-27 no version", "mode: enforce\nmx: a.test\nmax_age: 1\n", 0,
	 MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-28 STSv2", "version: STSv2\nmode: enforce\nmx: a.test\n"
			 "max_age: 1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-29a no mode", "version: STSv1\nmx: a.test\nmax_age: 1\n", 0,
	 MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-29b Enforce", "version: STSv1\nmode: Enforce\nmx: a.test\n"
			    "max_age: 1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-29c reject", "version: STSv1\nmode: reject\nmx: a.test\n"
			   "max_age: 1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-30a no max_age", "version: STSv1\nmode: enforce\nmx: a.test\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-30b 1w", "version: STSv1\nmode: enforce\nmx: a.test\n"
		       "max_age: 1w\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-30c -1", "version: STSv1\nmode: enforce\nmx: a.test\n"
		       "max_age: -1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-30d 11 digits", "version: STSv1\nmode: enforce\nmx: a.test\n"
			      "max_age: 10000000000\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-31 capped", "version: STSv1\nmode: enforce\nmx: a.test\n"
			  "max_age: 9999999999\n",
	 0, 0, MTA_STS_MODE_ENFORCE, 31557600, true, {"a.test"}},
	{"STS-31 at cap", "version: STSv1\nmode: enforce\nmx: a.test\n"
			  "max_age: 31557600\n",
	 0, 0, MTA_STS_MODE_ENFORCE, 31557600, false, {"a.test"}},
	{"STS-31 cap+1", "version: STSv1\nmode: enforce\nmx: a.test\n"
			 "max_age: 31557601\n",
	 0, 0, MTA_STS_MODE_ENFORCE, 31557600, true, {"a.test"}},
	{"STS-32 max_age 0", "version: STSv1\nmode: enforce\nmx: a.test\n"
			     "max_age: 0\n",
	 0, 0, MTA_STS_MODE_ENFORCE, 0, false, {"a.test"}},
	{"leading zeros", "version: STSv1\nmode: enforce\nmx: a.test\n"
			  "max_age: 0000000060\n",
	 0, 0, MTA_STS_MODE_ENFORCE, 60, false, {"a.test"}},
	{"STS-33a enforce no mx", HEAD, 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-33b none no mx", "version: STSv1\nmode: none\nmax_age: 1\n", 0,
	 0, MTA_STS_MODE_NONE, 1, false, {NULL}},
	{"STS-33 testing no mx", "version: STSv1\nmode: testing\n"
				 "max_age: 1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-34 *", HEAD "mx: *\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-34 *example.test", HEAD "mx: *example.test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-34 mail.*.m", HEAD "mx: mail.*.m.u.test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-34 *.*.m", HEAD "mx: *.*.m.u.test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-34 empty mx", HEAD "mx:\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-34 blank mx", HEAD "mx:   \n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-34 one bad of two", HEAD "mx: a.test\nmx: *\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"mx trailing dot", HEAD "mx: a.test.\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"mx leading hyphen", HEAD "mx: -a.test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"mx trailing hyphen", HEAD "mx: a-.test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"mx underscore", HEAD "mx: a_b.test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"mx empty label", HEAD "mx: a..test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"mx space inside", HEAD "mx: a test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"mx label 63", HEAD "mx: " L63 ".test\n", 0, 0, MTA_STS_MODE_ENFORCE,
	 86400, false, {L63 ".test"}},
	{"mx label 64", HEAD "mx: " L64 ".test\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"mx lower-cased", HEAD "mx: MX1.Example.TEST\n", 0, 0,
	 MTA_STS_MODE_ENFORCE, 86400, false, {"mx1.example.test"}},
	{"STS-35 Mode", "version: STSv1\nMode: enforce\nmx: a.test\n"
			"max_age: 1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-36a no space", "version:STSv1\nmode:enforce\nmx:a.test\n"
			     "max_age:1\n",
	 0, 0, MTA_STS_MODE_ENFORCE, 1, false, {"a.test"}},
	{"STS-36b trailing WSP", "version: STSv1 \nmode: enforce  \n"
				 "mx: a.test\t\nmax_age: 1 \n",
	 0, 0, MTA_STS_MODE_ENFORCE, 1, false, {"a.test"}},
	{"STS-36c leading WSP", "version: STSv1\n mode: enforce\nmx: a.test\n"
				"max_age: 1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-36d blank line", "version: STSv1\nmode: enforce\n\nmx: a.test\n"
			       "max_age: 1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-36 trailing blank", HEAD "mx: a.test\n\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-36 trailing CRLF CRLF", HEAD "mx: a.test\r\n\r\n", 0,
	 MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-36 WSP-only line", HEAD "mx: a.test\n \n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-37 NUL in mx", HEAD "mx: a.te\0st\n", sizeof(HEAD "mx: a.te") - 1 + 4,
	 MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-37 CR in mx", HEAD "mx: a.te\rst\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-37 CTL in ext", HEAD "mx: a.test\nfoo: a\x01z\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"STS-37 DEL in ext", HEAD "mx: a.test\nfoo: a\x7fz\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"tab inside ext", HEAD "mx: a.test\nfoo: a\tb  c\n", 0, 0,
	 MTA_STS_MODE_ENFORCE, 86400, false, {"a.test"}},
	{"empty ext value", HEAD "mx: a.test\nfoo:\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"bad UTF-8 ext", HEAD "mx: a.test\nfoo: \xc3\x28\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"overlong UTF-8", HEAD "mx: a.test\nfoo: \xc0\xaf\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"surrogate UTF-8", HEAD "mx: a.test\nfoo: \xed\xa0\x80\n", 0,
	 MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"4-byte UTF-8", HEAD "mx: a.test\nfoo: \xf0\x9f\x98\x80\n", 0, 0,
	 MTA_STS_MODE_ENFORCE, 86400, false, {"a.test"}},
	{"STS-38a A-label", HEAD "mx: xn--bcher-kva.m.u.test\n", 0, 0,
	 MTA_STS_MODE_ENFORCE, 86400, false, {"xn--bcher-kva.m.u.test"}},
	{"STS-38b U-label", HEAD "mx: b\xc3\xbc" "cher.m.u.test\n", 0,
	 MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"no colon", "version STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\n",
	 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"key 33 chars", HEAD "mx: a.test\n" ID32 "x: v\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"key starts with -", HEAD "mx: a.test\n-x: v\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"free order", "max_age: 7\nmx: a.test\nmode: testing\n"
		       "version: STSv1",
	 0, 0, MTA_STS_MODE_TESTING, 7, false, {"a.test"}},
	{"mode none keeps mx", "version: STSv1\nmode: none\nmx: a.test\n"
			       "max_age: 1\n",
	 0, 0, MTA_STS_MODE_NONE, 1, false, {"a.test"}},
	{"empty body", "", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"only LF", "\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"bare CR at end", HEAD "mx: a.test\r", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"CR CR LF", HEAD "mx: a.test\r\r\n", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
	{"html", "<html><body>version: STSv1</body></html>", 0, MTA_EPROTO, MTA_STS_MODE_NONE, 0, false, {NULL}},
};

static void policy_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(pol_cases); i++) {
		const struct pol_case *c = &pol_cases[i];
		static struct mta_sts_policy p;
		const char *why = NULL;
		size_t len = c->len ? c->len : strlen(c->body);
		size_t nmx = 0;
		int rc;

		memset(&p, 0x5a, sizeof(p));
		rc = mta_sts_parse_policy(c->body, len, &p, &why);
		print_message("%-26s rc=%s why=%s\n", c->name, mta_errname(rc),
			      why ? why : "-");
		assert_int_equal(rc, c->rc);
		if (rc != 0) {
			assert_non_null(why);
			/* outputs only on success */
			assert_int_equal(((unsigned char *)&p)[0], 0x5a);
			continue;
		}
		assert_int_equal(p.mode, c->mode);
		assert_int_equal(p.max_age, c->max_age);
		assert_int_equal(p.max_age_capped, c->capped);
		while (nmx < ARRAY_LEN(c->mx) && c->mx[nmx] != NULL)
			nmx++;
		assert_int_equal(p.nmx, nmx);
		for (size_t k = 0; k < nmx; k++)
			assert_string_equal(p.mx[k], c->mx[k]);
	}
}

static void policy_limits(void **state)
{
	static struct mta_sts_policy p;
	static char body[MTA_STS_POLICY_MAX + 2];
	const char *why;
	size_t len;
	char pat[MTA_STS_PATTERN_MAX + 8];
	int n;

	(void)state;
	/* STS-31: the capped raw value is kept for the warning */
	len = (size_t)snprintf(body, sizeof(body), "%s",
			       HEAD "max_age: 5\nmx: a.test");
	assert_int_equal(mta_sts_parse_policy(body, len, &p, NULL), 0);
	assert_int_equal(p.max_age_raw, 86400); /* first max_age wins */

	/* STS-48 (parser side): 65536 bytes accepted, 65537 refused */
	len = (size_t)snprintf(body, sizeof(body), "%s", P0_LF);
	while (len < MTA_STS_POLICY_MAX) {
		size_t room = MTA_STS_POLICY_MAX - len;
		size_t line = room > 200 ? 100 : room; /* last one >= 101 */

		memcpy(body + len, "p: ", 3);
		memset(body + len + 3, 'x', line - 4);
		body[len + line - 1] = '\n';
		len += line;
	}
	assert_int_equal(len, MTA_STS_POLICY_MAX);
	assert_int_equal(mta_sts_parse_policy(body, len, &p, &why), 0);
	body[len - 1] = 'x';
	body[len] = '\n';
	assert_int_equal(mta_sts_parse_policy(body, len + 1, &p, &why),
			 MTA_ETOOBIG);

	/* 100 mx patterns accepted, 101 refused */
	len = (size_t)snprintf(body, sizeof(body), "%s", HEAD);
	for (int i = 0; i < MTA_STS_MX_MAX; i++)
		len += (size_t)snprintf(body + len, sizeof(body) - len,
					"mx: mx%d.test\n", i);
	assert_int_equal(mta_sts_parse_policy(body, len, &p, &why), 0);
	assert_int_equal(p.nmx, MTA_STS_MX_MAX);
	assert_string_equal(p.mx[99], "mx99.test");
	len += (size_t)snprintf(body + len, sizeof(body) - len,
				"mx: one-more.test\n");
	assert_int_equal(mta_sts_parse_policy(body, len, &p, &why),
			 MTA_ETOOBIG);

	/* a pattern of 255 octets ("*." + 253) is accepted, 256 is not */
	n = snprintf(pat, sizeof(pat), "*.%s.%s.%s.%s", L63, L63, L63,
		     "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghi");
	assert_int_equal(n, 255);
	len = (size_t)snprintf(body, sizeof(body), HEAD "mx: %s\n", pat);
	assert_int_equal(mta_sts_parse_policy(body, len, &p, &why), 0);
	assert_string_equal(p.mx[0], pat);
	len = (size_t)snprintf(body, sizeof(body), HEAD "mx: %sj\n", pat);
	assert_int_equal(mta_sts_parse_policy(body, len, &p, &why),
			 MTA_EPROTO);
}

static void policy_cacheable(void **state)
{
	static struct mta_sts_policy p;

	(void)state;
	assert_int_equal(mta_sts_parse_policy(HEAD "mx: a.test\n",
					      strlen(HEAD "mx: a.test\n"), &p,
					      NULL),
			 0);
	assert_true(mta_sts_policy_cacheable(&p));
	/* STS-32: max_age 0 applies to this attempt only, never cached */
	assert_int_equal(
		mta_sts_parse_policy("version: STSv1\nmode: enforce\n"
				     "mx: a.test\nmax_age: 0\n",
				     strlen("version: STSv1\nmode: enforce\n"
					    "mx: a.test\nmax_age: 0\n"),
				     &p, NULL),
		0);
	assert_false(mta_sts_policy_cacheable(&p));
}

/* ---- MX matching (STS-80..84) ---- */

struct mx_case {
	const char *name;
	const char *host;
	bool match;
};

static const struct mx_case mx_cases[] = {
	{"STS-80 case + dot", "MX1.M.U.TEST.", true},
	{"STS-80 literal", "mx1.m.u.test", true},
	{"two dots", "mx1.m.u.test..", false},
	{"STS-81a one label", "mx1.w.u.test", true},
	{"STS-81a case + dot", "X.W.U.TEST.", true},
	{"STS-81b the base", "w.u.test", false},
	{"STS-81c two labels", "a.mx1.w.u.test", false},
	{"wildcard suffix only", "xw.u.test", false},
	{"STS-82 not listed", "mx2.m.u.test", false},
	{"STS-84 bad host", "bad.x.u.test", false},
	{"prefix of pattern", "mx1.m.u.tes", false},
	{"suffix of pattern", "1.m.u.test", false},
	{"empty", "", false},
	{"dot", ".", false},
	{"leading dot", ".w.u.test", false},
	{"literal *", "*.w.u.test", false},
	{"empty first label", "..w.u.test", false},
	{"numeric label", "10.w.u.test", true},
	{"escaped bytes", "a\\046.w.u.test", false},
};

static void mx_table(void **state)
{
	static struct mta_sts_policy p;
	static const char body[] = HEAD "mx: mx1.m.u.test\nmx: *.W.u.test\n";

	(void)state;
	assert_int_equal(mta_sts_parse_policy(body, strlen(body), &p, NULL),
			 0);
	for (size_t i = 0; i < ARRAY_LEN(mx_cases); i++) {
		print_message("%-24s %s\n", mx_cases[i].name,
			      mx_cases[i].host);
		assert_int_equal(mta_sts_mx_match(&p, mx_cases[i].host),
				 mx_cases[i].match);
	}
}

static void mx_walk(void **state)
{
	static struct mta_sts_policy p;
	static const char b1[] = HEAD "mx: mx2.m.u.test\n";
	static const char b2[] = "version: STSv1\nmode: none\nmax_age: 9\n";
	static const char b3[] = HEAD "mx: mx9.m.u.test\n";
	const char *mxs[] = {"bad.x.u.test", "mx2.m.u.test"};

	(void)state;
	/* STS-84: walking the MX list in order, the first host fails the
	 * match on its own and the second one matches */
	assert_int_equal(mta_sts_parse_policy(b1, strlen(b1), &p, NULL), 0);
	assert_false(mta_sts_mx_match(&p, mxs[0]));
	assert_true(mta_sts_mx_match(&p, mxs[1]));
	/* STS-82: nothing matches */
	assert_int_equal(mta_sts_parse_policy(b3, strlen(b3), &p, NULL), 0);
	assert_false(mta_sts_mx_match(&p, "mx1.m.u.test"));
	assert_false(mta_sts_mx_match(&p, "mx2.m.u.test"));
	/* mode none: no pattern, matches nothing (caller ignores the mode) */
	assert_int_equal(mta_sts_parse_policy(b2, strlen(b2), &p, NULL), 0);
	assert_false(mta_sts_mx_match(&p, "mx1.m.u.test"));
}

/* ---- Content-Type (STS-45..47) ---- */

static void content_type(void **state)
{
	static const struct {
		const char *ct;
		bool ok;
	} t[] = {
		{"text/plain", true},
		{"text/plain; charset=utf-8", true},	  /* STS-46 */
		{"TEXT/Plain;charset=us-ascii", true},	  /* STS-46 */
		{"text/plain; format=flowed", true},	  /* STS-46 */
		{" text/plain ", true},
		{"text/plain ;x=y", true},
		{"text/html", false},			  /* STS-45 */
		{"text/plainx", false},
		{"text/plai", false},
		{"", false},
		{"application/text/plain", false},
		{"text/plain, text/html", false},
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(t); i++) {
		print_message("'%s'\n", t[i].ct);
		assert_int_equal(mta_sts_content_type_ok(t[i].ct), t[i].ok);
	}
	assert_false(mta_sts_content_type_ok(NULL)); /* STS-47 */
}

/* ---- cache record codec ---- */

static void make_rec(struct mta_sts_cache_rec *r, const char *text)
{
	memset(r, 0, sizeof(*r));
	strcpy(r->domain, "m.u.test");
	strcpy(r->id, "20240101T000000");
	r->fetched_at = 1700000000;
	r->expires_at = 1700000000 + 604800;
	r->text = text;
	r->text_len = strlen(text);
}

static void cache_round_trip(void **state)
{
	static struct mta_sts_cache_rec in, out;
	struct mta_buf b = {0};

	(void)state;
	make_rec(&in, P0_CRLF);
	assert_int_equal(mta_buf_append(&b, "pfx", 3), 0);
	assert_int_equal(mta_sts_cache_encode(&in, &b), 0);
	assert_int_equal(mta_sts_cache_decode(b.data + 3, b.len - 3, &out), 0);
	assert_string_equal(out.domain, "m.u.test");
	assert_string_equal(out.id, "20240101T000000");
	assert_int_equal(out.fetched_at, 1700000000);
	assert_int_equal(out.expires_at, 1700000000 + 604800);
	assert_int_equal(out.text_len, strlen(P0_CRLF));
	assert_memory_equal(out.text, P0_CRLF, out.text_len);
	assert_ptr_equal(out.text, (const char *)b.data + b.len - out.text_len);
	assert_int_equal(out.policy.mode, MTA_STS_MODE_ENFORCE);
	assert_int_equal(out.policy.nmx, 2);
	assert_string_equal(out.policy.mx[1], "mx2.m.u.test");
	assert_memory_equal(b.data, "pfx", 3);
	mta_buf_free(&b);

	/* negative times survive (signed) */
	make_rec(&in, "version: STSv1\nmode: none\nmax_age: 5\n");
	in.fetched_at = -10;
	in.expires_at = -5;
	assert_int_equal(mta_sts_cache_encode(&in, &b), 0);
	assert_int_equal(mta_sts_cache_decode(b.data, b.len, &out), 0);
	assert_int_equal(out.fetched_at, -10);
	assert_int_equal(out.expires_at, -5);
	mta_buf_free(&b);
}

static void cache_encode_errors(void **state)
{
	static struct mta_sts_cache_rec in;
	static char big[MTA_STS_POLICY_MAX + 1];
	struct mta_buf b = {0};

	(void)state;
	assert_int_equal(mta_buf_append(&b, "keep", 4), 0);
	make_rec(&in, P0_LF);
	strcpy(in.domain, "M.u.test");
	assert_int_equal(mta_sts_cache_encode(&in, &b), -EINVAL);
	make_rec(&in, P0_LF);
	strcpy(in.domain, "");
	assert_int_equal(mta_sts_cache_encode(&in, &b), -EINVAL);
	make_rec(&in, P0_LF);
	strcpy(in.id, "a-b");
	assert_int_equal(mta_sts_cache_encode(&in, &b), -EINVAL);
	make_rec(&in, P0_LF);
	in.expires_at = in.fetched_at - 1;
	assert_int_equal(mta_sts_cache_encode(&in, &b), -EINVAL);
	make_rec(&in, P0_LF);
	in.expires_at = in.fetched_at + MTA_STS_MAX_AGE_CAP + 1;
	assert_int_equal(mta_sts_cache_encode(&in, &b), -EINVAL);
	make_rec(&in, "version: STSv2\n");
	assert_int_equal(mta_sts_cache_encode(&in, &b), -EINVAL);
	memset(big, 'x', sizeof(big));
	make_rec(&in, P0_LF);
	in.text = big;
	in.text_len = sizeof(big);
	assert_int_equal(mta_sts_cache_encode(&in, &b), MTA_ETOOBIG);
	assert_int_equal(b.len, 4); /* out unchanged */
	assert_memory_equal(b.data, "keep", 4);
	mta_buf_free(&b);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void cache_corruptions(void **state)
{
	static struct mta_sts_cache_rec in, out;
	struct mta_buf b = {0};
	uint8_t *c;
	size_t n, dom_off = 26, id_off, text_off;

	(void)state;
	make_rec(&in, P0_LF);
	assert_int_equal(mta_sts_cache_encode(&in, &b), 0);
	n = b.len;
	c = malloc(n + 1);
	assert_non_null(c);
	id_off = dom_off + 1 + strlen(in.domain);
	text_off = id_off + 1 + strlen(in.id) + 4;

	/* every truncation */
	for (size_t k = 0; k < n; k++)
		assert_int_equal(mta_sts_cache_decode(b.data, k, &out),
				 MTA_ECORRUPT);
#define RESET() memcpy(c, b.data, n)
	RESET();
	c[0] = 'X';
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);
	RESET();
	c[5] = 2; /* version 2 */
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ESCHEMA);
	RESET();
	put_be32(c + 6, (uint32_t)n + 1);
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);
	RESET();
	c[n] = 0; /* a trailing byte, the length field agreeing */
	put_be32(c + 6, (uint32_t)n + 1);
	assert_int_equal(mta_sts_cache_decode(c, n + 1, &out), MTA_ECORRUPT);
	RESET();
	c[dom_off + 1] = 'M'; /* upper-case domain */
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);
	RESET();
	c[dom_off + 2] = '\0'; /* NUL inside the domain */
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);
	RESET();
	c[id_off + 1] = '-'; /* invalid id */
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);
	RESET();
	c[dom_off] = (uint8_t)(strlen(in.domain) + 1); /* length mismatch */
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);
	RESET();
	c[text_off + 13] = '2'; /* "version: STSv2" */
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);
	RESET();
	memcpy(c + 18, c + 10, 8); /* expires_at before fetched_at */
	c[17]++;
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);
	RESET();
	c[21] += 2; /* lifetime over the cap: expires_at + 2^33 */
	assert_int_equal(mta_sts_cache_decode(c, n, &out), MTA_ECORRUPT);

	/* every single-byte change: an error or a record that is valid */
	seed(8461);
	for (size_t k = 0; k < n; k++) {
		for (int r = 0; r < 4; r++) {
			int rc;

			RESET();
			c[k] = (uint8_t)rng();
			rc = mta_sts_cache_decode(c, n, &out);
			if (rc == 0) {
				assert_true(out.expires_at >= out.fetched_at);
				assert_true(strlen(out.id) > 0);
			} else {
				assert_true(rc == MTA_ECORRUPT ||
					    rc == MTA_ESCHEMA);
			}
		}
	}
#undef RESET
	free(c);
	mta_buf_free(&b);
}

/* ---- cache decisions (STS-13, 14, 32, 60..64) ---- */

static void cache_decide_table(void **state)
{
	static struct mta_sts_cache_rec rec, zero, later;
	const int64_t t0 = 1700000000;
	struct {
		const char *name;
		const struct mta_sts_cache_rec *c;
		enum mta_sts_txt_result txt;
		const char *id;
		int64_t now;
		enum mta_sts_decision d;
	} t[] = {
		{"STS-01 no cache, id", NULL, MTA_STS_TXT_RESULT_ID, "1", t0,
		 MTA_STS_FETCH},
		{"STS-02 no cache, no TXT", NULL, MTA_STS_TXT_RESULT_NONE, NULL,
		 t0, MTA_STS_NO_POLICY},
		{"STS-14a no cache, tempfail", NULL,
		 MTA_STS_TXT_RESULT_TEMPFAIL, NULL, t0, MTA_STS_NO_POLICY},
		{"STS-60 same id", &rec, MTA_STS_TXT_RESULT_ID, "1", t0 + 10,
		 MTA_STS_USE_CACHED},
		{"STS-69 same id, last second", &rec, MTA_STS_TXT_RESULT_ID, "1",
		 t0 + 86399, MTA_STS_USE_CACHED},
		{"STS-61/62 id changed", &rec, MTA_STS_TXT_RESULT_ID, "2",
		 t0 + 10, MTA_STS_FETCH_KEEP_OLD_ON_FAIL},
		{"id compare is exact", &rec, MTA_STS_TXT_RESULT_ID, "1 ",
		 t0 + 10, MTA_STS_FETCH_KEEP_OLD_ON_FAIL},
		{"STS-63 expired, same id", &rec, MTA_STS_TXT_RESULT_ID, "1",
		 t0 + 86400, MTA_STS_FETCH},
		{"STS-63 expired, new id", &rec, MTA_STS_TXT_RESULT_ID, "2",
		 t0 + 86401, MTA_STS_FETCH},
		{"STS-13 TXT gone", &rec, MTA_STS_TXT_RESULT_NONE, NULL, t0 + 10,
		 MTA_STS_USE_CACHED},
		{"STS-13 TXT gone, expired", &rec, MTA_STS_TXT_RESULT_NONE, NULL,
		 t0 + 86400, MTA_STS_NO_POLICY},
		{"STS-14b tempfail, cached", &rec, MTA_STS_TXT_RESULT_TEMPFAIL,
		 NULL, t0 + 10, MTA_STS_USE_CACHED},
		{"STS-14 tempfail, expired", &rec, MTA_STS_TXT_RESULT_TEMPFAIL,
		 NULL, t0 + 90000, MTA_STS_NO_POLICY},
		{"STS-32 max_age 0 never used", &zero, MTA_STS_TXT_RESULT_ID,
		 "1", t0, MTA_STS_FETCH},
		{"STS-32 max_age 0, no TXT", &zero, MTA_STS_TXT_RESULT_NONE,
		 NULL, t0, MTA_STS_NO_POLICY},
		{"STS-64 life from last fetch", &later, MTA_STS_TXT_RESULT_ID,
		 "1", t0 + 30 * 3600, MTA_STS_USE_CACHED},
		{"STS-64 ... until t0+44h", &later, MTA_STS_TXT_RESULT_ID, "1",
		 t0 + 44 * 3600, MTA_STS_FETCH},
	};

	(void)state;
	make_rec(&rec, P0_LF);
	strcpy(rec.id, "1");
	rec.fetched_at = t0;
	rec.expires_at = t0 + 86400;
	zero = rec;
	zero.expires_at = t0;
	later = rec;
	later.fetched_at = t0 + 20 * 3600; /* refreshed at t0+20h */
	later.expires_at = later.fetched_at + 86400;
	for (size_t i = 0; i < ARRAY_LEN(t); i++) {
		enum mta_sts_decision d =
			mta_sts_cache_decide(t[i].c, t[i].txt, t[i].id, t[i].now);

		print_message("%-30s %s\n", t[i].name,
			      decision_name(d));
		assert_int_equal(d, t[i].d);
	}
}

static void refresh_jitter(void **state)
{
	static struct mta_sts_cache_rec rec;
	const int64_t t0 = 1700000000;
	static const int64_t lives[] = {604800, 86400, 3600, 31557600, 2, 1};

	(void)state;
	make_rec(&rec, P0_LF);
	seed(20240611);
	for (size_t l = 0; l < ARRAY_LEN(lives); l++) {
		int64_t life = lives[l];
		int64_t base = life / 2 < 86400 ? life / 2 : 86400;

		rec.fetched_at = t0;
		rec.expires_at = t0 + life;
		assert_int_equal(refresh_at(&rec, 0), t0 + base);
		for (int i = 0; i < 20000; i++) {
			uint32_t j = rng();
			int64_t at = refresh_at(&rec, j);

			assert_true(at >= t0 + base - base / 10);
			assert_true(at <= t0 + base);
			assert_true(at < rec.expires_at);
			assert_true(mta_sts_refresh_due(&rec, at, j));
			if (at > t0)
				assert_false(
					mta_sts_refresh_due(&rec, at - 1, j));
		}
	}
	/* STS-65: max_age 7 d, 25 h without traffic: due for any jitter */
	rec.fetched_at = t0;
	rec.expires_at = t0 + 604800;
	for (int i = 0; i < 1000; i++)
		assert_true(mta_sts_refresh_due(&rec, t0 + 25 * 3600, rng()));
	/* the earliest refresh is 2.4 h before the day */
	assert_int_equal(refresh_at(&rec, 8640), t0 + 86400 - 8640);
	assert_int_equal(refresh_at(&rec, 8641), t0 + 86400);
	/* a max_age 0 record is never refreshed (it is never stored) */
	rec.expires_at = t0;
	assert_false(mta_sts_refresh_due(&rec, t0 + 1000000, 0));
}

static void names(void **state)
{
	(void)state;
	assert_string_equal(mta_sts_mode_name(MTA_STS_MODE_ENFORCE),
			    "enforce");
	assert_string_equal(mta_sts_mode_name(MTA_STS_MODE_TESTING),
			    "testing");
	assert_string_equal(mta_sts_mode_name(MTA_STS_MODE_NONE), "none");
	assert_string_equal(decision_name(MTA_STS_NO_POLICY),
			    "no-policy");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(txt_table),
		cmocka_unit_test(pick_table),
		cmocka_unit_test(policy_table),
		cmocka_unit_test(policy_limits),
		cmocka_unit_test(policy_cacheable),
		cmocka_unit_test(mx_table),
		cmocka_unit_test(mx_walk),
		cmocka_unit_test(content_type),
		cmocka_unit_test(cache_round_trip),
		cmocka_unit_test(cache_encode_errors),
		cmocka_unit_test(cache_corruptions),
		cmocka_unit_test(cache_decide_table),
		cmocka_unit_test(refresh_jitter),
		cmocka_unit_test(names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
