#include "envelope.h"

#include "err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void mta_envelope_init(struct mta_envelope *e)
{
	memset(e, 0, sizeof(*e));
}

static void rcpt_free(struct mta_rcpt *r)
{
	free(r->addr);
	free(r->orcpt);
	free(r->notify_raw);
	free(r->last_response);
	free(r->relay);
	free(r->evidence);
}

void mta_envelope_free(struct mta_envelope *e)
{
	for (size_t i = 0; i < e->nrcpt; i++)
		rcpt_free(&e->rcpts[i]);
	free(e->rcpts);
	free(e->sender);
	free(e->envid);
	free(e->ret_raw);
	free(e->helo);
	free(e->client_addr);
	free(e->tls);
	mta_envelope_init(e);
}

int mta_envelope_set_str(char **field, const char *value)
{
	char *c = NULL;
	if (value != NULL) {
		c = strdup(value);
		if (c == NULL)
			return -ENOMEM;
	}
	free(*field);
	*field = c;
	return 0;
}

struct mta_rcpt *mta_envelope_add_rcpt(struct mta_envelope *e,
				       const char *addr, const char *orcpt,
				       const char *notify_raw, unsigned notify)
{
	if (e->nrcpt == e->rcpt_cap) {
		size_t cap = e->rcpt_cap ? e->rcpt_cap * 2 : 4;
		struct mta_rcpt *n = realloc(e->rcpts, cap * sizeof(*n));
		if (n == NULL)
			return NULL;
		e->rcpts = n;
		e->rcpt_cap = cap;
	}
	struct mta_rcpt *r = &e->rcpts[e->nrcpt];
	memset(r, 0, sizeof(*r));
	if (mta_envelope_set_str(&r->addr, addr) != 0 ||
	    mta_envelope_set_str(&r->orcpt, orcpt) != 0 ||
	    mta_envelope_set_str(&r->notify_raw, notify_raw) != 0) {
		rcpt_free(r);
		return NULL;
	}
	r->notify = notify;
	e->nrcpt++;
	return r;
}

int mta_buf_append(struct mta_buf *b, const void *p, size_t n)
{
	if (n > SIZE_MAX - b->len)
		return -ENOMEM;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *d = realloc(b->data, cap);
		if (d == NULL)
			return -ENOMEM;
		b->data = d;
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

void mta_buf_free(struct mta_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

/*
 * The envelope record (all integers big-endian):
 *
 *	"MTAE"  u16 version  u32 total length (header included)
 *	str sender, str envid, str ret_raw, u8 ret, u8 body, u8 smtputf8,
 *	u64 declared_size, str helo, str client_addr, str tls,
 *	i64 arrival_us, u64 size, u32 nrcpt, then nrcpt times:
 *	  str addr, str orcpt, str notify_raw, u32 notify, u8 state,
 *	  u32 attempts, i64 next_attempt_us, str last_response, str relay,
 *	  str evidence (version 2 and later), u8 flags (version 3 and later)
 *	then u8 tlsreq (version 4; enum mta_tlsreq)
 *
 * str = u32 length then the bytes (no NUL); length 0xffffffff = NULL.
 * A string holding a NUL byte is corrupt (we keep C strings).  The record
 * must end exactly at the total length.
 */
#define ENV_MAGIC "MTAE"
#define ENV_VERSION 4 /* 2 added str evidence per recipient, 3 u8 flags,
		       * 4 u8 tlsreq; 1 to 3 are read */
#define ENV_HDR 10
#define ENV_NULLSTR 0xffffffffu
/* smallest encoded recipient: 5 NULL/empty strings + fixed fields */
#define ENV_RCPT_MIN (5 * 4 + 4 + 1 + 4 + 8)

/* Sticky-error write cursor: the first failure is kept, later puts do
 * nothing. */
struct wctx {
	struct mta_buf *b;
	int err;
};

static void w_bytes(struct wctx *w, const void *p, size_t n)
{
	if (w->err == 0)
		w->err = mta_buf_append(w->b, p, n);
}

static void w_u8(struct wctx *w, uint8_t v)
{
	w_bytes(w, &v, 1);
}

static void w_u16(struct wctx *w, uint16_t v)
{
	uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	w_bytes(w, b, sizeof(b));
}

static void w_u32(struct wctx *w, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16),
			(uint8_t)(v >> 8), (uint8_t)v};
	w_bytes(w, b, sizeof(b));
}

static void w_u64(struct wctx *w, uint64_t v)
{
	w_u32(w, (uint32_t)(v >> 32));
	w_u32(w, (uint32_t)v);
}

static void w_str(struct wctx *w, const char *s)
{
	if (s == NULL) {
		w_u32(w, ENV_NULLSTR);
		return;
	}
	size_t n = strlen(s);
	if (n >= ENV_NULLSTR) {
		if (w->err == 0)
			w->err = MTA_ETOOBIG;
		return;
	}
	w_u32(w, (uint32_t)n);
	w_bytes(w, s, n);
}

int mta_envelope_encode(const struct mta_envelope *e, struct mta_buf *out)
{
	size_t start = out->len;
	struct wctx w = {.b = out, .err = 0};

	if (e->nrcpt > UINT32_MAX)
		return MTA_ETOOBIG;
	w_bytes(&w, ENV_MAGIC, 4);
	w_u16(&w, ENV_VERSION);
	w_u32(&w, 0); /* total length, patched below */
	w_str(&w, e->sender);
	w_str(&w, e->envid);
	w_str(&w, e->ret_raw);
	w_u8(&w, e->ret);
	w_u8(&w, e->body);
	w_u8(&w, e->smtputf8 ? 1 : 0);
	w_u64(&w, e->declared_size);
	w_str(&w, e->helo);
	w_str(&w, e->client_addr);
	w_str(&w, e->tls);
	w_u64(&w, (uint64_t)e->arrival_us);
	w_u64(&w, e->size);
	w_u32(&w, (uint32_t)e->nrcpt);
	for (size_t i = 0; i < e->nrcpt; i++) {
		const struct mta_rcpt *r = &e->rcpts[i];
		w_str(&w, r->addr);
		w_str(&w, r->orcpt);
		w_str(&w, r->notify_raw);
		w_u32(&w, r->notify);
		w_u8(&w, r->state);
		w_u32(&w, r->attempts);
		w_u64(&w, (uint64_t)r->next_attempt_us);
		w_str(&w, r->last_response);
		w_str(&w, r->relay);
		w_str(&w, r->evidence);
		w_u8(&w, r->flags);
	}
	w_u8(&w, e->tlsreq);
	if (w.err == 0 && out->len - start > UINT32_MAX)
		w.err = MTA_ETOOBIG;
	if (w.err != 0) {
		out->len = start;
		return w.err;
	}
	uint32_t total = (uint32_t)(out->len - start);
	uint8_t *h = out->data + start + 6;
	h[0] = (uint8_t)(total >> 24);
	h[1] = (uint8_t)(total >> 16);
	h[2] = (uint8_t)(total >> 8);
	h[3] = (uint8_t)total;
	return 0;
}

/* Sticky-error read cursor over an untrusted record. */
struct rctx {
	const uint8_t *p;
	size_t left;
	int err;
};

static const uint8_t *r_take(struct rctx *r, size_t n)
{
	if (r->err != 0)
		return NULL;
	if (n > r->left) {
		r->err = MTA_ECORRUPT;
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	r->left -= n;
	return p;
}

static uint8_t r_u8(struct rctx *r)
{
	const uint8_t *p = r_take(r, 1);
	return p ? p[0] : 0;
}

static uint16_t r_u16(struct rctx *r)
{
	const uint8_t *p = r_take(r, 2);
	return p ? (uint16_t)((unsigned)p[0] << 8 | p[1]) : 0;
}

static uint32_t r_u32(struct rctx *r)
{
	const uint8_t *p = r_take(r, 4);
	if (p == NULL)
		return 0;
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static uint64_t r_u64(struct rctx *r)
{
	uint64_t hi = r_u32(r);
	return hi << 32 | r_u32(r);
}

static void r_str(struct rctx *r, char **out)
{
	uint32_t n = r_u32(r);
	if (r->err != 0 || n == ENV_NULLSTR)
		return;
	const uint8_t *p = r_take(r, n);
	if (p == NULL)
		return;
	if (memchr(p, 0, n) != NULL) {
		r->err = MTA_ECORRUPT;
		return;
	}
	char *s = malloc((size_t)n + 1);
	if (s == NULL) {
		r->err = -ENOMEM;
		return;
	}
	memcpy(s, p, n);
	s[n] = '\0';
	*out = s;
}

int mta_envelope_decode(const uint8_t *p, size_t n, struct mta_envelope *out)
{
	struct mta_envelope e;
	struct rctx r = {.p = p, .left = n, .err = 0};

	if (n < ENV_HDR || memcmp(p, ENV_MAGIC, 4) != 0)
		return MTA_ECORRUPT;
	r_take(&r, 4);
	uint16_t ver = r_u16(&r);
	if (ver < 1 || ver > ENV_VERSION)
		return MTA_ESCHEMA;
	if (r_u32(&r) != n)
		return MTA_ECORRUPT;

	mta_envelope_init(&e);
	r_str(&r, &e.sender);
	r_str(&r, &e.envid);
	r_str(&r, &e.ret_raw);
	e.ret = r_u8(&r);
	e.body = r_u8(&r);
	uint8_t utf8 = r_u8(&r);
	e.smtputf8 = utf8 != 0;
	e.declared_size = r_u64(&r);
	r_str(&r, &e.helo);
	r_str(&r, &e.client_addr);
	r_str(&r, &e.tls);
	e.arrival_us = (int64_t)r_u64(&r);
	e.size = r_u64(&r);
	uint32_t nrcpt = r_u32(&r);
	if (r.err == 0 && (utf8 > 1 || e.ret > MTA_RET_HDRS ||
			   e.body > MTA_BODY_8BITMIME))
		r.err = MTA_ECORRUPT;
	/* bound the allocation by what the record can hold */
	if (r.err == 0 && nrcpt > r.left / ENV_RCPT_MIN)
		r.err = MTA_ECORRUPT;
	if (r.err == 0 && nrcpt > 0) {
		e.rcpts = calloc(nrcpt, sizeof(*e.rcpts));
		if (e.rcpts == NULL)
			r.err = -ENOMEM;
		else
			e.rcpt_cap = nrcpt;
	}
	for (uint32_t i = 0; r.err == 0 && i < nrcpt; i++) {
		struct mta_rcpt *rc = &e.rcpts[i];
		e.nrcpt++; /* so mta_envelope_free() sees it */
		r_str(&r, &rc->addr);
		r_str(&r, &rc->orcpt);
		r_str(&r, &rc->notify_raw);
		rc->notify = r_u32(&r);
		rc->state = r_u8(&r);
		rc->attempts = r_u32(&r);
		rc->next_attempt_us = (int64_t)r_u64(&r);
		r_str(&r, &rc->last_response);
		r_str(&r, &rc->relay);
		if (ver >= 2)
			r_str(&r, &rc->evidence);
		if (ver >= 3)
			rc->flags = r_u8(&r);
		if (r.err == 0 &&
		    (rc->addr == NULL || rc->state > MTA_RCPT_BOUNCED ||
		     (rc->flags & ~MTA_RCPT_F_DELAY_WARNED) != 0))
			r.err = MTA_ECORRUPT;
	}
	if (ver >= 4) {
		e.tlsreq = r_u8(&r);
		if (r.err == 0 && e.tlsreq > MTA_TLSREQ_OPTIONAL)
			r.err = MTA_ECORRUPT;
	}
	if (r.err == 0 && e.sender == NULL)
		r.err = MTA_ECORRUPT;
	if (r.err == 0 && r.left != 0)
		r.err = MTA_ECORRUPT; /* trailing bytes inside the length */
	if (r.err != 0) {
		mta_envelope_free(&e);
		return r.err;
	}
	*out = e;
	return 0;
}
