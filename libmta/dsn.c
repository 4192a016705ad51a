/*
 * dsn.c - delivery status notifications; see dsn.h.
 *
 * The message is built as four pieces (top header, part 1, part 2, part 3)
 * in sticky-error buffers, then the boundary is chosen so that no piece
 * contains it, then the pieces are appended to the caller's buffer.
 */
#include "dsn.h"

#include "err.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define FOLD_AT 78	  /* preferred header line length */
#define HARD_MAX 998	  /* RFC 5322 §2.1.1, octets before CRLF */
#define WRAP_AT 72	  /* human-readable text */
#define VALUE_MAX 2000	  /* cap on one untrusted field value */
#define UNIQUE_MAX 48	  /* keeps the boundary <= 70 (RFC 2046 §5.1.1) */
#define HOST_MAX 255
#define READ_CHUNK 8192
#define MIN_HEADERS_CAP 1024

/* A growable buffer with a sticky error: appends after a failure are
 * no-ops, the error is checked once at the end. */
struct wbuf {
	struct mta_buf b;
	int err;
};

static void put(struct wbuf *w, const void *p, size_t n)
{
	if (w->err == 0)
		w->err = mta_buf_append(&w->b, p, n);
}

static void puts_(struct wbuf *w, const char *s)
{
	put(w, s, strlen(s));
}

static void putc_(struct wbuf *w, char c)
{
	put(w, &c, 1);
}

/* Terminates the buffer as a C string without counting the NUL. */
static const char *wstr(struct wbuf *w)
{
	put(w, "", 1);
	if (w->err != 0)
		return "";
	w->b.len--;
	return (const char *)w->b.data;
}

static void wfree(struct wbuf *w)
{
	mta_buf_free(&w->b);
	w->err = 0;
}

/* ---- validation and cleaning of untrusted text ---------------------- */

static bool is_host_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
	       c == ':' || c == '[' || c == ']';
}

static bool valid_host(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;
	if (n == 0 || n > HOST_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_host_char((unsigned char)s[i]))
			return false;
	return true;
}

static bool valid_unique(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;
	if (n == 0 || n > UNIQUE_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '-' ||
		      c == '_'))
			return false;
	}
	return true;
}

/*
 * Appends n bytes of s as one line of 7-bit text: CR/LF runs become one
 * space (a multi-line reply stays one unfolded value), other controls a
 * space, 8-bit octets "?"; leading and trailing spaces are dropped and the
 * result is cut at VALUE_MAX octets.
 */
static void put_clean(struct wbuf *w, const char *s, size_t n)
{
	size_t start = w->b.len, out = 0;
	bool in_eol = false;

	for (size_t i = 0; i < n && out < VALUE_MAX; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r' || c == '\n') {
			if (!in_eol)
				putc_(w, ' ');
			in_eol = true;
			out++;
			continue;
		}
		in_eol = false;
		if (c < 0x20 || c == 0x7f)
			c = ' ';
		else if (c >= 0x80)
			c = '?';
		putc_(w, (char)c);
		out++;
	}
	if (w->err != 0)
		return;
	/* trim: trailing, then leading spaces of what we wrote */
	while (w->b.len > start && w->b.data[w->b.len - 1] == ' ')
		w->b.len--;
	size_t lead = 0;
	while (start + lead < w->b.len && w->b.data[start + lead] == ' ')
		lead++;
	if (lead > 0) {
		memmove(w->b.data + start, w->b.data + start + lead,
			w->b.len - start - lead);
		w->b.len -= lead;
	}
}

static void put_clean_str(struct wbuf *w, const char *s)
{
	if (s != NULL)
		put_clean(w, s, strlen(s));
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* RFC 3461 §4: decodes xtext s[0..n) into w; -1 (w unchanged) if invalid. */
static int xtext_decode(struct wbuf *w, const char *s, size_t n)
{
	size_t start = w->b.len;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '+') {
			int hi, lo;
			if (n - i < 3)
				goto bad;
			hi = hexval((unsigned char)s[i + 1]);
			lo = hexval((unsigned char)s[i + 2]);
			if (hi < 0 || lo < 0)
				goto bad;
			putc_(w, (char)(hi << 4 | lo));
			i += 2;
		} else if (c < 0x21 || c > 0x7e || c == '=') {
			goto bad;
		} else {
			putc_(w, (char)c);
		}
	}
	return 0;
bad:
	if (w->err == 0)
		w->b.len = start;
	return -1;
}

/* Next code point of s[*i..n), or -1 for an invalid sequence (one octet
 * consumed). */
static long utf8_next(const unsigned char *s, size_t n, size_t *i)
{
	unsigned char c = s[*i];
	size_t len;
	long cp, min;

	if (c < 0x80) {
		(*i)++;
		return c;
	} else if (c >= 0xc2 && c <= 0xdf) {
		len = 2, cp = c & 0x1f, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3, cp = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, cp = c & 0x07, min = 0x10000;
	} else {
		(*i)++;
		return -1;
	}
	if (n - *i < len) {
		(*i)++;
		return -1;
	}
	for (size_t k = 1; k < len; k++) {
		unsigned char d = s[*i + k];
		if ((d & 0xc0) != 0x80) {
			(*i)++;
			return -1;
		}
		cp = cp << 6 | (d & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
		(*i)++;
		return -1;
	}
	*i += len;
	return cp;
}

static bool printable_ascii(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
	return true;
}

static bool valid_utf8_text(const char *s)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t n = strlen(s), i = 0;
	while (i < n) {
		long cp = utf8_next(u, n, &i);
		if (cp < 0x20 || cp == 0x7f)
			return false;
	}
	return true;
}

/*
 * An envelope address as "type; address" for part 2 and the bare form
 * for part 1: printable ASCII as given (rfc822, RFC 3464 §2.3.2: exactly
 * as received); anything else as RFC 6533 §3 utf-8-addr-xtext, which is
 * 7-bit and keeps every code point (invalid octets become U+FFFD).
 */
static void put_addr(struct wbuf *w, const char *addr, bool with_type)
{
	if (printable_ascii(addr) && strlen(addr) <= VALUE_MAX) {
		if (with_type)
			puts_(w, "rfc822; ");
		puts_(w, addr);
		return;
	}
	if (with_type)
		puts_(w, "utf-8; ");
	const unsigned char *u = (const unsigned char *)addr;
	size_t n = strlen(addr), i = 0, start = w->b.len;
	while (i < n && w->b.len - start < VALUE_MAX) {
		long cp = utf8_next(u, n, &i);
		char tmp[32];
		if (cp < 0)
			cp = 0xfffd;
		if (cp > 0x20 && cp < 0x7f && cp != '+' && cp != '=' &&
		    cp != '\\') {
			putc_(w, (char)cp);
			continue;
		}
		snprintf(tmp, sizeof(tmp), "\\x{%02lX}", (unsigned long)cp);
		puts_(w, tmp);
	}
}

/* ---- output formatting --------------------------------------------- */

/*
 * One header field, "name: value" with value already clean (no CR, LF,
 * controls; no leading or trailing space).  Folded before a space when a
 * line would pass FOLD_AT; a run without spaces is broken with CRLF SP
 * before it reaches HARD_MAX, so no line is ever longer.
 */
static void put_field(struct wbuf *w, const char *name, const char *v)
{
	size_t n = strlen(v), col, i = 0;

	puts_(w, name);
	puts_(w, ": ");
	col = strlen(name) + 2;
	while (i < n) {
		size_t j = i, k;
		while (j < n && v[j] == ' ')
			j++;
		k = j;
		while (k < n && v[k] != ' ')
			k++;
		if (i > 0 && col + (k - i) > FOLD_AT && col > 1) {
			puts_(w, "\r\n");
			col = 0;
		}
		for (size_t m = i; m < k; m++) {
			if (col >= HARD_MAX - 1) {
				puts_(w, "\r\n ");
				col = 1;
			}
			putc_(w, v[m]);
			col++;
		}
		i = k;
	}
	puts_(w, "\r\n");
}

/* Human-readable text: words of v (clean) wrapped at WRAP_AT, the first
 * line indented by ind0 spaces, the others by ind; over-long words
 * broken. */
static void put_wrapped(struct wbuf *w, size_t ind0, size_t ind,
			const char *v)
{
	size_t n = strlen(v), col = 0, i = 0;
	bool first = true;
	static const char spaces[] = "        ";

	if (ind > sizeof(spaces) - 1)
		ind = sizeof(spaces) - 1;
	if (ind0 > sizeof(spaces) - 1)
		ind0 = sizeof(spaces) - 1;
	while (i < n) {
		size_t j = i, k;
		while (j < n && v[j] == ' ')
			j++;
		k = j;
		while (k < n && v[k] != ' ')
			k++;
		if (j == k)
			break;
		if (!first && col > ind && col + 1 + (k - j) > WRAP_AT) {
			puts_(w, "\r\n");
			col = 0;
		}
		if (first) {
			put(w, spaces, ind0);
			col = ind0;
			first = false;
		} else if (col == 0) {
			put(w, spaces, ind);
			col = ind;
		} else {
			putc_(w, ' ');
			col++;
		}
		for (size_t m = j; m < k; m++) {
			if (col >= HARD_MAX - 2) {
				puts_(w, "\r\n");
				put(w, spaces, ind);
				col = ind;
			}
			putc_(w, v[m]);
			col++;
		}
		i = k;
	}
	if (col > 0)
		puts_(w, "\r\n");
}

/* RFC 5322 §3.3 date-time in UTC, independent of the locale. */
static void fmt_date(char *out, size_t len, int64_t us)
{
	static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed",
					 "Thu", "Fri", "Sat"};
	static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr",
					 "May", "Jun", "Jul", "Aug",
					 "Sep", "Oct", "Nov", "Dec"};
	int64_t s = us / 1000000;
	time_t t;
	struct tm tm;

	if (us < 0 && us % 1000000 != 0)
		s--;
	t = (time_t)s;
	if (gmtime_r(&t, &tm) == NULL || tm.tm_wday < 0 || tm.tm_wday > 6 ||
	    tm.tm_mon < 0 || tm.tm_mon > 11) {
		snprintf(out, len, "Thu, 1 Jan 1970 00:00:00 +0000");
		return;
	}
	snprintf(out, len, "%s, %d %s %04d %02d:%02d:%02d +0000",
		 wd[tm.tm_wday], tm.tm_mday, mo[tm.tm_mon], tm.tm_year + 1900,
		 tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* RFC 3464 §2.3.4: DIGIT "." 1*3DIGIT "." 1*3DIGIT, no leading zeros,
 * class 2, 4 or 5. */
static bool valid_status(const char *s)
{
	if (s == NULL || (s[0] != '2' && s[0] != '4' && s[0] != '5') ||
	    s[1] != '.')
		return false;
	s += 2;
	for (int f = 0; f < 2; f++) {
		size_t d = 0;
		while (s[d] >= '0' && s[d] <= '9')
			d++;
		if (d == 0 || d > 3 || (d > 1 && s[0] == '0'))
			return false;
		s += d;
		if (f == 0) {
			if (*s != '.')
				return false;
			s++;
		}
	}
	return *s == '\0';
}

static const char *rcpt_status(const struct mta_dsn_rcpt *r)
{
	if (valid_status(r->status))
		return r->status;
	switch (r->action) {
	case MTA_DSN_FAILED:
		return "5.0.0";
	case MTA_DSN_DELAYED:
		return "4.0.0";
	case MTA_DSN_DELIVERED:
	case MTA_DSN_RELAYED:
	default:
		return "2.0.0";
	}
}

/* An SMTP reply: three digits 2xx..5xx then SP, "-" or the end. */
static bool is_smtp_reply(const char *s)
{
	return s[0] >= '2' && s[0] <= '5' && s[1] >= '0' && s[1] <= '9' &&
	       s[2] >= '0' && s[2] <= '9' &&
	       (s[3] == '\0' || s[3] == ' ' || s[3] == '-');
}

static const char *action_word(enum mta_dsn_action a)
{
	switch (a) {
	case MTA_DSN_FAILED:
		return "failed";
	case MTA_DSN_DELAYED:
		return "delayed";
	case MTA_DSN_DELIVERED:
		return "delivered";
	case MTA_DSN_RELAYED:
		return "relayed";
	}
	return "failed";
}

/* RFC 3463 §3.1-3.8, the subject sub-code in plain words */
static const char *status_subject(const char *st)
{
	switch (st[2]) {
	case '1':
		return "address";
	case '2':
		return "mailbox";
	case '3':
		return "mail system";
	case '4':
		return "network or routing";
	case '5':
		return "mail delivery protocol";
	case '6':
		return "message content";
	case '7':
		return "security or policy";
	default:
		return "other";
	}
}

/* ---- NOTIFY rules --------------------------------------------------- */

bool mta_dsn_needed(const struct mta_envelope *env, size_t rcpt_index,
		    enum mta_dsn_action action)
{
	unsigned nt;

	if (env == NULL || rcpt_index >= env->nrcpt)
		return false;
	/* DSN-06: never a DSN about a DSN (null reverse-path) */
	if (env->sender == NULL || env->sender[0] == '\0')
		return false;
	nt = env->rcpts[rcpt_index].notify;
	if (nt & MTA_NOTIFY_NEVER)
		return false;
	switch (action) {
	case MTA_DSN_FAILED:
		/* RFC 3461 §5.2.2: absent NOTIFY means FAILURE */
		return nt == 0 || (nt & MTA_NOTIFY_FAILURE) != 0;
	case MTA_DSN_DELAYED:
		/* DSN-05; absent NOTIFY: local choice, mtad sends none */
		return (nt & MTA_NOTIFY_DELAY) != 0;
	case MTA_DSN_DELIVERED:
	case MTA_DSN_RELAYED:
		return (nt & MTA_NOTIFY_SUCCESS) != 0;
	}
	return false;
}

/* ---- part 3: copying the original ----------------------------------- */

struct copier {
	struct wbuf *w;
	bool headers_only; /* stop at the first empty line */
	bool in_header;	   /* still inside the header section */
	bool prev_cr;
	bool done;
	bool eightbit;
	bool truncated;
	size_t col;
	size_t line_start; /* offset in w of the current line */
	size_t base;	   /* offset in w where the copy began */
	size_t cap;	   /* headers_only: most octets to write */
};

static void copy_eol(struct copier *c)
{
	if (c->col == 0 && c->in_header) {
		/* the empty line ending the header section */
		if (c->headers_only) {
			c->done = true;
			return;
		}
		c->in_header = false;
	}
	puts_(c->w, "\r\n");
	c->col = 0;
	c->line_start = c->w->b.len;
}

static void copy_bytes(struct copier *c, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n && !c->done; i++) {
		unsigned char ch = p[i];
		if (c->prev_cr) {
			c->prev_cr = false;
			if (ch == '\n')
				continue; /* CRLF: already ended */
		}
		if (ch == '\r') {
			copy_eol(c);
			c->prev_cr = true;
		} else if (ch == '\n') {
			copy_eol(c);
		} else if (ch == '\0') {
			continue;
		} else {
			if (c->col >= HARD_MAX) {
				/* fold in the header, break in the body */
				puts_(c->w, c->in_header ? "\r\n " : "\r\n");
				c->col = c->in_header ? 1 : 0;
			}
			if (ch >= 0x80)
				c->eightbit = true;
			putc_(c->w, (char)ch);
			c->col++;
		}
		if (c->headers_only && c->w->err == 0 &&
		    c->w->b.len - c->base > c->cap) {
			/* cut at the last line end within the cap */
			c->w->b.len = c->line_start;
			c->col = 0;
			c->truncated = true;
			c->done = true;
		}
	}
}

static int copy_original(const struct mta_dsn_params *p, bool headers_only,
			 size_t cap, struct wbuf *w, bool *eightbit,
			 bool *truncated)
{
	struct copier c = {
		.w = w,
		.headers_only = headers_only,
		.in_header = true,
		.line_start = w->b.len,
		.base = w->b.len,
		.cap = cap,
	};
	unsigned char buf[READ_CHUNK];
	uint64_t off = 0;

	while (off < p->msg_size && !c.done) {
		size_t want = sizeof(buf), got = 0;
		int rc;
		if (p->msg_size - off < want)
			want = (size_t)(p->msg_size - off);
		rc = p->read(p->read_ud, off, buf, want, &got);
		if (rc < 0)
			return rc;
		if (got == 0 || got > want)
			return MTA_ECORRUPT;
		copy_bytes(&c, buf, got);
		off += got;
	}
	if (c.col > 0)
		puts_(w, "\r\n");
	*eightbit = c.eightbit;
	*truncated = c.truncated;
	return 0;
}

/* ---- the parts ------------------------------------------------------ */

struct summary {
	bool failed, delayed, success;
};

static void build_top(const struct mta_dsn_params *p,
		      const struct summary *s, struct wbuf *w, bool *utf8)
{
	const struct mta_envelope *e = p->env;
	struct wbuf v = {0};
	char date[64];

	puts_(w, "From: \"Mail Delivery System\" <MAILER-DAEMON@");
	puts_(w, p->reporting_mta);
	puts_(w, ">\r\n");

	puts_(&v, "<");
	if (printable_ascii(e->sender)) {
		put_clean_str(&v, e->sender);
	} else if (e->smtputf8 && valid_utf8_text(e->sender) &&
		   strlen(e->sender) <= VALUE_MAX) {
		puts_(&v, e->sender); /* RFC 6532: needs SMTPUTF8 */
		*utf8 = true;
	} else {
		put_clean_str(&v, e->sender);
	}
	puts_(&v, ">");
	put_field(w, "To", wstr(&v));
	wfree(&v);

	put_field(w, "Subject",
		  s->failed    ? "Undelivered Mail Returned to Sender"
		  : s->delayed ? "Delayed Mail (still being retried)"
			       : "Successful Mail Delivery Report");
	fmt_date(date, sizeof(date), p->now_us);
	put_field(w, "Date", date);
	puts_(w, "Message-ID: <");
	puts_(w, p->unique);
	putc_(w, '@');
	puts_(w, p->reporting_mta);
	puts_(w, ">\r\n");
	puts_(w, "Auto-Submitted: auto-replied\r\n");
	puts_(w, "MIME-Version: 1.0\r\n");
	if (v.err != 0 && w->err == 0)
		w->err = v.err;
}

/* Over 100 lines on purpose: the human-readable part (RFC 3464 2.1) in
 * the order it appears in the message, one sentence per case; it reads
 * top to bottom like its output. */
static void build_human(const struct mta_dsn_params *p,
			const struct summary *s, bool full, bool too_big,
			bool cut, bool have_part3, struct wbuf *w)
{
	const struct mta_envelope *e = p->env;
	struct wbuf v = {0};
	char date[64];

	puts_(w, "Content-Type: text/plain; charset=us-ascii\r\n"
		 "Content-Description: Notification\r\n"
		 "Content-Transfer-Encoding: 7bit\r\n\r\n");
	puts_(w, "This is the mail system at host ");
	puts_(w, p->reporting_mta);
	puts_(w, ".\r\n\r\n");
	if (s->failed)
		puts_(w, "Your message could not be delivered to one or more "
			 "recipients.\r\nThe mail system has given up on "
			 "them and will not try again.\r\n\r\n");
	if (s->delayed)
		puts_(w, "Your message has not yet been delivered to one or "
			 "more recipients.\r\nThe mail system will keep "
			 "trying; you do not need to send it again.\r\n\r\n");
	if (s->success)
		puts_(w, "Your message was delivered, or handed on, to the "
			 "recipients listed\r\nbelow as delivered or "
			 "relayed.\r\n\r\n");
	if (e->arrival_us != 0) {
		fmt_date(date, sizeof(date), e->arrival_us);
		puts_(w, "The message was received on ");
		puts_(w, date);
		puts_(w, ".\r\n\r\n");
	}

	for (size_t i = 0; i < p->nrcpt; i++) {
		const struct mta_dsn_rcpt *r = &p->rcpts[i];
		const char *st = rcpt_status(r);

		v.b.len = 0;
		putc_(&v, '<');
		put_addr(&v, e->rcpts[r->index].addr, false);
		puts_(&v, ">: ");
		switch (r->action) {
		case MTA_DSN_FAILED:
			puts_(&v, "delivery failed");
			break;
		case MTA_DSN_DELAYED:
			puts_(&v, "delivery delayed, still trying");
			break;
		case MTA_DSN_DELIVERED:
			puts_(&v, "delivered");
			break;
		case MTA_DSN_RELAYED:
			puts_(&v, "relayed to a server that does not send "
				  "delivery reports");
			break;
		}
		puts_(&v, " (status ");
		puts_(&v, st);
		puts_(&v, ": ");
		puts_(&v, status_subject(st));
		puts_(&v, ")");
		put_wrapped(w, 0, 4, wstr(&v));

		if (r->diagnostic != NULL && r->diagnostic[0] != '\0') {
			v.b.len = 0;
			if (r->remote_mta != NULL &&
			    is_smtp_reply(r->diagnostic))
				puts_(&v, "The remote server replied: ");
			else
				puts_(&v, "Reason: ");
			put_clean_str(&v, r->diagnostic);
			put_wrapped(w, 4, 8, wstr(&v));
		}
		if (r->remote_mta != NULL && r->remote_mta[0] != '\0') {
			v.b.len = 0;
			puts_(&v, "Remote server: ");
			put_clean_str(&v, r->remote_mta);
			put_wrapped(w, 4, 8, wstr(&v));
		}
		if (r->action == MTA_DSN_DELAYED &&
		    r->will_retry_until_us != 0) {
			fmt_date(date, sizeof(date), r->will_retry_until_us);
			puts_(w, "    The mail system will give up after ");
			puts_(w, date);
			puts_(w, ".\r\n");
		}
		puts_(w, "\r\n");
	}

	if (!have_part3) {
		/* nothing to say about an attachment */
	} else if (full) {
		puts_(w, "Your message is attached.\r\n");
	} else if (too_big) {
		char lim[64];
		uint64_t m = p->max_full_size ? p->max_full_size
					      : MTA_DSN_MAX_FULL_DEFAULT;
		snprintf(lim, sizeof(lim), "%" PRIu64, m);
		puts_(w, "Your message was larger than ");
		puts_(w, lim);
		puts_(w, " bytes, so only its headers\r\nare attached, "
			 "not the full message you asked for.\r\n");
	} else {
		puts_(w, "The headers of your message are attached.\r\n");
	}
	if (have_part3 && cut)
		puts_(w, "The headers were too long and have been cut "
			 "short.\r\n");
	if (v.err != 0 && w->err == 0)
		w->err = v.err;
	wfree(&v);
}

static void build_status(const struct mta_dsn_params *p, struct wbuf *w)
{
	const struct mta_envelope *e = p->env;
	struct wbuf v = {0};
	char date[64];

	puts_(w, "Content-Type: message/delivery-status\r\n"
		 "Content-Description: Delivery report\r\n"
		 "Content-Transfer-Encoding: 7bit\r\n\r\n");

	/* RFC 3461 §6.3 (a): ENVID, xtext decoded, iff given */
	if (e->envid != NULL) {
		struct wbuf d = {0};
		if (xtext_decode(&d, e->envid, strlen(e->envid)) != 0)
			puts_(&d, e->envid);
		v.b.len = 0;
		put_clean(&v, (const char *)d.b.data, d.b.len);
		put_field(w, "Original-Envelope-Id", wstr(&v));
		if (d.err != 0 && w->err == 0)
			w->err = d.err;
		wfree(&d);
	}
	puts_(w, "Reporting-MTA: dns; ");
	puts_(w, p->reporting_mta);
	puts_(w, "\r\n");
	if (e->arrival_us != 0) {
		fmt_date(date, sizeof(date), e->arrival_us);
		put_field(w, "Arrival-Date", date);
	}

	for (size_t i = 0; i < p->nrcpt; i++) {
		const struct mta_dsn_rcpt *r = &p->rcpts[i];
		const struct mta_rcpt *er = &e->rcpts[r->index];

		puts_(w, "\r\n");
		if (er->orcpt != NULL) {
			/* RFC 3461 §6.3 (d): iff ORCPT, value from it */
			const char *semi = strchr(er->orcpt, ';');
			struct wbuf d = {0};
			size_t tl = semi ? (size_t)(semi - er->orcpt) : 0;

			if (semi != NULL && tl == 6 &&
			    strncasecmp(er->orcpt, "rfc822", 6) == 0) {
				put(&d, er->orcpt, tl + 1);
				if (xtext_decode(&d, semi + 1,
						 strlen(semi + 1)) != 0)
					puts_(&d, semi + 1);
			} else {
				puts_(&d, er->orcpt);
			}
			v.b.len = 0;
			put_clean(&v, (const char *)d.b.data, d.b.len);
			put_field(w, "Original-Recipient", wstr(&v));
			if (d.err != 0 && w->err == 0)
				w->err = d.err;
			wfree(&d);
		}
		v.b.len = 0;
		put_addr(&v, er->addr, true);
		put_field(w, "Final-Recipient", wstr(&v));
		put_field(w, "Action", action_word(r->action));
		put_field(w, "Status", rcpt_status(r));
		if (r->remote_mta != NULL && r->remote_mta[0] != '\0') {
			v.b.len = 0;
			puts_(&v, "dns; ");
			put_clean_str(&v, r->remote_mta);
			put_field(w, "Remote-MTA", wstr(&v));
		}
		if (r->diagnostic != NULL && r->diagnostic[0] != '\0') {
			v.b.len = 0;
			puts_(&v, is_smtp_reply(r->diagnostic) ? "smtp; "
							       : "X-mtad; ");
			put_clean_str(&v, r->diagnostic);
			put_field(w, "Diagnostic-Code", wstr(&v));
		}
		if (r->last_attempt_us != 0) {
			fmt_date(date, sizeof(date), r->last_attempt_us);
			put_field(w, "Last-Attempt-Date", date);
		}
		if (r->action == MTA_DSN_DELAYED &&
		    r->will_retry_until_us != 0) {
			fmt_date(date, sizeof(date), r->will_retry_until_us);
			put_field(w, "Will-Retry-Until", date);
		}
	}
	if (v.err != 0 && w->err == 0)
		w->err = v.err;
	wfree(&v);
}

static bool contains(const struct wbuf *w, const char *needle, size_t n)
{
	return w->b.len >= n && memmem(w->b.data, w->b.len, needle, n) != NULL;
}

/* Appends to the caller's buffer unless an earlier append failed. */
static void emit(struct mta_buf *out, int *rc, const void *p, size_t n)
{
	if (*rc == 0)
		*rc = mta_buf_append(out, p, n);
}

static void emits(struct mta_buf *out, int *rc, const char *s)
{
	emit(out, rc, s, strlen(s));
}

/* The parameters mta_dsn_build() refuses with -EINVAL; *s gets which
 * actions the DSN reports.  0 or -EINVAL. */
static int check_params(const struct mta_dsn_params *p, struct summary *s)
{
	const struct mta_envelope *e;

	if (p == NULL || p->env == NULL || p->rcpts == NULL ||
	    p->nrcpt == 0 || !valid_host(p->reporting_mta) ||
	    !valid_unique(p->unique))
		return -EINVAL;
	e = p->env;
	if (e->sender == NULL || e->sender[0] == '\0')
		return -EINVAL; /* DSN-06 */
	for (size_t i = 0; i < p->nrcpt; i++) {
		const struct mta_dsn_rcpt *r = &p->rcpts[i];
		if (r->index >= e->nrcpt || e->rcpts[r->index].addr == NULL)
			return -EINVAL;
		switch (r->action) {
		case MTA_DSN_FAILED:
			s->failed = true;
			break;
		case MTA_DSN_DELAYED:
			s->delayed = true;
			break;
		case MTA_DSN_DELIVERED:
		case MTA_DSN_RELAYED:
			s->success = true;
			break;
		default:
			return -EINVAL;
		}
	}
	return 0;
}

/* Just over 100 lines: the three MIME parts assembled in message order
 * (parameter checks are in check_params(), the parts in build_*()). */
int mta_dsn_build(const struct mta_dsn_params *p, struct mta_buf *out,
		  struct mta_dsn_info *info)
{
	const struct mta_envelope *e;
	struct summary s = {false, false, false};
	struct wbuf top = {0}, p1 = {0}, p2 = {0}, p3 = {0};
	bool full = false, too_big = false, eightbit = false, cut = false;
	bool utf8 = false, have3;
	char bnd[128];
	size_t blen, old_len;
	int rc;

	if (out == NULL || check_params(p, &s) != 0)
		return -EINVAL;
	e = p->env;

	/* part 3 first: part 1 says what it holds */
	have3 = p->read != NULL;
	if (have3) {
		uint64_t maxf = p->max_full_size ? p->max_full_size
						 : MTA_DSN_MAX_FULL_DEFAULT;
		size_t maxh = p->max_headers_size ? p->max_headers_size
						  : MTA_DSN_MAX_HEADERS_DEFAULT;
		if (maxh < MIN_HEADERS_CAP)
			maxh = MIN_HEADERS_CAP;
		/* RFC 3461 §6.2: FULL only for failures, within the cap */
		if (e->ret == MTA_RET_FULL && s.failed &&
		    e->tlsreq != MTA_TLSREQ_REQUIRETLS) { /* RTLS-28 */
			if (p->msg_size <= maxf)
				full = true;
			else
				too_big = true;
		}
		rc = copy_original(p, !full, maxh, &p3, &eightbit, &cut);
		if (rc != 0)
			goto fail;
	}

	build_top(p, &s, &top, &utf8);
	build_human(p, &s, full, too_big, cut, have3, &p1);
	build_status(p, &p2);
	if ((rc = top.err) != 0 || (rc = p1.err) != 0 || (rc = p2.err) != 0 ||
	    (rc = p3.err) != 0)
		goto fail;

	/* a boundary no part contains (RFC 2046 §5.1.1) */
	for (unsigned n = 0;; n++) {
		if (n == 0)
			snprintf(bnd, sizeof(bnd), "--=_mtad_%s", p->unique);
		else
			snprintf(bnd, sizeof(bnd), "--=_mtad_%s_%u", p->unique,
				 n);
		blen = strlen(bnd);
		if (!contains(&p1, bnd, blen) && !contains(&p2, bnd, blen) &&
		    !contains(&p3, bnd, blen))
			break;
	}

	old_len = out->len;
	rc = 0;
	emit(out, &rc, top.b.data, top.b.len);
	emits(out, &rc, "Content-Type: multipart/report; "
			"report-type=delivery-status;\r\n\tboundary=\"");
	emit(out, &rc, bnd + 2, blen - 2);
	emits(out, &rc, "\"\r\n\r\n"
			"This is a MIME-encapsulated message.\r\n\r\n");
	emit(out, &rc, bnd, blen);
	emits(out, &rc, "\r\n");
	emit(out, &rc, p1.b.data, p1.b.len);
	/* every part ends in CRLF; the CRLF before a delimiter belongs to
	 * the delimiter (RFC 2046 §5.1.1), hence one more */
	emits(out, &rc, "\r\n");
	emit(out, &rc, bnd, blen);
	emits(out, &rc, "\r\n");
	emit(out, &rc, p2.b.data, p2.b.len);
	emits(out, &rc, "\r\n");
	if (have3) {
		emit(out, &rc, bnd, blen);
		emits(out, &rc,
		      full ? "\r\nContent-Type: message/rfc822\r\n"
			     "Content-Description: Undelivered message\r\n"
			   : "\r\nContent-Type: text/rfc822-headers\r\n"
			     "Content-Description: Message headers\r\n");
		emits(out, &rc,
		      eightbit ? "Content-Transfer-Encoding: 8bit\r\n\r\n"
			       : "Content-Transfer-Encoding: 7bit\r\n\r\n");
		emit(out, &rc, p3.b.data, p3.b.len);
		emits(out, &rc, "\r\n");
	}
	emit(out, &rc, bnd, blen);
	emits(out, &rc, "--\r\n");
	if (rc != 0) {
		out->len = old_len;
		goto fail;
	}
	if (info != NULL) {
		info->eightbit = eightbit;
		info->smtputf8 = utf8;
		info->full = full;
		info->truncated = cut || too_big;
	}
fail:
	wfree(&top);
	wfree(&p1);
	wfree(&p2);
	wfree(&p3);
	return rc;
}
