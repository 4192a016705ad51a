/*
 * config_values.c - the syntax of one configuration value: numbers with
 * units, durations, ports, host names, mailboxes, addresses, CIDR blocks
 * and lists.  No key table and no loader state (config.c); declarations
 * in config_int.h.
 */
#include "config_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* small parsers; each returns 0 or -1 */

int cfg_parse_u64(const char *s, uint64_t *out, const char **end)
{
	uint64_t v = 0;

	if (!isdigit((unsigned char)*s))
		return -1;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned d = (unsigned)(*s - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	*end = s;
	return 0;
}

static int mul_u64(uint64_t *v, uint64_t m)
{
	if (*v != 0 && m > UINT64_MAX / *v)
		return -1;
	*v *= m;
	return 0;
}

/* A number with an optional one-letter unit suffix from units (the
 * letters) and mults (their multipliers); no suffix means 1. */
static int parse_scaled(const char *s, const char *units,
			    const uint64_t *mults, uint64_t *out)
{
	const char *e, *u;
	uint64_t v, m = 1;

	if (cfg_parse_u64(s, &v, &e) < 0)
		return -1;
	if (*e != '\0') {
		u = strchr(units, *e);
		if (u == NULL)
			return -1;
		m = mults[u - units];
		e++;
	}
	if (*e != '\0' || mul_u64(&v, m) < 0)
		return -1;
	*out = v;
	return 0;
}

int cfg_parse_size(const char *s, uint64_t *out)
{
	static const uint64_t m[] = {1ULL << 10, 1ULL << 10, 1ULL << 20,
				     1ULL << 20, 1ULL << 30, 1ULL << 30};
	return parse_scaled(s, "kKmMgG", m, out);
}

int cfg_parse_duration(const char *s, uint64_t *out)
{
	static const uint64_t m[] = {1, 60, 3600, 86400};
	return parse_scaled(s, "smhd", m, out);
}

static int parse_port(const char *s, unsigned *out)
{
	const char *e;
	uint64_t v;

	if (cfg_parse_u64(s, &v, &e) < 0 || *e != '\0' || v < 1 || v > 65535)
		return -1;
	*out = (unsigned)v;
	return 0;
}

int cfg_has_ctl(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < ' ' || *s == 0x7f)
			return 1;
	return 0;
}

/* A host name: dot-separated LDH labels of 1..63, at most 253 in all. */
int cfg_valid_hostname(const char *s)
{
	size_t len = strlen(s), lab = 0;

	if (len == 0 || len > 253)
		return 0;
	for (size_t i = 0; i <= len; i++) {
		char ch = s[i];
		if (ch == '.' || ch == '\0') {
			if (lab == 0 || lab > 63 || s[i - 1] == '-')
				return 0;
			lab = 0;
			continue;
		}
		if (!(isalnum((unsigned char)ch) || ch == '-'))
			return 0;
		if (lab == 0 && ch == '-')
			return 0;
		lab++;
	}
	return 1;
}

/* "local@domain": a dot-atom local part of printable ASCII without
 * specials or blanks, and a host name. */
int cfg_valid_mailbox(const char *s)
{
	const char *at = strrchr(s, '@');
	static const char specials[] = "()<>[]:;@\\,\" ";

	if (at == NULL || at == s || at - s > 64 ||
	    !cfg_valid_hostname(at + 1))
		return 0;
	for (const char *p = s; p < at; p++)
		if (*p <= ' ' || *p >= 0x7f || strchr(specials, *p) != NULL)
			return 0;
	return s[0] != '.' && at[-1] != '.' && strstr(s, "..") == NULL;
}

/*
 * "a.b.c.d:port" or "[v6]:port" -> sockaddr.  Only numeric addresses: a
 * listener binds to an address, not to whatever a name resolves to today.
 */
int cfg_parse_addrport(const char *s, struct sockaddr_storage *ss)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *colon, *hs;
	size_t hl;
	unsigned port;

	memset(ss, 0, sizeof(*ss));
	if (*s == '[') {
		const char *rb = strchr(s, ']');
		if (rb == NULL || rb[1] != ':')
			return -1;
		hs = s + 1;
		hl = (size_t)(rb - hs);
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL)
			return -1;
		hs = s;
		hl = (size_t)(colon - s);
	}
	if (hl == 0 || hl >= sizeof(host))
		return -1;
	memcpy(host, hs, hl);
	host[hl] = '\0';
	if (parse_port(colon + 1, &port) < 0)
		return -1;
	if (*s == '[') {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return -1;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			return -1;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
	}
	return 0;
}

void cfg_format_addrport(const struct sockaddr_storage *ss, char *buf,
			 size_t len)
{
	char a[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
			(const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, a, sizeof(a));
		snprintf(buf, len, "[%s]:%u", a, ntohs(sin6->sin6_port));
	} else {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &sin->sin_addr, a, sizeof(a));
		snprintf(buf, len, "%s:%u", a, ntohs(sin->sin_port));
	}
}

/* "addr/prefix" or a bare address (/32, /128).  why says what is wrong. */
int cfg_parse_cidr(const char *s, struct mta_cidr *c, const char **why)
{
	char a[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(s, '/');
	size_t al = slash ? (size_t)(slash - s) : strlen(s);
	unsigned maxp;

	memset(c, 0, sizeof(*c));
	*why = "not a CIDR";
	if (al == 0 || al >= sizeof(a))
		return -1;
	memcpy(a, s, al);
	a[al] = '\0';
	if (inet_pton(AF_INET, a, c->addr) == 1) {
		c->family = AF_INET;
		maxp = 32;
	} else if (inet_pton(AF_INET6, a, c->addr) == 1) {
		c->family = AF_INET6;
		maxp = 128;
	} else {
		return -1;
	}
	c->prefix = maxp;
	if (slash != NULL) {
		const char *e;
		uint64_t p;
		if (cfg_parse_u64(slash + 1, &p, &e) < 0 || *e != '\0' ||
		    p > maxp || (slash[1] == '0' && slash[2] != '\0')) {
			*why = "bad prefix length";
			return -1;
		}
		c->prefix = (unsigned)p;
	}
	for (unsigned bit = c->prefix; bit < maxp; bit++) {
		if (c->addr[bit / 8] & (0x80 >> (bit % 8))) {
			*why = "host bits set beyond the prefix";
			return -1;
		}
	}
	return 0;
}

void cfg_format_cidr(const struct mta_cidr *c, char *buf, size_t len)
{
	char a[INET6_ADDRSTRLEN];

	inet_ntop(c->family, c->addr, a, sizeof(a));
	snprintf(buf, len, "%s/%u", a, c->prefix);
}

/* Host part of a relay host or resolver: "[...]" content or plain. */
int cfg_valid_host(const char *h, int bracketed)
{
	struct in6_addr a6;
	struct in_addr a4;

	if (inet_pton(AF_INET, h, &a4) == 1)
		return 1;
	if (inet_pton(AF_INET6, h, &a6) == 1)
		return bracketed;
	return cfg_valid_hostname(h);
}

/*
 * Splits "host", "host:port", "[host]:port", "[host]" into host and port.
 * bare_v6: whether an unbracketed IPv6 address without port is allowed.
 */
int cfg_split_hostport(const char *s, char *host, size_t hostlen,
		       int *bracketed, int bare_v6)
{
	const char *hs = s, *rest;
	size_t hl;
	unsigned port;

	*bracketed = 0;
	if (*s == '[') {
		const char *rb = strchr(s, ']');
		if (rb == NULL)
			return -1;
		hs = s + 1;
		hl = (size_t)(rb - hs);
		rest = rb + 1;
		*bracketed = 1;
	} else {
		const char *colon = strchr(s, ':');
		if (colon != NULL && strchr(colon + 1, ':') != NULL) {
			/* more than one ':': only a bare IPv6 address */
			if (!bare_v6)
				return -1;
			colon = NULL;
		}
		hl = colon ? (size_t)(colon - s) : strlen(s);
		rest = s + hl;
		if (bare_v6 && colon == NULL)
			*bracketed = 1; /* allow v6 in valid_host */
	}
	if (hl == 0 || hl >= hostlen)
		return -1;
	memcpy(host, hs, hl);
	host[hl] = '\0';
	if (*rest == '\0')
		return 0;
	if (*rest != ':' || parse_port(rest + 1, &port) < 0)
		return -1;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* list splitting: items separated by commas and/or white space */

/* Next item of a list into buf; returns its length, 0 at the end, -1 if too
 * long. */
int cfg_next_item(const char **pp, char *buf, size_t len)
{
	const char *p = *pp, *b;
	size_t n;

	while (*p == ',' || isspace((unsigned char)*p))
		p++;
	b = p;
	while (*p != '\0' && *p != ',' && !isspace((unsigned char)*p))
		p++;
	n = (size_t)(p - b);
	*pp = p;
	if (n >= len)
		return -1;
	memcpy(buf, b, n);
	buf[n] = '\0';
	return (int)n;
}

/* Appends s to *acc (malloc'd, may be NULL) with sep; -1 on ENOMEM. */
int cfg_append(char **acc, const char *sep, const char *s)
{
	size_t al = *acc ? strlen(*acc) : 0, sl = strlen(sep), l = strlen(s);
	char *n = realloc(*acc, al + sl + l + 1);

	if (n == NULL)
		return -1;
	if (al == 0) {
		memcpy(n, s, l + 1);
	} else {
		memcpy(n + al, sep, sl);
		memcpy(n + al + sl, s, l + 1);
	}
	*acc = n;
	return 0;
}
