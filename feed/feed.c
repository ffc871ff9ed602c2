/* feed.c - the feed: see sl_feed.h for the layout, the threads and what
 * each call promises; docs/TRIGGERS.md for what consumers see. */
#include "sl_feed.h"

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SUBSCRIBERS 8
#define PRUNE_EVERY_MS 60000
#define FEED_AWAITED_MS 1000      /* entries this recent: the consumers are waiting (on_awaited) */
#define PRUNE_MAX 1000            /* entries per pruning run */
#define ENTITY_KEY_BYTES 17       /* u8 kind, be64 id, be64 seq */
#define CAUSE_SEED 0xca05e        /* the fcause (and the engine's holds) key */

#define LAST_KEY ((MDB_val){9, (void *)"feed_last"})
#define PRUNED_KEY ((MDB_val){11, (void *)"feed_pruned"})

struct sl_feed_s {
    sl_stage_step_t step;
    MDB_dbi feed, tmeta, fcause, fentity; /* 0: not there (read only, a store from before) */
    struct {
        void (*cb)(void *);
        void *arg;
    } subs[MAX_SUBSCRIBERS];
    size_t n_subs;
    _Atomic int64_t retention_ms;
    int64_t last_prune_ms;                /* stage thread */
    uint64_t txn_last, committed_last, prev_committed; /* stage thread */
    int64_t last_entry_ms;                /* stage thread: when a commit last added entries */
    _Atomic uint64_t durable;
    uint64_t txn_pruned, committed_pruned; /* stage thread: the last entry retention removed */
    _Atomic uint64_t pruned;              /* the same, committed: readers compare a position with it */
    sl_buf_t v;                           /* the entry being appended */
};

/* ---- little-endian fields of the header ---- */

static void le64_put(unsigned char *p, uint64_t x)
{
    for (int i = 0; i < 8; i++, x >>= 8) p[i] = (unsigned char)x;
}

static uint64_t le64_get(const unsigned char *p)
{
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--) x = x << 8 | p[i];
    return x;
}

uint64_t sl_feed_mid_hash(const char *message_id, size_t len)
{
    return sl_hash128(message_id, len, CAUSE_SEED).lo;
}

int sl_feed_encode(sl_buf_t *b, const sl_feed_entry_t *e, uint64_t cause_hash)
{
    size_t rl = e->rule ? strlen(e->rule) : 0, tl = e->type ? strlen(e->type) : 0;
    if (tl == 0 || tl > 255 || rl > 65535 || (e->rule && rl == 0)) return SL_EINVAL;
    unsigned char h[SL_FEED_HEADER_BYTES] = {0};
    h[0] = SL_FEED_MAGIC;
    h[1] = SL_FEED_VERSION;
    h[2] = e->entity.kind;
    h[3] = e->cause ? 1 : 0;
    h[4] = (unsigned char)rl;
    h[5] = (unsigned char)(rl >> 8);
    h[6] = (unsigned char)tl;
    h[7] = SL_FEED_MAGIC;
    le64_put(h + 8, (uint64_t)e->at_ms);
    le64_put(h + 16, e->entity.id);
    le64_put(h + 24, e->cause ? cause_hash : 0);
    if (sl_buf_append(b, h, sizeof(h)) || (rl && sl_buf_append(b, e->rule, rl)) || sl_buf_append(b, e->type, tl))
        return SL_ENOMEM;
    return 0;
}

int sl_feed_decode(const void *v, size_t n, sl_feed_item_t *it)
{
    const unsigned char *p = v;
    uint64_t seq = it->seq;
    memset(it, 0, sizeof(*it));
    it->seq = seq;
    if (n >= SL_FEED_HEADER_BYTES && p[0] == SL_FEED_MAGIC && p[7] == SL_FEED_MAGIC) {
        if (p[1] != SL_FEED_VERSION) return SL_EINVAL;
        size_t rl = (size_t)p[4] | (size_t)p[5] << 8, tl = p[6];
        if (tl == 0 || n < SL_FEED_HEADER_BYTES + rl + tl) return SL_EINVAL;
        it->entity.kind = p[2];
        it->at_ms = (int64_t)le64_get(p + 8);
        it->entity.id = le64_get(p + 16);
        it->cause_hash = (p[3] & 1) ? le64_get(p + 24) : 0;
        it->rule = rl ? (const char *)p + SL_FEED_HEADER_BYTES : NULL;
        it->rule_len = rl;
        it->type = (const char *)p + SL_FEED_HEADER_BYTES + rl;
        it->type_len = tl;
        it->json = it->type + tl;
        it->len = n - SL_FEED_HEADER_BYTES - rl - tl;
        return 0;
    }
    if (n > 8 && p[7] == 0) { /* before the header: host-order at_ms, then the JSON */
        int64_t at;
        memcpy(&at, p, 8);
        it->at_ms = at;
        it->json = (const char *)p + 8;
        it->len = n - 8;
        it->old_layout = 1;
        return 1;
    }
    return SL_EINVAL;
}

int sl_feed_item_parse(sl_feed_item_t *it, cJSON **doc)
{
    *doc = cJSON_ParseWithLength(it->json, it->len);
    if (*doc == NULL) return SL_EINVAL;
    const cJSON *rule = cJSON_GetObjectItemCaseSensitive(*doc, "rule");
    it->rule = cJSON_IsString(rule) ? rule->valuestring : NULL;
    it->rule_len = it->rule ? strlen(it->rule) : 0;
    it->type = sl_json_str(*doc, "type");
    it->type_len = it->type ? strlen(it->type) : 0;
    const char *pid = sl_json_str(cJSON_GetObjectItemCaseSensitive(*doc, "profile"), "id");
    if (pid == NULL || sl_entity_parse(pid, strlen(pid), &it->entity)) it->entity = (sl_entity_t){0, 0};
    const char *mid = sl_json_str(cJSON_GetObjectItemCaseSensitive(*doc, "cause"), "messageId");
    it->cause_hash = mid ? sl_feed_mid_hash(mid, strlen(mid)) : 0;
    return 0;
}

/* Reads the stored value v of seq into it, parsing an old entry (*doc: its
 * JSON, to delete after use). 0, or SL_EINVAL for a value that is neither
 * layout (an old one that is not JSON keeps at_ms and json). */
static int item_read(uint64_t seq, const MDB_val *v, sl_feed_item_t *it, cJSON **doc)
{
    *doc = NULL;
    it->seq = seq;
    int rc = sl_feed_decode(v->mv_data, v->mv_size, it);
    if (rc == 1) rc = sl_feed_item_parse(it, doc);
    return rc;
}

/* ---- the indexes ---- */

static void cause_key(unsigned char key[16], uint64_t hash, uint64_t seq)
{
    sl_be64_put(key, hash);
    sl_be64_put(key + 8, seq);
}

static void entity_key(unsigned char key[ENTITY_KEY_BYTES], sl_entity_t e, uint64_t seq)
{
    sl_entity_key_put(key, e);
    sl_be64_put(key + SL_ENTITY_KEY_BYTES, seq);
}

/* on: 1 adds the entry's index keys, 0 removes them (absent ones are no error). */
static int index_entry(sl_feed_t *f, MDB_txn *txn, const sl_feed_item_t *it, int on)
{
    MDB_val nothing = {0, NULL};
    int rc = 0;
    if (it->cause_hash && f->fcause) {
        unsigned char key[16];
        cause_key(key, it->cause_hash, it->seq);
        MDB_val k = {16, key};
        rc = on ? mdb_put(txn, f->fcause, &k, &nothing, 0) : mdb_del(txn, f->fcause, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
    }
    if (it->entity.kind && f->fentity) {
        unsigned char key[ENTITY_KEY_BYTES];
        entity_key(key, it->entity, it->seq);
        MDB_val k = {ENTITY_KEY_BYTES, key};
        rc = on ? mdb_put(txn, f->fentity, &k, &nothing, 0) : mdb_del(txn, f->fentity, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
    }
    return 0;
}

/* Every entry of the feed into the indexes (a store from before one of
 * them, or a feed carried over by a rebuild). */
static int index_all(sl_feed_t *f, MDB_txn *txn)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, f->feed, &cur);
    if (rc) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        sl_feed_item_t it;
        cJSON *doc;
        int r = item_read(seq, &v, &it, &doc);
        rc = r == 0 ? index_entry(f, txn, &it, 1) : 0; /* unreadable: nothing to index (verify names it) */
        cJSON_Delete(doc);
        if (rc) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_feed_holds(sl_feed_t *f, MDB_txn *txn, const char *message_id, int *held)
{
    *held = 0;
    if (f->fcause == 0) return 0; /* read only, a store from before: no pruning there */
    unsigned char key[16];
    cause_key(key, sl_feed_mid_hash(message_id, strlen(message_id)), 0);
    return sl_lmdb_has_prefix8(txn, f->fcause, key, held);
}

/* ---- appending ---- */

static int last_get(sl_feed_t *f, MDB_txn *txn, uint64_t *last)
{
    MDB_val v, lk = LAST_KEY;
    *last = 0;
    int rc = mdb_get(txn, f->tmeta, &lk, &v);
    if (rc == 0 && v.mv_size == 8) memcpy(last, v.mv_data, 8);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_feed_append(sl_feed_t *f, MDB_txn *txn, const sl_feed_entry_t *e, uint64_t *seq_out)
{
    uint64_t seq;
    int rc = last_get(f, txn, &seq);
    if (rc) return rc;
    seq++;
    uint64_t cause_hash = e->cause ? sl_feed_mid_hash(e->cause, strlen(e->cause)) : 0;
    sl_buf_t *b = &f->v;
    b->len = 0;
    if ((rc = sl_feed_encode(b, e, cause_hash))) return rc;
    char at[32], id[37];
    sl_time_format_iso(e->at_ms, at);
    sl_uuid4(id);
    sl_buf_printf(b, "{\"seq\":%llu,\"id\":\"%s\",\"rule\":", (unsigned long long)seq, id);
    if (e->rule) sl_buf_append_json_str(b, e->rule, strlen(e->rule));
    else sl_buf_appends(b, "null");
    sl_buf_appends(b, ",\"type\":");
    sl_buf_append_json_str(b, e->type, strlen(e->type));
    sl_buf_printf(b, ",\"at\":\"%s\",\"profile\":", at);
    sl_buf_appends(b, e->profile);
    sl_buf_appends(b, ",\"cause\":");
    if (e->cause) {
        sl_buf_appends(b, "{\"messageId\":");
        sl_buf_append_json_str(b, e->cause, strlen(e->cause));
        sl_buf_appends(b, "}");
    } else {
        sl_buf_appends(b, "null");
    }
    sl_buf_appends(b, ",\"data\":");
    sl_buf_appends(b, e->data);
    sl_buf_appends(b, "}");
    if (b->data == NULL) return SL_ENOMEM;
    MDB_val lk = LAST_KEY, lv = {8, &seq}, fk = {8, &seq}, fv = {b->len, b->data};
    if ((rc = mdb_put(txn, f->tmeta, &lk, &lv, 0))) return rc;
    if ((rc = mdb_put(txn, f->feed, &fk, &fv, MDB_APPEND))) return rc;
    sl_feed_item_t it = {.seq = seq, .entity = e->entity, .cause_hash = cause_hash};
    if ((rc = index_entry(f, txn, &it, 1))) return rc;
    f->txn_last = seq;
    if (seq_out) *seq_out = seq;
    return 0;
}

/* ---- removing ---- */

/* Removes the entry at cur (seq, v) and its index keys. */
static int remove_at(sl_feed_t *f, MDB_txn *txn, MDB_cursor *cur, uint64_t seq, const MDB_val *v)
{
    sl_feed_item_t it;
    cJSON *doc;
    int rc = item_read(seq, v, &it, &doc) < 0 ? 0 : index_entry(f, txn, &it, 0);
    cJSON_Delete(doc);
    return rc ? rc : mdb_cursor_del(cur, 0);
}

int sl_feed_forget(sl_feed_t *f, MDB_txn *txn, uint8_t kind, const uint64_t *ids, size_t n, uint64_t *removed)
{
    *removed = 0;
    if (f->fentity == 0) return 0;
    MDB_cursor *ec, *fc;
    int rc = mdb_cursor_open(txn, f->fentity, &ec);
    if (rc) return rc;
    if ((rc = mdb_cursor_open(txn, f->feed, &fc))) {
        mdb_cursor_close(ec);
        return rc;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        unsigned char key[ENTITY_KEY_BYTES];
        entity_key(key, (sl_entity_t){kind, ids[i]}, 0);
        MDB_val k = {ENTITY_KEY_BYTES, key}, v;
        /* each step deletes the key at the cursor: SET_RANGE again finds the next */
        while ((rc = mdb_cursor_get(ec, &k, &v, MDB_SET_RANGE)) == 0 && k.mv_size == ENTITY_KEY_BYTES &&
               memcmp(k.mv_data, key, 9) == 0) {
            uint64_t seq = sl_be64_get((const unsigned char *)k.mv_data + 9);
            MDB_val sk = {8, &seq}, sv;
            if ((rc = mdb_cursor_get(fc, &sk, &sv, MDB_SET_KEY)) == 0) {
                /* only an entry that is theirs (a key left by damage names another's) */
                sl_feed_item_t it;
                cJSON *doc;
                int mine = item_read(seq, &sv, &it, &doc) == 0 && it.entity.kind == kind && it.entity.id == ids[i];
                cJSON_Delete(doc);
                if (mine) {
                    if ((rc = remove_at(f, txn, fc, seq, &sv))) break;
                    (*removed)++;
                }
            } else if (rc != MDB_NOTFOUND) {
                break;
            }
            /* (the entry's removal took its key; one whose entry is gone goes too) */
            MDB_val again = {ENTITY_KEY_BYTES, key};
            entity_key(key, (sl_entity_t){kind, ids[i]}, seq);
            rc = mdb_del(txn, f->fentity, &again, NULL);
            if (rc && rc != MDB_NOTFOUND) break;
            entity_key(key, (sl_entity_t){kind, ids[i]}, 0);
            k = (MDB_val){ENTITY_KEY_BYTES, key};
        }
        if (rc == MDB_NOTFOUND) rc = 0;
    }
    mdb_cursor_close(fc);
    mdb_cursor_close(ec);
    return rc;
}

static int prune(sl_feed_t *f, MDB_txn *txn, int64_t now)
{
    int64_t keep = atomic_load(&f->retention_ms);
    if (keep <= 0) return 0;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, f->feed, &cur);
    if (rc) return rc;
    for (int n = 0; n < PRUNE_MAX && (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0; n++) {
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        sl_feed_item_t it = {.seq = seq};
        sl_feed_decode(v.mv_data, v.mv_size, &it); /* at_ms; an unreadable value is as old as can be */
        if (it.at_ms > now - keep) break;
        if ((rc = remove_at(f, txn, cur, seq, &v))) break;
        if (seq > f->txn_pruned) f->txn_pruned = seq;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc == 0 && f->txn_pruned != f->committed_pruned) { /* a reader's position before it misses entries */
        MDB_val pk = PRUNED_KEY, pv = {8, &f->txn_pruned};
        rc = mdb_put(txn, f->tmeta, &pk, &pv, 0);
    }
    return rc;
}

/* ---- reading ---- */

static int passes(const sl_feed_filter_t *flt, const sl_feed_item_t *it)
{
    if (flt == NULL) return 1;
    if (flt->type && (it->type == NULL || strlen(flt->type) != it->type_len ||
                      memcmp(flt->type, it->type, it->type_len) != 0))
        return 0;
    if (flt->entity && (it->entity.kind != flt->entity->kind || it->entity.id != flt->entity->id)) return 0;
    if (flt->n_rules == 0) return 1;
    if (it->rule == NULL) return 0;
    for (size_t i = 0; i < flt->n_rules; i++)
        if (strlen(flt->rules[i]) == it->rule_len && memcmp(flt->rules[i], it->rule, it->rule_len) == 0) return 1;
    return 0;
}

long sl_feed_foreach(sl_feed_t *f, MDB_txn *txn, uint64_t after, size_t limit, const sl_feed_filter_t *flt,
                     int (*fn)(const sl_feed_item_t *it, void *arg), void *arg, uint64_t *last)
{
    if (last) *last = after;
    uint64_t upto = atomic_load(&f->durable);
    if (after == UINT64_MAX || f->feed == 0) return 0; /* nothing can follow; after + 1 would wrap */
    size_t max_scan = flt && flt->max_scan ? flt->max_scan : SIZE_MAX;
    /* by entity: through its index */
    int by_entity = flt && flt->entity && f->fentity;
    MDB_cursor *cur, *ec = NULL;
    int rc = mdb_cursor_open(txn, f->feed, &cur);
    if (rc) return -1;
    if (by_entity && (rc = mdb_cursor_open(txn, f->fentity, &ec))) {
        mdb_cursor_close(cur);
        return -1;
    }
    uint64_t from = after + 1;
    unsigned char ekey[ENTITY_KEY_BYTES];
    MDB_val k = {8, &from}, v;
    if (by_entity) {
        entity_key(ekey, *flt->entity, from);
        k = (MDB_val){ENTITY_KEY_BYTES, ekey};
    }
    long n = 0;
    size_t scanned = 0;
    MDB_cursor_op op = MDB_SET_RANGE;
    for (;;) {
        if ((size_t)n >= limit || scanned >= max_scan) break;
        uint64_t seq;
        if (by_entity) {
            if ((rc = mdb_cursor_get(ec, &k, &v, op))) break;
            op = MDB_NEXT;
            if (k.mv_size != ENTITY_KEY_BYTES || memcmp(k.mv_data, ekey, 9) != 0) {
                rc = MDB_NOTFOUND;
                break;
            }
            seq = sl_be64_get((const unsigned char *)k.mv_data + 9);
            if (seq > upto) break;
            MDB_val sk = {8, &seq};
            if ((rc = mdb_cursor_get(cur, &sk, &v, MDB_SET_KEY)) == MDB_NOTFOUND) continue;
            if (rc) break;
        } else {
            if ((rc = mdb_cursor_get(cur, &k, &v, op))) break;
            op = MDB_NEXT;
            memcpy(&seq, k.mv_data, 8);
            if (seq > upto) break;
        }
        scanned++;
        if (last) *last = seq;
        sl_feed_item_t it;
        cJSON *doc;
        int r = item_read(seq, &v, &it, &doc);
        if (r < 0 && !it.old_layout) { /* damaged: passes only an unfiltered read, which sees its bytes */
            it = (sl_feed_item_t){.seq = seq, .json = v.mv_data, .len = v.mv_size};
        }
        int stop = 0;
        if (passes(flt, &it)) {
            n++;
            stop = fn(&it, arg);
        }
        cJSON_Delete(doc);
        if (stop) {
            rc = 0;
            break;
        }
    }
    if (ec) mdb_cursor_close(ec);
    mdb_cursor_close(cur);
    return rc == 0 || rc == MDB_NOTFOUND ? n : -1;
}

typedef struct {
    sl_buf_t *out;
    int first;
} read_ctx_t;

static int append_one(const sl_feed_item_t *it, void *arg)
{
    read_ctx_t *r = arg;
    if (!r->first) sl_buf_append(r->out, ",", 1);
    r->first = 0;
    sl_buf_append(r->out, it->json, it->len);
    return 0;
}

long sl_feed_read(sl_feed_t *f, MDB_txn *txn, uint64_t after, size_t limit, const sl_feed_filter_t *flt,
                  sl_buf_t *out, uint64_t *last)
{
    read_ctx_t r = {out, 1};
    return sl_feed_foreach(f, txn, after, limit, flt, append_one, &r, last);
}

/* ---- the step: databases, commits, pruning ---- */

static int open_index(MDB_txn *txn, const char *name, int read_only, MDB_dbi *dbi, int *created)
{
    int rc = mdb_dbi_open(txn, name, 0, dbi);
    if (rc == MDB_NOTFOUND && !read_only) {
        *created = 1;
        return mdb_dbi_open(txn, name, MDB_CREATE, dbi);
    }
    if (rc == MDB_NOTFOUND) {
        *dbi = 0;
        return 0;
    }
    return rc;
}

static int on_open(void *arg, MDB_txn *txn, int read_only)
{
    sl_feed_t *f = arg;
    unsigned c = read_only ? 0 : MDB_CREATE;
    int rc, fresh = 0;
    if ((rc = mdb_dbi_open(txn, "feed", c | MDB_INTEGERKEY, &f->feed))) return rc;
    if ((rc = mdb_dbi_open(txn, "tmeta", c, &f->tmeta))) return rc;
    /* fcause came with retention (issue 16), fentity with this component
     * (issue 22): built from the feed on a store from before */
    if ((rc = open_index(txn, "fcause", read_only, &f->fcause, &fresh))) return rc;
    if ((rc = open_index(txn, "fentity", read_only, &f->fentity, &fresh))) return rc;
    if (fresh) {
        /* the index that existed is rebuilt as well: putting an existing key is a no-op */
        if ((rc = index_all(f, txn))) return rc;
    }
    uint64_t last;
    if ((rc = last_get(f, txn, &last))) return rc;
    f->txn_last = f->committed_last = f->prev_committed = last;
    atomic_store(&f->durable, last);
    MDB_val pk = PRUNED_KEY, pv;
    uint64_t pruned = 0;
    if ((rc = mdb_get(txn, f->tmeta, &pk, &pv)) == 0 && pv.mv_size == 8) memcpy(&pruned, pv.mv_data, 8);
    else if (rc && rc != MDB_NOTFOUND) return rc;
    f->txn_pruned = f->committed_pruned = pruned;
    atomic_store(&f->pruned, pruned);
    return 0;
}

static int64_t on_due(void *arg)
{
    sl_feed_t *f = arg;
    return atomic_load(&f->retention_ms) > 0 ? f->last_prune_ms + PRUNE_EVERY_MS : INT64_MAX;
}

static int on_tick(void *arg, MDB_txn *txn, int64_t now, int *wrote)
{
    sl_feed_t *f = arg;
    f->last_prune_ms = now;
    *wrote = 1;
    return prune(f, txn, now);
}

static void on_after_txn(void *arg, int ok)
{
    sl_feed_t *f = arg;
    if (ok) {
        if (f->txn_last != f->committed_last) f->last_entry_ms = sl_now_ms();
        f->prev_committed = f->committed_last;
        f->committed_last = f->txn_last;
        f->committed_pruned = f->txn_pruned;
        atomic_store(&f->pruned, f->txn_pruned);
    } else {
        f->txn_last = f->committed_last;
        f->txn_pruned = f->committed_pruned;
    }
}

/* While entries come, the feed's consumers (webhooks, streams) wait for
 * each next one: the stage commits without waiting for its interval. */
static int on_awaited(void *arg)
{
    const sl_feed_t *f = arg;
    return f->last_entry_ms && sl_now_ms() - f->last_entry_ms < FEED_AWAITED_MS;
}

static void on_synced(void *arg, int all)
{
    sl_feed_t *f = arg;
    uint64_t d = all ? f->committed_last : f->prev_committed;
    if (d > atomic_load(&f->durable)) {
        atomic_store(&f->durable, d);
        for (size_t i = 0; i < f->n_subs; i++) f->subs[i].cb(f->subs[i].arg);
    }
}

sl_feed_t *sl_feed_new(int64_t retention_ms)
{
    sl_feed_t *f = calloc(1, sizeof(*f));
    if (f == NULL) return NULL;
    atomic_store(&f->retention_ms, retention_ms);
    f->step = (sl_stage_step_t){.name = "feed", .phase = SL_PHASE_FEED, .arg = f, .open = on_open, .due = on_due, .tick = on_tick,
                                .after_txn = on_after_txn, .synced = on_synced, .awaited = on_awaited};
    return f;
}

void sl_feed_free(sl_feed_t *f)
{
    if (f == NULL) return;
    sl_buf_free(&f->v);
    free(f);
}

int sl_feed_attach(sl_feed_t *f, sl_stage_t *stage) { return sl_stage_add_step(stage, &f->step); }

void sl_feed_set_retention(sl_feed_t *f, int64_t retention_ms) { atomic_store(&f->retention_ms, retention_ms); }

int sl_feed_subscribe(sl_feed_t *f, void (*cb)(void *arg), void *arg)
{
    if (f->n_subs == MAX_SUBSCRIBERS) return SL_EINVAL;
    f->subs[f->n_subs].cb = cb;
    f->subs[f->n_subs].arg = arg;
    f->n_subs++;
    return 0;
}

uint64_t sl_feed_durable_seq(const sl_feed_t *f) { return atomic_load(&f->durable); }
uint64_t sl_feed_pruned_upto(const sl_feed_t *f) { return atomic_load(&f->pruned); }

int sl_feed_last(sl_feed_t *f, MDB_txn *txn, uint64_t *last)
{
    *last = 0;
    return f->tmeta ? last_get(f, txn, last) : 0;
}

/* ---- rebuild ---- */

/* What a copied feed's indexes must hold: how many keys and the sum of their
 * hashes (entries with an entity, with a cause); old: an entry from before
 * the header (its entity is in its JSON). */
typedef struct {
    uint64_t n[2], sum[2]; /* [0] fentity, [1] fcause */
    int old;
} feed_count_t;

static uint64_t key_hash(const void *key, size_t n) { return sl_hash128(key, n, CAUSE_SEED).hi; }

/* Copies every entry of the database named name from src to dst. count
 * (may be NULL): for the feed, what its indexes must hold (which = -1); for
 * an index (which 0 fentity, 1 fcause), what it holds. */
static int copy_db(MDB_txn *src, MDB_txn *dst, const char *name, MDB_dbi dst_dbi, unsigned flags,
                   feed_count_t *count, int which)
{
    MDB_dbi s;
    int rc = mdb_dbi_open(src, name, 0, &s);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(src, s, &cur))) return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (count && which >= 0) {
            count->n[which]++;
            count->sum[which] += key_hash(k.mv_data, k.mv_size);
        } else if (count) {
            sl_feed_item_t it = {0};
            if (k.mv_size == 8) memcpy(&it.seq, k.mv_data, 8);
            int r = sl_feed_decode(v.mv_data, v.mv_size, &it);
            if (r == 1) count->old = 1;
            unsigned char ek[ENTITY_KEY_BYTES], ck[16];
            if (r == 0 && it.entity.kind) {
                entity_key(ek, it.entity, it.seq);
                count->n[0]++;
                count->sum[0] += key_hash(ek, sizeof(ek));
            }
            if (r == 0 && it.cause_hash) {
                cause_key(ck, it.cause_hash, it.seq);
                count->n[1]++;
                count->sum[1] += key_hash(ck, sizeof(ck));
            }
        }
        if ((rc = mdb_put(dst, dst_dbi, &k, &v, flags))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* The old store's index `name` (which: 0 fentity, 1 fcause), copied in key
 * order; SL_EAGAIN when it does not hold exactly the keys the copied feed
 * needs (as many, and the same sum of their hashes). */
static int copy_index(MDB_txn *src, MDB_txn *dst, const char *name, MDB_dbi dst_dbi, const feed_count_t *want,
                      int which)
{
    MDB_dbi s;
    MDB_stat st;
    int rc = mdb_dbi_open(src, name, 0, &s);
    if (rc == MDB_NOTFOUND) return SL_EAGAIN;
    if (rc || (rc = mdb_stat(src, s, &st))) return rc;
    if (st.ms_entries != want->n[which]) return SL_EAGAIN;
    feed_count_t got = {0};
    if ((rc = copy_db(src, dst, name, dst_dbi, MDB_APPEND, &got, which))) return rc;
    return got.n[which] == want->n[which] && got.sum[which] == want->sum[which] ? 0 : SL_EAGAIN;
}

int sl_feed_carry_over(sl_feed_t *f, MDB_txn *dst, MDB_txn *src)
{
    feed_count_t count = {0};
    int rc = copy_db(src, dst, "feed", f->feed, MDB_APPEND, &count, -1);
    if (rc == 0) rc = copy_db(src, dst, "tmeta", f->tmeta, 0, NULL, -1); /* feed_last, and what else was there */
    /* The indexes: the old store's in key order when they count what the feed
     * holds (a rebuild of a large feed spends most of its carry-over on
     * random inserts otherwise); else built from the entries. */
    if (rc == 0) {
        rc = count.old ? SL_EAGAIN : copy_index(src, dst, "fentity", f->fentity, &count, 0);
        if (rc == 0) rc = copy_index(src, dst, "fcause", f->fcause, &count, 1);
        if (rc == SL_EAGAIN) {
            if ((rc = mdb_drop(dst, f->fentity, 0)) == 0 && (rc = mdb_drop(dst, f->fcause, 0)) == 0)
                rc = index_all(f, dst);
        }
    }
    uint64_t last = 0;
    if (rc == 0) rc = last_get(f, dst, &last);
    if (rc) return rc;
    f->txn_last = f->committed_last = f->prev_committed = last;
    atomic_store(&f->durable, last);
    return 0;
}

/* ---- verify ---- */

static int same(const char *a, size_t an, const char *b)
{
    return (a == NULL) == (b == NULL) && (a == NULL || (strlen(b) == an && memcmp(a, b, an) == 0));
}

int sl_feed_verify(sl_feed_t *f, MDB_txn *txn, int (*has_message)(const char *id, void *arg), void *arg, FILE *out,
                   uint64_t *n_feed, uint64_t *problems)
{
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t prev = 0, last = 0, indexed = 0;
    int rc = last_get(f, txn, &last);
    if (rc || (rc = mdb_cursor_open(txn, f->feed, &cur))) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        (*n_feed)++;
        if (seq <= prev || seq > last) {
            fprintf(out, "feed: trigger %llu out of order (previous %llu, last %llu)\n", (unsigned long long)seq,
                    (unsigned long long)prev, (unsigned long long)last);
            (*problems)++;
        }
        prev = seq;
        sl_feed_item_t it = {.seq = seq}, js = {.seq = seq};
        int layout = sl_feed_decode(v.mv_data, v.mv_size, &it);
        cJSON *doc = NULL;
        js.json = it.json;
        js.len = it.len;
        if (layout < 0 || sl_feed_item_parse(&js, &doc)) {
            fprintf(out, "feed: trigger %llu is not valid JSON with a cause\n", (unsigned long long)seq);
            (*problems)++;
            cJSON_Delete(doc);
            continue;
        }
        const cJSON *cause = cJSON_GetObjectItemCaseSensitive(doc, "cause");
        const cJSON *mid = cJSON_GetObjectItemCaseSensitive(cause, "messageId");
        if (cause == NULL) {
            fprintf(out, "feed: trigger %llu is not valid JSON with a cause\n", (unsigned long long)seq);
            (*problems)++;
        } else if (cJSON_IsString(mid) && !has_message(mid->valuestring, arg)) {
            fprintf(out, "feed: trigger %llu's cause %s is not a stored event\n", (unsigned long long)seq,
                    mid->valuestring);
            (*problems)++;
        }
        if (layout == 0) { /* the header says what the JSON says */
            const char *jr = sl_json_str(doc, "rule"), *jt = sl_json_str(doc, "type");
            if (!same(it.rule, it.rule_len, jr) || !same(it.type, it.type_len, jt) ||
                it.entity.kind != js.entity.kind || it.entity.id != js.entity.id || it.cause_hash != js.cause_hash) {
                fprintf(out, "feed: trigger %llu's header (rule, type, entity, cause) differs from its JSON\n",
                        (unsigned long long)seq);
                (*problems)++;
            }
        } else {
            it = js;
        }
        if (it.entity.kind && f->fentity) {
            unsigned char key[ENTITY_KEY_BYTES];
            entity_key(key, it.entity, seq);
            MDB_val ek = {ENTITY_KEY_BYTES, key}, ev;
            if (mdb_get(txn, f->fentity, &ek, &ev) == 0) {
                indexed++;
            } else {
                fprintf(out, "feed: trigger %llu is missing from the entity index\n", (unsigned long long)seq);
                (*problems)++;
            }
        }
        cJSON_Delete(doc);
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) return rc;
    /* and the index names nothing else */
    uint64_t keys = 0;
    if (f->fentity == 0) return 0;
    if ((rc = mdb_cursor_open(txn, f->fentity, &cur))) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        keys++;
        const unsigned char *p = k.mv_data;
        uint64_t seq = k.mv_size == ENTITY_KEY_BYTES ? sl_be64_get(p + 9) : 0;
        MDB_val sk = {8, &seq}, sv;
        if (k.mv_size != ENTITY_KEY_BYTES || mdb_get(txn, f->feed, &sk, &sv) != 0) {
            fprintf(out, "feed: the entity index names trigger %llu, which is not in the feed\n",
                    (unsigned long long)seq);
            (*problems)++;
        }
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) return rc;
    if (keys != indexed) {
        fprintf(out, "feed: the entity index holds %llu keys for %llu entries\n", (unsigned long long)keys,
                (unsigned long long)indexed);
        (*problems)++;
    }
    return 0;
}
