/*
 * spool_check.c - the spool's open-time integrity check of data.mdb.
 * See spool_check.h.
 */
#include "spool_check.h"

#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void why_set(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void why_set(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (why == NULL || whylen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
}

/*
 * LMDB 0.9 meta page layout (lmdb/mdb.c, native byte order; Z is
 * sizeof(size_t), the size of pgno_t and txnid_t): a page header of Z + 8
 * bytes (mp_pgno, mp_pad u16, mp_flags u16, lower/upper u16 each) then
 * MDB_meta: magic u32, version u32, address (Z), mapsize (Z), two MDB_db
 * of 8 + 5Z bytes (the first one's md_pad u32 holds the page size),
 * last_pg (Z), txnid (Z).  Meta page 0 is at offset 0, meta page 1 at
 * offset psize.
 */
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_DATA_VERSION 1u
#define LMDB_P_META 0x08u
#define Z sizeof(size_t)
#define META_HDR (Z + 8)
#define META_FLAGS_OFF (Z + 2)
#define META_MAGIC_OFF META_HDR
#define META_VERSION_OFF (META_HDR + 4)
#define META_PSIZE_OFF (META_HDR + 8 + 2 * Z)
#define META_LASTPG_OFF (META_PSIZE_OFF + 2 * (8 + 5 * Z))
#define META_TXNID_OFF (META_LASTPG_OFF + Z)
#define META_LEN (META_TXNID_OFF + Z)

struct lmdb_meta {
	uint32_t magic, version, psize;
	uint64_t last_pg, txnid;
	bool is_meta;
};

static uint64_t get_native(const uint8_t *p)
{
	if (Z == 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		return v;
	}
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static void meta_parse(const uint8_t *p, struct lmdb_meta *m)
{
	uint16_t flags;

	memcpy(&flags, p + META_FLAGS_OFF, 2);
	memcpy(&m->magic, p + META_MAGIC_OFF, 4);
	memcpy(&m->version, p + META_VERSION_OFF, 4);
	memcpy(&m->psize, p + META_PSIZE_OFF, 4);
	m->last_pg = get_native(p + META_LASTPG_OFF);
	m->txnid = get_native(p + META_TXNID_OFF);
	m->is_meta = (flags & LMDB_P_META) != 0;
}

static bool meta_ok(const struct lmdb_meta *m)
{
	return m->is_meta && m->magic == LMDB_MAGIC &&
	       m->version == LMDB_DATA_VERSION;
}

static int pread_full(int fd, void *p, size_t n, off_t off)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(fd, (uint8_t *)p + done, n - done,
				  off + (off_t)done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return MTA_ECORRUPT; /* shorter than that */
		done += (size_t)r;
	}
	return 0;
}

/*
 * Checks <dir>/data.mdb against its own meta pages with plain reads,
 * before LMDB maps it: a file shorter than its last page makes every
 * access past the end a SIGBUS, and an emptied file would be taken by
 * LMDB for a new environment.  0: the file is sound; -ENOENT: there is
 * none (a new spool); MTA_ECORRUPT with why set: damaged or emptied;
 * another -errno when it cannot be read.
 */
int mta_spool_check_datafile(const char *dir, char *why, size_t whylen)
{
	char path[4096];
	uint8_t buf[META_LEN];
	struct lmdb_meta m[2], *cur;
	struct stat st;
	int fd, err;

	if (snprintf(path, sizeof(path), "%s/data.mdb", dir) >=
	    (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		if (err != -ENOENT)
			why_set(why, whylen, "%s: %s", path, strerror(-err));
		return err;
	}
	if (fstat(fd, &st) != 0) {
		err = -errno;
		why_set(why, whylen, "%s: %s", path, strerror(-err));
		goto out;
	}
	err = MTA_ECORRUPT;
	if (st.st_size == 0) {
		why_set(why, whylen,
			"%s is empty (0 bytes): the spool file was truncated "
			"or replaced and the messages it held are not in it. "
			"mtad will not start an empty spool in its place. "
			"Restore data.mdb from a backup; only if this spool "
			"never held mail, remove data.mdb to start a new one",
			path);
		goto out;
	}
	if (pread_full(fd, buf, sizeof(buf), 0) != 0) {
		why_set(why, whylen,
			"%s is %jd bytes, too short to be an LMDB "
			"file. " MTA_SPOOL_SALVAGE,
			path, (intmax_t)st.st_size);
		goto out;
	}
	meta_parse(buf, &m[0]);
	if (!meta_ok(&m[0]) || m[0].psize < 512 || m[0].psize > 65536 ||
	    (m[0].psize & (m[0].psize - 1)) != 0) {
		why_set(why, whylen,
			"%s: meta page 0 is damaged or this is not an LMDB "
			"data file (magic 0x%08" PRIx32 ", version %" PRIu32
			"; expected 0x%08x, %u). " MTA_SPOOL_SALVAGE,
			path, m[0].magic, m[0].version, LMDB_MAGIC,
			LMDB_DATA_VERSION);
		goto out;
	}
	if (pread_full(fd, buf, sizeof(buf), (off_t)m[0].psize) != 0) {
		why_set(why, whylen,
			"%s is %jd bytes, shorter than its two meta pages "
			"(%" PRIu32 " bytes each): truncated. "
			MTA_SPOOL_SALVAGE,
			path, (intmax_t)st.st_size, m[0].psize);
		goto out;
	}
	meta_parse(buf, &m[1]);
	/* LMDB uses the meta page with the larger txnid */
	cur = &m[0];
	if (meta_ok(&m[1]) && m[1].txnid > m[0].txnid)
		cur = &m[1];
	uint64_t need = (cur->last_pg + 1) * (uint64_t)m[0].psize;
	if (cur->last_pg + 1 < 2 || need / m[0].psize != cur->last_pg + 1) {
		why_set(why, whylen,
			"%s: meta page %d is damaged (last page %" PRIu64
			"). " MTA_SPOOL_SALVAGE,
			path, cur == &m[0] ? 0 : 1, cur->last_pg);
		goto out;
	}
	if ((uint64_t)st.st_size < need) {
		why_set(why, whylen,
			"%s is truncated: it is %jd bytes, but its meta page "
			"(transaction %" PRIu64 ") says the data runs to page "
			"%" PRIu64 ", %" PRIu64 " bytes. Mapping it would crash "
			"(SIGBUS). " MTA_SPOOL_SALVAGE,
			path, (intmax_t)st.st_size, cur->txnid, cur->last_pg,
			need);
		goto out;
	}
	err = 0;
out:
	close(fd);
	return err;
}

#undef Z
