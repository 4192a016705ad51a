/*
 * dkim.h - DKIM signing (RFC 6376): RSA-SHA256 and Ed25519-SHA256
 * (RFC 8463), relaxed/relaxed, for the sender domains of a key table.
 *
 * DESCRIPTION
 *	mta_dkim_keys_load() reads the key table (dkim.keys_file): one key
 *	per line, "domain selector keyfile [rsa|ed25519]", '#' comments and
 *	blank lines ignored.  keyfile is a PEM private key (PKCS#1 or PKCS#8
 *	RSA of at least 1024 bits, or PKCS#8 Ed25519); a relative path is
 *	taken from the table's directory.  The algorithm is read from the
 *	key; the optional fourth field must agree with it.  One domain
 *	appears once.  The key file's bytes are wiped once imported.  It is
 *	the only function that reads private keys (see CAVEATS).
 *	mta_dkim_keys_find() looks a domain up (case-insensitive, exact: a
 *	parent's key does not sign for a subdomain).  mta_dkim_keys_count()
 *	counts the table; mta_dkim_keys_free() frees it.
 *
 *	mta_dkim_sign_new() starts signing one message; the message (header
 *	block, empty line, body: the stored form, CRLF lines) is given in
 *	chunks of any size to mta_dkim_sign_feed().  The signing domain is
 *	the one given, or, for domain NULL, the domain of the message's
 *	first From address (so that d= aligns with From for DMARC).  Once
 *	the header block is complete the domain is looked up: without a key
 *	the rest of the message is skipped (no hashing), and
 *	mta_dkim_sign_finish() says MTA_ENOTFOUND.  The body is canonicalised
 *	(relaxed, RFC 6376 3.4.4) and hashed as it comes, so a body of any
 *	size needs no memory.  mta_dkim_sign_finish() returns the complete
 *	header field to put in front of the message: "DKIM-Signature: v=1;
 *	a=rsa-sha256|ed25519-sha256; c=relaxed/relaxed; d=; s=; t=; h=; bh=;
 *	b=" folded at 78 columns, CRLF-terminated.  mta_dkim_sign_domain()
 *	names the domain looked up (empty before the header block ended or
 *	when the message has no From address), for logging.
 *
 *	Signed header fields (h=): every instance present of From, To, Cc,
 *	Subject, Date, Message-ID, Reply-To, MIME-Version, Content-Type,
 *	Content-Transfer-Encoding, In-Reply-To, References, TLS-Report-Domain,
 *	TLS-Report-Submitter and TLS-Required (RFC 8460 3, RFC 8689 5), bottom
 *	up, and From once more than present (over-signing: a From added in
 *	transit breaks the signature).  A message without a From field is
 *	not signed (MTA_EPROTO: RFC 6376 5.4 requires From to be signed).
 *	No l= (body length) tag is ever written (RPT-43).
 *
 *	mta_dkim_sign_buffer() signs a complete message in memory with the
 *	key of domain (or of its From domain, domain NULL): the TLSRPT
 *	report mail's entry point (RFC 8460 3, RPT-43).
 *
 * THREADS
 *	Any.  A key table is read-only after loading and may be shared by
 *	threads (GnuTLS private keys sign concurrently); a signing context
 *	belongs to one thread.
 *
 * OWNERSHIP
 *	The table is the caller's (mta_dkim_keys_free()).  A signing context
 *	borrows the table until mta_dkim_sign_free().  The header from
 *	mta_dkim_sign_finish()/mta_dkim_sign_buffer() is malloc'd; the
 *	caller frees it.
 *
 * ERRORS
 *	mta_dkim_keys_load(): 0, MTA_ECONFIG (text in err: the file and line),
 *	-ENOMEM.  Signing: MTA_ENOTFOUND (no key for the domain, or no From
 *	domain), MTA_EPROTO (no From field), MTA_ETOOBIG (header block over
 *	MTA_DKIM_HEADER_MAX), MTA_ETLS (GnuTLS refused to sign), -ENOMEM.
 *	Errors are sticky: a context does nothing after its first.
 *
 * SECURITY
 *	The message is untrusted: the header block is held up to
 *	MTA_DKIM_HEADER_MAX bytes (beyond it the message is not signed);
 *	the body is streamed.  Private keys never leave this module, are
 *	never logged, and the key files' contents are wiped after import.
 *	Whether a message may be signed at all (relay-allowed or
 *	authenticated client) is the caller's decision (inbound.c).
 *
 * STANDARDS
 *	RFC 6376 3.4.2 (relaxed header), 3.4.4 (relaxed body; an empty body
 *	hashes as the empty string), 3.5 (tags), 3.7 (hash computation),
 *	5.4 (header selection, over-signing 8.15); RFC 8463 3 (Ed25519
 *	signs the SHA-256 of the header data); RFC 8301 (rsa-sha256 only,
 *	keys of 1024 bits or more); RFC 8460 3 (report mail signed, no l=).
 *
 * CAVEATS
 *	The keys live in the process that calls mta_dkim_keys_load(); the
 *	key-holder child of DESIGN.md will take this function over and sign
 *	through a message instead (the signing context then sends the two
 *	hashes).  Simple canonicalisation, verification and ARC are not
 *	implemented.  The canonical form of header fields that are not
 *	valid UTF-8 or contain bare CR/LF is taken byte for byte.
 */
#ifndef MTA_DKIM_H
#define MTA_DKIM_H

#include <stddef.h>
#include <stdint.h>

#define MTA_DKIM_HEADER_MAX (256 * 1024) /* header block held for h= */
#define MTA_DKIM_KEYS_MAX 10000		 /* lines of the key table */

struct mta_dkim_keys;
struct mta_dkim_sign;

int mta_dkim_keys_load(const char *path, struct mta_dkim_keys **out,
		       char *err, size_t errlen);
/* The key's algorithm, "rsa" or "ed25519", and selector, or NULL. */
const char *mta_dkim_keys_find(const struct mta_dkim_keys *k,
			       const char *domain, const char **selector);
size_t mta_dkim_keys_count(const struct mta_dkim_keys *k);
void mta_dkim_keys_free(struct mta_dkim_keys *k);

/* now: Unix seconds for t=, or negative: no t= tag. */
int mta_dkim_sign_new(const struct mta_dkim_keys *keys, const char *domain,
		      int64_t now, struct mta_dkim_sign **out);
int mta_dkim_sign_feed(struct mta_dkim_sign *s, const void *p, size_t n);
int mta_dkim_sign_finish(struct mta_dkim_sign *s, char **hdr, size_t *len);
const char *mta_dkim_sign_domain(const struct mta_dkim_sign *s);
void mta_dkim_sign_free(struct mta_dkim_sign *s);

int mta_dkim_sign_buffer(const struct mta_dkim_keys *keys,
			 const char *domain, const void *msg, size_t len,
			 int64_t now, char **hdr, size_t *hdrlen);


#endif
