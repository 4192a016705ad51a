/*
 * fuzz_routes.c - libFuzzer target for the routing table and shaping table
 * parsers (libmta/routes.c, libmta/shaping.c).  The input is the file
 * text, given to both.  On success lookups run; on failure the message
 * must be one printable line naming "fuzz:<line>:".
 */
#include "err.h"
#include "routes.h"
#include "shaping.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_err(int rc, const char *err)
{
	if (rc != MTA_ECONFIG && rc != -ENOMEM)
		abort();
	if (rc == MTA_ECONFIG && strncmp(err, "fuzz:", 5) != 0)
		abort();
	for (const char *s = err; *s; s++)
		if ((unsigned char)*s < ' ' || (unsigned char)*s >= 0x7f)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const names[] = {"example.com", "a.example.org",
					    "", "x", "mx.google.com"};
	struct mta_routes *r = NULL;
	struct mta_shaping *s = NULL;
	char err[256];
	int rc;

	rc = mta_routes_parse((const char *)data, size, "fuzz", &r, err,
			      sizeof(err));
	if (rc != 0) {
		if (r != NULL)
			abort();
		check_err(rc, err);
	} else {
		for (size_t i = 0; i < 5; i++)
			for (size_t j = 0; j < 5; j++) {
				const struct mta_routes_rule *x =
					mta_routes_match(r, names[i], names[j]);
				if (x != NULL &&
				    (x->line == 0 ||
				     strlen(x->rcpt) >= sizeof(x->rcpt)))
					abort();
			}
		mta_routes_free(r);
	}
	rc = mta_shaping_parse((const char *)data, size, "fuzz", &s, err,
			       sizeof(err));
	if (rc != 0) {
		if (s != NULL)
			abort();
		check_err(rc, err);
	} else {
		long k = mta_shaping_find(s, "example.com", names, 5);
		if (k >= (long)mta_shaping_count(s))
			abort();
		if (k >= 0) {
			struct mta_shaping_site st;
			mta_shaping_site_init(&st, mta_shaping_get(s, (size_t)k),
					      1000000);
			for (int64_t t = 0; t < 10; t++) {
				(void)mta_shaping_take(&st, 1000000 + t * 1000);
				(void)mta_shaping_throttled(&st, t * 20000000);
				(void)mta_shaping_tick(&st, t * 70000000);
				if (st.rate < 0)
					abort();
			}
		}
		mta_shaping_free(s);
	}
	return 0;
}
