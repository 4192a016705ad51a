/*
 * envelope.h - the SMTP envelope of one message, in memory and on disk.
 *
 * DESCRIPTION
 *	struct mta_envelope holds what the SMTP transaction said about a
 *	message (reverse-path, MAIL parameters, recipients with their RCPT
 *	parameters) plus what the session knew (client address, HELO name, TLS
 *	description, arrival time) and, per recipient, the delivery state the
 *	scheduler keeps (attempts, next attempt, last response, relay).
 *
 *	mta_envelope_init() zeroes one; mta_envelope_free() releases every
 *	string it owns and leaves it initialised (reusable).
 *	mta_envelope_add_rcpt() appends a recipient copying addr (and the
 *	optional raw ORCPT / NOTIFY values) and returns it, or NULL on ENOMEM.
 *	mta_envelope_set_str() replaces one owned string field with a copy.
 *
 *	mta_envelope_encode() serialises an envelope into a caller-provided
 *	growable buffer as a versioned record (magic "MTAE", version, length,
 *	fields); mta_envelope_decode() parses one back, checking magic,
 *	version and every length, and fails distinctly: MTA_ECORRUPT on bad
 *	magic or truncation, MTA_ESCHEMA on an unknown version.
 *
 *	Record layout, integers big-endian: "MTAE", u16 version (4), u32
 *	total length (header included; must equal n), then sender, envid,
 *	ret_raw, u8 ret, u8 body, u8 smtputf8, u64 declared_size, helo,
 *	client_addr, tls, i64 arrival_us, u64 size, u32 nrcpt, and per
 *	recipient addr, orcpt, notify_raw, u32 notify, u8 state, u32
 *	attempts, i64 next_attempt_us, last_response, relay, evidence (v2+),
 *	u8 flags (v3+); then u8 tlsreq (v4; older records read as NONE).  A string is a
 *	u32 length and its bytes; 0xffffffff encodes NULL.  encode appends
 *	to out (on failure out is as before: -ENOMEM, MTA_ETOOBIG).  decode
 *	also fails with MTA_ECORRUPT on trailing bytes, a NUL inside a
 *	string, a NULL sender or recipient address, an out-of-range enum, or
 *	a recipient count the record cannot hold; with -ENOMEM.  It sets
 *	*out only on success, without freeing what out held.
 *
 * THREADS
 *	Any; an envelope belongs to one thread at a time (the loop thread
 *	hands it to the writer thread for a commit and gets it back).
 *
 * SECURITY
 *	decode treats the record as untrusted: every length is checked
 *	against the bytes left before anything is allocated.
 *
 * OWNERSHIP
 *	Every char * in the structs below is owned by the envelope (malloc'd)
 *	or NULL.  Raw DSN values are stored exactly as the client sent them so
 *	they can be relayed byte for byte (RFC 3461 §5.2.1).
 */
#ifndef MTA_ENVELOPE_H
#define MTA_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* NOTIFY bits (RFC 3461 §4.1); 0 = not given */
#define MTA_NOTIFY_NEVER 0x1u
#define MTA_NOTIFY_SUCCESS 0x2u
#define MTA_NOTIFY_FAILURE 0x4u
#define MTA_NOTIFY_DELAY 0x8u

enum mta_ret { MTA_RET_NONE = 0, MTA_RET_FULL = 1, MTA_RET_HDRS = 2 };
enum mta_body_type {
	MTA_BODY_NONE = 0,
	MTA_BODY_7BIT = 1,
	MTA_BODY_8BITMIME = 2
};

/* RFC 8689: NONE as configured; REQUIRETLS the MAIL parameter was given
 * (over TLS); OPTIONAL a "TLS-Required: No" header from a client allowed
 * to relay (opportunistic TLS, DANE and MTA-STS ignored). */
enum mta_tlsreq {
	MTA_TLSREQ_NONE = 0,
	MTA_TLSREQ_REQUIRETLS = 1,
	MTA_TLSREQ_OPTIONAL = 2
};

enum mta_rcpt_state {
	MTA_RCPT_QUEUED = 0,   /* waiting for (first or next) attempt */
	MTA_RCPT_SENT = 1,     /* a 2xx was received: done */
	MTA_RCPT_DEFERRED = 2, /* last attempt failed temporarily */
	MTA_RCPT_BOUNCED = 3,  /* failed for good, DSN generated */
};

struct mta_rcpt {
	char *addr;	 /* mailbox without <>; case as given */
	char *orcpt;	 /* raw ORCPT value ("rfc822;b@y") or NULL */
	char *notify_raw; /* raw NOTIFY value or NULL */
	unsigned notify; /* MTA_NOTIFY_* bits */
	/* delivery state, kept by the scheduler */
	enum mta_rcpt_state state;
	uint32_t attempts;
	int64_t next_attempt_us; /* unix microseconds; 0 = now */
	char *last_response;	 /* last reply or reason, or NULL */
	char *relay;		 /* host[ip]:port of last attempt, or NULL */
	char *evidence; /* last attempt's policy decision: "tls=... auth=..." */
	uint8_t flags;	/* MTA_RCPT_F_* */
};

/* A "delayed" DSN was sent for this recipient (delivery.delay_warning):
 * never a second one. */
#define MTA_RCPT_F_DELAY_WARNED 0x01

struct mta_envelope {
	char *sender;	    /* reverse-path mailbox; "" = null sender */
	char *envid;	    /* raw ENVID xtext or NULL */
	char *ret_raw;	    /* raw RET value or NULL */
	enum mta_ret ret;
	enum mta_body_type body;
	bool smtputf8;	    /* SMTPUTF8 given on MAIL */
	uint64_t declared_size; /* SIZE= value, 0 = none */
	char *helo;	    /* HELO/EHLO argument */
	char *client_addr;  /* printable client IP */
	char *tls;	    /* "TLSv1.3 TLS_AES_256_GCM_SHA384" or NULL */
	int64_t arrival_us; /* unix microseconds, set when queued */
	uint64_t size;	    /* stored body size in bytes */
	enum mta_tlsreq tlsreq; /* RFC 8689 */
	struct mta_rcpt *rcpts;
	size_t nrcpt;
	size_t rcpt_cap;
};

struct mta_buf {
	uint8_t *data; /* may move on any append */
	size_t len;
	size_t cap;
};

void mta_envelope_init(struct mta_envelope *e);
void mta_envelope_free(struct mta_envelope *e);
struct mta_rcpt *mta_envelope_add_rcpt(struct mta_envelope *e,
				       const char *addr, const char *orcpt,
				       const char *notify_raw, unsigned notify);
int mta_envelope_set_str(char **field, const char *value);

/* Growable byte buffer; 0 or -ENOMEM. mta_buf_free leaves it empty. */
int mta_buf_append(struct mta_buf *b, const void *p, size_t n);
void mta_buf_free(struct mta_buf *b);

int mta_envelope_encode(const struct mta_envelope *e, struct mta_buf *out);
int mta_envelope_decode(const uint8_t *p, size_t n, struct mta_envelope *out);

#endif
