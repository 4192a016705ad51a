/*
 * fuzz_dns.c - libFuzzer target for DNS answer handling (libmta/dns.c):
 * DNS wire messages -> getdns response dict (getdns_wire2msg_dict, as
 * getdns builds its replies_tree) -> mta_dns_classify() (build_from, the
 * code every lookup's answer goes through).
 *
 * Input layout (every field truncated by the end of the input):
 *   qtype   1 byte (mod 4): MX, ADDR, TLSA, TXT
 *   nrep    1 byte (mod 3) + 1 replies, then per reply:
 *           dnssec 1 byte (mod 4: SECURE, BOGUS, INDETERMINATE, INSECURE),
 *           len (2 bytes BE), a DNS message in wire form
 * A reply that getdns cannot parse is left out (getdns would not deliver
 * it either).
 * Checked promises: the result class and its data agree (OK has records or
 * a null MX, the others none; BOGUS is DNSSEC BOGUS; TEMPFAIL is
 * INDETERMINATE); every MX host is a bounded NUL-terminated name; every
 * TXT text is NUL-terminated at its length; TLSA data is readable.  Leaks
 * (the TXT leak of issue 18) show under LeakSanitizer: the replay runs in
 * the ASan build with detect_leaks=1 (tests/run_all.sh).
 *
 * Seeds: tests/fuzz/make_dns_seeds.py writes tests/fuzz/corpus/dns.
 */
#include "dns.h"
#include "err.h"

#include <getdns/getdns.h>
#include <getdns/getdns_extra.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

		if (getdns_wire2msg_dict(wire, len, &rep) != GETDNS_RETURN_GOOD)
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
	CHECK(mta_dns_classify(qt, "fuzz.example.test", resp, on_result,
			       NULL) == 0);
	CHECK(mta_dns_classify(qt, "bad..name", resp, on_result, NULL) ==
	      MTA_EDNS);
out:
	getdns_list_destroy(rt);
	getdns_dict_destroy(resp);
	return 0;
}
