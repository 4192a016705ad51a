/*
 * fuzz_spool_keys.c - libFuzzer target for the key continuity record
 * codec (libmta/spool_keys.c).  The input is a record as read from the
 * spool's "keys" database (untrusted: the file may be damaged).  decode
 * must fail cleanly (MTA_ECORRUPT, MTA_ESCHEMA) or yield a record within
 * its bounds whose encoding is exactly the input (the codec is
 * canonical); classify and the updates must then run on it without
 * leaving those bounds.
 */
#include "err.h"
#include "spool_keys.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct mta_spool_keys_rec r;
	const struct mta_spool_keys_entry *known = NULL;
	const char *mx[] = {"mx1.example.net", "mx2.example.net"};
	uint8_t h[MTA_SPOOL_KEYS_HASH];
	struct mta_buf b = {0};
	int rc;

	rc = mta_spool_keys_decode(data, size, &r);
	if (rc != 0) {
		if (rc != MTA_ECORRUPT && rc != MTA_ESCHEMA)
			abort();
		return 0;
	}
	if (r.n > MTA_SPOOL_KEYS_MAX)
		abort();
	for (size_t i = 0; i < r.n; i++)
		if (r.e[i].host[0] == '\0' ||
		    strlen(r.e[i].host) > MTA_SPOOL_KEYS_HOST_MAX)
			abort();
	if (mta_spool_keys_encode(&r, &b) != 0 || b.len != size ||
	    memcmp(b.data, data, size) != 0)
		abort();
	mta_buf_free(&b);
	memset(h, size > 0 ? data[size - 1] : 0, sizeof(h));
	struct mta_spool_keys_query q = {
		.host = "mx1.example.net", .leaf = h, .issuer = h,
		.now = 1760000000, .window = 30 * 86400, .hold = 7 * 86400,
		.mx = mx, .nmx = 2,
	};
	(void)mta_spool_keys_classify(&r, &q, &known);
	if (known != NULL && known->state != MTA_SPOOL_KEYS_TRUSTED)
		abort();
	mta_spool_keys_note(&r, MTA_SPOOL_KEYS_SEEN_PENDING, "mx1.example.net",
			    h, h, 1760000000, 30 * 86400);
	(void)mta_spool_keys_accept(&r, 1760000001);
	mta_spool_keys_note(&r, MTA_SPOOL_KEYS_LEARN, "mx2.example.net", h, h,
			    1760000002, 30 * 86400);
	if (r.n > MTA_SPOOL_KEYS_MAX || mta_spool_keys_encode(&r, &b) != 0)
		abort();
	mta_buf_free(&b);
	return 0;
}
