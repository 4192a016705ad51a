/*
 * shaping.c - traffic shaping rules and per-site state.  See shaping.h.
 */
#include "shaping.h"

#include "err.h"
#include "routes.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mta_shaping {
	size_t n, cap;
	struct mta_shaping_rule *rules;
};

struct parser {
	const char *fname;
	unsigned line;
	char *err;
	size_t errlen;
};

__attribute__((format(printf, 2, 3)))
static int perr(struct parser *ps, const char *fmt, ...)
{
	char msg[300];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *s = msg; *s; s++)
		if ((unsigned char)*s < ' ' || (unsigned char)*s >= 0x7f)
			*s = '?';
	if (ps->errlen > 0)
		snprintf(ps->err, ps->errlen, "%s:%u: %s",
			 ps->fname ? ps->fname : "(shaping)", ps->line, msg);
	return MTA_ECONFIG;
}

static bool site_ok(char *s)
{
	size_t n = strlen(s), label = 0, i = 0;

	if (strcmp(s, "*") == 0)
		return true;
	if (n > 1 && s[n - 1] == '.')
		s[--n] = '\0';
	if (s[0] == '.')
		i = 1;
	if (n - i == 0 || n > 253)
		return false;
	for (; i < n; i++) {
		char c = s[i];
		if (c >= 'A' && c <= 'Z')
			s[i] = c = (char)(c - 'A' + 'a');
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			     c == '-' || c == '_') ||
			   ++label > 63) {
			return false;
		}
	}
	return label > 0;
}

static bool count(const char *v, unsigned max, unsigned *out)
{
	char *e;
	unsigned long n;

	if (v[0] < '0' || v[0] > '9')
		return false;
	n = strtoul(v, &e, 10);
	if (*e != '\0' || n < 1 || n > max)
		return false;
	*out = (unsigned)n;
	return true;
}

static bool seconds(const char *v, unsigned *out)
{
	char *e;
	unsigned long n, mul = 0;

	if (v[0] < '0' || v[0] > '9')
		return false;
	n = strtoul(v, &e, 10);
	if (strcmp(e, "s") == 0 || *e == '\0')
		mul = 1;
	else if (strcmp(e, "m") == 0)
		mul = 60;
	else if (strcmp(e, "h") == 0)
		mul = 3600;
	if (mul == 0 || n < 1 || n > 86400 / mul)
		return false;
	*out = (unsigned)(n * mul);
	return true;
}

static int option(struct parser *ps, struct mta_shaping_rule *r, char *tok)
{
	char *eq = strchr(tok, '=');
	const char *v;

	if (eq == NULL || eq == tok)
		return perr(ps, "expected key=value, got \"%.60s\"", tok);
	*eq = '\0';
	v = eq + 1;
	if (strcmp(tok, "connections") == 0) {
		if (!count(v, 10000, &r->connections))
			return perr(ps, "connections: 1..10000");
	} else if (strcmp(tok, "messages_per_connection") == 0) {
		if (!count(v, 1000000, &r->msgs_per_conn))
			return perr(ps, "messages_per_connection: 1..1000000");
	} else if (strcmp(tok, "rate") == 0) {
		char *e;
		unsigned long n;
		double per;
		if (v[0] < '0' || v[0] > '9')
			return perr(ps, "rate: N/s, N/m or N/h");
		n = strtoul(v, &e, 10);
		if (strcmp(e, "/s") == 0)
			per = 60.0;
		else if (strcmp(e, "/m") == 0 || strcmp(e, "/min") == 0)
			per = 1.0;
		else if (strcmp(e, "/h") == 0)
			per = 1.0 / 60.0;
		else
			return perr(ps, "rate: N/s, N/m or N/h");
		if (n < 1 || n > 1000000 || (double)n * per < 1.0)
			return perr(ps, "rate: from 1/m to 1000000/s");
		r->rate = (double)n * per;
	} else if (strcmp(tok, "backoff") == 0) {
		if (strcmp(v, "on") == 0)
			r->backoff = true;
		else if (strcmp(v, "off") == 0)
			r->backoff = false;
		else
			return perr(ps, "backoff: on or off");
	} else if (strcmp(tok, "recover") == 0) {
		if (!seconds(v, &r->recover))
			return perr(ps, "recover: a duration, 1s..1d");
	} else {
		return perr(ps, "unknown option \"%.40s\"", tok);
	}
	return 0;
}

static int parse_line(struct parser *ps, struct mta_shaping *t, char *s)
{
	struct mta_shaping_rule r;
	char *save = NULL, *tok;
	int rc;

	{
		char *hash = strchr(s, '#');
		if (hash != NULL)
			*hash = '\0';
	}
	tok = strtok_r(s, " \t", &save);
	if (tok == NULL)
		return 0;
	memset(&r, 0, sizeof(r));
	r.line = ps->line;
	r.backoff = true;
	r.recover = 60;
	if (strlen(tok) >= sizeof(r.site) || !site_ok(tok))
		return perr(ps, "bad site pattern \"%.60s\"", tok);
	snprintf(r.site, sizeof(r.site), "%s", tok);
	while ((tok = strtok_r(NULL, " \t", &save)) != NULL)
		if ((rc = option(ps, &r, tok)) < 0)
			return rc;
	if (t->n >= MTA_SHAPING_MAX)
		return perr(ps, "more than %d rules", MTA_SHAPING_MAX);
	if (t->n == t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 16;
		void *nr = realloc(t->rules, nc * sizeof(*t->rules));
		if (nr == NULL)
			return -ENOMEM;
		t->rules = nr;
		t->cap = nc;
	}
	t->rules[t->n++] = r;
	return 0;
}

int mta_shaping_parse(const char *text, size_t len, const char *fname,
		      struct mta_shaping **out, char *err, size_t errlen)
{
	struct parser ps = {fname, 0, err, errlen};
	struct mta_shaping *t;
	const char *s = text, *end = text + len;
	char line[MTA_ROUTES_LINE_MAX + 1];
	int rc = 0;

	if (errlen > 0)
		err[0] = '\0';
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *eol = nl ? nl : end;
		size_t n;

		ps.line++;
		if (eol > s && eol[-1] == '\r')
			eol--;
		n = (size_t)(eol - s);
		if (n > MTA_ROUTES_LINE_MAX) {
			rc = perr(&ps, "line longer than %d bytes",
				  MTA_ROUTES_LINE_MAX);
			goto fail;
		}
		if (memchr(s, '\0', n) != NULL) {
			rc = perr(&ps, "NUL byte");
			goto fail;
		}
		memcpy(line, s, n);
		line[n] = '\0';
		rc = parse_line(&ps, t, line);
		if (rc < 0)
			goto fail;
		s = nl ? nl + 1 : end;
	}
	*out = t;
	return 0;

fail:
	if (rc == -ENOMEM && errlen > 0)
		snprintf(err, errlen, "%s: out of memory",
			 fname ? fname : "(shaping)");
	mta_shaping_free(t);
	return rc;
}

int mta_shaping_load(const char *path, struct mta_shaping **out, char *err,
		     size_t errlen)
{
	FILE *f = fopen(path, "re");
	char *buf;
	size_t len;
	int rc;

	if (f == NULL) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", path, mta_strerror(rc));
		return rc;
	}
	buf = malloc(MTA_ROUTES_FILE_MAX + 1);
	if (buf == NULL) {
		fclose(f);
		return -ENOMEM;
	}
	len = fread(buf, 1, MTA_ROUTES_FILE_MAX + 1, f);
	rc = ferror(f) ? -EIO : 0;
	fclose(f);
	if (rc == 0 && len > MTA_ROUTES_FILE_MAX) {
		snprintf(err, errlen, "%s: larger than %u bytes", path,
			 MTA_ROUTES_FILE_MAX);
		rc = MTA_ECONFIG;
	} else if (rc != 0) {
		snprintf(err, errlen, "%s: %s", path, mta_strerror(rc));
	} else {
		rc = mta_shaping_parse(buf, len, path, out, err, errlen);
	}
	free(buf);
	return rc;
}

void mta_shaping_free(struct mta_shaping *s)
{
	if (s == NULL)
		return;
	free(s->rules);
	free(s);
}

size_t mta_shaping_count(const struct mta_shaping *s)
{
	return s ? s->n : 0;
}

const struct mta_shaping_rule *mta_shaping_get(const struct mta_shaping *s,
					       size_t i)
{
	return s && i < s->n ? &s->rules[i] : NULL;
}

long mta_shaping_find(const struct mta_shaping *s, const char *domain,
		      const char *const *hosts, size_t nhosts)
{
	if (s == NULL)
		return -1;
	for (size_t i = 0; i < s->n; i++) {
		const char *p = s->rules[i].site;
		if (mta_routes_pattern_match(p, domain))
			return (long)i;
		for (size_t h = 0; h < nhosts; h++)
			if (mta_routes_pattern_match(p, hosts[h]))
				return (long)i;
	}
	return -1;
}

#define MINUTE_US 60000000LL

void mta_shaping_site_init(struct mta_shaping_site *st,
			   const struct mta_shaping_rule *rule, int64_t now)
{
	memset(st, 0, sizeof(*st));
	st->rule = rule;
	st->rate = st->ceiling = rule->rate;
	st->win_us = now;
	st->change_us = now;
}

void mta_shaping_site_carry(struct mta_shaping_site *st,
			    const struct mta_shaping_site *old)
{
	bool throttled = old->rate > 0 &&
			 (old->ceiling <= 0 || old->rate < old->ceiling);

	st->next_us = old->next_us;
	st->throttle_us = old->throttle_us;
	st->change_us = old->change_us;
	st->win_us = old->win_us;
	st->win_n = old->win_n;
	st->prev_n = old->prev_n;
	st->sent = old->sent;
	st->throttles = old->throttles;
	if (!throttled)
		return; /* at its ceiling: the new rule's rate */
	if (st->rule->rate <= 0)
		st->ceiling = old->ceiling; /* learned, or the old rate */
	st->rate = old->rate;
	if (st->ceiling > 0 && st->rate > st->ceiling)
		st->rate = st->ceiling;
}

bool mta_shaping_conn_ok(const struct mta_shaping_site *st)
{
	return st->rule->connections == 0 ||
	       st->nconn < st->rule->connections;
}

static void window(struct mta_shaping_site *st, int64_t now)
{
	if (now - st->win_us >= 2 * MINUTE_US) {
		st->prev_n = 0;
		st->win_n = 0;
		st->win_us = now;
	} else if (now - st->win_us >= MINUTE_US) {
		st->prev_n = st->win_n;
		st->win_n = 0;
		st->win_us += MINUTE_US;
	}
}

int64_t mta_shaping_take(struct mta_shaping_site *st, int64_t now)
{
	window(st, now);
	if (st->rate > 0 && now < st->next_us)
		return st->next_us - now;
	if (st->rate > 0)
		st->next_us = now + (int64_t)((double)MINUTE_US / st->rate);
	st->win_n++;
	st->sent++;
	return 0;
}

bool mta_shaping_throttled(struct mta_shaping_site *st, int64_t now)
{
	double base;

	st->throttles++;
	if (!st->rule->backoff ||
	    (st->throttle_us != 0 && now - st->throttle_us < 10000000LL))
		return false;
	window(st, now);
	base = st->rate;
	if (base <= 0) {
		/* no configured rate: from what the site took over the last
		 * minute, which is also where recovery lifts the limit */
		base = (double)(st->win_n + st->prev_n);
		if (base < 2)
			base = 2;
		st->ceiling = base;
	}
	st->rate = base / 2 < 1 ? 1 : base / 2;
	st->throttle_us = st->change_us = now;
	/* the next message waits for the new spacing */
	st->next_us = now + (int64_t)((double)MINUTE_US / st->rate);
	return true;
}

bool mta_shaping_tick(struct mta_shaping_site *st, int64_t now)
{
	double step;

	if (st->throttle_us == 0 || st->rate <= 0 || st->rate >= st->ceiling)
		return false;
	if (now - st->change_us < (int64_t)st->rule->recover * 1000000LL)
		return false;
	step = st->ceiling / 4 < 1 ? 1 : st->ceiling / 4;
	st->rate += step;
	if (st->rate >= st->ceiling) {
		st->rate = st->ceiling;
		if (st->rule->rate <= 0)
			st->rate = 0; /* back to no limit */
	}
	st->change_us = now;
	return true;
}

bool mta_shaping_is_throttle(int code, const char *status)
{
	if (code == 421)
		return true;
	return code >= 400 && code < 500 && status != NULL &&
	       strncmp(status, "4.7.", 4) == 0 && code != 454;
}
