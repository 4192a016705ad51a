/*
 * test_smtp_server.c - table-driven tests of the sans-I/O SMTP server.
 *
 * Every case is run twice: the whole input in one feed() call, then byte
 * by byte.  Both runs must give the expected reply codes (the final line
 * of each reply, matched as a prefix, e.g. "250 2.1.5"), the expected
 * event sequence (BODY left out: its granularity depends on chunking),
 * the same message bodies and envelopes.  Every reply of every run is
 * also checked for ESC-01/02 and for CRLF framing.  Case names carry the
 * conformance ids of reference/conformance.md section 5.
 */
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
#include "smtp_server.h"

#include <errno.h>

#define HOST "mx.test"
#define NOW ((time_t)1700000000) /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define TLSDESC "version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256"
#define MAXMSG 8
#define EH "EHLO c.test\r\n"
#define MF "MAIL FROM:<a@x.test>\r\n"
#define RT "RCPT TO:<b@y.test>\r\n"

/* ---- harness ---------------------------------------------------------- */

struct gen {
	struct mta_buf in, post, exp, ev;
};

struct tcase {
	const char *name;
	const char *in;	  /* pre-TLS input (or NULL with gen) */
	size_t in_len;	  /* 0: strlen */
	const char *post; /* fed after tls_started() */
	const char *exp;  /* replies after the greeting, '|'-separated */
	const char *ev;	  /* events: R D M A T C (BODY omitted) */
	const char *body; /* expected body of message 0, or NULL */
	uint64_t max_size; /* 0: 10000 */
	unsigned max_rcpt; /* 0: 100 */
	int tls, norelay; /* tls: cfg->starttls */
	int refused;	  /* cfg->refused: 554 greeting */
	int auth;	  /* cfg->auth: AUTH after TLS (alice / s3cret) */
	const char *postmaster; /* cfg->postmaster */
	int results[MAXMSG]; /* message_done() result per message */
	long tls_discard;    /* expected STARTTLS ev.len (one chunk), 0: any */
	void (*gen)(struct gen *g);
	void (*check)(const struct tcase *tc, const void *run);
};

struct run {
	char **lines;
	size_t nlines, cap;
	char pend[65536];
	size_t npend;
	char ev[16384];
	size_t nev;
	struct mta_envelope env[MAXMSG];
	struct mta_buf body[MAXMSG];
	char rcv[MAXMSG][2048];
	size_t nmsg;
	struct mta_buf cur;
	size_t cur_emitted, max_emitted;
	long tls_discard;
	int closed;
};

static void run_free(struct run *r)
{
	for (size_t i = 0; i < r->nlines; i++)
		free(r->lines[i]);
	free(r->lines);
	for (size_t i = 0; i < MAXMSG; i++) {
		mta_envelope_free(&r->env[i]);
		mta_buf_free(&r->body[i]);
	}
	mta_buf_free(&r->cur);
}

static void add_line(struct run *r, const char *p, size_t n)
{
	if (r->nlines == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 64;
		r->lines = realloc(r->lines, r->cap * sizeof(char *));
		assert_non_null(r->lines);
	}
	char *l = malloc(n + 1);
	assert_non_null(l);
	memcpy(l, p, n);
	l[n] = '\0';
	r->lines[r->nlines++] = l;
}

/* Moves engine output into lines; every line must end in CRLF and hold
 * no other CR or LF. */
static void drain(struct mta_smtpd *s, struct run *r)
{
	const uint8_t *p;
	size_t n = mta_smtpd_output(s, &p);

	assert_true(r->npend + n <= sizeof(r->pend));
	memcpy(r->pend + r->npend, p, n);
	r->npend += n;
	mta_smtpd_output_consume(s, n);
	size_t start = 0;
	for (size_t i = 0; i < r->npend; i++) {
		if (r->pend[i] == '\n') {
			assert_true(i > start && r->pend[i - 1] == '\r');
			add_line(r, r->pend + start, i - 1 - start);
			start = i + 1;
		}
	}
	for (size_t i = start; i + 1 < r->npend; i++)
		assert_true(r->pend[i] != '\r');
	memmove(r->pend, r->pend + start, r->npend - start);
	r->npend -= start;
}

static void add_ev(struct run *r, char c)
{
	assert_true(r->nev + 1 < sizeof(r->ev));
	r->ev[r->nev++] = c;
	r->ev[r->nev] = '\0';
}

static const struct tcase *cur_tc;

/* Feeds in[0..len) in windows of `chunk` bytes (0: all), like a driver.
 * Returns true when STARTTLS was accepted (rest of the input dropped). */
static int feed_all(struct mta_smtpd *s, struct run *r, const uint8_t *in,
		    size_t len, size_t chunk, int *qseq)
{
	size_t off = 0;
	int stall = 0;

	while (off < len && !r->closed) {
		size_t w = chunk ? (len - off < chunk ? len - off : chunk)
				 : len - off;
		struct mta_smtpd_event e;
		size_t n = 99999;
		char qid[16];
		enum mta_smtpd_ev ev = mta_smtpd_feed(s, in + off, w, &n, &e);

		assert_true(n <= w);
		off += n;
		drain(s, r);
		switch (ev) {
		case MTA_SMTPD_EV_NONE:
			if (n == 0)
				assert_true(++stall < 3); /* never stuck */
			continue;
		case MTA_SMTPD_EV_REJECT:
			assert_true(e.code >= 400 && e.code < 600);
			assert_non_null(e.text);
			assert_non_null(e.verb);
			assert_int_equal(atoi(e.text), e.code);
			add_ev(r, 'R');
			break;
		case MTA_SMTPD_EV_DATA_START:
			add_ev(r, 'D');
			r->cur.len = 0;
			r->cur_emitted = 0;
			snprintf(qid, sizeof(qid), "Q%d", *qseq);
			assert_true(r->nmsg < MAXMSG);
			assert_true(mta_smtpd_received(s, qid, NOW,
						       r->rcv[r->nmsg],
						       sizeof(r->rcv[0])) > 0);
			break;
		case MTA_SMTPD_EV_BODY:
			assert_true(e.len > 0);
			assert_int_equal(mta_buf_append(&r->cur, e.data, e.len),
					 0);
			r->cur_emitted += e.len;
			if (r->cur_emitted > r->max_emitted)
				r->max_emitted = r->cur_emitted;
			break;
		case MTA_SMTPD_EV_MESSAGE:
			add_ev(r, 'M');
			assert_true(r->nmsg < MAXMSG);
			mta_smtpd_take_envelope(s, &r->env[r->nmsg]);
			r->body[r->nmsg] = r->cur;
			memset(&r->cur, 0, sizeof(r->cur));
			/* feed() consumes nothing until message_done() */
			{
				size_t n2 = 7;
				struct mta_smtpd_event e2;
				if (off < len) {
					assert_int_equal(
						mta_smtpd_feed(s, in + off,
							       len - off, &n2,
							       &e2),
						MTA_SMTPD_EV_NONE);
					assert_int_equal(n2, 0);
				}
			}
			snprintf(qid, sizeof(qid), "Q%d", (*qseq)++);
			mta_smtpd_message_done(s, cur_tc->results[r->nmsg], qid);
			r->nmsg++;
			drain(s, r);
			break;
		case MTA_SMTPD_EV_ABORT:
			add_ev(r, 'A');
			assert_true(e.code >= 200 && e.code < 600);
			assert_non_null(e.text);
			r->cur.len = 0;
			break;
		case MTA_SMTPD_EV_STARTTLS:
			add_ev(r, 'T');
			assert_int_equal(n, w); /* TLS-04: all dropped */
			r->tls_discard = (long)e.len;
			return 1;
		case MTA_SMTPD_EV_CLOSE:
			add_ev(r, 'C');
			assert_int_equal(n, w);
			r->closed = 1;
			break;
		case MTA_SMTPD_EV_AUTH: {
			/* the driver's verification; nothing is consumed
			 * until the verdict */
			size_t n2 = 7;
			struct mta_smtpd_event e2;
			bool ok = strcmp(e.user, "alice") == 0 &&
				  strcmp(e.pass, "s3cret") == 0;
			add_ev(r, ok ? 'U' : 'u');
			if (off < len) {
				assert_int_equal(mta_smtpd_feed(s, in + off,
								len - off, &n2,
								&e2),
						 MTA_SMTPD_EV_NONE);
				assert_int_equal(n2, 0);
			}
			mta_smtpd_auth_done(s, ok ? MTA_SMTPD_AUTH_OK
						  : MTA_SMTPD_AUTH_FAIL);
			assert_false(mta_smtpd_authenticated(s) != ok);
			drain(s, r);
			if (mta_smtpd_closed(s))
				r->closed = 1;
			break;
		}
		}
		stall = 0;
	}
	return 0;
}

/* ESC-01/02: every reply but the greeting, the HELO/EHLO replies and 354
 * carries class.subject.detail with class == first digit. */
static void check_esc(const struct run *r)
{
	for (size_t i = 1; i < r->nlines; i++) {
		const char *l = r->lines[i];
		assert_true(strlen(l) >= 4);
		assert_true(l[0] >= '2' && l[0] <= '5');
		assert_true(l[1] >= '0' && l[1] <= '9');
		assert_true(l[2] >= '0' && l[2] <= '9');
		assert_true(l[3] == ' ' || l[3] == '-');
		if (l[3] == '-' || (i > 0 && r->lines[i - 1][3] == '-')) {
			/* multi-line: same code on every line (ESC-02); the
			 * only one is the EHLO reply, exempt from ESC-01 */
			assert_memory_equal(l, "250", 3);
			continue;
		}
		if (strncmp(l, "354 ", 4) == 0 || strncmp(l, "334 ", 4) == 0 ||
		    strcmp(l, "250 " HOST) == 0)
			continue;
		int a, b, c, n = 0;
		if (sscanf(l + 4, "%1d.%3d.%3d%n", &a, &b, &c, &n) != 3 ||
		    l[4 + n] != ' ' || a != l[0] - '0') {
			fail_msg("ESC-01: reply without a matching enhanced "
				 "code: \"%s\"",
				 l);
		}
	}
}

/* The final line of every reply, '|'-joined, greeting left out. */
static void final_lines(const struct run *r, char *out, size_t cap)
{
	size_t len = 0;
	out[0] = '\0';
	for (size_t i = 1; i < r->nlines; i++) {
		if (r->lines[i][3] == '-')
			continue;
		int n = snprintf(out + len, cap - len, "%s%s", len ? "|" : "",
				 r->lines[i]);
		assert_true(n > 0 && (size_t)n < cap - len);
		len += (size_t)n;
	}
}

/* exp tokens must be prefixes of the final lines, one to one */
static void check_replies(const struct tcase *tc, const struct run *r,
			  const char *exp, const char *mode)
{
	static char got[1 << 20];
	const char *e = exp;
	size_t idx = 0;

	final_lines(r, got, sizeof(got));
	for (size_t i = 1; i < r->nlines; i++) {
		const char *l = r->lines[i];
		if (l[3] == '-')
			continue;
		if (*e == '\0')
			fail_msg("%s [%s]: extra reply #%zu \"%s\"\n got: %s",
				 tc->name, mode, idx, l, got);
		size_t tl = strcspn(e, "|");
		if (strncmp(l, e, tl) != 0)
			fail_msg("%s [%s]: reply #%zu \"%s\" does not start "
				 "with \"%.*s\"\n got: %s",
				 tc->name, mode, idx, l, (int)tl, e, got);
		e += tl;
		if (*e == '|')
			e++;
		idx++;
	}
	if (*e != '\0')
		fail_msg("%s [%s]: missing replies from #%zu: %s\n got: %s",
			 tc->name, mode, idx, e, got);
}

static void do_run(const struct tcase *tc, struct run *r, size_t chunk,
		   const uint8_t *in, size_t inlen, const uint8_t *post,
		   size_t postlen)
{
	struct mta_smtpd_config cfg = {
		.hostname = HOST,
		.max_message_size = tc->max_size ? tc->max_size : 10000,
		.max_recipients = tc->max_rcpt ? tc->max_rcpt : 100,
		.starttls = tc->tls,
		.relay_allowed = !tc->norelay,
		.refused = tc->refused,
		.postmaster = tc->postmaster,
		.client_addr = "192.0.2.1",
		.auth = tc->auth,
	};
	static struct mta_smtpd s; /* 36 KiB: not on the stack */
	int qseq = 1;

	memset(r, 0, sizeof(*r));
	r->tls_discard = -1;
	mta_smtpd_init(&s, &cfg);
	mta_smtpd_greet(&s);
	drain(&s, r);
	assert_int_equal(r->nlines, 1);
	if (tc->refused)
		assert_string_equal(r->lines[0], "554 5.7.1 " HOST " Relay "
				    "access denied for [192.0.2.1]: this server "
				    "relays only for its own networks");
	else
		assert_string_equal(r->lines[0], "220 " HOST " ESMTP mtad");
	if (feed_all(&s, r, in, inlen, chunk, &qseq)) {
		mta_smtpd_tls_started(&s, TLSDESC);
		drain(&s, r);
		feed_all(&s, r, post, postlen, chunk, &qseq);
	}
	drain(&s, r);
	assert_int_equal(r->npend, 0);
	assert_int_equal(mta_smtpd_closed(&s), r->closed);
	mta_smtpd_free(&s);
}

static void run_case(void **state)
{
	const struct tcase *tc = *state;
	struct gen g;
	const uint8_t *in, *post = NULL;
	size_t inlen, postlen = 0;
	const char *exp = tc->exp, *evs = tc->ev;
	static struct run r1, r2;

	cur_tc = tc;
	memset(&g, 0, sizeof(g));
	if (tc->gen != NULL) {
		tc->gen(&g);
		assert_int_equal(mta_buf_append(&g.exp, "", 1), 0);
		assert_int_equal(mta_buf_append(&g.ev, "", 1), 0);
		in = g.in.data;
		inlen = g.in.len;
		post = g.post.data;
		postlen = g.post.len;
		exp = (const char *)g.exp.data;
		evs = (const char *)g.ev.data;
	} else {
		in = (const uint8_t *)tc->in;
		inlen = tc->in_len ? tc->in_len : strlen(tc->in);
		if (tc->post != NULL) {
			post = (const uint8_t *)tc->post;
			postlen = strlen(tc->post);
		}
	}

	do_run(tc, &r1, 0, in, inlen, post, postlen);
	do_run(tc, &r2, 1, in, inlen, post, postlen);

	for (int m = 0; m < 2; m++) {
		struct run *r = m ? &r2 : &r1;
		const char *mode = m ? "byte by byte" : "one chunk";
		check_esc(r);
		check_replies(tc, r, exp, mode);
		if (strcmp(r->ev, evs) != 0)
			fail_msg("%s [%s]: events \"%s\", expected \"%s\"",
				 tc->name, mode, r->ev, evs);
		if (tc->body != NULL) {
			assert_true(r->nmsg >= 1);
			size_t bl = strlen(tc->body);
			if (r->body[0].len != bl ||
			    (bl > 0 &&
			     memcmp(r->body[0].data, tc->body, bl) != 0))
				fail_msg("%s [%s]: body \"%.*s\" expected "
					 "\"%s\"",
					 tc->name, mode, (int)r->body[0].len,
					 (const char *)r->body[0].data,
					 tc->body);
		}
		if (tc->check != NULL)
			tc->check(tc, r);
	}
	/* both runs agree on everything observable */
	assert_int_equal(r1.nlines, r2.nlines);
	for (size_t i = 0; i < r1.nlines; i++)
		assert_string_equal(r1.lines[i], r2.lines[i]);
	assert_int_equal(r1.nmsg, r2.nmsg);
	for (size_t i = 0; i < r1.nmsg; i++) {
		assert_int_equal(r1.body[i].len, r2.body[i].len);
		if (r1.body[i].len)
			assert_memory_equal(r1.body[i].data, r2.body[i].data,
					    r1.body[i].len);
		assert_string_equal(r1.rcv[i], r2.rcv[i]);
		assert_int_equal(r1.env[i].nrcpt, r2.env[i].nrcpt);
		assert_int_equal(r1.env[i].size, r1.body[i].len);
	}
	if (tc->tls_discard > 0)
		assert_int_equal(r1.tls_discard, tc->tls_discard);
	run_free(&r1);
	run_free(&r2);
	mta_buf_free(&g.in);
	mta_buf_free(&g.post);
	mta_buf_free(&g.exp);
	mta_buf_free(&g.ev);
}

/* ---- generators -------------------------------------------------------- */

static void gput(struct mta_buf *b, const char *fmt, ...)
{
	char tmp[70000];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && (size_t)n < sizeof(tmp));
	assert_int_equal(mta_buf_append(b, tmp, (size_t)n), 0);
}

static void grep(struct mta_buf *b, char c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		assert_int_equal(mta_buf_append(b, &c, 1), 0);
}

/* PIPE-02: 200 commands in one write get 200 replies, in order */
static void gen_pipe02(struct gen *g)
{
	for (int i = 0; i < 200; i++) {
		gput(&g->in, i % 2 ? "NOOP %d\r\n" : "RSET\r\n", i);
		gput(&g->exp, "%s250 2.0.0", i ? "|" : "");
	}
}

/* the 100-error limit: 99 errors, a NOOP, the 100th error, then 421 */
static void gen_errors(struct gen *g)
{
	for (int i = 0; i < 99; i++) {
		gput(&g->in, "FOO%d\r\n", i);
		gput(&g->exp, "500 5.5.2|");
		gput(&g->ev, "R");
	}
	gput(&g->in, "NOOP\r\nBAR\r\nNOOP\r\n");
	gput(&g->exp, "250 2.0.0|500 5.5.2|421 4.7.0 " HOST " Too many errors");
	gput(&g->ev, "C");
}

/* LIM-05: 101 recipients with max_recipients 100 */
static void gen_lim05(struct gen *g)
{
	gput(&g->in, EH MF);
	gput(&g->exp, "250 CHUNKING|250 2.1.0");
	for (int i = 0; i < 101; i++) {
		gput(&g->in, "RCPT TO:<r%d@y.test>\r\n", i);
		gput(&g->exp, i < 100 ? "|250 2.1.5" : "|452 4.5.3");
	}
	gput(&g->in, "DATA\r\nx\r\n.\r\n");
	gput(&g->exp, "|354|250 2.0.0 Ok: queued as Q1");
	gput(&g->ev, "RDM");
}

static void gen_hops(struct gen *g, int n, int after_body)
{
	gput(&g->in, EH MF RT "DATA\r\n");
	for (int i = 0; i < n; i++)
		gput(&g->in, i % 2 ? "Received: from h%d\r\n"
				   : "rECEIVED: from h%d\r\n\tby x\r\n",
		     i);
	gput(&g->in, "X-Received: no\r\n Received: folded, no\r\n\r\n");
	for (int i = 0; i < after_body; i++)
		gput(&g->in, "Received: in the body\r\n");
	gput(&g->in, ".\r\nNOOP\r\n");
}

/* SRV-25: 100 Received headers accepted, body lines do not count */
static void gen_hops100(struct gen *g)
{
	gen_hops(g, 100, 50);
	gput(&g->exp, "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0|250 2.0.0");
	gput(&g->ev, "DM");
}

/* SRV-25: 101 Received headers -> 554 5.4.6 after the end of data */
static void gen_hops101(struct gen *g)
{
	gen_hops(g, 101, 0);
	gput(&g->exp, "250 CHUNKING|250 2.1.0|250 2.1.5|354|554 5.4.6 Too many "
		      "hops|250 2.0.0");
	gput(&g->ev, "DA");
}

/* LIM-01 (choice): 998-octet lines accepted (also a dot-stuffed one,
 * 999 on the wire); 999 octets -> 550 5.6.0 after the end of data
 * (RFC 5322 2.1.1), and the next transaction works */
static void gen_lim01(struct gen *g)
{
	gput(&g->in, EH MF RT "DATA\r\n");
	grep(&g->in, 'a', 998);
	gput(&g->in, "\r\n..");
	grep(&g->in, 'b', 997);
	gput(&g->in, "\r\n.\r\n" MF RT "DATA\r\n");
	grep(&g->in, 'c', 999);
	gput(&g->in, "\r\nmore\r\n.\r\n" MF RT "BDAT 1004 LAST\r\n");
	grep(&g->in, 'd', 999);
	gput(&g->in, "\r\nx\r\nNOOP\r\n");
	gput(&g->exp, "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0 Ok: "
		      "queued as Q1|250 2.1.0|250 2.1.5|354|550 5.6.0 Message "
		      "has a line longer than 998 octets (RFC 5322 2.1.1); "
		      "encode the body with quoted-printable or base64|"
		      "250 2.1.0|250 2.1.5|550 5.6.0|250 2.0.0");
	gput(&g->ev, "DMDADA");
}

/* LIM-02: 512-octet RCPT ok; 2048 incl. CRLF ok; 2049 -> 500, session
 * kept; a 5000-octet line gives one 500 */
static void gen_lim02(struct gen *g)
{
	static const char pre[] = "RCPT TO:<b@y.test> ORCPT=rfc822;";
	gput(&g->in, EH MF "%s", pre);
	grep(&g->in, 'o', 512 - (sizeof(pre) - 1) - 2);
	gput(&g->in, "\r\nNOOP ");
	grep(&g->in, 'x', 2048 - 7);
	gput(&g->in, "\r\nNOOP ");
	grep(&g->in, 'x', 2048 - 6);
	gput(&g->in, "\r\nNOOP ");
	grep(&g->in, 'x', 5000);
	gput(&g->in, "\r\nNOOP\r\n");
	gput(&g->exp, "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.0.0|500 5.5.2 "
		      "Error: line too long|500 5.5.2 Error: line too long|250 "
		      "2.0.0");
	gput(&g->ev, "RR");
}

static void label_domain(struct mta_buf *b, size_t n);

/* LIM-03: a MAIL line over 1036 octets; RCPT with a 500-char ORCPT and
 * NOTIFY and a maximal mailbox */
static void gen_lim03(struct gen *g)
{
	gput(&g->in, EH "MAIL FROM:<");
	grep(&g->in, 's', 64);
	gput(&g->in, "@");
	label_domain(&g->in, 255);
	gput(&g->in, "> RET=HDRS ENVID=");
	grep(&g->in, 'e', 100);
	gput(&g->in, " AUTH=");
	grep(&g->in, 'a', 600);
	gput(&g->in, "\r\nRCPT TO:<");
	grep(&g->in, 'r', 64);
	gput(&g->in, "@");
	label_domain(&g->in, 255);
	gput(&g->in, "> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;");
	grep(&g->in, 'o', 500);
	gput(&g->in, "\r\nDATA\r\n.\r\n");
	gput(&g->exp, "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0");
	gput(&g->ev, "DM");
}

static void label_domain(struct mta_buf *b, size_t n)
{
	/* a domain of exactly n octets made of <= 63-octet labels */
	while (n > 0) {
		size_t lab = n < 63 ? n : 63;
		if (n - lab == 1)
			lab--; /* never leave a lone "." */
		grep(b, 'd', lab);
		n -= lab;
		if (n > 0) {
			gput(b, ".");
			n--;
		}
	}
}

/* LIM-04: local part 64, domain 255, path 256 accepted; longer: 501 */
static void gen_lim04(struct gen *g)
{
	gput(&g->in, EH "MAIL FROM:<");
	grep(&g->in, 'l', 64);
	gput(&g->in, "@x.test>\r\nRCPT TO:<");
	grep(&g->in, 'l', 65);
	gput(&g->in, "@y.test>\r\nRCPT TO:<u@");
	label_domain(&g->in, 255);
	gput(&g->in, ">\r\nRCPT TO:<u@");
	label_domain(&g->in, 256);
	/* path of 256 octets incl. <>: 64 + 1 + 189 + 2 */
	gput(&g->in, ">\r\nRCPT TO:<");
	grep(&g->in, 'm', 64);
	gput(&g->in, "@");
	label_domain(&g->in, 189);
	gput(&g->in, ">\r\n");
	gput(&g->exp, "250 CHUNKING|250 2.1.0|501 5.1.3|250 2.1.5|501 "
		      "5.1.3|250 2.1.5");
	gput(&g->ev, "RR");
}

/* SIZE-02: 20000-octet body, limit 10000: read to the end, then 552 */
static void gen_size02(struct gen *g)
{
	gput(&g->in, EH MF RT "DATA\r\n");
	for (int i = 0; i < 200; i++) {
		grep(&g->in, 'z', 98);
		gput(&g->in, "\r\n");
	}
	gput(&g->in, ".\r\nNOOP\r\n");
	gput(&g->exp, "250 CHUNKING|250 2.1.0|250 2.1.5|354|552 5.3.4 Error: "
		      "message too big|250 2.0.0");
	gput(&g->ev, "DA");
}

/* ESC-01/02 over a long session with every kind of reply */
static void gen_esc(struct gen *g)
{
	gput(&g->in,
	     "NOOP\r\nVRFY x\r\nHELP\r\nEXPN x\r\nFOO\r\nMAIL FROM:<a@x>\r\n"
	     "HELO c\r\nEHLO\r\nEHLO c\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
	     "MAIL FROM:a@x\r\nMAIL FROM:<a@x.test> FOO=1\r\n"
	     "MAIL FROM:<a@x.test> SIZE=99999\r\n" MF MF
	     "RCPT TO:<>\r\nRCPT TO:<b@y.test> BAR\r\n" RT
	     "DATA x\r\nDATA\r\nx\n\r\n.\r\n" MF RT "BDAT\r\nBDAT 2\r\nab"
	     "BDAT 1 LAST\r\nc" MF RT "DATA\r\nok\r\n.\r\nSTARTTLS x\r\n"
	     "RSET x\r\nQUIT x\r\nQUIT\r\n");
	gput(&g->exp,
	     "250 2.0.0|252 2.5.2|214 2.0.0|502 5.5.1|500 5.5.2|503 5.5.1|"
	     "250 " HOST "|501 5.5.4|250 CHUNKING|503 5.5.1|503 5.5.1|"
	     "501 5.5.4|555 5.5.4|552 5.3.4|250 2.1.0|503 5.5.1|501 5.1.3|"
	     "555 5.5.4|250 2.1.5|501 5.5.4|354|550 5.6.0|250 2.1.0|"
	     "250 2.1.5|501 5.5.4|250 2.0.0 2 octets|"
	     "250 2.0.0 Ok: queued as Q1|250 2.1.0|250 2.1.5|354|"
	     "250 2.0.0 Ok: queued as Q2|502 5.5.1|501 5.5.4|501 5.5.4|"
	     "221 2.0.0 Bye");
	gput(&g->ev, "RRRRRRRRRRRRRDARDMDMRRRC");
}

/* output high-water is tested separately; this is a big pipelined body
 * of many short lines fed together with commands */
static void gen_bigpipe(struct gen *g)
{
	gput(&g->in, EH);
	gput(&g->exp, "250 CHUNKING");
	for (int m = 0; m < 3; m++) {
		gput(&g->in, MF RT "DATA\r\n");
		for (int i = 0; i < 50; i++)
			gput(&g->in, "line %d\r\n.dot\r\n", i);
		gput(&g->in, ".\r\n");
		gput(&g->exp, "|250 2.1.0|250 2.1.5|354|250 2.0.0 Ok: queued as "
			      "Q%d",
		     m + 1);
		gput(&g->ev, "DM");
	}
}

/* ---- checks ------------------------------------------------------------ */

static const struct run *R(const void *r)
{
	return r;
}

static void chk_helo(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_string_equal(r->env[0].sender, "a@x.test");
	assert_int_equal(r->env[0].nrcpt, 1);
	assert_string_equal(r->env[0].rcpts[0].addr, "b@y.test");
	assert_string_equal(r->env[0].helo, "c.test");
	assert_string_equal(r->env[0].client_addr, "192.0.2.1");
	assert_null(r->env[0].tls);
	/* SRV-24 with HELO: protocol SMTP */
	assert_non_null(strstr(r->rcv[0], " with SMTP\r\n"));
}

static void chk_ehlo_lines(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	/* SRV-08, UTF8-01, TLS-01, SIZE-01 */
	static const char *const want[] = {
		"250-" HOST, "250-PIPELINING", "250-SIZE 10000",
		"250-8BITMIME", "250-SMTPUTF8", "250-ENHANCEDSTATUSCODES",
		"250-DSN", "250-CHUNKING", "250 STARTTLS"};
	assert_true(r->nlines >= 10);
	for (size_t i = 0; i < 9; i++)
		assert_string_equal(r->lines[1 + i], want[i]);
}

static void chk_case(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	/* SRV-14: the local-part case is preserved */
	assert_int_equal(r->nmsg, 1);
	assert_string_equal(r->env[0].sender, "Smith@X.test");
	assert_string_equal(r->env[0].rcpts[0].addr, "Jones@Y.test");
}

/* Backscatter: a non-relay client's message goes to server.postmaster
 * with the null reverse-path and no DSN parameters. */
static void chk_postmaster(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_int_equal(r->env[0].nrcpt, 2);
	assert_string_equal(r->env[0].rcpts[0].addr, "pm@site.test");
	assert_string_equal(r->env[0].rcpts[1].addr, "pm@site.test");
	assert_string_equal(r->env[0].sender, "");
	assert_null(r->env[0].envid);
	assert_null(r->env[0].ret_raw);
	assert_int_equal(r->env[0].ret, MTA_RET_NONE);
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(r->env[0].rcpts[i].notify, 0);
		assert_null(r->env[0].rcpts[i].notify_raw);
		assert_null(r->env[0].rcpts[i].orcpt);
	}
}

/* SRV-18 from a relay client without server.postmaster: kept as
 * "Postmaster", sender and DSN parameters untouched */
static void chk_postmaster_relay(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_int_equal(r->env[0].nrcpt, 1);
	assert_string_equal(r->env[0].rcpts[0].addr, "Postmaster");
	assert_string_equal(r->env[0].sender, "a@x.test");
	assert_int_equal(r->env[0].rcpts[0].notify, MTA_NOTIFY_SUCCESS);
	assert_int_equal(r->env[0].ret, MTA_RET_FULL);
}

static void chk_utf8(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_true(r->env[0].smtputf8);
	assert_string_equal(r->env[0].sender, "\xc3\xbc@x.test");
	assert_string_equal(r->env[0].rcpts[0].addr,
			    "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90."
			    "test");
	assert_non_null(strstr(r->rcv[0], " with UTF8SMTP\r\n"));
}

static void chk_received1(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 2);
	/* SRV-24: FROM = EHLO name + IP literal, BY, WITH, ID, one FOR */
	assert_string_equal(r->rcv[0],
			    "Received: from c.test ([192.0.2.1])\r\n"
			    "\tby " HOST " (mtad) with ESMTP\r\n"
			    "\tid Q1\r\n"
			    "\tfor <b@y.test>;\r\n"
			    "\tTue, 14 Nov 2023 22:13:20 +0000\r\n");
	/* two recipients: no FOR */
	assert_null(strstr(r->rcv[1], "for <"));
	assert_non_null(strstr(r->rcv[1], "\tid Q2;\r\n"));
	/* the body is not touched (old Received kept byte-identical) */
	assert_int_equal(r->body[1].len, strlen("Received: old1\r\n"
						"Received: old2\r\n\r\nx\r\n"));
}

static void chk_received_evil2(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	static const char want[] =
		"Received: from a?b?c???d?[1.2]-_: ([192.0.2.1])\r\n";
	assert_memory_equal(r->rcv[0], want, sizeof(want) - 1);
	assert_string_equal(r->env[0].helo, "a b(c)\x01;d\x80[1.2]-_:");
}

static void chk_tls(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	/* TLS-01: STARTTLS listed before TLS, absent after */
	int seen_before = 0, seen_after = 0, tls = 0;
	for (size_t i = 0; i < r->nlines; i++) {
		if (strncmp(r->lines[i], "220 2.0.0", 9) == 0)
			tls = 1;
		if (strstr(r->lines[i], "STARTTLS") != NULL)
			*(tls ? &seen_after : &seen_before) += 1;
	}
	assert_int_equal(seen_before, 1);
	assert_int_equal(seen_after, 0);
	assert_int_equal(r->nmsg, 1);
	assert_string_equal(r->env[0].tls, TLSDESC);
	assert_non_null(strstr(r->rcv[0], " with UTF8SMTPS (" TLSDESC ")"));
}

/* RTLS-01/02: REQUIRETLS listed only after STARTTLS; the option tags */
static void chk_rtls02(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	int before = 0, after = 0, tls = 0;
	for (size_t i = 0; i < r->nlines; i++) {
		if (strncmp(r->lines[i], "220 2.0.0", 9) == 0)
			tls = 1;
		if (strstr(r->lines[i], "REQUIRETLS") != NULL)
			*(tls ? &after : &before) += 1;
	}
	assert_int_equal(before, 0);
	assert_int_equal(after, 1);
	assert_int_equal(r->nmsg, 1);
	assert_int_equal(r->env[0].tlsreq, MTA_TLSREQ_REQUIRETLS);
}

/* RTLS-06/09: one TLS-Required: No (any case, FWS, folded) */
static void chk_rtls_no(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 4);
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(r->env[i].tlsreq, MTA_TLSREQ_OPTIONAL);
}

/* RTLS-07/08, other values, body, non-relay client: not lowered */
static void chk_rtls_not(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 4);
	assert_int_equal(r->env[0].tlsreq, MTA_TLSREQ_NONE); /* two fields */
	assert_int_equal(r->env[1].tlsreq, MTA_TLSREQ_NONE); /* "Nope" */
	assert_int_equal(r->env[2].tlsreq, MTA_TLSREQ_NONE); /* in body */
	assert_int_equal(r->env[3].tlsreq, MTA_TLSREQ_REQUIRETLS);
}

static void chk_rtls_norelay(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_int_equal(r->env[0].tlsreq, MTA_TLSREQ_NONE);
}

static void chk_tls_esmtps(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_non_null(strstr(r->rcv[0], " with ESMTPS (" TLSDESC ")\r\n"));
}

/* AUTH-02: an authenticated client from outside relay_networks keeps
 * its sender (no postmaster-only/null-sender rules); AUTH is offered
 * only after TLS. */
static void chk_auth_sender(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	int offered = 0;

	assert_int_equal(r->nmsg, 1);
	assert_string_equal(r->env[0].sender, "a@x.test");
	assert_string_equal(r->env[0].rcpts[0].addr, "b@y.test");
	for (size_t i = 0; i < r->nlines; i++) {
		if (strcmp(r->lines[i], "250-AUTH PLAIN LOGIN") == 0) {
			offered++;
			/* after the 220 of STARTTLS only */
			assert_true(i > 0);
		}
		if (strncmp(r->lines[i], "250 STARTTLS", 12) == 0)
			assert_int_equal(offered, 0);
	}
	assert_int_equal(offered, 1);
}

static void chk_no_auth_offer(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	for (size_t i = 0; i < r->nlines; i++)
		assert_null(strstr(r->lines[i], "AUTH"));
}

static void chk_notls(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	for (size_t i = 0; i < r->nlines; i++)
		assert_null(strstr(r->lines[i], "STARTTLS"));
}

static void chk_dsn01(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	const struct mta_envelope *e = &r->env[0];
	assert_string_equal(e->envid, "QQ314159+2B");
	assert_string_equal(e->ret_raw, "hdrs");
	assert_int_equal(e->ret, MTA_RET_HDRS);
	assert_int_equal(e->body, MTA_BODY_8BITMIME);
	assert_int_equal(e->declared_size, 12);
	assert_int_equal(e->nrcpt, 3);
	assert_string_equal(e->rcpts[0].notify_raw, "success,DELAY");
	assert_int_equal(e->rcpts[0].notify,
			 MTA_NOTIFY_SUCCESS | MTA_NOTIFY_DELAY);
	assert_string_equal(e->rcpts[0].orcpt, "rfc822;b@y.test");
	assert_int_equal(e->rcpts[1].notify, MTA_NOTIFY_NEVER);
	assert_null(e->rcpts[1].orcpt);
	assert_null(e->rcpts[2].notify_raw);
	assert_int_equal(e->rcpts[2].notify, 0);
}

static void chk_lim03(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_int_equal(strlen(r->env[0].sender), 64 + 1 + 255);
	assert_int_equal(strlen(r->env[0].envid), 100);
	assert_int_equal(strlen(r->env[0].rcpts[0].orcpt), 7 + 500);
	assert_int_equal(r->env[0].rcpts[0].notify,
			 MTA_NOTIFY_SUCCESS | MTA_NOTIFY_FAILURE |
				 MTA_NOTIFY_DELAY);
}

static void chk_lim05(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_int_equal(r->env[0].nrcpt, 100);
	assert_string_equal(r->env[0].rcpts[99].addr, "r99@y.test");
}

static void chk_size02(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	/* no BODY beyond the limit */
	assert_true(r->max_emitted <= 10000);
	assert_int_equal(r->nmsg, 0);
}

static void chk_paths(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_string_equal(r->env[0].sender, "u@d.test");
	assert_int_equal(r->env[0].nrcpt, 4);
	assert_string_equal(r->env[0].rcpts[0].addr, "v@[192.0.2.7]");
	assert_string_equal(r->env[0].rcpts[1].addr, "w@[IPv6:2001:db8::1]");
	assert_string_equal(r->env[0].rcpts[2].addr, "\"a b\\\"c\"@y.test");
	assert_string_equal(r->env[0].rcpts[3].addr, "x@y.test");
}

static void chk_null_sender(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 1);
	assert_string_equal(r->env[0].sender, "");
}

static void chk_two_msgs(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 2);
	assert_int_equal(r->body[1].len, 3);
	assert_memory_equal(r->body[1].data, "abc", 3);
}

static void chk_bdat_cr(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 2);
	assert_int_equal(r->body[0].len, 6);
	assert_memory_equal(r->body[0].data, "ab\r\ncd", 6);
	assert_int_equal(r->body[1].len, 0);
}

static void chk_emapfull(const struct tcase *tc, const void *rv)
{
	const struct run *r = R(rv);
	assert_int_equal(r->nmsg, 3);
}

/* ---- the table --------------------------------------------------------- */

#define C(...) {__VA_ARGS__}

static const struct tcase cases[] = {
	C(.name = "SRV-07 HELO session, greeting, QUIT (SRV-15)",
	  .in = "HELO c.test\r\n" MF RT "DATA\r\nSubject: t\r\n\r\nhi\r\n"
		".\r\nQUIT\r\nNOOP\r\n",
	  .exp = "250 " HOST "|250 2.1.0 Ok|250 2.1.5 Ok|354 End data with "
		 "<CR><LF>.<CR><LF>|250 2.0.0 Ok: queued as Q1|221 2.0.0 Bye",
	  .ev = "DMC", .body = "Subject: t\r\n\r\nhi\r\n", .check = chk_helo),
	C(.name = "SRV-08 UTF8-01 TLS-01 SIZE-01 EHLO keywords",
	  .tls = 1, .in = EH, .exp = "250 STARTTLS", .ev = "",
	  .check = chk_ehlo_lines),
	C(.name = "SRV-01 MAIL before EHLO -> 503, state unchanged",
	  .in = MF RT EH MF,
	  .exp = "503 5.5.1|503 5.5.1|250 CHUNKING|250 2.1.0", .ev = "RR"),
	C(.name = "SRV-02 RCPT before MAIL -> 503",
	  .in = EH RT, .exp = "250 CHUNKING|503 5.5.1", .ev = "R"),
	C(.name = "SRV-03 MAIL inside a transaction -> 503",
	  .in = EH MF MF RT, .exp = "250 CHUNKING|250 2.1.0|503 5.5.1|250 2.1.5",
	  .ev = "R"),
	C(.name = "SRV-04 DATA without an accepted RCPT -> 503, no 354",
	  .in = EH MF "RCPT TO:<bad>\r\nDATA\r\nNOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|501 5.1.3|503 5.5.1|250 2.0.0",
	  .ev = "RR"),
	C(.name = "SRV-05 RSET clears the transaction, keeps the session",
	  .in = EH MF RT "RSET\r\nDATA\r\n" MF "NOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.0.0|503 5.5.1|"
		 "250 2.1.0|250 2.0.0",
	  .ev = "R"),
	C(.name = "SRV-06 EHLO resets the transaction",
	  .in = EH MF RT EH "DATA\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 CHUNKING|503 5.5.1",
	  .ev = "R"),
	C(.name = "SRV-09 VRFY NOOP HELP RSET before EHLO; EXPN 502",
	  .in = "VRFY x\r\nnoop\r\nHELP\r\nRSET\r\nEXPN x\r\nVRFY\r\n",
	  .exp = "252 2.5.2 Cannot VRFY user, but will accept message and "
		 "attempt delivery|250 2.0.0|214 2.0.0|250 2.0.0|502 5.5.1|"
		 "501 5.5.4",
	  .ev = "RR"),
	C(.name = "SRV-10 unknown command x3 -> 500, connection kept",
	  .in = "FOO\r\nFOO bar\r\n\r\nNOOP\r\n",
	  .exp = "500 5.5.2 Error: command not recognized|500 5.5.2|500 5.5.2|"
		 "250 2.0.0",
	  .ev = "RRR"),
	C(.name = "SRV-11 unknown MAIL/RCPT parameter -> 555; RTLS-03 "
		  "REQUIRETLS in clear -> 530 5.7.10",
	  .in = EH "MAIL FROM:<a@x.test> FOO=1\r\nMAIL FROM:<a@x.test> "
		"REQUIRETLS\r\n" MF "RCPT TO:<b@y.test> BAR=2\r\n",
	  .exp = "250 CHUNKING|555 5.5.4|530 5.7.10|250 2.1.0|555 5.5.4",
	  .ev = "RRR"),
	C(.name = "SRV-12 MAIL without brackets -> 501, then valid MAIL ok",
	  .in = EH "MAIL FROM:a@x.test\r\nMAIL TO:<a@x.test>\r\nMAIL "
		"FROM:<a@x.test\r\nMAIL FROM:<a@x.test>x\r\nMAIL "
		"FROM:<a@@x>\r\nMAIL FROM:<a@-x.test>\r\nMAIL FROM:<a.@x>\r\n"
		"MAIL\r\n" MF,
	  .exp = "250 CHUNKING|501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4|"
		 "501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4|250 2.1.0",
	  .ev = "RRRRRRRR"),
	C(.name = "SRV-13 (choice) space after FROM: accepted",
	  .in = EH "MAIL FROM: <a@x.test>\r\nRCPT TO: <b@y.test>\r\nDATA\r\n"
		"x\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0", .ev = "DM",
	  .body = "x\r\n"),
	C(.name = "SRV-14 verbs case-insensitive, local-part case kept",
	  .in = "ehlo c.test\r\nmail from:<Smith@X.test>\r\nrcpt "
		"to:<Jones@Y.test>\r\ndAtA\r\nx\r\n.\r\nquit\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0|221 2.0.0",
	  .ev = "DMC", .check = chk_case),
	C(.name = "SRV-18 backscatter: non-relay client reaches only "
		  "server.postmaster, with <> and no DSN parameters",
	  .norelay = 1, .postmaster = "pm@site.test",
	  .in = EH "MAIL FROM:<victim@x.test> RET=FULL ENVID=e1\r\n"
		"RCPT TO:<Postmaster> NOTIFY=SUCCESS,FAILURE "
		"ORCPT=rfc822;victim@x.test\r\nRCPT TO:<victim@x.test>\r\n"
		"RCPT TO:<POSTMASTER> NOTIFY=SUCCESS\r\nDATA\r\nx\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|554 5.7.1 <victim@x.test>: "
		 "Relay access denied|250 2.1.5|354|250 2.0.0",
	  .ev = "RDM", .check = chk_postmaster),
	C(.name = "SRV-18 Postmaster from a relay client, DSN parameters kept",
	  .in = EH "MAIL FROM:<a@x.test> RET=FULL\r\nRCPT TO:<postmaster> "
		"NOTIFY=SUCCESS\r\nDATA\r\nx\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0",
	  .ev = "DM", .check = chk_postmaster_relay),
	C(.name = "SRV-22 refused session (outside relay_networks, no "
		  "postmaster): 554 greeting, 503 to all but QUIT, 221",
	  .norelay = 1, .refused = 1,
	  .in = EH "NOOP\r\nQUIT\r\n",
	  .exp = "503 5.7.1 Error: this server does not serve your address; "
		 "send QUIT|503 5.7.1|221 2.0.0",
	  .ev = "RRC"),
	C(.name = "SRV-22 refused session closed with 421 after 3 commands",
	  .norelay = 1, .refused = 1,
	  .in = EH MF RT "DATA\r\nx\r\n",
	  .exp = "503 5.7.1|503 5.7.1|503 5.7.1|421 4.7.0",
	  .ev = "RRC"),
	C(.name = "SRV-19 any EHLO name accepted",
	  .in = "EHLO bogus.invalid\r\n" MF RT "DATA\r\nx\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0", .ev = "DM"),
	C(.name = "SRV-20 UTF8-02 non-ASCII address needs SMTPUTF8",
	  .in = EH "MAIL FROM:<\xc3\xbc@x.test>\r\n" MF
		"RCPT TO:<\xc3\xbc@y.test>\r\nRSET\r\n"
		"MAIL FROM:<\xc3\xbc@x.test> SMTPUTF8\r\n"
		"RCPT TO:<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90."
		"test>\r\nRCPT TO:<\xff@y.test>\r\nDATA\r\nx\r\n.\r\n",
	  .exp = "250 CHUNKING|550 5.6.7|250 2.1.0|553 5.6.7|250 2.0.0|"
		 "250 2.1.0|250 2.1.5|501 5.1.3|354|250 2.0.0",
	  .ev = "RRRDM", .check = chk_utf8),
	C(.name = "SRV-24 Received: fields, FOR only with one recipient",
	  .in = EH MF RT "DATA\r\nx\r\n.\r\n" MF RT
		"RCPT TO:<c@y.test>\r\nDATA\r\nReceived: old1\r\n"
		"Received: old2\r\n\r\nx\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0|250 2.1.0|"
		 "250 2.1.5|250 2.1.5|354|250 2.0.0",
	  .ev = "DMDM", .check = chk_received1),
	C(.name = "SRV-24 Received: client HELO sanitised",
	  .in = "EHLO a b(c)\x01;d\x80[1.2]-_:\r\n" MF RT "DATA\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0", .ev = "DM",
	  .check = chk_received_evil2),
	C(.name = "SRV-25 100 Received headers accepted", .gen = gen_hops100),
	C(.name = "SRV-25 101 Received headers -> 554 5.4.6",
	  .gen = gen_hops101),
	C(.name = "SMUG-01 <LF>.<LF> does not end DATA",
	  .in = EH MF RT "DATA\r\nSubject: a\r\n\r\nx\n.\nMAIL "
		"FROM:<evil@x.test>\r\nRCPT TO:<e@y.test>\r\nDATA\r\nevil\r\n"
		".\r\nNOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|550 5.6.0 Message "
		 "contains bare CR or LF or NUL; use CRLF line endings|"
		 "250 2.0.0",
	  .ev = "DA"),
	C(.name = "SMUG-02 <LF>.<CR><LF> does not end DATA",
	  .in = EH MF RT "DATA\r\nx\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT "
		"TO:<e@y.test>\r\nDATA\r\nevil\r\n.\r\nNOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|550 5.6.0|250 2.0.0",
	  .ev = "DA"),
	C(.name = "SMUG-03 <CR><LF>.<LF> does not end DATA",
	  .in = EH MF RT "DATA\r\nx\r\n.\nMAIL FROM:<evil@x.test>\r\nRCPT "
		"TO:<e@y.test>\r\nDATA\r\nevil\r\n.\r\nNOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|550 5.6.0|250 2.0.0",
	  .ev = "DA"),
	C(.name = "SMUG-04 <CR>.<CR> and <CR><LF>.<CR> do not end DATA",
	  .in = EH MF RT "DATA\r\nx\r.\rMAIL FROM:<evil@x.test>\r\n.\r\n" MF
		RT "DATA\r\nx\r\n.\rMAIL FROM:<evil@x.test>\r\n.\r\n" MF RT
		"DATA\r\nnul\0byte\r\n.\r\nNOOP\r\n",
	  .in_len = sizeof(EH MF RT "DATA\r\nx\r.\rMAIL FROM:<evil@x.test>\r\n"
			   ".\r\n" MF RT "DATA\r\nx\r\n.\rMAIL "
			   "FROM:<evil@x.test>\r\n.\r\n" MF RT
			   "DATA\r\nnul\0byte\r\n.\r\nNOOP\r\n") - 1,
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|550 5.6.0|250 2.1.0|"
		 "250 2.1.5|354|550 5.6.0|250 2.1.0|250 2.1.5|354|550 5.6.0|"
		 "250 2.0.0",
	  .ev = "DADADA"),
	C(.name = "SMUG-06 bare LF / bare CR / NUL in a command line -> 500",
	  .in = "EHLO a\nMAIL FROM:<x@y.test>\r\n" MF "NOOP\rRSET\r\nNO\0OP\r\n"
		"NOOP\r\r\n\n\r\n" EH "NOOP\r\n",
	  .in_len = sizeof("EHLO a\nMAIL FROM:<x@y.test>\r\n" MF
			   "NOOP\rRSET\r\nNO\0OP\r\nNOOP\r\r\n\n\r\n" EH
			   "NOOP\r\n") - 1,
	  .exp = "500 5.5.2|503 5.5.1|500 5.5.2|500 5.5.2|500 5.5.2|500 5.5.2|"
		 "250 CHUNKING|250 2.0.0",
	  .ev = "RRRRRR"),
	C(.name = "SMUG-07 dot-unstuffing",
	  .in = EH MF RT "DATA\r\n..foo\r\n...\r\n.bar\r\n..\r\nx.\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0", .ev = "DM",
	  .body = ".foo\r\n..\r\nbar\r\n.\r\nx.\r\n"),
	C(.name = "SMUG-09 (choice) empty message accepted",
	  .in = EH MF RT "DATA\r\n.\r\nNOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0 Ok: queued as "
		 "Q1|250 2.0.0",
	  .ev = "DM", .body = ""),
	C(.name = "LIM-01 (choice) 998-octet lines ok, 999 -> 550 5.6.0 (DATA "
		  "and BDAT)",
	  .max_size = 300000, .gen = gen_lim01),
	C(.name = "LIM-02 512-octet command, 2048 limit, longer -> 500 5.5.2",
	  .gen = gen_lim02),
	C(.name = "LIM-03 1036+ octet command lines with DSN parameters",
	  .gen = gen_lim03, .check = chk_lim03),
	C(.name = "LIM-04 local 64, domain 255, path 256 accepted",
	  .gen = gen_lim04),
	C(.name = "LIM-05 100 recipients, the 101st -> 452 4.5.3",
	  .gen = gen_lim05, .check = chk_lim05),
	C(.name = "TLS-01 TLS-05 STARTTLS, state reset, not offered after",
	  .tls = 1, .in = EH MF "RSET\r\nSTARTTLS\r\n",
	  .post = MF EH "STARTTLS\r\nMAIL FROM:<\xc3\xbc@x.test> "
		  "SMTPUTF8\r\n" RT "DATA\r\nx\r\n.\r\n",
	  .exp = "250 STARTTLS|250 2.1.0|250 2.0.0|220 2.0.0 Ready to start "
		 "TLS|503 5.5.1|250 CHUNKING|503 5.5.1|250 2.1.0|250 2.1.5|354|"
		 "250 2.0.0",
	  .ev = "TRRDM", .check = chk_tls),
	C(.name = "RTLS-01 RTLS-02 RTLS-04 RTLS-05 REQUIRETLS after "
		  "STARTTLS only; no value; long MAIL line",
	  .tls = 1, .in = EH "STARTTLS\r\n",
	  .post = EH "MAIL FROM:<a@x.test> REQUIRETLS=YES\r\n"
		  "MAIL FROM:<aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		  "aaaaaaaaaaa@xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
		  "xxxxxxxxxxxx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
		  "xxxxxxxxxxxxx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
		  "xxxxxxxxxxxxxx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
		  "xxxxxxxxxxxxxxx.test> SIZE=100 BODY=8BITMIME RET=HDRS ENVID="
		  "EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE"
		  " AUTH=uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu"
		  "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuu REQUIRETLS\r\n"
		  RT "DATA\r\nx\r\n.\r\n",
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|501 5.5.4|250 2.1.0|"
		 "250 2.1.5|354|250 2.0.0",
	  .ev = "TRDM", .check = chk_rtls02),
	C(.name = "RTLS-06 RTLS-09 TLS-Required: No / no / NO with FWS, "
		  "folded",
	  .in = EH MF RT "DATA\r\nSubject: a\r\nTLS-Required: No\r\n\r\n"
		"x\r\n.\r\n" MF RT "DATA\r\ntls-required:no\r\n\r\nx\r\n"
		".\r\n" MF RT "DATA\r\nTLS-REQUIRED:  NO  \r\nX: y\r\n\r\n"
		".\r\n" MF RT "DATA\r\nTLS-Required:\r\n\tNo\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0|250 2.1.0|"
		 "250 2.1.5|354|250 2.0.0|250 2.1.0|250 2.1.5|354|250 2.0.0|"
		 "250 2.1.0|250 2.1.5|354|250 2.0.0",
	  .ev = "DMDMDMDM", .check = chk_rtls_no),
	C(.name = "RTLS-07 RTLS-08 two fields ignored, other values, body, "
		  "REQUIRETLS wins",
	  .tls = 1, .in = EH "STARTTLS\r\n",
	  .post = EH MF RT "DATA\r\nTLS-Required: No\r\nTLS-Required: No\r\n"
		  "\r\nx\r\n.\r\n" MF RT "DATA\r\nTLS-Required: Nope\r\n\r\n"
		  ".\r\n" MF RT "DATA\r\nX: y\r\n\r\nTLS-Required: No\r\n.\r\n"
		  "MAIL FROM:<a@x.test> REQUIRETLS\r\n" RT
		  "DATA\r\nTLS-Required: No\r\n\r\n.\r\n",
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|250 2.1.0|250 2.1.5|354|"
		 "250 2.0.0|250 2.1.0|250 2.1.5|354|250 2.0.0|250 2.1.0|"
		 "250 2.1.5|354|250 2.0.0|250 2.1.0|250 2.1.5|354|250 2.0.0",
	  .ev = "TDMDMDMDM", .check = chk_rtls_not),
	C(.name = "RTLS-06 TLS-Required: No from a client not allowed to "
		  "relay is ignored",
	  .norelay = 1, .postmaster = "postmaster@mx.test",
	  .in = EH MF "RCPT TO:<Postmaster>\r\nDATA\r\nTLS-Required: No\r\n"
		"\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0",
	  .ev = "DM", .check = chk_rtls_norelay),
	C(.name = "TLS-01 no STARTTLS without a certificate -> 502",
	  .in = EH "STARTTLS\r\n",
	  .exp = "250 CHUNKING|502 5.5.1", .ev = "R", .check = chk_notls),
	C(.name = "TLS-02 STARTTLS with a parameter -> 501; in a "
		 "transaction -> 503",
	  .tls = 1, .in = EH "STARTTLS now\r\n" MF "STARTTLS\r\nRSET\r\n",
	  .exp = "250 STARTTLS|501 5.5.4|250 2.1.0|503 5.5.1|250 2.0.0",
	  .ev = "RR"),
	C(.name = "TLS-03 STARTTLS inside TLS -> 503",
	  .tls = 1, .in = EH "STARTTLS\r\n",
	  .post = EH "STARTTLS\r\n" MF RT "DATA\r\nx\r\n.\r\n",
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|503 5.5.1|250 2.1.0|"
		 "250 2.1.5|354|250 2.0.0",
	  .ev = "TRDM", .check = chk_tls_esmtps),
	C(.name = "TLS-04 plaintext pipelined after STARTTLS is discarded",
	  .tls = 1, .in = EH "STARTTLS\r\nRSET\r\nMAIL FROM:<inj@x.test>\r\n",
	  .post = EH RT "NOOP\r\n",
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|503 5.5.1|250 2.0.0",
	  .ev = "TR",
	  .tls_discard = sizeof("RSET\r\nMAIL FROM:<inj@x.test>\r\n") - 1),
	C(.name = "AUTH-01 AUTH before STARTTLS -> 530 5.7.0, not offered",
	  .tls = 1, .auth = 1, .norelay = 1,
	  .in = EH "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n" MF "STARTTLS\r\n",
	  .post = EH MF,
	  .exp = "250 STARTTLS|530 5.7.0|530 5.7.0|220 2.0.0|250 CHUNKING|"
		 "530 5.7.0",
	  .ev = "RRTR"),
	C(.name = "AUTH-02 PLAIN with initial response; relays after it",
	  .tls = 1, .auth = 1, .norelay = 1, .in = EH "STARTTLS\r\n",
	  .post = EH "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nAUTH PLAIN x\r\n"
		  MF RT "DATA\r\nx\r\n.\r\n",
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|235 2.7.0|503 5.5.1|"
		 "250 2.1.0|250 2.1.5|354|250 2.0.0",
	  .ev = "TURDM", .check = chk_auth_sender),
	C(.name = "AUTH-03 PLAIN by challenge; authzid = authcid",
	  .tls = 1, .auth = 1, .norelay = 1, .in = EH "STARTTLS\r\n",
	  .post = EH "AUTH PLAIN\r\nYWxpY2UAYWxpY2UAczNjcmV0\r\n" MF RT,
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|334 |235 2.7.0|"
		 "250 2.1.0|250 2.1.5",
	  .ev = "TU"),
	C(.name = "AUTH-04 LOGIN, with and without initial response",
	  .tls = 1, .auth = 1, .norelay = 1, .in = EH "STARTTLS\r\n",
	  .post = EH "AUTH LOGIN\r\nYWxpY2U=\r\nd3Jvbmc=\r\n"
		  "AUTH LOGIN YWxpY2U=\r\nczNjcmV0\r\n",
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|334 VXNlcm5hbWU6|"
		 "334 UGFzc3dvcmQ6|535 5.7.8|334 UGFzc3dvcmQ6|235 2.7.0",
	  .ev = "TuU"),
	C(.name = "AUTH-05 wrong password 535 5.7.8; unauthenticated MAIL "
		 "530; other authzid 535; cancel 501; bad base64 501; "
		 "unknown mechanism 504",
	  .tls = 1, .auth = 1, .norelay = 1, .in = EH "STARTTLS\r\n",
	  .post = EH "AUTH PLAIN AGFsaWNlAHdyb25n\r\n" MF
		  "AUTH PLAIN Ym9iAGFsaWNlAHMzY3JldA==\r\n"
		  "AUTH LOGIN\r\n*\r\nAUTH PLAIN !!!!\r\n"
		  "AUTH PLAIN AGFsaWNl\r\nAUTH CRAM-MD5\r\n",
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|535 5.7.8|530 5.7.0|"
		 "535 5.7.8|334 VXNlcm5hbWU6|501 5.0.0|501 5.5.2|501 5.5.2|"
		 "504 5.5.4",
	  .ev = "TuRRRRRR"),
	C(.name = "AUTH-06 no AUTH on a listener without it (port 25)",
	  .tls = 1, .in = EH "STARTTLS\r\n",
	  .post = EH "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n",
	  .exp = "250 STARTTLS|220 2.0.0|250 CHUNKING|502 5.5.1",
	  .ev = "TR", .check = chk_no_auth_offer),
	C(.name = "PIPE-01 replies in command order",
	  .in = EH MF RT "RCPT TO:<bad>\r\nRCPT TO:<c@y.test>\r\nDATA\r\nx\r\n"
		".\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|501 5.1.3|250 2.1.5|354|"
		 "250 2.0.0",
	  .ev = "RDM"),
	C(.name = "PIPE-02 200 pipelined commands, 200 replies",
	  .gen = gen_pipe02),
	C(.name = "PIPE-03 no 354 without a valid RCPT; body read as commands",
	  .in = EH MF "RCPT TO:<bad>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n"
		".\r\n" MF,
	  .exp = "250 CHUNKING|250 2.1.0|501 5.1.3|503 5.5.1|500 5.5.2|"
		 "500 5.5.2|500 5.5.2|500 5.5.2|503 5.5.1",
	  .ev = "RRRRRRR"),
	C(.name = "PIPE big pipelined sessions with stuffed dots",
	  .gen = gen_bigpipe),
	C(.name = "SIZE-01 declared size over the maximum -> 552 5.3.4",
	  .in = EH "MAIL FROM:<a@x.test> SIZE=10001\r\nMAIL FROM:<a@x.test> "
		"SIZE=10000\r\n",
	  .exp = "250 CHUNKING|552 5.3.4|250 2.1.0", .ev = "R"),
	C(.name = "SIZE-02 actual size over the limit: 552 after the end",
	  .gen = gen_size02, .check = chk_size02),
	C(.name = "SIZE-03 SIZE syntax: digits only, once, <= 20 digits",
	  .in = EH "MAIL FROM:<a@x.test> SIZE=abc\r\nMAIL FROM:<a@x.test> "
		"SIZE=1 SIZE=2\r\nMAIL FROM:<a@x.test> "
		"SIZE=000000000000000000001\r\nMAIL FROM:<a@x.test> SIZE=\r\n"
		"MAIL FROM:<a@x.test> SIZE\r\nMAIL FROM:<a@x.test> "
		"SIZE=99999999999999999999\r\nMAIL FROM:<a@x.test> "
		"size=00000000000000000001\r\n",
	  .exp = "250 CHUNKING|501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4|"
		 "501 5.5.4|552 5.3.4|250 2.1.0",
	  .ev = "RRRRRR"),
	C(.name = "SIZE-04 SIZE does not delimit the content",
	  .in = EH "MAIL FROM:<a@x.test> SIZE=3\r\n" RT
		"DATA\r\n0123456789\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0", .ev = "DM",
	  .body = "0123456789\r\n"),
	C(.name = "8BIT-01 CHK-07 BODY=7BIT/8BITMIME ok, FOO 501, "
		 "BINARYMIME 555",
	  .in = EH "MAIL FROM:<a@x.test> BODY=FOO\r\nMAIL FROM:<a@x.test> "
		"BODY=BINARYMIME\r\nMAIL FROM:<a@x.test> BODY=7bit\r\nRSET\r\n"
		"MAIL FROM:<a@x.test> BODY=8BITMIME BODY=8BITMIME\r\n"
		"MAIL FROM:<a@x.test> BODY=8BITMIME\r\n",
	  .exp = "250 CHUNKING|501 5.5.4|555 5.5.4|250 2.1.0|250 2.0.0|"
		 "501 5.5.4|250 2.1.0",
	  .ev = "RRR"),
	C(.name = "ESC-01 ESC-02 enhanced codes on every reply of a long "
		 "session",
	  .gen = gen_esc),
	C(.name = "DSN-01 valid ENVID/RET/NOTIFY/ORCPT stored raw",
	  .in = EH "MAIL FROM:<a@x.test> ret=hdrs ENVID=QQ314159+2B "
		"BODY=8BITMIME SIZE=12 AUTH=e+3Dmc2@x\r\n"
		"RCPT TO:<b@y.test> NOTIFY=success,DELAY "
		"ORCPT=rfc822;b@y.test\r\nRCPT TO:<c@y.test> NOTIFY=NEVER\r\n"
		"RCPT TO:<d@y.test>\r\nDATA\r\nx\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.1.5|250 2.1.5|354|"
		 "250 2.0.0",
	  .ev = "DM", .check = chk_dsn01),
	C(.name = "DSN-02 duplicate or invalid DSN parameters -> 501",
	  .in = EH "MAIL FROM:<a@x.test> RET=FULL RET=HDRS\r\n"
		"MAIL FROM:<a@x.test> ENVID=a ENVID=b\r\n"
		"MAIL FROM:<a@x.test> ENVID=a+zz\r\n"
		"MAIL FROM:<a@x.test> ENVID=a+2b\r\n"
		"MAIL FROM:<a@x.test> RET=NONE\r\n"
		"MAIL FROM:<a@x.test> ENVID=" /* 101 chars */
		"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
		"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"
		"MAIL FROM:<a@x.test> SMTPUTF8=yes\r\n"
		"MAIL FROM:<a@x.test> AUTH\r\n" MF
		"RCPT TO:<b@y.test> NOTIFY=NEVER,SUCCESS\r\n"
		"RCPT TO:<b@y.test> NOTIFY=SUCCESS NOTIFY=FAILURE\r\n"
		"RCPT TO:<b@y.test> NOTIFY=SUCCESS,SUCCESS\r\n"
		"RCPT TO:<b@y.test> NOTIFY=FOO\r\n"
		"RCPT TO:<b@y.test> NOTIFY=\r\n"
		"RCPT TO:<b@y.test> ORCPT=rfc822\r\n"
		"RCPT TO:<b@y.test> ORCPT=;b@y\r\n"
		"RCPT TO:<b@y.test> ORCPT=rfc822;a+zz\r\n"
		"RCPT TO:<b@y.test> ORCPT=rfc822;a ORCPT=rfc822;b\r\n",
	  .exp = "250 CHUNKING|501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4|"
		 "501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4|250 2.1.0|501 5.5.4|"
		 "501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4|"
		 "501 5.5.4|501 5.5.4",
	  .ev = "RRRRRRRRRRRRRRRRR"),
	C(.name = "CHK-01 DATA and BDAT in one session",
	  .in = EH MF RT "DATA\r\nx\r\n.\r\n" MF RT "BDAT 3 LAST\r\nabc",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0 Ok: queued as "
		 "Q1|250 2.1.0|250 2.1.5|250 2.0.0 Ok: queued as Q2",
	  .ev = "DMDM", .check = chk_two_msgs),
	C(.name = "CHK-02 BDAT content stored verbatim (no dot processing)",
	  .in = EH MF RT "BDAT 20 LAST\r\na\r\n.\r\nMAIL FROM:<ee>NOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.0.0 Ok: queued as Q1|"
		 "250 2.0.0",
	  .ev = "DM", .body = "a\r\n.\r\nMAIL FROM:<ee>"),
	C(.name = "CHK-03 BDAT after LAST and DATA after BDAT -> 503",
	  .in = EH MF RT "BDAT 3 LAST\r\nabcBDAT 3\r\nxyzRSET\r\n" MF RT
		"BDAT 3\r\nabcDATA\r\nBDAT 0 LAST\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.0.0 Ok: queued as Q1|"
		 "503 5.5.1|250 2.0.0|250 2.1.0|250 2.1.5|250 2.0.0 3 octets "
		 "received|503 5.5.1|250 2.0.0 Ok: queued as Q2",
	  .ev = "DMRDRM", .body = "abc", .check = chk_two_msgs),
	C(.name = "CHK-04 failed BDAT chunks are consumed, session in sync",
	  .in = EH MF "BDAT 12\r\nNOOP\r\nNOOP\r\nBDAT 6 LAST\r\nRSET\r\n"
		"NOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|503 5.5.1|503 5.5.1|250 2.0.0",
	  .ev = "RR"),
	C(.name = "CHK-05 RSET between chunks drops the message (ABORT)",
	  .in = EH MF RT "BDAT 1\r\naBDAT 1\r\nbBDAT 1\r\ncRSET\r\nBDAT 1 "
		"LAST\r\ndQUIT\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.0.0 1 octets|"
		 "250 2.0.0 1 octets|250 2.0.0 1 octets|250 2.0.0|503 5.5.1|"
		 "221 2.0.0",
	  .ev = "DARC"),
	C(.name = "CHK-06 BDAT 0 LAST legal (after chunks and alone)",
	  .in = EH MF RT "BDAT 3\r\nab\rBDAT 3\r\n\ncdBDAT 0 LAST\r\n" MF RT
		"BDAT 0 LAST\r\nNOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.0.0 3 octets|"
		 "250 2.0.0 3 octets|250 2.0.0 Ok: queued as Q1|250 2.1.0|"
		 "250 2.1.5|250 2.0.0 Ok: queued as Q2|250 2.0.0",
	  .ev = "DMDM", .check = chk_bdat_cr),
	C(.name = "BDAT content checks: bare LF, trailing CR, size, hops",
	  .in = EH MF RT "BDAT 3\r\na\nbBDAT 1 LAST\r\nc" MF RT
		"BDAT 2 LAST\r\nx\r" MF RT "BDAT 6000\r\n",
	  .post = NULL,
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.0.0 3 octets|"
		 "550 5.6.0|250 2.1.0|250 2.1.5|550 5.6.0|250 2.1.0|250 2.1.5",
	  .ev = "DADAD"),
	C(.name = "BDAT syntax errors -> 501 5.5.4",
	  .in = EH MF RT "BDAT\r\nBDAT x\r\nBDAT 1 FIRST\r\n"
		"BDAT 99999999999999999999999\r\nBDAT -1\r\nBDAT 1 LAST x\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|501 5.5.4|501 5.5.4|"
		 "501 5.5.4|501 5.5.4|501 5.5.4|501 5.5.4",
	  .ev = "RRRRRR"),
	C(.name = "BDAT chunk body not ending in CRLF is fine",
	  .in = EH MF RT "BDAT 3 LAST\r\nabcNOOP\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.0.0|250 2.0.0",
	  .ev = "DM", .body = "abc"),
	C(.name = "message_done MTA_EMAPFULL -> 452 4.3.1; EIO -> 451; "
		 "session continues",
	  .results = {MTA_EMAPFULL, -EIO, 0},
	  .in = EH MF RT "DATA\r\nx\r\n.\r\n" MF RT "BDAT 1 LAST\r\ny" MF RT
		"DATA\r\nz\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|452 4.3.1|250 2.1.0|"
		 "250 2.1.5|451 4.3.0|250 2.1.0|250 2.1.5|354|250 2.0.0 Ok: "
		 "queued as Q3",
	  .ev = "DMDMDM", .check = chk_emapfull),
	C(.name = "EHLO/HELO without argument -> 501; DATA/RSET/QUIT args",
	  .in = "EHLO\r\nHELO \r\n" EH MF RT "DATA x\r\nRSET x\r\nQUIT x\r\n"
		"NOOP x\r\nDATA\r\n.\r\n",
	  .exp = "501 5.5.4|501 5.5.4|250 CHUNKING|250 2.1.0|250 2.1.5|"
		 "501 5.5.4|501 5.5.4|501 5.5.4|250 2.0.0|354|250 2.0.0",
	  .ev = "RRRRRDM"),
	C(.name = "paths: source route stripped, literals, quoted local",
	  .in = EH "MAIL FROM:<@a.test,@b.test:u@d.test>\r\n"
		"RCPT TO:<v@[192.0.2.7]>\r\nRCPT TO:<w@[IPv6:2001:db8::1]>\r\n"
		"RCPT TO:<\"a b\\\"c\"@y.test>\r\nRCPT TO:<@r.test:x@y.test>\r\n"
		"RCPT TO:<v@[999.1.1.1]>\r\nRCPT TO:<bob>\r\nRCPT TO:<>\r\n"
		"RCPT TO:<@r.test,x@y>\r\nRCPT TO:<w@[IPv6:zz]>\r\n"
		"DATA\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|250 2.1.5|250 2.1.5|"
		 "250 2.1.5|501 5.1.3|501 5.1.3|501 5.1.3|501 5.1.3|501 5.1.3|"
		 "354|250 2.0.0",
	  .ev = "RRRRRDM", .check = chk_paths),
	C(.name = "null sender <> accepted; AUTH= accepted (AUTH-09)",
	  .in = EH "MAIL FROM:<> AUTH=<>\r\n" RT "DATA\r\n.\r\n",
	  .exp = "250 CHUNKING|250 2.1.0|250 2.1.5|354|250 2.0.0", .ev = "DM",
	  .check = chk_null_sender),
	C(.name = "100-error limit -> 421 4.7.0 and CLOSE", .gen = gen_errors),
};

/* ---- non-table tests -------------------------------------------------- */

static const struct mta_smtpd_config base_cfg = {
	.hostname = HOST,
	.max_message_size = 10000,
	.max_recipients = 100,
	.starttls = true,
	.relay_allowed = true,
	.client_addr = "192.0.2.1",
};

static size_t out_take(struct mta_smtpd *s, char *buf, size_t cap)
{
	const uint8_t *p;
	size_t n = mta_smtpd_output(s, &p);
	assert_true(n < cap);
	memcpy(buf, p, n);
	buf[n] = '\0';
	mta_smtpd_output_consume(s, n);
	return n;
}

/* SRV-17-adjacent: timeout and shutdown queue 421 and close */
static void test_timeout_shutdown(void **state)
{
	static struct mta_smtpd s;
	char out[4096];
	size_t n;
	struct mta_smtpd_event e;
	(void)state;

	mta_smtpd_init(&s, &base_cfg);
	mta_smtpd_greet(&s);
	assert_int_equal(mta_smtpd_feed(&s, (const uint8_t *)EH MF RT
					 "DATA\r\nabc",
					 strlen(EH MF RT "DATA\r\nabc"), &n, &e),
			 MTA_SMTPD_EV_DATA_START);
	assert_true(mta_smtpd_in_message(&s));
	out_take(&s, out, sizeof(out));
	mta_smtpd_timeout(&s);
	out_take(&s, out, sizeof(out));
	assert_string_equal(out, "421 4.4.2 " HOST " Error: timeout exceeded\r\n");
	assert_true(mta_smtpd_closed(&s));
	assert_int_equal(mta_smtpd_feed(&s, (const uint8_t *)"NOOP\r\n", 6, &n,
					&e),
			 MTA_SMTPD_EV_CLOSE);
	assert_int_equal(n, 6);
	mta_smtpd_shutdown(&s); /* already closed: nothing */
	assert_int_equal(out_take(&s, out, sizeof(out)), 0);
	mta_smtpd_free(&s);

	mta_smtpd_init(&s, &base_cfg);
	mta_smtpd_greet(&s);
	assert_false(mta_smtpd_in_message(&s));
	mta_smtpd_shutdown(&s);
	out_take(&s, out, sizeof(out));
	assert_string_equal(out, "220 " HOST " ESMTP mtad\r\n421 4.3.2 " HOST
				 " Service shutting down\r\n");
	assert_true(mta_smtpd_closed(&s));
	mta_smtpd_free(&s);
}

/* Traced state machine: every mode change is one debug line
 * "event=smtpd_state old=<a> new=<b>", in order (STYLE.md). */
static void test_state_trace(void **state)
{
	static struct mta_smtpd s;
	static const char in[] = EH MF RT "DATA\r\nx\r\n.\r\n";
	struct mta_smtpd_event e;
	char out[4096], log[8192];
	size_t n, off = 0, got;
	FILE *f = tmpfile();
	enum mta_smtpd_ev ev;
	(void)state;

	assert_non_null(f);
	mta_log_set_fd(fileno(f));
	mta_log_set_level(MTA_LOG_DEBUG);
	mta_smtpd_init(&s, &base_cfg);
	mta_smtpd_greet(&s);
	do {
		ev = mta_smtpd_feed(&s, (const uint8_t *)in + off,
				    sizeof(in) - 1 - off, &n, &e);
		off += n;
		out_take(&s, out, sizeof(out));
	} while (ev != MTA_SMTPD_EV_MESSAGE && off < sizeof(in) - 1);
	assert_int_equal(ev, MTA_SMTPD_EV_MESSAGE);
	mta_smtpd_message_done(&s, 0, "Q1");
	ev = mta_smtpd_feed(&s, (const uint8_t *)"QUIT\r\n", 6, &n, &e);
	assert_int_equal(ev, MTA_SMTPD_EV_CLOSE);
	assert_true(mta_smtpd_closed(&s));
	mta_smtpd_free(&s);
	mta_log_set_level(MTA_LOG_INFO);
	mta_log_set_fd(2);
	rewind(f);
	got = fread(log, 1, sizeof(log) - 1, f);
	log[got] = '\0';
	fclose(f);

	static const char *const want[] = {
		/* the final dot ends DATA, then the body checks pass */
		"old=cmd new=data", "old=data new=cmd", "old=cmd new=wait",
		"old=wait new=cmd", "old=cmd new=closed"};
	const char *p = log;
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const char *q = strstr(p, want[i]);
		if (q == NULL)
			fail_msg("missing \"%s\" (in order) in:\n%s", want[i],
				 log);
		const char *bol = q;
		while (bol > log && bol[-1] != '\n')
			bol--;
		assert_non_null(strstr(bol, "level=debug"));
		assert_true(strstr(bol, "event=smtpd_state") < q);
		p = q;
	}
	size_t lines = 0;
	for (const char *r = log; (r = strstr(r, "event=smtpd_state")); r++)
		lines++;
	assert_int_equal(lines, sizeof(want) / sizeof(want[0]));
}

/* Output high-water: without draining, the engine stops consuming; after
 * a drain it resumes; every reply arrives in order (PIPE-02/05). */
static void test_highwater(void **state)
{
	static struct mta_smtpd s;
	static char in[2000 * 12 + 1];
	size_t len = 0, off = 0, n, got = 0, blocked = 0;
	struct mta_smtpd_event e;
	(void)state;

	for (int i = 0; i < 2000; i++)
		len += (size_t)sprintf(in + len, "NOOP %05d\r\n", i);
	mta_smtpd_init(&s, &base_cfg);
	mta_smtpd_greet(&s);
	while (off < len) {
		enum mta_smtpd_ev ev = mta_smtpd_feed(
			&s, (const uint8_t *)in + off, len - off, &n, &e);
		assert_int_equal(ev, MTA_SMTPD_EV_NONE);
		off += n;
		if (off < len) {
			/* blocked: consumed nothing more until drained */
			const uint8_t *p;
			size_t o = mta_smtpd_output(&s, &p);
			assert_true(o > MTA_SMTPD_OUT_SIZE - 2048 - 64);
			assert_int_equal(mta_smtpd_feed(&s, (const uint8_t *)in +
								  off,
							len - off, &n, &e),
					 MTA_SMTPD_EV_NONE);
			assert_int_equal(n, 0);
			blocked++;
			/* drain and count replies */
			for (size_t i = 0; i < o; i++)
				got += p[i] == '\n';
			mta_smtpd_output_consume(&s, o);
		}
	}
	{
		const uint8_t *p;
		size_t o = mta_smtpd_output(&s, &p);
		for (size_t i = 0; i < o; i++)
			got += p[i] == '\n';
	}
	assert_true(blocked >= 1);
	assert_int_equal(got, 2001); /* greeting + 2000 */
	mta_smtpd_free(&s);
}

/* Received: buffer too small -> MTA_ETOOBIG; HELO after TLS = SMTP */
static void test_received_small(void **state)
{
	static struct mta_smtpd s;
	char buf[64];
	size_t n;
	struct mta_smtpd_event e;
	(void)state;

	mta_smtpd_init(&s, &base_cfg);
	mta_smtpd_greet(&s);
	(void)mta_smtpd_feed(&s, (const uint8_t *)"HELO h\r\n", 8, &n, &e);
	assert_int_equal(mta_smtpd_received(&s, "Q", NOW, buf, sizeof(buf)),
			 MTA_ETOOBIG);
	assert_int_equal(mta_smtpd_received(&s, "Q", NOW, buf, 0), MTA_ETOOBIG);
	mta_smtpd_free(&s);
}

/* ---- chunking differential -------------------------------------------- */

/* Random sessions (DATA and BDAT bodies with CR, LF, NUL, dots, long
 * lines, Received headers, size limits near the body size) fed in one
 * chunk, byte by byte and in random windows must give the same replies,
 * events, bodies and envelope sizes.  MTA_TEST_SEED=n repeats a run. */

static uint64_t dseed;

static uint32_t drnd(void)
{
	dseed = dseed * 6364136223846793005u + 1442695040888963407u;
	return (uint32_t)(dseed >> 33);
}

struct dtrace {
	struct mta_buf out; /* every reply byte */
	struct mta_buf ev;  /* events; MESSAGE with its body and size */
	struct mta_buf cur; /* body of the message in progress */
};

static void dtrace_free(struct dtrace *t)
{
	mta_buf_free(&t->out);
	mta_buf_free(&t->ev);
	mta_buf_free(&t->cur);
}

static void dput(struct mta_buf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	assert_true(n > 0 && (size_t)n < sizeof(tmp));
	assert_int_equal(mta_buf_append(b, tmp, (size_t)n), 0);
}

/* window: 0 all at once, 1 byte by byte, else random 1..window */
static void dfeed(const uint8_t *in, size_t len, uint64_t max, size_t window,
		  struct dtrace *t)
{
	struct mta_smtpd_config cfg = base_cfg;
	static struct mta_smtpd s;
	size_t off = 0;
	int stall = 0;

	cfg.max_message_size = max;
	memset(t, 0, sizeof(*t));
	mta_smtpd_init(&s, &cfg);
	mta_smtpd_greet(&s);
	while (off < len) {
		size_t w = len - off, n;
		struct mta_smtpd_event e;
		const uint8_t *p;

		if (window == 1) {
			w = 1;
		} else if (window > 1) {
			size_t r = 1 + drnd() % window;
			if (w > r)
				w = r;
		}
		enum mta_smtpd_ev ev = mta_smtpd_feed(&s, in + off, w, &n, &e);
		assert_true(n <= w);
		off += n;
		size_t o = mta_smtpd_output(&s, &p);
		assert_int_equal(mta_buf_append(&t->out, p, o), 0);
		mta_smtpd_output_consume(&s, o);
		if (ev == MTA_SMTPD_EV_NONE) {
			if (n == 0)
				assert_true(++stall < 3);
			continue;
		}
		stall = 0;
		switch (ev) {
		case MTA_SMTPD_EV_BODY:
			assert_true(e.len > 0);
			assert_int_equal(mta_buf_append(&t->cur, e.data, e.len),
					 0);
			break;
		case MTA_SMTPD_EV_MESSAGE: {
			struct mta_envelope env;

			mta_smtpd_take_envelope(&s, &env);
			assert_int_equal(env.size, t->cur.len);
			dput(&t->ev, "M%zu:", t->cur.len);
			if (t->cur.len > 0)
				assert_int_equal(mta_buf_append(&t->ev,
								t->cur.data,
								t->cur.len),
						 0);
			t->cur.len = 0;
			mta_envelope_free(&env);
			mta_smtpd_message_done(&s, 0, "Q1");
			break;
		}
		case MTA_SMTPD_EV_ABORT:
		case MTA_SMTPD_EV_REJECT:
			dput(&t->ev, "%c%d %s\n",
			     ev == MTA_SMTPD_EV_ABORT ? 'A' : 'R', e.code,
			     e.text);
			if (ev == MTA_SMTPD_EV_ABORT)
				t->cur.len = 0;
			break;
		case MTA_SMTPD_EV_AUTH:
		case MTA_SMTPD_EV_CLOSE:
		case MTA_SMTPD_EV_DATA_START:
		case MTA_SMTPD_EV_NONE:
		case MTA_SMTPD_EV_STARTTLS:
		default:
			dput(&t->ev, "E%d\n", (int)ev);
			if (ev == MTA_SMTPD_EV_DATA_START)
				t->cur.len = 0;
			break;
		}
		if (ev == MTA_SMTPD_EV_CLOSE)
			break;
	}
	const uint8_t *p;
	size_t o = mta_smtpd_output(&s, &p);
	assert_int_equal(mta_buf_append(&t->out, p, o), 0);
	mta_smtpd_output_consume(&s, o);
	mta_smtpd_free(&s);
}

/* One random message body (not dot-stuffed) into b. */
static void dbody(struct mta_buf *b)
{
	int specials = drnd() % 3 == 0; /* bare CR/LF, NUL */
	int hops = drnd() % 4 == 0 ? 95 + (int)(drnd() % 10)
				   : (int)(drnd() % 4);
	int nlines = 1 + (int)(drnd() % 60);
	int longp = drnd() % 5 == 0;

	int split = drnd() % 2 ? 50 : -1; /* empty line: body from there */

	for (int h = 0; h < hops; h++)
		dput(b, "%s%s: from h%d\r\n", h == split ? "\r\n" : "",
		     drnd() % 2 ? "Received" : "rECEIVED", h);
	for (int l = 0; l < nlines; l++) {
		if (drnd() % 20 == 0)
			dput(b, "Received:");
		size_t ll = longp && drnd() % 8 == 0 ? 65530 + drnd() % 12
						     : drnd() % 120;
		for (size_t k = 0; k < ll; k++) {
			uint32_t r = drnd() % 1000;
			char c = (char)('a' + r % 26);
			if (r < 15 || (k == 0 && drnd() % 4 == 0))
				c = '.';
			else if (specials && r < 18)
				c = "\r\n"[r % 2]; /* bare LF; CR mostly */
			else if (specials && r < 20)
				c = '\0';
			else if (r < 40)
				c = (char)(0x80 | r);
			assert_int_equal(mta_buf_append(b, &c, 1), 0);
		}
		uint32_t e = drnd() % 30;
		if (specials && e == 0)
			dput(b, "\n");
		else if (specials && e == 1)
			dput(b, "\r");
		else if (e == 2)
			dput(b, "\r\n\r\n");
		else
			dput(b, "\r\n");
	}
	if (drnd() % 6 == 0 && b->len > 0)
		b->len--; /* body not ending in CRLF */
}

static void dsession(struct mta_buf *in)
{
	int ntx = 1 + (int)(drnd() % 3);

	dput(in, EH);
	for (int t = 0; t < ntx; t++) {
		struct mta_buf body = {0};

		dput(in, MF RT);
		dbody(&body);
		if (drnd() % 2 == 0) {
			int stuff = drnd() % 5 != 0;
			dput(in, "DATA\r\n");
			for (size_t i = 0; i < body.len; i++) {
				int bol = i == 0 || (body.data[i - 1] == '\n' &&
						     i >= 2 &&
						     body.data[i - 2] == '\r');
				if (stuff && bol && body.data[i] == '.')
					dput(in, ".");
				assert_int_equal(
					mta_buf_append(in, body.data + i, 1),
					0);
			}
			dput(in, "%s.\r\n", drnd() % 3 == 0 ? "" : "\r\n");
		} else {
			size_t o = 0;
			do {
				size_t c = drnd() % 4 == 0 ? drnd() % 4
							   : drnd() % 3000;
				if (c > body.len - o)
					c = body.len - o;
				int last = o + c == body.len;
				dput(in, "BDAT %zu%s\r\n", c,
				     last ? " LAST" : "");
				if (c > 0)
					assert_int_equal(mta_buf_append(
							 in, body.data + o, c),
							 0);
				o += c;
				if (last)
					break;
			} while (1);
		}
		mta_buf_free(&body);
	}
	dput(in, "QUIT\r\n");
}

static void test_chunking_differential(void **state)
{
	const char *env = getenv("MTA_TEST_SEED");
	uint64_t seed = env != NULL ? strtoull(env, NULL, 0) : 20240607u;
	unsigned seen[4] = {0}; /* MESSAGE, 550 5.6.0, 552, 554 */
	(void)state;

	print_message("chunking differential: seed %llu "
		      "(MTA_TEST_SEED to repeat)\n",
		      (unsigned long long)seed);
	dseed = seed;
	for (int it = 0; it < 150; it++) {
		struct mta_buf in = {0};
		struct dtrace ref, t;
		static const size_t windows[] = {1, 3, 64, 1500, 20000};
		uint64_t max;

		dsession(&in);
		switch (drnd() % 4) {
		case 0:
			max = 0;
			break;
		case 1:
			max = 10000000;
			break;
		default: /* near the size of the body */
			max = 1 + drnd() % (in.len + 16);
			break;
		}
		dfeed(in.data, in.len, max, 0, &ref);
		for (size_t wi = 0; wi < sizeof(windows) / sizeof(windows[0]);
		     wi++) {
			if (windows[wi] == 1 && in.len > 200000)
				continue;
			dfeed(in.data, in.len, max, windows[wi], &t);
			if (t.out.len != ref.out.len ||
			    memcmp(t.out.data, ref.out.data, t.out.len) != 0 ||
			    t.ev.len != ref.ev.len ||
			    memcmp(t.ev.data, ref.ev.data, t.ev.len) != 0)
				fail_msg("seed %llu session %d: window %zu "
					 "differs from one chunk",
					 (unsigned long long)seed, it,
					 windows[wi]);
			dtrace_free(&t);
		}
		for (size_t i = 0; i + 12 <= ref.out.len; i++) {
			const char *l = (const char *)ref.out.data + i;
			seen[0] += memcmp(l, "250 2.0.0 Ok", 12) == 0;
			seen[1] += memcmp(l, "550 5.6.0", 9) == 0;
			seen[2] += memcmp(l, "552 5.3.4", 9) == 0;
			seen[3] += memcmp(l, "554 5.4.6", 9) == 0;
		}
		dtrace_free(&ref);
		mta_buf_free(&in);
	}
	print_message("  outcomes: queued %u, 5.6.0 %u, 5.3.4 %u, 5.4.6 %u\n",
		      seen[0], seen[1], seen[2], seen[3]);
	for (int k = 0; k < 4; k++)
		assert_true(seen[k] > 0);
}

int main(void)
{
	enum { N = sizeof(cases) / sizeof(cases[0]) };
	struct CMUnitTest t[N + 5];

	for (size_t i = 0; i < N; i++) {
		t[i].name = cases[i].name;
		t[i].test_func = run_case;
		t[i].setup_func = NULL;
		t[i].teardown_func = NULL;
		t[i].initial_state = (void *)&cases[i];
	}
	t[N] = (struct CMUnitTest)cmocka_unit_test(test_timeout_shutdown);
	t[N + 1] = (struct CMUnitTest)cmocka_unit_test(test_highwater);
	t[N + 2] = (struct CMUnitTest)cmocka_unit_test(test_received_small);
	t[N + 3] = (struct CMUnitTest)cmocka_unit_test(
		test_chunking_differential);
	t[N + 4] = (struct CMUnitTest)cmocka_unit_test(test_state_trace);
	return _cmocka_run_group_tests("smtp_server", t, N + 5, NULL, NULL);
}
