/*
 * routes.c - the routing table parser and matcher.  See routes.h.
 */
#include "routes.h"

#include "err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct mta_routes {
	size_t n, cap;
	struct mta_routes_rule *rules;
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
	/* printable, one line */
	for (char *s = msg; *s; s++)
		if ((unsigned char)*s < ' ' || (unsigned char)*s >= 0x7f)
			*s = '?';
	if (ps->errlen > 0)
		snprintf(ps->err, ps->errlen, "%s:%u: %s",
			 ps->fname ? ps->fname : "(routes)", ps->line, msg);
	return MTA_ECONFIG;
}

/* Bounded copy: false when src does not fit. */
static bool cpy(char *dst, size_t len, const char *src)
{
	size_t n = strlen(src);

	if (n >= len)
		return false;
	memcpy(dst, src, n + 1);
	return true;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* Next token of [*p, end): a "quoted string" (quotes removed, \" and \\
 * escapes) or a run of non-space bytes; stops at '#' outside quotes.
 * 1 = token in tok (NUL-terminated), 0 = none left, <0 = error. */
static int token(struct parser *ps, const char **p, const char *end,
		 char *tok, size_t toklen, bool *quoted)
{
	const char *s = *p;
	size_t n = 0;

	*quoted = false;
	while (s < end && is_space(*s))
		s++;
	if (s == end || *s == '#') {
		*p = end;
		return 0;
	}
	if (*s == '"') {
		*quoted = true;
		s++;
		for (;;) {
			if (s == end)
				return perr(ps, "unterminated quoted string");
			if (*s == '"')
				break;
			if (*s == '\\' && s + 1 < end)
				s++;
			if (n + 1 >= toklen)
				return perr(ps, "quoted string too long");
			tok[n++] = *s++;
		}
		s++;
		if (s < end && !is_space(*s))
			return perr(ps, "text after a quoted string");
	} else {
		while (s < end && !is_space(*s)) {
			if (n + 1 >= toklen)
				return perr(ps, "token too long");
			tok[n++] = *s++;
		}
	}
	tok[n] = '\0';
	*p = s;
	return 1;
}

static bool name_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
	       c == '_';
}

/* Checks and lower-cases a domain (leading dot allowed when dot_ok). */
static int check_domain(struct parser *ps, char *s, bool dot_ok,
			const char *what)
{
	size_t n = strlen(s), label = 0, i = 0;

	if (n > 0 && s[n - 1] == '.' && n > 1)
		s[--n] = '\0';
	if (dot_ok && s[0] == '.')
		i = 1;
	if (n - i == 0 || n > 253)
		return perr(ps, "%s: bad domain \"%s\"", what, s);
	for (; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		s[i] = (char)c;
		if (c == '.') {
			if (label == 0)
				return perr(ps, "%s: empty label in \"%s\"",
					    what, s);
			label = 0;
		} else if (!name_char(c) || ++label > 63) {
			return perr(ps, "%s: bad domain \"%s\"", what, s);
		}
	}
	if (label == 0)
		return perr(ps, "%s: empty label in \"%s\"", what, s);
	return 0;
}

static int pattern(struct parser *ps, char *dst, size_t len, char *tok,
		   const char *what)
{
	int rc;

	if (strcmp(tok, "*") != 0) {
		rc = check_domain(ps, tok, true, what);
		if (rc < 0)
			return rc;
	}
	if (!cpy(dst, len, tok))
		return perr(ps, "%s: pattern too long", what);
	return 0;
}

/* "[host]:port", "[host]", "host:port", "host"; an address literal keeps
 * its brackets ("[192.0.2.1]", "[IPv6:2001:db8::1]"). */
static int hostport(struct parser *ps, const char *tok, char *host,
		    size_t hlen, unsigned *port, const char *what)
{
	const char *colon = NULL, *end = tok + strlen(tok);
	char h[260];
	size_t n;

	*port = 0;
	if (tok[0] == '[') {
		const char *rb = strchr(tok, ']');
		if (rb == NULL)
			return perr(ps, "%s: missing ']' in \"%s\"", what, tok);
		n = (size_t)(rb - tok - 1);
		if (n == 0 || n >= sizeof(h) - 2)
			return perr(ps, "%s: bad host \"%s\"", what, tok);
		memcpy(h, tok + 1, n);
		h[n] = '\0';
		if (rb[1] == ':')
			colon = rb + 1;
		else if (rb[1] != '\0')
			return perr(ps, "%s: text after ']' in \"%s\"", what,
				    tok);
	} else {
		colon = strrchr(tok, ':');
		n = colon ? (size_t)(colon - tok) : (size_t)(end - tok);
		if (n == 0 || n >= sizeof(h))
			return perr(ps, "%s: bad host \"%s\"", what, tok);
		memcpy(h, tok, n);
		h[n] = '\0';
	}
	if (colon != NULL) {
		char *e;
		unsigned long v = strtoul(colon + 1, &e, 10);
		if (colon[1] < '0' || colon[1] > '9' || *e != '\0' || v < 1 ||
		    v > 65535)
			return perr(ps, "%s: bad port in \"%s\"", what, tok);
		*port = (unsigned)v;
	}
	{
		struct in_addr a4;
		struct in6_addr a6;
		if (inet_pton(AF_INET, h, &a4) == 1 ||
		    (strncasecmp(h, "IPv6:", 5) == 0 &&
		     inet_pton(AF_INET6, h + 5, &a6) == 1)) {
			if (strlen(h) + 3 > hlen)
				return perr(ps, "%s: host too long", what);
			host[0] = '[';
			memcpy(host + 1, h, strlen(h));
			memcpy(host + 1 + strlen(h), "]", 2);
			return 0;
		}
	}
	if (check_domain(ps, h, false, what) < 0)
		return MTA_ECONFIG;
	if (!cpy(host, hlen, h))
		return perr(ps, "%s: host too long", what);
	return 0;
}

static int duration(const char *s, unsigned *secs)
{
	char *e;
	unsigned long v = strtoul(s, &e, 10), mul = 0;

	if (s[0] < '0' || s[0] > '9')
		return -1;
	if (strcmp(e, "s") == 0)
		mul = 1;
	else if (strcmp(e, "m") == 0)
		mul = 60;
	else if (strcmp(e, "h") == 0)
		mul = 3600;
	else if (strcmp(e, "d") == 0)
		mul = 86400;
	if (mul == 0 || v == 0 || v > 365UL * 86400 / mul)
		return -1;
	*secs = (unsigned)(v * mul);
	return 0;
}

static int option(struct parser *ps, struct mta_routes_rule *r, char *tok)
{
	char *eq = strchr(tok, '=');
	const char *v;

	if (eq == NULL || eq == tok)
		return perr(ps, "expected key=value, got \"%.60s\"", tok);
	*eq = '\0';
	v = eq + 1;
	if (r->action == MTA_ROUTES_REFUSE || r->action == MTA_ROUTES_HOLD)
		return perr(ps, "%s: no options for %s", tok,
			    mta_routes_action_name(r->action));
	if (strcmp(tok, "level") == 0) {
		int l = mta_tls_level_parse(v);
		if (l < 0)
			return perr(ps, "level: unknown \"%.40s\" (%s)", v,
				    mta_tls_level_list());
		r->has_level = true;
		r->level = (enum mta_tls_level)l;
	} else if (strcmp(tok, "auth") == 0) {
		if (r->action != MTA_ROUTES_RELAY)
			return perr(ps, "auth: only for relay");
		if (v[0] == '\0' || strlen(v) >= sizeof(r->auth))
			return perr(ps, "auth: bad name");
		snprintf(r->auth, sizeof(r->auth), "%s", v);
	} else if (strcmp(tok, "bind") == 0) {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&r->bind4;
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&r->bind6;
		if (inet_pton(AF_INET, v, &a4->sin_addr) == 1) {
			if (r->has_bind4)
				return perr(ps, "bind: two IPv4 addresses");
			a4->sin_family = AF_INET;
			r->has_bind4 = true;
		} else if (inet_pton(AF_INET6, v, &a6->sin6_addr) == 1) {
			if (r->has_bind6)
				return perr(ps, "bind: two IPv6 addresses");
			a6->sin6_family = AF_INET6;
			r->has_bind6 = true;
		} else {
			return perr(ps, "bind: not an IP address: \"%.60s\"",
				    v);
		}
	} else if (strcmp(tok, "helo") == 0) {
		char h[256];
		if (strlen(v) >= sizeof(h))
			return perr(ps, "helo: too long");
		snprintf(h, sizeof(h), "%s", v);
		if (check_domain(ps, h, false, "helo") < 0)
			return MTA_ECONFIG;
		snprintf(r->helo, sizeof(r->helo), "%s", h);
	} else if (strcmp(tok, "fallback") == 0) {
		if (r->action != MTA_ROUTES_MX)
			return perr(ps, "fallback: only for mx");
		if (hostport(ps, v, r->fb_host, sizeof(r->fb_host),
			     &r->fb_port, "fallback") < 0)
			return MTA_ECONFIG;
	} else if (strcmp(tok, "fallback_after") == 0) {
		char *e;
		unsigned long n = strtoul(v, &e, 10);
		if (v[0] >= '0' && v[0] <= '9' && *e == '\0' && n >= 1 &&
		    n <= 1000) {
			r->fb_attempts = (unsigned)n;
			r->fb_age = 0;
		} else if (duration(v, &r->fb_age) == 0) {
			r->fb_attempts = 0;
		} else {
			return perr(ps, "fallback_after: attempts 1..1000 or "
					"a duration (30m, 2h)");
		}
	} else {
		return perr(ps, "unknown option \"%.40s\"", tok);
	}
	return 0;
}

static int parse_line(struct parser *ps, struct mta_routes *t, const char *s,
		      const char *end)
{
	struct mta_routes_rule r;
	char tok[MTA_ROUTES_LINE_MAX + 1];
	bool q;
	int rc;

	memset(&r, 0, sizeof(r));
	r.line = ps->line;
	r.fb_attempts = 3;
	rc = token(ps, &s, end, tok, sizeof(tok), &q);
	if (rc <= 0)
		return rc;
	if (q)
		return perr(ps, "a pattern is not quoted");
	if ((rc = pattern(ps, r.rcpt, sizeof(r.rcpt), tok, "recipient")) < 0)
		return rc;
	if ((rc = token(ps, &s, end, tok, sizeof(tok), &q)) < 0)
		return rc;
	if (rc == 0)
		return perr(ps, "missing action (mx, relay, refuse, hold)");
	if (!q && strcmp(tok, "from") == 0) {
		if ((rc = token(ps, &s, end, tok, sizeof(tok), &q)) < 0)
			return rc;
		if (rc == 0 || q)
			return perr(ps, "from: missing sender pattern");
		if ((rc = pattern(ps, r.sender, sizeof(r.sender), tok,
				  "sender")) < 0)
			return rc;
		if ((rc = token(ps, &s, end, tok, sizeof(tok), &q)) < 0)
			return rc;
		if (rc == 0)
			return perr(ps, "missing action (mx, relay, refuse, "
					"hold)");
	}
	if (q)
		return perr(ps, "the action is not quoted");
	if (strcmp(tok, "mx") == 0) {
		r.action = MTA_ROUTES_MX;
	} else if (strcmp(tok, "relay") == 0) {
		r.action = MTA_ROUTES_RELAY;
		if ((rc = token(ps, &s, end, tok, sizeof(tok), &q)) < 0)
			return rc;
		if (rc == 0 || q || strchr(tok, '=') != NULL)
			return perr(ps, "relay: missing host[:port]");
		if (hostport(ps, tok, r.host, sizeof(r.host), &r.port,
			     "relay") < 0)
			return MTA_ECONFIG;
	} else if (strcmp(tok, "refuse") == 0) {
		r.action = MTA_ROUTES_REFUSE;
		if ((rc = token(ps, &s, end, tok, sizeof(tok), &q)) < 0)
			return rc;
		if (rc == 0 || !q || tok[0] == '\0')
			return perr(ps, "refuse: missing \"text\"");
		/* a leading enhanced status "5.x.y " */
		snprintf(r.status, sizeof(r.status), "5.7.1");
		if (tok[0] == '5' && tok[1] == '.') {
			size_t k = strspn(tok + 2, "0123456789.");
			if (k >= 3 && k < 10 && tok[2 + k] == ' ') {
				memcpy(r.status, tok, 2 + k);
				r.status[2 + k] = '\0';
				memmove(tok, tok + 3 + k, strlen(tok + 3 + k) + 1);
			}
		}
		for (char *c = tok; *c; c++)
			if ((unsigned char)*c < ' ' || (unsigned char)*c >= 0x7f)
				return perr(ps, "refuse: text must be printable "
						"ASCII");
		if (!cpy(r.text, sizeof(r.text), tok))
			return perr(ps, "refuse: text longer than %zu bytes",
				    sizeof(r.text) - 1);
	} else if (strcmp(tok, "hold") == 0) {
		r.action = MTA_ROUTES_HOLD;
	} else {
		return perr(ps, "unknown action \"%.40s\" (mx, relay, refuse, "
				"hold)", tok);
	}
	for (;;) {
		if ((rc = token(ps, &s, end, tok, sizeof(tok), &q)) < 0)
			return rc;
		if (rc == 0)
			break;
		if (q)
			return perr(ps, "unexpected quoted text");
		if ((rc = option(ps, &r, tok)) < 0)
			return rc;
	}
	if (t->n >= MTA_ROUTES_MAX)
		return perr(ps, "more than %d rules", MTA_ROUTES_MAX);
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

int mta_routes_parse(const char *text, size_t len, const char *fname,
		     struct mta_routes **out, char *err, size_t errlen)
{
	struct parser ps = {fname, 0, err, errlen};
	struct mta_routes *t;
	const char *s = text, *end = text + len;
	int rc = 0;

	if (errlen > 0)
		err[0] = '\0';
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *eol = nl ? nl : end;

		ps.line++;
		if (eol > s && eol[-1] == '\r')
			eol--;
		if ((size_t)(eol - s) > MTA_ROUTES_LINE_MAX) {
			rc = perr(&ps, "line longer than %d bytes",
				  MTA_ROUTES_LINE_MAX);
			goto fail;
		}
		if (memchr(s, '\0', (size_t)(eol - s)) != NULL) {
			rc = perr(&ps, "NUL byte");
			goto fail;
		}
		rc = parse_line(&ps, t, s, eol);
		if (rc < 0)
			goto fail;
		s = nl ? nl + 1 : end;
	}
	*out = t;
	return 0;

fail:
	if (rc == -ENOMEM && errlen > 0)
		snprintf(err, errlen, "%s: out of memory",
			 fname ? fname : "(routes)");
	mta_routes_free(t);
	return rc;
}

int mta_routes_load(const char *path, struct mta_routes **out, char *err,
		    size_t errlen)
{
	struct stat st;
	char *buf;
	size_t len = 0;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", path, mta_strerror(rc));
		return rc;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
	    (unsigned long long)st.st_size > MTA_ROUTES_FILE_MAX) {
		close(fd);
		snprintf(err, errlen, "%s: not a regular file of at most %u "
			 "bytes", path, MTA_ROUTES_FILE_MAX);
		return MTA_ECONFIG;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		ssize_t got = read(fd, buf + len, (size_t)st.st_size + 1 - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			rc = -errno;
			free(buf);
			close(fd);
			snprintf(err, errlen, "%s: %s", path, mta_strerror(rc));
			return rc;
		}
		if (got == 0 || (len += (size_t)got) > (size_t)st.st_size)
			break;
	}
	close(fd);
	if (len > (size_t)st.st_size) {
		free(buf);
		snprintf(err, errlen, "%s: changed while being read", path);
		return MTA_ECONFIG;
	}
	rc = mta_routes_parse(buf, len, path, out, err, errlen);
	free(buf);
	return rc;
}

void mta_routes_free(struct mta_routes *r)
{
	if (r == NULL)
		return;
	free(r->rules);
	free(r);
}

size_t mta_routes_count(const struct mta_routes *r)
{
	return r ? r->n : 0;
}

const struct mta_routes_rule *mta_routes_get(const struct mta_routes *r,
					     size_t i)
{
	return r && i < r->n ? &r->rules[i] : NULL;
}

bool mta_routes_pattern_match(const char *pat, const char *name)
{
	size_t pl, nl;

	if (strcmp(pat, "*") == 0)
		return true;
	nl = strlen(name);
	if (nl > 0 && name[nl - 1] == '.')
		nl--;
	if (pat[0] == '.') {
		pl = strlen(pat);
		return nl > pl && strncasecmp(name + nl - pl, pat, pl) == 0;
	}
	pl = strlen(pat);
	return nl == pl && strncasecmp(name, pat, pl) == 0;
}

const struct mta_routes_rule *mta_routes_match(const struct mta_routes *r,
					       const char *rcpt_domain,
					       const char *sender_domain)
{
	if (r == NULL)
		return NULL;
	for (size_t i = 0; i < r->n; i++) {
		const struct mta_routes_rule *x = &r->rules[i];
		if (!mta_routes_pattern_match(x->rcpt, rcpt_domain))
			continue;
		if (x->sender[0] != '\0' &&
		    !mta_routes_pattern_match(x->sender, sender_domain))
			continue;
		return x;
	}
	return NULL;
}

const char *mta_routes_action_name(enum mta_routes_action a)
{
	switch (a) {
	case MTA_ROUTES_MX:
		return "mx";
	case MTA_ROUTES_RELAY:
		return "relay";
	case MTA_ROUTES_REFUSE:
		return "refuse";
	case MTA_ROUTES_HOLD:
		return "hold";
	}
	return "?";
}
