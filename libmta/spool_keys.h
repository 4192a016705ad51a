/*
 * spool_keys.h - key continuity of MTA-STS destinations: the record of
 * the MX keys and issuers seen per policy domain, its codec, the lookup
 * that classifies a new certificate, and its update through the writer.
 *
 * DESCRIPTION
 *	The spool's "keys" database maps a policy domain (lower case) to one
 *	record: for each (MX host, leaf SPKI SHA-256) seen, the issuer's
 *	SPKI SHA-256, first and last seen (unix seconds) and a state:
 *	TRUSTED (seen with an accepted, WebPKI-valid session) or PENDING
 *	(seen and refused by mta_sts.continuity = hold: a new issuer waiting
 *	for the operator or for the hold period), plus when the operator
 *	last accepted a change.
 *
 *	Record (all integers big-endian):
 *	  "MTAK", u16 version (1), u16 entry count, u32 length of the rest,
 *	  i64 accepted_at, then per entry: u8 state (1 trusted, 2 pending),
 *	  u8 host length (1..253), host, leaf[32], issuer[32], i64 first,
 *	  i64 last.
 *	mta_spool_keys_decode() checks magic (MTA_ECORRUPT), version
 *	(MTA_ESCHEMA), the length field against the bytes (MTA_ECORRUPT),
 *	every entry's bounds and state, and that nothing follows the last
 *	entry; the codec is canonical (encode(decode(x)) == x).
 *	mta_spool_keys_encode() writes a record (-ENOMEM, -EINVAL for an
 *	entry out of bounds).
 *
 *	mta_spool_keys_classify() is the lookup before the verdict (pure):
 *	  - no trusted entry, or none seen within window seconds: FIRST (the
 *	    record is learned afresh; stale entries are replaced);
 *	  - the leaf is trusted for the domain (on any host): KNOWN;
 *	  - the issuer is trusted: NEW_KEY (a rotation under a known CA);
 *	  - the issuer has been seen PENDING on every host of mx[] for at
 *	    least hold seconds, and each of those hosts showed no trusted
 *	    key since: ACCEPTED (a real rotation heals by itself);
 *	  - otherwise NEW_ISSUER.
 *	*known points to the entry to name in the log: the most recently
 *	seen trusted entry of the same host, else of the domain (NULL when
 *	none).  Host names compare case-insensitively.
 *
 *	mta_spool_keys_note() updates a record in memory: LEARN makes
 *	(host, leaf) trusted (first kept, last = now), promotes every
 *	PENDING entry of the same issuer, and drops trusted and pending
 *	entries last seen before now - window; PENDING records (host,
 *	leaf) as pending (or refreshes its last seen).  When the record is
 *	full (MTA_SPOOL_KEYS_MAX) the entry seen longest ago goes.
 *	mta_spool_keys_accept() promotes every PENDING entry and sets
 *	accepted_at; it returns how many it promoted.
 *
 *	mta_spool_keys_get() reads and decodes a domain's record (short
 *	read transaction, any thread); MTA_ENOTFOUND when none.
 *	mta_spool_keys_apply() is the writer's side of a struct
 *	mta_spool_keys_op (writer.h MTA_COMMIT_KEYS): read, note or accept,
 *	write, in one nested transaction.  ACCEPT on a domain with nothing
 *	pending returns MTA_ENOTFOUND and writes nothing.
 *
 * THREADS
 *	Codec and classify: any.  get: any thread (short read txn).  apply:
 *	the writer thread.
 *
 * OWNERSHIP
 *	Caller-owned structs; a struct mta_spool_keys_rec is large (~22 KiB):
 *	allocate it.  An op's strings are borrowed for the call.
 *
 * ERRORS
 *	MTA_ECORRUPT, MTA_ESCHEMA, MTA_ENOTFOUND, -ENOMEM, -EINVAL, and the
 *	spool's codes.
 *
 * SECURITY
 *	The record comes from the spool (a damaged file is untrusted input:
 *	every length is checked, tests/fuzz/fuzz_spool_keys.c).  Host names
 *	come from DNS (MX); the fingerprints from the peer's certificate
 *	after the WebPKI check passed.
 *
 * CAVEATS
 *	A host that is never tried (an earlier MX always answers) keeps
 *	whatever it had; healing needs every host of the MX list to show the
 *	new issuer, so a list with a dead MX heals only by the operator.
 */
#ifndef MTA_SPOOL_KEYS_H
#define MTA_SPOOL_KEYS_H

#include "envelope.h" /* struct mta_buf */
#include "policy.h"   /* enum mta_policy_cont */
#include "spool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_SPOOL_KEYS_VERSION 1
#define MTA_SPOOL_KEYS_MAX 64
#define MTA_SPOOL_KEYS_HASH 32
#define MTA_SPOOL_KEYS_HOST_MAX 253

enum mta_spool_keys_state {
	MTA_SPOOL_KEYS_TRUSTED = 1,
	MTA_SPOOL_KEYS_PENDING = 2,
};

struct mta_spool_keys_entry {
	enum mta_spool_keys_state state;
	char host[MTA_SPOOL_KEYS_HOST_MAX + 1];
	uint8_t leaf[MTA_SPOOL_KEYS_HASH];
	uint8_t issuer[MTA_SPOOL_KEYS_HASH];
	int64_t first, last; /* unix seconds */
};

struct mta_spool_keys_rec {
	int64_t accepted_at; /* 0: never */
	size_t n;
	struct mta_spool_keys_entry e[MTA_SPOOL_KEYS_MAX];
};

struct mta_spool_keys_query {
	const char *host;
	const uint8_t *leaf, *issuer; /* MTA_SPOOL_KEYS_HASH bytes each */
	int64_t now;
	int64_t window, hold; /* seconds */
	const char *const *mx; /* every MX host of the domain */
	size_t nmx;
};

enum mta_spool_keys_opkind {
	MTA_SPOOL_KEYS_LEARN = 1,
	MTA_SPOOL_KEYS_SEEN_PENDING = 2,
	MTA_SPOOL_KEYS_ACCEPT = 3,
};

/* A change of one domain's record (the writer's MTA_COMMIT_KEYS). */
struct mta_spool_keys_op {
	enum mta_spool_keys_opkind kind;
	const char *domain;
	const char *host;     /* LEARN, SEEN_PENDING */
	uint8_t leaf[MTA_SPOOL_KEYS_HASH], issuer[MTA_SPOOL_KEYS_HASH];
	int64_t now;
	int64_t window;
};

int mta_spool_keys_decode(const uint8_t *p, size_t len,
			  struct mta_spool_keys_rec *out);
int mta_spool_keys_encode(const struct mta_spool_keys_rec *r,
			  struct mta_buf *out);
enum mta_policy_cont
mta_spool_keys_classify(const struct mta_spool_keys_rec *r,
			const struct mta_spool_keys_query *q,
			const struct mta_spool_keys_entry **known);
void mta_spool_keys_note(struct mta_spool_keys_rec *r,
			 enum mta_spool_keys_opkind kind,
			 const char *host, const uint8_t *leaf,
			 const uint8_t *issuer, int64_t now, int64_t window);
size_t mta_spool_keys_accept(struct mta_spool_keys_rec *r, int64_t now);

/* Hex (64 characters) <-> hash; from_hex: 0 or -EINVAL. */
int mta_spool_keys_from_hex(const char *hex, uint8_t out[MTA_SPOOL_KEYS_HASH]);
void mta_spool_keys_to_hex(const uint8_t h[MTA_SPOOL_KEYS_HASH],
			   char out[2 * MTA_SPOOL_KEYS_HASH + 1]);

int mta_spool_keys_get(struct mta_spool *sp, const char *domain,
		       struct mta_spool_keys_rec *out);
int mta_spool_keys_apply(struct mta_spool_txn *t,
			 const struct mta_spool_keys_op *op);

#endif
