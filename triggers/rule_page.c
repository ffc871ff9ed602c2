/* rule_page.c - the page_visit rule (docs/TRIGGERS.md): a page whose URL or
 * path matches the rule's glob, seen min_count times within a window. The
 * state is the times of the last min_count - 1 matching visits, a record
 * (internal.h). */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *url;             /* glob (sl_trig_glob_match) */
    int min_count;         /* default 1 */
    int64_t within_ms;     /* 0 = unbounded */
} page_conf_t;
#define P(r) ((const page_conf_t *)(r)->conf)

#define PAGE_VERSION 1

static int page_join(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t sv, uint64_t ab);

int trig_page_encode(sl_buf_t *b, const int64_t *ts, size_t n)
{
    int rc = trig_state_begin(b, TRIG_STATE_PAGE, PAGE_VERSION, n);
    return rc ? rc : sl_buf_append(b, ts, n * sizeof(*ts)) ? SL_ENOMEM : 0;
}

int trig_page_decode(const MDB_val *v, int64_t *ts, size_t *n)
{
    uint32_t k;
    trig_rd_t rd = {v->mv_data, v->mv_size};
    if (trig_state_is_rec(v)) {
        int rc = trig_state_open(v, TRIG_STATE_PAGE, PAGE_VERSION, &k, &rd);
        if (rc) return rc;
    } else { /* before the header: the bare times (never none) */
        if (v->mv_size == 0) return MDB_CORRUPTED;
        k = (uint32_t)(v->mv_size / sizeof(*ts) < TRIG_PAGE_MAX_COUNT ? v->mv_size / sizeof(*ts) : TRIG_PAGE_MAX_COUNT);
    }
    if (k >= TRIG_PAGE_MAX_COUNT || trig_rd_copy(&rd, ts, (size_t)k * sizeof(*ts)) || rd.left) return MDB_CORRUPTED;
    *n = k;
    return 0;
}

static int page_save(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const int64_t *ts, size_t n)
{
    int rc = trig_page_encode(&t->v, ts, n);
    return rc ? rc : trig_state_put(t, txn, r->name, person, t->v.data, t->v.len);
}

/* Any record it cannot read is MDB_CORRUPTED (sillage verify). */
static int page_check(const MDB_val *v)
{
    int64_t ts[TRIG_PAGE_MAX_COUNT];
    size_t n;
    return trig_page_decode(v, ts, &n);
}

static int page_verify(sl_trig_t *t, MDB_txn *txn, MDB_txn *log_txn, const trig_rule_t *r, uint64_t person,
                       FILE *out, uint64_t *n, uint64_t *problems)
{
    return trig_state_verify(t, txn, r, person, out, problems, page_check, "visit-times");
}

static int page_event(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, const rule_msg_t *m,
                      uint64_t person, int identified, int64_t now)
{
    (void)identified;
    if (!m->page) return 0;
    /* "http://..." and "https://..." patterns match the whole URL, others the path. */
    int full = strncmp(P(r)->url, "http://", 7) == 0 || strncmp(P(r)->url, "https://", 8) == 0;
    const char *subject = full ? m->url : m->path;
    if (subject == NULL || !sl_trig_glob_match(P(r)->url, subject)) return 0;
    int64_t ts[TRIG_PAGE_MAX_COUNT];
    size_t have = 0, n = 0;
    MDB_val v;
    int rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (rc == 0 && (rc = trig_page_decode(&v, ts, &have))) return rc;
    for (size_t i = 0; i < have; i++) /* those still within the window */
        if (P(r)->within_ms == 0 || ts[i] > now - P(r)->within_ms) ts[n++] = ts[i];
    /* Keep the newest min_count - 1 and this one. */
    size_t keep = (size_t)P(r)->min_count - 1;
    size_t drop = n > keep ? n - keep : 0;
    memmove(ts, ts + drop, (n - drop) * 8);
    n -= drop;
    ts[n++] = now;
    if ((int)n >= P(r)->min_count) {
        sl_buf_t d = {0};
        sl_buf_appends(&d, "{\"url\":");
        if (m->url) sl_buf_append_json_str(&d, m->url, strlen(m->url));
        else sl_buf_appends(&d, "null");
        sl_buf_appends(&d, ",\"path\":");
        if (m->path) sl_buf_append_json_str(&d, m->path, strlen(m->path));
        else sl_buf_appends(&d, "null");
        sl_buf_printf(&d, ",\"count\":%zu,\"pattern\":", n);
        sl_buf_append_json_str(&d, P(r)->url, strlen(P(r)->url));
        sl_buf_appends(&d, "}");
        rc = d.data ? trig_fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
        sl_buf_free(&d);
        if (rc) return rc;
        return trig_state_del(t, txn, r->name, person); /* the next trigger needs min_count new visits */
    }
    return page_save(t, txn, r, person, ts, n);
}

static int page_merge(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t sv, uint64_t ab, int64_t now)
{
    (void)now;
    return page_join(t, txn, r, sv, ab);
}

static int page_join(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t sv, uint64_t ab)
{
    MDB_val v;
    int64_t ts[2 * TRIG_PAGE_MAX_COUNT];
    size_t n = 0;
    uint64_t who[2] = {sv, ab};
    for (int i = 0; i < 2; i++) {
        size_t have = 0;
        int rc = trig_state_get(t, txn, r->name, who[i], &v);
        if (rc == MDB_NOTFOUND) continue;
        if (rc || (rc = trig_page_decode(&v, ts + n, &have))) return rc;
        n += have;
    }
    if (n == 0) return 0;
    int rc = trig_state_del(t, txn, r->name, ab);
    if (rc) return rc;
    /* sort, keep the newest min_count - 1 */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && ts[j - 1] > ts[j]; j--) {
            int64_t x = ts[j];
            ts[j] = ts[j - 1];
            ts[j - 1] = x;
        }
    size_t keep = (size_t)P(r)->min_count - 1;
    size_t from = n > keep ? n - keep : 0;
    if (n - from == 0) return trig_state_del(t, txn, r->name, sv);
    return page_save(t, txn, r, sv, ts + from, n - from);
}

static void page_free_conf(void *conf)
{
    page_conf_t *c = conf;
    if (c == NULL) return;
    free(c->url);
    free(c);
}

static int page_parse(sl_cfg_ctx_t *x, const cJSON *json, const char *path, void **out)
{
    page_conf_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return SL_ENOMEM;
    *out = c;
    c->min_count = 1;
    int rc = sl_cfg_str(x, json, "url", path, &c->url, 1);
    if (rc == 0) rc = sl_cfg_int(x, json, "min_count", path, 1, TRIG_PAGE_MAX_COUNT, "", &c->min_count);
    if (rc == 0) rc = sl_cfg_duration(x, json, "within", path, &c->within_ms);
    return rc;
}

static void page_print(const trig_rule_t *r, sl_buf_t *out)
{
    sl_buf_appends(out, ",\"url\":");
    sl_buf_append_json_str(out, P(r)->url, strlen(P(r)->url));
    sl_buf_printf(out, ",\"min_count\":%d,\"within\":", P(r)->min_count);
    if (P(r)->within_ms) sl_buf_append_duration(out, P(r)->within_ms);
    else sl_buf_appends(out, "null");
}

static const char *const page_keys[] = {"url", "min_count", "within", NULL};

const trig_type_t trig_type_page_visit = {
    .name = "page_visit", .keys = page_keys, .parse = page_parse, .free_conf = page_free_conf,
    .event = page_event, .merge = page_merge, .print = page_print, .verify = page_verify,
};
