/* triggers.c - the trigger engine: runs the configured rules (rule_table.c, one
 * file per rule type behind trig_type_t) over what the stage and the
 * stitcher tell it, keeps their states and durable timers, fires through
 * consent and the marketing pressure, and keeps the trigger feed. See
 * sl_triggers.h for the storage layout and docs/TRIGGERS.md for the
 * semantics of each rule. */
#include "internal.h"
#include "sl_audiences.h"
#include "sl_rules.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TICK_TIMERS 1000

/* ---- helpers ---- */

static int rule_index(const sl_trig_t *t, const trig_rule_t *r) { return (int)(r - trig_rules(t->cfg)->v); }

/* rstate's key: the rule's name, SEP, the entity (kind, be64 id). */
static int state_key(sl_buf_t *b, const char *rule, uint64_t person)
{
    b->len = 0;
    unsigned char p[SL_ENTITY_KEY_BYTES];
    sl_entity_key_put(p, (sl_entity_t){SL_ENTITY_PERSON, person});
    if (sl_buf_appends(b, rule) || sl_buf_append(b, (char[]){SEP}, 1) || sl_buf_append(b, p, sizeof(p)))
        return SL_ENOMEM;
    return 0;
}

/* The person of an rstate key of rule (n bytes), or 0 when the key is
 * another rule's or another kind's. */
static uint64_t state_key_person(const MDB_val *k, const char *rule, size_t n)
{
    const unsigned char *p = k->mv_data;
    if (k->mv_size != n + 1 + SL_ENTITY_KEY_BYTES || memcmp(p, rule, n) != 0 || p[n] != SEP) return 0;
    sl_entity_t e = sl_entity_key_get(p + n + 1);
    return e.kind == SL_ENTITY_PERSON ? e.id : 0;
}

int trig_state_get(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, MDB_val *v)
{
    int rc = state_key(&t->k, rule, person);
    if (rc) return rc;
    MDB_val k = {t->k.len, t->k.data};
    return mdb_get(txn, t->tstate, &k, v);
}

int trig_state_read(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, MDB_val *v)
{
    sl_buf_t key = {0};
    int rc = state_key(&key, rule, person);
    MDB_val k = {key.len, key.data};
    if (rc == 0) rc = mdb_get(txn, t->tstate, &k, v);
    sl_buf_free(&key);
    return rc;
}

int trig_state_put(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, const void *d, size_t n)
{
    int rc = state_key(&t->k, rule, person);
    if (rc) return rc;
    MDB_val k = {t->k.len, t->k.data}, v = {n, (void *)d};
    return mdb_put(txn, t->tstate, &k, &v, 0);
}

int trig_state_del(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person)
{
    int rc = state_key(&t->k, rule, person);
    if (rc) return rc;
    MDB_val k = {t->k.len, t->k.data};
    rc = mdb_del(txn, t->tstate, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int trig_timer_add(sl_trig_t *t, MDB_txn *txn, int64_t due, uint64_t person, const char *rule)
{
    size_t n = strlen(rule);
    if (n > SL_STAGE_TIMER_NAME_MAX) n = SL_STAGE_TIMER_NAME_MAX;
    return sl_stage_timer_set(t->stage, txn, t->step.name, due, (sl_entity_t){SL_ENTITY_PERSON, person}, rule, n);
}

/* page_visit's url: the condition language's glob (rules/), one matcher. */
int sl_trig_glob_match(const char *p, const char *s)
{
    return sl_rules_glob_match(p, s);
}

/* ---- what retention must keep: the causes of triggers in the feed (the
 * feed's index), the starting events of pending triggers (holds) ---- */

static int on_holds(void *arg, MDB_txn *txn, const char *message_id, int *held)
{
    sl_trig_t *t = arg;
    int rc = sl_feed_holds(t->feed, txn, message_id, held);
    if (rc || *held || t->holds == 0) return rc;
    unsigned char key[16];
    sl_be64_put(key, trig_mid_hash(message_id));
    sl_be64_put(key + 8, 0);
    return sl_lmdb_has_prefix8(txn, t->holds, key, held);
}

uint64_t trig_mid_hash(const char *message_id)
{
    return message_id ? sl_feed_mid_hash(message_id, strlen(message_id)) : 0;
}

static uint64_t pending_get(sl_trig_t *t, MDB_txn *txn, const char *rule)
{
    MDB_val k = {strlen(rule), (void *)rule}, v;
    uint64_t n = 0;
    if (t->pcount && mdb_get(txn, t->pcount, &k, &v) == 0 && v.mv_size == 8) memcpy(&n, v.mv_data, 8);
    return n;
}

int trig_pending_count(sl_trig_t *t, MDB_txn *txn, const char *rule, int64_t delta)
{
    if (delta == 0) return 0;
    uint64_t n = pending_get(t, txn, rule);
    n = delta < 0 && (uint64_t)-delta > n ? 0 : n + (uint64_t)delta;
    MDB_val k = {strlen(rule), (void *)rule}, v = {8, &n};
    int rc = n ? mdb_put(txn, t->pcount, &k, &v, 0) : mdb_del(txn, t->pcount, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

void trig_pending_seen(sl_trig_t *t, const trig_rule_t *r, uint64_t n)
{
    int i = rule_index(t, r);
    if (i >= 0 && i < MAX_RULES) t->verify_seen[i] += n;
}

int trig_holds_entry(sl_trig_t *t, MDB_txn *txn, uint64_t mid_hash, uint64_t seq)
{
    unsigned char key[16];
    sl_be64_put(key, mid_hash);
    sl_be64_put(key + 8, seq);
    MDB_val k = {16, key}, v;
    return t->holds && mdb_get(txn, t->holds, &k, &v) == 0;
}

int trig_hold(sl_trig_t *t, MDB_txn *txn, uint64_t mid_hash, uint64_t seq, int on)
{
    unsigned char key[16];
    sl_be64_put(key, mid_hash);
    sl_be64_put(key + 8, seq);
    MDB_val k = {16, key}, nothing = {0, NULL};
    int rc = on ? mdb_put(txn, t->holds, &k, &nothing, 0) : mdb_del(txn, t->holds, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* ---- firing ---- */

/* rpressure's key: the UTC day (be32), the entity (kind, be64 id), the rule's name. */
static uint32_t pressure_get(sl_trig_t *t, MDB_txn *txn, uint32_t day, uint64_t person, const char *rule, MDB_val *k)
{
    t->k2.len = 0;
    unsigned char h[4 + SL_ENTITY_KEY_BYTES];
    h[0] = (unsigned char)(day >> 24), h[1] = (unsigned char)(day >> 16), h[2] = (unsigned char)(day >> 8);
    h[3] = (unsigned char)day;
    sl_entity_key_put(h + 4, (sl_entity_t){SL_ENTITY_PERSON, person});
    sl_buf_append(&t->k2, h, sizeof(h));
    sl_buf_appends(&t->k2, rule);
    k->mv_size = t->k2.len;
    k->mv_data = t->k2.data;
    MDB_val v;
    uint32_t n = 0;
    if (t->k2.data && mdb_get(txn, t->pressure, k, &v) == 0 && v.mv_size == 4) memcpy(&n, v.mv_data, 4);
    return n;
}

/* The pressure's day: UTC, or the top-level timezone's with pressure.timezone. */
static uint32_t pressure_day(const sl_config_t *cfg, int64_t now)
{
    return (uint32_t)(cfg->pressure_local_days ? sl_local_day(now) : now / 86400000);
}

/* The person's triggers under the cap: today's, or the last seven days' */
static uint32_t pressure_count(sl_trig_t *t, MDB_txn *txn, uint32_t day, int weekly, uint64_t person)
{
    MDB_val k;
    uint32_t n = 0;
    for (uint32_t d = 0; d < (weekly ? 7u : 1u); d++) n += pressure_get(t, txn, day - d, person, "", &k);
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

static int feed_append(sl_trig_t *t, MDB_txn *txn, int64_t now, const trig_rule_t *r, const char *type,
                       uint64_t person, const char *profile, const char *data);

int trig_is_kind(const rule_msg_t *m, const char *name)
{
    if (m->track) return m->event && strcmp(m->event, name) == 0;
    return m->type && strcmp(m->type, name) == 0;
}

int trig_where(const sl_cond_t *cond, const rule_msg_t *m, int64_t now)
{
    if (cond == NULL) return 1;
    sl_rules_ctx_t ctx = {.event = m && m->ev ? m->ev->root : (sl_jval_t){0}, .event_top = m && m->ev ? m->ev->top : NULL,
                          .now_ms = now};
    return sl_rules_eval(cond, &ctx);
}

typedef struct {
    sl_trig_t *t;
    MDB_txn *txn;
    uint64_t person;
    int rc;
} view_ctx_t;

/* The person view of an `if`, built when a profile path is first read: its
 * text, read as it is. */
static sl_jval_t person_view(void *arg)
{
    view_ctx_t *v = arg;
    v->t->view.len = 0;
    v->rc = sl_stitch_person_view(v->t->stitch, v->txn, v->person, &v->t->view);
    if (v->rc == SL_ENOTFOUND) v->rc = 0; /* no person: every profile path is missing */
    return v->rc == 0 && v->t->view.data ? sl_jroot(v->t->view.data, v->t->view.len) : (sl_jval_t){0};
}

int trig_fire(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const char *data, int64_t now)
{
    if (t->muted) return 0; /* a rebuild: what fired then is in the feed already */
    if (t->quiet) return 0; /* an import's merge joins states, fires nothing */
    int idx = rule_index(t, r);
    if (r->if_) { /* the person, as they are when the trigger would go */
        view_ctx_t v = {t, txn, person, 0};
        sl_rules_ctx_t ctx = {.now_ms = now, .profile = person_view, .profile_arg = &v};
        int pass = sl_rules_eval(r->if_, &ctx);
        if (v.rc) return v.rc;
        if (!pass) {
            t->pend.suppressed++;
            if (idx < MAX_RULES) t->pend.if_by_rule[idx]++;
            return 0;
        }
    }
    const sl_config_t *cfg = t->cfg;
    uint32_t day = pressure_day(cfg, now);
    MDB_val k;
    /* a rule outside the pressure (a CRM sync) neither counts toward the
     * profile's cap nor is held by it; the first tier whose audience holds
     * the person replaces the cap (docs/AUDIENCES.md, "Pressure by audience") */
    int cap = r->pressure ? cfg->pressure_max_per_profile_per_day : 0, weekly = 0, rc;
    for (size_t i = 0; r->pressure && t->aud && i < cfg->n_pressure_tiers; i++)
        if (sl_aud_is_member(t->aud, txn, person, cfg->pressure_tiers[i].audience)) {
            weekly = cfg->pressure_tiers[i].per_week != 0;
            cap = weekly ? cfg->pressure_tiers[i].per_week : cfg->pressure_tiers[i].per_day;
            if (cap == 0) cap = -1; /* a tier of 0: nothing goes */
            break;
        }
    if (cap < 0) {
        t->pend.suppressed++;
        if (idx < MAX_RULES) t->pend.suppressed_by_rule[idx]++;
        return 0;
    }
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
    if ((cap && pressure_count(t, txn, day, weekly, person) >= (uint32_t)cap) ||
        (r->max_per_day && pressure_get(t, txn, day, person, r->name, &k) >= (uint32_t)r->max_per_day)) {
        t->pend.suppressed++;
        if (idx < MAX_RULES) t->pend.suppressed_by_rule[idx]++;
        return 0;
    }
    if ((r->pressure && (rc = pressure_inc(t, txn, day, person, ""))) || (rc = pressure_inc(t, txn, day, person, r->name)))
        return rc;
    if ((rc = feed_append(t, txn, now, r, r->type->name, person, NULL, data))) return rc;
    t->pend.fired++;
    if (idx < MAX_RULES) t->pend.fired_by_rule[idx]++;
    return 0;
}

/* The computed fields rule r puts in its payload: "computed":{name: value}
 * added to the profile object in b. */
static int payload_computed(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, int64_t now,
                            sl_buf_t *b)
{
    if (r == NULL || r->n_in_payload == 0 || t->fields == NULL || b->len == 0 || b->data[b->len - 1] != '}')
        return 0;
    b->len--;
    sl_buf_appends(b, ",\"computed\":{");
    int rc = sl_fields_values(t->fields, txn, person, r->in_payload, r->n_in_payload, now, b);
    sl_buf_appends(b, "}}");
    return rc ? rc : b->data ? 0 : SL_ENOMEM;
}

/* Appends an entry to the feed: rule r's (NULL: none), type, the person's
 * profile (profile: that JSON instead of the stitcher's), the cause (the
 * event being applied, if any) and data. */
static int feed_append(sl_trig_t *t, MDB_txn *txn, int64_t now, const trig_rule_t *r, const char *type,
                       uint64_t person, const char *profile, const char *data)
{
    const char *rule = r ? r->name : NULL;
    sl_entity_t who = {SL_ENTITY_PERSON, person};
    sl_buf_t *b = &t->pay;
    b->len = 0;
    int rc = profile ? sl_buf_appends(b, profile) : sl_stitch_person_payload(t->stitch, txn, person, b, NULL, NULL);
    if (rc == SL_ENOTFOUND) {
        char pid[SL_ENTITY_STR_BYTES];
        sl_entity_format(who, pid);
        b->len = 0;
        sl_buf_printf(b, "{\"id\":\"%s\"}", pid);
    } else if (rc) {
        return rc;
    }
    if ((rc = payload_computed(t, txn, r, person, now, b))) return rc;
    if (sl_buf_append(b, "", 1)) return SL_ENOMEM; /* NUL-terminated for the feed */
    sl_feed_entry_t e = {.at_ms = now, .entity = who, .rule = rule, .type = type, .cause = t->cause,
                         .profile = b->data, .data = data};
    return sl_feed_append(t->feed, txn, &e, NULL);
}

/* ---- public: events, merges, traits ---- */

/* What the rules need of a stored event, read without a tree (strings in
 * t->msg_arena, alive for the event): decided here, by the rules. */
static int read_msg(sl_trig_t *t, const sl_stage_event_t *ev, int64_t ts_ms, rule_msg_t *m)
{
    memset(m, 0, sizeof(*m));
    sl_arena_t *a = &t->msg_arena;
    sl_arena_reset(a);
    m->ev = ev;
    m->identity_changed = ev->ctx->identity_changed;
    m->type = sl_jstr(sl_jindex_get(ev->top, "type"), a, NULL);
    m->track = m->type && strcmp(m->type, "track") == 0;
    m->page = m->type && strcmp(m->type, "page") == 0;
    m->event = m->track ? sl_jstr(sl_jindex_get(ev->top, "event"), a, NULL) : NULL;
    m->ts_ms = ts_ms;
    m->message_id = ev->message_id;
    m->seq = ev->seq;
    if (!m->page) return 0;
    sl_jval_t props = sl_jindex_get(ev->top, "properties");
    sl_jval_t page = sl_jindex_get(ev->context, "page");
    const char *url = sl_jstr(sl_jget(props, "url"), a, NULL), *path = sl_jstr(sl_jget(props, "path"), a, NULL);
    if (url == NULL) url = sl_jstr(sl_jget(page, "url"), a, NULL);
    if (path == NULL) path = sl_jstr(sl_jget(page, "path"), a, NULL);
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
    const trig_rules_t *rs = trig_rules(t->cfg);
    for (size_t i = 0; i < rs->n; i++) {
        const trig_rule_t *r = &rs->v[i];
        if (r->type->event == NULL) continue;
        if (!r->type->own_where && !trig_where(r->where, m, now)) continue; /* the rule sees only what matches */
        int rc = r->type->event(t, txn, r, m, person, identified, now);
        if (rc) return rc;
    }
    return 0;
}

static int trig_merge(sl_trig_t *t, MDB_txn *txn, uint64_t survivor, uint64_t absorbed)
{
    int64_t now = sl_now_ms();
    const trig_rules_t *rs = trig_rules(t->cfg);
    for (size_t i = 0; i < rs->n; i++) {
        const trig_rule_t *r = &rs->v[i];
        int rc = r->type->merge ? r->type->merge(t, txn, r, survivor, absorbed, now) : 0;
        if (rc) return rc;
    }
    return 0;
}

/* Erasure (or retention): the persons' rule states and feed entries go
 * (through the feed's entity index) -- then, for an
 * erasure, one profile_erased entry tells the consumers (erased: its
 * "profile", hashed identifiers only). */
static int trig_forget(sl_trig_t *t, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                       uint64_t *n_feed)
{
    int rc;
    *n_feed = 0;
    const trig_rules_t *rs = trig_rules(t->cfg);
    for (size_t p = 0; p < n; p++)
        for (size_t i = 0; i < rs->n; i++) {
            const trig_rule_t *r = &rs->v[i];
            if (r->type->forget && (rc = r->type->forget(t, txn, r, persons[p]))) return rc;
            if ((rc = trig_state_del(t, txn, r->name, persons[p]))) return rc;
        }
    /* the feed's entity index: the persons' entries, not a scan */
    if ((rc = sl_feed_forget(t->feed, txn, SL_ENTITY_PERSON, persons, n, n_feed))) return rc;
    if (erased == NULL) return 0; /* retention: nobody to tell */
    const char *saved = t->cause;
    t->cause = NULL; /* an erasure is no stored event's doing */
    rc = feed_append(t, txn, sl_now_ms(), NULL, "profile_erased", persons[0], erased, "{}");
    t->cause = saved;
    if (rc == 0) t->pend.erasures++;
    return rc;
}

/* The computed changes of person (a JSON array of [field, old, new,
 * reason]) to the rules that hear of them; m: the causing event (NULL for
 * a timer: where then reads no event). */
static int trig_computed(sl_trig_t *t, MDB_txn *txn, uint64_t person, const cJSON *changes, const rule_msg_t *m,
                         int64_t now)
{
    const trig_rules_t *rs = trig_rules(t->cfg);
    const cJSON *ch;
    cJSON_ArrayForEach(ch, changes) {
        const cJSON *field = cJSON_GetArrayItem(ch, 0), *old = cJSON_GetArrayItem(ch, 1),
                    *new_v = cJSON_GetArrayItem(ch, 2), *reason = cJSON_GetArrayItem(ch, 3);
        if (!cJSON_IsString(field) || !old || !new_v || !cJSON_IsString(reason)) continue;
        for (size_t i = 0; i < rs->n; i++) {
            const trig_rule_t *r = &rs->v[i];
            if (r->type->computed == NULL || !trig_where(r->where, m, now)) continue;
            int rc = r->type->computed(t, txn, r, person, field->valuestring, old, new_v, reason->valuestring, now);
            if (rc) return rc;
        }
    }
    return 0;
}

/* 1 when a rule hears of changes to the computed field (the fields
 * component tracks only those: sl_fields_listener_t.watches). */
static int on_computed_watches(void *arg, const char *field)
{
    sl_trig_t *t = arg;
    const trig_rules_t *rs = trig_rules(t->cfg);
    for (size_t i = 0; i < rs->n; i++)
        if (rs->v[i].type->computed_watches && rs->v[i].type->computed_watches(&rs->v[i], field)) return 1;
    return 0;
}

/* What no event moved (a computed field's timer): the fields component tells. */
static int on_computed_changed(void *arg, MDB_txn *txn, uint64_t person, const cJSON *changes, int64_t now)
{
    sl_trig_t *t = arg;
    if (trig_rules(t->cfg)->n == 0) return 0;
    const char *saved = t->cause;
    t->cause = NULL; /* no stored event's doing */
    int rc = trig_computed(t, txn, person, changes, NULL, now);
    t->cause = saved;
    return rc;
}

static int trig_watches(const sl_trig_t *t, const char *name)
{
    const trig_rules_t *rs = trig_rules(t->cfg);
    for (size_t i = 0; i < rs->n; i++)
        if (rs->v[i].type->watches && rs->v[i].type->watches(&rs->v[i], name)) return 1;
    return 0;
}

static int trig_trait(sl_trig_t *t, MDB_txn *txn, uint64_t person, const char *name, const cJSON *old_v,
                      const cJSON *new_v, const rule_msg_t *m, int64_t now)
{
    const trig_rules_t *rs = trig_rules(t->cfg);
    for (size_t i = 0; i < rs->n; i++) {
        const trig_rule_t *r = &rs->v[i];
        if (r->type->trait == NULL || !trig_where(r->where, m, now)) continue; /* where: on the identify */
        int rc = r->type->trait(t, txn, r, person, name, old_v, new_v, now);
        if (rc) return rc;
    }
    return 0;
}

/* ---- the rules phase of each event ---- */

/* What the identity phase told of the event (ev->ctx): its merges, then the
 * trait changes, then the event itself -- in the order they happened. An
 * event from the past (ctx->historical: an import) moves states through its
 * merges quietly and is not seen by any rule: no cart, no visit count, no
 * timer from the past. */
static int on_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    sl_trig_t *t = arg;
    const sl_stage_ctx_t *x = ev->ctx;
    if (trig_rules(t->cfg)->n == 0) return 0;
    int rc = 0;
    int64_t now = sl_now_ms();
    t->cause = ev->message_id;
    t->quiet = x->historical;
    for (size_t i = 0; i < x->n_merges && rc == 0; i++)
        rc = trig_merge(t, txn, x->merge_survivor[i], x->merge_absorbed[i]);
    t->quiet = 0;
    if (rc || x->entity.kind != SL_ENTITY_PERSON) return rc;
    if (x->historical) {
        t->pend.historical++;
        return 0;
    }
    rule_msg_t m;
    if ((rc = read_msg(t, ev, x->ts_ms, &m))) return rc;
    const cJSON *ch;
    cJSON_ArrayForEach(ch, x->trait_changes) {
        const cJSON *old = cJSON_GetArrayItem(ch, 1);
        const char *name = cJSON_GetArrayItem(ch, 0)->valuestring;
        if (!trig_watches(t, name)) continue;
        if ((rc = trig_trait(t, txn, x->entity.id, name, cJSON_IsNull(old) ? NULL : old, cJSON_GetArrayItem(ch, 2),
                             &m, now)))
            return rc;
    }
    if (x->computed_changes && (rc = trig_computed(t, txn, x->entity.id, x->computed_changes, &m, now))) return rc;
    return trig_event(t, txn, &m, x->entity.id, x->identified, now);
}

static int on_profile_extra(void *arg, MDB_txn *txn, uint64_t person, sl_buf_t *out)
{
    sl_buf_appends(out, ",\"pending_triggers\":");
    return sl_trig_pending(arg, txn, person, out);
}

static int on_forgotten(void *arg, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                        uint64_t *removed)
{
    return trig_forget(arg, txn, persons, n, erased, removed);
}

/* ---- timers, retention ---- */

/* Pressure counts are pruned at least once a minute. */
static int64_t on_due(void *arg)
{
    sl_trig_t *t = arg;
    return t->last_prune_ms + 60000;
}

/* Pressure counts of days before yesterday, or before the last eight days
 * when a tier caps a week (the feed prunes itself). */
static int on_tick(void *arg, MDB_txn *txn, int64_t now, int *wrote)
{
    sl_trig_t *t = arg;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;
    t->last_prune_ms = now;
    const sl_config_t *cfg = t->cfg;
    int weekly = 0;
    for (size_t i = 0; i < cfg->n_pressure_tiers; i++) weekly |= cfg->pressure_tiers[i].per_week != 0;
    uint32_t day = pressure_day(cfg, now) - (weekly ? 7 : 1);
    if ((rc = mdb_cursor_open(txn, t->pressure, &cur))) return rc;
    for (int n = 0; n < 1000 && (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0; n++) {
        const unsigned char *p = k.mv_data;
        uint32_t d = k.mv_size >= 4 ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
        if (d >= day) break;
        if ((rc = mdb_cursor_del(cur, 0))) break;
        *wrote = 1;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* A durable timer of rule (name) came due for a person (the stage owns the
 * timers: sl_stage_timer_set). A timer of a rule a reload removed or retyped
 * finds no rule and does nothing. */
static int on_timer(void *arg, MDB_txn *txn, sl_entity_t e, const char *name, size_t name_len, int64_t due,
                    int64_t now)
{
    (void)due;
    sl_trig_t *t = arg;
    t->cause = NULL;
    t->pend.timers_fired++;
    const trig_rule_t *r = trig_rule_by_name(t->cfg, name, name_len);
    if (e.kind != SL_ENTITY_PERSON || r == NULL || r->type->timer == NULL) return 0;
    return r->type->timer(t, txn, r, e.id, now);
}

/* ---- commits and readers ---- */

static void on_after_txn(void *arg, int ok)
{
    sl_trig_t *t = arg;
    if (ok) {
        atomic_fetch_add(&t->fired, t->pend.fired);
        atomic_fetch_add(&t->suppressed, t->pend.suppressed);
        atomic_fetch_add(&t->timers_fired, t->pend.timers_fired);
        atomic_fetch_add(&t->historical, t->pend.historical);
        atomic_fetch_add(&t->erasures, t->pend.erasures);
        atomic_fetch_add(&t->amounts_ignored, t->pend.amounts_ignored);
        atomic_fetch_add(&t->pending_dropped, t->pend.pending_dropped);
        atomic_fetch_add(&t->waiting_expired, t->pend.waiting_expired);
        for (int i = 0; i < MAX_RULES; i++) {
            if (t->pend.fired_by_rule[i]) atomic_fetch_add(&t->fired_by_rule[i], t->pend.fired_by_rule[i]);
            if (t->pend.suppressed_by_rule[i]) atomic_fetch_add(&t->suppressed_by_rule[i], t->pend.suppressed_by_rule[i]);
            if (t->pend.no_consent_by_rule[i]) atomic_fetch_add(&t->no_consent_by_rule[i], t->pend.no_consent_by_rule[i]);
            if (t->pend.unsubscribed_by_rule[i])
                atomic_fetch_add(&t->unsubscribed_by_rule[i], t->pend.unsubscribed_by_rule[i]);
            if (t->pend.if_by_rule[i]) atomic_fetch_add(&t->if_by_rule[i], t->pend.if_by_rule[i]);
        }
    }
    memset(&t->pend, 0, sizeof(t->pend)); /* what an aborted one counted is counted again when redone */
}

/* The per-rule counters (committed and pending) are kept by position in the
 * rules: each follows its rule's name to its place in to; a new rule starts
 * at 0, a removed one's counts go (its series leaves /metrics). */
static void remap_rule_counters(sl_trig_t *t, const sl_config_t *from, const sl_config_t *to)
{
    int at[MAX_RULES]; /* to's rule i was from's rule at[i], or -1 */
    const trig_rules_t *f = trig_rules(from), *n = trig_rules(to);
    for (size_t i = 0; i < MAX_RULES; i++) {
        at[i] = -1;
        for (size_t j = 0; i < n->n && j < f->n && j < MAX_RULES && at[i] < 0; j++)
            if (strcmp(n->v[i].name, f->v[j].name) == 0) at[i] = (int)j;
    }
    _Atomic uint64_t *shared[] = {t->fired_by_rule, t->suppressed_by_rule, t->no_consent_by_rule,
                                  t->unsubscribed_by_rule, t->if_by_rule};
    uint64_t *pend[] = {t->pend.fired_by_rule, t->pend.suppressed_by_rule, t->pend.no_consent_by_rule,
                        t->pend.unsubscribed_by_rule, t->pend.if_by_rule};
    for (size_t k = 0; k < sizeof(pend) / sizeof(pend[0]); k++) {
        uint64_t a[MAX_RULES], b[MAX_RULES];
        for (size_t i = 0; i < MAX_RULES; i++) a[i] = atomic_load(&shared[k][i]), b[i] = pend[k][i];
        for (size_t i = 0; i < MAX_RULES; i++) {
            atomic_store(&shared[k][i], at[i] < 0 ? 0 : a[at[i]]);
            pend[k][i] = at[i] < 0 ? 0 : b[at[i]];
        }
    }
}

/* Every person's state of rule r goes (with what it holds): the rule left
 * the config, or changed type. Its timers, when they come due, find no rule. */
static int drop_rule(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r)
{
    size_t n = strlen(r->name);
    MDB_cursor *cur;
    int rc = state_key(&t->k2, r->name, 0);
    if (rc || (rc = mdb_cursor_open(txn, t->tstate, &cur))) return rc;
    MDB_val k = {n + 1, t->k2.data}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t person = state_key_person(&k, r->name, n);
        if (person == 0) break;
        if (r->type->forget && (rc = r->type->forget(t, txn, r, person))) break;
        if ((rc = mdb_cursor_del(cur, 0))) break;
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) return rc;
    MDB_val pk = {n, (void *)r->name};
    rc = t->pcount ? mdb_del(txn, t->pcount, &pk, NULL) : 0;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_trig_reload_job(MDB_txn *txn, void *arg)
{
    sl_trig_reload_t *r = arg;
    if (r->from == NULL) r->from = r->trig->cfg;
    const trig_rules_t *old = trig_rules(r->from);
    /* a removed rule's pending triggers go with it (a changed delay applies to
     * new starts); again when the transaction is redone, its drops undone */
    for (size_t i = 0; i < old->n && r->from != r->cfg; i++) {
        const trig_rule_t *now = trig_rule_by_name(r->cfg, old->v[i].name, strlen(old->v[i].name));
        int rc = now && now->type == old->v[i].type ? 0 : drop_rule(r->trig, txn, &old->v[i]);
        if (rc) return rc;
    }
    /* (once: the shared counters it moves are not rolled back with the transaction) */
    if (r->trig->cfg != r->cfg) remap_rule_counters(r->trig, r->trig->cfg, r->cfg);
    r->trig->cfg = r->cfg;
    if (r->trig->fields) sl_fields_rules_changed(r->trig->fields); /* which computed fields rules watch */
    return 0;
}

/* ---- life cycle ---- */

/* Moves every record of the old database `name` into `to` (to NULL: the
 * stage's timers), rewriting the key that names a person with its entity
 * kind (layout 1 -> 2): at = where in the old key the be64 person is, from
 * its start (at >= 0) or counted back from its end (at < 0). Then drops it. */
static int migrate_db(sl_trig_t *t, MDB_txn *txn, const char *name, MDB_dbi to, long at, uint64_t *moved)
{
    MDB_dbi from;
    int rc = mdb_dbi_open(txn, name, 0, &from);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    MDB_cursor *cur;
    MDB_val k, v;
    if ((rc = mdb_cursor_open(txn, from, &cur))) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const unsigned char *p = k.mv_data;
        size_t off = at >= 0 ? (size_t)at : k.mv_size - (size_t)-at;
        if (k.mv_size < 8 || (at >= 0 && k.mv_size < (size_t)at + 8) || (at < 0 && k.mv_size < (size_t)-at)) continue;
        sl_entity_t e = {SL_ENTITY_PERSON, sl_be64_get(p + off)};
        if (to == 0) { /* timers: due, person, rule */
            size_t rn = k.mv_size - 16 > SL_STAGE_TIMER_NAME_MAX ? SL_STAGE_TIMER_NAME_MAX : k.mv_size - 16;
            if ((rc = sl_stage_timer_set(t->stage, txn, t->step.name, (int64_t)sl_be64_get(p), e,
                                         (const char *)p + 16, rn)))
                break;
        } else {
            t->k.len = 0;
            unsigned char ek[SL_ENTITY_KEY_BYTES];
            sl_entity_key_put(ek, e);
            if (sl_buf_append(&t->k, p, off) || sl_buf_append(&t->k, ek, sizeof(ek)) ||
                sl_buf_append(&t->k, p + off + 8, k.mv_size - off - 8)) {
                rc = SL_ENOMEM;
                break;
            }
            MDB_val nk = {t->k.len, t->k.data};
            if ((rc = mdb_put(txn, to, &nk, &v, 0))) break;
        }
        (*moved)++;
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) return rc;
    return mdb_drop(txn, from, 1);
}

static int on_open(void *arg, MDB_txn *txn, int read_only)
{
    sl_trig_t *t = arg;
    unsigned c = read_only ? 0 : MDB_CREATE;
    int rc;
    MDB_dbi old;
    if (read_only && mdb_dbi_open(txn, "tstate", 0, &old) == 0) {
        SL_ERROR("the trigger states in this derived store have the layout of an older sillage: "
                 "start `sillage serve` once (it converts them), or run `sillage rebuild`");
        return SL_EINVAL;
    }
    /* layout 2 (2026-12): every key that names a person carries the entity kind */
    if ((rc = mdb_dbi_open(txn, "rstate", c, &t->tstate))) return rc;
    if ((rc = mdb_dbi_open(txn, "rpressure", c, &t->pressure))) return rc;
    if (!read_only) { /* a store of layout 1: converted in this first transaction */
        uint64_t moved = 0;
        if ((rc = migrate_db(t, txn, "tstate", t->tstate, -8, &moved)) ||
            (rc = migrate_db(t, txn, "pressure", t->pressure, 4, &moved)) ||
            (rc = migrate_db(t, txn, "timers", 0, 8, &moved)))
            return rc;
        if (moved) SL_INFO("trigger states, pressure counts and timers: %llu records converted to layout 2",
                           (unsigned long long)moved);
    }
    /* added with the event rule (issue 22): empty on a store from before, where no rule held anything */
    rc = mdb_dbi_open(txn, "holds", c, &t->holds);
    if (rc == MDB_NOTFOUND) t->holds = 0;
    else if (rc) return rc;
    rc = mdb_dbi_open(txn, "pcount", c, &t->pcount);
    if (rc == MDB_NOTFOUND) t->pcount = 0;
    else if (rc) return rc;
    return 0;
}

sl_trig_t *sl_trig_new(const sl_config_t *cfg, sl_stitch_t *stitch, sl_fields_t *fields, sl_feed_t *feed)
{
    sl_trig_t *t = calloc(1, sizeof(*t));
    if (t == NULL) return NULL;
    t->cfg = cfg;
    t->stitch = stitch;
    t->fields = fields;
    t->flistener = (sl_fields_listener_t){.arg = t, .changed = on_computed_changed, .watches = on_computed_watches};
    t->feed = feed;
    sl_arena_init(&t->msg_arena);
    t->step = (sl_stage_step_t){.name = "triggers", .phase = SL_PHASE_RULES, .arg = t, .open = on_open,
                                .apply = on_apply, .timer = on_timer, .due = on_due, .tick = on_tick,
                                .after_txn = on_after_txn};
    t->listener = (sl_ident_listener_t){.arg = t, .forgotten = on_forgotten, .holds = on_holds,
                                        .profile_extra = on_profile_extra};
    return t;
}

int sl_trig_attach(sl_trig_t *t, sl_stage_t *stage)
{
    t->stage = stage;
    int rc = sl_stage_add_step(stage, &t->step);
    if (rc == 0 && t->fields) rc = sl_fields_listen(t->fields, &t->flistener);
    return rc ? rc : sl_stitch_listen(t->stitch, &t->listener);
}

void sl_trig_free(sl_trig_t *t)
{
    if (t == NULL) return;
    sl_arena_free(&t->msg_arena);
    sl_buf_free(&t->k);
    sl_buf_free(&t->k2);
    sl_buf_free(&t->v);
    sl_buf_free(&t->pay);
    sl_buf_free(&t->path);
    sl_buf_free(&t->view);
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
        out->if_by_rule[i] = atomic_load(&t->if_by_rule[i]);
    }
}

const sl_config_t *sl_trig_config(const sl_trig_t *t) { return t->cfg; }

/* ---- verification (sillage verify) ---- */

int sl_trig_verify_states(sl_trig_t *t, MDB_txn *txn, MDB_txn *log_txn, FILE *out, uint64_t *n_pending,
                          uint64_t *problems)
{
    const trig_rules_t *rs = trig_rules(t->cfg);
    int rc = 0;
    memset(t->verify_seen, 0, sizeof(t->verify_seen));
    for (size_t i = 0; i < rs->n && rc == 0; i++) {
        const trig_rule_t *r = &rs->v[i];
        if (r->type->verify == NULL) continue;
        size_t n = strlen(r->name);
        MDB_cursor *cur;
        if ((rc = state_key(&t->k2, r->name, 0)) || (rc = mdb_cursor_open(txn, t->tstate, &cur))) break;
        MDB_val k = {n + 1, t->k2.data}, v;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            uint64_t person = state_key_person(&k, r->name, n);
            if (person == 0) break;
            if ((rc = r->type->verify(t, txn, log_txn, r, person, out, n_pending, problems))) break;
        }
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND) rc = 0;
    }
    /* the counts GET /v1/rules shows */
    for (size_t i = 0; i < rs->n && i < MAX_RULES && rc == 0; i++) {
        uint64_t counted = pending_get(t, txn, rs->v[i].name);
        if (rs->v[i].type->verify && counted != t->verify_seen[i]) {
            fprintf(out, "rule %s: %llu pending triggers counted, %llu found\n", rs->v[i].name,
                    (unsigned long long)counted, (unsigned long long)t->verify_seen[i]);
            (*problems)++;
        }
    }
    /* and every hold is some pending trigger's */
    uint64_t holds = 0;
    MDB_cursor *cur;
    MDB_val k, v;
    if (rc == 0 && t->holds && (rc = mdb_cursor_open(txn, t->holds, &cur)) == 0) {
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) holds++;
        mdb_cursor_close(cur);
        rc = rc == MDB_NOTFOUND ? 0 : rc;
    }
    if (rc == 0 && holds != *n_pending) {
        fprintf(out, "holds: %llu events held against retention for %llu pending triggers\n",
                (unsigned long long)holds, (unsigned long long)*n_pending);
        (*problems)++;
    }
    return rc;
}

/* One sample per rule (reason: a second label, or NULL); head: the family's
 * HELP/TYPE lines first. */
static void by_rule(sl_buf_t *b, const char *name, const char *help, const sl_config_t *cfg,
                    const uint64_t *values, const char *reason)
{
    if (help) sl_metric_head(b, "counter", name, help);
    const trig_rules_t *rs = trig_rules(cfg);
    for (size_t i = 0; i < rs->n && i < MAX_RULES; i++) {
        char labels[320];
        snprintf(labels, sizeof(labels), "rule=\"%s\"%s%s%s", rs->v[i].name, reason ? ",reason=\"" : "",
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
            "not granted), unsubscribed (the person's suppression flag), if (the rule's condition on the person).",
            cfg, ts.suppressed_by_rule, "pressure");
    by_rule(b, "sillage_triggers_suppressed_total", NULL, cfg, ts.no_consent_by_rule, "consent");
    by_rule(b, "sillage_triggers_suppressed_total", NULL, cfg, ts.unsubscribed_by_rule, "unsubscribed");
    by_rule(b, "sillage_triggers_suppressed_total", NULL, cfg, ts.if_by_rule, "if");
    sl_metric_u64(b, "counter", "sillage_trigger_historical_events_total",
                  "Events of historical imports (a historical source, context.sillage.import) no rule saw.",
                  atomic_load(&t->historical));
    sl_metric_u64(b, "counter", "sillage_feed_profile_erased_total",
                  "profile_erased entries appended to the feed (one per erasure).", atomic_load(&t->erasures));
    sl_metric_u64(b, "counter", "sillage_cart_amounts_ignored_total",
                  "Cart prices and quantities left out: not finite or beyond 1e15 in absolute value.",
                  atomic_load(&t->amounts_ignored));
    sl_metric_u64(b, "counter", "sillage_trigger_pending_dropped_total",
                  "Pending triggers of event rules dropped: a person had max_pending waiting already.",
                  atomic_load(&t->pending_dropped));
    sl_metric_u64(b, "counter", "sillage_trigger_waiting_expired_total",
                  "Pending triggers that came due for an anonymous person and saw no login within max_wait.",
                  atomic_load(&t->waiting_expired));
    sl_metric_u64(b, "counter", "sillage_trigger_timers_fired_total", "Durable timers that came due.",
                  ts.timers_fired);
    sl_metric_u64(b, "gauge", "sillage_trigger_feed_last_seq", "The last trigger readers can see (durable).",
                  sl_feed_durable_seq(t->feed));
}

void sl_trig_mute(sl_trig_t *t, int muted) { t->muted = muted; }
void sl_trig_set_audiences(sl_trig_t *t, struct sl_aud_s *aud) { t->aud = aud; }

int sl_trig_rules_json(sl_trig_t *t, MDB_txn *txn, sl_buf_t *out)
{
    const trig_rules_t *rs = trig_rules(t->cfg);
    sl_trig_stats_t ts;
    sl_trig_get_stats(t, &ts);
    sl_buf_appends(out, "{\"rules\":[");
    for (size_t i = 0; i < rs->n; i++) {
        if (i) sl_buf_appends(out, ",");
        trig_rule_print(&rs->v[i], out);
        uint64_t f = 0, p = 0, c = 0, u = 0, w = 0;
        if (i < MAX_RULES) {
            f = ts.fired_by_rule[i], p = ts.suppressed_by_rule[i], c = ts.no_consent_by_rule[i];
            u = ts.unsubscribed_by_rule[i], w = ts.if_by_rule[i];
        }
        sl_buf_printf(out,
                      ",\"fired\":%llu,\"suppressed\":{\"pressure\":%llu,\"consent\":%llu,\"unsubscribed\":%llu,"
                      "\"if\":%llu},\"pending\":%llu}",
                      (unsigned long long)f, (unsigned long long)p, (unsigned long long)c, (unsigned long long)u,
                      (unsigned long long)w, (unsigned long long)pending_get(t, txn, rs->v[i].name));
    }
    sl_buf_appends(out, "]}");
    return out->data ? 0 : SL_ENOMEM;
}

int sl_trig_pending(sl_trig_t *t, MDB_txn *txn, uint64_t person, sl_buf_t *out)
{
    /* the rules the stage runs; a reload's previous ones stay alive until the
     * process ends (cmd keeps them), so a read running across a SIGHUP is safe */
    const trig_rules_t *rs = trig_rules(atomic_load(&t->cfg));
    int n = 0, rc = 0;
    sl_buf_appends(out, "[");
    for (size_t i = 0; i < rs->n && rc == 0; i++)
        if (rs->v[i].type->pending) rc = rs->v[i].type->pending(t, txn, &rs->v[i], person, out, &n);
    sl_buf_appends(out, "]");
    return rc ? rc : out->data ? 0 : SL_ENOMEM;
}
