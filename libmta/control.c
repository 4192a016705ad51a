/*
 * control.c - the control protocol codec (control.h).
 */
#include "control.h"

#include "err.h"

#include <string.h>

static const struct {
	const char *name;
	size_t nargs;
	bool changes;
	size_t opt; /* trailing arguments that may be left out */
} verbs[MTA_CTL_NVERBS] = {
	[MTA_CTL_HOLD] = {"HOLD", 1, true},
	[MTA_CTL_RELEASE] = {"RELEASE", 1, true},
	[MTA_CTL_DELETE] = {"DELETE", 1, true},
	[MTA_CTL_BOUNCE] = {"BOUNCE", 1, true},
	[MTA_CTL_FLUSH] = {"FLUSH", 1, true},
	[MTA_CTL_POLICY_PURGE] = {"POLICY-PURGE", 1, true},
	[MTA_CTL_POLICY_REFRESH] = {"POLICY-REFRESH", 1, true},
	[MTA_CTL_ACTIVE] = {"ACTIVE", 0, false},
	[MTA_CTL_STATS] = {"STATS", 0, false},
	[MTA_CTL_QUIT] = {"QUIT", 0, false},
	[MTA_CTL_EXPLAIN] = {"EXPLAIN", 3, false, 2},
	[MTA_CTL_SITES] = {"SITES", 0, false},
	[MTA_CTL_POLICY_ACCEPT] = {"POLICY-ACCEPT", 1, true},
	[MTA_CTL_TLSRPT_SEND] = {"TLSRPT-SEND", 1, false, 1},
};

static bool nargs_ok(size_t v, size_t n)
{
	return n <= verbs[v].nargs && n + verbs[v].opt >= verbs[v].nargs;
}

const char *mta_ctl_verb_name(enum mta_ctl_verb v)
{
	return (unsigned)v < MTA_CTL_NVERBS ? verbs[v].name : "?";
}

bool mta_ctl_verb_changes(enum mta_ctl_verb v)
{
	return (unsigned)v < MTA_CTL_NVERBS && verbs[v].changes;
}

int mta_ctl_lines_feed(struct mta_ctl_lines *l, const uint8_t *in, size_t n,
		       size_t *consumed, const char **line)
{
	const uint8_t *lf = memchr(in, '\n', n);
	size_t take = lf != NULL ? (size_t)(lf - in) : n;

	*consumed = 0;
	if (l->len + take > MTA_CTL_LINE_MAX + 1) /* + a CR */
		return MTA_ETOOBIG;
	memcpy(l->buf + l->len, in, take);
	l->len += take;
	if (lf == NULL) {
		*consumed = n;
		return 0;
	}
	*consumed = take + 1;
	if (l->len > 0 && l->buf[l->len - 1] == '\r')
		l->len--;
	if (l->len > MTA_CTL_LINE_MAX)
		return MTA_ETOOBIG;
	l->buf[l->len] = '\0';
	l->len = 0;
	*line = l->buf;
	return 1;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decodes the token [p, p + n) into out (MTA_CTL_ARG_MAX bytes + NUL). */
static int decode_arg(const char *p, size_t n, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c < 0x21 || c > 0x7e)
			return MTA_EPROTO;
		if (c == '%') {
			int hi, lo;
			if (i + 2 >= n)
				return MTA_EPROTO;
			hi = hexval(p[i + 1]);
			lo = hexval(p[i + 2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return MTA_EPROTO;
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
		}
		if (o >= MTA_CTL_ARG_MAX)
			return MTA_EPROTO;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return 0;
}

int mta_ctl_parse_req(const char *line, struct mta_ctl_req *out)
{
	const char *p = line, *tok;
	size_t n, v;

	n = strcspn(p, " ");
	for (v = 0; v < MTA_CTL_NVERBS; v++)
		if (strlen(verbs[v].name) == n &&
		    memcmp(verbs[v].name, p, n) == 0)
			break;
	if (v == MTA_CTL_NVERBS)
		return MTA_EPROTO;
	out->verb = (enum mta_ctl_verb)v;
	out->nargs = 0;
	p += n;
	while (*p == ' ') {
		p++;
		tok = p;
		n = strcspn(p, " ");
		if (n == 0)
			return MTA_EPROTO; /* two spaces, or a trailing one */
		if (out->nargs >= MTA_CTL_MAX_ARGS ||
		    decode_arg(tok, n, out->args[out->nargs]) != 0)
			return MTA_EPROTO;
		out->nargs++;
		p += n;
	}
	if (*p != '\0' || !nargs_ok(v, out->nargs))
		return MTA_EPROTO;
	return 0;
}

int mta_ctl_format_req(char *out, size_t cap, enum mta_ctl_verb verb,
		       const char *const *args, size_t nargs)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o;

	if ((unsigned)verb >= MTA_CTL_NVERBS || !nargs_ok(verb, nargs))
		return MTA_EPROTO;
	o = strlen(verbs[verb].name);
	if (o + 2 > cap)
		return MTA_ETOOBIG;
	memcpy(out, verbs[verb].name, o);
	for (size_t i = 0; i < nargs; i++) {
		const unsigned char *a = (const unsigned char *)args[i];
		if (a[0] == '\0' || strlen(args[i]) > MTA_CTL_ARG_MAX)
			return MTA_EPROTO;
		if (o + 1 >= cap)
			return MTA_ETOOBIG;
		out[o++] = ' ';
		for (; *a != '\0'; a++) {
			if (*a >= 0x21 && *a <= 0x7e && *a != '%') {
				if (o + 1 >= cap)
					return MTA_ETOOBIG;
				out[o++] = (char)*a;
			} else {
				if (o + 3 >= cap)
					return MTA_ETOOBIG;
				out[o++] = '%';
				out[o++] = hex[*a >> 4];
				out[o++] = hex[*a & 15];
			}
		}
	}
	if (o > MTA_CTL_LINE_MAX || o + 2 > cap)
		return MTA_ETOOBIG;
	out[o++] = '\n';
	out[o] = '\0';
	return 0;
}

int mta_ctl_parse_hello(const char *line, unsigned *version)
{
	unsigned v = 0;
	const char *p;

	if (strncmp(line, "MTACTL ", 7) != 0)
		return MTA_EPROTO;
	p = line + 7;
	if (*p < '1' || *p > '9')
		return MTA_EPROTO;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > 100000)
			return MTA_EPROTO;
		v = v * 10 + (unsigned)(*p - '0');
	}
	if (*p != '\0')
		return MTA_EPROTO;
	*version = v;
	return 0;
}

int mta_ctl_parse_reply(const char *line, struct mta_ctl_reply *out)
{
	if (line[0] == '*' && (line[1] == ' ' || line[1] == '\0')) {
		out->kind = MTA_CTL_DATA;
		out->code = NULL;
		out->code_len = 0;
		out->text = line[1] ? line + 2 : line + 1;
		return 0;
	}
	if (strncmp(line, "OK", 2) == 0 && (line[2] == ' ' || !line[2])) {
		out->kind = MTA_CTL_OK;
		out->code = NULL;
		out->code_len = 0;
		out->text = line[2] ? line + 3 : line + 2;
		return 0;
	}
	if (strncmp(line, "ERR ", 4) == 0) {
		const char *c = line + 4;
		size_t n = 0;
		while (c[n] >= 'a' && c[n] <= 'z')
			n++;
		if (n == 0 || (c[n] != ' ' && c[n] != '\0'))
			return MTA_EPROTO;
		out->kind = MTA_CTL_ERR;
		out->code = c;
		out->code_len = n;
		out->text = c[n] ? c + n + 1 : c + n;
		return 0;
	}
	return MTA_EPROTO;
}
