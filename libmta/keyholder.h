/*
 * keyholder.h - the key-holder child: the only process that holds the
 * inbound TLS private key (and the relayhost credentials).
 *
 * DESCRIPTION
 *	mta_keyholder_start() forks, before the privilege drop, a small
 *	child connected by a SOCK_SEQPACKET socketpair.  The child reads
 *	key_file itself (the parent never reads it), keeps a copy of the
 *	relayhost user and password given (the caller wipes its own copy
 *	right after), sets PR_SET_PDEATHSIG(SIGKILL), drops to pd's user
 *	keeping one capability, CAP_DAC_READ_SEARCH (so a reload can read
 *	a key that only root may read), closes every other descriptor,
 *	installs the MTA_SANDBOX_HOLDER seccomp list and Landlock allowing
 *	nothing but reading key_file and auth_file, then answers requests
 *	until its socket reports EOF (the daemon is gone).
 *
 *	Requests are typed records, one per datagram, checked for type and
 *	length before use (header: type, sign algorithm, flags, length; then
 *	at most MTA_KEYHOLDER_MAX bytes): SIGN_DATA and SIGN_HASH (GnuTLS
 *	sign algorithm and flags as given to the external key callbacks),
 *	DECRYPT (RSA key exchange), AUTH_PLAIN (the SASL PLAIN response,
 *	base64 of "\0user\0pass", so the password's bytes never exist in
 *	the parent), RELOAD (SIGHUP: key_file and auth_file read again;
 *	all or nothing, the old key and password stay on failure; a
 *	handshake of a session begun before the reload is then signed with
 *	the new key).  Anything else is answered with an error and otherwise
 *	ignored.
 *
 *	mta_keyholder_privkey() gives the parent a gnutls_privkey_t imported
 *	with gnutls_privkey_import_ext4(): its sign and decrypt callbacks
 *	make a synchronous round trip to the holder.  mta_keyholder_auth()
 *	asks for the AUTH PLAIN blob.  mta_keyholder_alive() says whether
 *	the holder still answers: false once a request found it gone, or
 *	when its end of the socket is closed (a poll with no wait, cheap
 *	enough for every new session); the death is logged once as
 *	event=keyholder_died.  After it died every request fails
 *	(MTA_ETLS / -EPIPE), inbound sessions no longer offer STARTTLS
 *	(mta_tls_creds_usable()) and a handshake already under way fails
 *	cleanly.
 *
 * THREADS
 *	Any loop thread: the callbacks run inside gnutls_handshake on the
 *	thread of the session (server.threads); a mutex keeps one round
 *	trip (and mta_keyholder_alive()'s look at the socket) at a time.
 *
 * OWNERSHIP
 *	mta_keyholder_free() closes the socket (the holder exits on EOF)
 *	and reaps it; the privkey given out must be freed first.
 *
 * ERRORS
 *	0 or negative (err.h); start-up errors also as text in err.
 *
 * SECURITY
 *	Cost: a signature is one blocking round trip over a local socket
 *	(tens of microseconds) plus the signing itself, which the loop would
 *	have spent anyway; the loop thread waits for it during a handshake.
 *	The holder trusts nothing it receives: sizes are checked against
 *	the datagram, unknown types refused.  An exploit of the daemon can
 *	still ask the holder to sign (as it could with the key in hand) but
 *	cannot take the key away.
 */
#ifndef MTA_KEYHOLDER_H
#define MTA_KEYHOLDER_H

#include "privdrop.h"

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define MTA_KEYHOLDER_MAX 16384 /* request / answer payload, bytes */

struct mta_keyholder;

int mta_keyholder_start(const char *key_file, const char *auth_file,
			const char *auth_user, const char *auth_pass,
			const struct mta_privdrop *pd,
			struct mta_keyholder **out, char *err, size_t errlen);
/* An external key for the public key of cert_file's first certificate. */
int mta_keyholder_privkey(struct mta_keyholder *kh, gnutls_pubkey_t pub,
			  gnutls_privkey_t *out);
/* The AUTH PLAIN argument (base64, NUL-terminated) into buf. */
int mta_keyholder_auth(struct mta_keyholder *kh, char *buf, size_t len);
/* SIGHUP: the holder reads key_file and auth_file again (the paths of
 * mta_keyholder_start()); the relayhost user name (not secret, "" when
 * none) into user.  On failure the holder keeps what it had. */
int mta_keyholder_reload(struct mta_keyholder *kh, char *user, size_t len);
bool mta_keyholder_alive(struct mta_keyholder *kh);
pid_t mta_keyholder_pid(const struct mta_keyholder *kh);
void mta_keyholder_free(struct mta_keyholder *kh);

#endif
