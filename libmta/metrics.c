/*
 * metrics.c - counters and the Prometheus text format.  See metrics.h.
 */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* fsync (commit + sync) latency buckets, microseconds; +Inf implied */
static const uint64_t fsync_le_us[MTA_METRICS_FSYNC_BUCKETS] = {
	250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
	1000000, 5000000,
};

static const char *const status_names[MTA_METRICS_NSTATUS] = {
	"sent", "deferred", "bounced",
};

static const char *const auth_names[MTA_METRICS_NAUTH] = {
	"dane", "mta-sts", "verify", "none",
};

void mta_metrics_init(struct mta_metrics *m)
{
	memset(m, 0, sizeof(*m));
	atomic_init(&m->sessions_total, 0);
	atomic_init(&m->sessions_open, 0);
	atomic_init(&m->accepted, 0);
	atomic_flag_clear(&m->rejected_lock);
	atomic_init(&m->commits, 0);
	atomic_init(&m->commit_failures, 0);
	for (size_t i = 0; i < MTA_METRICS_FSYNC_BUCKETS; i++)
		atomic_init(&m->fsync_bucket[i], 0);
	atomic_init(&m->fsync_count, 0);
	atomic_init(&m->fsync_sum_us, 0);
	atomic_init(&m->writer_busy_since_us, 0);
}

static bool label_ok(const char *s)
{
	size_t n = 0;

	if (s == NULL || *s == '\0')
		return false;
	for (; s[n] != '\0'; n++) {
		char c = s[n];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
		      (c >= 'A' && c <= 'Z') || c == '.' || c == '_' ||
		      c == '-'))
			return false;
	}
	return n < MTA_METRICS_LABEL_LEN;
}

static void count_label(struct mta_metrics_labeled *c, const char *label)
{
	size_t i;

	if (!label_ok(label) || strcmp(label, "other") == 0) {
		c->other++;
		return;
	}
	for (i = 0; i < c->n; i++)
		if (strcmp(c->label[i], label) == 0) {
			c->value[i]++;
			return;
		}
	if (c->n == MTA_METRICS_LABELS_MAX) {
		c->other++;
		return;
	}
	snprintf(c->label[c->n], sizeof(c->label[c->n]), "%s", label);
	c->value[c->n++] = 1;
}

void mta_metrics_session(struct mta_metrics *m, int delta)
{
	if (m == NULL)
		return;
	if (delta > 0)
		atomic_fetch_add_explicit(&m->sessions_total, 1,
					  memory_order_relaxed);
	atomic_fetch_add_explicit(&m->sessions_open, delta,
				  memory_order_relaxed);
}

static void rejected_lock(struct mta_metrics *m)
{
	while (atomic_flag_test_and_set_explicit(&m->rejected_lock,
						 memory_order_acquire))
		; /* held for a few string compares */
}

static void rejected_unlock(struct mta_metrics *m)
{
	atomic_flag_clear_explicit(&m->rejected_lock, memory_order_release);
}

void mta_metrics_accepted(struct mta_metrics *m)
{
	if (m != NULL)
		atomic_fetch_add_explicit(&m->accepted, 1,
					  memory_order_relaxed);
}

void mta_metrics_rejected(struct mta_metrics *m, const char *dsn)
{
	if (m == NULL)
		return;
	rejected_lock(m);
	count_label(&m->rejected, dsn != NULL && *dsn ? dsn : "none");
	rejected_unlock(m);
}

static enum mta_metrics_auth auth_kind(const char *auth)
{
	size_t n;

	if (auth == NULL)
		return MTA_METRICS_AUTH_NONE;
	n = strcspn(auth, " ");
	if (n == 4 && strncmp(auth, "dane", 4) == 0)
		return MTA_METRICS_AUTH_DANE;
	if (n == 7 && strncmp(auth, "mta-sts", 7) == 0)
		return MTA_METRICS_AUTH_MTASTS;
	if (n == 6 && strncmp(auth, "verify", 6) == 0)
		return MTA_METRICS_AUTH_VERIFY;
	return MTA_METRICS_AUTH_NONE;
}

void mta_metrics_delivery(struct mta_metrics *m, const char *status,
			  const char *auth, const char *dsn)
{
	size_t s;

	if (m == NULL || status == NULL)
		return;
	for (s = 0; s < MTA_METRICS_NSTATUS; s++)
		if (strcmp(status, status_names[s]) == 0)
			break;
	if (s == MTA_METRICS_NSTATUS)
		s = MTA_METRICS_DEFERRED; /* "error": the message stays */
	m->deliveries[s][auth_kind(auth)]++;
	if (s == MTA_METRICS_DEFERRED)
		count_label(&m->deferrals, dsn != NULL && *dsn ? dsn : "none");
}

void mta_metrics_sts_fetch(struct mta_metrics *m, const char *result)
{
	if (m != NULL)
		count_label(&m->sts_fetches, result);
}

void mta_metrics_ct(struct mta_metrics *m, const char *verdict)
{
	if (m != NULL)
		count_label(&m->ct_verdicts, verdict);
}

void mta_metrics_continuity(struct mta_metrics *m, const char *verdict)
{
	if (m != NULL)
		count_label(&m->continuity, verdict);
}

void mta_metrics_commit(struct mta_metrics *m, bool ok, uint64_t usec)
{
	if (m == NULL)
		return;
	if (!ok) {
		atomic_fetch_add(&m->commit_failures, 1);
		return;
	}
	atomic_fetch_add(&m->commits, 1);
	for (size_t i = 0; i < MTA_METRICS_FSYNC_BUCKETS; i++)
		if (usec <= fsync_le_us[i]) {
			atomic_fetch_add(&m->fsync_bucket[i], 1);
			break;
		}
	atomic_fetch_add(&m->fsync_count, 1);
	atomic_fetch_add(&m->fsync_sum_us, usec);
}

void mta_metrics_writer_busy(struct mta_metrics *m, int64_t since_us)
{
	if (m != NULL)
		atomic_store(&m->writer_busy_since_us, since_us);
}

bool mta_metrics_writer_stuck(struct mta_metrics *m, int64_t now_us,
			      int64_t limit_us)
{
	int64_t since;

	if (m == NULL)
		return false;
	since = (int64_t)atomic_load(&m->writer_busy_since_us);
	return since > 0 && now_us - since > limit_us;
}

/* ---- rendering ------------------------------------------------------ */

struct out {
	struct mta_buf *b;
	int err;
};

__attribute__((format(printf, 2, 3))) static void put(struct out *o,
						      const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	if (o->err != 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line)) {
		o->err = -EOVERFLOW;
		return;
	}
	o->err = mta_buf_append(o->b, line, (size_t)n);
}

static void family(struct out *o, const char *name, const char *type,
		   const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void labeled(struct out *o, const char *name, const char *label,
		    const struct mta_metrics_labeled *c)
{
	for (size_t i = 0; i < c->n; i++)
		put(o, "%s{%s=\"%s\"} %" PRIu64 "\n", name, label, c->label[i],
		    c->value[i]);
	if (c->other > 0 || c->n == 0)
		put(o, "%s{%s=\"other\"} %" PRIu64 "\n", name, label,
		    c->other);
}

static void gauge(struct out *o, const char *name, const char *help,
		  int64_t v)
{
	if (v < 0)
		return;
	family(o, name, "gauge", help);
	put(o, "%s %" PRId64 "\n", name, v);
}

/* Over 100 lines on purpose: the metric families in the order of the
 * page it writes, a few lines each; it reads like its output. */
int mta_metrics_render(struct mta_metrics *m,
		       const struct mta_metrics_gauges *g,
		       struct mta_buf *out)
{
	struct out o = {out, 0};
	uint64_t cum = 0;

	family(&o, "mtad_sessions_total", "counter",
	       "Inbound SMTP sessions accepted.");
	put(&o, "mtad_sessions_total %" PRIu64 "\n",
	    (uint64_t)atomic_load(&m->sessions_total));
	family(&o, "mtad_sessions_open", "gauge",
	       "Inbound SMTP sessions open now.");
	put(&o, "mtad_sessions_open %" PRId64 "\n",
	    (int64_t)atomic_load(&m->sessions_open));
	family(&o, "mtad_messages_accepted_total", "counter",
	       "Messages answered 250 (committed and synced).");
	put(&o, "mtad_messages_accepted_total %" PRIu64 "\n",
	    (uint64_t)atomic_load(&m->accepted));
	family(&o, "mtad_messages_rejected_total", "counter",
	       "Commands refused by the SMTP server, by enhanced status "
	       "code.");
	rejected_lock(m);
	labeled(&o, "mtad_messages_rejected_total", "reason", &m->rejected);
	rejected_unlock(m);

	family(&o, "mtad_spool_commits_total", "counter",
	       "Spool write transactions committed and synced.");
	put(&o, "mtad_spool_commits_total %" PRIu64 "\n",
	    (uint64_t)atomic_load(&m->commits));
	family(&o, "mtad_spool_commit_failures_total", "counter",
	       "Spool write transactions that failed.");
	put(&o, "mtad_spool_commit_failures_total %" PRIu64 "\n",
	    (uint64_t)atomic_load(&m->commit_failures));
	family(&o, "mtad_spool_fsync_seconds", "histogram",
	       "Time of one spool commit with its sync.");
	for (size_t i = 0; i < MTA_METRICS_FSYNC_BUCKETS; i++) {
		cum += (uint64_t)atomic_load(&m->fsync_bucket[i]);
		put(&o, "mtad_spool_fsync_seconds_bucket{le=\"%g\"} %" PRIu64
			"\n",
		    (double)fsync_le_us[i] / 1e6, cum);
	}
	uint64_t cnt = (uint64_t)atomic_load(&m->fsync_count);
	put(&o, "mtad_spool_fsync_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
	    cnt < cum ? cum : cnt);
	put(&o, "mtad_spool_fsync_seconds_sum %.6f\n",
	    (double)atomic_load(&m->fsync_sum_us) / 1e6);
	put(&o, "mtad_spool_fsync_seconds_count %" PRIu64 "\n",
	    cnt < cum ? cum : cnt);

	family(&o, "mtad_deliveries_total", "counter",
	       "Recipient delivery attempts, by outcome and by the "
	       "authentication of the channel.");
	for (size_t s = 0; s < MTA_METRICS_NSTATUS; s++)
		for (size_t a = 0; a < MTA_METRICS_NAUTH; a++)
			put(&o,
			    "mtad_deliveries_total{status=\"%s\",auth=\"%s\"} "
			    "%" PRIu64 "\n",
			    status_names[s], auth_names[a], m->deliveries[s][a]);
	family(&o, "mtad_deferrals_total", "counter",
	       "Recipient attempts deferred, by enhanced status code.");
	labeled(&o, "mtad_deferrals_total", "reason", &m->deferrals);
	family(&o, "mtad_mta_sts_fetches_total", "counter",
	       "MTA-STS policy fetches, by result.");
	labeled(&o, "mtad_mta_sts_fetches_total", "result", &m->sts_fetches);
	family(&o, "mtad_ct_verdicts_total", "counter",
	       "Certificate Transparency checks of WebPKI chains, by verdict.");
	labeled(&o, "mtad_ct_verdicts_total", "verdict", &m->ct_verdicts);
	family(&o, "mtad_tls_continuity_total", "counter",
	       "Key continuity checks of MTA-STS hosts, by verdict.");
	labeled(&o, "mtad_tls_continuity_total", "verdict", &m->continuity);

	if (g != NULL) {
		family(&o, "mtad_queue_messages", "gauge",
		       "Messages in the spool, by state.");
		if (g->queue_queued >= 0)
			put(&o, "mtad_queue_messages{state=\"queued\"} %" PRId64
				"\n",
			    g->queue_queued);
		if (g->queue_held >= 0)
			put(&o, "mtad_queue_messages{state=\"held\"} %" PRId64
				"\n",
			    g->queue_held);
		if (g->queue_active >= 0)
			put(&o, "mtad_queue_messages{state=\"active\"} %" PRId64
				"\n",
			    g->queue_active);
		gauge(&o, "mtad_queue_recipients",
		      "Recipients of the messages in the spool.",
		      g->queue_rcpts);
		gauge(&o, "mtad_queue_bytes",
		      "Body bytes of the messages in the spool.",
		      g->queue_bytes);
		family(&o, "mtad_queue_oldest_age_seconds", "gauge",
		       "Age of the oldest message in the spool (0: empty).");
		put(&o, "mtad_queue_oldest_age_seconds %.3f\n",
		    g->oldest_age_s);
		gauge(&o, "mtad_spool_map_used_bytes",
		      "Bytes of the LMDB map in use.", g->map_used);
		gauge(&o, "mtad_spool_map_size_bytes",
		      "Size of the LMDB map (spool.max_size).", g->map_size);
		gauge(&o, "mtad_mta_sts_policies_cached",
		      "MTA-STS policies in the spool's cache.",
		      g->policy_cache);
		family(&o, "mtad_dnssec_selftest", "gauge",
		       "DNSSEC self-test: 1 passing, 0 failing, -1 not run "
		       "yet.");
		put(&o, "mtad_dnssec_selftest %d\n", g->dnssec_selftest);
		family(&o, "mtad_spool_corrupt", "gauge",
		       "1 when damage was seen in the spool since start.");
		put(&o, "mtad_spool_corrupt %d\n", g->spool_corrupt);
		family(&o, "mtad_ready", "gauge",
		       "1 when /readyz answers 200.");
		put(&o, "mtad_ready %d\n", g->ready);
	}
	return o.err;
}
