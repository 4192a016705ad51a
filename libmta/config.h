/*
 * config.h - mtad configuration: INI file + MTAD_<SECTION>_<KEY> overrides.
 *
 * DESCRIPTION
 *	mta_config_load() reads the INI file at path with libinih, applies the
 *	environment overrides found in envp (MTAD_SERVER_LISTEN=...; upper
 *	case section and key; never getenv()), validates every value and
 *	returns an immutable snapshot in *out.  Every key has a documented
 *	default (docs/configuration.md; the key table in config.c is the
 *	single source, tests/check_docs.sh keeps the two equal).  path may be
 *	NULL (defaults + environment only).  Derived defaults are resolved at
 *	load: server.hostname empty = gethostname(); control.socket empty =
 *	"<spool.dir>/control.sock".
 *
 *	mta_config_print() writes the effective configuration as INI, every
 *	section and key, values normalised (sizes in bytes, durations in
 *	seconds with "s", listen addresses and networks in canonical form,
 *	long lists wrapped onto indented continuation lines), so the output of
 *	`mtad --check-config` can be loaded again and gives an equal snapshot.
 *
 *	mta_config_where() writes where the value of section.key came from,
 *	in the prefix form of the errors below: "<file>:<line>",
 *	"environment MTAD_X_Y" or "default" (unknown keys: "default").  It
 *	lets a later check of a value (a TLS key that does not load, a
 *	credentials file that cannot be read) name the file and line.
 *
 *	Cross-key checks at load: server.tls_cert and server.tls_key both or
 *	neither; delivery.min_backoff <= delivery.max_backoff; the control
 *	socket path fits a Unix socket address.
 *
 *	mta_config_relay_allowed() says whether a client address lies in
 *	server.relay_networks.  An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 *	is matched against the IPv4 networks as a.b.c.d (and against the IPv6
 *	networks as itself).  Other families (AF_UNIX) are never allowed.
 *
 *	Value syntax: sizes are decimal bytes with an optional k/M/G suffix
 *	(powers of 1024, either case); durations are decimal with s/m/h/d
 *	(no suffix = seconds); lists are separated by commas and/or blanks,
 *	and only lists may continue on indented lines.  Listen addresses are
 *	numeric "a.b.c.d:port" or "[v6]:port".  A CIDR is "addr/prefix" or a
 *	bare address (/32, /128); host bits beyond the prefix are an error.
 *	Values are never unquoted; a " ;" starts a comment.
 *
 * THREADS
 *	Any: a loaded config is never modified.  mta_config_load() keeps no
 *	static state and may run concurrently (a reload builds a new
 *	snapshot; the old one is freed when its last user is done).
 *
 * OWNERSHIP
 *	The snapshot and every string in it belong to the config; free with
 *	mta_config_free() (NULL is fine).  *out is set only on success.
 *
 * ERRORS
 *	mta_config_load() returns 0, MTA_ECONFIG or -ENOMEM, and on failure
 *	writes exactly one line (no newline) into err (errlen bytes, may be
 *	truncated), the first error found:
 *	  "<file>:<line>: <section>.<key>: <why> ('<value>')"
 *	  "<file>:<line>: <section>.<key>: unknown key"
 *	  "<file>:<line>: [<section>]: unknown section"
 *	  "<file>:<line>: <section>.<key>: duplicate key (first on line N) ..."
 *	  "<file>:<line>: syntax error"
 *	  "<file>:<line>: line too long (max 197 bytes)"
 *	  "<file>: <strerror>"
 *	  "environment MTAD_X_Y: <section>.<key>: <why> ('<value>')"
 *	  "environment MTAD_X_Y: unknown variable (names no key)"
 *	A value error is attributed to where the value came from (the file
 *	line or the variable that overrode it).  It never exits and never
 *	logs: the caller prints err and exits 2.
 *
 * SECURITY
 *	The file and the environment are trusted (the operator's), but parsed
 *	strictly: every number is range-checked, every string is free of
 *	control bytes and at most 160 bytes (lists excepted), so print output
 *	stays one-value-per-line and loadable.  Error messages quote values
 *	with control bytes replaced by '?'.
 *
 * CAVEATS
 *	libinih (Debian build) reads lines of at most 197 bytes; longer lines
 *	are an error, not silently split.  MTAD_CONFIG is not a key (the tools
 *	read it as the file path) and is ignored here; other variables named
 *	MTAD_[A-Z0-9_]+ must name a key.
 */
#ifndef MTA_CONFIG_H
#define MTA_CONFIG_H

#include "log.h"       /* enum mta_log_level */
#include "policy.h"    /* enum mta_policy_cont_mode */
#include "tlspolicy.h" /* enum mta_tls_level */

struct mta_dkim_keys;

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define MTA_CONFIG_MAX_LISTEN 16
#define MTA_CONFIG_MAX_NETWORKS 64
#define MTA_CONFIG_MAX_KEYS 96 /* room in the origin table below */

/* delivery.ip_version */
enum mta_ipver {
	MTA_IPVER_ANY,
	MTA_IPVER_4,
	MTA_IPVER_6,
	MTA_IPVER_PREFER_4,
	MTA_IPVER_PREFER_6,
};
extern const char *const mta_config_ipver_names[5];

struct mta_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
};

struct mta_config {
	/* [server] */
	char *server_hostname; /* resolved: never NULL */
	struct sockaddr_storage listen[MTA_CONFIG_MAX_LISTEN];
	size_t nlisten;	     /* >= 1 */
	char *server_listen; /* normalised, for printing */
	struct mta_cidr relay_networks[MTA_CONFIG_MAX_NETWORKS];
	size_t nrelay_networks;
	char *server_relay_networks; /* normalised ("" = none) */
	uint64_t max_message_size;   /* bytes */
	unsigned max_recipients;      /* server.max_recipients, 1000 */
	unsigned max_sessions;	      /* server.max_sessions, 1000 */
	unsigned max_sessions_per_client; /* per client address, 50 */
	unsigned command_timeout;     /* server.command_timeout s, 300 */
	unsigned data_timeout;	      /* server.data_timeout s, 600 */
	unsigned message_timeout;     /* server.message_timeout s, 1800 */
	unsigned server_threads;      /* server.threads, 0 = online CPUs,
					 at most 8 (mtad/listener.c) */
	unsigned shutdown_grace;      /* server.shutdown_grace s, 30 */
	char *server_postmaster;      /* server.postmaster or NULL */
	char *tls_cert;		      /* server.tls_cert or NULL */
	char *tls_key;		      /* server.tls_key or NULL (both or none) */
	char *server_user;	      /* server.user, "mtad" (used as root only) */
	char *server_group;	      /* server.group, "mtad" */
	/* [spool] */
	char *spool_dir;
	uint64_t spool_max_size; /* spool.max_size, LMDB map size, 8G */
	/* [dns] */
	char *dns_resolver;	/* NULL = /etc/resolv.conf; else as written */
	char *dns_trust_anchor;
	unsigned dns_timeout; /* dns.timeout, seconds */
	/* [delivery] */
	unsigned delivery_port;
	char *delivery_relayhost; /* NULL = MX delivery; else as written */
	unsigned queue_lifetime;  /* seconds */
	unsigned min_backoff;	  /* delivery.min_backoff, seconds */
	unsigned max_backoff;	  /* delivery.max_backoff, seconds */
	unsigned max_connections; /* delivery.max_connections (outbound) */
	unsigned max_per_destination; /* delivery.max_per_destination */
	unsigned connect_timeout; /* delivery.connect_timeout, seconds */
	char *relayhost_auth_file; /* NULL = no AUTH to the relayhost */
	char *routes_file;	   /* NULL = no routing table (routes.h) */
	char *shaping_file;	   /* NULL = no shaping (shaping.h) */
	unsigned delay_warning;	   /* seconds; 0 = no delayed DSNs */
	enum mta_ipver ip_version;
	/* [tls] */
	char *tls_ca_file;
	char *tls_policy_file; /* NULL = none */
	enum mta_tls_level tls_default_level; /* MTA_TLS_LEVEL_MAP */
	char *tls_ct_log_list;	   /* NULL = none */
	unsigned tls_require_sct;  /* 0 = CT off */
	unsigned tls_ct_log_list_max_age; /* seconds: older is stale */
	/* [tlsrpt] (RFC 8460 reports, tlsrpt.h) */
	unsigned tlsrpt_enabled;    /* 0 or 1 */
	char *tlsrpt_organization;  /* NULL = the submitter */
	char *tlsrpt_contact;	    /* NULL = postmaster@<submitter> */
	char *tlsrpt_submitter;	    /* resolved: never NULL */
	/* [mta_sts] */
	unsigned mta_sts_https_port;
	unsigned mta_sts_refresh_interval; /* seconds between cache sweeps */
	enum mta_policy_cont_mode mta_sts_continuity; /* off, log, hold */
	unsigned mta_sts_continuity_window; /* seconds */
	unsigned mta_sts_continuity_hold;   /* seconds */
	/* [control] */
	char *control_socket; /* resolved: never NULL */
	char *control_group;  /* group name or number for the socket, or NULL */
	/* [http] */
	char *http_listen;		     /* normalised addr:port */
	struct sockaddr_storage http_addr; /* http.listen, parsed */
	/* [submission], [submissions]: listeners with AUTH (empty: none) */
	struct sockaddr_storage submission[MTA_CONFIG_MAX_LISTEN];
	size_t nsubmission;	 /* 587-style: STARTTLS, then AUTH */
	char *submission_listen; /* normalised, for printing */
	struct sockaddr_storage submissions[MTA_CONFIG_MAX_LISTEN];
	size_t nsubmissions;	  /* 465-style: implicit TLS (RFC 8314) */
	char *submissions_listen; /* normalised, for printing */
	/* [auth] */
	char *auth_users_file;	     /* NULL = none */
	unsigned auth_max_failures;  /* then 421 until the window passed */
	unsigned auth_failure_delay; /* seconds, doubled per failure */
	/* [dkim] */
	char *dkim_keys_file; /* NULL = no signing */
	/* the table it names, loaded by the daemon (mta_dkim_keys_load());
	 * freed with the config, so a session's snapshot keeps its keys */
	struct mta_dkim_keys *dkim_keys;
	/* [log] */
	enum mta_log_level log_level;
	/* where each value came from (mta_config_where) */
	char *origin_path; /* the file loaded, or NULL */
	unsigned char origin_kind[MTA_CONFIG_MAX_KEYS];
	int origin_line[MTA_CONFIG_MAX_KEYS];
};

int mta_config_load(const char *path, char *const *envp,
		    struct mta_config **out, char *err, size_t errlen);
void mta_config_free(struct mta_config *c);
void mta_config_print(const struct mta_config *c, FILE *f);
bool mta_config_relay_allowed(const struct mta_config *c,
			      const struct sockaddr *sa);
void mta_config_where(const struct mta_config *c, const char *section,
		      const char *key, char *buf, size_t len);

#endif
