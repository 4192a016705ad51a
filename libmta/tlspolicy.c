#include "tlspolicy.h"

#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DOMAIN_MAX 253
#define LABEL_MAX 63
#define QUOTE_MAX 64

static const char *const level_names[MTA_TLS_LEVEL_COUNT] = {
#define LEVEL_NAME(e, name, what) [MTA_TLS_##e] = name,
	MTA_TLS_LEVEL_MAP(LEVEL_NAME)
#undef LEVEL_NAME
};

static const char level_list[] =
#define LEVEL_LIST(e, name, what) ", " name
	MTA_TLS_LEVEL_MAP(LEVEL_LIST)
#undef LEVEL_LIST
	;

struct entry {
	const char *name;	/* normalised, in the pool */
	unsigned line;
	enum mta_tls_level level;
};

struct mta_tlspolicy {
	struct entry *e;	/* sorted by name */
	size_t n;
	char *pool;
};

static int level_parse_n(const char *s, size_t n)
{
	for (int i = 0; i < MTA_TLS_LEVEL_COUNT; i++)
		if (strlen(level_names[i]) == n &&
		    memcmp(level_names[i], s, n) == 0)
			return i;
	return -EINVAL;
}

int mta_tls_level_parse(const char *name)
{
	if (name == NULL)
		return -EINVAL;
	return level_parse_n(name, strlen(name));
}

const char *mta_tls_level_name(enum mta_tls_level level)
{
	if ((unsigned)level >= MTA_TLS_LEVEL_COUNT)
		return "?";
	return level_names[level];
}

const char *mta_tls_level_list(void)
{
	return level_list + 2; /* without the first ", " */
}

/* ---- parsing ---- */

struct parser {
	const char *fname;
	unsigned line;
	char *err;
	size_t errlen;
};

__attribute__((format(printf, 2, 3)))
static int perr(struct parser *ps, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (ps->errlen > 0)
		snprintf(ps->err, ps->errlen, "%s:%u: %s",
			 ps->fname ? ps->fname : "(policy)", ps->line, msg);
	return MTA_ECONFIG;
}

/* Quotable copy of n bytes: control and non-ASCII bytes as '?', cut. */
static void quote(char *dst, size_t size, const char *s, size_t n)
{
	size_t i, max = size - 1;
	bool cut = n > max;

	if (cut)
		max -= 3;
	for (i = 0; i < n && i < max; i++) {
		unsigned char c = (unsigned char)s[i];
		dst[i] = (c >= ' ' && c < 0x7f) ? (char)c : '?';
	}
	if (cut) {
		memcpy(dst + i, "...", 3);
		i += 3;
	}
	dst[i] = '\0';
}

static bool name_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
	       c == '_';
}

/*
 * Checks and normalises a domain token of n bytes into dst (at least n+1
 * bytes): lower case, trailing dot removed, leading dot kept.  NULL on
 * success, else why not.
 */
static const char *normalise(const char *s, size_t n, char *dst)
{
	size_t i = 0, label = 0, len;

	if (n > 0 && s[n - 1] == '.')
		n--;
	if (n > 0 && s[0] == '.') {
		dst[0] = '.';
		i = 1;
	}
	len = n - i;
	if (len == 0)
		return "empty name";
	if (len > DOMAIN_MAX)
		return "longer than 253 bytes";
	if (s[i] == '*')
		return "wildcards are not supported (a leading dot matches every subdomain)";
	for (; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		if (c == '.') {
			if (label == 0)
				return "empty label";
			label = 0;
		} else if (!name_char(c)) {
			return "bad character (letters, digits, '-', '_' and '.' only)";
		} else if (++label > LABEL_MAX) {
			return "label longer than 63 bytes";
		}
		dst[i] = (char)c;
	}
	if (label == 0)
		return "empty label";
	dst[n] = '\0';
	return NULL;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* Next whitespace-separated token in [*p, end); false when none. */
static bool token(const char **p, const char *end, const char **tok,
		  size_t *len)
{
	const char *s = *p;

	while (s < end && is_space(*s))
		s++;
	if (s == end)
		return false;
	*tok = s;
	while (s < end && !is_space(*s))
		s++;
	*len = (size_t)(s - *tok);
	*p = s;
	return true;
}

static int cmp_entry(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c != 0)
		return c;
	return x->line < y->line ? -1 : x->line > y->line;
}

static int parse_line(struct parser *ps, struct mta_tlspolicy *p,
		      size_t *cap, char **poolp, const char *s,
		      const char *end)
{
	const char *dom, *lvl, *extra, *hash, *why;
	size_t dlen, llen, xlen;
	char q[QUOTE_MAX + 1];
	int level;

	hash = memchr(s, '#', (size_t)(end - s));
	if (hash != NULL)
		end = hash;
	if (!token(&s, end, &dom, &dlen))
		return 0;
	why = normalise(dom, dlen, *poolp);
	if (why != NULL) {
		quote(q, sizeof(q), dom, dlen);
		return perr(ps, "invalid domain '%s': %s", q, why);
	}
	if (!token(&s, end, &lvl, &llen)) {
		quote(q, sizeof(q), dom, dlen);
		return perr(ps, "missing level after '%s'", q);
	}
	level = level_parse_n(lvl, llen);
	if (level < 0) {
		quote(q, sizeof(q), lvl, llen);
		return perr(ps, "unknown level '%s'", q);
	}
	if (token(&s, end, &extra, &xlen)) {
		quote(q, sizeof(q), extra, xlen);
		return perr(ps, "unexpected '%s' after the level", q);
	}
	if (p->n == MTA_TLSPOLICY_ENTRIES)
		return perr(ps, "too many entries (max %d)",
			    MTA_TLSPOLICY_ENTRIES);
	if (p->n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		struct entry *ne = realloc(p->e, ncap * sizeof(*ne));

		if (ne == NULL)
			return -ENOMEM;
		p->e = ne;
		*cap = ncap;
	}
	p->e[p->n].name = *poolp;
	p->e[p->n].line = ps->line;
	p->e[p->n].level = (enum mta_tls_level)level;
	p->n++;
	*poolp += strlen(*poolp) + 1;
	return 0;
}

static int check_duplicates(struct parser *ps, struct mta_tlspolicy *p)
{
	const struct entry *dup = NULL, *first = NULL;
	char q[QUOTE_MAX + 1];

	if (p->n < 2)
		return 0;
	qsort(p->e, p->n, sizeof(*p->e), cmp_entry);
	for (size_t i = 1; i < p->n; i++) {
		if (strcmp(p->e[i - 1].name, p->e[i].name) != 0)
			continue;
		/* sorted by line within a name: e[i-1] precedes e[i] */
		if (dup == NULL || p->e[i].line < dup->line) {
			dup = &p->e[i];
			first = &p->e[i - 1];
			while (first > p->e &&
			       strcmp(first[-1].name, dup->name) == 0)
				first--;
		}
	}
	if (dup == NULL)
		return 0;
	ps->line = dup->line;
	quote(q, sizeof(q), dup->name, strlen(dup->name));
	return perr(ps, "duplicate entry for '%s' (first on line %u)", q,
		    first->line);
}

/* The table in text[0..len) (see tlspolicy.h for the format and the
 * errors); fname is used only in error messages. */
static int parse_table(const char *text, size_t len, const char *fname,
		       struct mta_tlspolicy **out, char *err, size_t errlen)
{
	struct parser ps = {fname, 0, err, errlen};
	struct mta_tlspolicy *p;
	const char *s = text, *end = text + len;
	size_t cap = 0;
	char *pool;
	int rc;

	if (errlen > 0)
		err[0] = '\0';
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	/* normalised names never outgrow their token plus a separator */
	p->pool = malloc(len + 1);
	if (p->pool == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	pool = p->pool;
	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *eol = nl ? nl : end;

		ps.line++;
		if (eol > s && eol[-1] == '\r')
			eol--;
		if ((size_t)(eol - s) > MTA_TLSPOLICY_LINE_MAX) {
			rc = perr(&ps, "line longer than %d bytes",
				  MTA_TLSPOLICY_LINE_MAX);
			goto fail;
		}
		if (memchr(s, '\0', (size_t)(eol - s)) != NULL) {
			rc = perr(&ps, "NUL byte");
			goto fail;
		}
		rc = parse_line(&ps, p, &cap, &pool, s, eol);
		if (rc < 0)
			goto fail;
		s = nl ? nl + 1 : end;
	}
	rc = check_duplicates(&ps, p);
	if (rc < 0)
		goto fail;
	*out = p;
	return 0;

fail:
	if (rc == -ENOMEM && errlen > 0)
		snprintf(err, errlen, "%s: out of memory",
			 fname ? fname : "(policy)");
	mta_tlspolicy_free(p);
	return rc;
}

int mta_tlspolicy_load(const char *path, struct mta_tlspolicy **out,
		       char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	ssize_t got;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		goto fail;
	}
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		goto fail_fd;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = -EINVAL;
		goto fail_fd;
	}
	if ((unsigned long long)st.st_size > MTA_TLSPOLICY_FILE_MAX) {
		snprintf(err, errlen, "%s: larger than %u bytes", path,
			 MTA_TLSPOLICY_FILE_MAX);
		close(fd);
		return MTA_ETOOBIG;
	}
	/* one byte more than fstat said, to notice a growing file */
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		rc = -ENOMEM;
		goto fail_fd;
	}
	while (len <= (size_t)st.st_size) {
		got = read(fd, buf + len, (size_t)st.st_size + 1 - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			rc = -errno;
			goto fail_buf;
		}
		if (got == 0)
			break;
		len += (size_t)got;
	}
	close(fd);
	if (len > (size_t)st.st_size) {
		snprintf(err, errlen, "%s: changed while being read", path);
		free(buf);
		return MTA_ECONFIG;
	}
	rc = parse_table(buf, len, path, out, err, errlen);
	free(buf);
	return rc;

fail_buf:
	free(buf);
fail_fd:
	close(fd);
fail:
	snprintf(err, errlen, "%s: %s", path, mta_strerror(rc));
	return rc;
}

void mta_tlspolicy_free(struct mta_tlspolicy *p)
{
	if (p == NULL)
		return;
	free(p->e);
	free(p->pool);
	free(p);
}

/* ---- lookup ---- */

static const struct entry *find(const struct mta_tlspolicy *p,
				const char *name)
{
	size_t lo = 0, hi = p->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, p->e[mid].name);

		if (c == 0)
			return &p->e[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

int mta_tlspolicy_lookup(const struct mta_tlspolicy *p, const char *domain,
			 const char **matched)
{
	char name[DOMAIN_MAX + 2];
	const struct entry *e;
	size_t n;

	if (p == NULL || p->n == 0 || domain == NULL)
		return MTA_ENOTFOUND;
	n = strlen(domain);
	if (n > 0 && domain[n - 1] == '.')
		n--;
	if (n == 0 || n > DOMAIN_MAX || domain[0] == '.')
		return MTA_ENOTFOUND;
	for (size_t i = 0; i < n; i++) {
		char c = domain[i];
		name[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
	}
	name[n] = '\0';

	/* exact first, then the closest ".parent" */
	e = find(p, name);
	for (size_t i = 1; e == NULL && i < n; i++)
		if (name[i] == '.')
			e = find(p, name + i);
	if (e == NULL)
		return MTA_ENOTFOUND;
	if (matched != NULL)
		*matched = e->name;
	return (int)e->level;
}
