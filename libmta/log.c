#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = MTA_LOG_INFO;
static atomic_int log_fd = STDERR_FILENO;

void mta_log_set_level(enum mta_log_level level)
{
	atomic_store(&log_level, (int)level);
}

void mta_log_set_fd(int fd)
{
	atomic_store(&log_fd, fd);
}

int mta_log_parse_level(const char *name, enum mta_log_level *out)
{
	static const char *const names[] = {"debug", "info", "warn", "error"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(name, names[i]) == 0) {
			*out = (enum mta_log_level)i;
			return 0;
		}
	}
	return -1;
}

static void put_raw(struct mta_logline *l, const char *s, size_t n)
{
	/* keep one byte for the newline */
	size_t room = MTA_LOG_LINE_MAX - 1 - l->len;
	if (n > room) {
		n = room;
		l->truncated = 1;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static int needs_quotes(const char *v, size_t n)
{
	if (n == 0)
		return 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
			return 1;
	}
	return 0;
}

static void put_value(struct mta_logline *l, const char *v, size_t n)
{
	if (!needs_quotes(v, n)) {
		put_raw(l, v, n);
		return;
	}
	put_raw(l, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)v[i];
		char esc[5];
		switch (c) {
		case '"':
			put_raw(l, "\\\"", 2);
			break;
		case '\\':
			put_raw(l, "\\\\", 2);
			break;
		case '\n':
			put_raw(l, "\\n", 2);
			break;
		case '\r':
			put_raw(l, "\\r", 2);
			break;
		case '\t':
			put_raw(l, "\\t", 2);
			break;
		default:
			if (c < ' ' || c == 0x7f) {
				snprintf(esc, sizeof(esc), "\\x%02x", c);
				put_raw(l, esc, 4);
			} else {
				put_raw(l, (const char *)&v[i], 1);
			}
		}
	}
	put_raw(l, "\"", 1);
}

void mta_log_begin(struct mta_logline *l, enum mta_log_level level,
		   const char *event)
{
	static const char *const lv[] = {"debug", "info", "warn", "error"};
	struct timeval tv;
	struct tm tm;
	char ts[64];

	l->len = 0;
	l->truncated = 0;
	l->skip = (int)level < atomic_load(&log_level);
	if (l->skip)
		return;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof(ts) - n, ".%06ldZ", (long)tv.tv_usec);
	put_raw(l, "ts=", 3);
	put_raw(l, ts, strlen(ts));
	put_raw(l, " level=", 7);
	put_raw(l, lv[level], strlen(lv[level]));
	mta_log_str(l, "event", event);
}

void mta_log_strn(struct mta_logline *l, const char *key, const char *value,
		  size_t len)
{
	if (l->skip)
		return;
	put_raw(l, " ", 1);
	put_raw(l, key, strlen(key));
	put_raw(l, "=", 1);
	put_value(l, value, len);
}

void mta_log_str(struct mta_logline *l, const char *key, const char *value)
{
	if (value == NULL)
		value = "";
	mta_log_strn(l, key, value, strlen(value));
}

void mta_log_int(struct mta_logline *l, const char *key, long long value)
{
	char b[32];
	if (l->skip)
		return;
	int n = snprintf(b, sizeof(b), "%lld", value);
	put_raw(l, " ", 1);
	put_raw(l, key, strlen(key));
	put_raw(l, "=", 1);
	put_raw(l, b, (size_t)n);
}

void mta_log_fmt(struct mta_logline *l, const char *key, const char *fmt, ...)
{
	char b[1024];
	va_list ap;
	if (l->skip)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(b))
		n = sizeof(b) - 1;
	mta_log_strn(l, key, b, (size_t)n);
}

void mta_log_end(struct mta_logline *l)
{
	if (l->skip)
		return;
	if (l->truncated) {
		l->len = l->len > MTA_LOG_LINE_MAX - 16 ? MTA_LOG_LINE_MAX - 16
							: l->len;
		memcpy(l->buf + l->len, " truncated=1", 12);
		l->len += 12;
	}
	l->buf[l->len++] = '\n';
	const char *p = l->buf;
	size_t left = l->len;
	int fd = atomic_load(&log_fd);
	while (left > 0) {
		ssize_t w = write(fd, p, left);
		if (w <= 0)
			break;
		p += w;
		left -= (size_t)w;
	}
}
