/*
 * http_request.c - HTTP/1.x request head parser (GET only).  See http_request.h.
 */
#include "http_request.h"

#include "err.h"

#include <string.h>
#include <strings.h>

/* Finds the end of the line starting at p[i]: the index of its LF, or -1
 * when the buffer ends first. */
static long line_end(const uint8_t *p, size_t n, size_t i)
{
	const uint8_t *lf = memchr(p + i, '\n', n - i);

	return lf == NULL ? -1 : (long)(lf - p);
}

static int fail(int *status, int code)
{
	*status = code;
	return MTA_EPROTO;
}

static bool is_tchar(uint8_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Compares the field value v (len n, blanks trimmed) with a word,
 * case-insensitively; list values ("keep-alive, Upgrade") match any
 * element. */
static bool value_has(const uint8_t *v, size_t n, const char *word)
{
	size_t wl = strlen(word), i = 0;

	while (i < n) {
		size_t j = i;
		while (j < n && v[j] != ',')
			j++;
		size_t a = i, b = j;
		while (a < b && (v[a] == ' ' || v[a] == '\t'))
			a++;
		while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
			b--;
		if (b - a == wl && strncasecmp((const char *)v + a, word, wl) == 0)
			return true;
		i = j + 1;
	}
	return false;
}

/* The request line: "GET SP target SP HTTP/1.x". */
static int request_line(const uint8_t *p, size_t len,
			struct mta_http_request *req, int *status)
{
	size_t i = 0, m, t0, tl;

	while (i < len && is_tchar(p[i]))
		i++;
	m = i;
	if (m == 0 || i >= len || p[i] != ' ')
		return fail(status, 400);
	i++;
	t0 = i;
	while (i < len && p[i] > 0x20 && p[i] < 0x7f)
		i++;
	tl = i - t0;
	if (tl == 0 || i >= len || p[i] != ' ')
		return fail(status, 400);
	i++;
	if (len - i != 8 || memcmp(p + i, "HTTP/", 5) != 0 ||
	    p[i + 5] < '0' || p[i + 5] > '9' || p[i + 6] != '.' ||
	    p[i + 7] < '0' || p[i + 7] > '9')
		return fail(status, 400);
	if (p[i + 5] != '1')
		return fail(status, 505);
	req->minor = p[i + 7] - '0';
	if (m != 3 || memcmp(p, "GET", 3) != 0)
		return fail(status, 405);
	if (p[t0] != '/')
		return fail(status, 400);
	size_t pl = 0;
	while (pl < tl && p[t0 + pl] != '?')
		pl++;
	if (pl >= MTA_HTTP_PATH_MAX)
		return fail(status, 414);
	memcpy(req->path, p + t0, pl);
	req->path[pl] = '\0';
	return 0;
}

/* One field line "name: value". */
static int field_line(const uint8_t *p, size_t len,
		      struct mta_http_request *req, int *status)
{
	size_t i = 0, v0, v1;

	if (p[0] == ' ' || p[0] == '\t') /* obs-fold */
		return fail(status, 400);
	while (i < len && is_tchar(p[i]))
		i++;
	if (i == 0 || i >= len || p[i] != ':')
		return fail(status, 400);
	size_t nl = i;
	v0 = i + 1;
	for (size_t j = v0; j < len; j++)
		if ((p[j] < 0x20 && p[j] != '\t') || p[j] == 0x7f)
			return fail(status, 400);
	while (v0 < len && (p[v0] == ' ' || p[v0] == '\t'))
		v0++;
	v1 = len;
	while (v1 > v0 && (p[v1 - 1] == ' ' || p[v1 - 1] == '\t'))
		v1--;
	if (nl == 10 && strncasecmp((const char *)p, "Connection", nl) == 0) {
		if (value_has(p + v0, v1 - v0, "close"))
			req->keep_alive = false;
		else if (value_has(p + v0, v1 - v0, "keep-alive"))
			req->keep_alive = true;
	} else if (nl == 14 &&
		   strncasecmp((const char *)p, "Content-Length", nl) == 0) {
		if (v1 - v0 != 1 || p[v0] != '0')
			return fail(status, 400);
	} else if (nl == 17 && strncasecmp((const char *)p,
					   "Transfer-Encoding", nl) == 0) {
		return fail(status, 400);
	}
	return 0;
}

int mta_http_parse(const uint8_t *p, size_t n, struct mta_http_request *req,
		   int *status)
{
	size_t i = 0, nfields = 0;
	bool first = true;
	int rc;

	memset(req, 0, sizeof(*req));
	if (n > MTA_HTTP_HEAD_MAX)
		n = MTA_HTTP_HEAD_MAX;
	for (;;) {
		long e = line_end(p, n, i);
		size_t len;

		if (e < 0) {
			if (n >= MTA_HTTP_HEAD_MAX)
				return fail(status, first ? 414 : 431);
			return 0;
		}
		len = (size_t)e - i;
		if (len > 0 && p[i + len - 1] == '\r')
			len--;
		if (first) {
			/* RFC 9112 §2.2: ignore one empty line before it */
			if (len == 0 && i == 0 && e < 2) {
				i = (size_t)e + 1;
				continue;
			}
			rc = request_line(p + i, len, req, status);
			if (rc != 0)
				return rc;
			req->keep_alive = req->minor >= 1;
			first = false;
		} else if (len == 0) {
			return (int)((size_t)e + 1);
		} else {
			if (++nfields > MTA_HTTP_HEADERS_MAX)
				return fail(status, 431);
			rc = field_line(p + i, len, req, status);
			if (rc != 0)
				return rc;
		}
		i = (size_t)e + 1;
	}
}

const char *mta_http_reason(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 408:
		return "Request Timeout";
	case 414:
		return "URI Too Long";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 503:
		return "Service Unavailable";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Error";
	}
}
