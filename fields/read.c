/* read.c - the reads of the ledger from any thread: a person's orders for
 * GET /v1/profiles/{kind}/{id}/orders, and `sillage verify`'s check that
 * every summary is what its orders make. */
#include "fields_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *status_of(const fld_order_t *o)
{
    if (o->f.flags & FO_REFUNDED) return "refunded";
    return o->f.refunded > 0 ? "partially_refunded" : "completed";
}

static void append_order(sl_buf_t *out, const fld_order_t *o, const MDB_val *okey, uint64_t person)
{
    const char *id = (const char *)okey->mv_data + 1;
    size_t n = okey->mv_size - 1;
    sl_buf_appends(out, (o->f.flags & FO_BY_MSGID) ? "{\"order_id\":null,\"message_id\":" : "{\"order_id\":");
    sl_buf_append_json_str(out, id, n);
    sl_buf_appends(out, ",\"at\":");
    sl_buf_append_iso(out, o->f.ts_ms);
    sl_buf_appends(out, ",\"revenue\":");
    if (o->f.flags & FO_REV_KNOWN) sl_buf_append_amount(out, o->f.revenue);
    else sl_buf_appends(out, "null");
    sl_buf_appends(out, ",\"total\":");
    if (o->f.flags & FO_REV_KNOWN) sl_buf_append_amount(out, o->f.total);
    else sl_buf_appends(out, "null");
    sl_buf_appends(out, ",\"currency\":");
    if (o->f.currency[0]) sl_buf_append_json_str(out, o->f.currency, strnlen(o->f.currency, sizeof(o->f.currency)));
    else sl_buf_appends(out, "null");
    sl_buf_appends(out, ",\"categories\":[");
    for (size_t i = 0; i < o->f.n_cats; i++) {
        if (i) sl_buf_appends(out, ",");
        sl_buf_append_json_str(out, o->cats[i], strlen(o->cats[i]));
    }
    sl_buf_printf(out, "],\"promo\":%s,\"status\":\"%s\",\"refunded\":", (o->f.flags & FO_PROMO) ? "true" : "false",
                  status_of(o));
    sl_buf_append_amount(out, o->f.refunded);
    sl_buf_appends(out, ",\"refunds\":[");
    for (size_t i = 0; i < o->f.n_refunds; i++) {
        if (i) sl_buf_appends(out, ",");
        sl_buf_appends(out, "{\"at\":");
        sl_buf_append_iso(out, o->refunds[i].ts_ms);
        sl_buf_appends(out, ",\"amount\":");
        if (isnan(o->refunds[i].amount)) sl_buf_appends(out, "null");
        else sl_buf_append_amount(out, o->refunds[i].amount);
        sl_buf_appends(out, "}");
    }
    sl_buf_printf(out, "],\"duplicates\":%u,\"from\":", o->f.duplicates);
    if (o->f.origin != person) {
        char pid[SL_ENTITY_STR_BYTES];
        sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, o->f.origin}, pid);
        sl_buf_printf(out, "\"%s\"", pid);
    } else {
        sl_buf_appends(out, "null");
    }
    sl_buf_appends(out, "}");
}

/* a cursor: the porders key past the person, in hex */
static int cursor_parse(const char *before, unsigned char *out, size_t cap, size_t *n)
{
    size_t l = strlen(before);
    if (l % 2 || l / 2 > cap || l / 2 < 8) return SL_EINVAL;
    for (size_t i = 0; i < l / 2; i++) {
        int h = sl_hex_digit(before[2 * i]), lo = sl_hex_digit(before[2 * i + 1]);
        if (h < 0 || lo < 0) return SL_EINVAL;
        out[i] = (unsigned char)(h << 4 | lo);
    }
    *n = l / 2;
    return 0;
}

int sl_fields_orders(sl_fields_t *f, MDB_txn *txn, uint64_t person, size_t limit, const char *before, sl_buf_t *out)
{
    unsigned char key[8 + 8 + 1 + SL_FIELDS_ORDER_KEY_MAX];
    size_t kn = 8;
    sl_be64_put(key, person);
    if (before) {
        size_t cn;
        if (cursor_parse(before, key + 8, sizeof(key) - 8, &cn)) return SL_EINVAL;
        kn = 8 + cn;
    }
    char pid[SL_ENTITY_STR_BYTES];
    sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, person}, pid);
    const fld_conf_t *c = fld_conf(f->cfg);
    sl_buf_printf(out, "{\"person\":\"%s\",\"currency\":", pid);
    if (c->currency) sl_buf_append_json_str(out, c->currency, strlen(c->currency));
    else sl_buf_appends(out, "null");
    sl_buf_appends(out, ",\"orders\":[");
    if (!f->have_dbs) return sl_buf_appends(out, "],\"next\":null}");
    fld_order_t *o = malloc(sizeof(*o));
    MDB_cursor *cur;
    int rc = o ? mdb_cursor_open(txn, f->porders, &cur) : SL_ENOMEM;
    if (rc) {
        free(o);
        return rc;
    }
    /* newest first: from the last key of the person (or before the cursor) backwards */
    MDB_val k = {kn, key}, v;
    if (before) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        rc = rc == 0 ? mdb_cursor_get(cur, &k, &v, MDB_PREV) : rc == MDB_NOTFOUND ? mdb_cursor_get(cur, &k, &v, MDB_LAST) : rc;
    } else {
        unsigned char next[8];
        sl_be64_put(next, person + 1);
        MDB_val nk = {8, next};
        k = nk;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        rc = rc == 0 ? mdb_cursor_get(cur, &k, &v, MDB_PREV) : rc == MDB_NOTFOUND ? mdb_cursor_get(cur, &k, &v, MDB_LAST) : rc;
    }
    size_t n = 0;
    int more = 0;
    MDB_val last = {0, NULL};
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_PREV)) {
        if (k.mv_size < FLD_PORDER_PREFIX || sl_be64_get(k.mv_data) != person) break;
        if (n == limit) {
            more = 1;
            break;
        }
        MDB_val okey = {k.mv_size - FLD_PORDER_PREFIX, (char *)k.mv_data + FLD_PORDER_PREFIX}, ov;
        if ((rc = mdb_get(txn, f->ledger, &okey, &ov)) || (rc = fld_order_decode(&ov, o))) {
            if (rc == MDB_NOTFOUND) rc = MDB_CORRUPTED; /* not the end of the list: a page cut short */
            break;
        }
        if (n++) sl_buf_appends(out, ",");
        append_order(out, o, &okey, person);
        last = k;
    }
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc == 0) {
        sl_buf_appends(out, "],\"next\":");
        if (more && last.mv_data) {
            sl_buf_appends(out, "\"");
            for (size_t i = 8; i < last.mv_size; i++) sl_buf_printf(out, "%02x", ((const unsigned char *)last.mv_data)[i]);
            sl_buf_appends(out, "\"");
        } else {
            sl_buf_appends(out, "null");
        }
        sl_buf_appends(out, "}");
    }
    mdb_cursor_close(cur);
    free(o);
    return rc ? rc : out->data ? 0 : SL_ENOMEM;
}

/* ---- verify ---- */

typedef struct {
    fld_sum_t *s;
    int max_categories;
    uint64_t person, n, problems;
    FILE *out;
} check_t;

static int check_one(void *arg, const MDB_val *pkey, const fld_porder_t *po, const fld_order_t *o)
{
    check_t *c = arg;
    c->n++;
    if (o->f.person != c->person || !(o->f.flags & FO_PLACED) || po->flags != o->f.flags ||
        fabs(po->net - fld_order_net(o)) > 1e-6) {
        fprintf(c->out, "order %.*s of p_%llu: its ledger entry disagrees with the person's list\n",
                (int)(pkey->mv_size - FLD_PORDER_PREFIX - 1), (const char *)pkey->mv_data + FLD_PORDER_PREFIX + 1,
                (unsigned long long)c->person);
        c->problems++;
    }
    fld_sum_order(c->s, o, 1, c->max_categories);
    return 0;
}

int sl_fields_verify(sl_fields_t *f, MDB_txn *txn, FILE *out, uint64_t *orders, uint64_t *problems)
{
    if (!f->have_dbs) return 0;
    fld_sum_t *want = malloc(sizeof(*want)), *have = malloc(sizeof(*have));
    fld_order_t *o = malloc(sizeof(*o));
    MDB_cursor *cur = NULL;
    int rc = want && have && o ? mdb_cursor_open(txn, f->fstate, &cur) : SL_ENOMEM;
    MDB_val k, v;
    for (rc = rc ? rc : mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t person;
        memcpy(&person, k.mv_data, 8);
        if (fld_sum_decode(&v, have) != 0) {
            fprintf(out, "computed fields of p_%llu: not a summary record\n", (unsigned long long)person);
            ++*problems;
            continue;
        }
        fld_sum_init(want);
        check_t c = {want, fld_conf(f->cfg)->max_categories, person, 0, 0, out};
        if ((rc = fld_each_order(f, txn, person, o, check_one, &c)) == MDB_CORRUPTED) {
            fprintf(out, "orders of p_%llu: an entry without its ledger record, or a damaged record\n",
                    (unsigned long long)person);
            ++*problems;
            continue; /* (rc is the cursor's again) */
        }
        if (rc) break;
        *orders += c.n;
        *problems += c.problems;
        const fld_sum_fix_t *a = &want->f, *b = &have->f;
        if (a->orders != b->orders || a->rev_orders != b->rev_orders || a->promo_orders != b->promo_orders ||
            a->first_ms != b->first_ms || a->second_ms != b->second_ms || a->last_ms != b->last_ms ||
            fabs(a->revenue - b->revenue) > 1e-6 * (1 + fabs(a->revenue)) || a->n_cats != b->n_cats) {
            fprintf(out, "computed fields of p_%llu: orders %u revenue %.2f kept, its ledger makes %u and %.2f\n",
                    (unsigned long long)person, b->orders, b->revenue, a->orders, a->revenue);
            ++*problems;
        }
    }
    if (cur) mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) rc = 0;
    /* the other way round: every placed order of the ledger is in its
     * person's list; refunds still waiting for their order are counted */
    uint64_t waiting = 0;
    cur = NULL;
    if (rc == 0) rc = mdb_cursor_open(txn, f->ledger, &cur);
    for (rc = rc ? rc : mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (fld_order_decode(&v, o)) {
            fprintf(out, "ledger entry %.*s: not an order record\n", (int)(k.mv_size > 1 ? k.mv_size - 1 : 0),
                    (const char *)k.mv_data + 1);
            ++*problems;
            continue;
        }
        if (!(o->f.flags & FO_PLACED)) {
            waiting++;
            continue;
        }
        unsigned char pk[FLD_PORDER_PREFIX + 1 + SL_FIELDS_ORDER_KEY_MAX];
        if (k.mv_size > sizeof(pk) - FLD_PORDER_PREFIX) {
            fprintf(out, "ledger entry of p_%llu: a key of %zu bytes\n", (unsigned long long)o->f.person, k.mv_size);
            ++*problems;
            continue;
        }
        sl_be64_put(pk, o->f.person);
        sl_be64_put(pk + 8, (uint64_t)o->f.ts_ms ^ (1ULL << 63));
        memcpy(pk + FLD_PORDER_PREFIX, k.mv_data, k.mv_size);
        MDB_val pkv = {FLD_PORDER_PREFIX + k.mv_size, pk}, pv;
        int g = mdb_get(txn, f->porders, &pkv, &pv);
        if (g == MDB_NOTFOUND) {
            fprintf(out, "order %.*s of p_%llu: in the ledger, not in the person's list\n",
                    (int)(k.mv_size - 1), (const char *)k.mv_data + 1, (unsigned long long)o->f.person);
            ++*problems;
        } else if (g) {
            rc = g;
            break;
        }
    }
    if (cur) mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc == 0 && waiting) fprintf(out, "%llu refunds wait for their order\n", (unsigned long long)waiting);
    free(want);
    free(have);
    free(o);
    return rc;
}

/* ---- verify: the generic fields against the stored events ---- */

/* 1 when the JSON arrays a and b hold the same distinct elements */
static int same_set(const char *a, size_t an, const char *b, size_t bn)
{
    sl_jiter_t ia, ib;
    sl_jval_t k, x, y;
    size_t na = 0, nb = 0;
    sl_jiter(sl_jroot(b, bn), &ib);
    while (sl_jnext(&ib, &k, &y)) nb++;
    sl_jiter(sl_jroot(a, an), &ia);
    while (sl_jnext(&ia, &k, &x)) {
        int hit = 0;
        na++;
        sl_jiter(sl_jroot(b, bn), &ib);
        while (!hit && sl_jnext(&ib, &k, &y)) hit = x.n == y.n && memcmp(x.p, y.p, x.n) == 0;
        if (!hit) return 0;
    }
    return na == nb;
}

typedef struct {
    sl_fields_t *f;
    MDB_txn *txn, *log_txn;
    int (*skip)(uint64_t seq, void *arg);
    void *skip_arg;
    int64_t now;
    FILE *out;
    uint64_t *persons, *problems;
    sl_buf_t a, b;          /* a field's value: kept, recomputed */
    fld_gstate_t *kept;     /* the kept state of one field */
    fld_gstate_t *st;       /* one recomputed state per generic field */
    sl_arena_t arena;
    fld_replay_t r;         /* the event under way */
} vg_t;

static int vg_event(uint64_t seq, void *arg)
{
    vg_t *x = arg;
    const fld_conf_t *c = fld_conf(x->f->cfg);
    MDB_val v;
    if (x->skip && x->skip(seq, x->skip_arg)) return 0;
    int rc = sl_store_event_get(sl_stage_log(x->f->stage), x->log_txn, seq, &v);
    if (rc == MDB_NOTFOUND) return 0; /* erased or pruned since */
    if (rc) return rc;
    fld_replay_t *r = &x->r;
    sl_arena_reset(&x->arena);
    if (fld_replay_event(r, v.mv_data, v.mv_size, seq, &x->arena)) return 0;
    for (size_t i = 0; i < c->n_gfields; i++) {
        double pts;
        if (c->gfields[i].type != FG_LABEL &&
            fld_gfield_matches(&c->gfields[i], r->kind, r->kind_len, &r->ev, x->now, &pts))
            fld_gstate_apply(&c->gfields[i], &x->st[i], &r->ev, pts, x->now);
    }
    return 0;
}

/* one person: each generic field's kept state against its events' */
static int vg_person(uint64_t person, const MDB_val *rec, void *arg)
{
    vg_t *x = arg;
    sl_fields_t *f = x->f;
    const fld_conf_t *c = fld_conf(f->cfg);
    ++*x->persons;
    for (size_t i = 0; i < c->n_gfields; i++) fld_gstate_init(&x->st[i], &c->gfields[i]);
    int rc = sl_stitch_person_events(f->stitch, x->txn, person, vg_event, x);
    if (rc == SL_ENOTFOUND) return 0;
    for (size_t i = 0; i < c->n_gfields && rc == 0; i++) {
        const fld_gfield_t *g = &c->gfields[i];
        int found;
        if (g->type == FG_LABEL || (atomic_load(&f->bf_mask) >> i & 1)) continue;
        if ((rc = fld_gstate_from(rec, g, x->kept, &found))) break;
        x->a.len = x->b.len = 0;
        fld_gstate_prune(g, &x->st[i], x->now);
        if ((rc = fld_gstate_value(g, x->kept, x->now, &x->a)) || (rc = fld_gstate_value(g, &x->st[i], x->now, &x->b)))
            break;
        const sl_buf_t *a = &x->a, *b = &x->b;
        int same = a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
        if (!same && g->type == FG_DISTINCT_LIST) /* the same values in another order (merges) */
            same = a->len == b->len && same_set(a->data, a->len, b->data, b->len);
        if (!same) {
            fprintf(x->out, "computed field %s of p_%llu: %.*s kept, its events make %.*s\n", g->name,
                    (unsigned long long)person, (int)a->len, a->data, (int)b->len, b->data);
            ++*x->problems;
        }
    }
    return rc;
}

int sl_fields_verify_generic(sl_fields_t *f, MDB_txn *txn, MDB_txn *log_txn, int (*skip)(uint64_t seq, void *arg),
                             void *skip_arg, int64_t now, FILE *out, uint64_t *persons, uint64_t *problems)
{
    const fld_conf_t *c = fld_conf(f->cfg);
    if (!f->have_dbs || c->n_gfields == 0) return 0;
    /* every person: one with events for a field but no state is a difference too */
    vg_t x = {.f = f, .txn = txn, .log_txn = log_txn, .skip = skip, .skip_arg = skip_arg, .now = now, .out = out,
              .persons = persons, .problems = problems, .st = calloc(c->n_gfields, sizeof(fld_gstate_t)),
              .kept = malloc(sizeof(fld_gstate_t))};
    sl_arena_init(&x.arena);
    int rc = x.st && x.kept ? sl_stitch_attach_each(f->stitch, txn, SL_ATTACH_FIELDS, vg_person, &x) : SL_ENOMEM;
    sl_arena_free(&x.arena);
    sl_buf_free(&x.a);
    sl_buf_free(&x.b);
    free(x.st);
    free(x.kept);
    return rc;
}

/* ---- verify: the ledger against the stored order events ---- */

typedef struct {
    sl_fields_t *f;
    MDB_txn *txn;
    int (*skip)(uint64_t seq, void *arg);
    void *skip_arg;
    FILE *out;
    uint64_t checked, problems, applied;
    sl_arena_t arena;
    sl_buf_t key;
    fld_order_t o;
} vl_t;

static int vl_event(const char *json, size_t len, uint64_t seq, void *arg)
{
    vl_t *x = arg;
    const fld_conf_t *c = fld_conf(x->f->cfg);
    if (seq > x->applied) return 1; /* not derived yet */
    if (x->skip && x->skip(seq, x->skip_arg)) return 0;
    sl_jindex_t top, ctxi;
    sl_jval_t root = sl_jroot_index(json, len, &top, "context", &ctxi);
    if (sl_jtype(root) != SL_JOBJ || !sl_jstr_eq(sl_jindex_get(&top, "type"), "track", 5)) return 0;
    sl_arena_reset(&x->arena);
    size_t n;
    const char *name = sl_jstr(sl_jindex_get(&top, "event"), &x->arena, &n);
    if (name == NULL || !fld_name_in(c->order_events, c->n_order_events, name, n)) return 0;
    const char *mid = sl_jstr(sl_jindex_get(&top, "messageId"), &x->arena, NULL);
    int by_msgid, rc = fld_order_key(sl_jindex_get(&top, "properties"), mid, 1, &x->key, &x->arena, &by_msgid);
    if (rc == SL_ENOTFOUND) return 0;
    if (rc) return rc;
    uint64_t person;
    if (sl_stitch_event_person(x->f->stitch, x->txn, &top, &ctxi, &person) != 0) return 0; /* erased, or no id */
    x->checked++;
    MDB_val k = {x->key.len, x->key.data}, v;
    if ((rc = mdb_get(x->txn, x->f->ledger, &k, &v)) == MDB_NOTFOUND || (rc == 0 && fld_order_decode(&v, &x->o))) {
        fprintf(x->out, "order event %llu (%.*s): not in the ledger\n", (unsigned long long)seq, (int)x->key.len - 1,
                x->key.data + 1);
        x->problems++;
        return 0;
    }
    if (rc) return rc;
    /* the first copy is the order; a later one is counted on it */
    if (!(x->o.f.flags & FO_PLACED) || (x->o.f.seq != seq && (seq < x->o.f.seq || x->o.f.duplicates == 0))) {
        fprintf(x->out, "order event %llu (%.*s): the ledger holds event %llu for it, with %u copies\n",
                (unsigned long long)seq, (int)x->key.len - 1, x->key.data + 1, (unsigned long long)x->o.f.seq,
                x->o.f.duplicates);
        x->problems++;
    } else if (x->o.f.seq == seq && x->o.f.person != person) {
        fprintf(x->out, "order event %llu (%.*s): its person is p_%llu, the ledger says p_%llu\n",
                (unsigned long long)seq, (int)x->key.len - 1, x->key.data + 1, (unsigned long long)person,
                (unsigned long long)x->o.f.person);
        x->problems++;
    }
    return 0;
}

int sl_fields_verify_ledger(sl_fields_t *f, MDB_txn *txn, MDB_txn *log_txn, int (*skip)(uint64_t seq, void *arg),
                            void *skip_arg, uint64_t applied, FILE *out, uint64_t *checked, uint64_t *problems)
{
    if (!f->have_dbs) return 0;
    vl_t x = {.f = f, .txn = txn, .skip = skip, .skip_arg = skip_arg, .out = out, .applied = applied};
    sl_arena_init(&x.arena);
    int rc = sl_store_foreach_event_txn(sl_stage_log(f->stage), log_txn, vl_event, &x);
    if (rc == 1) rc = 0; /* stopped at the stage's position */
    *checked += x.checked;
    *problems += x.problems;
    sl_arena_free(&x.arena);
    sl_buf_free(&x.key);
    return rc;
}
