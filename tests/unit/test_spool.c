/* Unit tests for spool.c and the envelope record codec. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "envelope.h"
#include "err.h"
#include "spool.h"

#include <errno.h>
#include <ftw.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEED 20240601u

static char tmproot[4096];

static int rm_one(const char *p, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void rm_rf(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory; the spool lives in <dir>/spool (not yet created). */
static int setup_dir(void **state)
{
	const char *base = getenv("MTA_TEST_TMPDIR");
	char *d = malloc(4096);
	snprintf(d, 4096, "%s/spooltest.XXXXXX", base ? base : "/tmp");
	if (mkdtemp(d) == NULL) {
		free(d);
		return -1;
	}
	*state = d;
	return 0;
}

static int teardown_dir(void **state)
{
	rm_rf(*state);
	free(*state);
	return 0;
}

static const char *spool_dir(void **state)
{
	snprintf(tmproot, sizeof(tmproot), "%s/spool", (char *)*state);
	return tmproot;
}

static struct mta_spool *open_spool(const char *dir, uint64_t max,
				    bool ro)
{
	struct mta_spool_opts o = {.dir = dir, .max_size = max, .readonly = ro};
	struct mta_spool *sp = NULL;
	assert_int_equal(mta_spool_open(&o, &sp), 0);
	assert_non_null(sp);
	return sp;
}

/* Every field set, one recipient with all optional fields NULL. */
static void make_env(struct mta_envelope *e, unsigned i, int64_t arrival)
{
	char s[128];
	mta_envelope_init(e);
	snprintf(s, sizeof(s), "sender%u@example.org", i);
	assert_int_equal(mta_envelope_set_str(&e->sender, s), 0);
	assert_int_equal(mta_envelope_set_str(&e->envid, "ENV+2Bid"), 0);
	assert_int_equal(mta_envelope_set_str(&e->ret_raw, "HDRS"), 0);
	e->ret = MTA_RET_HDRS;
	e->body = MTA_BODY_8BITMIME;
	e->smtputf8 = true;
	e->declared_size = 123456789012ull;
	assert_int_equal(mta_envelope_set_str(&e->helo, "client.example"), 0);
	assert_int_equal(mta_envelope_set_str(&e->client_addr, "2001:db8::1"),
			 0);
	assert_int_equal(mta_envelope_set_str(&e->tls,
					      "TLSv1.3 TLS_AES_256_GCM_SHA384"),
			 0);
	e->arrival_us = arrival;
	struct mta_rcpt *r = mta_envelope_add_rcpt(
		e, "Bob@Example.COM", "rfc822;bob@example.com",
		"SUCCESS,FAILURE", MTA_NOTIFY_SUCCESS | MTA_NOTIFY_FAILURE);
	assert_non_null(r);
	r->state = MTA_RCPT_DEFERRED;
	r->attempts = 7;
	r->next_attempt_us = -5; /* any value survives */
	assert_int_equal(mta_envelope_set_str(&r->last_response,
					      "451 4.7.1 try \"later\"\r\n"),
			 0);
	assert_int_equal(mta_envelope_set_str(&r->relay,
					      "mx.example.com[192.0.2.1]:25"),
			 0);
	assert_int_equal(mta_envelope_set_str(&r->evidence,
					      "tls=TLS1.3 auth=dane 3 1 1"),
			 0);
	r = mta_envelope_add_rcpt(e, "carol@other.org", NULL, NULL, 0);
	assert_non_null(r);
	r = mta_envelope_add_rcpt(e, "dave@example.com", NULL, "NEVER",
				  MTA_NOTIFY_NEVER);
	assert_non_null(r);
	r->state = MTA_RCPT_SENT;
	r->attempts = UINT32_MAX;
	r->next_attempt_us = INT64_MAX;
}

static void assert_str_eq_null(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void assert_env_equal(const struct mta_envelope *a,
			     const struct mta_envelope *b)
{
	assert_str_eq_null(a->sender, b->sender);
	assert_str_eq_null(a->envid, b->envid);
	assert_str_eq_null(a->ret_raw, b->ret_raw);
	assert_int_equal(a->ret, b->ret);
	assert_int_equal(a->body, b->body);
	assert_int_equal(a->smtputf8, b->smtputf8);
	assert_int_equal(a->declared_size, b->declared_size);
	assert_str_eq_null(a->helo, b->helo);
	assert_str_eq_null(a->client_addr, b->client_addr);
	assert_str_eq_null(a->tls, b->tls);
	assert_int_equal(a->arrival_us, b->arrival_us);
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->nrcpt, b->nrcpt);
	for (size_t i = 0; i < a->nrcpt; i++) {
		const struct mta_rcpt *x = &a->rcpts[i], *y = &b->rcpts[i];
		assert_str_eq_null(x->addr, y->addr);
		assert_str_eq_null(x->orcpt, y->orcpt);
		assert_str_eq_null(x->notify_raw, y->notify_raw);
		assert_int_equal(x->notify, y->notify);
		assert_int_equal(x->state, y->state);
		assert_int_equal(x->attempts, y->attempts);
		assert_int_equal(x->next_attempt_us, y->next_attempt_us);
		assert_str_eq_null(x->last_response, y->last_response);
		assert_str_eq_null(x->relay, y->relay);
		assert_str_eq_null(x->evidence, y->evidence);
	}
}

static uint8_t pattern_byte(uint64_t i, unsigned salt)
{
	return (uint8_t)((i * 2654435761u + salt) >> 7);
}

static void fill_body(struct mta_body *b, uint64_t len, unsigned salt)
{
	uint8_t buf[3000]; /* not a divisor of anything relevant */
	uint64_t off = 0;
	while (off < len) {
		size_t n = len - off < sizeof(buf) ? (size_t)(len - off)
						   : sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = pattern_byte(off + i, salt);
		assert_int_equal(mta_body_append(b, buf, n), 0);
		off += n;
	}
	assert_int_equal(b->len, len);
}

/* ---- queue ids ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void test_qid(void **state)
{
	(void)state;
	char q[MTA_QID_LEN + 1], prev[MTA_QID_LEN + 1];
	mta_qid_make(q, 0, 0);
	assert_string_equal(q, "0000000000000000");
	mta_qid_make(q, 1, 31);
	assert_string_equal(q, "000000000010000Z");
	mta_qid_make(q, 32, 32);
	assert_string_equal(q, "0000000001000010");
	mta_qid_make(q, 1700000000000000ull, 12345);
	assert_int_equal(strlen(q), MTA_QID_LEN);
	assert_string_equal(q, "1GA4GC1WG0000C1S" /* checked with python */);

	/* string order = (usec, seq) order, over random times */
	printf("# seed %u\n", SEED);
	srandom(SEED);
	enum { N = 2000 };
	uint64_t t[N];
	for (int i = 0; i < N; i++)
		t[i] = ((uint64_t)random() << 20 ^ (uint64_t)random()) &
		       ((1ull << 55) - 1);
	qsort(t, N, sizeof(t[0]), cmp_u64);
	mta_qid_make(prev, t[0], 0);
	for (int i = 1; i < N; i++) {
		mta_qid_make(q, t[i], (uint32_t)random() & 0x1ffffff);
		for (int k = 0; k < MTA_QID_LEN; k++)
			assert_non_null(strchr(
				"0123456789ABCDEFGHJKMNPQRSTVWXYZ", q[k]));
		if (t[i] == t[i - 1])
			continue;
		assert_true(strcmp(prev, q) < 0);
		memcpy(prev, q, sizeof(q));
	}
	/* same time: sequence order */
	mta_qid_make(prev, 99, 5);
	mta_qid_make(q, 99, 6);
	assert_true(strcmp(prev, q) < 0);
}

/* ---- round trip through close/reopen ---- */

struct collect {
	char qids[16][MTA_QID_LEN + 1];
	int n;
};

static int collect_cb(void *ud, const struct mta_spool_entry *e)
{
	struct collect *c = ud;
	assert_true(c->n < 16);
	memcpy(c->qids[c->n++], e->qid, MTA_QID_LEN + 1);
	return 0;
}

static void check_body(struct mta_spool *sp, const char *qid, uint64_t len,
		       unsigned salt, size_t piece)
{
	uint8_t *buf = malloc(piece + 1);
	uint64_t off = 0;
	for (;;) {
		size_t got = 99;
		assert_int_equal(
			mta_spool_read_body(sp, qid, off, buf, piece, &got), 0);
		if (got == 0)
			break;
		assert_true(off + got <= len);
		for (size_t i = 0; i < got; i++)
			if (buf[i] != pattern_byte(off + i, salt))
				fail_msg("body %s differs at %llu", qid,
					 (unsigned long long)(off + i));
		off += got;
	}
	assert_int_equal(off, len);
	free(buf);
}

/* Bytes per body chunk: LMDB's page (the system page) less its 16-byte
 * header (spool.h, "Body chunks"). */
static size_t chunk_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE) - 16;
}

static void test_roundtrip(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 64ull << 20, false);
	size_t chunk = chunk_size();
	assert_true(chunk >= 4080);
	const uint64_t sizes[] = {0, 1, chunk, chunk + 1, 1u << 20,
				  3 * chunk - 1};
	enum { NS = sizeof(sizes) / sizeof(sizes[0]) };
	char qids[NS][MTA_QID_LEN + 1];
	struct mta_envelope envs[NS];
	struct mta_spool_txn *t;

	assert_int_equal(mta_spool_begin(sp, &t), 0);
	for (unsigned i = 0; i < NS; i++) {
		struct mta_body b;
		mta_body_init(&b, mta_spool_tmpdir(sp), 64 * 1024);
		fill_body(&b, sizes[i], i);
		if (sizes[i] > 64 * 1024)
			assert_true(b.fd >= 0); /* spilled to a temp file */
		else
			assert_int_equal(b.fd, -1);
		mta_qid_make(qids[i], 1700000000000000ull + i, i);
		make_env(&envs[i], i, 1700000000000000ll + i);
		envs[i].size = 424242; /* put_message sets the real size */
		assert_int_equal(mta_spool_put_message(t, qids[i], &envs[i], &b),
				 0);
		envs[i].size = sizes[i];
		mta_body_free(&b);
	}
	/* the same qid twice fails, and only that message */
	assert_int_equal(mta_spool_put_message(t, qids[0], &envs[0], NULL),
			 -EEXIST);
	assert_int_equal(mta_spool_commit(t), 0);
	mta_spool_close(sp);

	for (int ro = 0; ro < 2; ro++) {
		sp = open_spool(dir, 64ull << 20, ro);
		uint64_t n = 0;
		assert_int_equal(mta_spool_stat(sp, &n), 0);
		assert_int_equal(n, NS);
		struct collect c = {.n = 0};
		assert_int_equal(mta_spool_foreach(sp, collect_cb, &c), 0);
		assert_int_equal(c.n, NS);
		for (unsigned i = 0; i < NS; i++) {
			struct mta_envelope got;
			assert_string_equal(c.qids[i], qids[i]);
			assert_int_equal(mta_spool_get(sp, qids[i], &got), 0);
			assert_env_equal(&got, &envs[i]);
			mta_envelope_free(&got);
			check_body(sp, qids[i], sizes[i], i, 1000);
			check_body(sp, qids[i], sizes[i], i, chunk);
			check_body(sp, qids[i], sizes[i], i, 1u << 21);
			/* past the end */
			size_t g = 5;
			uint8_t x;
			assert_int_equal(mta_spool_read_body(sp, qids[i],
							     sizes[i] + 7, &x,
							     1, &g),
					 0);
			assert_int_equal(g, 0);
		}
		struct mta_envelope none;
		assert_int_equal(mta_spool_get(sp, "0000000000000000", &none),
				 MTA_ENOTFOUND);
		mta_spool_close(sp);
	}
	for (unsigned i = 0; i < NS; i++)
		mta_envelope_free(&envs[i]);
}

/* ---- raw LMDB helpers for checks behind the spool's back ---- */

static MDB_env *raw_open(const char *dir)
{
	MDB_env *env;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
	return env;
}

static size_t raw_count(MDB_env *env, const char *db)
{
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_stat st;
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
	assert_int_equal(mdb_stat(txn, dbi, &st), 0);
	mdb_txn_abort(txn);
	return st.ms_entries;
}

static size_t raw_overflow(MDB_env *env, const char *db)
{
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_stat st;
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
	assert_int_equal(mdb_stat(txn, dbi, &st), 0);
	mdb_txn_abort(txn);
	return st.ms_overflow_pages;
}

static void test_schema(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 8ull << 20, false);
	mta_spool_close(sp);

	MDB_env *env = raw_open(dir);
	MDB_txn *txn;
	MDB_dbi meta;
	uint8_t v99[4] = {0, 0, 0, 99};
	MDB_val k = {6, "schema"}, v = {4, v99};
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
	assert_int_equal(mdb_get(txn, meta, &k, &v), 0);
	assert_int_equal(v.mv_size, 4);
	assert_memory_equal(v.mv_data, "\0\0\0\1", 4);
	v.mv_size = 4;
	v.mv_data = v99;
	assert_int_equal(mdb_put(txn, meta, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	MDB_envinfo before, after;
	assert_int_equal(mdb_env_info(env, &before), 0);
	mdb_env_close(env);

	struct mta_spool_opts o = {.dir = dir, .max_size = 8ull << 20};
	assert_int_equal(mta_spool_open(&o, &sp), MTA_ESCHEMA);
	o.readonly = true;
	assert_int_equal(mta_spool_open(&o, &sp), MTA_ESCHEMA);

	env = raw_open(dir);
	assert_int_equal(mdb_env_info(env, &after), 0);
	assert_int_equal(before.me_last_txnid, after.me_last_txnid);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
	assert_int_equal(mdb_get(txn, meta, &k, &v), 0);
	assert_int_equal(v.mv_size, 4);
	assert_memory_equal(v.mv_data, v99, 4);
	mdb_txn_abort(txn);
	mdb_env_close(env);

	/* readonly on a missing spool */
	char missing[4200];
	snprintf(missing, sizeof(missing), "%s/nope", (char *)*state);
	o.dir = missing;
	assert_int_equal(mta_spool_open(&o, &sp), -ENOENT);
	assert_int_equal(access(missing, F_OK), -1);
}

static void test_mapfull(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 1u << 20, false);
	struct mta_spool_txn *t;
	struct mta_envelope big, small;
	struct mta_body bb, sb;
	char qbig[MTA_QID_LEN + 1], qsmall[MTA_QID_LEN + 1];

	mta_body_init(&bb, mta_spool_tmpdir(sp), 1u << 20);
	fill_body(&bb, 4u << 20, 1);
	mta_body_init(&sb, mta_spool_tmpdir(sp), 1u << 20);
	fill_body(&sb, 5000, 2);
	make_env(&big, 1, 1000);
	make_env(&small, 2, 2000);
	mta_qid_make(qbig, 1000, 1);
	mta_qid_make(qsmall, 2000, 2);

	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_put_message(t, qbig, &big, &bb),
			 MTA_EMAPFULL);
	assert_int_equal(mta_spool_put_message(t, qsmall, &small, &sb), 0);
	assert_int_equal(mta_spool_commit(t), 0);
	mta_spool_close(sp);

	sp = open_spool(dir, 1u << 20, false);
	struct collect c = {.n = 0};
	assert_int_equal(mta_spool_foreach(sp, collect_cb, &c), 0);
	assert_int_equal(c.n, 1);
	assert_string_equal(c.qids[0], qsmall);
	struct mta_envelope got;
	assert_int_equal(mta_spool_get(sp, qbig, &got), MTA_ENOTFOUND);
	size_t g;
	uint8_t x;
	assert_int_equal(mta_spool_read_body(sp, qbig, 0, &x, 1, &g),
			 MTA_ENOTFOUND);
	check_body(sp, qsmall, 5000, 2, 777);
	size_t chunk = chunk_size();
	mta_spool_close(sp);

	MDB_env *env = raw_open(dir);
	assert_int_equal(raw_count(env, "messages"), 1);
	assert_int_equal(raw_count(env, "bodies"), (5000 + chunk - 1) / chunk);
	assert_int_equal(raw_count(env, "due"), 1);
	assert_int_equal(raw_count(env, "dest"), 2); /* example.com, other.org */
	/* a full chunk takes exactly one overflow page (header claim) */
	assert_int_equal(raw_overflow(env, "bodies"), 5000 / chunk);
	mdb_env_close(env);

	mta_body_free(&bb);
	mta_body_free(&sb);
	mta_envelope_free(&big);
	mta_envelope_free(&small);
}

static void test_abort(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 8u << 20, false);
	struct mta_spool_txn *t;
	struct mta_envelope e;
	struct mta_body b;
	char q[MTA_QID_LEN + 1];
	uint64_t n = 9;

	mta_body_init(&b, mta_spool_tmpdir(sp), 4096);
	fill_body(&b, 20000, 3);
	make_env(&e, 3, 3000);
	mta_qid_make(q, 3000, 3);
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_put_message(t, q, &e, &b), 0);
	mta_spool_abort(t);
	assert_int_equal(mta_spool_stat(sp, &n), 0);
	assert_int_equal(n, 0);
	mta_spool_close(sp);

	MDB_env *env = raw_open(dir);
	assert_int_equal(raw_count(env, "messages"), 0);
	assert_int_equal(raw_count(env, "bodies"), 0);
	assert_int_equal(raw_count(env, "due"), 0);
	assert_int_equal(raw_count(env, "dest"), 0);
	mdb_env_close(env);
	mta_body_free(&b);
	mta_envelope_free(&e);
}

static void test_indexes(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 8u << 20, false);
	struct mta_spool_txn *t;
	struct mta_envelope e;
	char q[MTA_QID_LEN + 1];
	const int64_t arrival = 1700000000123456ll;

	make_env(&e, 4, arrival);
	/* a second upper-case spelling and a local-only address */
	assert_non_null(mta_envelope_add_rcpt(&e, "x@EXAMPLE.com", NULL, NULL,
					      0));
	assert_non_null(mta_envelope_add_rcpt(&e, "postmaster", NULL, NULL, 0));
	mta_qid_make(q, (uint64_t)arrival, 4);
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_put_message(t, q, &e, NULL), 0);
	assert_int_equal(mta_spool_commit(t), 0);
	mta_spool_close(sp);

	MDB_env *env = raw_open(dir);
	MDB_txn *txn;
	MDB_dbi due, dest;
	MDB_cursor *cur;
	MDB_val k, v;
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "due", 0, &due), 0);
	assert_int_equal(mdb_dbi_open(txn, "dest", 0, &dest), 0);

	uint8_t dk[8 + MTA_QID_LEN];
	for (int i = 0; i < 8; i++)
		dk[i] = (uint8_t)((uint64_t)arrival >> (56 - 8 * i));
	memcpy(dk + 8, q, MTA_QID_LEN);
	k.mv_size = sizeof(dk);
	k.mv_data = dk;
	assert_int_equal(mdb_get(txn, due, &k, &v), 0);
	assert_int_equal(v.mv_size, 0);

	assert_int_equal(mdb_cursor_open(txn, dest, &cur), 0);
	const char *want[] = {"example.com", "other.org"};
	int i = 0;
	while (mdb_cursor_get(cur, &k, &v, i ? MDB_NEXT : MDB_FIRST) == 0) {
		assert_true(i < 2);
		assert_int_equal(k.mv_size, strlen(want[i]));
		assert_memory_equal(k.mv_data, want[i], k.mv_size);
		assert_int_equal(v.mv_size, MTA_QID_LEN);
		assert_memory_equal(v.mv_data, q, MTA_QID_LEN);
		i++;
	}
	assert_int_equal(i, 2);
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	mta_envelope_free(&e);
}

/* ---- record codec ---- */

static void test_decode_bad(void **state)
{
	(void)state;
	struct mta_envelope e, got;
	struct mta_buf b = {0};

	make_env(&e, 5, 5000);
	e.size = 77;
	assert_int_equal(mta_envelope_encode(&e, &b), 0);
	assert_int_equal(mta_envelope_decode(b.data, b.len, &got), 0);
	assert_env_equal(&got, &e);
	mta_envelope_free(&got);

	/* every truncation, with the header length left or patched */
	for (size_t n = 0; n < b.len; n++) {
		assert_int_equal(mta_envelope_decode(b.data, n, &got),
				 MTA_ECORRUPT);
		if (n < 10)
			continue;
		uint8_t *c = malloc(n);
		memcpy(c, b.data, n);
		c[6] = (uint8_t)(n >> 24);
		c[7] = (uint8_t)(n >> 16);
		c[8] = (uint8_t)(n >> 8);
		c[9] = (uint8_t)n;
		assert_int_equal(mta_envelope_decode(c, n, &got), MTA_ECORRUPT);
		free(c);
	}
	uint8_t *c = malloc(b.len + 1);
	/* bad magic */
	memcpy(c, b.data, b.len);
	c[0] = 'X';
	assert_int_equal(mta_envelope_decode(c, b.len, &got), MTA_ECORRUPT);
	/* other versions */
	memcpy(c, b.data, b.len);
	c[5] = 5; /* 4 is current (u8 tlsreq) */
	assert_int_equal(mta_envelope_decode(c, b.len, &got), MTA_ESCHEMA);
	c[4] = 1;
	c[5] = 1;
	assert_int_equal(mta_envelope_decode(c, b.len, &got), MTA_ESCHEMA);
	/* a trailing byte inside the stated length */
	memcpy(c, b.data, b.len);
	c[b.len] = 0;
	c[9]++;
	assert_int_equal(mta_envelope_decode(c, b.len + 1, &got), MTA_ECORRUPT);
	/* a string length running past the end: sender is at 10 */
	memcpy(c, b.data, b.len);
	c[10] = 0x7f;
	assert_int_equal(mta_envelope_decode(c, b.len, &got), MTA_ECORRUPT);
	/* a NUL inside the sender, a NULL sender */
	memcpy(c, b.data, b.len);
	c[15] = 0;
	assert_int_equal(mta_envelope_decode(c, b.len, &got), MTA_ECORRUPT);
	memcpy(c, b.data, b.len);
	memset(c + 10, 0xff, 4);
	assert_int_equal(mta_envelope_decode(c, b.len, &got), MTA_ECORRUPT);
	free(c);

	/* a huge recipient count is refused before any allocation */
	struct mta_envelope small;
	struct mta_buf sb = {0};
	mta_envelope_init(&small);
	assert_int_equal(mta_envelope_set_str(&small.sender, ""), 0);
	assert_int_equal(mta_envelope_encode(&small, &sb), 0);
	memset(sb.data + sb.len - 4, 0xff, 4);
	assert_int_equal(mta_envelope_decode(sb.data, sb.len, &got),
			 MTA_ECORRUPT);
	mta_buf_free(&sb);
	mta_envelope_free(&small);

	/* random garbling: never a crash (ASan) nor a wrong code */
	printf("# seed %u\n", SEED);
	srandom(SEED);
	c = malloc(b.len);
	for (int round = 0; round < 20000; round++) {
		memcpy(c, b.data, b.len);
		int flips = 1 + (int)(random() % 4);
		for (int f = 0; f < flips; f++)
			c[(size_t)random() % b.len] ^=
				(uint8_t)(1u << (random() % 8));
		int rc = mta_envelope_decode(c, b.len, &got);
		assert_true(rc == 0 || rc == MTA_ECORRUPT || rc == MTA_ESCHEMA);
		if (rc == 0)
			mta_envelope_free(&got);
	}
	free(c);
	mta_buf_free(&b);
	mta_envelope_free(&e);
}

/* A stored record that fails to decode is skipped and reported. */
static void test_foreach_corrupt(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 8u << 20, false);
	struct mta_spool_txn *t;
	struct mta_envelope e;
	char q[3][MTA_QID_LEN + 1];

	assert_int_equal(mta_spool_begin(sp, &t), 0);
	for (int i = 0; i < 3; i++) {
		make_env(&e, (unsigned)i, 100 + i);
		mta_qid_make(q[i], 100 + (uint64_t)i, 0);
		assert_int_equal(mta_spool_put_message(t, q[i], &e, NULL), 0);
		mta_envelope_free(&e);
	}
	assert_int_equal(mta_spool_commit(t), 0);
	mta_spool_close(sp);

	MDB_env *env = raw_open(dir);
	MDB_txn *txn;
	MDB_dbi msgs;
	MDB_val k = {MTA_QID_LEN, q[1]}, v = {5, "MTAE\0"};
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "messages", 0, &msgs), 0);
	assert_int_equal(mdb_put(txn, msgs, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);

	sp = open_spool(dir, 8u << 20, true);
	assert_false(mta_spool_corrupt(sp));
	struct collect c = {.n = 0};
	assert_int_equal(mta_spool_foreach(sp, collect_cb, &c), MTA_ECORRUPT);
	assert_true(mta_spool_corrupt(sp)); /* noted for the health check */
	assert_int_equal(c.n, 2);
	assert_string_equal(c.qids[0], q[0]);
	assert_string_equal(c.qids[1], q[2]);
	assert_int_equal(mta_spool_get(sp, q[1], &e), MTA_ECORRUPT);
	mta_spool_close(sp);
}

static void test_body_spill(void **state)
{
	struct mta_body b;
	uint8_t buf[100];
	size_t got;

	mta_body_init(&b, *state, 10);
	assert_int_equal(mta_body_append(&b, "0123456789", 10), 0);
	assert_int_equal(b.fd, -1);
	assert_int_equal(mta_body_append(&b, "ab", 2), 0);
	assert_true(b.fd >= 0);
	assert_int_equal(b.mem.len, 0);
	assert_int_equal(mta_body_pread(&b, 8, buf, sizeof(buf), &got), 0);
	assert_int_equal(got, 4);
	assert_memory_equal(buf, "89ab", 4);
	assert_int_equal(mta_body_pread(&b, 12, buf, sizeof(buf), &got), 0);
	assert_int_equal(got, 0);
	mta_body_free(&b);
	/* the temp file is unlinked: the directory is empty */
	char cmd[4200];
	snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A %s)\"", (char *)*state);
	assert_int_equal(system(cmd), 0);
}

/* ---- delivery-side updates: due scan, state update, finish + DSN ---- */

struct due_seen {
	char qids[8][MTA_QID_LEN + 1];
	int64_t due[8];
	int n;
};

static int due_cb(void *ud, const char *qid, int64_t due_us)
{
	struct due_seen *d = ud;
	assert_true(d->n < 8);
	memcpy(d->qids[d->n], qid, MTA_QID_LEN + 1);
	d->due[d->n++] = due_us;
	return 0;
}

static void test_update_and_due(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 8u << 20, false);
	struct mta_spool_txn *t;
	struct mta_envelope a, b, dsn, got;
	struct mta_body body;
	char qa[MTA_QID_LEN + 1], qb[MTA_QID_LEN + 1], qd[MTA_QID_LEN + 1];
	struct due_seen seen = {0};
	int64_t next;

	make_env(&a, 1, 1000);
	make_env(&b, 2, 2000);
	mta_qid_make(qa, 1000, 1);
	mta_qid_make(qb, 2000, 2);
	mta_body_init(&body, mta_spool_tmpdir(sp), 1 << 20);
	fill_body(&body, 10000, 3);
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_put_message(t, qa, &a, &body), 0);
	assert_int_equal(mta_spool_put_message(t, qb, &b, &body), 0);
	assert_int_equal(mta_spool_commit(t), 0);

	/* only a is due at 1500; b's time is reported as the next one */
	assert_int_equal(mta_spool_due(sp, -1, NULL, 1500, 100, due_cb, &seen, &next), 0);
	assert_int_equal(seen.n, 1);
	assert_string_equal(seen.qids[0], qa);
	assert_int_equal(seen.due[0], 1000);
	assert_int_equal(next, 2000);

	/* a deferred to 5000: state stored, size kept, due entry moved */
	a.rcpts[1].state = MTA_RCPT_DEFERRED;
	a.rcpts[1].attempts = 1;
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_update_message(t, qa, &a, 1000, 5000, NULL,
						  NULL, NULL),
			 0);
	assert_int_equal(mta_spool_commit(t), 0);
	seen.n = 0;
	assert_int_equal(mta_spool_due(sp, -1, NULL, 4000, 100, due_cb, &seen, &next), 0);
	assert_int_equal(seen.n, 1);
	assert_string_equal(seen.qids[0], qb);
	assert_int_equal(next, 5000);
	mta_envelope_init(&got);
	assert_int_equal(mta_spool_get(sp, qa, &got), 0);
	assert_int_equal(got.rcpts[1].state, MTA_RCPT_DEFERRED);
	assert_int_equal(got.size, 10000);
	mta_envelope_free(&got);

	/* b finished, with a DSN stored in the same transaction */
	mta_envelope_init(&dsn);
	assert_int_equal(mta_envelope_set_str(&dsn.sender, ""), 0);
	assert_non_null(mta_envelope_add_rcpt(&dsn, "sender2@example.org",
					      NULL, NULL, 0));
	dsn.arrival_us = 3000;
	mta_qid_make(qd, 3000, 3);
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_update_message(t, qb, &b, 2000, -1, qd,
						  &dsn, &body),
			 0);
	assert_int_equal(mta_spool_commit(t), 0);
	mta_envelope_init(&got);
	assert_int_equal(mta_spool_get(sp, qb, &got), MTA_ENOTFOUND);
	size_t n = 1;
	char buf[16];
	assert_int_equal(mta_spool_read_body(sp, qb, 0, buf, sizeof(buf), &n),
			 MTA_ENOTFOUND);
	assert_int_equal(mta_spool_get(sp, qd, &got), 0);
	assert_string_equal(got.sender, "");
	mta_envelope_free(&got);
	check_body(sp, qd, 10000, 3, 4096);
	seen.n = 0;
	assert_int_equal(mta_spool_due(sp, -1, NULL, 10000, 100, due_cb, &seen, &next),
			 0);
	assert_int_equal(seen.n, 2); /* the DSN at 3000, a at 5000 */
	assert_string_equal(seen.qids[0], qd);
	assert_string_equal(seen.qids[1], qa);
	assert_int_equal(next, -1);
	/* resuming after the DSN's entry sees only a */
	seen.n = 0;
	assert_int_equal(mta_spool_due(sp, 3000, qd, 10000, 100, due_cb, &seen,
				       &next),
			 0);
	assert_int_equal(seen.n, 1);
	assert_string_equal(seen.qids[0], qa);
	/* updating a message that is gone fails without side effects */
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_update_message(t, qb, &b, 2000, 9000, NULL,
						  NULL, NULL),
			 MTA_ENOTFOUND);
	mta_spool_abort(t);

	uint64_t count = 0;
	assert_int_equal(mta_spool_stat(sp, &count), 0);
	assert_int_equal(count, 2);
	/* running totals: a (3 recipients) and the DSN (1), 10000 B each;
	 * b's removal was subtracted */
	uint64_t tm = 0, tr = 0, tb = 0;
	assert_int_equal(mta_spool_totals(sp, &tm, &tr, &tb), 0);
	assert_int_equal(tm, 2);
	assert_int_equal(tr, 4);
	assert_int_equal(tb, 20000);
	mta_body_free(&body);
	mta_envelope_free(&a);
	mta_envelope_free(&b);
	mta_envelope_free(&dsn);
	mta_spool_close(sp);
	MDB_env *env = raw_open(dir);
	assert_int_equal(raw_count(env, "dest"), 3); /* a: 2 domains, dsn: 1 */
	mdb_env_close(env);
}

/* Opens dir expecting failure; returns why (static buffer). */
static const char *open_fails(const char *dir, bool ro, int want)
{
	static char why[1024];
	struct mta_spool_opts o = {.dir = dir, .max_size = 8u << 20,
				   .readonly = ro, .why = why,
				   .whylen = sizeof(why)};
	struct mta_spool *sp = NULL;

	why[0] = '\0';
	assert_int_equal(mta_spool_open(&o, &sp), want);
	assert_null(sp);
	return why;
}

static off_t file_size(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

static void copy_file(const char *from, const char *to)
{
	char buf[65536];
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	size_t n;
	assert_non_null(in);
	assert_non_null(out);
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	fclose(in);
	assert_int_equal(fclose(out), 0);
}

/* Issue 9 item 3: a truncated, emptied or overwritten data.mdb is refused
 * before it is mapped (no SIGBUS), with a reason; nothing is re-created;
 * the intact file opens again with every message. */
/* The race of issue 12: a flush committed while an attempt was in flight
 * (scanned at its old due time) leaves, once that attempt finishes the
 * message, a due entry whose message is gone; UNDUE drops exactly that
 * entry and never touches a message that exists. */
static void test_undue_stale_entry(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 8u << 20, false);
	struct mta_spool_txn *t;
	struct mta_envelope a, b, got;
	char qa[MTA_QID_LEN + 1], qb[MTA_QID_LEN + 1];
	struct due_seen seen = {0};
	int64_t next;

	make_env(&a, 1, 1000);
	make_env(&b, 2, 2000);
	mta_qid_make(qa, 1000, 1);
	mta_qid_make(qb, 2000, 2);
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_put_message(t, qa, &a, NULL), 0);
	assert_int_equal(mta_spool_put_message(t, qb, &b, NULL), 0);
	assert_int_equal(mta_spool_commit(t), 0);
	/* flush a at 1500 while its attempt (due key 1000) is in flight */
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_admin(t, MTA_SPOOL_FLUSH, qa, 1500, NULL,
					 NULL, NULL),
			 0);
	/* the attempt finishes a with the key it was loaded with */
	assert_int_equal(mta_spool_update_message(t, qa, &a, 1000, -1, NULL,
						  NULL, NULL),
			 0);
	assert_int_equal(mta_spool_commit(t), 0);
	assert_int_equal(mta_spool_due(sp, -1, NULL, 10000, 100, due_cb, &seen,
				       &next),
			 0);
	assert_int_equal(seen.n, 2); /* the stale entry of a, and b */
	assert_string_equal(seen.qids[0], qa);
	assert_int_equal(seen.due[0], 1500);
	mta_envelope_init(&got);
	assert_int_equal(mta_spool_get(sp, qa, &got), MTA_ENOTFOUND);
	/* UNDUE: a's entry goes; b (present) keeps its own */
	assert_int_equal(mta_spool_begin(sp, &t), 0);
	assert_int_equal(mta_spool_admin(t, MTA_SPOOL_UNDUE, qa, 1500, NULL,
					 NULL, NULL),
			 0);
	assert_int_equal(mta_spool_admin(t, MTA_SPOOL_UNDUE, qb, 2000, NULL,
					 NULL, NULL),
			 0);
	assert_int_equal(mta_spool_commit(t), 0);
	seen.n = 0;
	assert_int_equal(mta_spool_due(sp, -1, NULL, 10000, 100, due_cb, &seen,
				       &next),
			 0);
	assert_int_equal(seen.n, 1);
	assert_string_equal(seen.qids[0], qb);
	assert_int_equal(seen.due[0], 2000);
	mta_envelope_free(&a);
	mta_envelope_free(&b);
	mta_spool_close(sp);
}

static void test_damaged_file(void **state)
{
	const char *dir = spool_dir(state);
	struct mta_spool *sp = open_spool(dir, 8u << 20, false);
	struct mta_spool_txn *t;
	struct mta_envelope e;
	struct mta_body b;
	char q[MTA_QID_LEN + 1], data[4200], keep[4300];
	const char *why;

	assert_int_equal(mta_spool_begin(sp, &t), 0);
	mta_body_init(&b, mta_spool_tmpdir(sp), 1u << 20);
	fill_body(&b, 100000, 3);
	for (int i = 0; i < 20; i++) {
		make_env(&e, (unsigned)i, 100 + i);
		mta_qid_make(q, 100 + (uint64_t)i, 0);
		assert_int_equal(mta_spool_put_message(t, q, &e, &b), 0);
		mta_envelope_free(&e);
	}
	mta_body_free(&b);
	assert_int_equal(mta_spool_commit(t), 0);
	assert_false(mta_spool_corrupt(sp));
	mta_spool_close(sp);
	snprintf(data, sizeof(data), "%s/data.mdb", dir);
	snprintf(keep, sizeof(keep), "%s/data.keep", dir);
	copy_file(data, keep);
	off_t full = file_size(data);
	assert_true(full > 40960 * 2);

	/* (a)+(d): truncated -> "truncated", not a schema mismatch */
	assert_int_equal(truncate(data, 40960), 0);
	why = open_fails(dir, false, MTA_ECORRUPT);
	assert_non_null(strstr(why, "truncated"));
	assert_non_null(strstr(why, "backup"));
	why = open_fails(dir, true, MTA_ECORRUPT);
	assert_non_null(strstr(why, "truncated"));
	assert_int_equal(file_size(data), 40960);

	/* (b): emptied -> refused, never re-created as a new spool */
	assert_int_equal(truncate(data, 0), 0);
	why = open_fails(dir, false, MTA_ECORRUPT);
	assert_non_null(strstr(why, "empty"));
	why = open_fails(dir, true, MTA_ECORRUPT);
	assert_non_null(strstr(why, "empty"));
	assert_int_equal(file_size(data), 0);

	/* shorter than one meta page */
	assert_int_equal(truncate(data, 100), 0);
	why = open_fails(dir, false, MTA_ECORRUPT);
	assert_non_null(strstr(why, "too short"));

	/* meta page 0 overwritten */
	copy_file(keep, data);
	FILE *f = fopen(data, "r+b");
	assert_non_null(f);
	assert_int_equal(fwrite("garbagegarbagegarbagegarbage", 1, 28, f), 28);
	assert_int_equal(fclose(f), 0);
	why = open_fails(dir, false, MTA_ECORRUPT);
	assert_non_null(strstr(why, "meta page 0"));
	assert_int_equal(file_size(data), full);

	/* the intact file is still a good spool with all its messages */
	copy_file(keep, data);
	sp = open_spool(dir, 8u << 20, false);
	uint64_t n = 0;
	assert_int_equal(mta_spool_stat(sp, &n), 0);
	assert_int_equal(n, 20);
	mta_spool_close(sp);
	unlink(keep);
}

/* Issue 9 item 2: one holder of <dir>/mtad.lock; the second learns the
 * holder's PID; the lock ends with its descriptor. */
static void test_lock(void **state)
{
	const char *dir = spool_dir(state);
	int fd1 = -1, fd2 = -1;
	long holder = -1;

	assert_int_equal(mta_spool_lock(dir, &fd1, &holder), 0);
	assert_true(fd1 >= 0);
	/* flock locks belong to the open file: a second open conflicts */
	assert_int_equal(mta_spool_lock(dir, &fd2, &holder), MTA_EAGAIN);
	assert_int_equal(fd2, -1);
	assert_int_equal(holder, (long)getpid());
	/* the tools still open the spool beside the lock holder */
	struct mta_spool *sp = open_spool(dir, 8u << 20, false);
	mta_spool_close(sp);
	close(fd1);
	assert_int_equal(mta_spool_lock(dir, &fd2, &holder), 0);
	close(fd2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_qid),
		cmocka_unit_test_setup_teardown(test_update_and_due, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_roundtrip, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_schema, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_mapfull, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_abort, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_indexes, setup_dir,
						teardown_dir),
		cmocka_unit_test(test_decode_bad),
		cmocka_unit_test_setup_teardown(test_foreach_corrupt, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_body_spill, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_undue_stale_entry,
						setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_damaged_file, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_lock, setup_dir,
						teardown_dir),
	};
	alarm(100);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
