#include "mtasts.h"

#include "err.h"
#include "log.h"
#include "sts_fetch.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define FETCH_TIMEOUT_MS 10000
#define MAX_REFRESH 32 /* refreshes running at once */
#define MAX_TXT 16

struct mta_mtasts_query {
	struct mta_mtasts_query *prev, *next;
	struct mta_mtasts *m;
	char domain[MTA_STS_DOMAIN_MAX + 1];
	mta_mtasts_cb cb; /* NULL: a refresh */
	void *ud;
	bool refresh;
	struct mta_dns_query *dq;
	struct mta_sts_fetch *fq;
	struct mta_buf raw; /* cached record bytes (rec.text points here) */
	bool have_cached;
	struct mta_sts_cache_rec cached;
	enum mta_sts_txt_result txt_result;
	struct mta_sts_txt txt;
	enum mta_sts_decision decision;
	struct mta_sts_policy fetched;
};

struct sts_write {
	struct mta_commit commit;
	struct mta_mtasts *m;
	char key[MTA_STS_DOMAIN_MAX + 1];
	struct mta_buf rec;
};

struct mta_mtasts {
	struct mta_mtasts_params p;
	struct mta_sts_fetcher *fetcher;
	uv_timer_t refresh_timer;
	struct mta_mtasts_query *queries;
	unsigned nrefresh;
	unsigned writes_pending;
	/* recent fetch failures (domain, id, when): STS-54 */
	struct {
		char domain[MTA_STS_DOMAIN_MAX + 1];
		char id[MTA_STS_ID_MAX + 1];
		int64_t at;
	} failed[64];
	unsigned failed_next;
	bool stopping;
	void (*done)(void *arg);
	void *done_arg;
};

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

static uint32_t rnd(void)
{
	uint32_t r = 0;
	if (getrandom(&r, sizeof(r), 0) != sizeof(r))
		r = (uint32_t)time(NULL);
	return r;
}

static void maybe_stopped(struct mta_mtasts *m);

#define REFETCH_WAIT 300 /* seconds after a failed fetch of the same id */

static void note_failure(struct mta_mtasts *m,
			 const struct mta_mtasts_query *q)
{
	unsigned i = m->failed_next++ % 64;

	snprintf(m->failed[i].domain, sizeof(m->failed[i].domain), "%s",
		 q->domain);
	snprintf(m->failed[i].id, sizeof(m->failed[i].id), "%s", q->txt.id);
	m->failed[i].at = now_s();
}

static bool recently_failed(const struct mta_mtasts *m,
			    const struct mta_mtasts_query *q)
{
	int64_t now = now_s();

	for (unsigned i = 0; i < 64; i++)
		if (m->failed[i].at != 0 &&
		    now - m->failed[i].at < REFETCH_WAIT &&
		    strcmp(m->failed[i].domain, q->domain) == 0 &&
		    strcmp(m->failed[i].id, q->txt.id) == 0)
			return true;
	return false;
}

static void query_free(struct mta_mtasts_query *q)
{
	struct mta_mtasts *m = q->m;

	if (q->prev)
		q->prev->next = q->next;
	else
		m->queries = q->next;
	if (q->next)
		q->next->prev = q->prev;
	if (q->refresh)
		m->nrefresh--;
	mta_buf_free(&q->raw);
	free(q);
}

static void log_policy(const struct mta_mtasts_query *q,
		       const struct mta_sts_policy *p, const char *id,
		       const char *source)
{
	struct mta_logline ll;

	mta_log_begin(&ll, MTA_LOG_INFO, q->refresh ? "sts_refresh" : "sts_policy");
	mta_log_str(&ll, "domain", q->domain);
	mta_log_str(&ll, "id", id);
	mta_log_str(&ll, "mode", mta_sts_mode_name(p->mode));
	mta_log_int(&ll, "max_age", p->max_age);
	mta_log_str(&ll, "source", source);
	mta_log_end(&ll);
}

static void finish(struct mta_mtasts_query *q, const struct mta_sts_policy *p,
		   const char *id, const char *why)
{
	struct mta_mtasts_result r = {
		.have = p != NULL,
		.policy = p,
		.id = id,
		.why = why,
	};

	if (q->cb != NULL)
		q->cb(&r, q->ud);
	query_free(q);
}

static void on_write_done(struct mta_commit *c)
{
	struct sts_write *w = container_of(c, struct sts_write, commit);
	struct mta_mtasts *m = w->m;

	if (c->result != 0) {
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_ERR, "sts_cache_write_failed");
		mta_log_str(&ll, "domain", w->key);
		mta_log_str(&ll, "error", mta_errname(c->result));
		mta_log_end(&ll);
	}
	mta_buf_free(&w->rec);
	free(w);
	m->writes_pending--;
	maybe_stopped(m);
}

/* rec NULL: delete the domain's entry. */
static void cache_write(struct mta_mtasts *m, const char *domain,
			const struct mta_sts_cache_rec *rec)
{
	struct sts_write *w = calloc(1, sizeof(*w));

	if (w == NULL)
		return;
	w->m = m;
	snprintf(w->key, sizeof(w->key), "%s", domain);
	if (rec != NULL && mta_sts_cache_encode(rec, &w->rec) != 0) {
		mta_buf_free(&w->rec);
		free(w);
		return;
	}
	m->writes_pending++;
	mta_writer_submit_sts_put(m->p.writer, &w->commit, w->key,
				  rec != NULL ? w->rec.data : NULL,
				  rec != NULL ? w->rec.len : 0, on_write_done);
}

static void fetch_failed(struct mta_mtasts_query *q, const char *status,
			 const char *why)
{
	mta_metrics_sts_fetch(q->m->p.metrics, status);
	struct mta_logline ll;

	mta_log_begin(&ll, MTA_LOG_WARN, "sts_fetch_failed");
	mta_log_str(&ll, "domain", q->domain);
	mta_log_str(&ll, "status", status);
	mta_log_str(&ll, "why", why);
	mta_log_str(&ll, "kept",
		    q->decision == MTA_STS_FETCH_KEEP_OLD_ON_FAIL &&
				    q->have_cached
			    ? "cached policy"
			    : "none");
	mta_log_end(&ll);
	if (strcmp(status, "skipped") != 0)
		note_failure(q->m, q);
	if (q->decision == MTA_STS_FETCH_KEEP_OLD_ON_FAIL && q->have_cached) {
		log_policy(q, &q->cached.policy, q->cached.id, "cache");
		finish(q, &q->cached.policy, q->cached.id, NULL);
		return;
	}
	finish(q, NULL, NULL, why);
}

static void on_fetch(const struct mta_sts_fetch_result *r, void *ud)
{
	struct mta_mtasts_query *q = ud;
	const char *why = NULL;
	int64_t now = now_s();

	q->fq = NULL;
	if (r->status != MTA_STS_FETCH_OK) {
		fetch_failed(q, mta_sts_fetch_status_name(r->status), r->why);
		return;
	}
	if (mta_sts_parse_policy(r->body, r->body_len, &q->fetched, &why) !=
	    0) {
		fetch_failed(q, "invalid", why ? why : "invalid policy");
		return;
	}
	if (mta_sts_policy_cacheable(&q->fetched)) {
		struct mta_sts_cache_rec rec;
		memset(&rec, 0, sizeof(rec));
		snprintf(rec.domain, sizeof(rec.domain), "%s", q->domain);
		snprintf(rec.id, sizeof(rec.id), "%s", q->txt.id);
		rec.fetched_at = now;
		rec.expires_at = now + (int64_t)q->fetched.max_age;
		rec.text = r->body;
		rec.text_len = r->body_len;
		cache_write(q->m, q->domain, &rec);
	}
	mta_metrics_sts_fetch(q->m->p.metrics, "ok");
	log_policy(q, &q->fetched, q->txt.id, "fetch");
	finish(q, &q->fetched, q->txt.id, NULL);
}

static void on_host(const struct mta_dns_result *res, void *ud)
{
	struct mta_mtasts_query *q = ud;
	struct mta_mtasts *m = q->m;
	char ip[INET6_ADDRSTRLEN] = "";
	int rc;

	q->dq = NULL;
	if (res->status != MTA_DNS_OK || res->count == 0) {
		fetch_failed(q, "dns", res->why ? res->why
						: mta_dns_status_name(res->status));
		return;
	}
	if (res->addr[0].ss_family == AF_INET6)
		uv_ip6_name((const struct sockaddr_in6 *)&res->addr[0], ip,
			    sizeof(ip));
	else
		uv_ip4_name((const struct sockaddr_in *)&res->addr[0], ip,
			    sizeof(ip));
	struct mta_sts_fetch_opts o = {
		.domain = q->domain,
		.connect_addr = ip,
		.https_port = (uint16_t)m->p.https_port,
		.ca_file = m->p.ca_file,
		.timeout_ms = FETCH_TIMEOUT_MS,
		.max_body = 0,
	};
	rc = mta_sts_fetch_start(m->fetcher, &o, on_fetch, q, &q->fq);
	if (rc != 0)
		fetch_failed(q, "error", mta_strerror(rc));
}

static void start_fetch(struct mta_mtasts_query *q)
{
	char host[MTA_STS_DOMAIN_MAX + 16];
	int rc;

	snprintf(host, sizeof(host), "mta-sts.%s", q->domain);
	rc = mta_dns_addr(q->m->p.dns, host, on_host, q, &q->dq);
	if (rc != 0)
		fetch_failed(q, "dns", mta_strerror(rc));
}

static void on_txt(const struct mta_dns_result *res, void *ud)
{
	struct mta_mtasts_query *q = ud;
	struct mta_mtasts *m = q->m;
	const char *why = NULL;

	q->dq = NULL;
	q->txt_result = MTA_STS_TXT_RESULT_NONE;
	if (res->status == MTA_DNS_OK) {
		const char *texts[MAX_TXT];
		size_t lens[MAX_TXT], n = 0;
		for (size_t i = 0; i < res->count && n < MAX_TXT; i++) {
			texts[n] = res->txt[i].text;
			lens[n++] = res->txt[i].len;
		}
		if (mta_sts_pick_txt(texts, lens, n, &q->txt, &why) ==
		    MTA_STS_TXT_OK)
			q->txt_result = MTA_STS_TXT_RESULT_ID;
	} else if (res->status == MTA_DNS_TEMPFAIL ||
		   res->status == MTA_DNS_BOGUS) {
		q->txt_result = MTA_STS_TXT_RESULT_TEMPFAIL;
	}
	if (mta_spool_sts_get(m->p.spool, q->domain, &q->raw) == 0 &&
	    mta_sts_cache_decode(q->raw.data, q->raw.len, &q->cached) == 0)
		q->have_cached = true;
	q->decision = mta_sts_cache_decide(
		q->have_cached ? &q->cached : NULL, q->txt_result,
		q->txt_result == MTA_STS_TXT_RESULT_ID ? q->txt.id : NULL,
		now_s());
	if (q->refresh && q->have_cached &&
	    q->decision == MTA_STS_USE_CACHED) {
		/* renew before expiry: refetch, keep the old one on failure */
		q->decision = MTA_STS_FETCH_KEEP_OLD_ON_FAIL;
		if (q->txt_result != MTA_STS_TXT_RESULT_ID)
			snprintf(q->txt.id, sizeof(q->txt.id), "%s",
				 q->cached.id);
	}
	if (q->decision != MTA_STS_USE_CACHED &&
	    q->decision != MTA_STS_NO_POLICY && recently_failed(m, q)) {
		/* STS-54: the same id failed to fetch moments ago; do not
		 * hammer the policy host on every delivery retry */
		fetch_failed(q, "skipped", "fetch failed less than 5 min ago");
		return;
	}
	switch (q->decision) {
	case MTA_STS_USE_CACHED:
		log_policy(q, &q->cached.policy, q->cached.id, "cache");
		finish(q, &q->cached.policy, q->cached.id, NULL);
		return;
	case MTA_STS_NO_POLICY:
		finish(q, NULL, NULL,
		       q->txt_result == MTA_STS_TXT_RESULT_TEMPFAIL
			       ? "TXT lookup failed, nothing cached"
			       : (why ? why : "no MTA-STS policy"));
		return;
	case MTA_STS_FETCH_KEEP_OLD_ON_FAIL:
	case MTA_STS_FETCH:
	default:
		start_fetch(q);
	}
}

static int query_start(struct mta_mtasts *m, const char *domain,
		       mta_mtasts_cb cb, void *ud, bool refresh,
		       struct mta_mtasts_query **out)
{
	struct mta_mtasts_query *q;
	char name[MTA_STS_DOMAIN_MAX + 16];
	size_t n = strlen(domain);
	int rc;

	while (n > 0 && domain[n - 1] == '.')
		n--;
	if (n == 0 || n > MTA_STS_DOMAIN_MAX)
		return -EINVAL;
	q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->m = m;
	for (size_t i = 0; i < n; i++)
		q->domain[i] = (char)tolower((unsigned char)domain[i]);
	q->cb = cb;
	q->ud = ud;
	q->refresh = refresh;
	snprintf(name, sizeof(name), "_mta-sts.%s", q->domain);
	rc = mta_dns_txt(m->p.dns, name, on_txt, q, &q->dq);
	if (rc != 0) {
		free(q);
		return rc;
	}
	q->next = m->queries;
	if (m->queries)
		m->queries->prev = q;
	m->queries = q;
	if (refresh)
		m->nrefresh++;
	if (out != NULL)
		*out = q;
	return 0;
}

int mta_mtasts_lookup(struct mta_mtasts *m, const char *domain,
		      mta_mtasts_cb cb, void *ud, struct mta_mtasts_query **q)
{
	if (m->stopping)
		return MTA_ECLOSED;
	return query_start(m, domain, cb, ud, false, q);
}

int mta_mtasts_refresh(struct mta_mtasts *m, const char *domain,
		       mta_mtasts_cb cb, void *ud, struct mta_mtasts_query **q)
{
	if (m->stopping)
		return MTA_ECLOSED;
	return query_start(m, domain, cb, ud, true, q);
}

void mta_mtasts_cancel(struct mta_mtasts_query *q)
{
	if (q->dq != NULL)
		mta_dns_cancel(q->dq);
	if (q->fq != NULL)
		mta_sts_fetch_cancel(q->fq);
	q->dq = NULL;
	q->fq = NULL;
	query_free(q);
}

/* ---- the refresher ------------------------------------------------- */

struct due_list {
	size_t n;
	char dom[MAX_REFRESH][MTA_STS_DOMAIN_MAX + 1];
	bool expired[MAX_REFRESH];
	int64_t now;
	uint32_t seed;
};

static int on_cached(void *ud, const char *domain, const uint8_t *rec,
		     size_t len)
{
	struct due_list *d = ud;
	struct mta_sts_cache_rec *c = malloc(sizeof(*c));
	bool expired, due;

	if (c == NULL)
		return 1;
	if (mta_sts_cache_decode(rec, len, c) != 0) {
		free(c);
		return 0;
	}
	expired = d->now >= c->expires_at;
	due = mta_sts_refresh_due(c, d->now, d->seed ^ (uint32_t)len);
	free(c);
	if (!expired && !due)
		return 0;
	if (d->n >= MAX_REFRESH)
		return 1;
	snprintf(d->dom[d->n], sizeof(d->dom[0]), "%s", domain);
	d->expired[d->n++] = expired;
	return 0;
}

static bool refreshing(const struct mta_mtasts *m, const char *domain)
{
	for (const struct mta_mtasts_query *q = m->queries; q; q = q->next)
		if (q->refresh && strcmp(q->domain, domain) == 0)
			return true;
	return false;
}

static void on_refresh_timer(uv_timer_t *t)
{
	struct mta_mtasts *m = t->data;
	struct due_list *d = malloc(sizeof(*d));

	if (d == NULL || m->stopping) {
		free(d);
		return;
	}
	d->n = 0;
	d->now = now_s();
	d->seed = rnd();
	(void)mta_spool_sts_foreach(m->p.spool, on_cached, d);
	for (size_t i = 0; i < d->n; i++) {
		if (d->expired[i]) {
			/* expired and not renewed in time: gone */
			cache_write(m, d->dom[i], NULL);
			continue;
		}
		if (m->nrefresh >= MAX_REFRESH || refreshing(m, d->dom[i]))
			continue;
		(void)query_start(m, d->dom[i], NULL, NULL, true, NULL);
	}
	free(d);
}

/* ---- start and stop ------------------------------------------------ */

int mta_mtasts_start(const struct mta_mtasts_params *p,
		     struct mta_mtasts **out)
{
	struct mta_mtasts *m = calloc(1, sizeof(*m));
	int rc;

	if (m == NULL)
		return -ENOMEM;
	m->p = *p;
	rc = mta_sts_fetcher_init(p->loop, &m->fetcher);
	if (rc != 0) {
		free(m);
		return rc;
	}
	uv_timer_init(p->loop, &m->refresh_timer);
	m->refresh_timer.data = m;
	uint64_t ms = (uint64_t)(p->refresh_interval ? p->refresh_interval
						     : 600) *
		      1000u;
	uv_timer_start(&m->refresh_timer, on_refresh_timer, ms, ms);
	*out = m;
	return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
	struct mta_mtasts *m = h->data;
	void (*done)(void *) = m->done;
	void *arg = m->done_arg;

	free(m);
	if (done)
		done(arg);
}

static void maybe_stopped(struct mta_mtasts *m)
{
	if (!m->stopping || m->writes_pending > 0 ||
	    uv_is_closing((uv_handle_t *)&m->refresh_timer))
		return;
	mta_sts_fetcher_free(m->fetcher);
	m->fetcher = NULL;
	uv_close((uv_handle_t *)&m->refresh_timer, on_timer_closed);
}

void mta_mtasts_stop(struct mta_mtasts *m, void (*done)(void *arg),
		     void *arg)
{
	m->stopping = true;
	m->done = done;
	m->done_arg = arg;
	uv_timer_stop(&m->refresh_timer);
	while (m->queries != NULL)
		mta_mtasts_cancel(m->queries);
	maybe_stopped(m);
}

void mta_mtasts_set_ca_file(struct mta_mtasts *m, const char *ca_file)
{
	m->p.ca_file = ca_file;
}
