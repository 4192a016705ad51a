/*
 * shaping.h - traffic shaping per destination site (delivery.shaping_file):
 * the rule table and the per-site state (connections, message spacing,
 * adaptive back-off).  Pure: the caller passes the clock.
 *
 * DESCRIPTION
 *	mta_shaping_parse() parses a table (sans-I/O), one rule a line,
 *	first match wins:
 *	    <site-pattern> [connections=N] [messages_per_connection=N]
 *	                   [rate=N/s|N/m|N/h] [backoff=on|off]
 *	                   [recover=DURATION]
 *	A site pattern is an exact name, a ".suffix" or "*" (routes.h
 *	patterns); it matches when the recipient domain or any of its MX host
 *	names matches, so ".google.com" puts gmail.com and every domain hosted
 *	by Google in one site.  '#' starts a comment.  mta_shaping_load() reads
 *	a file.  mta_shaping_find() returns the index of the first rule that
 *	matches the domain or one of its hosts, or -1.
 *
 *	Per-site state (struct mta_shaping_site, one per rule, owned by the
 *	caller): mta_shaping_site_init() starts it at the configured rate.
 *	mta_shaping_conn_ok() says whether another connection may open.
 *	mta_shaping_take() asks to send one message now: 0 = go (counted),
 *	else the microseconds to wait.  mta_shaping_throttled() records a
 *	throttling reply (421, or 4xx with 4.7.x): with backoff on it halves
 *	the current rate (at most once per 10 s; from the rate observed over
 *	the last minute when no rate is configured), floor 1/min.
 *	mta_shaping_site_carry() moves a site's state to the rule that
 *	replaces its rule on reload (same pattern): a throttled rate stays
 *	throttled (capped by the new ceiling) and recovers from there.
 *	mta_shaping_tick() recovers: after each recover period (default 60 s)
 *	without throttling the rate grows by a quarter of its ceiling, back
 *	to the ceiling (the configured rate, or unlimited).  Both return true
 *	when the rate changed (the caller logs it).
 *
 * THREADS
 *	Any; a site is the caller's (the delivery loop's).
 *
 * OWNERSHIP
 *	*out is the caller's (mta_shaping_free()); rules are borrowed from it.
 *
 * ERRORS
 *	MTA_ECONFIG with err "fname:line: why", -ENOMEM, -errno on reading.
 *
 * SECURITY
 *	Operator's file, parsed with the bounds of routes.h.
 */
#ifndef MTA_SHAPING_H
#define MTA_SHAPING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_SHAPING_MAX 10000

struct mta_shaping_rule {
	unsigned line;
	char site[256];		  /* the pattern: the site's name */
	unsigned connections;	  /* 0 = no limit */
	unsigned msgs_per_conn;	  /* 0 = no limit */
	double rate;		  /* messages per minute, 0 = no limit */
	bool backoff;		  /* default on */
	unsigned recover;	  /* seconds, default 60 */
};

struct mta_shaping_site {
	const struct mta_shaping_rule *rule;
	unsigned nconn;		/* connections open now */
	double rate;		/* current messages per minute, 0 = none */
	double ceiling;		/* what recovery returns to, 0 = none */
	int64_t next_us;	/* earliest next message */
	int64_t throttle_us;	/* last halving */
	int64_t change_us;	/* last rate change (throttle or recovery) */
	int64_t win_us;		/* start of the current minute window */
	unsigned win_n, prev_n; /* messages in this / the last window */
	uint64_t sent, throttles;
};

struct mta_shaping;

int mta_shaping_parse(const char *text, size_t len, const char *fname,
		      struct mta_shaping **out, char *err, size_t errlen);
int mta_shaping_load(const char *path, struct mta_shaping **out, char *err,
		     size_t errlen);
void mta_shaping_free(struct mta_shaping *s);
size_t mta_shaping_count(const struct mta_shaping *s);
const struct mta_shaping_rule *mta_shaping_get(const struct mta_shaping *s,
					       size_t i);
long mta_shaping_find(const struct mta_shaping *s, const char *domain,
		      const char *const *hosts, size_t nhosts);

void mta_shaping_site_init(struct mta_shaping_site *st,
			   const struct mta_shaping_rule *rule, int64_t now);
/* Reload: st (just initialised for its new rule) takes over old's
 * state: counters, message spacing, and a throttled rate (at most the
 * new ceiling).  Not nconn: the caller counts its connections again. */
void mta_shaping_site_carry(struct mta_shaping_site *st,
			    const struct mta_shaping_site *old);
bool mta_shaping_conn_ok(const struct mta_shaping_site *st);
int64_t mta_shaping_take(struct mta_shaping_site *st, int64_t now);
bool mta_shaping_throttled(struct mta_shaping_site *st, int64_t now);
bool mta_shaping_tick(struct mta_shaping_site *st, int64_t now);
/* A throttling reply: 421, or a 4xx reply whose enhanced status is
 * 4.7.x (RFC 3463 security/policy: Gmail's 4.7.28, Microsoft's 4.7.650). */
bool mta_shaping_is_throttle(int code, const char *status);

#endif
