/*
 * mtad - the daemon: parse arguments and config, open the spool, start the
 * writer thread and the listeners, run the loop, shut down on SIGTERM.
 *
 * Usage: mtad -c FILE [--check-config]
 * Exit: 0 after a clean shutdown (or a valid --check-config), 1 on an
 * operational failure (spool, listen, TLS files), 2 on bad usage or config.
 */
#include "config.h"
#include "ctlsock.h"
#include "delivery.h"
#include "dns.h"
#include "err.h"
#include "keyholder.h"
#include "listener.h"
#include "log.h"
#include "mtasts.h"
#include "privdrop.h"
#include "sandbox.h"
#include "spool.h"
#include "tls.h"
#include "tlspolicy.h"
#include "writer.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdarg.h>
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
	struct mta_dns *dns;
	struct mta_tls_creds *client_tls;
	struct mta_delivery *delivery;
	struct mta_tlspolicy *policy;
	struct mta_mtasts *mtasts;
	struct mtad_control *control;
	char auth_user[256], auth_pass[256];
	bool have_auth;
	struct mta_privdrop priv; /* who we become after start-up */
	bool daemon_mode;	  /* not --check-config: keys go to the holder */
	struct mta_keyholder *holder;
	char auth_plain[700];	  /* AUTH PLAIN blob from the holder */
	unsigned parts_running; /* listener, delivery */
	uv_signal_t sigterm, sigint, sighup;
	bool signals_started;
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
	if (d->dns != NULL) {
		mta_dns_free(d->dns);
		d->dns = NULL;
	}
	if (d->signals_started) {
		uv_close((uv_handle_t *)&d->sigterm, NULL);
		uv_close((uv_handle_t *)&d->sigint, NULL);
		uv_close((uv_handle_t *)&d->sighup, NULL);
	}
	mta_log_begin(&ll, MTA_LOG_INFO, "stopped");
	mta_log_end(&ll);
}

/* Called once by the listener (every session and listening socket
 * closed) and once by delivery (every connection closed, its updates
 * committed); after both, stop the writer (which completes what was
 * submitted) and let the loop end. */
static void part_done(void *arg)
{
	struct daemon *d = arg;

	if (--d->parts_running == 0)
		stop_everything(d);
}

/* Delivery is stopped before MTA-STS: its connections hold lookups. */
static void delivery_done(void *arg)
{
	struct daemon *d = arg;

	d->delivery = NULL;
	if (d->mtasts != NULL) {
		struct mta_mtasts *m = d->mtasts;
		d->mtasts = NULL;
		mta_mtasts_stop(m, part_done, d);
		return;
	}
	part_done(d);
}

static void begin_shutdown(struct daemon *d)
{
	mtad_control_stop(d->control);
	d->control = NULL;
	if (d->listener != NULL)
		mtad_listener_shutdown(d->listener, part_done, d);
	if (d->delivery != NULL)
		mta_delivery_stop(d->delivery, delivery_done, d);
	else if (d->mtasts != NULL)
		delivery_done(d);
}

static void on_queued(void *arg)
{
	struct daemon *d = arg;

	if (d->delivery != NULL)
		mta_delivery_kick(d->delivery);
}

/* One form for every error about a value read from the config:
 * "mtad: <file>:<line>: <section>.<key>: <why>" (or "environment
 * MTAD_X_Y: ...", "default: ..."). */
__attribute__((format(printf, 4, 5))) static void
key_error(const struct mta_config *cfg, const char *section, const char *key,
	  const char *fmt, ...)
{
	char where[600], why[1200];
	va_list ap;

	mta_config_where(cfg, section, key, where, sizeof(where));
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	fprintf(stderr, "mtad: %s: %s.%s: %s\n", where, section, key, why);
}

/* A file named by a key must be a readable regular file. */
static int check_readable(const struct mta_config *cfg, const char *section,
			  const char *key, const char *path)
{
	struct stat st;
	FILE *f;

	if (stat(path, &st) != 0) {
		key_error(cfg, section, key, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		key_error(cfg, section, key, "%s: not a regular file", path);
		return -1;
	}
	if ((f = fopen(path, "r")) == NULL) {
		key_error(cfg, section, key, "%s: %s", path, strerror(errno));
		return -1;
	}
	fclose(f);
	return 0;
}

/* Loads the inbound certificate and key, blaming the key that is wrong. */
static int load_server_tls(struct daemon *d)
{
	char err[1024];

	if (check_readable(d->cfg, "server", "tls_cert", d->cfg->tls_cert) ||
	    check_readable(d->cfg, "server", "tls_key", d->cfg->tls_key))
		return -1;
	if (mta_tls_creds_load(d->cfg->tls_cert, d->cfg->tls_key, &d->tls,
			       err, sizeof(err)) != 0) {
		/* GnuTLS cannot say which file it failed on: the key is
		 * the usual culprit (wrong format, not the cert's key) */
		key_error(d->cfg, "server", "tls_key",
			  "cannot load with server.tls_cert: %s", err);
		return -1;
	}
	return 0;
}

/* "username password" on the first line; never logged.  Read with
 * read(2) into a buffer wiped here (stdio would leave a copy in its own
 * buffer): the password must not stay in this process once the key
 * holder has it. */
static int read_auth_file(struct daemon *d, const char *path)
{
	char line[600];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		key_error(d->cfg, "delivery", "relayhost_auth_file", "%s: %s",
			  path, strerror(errno));
		return 2;
	}
	n = read(fd, line, sizeof(line) - 1);
	close(fd);
	line[n > 0 ? n : 0] = '\0';
	line[strcspn(line, "\n")] = '\0';
	if (n <= 0 ||
	    sscanf(line, "%255s %255s", d->auth_user, d->auth_pass) != 2) {
		key_error(d->cfg, "delivery", "relayhost_auth_file",
			  "%s: expected \"username password\" on the first "
			  "line", path);
		explicit_bzero(line, sizeof(line));
		return 2;
	}
	explicit_bzero(line, sizeof(line));
	d->have_auth = true;
	return 0;
}

/* Everything the config names that can be checked before start-up; also
 * what --check-config checks.  Prints the error; 0 or -1. */
static int load_config_files(struct daemon *d)
{
	char err[1024];

	if (d->cfg->tls_cert != NULL &&
	    (d->daemon_mode
		     ? check_readable(d->cfg, "server", "tls_cert",
				      d->cfg->tls_cert) ||
			       check_readable(d->cfg, "server", "tls_key",
					      d->cfg->tls_key)
		     : load_server_tls(d) != 0))
		return -1;
	if (d->cfg->tls_policy_file != NULL &&
	    mta_tlspolicy_load(d->cfg->tls_policy_file, &d->policy, err,
			       sizeof(err)) != 0) {
		key_error(d->cfg, "tls", "policy_file", "%s", err);
		return -1;
	}
	if (d->cfg->relayhost_auth_file != NULL &&
	    read_auth_file(d, d->cfg->relayhost_auth_file) != 0)
		return -1;
	return 0;
}

/* ---- least privilege (issue 11): one step of start-up, called after
 * everything root must open is open and before any thread starts.  See
 * docs/security.md for the order and what each layer refuses. ---- */

/* Files the daemon still reads after the drop, and nothing else: what
 * strace showed opened after landlock_restrict_self() over the DANE and
 * MTA-STS delivery tests (docs/security.md, "How the lists were
 * found").  The config, the certificate, the policy file and the trust
 * anchor are read before the drop (getdns reads the anchor when its
 * context is made); GnuTLS reads its system config at load; curl gets
 * the address (CURLOPT_CONNECT_TO) and the CA file (no CA path); dates
 * are gmtime_r (no time zone files). */
static size_t runtime_read_paths(const struct daemon *d,
				 const char *ro[static 2])
{
	size_t n = 0;

	ro[n++] = d->cfg->tls_ca_file; /* curl, at every MTA-STS fetch */
	/* glibc's malloc asks once whether it may give memory back */
	ro[n++] = "/proc/sys/vm/overcommit_memory";
	return n;
}

/* Forks the key holder (before the drop: it reads the key as root) and
 * hands it the relayhost credentials; then loads the server certificate
 * with the held key and wipes the password here.  0 or -1 (printed). */
static int start_keyholder(struct daemon *d)
{
	struct mta_logline ll;
	char err[1024] = "";

	if (d->cfg->tls_key == NULL && !d->have_auth)
		return 0;
	if (mta_keyholder_start(d->cfg->tls_key, d->have_auth ? d->auth_user
							      : NULL,
				d->have_auth ? d->auth_pass : NULL, &d->priv,
				&d->holder, err, sizeof(err)) != 0) {
		fprintf(stderr, "mtad: key holder: %s\n", err);
		return -1;
	}
	explicit_bzero(d->auth_pass, sizeof(d->auth_pass));
	mta_log_begin(&ll, MTA_LOG_INFO, "sandbox");
	mta_log_str(&ll, "layer", "keyholder");
	mta_log_int(&ll, "holder_pid", (long long)mta_keyholder_pid(d->holder));
	mta_log_str(&ll, "holds", d->cfg->tls_key && d->have_auth
					  ? "tls_key,relayhost_auth"
				  : d->cfg->tls_key ? "tls_key"
						    : "relayhost_auth");
	mta_log_end(&ll);
	if (d->cfg->tls_cert != NULL &&
	    mta_tls_creds_load_held(d->cfg->tls_cert, d->holder, &d->tls, err,
				    sizeof(err)) != 0) {
		key_error(d->cfg, "server", "tls_key",
			  "cannot load with server.tls_cert: %s", err);
		return -1;
	}
	if (d->have_auth &&
	    mta_keyholder_auth(d->holder, d->auth_plain,
			       sizeof(d->auth_plain)) != 0) {
		key_error(d->cfg, "delivery", "relayhost_auth_file",
			  "the key holder did not answer");
		return -1;
	}
	return 0;
}

/* Drops root, then Landlock, then seccomp; each layer logged.  0 or -1
 * (logged, and said on stderr). */
static int privsep_lockdown(struct daemon *d)
{
	const char *ro[2], *rw[1] = {d->cfg->spool_dir};
	struct mta_logline ll;
	char err[600] = "";
	bool log_only = false;
	int abi = 0;

	if (mta_privdrop_own_dir(&d->priv, d->cfg->spool_dir, err,
				 sizeof(err)) != 0 ||
	    mta_privdrop_apply(&d->priv, err, sizeof(err)) != 0)
		goto fail;
	mta_log_begin(&ll, MTA_LOG_INFO, "sandbox");
	mta_log_str(&ll, "layer", "privileges");
	mta_log_str(&ll, "active", d->priv.active ? "dropped" : "not-root");
	mta_log_int(&ll, "uid", (long long)getuid());
	mta_log_int(&ll, "gid", (long long)getgid());
	mta_log_str(&ll, "no_new_privs", "1");
	mta_log_end(&ll);

	if (mta_sandbox_landlock(rw, 1, ro,
				 runtime_read_paths(d, ro), &abi, err,
				 sizeof(err)) != 0)
		goto fail;
	mta_log_begin(&ll, abi > 0 ? MTA_LOG_INFO : MTA_LOG_WARN, "sandbox");
	mta_log_str(&ll, "layer", "landlock");
	mta_log_str(&ll, "active", abi > 0 ? "yes" : "no (kernel lacks it)");
	mta_log_int(&ll, "abi", abi);
	mta_log_str(&ll, "rw", d->cfg->spool_dir);
	mta_log_end(&ll);

#ifdef MTAD_TEST_HOOKS
	/* developing the allow-list: log instead of kill (test builds only) */
	log_only = getenv("MTA_SECCOMP_LOG") != NULL;
#endif
	if (mta_sandbox_seccomp(MTA_SANDBOX_DAEMON, log_only, err,
				sizeof(err)) != 0)
		goto fail;
	mta_log_begin(&ll, MTA_LOG_INFO, "sandbox");
	mta_log_str(&ll, "layer", "seccomp");
	mta_log_str(&ll, "active", log_only ? "log-only" : "yes");
	mta_log_str(&ll, "action", log_only ? "log" : "kill-process");
	mta_log_end(&ll);
	return 0;

fail:
	mta_log_begin(&ll, MTA_LOG_ERR, "privsep_failed");
	mta_log_str(&ll, "error", err);
	mta_log_end(&ll);
	fprintf(stderr, "mtad: least privilege: %s\n", err);
	return -1;
}

#ifdef MTAD_TEST_HOOKS
/* Test builds only: MTA_TEST_ESCAPE=shadow|write:PATH|exec makes the
 * running daemon try to leave its sandbox (tests/integration/
 * test_privsep.py asserts each is refused).  MTA_TEST_LEAK=1 loses 77
 * bytes on purpose: the test proves LeakSanitizer still reports from
 * inside the sandbox (sanitizer builds). */
static void test_escape_hook(void)
{
	const char *v = getenv("MTA_TEST_ESCAPE");

	if (getenv("MTA_TEST_LEAK") != NULL) {
		struct mta_logline ll;
		char *volatile lost = malloc(77);

		if (lost != NULL)
			lost[0] = 'x';
		lost = NULL;
		mta_log_begin(&ll, MTA_LOG_WARN, "test_leak");
		mta_log_int(&ll, "bytes", 77);
		mta_log_end(&ll);
	}
	if (v == NULL)
		return;
	if (strncmp(v, "write:", 6) == 0)
		mta_sandbox_test_escape("write", v + 6);
	else
		mta_sandbox_test_escape(v, NULL);
}
#endif

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
	begin_shutdown(d);
}

/* Start-up step 1: arguments.  -1 to go on, else the exit code. */
static int parse_args(int argc, char **argv, const char **path, bool *check)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"check-config", no_argument, NULL, 'C'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;

	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			*path = optarg;
			break;
		case 'C':
			*check = true;
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
	if (optind != argc || *path == NULL) {
		usage(stderr);
		return 2;
	}
	return -1;
}

/* --check-config: the files the config names must load too; prints the
 * effective config.  Frees what it loaded; the exit code. */
static int check_config(struct daemon *d)
{
	int rc = load_config_files(d) != 0 ? 2 : 0;

	if (rc == 0)
		mta_config_print(d->cfg, stdout);
	mta_tls_creds_free(d->tls);
	mta_tlspolicy_free(d->policy);
	explicit_bzero(d->auth_pass, sizeof(d->auth_pass));
	mta_config_free(d->cfg);
	return rc;
}

/* Start-up step: the spool, locked (one daemon per spool: the lock is
 * held until exit, its fd left open on purpose), checked and opened.
 * Logs and prints the reason; 0 or -1. */
static int open_spool(struct daemon *d)
{
	struct mta_logline ll;
	char why[1024] = "";
	int lock_fd, rc;
	long holder;

	rc = mta_spool_lock(d->cfg->spool_dir, &lock_fd, &holder);
	if (rc != 0) {
		mta_log_begin(&ll, MTA_LOG_ERR, "spool_locked");
		mta_log_str(&ll, "dir", d->cfg->spool_dir);
		mta_log_str(&ll, "error", mta_errname(rc));
		if (rc == MTA_EAGAIN)
			mta_log_int(&ll, "holder_pid", holder);
		mta_log_end(&ll);
		if (rc == MTA_EAGAIN)
			fprintf(stderr,
				"mtad: spool %s is in use by another mtad "
				"(pid %ld, %s/mtad.lock); one daemon per "
				"spool\n",
				d->cfg->spool_dir, holder, d->cfg->spool_dir);
		else
			fprintf(stderr, "mtad: spool %s: lock: %s\n",
				d->cfg->spool_dir, mta_strerror(rc));
		return -1;
	}
	struct mta_spool_opts so = {
		.dir = d->cfg->spool_dir,
		.max_size = d->cfg->spool_max_size,
		.readonly = false,
		.why = why,
		.whylen = sizeof(why),
	};
	mta_spool_trap_sigbus("mtad", d->cfg->spool_dir);
	rc = mta_spool_open(&so, &d->spool);
	if (rc != 0) {
		mta_log_begin(&ll, MTA_LOG_ERR, "spool_open_failed");
		mta_log_str(&ll, "dir", d->cfg->spool_dir);
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_str(&ll, "reason", why[0] ? why : mta_strerror(rc));
		mta_log_end(&ll);
		fprintf(stderr, "mtad: spool %s: %s\n", d->cfg->spool_dir,
			why[0] ? why : mta_strerror(rc));
		d->spool = NULL;
		return -1;
	}
	return 0;
}

/* Start-up step: the resolver (before any listener opens: without DNS
 * nothing accepted could be delivered).  0 or -1, logged. */
static int start_dns(struct daemon *d)
{
	struct mta_logline ll;
	char appdata[4096];
	int rc;

	snprintf(appdata, sizeof(appdata), "%s/getdns", d->cfg->spool_dir);
	(void)mkdir(appdata, 0700);
	struct mta_dns_opts dopts = {
		.resolver = d->cfg->dns_resolver,
		.trust_anchor = d->cfg->dns_trust_anchor,
		.appdata_dir = appdata,
		.timeout_ms = d->cfg->dns_timeout * 1000u,
	};
	rc = mta_dns_init(&d->loop, &dopts, &d->dns);
	if (rc != 0) {
		mta_log_begin(&ll, MTA_LOG_ERR, "dns_init_failed");
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_str(&ll, "resolver",
			    d->cfg->dns_resolver ? d->cfg->dns_resolver : "");
		mta_log_end(&ll);
		d->dns = NULL;
		return -1;
	}
	return 0;
}

/* Start-up step: the writer thread.  0 or -1, logged. */
static int start_writer(struct daemon *d)
{
	struct mta_logline ll;
	int rc = mta_writer_start(&d->loop, d->spool, &d->writer);

	if (rc != 0) {
		mta_log_begin(&ll, MTA_LOG_ERR, "writer_start_failed");
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_end(&ll);
		d->writer = NULL;
		return -1;
	}
	return 0;
}

static void start_signals(struct daemon *d)
{
	uv_signal_init(&d->loop, &d->sigterm);
	uv_signal_init(&d->loop, &d->sigint);
	uv_signal_init(&d->loop, &d->sighup);
	uv_signal_start(&d->sigterm, on_signal, SIGTERM);
	uv_signal_start(&d->sigint, on_signal, SIGINT);
	uv_signal_start(&d->sighup, on_signal, SIGHUP);
	d->signals_started = true;
}

/* Start-up step: client TLS credentials.  Without the CA file level
 * verify cannot be met (webpki false); delivery still runs. */
static bool load_client_tls(struct daemon *d)
{
	struct mta_logline ll;
	char err[1024];

	if (mta_tls_creds_client(d->cfg->tls_ca_file, &d->client_tls, err,
				 sizeof(err)) == 0)
		return true;
	mta_log_begin(&ll, MTA_LOG_WARN, "tls_ca_file");
	mta_log_str(&ll, "error", err);
	mta_log_str(&ll, "effect",
		    "level verify cannot be met; opportunistic TLS still works");
	mta_log_end(&ll);
	return false;
}

/* Start-up step (still root): the listening sockets and the control
 * socket are opened; they serve nothing before start_parts().  The
 * listener counts as a part from here on: a failure after this step
 * unwinds through begin_shutdown() and the loop.  0 or -1 (logged). */
static int open_sockets(struct daemon *d)
{
	int rc = mtad_listener_open(&d->loop, d->cfg, &d->listener);

	if (d->listener != NULL)
		d->parts_running = 1;
	if (rc != 0)
		return -1;
	if (mtad_control_open(&d->loop, d->cfg, &d->control) != 0)
		return -1;
	return 0;
}

/* Start-up step: the parts that run on the loop: listeners (opened by
 * open_sockets()), MTA-STS, delivery, the control socket.  Each started
 * part is counted in parts_running and reports through part_done() when
 * stopped; on failure the caller shuts down what started.  0 or an error
 * code. */
static int start_parts(struct daemon *d, bool webpki)
{
	struct mtad_listener_params lp = {
		.loop = &d->loop,
		.cfg = d->cfg,
		.spool = d->spool,
		.writer = d->writer,
		.tls = d->tls,
		.on_queued = on_queued,
		.on_queued_arg = d,
	};
	int rc;

	rc = mtad_listener_start(d->listener, &lp);
	if (rc != 0)
		return rc;
	struct mta_mtasts_params mp = {
		.loop = &d->loop,
		.dns = d->dns,
		.spool = d->spool,
		.writer = d->writer,
		.ca_file = d->cfg->tls_ca_file,
		.https_port = d->cfg->mta_sts_https_port,
		.refresh_interval = d->cfg->mta_sts_refresh_interval,
	};
	if (mta_mtasts_start(&mp, &d->mtasts) != 0)
		d->mtasts = NULL;
	if (d->client_tls == NULL) {
		rc = MTA_EDNS; /* as before: no delivery, no daemon */
	} else {
		struct mta_delivery_params dp = {
			.loop = &d->loop,
			.cfg = d->cfg,
			.spool = d->spool,
			.writer = d->writer,
			.dns = d->dns,
			.tls = d->client_tls,
			.webpki = webpki,
			.policy = d->policy,
			.mtasts = d->mtasts,
			.auth_user = d->have_auth ? d->auth_user : NULL,
			.auth_plain = d->have_auth ? d->auth_plain : NULL,
		};
		rc = mta_delivery_start(&dp, &d->delivery);
		if (rc == 0)
			d->parts_running++;
		else
			d->delivery = NULL;
	}
	if (d->delivery == NULL && d->mtasts != NULL)
		d->parts_running++; /* stopped through delivery_done() */
	if (rc == 0) {
		/* the spool tools' way in (control.socket) */
		struct mtad_control_params cp = {
			.loop = &d->loop,
			.cfg = d->cfg,
			.spool = d->spool,
			.writer = d->writer,
			.delivery = &d->delivery,
			.mtasts = &d->mtasts,
			.version = MTAD_VERSION,
		};
		mtad_control_start(d->control, &cp);
	}
	return rc;
}

/*
 * Start-up as steps with one unwind path (acquire forward, release
 * backward): config, who to become (server.user), config files, the key
 * holder (forked while single-threaded; it takes the private key and
 * the relayhost password), spool, loop, DNS, signals, client TLS, the
 * sockets (listeners, control socket: still root), the privilege drop
 * and sandbox, the writer thread, then the parts on the loop.  Once the parts are started
 * (even partly) every exit goes through begin_shutdown() and the loop,
 * which stops the writer and frees DNS when the last part is done.
 */
int main(int argc, char **argv)
{
	struct daemon d;
	struct mta_logline ll;
	const char *path = NULL;
	bool check = false;
	char err[1024];
	int rc;

	memset(&d, 0, sizeof(d));
	rc = parse_args(argc, argv, &path, &check);
	if (rc >= 0)
		return rc;
	err[0] = '\0';
	if (mta_config_load(path, environ, &d.cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "mtad: %s\n", err);
		return 2;
	}
	if (check)
		return check_config(&d);
	mta_log_set_level((enum mta_log_level)d.cfg->log_level);
	signal(SIGPIPE, SIG_IGN);
	if (mta_privdrop_resolve(d.cfg->server_user, d.cfg->server_group,
				 &d.priv, err, sizeof(err)) != 0) {
		fprintf(stderr, "mtad: %s\n", err);
		mta_config_free(d.cfg);
		return 2;
	}

	mta_log_begin(&ll, MTA_LOG_INFO, "start");
	mta_log_str(&ll, "version", MTAD_VERSION);
	mta_log_int(&ll, "pid", (long long)getpid());
	mta_log_str(&ll, "config", path);
	mta_log_str(&ll, "hostname", d.cfg->server_hostname);
	mta_log_end(&ll);

	d.exit_code = 1;
	d.daemon_mode = true;
	if (load_config_files(&d) != 0 || start_keyholder(&d) != 0) {
		d.exit_code = 2;
		goto out_config;
	}
	/* the spool must suit the user we become (created and given to it
	 * when missing; someone else's spool is an error naming the fix) */
	if (mta_privdrop_check_dir(&d.priv, d.cfg->spool_dir, err,
				   sizeof(err)) != 0) {
		key_error(d.cfg, "spool", "dir", "%s", err);
		d.exit_code = 2;
		goto out_config;
	}
	if (open_spool(&d) != 0)
		goto out_config;
	if ((rc = uv_loop_init(&d.loop)) != 0) {
		mta_log_begin(&ll, MTA_LOG_ERR, "loop_init_failed");
		mta_log_str(&ll, "error", mta_errname(rc));
		mta_log_end(&ll);
		goto out_spool;
	}
	d.loop.data = &d;
	if (start_dns(&d) != 0)
		goto out_loop;
	start_signals(&d);
	bool webpki = load_client_tls(&d);

	/* from here on the loop runs and stop_everything() unwinds.
	 * Everything root had to open is open after open_sockets(): drop
	 * and sandbox before the first thread (the writer; curl's and
	 * libuv's come later still) starts. */
	if (open_sockets(&d) == 0 && privsep_lockdown(&d) == 0 &&
	    start_writer(&d) == 0) {
#ifdef MTAD_TEST_HOOKS
		test_escape_hook();
#endif
		rc = start_parts(&d, webpki);
	} else {
		rc = -1;
	}
	if (rc == 0) {
		mta_log_begin(&ll, MTA_LOG_INFO, "ready");
		mta_log_int(&ll, "pid", (long long)getpid());
		mta_log_end(&ll);
		d.exit_code = 0;
	} else if (d.parts_running == 0) {
		stop_everything(&d); /* no listener to wait for */
	} else {
		begin_shutdown(&d);
	}
	/* Runs until every handle is closed after a signal. */
	uv_run(&d.loop, UV_RUN_DEFAULT);
	mtad_listener_free(d.listener);
out_loop:
	if (d.writer != NULL) {
		mta_writer_stop(d.writer);
		d.writer = NULL;
	}
	uv_run(&d.loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&d.loop) != 0) {
		uv_run(&d.loop, UV_RUN_DEFAULT);
		(void)uv_loop_close(&d.loop);
	}
out_spool:
	mta_spool_close(d.spool);
out_config:
	mta_tls_creds_free(d.tls);
	mta_keyholder_free(d.holder);
	explicit_bzero(d.auth_plain, sizeof(d.auth_plain));
	mta_tls_creds_free(d.client_tls);
	mta_tlspolicy_free(d.policy);
	explicit_bzero(d.auth_pass, sizeof(d.auth_pass));
	mta_config_free(d.cfg);
	return d.exit_code;
}
