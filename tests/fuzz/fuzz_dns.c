/*
 * fuzz_dns.c - libFuzzer target for DNS answer handling (libmta/dns.c):
 * DNS wire messages -> getdns response dict (getdns_wire2msg_dict, as
 * getdns builds its replies_tree) -> classify() below (build_from(), the
 * code every lookup's answer goes through; this file includes dns.c to
 * reach it).
 *
 * Input layout (every field truncated by the end of the input):
 *   qtype   1 byte (mod 4): MX, ADDR, TLSA, TXT
 *   nrep    1 byte (mod 3) + 1 replies, then per reply:
 *           dnssec 1 byte (mod 4: SECURE, BOGUS, INDETERMINATE, INSECURE),
 *           len (2 bytes BE), a DNS message in wire form
 * A reply that getdns cannot parse is left out (getdns would not deliver
 * it either), and so is one with malformed names (see wire_ok()).
 * Checked promises: the result class and its data agree (OK has records or
 * a null MX, the others none; BOGUS is DNSSEC BOGUS; TEMPFAIL is
 * INDETERMINATE); every MX host is a bounded NUL-terminated name; every
 * TXT text is NUL-terminated at its length; TLSA data is readable.  Leaks
 * (the TXT leak of issue 18) show under LeakSanitizer: the replay runs in
 * the ASan build with detect_leaks=1 (tests/run_all.sh).
 *
 * Seeds: tests/fuzz/make_dns_seeds.py writes tests/fuzz/corpus/dns.
 */
#include "err.h"
/* the module itself: classify() drives its static build_from() */
#include "../../libmta/dns.c"

#include <getdns/getdns.h>
#include <getdns/getdns_extra.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t first_random(void *arg, uint32_t bound)
{
	(void)arg;
	(void)bound;
	return 0;
}

/* The response classification alone: resp is a getdns response dict as
 * getdns hands it to a callback ("status", "replies_tree": [{"header", "answer",
 * "dnssec_status", "canonical_name"}, ...]; NULL: no response), read for
 * a lookup of type qt for qname.  Calls cb once, synchronously, with the
 * result the lookup would deliver (equal MX preferences keep their wire
 * order), then frees what it made; resp stays the caller's and must
 * outlive the call (TLSA data point into it).  MTA_EDNS for an invalid
 * qname (cb not called). */
static int classify(enum mta_dns_qtype qt, const char *qname,
		    struct getdns_dict *resp, mta_dns_cb cb, void *ud)
{
	struct mta_dns dns;
	struct mta_dns_query q;
	struct build b;
	int rc;

	memset(&dns, 0, sizeof(dns));
	dns.rnd = first_random;
	memset(&q, 0, sizeof(q));
	q.qtype = qt;
	rc = name_check(qname, q.qname);
	if (rc < 0)
		return rc;
	build_from(&dns, &q, &b, GETDNS_CALLBACK_COMPLETE, resp);
	cb(&b.r, ud);
	build_free(&b);
	return 0;
}

#define CHECK(x)                 \
	do {                     \
		if (!(x))        \
			abort(); \
	} while (0)

struct cursor {
	const uint8_t *p;
	size_t left;
};

static unsigned get8(struct cursor *c)
{
	if (c->left == 0)
		return 0;
	c->left--;
	return *c->p++;
}

static const uint8_t *getn(struct cursor *c, size_t *n)
{
	const uint8_t *p;

	*n = (size_t)get8(c) << 8;
	*n |= get8(c);
	if (*n > c->left)
		*n = c->left;
	p = c->p;
	c->p += *n;
	c->left -= *n;
	return p;
}

/* A name at *off in wire[0..n): labels <= 63, compression pointers to an
 * earlier offset past the header only, <= 255 octets.  Advances *off. */
static bool name_ok(const uint8_t *w, size_t n, size_t *off)
{
	size_t p = *off, total = 0, hops = 0;
	bool jumped = false;

	for (;;) {
		unsigned l;

		if (p >= n)
			return false;
		l = w[p];
		if ((l & 0xc0) == 0xc0) {
			size_t to;

			if (p + 1 >= n)
				return false;
			to = ((size_t)(l & 0x3f) << 8) | w[p + 1];
			if (to < 12 || to >= p || ++hops > 64)
				return false;
			if (!jumped)
				*off = p + 2;
			jumped = true;
			p = to;
			continue;
		}
		if (l > 63)
			return false;
		total += l + 1;
		if (total > 255 || p + 1 + l > n)
			return false;
		p += 1 + l;
		if (l == 0)
			break;
	}
	if (!jumped)
		*off = p;
	return true;
}

/* libgetdns 1.6.0's getdns_wire2msg_dict() reads past its buffer on some
 * malformed names (a label length byte of 0x40-0xbf), on the rdata of
 * some record types (HIP) and on OPT records with options outside the
 * additional section, all found by this fuzzer (see the issue 18
 * report): only messages with well-formed names and records of the types
 * mtad asks for (plus CNAME, DNAME, NS, PTR, OPT) reach it, so what is
 * fuzzed is our handling of what getdns produces (an empty OPT in the
 * additional section is let through, as real replies carry one).  In mtad, getdns's own
 * parser sees the resolver's replies. */
static bool wire_ok(const uint8_t *w, size_t n)
{
	unsigned cnt[4];
	size_t off = 12;

	if (n < 12)
		return false;
	for (int i = 0; i < 4; i++)
		cnt[i] = (unsigned)w[4 + 2 * i] << 8 | w[5 + 2 * i];
	for (unsigned i = 0; i < cnt[0]; i++) {
		if (!name_ok(w, n, &off) || off + 4 > n)
			return false;
		off += 4;
	}
	for (unsigned i = 0; i < cnt[1] + cnt[2] + cnt[3]; i++) {
		unsigned type, rdlen;
		size_t r;

		if (!name_ok(w, n, &off) || off + 10 > n)
			return false;
		type = (unsigned)w[off] << 8 | w[off + 1];
		rdlen = (unsigned)w[off + 8] << 8 | w[off + 9];
		off += 10;
		if (off + rdlen > n)
			return false;
		r = off;
		switch (type) {
		case 15: /* MX */
			r += 2;
			/* fall through */
		case 2: /* NS */
		case 5: /* CNAME */
		case 12: /* PTR */
		case 39: /* DNAME */
			if (r > off + rdlen || !name_ok(w, off + rdlen, &r) ||
			    r != off + rdlen)
				return false;
			break;
		case 41: /* OPT: only the plain one in the additional section */
			if (i < cnt[1] + cnt[2] || rdlen != 0)
				return false;
			break;
		case 1:	 /* A */
		case 16: /* TXT */
		case 28: /* AAAA */
		case 52: /* TLSA */
			break;
		default:
			return false; /* see above: other rdata parsers */
		}
		off += rdlen;
	}
	return off == n;
}

static volatile unsigned sink;

static void on_result(const struct mta_dns_result *r, void *ud)
{
	(void)ud;
	switch (r->status) {
	case MTA_DNS_OK:
		CHECK(r->count > 0 || (r->qtype == MTA_DNS_Q_MX && r->null_mx));
		break;
	case MTA_DNS_BOGUS:
		CHECK(r->dnssec == MTA_DNSSEC_BOGUS);
		CHECK(r->count == 0);
		break;
	case MTA_DNS_TEMPFAIL:
		CHECK(r->dnssec == MTA_DNSSEC_INDETERMINATE);
		CHECK(r->count == 0);
		break;
	case MTA_DNS_NODATA:
	case MTA_DNS_NXDOMAIN:
		CHECK(r->count == 0);
		break;
	}
	CHECK(r->why != NULL && r->canonical != NULL);
	CHECK(strlen(r->canonical) < MTA_DNS_NAME_MAX);
	for (size_t i = 0; i < r->count; i++) {
		switch (r->qtype) {
		case MTA_DNS_Q_MX:
			CHECK(r->mx[i].host[0] != '\0');
			CHECK(strlen(r->mx[i].host) < MTA_DNS_NAME_MAX);
			CHECK(i == 0 || r->mx[i - 1].pref <= r->mx[i].pref);
			break;
		case MTA_DNS_Q_ADDR:
			CHECK(r->addr[i].ss_family == AF_INET ||
			      r->addr[i].ss_family == AF_INET6);
			break;
		case MTA_DNS_Q_TLSA:
			for (size_t k = 0; k < r->tlsa[i].len; k++)
				sink += r->tlsa[i].data[k];
			break;
		case MTA_DNS_Q_TXT:
			CHECK(r->txt[i].text[r->txt[i].len] == '\0');
			break;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const enum mta_dns_qtype qts[4] = {
		MTA_DNS_Q_MX, MTA_DNS_Q_ADDR, MTA_DNS_Q_TLSA, MTA_DNS_Q_TXT};
	static const uint32_t secs[4] = {
		GETDNS_DNSSEC_SECURE, GETDNS_DNSSEC_BOGUS,
		GETDNS_DNSSEC_INDETERMINATE, GETDNS_DNSSEC_INSECURE};
	struct cursor c = {data, size};
	enum mta_dns_qtype qt = qts[get8(&c) % 4];
	unsigned nrep = get8(&c) % 3 + 1;
	getdns_dict *resp = getdns_dict_create();
	getdns_list *rt = getdns_list_create();
	size_t n = 0;

	if (resp == NULL || rt == NULL)
		goto out;
	for (unsigned i = 0; i < nrep; i++) {
		uint32_t sec = secs[get8(&c) % 4];
		size_t len;
		const uint8_t *wire = getn(&c, &len);
		getdns_dict *rep = NULL;

		if (!wire_ok(wire, len) ||
		    getdns_wire2msg_dict(wire, len, &rep) != GETDNS_RETURN_GOOD)
			continue;
		if (getdns_dict_set_int(rep, "dnssec_status", sec) ==
			    GETDNS_RETURN_GOOD &&
		    getdns_list_set_dict(rt, n, rep) == GETDNS_RETURN_GOOD)
			n++;
		getdns_dict_destroy(rep);
	}
	getdns_dict_set_int(resp, "status", GETDNS_RESPSTATUS_GOOD);
	if (n > 0)
		getdns_dict_set_list(resp, "replies_tree", rt);
	CHECK(classify(qt, "fuzz.example.test", resp, on_result,
			       NULL) == 0);
	CHECK(classify(qt, "bad..name", resp, on_result, NULL) ==
	      MTA_EDNS);
out:
	getdns_list_destroy(rt);
	getdns_dict_destroy(resp);
	return 0;
}
