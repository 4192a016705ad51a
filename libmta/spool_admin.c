/*
 * spool_admin.c - the spool's administration (hold, release, flush,
 * delete for mtactl), the held and destination listings and the key
 * continuity records.  See spool.h; internals shared with spool.c in
 * spool_int.h.
 */
#include "spool_int.h"

#include "err.h"

#include <errno.h>
#include <lmdb.h>
#include <stdint.h>
#include <string.h>

/* ---- administration (mtactl through mtad's control socket) ---------- */

#define HELD_MAGIC "MTAH"
#define HELD_VERSION 1
#define HELD_LEN 14 /* magic, be16 version, be64 held_at_us */

bool sp_held_in(struct mta_spool *sp, MDB_txn *txn, const char *qid)
{
	MDB_val k = {MTA_QID_LEN, (void *)qid}, v;

	return sp->have_held && mdb_get(txn, sp->held, &k, &v) == 0;
}

static int held_decode(const MDB_val *v, int64_t *since)
{
	const uint8_t *p = v->mv_data;

	if (v->mv_size != HELD_LEN || memcmp(p, HELD_MAGIC, 4) != 0)
		return MTA_ECORRUPT;
	if ((p[4] << 8 | p[5]) != HELD_VERSION)
		return MTA_ESCHEMA;
	*since = (int64_t)get_be64(p + 6);
	return 0;
}

/* Moves every pending recipient's next attempt to now_us. */
static void pending_now(struct mta_envelope *e, int64_t now_us)
{
	for (size_t i = 0; i < e->nrcpt; i++)
		if (e->rcpts[i].state == MTA_RCPT_QUEUED ||
		    e->rcpts[i].state == MTA_RCPT_DEFERRED)
			e->rcpts[i].next_attempt_us = now_us;
}

static int put_env_in(struct mta_spool_txn *t, MDB_txn *txn, const char *qid,
		      const struct mta_envelope *e)
{
	MDB_val k = {MTA_QID_LEN, (void *)qid}, v;
	int err;

	t->rec.len = 0;
	err = mta_envelope_encode(e, &t->rec);
	if (err != 0)
		return err;
	v.mv_size = t->rec.len;
	v.mv_data = t->rec.data;
	return sp_err(t->sp, mdb_put(txn, t->sp->messages, &k, &v, 0));
}

static int due_put_del(struct mta_spool_txn *t, MDB_txn *txn, const char *qid,
		       int64_t due_us, bool put)
{
	uint8_t dk[DUE_KEY_LEN];
	MDB_val k = {sizeof(dk), dk}, v = {0, (void *)""};
	int rc;

	if (due_us == INT64_MAX)
		return 0;
	sp_due_key(dk, due_us, qid);
	rc = put ? mdb_put(txn, t->sp->due, &k, &v, 0)
		 : mdb_del(txn, t->sp->due, &k, NULL);
	if (rc == MDB_NOTFOUND)
		rc = 0;
	return sp_err(t->sp, rc);
}

static int admin_in(struct mta_spool_txn *t, MDB_txn *txn,
		    enum mta_spool_admin_op op,
		    const char *qid, int64_t now_us, struct mta_envelope *e)
{
	struct mta_spool *sp = t->sp;
	MDB_val k = {MTA_QID_LEN, (void *)qid}, v;
	bool held = sp_held_in(sp, txn, qid);
	uint8_t rec[HELD_LEN];
	int err;

	switch (op) {
	case MTA_SPOOL_HOLD:
		if (held)
			return -EALREADY;
		if ((err = due_put_del(t, txn, qid, sp_env_due(e), false)) != 0)
			return err;
		memcpy(rec, HELD_MAGIC, 4);
		rec[4] = 0;
		rec[5] = HELD_VERSION;
		put_be64(rec + 6, (uint64_t)now_us);
		v.mv_size = sizeof(rec);
		v.mv_data = rec;
		return sp_err(sp, mdb_put(txn, sp->held, &k, &v, 0));
	case MTA_SPOOL_RELEASE:
		if (!held)
			return -EALREADY;
		if ((err = sp_err(sp, mdb_del(txn, sp->held, &k, NULL))) != 0)
			return err;
		/* a released message is due now */
		__attribute__((fallthrough));
	case MTA_SPOOL_FLUSH:
		if (op == MTA_SPOOL_FLUSH && held)
			return -EPERM;
		if ((err = due_put_del(t, txn, qid, sp_env_due(e), false)) != 0)
			return err;
		pending_now(e, now_us);
		if ((err = put_env_in(t, txn, qid, e)) != 0)
			return err;
		return due_put_del(t, txn, qid, sp_env_due(e), true);
	case MTA_SPOOL_DELETE:
		if ((err = due_put_del(t, txn, qid, sp_env_due(e), false)) != 0)
			return err;
		if (held &&
		    (err = sp_err(sp, mdb_del(txn, sp->held, &k, NULL))) != 0)
			return err;
		if ((err = sp_del_message_in(t, txn, qid, e)) != 0)
			return err;
		return sp_err(sp, sp_totals_add(txn, sp->meta, -1,
						-(int64_t)e->nrcpt,
					     -(int64_t)e->size));
	case MTA_SPOOL_NOP:
	case MTA_SPOOL_UNDUE:
	default:
		return -EINVAL;
	}
}

int mta_spool_admin(struct mta_spool_txn *t, enum mta_spool_admin_op op,
		    const char *qid, int64_t now_us, const char *new_qid,
		    const struct mta_envelope *new_env,
		    const struct mta_body *new_body)
{
	struct mta_spool *sp = t->sp;
	struct mta_envelope e;
	MDB_txn *child;
	int rc, err;

	if (op == MTA_SPOOL_NOP)
		return 0;
	if (!sp_qid_valid(qid))
		return -EINVAL;
	if (!sp->have_held)
		return -EROFS;
	rc = mdb_txn_begin(sp->env, t->txn, 0, &child);
	if (rc != 0)
		return sp_err(sp, rc);
	MDB_val k = {MTA_QID_LEN, (void *)qid}, v;
	rc = mdb_get(child, sp->messages, &k, &v);
	if (op == MTA_SPOOL_UNDUE) {
		/* only a due entry that outlived its message */
		err = rc == MDB_NOTFOUND
			      ? due_put_del(t, child, qid, now_us, false)
			      : sp_err(sp, rc);
		if (err != 0) {
			mdb_txn_abort(child);
			return err;
		}
		return sp_err(sp, mdb_txn_commit(child));
	}
	if (rc != 0) {
		mdb_txn_abort(child);
		return sp_err(sp, rc);
	}
	err = mta_envelope_decode(v.mv_data, v.mv_size, &e);
	if (err != 0) {
		mdb_txn_abort(child);
		return err;
	}
	err = admin_in(t, child, op, qid, now_us, &e);
	if (err == 0 && new_qid != NULL)
		err = sp_put_message_in(t, child, new_qid, new_env, new_body);
	mta_envelope_free(&e);
	if (err != 0) {
		mdb_txn_abort(child);
		return err;
	}
	return sp_err(sp, mdb_txn_commit(child));
}

int mta_spool_held_get(struct mta_spool *sp, const char *qid,
		       int64_t *since_us)
{
	MDB_val k = {MTA_QID_LEN, (void *)qid}, v;
	MDB_txn *txn;
	int rc, err;

	if (strlen(qid) != MTA_QID_LEN)
		return MTA_ENOTFOUND;
	if (!sp->have_held)
		return MTA_ENOTFOUND;
	if ((err = sp_read_begin(sp, &txn)) != 0)
		return err;
	rc = mdb_get(txn, sp->held, &k, &v);
	err = rc == 0 ? held_decode(&v, since_us) : sp_err(sp, rc);
	mdb_txn_abort(txn);
	return err;
}

int mta_spool_held_foreach(struct mta_spool *sp,
			   int (*cb)(void *ud, const char *qid,
				     int64_t since_us),
			   void *ud)
{
	MDB_cursor *cur;
	MDB_txn *txn;
	MDB_val k, v;
	int rc, err;

	if (!sp->have_held)
		return 0;
	if ((err = sp_read_begin(sp, &txn)) != 0)
		return err;
	rc = mdb_cursor_open(txn, sp->held, &cur);
	if (rc != 0) {
		mdb_txn_abort(txn);
		return sp_err(sp, rc);
	}
	err = 0;
	while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
		char qid[MTA_QID_LEN + 1];
		int64_t since;
		if (k.mv_size != MTA_QID_LEN || held_decode(&v, &since) != 0)
			continue;
		memcpy(qid, k.mv_data, MTA_QID_LEN);
		qid[MTA_QID_LEN] = '\0';
		if ((err = cb(ud, qid, since)) != 0)
			break;
	}
	if (err == 0 && rc != MDB_NOTFOUND)
		err = sp_err(sp, rc);
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	return err;
}

int mta_spool_dest_foreach(struct mta_spool *sp,
			   int (*cb)(void *ud, const char *domain,
				     const char *qid),
			   void *ud)
{
	MDB_cursor *cur;
	MDB_txn *txn;
	MDB_val k, v;
	char dom[512], qid[MTA_QID_LEN + 1];
	int rc, err;

	if ((err = sp_read_begin(sp, &txn)) != 0)
		return err;
	rc = mdb_cursor_open(txn, sp->dest, &cur);
	if (rc != 0) {
		mdb_txn_abort(txn);
		return sp_err(sp, rc);
	}
	err = 0;
	dom[0] = '\0';
	while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
		if (k.mv_size >= sizeof(dom) || v.mv_size != MTA_QID_LEN)
			continue;
		memcpy(dom, k.mv_data, k.mv_size);
		dom[k.mv_size] = '\0';
		memcpy(qid, v.mv_data, MTA_QID_LEN);
		qid[MTA_QID_LEN] = '\0';
		if ((err = cb(ud, dom, qid)) != 0)
			break;
	}
	if (err == 0 && rc != MDB_NOTFOUND)
		err = sp_err(sp, rc);
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	return err;
}

/* ---- key continuity records (spool_keys.h) ---------------------------
 * The "keys" database: policy domain -> spool_keys.c record.  This
 * section only stores bytes; the record's codec and meaning live in
 * spool_keys.c. */

int mta_spool_keys_raw_get(struct mta_spool *sp, const char *domain,
			   struct mta_buf *out)
{
	MDB_txn *txn;
	MDB_val k = {strlen(domain), (void *)domain}, v;
	int rc, err;

	if (!sp->have_keys || k.mv_size == 0 || k.mv_size > 255)
		return MTA_ENOTFOUND;
	err = sp_read_begin(sp, &txn);
	if (err != 0)
		return err;
	rc = mdb_get(txn, sp->keys, &k, &v);
	out->len = 0;
	err = rc == 0 ? mta_buf_append(out, v.mv_data, v.mv_size)
		      : sp_err(sp, rc);
	mdb_txn_abort(txn);
	return err;
}

int mta_spool_keys_update(struct mta_spool_txn *t, const char *domain,
			  int (*fn)(void *ud, const uint8_t *old,
				    size_t oldlen, struct mta_buf *out),
			  void *ud)
{
	MDB_val k = {strlen(domain), (void *)domain}, v;
	struct mta_buf out = {0};
	MDB_txn *child;
	int rc, err;

	if (!t->sp->have_keys)
		return -EROFS;
	if (k.mv_size == 0 || k.mv_size > 255)
		return -EINVAL;
	/* nested, like every write: a failure leaves the batch usable */
	rc = mdb_txn_begin(t->sp->env, t->txn, 0, &child);
	if (rc != 0)
		return sp_err(t->sp, rc);
	rc = mdb_get(child, t->sp->keys, &k, &v);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		mdb_txn_abort(child);
		return sp_err(t->sp, rc);
	}
	err = fn(ud, rc == 0 ? v.mv_data : NULL, rc == 0 ? v.mv_size : 0,
		 &out);
	if (err != 0) {
		mta_buf_free(&out);
		mdb_txn_abort(child);
		return err;
	}
	if (out.len == 0) {
		rc = mdb_del(child, t->sp->keys, &k, NULL);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	} else {
		v.mv_size = out.len;
		v.mv_data = out.data;
		rc = mdb_put(child, t->sp->keys, &k, &v, 0);
	}
	mta_buf_free(&out);
	if (rc != 0) {
		mdb_txn_abort(child);
		return sp_err(t->sp, rc);
	}
	return sp_err(t->sp, mdb_txn_commit(child));
}
