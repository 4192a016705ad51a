/*
 * health.h - the routes of the HTTP endpoint: /healthz, /readyz, /metrics.
 *
 * DESCRIPTION
 *	mtad_health_handle() is the mtad_http_params.handle of the daemon
 *	(arg: a struct mtad_health).
 *	  /healthz  200 "ok": the loop runs (it answered).
 *	  /readyz   200 "ready" when every check passes, else 503 with one
 *	            line per failing check: the spool is open and no damage
 *	            was seen (mta_spool_corrupt()); the listeners are bound
 *	            and accepting (not draining after SIGTERM); the DNSSEC
 *	            self-test has run and passes; the writer thread is not
 *	            stuck (no commit running longer than
 *	            MTAD_HEALTH_WRITER_STUCK_S).
 *	  /metrics  the registry (libmta/metrics.h) with the gauges read
 *	            now: queue depth by state (the spool's running totals,
 *	            held entries, messages in delivery), oldest message age,
 *	            LMDB map use, MTA-STS policies cached, self-test state.
 *	  else      404.
 *
 * THREADS
 *	Loop thread.
 *
 * OWNERSHIP
 *	struct mtad_health is the daemon's; its pointers are borrowed.
 */
#ifndef MTAD_HEALTH_H
#define MTAD_HEALTH_H

#include "delivery.h"
#include "http.h"
#include "metrics.h"
#include "spool.h"

#include <stdbool.h>

#define MTAD_HEALTH_WRITER_STUCK_S 30

struct mtad_health {
	struct mta_spool *spool;
	struct mta_metrics *metrics;
	struct mta_delivery *const *delivery; /* *delivery NULL: stopped */
	const bool *accepting; /* listeners bound, not draining */
};

void mtad_health_handle(void *arg, const char *path,
			struct mtad_http_reply *r);

#endif
