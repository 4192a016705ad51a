/*
 * tool.h - what the spool tools share: finding the config and the spool.
 *
 * DESCRIPTION
 *	tool_load_config() loads the configuration the way every tool does:
 *	the file given with -c, else $MTAD_CONFIG, else /etc/mtad/mtad.conf if
 *	it exists, else built-in defaults; MTAD_<SECTION>_<KEY> overrides
 *	always apply.  On error it prints "<prog>: <reason>" and returns 2
 *	(the tools' exit status for bad usage or config).
 *
 *	tool_open_spool() opens the spool read-only (readonly true) or for
 *	writing; a missing spool gives "<prog>: spool <dir> does not exist"
 *	and 1.
 */
#ifndef MTA_TOOL_H
#define MTA_TOOL_H

#include "config.h"
#include "spool.h"

#include <stdbool.h>

int tool_load_config(const char *prog, const char *path,
		     struct mta_config **out);
int tool_open_spool(const char *prog, const struct mta_config *cfg,
		    bool readonly, struct mta_spool **out);

#endif

/*
 * Control socket client (libmta/control.h): tool_ctl_open() connects to
 * control.socket and says hello; 0, or 1 with a message naming what to do
 * ("mtad is not running ...") printed when quiet is false.
 * tool_ctl_request() sends one request and collects the reply: data
 * lines are passed to on_data (may be NULL); *ok tells OK from ERR, and
 * text/code (caller buffers) hold the final line's text and ERR code.
 * Returns 0 when a reply came, 1 on a broken connection.
 */
#include "control.h"

#include <stdio.h>

struct tool_ctl {
	int fd;
	struct mta_ctl_lines lines;
	uint8_t buf[4096];
	size_t off, len;
};

int tool_ctl_open(const char *prog, const struct mta_config *cfg, bool quiet,
		  struct tool_ctl *out);
int tool_ctl_request(struct tool_ctl *c, enum mta_ctl_verb verb,
		     const char *arg, void (*on_data)(void *ud, const char *t),
		     void *ud, bool *ok, char *code, size_t codelen,
		     char *text, size_t textlen);
/* The same with nargs arguments (EXPLAIN domain CONNECT). */
int tool_ctl_request_args(struct tool_ctl *c, enum mta_ctl_verb verb,
			  const char *const *args, size_t nargs,
			  void (*on_data)(void *ud, const char *t), void *ud,
			  bool *ok, char *code, size_t codelen, char *text,
			  size_t textlen);
void tool_ctl_close(struct tool_ctl *c);

/*
 * Message filters shared by mtaq and mtactl (see docs/mtaq.1.md).
 * tool_filter_parse_opt() takes one option (long name without "--") and
 * its value; 0, or 2 after printing what is wrong.  tool_filter_match()
 * tells whether a message passes every filter given; state is the
 * message's state word (tool_msg_state()).
 */
struct tool_filter {
	const char *domain, *sender, *recipient, *reason;
	const char *state; /* queued deferred held active */
	int64_t older_than_us; /* 0 = none */
	bool any;
};

int tool_filter_parse_opt(const char *prog, struct tool_filter *f,
			  const char *name, const char *value);
bool tool_filter_match(const struct tool_filter *f, const char *qid,
		       const struct mta_envelope *e, const char *state,
		       int64_t now_us);
const char *tool_msg_state(const struct mta_envelope *e, bool held,
			   bool active);
/* The set of held qids (from the spool) and of active ones (from mtad,
 * empty when it is not running): sorted arrays of MTA_QID_LEN + 1. */
struct tool_qidset {
	char (*v)[MTA_QID_LEN + 1];
	size_t n, cap;
};
int tool_qidset_load_held(struct mta_spool *sp, struct tool_qidset *s);
int tool_qidset_load_active(const struct mta_config *cfg,
			    struct tool_qidset *s);
bool tool_qidset_has(const struct tool_qidset *s, const char *qid);
void tool_qidset_free(struct tool_qidset *s);
int64_t tool_now_us(void);

/*
 * evacuate.c: hands messages on to another relay over SMTP (mtactl
 * evacuate).  tool_evac_new() prepares a client for host:port (EHLO
 * helo; STARTTLS when offered, unverified; with verify, STARTTLS is
 * required and the certificate must chain to ca_file and name host).
 * tool_evac_send() sends the pending (queued or deferred) recipients of
 * one message with its envelope (sender, RET, ENVID, NOTIFY, ORCPT,
 * BODY, SMTPUTF8) and its stored body, connecting first when needed:
 * 0 when the target accepted every one of them with 2xx after the final
 * dot (or none was pending), 1 when it refused or failed (why says what
 * the target said), 2 when no session could be opened (why says why).
 * tool_evac_tls() describes the TLS of the current session ("none").
 * tool_evac_free() sends QUIT and closes.
 */
struct tool_evac;
int tool_evac_new(const char *host, const char *port, const char *helo,
		  bool verify, const char *ca_file, struct tool_evac **out,
		  char *why, size_t len);
int tool_evac_send(struct tool_evac *e, struct mta_spool *sp,
		   const char *qid, const struct mta_envelope *env, char *why,
		   size_t len);
const char *tool_evac_tls(const struct tool_evac *e);
void tool_evac_free(struct tool_evac *e);
