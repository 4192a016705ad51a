/*
 * sink - a multi-threaded SMTP sink for the benchmark ceiling and relay
 * parts (tests/bench/run.py, issue 15): it answers SMTP, discards every
 * message and counts the messages it received.
 *
 *   sink [-t THREADS] [-c COUNTFILE] ADDR:PORT
 *
 * THREADS worker threads (default: the number of online CPUs), each with its
 * own SO_REUSEPORT listening socket on ADDR:PORT and its own epoll loop; the
 * kernel spreads incoming connections over the sockets, a connection stays
 * on the thread that accepted it.  All sockets are bound and listening before
 * the first thread starts, so once a connection gets a 220, every one does.
 *
 * SMTP: 220 greeting; EHLO (PIPELINING, 8BITMIME, SIZE), HELO, MAIL, RCPT,
 * DATA, RSET, NOOP, QUIT; anything else gets 502.  Pipelined input is
 * answered in order, the answers to everything read in one go written in one
 * write().  No state checks: MAIL and RCPT always get 250, DATA always 354.
 * The end of DATA is the first CR LF "." CR LF (the CR LF of the DATA line
 * counting as the first one); a dot-stuffed line ("..") does not end it.
 * Every completed DATA counts one message and gets 250.
 *
 * COUNTFILE (default: none) is a file of 8 bytes, the number of messages
 * received since start as a little-endian 64-bit integer, updated in place
 * through a shared mapping with every message (no latency, no syscall); a
 * reader reads it with pread() (a reader that wants to be safe against a
 * torn 8-byte read reads until two reads agree; the value only grows).
 * On SIGTERM or SIGINT the sink prints "messages=N connections=C" on stdout
 * and exits 0.  Exit 2 on bad usage, 1 on a setup error.
 *
 * Limits: a command line longer than 4 KiB gets 500 and the connection is
 * closed; a client that does not read its answers stops being read from
 * until it does.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define IN_CAP (64 * 1024)
#define OUT_CAP 8192
#define LINE_MAX_LEN 4096
#define MAX_EVENTS 64

enum conn_state { ST_CMD, ST_DATA };

/* End-of-data scanner states: where we are relative to CR LF "." CR LF. */
enum data_state { D_BOL, D_DOT, D_DOTCR, D_MID, D_CR };

struct conn {
	int fd;
	enum conn_state state;
	enum data_state dstate;
	int closing;		/* QUIT answered or fatal: close once flushed */
	int want_out;		/* EPOLLOUT armed */
	size_t inlen;
	size_t outlen;
	size_t outoff;
	char out[OUT_CAP];
	char in[IN_CAP];
};

struct worker {
	pthread_t tid;
	int lfd;
	int ep;
};

static _Atomic uint64_t *msg_count;
static _Atomic uint64_t conn_count;

static const char GREETING[] = "220 sink.bench.test ESMTP sink\r\n";
static const char EHLO_REPLY[] = "250-sink.bench.test\r\n"
				 "250-PIPELINING\r\n"
				 "250-8BITMIME\r\n"
				 "250 SIZE 1073741824\r\n";

static void out_add(struct conn *c, const char *s, size_t n)
{
	/* process() keeps room for one answer before handling a command */
	if (c->outlen + n > OUT_CAP)
		abort();
	memcpy(c->out + c->outlen, s, n);
	c->outlen += n;
}

#define OUT_LIT(c, s) out_add((c), (s), sizeof(s) - 1)

/* Scans DATA bytes; returns how many were consumed (up to and including the
 * final LF when the end was found, which switches back to ST_CMD). */
static size_t scan_data(struct conn *c, const char *p, size_t n)
{
	size_t i = 0;
	enum data_state d = c->dstate;

	while (i < n) {
		if (d == D_MID) {
			const char *cr = memchr(p + i, '\r', n - i);
			if (cr == NULL) {
				i = n;
				break;
			}
			i = (size_t)(cr - p) + 1;
			d = D_CR;
			continue;
		}
		char ch = p[i++];
		switch (d) {
		case D_BOL:
			d = ch == '.' ? D_DOT : ch == '\r' ? D_CR : D_MID;
			break;
		case D_DOT:
			d = ch == '\r' ? D_DOTCR : D_MID;
			break;
		case D_DOTCR:
			if (ch == '\n') {
				atomic_fetch_add_explicit(msg_count, 1,
							  memory_order_relaxed);
				c->state = ST_CMD;
				c->dstate = D_BOL;
				OUT_LIT(c, "250 2.0.0 Ok: discarded\r\n");
				return i;
			}
			d = ch == '\r' ? D_CR : D_MID;
			break;
		case D_CR:
			d = ch == '\n' ? D_BOL : ch == '\r' ? D_CR : D_MID;
			break;
		case D_MID:
			break;
		}
	}
	c->dstate = d;
	return i;
}

static int verb_is(const char *line, size_t len, const char *verb)
{
	size_t v = strlen(verb);

	if (len < v || strncasecmp(line, verb, v) != 0)
		return 0;
	return len == v || line[v] == ' ' || line[v] == ':';
}

static void command(struct conn *c, const char *line, size_t len)
{
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (verb_is(line, len, "EHLO"))
		OUT_LIT(c, EHLO_REPLY);
	else if (verb_is(line, len, "HELO"))
		OUT_LIT(c, "250 sink.bench.test\r\n");
	else if (verb_is(line, len, "MAIL") || verb_is(line, len, "RCPT"))
		OUT_LIT(c, "250 2.1.0 Ok\r\n");
	else if (verb_is(line, len, "DATA")) {
		OUT_LIT(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
		c->state = ST_DATA;
		c->dstate = D_BOL;
	} else if (verb_is(line, len, "RSET") || verb_is(line, len, "NOOP"))
		OUT_LIT(c, "250 2.0.0 Ok\r\n");
	else if (verb_is(line, len, "QUIT")) {
		OUT_LIT(c, "221 2.0.0 Bye\r\n");
		c->closing = 1;
	} else
		OUT_LIT(c, "502 5.5.2 Error: command not recognized\r\n");
}

/* Handles what is in c->in, as far as the output buffer allows; returns 1
 * when it stopped for want of room in c->out with input left. */
static int process(struct conn *c)
{
	size_t off = 0;
	int full = 0;

	while (off < c->inlen && !c->closing) {
		if (c->outlen + 512 > OUT_CAP) {
			full = 1;
			break;
		}
		if (c->state == ST_DATA) {
			off += scan_data(c, c->in + off, c->inlen - off);
			continue;
		}
		char *nl = memchr(c->in + off, '\n', c->inlen - off);
		if (nl == NULL) {
			if (c->inlen - off > LINE_MAX_LEN) {
				OUT_LIT(c, "500 5.5.0 Error: line too long\r\n");
				c->closing = 1;
			}
			break;
		}
		command(c, c->in + off, (size_t)(nl - (c->in + off)));
		off = (size_t)(nl - c->in) + 1;
	}
	if (c->closing)
		off = c->inlen;
	if (off > 0) {
		memmove(c->in, c->in + off, c->inlen - off);
		c->inlen -= off;
	}
	return full;
}

/* Writes what is pending; 0 when all is out, 1 when blocked, -1 on error. */
static int flush_out(struct conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
				 MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 1;
			return -1;
		}
		c->outoff += (size_t)w;
	}
	c->outoff = c->outlen = 0;
	return 0;
}

static void conn_close(struct worker *w, struct conn *c)
{
	epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

/* After reading or writing: answer, then pick what to wait for. */
static void conn_step(struct worker *w, struct conn *c)
{
	for (;;) {
		int full = process(c);
		int r = flush_out(c);
		if (r < 0 || (r == 0 && c->closing)) {
			conn_close(w, c);
			return;
		}
		if (r == 1) {
			if (!c->want_out) {
				struct epoll_event ev = { .events = EPOLLOUT,
							  .data.ptr = c };
				epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
				c->want_out = 1;
			}
			return;
		}
		/* all written: input left for want of room is handled now */
		if (!full)
			break;
	}
	if (c->want_out) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
		c->want_out = 0;
	}
}

static void conn_read(struct worker *w, struct conn *c)
{
	ssize_t n = recv(c->fd, c->in + c->inlen, IN_CAP - c->inlen, 0);

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		conn_close(w, c);
		return;
	}
	if (n > 0)
		c->inlen += (size_t)n;
	conn_step(w, c);
}

static void do_accept(struct worker *w)
{
	for (;;) {
		int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;		/* EAGAIN, or a transient error */
		struct conn *c = malloc(sizeof(*c));
		if (c == NULL) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->state = ST_CMD;
		c->dstate = D_BOL;
		c->closing = c->want_out = 0;
		c->inlen = c->outlen = c->outoff = 0;
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		atomic_fetch_add_explicit(&conn_count, 1, memory_order_relaxed);
		OUT_LIT(c, GREETING);
		conn_step(w, c);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[MAX_EVENTS];

	for (;;) {
		int n = epoll_wait(w->ep, evs, MAX_EVENTS, -1);
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == NULL) {
				do_accept(w);
				continue;
			}
			struct conn *c = evs[i].data.ptr;
			if (c->want_out)
				conn_step(w, c);
			else
				conn_read(w, c);
		}
	}
	return NULL;
}

static int listen_on(const struct sockaddr_in *sa)
{
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 ||
	    listen(fd, 4096) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void usage(void)
{
	fprintf(stderr, "usage: sink [-t THREADS] [-c COUNTFILE] ADDR:PORT\n");
	exit(2);
}

int main(int argc, char **argv)
{
	long nthreads = sysconf(_SC_NPROCESSORS_ONLN);
	const char *countfile = NULL;
	int opt;

	while ((opt = getopt(argc, argv, "t:c:")) != -1) {
		switch (opt) {
		case 't':
			nthreads = strtol(optarg, NULL, 10);
			break;
		case 'c':
			countfile = optarg;
			break;
		default:
			usage();
		}
	}
	if (optind + 1 != argc || nthreads < 1 || nthreads > 1024)
		usage();

	char host[64];
	const char *colon = strrchr(argv[optind], ':');
	if (colon == NULL || (size_t)(colon - argv[optind]) >= sizeof(host))
		usage();
	memcpy(host, argv[optind], (size_t)(colon - argv[optind]));
	host[colon - argv[optind]] = '\0';
	struct sockaddr_in sa = { .sin_family = AF_INET };
	long port = strtol(colon + 1, NULL, 10);
	if (port <= 0 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		usage();
	sa.sin_port = htons((uint16_t)port);

	if (countfile != NULL) {
		int fd = open(countfile, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0 || ftruncate(fd, 8) < 0) {
			perror(countfile);
			return 1;
		}
		void *m = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		close(fd);
		msg_count = m;
	} else {
		msg_count = calloc(1, sizeof(*msg_count));
		if (msg_count == NULL)
			return 1;
	}

	/* workers never see the signals: main waits for them */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	struct worker *ws = calloc((size_t)nthreads, sizeof(*ws));
	if (ws == NULL)
		return 1;
	for (long i = 0; i < nthreads; i++) {
		ws[i].lfd = listen_on(&sa);
		ws[i].ep = epoll_create1(EPOLL_CLOEXEC);
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
		if (ws[i].lfd < 0 || ws[i].ep < 0 ||
		    epoll_ctl(ws[i].ep, EPOLL_CTL_ADD, ws[i].lfd, &ev) < 0) {
			fprintf(stderr, "sink: listen on %s: %s\n", argv[optind],
				strerror(errno));
			return 1;
		}
	}
	for (long i = 0; i < nthreads; i++) {
		if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0) {
			fprintf(stderr, "sink: pthread_create failed\n");
			return 1;
		}
	}

	int sig;
	sigwait(&set, &sig);
	printf("messages=%" PRIu64 " connections=%" PRIu64 "\n",
	       atomic_load(msg_count), atomic_load(&conn_count));
	fflush(stdout);
	_exit(0);
}
