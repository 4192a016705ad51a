/*
 * fuzz_sts.c - libFuzzer target for the MTA-STS parsers (libmta/sts.c).
 *
 * Input: byte 0 selects what the rest is fed to (modulo 5):
 *   0  one _mta-sts TXT record (parse_txt)
 *   1  a TXT record set, records split at NUL bytes (mta_sts_pick_txt)
 *   2  a policy body (mta_sts_parse_policy), then MX matching of names
 *      derived from its own patterns, then a cache record round trip
 *   3  a cache record (mta_sts_cache_decode)
 *   4  a Content-Type value (mta_sts_content_type_ok)
 * Checked promises: a parsed id is 1..32 alphanumerics and came from the
 * input; a parsed policy has a known mode, <= 100 lower-case patterns,
 * max_age <= cap, mx for any mode but none; every pattern matches the host
 * it describes ("*.x" matches "a.x" and "A.x."); encode then
 * decode gives the same record back; decode never accepts what encode
 * would refuse.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
/* the module itself, for its static parse_txt() and txt_is_sts() */
#include "../../libmta/sts.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                 \
	do {                     \
		if (!(x))        \
			abort(); \
	} while (0)

static bool alnum_id(const char *id)
{
	size_t n = strlen(id);

	if (n == 0 || n > MTA_STS_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9')))
			return false;
	}
	return true;
}

static void check_txt(const char *s, size_t n)
{
	struct mta_sts_txt t;
	const char *why = NULL;

	if (parse_txt(s, n, &t, &why) == 0) {
		CHECK(alnum_id(t.id));
		CHECK(memmem(s, n, t.id, strlen(t.id)) != NULL);
		CHECK(txt_is_sts(s, n));
	} else {
		CHECK(why != NULL);
	}
}

static void check_pick(const char *s, size_t n)
{
	const char *texts[16];
	size_t lens[16], k = 0, start = 0;
	struct mta_sts_txt t;
	enum mta_sts_txt_verdict v;

	for (size_t i = 0; i <= n && k < 16; i++) {
		if (i == n || s[i] == '\0') {
			texts[k] = s + start;
			lens[k++] = i - start;
			start = i + 1;
		}
	}
	v = mta_sts_pick_txt(texts, lens, k, &t, NULL);
	if (v == MTA_STS_TXT_OK)
		CHECK(alnum_id(t.id));
}

static void check_policy(const char *s, size_t n)
{
	static struct mta_sts_policy p;
	static struct mta_sts_cache_rec rec, back;
	struct mta_buf b = {0};
	const char *why = NULL;
	int rc = mta_sts_parse_policy(s, n, &p, &why);

	if (rc != 0) {
		CHECK(why != NULL);
		CHECK(rc == MTA_EPROTO || rc == MTA_ETOOBIG);
		return;
	}
	CHECK(p.mode <= MTA_STS_MODE_ENFORCE);
	CHECK(p.nmx <= MTA_STS_MX_MAX);
	CHECK(p.max_age <= MTA_STS_MAX_AGE_CAP);
	CHECK(p.mode == MTA_STS_MODE_NONE || p.nmx > 0);
	CHECK(p.max_age_capped == (p.max_age_raw > MTA_STS_MAX_AGE_CAP));
	for (size_t i = 0; i < p.nmx; i++) {
		char host[MTA_STS_PATTERN_MAX + 8];
		const char *pat = p.mx[i];
		size_t m = strlen(pat);

		CHECK(m > 0 && m <= MTA_STS_PATTERN_MAX);
		for (size_t k = 0; k < m; k++)
			CHECK(!(pat[k] >= 'A' && pat[k] <= 'Z'));
		if (pat[0] == '*') {
			CHECK(pat[1] == '.');
			/* "*.x" matches "a.x." and "A.X", not "x" nor "b.a.x" */
			memcpy(host, "a", 1);
			memcpy(host + 1, pat + 1, m); /* ".x" + NUL */
			/* a host name is <= 253 octets: longer never match */
			CHECK(mta_sts_mx_match(&p, host) ==
			      (m <= MTA_STS_DOMAIN_MAX));
			host[0] = 'A';
			strcat(host, ".");
			CHECK(mta_sts_mx_match(&p, host) ==
			      (m <= MTA_STS_DOMAIN_MAX));
		} else {
			CHECK(mta_sts_mx_match(&p, pat));
		}
	}
	/* cache round trip */
	memset(&rec, 0, sizeof(rec));
	strcpy(rec.domain, "fuzz.test");
	strcpy(rec.id, "1");
	rec.fetched_at = 1000;
	rec.expires_at = 1000 + (int64_t)p.max_age;
	rec.text = s;
	rec.text_len = n;
	CHECK(mta_sts_cache_encode(&rec, &b) == 0);
	CHECK(mta_sts_cache_decode(b.data, b.len, &back) == 0);
	CHECK(back.text_len == n && memcmp(back.text, s, n) == 0);
	CHECK(back.policy.nmx == p.nmx && back.policy.mode == p.mode &&
	      back.policy.max_age == p.max_age);
	CHECK(mta_sts_cache_decide(&back, MTA_STS_TXT_RESULT_ID, "1", 1000) ==
	      (p.max_age > 0 ? MTA_STS_USE_CACHED : MTA_STS_FETCH));
	mta_buf_free(&b);
}

static void check_cache(const uint8_t *d, size_t n)
{
	static struct mta_sts_cache_rec rec;
	struct mta_buf b = {0};
	int rc = mta_sts_cache_decode(d, n, &rec);

	if (rc != 0) {
		CHECK(rc == MTA_ECORRUPT || rc == MTA_ESCHEMA);
		return;
	}
	CHECK(rec.expires_at >= rec.fetched_at);
	CHECK(alnum_id(rec.id));
	/* what decodes also encodes, to the same bytes */
	CHECK(mta_sts_cache_encode(&rec, &b) == 0);
	CHECK(b.len == n && memcmp(b.data, d, n) == 0);
	(void)mta_sts_refresh_due(&rec, rec.fetched_at, (uint32_t)n);
	mta_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s;
	char *ct;

	if (size < 1)
		return 0;
	s = (const char *)data + 1;
	switch (data[0] % 5) {
	case 0:
		check_txt(s, size - 1);
		break;
	case 1:
		check_pick(s, size - 1);
		break;
	case 2:
		check_policy(s, size - 1);
		break;
	case 3:
		check_cache(data + 1, size - 1);
		break;
	case 4:
		ct = malloc(size);
		if (ct == NULL)
			return 0;
		memcpy(ct, s, size - 1);
		ct[size - 1] = '\0';
		(void)mta_sts_content_type_ok(ct);
		free(ct);
		break;
	}
	return 0;
}
