/*
 * log.h - logfmt event lines on stderr.
 *
 * DESCRIPTION
 *	One event = one line of space-separated key=value pairs, written with a
 *	single write(2) so lines from the loop thread and the writer thread never
 *	interleave.  A line starts with ts= (UTC, microseconds), level= and
 *	event=, then the caller's pairs in the order added.
 *
 *	mta_log_begin() starts a line in a caller-owned struct mta_logline (on
 *	the stack); mta_log_str()/mta_log_int()/mta_log_fmt() append pairs;
 *	mta_log_end() writes it.  Values with spaces, quotes, '=' or control
 *	characters are double-quoted and escaped (\" \\ \n \r \t, other
 *	control bytes as \xHH), so an attacker-chosen string (an EHLO name, a
 *	peer's reply) cannot forge a second line or a key.  A line longer than
 *	MTA_LOG_LINE_MAX is cut and ends with truncated=1.
 *
 *	mta_log_set_level() sets the minimum level, at start-up and on reload; lines
 *	below it are dropped at mta_log_begin() (l->skip).
 *
 * THREADS
 *	Any thread.  A struct mta_logline belongs to one thread.
 *
 * SECURITY
 *	Values are untrusted; keys are compile-time constants.
 */
#ifndef MTA_LOG_H
#define MTA_LOG_H

#include <stdarg.h>
#include <stddef.h>

#define MTA_LOG_LINE_MAX 4096

enum mta_log_level {
	MTA_LOG_DEBUG = 0,
	MTA_LOG_INFO = 1,
	MTA_LOG_WARN = 2,
	MTA_LOG_ERR = 3,
};

struct mta_logline {
	char buf[MTA_LOG_LINE_MAX];
	size_t len;
	int skip;
	int truncated;
};

void mta_log_set_level(enum mta_log_level level);
int mta_log_parse_level(const char *name, enum mta_log_level *out);
void mta_log_set_fd(int fd);

void mta_log_begin(struct mta_logline *l, enum mta_log_level level,
		   const char *event);
void mta_log_str(struct mta_logline *l, const char *key, const char *value);
/* Appends a value of exactly len bytes (need not be NUL-terminated). */
void mta_log_strn(struct mta_logline *l, const char *key, const char *value,
		  size_t len);
void mta_log_int(struct mta_logline *l, const char *key, long long value);
void mta_log_fmt(struct mta_logline *l, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void mta_log_end(struct mta_logline *l);

#endif
