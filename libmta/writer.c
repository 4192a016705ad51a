#include "writer.h"

#include "err.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

/* Where the done() callbacks of one loop's requests go. */
struct mta_writer_port {
	struct mta_writer *w;
	uv_async_t async;
	/* under w->mu */
	struct mta_commit *done, *done_tail;
	size_t inflight; /* submitted, done() not yet called */
	bool closed;
};

struct mta_writer {
	uv_loop_t *loop;
	struct mta_spool *sp;
	struct mta_writer_port port0; /* the loop of mta_writer_start() */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* under mu: urgent holds delivery outcomes (MTA_COMMIT_UPDATE),
	 * pending everything else, each in submission order */
	struct mta_commit *urgent, *urgent_tail;
	struct mta_commit *pending, *pending_tail;
	bool stopping;
	struct mta_metrics *metrics; /* under mu; the registry is atomic */
	struct mta_metrics *metrics_now; /* writer thread's copy */
};

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Body bytes a request writes: what makes a batch slow to commit. */
static uint64_t req_bytes(const struct mta_commit *c)
{
	switch (c->kind) {
	case MTA_COMMIT_NEW:
		return c->u.msg.body != NULL ? c->u.msg.body->len : 0;
	case MTA_COMMIT_UPDATE:
		return c->u.update.dsn_body != NULL ? c->u.update.dsn_body->len
						    : 0;
	case MTA_COMMIT_ADMIN:
		return c->u.admin.dsn_body != NULL ? c->u.admin.dsn_body->len
						   : 0;
	case MTA_COMMIT_STS_PUT:
	case MTA_COMMIT_COUNTER:
	case MTA_COMMIT_KEYS:
		return 0;
	}
	return 0;
}

/* Writer thread: one request in the batch's transaction. */
static int apply(struct mta_spool_txn *txn, const struct mta_commit *c)
{
	switch (c->kind) {
	case MTA_COMMIT_NEW:
		return mta_spool_put_message(txn, c->u.msg.qid, c->u.msg.env,
					     c->u.msg.body);
	case MTA_COMMIT_UPDATE: {
		const struct mta_commit_update *u = &c->u.update;
		return mta_spool_update_message(txn, u->qid, u->env,
						u->old_due_us, u->new_due_us,
						u->dsn_qid, u->dsn_env,
						u->dsn_body);
	}
	case MTA_COMMIT_STS_PUT:
		return mta_spool_sts_put(txn, c->u.sts.domain, c->u.sts.rec,
					 c->u.sts.len);
	case MTA_COMMIT_COUNTER: {
		int rc = mta_spool_counter_add(txn, c->u.counter.key,
					       c->u.counter.delta);
		if (rc == 0 && c->u.counter.note_key != NULL)
			rc = mta_spool_tlsrpt_note_put(txn,
						       c->u.counter.note_key,
						       c->u.counter.note);
		return rc;
	}
	case MTA_COMMIT_ADMIN: {
		const struct mta_commit_admin *a = &c->u.admin;
		return mta_spool_admin(txn, a->op, a->qid, a->now_us,
				       a->dsn_qid, a->dsn_env, a->dsn_body);
	}
	case MTA_COMMIT_KEYS:
		return mta_spool_keys_apply(txn, c->u.keys.op);
	}
	return -EINVAL;
}

/* Writer thread: one transaction for a whole batch. */
static void commit_batch(struct mta_writer *w, struct mta_commit *batch)
{
	struct mta_spool_txn *txn;
	struct mta_commit *c;
	size_t n = 0, ok = 0;
	uint64_t bytes = 0;
	int64_t t0 = now_us();
	int err;

	for (c = batch; c != NULL; c = c->next)
		n++;
	err = mta_spool_begin(w->sp, &txn);
	if (err != 0) {
		for (c = batch; c != NULL; c = c->next)
			c->result = err;
		goto log;
	}
	for (c = batch; c != NULL; c = c->next) {
		c->result = apply(txn, c);
		if (c->result == 0) {
			ok++;
			bytes += req_bytes(c);
		}
	}
	if (ok == 0) {
		mta_spool_abort(txn);
	} else {
		/* see mta_spool_commit(): returns after the sync */
		int64_t tc = now_us();
		err = mta_spool_commit(txn);
		mta_metrics_commit(w->metrics_now, err == 0,
				   (uint64_t)(now_us() - tc));
		if (err != 0)
			for (c = batch; c != NULL; c = c->next)
				c->result = err;
	}
log:;
	struct mta_logline l;
	mta_log_begin(&l, MTA_LOG_DEBUG, "commit");
	mta_log_int(&l, "n", (long long)n);
	mta_log_int(&l, "ok", (long long)(err == 0 ? ok : 0));
	mta_log_int(&l, "bytes", (long long)bytes);
	mta_log_int(&l, "usec", (long long)(now_us() - t0));
	if (err != 0)
		mta_log_str(&l, "error", mta_errname(err));
	mta_log_end(&l);

	/* finished requests go to the loop; MTA_EAGAIN (MDB_TXN_FULL: the
	 * batch as a whole held too many dirty pages) in a batch of several
	 * is retried at once in a transaction of its own, where it is final */
	struct mta_commit *fin = NULL, *fin_tail = NULL;
	struct mta_commit *retry = NULL, *retry_tail = NULL, *next;
	for (c = batch; c != NULL; c = next) {
		next = c->next;
		c->next = NULL;
		if (n > 1 && c->result == MTA_EAGAIN) {
			if (retry_tail)
				retry_tail->next = c;
			else
				retry = c;
			retry_tail = c;
		} else {
			if (fin_tail)
				fin_tail->next = c;
			else
				fin = c;
			fin_tail = c;
		}
	}
	if (fin != NULL) {
		/* each request goes back to the loop that submitted it; the
		 * send is made under mu so that a port closed after its last
		 * done() is never signalled (mta_writer_port_close()) */
		pthread_mutex_lock(&w->mu);
		for (c = fin; c != NULL; c = next) {
			struct mta_writer_port *p = c->port;
			next = c->next;
			c->next = NULL;
			if (p->done_tail)
				p->done_tail->next = c;
			else
				p->done = c;
			p->done_tail = c;
			uv_async_send(&p->async);
		}
		pthread_mutex_unlock(&w->mu);
	}
	for (c = retry; c != NULL; c = next) {
		next = c->next;
		c->next = NULL;
		commit_batch(w, c);
	}
}

/* Under mu: unlinks the head of *list up to max requests and max bytes
 * (at least one request); returns it, NULL-terminated. */
static struct mta_commit *take(struct mta_commit **list,
			       struct mta_commit **tail, size_t max,
			       uint64_t max_bytes, size_t *n, uint64_t *bytes)
{
	struct mta_commit *head = *list, *last = NULL, *c = *list;

	*n = 0;
	*bytes = 0;
	while (c != NULL && *n < max &&
	       (*n == 0 || *bytes + req_bytes(c) <= max_bytes)) {
		*bytes += req_bytes(c);
		(*n)++;
		last = c;
		c = c->next;
	}
	if (last == NULL)
		return NULL;
	*list = c;
	if (c == NULL)
		*tail = NULL;
	last->next = NULL;
	return head;
}

/*
 * Writer thread.  Each round takes every waiting outcome update first,
 * then one bounded batch of the other requests (new mail).  A small new
 * mail batch shares the outcome's transaction (one sync for both); a
 * large one gets its own, after it.  So the "sent" state of a delivered
 * message waits for at most the transaction in progress and one bounded
 * batch, never behind everything that arrived meanwhile: that wait is
 * the window in which a crash makes mtad deliver the message again.
 * Alternating rounds keep a stream of updates from starving new mail.
 */
static void *writer_main(void *arg)
{
	struct mta_writer *w = arg;

	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (w->urgent == NULL && w->pending == NULL && !w->stopping)
			pthread_cond_wait(&w->cv, &w->mu);
		if (w->urgent == NULL && w->pending == NULL)
			break; /* stopping, nothing left */
		size_t nu, nn;
		uint64_t bu, bn;
		struct mta_commit *up = take(&w->urgent, &w->urgent_tail,
					     MTA_WRITER_BATCH_MAX,
					     MTA_WRITER_BATCH_BYTES, &nu, &bu);
		struct mta_commit *news = take(&w->pending, &w->pending_tail,
					       MTA_WRITER_BATCH_MAX,
					       MTA_WRITER_BATCH_BYTES, &nn, &bn);
		w->metrics_now = w->metrics;
		pthread_mutex_unlock(&w->mu);
		mta_metrics_writer_busy(w->metrics_now, now_us());
		if (up != NULL && news != NULL && nn <= MTA_WRITER_MERGE_MAX &&
		    bn <= MTA_WRITER_MERGE_BYTES) {
			struct mta_commit *c = up;
			while (c->next != NULL)
				c = c->next;
			c->next = news; /* outcomes first, then the small batch */
			news = NULL;
		}
		if (up != NULL)
			commit_batch(w, up);
		if (news != NULL)
			commit_batch(w, news);
		mta_metrics_writer_busy(w->metrics_now, 0);
		pthread_mutex_lock(&w->mu);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* The port's loop thread: run done() for every finished request. */
static void run_done(struct mta_writer_port *p)
{
	struct mta_commit *c, *next;

	pthread_mutex_lock(&p->w->mu);
	c = p->done;
	p->done = p->done_tail = NULL;
	for (next = c; next != NULL; next = next->next)
		p->inflight--;
	pthread_mutex_unlock(&p->w->mu);
	for (; c != NULL; c = next) {
		next = c->next;
		c->next = NULL;
		c->done(c);
	}
}

static void on_async(uv_async_t *a)
{
	run_done(a->data);
}

static void on_port_close(uv_handle_t *h)
{
	free(h->data);
}

static void on_close(uv_handle_t *h)
{
	struct mta_writer *w = ((struct mta_writer_port *)h->data)->w;

	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

int mta_writer_start(uv_loop_t *loop, struct mta_spool *sp,
		     struct mta_writer **out)
{
	struct mta_writer *w;
	int err;

	w = calloc(1, sizeof(*w));
	if (w == NULL)
		return -ENOMEM;
	w->loop = loop;
	w->sp = sp;
	if ((err = -pthread_mutex_init(&w->mu, NULL)) != 0)
		goto fail_w;
	if ((err = -pthread_cond_init(&w->cv, NULL)) != 0)
		goto fail_mu;
	/* uv errors are negated errno values on Unix */
	w->port0.w = w;
	if ((err = uv_async_init(loop, &w->port0.async, on_async)) != 0)
		goto fail_cv;
	w->port0.async.data = &w->port0;
	if ((err = -pthread_create(&w->thread, NULL, writer_main, w)) != 0)
		goto fail_async;
	*out = w;
	return 0;

fail_async:
	/* an initialised handle must be closed; on_close frees w when the
	 * caller next runs the loop */
	uv_close((uv_handle_t *)&w->port0.async, on_close);
	return err;
fail_cv:
	pthread_cond_destroy(&w->cv);
fail_mu:
	pthread_mutex_destroy(&w->mu);
fail_w:
	free(w);
	return err;
}

/* The port's loop thread: queues c (kind and variant already set). */
static void submit_port(struct mta_writer_port *p, struct mta_commit *c,
			mta_commit_done_fn done)
{
	struct mta_writer *w = p->w;

	assert(done != NULL);
	c->done = done;
	c->next = NULL;
	c->result = 0;
	c->port = p;
	pthread_mutex_lock(&w->mu);
	assert(!w->stopping && !p->closed);
	p->inflight++;
	if (c->kind == MTA_COMMIT_UPDATE) {
		if (w->urgent_tail)
			w->urgent_tail->next = c;
		else
			w->urgent = c;
		w->urgent_tail = c;
	} else {
		if (w->pending_tail)
			w->pending_tail->next = c;
		else
			w->pending = c;
		w->pending_tail = c;
	}
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void submit(struct mta_writer *w, struct mta_commit *c,
		   mta_commit_done_fn done)
{
	submit_port(&w->port0, c, done);
}

int mta_writer_port_open(struct mta_writer *w, uv_loop_t *loop,
			 struct mta_writer_port **out)
{
	struct mta_writer_port *p = calloc(1, sizeof(*p));
	int err;

	if (p == NULL)
		return -ENOMEM;
	p->w = w;
	if ((err = uv_async_init(loop, &p->async, on_async)) != 0) {
		free(p);
		return err;
	}
	p->async.data = p;
	*out = p;
	return 0;
}

void mta_writer_port_submit_new(struct mta_writer_port *p,
				struct mta_commit *c, const char *qid,
				const struct mta_envelope *env,
				const struct mta_body *body,
				mta_commit_done_fn done)
{
	assert(qid != NULL && env != NULL && body != NULL);
	c->kind = MTA_COMMIT_NEW;
	c->u.msg = (struct mta_commit_new){
		.qid = qid, .env = env, .body = body};
	submit_port(p, c, done);
}

void mta_writer_port_close(struct mta_writer_port *p)
{
	pthread_mutex_lock(&p->w->mu);
	assert(p->inflight == 0 && p->done == NULL);
	p->closed = true; /* the writer sends to it no more */
	pthread_mutex_unlock(&p->w->mu);
	uv_close((uv_handle_t *)&p->async, on_port_close);
}

void mta_writer_submit_new(struct mta_writer *w, struct mta_commit *c,
			   const char *qid, const struct mta_envelope *env,
			   const struct mta_body *body, mta_commit_done_fn done)
{
	assert(qid != NULL && env != NULL && body != NULL);
	c->kind = MTA_COMMIT_NEW;
	c->u.msg = (struct mta_commit_new){
		.qid = qid, .env = env, .body = body};
	submit(w, c, done);
}

void mta_writer_submit_update(struct mta_writer *w, struct mta_commit *c,
			      const struct mta_commit_update *u,
			      mta_commit_done_fn done)
{
	struct mta_commit_update copy = *u; /* u may point into c */

	assert(copy.qid != NULL && copy.env != NULL);
	assert(copy.dsn_qid == NULL ||
	       (copy.dsn_env != NULL && copy.dsn_body != NULL));
	c->kind = MTA_COMMIT_UPDATE;
	c->u.update = copy;
	submit(w, c, done);
}

void mta_writer_submit_sts_put(struct mta_writer *w, struct mta_commit *c,
			       const char *domain, const void *rec,
			       size_t len, mta_commit_done_fn done)
{
	assert(domain != NULL);
	c->kind = MTA_COMMIT_STS_PUT;
	c->u.sts = (struct mta_commit_sts_put){
		.domain = domain, .rec = rec, .len = rec != NULL ? len : 0};
	submit(w, c, done);
}

void mta_writer_submit_counter_add(struct mta_writer *w,
				   struct mta_commit *c, const char *key,
				   int64_t delta, mta_commit_done_fn done)
{
	assert(key != NULL);
	c->kind = MTA_COMMIT_COUNTER;
	c->u.counter = (struct mta_commit_counter){.key = key, .delta = delta};
	submit(w, c, done);
}

void mta_writer_submit_counter_note(struct mta_writer *w,
				    struct mta_commit *c, const char *key,
				    int64_t delta, const char *note_key,
				    const char *note, mta_commit_done_fn done)
{
	assert(key != NULL && note_key != NULL && note != NULL);
	c->kind = MTA_COMMIT_COUNTER;
	c->u.counter = (struct mta_commit_counter){
		.key = key, .delta = delta, .note_key = note_key, .note = note};
	submit(w, c, done);
}

void mta_writer_submit_keys(struct mta_writer *w, struct mta_commit *c,
			    const struct mta_spool_keys_op *op,
			    mta_commit_done_fn done)
{
	assert(op != NULL && op->domain != NULL);
	c->kind = MTA_COMMIT_KEYS;
	c->u.keys = (struct mta_commit_keys){.op = op};
	submit(w, c, done);
}

void mta_writer_submit_admin(struct mta_writer *w, struct mta_commit *c,
			     const struct mta_commit_admin *a,
			     mta_commit_done_fn done)
{
	struct mta_commit_admin copy = *a; /* a may point into c */

	assert(copy.qid != NULL);
	assert(copy.dsn_qid == NULL ||
	       (copy.dsn_env != NULL && copy.dsn_body != NULL));
	c->kind = MTA_COMMIT_ADMIN;
	c->u.admin = copy;
	submit(w, c, done);
}

void mta_writer_stop(struct mta_writer *w)
{
	pthread_mutex_lock(&w->mu);
	w->stopping = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	run_done(&w->port0);
	uv_close((uv_handle_t *)&w->port0.async, on_close);
}

void mta_writer_set_metrics(struct mta_writer *w, struct mta_metrics *m)
{
	pthread_mutex_lock(&w->mu);
	w->metrics = m;
	pthread_mutex_unlock(&w->mu);
}
