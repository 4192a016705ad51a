/* Unit tests of the logfmt writer (libmta/log.c): one line per event,
 * hostile values cannot forge keys or lines, truncation is marked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

static char out[2 * MTA_LOG_LINE_MAX];

/* Runs fn with the log pointed at a pipe; returns what was written. */
static const char *capture(void (*fn)(void))
{
	int p[2];
	ssize_t n;

	assert_int_equal(pipe(p), 0);
	mta_log_set_fd(p[1]);
	fn();
	mta_log_set_fd(2);
	close(p[1]);
	n = read(p[0], out, sizeof(out) - 1);
	close(p[0]);
	out[n > 0 ? n : 0] = '\0';
	return out;
}

static void emit_plain(void)
{
	struct mta_logline l;
	mta_log_begin(&l, MTA_LOG_INFO, "accept");
	mta_log_str(&l, "qid", "0ABC");
	mta_log_int(&l, "size", 1234);
	mta_log_end(&l);
}

static void plain_pairs(void **st)
{
	(void)st;
	const char *s = capture(emit_plain);
	assert_non_null(strstr(s, " level=info event=accept qid=0ABC size=1234\n"));
	assert_true(strncmp(s, "ts=", 3) == 0);
	assert_int_equal(strchr(s, '\n') - s + 1, (long)strlen(s));
}

static void emit_hostile(void)
{
	struct mta_logline l;
	mta_log_begin(&l, MTA_LOG_INFO, "reject");
	mta_log_str(&l, "text", "x\r\nts=forged event=accept \"q\" \\ \x01");
	mta_log_str(&l, "empty", "");
	mta_log_end(&l);
}

static void hostile_values_quoted(void **st)
{
	(void)st;
	const char *s = capture(emit_hostile);
	assert_non_null(strstr(
		s, " text=\"x\\r\\nts=forged event=accept \\\"q\\\" \\\\ \\x01\""));
	assert_non_null(strstr(s, " empty=\"\"\n"));
	/* exactly one line */
	assert_int_equal(strchr(s, '\n') - s + 1, (long)strlen(s));
}

static void emit_long(void)
{
	static char big[3 * MTA_LOG_LINE_MAX];
	struct mta_logline l;
	memset(big, 'a', sizeof(big) - 1);
	mta_log_begin(&l, MTA_LOG_WARN, "big");
	mta_log_str(&l, "v", big);
	mta_log_end(&l);
}

static void long_line_truncated(void **st)
{
	(void)st;
	const char *s = capture(emit_long);
	size_t n = strlen(s);
	assert_true(n <= MTA_LOG_LINE_MAX);
	assert_non_null(strstr(s, " truncated=1\n"));
}

static void emit_debug(void)
{
	struct mta_logline l;
	mta_log_begin(&l, MTA_LOG_DEBUG, "noise");
	mta_log_end(&l);
}

static void level_filter(void **st)
{
	enum mta_log_level lv;
	(void)st;
	assert_string_equal(capture(emit_debug), "");
	assert_int_equal(mta_log_parse_level("debug", &lv), 0);
	mta_log_set_level(lv);
	assert_non_null(strstr(capture(emit_debug), "event=noise"));
	mta_log_set_level(MTA_LOG_INFO);
	assert_int_not_equal(mta_log_parse_level("loud", &lv), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(plain_pairs),
		cmocka_unit_test(hostile_values_quoted),
		cmocka_unit_test(long_line_truncated),
		cmocka_unit_test(level_filter),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
