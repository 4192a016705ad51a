/*
 * test_smtp_syntax.c - table-driven tests of the SMTP address and
 * parameter syntax (smtp_syntax.c).  The session-level behaviour (which
 * reply a bad address gets) stays in test_smtp_server.c; these tables pin
 * the parsers themselves, including the limits of RFC 5321 4.5.3.1.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "envelope.h"
#include "smtp_syntax.h"

static char *rep(char *buf, char c, size_t n)
{
	memset(buf, c, n);
	buf[n] = '\0';
	return buf;
}

static void test_mailbox(void **state)
{
	static const struct {
		const char *m;
		bool utf8, ok;
	} t[] = {
		{"a@x.test", false, true},
		{"a.b+c@x-y.test", false, true},
		{"\"a b\"@x.test", false, true},
		{"\"a\\\"b\"@x.test", false, true},
		{"\"a@b\"@x.test", false, true}, /* last '@' outside quotes */
		{"a@[192.0.2.1]", false, true},
		{"a@[IPv6:2001:db8::1]", false, true},
		{"a@[192.0.2.300]", false, false},
		{"a@[tag:x]", false, false},
		{"a", false, false},
		{"@x.test", false, false},
		{"a@", false, false},
		{".a@x.test", false, false},
		{"a.@x.test", false, false},
		{"a..b@x.test", false, false},
		{"a@-x.test", false, false},
		{"a@x-.test", false, false},
		{"a@x..test", false, false},
		{"a b@x.test", false, false},
		{"\xc3\xa9@x.test", false, false},
		{"\xc3\xa9@x.test", true, true},
		{"a@\xc3\xa9.test", true, true},
	};
	(void)state;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (mta_smtp_mailbox_ok(t[i].m, strlen(t[i].m), t[i].utf8) !=
		    t[i].ok)
			fail_msg("mailbox %zu \"%s\": want %d", i, t[i].m,
				 t[i].ok);
}

/* LIM-04: local part 64, domain 255 (labels 63). */
static void test_limits(void **state)
{
	char l[80], lab[70], m[400];
	(void)state;

	snprintf(m, sizeof(m), "%s@x.test", rep(l, 'a', 64));
	assert_true(mta_smtp_mailbox_ok(m, strlen(m), false));
	snprintf(m, sizeof(m), "%s@x.test", rep(l, 'a', 65));
	assert_false(mta_smtp_mailbox_ok(m, strlen(m), false));
	rep(lab, 'b', 63);
	snprintf(m, sizeof(m), "a@%s.%s.%s.%s", lab, lab, lab, rep(l, 'c', 63));
	assert_int_equal(strlen(m) - 2, 255);
	assert_true(mta_smtp_mailbox_ok(m, strlen(m), false));
	snprintf(m, sizeof(m), "a@%s.%s.%s.%s.b", lab, lab, lab,
		 rep(l, 'c', 62));
	assert_int_equal(strlen(m) - 2, 256);
	assert_false(mta_smtp_mailbox_ok(m, strlen(m), false));
	snprintf(m, sizeof(m), "a@%sb.test", lab);
	assert_false(mta_smtp_mailbox_ok(m, strlen(m), false));
}

static void test_path(void **state)
{
	char buf[700], *in, *rest;
	size_t n;
	(void)state;

	strcpy(buf, "<a@x.test> SIZE=10");
	assert_int_equal(mta_smtp_path_split(buf, &in, &n, &rest), 0);
	assert_int_equal(n, 8);
	assert_memory_equal(in, "a@x.test", 8);
	assert_string_equal(rest, " SIZE=10");
	strcpy(buf, "<\"a>b\"@x.test>");
	assert_int_equal(mta_smtp_path_split(buf, &in, &n, &rest), 0);
	assert_int_equal(n, 12);
	strcpy(buf, "<>");
	assert_int_equal(mta_smtp_path_split(buf, &in, &n, &rest), 0);
	assert_int_equal(n, 0);
	strcpy(buf, "a@x.test");
	assert_int_equal(mta_smtp_path_split(buf, &in, &n, &rest), -1);
	strcpy(buf, "<a@x.test>x");
	assert_int_equal(mta_smtp_path_split(buf, &in, &n, &rest), -1);
	strcpy(buf, "<a@x.test");
	assert_int_equal(mta_smtp_path_split(buf, &in, &n, &rest), -1);
	/* 512 octets with the brackets: the limit */
	buf[0] = '<';
	memset(buf + 1, 'a', 510);
	buf[511] = '>';
	buf[512] = '\0';
	assert_int_equal(mta_smtp_path_split(buf, &in, &n, &rest), 0);
	buf[511] = 'a';
	buf[512] = '>';
	buf[513] = '\0';
	assert_int_equal(mta_smtp_path_split(buf, &in, &n, &rest), -1);

	char r1[] = "@a.test,@b.test:u@x.test", *m = r1;
	n = strlen(m);
	assert_int_equal(mta_smtp_strip_route(&m, &n), 0);
	assert_int_equal(n, 8);
	assert_memory_equal(m, "u@x.test", 8);
	char r2[] = "@a..test:u@x.test";
	m = r2;
	n = strlen(m);
	assert_int_equal(mta_smtp_strip_route(&m, &n), -1);
	char r3[] = "u@x.test";
	m = r3;
	n = strlen(m);
	assert_int_equal(mta_smtp_strip_route(&m, &n), 0);
	assert_ptr_equal(m, r3);
}

static void test_params(void **state)
{
	char buf[128], *p = buf, *kw, *val;
	(void)state;

	strcpy(buf, " SIZE=100 BODY=8BITMIME SMTPUTF8");
	assert_int_equal(mta_smtp_next_param(&p, &kw, &val), 1);
	assert_string_equal(kw, "SIZE");
	assert_string_equal(val, "100");
	assert_int_equal(mta_smtp_next_param(&p, &kw, &val), 1);
	assert_string_equal(kw, "BODY");
	assert_string_equal(val, "8BITMIME");
	assert_int_equal(mta_smtp_next_param(&p, &kw, &val), 1);
	assert_string_equal(kw, "SMTPUTF8");
	assert_null(val);
	assert_int_equal(mta_smtp_next_param(&p, &kw, &val), 0);
	static const char *const bad[] = {"=x", "SIZE=", "SIZE=a=b", "S!ZE",
					  "SIZE=\x7f"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		strcpy(buf, bad[i]);
		p = buf;
		assert_int_equal(mta_smtp_next_param(&p, &kw, &val), -1);
	}
}

static void test_dsn_params(void **state)
{
	unsigned bits;
	(void)state;

	assert_true(mta_smtp_xtext_ok("abc+2B", 6));
	assert_false(mta_smtp_xtext_ok("abc+2b", 6)); /* HEXUP only */
	assert_false(mta_smtp_xtext_ok("a=b", 3));
	assert_false(mta_smtp_xtext_ok("a+2", 3));
	assert_false(mta_smtp_xtext_ok("a b", 3));
	assert_true(mta_smtp_orcpt_ok("rfc822;a@x.test"));
	assert_false(mta_smtp_orcpt_ok("rfc822;"));
	assert_false(mta_smtp_orcpt_ok(";a@x.test"));
	assert_false(mta_smtp_orcpt_ok("rfc822a@x.test"));
	assert_int_equal(mta_smtp_notify_parse("SUCCESS,failure", &bits), 0);
	assert_int_equal(bits, MTA_NOTIFY_SUCCESS | MTA_NOTIFY_FAILURE);
	assert_int_equal(mta_smtp_notify_parse("NEVER", &bits), 0);
	assert_int_equal(bits, MTA_NOTIFY_NEVER);
	assert_int_equal(mta_smtp_notify_parse("NEVER,DELAY", &bits), -1);
	assert_int_equal(mta_smtp_notify_parse("DELAY,DELAY", &bits), -1);
	assert_int_equal(mta_smtp_notify_parse("SOMETIMES", &bits), -1);
	assert_int_equal(mta_smtp_notify_parse("", &bits), -1);
}

static void test_utf8(void **state)
{
	(void)state;
	assert_true(mta_smtp_utf8_ok((const uint8_t *)"a\xc3\xa9", 3));
	assert_true(mta_smtp_utf8_ok((const uint8_t *)"\xf0\x9f\x98\x80", 4));
	assert_false(mta_smtp_utf8_ok((const uint8_t *)"\xc0\xaf", 2));
	assert_false(mta_smtp_utf8_ok((const uint8_t *)"\xed\xa0\x80", 3));
	assert_false(mta_smtp_utf8_ok((const uint8_t *)"\xf4\x90\x80\x80", 4));
	assert_false(mta_smtp_utf8_ok((const uint8_t *)"\xc3", 1));
	assert_true(mta_smtp_has_8bit("a\x80", 2));
	assert_false(mta_smtp_has_8bit("abc", 3));
}

int main(void)
{
	const struct CMUnitTest t[] = {
		cmocka_unit_test(test_mailbox),	   cmocka_unit_test(test_limits),
		cmocka_unit_test(test_path),	   cmocka_unit_test(test_params),
		cmocka_unit_test(test_dsn_params), cmocka_unit_test(test_utf8),
	};
	return cmocka_run_group_tests_name("smtp_syntax", t, NULL, NULL);
}
