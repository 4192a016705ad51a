/*
 * sts_fetch_probe - fetch one MTA-STS policy through libmta/sts_fetch.c on
 * a libuv loop and print one JSON object per result
 * (tests/integration/test_sts_fetch.py drives it against
 * tests/lab/httpslab.py).
 *
 *   sts_fetch_probe [-T TIMEOUT_MS] [-m MAX_BODY] [-n COUNT] [-C]
 *                   DOMAIN HTTPS_PORT CA_FILE ADDR
 *
 *   ADDR    the address of mta-sts.DOMAIN ("127.x.y.z" or "::1"): the
 *           probe skips DNS, the daemon gets it from mta_dns_addr()
 *   -n      start COUNT fetches at once (default 1)
 *   -C      cancel every fetch right after starting it (no output)
 *
 * Output per result: status, http_code, content_type, why, curl_code,
 * report_type, body_len, body, and "policy" (mta_sts_parse_policy() of
 * the body when status is OK).  A start the API refuses prints
 * {"error":NAME}.  Exit 0 when every started fetch called back exactly
 * once (none with -C) and the loop closed with no handle left; 1
 * otherwise; 2 on bad usage.
 */
#include "err.h"
#include "sts.h"
#include "sts_fetch.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The RFC 8460 result-type of a fetch status (sts_fetch.h): TLS is
 * sts-webpki-invalid, CONTENT_TYPE sts-policy-invalid (STS-45 choice), the
 * rest sts-policy-fetch-error; OK has none. */
static const char *report_type(enum mta_sts_fetch_status s)
{
	switch (s) {
	case MTA_STS_FETCH_OK:
		return NULL;
	case MTA_STS_FETCH_TLS:
		return "sts-webpki-invalid";
	case MTA_STS_FETCH_CONTENT_TYPE:
		return "sts-policy-invalid";
	case MTA_STS_FETCH_HTTP_STATUS:
	case MTA_STS_FETCH_TOO_BIG:
	case MTA_STS_FETCH_TIMEOUT:
	case MTA_STS_FETCH_CONNECT:
	case MTA_STS_FETCH_ERROR:
		break;
	}
	return "sts-policy-fetch-error";
}

static int answered, extra_calls;

static void json_str(const char *s, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_cstr(const char *s)
{
	if (s == NULL)
		fputs("null", stdout);
	else
		json_str(s, strlen(s));
}

static void print_policy(const char *body, size_t len)
{
	static struct mta_sts_policy p;
	const char *why = NULL;
	int rc = mta_sts_parse_policy(body, len, &p, &why);

	printf(",\"policy\":{\"valid\":%s", rc == 0 ? "true" : "false");
	if (rc != 0) {
		printf(",\"error\":\"%s\",\"why\":", mta_errname(rc));
		json_cstr(why);
		putchar('}');
		return;
	}
	printf(",\"mode\":\"%s\",\"max_age\":%u,\"max_age_capped\":%s,"
	       "\"mx\":[",
	       mta_sts_mode_name(p.mode), p.max_age,
	       p.max_age_capped ? "true" : "false");
	for (size_t i = 0; i < p.nmx; i++) {
		if (i > 0)
			putchar(',');
		json_cstr(p.mx[i]);
	}
	printf("]}");
}

static void on_result(const struct mta_sts_fetch_result *r, void *ud)
{
	int *called = ud;

	if ((*called)++ != 0)
		extra_calls++;
	answered++;
	printf("{\"status\":\"%s\",\"http_code\":%ld,\"content_type\":",
	       mta_sts_fetch_status_name(r->status), r->http_code);
	json_cstr(r->content_type);
	printf(",\"why\":");
	json_cstr(r->why);
	printf(",\"curl_code\":%d,\"report_type\":", r->curl_code);
	json_cstr(report_type(r->status));
	printf(",\"body_len\":%zu,\"body\":", r->body_len);
	if (r->body != NULL)
		json_str(r->body, r->body_len);
	else
		fputs("null", stdout);
	if (r->status == MTA_STS_FETCH_OK)
		print_policy(r->body, r->body_len);
	printf("}\n");
	fflush(stdout);
}

static void count_handle(uv_handle_t *h, void *arg)
{
	(void)h;
	(*(int *)arg)++;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [-T TIMEOUT_MS] [-m MAX_BODY] [-n COUNT] [-C] "
		"DOMAIN HTTPS_PORT CA_FILE ADDR\n",
		argv0);
}

int main(int argc, char **argv)
{
	struct mta_sts_fetch_opts o;
	struct mta_sts_fetcher *f;
	struct mta_sts_fetch **qs;
	uv_loop_t loop;
	int *called;
	int n = 1, cancel = 0, opt, started = 0, left = 0, ok = 1, rc;

	memset(&o, 0, sizeof(o));
	while ((opt = getopt(argc, argv, "T:m:n:C")) != -1) {
		switch (opt) {
		case 'T':
			o.timeout_ms = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'm':
			o.max_body = strtoul(optarg, NULL, 10);
			break;
		case 'n':
			n = atoi(optarg);
			break;
		case 'C':
			cancel = 1;
			break;
		default:
			usage(argv[0]);
			return 2;
		}
	}
	if (argc - optind != 4 || n < 1 || n > 1000) {
		usage(argv[0]);
		return 2;
	}
	o.domain = argv[optind];
	o.https_port = (uint16_t)atoi(argv[optind + 1]);
	o.ca_file = argv[optind + 2][0] ? argv[optind + 2] : NULL;
	o.connect_addr = argv[optind + 3];
	signal(SIGPIPE, SIG_IGN);

	qs = calloc((size_t)n, sizeof(*qs));
	called = calloc((size_t)n, sizeof(*called));
	if (qs == NULL || called == NULL || uv_loop_init(&loop) != 0)
		return 1;
	rc = mta_sts_fetcher_init(&loop, &f);
	if (rc != 0) {
		printf("{\"error\":\"%s\"}\n", mta_errname(rc));
		return 1;
	}
	for (int i = 0; i < n; i++) {
		rc = mta_sts_fetch_start(f, &o, on_result, &called[i], &qs[i]);
		if (rc != 0) {
			printf("{\"error\":\"%s\"}\n", mta_errname(rc));
			called[i] = -1; /* never started */
			continue;
		}
		started++;
	}
	if (cancel) {
		for (int i = 0; i < n; i++)
			if (called[i] == 0)
				mta_sts_fetch_cancel(qs[i]);
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	mta_sts_fetcher_free(f);
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_walk(&loop, count_handle, &left);
	if (uv_loop_close(&loop) != 0 || left != 0) {
		fprintf(stderr, "loop not empty: %d handle(s)\n", left);
		ok = 0;
	}
	for (int i = 0; i < n; i++) {
		if (called[i] == -1)
			continue;
		if (called[i] != (cancel ? 0 : 1))
			ok = 0;
	}
	if (extra_calls != 0 || (!cancel && answered != started))
		ok = 0;
	fprintf(stderr, "started=%d answered=%d extra=%d ok=%d\n", started,
		answered, extra_calls, ok);
	free(qs);
	free(called);
	return ok ? 0 : 1;
}
