/* Unit tests of the scheduler's pure decisions (libmta/queue.c): backoff,
 * destinations, outcome application, queue lifetime (CLI-07). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "queue.h"

#define SEC 1000000LL

static const struct mta_queue_policy pol = {
	.min_backoff_us = 300 * SEC,
	.max_backoff_us = 4000 * SEC,
	.queue_lifetime_us = 5 * 86400 * SEC,
	.jitter_permille = 0,
};

static void backoff_doubles_and_caps(void **st)
{
	(void)st;
	assert_int_equal(mta_queue_backoff(&pol, 1, 0), 300 * SEC);
	assert_int_equal(mta_queue_backoff(&pol, 2, 0), 600 * SEC);
	assert_int_equal(mta_queue_backoff(&pol, 3, 0), 1200 * SEC);
	assert_int_equal(mta_queue_backoff(&pol, 4, 0), 2400 * SEC);
	assert_int_equal(mta_queue_backoff(&pol, 5, 0), 4000 * SEC);
	assert_int_equal(mta_queue_backoff(&pol, 60, 0), 4000 * SEC);
}

static void backoff_jitter_bounded(void **st)
{
	struct mta_queue_policy p = pol;
	(void)st;
	p.jitter_permille = 100;
	for (uint32_t r = 0; r < 2000; r += 37) {
		uint64_t d = mta_queue_backoff(&p, 1, r);
		assert_true(d >= 270 * SEC && d <= 330 * SEC);
	}
	assert_true(mta_queue_backoff(&p, 1, 0) < 300 * SEC);
	assert_true(mta_queue_backoff(&p, 1, 1999) > 300 * SEC);
}

static void destination_domain_or_relayhost(void **st)
{
	struct mta_rcpt r = {.addr = "Bob@Example.NET"};
	char out[64];
	(void)st;
	assert_int_equal(mta_queue_destination(&r, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "example.net");
	assert_int_equal(mta_queue_destination(&r, "", out, sizeof(out)), 0);
	assert_string_equal(out, "example.net");
	assert_int_equal(
		mta_queue_destination(&r, "Smart.Host:587", out, sizeof(out)),
		0);
	assert_string_equal(out, "smart.host:587");
	assert_int_not_equal(mta_queue_destination(&r, NULL, out, 5), 0);
}

static struct mta_envelope make_env(int64_t arrival)
{
	struct mta_envelope e;
	mta_envelope_init(&e);
	e.arrival_us = arrival;
	assert_non_null(mta_envelope_add_rcpt(&e, "a@x.test", NULL, NULL, 0));
	assert_non_null(mta_envelope_add_rcpt(&e, "b@x.test", NULL, NULL, 0));
	assert_non_null(mta_envelope_add_rcpt(&e, "c@x.test", NULL, NULL, 0));
	return e;
}

/* CLI-05: 2xx sent, 4xx deferred with backoff, 5xx bounced */
static void apply_outcomes(void **st)
{
	int64_t t0 = 1000 * SEC;
	struct mta_envelope e = make_env(t0);
	struct mta_queue_outcome ok = {250, "2.0.0", "250 2.0.0 ok", "mx[1.2.3.4]:25"};
	struct mta_queue_outcome tmp = {450, "4.2.0", "450 4.2.0 later", "mx[1.2.3.4]:25"};
	struct mta_queue_outcome bad = {550, "5.1.1", "550 5.1.1 no user", "mx[1.2.3.4]:25"};
	char fs[16];
	(void)st;

	assert_int_equal(mta_queue_apply(&pol, &e, 0, &ok, t0, 0, fs, sizeof(fs)),
			 MTA_RCPT_SENT);
	assert_string_equal(fs, "2.0.0");
	assert_int_equal(mta_queue_apply(&pol, &e, 1, &tmp, t0, 0, fs, sizeof(fs)),
			 MTA_RCPT_DEFERRED);
	assert_int_equal(e.rcpts[1].next_attempt_us, t0 + 300 * SEC);
	assert_int_equal(mta_queue_apply(&pol, &e, 2, &bad, t0, 0, fs, sizeof(fs)),
			 MTA_RCPT_BOUNCED);
	assert_string_equal(fs, "5.1.1");
	assert_string_equal(e.rcpts[2].last_response, "550 5.1.1 no user");
	assert_string_equal(e.rcpts[2].relay, "mx[1.2.3.4]:25");
	assert_int_equal(e.rcpts[0].attempts, 1);
	assert_int_equal(mta_queue_next_due(&e), t0 + 300 * SEC);
	assert_false(mta_queue_due(&e.rcpts[1], t0 + 299 * SEC));
	assert_true(mta_queue_due(&e.rcpts[1], t0 + 300 * SEC));
	/* second temporary failure waits twice as long */
	assert_int_equal(mta_queue_apply(&pol, &e, 1, &tmp, t0 + 300 * SEC, 0,
					 fs, sizeof(fs)),
			 MTA_RCPT_DEFERRED);
	assert_int_equal(e.rcpts[1].next_attempt_us, t0 + 900 * SEC);
	mta_envelope_free(&e);
}

/* CLI-07: after queue_lifetime a temporary failure becomes permanent */
static void lifetime_turns_temporary_into_bounce(void **st)
{
	int64_t t0 = 1000 * SEC;
	struct mta_envelope e = make_env(t0);
	struct mta_queue_outcome tls = {0, "4.7.5", "TLSA records did not match", NULL};
	struct mta_queue_outcome none = {0, NULL, "connection refused", NULL};
	char fs[16];
	(void)st;

	assert_int_equal(mta_queue_apply(&pol, &e, 0, &tls,
					 t0 + 5 * 86400 * SEC - 1, 0, fs,
					 sizeof(fs)),
			 MTA_RCPT_DEFERRED);
	assert_int_equal(mta_queue_apply(&pol, &e, 0, &tls,
					 t0 + 5 * 86400 * SEC, 0, fs,
					 sizeof(fs)),
			 MTA_RCPT_BOUNCED);
	assert_string_equal(fs, "5.7.5");
	assert_int_equal(mta_queue_apply(&pol, &e, 1, &none,
					 t0 + 6 * 86400 * SEC, 0, fs,
					 sizeof(fs)),
			 MTA_RCPT_BOUNCED);
	assert_string_equal(fs, "5.0.0");
	/* clock going backwards never bounces */
	assert_int_equal(mta_queue_apply(&pol, &e, 2, &tls, t0 - 10 * SEC, 0,
					 fs, sizeof(fs)),
			 MTA_RCPT_DEFERRED);
	mta_envelope_free(&e);
}

/* DNS and policy outcomes carry no reply code: the status class decides */
static void status_class_without_code(void **st)
{
	struct mta_envelope e = make_env(0);
	struct mta_queue_outcome nx = {0, "5.1.2", "domain not found", NULL};
	struct mta_queue_outcome dns = {0, "4.4.3", "servfail", NULL};
	char fs[16];
	(void)st;
	assert_int_equal(mta_queue_apply(&pol, &e, 0, &nx, 10, 0, fs, sizeof(fs)),
			 MTA_RCPT_BOUNCED);
	assert_string_equal(fs, "5.1.2");
	assert_int_equal(mta_queue_apply(&pol, &e, 1, &dns, 10, 0, fs, sizeof(fs)),
			 MTA_RCPT_DEFERRED);
	mta_envelope_free(&e);
}

static void next_due_none_when_finished(void **st)
{
	struct mta_envelope e = make_env(0);
	(void)st;
	for (size_t i = 0; i < e.nrcpt; i++)
		e.rcpts[i].state = i == 0 ? MTA_RCPT_SENT : MTA_RCPT_BOUNCED;
	assert_int_equal(mta_queue_next_due(&e), -1);
	e.rcpts[2].state = MTA_RCPT_QUEUED;
	e.rcpts[2].next_attempt_us = 42;
	assert_int_equal(mta_queue_next_due(&e), 42);
	mta_envelope_free(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(backoff_doubles_and_caps),
		cmocka_unit_test(backoff_jitter_bounded),
		cmocka_unit_test(destination_domain_or_relayhost),
		cmocka_unit_test(apply_outcomes),
		cmocka_unit_test(lifetime_turns_temporary_into_bounce),
		cmocka_unit_test(status_class_without_code),
		cmocka_unit_test(next_due_none_when_finished),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
