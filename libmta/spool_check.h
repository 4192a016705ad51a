/*
 * spool_check.h - the spool's open-time integrity check (internal to
 * spool.c).
 *
 * DESCRIPTION
 *	mta_spool_check_datafile() checks <dir>/data.mdb against its own
 *	LMDB meta pages with plain reads, before LMDB maps it: a file
 *	shorter than its last page makes every access past the end a
 *	SIGBUS, and an emptied file would be taken by LMDB for a new
 *	environment.  When why is not NULL, a failure leaves there a
 *	sentence for the operator: what is wrong and what to do (restore
 *	from a backup, mdb_dump -a to salvage).
 *
 * THREADS
 *	Any (called by mta_spool_open() before the environment exists).
 *
 * ERRORS
 *	0: the file is sound; -ENOENT: there is none (a new spool);
 *	MTA_ECORRUPT with why set: damaged, truncated or emptied; another
 *	-errno when it cannot be read; -ENAMETOOLONG for a long dir.
 *
 * SECURITY
 *	The file is read as untrusted bytes (a damaged spool): only two
 *	meta pages are read, every offset is checked for overflow.
 *
 * CAVEATS
 *	Knows the LMDB 0.9 meta page layout (lmdb/mdb.c, native byte
 *	order); a future LMDB data version is refused as damaged.
 */
#ifndef MTA_SPOOL_CHECK_H
#define MTA_SPOOL_CHECK_H

#include <stddef.h>

/* What to do about a damaged data.mdb (the end of every why text). */
#define MTA_SPOOL_SALVAGE                                                     \
	"Do not start on this file: stop every mtad and tool using it, copy "  \
	"the spool directory aside, then restore data.mdb from a backup (a "   \
	"backup is made with `mdb_copy <spool.dir> <dest>`) or salvage what "  \
	"is readable with `mdb_dump -a` into a new spool"

int mta_spool_check_datafile(const char *dir, char *why, size_t whylen);

#endif
