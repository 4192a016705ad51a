/* Unit tests of the DSN generator (libmta/dsn.c): NOTIFY rules, the
 * multipart/report structure, required and forbidden fields, RET, and
 * hostile inputs (original message, remote replies, envelope values).
 * Every produced message is parsed here: split on its boundary, headers
 * unfolded, and checked to be CRLF-only with lines <= 998 octets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dsn.h"
#include "err.h"

#include <errno.h>

#define NOW_US (1700000000LL * 1000000) /* Tue, 14 Nov 2023 22:13:20 */
#define ARRIVAL_US (1699990000LL * 1000000)

/* ---- the original message, read through the callback ---- */

struct mem {
	const char *data;
	size_t len;
	int fail_rc;	/* returned instead of data when != 0 */
	size_t short_at; /* pretend the message ends here when != 0 */
	uint64_t next_off; /* reads come in order */
};

static int mem_read(void *ud, uint64_t off, void *buf, size_t len,
		    size_t *got)
{
	struct mem *m = ud;
	size_t end = m->short_at ? m->short_at : m->len;

	assert_true(off == m->next_off);
	if (m->fail_rc != 0)
		return m->fail_rc;
	if (off >= end) {
		*got = 0;
		return 0;
	}
	if (len > end - off)
		len = end - off;
	memcpy(buf, m->data + off, len);
	*got = len;
	m->next_off = off + len;
	return 0;
}

/* ---- a tiny MIME reader for the produced message ---- */

#define MAXPARTS 8

struct parsed {
	char *all;
	char *top;	/* top-level header block (with final CRLF) */
	int nparts;
	char *phdr[MAXPARTS];
	char *pbody[MAXPARTS];
	char boundary[128];
};

static char *dup_range(const char *p, size_t n)
{
	char *s = malloc(n + 1);
	assert_non_null(s);
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

/* CRLF only, no NUL, no line longer than 998 octets. */
static void assert_wellformed(const uint8_t *d, size_t n)
{
	size_t col = 0;
	for (size_t i = 0; i < n; i++) {
		assert_true(d[i] != '\0');
		if (d[i] == '\r') {
			assert_true(i + 1 < n && d[i + 1] == '\n');
			i++;
			col = 0;
			continue;
		}
		assert_true(d[i] != '\n'); /* bare LF */
		col++;
		assert_true(col <= 998);
	}
	assert_true(n >= 2 && d[n - 2] == '\r' && d[n - 1] == '\n');
}

static void assert_7bit(const char *s)
{
	for (; *s; s++)
		assert_true((unsigned char)*s < 0x80);
}

/* Unfolded value of the first field `name` in a header block, or NULL. */
static char *field(const char *hdrs, const char *name)
{
	size_t nl = strlen(name);
	const char *p = hdrs;

	while (*p != '\0' && !(p[0] == '\r' && p[1] == '\n')) {
		if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
			const char *v = p + nl + 1;
			char *out = malloc(strlen(v) + 1);
			size_t o = 0;
			assert_non_null(out);
			while (*v == ' ' || *v == '\t')
				v++;
			for (;;) {
				if (v[0] == '\r' && v[1] == '\n') {
					if (v[2] == ' ' || v[2] == '\t') {
						v += 2;
						continue;
					}
					break;
				}
				if (*v == '\0')
					break;
				out[o++] = *v++;
			}
			out[o] = '\0';
			return out;
		}
		p = strstr(p, "\r\n");
		if (p == NULL)
			break;
		p += 2;
	}
	return NULL;
}

static int count_fields(const char *hdrs, const char *name)
{
	int n = 0;
	size_t nl = strlen(name);
	const char *p = hdrs;
	while (p != NULL && *p != '\0') {
		if (strncasecmp(p, name, nl) == 0 && p[nl] == ':')
			n++;
		p = strstr(p, "\r\n");
		if (p != NULL)
			p += 2;
	}
	return n;
}

static void assert_field(const char *hdrs, const char *name, const char *want)
{
	char *v = field(hdrs, name);
	if (v == NULL)
		fail_msg("field %s missing in:\n%s", name, hdrs);
	if (strcmp(v, want) != 0)
		fail_msg("%s: got \"%s\", want \"%s\"", name, v, want);
	free(v);
}

static void assert_no_field(const char *hdrs, const char *name)
{
	char *v = field(hdrs, name);
	if (v != NULL)
		fail_msg("field %s present: %s", name, v);
}

static void parse(const struct mta_buf *b, struct parsed *m)
{
	char *ct, *q, *sep, *body;
	char delim[140];
	size_t dl;

	memset(m, 0, sizeof(*m));
	assert_wellformed(b->data, b->len);
	m->all = dup_range((const char *)b->data, b->len);
	sep = strstr(m->all, "\r\n\r\n");
	assert_non_null(sep);
	m->top = dup_range(m->all, (size_t)(sep - m->all) + 2);
	body = sep + 4;

	ct = field(m->top, "Content-Type");
	assert_non_null(ct);
	assert_non_null(strstr(ct, "multipart/report"));
	assert_non_null(strstr(ct, "report-type=delivery-status"));
	q = strstr(ct, "boundary=\"");
	assert_non_null(q);
	q += 10;
	assert_non_null(strchr(q, '"'));
	snprintf(m->boundary, sizeof(m->boundary), "%.*s",
		 (int)(strchr(q, '"') - q), q);
	assert_true(strlen(m->boundary) <= 70);
	free(ct);

	/* delimiter lines: "--B" or "--B--" at the start of a line */
	snprintf(delim, sizeof(delim), "\r\n--%s", m->boundary);
	dl = strlen(delim);
	{
		/* the body may start directly with the delimiter */
		char *tmp = malloc(strlen(body) + 3);
		char *p, *start = NULL;
		assert_non_null(tmp);
		strcpy(tmp, "\r\n");
		strcat(tmp, body);
		p = tmp;
		for (;;) {
			char *d = strstr(p, delim);
			char *after;
			assert_non_null(d); /* closing delimiter required */
			after = d + dl;
			if (start != NULL) {
				char *ps = start, *hs;
				assert_true(m->nparts < MAXPARTS);
				hs = strstr(ps, "\r\n\r\n");
				if (hs == NULL || hs > d) {
					/* a part with headers and empty body */
					assert_true(d >= ps);
					m->phdr[m->nparts] =
						dup_range(ps, (size_t)(d - ps) + 2);
					m->pbody[m->nparts] = dup_range("", 0);
				} else {
					m->phdr[m->nparts] = dup_range(
						ps, (size_t)(hs - ps) + 2);
					m->pbody[m->nparts] = dup_range(
						hs + 4, (size_t)(d - hs - 4));
				}
				m->nparts++;
			}
			if (strncmp(after, "--\r\n", 4) == 0)
				break;
			assert_true(strncmp(after, "\r\n", 2) == 0);
			start = after + 2;
			p = after;
		}
		free(tmp);
	}
}

static void parsed_free(struct parsed *m)
{
	free(m->all);
	free(m->top);
	for (int i = 0; i < m->nparts; i++) {
		free(m->phdr[i]);
		free(m->pbody[i]);
	}
}

/* The n-th group (0 = per-message) of a message/delivery-status body. */
static char *group(const char *ds, int n)
{
	const char *p = ds;
	for (int i = 0; i < n; i++) {
		p = strstr(p, "\r\n\r\n");
		if (p == NULL)
			return NULL;
		p += 4;
	}
	const char *e = strstr(p, "\r\n\r\n");
	size_t len = e ? (size_t)(e - p) + 2 : strlen(p);
	/* group text plus an empty line, so field() stops at its end */
	char *g = malloc(len + 3);
	assert_non_null(g);
	memcpy(g, p, len);
	strcpy(g + len, "\r\n");
	return g;
}

static int ngroups(const char *ds)
{
	int n = 1;
	for (const char *p = ds; (p = strstr(p, "\r\n\r\n")) != NULL; p += 4)
		if (p[4] != '\0')
			n++;
	return n;
}

static char *part_ct(const struct parsed *m, int i)
{
	return field(m->phdr[i], "Content-Type");
}

/* ---- fixtures ---- */

static const char ORIG[] = "Received: from app by relay; Tue, 14 Nov 2023\r\n"
			   "From: Alice <alice@example.org>\r\n"
			   "To: bob@example.net\r\n"
			   "Subject: quarterly numbers\r\n"
			   "Message-ID: <m1@example.org>\r\n"
			   "\r\n"
			   "Hello Bob,\r\n"
			   "the body line\r\n";
static const char ORIG_HDRS[] = "Received: from app by relay; Tue, 14 Nov 2023\r\n"
				"From: Alice <alice@example.org>\r\n"
				"To: bob@example.net\r\n"
				"Subject: quarterly numbers\r\n"
				"Message-ID: <m1@example.org>\r\n";

static void env_setup(struct mta_envelope *e, const char *sender)
{
	mta_envelope_init(e);
	assert_int_equal(mta_envelope_set_str(&e->sender, sender), 0);
	e->arrival_us = ARRIVAL_US;
	assert_non_null(mta_envelope_add_rcpt(e, "bob@example.net", NULL,
					      NULL, 0));
}

static void params_init(struct mta_dsn_params *p,
			const struct mta_envelope *e,
			const struct mta_dsn_rcpt *r, size_t n, struct mem *m)
{
	memset(p, 0, sizeof(*p));
	p->reporting_mta = "mta.example.org";
	p->env = e;
	p->rcpts = r;
	p->nrcpt = n;
	p->now_us = NOW_US;
	p->unique = "0ABCDEF.1";
	if (m != NULL) {
		p->read = mem_read;
		p->read_ud = m;
		p->msg_size = m->len;
	}
}

static const struct mta_dsn_rcpt TLS_FAIL = {
	.index = 0,
	.action = MTA_DSN_FAILED,
	.status = "5.7.5",
	.diagnostic = "TLSA records for mx.example.net did not match the "
		      "certificate presented",
	.remote_mta = NULL,
	.last_attempt_us = NOW_US - 1000000,
};

/* Builds and parses; returns the build's rc (message parsed only on 0). */
static int build(const struct mta_dsn_params *p, struct parsed *m,
		 struct mta_dsn_info *info)
{
	struct mta_buf b = {0};
	int rc = mta_dsn_build(p, &b, info);
	if (rc == 0)
		parse(&b, m);
	else
		assert_int_equal(b.len, 0);
	mta_buf_free(&b);
	return rc;
}

/* ---- tests ---- */

/* DSN-07: multipart/report with the three parts; the human text names
 * the TLS reason (the DANE-122 bounce). */
static void structure_failed(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mem m = {ORIG, sizeof(ORIG) - 1, 0, 0, 0};
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_info info;
	char *ct;

	env_setup(&e, "alice@example.org");
	params_init(&p, &e, &TLS_FAIL, 1, &m);
	assert_int_equal(build(&p, &d, &info), 0);

	assert_field(d.top, "From",
		     "\"Mail Delivery System\" <MAILER-DAEMON@mta.example.org>");
	assert_field(d.top, "To", "<alice@example.org>");
	assert_field(d.top, "Subject", "Undelivered Mail Returned to Sender");
	assert_field(d.top, "Date", "Tue, 14 Nov 2023 22:13:20 +0000");
	assert_field(d.top, "Message-ID", "<0ABCDEF.1@mta.example.org>");
	assert_field(d.top, "Auto-Submitted", "auto-replied");
	assert_field(d.top, "MIME-Version", "1.0");
	assert_7bit(d.top);

	assert_int_equal(d.nparts, 3);
	ct = part_ct(&d, 0);
	assert_string_equal(ct, "text/plain; charset=us-ascii");
	free(ct);
	ct = part_ct(&d, 1);
	assert_string_equal(ct, "message/delivery-status");
	free(ct);
	ct = part_ct(&d, 2);
	assert_string_equal(ct, "text/rfc822-headers");
	free(ct);

	/* the human text: who, what, why in plain words */
	assert_7bit(d.pbody[0]);
	assert_7bit(d.pbody[1]);
	assert_non_null(strstr(d.pbody[0], "<bob@example.net>: delivery failed"));
	assert_non_null(strstr(d.pbody[0], "TLSA records for mx.example.net"));
	assert_non_null(strstr(d.pbody[0], "certificate presented"));
	assert_non_null(strstr(d.pbody[0], "security or policy"));
	assert_non_null(strstr(d.pbody[0], "will not try again"));
	assert_false(info.full);
	assert_false(info.eightbit);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* DSN-08: required fields present, optional ones only when they apply. */
static void fields_local_failure(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mem m = {ORIG, sizeof(ORIG) - 1, 0, 0, 0};
	struct mta_dsn_params p;
	struct parsed d;
	char *g0, *g1;

	env_setup(&e, "alice@example.org");
	params_init(&p, &e, &TLS_FAIL, 1, &m);
	assert_int_equal(build(&p, &d, NULL), 0);

	assert_int_equal(ngroups(d.pbody[1]), 2);
	g0 = group(d.pbody[1], 0);
	g1 = group(d.pbody[1], 1);
	assert_field(g0, "Reporting-MTA", "dns; mta.example.org");
	assert_field(g0, "Arrival-Date", "Tue, 14 Nov 2023 19:26:40 +0000");
	assert_no_field(g0, "Original-Envelope-Id"); /* no ENVID */
	assert_no_field(g0, "Final-Recipient");

	assert_no_field(g1, "Original-Recipient"); /* no ORCPT */
	assert_field(g1, "Final-Recipient", "rfc822; bob@example.net");
	assert_field(g1, "Action", "failed");
	assert_field(g1, "Status", "5.7.5");
	assert_no_field(g1, "Remote-MTA"); /* no host contacted */
	assert_field(g1, "Diagnostic-Code",
		     "X-mtad; TLSA records for mx.example.net did not match "
		     "the certificate presented");
	assert_field(g1, "Last-Attempt-Date", "Tue, 14 Nov 2023 22:13:19 +0000");
	assert_no_field(g1, "Will-Retry-Until"); /* not delayed */
	free(g0);
	free(g1);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* DSN-08: Remote-MTA and an smtp Diagnostic-Code when a host replied. */
static void fields_remote_reply(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_rcpt r = {
		.index = 0,
		.action = MTA_DSN_FAILED,
		.status = "5.1.1",
		.diagnostic = "550 5.1.1 <bob@example.net>: user unknown",
		.remote_mta = "mx.example.net",
		.last_attempt_us = NOW_US,
	};
	char *g1;

	env_setup(&e, "alice@example.org");
	params_init(&p, &e, &r, 1, NULL); /* no reader: no third part */
	assert_int_equal(build(&p, &d, NULL), 0);
	assert_int_equal(d.nparts, 2);
	g1 = group(d.pbody[1], 1);
	assert_field(g1, "Remote-MTA", "dns; mx.example.net");
	assert_field(g1, "Diagnostic-Code",
		     "smtp; 550 5.1.1 <bob@example.net>: user unknown");
	assert_field(g1, "Status", "5.1.1");
	assert_non_null(strstr(d.pbody[0], "user unknown"));
	assert_non_null(strstr(d.pbody[0], "Remote server: mx.example.net"));
	free(g1);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* DSN-08, RFC 3461 §6.3 (a), (d): Original-Envelope-Id iff ENVID and
 * Original-Recipient iff ORCPT, both xtext decoded. */
static void envid_and_orcpt(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_rcpt r[2] = {
		{.index = 0, .action = MTA_DSN_FAILED, .status = "5.1.1"},
		{.index = 1, .action = MTA_DSN_FAILED, .status = "5.1.1"},
	};
	char *g0, *g1, *g2;

	env_setup(&e, "alice@example.org");
	assert_int_equal(mta_envelope_set_str(&e.envid, "QQ+2B314159"), 0);
	assert_int_equal(mta_envelope_set_str(&e.rcpts[0].orcpt,
					      "rfc822;b+2Bc@Example.NET"),
			 0);
	assert_non_null(mta_envelope_add_rcpt(&e, "carol@example.net", NULL,
					      NULL, 0));
	params_init(&p, &e, r, 2, NULL);
	assert_int_equal(build(&p, &d, NULL), 0);
	assert_int_equal(ngroups(d.pbody[1]), 3);
	g0 = group(d.pbody[1], 0);
	g1 = group(d.pbody[1], 1);
	g2 = group(d.pbody[1], 2);
	assert_field(g0, "Original-Envelope-Id", "QQ+314159");
	assert_field(g1, "Original-Recipient", "rfc822;b+c@Example.NET");
	assert_no_field(g2, "Original-Recipient");
	assert_field(g2, "Final-Recipient", "rfc822; carol@example.net");
	assert_no_field(g1, "Diagnostic-Code"); /* none given */
	assert_no_field(g1, "Last-Attempt-Date"); /* unknown */
	free(g0);
	free(g1);
	free(g2);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* DSN-08: Will-Retry-Until only for delayed; most severe subject wins. */
static void delayed_and_mixed(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_rcpt r[2] = {
		{.index = 0,
		 .action = MTA_DSN_DELAYED,
		 .status = "4.4.1",
		 .diagnostic = "connect to mx.example.net: timed out",
		 .last_attempt_us = NOW_US,
		 .will_retry_until_us = NOW_US + 86400LL * 1000000},
		{.index = 1,
		 .action = MTA_DSN_FAILED,
		 .status = "5.1.1",
		 .diagnostic = "550 no such user",
		 .remote_mta = "mx2.example.net",
		 .will_retry_until_us = NOW_US + 1000000},
	};
	char *g1, *g2;

	env_setup(&e, "alice@example.org");
	assert_non_null(mta_envelope_add_rcpt(&e, "carol@example.net", NULL,
					      NULL, 0));
	/* delayed alone */
	params_init(&p, &e, r, 1, NULL);
	assert_int_equal(build(&p, &d, NULL), 0);
	assert_field(d.top, "Subject", "Delayed Mail (still being retried)");
	g1 = group(d.pbody[1], 1);
	assert_field(g1, "Action", "delayed");
	assert_field(g1, "Will-Retry-Until", "Wed, 15 Nov 2023 22:13:20 +0000");
	assert_non_null(strstr(d.pbody[0], "will keep trying"));
	free(g1);
	parsed_free(&d);

	/* mixed: failed wins the subject; failed group has no
	 * Will-Retry-Until even if the caller filled it */
	params_init(&p, &e, r, 2, NULL);
	assert_int_equal(build(&p, &d, NULL), 0);
	assert_field(d.top, "Subject", "Undelivered Mail Returned to Sender");
	g1 = group(d.pbody[1], 1);
	g2 = group(d.pbody[1], 2);
	assert_field(g1, "Will-Retry-Until", "Wed, 15 Nov 2023 22:13:20 +0000");
	assert_no_field(g2, "Will-Retry-Until");
	assert_field(g2, "Action", "failed");
	free(g1);
	free(g2);
	parsed_free(&d);

	/* success report */
	struct mta_dsn_rcpt ok = {.index = 0,
				  .action = MTA_DSN_RELAYED,
				  .status = "2.0.0",
				  .diagnostic = "250 2.0.0 queued as 1234",
				  .remote_mta = "mx.example.net"};
	params_init(&p, &e, &ok, 1, NULL);
	assert_int_equal(build(&p, &d, NULL), 0);
	assert_field(d.top, "Subject", "Successful Mail Delivery Report");
	g1 = group(d.pbody[1], 1);
	assert_field(g1, "Action", "relayed");
	assert_no_field(g1, "Will-Retry-Until");
	free(g1);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* DSN-04/05/06: the NOTIFY table (RFC 3461 §5.2). */
static void notify_rules(void **st)
{
	(void)st;
	static const struct {
		const char *sender;
		unsigned notify;
		bool failed, delayed, delivered, relayed;
	} t[] = {
		/* absent: failures only; delay warnings off (local choice) */
		{"a@x", 0, true, false, false, false},
		{"a@x", MTA_NOTIFY_NEVER, false, false, false, false},
		{"a@x", MTA_NOTIFY_SUCCESS, false, false, true, true},
		{"a@x", MTA_NOTIFY_FAILURE, true, false, false, false},
		{"a@x", MTA_NOTIFY_DELAY, false, true, false, false},
		{"a@x", MTA_NOTIFY_SUCCESS | MTA_NOTIFY_DELAY, false, true,
		 true, true},
		{"a@x", MTA_NOTIFY_FAILURE | MTA_NOTIFY_DELAY, true, true,
		 false, false},
		{"a@x",
		 MTA_NOTIFY_SUCCESS | MTA_NOTIFY_FAILURE | MTA_NOTIFY_DELAY,
		 true, true, true, true},
		/* NEVER wins even if combined (the server rejects that) */
		{"a@x", MTA_NOTIFY_NEVER | MTA_NOTIFY_FAILURE, false, false,
		 false, false},
		/* DSN-06: null sender: nothing, whatever NOTIFY says */
		{"", 0, false, false, false, false},
		{"", MTA_NOTIFY_SUCCESS | MTA_NOTIFY_FAILURE | MTA_NOTIFY_DELAY,
		 false, false, false, false},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct mta_envelope e;
		env_setup(&e, t[i].sender);
		e.rcpts[0].notify = t[i].notify;
		print_message("case %zu\n", i);
		assert_int_equal(mta_dsn_needed(&e, 0, MTA_DSN_FAILED),
				 t[i].failed);
		assert_int_equal(mta_dsn_needed(&e, 0, MTA_DSN_DELAYED),
				 t[i].delayed);
		assert_int_equal(mta_dsn_needed(&e, 0, MTA_DSN_DELIVERED),
				 t[i].delivered);
		assert_int_equal(mta_dsn_needed(&e, 0, MTA_DSN_RELAYED),
				 t[i].relayed);
		assert_false(mta_dsn_needed(&e, 1, MTA_DSN_FAILED));
		mta_envelope_free(&e);
	}
}

/* DSN-06: building for a null sender is refused; bad params too. */
static void refuses_bad_params(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_rcpt bad = TLS_FAIL;

	env_setup(&e, "");
	params_init(&p, &e, &TLS_FAIL, 1, NULL);
	assert_int_equal(build(&p, &d, NULL), -EINVAL);
	mta_envelope_free(&e);

	env_setup(&e, "alice@example.org");
	bad.index = 1;
	params_init(&p, &e, &bad, 1, NULL);
	assert_int_equal(build(&p, &d, NULL), -EINVAL);
	params_init(&p, &e, &TLS_FAIL, 0, NULL);
	assert_int_equal(build(&p, &d, NULL), -EINVAL);
	params_init(&p, &e, &TLS_FAIL, 1, NULL);
	p.unique = "a\r\nb";
	assert_int_equal(build(&p, &d, NULL), -EINVAL);
	params_init(&p, &e, &TLS_FAIL, 1, NULL);
	p.reporting_mta = "evil host";
	assert_int_equal(build(&p, &d, NULL), -EINVAL);
	mta_envelope_free(&e);
}

/* RET=HDRS and RET absent: the header section, exactly, cut at the
 * empty line. */
static void ret_hdrs(void **st)
{
	(void)st;
	for (int ret = 0; ret < 2; ret++) {
		struct mta_envelope e;
		struct mem m = {ORIG, sizeof(ORIG) - 1, 0, 0, 0};
		struct mta_dsn_params p;
		struct parsed d;
		char *ct;

		env_setup(&e, "alice@example.org");
		e.ret = ret ? MTA_RET_HDRS : MTA_RET_NONE;
		params_init(&p, &e, &TLS_FAIL, 1, &m);
		assert_int_equal(build(&p, &d, NULL), 0);
		ct = part_ct(&d, 2);
		assert_string_equal(ct, "text/rfc822-headers");
		free(ct);
		/* exactly, final CRLF included */
		assert_string_equal(d.pbody[2], ORIG_HDRS);
		assert_null(strstr(d.all, "the body line"));
		assert_non_null(strstr(d.pbody[0], "headers of your message"));
		parsed_free(&d);
		mta_envelope_free(&e);
	}
}

/* RET=FULL on a failure: the whole message as message/rfc822. */
static void ret_full(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mem m = {ORIG, sizeof(ORIG) - 1, 0, 0, 0};
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_info info;
	char *ct;

	env_setup(&e, "alice@example.org");
	e.ret = MTA_RET_FULL;
	params_init(&p, &e, &TLS_FAIL, 1, &m);
	assert_int_equal(build(&p, &d, &info), 0);
	ct = part_ct(&d, 2);
	assert_string_equal(ct, "message/rfc822");
	free(ct);
	assert_string_equal(d.pbody[2], ORIG);
	assert_true(info.full);
	assert_false(info.truncated);
	assert_non_null(strstr(d.pbody[0], "Your message is attached"));
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* RET=FULL over the cap: headers only, and part 1 says why.  RET=FULL
 * on a delay warning: headers only (RFC 3461 §6.2). */
static void ret_full_over_cap_and_delay(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mem m = {ORIG, sizeof(ORIG) - 1, 0, 0, 0};
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_info info;
	struct mta_dsn_rcpt delay = {.index = 0,
				     .action = MTA_DSN_DELAYED,
				     .status = "4.4.1"};
	char *ct;

	env_setup(&e, "alice@example.org");
	e.ret = MTA_RET_FULL;
	params_init(&p, &e, &TLS_FAIL, 1, &m);
	p.max_full_size = 100;
	assert_int_equal(build(&p, &d, &info), 0);
	ct = part_ct(&d, 2);
	assert_string_equal(ct, "text/rfc822-headers");
	free(ct);
	assert_string_equal(d.pbody[2], ORIG_HDRS);
	assert_non_null(strstr(d.pbody[0], "larger than 100 bytes"));
	assert_false(info.full);
	assert_true(info.truncated);
	parsed_free(&d);

	m.next_off = 0;
	params_init(&p, &e, &delay, 1, &m);
	assert_int_equal(build(&p, &d, &info), 0);
	ct = part_ct(&d, 2);
	assert_string_equal(ct, "text/rfc822-headers");
	free(ct);
	assert_false(info.full);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* A hostile original: bare LF, bare CR, NULs, a 5000-octet line, no
 * empty line at all.  The DSN stays CRLF-only with short lines. */
static void hostile_original(void **st)
{
	(void)st;
	static char orig[8000];
	size_t n = 0;
	struct mta_envelope e;
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_info info;

	n += (size_t)sprintf(orig + n, "Subject: a\nX-Bare: cr\rX-Nul: a");
	orig[n++] = '\0';
	orig[n++] = 'b';
	n += (size_t)sprintf(orig + n, "\r\nX-Long: ");
	for (int i = 0; i < 5000; i++)
		orig[n++] = (char)('a' + i % 26);
	n += (size_t)sprintf(orig + n, "\r\nX-Last: no blank line, no eol");

	for (int ret = 0; ret < 2; ret++) {
		struct mem m = {orig, n, 0, 0, 0};
		env_setup(&e, "alice@example.org");
		e.ret = ret ? MTA_RET_FULL : MTA_RET_HDRS;
		params_init(&p, &e, &TLS_FAIL, 1, &m);
		assert_int_equal(build(&p, &d, &info), 0); /* parse() checks
							      * CRLF, NUL,
							      * 998 */
		assert_int_equal(d.nparts, 3);
		assert_non_null(strstr(d.pbody[2], "Subject: a\r\nX-Bare: cr\r\n"
						   "X-Nul: ab\r\nX-Long: abc"));
		assert_non_null(strstr(d.pbody[2], "X-Last: no blank line, no eol"));
		/* the long header is folded: continuation starts with SP */
		char *x = field(d.pbody[2], "X-Long");
		assert_non_null(x);
		assert_true(strlen(x) >= 5000);
		free(x);
		assert_int_equal(info.full, ret == 1);
		parsed_free(&d);
		mta_envelope_free(&e);
	}
}

/* CRLF injection through a remote reply, the ENVID, ORCPT, a recipient
 * address and the sender cannot add a header field. */
static void injection(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_rcpt r = {.index = 0,
				 .action = MTA_DSN_FAILED,
				 .status = "5.0.0\r\nX-Evil: 1",
				 .diagnostic = "550 x\r\nSubject: evil\r\n\r\n"
					       "--=_mtad_0ABCDEF.1\r\nX: y",
				 .remote_mta = "mx\r\nX-Evil: 2"};
	char *g0, *g1;

	env_setup(&e, "alice@example.org>\r\nBcc: <victim@example.com");
	assert_int_equal(mta_envelope_set_str(&e.envid, "a+0D+0AX-Evil:+203"),
			 0);
	assert_int_equal(mta_envelope_set_str(&e.rcpts[0].orcpt,
					      "rfc822;a+0D+0AX-Evil:+204"),
			 0);
	free(e.rcpts[0].addr);
	e.rcpts[0].addr = strdup("bob@x\r\nX-Evil: 5");
	params_init(&p, &e, &r, 1, NULL);
	assert_int_equal(build(&p, &d, NULL), 0);
	assert_int_equal(d.nparts, 2);
	assert_int_equal(count_fields(d.top, "Subject"), 1);
	assert_int_equal(count_fields(d.top, "Bcc"), 0);
	assert_field(d.top, "Subject", "Undelivered Mail Returned to Sender");
	assert_null(strstr(d.all, "\r\nX-Evil"));
	assert_null(strstr(d.all, "\r\nSubject: evil"));
	g0 = group(d.pbody[1], 0);
	g1 = group(d.pbody[1], 1);
	assert_field(g0, "Original-Envelope-Id", "a X-Evil: 3");
	assert_field(g1, "Status", "5.0.0"); /* invalid one replaced */
	assert_field(g1, "Original-Recipient", "rfc822;a X-Evil: 4");
	assert_field(g1, "Final-Recipient",
		     "utf-8; bob@x\\x{0D}\\x{0A}X-Evil:\\x{20}5");
	assert_non_null(strstr(g1, "Diagnostic-Code: smtp; 550 x Subject: evil"));
	assert_int_equal(ngroups(d.pbody[1]), 2);
	free(g0);
	free(g1);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* Several recipients of one message: one DSN, one group each. */
static void several_recipients(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mem m = {ORIG, sizeof(ORIG) - 1, 0, 0, 0};
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_rcpt r[3] = {
		{.index = 0, .action = MTA_DSN_FAILED, .status = "5.1.1",
		 .diagnostic = "550 5.1.1 no such user bob",
		 .remote_mta = "mx.example.net"},
		{.index = 2, .action = MTA_DSN_FAILED, .status = "5.7.5",
		 .diagnostic = "MTA-STS policy for example.com does not "
			       "allow mx.evil.test"},
		{.index = 1, .action = MTA_DSN_FAILED, .status = "5.4.7",
		 .diagnostic = "DNSSEC validation of example.org failed"},
	};

	env_setup(&e, "alice@example.org");
	assert_non_null(mta_envelope_add_rcpt(&e, "carol@example.org", NULL,
					      NULL, 0));
	assert_non_null(mta_envelope_add_rcpt(&e, "dave@example.com", NULL,
					      NULL, 0));
	params_init(&p, &e, r, 3, &m);
	assert_int_equal(build(&p, &d, NULL), 0);
	assert_int_equal(ngroups(d.pbody[1]), 4);
	const char *want[3] = {"bob@example.net", "dave@example.com",
			       "carol@example.org"};
	for (int i = 0; i < 3; i++) {
		char *g = group(d.pbody[1], i + 1);
		char fr[64];
		snprintf(fr, sizeof(fr), "rfc822; %s", want[i]);
		assert_field(g, "Final-Recipient", fr);
		assert_field(g, "Status", r[i].status);
		free(g);
		snprintf(fr, sizeof(fr), "<%s>: delivery failed", want[i]);
		assert_non_null(strstr(d.pbody[0], fr));
	}
	assert_non_null(strstr(d.pbody[0], "no such user bob"));
	assert_non_null(strstr(d.pbody[0], "does not allow mx.evil.test"));
	assert_non_null(strstr(d.pbody[0], "DNSSEC validation of example.org"));
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* An original holding the would-be boundary gets another one. */
static void boundary_collision(void **st)
{
	(void)st;
	static const char orig[] = "Subject: x\r\n"
				   "X-A: --=_mtad_0ABCDEF.1\r\n"
				   "X-B: --=_mtad_0ABCDEF.1_1--\r\n\r\nbody\r\n";
	struct mta_envelope e;
	struct mem m = {orig, sizeof(orig) - 1, 0, 0, 0};
	struct mta_dsn_params p;
	struct parsed d;

	env_setup(&e, "alice@example.org");
	params_init(&p, &e, &TLS_FAIL, 1, &m);
	assert_int_equal(build(&p, &d, NULL), 0);
	assert_string_equal(d.boundary, "=_mtad_0ABCDEF.1_2");
	assert_int_equal(d.nparts, 3);
	assert_non_null(strstr(d.pbody[2], "X-B: --=_mtad_0ABCDEF.1_1--"));
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* A 5000-octet reply with no space is folded under 998 and capped. */
static void long_diagnostic(void **st)
{
	(void)st;
	static char diag[5001];
	struct mta_envelope e;
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_rcpt r = TLS_FAIL;
	char *g1, *v;

	memcpy(diag, "550 ", 4);
	memset(diag + 4, 'z', sizeof(diag) - 5);
	r.diagnostic = diag;
	env_setup(&e, "alice@example.org");
	params_init(&p, &e, &r, 1, NULL);
	assert_int_equal(build(&p, &d, NULL), 0); /* lines <= 998 */
	g1 = group(d.pbody[1], 1);
	v = field(g1, "Diagnostic-Code");
	assert_non_null(v);
	assert_true(strncmp(v, "smtp; 550 zzz", 13) == 0);
	assert_true(strlen(v) < 2100 && strlen(v) > 1900);
	free(v);
	free(g1);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* SMTPUTF8: a UTF-8 recipient is written as utf-8-addr-xtext (7-bit part
 * 2); an 8-bit original header makes part 3 8bit and says so. */
static void utf8(void **st)
{
	(void)st;
	static const char orig[] = "Subject: Gr\xc3\xbc\xc3\x9f" "e\r\n\r\nx\r\n";
	struct mta_envelope e;
	struct mem m = {orig, sizeof(orig) - 1, 0, 0, 0};
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_info info;
	struct mta_dsn_rcpt r = TLS_FAIL;
	char *g1;

	env_setup(&e, "j\xc3\xb6rg@example.org");
	e.smtputf8 = true;
	free(e.rcpts[0].addr);
	e.rcpts[0].addr = strdup("b\xc3\xb6" "b@example.net");
	params_init(&p, &e, &r, 1, &m);
	assert_int_equal(build(&p, &d, &info), 0);
	g1 = group(d.pbody[1], 1);
	assert_field(g1, "Final-Recipient", "utf-8; b\\x{F6}b@example.net");
	assert_7bit(d.pbody[0]);
	assert_7bit(d.pbody[1]);
	assert_field(d.phdr[2], "Content-Transfer-Encoding", "8bit");
	assert_field(d.top, "To", "<j\xc3\xb6rg@example.org>");
	assert_true(info.eightbit);
	assert_true(info.smtputf8);
	free(g1);
	parsed_free(&d);

	/* without SMTPUTF8 the To: stays ASCII */
	e.smtputf8 = false;
	m.next_off = 0;
	assert_int_equal(build(&p, &d, &info), 0);
	assert_7bit(d.top);
	assert_false(info.smtputf8);
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* Reader failures reach the caller; out is left as it was. */
static void reader_errors(void **st)
{
	(void)st;
	struct mta_envelope e;
	struct mem m = {ORIG, sizeof(ORIG) - 1, -EIO, 0, 0};
	struct mta_dsn_params p;
	struct mta_buf b = {0};

	env_setup(&e, "alice@example.org");
	assert_int_equal(mta_buf_append(&b, "keep", 4), 0);
	params_init(&p, &e, &TLS_FAIL, 1, &m);
	assert_int_equal(mta_dsn_build(&p, &b, NULL), -EIO);
	assert_int_equal(b.len, 4);

	m.fail_rc = 0;
	m.next_off = 0;
	m.short_at = 10; /* message shorter than announced */
	e.ret = MTA_RET_FULL;
	assert_int_equal(mta_dsn_build(&p, &b, NULL), MTA_ECORRUPT);
	assert_int_equal(b.len, 4);
	assert_memory_equal(b.data, "keep", 4);

	/* appended after existing content on success */
	m.short_at = 0;
	m.next_off = 0;
	assert_int_equal(mta_dsn_build(&p, &b, NULL), 0);
	assert_memory_equal(b.data, "keepFrom: ", 10);
	mta_buf_free(&b);
	mta_envelope_free(&e);
}

/* The header copy stops at max_headers_size, at a line end. */
static void headers_cap(void **st)
{
	(void)st;
	static char orig[200000];
	size_t n = 0;
	struct mta_envelope e;
	struct mta_dsn_params p;
	struct parsed d;
	struct mta_dsn_info info;

	while (n < 150000)
		n += (size_t)sprintf(orig + n, "X-H%06zu: value\r\n", n);
	n += (size_t)sprintf(orig + n, "\r\nbody\r\n");
	struct mem m = {orig, n, 0, 0, 0};
	env_setup(&e, "alice@example.org");
	params_init(&p, &e, &TLS_FAIL, 1, &m);
	p.max_headers_size = 4096;
	assert_int_equal(build(&p, &d, &info), 0);
	assert_true(info.truncated);
	assert_true(strlen(d.pbody[2]) <= 4096);
	assert_true(strlen(d.pbody[2]) > 4000);
	/* ends with a complete line */
	assert_string_equal(d.pbody[2] + strlen(d.pbody[2]) - 7, "value\r\n");
	assert_non_null(strstr(d.pbody[0], "cut short"));
	assert_true(m.next_off < n); /* stopped reading early */
	parsed_free(&d);
	mta_envelope_free(&e);
}

/* Fixed-seed random hostile values everywhere: every DSN parses, stays
 * CRLF-only with short lines, and keeps one Subject and three parts. */
static uint32_t rnd_state;

static uint32_t rnd(void)
{
	rnd_state = rnd_state * 1103515245u + 12345u;
	return rnd_state >> 8;
}

static void rnd_fill(char *b, size_t n, bool nul_ok)
{
	static const char pick[] = "\r\n\r\n  :-+=\\<>;\t\x01\x7f\xc3\xb6\xff"
				   "--=_mtad_S.1aZ09";
	for (size_t i = 0; i < n; i++) {
		char c = (char)(rnd() % 4 == 0 ? (int)(rnd() % 256)
					       : pick[rnd() % (sizeof(pick) - 1)]);
		if (!nul_ok && c == '\0')
			c = 'x';
		b[i] = c;
	}
	b[n] = '\0';
}

static void random_inputs(void **st)
{
	(void)st;
	static char orig[6000], diag[3000], envid[200], orcpt[200],
		addr[300], sender[300], host[100];
	rnd_state = 20231114u;
	print_message("seed %u\n", rnd_state);
	for (int it = 0; it < 300; it++) {
		struct mta_envelope e;
		struct mta_dsn_params p;
		struct parsed d;
		size_t n = rnd() % (sizeof(orig) - 1);
		struct mem m = {orig, n, 0, 0, 0};
		struct mta_dsn_rcpt r = {
			.index = 0,
			.action = (enum mta_dsn_action)(rnd() % 4),
			.status = (rnd() % 2) ? "5.7.5" : host,
			.diagnostic = diag,
			.remote_mta = (rnd() % 2) ? host : NULL,
			.last_attempt_us = NOW_US,
			.will_retry_until_us = NOW_US,
		};

		rnd_fill(orig, n, true);
		rnd_fill(diag, rnd() % (sizeof(diag) - 1), false);
		rnd_fill(envid, rnd() % (sizeof(envid) - 1), false);
		rnd_fill(orcpt, rnd() % (sizeof(orcpt) - 1), false);
		rnd_fill(addr, 1 + rnd() % (sizeof(addr) - 2), false);
		rnd_fill(sender, 1 + rnd() % (sizeof(sender) - 2), false);
		rnd_fill(host, rnd() % (sizeof(host) - 1), false);
		env_setup(&e, sender);
		e.smtputf8 = rnd() % 2;
		e.ret = (uint8_t)(rnd() % 3);
		assert_int_equal(mta_envelope_set_str(&e.envid, envid), 0);
		assert_int_equal(mta_envelope_set_str(&e.rcpts[0].orcpt, orcpt),
				 0);
		assert_int_equal(mta_envelope_set_str(&e.rcpts[0].addr, addr),
				 0);
		params_init(&p, &e, &r, 1, &m);
		p.max_headers_size = 1024 + rnd() % 4096;
		p.max_full_size = rnd() % 8000;
		assert_int_equal(build(&p, &d, NULL), 0);
		assert_int_equal(d.nparts, 3);
		assert_int_equal(count_fields(d.top, "Subject"), 1);
		assert_int_equal(count_fields(d.top, "To"), 1);
		assert_7bit(d.pbody[0]);
		assert_7bit(d.pbody[1]);
		assert_int_equal(ngroups(d.pbody[1]), 2);
		parsed_free(&d);
		mta_envelope_free(&e);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(structure_failed),
		cmocka_unit_test(fields_local_failure),
		cmocka_unit_test(fields_remote_reply),
		cmocka_unit_test(envid_and_orcpt),
		cmocka_unit_test(delayed_and_mixed),
		cmocka_unit_test(notify_rules),
		cmocka_unit_test(refuses_bad_params),
		cmocka_unit_test(ret_hdrs),
		cmocka_unit_test(ret_full),
		cmocka_unit_test(ret_full_over_cap_and_delay),
		cmocka_unit_test(hostile_original),
		cmocka_unit_test(injection),
		cmocka_unit_test(several_recipients),
		cmocka_unit_test(boundary_collision),
		cmocka_unit_test(long_diagnostic),
		cmocka_unit_test(utf8),
		cmocka_unit_test(reader_errors),
		cmocka_unit_test(headers_cap),
		cmocka_unit_test(random_inputs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
