/*
 * spool.h - the LMDB spool: every accepted message, durably.
 *
 * DESCRIPTION
 *	One LMDB environment in spool.dir with named databases:
 *	  meta      "schema" -> be32 version (checked at open)
 *	  messages  qid -> envelope record (envelope.h encoding; its size
 *	            field is the stored body length)
 *	  bodies    qid(16) + be32 chunk number -> body bytes
 *	  due       be64 due time (unix us) + qid -> "" (scheduler order);
 *	            a new message is due at its arrival time
 *	  dest      lower-cased recipient domain -> qid (MDB_DUPSORT), one
 *	            entry per distinct domain of a message, so the scheduler
 *	            finds all mail for one destination.  A recipient without
 *	            '@domain' is not indexed.
 *	  sts       MTA-STS policy cache: policy domain -> sts.h cache record
 *	  tlsrpt    TLS report counters: "<date> <domain> <type> <result>" -> u64
 *	  keys      key continuity: policy domain -> spool_keys.h record
 *	Queue ids: MTA_QID_LEN printable characters, Crockford base32
 *	("0123456789ABCDEFGHJKMNPQRSTVWXYZ") of the arrival time in
 *	microseconds (11 chars, big-endian) then 5 chars of a per-process
 *	sequence (its low 25 bits), so byte order is arrival order.
 *	mta_qid_make() only formats; the caller supplies time and sequence.
 *
 *	Body chunks: every chunk but the last holds exactly
 *	page size - 16 bytes (4080 with 4 KiB
 *	pages).  A value that large always lives in exactly one overflow
 *	page (LMDB's page header is 16 bytes), so a freed chunk frees one
 *	page, and LMDB 0.9 - which reuses runs of contiguous free pages
 *	poorly - can always reuse it: the file does not grow under churn.
 *	The price is one B-tree entry per 4 KiB of body.
 *
 *	mta_spool_open() creates the directory and its tmp/ subdirectory
 *	(mode 0700; tmp/ holds spilled bodies) if needed, opens the
 *	environment (MDB_NOTLS) with the map size max_size (MDB_MAP_FULL
 *	then means "spool full"), clears stale reader slots of killed
 *	processes (mdb_reader_check), and creates or checks the schema: a
 *	fresh environment gets meta "schema" = MTA_SPOOL_SCHEMA; a different
 *	version fails with MTA_ESCHEMA and writes nothing.  readonly opens
 *	(mtaq) never write or create anything but LMDB's lock file, ignore
 *	max_size (the map size is taken from the file) and fail with -ENOENT
 *	when the spool does not exist.
 *
 *	Before LMDB maps data.mdb, open reads its two meta pages with plain
 *	reads and checks them (magic 0xBEEFC0DE, data version 1, page size)
 *	and that the file is at least (last page + 1) * page size bytes
 *	long, by the meta page with the larger transaction id, as LMDB
 *	picks it.  A damaged, truncated or emptied (0 bytes) file fails with
 *	MTA_ECORRUPT and, when opts->why is set, a sentence saying what is
 *	wrong and what to do (restore from a backup, mdb_copy, mdb_dump):
 *	mapping a truncated file makes every access past its end a SIGBUS,
 *	and LMDB would take an emptied file for a new environment, silently
 *	replacing a spool by an empty one.  Only a missing data.mdb makes a
 *	new spool (writable opens only).
 *
 *	mta_spool_lock() makes dir (0700) if needed and takes an exclusive
 *	flock(2) on <dir>/mtad.lock (created 0600, opened O_CLOEXEC), then
 *	writes the caller's PID into it.  *fd is the descriptor to keep open
 *	for the life of the process: the lock ends when it is closed or the
 *	process dies.  When another process holds the lock it returns
 *	MTA_EAGAIN and *holder is the PID written in the file (0 when none
 *	is readable).  Only mtad takes it: one daemon per spool; the spool
 *	tools work beside it without (LMDB serialises writers itself).
 *
 *	mta_spool_corrupt() tells whether damage was seen since open: an
 *	LMDB operation that returned MDB_CORRUPTED, MDB_PAGE_NOTFOUND,
 *	MDB_PANIC (a failed meta page write left the environment unusable)
 *	or MDB_BAD_TXN, or an envelope record that did not decode.  Each is
 *	logged as event=spool_corrupt at error level (the first, then at
 *	every power of two of their count) with what to do; the health
 *	endpoint reads the flag.
 *
 *	mta_spool_trap_sigbus() installs a SIGBUS handler that writes one
 *	line naming the spool as damaged and what to do, then dies of the
 *	signal as before.  LMDB has no page checksums: a damaged page can
 *	point past the end of data.mdb, and the access is a SIGBUS no caller
 *	can catch; this makes it loud instead of a bare "Bus error".  The
 *	message is formatted once per process (the handler's only state).
 *
 *	Writing happens only on the writer thread (writer.h) through a
 *	transaction: mta_spool_begin(), any number of mta_spool_put_message(),
 *	mta_spool_commit() or mta_spool_abort() (both free the txn, whatever
 *	the result).  put_message writes the envelope (with size set to the
 *	body length; arrival_us as given), the body read from the mta_body
 *	with mta_body_pread (body may be NULL: empty), the due and dest
 *	entries, all in a nested transaction: when it fails (MTA_EMAPFULL,
 *	-EEXIST for a qid already stored, I/O error) nothing of that message
 *	remains and the outer transaction stays usable.  commit returns 0
 *	only when the data is on stable storage (LMDB's default sync: data
 *	fdatasync, then an O_DSYNC meta page write).
 *
 *	Readers (any thread, short read transactions, never held across a
 *	callback): mta_spool_foreach() calls cb for every message in qid
 *	order, one read transaction per message, so messages committed
 *	meanwhile may or may not be seen.  A record that does not decode is
 *	skipped; foreach then goes on and finally returns the first such
 *	error (MTA_ECORRUPT / MTA_ESCHEMA) unless cb stopped it (its value
 *	is returned) or a database error ended it.  due_us of an entry is
 *	the earliest next attempt over its queued or deferred recipients
 *	(next_attempt_us, or arrival_us when 0), INT64_MAX when none.
 *	mta_spool_get() loads one envelope into out (overwritten on success,
 *	not freed first; MTA_ENOTFOUND when absent).  mta_spool_read_body()
 *	copies up to len body bytes at off, across chunks; *got = 0 at or
 *	past the end.  mta_spool_stat() counts messages (mdb_stat, O(1)).
 *	mta_spool_tmpdir() names the tmp/ directory for mta_body spills.
 *
 *	struct mta_body keeps a body being received in memory up to
 *	spill_threshold bytes; the append that would pass it moves the
 *	buffered bytes to an unlinked temporary file in tmpdir (O_TMPFILE,
 *	or mkostemp + unlink where the file system lacks it) and appends
 *	there.  mta_body_pread() copies at an offset without moving a file
 *	offset, so the writer thread may read while nobody appends.
 *
 *	Administration (mtactl, always through mtad's control socket and
 *	the writer): the "held" database maps a qid to a held record
 *	("MTAH", be16 version 1, be64 unix us when it was held; readers
 *	check all three).  A held message has no due entry, so the
 *	scheduler never loads it, and mta_spool_update_message() puts no
 *	due entry back for a held qid (an attempt in flight when the hold
 *	was committed ends without rescheduling it).  mta_spool_admin()
 *	runs one operation in a nested transaction: HOLD (removes the due
 *	entry, stores the held record; -EALREADY when held), RELEASE
 *	(removes the held record, sets every pending recipient's next
 *	attempt to now_us, due now; -EALREADY when not held), FLUSH (the
 *	same without the held record; -EPERM when held), DELETE (removes
 *	the message, its body, its index entries and its held record;
 *	new_qid/new_env/new_body, when given, store a new message - the
 *	bounce DSN - in the same nested transaction), NOP (nothing: a
 *	barrier behind earlier requests), UNDUE (the scheduler found a due
 *	entry whose message is gone - an admin change raced its load -:
 *	removes the due entry (now_us = its due time, qid) when qid is not
 *	in the spool, and does nothing, returning 0, when it is).  MTA_ENOTFOUND when qid is not
 *	in the spool.  The due entry removed is the one the envelope
 *	implies (earliest next attempt of a pending recipient, or arrival).
 *	mta_spool_held_get() / _held_foreach() read held records;
 *	mta_spool_dest_foreach() walks the dest index in (domain, qid)
 *	order in one read transaction - qids are time-ordered, so the
 *	first qid of a domain is its oldest message.
 *
 * THREADS
 *	An mta_spool may be used from the loop thread (readers) and the writer
 *	thread (the only writer) at once (MDB_NOTLS).  A txn belongs to the
 *	thread that began it.  open/close: one thread, nothing else running.
 *	An mta_body belongs to one thread at a time.
 *
 * OWNERSHIP
 *	opts->dir is copied.  The spool owns its LMDB environment; close it
 *	with mta_spool_close().  Strings in a foreach entry are valid during
 *	the callback only.  An mta_body is caller-owned; mta_body_free()
 *	closes its file and leaves it empty (init again to reuse).
 *
 * ERRORS
 *	LMDB codes are translated here, once: MDB_MAP_FULL -> MTA_EMAPFULL,
 *	MDB_NOTFOUND -> MTA_ENOTFOUND, MDB_CORRUPTED/MDB_PAGE_NOTFOUND ->
 *	MTA_ECORRUPT, MDB_INVALID/MDB_VERSION_MISMATCH -> MTA_ESCHEMA,
 *	MDB_BAD_VALSIZE -> MTA_ETOOBIG, MDB_TXN_FULL -> MTA_EAGAIN (the
 *	transaction holds too many dirty pages: retry the message in a
 *	transaction of its own), MDB_KEYEXIST -> -EEXIST, errno values ->
 *	-errno, anything else -> MTA_EDB.  Writing through a readonly spool:
 *	-EROFS.
 *
 *	Out of space: a file system that fills in the middle of a write
 *	gives a short write, which LMDB reports as EIO.  A commit failing
 *	with EIO while the spool's file system has less than 1 MiB (or 1 %)
 *	available returns -ENOSPC, so the SMTP server answers 452 4.3.1; an
 *	EIO with room left stays -EIO (451 4.3.0).  ENOSPC and EDQUOT from
 *	LMDB or from a body spill file are passed on as -ENOSPC/-EDQUOT.
 *
 * SECURITY
 *	Envelope strings come from SMTP clients; the record codec bounds
 *	every length (envelope.h).  Recipient domains longer than 511 bytes
 *	(LMDB's key limit) are cut; the SMTP server bounds them far lower.
 *	Spill files are 0600 in a 0700 directory and unlinked at creation.
 *
 * CAVEATS
 *	The map does not grow by itself: MTA_EMAPFULL is final for the
 *	message; growing (mdb_env_set_mapsize with no txn active) is left to
 *	a later change.  A readonly spool adopts a map grown by another
 *	process when a read txn reports MDB_MAP_RESIZED.  Never open the
 *	spool before fork() nor over NFS.
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
	char *why;	/* optional: why open failed, for a person */
	size_t whylen;
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
/* One daemon per spool: flock on <dir>/mtad.lock; MTA_EAGAIN and the
 * holder's PID when another process has it. */
int mta_spool_lock(const char *dir, int *fd, long *holder);
/* Damage seen at run time (any thread). */
bool mta_spool_corrupt(const struct mta_spool *sp);
void mta_spool_trap_sigbus(const char *prog, const char *dir);
const char *mta_spool_tmpdir(const struct mta_spool *sp);

int mta_spool_begin(struct mta_spool *sp, struct mta_spool_txn **out);
int mta_spool_put_message(struct mta_spool_txn *t, const char *qid,
			  const struct mta_envelope *env,
			  const struct mta_body *body);
/* Rewrites the envelope of qid (delivery state) and moves its due entry
 * from old_due_us to new_due_us; new_due_us < 0 removes the message, its
 * body and index entries (it is finished).  When new_qid is not NULL a new
 * message (a DSN) is stored in the same nested transaction, so a bounce
 * and the state that caused it are committed together or not at all.
 * MTA_ENOTFOUND when qid is no longer in the spool. */
int mta_spool_update_message(struct mta_spool_txn *t, const char *qid,
			     const struct mta_envelope *env,
			     int64_t old_due_us, int64_t new_due_us,
			     const char *new_qid,
			     const struct mta_envelope *new_env,
			     const struct mta_body *new_body);
/* MTA-STS policy cache, keyed by policy domain (lower case).  put with
 * rec == NULL deletes.  get copies the record into out; MTA_ENOTFOUND
 * when there is none.  foreach: one short read transaction, cb gets the
 * record bytes valid during the call only (must copy what it keeps). */
int mta_spool_sts_put(struct mta_spool_txn *t, const char *domain,
		      const void *rec, size_t len);
int mta_spool_sts_get(struct mta_spool *sp, const char *domain,
		      struct mta_buf *out);
int mta_spool_sts_foreach(struct mta_spool *sp,
			  int (*cb)(void *ud, const char *domain,
				    const uint8_t *rec, size_t len),
			  void *ud);
/* TLS report counters (RFC 8460 material), key "<UTC date> <policy
 * domain> <policy type> <result type>", value a count.  add runs in a
 * nested transaction; foreach: one short read transaction. */
int mta_spool_counter_add(struct mta_spool_txn *t, const char *key,
			  int64_t delta);
int mta_spool_counter_foreach(struct mta_spool *sp,
			      int (*cb)(void *ud, const char *key,
					uint64_t value),
			      void *ud);
/* A text note beside the counters (key "P ...": a report's policy
 * text, tlsrpt.h); counter_foreach skips notes, tlsrpt_foreach walks
 * everything (value as stored; a counter is 8 bytes big-endian). */
int mta_spool_tlsrpt_note_put(struct mta_spool_txn *t, const char *key,
			      const char *text);
int mta_spool_tlsrpt_foreach(struct mta_spool *sp,
			     int (*cb)(void *ud, const char *key,
				       const uint8_t *val, size_t len),
			     void *ud);
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
/* Running totals kept in meta by every put and removal (O(1));
 * MTA_ENOTFOUND on a spool never opened for writing by this version. */
int mta_spool_totals(struct mta_spool *sp, uint64_t *messages,
		     uint64_t *rcpts, uint64_t *bytes);
/* Figures for the metrics endpoint, from one short read transaction:
 * the LMDB map's size and the bytes in use (last page + 1), the held
 * and MTA-STS cache entries (-1 when the database is absent), the
 * arrival time of the oldest message (-1 when the spool is empty). */
struct mta_spool_info {
	uint64_t map_size, map_used;
	int64_t held, sts_policies;
	int64_t oldest_arrival_us;
};
int mta_spool_info(struct mta_spool *sp, struct mta_spool_info *out);
/* Walks the due index in time order, after the entry (from_us, from_qid)
 * or from the start when from_qid is NULL, and calls cb(ud, qid, due_us)
 * for each entry due at now_us, at most max of them (cb returns non-zero
 * to stop).
 * *next_due_us is the due time of the first entry not visited (later than
 * now, or beyond max), or -1 when the index ended.  One short read
 * transaction: cb must only record what it sees. */
int mta_spool_due(struct mta_spool *sp, int64_t from_us, const char *from_qid,
		  int64_t now_us, size_t max,
		  int (*cb)(void *ud, const char *qid, int64_t due_us),
		  void *ud, int64_t *next_due_us);

/* Administration: see DESCRIPTION. */
enum mta_spool_admin_op {
	MTA_SPOOL_NOP = 0,
	MTA_SPOOL_HOLD = 1,
	MTA_SPOOL_RELEASE = 2,
	MTA_SPOOL_FLUSH = 3,
	MTA_SPOOL_DELETE = 4,
	MTA_SPOOL_UNDUE = 5,
};
int mta_spool_admin(struct mta_spool_txn *t, enum mta_spool_admin_op op,
		    const char *qid, int64_t now_us, const char *new_qid,
		    const struct mta_envelope *new_env,
		    const struct mta_body *new_body);
int mta_spool_held_get(struct mta_spool *sp, const char *qid,
		       int64_t *since_us);
int mta_spool_held_foreach(struct mta_spool *sp,
			   int (*cb)(void *ud, const char *qid,
				     int64_t since_us),
			   void *ud);
int mta_spool_dest_foreach(struct mta_spool *sp,
			   int (*cb)(void *ud, const char *domain,
				     const char *qid),
			   void *ud);

/* Key continuity records (the bytes; spool_keys.h gives them meaning).
 * raw_get copies a domain's record into out (MTA_ENOTFOUND when none,
 * or when a read-only spool predates the database).  update runs, in a
 * nested transaction, fn(ud, old record or NULL, its length, out):
 * fn returns 0 and fills out (empty: delete the record), or an error
 * that is returned with nothing written. */
int mta_spool_keys_raw_get(struct mta_spool *sp, const char *domain,
			   struct mta_buf *out);
int mta_spool_keys_update(struct mta_spool_txn *t, const char *domain,
			  int (*fn)(void *ud, const uint8_t *old,
				    size_t oldlen, struct mta_buf *out),
			  void *ud);

#endif
