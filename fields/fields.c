/* fields.c - the fields step of the stage: the order ledger kept from each
 * event (orders, duplicates, refunds), each person's summary, merges,
 * erasure, the RFM timer, and the changes told to later phases. */
#include "fields_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const fld_conf_t *conf(const sl_fields_t *f) { return fld_conf(f->cfg); }
/* 1 when the configuration computes fields (flat lists are worth making) */
static int computing(const fld_conf_t *c) { return c->commerce || c->n_gfields; }

/* What the listeners watch, asked once per configuration and rules. */
void fld_watch_update(sl_fields_t *f)
{
    if (f->watch.valid) return;
    memset(&f->watch, 0, sizeof(f->watch));
    f->watch.valid = 1;
    const fld_conf_t *c = conf(f);
    fld_flat_t fl;
    fld_sum_t *s = malloc(sizeof(*s));
    memset(&fl, 0, sizeof(fl));
    if (s == NULL) { /* out of memory: watch everything (correct, slower) */
        f->watch.any = f->watch.rfm = f->watch.labels = 1;
        f->watch.gmask = ~0ULL;
        memset(f->watch.flat, 1, sizeof(f->watch.flat));
        f->watch.valid = 0;
        return;
    }
    fld_sum_init(s);
    if (fld_flatten(c, s, NULL, NULL, 0, &fl) == 0)
        for (size_t i = 0; i < fl.n; i++) {
            int w = 0;
            for (size_t k = 0; k < f->n_listeners && !w; k++)
                w = f->listeners[k].watches && f->listeners[k].watches(f->listeners[k].arg, fl.name[i]);
            if (!w) continue;
            f->watch.flat[i] = 1;
            f->watch.any = 1;
            if (strncmp(fl.name[i], "rfm.", 4) == 0) f->watch.rfm = 1;
            for (size_t g = 0; g < c->n_gfields; g++)
                if (strcmp(c->gfields[g].name, fl.name[i]) == 0) {
                    f->watch.gmask |= 1ULL << g;
                    if (c->gfields[g].type == FG_LABEL) f->watch.labels = 1;
                }
        }
    free(s);
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
}

void sl_fields_rules_changed(sl_fields_t *f) { f->watch.valid = 0; }

/* 1 when field name is a generic field reading the log's past: its
 * changes are not told meanwhile (stage thread) */
static int backfilling(const sl_fields_t *f, const char *name)
{
    const fld_conf_t *c = conf(f);
    for (size_t i = 0; i < c->n_gfields; i++)
        if (f->bf[i].on && strcmp(c->gfields[i].name, name) == 0) return 1;
    return 0;
}

/* 1 when generic field g's changes are told: it is watched, or a watched
 * label may read it */
static int g_watched(sl_fields_t *f, size_t g) { return f->watch.labels || (f->watch.gmask >> g & 1); }

/* ---- keys ---- */

static void porder_key(unsigned char *k, uint64_t person, int64_t ts)
{
    sl_be64_put(k, person);
    sl_be64_put(k + 8, (uint64_t)ts ^ (1ULL << 63));
}

static int porder_put(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_order_t *o, const MDB_val *okey)
{
    f->k2.len = 0;
    unsigned char pre[FLD_PORDER_PREFIX];
    porder_key(pre, person, o->f.ts_ms);
    if (sl_buf_append(&f->k2, pre, sizeof(pre)) || sl_buf_append(&f->k2, okey->mv_data, okey->mv_size))
        return SL_ENOMEM;
    fld_porder_t po = {fld_order_net(o), o->f.flags, {0}};
    MDB_val k = {f->k2.len, f->k2.data}, v = {sizeof(po), &po};
    return mdb_put(txn, f->porders, &k, &v, 0);
}

/* ---- summaries ---- */

int fld_sum_load(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_sum_t *s, int *found)
{
    MDB_val k = {8, &person}, v;
    int rc = mdb_get(txn, f->fstate, &k, &v);
    *found = rc == 0;
    if (rc == MDB_NOTFOUND) {
        fld_sum_init(s);
        return 0;
    }
    return rc ? rc : fld_sum_decode(&v, s);
}

static int sum_save(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_sum_t *s)
{
    int rc = fld_sum_encode(s, &f->v);
    MDB_val k = {8, &person}, v = {f->v.len, f->v.data};
    return rc ? rc : mdb_put(txn, f->fstate, &k, &v, 0);
}

int fld_each_order(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_order_t *o,
                      int (*fn)(void *arg, const MDB_val *pkey, const fld_porder_t *po, const fld_order_t *o), void *arg)
{
    MDB_cursor *cur;
    unsigned char pre[8];
    sl_be64_put(pre, person);
    int rc = mdb_cursor_open(txn, f->porders, &cur);
    if (rc) return rc;
    MDB_val k = {8, pre}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < FLD_PORDER_PREFIX || memcmp(k.mv_data, pre, 8) != 0) break;
        fld_porder_t po;
        if (v.mv_size != sizeof(po)) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&po, v.mv_data, sizeof(po));
        if (o) {
            MDB_val ok = {k.mv_size - FLD_PORDER_PREFIX, (char *)k.mv_data + FLD_PORDER_PREFIX}, ov;
            if ((rc = mdb_get(txn, f->ledger, &ok, &ov)) || (rc = fld_order_decode(&ov, o))) {
                /* an entry without its order is damage, not the end of the list
                 * (MDB_NOTFOUND would read as the end: a recomputation or
                 * verify would silently stop short) */
                if (rc == MDB_NOTFOUND) rc = MDB_CORRUPTED;
                break;
            }
        }
        if ((rc = fn(arg, &k, &po, o))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

typedef struct {
    fld_sum_t *s;
    int max_categories;
} recompute_t;

static int recompute_one(void *arg, const MDB_val *pkey, const fld_porder_t *po, const fld_order_t *o)
{
    (void)pkey, (void)po;
    recompute_t *r = arg;
    fld_sum_order(r->s, o, 1, r->max_categories);
    return 0;
}

/* s from person's orders in the ledger (what was not recomputed -- the
 * RFM segment, since when, the timer -- is kept) */
static int sum_recompute(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_sum_t *s, fld_order_t *scratch)
{
    fld_sum_fix_t keep = s->f;
    fld_sum_init(s);
    s->f.seg = keep.seg, s->f.prev_seg = keep.prev_seg, s->f.seg_since_ms = keep.seg_since_ms;
    s->f.timer_ms = keep.timer_ms, s->f.r = keep.r, s->f.f = keep.f, s->f.m = keep.m;
    recompute_t r = {s, conf(f)->max_categories};
    return fld_each_order(f, txn, person, scratch, recompute_one, &r);
}

typedef struct {
    const fld_conf_t *c;
    int64_t now;
    fld_windows_t *w;
} windows_t;

static int window_one(void *arg, const MDB_val *pkey, const fld_porder_t *po, const fld_order_t *o)
{
    (void)o;
    windows_t *x = arg;
    if (!(po->flags & FO_PLACED) || (po->flags & FO_REFUNDED)) return 0;
    int64_t ts = (int64_t)(sl_be64_get((const unsigned char *)pkey->mv_data + 8) ^ (1ULL << 63));
    for (size_t i = 0; i < x->c->n_windows; i++)
        if (ts > x->now - x->c->windows[i] && ts <= x->now) {
            x->w->orders[i]++;
            if (po->flags & FO_REV_KNOWN) {
                x->w->rev_orders[i]++;
                x->w->revenue[i] += po->net;
            }
        }
    return 0;
}

/* Reads only the person's orders inside the widest window (porders keys
 * are in time order within a person): a reader -- every order, refund and
 * profile read of the person, twice per event -- costs the orders of the
 * last window, not every order the person ever had. */
int fld_windows(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now, fld_windows_t *w)
{
    memset(w, 0, sizeof(*w));
    windows_t x = {conf(f), now, w};
    if (x.c->n_windows == 0) return 0;
    int64_t widest = 0;
    for (size_t i = 0; i < x.c->n_windows; i++)
        if (x.c->windows[i] > widest) widest = x.c->windows[i];
    unsigned char from[FLD_PORDER_PREFIX];
    porder_key(from, person, now - widest + 1); /* widest <= FLD_MAX_DURATION_MS: no overflow */
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, f->porders, &cur);
    if (rc) return rc;
    MDB_val k = {sizeof(from), from}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < FLD_PORDER_PREFIX || memcmp(k.mv_data, from, 8) != 0) break;
        if ((int64_t)(sl_be64_get((const unsigned char *)k.mv_data + 8) ^ (1ULL << 63)) > now) break;
        fld_porder_t po;
        if (v.mv_size != sizeof(po)) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&po, v.mv_data, sizeof(po));
        window_one(&x, &k, &po, NULL);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* ---- changes ---- */

static int change_add(cJSON **list, const char *field, const char *old, size_t old_len, const char *new_v,
                      size_t new_len, const char *reason)
{
    if (*list == NULL && (*list = cJSON_CreateArray()) == NULL) return SL_ENOMEM;
    cJSON *e = cJSON_CreateArray();
    if (e == NULL) return SL_ENOMEM;
    cJSON_AddItemToArray(*list, e);
    cJSON *a = cJSON_CreateString(field), *b = cJSON_ParseWithLength(old, old_len),
          *c = cJSON_ParseWithLength(new_v, new_len), *d = cJSON_CreateString(reason);
    if (a) cJSON_AddItemToArray(e, a);
    if (b) cJSON_AddItemToArray(e, b);
    if (c) cJSON_AddItemToArray(e, c);
    if (d) cJSON_AddItemToArray(e, d);
    return a && b && c && d ? 0 : SL_ENOMEM;
}

/* The tracked fields that differ between the two flat lists (of one
 * configuration: the same names in the same order). */
static int diff(sl_fields_t *f, cJSON **list, const char *reason)
{
    const fld_flat_t *a = &f->fl_old, *b = &f->fl_new;
    for (size_t i = 0; i < a->n && i < b->n; i++) {
        if (!f->watch.flat[i] || !fld_flat_tracked(a->name[i]) || backfilling(f, a->name[i])) continue;
        if (a->len[i] == b->len[i] && memcmp(a->text.data + a->off[i], b->text.data + b->off[i], a->len[i]) == 0)
            continue;
        int rc = change_add(list, a->name[i], a->text.data + a->off[i], a->len[i], b->text.data + b->off[i],
                            b->len[i], reason);
        if (rc) return rc;
    }
    return 0;
}

/* ---- generic fields' states: one record per person (the person's
 * attachment, sl_stitch.h), every field's state in it, each entry the hash
 * of its field's definition (u32: the definition holds the name; a state
 * kept under another is stale), then its state's length (a varint, up to
 * 3 bytes) and the state (fld_gstate_encode): an event touches one record,
 * however many fields it moves ---- */

#define GREC_VERSION 4

/* The next entry of a record at *p: 1 and its parts, 0 at the end or at a
 * damaged entry (the rest is not read). */
typedef struct {
    uint32_t def;
    MDB_val state;
} gent_t;

static int gent_next(const unsigned char **p, const unsigned char *end, gent_t *e)
{
    const unsigned char *q = *p;
    if (end - q < 5) return 0;
    memcpy(&e->def, q, 4);
    q += 4;
    size_t sl = 0;
    for (int shift = 0;; shift += 7) {
        if (q == end || shift > 14) return 0;
        unsigned char c = *q++;
        sl |= (size_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) break;
    }
    if ((size_t)(end - q) < sl) return 0;
    e->state = (MDB_val){sl, (void *)q};
    *p = q + sl;
    return 1;
}

/* The entry of g in rec (a person's record), kept under g's definition: 1
 * and *state, or 0. */
static int grec_find(const MDB_val *rec, const fld_gfield_t *g, MDB_val *state)
{
    const unsigned char *p = rec->mv_data, *end;
    gent_t e;
    if (rec->mv_size < 1 || p[0] != GREC_VERSION) return 0;
    end = p + rec->mv_size;
    for (p++; gent_next(&p, end, &e);)
        if (e.def == g->def) {
            *state = e.state;
            return 1;
        }
    return 0;
}

static int grec_entry(sl_buf_t *out, uint32_t def, const void *state, size_t n)
{
    if (n >= 1u << 21) return SL_ETOOBIG; /* bounded far below it: FLD_MAX_BUCKETS, FLD_MAX_VALUES */
    unsigned char h[14];
    memcpy(h, &def, 4);
    size_t k = 4 + fld_varint(h + 4, n);
    return sl_buf_append(out, h, k) || sl_buf_append(out, state, n) ? SL_ENOMEM : 0;
}

/* person's record (the person's attachment, sl_stitch.h), copied into out
 * (empty: none, or no such person) */
static int grec_copy(int rc, const MDB_val *v, sl_buf_t *out)
{
    out->len = 0;
    if (rc == SL_ENOTFOUND) return 0;
    return rc ? rc : sl_buf_append(out, v->mv_data, v->mv_size) ? SL_ENOMEM : 0;
}

int fld_grec_get(sl_fields_t *f, MDB_txn *txn, uint64_t person, sl_buf_t *out)
{
    MDB_val v;
    return grec_copy(sl_stitch_attach_get(f->stitch, txn, person, SL_ATTACH_FIELDS, &v), &v, out);
}

/* the same in a merge: a person absorbed earlier in the event is found too */
static int grec_step_get(sl_fields_t *f, MDB_txn *txn, uint64_t person, sl_buf_t *out)
{
    MDB_val v;
    return grec_copy(sl_stitch_attach_step_get(f->stitch, txn, person, SL_ATTACH_FIELDS, &v), &v, out);
}

int fld_gstate_from(const MDB_val *rec, const fld_gfield_t *g, fld_gstate_t *s, int *found)
{
    MDB_val st;
    *found = 0;
    if (rec->mv_size && grec_find(rec, g, &st)) {
        int rc = fld_gstate_decode(&st, s);
        if (rc == 0 && s->f.type == g->type) {
            *found = 1;
            return 0;
        }
        if (rc && rc != MDB_CORRUPTED) return rc;
    }
    fld_gstate_init(s, g); /* none, another type (the field changed), or unreadable: afresh */
    return 0;
}

static int gstate_load(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_gfield_t *g, fld_gstate_t *s,
                       sl_buf_t *k, int *found)
{
    int rc = fld_grec_get(f, txn, person, k);
    MDB_val rec = {k->len, k->data};
    return rc ? rc : fld_gstate_from(&rec, g, s, found);
}

/* Writes person's record: the entries of old (a copy) for fields still
 * configured, with those in repl[0..n) (names) replaced by states[i]
 * (encoded), the rest of repl appended. */
int fld_grec_put(sl_fields_t *f, MDB_txn *txn, uint64_t person, const sl_buf_t *old, const fld_gfield_t *const *repl,
                    const sl_buf_t *states, size_t n)
{
    const fld_conf_t *c = conf(f);
    sl_buf_t *out = &f->grec_out;
    out->len = 0;
    uint8_t ver = GREC_VERSION;
    int rc = sl_buf_append(out, &ver, 1);
    uint64_t done = 0;
    /* (no record yet: old->data may be NULL, no arithmetic on it) */
    const unsigned char *p = old->len && (unsigned char)old->data[0] == GREC_VERSION ? (const unsigned char *)old->data + 1 : NULL;
    const unsigned char *end = p ? (const unsigned char *)old->data + old->len : NULL;
    gent_t e;
    while (rc == 0 && p && gent_next(&p, end, &e)) {
        size_t i = 0;
        while (i < n && repl[i]->def != e.def) i++;
        if (i < n) {
            rc = grec_entry(out, e.def, states[i].data, states[i].len);
            done |= 1ULL << i;
        } else {
            int kept = 0; /* a field no longer configured (or its old definition) is dropped */
            for (size_t g = 0; g < c->n_gfields && !kept; g++) kept = c->gfields[g].def == e.def;
            if (kept) rc = grec_entry(out, e.def, e.state.mv_data, e.state.mv_size);
        }
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!(done >> i & 1)) rc = grec_entry(out, repl[i]->def, states[i].data, states[i].len);
    if (rc == 0) rc = sl_stitch_attach_put(f->stitch, txn, person, SL_ATTACH_FIELDS, out->data, out->len);
    return rc == SL_ENOTFOUND ? 0 : rc; /* no such person (erased): nothing to keep */
}

int fld_gstate_read(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_gfield_t *g, fld_gstate_t *s, int *found)
{
    sl_buf_t k = {0};
    int rc = gstate_load(f, txn, person, g, s, &k, found);
    sl_buf_free(&k);
    return rc;
}

static int gstate_save(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_gfield_t *g, const fld_gstate_t *s)
{
    int rc = fld_grec_get(f, txn, person, &f->grec_old);
    if (rc == 0) rc = fld_gstate_encode(s, &f->gstates[0]);
    return rc ? rc : fld_grec_put(f, txn, person, &f->grec_old, &g, f->gstates, 1);
}

int fld_gvalues(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now, fld_gstate_t *scratch, sl_buf_t *gv)
{
    const fld_conf_t *c = conf(f);
    sl_buf_t k = {0};
    int rc = f->have_dbs ? fld_grec_get(f, txn, person, &k) : 0, found;
    MDB_val rec = {k.len, k.data};
    for (size_t i = 0; i < c->n_gfields && rc == 0; i++) {
        gv[i].len = 0;
        if (c->gfields[i].type == FG_LABEL) continue;
        if ((rc = fld_gstate_from(&rec, &c->gfields[i], scratch, &found)) == 0)
            rc = fld_gstate_value(&c->gfields[i], scratch, now, &gv[i]);
    }
    sl_buf_free(&k);
    return rc;
}

static int flatten(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_sum_t *s, int64_t now, fld_flat_t *out)
{
    fld_windows_t w;
    int rc = fld_windows(f, txn, person, now, &w);
    if (rc == 0 && conf(f)->n_gfields) rc = fld_gvalues(f, txn, person, now, f->gs, f->gvals);
    return rc ? rc : fld_flatten(conf(f), s, &w, f->gvals, now, out);
}

/* Puts s in the RFM segment it is in at now, and sets the timer for when
 * its recency score next moves. */
static int rfm_settle(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_sum_t *s, int64_t now)
{
    const fld_conf_t *c = conf(f);
    if (!c->commerce) return 0;
    fld_rfm_t r = fld_rfm(c, s, now);
    if (r.seg != s->f.seg) {
        s->f.prev_seg = s->f.seg;
        s->f.seg = r.seg;
        s->f.seg_since_ms = now;
    }
    s->f.r = (uint8_t)r.r, s->f.f = (uint8_t)r.f, s->f.m = (uint8_t)r.m;
    if (!f->watch.rfm) return 0; /* nobody hears of its moves: reads compute it against their clock */
    int64_t next = fld_rfm_next(c, s, now);
    if (next == INT64_MAX || next == s->f.timer_ms) return 0;
    s->f.timer_ms = next;
    sl_entity_t who = {SL_ENTITY_PERSON, person};
    return sl_stage_timer_set(f->stage, txn, f->step.name, next, who, "rfm", 3);
}

/* What time alone moved since the summary was saved (a recency score
 * crossed a threshold the timer has not reached yet, or just reached):
 * told as reason "timer" changes, the summary settled. *moved 1 if so. */
static int catch_up(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_sum_t *s, int64_t now, cJSON **list,
                    int *moved)
{
    const fld_conf_t *c = conf(f);
    *moved = 0;
    if (!c->commerce || s->f.orders == 0 || !f->watch.rfm) return 0;
    fld_rfm_t r = fld_rfm(c, s, now);
    if (r.seg == s->f.seg && r.r == s->f.r && r.f == s->f.f && r.m == s->f.m) return 0;
    char o[32], n[32];
    int rc = 0;
    const int olds[3] = {s->f.r, s->f.f, s->f.m}, news[3] = {r.r, r.f, r.m};
    static const char *const names[3] = {"rfm.r", "rfm.f", "rfm.m"};
    for (int i = 0; i < 3 && rc == 0; i++) {
        if (olds[i] == news[i]) continue;
        int ol = olds[i] ? snprintf(o, sizeof(o), "%d", olds[i]) : snprintf(o, sizeof(o), "null");
        int nl = snprintf(n, sizeof(n), "%d", news[i]);
        rc = change_add(list, names[i], o, (size_t)ol, n, (size_t)nl, "timer");
    }
    if (rc == 0 && r.seg != s->f.seg) {
        sl_buf_t a = {0}, b = {0};
        const char *on = fld_segment_name(c, s->f.seg), *nn = fld_segment_name(c, r.seg);
        if (on) sl_buf_append_json_str(&a, on, strlen(on));
        else sl_buf_appends(&a, "null");
        if (nn) sl_buf_append_json_str(&b, nn, strlen(nn));
        else sl_buf_appends(&b, "null");
        rc = a.data && b.data ? change_add(list, "rfm.segment", a.data, a.len, b.data, b.len, "timer") : SL_ENOMEM;
        sl_buf_free(&a);
        sl_buf_free(&b);
    }
    if (rc) return rc;
    *moved = 1;
    return rfm_settle(f, txn, person, s, now);
}

/* Runs listeners on what is in f->tchanges (then emptied). */
static int tell(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now)
{
    int rc = 0;
    if (f->tchanges && cJSON_GetArraySize(f->tchanges) > 0 && !f->quiet) /* an import's changes fire nothing */
        for (size_t i = 0; i < f->n_listeners && rc == 0; i++)
            rc = f->listeners[i].changed(f->listeners[i].arg, txn, person, f->tchanges, now);
    cJSON_Delete(f->tchanges);
    f->tchanges = NULL;
    return rc;
}

/* Begins a change of person's summary (loaded into *s): time's moves are
 * told first, then the flat values before the change are kept. */
static int change_begin(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_sum_t *s, int64_t now, cJSON **list,
                        int *found)
{
    int moved, rc = fld_sum_load(f, txn, person, s, found);
    if (rc == 0 && *found) rc = catch_up(f, txn, person, s, now, list, &moved);
    if (rc == 0 && f->watch.any) rc = flatten(f, txn, person, s, now, &f->fl_old);
    return rc;
}

/* Ends it: settles RFM, saves, and adds what changed to list. */
static int change_end(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_sum_t *s, int64_t now, cJSON **list,
                      const char *reason)
{
    int rc = rfm_settle(f, txn, person, s, now);
    if (rc == 0) rc = sum_save(f, txn, person, s);
    if (rc == 0 && f->watch.any && (rc = flatten(f, txn, person, s, now, &f->fl_new)) == 0)
        rc = diff(f, list, reason);
    return rc;
}

/* ---- reading an order event ---- */

static double rate_of(const fld_conf_t *c, const char *cur, int *known)
{
    *known = 1;
    if (c->currency == NULL || cur == NULL || strcmp(cur, c->currency) == 0) return 1;
    for (size_t i = 0; i < c->n_fx; i++)
        if (strcmp(c->fx[i].code, cur) == 0) return c->fx[i].rate;
    *known = 0;
    return 0;
}

/* an amount member: 1 and *out when it is a usable number, 0 when absent;
 * an unusable one is counted and reads as absent with *bad set */
static int amount(sl_fields_t *f, sl_jval_t props, const char *name, double *out, int *bad)
{
    double d;
    if (!sl_jnum(sl_jget(props, name), &d)) return 0;
    if (!sl_amount_ok(d)) {
        *bad = 1;
        return 0;
    }
    *out = d;
    (void)f;
    return 1;
}

/* the order's key: 'o' + properties.order_id (a string or a number as
 * written), else 'm' + the messageId; cut at SL_FIELDS_ORDER_KEY_MAX bytes,
 * before a character the cut would split (the id is valid UTF-8: the
 * collector checks it; half a character would make the orders route's
 * answer invalid) */
static int order_key(sl_fields_t *f, const sl_stage_event_t *ev, sl_jval_t props, int by_msgid_ok, int *by_msgid)
{
    return fld_order_key(props, ev->message_id, by_msgid_ok, &f->k, &f->arena, by_msgid);
}

int fld_order_key(sl_jval_t props, const char *message_id, int by_msgid_ok, sl_buf_t *k, sl_arena_t *a, int *by_msgid)
{
    k->len = 0;
    sl_jval_t id = sl_jget(props, "order_id");
    const char *s = NULL;
    size_t n = 0;
    if (sl_jtype(id) == SL_JSTR) s = sl_jstr(id, a, &n);
    else if (sl_jtype(id) == SL_JNUM) s = id.p, n = id.n;
    *by_msgid = 0;
    if (s == NULL || n == 0) {
        if (!by_msgid_ok || message_id == NULL || message_id[0] == '\0') return SL_ENOTFOUND;
        s = message_id, n = strlen(s);
        *by_msgid = 1;
    }
    if (n > SL_FIELDS_ORDER_KEY_MAX) { /* cut between two characters: the orders route prints the key */
        n = SL_FIELDS_ORDER_KEY_MAX;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    }
    char tag = *by_msgid ? 'm' : 'o';
    return sl_buf_append(k, &tag, 1) || sl_buf_append(k, s, n) ? SL_ENOMEM : 0;
}

/* categories: the order's `category` and each product's, trimmed and
 * lower-cased, distinct, at most SL_FIELDS_ORDER_CATS */
static void add_cat(sl_fields_t *f, fld_order_t *o, sl_jval_t v)
{
    size_t n;
    const char *s = sl_jstr(v, &f->arena, &n);
    if (s == NULL || o->f.n_cats >= SL_FIELDS_ORDER_CATS || strlen(s) != n) return;
    n = sl_ident_trim(&s, n);
    if (n == 0) return;
    const char *low = sl_ident_lower(s, n, &f->arena);
    if (low == NULL) return;
    size_t l = strlen(low);
    if (l > SL_FIELDS_CAT_BYTES) { /* cut between two characters */
        l = SL_FIELDS_CAT_BYTES;
        while (l > 0 && ((unsigned char)low[l] & 0xC0) == 0x80) l--;
    }
    for (size_t i = 0; i < o->f.n_cats; i++)
        if (strlen(o->cats[i]) == l && memcmp(o->cats[i], low, l) == 0) return;
    memcpy(o->cats[o->f.n_cats], low, l);
    o->cats[o->f.n_cats++][l] = '\0';
}

static void read_order(sl_fields_t *f, const sl_stage_event_t *ev, sl_jval_t props, uint64_t person, fld_order_t *o)
{
    const fld_conf_t *c = conf(f);
    o->f.flags |= FO_PLACED;
    o->f.person = o->f.origin = person;
    o->f.seq = ev->seq;
    /* the summary's dates take 0 for none: an order dated 1970-01-01T00:00Z
     * or before (a timestamp the collector accepts, years 0000 to 1969)
     * would be no first order, and never the last; it is taken as at the
     * epoch's first millisecond */
    o->f.ts_ms = ev->ctx->ts_ms > 0 ? ev->ctx->ts_ms : 1;
    const char *cur = sl_jstr(sl_jget(props, "currency"), &f->arena, NULL);
    memset(o->f.currency, 0, sizeof(o->f.currency));
    if (cur && strlen(cur) < sizeof(o->f.currency)) memcpy(o->f.currency, cur, strlen(cur));
    else cur = NULL;
    int bad = 0, known;
    double rev = 0, total = 0, tax = 0, ship = 0;
    int have_rev = amount(f, props, "revenue", &rev, &bad);
    int have_total = amount(f, props, "total", &total, &bad);
    amount(f, props, "tax", &tax, &bad);
    amount(f, props, "shipping", &ship, &bad);
    if (!have_rev && have_total) rev = total - tax - ship;
    if (!have_total) total = rev;
    /* an order is paid, it does not pay: a negative revenue or total (sent,
     * or tax and shipping beyond the total) is no amount either */
    if (rev < 0 || total < 0) bad = 1;
    double rate = rate_of(c, cur, &known);
    if (bad) f->pend.amounts_ignored++;
    if (!known) f->pend.unknown_currency++;
    if (known && !bad && sl_amount_ok(rev * rate) && sl_amount_ok(total * rate)) {
        o->f.flags |= FO_REV_KNOWN;
        o->f.revenue = rev * rate;
        o->f.total = total * rate;
    }
    double disc = 0;
    size_t cl = 0;
    const char *coupon = sl_jstr(sl_jget(props, "coupon"), &f->arena, &cl);
    if ((coupon && cl > 0) || (amount(f, props, "discount", &disc, &bad) && disc > 0)) o->f.flags |= FO_PROMO;
    o->f.n_cats = 0;
    add_cat(f, o, sl_jget(props, "category"));
    sl_jiter_t it;
    sl_jval_t key, prod;
    sl_jiter(sl_jget(props, "products"), &it);
    while (sl_jnext(&it, &key, &prod)) add_cat(f, o, sl_jget(prod, "category"));
}

/* the refunds so far: a whole-order one, or their sum past the total, make it refunded */
static void settle_refunds(fld_order_t *o)
{
    if (!(o->f.flags & FO_PLACED)) return;
    int full = 0;
    for (size_t i = 0; i < o->f.n_refunds; i++) full |= isnan(o->refunds[i].amount);
    if (full || (o->f.total > 0 && o->f.refunded >= o->f.total - 0.005)) o->f.flags |= FO_REFUNDED;
}

static int ledger_get(sl_fields_t *f, MDB_txn *txn, fld_order_t *o, int *found)
{
    MDB_val k = {f->k.len, f->k.data}, v;
    int rc = mdb_get(txn, f->ledger, &k, &v);
    *found = rc == 0;
    if (rc == MDB_NOTFOUND) {
        memset(&o->f, 0, sizeof(o->f));
        return 0;
    }
    return rc ? rc : fld_order_decode(&v, o);
}

static int ledger_put(sl_fields_t *f, MDB_txn *txn, const fld_order_t *o)
{
    int rc = fld_order_encode(o, &f->v);
    MDB_val k = {f->k.len, f->k.data}, v = {f->v.len, f->v.data};
    return rc ? rc : mdb_put(txn, f->ledger, &k, &v, 0);
}

/* the list a change of person goes to: the event's (person is its entity)
 * or the listeners' */
static cJSON **list_for(sl_fields_t *f, const sl_stage_event_t *ev, uint64_t person)
{
    return ev && ev->ctx->entity.kind == SL_ENTITY_PERSON && ev->ctx->entity.id == person ? &f->changes : &f->tchanges;
}

static int on_order(sl_fields_t *f, MDB_txn *txn, const sl_stage_event_t *ev, sl_jval_t props, uint64_t person,
                    int64_t now)
{
    int by_msgid, found, rc = order_key(f, ev, props, 1, &by_msgid);
    if (rc) return rc == SL_ENOTFOUND ? 0 : rc;
    fld_order_t *o = &f->ord;
    if ((rc = ledger_get(f, txn, o, &found))) return rc;
    if (found && (o->f.flags & FO_PLACED)) { /* a copy: the first one wins */
        o->f.duplicates++;
        f->pend.duplicates++;
        return ledger_put(f, txn, o);
    }
    read_order(f, ev, props, person, o);
    if (by_msgid) o->f.flags |= FO_BY_MSGID;
    settle_refunds(o); /* refunds that came first */
    f->pend.orders++;
    MDB_val okey = {f->k.len, f->k.data};
    cJSON **list = list_for(f, ev, person);
    fld_sum_t *s = f->sum;
    if ((rc = ledger_put(f, txn, o)) || (rc = change_begin(f, txn, person, s, now, list, &found))) return rc;
    if ((rc = porder_put(f, txn, person, o, &okey))) return rc;
    fld_sum_order(s, o, 1, conf(f)->max_categories);
    if ((rc = change_end(f, txn, person, s, now, list, "event"))) return rc;
    return list == &f->tchanges ? tell(f, txn, person, now) : 0;
}

static int on_refund(sl_fields_t *f, MDB_txn *txn, const sl_stage_event_t *ev, sl_jval_t props, int64_t now)
{
    int by_msgid, found, rc = order_key(f, ev, props, 0, &by_msgid);
    if (rc) { /* no order_id: nothing to refund */
        if (rc == SL_ENOTFOUND) f->pend.refunds_unmatched++;
        return rc == SL_ENOTFOUND ? 0 : rc;
    }
    fld_order_t *o = &f->ord;
    if ((rc = ledger_get(f, txn, o, &found))) return rc;
    f->pend.refunds++;
    int bad = 0, known;
    double amt = NAN, a;
    if (amount(f, props, "total", &a, &bad) || amount(f, props, "revenue", &a, &bad)) {
        const char *cur = sl_jstr(sl_jget(props, "currency"), &f->arena, NULL);
        if (cur == NULL && o->f.currency[0]) cur = o->f.currency;
        double rate = rate_of(conf(f), cur, &known);
        if (known && sl_amount_ok(a * rate)) amt = a * rate;
        else if (!known) f->pend.unknown_currency++; /* refunded as a whole order */
    }
    if (bad) f->pend.amounts_ignored++;
    if (!isnan(amt) && amt <= 0) return 0; /* refunds nothing */
    double old_net = fld_order_net(o);
    uint8_t old_flags = o->f.flags;
    if (o->f.n_refunds < SL_FIELDS_ORDER_REFUNDS)
        o->refunds[o->f.n_refunds++] = (fld_refund_t){ev->ctx->ts_ms, amt, ev->seq};
    /* at most SL_AMOUNT_MAX, as every total is: refunds summing past it
     * refund any order (skipping the one that crosses it would leave the
     * order short of its total for good) */
    if (!isnan(amt)) o->f.refunded = fmin(o->f.refunded + amt, SL_AMOUNT_MAX);
    settle_refunds(o);
    if (!(o->f.flags & FO_PLACED)) { /* before its order: kept for it */
        f->pend.refunds_unmatched++;
        return ledger_put(f, txn, o);
    }
    if ((rc = ledger_put(f, txn, o))) return rc;
    if (old_flags & FO_REFUNDED) return 0; /* refunded already: no figure moves */
    uint64_t person = o->f.person;
    MDB_val okey = {f->k.len, f->k.data};
    if ((rc = porder_put(f, txn, person, o, &okey))) return rc;
    cJSON **list = list_for(f, ev, person);
    fld_sum_t *s = f->sum;
    if ((rc = change_begin(f, txn, person, s, now, list, &found))) return rc;
    if (o->f.flags & FO_REFUNDED) {
        /* out of every figure: dates and categories are recomputed */
        if ((rc = sum_recompute(f, txn, person, s, &f->ord))) return rc;
    } else {
        s->f.revenue += fld_order_net(o) - old_net;
        if (s->f.revenue < 0) s->f.revenue = 0;
    }
    if ((rc = change_end(f, txn, person, s, now, list, "event"))) return rc;
    return list == &f->tchanges ? tell(f, txn, person, now) : 0;
}

/* ---- merges ---- */

typedef struct {
    sl_fields_t *f;
    MDB_txn *txn;
    uint64_t survivor;
    sl_buf_t keys;     /* the absorbed person's porders keys, each as u32 length then bytes */
} move_t;

static int collect_key(void *arg, const MDB_val *pkey, const fld_porder_t *po, const fld_order_t *o)
{
    (void)po, (void)o;
    move_t *m = arg;
    uint32_t n = (uint32_t)pkey->mv_size;
    return sl_buf_append(&m->keys, &n, 4) || sl_buf_append(&m->keys, pkey->mv_data, n) ? SL_ENOMEM : 0;
}

static const fld_gfield_t *gfield_named(const fld_conf_t *c, const char *name, size_t n)
{
    for (size_t i = 0; i < c->n_gfields; i++)
        if (strlen(c->gfields[i].name) == n && memcmp(c->gfields[i].name, name, n) == 0) return &c->gfields[i];
    return NULL;
}

/* After s changed at now: windows pruned, and for a tracked field the value
 * told kept and the window's timer set for when time alone next moves it
 * (the caller saves s). */
int fld_gstate_settle(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_gfield_t *g, fld_gstate_t *s,
                         int64_t now)
{
    fld_gstate_prune(g, s, now);
    if (g->window_ms && g_watched(f, (size_t)(g - conf(f)->gfields))) {
        f->v.len = 0;
        int rc = fld_gstate_value(g, s, now, &f->v);
        if (rc) return rc;
        s->f.told_len = f->v.len < sizeof(s->told) ? (uint32_t)f->v.len : 0;
        memcpy(s->told, f->v.data, s->f.told_len);
        int64_t next = fld_gstate_next(g, s, now);
        if (next != INT64_MAX && next != s->f.timer_ms) {
            char name[FLD_NAME_MAX + 3];
            int n = snprintf(name, sizeof(name), "g:%s", g->name);
            s->f.timer_ms = next;
            if ((rc = sl_stage_timer_set(f->stage, txn, f->step.name, next, (sl_entity_t){SL_ENTITY_PERSON, person},
                                         name, (size_t)n)))
                return rc;
        }
    }
    return 0;
}

static int merge(sl_fields_t *f, MDB_txn *txn, uint64_t survivor, uint64_t absorbed, cJSON **list, int64_t now)
{
    fld_sum_t *sx = f->sum2, *s = f->sum;
    sl_buf_t gk = {0}; /* the absorbed person's generic fields */
    move_t m = {f, txn, survivor, {0}};
    int found, sfound, rc = fld_sum_load(f, txn, absorbed, sx, &found);
    if (rc == 0) rc = grec_step_get(f, txn, absorbed, &gk); /* its record is gone: the stitcher kept them */
    if (rc || (!found && gk.len == 0)) goto out; /* nothing computed of it: nothing to join */
    if ((rc = change_begin(f, txn, survivor, s, now, list, &sfound))) goto out;
    if (found && (rc = fld_each_order(f, txn, absorbed, NULL, collect_key, &m))) goto out;
    /* the orders become the survivor's (who placed them stays in origin) */
    for (size_t off = 0; off + 4 <= m.keys.len && rc == 0;) {
        uint32_t n;
        memcpy(&n, m.keys.data + off, 4);
        const char *pk = m.keys.data + off + 4;
        off += 4 + n;
        MDB_val okey = {n - FLD_PORDER_PREFIX, (char *)pk + FLD_PORDER_PREFIX}, ov, pkv = {n, (char *)pk};
        f->k.len = 0;
        if (sl_buf_append(&f->k, okey.mv_data, okey.mv_size)) rc = SL_ENOMEM;
        if (rc == 0) rc = mdb_get(txn, f->ledger, &okey, &ov);
        if (rc == 0) rc = fld_order_decode(&ov, &f->ord);
        if (rc) break;
        f->ord.f.person = survivor;
        MDB_val ok2 = {f->k.len, f->k.data};
        if ((rc = ledger_put(f, txn, &f->ord)) || (rc = mdb_del(txn, f->porders, &pkv, NULL)) ||
            (rc = porder_put(f, txn, survivor, &f->ord, &ok2)))
            break;
    }
    if (rc) goto out;
    if (found) {
        MDB_val k = {8, &absorbed};
        if ((rc = mdb_del(txn, f->fstate, &k, NULL))) goto out;
        fld_sum_merge(s, sx, conf(f)->max_categories);
    }
    /* the generic fields' states join the survivor's, field by field, in one record */
    if (gk.len) {
        const fld_conf_t *c = conf(f);
        const fld_gfield_t *repl[FLD_MAX_GFIELDS];
        size_t n = 0;
        MDB_val arec = {gk.len, gk.data}, srec;
        if ((rc = grec_step_get(f, txn, survivor, &f->grec_old))) goto out;
        srec = (MDB_val){f->grec_old.len, f->grec_old.data};
        for (size_t i = 0; i < c->n_gfields && rc == 0; i++) {
            const fld_gfield_t *g = &c->gfields[i];
            int afound;
            if (g->type == FG_LABEL || (rc = fld_gstate_from(&arec, g, f->gs2, &afound)) || !afound) continue;
            if ((rc = fld_gstate_from(&srec, g, f->gs, &sfound))) break;
            fld_gstate_merge(g, f->gs, f->gs2);
            if ((rc = fld_gstate_settle(f, txn, survivor, g, f->gs, now)) == 0 &&
                (rc = fld_gstate_encode(f->gs, &f->gstates[n])) == 0)
                repl[n++] = g;
        }
        if (rc == 0 && n) rc = fld_grec_put(f, txn, survivor, &f->grec_old, repl, f->gstates, n);
    }
    if (rc == 0) rc = change_end(f, txn, survivor, s, now, list, "merge");
out:
    sl_buf_free(&m.keys);
    sl_buf_free(&gk);
    return rc;
}

/* The event for the generic fields of person: each field it matches takes
 * it; the changes go to list. */
static int on_generic(sl_fields_t *f, MDB_txn *txn, const sl_stage_event_t *ev, const char *kind, size_t kn,
                      uint64_t person, int64_t now)
{
    const fld_conf_t *c = conf(f);
    uint64_t hit = 0;
    double pts[FLD_MAX_GFIELDS];
    for (size_t i = 0; i < c->n_gfields; i++)
        if (c->gfields[i].type != FG_LABEL && fld_gfield_matches(&c->gfields[i], kind, kn, ev, now, &pts[i]))
            hit |= 1ULL << i;
    if (!hit) return 0;
    /* A change of these fields is told only when a listener watches one.
     * A watched label reads every other value: the whole flat list is
     * compared then; else each watched field's value before and after. */
    int labels = f->watch.labels;
    cJSON **list = list_for(f, ev, person);
    int found, rc = labels ? change_begin(f, txn, person, f->sum, now, list, &found) : 0;
    if (rc == 0) rc = grec_step_get(f, txn, person, &f->grec_old); /* (the event's person: no descent) */
    MDB_val rec = {f->grec_old.len, f->grec_old.data};
    const fld_gfield_t *repl[FLD_MAX_GFIELDS];
    size_t n = 0;
    for (size_t i = 0; i < c->n_gfields && rc == 0; i++) {
        if (!(hit >> i & 1)) continue;
        const fld_gfield_t *g = &c->gfields[i];
        int watched = !labels && (f->watch.gmask >> i & 1) && !f->bf[i].on; /* quiet while it backfills */
        if ((rc = fld_gstate_from(&rec, g, f->gs, &found))) break;
        f->vold.len = 0; /* (f->v: the settle's) */
        if (watched && (rc = fld_gstate_value(g, f->gs, now, &f->vold))) break;
        if (!fld_gstate_apply(g, f->gs, ev, pts[i], now)) continue;
        if ((rc = fld_gstate_settle(f, txn, person, g, f->gs, now)) || (rc = fld_gstate_encode(f->gs, &f->gstates[n]))) break;
        repl[n++] = g;
        if (watched) {
            f->k2.len = 0;
            if ((rc = fld_gstate_value(g, f->gs, now, &f->k2))) break;
            if ((f->vold.len != f->k2.len || memcmp(f->vold.data, f->k2.data, f->vold.len) != 0) &&
                (rc = change_add(list, g->name, f->vold.data, f->vold.len, f->k2.data, f->k2.len, "event")))
                break;
        }
    }
    if (rc == 0 && n) rc = fld_grec_put(f, txn, person, &f->grec_old, repl, f->gstates, n);
    if (rc == 0 && list == &f->tchanges) rc = tell(f, txn, person, now);
    return rc || !labels ? rc : change_end(f, txn, person, f->sum, now, list, "event");
}

const char *fld_event_kind(const sl_jindex_t *top, sl_arena_t *a, size_t *len)
{
    int track = sl_jstr_eq(sl_jindex_get(top, "type"), "track", 5);
    return sl_jstr(sl_jindex_get(top, track ? "event" : "type"), a, len);
}

int fld_replay_event(fld_replay_t *r, const char *json, size_t len, uint64_t seq, sl_arena_t *a)
{
    size_t tl;
    memset(&r->ctx, 0, sizeof(r->ctx));
    r->ev = (sl_stage_event_t){.seq = seq, .json = json, .len = len, .top = &r->top, .context = &r->context,
                               .message_id = "", .ctx = &r->ctx};
    r->ev.root = sl_jroot_index(json, len, &r->top, "context", &r->context);
    if (sl_jtype(r->ev.root) != SL_JOBJ) return SL_EINVAL;
    r->kind = fld_event_kind(&r->top, a, &r->kind_len);
    const char *ts = sl_jstr(sl_jindex_get(&r->top, "timestamp"), a, &tl);
    return r->kind && ts && sl_time_parse_iso(ts, tl, &r->ctx.ts_ms) == 0 ? 0 : SL_EINVAL;
}

/* ---- the step ---- */

/* A store written before the generic fields became person attachments
 * kept them in a database of their own, "gfields": it goes, and every
 * field is backfilled from the log (its definition is forgotten, so the
 * plan finds it new). */
static int drop_old_records(sl_fields_t *f, MDB_txn *txn)
{
    MDB_dbi old;
    int rc = mdb_dbi_open(txn, "gfields", MDB_INTEGERKEY, &old);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc || (rc = mdb_drop(txn, old, 1))) return rc;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, f->fmeta, &cur))) return rc;
    for (;;) {
        MDB_val k = {4, "def:"}, v;
        if ((rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)) || k.mv_size < 4 || memcmp(k.mv_data, "def:", 4) != 0 ||
            (rc = mdb_cursor_del(cur, 0)))
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int on_open(void *arg, MDB_txn *txn, int read_only)
{
    sl_fields_t *f = arg;
    unsigned c = read_only ? 0 : MDB_CREATE;
    int rc = mdb_dbi_open(txn, "ledger", c, &f->ledger);
    if (rc == MDB_NOTFOUND && read_only) return 0; /* a store from before the ledger: nothing to read */
    if (rc || (rc = mdb_dbi_open(txn, "porders", c, &f->porders)) ||
        (rc = mdb_dbi_open(txn, "fstate", c | MDB_INTEGERKEY, &f->fstate)))
        return rc;
    if ((rc = mdb_dbi_open(txn, "fmeta", c, &f->fmeta)) == MDB_NOTFOUND && read_only) f->fmeta = 0;
    else if (rc) return rc;
    if (!read_only && ((rc = drop_old_records(f, txn)) || (rc = fld_backfill_plan(f, txn)))) return rc;
    memcpy(f->bf_committed, f->bf, sizeof(f->bf));
    f->have_dbs = 1;
    return 0;
}

static int on_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    sl_fields_t *f = arg;
    sl_stage_ctx_t *x = ev->ctx;
    cJSON_Delete(f->changes);
    f->changes = NULL;
    x->computed_changes = NULL;
    f->quiet = x->historical;
    fld_watch_update(f);
    sl_arena_reset(&f->arena);
    int64_t now = sl_now_ms();
    int rc = 0;
    for (size_t i = 0; i < x->n_merges && rc == 0; i++) {
        uint64_t sv = x->merge_survivor[i];
        rc = merge(f, txn, sv, x->merge_absorbed[i], list_for(f, ev, sv), now);
        if (rc == 0 && f->tchanges) rc = tell(f, txn, sv, now);
    }
    /* the event's kind, decoded once: a track's name (orders, refunds) or its type */
    size_t n = 0;
    const char *name = x->entity.kind == SL_ENTITY_PERSON ? fld_event_kind(ev->top, &f->arena, &n) : NULL;
    if (rc == 0 && name && sl_jstr_eq(sl_jindex_get(ev->top, "type"), "track", 5)) {
        const fld_conf_t *c = conf(f);
        if (fld_name_in(c->order_events, c->n_order_events, name, n))
            rc = on_order(f, txn, ev, sl_jindex_get(ev->top, "properties"), x->entity.id, now);
        else if (fld_name_in(c->refund_events, c->n_refund_events, name, n)) {
            /* a browser key is public: from it, a refund would let anyone take anyone's order
             * out of their figures by its order_id, and fill the ledger with refunds waiting
             * for orders that never come. Only a trusted (server-side) source refunds. */
            if (x->trusted) rc = on_refund(f, txn, ev, sl_jindex_get(ev->top, "properties"), now);
            else f->pend.refunds_untrusted++;
        }
    }
    if (rc == 0 && name && conf(f)->n_gfields) rc = on_generic(f, txn, ev, name, n, x->entity.id, now);
    x->computed_changes = f->changes;
    f->quiet = 0;
    return rc;
}

/* A window's oldest bucket left it: the value told before and the one
 * now, a change of reason "timer" when they differ. */
static int on_window_timer(sl_fields_t *f, MDB_txn *txn, uint64_t person, const char *name, size_t n, int64_t due,
                           int64_t now)
{
    const fld_gfield_t *g = gfield_named(conf(f), name, n);
    int found;
    if (g == NULL || !g->window_ms) return 0; /* a field no longer configured */
    int rc = gstate_load(f, txn, person, g, f->gs, &f->k, &found);
    if (rc || !found) return rc;
    if (f->gs->f.timer_ms == due) f->gs->f.timer_ms = 0;
    char old[sizeof(f->gs->told)];
    size_t ol = f->gs->f.told_len;
    memcpy(old, f->gs->told, ol);
    if ((rc = fld_gstate_settle(f, txn, person, g, f->gs, now)) || (rc = gstate_save(f, txn, person, g, f->gs))) return rc;
    if (ol == 0 || (f->gs->f.told_len == ol && memcmp(old, f->gs->told, ol) == 0)) return 0;
    if (f->bf[g - conf(f)->gfields].on) return 0; /* quiet while it backfills */
    f->pend.timer_changes++;
    if ((rc = change_add(&f->tchanges, g->name, old, ol, f->gs->told, f->gs->f.told_len, "timer"))) return rc;
    return tell(f, txn, person, now);
}

static int on_timer(void *arg, MDB_txn *txn, sl_entity_t entity, const char *name, size_t name_len, int64_t due,
                    int64_t now)
{
    sl_fields_t *f = arg;
    if (entity.kind != SL_ENTITY_PERSON) return 0;
    fld_watch_update(f);
    f->pend.timers++;
    if (now > due && (uint64_t)(now - due) > f->pend.timer_late_ms_max) f->pend.timer_late_ms_max = (uint64_t)(now - due);
    if (name_len > 2 && memcmp(name, "g:", 2) == 0) return on_window_timer(f, txn, entity.id, name + 2, name_len - 2, due, now);
    fld_sum_t *s = f->sum;
    int found, moved;
    int rc = fld_sum_load(f, txn, entity.id, s, &found);
    if (rc || !found) return rc;
    if (s->f.timer_ms == due) s->f.timer_ms = 0; /* this one ran: the next is set anew */
    if ((rc = catch_up(f, txn, entity.id, s, now, &f->tchanges, &moved))) return rc;
    if (!moved && (rc = rfm_settle(f, txn, entity.id, s, now))) return rc;
    if ((rc = sum_save(f, txn, entity.id, s))) return rc;
    if (moved) f->pend.timer_changes++;
    return tell(f, txn, entity.id, now);
}

static void on_after_txn(void *arg, int ok)
{
    sl_fields_t *f = arg;
    if (ok) {
        atomic_fetch_add(&f->orders, f->pend.orders);
        atomic_fetch_add(&f->duplicates, f->pend.duplicates);
        atomic_fetch_add(&f->refunds, f->pend.refunds);
        atomic_fetch_add(&f->refunds_unmatched, f->pend.refunds_unmatched);
        atomic_fetch_add(&f->unknown_currency, f->pend.unknown_currency);
        atomic_fetch_add(&f->amounts_ignored, f->pend.amounts_ignored);
        atomic_fetch_add(&f->refunds_untrusted, f->pend.refunds_untrusted);
        atomic_fetch_add(&f->timers, f->pend.timers);
        atomic_fetch_add(&f->timer_changes, f->pend.timer_changes);
        if (f->pend.timer_late_ms_max > atomic_load(&f->timer_late_ms_max))
            atomic_store(&f->timer_late_ms_max, f->pend.timer_late_ms_max);
        atomic_fetch_add(&f->backfilled, f->pend.backfilled);
        memcpy(f->bf_committed, f->bf, sizeof(f->bf));
    } else { /* redone: the backfills go back to what is on disk */
        memcpy(f->bf, f->bf_committed, sizeof(f->bf));
        uint64_t mask = 0;
        for (size_t i = 0; i < FLD_MAX_GFIELDS; i++) {
            if (f->bf[i].on) mask |= 1ULL << i;
            atomic_store(&f->bf_next[i], f->bf[i].next);
        }
        atomic_store(&f->bf_mask, mask);
    }
    memset(&f->pend, 0, sizeof(f->pend));
}

/* ---- the stitcher's listener: erasure, profiles, views ---- */

static int forget_one(void *arg, const MDB_val *pkey, const fld_porder_t *po, const fld_order_t *o)
{
    (void)po, (void)o;
    move_t *m = arg;
    return collect_key(m, pkey, NULL, NULL);
}

static int on_forgotten(void *arg, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                        uint64_t *removed)
{
    sl_fields_t *f = arg;
    (void)erased;
    *removed = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        move_t m = {f, txn, 0, {0}};
        rc = fld_each_order(f, txn, persons[i], NULL, forget_one, &m);
        for (size_t off = 0; off + 4 <= m.keys.len && rc == 0;) {
            uint32_t l;
            memcpy(&l, m.keys.data + off, 4);
            MDB_val pk = {l, m.keys.data + off + 4}, ok = {l - FLD_PORDER_PREFIX, m.keys.data + off + 4 + FLD_PORDER_PREFIX};
            off += 4 + l;
            if ((rc = mdb_del(txn, f->porders, &pk, NULL)) == 0 && (rc = mdb_del(txn, f->ledger, &ok, NULL)) == MDB_NOTFOUND)
                rc = 0;
        }
        sl_buf_free(&m.keys);
        MDB_val k = {8, (void *)&persons[i]};
        if (rc == 0 && (rc = mdb_del(txn, f->fstate, &k, NULL)) == MDB_NOTFOUND) rc = 0;
        /* (the generic fields went with the person's record) */
    }
    return rc;
}

/* a reader's summary: heap (it is large), freed by the caller */
static int read_sum(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_sum_t **out)
{
    *out = NULL;
    fld_sum_t *s = malloc(sizeof(*s));
    if (s == NULL) return SL_ENOMEM;
    int found, rc = f->have_dbs ? fld_sum_load(f, txn, person, s, &found) : (fld_sum_init(s), 0);
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

static int on_profile_counters(void *arg, MDB_txn *txn, uint64_t person, sl_buf_t *out)
{
    sl_fields_t *f = arg;
    fld_sum_t *s;
    int rc = read_sum(f, txn, person, &s);
    if (rc) return rc;
    sl_buf_printf(out, ",\"orders\":%u,\"revenue\":", s->f.orders);
    sl_buf_append_amount(out, s->f.revenue);
    free(s);
    return out->data ? 0 : SL_ENOMEM;
}

static int on_profile_extra(void *arg, MDB_txn *txn, uint64_t person, sl_buf_t *out)
{
    sl_fields_t *f = arg;
    fld_sum_t *s;
    int rc = read_sum(f, txn, person, &s);
    if (rc) return rc;
    const char *cur = conf(f)->currency ? conf(f)->currency : s->f.currency[0] ? s->f.currency : NULL;
    sl_buf_appends(out, ",\"currency\":");
    if (cur) sl_buf_append_json_str(out, cur, strnlen(cur, sizeof(s->f.currency)));
    else sl_buf_appends(out, "null");
    free(s);
    sl_buf_appends(out, ",\"computed\":");
    if ((rc = sl_fields_computed(f, txn, person, sl_now_ms(), out))) return rc;
    /* while a field reads the log's past, the profile says which (its value is partial) */
    if (atomic_load(&f->bf_mask) == 0) return 0;
    sl_buf_appends(out, ",\"backfilling\":");
    return sl_fields_backfilling(f, out);
}

static int on_view_extra(void *arg, MDB_txn *txn, uint64_t person, sl_buf_t *out)
{
    sl_buf_appends(out, ",\"computed\":");
    return sl_fields_computed(arg, txn, person, sl_now_ms(), out);
}

/* ---- public ---- */

sl_fields_t *sl_fields_new(const sl_config_t *cfg, sl_stitch_t *stitch)
{
    sl_fields_t *f = calloc(1, sizeof(*f));
    if (f == NULL) return NULL;
    f->sum = malloc(sizeof(*f->sum));
    f->sum2 = malloc(sizeof(*f->sum2));
    f->gs = malloc(sizeof(*f->gs));
    f->gs2 = malloc(sizeof(*f->gs2));
    if (f->sum == NULL || f->sum2 == NULL || f->gs == NULL || f->gs2 == NULL) {
        sl_fields_free(f);
        return NULL;
    }
    f->cfg = cfg;
    f->stitch = stitch;
    sl_arena_init(&f->arena);
    (void)fld_conf(cfg); /* the defaults, made before any thread */
    f->step = (sl_stage_step_t){.name = "fields", .phase = SL_PHASE_FIELDS, .arg = f, .open = on_open,
                                .apply = on_apply, .timer = on_timer, .due = fld_backfill_due, .tick = fld_backfill_tick,
                                .after_txn = on_after_txn};
    f->ilis = (sl_ident_listener_t){.arg = f, .forgotten = on_forgotten, .profile_counters = on_profile_counters,
                                    .profile_extra = on_profile_extra, .view_extra = on_view_extra};
    return f;
}

void sl_fields_free(sl_fields_t *f)
{
    if (f == NULL) return;
    free(f->sum);
    free(f->sum2);
    free(f->gs);
    free(f->gs2);
    for (size_t i = 0; i < FLD_MAX_GFIELDS; i++) {
        sl_buf_free(&f->gvals[i]);
        sl_buf_free(&f->gstates[i]);
    }
    sl_buf_free(&f->grec_old);
    sl_buf_free(&f->vold);
    sl_buf_free(&f->grec_out);
    sl_buf_free(&f->fl_old.scratch);
    sl_buf_free(&f->fl_new.scratch);
    sl_buf_free(&f->k);
    sl_buf_free(&f->k2);
    sl_buf_free(&f->v);
    sl_buf_free(&f->fl_old.text);
    sl_buf_free(&f->fl_new.text);
    cJSON_Delete(f->changes);
    cJSON_Delete(f->tchanges);
    sl_arena_free(&f->arena);
    free(f);
}

int sl_fields_attach(sl_fields_t *f, sl_stage_t *stage)
{
    f->stage = stage;
    int rc = sl_stage_add_step(stage, &f->step);
    return rc ? rc : sl_stitch_listen(f->stitch, &f->ilis);
}

int sl_fields_reload(sl_fields_t *f, MDB_txn *txn, const sl_config_t *cfg)
{
    (void)fld_conf(cfg);
    atomic_store(&f->cfg, cfg);
    f->watch.valid = 0;
    return fld_backfill_plan(f, txn); /* a field added or changed reads the log's past */
}

int sl_fields_backfilling(sl_fields_t *f, sl_buf_t *out)
{
    const fld_conf_t *c = conf(f);
    uint64_t mask = atomic_load(&f->bf_mask);
    int lead = 0;
    sl_buf_appends(out, "[");
    for (size_t i = 0; i < c->n_gfields; i++)
        if (mask >> i & 1) {
            if (lead++) sl_buf_appends(out, ",");
            sl_buf_append_json_str(out, c->gfields[i].name, strlen(c->gfields[i].name));
        }
    return sl_buf_appends(out, "]");
}

int sl_fields_listen(sl_fields_t *f, const sl_fields_listener_t *l)
{
    if (f->n_listeners == FLD_MAX_LISTENERS || l->changed == NULL) return SL_EINVAL;
    f->listeners[f->n_listeners++] = *l;
    return 0;
}

/* A reader's flat list of person at now (its own scratch: any thread). */
int fld_read_flat(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now, fld_flat_t *fl)
{
    const fld_conf_t *c = conf(f);
    fld_sum_t *s;
    fld_windows_t w;
    sl_buf_t gv[FLD_MAX_GFIELDS];
    memset(gv, 0, sizeof(gv));
    memset(&w, 0, sizeof(w));
    fld_gstate_t *gs = c->n_gfields ? malloc(sizeof(*gs)) : NULL;
    int rc = c->n_gfields && gs == NULL ? SL_ENOMEM : read_sum(f, txn, person, &s);
    if (rc) {
        free(gs);
        return rc;
    }
    if (f->have_dbs) rc = fld_windows(f, txn, person, now, &w);
    if (rc == 0 && c->n_gfields) rc = fld_gvalues(f, txn, person, now, gs, gv);
    if (rc == 0) rc = fld_flatten(c, s, &w, gv, now, fl);
    for (size_t i = 0; i < FLD_MAX_GFIELDS; i++) sl_buf_free(&gv[i]);
    free(gs);
    free(s);
    return rc;
}

int sl_fields_computed(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now, sl_buf_t *out)
{
    if (!computing(conf(f))) return sl_buf_appends(out, "{}");
    fld_flat_t fl;
    memset(&fl, 0, sizeof(fl));
    int rc = fld_read_flat(f, txn, person, now, &fl);
    if (rc == 0) rc = fld_flat_object(&fl, out);
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
    return rc;
}

int sl_fields_value(sl_fields_t *f, MDB_txn *txn, uint64_t person, const char *name, int64_t now, sl_buf_t *out)
{
    if (!computing(conf(f))) return sl_buf_appends(out, "null");
    fld_flat_t fl;
    memset(&fl, 0, sizeof(fl));
    int rc = fld_read_flat(f, txn, person, now, &fl);
    if (rc == 0) {
        size_t i = 0;
        while (i < fl.n && strcmp(fl.name[i], name) != 0) i++;
        rc = i < fl.n ? sl_buf_append(out, fl.text.data + fl.off[i], fl.len[i]) : sl_buf_appends(out, "null");
    }
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
    return rc;
}

int sl_fields_values(sl_fields_t *f, MDB_txn *txn, uint64_t person, char *const *names, size_t n, int64_t now,
                     sl_buf_t *out)
{
    fld_flat_t fl;
    memset(&fl, 0, sizeof(fl));
    int rc = computing(conf(f)) ? fld_read_flat(f, txn, person, now, &fl) : 0;
    for (size_t k = 0; rc == 0 && k < n; k++) {
        if (k) sl_buf_appends(out, ",");
        sl_buf_append_json_str(out, names[k], strlen(names[k]));
        sl_buf_appends(out, ":");
        size_t i = 0;
        while (i < fl.n && strcmp(fl.name[i], names[k]) != 0) i++;
        rc = i < fl.n ? sl_buf_append(out, fl.text.data + fl.off[i], fl.len[i]) : sl_buf_appends(out, "null");
    }
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
    return rc;
}

int sl_fields_known(const sl_config_t *cfg, const char *name)
{
    const fld_conf_t *c = fld_conf(cfg);
    if (!computing(c)) return 0;
    fld_sum_t *s = malloc(sizeof(*s));
    fld_flat_t fl;
    memset(&fl, 0, sizeof(fl));
    int hit = 0;
    if (s) {
        fld_sum_init(s);
        if (fld_flatten(c, s, NULL, NULL, 0, &fl) == 0)
            for (size_t i = 0; i < fl.n && !hit; i++) hit = strcmp(fl.name[i], name) == 0;
    }
    free(s);
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
    return hit;
}

void sl_fields_get_stats(const sl_fields_t *f, sl_fields_stats_t *out)
{
    out->orders = atomic_load(&f->orders);
    out->duplicates = atomic_load(&f->duplicates);
    out->refunds = atomic_load(&f->refunds);
    out->refunds_unmatched = atomic_load(&f->refunds_unmatched);
    out->unknown_currency = atomic_load(&f->unknown_currency);
    out->amounts_ignored = atomic_load(&f->amounts_ignored);
    out->refunds_untrusted = atomic_load(&f->refunds_untrusted);
    out->timers = atomic_load(&f->timers);
    out->timer_changes = atomic_load(&f->timer_changes);
    out->timer_late_ms_max = atomic_load(&f->timer_late_ms_max);
    out->backfilled = atomic_load(&f->backfilled);
}

void sl_fields_metrics(void *arg, sl_buf_t *b)
{
    sl_fields_stats_t s;
    sl_fields_get_stats(arg, &s);
    sl_metric_u64(b, "counter", "sillage_orders_total", "Orders entered in the ledger (first copies).", s.orders);
    sl_metric_u64(b, "counter", "sillage_orders_duplicate_total",
                  "Copies of an order already in the ledger (counted on it, their properties ignored).", s.duplicates);
    sl_metric_u64(b, "counter", "sillage_order_refunds_total", "Refund and cancellation events read.", s.refunds);
    sl_metric_u64(b, "counter", "sillage_order_refunds_unmatched_total",
                  "Refunds without an order_id, or before their order (kept for it).", s.refunds_unmatched);
    sl_metric_u64(b, "counter", "sillage_order_refunds_untrusted_total",
                  "Refunds and cancellations sent with a browser (untrusted) write key: ignored.", s.refunds_untrusted);
    sl_metric_u64(b, "counter", "sillage_orders_unknown_currency_total",
                  "Orders (and refunds) in a currency with no fx rate: counted, their amount not.", s.unknown_currency);
    sl_metric_u64(b, "counter", "sillage_order_amounts_ignored_total",
                  "Order revenue or total not counted: negative, not finite or beyond 1e15 in absolute value.", s.amounts_ignored);
    sl_metric_u64(b, "counter", "sillage_computed_timers_total", "Computed-field timers run.", s.timers);
    sl_metric_u64(b, "counter", "sillage_computed_backfilled_events_total",
                  "Events of the log read again for a computed field added or changed (its backfill).", s.backfilled);
    sl_metric_u64(b, "gauge", "sillage_computed_backfilling",
                  "Computed fields reading the log's past now (their changes are not told meanwhile).",
                  (uint64_t)__builtin_popcountll(atomic_load(&((sl_fields_t *)arg)->bf_mask)));
    sl_metric_u64(b, "counter", "sillage_computed_timer_changes_total", "Timers that moved a computed value.",
                  s.timer_changes);
    sl_metric_u64(b, "gauge", "sillage_computed_timer_late_ms_max",
                  "The latest a computed-field timer ran after it was due (ms).", s.timer_late_ms_max);
}
