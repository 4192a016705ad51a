#include "dane.h"

#include "err.h"

#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NAME_MAX_LEN 256	/* a presentation-form domain, NUL included */
#define SHA256_LEN 32
#define SHA512_LEN 64

/* One certificate the server sent, parsed once. */
struct dane_cert {
	gnutls_x509_crt_t crt;
	const gnutls_datum_t *der;
	gnutls_datum_t spki;	/* DER SubjectPublicKeyInfo; gnutls_free */
};

struct dane_ctx {
	const struct mta_dane_query *q;
	struct mta_dane_result *res;
	struct dane_cert cert[MTA_DANE_CHAIN_MAX];
	size_t ncert;
	bool active[MTA_DANE_TLSA_MAX];	/* usable, not superseded */
	char names[MTA_DANE_REASON_MAX];	/* "a or b", sanitised */
	char base[NAME_MAX_LEN];		/* sanitised */
};

/* ---- classification ---- */

static bool full_cert_parses(const struct mta_dns_tlsa *r)
{
	gnutls_x509_crt_t crt;
	gnutls_datum_t d = {(unsigned char *)r->data, (unsigned int)r->len};
	int rc;

	if (gnutls_x509_crt_init(&crt) < 0)
		return false;
	rc = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER);
	gnutls_x509_crt_deinit(crt);
	return rc >= 0;
}

static bool full_spki_parses(const struct mta_dns_tlsa *r)
{
	gnutls_pubkey_t pk;
	gnutls_datum_t d = {(unsigned char *)r->data, (unsigned int)r->len};
	int rc;

	if (gnutls_pubkey_init(&pk) < 0)
		return false;
	rc = gnutls_pubkey_import(pk, &d, GNUTLS_X509_FMT_DER);
	gnutls_pubkey_deinit(pk);
	return rc >= 0;
}

const char *mta_dane_unusable_why(const struct mta_dns_tlsa *r)
{
	switch (r->usage) {
	case MTA_DANE_PKIX_TA:
		return "PKIX-TA(0) is not used for SMTP";
	case MTA_DANE_PKIX_EE:
		return "PKIX-EE(1) is not used for SMTP";
	case MTA_DANE_DANE_TA:
	case MTA_DANE_DANE_EE:
		break;
	default:
		return "unknown certificate usage";
	}
	if (r->selector > 1)
		return "unknown selector";
	if (r->len > 0 && r->data == NULL)
		return "missing data";
	switch (r->mtype) {
	case 0:
		if (r->len == 0)
			return "empty Full(0) data";
		if (r->len > UINT32_MAX)
			return "Full(0) data too long";
		if (r->selector == 0 && !full_cert_parses(r))
			return "Full(0) certificate does not parse";
		if (r->selector == 1 && !full_spki_parses(r))
			return "Full(0) public key does not parse";
		return NULL;
	case 1:
		return r->len == SHA256_LEN ? NULL :
		       "SHA2-256 digest is not 32 bytes";
	case 2:
		return r->len == SHA512_LEN ? NULL :
		       "SHA2-512 digest is not 64 bytes";
	default:
		return "unknown matching type";
	}
}

bool mta_dane_usable(const struct mta_dns_tlsa *r)
{
	return mta_dane_unusable_why(r) == NULL;
}

size_t mta_dane_count_usable(const struct mta_dns_tlsa *set, size_t n)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		if (mta_dane_usable(&set[i]))
			k++;
	return k;
}

const char *mta_dane_fail_rpt(enum mta_dane_fail f)
{
	switch (f) {
#define FAIL_CASE(e, rpt)                                                     \
	case MTA_DANE_FAIL_##e:                                               \
		return rpt;
		MTA_DANE_FAIL_MAP(FAIL_CASE)
#undef FAIL_CASE
	}
	return NULL;
}

/* ---- reasons ---- */

/* Copies name (NULL: "(none)") into dst as printable ASCII. */
static void sanitise(char *dst, size_t n, const char *name)
{
	size_t i = 0;

	if (name == NULL)
		name = "(none)";
	for (; name[i] != '\0' && i + 1 < n; i++) {
		unsigned char c = (unsigned char)name[i];
		dst[i] = (c > ' ' && c < 0x7f) ? (char)c : '?';
	}
	dst[i] = '\0';
}

/* Appends s to the string in dst (size n), truncating. */
static void append(char *dst, size_t n, const char *s)
{
	size_t len = strlen(dst), k = strlen(s);

	if (len + 1 >= n)
		return;
	if (k > n - 1 - len)
		k = n - 1 - len;
	memcpy(dst + len, s, k);
	dst[len + k] = '\0';
}

static void build_names(struct dane_ctx *c)
{
	const struct mta_dane_query *q = c->q;

	sanitise(c->base, sizeof(c->base), q->base);
	c->names[0] = '\0';
	append(c->names, sizeof(c->names), c->base);
	for (size_t i = 0; i < q->nnexthop; i++) {
		char n[NAME_MAX_LEN];

		sanitise(n, sizeof(n), q->nexthop[i]);
		append(c->names, sizeof(c->names), " or ");
		append(c->names, sizeof(c->names), n);
	}
}

__attribute__((format(printf, 2, 3)))
static void reason(struct mta_dane_result *res, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(res->reason, sizeof(res->reason), fmt, ap);
	va_end(ap);
}

/* Keeps the most specific failure seen so far (first one on ties). */
__attribute__((format(printf, 3, 4)))
static void failure(struct dane_ctx *c, enum mta_dane_fail f,
		    const char *fmt, ...)
{
	va_list ap;

	if (f <= c->res->fail)
		return;
	c->res->fail = f;
	va_start(ap, fmt);
	vsnprintf(c->res->reason, sizeof(c->res->reason), fmt, ap);
	va_end(ap);
}

static int error_out(struct mta_dane_result *res, int rc)
{
	res->outcome = MTA_DANE_ERROR;
	res->fail = MTA_DANE_FAIL_NONE;
	return rc;
}

/* ---- matching ---- */

static bool data_matches(const struct mta_dns_tlsa *r, const gnutls_datum_t *obj)
{
	unsigned char h[SHA512_LEN];

	if (obj->data == NULL || obj->size == 0)
		return false;
	switch (r->mtype) {
	case 0:
		return obj->size == r->len &&
		       memcmp(obj->data, r->data, r->len) == 0;
	case 1:
		return gnutls_hash_fast(GNUTLS_DIG_SHA256, obj->data, obj->size,
					h) == 0 &&
		       memcmp(h, r->data, SHA256_LEN) == 0;
	case 2:
		return gnutls_hash_fast(GNUTLS_DIG_SHA512, obj->data, obj->size,
					h) == 0 &&
		       memcmp(h, r->data, SHA512_LEN) == 0;
	default:
		return false;
	}
}

static bool cert_matches(const struct mta_dns_tlsa *r, const struct dane_cert *dc)
{
	return data_matches(r, r->selector == 0 ? dc->der : &dc->spki);
}

/* ---- names (RFC 7672 §3.2.3, RFC 6125 §6.4) ---- */

/* Length of name without one trailing dot. */
static size_t name_len(const char *s, size_t n)
{
	return (n > 0 && s[n - 1] == '.') ? n - 1 : n;
}

/* Does the presented identifier p (plen bytes) name the host ref? */
static bool name_match(const char *p, size_t plen, const char *ref)
{
	size_t rlen = name_len(ref, strlen(ref));
	const char *dot;

	plen = name_len(p, plen);
	if (plen == 0 || rlen == 0)
		return false;
	if (plen >= 2 && p[0] == '*' && p[1] == '.') {
		/* the whole left-most label, at least two labels after it */
		if (memchr(p + 2, '.', plen - 2) == NULL ||
		    memchr(p + 2, '*', plen - 2) != NULL)
			return false;
		dot = memchr(ref, '.', rlen);
		if (dot == NULL || dot == ref)
			return false;
		return (size_t)(ref + rlen - dot) == plen - 1 &&
		       strncasecmp(dot, p + 1, plen - 1) == 0;
	}
	if (memchr(p, '*', plen) != NULL)
		return false;
	return plen == rlen && strncasecmp(p, ref, rlen) == 0;
}

static bool leaf_names_ref(gnutls_x509_crt_t crt, const char *ref)
{
	char buf[NAME_MAX_LEN];
	size_t size;
	bool have_dns = false;
	int rc;

	for (unsigned seq = 0;; seq++) {
		size = sizeof(buf);
		rc = gnutls_x509_crt_get_subject_alt_name(crt, seq, buf, &size,
							  NULL);
		if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
			break;
		if (rc == GNUTLS_E_SHORT_MEMORY_BUFFER) {
			/* too long to be a host name, but it is a DNS-ID */
			have_dns = true;
			continue;
		}
		if (rc < 0)
			break;
		if (rc != GNUTLS_SAN_DNSNAME)
			continue;
		have_dns = true;
		/* an embedded NUL makes the identifier unusable */
		if (size < sizeof(buf) && strlen(buf) == size &&
		    name_match(buf, size, ref))
			return true;
	}
	if (have_dns)
		return false;

	/* no DNS-ID: the CN-ID, the last (most specific) CN (DANE-89) */
	unsigned last = 0;
	bool any = false;

	for (unsigned i = 0;; i++) {
		size = sizeof(buf);
		rc = gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME,
						   i, 0, buf, &size);
		if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE || i > 64)
			break;
		if (rc < 0 && rc != GNUTLS_E_SHORT_MEMORY_BUFFER)
			break;
		last = i;
		any = true;
	}
	if (!any)
		return false;
	size = sizeof(buf);
	rc = gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME,
					   last, 0, buf, &size);
	return rc >= 0 && size < sizeof(buf) && strlen(buf) == size &&
	       name_match(buf, size, ref);
}

static const char *leaf_matching_name(const struct dane_ctx *c)
{
	const struct mta_dane_query *q = c->q;
	gnutls_x509_crt_t leaf = c->cert[0].crt;

	if (q->base != NULL && leaf_names_ref(leaf, q->base))
		return q->base;
	for (size_t i = 0; i < q->nnexthop; i++)
		if (q->nexthop[i] != NULL && leaf_names_ref(leaf, q->nexthop[i]))
			return q->nexthop[i];
	return NULL;
}

/* ---- DANE-TA ---- */

/*
 * Builds the path leaf -> ... -> (issued by anchor) from the certificates
 * sent at depths 1 .. limit-1, verifies it with anchor as the only trust
 * anchor, then checks dates at now and the leaf's name.  depth is where
 * the anchor was found (for the reason), anchor_der its DER.
 */
/* Over 100 lines on purpose: the certificates it imports to build the
 * path and the GnuTLS verification it runs on them are released through
 * one exit; split, they would be passed around half-owned. */
static bool ta_verify(struct dane_ctx *c, size_t ri, const gnutls_datum_t *anchor_der,
		      size_t depth, size_t limit, bool from_dns)
{
	const struct mta_dns_tlsa *r = &c->q->tlsa[ri];
	gnutls_x509_crt_t path[MTA_DANE_CHAIN_MAX];
	bool used[MTA_DANE_CHAIN_MAX] = {false};
	gnutls_x509_trust_list_t tl = NULL;
	gnutls_x509_crt_t anchor = NULL;
	unsigned status = 0;
	size_t n = 1;
	char where[48];
	const char *name;
	bool ok = false;
	int rc;

	if (from_dns)
		snprintf(where, sizeof(where), "its own certificate (not sent)");
	else
		snprintf(where, sizeof(where), "the certificate at depth %zu",
			 depth);

	if (gnutls_x509_crt_init(&anchor) < 0)
		return false;
	if (gnutls_x509_crt_import(anchor, anchor_der, GNUTLS_X509_FMT_DER) < 0)
		goto out_anchor;

	path[0] = c->cert[0].crt;
	while (!gnutls_x509_crt_check_issuer(path[n - 1], anchor)) {
		size_t j;

		for (j = 1; j < limit; j++)
			if (!used[j] && gnutls_x509_crt_check_issuer(path[n - 1],
								     c->cert[j].crt))
				break;
		if (j == limit) {
			failure(c, MTA_DANE_FAIL_CHAIN,
				"DANE-TA %u %u %u matched %s but the chain sent by %s does not lead to it",
				r->usage, r->selector, r->mtype, where, c->base);
			goto out_anchor;
		}
		used[j] = true;
		path[n++] = c->cert[j].crt;
	}

	if (gnutls_x509_trust_list_init(&tl, 0) < 0)
		goto out_anchor;
	/* the list owns the anchor from here */
	if (gnutls_x509_trust_list_add_cas(tl, &anchor, 1, 0) != 1) {
		gnutls_x509_trust_list_deinit(tl, 1);
		goto out_anchor;
	}
	anchor = NULL;
	rc = gnutls_x509_trust_list_verify_crt2(tl, path, (unsigned)n, NULL, 0,
		GNUTLS_VERIFY_DO_NOT_ALLOW_UNSORTED_CHAIN |
		GNUTLS_VERIFY_DISABLE_TIME_CHECKS |
		GNUTLS_VERIFY_DISABLE_TRUSTED_TIME_CHECKS |
		GNUTLS_VERIFY_DISABLE_CRL_CHECKS, &status, NULL);
	if (rc < 0 || status != 0) {
		gnutls_datum_t o = {NULL, 0};
		char why[160] = "?";
		size_t wl;

		if (rc < 0)
			snprintf(why, sizeof(why), "%s", gnutls_strerror(rc));
		else if (gnutls_certificate_verification_status_print(status,
				GNUTLS_CRT_X509, &o, 0) == 0 && o.data != NULL)
			snprintf(why, sizeof(why), "%s", (const char *)o.data);
		wl = strlen(why);
		while (wl > 0 && why[wl - 1] == ' ')
			why[--wl] = '\0';
		failure(c, MTA_DANE_FAIL_CHAIN,
			"DANE-TA %u %u %u matched %s but the chain does not verify to it: %s",
			r->usage, r->selector, r->mtype, where, why);
		gnutls_free(o.data);
		goto out_tl;
	}

	/* dates of everything below the anchor, against the caller's clock */
	for (size_t k = 0; k < n; k++) {
		time_t nb = gnutls_x509_crt_get_activation_time(path[k]);
		time_t na = gnutls_x509_crt_get_expiration_time(path[k]);

		if (na == (time_t)-1 || c->q->now > na) {
			failure(c, MTA_DANE_FAIL_EXPIRED,
				"certificate expired (DANE-TA %u %u %u, %s at depth %zu)",
				r->usage, r->selector, r->mtype,
				k == 0 ? "leaf" : "intermediate", k);
			goto out_tl;
		}
		if (nb == (time_t)-1 || c->q->now < nb) {
			failure(c, MTA_DANE_FAIL_NOTYET,
				"certificate not yet valid (DANE-TA %u %u %u, %s at depth %zu)",
				r->usage, r->selector, r->mtype,
				k == 0 ? "leaf" : "intermediate", k);
			goto out_tl;
		}
	}

	name = leaf_matching_name(c);
	if (name == NULL) {
		failure(c, MTA_DANE_FAIL_NAME,
			"DANE-TA %u %u %u matched but certificate name mismatch (wanted %s)",
			r->usage, r->selector, r->mtype, c->names);
		goto out_tl;
	}

	ok = true;
	{
		char nm[NAME_MAX_LEN];

		sanitise(nm, sizeof(nm), name);
		reason(c->res,
		       "DANE-TA %u %u %u matched %s; chain, dates and name %s verified",
		       r->usage, r->selector, r->mtype, where, nm);
	}
	c->res->depth = from_dns ? n : depth;
	c->res->anchor_from_dns = from_dns;
out_tl:
	gnutls_x509_trust_list_deinit(tl, 1);
out_anchor:
	if (anchor != NULL)
		gnutls_x509_crt_deinit(anchor);
	return ok;
}

static bool try_ta(struct dane_ctx *c, size_t ri)
{
	const struct mta_dns_tlsa *r = &c->q->tlsa[ri];
	const struct dane_cert *leaf = &c->cert[0];
	bool seen = false;

	for (size_t i = 1; i < c->ncert; i++) {
		if (!cert_matches(r, &c->cert[i]))
			continue;
		seen = true;
		if (ta_verify(c, ri, c->cert[i].der, i, i, false))
			return true;
	}
	/* DANE-83: a full TA certificate in DNS need not be sent */
	if (!seen && r->selector == 0 && r->mtype == 0) {
		gnutls_datum_t d = {(unsigned char *)r->data,
				    (unsigned int)r->len};

		/* never the leaf itself (DANE-TA is for depth >= 1) */
		if (leaf->der->size == r->len &&
		    memcmp(leaf->der->data, r->data, r->len) == 0)
			return false;
		return ta_verify(c, ri, &d, 0, c->ncert, true);
	}
	return false;
}

/* ---- the verdict ---- */

static void agility(struct dane_ctx *c)
{
	const struct mta_dane_query *q = c->q;
	bool has512[2][2] = {{false}};

	for (size_t i = 0; i < q->ntlsa; i++)
		if (c->active[i] && q->tlsa[i].mtype == 2)
			has512[q->tlsa[i].usage - 2][q->tlsa[i].selector] = true;
	for (size_t i = 0; i < q->ntlsa; i++) {
		const struct mta_dns_tlsa *r = &q->tlsa[i];

		if (c->active[i] && r->mtype == 1 &&
		    has512[r->usage - 2][r->selector]) {
			c->active[i] = false;
			c->res->superseded++;
		}
	}
}

static int load_chain(struct dane_ctx *c)
{
	const struct mta_dane_query *q = c->q;

	for (size_t i = 0; i < q->nchain; i++) {
		struct dane_cert *dc = &c->cert[i];
		gnutls_pubkey_t pk;
		int rc;

		rc = gnutls_x509_crt_init(&dc->crt);
		if (rc < 0)
			return -ENOMEM;
		c->ncert = i + 1;
		dc->der = &q->chain[i];
		if (dc->der->data == NULL || dc->der->size == 0 ||
		    gnutls_x509_crt_import(dc->crt, dc->der,
					   GNUTLS_X509_FMT_DER) < 0) {
			reason(c->res,
			       "certificate at depth %zu presented by %s does not parse",
			       i, c->base);
			return MTA_ETLS;
		}
		/* SPKI DER; not gnutls_x509_crt_get_spki(), which returns
		 * the signature parameters.  No SPKI: selector 1 never
		 * matches this certificate. */
		if (gnutls_pubkey_init(&pk) < 0)
			return -ENOMEM;
		if (gnutls_pubkey_import_x509(pk, dc->crt, 0) >= 0 &&
		    gnutls_pubkey_export2(pk, GNUTLS_X509_FMT_DER, &dc->spki) < 0)
			dc->spki.data = NULL, dc->spki.size = 0;
		gnutls_pubkey_deinit(pk);
	}
	return 0;
}

static void free_chain(struct dane_ctx *c)
{
	while (c->ncert > 0) {
		struct dane_cert *dc = &c->cert[--c->ncert];

		gnutls_free(dc->spki.data);
		gnutls_x509_crt_deinit(dc->crt);
	}
}

static void matched(struct dane_ctx *c, size_t ri)
{
	const struct mta_dns_tlsa *r = &c->q->tlsa[ri];
	struct mta_dane_result *res = c->res;

	res->outcome = MTA_DANE_MATCH;
	res->fail = MTA_DANE_FAIL_NONE;
	res->record = ri;
	res->usage = r->usage;
	res->selector = r->selector;
	res->mtype = r->mtype;
}

int mta_dane_verify(const struct mta_dane_query *q,
		    struct mta_dane_result *res)
{
	struct dane_ctx *c;
	int rc = 0;

	memset(res, 0, sizeof(*res));
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		reason(res, "out of memory");
		return error_out(res, -ENOMEM);
	}
	c->q = q;
	c->res = res;
	build_names(c);

	if (q->ntlsa == 0 || q->tlsa == NULL) {
		reason(res, "no TLSA records for %s", c->base);
		rc = error_out(res, -EINVAL);
		goto out;
	}
	if (q->ntlsa > MTA_DANE_TLSA_MAX) {
		reason(res, "too many TLSA records for %s (%zu, max %d)",
		       c->base, q->ntlsa, MTA_DANE_TLSA_MAX);
		rc = error_out(res, MTA_ETOOBIG);
		goto out;
	}
	for (size_t i = 0; i < q->ntlsa; i++) {
		c->active[i] = mta_dane_usable(&q->tlsa[i]);
		res->usable += c->active[i];
	}
	if (res->usable == 0) {
		res->outcome = MTA_DANE_UNUSABLE_ONLY;
		reason(res,
		       "all %zu TLSA records for %s are unusable: TLS required, not authenticated",
		       q->ntlsa, c->base);
		goto out;
	}
	agility(c);

	if (q->nchain == 0 || q->chain == NULL) {
		reason(res, "no certificate presented by %s", c->base);
		rc = error_out(res, MTA_ETLS);
		goto out;
	}
	if (q->nchain > MTA_DANE_CHAIN_MAX) {
		reason(res, "certificate chain from %s too long (%zu, max %d)",
		       c->base, q->nchain, MTA_DANE_CHAIN_MAX);
		rc = error_out(res, MTA_ETOOBIG);
		goto out;
	}
	rc = load_chain(c);
	if (rc < 0) {
		if (rc == -ENOMEM)
			reason(res, "out of memory");
		error_out(res, rc);
		goto out_chain;
	}

	/* DANE-EE: the leaf only, nothing else (DANE-70..75) */
	for (size_t i = 0; i < q->ntlsa; i++) {
		const struct mta_dns_tlsa *r = &q->tlsa[i];

		if (!c->active[i] || r->usage != MTA_DANE_DANE_EE)
			continue;
		if (cert_matches(r, &c->cert[0])) {
			matched(c, i);
			res->depth = 0;
			reason(res, "DANE-EE %u %u %u matched the certificate of %s",
			       r->usage, r->selector, r->mtype, c->base);
			goto out_chain;
		}
	}
	/* DANE-TA: an anchor sent at depth >= 1, or a "2 0 0" in DNS */
	for (size_t i = 0; i < q->ntlsa; i++) {
		if (!c->active[i] || q->tlsa[i].usage != MTA_DANE_DANE_TA)
			continue;
		if (try_ta(c, i)) {
			matched(c, i);
			goto out_chain;
		}
	}

	res->outcome = MTA_DANE_NO_MATCH;
	if (res->fail == MTA_DANE_FAIL_NONE) {
		res->fail = MTA_DANE_FAIL_NOMATCH;
		reason(res,
		       "TLSA records for %s did not match the certificate presented",
		       c->base);
	}
out_chain:
	free_chain(c);
out:
	free(c);
	return rc;
}
