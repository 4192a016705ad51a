#include "sts.h"

#include "err.h"

#include <errno.h>
#include <string.h>

/* ---- character classes (ASCII only, locale-free) ---- */

static bool is_wsp(unsigned char c)
{
	return c == ' ' || c == '\t';
}

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alnum(unsigned char c)
{
	return is_alpha(c) || is_digit(c);
}

/* sts-ext-name / sts-policy-ext-name after the first character */
static bool is_name_char(unsigned char c)
{
	return is_alnum(c) || c == '_' || c == '-' || c == '.';
}

static unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

static bool eq_nocase(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return false;
	return true;
}

static bool eq_lit(const char *s, size_t n, const char *lit)
{
	return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static size_t skip_wsp(const char *s, size_t i, size_t n)
{
	while (i < n && is_wsp((unsigned char)s[i]))
		i++;
	return i;
}

/* (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / "."): returns the length
 * of the name at s (0 when there is none or it is too long). */
static size_t scan_name(const char *s, size_t n)
{
	size_t i = 0;

	if (n == 0 || !is_alnum((unsigned char)s[0]))
		return 0;
	while (i < n && is_name_char((unsigned char)s[i]))
		i++;
	return i <= 32 ? i : 0;
}

static bool valid_id(const char *s, size_t n)
{
	if (n == 0 || n > MTA_STS_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_alnum((unsigned char)s[i]))
			return false;
	return true;
}

/* RFC 5321 Domain: sub-domain *("." sub-domain), sub-domain = Let-dig
 * [Ldh-str]; labels <= 63 octets, the name <= 253 (DNS).  lower_only
 * refuses upper-case letters (stored names). */
static bool valid_domain(const char *s, size_t n, bool lower_only)
{
	size_t lab = 0;

	if (n == 0 || n > MTA_STS_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.') {
			if (lab == 0 || s[i - 1] == '-')
				return false;
			lab = 0;
			continue;
		}
		if (lower_only && c >= 'A' && c <= 'Z')
			return false;
		if (is_alnum(c))
			lab++;
		else if (c == '-' && lab > 0)
			lab++;
		else
			return false;
		if (lab > 63)
			return false;
	}
	return lab > 0 && s[n - 1] != '-';
}

/* ---- TXT record (RFC 8461 3.1) ---- */

static const char sts_v1[] = "v=STSv1";
#define STS_V1_LEN (sizeof(sts_v1) - 1)

/* Whether a TXT record counts as an STSv1 record at all: it begins with
 * "v=STSv1" followed by WSP, ";" or the end.  Others ("v=spf1 ...",
 * "V=stsv1", "v=STSv10") are discarded before counting (RFC 8461 3.1). */
static bool txt_is_sts(const char *txt, size_t len)
{
	if (len < STS_V1_LEN || memcmp(txt, sts_v1, STS_V1_LEN) != 0)
		return false;
	return len == STS_V1_LEN || txt[STS_V1_LEN] == ';' ||
	       is_wsp((unsigned char)txt[STS_V1_LEN]);
}

/* sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E) */
static bool valid_ext_value(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x21 || c > 0x7e || c == ';' || c == '=')
			return false;
	}
	return true;
}

/* Parses one _mta-sts TXT record (its strings already concatenated
 * without separators, RFC 8461 3.1) against the ABNF of 3.1: "v=STSv1"
 * first, then fields separated by ";" with optional WSP around each ";",
 * an optional final ";".  The id field (%s"id=" 1*32(ALPHA / DIGIT)) is
 * required; other fields must match sts-extension and are ignored.  When
 * id appears more than once the first one counts (the ABNF allows
 * repeats; each must still be valid).  Fills out->id on success.  Static:
 * tests/unit/test_sts.c and tests/fuzz/fuzz_sts.c include this file. */
static int parse_txt(const char *txt, size_t len, struct mta_sts_txt *out,
		     const char **why)
{
	const char *id = NULL;
	size_t id_len = 0, i;
	const char *err = NULL;

	if (!txt_is_sts(txt, len)) {
		err = "record does not begin with v=STSv1";
		goto fail;
	}
	i = STS_V1_LEN;
	for (;;) {
		size_t name_len, vstart, vlen;

		/* WSP before ";" accepted (STS-11), and at the very end */
		i = skip_wsp(txt, i, len);
		if (i == len)
			break;
		if (txt[i] != ';') {
			err = "expected ';' between fields";
			goto fail;
		}
		i = skip_wsp(txt, i + 1, len);
		if (i == len)
			break; /* optional final ";" */
		name_len = scan_name(txt + i, len - i);
		if (name_len == 0 || i + name_len >= len ||
		    txt[i + name_len] != '=') {
			err = "malformed field";
			goto fail;
		}
		vstart = i + name_len + 1;
		vlen = 0;
		while (vstart + vlen < len && txt[vstart + vlen] != ';' &&
		       !is_wsp((unsigned char)txt[vstart + vlen]))
			vlen++;
		if (eq_lit(txt + i, name_len, "id")) {
			if (!valid_id(txt + vstart, vlen)) {
				err = "id is not 1*32 ALPHA/DIGIT";
				goto fail;
			}
			if (id == NULL) { /* first one counts */
				id = txt + vstart;
				id_len = vlen;
			}
		} else if (!valid_ext_value(txt + vstart, vlen)) {
			err = "malformed extension value";
			goto fail;
		}
		i = vstart + vlen;
	}
	if (id == NULL) {
		err = "missing id";
		goto fail;
	}
	memcpy(out->id, id, id_len);
	out->id[id_len] = '\0';
	return 0;

fail:
	if (why != NULL)
		*why = err;
	return MTA_EPROTO;
}

enum mta_sts_txt_verdict mta_sts_pick_txt(const char *const texts[],
					  const size_t lens[], size_t n,
					  struct mta_sts_txt *out,
					  const char **why)
{
	size_t found = 0, which = 0;

	for (size_t i = 0; i < n; i++) {
		if (txt_is_sts(texts[i], lens[i])) {
			found++;
			which = i;
		}
	}
	if (found == 0)
		return MTA_STS_TXT_NONE;
	if (found > 1) {
		if (why != NULL)
			*why = "multiple v=STSv1 records";
		return MTA_STS_TXT_MULTIPLE;
	}
	if (parse_txt(texts[which], lens[which], out, why) != 0)
		return MTA_STS_TXT_INVALID;
	return MTA_STS_TXT_OK;
}

/* ---- policy (RFC 8461 3.2) ---- */

/* Length of the well-formed UTF-8 sequence (RFC 3629 UTF8-2/3/4) at s, or
 * 0 when it is malformed, overlong, a surrogate or above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t need;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c >= 0xc2 && c <= 0xdf) {
		need = 1;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 2;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 3;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if (n < need + 1 || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i <= need; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return need + 1;
}

/* sts-policy-ext-value = vchar *(*WSP vchar), vchar = VCHAR / UTF-8;
 * the caller has trimmed WSP at both ends. */
static bool valid_policy_value(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;

	if (n == 0)
		return false;
	while (i < n) {
		if (u[i] >= 0x21 && u[i] <= 0x7e) {
			i++;
		} else if (is_wsp(u[i])) {
			i++;
		} else if (u[i] >= 0x80) {
			size_t k = utf8_seq(u + i, n - i);

			if (k == 0)
				return false;
			i += k;
		} else {
			return false; /* CTL, CR, NUL, DEL */
		}
	}
	return true;
}

static bool valid_pattern(const char *s, size_t n)
{
	if (n > MTA_STS_PATTERN_MAX)
		return false;
	if (n >= 2 && s[0] == '*' && s[1] == '.')
		return valid_domain(s + 2, n - 2, false);
	return valid_domain(s, n, false);
}

struct pstate {
	struct mta_sts_policy *p;
	bool have_version, have_mode, have_max_age;
	const char *err;
	int rc;
};

static int pfail(struct pstate *st, int rc, const char *why)
{
	st->err = why;
	st->rc = rc;
	return rc;
}

static int parse_line(struct pstate *st, const char *s, size_t n)
{
	size_t klen, v, e;
	const char *val;
	size_t vlen;

	if (n == 0)
		return pfail(st, MTA_EPROTO, "empty line");
	if (is_wsp((unsigned char)s[0]))
		return pfail(st, MTA_EPROTO, "leading whitespace");
	klen = scan_name(s, n);
	if (klen == 0 || klen >= n || s[klen] != ':')
		return pfail(st, MTA_EPROTO, "malformed key");
	v = skip_wsp(s, klen + 1, n);
	e = n;
	while (e > v && is_wsp((unsigned char)s[e - 1]))
		e--;
	val = s + v;
	vlen = e - v;
	if (!valid_policy_value(val, vlen))
		return pfail(st, MTA_EPROTO, "malformed value");

	if (eq_lit(s, klen, "version")) {
		if (st->have_version)
			return 0; /* the first occurrence wins (STS-25) */
		if (!eq_lit(val, vlen, "STSv1"))
			return pfail(st, MTA_EPROTO, "version is not STSv1");
		st->have_version = true;
	} else if (eq_lit(s, klen, "mode")) {
		if (st->have_mode)
			return 0;
		if (eq_lit(val, vlen, "enforce"))
			st->p->mode = MTA_STS_MODE_ENFORCE;
		else if (eq_lit(val, vlen, "testing"))
			st->p->mode = MTA_STS_MODE_TESTING;
		else if (eq_lit(val, vlen, "none"))
			st->p->mode = MTA_STS_MODE_NONE;
		else
			return pfail(st, MTA_EPROTO, "unknown mode");
		st->have_mode = true;
	} else if (eq_lit(s, klen, "max_age")) {
		uint64_t age = 0;

		if (st->have_max_age)
			return 0;
		if (vlen > 10)
			return pfail(st, MTA_EPROTO, "max_age over 10 digits");
		for (size_t i = 0; i < vlen; i++) {
			if (!is_digit((unsigned char)val[i]))
				return pfail(st, MTA_EPROTO,
					     "max_age is not digits");
			age = age * 10 + (uint64_t)(val[i] - '0');
		}
		st->p->max_age_raw = age;
		st->p->max_age_capped = age > MTA_STS_MAX_AGE_CAP;
		st->p->max_age = st->p->max_age_capped ? MTA_STS_MAX_AGE_CAP
						       : (uint32_t)age;
		st->have_max_age = true;
	} else if (eq_lit(s, klen, "mx")) {
		char *dst;

		if (!valid_pattern(val, vlen))
			return pfail(st, MTA_EPROTO, "malformed mx pattern");
		if (st->p->nmx == MTA_STS_MX_MAX)
			return pfail(st, MTA_ETOOBIG, "too many mx patterns");
		dst = st->p->mx[st->p->nmx++];
		for (size_t i = 0; i < vlen; i++)
			dst[i] = (char)lower((unsigned char)val[i]);
		dst[vlen] = '\0';
	}
	/* anything else: an extension, ignored (STS-24, STS-35) */
	return 0;
}

int mta_sts_parse_policy(const char *body, size_t len,
			 struct mta_sts_policy *out, const char **why)
{
	struct mta_sts_policy p;
	struct pstate st = {.p = &p};
	size_t pos = 0;

	memset(&p, 0, sizeof(p));
	if (len > MTA_STS_POLICY_MAX) {
		pfail(&st, MTA_ETOOBIG, "policy larger than 64 KiB");
		goto fail;
	}
	while (pos < len) {
		size_t k = pos, next;

		while (k < len && body[k] != '\n' && body[k] != '\r')
			k++;
		if (k == len) {
			next = len; /* the last terminator is optional */
		} else if (body[k] == '\n') {
			next = k + 1;
		} else if (k + 1 < len && body[k + 1] == '\n') {
			next = k + 2;
		} else {
			pfail(&st, MTA_EPROTO, "CR not followed by LF");
			goto fail;
		}
		if (parse_line(&st, body + pos, k - pos) != 0)
			goto fail;
		pos = next;
	}
	if (!st.have_version) {
		pfail(&st, MTA_EPROTO, "missing version");
		goto fail;
	}
	if (!st.have_mode) {
		pfail(&st, MTA_EPROTO, "missing mode");
		goto fail;
	}
	if (!st.have_max_age) {
		pfail(&st, MTA_EPROTO, "missing max_age");
		goto fail;
	}
	if (p.mode != MTA_STS_MODE_NONE && p.nmx == 0) {
		pfail(&st, MTA_EPROTO, "no mx pattern");
		goto fail;
	}
	memcpy(out, &p, sizeof(p));
	return 0;

fail:
	if (why != NULL)
		*why = st.err;
	return st.rc;
}

bool mta_sts_policy_cacheable(const struct mta_sts_policy *p)
{
	return p->max_age > 0;
}

/* ---- MX matching (RFC 8461 4.1) ---- */

bool mta_sts_mx_match(const struct mta_sts_policy *p, const char *mx_host)
{
	size_t n = strlen(mx_host), first = 0;

	if (n > 0 && mx_host[n - 1] == '.')
		n--;
	if (n == 0 || n > MTA_STS_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)mx_host[i];

		if (!(is_alnum(c) || c == '-' || c == '_' || c == '.'))
			return false;
		if (c == '.' && (i == 0 || mx_host[i - 1] == '.'))
			return false; /* empty label */
		if (c == '.' && first == 0)
			first = i;
	}
	for (size_t k = 0; k < p->nmx; k++) {
		const char *pat = p->mx[k];
		size_t m = strlen(pat);

		if (m >= 2 && pat[0] == '*' && pat[1] == '.') {
			/* exactly one label in place of the "*" */
			if (first > 0 && n - first - 1 == m - 2 &&
			    eq_nocase(mx_host + first + 1, pat + 2, m - 2))
				return true;
		} else if (m == n && eq_nocase(mx_host, pat, n)) {
			return true;
		}
	}
	return false;
}

bool mta_sts_content_type_ok(const char *ct)
{
	static const char want[] = "text/plain";
	size_t i = 0, n;

	if (ct == NULL)
		return false;
	n = strlen(ct);
	i = skip_wsp(ct, 0, n);
	if (n - i < sizeof(want) - 1 || !eq_nocase(ct + i, want, sizeof(want) - 1))
		return false;
	i = skip_wsp(ct, i + sizeof(want) - 1, n);
	return i == n || ct[i] == ';';
}

/* ---- cache record ---- */

#define CACHE_MAGIC "MTSC"
#define CACHE_VERSION 1
#define CACHE_HDR 10 /* magic, version, length */

struct wctx {
	struct mta_buf *b;
	int err;
};

static void w_bytes(struct wctx *w, const void *p, size_t n)
{
	if (w->err == 0 && n > 0)
		w->err = mta_buf_append(w->b, p, n);
}

static void w_be(struct wctx *w, uint64_t v, size_t octets)
{
	uint8_t b[8];

	for (size_t i = 0; i < octets; i++)
		b[i] = (uint8_t)(v >> (8 * (octets - 1 - i)));
	w_bytes(w, b, octets);
}

struct rctx {
	const uint8_t *p;
	size_t left;
	int err;
};

static const uint8_t *r_take(struct rctx *r, size_t n)
{
	const uint8_t *p;

	if (r->err != 0 || n > r->left) {
		r->err = MTA_ECORRUPT;
		return NULL;
	}
	p = r->p;
	r->p += n;
	r->left -= n;
	return p;
}

static uint64_t r_be(struct rctx *r, size_t octets)
{
	const uint8_t *p = r_take(r, octets);
	uint64_t v = 0;

	if (p == NULL)
		return 0;
	for (size_t i = 0; i < octets; i++)
		v = (v << 8) | p[i];
	return v;
}

static bool rec_times_ok(int64_t fetched, int64_t expires)
{
	return expires >= fetched &&
	       (uint64_t)expires - (uint64_t)fetched <= MTA_STS_MAX_AGE_CAP;
}

int mta_sts_cache_encode(const struct mta_sts_cache_rec *rec,
			 struct mta_buf *out)
{
	struct mta_sts_policy pol;
	struct wctx w = {.b = out, .err = 0};
	size_t old_len = out->len, dlen, ilen, total;

	dlen = strnlen(rec->domain, sizeof(rec->domain));
	ilen = strnlen(rec->id, sizeof(rec->id));
	if (rec->text_len > MTA_STS_POLICY_MAX)
		return MTA_ETOOBIG;
	if (!valid_domain(rec->domain, dlen, true) ||
	    !valid_id(rec->id, ilen) ||
	    !rec_times_ok(rec->fetched_at, rec->expires_at) ||
	    (rec->text == NULL && rec->text_len > 0) ||
	    mta_sts_parse_policy(rec->text, rec->text_len, &pol, NULL) != 0)
		return -EINVAL;
	total = CACHE_HDR + 16 + 1 + dlen + 1 + ilen + 4 + rec->text_len;

	w_bytes(&w, CACHE_MAGIC, 4);
	w_be(&w, CACHE_VERSION, 2);
	w_be(&w, total, 4);
	w_be(&w, (uint64_t)rec->fetched_at, 8);
	w_be(&w, (uint64_t)rec->expires_at, 8);
	w_be(&w, dlen, 1);
	w_bytes(&w, rec->domain, dlen);
	w_be(&w, ilen, 1);
	w_bytes(&w, rec->id, ilen);
	w_be(&w, rec->text_len, 4);
	w_bytes(&w, rec->text, rec->text_len);
	if (w.err != 0) {
		out->len = old_len; /* out as before */
		return w.err;
	}
	return 0;
}

int mta_sts_cache_decode(const uint8_t *p, size_t n,
			 struct mta_sts_cache_rec *out)
{
	struct mta_sts_cache_rec rec;
	struct rctx r = {.p = p, .left = n, .err = 0};
	const uint8_t *dom, *id, *text;
	size_t dlen, ilen, tlen;

	if (n < CACHE_HDR || memcmp(p, CACHE_MAGIC, 4) != 0)
		return MTA_ECORRUPT;
	r_take(&r, 4);
	if (r_be(&r, 2) != CACHE_VERSION)
		return MTA_ESCHEMA;
	if (r_be(&r, 4) != n)
		return MTA_ECORRUPT;

	memset(&rec, 0, sizeof(rec));
	rec.fetched_at = (int64_t)r_be(&r, 8);
	rec.expires_at = (int64_t)r_be(&r, 8);
	dlen = (size_t)r_be(&r, 1);
	dom = r_take(&r, dlen);
	ilen = (size_t)r_be(&r, 1);
	id = r_take(&r, ilen);
	tlen = (size_t)r_be(&r, 4);
	text = r_take(&r, tlen);
	if (r.err != 0 || r.left != 0)
		return MTA_ECORRUPT;
	if (!valid_domain((const char *)dom, dlen, true) ||
	    !valid_id((const char *)id, ilen) || tlen > MTA_STS_POLICY_MAX ||
	    !rec_times_ok(rec.fetched_at, rec.expires_at))
		return MTA_ECORRUPT;
	memcpy(rec.domain, dom, dlen);
	memcpy(rec.id, id, ilen);
	rec.text = (const char *)text;
	rec.text_len = tlen;
	if (mta_sts_parse_policy(rec.text, tlen, &rec.policy, NULL) != 0)
		return MTA_ECORRUPT;
	memcpy(out, &rec, sizeof(rec));
	return 0;
}

/* ---- cache decisions (RFC 8461 3.3, 5.1, 10.2) ---- */

enum mta_sts_decision mta_sts_cache_decide(const struct mta_sts_cache_rec *c,
					   enum mta_sts_txt_result txt,
					   const char *txt_id, int64_t now)
{
	bool valid = c != NULL && now < c->expires_at;

	if (txt == MTA_STS_TXT_RESULT_ID) {
		if (!valid)
			return MTA_STS_FETCH;
		if (txt_id != NULL && strcmp(txt_id, c->id) == 0)
			return MTA_STS_USE_CACHED;
		return MTA_STS_FETCH_KEEP_OLD_ON_FAIL;
	}
	/* no record, several, invalid, or a failed lookup: a cached policy
	 * stays until it expires (STS-13, STS-14) */
	return valid ? MTA_STS_USE_CACHED : MTA_STS_NO_POLICY;
}

/* The refresh time of mta_sts_refresh_due() (see sts.h). */
static int64_t refresh_at(const struct mta_sts_cache_rec *c,
			  uint32_t jitter)
{
	int64_t life = c->expires_at - c->fetched_at;
	int64_t base;

	if (life <= 0)
		return c->fetched_at;
	base = life / 2 < MTA_STS_REFRESH_INTERVAL ? life / 2
						   : MTA_STS_REFRESH_INTERVAL;
	return c->fetched_at + base - (int64_t)(jitter % (base / 10 + 1));
}

bool mta_sts_refresh_due(const struct mta_sts_cache_rec *c, int64_t now,
			 uint32_t jitter)
{
	if (c->expires_at <= c->fetched_at)
		return false;
	return now >= refresh_at(c, jitter);
}

const char *mta_sts_mode_name(enum mta_sts_mode m)
{
	switch (m) {
#define MODE_CASE(e, name)                                                    \
	case MTA_STS_MODE_##e:                                                \
		return name;
		MTA_STS_MODE_MAP(MODE_CASE)
#undef MODE_CASE
	}
	return "?";
}
