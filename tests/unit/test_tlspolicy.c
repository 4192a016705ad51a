/* Unit tests of the TLS levels and the local policy table
 * (libmta/tlspolicy.c): the file format, exact error texts, lookup order
 * (exact, then the closest ".parent"), case and trailing dots, limits,
 * and the loader.  DANE-113 (a table entry overrides DANE) is decided by
 * the caller; here: the table returns the entry's level. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "err.h"
/* the module itself: its static parse_table() and the table's size */
#include "../../libmta/tlspolicy.c"

#include <errno.h>

static size_t table_count(const struct mta_tlspolicy *p)
{
	return p ? p->n : 0;
}

static int test_setup(void **state)
{
	(void)state;
	alarm(60);
	return 0;
}

static struct mta_tlspolicy *ok(const char *text)
{
	struct mta_tlspolicy *p = NULL;
	char err[256] = "";
	int rc = parse_table(text, strlen(text), "etc/tls-policy", &p,
				     err, sizeof(err));

	if (rc != 0)
		print_message("unexpected error: %s\n", err);
	assert_int_equal(rc, 0);
	assert_non_null(p);
	return p;
}

static void bad(const char *text, size_t len, const char *want)
{
	struct mta_tlspolicy *p = (struct mta_tlspolicy *)0x1;
	char err[256] = "";
	int rc = parse_table(text, len, "etc/tls-policy", &p, err,
				     sizeof(err));

	assert_int_equal(rc, MTA_ECONFIG);
	assert_ptr_equal(p, (struct mta_tlspolicy *)0x1); /* untouched */
	assert_string_equal(err, want);
}

#define BAD(text, want) bad(text, strlen(text), want)

static void levels_parse_and_name(void **state)
{
	static const char *const names[] = {"none", "may", "encrypt", "dane",
					    "dane-only", "verify"};

	(void)state;
	for (int i = 0; i < MTA_TLS_LEVEL_COUNT; i++) {
		assert_int_equal(mta_tls_level_parse(names[i]), i);
		assert_string_equal(mta_tls_level_name((enum mta_tls_level)i),
				    names[i]);
	}
	assert_int_equal(mta_tls_level_parse("dane-only"), MTA_TLS_DANE_ONLY);
	assert_int_equal(mta_tls_level_parse("DANE"), -EINVAL);
	assert_int_equal(mta_tls_level_parse("secure"), -EINVAL);
	assert_int_equal(mta_tls_level_parse(""), -EINVAL);
	assert_int_equal(mta_tls_level_parse("dane-"), -EINVAL);
	assert_int_equal(mta_tls_level_parse(NULL), -EINVAL);
	assert_string_equal(mta_tls_level_name((enum mta_tls_level)99), "?");
}

static const char example[] =
	"# a comment\n"
	"\n"
	"example.com             dane-only\n"
	"  .example.org\tverify   # trailing comment\n"
	"example.org verify\r\n"
	"legacy.example.net      none\n"
	"Mail.Example.NET.       encrypt\n"
	".sub.example.org        may\n"
	"\t\n"
	"last.example dane";	/* no final newline */

static void parse_valid_file(void **state)
{
	struct mta_tlspolicy *p = ok(example);
	const char *m = NULL;

	(void)state;
	assert_int_equal(table_count(p), 7);
	assert_int_equal(mta_tlspolicy_lookup(p, "example.com", &m),
			 MTA_TLS_DANE_ONLY);
	assert_string_equal(m, "example.com");
	assert_int_equal(mta_tlspolicy_lookup(p, "legacy.example.net", NULL),
			 MTA_TLS_NONE);
	assert_int_equal(mta_tlspolicy_lookup(p, "last.example", NULL),
			 MTA_TLS_DANE);
	mta_tlspolicy_free(p);
}

static void lookup_exact_parent_none(void **state)
{
	struct mta_tlspolicy *p = ok(example);
	const char *m = NULL;

	(void)state;
	/* exact wins over a parent */
	assert_int_equal(mta_tlspolicy_lookup(p, "example.org", &m),
			 MTA_TLS_VERIFY);
	assert_string_equal(m, "example.org");
	/* a leading dot: every subdomain, at any depth */
	assert_int_equal(mta_tlspolicy_lookup(p, "a.example.org", &m),
			 MTA_TLS_VERIFY);
	assert_string_equal(m, ".example.org");
	assert_int_equal(mta_tlspolicy_lookup(p, "x.y.example.org", &m),
			 MTA_TLS_VERIFY);
	/* the closest parent wins */
	assert_int_equal(mta_tlspolicy_lookup(p, "a.sub.example.org", &m),
			 MTA_TLS_MAY);
	assert_string_equal(m, ".sub.example.org");
	/* ".sub.example.org" does not match sub.example.org itself */
	assert_int_equal(mta_tlspolicy_lookup(p, "sub.example.org", &m),
			 MTA_TLS_VERIFY);
	assert_string_equal(m, ".example.org");
	/* an exact entry does not cover subdomains */
	m = NULL;
	assert_int_equal(mta_tlspolicy_lookup(p, "a.example.com", &m),
			 MTA_ENOTFOUND);
	assert_null(m);
	assert_int_equal(mta_tlspolicy_lookup(p, "com", NULL), MTA_ENOTFOUND);
	assert_int_equal(mta_tlspolicy_lookup(p, "xexample.org", NULL),
			 MTA_ENOTFOUND);
	assert_int_equal(mta_tlspolicy_lookup(p, "", NULL), MTA_ENOTFOUND);
	assert_int_equal(mta_tlspolicy_lookup(p, ".", NULL), MTA_ENOTFOUND);
	assert_int_equal(mta_tlspolicy_lookup(p, ".example.org", NULL),
			 MTA_ENOTFOUND);
	assert_int_equal(mta_tlspolicy_lookup(p, NULL, NULL), MTA_ENOTFOUND);
	/* a NULL table: no entries */
	assert_int_equal(mta_tlspolicy_lookup(NULL, "example.com", NULL),
			 MTA_ENOTFOUND);
	assert_int_equal(table_count(NULL), 0);
	mta_tlspolicy_free(p);
	mta_tlspolicy_free(NULL);
}

static void lookup_case_and_trailing_dot(void **state)
{
	struct mta_tlspolicy *p = ok(example);
	const char *m = NULL;

	(void)state;
	assert_int_equal(mta_tlspolicy_lookup(p, "EXAMPLE.Com.", NULL),
			 MTA_TLS_DANE_ONLY);
	assert_int_equal(mta_tlspolicy_lookup(p, "mail.example.net", &m),
			 MTA_TLS_ENCRYPT);
	assert_string_equal(m, "mail.example.net"); /* normalised */
	assert_int_equal(mta_tlspolicy_lookup(p, "A.Example.ORG.", NULL),
			 MTA_TLS_VERIFY);
	assert_int_equal(mta_tlspolicy_lookup(p, "example.com..", NULL),
			 MTA_ENOTFOUND);
	mta_tlspolicy_free(p);
}

static void parse_empty_and_comments_only(void **state)
{
	struct mta_tlspolicy *p;

	(void)state;
	p = ok("");
	assert_int_equal(table_count(p), 0);
	assert_int_equal(mta_tlspolicy_lookup(p, "example.com", NULL),
			 MTA_ENOTFOUND);
	mta_tlspolicy_free(p);
	p = ok("# only\n   # comments\n\n\r\n");
	assert_int_equal(table_count(p), 0);
	mta_tlspolicy_free(p);
}

static void parse_errors_exact_text(void **state)
{
	(void)state;
	BAD("a.example may\nb.example verify\nc.example secure\n",
	    "etc/tls-policy:3: unknown level 'secure'");
	BAD("example.com DANE\n", "etc/tls-policy:1: unknown level 'DANE'");
	BAD("example.com\n", "etc/tls-policy:1: missing level after 'example.com'");
	BAD("example.com  # may\n",
	    "etc/tls-policy:1: missing level after 'example.com'");
	BAD("example.com may verify\n",
	    "etc/tls-policy:1: unexpected 'verify' after the level");
	BAD("*.example.com may\n",
	    "etc/tls-policy:1: invalid domain '*.example.com': wildcards are not supported (a leading dot matches every subdomain)");
	BAD("a..example may\n",
	    "etc/tls-policy:1: invalid domain 'a..example': empty label");
	BAD(". may\n", "etc/tls-policy:1: invalid domain '.': empty name");
	BAD(".. may\n", "etc/tls-policy:1: invalid domain '..': empty name");
	BAD("ex@mple.com may\n",
	    "etc/tls-policy:1: invalid domain 'ex@mple.com': bad character (letters, digits, '-', '_' and '.' only)");
	BAD("b\xc3\xbc" "cher.example may\n",
	    "etc/tls-policy:1: invalid domain 'b??cher.example': bad character (letters, digits, '-', '_' and '.' only)");
	BAD("\n\nexample.com may\x01\n",
	    "etc/tls-policy:3: unknown level 'may?'");
	BAD("example.com:25 may\n",
	    "etc/tls-policy:1: invalid domain 'example.com:25': bad character (letters, digits, '-', '_' and '.' only)");
}

static void parse_errors_limits(void **state)
{
	char label[80], big[2048], name[300];
	char *many;
	size_t len = 0;

	(void)state;
	memset(label, 'a', 64);
	snprintf(label + 64, sizeof(label) - 64, ".example may\n");
	BAD(label, "etc/tls-policy:1: invalid domain 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...': label longer than 63 bytes");
	/* 254 bytes of name */
	for (int i = 0; i < 127; i++)
		memcpy(name + 2 * i, "a.", 2);
	memcpy(name + 252, "aa may\n", 8);
	BAD(name, "etc/tls-policy:1: invalid domain 'a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a...': longer than 253 bytes");
	/* 253 is fine */
	name[253] = ' ';
	memcpy(name + 254, "may\n", 5);
	{
		struct mta_tlspolicy *p = ok(name + 0);
		mta_tlspolicy_free(p);
	}
	memset(big, ' ', sizeof(big));
	memcpy(big, "example.com may", 15);
	big[1030] = '\n';
	bad(big, 1031, "etc/tls-policy:1: line longer than 1024 bytes");
	bad("example.com may\nexam\0ple.com may\n", 33,
	    "etc/tls-policy:2: NUL byte");
	/* entry count */
	many = malloc((size_t)(MTA_TLSPOLICY_ENTRIES + 1) * 24);
	assert_non_null(many);
	for (int i = 0; i <= MTA_TLSPOLICY_ENTRIES; i++)
		len += (size_t)sprintf(many + len, "h%d.example may\n", i);
	bad(many, len, "etc/tls-policy:100001: too many entries (max 100000)");
	/* exactly the maximum parses */
	{
		struct mta_tlspolicy *p = NULL;
		char err[256];
		size_t cut = len - strlen("h100000.example may\n");

		assert_int_equal(parse_table(many, cut, "x", &p, err,
						     sizeof(err)), 0);
		assert_int_equal(table_count(p), MTA_TLSPOLICY_ENTRIES);
		assert_int_equal(mta_tlspolicy_lookup(p, "h77777.example", NULL),
				 MTA_TLS_MAY);
		mta_tlspolicy_free(p);
	}
	free(many);
}

static void parse_duplicates(void **state)
{
	(void)state;
	BAD("a.example may\nexample.com none\nb.example may\nExample.COM. verify\n",
	    "etc/tls-policy:4: duplicate entry for 'example.com' (first on line 2)");
	/* the earliest repeated line is reported */
	BAD("z.example may\na.example may\nz.example may\na.example may\nz.example none\n",
	    "etc/tls-policy:3: duplicate entry for 'z.example' (first on line 1)");
	/* .example.com and example.com are different entries */
	mta_tlspolicy_free(ok("example.com may\n.example.com verify\n"));
	BAD(".example.com may\n.EXAMPLE.com. may\n",
	    "etc/tls-policy:2: duplicate entry for '.example.com' (first on line 1)");
	/* a syntax error comes first, whatever its line */
	BAD("a.example may\na.example may\nb.example nope\n",
	    "etc/tls-policy:3: unknown level 'nope'");
}

static void load_file(void **state)
{
	const char *dir = getenv("MTA_TEST_TMPDIR");
	char path[4096], err[512];
	struct mta_tlspolicy *p = NULL;
	FILE *f;
	int rc;

	(void)state;
	snprintf(path, sizeof(path), "%s/tlspolicy-test-%ld",
		 dir ? dir : "/tmp", (long)getpid());
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("example.com dane-only\nbad.example secure\n", f);
	fclose(f);
	rc = mta_tlspolicy_load(path, &p, err, sizeof(err));
	assert_int_equal(rc, MTA_ECONFIG);
	{
		char want[4200];
		snprintf(want, sizeof(want), "%s:2: unknown level 'secure'", path);
		assert_string_equal(err, want);
	}
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("example.com dane-only\n", f);
	fclose(f);
	assert_int_equal(mta_tlspolicy_load(path, &p, err, sizeof(err)), 0);
	assert_int_equal(mta_tlspolicy_lookup(p, "example.com", NULL),
			 MTA_TLS_DANE_ONLY);
	mta_tlspolicy_free(p);
	unlink(path);
	rc = mta_tlspolicy_load(path, &p, err, sizeof(err));
	assert_int_equal(rc, -ENOENT);
	assert_non_null(strstr(err, "No such file or directory"));
	assert_int_equal(mta_tlspolicy_load("/", &p, err, sizeof(err)), -EINVAL);
}

#define T(f) cmocka_unit_test_setup(f, test_setup)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(levels_parse_and_name),
		T(parse_valid_file),
		T(lookup_exact_parent_none),
		T(lookup_case_and_trailing_dot),
		T(parse_empty_and_comments_only),
		T(parse_errors_exact_text),
		T(parse_errors_limits),
		T(parse_duplicates),
		T(load_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
