/* config.c - the "computed" section of the configuration, parsed by the
 * fields component itself (sl_config_register): the commerce pack's
 * settings, with the defaults docs/COMPUTED.md lists. */
#include "fields_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const fld_segment_t default_segments[] = {
    /* name           r lo..hi  f lo..hi  m lo..hi, as {lo r f m}, {hi r f m} */
    {"can't lose", {1, 4, 4}, {2, 5, 5}},
    {"at risk", {1, 3, 1}, {2, 5, 5}},
    {"champions", {5, 4, 1}, {5, 5, 5}},
    {"loyal", {3, 3, 1}, {5, 5, 5}},
    {"new", {5, 1, 1}, {5, 1, 5}},
    {"promising", {4, 1, 1}, {5, 2, 5}},
    {"need attention", {3, 1, 1}, {3, 2, 5}},
    {"hibernating", {2, 1, 1}, {2, 2, 5}},
    {"lost", {1, 1, 1}, {1, 2, 5}},
};

static void conf_free(void *parsed)
{
    fld_conf_t *c = parsed;
    if (c == NULL) return;
    free(c->currency);
    for (size_t i = 0; i < c->n_order_events; i++) free(c->order_events[i]);
    for (size_t i = 0; i < c->n_refund_events; i++) free(c->refund_events[i]);
    for (size_t i = 0; i < c->n_segments; i++) free(c->segments[i].name);
    fld_gfields_free(c);
    free(c);
}

static int set_defaults(fld_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    c->order_events[c->n_order_events++] = strdup("Order Completed");
    c->refund_events[c->n_refund_events++] = strdup("Order Refunded");
    c->refund_events[c->n_refund_events++] = strdup("Order Cancelled");
    c->promo_min_orders = 2;
    c->promo_min_share = 0.5;
    c->max_categories = 50;
    const int64_t day = 86400000;
    c->recency[0] = 30 * day, c->recency[1] = 90 * day, c->recency[2] = 180 * day, c->recency[3] = 365 * day;
    const double fr[4] = {2, 3, 4, 6}, mo[4] = {50, 150, 400, 1000};
    memcpy(c->frequency, fr, sizeof(fr));
    memcpy(c->monetary, mo, sizeof(mo));
    for (size_t i = 0; i < sizeof(default_segments) / sizeof(*default_segments); i++) {
        c->segments[i] = default_segments[i];
        c->segments[i].name = strdup(default_segments[i].name);
        if (c->segments[i].name == NULL) return SL_ENOMEM;
        c->n_segments++;
    }
    for (size_t i = 0; i < c->n_order_events; i++)
        if (c->order_events[i] == NULL) return SL_ENOMEM;
    for (size_t i = 0; i < c->n_refund_events; i++)
        if (c->refund_events[i] == NULL) return SL_ENOMEM;
    return 0;
}

/* names: a string or an array of 1 to FLD_MAX_EVENT_NAMES strings */
static int parse_names(sl_cfg_ctx_t *x, const cJSON *o, const char *key, const char *path, char **names, size_t *n)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (j == NULL) return 0;
    const cJSON *one = cJSON_IsString(j) ? j : NULL;
    size_t count = one ? 1 : cJSON_IsArray(j) ? (size_t)cJSON_GetArraySize(j) : 0;
    if (count == 0 || count > FLD_MAX_EVENT_NAMES)
        return sl_cfg_error(x, "%s.%s must be an event name or an array of 1 to %d event names", path, key,
                            FLD_MAX_EVENT_NAMES);
    for (size_t i = 0; i < *n; i++) free(names[i]);
    *n = 0;
    for (const cJSON *e = one ? one : j->child; e; e = one ? NULL : e->next) {
        if (!cJSON_IsString(e) || e->valuestring[0] == '\0' || strlen(e->valuestring) > 200)
            return sl_cfg_error(x, "%s.%s must hold event names of 1 to 200 bytes", path, key);
        if ((names[*n] = strdup(e->valuestring)) == NULL) return SL_ENOMEM;
        (*n)++;
    }
    return 0;
}

static int parse_number(sl_cfg_ctx_t *x, const cJSON *j, const char *what, double lo, double hi, double *out)
{
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble < lo || j->valuedouble > hi)
        return sl_cfg_error(x, "%s must be a number from %g to %g", what, lo, hi);
    *out = j->valuedouble;
    return 0;
}

static int parse_fx(sl_cfg_ctx_t *x, const cJSON *o, const char *path, fld_conf_t *c)
{
    const cJSON *fx = cJSON_GetObjectItemCaseSensitive(o, "fx");
    if (fx == NULL) return 0;
    if (!cJSON_IsObject(fx) || cJSON_GetArraySize(fx) > FLD_MAX_FX)
        return sl_cfg_error(x, "%s.fx must be an object of at most %d currencies, each a rate", path, FLD_MAX_FX);
    for (const cJSON *e = fx->child; e; e = e->next) {
        char what[96];
        snprintf(what, sizeof(what), "%s.fx.%.16s", path, e->string);
        size_t l = strlen(e->string);
        if (l == 0 || l >= sizeof(c->fx[0].code))
            return sl_cfg_error(x, "%s.fx: \"%.16s\" is not a currency code (1 to 7 bytes)", path, e->string);
        double rate = 0;
        int rc = parse_number(x, e, what, 1e-9, 1e9, &rate);
        if (rc) return rc;
        memcpy(c->fx[c->n_fx].code, e->string, l + 1);
        c->fx[c->n_fx++].rate = rate;
    }
    return 0;
}

static int parse_scale(sl_cfg_ctx_t *x, const cJSON *rfm, const char *key, const char *path, fld_conf_t *c)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(rfm, key);
    if (j == NULL) return 0;
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 4)
        return sl_cfg_error(x, "%s.rfm.%s must be an array of 4 ascending thresholds (scores 2 to 5)", path, key);
    int i = 0;
    for (const cJSON *e = j->child; e; e = e->next, i++) {
        char what[96];
        snprintf(what, sizeof(what), "%s.rfm.%s[%d]", path, key, i);
        if (key[0] == 'r') {
            int64_t ms;
            if (!cJSON_IsString(e) || sl_parse_duration_ms(e->valuestring, &ms) || ms <= 0 || ms > FLD_MAX_DURATION_MS)
                return sl_cfg_error(x, "%s must be a duration (\"30d\", \"90s\") of at most 36500d", what);
            c->recency[i] = ms;
            if (i && ms <= c->recency[i - 1]) return sl_cfg_error(x, "%s must be longer than the one before", what);
        } else {
            double *v = key[0] == 'f' ? c->frequency : c->monetary;
            int rc = parse_number(x, e, what, key[0] == 'f' ? 1 : 0, SL_AMOUNT_MAX, &v[i]);
            if (rc) return rc;
            if (i && v[i] <= v[i - 1]) return sl_cfg_error(x, "%s must be greater than the one before", what);
        }
    }
    return 0;
}

static int parse_range(sl_cfg_ctx_t *x, const cJSON *seg, const char *key, const char *what, uint8_t *lo, uint8_t *hi)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(seg, key);
    *lo = 1, *hi = 5;
    if (j == NULL) return 0;
    if (cJSON_IsNumber(j) && j->valuedouble >= 1 && j->valuedouble <= 5 && j->valuedouble == (int)j->valuedouble) {
        *lo = *hi = (uint8_t)j->valuedouble;
        return 0;
    }
    const cJSON *a = cJSON_GetArrayItem(j, 0), *b = cJSON_GetArrayItem(j, 1);
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 2 || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) ||
        a->valuedouble < 1 || b->valuedouble > 5 || a->valuedouble > b->valuedouble ||
        a->valuedouble != (int)a->valuedouble || b->valuedouble != (int)b->valuedouble)
        return sl_cfg_error(x, "%s.%s must be a score from 1 to 5 or a range [lo, hi] of them", what, key);
    *lo = (uint8_t)a->valuedouble, *hi = (uint8_t)b->valuedouble;
    return 0;
}

static int parse_segments(sl_cfg_ctx_t *x, const cJSON *rfm, const char *path, fld_conf_t *c)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(rfm, "segments");
    if (j == NULL) return 0;
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) < 1 || cJSON_GetArraySize(j) > FLD_MAX_SEGMENTS)
        return sl_cfg_error(x, "%s.rfm.segments must be an array of 1 to %d segments", path, FLD_MAX_SEGMENTS);
    for (size_t i = 0; i < c->n_segments; i++) {
        free(c->segments[i].name);
        c->segments[i].name = NULL;
    }
    c->n_segments = 0;
    static const char *const keys[] = {"name", "r", "f", "m", NULL};
    int i = 0;
    for (const cJSON *e = j->child; e; e = e->next, i++) {
        char what[96];
        snprintf(what, sizeof(what), "%s.rfm.segments[%d]", path, i);
        fld_segment_t *s = &c->segments[c->n_segments];
        int rc = sl_cfg_check_keys(x, e, what, keys);
        if (rc == 0) rc = sl_cfg_str(x, e, "name", what, &s->name, 1);
        if (rc) return rc;
        c->n_segments++;
        if (strlen(s->name) > 64 || strcmp(s->name, "prospect") == 0)
            return sl_cfg_error(x, "%s.name must be 1 to 64 bytes and not \"prospect\" (persons without orders)",
                                what);
        for (int k = 0; k < 3 && rc == 0; k++) rc = parse_range(x, e, (const char *[]){"r", "f", "m"}[k], what, &s->lo[k], &s->hi[k]);
        if (rc) return rc;
    }
    /* every customer with an order has a segment */
    for (int r = 1; r <= 5; r++)
        for (int f = 1; f <= 5; f++)
            for (int m = 1; m <= 5; m++) {
                int hit = 0;
                for (size_t s = 0; s < c->n_segments && !hit; s++) {
                    const fld_segment_t *g = &c->segments[s];
                    hit = r >= g->lo[0] && r <= g->hi[0] && f >= g->lo[1] && f <= g->hi[1] && m >= g->lo[2] &&
                          m <= g->hi[2];
                }
                if (!hit)
                    return sl_cfg_error(x, "%s.rfm.segments leaves r=%d f=%d m=%d without a segment "
                                        "(end the table with a catch-all, e.g. {\"name\": \"others\"})", path, r, f, m);
            }
    return 0;
}

static int parse_commerce(sl_cfg_ctx_t *x, const cJSON *o, fld_conf_t *c)
{
    const char *path = "computed.commerce";
    c->commerce = 1;
    if (cJSON_IsTrue(o)) return 0;
    static const char *const keys[] = {"currency", "fx", "order_event", "refund_events", "windows", "promophile",
                                       "max_categories", "rfm", NULL};
    int rc = sl_cfg_check_keys(x, o, path, keys);
    if (rc == 0) rc = sl_cfg_str(x, o, "currency", path, &c->currency, 0);
    if (rc) return rc;
    if (c->currency && strlen(c->currency) >= sizeof(c->fx[0].code))
        return sl_cfg_error(x, "%s.currency must be a currency code of 1 to 7 bytes (\"EUR\")", path);
    if ((rc = parse_fx(x, o, path, c))) return rc;
    if (c->n_fx && c->currency == NULL) return sl_cfg_error(x, "%s.fx needs %s.currency", path, path);
    if ((rc = parse_names(x, o, "order_event", path, c->order_events, &c->n_order_events)) ||
        (rc = parse_names(x, o, "refund_events", path, c->refund_events, &c->n_refund_events)))
        return rc;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "windows");
    if (w && (!cJSON_IsArray(w) || cJSON_GetArraySize(w) > FLD_MAX_WINDOWS))
        return sl_cfg_error(x, "%s.windows must be an array of at most %d durations", path, FLD_MAX_WINDOWS);
    for (const cJSON *e = w ? w->child : NULL; e; e = e->next) {
        int64_t ms;
        if (!cJSON_IsString(e) || strlen(e->valuestring) >= sizeof(c->window_names[0]) ||
            sl_parse_duration_ms(e->valuestring, &ms) || ms <= 0 || ms > FLD_MAX_DURATION_MS)
            return sl_cfg_error(x, "%s.windows[%zu] must be a duration (\"90d\") of at most 36500d", path, c->n_windows);
        for (size_t i = 0; i < c->n_windows; i++)
            if (strcmp(c->window_names[i], e->valuestring) == 0)
                return sl_cfg_error(x, "%s.windows: \"%s\" is listed twice", path, e->valuestring);
        c->windows[c->n_windows] = ms;
        snprintf(c->window_names[c->n_windows++], sizeof(c->window_names[0]), "%s", e->valuestring);
    }
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "promophile");
    if (p) {
        static const char *const pk[] = {"min_orders", "min_share", NULL};
        if ((rc = sl_cfg_check_keys(x, p, "computed.commerce.promophile", pk)) ||
            (rc = sl_cfg_int(x, p, "min_orders", "computed.commerce.promophile", 1, 1000000, "", &c->promo_min_orders)))
            return rc;
        const cJSON *ms = cJSON_GetObjectItemCaseSensitive(p, "min_share");
        if (ms && (rc = parse_number(x, ms, "computed.commerce.promophile.min_share", 0, 1, &c->promo_min_share)))
            return rc;
    }
    if ((rc = sl_cfg_int(x, o, "max_categories", path, 1, FLD_MAX_CATEGORIES, "", &c->max_categories))) return rc;
    const cJSON *rfm = cJSON_GetObjectItemCaseSensitive(o, "rfm");
    if (rfm) {
        static const char *const rk[] = {"recency", "frequency", "monetary", "segments", NULL};
        if ((rc = sl_cfg_check_keys(x, rfm, "computed.commerce.rfm", rk)) ||
            (rc = parse_scale(x, rfm, "recency", path, c)) || (rc = parse_scale(x, rfm, "frequency", path, c)) ||
            (rc = parse_scale(x, rfm, "monetary", path, c)) || (rc = parse_segments(x, rfm, path, c)))
            return rc;
    }
    return 0;
}

static int conf_parse(const cJSON *json, const sl_config_t *cfg, void **out, char *err, size_t errlen)
{
    (void)cfg;
    sl_cfg_ctx_t x = {err, errlen};
    *out = NULL;
    if (json == NULL) return 0; /* the defaults (fld_conf) */
    fld_conf_t *c = malloc(sizeof(*c));
    if (c == NULL) return SL_ENOMEM;
    int rc = set_defaults(c);
    *out = c; /* freed by the parser on error */
    if (rc) return rc;
    static const char *const keys[] = {"commerce", "fields", NULL};
    if ((rc = sl_cfg_check_keys(&x, json, "computed", keys))) return rc;
    const cJSON *cm = cJSON_GetObjectItemCaseSensitive(json, "commerce");
    if (cm && !cJSON_IsFalse(cm)) {
        if (!cJSON_IsTrue(cm) && !cJSON_IsObject(cm))
            return sl_cfg_error(&x, "computed.commerce must be true, false or an object of settings");
        if ((rc = parse_commerce(&x, cm, c))) return rc;
    }
    if ((rc = fld_gfields_parse(&x, cJSON_GetObjectItemCaseSensitive(json, "fields"), c))) return rc;
    /* a generic field's name is not one of the pack's */
    if (c->commerce && c->n_gfields) {
        fld_flat_t fl;
        fld_sum_t *s = malloc(sizeof(*s));
        memset(&fl, 0, sizeof(fl));
        size_t n = c->n_gfields;
        c->n_gfields = 0;
        if (s == NULL) rc = SL_ENOMEM;
        else fld_sum_init(s);
        if (rc == 0) rc = fld_flatten(c, s, NULL, NULL, 0, &fl);
        c->n_gfields = n;
        for (size_t i = 0; rc == 0 && i < n; i++)
            for (size_t k = 0; k < fl.n && rc == 0; k++)
                if (strcmp(fl.name[k], c->gfields[i].name) == 0 || strcmp(c->gfields[i].name, "rfm") == 0)
                    rc = sl_cfg_error(&x, "computed.fields[%zu].name \"%s\" is a field of the commerce pack", i,
                                      c->gfields[i].name);
        free(s);
        sl_buf_free(&fl.text);
        sl_buf_free(&fl.scratch);
    }
    return rc;
}

static const sl_config_section_t section = {.key = "computed", .parse = conf_parse, .free = conf_free};
static int section_index = -1;

int sl_fields_config_register(void)
{
    int i = sl_config_register(&section);
    if (i < 0) return i;
    section_index = i;
    return 0;
}

const fld_conf_t *fld_conf(const sl_config_t *cfg)
{
    static fld_conf_t defaults;
    static int made;
    const fld_conf_t *c = sl_config_section(cfg, section_index);
    if (c) return c;
    if (!made) { /* the first call comes before any thread (the step's open) */
        if (set_defaults(&defaults)) return &defaults; /* out of memory at start: names missing, no event matches */
        made = 1;
    }
    return &defaults;
}

int sl_fields_commerce_on(const sl_config_t *cfg) { return fld_conf(cfg)->commerce; }

int fld_name_in(char *const *names, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (names[i] && strlen(names[i]) == len && memcmp(names[i], name, len) == 0) return 1;
    return 0;
}
