/*
 * spoolfill - build (and empty) a large mtad spool through the spool API,
 * for the queue-scale benchmark (tests/bench/run.py, issue #6).
 *
 *   spoolfill DIR fill  N [BATCH] [BODY_BYTES]
 *	put N messages (1 recipient, BODY_BYTES of body, default 1000) in
 *	transactions of BATCH messages (default 10000); the queue ids and
 *	arrival times are synthetic (arrival = now, sequence 0..N-1).
 *   spoolfill DIR drain [BATCH]
 *	remove every message (mta_spool_update_message with new_due_us -1),
 *	BATCH per transaction, walking the spool in qid order.
 *   spoolfill DIR churn N WINDOW [BATCH] [BODY_BYTES]
 *	put N messages in batches and remove the oldest ones whenever more
 *	than WINDOW are queued (a queue in steady state), then drain.
 *
 * Prints one JSON object on stdout: {"op":..., "messages":..., "seconds":
 * ..., "rate":..., "file_bytes": size of data.mdb after the run, ...}.
 * The spool map size is 64 GiB (sparse), so MTA_EMAPFULL does not happen.
 * Exit 0 on success, 1 on a spool error, 2 on bad usage.
 */
#include "envelope.h"
#include "err.h"
#include "spool.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "spoolfill: %s: %s (%s)\n", what, mta_errname(rc),
		mta_strerror(rc));
	exit(1);
}

static long long file_bytes(const char *dir)
{
	char p[4096];
	struct stat st;
	snprintf(p, sizeof(p), "%s/data.mdb", dir);
	return stat(p, &st) == 0 ? (long long)st.st_size : -1;
}

struct filler {
	struct mta_spool *sp;
	struct mta_envelope env;
	struct mta_body body;
	int64_t t0_us;
	uint64_t next;	/* next sequence number to put */
	uint64_t oldest; /* oldest sequence number still queued */
};

static void make_env(struct filler *f, uint64_t seq, char qid[MTA_QID_LEN + 1])
{
	/* Distinct, time-ordered ids: 1 us apart, sequence in the low bits. */
	int64_t arrival = f->t0_us + (int64_t)seq;
	mta_qid_make(qid, (uint64_t)arrival, (uint32_t)seq);
	f->env.arrival_us = arrival;
}

static void setup(struct filler *f, const char *dir, size_t body_bytes)
{
	struct mta_spool_opts o = {
		.dir = dir,
		.max_size = (uint64_t)64 << 30,
		.readonly = false,
	};
	int rc = mta_spool_open(&o, &f->sp);
	if (rc != 0)
		die("open", rc);
	mta_envelope_init(&f->env);
	if (mta_envelope_set_str(&f->env.sender, "bench@source.test") != 0 ||
	    mta_envelope_set_str(&f->env.helo, "source.test") != 0 ||
	    mta_envelope_set_str(&f->env.client_addr, "127.0.200.1") != 0 ||
	    mta_envelope_add_rcpt(&f->env, "rcpt@dest.test", NULL, NULL, 0) ==
		    NULL)
		die("envelope", -ENOMEM);
	f->env.body = MTA_BODY_7BIT;
	mta_body_init(&f->body, mta_spool_tmpdir(f->sp), body_bytes + 1);
	char line[80];
	memset(line, 'x', sizeof(line));
	line[sizeof(line) - 2] = '\r';
	line[sizeof(line) - 1] = '\n';
	for (size_t n = 0; n < body_bytes;) {
		size_t k = body_bytes - n < sizeof(line) ? body_bytes - n
							 : sizeof(line);
		if (mta_body_append(&f->body, line, k) != 0)
			die("body", -ENOMEM);
		n += k;
	}
	f->t0_us = wall_us();
}

static void put_batch(struct filler *f, uint64_t count)
{
	struct mta_spool_txn *t;
	char qid[MTA_QID_LEN + 1];
	int rc = mta_spool_begin(f->sp, &t);
	if (rc != 0)
		die("begin", rc);
	for (uint64_t i = 0; i < count; i++, f->next++) {
		make_env(f, f->next, qid);
		if ((rc = mta_spool_put_message(t, qid, &f->env, &f->body)))
			die("put", rc);
	}
	if ((rc = mta_spool_commit(t)))
		die("commit", rc);
}

/* Removes count messages from the oldest queued sequence on (fill/churn,
 * where ids are known). */
static void del_batch(struct filler *f, uint64_t count)
{
	struct mta_spool_txn *t;
	char qid[MTA_QID_LEN + 1];
	int rc = mta_spool_begin(f->sp, &t);
	if (rc != 0)
		die("begin", rc);
	for (uint64_t i = 0; i < count; i++, f->oldest++) {
		make_env(f, f->oldest, qid);
		rc = mta_spool_update_message(t, qid, &f->env, f->env.arrival_us,
					      -1, NULL, NULL, NULL);
		if (rc != 0)
			die("delete", rc);
	}
	if ((rc = mta_spool_commit(t)))
		die("commit", rc);
}

/* drain: collect the ids and due times of every message, then delete. */
struct idlist {
	char (*qid)[MTA_QID_LEN + 1];
	int64_t *due;
	size_t n, cap;
};

static int collect(void *ud, const struct mta_spool_entry *e)
{
	struct idlist *l = ud;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 65536;
		void *q = realloc(l->qid, cap * sizeof(*l->qid));
		if (q == NULL)
			return -ENOMEM;
		l->qid = q;
		void *d = realloc(l->due, cap * sizeof(*l->due));
		if (d == NULL)
			return -ENOMEM;
		l->due = d;
		l->cap = cap;
	}
	memcpy(l->qid[l->n], e->qid, MTA_QID_LEN + 1);
	l->due[l->n] = e->due_us;
	l->n++;
	return 0;
}

static void drain(struct filler *f, uint64_t batch)
{
	struct idlist l = {0};
	int rc = mta_spool_foreach(f->sp, collect, &l);
	if (rc != 0)
		die("foreach", rc);
	for (size_t i = 0; i < l.n;) {
		struct mta_spool_txn *t;
		if ((rc = mta_spool_begin(f->sp, &t)))
			die("begin", rc);
		for (uint64_t k = 0; k < batch && i < l.n; k++, i++) {
			rc = mta_spool_update_message(t, l.qid[i], &f->env,
						      l.due[i], -1, NULL, NULL,
						      NULL);
			if (rc != 0)
				die("delete", rc);
		}
		if ((rc = mta_spool_commit(t)))
			die("commit", rc);
	}
	free(l.qid);
	free(l.due);
	f->oldest = l.n; /* reported count */
}

static uint64_t arg_u64(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || end == s || v == 0) {
		fprintf(stderr, "spoolfill: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

static void usage(void)
{
	fprintf(stderr, "usage: spoolfill DIR fill N [BATCH] [BODY_BYTES]\n"
			"       spoolfill DIR drain [BATCH]\n"
			"       spoolfill DIR churn N WINDOW [BATCH] "
			"[BODY_BYTES]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct filler f;
	memset(&f, 0, sizeof(f));
	if (argc < 3)
		usage();
	const char *dir = argv[1], *op = argv[2];
	uint64_t n = 0, window = 0, batch = 10000, body = 1000;
	if (strcmp(op, "fill") == 0) {
		if (argc < 4 || argc > 6)
			usage();
		n = arg_u64(argv[3], "N");
		if (argc > 4)
			batch = arg_u64(argv[4], "BATCH");
		if (argc > 5)
			body = arg_u64(argv[5], "BODY_BYTES");
	} else if (strcmp(op, "drain") == 0) {
		if (argc > 4)
			usage();
		if (argc > 3)
			batch = arg_u64(argv[3], "BATCH");
	} else if (strcmp(op, "churn") == 0) {
		if (argc < 5 || argc > 7)
			usage();
		n = arg_u64(argv[3], "N");
		window = arg_u64(argv[4], "WINDOW");
		if (argc > 5)
			batch = arg_u64(argv[5], "BATCH");
		if (argc > 6)
			body = arg_u64(argv[6], "BODY_BYTES");
	} else {
		usage();
	}
	setup(&f, dir, (size_t)body);
	long long before = file_bytes(dir);
	long long peak = 0;
	double t0 = now_s();
	if (strcmp(op, "fill") == 0) {
		for (uint64_t done = 0; done < n;) {
			uint64_t k = n - done < batch ? n - done : batch;
			put_batch(&f, k);
			done += k;
		}
	} else if (strcmp(op, "drain") == 0) {
		drain(&f, batch);
		n = f.oldest;
	} else {
		for (uint64_t done = 0; done < n;) {
			uint64_t k = n - done < batch ? n - done : batch;
			put_batch(&f, k);
			done += k;
			uint64_t queued = f.next - f.oldest;
			if (queued > window)
				del_batch(&f, queued - window);
		}
		peak = file_bytes(dir);
		while (f.oldest < f.next) {
			uint64_t left = f.next - f.oldest;
			del_batch(&f, left < batch ? left : batch);
		}
	}
	double secs = now_s() - t0;
	uint64_t left = 0;
	int rc = mta_spool_stat(f.sp, &left);
	if (rc != 0)
		die("stat", rc);
	printf("{\"op\": \"%s\", \"messages\": %" PRIu64 ", \"batch\": %" PRIu64
	       ", \"body_bytes\": %" PRIu64 ", \"window\": %" PRIu64
	       ", \"seconds\": %.3f, \"rate\": %.1f, \"file_bytes_before\": %lld"
	       ", \"file_bytes_peak\": %lld, \"file_bytes\": %lld"
	       ", \"queued_after\": %" PRIu64 "}\n",
	       op, n, batch, body, window, secs, secs > 0 ? (double)n / secs : 0.0,
	       before, peak, file_bytes(dir), left);
	mta_body_free(&f.body);
	mta_envelope_free(&f.env);
	mta_spool_close(f.sp);
	return 0;
}
