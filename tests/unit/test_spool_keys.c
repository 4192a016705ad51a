/* Unit tests for spool_keys.c: the key continuity record codec, the
 * lookup that classifies a new certificate (issue 16 part 2), the
 * in-memory updates, and the writer's apply through a real spool. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "spool.h"
#include "spool_keys.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DAY 86400
#define T0 1760000000 /* a fixed "now" */

static void hash(uint8_t out[MTA_SPOOL_KEYS_HASH], uint8_t tag)
{
	memset(out, tag, MTA_SPOOL_KEYS_HASH);
}

static void add(struct mta_spool_keys_rec *r, uint8_t state,
		const char *host, uint8_t leaf, uint8_t issuer, int64_t first,
		int64_t last)
{
	struct mta_spool_keys_entry *e = &r->e[r->n++];
	memset(e, 0, sizeof(*e));
	e->state = state;
	snprintf(e->host, sizeof(e->host), "%s", host);
	hash(e->leaf, leaf);
	hash(e->issuer, issuer);
	e->first = first;
	e->last = last;
}

static struct mta_spool_keys_rec *rec_new(void)
{
	struct mta_spool_keys_rec *r = calloc(1, sizeof(*r));
	assert_non_null(r);
	return r;
}

/* ---- codec ------------------------------------------------------------ */

static void test_codec_roundtrip(void **state)
{
	struct mta_spool_keys_rec *r = rec_new(), *d = rec_new();
	struct mta_buf b = {0}, b2 = {0};
	(void)state;

	r->accepted_at = T0 - 5;
	add(r, MTA_SPOOL_KEYS_TRUSTED, "mx1.example.net", 1, 2, T0 - DAY, T0);
	add(r, MTA_SPOOL_KEYS_PENDING, "mx2.example.net", 3, 4, T0 - 9, T0 - 1);
	assert_int_equal(mta_spool_keys_encode(r, &b), 0);
	assert_memory_equal(b.data, "MTAK\0\1\0\2", 8);
	assert_int_equal(mta_spool_keys_decode(b.data, b.len, d), 0);
	assert_int_equal(d->n, 2);
	assert_int_equal(d->accepted_at, T0 - 5);
	assert_string_equal(d->e[1].host, "mx2.example.net");
	assert_int_equal(d->e[1].state, MTA_SPOOL_KEYS_PENDING);
	assert_memory_equal(d->e[0].issuer, r->e[0].issuer, 32);
	assert_int_equal(d->e[0].first, T0 - DAY);
	assert_int_equal(d->e[1].last, T0 - 1);
	/* canonical */
	assert_int_equal(mta_spool_keys_encode(d, &b2), 0);
	assert_int_equal(b2.len, b.len);
	assert_memory_equal(b2.data, b.data, b.len);
	mta_buf_free(&b);
	mta_buf_free(&b2);
	free(r);
	free(d);
}

/* Readers check magic, version and length and fail distinctly. */
static void test_codec_errors(void **state)
{
	struct mta_spool_keys_rec *r = rec_new(), *d = rec_new();
	struct mta_buf b = {0};
	uint8_t *p;
	(void)state;

	add(r, MTA_SPOOL_KEYS_TRUSTED, "mx1.example.net", 1, 2, T0, T0);
	assert_int_equal(mta_spool_keys_encode(r, &b), 0);
	p = malloc(b.len + 1);
	assert_non_null(p);

	memcpy(p, b.data, b.len);
	p[0] = 'X'; /* magic */
	assert_int_equal(mta_spool_keys_decode(p, b.len, d), MTA_ECORRUPT);
	memcpy(p, b.data, b.len);
	p[5] = 2; /* version */
	assert_int_equal(mta_spool_keys_decode(p, b.len, d), MTA_ESCHEMA);
	/* every truncation */
	for (size_t n = 0; n < b.len; n++)
		assert_int_not_equal(mta_spool_keys_decode(b.data, n, d), 0);
	/* a trailing byte (the length field no longer matches) */
	memcpy(p, b.data, b.len);
	p[b.len] = 0;
	assert_int_equal(mta_spool_keys_decode(p, b.len + 1, d), MTA_ECORRUPT);
	/* bad state */
	memcpy(p, b.data, b.len);
	p[20] = 7;
	assert_int_equal(mta_spool_keys_decode(p, b.len, d), MTA_ECORRUPT);
	/* host length 0 */
	memcpy(p, b.data, b.len);
	p[21] = 0;
	assert_int_equal(mta_spool_keys_decode(p, b.len, d), MTA_ECORRUPT);
	/* entry count beyond the bytes */
	memcpy(p, b.data, b.len);
	p[7] = 2;
	assert_int_equal(mta_spool_keys_decode(p, b.len, d), MTA_ECORRUPT);
	/* an encoder refuses an empty host */
	r->e[0].host[0] = '\0';
	b.len = 0;
	assert_int_equal(mta_spool_keys_encode(r, &b), -EINVAL);
	free(p);
	mta_buf_free(&b);
	free(r);
	free(d);
}

static void test_hex(void **state)
{
	uint8_t h[32], g[32];
	char x[65];
	(void)state;
	for (int i = 0; i < 32; i++)
		h[i] = (uint8_t)(i * 37 + 1);
	mta_spool_keys_to_hex(h, x);
	assert_int_equal(strlen(x), 64);
	assert_int_equal(mta_spool_keys_from_hex(x, g), 0);
	assert_memory_equal(g, h, 32);
	assert_int_equal(mta_spool_keys_from_hex("abc", g), -EINVAL);
	x[3] = 'g';
	assert_int_equal(mta_spool_keys_from_hex(x, g), -EINVAL);
}

/* ---- lookup ----------------------------------------------------------- */

/* Record used by the table: mx1 and mx2 trusted (leaf 1 and 2 under
 * issuer 10), last seen a day ago. */
static void base_rec(struct mta_spool_keys_rec *r, int64_t last)
{
	memset(r, 0, sizeof(*r));
	add(r, MTA_SPOOL_KEYS_TRUSTED, "mx1.example.net", 1, 10, last - DAY,
	    last);
	add(r, MTA_SPOOL_KEYS_TRUSTED, "mx2.example.net", 2, 10, last - DAY,
	    last);
}

static const struct {
	const char *name;
	bool empty;	  /* no record content */
	int64_t last;	  /* base record's last seen */
	const char *host;
	uint8_t leaf, issuer;
	int pend;	  /* add pending entries of issuer 20: 0 none, 1 mx1
			   * only, 2 both (first seen 8 days ago) */
	enum mta_policy_cont want;
} cases[] = {
	{"first contact learns", true, 0, "mx1.example.net", 1, 10, 0,
	 MTA_POLICY_CONT_FIRST},
	{"known key", false, T0 - DAY, "mx1.example.net", 1, 10, 0,
	 MTA_POLICY_CONT_KNOWN},
	{"known key, other MX, any case", false, T0 - DAY, "MX2.example.net",
	 1, 10, 0, MTA_POLICY_CONT_KNOWN},
	{"rotation under the same issuer", false, T0 - DAY, "mx1.example.net",
	 5, 10, 0, MTA_POLICY_CONT_NEW_KEY},
	{"second CA while the known one is recent", false, T0 - DAY,
	 "mx1.example.net", 5, 20, 0, MTA_POLICY_CONT_NEW_ISSUER},
	{"second CA after the window: replaced", false, T0 - 31 * DAY,
	 "mx1.example.net", 5, 20, 0, MTA_POLICY_CONT_FIRST},
	{"held on one MX only: not healed", false, T0 - 9 * DAY,
	 "mx1.example.net", 5, 20, 1, MTA_POLICY_CONT_NEW_ISSUER},
	{"held on every MX for the hold period: healed", false,
	 T0 - 9 * DAY, "mx1.example.net", 5, 20, 2,
	 MTA_POLICY_CONT_ACCEPTED},
	{"held on every MX but a known key seen since: not healed", false,
	 T0 - DAY, "mx1.example.net", 5, 20, 2, MTA_POLICY_CONT_NEW_ISSUER},
};

static void test_classify(void **state)
{
	const char *mx[] = {"mx1.example.net", "mx2.example.net"};
	struct mta_spool_keys_rec *r = rec_new();
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct mta_spool_keys_entry *known = NULL;
		uint8_t l[32], is[32];
		struct mta_spool_keys_query q = {
			.host = cases[i].host, .leaf = l, .issuer = is,
			.now = T0, .window = 30 * DAY, .hold = 7 * DAY,
			.mx = mx, .nmx = 2,
		};
		if (cases[i].empty)
			memset(r, 0, sizeof(*r));
		else
			base_rec(r, cases[i].last);
		if (cases[i].pend >= 1)
			add(r, MTA_SPOOL_KEYS_PENDING, "mx1.example.net", 5, 20,
			    T0 - 8 * DAY, T0);
		if (cases[i].pend >= 2)
			add(r, MTA_SPOOL_KEYS_PENDING, "mx2.example.net", 6, 20,
			    T0 - 8 * DAY, T0);
		hash(l, cases[i].leaf);
		hash(is, cases[i].issuer);
		print_message("case %zu: %s\n", i, cases[i].name);
		assert_int_equal(mta_spool_keys_classify(r, &q, &known),
				 cases[i].want);
		if (!cases[i].empty) {
			/* the log names the same host's known key */
			assert_non_null(known);
			assert_int_equal(known->state, MTA_SPOOL_KEYS_TRUSTED);
		}
	}
	free(r);
}

/* ---- updates ---------------------------------------------------------- */

static void test_note_accept(void **state)
{
	struct mta_spool_keys_rec *r = rec_new();
	uint8_t l1[32], l5[32], i10[32], i20[32];
	(void)state;

	hash(l1, 1);
	hash(l5, 5);
	hash(i10, 10);
	hash(i20, 20);
	mta_spool_keys_note(r, MTA_SPOOL_KEYS_LEARN, "mx1.example.net", l1,
			    i10, T0 - DAY, 30 * DAY);
	assert_int_equal(r->n, 1);
	mta_spool_keys_note(r, MTA_SPOOL_KEYS_LEARN, "mx1.example.net", l1,
			    i10, T0, 30 * DAY);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->e[0].first, T0 - DAY);
	assert_int_equal(r->e[0].last, T0);
	/* held key: pending, accept promotes it */
	mta_spool_keys_note(r, MTA_SPOOL_KEYS_SEEN_PENDING, "mx1.example.net",
			    l5, i20, T0, 30 * DAY);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->e[1].state, MTA_SPOOL_KEYS_PENDING);
	assert_int_equal(mta_spool_keys_accept(r, T0 + 1), 1);
	assert_int_equal(r->e[1].state, MTA_SPOOL_KEYS_TRUSTED);
	assert_int_equal(r->accepted_at, T0 + 1);
	assert_int_equal(mta_spool_keys_accept(r, T0 + 2), 0);
	/* learning after the window drops the stale entries */
	mta_spool_keys_note(r, MTA_SPOOL_KEYS_LEARN, "mx2.example.net", l5,
			    i20, T0 + 40 * DAY, 30 * DAY);
	assert_int_equal(r->n, 1);
	assert_string_equal(r->e[0].host, "mx2.example.net");
	/* a full record evicts the entry seen longest ago */
	for (unsigned i = 0; i < MTA_SPOOL_KEYS_MAX + 3; i++) {
		uint8_t l[32];
		hash(l, (uint8_t)(100 + i));
		mta_spool_keys_note(r, MTA_SPOOL_KEYS_LEARN, "mx3.example.net",
				    l, i10, T0 + 40 * DAY + i, 30 * DAY);
	}
	assert_int_equal(r->n, MTA_SPOOL_KEYS_MAX);
	free(r);
}

/* ---- through the spool ------------------------------------------------ */

static int rm_one(const char *p, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void test_spool_apply(void **state)
{
	const char *base = getenv("MTA_TEST_TMPDIR");
	char dir[4096];
	struct mta_spool_opts o = {.max_size = 64u << 20};
	struct mta_spool *sp = NULL;
	struct mta_spool_txn *t;
	struct mta_spool_keys_rec *r = rec_new();
	struct mta_spool_keys_op op = {
		.kind = MTA_SPOOL_KEYS_LEARN, .domain = "example.net",
		.host = "mx1.example.net", .now = T0, .window = 30 * DAY,
	};
	(void)state;

	snprintf(dir, sizeof(dir), "%s/keystest.XXXXXX", base ? base : "/tmp");
	assert_non_null(mkdtemp(dir));
	strcat(dir, "/spool");
	o.dir = dir;
	assert_int_equal(mta_spool_open(&o, &sp), 0);
	assert_int_equal(mta_spool_keys_get(sp, "example.net", r),
			 MTA_ENOTFOUND);
	hash(op.leaf, 1);
	hash(op.issuer, 10);
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_keys_apply(t, &op), 0);
	/* ACCEPT with nothing held: notfound, the batch stays usable */
	op.kind = MTA_SPOOL_KEYS_ACCEPT;
	assert_int_equal(mta_spool_keys_apply(t, &op), MTA_ENOTFOUND);
	op.kind = MTA_SPOOL_KEYS_SEEN_PENDING;
	hash(op.leaf, 5);
	hash(op.issuer, 20);
	assert_int_equal(mta_spool_keys_apply(t, &op), 0);
	assert_int_equal(mta_spool_commit(t), 0);
	assert_int_equal(mta_spool_keys_get(sp, "example.net", r), 0);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->e[1].state, MTA_SPOOL_KEYS_PENDING);
	op.kind = MTA_SPOOL_KEYS_ACCEPT;
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_keys_apply(t, &op), 0);
	assert_int_equal(mta_spool_commit(t), 0);
	assert_int_equal(mta_spool_keys_get(sp, "example.net", r), 0);
	assert_int_equal(r->e[1].state, MTA_SPOOL_KEYS_TRUSTED);
	assert_int_equal(r->accepted_at, T0);
	mta_spool_close(sp);
	/* reopened read-only (mtactl policy show) */
	o.readonly = true;
	assert_int_equal(mta_spool_open(&o, &sp), 0);
	assert_int_equal(mta_spool_keys_get(sp, "example.net", r), 0);
	assert_int_equal(r->n, 2);
	mta_spool_close(sp);
	dir[strlen(dir) - strlen("/spool")] = '\0';
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_codec_roundtrip),
		cmocka_unit_test(test_codec_errors),
		cmocka_unit_test(test_hex),
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_note_accept),
		cmocka_unit_test(test_spool_apply),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
