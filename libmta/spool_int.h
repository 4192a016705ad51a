/*
 * spool_int.h - what the spool's files share (spool.c, spool_notes.c,
 * spool_admin.c).  Private to the spool: nothing outside libmta/spool*.c
 * includes it; the module's interface and documentation is spool.h.
 *
 * spool.c       open/close, the data file check, bodies, writing and
 *               reading messages, totals and figures, SIGBUS trap
 * spool_notes.c the MTA-STS policy cache and the TLS report counters
 *               and notes (string key -> bytes databases)
 * spool_admin.c hold/release/flush/delete (mtactl), the held and
 *               destination listings, key continuity records
 */
#ifndef MTA_SPOOL_INT_H
#define MTA_SPOOL_INT_H

#include "spool.h"

#include <lmdb.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define TOTALS_KEY "totals" /* be64 messages, recipients, body bytes */
#define CHUNK_KEY_LEN (MTA_QID_LEN + 4)
#define DUE_KEY_LEN (8 + MTA_QID_LEN)

struct mta_spool {
	MDB_env *env;
	MDB_dbi meta, messages, bodies, due, dest, sts, tlsrpt, held, keys;
	bool have_tlsrpt; /* absent in a read-only spool made before it */
	bool have_held;   /* likewise (spool_admin.c) */
	bool have_keys;   /* likewise (key records, spool_admin.c) */
	size_t chunk; /* body chunk size: page size - 16 */
	bool readonly;
	char *tmpdir;
	atomic_uint corrupt; /* damage seen at run time (count) */
};

struct mta_spool_txn {
	struct mta_spool *sp;
	MDB_txn *txn;
	struct mta_buf rec; /* reused envelope encoding buffer */
};

static inline void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t get_be64(const uint8_t *p)
{
	return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4);
}

/* An LMDB code as a libmta code; notes damage (spool.c). */
int sp_err(struct mta_spool *sp, int rc);
/* Starts a read transaction, adopting a map grown by another process. */
int sp_read_begin(struct mta_spool *sp, MDB_txn **txn);
/* The earliest next attempt of a pending recipient, INT64_MAX if none. */
int64_t sp_env_due(const struct mta_envelope *e);
/* The due index key: be64 due time, queue id. */
void sp_due_key(uint8_t k[DUE_KEY_LEN], int64_t due_us, const char *qid);
/* True if qid is MTA_QID_LEN Crockford base-32 characters. */
bool sp_qid_valid(const char *qid);
/* Adds to the running totals in the meta database (an LMDB code). */
int sp_totals_add(MDB_txn *txn, MDB_dbi meta, int64_t dm, int64_t dr,
		  int64_t db);
/* Writes / removes a message with its body and index entries in txn. */
int sp_put_message_in(struct mta_spool_txn *t, MDB_txn *txn, const char *qid,
		      const struct mta_envelope *env,
		      const struct mta_body *body);
int sp_del_message_in(struct mta_spool_txn *t, MDB_txn *txn, const char *qid,
		      const struct mta_envelope *env);
/* True if qid is held (spool_admin.c). */
bool sp_held_in(struct mta_spool *sp, MDB_txn *txn, const char *qid);

#endif
