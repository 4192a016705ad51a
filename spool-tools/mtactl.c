/*
 * mtactl - inspect and act on queued mail and the MTA-STS cache
 * (docs/mtactl.8.md).  Reading commands read the spool directly, so they
 * work while mtad is stopped; every change goes through mtad's control
 * socket and is refused with a message when mtad is not running.
 * Exit: 0 ok, 1 operational failure (no such message, mtad not running,
 * spool error), 2 bad usage or config.
 */
#include "auth.h"
#include "err.h"
#include "spool_keys.h"
#include "sts.h"
#include "tool.h"
#include "tlsrpt.h"

#include <termios.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <ctype.h>
#include <strings.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mtactl [-c FILE] COMMAND ...\n"
		"  show QID                 envelope, per-recipient history, "
		"evidence\n"
		"  cat QID [--headers]      the stored message\n"
		"  hold|release|delete|bounce|flush|requeue QID\n"
		"  hold|release|delete|bounce|flush|requeue FILTERS [--yes]\n"
		"      FILTERS: --domain D --sender A --recipient A --reason T\n"
		"               --state queued|deferred|held|active "
		"--older-than AGE\n"
		"  evacuate --to HOST:PORT [QID ...|FILTERS] [--yes] "
		"[--verify]\n"
		"  policy list | policy show|refresh|purge|accept DOMAIN\n"
		"  explain DOMAIN [--connect] [--json] [--from SENDER]\n"
		"                                        what mtad decides "
		"for DOMAIN now, and why\n"
		"  stats | tlsrpt | tlsrpt show [DOMAIN] [--day YYYY-MM-DD]\n"
		"  tlsrpt send [--day YYYY-MM-DD]   send the TLS reports now\n"
		"  sites                    per shaping site: connections, "
		"rate, throttles\n"
		"  passwd USER [--file F]   set USER's AUTH password (read "
		"from stdin) in\n"
		"                           F or auth.users_file\n");
}

/* passwd: one line from stdin (no echo on a terminal), NUL-terminated
 * into pw; 0 or 2 (usage: empty, too long). */
static int read_password(char *pw, size_t cap)
{
	struct termios old, quiet;
	bool tty = isatty(STDIN_FILENO) &&
		   tcgetattr(STDIN_FILENO, &old) == 0;
	size_t n;
	int rc = 0;

	if (tty) {
		fprintf(stderr, "Password: ");
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		(void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	}
	if (fgets(pw, (int)cap, stdin) == NULL)
		pw[0] = '\0';
	if (tty) {
		(void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	n = strlen(pw);
	if (n > 0 && pw[n - 1] == '\n')
		pw[--n] = '\0';
	else if (n == cap - 1)
		rc = 2; /* longer than the buffer */
	if (n > 0 && pw[n - 1] == '\r')
		pw[--n] = '\0';
	if (rc == 0 && (n == 0 || n > MTA_AUTH_PASS_MAX))
		rc = 2;
	if (rc != 0)
		fprintf(stderr, "mtactl: passwd: the password must be one line "
			"of 1..%d octets on stdin\n", MTA_AUTH_PASS_MAX);
	return rc;
}

/* mtactl passwd USER [--file F]: a new yescrypt hash for USER in F
 * (default auth.users_file), written atomically (auth.h).  mtad reads the
 * file at start-up and on SIGHUP. */
static int cmd_passwd(const char *path, int nargs, char **args)
{
	struct mta_config *cfg = NULL;
	const char *file = NULL, *user = NULL;
	char pw[MTA_AUTH_PASS_MAX + 3], hash[512];
	int rc;

	for (int i = 0; i < nargs; i++) {
		if (strcmp(args[i], "--file") == 0 && i + 1 < nargs)
			file = args[++i];
		else if (args[i][0] != '-' && user == NULL)
			user = args[i];
		else {
			usage(stderr);
			return 2;
		}
	}
	if (user == NULL) {
		usage(stderr);
		return 2;
	}
	if (!mta_auth_name_ok(user)) {
		fprintf(stderr, "mtactl: passwd: bad user name (1..%d printable "
			"octets, no ':' or blanks)\n", MTA_AUTH_NAME_MAX);
		return 2;
	}
	if (file == NULL) {
		rc = tool_load_config("mtactl", path, &cfg);
		if (rc != 0)
			return rc;
		if (cfg->auth_users_file == NULL) {
			fprintf(stderr, "mtactl: passwd: auth.users_file is not "
				"set; give --file\n");
			mta_config_free(cfg);
			return 2;
		}
		file = cfg->auth_users_file;
	}
	rc = read_password(pw, sizeof(pw));
	if (rc == 0) {
		rc = mta_auth_hash(pw, hash, sizeof(hash));
		if (rc != 0)
			fprintf(stderr, "mtactl: passwd: cannot hash: %s\n",
				mta_strerror(rc));
	}
	explicit_bzero(pw, sizeof(pw));
	if (rc == 0) {
		rc = mta_auth_users_file_set(file, user, hash);
		if (rc != 0)
			fprintf(stderr, "mtactl: passwd: %s: %s\n", file,
				mta_strerror(rc));
		else
			printf("%s: password set for %s (reload mtad: "
			       "SIGHUP)\n", file, user);
	}
	if (rc != 0 && rc != 2)
		rc = 1;
	mta_config_free(cfg);
	return rc;
}

static int cmd_cat(struct mta_spool *sp, const char *qid, bool headers)
{
	char buf[65536];
	uint64_t off = 0;
	int hstate = 0; /* --headers: bytes of "\r\n\r\n" seen */

	for (;;) {
		size_t got = 0;
		int rc = mta_spool_read_body(sp, qid, off, buf, sizeof(buf),
					     &got);
		if (rc != 0) {
			fprintf(stderr, "mtactl: %s: %s\n", qid,
				mta_strerror(rc));
			return 1;
		}
		if (got == 0)
			break;
		if (headers) {
			/* up to and including the empty line */
			static const char end[] = "\r\n\r\n";
			size_t k = 0;
			for (; k < got && hstate < 4; k++) {
				if (buf[k] == end[hstate])
					hstate++;
				else if (buf[k] == '\n' && hstate == 1)
					hstate = 4; /* bare LF LF */
				else
					hstate = buf[k] == '\r' ? 1 : 0;
			}
			got = k;
		}
		if (fwrite(buf, 1, got, stdout) != got)
			return 1;
		off += got;
		if (headers && hstate == 4)
			break;
	}
	return fflush(stdout) == 0 ? 0 : 1;
}

static const char *state_name(uint8_t st)
{
	switch (st) {
	case MTA_RCPT_QUEUED:
		return "queued";
	case MTA_RCPT_SENT:
		return "sent";
	case MTA_RCPT_DEFERRED:
		return "deferred";
	case MTA_RCPT_BOUNCED:
		return "bounced";
	default:
		return "unknown";
	}
}

/* "tlsrpt": one line per counter, "<day> <domain> <policy type>
 * <result type> <count>" (the first four fields of the key, tlsrpt.h). */
static int print_counter(void *ud, const char *key, uint64_t value)
{
	char f[4][256];

	(void)ud;
	if (key[0] == 'S' && key[1] == ' ')
		return 0; /* a reported-day mark */
	if (sscanf(key, "%255s %255s %255s %255s", f[0], f[1], f[2], f[3]) !=
	    4)
		return 0;
	printf("%s %s %s %s %llu\n", f[0], f[1], f[2], f[3],
	       (unsigned long long)value);
	return 0;
}

struct show_ctx {
	struct mta_spool *sp;
	const struct mta_config *cfg;
	const char *domain, *day;
	int rc;
};

static int show_counter(void *ud, const char *key, uint64_t value)
{
	const struct show_ctx *s = ud;
	char day[16], dom[256];

	if (sscanf(key, "%15s %255s", day, dom) == 2 &&
	    strcmp(day, s->day) == 0 && strcmp(dom, s->domain) == 0)
		printf("  %s %llu\n", key, (unsigned long long)value);
	return 0;
}

static int show_one(void *ud, const char *day, const char *domain,
		    bool reported)
{
	struct show_ctx *s = ud;
	struct show_ctx one = *s;
	struct mta_tlsrpt_report rep;
	struct mta_tlsrpt_meta m;
	char id[400], contact[300];
	char *json = NULL;
	int rc;

	if ((s->domain != NULL && strcmp(s->domain, domain) != 0) ||
	    (s->day != NULL && strcmp(s->day, day) != 0))
		return 0;
	mta_tlsrpt_meta_from_config(s->cfg, day, domain, &m, id, sizeof(id),
				    contact, sizeof(contact));
	rc = mta_tlsrpt_collect(s->sp, day, domain, &rep);
	if (rc == 0) {
		rc = mta_tlsrpt_json(&rep, &m, &json);
		mta_tlsrpt_report_free(&rep);
	}
	if (rc != 0) {
		s->rc = rc;
		return 1;
	}
	printf("day %s domain %s reported %s\ncounters:\n", day, domain,
	       reported ? "yes" : "no");
	one.day = day;
	one.domain = domain;
	mta_spool_counter_foreach(s->sp, show_counter, &one);
	printf("report:\n%s\n", json);
	free(json);
	return 0;
}

/* tlsrpt [show [DOMAIN] [--day YYYY-MM-DD]] */
static int cmd_tlsrpt(struct mta_spool *sp, const struct mta_config *cfg,
		      size_t nargs, char **args)
{
	struct show_ctx s = {.sp = sp, .cfg = cfg};
	int rc;

	if (nargs == 0) {
		rc = mta_spool_counter_foreach(sp, print_counter, NULL);
	} else {
		for (size_t i = 1; i < nargs; i++) {
			if (strcmp(args[i], "--day") == 0 && i + 1 < nargs)
				s.day = args[++i];
			else
				s.domain = args[i];
		}
		rc = mta_tlsrpt_domains(sp, show_one, &s);
		if (rc == 0)
			rc = s.rc;
	}
	if (rc != 0) {
		fprintf(stderr, "mtactl: tlsrpt: %s\n", mta_strerror(rc));
		return 1;
	}
	return 0;
}

static int cmd_show(struct mta_spool *sp, const char *qid)
{
	struct mta_envelope e;
	char ts[64];
	int rc;

	mta_envelope_init(&e);
	rc = mta_spool_get(sp, qid, &e);
	if (rc != 0) {
		fprintf(stderr, "mtactl: %s: %s%s\n", qid, mta_strerror(rc),
			rc == MTA_ENOTFOUND ? " (mtaq lists the queue)" : "");
		return 1;
	}
	time_t t = (time_t)(e.arrival_us / 1000000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	printf("qid: %s\narrival: %s\nsize: %llu\nsender: <%s>\n", qid, ts,
	       (unsigned long long)e.size, e.sender ? e.sender : "");
	printf("client: %s\nhelo: %s\ntls: %s\n",
	       e.client_addr ? e.client_addr : "",
	       e.helo ? e.helo : "", e.tls ? e.tls : "none");
	if (e.envid)
		printf("envid: %s\n", e.envid);
	if (e.ret_raw)
		printf("ret: %s\n", e.ret_raw);
	int64_t since;
	if (mta_spool_held_get(sp, qid, &since) == 0) {
		time_t hs = (time_t)(since / 1000000);
		gmtime_r(&hs, &tm);
		strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
		printf("held: since %s (mtactl release %s)\n", ts, qid);
	}
	for (size_t i = 0; i < e.nrcpt; i++) {
		const struct mta_rcpt *r = &e.rcpts[i];
		printf("recipient: <%s> state=%s attempts=%u", r->addr,
		       state_name(r->state), r->attempts);
		if (r->notify_raw)
			printf(" notify=%s", r->notify_raw);
		if (r->orcpt)
			printf(" orcpt=%s", r->orcpt);
		if (r->relay)
			printf(" relay=%s", r->relay);
		printf("\n");
		if (r->next_attempt_us > 0 &&
		    (r->state == MTA_RCPT_DEFERRED ||
		     r->state == MTA_RCPT_QUEUED)) {
			time_t na = (time_t)(r->next_attempt_us / 1000000);
			gmtime_r(&na, &tm);
			strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
			printf("    next attempt: %s\n", ts);
		}
		if (r->last_response)
			printf("    last: %s\n", r->last_response);
		if (r->evidence)
			printf("    policy evidence: %s\n", r->evidence);
	}
	mta_envelope_free(&e);
	return 0;
}


/* ---- changes through mtad ------------------------------------------ */

static const struct {
	const char *name;
	enum mta_ctl_verb verb;
	const char *done; /* for the count line */
} actions[] = {
	{"hold", MTA_CTL_HOLD, "held"},
	{"release", MTA_CTL_RELEASE, "released"},
	{"delete", MTA_CTL_DELETE, "deleted"},
	{"bounce", MTA_CTL_BOUNCE, "bounced"},
	{"flush", MTA_CTL_FLUSH, "flushed"},
	{"requeue", MTA_CTL_FLUSH, "requeued"},
};

static bool qid_syntax(const char *s)
{
	static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	if (strlen(s) != MTA_QID_LEN)
		return false;
	for (; *s; s++)
		if (strchr(b32, *s) == NULL)
			return false;
	return true;
}

/* One request; prints ERR text; 0 ok, 1 failed. */
static int ctl_one(struct tool_ctl *c, enum mta_ctl_verb verb,
		   const char *arg, bool quiet)
{
	char code[32], text[1100];
	bool ok = false;

	if (tool_ctl_request(c, verb, arg, NULL, NULL, &ok, code,
			     sizeof(code), text, sizeof(text)) != 0) {
		fprintf(stderr, "mtactl: %s: connection to mtad lost; see the "
				"mtad log\n", arg ? arg : "");
		return 1;
	}
	if (!ok) {
		fprintf(stderr, "mtactl: %s: %s\n", arg ? arg : "", text);
		return 1;
	}
	if (!quiet)
		printf("%s: %s\n", arg ? arg : "", text);
	return 0;
}

struct sel {
	struct tool_filter f;
	struct tool_qidset held, active, out;
	int64_t now;
};

static int qidset_push(struct tool_qidset *o, const char *qid)
{
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 256;
		void *v = realloc(o->v, cap * sizeof(*o->v));
		if (v == NULL)
			return -ENOMEM;
		o->v = v;
		o->cap = cap;
	}
	snprintf(o->v[o->n++], MTA_QID_LEN + 1, "%s", qid);
	return 0;
}

static int on_select(void *ud, const struct mta_spool_entry *en)
{
	struct sel *s = ud;
	const char *st = tool_msg_state(en->env,
					tool_qidset_has(&s->held, en->qid),
					tool_qidset_has(&s->active, en->qid));
	if (!tool_filter_match(&s->f, en->qid, en->env, st, s->now))
		return 0;
	return qidset_push(&s->out, en->qid);
}

/* Fills s->out with the qids that pass s->f; 0, or 1 after a message. */
static int select_all(const struct mta_config *cfg, struct sel *s)
{
	struct mta_spool *sp;
	int rc = tool_open_spool("mtactl", cfg, true, &sp);
	if (rc != 0)
		return rc;
	s->now = tool_now_us();
	rc = tool_qidset_load_held(sp, &s->held);
	if (rc == 0)
		rc = tool_qidset_load_active(cfg, &s->active);
	if (rc == 0)
		rc = mta_spool_foreach(sp, on_select, s);
	mta_spool_close(sp);
	tool_qidset_free(&s->held);
	tool_qidset_free(&s->active);
	if (rc != 0) {
		fprintf(stderr, "mtactl: spool %s: %s\n", cfg->spool_dir,
			mta_strerror(rc));
		tool_qidset_free(&s->out);
		return 1;
	}
	return 0;
}

static int cmd_action(const struct mta_config *cfg, int ai, int argc,
		      char **argv)
{
	static const struct option fopts[] = {
		{"domain", required_argument, NULL, 'f'},
		{"sender", required_argument, NULL, 'f'},
		{"recipient", required_argument, NULL, 'f'},
		{"reason", required_argument, NULL, 'f'},
		{"state", required_argument, NULL, 'f'},
		{"older-than", required_argument, NULL, 'f'},
		{"yes", no_argument, NULL, 'y'},
		{NULL, 0, NULL, 0},
	};
	struct sel s;
	struct tool_ctl c;
	bool yes = false;
	int opt, li = 0, rc;

	memset(&s, 0, sizeof(s));
	optind = 0; /* restart getopt on the command's arguments */
	while ((opt = getopt_long(argc, argv, "+", fopts, &li)) != -1) {
		if (opt == 'y')
			yes = true;
		else if (opt != 'f' ||
			 tool_filter_parse_opt("mtactl", &s.f,
					       fopts[li].name, optarg) != 0) {
			usage(stderr);
			return 2;
		}
	}
	if (!s.f.any) {
		/* one or more IDs */
		if (optind >= argc) {
			fprintf(stderr, "mtactl: %s: give a queue ID or "
					"filters (--domain ...)\n",
				actions[ai].name);
			return 2;
		}
		for (int i = optind; i < argc; i++)
			if (!qid_syntax(argv[i])) {
				fprintf(stderr,
					"mtactl: %s is not a queue ID (16 "
					"characters as mtaq shows them)\n",
					argv[i]);
				return 2;
			}
		if (tool_ctl_open("mtactl", cfg, false, &c) != 0)
			return 1;
		rc = 0;
		for (int i = optind; i < argc; i++)
			rc |= ctl_one(&c, actions[ai].verb, argv[i], false);
		tool_ctl_close(&c);
		return rc;
	}
	if (optind != argc) {
		fprintf(stderr, "mtactl: %s: give either queue IDs or filters, "
				"not both\n", actions[ai].name);
		return 2;
	}
	rc = select_all(cfg, &s);
	if (rc != 0)
		return rc;
	if (!yes) {
		size_t n = s.out.n;
		printf("%zu messages match; add --yes to %s them\n", n,
		       actions[ai].name);
		tool_qidset_free(&s.out);
		return n ? 2 : 0;
	}
	if (s.out.n == 0) {
		printf("0 messages match; nothing %s\n", actions[ai].done);
		return 0;
	}
	if (tool_ctl_open("mtactl", cfg, false, &c) != 0) {
		tool_qidset_free(&s.out);
		return 1;
	}
	size_t good = 0;
	for (size_t i = 0; i < s.out.n; i++)
		if (ctl_one(&c, actions[ai].verb, s.out.v[i], true) == 0)
			good++;
	tool_ctl_close(&c);
	size_t n = s.out.n;
	printf("%zu of %zu messages %s\n", good, n, actions[ai].done);
	tool_qidset_free(&s.out);
	return good == n ? 0 : 1;
}


/* ---- evacuate ------------------------------------------------------- */

/* One request; *code gets the ERR code word ("" on OK), text the rest.
 * 0 when a reply came, 1 when the connection broke. */
static int ctl_ask(struct tool_ctl *c, enum mta_ctl_verb verb,
		   const char *qid, bool *ok, char *code, size_t codelen,
		   char *text, size_t textlen)
{
	code[0] = text[0] = '\0';
	return tool_ctl_request(c, verb, qid, NULL, NULL, ok, code, codelen,
				text, textlen);
}

/* "[host]:port" or "host:port" (an IPv6 literal needs the brackets). */
static int parse_target(const char *to, char *host, size_t hlen, char *port,
			size_t plen)
{
	const char *colon = strrchr(to, ':');
	const char *h = to;
	size_t n;

	if (colon == NULL || colon[1] == '\0' ||
	    strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
	    strlen(colon + 1) >= plen || atoi(colon + 1) < 1 ||
	    atoi(colon + 1) > 65535)
		return -1;
	n = (size_t)(colon - to);
	if (n > 0 && to[0] == '[') {
		if (to[n - 1] != ']')
			return -1;
		h = to + 1;
		n -= 2;
	} else if (memchr(to, ':', n) != NULL) {
		return -1; /* IPv6 without brackets */
	}
	if (n == 0 || n >= hlen)
		return -1;
	memcpy(host, h, n);
	host[n] = '\0';
	snprintf(port, plen, "%s", colon + 1);
	return 0;
}

/* Holds qid through mtad, sends it, deletes it on 250 or releases it.
 * Returns 0 moved, 1 left queued, 2 target unreachable (left queued),
 * 3 gone (delivered or deleted meanwhile), 4 mtad lost. */
static int evacuate_one(struct tool_ctl *c, struct mta_spool *sp,
			struct tool_evac *ev, const char *qid)
{
	char code[32], text[1100], why[1200];
	struct mta_envelope e;
	bool ok = false, held_here;
	int rc, sent;

	if (ctl_ask(c, MTA_CTL_HOLD, qid, &ok, code, sizeof(code), text,
		    sizeof(text)) != 0)
		return 4;
	if (!ok && strcmp(code, "notfound") == 0)
		return 3;
	if (!ok && strcmp(code, "state") != 0) {
		printf("%s: left queued: cannot hold it: %s\n", qid, text);
		return 1;
	}
	held_here = ok; /* "state": held before, and stays held on failure */
	mta_envelope_init(&e);
	rc = mta_spool_get(sp, qid, &e);
	if (rc == MTA_ENOTFOUND) {
		mta_envelope_free(&e);
		return 3;
	}
	if (rc != 0) {
		snprintf(why, sizeof(why), "spool: %s", mta_strerror(rc));
		sent = 1;
	} else {
		sent = tool_evac_send(ev, sp, qid, &e, why, sizeof(why));
	}
	mta_envelope_free(&e);
	if (sent == 0) {
		if (ctl_ask(c, MTA_CTL_DELETE, qid, &ok, code, sizeof(code),
			    text, sizeof(text)) != 0 ||
		    !ok) {
			printf("%s: accepted by the target but NOT removed "
			       "here (%s): delete it (mtactl delete %s) or it "
			       "is delivered twice\n",
			       qid, text[0] ? text : "connection to mtad lost",
			       qid);
			return 1;
		}
		return 0;
	}
	if (held_here &&
	    (ctl_ask(c, MTA_CTL_RELEASE, qid, &ok, code, sizeof(code), text,
		     sizeof(text)) != 0 ||
	     !ok)) {
		printf("%s: left queued but still held (release failed: %s; "
		       "mtactl release %s)\n",
		       qid, text[0] ? text : "connection to mtad lost", qid);
		return sent;
	}
	printf("%s: left queued%s: %s\n", qid, held_here ? "" : " (held)",
	       why);
	return sent;
}

/* Over 100 lines: the options, then the steps of an evacuation (mtad is
 * there, select, open the spool, move each message) with one cleanup. */
static int cmd_evacuate(const struct mta_config *cfg, int argc, char **argv)
{
	static const struct option fopts[] = {
		{"domain", required_argument, NULL, 'f'},
		{"sender", required_argument, NULL, 'f'},
		{"recipient", required_argument, NULL, 'f'},
		{"reason", required_argument, NULL, 'f'},
		{"state", required_argument, NULL, 'f'},
		{"older-than", required_argument, NULL, 'f'},
		{"yes", no_argument, NULL, 'y'},
		{"to", required_argument, NULL, 't'},
		{"verify", no_argument, NULL, 'v'},
		{NULL, 0, NULL, 0},
	};
	struct sel s;
	struct tool_ctl c;
	struct tool_evac *ev = NULL;
	struct mta_spool *sp = NULL;
	const char *to = NULL;
	char host[256], port[16], why[600];
	bool yes = false, verify = false;
	int opt, li = 0, rc;
	size_t moved = 0, left = 0, gone = 0, i;

	memset(&s, 0, sizeof(s));
	optind = 0;
	while ((opt = getopt_long(argc, argv, "+", fopts, &li)) != -1) {
		if (opt == 'y')
			yes = true;
		else if (opt == 't')
			to = optarg;
		else if (opt == 'v')
			verify = true;
		else if (opt != 'f' ||
			 tool_filter_parse_opt("mtactl", &s.f,
					       fopts[li].name, optarg) != 0) {
			usage(stderr);
			return 2;
		}
	}
	if (to == NULL || parse_target(to, host, sizeof(host), port,
				       sizeof(port)) != 0) {
		fprintf(stderr, "mtactl: evacuate: give the target relay as "
				"--to HOST:PORT or --to [ADDRESS]:PORT\n");
		return 2;
	}
	if (s.f.any && optind != argc) {
		fprintf(stderr, "mtactl: evacuate: give either queue IDs or "
				"filters, not both\n");
		return 2;
	}
	for (int k = optind; k < argc; k++)
		if (!qid_syntax(argv[k])) {
			fprintf(stderr,
				"mtactl: %s is not a queue ID (16 characters "
				"as mtaq shows them)\n", argv[k]);
			return 2;
		}
	/* every step goes through mtad: check it is there first */
	if (tool_ctl_open("mtactl", cfg, false, &c) != 0)
		return 1;
	if (optind == argc) {
		/* filters, or none: the whole queue */
		rc = select_all(cfg, &s);
		if (rc != 0) {
			tool_ctl_close(&c);
			return rc;
		}
		if (!yes || s.out.n == 0) {
			printf("%zu messages match; %s\n", s.out.n,
			       s.out.n ? "add --yes to evacuate them"
				       : "nothing evacuated");
			tool_ctl_close(&c);
			rc = s.out.n ? 2 : 0;
			tool_qidset_free(&s.out);
			return rc;
		}
	} else {
		for (int k = optind; k < argc; k++) {
			rc = qidset_push(&s.out, argv[k]);
			if (rc != 0) {
				tool_ctl_close(&c);
				tool_qidset_free(&s.out);
				return 1;
			}
		}
	}
	rc = tool_open_spool("mtactl", cfg, true, &sp);
	if (rc == 0 &&
	    tool_evac_new(host, port, cfg->server_hostname, verify,
			  cfg->tls_ca_file, &ev, why, sizeof(why)) != 0) {
		fprintf(stderr, "mtactl: evacuate: TLS setup: %s\n", why);
		rc = 1;
	}
	for (i = 0; rc == 0 && i < s.out.n; i++) {
		int r = evacuate_one(&c, sp, ev, s.out.v[i]);
		if (r == 0)
			moved++;
		else if (r == 3)
			gone++;
		else
			left++;
		if (r == 2) {
			fprintf(stderr, "mtactl: evacuate: stopped: the "
					"target cannot be reached; nothing "
					"more was held\n");
			break;
		}
		if (r == 4) {
			fprintf(stderr, "mtactl: evacuate: stopped: the "
					"connection to mtad was lost (see the "
					"mtad log)\n");
			break;
		}
	}
	if (ev != NULL)
		printf("%zu of %zu messages evacuated to %s (tls %s); %zu left "
		       "queued%s; %zu gone meanwhile\n",
		       moved, s.out.n, to, tool_evac_tls(ev),
		       s.out.n - moved - gone, i < s.out.n ? " (stopped)" : "",
		       gone);
	(void)left;
	tool_evac_free(ev);
	if (sp != NULL)
		mta_spool_close(sp);
	tool_ctl_close(&c);
	size_t n = s.out.n;
	tool_qidset_free(&s.out);
	if (rc != 0)
		return rc;
	return moved + gone == n ? 0 : 1;
}

/* ---- policy cache --------------------------------------------------- */

static void fmt_ts(char out[32], int64_t s)
{
	time_t t = (time_t)s;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int print_policy_row(void *ud, const char *domain, const uint8_t *rec,
			    size_t len)
{
	struct mta_sts_cache_rec r;
	char f[32], e[32];
	(void)ud;
	if (mta_sts_cache_decode(rec, len, &r) != 0) {
		printf("%-40.40s  (undecodable record)\n", domain);
		return 0;
	}
	fmt_ts(f, r.fetched_at);
	fmt_ts(e, r.expires_at);
	printf("%-36.36s %-8s %-20s %-20s %.12s\n", domain,
	       mta_sts_mode_name(r.policy.mode), f, e, r.id);
	return 0;
}

struct evid {
	const char *domain;
	char last[600];
	int64_t when;
};

static int find_evidence(void *ud, const struct mta_spool_entry *en)
{
	struct evid *v = ud;
	for (size_t i = 0; i < en->env->nrcpt; i++) {
		const struct mta_rcpt *r = &en->env->rcpts[i];
		const char *at = strrchr(r->addr, '@');
		if (r->evidence == NULL || at == NULL ||
		    strcasecmp(at + 1, v->domain) != 0)
			continue;
		if (r->next_attempt_us >= v->when) {
			v->when = r->next_attempt_us;
			snprintf(v->last, sizeof(v->last), "%s", r->evidence);
		}
	}
	return 0;
}

/* Key continuity: the keys and issuers on record for dom, one line
 * each ("key: HOST trusted|held leaf=... issuer=... first=... last=..."). */
static int print_keys(struct mta_spool *sp, const char *dom)
{
	struct mta_spool_keys_rec *r = malloc(sizeof(*r));
	int rc;

	if (r == NULL)
		return 1;
	rc = mta_spool_keys_get(sp, dom, r);
	if (rc == MTA_ENOTFOUND) {
		printf("keys: none on record\n");
		free(r);
		return 0;
	}
	if (rc != 0) {
		fprintf(stderr, "mtactl: policy show %s: keys: %s\n", dom,
			mta_strerror(rc));
		free(r);
		return 1;
	}
	if (r->accepted_at > 0) {
		char a[32];
		fmt_ts(a, r->accepted_at);
		printf("keys accepted: %s\n", a);
	}
	for (size_t i = 0; i < r->n; i++) {
		const struct mta_spool_keys_entry *e = &r->e[i];
		char l[2 * MTA_SPOOL_KEYS_HASH + 1], is[2 * MTA_SPOOL_KEYS_HASH + 1];
		char f[32], t[32];
		mta_spool_keys_to_hex(e->leaf, l);
		mta_spool_keys_to_hex(e->issuer, is);
		fmt_ts(f, e->first);
		fmt_ts(t, e->last);
		printf("key: %s %s leaf=%s issuer=%s first=%s last=%s\n",
		       e->host,
		       e->state == MTA_SPOOL_KEYS_TRUSTED ? "trusted" : "held",
		       l, is, f, t);
	}
	free(r);
	return 0;
}

static int cmd_policy(const struct mta_config *cfg, int argc, char **argv)
{
	struct mta_spool *sp;
	struct tool_ctl c;
	int rc;

	if (argc == 1 && strcmp(argv[0], "list") == 0) {
		rc = tool_open_spool("mtactl", cfg, true, &sp);
		if (rc != 0)
			return rc;
		printf("%-36s %-8s %-20s %-20s %s\n", "DOMAIN", "MODE",
		       "FETCHED", "EXPIRES", "ID");
		rc = mta_spool_sts_foreach(sp, print_policy_row, NULL);
		mta_spool_close(sp);
		if (rc != 0) {
			fprintf(stderr, "mtactl: policy list: %s\n",
				mta_strerror(rc));
			return 1;
		}
		return 0;
	}
	if (argc != 2 || (strcmp(argv[0], "show") && strcmp(argv[0], "purge") &&
			  strcmp(argv[0], "refresh") &&
			  strcmp(argv[0], "accept"))) {
		usage(stderr);
		return 2;
	}
	char dom[256];
	snprintf(dom, sizeof(dom), "%s", argv[1]);
	for (char *p = dom; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	if (strcmp(argv[0], "show") != 0) {
		if (tool_ctl_open("mtactl", cfg, false, &c) != 0)
			return 1;
		rc = ctl_one(&c,
			     argv[0][0] == 'p'	 ? MTA_CTL_POLICY_PURGE
			     : argv[0][0] == 'a' ? MTA_CTL_POLICY_ACCEPT
						 : MTA_CTL_POLICY_REFRESH,
			     dom, false);
		tool_ctl_close(&c);
		return rc;
	}
	struct mta_buf raw = {0};
	struct mta_sts_cache_rec r;
	rc = tool_open_spool("mtactl", cfg, true, &sp);
	if (rc != 0)
		return rc;
	rc = mta_spool_sts_get(sp, dom, &raw);
	if (rc == 0 && mta_sts_cache_decode(raw.data, raw.len, &r) == 0) {
		char f[32], e[32];
		fmt_ts(f, r.fetched_at);
		fmt_ts(e, r.expires_at);
		printf("domain: %s\nmta-sts id: %s\nmode: %s\nmax_age: %u\n"
		       "fetched: %s\nexpires: %s\n",
		       dom, r.id, mta_sts_mode_name(r.policy.mode),
		       r.policy.max_age, f, e);
		for (size_t i = 0; i < r.policy.nmx; i++)
			printf("mx: %s\n", r.policy.mx[i]);
	} else if (rc == MTA_ENOTFOUND) {
		printf("domain: %s\nmta-sts: no cached policy\n", dom);
		rc = 0;
	} else {
		fprintf(stderr, "mtactl: policy show %s: %s\n", dom,
			mta_strerror(rc ? rc : MTA_ECORRUPT));
		rc = 1;
	}
	mta_buf_free(&raw);
	if (rc == 0) {
		/* DANE and the rest of the decision: the evidence recorded
		 * with the last attempt to this domain */
		struct evid v = {.domain = dom, .when = -1};
		(void)mta_spool_foreach(sp, find_evidence, &v);
		printf("last decision seen: %s\n",
		       v.last[0] ? v.last : "none (no queued mail to it)");
		rc = print_keys(sp, dom);
	}
	mta_spool_close(sp);
	return rc;
}

/* ---- stats ------------------------------------------------------------ */

static void print_data(void *ud, const char *t)
{
	(void)ud;
	printf("%s\n", t);
}

/* ---- explain ------------------------------------------------------- */

#define COLS 100

struct xout {
	bool json;
	size_t n;
};

static void json_str(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

/* One trace line "<tag> <text>": wrapped at COLS columns (continuation
 * lines indented under the text), or one JSON object. */
static void explain_line(void *ud, const char *t)
{
	struct xout *o = ud;
	size_t tag = strcspn(t, " ");
	const char *text = t + tag;
	size_t indent = 9, width = COLS - indent;

	while (*text == ' ')
		text++;
	if (o->json) {
		printf("%s\n    {\"tag\": ", o->n ? "," : "");
		char tagbuf[32];
		snprintf(tagbuf, sizeof(tagbuf), "%.*s", (int)tag, t);
		json_str(tagbuf);
		printf(", \"text\": ");
		json_str(text);
		putchar('}');
		o->n++;
		return;
	}
	printf("%-8.*s ", (int)tag, t);
	for (;;) {
		size_t len = strlen(text), cut;
		if (len <= width) {
			printf("%s\n", text);
			return;
		}
		cut = width;
		while (cut > width / 2 && text[cut] != ' ')
			cut--;
		if (text[cut] != ' ')
			cut = width;
		printf("%.*s\n%*s", (int)cut, text, (int)indent, "");
		text += cut;
		while (*text == ' ')
			text++;
	}
}

static int cmd_explain(const struct mta_config *cfg, int argc, char **argv)
{
	const char *domain = NULL, *from = NULL, *args[3];
	char fromarg[MTA_CTL_ARG_MAX + 8];
	size_t nargs = 1;
	struct xout o = {0};
	struct tool_ctl c;
	bool connect = false, ok = false;
	char code[32], text[600];
	int rc;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--connect"))
			connect = true;
		else if (!strcmp(argv[i], "--json"))
			o.json = true;
		else if (!strcmp(argv[i], "--from") && i + 1 < argc)
			from = argv[++i];
		else if (argv[i][0] != '-' && domain == NULL)
			domain = argv[i];
		else {
			usage(stderr);
			return 2;
		}
	}
	if (domain == NULL || strlen(domain) > MTA_CTL_ARG_MAX ||
	    strspn(domain, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			   "0123456789-._[]:") != strlen(domain)) {
		fprintf(stderr, "mtactl: explain DOMAIN [--connect] [--json] "
				"[--from SENDER]: DOMAIN is a domain name "
				"(A-labels)\n");
		return 2;
	}
	if (from != NULL) {
		/* the sender's domain, as delivery matches it: "" for <> */
		const char *at = strrchr(from, '@');
		const char *dom = at ? at + 1 : from;
		if (!strcmp(from, "<>") || !strcmp(from, ""))
			dom = "";
		else if (dom[0] == '\0' || strlen(dom) > MTA_CTL_ARG_MAX ||
			 strspn(dom, "abcdefghijklmnopqrstuvwxyz"
				     "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
				     "0123456789-._[]:>") != strlen(dom)) {
			fprintf(stderr, "mtactl: explain --from SENDER: an "
					"address, a domain or <> (the null "
					"sender)\n");
			return 2;
		}
		snprintf(fromarg, sizeof(fromarg), "FROM=%.*s",
			 (int)strcspn(dom, ">"), dom);
	}
	if (tool_ctl_open("mtactl", cfg, true, &c) != 0) {
		fprintf(stderr,
			"mtactl: explain runs inside mtad (its resolver, trust "
			"anchor, DNSSEC self-test, MTA-STS cache and policy "
			"table), and mtad is not running (control socket %s): "
			"start it and retry\n", cfg->control_socket);
		return 1;
	}
	args[0] = domain;
	if (connect)
		args[nargs++] = "CONNECT";
	if (from != NULL)
		args[nargs++] = fromarg;
	if (o.json) {
		printf("{\"domain\": ");
		json_str(domain);
		printf(", \"connect\": %s, \"lines\": [", connect ? "true"
								   : "false");
	}
	rc = tool_ctl_request_args(&c, MTA_CTL_EXPLAIN, args, nargs,
				   explain_line, &o, &ok, code, sizeof(code),
				   text, sizeof(text));
	tool_ctl_close(&c);
	if (o.json)
		printf("\n  ], \"ok\": %s}\n", rc == 0 && ok ? "true" : "false");
	if (rc != 0) {
		fprintf(stderr, "mtactl: the connection to mtad broke during "
				"explain; see the mtad log\n");
		return 1;
	}
	if (!ok) {
		fprintf(stderr, "mtactl: explain %s: %s\n", domain, text);
		return !strcmp(code, "usage") ? 2 : 1;
	}
	return 0;
}

/* ---- tlsrpt send ------------------------------------------------------ */

static void print_line(void *ud, const char *t)
{
	(void)ud;
	printf("%s\n", t);
}

/* tlsrpt send [--day YYYY-MM-DD]: a reporter round in mtad now. */
static int cmd_tlsrpt_send(const struct mta_config *cfg, int argc,
			   char **argv)
{
	const char *args[1] = {NULL};
	struct tool_ctl c;
	bool ok = false;
	char code[32], text[600];
	int rc;

	if (argc == 2 && !strcmp(argv[0], "--day")) {
		args[0] = argv[1];
	} else if (argc != 0) {
		usage(stderr);
		return 2;
	}
	if (tool_ctl_open("mtactl", cfg, true, &c) != 0) {
		fprintf(stderr, "mtactl: tlsrpt send runs inside mtad, and mtad "
				"is not running (control socket %s)\n",
			cfg->control_socket);
		return 1;
	}
	rc = tool_ctl_request_args(&c, MTA_CTL_TLSRPT_SEND, args,
				   args[0] ? 1 : 0, print_line, NULL, &ok,
				   code, sizeof(code), text, sizeof(text));
	tool_ctl_close(&c);
	if (rc != 0) {
		fprintf(stderr, "mtactl: the connection to mtad broke during "
				"tlsrpt send; see the mtad log\n");
		return 1;
	}
	if (!ok) {
		fprintf(stderr, "mtactl: tlsrpt send: %s\n", text);
		return !strcmp(code, "usage") ? 2 : 1;
	}
	return 0;
}

/* ---- sites ------------------------------------------------------------ */

/* The value of "key=" in a SITES line, copied into out ("" if absent). */
static void site_field(const char *t, const char *key, char *out, size_t cap)
{
	size_t kl = strlen(key);
	const char *p = t;

	out[0] = '\0';
	while ((p = strstr(p, key)) != NULL) {
		if (p > t && p[-1] == ' ' && p[kl] == '=') {
			size_t n = strcspn(p + kl + 1, " ");
			snprintf(out, cap, "%.*s", (int)n, p + kl + 1);
			return;
		}
		p += kl;
	}
}

static void rate_text(const char *v, char *out, size_t cap)
{
	if (v[0] == '\0' || strtod(v, NULL) <= 0)
		snprintf(out, cap, "-");
	else
		snprintf(out, cap, "%s/m", v);
}

static void print_site(void *ud, const char *t)
{
	char conn[24], max[24], rate[32], ceil[32], sent[24], thr[24],
		next[24], r1[40], r2[40], c1[56];
	size_t *n = ud;

	if (*n == 0)
		printf("%-28s %-9s %-12s %-12s %10s %9s %8s\n", "SITE",
		       "CONN", "RATE", "CEILING", "SENT", "THROTTLES",
		       "NEXT_MS");
	(*n)++;
	site_field(t, "connections", conn, sizeof(conn));
	site_field(t, "max_connections", max, sizeof(max));
	site_field(t, "rate", rate, sizeof(rate));
	site_field(t, "ceiling", ceil, sizeof(ceil));
	site_field(t, "sent", sent, sizeof(sent));
	site_field(t, "throttles", thr, sizeof(thr));
	site_field(t, "next_ms", next, sizeof(next));
	rate_text(rate, r1, sizeof(r1));
	rate_text(ceil, r2, sizeof(r2));
	snprintf(c1, sizeof(c1), "%s/%s", conn,
		 strcmp(max, "0") == 0 ? "-" : max);
	printf("%-28.*s %-9s %-12s %-12s %10s %9s %8s\n",
	       (int)strcspn(t, " "), t, c1, r1, r2, sent, thr, next);
}

static int cmd_sites(const struct mta_config *cfg)
{
	struct tool_ctl c;
	bool ok = false;
	char code[32], text[600];
	size_t n = 0;
	int rc;

	if (tool_ctl_open("mtactl", cfg, true, &c) != 0) {
		fprintf(stderr, "mtactl: sites shows the shaping state inside "
				"mtad, and mtad is not running (control "
				"socket %s)\n", cfg->control_socket);
		return 1;
	}
	rc = tool_ctl_request(&c, MTA_CTL_SITES, NULL, print_site, &n, &ok,
			      code, sizeof(code), text, sizeof(text));
	tool_ctl_close(&c);
	if (rc != 0) {
		fprintf(stderr, "mtactl: the connection to mtad broke; see "
				"the mtad log\n");
		return 1;
	}
	if (!ok) {
		fprintf(stderr, "mtactl: sites: %s\n", text);
		return 1;
	}
	if (n == 0)
		printf("no shaping sites (delivery.shaping_file is not "
		       "set)\n");
	return 0;
}

static int cmd_stats(const struct mta_config *cfg)
{
	struct tool_ctl c;
	struct mta_spool *sp;
	uint64_t m = 0, r = 0, b = 0;
	bool ok = false;
	int rc;

	if (tool_ctl_open("mtactl", cfg, true, &c) == 0) {
		rc = tool_ctl_request(&c, MTA_CTL_STATS, NULL, print_data, NULL,
				      &ok, NULL, 0, NULL, 0);
		tool_ctl_close(&c);
		if (rc == 0 && ok)
			return 0;
	}
	/* mtad is not running: what the spool says */
	rc = tool_open_spool("mtactl", cfg, true, &sp);
	if (rc != 0)
		return rc;
	struct tool_qidset held = {0};
	(void)tool_qidset_load_held(sp, &held);
	rc = mta_spool_totals(sp, &m, &r, &b);
	if (rc == MTA_ENOTFOUND)
		rc = mta_spool_stat(sp, &m);
	printf("mtad not running\nmessages %" PRIu64 "\nrecipients %" PRIu64
	       "\nbytes %" PRIu64 "\nheld %zu\n", m, r, b, held.n);
	tool_qidset_free(&held);
	mta_spool_close(sp);
	return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	struct mta_config *cfg = NULL;
	struct mta_spool *sp = NULL;
	int c, rc;

	while ((c = getopt(argc, argv, "+c:h")) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind];
	int nargs = argc - optind - 1;
	char **args = argv + optind + 1;
	if (!strcmp(cmd, "passwd")) /* needs no spool, maybe no config */
		return cmd_passwd(path, nargs, args);
	int ai = -1;
	for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
		if (strcmp(cmd, actions[i].name) == 0)
			ai = (int)i;
	bool known = ai >= 0 || !strcmp(cmd, "policy") ||
		     !strcmp(cmd, "evacuate") || !strcmp(cmd, "explain") ||
		     !strcmp(cmd, "stats") || !strcmp(cmd, "tlsrpt") ||
		     !strcmp(cmd, "sites") || !strcmp(cmd, "cat") || !strcmp(cmd, "show");
	if (!known) {
		fprintf(stderr, "mtactl: unknown command %s\n", cmd);
		usage(stderr);
		return 2;
	}
	if ((!strcmp(cmd, "show") && nargs != 1) ||
	    (!strcmp(cmd, "cat") &&
	     !(nargs == 1 || (nargs == 2 && !strcmp(args[1], "--headers")))) ||
	    ((!strcmp(cmd, "stats") || !strcmp(cmd, "sites")) && nargs != 0) ||
	    (!strcmp(cmd, "tlsrpt") && nargs != 0 &&
	     strcmp(args[0], "show") != 0 && strcmp(args[0], "send") != 0)) {
		usage(stderr);
		return 2;
	}
	if ((!strcmp(cmd, "show") || !strcmp(cmd, "cat")) &&
	    !qid_syntax(args[0])) {
		fprintf(stderr,
			"mtactl: %s is not a queue ID (16 characters as mtaq "
			"shows them)\n", args[0]);
		return 2;
	}
	rc = tool_load_config("mtactl", path, &cfg);
	if (rc != 0)
		return rc;
	if (ai >= 0) {
		/* getopt_long over the command's own arguments */
		rc = cmd_action(cfg, ai, nargs + 1, argv + optind);
	} else if (!strcmp(cmd, "evacuate")) {
		rc = cmd_evacuate(cfg, nargs + 1, argv + optind);
	} else if (!strcmp(cmd, "explain")) {
		rc = cmd_explain(cfg, nargs, args);
	} else if (!strcmp(cmd, "policy")) {
		rc = cmd_policy(cfg, nargs, args);
	} else if (!strcmp(cmd, "stats")) {
		rc = cmd_stats(cfg);
	} else if (!strcmp(cmd, "sites")) {
		rc = cmd_sites(cfg);
	} else if (!strcmp(cmd, "tlsrpt") && nargs > 0 &&
		   !strcmp(args[0], "send")) {
		rc = cmd_tlsrpt_send(cfg, nargs - 1, args + 1);
	} else {
		rc = tool_open_spool("mtactl", cfg, true, &sp);
		if (rc == 0) {
			if (!strcmp(cmd, "tlsrpt"))
				rc = cmd_tlsrpt(sp, cfg, nargs, args);
			else if (!strcmp(cmd, "cat"))
				rc = cmd_cat(sp, args[0], nargs == 2);
			else
				rc = cmd_show(sp, args[0]);
			mta_spool_close(sp);
		}
	}
	mta_config_free(cfg);
	return rc;
}
