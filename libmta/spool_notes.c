/*
 * spool_notes.c - the spool's string-keyed databases: the MTA-STS policy
 * cache and the TLS report counters and notes.  See spool.h; internals
 * shared with spool.c in spool_int.h.
 */
#include "spool_int.h"

#include "err.h"

#include <errno.h>
#include <lmdb.h>
#include <stdint.h>
#include <string.h>

/* ---- MTA-STS policy cache ----------------------------------------- */

int mta_spool_sts_put(struct mta_spool_txn *t, const char *domain,
		      const void *rec, size_t len)
{
	MDB_val k = {strlen(domain), (void *)domain};
	MDB_val v = {len, (void *)rec};
	MDB_txn *child;
	int rc;

	if (k.mv_size == 0 || k.mv_size > 255)
		return -EINVAL;
	/* nested, like every write: a failure leaves the batch usable */
	rc = mdb_txn_begin(t->sp->env, t->txn, 0, &child);
	if (rc != 0)
		return sp_err(t->sp, rc);
	if (rec == NULL) {
		rc = mdb_del(child, t->sp->sts, &k, NULL);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	} else {
		rc = mdb_put(child, t->sp->sts, &k, &v, 0);
	}
	if (rc != 0) {
		mdb_txn_abort(child);
		return sp_err(t->sp, rc);
	}
	return sp_err(t->sp, mdb_txn_commit(child));
}

int mta_spool_sts_get(struct mta_spool *sp, const char *domain,
		      struct mta_buf *out)
{
	MDB_txn *txn;
	MDB_val k = {strlen(domain), (void *)domain}, v;
	int rc, err;

	if (k.mv_size == 0 || k.mv_size > 255)
		return MTA_ENOTFOUND;
	err = sp_read_begin(sp, &txn);
	if (err != 0)
		return err;
	rc = mdb_get(txn, sp->sts, &k, &v);
	out->len = 0;
	err = rc == 0 ? mta_buf_append(out, v.mv_data, v.mv_size)
		      : sp_err(sp, rc);
	mdb_txn_abort(txn);
	return err;
}

/* Walks one key -> value database in key order under one short read
 * transaction; keys are strings (shorter than 512 bytes). */
static int kv_foreach(struct mta_spool *sp, MDB_dbi dbi,
		      int (*cb)(void *ud, const char *key,
				const uint8_t *val, size_t len),
		      void *ud)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, err;

	err = sp_read_begin(sp, &txn);
	if (err != 0)
		return err;
	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc != 0) {
		mdb_txn_abort(txn);
		return sp_err(sp, rc);
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0) {
		char key[512];
		if (k.mv_size < sizeof(key)) {
			memcpy(key, k.mv_data, k.mv_size);
			key[k.mv_size] = '\0';
			if (cb(ud, key, v.mv_data, v.mv_size) != 0)
				break;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	return rc == 0 || rc == MDB_NOTFOUND ? 0 : sp_err(sp, rc);
}

int mta_spool_sts_foreach(struct mta_spool *sp,
			  int (*cb)(void *ud, const char *domain,
				    const uint8_t *rec, size_t len),
			  void *ud)
{
	return kv_foreach(sp, sp->sts, cb, ud);
}

/* ---- TLS report counters ------------------------------------------ */

int mta_spool_counter_add(struct mta_spool_txn *t, const char *key,
			  int64_t delta)
{
	MDB_val k = {strlen(key), (void *)key}, v;
	uint8_t buf[8] = {0};
	MDB_txn *child;
	int rc;

	if (!t->sp->have_tlsrpt)
		return -EROFS;
	if (k.mv_size == 0 || k.mv_size > 500)
		return -EINVAL;
	rc = mdb_txn_begin(t->sp->env, t->txn, 0, &child);
	if (rc != 0)
		return sp_err(t->sp, rc);
	rc = mdb_get(child, t->sp->tlsrpt, &k, &v);
	if (rc == 0 && v.mv_size == 8)
		memcpy(buf, v.mv_data, 8);
	put_be64(buf, get_be64(buf) + (uint64_t)delta);
	v.mv_size = sizeof(buf);
	v.mv_data = buf;
	rc = mdb_put(child, t->sp->tlsrpt, &k, &v, 0);
	if (rc != 0) {
		mdb_txn_abort(child);
		return sp_err(t->sp, rc);
	}
	return sp_err(t->sp, mdb_txn_commit(child));
}

struct counter_walk {
	int (*cb)(void *ud, const char *key, uint64_t value);
	void *ud;
};

static int counter_entry(void *ud, const char *key, const uint8_t *val,
			 size_t len)
{
	struct counter_walk *w = ud;

	if (strncmp(key, "P ", 2) == 0)
		return 0; /* a note */
	return len == 8 ? w->cb(w->ud, key, get_be64(val)) : 0;
}

int mta_spool_tlsrpt_note_put(struct mta_spool_txn *t, const char *key,
			      const char *text)
{
	MDB_val k = {strlen(key), (void *)key}, v = {strlen(text),
						     (void *)text};

	if (!t->sp->have_tlsrpt)
		return -EROFS;
	if (k.mv_size < 3 || k.mv_size > 500 || strncmp(key, "P ", 2) != 0)
		return -EINVAL;
	return sp_err(t->sp, mdb_put(t->txn, t->sp->tlsrpt, &k, &v, 0));
}

int mta_spool_tlsrpt_foreach(struct mta_spool *sp,
			     int (*cb)(void *ud, const char *key,
				       const uint8_t *val, size_t len),
			     void *ud)
{
	if (!sp->have_tlsrpt)
		return 0;
	return kv_foreach(sp, sp->tlsrpt, cb, ud);
}

int mta_spool_counter_foreach(struct mta_spool *sp,
			      int (*cb)(void *ud, const char *key,
					uint64_t value),
			      void *ud)
{
	struct counter_walk w = {cb, ud};

	if (!sp->have_tlsrpt)
		return 0;
	return kv_foreach(sp, sp->tlsrpt, counter_entry, &w);
}
