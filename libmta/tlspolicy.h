/*
 * tlspolicy.h - TLS levels and the local TLS policy table
 * (tls.policy_file).
 *
 * DESCRIPTION
 *	enum mta_tls_level is the one list of TLS levels, shared by the
 *	configuration (tls.default_level) and delivery.
 *	mta_tls_level_parse() maps a lower-case name ("dane-only") to its
 *	level (>= 0) or returns -EINVAL; mta_tls_level_name() is the inverse;
 *	mta_tls_level_list() is every name, comma-separated (error texts).
 *	All three are generated from MTA_TLS_LEVEL_MAP: adding a level means
 *	one line there, its rules in policy.c and its rows in
 *	tests/unit/test_policy.c, and docs.
 *
 *	mta_tlspolicy_load() reads the file at path (at most
 *	MTA_TLSPOLICY_FILE_MAX bytes) and parses it; a file that cannot be
 *	read gives "<path>: <strerror>".  The parser itself is sans-I/O
 *	(parse_table() in tlspolicy.c; the unit test and the fuzzer include
 *	the file).  The format, one entry a line:
 *	    <domain> <level>
 *	separated by spaces or tabs; '#' starts a comment that runs to the end
 *	of the line; blank lines are ignored; LF or CRLF line ends; the last
 *	line needs no newline.  <domain> is either an exact domain
 *	("example.com") or, with a leading dot, every subdomain of a domain
 *	(".example.org" matches "a.example.org" and "a.b.example.org" but not
 *	"example.org").  Domains are ASCII (A-labels), compared without
 *	regard to case, and a trailing dot is ignored.  Wildcards ("*.") are
 *	refused with a hint to use the leading-dot form.  A second entry for
 *	the same domain (after case folding and the trailing dot) is an
 *	error.  On error, err receives one line "<fname>:<line>: <why>", e.g.
 *	"etc/tls-policy:3: unknown level 'secure'", with the offending text
 *	quoted, control bytes shown as '?'.  Syntax errors are reported for
 *	the first bad line; duplicates are checked after the whole text
 *	parsed and reported at the first line that repeats an entry.
 *
 *	mta_tlspolicy_lookup() returns the level for domain: the exact entry
 *	if any, else the closest parent entry with a leading dot, else
 *	MTA_ENOTFOUND ("no entry": the caller goes on with DANE, MTA-STS and
 *	the default level).  A NULL table has no entries.  When matched is
 *	not NULL it receives the entry that matched, as normalised (lower
 *	case, no trailing dot, leading dot kept), valid until the table is
 *	freed.  The domain may have a trailing dot and any case.
 *
 * THREADS
 *	Any.  A parsed table is immutable: lookups from any number of threads
 *	may run concurrently; reload by parsing a new table and swapping.
 *
 * OWNERSHIP
 *	*out is set only on success and belongs to the caller:
 *	mta_tlspolicy_free() (NULL is fine).  text is not retained.
 *
 * ERRORS
 *	MTA_ECONFIG with the message in err (syntax, limits, duplicates);
 *	-ENOMEM; mta_tlspolicy_load(): -errno when the file cannot be read,
 *	MTA_ETOOBIG when it is larger than MTA_TLSPOLICY_FILE_MAX.
 *
 * SECURITY
 *	The file is administrator input but is parsed defensively: lines are
 *	at most MTA_TLSPOLICY_LINE_MAX bytes, at most MTA_TLSPOLICY_ENTRIES
 *	entries, no NUL bytes; names are checked as host names (labels of
 *	1-63 letters, digits, '-' or '_', 253 bytes in all).  Lookup cost is
 *	O(labels * log entries).
 *
 * STANDARDS
 *	RFC 7672 §6 and §9.1 (local policy overrides DANE), RFC 8461 §2.
 *
 * CAVEATS
 *	No IDN U-labels (write the A-label).  No per-entry options (such as
 *	a match list of names): the level only.
 */
#ifndef MTA_TLSPOLICY_H
#define MTA_TLSPOLICY_H

#include <stddef.h>

#define MTA_TLSPOLICY_LINE_MAX 1024
#define MTA_TLSPOLICY_ENTRIES 100000
#define MTA_TLSPOLICY_FILE_MAX (16u << 20)

/* The one list of TLS levels, in order of strength: X(ENUM, "name",
 * meaning).  Names, parsing, the configuration and the policy table are
 * generated from it; what a level does is decided in policy.c only. */
#define MTA_TLS_LEVEL_MAP(X)                                                  \
	X(NONE, "none", "plaintext, STARTTLS not tried")                      \
	X(MAY, "may", "opportunistic STARTTLS")                               \
	X(ENCRYPT, "encrypt", "TLS mandatory, certificate not checked")      \
	X(DANE, "dane", "DANE where usable TLSA exist, else may")             \
	X(DANE_ONLY, "dane-only", "DANE mandatory")                           \
	X(VERIFY, "verify", "TLS with a WebPKI-valid certificate")

enum mta_tls_level {
#define MTA_TLS_LEVEL_ENUM(e, name, what) MTA_TLS_##e,
	MTA_TLS_LEVEL_MAP(MTA_TLS_LEVEL_ENUM)
#undef MTA_TLS_LEVEL_ENUM
};
enum {
#define MTA_TLS_LEVEL_ONE(e, name, what) +1
	MTA_TLS_LEVEL_COUNT = 0 MTA_TLS_LEVEL_MAP(MTA_TLS_LEVEL_ONE)
#undef MTA_TLS_LEVEL_ONE
};

int mta_tls_level_parse(const char *name);
const char *mta_tls_level_name(enum mta_tls_level level);
/* "none, may, encrypt, dane, dane-only, verify": for error messages */
const char *mta_tls_level_list(void);

struct mta_tlspolicy;

int mta_tlspolicy_load(const char *path, struct mta_tlspolicy **out,
		       char *err, size_t errlen);
void mta_tlspolicy_free(struct mta_tlspolicy *p);

int mta_tlspolicy_lookup(const struct mta_tlspolicy *p, const char *domain,
			 const char **matched);

#endif
