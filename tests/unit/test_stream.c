/* Unit tests for stream.c: two streams joined over loopback TCP on a real
 * loop (write queue, read buffer, orderly close, the error policy, the
 * timer, the connect contract).  Each test has its own loop, closed and
 * checked at the end. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "stream.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

struct end {
	struct mta_stream st;
	struct fx *fx;
	uint8_t *got; /* everything read */
	size_t ngot;
	int ndata, ntls, neof, ndrained, ntimeout, nerror, nclosed;
	int nconnected, connect_status;
	int eof_status;
	const char *error_reason;
	bool stop_reading; /* do not consume: leave input pending */
};

struct fx {
	uv_loop_t loop;
	uv_tcp_t server;
	struct sockaddr_in addr;
	struct mta_stream_scratch scratch;
	struct end a; /* accepted */
	struct end b; /* connecting */
	uv_timer_t guard;
	bool guard_fired;
};

static void on_connected(struct mta_stream *st, int status)
{
	struct end *e = st->data;
	e->nconnected++;
	e->connect_status = status;
}

static void on_data(struct mta_stream *st)
{
	struct end *e = st->data;
	const uint8_t *p;
	size_t n = mta_stream_pending(st, &p);

	e->ndata++;
	if (e->stop_reading)
		return;
	e->got = realloc(e->got, e->ngot + n + 1);
	assert_non_null(e->got);
	memcpy(e->got + e->ngot, p, n);
	e->ngot += n;
	mta_stream_consume(st, n);
}

static void on_tls(struct mta_stream *st)
{
	((struct end *)st->data)->ntls++;
}

static void on_eof(struct mta_stream *st, int status)
{
	struct end *e = st->data;
	e->neof++;
	e->eof_status = status;
}

static void on_drained(struct mta_stream *st)
{
	((struct end *)st->data)->ndrained++;
}

static void on_timeout(struct mta_stream *st)
{
	((struct end *)st->data)->ntimeout++;
}

static void on_error(struct mta_stream *st, const char *reason,
		     const char *detail)
{
	struct end *e = st->data;
	e->nerror++;
	e->error_reason = reason;
	assert_non_null(detail);
	/* the error policy: already closing when the owner hears of it */
	assert_true(st->closing);
	assert_false(st->reading);
}

static void on_closed(struct mta_stream *st)
{
	((struct end *)st->data)->nclosed++;
}

static const struct mta_stream_ops ops = {
	.connected = on_connected,
	.data = on_data,
	.tls_ready = on_tls,
	.eof = on_eof,
	.drained = on_drained,
	.timeout = on_timeout,
	.error = on_error,
	.closed = on_closed,
};

static void on_accept(uv_stream_t *server, int status)
{
	struct fx *fx = server->data;

	assert_int_equal(status, 0);
	assert_int_equal(mta_stream_init(&fx->a.st, &fx->loop, &ops,
					 &fx->scratch, &fx->a),
			 0);
	assert_int_equal(mta_stream_accept(&fx->a.st, server), 0);
	fx->a.nconnected++;
}

static void on_guard(uv_timer_t *t)
{
	struct fx *fx = t->data;
	fx->guard_fired = true;
	uv_stop(&fx->loop);
}

/* Runs the loop until pred(fx) or 10 s (a failure). */
static void run_until(struct fx *fx, bool (*pred)(struct fx *))
{
	uv_timer_start(&fx->guard, on_guard, 10000, 0);
	while (!pred(fx) && !fx->guard_fired)
		uv_run(&fx->loop, UV_RUN_ONCE);
	uv_timer_stop(&fx->guard);
	assert_false(fx->guard_fired);
}

static bool both_connected(struct fx *fx)
{
	return fx->a.nconnected == 1 && fx->b.nconnected == 1;
}

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	int len = sizeof(fx->addr);

	assert_non_null(fx);
	signal(SIGPIPE, SIG_IGN);
	assert_int_equal(uv_loop_init(&fx->loop), 0);
	uv_timer_init(&fx->loop, &fx->guard);
	fx->guard.data = fx;
	uv_tcp_init(&fx->loop, &fx->server);
	fx->server.data = fx;
	uv_ip4_addr("127.0.0.1", 0, &fx->addr);
	assert_int_equal(uv_tcp_bind(&fx->server,
				     (struct sockaddr *)&fx->addr, 0),
			 0);
	assert_int_equal(uv_tcp_getsockname(&fx->server,
					    (struct sockaddr *)&fx->addr,
					    &len),
			 0);
	assert_int_equal(uv_listen((uv_stream_t *)&fx->server, 8, on_accept),
			 0);
	fx->a.fx = fx->b.fx = fx;
	assert_int_equal(mta_stream_init(&fx->b.st, &fx->loop, &ops,
					 &fx->scratch, &fx->b),
			 0);
	assert_int_equal(mta_stream_connect(&fx->b.st,
					    (struct sockaddr *)&fx->addr),
			 0);
	run_until(fx, both_connected);
	assert_int_equal(fx->b.connect_status, 0);
	*state = fx;
	return 0;
}

static bool both_closed(struct fx *fx)
{
	return fx->a.nclosed == 1 && fx->b.nclosed == 1;
}

static int teardown(void **state)
{
	struct fx *fx = *state;

	mta_stream_close(&fx->a.st, false);
	mta_stream_close(&fx->b.st, false);
	run_until(fx, both_closed);
	uv_close((uv_handle_t *)&fx->server, NULL);
	uv_close((uv_handle_t *)&fx->guard, NULL);
	uv_run(&fx->loop, UV_RUN_DEFAULT);
	/* ops.closed ran exactly once each; nothing left on the loop */
	assert_int_equal(fx->a.nclosed, 1);
	assert_int_equal(fx->b.nclosed, 1);
	assert_int_equal(uv_loop_close(&fx->loop), 0);
	free(fx->a.got);
	free(fx->b.got);
	free(fx);
	return 0;
}

#define BIG (3 * 1024 * 1024 + 17)

static bool a_got_big(struct fx *fx)
{
	return fx->a.ngot >= BIG;
}

/* The write queue: many writes are queued at once, arrive in order and
 * whole; write_pending returns to 0 and drained is reported. */
static void test_write_queue_in_order(void **state)
{
	struct fx *fx = *state;
	uint8_t *buf = malloc(BIG);
	size_t off = 0;

	assert_non_null(buf);
	for (size_t i = 0; i < BIG; i++)
		buf[i] = (uint8_t)(i * 7 + i / 251);
	fx->b.st.write_low = 64 * 1024;
	assert_int_equal(mta_stream_read_start(&fx->a.st), 0);
	while (off < BIG) {
		size_t n = BIG - off < 10000 ? BIG - off : 10000;
		assert_int_equal(mta_stream_write(&fx->b.st, buf + off, n), 0);
		off += n;
	}
	assert_true(fx->b.st.write_pending > 0);
	run_until(fx, a_got_big);
	assert_int_equal(fx->a.ngot, BIG);
	assert_memory_equal(fx->a.got, buf, BIG);
	while (fx->b.st.write_pending > 0)
		uv_run(&fx->loop, UV_RUN_ONCE);
	assert_true(fx->b.ndrained >= 1);
	assert_int_equal(fx->a.nerror + fx->b.nerror, 0);
	free(buf);
}

/* Unconsumed input stays pending for the next call, after new bytes. */
static bool a_has_ab(struct fx *fx)
{
	const uint8_t *p;
	return mta_stream_pending(&fx->a.st, &p) == 4;
}

static void test_read_buffer_keeps_unconsumed(void **state)
{
	struct fx *fx = *state;
	const uint8_t *p;

	fx->a.stop_reading = true;
	assert_int_equal(mta_stream_read_start(&fx->a.st), 0);
	assert_int_equal(mta_stream_write(&fx->b.st, "ab", 2), 0);
	assert_int_equal(mta_stream_write(&fx->b.st, "cd", 2), 0);
	run_until(fx, a_has_ab);
	assert_int_equal(mta_stream_pending(&fx->a.st, &p), 4);
	assert_memory_equal(p, "abcd", 4);
	mta_stream_consume(&fx->a.st, 3);
	assert_int_equal(mta_stream_pending(&fx->a.st, &p), 1);
	assert_memory_equal(p, "d", 1);
	mta_stream_consume(&fx->a.st, 100); /* clamped */
	assert_int_equal(mta_stream_pending(&fx->a.st, &p), 0);
}

/* Orderly close: what was queued arrives, then the peer sees the end of
 * the stream (UV_EOF, not a reset); closed is reported once, later. */
static bool b_eof(struct fx *fx)
{
	return fx->b.neof == 1;
}

static void test_orderly_close(void **state)
{
	struct fx *fx = *state;

	assert_int_equal(mta_stream_read_start(&fx->b.st), 0);
	assert_int_equal(mta_stream_write(&fx->a.st, "221 bye\r\n", 9), 0);
	mta_stream_close(&fx->a.st, true);
	assert_int_equal(fx->a.nclosed, 0); /* never from inside the call */
	assert_int_equal(mta_stream_write(&fx->a.st, "x", 1), MTA_ECLOSED);
	run_until(fx, b_eof);
	assert_int_equal(fx->b.eof_status, UV_EOF);
	assert_int_equal(fx->b.ngot, 9);
	assert_memory_equal(fx->b.got, "221 bye\r\n", 9);
	assert_int_equal(fx->a.nerror, 0);
	mta_stream_close(&fx->a.st, true); /* idempotent */
}

/* The error policy: a write that fails (the peer reset the connection)
 * closes the stream at once with the reason, and closed follows. */
static bool b_failed(struct fx *fx)
{
	return fx->b.nerror == 1 && fx->b.nclosed == 1;
}

static void test_write_failure_closes_with_reason(void **state)
{
	struct fx *fx = *state;
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	uv_os_fd_t fd;
	char chunk[4096];

	memset(chunk, 'x', sizeof(chunk));
	/* a resets: close with SO_LINGER 0 sends RST */
	assert_int_equal(uv_fileno((uv_handle_t *)&fx->a.st.tcp, &fd), 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg,
				    sizeof(lg)),
			 0);
	mta_stream_close(&fx->a.st, false);
	while (fx->a.nclosed == 0)
		uv_run(&fx->loop, UV_RUN_ONCE);
	/* b does not read: only its writes can notice */
	for (int i = 0; i < 2000 && fx->b.nerror == 0; i++) {
		int rc = mta_stream_write(&fx->b.st, chunk, sizeof(chunk));
		if (rc != 0)
			break;
		uv_run(&fx->loop, UV_RUN_NOWAIT);
	}
	run_until(fx, b_failed);
	assert_string_equal(fx->b.error_reason, "write_error");
	assert_string_equal(fx->b.st.error, "write_error");
	assert_int_equal(fx->b.neof, 0);
	assert_int_equal(mta_stream_write(&fx->b.st, "x", 1), MTA_ECLOSED);
	mta_stream_close(&fx->b.st, true); /* no second closed */
}

/* A TLS failure closes too: the client handshake meets plaintext. */
static bool b_tls_failed(struct fx *fx)
{
	return fx->b.nerror == 1;
}

static void test_tls_failure_closes_with_reason(void **state)
{
	struct fx *fx = *state;
	struct mta_tls_creds *creds = NULL;
	char err[200];
	const char *ca = "/etc/ssl/certs/ca-certificates.crt";

	if (mta_tls_creds_client(ca, &creds, err, sizeof(err)) != 0) {
		skip(); /* no system CA bundle to initialise a client with */
		return;
	}
	assert_int_equal(mta_stream_read_start(&fx->b.st), 0);
	assert_int_equal(mta_stream_starttls_client(&fx->b.st, creds,
						    "peer.test"),
			 0);
	/* a answers the ClientHello with an SMTP line, not a ServerHello */
	assert_int_equal(mta_stream_write(&fx->a.st,
					  "500 5.5.1 what?\r\n\r\n\r\n", 21),
			 0);
	run_until(fx, b_tls_failed);
	assert_string_equal(fx->b.error_reason, "tls_error");
	assert_int_equal(fx->b.ntls, 0);
	assert_int_equal(fx->b.ndata, 0); /* nothing read as plaintext */
	while (fx->b.nclosed == 0)
		uv_run(&fx->loop, UV_RUN_ONCE);
	mta_tls_creds_free(creds);
}

/* The timer fires once when armed, never once stopped or re-armed. */
static bool a_timed_out(struct fx *fx)
{
	return fx->a.ntimeout == 1;
}

static void test_timer(void **state)
{
	struct fx *fx = *state;
	uint64_t t0 = uv_now(&fx->loop);

	mta_stream_timer(&fx->b.st, 20);
	mta_stream_timer_stop(&fx->b.st);
	mta_stream_timer(&fx->a.st, 500);
	mta_stream_timer(&fx->a.st, 30); /* re-armed: one expiry */
	run_until(fx, a_timed_out);
	assert_true(uv_now(&fx->loop) - t0 >= 30);
	assert_true(uv_now(&fx->loop) - t0 < 500);
	assert_int_equal(fx->a.ntimeout, 1);
	assert_int_equal(fx->b.ntimeout, 0);
	/* a closing stream's timer never fires */
	mta_stream_timer(&fx->b.st, 10);
	mta_stream_close(&fx->b.st, false);
	while (fx->b.nclosed == 0)
		uv_run(&fx->loop, UV_RUN_ONCE);
	assert_int_equal(fx->b.ntimeout, 0);
}

static int nodelay_of(struct mta_stream *st)
{
	uv_os_fd_t fd;
	int v = -1;
	socklen_t len = sizeof(v);

	assert_int_equal(uv_fileno((uv_handle_t *)&st->tcp, &fd), 0);
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len),
			 0);
	return v;
}

/* Both ends write whole SMTP turns: Nagle is off on an accepted and on a
 * connected stream (a 100 KB body's last segment would otherwise wait
 * for the peer's delayed ACK). */
static void test_nodelay_both_ends(void **state)
{
	struct fx *fx = *state;

	assert_int_not_equal(nodelay_of(&fx->a.st), 0);
	assert_int_not_equal(nodelay_of(&fx->b.st), 0);
}

/* The async contract of connect: a refused connection is reported once
 * through ops.connected; closing before it completes reports
 * UV_ECANCELED once. */
static void test_connect_contract(void **state)
{
	struct fx *fx = *state;
	struct end c = {.fx = fx};
	struct sockaddr_in none;
	uv_tcp_t probe;
	int len = sizeof(none);

	/* a port with nothing listening: bind, read its number, close */
	uv_tcp_init(&fx->loop, &probe);
	uv_ip4_addr("127.0.0.1", 0, &none);
	assert_int_equal(uv_tcp_bind(&probe, (struct sockaddr *)&none, 0), 0);
	assert_int_equal(uv_tcp_getsockname(&probe, (struct sockaddr *)&none,
					    &len),
			 0);
	uv_close((uv_handle_t *)&probe, NULL);
	uv_run(&fx->loop, UV_RUN_NOWAIT);

	assert_int_equal(mta_stream_init(&c.st, &fx->loop, &ops, &fx->scratch,
					 &c),
			 0);
	assert_int_equal(mta_stream_connect(&c.st, (struct sockaddr *)&none), 0);
	while (c.nconnected == 0)
		uv_run(&fx->loop, UV_RUN_ONCE);
	assert_int_equal(c.nconnected, 1);
	assert_int_equal(c.connect_status, UV_ECONNREFUSED);
	mta_stream_close(&c.st, false);
	while (c.nclosed == 0)
		uv_run(&fx->loop, UV_RUN_ONCE);
	assert_int_equal(c.nconnected, 1);

	/* closed while connecting */
	assert_int_equal(mta_stream_init(&c.st, &fx->loop, &ops, &fx->scratch,
					 &c),
			 0);
	c.nconnected = c.nclosed = 0;
	assert_int_equal(mta_stream_connect(&c.st, (struct sockaddr *)&none), 0);
	mta_stream_close(&c.st, false);
	while (c.nclosed == 0)
		uv_run(&fx->loop, UV_RUN_ONCE);
	assert_int_equal(c.nconnected, 1);
	assert_int_equal(c.connect_status, UV_ECANCELED);
	assert_int_equal(c.nerror, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_write_queue_in_order,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_read_buffer_keeps_unconsumed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_orderly_close, setup,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_write_failure_closes_with_reason, setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_tls_failure_closes_with_reason, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_nodelay_both_ends, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_connect_contract, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
