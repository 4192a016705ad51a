/*
 * ct.c - Certificate Transparency: the log list and the embedded-SCT
 * check.  See ct.h.
 */
#include "ct.h"

#include "err.h"

#include <errno.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <gnutls/x509-ext.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CT_SCT_OID "1.3.6.1.4.1.11129.2.4.2"
/* DER of the OID above, tag and length included */
static const uint8_t sct_oid_der[] = {0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04,
				      0x01, 0xd6, 0x79, 0x02, 0x04, 0x02};

#define CT_JSON_NODES_MAX (1u << 20)

const char *mta_ct_verdict_name(enum mta_ct_verdict v)
{
	switch (v) {
#define MTA_CT_E(e, name)                                                     \
	case MTA_CT_##e:                                                      \
		return name;
		MTA_CT_VERDICT_MAP(MTA_CT_E)
#undef MTA_CT_E
	}
	return "?";
}

/* ---- a bounded DER walker ------------------------------------------- */

/* One TLV at p[0..n): *tag, *hdr (tag + length bytes) and *clen (content
 * length); the whole TLV fits in n.  Single-byte tags, definite lengths
 * of at most 4 bytes, minimal encoding not required. */
static int der_tlv(const uint8_t *p, size_t n, uint8_t *tag, size_t *hdr,
		   size_t *clen)
{
	size_t len, h;

	if (n < 2 || (p[0] & 0x1f) == 0x1f)
		return MTA_ECORRUPT;
	*tag = p[0];
	if (p[1] < 0x80) {
		len = p[1];
		h = 2;
	} else {
		size_t nb = p[1] & 0x7f;
		if (nb == 0 || nb > 4 || n < 2 + nb)
			return MTA_ECORRUPT;
		len = 0;
		for (size_t i = 0; i < nb; i++)
			len = (len << 8) | p[2 + i];
		h = 2 + nb;
	}
	if (len > n - h)
		return MTA_ECORRUPT;
	*hdr = h;
	*clen = len;
	return 0;
}

/* Writes a DER header (tag, definite length) at out; returns its size. */
static size_t der_put_hdr(uint8_t *out, uint8_t tag, size_t len)
{
	size_t nb = 0;

	out[0] = tag;
	if (len < 0x80) {
		out[1] = (uint8_t)len;
		return 2;
	}
	for (size_t l = len; l > 0; l >>= 8)
		nb++;
	out[1] = (uint8_t)(0x80 | nb);
	for (size_t i = 0; i < nb; i++)
		out[2 + i] = (uint8_t)(len >> (8 * (nb - 1 - i)));
	return 2 + nb;
}

static size_t der_hdr_size(size_t len)
{
	size_t nb = 0;

	if (len < 0x80)
		return 2;
	for (size_t l = len; l > 0; l >>= 8)
		nb++;
	return 2 + nb;
}

/* The TBSCertificate of cert: its content span (tbs, tbslen). */
static int der_tbs(const uint8_t *cert, size_t n, const uint8_t **tbs,
		   size_t *tbslen)
{
	uint8_t tag;
	size_t h, l, h2, l2;

	if (der_tlv(cert, n, &tag, &h, &l) != 0 || tag != 0x30)
		return MTA_ECORRUPT;
	if (der_tlv(cert + h, l, &tag, &h2, &l2) != 0 || tag != 0x30)
		return MTA_ECORRUPT;
	*tbs = cert + h + h2;
	*tbslen = l2;
	return 0;
}

/* The SubjectPublicKeyInfo TLV (whole) of a DER certificate */
static int der_spki(const uint8_t *cert, size_t n, const uint8_t **spki,
		    size_t *spkilen)
{
	const uint8_t *p;
	size_t left, idx = 0;

	if (der_tbs(cert, n, &p, &left) != 0)
		return MTA_ECORRUPT;
	while (left > 0) {
		uint8_t tag;
		size_t h, l;

		if (der_tlv(p, left, &tag, &h, &l) != 0)
			return MTA_ECORRUPT;
		if (idx == 0 && tag == 0xa0) {
			/* version: not counted */
		} else if (++idx == 6) {
			if (tag != 0x30)
				return MTA_ECORRUPT;
			*spki = p;
			*spkilen = h + l;
			return 0;
		}
		p += h + l;
		left -= h + l;
	}
	return MTA_ECORRUPT;
}

/* Just over 100 lines: one DER walk that finds the extensions element and
 * copies the TBS without the SCT list, rewriting three nested lengths;
 * the offsets it finds are all used together at the end. */
int mta_ct_precert_tbs(const uint8_t *cert, size_t n, uint8_t *out,
		       size_t cap, size_t *outlen)
{
	const uint8_t *tbs, *p, *ext = NULL;
	size_t tbslen, left, extlen = 0, pre = 0, post = 0, keep = 0;
	size_t exts_content = 0, off;
	uint8_t tag;
	size_t h, l;

	if (n > MTA_CT_CERT_MAX)
		return MTA_ETOOBIG;
	if (der_tbs(cert, n, &tbs, &tbslen) != 0)
		return MTA_ECORRUPT;
	/* find [3] (extensions) among the TBS elements */
	p = tbs;
	left = tbslen;
	while (left > 0) {
		if (der_tlv(p, left, &tag, &h, &l) != 0)
			return MTA_ECORRUPT;
		if (tag == 0xa3) {
			ext = p;
			extlen = h + l;
			pre = (size_t)(p - tbs);
			post = tbslen - pre - extlen;
			break;
		}
		p += h + l;
		left -= h + l;
	}
	if (ext == NULL) {
		/* no extensions: nothing to strip */
		pre = tbslen;
		post = 0;
	} else {
		/* [3] { SEQUENCE OF Extension } */
		size_t h3 = 0, l3 = 0, hs = 0, ls = 0;
		const uint8_t *q;

		if (der_tlv(ext, extlen, &tag, &h3, &l3) != 0 ||
		    der_tlv(ext + h3, l3, &tag, &hs, &ls) != 0 ||
		    tag != 0x30 || hs + ls != l3)
			return MTA_ECORRUPT;
		q = ext + h3 + hs;
		left = ls;
		while (left > 0) {
			size_t he, le, ho, lo;
			if (der_tlv(q, left, &tag, &he, &le) != 0 ||
			    tag != 0x30)
				return MTA_ECORRUPT;
			if (der_tlv(q + he, le, &tag, &ho, &lo) != 0 ||
			    tag != 0x06)
				return MTA_ECORRUPT;
			if (!(ho + lo == sizeof(sct_oid_der) &&
			      memcmp(q + he, sct_oid_der,
				     sizeof(sct_oid_der)) == 0))
				keep += he + le;
			q += he + le;
			left -= he + le;
		}
		exts_content = keep;
	}
	{
		size_t body = pre + post;
		size_t total;

		if (ext != NULL && exts_content > 0) {
			size_t seq = der_hdr_size(exts_content) + exts_content;
			body += der_hdr_size(seq) + seq;
		}
		total = der_hdr_size(body) + body;
		if (total > cap)
			return MTA_ETOOBIG;
		off = der_put_hdr(out, 0x30, body);
		memcpy(out + off, tbs, pre);
		off += pre;
		if (ext != NULL && exts_content > 0) {
			size_t seq = der_hdr_size(exts_content) + exts_content;
			size_t h3 = 0, l3 = 0, hs = 0, ls = 0;
			const uint8_t *q;

			off += der_put_hdr(out + off, 0xa3, seq);
			off += der_put_hdr(out + off, 0x30, exts_content);
			/* checked by the first pass; checked again so that no
			 * path can loop on a failed read */
			if (der_tlv(ext, extlen, &tag, &h3, &l3) != 0 ||
			    der_tlv(ext + h3, l3, &tag, &hs, &ls) != 0)
				return MTA_ECORRUPT;
			q = ext + h3 + hs;
			left = ls;
			while (left > 0) {
				size_t he = 0, le = 0, ho = 0, lo = 0;
				if (der_tlv(q, left, &tag, &he, &le) != 0 ||
				    der_tlv(q + he, le, &tag, &ho, &lo) != 0)
					return MTA_ECORRUPT;
				if (!(ho + lo == sizeof(sct_oid_der) &&
				      memcmp(q + he, sct_oid_der,
					     sizeof(sct_oid_der)) == 0)) {
					memcpy(out + off, q, he + le);
					off += he + le;
				}
				q += he + le;
				left -= he + le;
			}
		}
		if (post > 0) {
			memcpy(out + off, tbs + pre + extlen, post);
			off += post;
		}
		*outlen = off;
	}
	return 0;
}

/* ---- the SCT list (RFC 6962 §3.3) ----------------------------------- */

static uint64_t get_be(const uint8_t *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

int mta_ct_parse_scts(const uint8_t *p, size_t n, struct mta_ct_sct *out,
		      size_t max, size_t *nout)
{
	size_t total, off = 2, k = 0;

	*nout = 0;
	if (n < 2)
		return MTA_ECORRUPT;
	total = (size_t)get_be(p, 2);
	if (total != n - 2 || total == 0)
		return MTA_ECORRUPT;
	while (off < n) {
		size_t slen, o;
		const uint8_t *s;
		struct mta_ct_sct sct;

		if (n - off < 2)
			return MTA_ECORRUPT;
		slen = (size_t)get_be(p + off, 2);
		off += 2;
		if (slen == 0 || slen > n - off)
			return MTA_ECORRUPT;
		s = p + off;
		off += slen;
		/* version(1) log_id(32) timestamp(8) ext<2> hash sig sig<2> */
		if (slen < 1 + 32 + 8 + 2)
			return MTA_ECORRUPT;
		memset(&sct, 0, sizeof(sct));
		sct.version = s[0];
		sct.log_id = s + 1;
		sct.timestamp = get_be(s + 33, 8);
		o = 41;
		sct.ext_len = (size_t)get_be(s + o, 2);
		o += 2;
		if (sct.ext_len > slen - o)
			return MTA_ECORRUPT;
		sct.ext = s + o;
		o += sct.ext_len;
		if (slen - o < 4)
			return MTA_ECORRUPT;
		sct.hash_alg = s[o];
		sct.sig_alg = s[o + 1];
		sct.sig_len = (size_t)get_be(s + o + 2, 2);
		o += 4;
		if (sct.sig_len != slen - o || sct.sig_len == 0)
			return MTA_ECORRUPT;
		sct.sig = s + o;
		if (k >= max)
			return MTA_ETOOBIG;
		out[k++] = sct;
	}
	*nout = k;
	return 0;
}

/* ---- the check ------------------------------------------------------ */

static const struct mta_ct_log *find_log(const struct mta_ct_loglist *l,
					 const uint8_t *id)
{
	for (size_t i = 0; l != NULL && i < l->nlogs; i++)
		if (memcmp(l->logs[i].id, id, 32) == 0)
			return &l->logs[i];
	return NULL;
}

static bool state_counts(enum mta_ct_state s)
{
	switch (s) {
	case MTA_CT_STATE_QUALIFIED:
	case MTA_CT_STATE_USABLE:
	case MTA_CT_STATE_READONLY:
		return true;
	case MTA_CT_STATE_NONE:
	case MTA_CT_STATE_PENDING:
	case MTA_CT_STATE_RETIRED:
	case MTA_CT_STATE_REJECTED:
		return false;
	}
	return false;
}

/* Verifies one SCT: NULL when it counts, else why not (static text). */
static const char *check_one(const struct mta_ct_loglist *l,
			     const struct mta_ct_sct *s,
			     const uint8_t ikh[32], const uint8_t *tbs,
			     size_t tbslen, int64_t not_after_ms,
			     int64_t now_ms, const struct mta_ct_log **logp)
{
	const struct mta_ct_log *lg;
	gnutls_sign_algorithm_t alg;
	gnutls_datum_t data, sig;
	uint8_t *buf;
	size_t n, o = 0;
	int rc;

	*logp = NULL;
	if (s->version != 0)
		return "unknown SCT version";
	lg = find_log(l, s->log_id);
	if (lg == NULL)
		return "log not in the list";
	*logp = lg;
	if (!state_counts(lg->state))
		return lg->state == MTA_CT_STATE_RETIRED ? "log retired"
							 : "log not usable";
	if ((int64_t)s->timestamp < lg->state_ms)
		return "SCT older than the log's state";
	if (s->timestamp > (uint64_t)now_ms)
		return "timestamp in the future";
	if ((lg->ti_start_ms != 0 || lg->ti_end_ms != 0) &&
	    (not_after_ms < lg->ti_start_ms || not_after_ms >= lg->ti_end_ms))
		return "certificate outside the log's temporal interval";
	if (s->hash_alg == 4 && s->sig_alg == 3)
		alg = GNUTLS_SIGN_ECDSA_SHA256;
	else if (s->hash_alg == 4 && s->sig_alg == 1)
		alg = GNUTLS_SIGN_RSA_SHA256;
	else
		return "unsupported signature algorithm";
	n = 1 + 1 + 8 + 2 + 32 + 3 + tbslen + 2 + s->ext_len;
	buf = malloc(n);
	if (buf == NULL)
		return "out of memory";
	buf[o++] = 0; /* v1 */
	buf[o++] = 0; /* certificate_timestamp */
	for (int i = 7; i >= 0; i--)
		buf[o++] = (uint8_t)(s->timestamp >> (8 * i));
	buf[o++] = 0; /* precert_entry */
	buf[o++] = 1;
	memcpy(buf + o, ikh, 32);
	o += 32;
	buf[o++] = (uint8_t)(tbslen >> 16);
	buf[o++] = (uint8_t)(tbslen >> 8);
	buf[o++] = (uint8_t)tbslen;
	memcpy(buf + o, tbs, tbslen);
	o += tbslen;
	buf[o++] = (uint8_t)(s->ext_len >> 8);
	buf[o++] = (uint8_t)s->ext_len;
	if (s->ext_len > 0)
		memcpy(buf + o, s->ext, s->ext_len);
	o += s->ext_len;
	data.data = buf;
	data.size = (unsigned)o;
	sig.data = (unsigned char *)s->sig;
	sig.size = (unsigned)s->sig_len;
	rc = gnutls_pubkey_verify_data2(lg->key, alg, 0, &data, &sig);
	free(buf);
	return rc < 0 ? "bad signature" : NULL;
}

static void rprintf(struct mta_ct_result *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void rprintf(struct mta_ct_result *r, const char *fmt, ...)
{
	size_t len = strlen(r->why);
	va_list ap;

	if (len + 1 >= sizeof(r->why))
		return;
	va_start(ap, fmt);
	vsnprintf(r->why + len, sizeof(r->why) - len, fmt, ap);
	va_end(ap);
}

/* The SCT list bytes inside the leaf's extension (malloc'd in *ext) */
static int leaf_scts(const gnutls_datum_t *leaf, gnutls_datum_t *ext,
		     const uint8_t **list, size_t *listlen,
		     int64_t *not_after_ms)
{
	gnutls_x509_crt_t crt;
	unsigned critical = 0;
	uint8_t tag;
	size_t h, l;
	int rc;

	ext->data = NULL;
	ext->size = 0;
	if (gnutls_x509_crt_init(&crt) < 0)
		return -ENOMEM;
	if (gnutls_x509_crt_import(crt, leaf, GNUTLS_X509_FMT_DER) < 0) {
		gnutls_x509_crt_deinit(crt);
		return MTA_ECORRUPT;
	}
	*not_after_ms = (int64_t)gnutls_x509_crt_get_expiration_time(crt) *
			1000;
	rc = gnutls_x509_crt_get_extension_by_oid2(crt, CT_SCT_OID, 0, ext,
						   &critical);
	gnutls_x509_crt_deinit(crt);
	if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
		return MTA_ENOTFOUND;
	if (rc < 0)
		return MTA_ECORRUPT;
	/* extnValue is the DER OCTET STRING of the TLS list */
	if (der_tlv(ext->data, ext->size, &tag, &h, &l) != 0 || tag != 0x04 ||
	    h + l != ext->size)
		return MTA_ECORRUPT;
	*list = ext->data + h;
	*listlen = l;
	return 0;
}

/* GnuTLS's reading of the same extension: it must accept it too */
static bool gnutls_accepts(const gnutls_datum_t *ext, size_t nsct)
{
	gnutls_x509_ct_scts_t scts;
	unsigned i;
	bool ok;

	if (gnutls_x509_ext_ct_scts_init(&scts) < 0)
		return false;
	ok = gnutls_x509_ext_ct_import_scts(ext, scts, 0) >= 0;
	for (i = 0; ok; i++) {
		time_t ts;
		gnutls_datum_t id, sig;
		gnutls_sign_algorithm_t alg;
		int rc = gnutls_x509_ct_sct_get(scts, i, &ts, &id, &alg, &sig);
		if (rc < 0)
			break;
		gnutls_free(id.data);
		gnutls_free(sig.data);
	}
	gnutls_x509_ext_ct_scts_deinit(scts);
	/* GnuTLS skips SCTs with algorithms it does not know; it may
	 * count fewer, never more */
	return ok && i <= nsct;
}

void mta_ct_check(const struct mta_ct_loglist *l, const gnutls_datum_t *leaf,
		  const gnutls_datum_t *issuer, unsigned need, int64_t now_ms,
		  struct mta_ct_result *r)
{
	struct mta_ct_sct scts[MTA_CT_SCTS_MAX];
	gnutls_datum_t ext = {NULL, 0};
	const uint8_t *list = NULL, *spki;
	size_t listlen = 0, nsct = 0, spkilen, tbslen = 0;
	uint8_t ikh[32], *tbs = NULL;
	bool ops_seen[MTA_CT_LOGS_MAX];
	int64_t not_after_ms = 0;
	unsigned nfail = 0;
	int rc;

	memset(r, 0, sizeof(*r));
	memset(ops_seen, 0, sizeof(ops_seen));
	if (need == 0)
		need = 1;
	rc = leaf_scts(leaf, &ext, &list, &listlen, &not_after_ms);
	if (rc == MTA_ENOTFOUND) {
		r->verdict = MTA_CT_MISSING;
		rprintf(r, "no SCT in the certificate");
		goto out;
	}
	if (rc != 0 || mta_ct_parse_scts(list, listlen, scts, MTA_CT_SCTS_MAX,
					 &nsct) != 0 ||
	    !gnutls_accepts(&ext, nsct)) {
		r->verdict = MTA_CT_INVALID;
		rprintf(r, "SCT list does not parse");
		goto out;
	}
	r->nsct = (unsigned)nsct;
	if (issuer == NULL ||
	    der_spki(issuer->data, issuer->size, &spki, &spkilen) != 0 ||
	    gnutls_hash_fast(GNUTLS_DIG_SHA256, spki, spkilen, ikh) < 0) {
		r->verdict = MTA_CT_INVALID;
		rprintf(r, "issuer certificate unavailable");
		goto out;
	}
	tbs = malloc(leaf->size);
	if (tbs == NULL ||
	    mta_ct_precert_tbs(leaf->data, leaf->size, tbs, leaf->size,
			       &tbslen) != 0) {
		r->verdict = MTA_CT_INVALID;
		rprintf(r, "certificate does not parse");
		goto out;
	}
	for (size_t i = 0; i < nsct; i++) {
		const struct mta_ct_log *lg;
		const char *bad = check_one(l, &scts[i], ikh, tbs, tbslen,
					    not_after_ms, now_ms, &lg);
		if (bad != NULL) {
			nfail++;
			rprintf(r, "%ssct %zu%s%s: %s", nfail > 1 ? "; " : "",
				i + 1, lg ? " " : "", lg ? lg->desc : "",
				bad);
			continue;
		}
		r->nvalid++;
		if (lg->op < MTA_CT_LOGS_MAX && !ops_seen[lg->op]) {
			ops_seen[lg->op] = true;
			r->nops++;
		}
	}
	if (r->nvalid >= need && r->nops >= 2)
		r->verdict = MTA_CT_OK;
	else if (r->nvalid >= need)
		r->verdict = MTA_CT_ONE_OPERATOR;
	else if (nfail > 0)
		r->verdict = MTA_CT_INVALID;
	else
		r->verdict = MTA_CT_MISSING;
	{
		char head[96];
		size_t hl;
		snprintf(head, sizeof(head), "%u SCT%s, %u valid from %u "
			 "operator%s%s", r->nsct, r->nsct == 1 ? "" : "s",
			 r->nvalid, r->nops, r->nops == 1 ? "" : "s",
			 r->why[0] ? ": " : "");
		hl = strlen(head);
		if (hl < sizeof(r->why)) {
			size_t wl = strnlen(r->why, sizeof(r->why) - 1 - hl);
			memmove(r->why + hl, r->why, wl);
			memcpy(r->why, head, hl);
			r->why[hl + wl] = '\0';
		}
	}
out:
	free(tbs);
	gnutls_free(ext.data);
}

/* ---- JSON (the subset the log list needs) --------------------------- */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jnode {
	enum jtype t;
	char *key;   /* member name (object children), malloc'd */
	char *str;   /* J_STR: unescaped, NUL-terminated, malloc'd */
	size_t slen;
	int child;   /* first child or -1 */
	int next;    /* next sibling or -1 */
};

struct jdoc {
	struct jnode *n;
	size_t len, cap;
	const char *p, *end;
	char *err;
	size_t errlen;
	bool failed;
};

static void jerr(struct jdoc *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void jerr(struct jdoc *d, const char *fmt, ...)
{
	va_list ap;

	if (d->failed)
		return;
	d->failed = true;
	va_start(ap, fmt);
	vsnprintf(d->err, d->errlen, fmt, ap);
	va_end(ap);
}

static void jws(struct jdoc *d)
{
	while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' ||
				 *d->p == '\n' || *d->p == '\r'))
		d->p++;
}

static int jnew(struct jdoc *d, enum jtype t)
{
	if (d->len == d->cap) {
		size_t nc = d->cap ? d->cap * 2 : 64;
		struct jnode *nn;
		if (nc > CT_JSON_NODES_MAX) {
			jerr(d, "too many JSON values");
			return -1;
		}
		nn = realloc(d->n, nc * sizeof(*nn));
		if (nn == NULL) {
			jerr(d, "out of memory");
			return -1;
		}
		d->n = nn;
		d->cap = nc;
	}
	memset(&d->n[d->len], 0, sizeof(d->n[0]));
	d->n[d->len].t = t;
	d->n[d->len].child = -1;
	d->n[d->len].next = -1;
	return (int)d->len++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool hex4(struct jdoc *d, unsigned *v)
{
	*v = 0;
	if (d->end - d->p < 4)
		return false;
	for (int i = 0; i < 4; i++) {
		int h = hexval(d->p[i]);
		if (h < 0)
			return false;
		*v = (*v << 4) | (unsigned)h;
	}
	d->p += 4;
	return true;
}

/* Parses a string at d->p (after the quote); malloc'd result. */
/* Just over 100 lines: one loop over the input with one growing output
 * buffer and one error exit, shared by every escape case (RFC 8259 7). */
static char *jstring(struct jdoc *d, size_t *lenp)
{
	size_t cap = 32, len = 0;
	char *s = malloc(cap);

	if (s == NULL) {
		jerr(d, "out of memory");
		return NULL;
	}
	for (;;) {
		unsigned char c;
		unsigned cp;
		char u[4];
		size_t ul = 0;

		if (d->p >= d->end) {
			jerr(d, "unterminated string");
			goto fail;
		}
		c = (unsigned char)*d->p++;
		if (c == '"')
			break;
		if (c < 0x20) {
			jerr(d, "control character in string");
			goto fail;
		}
		if (c != '\\') {
			u[ul++] = (char)c;
		} else {
			if (d->p >= d->end) {
				jerr(d, "bad escape");
				goto fail;
			}
			c = (unsigned char)*d->p++;
			switch (c) {
			case '"': case '\\': case '/':
				u[ul++] = (char)c;
				break;
			case 'b': u[ul++] = '\b'; break;
			case 'f': u[ul++] = '\f'; break;
			case 'n': u[ul++] = '\n'; break;
			case 'r': u[ul++] = '\r'; break;
			case 't': u[ul++] = '\t'; break;
			case 'u':
				if (!hex4(d, &cp))
					goto bad;
				if (cp >= 0xd800 && cp < 0xdc00) {
					unsigned lo;
					if (d->end - d->p < 2 || d->p[0] != '\\' ||
					    d->p[1] != 'u')
						goto bad;
					d->p += 2;
					if (!hex4(d, &lo) || lo < 0xdc00 ||
					    lo > 0xdfff)
						goto bad;
					cp = 0x10000 + ((cp - 0xd800) << 10) +
					     (lo - 0xdc00);
				} else if (cp >= 0xdc00 && cp < 0xe000) {
					goto bad;
				}
				if (cp == 0)
					goto bad; /* no NUL in our strings */
				if (cp < 0x80) {
					u[ul++] = (char)cp;
				} else if (cp < 0x800) {
					u[ul++] = (char)(0xc0 | (cp >> 6));
					u[ul++] = (char)(0x80 | (cp & 0x3f));
				} else if (cp < 0x10000) {
					u[ul++] = (char)(0xe0 | (cp >> 12));
					u[ul++] = (char)(0x80 | ((cp >> 6) & 0x3f));
					u[ul++] = (char)(0x80 | (cp & 0x3f));
				} else {
					u[ul++] = (char)(0xf0 | (cp >> 18));
					u[ul++] = (char)(0x80 | ((cp >> 12) & 0x3f));
					u[ul++] = (char)(0x80 | ((cp >> 6) & 0x3f));
					u[ul++] = (char)(0x80 | (cp & 0x3f));
				}
				break;
			default:
				goto bad;
			}
		}
		if (len + ul + 1 > cap) {
			char *ns;
			cap *= 2;
			ns = realloc(s, cap);
			if (ns == NULL) {
				jerr(d, "out of memory");
				goto fail;
			}
			s = ns;
		}
		memcpy(s + len, u, ul);
		len += ul;
	}
	s[len] = '\0';
	*lenp = len;
	return s;
bad:
	jerr(d, "bad escape in string");
fail:
	free(s);
	return NULL;
}

static int jvalue(struct jdoc *d, int depth);

static bool jlit(struct jdoc *d, const char *lit)
{
	size_t n = strlen(lit);
	if ((size_t)(d->end - d->p) < n || memcmp(d->p, lit, n) != 0)
		return false;
	d->p += n;
	return true;
}

static int jcontainer(struct jdoc *d, int depth, bool obj)
{
	int me = jnew(d, obj ? J_OBJ : J_ARR), last = -1;
	char close = obj ? '}' : ']';

	if (me < 0)
		return -1;
	jws(d);
	if (d->p < d->end && *d->p == close) {
		d->p++;
		return me;
	}
	for (;;) {
		char *key = NULL;
		size_t kl;
		int v;

		jws(d);
		if (obj) {
			if (d->p >= d->end || *d->p != '"') {
				jerr(d, "member name expected");
				return -1;
			}
			d->p++;
			key = jstring(d, &kl);
			if (key == NULL)
				return -1;
			jws(d);
			if (d->p >= d->end || *d->p != ':') {
				free(key);
				jerr(d, "':' expected");
				return -1;
			}
			d->p++;
		}
		v = jvalue(d, depth + 1);
		if (v < 0) {
			free(key);
			return -1;
		}
		d->n[v].key = key;
		if (last < 0)
			d->n[me].child = v;
		else
			d->n[last].next = v;
		last = v;
		jws(d);
		if (d->p < d->end && *d->p == ',') {
			d->p++;
			continue;
		}
		if (d->p < d->end && *d->p == close) {
			d->p++;
			return me;
		}
		jerr(d, "',' or '%c' expected", close);
		return -1;
	}
}

static int jvalue(struct jdoc *d, int depth)
{
	int me;

	if (depth > MTA_CT_JSON_DEPTH) {
		jerr(d, "JSON nested too deeply");
		return -1;
	}
	jws(d);
	if (d->p >= d->end) {
		jerr(d, "value expected");
		return -1;
	}
	switch (*d->p) {
	case '{':
		d->p++;
		return jcontainer(d, depth, true);
	case '[':
		d->p++;
		return jcontainer(d, depth, false);
	case '"': {
		size_t len;
		char *s;
		d->p++;
		s = jstring(d, &len);
		if (s == NULL)
			return -1;
		me = jnew(d, J_STR);
		if (me < 0) {
			free(s);
			return -1;
		}
		d->n[me].str = s;
		d->n[me].slen = len;
		return me;
	}
	case 't':
	case 'f':
		if (jlit(d, "true") || jlit(d, "false"))
			return jnew(d, J_BOOL);
		break;
	case 'n':
		if (jlit(d, "null"))
			return jnew(d, J_NULL);
		break;
	default: {
		/* number: -?int frac? exp? */
		const char *s = d->p;
		if (d->p < d->end && *d->p == '-')
			d->p++;
		if (d->p >= d->end || *d->p < '0' || *d->p > '9')
			break;
		if (*d->p == '0')
			d->p++;
		else
			while (d->p < d->end && *d->p >= '0' && *d->p <= '9')
				d->p++;
		if (d->p < d->end && *d->p == '.') {
			d->p++;
			if (d->p >= d->end || *d->p < '0' || *d->p > '9')
				break;
			while (d->p < d->end && *d->p >= '0' && *d->p <= '9')
				d->p++;
		}
		if (d->p < d->end && (*d->p == 'e' || *d->p == 'E')) {
			d->p++;
			if (d->p < d->end && (*d->p == '+' || *d->p == '-'))
				d->p++;
			if (d->p >= d->end || *d->p < '0' || *d->p > '9')
				break;
			while (d->p < d->end && *d->p >= '0' && *d->p <= '9')
				d->p++;
		}
		if (d->p > s)
			return jnew(d, J_NUM);
		break;
	}
	}
	jerr(d, "invalid JSON value at offset %zu",
	     (size_t)(d->end - d->p));
	return -1;
}

static void jfree(struct jdoc *d)
{
	for (size_t i = 0; i < d->len; i++) {
		free(d->n[i].key);
		free(d->n[i].str);
	}
	free(d->n);
}

static int jget(const struct jdoc *d, int obj, const char *key)
{
	if (obj < 0 || d->n[obj].t != J_OBJ)
		return -1;
	for (int c = d->n[obj].child; c >= 0; c = d->n[c].next)
		if (strcmp(d->n[c].key, key) == 0)
			return c;
	return -1;
}

static const char *jstr(const struct jdoc *d, int v)
{
	return v >= 0 && d->n[v].t == J_STR ? d->n[v].str : NULL;
}

/* RFC 3339 date-time to ms since the epoch; false when malformed */
static bool rfc3339_ms(const char *s, int64_t *ms)
{
	struct tm tm;
	int y, mo, da, h, mi, se, n = 0, frac = 0, fd = 0;
	int64_t t, off = 0;
	const char *p;

	if (s == NULL ||
	    sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &y, &mo, &da, &h,
		   &mi, &se, &n) != 6 ||
	    n != 19)
		return false;
	if (mo < 1 || mo > 12 || da < 1 || da > 31 || h > 23 || mi > 59 ||
	    se > 60 || y < 1970)
		return false;
	p = s + n;
	if (*p == '.') {
		p++;
		if (*p < '0' || *p > '9')
			return false;
		while (*p >= '0' && *p <= '9') {
			if (fd < 3) {
				frac = frac * 10 + (*p - '0');
				fd++;
			}
			p++;
		}
		while (fd < 3) {
			frac *= 10;
			fd++;
		}
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int oh, om;
		if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2 || strlen(p) != 6)
			return false;
		off = (int64_t)(oh * 3600 + om * 60) * (*p == '+' ? 1 : -1);
		p += 6;
	} else {
		return false;
	}
	if (*p != '\0')
		return false;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = da;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = se;
	t = (int64_t)timegm(&tm);
	*ms = (t - off) * 1000 + frac;
	return true;
}

static bool b64(const char *s, gnutls_datum_t *out)
{
	gnutls_datum_t in;

	out->data = NULL;
	out->size = 0;
	if (s == NULL || s[0] == '\0')
		return false;
	in.data = (unsigned char *)s;
	in.size = (unsigned)strlen(s);
	return gnutls_base64_decode2(&in, out) >= 0;
}

static bool read_log(struct jdoc *d, int o, struct mta_ct_log *lg,
		     size_t op, char *err, size_t errlen)
{
	gnutls_datum_t id = {NULL, 0}, key = {NULL, 0};
	const char *desc = jstr(d, jget(d, o, "description"));
	int st = jget(d, o, "state"), ti = jget(d, o, "temporal_interval");
	uint8_t hash[32];
	bool ok = false;

	memset(lg, 0, sizeof(*lg));
	lg->op = op;
	snprintf(lg->desc, sizeof(lg->desc), "%s", desc ? desc : "");
	if (!b64(jstr(d, jget(d, o, "log_id")), &id) || id.size != 32) {
		snprintf(err, errlen, "log \"%s\": log_id is not 32 bytes of "
			 "base64", lg->desc);
		goto out;
	}
	memcpy(lg->id, id.data, 32);
	if (!b64(jstr(d, jget(d, o, "key")), &key) ||
	    gnutls_pubkey_init(&lg->key) < 0) {
		snprintf(err, errlen, "log \"%s\": key is not base64",
			 lg->desc);
		goto out;
	}
	if (gnutls_pubkey_import(lg->key, &key, GNUTLS_X509_FMT_DER) < 0) {
		snprintf(err, errlen, "log \"%s\": key is not a DER "
			 "SubjectPublicKeyInfo", lg->desc);
		goto out;
	}
	if (gnutls_hash_fast(GNUTLS_DIG_SHA256, key.data, key.size, hash) <
		    0 ||
	    memcmp(hash, lg->id, 32) != 0) {
		snprintf(err, errlen, "log \"%s\": log_id is not the SHA-256 "
			 "of its key", lg->desc);
		goto out;
	}
	lg->state = MTA_CT_STATE_NONE;
	if (st >= 0 && d->n[st].t == J_OBJ && d->n[st].child >= 0) {
		int c = d->n[st].child;
		bool known = false;
#define MTA_CT_E(e, name)                                                     \
	if (!known && strcmp(d->n[c].key, name) == 0) {                       \
		lg->state = MTA_CT_STATE_##e;                                 \
		known = true;                                                 \
	}
		MTA_CT_STATE_MAP(MTA_CT_E)
#undef MTA_CT_E
		if (!known || d->n[c].next >= 0 ||
		    !rfc3339_ms(jstr(d, jget(d, c, "timestamp")),
				&lg->state_ms)) {
			snprintf(err, errlen, "log \"%s\": bad state",
				 lg->desc);
			goto out;
		}
	}
	if (ti >= 0 &&
	    (!rfc3339_ms(jstr(d, jget(d, ti, "start_inclusive")),
			 &lg->ti_start_ms) ||
	     !rfc3339_ms(jstr(d, jget(d, ti, "end_exclusive")),
			 &lg->ti_end_ms) ||
	     lg->ti_end_ms <= lg->ti_start_ms)) {
		snprintf(err, errlen, "log \"%s\": bad temporal_interval",
			 lg->desc);
		goto out;
	}
	ok = true;
out:
	gnutls_free(id.data);
	gnutls_free(key.data);
	return ok;
}

void mta_ct_loglist_free(struct mta_ct_loglist *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->nlogs; i++)
		if (l->logs[i].key != NULL)
			gnutls_pubkey_deinit(l->logs[i].key);
	free(l->logs);
	free(l->ops);
	free(l);
}

/* Just over 100 lines: the walk of the log list (operators, then their
 * logs) builds one result released through one exit. */
int mta_ct_loglist_parse(const char *json, size_t len,
			 struct mta_ct_loglist **out, char *err, size_t errlen)
{
	struct jdoc d = {.p = json, .end = json + len, .err = err,
			 .errlen = errlen};
	struct mta_ct_loglist *l = NULL;
	int root, ops, rc = MTA_ECONFIG;
	const char *ts;

	*out = NULL;
	if (errlen > 0)
		err[0] = '\0';
	if (len > MTA_CT_LIST_MAX) {
		snprintf(err, errlen, "log list larger than %u bytes",
			 MTA_CT_LIST_MAX);
		return MTA_ETOOBIG;
	}
	root = jvalue(&d, 0);
	jws(&d);
	if (root >= 0 && d.p != d.end)
		jerr(&d, "trailing data after the JSON value");
	if (d.failed)
		goto out;
	ops = jget(&d, root, "operators");
	if (ops < 0 || d.n[ops].t != J_ARR) {
		snprintf(err, errlen, "no \"operators\" array");
		goto out;
	}
	l = calloc(1, sizeof(*l));
	if (l == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	ts = jstr(&d, jget(&d, root, "log_list_timestamp"));
	if (ts != NULL && !rfc3339_ms(ts, &l->list_ms)) {
		snprintf(err, errlen, "bad log_list_timestamp");
		goto out;
	}
	for (int o = d.n[ops].child; o >= 0; o = d.n[o].next) {
		const char *name = jstr(&d, jget(&d, o, "name"));
		const char *arrs[] = {"logs", "tiled_logs"};
		void *nn;

		if (d.n[o].t != J_OBJ || name == NULL) {
			snprintf(err, errlen, "operator without a name");
			goto out;
		}
		if (l->nops >= MTA_CT_LOGS_MAX) {
			snprintf(err, errlen, "too many operators");
			goto out;
		}
		nn = realloc(l->ops, (l->nops + 1) * sizeof(*l->ops));
		if (nn == NULL) {
			rc = -ENOMEM;
			goto out;
		}
		l->ops = nn;
		snprintf(l->ops[l->nops], MTA_CT_NAME_MAX, "%s", name);
		for (size_t a = 0; a < 2; a++) {
			int arr = jget(&d, o, arrs[a]);
			if (arr < 0)
				continue;
			if (d.n[arr].t != J_ARR) {
				snprintf(err, errlen, "operator \"%s\": %s is "
					 "not an array", name, arrs[a]);
				goto out;
			}
			for (int g = d.n[arr].child; g >= 0; g = d.n[g].next) {
				if (l->nlogs >= MTA_CT_LOGS_MAX) {
					snprintf(err, errlen, "too many logs");
					goto out;
				}
				nn = realloc(l->logs,
					     (l->nlogs + 1) * sizeof(*l->logs));
				if (nn == NULL) {
					rc = -ENOMEM;
					goto out;
				}
				l->logs = nn;
				if (d.n[g].t != J_OBJ) {
					snprintf(err, errlen, "log entry is "
						 "not an object");
					goto out;
				}
				if (!read_log(&d, g, &l->logs[l->nlogs],
					      l->nops, err, errlen)) {
					if (l->logs[l->nlogs].key != NULL)
						gnutls_pubkey_deinit(
							l->logs[l->nlogs].key);
					goto out;
				}
				l->nlogs++;
			}
		}
		l->nops++;
	}
	*out = l;
	l = NULL;
	rc = 0;
out:
	mta_ct_loglist_free(l);
	jfree(&d);
	return rc;
}

int mta_ct_loglist_load(const char *path, struct mta_ct_loglist **out,
			char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n;
	int rc;

	*out = NULL;
	if (f == NULL) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	buf = malloc(MTA_CT_LIST_MAX + 1);
	if (buf == NULL) {
		fclose(f);
		return -ENOMEM;
	}
	n = fread(buf, 1, MTA_CT_LIST_MAX + 1, f);
	if (ferror(f)) {
		snprintf(err, errlen, "%s: read error", path);
		rc = -EIO;
	} else if (n > MTA_CT_LIST_MAX) {
		snprintf(err, errlen, "%s: larger than %u bytes", path,
			 MTA_CT_LIST_MAX);
		rc = MTA_ETOOBIG;
	} else {
		char e[200];
		rc = mta_ct_loglist_parse(buf, n, out, e, sizeof(e));
		if (rc != 0)
			snprintf(err, errlen, "%s: %s", path, e);
	}
	fclose(f);
	free(buf);
	return rc;
}
