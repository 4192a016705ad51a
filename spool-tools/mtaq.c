/*
 * mtaq - list the spool: mtaq [-c FILE] [--json] [--summary]
 *
 * Opens the spool read-only (works while mtad runs: LMDB readers never
 * block the writer), prints one row per message with its recipients, or
 * one JSON document, or only the summary line.  Exit 0 on success, 1 on
 * an operational failure (spool missing or unreadable), 2 on bad usage or
 * config.
 *
 * SECURITY
 *	Envelope strings come from SMTP clients and remote servers: the table
 *	shows control bytes as '?' (no terminal escapes), JSON escapes them
 *	and every byte that is not valid UTF-8 (as \u00XX).
 */
#include "config.h"
#include "envelope.h"
#include "err.h"
#include "spool.h"
#include "tool.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern char **environ;


struct totals {
	uint64_t messages;
	uint64_t rcpts;
	uint64_t bytes;
};

struct ctx {
	FILE *f;
	bool json;
	bool summary;
	struct totals t;
	struct tool_filter filt;
	struct tool_qidset held, active;
	int64_t now;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: mtaq [-c FILE] [--json] [--summary | --destinations]\n"
		   "            [--domain DOMAIN] [--sender ADDR|@DOMAIN]\n"
		   "            [--recipient ADDR|@DOMAIN] [--reason TEXT]\n"
		   "            [--state queued|deferred|held|active] "
		   "[--older-than AGE]\n");
}

static const char *rcpt_state_name(uint8_t s)
{
	switch (s) {
	case MTA_RCPT_QUEUED:
		return "queued";
	case MTA_RCPT_SENT:
		return "sent";
	case MTA_RCPT_DEFERRED:
		return "deferred";
	case MTA_RCPT_BOUNCED:
		return "bounced";
	default:
		return "unknown";
	}
}

/* all sent -> sent; any deferred -> deferred; all done (sent or
 * bounced) with a bounce -> bounced; else queued */
static const char *msg_state(const struct mta_envelope *e)
{
	size_t sent = 0, bounced = 0, deferred = 0;
	for (size_t i = 0; i < e->nrcpt; i++) {
		switch (e->rcpts[i].state) {
		case MTA_RCPT_SENT:
			sent++;
			break;
		case MTA_RCPT_BOUNCED:
			bounced++;
			break;
		case MTA_RCPT_DEFERRED:
			deferred++;
			break;
		case MTA_RCPT_QUEUED:
		default:
			break;
		}
	}
	if (e->nrcpt > 0 && sent == e->nrcpt)
		return "sent";
	if (deferred > 0)
		return "deferred";
	if (e->nrcpt > 0 && sent + bounced == e->nrcpt)
		return "bounced";
	return "queued";
}

static void fmt_time(char out[32], int64_t us)
{
	time_t s = (time_t)(us / 1000000);
	struct tm tm;
	if (us < 0 || gmtime_r(&s, &tm) == NULL ||
	    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, 32, "?");
}

/* Length of the valid UTF-8 sequence at s (1..4), 0 if invalid. */
static size_t utf8_len(const unsigned char *s)
{
	unsigned char c = s[0];
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return (s[1] & 0xc0) == 0x80 ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		unsigned char lo = c == 0xe0 ? 0xa0 : 0x80;
		unsigned char hi = c == 0xed ? 0x9f : 0xbf; /* no surrogates */
		if (s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80)
			return 0;
		return 3;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		unsigned char lo = c == 0xf0 ? 0x90 : 0x80;
		unsigned char hi = c == 0xf4 ? 0x8f : 0xbf;
		if (s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80 ||
		    (s[3] & 0xc0) != 0x80)
			return 0;
		return 4;
	}
	return 0;
}

/* A terminal-safe copy of an untrusted string: control bytes (C0, DEL,
 * C1) and bytes that are not valid UTF-8 become '?'. */
static void put_plain(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p != '\0') {
		size_t n = utf8_len(p);
		if (n == 0 || *p < 0x20 || *p == 0x7f ||
		    (p[0] == 0xc2 && p[1] < 0xa0)) {
			fputc('?', f);
			p += n ? n : 1;
			continue;
		}
		fwrite(p, 1, n, f);
		p += n;
	}
}

static void json_str(FILE *f, const char *s)
{
	if (s == NULL) {
		fputs("null", f);
		return;
	}
	fputc('"', f);
	const unsigned char *p = (const unsigned char *)s;
	while (*p != '\0') {
		unsigned char c = *p;
		size_t n;
		switch (c) {
		case '"':
			fputs("\\\"", f);
			p++;
			continue;
		case '\\':
			fputs("\\\\", f);
			p++;
			continue;
		case '\b':
			fputs("\\b", f);
			p++;
			continue;
		case '\f':
			fputs("\\f", f);
			p++;
			continue;
		case '\n':
			fputs("\\n", f);
			p++;
			continue;
		case '\r':
			fputs("\\r", f);
			p++;
			continue;
		case '\t':
			fputs("\\t", f);
			p++;
			continue;
		default:
			break;
		}
		/* the NUL terminator stops utf8_len at a short sequence */
		n = utf8_len(p);
		if (c < 0x20 || c == 0x7f || n == 0) {
			fprintf(f, "\\u%04x", c);
			p++;
			continue;
		}
		fwrite(p, 1, n, f);
		p += n;
	}
	fputc('"', f);
}

static void json_notify(FILE *f, const struct mta_rcpt *r)
{
	static const struct {
		unsigned bit;
		const char *name;
	} names[] = {{MTA_NOTIFY_NEVER, "NEVER"},
		     {MTA_NOTIFY_SUCCESS, "SUCCESS"},
		     {MTA_NOTIFY_FAILURE, "FAILURE"},
		     {MTA_NOTIFY_DELAY, "DELAY"}};
	if (r->notify_raw != NULL || r->notify == 0) {
		json_str(f, r->notify_raw);
		return;
	}
	fputc('"', f);
	const char *sep = "";
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (r->notify & names[i].bit) {
			fprintf(f, "%s%s", sep, names[i].name);
			sep = ",";
		}
	}
	fputc('"', f);
}

static const char *state_of(struct ctx *c, const char *qid,
			    const struct mta_envelope *e)
{
	bool held = tool_qidset_has(&c->held, qid);
	bool active = tool_qidset_has(&c->active, qid);
	return held || active ? tool_msg_state(e, held, active) : msg_state(e);
}

static void print_json(struct ctx *c, const char *qid,
		       const struct mta_envelope *e)
{
	FILE *f = c->f;
	char ts[32];

	fmt_time(ts, e->arrival_us);
	if (c->t.messages > 1)
		fputc(',', f);
	fputs("{\"qid\":", f);
	json_str(f, qid);
	fprintf(f, ",\"arrival\":\"%s\",\"arrival_us\":%" PRId64
		   ",\"size\":%" PRIu64 ",\"sender\":",
		ts, e->arrival_us, e->size);
	json_str(f, e->sender);
	fprintf(f, ",\"state\":\"%s\",\"client\":", state_of(c, qid, e));
	json_str(f, e->client_addr);
	fputs(",\"helo\":", f);
	json_str(f, e->helo);
	fputs(",\"tls\":", f);
	json_str(f, e->tls);
	fputs(",\"envid\":", f);
	json_str(f, e->envid);
	fputs(",\"ret\":", f);
	json_str(f, e->ret_raw);
	fprintf(f, ",\"smtputf8\":%s,\"requiretls\":%s,\"tls_required\":%s,"
		"\"recipients\":[",
		e->smtputf8 ? "true" : "false",
		e->tlsreq == MTA_TLSREQ_REQUIRETLS ? "true" : "false",
		e->tlsreq == MTA_TLSREQ_OPTIONAL ? "\"no\"" : "null");
	for (size_t i = 0; i < e->nrcpt; i++) {
		const struct mta_rcpt *r = &e->rcpts[i];
		fputs(i ? ",{\"addr\":" : "{\"addr\":", f);
		json_str(f, r->addr);
		fprintf(f,
			",\"state\":\"%s\",\"attempts\":%" PRIu32
			",\"next_attempt_us\":%" PRId64 ",\"last_response\":",
			rcpt_state_name(r->state), r->attempts,
			r->next_attempt_us);
		json_str(f, r->last_response);
		fputs(",\"relay\":", f);
		json_str(f, r->relay);
		fputs(",\"evidence\":", f);
		json_str(f, r->evidence);
		fputs(",\"notify\":", f);
		json_notify(f, r);
		fputs(",\"orcpt\":", f);
		json_str(f, r->orcpt);
		fputc('}', f);
	}
	fputs("]}", f);
}

static void print_row(struct ctx *c, const char *qid,
		      const struct mta_envelope *e)
{
	FILE *f = c->f;
	char ts[32];

	fmt_time(ts, e->arrival_us);
	fprintf(f, "%-16s  %-20s  %10" PRIu64 "  %5zu  %-8s  ", qid, ts,
		e->size, e->nrcpt, state_of(c, qid, e));
	if (e->sender[0] == '\0')
		fputs("<>", f);
	else
		put_plain(f, e->sender);
	fputc('\n', f);
	for (size_t i = 0; i < e->nrcpt; i++) {
		const struct mta_rcpt *r = &e->rcpts[i];
		fputs("    ", f);
		put_plain(f, r->addr);
		fprintf(f, "  %s  attempts=%" PRIu32, rcpt_state_name(r->state),
			r->attempts);
		if (r->last_response != NULL) {
			fputs("  last=\"", f);
			put_plain(f, r->last_response);
			fputc('"', f);
		}
		fputc('\n', f);
	}
}

static int on_message(void *ud, const struct mta_spool_entry *en)
{
	struct ctx *c = ud;
	const struct mta_envelope *e = en->env;

	if (c->filt.any &&
	    !tool_filter_match(&c->filt, en->qid, e,
			       tool_msg_state(e, tool_qidset_has(&c->held,
								 en->qid),
					      tool_qidset_has(&c->active,
							      en->qid)),
			       c->now))
		return 0;
	c->t.messages++;
	c->t.rcpts += e->nrcpt;
	c->t.bytes += e->size;
	if (c->summary)
		return 0;
	if (c->json)
		print_json(c, en->qid, e);
	else
		print_row(c, en->qid, e);
	return 0;
}

/* ---- per-destination summary ----------------------------------------
 * No envelope is decoded: counts come from the dest index (domain ->
 * qids, the first qid being the oldest), the due index (a message due
 * later than now waits for a retry: deferred), the held index and mtad's
 * list of messages in delivery. */

struct dsum {
	struct ctx *c;
	struct tool_qidset later; /* due after now */
	char dom[512];
	uint64_t total, held, active, deferred;
	char oldest[MTA_QID_LEN + 1];
	bool first_row;
};

static int64_t qid_time(const char *qid)
{
	static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	uint64_t v = 0;
	for (int i = 0; i < 11; i++) {
		const char *p = strchr(b32, qid[i]);
		if (p == NULL || qid[i] == '\0')
			return -1;
		v = v << 5 | (uint64_t)(p - b32);
	}
	return (int64_t)v;
}

static int on_due_entry(void *ud, const char *qid, int64_t due_us)
{
	struct dsum *d = ud;
	if (due_us > d->c->now) {
		if (d->later.n == d->later.cap) {
			size_t cap = d->later.cap ? d->later.cap * 2 : 1024;
			void *v = realloc(d->later.v, cap * sizeof(*d->later.v));
			if (v == NULL)
				return -ENOMEM;
			d->later.v = v;
			d->later.cap = cap;
		}
		memcpy(d->later.v[d->later.n], qid, MTA_QID_LEN);
		d->later.v[d->later.n++][MTA_QID_LEN] = '\0';
	}
	return 0;
}

static int qcmp(const void *a, const void *b)
{
	return memcmp(a, b, MTA_QID_LEN);
}

static void dsum_flush(struct dsum *d)
{
	struct ctx *c = d->c;
	char ts[32];
	uint64_t other = d->held + d->active + d->deferred;
	uint64_t queued = d->total > other ? d->total - other : 0;

	if (d->total == 0)
		return;
	fmt_time(ts, qid_time(d->oldest));
	if (c->json) {
		fputs(d->first_row ? "" : ",", stdout);
		fputs("{\"destination\":", stdout);
		json_str(stdout, d->dom);
		printf(",\"total\":%" PRIu64 ",\"queued\":%" PRIu64
		       ",\"deferred\":%" PRIu64 ",\"held\":%" PRIu64
		       ",\"active\":%" PRIu64 ",\"oldest\":\"%s\","
		       "\"oldest_qid\":\"%s\"}",
		       d->total, queued, d->deferred, d->held, d->active, ts,
		       d->oldest);
	} else {
		fputs("", stdout);
		char name[41];
		snprintf(name, sizeof(name), "%.40s", d->dom);
		put_plain(stdout, name);
		printf("%*s %8" PRIu64 " %8" PRIu64 " %8" PRIu64 " %6" PRIu64
		       " %6" PRIu64 "  %s\n",
		       (int)(40 - strlen(name)), "", d->total, queued,
		       d->deferred, d->held, d->active, ts);
	}
	d->first_row = false;
	d->c->t.messages += d->total;
	d->total = d->held = d->active = d->deferred = 0;
}

static int on_dest(void *ud, const char *domain, const char *qid)
{
	struct dsum *d = ud;
	if (strcmp(domain, d->dom) != 0) {
		dsum_flush(d);
		snprintf(d->dom, sizeof(d->dom), "%s", domain);
		memcpy(d->oldest, qid, MTA_QID_LEN + 1);
	}
	if (d->c->filt.domain && strcasecmp(d->c->filt.domain, domain) != 0)
		return 0;
	d->total++;
	if (tool_qidset_has(&d->c->held, qid))
		d->held++;
	else if (tool_qidset_has(&d->c->active, qid))
		d->active++;
	else if (d->later.n > 0 &&
		 bsearch(qid, d->later.v, d->later.n, sizeof(*d->later.v),
			 qcmp) != NULL)
		d->deferred++;
	return 0;
}

static int print_destinations(struct ctx *c, struct mta_spool *sp,
			      const struct mta_config *cfg)
{
	struct dsum d;
	int64_t next;
	int rc;

	(void)cfg;
	memset(&d, 0, sizeof(d));
	d.c = c;
	d.first_row = true;
	rc = mta_spool_due(sp, -1, NULL, INT64_MAX, SIZE_MAX, on_due_entry, &d,
			   &next);
	if (rc == 0 && d.later.n > 1)
		qsort(d.later.v, d.later.n, sizeof(*d.later.v), qcmp);
	if (c->json)
		fputs("{\"destinations\":[", stdout);
	else
		printf("%-40s %8s %8s %8s %6s %6s  %s\n", "DESTINATION",
		       "TOTAL", "QUEUED", "DEFERRED", "HELD", "ACTIVE",
		       "OLDEST");
	if (rc == 0)
		rc = mta_spool_dest_foreach(sp, on_dest, &d);
	if (rc == 0)
		dsum_flush(&d);
	if (c->json)
		printf("]}\n");
	free(d.later.v);
	if (rc != 0)
		fprintf(stderr, "mtaq: spool %s: %s\n", cfg->spool_dir,
			mta_strerror(rc));
	return rc;
}

/* Over 100 lines: options, config, spool, then one of the listing modes
 * (queue, destinations, summary; text or JSON) with one exit. */
int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"json", no_argument, NULL, 'j'},
		{"summary", no_argument, NULL, 's'},
		{"destinations", no_argument, NULL, 'D'},
		{"domain", required_argument, NULL, 'f'},
		{"sender", required_argument, NULL, 'f'},
		{"recipient", required_argument, NULL, 'f'},
		{"reason", required_argument, NULL, 'f'},
		{"state", required_argument, NULL, 'f'},
		{"older-than", required_argument, NULL, 'f'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct ctx c = {.f = stdout};
	const char *cfile = NULL;
	struct mta_config *cfg;
	struct mta_spool *sp;
	int opt, rc, li = 0;
	bool dests = false;

	while ((opt = getopt_long(argc, argv, "c:h", longopts, &li)) != -1) {
		switch (opt) {
		case 'f':
			if (tool_filter_parse_opt("mtaq", &c.filt,
						  longopts[li].name,
						  optarg) != 0)
				return 2;
			break;
		case 'D':
			dests = true;
			break;
		case 'c':
			cfile = optarg;
			break;
		case 'j':
			c.json = true;
			break;
		case 's':
			c.summary = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	rc = tool_load_config("mtaq", cfile, &cfg);
	if (rc != 0)
		return rc;
	rc = tool_open_spool("mtaq", cfg, true, &sp);
	if (rc != 0) {
		mta_config_free(cfg);
		return rc;
	}
	c.now = tool_now_us();
	if (tool_qidset_load_held(sp, &c.held) != 0 ||
	    tool_qidset_load_active(cfg, &c.active) != 0) {
		fprintf(stderr, "mtaq: spool %s: cannot read the held index\n",
			cfg->spool_dir);
		mta_spool_close(sp);
		mta_config_free(cfg);
		return 1;
	}
	if (dests) {
		rc = print_destinations(&c, sp, cfg);
		goto out;
	}
	if (c.summary && c.filt.any)
		c.summary = false, c.f = fopen("/dev/null", "w");

	if (c.f == NULL) {
		rc = -errno;
	} else if (c.f != stdout) {
		/* a filtered summary: walk, print only the totals */
		rc = mta_spool_foreach(sp, on_message, &c);
		fclose(c.f);
		c.f = stdout;
		c.summary = true;
	} else if (c.summary) {
		/* the message count from the B-tree header, no decoding;
		 * recipients and bytes need the envelopes */
		uint64_t n = 0;
		rc = mta_spool_totals(sp, &c.t.messages, &c.t.rcpts,
				      &c.t.bytes);
		if (rc == MTA_ENOTFOUND) {
			/* older spool, opened read-only: count by walking */
			rc = mta_spool_stat(sp, &n);
			if (rc == 0)
				rc = mta_spool_foreach(sp, on_message, &c);
			if (rc == 0 || rc == MTA_ECORRUPT ||
			    rc == MTA_ESCHEMA)
				c.t.messages = n;
		}
	} else {
		char *jbuf = NULL;
		size_t jlen = 0;
		if (c.json) {
			/* "count" comes first: buffer the messages */
			c.f = open_memstream(&jbuf, &jlen);
			if (c.f == NULL) {
				perror("mtaq: open_memstream");
				mta_spool_close(sp);
				mta_config_free(cfg);
				return 1;
			}
		} else {
			printf("%-16s  %-20s  %10s  %5s  %-8s  %s\n", "QUEUE ID",
			       "ARRIVAL", "SIZE", "RCPTS", "STATE", "SENDER");
		}
		rc = mta_spool_foreach(sp, on_message, &c);
		if (c.json) {
			if (fclose(c.f) != 0 && rc == 0)
				rc = -ENOMEM;
			printf("{\"count\":%" PRIu64 ",\"messages\":[",
			       c.t.messages);
			fwrite(jbuf, 1, jlen, stdout);
			free(jbuf);
		}
	}
	if (rc != 0)
		fprintf(stderr, "mtaq: spool %s: %s\n", cfg->spool_dir,
			mta_strerror(rc));
	if (c.json && c.summary)
		printf("{\"count\":%" PRIu64 ",\"recipients\":%" PRIu64
		       ",\"bytes\":%" PRIu64 "}\n",
		       c.t.messages, c.t.rcpts, c.t.bytes);
	else if (c.json)
		printf("]}\n");
	else
		printf("%" PRIu64 " messages, %" PRIu64 " recipients, %" PRIu64
		       " bytes\n",
		       c.t.messages, c.t.rcpts, c.t.bytes);
out:
	tool_qidset_free(&c.held);
	tool_qidset_free(&c.active);
	mta_spool_close(sp);
	mta_config_free(cfg);
	if (fflush(stdout) != 0 || ferror(stdout))
		return 1;
	return rc != 0 ? 1 : 0;
}
