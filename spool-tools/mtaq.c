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
};

static void usage(FILE *f)
{
	fprintf(f, "usage: mtaq [-c FILE] [--json] [--summary]\n");
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
	fprintf(f, ",\"state\":\"%s\",\"client\":", msg_state(e));
	json_str(f, e->client_addr);
	fputs(",\"helo\":", f);
	json_str(f, e->helo);
	fputs(",\"tls\":", f);
	json_str(f, e->tls);
	fputs(",\"envid\":", f);
	json_str(f, e->envid);
	fputs(",\"ret\":", f);
	json_str(f, e->ret_raw);
	fprintf(f, ",\"smtputf8\":%s,\"recipients\":[",
		e->smtputf8 ? "true" : "false");
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
		e->size, e->nrcpt, msg_state(e));
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

/* Just over 100 lines: options, then the config and spool, then one
 * branch per output (summary, table, JSON); each step is a few lines. */
int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"json", no_argument, NULL, 'j'},
		{"summary", no_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct ctx c = {.f = stdout};
	const char *cfile = NULL;
	struct mta_config *cfg;
	struct mta_spool *sp;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		switch (opt) {
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

	if (c.summary) {
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
	mta_spool_close(sp);
	mta_config_free(cfg);
	if (fflush(stdout) != 0 || ferror(stdout))
		return 1;
	return rc != 0 ? 1 : 0;
}
