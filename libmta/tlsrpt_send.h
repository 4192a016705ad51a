/*
 * tlsrpt_send.h - the TLSRPT reporter: sends the reports of past days to
 * the domains that publish _smtp._tls (RFC 8460), by https POST and by
 * mail, on the libuv loop.
 *
 * DESCRIPTION
 *	mta_tlsrpt_sender_start() starts the reporter (delivery.c starts it
 *	when tlsrpt.enabled is 1).  A round runs once a day at 00:00 UTC
 *	plus a random delay of up to 4 hours (RPT-31), the first one 1 to 5
 *	minutes after start.  A round lists the (day, domain) pairs of the
 *	spool's counters (mta_tlsrpt_domains()) with day before today and
 *	no "reported" marker, and for each, one after the other:
 *	  1. looks up TXT _smtp._tls.<domain>; exactly one record starting
 *	     "v=TLSRPTv1" is used (RPT-01/02); NXDOMAIN, NODATA, several or
 *	     no record with a usable rua: nothing is sent (RPT-48) and the
 *	     pair is marked done so it is not looked up again; a failed or
 *	     bogus lookup is retried;
 *	  2. builds the report (mta_tlsrpt_collect/json/gzip) and offers it
 *	     to every rua (RPT-06): https: POST, Content-Type
 *	     application/tlsrpt+gzip, tls.ca_file trust, to the address of
 *	     the URL's host resolved through mta_dns_addr() (RPT-45);
 *	     mailto: a report mail (mta_tlsrpt_mail(), RPT-40..42) signed
 *	     with the submitter domain's DKIM key when cfg->dkim_keys has
 *	     one (RPT-43; unsigned and logged otherwise), queued through the
 *	     writer with envelope sender <> (the null sender: a report that
 *	     cannot be delivered must not produce a bounce to anyone), tlsreq
 *	     OPTIONAL (TLS-Required: No, RPT-44: delivered despite TLS
 *	     failures and never counted itself, see delivery_conn.c);
 *	  3. once one rua accepted (HTTP 2xx, or the mail committed to the
 *	     spool), marks the pair reported ("S <day> <domain>" counter).
 *	When a pair failed, the next round runs after a back-off of 10
 *	minutes doubling to 4 hours (RPT-47); a pair older than 2 days is
 *	no longer tried.
 *	mta_tlsrpt_sender_run() runs a round now (the control socket's
 *	TLSRPT-SEND): day NULL for the normal round, or one day (any day,
 *	today included) whose pairs not yet reported are sent.  line(ud,
 *	text) is called for each pair ("<day> <domain> <result> <detail>"),
 *	done(ud, 0) once at the end.  MTA_EAGAIN when a round is running.
 *	mta_tlsrpt_sender_detach() drops the callbacks of a run (the
 *	control connection went away).
 *	mta_tlsrpt_sender_set_config() switches to a new config snapshot
 *	(reload); mta_tlsrpt_sender_stop() cancels everything and frees the
 *	reporter once its loop handles and any pending spool commit are
 *	done (the loop must keep running).
 *
 * THREADS
 *	Loop thread only.
 *
 * OWNERSHIP
 *	The params' pointers are borrowed and must outlive the reporter
 *	(the config until the next set_config).  The reporter frees itself
 *	after stop.
 *
 * ERRORS
 *	start: -ENOMEM, the fetcher's codes.  run: MTA_EAGAIN, MTA_ECLOSED
 *	(stopping).  Failures inside a round are logged (event=tlsrpt_send)
 *	and retried.
 *
 * SECURITY
 *	The TXT record and the https server are untrusted: the record is
 *	bounded by mta_tlsrpt_parse_record(), the URL host is checked to be
 *	a host name, the response body is discarded (bounded, 64 KiB), and
 *	the transfer takes at most 30 s.
 *
 * STANDARDS
 *	RFC 8460 §3 (record, DKIM), §4.1 (daily, delay), §5.3 (mail), §5.4
 *	(https POST), §5.5 (retry).
 *
 * CAVEATS
 *	Only the first address of an https rua host is tried.  Reports are
 *	sent one pair at a time.  A URL with user info or an IPv6 literal
 *	host is not supported (logged, skipped).
 */
#ifndef MTA_TLSRPT_SEND_H
#define MTA_TLSRPT_SEND_H

#include <stdint.h>
#include <uv.h>

struct mta_config;
struct mta_spool;
struct mta_writer;
struct mta_dns;
struct mta_tlsrpt_sender;

struct mta_tlsrpt_sender_params {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	struct mta_dns *dns;
	uint32_t *qid_seq;		/* sequence for new queue ids */
	void (*kick)(void *kick_ud);	/* new mail was queued */
	void *kick_ud;
	uint16_t https_port;		/* tests: connect here (0: URL's) */
};

int mta_tlsrpt_sender_start(const struct mta_tlsrpt_sender_params *p,
			    struct mta_tlsrpt_sender **out);
void mta_tlsrpt_sender_set_config(struct mta_tlsrpt_sender *s,
				  const struct mta_config *cfg);
int mta_tlsrpt_sender_run(struct mta_tlsrpt_sender *s, const char *day,
			  void (*line)(void *ud, const char *text),
			  void (*done)(void *ud, int rc), void *ud);
void mta_tlsrpt_sender_detach(struct mta_tlsrpt_sender *s, void *ud);
void mta_tlsrpt_sender_stop(struct mta_tlsrpt_sender *s);

#endif
