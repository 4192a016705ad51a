/* Unit tests for writer.c: group commit on a thread, results on the loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "envelope.h"
#include "err.h"
#include "log.h"
#include "spool.h"
#include "writer.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct fx;

struct req {
	struct mta_commit c; /* first: done() gets back the req */
	char qid[MTA_QID_LEN + 1];
	mta_commit_done_fn done;
	struct mta_envelope env;
	struct mta_body body;
	int ndone;
	struct fx *fx;
};

struct fx {
	char dir[4096];
	struct mta_spool *sp;
	uv_loop_t loop;
	uv_timer_t timer;
	struct mta_writer *w;
	int logpipe[2];
	pthread_t drain;
	bool draining;
	char *log; /* captured log, after drain_stop() */
	size_t loglen;
	struct req *reqs;
	size_t nreq, submitted, ndone;
	size_t *order; /* index of each done() call, in call order */
	bool stopped;
};

static int rm_one(const char *p, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void *drain_main(void *arg)
{
	struct fx *fx = arg;
	FILE *m = open_memstream(&fx->log, &fx->loglen);
	char buf[4096];
	ssize_t n;
	while ((n = read(fx->logpipe[0], buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		fwrite(buf, 1, (size_t)n, m);
	}
	fclose(m);
	return NULL;
}

static void drain_start(struct fx *fx)
{
	assert_int_equal(pthread_create(&fx->drain, NULL, drain_main, fx), 0);
	fx->draining = true;
}

static void drain_stop(struct fx *fx)
{
	mta_log_set_fd(STDERR_FILENO);
	close(fx->logpipe[1]);
	if (!fx->draining)
		drain_start(fx);
	pthread_join(fx->drain, NULL);
	close(fx->logpipe[0]);
}

static void fx_init(struct fx *fx, uint64_t max_size, size_t nreq)
{
	const char *base = getenv("MTA_TEST_TMPDIR");
	memset(fx, 0, sizeof(*fx));
	snprintf(fx->dir, sizeof(fx->dir), "%s/writertest.XXXXXX",
		 base ? base : "/tmp");
	assert_non_null(mkdtemp(fx->dir));
	struct mta_spool_opts o = {.dir = fx->dir, .max_size = max_size};
	assert_int_equal(mta_spool_open(&o, &fx->sp), 0);
	assert_int_equal(uv_loop_init(&fx->loop), 0);
	assert_int_equal(pipe(fx->logpipe), 0);
	mta_log_set_level(MTA_LOG_DEBUG);
	mta_log_set_fd(fx->logpipe[1]);
	fx->reqs = calloc(nreq, sizeof(*fx->reqs));
	fx->nreq = nreq;
	assert_int_equal(mta_writer_start(&fx->loop, fx->sp, &fx->w), 0);
}

static void fx_free(struct fx *fx)
{
	for (size_t i = 0; i < fx->nreq; i++) {
		mta_envelope_free(&fx->reqs[i].env);
		mta_body_free(&fx->reqs[i].body);
	}
	free(fx->reqs);
	free(fx->order);
	free(fx->log);
	mta_spool_close(fx->sp);
	nftw(fx->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void on_done(struct mta_commit *c)
{
	struct req *r = (struct req *)c;
	r->ndone++;
	if (r->fx->order != NULL)
		r->fx->order[r->fx->ndone] = (size_t)(r - r->fx->reqs);
	r->fx->ndone++;
}

static void req_init(struct fx *fx, size_t i, uint64_t body_len)
{
	struct req *r = &fx->reqs[i];
	char addr[64];
	r->fx = fx;
	mta_envelope_init(&r->env);
	assert_int_equal(mta_envelope_set_str(&r->env.sender, ""), 0);
	snprintf(addr, sizeof(addr), "rcpt%zu@d%zu.example", i, i % 7);
	assert_non_null(mta_envelope_add_rcpt(&r->env, addr, NULL, NULL, 0));
	r->env.arrival_us = 1700000000000000ll + (int64_t)i;
	mta_body_init(&r->body, mta_spool_tmpdir(fx->sp), 1u << 20);
	uint8_t buf[4096];
	memset(buf, (int)('a' + i % 26), sizeof(buf));
	for (uint64_t off = 0; off < body_len; off += sizeof(buf)) {
		size_t n = body_len - off < sizeof(buf) ? body_len - off
							: sizeof(buf);
		assert_int_equal(mta_body_append(&r->body, buf, n), 0);
	}
	mta_qid_make(r->qid, (uint64_t)r->env.arrival_us, (uint32_t)i);
	r->done = on_done;
	r->c.result = 12345;
}

/* Submits the new message of req r. */
static void submit_req(struct fx *fx, struct req *r)
{
	mta_writer_submit_new(fx->w, &r->c, r->qid, &r->env, &r->body,
			      r->done);
}

/* logfmt lines "event=commit n=N ok=K ..." -> counts */
static void log_commits(const struct fx *fx, size_t *lines, size_t *sum_n,
			size_t *max_n)
{
	*lines = *sum_n = *max_n = 0;
	const char *p = fx->log;
	while (p != NULL && (p = strstr(p, "event=commit ")) != NULL) {
		const char *n = strstr(p, " n=");
		assert_non_null(n);
		size_t v = strtoul(n + 3, NULL, 10);
		(*lines)++;
		*sum_n += v;
		if (v > *max_n)
			*max_n = v;
		p = n;
	}
}

/* ---- 500 messages in bursts ---- */

static void on_tick(uv_timer_t *t)
{
	struct fx *fx = t->data;
	/* a burst of 50 at a time */
	for (int k = 0; k < 50 && fx->submitted < fx->nreq; k++)
		submit_req(fx, &fx->reqs[fx->submitted++]);
	if (fx->ndone == fx->nreq && !fx->stopped) {
		fx->stopped = true;
		mta_writer_stop(fx->w);
		uv_close((uv_handle_t *)t, NULL);
	}
}

static void test_many(void **state)
{
	(void)state;
	struct fx fx;
	enum { N = 500 };

	fx_init(&fx, 64u << 20, N);
	drain_start(&fx);
	for (size_t i = 0; i < N; i++)
		req_init(&fx, i, (i * 977) % 9000);
	assert_int_equal(uv_timer_init(&fx.loop, &fx.timer), 0);
	fx.timer.data = &fx;
	assert_int_equal(uv_timer_start(&fx.timer, on_tick, 0, 1), 0);
	assert_int_equal(uv_run(&fx.loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&fx.loop), 0);
	assert_true(fx.stopped);
	for (size_t i = 0; i < N; i++) {
		assert_int_equal(fx.reqs[i].ndone, 1);
		assert_int_equal(fx.reqs[i].c.result, 0);
	}
	uint64_t n = 0;
	assert_int_equal(mta_spool_stat(fx.sp, &n), 0);
	assert_int_equal(n, N);
	/* every body is there */
	for (size_t i = 0; i < N; i += 37) {
		uint8_t buf[9000];
		size_t got = 0;
		assert_int_equal(mta_spool_read_body(fx.sp, fx.reqs[i].qid, 0,
						     buf, sizeof(buf), &got),
				 0);
		assert_int_equal(got, fx.reqs[i].body.len);
	}
	drain_stop(&fx);
	size_t lines, sum, max;
	log_commits(&fx, &lines, &sum, &max);
	printf("# %zu commits for %d messages, largest batch %zu\n", lines, N,
	       max);
	assert_int_equal(sum, N);
	assert_true(max > 1);
	assert_true(lines < N);
	fx_free(&fx);
}

/* ---- a map-full message inside a batch ---- */

static void stop_when_all_done(struct mta_commit *c)
{
	struct req *r = (struct req *)c;
	on_done(c);
	if (r->fx->ndone == r->fx->nreq) {
		r->fx->stopped = true;
		mta_writer_stop(r->fx->w); /* from inside a done(): allowed */
	}
}

static void test_mapfull_batch(void **state)
{
	(void)state;
	struct fx fx;
	struct mta_envelope e;

	fx_init(&fx, 1u << 20, 6);
	for (size_t i = 0; i < 6; i++) {
		/* 2 MiB: over the map, within MTA_WRITER_BATCH_BYTES */
		req_init(&fx, i, i == 2 ? 2u << 20 : 3000);
		fx.reqs[i].done = stop_when_all_done;
	}
	/*
	 * Make the batch deterministic: with the log pipe full, the writer
	 * blocks on its log line right after committing request 0, so
	 * requests 1..5 all wait for the next batch.
	 */
	int fl = fcntl(fx.logpipe[1], F_GETFL);
	assert_int_equal(fcntl(fx.logpipe[1], F_SETFL, fl | O_NONBLOCK), 0);
	char junk[4096];
	memset(junk, '#', sizeof(junk));
	while (write(fx.logpipe[1], junk, sizeof(junk)) > 0)
		;
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(fcntl(fx.logpipe[1], F_SETFL, fl), 0);

	submit_req(&fx, &fx.reqs[0]);
	for (int tries = 0;; tries++) {
		int rc = mta_spool_get(fx.sp, fx.reqs[0].qid, &e);
		if (rc == 0) {
			mta_envelope_free(&e);
			break;
		}
		assert_int_equal(rc, MTA_ENOTFOUND);
		assert_true(tries < 10000);
		usleep(1000);
	}
	for (size_t i = 1; i < 6; i++)
		submit_req(&fx, &fx.reqs[i]);
	drain_start(&fx);

	assert_int_equal(uv_run(&fx.loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&fx.loop), 0);
	assert_true(fx.stopped);
	for (size_t i = 0; i < 6; i++) {
		assert_int_equal(fx.reqs[i].ndone, 1);
		assert_int_equal(fx.reqs[i].c.result, i == 2 ? MTA_EMAPFULL : 0);
	}
	uint64_t n = 0;
	assert_int_equal(mta_spool_stat(fx.sp, &n), 0);
	assert_int_equal(n, 5);
	assert_int_equal(mta_spool_get(fx.sp, fx.reqs[2].qid, &e),
			 MTA_ENOTFOUND);
	drain_stop(&fx);
	assert_non_null(strstr(fx.log, "event=commit n=1 ok=1 "));
	assert_non_null(strstr(fx.log, "event=commit n=5 ok=4 "));
	fx_free(&fx);
}

/* ---- delivery outcomes ahead of new mail ---- */

/* Fills the log pipe: the writer then blocks on the log line of its next
 * batch, so everything submitted meanwhile waits for the round after. */
static void block_log(struct fx *fx)
{
	int fl = fcntl(fx->logpipe[1], F_GETFL);
	char junk[4096];

	assert_int_equal(fcntl(fx->logpipe[1], F_SETFL, fl | O_NONBLOCK), 0);
	memset(junk, '#', sizeof(junk));
	while (write(fx->logpipe[1], junk, sizeof(junk)) > 0)
		;
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(fcntl(fx->logpipe[1], F_SETFL, fl), 0);
}

static void wait_stored(struct fx *fx, const char *qid)
{
	struct mta_envelope e;
	for (int tries = 0;; tries++) {
		int rc = mta_spool_get(fx->sp, qid, &e);
		if (rc == 0) {
			mta_envelope_free(&e);
			return;
		}
		assert_int_equal(rc, MTA_ENOTFOUND);
		assert_true(tries < 10000);
		usleep(1000);
	}
}

/*
 * Request 0 is stored first; while the writer is blocked, nnew new
 * messages of body_len bytes (requests 1..nnew) and then the outcome of
 * request 0 (the last request: it removes message 0, as a delivery does)
 * are submitted.  The outcome must be done before every new message.
 */
static void run_priority(struct fx *fx, size_t nnew, uint64_t body_len)
{
	size_t up = nnew + 1;

	fx_init(fx, 64u << 20, nnew + 2);
	fx->order = calloc(fx->nreq, sizeof(*fx->order));
	assert_non_null(fx->order);
	for (size_t i = 0; i <= nnew; i++) {
		req_init(fx, i, i == 0 ? 3000 : body_len);
		fx->reqs[i].done = stop_when_all_done;
	}
	struct req *u = &fx->reqs[up];
	u->fx = fx;
	mta_envelope_init(&u->env);
	memcpy(u->qid, fx->reqs[0].qid, sizeof(u->qid));
	struct mta_commit_update upd = {
		.qid = u->qid,
		.env = &fx->reqs[0].env,
		/* new: due on arrival */
		.old_due_us = fx->reqs[0].env.arrival_us,
		.new_due_us = -1,
	};

	block_log(fx);
	submit_req(fx, &fx->reqs[0]);
	wait_stored(fx, fx->reqs[0].qid);
	for (size_t i = 1; i <= nnew; i++)
		submit_req(fx, &fx->reqs[i]);
	/* submitted last */
	mta_writer_submit_update(fx->w, &u->c, &upd, stop_when_all_done);
	drain_start(fx);

	assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&fx->loop), 0);
	assert_true(fx->stopped);
	for (size_t i = 0; i < fx->nreq; i++) {
		assert_int_equal(fx->reqs[i].ndone, 1);
		assert_int_equal(fx->reqs[i].c.result, 0);
	}
	/* done order: 0, the outcome, then the new mail in submission order */
	assert_int_equal(fx->order[0], 0);
	assert_int_equal(fx->order[1], up);
	for (size_t i = 2; i < fx->nreq; i++)
		assert_int_equal(fx->order[i], i - 1);
	uint64_t n = 0;
	assert_int_equal(mta_spool_stat(fx->sp, &n), 0);
	assert_int_equal(n, nnew); /* message 0 was removed by its outcome */
	drain_stop(fx);
}

/* A large batch of new mail (over MTA_WRITER_BATCH_MAX requests): the
 * outcome commits alone, then the new mail in bounded batches. */
static void test_outcome_before_large_batch(void **state)
{
	(void)state;
	struct fx fx;
	enum { NNEW = MTA_WRITER_BATCH_MAX + 40 };

	run_priority(&fx, NNEW, 200);
	size_t lines, sum, max;
	log_commits(&fx, &lines, &sum, &max);
	assert_int_equal(sum, NNEW + 2);
	assert_int_equal(max, MTA_WRITER_BATCH_MAX);
	const char *one = strstr(fx.log, "event=commit n=1 ok=1 ");
	assert_non_null(one); /* request 0 */
	const char *two = strstr(one + 1, "event=commit n=1 ok=1 ");
	assert_non_null(two); /* the outcome, alone */
	char big[64];
	snprintf(big, sizeof(big), "event=commit n=%d ok=%d ",
		 MTA_WRITER_BATCH_MAX, MTA_WRITER_BATCH_MAX);
	const char *b = strstr(fx.log, big);
	assert_non_null(b);
	assert_true(two < b);
	fx_free(&fx);
}

/* A batch of new mail over MTA_WRITER_MERGE_BYTES: the outcome still
 * commits alone, ahead of it. */
static void test_outcome_before_heavy_batch(void **state)
{
	(void)state;
	struct fx fx;

	run_priority(&fx, 5, 40000);
	const char *one = strstr(fx.log, "event=commit n=1 ok=1 ");
	assert_non_null(one);
	const char *two = strstr(one + 1, "event=commit n=1 ok=1 ");
	assert_non_null(two);
	const char *b = strstr(fx.log, "event=commit n=5 ok=5 ");
	assert_non_null(b);
	assert_true(two < b);
	fx_free(&fx);
}

/* A small batch of new mail shares the outcome's transaction (one sync),
 * the outcome first. */
static void test_outcome_merged_with_small_batch(void **state)
{
	(void)state;
	struct fx fx;

	run_priority(&fx, 5, 100);
	assert_non_null(strstr(fx.log, "event=commit n=6 ok=6 "));
	fx_free(&fx);
}

/* ---- stop with requests still pending ---- */

static void test_stop_pending(void **state)
{
	(void)state;
	struct fx fx;
	enum { N = 50 };

	fx_init(&fx, 64u << 20, N);
	drain_start(&fx);
	for (size_t i = 0; i < N; i++) {
		req_init(&fx, i, 100 + i);
		submit_req(&fx, &fx.reqs[i]);
	}
	mta_writer_stop(fx.w); /* runs every done() before it returns */
	assert_int_equal(fx.ndone, N);
	for (size_t i = 0; i < N; i++) {
		assert_int_equal(fx.reqs[i].ndone, 1);
		assert_int_equal(fx.reqs[i].c.result, 0);
	}
	assert_int_equal(uv_run(&fx.loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&fx.loop), 0);
	uint64_t n = 0;
	assert_int_equal(mta_spool_stat(fx.sp, &n), 0);
	assert_int_equal(n, N);
	drain_stop(&fx);
	fx_free(&fx);
}

/* ---- two loop threads: every done() on the thread that submitted ---- */

struct shard {
	struct fx *fx;
	uv_loop_t loop;
	struct mta_writer_port *port;
	size_t first, n, ndone; /* reqs[first .. first + n) */
	pthread_t thread, *done_on; /* done_on[i]: thread of reqs[first + i] */
	atomic_bool finished;
};

static struct shard *shard_of(struct req *r, struct shard *sh)
{
	size_t i = (size_t)(r - r->fx->reqs);
	return i < sh[0].first + sh[0].n ? &sh[0] : &sh[1];
}

static struct shard shards[2]; /* [0]: fx.loop, [1]: its own thread */

static void on_shard_done(struct mta_commit *c)
{
	struct req *r = (struct req *)c;
	struct shard *sh = shard_of(r, shards);

	r->ndone++;
	sh->done_on[(size_t)(r - r->fx->reqs) - sh->first] = pthread_self();
	if (++sh->ndone == sh->n && sh == &shards[1]) {
		mta_writer_port_close(sh->port); /* on its own thread */
		atomic_store(&sh->finished, true);
	}
}

static void *shard_main(void *arg)
{
	struct shard *sh = arg;

	sh->thread = pthread_self();
	for (size_t i = 0; i < sh->n; i++) {
		struct req *r = &sh->fx->reqs[sh->first + i];
		mta_writer_port_submit_new(sh->port, &r->c, r->qid, &r->env,
					   &r->body, on_shard_done);
	}
	uv_run(&sh->loop, UV_RUN_DEFAULT); /* ends with the port closed */
	return NULL;
}

static void on_main_tick(uv_timer_t *t)
{
	struct fx *fx = t->data;

	if (shards[0].ndone == shards[0].n &&
	    atomic_load(&shards[1].finished) && !fx->stopped) {
		fx->stopped = true;
		pthread_join(shards[1].thread, NULL);
		mta_writer_stop(fx->w);
		uv_close((uv_handle_t *)t, NULL);
	}
}

static void test_two_loops(void **state)
{
	(void)state;
	struct fx fx;
	enum { N = 400 };
	pthread_t tid;

	fx_init(&fx, 64u << 20, N);
	drain_start(&fx);
	memset(shards, 0, sizeof(shards));
	for (size_t i = 0; i < N; i++)
		req_init(&fx, i, 200 + (i * 131) % 5000);
	for (size_t k = 0; k < 2; k++) {
		shards[k].fx = &fx;
		shards[k].first = k * (N / 2);
		shards[k].n = N / 2;
		shards[k].done_on = calloc(N / 2, sizeof(pthread_t));
		assert_non_null(shards[k].done_on);
	}
	shards[0].thread = pthread_self();
	assert_int_equal(uv_loop_init(&shards[1].loop), 0);
	assert_int_equal(mta_writer_port_open(fx.w, &shards[1].loop,
					      &shards[1].port),
			 0);
	assert_int_equal(pthread_create(&tid, NULL, shard_main, &shards[1]),
			 0);
	/* thread 0 submits its half meanwhile, interleaved in the batches */
	for (size_t i = 0; i < shards[0].n; i++) {
		struct req *r = &fx.reqs[i];
		mta_writer_submit_new(fx.w, &r->c, r->qid, &r->env, &r->body,
				      on_shard_done);
	}
	assert_int_equal(uv_timer_init(&fx.loop, &fx.timer), 0);
	fx.timer.data = &fx;
	assert_int_equal(uv_timer_start(&fx.timer, on_main_tick, 1, 1), 0);
	assert_int_equal(uv_run(&fx.loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&fx.loop), 0);
	assert_int_equal(uv_loop_close(&shards[1].loop), 0);
	assert_true(fx.stopped);
	for (size_t k = 0; k < 2; k++) {
		assert_int_equal(shards[k].ndone, shards[k].n);
		for (size_t i = 0; i < shards[k].n; i++) {
			struct req *r = &fx.reqs[shards[k].first + i];
			assert_int_equal(r->ndone, 1);
			assert_int_equal(r->c.result, 0);
			assert_true(pthread_equal(shards[k].done_on[i],
						  shards[k].thread));
		}
		free(shards[k].done_on);
	}
	assert_false(pthread_equal(shards[0].thread, shards[1].thread));
	uint64_t n = 0;
	assert_int_equal(mta_spool_stat(fx.sp, &n), 0);
	assert_int_equal(n, N);
	drain_stop(&fx);
	size_t lines, sum, max;
	log_commits(&fx, &lines, &sum, &max);
	printf("# two loops: %zu commits for %d messages, largest batch %zu\n",
	       lines, N, max);
	assert_int_equal(sum, N);
	fx_free(&fx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_many),
		cmocka_unit_test(test_mapfull_batch),
		cmocka_unit_test(test_outcome_before_large_batch),
		cmocka_unit_test(test_outcome_before_heavy_batch),
		cmocka_unit_test(test_outcome_merged_with_small_batch),
		cmocka_unit_test(test_stop_pending),
		cmocka_unit_test(test_two_loops),
	};
	alarm(100);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
