/*
 * config.c - mtad configuration: INI file (libinih) + MTAD_<SECTION>_<KEY>
 * environment overrides, validated into an immutable snapshot.
 *
 * Loading is three passes over the key table below:
 *   1. the file: every key line is recorded as a raw string with its line;
 *   2. the environment: MTAD_<SECTION>_<KEY> replaces the file's string;
 *   3. validation: each raw string (or the default) is parsed into the
 *      snapshot; an error names where the string came from.
 * The first error wins; nothing is half-applied because the snapshot is
 * only handed out on success.
 */
#include "config_int.h"
#include "dkim.h"
#include "err.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* Longest value a key other than a list may have (file or environment), so
 * that mta_config_print() output always fits libinih's line buffer. */
#define MAX_VALUE 160
/* mta_config_print() wraps list values before this column. */
#define PRINT_WRAP 72

enum key_type {
	T_HOSTNAME,  /* domain name; empty = gethostname() */
	T_LISTEN,    /* addr:port list -> listen[] (submission[], ...) */
	T_CIDRS,     /* CIDR list -> relay_networks[]; empty = none */
	T_SIZE,      /* bytes, k/M/G suffix -> uint64_t */
	T_COUNT,     /* decimal -> unsigned */
	T_DURATION,  /* s/m/h/d suffix -> unsigned seconds */
	T_PORT,      /* 1..65535 -> unsigned */
	T_PATH,      /* non-empty path -> char * */
	T_OPTPATH,   /* path or empty -> char * or NULL */
	T_RESOLVER,  /* addr, addr:port, [v6]:port or empty -> char * or NULL */
	T_RELAYHOST, /* host, host:port, [host]:port or empty */
	T_TLSLEVEL,  /* MTA_TLS_LEVEL_MAP names -> enum mta_tls_level */
	T_SOCKET,    /* path; empty = <spool.dir>/control.sock -> char * */
	T_ADDRPORT,  /* one addr:port -> char * (+ http_addr) */
	T_LOGLEVEL,  /* debug info warn error -> int */
	T_MAILBOX,   /* local@domain or empty -> char * or NULL */
	T_ACCOUNT,   /* user or group name [A-Za-z0-9_.-], not '-' first */
	T_IPVER,     /* any ipv4 ipv6 prefer-ipv4 prefer-ipv6 -> int */
	T_CONTMODE,  /* off log hold -> enum mta_policy_cont_mode */
};

struct key {
	const char *section;
	const char *name;
	const char *def; /* as a user would write it; "" = empty */
	enum key_type type;
	size_t off;	 /* of the field in struct mta_config */
	uint64_t min, max; /* numbers only */
};

#define KEY(sec, name, def, type, field, min, max)                            \
	{ sec, name, def, type, offsetof(struct mta_config, field), min, max }

/*
 * THE KEY TABLE.  One KEY() per line: tests/check_docs.sh extracts the first
 * three strings (section, key, default) and compares them with the table in
 * docs/configuration.md.  Keep the default free of '"'.
 */
static const struct key keys[] = {
	KEY("server", "hostname", "", T_HOSTNAME, server_hostname, 0, 0),
	KEY("server", "listen", "127.0.0.1:2525", T_LISTEN, server_listen, 0, 0),
	KEY("server", "relay_networks", "127.0.0.0/8, ::1/128", T_CIDRS, server_relay_networks, 0, 0),
	KEY("server", "max_message_size", "36700160", T_SIZE, max_message_size, 1024, 4ULL << 30),
	KEY("server", "max_recipients", "1000", T_COUNT, max_recipients, 1, 100000),
	KEY("server", "max_sessions", "1000", T_COUNT, max_sessions, 1, 1000000),
	KEY("server", "max_sessions_per_client", "50", T_COUNT, max_sessions_per_client, 1, 1000000),
	KEY("server", "command_timeout", "300s", T_DURATION, command_timeout, 1, 86400),
	KEY("server", "data_timeout", "600s", T_DURATION, data_timeout, 1, 86400),
	KEY("server", "message_timeout", "1800s", T_DURATION, message_timeout, 1, 7 * 86400),
	KEY("server", "threads", "0", T_COUNT, server_threads, 0, 64),
	KEY("server", "shutdown_grace", "30s", T_DURATION, shutdown_grace, 0, 3600),
	KEY("server", "postmaster", "", T_MAILBOX, server_postmaster, 0, 0),
	KEY("server", "tls_cert", "", T_OPTPATH, tls_cert, 0, 0),
	KEY("server", "tls_key", "", T_OPTPATH, tls_key, 0, 0),
	KEY("server", "user", "mtad", T_ACCOUNT, server_user, 0, 0),
	KEY("server", "group", "mtad", T_ACCOUNT, server_group, 0, 0),
	KEY("spool", "dir", "/var/spool/mtad", T_PATH, spool_dir, 0, 0),
	KEY("spool", "max_size", "8G", T_SIZE, spool_max_size, 1ULL << 20, 1ULL << 46),
	KEY("dns", "resolver", "", T_RESOLVER, dns_resolver, 0, 0),
	KEY("dns", "trust_anchor", "/usr/share/dns/root.key", T_PATH, dns_trust_anchor, 0, 0),
	KEY("dns", "timeout", "5s", T_DURATION, dns_timeout, 1, 60),
	KEY("delivery", "port", "25", T_PORT, delivery_port, 1, 65535),
	KEY("delivery", "relayhost", "", T_RELAYHOST, delivery_relayhost, 0, 0),
	KEY("delivery", "queue_lifetime", "5d", T_DURATION, queue_lifetime, 1, 365 * 86400),
	KEY("delivery", "min_backoff", "300s", T_DURATION, min_backoff, 1, 86400),
	KEY("delivery", "max_backoff", "4000s", T_DURATION, max_backoff, 1, 7 * 86400),
	KEY("delivery", "max_connections", "100", T_COUNT, max_connections, 1, 10000),
	KEY("delivery", "max_per_destination", "10", T_COUNT, max_per_destination, 1, 1000),
	KEY("delivery", "connect_timeout", "30s", T_DURATION, connect_timeout, 1, 300),
	KEY("delivery", "relayhost_auth_file", "", T_OPTPATH, relayhost_auth_file, 0, 0),
	KEY("delivery", "routes_file", "", T_OPTPATH, routes_file, 0, 0),
	KEY("delivery", "shaping_file", "", T_OPTPATH, shaping_file, 0, 0),
	KEY("delivery", "delay_warning", "0", T_DURATION, delay_warning, 0, 365 * 86400),
	KEY("delivery", "ip_version", "any", T_IPVER, ip_version, 0, 0),
	KEY("tls", "ca_file", "/etc/ssl/certs/ca-certificates.crt", T_PATH, tls_ca_file, 0, 0),
	KEY("tls", "policy_file", "", T_OPTPATH, tls_policy_file, 0, 0),
	KEY("tls", "default_level", "may", T_TLSLEVEL, tls_default_level, 0, 0),
	KEY("tls", "ct_log_list", "", T_OPTPATH, tls_ct_log_list, 0, 0),
	KEY("tls", "require_sct", "0", T_COUNT, tls_require_sct, 0, 16),
	KEY("tls", "ct_log_list_max_age", "70d", T_DURATION, tls_ct_log_list_max_age, 1, 3650 * 86400),
	KEY("tlsrpt", "enabled", "0", T_COUNT, tlsrpt_enabled, 0, 1),
	KEY("tlsrpt", "organization", "", T_OPTPATH, tlsrpt_organization, 0, 0),
	KEY("tlsrpt", "contact", "", T_MAILBOX, tlsrpt_contact, 0, 0),
	KEY("tlsrpt", "submitter", "", T_HOSTNAME, tlsrpt_submitter, 0, 0),
	KEY("mta_sts", "https_port", "443", T_PORT, mta_sts_https_port, 1, 65535),
	KEY("mta_sts", "refresh_interval", "600s", T_DURATION, mta_sts_refresh_interval, 1, 86400),
	KEY("mta_sts", "continuity", "log", T_CONTMODE, mta_sts_continuity, 0, 0),
	KEY("mta_sts", "continuity_window", "30d", T_DURATION, mta_sts_continuity_window, 1, 3650 * 86400),
	KEY("mta_sts", "continuity_hold", "7d", T_DURATION, mta_sts_continuity_hold, 1, 365 * 86400),
	KEY("control", "socket", "", T_SOCKET, control_socket, 0, 0),
	KEY("control", "group", "", T_OPTPATH, control_group, 0, 0),
	KEY("http", "listen", "127.0.0.1:9025", T_ADDRPORT, http_listen, 0, 0),
	KEY("submission", "listen", "", T_LISTEN, submission_listen, 0, 0),
	KEY("submissions", "listen", "", T_LISTEN, submissions_listen, 0, 0),
	KEY("auth", "users_file", "", T_OPTPATH, auth_users_file, 0, 0),
	KEY("auth", "max_failures", "5", T_COUNT, auth_max_failures, 1, 1000),
	KEY("auth", "failure_delay", "1s", T_DURATION, auth_failure_delay, 0, 30),
	KEY("dkim", "keys_file", "", T_OPTPATH, dkim_keys_file, 0, 0),
	KEY("log", "level", "info", T_LOGLEVEL, log_level, 0, 0),
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

const char *const mta_config_ipver_names[5] = {
	"any", "ipv4", "ipv6", "prefer-ipv4", "prefer-ipv6"};

enum origin { O_DEFAULT, O_FILE, O_ENV };

struct raw {
	char *val; /* malloc'd; NULL = default */
	enum origin origin;
	int line; /* O_FILE */
};

struct loader {
	const char *path;
	FILE *f;
	char *line; /* current raw line (getline buffer) */
	size_t cap;
	int lineno;
	int failed; /* an error is in err; stop */
	int err_line; /* line of that error while reading the file */
	char *err;
	size_t errlen;
	struct raw raw[NKEYS];
};

/* ------------------------------------------------------------------------ */
/* errors */

static void seterr(struct loader *ld, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void seterr(struct loader *ld, const char *fmt, ...)
{
	va_list ap;

	if (ld->failed)
		return;
	ld->failed = 1;
	ld->err_line = ld->lineno;
	if (ld->err == NULL || ld->errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(ld->err, ld->errlen, fmt, ap);
	va_end(ap);
}

/* Copies v into buf for an error message: control bytes become '?'. */
static const char *shown(const char *v, char *buf, size_t len)
{
	size_t i;

	for (i = 0; v[i] != '\0' && i + 1 < len; i++) {
		unsigned char ch = (unsigned char)v[i];
		buf[i] = (ch < ' ' || ch == 0x7f) ? '?' : (char)ch;
	}
	buf[i] = '\0';
	return buf;
}

static void env_name(const struct key *k, char *buf, size_t len)
{
	size_t n = 0;
	int w = snprintf(buf, len, "MTAD_%s_%s", k->section, k->name);

	if (w < 0 || (size_t)w >= len)
		return;
	for (n = 0; buf[n] != '\0'; n++)
		buf[n] = (char)toupper((unsigned char)buf[n]);
}

/* "<file>:<line>: " / "environment MTAD_X_Y: " / "" for key i. */
static void origin_prefix(const struct loader *ld, size_t i, char *buf,
			  size_t len)
{
	char env[64];

	switch (ld->raw[i].origin) {
	case O_FILE:
		snprintf(buf, len, "%s:%d: ", ld->path, ld->raw[i].line);
		break;
	case O_ENV:
		env_name(&keys[i], env, sizeof(env));
		snprintf(buf, len, "environment %s: ", env);
		break;
	case O_DEFAULT:
	default:
		snprintf(buf, len, "default: ");
		break;
	}
}

/* The one format of a value error:
 * "<origin>: <section>.<key>: <why> ('<value>')". */
static void value_err(struct loader *ld, size_t i, const char *value,
		      const char *why)
{
	char pre[512], v[512];

	origin_prefix(ld, i, pre, sizeof(pre));
	seterr(ld, "%s%s.%s: %s ('%s')", pre, keys[i].section, keys[i].name,
	       why, shown(value, v, sizeof(v)));
}

/* ------------------------------------------------------------------------ */
/* pass 3: validation of one key */

#define FIELD(c, k, type) ((type *)(void *)((char *)(c) + (k)->off))

/* A POSIX portable user or group name (and not an option). */
static int valid_account(const char *v)
{
	size_t n = strlen(v);

	if (n == 0 || n > 32 || v[0] == '-')
		return 0;
	for (size_t j = 0; j < n; j++)
		if (!isalnum((unsigned char)v[j]) && v[j] != '_' &&
		    v[j] != '.' && v[j] != '-')
			return 0;
	return 1;
}

static int is_string_type(enum key_type t)
{
	switch (t) {
	case T_HOSTNAME:
	case T_LISTEN:
	case T_CIDRS:
	case T_PATH:
	case T_OPTPATH:
	case T_RESOLVER:
	case T_RELAYHOST:
	case T_SOCKET:
	case T_ADDRPORT:
	case T_MAILBOX:
	case T_ACCOUNT:
		return 1;
	case T_CONTMODE:
	case T_COUNT:
	case T_DURATION:
	case T_IPVER:
	case T_LOGLEVEL:
	case T_PORT:
	case T_SIZE:
	case T_TLSLEVEL:
	default:
		return 0;
	}
}

static int set_str(struct loader *ld, struct mta_config *c, size_t i,
		   const char *v)
{
	char **f = FIELD(c, &keys[i], char *);
	char *d = strdup(v);

	if (d == NULL) {
		seterr(ld, "out of memory");
		return -1;
	}
	free(*f);
	*f = d;
	return 0;
}

/* server.listen (at least one address), submission.listen and
 * submissions.listen (empty = none): the parsed array of key i. */
static struct sockaddr_storage *listen_array(struct mta_config *c, size_t i,
					     size_t **count, bool *optional)
{
	*optional = true;
	if (keys[i].off == offsetof(struct mta_config, submission_listen)) {
		*count = &c->nsubmission;
		return c->submission;
	}
	if (keys[i].off == offsetof(struct mta_config, submissions_listen)) {
		*count = &c->nsubmissions;
		return c->submissions;
	}
	*optional = false;
	*count = &c->nlisten;
	return c->listen;
}

static int check_listen(struct loader *ld, struct mta_config *c, size_t i,
			const char *v)
{
	char item[128], fmt[128], why[192];
	const char *p = v;
	char *norm = NULL;
	bool optional;
	size_t *count;
	struct sockaddr_storage *arr = listen_array(c, i, &count, &optional);
	int n;

	*count = 0;
	while ((n = cfg_next_item(&p, item, sizeof(item))) != 0) {
		if (n < 0) {
			value_err(ld, i, v, "address too long");
			goto fail;
		}
		if (*count == MTA_CONFIG_MAX_LISTEN) {
			snprintf(why, sizeof(why), "too many addresses (max %d)",
				 MTA_CONFIG_MAX_LISTEN);
			value_err(ld, i, v, why);
			goto fail;
		}
		if (cfg_parse_addrport(item, &arr[*count]) < 0) {
			snprintf(why, sizeof(why),
				 "not addr:port or [v6]:port: %s", item);
			value_err(ld, i, v, why);
			goto fail;
		}
		cfg_format_addrport(&arr[*count], fmt, sizeof(fmt));
		if (cfg_append(&norm, ", ", fmt) < 0) {
			seterr(ld, "out of memory");
			goto fail;
		}
		(*count)++;
	}
	if (*count == 0 && !optional) {
		value_err(ld, i, v, "no address");
		goto fail;
	}
	free(*FIELD(c, &keys[i], char *));
	*FIELD(c, &keys[i], char *) = norm;
	return 0;
fail:
	free(norm);
	return -1;
}

static int check_cidrs(struct loader *ld, struct mta_config *c, size_t i,
		       const char *v)
{
	char item[128], fmt[128], why[192];
	const char *p = v, *w;
	char *norm = NULL;
	int n;

	c->nrelay_networks = 0;
	while ((n = cfg_next_item(&p, item, sizeof(item))) != 0) {
		if (n < 0) {
			value_err(ld, i, v, "network too long");
			goto fail;
		}
		if (c->nrelay_networks == MTA_CONFIG_MAX_NETWORKS) {
			snprintf(why, sizeof(why), "too many networks (max %d)",
				 MTA_CONFIG_MAX_NETWORKS);
			value_err(ld, i, v, why);
			goto fail;
		}
		if (cfg_parse_cidr(item, &c->relay_networks[c->nrelay_networks],
				   &w) < 0) {
			snprintf(why, sizeof(why), "%s: %s", w, item);
			value_err(ld, i, v, why);
			goto fail;
		}
		cfg_format_cidr(&c->relay_networks[c->nrelay_networks], fmt,
				sizeof(fmt));
		if (cfg_append(&norm, ", ", fmt) < 0) {
			seterr(ld, "out of memory");
			goto fail;
		}
		c->nrelay_networks++;
	}
	if (norm == NULL && (norm = strdup("")) == NULL) {
		seterr(ld, "out of memory");
		return -1;
	}
	free(c->server_relay_networks);
	c->server_relay_networks = norm;
	return 0;
fail:
	free(norm);
	return -1;
}

static int check_number(struct loader *ld, struct mta_config *c, size_t i,
			const char *v)
{
	const struct key *k = &keys[i];
	char why[128];
	const char *e;
	uint64_t n = 0;
	int bad;

	switch (k->type) {
	case T_SIZE:
		bad = cfg_parse_size(v, &n) < 0;
		break;
	case T_DURATION:
		bad = cfg_parse_duration(v, &n) < 0;
		break;
	case T_ACCOUNT:
	case T_ADDRPORT:
	case T_CIDRS:
	case T_CONTMODE:
	case T_COUNT:
	case T_HOSTNAME:
	case T_IPVER:
	case T_LISTEN:
	case T_LOGLEVEL:
	case T_MAILBOX:
	case T_OPTPATH:
	case T_PATH:
	case T_PORT:
	case T_RELAYHOST:
	case T_RESOLVER:
	case T_SOCKET:
	case T_TLSLEVEL:
	default:
		bad = cfg_parse_u64(v, &n, &e) < 0 || *e != '\0';
		break;
	}
	if (bad) {
		value_err(ld, i, v,
			  k->type == T_SIZE	  ? "not a size"
			  : k->type == T_DURATION ? "not a duration"
			  : k->type == T_PORT	  ? "not a port"
						  : "not a number");
		return -1;
	}
	if (n < k->min || n > k->max) {
		const char *unit = k->type == T_DURATION ? "s" : "";
		snprintf(why, sizeof(why), "out of range (%llu%s..%llu%s)",
			 (unsigned long long)k->min, unit,
			 (unsigned long long)k->max, unit);
		value_err(ld, i, v, why);
		return -1;
	}
	if (k->type == T_SIZE)
		*FIELD(c, k, uint64_t) = n;
	else
		*FIELD(c, k, unsigned) = (unsigned)n;
	return 0;
}

/* Over 100 lines on purpose: one case per key type (T_*), each a few
 * lines, so the whole mapping from a type to its check and its error text
 * reads in one place; the per-type helpers it calls hold the parsing. */
static int check_key(struct loader *ld, struct mta_config *c, size_t i,
		     const char *v)
{
	const struct key *k = &keys[i];
	char host[256], why[128];
	struct sockaddr_storage ss;
	enum mta_log_level lvl;
	int br;

	if (cfg_has_ctl(v)) {
		value_err(ld, i, v, "contains a control character");
		return -1;
	}
	if (k->type != T_LISTEN && k->type != T_CIDRS &&
	    strlen(v) > MAX_VALUE) {
		snprintf(why, sizeof(why), "too long (max %d bytes)",
			 MAX_VALUE);
		value_err(ld, i, v, why);
		return -1;
	}
	switch (k->type) {
	case T_LISTEN:
		return check_listen(ld, c, i, v);
	case T_CIDRS:
		return check_cidrs(ld, c, i, v);
	case T_SIZE:
	case T_COUNT:
	case T_DURATION:
	case T_PORT:
		return check_number(ld, c, i, v);
	case T_HOSTNAME:
		if (*v == '\0') {
			if (gethostname(host, sizeof(host)) < 0) {
				value_err(ld, i, v,
					  "cannot get the system host name");
				return -1;
			}
			host[sizeof(host) - 1] = '\0';
			if (!cfg_valid_hostname(host)) {
				value_err(ld, i, host,
					  "system host name is not a valid "
					  "domain name; set it");
				return -1;
			}
			return set_str(ld, c, i, host);
		}
		if (!cfg_valid_hostname(v)) {
			value_err(ld, i, v, "not a host name");
			return -1;
		}
		return set_str(ld, c, i, v);
	case T_PATH:
		if (*v == '\0') {
			value_err(ld, i, v, "must not be empty");
			return -1;
		}
		return set_str(ld, c, i, v);
	case T_OPTPATH:
	case T_SOCKET: /* resolved after spool.dir, in finish() */
		return *v == '\0' ? 0 : set_str(ld, c, i, v);
	case T_RESOLVER:
		if (*v == '\0')
			return 0;
		if (cfg_split_hostport(v, host, sizeof(host), &br, 1) < 0 ||
		    (inet_pton(AF_INET, host, &ss) != 1 &&
		     (!br || inet_pton(AF_INET6, host, &ss) != 1))) {
			value_err(ld, i, v,
				  "not addr, addr:port or [v6]:port");
			return -1;
		}
		return set_str(ld, c, i, v);
	case T_RELAYHOST:
		if (*v == '\0')
			return 0;
		if (cfg_split_hostport(v, host, sizeof(host), &br, 0) < 0 ||
		    !cfg_valid_host(host, br)) {
			value_err(ld, i, v,
				  "not host, host:port or [host]:port");
			return -1;
		}
		return set_str(ld, c, i, v);
	case T_TLSLEVEL: {
		char msg[160];
		int lv = mta_tls_level_parse(v);

		if (lv < 0) {
			snprintf(msg, sizeof(msg), "not one of %s",
				 mta_tls_level_list());
			value_err(ld, i, v, msg);
			return -1;
		}
		*FIELD(c, k, enum mta_tls_level) = (enum mta_tls_level)lv;
		return 0;
	}
	case T_MAILBOX:
		if (*v == '\0')
			return 0;
		if (!cfg_valid_mailbox(v)) {
			value_err(ld, i, v, "not an address local@domain");
			return -1;
		}
		return set_str(ld, c, i, v);
	case T_ACCOUNT:
		if (!valid_account(v)) {
			value_err(ld, i, v,
				  "not a user or group name (letters, digits, "
				  "'_', '.', '-'; at most 32; not '-' first)");
			return -1;
		}
		return set_str(ld, c, i, v);
	case T_ADDRPORT:
		if (cfg_parse_addrport(v, &ss) < 0) {
			value_err(ld, i, v, "not addr:port or [v6]:port");
			return -1;
		}
		c->http_addr = ss;
		cfg_format_addrport(&ss, host, sizeof(host));
		return set_str(ld, c, i, host);
	case T_IPVER:
		for (int n = 0; n < 5; n++) {
			if (strcmp(v, mta_config_ipver_names[n]) == 0) {
				*FIELD(c, k, int) = n;
				return 0;
			}
		}
		value_err(ld, i, v,
			  "not one of any, ipv4, ipv6, prefer-ipv4, "
			  "prefer-ipv6");
		return -1;
	case T_CONTMODE: {
		bool found = false;
#define CONT_E(e, name)                                                       \
	if (!found && strcmp(v, name) == 0) {                                 \
		*FIELD(c, k, enum mta_policy_cont_mode) =                     \
			MTA_POLICY_CONT_MODE_##e;                             \
		found = true;                                                 \
	}
		MTA_POLICY_CONT_MODE_MAP(CONT_E)
#undef CONT_E
		if (!found) {
			value_err(ld, i, v, "not one of off, log, hold");
			return -1;
		}
		return 0;
	}
	case T_LOGLEVEL:
		if (mta_log_parse_level(v, &lvl) < 0) {
			value_err(ld, i, v,
				  "not one of debug, info, warn, error");
			return -1;
		}
		*FIELD(c, k, int) = (int)lvl;
		return 0;
	}
	return 0;
}

static size_t find_key(const char *section, const char *name)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, section) == 0 &&
		    strcmp(keys[i].name, name) == 0)
			return i;
	return NKEYS;
}

static const char *raw_value(const struct loader *ld, size_t i)
{
	return ld->raw[i].val ? ld->raw[i].val : keys[i].def;
}

/* Checks that span keys: the TLS pair, the control socket path. */
static int finish(struct loader *ld, struct mta_config *c)
{
	size_t icert = find_key("server", "tls_cert");
	size_t ikey = find_key("server", "tls_key");
	size_t isock = find_key("control", "socket");
	size_t idir = find_key("spool", "dir");
	struct sockaddr_un sun;
	char why[MAX_VALUE + 128];

	size_t imin = find_key("delivery", "min_backoff");
	size_t imax = find_key("delivery", "max_backoff");

	if (c->min_backoff > c->max_backoff) {
		/* blame the one the operator set; both set: the larger */
		size_t bad = ld->raw[imin].origin != O_DEFAULT ? imin : imax;
		snprintf(why, sizeof(why), "greater than delivery.max_backoff "
			 "(%us > %us)", c->min_backoff, c->max_backoff);
		if (bad == imax)
			snprintf(why, sizeof(why), "less than delivery."
				 "min_backoff (%us < %us)", c->max_backoff,
				 c->min_backoff);
		value_err(ld, bad, raw_value(ld, bad), why);
		return -1;
	}
	if (c->tls_require_sct > 0 && c->tls_ct_log_list == NULL) {
		size_t ireq = find_key("tls", "require_sct");
		value_err(ld, ireq, raw_value(ld, ireq),
			  "set without tls.ct_log_list");
		return -1;
	}
	if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
		size_t set = c->tls_cert ? icert : ikey;
		size_t unset = c->tls_cert ? ikey : icert;
		snprintf(why, sizeof(why), "set without %s.%s",
			 keys[unset].section, keys[unset].name);
		value_err(ld, set, raw_value(ld, set), why);
		return -1;
	}
	if (c->nsubmission + c->nsubmissions > 0) {
		/* AUTH only over TLS (587: after STARTTLS; 465: implicit) */
		size_t isub = find_key(c->nsubmission ? "submission"
						      : "submissions", "listen");
		if (c->tls_cert == NULL) {
			value_err(ld, isub, raw_value(ld, isub),
				  "needs server.tls_cert and server.tls_key "
				  "(AUTH is only offered over TLS)");
			return -1;
		}
		if (c->auth_users_file == NULL) {
			value_err(ld, isub, raw_value(ld, isub),
				  "needs auth.users_file");
			return -1;
		}
	}
	if (c->control_socket == NULL) {
		size_t dl = strlen(c->spool_dir);
		char *p = malloc(dl + sizeof("/control.sock"));
		if (p == NULL) {
			seterr(ld, "out of memory");
			return -1;
		}
		memcpy(p, c->spool_dir, dl);
		while (dl > 0 && p[dl - 1] == '/')
			dl--;
		memcpy(p + dl, "/control.sock", sizeof("/control.sock"));
		c->control_socket = p;
		if (strlen(p) >= sizeof(sun.sun_path)) {
			snprintf(why, sizeof(why),
				 "control socket path %s/control.sock would "
				 "be too long (max %zu bytes)",
				 c->spool_dir, sizeof(sun.sun_path) - 1);
			value_err(ld, idir, raw_value(ld, idir), why);
			return -1;
		}
	}
	if (strlen(c->control_socket) >= sizeof(sun.sun_path)) {
		snprintf(why, sizeof(why), "too long for a Unix socket "
			 "(max %zu bytes)", sizeof(sun.sun_path) - 1);
		value_err(ld, isock, raw_value(ld, isock), why);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* pass 1: the file */

static int known_section(const char *s, size_t len)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strlen(keys[i].section) == len &&
		    strncmp(keys[i].section, s, len) == 0)
			return 1;
	return 0;
}

/*
 * fgets-like reader for ini_parse_stream(): one call = one line, so
 * ld->lineno is the line the next handler call is about.  It also rejects
 * what libinih would silently mangle: long lines (split), NUL bytes
 * (truncated), unknown [sections] without keys (ignored).
 */
static char *reader(char *str, int num, void *stream)
{
	struct loader *ld = stream;
	ssize_t n;
	const char *p, *rb;

	if (ld->failed)
		return NULL;
	errno = 0;
	n = getline(&ld->line, &ld->cap, ld->f);
	if (n < 0) {
		if (errno != 0 && ferror(ld->f))
			seterr(ld, "%s: %s", ld->path, strerror(errno));
		return NULL;
	}
	ld->lineno++;
	if (strlen(ld->line) != (size_t)n) {
		seterr(ld, "%s:%d: syntax error (NUL byte)", ld->path,
		       ld->lineno);
		return NULL;
	}
	if (num < 4 || (size_t)n + 1 > (size_t)num) {
		seterr(ld, "%s:%d: line too long (max %d bytes)", ld->path,
		       ld->lineno, num - 3);
		return NULL;
	}
	p = ld->line;
	if (ld->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
		p += 3;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '[' && (rb = strchr(p, ']')) != NULL &&
	    !known_section(p + 1, (size_t)(rb - p - 1))) {
		seterr(ld, "%s:%d: [%.*s]: unknown section", ld->path,
		       ld->lineno, (int)(rb - p - 1), p + 1);
		return NULL;
	}
	memcpy(str, ld->line, (size_t)n + 1);
	return str;
}

/* Whether the current raw line is "name = ..." rather than a continuation
 * line of the previous key's value (libinih calls both the same way). */
static int is_key_line(const struct loader *ld, const char *name)
{
	const char *p = ld->line;
	size_t nl = strlen(name);

	if (ld->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
		p += 3;
	/* blanks as libinih strips them (isspace: also \f, \v) */
	while (isspace((unsigned char)*p))
		p++;
	if (strncmp(p, name, nl) != 0)
		return 0;
	p += nl;
	while (isspace((unsigned char)*p))
		p++;
	return *p == '=' || *p == ':';
}

static int handler(void *user, const char *section, const char *name,
		   const char *value)
{
	struct loader *ld = user;
	struct raw *r;
	char v[512];
	size_t i;

	if (ld->failed)
		return 0;
	char sn[256], kn[256];

	if (*section == '\0') {
		seterr(ld, "%s:%d: %s: key outside any section", ld->path,
		       ld->lineno, shown(name, kn, sizeof(kn)));
		return 0;
	}
	i = find_key(section, name);
	if (i == NKEYS) {
		if (!known_section(section, strlen(section)))
			seterr(ld, "%s:%d: [%s]: unknown section", ld->path,
			       ld->lineno, shown(section, sn, sizeof(sn)));
		else
			seterr(ld, "%s:%d: %s.%s: unknown key", ld->path,
			       ld->lineno, section, shown(name, kn, sizeof(kn)));
		return 0;
	}
	r = &ld->raw[i];
	if (!is_key_line(ld, name)) {
		/* continuation line: only lists may span lines */
		if (keys[i].type != T_LISTEN && keys[i].type != T_CIDRS) {
			seterr(ld, "%s:%d: %s.%s: continuation line for a "
			       "value that is not a list ('%s')", ld->path,
			       ld->lineno, section, name,
			       shown(value, v, sizeof(v)));
			return 0;
		}
		size_t vl = r->val ? strlen(r->val) : 0;
		if (cfg_append(&r->val, vl && r->val[vl - 1] == ',' ? " " : ", ",
			       value) < 0) {
			seterr(ld, "out of memory");
			return 0;
		}
		return 1;
	}
	if (r->origin == O_FILE) {
		seterr(ld, "%s:%d: %s.%s: duplicate key (first on line %d) "
		       "('%s')", ld->path, ld->lineno, section, name, r->line,
		       shown(value, v, sizeof(v)));
		return 0;
	}
	if ((r->val = strdup(value)) == NULL) {
		seterr(ld, "out of memory");
		return 0;
	}
	r->origin = O_FILE;
	r->line = ld->lineno;
	return 1;
}

static int read_file(struct loader *ld)
{
	int rc;

	ld->f = fopen(ld->path, "re");
	if (ld->f == NULL) {
		seterr(ld, "%s: %s", ld->path, strerror(errno));
		return -1;
	}
	rc = ini_parse_stream(reader, ld, handler, ld);
	fclose(ld->f);
	ld->f = NULL;
	free(ld->line);
	ld->line = NULL;
	if (rc > 0 && (!ld->failed || rc < ld->err_line)) {
		/* libinih reports a syntax error only at the end, but it
		 * comes first in the file: it wins */
		ld->failed = 0;
		seterr(ld, "%s:%d: syntax error", ld->path, rc);
	}
	else if (rc < 0)
		seterr(ld, "%s: out of memory", ld->path);
	return ld->failed ? -1 : 0;
}

/* ------------------------------------------------------------------------ */
/* pass 2: the environment */

/* Removes leading and trailing blanks in place, as libinih does. */
static void trim(char *s)
{
	size_t b = strspn(s, " \t"), len = strlen(s + b);

	memmove(s, s + b, len + 1);
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		s[--len] = '\0';
}

/* Looks like a key: MTAD_ then upper case letters, digits, '_'. */
static int key_like(const char *name, size_t len)
{
	if (len <= 5 || strncmp(name, "MTAD_", 5) != 0)
		return 0;
	for (size_t j = 5; j < len; j++)
		if (!(isupper((unsigned char)name[j]) ||
		      isdigit((unsigned char)name[j]) || name[j] == '_'))
			return 0;
	return 1;
}

static int read_env(struct loader *ld, char *const *envp)
{
	char env[64];

	for (; envp != NULL && *envp != NULL; envp++) {
		const char *e = *envp, *eq = strchr(e, '=');
		size_t nl, i;
		struct raw *r;

		if (eq == NULL)
			continue;
		nl = (size_t)(eq - e);
		if (!key_like(e, nl))
			continue;
		if (nl == strlen("MTAD_CONFIG") &&
		    strncmp(e, "MTAD_CONFIG", nl) == 0)
			continue; /* a file path for the tools, not a key */
		for (i = 0; i < NKEYS; i++) {
			env_name(&keys[i], env, sizeof(env));
			if (strlen(env) == nl && strncmp(env, e, nl) == 0)
				break;
		}
		if (i == NKEYS) {
			seterr(ld, "environment %.*s: unknown variable "
			       "(names no key)", (int)nl, e);
			return -1;
		}
		r = &ld->raw[i];
		if (r->origin == O_ENV) {
			seterr(ld, "environment %.*s: set more than once",
			       (int)nl, e);
			return -1;
		}
		free(r->val);
		r->val = strdup(eq + 1);
		if (r->val == NULL) {
			seterr(ld, "out of memory");
			return -1;
		}
		trim(r->val);
		r->origin = O_ENV;
		r->line = 0;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */

void mta_config_where(const struct mta_config *c, const char *section,
		      const char *key, char *buf, size_t len)
{
	size_t i = find_key(section, key);
	char env[64];

	if (i >= NKEYS || c->origin_kind[i] == O_DEFAULT) {
		snprintf(buf, len, "default");
	} else if (c->origin_kind[i] == O_FILE) {
		snprintf(buf, len, "%s:%d",
			 c->origin_path ? c->origin_path : "?",
			 c->origin_line[i]);
	} else {
		env_name(&keys[i], env, sizeof(env));
		snprintf(buf, len, "environment %s", env);
	}
}

void mta_config_free(struct mta_config *c)
{
	if (c == NULL)
		return;
	mta_dkim_keys_free(c->dkim_keys);
	free(c->origin_path);
	for (size_t i = 0; i < NKEYS; i++)
		if (is_string_type(keys[i].type))
			free(*FIELD(c, &keys[i], char *));
	free(c);
}

int mta_config_load(const char *path, char *const *envp,
		    struct mta_config **out, char *err, size_t errlen)
{
	struct loader *ld;
	struct mta_config *c;
	int rc = MTA_ECONFIG;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	ld = calloc(1, sizeof(*ld));
	c = calloc(1, sizeof(*c));
	if (ld == NULL || c == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "out of memory");
		free(ld);
		free(c);
		return -ENOMEM;
	}
	ld->path = path;
	ld->err = err;
	ld->errlen = errlen;

	if (path != NULL && read_file(ld) < 0)
		goto out;
	if (read_env(ld, envp) < 0)
		goto out;
	for (size_t i = 0; i < NKEYS; i++)
		if (check_key(ld, c, i, raw_value(ld, i)) < 0)
			goto out;
	if (finish(ld, c) < 0)
		goto out;
	_Static_assert(NKEYS <= MTA_CONFIG_MAX_KEYS, "origin table too small");
	for (size_t i = 0; i < NKEYS; i++) {
		c->origin_kind[i] = (unsigned char)ld->raw[i].origin;
		c->origin_line[i] = ld->raw[i].line;
	}
	if (path != NULL && (c->origin_path = strdup(path)) == NULL) {
		seterr(ld, "out of memory");
		rc = -ENOMEM;
		goto out;
	}
	*out = c;
	c = NULL;
	rc = 0;
out:
	for (size_t i = 0; i < NKEYS; i++)
		free(ld->raw[i].val);
	free(ld);
	mta_config_free(c);
	return rc;
}

/* Prints a list "a, b, c" as "key = a, b,\n\tc" wrapped before PRINT_WRAP,
 * which mta_config_load() reads back as one value. */
static void print_list(FILE *f, const char *name, const char *v)
{
	size_t col = (size_t)fprintf(f, "%s =", name);
	char item[128];
	const char *p = v;
	int n, first = 1;

	while ((n = cfg_next_item(&p, item, sizeof(item))) > 0) {
		if (!first && col + (size_t)n + 2 > PRINT_WRAP) {
			fprintf(f, ",\n\t");
			col = 8;
		} else {
			fprintf(f, "%s ", first ? "" : ",");
			col += first ? 1 : 2;
		}
		fputs(item, f);
		col += (size_t)n;
		first = 0;
	}
	fputc('\n', f);
}

void mta_config_print(const struct mta_config *c, FILE *f)
{
	static const char *const lv[] = {"debug", "info", "warn", "error"};
	const char *sec = NULL;

	fprintf(f, "# mtad effective configuration (sizes in bytes, "
		   "durations in seconds)\n");
	for (size_t i = 0; i < NKEYS; i++) {
		const struct key *k = &keys[i];
		if (sec == NULL || strcmp(sec, k->section) != 0) {
			fprintf(f, "%s[%s]\n", sec ? "\n" : "", k->section);
			sec = k->section;
		}
		switch (k->type) {
		case T_LISTEN:
		case T_CIDRS: {
			const char *s = *(char *const *)(const void *)(
				(const char *)c + k->off);
			print_list(f, k->name, s ? s : "");
			break;
		}
		case T_SIZE:
			fprintf(f, "%s = %llu\n", k->name,
				(unsigned long long)*(const uint64_t *)(
					const void *)((const char *)c + k->off));
			break;
		case T_DURATION:
			fprintf(f, "%s = %us\n", k->name,
				*(const unsigned *)(const void *)(
					(const char *)c + k->off));
			break;
		case T_COUNT:
		case T_PORT:
			fprintf(f, "%s = %u\n", k->name,
				*(const unsigned *)(const void *)(
					(const char *)c + k->off));
			break;
		case T_TLSLEVEL:
			fprintf(f, "%s = %s\n", k->name,
				mta_tls_level_name(*(const enum mta_tls_level *)(
					const void *)((const char *)c + k->off)));
			break;
		case T_IPVER: {
			int l = *(const int *)(const void *)((const char *)c +
							     k->off);
			fprintf(f, "%s = %s\n", k->name,
				l >= 0 && l < 5 ? mta_config_ipver_names[l]
						: "any");
			break;
		}
		case T_CONTMODE:
			fprintf(f, "%s = %s\n", k->name,
				mta_policy_cont_mode_name(
					*(const enum mta_policy_cont_mode *)(
						const void *)((const char *)c +
							      k->off)));
			break;
		case T_LOGLEVEL: {
			int l = *(const int *)(const void *)((const char *)c +
							     k->off);
			fprintf(f, "%s = %s\n", k->name,
				l >= 0 && l <= 3 ? lv[l] : "info");
			break;
		}
		case T_ACCOUNT:
		case T_ADDRPORT:
		case T_HOSTNAME:
		case T_MAILBOX:
		case T_OPTPATH:
		case T_PATH:
		case T_RELAYHOST:
		case T_RESOLVER:
		case T_SOCKET:
		default: {
			const char *s = *(char *const *)(const void *)(
				(const char *)c + k->off);
			fprintf(f, "%s =%s%s\n", k->name, s ? " " : "",
				s ? s : "");
			break;
		}
		}
	}
}

static int prefix_match(const uint8_t *a, const uint8_t *net, unsigned prefix)
{
	unsigned full = prefix / 8, rest = prefix % 8;

	if (memcmp(a, net, full) != 0)
		return 0;
	if (rest == 0)
		return 1;
	return ((a[full] ^ net[full]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

bool mta_config_relay_allowed(const struct mta_config *c,
			      const struct sockaddr *sa)
{
	const uint8_t *a4 = NULL, *a6 = NULL;

	if (c == NULL || sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		a4 = (const uint8_t *)&((const struct sockaddr_in *)(
						const void *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *in6 = &((const struct sockaddr_in6 *)(
						       const void *)sa)->sin6_addr;
		a6 = in6->s6_addr;
		if (IN6_IS_ADDR_V4MAPPED(in6))
			a4 = in6->s6_addr + 12;
	} else {
		return false;
	}
	for (size_t i = 0; i < c->nrelay_networks; i++) {
		const struct mta_cidr *n = &c->relay_networks[i];
		if (n->family == AF_INET && a4 && prefix_match(a4, n->addr,
							       n->prefix))
			return true;
		if (n->family == AF_INET6 && a6 && prefix_match(a6, n->addr,
								n->prefix))
			return true;
	}
	return false;
}
