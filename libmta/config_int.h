/*
 * config_int.h - what config.c (the key table, the loader and its passes)
 * and config_values.c (the syntax of one value: numbers with units,
 * durations, host names, mailboxes, addresses, CIDR blocks, lists) share.
 * Private to the configuration module; its interface is config.h.
 *
 * The value functions return 0 or -1 (the caller names the key and the
 * value in its error) unless said otherwise.
 */
#ifndef MTA_CONFIG_INT_H
#define MTA_CONFIG_INT_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A decimal number; *end gets the first byte after it. */
int cfg_parse_u64(const char *s, uint64_t *out, const char **end);
/* Bytes with an optional k/M/G suffix. */
int cfg_parse_size(const char *s, uint64_t *out);
/* Seconds with an optional s/m/h/d suffix. */
int cfg_parse_duration(const char *s, uint64_t *out);
/* 1 if s holds a control character. */
int cfg_has_ctl(const char *s);
/* 1 if s is a valid domain name, 0 if not. */
int cfg_valid_hostname(const char *s);
/* 1 if s is local@domain, 0 if not. */
int cfg_valid_mailbox(const char *s);
/* addr:port or [v6]:port into ss. */
int cfg_parse_addrport(const char *s, struct sockaddr_storage *ss);
void cfg_format_addrport(const struct sockaddr_storage *ss, char *buf,
			 size_t len);
/* An address with an optional /prefix; *why says what is wrong. */
int cfg_parse_cidr(const char *s, struct mta_cidr *c, const char **why);
void cfg_format_cidr(const struct mta_cidr *c, char *buf, size_t len);
/* 1 if h is a host name, or an address literal when bracketed. */
int cfg_valid_host(const char *h, int bracketed);
/* Checks host, host:port, [host]:port, [host] (a bare IPv6 address when
 * bare_v6) and copies the host part into host, setting *bracketed. */
int cfg_split_hostport(const char *s, char *host, size_t hostlen,
		       int *bracketed, int bare_v6);
/* Next item of a list separated by commas and/or white space into buf;
 * returns its length, 0 at the end, -1 if too long. */
int cfg_next_item(const char **pp, char *buf, size_t len);
/* Appends s to *acc (malloc'd, may be NULL) with sep; -1 on ENOMEM. */
int cfg_append(char **acc, const char *sep, const char *s);

#endif
