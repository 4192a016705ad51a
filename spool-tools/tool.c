#include "tool.h"

#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

int tool_load_config(const char *prog, const char *path,
		     struct mta_config **out)
{
	char err[1024] = "";

	if (path == NULL)
		path = getenv("MTAD_CONFIG");
	if (path == NULL && access("/etc/mtad/mtad.conf", R_OK) == 0)
		path = "/etc/mtad/mtad.conf";
	if (mta_config_load(path, environ, out, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", prog, err);
		return 2;
	}
	return 0;
}

int tool_open_spool(const char *prog, const struct mta_config *cfg,
		    bool readonly, struct mta_spool **out)
{
	char why[1024] = "";
	struct mta_spool_opts o = {
		.dir = cfg->spool_dir,
		.max_size = cfg->spool_max_size,
		.readonly = readonly,
		.why = why,
		.whylen = sizeof(why),
	};
	struct stat st;
	int rc;

	if (stat(cfg->spool_dir, &st) != 0) {
		fprintf(stderr, "%s: spool %s does not exist\n", prog,
			cfg->spool_dir);
		return 1;
	}
	mta_spool_trap_sigbus(prog, cfg->spool_dir);
	rc = mta_spool_open(&o, out);
	if (rc != 0) {
		fprintf(stderr, "%s: spool %s: %s\n", prog, cfg->spool_dir,
			why[0] ? why : mta_strerror(rc));
		return 1;
	}
	return 0;
}

/* ---- control socket client ---------------------------------------- */

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

static int ctl_line(struct tool_ctl *c, const char **line)
{
	for (;;) {
		if (c->off < c->len) {
			size_t used = 0;
			int rc = mta_ctl_lines_feed(&c->lines, c->buf + c->off,
						    c->len - c->off, &used,
						    line);
			c->off += used;
			if (rc != 0)
				return rc == 1 ? 0 : 1;
			continue;
		}
		ssize_t n = read(c->fd, c->buf, sizeof(c->buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 1;
		c->off = 0;
		c->len = (size_t)n;
	}
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int tool_ctl_open(const char *prog, const struct mta_config *cfg, bool quiet,
		  struct tool_ctl *out)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	const char *line;
	int fd, err;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s",
		 cfg->control_socket);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		err = errno;
		close(fd);
		if (quiet)
			return 1;
		if (err == EACCES || err == EPERM)
			fprintf(stderr,
				"%s: control socket %s: permission denied; run "
				"as mtad's user or a member of control.group\n",
				prog, cfg->control_socket);
		else
			fprintf(stderr,
				"%s: mtad is not running (control socket %s: "
				"%s); changes go through mtad: start it and "
				"retry (read-only commands work without it)\n",
				prog, cfg->control_socket, strerror(err));
		return 1;
	}
	out->fd = fd;
	char hello[32];
	snprintf(hello, sizeof(hello), "MTACTL %d\n", MTA_CTL_VERSION);
	if (write_all(fd, hello, strlen(hello)) != 0 ||
	    ctl_line(out, &line) != 0 || strncmp(line, "OK ", 3) != 0) {
		if (!quiet)
			fprintf(stderr,
				"%s: mtad refused the control protocol "
				"version %d; use the mtactl of mtad's "
				"release\n", prog, MTA_CTL_VERSION);
		tool_ctl_close(out);
		return 1;
	}
	return 0;
}

int tool_ctl_request(struct tool_ctl *c, enum mta_ctl_verb verb,
		     const char *arg, void (*on_data)(void *ud, const char *t),
		     void *ud, bool *ok, char *code, size_t codelen,
		     char *text, size_t textlen)
{
	const char *args[1] = {arg};

	return tool_ctl_request_args(c, verb, args, arg ? 1 : 0, on_data, ud,
				     ok, code, codelen, text, textlen);
}

int tool_ctl_request_args(struct tool_ctl *c, enum mta_ctl_verb verb,
			  const char *const *args, size_t nargs,
			  void (*on_data)(void *ud, const char *t), void *ud,
			  bool *ok, char *code, size_t codelen, char *text,
			  size_t textlen)
{
	char req[MTA_CTL_LINE_MAX + 2];
	const char *line;

	if (mta_ctl_format_req(req, sizeof(req), verb, args, nargs) != 0)
		return 1;
	if (write_all(c->fd, req, strlen(req)) != 0)
		return 1;
	for (;;) {
		struct mta_ctl_reply r;
		if (ctl_line(c, &line) != 0 || mta_ctl_parse_reply(line, &r))
			return 1;
		if (r.kind == MTA_CTL_DATA) {
			if (on_data)
				on_data(ud, r.text);
			continue;
		}
		*ok = r.kind == MTA_CTL_OK;
		if (code) {
			snprintf(code, codelen, "%.*s", (int)r.code_len,
				 r.code ? r.code : "");
		}
		if (text)
			snprintf(text, textlen, "%s", r.text);
		return 0;
	}
}

void tool_ctl_close(struct tool_ctl *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* ---- filters ------------------------------------------------------- */

int64_t tool_now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static int parse_age(const char *v, int64_t *out)
{
	char *end;
	unsigned long long n;

	if (!isdigit((unsigned char)v[0]))
		return -1;
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno != 0 || n > 100000000ULL)
		return -1;
	uint64_t mul = 1;
	if (*end == 's' || *end == '\0')
		mul = 1;
	else if (*end == 'm')
		mul = 60;
	else if (*end == 'h')
		mul = 3600;
	else if (*end == 'd')
		mul = 86400;
	else
		return -1;
	if (*end != '\0' && end[1] != '\0')
		return -1;
	*out = (int64_t)(n * mul) * 1000000;
	return 0;
}

int tool_filter_parse_opt(const char *prog, struct tool_filter *f,
			  const char *name, const char *value)
{
	f->any = true;
	if (strcmp(name, "domain") == 0)
		f->domain = value;
	else if (strcmp(name, "sender") == 0)
		f->sender = value;
	else if (strcmp(name, "recipient") == 0)
		f->recipient = value;
	else if (strcmp(name, "reason") == 0)
		f->reason = value;
	else if (strcmp(name, "state") == 0) {
		if (strcmp(value, "queued") && strcmp(value, "deferred") &&
		    strcmp(value, "held") && strcmp(value, "active")) {
			fprintf(stderr,
				"%s: --state %s: expected queued, deferred, "
				"held or active\n", prog, value);
			return 2;
		}
		f->state = value;
	} else if (strcmp(name, "older-than") == 0) {
		if (parse_age(value, &f->older_than_us) != 0 ||
		    f->older_than_us == 0) {
			fprintf(stderr,
				"%s: --older-than %s: expected a duration "
				"such as 90s, 30m, 4h or 2d\n", prog, value);
			return 2;
		}
	} else {
		return 2;
	}
	return 0;
}

/* "@example.net" matches the domain part; else the whole address; both
 * without regard to case. */
static bool addr_match(const char *pat, const char *addr)
{
	if (pat[0] == '@') {
		const char *at = strrchr(addr, '@');
		return at != NULL && strcasecmp(at, pat) == 0;
	}
	return strcasecmp(pat, addr) == 0;
}

static bool domain_match(const char *dom, const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at != NULL && strcasecmp(at + 1, dom) == 0;
}

static bool pending(const struct mta_rcpt *r)
{
	return r->state == MTA_RCPT_QUEUED || r->state == MTA_RCPT_DEFERRED;
}

bool tool_filter_match(const struct tool_filter *f, const char *qid,
		       const struct mta_envelope *e, const char *state,
		       int64_t now_us)
{
	(void)qid;
	if (f->state && strcmp(f->state, state) != 0)
		return false;
	if (f->older_than_us && e->arrival_us > now_us - f->older_than_us)
		return false;
	if (f->sender && !addr_match(f->sender, e->sender))
		return false;
	if (f->domain || f->recipient || f->reason) {
		bool hit = false;
		for (size_t i = 0; i < e->nrcpt && !hit; i++) {
			const struct mta_rcpt *r = &e->rcpts[i];
			if (!pending(r))
				continue;
			if (f->domain && !domain_match(f->domain, r->addr))
				continue;
			if (f->recipient && !addr_match(f->recipient, r->addr))
				continue;
			if (f->reason &&
			    !((r->last_response &&
			       strcasestr(r->last_response, f->reason)) ||
			      (r->evidence &&
			       strcasestr(r->evidence, f->reason))))
				continue;
			hit = true;
		}
		if (!hit)
			return false;
	}
	return true;
}

const char *tool_msg_state(const struct mta_envelope *e, bool held,
			   bool active)
{
	if (held)
		return "held";
	if (active)
		return "active";
	for (size_t i = 0; i < e->nrcpt; i++)
		if (e->rcpts[i].state == MTA_RCPT_DEFERRED)
			return "deferred";
	return "queued";
}

static int qid_cmp(const void *a, const void *b)
{
	return memcmp(a, b, MTA_QID_LEN);
}

static int qidset_add(struct tool_qidset *s, const char *qid)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		void *v = realloc(s->v, cap * sizeof(*s->v));
		if (v == NULL)
			return -ENOMEM;
		s->v = v;
		s->cap = cap;
	}
	memcpy(s->v[s->n++], qid, MTA_QID_LEN + 1);
	return 0;
}

static int held_cb(void *ud, const char *qid, int64_t since)
{
	(void)since;
	return qidset_add(ud, qid);
}

int tool_qidset_load_held(struct mta_spool *sp, struct tool_qidset *s)
{
	int rc = mta_spool_held_foreach(sp, held_cb, s);
	if (rc == 0 && s->n > 1)
		qsort(s->v, s->n, sizeof(*s->v), qid_cmp);
	return rc;
}

static void active_cb(void *ud, const char *t)
{
	if (strlen(t) == MTA_QID_LEN)
		(void)qidset_add(ud, t);
}

int tool_qidset_load_active(const struct mta_config *cfg,
			    struct tool_qidset *s)
{
	struct tool_ctl c;
	bool ok = false;

	if (tool_ctl_open("tool", cfg, true, &c) != 0)
		return 0; /* mtad is not running: nothing is active */
	(void)tool_ctl_request(&c, MTA_CTL_ACTIVE, NULL, active_cb, s, &ok,
			       NULL, 0, NULL, 0);
	tool_ctl_close(&c);
	if (s->n > 1)
		qsort(s->v, s->n, sizeof(*s->v), qid_cmp);
	return 0;
}

bool tool_qidset_has(const struct tool_qidset *s, const char *qid)
{
	return s->n > 0 &&
	       bsearch(qid, s->v, s->n, sizeof(*s->v), qid_cmp) != NULL;
}

void tool_qidset_free(struct tool_qidset *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}
