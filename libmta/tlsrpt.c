/*
 * tlsrpt.c - RFC 8460 reports from the spool's counters (tlsrpt.h).
 */
#include "tlsrpt.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "config.h"
#include "err.h"
#include "spool.h"

void mta_tlsrpt_meta_from_config(const struct mta_config *cfg,
				 const char *day, const char *domain,
				 struct mta_tlsrpt_meta *m, char *id,
				 size_t idlen, char *contact, size_t clen)
{
	const char *sub = cfg->tlsrpt_submitter;

	if (cfg->tlsrpt_contact != NULL)
		snprintf(contact, clen, "%s", cfg->tlsrpt_contact);
	else
		snprintf(contact, clen, "postmaster@%s", sub);
	snprintf(id, idlen, "%s.%s@%s", day, domain, sub);
	m->organization = cfg->tlsrpt_organization != NULL
				  ? cfg->tlsrpt_organization
				  : sub;
	m->contact = contact;
	m->submitter = sub;
	m->report_id = id;
}

/* ---- the _smtp._tls record (§3) ------------------------------------ */

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* %-decodes s[0..n) into out (RPT-05); 0 or -1 (bad escape, too long,
 * a control byte or a blank). */
static int pct_decode(const char *s, size_t n, char *out, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)s[i];
		if (c == '%') {
			int h, l;
			if (i + 2 >= n + 1)
				return -1;
			h = hexval((unsigned char)s[i + 1]);
			l = hexval((unsigned char)s[i + 2]);
			if (h < 0 || l < 0)
				return -1;
			c = h * 16 + l;
			i += 2;
		}
		if (c <= 0x20 || c >= 0x7f || o + 1 >= len)
			return -1;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return 0;
}

static void add_uri(struct mta_tlsrpt_rua *out, const char *s, size_t n)
{
	char tmp[512];

	while (n > 0 && (*s == ' ' || *s == '\t'))
		s++, n--;
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	if (out->n >= MTA_TLSRPT_RUA_MAX)
		return;
	if (n > 7 && strncasecmp(s, "mailto:", 7) == 0) {
		const char *at;
		if (pct_decode(s + 7, n - 7, tmp, sizeof(tmp)) != 0)
			return;
		at = strrchr(tmp, '@');
		if (at == NULL || at == tmp || at[1] == '\0' ||
		    strchr(tmp, '?') != NULL)
			return; /* ?hfields are not supported */
		out->u[out->n].https = false;
	} else if (n > 8 && strncasecmp(s, "https://", 8) == 0) {
		if (n >= sizeof(tmp))
			return;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)s[i] <= 0x20 ||
			    (unsigned char)s[i] >= 0x7f)
				return;
		memcpy(tmp, s, n);
		tmp[n] = '\0';
		out->u[out->n].https = true;
	} else {
		return; /* RPT-04: other schemes ignored */
	}
	snprintf(out->u[out->n].uri, sizeof(out->u[out->n].uri), "%s", tmp);
	out->n++;
}

int mta_tlsrpt_parse_record(const char *txt, size_t len,
			    struct mta_tlsrpt_rua *out)
{
	const char *p = txt, *end = txt + len;
	bool have_rua = false;

	out->n = 0;
	/* RPT-01/02: "v=TLSRPTv1" first, case-sensitive */
	if (len < 10 || memcmp(txt, "v=TLSRPTv1", 10) != 0)
		return MTA_EPROTO;
	p += 10;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	if (p < end && *p != ';')
		return MTA_EPROTO;
	while (p < end) {
		const char *f, *eq, *fe;
		p++; /* ';' */
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		f = p;
		fe = memchr(p, ';', (size_t)(end - p));
		if (fe == NULL)
			fe = end;
		eq = memchr(f, '=', (size_t)(fe - f));
		if (eq != NULL && eq - f == 3 && strncmp(f, "rua", 3) == 0) {
			const char *u = eq + 1;
			have_rua = true;
			while (u < fe) { /* comma-separated list */
				const char *c = memchr(u, ',', (size_t)(fe - u));
				if (c == NULL)
					c = fe;
				add_uri(out, u, (size_t)(c - u));
				u = c + 1;
			}
		}
		/* RPT-04: unknown fields are ignored */
		p = fe;
	}
	return have_rua && out->n > 0 ? 0 : MTA_EPROTO;
}

/* ---- collecting the counters --------------------------------------- */

struct collect {
	struct mta_tlsrpt_report *rep;
	struct mta_spool *sp;
	int err;
};

static struct mta_tlsrpt_policy *find_policy(struct collect *c,
					     const char *ptype,
					     const char *pid)
{
	struct mta_tlsrpt_report *r = c->rep;
	struct mta_tlsrpt_policy *p;

	for (size_t i = 0; i < r->np; i++)
		if (strcmp(r->p[i].pid, pid) == 0 &&
		    strcmp(r->p[i].ptype, ptype) == 0)
			return &r->p[i];
	p = realloc(r->p, (r->np + 1) * sizeof(*p));
	if (p == NULL)
		return NULL;
	r->p = p;
	p = &r->p[r->np++];
	memset(p, 0, sizeof(*p));
	snprintf(p->ptype, sizeof(p->ptype), "%s", ptype);
	snprintf(p->pid, sizeof(p->pid), "%s", pid);
	return p;
}

static int collect_entry(void *ud, const char *key, const uint8_t *val,
			 size_t len)
{
	struct collect *c = ud;
	struct mta_tlsrpt_report *r = c->rep;
	char day[16], dom[256], ptype[24], result[48], pid[24], mx[256],
		rip[48], sip[48];
	struct mta_tlsrpt_policy *p;
	uint64_t n = 0;

	if (len != 8 || key[0] == 'P' || key[0] == 'S')
		return 0;
	if (sscanf(key, "%15s %255s %23s %47s %23s %255s %47s %47s", day, dom,
		   ptype, result, pid, mx, rip, sip) != 8)
		return 0; /* an older, shorter key: not reportable */
	if (strcmp(day, r->day) != 0 || strcmp(dom, r->domain) != 0)
		return 0;
	for (int i = 0; i < 8; i++)
		n = n << 8 | val[i];
	p = find_policy(c, ptype, pid);
	if (p == NULL) {
		c->err = -ENOMEM;
		return 1;
	}
	if (strcmp(mx, "-") != 0 && strcmp(ptype, "sts") != 0) {
		size_t i;
		for (i = 0; i < p->nmx && strcmp(p->mxs[i], mx) != 0; i++)
			;
		if (i == p->nmx && p->nmx < 8)
			snprintf(p->mxs[p->nmx++], sizeof(p->mxs[0]), "%s",
				 mx);
	}
	if (strcmp(result, "successful-session") == 0) {
		p->ok += n;
		return 0;
	}
	p->failed += n;
	struct mta_tlsrpt_failure *f = realloc(p->f, (p->nf + 1) * sizeof(*f));
	if (f == NULL) {
		c->err = -ENOMEM;
		return 1;
	}
	p->f = f;
	f = &p->f[p->nf++];
	memset(f, 0, sizeof(*f));
	snprintf(f->result, sizeof(f->result), "%s", result);
	snprintf(f->mx, sizeof(f->mx), "%s", mx);
	snprintf(f->rip, sizeof(f->rip), "%s", rip);
	snprintf(f->sip, sizeof(f->sip), "%s", sip);
	f->count = n;
	return 0;
}

static int collect_note(void *ud, const char *key, const uint8_t *val,
			size_t len)
{
	struct collect *c = ud;
	char day[16], pid[24];

	if (strncmp(key, "P ", 2) != 0 ||
	    sscanf(key + 2, "%15s %23s", day, pid) != 2 ||
	    strcmp(day, c->rep->day) != 0)
		return 0;
	for (size_t i = 0; i < c->rep->np; i++) {
		struct mta_tlsrpt_policy *p = &c->rep->p[i];
		if (strcmp(p->pid, pid) != 0 || p->text != NULL)
			continue;
		p->text = malloc(len + 1);
		if (p->text == NULL) {
			c->err = -ENOMEM;
			return 1;
		}
		memcpy(p->text, val, len);
		p->text[len] = '\0';
	}
	return 0;
}

int mta_tlsrpt_collect(struct mta_spool *sp, const char *day,
		       const char *domain, struct mta_tlsrpt_report *rep)
{
	struct collect c = {rep, sp, 0};
	int rc;

	memset(rep, 0, sizeof(*rep));
	snprintf(rep->day, sizeof(rep->day), "%s", day);
	snprintf(rep->domain, sizeof(rep->domain), "%s", domain);
	rc = mta_spool_tlsrpt_foreach(sp, collect_entry, &c);
	if (rc == 0)
		rc = c.err;
	if (rc == 0)
		rc = mta_spool_tlsrpt_foreach(sp, collect_note, &c);
	if (rc == 0)
		rc = c.err;
	if (rc != 0)
		mta_tlsrpt_report_free(rep);
	return rc;
}

void mta_tlsrpt_report_free(struct mta_tlsrpt_report *rep)
{
	for (size_t i = 0; i < rep->np; i++) {
		free(rep->p[i].text);
		free(rep->p[i].f);
	}
	free(rep->p);
	rep->p = NULL;
	rep->np = 0;
}

struct dwalk {
	char (*seen)[300];
	bool *rep;
	size_t n;
	int err;
};

static int domains_entry(void *ud, const char *key, const uint8_t *val,
			 size_t len)
{
	struct dwalk *w = ud;
	char day[16], dom[256], pair[300];
	bool reported = false;
	size_t i;

	(void)val;
	if (len != 8 || key[0] == 'P')
		return 0;
	if (key[0] == 'S') {
		if (sscanf(key + 2, "%15s %255s", day, dom) != 2)
			return 0;
		reported = true;
	} else if (sscanf(key, "%15s %255s", day, dom) != 2) {
		return 0;
	}
	snprintf(pair, sizeof(pair), "%s %s", day, dom);
	for (i = 0; i < w->n && strcmp(w->seen[i], pair) != 0; i++)
		;
	if (i == w->n) {
		void *s = realloc(w->seen, (w->n + 1) * sizeof(*w->seen));
		void *r = s ? realloc(w->rep, (w->n + 1) * sizeof(*w->rep))
			    : NULL;
		if (s != NULL)
			w->seen = s;
		if (r == NULL) {
			w->err = -ENOMEM;
			return 1;
		}
		w->rep = r;
		snprintf(w->seen[w->n], sizeof(w->seen[0]), "%s", pair);
		w->rep[w->n++] = false;
	}
	if (reported)
		w->rep[i] = true;
	return 0;
}

int mta_tlsrpt_domains(struct mta_spool *sp,
		       int (*cb)(void *ud, const char *day,
				 const char *domain, bool reported),
		       void *ud)
{
	struct dwalk w = {0};
	int rc = mta_spool_tlsrpt_foreach(sp, domains_entry, &w);

	if (rc == 0)
		rc = w.err;
	for (size_t i = 0; rc == 0 && i < w.n; i++) {
		char *sp2 = strchr(w.seen[i], ' ');
		*sp2 = '\0';
		if (cb(ud, w.seen[i], sp2 + 1, w.rep[i]) != 0)
			break;
	}
	free(w.seen);
	free(w.rep);
	return rc;
}

/* ---- JSON (§4.4) ---------------------------------------------------- */

struct jb {
	char *s;
	size_t len, cap;
	int err;
};

static void jraw(struct jb *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->cap + n + 1) * 2;
		char *p = realloc(b->s, cap);
		if (p == NULL) {
			b->err = -ENOMEM;
			return;
		}
		b->s = p;
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void jlit(struct jb *b, const char *s)
{
	jraw(b, s, strlen(s));
}

static void jstr(struct jb *b, const char *s, size_t n)
{
	jraw(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			jraw(b, esc, 2);
		} else if (c < 0x20 || c == 0x7f) {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			jraw(b, esc, 6);
		} else {
			jraw(b, (const char *)&c, 1);
		}
	}
	jraw(b, "\"", 1);
}

static void jkv(struct jb *b, const char *k, const char *v)
{
	jstr(b, k, strlen(k));
	jraw(b, ":", 1);
	jstr(b, v, strlen(v));
}

static void jnum(struct jb *b, const char *k, uint64_t n)
{
	char t[32];

	jstr(b, k, strlen(k));
	snprintf(t, sizeof(t), ":%llu", (unsigned long long)n);
	jlit(b, t);
}

static void day_bounds(const char *day, int64_t *begin)
{
	struct tm tm = {0};

	if (sscanf(day, "%d-%d-%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday) !=
	    3) {
		*begin = 0;
		return;
	}
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	*begin = (int64_t)timegm(&tm);
}

int mta_tlsrpt_json(const struct mta_tlsrpt_report *rep,
		    const struct mta_tlsrpt_meta *m, char **out)
{
	struct jb b = {0};
	char t[64];

	jlit(&b, "{");
	jkv(&b, "organization-name", m->organization);
	jlit(&b, ",\"date-range\":{");
	snprintf(t, sizeof(t), "%sT00:00:00Z", rep->day);
	jkv(&b, "start-datetime", t);
	jlit(&b, ",");
	snprintf(t, sizeof(t), "%sT23:59:59Z", rep->day);
	jkv(&b, "end-datetime", t);
	jlit(&b, "},");
	jkv(&b, "contact-info", m->contact);
	jlit(&b, ",");
	jkv(&b, "report-id", m->report_id);
	jlit(&b, ",\"policies\":[");
	for (size_t i = 0; i < rep->np; i++) {
		const struct mta_tlsrpt_policy *p = &rep->p[i];
		const char *l = p->text;
		bool first = true;

		jlit(&b, i ? ",{\"policy\":{" : "{\"policy\":{");
		jkv(&b, "policy-type", p->ptype);
		jlit(&b, ",\"policy-string\":[");
		while (l != NULL && *l != '\0') {
			const char *nl = strchr(l, '\n');
			size_t n = nl ? (size_t)(nl - l) : strlen(l);
			if (n > 0) {
				if (!first)
					jlit(&b, ",");
				jstr(&b, l, n);
				first = false;
			}
			l = nl ? nl + 1 : NULL;
		}
		jlit(&b, "],");
		jkv(&b, "policy-domain", rep->domain);
		jlit(&b, ",\"mx-host\":[");
		first = true;
		if (strcmp(p->ptype, "sts") == 0) { /* the policy's patterns */
			for (l = p->text; l != NULL && *l != '\0';) {
				const char *nl = strchr(l, '\n');
				size_t n = nl ? (size_t)(nl - l) : strlen(l);
				if (n > 4 && strncmp(l, "mx: ", 4) == 0) {
					if (!first)
						jlit(&b, ",");
					jstr(&b, l + 4, n - 4);
					first = false;
				}
				l = nl ? nl + 1 : NULL;
			}
		} else {
			for (size_t k = 0; k < p->nmx; k++) {
				if (k)
					jlit(&b, ",");
				jstr(&b, p->mxs[k], strlen(p->mxs[k]));
			}
		}
		jlit(&b, "]},\"summary\":{");
		jnum(&b, "total-successful-session-count", p->ok);
		jlit(&b, ",");
		jnum(&b, "total-failure-session-count", p->failed);
		jlit(&b, "},\"failure-details\":[");
		for (size_t k = 0; k < p->nf; k++) {
			const struct mta_tlsrpt_failure *f = &p->f[k];
			jlit(&b, k ? ",{" : "{");
			jkv(&b, "result-type", f->result);
			if (strcmp(f->sip, "-") != 0) {
				jlit(&b, ",");
				jkv(&b, "sending-mta-ip", f->sip);
			}
			if (strcmp(f->mx, "-") != 0) {
				jlit(&b, ",");
				jkv(&b, "receiving-mx-hostname", f->mx);
			}
			if (strcmp(f->rip, "-") != 0) {
				jlit(&b, ",");
				jkv(&b, "receiving-ip", f->rip);
			}
			jlit(&b, ",");
			jnum(&b, "failed-session-count", f->count);
			jlit(&b, "}");
		}
		jlit(&b, "]}");
	}
	jlit(&b, "]}");
	if (b.err != 0) {
		free(b.s);
		return b.err;
	}
	*out = b.s;
	return 0;
}

/* ---- gzip (§5.2), file name (§5.1), mail (§5.3) -------------------- */

int mta_tlsrpt_gzip(const char *in, size_t len, uint8_t **out,
		    size_t *outlen)
{
	z_stream z = {0};
	uLong cap = compressBound((uLong)len) + 64;
	uint8_t *buf = malloc(cap);
	int rc;

	if (buf == NULL)
		return -ENOMEM;
	/* windowBits 15 + 16: a gzip wrapper, not zlib's */
	if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK) {
		free(buf);
		return -ENOMEM;
	}
	z.next_in = (Bytef *)(uintptr_t)in;
	z.avail_in = (uInt)len;
	z.next_out = buf;
	z.avail_out = (uInt)cap;
	rc = deflate(&z, Z_FINISH);
	deflateEnd(&z);
	if (rc != Z_STREAM_END) {
		free(buf);
		return -ENOMEM;
	}
	*out = buf;
	*outlen = z.total_out;
	return 0;
}

void mta_tlsrpt_filename(const struct mta_tlsrpt_report *rep,
			 const char *submitter, char *out, size_t len)
{
	int64_t begin;

	day_bounds(rep->day, &begin);
	snprintf(out, len, "%s!%s!%lld!%lld.json.gz", submitter, rep->domain,
		 (long long)begin, (long long)(begin + 86400));
}

static void b64(struct jb *b, const uint8_t *p, size_t n)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
				  "abcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t col = 0;

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		char q[4];
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		q[0] = tab[v >> 18 & 63];
		q[1] = tab[v >> 12 & 63];
		q[2] = i + 1 < n ? tab[v >> 6 & 63] : '=';
		q[3] = i + 2 < n ? tab[v & 63] : '=';
		jraw(b, q, 4);
		col += 4;
		if (col >= 76) {
			jlit(b, "\r\n");
			col = 0;
		}
	}
	if (col)
		jlit(b, "\r\n");
}

int mta_tlsrpt_mail(const struct mta_tlsrpt_report *rep,
		    const struct mta_tlsrpt_meta *m, const char *to,
		    const char *msgid_host, const uint8_t *gz, size_t gzlen,
		    int64_t now, char **out, size_t *outlen)
{
	struct jb b = {0};
	char line[1024], date[64], fname[600];
	time_t t = (time_t)now;
	struct tm tm;
	const char *bnd = "tlsrpt-boundary-8460";

	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	mta_tlsrpt_filename(rep, m->submitter, fname, sizeof(fname));
#define L(...)                                                                \
	do {                                                                  \
		snprintf(line, sizeof(line), __VA_ARGS__);                    \
		jlit(&b, line);                                               \
	} while (0)
	L("From: TLS reporting <%s>\r\n", m->contact);
	L("To: <%s>\r\n", to);
	L("Date: %s\r\n", date);
	L("Message-ID: <%s.%s@%s>\r\n", m->report_id, rep->domain,
	  msgid_host);
	/* RPT-42 */
	L("Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n",
	  rep->domain, m->submitter, m->report_id);
	L("TLS-Report-Domain: %s\r\n", rep->domain); /* RPT-41 */
	L("TLS-Report-Submitter: %s\r\n", m->submitter);
	L("TLS-Required: No\r\n"); /* RFC 8460 §3, RFC 8689 §5 */
	L("Auto-Submitted: auto-generated\r\n");
	L("MIME-Version: 1.0\r\n");
	L("Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n"
	  "\tboundary=\"%s\"\r\n\r\n", bnd);
	L("This is a multipart message in MIME format.\r\n\r\n");
	L("--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n"
	  "Content-Transfer-Encoding: 7bit\r\n\r\n", bnd);
	L("This is an aggregate TLS report (RFC 8460) from %s\r\n"
	  "for %s, %s (UTC).\r\n\r\n", m->submitter, rep->domain, rep->day);
	L("--%s\r\nContent-Type: application/tlsrpt+gzip\r\n"
	  "Content-Transfer-Encoding: base64\r\n"
	  "Content-Disposition: attachment;\r\n\tfilename=\"%s\"\r\n\r\n",
	  bnd, fname);
#undef L
	b64(&b, gz, gzlen);
	jlit(&b, "\r\n--");
	jlit(&b, bnd);
	jlit(&b, "--\r\n");
	if (b.err != 0) {
		free(b.s);
		return b.err;
	}
	*out = b.s;
	*outlen = b.len;
	return 0;
}
