/*
 * fuzz_ct_loglist.c - libFuzzer target for the CT log list parser
 * (libmta/ct.c mta_ct_loglist_parse: JSON + log_list.json v3 schema).
 *
 * Checked promises: the parser either fails with an error text and no
 * list, or returns a list whose logs each have a key and an operator index
 * below nops, with at most MTA_CT_LOGS_MAX logs and operators.
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mta_ct_loglist *l = NULL;
	char err[256] = "";
	int rc = mta_ct_loglist_parse((const char *)data, size, &l, err,
				      sizeof(err));

	if (rc != 0) {
		CHECK(l == NULL);
		CHECK(err[0] != '\0' || rc == -12 /* ENOMEM */);
		return 0;
	}
	CHECK(l != NULL);
	CHECK(l->nlogs <= MTA_CT_LOGS_MAX && l->nops <= MTA_CT_LOGS_MAX);
	for (size_t i = 0; i < l->nlogs; i++) {
		CHECK(l->logs[i].key != NULL);
		CHECK(l->logs[i].op < l->nops);
	}
	mta_ct_loglist_free(l);
	return 0;
}
