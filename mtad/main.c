/*
 * mtad - the daemon: parse arguments and config, open the spool, start the
 * writer thread and the listeners, run the loop, shut down on SIGTERM.
 *
 * Usage: mtad -c FILE [--check-config]
 * Exit: 0 after a clean shutdown (or a valid --check-config), 1 on an
 * operational failure (spool, listen, TLS files), 2 on bad usage or config.
 */
#include "config.h"
#include "ct.h"
#include "ctlsock.h"
#include "delivery.h"
#include "dkim.h"
#include "dns.h"
#include "err.h"
#include "auth.h"
#include "health.h"
#include "http.h"
#include "keyholder.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
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
#include <limits.h>
#include <sys/stat.h>
#include <time.h>
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
	struct mta_ct_loglist *ct; /* tls.ct_log_list, or NULL */
	uv_timer_t ct_timer;	   /* hourly: is the log list stale? */
	struct mta_mtasts *mtasts;
	struct mtad_control *control;
	char auth_user[256], auth_pass[256];
	bool have_auth;
	struct mta_privdrop priv; /* who we become after start-up */
	bool daemon_mode;	  /* not --check-config: keys go to the holder */
	struct mta_keyholder *holder;
	char auth_plain[700];	  /* AUTH PLAIN blob from the holder */
	bool dropped;		  /* privsep_lockdown() done: reloads read
				   * as the user, the key via the holder */
	char *held_key, *held_auth; /* the holder's files (its start) */
	struct mta_auth_users *users; /* auth.users_file (submission AUTH) */
	unsigned parts_running; /* listener, delivery */
	uv_signal_t sigterm, sigint, sighup;
	bool signals_started;
	int exit_code;
	/* HTTP endpoint (health, metrics) */
	struct mta_metrics metrics;
	struct mtad_http *http;
	struct mtad_health health;
	bool accepting; /* listeners bound, not draining: /readyz */
	/* SIGTERM drain */
	uv_timer_t grace_timer;
	bool shutting_down;
	/* SIGHUP reload: generations replaced and still in use */
	struct generation *retired;
	uv_timer_t retire_timer;
	bool webpki;
	bool reloaded_once; /* the start-up generation is retired (pinned) */
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

static void stop_lifecycle(struct daemon *d);

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
	stop_lifecycle(d);
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

static void start_grace(struct daemon *d);

static void begin_shutdown(struct daemon *d)
{
	if (d->shutting_down)
		return;
	d->shutting_down = true;
	d->accepting = false;
	start_grace(d);
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

/* Step (issue 13, submission): auth.users_file, read now, while mtad may
 * still be root: the table lives in memory from here on, so the file need
 * not be readable by the unprivileged user (a SIGHUP reload reads it
 * again, as that user: make it readable by server.group, mode 0640, to
 * change users without a restart).  0 or -1, printed. */
static int load_auth_users(struct daemon *d)
{
	char err[1024];
	int rc;

	if (d->cfg->auth_users_file == NULL)
		return 0;
	rc = mta_auth_users_load(d->cfg->auth_users_file, &d->users, err,
				 sizeof(err));
	if (rc != 0) {
		key_error(d->cfg, "auth", "users_file", "%s", err);
		return -1;
	}
	return 0;
}

/* After the drop (reload): the paths of the holder's files cannot change
 * (it reads only those); a different one is reported, the old file
 * stays in use. */
static void holder_path_not_live(const char *key, const char *held,
				 const char *now)
{
	struct mta_logline ll;

	if (now == NULL || (held != NULL && strcmp(held, now) == 0))
		return;
	mta_log_begin(&ll, MTA_LOG_WARN, "reload_not_live");
	mta_log_str(&ll, "key", key);
	mta_log_str(&ll, "reason", strcmp(key, "server.tls_key") == 0
					   ? "restart to use a new key path"
					   : "restart to use a new file path");
	mta_log_end(&ll);
}

/* Reload after the drop: the key holder reads the key and the relayhost
 * password again (its own files, mta_keyholder_reload()); the
 * certificate is loaded here with the held key (GnuTLS checks that they
 * match), the AUTH PLAIN blob asked for again.  0 or -1, printed. */
static int reload_held(struct daemon *d)
{
	char err[1024] = "", user[256] = "";

	holder_path_not_live("server.tls_key", d->held_key, d->cfg->tls_key);
	holder_path_not_live("delivery.relayhost_auth_file", d->held_auth,
			     d->cfg->relayhost_auth_file);
	if (d->holder != NULL &&
	    mta_keyholder_reload(d->holder, user, sizeof(user)) != 0) {
		fprintf(stderr, "mtad: key holder: %s%s%s: cannot read again\n",
			d->held_key ? d->held_key : "",
			d->held_key && d->held_auth ? ", " : "",
			d->held_auth ? d->held_auth : "");
		return -1;
	}
	if (d->cfg->tls_cert != NULL && d->held_key != NULL &&
	    (check_readable(d->cfg, "server", "tls_cert", d->cfg->tls_cert) ||
	     mta_tls_creds_load_held(d->cfg->tls_cert, d->holder, &d->tls, err,
				     sizeof(err)) != 0)) {
		if (err[0] != '\0')
			key_error(d->cfg, "server", "tls_cert",
				  "cannot load with the held key: %s", err);
		return -1;
	}
	if (d->cfg->relayhost_auth_file != NULL && d->held_auth != NULL &&
	    user[0] != '\0') {
		snprintf(d->auth_user, sizeof(d->auth_user), "%s", user);
		if (mta_keyholder_auth(d->holder, d->auth_plain,
				       sizeof(d->auth_plain)) != 0) {
			key_error(d->cfg, "delivery", "relayhost_auth_file",
				  "the key holder did not answer");
			return -1;
		}
		d->have_auth = true;
	}
	return 0;
}

/* Everything the config names that can be checked before start-up; also
 * what --check-config checks, and what a reload reads again (after the
 * drop: the key and the relayhost password through the holder,
 * reload_held()).  Prints the error; 0 or -1. */
static int load_config_files(struct daemon *d)
{
	char err[1024];

	if (d->dropped) {
		if (reload_held(d) != 0)
			return -1;
	} else if (d->cfg->tls_cert != NULL &&
		   (d->daemon_mode
			    ? check_readable(d->cfg, "server", "tls_cert",
					     d->cfg->tls_cert) ||
				      check_readable(d->cfg, "server", "tls_key",
						     d->cfg->tls_key)
			    : load_server_tls(d) != 0)) {
		return -1;
	}
	if (d->cfg->tls_policy_file != NULL &&
	    mta_tlspolicy_load(d->cfg->tls_policy_file, &d->policy, err,
			       sizeof(err)) != 0) {
		key_error(d->cfg, "tls", "policy_file", "%s", err);
		return -1;
	}
	if (!d->dropped && d->cfg->relayhost_auth_file != NULL &&
	    read_auth_file(d, d->cfg->relayhost_auth_file) != 0)
		return -1;
	if (load_auth_users(d) != 0)
		return -1;
	if (d->cfg->tls_ct_log_list != NULL &&
	    mta_ct_loglist_load(d->cfg->tls_ct_log_list, &d->ct, err,
				sizeof(err)) != 0) {
		key_error(d->cfg, "tls", "ct_log_list", "%s", err);
		return -1;
	}
	/* the DKIM keys ride on the config snapshot (freed with it) */
	if (d->cfg->dkim_keys_file != NULL &&
	    mta_dkim_keys_load(d->cfg->dkim_keys_file, &d->cfg->dkim_keys,
			       err, sizeof(err)) != 0) {
		key_error(d->cfg, "dkim", "keys_file", "%s", err);
		return -1;
	}
	return 0;
}

/* Files the daemon still reads after the drop, and nothing else.  At
 * run time (strace over the DANE and MTA-STS delivery tests, see
 * docs/security.md, "How the lists were found"): the CA file (curl, at
 * every MTA-STS fetch) and /proc/sys/vm/overcommit_memory (glibc's
 * malloc asks once whether it may give memory back); GnuTLS reads its
 * system config at load, getdns the trust anchor when its context is
 * made, dates are gmtime_r (no time zone files).  Then what a SIGHUP
 * reload reads again (reload()): the config file, server.tls_cert (the
 * public chain; the key is the holder's), tls.policy_file, tls.ca_file,
 * dns.trust_anchor, tls.ct_log_list, auth.users_file,
 * delivery.routes_file and delivery.shaping_file (the last two are
 * read after the drop at start too, when delivery starts), and
 * dkim.keys_file (its directory also holds the DKIM keys it names when
 * they are relative to it). */
#define RO_MAX 12

/* Is path (or what it names) inside dir?  Both resolved. */
static bool path_within(const char *dir, const char *path)
{
	char rd[PATH_MAX], rp[PATH_MAX];
	size_t n;

	if (path == NULL || realpath(dir, rd) == NULL)
		return false;
	if (realpath(path, rp) == NULL)
		snprintf(rp, sizeof(rp), "%s", path);
	n = strlen(rd);
	return strncmp(rd, rp, n) == 0 && (rp[n] == '/' || n == 1);
}

/* The Landlock grant for one file the daemon reads again on reload:
 * its directory, so a file replaced by rename (editors, ConfigMap and
 * Secret updates, certbot) is still readable; but the file alone when
 * that directory (or anything below it) holds the private key or the
 * relayhost password, which only the key holder may read.  Into buf. */
static const char *read_grant(const struct daemon *d, const char *path,
			      char *buf, size_t len)
{
	char *slash;

	if (path == NULL)
		return NULL;
	snprintf(buf, len, "%s", path);
	slash = strrchr(buf, '/');
	if (slash == NULL)
		snprintf(buf, len, ".");
	else if (slash == buf)
		buf[1] = '\0';
	else
		*slash = '\0';
	/* never a whole system directory: the file alone */
	if (strcmp(buf, "/") == 0 || strcmp(buf, "/etc") == 0 ||
	    strcmp(buf, "/tmp") == 0 || path_within(buf, d->held_key) ||
	    path_within(buf, d->held_auth) ||
	    path_within(buf, d->cfg->tls_key) ||
	    path_within(buf, d->cfg->relayhost_auth_file))
		snprintf(buf, len, "%s", path);
	return buf;
}

static size_t runtime_read_paths(const struct daemon *d,
				 const char *ro[static RO_MAX],
				 char bufs[][PATH_MAX])
{
	const struct mta_config *c = d->cfg;
	const char *files[] = {
		c->origin_path,	     c->tls_cert,     c->tls_policy_file,
		c->tls_ca_file,	     c->dns_trust_anchor,
		c->tls_ct_log_list,  c->auth_users_file,
		c->routes_file,	     c->shaping_file,
		c->dkim_keys_file,
	};
	size_t n = 0;

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		if (files[i] != NULL)
			ro[n] = read_grant(d, files[i], bufs[n], PATH_MAX),
			n++;
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
	/* the holder reads these again on SIGHUP (mta_keyholder_reload) */
	if ((d->cfg->tls_key != NULL &&
	     (d->held_key = strdup(d->cfg->tls_key)) == NULL) ||
	    (d->have_auth &&
	     (d->held_auth = strdup(d->cfg->relayhost_auth_file)) == NULL)) {
		fprintf(stderr, "mtad: key holder: out of memory\n");
		return -1;
	}
	if (mta_keyholder_start(d->cfg->tls_key, d->held_auth,
				d->have_auth ? d->auth_user : NULL,
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
	const char *ro[RO_MAX], *rw[1] = {d->cfg->spool_dir};
	static char bufs[RO_MAX][PATH_MAX];
	struct mta_logline ll;
	char err[600] = "";
	bool log_only = false;
	int abi = 0, rc;

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

	size_t nro = runtime_read_paths(d, ro, bufs);
	if (mta_sandbox_landlock(rw, 1, ro, nro, &abi, err, sizeof(err)) !=
	    0)
		goto fail;
	d->dropped = true;
	mta_log_begin(&ll, abi > 0 ? MTA_LOG_INFO : MTA_LOG_WARN, "sandbox");
	mta_log_str(&ll, "layer", "landlock");
	mta_log_str(&ll, "active", abi > 0 ? "yes" : "no (kernel lacks it)");
	mta_log_int(&ll, "abi", abi);
	mta_log_str(&ll, "rw", d->cfg->spool_dir);
	mta_log_end(&ll);
	for (size_t i = 0; abi > 0 && i < nro; i++) {
		mta_log_begin(&ll, MTA_LOG_DEBUG, "sandbox_read");
		mta_log_str(&ll, "path", ro[i]);
		mta_log_end(&ll);
	}

#ifdef MTAD_TEST_HOOKS
	/* developing the allow-list: log instead of kill (test builds only) */
	log_only = getenv("MTA_SECCOMP_LOG") != NULL;
#endif
	rc = mta_sandbox_seccomp(MTA_SANDBOX_DAEMON, log_only, err,
				 sizeof(err));
	if (rc < 0)
		goto fail;
	mta_log_begin(&ll, rc == 0 ? MTA_LOG_INFO : MTA_LOG_WARN, "sandbox");
	mta_log_str(&ll, "layer", "seccomp");
	if (rc != 0) {
		mta_log_str(&ll, "active", "no (kernel lacks it)");
	} else {
		mta_log_str(&ll, "active", log_only ? "log-only" : "yes");
		mta_log_str(&ll, "action", log_only ? "log" : "kill-process");
	}
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

/* Logs event=ct_log_list_stale when the list's log_list_timestamp (or,
 * without one, the file's mtime) is older than tls.ct_log_list_max_age:
 * at start, on reload and hourly. */
static void ct_check_stale(struct daemon *d)
{
	struct mta_logline ll;
	struct stat sb;
	int64_t at, now = (int64_t)time(NULL);

	if (d->ct == NULL || d->cfg->tls_ct_log_list == NULL)
		return;
	at = d->ct->list_ms / 1000;
	if (at == 0 && stat(d->cfg->tls_ct_log_list, &sb) == 0)
		at = (int64_t)sb.st_mtime;
	if (now - at <= (int64_t)d->cfg->tls_ct_log_list_max_age)
		return;
	mta_log_begin(&ll, MTA_LOG_WARN, "ct_log_list_stale");
	mta_log_str(&ll, "file", d->cfg->tls_ct_log_list);
	mta_log_int(&ll, "age_s", now - at);
	mta_log_int(&ll, "max_age_s", d->cfg->tls_ct_log_list_max_age);
	mta_log_str(&ll, "effect", "logs retired or added since are not "
				   "known; update the file and send SIGHUP");
	mta_log_end(&ll);
}

static void on_ct_timer(uv_timer_t *t)
{
	ct_check_stale(t->loop->data);
}

static void reload(struct daemon *d);

static void on_signal(uv_signal_t *h, int signum)
{
	struct daemon *d = the_daemon(h->loop);
	struct mta_logline ll;

	if (signum == SIGHUP) {
		reload(d);
		return;
	}
	/* logged once nothing accepts any more, on any loop thread */
	if (d->listener != NULL)
		mtad_listener_stop_accepting(d->listener);
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
	mta_auth_users_unref(d->users);
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

static int open_http(struct daemon *d);

/* Start-up step (still root): the listening sockets (SMTP, submission,
 * submissions), the control socket and the HTTP endpoint are opened; they serve nothing before start_parts().  The
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
	if (d->cfg->http_listen != NULL && open_http(d) != 0)
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
		.users = d->users,
		.on_queued = on_queued,
		.on_queued_arg = d,
		.metrics = &d->metrics,
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
		.metrics = &d->metrics,
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
			.ct = d->ct,
			.mtasts = d->mtasts,
			.auth_user = d->have_auth ? d->auth_user : NULL,
			.auth_plain = d->have_auth ? d->auth_plain : NULL,
			.metrics = &d->metrics,
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

/* ---- HTTP endpoint, drain and reload (issue 13) ---------------------- */

/*
 * One generation of what SIGHUP replaces: the config snapshot and what it
 * names (inbound certificate, client credentials with the CA file, the
 * policy table).  The current one lives in struct daemon's fields; a
 * replaced one waits on d->retired until its users are gone: inbound
 * sessions keep the snapshot they started with, delivery connections the
 * credentials their TLS session holds.  "Gone" is checked conservatively
 * (no inbound session and no delivery connection open at one moment).
 * The start-up generation is pinned: the control socket and the
 * listener keep pointers into its config for the daemon's life.
 */
struct generation {
	struct generation *next;
	bool pinned;
	struct mta_config *cfg;
	struct mta_tls_creds *tls, *client_tls;
	struct mta_tlspolicy *policy;
	struct mta_ct_loglist *ct;
};

static void free_generation(struct generation *g)
{
	mta_ct_loglist_free(g->ct);
	mta_tls_creds_free(g->tls);
	mta_tls_creds_free(g->client_tls);
	mta_tlspolicy_free(g->policy);
	mta_config_free(g->cfg);
	free(g);
}

/* Frees the retired generations nobody can use any more (all of them
 * when the daemon is done). */
static void free_retired(struct daemon *d, bool all)
{
	struct generation **pp = &d->retired, *g;

	if (!all) {
		if (d->listener != NULL &&
		    mtad_listener_nsessions(d->listener) > 0)
			return;
		if (d->delivery != NULL && mta_delivery_nconn(d->delivery) > 0)
			return;
	}
	while ((g = *pp) != NULL) {
		if (g->pinned && !all) {
			pp = &g->next;
			continue;
		}
		*pp = g->next;
		free_generation(g);
	}
}

static void on_retire_timer(uv_timer_t *t)
{
	free_retired(the_daemon(t->loop), false);
}

static void on_grace_timer(uv_timer_t *t)
{
	struct daemon *d = the_daemon(t->loop);
	struct mta_logline ll;

	mta_log_begin(&ll, MTA_LOG_WARN, "shutdown_grace_over");
	mta_log_int(&ll, "grace_s", d->cfg->shutdown_grace);
	mta_log_end(&ll);
	if (d->listener != NULL)
		mtad_listener_shutdown_now(d->listener);
}

/* Start-up step: the lifecycle timers (drain, retired generations). */
static void start_lifecycle(struct daemon *d)
{
	uv_timer_init(&d->loop, &d->grace_timer);
	uv_timer_init(&d->loop, &d->retire_timer);
	uv_timer_start(&d->retire_timer, on_retire_timer, 5000, 5000);
	uv_unref((uv_handle_t *)&d->retire_timer);
	uv_timer_init(&d->loop, &d->ct_timer);
	uv_timer_start(&d->ct_timer, on_ct_timer, 3600 * 1000, 3600 * 1000);
	uv_unref((uv_handle_t *)&d->ct_timer);
	ct_check_stale(d);
}

static void stop_lifecycle(struct daemon *d)
{
	if (d->http != NULL)
		mtad_http_stop(d->http, NULL, NULL);
	if (d->grace_timer.loop != NULL) {
		uv_close((uv_handle_t *)&d->grace_timer, NULL);
		uv_close((uv_handle_t *)&d->retire_timer, NULL);
		uv_close((uv_handle_t *)&d->ct_timer, NULL);
	}
}

/* SIGTERM: listeners stop accepting at once (begin_shutdown()); SMTP
 * transactions in flight get server.shutdown_grace to finish. */
static void start_grace(struct daemon *d)
{
	if (d->grace_timer.loop == NULL)
		return;
	uv_timer_start(&d->grace_timer, on_grace_timer,
		       (uint64_t)d->cfg->shutdown_grace * 1000u, 0);
	uv_unref((uv_handle_t *)&d->grace_timer);
}

/* Part of open_sockets() (still root): the HTTP endpoint on http.listen,
 * bound and listening; it answers once the loop runs, after
 * start_parts().  0 or -1 (logged). */
static int open_http(struct daemon *d)
{
	d->health.spool = d->spool;
	d->health.metrics = &d->metrics;
	d->health.delivery = &d->delivery;
	d->health.accepting = &d->accepting;
	struct mtad_http_params hp = {
		.loop = &d->loop,
		.addr = &d->cfg->http_addr,
		.name = d->cfg->http_listen,
		.handle = mtad_health_handle,
		.arg = &d->health,
	};
	return mtad_http_start(&hp, &d->http) == 0 ? 0 : -1;
}

/* Keys the running daemon cannot change: a new value is reported and
 * takes effect at the next restart. */
static const char *const not_live[] = {
	"server.listen",      "spool.dir",	  "spool.max_size",
	"dns.resolver",	      "dns.trust_anchor", "dns.timeout",
	"mta_sts.https_port", "mta_sts.refresh_interval",
	"control.socket",     "control.group",	  "http.listen",
	"server.shutdown_grace", "submission.listen",	  "submissions.listen",
	"server.threads",
};

/* The value line of section.key in mta_config_print() output, or NULL. */
static const char *printed_value(const char *text, const char *dotted,
				 size_t *len)
{
	const char *dot = strchr(dotted, '.'), *p = text, *sect = "";
	size_t sl = (size_t)(dot - dotted), kl = strlen(dot + 1);

	while (*p != '\0') {
		const char *e = strchr(p, '\n');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (p[0] == '[') {
			sect = p + 1;
		} else if (strncmp(sect, dotted, sl) == 0 && sect[sl] == ']' &&
			   n > kl && strncmp(p, dotted + sl + 1, kl) == 0 &&
			   (p[kl] == ' ' || p[kl] == '=')) {
			/* continuation lines belong to the value */
			const char *q = e;
			while (q != NULL && (q[1] == ' ' || q[1] == '\t'))
				q = strchr(q + 1, '\n');
			*len = (q ? (size_t)(q - p) : strlen(p));
			return p;
		}
		if (e == NULL)
			break;
		p = e + 1;
	}
	return NULL;
}

static char *print_config(const struct mta_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		return NULL;
	mta_config_print(c, f);
	fclose(f);
	return buf;
}

/* Logs every key of not_live whose value differs; the count. */
static int report_not_live(const struct mta_config *old,
			   const struct mta_config *nw)
{
	char *a = print_config(old), *b = print_config(nw);
	struct mta_logline ll;
	int n = 0;

	for (size_t i = 0; a && b && i < sizeof(not_live) / sizeof(*not_live);
	     i++) {
		size_t la = 0, lb = 0;
		const char *va = printed_value(a, not_live[i], &la);
		const char *vb = printed_value(b, not_live[i], &lb);
		if ((va == NULL) == (vb == NULL) &&
		    (va == NULL || (la == lb && memcmp(va, vb, la) == 0)))
			continue;
		n++;
		mta_log_begin(&ll, MTA_LOG_WARN, "reload_not_live");
		mta_log_str(&ll, "key", not_live[i]);
		mta_log_str(&ll, "effect",
			    "changed in the file; the running daemon keeps the "
			    "old value until a restart");
		mta_log_end(&ll);
	}
	free(a);
	free(b);
	return n;
}

static void reload_failed(const char *why)
{
	struct mta_logline ll;

	mta_log_begin(&ll, MTA_LOG_ERR, "reload_failed");
	mta_log_str(&ll, "error", why);
	mta_log_str(&ll, "effect", "the configuration in force is unchanged");
	mta_log_end(&ll);
}

/*
 * SIGHUP: a new snapshot of the config file (and the environment of the
 * start), with the files it names loaded again through the start-up
 * functions (load_config_files(): inbound certificate and key via
 * load_server_tls(), policy table, relayhost credentials; then the CA
 * file, then delivery's routing and shaping tables).  Anything that fails refuses the whole reload, logged, and the
 * old generation stays in force.  Otherwise the new one is handed to the
 * listener (new sessions), delivery (new decisions and connections) and
 * MTA-STS (CA file), log.level applies at once, and the old generation
 * is retired (freed when its users are gone).  Long (~125 lines) because
 * every step of the reload and its refusal are read in one order here;
 * the loading itself is in load_config_files().
 */
static void reload(struct daemon *d)
{
	struct mta_logline ll;
	struct mta_config *ncfg = NULL;
	struct mta_tls_creds *nclient = NULL;
	char err[1024] = "";
	const char *path = d->cfg->origin_path;

	mta_log_begin(&ll, MTA_LOG_INFO, "reload");
	mta_log_str(&ll, "config", path ? path : "");
	mta_log_end(&ll);
	if (d->shutting_down) {
		reload_failed("shutting down");
		return;
	}
	if (mta_config_load(path, environ, &ncfg, err, sizeof(err)) != 0) {
		reload_failed(err);
		return;
	}
	if (mta_tls_creds_client(ncfg->tls_ca_file, &nclient, err,
				 sizeof(err)) != 0) {
		char why[1200];
		snprintf(why, sizeof(why), "tls.ca_file: %s", err);
		mta_config_free(ncfg);
		reload_failed(why);
		return;
	}
	struct generation *old = calloc(1, sizeof(*old));
	if (old == NULL) {
		mta_tls_creds_free(nclient);
		mta_config_free(ncfg);
		reload_failed("out of memory");
		return;
	}
	/* load the named files into d as at start-up; put back on failure */
	char save_user[sizeof(d->auth_user)], save_pass[sizeof(d->auth_pass)];
	char save_plain[sizeof(d->auth_plain)];
	bool save_have = d->have_auth;
	memcpy(save_user, d->auth_user, sizeof(save_user));
	memcpy(save_pass, d->auth_pass, sizeof(save_pass));
	memcpy(save_plain, d->auth_plain, sizeof(save_plain));
	old->cfg = d->cfg;
	old->tls = d->tls;
	old->client_tls = d->client_tls;
	old->policy = d->policy;
	old->ct = d->ct;
	old->pinned = !d->reloaded_once;
	struct mta_auth_users *save_users = d->users;
	d->cfg = ncfg;
	d->tls = NULL;
	d->policy = NULL;
	d->users = NULL;
	d->ct = NULL;
	d->have_auth = false;
	/* delivery.routes_file and delivery.shaping_file: parsed before the
	 * commit, handed to delivery below (a broken table refuses all) */
	struct mta_delivery_tables *ntab = NULL;
	const char *why = "a file named by the new configuration does not "
			  "load (see the line before)";
	bool bad = load_config_files(d) != 0;
	if (!bad && d->delivery != NULL &&
	    mta_delivery_tables_load(ncfg, d->have_auth, &ntab, err,
				     sizeof(err)) != 0) {
		bad = true;
		why = err;
	}
	if (bad) {
		mta_tls_creds_free(d->tls);
		mta_tlspolicy_free(d->policy);
		mta_auth_users_unref(d->users);
		d->users = save_users;
		mta_ct_loglist_free(d->ct);
		mta_tls_creds_free(nclient);
		mta_config_free(ncfg);
		d->cfg = old->cfg;
		d->tls = old->tls;
		d->policy = old->policy;
		d->ct = old->ct;
		d->have_auth = save_have;
		memcpy(d->auth_user, save_user, sizeof(save_user));
		memcpy(d->auth_pass, save_pass, sizeof(save_pass));
		memcpy(d->auth_plain, save_plain, sizeof(save_plain));
		explicit_bzero(save_pass, sizeof(save_pass));
		explicit_bzero(save_plain, sizeof(save_plain));
		free(old);
		reload_failed(why);
		return;
	}
	explicit_bzero(save_pass, sizeof(save_pass));
	explicit_bzero(save_plain, sizeof(save_plain));
	d->client_tls = nclient;
	d->webpki = true;
	d->reloaded_once = true;
	int nl = report_not_live(old->cfg, ncfg);

	/* hand the new generation over */
	mta_log_set_level((enum mta_log_level)ncfg->log_level);
	if (d->listener != NULL)
		mtad_listener_reconfigure(d->listener, ncfg, d->tls);
	/* AUTH users: sessions and verifications hold their own reference */
	if (d->listener != NULL)
		mtad_listener_set_users(d->listener, d->users);
	mta_auth_users_unref(save_users);
	if (d->delivery != NULL) {
		struct mta_delivery_params dp = {
			.cfg = ncfg,
			.tls = d->client_tls,
			.webpki = d->webpki,
			.policy = d->policy,
			.ct = d->ct,
			.auth_user = d->have_auth ? d->auth_user : NULL,
			.auth_plain = d->have_auth ? d->auth_plain : NULL,
			.tables = ntab,
		};
		mta_delivery_reconfigure(d->delivery, &dp);
	}
	if (d->mtasts != NULL)
		mta_mtasts_set_ca_file(d->mtasts, ncfg->tls_ca_file);
	old->next = d->retired;
	d->retired = old;
	free_retired(d, false);

	mta_log_begin(&ll, MTA_LOG_INFO, "reloaded");
	mta_log_int(&ll, "log_level", ncfg->log_level);
	mta_log_str(&ll, "tls_cert", ncfg->tls_cert ? ncfg->tls_cert : "");
	mta_log_int(&ll, "not_live", nl);
	mta_log_end(&ll);
	ct_check_stale(d);
}

/*
 * Start-up as steps with one unwind path (acquire forward, release
 * backward; ~125 lines because the steps and their unwinding are read
 * together here, each step is its own function): config, who to become (server.user), config files, the key
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
	mta_metrics_init(&d.metrics);
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

	d.webpki = webpki;
	start_lifecycle(&d);

	/* from here on the loop runs and stop_everything() unwinds.
	 * Everything root had to open is open after open_sockets() (SMTP,
	 * submission, submissions, control, HTTP): drop and sandbox before
	 * the first thread (the writer; curl's and libuv's come later
	 * still) starts.  Nothing is served before start_parts(): the loop
	 * first runs after it. */
	if (open_sockets(&d) == 0 && privsep_lockdown(&d) == 0 &&
	    start_writer(&d) == 0) {
		mta_writer_set_metrics(d.writer, &d.metrics);
#ifdef MTAD_TEST_HOOKS
		test_escape_hook();
#endif
		rc = start_parts(&d, webpki);
	} else {
		rc = -1;
	}
	if (rc == 0) {
		d.accepting = true;
		mta_log_begin(&ll, MTA_LOG_INFO, "ready");
		mta_log_int(&ll, "pid", (long long)getpid());
		mta_log_int(&ll, "threads",
			    mtad_listener_threads(d.listener));
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
	mtad_http_free(d.http);
	free_retired(&d, true);
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
	free(d.held_key);
	free(d.held_auth);
	explicit_bzero(d.auth_plain, sizeof(d.auth_plain));
	mta_tls_creds_free(d.client_tls);
	mta_tlspolicy_free(d.policy);
	mta_ct_loglist_free(d.ct);
	explicit_bzero(d.auth_pass, sizeof(d.auth_pass));
	mta_auth_users_unref(d.users);
	mta_config_free(d.cfg);
	return d.exit_code;
}
