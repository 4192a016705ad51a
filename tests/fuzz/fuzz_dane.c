/*
 * fuzz_dane.c - libFuzzer target for the DANE matcher (libmta/dane.c):
 * the TLSA RRset and the certificate chain both come from the input.
 *
 * Input layout (every field truncated by the end of the input):
 *   flags   1 byte: bit 0 picks now (0: NOW, 1: NOW + 20 years),
 *           bits 1-2 the number of next-hop names (0-2)
 *   ntlsa   1 byte (mod 9), then per record:
 *           usage, selector, mtype (1 byte each), len (2 bytes BE), data
 *   nchain  1 byte (mod 7), then per certificate: len (2 bytes BE), DER
 * Invariants checked: outcome and return code agree, a MATCH names a
 * usable record of the set, the reason is one printable line.
 *
 * Seeds: build with -DMTA_FUZZ_DANE_SEEDS (no -fsanitize=fuzzer) and run
 * "./a.out DIR"; it writes inputs made of a fresh CA -> intermediate ->
 * leaf chain and matching / non-matching records.  The committed corpus
 * (tests/fuzz/corpus/dane) was made that way.
 */
#include "dane.h"
#include "err.h"

#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOW ((time_t)1700000000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct cursor {
	const uint8_t *p;
	size_t left;
};

static unsigned get8(struct cursor *c)
{
	if (c->left == 0)
		return 0;
	c->left--;
	return *c->p++;
}

static const uint8_t *getn(struct cursor *c, size_t *n)
{
	const uint8_t *p = c->p;

	*n = (size_t)get8(c) << 8;
	*n |= get8(c);
	if (*n > c->left)
		*n = c->left;
	p = c->p;
	c->p += *n;
	c->left -= *n;
	return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const hops[] = {"example.net", "e.example.com"};
	struct mta_dns_tlsa tlsa[8];
	gnutls_datum_t chain[6];
	struct mta_dane_result res;
	struct cursor c = {data, size};
	struct mta_dane_query q = {0};
	unsigned flags;
	size_t n;
	int rc;

	flags = get8(&c);
	q.now = (flags & 1) ? NOW + 20 * 365 * 86400L : NOW;
	q.nnexthop = (flags >> 1) & 3;
	if (q.nnexthop > 2)
		q.nnexthop = 2;
	q.nexthop = hops;
	q.base = "mx.example.net";
	q.ntlsa = get8(&c) % 9;
	for (size_t i = 0; i < q.ntlsa; i++) {
		tlsa[i].usage = (uint8_t)get8(&c);
		tlsa[i].selector = (uint8_t)get8(&c);
		tlsa[i].mtype = (uint8_t)get8(&c);
		tlsa[i].data = getn(&c, &n);
		tlsa[i].len = n;
	}
	q.tlsa = tlsa;
	q.nchain = get8(&c) % 7;
	for (size_t i = 0; i < q.nchain; i++) {
		const uint8_t *p = getn(&c, &n);

		chain[i].data = (unsigned char *)p;
		chain[i].size = (unsigned int)n;
	}
	q.chain = chain;

	rc = mta_dane_verify(&q, &res);
	if ((rc == 0) != (res.outcome != MTA_DANE_ERROR))
		abort();
	if (res.outcome == MTA_DANE_MATCH) {
		if (res.record >= q.ntlsa || !mta_dane_usable(&tlsa[res.record]))
			abort();
		if (res.usage != 2 && res.usage != 3)
			abort();
		if (res.usage == 3 && res.depth != 0)
			abort();
		if (res.usage == 2 && res.depth == 0)
			abort();
	}
	if (res.outcome == MTA_DANE_UNUSABLE_ONLY &&
	    mta_dane_count_usable(tlsa, q.ntlsa) != 0)
		abort();
	if (res.usable != mta_dane_count_usable(tlsa, q.ntlsa) &&
	    res.outcome != MTA_DANE_ERROR)
		abort();
	if (memchr(res.reason, '\0', sizeof(res.reason)) == NULL ||
	    res.reason[0] == '\0')
		abort();
	for (const char *s = res.reason; *s; s++)
		if ((unsigned char)*s < ' ' || (unsigned char)*s >= 0x7f)
			abort();
	return 0;
}

#ifdef MTA_FUZZ_DANE_SEEDS
/* ---- seed generator (not part of the fuzz build) ---- */

struct blob {
	uint8_t b[8192];
	size_t n;
};

static void put8(struct blob *o, unsigned v)
{
	o->b[o->n++] = (uint8_t)v;
}

static void putn(struct blob *o, const void *p, size_t n)
{
	put8(o, (unsigned)(n >> 8));
	put8(o, (unsigned)(n & 0xff));
	memcpy(o->b + o->n, p, n);
	o->n += n;
}

static gnutls_x509_crt_t mk(gnutls_x509_privkey_t k, const char *dn,
			    const char *san, int ca, time_t nb, time_t na,
			    gnutls_x509_crt_t iss, gnutls_x509_privkey_t ik,
			    gnutls_datum_t *der, unsigned serial)
{
	gnutls_x509_crt_t c;
	unsigned char s = (unsigned char)serial;

	gnutls_x509_crt_init(&c);
	gnutls_x509_crt_set_version(c, 3);
	gnutls_x509_crt_set_serial(c, &s, 1);
	gnutls_x509_crt_set_activation_time(c, nb);
	gnutls_x509_crt_set_expiration_time(c, na);
	gnutls_x509_crt_set_dn(c, dn, NULL);
	gnutls_x509_crt_set_key(c, k);
	if (san != NULL)
		gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_DNSNAME, san,
			(unsigned)strlen(san), GNUTLS_FSAN_SET);
	if (ca)
		gnutls_x509_crt_set_basic_constraints(c, 1, -1);
	if (gnutls_x509_crt_sign2(c, iss ? iss : c, ik ? ik : k,
				  GNUTLS_DIG_SHA256, 0) < 0 ||
	    gnutls_x509_crt_export2(c, GNUTLS_X509_FMT_DER, der) < 0)
		exit(1);
	return c;
}

static void digest(const gnutls_datum_t *obj, unsigned m, uint8_t *out,
		   size_t *n)
{
	if (m == 0) {
		memcpy(out, obj->data, obj->size);
		*n = obj->size;
	} else {
		gnutls_hash_fast(m == 1 ? GNUTLS_DIG_SHA256 : GNUTLS_DIG_SHA512,
				 obj->data, obj->size, out);
		*n = m == 1 ? 32 : 64;
	}
}

static void spki(gnutls_x509_crt_t c, gnutls_datum_t *out)
{
	gnutls_pubkey_t pk;

	gnutls_pubkey_init(&pk);
	gnutls_pubkey_import_x509(pk, c, 0);
	gnutls_pubkey_export2(pk, GNUTLS_X509_FMT_DER, out);
	gnutls_pubkey_deinit(pk);
}

static void write_seed(const char *dir, const char *name,
		       const struct blob *o)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(o->b, 1, o->n, f) != o->n || fclose(f) != 0)
		exit(1);
}

/* One seed: record (u s m over cert sel-object), chain certs. */
static void seed(const char *dir, const char *name, unsigned flags,
		 unsigned u, unsigned s, unsigned m, const gnutls_datum_t *der,
		 const gnutls_datum_t *key, const gnutls_datum_t *const *ch,
		 size_t nch)
{
	struct blob o = {.n = 0};
	uint8_t d[4096];
	size_t n;

	put8(&o, flags);
	put8(&o, 2);
	digest(s == 0 ? der : key, m, d, &n);
	put8(&o, u);
	put8(&o, s);
	put8(&o, m);
	putn(&o, d, n);
	put8(&o, 0);	/* a PKIX-TA record beside it */
	put8(&o, 0);
	put8(&o, 1);
	putn(&o, d, 32);
	put8(&o, (unsigned)nch);
	for (size_t i = 0; i < nch; i++)
		putn(&o, ch[i]->data, ch[i]->size);
	write_seed(dir, name, &o);
}

int main(int argc, char **argv)
{
	gnutls_x509_privkey_t k[4];
	gnutls_x509_crt_t root, in, leaf, wrong, rogue, rleaf;
	gnutls_datum_t droot, din, dleaf, dwrong, drogue, drleaf;
	gnutls_datum_t kroot, kin, kleaf;
	time_t nb = NOW - 86400 * 30, na = NOW + 86400 * 365;

	if (argc != 2)
		return 2;
	for (int i = 0; i < 4; i++) {
		gnutls_x509_privkey_init(&k[i]);
		gnutls_x509_privkey_generate(k[i], GNUTLS_PK_ECDSA,
			GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0);
	}
	root = mk(k[0], "CN=Root", NULL, 1, nb, na, NULL, NULL, &droot, 1);
	in = mk(k[1], "CN=Int", NULL, 1, nb, na, root, k[0], &din, 2);
	leaf = mk(k[2], "CN=mx.example.net", "mx.example.net", 0, nb, na, in,
		  k[1], &dleaf, 3);
	wrong = mk(k[2], "CN=x", "*.example.com", 0, nb, na, root, k[0],
		   &dwrong, 4);
	rogue = mk(k[3], "CN=Root", NULL, 1, nb, na, NULL, NULL, &drogue, 5);
	rleaf = mk(k[2], "CN=mx.example.net", "mx.example.net", 0, nb, na,
		   rogue, k[3], &drleaf, 6);
	spki(root, &kroot);
	spki(in, &kin);
	spki(leaf, &kleaf);
	{
		const gnutls_datum_t *full[] = {&dleaf, &din, &droot};
		const gnutls_datum_t *noroot[] = {&dleaf, &din};
		const gnutls_datum_t *w[] = {&dwrong, &droot};
		const gnutls_datum_t *r[] = {&drleaf, &drogue, &droot};

		seed(argv[1], "ee_311", 2, 3, 1, 1, &dleaf, &kleaf, full, 3);
		seed(argv[1], "ee_300", 0, 3, 0, 0, &dleaf, &kleaf, full, 1);
		seed(argv[1], "ee_312_late", 1, 3, 1, 2, &dleaf, &kleaf, full, 1);
		seed(argv[1], "ta_201_root", 2, 2, 0, 1, &droot, &kroot, full, 3);
		seed(argv[1], "ta_211_int", 4, 2, 1, 1, &din, &kin, full, 3);
		seed(argv[1], "ta_212_expired", 3, 2, 1, 2, &droot, &kroot, full, 3);
		seed(argv[1], "ta_200_dns", 2, 2, 0, 0, &droot, &kroot, noroot, 2);
		seed(argv[1], "ta_210", 2, 2, 1, 0, &droot, &kroot, full, 3);
		seed(argv[1], "ta_name", 2, 2, 0, 1, &droot, &kroot, w, 2);
		seed(argv[1], "ta_rogue", 2, 2, 0, 1, &droot, &kroot, r, 3);
	}
	(void)leaf, (void)wrong, (void)rleaf;
	return 0;
}
#endif
