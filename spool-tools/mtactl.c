/*
 * mtactl - inspect (and, later, act on) queued messages.
 *
 * Usage: mtactl [-c FILE] cat QID     the stored message, byte for byte
 *        mtactl [-c FILE] show QID    envelope and per-recipient state
 *        mtactl [-c FILE] tlsrpt      TLS report counters (RFC 8460)
 * Exit: 0 ok, 1 operational failure (no such message, spool error),
 * 2 bad usage or config.
 */
#include "err.h"
#include "tool.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: mtactl [-c FILE] cat QID\n"
		   "       mtactl [-c FILE] show QID\n"
		   "       mtactl [-c FILE] tlsrpt\n");
}

static int cmd_cat(struct mta_spool *sp, const char *qid)
{
	char buf[65536];
	uint64_t off = 0;

	for (;;) {
		size_t got = 0;
		int rc = mta_spool_read_body(sp, qid, off, buf, sizeof(buf),
					     &got);
		if (rc != 0) {
			fprintf(stderr, "mtactl: %s: %s\n", qid,
				mta_strerror(rc));
			return 1;
		}
		if (got == 0)
			break;
		if (fwrite(buf, 1, got, stdout) != got)
			return 1;
		off += got;
	}
	return fflush(stdout) == 0 ? 0 : 1;
}

static const char *state_name(uint8_t st)
{
	switch (st) {
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

static int print_counter(void *ud, const char *key, uint64_t value)
{
	(void)ud;
	printf("%s %llu\n", key, (unsigned long long)value);
	return 0;
}

static int cmd_tlsrpt(struct mta_spool *sp)
{
	int rc = mta_spool_counter_foreach(sp, print_counter, NULL);
	if (rc != 0) {
		fprintf(stderr, "mtactl: tlsrpt: %s\n", mta_strerror(rc));
		return 1;
	}
	return 0;
}

static int cmd_show(struct mta_spool *sp, const char *qid)
{
	struct mta_envelope e;
	char ts[64];
	int rc;

	mta_envelope_init(&e);
	rc = mta_spool_get(sp, qid, &e);
	if (rc != 0) {
		fprintf(stderr, "mtactl: %s: %s\n", qid, mta_strerror(rc));
		return 1;
	}
	time_t t = (time_t)(e.arrival_us / 1000000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	printf("qid: %s\narrival: %s\nsize: %llu\nsender: <%s>\n", qid, ts,
	       (unsigned long long)e.size, e.sender ? e.sender : "");
	printf("client: %s\nhelo: %s\ntls: %s\n",
	       e.client_addr ? e.client_addr : "",
	       e.helo ? e.helo : "", e.tls ? e.tls : "none");
	if (e.envid)
		printf("envid: %s\n", e.envid);
	if (e.ret_raw)
		printf("ret: %s\n", e.ret_raw);
	for (size_t i = 0; i < e.nrcpt; i++) {
		const struct mta_rcpt *r = &e.rcpts[i];
		printf("recipient: <%s> state=%s attempts=%u", r->addr,
		       state_name(r->state), r->attempts);
		if (r->notify_raw)
			printf(" notify=%s", r->notify_raw);
		if (r->orcpt)
			printf(" orcpt=%s", r->orcpt);
		if (r->relay)
			printf(" relay=%s", r->relay);
		if (r->evidence)
			printf(" evidence=\"%s\"", r->evidence);
		if (r->last_response)
			printf(" last=\"%s\"", r->last_response);
		printf("\n");
	}
	mta_envelope_free(&e);
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	struct mta_config *cfg = NULL;
	struct mta_spool *sp = NULL;
	int c, rc;

	while ((c = getopt(argc, argv, "c:h")) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	bool tlsrpt = argc - optind == 1 && strcmp(argv[optind], "tlsrpt") == 0;
	if (!tlsrpt &&
	    (argc - optind != 2 || (strcmp(argv[optind], "cat") != 0 &&
				    strcmp(argv[optind], "show") != 0))) {
		usage(stderr);
		return 2;
	}
	rc = tool_load_config("mtactl", path, &cfg);
	if (rc != 0)
		return rc;
	rc = tool_open_spool("mtactl", cfg, true, &sp);
	if (rc == 0) {
		if (tlsrpt)
			rc = cmd_tlsrpt(sp);
		else if (strcmp(argv[optind], "cat") == 0)
			rc = cmd_cat(sp, argv[optind + 1]);
		else
			rc = cmd_show(sp, argv[optind + 1]);
		mta_spool_close(sp);
	}
	mta_config_free(cfg);
	return rc;
}
