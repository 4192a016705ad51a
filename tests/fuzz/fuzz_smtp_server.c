/*
 * fuzz_smtp_server.c - libFuzzer target for the SMTP server engine.
 *
 * Drives mta_smtpd like mtad's listener: the first input byte picks the
 * feed window sizes (and whether output is drained eagerly), the rest is
 * the client's byte stream.  MESSAGE is answered alternately with 0 and
 * MTA_EMAPFULL; STARTTLS is followed by tls_started(); CLOSE ends.
 *
 * Invariants checked (abort() on violation):
 *  - every reply line is 3 digits, then ' ' or '-', and ends in CRLF,
 *    with no other CR or LF; a multi-line reply keeps its code;
 *  - *consumed <= len; BODY slices are non-empty and inside the input or
 *    the engine; a REJECT/ABORT carries a 4xx/5xx (ABORT: 2xx after
 *    RSET/EHLO) code equal to its text's;
 *  - the engine never stays blocked once its output is drained;
 *  - the body emitted for a message never exceeds max_message_size and
 *    equals the envelope's size; a completed body holds no bare CR, bare
 *    LF or NUL; events come in a sane order (DATA_START, BODY...,
 *    MESSAGE or ABORT).
 */
#include "smtp_server.h"

#include "err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                          \
	do {                                                              \
		if (!(c)) {                                               \
			fprintf(stderr, "invariant failed: %s (line %d)\n", \
				#c, __LINE__);                            \
			abort();                                          \
		}                                                         \
	} while (0)

struct fz {
	char line[8192];
	size_t llen;
	int multi_code; /* code of an open multi-line reply, or 0 */
	uint64_t body, max;
	uint8_t prev;
	bool bare_cr; /* allowed only in a body that ends in ABORT */
	bool in_msg;
};

static void check_out(struct mta_smtpd *s, struct fz *f, size_t keep)
{
	const uint8_t *p;
	size_t n = mta_smtpd_output(s, &p);

	if (n <= keep)
		return;
	n -= keep;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = p[i];
		CHECK(f->llen < sizeof(f->line));
		f->line[f->llen++] = (char)c;
		if (c != '\n')
			continue;
		/* one complete line */
		const char *l = f->line;
		size_t len = f->llen;
		CHECK(len >= 6);
		CHECK(l[len - 2] == '\r');
		for (size_t k = 0; k < len - 2; k++)
			CHECK(l[k] != '\r' && l[k] != '\n');
		CHECK(l[0] >= '2' && l[0] <= '5');
		CHECK(l[1] >= '0' && l[1] <= '9');
		CHECK(l[2] >= '0' && l[2] <= '9');
		CHECK(l[3] == ' ' || l[3] == '-');
		int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
		if (f->multi_code != 0)
			CHECK(code == f->multi_code);
		f->multi_code = l[3] == '-' ? code : 0;
		f->llen = 0;
	}
	mta_smtpd_output_consume(s, n);
}

static void body_bytes(struct fz *f, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t c = p[i];
		/* only CRLF-clean content is ever passed on: a bare CR can be
		 * emitted before the byte that shows it is bare, so check LF
		 * and NUL here and CR-then-non-LF below */
		CHECK(c != '\0');
		if (c == '\n')
			CHECK(f->prev == '\r');
		if (f->prev == '\r' && c != '\n')
			f->bare_cr = true;
		f->prev = c;
		f->body++;
	}
	CHECK(f->max == 0 || f->body <= f->max);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct mta_smtpd s;
	struct mta_smtpd_config cfg = {
		.hostname = "mx.fuzz",
		.max_message_size = 4096,
		.max_recipients = 5,
		.relay_allowed = true,
		.client_addr = "192.0.2.9",
	};
	struct fz f;
	uint8_t mode;
	size_t off = 0, stall = 0, nmsg = 0;
	char rcv[1024];

	if (size == 0)
		return 0;
	mode = data[0];
	data++;
	size--;
	cfg.starttls = (mode & 0x80) != 0;
	cfg.relay_allowed = (mode & 0x40) == 0;
	cfg.auth = (mode & 0x10) != 0;
	memset(&f, 0, sizeof(f));
	f.max = cfg.max_message_size;
	mta_smtpd_init(&s, &cfg);
	mta_smtpd_greet(&s);
	check_out(&s, &f, 0);

	static const size_t windows[] = {1, 2, 3, 7, 64, 512, 4096, SIZE_MAX};
	size_t win = windows[mode & 7];
	bool lazy = (mode & 0x08) != 0; /* drain only when blocked */

	while (off < size) {
		struct mta_smtpd_event ev;
		size_t w = size - off < win ? size - off : win;
		size_t n = SIZE_MAX;
		enum mta_smtpd_ev e = mta_smtpd_feed(&s, data + off, w, &n, &ev);

		CHECK(n <= w);
		off += n;
		if (!lazy)
			check_out(&s, &f, 0);
		switch (e) {
		case MTA_SMTPD_EV_NONE:
			if (n == 0) {
				/* blocked: draining must unblock it */
				CHECK(++stall < 3);
				check_out(&s, &f, 0);
			}
			continue;
		case MTA_SMTPD_EV_AUTH:
			/* credentials: bounded, NUL-free strings; the verdict
			 * comes from the password so both paths run */
			CHECK(cfg.auth && ev.user != NULL && ev.pass != NULL);
			CHECK(strlen(ev.user) >= 1 &&
			      strlen(ev.user) <= MTA_SMTPD_AUTH_MAX);
			CHECK(strlen(ev.pass) <= MTA_SMTPD_AUTH_MAX);
			mta_smtpd_auth_done(&s, ev.pass[0] == 'y'
							? MTA_SMTPD_AUTH_OK
							: MTA_SMTPD_AUTH_FAIL);
			break;
		case MTA_SMTPD_EV_REJECT:
			CHECK(ev.code >= 400 && ev.code < 600);
			CHECK(ev.text != NULL && ev.verb != NULL);
			CHECK(atoi(ev.text) == ev.code);
			break;
		case MTA_SMTPD_EV_ABORT:
			CHECK(ev.code >= 200 && ev.code < 600);
			CHECK(ev.text != NULL && ev.verb != NULL);
			CHECK(f.in_msg);
			f.in_msg = false;
			break;
		case MTA_SMTPD_EV_DATA_START:
			CHECK(!f.in_msg);
			f.in_msg = true;
			f.body = 0;
			f.prev = 0;
			f.bare_cr = false;
			CHECK(mta_smtpd_received(&s, "QFUZZ", 1700000000, rcv,
						 sizeof(rcv)) > 0);
			CHECK(strlen(rcv) >= 2 &&
			      memcmp(rcv + strlen(rcv) - 2, "\r\n", 2) == 0);
			break;
		case MTA_SMTPD_EV_BODY:
			CHECK(f.in_msg);
			CHECK(ev.len > 0 && ev.data != NULL);
			body_bytes(&f, ev.data, ev.len);
			break;
		case MTA_SMTPD_EV_MESSAGE: {
			struct mta_envelope env;
			CHECK(f.in_msg);
			f.in_msg = false;
			mta_smtpd_take_envelope(&s, &env);
			CHECK(env.sender != NULL);
			CHECK(env.nrcpt >= 1 && env.nrcpt <= 5);
			CHECK(env.size == f.body);
			/* a clean body never ends in a bare CR */
			CHECK(f.body == 0 || f.prev != '\r');
			CHECK(!f.bare_cr);
			mta_envelope_free(&env);
			mta_smtpd_message_done(&s, nmsg++ % 2 ? MTA_EMAPFULL : 0,
					       "QFUZZ");
			break;
		}
		case MTA_SMTPD_EV_STARTTLS:
			CHECK(cfg.starttls);
			CHECK(n == w);
			check_out(&s, &f, 0);
			mta_smtpd_tls_started(&s, "version=TLSv1.3 cipher=X");
			break;
		case MTA_SMTPD_EV_CLOSE:
			CHECK(n == w);
			CHECK(mta_smtpd_closed(&s));
			off = size;
			break;
		}
		stall = 0;
	}
	/* ending mid-message: a timeout closes the session cleanly */
	mta_smtpd_timeout(&s);
	check_out(&s, &f, 0);
	CHECK(f.llen == 0);
	CHECK(mta_smtpd_closed(&s));
	mta_smtpd_free(&s);
	return 0;
}
