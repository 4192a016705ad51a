/*
 * fuzz_spool_records.c - libFuzzer target for the spool's record codec
 * (libmta/envelope.c: the envelope record stored under every queue id).
 * The input is a record as read from the spool (untrusted: the file may
 * be damaged).  decode must fail cleanly (MTA_ECORRUPT, MTA_ESCHEMA,
 * -ENOMEM) or yield an envelope that satisfies the header's promises
 * (sender and every recipient address non-NULL, enums in range) and
 * whose encoding decodes again to the same encoding (a fixed point).
 * The codec is canonical (decode refuses every byte encode would not
 * write), so an accepted record of the current version (3) re-encodes
 * to exactly the input; an older one (read for upgrades) re-encodes to
 * the current version.
 */
#include "envelope.h"
#include "err.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct mta_envelope *e)
{
	if (e->sender == NULL)
		abort();
	if (e->nrcpt > 0 && e->rcpts == NULL)
		abort();
	for (size_t i = 0; i < e->nrcpt; i++) {
		const struct mta_rcpt *r = &e->rcpts[i];
		if (r->addr == NULL || r->state > MTA_RCPT_BOUNCED)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mta_envelope e, again;
	struct mta_buf b1 = {0}, b2 = {0};
	int rc;

	rc = mta_envelope_decode(data, size, &e);
	if (rc != 0) {
		if (rc != MTA_ECORRUPT && rc != MTA_ESCHEMA && rc != -ENOMEM)
			abort();
		return 0;
	}
	check(&e);
	if (mta_envelope_encode(&e, &b1) != 0)
		abort();
	/* a record of the current version (4) re-encodes to the same bytes;
	 * an older one is upgraded (then stable, below) */
	if (size > 5 && data[4] == 0 && data[5] == 4 &&
	    (b1.len != size || memcmp(b1.data, data, size) != 0))
		abort();
	if (mta_envelope_decode(b1.data, b1.len, &again) != 0)
		abort();
	check(&again);
	if (mta_envelope_encode(&again, &b2) != 0 || b1.len != b2.len ||
	    memcmp(b1.data, b2.data, b1.len) != 0)
		abort();
	mta_envelope_free(&again);
	mta_envelope_free(&e);
	mta_buf_free(&b1);
	mta_buf_free(&b2);
	return 0;
}
