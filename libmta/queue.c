#include "queue.h"

#include "err.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

uint64_t mta_queue_backoff(const struct mta_queue_policy *p,
			   uint32_t attempts, uint32_t rnd)
{
	uint64_t d = p->min_backoff_us;

	for (uint32_t i = 1; i < attempts && d < p->max_backoff_us; i++)
		d *= 2;
	if (d > p->max_backoff_us)
		d = p->max_backoff_us;
	if (p->jitter_permille > 0) {
		/* rnd in [0, 2000): -1000..+999 permille of the jitter */
		int64_t r = (int64_t)(rnd % 2000) - 1000;
		int64_t j = (int64_t)(d / 1000) * p->jitter_permille / 1000 * r;
		if (j < 0 && (uint64_t)(-j) >= d)
			j = 0;
		d = (uint64_t)((int64_t)d + j);
	}
	return d;
}

int mta_queue_destination(const struct mta_rcpt *r, const char *relayhost,
			  char *out, size_t len)
{
	const char *src = "";
	size_t n;

	if (relayhost != NULL && relayhost[0] != '\0') {
		src = relayhost;
	} else {
		const char *at = strrchr(r->addr, '@');
		if (at != NULL)
			src = at + 1;
	}
	n = strlen(src);
	if (n + 1 > len)
		return MTA_ETOOBIG;
	for (size_t i = 0; i < n; i++)
		out[i] = (char)tolower((unsigned char)src[i]);
	out[n] = '\0';
	return 0;
}

bool mta_queue_pending(const struct mta_rcpt *r)
{
	return r->state == MTA_RCPT_QUEUED || r->state == MTA_RCPT_DEFERRED;
}

bool mta_queue_due(const struct mta_rcpt *r, int64_t now_us)
{
	return mta_queue_pending(r) && r->next_attempt_us <= now_us;
}

/* 4.x.y -> 5.x.y in place; anything unusable -> 5.4.7 */
static void make_permanent(char *status, size_t len)
{
	if ((status[0] == '4' || status[0] == '5') && status[1] == '.')
		status[0] = '5';
	else
		snprintf(status, len, "5.4.7");
}

int mta_queue_apply(const struct mta_queue_policy *p, struct mta_envelope *e,
		    size_t r, const struct mta_queue_outcome *o,
		    int64_t now_us, uint32_t rnd, char *final_status,
		    size_t status_len)
{
	struct mta_rcpt *rc = &e->rcpts[r];
	char status[16];
	char text[1024];
	enum mta_rcpt_state state;

	snprintf(status, sizeof(status), "%s",
		 o->status != NULL ? o->status
				   : (o->code >= 500   ? "5.0.0"
				      : o->code >= 200 && o->code < 300
					      ? "2.0.0"
					      : "4.0.0"));
	/* the reply code decides; without one (DNS, connection, policy),
	 * the class of the status does */
	int cls = o->code > 0 ? o->code / 100 : status[0] - '0';
	if (cls == 2) {
		state = MTA_RCPT_SENT;
	} else if (cls == 5) {
		state = MTA_RCPT_BOUNCED;
	} else if (now_us > e->arrival_us &&
		   (uint64_t)(now_us - e->arrival_us) >= p->queue_lifetime_us) {
		state = MTA_RCPT_BOUNCED;
		make_permanent(status, sizeof(status));
	} else {
		state = MTA_RCPT_DEFERRED;
	}
	snprintf(text, sizeof(text), "%s", o->text ? o->text : "");
	if (mta_envelope_set_str(&rc->last_response, text) != 0 ||
	    mta_envelope_set_str(&rc->relay, o->relay) != 0)
		return -ENOMEM;
	rc->attempts++;
	rc->state = state;
	if (state == MTA_RCPT_DEFERRED)
		rc->next_attempt_us =
			now_us + (int64_t)mta_queue_backoff(p, rc->attempts, rnd);
	if (final_status != NULL)
		snprintf(final_status, status_len, "%s", status);
	return state;
}

int64_t mta_queue_next_due(const struct mta_envelope *e)
{
	int64_t best = -1;

	for (size_t i = 0; i < e->nrcpt; i++) {
		const struct mta_rcpt *r = &e->rcpts[i];
		if (!mta_queue_pending(r))
			continue;
		if (best < 0 || r->next_attempt_us < best)
			best = r->next_attempt_us;
	}
	return best;
}
