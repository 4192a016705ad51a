/* Unit tests of the control protocol codec (libmta/control.c): line
 * splitting, request parsing and formatting (round trip with %XX),
 * hello, replies, limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "control.h"
#include "err.h"

static void lines_split_across_feeds(void **st)
{
	struct mta_ctl_lines l = {0};
	const char *line = NULL;
	size_t used;
	const char *in = "HOLD 01ABC\r\nSTA";
	(void)st;

	assert_int_equal(mta_ctl_lines_feed(&l, (const uint8_t *)in,
					    strlen(in), &used, &line), 1);
	assert_int_equal(used, 12);
	assert_string_equal(line, "HOLD 01ABC");
	assert_int_equal(mta_ctl_lines_feed(&l, (const uint8_t *)in + used,
					    strlen(in) - used, &used, &line),
			 0);
	assert_int_equal(used, 3);
	assert_int_equal(mta_ctl_lines_feed(&l, (const uint8_t *)"TS\n", 3,
					    &used, &line), 1);
	assert_string_equal(line, "STATS");
}

static void lines_too_long(void **st)
{
	struct mta_ctl_lines l = {0};
	static uint8_t big[MTA_CTL_LINE_MAX + 10];
	const char *line;
	size_t used;
	(void)st;

	memset(big, 'A', sizeof(big));
	assert_int_equal(mta_ctl_lines_feed(&l, big, sizeof(big), &used,
					    &line), MTA_ETOOBIG);
	/* exactly the limit is fine */
	memset(&l, 0, sizeof(l));
	big[MTA_CTL_LINE_MAX] = '\n';
	assert_int_equal(mta_ctl_lines_feed(&l, big, MTA_CTL_LINE_MAX + 1,
					    &used, &line), 1);
	assert_int_equal(strlen(line), MTA_CTL_LINE_MAX);
}

static void parse_requests(void **st)
{
	static const struct {
		const char *line;
		int rc;
		enum mta_ctl_verb verb;
		const char *arg;
	} t[] = {
		{"HOLD 0123456789ABCDEF", 0, MTA_CTL_HOLD, "0123456789ABCDEF"},
		{"POLICY-PURGE example.net", 0, MTA_CTL_POLICY_PURGE,
		 "example.net"},
		{"POLICY-REFRESH a%20b%25", 0, MTA_CTL_POLICY_REFRESH, "a b%"},
		{"STATS", 0, MTA_CTL_STATS, NULL},
		{"ACTIVE", 0, MTA_CTL_ACTIVE, NULL},
		{"QUIT", 0, MTA_CTL_QUIT, NULL},
		{"HOLD", MTA_EPROTO, 0, NULL},		/* missing qid */
		{"HOLD a b", MTA_EPROTO, 0, NULL},	/* one too many */
		{"HOLD  a", MTA_EPROTO, 0, NULL},	/* empty token */
		{"HOLD a ", MTA_EPROTO, 0, NULL},	/* trailing space */
		{"hold a", MTA_EPROTO, 0, NULL},	/* verbs are upper case */
		{"STATS x", MTA_EPROTO, 0, NULL},
		{"HOLD a%0", MTA_EPROTO, 0, NULL},	/* short escape */
		{"HOLD a%zz", MTA_EPROTO, 0, NULL},
		{"HOLD a%00", MTA_EPROTO, 0, NULL},	/* no NUL */
		{"HOLD a\tb", MTA_EPROTO, 0, NULL},	/* control byte */
		{"EXPLAIN x", 0, MTA_CTL_EXPLAIN, "x"},
		{"EXPLAIN", MTA_EPROTO, 0, NULL},	/* domain missing */
		{"EXPLAIN x CONNECT y", MTA_EPROTO, 0, NULL},
		{"NOSUCHVERB x", MTA_EPROTO, 0, NULL},
		{"", MTA_EPROTO, 0, NULL},
	};
	(void)st;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct mta_ctl_req r;
		int rc = mta_ctl_parse_req(t[i].line, &r);
		if (rc != t[i].rc)
			fail_msg("\"%s\": %d, want %d", t[i].line, rc, t[i].rc);
		if (rc != 0)
			continue;
		assert_int_equal(r.verb, t[i].verb);
		if (t[i].arg) {
			assert_int_equal(r.nargs, 1);
			assert_string_equal(r.args[0], t[i].arg);
		} else {
			assert_int_equal(r.nargs, 0);
		}
	}
}

static void format_round_trip(void **st)
{
	const char *args[] = {"x y%\x01\xc3\xa9z"};
	char out[MTA_CTL_LINE_MAX + 2];
	struct mta_ctl_req r;
	(void)st;

	assert_int_equal(mta_ctl_format_req(out, sizeof(out), MTA_CTL_BOUNCE,
					    args, 1), 0);
	assert_string_equal(out, "BOUNCE x%20y%25%01%C3%A9z\n");
	out[strlen(out) - 1] = '\0';
	assert_int_equal(mta_ctl_parse_req(out, &r), 0);
	assert_int_equal(r.verb, MTA_CTL_BOUNCE);
	assert_string_equal(r.args[0], args[0]);
	/* wrong arity, empty argument, too small a buffer */
	assert_int_equal(mta_ctl_format_req(out, sizeof(out), MTA_CTL_STATS,
					    args, 1), MTA_EPROTO);
	const char *empty[] = {""};
	assert_int_equal(mta_ctl_format_req(out, sizeof(out), MTA_CTL_HOLD,
					    empty, 1), MTA_EPROTO);
	assert_int_equal(mta_ctl_format_req(out, 8, MTA_CTL_HOLD, args, 1),
			 MTA_ETOOBIG);
	assert_true(mta_ctl_verb_changes(MTA_CTL_DELETE));
	assert_false(mta_ctl_verb_changes(MTA_CTL_ACTIVE));
	assert_string_equal(mta_ctl_verb_name(MTA_CTL_POLICY_PURGE),
			    "POLICY-PURGE");
}

static void hello_and_replies(void **st)
{
	struct mta_ctl_reply r;
	unsigned v = 0;
	(void)st;

	assert_int_equal(mta_ctl_parse_hello("MTACTL 1", &v), 0);
	assert_int_equal(v, 1);
	assert_int_equal(mta_ctl_parse_hello("MTACTL 12", &v), 0);
	assert_int_equal(v, 12);
	assert_int_equal(mta_ctl_parse_hello("MTACTL 0", &v), MTA_EPROTO);
	assert_int_equal(mta_ctl_parse_hello("MTACTL 1 x", &v), MTA_EPROTO);
	assert_int_equal(mta_ctl_parse_hello("HELLO 1", &v), MTA_EPROTO);

	assert_int_equal(mta_ctl_parse_reply("* active 3", &r), 0);
	assert_int_equal(r.kind, MTA_CTL_DATA);
	assert_string_equal(r.text, "active 3");
	assert_int_equal(mta_ctl_parse_reply("OK", &r), 0);
	assert_int_equal(r.kind, MTA_CTL_OK);
	assert_string_equal(r.text, "");
	assert_int_equal(mta_ctl_parse_reply("OK held", &r), 0);
	assert_string_equal(r.text, "held");
	assert_int_equal(mta_ctl_parse_reply("ERR notfound no such message",
					     &r), 0);
	assert_int_equal(r.kind, MTA_CTL_ERR);
	assert_int_equal(r.code_len, 8);
	assert_memory_equal(r.code, "notfound", 8);
	assert_string_equal(r.text, "no such message");
	assert_int_equal(mta_ctl_parse_reply("ERR Bad x", &r), MTA_EPROTO);
	assert_int_equal(mta_ctl_parse_reply("ERR ", &r), MTA_EPROTO);
	assert_int_equal(mta_ctl_parse_reply("OKAY", &r), MTA_EPROTO);
	assert_int_equal(mta_ctl_parse_reply("", &r), MTA_EPROTO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(lines_split_across_feeds),
		cmocka_unit_test(lines_too_long),
		cmocka_unit_test(parse_requests),
		cmocka_unit_test(format_round_trip),
		cmocka_unit_test(hello_and_replies),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
