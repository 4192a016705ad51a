/*
 * tlsrpt.h - SMTP TLS reporting (RFC 8460): the counters of a day as a
 * report, its JSON, gzip and mail form, and the _smtp._tls record.
 *
 * DESCRIPTION
 *	Delivery (delivery_conn.c) counts every session outcome in the
 *	spool's tlsrpt database under the key
 *	  "<YYYY-MM-DD> <policy domain> <policy type> <result type>
 *	   <policy id> <mx host> <receiving ip> <sending ip>"
 *	(policy type "sts", "tlsa" or "no-policy-found"; result type an RFC
 *	8460 §4.3 name or "successful-session"; "-" for an unknown field)
 *	and the policy's text (one policy-string element per line) under
 *	"P <day> <policy id>".  The reporter marks a day reported for a
 *	domain with the counter "S <day> <domain>".
 *
 *	mta_tlsrpt_parse_record() checks one _smtp._tls TXT record
 *	(RFC 8460 §3) and fills the rua list (mailto: and https: URIs,
 *	%-decoded; others ignored).  0, or MTA_EPROTO when the record is not
 *	a TLSRPTv1 record with at least one usable rua.
 *
 *	mta_tlsrpt_collect() reads the counters of one day and domain from
 *	the spool into *rep (policies, summary, failure details);
 *	mta_tlsrpt_domains() lists the (day, domain) pairs with counters and
 *	whether each was reported.  mta_tlsrpt_json() writes the report
 *	(§4.4 schema) into a new NUL-terminated string; mta_tlsrpt_gzip()
 *	compresses it (§5.2); mta_tlsrpt_mail() writes the §5.3 mail
 *	(multipart/report; report-type="tlsrpt", TLS-Report-Domain,
 *	TLS-Report-Submitter, TLS-Required: No, the gzip attachment).
 *
 * THREADS
 *	Any; collect and domains open one short read transaction.
 *
 * OWNERSHIP
 *	Strings returned through char ** and uint8_t ** are malloc'ed and
 *	the caller's to free; mta_tlsrpt_report_free() frees what collect
 *	filled.
 *
 * ERRORS
 *	-ENOMEM, MTA_EPROTO (record), spool errors from collect.
 *
 * SECURITY
 *	The TXT record is untrusted (DNS): bounded to MTA_TLSRPT_RUA_MAX
 *	URIs of at most 511 bytes each; a decoded mailto: address must be
 *	local@domain of printable ASCII without CR/LF, an https: URI must
 *	have no control bytes or blanks.  Everything written into JSON is
 *	escaped.
 *
 * STANDARDS
 *	RFC 8460 §3 (record, rua), §4 (report, result types), §5.1-5.3
 *	(filename, gzip, mail).  RFC 3339 date-times.
 *
 * CAVEATS
 *	A counter key longer than the spool's 500-byte key limit (very long
 *	domain and host names together) is cut and not reported.
 */
#ifndef MTA_TLSRPT_H
#define MTA_TLSRPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mta_spool;

#define MTA_TLSRPT_RUA_MAX 8

struct mta_tlsrpt_rua {
	size_t n;
	struct {
		bool https; /* else mailto */
		char uri[512]; /* https: the URI; mailto: the address */
	} u[MTA_TLSRPT_RUA_MAX];
};

struct mta_tlsrpt_failure {
	char result[48];
	char mx[256];
	char rip[48], sip[48];
	uint64_t count;
};

struct mta_tlsrpt_policy {
	char ptype[24];
	char pid[24];
	char *text; /* policy-string lines, '\n'-separated, or NULL */
	uint64_t ok, failed;
	char mxs[8][256]; /* mx-host of no-policy/tlsa entries */
	size_t nmx;
	struct mta_tlsrpt_failure *f;
	size_t nf;
};

struct mta_tlsrpt_report {
	char day[11];	   /* YYYY-MM-DD */
	char domain[256];
	struct mta_tlsrpt_policy *p;
	size_t np;
};

struct mta_tlsrpt_meta {
	const char *organization;
	const char *contact;
	const char *submitter; /* the sending domain */
	const char *report_id; /* unique */
};

struct mta_config;
/* *m from [tlsrpt] (organization default: the submitter; contact
 * default: postmaster@<submitter>) and the report id
 * "<day>.<domain>@<submitter>" (written into id); m borrows cfg, id
 * and contact. */
void mta_tlsrpt_meta_from_config(const struct mta_config *cfg,
				 const char *day, const char *domain,
				 struct mta_tlsrpt_meta *m, char *id,
				 size_t idlen, char *contact, size_t clen);
int mta_tlsrpt_parse_record(const char *txt, size_t len,
			    struct mta_tlsrpt_rua *out);
int mta_tlsrpt_collect(struct mta_spool *sp, const char *day,
		       const char *domain, struct mta_tlsrpt_report *rep);
void mta_tlsrpt_report_free(struct mta_tlsrpt_report *rep);
int mta_tlsrpt_domains(struct mta_spool *sp,
		       int (*cb)(void *ud, const char *day,
				 const char *domain, bool reported),
		       void *ud);
int mta_tlsrpt_json(const struct mta_tlsrpt_report *rep,
		    const struct mta_tlsrpt_meta *m, char **out);
int mta_tlsrpt_gzip(const char *in, size_t len, uint8_t **out,
		    size_t *outlen);
/* The §5.1 file name: "<submitter>!<domain>!<begin>!<end>.json.gz". */
void mta_tlsrpt_filename(const struct mta_tlsrpt_report *rep,
			 const char *submitter, char *out, size_t len);
int mta_tlsrpt_mail(const struct mta_tlsrpt_report *rep,
		    const struct mta_tlsrpt_meta *m, const char *to,
		    const char *msgid_host, const uint8_t *gz, size_t gzlen,
		    int64_t now, char **out, size_t *outlen);

#endif
