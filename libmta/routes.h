/*
 * routes.h - the routing table (delivery.routes_file): where the mail for
 * a recipient domain goes, chosen per recipient domain and sender domain.
 * (route.h is something else: the input gathering of the TLS decision.)
 *
 * DESCRIPTION
 *	mta_routes_parse() parses a table from a buffer (sans-I/O); fname
 *	is used only in error messages.  One rule a line, first match wins:
 *	    <rcpt-pattern> [from <sender-pattern>] <action> [args] [opts]
 *	A pattern is an exact domain ("example.com"), a leading-dot suffix
 *	(".example.com": every subdomain, not the domain itself) or "*"
 *	(anything, the null sender included).  Actions:
 *	    mx                         normal MX delivery
 *	    relay HOST[:PORT]          to that host ("[host]:port" or
 *	                               "host:port"; an address literal
 *	                               "[192.0.2.1]" or "[IPv6:...]" too)
 *	    refuse "TEXT"              bounce, with TEXT as the reason (a
 *	                               leading "5.x.y " is the status)
 *	    hold                       keep queued (deferred 4.3.2, retried
 *	                               at the normal backoff)
 *	Options (key=value, any action that connects):
 *	    level=LEVEL    TLS level for the hop (policy-table semantics:
 *	                   none may encrypt dane dane-only verify)
 *	    auth=NAME      AUTH PLAIN to the relay; NAME "default" is the
 *	                   delivery.relayhost_auth_file credentials
 *	    bind=ADDR      local source address (once IPv4, once IPv6)
 *	    helo=NAME      EHLO/HELO name for the hop
 *	    fallback=HOST[:PORT]  (mx only) relay for recipients that MX
 *	                   delivery failed fallback_after times
 *	    fallback_after=N | DURATION (s/m/h/d suffix): attempts, or the
 *	                   age of the message (default 3 attempts)
 *	'#' starts a comment outside quotes; blank lines are ignored.
 *
 *	mta_routes_load() reads a file and parses it.  mta_routes_match()
 *	returns the first rule matching the recipient domain and the sender
 *	domain ("" for the null sender), or NULL (caller: plain mx).
 *
 * THREADS
 *	Any; a parsed table is immutable.
 *
 * OWNERSHIP
 *	*out is the caller's (mta_routes_free()); rules returned by match
 *	are borrowed from the table.
 *
 * ERRORS
 *	MTA_ECONFIG with err "fname:line: why", -ENOMEM, -errno on reading.
 *
 * SECURITY
 *	The file is the operator's but parsed defensively: lines at most
 *	MTA_ROUTES_LINE_MAX bytes, at most MTA_ROUTES_MAX rules, NUL bytes
 *	refused, every string bounded.
 *
 * CAVEATS
 *	Domains are compared in ASCII (A-labels), case-insensitively.  A
 *	relay host name is resolved through its address records (no MX
 *	lookup), with or without brackets.
 */
#ifndef MTA_ROUTES_H
#define MTA_ROUTES_H

#include "tlspolicy.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define MTA_ROUTES_LINE_MAX 1024
#define MTA_ROUTES_MAX 10000
#define MTA_ROUTES_FILE_MAX (4u << 20)

enum mta_routes_action {
	MTA_ROUTES_MX,
	MTA_ROUTES_RELAY,
	MTA_ROUTES_REFUSE,
	MTA_ROUTES_HOLD,
};

struct mta_routes_rule {
	unsigned line;
	char rcpt[256];	  /* "*", "example.com", ".example.com" */
	char sender[256]; /* same; "" = no from clause (any sender) */
	enum mta_routes_action action;
	char host[256]; /* relay: host name or address literal (no brackets
			 * unless an address literal: "[192.0.2.1]") */
	unsigned port;	/* 0 = delivery.port */
	char text[256]; /* refuse */
	char status[16]; /* refuse: "5.7.1" */
	bool has_level;
	enum mta_tls_level level;
	char auth[64]; /* "" = none */
	bool has_bind4, has_bind6;
	struct sockaddr_storage bind4, bind6; /* port 0 */
	char helo[256]; /* "" = server.hostname */
	char fb_host[256]; /* "" = no fallback */
	unsigned fb_port;
	unsigned fb_attempts; /* fall back from this attempt count... */
	unsigned fb_age;      /* ...or this message age in seconds (0 = n/a) */
};

struct mta_routes;

int mta_routes_parse(const char *text, size_t len, const char *fname,
		     struct mta_routes **out, char *err, size_t errlen);
int mta_routes_load(const char *path, struct mta_routes **out, char *err,
		    size_t errlen);
void mta_routes_free(struct mta_routes *r);
size_t mta_routes_count(const struct mta_routes *r);
const struct mta_routes_rule *mta_routes_get(const struct mta_routes *r,
					     size_t i);
const struct mta_routes_rule *mta_routes_match(const struct mta_routes *r,
					       const char *rcpt_domain,
					       const char *sender_domain);
const char *mta_routes_action_name(enum mta_routes_action a);
/* Pattern test shared with shaping.c: "*", exact or ".suffix". */
bool mta_routes_pattern_match(const char *pattern, const char *name);

#endif
