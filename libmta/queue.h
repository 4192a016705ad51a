/*
 * queue.h - the scheduler's decisions, as pure functions.
 *
 * DESCRIPTION
 *	The delivery driver (delivery.c) owns sockets, timers and the spool;
 *	everything it decides about time and state is here, free of I/O and
 *	clock so unit tests pin it exactly.
 *
 *	mta_queue_backoff() is the wait before attempt number attempts+1:
 *	min_backoff doubled per earlier attempt, capped at max_backoff, then
 *	spread by +-rnd_permille/1000 of itself (jitter from the caller's
 *	random value in [0, 2000)) so messages that failed together do not
 *	retry together.
 *
 *	mta_queue_destination() names the destination a recipient is delivered
 *	through: the relayhost when one is configured, else the lower-cased
 *	domain of the address ("" when it has none).  Written into out
 *	(NUL-terminated, at most len bytes); MTA_ETOOBIG if it does not fit.
 *
 *	mta_queue_pending() says whether recipient r still needs an attempt
 *	(queued or deferred) and mta_queue_due() whether that attempt is due
 *	at now.
 *
 *	mta_queue_apply() records the outcome of one attempt for recipient r:
 *	a 2xx reply makes it sent; a 5xx bounced; a 4xx deferred (without a
 *	reply, code 0, the class of status decides the same way; no status
 *	either means 4.0.0) with next_attempt = now + backoff, unless the message is
 *	older than queue_lifetime, in which case it is bounced with the
 *	temporary status turned permanent (4.x.y -> 5.x.y; 5.4.7 when there
 *	was none).  The reason text and relay are copied into the recipient.
 *	Returns the resulting state, or -ENOMEM (state unchanged).
 *
 *	mta_queue_next_due() is the earliest next attempt over the pending
 *	recipients, or -1 when none is pending (the message is finished and
 *	can leave the spool).
 *
 * THREADS
 *	Any.
 *
 * STANDARDS
 *	RFC 5321 §4.5.4.1 (retry interval, give-up time, configurable),
 *	CLI-07.
 */
#ifndef MTA_QUEUE_H
#define MTA_QUEUE_H

#include "envelope.h"

#include <stdbool.h>
#include <stdint.h>

struct mta_queue_policy {
	uint64_t min_backoff_us;
	uint64_t max_backoff_us;
	uint64_t queue_lifetime_us;
	unsigned jitter_permille; /* e.g. 100 = +-10 % */
};

struct mta_queue_outcome {
	int code;	    /* SMTP reply code, 0 = none (connection/DNS) */
	const char *status; /* enhanced status "4.4.1" */
	const char *text;   /* reply text or our reason */
	const char *relay;  /* "host[ip]:port" or NULL */
};

uint64_t mta_queue_backoff(const struct mta_queue_policy *p,
			   uint32_t attempts, uint32_t rnd);
int mta_queue_destination(const struct mta_rcpt *r, const char *relayhost,
			  char *out, size_t len);
bool mta_queue_pending(const struct mta_rcpt *r);
bool mta_queue_due(const struct mta_rcpt *r, int64_t now_us);
int mta_queue_apply(const struct mta_queue_policy *p, struct mta_envelope *e,
		    size_t r, const struct mta_queue_outcome *o,
		    int64_t now_us, uint32_t rnd, char *final_status,
		    size_t status_len);
int64_t mta_queue_next_due(const struct mta_envelope *e);

#endif
