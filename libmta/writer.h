/*
 * writer.h - the spool writer thread: group commit.
 *
 * DESCRIPTION
 *	mta_writer_start() starts the one thread that owns every LMDB write
 *	transaction.  The loop thread hands it commit requests with
 *	mta_writer_submit() (mutex-protected FIFOs and a condition
 *	variable); the writer takes a batch of waiting requests, puts them
 *	all in one transaction (each in its own nested transaction, so one
 *	failure such as MTA_EMAPFULL does not sink the others), commits and
 *	syncs once, then posts the requests back to the loop (uv_async)
 *	where each req->done(req) is called, in batch order, with
 *	req->result set: 0 = durable, MTA_EMAPFULL / -ENOSPC / other =
 *	nothing of the message was written.  If the commit itself fails,
 *	every request of the batch gets the commit error.  A message that
 *	fails with MTA_EAGAIN (MDB_TXN_FULL: too many dirty pages in one
 *	transaction) in a batch of several is retried at once in a
 *	transaction of its own; that result is final.  A session sends its
 *	250 from done(), so a 250 always follows a completed sync.
 *
 *	Priority: delivery outcomes (MTA_COMMIT_UPDATE) wait in a queue of
 *	their own and go first.  Each round of the writer takes every
 *	waiting outcome (at most MTA_WRITER_BATCH_MAX) and then one batch
 *	of the other requests, at most MTA_WRITER_BATCH_MAX requests and
 *	MTA_WRITER_BATCH_BYTES of bodies (at least one request).  When that
 *	batch is small (MTA_WRITER_MERGE_MAX requests, MTA_WRITER_MERGE_BYTES)
 *	it shares the outcomes' transaction, after them; otherwise the
 *	outcomes commit alone first and the batch follows in its own
 *	transaction.  So a "sent" state waits for at most the transaction in
 *	progress and one bounded batch: that wait is the window in which a
 *	crash makes mtad deliver a message twice (docs/reliability.md).
 *	Within each queue the order is the submission order; an outcome may
 *	become durable before new mail submitted earlier.
 *
 *	Each batch logs one debug line: event=commit n= ok= bytes= usec=
 *	(and error= when the batch failed as a whole).
 *
 *	mta_writer_stop() (loop thread) lets the thread finish every request
 *	already submitted, joins it, calls the remaining done() callbacks
 *	itself (before it returns), and closes the uv_async handle.  The
 *	writer memory is freed by the close callback, so the caller must run
 *	the loop once more (uv_run) before uv_loop_close().  No submit after
 *	stop, not even from a done() callback run by stop.
 *
 * THREADS
 *	start/submit/stop: loop thread.  done callbacks: loop thread.  The
 *	spool's write transactions: the writer thread only.
 *
 * OWNERSHIP
 *	A struct mta_commit is caller-owned (embed it in the session); qid,
 *	env and body are borrowed until done() is called and must not be
 *	touched by the loop thread meanwhile (the writer reads them; the
 *	mutex hand-over orders the accesses).  The writer borrows loop and
 *	spool until stop's close callback has run.
 *
 * ERRORS
 *	start: -ENOMEM, -errno from pthread or libuv.  When start fails
 *	after the async handle was initialised, it has been closed: run the
 *	loop before closing it.
 *
 * ASYNC CONTRACT
 *	mta_writer_submit() never fails and calls done exactly once, later,
 *	on the loop thread (from the loop, or from mta_writer_stop()).
 */
#ifndef MTA_WRITER_H
#define MTA_WRITER_H

#include "spool.h"

#include <uv.h>

struct mta_writer;

/* Batch bounds (see DESCRIPTION): a batch holds at most this many
 * requests and this many body bytes; a batch of new mail this small
 * shares the transaction of the outcomes taken before it. */
#define MTA_WRITER_BATCH_MAX 256
#define MTA_WRITER_BATCH_BYTES (4u << 20)
#define MTA_WRITER_MERGE_MAX 16
#define MTA_WRITER_MERGE_BYTES (64u << 10)

enum mta_commit_kind {
	MTA_COMMIT_NEW = 0,    /* store a new message (qid, env, body) */
	MTA_COMMIT_UPDATE = 1, /* mta_spool_update_message() */
	MTA_COMMIT_STS = 2,    /* mta_spool_sts_put(key, val, vlen) */
	MTA_COMMIT_COUNT = 3,  /* mta_spool_counter_add(key, vlen) */
	MTA_COMMIT_ADMIN = 4,  /* mta_spool_admin(admin_op, qid, admin_now_us,
				* new_qid, new_env, new_body) */
};

struct mta_commit {
	char qid[MTA_QID_LEN + 1];
	struct mta_envelope *env;
	struct mta_body *body;
	int kind; /* enum mta_commit_kind */
	/* MTA_COMMIT_UPDATE only: */
	int64_t old_due_us, new_due_us; /* new < 0: remove the message */
	const char *new_qid;		/* optional DSN stored atomically */
	struct mta_envelope *new_env;
	struct mta_body *new_body;
	/* MTA_COMMIT_STS only (val NULL deletes): */
	const char *key;
	const void *val;
	size_t vlen;
	/* MTA_COMMIT_ADMIN only (enum mta_spool_admin_op): */
	int admin_op;
	int64_t admin_now_us;
	int result;
	void (*done)(struct mta_commit *c);
	struct mta_commit *next; /* private */
};

int mta_writer_start(uv_loop_t *loop, struct mta_spool *sp,
		     struct mta_writer **out);
void mta_writer_submit(struct mta_writer *w, struct mta_commit *c);
void mta_writer_stop(struct mta_writer *w);

#endif
