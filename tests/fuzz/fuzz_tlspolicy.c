/*
 * fuzz_tlspolicy.c - libFuzzer target for the TLS policy table parser
 * (libmta/tlspolicy.c).  The input is the file text.  On success a few
 * lookups run (names cut from the input and fixed ones) and their
 * results are checked; on failure the message must be one printable line
 * naming "fuzz:<line>:".
 */
#include "err.h"
/* the module itself: its static parse_table() and the table's size */
#include "../../libmta/tlspolicy.c"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t table_count(const struct mta_tlspolicy *p)
{
	return p ? p->n : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_level(int lvl)
{
	if (lvl != MTA_ENOTFOUND && (lvl < 0 || lvl >= MTA_TLS_LEVEL_COUNT))
		abort();
	if (lvl >= 0 && strcmp(mta_tls_level_name(lvl), "?") == 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const fixed[] = {
		"example.com", "a.example.org", "EXAMPLE.ORG.", "x", ".", "",
		"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z",
	};
	struct mta_tlspolicy *p = NULL;
	char err[256], tiny[1], name[300];
	int rc;

	rc = parse_table((const char *)data, size, "fuzz", &p, err,
				 sizeof(err));
	if (rc != 0) {
		if (p != NULL || rc != MTA_ECONFIG)
			abort();
		if (strncmp(err, "fuzz:", 5) != 0)
			abort();
		for (const char *s = err; *s; s++)
			if ((unsigned char)*s < ' ' || (unsigned char)*s >= 0x7f)
				abort();
	} else {
		const char *m;

		if (table_count(p) > MTA_TLSPOLICY_ENTRIES)
			abort();
		for (size_t i = 0; i < sizeof(fixed) / sizeof(*fixed); i++)
			check_level(mta_tlspolicy_lookup(p, fixed[i], NULL));
		/* every token of the input as a name */
		for (size_t i = 0; i < size;) {
			size_t n = 0;

			while (i < size && (data[i] == ' ' || data[i] == '\n' ||
					    data[i] == '\t'))
				i++;
			while (i < size && n < sizeof(name) - 1 &&
			       data[i] != ' ' && data[i] != '\n' &&
			       data[i] != '\t')
				name[n++] = (char)data[i++];
			if (n == 0)
				break;
			name[n] = '\0';
			m = NULL;
			rc = mta_tlspolicy_lookup(p, name, &m);
			check_level(rc);
			if (rc >= 0 && (m == NULL || strlen(m) > 254))
				abort();
		}
		mta_tlspolicy_free(p);
	}
	/* a one-byte error buffer must stay NUL-terminated */
	p = NULL;
	if (parse_table((const char *)data, size, "fuzz", &p, tiny,
				sizeof(tiny)) != 0 && tiny[0] != '\0')
		abort();
	mta_tlspolicy_free(p);
	return 0;
}
