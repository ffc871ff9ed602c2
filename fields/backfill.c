/* backfill.c - a generic field new to the store (added, or its
 * definition changed, by a reload or while the server was down) reads the
 * log's past: the plan made at open and at each reload, and the chunks the
 * stage's ticks run (docs/COMPUTED.md, "Generic fields"). */
#include "fields_int.h"

#include <stdlib.h>
#include <string.h>

static const fld_conf_t *conf(const sl_fields_t *f) { return fld_conf(f->cfg); }

/* ---- backfill: a generic field new to the store (added, or its definition
 * changed, by a reload or while the server was down) reads the events of
 * the log that came before it, a chunk per stage tick, from a durable
 * cursor (fmeta "bf:<name>"); later events it sees live. Meanwhile its
 * changes are not told. ---- */

#define BF_CHUNK 2000

static int meta_key(sl_buf_t *k, const char *what, const char *name)
{
    k->len = 0;
    return sl_buf_appends(k, what) || sl_buf_appends(k, name) ? SL_ENOMEM : 0;
}

static int bf_save(sl_fields_t *f, MDB_txn *txn, size_t i)
{
    const fld_gfield_t *g = &conf(f)->gfields[i];
    int rc = meta_key(&f->k2, "bf:", g->name);
    MDB_val k = {f->k2.len, f->k2.data};
    if (rc) return rc;
    atomic_store(&f->bf_next[i], f->bf[i].next);
    atomic_store(&f->bf_upto[i], f->bf[i].upto);
    if (!f->bf[i].on) {
        atomic_fetch_and(&f->bf_mask, ~(1ULL << i));
        rc = mdb_del(txn, f->fmeta, &k, NULL);
        return rc == MDB_NOTFOUND ? 0 : rc;
    }
    atomic_fetch_or(&f->bf_mask, 1ULL << i);
    uint64_t v2[2] = {f->bf[i].next, f->bf[i].upto};
    MDB_val v = {sizeof(v2), v2};
    return mdb_put(txn, f->fmeta, &k, &v, 0);
}

/* Which generic fields must read the log's past: each field's definition
 * against the one the store kept it under. Stage thread, in a transaction
 * (the step's open, a reload's job). */
int fld_backfill_plan(sl_fields_t *f, MDB_txn *txn)
{
    const fld_conf_t *c = conf(f);
    uint64_t pos = sl_stage_position(f->stage);
    int rc = 0;
    atomic_store(&f->bf_mask, 0);
    memset(f->bf, 0, sizeof(f->bf));
    for (size_t i = 0; i < c->n_gfields && rc == 0; i++) {
        const fld_gfield_t *g = &c->gfields[i];
        if (g->type == FG_LABEL) continue;
        MDB_val v;
        uint32_t kept = 0;
        if ((rc = meta_key(&f->k2, "def:", g->name))) break;
        MDB_val k = {f->k2.len, f->k2.data};
        if ((rc = mdb_get(txn, f->fmeta, &k, &v)) == 0 && v.mv_size == 4) memcpy(&kept, v.mv_data, 4);
        else if (rc && rc != MDB_NOTFOUND) break;
        if (kept == g->def) { /* known: a backfill under way goes on from its cursor */
            if ((rc = meta_key(&f->k2, "bf:", g->name))) break;
            k = (MDB_val){f->k2.len, f->k2.data};
            if ((rc = mdb_get(txn, f->fmeta, &k, &v)) == 0 && v.mv_size == 16) {
                uint64_t v2[2];
                memcpy(v2, v.mv_data, 16);
                f->bf[i] = (typeof(f->bf[i])){1, v2[0], v2[1]};
            }
            if (rc == MDB_NOTFOUND) rc = 0;
        } else { /* new: the events up to here were never read for it */
            uint32_t d = g->def;
            MDB_val dv = {4, &d};
            if ((rc = mdb_put(txn, f->fmeta, &k, &dv, 0))) break;
            f->bf[i] = (typeof(f->bf[i])){pos > 0, 1, pos};
        }
        if (rc == 0) rc = bf_save(f, txn, i);
    }
    return rc;
}

typedef struct {
    sl_fields_t *f;
    MDB_txn *txn;           /* the derived store's */
    const fld_gfield_t *g;
    size_t i;
    uint64_t to;            /* the last event of this chunk */
    int64_t now;
    uint64_t read;
    fld_replay_t r;         /* the event under way */
} bf_run_t;

static int bf_event(const char *json, size_t len, uint64_t seq, void *arg)
{
    bf_run_t *b = arg;
    sl_fields_t *f = b->f;
    if (seq > b->to) return 1; /* this chunk is done */
    b->read++;
    fld_replay_t *r = &b->r;
    double pts;
    sl_arena_reset(&f->arena);
    if (fld_replay_event(r, json, len, seq, &f->arena) || !fld_gfield_matches(b->g, r->kind, r->kind_len, &r->ev, b->now, &pts))
        return 0;
    uint64_t person;
    int found, rc = sl_stitch_event_person(f->stitch, b->txn, &r->top, &r->context, &person);
    if (rc == SL_ENOTFOUND) return 0; /* erased since */
    if (rc || (rc = fld_grec_get(f, b->txn, person, &f->grec_old))) return rc;
    MDB_val rec = {f->grec_old.len, f->grec_old.data};
    if ((rc = fld_gstate_from(&rec, b->g, f->gs, &found)) || !fld_gstate_apply(b->g, f->gs, &r->ev, pts, b->now)) return rc;
    if ((rc = fld_gstate_settle(f, b->txn, person, b->g, f->gs, b->now)) ||
        (rc = fld_gstate_encode(f->gs, &f->gstates[0])))
        return rc;
    return fld_grec_put(f, b->txn, person, &f->grec_old, &b->g, f->gstates, 1);
}

static int bf_log(MDB_txn *log_txn, void *arg)
{
    bf_run_t *b = arg;
    int rc = sl_store_foreach_event_from(sl_stage_log(b->f->stage), log_txn, b->f->bf[b->i].next, bf_event, b);
    return rc == 1 ? 0 : rc;
}

int64_t fld_backfill_due(void *arg)
{
    sl_fields_t *f = arg;
    return atomic_load(&f->bf_mask) ? sl_now_ms() : INT64_MAX;
}

/* A chunk of the first backfill under way. */
int fld_backfill_tick(void *arg, MDB_txn *txn, int64_t now, int *wrote)
{
    sl_fields_t *f = arg;
    const fld_conf_t *c = conf(f);
    size_t i = 0;
    while (i < c->n_gfields && !f->bf[i].on) i++;
    if (i == c->n_gfields) return 0;
    fld_watch_update(f);
    bf_run_t b = {.f = f, .txn = txn, .g = &c->gfields[i], .i = i, .to = f->bf[i].next + BF_CHUNK - 1, .now = now};
    if (b.to > f->bf[i].upto) b.to = f->bf[i].upto;
    int rc = sl_store_read(sl_stage_log(f->stage), bf_log, &b);
    if (rc) return rc;
    f->bf[i].next = b.to + 1;
    if (f->bf[i].next > f->bf[i].upto) f->bf[i].on = 0;
    f->pend.backfilled += b.read;
    *wrote = 1;
    return bf_save(f, txn, i);
}

