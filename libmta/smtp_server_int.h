/*
 * smtp_server_int.h - what the SMTP server engine's two files share:
 * smtp_server.c (commands, command and BDAT input, driver calls) and
 * smtp_server_body.c (the body checker run over DATA and BDAT bytes, and
 * the DATA input mode).
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
/* Runs the body checks over n message bytes (line length, bare CR/LF/NUL,
 * size, hop count, TLS-Required). */
void smtpd_chk_bytes(struct mta_smtpd *s, const uint8_t *p, size_t n);

/* The DATA input mode (smtp_server_body.c): consumes in[*i..len) up to
 * the end-of-data line; BODY with ev->data/len for a run of content,
 * MESSAGE or ABORT at the end (through smtpd_data_end()), NONE when all
 * input was taken. */
enum mta_smtpd_ev smtpd_feed_data(struct mta_smtpd *s, const uint8_t *in,
				  size_t len, size_t *i,
				  struct mta_smtpd_event *ev);
/* The end-of-data line was seen (smtp_server.c): leaves DATA mode. */
enum mta_smtpd_ev smtpd_data_end(struct mta_smtpd *s,
				 struct mta_smtpd_event *ev);

#endif
