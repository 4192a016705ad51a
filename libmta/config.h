/*
 * config.h - mtad configuration: INI file + MTAD_<SECTION>_<KEY> overrides.
 *
 * DESCRIPTION
 *	mta_config_load() reads the INI file at path with libinih, applies the
 *	environment overrides found in envp (MTAD_SERVER_LISTEN=...; upper
 *	case section and key), validates every value and returns an immutable
 *	snapshot.  Every key has a documented default (docs/configuration.md);
 *	an unknown section or key is an error.  On failure it returns
 *	MTA_ECONFIG and writes one line into err naming the file, line, key and
 *	why ("etc/mtad.conf:12: server.max_message_size: not a size: '12q'"),
 *	or "environment MTAD_X_Y: ..." for an override.  path may be NULL
 *	(defaults + environment only).
 *
 *	mta_config_print() writes the effective configuration as INI, every
 *	key, so `mtad --check-config` shows what will run.
 *
 *	mta_config_relay_allowed() says whether a client address lies in
 *	server.relay_networks.
 *
 *	Value syntax: sizes take an optional k/M/G suffix (powers of 1024);
 *	durations take s/m/h/d (default seconds); booleans yes/no/true/false;
 *	lists are comma-separated.  Listen addresses are "addr:port" or
 *	"[v6]:port".
 *
 * THREADS
 *	Any: a loaded config is never modified.
 *
 * OWNERSHIP
 *	The snapshot and every string in it belong to the config; free with
 *	mta_config_free().
 */
#ifndef MTA_CONFIG_H
#define MTA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define MTA_CONFIG_MAX_LISTEN 16
#define MTA_CONFIG_MAX_NETWORKS 64

struct mta_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
};

struct mta_config {
	/* [server] */
	char *server_hostname;
	struct sockaddr_storage listen[MTA_CONFIG_MAX_LISTEN];
	size_t nlisten;
	char *server_listen; /* as written, for printing */
	struct mta_cidr relay_networks[MTA_CONFIG_MAX_NETWORKS];
	size_t nrelay_networks;
	char *server_relay_networks; /* as written */
	uint64_t max_message_size;
	unsigned max_recipients;      /* server.max_recipients, 1000 */
	unsigned max_sessions;	      /* server.max_sessions, 1000 */
	unsigned command_timeout;     /* server.command_timeout s, 300 */
	unsigned data_timeout;	      /* server.data_timeout s, 600 */
	char *tls_cert;		      /* server.tls_cert or NULL */
	char *tls_key;		      /* server.tls_key or NULL */
	/* [spool] */
	char *spool_dir;
	uint64_t spool_max_size; /* spool.max_size, LMDB map size, 8G */
	/* [dns] */
	char *dns_resolver;	/* NULL = /etc/resolv.conf */
	char *dns_trust_anchor;
	/* [delivery] */
	unsigned delivery_port;
	char *delivery_relayhost; /* NULL = MX delivery */
	unsigned queue_lifetime;  /* seconds */
	/* [tls] */
	char *tls_ca_file;
	char *tls_policy_file; /* NULL = none */
	char *tls_default_level;
	/* [mta_sts] */
	unsigned mta_sts_https_port;
	/* [control] */
	char *control_socket;
	/* [http] */
	char *http_listen;
	/* [log] */
	int log_level; /* enum mta_log_level */
};

int mta_config_load(const char *path, char *const *envp,
		    struct mta_config **out, char *err, size_t errlen);
void mta_config_free(struct mta_config *c);
void mta_config_print(const struct mta_config *c, FILE *f);
bool mta_config_relay_allowed(const struct mta_config *c,
			      const struct sockaddr *sa);

#endif
