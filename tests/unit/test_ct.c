/* Unit tests of libmta/ct.c: the log list parser (schema v3, its
 * failures), the SCT list parser, the precert TBS rebuilding and the SCT
 * verdicts (issue 16).  The vectors in tests/unit/data/ct/ are real RFC
 * 6962 structures built by tests/unit/make_ct_vectors.py with
 * tests/lab/ctlab.py: test logs A and C (Operator One), B (Operator Two)
 * and R (retired), a lab CA, and leaves for mx.ct.test whose embedded SCTs
 * those logs signed over the precert entry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ct.h"
#include "err.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#ifndef CT_DATA
#error CT_DATA must name tests/unit/data/ct
#endif

static gnutls_datum_t load(const char *name)
{
	char path[512];
	FILE *f;
	gnutls_datum_t d = {NULL, 0};
	long n;

	snprintf(path, sizeof(path), "%s/%s", CT_DATA, name);
	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	rewind(f);
	d.data = malloc((size_t)n + 1);
	assert_non_null(d.data);
	assert_int_equal(fread(d.data, 1, (size_t)n, f), (size_t)n);
	d.data[n] = 0;
	d.size = (unsigned)n;
	fclose(f);
	return d;
}

static int64_t now_ms(void)
{
	return (int64_t)time(NULL) * 1000;
}

static void loglist_ok(void **state)
{
	struct mta_ct_loglist *l = NULL;
	char err[256];

	(void)state;
	assert_int_equal(mta_ct_loglist_load(CT_DATA "/loglist.json", &l, err,
					     sizeof(err)),
			 0);
	assert_int_equal(l->nlogs, 4);
	assert_int_equal(l->nops, 3);
	assert_string_equal(l->ops[0], "Operator One");
	assert_string_equal(l->logs[0].desc, "Test Log A");
	assert_int_equal(l->logs[0].op, 0);
	assert_int_equal(l->logs[1].op, 0); /* C: same operator as A */
	assert_int_equal(l->logs[0].state, MTA_CT_STATE_USABLE);
	assert_int_equal(l->logs[3].state, MTA_CT_STATE_RETIRED);
	assert_true(l->list_ms > 1600000000000LL);
	mta_ct_loglist_free(l);
}

/* A valid P-256 SPKI and its SHA-256 (computed by the parser's check) */
#define KEY "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5dLjhMd9y3qfvf2N8fPw0EgE" \
	    "0wB0sUZOUbG1SPh7n5Gu1aT4v6fGrmHpWp7vbcHsv3ENC1lqmEF0Q3uRNfrzHA=="

static void loglist_bad(void **state)
{
	static const char *bad[] = {
		"",
		"[]",
		"{}",
		"{\"operators\": {}}",
		"{\"operators\": [{\"logs\": []}]}",			   /* no name */
		"{\"operators\": [{\"name\": \"x\", \"logs\": [{}]}]}", /* no id */
		"{\"operators\": [{\"name\": \"x\", \"logs\": [{\"log_id\": "
		"\"AAAA\", \"key\": \"" KEY "\"}]}]}", /* short id */
		"{\"operators\": [{\"name\": \"x\", \"logs\": [{\"log_id\": "
		"\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", \"key\": \"" KEY
		"\"}]}]}", /* id is not the key's hash */
		"{\"operators\": []} x",		/* trailing data */
		"{\"operators\": [], \"a\": \"\\ud800\"}", /* lone surrogate */
		"{\"operators\": [], \"a\": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}",
		"{\"operators\": [], \"log_list_timestamp\": \"yesterday\"}",
		"{\"operators\": [], \"a\": \"\x01\"}",
		"{\"operators\": [], \"a\": 01}",
	};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		struct mta_ct_loglist *l = (void *)1;
		char err[256] = "";
		int rc = mta_ct_loglist_parse(bad[i], strlen(bad[i]), &l, err,
					      sizeof(err));
		printf("bad[%zu]: rc=%d %s\n", i, rc, err);
		assert_true(rc < 0);
		assert_null(l);
		assert_true(err[0] != '\0');
	}
	{
		/* escapes, numbers, empty list: fine */
		const char *ok = "{\"version\": \"1.0\", \"n\": -1.5e3, \"t\": "
				 "true, \"z\": null, \"s\": \"a\\u00e9\\ud83d"
				 "\\ude00\\n\", \"operators\": []}";
		struct mta_ct_loglist *l = NULL;
		char err[256];
		assert_int_equal(mta_ct_loglist_parse(ok, strlen(ok), &l, err,
						      sizeof(err)),
				 0);
		assert_int_equal(l->nlogs, 0);
		mta_ct_loglist_free(l);
	}
}

static void precert_tbs(void **state)
{
	gnutls_datum_t cert = load("ok2.der"), want = load("ok2.tbs");
	gnutls_datum_t none = load("none.der");
	uint8_t out[4096];
	size_t n = 0;

	(void)state;
	assert_int_equal(mta_ct_precert_tbs(cert.data, cert.size, out,
					    sizeof(out), &n),
			 0);
	assert_int_equal(n, want.size);
	assert_memory_equal(out, want.data, n);
	/* a certificate without the extension: its own TBS */
	assert_int_equal(mta_ct_precert_tbs(none.data, none.size, out,
					    sizeof(out), &n),
			 0);
	assert_int_equal(n, want.size); /* same builder, same sizes */
	/* too small an output; truncated input */
	assert_int_equal(mta_ct_precert_tbs(cert.data, cert.size, out, 10, &n),
			 MTA_ETOOBIG);
	for (unsigned cut = 0; cut < cert.size; cut += 7)
		assert_true(mta_ct_precert_tbs(cert.data, cut, out, sizeof(out),
					       &n) < 0);
	free(cert.data);
	free(want.data);
	free(none.data);
}

static void sct_list_parse(void **state)
{
	/* one SCT: v1, id 32x 0x11, ts 0x0102030405060708, ext "", ECDSA,
	 * sig "\x30\x00" */
	uint8_t one[2 + 2 + 1 + 32 + 8 + 2 + 4 + 2];
	struct mta_ct_sct s[4];
	size_t n = 0, o = 0;

	(void)state;
	one[o++] = 0;
	one[o++] = sizeof(one) - 2;
	one[o++] = 0;
	one[o++] = sizeof(one) - 4;
	one[o++] = 0;
	memset(one + o, 0x11, 32);
	o += 32;
	for (int i = 1; i <= 8; i++)
		one[o++] = (uint8_t)i;
	one[o++] = 0;
	one[o++] = 0;
	one[o++] = 4;
	one[o++] = 3;
	one[o++] = 0;
	one[o++] = 2;
	one[o++] = 0x30;
	one[o++] = 0x00;
	assert_int_equal(o, sizeof(one));
	assert_int_equal(mta_ct_parse_scts(one, sizeof(one), s, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(s[0].timestamp, 0x0102030405060708ULL);
	assert_int_equal(s[0].hash_alg, 4);
	assert_int_equal(s[0].sig_alg, 3);
	assert_int_equal(s[0].sig_len, 2);
	/* every truncation fails; so does a list length off by one */
	for (size_t cut = 0; cut < sizeof(one); cut++)
		assert_true(mta_ct_parse_scts(one, cut, s, 4, &n) < 0);
	one[1]++;
	assert_true(mta_ct_parse_scts(one, sizeof(one), s, 4, &n) < 0);
	one[1]--;
	assert_int_equal(mta_ct_parse_scts(one, sizeof(one), s, 0, &n),
			 MTA_ETOOBIG);
}

static const struct {
	const char *file;
	unsigned need;
	enum mta_ct_verdict want;
	unsigned nvalid;
	const char *why; /* substring of the evidence */
} cases[] = {
	{"ok2.der", 2, MTA_CT_OK, 2, "2 valid from 2 operators"},
	{"ok2.der", 1, MTA_CT_OK, 2, NULL},
	{"ok2.der", 3, MTA_CT_MISSING, 2, NULL},
	{"none.der", 2, MTA_CT_MISSING, 0, "no SCT"},
	{"one.der", 2, MTA_CT_MISSING, 1, NULL},
	{"one.der", 1, MTA_CT_ONE_OPERATOR, 1, NULL},
	{"sameop.der", 2, MTA_CT_ONE_OPERATOR, 2, "from 1 operator"},
	{"badsig.der", 2, MTA_CT_INVALID, 1, "bad signature"},
	{"othercert.der", 2, MTA_CT_INVALID, 1, "bad signature"},
	{"retired.der", 2, MTA_CT_INVALID, 1, "log retired"},
	{"future.der", 2, MTA_CT_INVALID, 1, "timestamp in the future"},
};

static void check_table(void **state)
{
	struct mta_ct_loglist *l = NULL;
	gnutls_datum_t ca = load("ca.der");
	char err[256];

	(void)state;
	assert_int_equal(mta_ct_loglist_load(CT_DATA "/loglist.json", &l, err,
					     sizeof(err)),
			 0);
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		gnutls_datum_t leaf = load(cases[i].file);
		struct mta_ct_result r;

		mta_ct_check(l, &leaf, &ca, cases[i].need, now_ms(), &r);
		printf("%s need=%u: %s (%s)\n", cases[i].file, cases[i].need,
		       mta_ct_verdict_name(r.verdict), r.why);
		assert_int_equal(r.verdict, cases[i].want);
		assert_int_equal(r.nvalid, cases[i].nvalid);
		if (cases[i].why != NULL)
			assert_non_null(strstr(r.why, cases[i].why));
		free(leaf.data);
	}
	{
		/* the wrong issuer: every signature fails */
		gnutls_datum_t leaf = load("ok2.der");
		struct mta_ct_result r;
		mta_ct_check(l, &leaf, &leaf, 2, now_ms(), &r);
		assert_int_equal(r.verdict, MTA_CT_INVALID);
		assert_int_equal(r.nvalid, 0);
		/* no list: nothing counts */
		mta_ct_check(NULL, &leaf, &ca, 2, now_ms(), &r);
		assert_int_equal(r.verdict, MTA_CT_INVALID);
		assert_non_null(strstr(r.why, "log not in the list"));
		/* a clock before the SCTs: in the future */
		mta_ct_check(l, &leaf, &ca, 2, 1000000000000LL,
			     &r);
		assert_int_equal(r.verdict, MTA_CT_INVALID);
		free(leaf.data);
	}
	free(ca.data);
	mta_ct_loglist_free(l);
}

static void names(void **state)
{
	(void)state;
	assert_string_equal(mta_ct_verdict_name(MTA_CT_ONE_OPERATOR),
			    "one-operator");
	assert_string_equal(mta_ct_verdict_name(MTA_CT_MISSING), "missing");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(loglist_ok),
		cmocka_unit_test(loglist_bad),
		cmocka_unit_test(precert_tbs),
		cmocka_unit_test(sct_list_parse),
		cmocka_unit_test(check_table),
		cmocka_unit_test(names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
