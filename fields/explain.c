/* explain.c - what the admin routes read of the computed fields, in read
 * transactions on any thread (the collector runs them on libuv's
 * threadpool, never on the stage thread): the fields configured
 * (GET /v1/computed), the inputs behind one value of a person
 * (?explain=FIELD), and one field's distribution over every person with
 * computed state, with RFM thresholds suggested from it. */
#include "fields_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the list ---- */

static void append_field(sl_buf_t *out, const char *name, const char *source, const char *type, int64_t window,
                         int bf, uint64_t next, uint64_t upto)
{
    sl_buf_appends(out, "{\"name\":");
    sl_buf_append_json_str(out, name, strlen(name));
    sl_buf_printf(out, ",\"source\":\"%s\",\"type\":\"%s\",\"window\":", source, type);
    if (window) sl_buf_append_duration(out, window);
    else sl_buf_appends(out, "null");
    if (!bf) {
        sl_buf_appends(out, ",\"status\":\"live\",\"backfilling\":false}");
        return;
    }
    sl_buf_printf(out, ",\"status\":\"backfilling\",\"backfilling\":true,\"progress\":{\"next\":%llu,\"upto\":%llu}}",
                  (unsigned long long)next, (unsigned long long)upto);
}

int sl_fields_has(sl_fields_t *f, const char *name)
{
    const sl_config_t *cfg = f->cfg;
    return sl_fields_known(cfg, name) || (strcmp(name, "rfm") == 0 && fld_conf(cfg)->commerce);
}

int sl_fields_list(sl_fields_t *f, sl_buf_t *out)
{
    const fld_conf_t *c = fld_conf(f->cfg);
    fld_sum_t *s = malloc(sizeof(*s));
    fld_flat_t fl;
    memset(&fl, 0, sizeof(fl));
    if (s == NULL) return SL_ENOMEM;
    fld_sum_init(s);
    int rc = fld_flatten(c, s, NULL, NULL, 0, &fl);
    sl_buf_printf(out, "{\"commerce\":%s,\"timezone\":", c->commerce ? "true" : "false");
    const char *tz = getenv("TZ");
    sl_buf_append_json_str(out, tz ? tz : "UTC", strlen(tz ? tz : "UTC"));
    sl_buf_appends(out, ",\"fields\":[");
    for (size_t i = 0; rc == 0 && i < fl.n; i++) {
        if (i) sl_buf_appends(out, ",");
        const fld_gfield_t *g = NULL;
        for (size_t k = 0; k < c->n_gfields; k++)
            if (strcmp(c->gfields[k].name, fl.name[i]) == 0) g = &c->gfields[k];
        static const char *const gt[] = {"", "count", "sum", "avg", "min", "max", "first", "last", "distinct_count",
                                         "distinct_list", "most_frequent", "score", "label"};
        int64_t w = 0;
        for (size_t k = 0; !g && k < c->n_windows; k++)
            if (strstr(fl.name[i], "_") && strcmp(strchr(fl.name[i], '_') + 1, c->window_names[k]) == 0) w = c->windows[k];
        size_t gi = g ? (size_t)(g - c->gfields) : 0;
        int bf = g && (atomic_load(&f->bf_mask) >> gi & 1);
        append_field(out, fl.name[i], g ? "generic" : "commerce", g ? gt[g->type] : "commerce", g ? g->window_ms : w, bf,
                     bf ? atomic_load(&f->bf_next[gi]) : 0, bf ? atomic_load(&f->bf_upto[gi]) : 0);
    }
    sl_buf_appends(out, "]}");
    free(s);
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
    return rc ? rc : out->data ? 0 : SL_ENOMEM;
}

/* ---- explain ---- */

typedef struct {
    sl_buf_t *out;
    int64_t from;      /* orders before it are not listed (INT64_MIN: all) */
    size_t n;
} ex_orders_t;

static int ex_order(void *arg, const MDB_val *pkey, const fld_porder_t *po, const fld_order_t *o)
{
    ex_orders_t *x = arg;
    (void)po;
    if (o->f.ts_ms <= x->from || x->n >= 100) return 0;
    sl_buf_t *out = x->out;
    if (x->n++) sl_buf_appends(out, ",");
    const char *id = (const char *)pkey->mv_data + FLD_PORDER_PREFIX + 1;
    sl_buf_appends(out, "{\"order\":");
    sl_buf_append_json_str(out, id, pkey->mv_size - FLD_PORDER_PREFIX - 1);
    sl_buf_appends(out, ",\"at\":");
    sl_buf_append_iso(out, o->f.ts_ms);
    sl_buf_appends(out, ",\"net_revenue\":");
    if (o->f.flags & FO_REV_KNOWN) sl_buf_append_amount(out, fld_order_net(o));
    else sl_buf_appends(out, "null");
    sl_buf_printf(out, ",\"promo\":%s,\"counted\":%s,\"categories\":[", (o->f.flags & FO_PROMO) ? "true" : "false",
                  (o->f.flags & FO_REFUNDED) ? "false" : "true");
    for (size_t i = 0; i < o->f.n_cats; i++) {
        if (i) sl_buf_appends(out, ",");
        sl_buf_append_json_str(out, o->cats[i], strlen(o->cats[i]));
    }
    sl_buf_appends(out, "]}");
    return 0;
}

static void ex_scale(sl_buf_t *out, const char *name, const char *what, double value, int score, const double *th,
                     const int64_t *dur)
{
    sl_buf_printf(out, "\"%s\":{\"%s\":", name, what);
    sl_buf_append_amount(out, value);
    sl_buf_appends(out, ",\"thresholds\":[");
    for (int i = 0; i < 4; i++) {
        if (i) sl_buf_appends(out, ",");
        if (dur) sl_buf_append_duration(out, dur[i]);
        else sl_buf_append_amount(out, th[i]);
    }
    sl_buf_printf(out, "],\"score\":%d}", score);
}

static int explain_rfm(const fld_conf_t *c, const fld_sum_t *s, int64_t now, sl_buf_t *out)
{
    fld_rfm_t r = fld_rfm(c, s, now);
    if (s->f.orders == 0) return sl_buf_appends(out, "{\"orders\":0,\"segment\":\"prospect\",\"next_timer\":null}");
    sl_buf_appends(out, "{\"last_order_at\":");
    sl_buf_append_iso(out, s->f.last_ms);
    sl_buf_appends(out, ",");
    ex_scale(out, "recency", "age_days", (double)(now - s->f.last_ms) / 86400000.0, r.r, NULL, c->recency);
    sl_buf_appends(out, ",");
    ex_scale(out, "frequency", "orders", (double)s->f.orders, r.f, c->frequency, NULL);
    sl_buf_appends(out, ",");
    ex_scale(out, "monetary", "revenue", s->f.revenue, r.m, c->monetary, NULL);
    const char *seg = fld_segment_name(c, r.seg);
    sl_buf_appends(out, ",\"segment\":");
    sl_buf_append_json_str(out, seg ? seg : "", strlen(seg ? seg : ""));
    if (r.seg < c->n_segments) {
        const fld_segment_t *g = &c->segments[r.seg];
        sl_buf_printf(out, ",\"table_entry\":{\"index\":%u,\"r\":[%u,%u],\"f\":[%u,%u],\"m\":[%u,%u]}", r.seg, g->lo[0],
                      g->hi[0], g->lo[1], g->hi[1], g->lo[2], g->hi[2]);
    }
    int64_t next = fld_rfm_next(c, s, now);
    sl_buf_appends(out, ",\"next_timer\":");
    if (next == INT64_MAX) sl_buf_appends(out, "null");
    else sl_buf_append_iso(out, next);
    return sl_buf_appends(out, "}");
}

static int explain_generic(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_gfield_t *g, const fld_flat_t *fl,
                           int64_t now, sl_buf_t *out)
{
    static const char *const gt[] = {"", "count", "sum", "avg", "min", "max", "first", "last", "distinct_count",
                                     "distinct_list", "most_frequent", "score", "label"};
    sl_buf_printf(out, "{\"type\":\"%s\"", gt[g->type]);
    if (g->type == FG_LABEL) {
        /* which label holds, over the other values */
        sl_buf_appends(out, ",\"labels\":[");
        for (size_t k = 0; k < g->n_labels; k++) {
            if (k) sl_buf_appends(out, ",");
            sl_buf_appends(out, "{\"if\":");
            sl_rules_print(g->labels[k].cond, out);
            sl_buf_printf(out, ",\"value\":%s}", g->labels[k].value);
        }
        sl_buf_printf(out, "],\"else\":%s,\"reads\":", g->else_value);
        return fld_flat_object(fl, out) ? SL_ENOMEM : sl_buf_appends(out, "}");
    }
    if (g->event) {
        sl_buf_appends(out, ",\"event\":");
        sl_buf_append_json_str(out, g->event, strlen(g->event));
        sl_buf_appends(out, ",\"where\":");
        if (g->where) sl_rules_print(g->where, out);
        else sl_buf_appends(out, "null");
    }
    sl_buf_appends(out, ",\"window\":");
    if (g->window_ms) sl_buf_append_duration(out, g->window_ms);
    else sl_buf_appends(out, "null");
    fld_gstate_t *s = malloc(sizeof(*s));
    if (s == NULL) return SL_ENOMEM;
    int found = 0, rc = f->have_dbs ? fld_gstate_read(f, txn, person, g, s, &found) : (fld_gstate_init(s, g), 0);
    if (rc == 0 && g->window_ms) {
        sl_buf_appends(out, ",\"buckets\":[");
        int lead = 0;
        for (size_t i = 0; i < s->f.n_buckets; i++) {
            /* as kept: a bucket past the window leaves at the next event or timer */
            if (lead++) sl_buf_appends(out, ",");
            sl_buf_printf(out, "{\"bucket\":%lld,\"count\":%llu,\"sum\":", (long long)s->buckets[i].id,
                          (unsigned long long)s->buckets[i].count);
            sl_buf_append_amount(out, s->buckets[i].sum);
            sl_buf_appends(out, "}");
        }
        int64_t next = fld_gstate_next(g, s, now);
        sl_buf_appends(out, "],\"bucket_width\":");
        if (g->bucket_ms) sl_buf_append_duration(out, g->bucket_ms);
        else sl_buf_appends(out, "\"calendar day\"");
        sl_buf_appends(out, ",\"next_timer\":");
        if (next == INT64_MAX) sl_buf_appends(out, "null");
        else sl_buf_append_iso(out, next);
    }
    if (rc == 0 && g->type >= FG_DISTINCT_COUNT && g->type <= FG_MOST_FREQUENT) {
        sl_buf_appends(out, ",\"values\":[");
        for (size_t i = 0; i < s->f.n_values; i++)
            sl_buf_printf(out, "%s{\"value\":%s,\"count\":%u}", i ? "," : "", s->values[i].text, s->values[i].count);
        sl_buf_printf(out, "],\"overflow\":%s", (s->f.flags & FG_OVERFLOW) ? "true" : "false");
    }
    if (rc == 0 && (g->type == FG_FIRST || g->type == FG_LAST)) {
        sl_buf_appends(out, ",\"at\":");
        sl_buf_append_iso(out, g->type == FG_FIRST ? s->f.first_ts : s->f.last_ts);
    }
    if (rc == 0 && !g->window_ms && g->type <= FG_MAX) sl_buf_printf(out, ",\"events\":%llu", (unsigned long long)s->f.count);
    sl_buf_appends(out, "}");
    free(s);
    return rc ? rc : out->data ? 0 : SL_ENOMEM;
}

int sl_fields_explain(sl_fields_t *f, MDB_txn *txn, uint64_t person, const char *field, int64_t now, sl_buf_t *out)
{
    const fld_conf_t *c = fld_conf(f->cfg);
    fld_flat_t fl;
    memset(&fl, 0, sizeof(fl));
    int rc = fld_read_flat(f, txn, person, now, &fl);
    size_t i = 0;
    while (rc == 0 && i < fl.n && strcmp(fl.name[i], field) != 0) i++;
    if (rc == 0 && i == fl.n && strcmp(field, "rfm") != 0) rc = SL_ENOTFOUND;
    char pid[SL_ENTITY_STR_BYTES];
    sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, person}, pid);
    if (rc == 0) {
        sl_buf_printf(out, "{\"person\":\"%s\",\"field\":", pid);
        sl_buf_append_json_str(out, field, strlen(field));
        sl_buf_appends(out, ",\"value\":");
        if (i < fl.n) sl_buf_append(out, fl.text.data + fl.off[i], fl.len[i]);
        else sl_buf_appends(out, "null");
        sl_buf_appends(out, ",\"at\":");
        sl_buf_append_iso(out, now);
        sl_buf_appends(out, ",\"explain\":");
    }
    const fld_gfield_t *g = NULL;
    for (size_t k = 0; rc == 0 && k < c->n_gfields; k++)
        if (strcmp(c->gfields[k].name, field) == 0) g = &c->gfields[k];
    if (rc == 0 && g) {
        rc = explain_generic(f, txn, person, g, &fl, now, out);
    } else if (rc == 0 && strncmp(field, "rfm", 3) == 0) {
        fld_sum_t *s = malloc(sizeof(*s));
        int found;
        rc = s ? (f->have_dbs ? fld_sum_load(f, txn, person, s, &found) : (fld_sum_init(s), 0)) : SL_ENOMEM;
        if (rc == 0) rc = explain_rfm(c, s, now, out);
        free(s);
    } else if (rc == 0) {
        /* a ledger figure: the orders behind it (in its window, if it has one), newest 100 */
        int64_t from = INT64_MIN;
        for (size_t k = 0; k < c->n_windows; k++) {
            const char *u = strrchr(field, '_');
            if (u && strcmp(u + 1, c->window_names[k]) == 0) from = now - c->windows[k];
        }
        sl_buf_appends(out, "{\"window_from\":");
        if (from == INT64_MIN) sl_buf_appends(out, "null");
        else sl_buf_append_iso(out, from);
        sl_buf_printf(out, ",\"promophile\":{\"min_orders\":%d,\"min_share\":", c->promo_min_orders);
        sl_buf_append_amount(out, c->promo_min_share);
        sl_buf_appends(out, "},\"orders\":[");
        fld_order_t *o = malloc(sizeof(*o));
        ex_orders_t x = {out, from, 0};
        rc = o == NULL ? SL_ENOMEM : f->have_dbs ? fld_each_order(f, txn, person, o, ex_order, &x) : 0;
        free(o);
        sl_buf_appends(out, "]}");
    }
    if (rc == 0) sl_buf_appends(out, "}");
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
    return rc ? rc : out->data ? 0 : SL_ENOMEM;
}

/* ---- distribution ---- */

static int dcmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    char *text;
    uint64_t count;
} dval_t;

/* the q-quantile of sorted v[0..n) (nearest rank) */
static double quantile(const double *v, size_t n, double q)
{
    size_t k = (size_t)ceil(q * (double)n);
    return v[k ? k - 1 : 0];
}

static void append_quintiles(sl_buf_t *out, double *v, size_t n, int as_days)
{
    qsort(v, n, sizeof(*v), dcmp);
    sl_buf_appends(out, "[");
    for (int i = 1; i <= 4; i++) {
        if (i > 1) sl_buf_appends(out, ",");
        double x = n ? quantile(v, n, i / 5.0) : 0;
        if (as_days) sl_buf_printf(out, "\"%lldd\"", (long long)ceil(x < 1 ? 1 : x));
        else sl_buf_append_amount(out, x);
    }
    sl_buf_appends(out, "]");
}

int sl_fields_distribution(sl_fields_t *f, MDB_txn *txn, const char *field, int64_t now, size_t max_persons,
                           sl_buf_t *out)
{
    const fld_conf_t *c = fld_conf(f->cfg);
    if (!sl_fields_known(f->cfg, field) && !(strcmp(field, "rfm") == 0 && c->commerce)) return SL_ENOTFOUND;
    int rfm = strcmp(field, "rfm") == 0 || strcmp(field, "rfm.segment") == 0;
    const char *name = strcmp(field, "rfm") == 0 ? "rfm.segment" : field;
    size_t cap = 1024, n_num = 0, n_vals = 0, persons = 0, n_nulls = 0;
    double *nums = malloc(cap * sizeof(*nums));
    double *rec = NULL, *frq = NULL, *mon = NULL;
    size_t n_rfm = 0;
    dval_t *vals = calloc(256, sizeof(*vals));
    fld_flat_t fl;
    fld_sum_t *s = malloc(sizeof(*s));
    memset(&fl, 0, sizeof(fl));
    MDB_cursor *cur = NULL;
    int rc = nums && vals && s ? 0 : SL_ENOMEM, more = 0, many_values = 0;
    if (rc == 0 && rfm && ((rec = malloc(cap * sizeof(double))) == NULL || (frq = malloc(cap * sizeof(double))) == NULL ||
                           (mon = malloc(cap * sizeof(double))) == NULL))
        rc = SL_ENOMEM;
    if (rc == 0 && f->have_dbs) rc = mdb_cursor_open(txn, f->fstate, &cur);
    MDB_val k, v;
    for (int op = MDB_FIRST; rc == 0 && cur && (rc = mdb_cursor_get(cur, &k, &v, op)) == 0; op = MDB_NEXT) {
        if (persons == max_persons) {
            more = 1;
            break;
        }
        uint64_t person;
        memcpy(&person, k.mv_data, 8);
        persons++;
        if ((rc = fld_read_flat(f, txn, person, now, &fl))) break;
        size_t i = 0;
        while (i < fl.n && strcmp(fl.name[i], name) != 0) i++;
        if (i == fl.n) continue;
        const char *t = fl.text.data + fl.off[i];
        size_t tl = fl.len[i];
        double d;
        sl_jval_t jv = sl_jroot(t, tl);
        if (sl_jtype(jv) == SL_JNULL) {
            n_nulls++;
        } else if (!rfm && sl_jnum(jv, &d)) {
            if (n_num == cap) {
                double *x = realloc(nums, 2 * cap * sizeof(*x));
                if (x == NULL) {
                    rc = SL_ENOMEM;
                    break;
                }
                nums = x, cap *= 2;
            }
            nums[n_num++] = d;
        } else {
            size_t j = 0;
            while (j < n_vals && !(strlen(vals[j].text) == tl && memcmp(vals[j].text, t, tl) == 0)) j++;
            if (j == n_vals && n_vals < 256) {
                if ((vals[j].text = malloc(tl + 1)) == NULL) {
                    rc = SL_ENOMEM;
                    break;
                }
                memcpy(vals[j].text, t, tl);
                vals[j].text[tl] = '\0';
                n_vals++;
            }
            if (j < n_vals) vals[j].count++;
            else many_values = 1;
        }
        if (rfm && (rc = fld_sum_load(f, txn, person, s, &(int){0})) == 0 && s->f.orders) {
            if (n_rfm == cap) { /* rfm keeps nums empty: cap grows with these */
                double *a = realloc(rec, 2 * cap * sizeof(double)), *b = a ? realloc(frq, 2 * cap * sizeof(double)) : NULL,
                       *e = b ? realloc(mon, 2 * cap * sizeof(double)) : NULL;
                if (a) rec = a;
                if (b) frq = b;
                if (e) mon = e;
                if (!a || !b || !e) {
                    rc = SL_ENOMEM;
                    break;
                }
                cap *= 2;
            }
            rec[n_rfm] = (double)(now - s->f.last_ms) / 86400000.0;
            frq[n_rfm] = (double)s->f.orders;
            mon[n_rfm++] = s->f.revenue;
        }
    }
    if (cur) mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc == 0) {
        sl_buf_appends(out, "{\"field\":");
        sl_buf_append_json_str(out, field, strlen(field));
        sl_buf_printf(out, ",\"at\":");
        sl_buf_append_iso(out, now);
        sl_buf_printf(out, ",\"persons\":%zu,\"null\":%zu,\"complete\":%s", persons, n_nulls, more ? "false" : "true");
        if (n_num) {
            qsort(nums, n_num, sizeof(*nums), dcmp);
            double sum = 0;
            for (size_t i = 0; i < n_num; i++) sum += nums[i];
            sl_buf_printf(out, ",\"numbers\":{\"count\":%zu,\"min\":", n_num);
            sl_buf_append_amount(out, nums[0]);
            sl_buf_appends(out, ",\"max\":");
            sl_buf_append_amount(out, nums[n_num - 1]);
            sl_buf_appends(out, ",\"mean\":");
            sl_buf_append_amount(out, sum / (double)n_num);
            sl_buf_appends(out, ",\"quintiles\":");
            append_quintiles(out, nums, n_num, 0);
            sl_buf_appends(out, "}");
        }
        if (n_vals) {
            sl_buf_appends(out, ",\"values\":{");
            for (size_t j = 0; j < n_vals; j++) {
                if (j) sl_buf_appends(out, ",");
                sl_jval_t jv = sl_jroot(vals[j].text, strlen(vals[j].text));
                if (sl_jtype(jv) == SL_JSTR) sl_buf_appends(out, vals[j].text);
                else sl_buf_append_json_str(out, vals[j].text, strlen(vals[j].text));
                sl_buf_printf(out, ":%llu", (unsigned long long)vals[j].count);
            }
            sl_buf_printf(out, "},\"more_values\":%s", many_values ? "true" : "false");
        }
        if (rfm) {
            /* thresholds that would split today's customers in fifths: recency by the age of
             * their last order (the youngest fifth scores 5), frequency and monetary by value */
            sl_buf_printf(out, ",\"customers\":%zu,\"suggested\":{\"recency\":", n_rfm);
            append_quintiles(out, rec, n_rfm, 1);
            sl_buf_appends(out, ",\"frequency\":");
            append_quintiles(out, frq, n_rfm, 0);
            sl_buf_appends(out, ",\"monetary\":");
            append_quintiles(out, mon, n_rfm, 0);
            sl_buf_appends(out, "}");
        }
        sl_buf_appends(out, "}");
    }
    for (size_t j = 0; j < n_vals; j++) free(vals[j].text);
    free(vals);
    free(nums);
    free(rec);
    free(frq);
    free(mon);
    free(s);
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
    return rc ? rc : out->data ? 0 : SL_ENOMEM;
}
