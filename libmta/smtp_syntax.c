/*
 * smtp_syntax.c - SMTP address and parameter syntax.  See smtp_syntax.h.
 */
#include "smtp_syntax.h"

#include "envelope.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#define LOCAL_MAX 64   /* RFC 5321 4.5.3.1.1 */
#define DOMAIN_MAX 255 /* RFC 5321 4.5.3.1.2 */
#define LABEL_MAX 63

static bool is_alpha(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

static bool is_atext(uint8_t c)
{
	return is_alpha(c) || is_digit(c) ||
	       (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

bool mta_smtp_has_8bit(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((uint8_t)p[i] >= 0x80)
			return true;
	return false;
}

/* Well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool mta_smtp_utf8_ok(const uint8_t *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = p[i];
		size_t k;
		uint32_t cp, min;

		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			k = 1, cp = c & 0x1f, min = 0x80;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2, cp = c & 0x0f, min = 0x800;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if (n - i - 1 < k)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((p[i + j] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i + j] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += k + 1;
	}
	return true;
}

/* Domain = sub-domain *("." sub-domain), LDH labels (U-labels if utf8). */
static bool domain_ok(const char *d, size_t n, bool utf8)
{
	size_t lab = 0;

	if (n == 0 || n > DOMAIN_MAX)
		return false;
	for (size_t i = 0; i <= n; i++) {
		uint8_t c = i < n ? (uint8_t)d[i] : '.';
		if (c == '.') {
			if (lab == 0 || lab > LABEL_MAX || d[i - 1] == '-')
				return false;
			lab = 0;
			continue;
		}
		if (c == '-' && lab == 0)
			return false;
		if (!is_alpha(c) && !is_digit(c) && c != '-' &&
		    !(utf8 && c >= 0x80))
			return false;
		lab++;
	}
	return true;
}

/* address-literal: [IPv4] or [IPv6:...] */
static bool literal_ok(const char *d, size_t n)
{
	char buf[64];
	unsigned char addr[16];

	if (n < 3 || d[0] != '[' || d[n - 1] != ']' || n - 2 >= sizeof(buf))
		return false;
	memcpy(buf, d + 1, n - 2);
	buf[n - 2] = '\0';
	if (strncasecmp(buf, "IPv6:", 5) == 0)
		return inet_pton(AF_INET6, buf + 5, addr) == 1;
	return inet_pton(AF_INET, buf, addr) == 1;
}

/* Local-part = Dot-string / Quoted-string */
static bool local_ok(const char *l, size_t n, bool utf8)
{
	if (n == 0 || n > LOCAL_MAX)
		return false;
	if (l[0] == '"') {
		if (n < 2 || l[n - 1] != '"')
			return false;
		for (size_t i = 1; i < n - 1; i++) {
			uint8_t c = (uint8_t)l[i];
			if (c == '\\') {
				if (++i >= n - 1)
					return false;
				c = (uint8_t)l[i];
				if ((c < 32 || c > 126) && !(utf8 && c >= 0x80))
					return false;
				continue;
			}
			if (c == '"')
				return false;
			if ((c < 32 || c > 126) && !(utf8 && c >= 0x80))
				return false;
		}
		return true;
	}
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)l[i];
		if (c == '.') {
			if (i == 0 || i == n - 1 || l[i - 1] == '.')
				return false;
			continue;
		}
		if (!is_atext(c) && !(utf8 && c >= 0x80))
			return false;
	}
	return true;
}

/* Mailbox = Local-part "@" ( Domain / address-literal ); the '@' is the
 * last one outside a quoted string. */
bool mta_smtp_mailbox_ok(const char *m, size_t n, bool utf8)
{
	size_t at = n;
	bool q = false;

	for (size_t i = 0; i < n; i++) {
		if (q && m[i] == '\\') {
			i++;
			continue;
		}
		if (m[i] == '"')
			q = !q;
		else if (!q && m[i] == '@')
			at = i;
	}
	if (at == n)
		return false;
	if (!local_ok(m, at, utf8))
		return false;
	if (m[at + 1] == '[')
		return literal_ok(m + at + 1, n - at - 1);
	return domain_ok(m + at + 1, n - at - 1, utf8);
}

/*
 * Splits "<...>" at the start of p: in/inlen get the text between the
 * brackets, rest what follows '>'.  -1 when there is no such path or
 * when the closing '>' is not followed by SP or the end.
 */
int mta_smtp_path_split(char *p, char **in, size_t *inlen, char **rest)
{
	bool q = false;
	size_t i;

	if (p[0] != '<')
		return -1;
	for (i = 1; p[i] != '\0'; i++) {
		if (q && p[i] == '\\' && p[i + 1] != '\0') {
			i++;
			continue;
		}
		if (p[i] == '"')
			q = !q;
		else if (!q && p[i] == '>')
			break;
	}
	if (p[i] != '>' || (p[i + 1] != '\0' && p[i + 1] != ' '))
		return -1;
	if (i + 1 > MTA_SMTP_PATH_MAX)
		return -1;
	*in = p + 1;
	*inlen = i - 1;
	*rest = p + i + 1;
	return 0;
}

/* Strips an A-d-l source route ("@a,@b:") after checking its domains. */
int mta_smtp_strip_route(char **m, size_t *n)
{
	char *p = *m;
	size_t len = *n, i = 0;

	if (len == 0 || p[0] != '@')
		return 0;
	for (;;) {
		size_t start;
		if (i >= len || p[i] != '@')
			return -1;
		start = ++i;
		while (i < len && p[i] != ',' && p[i] != ':')
			i++;
		if (i >= len || !domain_ok(p + start, i - start, false))
			return -1;
		if (p[i++] == ':')
			break;
	}
	*m = p + i;
	*n = len - i;
	return 0;
}

/* xtext (RFC 3461 4): chars 33..126 except '+' and '=', or "+" 2HEXUP */
bool mta_smtp_xtext_ok(const char *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)v[i];
		if (c == '+') {
			for (size_t k = i + 1; k <= i + 2; k++) {
				uint8_t h = k < n ? (uint8_t)v[k] : 0;
				if (!is_digit(h) && !(h >= 'A' && h <= 'F'))
					return false;
			}
			i += 2;
			continue;
		}
		if (c < 33 || c > 126 || c == '=')
			return false;
	}
	return true;
}

/* Next parameter of "kw[=val] kw[=val]": 1 found, 0 end, -1 bad syntax. */
int mta_smtp_next_param(char **pp, char **kw, char **val)
{
	char *p = *pp;

	while (*p == ' ')
		p++;
	if (*p == '\0')
		return 0;
	*kw = p;
	if (!is_alpha((uint8_t)*p) && !is_digit((uint8_t)*p))
		return -1;
	while (is_alpha((uint8_t)*p) || is_digit((uint8_t)*p) || *p == '-')
		p++;
	*val = NULL;
	if (*p == '=') {
		*p++ = '\0';
		*val = p;
		while (*p != ' ' && *p != '\0') {
			uint8_t c = (uint8_t)*p;
			if (c == '=' || (c < 33 && c != '\0') || c == 127)
				return -1;
			p++;
		}
		if (p == *val)
			return -1;
	}
	if (*p == ' ')
		*p++ = '\0';
	else if (*p != '\0')
		return -1;
	*pp = p;
	return 1;
}

int mta_smtp_notify_parse(const char *v, unsigned *out)
{
	unsigned bits = 0;

	for (;;) {
		size_t n = strcspn(v, ",");
		unsigned b;
		if (n == 5 && strncasecmp(v, "NEVER", 5) == 0)
			b = MTA_NOTIFY_NEVER;
		else if (n == 7 && strncasecmp(v, "SUCCESS", 7) == 0)
			b = MTA_NOTIFY_SUCCESS;
		else if (n == 7 && strncasecmp(v, "FAILURE", 7) == 0)
			b = MTA_NOTIFY_FAILURE;
		else if (n == 5 && strncasecmp(v, "DELAY", 5) == 0)
			b = MTA_NOTIFY_DELAY;
		else
			return -1;
		if (bits & b)
			return -1;
		bits |= b;
		if (v[n] == '\0')
			break;
		v += n + 1;
	}
	if ((bits & MTA_NOTIFY_NEVER) && bits != MTA_NOTIFY_NEVER)
		return -1;
	*out = bits;
	return 0;
}

bool mta_smtp_orcpt_ok(const char *v)
{
	const char *semi = strchr(v, ';');
	size_t n;

	if (semi == NULL || semi == v || strlen(semi + 1) == 0 ||
	    strlen(semi + 1) > MTA_SMTP_ORCPT_MAX)
		return false;
	for (const char *p = v; p < semi; p++)
		if (!is_atext((uint8_t)*p))
			return false;
	n = strlen(semi + 1);
	return mta_smtp_xtext_ok(semi + 1, n);
}

static int b64_val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int mta_smtp_b64_decode(const char *in, size_t n, uint8_t *out, size_t cap,
			size_t *outlen)
{
	size_t o = 0;

	*outlen = 0;
	if (n == 1 && in[0] == '=')
		return 0; /* RFC 4954 4: the empty response */
	if (n % 4 != 0)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		int v[4], pad = 0;

		for (int k = 0; k < 4; k++) {
			if (in[i + k] == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || (v[k] = b64_val(in[i + k])) < 0)
				return -1;
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
			     (uint32_t)v[2] << 6 | (uint32_t)v[3];
		if (o + (size_t)(3 - pad) > cap)
			return -1;
		out[o++] = (uint8_t)(w >> 16);
		if (pad < 2)
			out[o++] = (uint8_t)(w >> 8);
		if (pad < 1)
			out[o++] = (uint8_t)w;
	}
	*outlen = o;
	return 0;
}
