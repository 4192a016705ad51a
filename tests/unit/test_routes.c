/*
 * test_routes.c - the routing table (routes.c) and the shaping table and
 * per-site state (shaping.c): parsing, first-match lookup, errors with
 * file and line, and the adaptive rate (halve on throttling, recover by a
 * quarter of the ceiling per period).  Table-driven; no I/O, the clock is
 * passed in.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "routes.h"
#include "shaping.h"

static struct mta_routes *parse_ok(const char *text)
{
	struct mta_routes *r = NULL;
	char err[256] = "";
	int rc = mta_routes_parse(text, strlen(text), "routes", &r, err,
				  sizeof(err));
	if (rc != 0)
		fail_msg("parse failed (%d): %s", rc, err);
	return r;
}

static const char table[] =
	"# internal mail to the internal server, over TLS at least\n"
	"internal.example relay [10.1.2.3]:25 level=encrypt\n"
	"\n"
	"partner.example relay mx.partner.example level=dane-only\n"
	"* from .bulk.example relay smarthost.example:587 auth=default "
	"bind=192.0.2.7 helo=bulk-out.example\n"
	".blocked.example refuse \"5.7.26 mail to this site is not "
	"allowed\"\n"
	"parked.example hold\n"
	"example.org mx fallback=[192.0.2.9]:2525 fallback_after=2\n"
	"* mx\n";

static void test_parse_and_match(void **state)
{
	struct mta_routes *r = parse_ok(table);
	const struct mta_routes_rule *m;

	(void)state;
	assert_int_equal(mta_routes_count(r), 7);

	m = mta_routes_match(r, "internal.example", "app.example");
	assert_non_null(m);
	assert_int_equal(m->line, 2);
	assert_int_equal(m->action, MTA_ROUTES_RELAY);
	assert_string_equal(m->host, "[10.1.2.3]");
	assert_int_equal(m->port, 25);
	assert_true(m->has_level);
	assert_int_equal(m->level, MTA_TLS_ENCRYPT);

	m = mta_routes_match(r, "PARTNER.example", "");
	assert_non_null(m);
	assert_int_equal(m->line, 4);
	assert_int_equal(m->level, MTA_TLS_DANE_ONLY);
	assert_int_equal(m->port, 0); /* delivery.port */

	/* sender-dependent: only for senders under .bulk.example */
	m = mta_routes_match(r, "gmail.com", "news.bulk.example");
	assert_non_null(m);
	assert_int_equal(m->line, 5);
	assert_string_equal(m->host, "smarthost.example");
	assert_int_equal(m->port, 587);
	assert_string_equal(m->auth, "default");
	assert_true(m->has_bind4);
	assert_false(m->has_bind6);
	assert_string_equal(m->helo, "bulk-out.example");
	m = mta_routes_match(r, "gmail.com", "bulk.example"); /* not a sub */
	assert_non_null(m);
	assert_int_equal(m->line, 9);
	assert_int_equal(m->action, MTA_ROUTES_MX);

	m = mta_routes_match(r, "a.blocked.example", "x.example");
	assert_non_null(m);
	assert_int_equal(m->action, MTA_ROUTES_REFUSE);
	assert_string_equal(m->status, "5.7.26");
	assert_non_null(strstr(m->text, "not allowed"));
	/* ".suffix" does not match the domain itself */
	m = mta_routes_match(r, "blocked.example", "x.example");
	assert_int_equal(m->action, MTA_ROUTES_MX);

	m = mta_routes_match(r, "parked.example", "x.example");
	assert_int_equal(m->action, MTA_ROUTES_HOLD);

	m = mta_routes_match(r, "example.org", "x.example");
	assert_int_equal(m->line, 8);
	assert_string_equal(m->fb_host, "[192.0.2.9]");
	assert_int_equal(m->fb_port, 2525);
	assert_int_equal(m->fb_attempts, 2);
	mta_routes_free(r);

	/* no catch-all: no match means plain MX (NULL) */
	r = parse_ok("a.example hold\n");
	assert_null(mta_routes_match(r, "b.example", "x.example"));
	mta_routes_free(r);
}

static void test_patterns(void **state)
{
	(void)state;
	assert_true(mta_routes_pattern_match("*", "anything.example"));
	assert_true(mta_routes_pattern_match("*", ""));
	assert_true(mta_routes_pattern_match("Example.COM", "example.com"));
	assert_false(mta_routes_pattern_match("example.com", "xexample.com"));
	assert_true(mta_routes_pattern_match(".example.com", "a.example.com"));
	assert_true(mta_routes_pattern_match(".example.com", "a.b.example.com"));
	assert_false(mta_routes_pattern_match(".example.com", "example.com"));
	assert_false(mta_routes_pattern_match(".example.com", "aexample.com"));
	assert_false(mta_routes_pattern_match("example.com", ""));
}

struct bad {
	const char *text;
	const char *err; /* expected prefix "routes:<line>:" and a part */
	unsigned line;
};

static const struct bad bads[] = {
	{"a.example teleport x\n", "", 1},
	{"a.example relay\n", "", 1},
	{"\na.example relay h.example level=sometimes\n", "", 2},
	{"a.example refuse no-quotes\n", "", 1},
	{"a.example mx bind=not-an-address\n", "", 1},
	{"a.example from\n", "", 1},
	{"a.example relay h.example:99999\n", "", 1},
};

static void test_errors_name_line(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		struct mta_routes *r = NULL;
		char err[256] = "", pre[32];
		int rc = mta_routes_parse(bads[i].text, strlen(bads[i].text),
					  "routes", &r, err, sizeof(err));
		if (rc != MTA_ECONFIG)
			fail_msg("case %zu: rc %d, want MTA_ECONFIG (%s)", i,
				 rc, bads[i].text);
		assert_null(r);
		snprintf(pre, sizeof(pre), "routes:%u:", bads[i].line);
		if (strncmp(err, pre, strlen(pre)) != 0)
			fail_msg("case %zu: error \"%s\" does not start with "
				 "\"%s\"",
				 i, err, pre);
	}
}

/* ---- shaping ---------------------------------------------------------- */

#define S 1000000LL /* microseconds */

static void test_shaping_parse_find(void **state)
{
	static const char t[] =
		".google.com connections=2 messages_per_connection=50 "
		"rate=60/m\n"
		"outlook.com rate=2/s backoff=off recover=5m\n"
		"* connections=20\n";
	struct mta_shaping *sh = NULL;
	char err[256] = "";
	const char *hosts[] = {"gmail-smtp-in.l.google.com",
			       "alt1.gmail-smtp-in.l.google.com"};

	(void)state;
	assert_int_equal(mta_shaping_parse(t, strlen(t), "shaping", &sh, err,
					   sizeof(err)),
			 0);
	assert_int_equal(mta_shaping_count(sh), 3);
	/* a Google-hosted domain lands in the Google site by its MX names */
	assert_int_equal(mta_shaping_find(sh, "customer.example", hosts, 2), 0);
	assert_int_equal(mta_shaping_find(sh, "outlook.com", NULL, 0), 1);
	assert_int_equal(mta_shaping_find(sh, "other.example", NULL, 0), 2);
	const struct mta_shaping_rule *g = mta_shaping_get(sh, 0);
	assert_int_equal(g->connections, 2);
	assert_int_equal(g->msgs_per_conn, 50);
	assert_true(g->rate > 59.9 && g->rate < 60.1);
	assert_true(g->backoff);
	const struct mta_shaping_rule *o = mta_shaping_get(sh, 1);
	assert_true(o->rate > 119.9 && o->rate < 120.1); /* 2/s */
	assert_false(o->backoff);
	assert_int_equal(o->recover, 300);
	mta_shaping_free(sh);

	assert_int_equal(mta_shaping_parse("x rate=fast\n", 12, "shaping", &sh,
					   err, sizeof(err)),
			 MTA_ECONFIG);
	assert_non_null(strstr(err, "shaping:1:"));
}

static void test_shaping_rate_halves_and_recovers(void **state)
{
	static const char t[] = "site.example rate=60/m recover=60s\n";
	struct mta_shaping *sh = NULL;
	struct mta_shaping_site st;
	char err[256];
	int64_t now = 1000 * S;

	(void)state;
	assert_int_equal(mta_shaping_parse(t, strlen(t), "shaping", &sh, err,
					   sizeof(err)),
			 0);
	mta_shaping_site_init(&st, mta_shaping_get(sh, 0), now);
	/* 60/min: one now, the next about 1 s later */
	assert_int_equal(mta_shaping_take(&st, now), 0);
	int64_t wait = mta_shaping_take(&st, now);
	assert_true(wait > 0 && wait <= 1 * S);

	/* a 421 or 4.7.x halves the rate, once per 10 s */
	assert_true(mta_shaping_is_throttle(421, "4.7.0"));
	assert_true(mta_shaping_is_throttle(450, "4.7.28"));
	assert_false(mta_shaping_is_throttle(451, "4.3.0"));
	assert_false(mta_shaping_is_throttle(550, "5.7.1"));
	assert_true(mta_shaping_throttled(&st, now));
	assert_true(st.rate > 29.9 && st.rate < 30.1);
	assert_false(mta_shaping_throttled(&st, now + 5 * S));
	assert_true(st.rate > 29.9 && st.rate < 30.1);

	/* recovery: + a quarter of the ceiling per quiet period */
	assert_false(mta_shaping_tick(&st, now + 30 * S));
	assert_true(mta_shaping_tick(&st, now + 61 * S));
	assert_true(st.rate > 44.9 && st.rate < 45.1);
	assert_true(mta_shaping_tick(&st, now + 122 * S));
	assert_true(st.rate > 59.9 && st.rate < 60.1);
	assert_false(mta_shaping_tick(&st, now + 183 * S)); /* at ceiling */
	mta_shaping_free(sh);
}

/* Reload: a throttled site keeps its rate (capped by a lower new ceiling),
 * its counters and its throttle time; an unthrottled one takes the new
 * rate. */
static void test_shaping_carry_over(void **state)
{
	static const char t1[] = "a.example rate=60/m\nb.example rate=60/m\n";
	static const char t2[] = "b.example rate=20/m\na.example rate=100/m\n";
	struct mta_shaping *s1 = NULL, *s2 = NULL;
	struct mta_shaping_site o[2], n[2];
	char err[256];
	int64_t now = 1000 * S;

	(void)state;
	assert_int_equal(mta_shaping_parse(t1, strlen(t1), "s1", &s1, err,
					   sizeof(err)), 0);
	assert_int_equal(mta_shaping_parse(t2, strlen(t2), "s2", &s2, err,
					   sizeof(err)), 0);
	for (int i = 0; i < 2; i++)
		mta_shaping_site_init(&o[i], mta_shaping_get(s1, (size_t)i), now);
	assert_int_equal(mta_shaping_take(&o[0], now), 0);
	assert_true(mta_shaping_throttled(&o[0], now)); /* a: 30/m */
	assert_true(mta_shaping_throttled(&o[1], now)); /* b: 30/m */
	/* new table: b first, at 20/m; a at 100/m */
	mta_shaping_site_init(&n[0], mta_shaping_get(s2, 0), now);
	mta_shaping_site_init(&n[1], mta_shaping_get(s2, 1), now);
	mta_shaping_site_carry(&n[1], &o[0]);
	mta_shaping_site_carry(&n[0], &o[1]);
	assert_true(n[1].rate > 29.9 && n[1].rate < 30.1); /* still halved */
	assert_true(n[1].ceiling > 99.9 && n[1].ceiling < 100.1);
	assert_int_equal(n[1].sent, 1);
	assert_int_equal(n[1].throttles, 1);
	assert_true(n[0].rate > 19.9 && n[0].rate < 20.1); /* capped */
	/* recovery goes on from the carried rate, toward the new ceiling */
	assert_true(mta_shaping_tick(&n[1], now + 61 * S));
	assert_true(n[1].rate > 54.9 && n[1].rate < 55.1);
	/* an unthrottled site takes the new rate */
	struct mta_shaping_site u;
	mta_shaping_site_init(&o[0], mta_shaping_get(s1, 0), now);
	mta_shaping_site_init(&u, mta_shaping_get(s2, 1), now);
	mta_shaping_site_carry(&u, &o[0]);
	assert_true(u.rate > 99.9 && u.rate < 100.1);
	mta_shaping_free(s1);
	mta_shaping_free(s2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_and_match),
		cmocka_unit_test(test_patterns),
		cmocka_unit_test(test_errors_name_line),
		cmocka_unit_test(test_shaping_parse_find),
		cmocka_unit_test(test_shaping_rate_halves_and_recovers),
		cmocka_unit_test(test_shaping_carry_over),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
