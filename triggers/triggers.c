/* triggers.c - trigger rules, durable timers, marketing pressure and the
 * trigger feed. See sl_triggers.h for the storage layout and docs/TRIGGERS.md
 * for the semantics of each rule.
 *
 * Timers are lazy: a state records when its rule should next look at it
 * (due_ms) and whether a timer is pending (timer_ms). New activity only moves
 * due_ms forward; the pending timer, when it fires, sees the later due_ms and
 * re-arms itself. So an event costs a state write, never a timer delete. */
#define _GNU_SOURCE /* memmem */
#include "sl_triggers.h"
#include "sl_rules.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEP '\x1f'
#define MAX_PRODUCTS 50
#define MAX_TICK_TIMERS 1000
#define WAITING_CART_TTL_MS (30LL * 86400000) /* an anonymous abandoned cart waits this long for an identity */
#define MAX_RULES 64

typedef struct {
    int64_t started_ms, last_ms, due_ms, timer_ms;
    uint32_t waiting, n_products;
    double value;
    char currency[8];
    uint32_t products_len; /* then the products JSON array */
    uint32_t pad;
} cart_t;

typedef struct {
    int64_t timer_ms, fired_for_ms;
} inact_t;

/* What the rules read of one stored event (docs/TRIGGERS.md says which
 * members each rule looks at). */
typedef struct {
    int track, page;          /* its type */
    const char *event;        /* track: the event name */
    const cJSON *props;       /* properties */
    const char *url, *path;   /* page: properties.url / .path, else context.page's; the path without ?# */
    int64_t ts_ms;            /* the event's corrected timestamp */
} rule_msg_t;

#define MAX_SUBSCRIBERS 8

struct sl_trig_s {
    const sl_config_t *_Atomic cfg;      /* written by the stage thread (reload), read by /metrics */
    sl_stitch_t *stitch;
    sl_stage_step_t step;
    sl_ident_listener_t listener;
    struct {
        void (*cb)(void *);
        void *arg;
    } subs[MAX_SUBSCRIBERS];             /* told when the durable feed advanced */
    size_t n_subs;
    MDB_dbi feed, timers, tstate, pressure, tmeta, fcause;
    _Atomic int64_t next_due;
    uint64_t txn_last, committed_last, prev_committed; /* writer thread */
    _Atomic uint64_t durable;
    sl_buf_t k, k2, v, pay, path;
    _Atomic uint64_t fired, suppressed, timers_fired;
    _Atomic uint64_t fired_by_rule[MAX_RULES], suppressed_by_rule[MAX_RULES];
    _Atomic uint64_t no_consent_by_rule[MAX_RULES], unsubscribed_by_rule[MAX_RULES];
    int64_t last_prune_ms;
    int muted;                           /* rebuild: states and timers, no trigger appended */
    int quiet;                           /* a historical event's merge: states, no trigger */
    _Atomic uint64_t historical;         /* events from imports the rules did not see */
    _Atomic uint64_t erasures;           /* profile_erased entries appended */
    _Atomic uint64_t amounts_ignored;    /* cart prices and quantities not finite or past SL_AMOUNT_MAX */
    /* what the current transaction counted: added to the counters above when
     * it commits, dropped when it is aborted (it will be redone) */
    struct {
        uint64_t fired, suppressed, timers_fired, historical, erasures, amounts_ignored;
        uint64_t fired_by_rule[MAX_RULES], suppressed_by_rule[MAX_RULES];
        uint64_t no_consent_by_rule[MAX_RULES], unsubscribed_by_rule[MAX_RULES];
    } pend;
    const char *cause;                   /* messageId of the event being handled; NULL for timers */
};

/* ---- helpers ---- */


static int rule_index(const sl_trig_t *t, const sl_trigger_rule_t *r) { return (int)(r - t->cfg->triggers); }

static const sl_trigger_rule_t *rule_by_name(const sl_trig_t *t, const char *name, size_t len)
{
    for (size_t i = 0; i < t->cfg->n_triggers; i++)
        if (strlen(t->cfg->triggers[i].name) == len && memcmp(t->cfg->triggers[i].name, name, len) == 0)
            return &t->cfg->triggers[i];
    return NULL;
}

static int state_key(sl_buf_t *b, const char *rule, uint64_t person)
{
    b->len = 0;
    unsigned char p[8];
    sl_be64_put(p, person);
    if (sl_buf_appends(b, rule) || sl_buf_append(b, (char[]){SEP}, 1) || sl_buf_append(b, p, 8)) return SL_ENOMEM;
    return 0;
}

static int state_get(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, MDB_val *v)
{
    int rc = state_key(&t->k, rule, person);
    if (rc) return rc;
    MDB_val k = {t->k.len, t->k.data};
    return mdb_get(txn, t->tstate, &k, v);
}

static int state_put(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, const void *d, size_t n)
{
    int rc = state_key(&t->k, rule, person);
    if (rc) return rc;
    MDB_val k = {t->k.len, t->k.data}, v = {n, (void *)d};
    return mdb_put(txn, t->tstate, &k, &v, 0);
}

static int state_del(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person)
{
    int rc = state_key(&t->k, rule, person);
    if (rc) return rc;
    MDB_val k = {t->k.len, t->k.data};
    rc = mdb_del(txn, t->tstate, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int timer_add(sl_trig_t *t, MDB_txn *txn, int64_t due, uint64_t person, const char *rule)
{
    unsigned char key[16 + 256];
    size_t n = strlen(rule);
    if (n > 255) n = 255;
    sl_be64_put(key, (uint64_t)due);
    sl_be64_put(key + 8, person);
    memcpy(key + 16, rule, n);
    MDB_val k = {16 + n, key}, v = {0, ""};
    int rc = mdb_put(txn, t->timers, &k, &v, 0);
    if (rc) return rc;
    int64_t cur = atomic_load(&t->next_due);
    while (due < cur && !atomic_compare_exchange_weak(&t->next_due, &cur, due)) {
    }
    return 0;
}

/* page_visit's url: the condition language's glob (rules/), one matcher. */
int sl_trig_glob_match(const char *p, const char *s)
{
    return sl_rules_glob_match(p, s);
}

static int is_start_event(const sl_trigger_rule_t *r, const char *ev)
{
    for (size_t i = 0; i < r->n_start_events; i++)
        if (strcmp(r->start_events[i], ev) == 0) return 1;
    return 0;
}

/* ---- the feed's causes: which stored events a trigger in the feed names
 * (retention keeps those events while the trigger is there) ---- */

static void cause_key(unsigned char key[16], const char *message_id, size_t len, uint64_t seq)
{
    sl_be64_put(key, sl_hash128(message_id, len, 0xca05e).lo);
    sl_be64_put(key + 8, seq);
}

/* The cause's messageId of a feed entry (v: at_ms, then the JSON), into
 * out (NUL-terminated); 0 when it has none. */
static size_t entry_cause(const MDB_val *v, char *out, size_t cap)
{
    if (v->mv_size <= 8) return 0;
    cJSON *doc = cJSON_ParseWithLength((const char *)v->mv_data + 8, v->mv_size - 8);
    const char *mid = sl_json_str(cJSON_GetObjectItemCaseSensitive(doc, "cause"), "messageId");
    size_t n = mid ? strlen(mid) : 0;
    if (n >= cap) n = 0;
    if (n) memcpy(out, mid, n + 1);
    cJSON_Delete(doc);
    return n;
}

/* A feed entry (seq, v) leaves the feed: its cause entry goes. */
static int cause_del(sl_trig_t *t, MDB_txn *txn, uint64_t seq, const MDB_val *v)
{
    char mid[1024];
    size_t n = entry_cause(v, mid, sizeof(mid));
    if (n == 0) return 0;
    unsigned char key[16];
    cause_key(key, mid, n, seq);
    MDB_val k = {16, key};
    int rc = mdb_del(txn, t->fcause, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Every entry of the feed into fcause (a store from before the index, or a
 * feed carried over by a rebuild). */
static int cause_index_all(sl_trig_t *t, MDB_txn *txn)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, t->feed, &cur);
    if (rc) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        char mid[1024];
        size_t n = entry_cause(&v, mid, sizeof(mid));
        if (n == 0) continue;
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        unsigned char key[16];
        cause_key(key, mid, n, seq);
        MDB_val ck = {16, key}, nothing = {0, NULL};
        if ((rc = mdb_put(txn, t->fcause, &ck, &nothing, 0))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Listener: *held 1 when a trigger in the feed names the stored event
 * message_id as its cause. */
static int on_holds(void *arg, MDB_txn *txn, const char *message_id, int *held)
{
    sl_trig_t *t = arg;
    *held = 0;
    if (t->fcause == 0) return 0; /* read only, a store from before: no pruning there */
    unsigned char key[16];
    cause_key(key, message_id, strlen(message_id), 0);
    MDB_cursor *cur;
    MDB_val k = {16, key}, v;
    int rc = mdb_cursor_open(txn, t->fcause, &cur);
    if (rc) return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && k.mv_size == 16 && memcmp(k.mv_data, key, 8) == 0) *held = 1;
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* ---- firing ---- */

static uint32_t pressure_get(sl_trig_t *t, MDB_txn *txn, uint32_t day, uint64_t person, const char *rule, MDB_val *k)
{
    t->k2.len = 0;
    unsigned char h[12];
    h[0] = (unsigned char)(day >> 24), h[1] = (unsigned char)(day >> 16), h[2] = (unsigned char)(day >> 8);
    h[3] = (unsigned char)day;
    sl_be64_put(h + 4, person);
    sl_buf_append(&t->k2, h, 12);
    sl_buf_appends(&t->k2, rule);
    k->mv_size = t->k2.len;
    k->mv_data = t->k2.data;
    MDB_val v;
    uint32_t n = 0;
    if (t->k2.data && mdb_get(txn, t->pressure, k, &v) == 0 && v.mv_size == 4) memcpy(&n, v.mv_data, 4);
    return n;
}

static int pressure_inc(sl_trig_t *t, MDB_txn *txn, uint32_t day, uint64_t person, const char *rule)
{
    MDB_val k;
    uint32_t n = pressure_get(t, txn, day, person, rule, &k) + 1;
    if (t->k2.data == NULL) return SL_ENOMEM;
    MDB_val v = {4, &n};
    return mdb_put(txn, t->pressure, &k, &v, 0);
}

static int feed_append(sl_trig_t *t, MDB_txn *txn, int64_t now, const char *rule, const char *type, uint64_t person,
                       const char *profile, const char *data);

/* Appends a trigger for person under rule r with data (a JSON object text),
 * unless the person's consent or the pressure cap suppresses it. */
static int fire(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, uint64_t person, const char *data,
                int64_t now)
{
    if (t->muted) return 0; /* a rebuild: what fired then is in the feed already */
    if (t->quiet) return 0; /* an import's merge joins states, fires nothing */
    int idx = rule_index(t, r);
    uint32_t day = (uint32_t)(now / 86400000);
    MDB_val k;
    /* a rule outside the pressure (a CRM sync) neither counts toward the
     * profile's cap nor is held by it */
    int cap = r->pressure ? t->cfg->pressure_max_per_profile_per_day : 0, rc;
    /* consent: a rule that needs it, and the pressure cap (an unsubscribed
     * person's cap is 0) */
    if (r->requires_consent || cap) {
        int ok;
        const char *why = "consent";
        if ((rc = sl_stitch_consent_check(t->stitch, txn, person, r->requires_consent, &ok, &why))) return rc;
        if (!ok && (r->requires_consent || strcmp(why, "unsubscribed") == 0)) {
            if (idx < MAX_RULES)
                (why[0] == 'u' ? t->pend.unsubscribed_by_rule : t->pend.no_consent_by_rule)[idx]++;
            t->pend.suppressed++;
            return 0;
        }
    }
    if ((cap && pressure_get(t, txn, day, person, "", &k) >= (uint32_t)cap) ||
        (r->max_per_day && pressure_get(t, txn, day, person, r->name, &k) >= (uint32_t)r->max_per_day)) {
        t->pend.suppressed++;
        if (idx < MAX_RULES) t->pend.suppressed_by_rule[idx]++;
        return 0;
    }
    if ((r->pressure && (rc = pressure_inc(t, txn, day, person, ""))) || (rc = pressure_inc(t, txn, day, person, r->name)))
        return rc;
    static const char *types[] = {"page_visit", "abandoned_cart", "inactivity", "trait_change"};
    if ((rc = feed_append(t, txn, now, r->name, types[r->type], person, NULL, data))) return rc;
    t->pend.fired++;
    if (idx < MAX_RULES) t->pend.fired_by_rule[idx]++;
    return 0;
}

/* Appends an entry to the feed: rule (NULL: none), type, the person's
 * profile (profile: that JSON instead of the stitcher's), the cause (the
 * event being applied, if any) and data. */
static int feed_append(sl_trig_t *t, MDB_txn *txn, int64_t now, const char *rule, const char *type, uint64_t person,
                       const char *profile, const char *data)
{
    int rc;
    uint64_t seq = 1;
    MDB_val mk = {9, "feed_last"}, mv;
    if ((rc = mdb_get(txn, t->tmeta, &mk, &mv)) == 0 && mv.mv_size == 8) {
        memcpy(&seq, mv.mv_data, 8);
        seq++;
    } else if (rc && rc != MDB_NOTFOUND) {
        return rc;
    }
    mv.mv_size = 8;
    mv.mv_data = &seq;
    if ((rc = mdb_put(txn, t->tmeta, &mk, &mv, 0))) return rc;

    char at[32], id[37];
    sl_time_format_iso(now, at);
    sl_uuid4(id);
    sl_buf_t *b = &t->pay;
    b->len = 0;
    int64_t at_ms = now;
    sl_buf_append(b, &at_ms, 8);
    sl_buf_printf(b, "{\"seq\":%llu,\"id\":\"%s\",\"rule\":", (unsigned long long)seq, id);
    if (rule) sl_buf_append_json_str(b, rule, strlen(rule));
    else sl_buf_appends(b, "null");
    sl_buf_printf(b, ",\"type\":\"%s\",\"at\":\"%s\",\"profile\":", type, at);
    rc = profile ? sl_buf_appends(b, profile) : sl_stitch_person_payload(t->stitch, txn, person, b, NULL, NULL);
    if (rc == SL_ENOTFOUND) {
        char pid[32];
        snprintf(pid, sizeof(pid), "{\"id\":\"p_%llu\"}", (unsigned long long)person);
        sl_buf_appends(b, pid);
    } else if (rc) {
        return rc;
    }
    sl_buf_appends(b, ",\"cause\":");
    if (t->cause) {
        sl_buf_appends(b, "{\"messageId\":");
        sl_buf_append_json_str(b, t->cause, strlen(t->cause));
        sl_buf_appends(b, "}");
    } else {
        sl_buf_appends(b, "null");
    }
    sl_buf_appends(b, ",\"data\":");
    sl_buf_appends(b, data);
    sl_buf_appends(b, "}");
    if (b->data == NULL) return SL_ENOMEM;
    MDB_val fk = {8, &seq}, fv = {b->len, b->data};
    if ((rc = mdb_put(txn, t->feed, &fk, &fv, MDB_APPEND))) return rc;
    if (t->cause) {
        unsigned char key[16];
        cause_key(key, t->cause, strlen(t->cause), seq);
        MDB_val ck = {16, key}, nothing = {0, NULL};
        if ((rc = mdb_put(txn, t->fcause, &ck, &nothing, 0))) return rc;
    }
    t->txn_last = seq;
    return 0;
}

/* ---- abandoned cart ---- */

static int cart_load(const MDB_val *v, cart_t *c, cJSON **products)
{
    *products = NULL;
    if (v->mv_size < sizeof(*c)) return MDB_CORRUPTED;
    memcpy(c, v->mv_data, sizeof(*c));
    if (sizeof(*c) + c->products_len != v->mv_size) return MDB_CORRUPTED;
    *products = cJSON_ParseWithLength((const char *)v->mv_data + sizeof(*c), c->products_len);
    if (!cJSON_IsArray(*products)) {
        cJSON_Delete(*products);
        *products = cJSON_CreateArray();
    }
    return *products ? 0 : SL_ENOMEM;
}

static int cart_save(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, cart_t *c, cJSON *products)
{
    double value = 0;
    const cJSON *p;
    c->n_products = 0;
    cJSON_ArrayForEach(p, products) {
        const cJSON *price = cJSON_GetObjectItemCaseSensitive(p, "price");
        const cJSON *qty = cJSON_GetObjectItemCaseSensitive(p, "quantity");
        /* each figure was bounded when it entered (product_of): the sum is checked all the same */
        if (cJSON_IsNumber(price)) sl_amount_add(&value, price->valuedouble * (cJSON_IsNumber(qty) ? qty->valuedouble : 1));
        c->n_products++;
    }
    c->value = value;
    char *txt = cJSON_PrintUnformatted(products);
    if (txt == NULL) return SL_ENOMEM;
    c->products_len = (uint32_t)strlen(txt);
    t->v.len = 0;
    int rc = sl_buf_append(&t->v, c, sizeof(*c)) || sl_buf_append(&t->v, txt, c->products_len) ? SL_ENOMEM : 0;
    cJSON_free(txt);
    if (rc) return rc;
    return state_put(t, txn, rule, person, t->v.data, t->v.len);
}

/* The product a cart event's properties describe, normalised to
 * {product_id, name, price, quantity}; NULL when it names none. A price or
 * quantity that is not finite or past SL_AMOUNT_MAX is left out (counted in
 * *ignored): 1e300 x 1e300 would make the cart's value inf. */
static cJSON *product_of(const cJSON *props, uint64_t *ignored)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(props, "product_id");
    if (id == NULL) id = cJSON_GetObjectItemCaseSensitive(props, "id");
    if (id == NULL) id = cJSON_GetObjectItemCaseSensitive(props, "sku");
    if (!cJSON_IsString(id) && !cJSON_IsNumber(id)) return NULL;
    cJSON *p = cJSON_CreateObject();
    if (p == NULL) return NULL;
    if (cJSON_IsString(id)) cJSON_AddStringToObject(p, "product_id", id->valuestring);
    else {
        char n[32];
        snprintf(n, sizeof(n), "%.0f", id->valuedouble);
        cJSON_AddStringToObject(p, "product_id", n);
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(props, "name");
    if (cJSON_IsString(name)) cJSON_AddStringToObject(p, "name", name->valuestring);
    const cJSON *price = cJSON_GetObjectItemCaseSensitive(props, "price");
    if (cJSON_IsNumber(price) && sl_amount_ok(price->valuedouble)) cJSON_AddNumberToObject(p, "price", price->valuedouble);
    else if (cJSON_IsNumber(price)) (*ignored)++;
    const cJSON *qty = cJSON_GetObjectItemCaseSensitive(props, "quantity");
    int qty_ok = cJSON_IsNumber(qty) && sl_amount_ok(qty->valuedouble);
    if (cJSON_IsNumber(qty) && !qty_ok) (*ignored)++;
    cJSON_AddNumberToObject(p, "quantity", qty_ok && qty->valuedouble > 0 ? qty->valuedouble : 1);
    return p;
}

static int same_product(const cJSON *a, const cJSON *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(a, "product_id"), *y = cJSON_GetObjectItemCaseSensitive(b, "product_id");
    return cJSON_IsString(x) && cJSON_IsString(y) && strcmp(x->valuestring, y->valuestring) == 0;
}

/* Adds p to products (same product_id: quantities add), bounded. Takes p. */
static void cart_add(cJSON *products, cJSON *p)
{
    cJSON *q;
    cJSON_ArrayForEach(q, products) {
        if (same_product(q, p)) {
            cJSON *qa = cJSON_GetObjectItemCaseSensitive(q, "quantity");
            const cJSON *pa = cJSON_GetObjectItemCaseSensitive(p, "quantity");
            if (qa && pa && cJSON_IsNumber(qa) && cJSON_IsNumber(pa)) {
                double sum = qa->valuedouble; /* both bounded (product_of, or a merge of two carts) */
                if (sl_amount_add(&sum, pa->valuedouble) == 0 && sl_amount_ok(sum)) cJSON_SetNumberValue(qa, sum);
            }
            cJSON_Delete(p);
            return;
        }
    }
    if (cJSON_GetArraySize(products) < MAX_PRODUCTS) cJSON_AddItemToArray(products, p);
    else cJSON_Delete(p);
}

static int cart_fire(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, uint64_t person, const cart_t *c,
                     const cJSON *products, int64_t now)
{
    char started[32], last[32], abandoned[32];
    sl_time_format_iso(c->started_ms, started);
    sl_time_format_iso(c->last_ms, last);
    sl_time_format_iso(c->last_ms + r->delay_ms, abandoned);
    char *ptxt = cJSON_PrintUnformatted(products);
    if (ptxt == NULL) return SL_ENOMEM;
    sl_buf_t d = {0};
    sl_buf_printf(&d, "{\"products\":%s,\"value\":", ptxt);
    cJSON_free(ptxt);
    sl_buf_append_amount(&d, c->value);
    sl_buf_appends(&d, ",\"currency\":");
    if (c->currency[0]) sl_buf_append_json_str(&d, c->currency, strnlen(c->currency, sizeof(c->currency)));
    else sl_buf_appends(&d, "null");
    sl_buf_printf(&d, ",\"started_at\":\"%s\",\"last_activity_at\":\"%s\",\"abandoned_at\":\"%s\"}", started, last,
                  abandoned);
    int rc = d.data ? fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
    sl_buf_free(&d);
    return rc;
}

static int cart_event(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, const rule_msg_t *m,
                      uint64_t person, int identified, int64_t now)
{
    const char *ev = m->event;
    int rc;
    if (m->track && ev && r->cancel_event && strcmp(ev, r->cancel_event) == 0)
        return state_del(t, txn, r->name, person); /* bought: the pending timer will find nothing */
    int start = m->track && ev && is_start_event(r, ev);
    int removed = m->track && ev && r->remove_event && strcmp(ev, r->remove_event) == 0;
    MDB_val v;
    rc = state_get(t, txn, r->name, person, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    int have = rc == 0;
    if (!start && !removed) {
        if (!have || !identified) return 0;
        /* An identified person with an abandoned anonymous cart: fire now. */
        cart_t c;
        cJSON *products;
        if ((rc = cart_load(&v, &c, &products))) return rc;
        if (c.waiting) {
            rc = cart_fire(t, txn, r, person, &c, products, now);
            if (rc == 0) rc = state_del(t, txn, r->name, person);
        }
        cJSON_Delete(products);
        return rc;
    }
    if (removed && !have) return 0;
    cart_t c;
    cJSON *products = NULL;
    if (have) {
        if ((rc = cart_load(&v, &c, &products))) return rc;
    } else {
        memset(&c, 0, sizeof(c));
        c.started_ms = m->ts_ms;
        if ((products = cJSON_CreateArray()) == NULL) return SL_ENOMEM;
    }
    const cJSON *props = m->props;
    if (start) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(props, "products");
        if (cJSON_IsArray(list) && cJSON_GetArraySize(list) > 0) {
            /* Cart Viewed / Checkout Started carry the whole cart: it replaces ours. */
            cJSON_Delete(products);
            products = cJSON_CreateArray();
            const cJSON *x;
            cJSON_ArrayForEach(x, list) {
                cJSON *p = product_of(x, &t->pend.amounts_ignored);
                if (p && products) cart_add(products, p);
            }
        } else {
            cJSON *p = product_of(props, &t->pend.amounts_ignored);
            if (p) cart_add(products, p);
        }
        const char *cur = NULL;
        const cJSON *cu = cJSON_GetObjectItemCaseSensitive(props, "currency");
        if (cJSON_IsString(cu)) cur = cu->valuestring;
        if (cur) snprintf(c.currency, sizeof(c.currency), "%s", cur);
    } else {
        cJSON *p = product_of(props, &t->pend.amounts_ignored);
        for (int i = 0; p && i < cJSON_GetArraySize(products); i++)
            if (same_product(cJSON_GetArrayItem(products, i), p)) {
                cJSON_DeleteItemFromArray(products, i);
                break;
            }
        cJSON_Delete(p);
    }
    if (products == NULL) return SL_ENOMEM;
    if (cJSON_GetArraySize(products) == 0) {
        cJSON_Delete(products);
        return state_del(t, txn, r->name, person); /* emptied: no cart */
    }
    int64_t act = m->ts_ms > c.last_ms ? m->ts_ms : c.last_ms;
    if (act > now) act = now;
    c.last_ms = act;
    c.due_ms = act + r->delay_ms;
    c.waiting = 0;
    if (c.timer_ms == 0 || c.timer_ms > c.due_ms) { /* none pending, or only a later one (waiting expiry) */
        int64_t due = c.due_ms > now ? c.due_ms : now;
        if ((rc = timer_add(t, txn, due, person, r->name))) goto out;
        c.timer_ms = due;
    }
    rc = cart_save(t, txn, r->name, person, &c, products);
out:
    cJSON_Delete(products);
    return rc;
}

static int cart_timer(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, uint64_t person, int64_t now)
{
    MDB_val v;
    int rc = state_get(t, txn, r->name, person, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    cart_t c;
    cJSON *products;
    if ((rc = cart_load(&v, &c, &products))) return rc;
    if (c.waiting) { /* the waiting period ran out without an identity */
        if (c.due_ms + WAITING_CART_TTL_MS <= now) rc = state_del(t, txn, r->name, person);
        goto out;
    }
    if (c.due_ms > now) { /* activity since: look again later */
        c.timer_ms = c.due_ms;
        if ((rc = timer_add(t, txn, c.due_ms, person, r->name)) == 0)
            rc = cart_save(t, txn, r->name, person, &c, products);
        goto out;
    }
    int identified = 0;
    rc = sl_stitch_person_payload(t->stitch, txn, person, NULL, &identified, NULL);
    if (rc == SL_ENOTFOUND) {
        rc = state_del(t, txn, r->name, person);
    } else if (rc == 0 && identified) {
        if ((rc = cart_fire(t, txn, r, person, &c, products, now)) == 0) rc = state_del(t, txn, r->name, person);
    } else if (rc == 0) {
        /* Abandoned while anonymous: it fires when the visitor is identified. */
        c.waiting = 1;
        c.timer_ms = c.due_ms + WAITING_CART_TTL_MS;
        if ((rc = timer_add(t, txn, c.timer_ms, person, r->name)) == 0)
            rc = cart_save(t, txn, r->name, person, &c, products);
    }
out:
    cJSON_Delete(products);
    return rc;
}

/* absorbed's cart joins survivor's: products added, earliest start, latest activity. */
static int cart_merge(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, uint64_t sv, uint64_t ab, int64_t now)
{
    MDB_val v;
    int rc = state_get(t, txn, r->name, ab, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    cart_t a, s;
    cJSON *pa, *ps = NULL;
    if ((rc = cart_load(&v, &a, &pa))) return rc;
    if ((rc = state_del(t, txn, r->name, ab))) goto out;
    rc = state_get(t, txn, r->name, sv, &v);
    if (rc == MDB_NOTFOUND) {
        s = a;
        ps = pa;
        pa = NULL;
        rc = 0;
    } else if (rc == 0 && (rc = cart_load(&v, &s, &ps)) == 0) {
        cJSON *x;
        while (pa && (x = cJSON_DetachItemFromArray(pa, 0)) != NULL) cart_add(ps, x);
        if (a.started_ms && a.started_ms < s.started_ms) s.started_ms = a.started_ms;
        if (a.last_ms > s.last_ms) {
            s.last_ms = a.last_ms;
            s.due_ms = a.due_ms;
        }
        s.waiting = s.waiting && a.waiting;
        if (!s.currency[0]) memcpy(s.currency, a.currency, sizeof(s.currency));
    }
    if (rc) goto out;
    /* The absorbed state's timer is keyed by the absorbed person: arm one for the survivor. */
    int64_t due = s.waiting ? s.due_ms + WAITING_CART_TTL_MS : s.due_ms;
    if (due < now) due = now;
    if ((rc = timer_add(t, txn, due, sv, r->name))) goto out;
    s.timer_ms = due;
    rc = cart_save(t, txn, r->name, sv, &s, ps);
out:
    cJSON_Delete(pa);
    cJSON_Delete(ps);
    return rc;
}

/* ---- page visit ---- */

static int page_event(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, const rule_msg_t *m,
                      uint64_t person, int64_t now)
{
    if (!m->page) return 0;
    /* "http://..." and "https://..." patterns match the whole URL, others the path. */
    int full = strncmp(r->url, "http://", 7) == 0 || strncmp(r->url, "https://", 8) == 0;
    const char *subject = full ? m->url : m->path;
    if (subject == NULL || !sl_trig_glob_match(r->url, subject)) return 0;
    int64_t ts[1000];
    size_t n = 0;
    MDB_val v;
    int rc = state_get(t, txn, r->name, person, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (rc == 0) {
        size_t have = v.mv_size / 8;
        for (size_t i = 0; i < have; i++) {
            int64_t x;
            memcpy(&x, (const char *)v.mv_data + 8 * i, 8);
            if (r->within_ms == 0 || x > now - r->within_ms) ts[n++] = x;
        }
    }
    /* Keep the newest min_count - 1 and this one. */
    size_t keep = (size_t)r->min_count - 1;
    size_t drop = n > keep ? n - keep : 0;
    memmove(ts, ts + drop, (n - drop) * 8);
    n -= drop;
    ts[n++] = now;
    if ((int)n >= r->min_count) {
        sl_buf_t d = {0};
        sl_buf_appends(&d, "{\"url\":");
        if (m->url) sl_buf_append_json_str(&d, m->url, strlen(m->url));
        else sl_buf_appends(&d, "null");
        sl_buf_appends(&d, ",\"path\":");
        if (m->path) sl_buf_append_json_str(&d, m->path, strlen(m->path));
        else sl_buf_appends(&d, "null");
        sl_buf_printf(&d, ",\"count\":%zu,\"pattern\":", n);
        sl_buf_append_json_str(&d, r->url, strlen(r->url));
        sl_buf_appends(&d, "}");
        rc = d.data ? fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
        sl_buf_free(&d);
        if (rc) return rc;
        return state_del(t, txn, r->name, person); /* the next trigger needs min_count new visits */
    }
    return state_put(t, txn, r->name, person, ts, n * 8);
}

static int page_merge(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, uint64_t sv, uint64_t ab)
{
    MDB_val v;
    int64_t ts[2000];
    size_t n = 0;
    uint64_t who[2] = {sv, ab};
    for (int i = 0; i < 2; i++) {
        int rc = state_get(t, txn, r->name, who[i], &v);
        if (rc == MDB_NOTFOUND) continue;
        if (rc) return rc;
        size_t have = v.mv_size / 8;
        if (have > 1000) have = 1000;
        memcpy(ts + n, v.mv_data, have * 8);
        n += have;
    }
    if (n == 0) return 0;
    int rc = state_del(t, txn, r->name, ab);
    if (rc) return rc;
    /* sort, keep the newest min_count - 1 */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && ts[j - 1] > ts[j]; j--) {
            int64_t x = ts[j];
            ts[j] = ts[j - 1];
            ts[j - 1] = x;
        }
    size_t keep = (size_t)r->min_count - 1;
    size_t from = n > keep ? n - keep : 0;
    if (n - from == 0) return state_del(t, txn, r->name, sv);
    return state_put(t, txn, r->name, sv, ts + from, (n - from) * 8);
}

/* ---- inactivity ---- */

static int inact_event(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, uint64_t person, int identified,
                       int64_t now)
{
    if (!identified) return 0; /* anonymous visitors who never return are not "inactive customers" */
    MDB_val v;
    inact_t s = {0, 0};
    int rc = state_get(t, txn, r->name, person, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (rc == 0 && v.mv_size == sizeof(s)) memcpy(&s, v.mv_data, sizeof(s));
    if (s.timer_ms) return 0; /* a timer is pending; it looks at last_seen when it fires */
    s.timer_ms = now + r->after_ms;
    if ((rc = timer_add(t, txn, s.timer_ms, person, r->name))) return rc;
    return state_put(t, txn, r->name, person, &s, sizeof(s));
}

static int inact_timer(sl_trig_t *t, MDB_txn *txn, const sl_trigger_rule_t *r, uint64_t person, int64_t now)
{
    MDB_val v;
    inact_t s = {0, 0};
    int rc = state_get(t, txn, r->name, person, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    if (v.mv_size == sizeof(s)) memcpy(&s, v.mv_data, sizeof(s));
    int identified = 0;
    int64_t last = 0;
    rc = sl_stitch_person_payload(t->stitch, txn, person, NULL, &identified, &last);
    if (rc == SL_ENOTFOUND) return state_del(t, txn, r->name, person);
    if (rc) return rc;
    if (last + r->after_ms > now) {
        s.timer_ms = last + r->after_ms;
        if ((rc = timer_add(t, txn, s.timer_ms, person, r->name))) return rc;
        return state_put(t, txn, r->name, person, &s, sizeof(s));
    }
    s.timer_ms = 0;
    if (s.fired_for_ms != last) {
        char ls[32], dur[32];
        sl_time_format_iso(last, ls);
        snprintf(dur, sizeof(dur), "%lld", (long long)(r->after_ms / 1000));
        sl_buf_t d = {0};
        sl_buf_printf(&d, "{\"last_seen\":\"%s\",\"inactive_seconds\":%lld,\"after_seconds\":%s}", ls,
                      (long long)((now - last) / 1000), dur);
        rc = d.data ? fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
        sl_buf_free(&d);
        if (rc) return rc;
        s.fired_for_ms = last;
    }
    return state_put(t, txn, r->name, person, &s, sizeof(s));
}

/* ---- public: events, merges, traits ---- */

/* What the rules need of a stored event: decided here, by the rules. */
static int read_msg(sl_trig_t *t, const cJSON *doc, int64_t ts_ms, rule_msg_t *m)
{
    memset(m, 0, sizeof(*m));
    const char *type = sl_json_str(doc, "type");
    m->track = type && strcmp(type, "track") == 0;
    m->page = type && strcmp(type, "page") == 0;
    m->event = m->track ? sl_json_str(doc, "event") : NULL;
    m->props = cJSON_GetObjectItemCaseSensitive(doc, "properties");
    m->ts_ms = ts_ms;
    if (!m->page) return 0;
    const cJSON *page = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "context"), "page");
    const char *url = sl_json_str(m->props, "url"), *path = sl_json_str(m->props, "path");
    if (url == NULL) url = sl_json_str(page, "url");
    if (path == NULL) path = sl_json_str(page, "path");
    if (path == NULL && url) { /* the path of an absolute URL */
        const char *p = strstr(url, "://");
        p = p ? strchr(p + 3, '/') : NULL;
        if (p) path = p;
    }
    m->url = url;
    if (path) {
        t->path.len = 0;
        if (sl_buf_append(&t->path, path, strcspn(path, "?#")) || sl_buf_append(&t->path, "", 1)) return SL_ENOMEM;
        m->path = t->path.data;
    }
    return 0;
}

static int trig_event(sl_trig_t *t, MDB_txn *txn, const rule_msg_t *m, uint64_t person, int identified,
                      int64_t now)
{
    for (size_t i = 0; i < t->cfg->n_triggers; i++) {
        const sl_trigger_rule_t *r = &t->cfg->triggers[i];
        int rc = 0;
        switch (r->type) {
        case SL_TRIG_ABANDONED_CART: rc = cart_event(t, txn, r, m, person, identified, now); break;
        case SL_TRIG_PAGE_VISIT: rc = page_event(t, txn, r, m, person, now); break;
        case SL_TRIG_INACTIVITY: rc = inact_event(t, txn, r, person, identified, now); break;
        default: break;
        }
        if (rc) return rc;
    }
    return 0;
}

static int trig_merge(sl_trig_t *t, MDB_txn *txn, uint64_t survivor, uint64_t absorbed)
{
    int64_t now = sl_now_ms();
    for (size_t i = 0; i < t->cfg->n_triggers; i++) {
        const sl_trigger_rule_t *r = &t->cfg->triggers[i];
        int rc = 0;
        switch (r->type) {
        case SL_TRIG_ABANDONED_CART: rc = cart_merge(t, txn, r, survivor, absorbed, now); break;
        case SL_TRIG_PAGE_VISIT: rc = page_merge(t, txn, r, survivor, absorbed); break;
        case SL_TRIG_INACTIVITY: rc = state_del(t, txn, r->name, absorbed); break;
        default: break;
        }
        if (rc) return rc;
    }
    return 0;
}

/* Erasure (or retention): the persons' rule states and feed entries go --
 * one pass over the feed for them all (persons sorted) -- then, for an
 * erasure, one profile_erased entry tells the consumers (erased: its
 * "profile", hashed identifiers only). */
static int trig_forget(sl_trig_t *t, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                       uint64_t *n_feed)
{
    int rc;
    *n_feed = 0;
    for (size_t p = 0; p < n; p++)
        for (size_t i = 0; i < t->cfg->n_triggers; i++)
            if ((rc = state_del(t, txn, t->cfg->triggers[i].name, persons[p]))) return rc;
    /* The feed is bounded by its retention: a scan is the price of erasure. */
    static const char needle[] = "\"profile\":{\"id\":\"p_";
    MDB_cursor *cur;
    MDB_val k, v;
    if ((rc = mdb_cursor_open(txn, t->feed, &cur))) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const char *at = memmem(v.mv_data, v.mv_size, needle, sizeof(needle) - 1);
        if (at == NULL) continue;
        uint64_t id = 0;
        const char *end = (const char *)v.mv_data + v.mv_size;
        for (at += sizeof(needle) - 1; at < end && *at >= '0' && *at <= '9' && id < UINT64_MAX / 10; at++)
            id = id * 10 + (uint64_t)(*at - '0');
        if (!bsearch(&id, persons, n, sizeof(*persons), sl_u64_cmp)) continue;
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        if ((rc = cause_del(t, txn, seq, &v)) || (rc = mdb_cursor_del(cur, 0))) break;
        (*n_feed)++;
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) return rc;
    if (erased == NULL) return 0; /* retention: nobody to tell */
    const char *saved = t->cause;
    t->cause = NULL; /* an erasure is no stored event's doing */
    rc = feed_append(t, txn, sl_now_ms(), NULL, "profile_erased", persons[0], erased, "{}");
    t->cause = saved;
    if (rc == 0) t->pend.erasures++;
    return rc;
}

static int trig_watches(const sl_trig_t *t, const char *name)
{
    for (size_t i = 0; i < t->cfg->n_triggers; i++)
        if (t->cfg->triggers[i].type == SL_TRIG_TRAIT_CHANGE && strcmp(t->cfg->triggers[i].trait, name) == 0)
            return 1;
    return 0;
}

static int trig_trait(sl_trig_t *t, MDB_txn *txn, uint64_t person, const char *name, const cJSON *old_v,
                      const cJSON *new_v, int64_t now)
{
    for (size_t i = 0; i < t->cfg->n_triggers; i++) {
        const sl_trigger_rule_t *r = &t->cfg->triggers[i];
        if (r->type != SL_TRIG_TRAIT_CHANGE || strcmp(r->trait, name) != 0) continue;
        if (old_v == NULL && !r->on_first_set) continue;
        char *o = old_v ? cJSON_PrintUnformatted(old_v) : NULL;
        char *n = cJSON_PrintUnformatted(new_v);
        sl_buf_t d = {0};
        sl_buf_appends(&d, "{\"trait\":");
        sl_buf_append_json_str(&d, name, strlen(name));
        sl_buf_printf(&d, ",\"old\":%s,\"new\":%s}", o ? o : "null", n ? n : "null");
        cJSON_free(o);
        cJSON_free(n);
        int rc = d.data ? fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
        sl_buf_free(&d);
        if (rc) return rc;
    }
    return 0;
}

/* ---- what the stitcher tells ---- */

/* 1 when ev comes from the past: a source marked "historical", or a message
 * of a trusted source with context.sillage.import true (docs/TRIGGERS.md,
 * "Historical imports"). A browser key is public: from it, the mark would let
 * a page hide an order from the cart rule or a trait change from a CRM sync,
 * so it is ignored there (as Subscribed is). */
static int historical(const sl_trig_t *t, const sl_stage_event_t *ev)
{
    if (ev == NULL) return 0;
    const cJSON *sil = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ev->doc, "context"), "sillage");
    const sl_source_t *src = sl_config_source(t->cfg, sl_json_str(sil, "source"));
    if (src == NULL) return 0;
    return src->historical || (src->trusted && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sil, "import")));
}

static int on_stitched(void *arg, MDB_txn *txn, const sl_stage_event_t *ev, const sl_ident_event_t *ie)
{
    sl_trig_t *t = arg;
    if (t->cfg->n_triggers == 0) return 0;
    if (historical(t, ev)) { /* no rule sees it: no cart, no visit count, no timer from the past */
        t->pend.historical++;
        return 0;
    }
    rule_msg_t m;
    int rc = read_msg(t, ev->doc, ie->ts_ms, &m);
    if (rc) return rc;
    t->cause = ev->message_id;
    return trig_event(t, txn, &m, ie->person, ie->identified, sl_now_ms());
}

static int on_merged(void *arg, MDB_txn *txn, const sl_stage_event_t *ev, uint64_t survivor, uint64_t absorbed)
{
    sl_trig_t *t = arg;
    t->cause = ev ? ev->message_id : NULL;
    t->quiet = historical(t, ev);
    int rc = trig_merge(t, txn, survivor, absorbed);
    t->quiet = 0;
    return rc;
}

static int on_trait(void *arg, MDB_txn *txn, const sl_stage_event_t *ev, uint64_t person, const char *name,
                    const cJSON *old_v, const cJSON *new_v)
{
    sl_trig_t *t = arg;
    if (historical(t, ev)) return 0;
    t->cause = ev ? ev->message_id : NULL;
    return trig_trait(t, txn, person, name, old_v, new_v, sl_now_ms());
}

static int on_watches(void *arg, const char *name) { return trig_watches(arg, name); }

static int on_forgotten(void *arg, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                        uint64_t *removed)
{
    return trig_forget(arg, txn, persons, n, erased, removed);
}

/* ---- timers, retention ---- */

static int64_t on_due(void *arg)
{
    sl_trig_t *t = arg;
    return atomic_load(&t->next_due);
}

static int prune(sl_trig_t *t, MDB_txn *txn, int64_t now)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, t->feed, &cur);
    if (rc) return rc;
    for (int n = 0; n < 1000 && (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0; n++) {
        int64_t at = 0;
        if (v.mv_size >= 8) memcpy(&at, v.mv_data, 8);
        if (at > now - t->cfg->trigger_retention_ms) break;
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        if ((rc = cause_del(t, txn, seq, &v)) || (rc = mdb_cursor_del(cur, 0))) break;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND) return rc;
    /* pressure counts of days before yesterday */
    uint32_t day = (uint32_t)(now / 86400000) - 1;
    if ((rc = mdb_cursor_open(txn, t->pressure, &cur))) return rc;
    for (int n = 0; n < 1000 && (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0; n++) {
        const unsigned char *p = k.mv_data;
        uint32_t d = k.mv_size >= 4 ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
        if (d >= day) break;
        if ((rc = mdb_cursor_del(cur, 0))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int first_due(sl_trig_t *t, MDB_txn *txn, int64_t *due)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, t->timers, &cur);
    if (rc) return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    *due = rc == 0 && k.mv_size >= 16 ? (int64_t)sl_be64_get(k.mv_data) : INT64_MAX;
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int on_tick(void *arg, MDB_txn *txn, int64_t now)
{
    sl_trig_t *t = arg;
    int wrote = 0, rc = 0;
    t->cause = NULL;
    MDB_cursor *cur;
    MDB_val k, v;
    if (now - t->last_prune_ms >= 60000) {
        t->last_prune_ms = now;
        if ((rc = prune(t, txn, now))) return rc;
        wrote = 1;
    }
    for (int n = 0; n < MAX_TICK_TIMERS; n++) {
        if ((rc = mdb_cursor_open(txn, t->timers, &cur))) return rc;
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc == 0 && (k.mv_size < 16 || (int64_t)sl_be64_get(k.mv_data) > now)) rc = MDB_NOTFOUND;
        unsigned char key[16 + 256];
        size_t klen = k.mv_size < sizeof(key) ? k.mv_size : sizeof(key);
        if (rc == 0) {
            memcpy(key, k.mv_data, klen);
            rc = mdb_cursor_del(cur, 0);
        }
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND) break;
        if (rc) return rc;
        wrote = 1;
        t->pend.timers_fired++;
        uint64_t person = sl_be64_get(key + 8);
        const sl_trigger_rule_t *r = rule_by_name(t, (const char *)key + 16, klen - 16);
        if (r == NULL) continue; /* the rule was removed by a reload */
        if (r->type == SL_TRIG_ABANDONED_CART) rc = cart_timer(t, txn, r, person, now);
        else if (r->type == SL_TRIG_INACTIVITY) rc = inact_timer(t, txn, r, person, now);
        if (rc) return rc;
    }
    int64_t due;
    if ((rc = first_due(t, txn, &due))) return rc;
    if (due > now + 60000) due = now + 60000; /* retention runs at least once a minute */
    atomic_store(&t->next_due, due);
    return wrote;
}

/* ---- commits and readers ---- */

static void on_after_txn(void *arg, int ok)
{
    sl_trig_t *t = arg;
    if (ok) {
        t->prev_committed = t->committed_last;
        t->committed_last = t->txn_last;
        atomic_fetch_add(&t->fired, t->pend.fired);
        atomic_fetch_add(&t->suppressed, t->pend.suppressed);
        atomic_fetch_add(&t->timers_fired, t->pend.timers_fired);
        atomic_fetch_add(&t->historical, t->pend.historical);
        atomic_fetch_add(&t->erasures, t->pend.erasures);
        atomic_fetch_add(&t->amounts_ignored, t->pend.amounts_ignored);
        for (int i = 0; i < MAX_RULES; i++) {
            if (t->pend.fired_by_rule[i]) atomic_fetch_add(&t->fired_by_rule[i], t->pend.fired_by_rule[i]);
            if (t->pend.suppressed_by_rule[i]) atomic_fetch_add(&t->suppressed_by_rule[i], t->pend.suppressed_by_rule[i]);
            if (t->pend.no_consent_by_rule[i]) atomic_fetch_add(&t->no_consent_by_rule[i], t->pend.no_consent_by_rule[i]);
            if (t->pend.unsubscribed_by_rule[i])
                atomic_fetch_add(&t->unsubscribed_by_rule[i], t->pend.unsubscribed_by_rule[i]);
        }
    } else {
        t->txn_last = t->committed_last;
        atomic_store(&t->next_due, sl_now_ms()); /* look again: the aborted txn's timers are gone */
    }
    memset(&t->pend, 0, sizeof(t->pend)); /* what an aborted one counted is counted again when redone */
}

static void on_synced(void *arg, int all)
{
    sl_trig_t *t = arg;
    uint64_t d = all ? t->committed_last : t->prev_committed;
    if (d > atomic_load(&t->durable)) {
        atomic_store(&t->durable, d);
        for (size_t i = 0; i < t->n_subs; i++) t->subs[i].cb(t->subs[i].arg);
    }
}

int sl_trig_subscribe(sl_trig_t *t, void (*cb)(void *arg), void *arg)
{
    if (t->n_subs == MAX_SUBSCRIBERS) return SL_EINVAL;
    t->subs[t->n_subs].cb = cb;
    t->subs[t->n_subs].arg = arg;
    t->n_subs++;
    return 0;
}

uint64_t sl_trig_durable_seq(const sl_trig_t *t) { return atomic_load(&t->durable); }

long sl_trig_foreach(sl_trig_t *t, MDB_txn *txn, uint64_t after, size_t limit,
                     int (*fn)(uint64_t seq, const char *json, size_t len, void *arg), void *arg)
{
    uint64_t upto = atomic_load(&t->durable);
    if (after == UINT64_MAX) return 0; /* nothing can follow; after + 1 would wrap to the start */
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, t->feed, &cur);
    if (rc) return -1;
    uint64_t from = after + 1;
    MDB_val k = {8, &from}, v;
    long n = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && (size_t)n < limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        if (seq > upto || v.mv_size < 8) break;
        n++;
        if (fn(seq, (const char *)v.mv_data + 8, v.mv_size - 8, arg)) break;
    }
    mdb_cursor_close(cur);
    return rc == 0 || rc == MDB_NOTFOUND ? n : -1;
}

typedef struct {
    sl_buf_t *out;
    uint64_t *last;
    int first;
} read_ctx_t;

static int append_one(uint64_t seq, const char *json, size_t len, void *arg)
{
    read_ctx_t *r = arg;
    if (!r->first) sl_buf_append(r->out, ",", 1);
    r->first = 0;
    sl_buf_append(r->out, json, len);
    *r->last = seq;
    return 0;
}

long sl_trig_read(sl_trig_t *t, MDB_txn *txn, uint64_t after, size_t limit, sl_buf_t *out, uint64_t *last)
{
    *last = after;
    read_ctx_t r = {out, last, 1};
    return sl_trig_foreach(t, txn, after, limit, append_one, &r);
}

static int cursor_key(sl_buf_t *b, const char *url)
{
    b->len = 0;
    return sl_buf_appends(b, "wh\x1f") || sl_buf_appends(b, url) ? SL_ENOMEM : 0;
}

int sl_trig_cursor_get(sl_trig_t *t, MDB_txn *txn, const char *url, uint64_t *seq)
{
    sl_buf_t b = {0};
    *seq = 0;
    if (cursor_key(&b, url)) return SL_ENOMEM;
    MDB_val k = {b.len, b.data}, v;
    int rc = mdb_get(txn, t->tmeta, &k, &v);
    sl_buf_free(&b);
    if (rc == 0 && v.mv_size == 8) memcpy(seq, v.mv_data, 8);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_trig_cursor_put(sl_trig_t *t, MDB_txn *txn, const char *url, uint64_t seq)
{
    sl_buf_t b = {0};
    if (cursor_key(&b, url)) return SL_ENOMEM;
    MDB_val k = {b.len, b.data}, v = {8, &seq};
    int rc = mdb_put(txn, t->tmeta, &k, &v, 0);
    sl_buf_free(&b);
    return rc;
}

/* The per-rule counters (committed and pending) are kept by position in the
 * rules: each follows its rule's name to its place in to; a new rule starts
 * at 0, a removed one's counts go (its series leaves /metrics). */
static void remap_rule_counters(sl_trig_t *t, const sl_config_t *from, const sl_config_t *to)
{
    int at[MAX_RULES]; /* to's rule i was from's rule at[i], or -1 */
    for (size_t i = 0; i < MAX_RULES; i++) {
        at[i] = -1;
        for (size_t j = 0; i < to->n_triggers && j < from->n_triggers && j < MAX_RULES && at[i] < 0; j++)
            if (strcmp(to->triggers[i].name, from->triggers[j].name) == 0) at[i] = (int)j;
    }
    _Atomic uint64_t *shared[] = {t->fired_by_rule, t->suppressed_by_rule, t->no_consent_by_rule,
                                  t->unsubscribed_by_rule};
    uint64_t *pend[] = {t->pend.fired_by_rule, t->pend.suppressed_by_rule, t->pend.no_consent_by_rule,
                        t->pend.unsubscribed_by_rule};
    for (size_t k = 0; k < sizeof(pend) / sizeof(pend[0]); k++) {
        uint64_t a[MAX_RULES], b[MAX_RULES];
        for (size_t i = 0; i < MAX_RULES; i++) a[i] = atomic_load(&shared[k][i]), b[i] = pend[k][i];
        for (size_t i = 0; i < MAX_RULES; i++) {
            atomic_store(&shared[k][i], at[i] < 0 ? 0 : a[at[i]]);
            pend[k][i] = at[i] < 0 ? 0 : b[at[i]];
        }
    }
}

int sl_trig_reload_job(MDB_txn *txn, void *arg)
{
    (void)txn;
    sl_trig_reload_t *r = arg;
    /* (run again when its transaction is redone: then from is to, nothing moves) */
    remap_rule_counters(r->trig, r->trig->cfg, r->cfg);
    r->trig->cfg = r->cfg;
    atomic_store(&r->trig->next_due, sl_now_ms()); /* timers of new rule names may be due */
    return 0;
}

/* ---- life cycle ---- */

static int on_open(void *arg, MDB_txn *txn, int read_only)
{
    sl_trig_t *t = arg;
    unsigned c = read_only ? 0 : MDB_CREATE;
    int rc;
    if ((rc = mdb_dbi_open(txn, "feed", c | MDB_INTEGERKEY, &t->feed))) return rc;
    if ((rc = mdb_dbi_open(txn, "timers", c, &t->timers))) return rc;
    if ((rc = mdb_dbi_open(txn, "tstate", c, &t->tstate))) return rc;
    if ((rc = mdb_dbi_open(txn, "pressure", c, &t->pressure))) return rc;
    if ((rc = mdb_dbi_open(txn, "tmeta", c, &t->tmeta))) return rc;
    /* added with retention (issue 16): built from the feed on a store from before */
    rc = mdb_dbi_open(txn, "fcause", 0, &t->fcause);
    if (rc == MDB_NOTFOUND && !read_only) {
        if ((rc = mdb_dbi_open(txn, "fcause", MDB_CREATE, &t->fcause)) || (rc = cause_index_all(t, txn))) return rc;
    } else if (rc == MDB_NOTFOUND) {
        t->fcause = 0;
    } else if (rc) {
        return rc;
    }
    MDB_val k = {9, "feed_last"}, v;
    uint64_t last = 0;
    if (mdb_get(txn, t->tmeta, &k, &v) == 0 && v.mv_size == 8) memcpy(&last, v.mv_data, 8);
    t->txn_last = t->committed_last = t->prev_committed = last;
    atomic_store(&t->durable, last);
    atomic_store(&t->next_due, sl_now_ms()); /* whatever fell due while the server was down fires now */
    return 0;
}

sl_trig_t *sl_trig_new(const sl_config_t *cfg, sl_stitch_t *stitch)
{
    sl_trig_t *t = calloc(1, sizeof(*t));
    if (t == NULL) return NULL;
    t->cfg = cfg;
    t->stitch = stitch;
    atomic_store(&t->next_due, INT64_MAX);
    t->step = (sl_stage_step_t){.name = "triggers", .arg = t, .open = on_open, .due = on_due, .tick = on_tick,
                                .after_txn = on_after_txn, .synced = on_synced};
    t->listener = (sl_ident_listener_t){.arg = t, .stitched = on_stitched, .merged = on_merged,
                                        .trait_changed = on_trait, .watches_trait = on_watches,
                                        .forgotten = on_forgotten, .holds = on_holds};
    return t;
}

int sl_trig_attach(sl_trig_t *t, sl_stage_t *stage)
{
    int rc = sl_stage_add_step(stage, &t->step);
    return rc ? rc : sl_stitch_listen(t->stitch, &t->listener);
}

void sl_trig_free(sl_trig_t *t)
{
    if (t == NULL) return;
    sl_buf_free(&t->k);
    sl_buf_free(&t->k2);
    sl_buf_free(&t->v);
    sl_buf_free(&t->pay);
    sl_buf_free(&t->path);
    free(t);
}

void sl_trig_get_stats(const sl_trig_t *t, sl_trig_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->fired = atomic_load(&t->fired);
    out->suppressed = atomic_load(&t->suppressed);
    out->timers_fired = atomic_load(&t->timers_fired);
    for (int i = 0; i < MAX_RULES; i++) {
        out->fired_by_rule[i] = atomic_load(&t->fired_by_rule[i]);
        out->suppressed_by_rule[i] = atomic_load(&t->suppressed_by_rule[i]);
        out->no_consent_by_rule[i] = atomic_load(&t->no_consent_by_rule[i]);
        out->unsubscribed_by_rule[i] = atomic_load(&t->unsubscribed_by_rule[i]);
    }
}

const sl_config_t *sl_trig_config(const sl_trig_t *t) { return t->cfg; }

/* ---- verification (sillage verify) ---- */

int sl_trig_verify(sl_trig_t *t, MDB_txn *txn, int (*has_message)(const char *id, void *arg), void *arg,
                   FILE *out, uint64_t *n_feed, uint64_t *problems)
{
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t prev = 0, last = 0;
    MDB_val mk = {9, "feed_last"}, mv;

    if (mdb_get(txn, t->tmeta, &mk, &mv) == 0 && mv.mv_size == 8) memcpy(&last, mv.mv_data, 8);
    int rc = mdb_cursor_open(txn, t->feed, &cur);
    if (rc) return rc;
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
        cJSON *doc = v.mv_size > 8 ? cJSON_ParseWithLength((const char *)v.mv_data + 8, v.mv_size - 8) : NULL;
        const cJSON *cause = cJSON_GetObjectItemCaseSensitive(doc, "cause");
        const cJSON *mid = cJSON_GetObjectItemCaseSensitive(cause, "messageId");
        if (doc == NULL || cause == NULL) {
            fprintf(out, "feed: trigger %llu is not valid JSON with a cause\n", (unsigned long long)seq);
            (*problems)++;
        } else if (cJSON_IsString(mid) && !has_message(mid->valuestring, arg)) {
            fprintf(out, "feed: trigger %llu's cause %s is not a stored event\n", (unsigned long long)seq,
                    mid->valuestring);
            (*problems)++;
        }
        cJSON_Delete(doc);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* One sample per rule (reason: a second label, or NULL); head: the family's
 * HELP/TYPE lines first. */
static void by_rule(sl_buf_t *b, const char *name, const char *help, const sl_config_t *cfg,
                    const uint64_t *values, const char *reason)
{
    if (help) sl_metric_head(b, "counter", name, help);
    for (size_t i = 0; i < cfg->n_triggers && i < MAX_RULES; i++) {
        char labels[320];
        snprintf(labels, sizeof(labels), "rule=\"%s\"%s%s%s", cfg->triggers[i].name, reason ? ",reason=\"" : "",
                 reason ? reason : "", reason ? "\"" : "");
        sl_metric_sample(b, name, labels, values[i]);
    }
}

void sl_trig_metrics(void *arg, sl_buf_t *b)
{
    sl_trig_t *t = arg;
    sl_trig_stats_t ts;
    sl_trig_get_stats(t, &ts);
    const sl_config_t *cfg = t->cfg; /* the rules the stage runs (reloaded on SIGHUP) */
    by_rule(b, "sillage_triggers_fired_total", "Triggers appended to the feed, by rule.", cfg, ts.fired_by_rule,
            NULL);
    by_rule(b, "sillage_triggers_suppressed_total",
            "Triggers not appended, by rule and reason: pressure (a cap), consent (the rule's requires_consent "
            "not granted), unsubscribed (the person's suppression flag).",
            cfg, ts.suppressed_by_rule, "pressure");
    by_rule(b, "sillage_triggers_suppressed_total", NULL, cfg, ts.no_consent_by_rule, "consent");
    by_rule(b, "sillage_triggers_suppressed_total", NULL, cfg, ts.unsubscribed_by_rule, "unsubscribed");
    sl_metric_u64(b, "counter", "sillage_trigger_historical_events_total",
                  "Events of historical imports (a historical source, context.sillage.import) no rule saw.",
                  atomic_load(&t->historical));
    sl_metric_u64(b, "counter", "sillage_feed_profile_erased_total",
                  "profile_erased entries appended to the feed (one per erasure).", atomic_load(&t->erasures));
    sl_metric_u64(b, "counter", "sillage_cart_amounts_ignored_total",
                  "Cart prices and quantities left out: not finite or beyond 1e15 in absolute value.",
                  atomic_load(&t->amounts_ignored));
    sl_metric_u64(b, "counter", "sillage_trigger_timers_fired_total", "Durable timers that came due.",
                  ts.timers_fired);
    sl_metric_u64(b, "gauge", "sillage_trigger_feed_last_seq", "The last trigger readers can see (durable).",
                  sl_trig_durable_seq(t));
}

void sl_trig_mute(sl_trig_t *t, int muted) { t->muted = muted; }

/* Copies every entry of the database named name from src to dst (the same
 * name in another environment). */
static int copy_db(MDB_txn *src, MDB_txn *dst, const char *name, MDB_dbi dst_dbi, unsigned flags)
{
    MDB_dbi s;
    int rc = mdb_dbi_open(src, name, 0, &s);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(src, s, &cur))) return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        if ((rc = mdb_put(dst, dst_dbi, &k, &v, flags))) break;
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_trig_carry_over(sl_trig_t *t, MDB_txn *dst, MDB_txn *src)
{
    int rc = copy_db(src, dst, "feed", t->feed, MDB_APPEND);
    if (rc == 0) rc = copy_db(src, dst, "tmeta", t->tmeta, 0);
    if (rc == 0) rc = cause_index_all(t, dst);
    if (rc) return rc;
    MDB_val k = {9, "feed_last"}, v;
    uint64_t last = 0;
    if (mdb_get(dst, t->tmeta, &k, &v) == 0 && v.mv_size == 8) memcpy(&last, v.mv_data, 8);
    t->txn_last = t->committed_last = t->prev_committed = last;
    atomic_store(&t->durable, last);
    return 0;
}
