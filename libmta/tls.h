/*
 * tls.h - GnuTLS sessions over memory buffers, for the libuv drivers.
 *
 * DESCRIPTION
 *	The drivers own the sockets; a struct mta_tls only transforms bytes.
 *	Ciphertext read from the socket goes in with mta_tls_feed(); records
 *	to send accumulate in t->out, which the driver writes and empties with
 *	mta_tls_take_output().  mta_tls_handshake() advances the handshake as
 *	far as the buffered input allows: 0 when complete, MTA_EAGAIN when it
 *	needs more input (send t->out first), MTA_ETLS on failure (message in
 *	t->error).  Non-fatal GnuTLS errors (warning alerts) do not mean "need
 *	input": the handshake is resumed at once; an ignorable warning
 *	(unrecognized_name, no_renegotiation) is skipped, any other warning
 *	alert, or more than MTA_TLS_WARNINGS_MAX in a row, fails it.  mta_tls_read() decrypts buffered records into buf (0 and
 *	*got > 0; MTA_EAGAIN when no complete record is buffered; MTA_ECLOSED
 *	on the peer's close_notify); mta_tls_write() encrypts into t->out.
 *	mta_tls_bye() queues a close_notify.
 *
 *	mta_tls_creds_load() reads a PEM certificate chain and key for the
 *	server side (used by --check-config); mta_tls_creds_load_held() is
 *	what the daemon uses: the key stays in the key holder process.  mta_tls_describe() writes "TLSv1.3
 *	TLS_AES_256_GCM_SHA384" style text (protocol, then the IANA cipher
 *	suite name) for logs and the Received header.
 *
 * THREADS
 *	Loop thread.  Credentials are read-only after loading and may be
 *	shared by all sessions.
 *
 * OWNERSHIP
 *	struct mta_tls is caller-owned (embed it); mta_tls_free() releases the
 *	GnuTLS session and buffers.  Credentials: mta_tls_creds_free() after
 *	every session using them was freed.
 *
 * ERRORS
 *	GnuTLS codes are translated here: fatal ones to MTA_ETLS with the
 *	GnuTLS text in t->error, GNUTLS_E_AGAIN to MTA_EAGAIN.
 *
 * SECURITY
 *	Peer bytes are untrusted; the input buffer is bounded by what the
 *	driver feeds (it stops reading while plaintext is pending).
 *	GnuTLS's default priority string (system policy) is used.
 */
#ifndef MTA_TLS_H
#define MTA_TLS_H

#include "envelope.h"

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>

/* non-fatal handshake errors (warning alerts) tolerated in a row */
#define MTA_TLS_WARNINGS_MAX 8

struct mta_keyholder;

struct mta_tls_creds {
	gnutls_certificate_credentials_t cred;
	struct mta_keyholder *holder; /* the key's process, or NULL */
};

struct mta_tls {
	gnutls_session_t session;
	struct mta_buf in; /* received ciphertext */
	size_t in_off;	   /* consumed prefix of in */
	struct mta_buf out; /* ciphertext to send */
	bool handshake_done;
	const char *error; /* static GnuTLS text after MTA_ETLS */
};

int mta_tls_creds_load(const char *cert, const char *key,
		       struct mta_tls_creds **out, char *err, size_t errlen);
/* The same with the private key kept in the key holder (keyholder.h): the
 * certificate chain is read here, the key is an external GnuTLS key whose
 * operations are requests to the holder; this process never sees it. */
int mta_tls_creds_load_held(const char *cert, struct mta_keyholder *kh,
			    struct mta_tls_creds **out, char *err,
			    size_t errlen);
/* False when the private key's holder is gone (server credentials loaded
 * with mta_tls_creds_load_held()): STARTTLS must not be offered. */
bool mta_tls_creds_usable(const struct mta_tls_creds *c);
void mta_tls_creds_free(struct mta_tls_creds *c);

int mta_tls_server_init(struct mta_tls *t, const struct mta_tls_creds *c);

/* Client side.  mta_tls_creds_client() loads ca_file (PEM bundle) as the
 * WebPKI trust used by mta_tls_verify_webpki(); a missing or empty file
 * is an error (the caller decides whether that is fatal).
 * mta_tls_client_init() starts a client session sending sni (NULL: no
 * SNI).  No certificate check happens in the handshake itself: the driver
 * applies the destination's policy after it, with mta_tls_verify_webpki()
 * (chain to ca_file + RFC 6125 host name match) or the DANE matcher. */
int mta_tls_creds_client(const char *ca_file, struct mta_tls_creds **out,
			 char *err, size_t errlen);
int mta_tls_client_init(struct mta_tls *t, const struct mta_tls_creds *c,
			const char *sni);
/* 0 when the peer's chain verifies to the trust of c and names host;
 * MTA_ETLS otherwise, with the reason in why and the RFC 8460 result type
 * ("certificate-host-mismatch", "certificate-expired",
 * "certificate-not-trusted") in *rpt (static; rpt may be NULL).
 *
 * The one WebPKI check of the program (MTA-STS, level verify, a verified
 * relayhost): the name is matched against DNS-IDs only (RFC 6125 §6.4,
 * RFC 8461 §4.2).  A leaf with no subjectAltName dNSName fails even when
 * its subject CN names host.  (DANE-TA's name rules, RFC 7672 §3.2.3, are
 * dane.c's and do fall back to the CN.) */
int mta_tls_verify_webpki(struct mta_tls *t, const char *host,
			  const char **rpt, char *why, size_t len);
/* The certificate chain the peer sent (DER, leaf first), valid until the
 * session is freed; NULL and *n = 0 when there is none. */
const gnutls_datum_t *mta_tls_peer_chain(const struct mta_tls *t, size_t *n);
/* The DER of the certificate that issued the peer's leaf: from the
 * peer's chain, else from the trust of the session's credentials (call
 * after mta_tls_verify_webpki() passed).  0 and out (gnutls_free() its
 * data), or MTA_ENOTFOUND. */
int mta_tls_peer_issuer(const struct mta_tls *t, gnutls_datum_t *out);
void mta_tls_free(struct mta_tls *t);
int mta_tls_feed(struct mta_tls *t, const void *p, size_t n);
int mta_tls_handshake(struct mta_tls *t);
int mta_tls_read(struct mta_tls *t, void *buf, size_t n, size_t *got);
int mta_tls_write(struct mta_tls *t, const void *p, size_t n);
void mta_tls_bye(struct mta_tls *t);
/* Moves the pending ciphertext into *dst (which must be empty). */
void mta_tls_take_output(struct mta_tls *t, struct mta_buf *dst);
void mta_tls_describe(const struct mta_tls *t, char *buf, size_t n);

/* One certificate of a chain, for mtactl explain --connect: subject and
 * issuer DNs (RFC 4514 text, truncated), the SHA-256 of its
 * SubjectPublicKeyInfo in hex (what TLSA "3 1 1" / "2 1 1" publish) and
 * its validity (unix seconds).  0, or MTA_ETLS when der does not parse. */
struct mta_tls_certinfo {
	char subject[256];
	char issuer[256];
	char spki_sha256[65];
	int64_t not_before, not_after;
};
int mta_tls_cert_info(const gnutls_datum_t *der, struct mta_tls_certinfo *out);

#endif
