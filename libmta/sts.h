/*
 * sts.h - MTA-STS (RFC 8461): the _mta-sts TXT record, the policy file, MX
 * pattern matching, and the policy cache record with its decisions.
 *
 * SUMMARY
 *	Sans-I/O building blocks of MTA-STS.  Nothing here touches a socket,
 *	the clock or the heap: the caller passes bytes, times and buffers in,
 *	and gets verdicts and filled structs back.  The HTTPS fetch is
 *	sts_fetch.h; the spool stores the cache record encoded here.
 *
 * DESCRIPTION
 *	mta_sts_pick_txt() applies the record-set rules to all TXT records of
 *	_mta-sts.<domain> (record syntax: RFC 8461 3.1 ABNF, "v=STSv1" first,
 *	a required id of 1*32 ALPHA / DIGIT, other fields sts-extension; the
 *	first id counts): records not beginning "v=STSv1" followed by WSP,
 *	";" or the end are ignored; none left is
 *	MTA_STS_TXT_NONE; more than one is MTA_STS_TXT_MULTIPLE (no policy,
 *	3.1 MUST); exactly one is parsed: MTA_STS_TXT_OK with out->id, or
 *	MTA_STS_TXT_INVALID.  For the cache decision, MULTIPLE and INVALID
 *	count as "no record" (STS-13).
 *
 *	mta_sts_parse_policy() parses a policy body (RFC 8461 3.2 ABNF) into
 *	a struct mta_sts_policy.  See POLICY RULES below for every choice.
 *
 *	mta_sts_mx_match() tells whether an MX host name (as found in DNS,
 *	not its CNAME target) matches one of the policy's mx patterns:
 *	ASCII case-insensitive, one trailing dot on the host ignored, and a
 *	pattern "*.example.com" matches exactly one extra left-most label
 *	("mx1.example.com", not "example.com" nor "a.mx1.example.com").
 *	It does not look at the mode: a policy of mode none has no patterns
 *	and matches nothing; the caller applies the mode.
 *
 *	mta_sts_content_type_ok() checks an HTTP Content-Type value: the
 *	media type text/plain, case-insensitive, with any parameters
 *	(RFC 8461 3.2, STS-45/46).  NULL (no header) is refused (STS-47).
 *
 *	mta_sts_cache_encode() appends a cache record to a growable buffer;
 *	mta_sts_cache_decode() parses and checks one.  See CACHE RECORD.
 *
 *	mta_sts_cache_decide() is the per-delivery decision from the cached
 *	record (or NULL), the TXT lookup outcome and the current time:
 *
 *	  cache (unexpired)   TXT                   decision
 *	  none or expired     id                    FETCH (failure: no policy,
 *	                                            STS-55/63)
 *	  none or expired     none/invalid/tempfail NO_POLICY (STS-02/14a)
 *	  valid               same id               USE_CACHED (STS-60/69)
 *	  valid               other id              FETCH_KEEP_OLD_ON_FAIL
 *	                                            (STS-61/62)
 *	  valid               none/invalid/tempfail USE_CACHED (STS-13/14b)
 *
 *	A cached record is valid while now < expires_at.  A policy with
 *	max_age 0 applies to the attempt that fetched it only: the caller
 *	does not store it (mta_sts_policy_cacheable()), and a record with
 *	expires_at == fetched_at is never valid (STS-32).
 *
 *	mta_sts_refresh_due() tells whether the proactive refresher (RFC
 *	8461 10.2, STS-65) should refetch a cached policy even if its id is
 *	unchanged: now >= base - a jitter of (jitter % (base / 10 + 1))
 *	seconds, where base = min(MTA_STS_REFRESH_INTERVAL, lifetime / 2)
 *	after fetched_at, so refreshes of many domains spread over the last
 *	tenth of the interval.  jitter is any random number the caller draws
 *	(the function stays pure and testable).  The refresh time is always
 *	in [fetched_at + base - base/10, fetched_at + base] and before
 *	expires_at.  It is false for a record whose lifetime is 0.
 *
 * POLICY RULES (pinned; tests in tests/unit/test_sts.c, docs/mta-sts.md)
 *	- Lines end in LF or CRLF, mixed allowed; the last terminator is
 *	  optional (STS-20..23).  A CR not followed by LF is invalid (STS-37).
 *	- Each line is key ":" *WSP value *WSP.  Leading WSP on a line and
 *	  empty lines (also at the end) are invalid (STS-36 choice), as is a
 *	  line without ":" or with a key that is not (ALPHA / DIGIT)
 *	  *31(ALPHA / DIGIT / "_" / "-" / ".").
 *	- Keys are case-sensitive ("Mode" is an unknown key, STS-35).
 *	  Unknown keys are ignored, but their value must be 1 or more
 *	  VCHAR / UTF-8 characters with inner WSP (STS-24); control
 *	  characters or malformed UTF-8 make the policy invalid.
 *	- version, mode and max_age are required.  When one is repeated, the
 *	  first occurrence wins and later ones are ignored (RFC 8461 3.2,
 *	  STS-25); they must still be syntactically valid lines.  The order
 *	  of the lines is free (the RFC does not fix it).
 *	- version must be "STSv1" (STS-28); mode "enforce", "testing" or
 *	  "none", case-sensitive (STS-29).
 *	- max_age is 1*10 DIGIT (STS-30).  Values above 31557600 are
 *	  accepted and capped to 31557600, max_age_capped is set so the
 *	  caller can warn (STS-31 choice); 0 is valid (STS-32).
 *	- mx is ["*."] Domain (RFC 5321: labels of letters, digits and
 *	  inner hyphens, <= 63 octets, no trailing dot), at most
 *	  MTA_STS_PATTERN_MAX octets; any malformed pattern makes the whole
 *	  policy invalid (STS-34 choice, and STS-38: a U-label is invalid).
 *	  At least one mx is required unless mode is none (STS-33).  More
 *	  than MTA_STS_MX_MAX patterns: invalid (MTA_ETOOBIG).  Patterns are
 *	  stored lower-cased, in file order, duplicates kept.
 *	- A body over MTA_STS_POLICY_MAX octets is refused (MTA_ETOOBIG).
 *
 * CACHE RECORD
 *	Integers big-endian: "MTSC", u16 version (1), u32 total length (the
 *	header included; must equal n), i64 fetched_at, i64 expires_at (unix
 *	seconds), u8 length + domain, u8 length + id, u32 length + policy
 *	text.  decode: MTA_ECORRUPT on a short record, bad magic, a length
 *	that does not match, trailing bytes, a domain that is not a
 *	lower-case A-label name, an invalid id, expires_at < fetched_at, a
 *	lifetime longer than the cap, or policy text that no longer parses;
 *	MTA_ESCHEMA on another version.  encode: -EINVAL for the same
 *	violations (programmer error) and MTA_ETOOBIG for text over the
 *	limit; -ENOMEM; on failure out is unchanged.
 *
 * THREADS
 *	Any thread; every function is reentrant and uses only its arguments.
 *
 * OWNERSHIP
 *	Inputs are borrowed for the call.  struct mta_sts_policy and struct
 *	mta_sts_txt are self-contained copies.  After decode,
 *	rec->text points into the record bytes passed in (borrowed: valid as
 *	long as those bytes, e.g. only within the LMDB read transaction);
 *	domain, id and policy are copies.  Outputs are written only on
 *	success.
 *
 * ERRORS
 *	0 on success.  MTA_EPROTO: a TXT record or policy that does not
 *	follow the syntax; MTA_ETOOBIG: over a size limit; cache codec as
 *	above.  Where a function takes const char **why, a static reason
 *	for the log is stored there on failure (may be NULL).
 *
 * SECURITY
 *	TXT records, policy bodies and cache records are untrusted (a cache
 *	record is checked like one read from a damaged disk).  Every length
 *	is bounded: TXT by its len, policy <= 64 KiB, <= 100 patterns of
 *	<= 255 octets, keys <= 32 octets, ids <= 32.  No recursion, no
 *	allocation, every loop bounded by the input length.
 *
 * STANDARDS
 *	RFC 8461 3.1 (TXT), 3.2 (policy, ABNF, errata 6253 LF endings and
 *	7282 max_age), 3.3 (cache keyed on id, keep on failure), 4.1 (MX
 *	matching, RFC 6125 6.4.3 wildcard of one label), 5.1 (use of the
 *	cache), 10.2 (proactive refresh).  RFC 5321 4.1.2 (Domain).
 *
 * CAVEATS
 *	IDN conversion is the caller's job: MX names must be A-labels.  The
 *	"wait 5 minutes before refetching the same id after a failure"
 *	(RFC 8461 3.3, STS-54) is not kept here; the policy layer keeps
 *	that negative cache.
 */
#ifndef MTA_STS_H
#define MTA_STS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envelope.h" /* struct mta_buf */

#define MTA_STS_ID_MAX 32
#define MTA_STS_POLICY_MAX 65536
#define MTA_STS_MX_MAX 100
#define MTA_STS_PATTERN_MAX 255
#define MTA_STS_DOMAIN_MAX 253
#define MTA_STS_MAX_AGE_CAP 31557600u
#define MTA_STS_REFRESH_INTERVAL 86400

struct mta_sts_txt {
	char id[MTA_STS_ID_MAX + 1];
};

enum mta_sts_txt_verdict {
	MTA_STS_TXT_OK,
	MTA_STS_TXT_NONE,     /* no STSv1 record among those given */
	MTA_STS_TXT_MULTIPLE, /* more than one STSv1 record: no policy */
	MTA_STS_TXT_INVALID,  /* one STSv1 record, syntactically invalid */
};

/* Policy modes (RFC 8461 §3.2): X(ENUM, "name") */
#define MTA_STS_MODE_MAP(X)                                                   \
	X(NONE, "none")                                                       \
	X(TESTING, "testing")                                                 \
	X(ENFORCE, "enforce")

enum mta_sts_mode {
#define MTA_STS_MODE_ENUM(e, name) MTA_STS_MODE_##e,
	MTA_STS_MODE_MAP(MTA_STS_MODE_ENUM)
#undef MTA_STS_MODE_ENUM
};

struct mta_sts_policy {
	enum mta_sts_mode mode;
	uint32_t max_age;	/* seconds, capped at MTA_STS_MAX_AGE_CAP */
	uint64_t max_age_raw;	/* as published (<= 9999999999) */
	bool max_age_capped;	/* max_age_raw > cap: warn */
	size_t nmx;
	char mx[MTA_STS_MX_MAX][MTA_STS_PATTERN_MAX + 1]; /* lower-case */
};

struct mta_sts_cache_rec {
	char domain[MTA_STS_DOMAIN_MAX + 1]; /* policy domain, lower-case */
	char id[MTA_STS_ID_MAX + 1];	     /* TXT id it was fetched for */
	int64_t fetched_at;		     /* unix seconds */
	int64_t expires_at;		     /* fetched_at + max_age */
	const char *text;		     /* policy body (decode: borrowed) */
	size_t text_len;
	struct mta_sts_policy policy;	     /* decode: text parsed */
};

enum mta_sts_txt_result {
	MTA_STS_TXT_RESULT_ID,	     /* one valid STSv1 record: its id */
	MTA_STS_TXT_RESULT_NONE,     /* no record, several, or invalid */
	MTA_STS_TXT_RESULT_TEMPFAIL, /* lookup failed (SERVFAIL, timeout) */
};

#define MTA_STS_DECISION_MAP(X)                                               \
	X(USE_CACHED, "use-cached")                                           \
	X(FETCH, "fetch")                                                     \
	X(FETCH_KEEP_OLD_ON_FAIL, "fetch-keep-old-on-fail")                   \
	X(NO_POLICY, "no-policy")

enum mta_sts_decision {
#define MTA_STS_DECISION_ENUM(e, name) MTA_STS_##e,
	MTA_STS_DECISION_MAP(MTA_STS_DECISION_ENUM)
#undef MTA_STS_DECISION_ENUM
};

enum mta_sts_txt_verdict mta_sts_pick_txt(const char *const texts[],
					  const size_t lens[], size_t n,
					  struct mta_sts_txt *out,
					  const char **why);

int mta_sts_parse_policy(const char *body, size_t len,
			 struct mta_sts_policy *out, const char **why);
bool mta_sts_mx_match(const struct mta_sts_policy *p, const char *mx_host);
bool mta_sts_policy_cacheable(const struct mta_sts_policy *p);
bool mta_sts_content_type_ok(const char *content_type);

int mta_sts_cache_encode(const struct mta_sts_cache_rec *rec,
			 struct mta_buf *out);
int mta_sts_cache_decode(const uint8_t *p, size_t n,
			 struct mta_sts_cache_rec *out);

enum mta_sts_decision mta_sts_cache_decide(const struct mta_sts_cache_rec *c,
					   enum mta_sts_txt_result txt,
					   const char *txt_id, int64_t now);
bool mta_sts_refresh_due(const struct mta_sts_cache_rec *c, int64_t now,
			 uint32_t jitter);

const char *mta_sts_mode_name(enum mta_sts_mode m);

#endif
