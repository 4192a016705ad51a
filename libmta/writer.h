/*
 * writer.h - the spool writer thread: group commit.
 *
 * DESCRIPTION
 *	mta_writer_start() starts the one thread that owns every LMDB write
 *	transaction.  The loop thread hands it typed commit requests, one
 *	submit function per kind: mta_writer_submit_new() (a received
 *	message), mta_writer_submit_update() (a delivery outcome, with an
 *	optional DSN), mta_writer_submit_sts_put() (MTA-STS cache entry),
 *	mta_writer_submit_counter_add() (TLS report counter),
 *	mta_writer_submit_admin() (hold, release, flush, delete, bounce from
 *	the control socket), mta_writer_submit_keys() (key continuity:
 *	learn a key, note a held one, accept a domain's change;
 *	spool_keys.h).  A struct
 *	mta_commit is a tagged union: kind says which variant of c->u the
 *	request carries, and only the submit function sets it (mutex-
 *	protected FIFOs and a condition
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
 *	start/submit/stop: loop thread.  done callbacks: loop thread (the
 *	loop of the port the request was submitted through, see Ports
 *	below).  The spool's write transactions: the writer thread only.
 *
 * OWNERSHIP
 *	A struct mta_commit is caller-owned (embed it in the session); the
 *	strings, envelopes and bodies its variant points to are borrowed
 *	until done() is called and must not be touched by the loop thread
 *	meanwhile (the writer reads them; the
 *	mutex hand-over orders the accesses).  The writer borrows loop and
 *	spool until stop's close callback has run.
 *
 * ERRORS
 *	start: -ENOMEM, -errno from pthread or libuv.  When start fails
 *	after the async handle was initialised, it has been closed: run the
 *	loop before closing it.
 *
 * ASYNC CONTRACT
 *	mta_writer_submit_*() never fail and call done exactly once, later,
 *	on the loop thread (from the loop, or from mta_writer_stop()).
 */
#ifndef MTA_WRITER_H
#define MTA_WRITER_H

#include "metrics.h"
#include "spool.h"
#include "spool_keys.h"

#include <uv.h>

struct mta_writer;
struct mta_writer_port;

/* Batch bounds (see DESCRIPTION): a batch holds at most this many
 * requests and this many body bytes; a batch of new mail this small
 * shares the transaction of the outcomes taken before it. */
#define MTA_WRITER_BATCH_MAX 256
#define MTA_WRITER_BATCH_BYTES (4u << 20)
#define MTA_WRITER_MERGE_MAX 16
#define MTA_WRITER_MERGE_BYTES (64u << 10)

/* The kinds of request, one submit function each. */
enum mta_commit_kind {
	MTA_COMMIT_NEW,	    /* mta_writer_submit_new() */
	MTA_COMMIT_UPDATE,  /* mta_writer_submit_update() */
	MTA_COMMIT_STS_PUT, /* mta_writer_submit_sts_put() */
	MTA_COMMIT_COUNTER, /* mta_writer_submit_counter_add() */
	MTA_COMMIT_ADMIN,   /* mta_writer_submit_admin() */
	MTA_COMMIT_KEYS,    /* mta_writer_submit_keys() */
};

/* MTA_COMMIT_NEW: store a new message (mta_spool_put_message()). */
struct mta_commit_new {
	const char *qid;
	const struct mta_envelope *env;
	const struct mta_body *body;
};

/* MTA_COMMIT_UPDATE: a delivery outcome (mta_spool_update_message()):
 * rewrite env of qid, move its due entry; new_due_us < 0 removes the
 * message.  dsn_qid optional: a DSN (dsn_env, dsn_body) stored in the
 * same nested transaction. */
struct mta_commit_update {
	const char *qid;
	const struct mta_envelope *env;
	int64_t old_due_us, new_due_us;
	const char *dsn_qid;
	const struct mta_envelope *dsn_env;
	const struct mta_body *dsn_body;
};

/* MTA_COMMIT_STS_PUT: MTA-STS cache entry (mta_spool_sts_put());
 * rec NULL deletes the domain's entry. */
struct mta_commit_sts_put {
	const char *domain;
	const void *rec;
	size_t len;
};

/* MTA_COMMIT_ADMIN: an operator's change through the control socket
 * (mta_spool_admin()): op (enum mta_spool_admin_op) on qid at now_us;
 * dsn_qid optional: the bounce DSN stored in the same transaction. */
struct mta_commit_admin {
	int op;
	const char *qid;
	int64_t now_us;
	const char *dsn_qid;
	const struct mta_envelope *dsn_env;
	const struct mta_body *dsn_body;
};

/* MTA_COMMIT_COUNTER: TLS report counter (mta_spool_counter_add()). */
struct mta_commit_counter {
	const char *key;
	int64_t delta;
	const char *note_key; /* or NULL: mta_spool_tlsrpt_note_put() */
	const char *note;
};

/* MTA_COMMIT_KEYS: a key continuity change (mta_spool_keys_apply());
 * ACCEPT with nothing pending ends with MTA_ENOTFOUND. */
struct mta_commit_keys {
	const struct mta_spool_keys_op *op;
};

/*
 * One request.  Caller-owned; the submit functions set kind and the
 * variant of that kind and nothing else reads another variant.  The
 * pointers in the variant are borrowed until done() is called.  result
 * is valid in done() only.
 */
struct mta_commit {
	enum mta_commit_kind kind; /* set by the submit function */
	union {
		struct mta_commit_new msg;
		struct mta_commit_update update;
		struct mta_commit_sts_put sts;
		struct mta_commit_counter counter;
		struct mta_commit_admin admin;
		struct mta_commit_keys keys;
	} u;
	int result;
	void (*done)(struct mta_commit *c);
	struct mta_commit *next; /* private */
	struct mta_writer_port *port; /* private: where done() runs */
};

typedef void (*mta_commit_done_fn)(struct mta_commit *c);

int mta_writer_start(uv_loop_t *loop, struct mta_spool *sp,
		     struct mta_writer **out);
/* New mail: the "pending" queue, committed after waiting outcomes. */
void mta_writer_submit_new(struct mta_writer *w, struct mta_commit *c,
			   const char *qid, const struct mta_envelope *env,
			   const struct mta_body *body,
			   mta_commit_done_fn done);
/* Delivery outcome: the "urgent" queue (see Priority above).  *u is
 * copied into c (u may point into c). */
void mta_writer_submit_update(struct mta_writer *w, struct mta_commit *c,
			      const struct mta_commit_update *u,
			      mta_commit_done_fn done);
void mta_writer_submit_sts_put(struct mta_writer *w, struct mta_commit *c,
			       const char *domain, const void *rec,
			       size_t len, mta_commit_done_fn done);
void mta_writer_submit_counter_add(struct mta_writer *w,
				   struct mta_commit *c, const char *key,
				   int64_t delta, mta_commit_done_fn done);
/* The same, and in the same transaction the text note under note_key
 * (the report's policy text, tlsrpt.h); both borrowed until done(). */
void mta_writer_submit_counter_note(struct mta_writer *w,
				    struct mta_commit *c, const char *key,
				    int64_t delta, const char *note_key,
				    const char *note, mta_commit_done_fn done);
/* Key continuity: the "pending" queue.  *op is borrowed until done. */
void mta_writer_submit_keys(struct mta_writer *w, struct mta_commit *c,
			    const struct mta_spool_keys_op *op,
			    mta_commit_done_fn done);
/* Operator change: the "pending" queue, like new mail.  *a is copied. */
void mta_writer_submit_admin(struct mta_writer *w, struct mta_commit *c,
			     const struct mta_commit_admin *a,
			     mta_commit_done_fn done);
/* Counters of the writer (metrics.h: commits, their commit-and-sync
 * time, the start of the batch in progress for the stuck check); taken
 * by the thread at its next batch.  m must outlive the writer. */
/*
 * Ports: requests from another loop thread (mtad's inbound shards,
 * server.threads).  mta_writer_port_open() makes a port on loop (call
 * it on the thread that runs loop, or before that loop runs); requests
 * submitted through it are committed with everyone else's and their
 * done() is called on that loop's thread.  mta_writer_port_close(), on
 * the same thread, once every done() of the port has run: closes the
 * handle (the memory is freed when the loop runs its close callback).
 * Every port is closed before mta_writer_stop().  0, -ENOMEM or a
 * libuv code.
 */
int mta_writer_port_open(struct mta_writer *w, uv_loop_t *loop,
			 struct mta_writer_port **out);
void mta_writer_port_submit_new(struct mta_writer_port *p,
				struct mta_commit *c, const char *qid,
				const struct mta_envelope *env,
				const struct mta_body *body,
				mta_commit_done_fn done);
void mta_writer_port_close(struct mta_writer_port *p);
void mta_writer_set_metrics(struct mta_writer *w, struct mta_metrics *m);
void mta_writer_stop(struct mta_writer *w);

#endif
