/*
 * auth.h - SMTP AUTH for the submission listeners: the users file, salted
 * slow password hashes (yescrypt), and the per-client failure limiter.
 *
 * DESCRIPTION
 *	The users file (auth.users_file) holds one "user:hash" entry per line;
 *	blank lines and lines starting with '#' are ignored.  user is 1..255
 *	printable ASCII octets without ':' or blanks; hash is a crypt(5)
 *	string made by mta_auth_hash(): yescrypt ("$y$..."), from libxcrypt's
 *	crypt_r(), with a 128-bit random salt and libxcrypt's default cost.
 *	Why yescrypt: it is memory-hard like Argon2, the library (libcrypt1)
 *	is already in every Debian system and in the runtime image, and the
 *	entries have the same format as /etc/shadow, so operators can check
 *	them with the usual tools.  Other crypt(5) prefixes that libxcrypt
 *	accepts as strong ("$gy$", "$7$", "$2b$", "$6$") verify too; weak or
 *	unknown ones make the load fail.
 *
 *	mta_auth_users_load() reads and checks the whole file into an
 *	immutable, reference-counted table (refs = 1).  mta_auth_users_ref()
 *	and mta_auth_users_unref() move the count; the last unref frees it,
 *	wiping the hashes.
 *
 *	mta_auth_verify() checks user and password against the table: the
 *	slow part, run it off the loop thread (uv_queue_work).  An unknown
 *	user costs one hash too (against a fixed dummy setting) so the time
 *	taken does not tell which users exist.  Comparison is constant-time.
 *
 *	mta_auth_hash() makes a new hash of a password (mtactl passwd).
 *	mta_auth_users_file_set() replaces or adds user's entry in a users
 *	file, keeping every other line: write a temporary file beside it,
 *	fsync, rename over the old one, fsync the directory.  The new file is
 *	mode 0640 (the old file's mode and group when it existed).
 *
 *	The limiter (struct mta_auth_limit) counts failed AUTH per client key
 *	(an IPv4 address or an IPv6 /64, 16 bytes).  mta_auth_limit_check()
 *	says whether the client may try now (false after max failures, until
 *	the window since the last failure has passed); mta_auth_limit_fail()
 *	records a failure and returns the delay, in milliseconds, before the
 *	"535" may be sent: base << (failures - 1), capped at 30 s;
 *	mta_auth_limit_ok() forgets the client's failures.  The table holds
 *	MTA_AUTH_LIMIT_SLOTS clients; when full, the entry whose last failure
 *	is oldest is reused.
 *
 * THREADS
 *	mta_auth_verify() and mta_auth_hash(): any thread (crypt_r, no
 *	shared state).  The table's reference count: any thread (atomic:
 *	inbound sessions on every loop thread hold references).  The
 *	limiter: one thread at a time (inbound.c shares one between its loop
 *	threads under a mutex).  A table is never modified after load, so a worker may
 *	read it while the loop holds a reference.
 *
 * OWNERSHIP
 *	Tables: reference-counted, see above.  *out set only on success.
 *
 * ERRORS
 *	mta_auth_users_load(): 0, MTA_ECONFIG (one line in err:
 *	"<file>:<line>: <why>") or -errno (err: "<file>: <strerror>").
 *	mta_auth_verify(): 0 match, MTA_ENOTFOUND no such user or wrong
 *	password (the caller cannot tell which), -ENOMEM.
 *	mta_auth_hash(): 0, or -errno / MTA_EAGAIN when no salt could be made.
 *	mta_auth_users_file_set(): 0 or -errno; MTA_ECONFIG for a user name
 *	that cannot be stored.
 *
 * SECURITY
 *	Passwords are never logged, never stored in clear, and wiped from the
 *	buffers this module uses (explicit_bzero).  The file is the
 *	operator's and trusted, but read strictly (line length, name syntax).
 *	Memory: one crypt_data (about 32 KiB) per verification plus
 *	yescrypt's working memory.
 *
 * STANDARDS
 *	crypt(5) hash strings; the SASL side is smtp_server.h (RFC 4954,
 *	RFC 4616 PLAIN, LOGIN).
 */
#ifndef MTA_AUTH_H
#define MTA_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_AUTH_NAME_MAX 255	  /* user name octets */
#define MTA_AUTH_PASS_MAX 255	  /* password octets */
#define MTA_AUTH_LIMIT_SLOTS 4096 /* clients the limiter remembers */

struct mta_auth_users;

int mta_auth_users_load(const char *path, struct mta_auth_users **out,
			char *err, size_t errlen);
struct mta_auth_users *mta_auth_users_ref(struct mta_auth_users *u);
void mta_auth_users_unref(struct mta_auth_users *u);

int mta_auth_verify(const struct mta_auth_users *u, const char *user,
		    const char *pass);
int mta_auth_hash(const char *pass, char *out, size_t outlen);
bool mta_auth_name_ok(const char *user);
int mta_auth_users_file_set(const char *path, const char *user,
			    const char *hash);

struct mta_auth_limit_slot {
	uint8_t key[16];
	uint64_t last_ms; /* last failure; 0 = free */
	unsigned failures;
};

struct mta_auth_limit {
	unsigned max_failures; /* then refused until the window passed */
	uint64_t base_delay_ms;
	uint64_t window_ms;
	struct mta_auth_limit_slot slot[MTA_AUTH_LIMIT_SLOTS];
};

void mta_auth_limit_init(struct mta_auth_limit *l, unsigned max_failures,
			 uint64_t base_delay_ms, uint64_t window_ms);
bool mta_auth_limit_check(struct mta_auth_limit *l, const uint8_t key[16],
			  uint64_t now_ms);
uint64_t mta_auth_limit_fail(struct mta_auth_limit *l, const uint8_t key[16],
			     uint64_t now_ms);
void mta_auth_limit_ok(struct mta_auth_limit *l, const uint8_t key[16]);

#endif
