/*
 * smtp_server_int.h - what the SMTP server engine's two files share:
 * smtp_server.c (commands, input modes, driver calls) and
 * smtp_server_body.c (the body checker run over DATA and BDAT bytes).
 * Private to the engine; its interface is smtp_server.h.
 */
#ifndef MTA_SMTP_SERVER_INT_H
#define MTA_SMTP_SERVER_INT_H

#include "smtp_server.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BODY_LINE_MAX 998u    /* message line, without CRLF (RFC 5322 2.1.1) */
#define MAX_HOPS 100u	      /* Received headers accepted */

/* DATA framing states (s->d_state) */
enum { D_BOL = 0, D_MID, D_DOT, D_DOTCR };

/* body violations (s->b_viol); the first one found is reported */
enum { V_NONE = 0, V_BARE, V_LONG, V_BIG, V_HOPS };

/* Records body violation v unless one was found before. */
void smtpd_violate(struct mta_smtpd *s, uint8_t v);
/* Judges the collected TLS-Required value (RFC 8689 3). */
void smtpd_tlsr_final(struct mta_smtpd *s);
/* The length of the prefix of p[0..n) that holds no CR, LF or NUL (the
 * DATA fast path: such bytes can be checked in a run). */
size_t smtpd_plain_len(const uint8_t *p, size_t n);
/* Feeds one content byte (after dot-unstuffing) to the checks; true when
 * it was the LF of a CRLF. */
bool smtpd_chk_byte(struct mta_smtpd *s, uint8_t c);
/* smtpd_chk_byte() for each of a run smtpd_plain_len() passed. */
void smtpd_chk_run(struct mta_smtpd *s, const uint8_t *p, size_t n);
/* Runs the body checks over n message bytes (line length, bare CR/LF/NUL,
 * size, hop count, TLS-Required). */
void smtpd_chk_bytes(struct mta_smtpd *s, const uint8_t *p, size_t n);
/* The body checks for one CRLF (DATA: a line end seen by the framing). */
void smtpd_chk_crlf(struct mta_smtpd *s);

#endif
