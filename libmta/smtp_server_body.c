/*
 * smtp_server_body.c - the SMTP server engine's body checker, shared by
 * DATA and BDAT: message size, line length (RFC 5322 2.1.1), bare CR, LF
 * and NUL, the Received hop count and the TLS-Required header (RFC 8689);
 * and the DATA input mode (dot-stuffing and the end-of-data line, RFC
 * 5321 4.5.2), the hot loop that feeds it.
 * See smtp_server.h; shared declarations in smtp_server_int.h.
 */
#include "smtp_server_int.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

void smtpd_violate(struct mta_smtpd *s, uint8_t v)
{
	if (s->b_viol == V_NONE)
		s->b_viol = v;
}

/* One step of the "Received:" matcher (header section, s->b_rmatch >= 0):
 * counts a hop when the line starts with that field name. */
static void rcvd_step(struct mta_smtpd *s, uint8_t c)
{
	static const char rcvd[] = "received:";
	char l = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);

	if (l != rcvd[s->b_rmatch]) {
		s->b_rmatch = -1;
	} else if (++s->b_rmatch == (int)sizeof(rcvd) - 1) {
		s->b_rmatch = -1;
		if (++s->b_rcvd > MAX_HOPS)
			smtpd_violate(s, V_HOPS);
	}
}

/* The "TLS-Required:" header (RFC 8689 §3): its value is collected
 * (unfolded, at most sizeof(b_tval) octets) and judged when the field
 * ends; b_tcount counts the fields, b_tno says the last one was "No". */
void smtpd_tlsr_final(struct mta_smtpd *s)
{
	size_t a = 0, b = s->b_tlen;

	s->b_tpend = s->b_tcapt = false;
	if (s->b_tlen > sizeof(s->b_tval)) {
		s->b_tno = false; /* too long to be "No" */
		return;
	}
	while (a < b && (s->b_tval[a] == ' ' || s->b_tval[a] == '\t'))
		a++;
	while (b > a && (s->b_tval[b - 1] == ' ' || s->b_tval[b - 1] == '\t'))
		b--;
	s->b_tno = b - a == 2 && (s->b_tval[a] | 0x20) == 'n' &&
		   (s->b_tval[a + 1] | 0x20) == 'o';
}

/* One header-section byte other than CR/LF; bol: the first of its line. */
static void hdr_byte(struct mta_smtpd *s, uint8_t c, bool bol)
{
	static const char treq[] = "tls-required:";
	char l = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);

	if (bol && s->b_tpend) {
		s->b_tpend = false;
		if (c == ' ' || c == '\t')
			s->b_tcapt = true; /* folded continuation */
		else
			smtpd_tlsr_final(s);
	}
	if (s->b_rmatch >= 0)
		rcvd_step(s, c);
	if (s->b_tcapt) {
		if (s->b_tlen < sizeof(s->b_tval))
			s->b_tval[s->b_tlen] = (char)c;
		if (s->b_tlen <= sizeof(s->b_tval))
			s->b_tlen++;
		return;
	}
	if (s->b_tmatch < 0)
		return;
	if (l != treq[s->b_tmatch]) {
		s->b_tmatch = -1;
	} else if (++s->b_tmatch == (int)sizeof(treq) - 1) {
		s->b_tmatch = -1;
		if (s->b_tcount < UINT8_MAX)
			s->b_tcount++;
		s->b_tcapt = true;
		s->b_tlen = 0;
	}
}

/* A CRLF in the header section; empty: it ended the section. */
static void hdr_eol(struct mta_smtpd *s, bool empty)
{
	if (empty && s->b_tpend)
		smtpd_tlsr_final(s);
	if (s->b_tcapt) {
		s->b_tcapt = false;
		s->b_tpend = true; /* a continuation line may follow */
	}
	s->b_tmatch = 0;
}

static bool hdr_active(const struct mta_smtpd *s)
{
	return s->b_rmatch >= 0 || s->b_tmatch >= 0 || s->b_tcapt;
}

/* Feeds one content byte (after dot-unstuffing) to the checks; true when
 * it was the LF of a CRLF. */
static bool chk_byte(struct mta_smtpd *s, uint8_t c)
{
	s->b_size++;
	if (s->cfg->max_message_size != 0 &&
	    s->b_size > s->cfg->max_message_size)
		smtpd_violate(s, V_BIG);
	if (s->b_cr) {
		s->b_cr = false;
		if (c == '\n') {
			if (!s->b_hdr_done)
				hdr_eol(s, s->b_linelen == 0);
			if (s->b_linelen == 0)
				s->b_hdr_done = true;
			s->b_linelen = 0;
			s->b_rmatch = 0;
			return true;
		}
		smtpd_violate(s, V_BARE); /* the CR was not followed by LF */
		if (++s->b_linelen > BODY_LINE_MAX)
			smtpd_violate(s, V_LONG);
		s->b_rmatch = -1;
		s->b_tmatch = -1;
	}
	if (c == '\r') {
		s->b_cr = true;
		return false;
	}
	if (c == '\n' || c == '\0')
		smtpd_violate(s, V_BARE);
	if (!s->b_hdr_done && (s->b_linelen == 0 || hdr_active(s)))
		hdr_byte(s, c, s->b_linelen == 0);
	if (++s->b_linelen > BODY_LINE_MAX)
		smtpd_violate(s, V_LONG);
	return false;
}

/* Length of the leading run of p[0..n) without CR, LF or NUL (the only
 * bytes chk_byte() treats specially). */
static size_t plain_len(const uint8_t *p, size_t n)
{
	size_t k = 0;

#if defined(__SSE2__)
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	const __m128i nul = _mm_setzero_si128();

	for (; k + 16 <= n; k += 16) {
		__m128i v = _mm_loadu_si128((const void *)(p + k));
		__m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr),
						      _mm_cmpeq_epi8(v, lf)),
					 _mm_cmpeq_epi8(v, nul));
		unsigned bits = (unsigned)_mm_movemask_epi8(m);

		if (bits != 0)
			return k + (size_t)__builtin_ctz(bits);
	}
#else
	/* SWAR: a word with a zero byte after XOR has a special byte; the
	 * byte loop below finds which */
	const uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;

	for (; k + 8 <= n; k += 8) {
		uint64_t w, a, b;

		memcpy(&w, p + k, 8);
		a = w ^ (ones * '\r');
		b = w ^ (ones * '\n');
		if ((((w - ones) & ~w) | ((a - ones) & ~a) |
		     ((b - ones) & ~b)) & high)
			break;
	}
#endif
	for (; k < n; k++)
		if (p[k] == '\r' || p[k] == '\n' || p[k] == '\0')
			break;
	return k;
}

/* chk_byte() for each of p[0..n), which plain_len() passed,
 * with no CR pending: the counters move once per run and the Received
 * matcher runs only at the start of a header line. */
static void chk_run(struct mta_smtpd *s, const uint8_t *p, size_t n)
{
	uint64_t max = s->cfg->max_message_size;
	bool bol = s->b_linelen == 0;

	if (s->b_viol == V_NONE &&
	    ((max != 0 && (s->b_size > max || n > max - s->b_size)) ||
	     s->b_linelen > BODY_LINE_MAX ||
	     n > BODY_LINE_MAX - s->b_linelen)) {
		/* a limit is crossed here: byte by byte, so that the first
		 * violation in input order is the one reported */
		for (size_t k = 0; k < n; k++)
			(void)chk_byte(s, p[k]);
		return;
	}
	/* any violation below comes after the one already recorded, except
	 * a hop from the matcher (the only check left that can fire) */
	s->b_size += n;
	if (max != 0 && s->b_size > max)
		smtpd_violate(s, V_BIG);
	s->b_linelen += (uint32_t)n; /* wraps like n increments would */
	if (s->b_linelen > BODY_LINE_MAX)
		smtpd_violate(s, V_LONG);
	if (!s->b_hdr_done)
		for (size_t k = 0; k < n && ((bol && k == 0) || hdr_active(s));
		     k++)
			hdr_byte(s, p[k], bol && k == 0);
}

/* chk_byte() of CR then LF with no CR pending: only the size check
 * can fire, and the LF ends the line. */
static void chk_crlf(struct mta_smtpd *s)
{
	uint64_t max = s->cfg->max_message_size;

	s->b_size += 2;
	if (max != 0 && s->b_size > max)
		smtpd_violate(s, V_BIG);
	if (!s->b_hdr_done)
		hdr_eol(s, s->b_linelen == 0);
	if (s->b_linelen == 0)
		s->b_hdr_done = true;
	s->b_linelen = 0;
	s->b_rmatch = 0;
}

/* chk_byte() for each of p[0..n) (BDAT content). */
void smtpd_chk_bytes(struct mta_smtpd *s, const uint8_t *p, size_t n)
{
	size_t k = 0;

	while (k < n) {
		if (!s->b_cr) {
			size_t m = plain_len(p + k, n - k);

			if (m > 0) {
				chk_run(s, p + k, m);
				k += m;
				if (k == n)
					break;
			}
			if (n - k >= 2 && p[k] == '\r' && p[k + 1] == '\n') {
				chk_crlf(s);
				k += 2;
				continue;
			}
		}
		(void)chk_byte(s, p[k++]);
	}
}

/* ---- DATA input (in the same file as the checker: the per-line calls
 * stay local to one translation unit) ---------------------------------- */

enum mta_smtpd_ev smtpd_feed_data(struct mta_smtpd *s, const uint8_t *in,
				  size_t len, size_t *ip,
				  struct mta_smtpd_event *ev)
{
	/* the position in a local: it stays in a register in the loop */
	size_t i = *ip, run = i, runlen = 0;

	while (i < len) {
		/* fast path: mid-line (or a line not starting with a dot),
		 * up to the next CR, LF or NUL */
		if ((s->d_state == D_MID && !s->b_cr) ||
		    (s->d_state == D_BOL && in[i] != '.')) {
			size_t n = plain_len(in + i, len - i);

			if (runlen == 0)
				run = i;
			if (n > 0) {
				/* D_BOL has no CR pending either */
				s->d_state = D_MID;
				chk_run(s, in + i, n);
				runlen += n;
				i += n;
				if (i == len)
					break;
			}
			if (len - i >= 2 && in[i] == '\r' &&
			    in[i + 1] == '\n') {
				chk_crlf(s);
				s->d_state = D_BOL;
				runlen += 2;
				i += 2;
				continue;
			}
		}

		uint8_t c = in[i++];
		bool content = false;

		switch (s->d_state) {
		case D_BOL:
			if (c == '.') {
				s->d_state = D_DOT; /* never content (4.5.2) */
				break;
			}
			content = true;
			break;
		case D_DOT:
			if (c == '\r') {
				s->d_state = D_DOTCR;
				break;
			}
			content = true;
			break;
		case D_DOTCR:
			if (c == '\n') {
				*ip = i;
				return smtpd_data_end(s, ev);
			}
			/* ".<CR>x": the CR is content, and bare: a violation,
			 * so nothing more is emitted */
			(void)chk_byte(s, '\r');
			content = true;
			break;
		default:
			content = true;
			break;
		}
		if (!content) {
			if (runlen > 0 && s->b_viol == V_NONE)
				goto emit;
			runlen = 0;
			continue;
		}
		s->d_state = chk_byte(s, c) ? D_BOL : D_MID;
		if (runlen == 0)
			run = i - 1;
		runlen++;
	}
	*ip = i;
	if (runlen == 0 || s->b_viol != V_NONE)
		return MTA_SMTPD_EV_NONE;
emit:
	*ip = i;
	ev->data = in + run;
	ev->len = runlen;
	return MTA_SMTPD_EV_BODY;
}
