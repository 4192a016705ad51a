/*
 * dns_probe - resolve names through mta_dns and print one JSON object per
 * result (tests/integration/test_dns.py drives it against the DNS lab).
 *
 *   dns_probe [-r RESOLVER] [-t TRUST_ANCHOR] [-a APPDATA] [-T TIMEOUT_MS]
 *             [-s SEED] [-n REPEAT] [-C | -F] TYPE NAME [TYPE NAME ...]
 *
 *   TYPE    mx, addr, tlsa or txt
 *   -s      shuffle equal MX preferences with a seeded xorshift (printed)
 *           instead of arc4random
 *   -n      start every lookup REPEAT times (all concurrently)
 *   -C      cancel every lookup right after starting it (no output)
 *   -F      mta_dns_free() with every lookup outstanding (no output)
 *
 * A lookup the API refuses prints {"qtype":..,"qname":..,"error":NAME}.
 * Exit 0 when every started lookup called back exactly once (none for -C
 * and -F) and the loop closed with no handle left; 1 otherwise.
 */
#include "dns.h"
#include "err.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int started, answered, extra_calls;

static void json_str(const char *s, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static const char *qtype_name(enum mta_dns_qtype t)
{
	static const char *const n[] = {"MX", "ADDR", "TLSA", "TXT"};

	return n[t];
}

static void on_result(const struct mta_dns_result *r, void *ud)
{
	int *called = ud;

	if ((*called)++ != 0)
		extra_calls++;
	answered++;
	printf("{\"qtype\":\"%s\",\"qname\":", qtype_name(r->qtype));
	json_str(r->qname, strlen(r->qname));
	printf(",\"status\":\"%s\",\"dnssec\":\"%s\",\"why\":\"%s\"",
	       mta_dns_status_name(r->status), mta_dnssec_name(r->dnssec),
	       r->why ? r->why : "");
	printf(",\"canonical\":");
	json_str(r->canonical, strlen(r->canonical));
	printf(",\"cname\":%s,\"initial_dnssec\":\"%s\",\"null_mx\":%s",
	       r->cname ? "true" : "false", mta_dnssec_name(r->initial_dnssec),
	       r->null_mx ? "true" : "false");
	printf(",\"count\":%zu,\"records\":[", r->count);
	for (size_t i = 0; i < r->count; i++) {
		if (i)
			putchar(',');
		switch (r->qtype) {
		case MTA_DNS_Q_MX:
			printf("{\"pref\":%u,\"host\":", r->mx[i].pref);
			json_str(r->mx[i].host, strlen(r->mx[i].host));
			putchar('}');
			break;
		case MTA_DNS_Q_ADDR: {
			char buf[INET6_ADDRSTRLEN];
			const struct sockaddr_storage *ss = &r->addr[i];

			if (ss->ss_family == AF_INET)
				inet_ntop(AF_INET,
					  &((const struct sockaddr_in *)ss)->sin_addr,
					  buf, sizeof(buf));
			else
				inet_ntop(AF_INET6,
					  &((const struct sockaddr_in6 *)ss)->sin6_addr,
					  buf, sizeof(buf));
			printf("\"%s\"", buf);
			break;
		}
		case MTA_DNS_Q_TLSA:
			printf("{\"usage\":%u,\"selector\":%u,\"mtype\":%u,\"data\":\"",
			       r->tlsa[i].usage, r->tlsa[i].selector,
			       r->tlsa[i].mtype);
			for (size_t k = 0; k < r->tlsa[i].len; k++)
				printf("%02x", r->tlsa[i].data[k]);
			printf("\"}");
			break;
		case MTA_DNS_Q_TXT:
			json_str(r->txt[i].text, r->txt[i].len);
			break;
		}
	}
	printf("]}\n");
	fflush(stdout);
}

static uint64_t xs_state;

static uint32_t xs_random(void *arg, uint32_t bound)
{
	(void)arg;
	xs_state ^= xs_state << 13;
	xs_state ^= xs_state >> 7;
	xs_state ^= xs_state << 17;
	return (uint32_t)(xs_state % bound);
}

static void on_free_timer(uv_timer_t *t)
{
	mta_dns_free(t->data);
	uv_close((uv_handle_t *)t, NULL);
}

static void walk_cb(uv_handle_t *h, void *arg)
{
	(void)arg;
	fprintf(stderr, "dns_probe: handle left open: %s\n",
		uv_handle_type_name(h->type));
}

int main(int argc, char **argv)
{
	struct mta_dns_opts o = {0};
	struct mta_dns *dns;
	uv_loop_t loop;
	uv_timer_t free_timer;
	int opt, rc, repeat = 1, cancel = 0, free_early = 0, status = 0;
	int *called;
	size_t nq;

	while ((opt = getopt(argc, argv, "r:t:a:T:s:n:CF")) != -1) {
		switch (opt) {
		case 'r':
			o.resolver = optarg;
			break;
		case 't':
			o.trust_anchor = optarg;
			break;
		case 'a':
			o.appdata_dir = optarg;
			break;
		case 'T':
			o.timeout_ms = (unsigned)atoi(optarg);
			break;
		case 's':
			xs_state = strtoull(optarg, NULL, 10) | 1;
			fprintf(stderr, "dns_probe: seed %s\n", optarg);
			o.random = xs_random;
			break;
		case 'n':
			repeat = atoi(optarg);
			break;
		case 'C':
			cancel = 1;
			break;
		case 'F':
			free_early = 1;
			break;
		default:
			fprintf(stderr, "usage: see tests/dns_probe.c\n");
			return 2;
		}
	}
	if (optind >= argc || (argc - optind) % 2 != 0 || repeat < 1) {
		fprintf(stderr, "dns_probe: TYPE NAME pairs expected\n");
		return 2;
	}
	nq = (size_t)(argc - optind) / 2 * (size_t)repeat;
	called = calloc(nq, sizeof(*called));
	if (called == NULL || uv_loop_init(&loop) != 0)
		return 1;
	rc = mta_dns_init(&loop, &o, &dns);
	if (rc < 0) {
		fprintf(stderr, "dns_probe: mta_dns_init: %s (%s)\n",
			mta_errname(rc), mta_strerror(rc));
		return 1;
	}
	for (int rep = 0, k = 0; rep < repeat; rep++) {
		for (int i = optind; i < argc; i += 2, k++) {
			const char *t = argv[i], *name = argv[i + 1];
			struct mta_dns_query *q = NULL;

			if (strcmp(t, "mx") == 0)
				rc = mta_dns_mx(dns, name, on_result, &called[k], &q);
			else if (strcmp(t, "addr") == 0)
				rc = mta_dns_addr(dns, name, on_result, &called[k], &q);
			else if (strcmp(t, "tlsa") == 0)
				rc = mta_dns_tlsa(dns, name, on_result, &called[k], &q);
			else if (strcmp(t, "txt") == 0)
				rc = mta_dns_txt(dns, name, on_result, &called[k], &q);
			else {
				fprintf(stderr, "dns_probe: bad type %s\n", t);
				return 2;
			}
			if (rc < 0) {
				printf("{\"qtype\":\"%s\",\"qname\":", t);
				json_str(name, strlen(name));
				printf(",\"error\":\"%s\"}\n", mta_errname(rc));
				continue;
			}
			started++;
			if (cancel) {
				mta_dns_cancel(q);
				started--;
			}
		}
	}
	if (free_early) {
		uv_timer_init(&loop, &free_timer);
		free_timer.data = dns;
		uv_timer_start(&free_timer, on_free_timer, 5, 0);
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	if (!free_early) {
		mta_dns_free(dns);
		uv_run(&loop, UV_RUN_DEFAULT);
	}
	if (uv_loop_close(&loop) != 0) {
		uv_walk(&loop, walk_cb, NULL);
		status = 1;
	}
	if ((!free_early && answered != started) || extra_calls != 0) {
		fprintf(stderr, "dns_probe: %d started, %d callbacks, %d extra\n",
			started, answered, extra_calls);
		status = 1;
	}
	free(called);
	return status;
}
