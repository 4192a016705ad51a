/*
 * health.c - /healthz, /readyz, /metrics.  See health.h.
 */
#include "health.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>

static int64_t now_us(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static void text(struct mtad_http_reply *r, int status, const char *s)
{
	r->status = status;
	r->content_type = "text/plain; charset=utf-8";
	if (mta_buf_append(&r->body, s, strlen(s)) != 0)
		r->status = 500;
}

static int selftest_state(const struct mtad_health *h)
{
	struct mta_delivery *d = *h->delivery;

	return d != NULL ? mta_delivery_dnssec_state(d) : -1;
}

/* The failing checks, one per line, into why; the number failing. */
static int readiness(const struct mtad_health *h, char *why, size_t len)
{
	int nfail = 0, st;
	size_t off = 0;

#define FAIL(...)                                                             \
	do {                                                                  \
		nfail++;                                                      \
		if (off < len)                                                \
			off += (size_t)snprintf(why + off, len - off,         \
						__VA_ARGS__);                 \
	} while (0)
	why[0] = '\0';
	if (h->spool == NULL)
		FAIL("spool: not open\n");
	else if (mta_spool_corrupt(h->spool))
		FAIL("spool: damage seen (see the spool_corrupt log lines)\n");
	if (!*h->accepting)
		FAIL("listeners: not accepting (starting or shutting down)\n");
	st = selftest_state(h);
	if (st < 0)
		FAIL("dnssec: self-test has not run yet\n");
	else if (st == 0)
		FAIL("dnssec: self-test failing (validation does not work; "
		     "check dns.resolver and dns.trust_anchor)\n");
	if (mta_metrics_writer_stuck(h->metrics, now_us(),
				     MTAD_HEALTH_WRITER_STUCK_S * 1000000LL))
		FAIL("writer: a spool commit has been running for more than "
		     "%ds\n",
		     MTAD_HEALTH_WRITER_STUCK_S);
#undef FAIL
	return nfail;
}

static void gather(const struct mtad_health *h, struct mta_metrics_gauges *g,
		   bool ready)
{
	struct mta_spool_info si;
	uint64_t msgs = 0, rcpts = 0, bytes = 0;
	struct mta_delivery *d = *h->delivery;

	memset(g, 0, sizeof(*g));
	g->queue_queued = g->queue_held = g->queue_active = -1;
	g->queue_rcpts = g->queue_bytes = -1;
	g->map_used = g->map_size = g->policy_cache = -1;
	g->dnssec_selftest = selftest_state(h);
	g->ready = ready;
	if (h->spool == NULL)
		return;
	g->spool_corrupt = mta_spool_corrupt(h->spool);
	int64_t active = d != NULL ? (int64_t)mta_delivery_nactive(d) : 0;
	if (mta_spool_info(h->spool, &si) == 0) {
		g->map_used = (int64_t)si.map_used;
		g->map_size = (int64_t)si.map_size;
		g->policy_cache = si.sts_policies;
		g->queue_held = si.held;
		if (si.oldest_arrival_us > 0) {
			int64_t age = now_us() - si.oldest_arrival_us;
			g->oldest_age_s = age > 0 ? (double)age / 1e6 : 0;
		}
	}
	if (mta_spool_totals(h->spool, &msgs, &rcpts, &bytes) == 0) {
		int64_t q = (int64_t)msgs - active -
			    (g->queue_held > 0 ? g->queue_held : 0);
		g->queue_queued = q > 0 ? q : 0;
		g->queue_active = active;
		g->queue_rcpts = (int64_t)rcpts;
		g->queue_bytes = (int64_t)bytes;
	}
}

void mtad_health_handle(void *arg, const char *path,
			struct mtad_http_reply *r)
{
	const struct mtad_health *h = arg;
	char why[1024];

	if (strcmp(path, "/healthz") == 0) {
		text(r, 200, "ok\n");
	} else if (strcmp(path, "/readyz") == 0) {
		if (readiness(h, why, sizeof(why)) == 0)
			text(r, 200, "ready\n");
		else
			text(r, 503, why);
	} else if (strcmp(path, "/metrics") == 0) {
		struct mta_metrics_gauges g;
		gather(h, &g, readiness(h, why, sizeof(why)) == 0);
		r->status = 200;
		r->content_type = "text/plain; version=0.0.4; charset=utf-8";
		if (h->metrics == NULL ||
		    mta_metrics_render(h->metrics, &g, &r->body) != 0) {
			mta_buf_free(&r->body);
			text(r, 500, "metrics unavailable\n");
		}
	} else {
		text(r, 404, "not found: /healthz, /readyz, /metrics\n");
	}
}
