/*
 * err.h - the one error convention of libmta.
 *
 * DESCRIPTION
 *	Every libmta function that can fail returns int: 0 means success, a
 *	negative value is an error.  Values -1 .. -4095 mirror -errno; our own
 *	codes live in the reserved range -30000 .. -30999 and are generated,
 *	with their names and messages, from the single X-macro list below.
 *
 *	mta_strerror() returns a static message for any code (errno values go
 *	through strerror-like text); mta_errname() the symbolic name
 *	("MTA_EMAPFULL", "ENOENT").  Foreign library codes (LMDB, GnuTLS,
 *	getdns, libuv, curl) are translated once, in the module that wraps the
 *	library.
 *
 * THREADS
 *	Any thread.  The returned strings are immutable.
 */
#ifndef MTA_ERR_H
#define MTA_ERR_H

#define MTA_ERR_MAP(X)                                                        \
	X(EPROTO, -30001, "protocol violation by peer")                       \
	X(ECONFIG, -30002, "invalid configuration")                           \
	X(ESCHEMA, -30003, "spool schema version mismatch")                   \
	X(EMAPFULL, -30004, "spool is full (LMDB map full)")                  \
	X(ECORRUPT, -30005, "corrupt or truncated record")                    \
	X(ENOTFOUND, -30006, "not found")                                     \
	X(ETOOBIG, -30007, "value too large")                                 \
	X(ETLS, -30008, "TLS failure")                                        \
	X(EDB, -30009, "spool database error")                                \
	X(EAGAIN, -30010, "try again later")                                  \
	X(ECLOSED, -30011, "closed")                                          \
	X(EDNS, -30012, "DNS failure")

enum {
#define MTA_ERR_ENUM(name, val, msg) MTA_##name = (val),
	MTA_ERR_MAP(MTA_ERR_ENUM)
#undef MTA_ERR_ENUM
};

const char *mta_strerror(int err);
const char *mta_errname(int err);

#endif
