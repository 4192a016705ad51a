/* Unit tests of the SMTP client engine (libmta/smtp_client.c): scripted
 * servers, exact bytes on the wire, exact event sequences.  Every scenario
 * runs twice: replies and body in one chunk, then byte by byte (with the
 * output drained one byte at a time).  Conformance ids in the comments. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "log.h"
#include "smtp_client.h"

/* ---- harness --------------------------------------------------------- */

struct h {
	struct mta_smtpc c;
	struct mta_smtpc_config cfg;
	bool bytewise;
	bool auto_tls;	   /* call tls_started() after a STARTTLS event */
	bool manual_body;  /* do not answer NEED_BODY */
	bool tls_pending;
	char out[1 << 17]; /* everything the engine wrote */
	size_t out_len, out_seen;
	char log[1 << 16]; /* events, one per line */
	size_t log_len, log_seen;
	char text[MTA_SMTPC_TEXT_MAX]; /* text of the last RCPT/FAIL */
	size_t discarded;
	const char *body;
	size_t body_len;
	unsigned results[8]; /* RCPT_RESULTs by status class */
};

static struct mta_envelope env;
static struct mta_smtpc_txn txn;
static size_t idx[1200];

static void h_drain(struct h *h)
{
	const uint8_t *p;
	size_t n;

	while ((n = mta_smtpc_output(&h->c, &p)) > 0) {
		size_t take = h->bytewise ? 1 : n;

		assert_true(h->out_len + take < sizeof(h->out));
		memcpy(h->out + h->out_len, p, take);
		h->out_len += take;
		h->out[h->out_len] = '\0';
		mta_smtpc_output_consume(&h->c, take);
	}
}

__attribute__((format(printf, 2, 3))) static void h_log(struct h *h,
							const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(h->log + h->log_len, sizeof(h->log) - h->log_len, fmt,
		      ap);
	va_end(ap);
	assert_true(n > 0 && (size_t)n < sizeof(h->log) - h->log_len);
	h->log_len += (size_t)n;
}

static void h_body(struct h *h)
{
	size_t pos = 0;

	for (;;) {
		size_t n, k;
		bool last;

		h_drain(h);
		assert_true(mta_smtpc_wants_body(&h->c));
		n = h->body_len - pos;
		if (h->bytewise && n > 1)
			n = 1;
		last = pos + n == h->body_len;
		k = mta_smtpc_body(&h->c, (const uint8_t *)h->body + pos, n,
				   last);
		pos += k;
		if (last && k == n)
			break;
		assert_true(k > 0 || n == 0);
	}
	assert_false(mta_smtpc_wants_body(&h->c));
	h_drain(h);
}

static void h_event(struct h *h, enum mta_smtpc_ev e,
		    const struct mta_smtpc_event *ev)
{
	switch (e) {
	case MTA_SMTPC_EV_STARTTLS:
		h_log(h, "STARTTLS\n");
		h->discarded += ev->len;
		h->tls_pending = true;
		break;
	case MTA_SMTPC_EV_READY:
		h_log(h, "READY\n");
		break;
	case MTA_SMTPC_EV_NEED_BODY:
		h_log(h, "NEED_BODY\n");
		if (!h->manual_body)
			h_body(h);
		break;
	case MTA_SMTPC_EV_RCPT_RESULT:
		h_log(h, "RCPT %zu %d %s\n", ev->index, ev->code, ev->status);
		snprintf(h->text, sizeof(h->text), "%s", ev->text);
		h->results[(ev->status[0] - '0') & 7]++;
		break;
	case MTA_SMTPC_EV_TXN_DONE:
		h_log(h, "TXN_DONE\n");
		break;
	case MTA_SMTPC_EV_FAIL:
		h_log(h, "FAIL %s %d %s\n", ev->stage, ev->code, ev->status);
		snprintf(h->text, sizeof(h->text), "%s", ev->text);
		break;
	case MTA_SMTPC_EV_CLOSED:
		h_log(h, "CLOSED\n");
		break;
	case MTA_SMTPC_EV_NONE:
		break;
	}
}

/* One segment from the peer, then all events. */
static void h_feedn(struct h *h, const char *p, size_t n)
{
	size_t off = 0;

	h_drain(h);
	for (;;) {
		struct mta_smtpc_event ev;
		size_t k, chunk = n - off;
		enum mta_smtpc_ev e;

		if (h->bytewise && chunk > 1)
			chunk = 1;
		e = mta_smtpc_feed(&h->c, (const uint8_t *)p + off, chunk, &k,
				   &ev);
		assert_true(k <= chunk);
		off += k;
		h_drain(h);
		if (e != MTA_SMTPC_EV_NONE) {
			h_event(h, e, &ev);
			continue;
		}
		if (off >= n)
			break;
		assert_true(k > 0); /* never blocked: output is drained */
	}
	if (h->tls_pending && h->auto_tls) {
		h->tls_pending = false;
		assert_int_equal(mta_smtpc_tls_started(&h->c), 0);
		h_feedn(h, "", 0);
	}
}

static void h_server(struct h *h, const char *s)
{
	h_feedn(h, s, strlen(s));
}

/* Collects the events made by a driver call. */
static void h_events(struct h *h)
{
	h_feedn(h, "", 0);
}

static void expect_out(struct h *h, const char *s)
{
	assert_string_equal(h->out + h->out_seen, s);
	h->out_seen = h->out_len;
}

static void expect_ev(struct h *h, const char *s)
{
	h->log[h->log_len] = '\0';
	assert_string_equal(h->log + h->log_seen, s);
	h->log_seen = h->log_len;
}

static void h_txn(struct h *h, uint64_t size, const char *body)
{
	txn.env = &env;
	txn.rcpts = idx;
	txn.nrcpt = env.nrcpt;
	txn.size = size;
	h->body = body;
	h->body_len = body != NULL ? strlen(body) : 0;
	assert_int_equal(mta_smtpc_start_txn(&h->c, &txn), 0);
	h_drain(h);
	h_events(h);
}

static void h_quit(struct h *h)
{
	assert_int_equal(mta_smtpc_quit(&h->c), 0);
	h_drain(h);
	h_server(h, "221 2.0.0 bye\r\n");
	expect_out(h, "QUIT\r\n");
	expect_ev(h, "CLOSED\n");
	assert_true(mta_smtpc_closed(&h->c));
}

static void env_reset(const char *sender)
{
	mta_envelope_free(&env);
	mta_envelope_init(&env);
	assert_int_equal(mta_envelope_set_str(&env.sender, sender), 0);
	for (size_t i = 0; i < sizeof(idx) / sizeof(idx[0]); i++)
		idx[i] = i;
}

static void rcpt(const char *addr, const char *orcpt, const char *notify)
{
	assert_non_null(mta_envelope_add_rcpt(&env, addr, orcpt, notify, 0));
}

/* Greeting and EHLO with the given capability lines (without "250-mx"). */
static void h_hello(struct h *h, const char *caps)
{
	char reply[2048];

	h_server(h, "220 mx.test ESMTP\r\n");
	expect_out(h, "EHLO client.test\r\n");
	if (caps[0] == '\0')
		snprintf(reply, sizeof(reply), "250 mx.test\r\n");
	else
		snprintf(reply, sizeof(reply), "250-mx.test\r\n%s", caps);
	h_server(h, reply);
}

typedef void (*scenario)(struct h *h);

static void run(scenario sc, int tls, const char *user, const char *pass)
{
	for (int mode = 0; mode < 2; mode++) {
		static struct h hs; /* static: no leak when an assert jumps */
		struct h *h = &hs;

		memset(h, 0, sizeof(*h));
		h->bytewise = mode == 1;
		h->auto_tls = true;
		h->cfg.helo_name = "client.test";
		h->cfg.tls = tls;
		h->cfg.auth_user = user;
		h->cfg.auth_pass = pass;
		assert_int_equal(mta_smtpc_init(&h->c, &h->cfg), 0);
		env_reset("a@x.test");
		sc(h);
		mta_smtpc_free(&h->c);
		mta_envelope_free(&env);
	}
}

#define SC(name, tls, user, pass)                 \
	static void name(void **st)               \
	{                                         \
		(void)st;                         \
		run(sc_##name, tls, user, pass);  \
	}

/* ---- session ------------------------------------------------------------ */

/* Pipelined transaction: MAIL, RCPTs, DATA in one group; exact bytes. */
static void sc_happy_pipelining(struct h *h)
{
	const struct mta_smtpc_caps *k;

	rcpt("b@y.test", NULL, NULL);
	rcpt("c@y.test", NULL, NULL);
	h_hello(h, "250-PIPELINING\r\n250-SIZE 100000\r\n"
		   "250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n");
	expect_ev(h, "READY\n");
	k = mta_smtpc_caps(&h->c);
	assert_true(k->esmtp && k->pipelining && k->size && k->eightbitmime &&
		    k->enhancedstatuscodes);
	assert_int_equal(k->size_max, 100000);
	assert_false(k->dsn || k->starttls || k->smtputf8 || k->chunking);
	h_txn(h, 21, "Subject: x\r\n\r\nhello\r\n");
	expect_out(h, "MAIL FROM:<a@x.test> SIZE=21\r\nRCPT TO:<b@y.test>\r\n"
		      "RCPT TO:<c@y.test>\r\nDATA\r\n");
	expect_ev(h, "");
	h_server(h, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
		    "354 go ahead\r\n");
	expect_ev(h, "NEED_BODY\n");
	expect_out(h, "Subject: x\r\n\r\nhello\r\n.\r\n");
	h_server(h, "250 2.0.0 queued as X1\r\n");
	expect_ev(h, "RCPT 0 250 2.0.0\nRCPT 1 250 2.0.0\nTXN_DONE\nREADY\n");
	assert_string_equal(h->text, "250 2.0.0 queued as X1");
	h_quit(h);
}
SC(happy_pipelining, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* Without PIPELINING: one command per reply (RFC 5321). */
static void sc_happy_lockstep(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	rcpt("c@y.test", NULL, NULL);
	env.body = MTA_BODY_8BITMIME;
	h_hello(h, "250 8BITMIME\r\n");
	expect_ev(h, "READY\n");
	h_txn(h, 5, "h\xe9llo");
	expect_out(h, "MAIL FROM:<a@x.test> BODY=8BITMIME\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "RCPT TO:<b@y.test>\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "RCPT TO:<c@y.test>\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "DATA\r\n");
	expect_ev(h, "");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 120000); /* CLI-08 */
	h_server(h, "354 go\r\n");
	/* 8BIT-02: bytes preserved, missing final CRLF added (SMUG-10) */
	expect_out(h, "h\xe9llo\r\n.\r\n");
	h_server(h, "250 ok\r\n");
	expect_ev(h, "NEED_BODY\nRCPT 0 250 2.0.0\nRCPT 1 250 2.0.0\n"
		     "TXN_DONE\nREADY\n");
	h_quit(h);
}
SC(happy_lockstep, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* Traced state machine: every state change is one debug line
 * "event=smtpc_state old=<a> new=<b>", in order (STYLE.md). */
static void sc_state_trace(struct h *h)
{
	FILE *f = tmpfile();
	char log[8192];
	size_t n;

	assert_non_null(f);
	mta_log_set_fd(fileno(f));
	mta_log_set_level(MTA_LOG_DEBUG);
	sc_happy_lockstep(h);
	mta_log_set_level(MTA_LOG_INFO);
	mta_log_set_fd(2);
	rewind(f);
	n = fread(log, 1, sizeof(log) - 1, f);
	log[n] = '\0';
	fclose(f);
	static const char *const want[] = {
		"old=greeting new=ehlo", "old=ehlo new=ready",
		"old=ready new=txn",	 "old=txn new=body",
		"old=body new=dot",	 "old=dot new=ready",
		"old=ready new=quit",	 "old=quit new=closed",
	};
	const char *p = log;
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const char *q = strstr(p, want[i]);
		if (q == NULL)
			fail_msg("missing \"%s\" (in order) in:\n%s", want[i],
				 log);
		/* the line is a smtpc_state event at debug level */
		const char *bol = q;
		while (bol > log && bol[-1] != '\n')
			bol--;
		assert_non_null(strstr(bol, "level=debug"));
		assert_true(strstr(bol, "event=smtpc_state") < q);
		p = q;
	}
	/* one line per change, nothing else traced */
	size_t lines = 0;
	for (const char *r = log; (r = strstr(r, "event=smtpc_state")); r++)
		lines++;
	assert_int_equal(lines, sizeof(want) / sizeof(want[0]));
}
SC(state_trace, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* CLI-11: EHLO refused -> HELO, no extensions, no ESMTP parameters. */
static void sc_helo_fallback(struct h *h)
{
	rcpt("b@y.test", "rfc822;b@y.test", "SUCCESS");
	assert_int_equal(mta_envelope_set_str(&env.envid, "ID1"), 0);
	assert_int_equal(mta_envelope_set_str(&env.ret_raw, "FULL"), 0);
	h_server(h, "220 mx.test\r\n");
	expect_out(h, "EHLO client.test\r\n");
	h_server(h, "502 5.5.1 command not implemented\r\n");
	expect_out(h, "HELO client.test\r\n");
	expect_ev(h, "");
	h_server(h, "250 mx.test\r\n");
	expect_ev(h, "READY\n");
	assert_false(mta_smtpc_caps(&h->c)->esmtp);
	h_txn(h, 3, "hi\r\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "RCPT TO:<b@y.test>\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "DATA\r\n");
	h_server(h, "354 go\r\n");
	expect_out(h, "hi\r\n.\r\n");
	h_server(h, "250 ok\r\n");
	expect_ev(h, "NEED_BODY\nRCPT 0 250 2.0.0\nTXN_DONE\nREADY\n");
}
SC(helo_fallback, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* HELO refused too: host failure, courtesy QUIT. */
static void sc_helo_refused(struct h *h)
{
	h_server(h, "220 mx.test\r\n500 no\r\n550 5.7.1 go away\r\n");
	expect_out(h, "EHLO client.test\r\nHELO client.test\r\nQUIT\r\n");
	expect_ev(h, "FAIL helo 550 5.7.1\nCLOSED\n");
}
SC(helo_refused, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* 554 greeting: the host refuses (5xx), QUIT is still sent. */
static void sc_greeting_554(struct h *h)
{
	h_server(h, "554 mx.test no service\r\n");
	expect_out(h, "QUIT\r\n");
	expect_ev(h, "FAIL greeting 554 5.0.0\nCLOSED\n");
	assert_string_equal(h->text, "554 mx.test no service");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 0);
	h_server(h, "250 ignored\r\n");
	expect_ev(h, "");
	expect_out(h, "");
}
SC(greeting_554, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* ---- STARTTLS ---------------------------------------------------------- */

/* TLS-10/TLS-12: STARTTLS alone, once; after TLS only new caps count. */
static void sc_starttls_may(struct h *h)
{
	const struct mta_smtpc_caps *k = mta_smtpc_caps(&h->c);

	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250-PIPELINING\r\n250-SIZE 10\r\n250 STARTTLS\r\n");
	expect_out(h, "STARTTLS\r\n");
	assert_true(k->pipelining && k->starttls);
	assert_int_equal(k->size_max, 10);
	h_server(h, "220 2.0.0 ready\r\n");
	/* the harness ran tls_started(): EHLO again, caps forgotten */
	expect_ev(h, "STARTTLS\n");
	expect_out(h, "EHLO client.test\r\n");
	assert_true(mta_smtpc_in_tls(&h->c));
	assert_false(k->pipelining || k->size || k->starttls);
	h_server(h, "250-mx.test\r\n250 STARTTLS\r\n");
	expect_ev(h, "READY\n");
	expect_out(h, ""); /* never a second STARTTLS */
	/* no SIZE now: the 20-byte message goes, without SIZE=, lockstep */
	h_txn(h, 20, "x\r\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\n");
}
SC(starttls_may, MTA_SMTPC_TLS_MAY, NULL, NULL)

/* TLS-13: may + 454 -> continue in clear. */
static void sc_starttls_454_may(struct h *h)
{
	h_hello(h, "250 STARTTLS\r\n");
	expect_out(h, "STARTTLS\r\n");
	h_server(h, "454 4.7.0 TLS not available\r\n");
	expect_ev(h, "READY\n");
	expect_out(h, "");
	assert_false(mta_smtpc_in_tls(&h->c));
	h_quit(h);
}
SC(starttls_454_may, MTA_SMTPC_TLS_MAY, NULL, NULL)

/* TLS-13: require + 454 -> host failure 4.7.4. */
static void sc_starttls_454_require(struct h *h)
{
	h_hello(h, "250 STARTTLS\r\n");
	expect_out(h, "STARTTLS\r\n");
	h_server(h, "454 4.7.0 TLS not available\r\n");
	expect_ev(h, "FAIL starttls 454 4.7.4\nCLOSED\n");
	expect_out(h, "QUIT\r\n");
}
SC(starttls_454_require, MTA_SMTPC_TLS_REQUIRE, NULL, NULL)

/* Required STARTTLS not offered (or stripped): 4.7.4, nothing sent. */
static void sc_starttls_not_offered(struct h *h)
{
	h_hello(h, "250 PIPELINING\r\n");
	expect_ev(h, "FAIL starttls 0 4.7.4\nCLOSED\n");
	expect_out(h, "QUIT\r\n");
}
SC(starttls_not_offered, MTA_SMTPC_TLS_REQUIRE, NULL, NULL)

/* May, not offered: clear. */
static void sc_starttls_may_absent(struct h *h)
{
	h_hello(h, "250 PIPELINING\r\n");
	expect_ev(h, "READY\n");
	expect_out(h, "");
}
SC(starttls_may_absent, MTA_SMTPC_TLS_MAY, NULL, NULL)

/* Never STARTTLS with tls none, even when offered. */
static void sc_starttls_none(struct h *h)
{
	h_hello(h, "250 STARTTLS\r\n");
	expect_ev(h, "READY\n");
	expect_out(h, "");
}
SC(starttls_none, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* TLS-11: replies injected after the 220 are discarded, never used. */
static void sc_tls_injection(struct h *h)
{
	static const char inj[] = "250-INJECTED\r\n250 PIPELINING\r\n";

	h_hello(h, "250 STARTTLS\r\n");
	expect_out(h, "STARTTLS\r\n");
	h_server(h, "220 go ahead\r\n250-INJECTED\r\n250 PIPELINING\r\n");
	expect_ev(h, "STARTTLS\n");
	if (!h->bytewise)
		assert_int_equal(h->discarded, strlen(inj));
	expect_out(h, "EHLO client.test\r\n");
	assert_false(mta_smtpc_caps(&h->c)->pipelining);
	h_server(h, "250-mx.test\r\n250 SIZE 1000\r\n");
	expect_ev(h, "READY\n");
	assert_false(mta_smtpc_caps(&h->c)->pipelining);
	assert_true(mta_smtpc_caps(&h->c)->size);
}
SC(tls_injection, MTA_SMTPC_TLS_MAY, NULL, NULL)

/* The driver's policy check fails after the handshake: abort. */
static void sc_tls_abort(struct h *h)
{
	h->auto_tls = false;
	h_hello(h, "250 STARTTLS\r\n");
	h_server(h, "220 go ahead\r\n");
	expect_ev(h, "STARTTLS\n");
	assert_int_equal(mta_smtpc_start_txn(&h->c, &txn), -EINVAL);
	mta_smtpc_abort(&h->c, "4.7.5", "dane: no TLSA record matched");
	h_events(h);
	expect_ev(h, "FAIL starttls 0 4.7.5\nCLOSED\n");
	assert_string_equal(h->text, "dane: no TLSA record matched");
	assert_int_equal(mta_smtpc_tls_started(&h->c), -EINVAL);
}
SC(tls_abort, MTA_SMTPC_TLS_REQUIRE, NULL, NULL)

/* ---- AUTH -------------------------------------------------------------- */

static void sc_auth_ok(struct h *h)
{
	h_hello(h, "250 STARTTLS\r\n");
	h_server(h, "220 ready\r\n");
	expect_out(h, "STARTTLS\r\nEHLO client.test\r\n");
	h_server(h, "250-mx.test\r\n250 AUTH LOGIN PLAIN\r\n");
	expect_out(h, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
	expect_ev(h, "STARTTLS\n");
	h_server(h, "235 2.7.0 ok\r\n");
	expect_ev(h, "READY\n");
}
SC(auth_ok, MTA_SMTPC_TLS_MAY, "user", "pass")

static void sc_auth_535(struct h *h)
{
	h_hello(h, "250 STARTTLS\r\n");
	h_server(h, "220 ready\r\n");
	h_server(h, "250-mx.test\r\n250 AUTH=PLAIN\r\n");
	expect_out(h, "STARTTLS\r\nEHLO client.test\r\n"
		      "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
	h_server(h, "535 authentication failed\r\n");
	expect_ev(h, "STARTTLS\nFAIL auth 535 5.7.8\nCLOSED\n");
	expect_out(h, "QUIT\r\n");
}
SC(auth_535, MTA_SMTPC_TLS_MAY, "user", "pass")

/* AUTH offered in clear: credentials are never sent. */
static void sc_auth_no_tls(struct h *h)
{
	h_hello(h, "250 AUTH PLAIN LOGIN\r\n");
	expect_ev(h, "FAIL auth 0 4.7.0\nCLOSED\n");
	expect_out(h, "QUIT\r\n");
	assert_null(strstr(h->out, "AUTH"));
	assert_null(strstr(h->out, "AHVzZXIAcGFzcw"));
}
SC(auth_no_tls, MTA_SMTPC_TLS_NONE, "user", "pass")

/* ---- transaction checks before MAIL ---------------------------------- */

/* SIZE-05: too big for the peer: 5.3.4, MAIL never sent; reusable. */
static void sc_size_too_big(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	rcpt("c@y.test", NULL, NULL);
	h_hello(h, "250 SIZE 1000\r\n");
	expect_ev(h, "READY\n");
	h_txn(h, 5000, NULL);
	expect_ev(h, "RCPT 0 0 5.3.4\nRCPT 1 0 5.3.4\nTXN_DONE\nREADY\n");
	expect_out(h, "");
	h_txn(h, 1000, "x\r\n");
	expect_out(h, "MAIL FROM:<a@x.test> SIZE=1000\r\n"); /* SIZE-06 */
}
SC(size_too_big, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* UTF8-03: SMTPUTF8 message, peer without SMTPUTF8. */
static void sc_utf8_missing(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	env.smtputf8 = true;
	h_hello(h, "250 8BITMIME\r\n");
	expect_ev(h, "READY\n");
	h_txn(h, 10, NULL);
	expect_ev(h, "RCPT 0 0 5.6.7\nTXN_DONE\nREADY\n");
	expect_out(h, "");
}
SC(utf8_missing, MTA_SMTPC_TLS_NONE, NULL, NULL)

static void sc_utf8_present(struct h *h)
{
	rcpt("\xc3\xa9@y.test", NULL, NULL);
	env.smtputf8 = true;
	env.body = MTA_BODY_8BITMIME;
	h_hello(h, "250-8BITMIME\r\n250 SMTPUTF8\r\n");
	h_txn(h, 10, NULL);
	expect_out(h, "MAIL FROM:<a@x.test> BODY=8BITMIME SMTPUTF8\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "RCPT TO:<\xc3\xa9@y.test>\r\n");
}
SC(utf8_present, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* 8BIT-03 (choice: bounce 5.6.3). */
static void sc_eightbit_missing(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	env.body = MTA_BODY_8BITMIME;
	h_hello(h, "250 PIPELINING\r\n");
	expect_ev(h, "READY\n");
	h_txn(h, 10, NULL);
	expect_ev(h, "RCPT 0 0 5.6.3\nTXN_DONE\nREADY\n");
	expect_out(h, "");
}
SC(eightbit_missing, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* DSN-03: parameters forwarded byte-identically (case kept). */
static void sc_dsn_forwarded(struct h *h)
{
	rcpt("b@y.test", "rfc822;B+2B@Y.test", "success,Failure");
	rcpt("c@y.test", NULL, "NEVER");
	assert_int_equal(mta_envelope_set_str(&env.envid, "Q+2Bx.1"), 0);
	assert_int_equal(mta_envelope_set_str(&env.ret_raw, "hdrs"), 0);
	h_hello(h, "250-DSN\r\n250 PIPELINING\r\n");
	h_txn(h, 3, NULL);
	expect_out(h, "MAIL FROM:<a@x.test> RET=hdrs ENVID=Q+2Bx.1\r\n"
		      "RCPT TO:<b@y.test> NOTIFY=success,Failure "
		      "ORCPT=rfc822;B+2B@Y.test\r\n"
		      "RCPT TO:<c@y.test> NOTIFY=NEVER\r\nDATA\r\n");
}
SC(dsn_forwarded, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* DSN-04: no DSN at the peer, no DSN parameters. */
static void sc_dsn_not_offered(struct h *h)
{
	rcpt("b@y.test", "rfc822;b@y.test", "SUCCESS");
	assert_int_equal(mta_envelope_set_str(&env.envid, "ID"), 0);
	assert_int_equal(mta_envelope_set_str(&env.ret_raw, "FULL"), 0);
	h_hello(h, "250 PIPELINING\r\n");
	h_txn(h, 3, NULL);
	expect_out(h, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
		      "DATA\r\n");
}
SC(dsn_not_offered, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* Envelope strings that could inject commands are never sent. */
static void sc_bad_envelope(struct h *h)
{
	rcpt("b@y.test\r\nRSET", NULL, NULL);
	rcpt("c@y.test", NULL, "SUCCESS\r\nDATA");
	rcpt("d@y.test", NULL, NULL);
	h_hello(h, "250-DSN\r\n250 PIPELINING\r\n");
	h_txn(h, 3, "x\r\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\nRCPT TO:<d@y.test>\r\n"
		      "DATA\r\n");
	h_server(h, "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
	expect_out(h, "x\r\n.\r\n");
	expect_ev(h, "READY\nNEED_BODY\nRCPT 0 0 5.1.3\nRCPT 1 0 5.5.4\n"
		     "RCPT 2 250 2.0.0\nTXN_DONE\nREADY\n");
	/* a bad sender: nothing sent at all */
	assert_int_equal(mta_envelope_set_str(&env.sender, "a@x\n"), 0);
	h_txn(h, 3, NULL);
	expect_ev(h, "RCPT 0 0 5.1.3\nRCPT 1 0 5.5.4\nRCPT 2 0 5.1.7\n"
		     "TXN_DONE\nREADY\n");
	expect_out(h, "");
}
SC(bad_envelope, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* ---- replies in a transaction ---------------------------------------- */

/* CLI-05: per-recipient 250/450/550; the dot reply for the accepted. */
static void sc_rcpt_mix(struct h *h)
{
	rcpt("a1@y.test", NULL, NULL);
	rcpt("a2@y.test", NULL, NULL);
	rcpt("a3@y.test", NULL, NULL);
	h_hello(h, "250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n");
	expect_ev(h, "READY\n");
	h_txn(h, 3, "hi\r\n");
	h_server(h, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
		    "450 4.2.1 mailbox busy\r\n550 5.1.1 no such user\r\n"
		    "354 go\r\n");
	expect_ev(h, "RCPT 1 450 4.2.1\nRCPT 2 550 5.1.1\nNEED_BODY\n");
	h_server(h, "250 2.0.0 ok\r\n");
	expect_ev(h, "RCPT 0 250 2.0.0\nTXN_DONE\nREADY\n");
	/* a 451 to the dot defers every accepted recipient */
	h_txn(h, 3, "hi\r\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\nRCPT TO:<a1@y.test>\r\n"
		      "RCPT TO:<a2@y.test>\r\nRCPT TO:<a3@y.test>\r\n"
		      "DATA\r\nhi\r\n.\r\n"
		      "MAIL FROM:<a@x.test>\r\nRCPT TO:<a1@y.test>\r\n"
		      "RCPT TO:<a2@y.test>\r\nRCPT TO:<a3@y.test>\r\n"
		      "DATA\r\n");
	h_server(h, "250 ok\r\n250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n"
		    "451 4.3.0 try later\r\n");
	expect_ev(h, "RCPT 2 550 5.0.0\nNEED_BODY\nRCPT 0 451 4.3.0\n"
		     "RCPT 1 451 4.3.0\nTXN_DONE\nREADY\n");
	/* the failed dot: RSET before the next MAIL */
	h_txn(h, 3, "hi\r\n");
	expect_out(h, "hi\r\n.\r\nRSET\r\nMAIL FROM:<a@x.test>\r\n"
		      "RCPT TO:<a1@y.test>\r\nRCPT TO:<a2@y.test>\r\n"
		      "RCPT TO:<a3@y.test>\r\nDATA\r\n");
}
SC(rcpt_mix, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* CLI-12: 150 recipients, the peer takes 100 and answers 452 after. */
static void sc_rcpt_452(struct h *h)
{
	char buf[64];
	char *replies = calloc(1, 160 * 32);
	size_t n = 0;

	assert_non_null(replies);
	for (int i = 0; i < 150; i++) {
		snprintf(buf, sizeof(buf), "r%d@y.test", i);
		rcpt(buf, NULL, NULL);
	}
	h_hello(h, "250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n");
	h_txn(h, 3, "hi\r\n");
	n += (size_t)sprintf(replies + n, "250 ok\r\n");
	for (int i = 0; i < 150; i++)
		n += (size_t)sprintf(replies + n, i < 100
						  ? "250 2.1.5 ok\r\n"
						  : "452 4.5.3 too many\r\n");
	sprintf(replies + n, "354 go\r\n");
	h_server(h, replies);
	assert_int_equal(h->results[4], 50);
	assert_int_equal(h->results[2], 0);
	h_server(h, "250 2.0.0 ok\r\n");
	assert_int_equal(h->results[2], 100);
	assert_int_equal(h->results[4], 50);
	assert_non_null(strstr(h->out, "RCPT TO:<r149@y.test>\r\nDATA\r\n"));
	assert_non_null(strstr(h->log, "RCPT 100 452 4.5.3\n"));
	assert_non_null(strstr(h->log, "RCPT 99 250 2.0.0\nTXN_DONE\n"));
	free(replies);
}
SC(rcpt_452, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* A pipelined group larger than the output buffer is written as room
 * appears (RFC 2920); replies still matched by count. */
static void sc_big_group(struct h *h)
{
	char buf[128];
	size_t n = 0, len = 0;
	const char *p;
	char *replies = malloc(MTA_SMTPC_MAX_RCPT * 16 + 64);

	assert_non_null(replies);
	for (int i = 0; i < MTA_SMTPC_MAX_RCPT; i++) {
		snprintf(buf, sizeof(buf),
			 "recipient-with-a-long-local-part-%04d@y.test", i);
		rcpt(buf, NULL, NULL);
	}
	h_hello(h, "250 PIPELINING\r\n");
	expect_ev(h, "READY\n");
	h_txn(h, 3, "x\r\n");
	for (p = h->out + h->out_seen; (p = strstr(p, "RCPT TO:<")) != NULL;
	     p++)
		n++;
	assert_int_equal(n, MTA_SMTPC_MAX_RCPT);
	assert_true(h->out_len - h->out_seen > MTA_SMTPC_OUT_SIZE);
	assert_non_null(strstr(h->out + h->out_seen,
			       "-0999@y.test>\r\nDATA\r\n"));
	h->out_seen = h->out_len;
	len += (size_t)sprintf(replies + len, "250 ok\r\n");
	for (int i = 0; i < MTA_SMTPC_MAX_RCPT; i++)
		len += (size_t)sprintf(replies + len, "250 ok\r\n");
	sprintf(replies + len, "354 go\r\n250 ok\r\n");
	h_server(h, replies);
	expect_out(h, "x\r\n.\r\n");
	assert_int_equal(h->results[2], MTA_SMTPC_MAX_RCPT);
	free(replies);
}
SC(big_group, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* PIPE-06: every RCPT refused but DATA got 354: a lone dot. */
static void sc_all_rejected_354(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	rcpt("c@y.test", NULL, NULL);
	h_hello(h, "250 PIPELINING\r\n");
	h_txn(h, 5, "secret body\r\n");
	h_server(h, "250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n354 go\r\n");
	expect_ev(h, "READY\nRCPT 0 550 5.1.1\nRCPT 1 550 5.1.1\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
		      "RCPT TO:<c@y.test>\r\nDATA\r\n.\r\n");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 600000);
	h_server(h, "250 ok\r\n");
	expect_ev(h, "TXN_DONE\nREADY\n");
	assert_null(strstr(h->out, "secret"));
	assert_int_equal(h->results[2], 0);
}
SC(all_rejected_354, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* Lockstep, every RCPT refused: no DATA; RSET before the next MAIL. */
static void sc_all_rejected_lockstep(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "");
	h_txn(h, 5, "x\r\n");
	h_server(h, "250 ok\r\n");
	h_server(h, "550 no\r\n");
	expect_ev(h, "READY\nRCPT 0 550 5.0.0\nTXN_DONE\nREADY\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
	h_txn(h, 5, "x\r\n");
	expect_out(h, "RSET\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\n");
}
SC(all_rejected_lockstep, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* CLI-09: MAIL 550, then the next transaction is tried normally. */
static void sc_mail_550_pipelined(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	rcpt("c@y.test", NULL, NULL);
	h_hello(h, "250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n");
	expect_ev(h, "READY\n");
	h_txn(h, 5, "x\r\n");
	h_server(h, "550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n"
		    "503 5.5.1 need MAIL\r\n503 5.5.1 no valid recipients\r\n");
	expect_ev(h, "RCPT 0 550 5.7.1\nRCPT 1 550 5.7.1\nTXN_DONE\nREADY\n");
	assert_string_equal(h->text, "550 5.7.1 sender refused");
	h_txn(h, 5, "x\r\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
		      "RCPT TO:<c@y.test>\r\nDATA\r\n"
		      "RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
		      "RCPT TO:<c@y.test>\r\nDATA\r\n");
	h_server(h, "250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"
		    "250 2.0.0 ok\r\n");
	expect_ev(h, "NEED_BODY\nRCPT 0 250 2.0.0\nRCPT 1 250 2.0.0\n"
		     "TXN_DONE\nREADY\n");
	expect_out(h, "x\r\n.\r\n");
	h_quit(h);
}
SC(mail_550_pipelined, MTA_SMTPC_TLS_NONE, NULL, NULL)

static void sc_mail_452_lockstep(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250 SIZE\r\n");
	expect_ev(h, "READY\n");
	assert_true(mta_smtpc_caps(&h->c)->size);
	h_txn(h, 5, "x\r\n");
	expect_out(h, "MAIL FROM:<a@x.test> SIZE=5\r\n");
	h_server(h, "452 4.3.1 insufficient storage\r\n");
	expect_ev(h, "RCPT 0 452 4.3.1\nTXN_DONE\nREADY\n");
	expect_out(h, "");
	h_txn(h, 5, "x\r\n");
	expect_out(h, "RSET\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "MAIL FROM:<a@x.test> SIZE=5\r\n");
	h_server(h, "250 ok\r\n");
	expect_out(h, "RCPT TO:<b@y.test>\r\n");
}
SC(mail_452_lockstep, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* RSET refused inside a transaction: host failure, never a bounce. */
static void sc_rset_fails(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n");
	h_txn(h, 5, "x\r\n");
	h_server(h, "550 5.7.1 no\r\n550 5.5.1 no\r\n503 5.5.1 no\r\n");
	expect_ev(h, "READY\nRCPT 0 550 5.7.1\nTXN_DONE\nREADY\n");
	h_txn(h, 5, "x\r\n");
	h_server(h, "554 5.5.1 RSET refused\r\n");
	expect_ev(h, "RCPT 0 554 4.5.1\nTXN_DONE\nFAIL rset 554 4.5.1\n"
		     "CLOSED\n");
	expect_out(h, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
		      "DATA\r\nRSET\r\nMAIL FROM:<a@x.test>\r\n"
		      "RCPT TO:<b@y.test>\r\nDATA\r\n");
}
SC(rset_fails, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* CLI-06: 421 mid-transaction: the open recipients are deferred. */
static void sc_r421_mid_txn(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	rcpt("c@y.test", NULL, NULL);
	rcpt("d@y.test", NULL, NULL);
	h_hello(h, "250 PIPELINING\r\n");
	h_txn(h, 5, "x\r\n");
	h_server(h, "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n"
		    "421 5.3.2 shutting down\r\n");
	/* a 5.x.x enhanced code does not match 421: class 4 from the code */
	expect_ev(h, "READY\nRCPT 1 550 5.1.1\nRCPT 0 421 4.0.0\n"
		     "RCPT 2 421 4.0.0\nTXN_DONE\nFAIL rcpt 421 4.0.0\n"
		     "CLOSED\n");
	assert_true(mta_smtpc_closed(&h->c));
	h_server(h, "250 more\r\n");
	expect_ev(h, "");
}
SC(r421_mid_txn, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* 421 while idle and during the body. */
static void sc_r421_idle(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "");
	h_server(h, "421 4.4.2 idle timeout\r\n");
	expect_ev(h, "READY\nFAIL idle 421 4.4.2\nCLOSED\n");
	expect_out(h, "");
}
SC(r421_idle, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* The peer closes mid-body: 4.4.2 for the open recipients. */
static void sc_eof_in_body(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h->manual_body = true;
	h_hello(h, "250 PIPELINING\r\n");
	h_txn(h, 5, "x\r\n");
	h_server(h, "250 ok\r\n250 ok\r\n354 go\r\n");
	expect_ev(h, "READY\nNEED_BODY\n");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 180000);
	assert_true(mta_smtpc_wants_body(&h->c));
	mta_smtpc_eof(&h->c);
	h_events(h);
	expect_ev(h, "RCPT 0 0 4.4.2\nTXN_DONE\nFAIL data 0 4.4.2\nCLOSED\n");
	assert_false(mta_smtpc_wants_body(&h->c));
	assert_int_equal(mta_smtpc_body(&h->c, (const uint8_t *)"x", 1, true),
			 0);
}
SC(eof_in_body, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* ---- body encoding ------------------------------------------------------ */

/* SMUG-05/08/10/11, CLI-13: stuffing, bare CR/LF, final CRLF. */
static void sc_body_smuggling(struct h *h)
{
	static const char body[] = ".lead\r\nx\n.\r\nMAIL FROM:<evil@x>\r\n"
				   "y\n.\nz\r.\r\n.\rbare\rcr\n\nend";
	static const char wire[] =
		"..lead\r\nx\r\n..\r\nMAIL FROM:<evil@x>\r\n"
		"y\r\n..\r\nz\r\n..\r\n..\r\nbare\r\ncr\r\n\r\nend\r\n.\r\n";
	const char *end;

	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250 PIPELINING\r\n");
	h_txn(h, sizeof(body) - 1, body);
	h_server(h, "250 ok\r\n250 ok\r\n354 go\r\n");
	/* the body part, after the pipelined group */
	assert_string_equal(h->out + h->out_seen +
				    strlen("MAIL FROM:<a@x.test>\r\n"
					    "RCPT TO:<b@y.test>\r\nDATA\r\n"),
			    wire);
	end = strstr(h->out, "\r\n.\r\n");
	assert_non_null(end);
	assert_int_equal((size_t)(end - h->out) + 5, h->out_len);
	for (size_t i = 0; i < h->out_len; i++) {
		if (h->out[i] == '\n')
			assert_true(i > 0 && h->out[i - 1] == '\r');
		if (h->out[i] == '\r')
			assert_true(h->out[i + 1] == '\n');
	}
	h->out_seen = h->out_len;
}
SC(body_smuggling, MTA_SMTPC_TLS_NONE, NULL, NULL)

static void one_body(struct h *h, const char *body, const char *wire)
{
	h_txn(h, strlen(body), body);
	h_server(h, "250 ok\r\n250 ok\r\n354 go\r\n");
	expect_out(h, wire);
	h_server(h, "250 ok\r\n");
	expect_ev(h, "NEED_BODY\nRCPT 0 250 2.0.0\nTXN_DONE\nREADY\n");
}

/* Edge bodies: empty, CRLF-terminated (no extra blank line), lone CR. */
static void sc_body_edges(struct h *h)
{
	static const char pre[] =
		"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
	char want[256];

	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250 PIPELINING\r\n");
	expect_ev(h, "READY\n");
	snprintf(want, sizeof(want), "%s.\r\n", pre);
	one_body(h, "", want);
	snprintf(want, sizeof(want), "%sa\r\n\r\n.\r\n", pre);
	one_body(h, "a\r\n\r\n", want);
	snprintf(want, sizeof(want), "%sa\r\n.\r\n", pre);
	one_body(h, "a\r", want);
	snprintf(want, sizeof(want), "%sa\r\n\r\nb\r\n.\r\n", pre);
	one_body(h, "a\r\r\nb", want);
	snprintf(want, sizeof(want), "%s..\r\n.\r\n", pre);
	one_body(h, ".", want + 0);
}
SC(body_edges, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* A body larger than the output buffer goes out in pieces. */
static void sc_body_large(struct h *h)
{
	size_t n = 5 * MTA_SMTPC_OUT_SIZE;
	char *body = malloc(n + 1);

	assert_non_null(body);
	for (size_t i = 0; i < n; i++)
		body[i] = (i % 64 == 63) ? '\n' : (i % 64 == 0 ? '.' : 'a');
	body[n] = '\0';
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250 PIPELINING\r\n");
	h_txn(h, n, body);
	h_server(h, "250 ok\r\n250 ok\r\n354 go\r\n");
	/* 63 chars + "." stuffed + CR added per 64-byte line, + ".\r\n" */
	assert_int_equal(h->out_len - h->out_seen,
			 strlen("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
				"DATA\r\n") + n / 64 * 66 + 3);
	free(body);
}
SC(body_large, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* The wire form of a body, byte by byte, as mta_smtpc_body() is specified:
 * bare CR and bare LF become CRLF, a '.' at a line start is doubled, a
 * missing final CRLF is added, then ".\r\n" (SMUG-05/08/10). */
static size_t ref_wire(const char *b, size_t n, char *out)
{
	bool bol = true, cr = false;
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		char x = b[i];

		if (x == '\r') {
			if (cr) {
				out[o++] = '\r';
				out[o++] = '\n';
				bol = true;
			}
			cr = true;
			continue;
		}
		if (cr || x == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			cr = false;
			bol = true;
			if (x == '\n')
				continue;
		}
		if (bol && x == '.')
			out[o++] = '.';
		out[o++] = x;
		bol = false;
	}
	if (cr || !bol) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	memcpy(out + o, ".\r\n", 4);
	return o + 3;
}

/* Random bodies (plain runs of every length, CR, LF, CRLF, dots at and
 * off line starts) across output-buffer boundaries come out exactly as
 * the byte-by-byte reference says: the plain-run copy changes nothing
 * (SMUG-05, SMUG-08, SMUG-10, SMUG-11). */
static void sc_body_random(struct h *h)
{
	static const char pre[] =
		"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
	size_t n = 2 * MTA_SMTPC_OUT_SIZE + 123;
	char *body = malloc(n + 1), *want = malloc(2 * n + sizeof(pre) + 8);
	uint32_t seed = 12345;

	assert_non_null(body);
	assert_non_null(want);
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250 PIPELINING\r\n");
	expect_ev(h, "READY\n");
	for (int round = 0; round < 8; round++) {
		size_t i = 0;

		while (i < n) {
			seed = seed * 1103515245u + 12345u;
			uint32_t r = (seed >> 8) % 16, len;

			seed = seed * 1103515245u + 12345u;
			/* round 0: long plain runs; later: denser specials */
			len = 1 + (seed >> 8) % (round == 0 ? 3000u : 90u);
			if (r < 4) {
				body[i++] = "\r\n.\r"[r];
			} else if (r < 6) {
				body[i++] = '\r';
				if (i < n)
					body[i++] = '\n';
			} else {
				for (uint32_t k = 0; k < len && i < n; k++)
					body[i++] = (char)('a' + k % 26);
			}
		}
		body[n] = '\0';
		memcpy(want, pre, sizeof(pre) - 1);
		ref_wire(body, n, want + sizeof(pre) - 1);
		one_body(h, body, want);
		h->out_len = h->out_seen = 0; /* room for the next round */
	}
	free(body);
	free(want);
}
SC(body_random, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* ---- reply parsing ------------------------------------------------------ */

static void sc_multiline(struct h *h)
{
	const struct mta_smtpc_caps *k = mta_smtpc_caps(&h->c);

	h_server(h, "220-mx.test hello\r\n220-second line\r\n220 third\r\n");
	expect_out(h, "EHLO client.test\r\n");
	h_server(h, "250-mx.test\r\n250-pipelining\r\n250-size 52428800\r\n"
		    "250-dsn\r\n250-Chunking\r\n250-smtputf8\r\n"
		    "250-AUTH login Plain\r\n250-8bitmime\r\n"
		    "250-X-UNKNOWN foo\r\n250 enhancedstatuscodes\n");
	expect_ev(h, "READY\n");
	assert_true(k->pipelining && k->size && k->dsn && k->chunking &&
		    k->smtputf8 && k->auth && k->auth_plain &&
		    k->eightbitmime && k->enhancedstatuscodes);
	assert_int_equal(k->size_max, 52428800);
}
SC(multiline, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* Garbage, inconsistent codes, long lines: protocol error 4.5.0. */
static void sc_malformed_greeting(struct h *h)
{
	h_server(h, "hello there\r\n");
	expect_ev(h, "FAIL greeting 0 4.5.0\nCLOSED\n");
	expect_out(h, "");
}
SC(malformed_greeting, MTA_SMTPC_TLS_NONE, NULL, NULL)

static void sc_inconsistent(struct h *h)
{
	h_server(h, "220 mx\r\n250-mx\r\n251 PIPELINING\r\n");
	expect_ev(h, "FAIL ehlo 0 4.5.0\nCLOSED\n");
	assert_string_equal(h->text,
			    "protocol error: inconsistent reply codes");
}
SC(inconsistent, MTA_SMTPC_TLS_NONE, NULL, NULL)

static void sc_long_line(struct h *h)
{
	char *s = malloc(MTA_SMTPC_LINE_MAX + 16);

	assert_non_null(s);
	memset(s, 'a', MTA_SMTPC_LINE_MAX + 8);
	memcpy(s, "220 ", 4);
	strcpy(s + MTA_SMTPC_LINE_MAX + 8, "\r\n");
	h_server(h, s);
	expect_ev(h, "FAIL greeting 0 4.5.0\nCLOSED\n");
	assert_string_equal(h->text, "protocol error: reply line too long");
	free(s);
}
SC(long_line, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* One octet over, ended by a bare LF (no CR to strip). */
static void sc_long_line_lf(struct h *h)
{
	char *s = malloc(MTA_SMTPC_LINE_MAX + 16);

	assert_non_null(s);
	memset(s, 'a', MTA_SMTPC_LINE_MAX + 1);
	memcpy(s, "220 ", 4);
	strcpy(s + MTA_SMTPC_LINE_MAX + 1, "\n");
	h_server(h, s);
	expect_ev(h, "FAIL greeting 0 4.5.0\nCLOSED\n");
	free(s);
}
SC(long_line_lf, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* A line of exactly MTA_SMTPC_LINE_MAX octets is fine. */
static void sc_max_line(struct h *h)
{
	char *s = malloc(MTA_SMTPC_LINE_MAX + 16);

	assert_non_null(s);
	memset(s, 'a', MTA_SMTPC_LINE_MAX);
	memcpy(s, "220 ", 4);
	strcpy(s + MTA_SMTPC_LINE_MAX, "\r\n");
	h_server(h, s);
	expect_out(h, "EHLO client.test\r\n");
	expect_ev(h, "");
	free(s);
}
SC(max_line, MTA_SMTPC_TLS_NONE, NULL, NULL)

static void sc_long_reply(struct h *h)
{
	size_t n = MTA_SMTPC_REPLY_MAX + 100;
	char *s = malloc(n + 1);

	assert_non_null(s);
	for (size_t i = 0; i + 10 <= n; i += 10)
		memcpy(s + i, "220-abcd\r\n", 10);
	s[n - n % 10] = '\0';
	h_server(h, s);
	expect_ev(h, "FAIL greeting 0 4.5.0\nCLOSED\n");
	assert_string_equal(h->text, "protocol error: reply too long");
	free(s);
}
SC(long_reply, MTA_SMTPC_TLS_NONE, NULL, NULL)

static void sc_unsolicited(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "");
	h_server(h, "250 surprise\r\n");
	expect_ev(h, "READY\nFAIL idle 0 4.5.0\nCLOSED\n");
}
SC(unsolicited, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* A 250 to DATA would mark mail delivered that was never sent. */
static void sc_data_250(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250 PIPELINING\r\n");
	h_txn(h, 3, "x\r\n");
	h_server(h, "250 ok\r\n250 ok\r\n250 ok\r\n");
	expect_ev(h, "READY\nRCPT 0 0 4.5.0\nTXN_DONE\nFAIL data 0 4.5.0\n"
		     "CLOSED\n");
}
SC(data_250, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* ---- timeouts ------------------------------------------------------------- */

/* CLI-08: the RFC 5321 4.5.3.2 minimum per wait; then 4.4.2. */
static void sc_timeouts(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h->manual_body = true;
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 300000); /* greeting */
	h_server(h, "220 mx\r\n");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 300000); /* EHLO */
	h_server(h, "250 mx\r\n");
	h_txn(h, 3, "x\r\n");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 300000); /* MAIL */
	h_server(h, "250 ok\r\n");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 300000); /* RCPT */
	h_server(h, "250 ok\r\n");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 120000); /* DATA */
	h_server(h, "354 go\r\n");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 180000); /* block */
	assert_int_equal(mta_smtpc_body(&h->c, (const uint8_t *)"x", 1, true),
			 1);
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 600000); /* dot */
	mta_smtpc_timeout(&h->c);
	h_events(h);
	expect_ev(h, "READY\nNEED_BODY\nRCPT 0 0 4.4.2\nTXN_DONE\n"
		     "FAIL dot 0 4.4.2\nCLOSED\n");
	assert_string_equal(h->text, "timeout");
	assert_int_equal(mta_smtpc_timeout_ms(&h->c), 0);
	expect_out(h, "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\n"
		      "RCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n");
}
SC(timeouts, MTA_SMTPC_TLS_NONE, NULL, NULL)

static void sc_timeout_greeting(struct h *h)
{
	mta_smtpc_timeout(&h->c);
	h_events(h);
	expect_ev(h, "FAIL greeting 0 4.4.2\nCLOSED\n");
	expect_out(h, "");
}
SC(timeout_greeting, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* ---- whole sessions ------------------------------------------------------- */

/* Two transactions on one connection, then QUIT/221. */
static void sc_two_txns(struct h *h)
{
	rcpt("b@y.test", NULL, NULL);
	h_hello(h, "250 PIPELINING\r\n");
	expect_ev(h, "READY\n");
	for (int i = 0; i < 2; i++) {
		h_txn(h, 3, "x\r\n");
		expect_out(h, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
			      "DATA\r\n");
		h_server(h, "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
		expect_out(h, "x\r\n.\r\n");
		expect_ev(h, "NEED_BODY\nRCPT 0 250 2.0.0\nTXN_DONE\nREADY\n");
	}
	h_quit(h);
	assert_int_equal(mta_smtpc_quit(&h->c), -EINVAL);
}
SC(two_txns, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* EOF after QUIT is a clean close, not a failure. */
static void sc_eof_after_quit(struct h *h)
{
	h_hello(h, "");
	assert_int_equal(mta_smtpc_quit(&h->c), 0);
	mta_smtpc_eof(&h->c);
	h_events(h);
	expect_ev(h, "READY\nCLOSED\n");
	expect_out(h, "QUIT\r\n");
}
SC(eof_after_quit, MTA_SMTPC_TLS_NONE, NULL, NULL)

/* ---- API misuse ----------------------------------------------------------- */

static void init_errors(void **st)
{
	struct mta_smtpc c;
	struct mta_smtpc_config cfg = {.helo_name = "client.test"};

	(void)st;
	assert_int_equal(mta_smtpc_init(&c, &cfg), 0);
	cfg.helo_name = "b\xc3\xbcro.test"; /* UTF8-05: A-labels only */
	assert_int_equal(mta_smtpc_init(&c, &cfg), MTA_ECONFIG);
	cfg.helo_name = "a b";
	assert_int_equal(mta_smtpc_init(&c, &cfg), MTA_ECONFIG);
	cfg.helo_name = "";
	assert_int_equal(mta_smtpc_init(&c, &cfg), MTA_ECONFIG);
	cfg.helo_name = "[192.0.2.1]";
	assert_int_equal(mta_smtpc_init(&c, &cfg), 0);
	cfg.auth_user = "u";
	assert_int_equal(mta_smtpc_init(&c, &cfg), MTA_ECONFIG);
	cfg.auth_pass = "p";
	assert_int_equal(mta_smtpc_init(&c, &cfg), 0);
	cfg.tls = 7;
	assert_int_equal(mta_smtpc_init(&c, &cfg), MTA_ECONFIG);
	mta_smtpc_free(&c);
}

static void sc_txn_errors(struct h *h)
{
	static size_t big[MTA_SMTPC_MAX_RCPT + 1];
	struct mta_smtpc_txn t = {.env = &env, .rcpts = idx, .nrcpt = 1};

	rcpt("b@y.test", NULL, NULL);
	assert_int_equal(mta_smtpc_start_txn(&h->c, &t), -EINVAL); /* early */
	h_hello(h, "");
	t.nrcpt = 0;
	assert_int_equal(mta_smtpc_start_txn(&h->c, &t), -EINVAL);
	t.nrcpt = 2; /* index 1 out of range */
	assert_int_equal(mta_smtpc_start_txn(&h->c, &t), -EINVAL);
	t.rcpts = big;
	t.nrcpt = MTA_SMTPC_MAX_RCPT + 1;
	assert_int_equal(mta_smtpc_start_txn(&h->c, &t), MTA_ETOOBIG);
	expect_out(h, "");
	t.rcpts = idx;
	t.nrcpt = 1;
	assert_int_equal(mta_smtpc_start_txn(&h->c, &t), 0);
	assert_int_equal(mta_smtpc_start_txn(&h->c, &t), -EINVAL); /* busy */
	h_drain(h);
	expect_out(h, "MAIL FROM:<a@x.test>\r\n");
}
SC(txn_errors, MTA_SMTPC_TLS_NONE, NULL, NULL)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(happy_pipelining),
		cmocka_unit_test(happy_lockstep),
		cmocka_unit_test(state_trace),
		cmocka_unit_test(helo_fallback),
		cmocka_unit_test(helo_refused),
		cmocka_unit_test(greeting_554),
		cmocka_unit_test(starttls_may),
		cmocka_unit_test(starttls_454_may),
		cmocka_unit_test(starttls_454_require),
		cmocka_unit_test(starttls_not_offered),
		cmocka_unit_test(starttls_may_absent),
		cmocka_unit_test(starttls_none),
		cmocka_unit_test(tls_injection),
		cmocka_unit_test(tls_abort),
		cmocka_unit_test(auth_ok),
		cmocka_unit_test(auth_535),
		cmocka_unit_test(auth_no_tls),
		cmocka_unit_test(size_too_big),
		cmocka_unit_test(utf8_missing),
		cmocka_unit_test(utf8_present),
		cmocka_unit_test(eightbit_missing),
		cmocka_unit_test(dsn_forwarded),
		cmocka_unit_test(dsn_not_offered),
		cmocka_unit_test(bad_envelope),
		cmocka_unit_test(rcpt_mix),
		cmocka_unit_test(rcpt_452),
		cmocka_unit_test(big_group),
		cmocka_unit_test(all_rejected_354),
		cmocka_unit_test(all_rejected_lockstep),
		cmocka_unit_test(mail_550_pipelined),
		cmocka_unit_test(mail_452_lockstep),
		cmocka_unit_test(rset_fails),
		cmocka_unit_test(r421_mid_txn),
		cmocka_unit_test(r421_idle),
		cmocka_unit_test(eof_in_body),
		cmocka_unit_test(body_smuggling),
		cmocka_unit_test(body_edges),
		cmocka_unit_test(body_large),
		cmocka_unit_test(body_random),
		cmocka_unit_test(multiline),
		cmocka_unit_test(malformed_greeting),
		cmocka_unit_test(inconsistent),
		cmocka_unit_test(long_line),
		cmocka_unit_test(long_line_lf),
		cmocka_unit_test(max_line),
		cmocka_unit_test(long_reply),
		cmocka_unit_test(unsolicited),
		cmocka_unit_test(data_250),
		cmocka_unit_test(timeouts),
		cmocka_unit_test(timeout_greeting),
		cmocka_unit_test(two_txns),
		cmocka_unit_test(eof_after_quit),
		cmocka_unit_test(init_errors),
		cmocka_unit_test(txn_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
