/*
 * spool.h - the LMDB spool: every accepted message, durably.
 *
 * DESCRIPTION
 *	One LMDB environment in spool.dir with named databases:
 *	  meta      "schema" -> u32 version (checked at open)
 *	  messages  qid -> envelope record (envelope.h encoding)
 *	  bodies    qid(16) + be32 chunk number -> up to one page of body bytes
 *	  due       be64 due time (unix us) + qid -> "" (scheduler order)
 *	  dest      destination (lower-case domain, or relayhost) -> qid
 *	            (MDB_DUPSORT), so the scheduler finds all mail for one
 *	            destination
 *	  sts       MTA-STS policy cache (issue #5; created empty now)
 *	Queue ids: MTA_QID_LEN printable characters, Crockford base32 of the
 *	arrival time in microseconds (11 chars) then 5 chars of a per-process
 *	sequence, so byte order is arrival order.
 *
 *	mta_spool_open() creates the directory (and its tmp/ subdirectory for
 *	body spill files) if needed, opens the environment with the map size
 *	max_size (MDB_MAP_FULL then means "spool full"), creates or checks the
 *	schema: a different version fails with MTA_ESCHEMA and touches
 *	nothing.  readonly opens never write (mtaq).
 *
 *	Writing happens only on the writer thread (writer.h) through a
 *	transaction: mta_spool_begin(), any number of mta_spool_put_message(),
 *	mta_spool_commit() or mta_spool_abort().  put_message runs in a nested
 *	transaction: when it fails (MTA_EMAPFULL, I/O error) nothing of that
 *	message remains and the outer transaction stays usable.  commit
 *	returns 0 only when the data is on stable storage (fdatasync).
 *
 *	Readers (any thread, short read transactions, never held across a
 *	wait): mta_spool_foreach() calls cb for every message in qid order;
 *	mta_spool_get() loads one envelope; mta_spool_read_body() copies body
 *	bytes at an offset.  mta_spool_stat() counts messages.
 *
 * THREADS
 *	An mta_spool may be used from the loop thread (readers) and the writer
 *	thread (the only writer) at once (MDB_NOTLS).
 *
 * ERRORS
 *	LMDB codes are translated here: MDB_MAP_FULL -> MTA_EMAPFULL,
 *	MDB_NOTFOUND -> MTA_ENOTFOUND, MDB_CORRUPTED/MDB_PAGE_NOTFOUND ->
 *	MTA_ECORRUPT, errno values -> -errno, anything else -> MTA_EDB.
 */
#ifndef MTA_SPOOL_H
#define MTA_SPOOL_H

#include "envelope.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_QID_LEN 16
#define MTA_SPOOL_SCHEMA 1

struct mta_spool;
struct mta_spool_txn;

struct mta_spool_opts {
	const char *dir;
	uint64_t max_size; /* LMDB map size in bytes */
	bool readonly;
};

/* A message body being received: memory up to spill_threshold, then an
 * unlinked temporary file (O_TMPFILE) in tmpdir.  Caller-owned. */
struct mta_body {
	struct mta_buf mem;
	int fd; /* -1 while in memory */
	uint64_t len; /* total bytes appended */
	size_t spill_threshold;
	const char *tmpdir; /* borrowed */
};

void mta_qid_make(char out[MTA_QID_LEN + 1], uint64_t usec, uint32_t seq);

void mta_body_init(struct mta_body *b, const char *tmpdir,
		   size_t spill_threshold);
int mta_body_append(struct mta_body *b, const void *p, size_t n);
/* Copies up to n bytes at off; *got = bytes copied (0 at the end). */
int mta_body_pread(const struct mta_body *b, uint64_t off, void *p, size_t n,
		   size_t *got);
void mta_body_free(struct mta_body *b);

int mta_spool_open(const struct mta_spool_opts *o, struct mta_spool **out);
void mta_spool_close(struct mta_spool *sp);
const char *mta_spool_tmpdir(const struct mta_spool *sp);

int mta_spool_begin(struct mta_spool *sp, struct mta_spool_txn **out);
int mta_spool_put_message(struct mta_spool_txn *t, const char *qid,
			  const struct mta_envelope *env,
			  const struct mta_body *body);
int mta_spool_commit(struct mta_spool_txn *t);
void mta_spool_abort(struct mta_spool_txn *t);

struct mta_spool_entry {
	const char *qid;
	const struct mta_envelope *env; /* valid during the callback */
	int64_t due_us;			 /* earliest next attempt */
};
/* cb returns 0 to continue, non-zero to stop (returned by foreach). */
int mta_spool_foreach(struct mta_spool *sp,
		      int (*cb)(void *ud, const struct mta_spool_entry *e),
		      void *ud);
int mta_spool_get(struct mta_spool *sp, const char *qid,
		  struct mta_envelope *out);
int mta_spool_read_body(struct mta_spool *sp, const char *qid, uint64_t off,
			void *buf, size_t len, size_t *got);
int mta_spool_stat(struct mta_spool *sp, uint64_t *nmessages);

#endif
