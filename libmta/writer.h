/*
 * writer.h - the spool writer thread: group commit.
 *
 * DESCRIPTION
 *	mta_writer_start() starts the one thread that owns every LMDB write
 *	transaction.  The loop thread hands it commit requests with
 *	mta_writer_submit(); the writer takes every request waiting, puts them
 *	all in one transaction (each in its own nested transaction, so one
 *	failure does not sink the others), commits and syncs once, then posts
 *	the requests back to the loop (uv_async) where each req->done(req) is
 *	called with req->result set: 0 = durable, MTA_EMAPFULL / -ENOSPC /
 *	other = nothing of the message was written.  A session sends its 250
 *	from done(), so a 250 always follows a completed sync.
 *
 *	mta_writer_stop() (loop thread) finishes requests already submitted,
 *	calls their done() and joins the thread; then it frees the writer.
 *
 * THREADS
 *	submit/stop: loop thread.  done callbacks: loop thread.
 *
 * OWNERSHIP
 *	A struct mta_commit is caller-owned (embed it in the session); qid,
 *	env and body are borrowed until done() is called and must not be
 *	touched by the loop thread meanwhile.
 *
 * ASYNC CONTRACT
 *	mta_writer_submit() never fails and calls done exactly once, later,
 *	on the loop thread.
 */
#ifndef MTA_WRITER_H
#define MTA_WRITER_H

#include "spool.h"

#include <uv.h>

struct mta_writer;

struct mta_commit {
	char qid[MTA_QID_LEN + 1];
	struct mta_envelope *env;
	struct mta_body *body;
	int result;
	void (*done)(struct mta_commit *c);
	struct mta_commit *next; /* private */
};

int mta_writer_start(uv_loop_t *loop, struct mta_spool *sp,
		     struct mta_writer **out);
void mta_writer_submit(struct mta_writer *w, struct mta_commit *c);
void mta_writer_stop(struct mta_writer *w);

#endif
