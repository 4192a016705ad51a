#include "dns.h"

#include "err.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <getdns/getdns.h>
#include <getdns/getdns_extra.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DNS_DEFAULT_TA "/usr/share/dns/root.key"
#define DNS_DEFAULT_RESOLV "/etc/resolv.conf"
#define DNS_DEFAULT_TIMEOUT 5000
/* getdns's own timeout, far beyond ours: getdns 1.6.0 can double-free when
 * a DNSSEC chain query (e.g. the DS of an insecure delegation) times out
 * while lookups wait on it, so its timeout must never fire.  Each lookup
 * has its own deadline timer instead (q_on_deadline), which cancels the
 * getdns request and reports TEMPFAIL "timeout". */
#define DNS_GETDNS_TIMEOUT_EXTRA (24ull * 3600 * 1000)
#define DNS_QNAME_MAX 254 /* 253 octets + NUL */

/* ------------------------------------------------------------------ */
/* getdns <-> libuv bridge: one uv_poll_t (read and write folded) and one
 * uv_timer_t per getdns event.  getdns 1.6.0's own libuv extension calls
 * uv_poll_init() twice on one fd for TCP and crashes; this one never does.
 * A bridge event outlives getdns's event until its handles have closed, so
 * libuv callbacks that race a clear find el_ev == NULL and do nothing. */

struct bridge {
	getdns_eventloop base; /* first: getdns casts */
	uv_loop_t *loop;
};

struct bev {
	uv_poll_t poll;
	uv_timer_t timer;
	getdns_eventloop_event *el_ev;
	unsigned have_poll : 1;
	unsigned have_timer : 1;
	int closing;
};

static void bev_closed(uv_handle_t *h)
{
	struct bev *b = h->data;

	if (--b->closing == 0)
		free(b);
}

static void bev_release(struct bev *b)
{
	b->el_ev = NULL;
	if (b->have_poll) {
		uv_poll_stop(&b->poll);
		b->closing++;
		uv_close((uv_handle_t *)&b->poll, bev_closed);
	}
	if (b->have_timer) {
		uv_timer_stop(&b->timer);
		b->closing++;
		uv_close((uv_handle_t *)&b->timer, bev_closed);
	}
	if (b->closing == 0)
		free(b);
}

static void bev_on_poll(uv_poll_t *p, int status, int events)
{
	struct bev *b = p->data;

	/* on a socket error let getdns find out by reading/writing */
	if (status < 0)
		events = UV_READABLE | UV_WRITABLE;
	/* each callback may clear (b->el_ev = NULL) the event */
	if ((events & UV_READABLE) && b->el_ev && b->el_ev->read_cb)
		b->el_ev->read_cb(b->el_ev->userarg);
	if ((events & UV_WRITABLE) && b->el_ev && b->el_ev->write_cb)
		b->el_ev->write_cb(b->el_ev->userarg);
}

static void bev_on_timer(uv_timer_t *t)
{
	struct bev *b = t->data;

	if (b->el_ev && b->el_ev->timeout_cb)
		b->el_ev->timeout_cb(b->el_ev->userarg);
}

static getdns_return_t br_schedule(getdns_eventloop *l, int fd,
				   uint64_t timeout,
				   getdns_eventloop_event *ev)
{
	struct bridge *br = (struct bridge *)l;
	struct bev *b;
	int events = 0;

	b = calloc(1, sizeof(*b));
	if (b == NULL)
		return GETDNS_RETURN_MEMORY_ERROR;
	b->el_ev = ev;
	if (ev->read_cb)
		events |= UV_READABLE;
	if (ev->write_cb)
		events |= UV_WRITABLE;
	if (fd >= 0 && events) {
		if (uv_poll_init(br->loop, &b->poll, fd) != 0)
			goto fail;
		b->poll.data = b;
		b->have_poll = 1;
		if (uv_poll_start(&b->poll, events, bev_on_poll) != 0)
			goto fail;
	}
	if (ev->timeout_cb && timeout != (uint64_t)-1) {
		uv_timer_init(br->loop, &b->timer);
		b->timer.data = b;
		b->have_timer = 1;
		uv_timer_start(&b->timer, bev_on_timer, timeout, 0);
	}
	ev->ev = b;
	return GETDNS_RETURN_GOOD;
fail:
	bev_release(b);
	return GETDNS_RETURN_GENERIC_ERROR;
}

static getdns_return_t br_clear(getdns_eventloop *l, getdns_eventloop_event *ev)
{
	struct bev *b = ev->ev;

	(void)l;
	if (b == NULL)
		return GETDNS_RETURN_GOOD;
	ev->ev = NULL;
	bev_release(b);
	return GETDNS_RETURN_GOOD;
}

static void br_cleanup(getdns_eventloop *l)
{
	(void)l; /* embedded in struct mta_dns */
}

/* Only getdns's synchronous API runs the loop; mtad never uses it. */
static void br_run(getdns_eventloop *l)
{
	uv_run(((struct bridge *)l)->loop, UV_RUN_DEFAULT);
}

static void br_run_once(getdns_eventloop *l, int blocking)
{
	uv_run(((struct bridge *)l)->loop, blocking ? UV_RUN_ONCE : UV_RUN_NOWAIT);
}

static getdns_eventloop_vmt bridge_vmt = {
	br_cleanup, br_schedule, br_clear, br_run, br_run_once,
};

/* ------------------------------------------------------------------ */

struct mta_dns {
	uv_loop_t *loop;
	getdns_context *ctx;
	getdns_dict *ext;
	struct bridge bridge;
	uv_timer_t defer_timer;	     /* next-turn delivery */
	struct mta_dns_query *queries; /* every live query */
	uint32_t (*rnd)(void *arg, uint32_t bound);
	void *rnd_arg;
	unsigned timeout_ms;	     /* per getdns request, our deadline */
	int in_cb;
	int freeing;
};

enum qphase {
	PH_MAIN,  /* the lookup itself */
	PH_CNAME, /* addresses: status of the initial CNAME */
};

struct mta_dns_query {
	uv_timer_t deadline;	/* data = the query; its close frees it */
	struct mta_dns *dns;
	struct mta_dns_query *prev, *next;
	enum mta_dns_qtype qtype;
	enum qphase phase;
	char qname[DNS_QNAME_MAX];
	mta_dns_cb cb;
	void *ud;
	getdns_transaction_t tid;
	int active;	/* tid is a live getdns transaction */
	int submitting; /* inside getdns_general()/getdns_address() */
	int deferred;	/* waiting for defer_timer */
	getdns_callback_type_t dtype; /* deferred callback type */
	getdns_dict *dresp;	      /* deferred response */
	getdns_dict *main;	      /* PH_CNAME: the main response */
};

const char *mta_dns_status_name(enum mta_dns_status s)
{
	switch (s) {
	case MTA_DNS_OK:
		return "OK";
	case MTA_DNS_NODATA:
		return "NODATA";
	case MTA_DNS_NXDOMAIN:
		return "NXDOMAIN";
	case MTA_DNS_TEMPFAIL:
		return "TEMPFAIL";
	case MTA_DNS_BOGUS:
		return "BOGUS";
	}
	return "?";
}

const char *mta_dnssec_name(enum mta_dnssec s)
{
	switch (s) {
	case MTA_DNSSEC_SECURE:
		return "SECURE";
	case MTA_DNSSEC_INSECURE:
		return "INSECURE";
	case MTA_DNSSEC_BOGUS:
		return "BOGUS";
	case MTA_DNSSEC_INDETERMINATE:
		return "INDETERMINATE";
	}
	return "?";
}

/* ------------------------------------------------------------------ */
/* names */

/* Copies a presentation-form A-label name, lower-cased, without the
 * trailing dot, into out[DNS_QNAME_MAX]. */
static int name_check(const char *in, char *out)
{
	size_t n = strlen(in), label = 0;

	if (strcmp(in, ".") == 0) { /* the root (DNSSEC self-test) */
		strcpy(out, ".");
		return 0;
	}
	if (n > 0 && in[n - 1] == '.')
		n--;
	if (n == 0 || n > 253)
		return MTA_EDNS;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c <= 0x20 || c >= 0x7f || c == '\\')
			return MTA_EDNS;
		if (c == '.') {
			if (label == 0)
				return MTA_EDNS;
			label = 0;
		} else if (++label > 63) {
			return MTA_EDNS;
		}
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : (char)c;
	}
	if (label == 0)
		return MTA_EDNS;
	out[n] = '\0';
	return 0;
}

/* Wire-format name to presentation: lower-case, no trailing dot, bytes
 * outside [a-z0-9-_] as \DDD.  The root is "".  out has MTA_DNS_NAME_MAX
 * bytes (255 wire octets expand to at most 4 * 255 < 1024). */
static int name_from_wire(const getdns_bindata *b, char *out)
{
	size_t i = 0, o = 0;

	if (b == NULL || b->size == 0 || b->size > 255)
		return MTA_ECORRUPT;
	for (;;) {
		size_t len;

		if (i >= b->size)
			return MTA_ECORRUPT;
		len = b->data[i++];
		if (len == 0)
			break;
		if (len > 63 || i + len > b->size)
			return MTA_ECORRUPT;
		if (o > 0)
			out[o++] = '.';
		for (size_t k = 0; k < len; k++) {
			unsigned char c = b->data[i + k];

			if (c >= 'A' && c <= 'Z')
				c = (unsigned char)(c + 32);
			if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			    c == '-' || c == '_') {
				out[o++] = (char)c;
			} else {
				out[o++] = '\\';
				out[o++] = (char)('0' + c / 100);
				out[o++] = (char)('0' + c / 10 % 10);
				out[o++] = (char)('0' + c % 10);
			}
		}
		i += len;
	}
	out[o] = '\0';
	return 0;
}

/* ------------------------------------------------------------------ */
/* upstreams */

static int add_upstream(getdns_list *ups, const char *addr, unsigned port)
{
	uint8_t buf[16];
	getdns_bindata ad = {0, buf};
	getdns_dict *d;
	size_t n = 0;
	int v6 = strchr(addr, ':') != NULL;
	int rc = MTA_ECONFIG;

	if (inet_pton(v6 ? AF_INET6 : AF_INET, addr, buf) != 1)
		return MTA_ECONFIG;
	ad.size = v6 ? 16 : 4;
	d = getdns_dict_create();
	if (d == NULL)
		return -ENOMEM;
	if (getdns_dict_util_set_string(d, "address_type", v6 ? "IPv6" : "IPv4") ||
	    getdns_dict_set_bindata(d, "address_data", &ad) ||
	    getdns_dict_set_int(d, "port", port))
		goto out;
	getdns_list_get_length(ups, &n);
	if (getdns_list_set_dict(ups, n, d))
		goto out;
	rc = 0;
out:
	getdns_dict_destroy(d);
	return rc;
}

/* "a.b.c.d", "a.b.c.d:port", "[v6]", "[v6]:port", bare "v6" */
static int parse_one_resolver(const char *s, size_t len, getdns_list *ups)
{
	char host[64];
	const char *p, *end = s + len, *colon = NULL;
	unsigned long port = 53;
	size_t hlen;

	while (len > 0 && (*s == ' ' || *s == '\t'))
		s++, len--;
	while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end == s)
		return MTA_ECONFIG;
	if (*s == '[') {
		p = memchr(s, ']', (size_t)(end - s));
		if (p == NULL)
			return MTA_ECONFIG;
		hlen = (size_t)(p - s - 1);
		s++;
		if (p + 1 < end) {
			if (p[1] != ':')
				return MTA_ECONFIG;
			colon = p + 1;
		}
	} else {
		size_t ncolon = 0;

		for (p = s; p < end; p++)
			if (*p == ':') {
				ncolon++;
				colon = p;
			}
		if (ncolon > 1)
			colon = NULL; /* bare IPv6 */
		hlen = (size_t)((colon ? colon : end) - s);
	}
	if (hlen == 0 || hlen >= sizeof(host))
		return MTA_ECONFIG;
	memcpy(host, s, hlen);
	host[hlen] = '\0';
	if (colon != NULL) {
		char pbuf[8], *e;
		size_t plen = (size_t)(end - colon - 1);

		if (plen == 0 || plen >= sizeof(pbuf))
			return MTA_ECONFIG;
		memcpy(pbuf, colon + 1, plen);
		pbuf[plen] = '\0';
		port = strtoul(pbuf, &e, 10);
		if (*e != '\0' || port == 0 || port > 65535)
			return MTA_ECONFIG;
	}
	return add_upstream(ups, host, (unsigned)port);
}

static int parse_resolvers(const char *spec, getdns_list *ups)
{
	const char *s = spec;

	for (;;) {
		const char *c = strchr(s, ',');
		size_t len = c ? (size_t)(c - s) : strlen(s);
		int rc = parse_one_resolver(s, len, ups);

		if (rc < 0)
			return rc;
		if (c == NULL)
			return 0;
		s = c + 1;
	}
}

static int parse_resolv_conf(const char *path, getdns_list *ups)
{
	char line[512];
	FILE *f = fopen(path, "r");
	size_t n = 0;
	int rc = 0;

	if (f == NULL)
		return MTA_ECONFIG;
	while (fgets(line, sizeof(line), f) != NULL) {
		char *save = NULL, *kw, *addr;

		kw = strtok_r(line, " \t\r\n", &save);
		if (kw == NULL || strcmp(kw, "nameserver") != 0)
			continue;
		addr = strtok_r(NULL, " \t\r\n", &save);
		if (addr == NULL || strchr(addr, '%') != NULL)
			continue; /* link-local with scope: not supported */
		rc = add_upstream(ups, addr, 53);
		if (rc == -ENOMEM)
			break;
		if (rc == 0)
			n++;
		rc = 0;
	}
	fclose(f);
	if (rc == 0 && n == 0)
		rc = MTA_ECONFIG;
	return rc;
}

/* ------------------------------------------------------------------ */

static uint32_t default_random(void *arg, uint32_t bound)
{
	(void)arg;
	return arc4random_uniform(bound);
}

static void defer_run(uv_timer_t *t);

int mta_dns_init(uv_loop_t *loop, const struct mta_dns_opts *o,
		 struct mta_dns **out)
{
	struct mta_dns *dns;
	getdns_list *ups = NULL, *tas = NULL;
	const char *ta = o->trust_anchor ? o->trust_anchor : DNS_DEFAULT_TA;
	FILE *f;
	size_t nta = 0;
	int rc;

	dns = calloc(1, sizeof(*dns));
	if (dns == NULL)
		return -ENOMEM;
	dns->loop = loop;
	dns->rnd = o->random ? o->random : default_random;
	dns->rnd_arg = o->random_arg;
	dns->timeout_ms = o->timeout_ms ? o->timeout_ms : DNS_DEFAULT_TIMEOUT;

	rc = -ENOMEM;
	ups = getdns_list_create();
	if (ups == NULL)
		goto fail;
	if (o->resolver != NULL && o->resolver[0] != '\0')
		rc = parse_resolvers(o->resolver, ups);
	else
		rc = parse_resolv_conf(o->resolv_conf ? o->resolv_conf
						      : DNS_DEFAULT_RESOLV,
				       ups);
	if (rc < 0)
		goto fail;

	rc = MTA_ECONFIG;
	f = fopen(ta, "r");
	if (f == NULL)
		goto fail;
	if (getdns_fp2rr_list(f, &tas, NULL, 3600) != GETDNS_RETURN_GOOD)
		tas = NULL;
	fclose(f);
	if (tas == NULL || getdns_list_get_length(tas, &nta) || nta == 0)
		goto fail;

	rc = MTA_EDNS;
	/* 0: do not read /etc/resolv.conf and /etc/hosts */
	if (getdns_context_create(&dns->ctx, 0) != GETDNS_RETURN_GOOD) {
		dns->ctx = NULL;
		goto fail;
	}
	dns->bridge.base.vmt = &bridge_vmt;
	dns->bridge.loop = loop;
	if (getdns_context_set_resolution_type(dns->ctx,
					       GETDNS_RESOLUTION_STUB) ||
	    getdns_context_set_upstream_recursive_servers(dns->ctx, ups) ||
	    /* never reached: our deadline cancels first (see above) */
	    getdns_context_set_timeout(dns->ctx,
				       DNS_GETDNS_TIMEOUT_EXTRA +
					       2 * (uint64_t)dns->timeout_ms) ||
	    getdns_context_set_dnssec_trust_anchors(dns->ctx, tas) ||
	    (o->appdata_dir != NULL &&
	     getdns_context_set_appdata_dir(dns->ctx, o->appdata_dir)) ||
	    /* no RFC 7958 trust anchor fetching from data.iana.org */
	    getdns_context_set_trust_anchors_verify_CA(dns->ctx, "") ||
	    getdns_context_set_eventloop(dns->ctx, &dns->bridge.base))
		goto fail;

	rc = -ENOMEM;
	dns->ext = getdns_dict_create();
	if (dns->ext == NULL)
		goto fail;
	/* return_status alone silently drops bogus replies (NO_NAME): keep
	 * them with all_statuses so bogus is never read as "no data" */
	rc = MTA_EDNS;
	if (getdns_dict_set_int(dns->ext, "dnssec_return_status",
				GETDNS_EXTENSION_TRUE) ||
	    getdns_dict_set_int(dns->ext, "dnssec_return_all_statuses",
				GETDNS_EXTENSION_TRUE))
		goto fail;

	uv_timer_init(loop, &dns->defer_timer);
	dns->defer_timer.data = dns;
	getdns_list_destroy(tas);
	getdns_list_destroy(ups);
	*out = dns;
	return 0;
fail:
	if (dns->ext != NULL)
		getdns_dict_destroy(dns->ext);
	if (dns->ctx != NULL)
		getdns_context_destroy(dns->ctx);
	if (tas != NULL)
		getdns_list_destroy(tas);
	if (ups != NULL)
		getdns_list_destroy(ups);
	free(dns);
	return rc;
}

/* ------------------------------------------------------------------ */
/* result building */

enum cls {
	C_OK,
	C_NODATA,
	C_NXDOMAIN,
	C_FAIL,
};

static enum mta_dnssec sec_from_getdns(uint32_t s)
{
	switch (s) {
	case GETDNS_DNSSEC_SECURE:
		return MTA_DNSSEC_SECURE;
	case GETDNS_DNSSEC_INSECURE:
		return MTA_DNSSEC_INSECURE;
	case GETDNS_DNSSEC_BOGUS:
		return MTA_DNSSEC_BOGUS;
	default: /* INDETERMINATE, NOT_PERFORMED, unknown */
		return MTA_DNSSEC_INDETERMINATE;
	}
}

static int sec_rank(enum mta_dnssec s)
{
	switch (s) {
	case MTA_DNSSEC_SECURE:
		return 0;
	case MTA_DNSSEC_INSECURE:
		return 1;
	case MTA_DNSSEC_INDETERMINATE:
		return 2;
	case MTA_DNSSEC_BOGUS:
		return 3;
	}
	return 3;
}

static enum mta_dnssec sec_worse(enum mta_dnssec a, enum mta_dnssec b)
{
	return sec_rank(a) >= sec_rank(b) ? a : b;
}

static uint16_t rr_type_of(enum mta_dns_qtype t)
{
	switch (t) {
	case MTA_DNS_Q_MX:
		return GETDNS_RRTYPE_MX;
	case MTA_DNS_Q_TLSA:
		return GETDNS_RRTYPE_TLSA;
	case MTA_DNS_Q_TXT:
		return GETDNS_RRTYPE_TXT;
	case MTA_DNS_Q_ADDR:
		break;
	}
	return 0;
}

static int is_wanted(enum mta_dns_qtype t, uint32_t type)
{
	if (t == MTA_DNS_Q_ADDR)
		return type == GETDNS_RRTYPE_A || type == GETDNS_RRTYPE_AAAA;
	return type == rr_type_of(t);
}

/* Everything a callback gets, with the storage behind it. */
struct build {
	struct mta_dns_result r;
	char canonical[MTA_DNS_NAME_MAX];
	struct mta_dns_mx *mx;
	struct sockaddr_storage *addr;
	struct mta_dns_tlsa *tlsa;
	struct mta_dns_txt *txt;
	size_t cap; /* entries allocated in the array of the qtype */
};

static void build_fail(struct build *b, enum mta_dns_status st,
		       enum mta_dnssec sec, const char *why)
{
	b->r.status = st;
	b->r.dnssec = sec;
	b->r.why = why;
	b->r.count = 0;
	b->r.null_mx = false;
}

static int mx_cmp(const void *a, const void *b)
{
	const struct mta_dns_mx *x = a, *y = b;

	return (int)x->pref - (int)y->pref;
}

static void mx_order(struct mta_dns *dns, struct mta_dns_mx *mx, size_t n)
{
	if (n < 2)
		return;
	qsort(mx, n, sizeof(*mx), mx_cmp);
	/* RFC 5321 5.1: equal preferences in random order (Fisher-Yates per
	 * run of equal preference) */
	for (size_t s = 0; s < n;) {
		size_t e = s + 1;

		while (e < n && mx[e].pref == mx[s].pref)
			e++;
		for (size_t i = e - s; i > 1; i--) {
			size_t j = s + dns->rnd(dns->rnd_arg, (uint32_t)i);
			struct mta_dns_mx t;

			assert(j < s + i);
			t = mx[s + i - 1];
			mx[s + i - 1] = mx[j];
			mx[j] = t;
		}
		s = e;
	}
}

/* Adds the wanted records of one reply's answer section; returns the
 * number added or a negative error. */
/* Over 100 lines on purpose: one case per query type (MX, addresses,
 * TLSA, TXT), each copying its record fields with its own bounds checks
 * against the untrusted getdns dict; the cases share the loop's checks. */
static int take_answers(struct build *b, getdns_list *ans, size_t cap,
			size_t *nmx_root)
{
	size_t n = 0;
	int added = 0;

	getdns_list_get_length(ans, &n);
	for (size_t i = 0; i < n; i++) {
		getdns_dict *rr;
		uint32_t type, v;
		getdns_bindata *bd;

		if (getdns_list_get_dict(ans, i, &rr) ||
		    getdns_dict_get_int(rr, "type", &type))
			return MTA_ECORRUPT;
		if (type == GETDNS_RRTYPE_CNAME || type == GETDNS_RRTYPE_DNAME)
			b->r.cname = true;
		if (!is_wanted(b->r.qtype, type))
			continue;
		if (b->r.count >= cap)
			return MTA_ECORRUPT;
		switch (b->r.qtype) {
		case MTA_DNS_Q_MX: {
			struct mta_dns_mx *m = &b->mx[b->r.count];

			if (getdns_dict_get_int(rr, "/rdata/preference", &v) ||
			    getdns_dict_get_bindata(rr, "/rdata/exchange", &bd) ||
			    v > 65535 || name_from_wire(bd, m->host) < 0)
				return MTA_ECORRUPT;
			m->pref = (uint16_t)v;
			if (m->host[0] == '\0') {
				/* "." exchange: a null MX only when alone */
				(*nmx_root)++;
				if (v == 0)
					b->r.null_mx = true;
				continue;
			}
			break;
		}
		case MTA_DNS_Q_ADDR: {
			struct sockaddr_storage *ss = &b->addr[b->r.count];
			int v6 = type == GETDNS_RRTYPE_AAAA;

			if (getdns_dict_get_bindata(rr, v6 ? "/rdata/ipv6_address"
							   : "/rdata/ipv4_address",
						    &bd) ||
			    bd->size != (v6 ? 16u : 4u))
				return MTA_ECORRUPT;
			memset(ss, 0, sizeof(*ss));
			if (v6) {
				struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

				s6->sin6_family = AF_INET6;
				memcpy(&s6->sin6_addr, bd->data, 16);
			} else {
				struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

				s4->sin_family = AF_INET;
				memcpy(&s4->sin_addr, bd->data, 4);
			}
			break;
		}
		case MTA_DNS_Q_TLSA: {
			struct mta_dns_tlsa *t = &b->tlsa[b->r.count];
			uint32_t u, s, m;

			if (getdns_dict_get_int(rr, "/rdata/certificate_usage", &u) ||
			    getdns_dict_get_int(rr, "/rdata/selector", &s) ||
			    getdns_dict_get_int(rr, "/rdata/matching_type", &m) ||
			    getdns_dict_get_bindata(
				    rr, "/rdata/certificate_association_data", &bd) ||
			    u > 255 || s > 255 || m > 255)
				return MTA_ECORRUPT;
			t->usage = (uint8_t)u;
			t->selector = (uint8_t)s;
			t->mtype = (uint8_t)m;
			t->data = bd->data;
			t->len = bd->size;
			break;
		}
		case MTA_DNS_Q_TXT: {
			struct mta_dns_txt *t = &b->txt[b->r.count];
			getdns_list *strs;
			size_t ns = 0, len = 0;
			char *p;

			if (getdns_dict_get_list(rr, "/rdata/txt_strings", &strs) ||
			    getdns_list_get_length(strs, &ns))
				return MTA_ECORRUPT;
			for (size_t k = 0; k < ns; k++) {
				if (getdns_list_get_bindata(strs, k, &bd))
					return MTA_ECORRUPT;
				len += bd->size;
			}
			p = malloc(len + 1);
			if (p == NULL)
				return -ENOMEM;
			t->text = p;
			t->len = len;
			for (size_t k = 0; k < ns; k++) {
				getdns_list_get_bindata(strs, k, &bd);
				memcpy(p, bd->data, bd->size);
				p += bd->size;
			}
			*p = '\0';
			break;
		}
		}
		b->r.count++;
		added++;
	}
	return added;
}

/* Frees every TXT text taken, also those of a build that failed half way
 * (build_fail() zeroes count; the array is zeroed at allocation). */
static void build_free(struct build *b)
{
	if (b->txt != NULL)
		for (size_t i = 0; i < b->cap; i++)
			free((char *)b->txt[i].text);
	free(b->mx);
	free(b->addr);
	free(b->tlsa);
	free(b->txt);
}

static const char *rcode_why(uint32_t rcode)
{
	switch (rcode) {
	case GETDNS_RCODE_SERVFAIL:
		return "servfail";
	case GETDNS_RCODE_REFUSED:
		return "refused";
	case GETDNS_RCODE_FORMERR:
		return "formerr";
	case GETDNS_RCODE_NOTIMP:
		return "notimp";
	default:
		return "rcode";
	}
}

/* The status of one getdns response, from all of its replies. */
/* Over 100 lines on purpose: one pass over every reply of the response
 * that derives status, DNSSEC state and records together, because each
 * depends on the others (a bogus reply voids the records of a secure
 * one); the per-record work is in take_answers(). */
static void build_from(struct mta_dns *dns, struct mta_dns_query *q,
		       struct build *b, getdns_callback_type_t type,
		       getdns_dict *resp)
{
	getdns_list *rt;
	size_t nrep = 0, cap = 0;
	size_t nmx_root = 0;
	uint32_t status = 0;
	enum mta_dnssec sec = MTA_DNSSEC_SECURE;
	int any_ok = 0, all_nx = 1, fail = 0, rc;
	const char *why = NULL;
	getdns_bindata *cn;

	memset(b, 0, sizeof(*b));
	b->r.qtype = q->qtype;
	b->r.qname = q->qname;
	b->r.canonical = q->qname;
	b->r.initial_dnssec = MTA_DNSSEC_INDETERMINATE;

	if (type != GETDNS_CALLBACK_COMPLETE || resp == NULL) {
		build_fail(b, MTA_DNS_TEMPFAIL, MTA_DNSSEC_INDETERMINATE,
			   type == GETDNS_CALLBACK_TIMEOUT ? "timeout" : "network");
		return;
	}
	getdns_dict_get_int(resp, "status", &status);
	if (status == GETDNS_RESPSTATUS_ALL_TIMEOUT) {
		build_fail(b, MTA_DNS_TEMPFAIL, MTA_DNSSEC_INDETERMINATE,
			   "timeout");
		return;
	}
	if (getdns_dict_get_list(resp, "replies_tree", &rt) ||
	    getdns_list_get_length(rt, &nrep) || nrep == 0) {
		build_fail(b, MTA_DNS_TEMPFAIL, MTA_DNSSEC_INDETERMINATE,
			   "no reply");
		return;
	}
	/* first pass: classes, dnssec, and how many records to hold */
	for (size_t i = 0; i < nrep; i++) {
		getdns_dict *rep;
		getdns_list *ans;
		uint32_t rcode, ds;
		size_t na = 0;

		if (getdns_list_get_dict(rt, i, &rep) ||
		    getdns_dict_get_int(rep, "/header/rcode", &rcode)) {
			fail = 1;
			why = "malformed";
			continue;
		}
		if (getdns_dict_get_int(rep, "dnssec_status", &ds))
			ds = GETDNS_DNSSEC_INDETERMINATE;
		sec = sec_worse(sec, sec_from_getdns(ds));
		if (rcode == GETDNS_RCODE_NXDOMAIN)
			continue;
		all_nx = 0;
		if (rcode != GETDNS_RCODE_NOERROR) {
			fail = 1;
			why = rcode_why(rcode);
			continue;
		}
		if (getdns_dict_get_list(rep, "answer", &ans) == 0)
			getdns_list_get_length(ans, &na);
		cap += na;
	}
	if (sec == MTA_DNSSEC_BOGUS) {
		build_fail(b, MTA_DNS_BOGUS, MTA_DNSSEC_BOGUS, "dnssec-bogus");
		return;
	}
	if (fail) {
		build_fail(b, MTA_DNS_TEMPFAIL, MTA_DNSSEC_INDETERMINATE, why);
		return;
	}
	if (sec == MTA_DNSSEC_INDETERMINATE) {
		build_fail(b, MTA_DNS_TEMPFAIL, MTA_DNSSEC_INDETERMINATE,
			   "dnssec-indeterminate");
		return;
	}
	b->r.dnssec = sec;
	b->r.initial_dnssec = sec;
	if (getdns_dict_get_bindata(resp, "/replies_tree/0/canonical_name",
				    &cn) == 0 &&
	    name_from_wire(cn, b->canonical) == 0 && b->canonical[0] != '\0') {
		b->r.canonical = b->canonical;
		if (strcmp(b->canonical, q->qname) != 0)
			b->r.cname = true;
	}
	if (all_nx) {
		b->r.status = MTA_DNS_NXDOMAIN;
		b->r.why = "nxdomain";
		return;
	}

	rc = 0;
	if (cap > 0) {
		switch (q->qtype) {
		case MTA_DNS_Q_MX:
			b->mx = calloc(cap, sizeof(*b->mx));
			rc = b->mx ? 0 : -ENOMEM;
			break;
		case MTA_DNS_Q_ADDR:
			b->addr = calloc(cap, sizeof(*b->addr));
			rc = b->addr ? 0 : -ENOMEM;
			break;
		case MTA_DNS_Q_TLSA:
			b->tlsa = calloc(cap, sizeof(*b->tlsa));
			rc = b->tlsa ? 0 : -ENOMEM;
			break;
		case MTA_DNS_Q_TXT:
			b->txt = calloc(cap, sizeof(*b->txt));
			rc = b->txt ? 0 : -ENOMEM;
			break;
		}
		if (rc == 0)
			b->cap = cap;
	}
	for (size_t i = 0; rc >= 0 && i < nrep; i++) {
		getdns_dict *rep;
		getdns_list *ans;

		getdns_list_get_dict(rt, i, &rep);
		if (getdns_dict_get_list(rep, "answer", &ans) != 0)
			continue;
		rc = take_answers(b, ans, cap, &nmx_root);
		if (rc > 0)
			any_ok = 1;
	}
	if (rc < 0) {
		b->r.cname = false;
		build_fail(b, MTA_DNS_TEMPFAIL, MTA_DNSSEC_INDETERMINATE,
			   rc == -ENOMEM ? "nomem" : "malformed");
		b->r.initial_dnssec = MTA_DNSSEC_INDETERMINATE;
		return;
	}
	if (q->qtype == MTA_DNS_Q_MX) {
		/* RFC 7505: a null MX is the only MX record */
		b->r.null_mx = b->r.null_mx && nmx_root == 1 && b->r.count == 0;
		if (b->r.null_mx)
			any_ok = 1;
		mx_order(dns, b->mx, b->r.count);
	}
	b->r.mx = b->mx;
	b->r.addr = b->addr;
	b->r.tlsa = b->tlsa;
	b->r.txt = b->txt;
	b->r.status = any_ok ? MTA_DNS_OK : MTA_DNS_NODATA;
	b->r.why = any_ok ? "ok" : "nodata";
}

/* ------------------------------------------------------------------ */
/* query life cycle */

static void q_unlink(struct mta_dns_query *q)
{
	struct mta_dns *dns = q->dns;

	if (q->prev)
		q->prev->next = q->next;
	else
		dns->queries = q->next;
	if (q->next)
		q->next->prev = q->prev;
}

static void q_closed(uv_handle_t *h)
{
	free(h->data);
}

/* The query leaves the list at once; its memory goes with its timer. */
static void q_free(struct mta_dns_query *q)
{
	q_unlink(q);
	if (q->dresp)
		getdns_dict_destroy(q->dresp);
	if (q->main)
		getdns_dict_destroy(q->main);
	q->dresp = NULL;
	q->main = NULL;
	uv_timer_stop(&q->deadline);
	uv_close((uv_handle_t *)&q->deadline, q_closed);
}

static void on_getdns(getdns_context *ctx, getdns_callback_type_t type,
		      getdns_dict *resp, void *userarg,
		      getdns_transaction_t tid);

static void q_complete(struct mta_dns_query *q, getdns_callback_type_t type,
		       getdns_dict *resp);

/* Our per-request deadline: cancel the getdns request (its callback then
 * sees GETDNS_CALLBACK_CANCEL and does nothing) and complete the lookup as
 * a getdns timeout would have.  Runs on the loop, never inside getdns. */
static void q_on_deadline(uv_timer_t *t)
{
	struct mta_dns_query *q = t->data;

	if (!q->active)
		return; /* answered or already being delivered */
	q->active = 0;
	getdns_cancel_callback(q->dns->ctx, q->tid);
	q_complete(q, GETDNS_CALLBACK_TIMEOUT, NULL);
}

static int q_submit(struct mta_dns_query *q)
{
	struct mta_dns *dns = q->dns;
	getdns_return_t r;

	q->submitting = 1;
	if (q->phase == PH_CNAME)
		r = getdns_general(dns->ctx, q->qname, GETDNS_RRTYPE_CNAME,
				   dns->ext, q, &q->tid, on_getdns);
	else if (q->qtype == MTA_DNS_Q_ADDR)
		r = getdns_address(dns->ctx, q->qname, dns->ext, q, &q->tid,
				   on_getdns);
	else
		r = getdns_general(dns->ctx, q->qname, rr_type_of(q->qtype),
				   dns->ext, q, &q->tid, on_getdns);
	q->submitting = 0;
	if (r != GETDNS_RETURN_GOOD)
		return r == GETDNS_RETURN_MEMORY_ERROR ? -ENOMEM : MTA_EDNS;
	if (!q->deferred) {
		q->active = 1;
		uv_timer_start(&q->deadline, q_on_deadline, q->dns->timeout_ms,
			       0);
	}
	return 0;
}

static void q_deliver(struct mta_dns_query *q, struct build *b)
{
	struct mta_dns *dns = q->dns;

	dns->in_cb++;
	q->cb(&b->r, q->ud);
	dns->in_cb--;
	build_free(b);
	q_free(q);
}

/* A response for q (phase MAIN or CNAME) arrived on the loop. */
static void q_complete(struct mta_dns_query *q, getdns_callback_type_t type,
		       getdns_dict *resp)
{
	struct mta_dns *dns = q->dns;
	struct build b;

	if (q->phase == PH_CNAME) {
		build_from(dns, q, &b, GETDNS_CALLBACK_COMPLETE, q->main);
		/* status of the CNAME RRset at the original name: only a
		 * positive answer carries it */
		if (type == GETDNS_CALLBACK_COMPLETE && resp != NULL) {
			struct build c;

			build_from(dns, q, &c, type, resp);
			if (c.r.status == MTA_DNS_BOGUS)
				b.r.initial_dnssec = MTA_DNSSEC_BOGUS;
			else if (c.r.status == MTA_DNS_OK ||
				 c.r.status == MTA_DNS_NODATA)
				b.r.initial_dnssec = c.r.dnssec;
			build_free(&c);
		}
		if (resp)
			getdns_dict_destroy(resp);
		q_deliver(q, &b);
		return;
	}
	build_from(dns, q, &b, type, resp);
	if (q->qtype == MTA_DNS_Q_ADDR && b.r.cname &&
	    b.r.dnssec != MTA_DNSSEC_SECURE &&
	    (b.r.status == MTA_DNS_OK || b.r.status == MTA_DNS_NODATA ||
	     b.r.status == MTA_DNS_NXDOMAIN)) {
		/* getdns gives one status for the whole chain: ask for the
		 * CNAME RRset of the initial name alone */
		build_free(&b);
		q->main = resp;
		q->phase = PH_CNAME;
		if (q_submit(q) == 0)
			return;
		q->main = NULL;
		q->phase = PH_MAIN;
		build_from(dns, q, &b, type, resp);
	}
	q->main = resp; /* TLSA data points into it: free after the call */
	q_deliver(q, &b);
}

static void defer_run(uv_timer_t *t)
{
	struct mta_dns *dns = t->data;
	struct mta_dns_query *q, *next;

	/* new deferrals made by the callbacks restart the timer */
	for (q = dns->queries; q != NULL; q = next) {
		getdns_dict *resp;
		getdns_callback_type_t type;

		next = q->next;
		if (!q->deferred)
			continue;
		q->deferred = 0;
		resp = q->dresp;
		type = q->dtype;
		q->dresp = NULL;
		q_complete(q, type, resp);
		/* q_complete may free queries after q; restart the walk */
		next = dns->queries;
	}
}

static void defer(struct mta_dns_query *q, getdns_callback_type_t type,
		  getdns_dict *resp)
{
	q->deferred = 1;
	q->dtype = type;
	q->dresp = resp;
	q->active = 0;
	uv_timer_start(&q->dns->defer_timer, defer_run, 0, 0);
}

static void on_getdns(getdns_context *ctx, getdns_callback_type_t type,
		      getdns_dict *resp, void *userarg,
		      getdns_transaction_t tid)
{
	struct mta_dns_query *q = userarg;

	(void)ctx;
	(void)tid;
	if (type == GETDNS_CALLBACK_CANCEL) {
		/* only mta_dns_cancel()/mta_dns_free() cancel; they free q */
		if (resp)
			getdns_dict_destroy(resp);
		return;
	}
	q->active = 0;
	uv_timer_stop(&q->deadline);
	if (q->submitting) {
		/* never call back from inside the caller's call */
		defer(q, type, resp);
		return;
	}
	q_complete(q, type, resp);
}

static int q_start(struct mta_dns *dns, enum mta_dns_qtype qt,
		   const char *name, mta_dns_cb cb, void *ud,
		   struct mta_dns_query **qp)
{
	struct mta_dns_query *q;
	int rc;

	assert(dns != NULL && cb != NULL && !dns->freeing);
	if (name == NULL)
		return MTA_EDNS;
	q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	rc = name_check(name, q->qname);
	if (rc < 0) {
		free(q);
		return rc;
	}
	uv_timer_init(dns->loop, &q->deadline);
	q->deadline.data = q;
	q->dns = dns;
	q->qtype = qt;
	q->cb = cb;
	q->ud = ud;
	q->next = dns->queries;
	if (q->next)
		q->next->prev = q;
	dns->queries = q;
	rc = q_submit(q);
	if (rc < 0) {
		assert(!q->deferred);
		q_free(q);
		return rc;
	}
	if (qp != NULL)
		*qp = q;
	return 0;
}

int mta_dns_mx(struct mta_dns *dns, const char *domain, mta_dns_cb cb,
	       void *ud, struct mta_dns_query **qp)
{
	return q_start(dns, MTA_DNS_Q_MX, domain, cb, ud, qp);
}

int mta_dns_addr(struct mta_dns *dns, const char *host, mta_dns_cb cb,
		 void *ud, struct mta_dns_query **qp)
{
	return q_start(dns, MTA_DNS_Q_ADDR, host, cb, ud, qp);
}

int mta_dns_tlsa(struct mta_dns *dns, const char *owner, mta_dns_cb cb,
		 void *ud, struct mta_dns_query **qp)
{
	return q_start(dns, MTA_DNS_Q_TLSA, owner, cb, ud, qp);
}

int mta_dns_txt(struct mta_dns *dns, const char *name, mta_dns_cb cb,
		void *ud, struct mta_dns_query **qp)
{
	return q_start(dns, MTA_DNS_Q_TXT, name, cb, ud, qp);
}

void mta_dns_cancel(struct mta_dns_query *q)
{
	if (q->active) {
		q->active = 0;
		getdns_cancel_callback(q->dns->ctx, q->tid);
	}
	q_free(q);
}

static void dns_closed(uv_handle_t *h)
{
	free(h->data);
}

void mta_dns_free(struct mta_dns *dns)
{
	if (dns == NULL)
		return;
	/* getdns asserts when its context dies while it dispatches */
	assert(dns->in_cb == 0);
	dns->freeing = 1;
	while (dns->queries != NULL)
		mta_dns_cancel(dns->queries);
	getdns_dict_destroy(dns->ext);
	getdns_context_destroy(dns->ctx); /* clears events: uv_close */
	uv_timer_stop(&dns->defer_timer);
	uv_close((uv_handle_t *)&dns->defer_timer, dns_closed);
}
