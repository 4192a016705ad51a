/* Unit tests of the DANE TLSA matcher (libmta/dane.c), named after the
 * conformance cases (shared/reference/conformance.md §2.5-2.7).
 * Certificates are made at run time with GnuTLS (ECDSA P-256 keys from
 * the GnuTLS RNG; nothing is read from disk).  Every date is relative to
 * the fixed clock NOW passed to the matcher, so the host clock plays no
 * part. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "dane.h"
#include "err.h"

#include <errno.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>

/* The outcomes' names, for the test output (the library logs reasons,
 * not these names). */
static const char *outcome_name(enum mta_dane_outcome o)
{
	switch (o) {
#define OUTCOME_CASE(e, name)                                                 \
	case MTA_DANE_##e:                                                    \
		return name;
		MTA_DANE_OUTCOME_MAP(OUTCOME_CASE)
#undef OUTCOME_CASE
	}
	return "?";
}

#define NOW ((time_t)1700000000)
#define DAY 86400

/* ---- certificates ---- */

struct cert {
	gnutls_x509_crt_t crt;
	gnutls_x509_privkey_t key;	/* borrowed from struct keys */
	gnutls_datum_t der;
	gnutls_datum_t spki;
};

struct spec {
	const char *dn;		/* "CN=..." */
	const char *san;	/* DNS SAN or NULL */
	bool ca;
	int pathlen;		/* -1: none */
	time_t nb, na;
	gnutls_x509_privkey_t key;
	const struct cert *issuer; /* NULL: self-signed */
};

enum { K_ROOT, K_INT, K_LEAF, K_ROGUE, K_RLEAF, K_OTHER, K_COUNT };

struct fx {
	gnutls_x509_privkey_t k[K_COUNT];
	unsigned serial;
	struct cert root, inter, leaf, leaf_int, leaf_exp, leaf_nyv, leaf_wrong,
		leaf_next, leaf_e, leaf_cn, leaf_cn_san, leaf_wild, leaf_a_wild,
		leaf_pwild, leaf_pwild2, leaf_tlsa_target, self_ee, int_exp,
		leaf_int_exp, rogue_root, rogue_leaf, rogue_same_dn,
		rogue_leaf_same, root_pl0, int_pl0, leaf_pl0, cal_root, cal_leaf,
		unrelated;
};

static struct fx *F;

static void make(struct fx *fx, struct cert *c, const struct spec *s)
{
	unsigned char serial[2] = {0x01, (unsigned char)++fx->serial};
	gnutls_x509_crt_t crt;
	gnutls_pubkey_t pk;

	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	assert_int_equal(gnutls_x509_crt_set_version(crt, 3), 0);
	assert_int_equal(gnutls_x509_crt_set_serial(crt, serial, 2), 0);
	assert_int_equal(gnutls_x509_crt_set_activation_time(crt, s->nb), 0);
	assert_int_equal(gnutls_x509_crt_set_expiration_time(crt, s->na), 0);
	assert_int_equal(gnutls_x509_crt_set_dn(crt, s->dn, NULL), 0);
	assert_int_equal(gnutls_x509_crt_set_key(crt, s->key), 0);
	if (s->san != NULL)
		assert_int_equal(gnutls_x509_crt_set_subject_alt_name(crt,
			GNUTLS_SAN_DNSNAME, s->san, (unsigned)strlen(s->san),
			GNUTLS_FSAN_SET), 0);
	if (s->ca) {
		assert_int_equal(gnutls_x509_crt_set_basic_constraints(crt, 1,
			s->pathlen), 0);
		assert_int_equal(gnutls_x509_crt_set_key_usage(crt,
			GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN), 0);
	} else {
		assert_int_equal(gnutls_x509_crt_set_key_usage(crt,
			GNUTLS_KEY_DIGITAL_SIGNATURE), 0);
	}
	assert_int_equal(gnutls_x509_crt_sign2(crt,
		s->issuer ? s->issuer->crt : crt,
		s->issuer ? s->issuer->key : s->key, GNUTLS_DIG_SHA256, 0), 0);
	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER,
						 &c->der), 0);
	gnutls_x509_crt_deinit(crt);
	/* re-read, as a peer's certificate would be */
	assert_int_equal(gnutls_x509_crt_init(&c->crt), 0);
	assert_int_equal(gnutls_x509_crt_import(c->crt, &c->der,
						GNUTLS_X509_FMT_DER), 0);
	c->key = s->key;
	assert_int_equal(gnutls_pubkey_init(&pk), 0);
	assert_int_equal(gnutls_pubkey_import_x509(pk, c->crt, 0), 0);
	assert_int_equal(gnutls_pubkey_export2(pk, GNUTLS_X509_FMT_DER,
					       &c->spki), 0);
	gnutls_pubkey_deinit(pk);
}

static void drop(struct cert *c)
{
	if (c->crt == NULL)
		return;
	gnutls_x509_crt_deinit(c->crt);
	gnutls_free(c->der.data);
	gnutls_free(c->spki.data);
}

#define VALID NOW - 30 * DAY, NOW + 365 * DAY
#define EXPIRED NOW - 400 * DAY, NOW - DAY
#define NOTYET NOW + DAY, NOW + 400 * DAY

static int group_setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	gnutls_x509_privkey_t *k;

	assert_non_null(fx);
	k = fx->k;
	for (int i = 0; i < K_COUNT; i++) {
		assert_int_equal(gnutls_x509_privkey_init(&k[i]), 0);
		assert_int_equal(gnutls_x509_privkey_generate(k[i],
			GNUTLS_PK_ECDSA,
			GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0), 0);
	}
	/* CA-P: the private DANE CA, root -> intermediate */
	make(fx, &fx->root, &(struct spec){"CN=CA-P Root,O=Lab", NULL, true,
		-1, VALID, k[K_ROOT], NULL});
	make(fx, &fx->inter, &(struct spec){"CN=CA-P Int,O=Lab", NULL, true,
		-1, VALID, k[K_INT], &fx->root});
	make(fx, &fx->leaf, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_int, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, VALID, k[K_LEAF], &fx->inter});
	make(fx, &fx->leaf_exp, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, EXPIRED, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_nyv, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, NOTYET, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_wrong, &(struct spec){"CN=mx.example.net",
		"unrelated.test", false, -1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_next, &(struct spec){"CN=x", "example.net", false,
		-1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_e, &(struct spec){"CN=x", "e.example.com", false,
		-1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_cn, &(struct spec){"CN=mx.example.net", NULL, false,
		-1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_cn_san, &(struct spec){"CN=mx.example.net",
		"other.example.net", false, -1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_wild, &(struct spec){"CN=x", "*.example.net", false,
		-1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_a_wild, &(struct spec){"CN=x", "*.net", false, -1,
		VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_pwild, &(struct spec){"CN=x", "mx*.example.net",
		false, -1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_pwild2, &(struct spec){"CN=x", "*x.example.net",
		false, -1, VALID, k[K_LEAF], &fx->root});
	make(fx, &fx->leaf_tlsa_target, &(struct spec){"CN=x",
		"tlsa201._dane.example.net", false, -1, VALID, k[K_LEAF],
		&fx->root});
	/* DANE-70: self-signed, expired, unrelated name */
	make(fx, &fx->self_ee, &(struct spec){"CN=unrelated.test",
		"unrelated.test", false, -1, EXPIRED, k[K_LEAF], NULL});
	make(fx, &fx->int_exp, &(struct spec){"CN=CA-P Int,O=Lab", NULL, true,
		-1, EXPIRED, k[K_INT], &fx->root});
	make(fx, &fx->leaf_int_exp, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, VALID, k[K_LEAF], &fx->int_exp});
	/* the rogue chains: a rogue CA (own name, or CA-P's name) */
	make(fx, &fx->rogue_root, &(struct spec){"CN=Rogue CA,O=Evil", NULL,
		true, -1, VALID, k[K_ROGUE], NULL});
	make(fx, &fx->rogue_leaf, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, VALID, k[K_RLEAF], &fx->rogue_root});
	make(fx, &fx->rogue_same_dn, &(struct spec){"CN=CA-P Root,O=Lab", NULL,
		true, -1, VALID, k[K_ROGUE], NULL});
	make(fx, &fx->rogue_leaf_same, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, VALID, k[K_RLEAF],
		&fx->rogue_same_dn});
	/* DANE-93: root with pathLen 0 above an intermediate */
	make(fx, &fx->root_pl0, &(struct spec){"CN=PL0 Root", NULL, true, 0,
		VALID, k[K_OTHER], NULL});
	make(fx, &fx->int_pl0, &(struct spec){"CN=PL0 Int", NULL, true, -1,
		VALID, k[K_INT], &fx->root_pl0});
	make(fx, &fx->leaf_pl0, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, VALID, k[K_LEAF], &fx->int_pl0});
	/* DANE-94: a "WebPKI" chain (CA-L) */
	make(fx, &fx->cal_root, &(struct spec){"CN=CA-L Root", NULL, true, -1,
		VALID, k[K_OTHER], NULL});
	make(fx, &fx->cal_leaf, &(struct spec){"CN=mx.example.net",
		"mx.example.net", false, -1, VALID, k[K_LEAF], &fx->cal_root});
	make(fx, &fx->unrelated, &(struct spec){"CN=Unrelated", NULL, true, -1,
		VALID, k[K_OTHER], NULL});
	F = fx;
	*state = fx;
	return 0;
}

static int group_teardown(void **state)
{
	struct fx *fx = *state;
	struct cert *c = &fx->root, *end = &fx->unrelated + 1;

	for (; c < end; c++)
		drop(c);
	for (int i = 0; i < K_COUNT; i++)
		gnutls_x509_privkey_deinit(fx->k[i]);
	free(fx);
	return 0;
}

static int test_setup(void **state)
{
	(void)state;
	alarm(60); /* per-test timeout */
	return 0;
}

/* ---- records and runs ---- */

struct rec {
	struct mta_dns_tlsa t;
	uint8_t buf[2048];
};

static void mkrec(struct rec *r, unsigned u, unsigned s, unsigned m,
		  const struct cert *c)
{
	const gnutls_datum_t *obj = s == 0 ? &c->der : &c->spki;

	memset(r, 0, sizeof(*r));
	r->t.usage = (uint8_t)u;
	r->t.selector = (uint8_t)s;
	r->t.mtype = (uint8_t)m;
	r->t.data = r->buf;
	switch (m) {
	case 0:
		assert_true(obj->size <= sizeof(r->buf));
		memcpy(r->buf, obj->data, obj->size);
		r->t.len = obj->size;
		break;
	case 1:
		assert_int_equal(gnutls_hash_fast(GNUTLS_DIG_SHA256, obj->data,
						  obj->size, r->buf), 0);
		r->t.len = 32;
		break;
	default:
		assert_int_equal(gnutls_hash_fast(GNUTLS_DIG_SHA512, obj->data,
						  obj->size, r->buf), 0);
		r->t.len = 64;
		break;
	}
	if (m > 2) /* unknown type: keep a 32-byte digest as data */
		r->t.len = 32;
}

/* A record with arbitrary parameters and len bytes of 0xab. */
static void rawrec(struct rec *r, unsigned u, unsigned s, unsigned m,
		   size_t len)
{
	memset(r, 0, sizeof(*r));
	r->t.usage = (uint8_t)u;
	r->t.selector = (uint8_t)s;
	r->t.mtype = (uint8_t)m;
	memset(r->buf, 0xab, len);
	r->t.data = r->buf;
	r->t.len = len;
}

#define MAXC 8
#define MAXR 8

struct run {
	gnutls_datum_t chain[MAXC];
	struct mta_dns_tlsa tlsa[MAXR];
	size_t nchain, ntlsa;
	const char *base;
	const char *nexthop[3];
	size_t nnexthop;
	struct mta_dane_result res;
	int rc;
};

static void run_init(struct run *r)
{
	memset(r, 0, sizeof(*r));
	r->base = "mx.example.net";
	r->nexthop[0] = "example.net";
	r->nnexthop = 1;
}

static void add_cert(struct run *r, const struct cert *c)
{
	assert_true(r->nchain < MAXC);
	r->chain[r->nchain++] = c->der;
}

static void add_rec(struct run *r, const struct rec *rec)
{
	assert_true(r->ntlsa < MAXR);
	r->tlsa[r->ntlsa++] = rec->t;
}

static int go(struct run *r)
{
	struct mta_dane_query q = {
		.chain = r->chain,
		.nchain = r->nchain,
		.tlsa = r->tlsa,
		.ntlsa = r->ntlsa,
		.base = r->base,
		.nexthop = r->nexthop,
		.nnexthop = r->nnexthop,
		.now = NOW,
	};

	r->rc = mta_dane_verify(&q, &r->res);
	print_message("  %s rc=%d: %s\n",
		      outcome_name(r->res.outcome), r->rc,
		      r->res.reason);
	return (int)r->res.outcome;
}

/* One record, chain given as a NULL-terminated list of certs. */
static struct run *one(unsigned u, unsigned s, unsigned m,
		       const struct cert *tlsa_of, ...)
{
	static struct run r;	/* single-threaded test; reset each call */
	struct rec rec;
	const struct cert *c;
	va_list ap;

	run_init(&r);
	mkrec(&rec, u, s, m, tlsa_of);
	add_rec(&r, &rec);
	va_start(ap, tlsa_of);
	while ((c = va_arg(ap, const struct cert *)) != NULL)
		add_cert(&r, c);
	va_end(ap);
	go(&r);
	return &r;
}

#define assert_match(r, dep) do { \
	assert_int_equal((r)->res.outcome, MTA_DANE_MATCH); \
	assert_int_equal((r)->rc, 0); \
	assert_int_equal((r)->res.depth, (dep)); \
	assert_int_equal((r)->res.fail, MTA_DANE_FAIL_NONE); \
} while (0)

#define assert_nomatch(r, f) do { \
	assert_int_equal((r)->res.outcome, MTA_DANE_NO_MATCH); \
	assert_int_equal((r)->rc, 0); \
	assert_int_equal((r)->res.fail, (f)); \
} while (0)

/* ---- DANE-EE(3) ---- */

static void dane50_ee_311_match(void **state)
{
	struct run *r = one(3, 1, 1, &F->leaf, &F->leaf, &F->root, NULL);
	(void)state;
	assert_match(r, 0);
	assert_int_equal(r->res.usage, 3);
	assert_int_equal(r->res.selector, 1);
	assert_int_equal(r->res.mtype, 1);
	assert_int_equal(r->res.record, 0);
	assert_string_equal(r->res.reason,
			    "DANE-EE 3 1 1 matched the certificate of mx.example.net");
}

static void dane71_ee_301_match(void **state)
{
	(void)state;
	assert_match(one(3, 0, 1, &F->leaf, &F->leaf, NULL), 0);
}

static void dane_ee_312_match(void **state)
{
	(void)state;
	assert_match(one(3, 1, 2, &F->leaf, &F->leaf, NULL), 0);
	assert_match(one(3, 0, 2, &F->leaf, &F->leaf, NULL), 0);
}

static void dane72_ee_300_310_full_match(void **state)
{
	(void)state;
	assert_match(one(3, 0, 0, &F->leaf, &F->leaf, NULL), 0);
	assert_match(one(3, 1, 0, &F->leaf, &F->leaf, NULL), 0);
}

static void dane70_ee_ignores_name_dates_selfsigned(void **state)
{
	(void)state;
	/* self-signed + expired + unrelated name */
	assert_match(one(3, 1, 1, &F->self_ee, &F->self_ee, NULL), 0);
	assert_match(one(3, 1, 1, &F->leaf_exp, &F->leaf_exp, NULL), 0);
	/* DANE-75: another name; DANE-74: not yet valid */
	assert_match(one(3, 1, 1, &F->leaf_wrong, &F->leaf_wrong, NULL), 0);
	assert_match(one(3, 1, 1, &F->leaf_nyv, &F->leaf_nyv, NULL), 0);
}

static void dane55_ee_mismatch_names_base(void **state)
{
	struct run *r = one(3, 0, 1, &F->leaf_wrong, &F->leaf, &F->root, NULL);
	(void)state;
	assert_nomatch(r, MTA_DANE_FAIL_NOMATCH);
	assert_string_equal(r->res.reason,
		"TLSA records for mx.example.net did not match the certificate presented");
	assert_string_equal(mta_dane_fail_rpt(r->res.fail), "tlsa-invalid");
}

static void dane73_ee_matches_leaf_only(void **state)
{
	(void)state;
	/* digest of the intermediate's / root's key, both in the chain */
	assert_nomatch(one(3, 1, 1, &F->inter, &F->leaf_int, &F->inter,
			   &F->root, NULL), MTA_DANE_FAIL_NOMATCH);
	assert_nomatch(one(3, 0, 1, &F->root, &F->leaf, &F->root, NULL),
		       MTA_DANE_FAIL_NOMATCH);
}

/* ---- DANE-TA(2) ---- */

static void dane80_ta_201_depth1(void **state)
{
	struct run *r = one(2, 0, 1, &F->root, &F->leaf, &F->root, NULL);
	(void)state;
	assert_match(r, 1);
	assert_false(r->res.anchor_from_dns);
	assert_string_equal(r->res.reason,
		"DANE-TA 2 0 1 matched the certificate at depth 1; chain, dates and name mx.example.net verified");
}

static void dane84_ta_211_depth1(void **state)
{
	(void)state;
	assert_match(one(2, 1, 1, &F->root, &F->leaf, &F->root, NULL), 1);
	assert_match(one(2, 1, 2, &F->root, &F->leaf, &F->root, NULL), 1);
}

static void dane81_ta_intermediate_and_root_depth2(void **state)
{
	(void)state;
	/* TA = the intermediate (depth 1), and the root (depth 2) */
	assert_match(one(2, 0, 1, &F->inter, &F->leaf_int, &F->inter,
			 &F->root, NULL), 1);
	assert_match(one(2, 1, 1, &F->inter, &F->leaf_int, &F->inter,
			 &F->root, NULL), 1);
	assert_match(one(2, 0, 1, &F->root, &F->leaf_int, &F->inter,
			 &F->root, NULL), 2);
	assert_match(one(2, 1, 1, &F->root, &F->leaf_int, &F->inter,
			 &F->root, NULL), 2);
}

static void dane_ta_path_skips_unrelated_cert(void **state)
{
	(void)state;
	assert_match(one(2, 0, 1, &F->root, &F->leaf_int, &F->unrelated,
			 &F->inter, &F->root, NULL), 3);
}

static void dane87_ta_name_mismatch(void **state)
{
	struct run *r = one(2, 1, 1, &F->root, &F->leaf_wrong, &F->root, NULL);
	(void)state;
	assert_nomatch(r, MTA_DANE_FAIL_NAME);
	assert_string_equal(r->res.reason,
		"DANE-TA 2 1 1 matched but certificate name mismatch (wanted mx.example.net or example.net)");
	assert_string_equal(mta_dane_fail_rpt(r->res.fail),
			    "certificate-host-mismatch");
	r = one(2, 0, 1, &F->root, &F->leaf_wrong, &F->root, NULL);
	assert_nomatch(r, MTA_DANE_FAIL_NAME);
}

static void dane85_86_nexthop_names(void **state)
{
	struct run r;
	struct rec rec;

	(void)state;
	/* DANE-85: the next-hop domain is a reference identifier */
	assert_match(one(2, 0, 1, &F->root, &F->leaf_next, &F->root, NULL), 1);
	/* DANE-86: a third one (the CNAME-expanded next hop) */
	run_init(&r);
	r.nexthop[1] = "e.example.com";
	r.nnexthop = 2;
	mkrec(&rec, 2, 0, 1, &F->root);
	add_rec(&r, &rec);
	add_cert(&r, &F->leaf_e);
	add_cert(&r, &F->root);
	go(&r);
	assert_match(&r, 1);
	/* without it, the reason lists the names wanted */
	r.nnexthop = 1;
	go(&r);
	assert_nomatch(&r, MTA_DANE_FAIL_NAME);
	/* no next hop at all: the base domain only */
	r.nnexthop = 0;
	go(&r);
	assert_nomatch(&r, MTA_DANE_FAIL_NAME);
	assert_non_null(strstr(r.res.reason, "(wanted mx.example.net)"));
}

static void dane88_tlsa_cname_target_not_a_name(void **state)
{
	(void)state;
	assert_nomatch(one(2, 0, 1, &F->root, &F->leaf_tlsa_target, &F->root,
			   NULL), MTA_DANE_FAIL_NAME);
}

static void dane89_90_cn_only_when_no_dns_san(void **state)
{
	(void)state;
	assert_match(one(2, 0, 1, &F->root, &F->leaf_cn, &F->root, NULL), 1);
	assert_nomatch(one(2, 0, 1, &F->root, &F->leaf_cn_san, &F->root, NULL),
		       MTA_DANE_FAIL_NAME);
}

static void dane91_wildcards(void **state)
{
	struct run r;
	struct rec rec;

	(void)state;
	/* (a) *.example.net names mx.example.net */
	assert_match(one(2, 0, 1, &F->root, &F->leaf_wild, &F->root, NULL), 1);
	/* (b) but not a.mx.example.net (one label only), nor example.net */
	run_init(&r);
	r.base = "a.mx.example.net";
	r.nnexthop = 0;
	mkrec(&rec, 2, 0, 1, &F->root);
	add_rec(&r, &rec);
	add_cert(&r, &F->leaf_wild);
	add_cert(&r, &F->root);
	go(&r);
	assert_nomatch(&r, MTA_DANE_FAIL_NAME);
	r.base = "example.net";
	go(&r);
	assert_nomatch(&r, MTA_DANE_FAIL_NAME);
	/* (c) partial-label wildcards never match (GnuTLS would take *x) */
	assert_nomatch(one(2, 0, 1, &F->root, &F->leaf_pwild, &F->root, NULL),
		       MTA_DANE_FAIL_NAME);
	run_init(&r);
	r.base = "mx.example.net";
	mkrec(&rec, 2, 0, 1, &F->root);
	add_rec(&r, &rec);
	add_cert(&r, &F->leaf_pwild2);
	add_cert(&r, &F->root);
	go(&r);
	assert_nomatch(&r, MTA_DANE_FAIL_NAME);
	/* "*.net" (one label after the star) is refused */
	run_init(&r);
	r.base = "example.net";
	r.nnexthop = 0;
	mkrec(&rec, 2, 0, 1, &F->root);
	add_rec(&r, &rec);
	add_cert(&r, &F->leaf_a_wild);
	add_cert(&r, &F->root);
	go(&r);
	assert_nomatch(&r, MTA_DANE_FAIL_NAME);
	/* case and a trailing dot in the reference do not matter */
	r.base = "MX.Example.NET.";
	r.chain[0] = F->leaf.der;
	go(&r);
	assert_match(&r, 1);
}

static void dane92_ta_leaf_expired(void **state)
{
	struct run *r = one(2, 0, 1, &F->root, &F->leaf_exp, &F->root, NULL);
	(void)state;
	assert_nomatch(r, MTA_DANE_FAIL_EXPIRED);
	assert_string_equal(r->res.reason,
		"certificate expired (DANE-TA 2 0 1, leaf at depth 0)");
	assert_string_equal(mta_dane_fail_rpt(r->res.fail),
			    "certificate-expired");
	r = one(2, 1, 1, &F->root, &F->leaf_nyv, &F->root, NULL);
	assert_nomatch(r, MTA_DANE_FAIL_NOTYET);
	/* an expired intermediate below the anchor counts too */
	r = one(2, 0, 1, &F->root, &F->leaf_int_exp, &F->int_exp, &F->root,
		NULL);
	assert_nomatch(r, MTA_DANE_FAIL_EXPIRED);
	assert_non_null(strstr(r->res.reason, "intermediate at depth 1"));
}

static void dane82_ta_digest_not_sent(void **state)
{
	struct run *r;

	(void)state;
	r = one(2, 0, 1, &F->root, &F->leaf, NULL);
	assert_nomatch(r, MTA_DANE_FAIL_NOMATCH);
	r = one(2, 1, 1, &F->root, &F->leaf_int, &F->inter, NULL);
	assert_nomatch(r, MTA_DANE_FAIL_NOMATCH);
	/* a full SPKI record does not stand in for an anchor (CAVEATS) */
	r = one(2, 1, 0, &F->root, &F->leaf, NULL);
	assert_nomatch(r, MTA_DANE_FAIL_NOMATCH);
}

static void dane83_ta_200_not_sent(void **state)
{
	struct run *r;

	(void)state;
	r = one(2, 0, 0, &F->root, &F->leaf, NULL);
	assert_match(r, 1);
	assert_true(r->res.anchor_from_dns);
	r = one(2, 0, 0, &F->root, &F->leaf_int, &F->inter, NULL);
	assert_match(r, 2);
	assert_true(r->res.anchor_from_dns);
	/* sent anyway: found in the chain */
	r = one(2, 0, 0, &F->root, &F->leaf, &F->root, NULL);
	assert_match(r, 1);
	assert_false(r->res.anchor_from_dns);
	/* the DNS anchor does not rescue a bad name or an expired leaf */
	assert_nomatch(one(2, 0, 0, &F->root, &F->leaf_wrong, NULL),
		       MTA_DANE_FAIL_NAME);
	assert_nomatch(one(2, 0, 0, &F->root, &F->leaf_exp, NULL),
		       MTA_DANE_FAIL_EXPIRED);
	/* nor a chain from another CA */
	assert_nomatch(one(2, 0, 0, &F->root, &F->rogue_leaf, &F->rogue_root,
			   NULL), MTA_DANE_FAIL_CHAIN);
}

static void dane_ta_never_the_leaf(void **state)
{
	(void)state;
	/* a self-signed leaf named in a DANE-TA record is not an anchor */
	assert_nomatch(one(2, 0, 1, &F->self_ee, &F->self_ee, NULL),
		       MTA_DANE_FAIL_NOMATCH);
	assert_nomatch(one(2, 0, 0, &F->self_ee, &F->self_ee, NULL),
		       MTA_DANE_FAIL_NOMATCH);
	assert_nomatch(one(2, 1, 1, &F->leaf, &F->leaf, &F->root, NULL),
		       MTA_DANE_FAIL_NOMATCH);
}

static void dane_ta_rogue_bypass_rejected(void **state)
{
	struct run *r;

	(void)state;
	/* the libgnutls-dane bypass: rogue leaf + rogue CA + real TA */
	r = one(2, 0, 1, &F->root, &F->rogue_leaf, &F->rogue_root, &F->root,
		NULL);
	assert_nomatch(r, MTA_DANE_FAIL_CHAIN);
	r = one(2, 1, 1, &F->root, &F->rogue_leaf, &F->rogue_root, &F->root,
		NULL);
	assert_nomatch(r, MTA_DANE_FAIL_CHAIN);
	r = one(2, 0, 1, &F->root, &F->rogue_leaf, &F->root, NULL);
	assert_nomatch(r, MTA_DANE_FAIL_CHAIN);
	/* a rogue CA carrying the real TA's name: signatures decide */
	r = one(2, 0, 1, &F->root, &F->rogue_leaf_same, &F->rogue_same_dn,
		&F->root, NULL);
	assert_nomatch(r, MTA_DANE_FAIL_CHAIN);
	r = one(2, 0, 1, &F->root, &F->rogue_leaf_same, &F->root, NULL);
	assert_nomatch(r, MTA_DANE_FAIL_CHAIN);
	assert_string_equal(mta_dane_fail_rpt(r->res.fail),
			    "validation-failure");
	/* the real TA placed before the rogue CA */
	r = one(2, 0, 1, &F->root, &F->rogue_leaf, &F->root, &F->rogue_root,
		NULL);
	assert_nomatch(r, MTA_DANE_FAIL_CHAIN);
}

static void dane93_ta_pathlen(void **state)
{
	(void)state;
	assert_nomatch(one(2, 0, 1, &F->root_pl0, &F->leaf_pl0, &F->int_pl0,
			   &F->root_pl0, NULL), MTA_DANE_FAIL_CHAIN);
	/* the intermediate as TA is fine */
	assert_match(one(2, 0, 1, &F->int_pl0, &F->leaf_pl0, &F->int_pl0,
			 &F->root_pl0, NULL), 1);
}

static void dane94_local_trust_irrelevant(void **state)
{
	(void)state;
	assert_nomatch(one(2, 0, 1, &F->root, &F->cal_leaf, &F->cal_root, NULL),
		       MTA_DANE_FAIL_NOMATCH);
}

/* ---- classification (DANE-51..58) ---- */

static void dane51_pkix_only_unusable(void **state)
{
	struct run r;
	struct rec a, b;

	(void)state;
	run_init(&r);
	mkrec(&a, 0, 0, 1, &F->root);
	mkrec(&b, 1, 1, 1, &F->leaf);
	add_rec(&r, &a);
	add_rec(&r, &b);
	add_cert(&r, &F->leaf);
	add_cert(&r, &F->root);
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_UNUSABLE_ONLY);
	assert_int_equal(r.rc, 0);
	assert_int_equal(r.res.usable, 0);
	assert_string_equal(r.res.reason,
		"all 2 TLSA records for mx.example.net are unusable: TLS required, not authenticated");
	/* decided without a chain */
	r.nchain = 0;
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_UNUSABLE_ONLY);
	assert_string_equal(mta_dane_unusable_why(&a.t),
			    "PKIX-TA(0) is not used for SMTP");
	assert_string_equal(mta_dane_unusable_why(&b.t),
			    "PKIX-EE(1) is not used for SMTP");
}

static void dane52_unknown_parameters_unusable(void **state)
{
	struct run r;
	struct rec x[4];

	(void)state;
	run_init(&r);
	mkrec(&x[0], 4, 1, 1, &F->leaf);
	mkrec(&x[1], 3, 2, 1, &F->leaf);
	mkrec(&x[2], 3, 1, 3, &F->leaf);
	mkrec(&x[3], 255, 1, 1, &F->leaf);
	for (int i = 0; i < 4; i++)
		add_rec(&r, &x[i]);
	add_cert(&r, &F->leaf);
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_UNUSABLE_ONLY);
	assert_int_equal(mta_dane_count_usable(r.tlsa, r.ntlsa), 0);
	assert_string_equal(mta_dane_unusable_why(&x[0].t),
			    "unknown certificate usage");
	assert_string_equal(mta_dane_unusable_why(&x[1].t), "unknown selector");
	assert_string_equal(mta_dane_unusable_why(&x[2].t),
			    "unknown matching type");
	assert_false(mta_dane_usable(&x[3].t));
}

static void dane53_malformed_data_unusable(void **state)
{
	struct run r;
	struct rec x[6];

	(void)state;
	run_init(&r);
	rawrec(&x[0], 3, 1, 1, 31);
	rawrec(&x[1], 3, 1, 2, 32);
	rawrec(&x[2], 3, 0, 0, 0);
	rawrec(&x[3], 3, 0, 0, 100);	/* not a certificate */
	rawrec(&x[4], 2, 1, 0, 100);	/* not a public key */
	rawrec(&x[5], 2, 1, 1, 33);
	for (int i = 0; i < 6; i++)
		add_rec(&r, &x[i]);
	add_cert(&r, &F->leaf);
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_UNUSABLE_ONLY);
	assert_string_equal(mta_dane_unusable_why(&x[0].t),
			    "SHA2-256 digest is not 32 bytes");
	assert_string_equal(mta_dane_unusable_why(&x[1].t),
			    "SHA2-512 digest is not 64 bytes");
	assert_string_equal(mta_dane_unusable_why(&x[2].t),
			    "empty Full(0) data");
	assert_string_equal(mta_dane_unusable_why(&x[3].t),
			    "Full(0) certificate does not parse");
	assert_string_equal(mta_dane_unusable_why(&x[4].t),
			    "Full(0) public key does not parse");
	/* well-formed ones are usable */
	mkrec(&x[0], 3, 1, 0, &F->leaf);
	mkrec(&x[1], 2, 0, 0, &F->root);
	assert_true(mta_dane_usable(&x[0].t));
	assert_true(mta_dane_usable(&x[1].t));
}

static void dane54_mixed_usable_and_unusable(void **state)
{
	struct run r;
	struct rec x[3];

	(void)state;
	run_init(&r);
	rawrec(&x[0], 0, 0, 1, 32);
	rawrec(&x[1], 4, 1, 1, 32);
	mkrec(&x[2], 3, 1, 1, &F->leaf);
	for (int i = 0; i < 3; i++)
		add_rec(&r, &x[i]);
	add_cert(&r, &F->leaf);
	go(&r);
	assert_match(&r, 0);
	assert_int_equal(r.res.usable, 1);
	assert_int_equal(r.res.record, 2);
	/* DANE-55: usable but not matching never degrades to unusable */
	rawrec(&x[2], 3, 1, 1, 32);
	r.tlsa[2] = x[2].t;
	go(&r);
	assert_nomatch(&r, MTA_DANE_FAIL_NOMATCH);
}

static void two(struct run *r, const struct rec *a, const struct rec *b,
		const struct cert *c0, const struct cert *c1)
{
	run_init(r);
	add_rec(r, a);
	add_rec(r, b);
	add_cert(r, c0);
	if (c1 != NULL)
		add_cert(r, c1);
	go(r);
}

static void dane56_58_digest_agility(void **state)
{
	struct run r;
	struct rec ok, bad, x;

	(void)state;
	/* DANE-56: 3 1 1 wrong + 3 1 2 ok */
	rawrec(&bad, 3, 1, 1, 32);
	mkrec(&ok, 3, 1, 2, &F->leaf);
	two(&r, &bad, &ok, &F->leaf, NULL);
	assert_match(&r, 0);
	assert_int_equal(r.res.superseded, 1);
	/* DANE-57: 3 1 1 ok + 3 1 2 wrong: the weaker digest is ignored */
	mkrec(&ok, 3, 1, 1, &F->leaf);
	rawrec(&bad, 3, 1, 2, 64);
	two(&r, &ok, &bad, &F->leaf, NULL);
	assert_nomatch(&r, MTA_DANE_FAIL_NOMATCH);
	assert_int_equal(r.res.superseded, 1);
	assert_int_equal(r.res.usable, 2);
	/* DANE-58: Full(0) always takes part */
	mkrec(&x, 3, 1, 0, &F->leaf);
	two(&r, &x, &bad, &F->leaf, NULL);
	assert_match(&r, 0);
	/* per selector: 3 0 1 ok is not superseded by 3 1 2 */
	mkrec(&x, 3, 0, 1, &F->leaf);
	two(&r, &x, &bad, &F->leaf, NULL);
	assert_match(&r, 0);
	assert_int_equal(r.res.superseded, 0);
	/* a malformed SHA2-512 record supersedes nothing */
	rawrec(&bad, 3, 1, 2, 32);
	two(&r, &ok, &bad, &F->leaf, NULL);
	assert_match(&r, 0);
	/* per usage: 2 0 1 ok + 2 0 2 wrong */
	mkrec(&ok, 2, 0, 1, &F->root);
	rawrec(&bad, 2, 0, 2, 64);
	two(&r, &ok, &bad, &F->leaf, &F->root);
	assert_nomatch(&r, MTA_DANE_FAIL_NOMATCH);
	/* and 3 1 2 does not supersede 2 1 1 */
	mkrec(&ok, 2, 1, 1, &F->root);
	rawrec(&bad, 3, 1, 2, 64);
	two(&r, &ok, &bad, &F->leaf, &F->root);
	assert_match(&r, 1);
}

static void dane_reason_prefers_specific_failure(void **state)
{
	struct run r;
	struct rec ee, ta;

	(void)state;
	/* EE mismatch + TA name failure: the name failure is reported */
	rawrec(&ee, 3, 1, 1, 32);
	mkrec(&ta, 2, 0, 1, &F->root);
	two(&r, &ee, &ta, &F->leaf_wrong, &F->root);
	assert_nomatch(&r, MTA_DANE_FAIL_NAME);
	/* and a later match still wins */
	mkrec(&ee, 3, 1, 1, &F->leaf_wrong);
	two(&r, &ta, &ee, &F->leaf_wrong, &F->root);
	assert_match(&r, 0);
	assert_int_equal(r.res.record, 1);
}

/* ---- bad input ---- */

static void dane_error_empty_chain_and_garbage(void **state)
{
	struct run r;
	struct rec rec;
	static unsigned char junk[] = {0x30, 0x82, 0x01, 0x00, 0x01, 0x02};
	gnutls_datum_t g = {junk, sizeof(junk)};
	gnutls_datum_t z = {NULL, 0};

	(void)state;
	run_init(&r);
	mkrec(&rec, 3, 1, 1, &F->leaf);
	add_rec(&r, &rec);
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_ERROR);
	assert_int_equal(r.rc, MTA_ETLS);
	assert_string_equal(r.res.reason,
			    "no certificate presented by mx.example.net");
	r.chain[0] = g;
	r.nchain = 1;
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_ERROR);
	assert_int_equal(r.rc, MTA_ETLS);
	assert_string_equal(r.res.reason,
		"certificate at depth 0 presented by mx.example.net does not parse");
	r.chain[0] = F->leaf.der;
	r.chain[1] = g;
	r.nchain = 2;
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_ERROR);
	r.chain[1] = z;
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_ERROR);
	/* an empty RRset is not "unusable only" */
	r.ntlsa = 0;
	r.nchain = 1;
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_ERROR);
	assert_int_equal(r.rc, -EINVAL);
}

static void dane_error_limits(void **state)
{
	struct mta_dns_tlsa many[MTA_DANE_TLSA_MAX + 1];
	gnutls_datum_t chain[MTA_DANE_CHAIN_MAX + 1];
	struct mta_dane_result res;
	struct rec rec;
	struct mta_dane_query q = {
		.chain = chain, .nchain = 1, .tlsa = many,
		.ntlsa = MTA_DANE_TLSA_MAX + 1, .base = "mx.example.net",
		.now = NOW,
	};

	(void)state;
	mkrec(&rec, 3, 1, 1, &F->leaf);
	for (size_t i = 0; i <= MTA_DANE_TLSA_MAX; i++)
		many[i] = rec.t;
	for (size_t i = 0; i <= MTA_DANE_CHAIN_MAX; i++)
		chain[i] = F->leaf.der;
	assert_int_equal(mta_dane_verify(&q, &res), MTA_ETOOBIG);
	assert_int_equal(res.outcome, MTA_DANE_ERROR);
	q.ntlsa = MTA_DANE_TLSA_MAX;
	assert_int_equal(mta_dane_verify(&q, &res), 0);
	assert_int_equal(res.outcome, MTA_DANE_MATCH);
	q.nchain = MTA_DANE_CHAIN_MAX + 1;
	assert_int_equal(mta_dane_verify(&q, &res), MTA_ETOOBIG);
	q.nchain = MTA_DANE_CHAIN_MAX;
	assert_int_equal(mta_dane_verify(&q, &res), 0);
}

static void dane_reason_sanitised(void **state)
{
	struct run r;
	struct rec rec;

	(void)state;
	run_init(&r);
	r.base = "mx\r\n.example\x01net";
	rawrec(&rec, 3, 1, 1, 32);
	add_rec(&r, &rec);
	add_cert(&r, &F->leaf);
	go(&r);
	assert_string_equal(r.res.reason,
		"TLSA records for mx??.example?net did not match the certificate presented");
	r.base = NULL;
	go(&r);
	assert_int_equal(r.res.outcome, MTA_DANE_NO_MATCH);
}

static void dane_names_of_enums(void **state)
{
	(void)state;
	assert_string_equal(outcome_name(MTA_DANE_UNUSABLE_ONLY),
			    "unusable-only");
	assert_null(mta_dane_fail_rpt(MTA_DANE_FAIL_NONE));
	assert_string_equal(mta_dane_fail_rpt(MTA_DANE_FAIL_NOTYET),
			    "validation-failure");
}

#define T(f) cmocka_unit_test_setup(f, test_setup)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(dane50_ee_311_match),
		T(dane71_ee_301_match),
		T(dane_ee_312_match),
		T(dane72_ee_300_310_full_match),
		T(dane70_ee_ignores_name_dates_selfsigned),
		T(dane55_ee_mismatch_names_base),
		T(dane73_ee_matches_leaf_only),
		T(dane80_ta_201_depth1),
		T(dane84_ta_211_depth1),
		T(dane81_ta_intermediate_and_root_depth2),
		T(dane_ta_path_skips_unrelated_cert),
		T(dane87_ta_name_mismatch),
		T(dane85_86_nexthop_names),
		T(dane88_tlsa_cname_target_not_a_name),
		T(dane89_90_cn_only_when_no_dns_san),
		T(dane91_wildcards),
		T(dane92_ta_leaf_expired),
		T(dane82_ta_digest_not_sent),
		T(dane83_ta_200_not_sent),
		T(dane_ta_never_the_leaf),
		T(dane_ta_rogue_bypass_rejected),
		T(dane93_ta_pathlen),
		T(dane94_local_trust_irrelevant),
		T(dane51_pkix_only_unusable),
		T(dane52_unknown_parameters_unusable),
		T(dane53_malformed_data_unusable),
		T(dane54_mixed_usable_and_unusable),
		T(dane56_58_digest_agility),
		T(dane_reason_prefers_specific_failure),
		T(dane_error_empty_chain_and_garbage),
		T(dane_error_limits),
		T(dane_reason_sanitised),
		T(dane_names_of_enums),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
