/*
 * control.h - the control protocol between the spool tools and mtad: a
 * small, versioned, line-oriented codec (sans-I/O).
 *
 * DESCRIPTION
 *	The control socket (control.socket, a Unix stream socket) carries
 *	lines of at most MTA_CTL_LINE_MAX bytes ending in LF (a CR before
 *	the LF is dropped).  Version 1:
 *
 *	  client: MTACTL 1
 *	  server: OK mtad <version> proto 1     (or ERR version <text>)
 *	  client: <VERB> [<arg> ...]
 *	  server: zero or more "* <text>" data lines, then
 *	          "OK [<text>]" or "ERR <code> <text>"
 *
 *	One request at a time; the client waits for OK/ERR before the next.
 *	Verbs and arguments:
 *	  HOLD qid, RELEASE qid, DELETE qid, BOUNCE qid, FLUSH qid,
 *	  POLICY-PURGE domain, POLICY-REFRESH domain,
 *	  POLICY-ACCEPT domain (key continuity: trust the new keys held for
 *	                  the domain; notfound when none is held)
 *	                                 (changes: logged by
 *	                                  mtad with the peer's credentials)
 *	  ACTIVE          (data lines: qids being delivered now)
 *	  STATS           (data lines: "key value")
 *	  SITES           (data lines: one per shaping site of
 *	                  delivery.shaping_file, "<site> key=value ...":
 *	                  connections max_connections rate ceiling (messages
 *	                  per minute, 0 = no limit) sent throttles next_ms
 *	                  line; no lines without a shaping table)
 *	  EXPLAIN domain [CONNECT] [FROM=sender-domain]  (data lines: the
 *	                  decision trace of explain.h, "<tag> <text>"; OK at
 *	                  its end; with CONNECT the usable hosts are
 *	                  connected, never MAIL; FROM= the sender's domain
 *	                  for routing rules with a from clause, "FROM=" the
 *	                  null sender)
 *	  TLSRPT-SEND [day]  (a TLSRPT reporter round now, tlsrpt_send.h:
 *	                  data lines "<day> <domain> <result> <detail>";
 *	                  day YYYY-MM-DD: only that day, today included;
 *	                  unavailable when tlsrpt.enabled is 0, busy when
 *	                  a round is running)
 *	  QUIT
 *	Error codes (one lower-case word): usage, version, notfound, state
 *	(the operation does not apply: already held, not held, held),
 *	busy (the message stayed in delivery too long), failed,
 *	unavailable (the part of mtad it needs is not running).
 *	An argument is a token without spaces; bytes outside 0x21..0x7e and
 *	'%' are written %XX (two upper-case hex digits) and decoded by the
 *	parser.
 *
 *	mta_ctl_lines_feed() splits a byte stream into lines: it consumes
 *	input up to and including one LF and returns 1 with *line pointing
 *	at the NUL-terminated line (valid until the next feed), or consumes
 *	everything and returns 0 (need more), or returns MTA_ETOOBIG when a
 *	line is longer than MTA_CTL_LINE_MAX (final: close the connection).
 *	*consumed is set in every case.
 *	mta_ctl_parse_req() parses one request line into out: MTA_EPROTO for
 *	an unknown verb, a wrong number of arguments, a bad %XX or a NUL.
 *	mta_ctl_format_req() writes one request line with "\n" into out
 *	(MTA_ETOOBIG when it does not fit or passes MTA_CTL_LINE_MAX).
 *	mta_ctl_parse_hello() checks the client's first line and gives its
 *	version; mta_ctl_parse_reply() classifies a server line (data, OK,
 *	ERR with its code) with pointers into line.
 *
 * THREADS
 *	Any; no state but the caller's structs.
 *
 * OWNERSHIP
 *	Caller-owned structs; out pointers point into the caller's buffers.
 *
 * ERRORS
 *	MTA_EPROTO, MTA_ETOOBIG (err.h).
 *
 * SECURITY
 *	Everything a peer sends is untrusted: lines are bounded, arguments
 *	are bounded (MTA_CTL_ARG_MAX) and decoded without NUL bytes.  The
 *	socket's permissions (0660, control.group) decide who may talk;
 *	mtad logs the peer's uid, gid and pid (SO_PEERCRED) with each change.
 */
#ifndef MTA_CONTROL_H
#define MTA_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_CTL_VERSION 1
#define MTA_CTL_LINE_MAX 1024
#define MTA_CTL_ARG_MAX 255
#define MTA_CTL_MAX_ARGS 2

enum mta_ctl_verb {
	MTA_CTL_HOLD,
	MTA_CTL_RELEASE,
	MTA_CTL_DELETE,
	MTA_CTL_BOUNCE,
	MTA_CTL_FLUSH,
	MTA_CTL_POLICY_PURGE,
	MTA_CTL_POLICY_REFRESH,
	MTA_CTL_ACTIVE,
	MTA_CTL_STATS,
	MTA_CTL_QUIT,
	MTA_CTL_EXPLAIN,
	MTA_CTL_SITES,
	MTA_CTL_POLICY_ACCEPT,
	MTA_CTL_TLSRPT_SEND,
	MTA_CTL_NVERBS
};

struct mta_ctl_lines {
	char buf[MTA_CTL_LINE_MAX + 2];
	size_t len;
};

struct mta_ctl_req {
	enum mta_ctl_verb verb;
	size_t nargs;
	char args[MTA_CTL_MAX_ARGS][MTA_CTL_ARG_MAX + 1];
};

enum mta_ctl_reply_kind { MTA_CTL_DATA, MTA_CTL_OK, MTA_CTL_ERR };

struct mta_ctl_reply {
	enum mta_ctl_reply_kind kind;
	const char *code; /* ERR: the code word (not NUL-terminated) */
	size_t code_len;
	const char *text; /* the rest of the line ("" when none) */
};

int mta_ctl_lines_feed(struct mta_ctl_lines *l, const uint8_t *in, size_t n,
		       size_t *consumed, const char **line);
int mta_ctl_parse_req(const char *line, struct mta_ctl_req *out);
int mta_ctl_format_req(char *out, size_t cap, enum mta_ctl_verb verb,
		       const char *const *args, size_t nargs);
int mta_ctl_parse_hello(const char *line, unsigned *version);
int mta_ctl_parse_reply(const char *line, struct mta_ctl_reply *out);
const char *mta_ctl_verb_name(enum mta_ctl_verb v);
/* Whether the verb changes the spool or the policy cache. */
bool mta_ctl_verb_changes(enum mta_ctl_verb v);

#endif
