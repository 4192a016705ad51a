/*
 * mtad - the daemon: parse arguments and config, open the spool, start the
 * writer thread and the listeners, run the loop, shut down on SIGTERM.
 *
 * Usage: mtad -c FILE [--check-config]
 * Exit: 0 after a clean shutdown (or a valid --check-config), 1 on an
 * operational failure (spool, listen, TLS files), 2 on bad usage or config.
 */
#include "config.h"
#include "err.h"
#include "listener.h"
#include "log.h"
#include "spool.h"
#include "tls.h"
#include "writer.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define MTAD_VERSION "0.1.0"

struct daemon {
	uv_loop_t loop;
	struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	struct mta_tls_creds *tls;
	struct mtad_listener *listener;
	uv_signal_t sigterm, sigint, sighup;
	int exit_code;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: mtad -c FILE [--check-config]\n"
		   "       mtad --version\n");
}

static struct daemon *the_daemon(uv_loop_t *loop)
{
	return loop->data;
}

static void stop_everything(struct daemon *d)
{
	struct mta_logline ll;

	if (d->writer != NULL) {
		mta_writer_stop(d->writer);
		d->writer = NULL;
	}
	uv_close((uv_handle_t *)&d->sigterm, NULL);
	uv_close((uv_handle_t *)&d->sigint, NULL);
	uv_close((uv_handle_t *)&d->sighup, NULL);
	mta_log_begin(&ll, MTA_LOG_INFO, "stopped");
	mta_log_end(&ll);
}

/* Every session and listening socket is closed: stop the writer (which
 * completes what was submitted) and let the loop end. */
static void listener_done(void *arg)
{
	stop_everything(arg);
}

static void on_signal(uv_signal_t *h, int signum)
{
	struct daemon *d = the_daemon(h->loop);
	struct mta_logline ll;

	if (signum == SIGHUP) {
		mta_log_begin(&ll, MTA_LOG_WARN, "sighup");
		mta_log_str(&ll, "reason",
			    "configuration reload is not supported; restart");
		mta_log_end(&ll);
		return;
	}
	mta_log_begin(&ll, MTA_LOG_INFO, "shutdown");
	mta_log_str(&ll, "signal", signum == SIGTERM ? "TERM" : "INT");
	mta_log_end(&ll);
	if (d->listener != NULL)
		mtad_listener_shutdown(d->listener, listener_done, d);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"check-config", no_argument, NULL, 'C'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct daemon d;
	const char *path = NULL;
	bool check = false;
	char err[1024];
	int c, rc;

	memset(&d, 0, sizeof(d));
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			break;
		case 'C':
			check = true;
			break;
		case 'V':
			printf("mtad %s\n", MTAD_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || path == NULL) {
		usage(stderr);
		return 2;
	}
	err[0] = '\0';
	if (mta_config_load(path, environ, &d.cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "mtad: %s\n", err);
		return 2;
	}
	if (check) {
		mta_config_print(d.cfg, stdout);
		mta_config_free(d.cfg);
		return 0;
	}
	mta_log_set_level((enum mta_log_level)d.cfg->log_level);
	signal(SIGPIPE, SIG_IGN);

	struct mta_logline ll;
	mta_log_begin(&ll, MTA_LOG_INFO, "start");
	mta_log_str(&ll, "version", MTAD_VERSION);
	mta_log_int(&ll, "pid", (long long)getpid());
	mta_log_str(&ll, "config", path);
	mta_log_str(&ll, "hostname", d.cfg->server_hostname);
	mta_log_end(&ll);

	d.exit_code = 1;
	if (d.cfg->tls_cert != NULL) {
		rc = mta_tls_creds_load(d.cfg->tls_cert, d.cfg->tls_key,
					&d.tls, err, sizeof(err));
		if (rc != 0) {
			fprintf(stderr, "mtad: server.tls_cert: %s\n", err);
			d.exit_code = 2;
			goto out_config;
		}
	}
	struct mta_spool_opts so = {
		.dir = d.cfg->spool_dir,
		.max_size = d.cfg->spool_max_size,
		.readonly = false,
	};
	rc = mta_spool_open(&so, &d.spool);
	if (rc != 0) {
		mta_log_begin(&ll, MTA_LOG_ERR, "spool_open_failed");
		mta_log_str(&ll, "dir", d.cfg->spool_dir);
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_str(&ll, "reason", mta_strerror(rc));
		mta_log_end(&ll);
		goto out_tls;
	}
	uv_loop_init(&d.loop);
	d.loop.data = &d;
	rc = mta_writer_start(&d.loop, d.spool, &d.writer);
	if (rc != 0) {
		mta_log_begin(&ll, MTA_LOG_ERR, "writer_start_failed");
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_end(&ll);
		goto out_loop;
	}
	uv_signal_init(&d.loop, &d.sigterm);
	uv_signal_init(&d.loop, &d.sigint);
	uv_signal_init(&d.loop, &d.sighup);
	uv_signal_start(&d.sigterm, on_signal, SIGTERM);
	uv_signal_start(&d.sigint, on_signal, SIGINT);
	uv_signal_start(&d.sighup, on_signal, SIGHUP);

	struct mtad_listener_params lp = {
		.loop = &d.loop,
		.cfg = d.cfg,
		.spool = d.spool,
		.writer = d.writer,
		.tls = d.tls,
	};
	rc = mtad_listener_start(&lp, &d.listener);
	if (rc == 0) {
		mta_log_begin(&ll, MTA_LOG_INFO, "ready");
		mta_log_int(&ll, "pid", (long long)getpid());
		mta_log_end(&ll);
		d.exit_code = 0;
	} else {
		mtad_listener_shutdown(d.listener, listener_done, &d);
	}
	/* Runs until every handle is closed after a signal. */
	uv_run(&d.loop, UV_RUN_DEFAULT);
	mtad_listener_free(d.listener);
out_loop:
	if (d.writer != NULL) {
		mta_writer_stop(d.writer);
		uv_run(&d.loop, UV_RUN_DEFAULT);
	}
	if (uv_loop_close(&d.loop) != 0) {
		uv_run(&d.loop, UV_RUN_DEFAULT);
		(void)uv_loop_close(&d.loop);
	}
	mta_spool_close(d.spool);
out_tls:
	mta_tls_creds_free(d.tls);
out_config:
	mta_config_free(d.cfg);
	return d.exit_code;
}
