/* generic.c - generic computed fields (docs/COMPUTED.md, "Generic
 * fields"): count, sum, avg, min, max, first, last, distinct_count,
 * distinct_list, most_frequent, score and label, each over an event (and a
 * `where`), lifetime or over a window kept as time buckets (calendar days
 * in the configured timezone for long windows, finer for short ones). Only
 * aggregates that merge exactly. Their config (parsed with the section),
 * their state record, how an event and a merge change it, and its value. */
#include "fields_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const type_names[] = {NULL,    "count", "sum",  "avg",            "min",           "max",
                                         "first", "last",  "distinct_count", "distinct_list", "most_frequent",
                                         "score", "label"};
#define N_TYPES (sizeof(type_names) / sizeof(*type_names))

/* ---- calendar days ---- */

/* the instant local day `day` begins (its first second: DST days are 23 or 25 hours) */
int64_t fld_local_day_start(int64_t day)
{
    /* from a UTC guess, step to the first second whose local day is `day` */
    int64_t lo = day * 86400000 - 15 * 3600000LL, hi = day * 86400000 + 15 * 3600000LL;
    while (hi - lo > 1000) {
        int64_t mid = lo + (hi - lo) / 2;
        if (sl_local_day(mid) < day) lo = mid;
        else hi = mid;
    }
    return hi - hi % 1000;
}

/* Most events of a stage transaction fall on the same local day: each
 * thread keeps the last day's bounds (localtime_r per event was 1 % of the
 * stage with windowed fields), until the timezone changes. */
int64_t fld_local_day(int64_t ms)
{
    static _Thread_local struct {
        unsigned gen;
        int64_t lo, hi, day; /* [lo, hi) is local day `day` */
    } c = {.lo = 1, .hi = 0};
    unsigned gen = atomic_load(&sl_timezone_gen);
    if (gen == c.gen && ms >= c.lo && ms < c.hi) return c.day;
    int64_t day = sl_local_day(ms);
    c.gen = gen, c.day = day;
    c.lo = fld_local_day_start(day), c.hi = fld_local_day_start(day + 1);
    if (!(ms >= c.lo && ms < c.hi)) c.lo = 1, c.hi = 0; /* (a clock the search cannot bound: not kept) */
    return day;
}

static int64_t bucket_of(const fld_gfield_t *g, int64_t ms)
{
    if (g->bucket_ms == 0) return fld_local_day(ms);
    return ms >= 0 ? ms / g->bucket_ms : -((-ms + g->bucket_ms - 1) / g->bucket_ms);
}

static int64_t bucket_start(const fld_gfield_t *g, int64_t id)
{
    return g->bucket_ms == 0 ? fld_local_day_start(id) : id * g->bucket_ms;
}

/* the oldest bucket inside the window at now */
static int64_t window_lo(const fld_gfield_t *g, int64_t now)
{
    int64_t width = g->bucket_ms ? g->bucket_ms : 86400000;
    int64_t n = (g->window_ms + width - 1) / width;
    return bucket_of(g, now) - n + 1;
}

/* ---- config ---- */

void fld_gfields_free(fld_conf_t *c)
{
    for (size_t i = 0; i < c->n_gfields; i++) {
        fld_gfield_t *g = &c->gfields[i];
        free(g->event);
        sl_rules_free(g->where);
        sl_cfg_strv_free(g->path, g->n_path);
        for (size_t k = 0; k < g->n_points; k++) {
            free(g->points[k].event);
            sl_rules_free(g->points[k].where);
        }
        free(g->points);
        for (size_t k = 0; k < g->n_labels; k++) {
            sl_rules_free(g->labels[k].cond);
            free(g->labels[k].value);
        }
        free(g->labels);
        free(g->else_value);
    }
    free(c->gfields);
    c->gfields = NULL;
    c->n_gfields = 0;
}

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > FLD_NAME_MAX) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_')) return 0;
    return 1;
}

/* a scalar as JSON text, strdup'ed: the label values, `else` */
static int scalar_text(sl_cfg_ctx_t *x, const cJSON *j, const char *what, char **out)
{
    if (j == NULL || cJSON_IsArray(j) || cJSON_IsObject(j))
        return sl_cfg_error(x, "%s must be a string, a number, true, false or null", what);
    char *t = cJSON_PrintUnformatted(j);
    if (t == NULL) return SL_ENOMEM;
    if (strlen(t) > FLD_VALUE_MAX) {
        cJSON_free(t);
        return sl_cfg_error(x, "%s is longer than %d bytes", what, FLD_VALUE_MAX);
    }
    *out = strdup(t);
    cJSON_free(t);
    return *out ? 0 : SL_ENOMEM;
}

static int parse_kind(sl_cfg_ctx_t *x, const cJSON *j, const char *path, char **event, sl_cond_t **where)
{
    int rc = sl_cfg_str(x, j, "event", path, event, 1);
    if (rc) return rc;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(j, "where");
    char wp[96];
    snprintf(wp, sizeof(wp), "%s.where", path);
    rc = w ? sl_rules_compile(w, SL_RULES_EVENT, wp, where, x->err, x->errlen) : 0;
    return rc == SL_ETOOBIG ? SL_EINVAL : rc;
}

static int parse_one(sl_cfg_ctx_t *x, const cJSON *j, size_t idx, fld_gfield_t *g)
{
    char path[48], *s = NULL;
    char *def = cJSON_PrintUnformatted(j); /* the definition as written: a change starts the field afresh */
    if (def == NULL) return SL_ENOMEM;
    g->def = (uint32_t)sl_hash128(def, strlen(def), 0x5e1dULL).lo | 1u; /* never 0: "no definition" */
    cJSON_free(def);
    snprintf(path, sizeof(path), "computed.fields[%zu]", idx);
    static const char *const keys[] = {"name", "type", "event", "where", "property", "window", "max_values",
                                       "points", "labels", "else", NULL};
    int rc = sl_cfg_check_keys(x, j, path, keys);
    if (rc == 0) rc = sl_cfg_str(x, j, "name", path, &s, 1);
    if (rc) goto out;
    if (!name_ok(s)) {
        rc = sl_cfg_error(x, "%s.name must be 1 to %d of a-z, 0-9 and _", path, FLD_NAME_MAX);
        goto out;
    }
    snprintf(g->name, sizeof(g->name), "%s", s);
    free(s);
    s = NULL;
    if ((rc = sl_cfg_str(x, j, "type", path, &s, 1))) goto out;
    for (size_t i = 1; i < N_TYPES; i++)
        if (strcmp(type_names[i], s) == 0) g->type = (int)i;
    if (g->type == 0) {
        rc = sl_cfg_error(x, "%s.type \"%.32s\" is not one of count, sum, avg, min, max, first, last, distinct_count, "
                             "distinct_list, most_frequent, score, label", path, s);
        goto out;
    }
    int needs_prop = g->type >= FG_SUM && g->type <= FG_MOST_FREQUENT;
    if (g->type == FG_LABEL) {
        const cJSON *ls = cJSON_GetObjectItemCaseSensitive(j, "labels");
        if (!cJSON_IsArray(ls) || cJSON_GetArraySize(ls) < 1 || cJSON_GetArraySize(ls) > 32) {
            rc = sl_cfg_error(x, "%s.labels must be an array of 1 to 32 {\"if\": condition, \"value\": value}", path);
            goto out;
        }
        if ((g->labels = calloc((size_t)cJSON_GetArraySize(ls), sizeof(*g->labels))) == NULL) {
            rc = SL_ENOMEM;
            goto out;
        }
        for (const cJSON *e = ls->child; e && rc == 0; e = e->next) {
            char lp[96];
            snprintf(lp, sizeof(lp), "%s.labels[%zu]", path, g->n_labels);
            static const char *const lk[] = {"if", "value", NULL};
            fld_label_t *l = &g->labels[g->n_labels++];
            if ((rc = sl_cfg_check_keys(x, e, lp, lk))) break;
            char ip[112], vp[112];
            snprintf(ip, sizeof(ip), "%s.if", lp);
            snprintf(vp, sizeof(vp), "%s.value", lp);
            const cJSON *cond = cJSON_GetObjectItemCaseSensitive(e, "if");
            if (cond == NULL) rc = sl_cfg_error(x, "%s needs a condition", ip);
            else rc = sl_rules_compile(cond, SL_RULES_PROFILE, ip, &l->cond, x->err, x->errlen);
            if (rc == SL_ETOOBIG) rc = SL_EINVAL;
            if (rc == 0) rc = scalar_text(x, cJSON_GetObjectItemCaseSensitive(e, "value"), vp, &l->value);
        }
        const cJSON *el = cJSON_GetObjectItemCaseSensitive(j, "else");
        char ep[64];
        snprintf(ep, sizeof(ep), "%s.else", path);
        if (rc == 0) rc = el ? scalar_text(x, el, ep, &g->else_value) : (g->else_value = strdup("null")) ? 0 : SL_ENOMEM;
        goto out;
    }
    if (g->type == FG_SCORE) {
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(j, "points");
        if (!cJSON_IsArray(ps) || cJSON_GetArraySize(ps) < 1 || cJSON_GetArraySize(ps) > 32) {
            rc = sl_cfg_error(x, "%s.points must be an array of 1 to 32 {\"event\", \"where\", \"points\"}", path);
            goto out;
        }
        if ((g->points = calloc((size_t)cJSON_GetArraySize(ps), sizeof(*g->points))) == NULL) {
            rc = SL_ENOMEM;
            goto out;
        }
        for (const cJSON *e = ps->child; e && rc == 0; e = e->next) {
            char pp[96];
            snprintf(pp, sizeof(pp), "%s.points[%zu]", path, g->n_points);
            static const char *const pk[] = {"event", "where", "points", NULL};
            fld_pts_t *p = &g->points[g->n_points++];
            if ((rc = sl_cfg_check_keys(x, e, pp, pk)) || (rc = parse_kind(x, e, pp, &p->event, &p->where))) break;
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "points");
            if (!cJSON_IsNumber(n) || !isfinite(n->valuedouble) || fabs(n->valuedouble) > 1e9)
                rc = sl_cfg_error(x, "%s.points must be a number within +-1e9", pp);
            else p->points = n->valuedouble;
        }
    } else if ((rc = parse_kind(x, j, path, &g->event, &g->where))) {
        goto out;
    }
    if (rc) goto out;
    const cJSON *prop = cJSON_GetObjectItemCaseSensitive(j, "property");
    if (needs_prop != (prop != NULL)) {
        rc = sl_cfg_error(x, needs_prop ? "%s.property is required for %s (\"properties.total\")"
                                        : "%s.property is not read by %s", path, type_names[g->type]);
        goto out;
    }
    if (prop) {
        if (!cJSON_IsString(prop) || prop->valuestring[0] == '\0' || strlen(prop->valuestring) > 256 ||
            strchr(prop->valuestring, '[')) {
            rc = sl_cfg_error(x, "%s.property must be a dotted path of the event (\"properties.total\"), "
                                 "without []", path);
            goto out;
        }
        /* split on dots */
        char *dup = strdup(prop->valuestring), *save = NULL;
        if (dup == NULL) {
            rc = SL_ENOMEM;
            goto out;
        }
        for (char *seg = strtok_r(dup, ".", &save); seg && rc == 0; seg = strtok_r(NULL, ".", &save)) {
            char **v = realloc(g->path, (g->n_path + 1) * sizeof(*v));
            if (v == NULL || (v[g->n_path] = strdup(seg)) == NULL) rc = SL_ENOMEM;
            if (v) g->path = v;
            if (rc == 0) g->n_path++;
        }
        free(dup);
        if (rc == 0 && (g->n_path == 0 || g->n_path > 8))
            rc = sl_cfg_error(x, "%s.property must have 1 to 8 segments", path);
        if (rc) goto out;
    }
    if ((rc = sl_cfg_duration(x, j, "window", path, &g->window_ms))) goto out;
    if (g->window_ms) {
        if (!(g->type <= FG_MAX || g->type == FG_SCORE)) {
            rc = sl_cfg_error(x, "%s.window applies to count, sum, avg, min, max and score", path);
            goto out;
        }
        if (g->window_ms < 1000 || g->window_ms > 730 * 86400000LL) {
            rc = sl_cfg_error(x, "%s.window must be from 1s to 730d", path);
            goto out;
        }
        const int64_t day = 86400000, hour = 3600000, minute = 60000;
        g->bucket_ms = g->window_ms >= 2 * day ? 0 : g->window_ms >= 2 * hour ? hour : g->window_ms >= 2 * minute ? minute : 1000;
        if (g->bucket_ms == 0 && g->window_ms % day) {
            rc = sl_cfg_error(x, "%s.window of 2 days or more counts whole calendar days (\"90d\")", path);
            goto out;
        }
    }
    g->max_values = 50;
    if (g->type >= FG_DISTINCT_COUNT && g->type <= FG_MOST_FREQUENT &&
        (rc = sl_cfg_int(x, j, "max_values", path, 1, FLD_MAX_VALUES, "", &g->max_values)))
        goto out;
out:
    free(s);
    return rc;
}

int fld_gfields_parse(sl_cfg_ctx_t *x, const cJSON *json, fld_conf_t *c)
{
    if (json == NULL) return 0;
    if (!cJSON_IsArray(json) || cJSON_GetArraySize(json) > FLD_MAX_GFIELDS)
        return sl_cfg_error(x, "computed.fields must be an array of at most %d fields", FLD_MAX_GFIELDS);
    size_t n = (size_t)cJSON_GetArraySize(json);
    if (n == 0) return 0;
    if ((c->gfields = calloc(n, sizeof(*c->gfields))) == NULL) return SL_ENOMEM;
    int rc = 0;
    for (const cJSON *j = json->child; j && rc == 0; j = j->next) {
        size_t i = c->n_gfields++;
        rc = parse_one(x, j, i, &c->gfields[i]);
        for (size_t k = 0; k < i && rc == 0; k++)
            if (strcmp(c->gfields[k].name, c->gfields[i].name) == 0)
                rc = sl_cfg_error(x, "computed.fields[%zu].name \"%s\" is used twice", i, c->gfields[i].name);
    }
    return rc;
}

/* ---- state ---- */

void fld_gstate_init(fld_gstate_t *s, const fld_gfield_t *g)
{
    memset(&s->f, 0, sizeof(s->f));
    s->f.version = FLD_GSTATE_VERSION;
    s->f.type = (uint8_t)g->type;
    s->f.min = INFINITY;
    s->f.max = -INFINITY;
}

/* The record keeps what the type reads, nothing else, in varints (a count
 * over a 30-day window that saw one day: 9 bytes). Layout: type, flags,
 * marks (GM_*: which parts follow); the lifetime aggregates the type uses
 * (a window keeps none: its buckets say it); first_ts / last_ts (first,
 * last); the timer; the values first, last, told (a byte of length, then
 * the text); the buckets (how many, the first's id, then each one's offset
 * from it, count and the aggregates its type uses); the distinct values
 * (how many, then each one's count, a byte of length and the text).
 * Integers are LEB128 varints, signed ones zigzagged; a number is a varint
 * of its zigzagged integer shifted left once when it is a whole number
 * within 2^50 (not -0), else the single byte 1 and its 8 bytes. */
#define GM_TIMER 1u
#define GM_LIFETIME 2u
#define GM_BUCKETS 4u
#define GM_VALUES 8u
#define GM_FIRST 16u
#define GM_LAST 32u
#define GM_TOLD 64u
#define USES_SUM(t) ((t) == FG_SUM || (t) == FG_AVG || (t) == FG_SCORE)
#define BUCKET_ID_MAX ((int64_t)1 << 36)

size_t fld_varint(unsigned char out[10], uint64_t v)
{
    size_t n = 0;
    do {
        out[n] = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v) out[n] |= 0x80;
        n++;
    } while (v);
    return n;
}

static int put_uv(sl_buf_t *b, uint64_t v)
{
    unsigned char x[10];
    return sl_buf_append(b, x, fld_varint(x, v));
}

static uint64_t zz(int64_t v) { return ((uint64_t)v << 1) ^ (v < 0 ? UINT64_MAX : 0); }
static int64_t unzz(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

static int put_sv(sl_buf_t *b, int64_t v) { return put_uv(b, zz(v)); }

static int put_num(sl_buf_t *b, double x)
{
    const double lim = 1125899906842624.0; /* 2^50 */
    if (x >= -lim && x <= lim && x == (double)(int64_t)x && !(x == 0 && signbit(x)))
        return put_uv(b, zz((int64_t)x) << 1);
    unsigned char raw = 1;
    return sl_buf_append(b, &raw, 1) || sl_buf_append(b, &x, 8);
}

static int put_text(sl_buf_t *b, const char *t, size_t n)
{
    uint8_t l = (uint8_t)n;
    return sl_buf_append(b, &l, 1) || sl_buf_append(b, t, n);
}

int fld_gstate_encode(const fld_gstate_t *s, sl_buf_t *b)
{
    b->len = 0;
    const fld_gfix_t *f = &s->f;
    int t = f->type, rc = 0;
    unsigned marks = (f->timer_ms ? GM_TIMER : 0) | (f->count ? GM_LIFETIME : 0) | (f->n_buckets ? GM_BUCKETS : 0) |
                     (f->n_values ? GM_VALUES : 0) | (f->first_len ? GM_FIRST : 0) | (f->last_len ? GM_LAST : 0) |
                     (f->told_len ? GM_TOLD : 0);
    uint8_t h[3] = {f->type, f->flags, (uint8_t)marks};
    rc |= sl_buf_append(b, h, 3);
    if (marks & GM_LIFETIME) {
        rc |= put_uv(b, f->count);
        if (USES_SUM(t)) rc |= put_num(b, f->sum);
        if (t == FG_MIN) rc |= put_num(b, f->min);
        if (t == FG_MAX) rc |= put_num(b, f->max);
    }
    if (t == FG_FIRST) rc |= put_sv(b, f->first_ts);
    if (t == FG_LAST) rc |= put_sv(b, f->last_ts);
    if (marks & GM_TIMER) rc |= put_sv(b, f->timer_ms);
    if (marks & GM_FIRST) rc |= put_text(b, s->first, f->first_len);
    if (marks & GM_LAST) rc |= put_text(b, s->last, f->last_len);
    if (marks & GM_TOLD) rc |= put_text(b, s->told, f->told_len);
    if (marks & GM_BUCKETS) {
        rc |= put_uv(b, f->n_buckets) | put_sv(b, s->buckets[0].id);
        for (size_t i = 0; i < f->n_buckets; i++) {
            const fld_bucket_t *k = &s->buckets[i];
            /* sorted: offsets from the first, within FLD_MAX_BUCKETS of a window */
            rc |= put_uv(b, (uint64_t)(k->id - s->buckets[0].id)) | put_uv(b, k->count);
            if (USES_SUM(t)) rc |= put_num(b, k->sum);
            if (t == FG_MIN) rc |= put_num(b, k->min);
            if (t == FG_MAX) rc |= put_num(b, k->max);
        }
    }
    if (marks & GM_VALUES) {
        rc |= put_uv(b, f->n_values);
        for (size_t i = 0; i < f->n_values; i++)
            rc |= put_uv(b, s->values[i].count) | put_text(b, s->values[i].text, strlen(s->values[i].text));
    }
    return rc ? SL_ENOMEM : 0;
}

typedef struct {
    const unsigned char *p, *end;
    int bad;
} rd_t;

static void take(rd_t *r, void *out, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        memset(out, 0, n);
        return;
    }
    memcpy(out, r->p, n);
    r->p += n;
}

static uint64_t take_uv(rd_t *r)
{
    uint64_t v = 0;
    for (int shift = 0; !r->bad; shift += 7) {
        if (r->p == r->end || shift > 63) break;
        unsigned char c = *r->p++;
        if (shift == 63 && c > 1) break; /* past 64 bits */
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return v;
    }
    r->bad = 1;
    return 0;
}

static int64_t take_sv(rd_t *r) { return unzz(take_uv(r)); }

static double take_num(rd_t *r)
{
    uint64_t v = take_uv(r);
    if (r->bad) return 0;
    if (!(v & 1)) return (double)unzz(v >> 1);
    double x = 0;
    if (v != 1) r->bad = 1;
    take(r, &x, 8);
    return x;
}

/* a length byte and its text, at most max bytes, into out (NUL-terminated) */
static size_t take_text(rd_t *r, char *out, size_t max)
{
    uint8_t l = 0;
    take(r, &l, 1);
    if (l > max) r->bad = 1;
    take(r, out, r->bad ? 0 : l);
    out[r->bad ? 0 : l] = '\0';
    return r->bad ? 0 : l;
}

int fld_gstate_decode(const MDB_val *v, fld_gstate_t *s)
{
    rd_t r = {v->mv_data, (const unsigned char *)v->mv_data + v->mv_size, 0};
    fld_gfix_t *f = &s->f;
    memset(f, 0, sizeof(*f));
    uint8_t h[3];
    take(&r, h, 3);
    if (r.bad || h[0] < FG_COUNT || h[0] > FG_SCORE || h[2] > 127) return MDB_CORRUPTED;
    int t = h[0];
    unsigned marks = h[2];
    f->version = FLD_GSTATE_VERSION, f->type = h[0], f->flags = h[1];
    f->min = INFINITY, f->max = -INFINITY;
    if (marks & GM_LIFETIME) {
        f->count = take_uv(&r);
        if (USES_SUM(t)) f->sum = take_num(&r);
        if (t == FG_MIN) f->min = take_num(&r);
        if (t == FG_MAX) f->max = take_num(&r);
    }
    if (t == FG_FIRST) f->first_ts = take_sv(&r);
    if (t == FG_LAST) f->last_ts = take_sv(&r);
    if (marks & GM_TIMER) f->timer_ms = take_sv(&r);
    s->first[0] = s->last[0] = s->told[0] = '\0';
    if (marks & GM_FIRST) f->first_len = (uint32_t)take_text(&r, s->first, FLD_VALUE_MAX);
    if (marks & GM_LAST) f->last_len = (uint32_t)take_text(&r, s->last, FLD_VALUE_MAX);
    if (marks & GM_TOLD) f->told_len = (uint32_t)take_text(&r, s->told, sizeof(s->told) - 1);
    if (marks & GM_BUCKETS) {
        uint64_t nb = take_uv(&r);
        int64_t first_id = take_sv(&r);
        /* bucket ids are days, hours, minutes or seconds since 1970: within
         * 2^36 (a day's start, id * 86400000, stays within int64); sorted,
         * each once (the encoder writes them so) */
        if (nb == 0 || nb > FLD_MAX_BUCKETS || first_id > BUCKET_ID_MAX || first_id < -BUCKET_ID_MAX) r.bad = 1;
        f->n_buckets = r.bad ? 0 : (uint32_t)nb;
        uint64_t prev = 0;
        for (size_t i = 0; i < f->n_buckets && !r.bad; i++) {
            fld_bucket_t *k = &s->buckets[i];
            uint64_t off = take_uv(&r);
            if (off > UINT32_MAX || (i == 0 ? off != 0 : off <= prev)) r.bad = 1;
            prev = off;
            k->id = first_id + (int64_t)(r.bad ? 0 : off);
            k->count = take_uv(&r);
            k->sum = 0, k->min = INFINITY, k->max = -INFINITY;
            if (USES_SUM(t)) k->sum = take_num(&r);
            if (t == FG_MIN) k->min = take_num(&r);
            if (t == FG_MAX) k->max = take_num(&r);
            if (!isfinite(k->sum) || isnan(k->min) || isnan(k->max)) r.bad = 1;
        }
    }
    if (marks & GM_VALUES) {
        uint64_t nv = take_uv(&r);
        if (nv == 0 || nv > FLD_MAX_VALUES) r.bad = 1;
        f->n_values = r.bad ? 0 : (uint32_t)nv;
        for (size_t i = 0; i < f->n_values && !r.bad; i++) {
            uint64_t c = take_uv(&r);
            if (c > UINT32_MAX) r.bad = 1;
            s->values[i].count = (uint32_t)c;
            take_text(&r, s->values[i].text, FLD_VALUE_MAX);
        }
    }
    if (!isfinite(f->sum) || isnan(f->min) || isnan(f->max)) r.bad = 1;
    return r.bad || r.p != r.end ? MDB_CORRUPTED : 0;
}

/* ---- what an event does ---- */

/* the event's value at g's property: its JSON text (a scalar), or absent */
static sl_jval_t prop_of(const fld_gfield_t *g, const sl_stage_event_t *ev)
{
    sl_jval_t v = sl_jindex_get(ev->top, g->path[0]);
    for (size_t i = 1; i < g->n_path && v.n; i++) v = sl_jget(v, g->path[i]);
    int t = sl_jtype(v);
    return t == SL_JSTR || t == SL_JNUM || t == SL_JTRUE || t == SL_JFALSE ? v : (sl_jval_t){0};
}

static void bucket_add(fld_gstate_t *s, int64_t id, uint64_t count, double sum, double mn, double mx)
{
    size_t i = 0;
    while (i < s->f.n_buckets && s->buckets[i].id < id) i++;
    if (i < s->f.n_buckets && s->buckets[i].id == id) {
        fld_bucket_t *b = &s->buckets[i];
        b->count += count;
        b->sum += sum;
        if (mn < b->min) b->min = mn;
        if (mx > b->max) b->max = mx;
        return;
    }
    if (s->f.n_buckets == FLD_MAX_BUCKETS) { /* full: the oldest goes (windows hold fewer) */
        if (i == 0) return;
        memmove(&s->buckets[0], &s->buckets[1], (i - 1) * sizeof(s->buckets[0]));
        i--;
    } else {
        memmove(&s->buckets[i + 1], &s->buckets[i], (s->f.n_buckets - i) * sizeof(s->buckets[0]));
        s->f.n_buckets++;
    }
    s->buckets[i] = (fld_bucket_t){id, count, sum, mn, mx};
}

/* drops buckets that left the window at now */
void fld_gstate_prune(const fld_gfield_t *g, fld_gstate_t *s, int64_t now)
{
    if (!g->window_ms) return;
    int64_t lo = window_lo(g, now);
    size_t k = 0;
    while (k < s->f.n_buckets && s->buckets[k].id < lo) k++;
    memmove(&s->buckets[0], &s->buckets[k], (s->f.n_buckets - k) * sizeof(s->buckets[0]));
    s->f.n_buckets -= (uint32_t)k;
}

static void value_add(const fld_gfield_t *g, fld_gstate_t *s, const char *text, size_t n, uint32_t count)
{
    for (size_t i = 0; i < s->f.n_values; i++)
        if (strlen(s->values[i].text) == n && memcmp(s->values[i].text, text, n) == 0) {
            s->values[i].count += count;
            return;
        }
    if (s->f.n_values >= (uint32_t)g->max_values) {
        s->f.flags |= FG_OVERFLOW;
        return;
    }
    memcpy(s->values[s->f.n_values].text, text, n);
    s->values[s->f.n_values].text[n] = '\0';
    s->values[s->f.n_values++].count = count;
}

int fld_gfield_matches(const fld_gfield_t *g, const char *kind, size_t kind_len, const sl_stage_event_t *ev,
                       int64_t now, double *points)
{
    *points = 0;
    sl_rules_ctx_t rc = {.event = ev->root, .event_top = ev->top, .now_ms = now};
    if (g->type == FG_SCORE) {
        int hit = 0;
        for (size_t i = 0; i < g->n_points; i++)
            if (strlen(g->points[i].event) == kind_len && memcmp(g->points[i].event, kind, kind_len) == 0 &&
                (g->points[i].where == NULL || sl_rules_eval(g->points[i].where, &rc))) {
                *points += g->points[i].points;
                hit = 1;
            }
        return hit;
    }
    if (g->event == NULL || strlen(g->event) != kind_len || memcmp(g->event, kind, kind_len) != 0) return 0;
    return g->where == NULL || sl_rules_eval(g->where, &rc);
}

int fld_gstate_apply(const fld_gfield_t *g, fld_gstate_t *s, const sl_stage_event_t *ev, double points, int64_t now)
{
    int64_t ts = ev->ctx->ts_ms;
    if (g->window_ms && bucket_of(g, ts) < window_lo(g, now)) return 0; /* already out of its window */
    double x = 0;
    sl_jval_t v = {0};
    if (g->n_path) {
        v = prop_of(g, ev);
        if (v.n == 0 || v.n > FLD_VALUE_MAX) return 0; /* no value: the event does not count for it */
        if (g->type >= FG_SUM && g->type <= FG_MAX && (!sl_jnum(v, &x) || !sl_amount_ok(x))) return 0;
    }
    if (g->type == FG_SCORE) x = points;
    if (g->window_ms) {
        bucket_add(s, bucket_of(g, ts), 1, x, x, x);
        fld_gstate_prune(g, s, now);
    } else {
        s->f.count++;
        if (sl_amount_ok(s->f.sum + x)) s->f.sum += x;
        if (x < s->f.min) s->f.min = x;
        if (x > s->f.max) s->f.max = x;
    }
    if (g->type == FG_FIRST && v.n && (s->f.first_len == 0 || ts < s->f.first_ts)) {
        memcpy(s->first, v.p, v.n);
        s->first[v.n] = '\0';
        s->f.first_len = (uint32_t)v.n;
        s->f.first_ts = ts;
    }
    if (g->type == FG_LAST && v.n && (s->f.last_len == 0 || ts >= s->f.last_ts)) {
        memcpy(s->last, v.p, v.n);
        s->last[v.n] = '\0';
        s->f.last_len = (uint32_t)v.n;
        s->f.last_ts = ts;
    }
    if (g->type >= FG_DISTINCT_COUNT && g->type <= FG_MOST_FREQUENT) value_add(g, s, v.p, v.n, 1);
    return 1;
}

void fld_gstate_merge(const fld_gfield_t *g, fld_gstate_t *s, const fld_gstate_t *x)
{
    for (size_t i = 0; i < x->f.n_buckets; i++) {
        const fld_bucket_t *b = &x->buckets[i];
        bucket_add(s, b->id, b->count, b->sum, b->min, b->max);
    }
    s->f.count += x->f.count;
    if (sl_amount_ok(s->f.sum + x->f.sum)) s->f.sum += x->f.sum;
    if (x->f.min < s->f.min) s->f.min = x->f.min;
    if (x->f.max > s->f.max) s->f.max = x->f.max;
    if (x->f.first_len && (s->f.first_len == 0 || x->f.first_ts < s->f.first_ts)) {
        memcpy(s->first, x->first, x->f.first_len + 1);
        s->f.first_len = x->f.first_len;
        s->f.first_ts = x->f.first_ts;
    }
    if (x->f.last_len && (s->f.last_len == 0 || x->f.last_ts > s->f.last_ts)) {
        memcpy(s->last, x->last, x->f.last_len + 1);
        s->f.last_len = x->f.last_len;
        s->f.last_ts = x->f.last_ts;
    }
    s->f.flags |= x->f.flags & FG_OVERFLOW;
    for (size_t i = 0; i < x->f.n_values; i++) value_add(g, s, x->values[i].text, strlen(x->values[i].text), x->values[i].count);
}

int64_t fld_gstate_next(const fld_gfield_t *g, const fld_gstate_t *s, int64_t now)
{
    if (!g->window_ms || s->f.n_buckets == 0) return INT64_MAX;
    int64_t width = g->bucket_ms ? g->bucket_ms : 86400000;
    int64_t n = (g->window_ms + width - 1) / width;
    int64_t at = bucket_start(g, s->buckets[0].id + n);
    return at > now ? at : now + 1;
}

/* ---- the value ---- */

static int vcmp(const void *a, const void *b)
{
    const fld_gvalue_t *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->text, y->text);
}

int fld_gstate_value(const fld_gfield_t *g, const fld_gstate_t *s, int64_t now, sl_buf_t *out)
{
    uint64_t count = s->f.count;
    double sum = s->f.sum, mn = s->f.min, mx = s->f.max;
    if (g->window_ms) {
        int64_t lo = window_lo(g, now);
        count = 0, sum = 0, mn = INFINITY, mx = -INFINITY;
        for (size_t i = 0; i < s->f.n_buckets; i++) {
            const fld_bucket_t *b = &s->buckets[i];
            if (b->id < lo) continue;
            count += b->count;
            if (sl_amount_ok(sum + b->sum)) sum += b->sum;
            if (b->min < mn) mn = b->min;
            if (b->max > mx) mx = b->max;
        }
    }
    switch (g->type) {
    case FG_COUNT: return sl_buf_printf(out, "%llu", (unsigned long long)count);
    case FG_SUM:
    case FG_SCORE: return sl_buf_append_amount(out, sum);
    case FG_AVG: return count ? sl_buf_append_amount(out, sum / (double)count) : sl_buf_appends(out, "null");
    case FG_MIN: return count ? sl_buf_append_amount(out, mn) : sl_buf_appends(out, "null");
    case FG_MAX: return count ? sl_buf_append_amount(out, mx) : sl_buf_appends(out, "null");
    case FG_FIRST: return sl_buf_appends(out, s->f.first_len ? s->first : "null");
    case FG_LAST: return sl_buf_appends(out, s->f.last_len ? s->last : "null");
    case FG_DISTINCT_COUNT: return sl_buf_printf(out, "%u", s->f.n_values);
    case FG_DISTINCT_LIST:
        sl_buf_appends(out, "[");
        for (size_t i = 0; i < s->f.n_values; i++) {
            if (i) sl_buf_appends(out, ",");
            sl_buf_appends(out, s->values[i].text);
        }
        return sl_buf_appends(out, "]");
    case FG_MOST_FREQUENT: {
        if (s->f.n_values == 0) return sl_buf_appends(out, "null");
        size_t best = 0;
        for (size_t i = 1; i < s->f.n_values; i++)
            if (vcmp(&s->values[i], &s->values[best]) < 0) best = i;
        return sl_buf_appends(out, s->values[best].text);
    }
    default: return sl_buf_appends(out, "null");
    }
}
