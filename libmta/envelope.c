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
