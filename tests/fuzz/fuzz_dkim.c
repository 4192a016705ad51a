/*
 * fuzz_dkim.c - libFuzzer target for the DKIM signer (libmta/dkim.c): the
 * header splitter, the From address parser, header selection and both
 * canonicalisers.  The first input byte picks a chunk size; the rest is
 * the message, fed in those chunks and again whole.  The two results must
 * be identical (Ed25519 is deterministic, t= fixed), the code one of the
 * documented ones, and a header field well-formed: "DKIM-Signature: v=1;"
 * first, CRLF only as a fold ("\r\n\t") or at the end, no l= tag.
 */
#include "dkim.h"
#include "err.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char ed_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n"
	"-----END PRIVATE KEY-----\n";

static struct mta_dkim_keys *keys(void)
{
	static struct mta_dkim_keys *k;
	char dir[] = "/tmp/fuzz-dkim-XXXXXX", p[128], err[512];
	FILE *f;

	if (k != NULL)
		return k;
	if (mkdtemp(dir) == NULL)
		abort();
	snprintf(p, sizeof(p), "%s/ed.pem", dir);
	if ((f = fopen(p, "w")) == NULL)
		abort();
	fputs(ed_pem, f);
	fclose(f);
	snprintf(p, sizeof(p), "%s/keys", dir);
	if ((f = fopen(p, "w")) == NULL)
		abort();
	fputs("example.org sel ed.pem\n", f);
	fclose(f);
	if (mta_dkim_keys_load(p, &k, err, sizeof(err)) != 0)
		abort();
	snprintf(p, sizeof(p), "%s/keys", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/ed.pem", dir);
	unlink(p);
	rmdir(dir);
	return k;
}

static int sign(const uint8_t *m, size_t n, size_t step, char **h, size_t *hl)
{
	struct mta_dkim_sign *s;
	size_t i;
	int rc = mta_dkim_sign_new(keys(), NULL, 1700000000, &s);

	*h = NULL;
	if (rc != 0)
		return rc;
	for (i = 0; rc == 0 && i < n; i += step)
		rc = mta_dkim_sign_feed(s, m + i, n - i < step ? n - i : step);
	if (rc == 0)
		rc = mta_dkim_sign_finish(s, h, hl);
	mta_dkim_sign_free(s);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *h1, *h2;
	size_t l1 = 0, l2 = 0, step, i;
	int r1, r2;

	if (size < 1)
		return 0;
	step = (size_t)data[0] % 64 + 1;
	r1 = sign(data + 1, size - 1, step, &h1, &l1);
	r2 = sign(data + 1, size - 1, size, &h2, &l2);
	if (r1 != r2)
		abort();
	if (r1 != 0) {
		if (r1 != MTA_ENOTFOUND && r1 != MTA_EPROTO &&
		    r1 != MTA_ETOOBIG && r1 != -ENOMEM)
			abort();
		if (h1 != NULL || h2 != NULL)
			abort();
		return 0;
	}
	if (l1 != l2 || memcmp(h1, h2, l1) != 0)
		abort();
	if (l1 < 22 || memcmp(h1, "DKIM-Signature: v=1;", 20) != 0 ||
	    memcmp(h1 + l1 - 2, "\r\n", 2) != 0 || strlen(h1) != l1)
		abort();
	for (i = 0; i + 2 < l1; i++)
		if ((h1[i] == '\r' && (h1[i + 1] != '\n' || h1[i + 2] != '\t')) ||
		    (h1[i] == '\n' && h1[i - 1] != '\r'))
			abort();
	if (strstr(h1, " l=") != NULL || strstr(h1, "d=example.org;") == NULL)
		abort();
	free(h1);
	free(h2);
	return 0;
}
