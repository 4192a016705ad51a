/*
 * test_config.c - unit tests of libmta/config.c (cmocka).
 *
 * Every test writes its own temp file (mkstemp under $MTA_TEST_TMPDIR or
 * /tmp), passes an explicit envp (never the process environment) and
 * removes the file at the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "err.h"
#include "log.h"

static char *const no_env[] = {NULL};

/* A temp file holding text; path in buf (at least 256 bytes). */
static void write_tmp(char *buf, size_t len, const char *text)
{
	const char *dir = getenv("MTA_TEST_TMPDIR");
	FILE *f;
	int fd;

	if (dir == NULL || *dir == '\0')
		dir = "/tmp";
	snprintf(buf, len, "%s/test_config.XXXXXX", dir);
	fd = mkstemp(buf);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

/* Loads text (NULL = no file) with envp; path of the file in path. */
static int load(const char *text, char *const *envp, struct mta_config **c,
		char *err, size_t errlen, char *path, size_t pathlen)
{
	int rc;

	*c = NULL;
	if (text == NULL)
		return mta_config_load(NULL, envp, c, err, errlen);
	write_tmp(path, pathlen, text);
	rc = mta_config_load(path, envp, c, err, errlen);
	unlink(path);
	return rc;
}

static void sa4(struct sockaddr_storage *ss, const char *a, unsigned port)
{
	struct sockaddr_in *s = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof(*ss));
	s->sin_family = AF_INET;
	s->sin_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET, a, &s->sin_addr), 1);
}

static void sa6(struct sockaddr_storage *ss, const char *a, unsigned port)
{
	struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	s->sin6_family = AF_INET6;
	s->sin6_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET6, a, &s->sin6_addr), 1);
}

static bool allowed(const struct mta_config *c, const char *a)
{
	struct sockaddr_storage ss;

	if (strchr(a, ':'))
		sa6(&ss, a, 0);
	else
		sa4(&ss, a, 0);
	return mta_config_relay_allowed(c, (struct sockaddr *)&ss);
}

/* ------------------------------------------------------------------------ */

static void test_defaults(void **state)
{
	struct mta_config *c;
	struct sockaddr_storage ss;
	char err[512], host[256];

	(void)state;
	assert_int_equal(mta_config_load(NULL, no_env, &c, err, sizeof(err)),
			 0);
	assert_int_equal(gethostname(host, sizeof(host)), 0);
	assert_string_equal(c->server_hostname, host);
	assert_int_equal(c->nlisten, 1);
	sa4(&ss, "127.0.0.1", 2525);
	assert_memory_equal(&c->listen[0], &ss, sizeof(ss));
	assert_string_equal(c->server_listen, "127.0.0.1:2525");
	assert_int_equal(c->nrelay_networks, 2);
	assert_string_equal(c->server_relay_networks, "127.0.0.0/8, ::1/128");
	assert_int_equal(c->max_message_size, 36700160);
	assert_int_equal(c->max_recipients, 1000);
	assert_int_equal(c->max_sessions, 1000);
	assert_int_equal(c->command_timeout, 300);
	assert_int_equal(c->data_timeout, 600);
	assert_null(c->tls_cert);
	assert_null(c->tls_key);
	assert_string_equal(c->spool_dir, "/var/spool/mtad");
	assert_int_equal(c->spool_max_size, 8ULL << 30);
	assert_null(c->dns_resolver);
	assert_string_equal(c->dns_trust_anchor, "/usr/share/dns/root.key");
	assert_int_equal(c->delivery_port, 25);
	assert_null(c->delivery_relayhost);
	assert_int_equal(c->queue_lifetime, 5 * 86400);
	assert_string_equal(c->tls_ca_file,
			    "/etc/ssl/certs/ca-certificates.crt");
	assert_null(c->tls_policy_file);
	assert_int_equal(c->tls_default_level, MTA_TLS_MAY);
	assert_int_equal(c->mta_sts_https_port, 443);
	assert_string_equal(c->control_socket,
			    "/var/spool/mtad/control.sock");
	assert_string_equal(c->http_listen, "127.0.0.1:9025");
	sa4(&ss, "127.0.0.1", 9025);
	assert_memory_equal(&c->http_addr, &ss, sizeof(ss));
	assert_int_equal(c->log_level, MTA_LOG_INFO);
	assert_true(allowed(c, "127.0.0.1"));
	assert_true(allowed(c, "::1"));
	assert_false(allowed(c, "10.0.0.1"));
	mta_config_free(c);

	/* NULL envp is the same as an empty environment */
	assert_int_equal(mta_config_load(NULL, NULL, &c, err, sizeof(err)), 0);
	mta_config_free(c);
	mta_config_free(NULL);
}

static const char full_file[] =
	"; every key, none at its default\n"
	"[server]\n"
	"hostname = mx1.example.net\n"
	"listen = 0.0.0.0:25, [::]:25 [::1]:587\n"
	"relay_networks = 10.0.0.0/8, 192.0.2.7, 2001:db8::/32\n"
	"max_message_size = 10M\n"
	"max_recipients = 50\n"
	"max_sessions = 20\n"
	"command_timeout = 5m\n"
	"data_timeout = 1h\n"
	"tls_cert = /etc/mtad/cert.pem\n"
	"tls_key = /etc/mtad/key.pem ; inline comment\n"
	"[spool]\n"
	"dir = /srv/spool/\n"
	"max_size = 2G\n"
	"[dns]\n"
	"resolver = [2001:db8::53]:5353\n"
	"trust_anchor = /etc/mtad/root.key\n"
	"[delivery]\n"
	"port = 2525\n"
	"relayhost = [smart.example.net]:587\n"
	"queue_lifetime = 2d\n"
	"[tls]\n"
	"ca_file = /etc/mtad/ca.pem\n"
	"policy_file = /etc/mtad/tls-policy\n"
	"default_level = dane-only\n"
	"[mta_sts]\n"
	"https_port = 8443\n"
	"[control]\n"
	"socket = /run/mtad/control.sock\n"
	"[http]\n"
	"listen = [::1]:9100\n"
	"[log]\n"
	"level = debug\n";

static void test_full_file(void **state)
{
	struct mta_config *c;
	struct sockaddr_storage ss;
	char err[512], path[256];

	(void)state;
	assert_int_equal(load(full_file, no_env, &c, err, sizeof(err), path,
			      sizeof(path)),
			 0);
	assert_string_equal(c->server_hostname, "mx1.example.net");
	assert_int_equal(c->nlisten, 3);
	sa4(&ss, "0.0.0.0", 25);
	assert_memory_equal(&c->listen[0], &ss, sizeof(ss));
	sa6(&ss, "::", 25);
	assert_memory_equal(&c->listen[1], &ss, sizeof(ss));
	sa6(&ss, "::1", 587);
	assert_memory_equal(&c->listen[2], &ss, sizeof(ss));
	assert_string_equal(c->server_listen,
			    "0.0.0.0:25, [::]:25, [::1]:587");
	assert_int_equal(c->nrelay_networks, 3);
	assert_string_equal(c->server_relay_networks,
			    "10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32");
	assert_int_equal(c->relay_networks[1].family, AF_INET);
	assert_int_equal(c->relay_networks[1].prefix, 32);
	assert_int_equal(c->max_message_size, 10 << 20);
	assert_int_equal(c->max_recipients, 50);
	assert_int_equal(c->max_sessions, 20);
	assert_int_equal(c->command_timeout, 300);
	assert_int_equal(c->data_timeout, 3600);
	assert_string_equal(c->tls_cert, "/etc/mtad/cert.pem");
	assert_string_equal(c->tls_key, "/etc/mtad/key.pem");
	assert_string_equal(c->spool_dir, "/srv/spool/");
	assert_int_equal(c->spool_max_size, 2ULL << 30);
	assert_string_equal(c->dns_resolver, "[2001:db8::53]:5353");
	assert_string_equal(c->dns_trust_anchor, "/etc/mtad/root.key");
	assert_int_equal(c->delivery_port, 2525);
	assert_string_equal(c->delivery_relayhost,
			    "[smart.example.net]:587");
	assert_int_equal(c->queue_lifetime, 2 * 86400);
	assert_string_equal(c->tls_ca_file, "/etc/mtad/ca.pem");
	assert_string_equal(c->tls_policy_file, "/etc/mtad/tls-policy");
	assert_int_equal(c->tls_default_level, MTA_TLS_DANE_ONLY);
	assert_int_equal(c->mta_sts_https_port, 8443);
	assert_string_equal(c->control_socket, "/run/mtad/control.sock");
	assert_string_equal(c->http_listen, "[::1]:9100");
	sa6(&ss, "::1", 9100);
	assert_memory_equal(&c->http_addr, &ss, sizeof(ss));
	assert_int_equal(c->log_level, MTA_LOG_DEBUG);
	mta_config_free(c);
}

/* ------------------------------------------------------------------------ */
/* bad values: one table row per key (at least) */

struct bad {
	const char *section, *line, *expect; /* expect without "file:2: " */
};

#define LONG161                                                               \
	"/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aaaaaaaaaaaaaaaaaaaaaaaaa"
#define LONG110                                                               \
	"/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" \
	"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
/* over two lines: the continuation is joined with " " after a ',' */
#define L17_SEP "\n  "
#define L17J                                                                  \
	"1.0.0.1:1, 1.0.0.2:1, 1.0.0.3:1, 1.0.0.4:1, 1.0.0.5:1, 1.0.0.6:1, "  \
	"1.0.0.7:1, 1.0.0.8:1, 1.0.0.9:1, 1.0.0.10:1, 1.0.0.11:1, "           \
	"1.0.0.12:1, 1.0.0.13:1, 1.0.0.14:1, 1.0.0.15:1, 1.0.0.16:1, "        \
	"1.0.0.17:1"
#define L17                                                                   \
	"1.0.0.1:1, 1.0.0.2:1, 1.0.0.3:1, 1.0.0.4:1, 1.0.0.5:1, 1.0.0.6:1, "  \
	"1.0.0.7:1, 1.0.0.8:1, 1.0.0.9:1, 1.0.0.10:1, 1.0.0.11:1,"            \
	L17_SEP                                                               \
	"1.0.0.12:1, 1.0.0.13:1, 1.0.0.14:1, 1.0.0.15:1, 1.0.0.16:1, "        \
	"1.0.0.17:1"

static const struct bad bads[] = {
	{"server", "postmaster = nobody",
	 "server.postmaster: not an address local@domain ('nobody')"},
	{"server", "postmaster = <pm@site.test>",
	 "server.postmaster: not an address local@domain ('<pm@site.test>')"},
	{"server", "postmaster = a b@site.test",
	 "server.postmaster: not an address local@domain ('a b@site.test')"},
	{"server", "postmaster = pm@-x",
	 "server.postmaster: not an address local@domain ('pm@-x')"},
	{"server", "max_sessions_per_client = 0",
	 "server.max_sessions_per_client: out of range (1..1000000) ('0')"},
	{"server", "hostname = bad_host",
	 "server.hostname: not a host name ('bad_host')"},
	{"server", "hostname = -bad.example",
	 "server.hostname: not a host name ('-bad.example')"},
	{"server", "listen = 127.0.0.1",
	 "server.listen: not addr:port or [v6]:port: 127.0.0.1 ('127.0.0.1')"},
	{"server", "listen = ::1:25",
	 "server.listen: not addr:port or [v6]:port: ::1:25 ('::1:25')"},
	{"server", "listen = localhost:25",
	 "server.listen: not addr:port or [v6]:port: localhost:25 "
	 "('localhost:25')"},
	{"server", "listen = 127.0.0.1:0",
	 "server.listen: not addr:port or [v6]:port: 127.0.0.1:0 "
	 "('127.0.0.1:0')"},
	{"server", "listen = 127.0.0.1:2525, [::1]:70000",
	 "server.listen: not addr:port or [v6]:port: [::1]:70000 "
	 "('127.0.0.1:2525, [::1]:70000')"},
	{"server", "listen =", "server.listen: no address ('')"},
	{"server", "listen = " L17,
	 "server.listen: too many addresses (max 16) ('" L17J "')"},
	{"server", "relay_networks = 10.0.0.1/8",
	 "server.relay_networks: host bits set beyond the prefix: 10.0.0.1/8 "
	 "('10.0.0.1/8')"},
	{"server", "relay_networks = ::1/64",
	 "server.relay_networks: host bits set beyond the prefix: ::1/64 "
	 "('::1/64')"},
	{"server", "relay_networks = 10.0.0.0/33",
	 "server.relay_networks: bad prefix length: 10.0.0.0/33 "
	 "('10.0.0.0/33')"},
	{"server", "relay_networks = ::/129",
	 "server.relay_networks: bad prefix length: ::/129 ('::/129')"},
	{"server", "relay_networks = 127.0.0.0/8, localhost",
	 "server.relay_networks: not a CIDR: localhost "
	 "('127.0.0.0/8, localhost')"},
	{"server", "relay_networks = 10.0.0.0/",
	 "server.relay_networks: bad prefix length: 10.0.0.0/ "
	 "('10.0.0.0/')"},
	{"server", "max_message_size = 12q",
	 "server.max_message_size: not a size ('12q')"},
	{"server", "max_message_size = -1",
	 "server.max_message_size: not a size ('-1')"},
	{"server", "max_message_size = 10 M",
	 "server.max_message_size: not a size ('10 M')"},
	{"server", "max_message_size = 99999999999999999999",
	 "server.max_message_size: not a size ('99999999999999999999')"},
	{"server", "max_message_size = 100",
	 "server.max_message_size: out of range (1024..4294967296) ('100')"},
	{"server", "max_recipients = many",
	 "server.max_recipients: not a number ('many')"},
	{"server", "max_recipients = 0",
	 "server.max_recipients: out of range (1..100000) ('0')"},
	{"server", "max_sessions = 1e3",
	 "server.max_sessions: not a number ('1e3')"},
	{"server", "max_sessions = 0",
	 "server.max_sessions: out of range (1..1000000) ('0')"},
	{"server", "command_timeout = 5x",
	 "server.command_timeout: not a duration ('5x')"},
	{"server", "command_timeout = 0s",
	 "server.command_timeout: out of range (1s..86400s) ('0s')"},
	{"server", "data_timeout = 2w",
	 "server.data_timeout: not a duration ('2w')"},
	{"server", "data_timeout = 2d",
	 "server.data_timeout: out of range (1s..86400s) ('2d')"},
	{"server", "tls_cert = " LONG161 "\ntls_key = k",
	 "server.tls_cert: too long (max 160 bytes) ('" LONG161 "')"},
	{"server", "tls_key = a\x01z\ntls_cert = c",
	 "server.tls_key: contains a control character ('a?z')"},
	{"spool", "dir =", "spool.dir: must not be empty ('')"},
	{"spool", "dir = " LONG110,
	 "spool.dir: control socket path " LONG110 "/control.sock would be "
	 "too long (max 107 bytes) ('" LONG110 "')"},
	{"spool", "max_size = 1k",
	 "spool.max_size: out of range (1048576..70368744177664) ('1k')"},
	{"spool", "max_size = 8T", "spool.max_size: not a size ('8T')"},
	{"dns", "resolver = ns.example.net",
	 "dns.resolver: not addr, addr:port or [v6]:port ('ns.example.net')"},
	{"dns", "resolver = 192.0.2.53:0",
	 "dns.resolver: not addr, addr:port or [v6]:port ('192.0.2.53:0')"},
	{"dns", "resolver = [192.0.2.53:53",
	 "dns.resolver: not addr, addr:port or [v6]:port ('[192.0.2.53:53')"},
	{"dns", "trust_anchor =", "dns.trust_anchor: must not be empty ('')"},
	{"delivery", "port = smtp", "delivery.port: not a port ('smtp')"},
	{"delivery", "port = 0", "delivery.port: out of range (1..65535) ('0')"},
	{"delivery", "port = 65536",
	 "delivery.port: out of range (1..65535) ('65536')"},
	{"delivery", "relayhost = 2001:db8::1",
	 "delivery.relayhost: not host, host:port or [host]:port "
	 "('2001:db8::1')"},
	{"delivery", "relayhost = smart_host",
	 "delivery.relayhost: not host, host:port or [host]:port "
	 "('smart_host')"},
	{"delivery", "relayhost = smart.example:99999",
	 "delivery.relayhost: not host, host:port or [host]:port "
	 "('smart.example:99999')"},
	{"delivery", "queue_lifetime = 400d",
	 "delivery.queue_lifetime: out of range (1s..31536000s) ('400d')"},
	{"delivery", "queue_lifetime = forever",
	 "delivery.queue_lifetime: not a duration ('forever')"},
	{"tls", "ca_file =", "tls.ca_file: must not be empty ('')"},
	{"tls", "policy_file = " LONG161,
	 "tls.policy_file: too long (max 160 bytes) ('" LONG161 "')"},
	{"tls", "default_level = strict",
	 "tls.default_level: not one of none, may, encrypt, dane, dane-only, "
	 "verify ('strict')"},
	{"tls", "default_level = MAY",
	 "tls.default_level: not one of none, may, encrypt, dane, dane-only, "
	 "verify ('MAY')"},
	{"mta_sts", "https_port = 0",
	 "mta_sts.https_port: out of range (1..65535) ('0')"},
	{"mta_sts", "https_port = https",
	 "mta_sts.https_port: not a port ('https')"},
	{"control", "socket = " LONG110,
	 "control.socket: too long for a Unix socket (max 107 bytes) ('" LONG110
	 "')"},
	{"http", "listen = localhost:9025",
	 "http.listen: not addr:port or [v6]:port ('localhost:9025')"},
	{"http", "listen = 127.0.0.1:9025, 127.0.0.1:9026",
	 "http.listen: not addr:port or [v6]:port "
	 "('127.0.0.1:9025, 127.0.0.1:9026')"},
	{"log", "level = verbose",
	 "log.level: not one of debug, info, warn, error ('verbose')"},
};

static void test_bad_values(void **state)
{
	char text[1024], err[1024], expect[1100], path[256];
	struct mta_config *c;

	(void)state;
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		snprintf(text, sizeof(text), "[%s]\n%s\n", bads[i].section,
			 bads[i].line);
		int rc = load(text, no_env, &c, err, sizeof(err), path,
			      sizeof(path));
		snprintf(expect, sizeof(expect), "%s:2: %s", path,
			 bads[i].expect);
		if (rc != MTA_ECONFIG || strcmp(err, expect) != 0)
			print_error("case %zu: rc %d\n got: %s\nwant: %s\n", i,
				    rc, err, expect);
		assert_int_equal(rc, MTA_ECONFIG);
		assert_null(c);
		assert_string_equal(err, expect);
	}
}

/* Values that look odd but are valid. */
static void test_good_values(void **state)
{
	static const char *const goods[] = {
		"[server]\nmax_message_size = 1k\n",
		"[server]\nmax_message_size = 4G\n",
		"[server]\nmax_message_size = 4096K\n",
		"[server]\nlisten = [::ffff:127.0.0.1]:25\n",
		"[server]\nrelay_networks =\n",
		"[server]\nrelay_networks = 0.0.0.0/0,::/0\n",
		"[server]\ncommand_timeout = 86400\n",
		"[server]\nhostname = localhost\n",
		"[dns]\nresolver = 192.0.2.53\n",
		"[dns]\nresolver = 192.0.2.53:5353\n",
		"[dns]\nresolver = 2001:db8::53\n",
		"[dns]\nresolver = [2001:db8::53]\n",
		"[delivery]\nrelayhost = smart.example.net\n",
		"[delivery]\nrelayhost = smart.example.net:2525\n",
		"[delivery]\nrelayhost = [192.0.2.25]\n",
		"[delivery]\nrelayhost = [2001:db8::25]:25\n",
		"[delivery]\nqueue_lifetime = 365d\n",
		"[tls]\ndefault_level = none\n",
		"[tls]\ndefault_level = verify\n",
		"[log]\nlevel = error\n",
		"\xEF\xBB\xBF[log]\nlevel = warn\r\n",
		"[log]\n# comment\n; comment\n\n  level = warn\n",
	};
	char err[512], path[256];
	struct mta_config *c;

	(void)state;
	for (size_t i = 0; i < sizeof(goods) / sizeof(goods[0]); i++) {
		int rc = load(goods[i], no_env, &c, err, sizeof(err), path,
			      sizeof(path));
		if (rc != 0)
			print_error("case %zu: %s\n", i, err);
		assert_int_equal(rc, 0);
		mta_config_free(c);
	}
}

/* File-level errors: "<file>:<line>: ..." or "<file>: ...". */
struct bad_file {
	const char *text, *expect; /* expect: after "<file>" */
};

static const struct bad_file bad_files[] = {
	{"[server]\nlisten = 127.0.0.1:25\nlistn = 1\n",
	 ":3: server.listn: unknown key"},
	{"[server]\n[srever]\nlisten = 127.0.0.1:25\n",
	 ":2: [srever]: unknown section"},
	{"[log]\nlevel = info\n[bogus]\n", ":3: [bogus]: unknown section"},
	{"listen = 127.0.0.1:25\n", ":1: listen: key outside any section"},
	{"[server]\nlisten = 127.0.0.1:25\nmax_sessions = 5\n"
	 "listen = 127.0.0.1:26\n",
	 ":4: server.listen: duplicate key (first on line 2) "
	 "('127.0.0.1:26')"},
	{"[server]\nlisten = 127.0.0.1:25\n[log]\nlevel = info\n[server]\n"
	 "listen = 127.0.0.1:26\n",
	 ":6: server.listen: duplicate key (first on line 2) "
	 "('127.0.0.1:26')"},
	{"[server]\nmax_sessions 5\n", ":2: syntax error"},
	{"[server\nmax_sessions = 5\n", ":1: syntax error"},
	/* syntax is checked before values: the syntax error is reported */
	{"[server]\nmax_sessions = 5\nmax_recipients = 7x\nbroken\n",
	 ":4: syntax error"},
	/* but an unknown key before it is found while reading */
	{"[server]\nmax_sessions = 5\nmax_recipient = 7\nbroken\n",
	 ":3: server.max_recipient: unknown key"},
	{"[server]\nmax_sessions = 5\n  6\n",
	 ":3: server.max_sessions: continuation line for a value that is not "
	 "a list ('6')"},
	{"[tls]\npolicy_file = /"
	 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	 "\n",
	 ":2: line too long (max 197 bytes)"},
};

static void test_bad_files(void **state)
{
	char err[512], expect[600], path[256];
	struct mta_config *c;

	(void)state;
	for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]);
	     i++) {
		int rc = load(bad_files[i].text, no_env, &c, err, sizeof(err),
			      path, sizeof(path));
		snprintf(expect, sizeof(expect), "%s%s", path,
			 bad_files[i].expect);
		if (rc != MTA_ECONFIG || strcmp(err, expect) != 0)
			print_error("case %zu: rc %d\n got: %s\nwant: %s\n", i,
				    rc, err, expect);
		assert_int_equal(rc, MTA_ECONFIG);
		assert_null(c);
		assert_string_equal(err, expect);
	}
}

static void test_unreadable(void **state)
{
	struct mta_config *c = NULL;
	char err[512], expect[600];
	const char *path = "/nonexistent/mtad.conf";

	(void)state;
	assert_int_equal(mta_config_load(path, no_env, &c, err, sizeof(err)),
			 MTA_ECONFIG);
	assert_null(c);
	snprintf(expect, sizeof(expect), "%s: %s", path, strerror(ENOENT));
	assert_string_equal(err, expect);
}

/* A list may continue on indented lines. */
static void test_list_continuation(void **state)
{
	struct mta_config *c;
	char err[512], path[256];

	(void)state;
	assert_int_equal(load("[server]\nrelay_networks = 10.0.0.0/8,\n"
			      "    192.168.0.0/16\n\t::1\nmax_sessions = 3\n",
			      no_env, &c, err, sizeof(err), path,
			      sizeof(path)),
			 0);
	assert_int_equal(c->nrelay_networks, 3);
	assert_string_equal(c->server_relay_networks,
			    "10.0.0.0/8, 192.168.0.0/16, ::1/128");
	assert_int_equal(c->max_sessions, 3);
	mta_config_free(c);
}

/* ------------------------------------------------------------------------ */
/* environment */

static void test_env_overrides(void **state)
{
	char *env[] = {
		"PATH=/usr/bin",
		"MTAD_SERVER_LISTEN=[::1]:2626",
		"MTAD_MTA_STS_HTTPS_PORT=8443",
		"MTAD_SERVER_MAX_MESSAGE_SIZE= 10M ",
		"MTAD_SPOOL_DIR=/srv/q",
		"MTAD_CONFIG=/etc/mtad/other.conf",
		"MTAD_lowercase=ignored",
		"NOEQUALS",
		NULL,
	};
	struct mta_config *c;
	struct sockaddr_storage ss;
	char err[512], path[256];

	(void)state;
	assert_int_equal(load("[server]\nlisten = 127.0.0.1:2525\n"
			      "max_message_size = 1M\n[mta_sts]\n"
			      "https_port = 443\n",
			      env, &c, err, sizeof(err), path, sizeof(path)),
			 0);
	assert_int_equal(c->nlisten, 1);
	sa6(&ss, "::1", 2626);
	assert_memory_equal(&c->listen[0], &ss, sizeof(ss));
	assert_int_equal(c->mta_sts_https_port, 8443);
	assert_int_equal(c->max_message_size, 10 << 20);
	assert_string_equal(c->spool_dir, "/srv/q");
	assert_string_equal(c->control_socket, "/srv/q/control.sock");
	mta_config_free(c);

	/* environment alone, no file */
	assert_int_equal(load(NULL, env, &c, err, sizeof(err), path,
			      sizeof(path)),
			 0);
	assert_int_equal(c->mta_sts_https_port, 8443);
	mta_config_free(c);
}

struct bad_env {
	const char *var, *expect;
};

static const struct bad_env bad_envs[] = {
	{"MTAD_SERVER_MAX_MESSAGE_SIZE=12q",
	 "environment MTAD_SERVER_MAX_MESSAGE_SIZE: server.max_message_size: "
	 "not a size ('12q')"},
	{"MTAD_SERVER_LISTEN=nowhere",
	 "environment MTAD_SERVER_LISTEN: server.listen: not addr:port or "
	 "[v6]:port: nowhere ('nowhere')"},
	{"MTAD_LOG_LEVEL=loud",
	 "environment MTAD_LOG_LEVEL: log.level: not one of debug, info, "
	 "warn, error ('loud')"},
	{"MTAD_SPOOL_DIR=/a\nb",
	 "environment MTAD_SPOOL_DIR: spool.dir: contains a control character "
	 "('/a?b')"},
	{"MTAD_SERVER_LISTN=127.0.0.1:25",
	 "environment MTAD_SERVER_LISTN: unknown variable (names no key)"},
	{"MTAD_BOGUS=1", "environment MTAD_BOGUS: unknown variable (names no "
			 "key)"},
	{"MTAD_SERVER_TLS_CERT=/c.pem",
	 "environment MTAD_SERVER_TLS_CERT: server.tls_cert: set without "
	 "server.tls_key ('/c.pem')"},
};

static void test_env_errors(void **state)
{
	struct mta_config *c = NULL;
	char err[512];

	(void)state;
	for (size_t i = 0; i < sizeof(bad_envs) / sizeof(bad_envs[0]); i++) {
		char *env[] = {"MTAD_CONFIG=/x", (char *)bad_envs[i].var,
			       NULL};
		int rc = mta_config_load(NULL, env, &c, err, sizeof(err));
		if (rc != MTA_ECONFIG || strcmp(err, bad_envs[i].expect) != 0)
			print_error("case %zu: got: %s\n", i, err);
		assert_int_equal(rc, MTA_ECONFIG);
		assert_null(c);
		assert_string_equal(err, bad_envs[i].expect);
	}
	/* the same variable twice */
	{
		char *env[] = {"MTAD_LOG_LEVEL=info", "MTAD_LOG_LEVEL=debug",
			       NULL};
		assert_int_equal(mta_config_load(NULL, env, &c, err,
						 sizeof(err)),
				 MTA_ECONFIG);
		assert_string_equal(err, "environment MTAD_LOG_LEVEL: set "
					 "more than once");
	}
}

/* A bad value in the file is fine when the environment replaces it; the
 * environment's bad value is reported even when the file's is good. */
static void test_env_replaces_bad_file_value(void **state)
{
	char *good[] = {"MTAD_SERVER_MAX_SESSIONS=7", NULL};
	struct mta_config *c;
	char err[512], path[256];

	(void)state;
	assert_int_equal(load("[server]\nmax_sessions = lots\n", good, &c, err,
			      sizeof(err), path, sizeof(path)),
			 0);
	assert_int_equal(c->max_sessions, 7);
	mta_config_free(c);
}

/* ------------------------------------------------------------------------ */

static void test_tls_pair(void **state)
{
	struct mta_config *c;
	char err[512], expect[600], path[256];

	(void)state;
	assert_int_equal(load("[server]\n\ntls_cert = /x/cert.pem\n", no_env,
			      &c, err, sizeof(err), path, sizeof(path)),
			 MTA_ECONFIG);
	snprintf(expect, sizeof(expect),
		 "%s:3: server.tls_cert: set without server.tls_key "
		 "('/x/cert.pem')",
		 path);
	assert_string_equal(err, expect);

	assert_int_equal(load("[server]\ntls_key = /x/key.pem\ntls_cert =\n",
			      no_env, &c, err, sizeof(err), path,
			      sizeof(path)),
			 MTA_ECONFIG);
	snprintf(expect, sizeof(expect),
		 "%s:2: server.tls_key: set without server.tls_cert "
		 "('/x/key.pem')",
		 path);
	assert_string_equal(err, expect);

	assert_int_equal(load("[server]\ntls_key = /x/key.pem\n"
			      "tls_cert = /x/cert.pem\n",
			      no_env, &c, err, sizeof(err), path,
			      sizeof(path)),
			 0);
	assert_string_equal(c->tls_cert, "/x/cert.pem");
	assert_string_equal(c->tls_key, "/x/key.pem");
	mta_config_free(c);
}

/* delivery.min_backoff <= delivery.max_backoff; the key set is blamed,
 * and mta_config_where() names file and line for later checks */
static void test_backoff_order_and_where(void **state)
{
	struct mta_config *c;
	char err[512], expect[600], path[256], where[300];

	(void)state;
	assert_int_equal(load("[delivery]\nmin_backoff = 1h\nmax_backoff = 2s\n",
			      no_env, &c, err, sizeof(err), path,
			      sizeof(path)),
			 MTA_ECONFIG);
	snprintf(expect, sizeof(expect),
		 "%s:2: delivery.min_backoff: greater than delivery."
		 "max_backoff (3600s > 2s) ('1h')",
		 path);
	assert_string_equal(err, expect);
	assert_int_equal(load("[delivery]\n\nmax_backoff = 60s\n", no_env,
			      &c, err, sizeof(err), path, sizeof(path)),
			 MTA_ECONFIG);
	snprintf(expect, sizeof(expect),
		 "%s:3: delivery.max_backoff: less than delivery.min_backoff "
		 "(60s < 300s) ('60s')",
		 path);
	assert_string_equal(err, expect);

	char *env[] = {"MTAD_SERVER_TLS_CERT=/c.pem", NULL};
	assert_int_equal(load("[server]\n\ntls_key = /k.pem\n"
			      "postmaster = pm@site.test\n",
			      env, &c, err, sizeof(err), path, sizeof(path)),
			 0);
	assert_string_equal(c->server_postmaster, "pm@site.test");
	mta_config_where(c, "server", "tls_key", where, sizeof(where));
	snprintf(expect, sizeof(expect), "%s:3", path);
	assert_string_equal(where, expect);
	mta_config_where(c, "server", "tls_cert", where, sizeof(where));
	assert_string_equal(where, "environment MTAD_SERVER_TLS_CERT");
	mta_config_where(c, "server", "listen", where, sizeof(where));
	assert_string_equal(where, "default");
	mta_config_free(c);
}

static void test_relay_allowed(void **state)
{
	struct mta_config *c;
	struct sockaddr_un sun;
	char err[512], path[256];

	(void)state;
	assert_int_equal(load("[server]\nrelay_networks = 10.0.0.0/8, "
			      "192.0.2.7, 198.51.100.0/23, 2001:db8::/32, "
			      "::1/128, fe80::/127\n",
			      no_env, &c, err, sizeof(err), path,
			      sizeof(path)),
			 0);
	assert_true(allowed(c, "10.0.0.0"));
	assert_true(allowed(c, "10.255.255.255"));
	assert_false(allowed(c, "11.0.0.0"));
	assert_false(allowed(c, "9.255.255.255"));
	assert_true(allowed(c, "192.0.2.7"));   /* bare = /32 */
	assert_false(allowed(c, "192.0.2.6"));
	assert_false(allowed(c, "192.0.2.8"));
	assert_true(allowed(c, "198.51.100.1"));
	assert_true(allowed(c, "198.51.101.255"));
	assert_false(allowed(c, "198.51.102.0"));
	assert_true(allowed(c, "::ffff:10.1.2.3")); /* v4-mapped */
	assert_true(allowed(c, "::ffff:192.0.2.7"));
	assert_false(allowed(c, "::ffff:192.0.2.8"));
	assert_false(allowed(c, "::10.1.2.3")); /* v4-compatible: not mapped */
	assert_true(allowed(c, "2001:db8:ffff::1"));
	assert_false(allowed(c, "2001:db9::"));
	assert_true(allowed(c, "::1")); /* /128 */
	assert_false(allowed(c, "::2"));
	assert_false(allowed(c, "::"));
	assert_true(allowed(c, "fe80::"));
	assert_true(allowed(c, "fe80::1"));
	assert_false(allowed(c, "fe80::2"));
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	assert_false(mta_config_relay_allowed(c, (struct sockaddr *)&sun));
	assert_false(mta_config_relay_allowed(c, NULL));
	mta_config_free(c);

	/* /0 */
	assert_int_equal(load("[server]\nrelay_networks = 0.0.0.0/0\n",
			      no_env, &c, err, sizeof(err), path,
			      sizeof(path)),
			 0);
	assert_true(allowed(c, "0.0.0.0"));
	assert_true(allowed(c, "255.255.255.255"));
	assert_true(allowed(c, "::ffff:203.0.113.9"));
	assert_false(allowed(c, "2001:db8::1"));
	mta_config_free(c);
	assert_int_equal(load("[server]\nrelay_networks = ::/0\n", no_env, &c,
			      err, sizeof(err), path, sizeof(path)),
			 0);
	assert_true(allowed(c, "2001:db8::1"));
	assert_true(allowed(c, "::ffff:203.0.113.9"));
	assert_false(allowed(c, "203.0.113.9"));
	mta_config_free(c);

	/* empty = none; 127.0.0.1 is no longer special */
	assert_int_equal(load("[server]\nrelay_networks =\n", no_env, &c, err,
			      sizeof(err), path, sizeof(path)),
			 0);
	assert_int_equal(c->nrelay_networks, 0);
	assert_false(allowed(c, "127.0.0.1"));
	assert_false(allowed(c, "::1"));
	mta_config_free(c);
}

/* ------------------------------------------------------------------------ */

static void assert_str_eq_null(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void assert_config_equal(const struct mta_config *a,
				const struct mta_config *b)
{
	assert_string_equal(a->server_hostname, b->server_hostname);
	assert_int_equal(a->nlisten, b->nlisten);
	assert_memory_equal(a->listen, b->listen,
			    a->nlisten * sizeof(a->listen[0]));
	assert_string_equal(a->server_listen, b->server_listen);
	assert_int_equal(a->nrelay_networks, b->nrelay_networks);
	assert_memory_equal(a->relay_networks, b->relay_networks,
			    a->nrelay_networks * sizeof(a->relay_networks[0]));
	assert_string_equal(a->server_relay_networks,
			    b->server_relay_networks);
	assert_int_equal(a->max_message_size, b->max_message_size);
	assert_int_equal(a->max_recipients, b->max_recipients);
	assert_int_equal(a->max_sessions, b->max_sessions);
	assert_int_equal(a->command_timeout, b->command_timeout);
	assert_int_equal(a->data_timeout, b->data_timeout);
	assert_str_eq_null(a->tls_cert, b->tls_cert);
	assert_str_eq_null(a->tls_key, b->tls_key);
	assert_string_equal(a->spool_dir, b->spool_dir);
	assert_int_equal(a->spool_max_size, b->spool_max_size);
	assert_str_eq_null(a->dns_resolver, b->dns_resolver);
	assert_string_equal(a->dns_trust_anchor, b->dns_trust_anchor);
	assert_int_equal(a->delivery_port, b->delivery_port);
	assert_str_eq_null(a->delivery_relayhost, b->delivery_relayhost);
	assert_int_equal(a->queue_lifetime, b->queue_lifetime);
	assert_string_equal(a->tls_ca_file, b->tls_ca_file);
	assert_str_eq_null(a->tls_policy_file, b->tls_policy_file);
	assert_int_equal(a->tls_default_level, b->tls_default_level);
	assert_int_equal(a->mta_sts_https_port, b->mta_sts_https_port);
	assert_string_equal(a->control_socket, b->control_socket);
	assert_string_equal(a->http_listen, b->http_listen);
	assert_memory_equal(&a->http_addr, &b->http_addr,
			    sizeof(a->http_addr));
	assert_int_equal(a->log_level, b->log_level);
}

/* print(load(x)) loads to an equal snapshot and prints the same text. */
static void round_trip(const char *text, char *const *envp)
{
	struct mta_config *a, *b;
	char err[512], path[256], *out1 = NULL, *out2 = NULL;
	size_t l1 = 0, l2 = 0;
	FILE *f;

	assert_int_equal(load(text, envp, &a, err, sizeof(err), path,
			      sizeof(path)),
			 0);
	f = open_memstream(&out1, &l1);
	assert_non_null(f);
	mta_config_print(a, f);
	assert_int_equal(fclose(f), 0);

	int rc = load(out1, no_env, &b, err, sizeof(err), path, sizeof(path));
	if (rc != 0)
		print_error("%s\n--- printed:\n%s\n", err, out1);
	assert_int_equal(rc, 0);
	assert_config_equal(a, b);

	f = open_memstream(&out2, &l2);
	assert_non_null(f);
	mta_config_print(b, f);
	assert_int_equal(fclose(f), 0);
	assert_string_equal(out1, out2);

	/* every key is printed, sizes in bytes, durations in seconds */
	assert_non_null(strstr(out1, "\n[mta_sts]\nhttps_port = "));
	assert_non_null(strstr(out1, "\nlevel = "));
	free(out1);
	free(out2);
	mta_config_free(a);
	mta_config_free(b);
}

static void test_print_round_trip(void **state)
{
	char *env[] = {"MTAD_DNS_RESOLVER=192.0.2.53:5353", NULL};
	char many[4096] = "[server]\nrelay_networks = ";
	struct mta_config *c;
	char err[512], *out = NULL;
	size_t len = 0;
	FILE *f;

	(void)state;
	round_trip(NULL, no_env);
	round_trip(full_file, no_env);
	round_trip(full_file, env);
	round_trip("[server]\nrelay_networks =\n", no_env);

	/* 64 networks: printed over several continuation lines */
	for (int i = 0; i < MTA_CONFIG_MAX_NETWORKS; i++) {
		char n[64];
		snprintf(n, sizeof(n), "2001:db8:%x::/48,\n    ", i);
		strcat(many, n);
	}
	strcat(many, "\n");
	round_trip(many, no_env);

	/* normalised values */
	assert_int_equal(mta_config_load(NULL, no_env, &c, err, sizeof(err)),
			 0);
	f = open_memstream(&out, &len);
	mta_config_print(c, f);
	fclose(f);
	assert_non_null(strstr(out, "\nmax_size = 8589934592\n"));
	assert_non_null(strstr(out, "\nqueue_lifetime = 432000s\n"));
	assert_non_null(strstr(out, "\ncommand_timeout = 300s\n"));
	assert_non_null(strstr(out, "\nmax_message_size = 36700160\n"));
	assert_non_null(strstr(out, "\nrelay_networks = 127.0.0.0/8, ::1/128\n"));
	assert_non_null(strstr(out, "\ntls_cert =\n"));
	assert_non_null(strstr(out, "\nsocket = /var/spool/mtad/control.sock\n"));
	assert_non_null(strstr(out, "[log]\nlevel = info\n"));
	free(out);
	mta_config_free(c);
}

static void test_control_socket_default(void **state)
{
	char *env1[] = {"MTAD_SPOOL_DIR=./var/spool", NULL};
	char *env2[] = {"MTAD_SPOOL_DIR=/srv/spool///", NULL};
	char *env3[] = {"MTAD_SPOOL_DIR=/",
			"MTAD_CONTROL_SOCKET=/run/mtad.sock", NULL};
	char *env4[] = {"MTAD_SPOOL_DIR=/", NULL};
	struct mta_config *c;
	char err[512];

	(void)state;
	assert_int_equal(mta_config_load(NULL, env1, &c, err, sizeof(err)),
			 0);
	assert_string_equal(c->control_socket, "./var/spool/control.sock");
	mta_config_free(c);
	assert_int_equal(mta_config_load(NULL, env2, &c, err, sizeof(err)),
			 0);
	assert_string_equal(c->control_socket, "/srv/spool/control.sock");
	mta_config_free(c);
	assert_int_equal(mta_config_load(NULL, env3, &c, err, sizeof(err)),
			 0);
	assert_string_equal(c->control_socket, "/run/mtad.sock");
	mta_config_free(c);
	assert_int_equal(mta_config_load(NULL, env4, &c, err, sizeof(err)),
			 0);
	assert_string_equal(c->control_socket, "/control.sock");
	mta_config_free(c);
}

/* A short err buffer is truncated, never overrun; NULL err is allowed. */
static void test_err_buffer(void **state)
{
	char *env[] = {"MTAD_SERVER_MAX_MESSAGE_SIZE=12q", NULL};
	struct mta_config *c = NULL;
	char err[16];

	(void)state;
	memset(err, 'x', sizeof(err));
	assert_int_equal(mta_config_load(NULL, env, &c, err, sizeof(err)),
			 MTA_ECONFIG);
	assert_int_equal(strlen(err), sizeof(err) - 1);
	assert_int_equal(mta_config_load(NULL, env, &c, NULL, 0), MTA_ECONFIG);
	assert_null(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_full_file),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_good_values),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_unreadable),
		cmocka_unit_test(test_list_continuation),
		cmocka_unit_test(test_env_overrides),
		cmocka_unit_test(test_env_errors),
		cmocka_unit_test(test_env_replaces_bad_file_value),
		cmocka_unit_test(test_tls_pair),
		cmocka_unit_test(test_backoff_order_and_where),
		cmocka_unit_test(test_relay_allowed),
		cmocka_unit_test(test_print_round_trip),
		cmocka_unit_test(test_control_socket_default),
		cmocka_unit_test(test_err_buffer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
