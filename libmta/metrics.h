/*
 * metrics.h - the daemon's counters and their Prometheus text rendering.
 *
 * DESCRIPTION
 *	A struct mta_metrics is one registry, owned by the daemon and handed
 *	to the modules that count (inbound.c, delivery*.c, writer.c,
 *	mtasts.c) through their params; every function here accepts a NULL
 *	registry and then does nothing, so a module runs without one (unit
 *	tests, tools).
 *
 *	mta_metrics_init() zeroes a registry.
 *
 *	Inbound counters, from any loop thread (server.threads: atomics, the
 *	rejected labels under a spin lock): mta_metrics_session() (a session
 *	opened: +1, closed: -1), mta_metrics_accepted() (a message answered
 *	250), mta_metrics_rejected() (a command refused, by the enhanced
 *	status code of the reply, "none" without one).
 *
 *	Loop-thread (thread 0) counters: mta_metrics_delivery() (one
 *	recipient attempt: status word "sent", "deferred", "bounced", the
 *	authentication text of the channel, whose first word names the
 *	method: "dane ...", "mta-sts ...", "verify ...", else none; a
 *	deferral also counts under its enhanced status code),
 *	mta_metrics_ct() and mta_metrics_continuity() (one CT or key
 *	continuity verdict after a handshake, by verdict name),
 *	mta_metrics_sts_fetch() (one MTA-STS policy fetch by result: "ok" or
 *	the failure class).
 *
 *	Writer-thread values (atomics, read by the loop thread):
 *	mta_metrics_commit() (one batch committed and synced, or failed,
 *	with the time mta_spool_commit() took), mta_metrics_writer_busy()
 *	(the writer started a batch at since_us, or 0: it is idle again).
 *	mta_metrics_writer_stuck() says whether the batch in progress has
 *	run longer than limit_us.
 *
 *	mta_metrics_render() appends the text exposition format (version
 *	0.0.4) of the registry and of the gauges the caller gathered
 *	(struct mta_metrics_gauges: values that are read, not counted) to
 *	out.  Every family has HELP and TYPE lines; names start with
 *	"mtad_"; counters end in "_total".
 *
 * THREADS
 *	Inbound counters: any loop thread.  Other loop-thread functions:
 *	loop thread 0 only.  mta_metrics_commit()
 *	and mta_metrics_writer_busy(): the writer thread.  Render and
 *	writer_stuck: the loop thread.
 *
 * OWNERSHIP
 *	Caller-owned and embedded; no allocation except out's growth.
 *
 * SECURITY
 *	Label values come from peers (enhanced status codes in replies): a
 *	value is counted under its own label only if it is made of
 *	[0-9A-Za-z._-] and at most MTA_METRICS_LABEL_LEN-1 bytes, and at
 *	most MTA_METRICS_LABELS_MAX distinct values per family; anything
 *	else counts as "other".  So the output stays bounded and escaping is
 *	never needed.
 *
 * STANDARDS
 *	Prometheus text exposition format 0.0.4.
 */
#ifndef MTA_METRICS_H
#define MTA_METRICS_H

#include "envelope.h" /* struct mta_buf */

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define MTA_METRICS_LABELS_MAX 32
#define MTA_METRICS_LABEL_LEN 24
#define MTA_METRICS_FSYNC_BUCKETS 12

enum mta_metrics_status {
	MTA_METRICS_SENT,
	MTA_METRICS_DEFERRED,
	MTA_METRICS_BOUNCED,
	MTA_METRICS_NSTATUS,
};

enum mta_metrics_auth {
	MTA_METRICS_AUTH_DANE,
	MTA_METRICS_AUTH_MTASTS,
	MTA_METRICS_AUTH_VERIFY,
	MTA_METRICS_AUTH_NONE,
	MTA_METRICS_NAUTH,
};

/* A counter with one label whose values are learnt as they come. */
struct mta_metrics_labeled {
	char label[MTA_METRICS_LABELS_MAX][MTA_METRICS_LABEL_LEN];
	uint64_t value[MTA_METRICS_LABELS_MAX];
	size_t n;
	uint64_t other;
};

struct mta_metrics {
	/* inbound, from every loop thread (server.threads): atomics, and
	 * rejected under rejected_lock */
	atomic_uint_fast64_t sessions_total;
	atomic_int_fast64_t sessions_open;
	atomic_uint_fast64_t accepted;
	atomic_flag rejected_lock;
	struct mta_metrics_labeled rejected;
	/* loop thread 0 */
	uint64_t deliveries[MTA_METRICS_NSTATUS][MTA_METRICS_NAUTH];
	struct mta_metrics_labeled deferrals;
	struct mta_metrics_labeled sts_fetches;
	struct mta_metrics_labeled ct_verdicts;	  /* ok, missing, ... */
	struct mta_metrics_labeled continuity;	  /* first, new_key, ... */
	/* writer thread */
	atomic_uint_fast64_t commits, commit_failures;
	atomic_uint_fast64_t fsync_bucket[MTA_METRICS_FSYNC_BUCKETS];
	atomic_uint_fast64_t fsync_count, fsync_sum_us;
	atomic_int_fast64_t writer_busy_since_us;
};

/* Values read when rendering; a negative one is left out. */
struct mta_metrics_gauges {
	int64_t queue_queued, queue_held, queue_active; /* messages */
	int64_t queue_rcpts, queue_bytes;
	double oldest_age_s;	/* 0 when the queue is empty */
	int64_t map_used, map_size; /* bytes */
	int64_t policy_cache;	/* MTA-STS policies cached */
	int dnssec_selftest;	/* 1 passing, 0 failing, -1 not run yet */
	int ready;		/* /readyz verdict: 1 or 0 */
	int spool_corrupt;	/* 1 or 0 */
};

void mta_metrics_init(struct mta_metrics *m);
void mta_metrics_session(struct mta_metrics *m, int delta);
void mta_metrics_accepted(struct mta_metrics *m);
void mta_metrics_rejected(struct mta_metrics *m, const char *dsn);
void mta_metrics_delivery(struct mta_metrics *m, const char *status,
			  const char *auth, const char *dsn);
void mta_metrics_sts_fetch(struct mta_metrics *m, const char *result);
/* One Certificate Transparency verdict (ct.h names) and one key
 * continuity verdict (policy.h MTA_POLICY_CONT_MAP names, "held") */
void mta_metrics_ct(struct mta_metrics *m, const char *verdict);
void mta_metrics_continuity(struct mta_metrics *m, const char *verdict);
void mta_metrics_commit(struct mta_metrics *m, bool ok, uint64_t usec);
void mta_metrics_writer_busy(struct mta_metrics *m, int64_t since_us);
bool mta_metrics_writer_stuck(struct mta_metrics *m, int64_t now_us,
			      int64_t limit_us);
/* 0 or -ENOMEM (out then holds a prefix). */
int mta_metrics_render(struct mta_metrics *m,
		       const struct mta_metrics_gauges *g,
		       struct mta_buf *out);

#endif
