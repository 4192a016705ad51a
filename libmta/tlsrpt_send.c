/*
 * tlsrpt_send.c - the TLSRPT reporter (tlsrpt_send.h).
 */
#include "tlsrpt_send.h"

#include <errno.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>

#include "config.h"
#include "dkim.h"
#include "dns.h"
#include "envelope.h"
#include "err.h"
#include "log.h"
#include "spool.h"
#include "sts_fetch.h"
#include "tlsrpt.h"
#include "writer.h"

#define DAY_S 86400
#define JITTER_MAX_S (4 * 3600)
#define BACKOFF_MIN_S 600
#define BACKOFF_MAX_S (4 * 3600)
#define MAX_AGE_DAYS 2
#define POST_TIMEOUT_MS 30000

struct pair {
	char day[11];
	char domain[256];
};

struct mta_tlsrpt_sender {
	struct mta_tlsrpt_sender_params p;
	uv_timer_t timer;
	struct mta_sts_fetcher *fetcher;
	bool running, stopping, timer_closed, commit_pending;
	unsigned backoff_s;

	/* the round */
	char only_day[11]; /* "" = days before today */
	char today[11], oldest[11];
	struct pair *pairs;
	size_t npairs, cur;
	unsigned nsent, nfailed, nskipped;
	void (*line)(void *ud, const char *text);
	void (*done)(void *ud, int rc);
	void *ud;

	/* the pair being sent */
	struct mta_dns_query *dq;
	struct mta_sts_fetch *fq;
	struct mta_tlsrpt_rua rua;
	size_t ri;
	struct mta_tlsrpt_report rep;
	bool have_rep, delivered;
	char *json;
	uint8_t *gz;
	size_t gzlen;
	char id[400], contact[320];
	struct mta_tlsrpt_meta meta;
	char url_host[256];
	uint16_t url_port;
	struct mta_commit commit;
	struct mta_envelope env;
	struct mta_body body;
	char qid[MTA_QID_LEN + 1];
	char mark[300];
};

static void next_pair(struct mta_tlsrpt_sender *s);
static void next_rua(struct mta_tlsrpt_sender *s);

static uint32_t rnd(uint32_t bound)
{
	return bound ? arc4random_uniform(bound) : 0;
}

static void day_of(time_t t, char out[11])
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 11, "%Y-%m-%d", &tm);
}

static void logev(struct mta_tlsrpt_sender *s, const char *result,
		  const char *detail)
{
	const struct pair *pr = &s->pairs[s->cur];
	struct mta_logline ll;
	char text[600];

	mta_log_begin(&ll, strcmp(result, "failed") == 0 ? MTA_LOG_WARN
							 : MTA_LOG_INFO,
		      "tlsrpt_send");
	mta_log_str(&ll, "day", pr->day);
	mta_log_str(&ll, "domain", pr->domain);
	mta_log_str(&ll, "result", result);
	mta_log_str(&ll, "detail", detail);
	mta_log_end(&ll);
	if (s->line != NULL) {
		snprintf(text, sizeof(text), "%s %s %s %s", pr->day, pr->domain,
			 result, detail);
		s->line(s->ud, text);
	}
}

/* ---- freeing -------------------------------------------------------- */

static void pair_reset(struct mta_tlsrpt_sender *s)
{
	if (s->have_rep)
		mta_tlsrpt_report_free(&s->rep);
	s->have_rep = false;
	free(s->json);
	s->json = NULL;
	free(s->gz);
	s->gz = NULL;
	s->gzlen = 0;
	s->ri = 0;
	s->delivered = false;
	memset(&s->rua, 0, sizeof(s->rua));
}

static void maybe_free(struct mta_tlsrpt_sender *s)
{
	if (!s->stopping || !s->timer_closed || s->commit_pending)
		return;
	pair_reset(s);
	free(s->pairs);
	free(s);
}

static void on_timer_closed(uv_handle_t *h)
{
	struct mta_tlsrpt_sender *s = h->data;
	s->timer_closed = true;
	maybe_free(s);
}

/* ---- scheduling ----------------------------------------------------- */

static void on_timer(uv_timer_t *t);

static void schedule(struct mta_tlsrpt_sender *s, bool failed)
{
	uint64_t delay_s;

	if (failed) {
		s->backoff_s = s->backoff_s ? s->backoff_s * 2 : BACKOFF_MIN_S;
		if (s->backoff_s > BACKOFF_MAX_S)
			s->backoff_s = BACKOFF_MAX_S;
		delay_s = s->backoff_s;
	} else {
		time_t now = time(NULL);
		s->backoff_s = 0;
		delay_s = (uint64_t)(DAY_S - now % DAY_S) + rnd(JITTER_MAX_S);
	}
	uv_timer_start(&s->timer, on_timer, delay_s * 1000, 0);
}

static void round_end(struct mta_tlsrpt_sender *s)
{
	struct mta_logline ll;
	void (*done)(void *, int) = s->done;
	void *ud = s->ud;

	mta_log_begin(&ll, MTA_LOG_INFO, "tlsrpt_round");
	mta_log_int(&ll, "pairs", (long long)s->npairs);
	mta_log_int(&ll, "sent", s->nsent);
	mta_log_int(&ll, "failed", s->nfailed);
	mta_log_int(&ll, "skipped", s->nskipped);
	mta_log_end(&ll);
	s->running = false;
	s->line = NULL;
	s->done = NULL;
	s->ud = NULL;
	free(s->pairs);
	s->pairs = NULL;
	s->npairs = 0;
	schedule(s, s->nfailed > 0);
	if (done != NULL)
		done(ud, 0);
}

static int list_pair(void *ud, const char *day, const char *domain,
		     bool reported)
{
	struct mta_tlsrpt_sender *s = ud;
	struct pair *np;

	if (reported)
		return 0;
	if (s->only_day[0] != '\0') {
		if (strcmp(day, s->only_day) != 0)
			return 0;
	} else if (strcmp(day, s->today) >= 0 || strcmp(day, s->oldest) < 0) {
		return 0;
	}
	np = realloc(s->pairs, (s->npairs + 1) * sizeof(*np));
	if (np == NULL)
		return -ENOMEM;
	s->pairs = np;
	snprintf(np[s->npairs].day, sizeof(np->day), "%s", day);
	snprintf(np[s->npairs].domain, sizeof(np->domain), "%s", domain);
	s->npairs++;
	return 0;
}

static void on_begin(uv_timer_t *t)
{
	next_pair(t->data);
}

static int round_start(struct mta_tlsrpt_sender *s, const char *day)
{
	time_t now = time(NULL);
	int rc;

	if (s->stopping)
		return MTA_ECLOSED;
	if (s->running)
		return MTA_EAGAIN;
	uv_timer_stop(&s->timer);
	snprintf(s->only_day, sizeof(s->only_day), "%s", day ? day : "");
	day_of(now, s->today);
	day_of(now - (time_t)MAX_AGE_DAYS * DAY_S, s->oldest);
	s->npairs = 0;
	s->cur = 0;
	s->nsent = s->nfailed = s->nskipped = 0;
	rc = mta_tlsrpt_domains(s->p.spool, list_pair, s);
	if (rc != 0) {
		free(s->pairs);
		s->pairs = NULL;
		s->npairs = 0;
		return rc;
	}
	s->running = true;
	s->cur = (size_t)-1;
	/* the first pair on the next loop turn: run() never calls back
	 * from inside the call (the async contract) */
	uv_timer_start(&s->timer, on_begin, 0, 0);
	return 0;
}

static void on_timer(uv_timer_t *t)
{
	struct mta_tlsrpt_sender *s = t->data;
	int rc = round_start(s, NULL);

	if (rc != 0 && rc != MTA_EAGAIN) {
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_WARN, "tlsrpt_round");
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_end(&ll);
		schedule(s, true);
	}
}

/* ---- one pair ------------------------------------------------------- */

static void on_marked(struct mta_commit *c)
{
	struct mta_tlsrpt_sender *s =
		(struct mta_tlsrpt_sender *)((char *)c -
					     offsetof(struct mta_tlsrpt_sender,
						      commit));
	s->commit_pending = false;
	if (s->stopping) {
		maybe_free(s);
		return;
	}
	if (c->result != 0) {
		s->nfailed++;
		logev(s, "failed", "marking the day reported failed");
	}
	next_pair(s);
}

/* The pair is finished: sent (mark it), nothing to send (mark it so it
 * is not looked up again) or failed (retried next round). */
static void pair_done(struct mta_tlsrpt_sender *s, bool mark)
{
	const struct pair *pr = &s->pairs[s->cur];

	if (!mark) {
		s->nfailed++;
		next_pair(s);
		return;
	}
	snprintf(s->mark, sizeof(s->mark), "S %s %s", pr->day, pr->domain);
	s->commit_pending = true;
	mta_writer_submit_counter_add(s->p.writer, &s->commit, s->mark, 1,
				      on_marked);
}

static void next_pair(struct mta_tlsrpt_sender *s);

static bool txt_is_tlsrpt(const struct mta_dns_txt *t)
{
	return t->len >= 10 && memcmp(t->text, "v=TLSRPTv1", 10) == 0 &&
	       (t->len == 10 || t->text[10] == ';' || t->text[10] == ' ');
}

static void on_txt(const struct mta_dns_result *r, void *ud)
{
	struct mta_tlsrpt_sender *s = ud;
	const struct pair *pr = &s->pairs[s->cur];
	const struct mta_dns_txt *rec = NULL;
	size_t n = 0;
	int rc;

	s->dq = NULL;
	if (r->status == MTA_DNS_TEMPFAIL || r->status == MTA_DNS_BOGUS) {
		logev(s, "failed", "_smtp._tls lookup failed");
		pair_done(s, false);
		return;
	}
	for (size_t i = 0; r->status == MTA_DNS_OK && i < r->count; i++)
		if (txt_is_tlsrpt(&r->txt[i])) {
			rec = &r->txt[i];
			n++;
		}
	if (n != 1 ||
	    mta_tlsrpt_parse_record(rec->text, rec->len, &s->rua) != 0) {
		s->nskipped++;
		logev(s, "skipped", n == 0   ? "no TLSRPT record"
				    : n > 1 ? "more than one TLSRPT record"
					    : "no usable rua");
		pair_done(s, true);
		return;
	}
	rc = mta_tlsrpt_collect(s->p.spool, pr->day, pr->domain, &s->rep);
	if (rc == 0) {
		s->have_rep = true;
		mta_tlsrpt_meta_from_config(s->p.cfg, pr->day, pr->domain,
					    &s->meta, s->id, sizeof(s->id),
					    s->contact, sizeof(s->contact));
		rc = mta_tlsrpt_json(&s->rep, &s->meta, &s->json);
	}
	if (rc == 0)
		rc = mta_tlsrpt_gzip(s->json, strlen(s->json), &s->gz,
				     &s->gzlen);
	if (rc != 0) {
		logev(s, "failed", mta_strerror(rc));
		pair_done(s, false);
		return;
	}
	s->ri = 0;
	next_rua(s);
}

static void next_pair(struct mta_tlsrpt_sender *s)
{
	char name[300];
	int rc;

	pair_reset(s);
	for (;;) {
		s->cur++;
		if (s->cur >= s->npairs) {
			round_end(s);
			return;
		}
		snprintf(name, sizeof(name), "_smtp._tls.%s",
			 s->pairs[s->cur].domain);
		rc = mta_dns_txt(s->p.dns, name, on_txt, s, &s->dq);
		if (rc == 0)
			return;
		s->dq = NULL;
		s->nfailed++;
		logev(s, "failed", mta_strerror(rc));
	}
}

/* ---- https ---------------------------------------------------------- */

static void on_posted(const struct mta_sts_fetch_result *r, void *ud)
{
	struct mta_tlsrpt_sender *s = ud;
	char detail[700];

	s->fq = NULL;
	snprintf(detail, sizeof(detail), "%s %s: %s",
		 r->status == MTA_STS_FETCH_OK ? "posted" : "post failed",
		 s->rua.u[s->ri - 1].uri, r->why);
	if (r->status == MTA_STS_FETCH_OK) {
		s->delivered = true;
		logev(s, "https", detail);
	} else {
		logev(s, "https-failed", detail);
	}
	next_rua(s);
}

static void on_url_addr(const struct mta_dns_result *r, void *ud)
{
	struct mta_tlsrpt_sender *s = ud;
	char ip[INET6_ADDRSTRLEN];
	struct mta_sts_fetch_opts o = {0};
	int rc;

	s->dq = NULL;
	if (r->status != MTA_DNS_OK || r->count == 0) {
		logev(s, "https-failed", "the URL's host has no address");
		next_rua(s);
		return;
	}
	if (r->addr[0].ss_family == AF_INET6)
		inet_ntop(AF_INET6,
			  &((const struct sockaddr_in6 *)&r->addr[0])->sin6_addr,
			  ip, sizeof(ip));
	else
		inet_ntop(AF_INET,
			  &((const struct sockaddr_in *)&r->addr[0])->sin_addr,
			  ip, sizeof(ip));
	o.connect_addr = ip;
	o.https_port = s->p.https_port;
	o.ca_file = s->p.cfg->tls_ca_file;
	o.timeout_ms = POST_TIMEOUT_MS;
	o.url = s->rua.u[s->ri - 1].uri;
	o.url_host = s->url_host;
	o.url_port = s->url_port;
	o.post = s->gz;
	o.post_len = s->gzlen;
	o.post_type = "application/tlsrpt+gzip";
	rc = mta_sts_fetch_start(s->fetcher, &o, on_posted, s, &s->fq);
	if (rc != 0) {
		s->fq = NULL;
		logev(s, "https-failed", mta_strerror(rc));
		next_rua(s);
	}
}

/* host and port of https://host[:port][/...]; -EINVAL otherwise. */
static int url_split(const char *url, char *host, size_t hlen,
		     uint16_t *port)
{
	const char *h = url + 8, *e = h;
	unsigned long p = 443;

	if (strncmp(url, "https://", 8) != 0)
		return -EINVAL;
	while (*e && *e != '/' && *e != ':' && *e != '?' && *e != '#')
		e++;
	if (e == h || (size_t)(e - h) >= hlen || memchr(h, '@', (size_t)(e - h)))
		return -EINVAL;
	memcpy(host, h, (size_t)(e - h));
	host[e - h] = '\0';
	if (*e == ':') {
		char *end;
		p = strtoul(e + 1, &end, 10);
		if (end == e + 1 || p == 0 || p > 65535 ||
		    (*end && *end != '/' && *end != '?'))
			return -EINVAL;
	}
	*port = (uint16_t)p;
	return 0;
}

static void start_post(struct mta_tlsrpt_sender *s, const char *uri)
{
	int rc = url_split(uri, s->url_host, sizeof(s->url_host),
			   &s->url_port);

	if (rc == 0)
		rc = mta_dns_addr(s->p.dns, s->url_host, on_url_addr, s,
				  &s->dq);
	if (rc != 0) {
		s->dq = NULL;
		logev(s, "https-failed", "unusable URL");
		next_rua(s);
	}
}

/* ---- mailto --------------------------------------------------------- */

static void on_mail_committed(struct mta_commit *c)
{
	struct mta_tlsrpt_sender *s =
		(struct mta_tlsrpt_sender *)((char *)c -
					     offsetof(struct mta_tlsrpt_sender,
						      commit));
	char detail[700];

	s->commit_pending = false;
	mta_envelope_free(&s->env);
	mta_body_free(&s->body);
	if (s->stopping) {
		maybe_free(s);
		return;
	}
	if (c->result == 0) {
		s->delivered = true;
		snprintf(detail, sizeof(detail), "queued %s to %s", s->qid,
			 s->rua.u[s->ri - 1].uri);
		logev(s, "mail", detail);
		if (s->p.kick != NULL)
			s->p.kick(s->p.kick_ud);
	} else {
		logev(s, "mail-failed", mta_strerror(c->result));
	}
	next_rua(s);
}

static void start_mail(struct mta_tlsrpt_sender *s, const char *to)
{
	const struct mta_config *cfg = s->p.cfg;
	char *msg = NULL, *hdr = NULL;
	size_t len = 0, hlen = 0;
	int64_t now = (int64_t)time(NULL);
	int rc, src;

	rc = mta_tlsrpt_mail(&s->rep, &s->meta, to, cfg->tlsrpt_submitter,
			     s->gz, s->gzlen, now, &msg, &len);
	if (rc != 0) {
		logev(s, "mail-failed", mta_strerror(rc));
		next_rua(s);
		return;
	}
	src = cfg->dkim_keys != NULL
		      ? mta_dkim_sign_buffer(cfg->dkim_keys,
					     cfg->tlsrpt_submitter, msg, len,
					     now, &hdr, &hlen)
		      : MTA_ENOTFOUND;
	if (src != 0)
		logev(s, "unsigned", src == MTA_ENOTFOUND
					     ? "no DKIM key for the submitter"
					     : mta_strerror(src));
	mta_envelope_init(&s->env);
	mta_body_init(&s->body, mta_spool_tmpdir(s->p.spool), SIZE_MAX);
	rc = mta_envelope_set_str(&s->env.sender, "");
	if (rc == 0 && mta_envelope_add_rcpt(&s->env, to, NULL, NULL, 0) ==
			       NULL)
		rc = -ENOMEM;
	if (rc == 0 && hdr != NULL)
		rc = mta_body_append(&s->body, hdr, hlen);
	if (rc == 0)
		rc = mta_body_append(&s->body, msg, len);
	free(hdr);
	free(msg);
	if (rc != 0) {
		mta_envelope_free(&s->env);
		mta_body_free(&s->body);
		logev(s, "mail-failed", mta_strerror(rc));
		next_rua(s);
		return;
	}
	s->env.tlsreq = MTA_TLSREQ_OPTIONAL; /* RPT-44: never counted */
	s->env.arrival_us = now * 1000000;
	s->env.size = s->body.len;
	mta_qid_make(s->qid, (uint64_t)now * 1000000u, ++*s->p.qid_seq);
	s->commit_pending = true;
	mta_writer_submit_new(s->p.writer, &s->commit, s->qid, &s->env,
			      &s->body, on_mail_committed);
}

static void next_rua(struct mta_tlsrpt_sender *s)
{
	if (s->ri >= s->rua.n) {
		if (s->delivered)
			s->nsent++;
		else
			logev(s, "failed", "no rua accepted the report");
		pair_done(s, s->delivered);
		return;
	}
	s->ri++;
	if (s->rua.u[s->ri - 1].https)
		start_post(s, s->rua.u[s->ri - 1].uri);
	else
		start_mail(s, s->rua.u[s->ri - 1].uri);
}

/* ---- API ------------------------------------------------------------ */

int mta_tlsrpt_sender_start(const struct mta_tlsrpt_sender_params *p,
			    struct mta_tlsrpt_sender **out)
{
	struct mta_tlsrpt_sender *s = calloc(1, sizeof(*s));
	int rc;

	if (s == NULL)
		return -ENOMEM;
	s->p = *p;
	rc = mta_sts_fetcher_init(p->loop, &s->fetcher);
	if (rc != 0) {
		free(s);
		return rc;
	}
	uv_timer_init(p->loop, &s->timer);
	s->timer.data = s;
	uv_timer_start(&s->timer, on_timer, (60 + rnd(240)) * 1000u, 0);
	*out = s;
	return 0;
}

void mta_tlsrpt_sender_set_config(struct mta_tlsrpt_sender *s,
				  const struct mta_config *cfg)
{
	s->p.cfg = cfg;
}

int mta_tlsrpt_sender_run(struct mta_tlsrpt_sender *s, const char *day,
			  void (*line)(void *ud, const char *text),
			  void (*done)(void *ud, int rc), void *ud)
{
	if (s->stopping)
		return MTA_ECLOSED;
	if (s->running)
		return MTA_EAGAIN;
	s->line = line;
	s->done = done;
	s->ud = ud;
	int rc = round_start(s, day);
	if (rc != 0) {
		s->line = NULL;
		s->done = NULL;
		s->ud = NULL;
	}
	return rc;
}

void mta_tlsrpt_sender_detach(struct mta_tlsrpt_sender *s, void *ud)
{
	if (s != NULL && s->ud == ud) {
		s->line = NULL;
		s->done = NULL;
		s->ud = NULL;
	}
}

void mta_tlsrpt_sender_stop(struct mta_tlsrpt_sender *s)
{
	s->stopping = true;
	s->line = NULL;
	s->done = NULL;
	if (s->dq != NULL) {
		mta_dns_cancel(s->dq);
		s->dq = NULL;
	}
	if (s->fq != NULL) {
		mta_sts_fetch_cancel(s->fq);
		s->fq = NULL;
	}
	mta_sts_fetcher_free(s->fetcher);
	s->fetcher = NULL;
	uv_timer_stop(&s->timer);
	uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}
