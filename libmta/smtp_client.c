/*
 * smtp_client.c - sans-I/O SMTP client engine.  See smtp_client.h.
 *
 * Layout: output queue; event queue; envelope checks; reply reader
 * (lines, codes, enhanced codes, EHLO keywords); host failures; the
 * session steps (greeting, EHLO/HELO, STARTTLS, AUTH); the transaction
 * (command writer, reply matcher); the body encoder; the driver calls.
 */
#include "smtp_client.h"

#include "err.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define OUT_RESERVE 1024 /* room kept for a reply-triggered command */
#define CMD_MAX 4096	 /* longest command we build, with CRLF */
#define BODY_STEP 4	 /* most output bytes one body byte makes */
#define BODY_END 5	 /* CRLF + ".\r\n" */

#define T_5MIN 300000u
#define T_DATA 120000u	/* reply to DATA */
#define T_BLOCK 180000u /* one data block */
#define T_DOT 600000u	/* reply to the final dot */

/* Engine states (c->state), named in the debug trace; S_GREETING is 0. */
#define SMTPC_STATE_MAP(X)                                                 \
	X(GREETING, "greeting")	  /* waiting for 220 */                    \
	X(EHLO, "ehlo")		  /* EHLO sent */                          \
	X(HELO, "helo")		  /* HELO sent (EHLO got 5xx) */           \
	X(STARTTLS, "starttls")	  /* STARTTLS sent */                      \
	X(TLS, "tls-handshake")	  /* 220 to STARTTLS: tls_started() next */ \
	X(AUTH, "auth")		  /* AUTH PLAIN sent */                    \
	X(READY, "ready")	  /* idle */                               \
	X(TXN, "txn")		  /* RSET/MAIL/RCPT/DATA being written */  \
	X(BODY, "body")		  /* 354 received: body in progress */     \
	X(DOT, "dot")		  /* final dot sent */                     \
	X(QUIT, "quit")		  /* QUIT sent */                          \
	X(CLOSED, "closed")

enum state {
#define SMTPC_STATE_ENUM(id, name) S_##id,
	SMTPC_STATE_MAP(SMTPC_STATE_ENUM)
#undef SMTPC_STATE_ENUM
};

static const char *state_name(unsigned st)
{
	switch ((enum state)st) {
#define SMTPC_STATE_CASE(id, name)                                         \
	case S_##id:                                                       \
		return name;
		SMTPC_STATE_MAP(SMTPC_STATE_CASE)
#undef SMTPC_STATE_CASE
	}
	return "?";
}

/* Every change of c->state goes through here: one debug line
 * "event=smtpc_state old=<state> new=<state>" per change. */
static void set_state(struct mta_smtpc *c, enum state st)
{
	if (c->state != st) {
		struct mta_logline l;
		mta_log_begin(&l, MTA_LOG_DEBUG, "smtpc_state");
		if (!l.skip) {
			mta_log_str(&l, "old", state_name(c->state));
			mta_log_str(&l, "new", state_name(st));
			mta_log_end(&l);
		}
	}
	c->state = (uint8_t)st;
}

/* pending events (c->pend), returned in this order */
enum {
	P_ONE = 1u << 0,       /* one rejected RCPT (reply in r_*) */
	P_RESULTS = 1u << 1,   /* every recipient not yet reported */
	P_TXN_DONE = 1u << 2,
	P_FAIL = 1u << 3,
	P_CLOSED = 1u << 4,
	P_NEED_BODY = 1u << 5,
	P_READY = 1u << 6,
};

/* what the oldest unanswered command of a transaction is */
enum kind { K_NONE = 0, K_RSET, K_MAIL, K_RCPT, K_DATA };

/* ---- output ---------------------------------------------------------- */

static size_t out_free(const struct mta_smtpc *c)
{
	return sizeof(c->out) - c->out_len;
}

/* Moves the queued bytes to the front; returns the free tail. */
static uint8_t *out_tail(struct mta_smtpc *c)
{
	if (c->out_off > 0) {
		memmove(c->out, c->out + c->out_off, c->out_len);
		c->out_off = 0;
	}
	return c->out + c->out_len;
}

/* Queues n bytes if at least n + reserve bytes are free. */
static bool out_put(struct mta_smtpc *c, const void *p, size_t n,
		    size_t reserve)
{
	if (out_free(c) < n + reserve)
		return false;
	memcpy(out_tail(c), p, n);
	c->out_len += n;
	return true;
}

/* A command being built; sticky overflow flag. */
struct cmd {
	char b[CMD_MAX];
	size_t n;
	bool over;
};

static void cmd_put(struct cmd *m, const char *s, size_t n)
{
	if (m->over || n > sizeof(m->b) - m->n) {
		m->over = true;
		return;
	}
	memcpy(m->b + m->n, s, n);
	m->n += n;
}

static void cmd_str(struct cmd *m, const char *s)
{
	cmd_put(m, s, strlen(s));
}

static void cmd_u64(struct cmd *m, uint64_t v)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%" PRIu64, v);

	cmd_put(m, num, (size_t)n);
}

/* Queues a command the session needs now (uses the reserve). */
static void send_now(struct mta_smtpc *c, const struct cmd *m)
{
	bool ok;

	assert(!m->over);
	ok = !m->over && out_put(c, m->b, m->n, 0);
	/* feed() keeps OUT_RESERVE free before reading a reply */
	assert(ok);
	(void)ok;
}

static void send_str(struct mta_smtpc *c, const char *s)
{
	struct cmd m = {.n = 0};

	cmd_str(&m, s);
	send_now(c, &m);
}

/* ---- small helpers --------------------------------------------------- */

static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);

	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static bool is_done(const struct mta_smtpc *c, size_t i)
{
	return (c->done[i / 8] >> (i % 8)) & 1u;
}

static void set_done(struct mta_smtpc *c, size_t i)
{
	c->done[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* ---- envelope checks ------------------------------------------------- */

/* An address: no control characters, bounded; "" only when empty_ok. */
static bool ok_addr(const char *s, bool empty_ok)
{
	size_t n;

	if (s == NULL)
		return false;
	n = strlen(s);
	if (n > MTA_SMTPC_PARAM_MAX || (n == 0 && !empty_ok))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char b = (unsigned char)s[i];
		if (b < 0x20 || b == 0x7f)
			return false;
	}
	return true;
}

/* A parameter value (xtext, RET, NOTIFY): printable ASCII, no space. */
static bool ok_param(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > MTA_SMTPC_PARAM_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char b = (unsigned char)s[i];
		if (b <= 0x20 || b >= 0x7f)
			return false;
	}
	return true;
}

static const struct mta_rcpt *txn_rcpt(const struct mta_smtpc *c, size_t i)
{
	return &c->txn->env->rcpts[c->txn->rcpts[i]];
}

/* NULL when recipient i can be sent, else the status it gets. */
static const char *rcpt_bad(const struct mta_smtpc *c, size_t i)
{
	const struct mta_rcpt *r = txn_rcpt(c, i);

	if (!ok_addr(r->addr, false))
		return "5.1.3";
	if (r->notify_raw != NULL && !ok_param(r->notify_raw))
		return "5.5.4";
	if (r->orcpt != NULL && !ok_param(r->orcpt))
		return "5.5.4";
	return NULL;
}

static size_t skip_bad(const struct mta_smtpc *c, size_t i)
{
	while (i < c->txn->nrcpt && rcpt_bad(c, i) != NULL)
		i++;
	return i;
}

static const char *ret_value(const struct mta_envelope *e)
{
	if (e->ret_raw != NULL)
		return e->ret_raw;
	if (e->ret == MTA_RET_FULL)
		return "FULL";
	if (e->ret == MTA_RET_HDRS)
		return "HDRS";
	return NULL;
}

/* ---- events ---------------------------------------------------------- */

static enum mta_smtpc_ev drain(struct mta_smtpc *c, struct mta_smtpc_event *ev)
{
	if (c->pend & P_ONE) {
		c->pend &= ~(unsigned)P_ONE;
		ev->index = c->p_one;
		ev->code = c->r_code;
		ev->status = c->r_status;
		ev->text = c->r_text;
		return MTA_SMTPC_EV_RCPT_RESULT;
	}
	if (c->pend & P_RESULTS) {
		while (c->p_cursor < c->txn->nrcpt && is_done(c, c->p_cursor))
			c->p_cursor++;
		if (c->p_cursor < c->txn->nrcpt) {
			size_t i = c->p_cursor++;
			const char *bad = rcpt_bad(c, i);

			set_done(c, i);
			ev->index = i;
			if (bad != NULL) {
				ev->code = 0;
				ev->status = bad;
				ev->text = bad[2] == '1'
						   ? "recipient address not sendable"
						   : "invalid DSN parameter in the "
						     "envelope";
			} else {
				ev->code = c->f_code;
				ev->status = c->f_status;
				ev->text = c->f_text;
			}
			return MTA_SMTPC_EV_RCPT_RESULT;
		}
		c->pend &= ~(unsigned)P_RESULTS;
	}
	if (c->pend & P_TXN_DONE) {
		c->pend &= ~(unsigned)P_TXN_DONE;
		c->txn = NULL;
		return MTA_SMTPC_EV_TXN_DONE;
	}
	if (c->pend & P_FAIL) {
		c->pend &= ~(unsigned)P_FAIL;
		ev->code = c->x_code;
		ev->status = c->x_status;
		ev->text = c->x_text;
		ev->stage = c->x_stage;
		return MTA_SMTPC_EV_FAIL;
	}
	if (c->pend & P_CLOSED) {
		c->pend &= ~(unsigned)P_CLOSED;
		return MTA_SMTPC_EV_CLOSED;
	}
	if (c->pend & P_NEED_BODY) {
		c->pend &= ~(unsigned)P_NEED_BODY;
		return MTA_SMTPC_EV_NEED_BODY;
	}
	if (c->pend & P_READY) {
		c->pend &= ~(unsigned)P_READY;
		return MTA_SMTPC_EV_READY;
	}
	return MTA_SMTPC_EV_NONE;
}

/* The result of the recipients still to be reported. */
static void set_final(struct mta_smtpc *c, int code, const char *status,
		      const char *text)
{
	c->f_code = code;
	copy_str(c->f_status, sizeof(c->f_status), status);
	copy_str(c->f_text, sizeof(c->f_text), text);
}

static void set_final_reply(struct mta_smtpc *c)
{
	set_final(c, c->r_code, c->r_status, c->r_text);
}

static void go_ready(struct mta_smtpc *c)
{
	set_state(c, S_READY);
	c->pend |= P_READY;
}

/* ---- transaction state ----------------------------------------------- */

static bool txn_open(const struct mta_smtpc *c)
{
	return c->state == S_TXN || c->state == S_BODY || c->state == S_DOT;
}

static enum kind next_kind(const struct mta_smtpc *c)
{
	if (c->t_rset && c->w_rset_done && !c->a_rset)
		return K_RSET;
	if (c->w_mail_done && !c->a_mail)
		return K_MAIL;
	if (c->r_rcpt < c->w_rcpt)
		return K_RCPT;
	if (c->w_data_done && !c->a_data)
		return K_DATA;
	return K_NONE;
}

static const char *stage(const struct mta_smtpc *c)
{
	switch (c->state) {
	case S_GREETING:
		return "greeting";
	case S_EHLO:
		return "ehlo";
	case S_HELO:
		return "helo";
	case S_STARTTLS:
	case S_TLS:
		return "starttls";
	case S_AUTH:
		return "auth";
	case S_READY:
		return "idle";
	case S_TXN:
		switch (next_kind(c)) {
		case K_RSET:
			return "rset";
		case K_MAIL:
			return "mail";
		case K_RCPT:
			return "rcpt";
		case K_DATA:
			return "data";
		case K_NONE:
			break;
		}
		if (c->t_rset && !c->w_rset_done)
			return "rset";
		if (!c->w_mail_done)
			return "mail";
		return c->w_data_done ? "data" : "rcpt";
	case S_BODY:
		return "data";
	case S_DOT:
		return "dot";
	default:
		return "quit";
	}
}

/* ---- host failures --------------------------------------------------- */

static void to_closed(struct mta_smtpc *c)
{
	set_state(c, S_CLOSED);
	c->pend &= ~(unsigned)(P_READY | P_NEED_BODY);
	c->pend |= P_CLOSED;
}

/*
 * Ends the connection: FAIL then CLOSED, preceded by the results of an
 * open transaction (class 4, the same status).  quit: queue a courtesy
 * QUIT (only in the command phase, never inside a transaction).  stg:
 * the stage, NULL = from the state.
 */
static void fail(struct mta_smtpc *c, int code, const char *status,
		 const char *text, const char *stg, bool quit)
{
	if (c->state == S_CLOSED)
		return;
	c->x_code = code;
	c->x_stage = stg != NULL ? stg : stage(c);
	copy_str(c->x_status, sizeof(c->x_status), status);
	copy_str(c->x_text, sizeof(c->x_text), text);
	if (txn_open(c)) {
		if (c->x_status[0] == '5')
			c->x_status[0] = '4';
		set_final(c, c->x_code, c->x_status, c->x_text);
		c->p_cursor = 0;
		c->pend |= P_RESULTS | P_TXN_DONE;
		quit = false;
	}
	if (quit)
		(void)out_put(c, "QUIT\r\n", 6, 0);
	c->pend |= P_FAIL;
	to_closed(c);
}

static void fail_reply(struct mta_smtpc *c, bool quit)
{
	fail(c, c->r_code, c->r_status, c->r_text, NULL, quit);
}

static void proto_error(struct mta_smtpc *c, const char *why)
{
	char text[MTA_SMTPC_TEXT_MAX];

	if (c->state == S_QUIT) {
		to_closed(c);
		return;
	}
	snprintf(text, sizeof(text), "protocol error: %s", why);
	fail(c, 0, "4.5.0", text, NULL, false);
}

/* ---- reply reader ---------------------------------------------------- */

static bool is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

/* "c.sss.ddd" of class cls at p, followed by SP or the end. */
static bool parse_esc(const char *p, size_t n, int cls, char *out,
		      size_t cap)
{
	size_t i = 0, d;

	if (n < 5 || p[0] != (char)('0' + cls) || p[1] != '.')
		return false;
	i = 2;
	for (d = 0; i < n && is_digit(p[i]); i++, d++)
		;
	if (d < 1 || d > 3 || i >= n || p[i] != '.')
		return false;
	i++;
	for (d = 0; i < n && is_digit(p[i]); i++, d++)
		;
	if (d < 1 || d > 3 || (i < n && p[i] != ' '))
		return false;
	if (i >= cap)
		return false;
	memcpy(out, p, i);
	out[i] = '\0';
	return true;
}

/* Keeps the first line of a reply as its event text and status. */
static void first_line(struct mta_smtpc *c, const char *s, size_t n, int code)
{
	size_t t = n < sizeof(c->r_text) - 1 ? n : sizeof(c->r_text) - 1;

	for (size_t i = 0; i < t; i++) {
		unsigned char b = (unsigned char)s[i];
		c->r_text[i] = (b < 0x20 || b == 0x7f) ? '?' : (char)b;
	}
	if (t > 3)
		c->r_text[3] = ' ';
	c->r_text[t] = '\0';
	if (n <= 4 || !parse_esc(s + 4, n - 4, code / 100, c->r_status,
				 sizeof(c->r_status))) {
		if (code == 535)
			copy_str(c->r_status, sizeof(c->r_status), "5.7.8");
		else
			snprintf(c->r_status, sizeof(c->r_status), "%d.0.0",
				 code / 100);
	}
}

static bool word_is(const char *w, size_t n, const char *kw)
{
	return strlen(kw) == n && strncasecmp(w, kw, n) == 0;
}

/* One EHLO keyword line (after "250-"), NUL-terminated. */
static void parse_cap(struct mta_smtpc_caps *k, const char *s)
{
	size_t n = strcspn(s, " =");
	const char *arg = s[n] != '\0' ? s + n + 1 : s + n;

	if (word_is(s, n, "PIPELINING")) {
		k->pipelining = true;
	} else if (word_is(s, n, "SIZE")) {
		uint64_t v = 0;
		bool ok = is_digit(*arg);

		for (; is_digit(*arg); arg++) {
			unsigned dd = (unsigned)(*arg - '0');
			if (v > (UINT64_MAX - dd) / 10) {
				ok = false; /* absurd: treat as no limit */
				break;
			}
			v = v * 10 + dd;
		}
		k->size = true;
		k->size_max = ok ? v : 0;
	} else if (word_is(s, n, "8BITMIME")) {
		k->eightbitmime = true;
	} else if (word_is(s, n, "SMTPUTF8")) {
		k->smtputf8 = true;
	} else if (word_is(s, n, "DSN")) {
		k->dsn = true;
	} else if (word_is(s, n, "REQUIRETLS")) {
		k->requiretls = true;
	} else if (word_is(s, n, "STARTTLS")) {
		k->starttls = true;
	} else if (word_is(s, n, "ENHANCEDSTATUSCODES")) {
		k->enhancedstatuscodes = true;
	} else if (word_is(s, n, "CHUNKING")) {
		k->chunking = true;
	} else if (word_is(s, n, "AUTH")) {
		k->auth = true;
		while (*arg != '\0') {
			size_t m;

			arg += strspn(arg, " ");
			m = strcspn(arg, " ");
			if (word_is(arg, m, "PLAIN"))
				k->auth_plain = true;
			arg += m;
		}
	}
}

/*
 * One reply line without its line end.  Returns 1 when it completed a
 * reply (c->r_code, r_status, r_text set), 0 for a continuation line,
 * -1 after a protocol error (already turned into a failure).
 */
static int reply_line(struct mta_smtpc *c, char *s, size_t n)
{
	int code;
	bool last;

	if (n > MTA_SMTPC_LINE_MAX) {
		proto_error(c, "reply line too long");
		return -1;
	}
	s[n] = '\0';
	if (n < 3 || memchr(s, '\r', n) != NULL || s[0] < '2' || s[0] > '5' ||
	    s[1] < '0' || s[1] > '5' || !is_digit(s[2]) ||
	    (n > 3 && s[3] != ' ' && s[3] != '-')) {
		proto_error(c, "malformed reply");
		return -1;
	}
	code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
	last = n == 3 || s[3] == ' ';
	if (c->r_lines == 0) {
		c->r_code = code;
		first_line(c, s, n, code);
		if (c->state == S_EHLO)
			memset(&c->caps, 0, sizeof(c->caps));
	} else if (code != c->r_code) {
		proto_error(c, "inconsistent reply codes");
		return -1;
	} else if (c->state == S_EHLO && code / 100 == 2 && n > 4) {
		parse_cap(&c->caps, s + 4);
	}
	c->r_lines++;
	if (!last)
		return 0;
	c->r_lines = 0;
	c->r_size = 0;
	return 1;
}

static int reply_byte(struct mta_smtpc *c, uint8_t b)
{
	if (++c->r_size > MTA_SMTPC_REPLY_MAX) {
		proto_error(c, "reply too long");
		return -1;
	}
	if (b == '\n') {
		size_t n = c->l_len;

		c->l_len = 0;
		if (n > 0 && c->line[n - 1] == '\r')
			n--;
		return reply_line(c, c->line, n);
	}
	if (c->l_len >= MTA_SMTPC_LINE_MAX + 1) {
		proto_error(c, "reply line too long");
		return -1;
	}
	c->line[c->l_len++] = (char)b;
	return 0;
}

/* ---- session steps --------------------------------------------------- */

static void send_helo(struct mta_smtpc *c, const char *verb)
{
	struct cmd m = {.n = 0};

	cmd_str(&m, verb);
	cmd_str(&m, " ");
	cmd_str(&m, c->cfg->helo_name);
	cmd_str(&m, "\r\n");
	send_now(c, &m);
}

static void b64(struct cmd *m, const uint8_t *p, size_t n)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
				  "abcdefghijklmnopqrstuvwxyz0123456789+/";
	char q[4];

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		q[0] = tab[(v >> 18) & 63];
		q[1] = tab[(v >> 12) & 63];
		q[2] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		q[3] = i + 2 < n ? tab[v & 63] : '=';
		cmd_put(m, q, 4);
	}
}

static void send_auth(struct mta_smtpc *c)
{
	uint8_t raw[2 * MTA_SMTPC_AUTH_MAX + 2];
	size_t u, p;
	struct cmd m = {.n = 0};

	if (c->cfg->auth_plain != NULL) {
		cmd_str(&m, "AUTH PLAIN ");
		cmd_str(&m, c->cfg->auth_plain);
		cmd_str(&m, "\r\n");
		send_now(c, &m);
		explicit_bzero(&m, sizeof(m));
		c->state = S_AUTH;
		return;
	}
	u = strlen(c->cfg->auth_user);
	p = strlen(c->cfg->auth_pass);
	/* RFC 4616: [authzid] NUL authcid NUL passwd; authzid empty */
	raw[0] = '\0';
	memcpy(raw + 1, c->cfg->auth_user, u);
	raw[1 + u] = '\0';
	memcpy(raw + 2 + u, c->cfg->auth_pass, p);
	cmd_str(&m, "AUTH PLAIN ");
	b64(&m, raw, 2 + u + p);
	cmd_str(&m, "\r\n");
	explicit_bzero(raw, sizeof(raw));
	send_now(c, &m);
	explicit_bzero(&m, sizeof(m));
	set_state(c, S_AUTH);
}

/* EHLO or HELO succeeded: STARTTLS, AUTH or READY, by the config. */
static void after_helo(struct mta_smtpc *c)
{
	if (!c->tls && c->cfg->tls != MTA_SMTPC_TLS_NONE && !c->tried_tls) {
		if (c->caps.starttls) {
			send_str(c, "STARTTLS\r\n");
			c->tried_tls = true;
			set_state(c, S_STARTTLS);
			return;
		}
		if (c->cfg->tls == MTA_SMTPC_TLS_REQUIRE) {
			fail(c, 0, "4.7.4", "STARTTLS not offered", "starttls",
			     true);
			return;
		}
	}
	if (c->cfg->requiretls && (!c->tls || !c->caps.requiretls)) {
		/* RFC 8689 §4.2.1 step 5 (RTLS-24): the keyword must be in
		 * the post-STARTTLS EHLO; QUIT, then the next host */
		fail(c, 0, "5.7.30", "REQUIRETLS not offered after STARTTLS",
		     "ehlo", true);
		return;
	}
	if (c->cfg->auth_user != NULL && !c->authed) {
		if (!c->tls)
			fail(c, 0, "4.7.0",
			     "credentials are only sent over TLS", "auth",
			     true);
		else if (!c->caps.auth_plain)
			fail(c, 0, "4.7.0", "AUTH PLAIN not offered", "auth",
			     true);
		else
			send_auth(c);
		return;
	}
	go_ready(c);
}

/* ---- transaction ----------------------------------------------------- */

/* Queues a transaction command if it fits and leaves the reserve. */
static bool put_txn(struct mta_smtpc *c, const struct cmd *m)
{
	assert(!m->over);
	return !m->over && out_put(c, m->b, m->n, OUT_RESERVE);
}

static void build_mail(const struct mta_smtpc *c, struct cmd *m)
{
	const struct mta_envelope *e = c->txn->env;
	const struct mta_smtpc_caps *k = &c->caps;
	const char *ret = ret_value(e);

	cmd_str(m, "MAIL FROM:<");
	cmd_str(m, e->sender);
	cmd_str(m, ">");
	if (k->size) {
		cmd_str(m, " SIZE=");
		cmd_u64(m, c->txn->size);
	}
	if (k->eightbitmime && e->body == MTA_BODY_8BITMIME)
		cmd_str(m, " BODY=8BITMIME");
	else if (k->eightbitmime && e->body == MTA_BODY_7BIT)
		cmd_str(m, " BODY=7BIT");
	if (k->smtputf8 && e->smtputf8)
		cmd_str(m, " SMTPUTF8");
	if (k->dsn && ret != NULL) {
		cmd_str(m, " RET=");
		cmd_str(m, ret);
	}
	if (k->dsn && e->envid != NULL) {
		cmd_str(m, " ENVID=");
		cmd_str(m, e->envid);
	}
	if (e->tlsreq == MTA_TLSREQ_REQUIRETLS && k->requiretls && c->tls)
		cmd_str(m, " REQUIRETLS"); /* RFC 8689 §4.2.1 (RTLS-20) */
	cmd_str(m, "\r\n");
}

static void build_rcpt(const struct mta_smtpc *c, size_t i, struct cmd *m)
{
	const struct mta_rcpt *r = txn_rcpt(c, i);

	cmd_str(m, "RCPT TO:<");
	cmd_str(m, r->addr);
	cmd_str(m, ">");
	if (c->caps.dsn && r->notify_raw != NULL) {
		cmd_str(m, " NOTIFY=");
		cmd_str(m, r->notify_raw);
	}
	if (c->caps.dsn && r->orcpt != NULL) {
		cmd_str(m, " ORCPT=");
		cmd_str(m, r->orcpt);
	}
	cmd_str(m, "\r\n");
}

/* Writes the next commands: all that fit with PIPELINING (RFC 2920: one
 * group ending with DATA), else one when nothing is outstanding. */
static void pump_txn(struct mta_smtpc *c)
{
	for (;;) {
		struct cmd m = {.n = 0};

		if (c->t_stop)
			return;
		if (next_kind(c) != K_NONE && !c->caps.pipelining)
			return;
		if (c->t_rset && !c->w_rset_done) {
			cmd_str(&m, "RSET\r\n");
			if (!put_txn(c, &m))
				return;
			c->w_rset_done = true;
		} else if (!c->w_mail_done) {
			build_mail(c, &m);
			if (!put_txn(c, &m))
				return;
			c->w_mail_done = true;
		} else if (c->w_rcpt < c->txn->nrcpt) {
			build_rcpt(c, c->w_rcpt, &m);
			if (!put_txn(c, &m))
				return;
			c->w_rcpt = skip_bad(c, c->w_rcpt + 1);
		} else if (!c->w_data_done) {
			if (!c->caps.pipelining && c->accepted == 0)
				return; /* txn_check_end() ends it */
			cmd_str(&m, "DATA\r\n");
			if (!put_txn(c, &m))
				return;
			c->w_data_done = true;
		} else {
			return;
		}
	}
}

static void body_finish(struct mta_smtpc *c)
{
	uint8_t *p;
	size_t n = 0;

	if (out_free(c) < BODY_END)
		return; /* pump() retries after output_consume() */
	p = out_tail(c);
	if (c->b_cr || !c->b_bol) {
		p[n++] = '\r';
		p[n++] = '\n';
	}
	p[n++] = '.';
	p[n++] = '\r';
	p[n++] = '\n';
	c->out_len += n;
	c->b_end = false;
	set_state(c, S_DOT);
}

static void pump(struct mta_smtpc *c)
{
	if (c->state == S_TXN)
		pump_txn(c);
	else if (c->state == S_BODY && c->b_end)
		body_finish(c);
}

static void txn_end(struct mta_smtpc *c, bool rset)
{
	c->need_rset = rset;
	c->p_cursor = 0;
	c->pend |= P_RESULTS | P_TXN_DONE;
	go_ready(c);
}

static void txn_check_end(struct mta_smtpc *c)
{
	if (c->state != S_TXN || next_kind(c) != K_NONE)
		return;
	if (c->t_stop || c->a_data ||
	    (!c->caps.pipelining && c->a_mail &&
	     c->w_rcpt >= c->txn->nrcpt && c->accepted == 0))
		txn_end(c, true);
}

static void txn_reply(struct mta_smtpc *c)
{
	int cls = c->r_code / 100;
	size_t i;

	if (next_kind(c) == K_DATA ? (cls < 4 && c->r_code != 354)
				   : cls == 3) {
		proto_error(c, "unexpected reply code");
		return;
	}
	switch (next_kind(c)) {
	case K_NONE:
		proto_error(c, "unexpected reply");
		return;
	case K_RSET:
		c->a_rset = true;
		if (cls != 2) {
			fail(c, c->r_code, c->r_status, c->r_text, "rset",
			     false);
			return;
		}
		c->need_rset = false;
		break;
	case K_MAIL:
		c->a_mail = true;
		if (cls != 2) {
			c->t_stop = true;
			set_final_reply(c);
		}
		break;
	case K_RCPT:
		i = c->r_rcpt;
		c->r_rcpt = skip_bad(c, i + 1);
		if (c->t_stop)
			break; /* MAIL failed: its reply is the result */
		if (cls == 2) {
			c->accepted++;
		} else {
			set_done(c, i);
			c->p_one = i;
			c->pend |= P_ONE;
		}
		break;
	case K_DATA:
		c->a_data = true;
		if (c->r_code == 354) {
			if (c->accepted == 0) {
				/* PIPE-06: nobody to deliver to */
				send_str(c, ".\r\n");
				c->t_lone_dot = true;
				set_state(c, S_DOT);
				return;
			}
			set_state(c, S_BODY);
			c->b_bol = true;
			c->b_cr = false;
			c->b_end = false;
			c->pend |= P_NEED_BODY;
			return;
		}
		if (!c->t_stop)
			set_final_reply(c);
		break;
	}
	txn_check_end(c);
}

static void dot_reply(struct mta_smtpc *c)
{
	int cls = c->r_code / 100;

	if (cls == 3) {
		proto_error(c, "unexpected 3xx reply");
		return;
	}
	if (!c->t_lone_dot)
		set_final_reply(c);
	txn_end(c, cls != 2 || c->t_lone_dot);
}

/* A complete reply arrived.  Returns STARTTLS or NONE. */
static enum mta_smtpc_ev on_reply(struct mta_smtpc *c)
{
	int code = c->r_code, cls = code / 100;

	if (c->state == S_QUIT) {
		to_closed(c);
		return MTA_SMTPC_EV_NONE;
	}
	if (code == 421) {
		/* CLI-06: closing; open recipients are deferred */
		fail_reply(c, false);
		return MTA_SMTPC_EV_NONE;
	}
	switch (c->state) {
	case S_GREETING:
		if (code == 220) {
			send_helo(c, "EHLO");
			set_state(c, S_EHLO);
		} else if (cls >= 4) {
			fail_reply(c, true);
		} else {
			proto_error(c, "unexpected greeting");
		}
		break;
	case S_EHLO:
		if (cls == 2) {
			c->caps.esmtp = true;
			after_helo(c);
		} else if (cls == 5) {
			/* CLI-11: HELO, no extensions */
			memset(&c->caps, 0, sizeof(c->caps));
			send_helo(c, "HELO");
			set_state(c, S_HELO);
		} else if (cls == 4) {
			fail_reply(c, true);
		} else {
			proto_error(c, "unexpected reply to EHLO");
		}
		break;
	case S_HELO:
		if (cls == 2)
			after_helo(c);
		else if (cls >= 4)
			fail_reply(c, true);
		else
			proto_error(c, "unexpected reply to HELO");
		break;
	case S_STARTTLS:
		if (code == 220) {
			set_state(c, S_TLS);
			return MTA_SMTPC_EV_STARTTLS;
		}
		if (cls < 4) {
			proto_error(c, "unexpected reply to STARTTLS");
		} else if (c->cfg->tls == MTA_SMTPC_TLS_REQUIRE) {
			char text[MTA_SMTPC_TEXT_MAX];

			snprintf(text, sizeof(text), "STARTTLS refused: %.480s",
				 c->r_text);
			fail(c, code, "4.7.4", text, NULL, true);
		} else {
			after_helo(c); /* TLS-13: may: continue in clear */
		}
		break;
	case S_AUTH:
		if (cls == 2) {
			c->authed = true;
			go_ready(c);
		} else if (cls >= 4) {
			fail_reply(c, true);
		} else {
			proto_error(c, "unexpected reply to AUTH");
		}
		break;
	case S_TXN:
		txn_reply(c);
		break;
	case S_DOT:
		dot_reply(c);
		break;
	default:
		proto_error(c, "unexpected reply");
		break;
	}
	return MTA_SMTPC_EV_NONE;
}

/* ---- driver calls ---------------------------------------------------- */

static bool ok_helo(const char *s)
{
	size_t n;

	if (s == NULL)
		return false;
	n = strlen(s);
	if (n == 0 || n > MTA_SMTPC_HELO_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!(is_digit(ch) || (ch >= 'a' && ch <= 'z') ||
		      (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '.' ||
		      ch == '[' || ch == ']' || ch == ':'))
			return false;
	}
	return true;
}

int mta_smtpc_init(struct mta_smtpc *c, const struct mta_smtpc_config *cfg)
{
	memset(c, 0, sizeof(*c));
	set_state(c, S_CLOSED);
	if (cfg == NULL || !ok_helo(cfg->helo_name) ||
	    cfg->tls < MTA_SMTPC_TLS_NONE || cfg->tls > MTA_SMTPC_TLS_REQUIRE ||
	    (cfg->auth_user == NULL) !=
		    (cfg->auth_pass == NULL && cfg->auth_plain == NULL))
		return MTA_ECONFIG;
	if (cfg->auth_user != NULL &&
	    (strlen(cfg->auth_user) > MTA_SMTPC_AUTH_MAX ||
	     (cfg->auth_pass != NULL &&
	      strlen(cfg->auth_pass) > MTA_SMTPC_AUTH_MAX) ||
	     (cfg->auth_plain != NULL &&
	      strlen(cfg->auth_plain) > 4 * MTA_SMTPC_AUTH_MAX)))
		return MTA_ECONFIG;
	c->cfg = cfg;
	set_state(c, S_GREETING);
	return 0;
}

void mta_smtpc_free(struct mta_smtpc *c)
{
	set_state(c, S_CLOSED);
	explicit_bzero(c, sizeof(*c));
	c->state = S_CLOSED; /* the wiped struct stays closed: no change */
}

enum mta_smtpc_ev mta_smtpc_feed(struct mta_smtpc *c, const uint8_t *in,
				 size_t len, size_t *consumed,
				 struct mta_smtpc_event *ev)
{
	enum mta_smtpc_ev e;
	size_t i = 0;

	memset(ev, 0, sizeof(*ev));
	*consumed = 0;
	e = drain(c, ev);
	if (e != MTA_SMTPC_EV_NONE)
		return e;
	if (c->state == S_CLOSED || c->state == S_TLS) {
		/* TLS-11: plaintext after the 220 is never used */
		*consumed = len;
		return MTA_SMTPC_EV_NONE;
	}
	while (i < len && c->pend == 0) {
		int r;

		if (out_free(c) < OUT_RESERVE)
			break; /* the driver must write first */
		r = reply_byte(c, in[i++]);
		if (r <= 0)
			continue;
		e = on_reply(c);
		if (e == MTA_SMTPC_EV_STARTTLS) {
			ev->len = len - i;
			*consumed = len;
			return e;
		}
		pump(c);
	}
	*consumed = i;
	return drain(c, ev);
}

size_t mta_smtpc_output(const struct mta_smtpc *c, const uint8_t **p)
{
	*p = c->out + c->out_off;
	return c->out_len;
}

void mta_smtpc_output_consume(struct mta_smtpc *c, size_t n)
{
	if (n > c->out_len)
		n = c->out_len;
	c->out_off += n;
	c->out_len -= n;
	if (c->out_len == 0)
		c->out_off = 0;
	pump(c);
}

int mta_smtpc_start_txn(struct mta_smtpc *c, const struct mta_smtpc_txn *txn)
{
	const struct mta_envelope *e;
	const char *st = NULL;
	char text[MTA_SMTPC_TEXT_MAX];

	if (c->state != S_READY || c->pend != 0 || txn == NULL ||
	    txn->env == NULL || txn->rcpts == NULL || txn->nrcpt == 0)
		return -EINVAL;
	if (txn->nrcpt > MTA_SMTPC_MAX_RCPT)
		return MTA_ETOOBIG;
	e = txn->env;
	for (size_t i = 0; i < txn->nrcpt; i++)
		if (txn->rcpts[i] >= e->nrcpt)
			return -EINVAL;

	c->txn = txn;
	c->w_rcpt = c->r_rcpt = 0;
	c->accepted = 0;
	c->t_rset = c->w_rset_done = c->w_mail_done = c->w_data_done = false;
	c->a_rset = c->a_mail = c->a_data = false;
	c->t_stop = c->t_lone_dot = false;
	memset(c->done, 0, sizeof(c->done));
	set_final(c, 0, "4.5.0", "no reply");

	text[0] = '\0';
	if (!ok_addr(e->sender, true)) {
		st = "5.1.7";
		copy_str(text, sizeof(text), "sender address not sendable");
	} else if ((e->envid != NULL && !ok_param(e->envid)) ||
		   (ret_value(e) != NULL && !ok_param(ret_value(e)))) {
		st = "5.5.4";
		copy_str(text, sizeof(text),
			 "invalid DSN parameter in the envelope");
	} else if (c->caps.size && c->caps.size_max != 0 &&
		   txn->size > c->caps.size_max) {
		st = "5.3.4"; /* SIZE-05 */
		snprintf(text, sizeof(text),
			 "message size %" PRIu64
			 " exceeds the peer's limit of %" PRIu64,
			 txn->size, c->caps.size_max);
	} else if (e->smtputf8 && !c->caps.smtputf8) {
		st = "5.6.7"; /* UTF8-03 */
		copy_str(text, sizeof(text), "peer does not support SMTPUTF8");
	} else if (e->body == MTA_BODY_8BITMIME && !c->caps.eightbitmime) {
		st = "5.6.3"; /* 8BIT-03: bounce, no downgrade */
		copy_str(text, sizeof(text), "peer does not support 8BITMIME");
	}
	if (st != NULL || skip_bad(c, 0) == txn->nrcpt) {
		if (st != NULL)
			set_final(c, 0, st, text);
		c->p_cursor = 0;
		c->pend |= P_RESULTS | P_TXN_DONE | P_READY;
		return 0;
	}
	c->t_rset = c->need_rset;
	c->w_rcpt = c->r_rcpt = skip_bad(c, 0);
	set_state(c, S_TXN);
	pump(c);
	return 0;
}

bool mta_smtpc_wants_body(const struct mta_smtpc *c)
{
	return c->state == S_BODY && !c->b_end &&
	       out_free(c) >= OUT_RESERVE + MTA_SMTPC_BODY_ROOM;
}

/* Length of the leading run of d[0..len) that holds neither CR nor LF. */
static size_t plain_run(const uint8_t *d, size_t len)
{
	const uint8_t *lf = memchr(d, '\n', len);
	size_t n = lf != NULL ? (size_t)(lf - d) : len;
	const uint8_t *cr = memchr(d, '\r', n);

	return cr != NULL ? (size_t)(cr - d) : n;
}

size_t mta_smtpc_body(struct mta_smtpc *c, const uint8_t *data, size_t len,
		      bool last)
{
	size_t i = 0, n;
	uint8_t *p;

	if (c->state != S_BODY || c->b_end)
		return 0;
	p = out_tail(c);
	n = 0;
	while (i < len && out_free(c) - n >= OUT_RESERVE + BODY_STEP) {
		uint8_t b = data[i];

		if (!c->b_cr && b != '\r' && b != '\n' &&
		    !(c->b_bol && b == '.')) {
			/* Bytes up to the next CR or LF go out as they are,
			 * copied as a run: one output byte each, as far as the
			 * byte loop below would take them (it stops with
			 * fewer than OUT_RESERVE + BODY_STEP bytes free). */
			size_t room = out_free(c) - n -
				      (OUT_RESERVE + BODY_STEP) + 1;
			size_t run = plain_run(data + i, len - i < room
								 ? len - i
								 : room);

			memcpy(p + n, data + i, run);
			n += run;
			i += run;
			c->b_bol = false;
			continue;
		}
		i++;

		if (b == '\r') {
			if (c->b_cr) { /* bare CR */
				p[n++] = '\r';
				p[n++] = '\n';
				c->b_bol = true;
			}
			c->b_cr = true;
			continue;
		}
		if (c->b_cr || b == '\n') { /* CRLF, bare CR or bare LF */
			p[n++] = '\r';
			p[n++] = '\n';
			c->b_cr = false;
			c->b_bol = true;
			if (b == '\n')
				continue;
		}
		if (c->b_bol && b == '.')
			p[n++] = '.'; /* SMUG-08 */
		p[n++] = b;
		c->b_bol = false;
	}
	c->out_len += n;
	if (last && i == len) {
		c->b_end = true;
		body_finish(c);
	}
	return i;
}

int mta_smtpc_quit(struct mta_smtpc *c)
{
	if (c->state != S_READY || c->pend != 0)
		return -EINVAL;
	send_str(c, "QUIT\r\n");
	set_state(c, S_QUIT);
	return 0;
}

int mta_smtpc_tls_started(struct mta_smtpc *c)
{
	if (c->state != S_TLS)
		return -EINVAL;
	c->tls = true;
	memset(&c->caps, 0, sizeof(c->caps)); /* TLS-10 */
	c->l_len = 0;
	c->r_lines = 0;
	c->r_size = 0;
	send_helo(c, "EHLO");
	set_state(c, S_EHLO);
	return 0;
}

unsigned mta_smtpc_timeout_ms(const struct mta_smtpc *c)
{
	switch (c->state) {
	case S_CLOSED:
		return 0;
	case S_BODY:
		return T_BLOCK;
	case S_DOT:
		return T_DOT;
	case S_TXN:
		return next_kind(c) == K_DATA ? T_DATA : T_5MIN;
	default:
		return T_5MIN;
	}
}

void mta_smtpc_timeout(struct mta_smtpc *c)
{
	if (c->state == S_QUIT)
		to_closed(c);
	else
		fail(c, 0, "4.4.2", "timeout", NULL, false);
}

void mta_smtpc_eof(struct mta_smtpc *c)
{
	if (c->state == S_QUIT)
		to_closed(c);
	else
		fail(c, 0, "4.4.2", "connection lost", NULL, false);
}

void mta_smtpc_abort(struct mta_smtpc *c, const char *status,
		     const char *text)
{
	if (status == NULL || (status[0] != '4' && status[0] != '5') ||
	    status[1] != '.')
		status = "4.0.0";
	fail(c, 0, status, text != NULL ? text : "aborted", NULL,
	     false);
}

const struct mta_smtpc_caps *mta_smtpc_caps(const struct mta_smtpc *c)
{
	return &c->caps;
}

bool mta_smtpc_in_tls(const struct mta_smtpc *c)
{
	return c->tls;
}

bool mta_smtpc_closed(const struct mta_smtpc *c)
{
	return c->state == S_CLOSED;
}

