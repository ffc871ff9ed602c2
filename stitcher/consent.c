/* consent.c - each person's consent categories and suppression flag. See
 * consent.h and docs/PRIVACY.md. */
#include "consent.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each part (the categories, the flag) goes by the latest event time that
 * stated it (seen): an older statement arriving late changes nothing, even
 * when the newer one only repeated what was already held. A repeat moves
 * seen only when it is SEEN_GRAIN_MS later than the last mark (the tag
 * repeats the categories on every message: one write a minute per person,
 * not one per event), so a contrary statement less than a minute older than
 * the latest repeat can still win. */
#define SEEN_GRAIN_MS 60000
typedef struct {
    int64_t at_ms;       /* the categories' last change (event time); 0: never told */
    int64_t seen_ms;     /* the latest event time that stated categories */
    int64_t unsub_at_ms; /* the flag's last change; 0: never */
    int64_t unsub_seen_ms;
    uint64_t at_seq, unsub_seq; /* the events that set each part (retention keeps them: proof) */
    uint64_t hash;       /* of the categories (pref_hash): a repeat is known without parsing */
    int32_t unsub;
    uint32_t len;        /* then the categories JSON */
} consent_hdr_t;

/* One category's share of a set's hash: the sum over the set does not
 * depend on the order the categories came in. */
static uint64_t pref_hash(const char *name, int value)
{
    return sl_hash128(name, strlen(name), value ? 0x5eed1 : 0x5eed0).lo;
}

static int name_ok(const char *name)
{
    size_t n = strlen(name);
    return n > 0 && n <= SL_CONSENT_MAX_NAME;
}

/* Adds name: value to prefs unless it breaks a bound (silently: one odd
 * category must not lose the others). */
static int add_pref(cJSON *prefs, const char *name, int value)
{
    if (!name_ok(name)) return 0;
    cJSON_DeleteItemFromObjectCaseSensitive(prefs, name); /* the last word wins */
    if (cJSON_GetArraySize(prefs) >= CONSENT_MAX_CATEGORIES) return 0;
    return cJSON_AddBoolToObject(prefs, name, value) ? 0 : SL_ENOMEM;
}

static int add_ids(cJSON *prefs, sl_jval_t ids, int value, sl_arena_t *a)
{
    sl_jiter_t it;
    sl_jval_t id;
    double d;
    if (sl_jtype(ids) != SL_JARR) return 0;
    sl_jiter(ids, &it);
    while (sl_jnext(&it, NULL, &id)) {
        char num[32];
        const char *name = sl_jstr(id, a, NULL);
        if (name == NULL && sl_jnum(id, &d) && fabs(d) < 9e15 && d == floor(d)) {
            snprintf(num, sizeof(num), "%lld", (long long)d);
            name = num;
        }
        int rc = name ? add_pref(prefs, name, value) : 0;
        if (rc) return rc;
    }
    return 0;
}

/* Segment's categoryPreferences as kept: the booleans of acceptable names,
 * the first CONSENT_MAX_CATEGORIES (its members are unique: the collector
 * refuses a repeated member). */
static int build_seg(consent_in_t *in)
{
    if ((in->prefs = cJSON_CreateObject()) == NULL) return SL_ENOMEM;
    sl_jiter_t it;
    sl_jval_t k, v;
    int rc = 0;
    sl_jiter(in->seg, &it);
    while (rc == 0 && sl_jnext(&it, &k, &v)) {
        int t = sl_jtype(v);
        const char *name = t == SL_JTRUE || t == SL_JFALSE ? sl_jstr(k, in->arena, NULL) : NULL;
        if (name) rc = add_pref(in->prefs, name, t == SL_JTRUE);
    }
    return rc;
}

int consent_read_msg(const sl_jindex_t *top, const sl_jindex_t *context, const sl_config_t *cfg, int trusted, int64_t ts_ms, uint64_t seq,
                     consent_in_t *in, sl_arena_t *arena)
{
    memset(in, 0, sizeof(*in));
    in->ts_ms = ts_ms;
    in->seq = seq;
    in->arena = arena;
    sl_jval_t event = sl_jindex_get(top, "event");
    if (sl_jstr_eq(sl_jindex_get(top, "type"), "track", 5) && sl_jtype(event) == SL_JSTR) {
        if (sl_jstr_eq(event, cfg->unsubscribe_event, strlen(cfg->unsubscribe_event))) in->unsub = 1;
        /* anyone may unsubscribe a person; only a server-side source may
         * subscribe one again (a browser key is public) */
        else if (sl_jstr_eq(event, cfg->subscribe_event, strlen(cfg->subscribe_event)) && trusted) in->unsub = -1;
    }
    sl_jval_t seg = sl_jget(sl_jindex_get(context, "consent"), "categoryPreferences");
    sl_jval_t rs = sl_jindex_get(context, "consentManagement");
    if (sl_jtype(seg) == SL_JOBJ) {
        /* the tag repeats the same categories on every message: only their
         * hash now, the object when they differ from the person's */
        sl_jiter_t it;
        sl_jval_t k, v;
        int n = 0;
        sl_jiter(seg, &it);
        while (n < CONSENT_MAX_CATEGORIES && sl_jnext(&it, &k, &v)) {
            int t = sl_jtype(v);
            const char *name = t == SL_JTRUE || t == SL_JFALSE ? sl_jstr(k, arena, NULL) : NULL;
            if (name == NULL || !name_ok(name)) continue;
            in->hash += pref_hash(name, t == SL_JTRUE);
            n++;
        }
        if (n) in->seg = seg, in->states = 1;
        return 0;
    }
    if (sl_jtype(rs) != SL_JOBJ) return 0;
    if ((in->prefs = cJSON_CreateObject()) == NULL) return SL_ENOMEM;
    /* grants first: past the bound, they matter most; a refusal of the same id wins */
    int rc = add_ids(in->prefs, sl_jget(rs, "allowedConsentIds"), 1, arena);
    if (rc == 0) rc = add_ids(in->prefs, sl_jget(rs, "deniedConsentIds"), 0, arena);
    if (rc || in->prefs->child == NULL) { /* nothing recognised: says nothing */
        consent_in_free(in);
        return rc;
    }
    const cJSON *c;
    for (c = in->prefs->child; c; c = c->next) in->hash += pref_hash(c->string, cJSON_IsTrue(c));
    in->states = 1;
    return 0;
}

void consent_in_free(consent_in_t *in)
{
    cJSON_Delete(in->prefs);
    in->prefs = NULL;
}

/* The person's record: *h (zeroed when there is none) and *prefs (owned,
 * NULL when never told). */
static int load(MDB_txn *txn, MDB_dbi dbi, uint64_t person, consent_hdr_t *h, cJSON **prefs)
{
    MDB_val k = {8, &person}, v;
    memset(h, 0, sizeof(*h));
    if (prefs) *prefs = NULL;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size < sizeof(*h)) return MDB_CORRUPTED;
    memcpy(h, v.mv_data, sizeof(*h));
    if (sizeof(*h) + h->len != v.mv_size) return MDB_CORRUPTED;
    if (prefs && h->len) {
        *prefs = cJSON_ParseWithLength((const char *)v.mv_data + sizeof(*h), h->len);
        if (*prefs == NULL) return MDB_CORRUPTED;
    }
    return 0;
}

/* Writes the record: h, then the categories text (len bytes; not inside
 * the record being replaced). */
static int save_text(MDB_txn *txn, MDB_dbi dbi, uint64_t person, consent_hdr_t *h, const char *txt, size_t len)
{
    h->len = (uint32_t)len;
    MDB_val k = {8, &person}, v = {sizeof(*h) + h->len, NULL};
    int rc = mdb_put(txn, dbi, &k, &v, MDB_RESERVE);
    if (rc == 0) {
        memcpy(v.mv_data, h, sizeof(*h));
        if (h->len) memcpy((char *)v.mv_data + sizeof(*h), txt, h->len);
    }
    return rc;
}

static int save(MDB_txn *txn, MDB_dbi dbi, uint64_t person, consent_hdr_t *h, const cJSON *prefs)
{
    char *txt = prefs ? cJSON_PrintUnformatted(prefs) : NULL;
    if (prefs && txt == NULL) return SL_ENOMEM;
    int rc = save_text(txn, dbi, person, h, txt, txt ? strlen(txt) : 0);
    cJSON_free(txt);
    return rc;
}

void consent_cache_clear(consent_cache_t *c)
{
    if (c) memset(c, 0, sizeof(*c));
}

static void cache_forget(consent_cache_t *c, uint64_t person)
{
    if (c && c->e[person % CONSENT_CACHE_SLOTS].person == person) c->e[person % CONSENT_CACHE_SLOTS].person = 0;
}

int consent_apply(MDB_txn *txn, MDB_dbi dbi, consent_cache_t *cache, uint64_t person, consent_in_t *in, int *changed)
{
    *changed = 0;
    if (!in->states && in->unsub == 0) return 0; /* most events */
    int64_t ts = in->ts_ms > 0 ? in->ts_ms : 1;
    if (cache && in->unsub == 0) { /* the same categories again, within the grain: nothing would change */
        const __typeof__(cache->e[0]) *c = &cache->e[person % CONSENT_CACHE_SLOTS];
        if (c->person == person && c->hash == in->hash && ts >= c->seen_ms && ts - c->seen_ms < SEEN_GRAIN_MS)
            return 0;
    }
    consent_hdr_t h;
    memset(&h, 0, sizeof(h));
    MDB_val k = {8, &person}, v = {0, NULL};
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (rc == 0) {
        if (v.mv_size < sizeof(h)) return MDB_CORRUPTED;
        memcpy(&h, v.mv_data, sizeof(h));
        if (sizeof(h) + h.len != v.mv_size) return MDB_CORRUPTED;
    }
    const char *old = rc == 0 && h.len ? (const char *)v.mv_data + sizeof(h) : NULL;
    char *txt = NULL;   /* the categories as they will be stored */
    size_t len = h.len; /* (NULL: the old ones stay) */
    int dirty = 0;
    /* a part changes at the first event that says otherwise, unless an
     * event with a later time already stated it */
    if (in->states && ts >= h.seen_ms) {
        if (!old || h.hash != in->hash) { /* other categories (the same ones, in any order, hash alike) */
            if ((in->seg.n && in->prefs == NULL && (rc = build_seg(in))) ||
                (txt = cJSON_PrintUnformatted(in->prefs)) == NULL)
                return rc ? rc : SL_ENOMEM;
            len = strlen(txt);
            h.hash = in->hash;
            h.at_ms = h.seen_ms = ts;
            h.at_seq = in->seq;
            dirty = *changed = 1;
        } else if (ts - h.seen_ms >= SEEN_GRAIN_MS) { /* the usual repeat */
            h.seen_ms = ts;
            dirty = 1;
        }
    }
    int unsub = in->unsub > 0;
    if (in->unsub && ts >= h.unsub_seen_ms) {
        if (h.unsub_at_ms == 0 || unsub != h.unsub) {
            h.unsub = unsub;
            h.unsub_at_ms = h.unsub_seen_ms = ts;
            h.unsub_seq = in->seq;
            dirty = *changed = 1;
        } else if (ts - h.unsub_seen_ms >= SEEN_GRAIN_MS) {
            h.unsub_seen_ms = ts;
            dirty = 1;
        }
    }
    char *copy = NULL; /* the old text, copied out of the record it rewrites */
    if (dirty && txt == NULL && old) {
        if ((copy = malloc(len ? len : 1)) == NULL) return SL_ENOMEM;
        memcpy(copy, old, len);
    }
    int has_categories = txt != NULL || old != NULL;
    rc = dirty ? save_text(txn, dbi, person, &h, txt ? txt : copy, txt || copy ? len : 0) : 0;
    cJSON_free(txt);
    free(copy);
    if (cache && rc == 0) { /* what the record now says */
        __typeof__(cache->e[0]) *c = &cache->e[person % CONSENT_CACHE_SLOTS];
        if (has_categories) c->person = person, c->hash = h.hash, c->seen_ms = h.seen_ms;
        else if (c->person == person) c->person = 0;
    }
    return rc;
}

int consent_merge(MDB_txn *txn, MDB_dbi dbi, consent_cache_t *cache, uint64_t survivor, uint64_t absorbed)
{
    cache_forget(cache, survivor);
    cache_forget(cache, absorbed);
    consent_hdr_t hs, hx;
    cJSON *ps = NULL, *px = NULL;
    int rc = load(txn, dbi, absorbed, &hx, &px);
    if (rc || (hx.seen_ms == 0 && hx.unsub_seen_ms == 0)) goto out; /* nothing to carry */
    if ((rc = load(txn, dbi, survivor, &hs, &ps))) goto out;
    const cJSON *keep = ps;
    if (hx.seen_ms > hs.seen_ms) {
        keep = px;
        hs.hash = hx.hash;
        hs.at_ms = hx.at_ms;
        hs.seen_ms = hx.seen_ms;
        hs.at_seq = hx.at_seq;
    }
    if (hx.unsub_seen_ms > hs.unsub_seen_ms) {
        hs.unsub = hx.unsub;
        hs.unsub_at_ms = hx.unsub_at_ms;
        hs.unsub_seen_ms = hx.unsub_seen_ms;
        hs.unsub_seq = hx.unsub_seq;
    }
    if ((rc = save(txn, dbi, survivor, &hs, keep))) goto out;
    rc = consent_forget(txn, dbi, cache, absorbed);
out:
    cJSON_Delete(ps);
    cJSON_Delete(px);
    return rc;
}

int consent_forget(MDB_txn *txn, MDB_dbi dbi, consent_cache_t *cache, uint64_t person)
{
    cache_forget(cache, person);
    MDB_val k = {8, &person};
    int rc = mdb_del(txn, dbi, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int consent_append_json(sl_buf_t *out, MDB_txn *txn, MDB_dbi dbi, uint64_t person)
{
    consent_hdr_t h;
    MDB_val k = {8, &person}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) return sl_buf_appends(out, "null");
    if (rc) return rc;
    if (v.mv_size < sizeof(h)) return MDB_CORRUPTED;
    memcpy(&h, v.mv_data, sizeof(h));
    if (sizeof(h) + h.len != v.mv_size) return MDB_CORRUPTED;
    sl_buf_appends(out, "{\"categories\":");
    if (h.len) sl_buf_append(out, (const char *)v.mv_data + sizeof(h), h.len);
    else sl_buf_appends(out, "null");
    sl_buf_appends(out, ",\"updated_at\":");
    sl_buf_append_iso(out, h.at_ms);
    sl_buf_appends(out, h.unsub ? ",\"unsubscribed\":true,\"unsubscribed_at\":" : ",\"unsubscribed\":false,\"unsubscribed_at\":");
    sl_buf_append_iso(out, h.unsub_at_ms);
    return sl_buf_appends(out, "}");
}

int consent_view_json(sl_buf_t *out, MDB_txn *txn, MDB_dbi dbi, uint64_t person)
{
    consent_hdr_t h;
    MDB_val k = {8, &person}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) return sl_buf_appends(out, ",\"consent\":{},\"unsubscribed\":false");
    if (rc) return rc;
    if (v.mv_size < sizeof(h)) return MDB_CORRUPTED;
    memcpy(&h, v.mv_data, sizeof(h));
    if (sizeof(h) + h.len != v.mv_size) return MDB_CORRUPTED;
    sl_buf_appends(out, ",\"consent\":");
    if (h.len) sl_buf_append(out, (const char *)v.mv_data + sizeof(h), h.len);
    else sl_buf_appends(out, "{}");
    return sl_buf_appends(out, h.unsub ? ",\"unsubscribed\":true" : ",\"unsubscribed\":false");
}

int consent_allows(MDB_txn *txn, MDB_dbi dbi, uint64_t person, const char *category, int *ok, const char **why)
{
    consent_hdr_t h;
    cJSON *prefs = NULL;
    *ok = 0;
    int rc = load(txn, dbi, person, &h, category ? &prefs : NULL);
    if (rc) return rc;
    if (h.unsub) *why = "unsubscribed";
    else if (category && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(prefs, category))) *why = "consent";
    else *ok = 1;
    cJSON_Delete(prefs);
    return 0;
}

int consent_keeps(MDB_txn *txn, MDB_dbi dbi, uint64_t person, uint64_t seq, int *keep)
{
    consent_hdr_t h;
    *keep = 0;
    int rc = load(txn, dbi, person, &h, NULL);
    if (rc == 0) *keep = (h.at_seq == seq && h.len) || (h.unsub_seq == seq && h.unsub_at_ms);
    return rc;
}

int consent_check_record(const void *data, size_t len)
{
    consent_hdr_t h;
    if (len < sizeof(h)) return 0;
    memcpy(&h, data, sizeof(h));
    if (sizeof(h) + h.len != len) return 0;
    if (h.len == 0) return 1;
    cJSON *p = cJSON_ParseWithLength((const char *)data + sizeof(h), h.len);
    int ok = cJSON_IsObject(p);
    cJSON_Delete(p);
    return ok;
}
