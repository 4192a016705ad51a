/* Unit tests of libmta/dkim.c: the RFC 8463 Appendix A vector (Ed25519,
 * relaxed/relaxed: body hash and signature), relaxed body
 * canonicalisation, header selection and the assembled field, the key
 * table's loader and its failures.  RSA signatures are verified by an
 * independent verifier (python3-dkim) in tests/integration/test_dkim.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "err.h"
/* the module itself: the RFC 8463 vector checks the two halves of
 * mta_dkim_sign_finish(), its static sign_body_hash() and sign_header() */
#include "../../libmta/dkim.c"

/* b= in base64 for the DKIM-Signature field tmpl (name included, ending
 * in "b=") over the header fields named in hlist (colon-separated). */
static int sign_template(struct mta_dkim_sign *s, const char *hlist,
			 const char *tmpl, char *b, size_t blen)
{
	char bh[45];
	int rc = sign_body_hash(s, bh);

	if (rc != 0)
		return rc;
	rc = sign_header(s, hlist, tmpl, b, blen);
	return rc != 0 ? (s->err = rc) : 0;
}

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* RFC 8032 7.1 test 1 secret key, the one RFC 8463 Appendix A uses, as
 * PKCS#8 PEM; public key 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo= */
static const char ed_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n"
	"-----END PRIVATE KEY-----\n";

/* RFC 8463 A.2, the message as signed in A.3 */
static const char rfc_msg[] =
	"From: Joe SixPack <joe@football.example.com>\r\n"
	"To: Suzie Q <suzie@shopping.example.net>\r\n"
	"Subject: Is dinner ready?\r\n"
	"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
	"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
	"\r\n"
	"Hi.\r\n"
	"\r\n"
	"We lost the game.  Are you hungry yet?\r\n"
	"\r\n"
	"Joe.\r\n";

static const char rfc_tmpl[] =
	"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
	" d=football.example.com; i=@football.example.com;\r\n"
	" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
	" subject : date : message-id : from : subject : date;\r\n"
	" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
	" b=";

static char tmpdir[512];
static char keys_path[600];

static void write_file(const char *name, const char *text)
{
	char p[700];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", tmpdir, name);
	f = fopen(p, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int setup(void **state)
{
	const char *base = getenv("MTA_TEST_TMPDIR");
	gnutls_x509_privkey_t rk;
	char pem[8192];
	size_t n = sizeof(pem) - 1;

	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "%s/dkim-XXXXXX",
		 base != NULL ? base : "/tmp");
	if (mkdtemp(tmpdir) == NULL)
		return -1;
	write_file("ed.pem", ed_pem);
	/* an RSA key made for the test (2048 bits) */
	if (gnutls_x509_privkey_init(&rk) < 0 ||
	    gnutls_x509_privkey_generate(rk, GNUTLS_PK_RSA, 2048, 0) < 0 ||
	    gnutls_x509_privkey_export_pkcs8(rk, GNUTLS_X509_FMT_PEM, NULL,
					     GNUTLS_PKCS_PLAIN, pem, &n) < 0)
		return -1;
	pem[n] = '\0';
	gnutls_x509_privkey_deinit(rk);
	write_file("rsa.pem", pem);
	write_file("small.pem", "not a key\n");
	write_file("keys", "# domain selector keyfile [alg]\n"
			   "football.example.com brisbane ed.pem\n"
			   "\n"
			   "Example.ORG. mail rsa.pem rsa   # comment\n");
	snprintf(keys_path, sizeof(keys_path), "%s/keys", tmpdir);
	return 0;
}

static struct mta_dkim_keys *load_keys(void)
{
	struct mta_dkim_keys *k = NULL;
	char err[512] = "";
	int rc = mta_dkim_keys_load(keys_path, &k, err, sizeof(err));

	if (rc != 0)
		fail_msg("keys_load: %s", err);
	return k;
}

/* RFC 8463 Appendix A: bh and b= of the relaxed/relaxed example, fed
 * whole and one octet at a time. */
static void rfc8463_vector(void **state)
{
	struct mta_dkim_keys *k = load_keys();
	size_t step;

	(void)state;
	for (step = 1; step <= sizeof(rfc_msg); step += sizeof(rfc_msg) - 1) {
		struct mta_dkim_sign *s;
		char bh[45], b[200];
		size_t i;

		assert_int_equal(mta_dkim_sign_new(k, NULL, 1528637909, &s), 0);
		for (i = 0; i < sizeof(rfc_msg) - 1; i += step) {
			size_t n = sizeof(rfc_msg) - 1 - i;
			assert_int_equal(mta_dkim_sign_feed(s, rfc_msg + i,
							    n < step ? n : step),
					 0);
		}
		assert_string_equal(mta_dkim_sign_domain(s),
				    "football.example.com");
		assert_int_equal(sign_body_hash(s, bh), 0);
		assert_string_equal(bh,
				    "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
		assert_int_equal(sign_template(
					 s,
					 "from : to : subject : date : "
					 "message-id : from : subject : date",
					 rfc_tmpl, b, sizeof(b)),
				 0);
		assert_string_equal(b, "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9Od"
				       "qQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKEL"
				       "q+eXdp1Q1Dw==");
		mta_dkim_sign_free(s);
	}
	mta_dkim_keys_free(k);
}

/* RFC 6376 3.4.4 relaxed body: body -> canonical form, checked through
 * bh. */
static void body_canon(void **state)
{
	static const struct {
		const char *body, *canon;
	} t[] = {
		{"", ""},
		{"\r\n", ""},
		{"\r\n\r\n\r\n", ""},
		{"a", "a\r\n"},
		{"a \t b  \r\n\r\n\r\n", "a b\r\n"},
		{" x\r\n", " x\r\n"},
		{"x \r\n \t\r\ny", "x\r\n\r\ny\r\n"},
		{"a\rb\r\n", "a\rb\r\n"},
		{"  \r\n\r\nz \r\n \r\n", "\r\n\r\nz\r\n"},
		{"end\r", "end\r\r\n"},
	};
	struct mta_dkim_keys *k = load_keys();
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_LEN(t); i++) {
		struct mta_dkim_sign *s;
		char msg[256], bh[45], want[45];
		uint8_t d[32];
		static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
		size_t o = 0, j;

		snprintf(msg, sizeof(msg), "From: a@example.org\r\n\r\n%s",
			 t[i].body);
		assert_int_equal(mta_dkim_sign_new(k, NULL, -1, &s), 0);
		assert_int_equal(mta_dkim_sign_feed(s, msg, strlen(msg)), 0);
		assert_int_equal(sign_body_hash(s, bh), 0);
		gnutls_hash_fast(GNUTLS_DIG_SHA256, t[i].canon,
				 strlen(t[i].canon), d);
		for (j = 0; j < 30; j += 3) {
			uint32_t v = (uint32_t)d[j] << 16 | (uint32_t)d[j + 1] << 8 | d[j + 2];
			want[o++] = tab[v >> 18];
			want[o++] = tab[(v >> 12) & 63];
			want[o++] = tab[(v >> 6) & 63];
			want[o++] = tab[v & 63];
		}
		{
			uint32_t v = (uint32_t)d[30] << 16 | (uint32_t)d[31] << 8;
			want[o++] = tab[v >> 18];
			want[o++] = tab[(v >> 12) & 63];
			want[o++] = tab[(v >> 6) & 63];
			want[o++] = '=';
		}
		want[o] = '\0';
		if (strcmp(bh, want) != 0)
			fail_msg("case %zu: bh %s, want %s", i, bh, want);
		mta_dkim_sign_free(s);
	}
	mta_dkim_keys_free(k);
}

/* The assembled field: d= from the From domain (case-folded), h= with
 * every present signed field and From over-signed, no l=, folded lines
 * of at most 78 columns, CRLF at the end; RSA and Ed25519. */
static void assembled_field(void **state)
{
	static const char msg[] =
		"Received: from x by y\r\n"
		"From: \"Doe, J\" (boss) <j.doe@Example.Org>\r\n"
		"To: a@b.example\r\n"
		"To: c@d.example\r\n"
		"Subject: hi\r\n"
		"X-Other: not signed\r\n"
		"\r\n"
		"body\r\n";
	struct mta_dkim_keys *k = load_keys();
	char *h = NULL, *line;
	size_t n;

	(void)state;
	assert_int_equal(mta_dkim_sign_buffer(k, NULL, msg, sizeof(msg) - 1,
					      1700000000, &h, &n),
			 0);
	assert_int_equal(strlen(h), n);
	assert_non_null(strstr(h, "a=rsa-sha256;"));
	assert_non_null(strstr(h, "d=example.org;"));
	assert_non_null(strstr(h, "s=mail;"));
	assert_non_null(strstr(h, "t=1700000000;"));
	assert_non_null(strstr(h, "h=from:from:to:to:subject;"));
	assert_null(strstr(h, " l="));
	assert_null(strstr(h, "x-other"));
	assert_memory_equal(h, "DKIM-Signature: v=1;", 20);
	assert_memory_equal(h + n - 2, "\r\n", 2);
	for (line = h; *line != '\0';) {
		char *e = strstr(line, "\r\n");
		assert_non_null(e);
		assert_true(e - line <= 78);
		line = e + 2;
	}
	free(h);

	/* Ed25519, domain given, no t= */
	assert_int_equal(mta_dkim_sign_buffer(k, "football.example.com", msg,
					      sizeof(msg) - 1, -1, &h, &n),
			 0);
	assert_non_null(strstr(h, "a=ed25519-sha256;"));
	assert_non_null(strstr(h, "d=football.example.com;"));
	assert_null(strstr(h, "t="));
	free(h);
	mta_dkim_keys_free(k);
}

static void not_signed(void **state)
{
	struct mta_dkim_keys *k = load_keys();
	char *h = (char *)1;
	size_t n;
	static const struct {
		const char *msg, *domain;
		int rc;
	} t[] = {
		{"From: x@unconfigured.example\r\n\r\nb\r\n", NULL,
		 MTA_ENOTFOUND},
		{"From: x@sub.example.org\r\n\r\nb\r\n", NULL, MTA_ENOTFOUND},
		{"To: x@example.org\r\n\r\nb\r\n", NULL, MTA_EPROTO},
		{"To: x@example.org\r\n\r\nb\r\n", "example.org", MTA_EPROTO},
		{"From: undisclosed\r\n\r\n", NULL, MTA_ENOTFOUND},
		{"From: x@example.org\r\n\r\nb\r\n", "other.example",
		 MTA_ENOTFOUND},
		{"\r\nbody only\r\n", NULL, MTA_EPROTO},
	};
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_LEN(t); i++) {
		int rc = mta_dkim_sign_buffer(k, t[i].domain, t[i].msg,
					      strlen(t[i].msg), 1, &h, &n);
		if (rc != t[i].rc)
			fail_msg("case %zu: %d, want %d", i, rc, t[i].rc);
		assert_null(h);
	}
	/* a header block over the limit */
	{
		size_t big = MTA_DKIM_HEADER_MAX + 100, j;
		char *m = malloc(big);
		assert_non_null(m);
		memcpy(m, "From: a@example.org\r\n", 21);
		for (j = 21; j + 1 < big; j += 2)
			memcpy(m + j, " x", 2);
		assert_int_equal(mta_dkim_sign_buffer(k, NULL, m, big - 1, 1,
						      &h, &n),
				 MTA_ETOOBIG);
		free(m);
	}
	mta_dkim_keys_free(k);
}

static void keys_load_errors(void **state)
{
	static const struct {
		const char *text, *want;
	} t[] = {
		{"example.org sel\n", ":1: expected"},
		{"example.org sel rsa.pem rsa extra\n", ":1: expected"},
		{"\n\nbad..domain sel rsa.pem\n", ":3: bad domain"},
		{"example.org s/l rsa.pem\n", "bad selector"},
		{"example.org sel missing.pem\n", "cannot read key file"},
		{"example.org sel small.pem\n", "small.pem"},
		{"example.org sel rsa.pem ed25519\n", "holds an rsa key"},
		{"a.example s ed.pem\nA.example. t rsa.pem\n",
		 ":2: domain a.example listed twice"},
	};
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_LEN(t); i++) {
		struct mta_dkim_keys *k = (struct mta_dkim_keys *)1;
		char path[700], err[512] = "";

		write_file("bad", t[i].text);
		snprintf(path, sizeof(path), "%s/bad", tmpdir);
		assert_int_equal(mta_dkim_keys_load(path, &k, err, sizeof(err)),
				 MTA_ECONFIG);
		assert_null(k);
		if (strstr(err, t[i].want) == NULL)
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err,
				 t[i].want);
		/* never the key's bytes */
		assert_null(strstr(err, "MC4CAQAw"));
	}
	{
		struct mta_dkim_keys *k = load_keys();
		const char *sel = NULL;
		assert_int_equal(mta_dkim_keys_count(k), 2);
		assert_string_equal(mta_dkim_keys_find(k, "EXAMPLE.org", &sel),
				    "rsa");
		assert_string_equal(sel, "mail");
		assert_string_equal(mta_dkim_keys_find(k, "football.example.com",
						       NULL),
				    "ed25519");
		assert_null(mta_dkim_keys_find(k, "sub.example.org", NULL));
		mta_dkim_keys_free(k);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(rfc8463_vector),
		cmocka_unit_test(body_canon),
		cmocka_unit_test(assembled_field),
		cmocka_unit_test(not_signed),
		cmocka_unit_test(keys_load_errors),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
