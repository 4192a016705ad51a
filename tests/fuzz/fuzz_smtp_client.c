/*
 * fuzz_smtp_client.c - libFuzzer target for the SMTP client engine.
 *
 * Input: byte 0 = driver options (bits 0-1 TLS mode, bit 2 AUTH
 * configured, bit 3 SMTPUTF8 envelope, bit 4 8BITMIME envelope, bit 5
 * abort instead of tls_started(), bit 6 timeout instead of EOF at the
 * end, bit 7 body fed byte by byte); byte 1 = feed chunk size (0 = all at
 * once); the rest = what the peer sends.  The driver acts on every event
 * like delivery would (transactions on READY, QUIT after two, the body on
 * NEED_BODY) and checks the engine's promises: every recipient of a
 * transaction gets exactly one RCPT_RESULT before TXN_DONE, statuses are
 * "[245].n.n", the wire carries only CRLF line ends, credentials never
 * leave in clear, and the session always ends with CLOSED.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                  \
	do {                      \
		if (!(x))         \
			abort();  \
	} while (0)

struct drv {
	struct mta_smtpc c;
	struct mta_smtpc_txn txn;
	size_t idx[3];
	uint8_t seen[3];
	bool in_txn, closed, failed;
	int ntxn;
	uint8_t opts;
	uint8_t last_out; /* last byte written, for the CRLF check */
};

static const char body[] = "Subject: t\r\n\r\n.dot\r\nbare\nlf\rcr\n.\n"
			   "x\n.\r\nMAIL FROM:<evil@x>\r\n\x80\xff end";

static bool status_ok(const char *s)
{
	size_t i = 2, d;

	if ((s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return false;
	for (d = 0; s[i] >= '0' && s[i] <= '9'; i++, d++)
		;
	if (d == 0 || s[i++] != '.')
		return false;
	for (d = 0; s[i] >= '0' && s[i] <= '9'; i++, d++)
		;
	return d > 0 && s[i] == '\0';
}

static void drain_out(struct drv *d)
{
	const uint8_t *p;
	size_t n = mta_smtpc_output(&d->c, &p);

	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n')
			CHECK(d->last_out == '\r');
		if (d->last_out == '\r')
			CHECK(p[i] == '\n');
		d->last_out = p[i];
	}
	if (!mta_smtpc_in_tls(&d->c))
		CHECK(memmem(p, n, "AUTH", 4) == NULL);
	mta_smtpc_output_consume(&d->c, n);
}

static void feed_body(struct drv *d)
{
	size_t len = sizeof(body) - 1, pos = 0;

	for (int guard = 0; guard < 100000; guard++) {
		size_t n = len - pos, k;
		bool last;

		drain_out(d);
		if (!mta_smtpc_wants_body(&d->c))
			return;
		if ((d->opts & 0x80) && n > 1)
			n = 1;
		last = pos + n == len;
		k = mta_smtpc_body(&d->c, (const uint8_t *)body + pos, n, last);
		pos += k;
		if (last && k == n)
			break;
	}
	drain_out(d);
}

static void on_event(struct drv *d, enum mta_smtpc_ev e,
		     const struct mta_smtpc_event *ev)
{
	CHECK(!d->closed);
	switch (e) {
	case MTA_SMTPC_EV_NONE:
		break;
	case MTA_SMTPC_EV_STARTTLS:
		if (d->opts & 0x20)
			mta_smtpc_abort(&d->c, "4.7.5", "policy");
		else
			CHECK(mta_smtpc_tls_started(&d->c) == 0);
		break;
	case MTA_SMTPC_EV_READY:
		CHECK(!d->in_txn);
		if (d->ntxn++ < 2) {
			CHECK(mta_smtpc_start_txn(&d->c, &d->txn) == 0);
			d->in_txn = true;
			memset(d->seen, 0, sizeof(d->seen));
		} else {
			CHECK(mta_smtpc_quit(&d->c) == 0);
		}
		break;
	case MTA_SMTPC_EV_NEED_BODY:
		CHECK(d->in_txn);
		feed_body(d);
		break;
	case MTA_SMTPC_EV_RCPT_RESULT:
		CHECK(d->in_txn);
		CHECK(ev->index < d->txn.nrcpt);
		CHECK(d->seen[ev->index]++ == 0);
		CHECK(ev->status != NULL && status_ok(ev->status));
		CHECK(ev->text != NULL);
		CHECK(strchr(ev->text, '\n') == NULL);
		break;
	case MTA_SMTPC_EV_TXN_DONE:
		CHECK(d->in_txn);
		for (size_t i = 0; i < d->txn.nrcpt; i++)
			CHECK(d->seen[i] == 1);
		d->in_txn = false;
		break;
	case MTA_SMTPC_EV_FAIL:
		CHECK(!d->in_txn && !d->failed);
		CHECK(ev->stage != NULL && ev->text != NULL);
		CHECK(status_ok(ev->status));
		d->failed = true;
		break;
	case MTA_SMTPC_EV_CLOSED:
		CHECK(!d->in_txn);
		d->closed = true;
		break;
	}
	drain_out(d);
}

static void feed(struct drv *d, const uint8_t *p, size_t n, size_t chunk)
{
	size_t off = 0;

	for (int guard = 0; guard < 10000000; guard++) {
		struct mta_smtpc_event ev;
		size_t k, m = n - off;
		enum mta_smtpc_ev e;

		if (chunk != 0 && m > chunk)
			m = chunk;
		e = mta_smtpc_feed(&d->c, p + off, m, &k, &ev);
		CHECK(k <= m);
		off += k;
		if (e != MTA_SMTPC_EV_NONE) {
			on_event(d, e, &ev);
			continue;
		}
		drain_out(d);
		if (off >= n)
			return;
		CHECK(k > 0);
	}
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct drv d;
	static struct mta_envelope env;
	static const uint8_t none[1];
	struct mta_smtpc_config cfg = {.helo_name = "client.test"};

	if (size < 2)
		return 0;
	memset(&d, 0, sizeof(d));
	d.opts = data[0];
	cfg.tls = d.opts & 3;
	if (cfg.tls > MTA_SMTPC_TLS_REQUIRE)
		cfg.tls = MTA_SMTPC_TLS_MAY;
	if (d.opts & 4) {
		cfg.auth_user = "user";
		cfg.auth_pass = "pass";
	}
	CHECK(mta_smtpc_init(&d.c, &cfg) == 0);

	mta_envelope_init(&env);
	CHECK(mta_envelope_set_str(&env.sender, "a@x.test") == 0);
	CHECK(mta_envelope_set_str(&env.envid, "ID+2B1") == 0);
	CHECK(mta_envelope_set_str(&env.ret_raw, "HDRS") == 0);
	env.smtputf8 = (d.opts & 8) != 0;
	env.body = (d.opts & 16) ? MTA_BODY_8BITMIME : MTA_BODY_7BIT;
	CHECK(mta_envelope_add_rcpt(&env, "b@y.test", "rfc822;b@y.test",
				    "SUCCESS,FAILURE", 0) != NULL);
	CHECK(mta_envelope_add_rcpt(&env, "c@y.test", NULL, NULL, 0) != NULL);
	CHECK(mta_envelope_add_rcpt(&env, "d@y\r\n.test", NULL, NULL, 0) !=
	      NULL);
	for (size_t i = 0; i < 3; i++)
		d.idx[i] = i;
	d.txn.env = &env;
	d.txn.rcpts = d.idx;
	d.txn.nrcpt = 3;
	d.txn.size = sizeof(body) - 1;

	feed(&d, data + 2, size - 2, data[1]);
	if (d.opts & 0x40)
		mta_smtpc_timeout(&d.c);
	else
		mta_smtpc_eof(&d.c);
	feed(&d, none, 0, 0);
	CHECK(d.closed && !d.in_txn);
	CHECK(mta_smtpc_closed(&d.c));
	CHECK(mta_smtpc_timeout_ms(&d.c) == 0);

	mta_smtpc_free(&d.c);
	mta_envelope_free(&env);
	return 0;
}
