/*
 * spool_keys.c - key continuity records of MTA-STS destinations
 * (spool_keys.h).
 */
#include "spool_keys.h"

#include "err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAGIC "MTAK"
#define HEAD_LEN 20 /* magic, version, count, length, accepted_at */
#define ENTRY_FIXED (1 + 1 + 2 * MTA_SPOOL_KEYS_HASH + 8 + 8)

/* ---- codec ------------------------------------------------------------ */

static void put_be(uint8_t *p, uint64_t v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static uint64_t get_be(const uint8_t *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

int mta_spool_keys_decode(const uint8_t *p, size_t len,
			  struct mta_spool_keys_rec *out)
{
	size_t n, off = HEAD_LEN;

	if (len < HEAD_LEN || memcmp(p, MAGIC, 4) != 0)
		return MTA_ECORRUPT;
	if (get_be(p + 4, 2) != MTA_SPOOL_KEYS_VERSION)
		return MTA_ESCHEMA;
	n = (size_t)get_be(p + 6, 2);
	if (get_be(p + 8, 4) != len - 12 || n > MTA_SPOOL_KEYS_MAX)
		return MTA_ECORRUPT;
	out->accepted_at = (int64_t)get_be(p + 12, 8);
	out->n = 0;
	for (size_t i = 0; i < n; i++) {
		struct mta_spool_keys_entry *e = &out->e[i];
		size_t hl;

		if (len - off < ENTRY_FIXED)
			return MTA_ECORRUPT;
		e->state = p[off];
		hl = p[off + 1];
		if ((e->state != MTA_SPOOL_KEYS_TRUSTED &&
		     e->state != MTA_SPOOL_KEYS_PENDING) ||
		    hl == 0 || len - off < ENTRY_FIXED + hl)
			return MTA_ECORRUPT;
		off += 2;
		memcpy(e->host, p + off, hl);
		e->host[hl] = '\0';
		if (memchr(e->host, '\0', hl) != NULL)
			return MTA_ECORRUPT;
		off += hl;
		memcpy(e->leaf, p + off, MTA_SPOOL_KEYS_HASH);
		off += MTA_SPOOL_KEYS_HASH;
		memcpy(e->issuer, p + off, MTA_SPOOL_KEYS_HASH);
		off += MTA_SPOOL_KEYS_HASH;
		e->first = (int64_t)get_be(p + off, 8);
		e->last = (int64_t)get_be(p + off + 8, 8);
		off += 16;
	}
	if (off != len)
		return MTA_ECORRUPT;
	out->n = n;
	return 0;
}

int mta_spool_keys_encode(const struct mta_spool_keys_rec *r,
			  struct mta_buf *out)
{
	uint8_t h[HEAD_LEN], f[16];
	size_t start = out->len, total = 0;
	int rc;

	if (r->n > MTA_SPOOL_KEYS_MAX)
		return -EINVAL;
	for (size_t i = 0; i < r->n; i++) {
		size_t hl = strlen(r->e[i].host);
		if (hl == 0 || hl > MTA_SPOOL_KEYS_HOST_MAX ||
		    (r->e[i].state != MTA_SPOOL_KEYS_TRUSTED &&
		     r->e[i].state != MTA_SPOOL_KEYS_PENDING))
			return -EINVAL;
		total += ENTRY_FIXED + hl;
	}
	memcpy(h, MAGIC, 4);
	put_be(h + 4, MTA_SPOOL_KEYS_VERSION, 2);
	put_be(h + 6, r->n, 2);
	put_be(h + 8, total + HEAD_LEN - 12, 4);
	put_be(h + 12, (uint64_t)r->accepted_at, 8);
	rc = mta_buf_append(out, h, sizeof(h));
	for (size_t i = 0; rc == 0 && i < r->n; i++) {
		const struct mta_spool_keys_entry *e = &r->e[i];
		uint8_t sh[2] = {e->state, (uint8_t)strlen(e->host)};
		put_be(f, (uint64_t)e->first, 8);
		put_be(f + 8, (uint64_t)e->last, 8);
		if ((rc = mta_buf_append(out, sh, 2)) != 0 ||
		    (rc = mta_buf_append(out, e->host, sh[1])) != 0 ||
		    (rc = mta_buf_append(out, e->leaf, sizeof(e->leaf))) != 0 ||
		    (rc = mta_buf_append(out, e->issuer, sizeof(e->issuer))) !=
			    0 ||
		    (rc = mta_buf_append(out, f, sizeof(f))) != 0)
			break;
	}
	if (rc != 0)
		out->len = start;
	return rc;
}

int mta_spool_keys_from_hex(const char *hex, uint8_t out[MTA_SPOOL_KEYS_HASH])
{
	uint8_t tmp[MTA_SPOOL_KEYS_HASH];

	if (strlen(hex) != 2 * MTA_SPOOL_KEYS_HASH)
		return -EINVAL;
	for (size_t i = 0; i < 2 * MTA_SPOOL_KEYS_HASH; i++) {
		char c = hex[i];
		unsigned v;
		if (c >= '0' && c <= '9')
			v = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v = (unsigned)(c - 'A' + 10);
		else
			return -EINVAL;
		if (i % 2 == 0)
			tmp[i / 2] = (uint8_t)(v << 4);
		else
			tmp[i / 2] |= (uint8_t)v;
	}
	memcpy(out, tmp, sizeof(tmp));
	return 0;
}

void mta_spool_keys_to_hex(const uint8_t h[MTA_SPOOL_KEYS_HASH],
			   char out[2 * MTA_SPOOL_KEYS_HASH + 1])
{
	static const char x[] = "0123456789abcdef";
	for (size_t i = 0; i < MTA_SPOOL_KEYS_HASH; i++) {
		out[2 * i] = x[h[i] >> 4];
		out[2 * i + 1] = x[h[i] & 15];
	}
	out[2 * MTA_SPOOL_KEYS_HASH] = '\0';
}

/* ---- lookup ----------------------------------------------------------- */

static bool hash_eq(const uint8_t *a, const uint8_t *b)
{
	return memcmp(a, b, MTA_SPOOL_KEYS_HASH) == 0;
}

/* Whether issuer has been pending on host for hold seconds, with no
 * trusted key of that host seen since it first appeared. */
static bool healed_on(const struct mta_spool_keys_rec *r, const char *host,
		      const uint8_t *issuer, int64_t now, int64_t hold)
{
	int64_t first = -1;

	for (size_t i = 0; i < r->n; i++) {
		const struct mta_spool_keys_entry *e = &r->e[i];
		if (e->state == MTA_SPOOL_KEYS_PENDING &&
		    strcasecmp(e->host, host) == 0 &&
		    hash_eq(e->issuer, issuer) && (first < 0 || e->first < first))
			first = e->first;
	}
	if (first < 0 || first > now - hold)
		return false;
	for (size_t i = 0; i < r->n; i++) {
		const struct mta_spool_keys_entry *e = &r->e[i];
		if (e->state == MTA_SPOOL_KEYS_TRUSTED &&
		    strcasecmp(e->host, host) == 0 && e->last >= first)
			return false;
	}
	return true;
}

enum mta_policy_cont
mta_spool_keys_classify(const struct mta_spool_keys_rec *r,
			const struct mta_spool_keys_query *q,
			const struct mta_spool_keys_entry **known)
{
	const struct mta_spool_keys_entry *same = NULL, *any = NULL;
	bool recent = false, issuer_known = false, healed;

	for (size_t i = 0; i < r->n; i++) {
		const struct mta_spool_keys_entry *e = &r->e[i];
		if (e->state != MTA_SPOOL_KEYS_TRUSTED)
			continue;
		if (any == NULL || e->last > any->last)
			any = e;
		if (strcasecmp(e->host, q->host) == 0 &&
		    (same == NULL || e->last > same->last))
			same = e;
	}
	*known = same != NULL ? same : any;
	for (size_t i = 0; i < r->n; i++) {
		const struct mta_spool_keys_entry *e = &r->e[i];
		if (e->state != MTA_SPOOL_KEYS_TRUSTED)
			continue;
		if (hash_eq(e->leaf, q->leaf))
			return MTA_POLICY_CONT_KNOWN;
		if (e->last >= q->now - q->window)
			recent = true;
		if (hash_eq(e->issuer, q->issuer))
			issuer_known = true;
	}
	if (!recent)
		return MTA_POLICY_CONT_FIRST;
	if (issuer_known)
		return MTA_POLICY_CONT_NEW_KEY;
	healed = q->nmx > 0;
	for (size_t i = 0; healed && i < q->nmx; i++)
		healed = healed_on(r, q->mx[i], q->issuer, q->now, q->hold);
	return healed ? MTA_POLICY_CONT_ACCEPTED : MTA_POLICY_CONT_NEW_ISSUER;
}

/* ---- update ----------------------------------------------------------- */

static void drop(struct mta_spool_keys_rec *r, size_t i)
{
	memmove(&r->e[i], &r->e[i + 1], (r->n - i - 1) * sizeof(r->e[0]));
	r->n--;
}

void mta_spool_keys_note(struct mta_spool_keys_rec *r,
			 enum mta_spool_keys_opkind kind,
			 const char *host, const uint8_t *leaf,
			 const uint8_t *issuer, int64_t now, int64_t window)
{
	struct mta_spool_keys_entry *e = NULL;
	uint8_t state = kind == MTA_SPOOL_KEYS_LEARN ? MTA_SPOOL_KEYS_TRUSTED
						     : MTA_SPOOL_KEYS_PENDING;

	if (strlen(host) == 0 || strlen(host) > MTA_SPOOL_KEYS_HOST_MAX)
		return;
	/* stale entries are replaced (never the one seen now) */
	for (size_t i = r->n; i-- > 0;)
		if (r->e[i].last < now - window &&
		    !(strcasecmp(r->e[i].host, host) == 0 &&
		      hash_eq(r->e[i].leaf, leaf)))
			drop(r, i);
	for (size_t i = 0; i < r->n; i++)
		if (strcasecmp(r->e[i].host, host) == 0 &&
		    hash_eq(r->e[i].leaf, leaf))
			e = &r->e[i];
	if (e == NULL) {
		if (r->n == MTA_SPOOL_KEYS_MAX) {
			size_t old = 0;
			for (size_t i = 1; i < r->n; i++)
				if (r->e[i].last < r->e[old].last)
					old = i;
			drop(r, old);
		}
		e = &r->e[r->n++];
		memset(e, 0, sizeof(*e));
		strcpy(e->host, host);
		memcpy(e->leaf, leaf, MTA_SPOOL_KEYS_HASH);
		e->first = now;
		e->state = state;
	}
	memcpy(e->issuer, issuer, MTA_SPOOL_KEYS_HASH);
	if (now > e->last)
		e->last = now;
	if (state == MTA_SPOOL_KEYS_TRUSTED) {
		e->state = MTA_SPOOL_KEYS_TRUSTED;
		for (size_t i = 0; i < r->n; i++)
			if (r->e[i].state == MTA_SPOOL_KEYS_PENDING &&
			    hash_eq(r->e[i].issuer, issuer))
				r->e[i].state = MTA_SPOOL_KEYS_TRUSTED;
	}
}

size_t mta_spool_keys_accept(struct mta_spool_keys_rec *r, int64_t now)
{
	size_t n = 0;

	for (size_t i = 0; i < r->n; i++)
		if (r->e[i].state == MTA_SPOOL_KEYS_PENDING) {
			r->e[i].state = MTA_SPOOL_KEYS_TRUSTED;
			if (r->e[i].last < now)
				r->e[i].last = now;
			n++;
		}
	if (n > 0)
		r->accepted_at = now;
	return n;
}

/* ---- spool ------------------------------------------------------------ */

int mta_spool_keys_get(struct mta_spool *sp, const char *domain,
		       struct mta_spool_keys_rec *out)
{
	struct mta_buf raw = {0};
	int rc;

	rc = mta_spool_keys_raw_get(sp, domain, &raw);
	if (rc == 0)
		rc = mta_spool_keys_decode(raw.data, raw.len, out);
	mta_buf_free(&raw);
	return rc;
}

static int apply_cb(void *ud, const uint8_t *old, size_t oldlen,
		    struct mta_buf *out)
{
	const struct mta_spool_keys_op *op = ud;
	struct mta_spool_keys_rec *r;
	int rc = 0;

	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	/* an undecodable record is replaced: it holds nothing usable and
	 * refusing would stop learning for good */
	if (old != NULL && mta_spool_keys_decode(old, oldlen, r) != 0)
		memset(r, 0, sizeof(*r));
	if (op->kind == MTA_SPOOL_KEYS_ACCEPT) {
		if (mta_spool_keys_accept(r, op->now) == 0)
			rc = MTA_ENOTFOUND;
	} else {
		mta_spool_keys_note(r, op->kind, op->host, op->leaf,
				    op->issuer, op->now, op->window);
	}
	if (rc == 0)
		rc = mta_spool_keys_encode(r, out);
	free(r);
	return rc;
}

int mta_spool_keys_apply(struct mta_spool_txn *t,
			 const struct mta_spool_keys_op *op)
{
	if (op->kind != MTA_SPOOL_KEYS_LEARN &&
	    op->kind != MTA_SPOOL_KEYS_SEEN_PENDING &&
	    op->kind != MTA_SPOOL_KEYS_ACCEPT)
		return -EINVAL;
	return mta_spool_keys_update(t, op->domain, apply_cb, (void *)op);
}
