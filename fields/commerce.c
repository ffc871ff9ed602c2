/* commerce.c - the commerce pack's records and arithmetic: an order of the
 * ledger, a person's summary, how an order and a merge change it, RFM
 * scores and segments, and the flat list of computed values every reader
 * prints (the profile, conditions, changes, payloads). No database here:
 * fields.c and read.c move the records. */
#include "fields_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- an order ---- */

int fld_order_encode(const fld_order_t *o, sl_buf_t *b)
{
    b->len = 0;
    fld_order_fix_t f = o->f;
    f.version = FLD_ORDER_VERSION;
    if (sl_buf_append(b, &f, sizeof(f))) return SL_ENOMEM;
    for (size_t i = 0; i < f.n_cats; i++) {
        uint8_t l = (uint8_t)strlen(o->cats[i]);
        if (sl_buf_append(b, &l, 1) || sl_buf_append(b, o->cats[i], l)) return SL_ENOMEM;
    }
    for (size_t i = 0; i < f.n_refunds && i < SL_FIELDS_ORDER_REFUNDS; i++)
        if (sl_buf_append(b, &o->refunds[i], sizeof(o->refunds[i]))) return SL_ENOMEM;
    return 0;
}

int fld_order_decode(const MDB_val *v, fld_order_t *o)
{
    const unsigned char *p = v->mv_data, *end = p + v->mv_size;
    if (v->mv_size < sizeof(o->f)) return MDB_CORRUPTED;
    memcpy(&o->f, p, sizeof(o->f));
    p += sizeof(o->f);
    /* what readers rely on: counts within the arrays, the currency a C
     * string (rate_of() compares it), amounts finite (they go into sums) */
    if (o->f.version != FLD_ORDER_VERSION || o->f.n_cats > SL_FIELDS_ORDER_CATS ||
        o->f.n_refunds > SL_FIELDS_ORDER_REFUNDS || memchr(o->f.currency, 0, sizeof(o->f.currency)) == NULL ||
        !isfinite(o->f.revenue) || !isfinite(o->f.total) || !isfinite(o->f.refunded))
        return MDB_CORRUPTED;
    for (size_t i = 0; i < o->f.n_cats; i++) {
        if (p >= end || *p > SL_FIELDS_CAT_BYTES || (size_t)(end - p - 1) < *p) return MDB_CORRUPTED;
        memcpy(o->cats[i], p + 1, *p);
        o->cats[i][*p] = '\0';
        p += 1 + *p;
    }
    if ((size_t)(end - p) != o->f.n_refunds * sizeof(fld_refund_t)) return MDB_CORRUPTED;
    memcpy(o->refunds, p, o->f.n_refunds * sizeof(fld_refund_t));
    for (size_t i = 0; i < o->f.n_refunds; i++) /* NAN: the whole order; never infinite */
        if (isinf(o->refunds[i].amount)) return MDB_CORRUPTED;
    return 0;
}

double fld_order_net(const fld_order_t *o)
{
    if (!(o->f.flags & FO_REV_KNOWN) || (o->f.flags & FO_REFUNDED)) return 0;
    double n = o->f.revenue - o->f.refunded;
    return n > 0 ? n : 0;
}

/* ---- a person's summary ---- */

void fld_sum_init(fld_sum_t *s)
{
    memset(&s->f, 0, sizeof(s->f));
    s->f.version = FLD_SUM_VERSION;
    s->f.seg = s->f.prev_seg = FLD_SEGMENT_NONE;
}

int fld_sum_encode(const fld_sum_t *s, sl_buf_t *b)
{
    b->len = 0;
    if (sl_buf_append(b, &s->f, sizeof(s->f))) return SL_ENOMEM;
    for (size_t i = 0; i < s->f.n_cats; i++) {
        uint8_t l = (uint8_t)strlen(s->cats[i].name);
        if (sl_buf_append(b, &s->cats[i].count, 4) || sl_buf_append(b, &l, 1) || sl_buf_append(b, s->cats[i].name, l))
            return SL_ENOMEM;
    }
    return 0;
}

int fld_sum_decode(const MDB_val *v, fld_sum_t *s)
{
    const unsigned char *p = v->mv_data, *end = p + v->mv_size;
    if (v->mv_size < sizeof(s->f)) return MDB_CORRUPTED;
    memcpy(&s->f, p, sizeof(s->f));
    p += sizeof(s->f);
    if (s->f.version != FLD_SUM_VERSION || s->f.n_cats > FLD_MAX_CATEGORIES || !isfinite(s->f.revenue) ||
        memchr(s->f.currency, 0, sizeof(s->f.currency)) == NULL)
        return MDB_CORRUPTED;
    for (size_t i = 0; i < s->f.n_cats; i++) {
        if (end - p < 5) return MDB_CORRUPTED;
        memcpy(&s->cats[i].count, p, 4);
        uint8_t l = p[4];
        p += 5;
        if (l > SL_FIELDS_CAT_BYTES || end - p < l) return MDB_CORRUPTED;
        memcpy(s->cats[i].name, p, l);
        s->cats[i].name[l] = '\0';
        p += l;
    }
    return p == end ? 0 : MDB_CORRUPTED;
}

/* the two earliest times of {a1, a2, b} (0: none) */
static void two_first(int64_t *first, int64_t *second, int64_t t)
{
    if (t == 0) return;
    if (*first == 0 || t < *first) {
        *second = *first;
        *first = t;
    } else if (*second == 0 || t < *second) {
        *second = t;
    }
}

static void cat_add(fld_sum_t *s, const char *name, uint32_t count, int max_categories)
{
    for (size_t i = 0; i < s->f.n_cats; i++)
        if (strcmp(s->cats[i].name, name) == 0) {
            s->cats[i].count += count;
            return;
        }
    if (s->f.n_cats >= (uint32_t)max_categories || s->f.n_cats >= FLD_MAX_CATEGORIES) {
        s->f.flags |= FS_CAT_OVERFLOW;
        return;
    }
    s->cats[s->f.n_cats].count = count;
    snprintf(s->cats[s->f.n_cats].name, sizeof(s->cats[0].name), "%s", name);
    s->f.n_cats++;
}

void fld_sum_order(fld_sum_t *s, const fld_order_t *o, int sign, int max_categories)
{
    (void)sign; /* only additions: a removal recomputes the summary from the ledger (dates) */
    if (!(o->f.flags & FO_PLACED) || (o->f.flags & FO_REFUNDED)) return;
    s->f.orders++;
    if (o->f.flags & FO_REV_KNOWN) {
        s->f.rev_orders++;
        s->f.revenue += fld_order_net(o);
    }
    if (o->f.flags & FO_PROMO) s->f.promo_orders++;
    two_first(&s->f.first_ms, &s->f.second_ms, o->f.ts_ms);
    if (o->f.ts_ms > s->f.last_ms) s->f.last_ms = o->f.ts_ms;
    if (o->f.currency[0]) memcpy(s->f.currency, o->f.currency, sizeof(s->f.currency));
    for (size_t i = 0; i < o->f.n_cats; i++) cat_add(s, o->cats[i], 1, max_categories);
}

void fld_sum_merge(fld_sum_t *s, const fld_sum_t *x, int max_categories)
{
    s->f.orders += x->f.orders;
    s->f.rev_orders += x->f.rev_orders;
    s->f.promo_orders += x->f.promo_orders;
    s->f.revenue += x->f.revenue;
    two_first(&s->f.first_ms, &s->f.second_ms, x->f.first_ms);
    two_first(&s->f.first_ms, &s->f.second_ms, x->f.second_ms);
    if (x->f.last_ms > s->f.last_ms) s->f.last_ms = x->f.last_ms;
    if (!s->f.currency[0]) memcpy(s->f.currency, x->f.currency, sizeof(s->f.currency));
    s->f.flags |= x->f.flags & FS_CAT_OVERFLOW;
    for (size_t i = 0; i < x->f.n_cats; i++) cat_add(s, x->cats[i].name, x->cats[i].count, max_categories);
}

/* ---- RFM ---- */

static int score_of(const double *th, double v)
{
    int sc = 1;
    for (int i = 0; i < 4; i++)
        if (v >= th[i]) sc = i + 2;
    return sc;
}

fld_rfm_t fld_rfm(const fld_conf_t *c, const fld_sum_t *s, int64_t now)
{
    fld_rfm_t out = {0, 0, 0, FLD_SEGMENT_PROSPECT};
    if (s->f.orders == 0) return out;
    int64_t age = now - s->f.last_ms;
    out.r = 1;
    for (int i = 3; i >= 0; i--)
        if (age <= c->recency[i]) out.r = 5 - i;
    out.f = score_of(c->frequency, (double)s->f.orders);
    out.m = score_of(c->monetary, s->f.revenue);
    int v[3] = {out.r, out.f, out.m};
    for (size_t i = 0; i < c->n_segments; i++) {
        const fld_segment_t *g = &c->segments[i];
        int hit = 1;
        for (int k = 0; k < 3; k++) hit &= v[k] >= g->lo[k] && v[k] <= g->hi[k];
        if (hit) {
            out.seg = (uint8_t)i;
            break;
        }
    }
    return out;
}

int64_t fld_rfm_next(const fld_conf_t *c, const fld_sum_t *s, int64_t now)
{
    if (s->f.orders == 0) return INT64_MAX;
    for (int i = 0; i < 4; i++)
        if (s->f.last_ms + c->recency[i] >= now) return s->f.last_ms + c->recency[i] + 1;
    return INT64_MAX;
}

const char *fld_segment_name(const fld_conf_t *c, uint8_t seg)
{
    if (seg == FLD_SEGMENT_PROSPECT) return "prospect";
    if (seg < c->n_segments) return c->segments[seg].name;
    return NULL;
}

/* ---- the flat list ---- */

static int flat_begin(fld_flat_t *fl, const char *name)
{
    if (fl->n == FLD_MAX_FLAT) return SL_ETOOBIG;
    fl->name[fl->n] = name;
    fl->off[fl->n] = fl->text.len;
    return 0;
}

static int flat_end(fld_flat_t *fl)
{
    if (fl->text.data == NULL) return SL_ENOMEM;
    fl->len[fl->n] = fl->text.len - fl->off[fl->n];
    fl->n++;
    return 0;
}

static int flat_u64(fld_flat_t *fl, const char *name, uint64_t v)
{
    int rc = flat_begin(fl, name);
    if (rc == 0) sl_buf_printf(&fl->text, "%llu", (unsigned long long)v);
    return rc ? rc : flat_end(fl);
}

static int flat_amount(fld_flat_t *fl, const char *name, double v, int have)
{
    int rc = flat_begin(fl, name);
    if (rc == 0) {
        if (have) sl_buf_append_amount(&fl->text, v);
        else sl_buf_appends(&fl->text, "null");
    }
    return rc ? rc : flat_end(fl);
}

static int flat_time(fld_flat_t *fl, const char *name, int64_t ms)
{
    int rc = flat_begin(fl, name);
    if (rc == 0) sl_buf_append_iso(&fl->text, ms);
    return rc ? rc : flat_end(fl);
}

static int flat_str(fld_flat_t *fl, const char *name, const char *s)
{
    int rc = flat_begin(fl, name);
    if (rc == 0) {
        if (s) sl_buf_append_json_str(&fl->text, s, strlen(s));
        else sl_buf_appends(&fl->text, "null");
    }
    return rc ? rc : flat_end(fl);
}

static int flat_raw(fld_flat_t *fl, const char *name, const char *text)
{
    int rc = flat_begin(fl, name);
    if (rc == 0) sl_buf_appends(&fl->text, text);
    return rc ? rc : flat_end(fl);
}

typedef struct {
    uint32_t count;
    const char *name;
} cat_rank_t;

/* categories by count, then name: the first is the top category */
static int cat_cmp(const void *a, const void *b)
{
    const cat_rank_t *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->name, y->name);
}

static int commerce_flatten(const fld_conf_t *c, const fld_sum_t *s, const fld_windows_t *w, int64_t now, fld_flat_t *fl)
{
    const fld_sum_fix_t *f = &s->f;
    int rc = flat_u64(fl, "orders", f->orders);
    if (rc == 0) rc = flat_amount(fl, "revenue", f->revenue, 1);
    if (rc == 0) rc = flat_amount(fl, "aov", f->rev_orders ? f->revenue / f->rev_orders : 0, f->rev_orders > 0);
    if (rc == 0) rc = flat_time(fl, "first_order_at", f->first_ms);
    if (rc == 0) rc = flat_time(fl, "second_order_at", f->second_ms);
    if (rc == 0) rc = flat_time(fl, "last_order_at", f->last_ms);
    if (rc == 0)
        rc = flat_amount(fl, "avg_days_between_orders",
                         f->orders > 1 ? (double)(f->last_ms - f->first_ms) / 86400000.0 / (f->orders - 1) : 0,
                         f->orders > 1);
    /* categories: sorted by name in the list; the top one by count */
    cat_rank_t *cs = NULL;
    if (rc == 0 && f->n_cats && (cs = malloc(f->n_cats * sizeof(*cs))) == NULL) rc = SL_ENOMEM;
    for (size_t i = 0; rc == 0 && i < f->n_cats; i++) cs[i] = (cat_rank_t){s->cats[i].count, s->cats[i].name};
    if (rc == 0 && (rc = flat_begin(fl, "categories")) == 0) {
        sl_buf_appends(&fl->text, "[");
        for (size_t i = 0; i < f->n_cats; i++) { /* first bought first */
            if (i) sl_buf_appends(&fl->text, ",");
            sl_buf_append_json_str(&fl->text, s->cats[i].name, strlen(s->cats[i].name));
        }
        sl_buf_appends(&fl->text, "]");
        rc = flat_end(fl);
    }
    if (rc == 0) rc = flat_u64(fl, "categories_count", f->n_cats);
    if (rc == 0) rc = flat_raw(fl, "categories_overflow", f->flags & FS_CAT_OVERFLOW ? "true" : "false");
    if (rc == 0 && f->n_cats) qsort(cs, f->n_cats, sizeof(*cs), cat_cmp);
    if (rc == 0) rc = flat_str(fl, "top_category", f->n_cats ? cs[0].name : NULL);
    free(cs);
    double share = f->orders ? (double)f->promo_orders / f->orders : 0;
    if (rc == 0) rc = flat_u64(fl, "promo_orders", f->promo_orders);
    if (rc == 0) rc = flat_amount(fl, "promo_share", share, f->orders > 0);
    if (rc == 0)
        rc = flat_raw(fl, "promophile",
                      f->orders && (int)f->promo_orders >= c->promo_min_orders && share >= c->promo_min_share ? "true"
                                                                                                                : "false");
    for (size_t i = 0; rc == 0 && i < c->n_windows; i++) {
        fld_flat_t *x = fl;
        snprintf(x->wname[i][0], sizeof(x->wname[0][0]), "orders_%s", c->window_names[i]);
        snprintf(x->wname[i][1], sizeof(x->wname[0][0]), "revenue_%s", c->window_names[i]);
        snprintf(x->wname[i][2], sizeof(x->wname[0][0]), "aov_%s", c->window_names[i]);
        rc = flat_u64(fl, x->wname[i][0], w ? w->orders[i] : 0);
        if (rc == 0) rc = flat_amount(fl, x->wname[i][1], w ? w->revenue[i] : 0, 1);
        if (rc == 0)
            rc = flat_amount(fl, x->wname[i][2], w && w->rev_orders[i] ? w->revenue[i] / w->rev_orders[i] : 0,
                             w && w->rev_orders[i]);
    }
    return rc;
}

static int rfm_flatten(const fld_conf_t *c, const fld_sum_t *s, int64_t now, fld_flat_t *fl)
{
    const fld_sum_fix_t *f = &s->f;
    int rc = 0;
    /* RFM against now; the segment it was last put in says since when and
     * what came before (a move the timer has not made yet is shown as made) */
    fld_rfm_t r = fld_rfm(c, s, now);
    uint8_t prev = f->prev_seg;
    int64_t since = f->seg_since_ms;
    if (r.seg != f->seg && f->seg != FLD_SEGMENT_NONE) {
        prev = f->seg;
        /* r.r 0: no orders left (a prospect), no threshold crossed */
        int64_t crossed = r.r >= 1 && r.r < 5 ? f->last_ms + c->recency[4 - r.r] : 0;
        since = crossed > since ? crossed : since;
    }
    if (rc == 0) rc = r.r ? flat_u64(fl, "rfm.r", (uint64_t)r.r) : flat_raw(fl, "rfm.r", "null");
    if (rc == 0) rc = r.f ? flat_u64(fl, "rfm.f", (uint64_t)r.f) : flat_raw(fl, "rfm.f", "null");
    if (rc == 0) rc = r.m ? flat_u64(fl, "rfm.m", (uint64_t)r.m) : flat_raw(fl, "rfm.m", "null");
    if (rc == 0) rc = flat_str(fl, "rfm.segment", fld_segment_name(c, r.seg));
    if (rc == 0) rc = flat_time(fl, "rfm.since", since);
    if (rc == 0) rc = flat_str(fl, "rfm.previous", fld_segment_name(c, prev));
    return rc;
}


typedef struct {
    const char *text;
    size_t n;
} view_t;

static sl_jval_t label_view(void *arg)
{
    const view_t *v = arg;
    return sl_jroot(v->text, v->n);
}

int fld_flatten(const fld_conf_t *c, const fld_sum_t *s, const fld_windows_t *w, const sl_buf_t *gvals, int64_t now,
                fld_flat_t *fl)
{
    fl->n = 0;
    fl->text.len = 0;
    int rc = c->commerce ? commerce_flatten(c, s, w, now, fl) : 0;
    /* generic fields, in config order (labels after the others: they read them) */
    for (size_t i = 0; rc == 0 && i < c->n_gfields; i++) {
        const fld_gfield_t *g = &c->gfields[i];
        if (g->type == FG_LABEL) continue;
        if ((rc = flat_begin(fl, g->name))) break;
        if (gvals && gvals[i].len) sl_buf_append(&fl->text, gvals[i].data, gvals[i].len);
        else {
            fld_gstate_t *e = malloc(sizeof(*e));
            if (e == NULL) return SL_ENOMEM;
            fld_gstate_init(e, g);
            rc = fld_gstate_value(g, e, now, &fl->text);
            free(e);
        }
        if (rc == 0) rc = flat_end(fl);
    }
    if (rc == 0 && c->commerce) rc = rfm_flatten(c, s, now, fl);
    int labels = 0;
    for (size_t i = 0; i < c->n_gfields; i++) labels |= c->gfields[i].type == FG_LABEL;
    if (rc || !labels) return rc;
    /* the view labels read: {"computed": {every other field}} */
    sl_buf_t *v = &fl->scratch;
    v->len = 0;
    sl_buf_appends(v, "{\"computed\":");
    if ((rc = fld_flat_object(fl, v)) || (rc = sl_buf_appends(v, "}"))) return rc;
    view_t vv = {v->data, v->len};
    sl_rules_ctx_t ctx = {.now_ms = now, .profile = label_view, .profile_arg = &vv};
    for (size_t i = 0; rc == 0 && i < c->n_gfields; i++) {
        const fld_gfield_t *g = &c->gfields[i];
        if (g->type != FG_LABEL) continue;
        const char *val = g->else_value;
        for (size_t k = 0; k < g->n_labels; k++)
            if (sl_rules_eval(g->labels[k].cond, &ctx)) {
                val = g->labels[k].value;
                break;
            }
        rc = flat_raw(fl, g->name, val);
    }
    return rc;
}

int fld_flat_tracked(const char *name) { return strcmp(name, "rfm.since") != 0 && strcmp(name, "rfm.previous") != 0; }

int fld_flat_object(const fld_flat_t *fl, sl_buf_t *out)
{
    /* the rfm.* pairs as one nested object, after the others */
    int lead = 0, rfm = 0;
    sl_buf_appends(out, "{");
    for (size_t i = 0; i < fl->n; i++) {
        if (strncmp(fl->name[i], "rfm.", 4) == 0) {
            rfm = 1;
            continue;
        }
        if (lead++) sl_buf_appends(out, ",");
        sl_buf_append_json_str(out, fl->name[i], strlen(fl->name[i]));
        sl_buf_appends(out, ":");
        sl_buf_append(out, fl->text.data + fl->off[i], fl->len[i]);
    }
    if (rfm) {
        sl_buf_appends(out, lead ? ",\"rfm\":{" : "\"rfm\":{");
        int in = 0;
        for (size_t k = 0; k < fl->n; k++) {
            if (strncmp(fl->name[k], "rfm.", 4) != 0) continue;
            if (in++) sl_buf_appends(out, ",");
            sl_buf_append_json_str(out, fl->name[k] + 4, strlen(fl->name[k] + 4));
            sl_buf_appends(out, ":");
            sl_buf_append(out, fl->text.data + fl->off[k], fl->len[k]);
        }
        sl_buf_appends(out, "}");
    }
    sl_buf_appends(out, "}");
    return out->data ? 0 : SL_ENOMEM;
}
