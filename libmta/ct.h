/*
 * ct.h - Certificate Transparency (RFC 6962) for WebPKI-validated chains:
 * the browser log list (log_list.json v3) and the check of the SCTs
 * embedded in a leaf certificate.
 *
 * DESCRIPTION
 *	mta_ct_loglist_parse() parses a log list in the JSON format browsers
 *	publish (schema v3: "operators": [{"name", "logs": [{"description",
 *	"log_id", "key", "state": {"<state>": {"timestamp"}},
 *	"temporal_interval": {"start_inclusive", "end_exclusive"}}]}],
 *	"log_list_timestamp").  Keys are base64 DER SubjectPublicKeyInfo
 *	(ECDSA P-256 or RSA); log ids are base64 of 32 bytes and must be the
 *	SHA-256 of the key (a list where they differ is refused).  Logs of an
 *	operator in "tiled_logs" are read the same way.  Unknown members are
 *	ignored.  mta_ct_loglist_load() reads and parses a file.
 *	mta_ct_loglist_free() frees a list.
 *
 *	mta_ct_check() checks the SCTs embedded in a leaf (X.509 extension
 *	1.3.6.1.4.1.11129.2.4.2) against a list: each SCT names a log of the
 *	list, the log's state is usable, qualified or readonly and began no
 *	later than the SCT's timestamp, the leaf's notAfter lies in the log's
 *	temporal interval (when it has one), the timestamp is not after now,
 *	and the signature verifies with the log's key over the RFC 6962 §3.2
 *	precert entry: SHA-256 of the issuer's SubjectPublicKeyInfo and the
 *	leaf's TBSCertificate with the SCT extension removed.  The verdict:
 *	OK when at least need SCTs verify and they come from at least two
 *	distinct operators (the browser rule); MISSING when the leaf has no
 *	SCT at all, or fewer than need SCTs and none failed; INVALID when
 *	fewer than need verify and at least one failed (unknown log, bad
 *	signature, log state, timestamp); ONE_OPERATOR when enough verify
 *	but all from one operator.  The result also counts the SCTs and says
 *	why in text.
 *
 *	mta_ct_precert_tbs() is the TBS rebuilding step alone: the
 *	TBSCertificate of a DER certificate without the SCT extension (the
 *	[3] wrapper is dropped when no extension is left).  It walks the DER
 *	itself (a bounded walker: definite lengths of at most 4 bytes,
 *	single-byte tags, every length checked against its parent) instead
 *	of asking GnuTLS, which cannot re-encode a certificate without one
 *	of its extensions.
 *
 *	mta_ct_parse_scts() splits the extension's SCT list (the TLS-encoded
 *	SignedCertificateTimestampList inside the extension's OCTET STRING)
 *	into SCTs.  GnuTLS's gnutls_x509_ext_ct_import_scts() checks the same
 *	list (a list it refuses is INVALID), but its accessor returns the
 *	timestamp in seconds and not the SCT extensions, both of which the
 *	signature covers: the fields are read here.
 *
 * THREADS
 *	Any.  A loaded list is read-only and may be shared by threads; a new
 *	one replaces it on reload (the old one freed when no session uses
 *	it).
 *
 * OWNERSHIP
 *	mta_ct_loglist_parse()/load() give the caller a list to free with
 *	mta_ct_loglist_free().  struct mta_ct_sct points into the caller's
 *	buffer.  mta_ct_precert_tbs() writes into a caller buffer.
 *
 * ERRORS
 *	Parsers: 0, MTA_ECONFIG (a list that does not parse or violates the
 *	schema, text in err), MTA_ECORRUPT (DER or TLS structure), -ENOMEM,
 *	MTA_ETOOBIG.  mta_ct_check() has no error: every failure is a verdict.
 *
 * SECURITY
 *	The certificate and its SCTs come from the peer; the log list from
 *	the operator's file.  Limits: list file MTA_CT_LIST_MAX bytes, JSON
 *	depth MTA_CT_JSON_DEPTH, MTA_CT_LOGS_MAX logs, MTA_CT_SCTS_MAX SCTs
 *	per certificate, certificates up to MTA_CT_CERT_MAX bytes.  An SCT
 *	signed by a log the list does not name never counts.
 *
 * STANDARDS
 *	RFC 6962 §3.2 (SCT, precert entry, TBS without the SCT extension),
 *	§3.3 (embedded SCT list); Chrome CT policy (two operators); RFC 8259
 *	(JSON, the subset the list uses: UTF-8, \u escapes).
 *
 * CAVEATS
 *	Only embedded SCTs (not the TLS extension or OCSP).  A retired,
 *	rejected or pending log never counts, even for SCTs issued before its
 *	retirement (stricter than browsers).  A precert issued by a dedicated
 *	precertificate signing certificate is not supported (the issuer key
 *	hash is that of the leaf's issuer).
 */
#ifndef MTA_CT_H
#define MTA_CT_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_CT_LIST_MAX (8u << 20)
#define MTA_CT_JSON_DEPTH 16
#define MTA_CT_LOGS_MAX 1024
#define MTA_CT_SCTS_MAX 16
#define MTA_CT_CERT_MAX 65536
#define MTA_CT_NAME_MAX 128

#define MTA_CT_STATE_MAP(X)                                                   \
	X(NONE, "none")                                                       \
	X(PENDING, "pending")                                                 \
	X(QUALIFIED, "qualified")                                             \
	X(USABLE, "usable")                                                   \
	X(READONLY, "readonly")                                               \
	X(RETIRED, "retired")                                                 \
	X(REJECTED, "rejected")

/* NOT_CHECKED: CT does not apply (off, DANE, not a WebPKI verifier) */
#define MTA_CT_VERDICT_MAP(X)                                                 \
	X(NOT_CHECKED, "not-checked")                                         \
	X(OK, "ok")                                                           \
	X(MISSING, "missing")                                                 \
	X(INVALID, "invalid")                                                 \
	X(ONE_OPERATOR, "one-operator")

#define MTA_CT_E(e, name) MTA_CT_STATE_##e,
enum mta_ct_state { MTA_CT_STATE_MAP(MTA_CT_E) };
#undef MTA_CT_E
#define MTA_CT_E(e, name) MTA_CT_##e,
enum mta_ct_verdict { MTA_CT_VERDICT_MAP(MTA_CT_E) };
#undef MTA_CT_E

struct mta_ct_log {
	uint8_t id[32];
	gnutls_pubkey_t key;
	size_t op;		 /* index into operators */
	enum mta_ct_state state;
	int64_t state_ms;	 /* the state's timestamp, ms since epoch */
	int64_t ti_start_ms;	 /* temporal interval; both 0: none */
	int64_t ti_end_ms;
	char desc[MTA_CT_NAME_MAX];
};

struct mta_ct_loglist {
	struct mta_ct_log *logs;
	size_t nlogs;
	char (*ops)[MTA_CT_NAME_MAX]; /* operator names */
	size_t nops;
	int64_t list_ms; /* log_list_timestamp, 0 when absent */
};

/* One SCT as found in the list (pointers into the caller's buffer) */
struct mta_ct_sct {
	uint8_t version;
	const uint8_t *log_id; /* 32 bytes */
	uint64_t timestamp;    /* ms */
	const uint8_t *ext;
	size_t ext_len;
	uint8_t hash_alg, sig_alg;
	const uint8_t *sig;
	size_t sig_len;
};

struct mta_ct_result {
	enum mta_ct_verdict verdict;
	unsigned nsct;	   /* SCTs found */
	unsigned nvalid;   /* that verify */
	unsigned nops;	   /* distinct operators among the valid ones */
	char why[256];	   /* evidence, e.g. "2 SCTs, 1 valid: sct 2: ..." */
};

int mta_ct_loglist_parse(const char *json, size_t len,
			 struct mta_ct_loglist **out, char *err,
			 size_t errlen);
int mta_ct_loglist_load(const char *path, struct mta_ct_loglist **out,
			char *err, size_t errlen);
void mta_ct_loglist_free(struct mta_ct_loglist *l);

int mta_ct_parse_scts(const uint8_t *p, size_t n, struct mta_ct_sct *out,
		      size_t max, size_t *nout);
int mta_ct_precert_tbs(const uint8_t *cert, size_t n, uint8_t *out,
		       size_t cap, size_t *outlen);

/* leaf and issuer are DER; need >= 1; now in ms since the epoch */
void mta_ct_check(const struct mta_ct_loglist *l, const gnutls_datum_t *leaf,
		  const gnutls_datum_t *issuer, unsigned need, int64_t now_ms,
		  struct mta_ct_result *r);

const char *mta_ct_verdict_name(enum mta_ct_verdict v);

#endif
