/*
 * smtp_server.c - sans-I/O SMTP server engine.  See smtp_server.h.
 *
 * Layout: output queue, replies and events; one function per command
 * (address and parameter syntax is smtp_syntax.c); the input modes
 * (command lines, BDAT chunks; DATA is smtp_server_body.c with the body
 * checker shared by DATA and BDAT) in mta_smtpd_feed(); the driver calls
 * at the end.
 */
#include "smtp_server.h"

#include "err.h"
#include "log.h"
#include "smtp_server_int.h"
#include "smtp_syntax.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


#define OUT_RESERVE 2048      /* free output needed to take more input */
#define REPLY_MAX 1024	      /* one reply line, without CRLF */
#define ECHO_MAX 400	      /* longest client string echoed in a reply */
#define HOST_MAX 255	      /* longest hostname put in a reply */
#define MAX_ERRORS 100u	      /* client-caused 5xx before 421 */
#define REFUSED_MAX_ERRORS 3u /* the same for a refused session */
#define ENVID_MAX 100	      /* RFC 3461 4.4 */
#define DEFAULT_MAX_RCPT 100u /* when cfg->max_recipients is 0 */

/* Input modes (s->mode), named for the debug trace; MODE_CMD is 0 (the
 * state after mta_smtpd_init()'s memset). */
#define SMTPD_MODE_MAP(X)                                                  \
	X(CMD, "cmd")	    /* reading command lines */                    \
	X(DATA, "data")	    /* after 354 */                                \
	X(BDAT, "bdat")	    /* reading a BDAT chunk */                     \
	X(WAIT, "wait")	    /* MESSAGE emitted: message_done() next */     \
	X(TLS, "tls")	    /* STARTTLS accepted: tls_started() next */    \
	X(AUTH, "auth")	    /* AUTH event emitted: auth_done() next */     \
	X(CLOSED, "closed")

enum mode {
#define SMTPD_MODE_ENUM(id, name) MODE_##id,
	SMTPD_MODE_MAP(SMTPD_MODE_ENUM)
#undef SMTPD_MODE_ENUM
};

static const char *mode_name(unsigned m)
{
	switch ((enum mode)m) {
#define SMTPD_MODE_CASE(id, name)                                          \
	case MODE_##id:                                                    \
		return name;
		SMTPD_MODE_MAP(SMTPD_MODE_CASE)
#undef SMTPD_MODE_CASE
	}
	return "?";
}

/* Every change of s->mode goes through here: one debug line
 * "event=smtpd_state old=<mode> new=<mode>" per change. */
static void set_state(struct mta_smtpd *s, enum mode m)
{
	if (s->mode != m) {
		struct mta_logline l;
		mta_log_begin(&l, MTA_LOG_DEBUG, "smtpd_state");
		if (!l.skip) {
			mta_log_str(&l, "old", mode_name(s->mode));
			mta_log_str(&l, "new", mode_name(m));
			mta_log_end(&l);
		}
	}
	s->mode = (uint8_t)m;
}

enum helo_state { HELO_NONE = 0, HELO_HELO, HELO_EHLO };


/* ---- output ---------------------------------------------------------- */

static size_t out_free(const struct mta_smtpd *s)
{
	return sizeof(s->out) - s->out_len;
}

static void out_put(struct mta_smtpd *s, const char *p, size_t n)
{
	if (s->out_off > 0 && s->out_off + s->out_len + n > sizeof(s->out)) {
		memmove(s->out, s->out + s->out_off, s->out_len);
		s->out_off = 0;
	}
	/* OUT_RESERVE > any reply sequence of one step; never overflow */
	assert(s->out_off + s->out_len + n <= sizeof(s->out));
	if (s->out_off + s->out_len + n > sizeof(s->out))
		return;
	memcpy(s->out + s->out_off + s->out_len, p, n);
	s->out_len += n;
}

static int vreply(struct mta_smtpd *s, const char *fmt, va_list ap)
{
	char line[REPLY_MAX + 2];
	int n = vsnprintf(line, REPLY_MAX + 1, fmt, ap);

	if (n < 0)
		n = 0;
	if (n > REPLY_MAX)
		n = REPLY_MAX;
	line[n] = '\r';
	line[n + 1] = '\n';
	out_put(s, line, (size_t)n + 2);
	/* keep the line for the event text */
	size_t t = (size_t)n < sizeof(s->evtext) - 1 ? (size_t)n
						      : sizeof(s->evtext) - 1;
	memcpy(s->evtext, line, t);
	s->evtext[t] = '\0';
	return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
}

__attribute__((format(printf, 2, 3))) static int reply(struct mta_smtpd *s,
						       const char *fmt, ...)
{
	va_list ap;
	int code;

	va_start(ap, fmt);
	code = vreply(s, fmt, ap);
	va_end(ap);
	return code;
}

static const char *host(const struct mta_smtpd *s)
{
	return s->cfg->hostname != NULL ? s->cfg->hostname : "localhost";
}

static enum mta_smtpd_ev fill_ev(struct mta_smtpd *s,
				 struct mta_smtpd_event *ev,
				 enum mta_smtpd_ev type, int code,
				 const char *verb)
{
	ev->code = code;
	ev->text = s->evtext;
	ev->verb = verb;
	return type;
}

/* Queues a 4xx/5xx reply to a command and returns REJECT (or CLOSE when
 * the client has used up its error budget). */
__attribute__((format(printf, 4, 5))) static enum mta_smtpd_ev
reject(struct mta_smtpd *s, struct mta_smtpd_event *ev, const char *verb,
       const char *fmt, ...)
{
	va_list ap;
	int code;

	va_start(ap, fmt);
	code = vreply(s, fmt, ap);
	va_end(ap);
	assert(code >= 400);
	if (code >= 500 && ++s->errors >= (s->cfg->refused ? REFUSED_MAX_ERRORS
							  : MAX_ERRORS)) {
		reply(s, "421 4.7.0 %.*s Too many errors", HOST_MAX, host(s));
		set_state(s, MODE_CLOSED);
		return fill_ev(s, ev, MTA_SMTPD_EV_CLOSE, 421, verb);
	}
	return fill_ev(s, ev, MTA_SMTPD_EV_REJECT, code, verb);
}

/* ---- transaction ----------------------------------------------------- */

/* The client may relay: inside relay_networks, or authenticated (AUTH);
 * every postmaster-only and null-sender rule keys on this. */
static bool relay_ok(const struct mta_smtpd *s)
{
	return s->cfg->relay_allowed || s->authed;
}

static void body_reset(struct mta_smtpd *s)
{
	s->b_size = 0;
	s->b_linelen = 0;
	s->b_rcvd = 0;
	s->b_rmatch = 0;
	s->b_tmatch = 0;
	s->b_tcapt = s->b_tpend = s->b_tno = false;
	s->b_tcount = 0;
	s->b_tlen = 0;
	s->b_cr = false;
	s->b_hdr_done = false;
	s->b_viol = V_NONE;
	s->d_state = D_BOL;
}

static void tx_reset(struct mta_smtpd *s)
{
	mta_envelope_free(&s->env);
	s->mail_ok = false;
	s->bdat_open = false;
	s->bdat_discard = false;
	s->bdat_last = false;
	s->bdat_left = 0;
	s->bdat_size = 0;
	s->hold = false;
	body_reset(s);
}

/* The body is complete: MESSAGE, or ABORT with the violation's reply. */
static enum mta_smtpd_ev body_end(struct mta_smtpd *s,
				  struct mta_smtpd_event *ev, const char *verb)
{
	int code;

	if (s->b_cr)
		smtpd_violate(s, V_BARE); /* BDAT body ending in a bare CR */
	switch (s->b_viol) {
	case V_NONE:
		set_state(s, MODE_WAIT);
		return MTA_SMTPD_EV_MESSAGE;
	case V_BARE:
		code = reply(s, "550 5.6.0 Message contains bare CR or LF or "
				"NUL; use CRLF line endings");
		break;
	case V_LONG:
		code = reply(s, "550 5.6.0 Message has a line longer than 998 "
				"octets (RFC 5322 2.1.1); encode the body with "
				"quoted-printable or base64");
		break;
	case V_BIG:
		code = reply(s, "552 5.3.4 Error: message too big");
		break;
	default:
		code = reply(s, "554 5.4.6 Too many hops");
		break;
	}
	tx_reset(s);
	set_state(s, MODE_CMD);
	return fill_ev(s, ev, MTA_SMTPD_EV_ABORT, code, verb);
}

/* ---- character classes (address syntax: smtp_syntax.c) ---------------- */

static bool is_alpha(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

/* ---- commands -------------------------------------------------------- */

static bool arg_empty(const char *arg)
{
	return arg == NULL || arg[0] == '\0';
}

static enum mta_smtpd_ev ok_or_abort(struct mta_smtpd *s,
				     struct mta_smtpd_event *ev, int code,
				     const char *verb)
{
	/* a BDAT sink was open: tell the driver to drop it (CHK-05) */
	if (s->bdat_open) {
		tx_reset(s);
		return fill_ev(s, ev, MTA_SMTPD_EV_ABORT, code, verb);
	}
	tx_reset(s);
	return MTA_SMTPD_EV_NONE;
}

static enum mta_smtpd_ev cmd_helo(struct mta_smtpd *s, char *arg,
				  struct mta_smtpd_event *ev, bool ehlo)
{
	const char *verb = ehlo ? "EHLO" : "HELO";
	size_t n;
	int code;

	if (arg_empty(arg))
		return reject(s, ev, verb, "501 5.5.4 Syntax: %s hostname",
			      verb);
	n = strlen(arg);
	memcpy(s->helo, arg, n + 1);
	s->helo_state = ehlo ? HELO_EHLO : HELO_HELO;
	if (!ehlo) {
		code = reply(s, "250 %.*s", HOST_MAX, host(s));
		return ok_or_abort(s, ev, code, verb);
	}
	code = reply(s, "250-%.*s", HOST_MAX, host(s));
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %" PRIu64, s->cfg->max_message_size);
	reply(s, "250-8BITMIME");
	reply(s, "250-SMTPUTF8");
	reply(s, "250-ENHANCEDSTATUSCODES");
	reply(s, "250-DSN");
	if (s->cfg->auth && s->tls)
		reply(s, "250-AUTH PLAIN LOGIN");
	if (s->tls)
		reply(s, "250-REQUIRETLS"); /* RTLS-01: after STARTTLS only */
	if (s->cfg->starttls && !s->tls) {
		reply(s, "250-CHUNKING");
		reply(s, "250 STARTTLS");
	} else {
		reply(s, "250 CHUNKING");
	}
	/* event text: the first line */
	snprintf(s->evtext, sizeof(s->evtext), "250-%.*s", HOST_MAX, host(s));
	return ok_or_abort(s, ev, code, verb);
}

struct mail_params {
	bool size, body, utf8, ret, envid, auth, requiretls;
	uint64_t size_val;
	enum mta_body_type body_val;
	enum mta_ret ret_val;
	const char *ret_raw, *envid_raw;
};

/* What mail_param() made of one MAIL parameter. */
enum mail_param_result { MP_OK, MP_BAD, MP_BINARY, MP_UNKNOWN };

/* One MAIL FROM parameter (RFC 1870 SIZE, 6152 BODY, 6531 SMTPUTF8,
 * 3461 RET and ENVID, 4954 AUTH) into mp; a repeated one is MP_BAD. */
static enum mail_param_result mail_param(struct mail_params *mp,
					 const char *kw, const char *val)
{
	if (strcasecmp(kw, "SIZE") == 0) {
		size_t n = val ? strlen(val) : 0;
		if (mp->size || n == 0 || n > 20)
			return MP_BAD;
		mp->size_val = 0;
		for (size_t i = 0; i < n; i++) {
			unsigned d;
			if (!is_digit((uint8_t)val[i]))
				return MP_BAD;
			d = (unsigned)(val[i] - '0');
			if (mp->size_val > (UINT64_MAX - d) / 10)
				mp->size_val = UINT64_MAX;
			else
				mp->size_val = mp->size_val * 10 + d;
		}
		mp->size = true;
	} else if (strcasecmp(kw, "BODY") == 0) {
		if (mp->body || val == NULL)
			return MP_BAD;
		if (strcasecmp(val, "7BIT") == 0)
			mp->body_val = MTA_BODY_7BIT;
		else if (strcasecmp(val, "8BITMIME") == 0)
			mp->body_val = MTA_BODY_8BITMIME;
		else if (strcasecmp(val, "BINARYMIME") == 0)
			return MP_BINARY;
		else
			return MP_BAD;
		mp->body = true;
	} else if (strcasecmp(kw, "SMTPUTF8") == 0) {
		if (mp->utf8 || val != NULL)
			return MP_BAD;
		mp->utf8 = true;
	} else if (strcasecmp(kw, "RET") == 0) {
		if (mp->ret || val == NULL)
			return MP_BAD;
		if (strcasecmp(val, "FULL") == 0)
			mp->ret_val = MTA_RET_FULL;
		else if (strcasecmp(val, "HDRS") == 0)
			mp->ret_val = MTA_RET_HDRS;
		else
			return MP_BAD;
		mp->ret = true;
		mp->ret_raw = val;
	} else if (strcasecmp(kw, "ENVID") == 0) {
		if (mp->envid || val == NULL || strlen(val) > ENVID_MAX ||
		    !mta_smtp_xtext_ok(val, strlen(val)))
			return MP_BAD;
		mp->envid = true;
		mp->envid_raw = val;
	} else if (strcasecmp(kw, "REQUIRETLS") == 0) {
		/* RFC 8689 §2: no value (RTLS-04) */
		if (mp->requiretls || val != NULL)
			return MP_BAD;
		mp->requiretls = true;
	} else if (strcasecmp(kw, "AUTH") == 0) {
		/* AUTH-09: accepted, ignored (we did not authenticate the
		 * client, so it counts as AUTH=<>) */
		if (mp->auth || val == NULL)
			return MP_BAD;
		mp->auth = true;
	} else {
		return MP_UNKNOWN;
	}
	return MP_OK;
}

static enum mta_smtpd_ev cmd_mail(struct mta_smtpd *s, char *arg,
				  struct mta_smtpd_event *ev)
{
	const char *V = "MAIL";
	struct mail_params mp;
	char *p, *path, *kw, *val;
	size_t plen;
	int r;

	if (s->helo_state == HELO_NONE)
		return reject(s, ev, V, "503 5.5.1 Error: send HELO/EHLO first");
	if (s->mail_ok)
		return reject(s, ev, V, "503 5.5.1 Error: nested MAIL command");
	if (s->cfg->auth && !relay_ok(s)) /* RFC 4954 6 */
		return reject(s, ev, V, "530 5.7.0 Authentication required");
	if (arg == NULL || strncasecmp(arg, "FROM:", 5) != 0)
		return reject(s, ev, V, "501 5.5.4 Syntax: MAIL FROM:<address>");
	p = arg + 5;
	while (*p == ' ') /* SRV-13: tolerated */
		p++;
	if (mta_smtp_path_split(p, &path, &plen, &p) != 0)
		return reject(s, ev, V, "501 5.5.4 Syntax: MAIL FROM:<address>");

	memset(&mp, 0, sizeof(mp));
	while ((r = mta_smtp_next_param(&p, &kw, &val)) == 1) {
		switch (mail_param(&mp, kw, val)) {
		case MP_OK:
			break;
		case MP_BAD:
			goto bad_param;
		case MP_BINARY:
			return reject(s, ev, V, "555 5.5.4 Error: "
				      "BODY=BINARYMIME not supported");
		case MP_UNKNOWN:
			return reject(s, ev, V, "555 5.5.4 Error: unsupported "
				      "parameter %.*s", 64, kw);
		}
	}
	if (r < 0)
		goto bad_param;

	if (plen > 0) {
		if (mta_smtp_strip_route(&path, &plen) != 0)
			return reject(s, ev, V, "501 5.5.4 Error: bad sender "
				      "address syntax");
		if (mta_smtp_has_8bit(path, plen) && !mp.utf8)
			return reject(s, ev, V, "550 5.6.7 Error: non-ASCII "
				      "address requires SMTPUTF8");
		if ((mp.utf8 &&
		     !mta_smtp_utf8_ok((const uint8_t *)path, plen)) ||
		    !mta_smtp_mailbox_ok(path, plen, mp.utf8))
			return reject(s, ev, V, "501 5.5.4 Error: bad sender "
				      "address syntax");
	}
	if (mp.size && s->cfg->max_message_size != 0 &&
	    mp.size_val > s->cfg->max_message_size)
		return reject(s, ev, V, "552 5.3.4 Error: message size exceeds "
			      "fixed limit");
	if (mp.requiretls && !s->tls) /* RTLS-03 (choice) */
		return reject(s, ev, V, "530 5.7.10 REQUIRETLS needs a TLS "
			      "session");

	tx_reset(s);
	path[plen] = '\0';
	if (mta_envelope_set_str(&s->env.sender, path) != 0 ||
	    mta_envelope_set_str(&s->env.envid, mp.envid_raw) != 0 ||
	    mta_envelope_set_str(&s->env.ret_raw, mp.ret_raw) != 0) {
		tx_reset(s);
		return reject(s, ev, V, "452 4.3.1 Insufficient system storage");
	}
	s->env.ret = mp.ret_val;
	s->env.body = mp.body_val;
	s->env.smtputf8 = mp.utf8;
	s->env.declared_size = mp.size ? mp.size_val : 0;
	s->env.tlsreq = mp.requiretls ? MTA_TLSREQ_REQUIRETLS : MTA_TLSREQ_NONE;
	s->mail_ok = true;
	reply(s, "250 2.1.0 Ok");
	return MTA_SMTPD_EV_NONE;

bad_param:
	return reject(s, ev, V, "501 5.5.4 Error: bad parameter syntax");
}

static enum mta_smtpd_ev cmd_rcpt(struct mta_smtpd *s, char *arg,
				  struct mta_smtpd_event *ev)
{
	const char *V = "RCPT";
	char *p, *path, *kw, *val, *notify_raw = NULL, *orcpt = NULL;
	unsigned notify = 0, max;
	size_t plen;
	bool postmaster;
	int r;

	if (!s->mail_ok)
		return reject(s, ev, V, "503 5.5.1 Error: need MAIL command");
	if (arg == NULL || strncasecmp(arg, "TO:", 3) != 0)
		return reject(s, ev, V, "501 5.1.3 Syntax: RCPT TO:<address>");
	p = arg + 3;
	while (*p == ' ')
		p++;
	if (mta_smtp_path_split(p, &path, &plen, &p) != 0 || plen == 0)
		return reject(s, ev, V, "501 5.1.3 Syntax: RCPT TO:<address>");
	while ((r = mta_smtp_next_param(&p, &kw, &val)) == 1) {
		if (strcasecmp(kw, "NOTIFY") == 0) {
			if (notify_raw != NULL || val == NULL ||
			    mta_smtp_notify_parse(val, &notify) != 0)
				goto bad_param;
			notify_raw = val;
		} else if (strcasecmp(kw, "ORCPT") == 0) {
			if (orcpt != NULL || val == NULL ||
			    !mta_smtp_orcpt_ok(val))
				goto bad_param;
			orcpt = val;
		} else {
			return reject(s, ev, V, "555 5.5.4 Error: unsupported "
				      "parameter %.*s", 64, kw);
		}
	}
	if (r < 0)
		goto bad_param;

	postmaster = plen == 10 && strncasecmp(path, "Postmaster", 10) == 0;
	if (!postmaster) {
		if (mta_smtp_strip_route(&path, &plen) != 0)
			return reject(s, ev, V, "501 5.1.3 Error: bad recipient "
				      "address syntax");
		if (mta_smtp_has_8bit(path, plen) && !s->env.smtputf8)
			return reject(s, ev, V, "553 5.6.7 Error: non-ASCII "
				      "address requires SMTPUTF8");
		if ((s->env.smtputf8 &&
		     !mta_smtp_utf8_ok((const uint8_t *)path, plen)) ||
		    !mta_smtp_mailbox_ok(path, plen, s->env.smtputf8))
			return reject(s, ev, V, "501 5.1.3 Error: bad recipient "
				      "address syntax");
	}
	path[plen] = '\0';
	if (!postmaster && !relay_ok(s))
		return reject(s, ev, V, "554 5.7.1 <%.*s>: Relay access denied",
			      ECHO_MAX, path);
	max = s->cfg->max_recipients ? s->cfg->max_recipients
				     : DEFAULT_MAX_RCPT;
	if (s->env.nrcpt >= max)
		return reject(s, ev, V, "452 4.5.3 Error: too many recipients");
	if (postmaster && s->cfg->postmaster != NULL)
		path = (char *)s->cfg->postmaster; /* SRV-18: routed there */
	else if (postmaster)
		path = (char *)"Postmaster";
	if (!relay_ok(s)) {
		/* no DSN may ever go to a sender a non-relay client claims */
		orcpt = notify_raw = NULL;
		notify = 0;
	}
	if (mta_envelope_add_rcpt(&s->env, path, orcpt, notify_raw, notify) ==
	    NULL)
		return reject(s, ev, V, "452 4.3.1 Insufficient system storage");
	reply(s, "250 2.1.5 Ok");
	return MTA_SMTPD_EV_NONE;

bad_param:
	return reject(s, ev, V, "501 5.5.4 Error: bad parameter syntax");
}

static enum mta_smtpd_ev cmd_data(struct mta_smtpd *s, char *arg,
				  struct mta_smtpd_event *ev)
{
	if (!arg_empty(arg))
		return reject(s, ev, "DATA", "501 5.5.4 Syntax: DATA");
	if (!s->mail_ok || s->env.nrcpt == 0)
		return reject(s, ev, "DATA",
			      "503 5.5.1 Error: need RCPT command");
	if (s->bdat_open)
		return reject(s, ev, "DATA", "503 5.5.1 Error: DATA after BDAT "
			      "in the same transaction");
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
	body_reset(s);
	set_state(s, MODE_DATA);
	return MTA_SMTPD_EV_DATA_START;
}

/* Called when a BDAT chunk has been read completely. */
static enum mta_smtpd_ev bdat_chunk_done(struct mta_smtpd *s,
					 struct mta_smtpd_event *ev)
{
	set_state(s, MODE_CMD);
	if (s->bdat_discard) {
		s->bdat_discard = false;
		return reject(s, ev, "BDAT",
			      "503 5.5.1 Error: no valid transaction for BDAT");
	}
	if (s->bdat_last)
		return body_end(s, ev, "BDAT");
	reply(s, "250 2.0.0 %" PRIu64 " octets received", s->bdat_size);
	return MTA_SMTPD_EV_NONE;
}

static enum mta_smtpd_ev cmd_bdat(struct mta_smtpd *s, char *arg,
				  struct mta_smtpd_event *ev)
{
	uint64_t n = 0;
	char *p = arg;
	bool last = false, first;

	if (arg_empty(arg) || !is_digit((uint8_t)*p))
		return reject(s, ev, "BDAT",
			      "501 5.5.4 Syntax: BDAT size [LAST]");
	for (; is_digit((uint8_t)*p); p++) {
		unsigned d = (unsigned)(*p - '0');
		if (n > (UINT64_MAX - d) / 10)
			return reject(s, ev, "BDAT",
				      "501 5.5.4 Syntax: BDAT size [LAST]");
		n = n * 10 + d;
	}
	if (*p == ' ') {
		while (*p == ' ')
			p++;
		if (strcasecmp(p, "LAST") != 0)
			return reject(s, ev, "BDAT",
				      "501 5.5.4 Syntax: BDAT size [LAST]");
		last = true;
	} else if (*p != '\0') {
		return reject(s, ev, "BDAT",
			      "501 5.5.4 Syntax: BDAT size [LAST]");
	}
	first = !s->bdat_open;
	s->bdat_size = n;
	s->bdat_left = n;
	s->bdat_last = last;
	set_state(s, MODE_BDAT);
	/* CHK-04: the chunk is consumed even when it cannot be accepted */
	s->bdat_discard = !s->mail_ok || s->env.nrcpt == 0;
	if (s->bdat_discard) {
		if (n == 0)
			return bdat_chunk_done(s, ev);
		return MTA_SMTPD_EV_NONE;
	}
	if (first) {
		body_reset(s);
		s->bdat_open = true;
	}
	if (n == 0) {
		if (first && last) {
			/* DATA_START now, MESSAGE at the next call: keep the
			 * command's LF unconsumed so that call happens */
			s->hold = true;
			return MTA_SMTPD_EV_DATA_START;
		}
		enum mta_smtpd_ev e = bdat_chunk_done(s, ev);
		if (first)
			return MTA_SMTPD_EV_DATA_START; /* 250 queued */
		return e;
	}
	return first ? MTA_SMTPD_EV_DATA_START : MTA_SMTPD_EV_NONE;
}

static enum mta_smtpd_ev cmd_starttls(struct mta_smtpd *s, char *arg,
				      struct mta_smtpd_event *ev)
{
	const char *V = "STARTTLS";

	if (!s->cfg->starttls)
		return reject(s, ev, V,
			      "502 5.5.1 Error: command not implemented");
	if (!arg_empty(arg))
		return reject(s, ev, V, "501 5.5.4 Syntax: STARTTLS");
	if (s->tls)
		return reject(s, ev, V, "503 5.5.1 Error: TLS already active");
	if (s->mail_ok)
		return reject(s, ev, V, "503 5.5.1 Error: MAIL transaction in "
			      "progress");
	reply(s, "220 2.0.0 Ready to start TLS");
	set_state(s, MODE_TLS);
	return MTA_SMTPD_EV_STARTTLS;
}

/* ---- AUTH (RFC 4954; PLAIN RFC 4616, LOGIN) --------------------------- */

/* s->auth_step: which response line the engine waits for */
enum { AUTH_NONE = 0, AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };

static void auth_wipe(struct mta_smtpd *s)
{
	explicit_bzero(s->auth_user, sizeof(s->auth_user));
	explicit_bzero(s->auth_pass, sizeof(s->auth_pass));
	explicit_bzero(s->line, sizeof(s->line)); /* the base64 response */
	s->auth_step = AUTH_NONE;
}

/* The credentials are complete: the driver verifies them. */
static enum mta_smtpd_ev auth_event(struct mta_smtpd *s,
				    struct mta_smtpd_event *ev)
{
	explicit_bzero(s->line, sizeof(s->line));
	s->auth_step = AUTH_NONE;
	set_state(s, MODE_AUTH);
	ev->user = s->auth_user;
	ev->pass = s->auth_pass;
	ev->verb = "AUTH";
	return MTA_SMTPD_EV_AUTH;
}

static enum mta_smtpd_ev auth_fail(struct mta_smtpd *s,
				   struct mta_smtpd_event *ev, int kind)
{
	auth_wipe(s);
	if (kind == 0)
		return reject(s, ev, "AUTH",
			      "501 5.5.2 Error: cannot decode response");
	if (kind == 1)
		return reject(s, ev, "AUTH",
			      "501 5.0.0 Error: authentication cancelled");
	return reject(s, ev, "AUTH",
		      "535 5.7.8 Error: authentication credentials invalid");
}

/* Decodes one base64 response into a NUL-free string dst (cap octets +
 * NUL); false on bad syntax, a NUL or too long. */
static bool b64_string(const char *in, char *dst, size_t cap)
{
	size_t n;

	if (mta_smtp_b64_decode(in, strlen(in), (uint8_t *)dst, cap, &n) != 0)
		return false;
	dst[n] = '\0';
	return memchr(dst, '\0', n) == NULL && n > 0;
}

/* RFC 4616: [authzid] NUL authcid NUL passwd; the decoded bytes go
 * through auth_pass as scratch. */
static enum mta_smtpd_ev auth_plain(struct mta_smtpd *s, const char *resp,
				    struct mta_smtpd_event *ev)
{
	uint8_t buf[3 * MTA_SMTPD_AUTH_MAX + 3];
	const uint8_t *z, *c, *p, *end;
	size_t n;

	if (mta_smtp_b64_decode(resp, strlen(resp), buf, sizeof(buf), &n) != 0)
		return auth_fail(s, ev, 0);
	end = buf + n;
	z = buf;
	c = memchr(z, '\0', n);
	p = c != NULL ? memchr(c + 1, '\0', (size_t)(end - c - 1)) : NULL;
	if (c == NULL || p == NULL ||
	    memchr(p + 1, '\0', (size_t)(end - p - 1)) != NULL ||
	    p - c - 1 == 0 || p - c - 1 > MTA_SMTPD_AUTH_MAX ||
	    end - p - 1 > MTA_SMTPD_AUTH_MAX) {
		explicit_bzero(buf, sizeof(buf));
		return auth_fail(s, ev, 0);
	}
	memcpy(s->auth_user, c + 1, (size_t)(p - c - 1));
	s->auth_user[p - c - 1] = '\0';
	memcpy(s->auth_pass, p + 1, (size_t)(end - p - 1));
	s->auth_pass[end - p - 1] = '\0';
	/* an authorization identity other than our own: not supported */
	if (c != z && ((size_t)(c - z) != strlen(s->auth_user) ||
		       memcmp(z, s->auth_user, (size_t)(c - z)) != 0)) {
		explicit_bzero(buf, sizeof(buf));
		return auth_fail(s, ev, 2);
	}
	explicit_bzero(buf, sizeof(buf));
	return auth_event(s, ev);
}

/* A response line to a 334 challenge (NUL-terminated in s->line). */
static enum mta_smtpd_ev auth_line(struct mta_smtpd *s, bool bad,
				   struct mta_smtpd_event *ev)
{
	const char *resp = s->line;

	if (bad)
		return auth_fail(s, ev, 0);
	if (strcmp(resp, "*") == 0)
		return auth_fail(s, ev, 1);
	switch (s->auth_step) {
	case AUTH_PLAIN:
		return auth_plain(s, resp, ev);
	case AUTH_LOGIN_USER:
		if (!b64_string(resp, s->auth_user, MTA_SMTPD_AUTH_MAX))
			return auth_fail(s, ev, 0);
		explicit_bzero(s->line, sizeof(s->line));
		s->auth_step = AUTH_LOGIN_PASS;
		reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
		return MTA_SMTPD_EV_NONE;
	default:
		if (!b64_string(resp, s->auth_pass, MTA_SMTPD_AUTH_MAX))
			return auth_fail(s, ev, 0);
		return auth_event(s, ev);
	}
}

static enum mta_smtpd_ev cmd_auth(struct mta_smtpd *s, char *arg,
				  struct mta_smtpd_event *ev)
{
	const char *V = "AUTH";
	char *mech = arg, *ir = NULL, *sp;

	if (!s->cfg->auth)
		return reject(s, ev, V,
			      "502 5.5.1 Error: command not implemented");
	if (!s->tls) /* RFC 3207 4, RFC 4954 4: no credentials in clear */
		return reject(s, ev, V, "530 5.7.0 Must issue a STARTTLS "
			      "command first");
	if (s->helo_state != HELO_EHLO)
		return reject(s, ev, V, "503 5.5.1 Error: send EHLO first");
	if (s->authed)
		return reject(s, ev, V, "503 5.5.1 Error: already "
			      "authenticated");
	if (s->mail_ok)
		return reject(s, ev, V, "503 5.5.1 Error: MAIL transaction in "
			      "progress");
	if (arg_empty(mech))
		return reject(s, ev, V, "501 5.5.4 Syntax: AUTH mechanism "
			      "[initial-response]");
	sp = strchr(mech, ' ');
	if (sp != NULL) {
		*sp = '\0';
		ir = sp + 1;
		if (arg_empty(ir) || strchr(ir, ' ') != NULL) {
			auth_wipe(s);
			return reject(s, ev, V, "501 5.5.4 Syntax: AUTH "
				      "mechanism [initial-response]");
		}
	}
	if (strcasecmp(mech, "PLAIN") == 0) {
		if (ir != NULL)
			return auth_plain(s, ir, ev);
		s->auth_step = AUTH_PLAIN;
		reply(s, "334 ");
		return MTA_SMTPD_EV_NONE;
	}
	if (strcasecmp(mech, "LOGIN") == 0) {
		if (ir != NULL) {
			if (!b64_string(ir, s->auth_user, MTA_SMTPD_AUTH_MAX))
				return auth_fail(s, ev, 0);
			explicit_bzero(s->line, sizeof(s->line));
			s->auth_step = AUTH_LOGIN_PASS;
			reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
			return MTA_SMTPD_EV_NONE;
		}
		s->auth_step = AUTH_LOGIN_USER;
		reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
		return MTA_SMTPD_EV_NONE;
	}
	auth_wipe(s);
	return reject(s, ev, V, "504 5.5.4 Error: unrecognized "
		      "authentication type");
}

/* Dispatches one complete command line (NUL-terminated, no CRLF). */
static enum mta_smtpd_ev command(struct mta_smtpd *s, char *line,
				 struct mta_smtpd_event *ev)
{
	size_t n = strlen(line);
	char *arg = NULL, *sp;
	int code;

	while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t'))
		line[--n] = '\0';
	sp = strchr(line, ' ');
	if (sp != NULL) {
		*sp = '\0';
		arg = sp + 1;
	}
	/* RFC 5321 3.1: after a 554 greeting, 503 to all but QUIT */
	if (s->cfg->refused && strcasecmp(line, "QUIT") != 0)
		return reject(s, ev, "REFUSED", "503 5.7.1 Error: this server "
			      "does not serve your address; send QUIT");
	if (strcasecmp(line, "EHLO") == 0)
		return cmd_helo(s, arg, ev, true);
	if (strcasecmp(line, "HELO") == 0)
		return cmd_helo(s, arg, ev, false);
	if (strcasecmp(line, "MAIL") == 0)
		return cmd_mail(s, arg, ev);
	if (strcasecmp(line, "RCPT") == 0)
		return cmd_rcpt(s, arg, ev);
	if (strcasecmp(line, "DATA") == 0)
		return cmd_data(s, arg, ev);
	if (strcasecmp(line, "BDAT") == 0)
		return cmd_bdat(s, arg, ev);
	if (strcasecmp(line, "RSET") == 0) {
		if (!arg_empty(arg))
			return reject(s, ev, "RSET", "501 5.5.4 Syntax: RSET");
		code = reply(s, "250 2.0.0 Ok");
		return ok_or_abort(s, ev, code, "RSET");
	}
	if (strcasecmp(line, "NOOP") == 0) {
		/* RFC 5321 4.1.1.9: a NOOP argument is ignored */
		reply(s, "250 2.0.0 Ok");
		return MTA_SMTPD_EV_NONE;
	}
	if (strcasecmp(line, "QUIT") == 0) {
		if (!arg_empty(arg))
			return reject(s, ev, "QUIT", "501 5.5.4 Syntax: QUIT");
		code = reply(s, "221 2.0.0 Bye");
		set_state(s, MODE_CLOSED);
		return fill_ev(s, ev, MTA_SMTPD_EV_CLOSE, code, "QUIT");
	}
	if (strcasecmp(line, "VRFY") == 0) {
		if (arg_empty(arg))
			return reject(s, ev, "VRFY", "501 5.5.4 Syntax: VRFY "
				      "address");
		reply(s, "252 2.5.2 Cannot VRFY user, but will accept message "
			 "and attempt delivery");
		return MTA_SMTPD_EV_NONE;
	}
	if (strcasecmp(line, "EXPN") == 0)
		return reject(s, ev, "EXPN",
			      "502 5.5.1 Error: command not implemented");
	if (strcasecmp(line, "HELP") == 0) {
		reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT "
			 "RSET NOOP QUIT VRFY HELP%s%s",
		      s->cfg->starttls && !s->tls ? " STARTTLS" : "",
		      s->cfg->auth ? " AUTH" : "");
		return MTA_SMTPD_EV_NONE;
	}
	if (strcasecmp(line, "STARTTLS") == 0)
		return cmd_starttls(s, arg, ev);
	if (strcasecmp(line, "AUTH") == 0)
		return cmd_auth(s, arg, ev);
	return reject(s, ev, "UNKNOWN",
		      "500 5.5.2 Error: command not recognized");
}

/* ---- input modes ----------------------------------------------------- */

static void line_add(struct mta_smtpd *s, uint8_t c)
{
	if (s->l_len < MTA_SMTPD_LINE_MAX - 2)
		s->line[s->l_len++] = (char)c;
	else
		s->l_long = true;
}

static void line_reset(struct mta_smtpd *s)
{
	s->l_len = 0;
	s->l_cr = false;
	s->l_bad = false;
	s->l_long = false;
}

/* A command line ended with CRLF. */
static enum mta_smtpd_ev line_done(struct mta_smtpd *s,
				   struct mta_smtpd_event *ev)
{
	bool bad = s->l_bad, toolong = s->l_long;

	s->progress++;
	s->line[s->l_len] = '\0';
	line_reset(s);
	if (s->auth_step != AUTH_NONE)
		return auth_line(s, toolong || bad, ev);
	if (toolong)
		return reject(s, ev, "UNKNOWN",
			      "500 5.5.2 Error: line too long");
	if (bad) /* SMUG-06: nothing of this line runs */
		return reject(s, ev, "UNKNOWN", "500 5.5.2 Error: bare CR or "
			      "LF or NUL in command line");
	return command(s, s->line, ev);
}

static enum mta_smtpd_ev feed_cmd(struct mta_smtpd *s, const uint8_t *in,
				  size_t len, size_t *i,
				  struct mta_smtpd_event *ev)
{
	while (*i < len) {
		uint8_t c = in[(*i)++];
		enum mta_smtpd_ev e;

		if (s->l_cr) {
			s->l_cr = false;
			if (c == '\n') {
				e = line_done(s, ev);
				if (s->hold)
					(*i)--; /* see cmd_bdat() */
				if (e != MTA_SMTPD_EV_NONE ||
				    s->mode != MODE_CMD ||
				    out_free(s) < OUT_RESERVE)
					return e;
				continue;
			}
			s->l_bad = true; /* bare CR */
			line_add(s, '\r');
		}
		if (c == '\r') {
			s->l_cr = true;
			continue;
		}
		if (c == '\n' || c == '\0')
			s->l_bad = true;
		line_add(s, c);
	}
	return MTA_SMTPD_EV_NONE;
}

/* The end of a DATA body (the "." line): back to commands, then MESSAGE
 * or ABORT as body_end() decides (smtp_server_body.c calls this). */
enum mta_smtpd_ev smtpd_data_end(struct mta_smtpd *s,
				 struct mta_smtpd_event *ev)
{
	set_state(s, MODE_CMD);
	return body_end(s, ev, "DATA");
}

static enum mta_smtpd_ev feed_bdat(struct mta_smtpd *s, const uint8_t *in,
				   size_t len, size_t *i,
				   struct mta_smtpd_event *ev)
{
	size_t n = len - *i;
	size_t start = *i;

	if (n > s->bdat_left)
		n = (size_t)s->bdat_left;
	s->bdat_left -= n;
	*i += n;
	if (s->bdat_discard) {
		if (s->bdat_left == 0)
			return bdat_chunk_done(s, ev);
		return MTA_SMTPD_EV_NONE;
	}
	smtpd_chk_bytes(s, in + start, n);
	if (n == 0 || s->b_viol != V_NONE) {
		if (s->bdat_left > 0)
			return MTA_SMTPD_EV_NONE;
		return bdat_chunk_done(s, ev);
	}
	ev->data = in + start;
	ev->len = n;
	if (s->bdat_left > 0)
		return MTA_SMTPD_EV_BODY;
	if (s->bdat_last) {
		/* BODY now, MESSAGE at the next call: the chunk's last byte
		 * stays unconsumed so that the next call happens */
		(*i)--;
		s->hold = true;
	} else {
		(void)bdat_chunk_done(s, ev); /* queues the 250 */
	}
	return MTA_SMTPD_EV_BODY;
}

/* ---- public ---------------------------------------------------------- */

void mta_smtpd_init(struct mta_smtpd *s, const struct mta_smtpd_config *cfg)
{
	memset(s, 0, sizeof(*s));
	s->cfg = cfg;
	mta_envelope_init(&s->env);
	set_state(s, MODE_CMD);
	tx_reset(s);
}

void mta_smtpd_free(struct mta_smtpd *s)
{
	auth_wipe(s);
	mta_envelope_free(&s->env);
}

void mta_smtpd_greet(struct mta_smtpd *s)
{
	if (s->cfg->refused)
		reply(s, "554 5.7.1 %.*s Relay access denied for [%.*s]: this "
			 "server relays only for its own networks", HOST_MAX,
		      host(s), 64,
		      s->cfg->client_addr != NULL ? s->cfg->client_addr : "");
	else
		reply(s, "220 %.*s ESMTP mtad", HOST_MAX, host(s));
}

enum mta_smtpd_ev mta_smtpd_feed(struct mta_smtpd *s, const uint8_t *in,
				 size_t len, size_t *consumed,
				 struct mta_smtpd_event *ev)
{
	enum mta_smtpd_ev e = MTA_SMTPD_EV_NONE;
	size_t i = 0;

	memset(ev, 0, sizeof(*ev));
	*consumed = 0;
	if (s->mode == MODE_CLOSED) {
		*consumed = len;
		return MTA_SMTPD_EV_CLOSE;
	}
	if (s->mode == MODE_TLS) {
		/* the driver should be handshaking; plaintext is dropped */
		*consumed = len;
		return MTA_SMTPD_EV_NONE;
	}
	while (i < len && e == MTA_SMTPD_EV_NONE) {
		if (out_free(s) < OUT_RESERVE || s->mode == MODE_WAIT ||
		    s->mode == MODE_AUTH)
			break; /* blocked: drain output / message_done() */
		if (s->hold) {
			/* the byte kept back by cmd_bdat()/feed_bdat() */
			s->hold = false;
			i++;
			set_state(s, MODE_CMD);
			e = bdat_chunk_done(s, ev);
			break;
		}
		switch (s->mode) {
		case MODE_CMD:
			e = feed_cmd(s, in, len, &i, ev);
			break;
		case MODE_DATA:
			e = smtpd_feed_data(s, in, len, &i, ev);
			break;
		case MODE_BDAT:
			e = feed_bdat(s, in, len, &i, ev);
			break;
		default:
			break;
		}
		if (e == MTA_SMTPD_EV_STARTTLS) {
			ev->len = len - i; /* TLS-04 */
			i = len;
		} else if (e == MTA_SMTPD_EV_CLOSE) {
			i = len;
		}
	}
	*consumed = i;
	return e;
}

size_t mta_smtpd_output(const struct mta_smtpd *s, const uint8_t **p)
{
	*p = s->out + s->out_off;
	return s->out_len;
}

void mta_smtpd_output_consume(struct mta_smtpd *s, size_t n)
{
	assert(n <= s->out_len);
	if (n > s->out_len)
		n = s->out_len;
	s->out_off += n;
	s->out_len -= n;
	if (s->out_len == 0)
		s->out_off = 0;
}

void mta_smtpd_take_envelope(struct mta_smtpd *s, struct mta_envelope *out)
{
	if (s->b_tpend)
		smtpd_tlsr_final(s); /* the header section ended with the field */
	/* RFC 8689 §3, §4.1: one "TLS-Required: No" from a client allowed
	 * to relay lowers the message to opportunistic TLS; ignored with
	 * the REQUIRETLS option (RTLS-07) and when the field is repeated
	 * (RTLS-08: never relax on an ambiguous message) */
	if (s->env.tlsreq == MTA_TLSREQ_NONE && s->cfg->relay_allowed &&
	    s->b_tcount == 1 && s->b_tno)
		s->env.tlsreq = MTA_TLSREQ_OPTIONAL;
	*out = s->env;
	mta_envelope_init(&s->env);
	if (!relay_ok(s)) {
		/* mail from outside relay_networks (only to Postmaster) is
		 * relayed with the null reverse-path: no DSN, no bounce from
		 * further on, ever reaches the sender it claims
		 * (docs/security.md, backscatter) */
		(void)mta_envelope_set_str(&out->sender, "");
		free(out->envid);
		free(out->ret_raw);
		out->envid = out->ret_raw = NULL;
		out->ret = MTA_RET_NONE;
	}
	out->size = s->b_size;
	(void)mta_envelope_set_str(&out->helo, s->helo);
	if (s->cfg->client_addr != NULL)
		(void)mta_envelope_set_str(&out->client_addr,
					   s->cfg->client_addr);
	if (s->tls && s->tls_desc[0] != '\0')
		(void)mta_envelope_set_str(&out->tls, s->tls_desc);
}

void mta_smtpd_message_done(struct mta_smtpd *s, int result, const char *qid)
{
	if (s->mode != MODE_WAIT)
		return;
	s->progress++;
	if (result == 0)
		reply(s, "250 2.0.0 Ok: queued as %.*s", 64,
		      qid != NULL ? qid : "");
	else if (result == MTA_EMAPFULL || result == -ENOSPC ||
		 result == -EDQUOT)
		reply(s, "452 4.3.1 Insufficient system storage");
	else
		reply(s, "451 4.3.0 Local error in processing");
	tx_reset(s);
	set_state(s, MODE_CMD);
}

void mta_smtpd_tls_started(struct mta_smtpd *s, const char *tls_desc)
{
	size_t n = 0;

	tx_reset(s);
	line_reset(s);
	auth_wipe(s);
	s->helo_state = HELO_NONE;
	s->helo[0] = '\0';
	s->tls = true;
	if (tls_desc != NULL) {
		for (; tls_desc[n] != '\0' && n < sizeof(s->tls_desc) - 1; n++) {
			char c = tls_desc[n];
			/* it goes into a Received comment */
			s->tls_desc[n] = (c < 32 || c > 126 || c == '(' ||
					  c == ')' || c == '\\')
						 ? '?'
						 : c;
		}
	}
	s->tls_desc[n] = '\0';
	if (s->mode != MODE_CLOSED)
		set_state(s, MODE_CMD);
}

void mta_smtpd_timeout(struct mta_smtpd *s)
{
	if (s->mode == MODE_CLOSED)
		return;
	reply(s, "421 4.4.2 %.*s Error: timeout exceeded", HOST_MAX, host(s));
	set_state(s, MODE_CLOSED);
}

void mta_smtpd_shutdown(struct mta_smtpd *s)
{
	if (s->mode == MODE_CLOSED)
		return;
	reply(s, "421 4.3.2 %.*s Service shutting down", HOST_MAX, host(s));
	set_state(s, MODE_CLOSED);
}

bool mta_smtpd_in_message(const struct mta_smtpd *s)
{
	return s->mode == MODE_DATA || s->mode == MODE_BDAT ||
	       (s->mode == MODE_CMD && s->bdat_open);
}

uint32_t mta_smtpd_progress(const struct mta_smtpd *s)
{
	return s->progress;
}

const char *mta_smtpd_sender(const struct mta_smtpd *s)
{
	return s->env.sender;
}

bool mta_smtpd_closed(const struct mta_smtpd *s)
{
	return s->mode == MODE_CLOSED;
}

void mta_smtpd_auth_done(struct mta_smtpd *s,
			 enum mta_smtpd_auth_verdict verdict)
{
	if (s->mode != MODE_AUTH)
		return;
	auth_wipe(s);
	s->progress++;
	set_state(s, MODE_CMD);
	switch (verdict) {
	case MTA_SMTPD_AUTH_OK:
		s->authed = true;
		reply(s, "235 2.7.0 Authentication successful");
		break;
	case MTA_SMTPD_AUTH_FAIL:
		reply(s, "535 5.7.8 Error: authentication credentials invalid");
		if (++s->errors >= MAX_ERRORS) {
			reply(s, "421 4.7.0 %.*s Too many errors", HOST_MAX,
			      host(s));
			set_state(s, MODE_CLOSED);
		}
		break;
	case MTA_SMTPD_AUTH_TEMP:
		reply(s, "454 4.7.0 Temporary authentication failure");
		break;
	case MTA_SMTPD_AUTH_LIMIT:
		reply(s, "421 4.7.0 %.*s Error: too many failed "
			 "authentications; try again later", HOST_MAX, host(s));
		set_state(s, MODE_CLOSED);
		break;
	}
}

bool mta_smtpd_authenticated(const struct mta_smtpd *s)
{
	return s->authed;
}

/* ---- Received -------------------------------------------------------- */

struct wbuf {
	char *p;
	size_t len, cap;
	bool over;
};

static void wput(struct wbuf *w, const char *p, size_t n)
{
	if (w->over || n >= w->cap - w->len) {
		w->over = true;
		return;
	}
	memcpy(w->p + w->len, p, n);
	w->len += n;
	w->p[w->len] = '\0';
}

static void wputs(struct wbuf *w, const char *p)
{
	wput(w, p, strlen(p));
}

int mta_smtpd_received(const struct mta_smtpd *s, const char *qid, time_t now,
		       char *buf, size_t len)
{
	static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed",
					 "Thu", "Fri", "Sat"};
	static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr",
					 "May", "Jun", "Jul", "Aug",
					 "Sep", "Oct", "Nov", "Dec"};
	struct wbuf w = {buf, 0, len, len == 0};
	char helo[HOST_MAX + 1], tmp[96];
	const char *proto;
	struct tm tm;
	size_t n;

	for (n = 0; s->helo[n] != '\0' && n < HOST_MAX; n++) {
		char c = s->helo[n];
		helo[n] = (is_alpha((uint8_t)c) || is_digit((uint8_t)c) ||
			   (c != '\0' && strchr(".:_[]-", c) != NULL))
				  ? c
				  : '?';
	}
	helo[n] = '\0';
	if (s->env.smtputf8)
		proto = s->tls ? "UTF8SMTPS" : "UTF8SMTP";
	else if (s->helo_state != HELO_EHLO)
		proto = "SMTP";
	else
		proto = s->tls ? "ESMTPS" : "ESMTP";
	if (gmtime_r(&now, &tm) == NULL)
		return MTA_ETOOBIG;

	wputs(&w, "Received: from ");
	wputs(&w, n > 0 ? helo : "unknown");
	wputs(&w, " ([");
	wputs(&w, s->cfg->client_addr != NULL ? s->cfg->client_addr
					      : "unknown");
	wputs(&w, "])\r\n\tby ");
	wput(&w, host(s), strnlen(host(s), HOST_MAX));
	wputs(&w, " (mtad) with ");
	wputs(&w, proto);
	if (s->tls) {
		wputs(&w, " (");
		wputs(&w, s->tls_desc);
		wputs(&w, ")");
	}
	if (qid != NULL) {
		wputs(&w, "\r\n\tid ");
		wput(&w, qid, strnlen(qid, 64));
	}
	if (s->env.nrcpt == 1) {
		wputs(&w, "\r\n\tfor <");
		wputs(&w, s->env.rcpts[0].addr);
		wputs(&w, ">");
	}
	snprintf(tmp, sizeof(tmp),
		 ";\r\n\t%s, %02d %s %04d %02d:%02d:%02d +0000\r\n",
		 wd[tm.tm_wday % 7], tm.tm_mday, mo[tm.tm_mon % 12],
		 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	wputs(&w, tmp);
	if (w.over)
		return MTA_ETOOBIG;
	return (int)w.len;
}
