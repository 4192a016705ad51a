#include "spool_int.h"

#include "err.h"
#include "log.h"
#include "spool_check.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define SPOOL_MAXDBS 16
#define SCHEMA_KEY "schema"

/* The one place where LMDB codes become libmta codes. */
static int mdb_err(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_MAP_FULL:
		return MTA_EMAPFULL;
	case MDB_NOTFOUND:
		return MTA_ENOTFOUND;
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
		return MTA_ECORRUPT;
	case MDB_VERSION_MISMATCH:
	case MDB_INVALID:
		return MTA_ESCHEMA;
	case MDB_BAD_VALSIZE:
		return MTA_ETOOBIG;
	case MDB_TXN_FULL:
		return MTA_EAGAIN;
	case MDB_KEYEXIST:
		return -EEXIST;
	default:
		if (rc > 0 && rc < 4096)
			return -rc;
		return MTA_EDB;
	}
}

/* LMDB codes that mean the file is damaged (or the environment unusable
 * after a failed meta page write), not that this one operation failed. */
static bool mdb_damage(int rc)
{
	return rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND ||
	       rc == MDB_PANIC || rc == MDB_BAD_TXN;
}

/* Remembers damage found at run time and says so at error level: the
 * first time, then at every power of two, so a spool that fails every
 * operation is loud without flooding the log. */
static void note_corrupt(struct mta_spool *sp, const char *what,
			 const char *detail)
{
	unsigned n = atomic_fetch_add(&sp->corrupt, 1) + 1;
	struct mta_logline ll;

	if ((n & (n - 1)) != 0)
		return;
	mta_log_begin(&ll, MTA_LOG_ERR, "spool_corrupt");
	mta_log_str(&ll, "what", what);
	mta_log_str(&ll, "error", detail);
	mta_log_int(&ll, "count", (long long)n);
	mta_log_str(&ll, "action",
		    "stop mtad, copy the spool directory aside, salvage with "
		    "mdb_copy/mdb_dump or restore data.mdb from a backup");
	mta_log_end(&ll);
}

/* mdb_err() for operations on an open spool: also notes damage. */
int sp_err(struct mta_spool *sp, int rc)
{
	if (rc != 0 && mdb_damage(rc))
		note_corrupt(sp, "lmdb", mdb_strerror(rc));
	return mdb_err(rc);
}

/*
 * LMDB turns a short write into EIO ("short write, filesystem full?" in
 * mdb_page_flush()), and a file system that runs out of space in the
 * middle of a write returns a short count, not ENOSPC.  So a commit that
 * failed with EIO on a file system with (nearly) no room left ran out of
 * space; a real I/O error leaves the free space alone.  Threshold: less
 * than 1 MiB or 1 % of the file system available to us.
 */
static bool fs_full(struct mta_spool *sp)
{
	struct statvfs vfs;
	int fd;

	if (mdb_env_get_fd(sp->env, &fd) != 0 || fstatvfs(fd, &vfs) != 0)
		return false;
	uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	uint64_t total = (uint64_t)vfs.f_blocks * vfs.f_frsize;
	return avail < (1u << 20) || avail < total / 100;
}

bool mta_spool_corrupt(const struct mta_spool *sp)
{
	return atomic_load(&sp->corrupt) != 0;
}

/* ---- queue ids ---------------------------------------------------- */

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* Adds to the running totals in meta, in the caller's transaction, so
 * `mtaq --summary` costs one read however large the queue is. */
int sp_totals_add(MDB_txn *txn, MDB_dbi meta, int64_t dm, int64_t dr,
		  int64_t db)
{
	MDB_val k = {sizeof(TOTALS_KEY) - 1, (void *)TOTALS_KEY}, v;
	uint8_t buf[24] = {0};
	int64_t d[3] = {dm, dr, db};
	int rc;

	rc = mdb_get(txn, meta, &k, &v);
	if (rc == 0 && v.mv_size == sizeof(buf))
		memcpy(buf, v.mv_data, sizeof(buf));
	else if (rc != 0 && rc != MDB_NOTFOUND)
		return rc;
	for (int i = 0; i < 3; i++) {
		uint64_t x = get_be64(buf + 8 * i) + (uint64_t)d[i];
		put_be64(buf + 8 * i, x);
	}
	v.mv_size = sizeof(buf);
	v.mv_data = buf;
	return mdb_put(txn, meta, &k, &v, 0);
}

void mta_qid_make(char out[MTA_QID_LEN + 1], uint64_t usec, uint32_t seq)
{
	for (int i = 0; i < 11; i++)
		out[i] = crockford[(usec >> (5 * (10 - i))) & 31];
	for (int i = 0; i < 5; i++)
		out[11 + i] = crockford[(seq >> (5 * (4 - i))) & 31];
	out[MTA_QID_LEN] = '\0';
}

bool sp_qid_valid(const char *qid)
{
	for (int i = 0; i < MTA_QID_LEN; i++)
		if (qid[i] == '\0' || strchr(crockford, qid[i]) == NULL)
			return false;
	return qid[MTA_QID_LEN] == '\0';
}

/* ---- bodies being received ---------------------------------------- */

void mta_body_init(struct mta_body *b, const char *tmpdir,
		   size_t spill_threshold)
{
	memset(b, 0, sizeof(*b));
	b->fd = -1;
	b->spill_threshold = spill_threshold;
	b->tmpdir = tmpdir;
}

static int pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
	const uint8_t *c = p;
	while (n > 0) {
		ssize_t w = pwrite(fd, c, n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		c += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

static int open_tmpfile(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
		return -errno;
	/* file system without O_TMPFILE: create and unlink at once */
	char path[4096];
	int n = snprintf(path, sizeof(path), "%s/body.XXXXXX", dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return -ENAMETOOLONG;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (unlink(path) != 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Moves the buffered bytes into a fresh temporary file. */
static int body_spill(struct mta_body *b)
{
	const char *dir = b->tmpdir ? b->tmpdir : P_tmpdir;
	int fd = open_tmpfile(dir);
	if (fd < 0)
		return fd;
	int err = pwrite_all(fd, b->mem.data, b->mem.len, 0);
	if (err != 0) {
		close(fd);
		return err;
	}
	b->fd = fd;
	mta_buf_free(&b->mem);
	return 0;
}

int mta_body_append(struct mta_body *b, const void *p, size_t n)
{
	int err;

	if (n == 0)
		return 0;
	if (b->fd < 0 && b->mem.len + n > b->spill_threshold) {
		err = body_spill(b);
		if (err != 0)
			return err;
	}
	if (b->fd < 0)
		err = mta_buf_append(&b->mem, p, n);
	else
		err = pwrite_all(b->fd, p, n, b->len);
	if (err != 0)
		return err;
	b->len += n;
	return 0;
}

int mta_body_pread(const struct mta_body *b, uint64_t off, void *p, size_t n,
		   size_t *got)
{
	if (off >= b->len || n == 0) {
		*got = 0;
		return 0;
	}
	if (n > b->len - off)
		n = (size_t)(b->len - off);
	if (b->fd < 0) {
		memcpy(p, b->mem.data + off, n);
		*got = n;
		return 0;
	}
	size_t done = 0;
	while (done < n) {
		ssize_t r = pread(b->fd, (uint8_t *)p + done, n - done,
				  (off_t)(off + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO; /* the file is shorter than len */
		done += (size_t)r;
	}
	*got = done;
	return 0;
}

void mta_body_free(struct mta_body *b)
{
	if (b->fd >= 0)
		close(b->fd);
	mta_buf_free(&b->mem);
	b->fd = -1;
	b->len = 0;
}

/* ---- open / close ------------------------------------------------- */

static int mkdir_0700(const char *path)
{
	if (mkdir(path, 0700) == 0 || errno == EEXIST)
		return 0;
	return -errno;
}

/* Opens (or, writable, creates) the named databases and checks the
 * schema.  A mismatch aborts the transaction: nothing is written. */
static int open_dbs(struct mta_spool *sp)
{
	unsigned create = sp->readonly ? 0 : MDB_CREATE;
	MDB_txn *txn;
	MDB_val k = {sizeof(SCHEMA_KEY) - 1, (void *)SCHEMA_KEY}, v;
	uint8_t ver[4];
	int rc;

	rc = mdb_txn_begin(sp->env, NULL, sp->readonly ? MDB_RDONLY : 0, &txn);
	if (rc != 0)
		return mdb_err(rc);
	rc = mdb_dbi_open(txn, "meta", create, &sp->meta);
	if (rc != 0)
		goto fail;
	rc = mdb_get(txn, sp->meta, &k, &v);
	if (rc == 0) {
		if (v.mv_size != 4) {
			mdb_txn_abort(txn);
			return MTA_ECORRUPT;
		}
		if (get_be32(v.mv_data) != MTA_SPOOL_SCHEMA) {
			mdb_txn_abort(txn);
			return MTA_ESCHEMA;
		}
	} else if (rc == MDB_NOTFOUND && !sp->readonly) {
		put_be32(ver, MTA_SPOOL_SCHEMA);
		v.mv_size = sizeof(ver);
		v.mv_data = ver;
		rc = mdb_put(txn, sp->meta, &k, &v, 0);
		if (rc != 0)
			goto fail;
	} else {
		goto fail;
	}
	if ((rc = mdb_dbi_open(txn, "messages", create, &sp->messages)) ||
	    (rc = mdb_dbi_open(txn, "bodies", create, &sp->bodies)) ||
	    (rc = mdb_dbi_open(txn, "due", create, &sp->due)) ||
	    (rc = mdb_dbi_open(txn, "dest", create | MDB_DUPSORT, &sp->dest)) ||
	    (rc = mdb_dbi_open(txn, "sts", create, &sp->sts)))
		goto fail;
	rc = mdb_dbi_open(txn, "tlsrpt", create, &sp->tlsrpt);
	if (rc != 0 && rc != MDB_NOTFOUND)
		goto fail;
	sp->have_tlsrpt = rc == 0;
	rc = mdb_dbi_open(txn, "held", create, &sp->held);
	if (rc != 0 && rc != MDB_NOTFOUND)
		goto fail;
	sp->have_held = rc == 0;
	rc = mdb_dbi_open(txn, "keys", create, &sp->keys);
	if (rc != 0 && rc != MDB_NOTFOUND)
		goto fail;
	sp->have_keys = rc == 0;
	k.mv_size = sizeof(TOTALS_KEY) - 1;
	k.mv_data = (void *)TOTALS_KEY;
	if (!sp->readonly && mdb_get(txn, sp->meta, &k, &v) == MDB_NOTFOUND) {
		/* a spool from before the totals: count once */
		MDB_cursor *cur;
		MDB_val mk, mv;
		rc = sp_totals_add(txn, sp->meta, 0, 0, 0);
		if (rc == 0)
			rc = mdb_cursor_open(txn, sp->messages, &cur);
		if (rc != 0)
			goto fail;
		while (mdb_cursor_get(cur, &mk, &mv, MDB_NEXT) == 0) {
			struct mta_envelope e;
			if (mta_envelope_decode(mv.mv_data, mv.mv_size, &e) != 0)
				continue;
			rc = sp_totals_add(txn, sp->meta, 1, (int64_t)e.nrcpt,
					   (int64_t)e.size);
			mta_envelope_free(&e);
			if (rc != 0)
				break;
		}
		mdb_cursor_close(cur);
		if (rc != 0)
			goto fail;
	}
	/* committing a read-only txn keeps its DBI handles open */
	rc = mdb_txn_commit(txn);
	return mdb_err(rc);
fail:
	mdb_txn_abort(txn);
	return mdb_err(rc);
}

/* ---- the data file before it is mapped ---------------------------- */

static void why_set(const struct mta_spool_opts *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void why_set(const struct mta_spool_opts *o, const char *fmt, ...)
{
	va_list ap;

	if (o->why == NULL || o->whylen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(o->why, o->whylen, fmt, ap);
	va_end(ap);
}


int mta_spool_lock(const char *dir, int *fd_out, long *holder)
{
	char path[4096], buf[32];
	int fd, err;
	ssize_t n;

	*holder = 0;
	if (snprintf(path, sizeof(path), "%s/mtad.lock", dir) >=
	    (int)sizeof(path))
		return -ENAMETOOLONG;
	if ((err = mkdir_0700(dir)) != 0)
		return err;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		if (errno == EINTR)
			continue;
		err = errno == EWOULDBLOCK ? MTA_EAGAIN : -errno;
		if (err == MTA_EAGAIN) {
			n = pread(fd, buf, sizeof(buf) - 1, 0);
			if (n > 0) {
				buf[n] = '\0';
				*holder = strtol(buf, NULL, 10);
			}
		}
		close(fd);
		return err;
	}
	n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
		err = -errno;
		close(fd);
		return err;
	}
	*fd_out = fd;
	return 0;
}

int mta_spool_open(const struct mta_spool_opts *o, struct mta_spool **out)
{
	struct mta_spool *sp;
	MDB_stat st;
	int dead, rc, err;

	sp = calloc(1, sizeof(*sp));
	if (sp == NULL)
		return -ENOMEM;
	sp->readonly = o->readonly;
	size_t dl = strlen(o->dir);
	sp->tmpdir = malloc(dl + sizeof("/tmp"));
	if (sp->tmpdir == NULL) {
		err = -ENOMEM;
		goto fail_sp;
	}
	memcpy(sp->tmpdir, o->dir, dl);
	memcpy(sp->tmpdir + dl, "/tmp", sizeof("/tmp"));
	if (!o->readonly) {
		if ((err = mkdir_0700(o->dir)) != 0 ||
		    (err = mkdir_0700(sp->tmpdir)) != 0)
			goto fail_tmpdir;
	}
	/* never map a damaged file, never let LMDB re-create an emptied one */
	err = mta_spool_check_datafile(o->dir, o->why, o->whylen);
	if (err != 0 && !(err == -ENOENT && !o->readonly))
		goto fail_tmpdir;
	rc = mdb_env_create(&sp->env);
	if (rc != 0) {
		err = mdb_err(rc);
		goto fail_tmpdir;
	}
	/* readonly: take the map size from the file (the writer's) */
	if (!o->readonly && (rc = mdb_env_set_mapsize(sp->env, o->max_size)))
		goto fail_env;
	if ((rc = mdb_env_set_maxdbs(sp->env, SPOOL_MAXDBS)))
		goto fail_env;
	rc = mdb_env_open(sp->env, o->dir,
			  MDB_NOTLS | (o->readonly ? MDB_RDONLY : 0), 0600);
	if (rc != 0)
		goto fail_env;
	/* free reader slots left by killed processes (they pin pages) */
	rc = mdb_reader_check(sp->env, &dead);
	if (rc != 0)
		goto fail_env;
	rc = mdb_env_stat(sp->env, &st);
	if (rc != 0)
		goto fail_env;
	sp->chunk = st.ms_psize - 16;
	err = open_dbs(sp);
	if (err == MTA_ECORRUPT)
		why_set(o,
			"%s/data.mdb is damaged: a page read while opening its "
			"databases is corrupt. " MTA_SPOOL_SALVAGE,
			o->dir);
	if (err != 0)
		goto fail_env_err;
	*out = sp;
	return 0;

fail_env:
	err = mdb_err(rc);
fail_env_err:
	mdb_env_close(sp->env);
fail_tmpdir:
	free(sp->tmpdir);
fail_sp:
	free(sp);
	return err;
}

void mta_spool_close(struct mta_spool *sp)
{
	if (sp == NULL)
		return;
	mdb_env_close(sp->env);
	free(sp->tmpdir);
	free(sp);
}

const char *mta_spool_tmpdir(const struct mta_spool *sp)
{
	return sp->tmpdir;
}

/* ---- writing ------------------------------------------------------ */

int mta_spool_begin(struct mta_spool *sp, struct mta_spool_txn **out)
{
	struct mta_spool_txn *t;
	int rc;

	if (sp->readonly)
		return -EROFS;
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	rc = mdb_txn_begin(sp->env, NULL, 0, &t->txn);
	if (rc != 0) {
		free(t);
		return sp_err(sp, rc);
	}
	t->sp = sp;
	*out = t;
	return 0;
}

static void chunk_key(uint8_t k[CHUNK_KEY_LEN], const char *qid, uint32_t n)
{
	memcpy(k, qid, MTA_QID_LEN);
	put_be32(k + MTA_QID_LEN, n);
}

static int put_body(struct mta_spool_txn *t, MDB_txn *txn, const char *qid,
		    const struct mta_body *body)
{
	struct mta_spool *sp = t->sp;
	uint8_t kb[CHUNK_KEY_LEN];
	uint64_t off = 0;
	uint32_t n = 0;

	while (off < body->len) {
		uint64_t left = body->len - off;
		size_t want = left < sp->chunk ? (size_t)left : sp->chunk;
		MDB_val k = {sizeof(kb), kb}, v = {want, NULL};
		size_t got;
		int rc, err;

		if (n == UINT32_MAX)
			return MTA_ETOOBIG;
		chunk_key(kb, qid, n);
		/* reserve the space and read the body straight into it */
		rc = mdb_put(txn, sp->bodies, &k, &v, MDB_RESERVE);
		if (rc != 0)
			return sp_err(sp, rc);
		err = mta_body_pread(body, off, v.mv_data, want, &got);
		if (err != 0)
			return err;
		if (got != want)
			return -EIO;
		off += want;
		n++;
	}
	return 0;
}

/* Lower-cased domain of addr (after the last '@') into out; false when
 * there is none. */
static bool rcpt_domain(const char *addr, char *out, size_t outlen)
{
	const char *at = strrchr(addr, '@');
	if (at == NULL || at[1] == '\0')
		return false;
	size_t n = strlen(at + 1);
	if (n >= outlen)
		n = outlen - 1; /* longer than LMDB's key limit anyway */
	for (size_t i = 0; i < n; i++) {
		char c = at[1 + i];
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
	}
	out[n] = '\0';
	return true;
}

static int put_indexes(struct mta_spool_txn *t, MDB_txn *txn,
		       const char *qid, const struct mta_envelope *env)
{
	struct mta_spool *sp = t->sp;
	uint8_t dk[DUE_KEY_LEN];
	MDB_val k = {sizeof(dk), dk}, v = {0, (void *)""};
	char dom[512];
	int rc;

	put_be64(dk, (uint64_t)env->arrival_us);
	memcpy(dk + 8, qid, MTA_QID_LEN);
	rc = mdb_put(txn, sp->due, &k, &v, 0);
	if (rc != 0)
		return sp_err(sp, rc);

	for (size_t i = 0; i < env->nrcpt; i++) {
		if (env->rcpts[i].addr == NULL ||
		    !rcpt_domain(env->rcpts[i].addr, dom, sizeof(dom)))
			continue;
		k.mv_size = strlen(dom);
		k.mv_data = dom;
		v.mv_size = MTA_QID_LEN;
		v.mv_data = (void *)qid;
		rc = mdb_put(txn, sp->dest, &k, &v, MDB_NODUPDATA);
		if (rc == MDB_KEYEXIST)
			continue; /* same domain twice in this message */
		if (rc != 0)
			return sp_err(sp, rc);
	}
	return 0;
}

/* Everything of one new message, inside txn (the caller's child txn). */
int sp_put_message_in(struct mta_spool_txn *t, MDB_txn *txn,
		      const char *qid, const struct mta_envelope *env,
			  const struct mta_body *body)
{
	static const struct mta_body empty = {.fd = -1};
	struct mta_envelope rec = *env; /* shallow: only size differs */
	MDB_val k, v;
	int rc, err;

	assert(sp_qid_valid(qid));
	if (body == NULL)
		body = &empty;
	rec.size = body->len;
	t->rec.len = 0;
	err = mta_envelope_encode(&rec, &t->rec);
	if (err != 0)
		return err;
	k.mv_size = MTA_QID_LEN;
	k.mv_data = (void *)qid;
	v.mv_size = t->rec.len;
	v.mv_data = t->rec.data;
	rc = mdb_put(txn, t->sp->messages, &k, &v, MDB_NOOVERWRITE);
	if (rc != 0)
		return sp_err(t->sp, rc);
	if ((err = put_body(t, txn, qid, body)) != 0)
		return err;
	if ((err = put_indexes(t, txn, qid, env)) != 0)
		return err;
	return sp_err(t->sp, sp_totals_add(txn, t->sp->meta, 1, (int64_t)env->nrcpt,
					   (int64_t)body->len));
}

int mta_spool_put_message(struct mta_spool_txn *t, const char *qid,
			  const struct mta_envelope *env,
			  const struct mta_body *body)
{
	MDB_txn *child;
	int rc, err;

	rc = mdb_txn_begin(t->sp->env, t->txn, 0, &child);
	if (rc != 0)
		return sp_err(t->sp, rc);
	err = sp_put_message_in(t, child, qid, env, body);
	if (err != 0) {
		mdb_txn_abort(child);
		return err;
	}
	rc = mdb_txn_commit(child);
	return sp_err(t->sp, rc); /* a failed child commit frees the child */
}

void sp_due_key(uint8_t k[DUE_KEY_LEN], int64_t due_us, const char *qid)
{
	put_be64(k, (uint64_t)due_us);
	memcpy(k + 8, qid, MTA_QID_LEN);
}

/* Removes the message record, its body chunks and its dest entries. */
int sp_del_message_in(struct mta_spool_txn *t, MDB_txn *txn,
		      const char *qid, const struct mta_envelope *env)
{
	struct mta_spool *sp = t->sp;
	uint8_t kb[CHUNK_KEY_LEN];
	MDB_val k = {MTA_QID_LEN, (void *)qid}, v;
	MDB_cursor *cur;
	char dom[512];
	int rc;

	rc = mdb_del(txn, sp->messages, &k, NULL);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return sp_err(sp, rc);
	rc = mdb_cursor_open(txn, sp->bodies, &cur);
	if (rc != 0)
		return sp_err(sp, rc);
	chunk_key(kb, qid, 0);
	k.mv_size = sizeof(kb);
	k.mv_data = kb;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && k.mv_size == CHUNK_KEY_LEN &&
	       memcmp(k.mv_data, qid, MTA_QID_LEN) == 0) {
		rc = mdb_cursor_del(cur, 0);
		if (rc == 0)
			rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND && rc != EINVAL)
		return sp_err(sp, rc);
	for (size_t i = 0; i < env->nrcpt; i++) {
		if (env->rcpts[i].addr == NULL ||
		    !rcpt_domain(env->rcpts[i].addr, dom, sizeof(dom)))
			continue;
		k.mv_size = strlen(dom);
		k.mv_data = dom;
		v.mv_size = MTA_QID_LEN;
		v.mv_data = (void *)qid;
		rc = mdb_del(txn, sp->dest, &k, &v);
		if (rc != 0 && rc != MDB_NOTFOUND)
			return sp_err(sp, rc);
	}
	return 0;
}

int mta_spool_update_message(struct mta_spool_txn *t, const char *qid,
			     const struct mta_envelope *env,
			     int64_t old_due_us, int64_t new_due_us,
			     const char *new_qid,
			     const struct mta_envelope *new_env,
			     const struct mta_body *new_body)
{
	struct mta_spool *sp = t->sp;
	uint8_t dk[DUE_KEY_LEN];
	MDB_val k = {sizeof(dk), dk}, v = {0, (void *)""};
	MDB_txn *child;
	int rc, err = 0;

	assert(sp_qid_valid(qid));
	rc = mdb_txn_begin(sp->env, t->txn, 0, &child);
	if (rc != 0)
		return sp_err(sp, rc);
	/* a message another writer request already finished is gone */
	MDB_val mk = {MTA_QID_LEN, (void *)qid}, mv;
	rc = mdb_get(child, sp->messages, &mk, &mv);
	if (rc != 0) {
		err = sp_err(sp, rc);
		goto fail;
	}
	sp_due_key(dk, old_due_us, qid);
	rc = mdb_del(child, sp->due, &k, NULL);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		err = sp_err(sp, rc);
		goto fail;
	}
	if (new_due_us < 0) {
		struct mta_envelope old;
		uint64_t osize = 0;
		if (mta_envelope_decode(mv.mv_data, mv.mv_size, &old) == 0) {
			osize = old.size;
			mta_envelope_free(&old);
		}
		err = sp_del_message_in(t, child, qid, env);
		if (err == 0)
			err = sp_err(sp, sp_totals_add(child, sp->meta, -1,
						       -(int64_t)env->nrcpt,
						 -(int64_t)osize));
	} else {
		struct mta_envelope rec = *env;
		rec.size = 0;
		{
			/* keep the stored size: the body is unchanged */
			struct mta_envelope old;
			if (mta_envelope_decode(mv.mv_data, mv.mv_size,
						&old) == 0) {
				rec.size = old.size;
				mta_envelope_free(&old);
			}
		}
		t->rec.len = 0;
		err = mta_envelope_encode(&rec, &t->rec);
		if (err == 0) {
			MDB_val rv = {t->rec.len, t->rec.data};
			rc = mdb_put(child, sp->messages, &mk, &rv, 0);
			if (rc != 0)
				err = sp_err(sp, rc);
		}
		if (err == 0 && !sp_held_in(sp, child, qid)) {
			/* a held message gets no due entry (mtactl hold) */
			sp_due_key(dk, new_due_us, qid);
			rc = mdb_put(child, sp->due, &k, &v, 0);
			if (rc != 0)
				err = sp_err(sp, rc);
		}
	}
	if (err == 0 && new_qid != NULL)
		err = sp_put_message_in(t, child, new_qid, new_env, new_body);
	if (err != 0)
		goto fail;
	rc = mdb_txn_commit(child);
	return sp_err(sp, rc);
fail:
	mdb_txn_abort(child);
	return err;
}

int mta_spool_commit(struct mta_spool_txn *t)
{
	/*
	 * The durability point.  mdb_txn_commit() writes the dirty pages,
	 * fdatasync()s the data file, then writes the new meta page (O_DSYNC
	 * without MDB_NOSYNC/MDB_NOMETASYNC, which we never set).  Only when
	 * it returns 0 do the writer's done() callbacks run and sessions send
	 * their 250.  A crash before the meta page lands leaves the previous
	 * meta page current: the spool holds none of this batch and no client
	 * got a 250 for it (each retries).  A crash after it: the batch is
	 * complete on disk; a client that lost its 250 may send again
	 * (a duplicate, never a loss, RFC 5321 §6.1).
	 */
	struct mta_spool *sp = t->sp;
	int rc = mdb_txn_commit(t->txn);
	int err;

	mta_buf_free(&t->rec);
	free(t);
	err = sp_err(sp, rc);
	if (err == -EIO && fs_full(sp))
		err = -ENOSPC; /* see fs_full() */
	return err;
}

void mta_spool_abort(struct mta_spool_txn *t)
{
	if (t == NULL)
		return;
	mdb_txn_abort(t->txn);
	mta_buf_free(&t->rec);
	free(t);
}

/* ---- reading ------------------------------------------------------ */

int sp_read_begin(struct mta_spool *sp, MDB_txn **txn)
{
	int rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, txn);
	if (rc == MDB_MAP_RESIZED && sp->readonly) {
		/* another process grew the map; adopt its size */
		rc = mdb_env_set_mapsize(sp->env, 0);
		if (rc == 0)
			rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, txn);
	}
	return sp_err(sp, rc);
}

int64_t sp_env_due(const struct mta_envelope *e)
{
	int64_t due = INT64_MAX;
	for (size_t i = 0; i < e->nrcpt; i++) {
		const struct mta_rcpt *r = &e->rcpts[i];
		if (r->state != MTA_RCPT_QUEUED && r->state != MTA_RCPT_DEFERRED)
			continue;
		int64_t t = r->next_attempt_us ? r->next_attempt_us
					       : e->arrival_us;
		if (t < due)
			due = t;
	}
	return due;
}

int mta_spool_foreach(struct mta_spool *sp,
		      int (*cb)(void *ud, const struct mta_spool_entry *e),
		      void *ud)
{
	uint8_t last[512]; /* LMDB keys are at most 511 bytes */
	size_t lastlen = 0;
	bool first = true;
	int bad = 0;

	for (;;) {
		char qid[MTA_QID_LEN + 1];
		MDB_txn *txn;
		MDB_cursor *cur;
		MDB_val k = {lastlen, last}, v;
		struct mta_envelope env;
		int rc, err;

		/* one short read txn per message: cb may be slow */
		err = sp_read_begin(sp, &txn);
		if (err != 0)
			return err;
		rc = mdb_cursor_open(txn, sp->messages, &cur);
		if (rc != 0) {
			mdb_txn_abort(txn);
			return sp_err(sp, rc);
		}
		if (first) {
			rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
		} else {
			rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
			if (rc == 0 && k.mv_size == lastlen &&
			    memcmp(k.mv_data, last, lastlen) == 0)
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
		}
		if (rc != 0) {
			mdb_cursor_close(cur);
			mdb_txn_abort(txn);
			return rc == MDB_NOTFOUND ? bad : sp_err(sp, rc);
		}
		first = false;
		if (k.mv_size > sizeof(last)) {
			mdb_cursor_close(cur);
			mdb_txn_abort(txn);
			return MTA_ECORRUPT;
		}
		lastlen = k.mv_size;
		memcpy(last, k.mv_data, lastlen);
		if (k.mv_size == MTA_QID_LEN) {
			memcpy(qid, k.mv_data, MTA_QID_LEN);
			qid[MTA_QID_LEN] = '\0';
			err = mta_envelope_decode(v.mv_data, v.mv_size, &env);
		} else {
			err = MTA_ECORRUPT;
		}
		mdb_cursor_close(cur);
		mdb_txn_abort(txn);
		if (err == -ENOMEM)
			return err;
		if (err == MTA_ECORRUPT)
			note_corrupt(sp, "record", "envelope record does not "
						   "decode");
		if (err != 0) {
			/* skip a bad record, report the first at the end */
			if (bad == 0)
				bad = err;
			continue;
		}
		struct mta_spool_entry e = {
			.qid = qid, .env = &env, .due_us = sp_env_due(&env)};
		rc = cb(ud, &e);
		mta_envelope_free(&env);
		if (rc != 0)
			return rc;
	}
}

int mta_spool_get(struct mta_spool *sp, const char *qid,
		  struct mta_envelope *out)
{
	MDB_txn *txn;
	MDB_val k = {strlen(qid), (void *)qid}, v;
	int rc, err;

	if (k.mv_size != MTA_QID_LEN)
		return MTA_ENOTFOUND;
	err = sp_read_begin(sp, &txn);
	if (err != 0)
		return err;
	rc = mdb_get(txn, sp->messages, &k, &v);
	err = rc == 0 ? mta_envelope_decode(v.mv_data, v.mv_size, out)
		      : sp_err(sp, rc);
	mdb_txn_abort(txn);
	if (rc == 0 && err == MTA_ECORRUPT)
		note_corrupt(sp, "record", "envelope record does not decode");
	return err;
}

int mta_spool_read_body(struct mta_spool *sp, const char *qid, uint64_t off,
			void *buf, size_t len, size_t *got)
{
	MDB_txn *txn;
	MDB_cursor *cur = NULL;
	MDB_val k = {strlen(qid), (void *)qid}, v;
	uint8_t kb[CHUNK_KEY_LEN];
	uint64_t n = off / sp->chunk;
	size_t skip = (size_t)(off % sp->chunk), done = 0;
	int rc, err;

	if (k.mv_size != MTA_QID_LEN)
		return MTA_ENOTFOUND;
	err = sp_read_begin(sp, &txn);
	if (err != 0)
		return err;
	rc = mdb_get(txn, sp->messages, &k, &v);
	if (rc != 0)
		goto out;
	if (len == 0 || n >= UINT32_MAX)
		goto out;
	rc = mdb_cursor_open(txn, sp->bodies, &cur);
	if (rc != 0)
		goto out;
	chunk_key(kb, qid, (uint32_t)n);
	k.mv_size = sizeof(kb);
	k.mv_data = kb;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET);
	while (rc == 0 && done < len) {
		if (k.mv_size != CHUNK_KEY_LEN ||
		    memcmp(k.mv_data, qid, MTA_QID_LEN) != 0)
			break; /* past the last chunk */
		if (get_be32((uint8_t *)k.mv_data + MTA_QID_LEN) != n ||
		    v.mv_size > sp->chunk) {
			err = MTA_ECORRUPT;
			break;
		}
		if (v.mv_size <= skip)
			break; /* offset at or past the end */
		size_t take = v.mv_size - skip;
		if (take > len - done)
			take = len - done;
		memcpy((uint8_t *)buf + done, (uint8_t *)v.mv_data + skip, take);
		done += take;
		skip = 0;
		if (v.mv_size < sp->chunk)
			break; /* a short chunk is the last one */
		n++;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (rc == MDB_NOTFOUND)
		rc = 0; /* offset at or past the end */
out:
	if (cur != NULL)
		mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (err == 0)
		err = sp_err(sp, rc);
	if (err == 0)
		*got = done;
	return err;
}

int mta_spool_stat(struct mta_spool *sp, uint64_t *nmessages)
{
	MDB_txn *txn;
	MDB_stat st;
	int rc, err;

	err = sp_read_begin(sp, &txn);
	if (err != 0)
		return err;
	rc = mdb_stat(txn, sp->messages, &st);
	mdb_txn_abort(txn);
	if (rc != 0)
		return sp_err(sp, rc);
	*nmessages = st.ms_entries;
	return 0;
}

int mta_spool_due(struct mta_spool *sp, int64_t from_us, const char *from_qid,
		  int64_t now_us, size_t max,
		  int (*cb)(void *ud, const char *qid, int64_t due_us),
		  void *ud, int64_t *next_due_us)
{
	uint8_t fk[DUE_KEY_LEN];
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t seen = 0;
	int rc, err;

	*next_due_us = -1;
	err = sp_read_begin(sp, &txn);
	if (err != 0)
		return err;
	rc = mdb_cursor_open(txn, sp->due, &cur);
	if (rc != 0) {
		mdb_txn_abort(txn);
		return sp_err(sp, rc);
	}
	if (from_qid != NULL && strlen(from_qid) == MTA_QID_LEN) {
		sp_due_key(fk, from_us, from_qid);
		k.mv_size = sizeof(fk);
		k.mv_data = fk;
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		if (rc == 0 && k.mv_size == sizeof(fk) &&
		    memcmp(k.mv_data, fk, sizeof(fk)) == 0)
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	} else {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	while (rc == 0) {
		char qid[MTA_QID_LEN + 1];
		int64_t due;

		if (k.mv_size != DUE_KEY_LEN) {
			err = MTA_ECORRUPT;
			break;
		}
		due = (int64_t)(((uint64_t)get_be32(k.mv_data) << 32) |
				get_be32((uint8_t *)k.mv_data + 4));
		if (due > now_us || seen >= max) {
			*next_due_us = due;
			break;
		}
		memcpy(qid, (uint8_t *)k.mv_data + 8, MTA_QID_LEN);
		qid[MTA_QID_LEN] = '\0';
		seen++;
		if (cb(ud, qid, due) != 0)
			break;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (err == 0 && rc != 0 && rc != MDB_NOTFOUND)
		err = sp_err(sp, rc);
	return err;
}


int mta_spool_totals(struct mta_spool *sp, uint64_t *messages,
		     uint64_t *rcpts, uint64_t *bytes)
{
	MDB_txn *txn;
	MDB_val k = {sizeof(TOTALS_KEY) - 1, (void *)TOTALS_KEY}, v;
	int rc, err;

	err = sp_read_begin(sp, &txn);
	if (err != 0)
		return err;
	rc = mdb_get(txn, sp->meta, &k, &v);
	if (rc == 0 && v.mv_size == 24) {
		*messages = get_be64(v.mv_data);
		*rcpts = get_be64((uint8_t *)v.mv_data + 8);
		*bytes = get_be64((uint8_t *)v.mv_data + 16);
	} else if (rc == 0) {
		rc = MDB_CORRUPTED;
	}
	mdb_txn_abort(txn);
	return sp_err(sp, rc);
}

/* ---- figures for the metrics endpoint ------------------------------ */

static int64_t db_entries(MDB_txn *txn, MDB_dbi dbi, bool have)
{
	MDB_stat st;

	if (!have || mdb_stat(txn, dbi, &st) != 0)
		return -1;
	return (int64_t)st.ms_entries;
}

int mta_spool_info(struct mta_spool *sp, struct mta_spool_info *out)
{
	MDB_envinfo ei;
	MDB_stat es;
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, err;

	memset(out, 0, sizeof(*out));
	out->oldest_arrival_us = -1;
	if (mdb_env_info(sp->env, &ei) != 0 || mdb_env_stat(sp->env, &es) != 0)
		return MTA_EDB;
	out->map_size = (uint64_t)ei.me_mapsize;
	out->map_used = ((uint64_t)ei.me_last_pgno + 1) * es.ms_psize;
	if ((err = sp_read_begin(sp, &txn)) != 0)
		return err;
	out->held = db_entries(txn, sp->held, sp->have_held);
	out->sts_policies = db_entries(txn, sp->sts, true);
	/* queue ids are time-ordered: the first key is the oldest message */
	rc = mdb_cursor_open(txn, sp->messages, &cur);
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
		if (rc == 0) {
			struct mta_envelope env;
			mta_envelope_init(&env);
			if (mta_envelope_decode(v.mv_data, v.mv_size, &env) ==
			    0)
				out->oldest_arrival_us = env.arrival_us;
			mta_envelope_free(&env);
		} else if (rc == MDB_NOTFOUND) {
			rc = 0;
		}
		mdb_cursor_close(cur);
	}
	mdb_txn_abort(txn);
	return sp_err(sp, rc);
}


/* The one process-wide state of this module: the SIGBUS handler can take no
 * argument, so the sentence it writes is made ahead, once per process. */
static char sigbus_msg[1024];
static size_t sigbus_len;

static void on_sigbus(int sig)
{
	/* async-signal-safe: one write(2), then die of the signal as before
	 * (SA_RESETHAND restored the default action) */
	ssize_t r = write(STDERR_FILENO, sigbus_msg, sigbus_len);
	(void)r;
	raise(sig);
}

void mta_spool_trap_sigbus(const char *prog, const char *dir)
{
	struct sigaction sa;
	int n;

	n = snprintf(sigbus_msg, sizeof(sigbus_msg),
		     "%s: level=error event=spool_corrupt what=sigbus dir=%s "
		     "action=\"SIGBUS: a page outside %s/data.mdb was "
		     "referenced, so the spool file is damaged. Stop every "
		     "mtad and tool using it, copy the directory aside, "
		     "restore data.mdb from a backup or salvage with mdb_dump "
		     "-a into a new spool\"\n",
		     prog, dir, dir);
	if (n < 0)
		return;
	sigbus_len = (size_t)n < sizeof(sigbus_msg) ? (size_t)n
						    : sizeof(sigbus_msg) - 1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigbus;
	sa.sa_flags = SA_RESETHAND;
	sigemptyset(&sa.sa_mask);
	(void)sigaction(SIGBUS, &sa, NULL);
}
