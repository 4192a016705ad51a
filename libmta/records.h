/*
 * records.h - DNS record types shared by the resolver and the engines that
 * read its answers, so that neither depends on the other.
 *
 * DESCRIPTION
 *	struct mta_dns_tlsa is one TLSA record (RFC 6698 §2.1): the resolver
 *	(dns.c) fills it from a DNSSEC-validated answer, the DANE matcher
 *	(dane.c) and the outbound policy (policy.c) read it.  Plain data: no
 *	functions here.
 *
 * THREADS
 *	Any (plain data).
 *
 * OWNERSHIP
 *	data is borrowed: from the resolver's answer during its callback, or
 *	from whoever copied the record (delivery_conn.c keeps one buffer per
 *	connection).
 *
 * STANDARDS
 *	RFC 6698 §2.1 (TLSA RDATA).
 *
 * CAVEATS
 *	Nothing is checked here: usage, selector, matching type and data
 *	length are as published (mta_dane_unusable_why() classifies).
 */
#ifndef MTA_RECORDS_H
#define MTA_RECORDS_H

#include <stddef.h>
#include <stdint.h>

/* TLSA records in one RRset that delivery accepts (more: fail closed) */
#define MTA_DANE_TLSA_MAX 64

struct mta_dns_tlsa {
	uint8_t usage;
	uint8_t selector;
	uint8_t mtype;
	const uint8_t *data;
	size_t len;
};

#endif
