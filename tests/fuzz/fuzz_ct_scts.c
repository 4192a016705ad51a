/*
 * fuzz_ct_scts.c - libFuzzer target for the SCT side of libmta/ct.c.
 *
 * Input: byte 0 selects (modulo 3):
 *   0  an SCT list (mta_ct_parse_scts): every SCT's fields lie inside
 *      the input, signatures are non-empty, at most MTA_CT_SCTS_MAX
 *   1  a DER certificate (mta_ct_precert_tbs): the TBS rebuilt is never
 *      longer than the input and starts with a SEQUENCE
 *   2  a DER certificate checked as a leaf against an empty list with
 *      itself as issuer (mta_ct_check): never OK (no log is known), the
 *      counts are consistent
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ct.h"
#include "err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                 \
	do {                     \
		if (!(x))        \
			abort(); \
	} while (0)

static bool inside(const uint8_t *p, size_t n, const uint8_t *b, size_t bn)
{
	return p >= b && p + n <= b + bn;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data + 1;
	size_t n = size > 0 ? size - 1 : 0;

	if (size == 0)
		return 0;
	switch (data[0] % 3) {
	case 0: {
		struct mta_ct_sct s[MTA_CT_SCTS_MAX];
		size_t k = 0;
		if (mta_ct_parse_scts(p, n, s, MTA_CT_SCTS_MAX, &k) == 0) {
			CHECK(k >= 1 && k <= MTA_CT_SCTS_MAX);
			for (size_t i = 0; i < k; i++) {
				CHECK(inside(s[i].log_id, 32, p, n));
				CHECK(inside(s[i].ext, s[i].ext_len, p, n));
				CHECK(s[i].sig_len > 0);
				CHECK(inside(s[i].sig, s[i].sig_len, p, n));
			}
		}
		break;
	}
	case 1: {
		uint8_t *out = malloc(n + 16);
		size_t len = 0;
		if (out == NULL)
			return 0;
		if (mta_ct_precert_tbs(p, n, out, n + 16, &len) == 0) {
			CHECK(len <= n);
			CHECK(len >= 2 && out[0] == 0x30);
		}
		free(out);
		break;
	}
	case 2: {
		gnutls_datum_t d = {(unsigned char *)p, (unsigned)n};
		struct mta_ct_result r;
		mta_ct_check(NULL, &d, &d, 2, 1700000000000LL, &r);
		CHECK(r.verdict != MTA_CT_OK);
		CHECK(r.nvalid == 0 && r.nops == 0);
		CHECK(r.nvalid <= r.nsct);
		break;
	}
	}
	return 0;
}
