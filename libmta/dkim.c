/* dkim.c - DKIM signing (RFC 6376, RFC 8463).  See dkim.h. */
#include "dkim.h"

#include "err.h"

#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum alg { ALG_RSA, ALG_ED25519 };

static const char *const alg_name[] = {"rsa", "ed25519"};
static const char *const alg_tag[] = {"rsa-sha256", "ed25519-sha256"};

struct key {
	char *domain; /* lower case, no trailing dot */
	char *selector;
	enum alg alg;
	gnutls_privkey_t pk;
};

struct mta_dkim_keys {
	struct key *v;
	size_t n;
};

/* The header fields signed, in h= order (dkim.h DESCRIPTION). */
static const char *const signed_names[] = {
	"from", "to", "cc", "subject", "date", "message-id", "reply-to",
	"mime-version", "content-type", "content-transfer-encoding",
	"in-reply-to", "references", "tls-report-domain",
	"tls-report-submitter", "tls-required",
};
#define NSIGNED (sizeof(signed_names) / sizeof(signed_names[0]))

/* ---- small helpers ----------------------------------------------------- */

static bool is_wsp(unsigned char c)
{
	return c == ' ' || c == '\t';
}

static unsigned char lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static size_t b64_encode(const uint8_t *in, size_t n, char *out, size_t cap)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0, i;

	if (cap < ((n + 2) / 3) * 4 + 1)
		return 0;
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = tab[(v >> 6) & 63];
		out[o++] = tab[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

/* A domain name as DKIM's d= takes it: LDH labels and dots, lower-cased
 * into out, a trailing dot dropped.  False if it is not one. */
static bool norm_domain(const char *p, size_t n, char *out, size_t cap)
{
	size_t i;

	if (n > 0 && p[n - 1] == '.')
		n--;
	if (n == 0 || n > 253 || n >= cap || p[0] == '.')
		return false;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '-' || c == '.' ||
		      c == '_'))
			return false;
		if (c == '.' && p[i - 1] == '.')
			return false;
		out[i] = (char)lower(c);
	}
	out[n] = '\0';
	return true;
}

/* ---- the key table ------------------------------------------------------ */

static void key_clear(struct key *k)
{
	free(k->domain);
	free(k->selector);
	if (k->pk != NULL)
		gnutls_privkey_deinit(k->pk);
}

void mta_dkim_keys_free(struct mta_dkim_keys *k)
{
	size_t i;

	if (k == NULL)
		return;
	for (i = 0; i < k->n; i++)
		key_clear(&k->v[i]);
	free(k->v);
	free(k);
}

size_t mta_dkim_keys_count(const struct mta_dkim_keys *k)
{
	return k != NULL ? k->n : 0;
}

static const struct key *find_key(const struct mta_dkim_keys *k,
				  const char *domain)
{
	char d[256];
	size_t i;

	if (k == NULL || domain == NULL ||
	    !norm_domain(domain, strlen(domain), d, sizeof(d)))
		return NULL;
	for (i = 0; i < k->n; i++)
		if (strcmp(k->v[i].domain, d) == 0)
			return &k->v[i];
	return NULL;
}

const char *mta_dkim_keys_find(const struct mta_dkim_keys *k,
			       const char *domain, const char **selector)
{
	const struct key *key = find_key(k, domain);

	if (key == NULL)
		return NULL;
	if (selector != NULL)
		*selector = key->selector;
	return alg_name[key->alg];
}

/* Imports one PEM private key; the file's bytes are wiped after. */
static int import_key(const char *path, struct key *k, char *why,
		      size_t whylen)
{
	gnutls_datum_t d = {NULL, 0};
	unsigned bits = 0;
	int rc, alg;

	rc = gnutls_load_file(path, &d);
	if (rc < 0) {
		errf(why, whylen, "cannot read key file %s", path);
		return MTA_ECONFIG;
	}
	rc = gnutls_privkey_init(&k->pk);
	if (rc == 0)
		rc = gnutls_privkey_import_x509_raw(k->pk, &d,
						    GNUTLS_X509_FMT_PEM, NULL, 0);
	gnutls_memset(d.data, 0, d.size);
	gnutls_free(d.data);
	if (rc < 0) {
		/* the GnuTLS text names the format problem, never the key */
		errf(why, whylen, "key file %s: %s", path, gnutls_strerror(rc));
		return MTA_ECONFIG;
	}
	alg = gnutls_privkey_get_pk_algorithm(k->pk, &bits);
	if (alg == GNUTLS_PK_RSA) {
		if (bits < 1024) {
			errf(why, whylen,
			     "key file %s: RSA key of %u bits (RFC 8301: at "
			     "least 1024)", path, bits);
			return MTA_ECONFIG;
		}
		k->alg = ALG_RSA;
	} else if (alg == GNUTLS_PK_EDDSA_ED25519) {
		k->alg = ALG_ED25519;
	} else {
		errf(why, whylen, "key file %s: neither RSA nor Ed25519", path);
		return MTA_ECONFIG;
	}
	return 0;
}

static bool valid_selector(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 63 * 4)
		return false;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '-' || c == '.' ||
		      c == '_'))
			return false;
	}
	return s[0] != '.' && s[n - 1] != '.';
}

/* One line "domain selector keyfile [rsa|ed25519]" into k. */
static int parse_line(char *line, const char *dir, struct key *k, char *why,
		      size_t whylen)
{
	char *f[5], *save = NULL, *t, path[4096], dom[256];
	int nf = 0, rc;

	for (t = strtok_r(line, " \t\r\n", &save); t != NULL;
	     t = strtok_r(NULL, " \t\r\n", &save)) {
		if (nf == 5)
			break;
		f[nf++] = t;
	}
	if (nf < 3 || nf > 4) {
		errf(why, whylen, "expected \"domain selector keyfile "
				  "[rsa|ed25519]\"");
		return MTA_ECONFIG;
	}
	if (!norm_domain(f[0], strlen(f[0]), dom, sizeof(dom))) {
		errf(why, whylen, "bad domain \"%s\"", f[0]);
		return MTA_ECONFIG;
	}
	if (!valid_selector(f[1])) {
		errf(why, whylen, "bad selector \"%s\"", f[1]);
		return MTA_ECONFIG;
	}
	if (f[2][0] == '/' || dir[0] == '\0')
		rc = snprintf(path, sizeof(path), "%s", f[2]);
	else
		rc = snprintf(path, sizeof(path), "%s/%s", dir, f[2]);
	if (rc < 0 || (size_t)rc >= sizeof(path)) {
		errf(why, whylen, "key file path too long");
		return MTA_ECONFIG;
	}
	k->domain = strdup(dom);
	k->selector = strdup(f[1]);
	if (k->domain == NULL || k->selector == NULL)
		return -ENOMEM;
	rc = import_key(path, k, why, whylen);
	if (rc != 0)
		return rc;
	if (nf == 4 && strcmp(f[3], alg_name[k->alg]) != 0) {
		errf(why, whylen, "key file %s holds an %s key, not %s", path,
		     alg_name[k->alg], f[3]);
		return MTA_ECONFIG;
	}
	return 0;
}

int mta_dkim_keys_load(const char *path, struct mta_dkim_keys **out,
		       char *err, size_t errlen)
{
	struct mta_dkim_keys *k;
	char line[8192], dir[4096], why[512];
	const char *slash;
	unsigned lineno = 0;
	FILE *f;
	int rc = 0;
	size_t i;

	*out = NULL;
	slash = strrchr(path, '/');
	dir[0] = '\0';
	if (slash == path) {
		strcpy(dir, "/");
	} else if (slash != NULL) {
		size_t dl = (size_t)(slash - path);
		if (dl >= sizeof(dir)) {
			errf(err, errlen, "%s: path too long", path);
			return MTA_ECONFIG;
		}
		memcpy(dir, path, dl);
		dir[dl] = '\0';
	}
	f = fopen(path, "re");
	if (f == NULL) {
		errf(err, errlen, "%s: %s", path, strerror(errno));
		return MTA_ECONFIG;
	}
	k = calloc(1, sizeof(*k));
	if (k == NULL) {
		fclose(f);
		return -ENOMEM;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char *p = line, *hash;
		struct key *nv;

		lineno++;
		if (strchr(line, '\n') == NULL && !feof(f)) {
			errf(err, errlen, "%s:%u: line too long", path, lineno);
			rc = MTA_ECONFIG;
			break;
		}
		hash = strchr(p, '#');
		if (hash != NULL)
			*hash = '\0';
		while (is_wsp((unsigned char)*p) || *p == '\r' || *p == '\n')
			p++;
		if (*p == '\0')
			continue;
		if (k->n >= MTA_DKIM_KEYS_MAX) {
			errf(err, errlen, "%s:%u: more than %d keys", path,
			     lineno, MTA_DKIM_KEYS_MAX);
			rc = MTA_ECONFIG;
			break;
		}
		nv = realloc(k->v, (k->n + 1) * sizeof(*nv));
		if (nv == NULL) {
			rc = -ENOMEM;
			break;
		}
		k->v = nv;
		memset(&k->v[k->n], 0, sizeof(k->v[k->n]));
		why[0] = '\0';
		rc = parse_line(p, dir, &k->v[k->n], why, sizeof(why));
		k->n++; /* freed with the table on failure */
		if (rc != 0) {
			errf(err, errlen, "%s:%u: %s", path, lineno,
			     rc == -ENOMEM ? "out of memory" : why);
			break;
		}
		for (i = 0; i + 1 < k->n; i++)
			if (strcmp(k->v[i].domain, k->v[k->n - 1].domain) == 0)
				break;
		if (i + 1 < k->n) {
			errf(err, errlen, "%s:%u: domain %s listed twice",
			     path, lineno, k->v[k->n - 1].domain);
			rc = MTA_ECONFIG;
			break;
		}
	}
	if (rc == 0 && ferror(f)) {
		errf(err, errlen, "%s: read error", path);
		rc = MTA_ECONFIG;
	}
	fclose(f);
	if (rc != 0) {
		mta_dkim_keys_free(k);
		return rc;
	}
	*out = k;
	return 0;
}

/* ---- hashing sink -------------------------------------------------------- */

struct sink {
	gnutls_hash_hd_t h;
	size_t n;
	uint8_t buf[1024];
};

static void sink_flush(struct sink *k)
{
	if (k->n > 0)
		(void)gnutls_hash(k->h, k->buf, k->n);
	k->n = 0;
}

static void sink_put(struct sink *k, uint8_t c)
{
	if (k->n == sizeof(k->buf))
		sink_flush(k);
	k->buf[k->n++] = c;
}

static void sink_puts(struct sink *k, const char *s, size_t n)
{
	while (n-- > 0)
		sink_put(k, (uint8_t)*s++);
}

/* RFC 6376 3.4.2: the relaxed form of one header field (without its
 * final CRLF): name lower-cased and stripped, unfolded, runs of WSP made
 * one SP, WSP around the value removed; crlf adds the CRLF. */
static void canon_header(struct sink *k, const char *f, size_t n, bool crlf)
{
	size_t i = 0, nameend;
	bool wsp = false, started = false;

	while (i < n && f[i] != ':')
		i++;
	nameend = i;
	while (nameend > 0 && (is_wsp((unsigned char)f[nameend - 1]) ||
			       f[nameend - 1] == '\r' || f[nameend - 1] == '\n'))
		nameend--;
	for (size_t j = 0; j < nameend; j++)
		sink_put(k, lower((unsigned char)f[j]));
	sink_put(k, ':');
	for (i++; i < n; i++) {
		unsigned char c = (unsigned char)f[i];
		if (c == '\r' || c == '\n')
			continue;
		if (is_wsp(c)) {
			wsp = true;
			continue;
		}
		if (wsp && started)
			sink_put(k, ' ');
		wsp = false;
		started = true;
		sink_put(k, c);
	}
	if (crlf)
		sink_puts(k, "\r\n", 2);
}

/* ---- signing context ----------------------------------------------------- */

enum state { S_HDR, S_BODY, S_SKIP };

struct field {
	size_t off, len; /* without the final CRLF */
	size_t namelen;	 /* name without trailing WSP */
};

struct mta_dkim_sign {
	const struct mta_dkim_keys *keys;
	const struct key *key;
	char domain[256];
	bool domain_given;
	int64_t now;
	int err; /* sticky */
	enum state st;
	char *hdr;
	size_t hlen, hcap;
	struct field *fields;
	size_t nfields;
	/* relaxed body canonicaliser (RFC 6376 3.4.4) */
	struct sink body;
	bool body_open;
	bool cr;	/* a CR waits for its LF */
	bool wsp;	/* WSP seen in this line, not yet written */
	bool content;	/* this line has content */
	uint64_t nempty; /* empty lines held back */
	bool finished;
	uint8_t bh[32];
};

int mta_dkim_sign_new(const struct mta_dkim_keys *keys, const char *domain,
		      int64_t now, struct mta_dkim_sign **out)
{
	struct mta_dkim_sign *s;

	*out = NULL;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	s->keys = keys;
	s->now = now;
	if (domain != NULL) {
		if (!norm_domain(domain, strlen(domain), s->domain,
				 sizeof(s->domain)))
			s->err = MTA_ENOTFOUND;
		s->domain_given = true;
	}
	if (gnutls_hash_init(&s->body.h, GNUTLS_DIG_SHA256) < 0) {
		free(s);
		return -ENOMEM;
	}
	s->body_open = true;
	*out = s;
	return 0;
}

void mta_dkim_sign_free(struct mta_dkim_sign *s)
{
	if (s == NULL)
		return;
	if (s->body_open)
		gnutls_hash_deinit(s->body.h, NULL);
	free(s->hdr);
	free(s->fields);
	free(s);
}

const char *mta_dkim_sign_domain(const struct mta_dkim_sign *s)
{
	return s->domain;
}

static bool name_is(const struct mta_dkim_sign *s, const struct field *f,
		    const char *name)
{
	size_t n = strlen(name);

	if (f->namelen != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)s->hdr[f->off + i]) != (unsigned char)name[i])
			return false;
	return true;
}

/* Splits the header block into fields (a line starting with WSP continues
 * the field before it). */
static int split_fields(struct mta_dkim_sign *s)
{
	size_t p = 0, cap = 0;

	while (p < s->hlen) {
		size_t start = p, end, i;
		struct field *f;

		for (;;) {
			const char *nl = memchr(s->hdr + p, '\n', s->hlen - p);
			p = nl == NULL ? s->hlen : (size_t)(nl - s->hdr) + 1;
			if (p >= s->hlen || !is_wsp((unsigned char)s->hdr[p]))
				break;
		}
		end = p;
		if (end > start && s->hdr[end - 1] == '\n')
			end--;
		if (end > start && s->hdr[end - 1] == '\r')
			end--;
		if (s->nfields == cap) {
			size_t nc = cap ? cap * 2 : 32;
			struct field *nf = realloc(s->fields, nc * sizeof(*nf));
			if (nf == NULL)
				return -ENOMEM;
			s->fields = nf;
			cap = nc;
		}
		f = &s->fields[s->nfields];
		f->off = start;
		f->len = end - start;
		for (i = start; i < end && s->hdr[i] != ':'; i++)
			;
		if (i == end) {
			f->namelen = 0; /* not a field: never selected */
		} else {
			while (i > start && is_wsp((unsigned char)s->hdr[i - 1]))
				i--;
			f->namelen = i - start;
		}
		s->nfields++;
	}
	return 0;
}

/* The domain of the first address of the first From field, into
 * s->domain; false if there is none. */
static bool from_domain(struct mta_dkim_sign *s)
{
	const struct field *f = NULL;
	char addr[1024];
	size_t i, n = 0, at, end;
	int depth = 0;
	bool quoted = false, angle = false;

	for (i = 0; i < s->nfields; i++)
		if (name_is(s, &s->fields[i], "from")) {
			f = &s->fields[i];
			break;
		}
	if (f == NULL)
		return false;
	/* value without comments and quoted strings; the first angle-addr
	 * if there is one, else up to the first ',' */
	for (i = f->namelen; i < f->len && s->hdr[f->off + i] != ':'; i++)
		;
	for (i++; i < f->len && n + 1 < sizeof(addr); i++) {
		char c = s->hdr[f->off + i];
		if (quoted) {
			if (c == '\\')
				i++;
			else if (c == '"')
				quoted = false;
			continue;
		}
		if (depth > 0) {
			if (c == '\\')
				i++;
			else if (c == '(')
				depth++;
			else if (c == ')')
				depth--;
			continue;
		}
		if (c == '"') {
			quoted = true;
		} else if (c == '(') {
			depth = 1;
		} else if (c == '<') {
			angle = true;
			n = 0;
		} else if (c == '>' && angle) {
			break;
		} else if (c == ',' && !angle) {
			break;
		} else if (c == ':' && !angle) {
			n = 0; /* a group's display name */
		} else if (!is_wsp((unsigned char)c) && c != '\r' && c != '\n') {
			addr[n++] = c;
		}
	}
	addr[n] = '\0';
	at = n;
	for (i = 0; i < n; i++)
		if (addr[i] == '@')
			at = i;
	if (at == n)
		return false;
	end = n;
	while (end > at + 1 && (addr[end - 1] == ';' || addr[end - 1] == '>'))
		end--;
	return norm_domain(addr + at + 1, end - at - 1, s->domain,
			   sizeof(s->domain));
}

static int headers_done(struct mta_dkim_sign *s)
{
	bool has_from = false;
	size_t i;
	int rc;

	rc = split_fields(s);
	if (rc != 0)
		return rc;
	for (i = 0; i < s->nfields; i++)
		if (name_is(s, &s->fields[i], "from"))
			has_from = true;
	if (!has_from)
		return MTA_EPROTO;
	if (!s->domain_given && !from_domain(s))
		return MTA_ENOTFOUND;
	s->key = find_key(s->keys, s->domain);
	if (s->key == NULL)
		return MTA_ENOTFOUND;
	s->st = S_BODY;
	return 0;
}

static int hdr_put(struct mta_dkim_sign *s, char c)
{
	if (s->hlen == s->hcap) {
		size_t nc = s->hcap ? s->hcap * 2 : 4096;
		char *nh;
		if (s->hcap >= MTA_DKIM_HEADER_MAX)
			return MTA_ETOOBIG;
		if (nc > MTA_DKIM_HEADER_MAX)
			nc = MTA_DKIM_HEADER_MAX;
		nh = realloc(s->hdr, nc);
		if (nh == NULL)
			return -ENOMEM;
		s->hdr = nh;
		s->hcap = nc;
	}
	s->hdr[s->hlen++] = c;
	return 0;
}

/* A non-WSP octet of a line: the empty lines held back and a pending SP
 * go first. */
static void body_content(struct mta_dkim_sign *s, uint8_t c)
{
	for (; s->nempty > 0; s->nempty--)
		sink_puts(&s->body, "\r\n", 2);
	if (s->wsp)
		sink_put(&s->body, ' ');
	s->wsp = false;
	s->content = true;
	sink_put(&s->body, c);
}

/* One body octet through the relaxed canonicaliser. */
static void body_octet(struct mta_dkim_sign *s, uint8_t c)
{
	if (s->cr) {
		s->cr = false;
		if (c == '\n') {
			if (s->content)
				sink_puts(&s->body, "\r\n", 2);
			else
				s->nempty++;
			s->content = false;
			s->wsp = false;
			return;
		}
		body_content(s, '\r'); /* a bare CR is content */
	}
	if (c == '\r')
		s->cr = true;
	else if (is_wsp(c))
		s->wsp = true;
	else
		body_content(s, c);
}

int mta_dkim_sign_feed(struct mta_dkim_sign *s, const void *p, size_t n)
{
	const uint8_t *b = p;
	size_t i = 0;
	int rc;

	if (s->err != 0)
		return s->err == MTA_ENOTFOUND ? 0 : s->err;
	if (s->finished)
		return 0;
	while (i < n && s->st == S_HDR) {
		rc = hdr_put(s, (char)b[i++]);
		if (rc != 0)
			return s->err = rc;
		if ((s->hlen == 2 && memcmp(s->hdr, "\r\n", 2) == 0) ||
		    (s->hlen >= 4 &&
		     memcmp(s->hdr + s->hlen - 4, "\r\n\r\n", 4) == 0)) {
			s->hlen -= 2; /* the empty line */
			rc = headers_done(s);
			if (rc != 0) {
				s->err = rc;
				return rc == MTA_ENOTFOUND ? 0 : rc;
			}
		}
	}
	if (s->st == S_BODY)
		for (; i < n; i++)
			body_octet(s, b[i]);
	return 0;
}

static int finish_body(struct mta_dkim_sign *s)
{
	int rc;

	if (s->finished)
		return 0;
	if (s->st == S_HDR) {
		/* no empty line: all header, no body */
		if (s->hlen > 0 && s->hdr[s->hlen - 1] != '\n') {
			if ((rc = hdr_put(s, '\r')) != 0 ||
			    (rc = hdr_put(s, '\n')) != 0)
				return rc;
		}
		rc = headers_done(s);
		if (rc != 0)
			return rc;
	}
	if (s->cr) {
		s->cr = false;
		body_content(s, '\r');
	}
	if (s->content) /* a last line without CRLF gets one */
		sink_puts(&s->body, "\r\n", 2);
	s->content = false;
	sink_flush(&s->body);
	gnutls_hash_deinit(s->body.h, s->bh);
	s->body_open = false;
	s->finished = true;
	return 0;
}

/* The body hash in base64 (45 bytes with the NUL), after the whole
 * message was fed.  Static: tests/unit/test_dkim.c includes this file for
 * the RFC 8463 Appendix A vector. */
static int sign_body_hash(struct mta_dkim_sign *s, char bh[45])
{
	int rc;

	if (s->err != 0)
		return s->err;
	rc = finish_body(s);
	if (rc != 0)
		return s->err = rc;
	b64_encode(s->bh, sizeof(s->bh), bh, 45);
	return 0;
}

/* The header hash (RFC 6376 3.7) over the fields named in hlist and
 * tmpl, signed; b gets the base64. */
static int sign_header(struct mta_dkim_sign *s, const char *hlist,
		       const char *tmpl, char *b, size_t blen)
{
	struct sink k;
	uint8_t digest[32];
	gnutls_datum_t dd = {digest, sizeof(digest)}, sig = {NULL, 0};
	const char *p = hlist;
	int rc;

	if (gnutls_hash_init(&k.h, GNUTLS_DIG_SHA256) < 0)
		return -ENOMEM;
	k.n = 0;
	while (*p != '\0') {
		char name[128];
		size_t n = 0, seen = 0, i;
		const char *q;

		while (*p == ':' || is_wsp((unsigned char)*p) || *p == '\r' ||
		       *p == '\n')
			p++;
		if (*p == '\0')
			break;
		for (q = p; *q != '\0' && *q != ':'; q++)
			if (!is_wsp((unsigned char)*q) && *q != '\r' &&
			    *q != '\n' && n + 1 < sizeof(name))
				name[n++] = (char)lower((unsigned char)*q);
		name[n] = '\0';
		/* the how-manieth time this name is listed picks the
		 * instance that far from the bottom */
		for (const char *r = hlist; r < p;) {
			char other[128];
			size_t m = 0;
			while (r < p && (*r == ':' || is_wsp((unsigned char)*r) ||
					 *r == '\r' || *r == '\n'))
				r++;
			for (; r < p && *r != ':'; r++)
				if (!is_wsp((unsigned char)*r) && *r != '\r' &&
				    *r != '\n' && m + 1 < sizeof(other))
					other[m++] = (char)lower((unsigned char)*r);
			other[m] = '\0';
			if (m > 0 && strcmp(other, name) == 0)
				seen++;
		}
		for (i = s->nfields; i-- > 0;) {
			if (!name_is(s, &s->fields[i], name))
				continue;
			if (seen-- == 0) {
				canon_header(&k, s->hdr + s->fields[i].off,
					     s->fields[i].len, true);
				break;
			}
		}
		p = q;
	}
	canon_header(&k, tmpl, strlen(tmpl), false);
	sink_flush(&k);
	gnutls_hash_deinit(k.h, digest);
	if (s->key->alg == ALG_RSA)
		rc = gnutls_privkey_sign_hash2(s->key->pk, GNUTLS_SIGN_RSA_SHA256,
					       0, &dd, &sig);
	else /* RFC 8463 3: Ed25519 over the SHA-256 of the header data */
		rc = gnutls_privkey_sign_data2(s->key->pk,
					       GNUTLS_SIGN_EDDSA_ED25519, 0,
					       &dd, &sig);
	if (rc < 0)
		return MTA_ETLS;
	rc = b64_encode(sig.data, sig.size, b, blen) == 0 ? MTA_ETOOBIG : 0;
	gnutls_free(sig.data);
	return rc;
}

/* A growable string for the header being assembled. */
struct out {
	char *p;
	size_t n, cap;
	size_t col;
	int err;
};

static void out_put(struct out *o, const char *s, size_t n)
{
	if (o->err != 0)
		return;
	if (o->n + n + 1 > o->cap) {
		size_t nc = (o->n + n + 1) * 2;
		char *np = realloc(o->p, nc);
		if (np == NULL) {
			o->err = -ENOMEM;
			return;
		}
		o->p = np;
		o->cap = nc;
	}
	memcpy(o->p + o->n, s, n);
	o->n += n;
	o->p[o->n] = '\0';
	for (size_t i = 0; i < n; i++)
		o->col = s[i] == '\n' ? 0 : o->col + 1;
}

/* A tag " t" (with its leading space), folded when the line would pass
 * 78 columns. */
static void out_tag(struct out *o, const char *t)
{
	size_t n = strlen(t);

	if (o->col + n > 78 && o->col > 1) {
		out_put(o, "\r\n\t", 3);
		out_put(o, t + 1, n - 1);
	} else {
		out_put(o, t, n);
	}
}

int mta_dkim_sign_finish(struct mta_dkim_sign *s, char **hdr, size_t *len)
{
	struct out o = {NULL, 0, 0, 0, 0};
	char bh[45], tag[600], b[1400];
	size_t i, j, cnt;
	char hlist[1024];
	size_t hl = 0;
	int rc;

	*hdr = NULL;
	*len = 0;
	rc = sign_body_hash(s, bh);
	if (rc != 0)
		return rc;
	/* h=: every instance present, From once more */
	for (i = 0; i < NSIGNED; i++) {
		cnt = 0;
		for (j = 0; j < s->nfields; j++)
			if (name_is(s, &s->fields[j], signed_names[i]))
				cnt++;
		if (strcmp(signed_names[i], "from") == 0)
			cnt++;
		while (cnt-- > 0) {
			size_t n = strlen(signed_names[i]);
			if (hl + n + 2 > sizeof(hlist))
				break; /* 1 KiB of names: the rest unsigned */
			if (hl > 0)
				hlist[hl++] = ':';
			memcpy(hlist + hl, signed_names[i], n);
			hl += n;
		}
	}
	hlist[hl] = '\0';
	out_put(&o, "DKIM-Signature: v=1;", 20);
	snprintf(tag, sizeof(tag), " a=%s;", alg_tag[s->key->alg]);
	out_tag(&o, tag);
	out_tag(&o, " c=relaxed/relaxed;");
	snprintf(tag, sizeof(tag), " d=%s;", s->key->domain);
	out_tag(&o, tag);
	snprintf(tag, sizeof(tag), " s=%s;", s->key->selector);
	out_tag(&o, tag);
	if (s->now >= 0) {
		snprintf(tag, sizeof(tag), " t=%lld;", (long long)s->now);
		out_tag(&o, tag);
	}
	/* h= folded at a colon when long */
	out_tag(&o, " h=");
	for (i = 0; i < hl;) {
		for (j = i; j < hl && hlist[j] != ':'; j++)
			;
		if (o.col + (j - i) + 2 > 78) {
			out_put(&o, "\r\n\t", 3);
		}
		out_put(&o, hlist + i, j - i);
		out_put(&o, j < hl ? ":" : ";", 1);
		i = j + 1;
	}
	snprintf(tag, sizeof(tag), " bh=%s;", bh);
	out_tag(&o, tag);
	out_tag(&o, " b=");
	if (o.err != 0) {
		free(o.p);
		return s->err = o.err;
	}
	rc = sign_header(s, hlist, o.p, b, sizeof(b));
	if (rc != 0) {
		free(o.p);
		return s->err = rc;
	}
	for (i = 0; b[i] != '\0';) {
		size_t n = strlen(b + i), room = o.col < 78 ? 78 - o.col : 0;
		if (room == 0) {
			out_put(&o, "\r\n\t", 3);
			continue;
		}
		if (n > room)
			n = room;
		out_put(&o, b + i, n);
		i += n;
	}
	out_put(&o, "\r\n", 2);
	if (o.err != 0) {
		free(o.p);
		return s->err = o.err;
	}
	*hdr = o.p;
	*len = o.n;
	return 0;
}

int mta_dkim_sign_buffer(const struct mta_dkim_keys *keys,
			 const char *domain, const void *msg, size_t len,
			 int64_t now, char **hdr, size_t *hdrlen)
{
	struct mta_dkim_sign *s;
	int rc;

	*hdr = NULL;
	*hdrlen = 0;
	rc = mta_dkim_sign_new(keys, domain, now, &s);
	if (rc != 0)
		return rc;
	rc = mta_dkim_sign_feed(s, msg, len);
	if (rc == 0)
		rc = mta_dkim_sign_finish(s, hdr, hdrlen);
	mta_dkim_sign_free(s);
	return rc;
}
