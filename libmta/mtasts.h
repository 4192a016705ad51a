/*
 * mtasts.h - MTA-STS (RFC 8461) for the delivery engine: discovery, the
 * persistent policy cache, fetching, and the proactive refresher.
 *
 * DESCRIPTION
 *	mta_mtasts_start() creates the resolver on the loop; it owns a curl
 *	fetcher (sts_fetch.h) and a refresher timer.
 *
 *	mta_mtasts_lookup(m, domain, cb, ud, &q) finds the policy in force for
 *	a destination domain and calls cb once with the result:
 *	  1. TXT "_mta-sts.<domain>" (sts.h: exactly one "v=STSv1" record
 *	     with a valid id, else no policy; SERVFAIL/bogus = tempfail);
 *	  2. the cached record of the domain in the spool;
 *	  3. mta_sts_cache_decide(): use the cached policy (same id, or the
 *	     TXT record gone or failing while the cache is unexpired:
 *	     STS-13/14b), fetch (no or expired cache: a failed fetch means no
 *	     policy), or fetch keeping the old policy if the fetch fails (id
 *	     changed: STS-61/62);
 *	  4. a fetch resolves mta-sts.<domain> through our DNS (the same path
 *	     as everything else) and GETs the policy over HTTPS, WebPKI-
 *	     validated against tls.ca_file, no redirects, no caching;
 *	  5. a fetched policy with max_age > 0 is stored in the cache through
 *	     the writer (fire and forget: the lookup does not wait).
 *	Every lookup queries the TXT record again, so the policy id is
 *	re-checked before every attempt, in particular before the attempt
 *	whose failure ends in a bounce (STS-111).
 *
 *	The refresher walks the cache every mta_sts.refresh_interval and
 *	refetches each policy whose mta_sts_refresh_due() says so (RFC 8461
 *	§10.2: before it expires, with jitter), keeping the old one when the
 *	fetch fails.  Expired entries that could not be renewed are deleted.
 *
 *	mta_mtasts_stop() cancels lookups (their callbacks are not called)
 *	and the refresher, waits for cache writes handed to the writer, then
 *	calls done; the caller then runs the loop until handles close.
 *
 * LOG
 *	event=sts_policy (domain, id, mode, source=cache|fetch), event=
 *	sts_fetch_failed (domain, status, why), event=sts_refresh.
 *
 * THREADS
 *	Loop thread.
 *
 * ASYNC CONTRACT
 *	mta_mtasts_lookup() returns an error and never calls cb, or returns 0
 *	and calls cb exactly once (unless cancelled with mta_mtasts_cancel()).
 *
 * STANDARDS
 *	RFC 8461 §3, §4, §5, §10.2; conformance STS-*.
 */
#ifndef MTA_MTASTS_H
#define MTA_MTASTS_H

#include "dns.h"
#include "metrics.h"
#include "spool.h"
#include "sts.h"
#include "writer.h"

#include <stdbool.h>
#include <uv.h>

struct mta_mtasts;
struct mta_mtasts_query;

struct mta_mtasts_params {
	uv_loop_t *loop;
	struct mta_dns *dns;
	struct mta_spool *spool;
	struct mta_writer *writer;
	const char *ca_file;
	unsigned https_port;
	unsigned refresh_interval; /* seconds */
	struct mta_metrics *metrics; /* fetch results (metrics.h), or NULL */
};

struct mta_mtasts_result {
	bool have; /* a policy is in force */
	const struct mta_sts_policy *policy; /* valid during the callback */
	const char *id;
	const char *why; /* no policy: why (log) */
};

typedef void (*mta_mtasts_cb)(const struct mta_mtasts_result *r, void *ud);

int mta_mtasts_start(const struct mta_mtasts_params *p,
		     struct mta_mtasts **out);
int mta_mtasts_lookup(struct mta_mtasts *m, const char *domain,
		      mta_mtasts_cb cb, void *ud, struct mta_mtasts_query **q);
/* Like lookup, but as the refresher does it: a cached policy is fetched
 * again even when its id is unchanged, and kept if that fetch fails
 * (mtactl policy refresh).  The new record is handed to the writer
 * before cb is called. */
int mta_mtasts_refresh(struct mta_mtasts *m, const char *domain,
		       mta_mtasts_cb cb, void *ud, struct mta_mtasts_query **q);
void mta_mtasts_cancel(struct mta_mtasts_query *q);
/* Reload: fetches started from now on trust ca_file (borrowed until the
 * next call or stop). */
void mta_mtasts_set_ca_file(struct mta_mtasts *m, const char *ca_file);
void mta_mtasts_stop(struct mta_mtasts *m, void (*done)(void *arg),
		     void *arg);

#endif
