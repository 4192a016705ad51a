/* Unit tests of the HTTP request head parser (libmta/http_request.c) and
 * of the metrics registry's text rendering (libmta/metrics.c): table of
 * heads with the expected result, status and fields; label bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "http_request.h"
#include "metrics.h"

struct head_case {
	const char *in;
	int want; /* 1: complete, 0: need more, -1: refused */
	int status;
	const char *path;
	bool keep_alive;
};

static const struct head_case cases[] = {
	{"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 1, 0, "/metrics", true},
	{"GET /readyz HTTP/1.0\r\n\r\n", 1, 0, "/readyz", false},
	{"GET /healthz?probe=1 HTTP/1.1\nConnection: close\n\n", 1, 0,
	 "/healthz", false},
	{"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 1, 0, "/", true},
	{"\r\nGET /x HTTP/1.1\r\n\r\n", 1, 0, "/x", true},
	{"GET /metrics HTTP/1.1\r\nHost: x\r\n", 0, 0, NULL, false},
	{"GET /metr", 0, 0, NULL, false},
	{"", 0, 0, NULL, false},
	{"POST /metrics HTTP/1.1\r\n\r\n", -1, 405, NULL, false},
	{"HEAD /metrics HTTP/1.1\r\n\r\n", -1, 405, NULL, false},
	{"GET /x HTTP/2.0\r\n\r\n", -1, 505, NULL, false},
	{"GET /x HTTP/1.1 extra\r\n\r\n", -1, 400, NULL, false},
	{"GET x HTTP/1.1\r\n\r\n", -1, 400, NULL, false},
	{"GET  /x HTTP/1.1\r\n\r\n", -1, 400, NULL, false},
	{"GET /x HTTP/1.1\r\nNoColon\r\n\r\n", -1, 400, NULL, false},
	{"GET /x HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", -1, 400, NULL, false},
	{"GET /x HTTP/1.1\r\nA: \001\r\n\r\n", -1, 400, NULL, false},
	{"GET /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n", -1, 400, NULL, false},
	{"GET /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, 0, "/x", true},
	{"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", -1, 400,
	 NULL, false},
	{"GET /\x7f HTTP/1.1\r\n\r\n", -1, 400, NULL, false},
};

static void test_heads(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct head_case *c = &cases[i];
		struct mta_http_request req;
		int status = 0;
		size_t n = strlen(c->in);
		int rc = mta_http_parse((const uint8_t *)c->in, n, &req,
					&status);

		printf("case %zu: rc=%d status=%d\n", i, rc, status);
		if (c->want == 1) {
			assert_int_equal(rc, (int)n);
			assert_string_equal(req.path, c->path);
			assert_int_equal(req.keep_alive, c->keep_alive);
		} else if (c->want == 0) {
			assert_int_equal(rc, 0);
		} else {
			assert_int_equal(rc, MTA_EPROTO);
			assert_int_equal(status, c->status);
		}
	}
}

static void test_bounds(void **state)
{
	static char buf[MTA_HTTP_HEAD_MAX + 100];
	struct mta_http_request req;
	int status = 0, rc;
	size_t off;

	(void)state;
	/* a target longer than the path limit: 414 */
	off = (size_t)snprintf(buf, sizeof(buf), "GET /");
	memset(buf + off, 'a', MTA_HTTP_PATH_MAX);
	off += MTA_HTTP_PATH_MAX;
	off += (size_t)snprintf(buf + off, sizeof(buf) - off,
				" HTTP/1.1\r\n\r\n");
	rc = mta_http_parse((const uint8_t *)buf, off, &req, &status);
	assert_int_equal(rc, MTA_EPROTO);
	assert_int_equal(status, 414);
	/* a head that never ends within the limit: 431 */
	off = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n");
	while (off + 8 < sizeof(buf))
		off += (size_t)snprintf(buf + off, sizeof(buf) - off,
					"X: y\r\n");
	rc = mta_http_parse((const uint8_t *)buf, off, &req, &status);
	assert_int_equal(rc, MTA_EPROTO);
	assert_int_equal(status, 431);
	/* too many header lines in a short head: 431 */
	off = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n");
	for (int i = 0; i <= MTA_HTTP_HEADERS_MAX; i++)
		off += (size_t)snprintf(buf + off, sizeof(buf) - off,
					"X: y\r\n");
	off += (size_t)snprintf(buf + off, sizeof(buf) - off, "\r\n");
	rc = mta_http_parse((const uint8_t *)buf, off, &req, &status);
	assert_int_equal(rc, MTA_EPROTO);
	assert_int_equal(status, 431);
}

static void test_metrics_render(void **state)
{
	static struct mta_metrics m;
	struct mta_metrics_gauges g = {
		.queue_queued = 3, .queue_held = 1, .queue_active = 0,
		.queue_rcpts = 4, .queue_bytes = 100, .oldest_age_s = 2.5,
		.map_used = 4096, .map_size = 1 << 20, .policy_cache = 0,
		.dnssec_selftest = 1, .ready = 1,
	};
	struct mta_buf out = {0};
	char name[32];

	(void)state;
	mta_metrics_init(&m);
	mta_metrics_session(&m, 1);
	mta_metrics_accepted(&m);
	mta_metrics_delivery(&m, "sent", "dane 3 1 1", "2.0.0");
	mta_metrics_delivery(&m, "deferred", "mta-sts id=x", "4.4.1");
	mta_metrics_delivery(&m, "bounced", NULL, "5.1.1");
	mta_metrics_rejected(&m, "5.7.1");
	mta_metrics_rejected(&m, "bad\"label\n");
	for (int i = 0; i < MTA_METRICS_LABELS_MAX + 5; i++) {
		snprintf(name, sizeof(name), "4.%d.0", i);
		mta_metrics_delivery(&m, "deferred", "verify", name);
	}
	mta_metrics_commit(&m, true, 300);
	mta_metrics_commit(&m, true, 9000000);
	assert_int_equal(mta_metrics_render(&m, &g, &out), 0);
	assert_int_equal(mta_buf_append(&out, "", 1), 0);
	const char *t = (const char *)out.data;
	assert_non_null(strstr(t, "mtad_deliveries_total{status=\"sent\",auth=\"dane\"} 1\n"));
	assert_non_null(strstr(t, "mtad_deliveries_total{status=\"deferred\",auth=\"mta-sts\"} 1\n"));
	assert_non_null(strstr(t, "mtad_deliveries_total{status=\"bounced\",auth=\"none\"} 1\n"));
	assert_non_null(strstr(t, "mtad_deliveries_total{status=\"deferred\",auth=\"verify\"} 37\n"));
	assert_non_null(strstr(t, "mtad_messages_rejected_total{reason=\"5.7.1\"} 1\n"));
	assert_non_null(strstr(t, "mtad_messages_rejected_total{reason=\"other\"} 1\n"));
	/* 32 distinct deferral codes at most: 4.4.1 + 31, the rest other */
	assert_non_null(strstr(t, "mtad_deferrals_total{reason=\"other\"} 6\n"));
	assert_non_null(strstr(t, "mtad_spool_fsync_seconds_bucket{le=\"0.0005\"} 1\n"));
	assert_non_null(strstr(t, "mtad_spool_fsync_seconds_bucket{le=\"5\"} 1\n"));
	assert_non_null(strstr(t, "mtad_spool_fsync_seconds_bucket{le=\"+Inf\"} 2\n"));
	assert_non_null(strstr(t, "mtad_queue_messages{state=\"held\"} 1\n"));
	assert_null(strstr(t, "bad"));
	mta_buf_free(&out);
	assert_true(mta_metrics_writer_stuck(&m, 100, 10) == false);
	mta_metrics_writer_busy(&m, 50);
	assert_true(mta_metrics_writer_stuck(&m, 100, 10));
	assert_false(mta_metrics_writer_stuck(&m, 55, 10));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_heads),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_metrics_render),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
