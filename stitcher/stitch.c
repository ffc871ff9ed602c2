/* stitch.c - the identity graph: person records, stitching each event,
 * merges and their journal, persons by recent activity, the stage step.
 * Beside it, behind stitch_int.h: read.c (profiles, timelines, merges for
 * the API), erase.c (erasure), retention.c, verify.c, consent.c. See
 * sl_stitch.h and docs/IDENTITY.md.
 *
 * LMDB databases (all in the store's environment):
 *   ids       identifier key -> person id (u64), timeline number (u64, given at first
 *             sight, so recent identifiers share the right edge of tl)
 *   persons   person id -> person record (person_hdr_t, identifier keys, traits JSON)
 *   tl        be64 timeline number -> dup values (be64 timestamp, be64 seq << 1 | is a
 *             page view), the events sent with that identifier, sorted by time.
 *             A person's event and page-view counts and first/last seen are
 *             read from here, so an ordinary event writes no person record
 *             (but for its place in active, at most once a minute).
 *   journal   journal seq -> JSON entry (merge or refusal)
 *   pjournal  person id -> dup journal seqs that explain the person
 *   prefusals person id -> dup journal seqs of the refusal entries among them
 *             (at most SL_STITCH_MAX_REFUSALS once bounded), so that keeping
 *             the bound never reads the merges, which the person's
 *             identifiers bound and the public key can grow. Added after
 *             layout 3: a store without it gets it from pjournal at open.
 *   active    be64 last activity ms, be64 person id -> nothing: persons by recent
 *             activity (moved at most once a minute per person); the person's
 *             record says where its entry is (active_ms), so that an event
 *             reads no other record to know whether it moves
 *   actof     person id -> i64 its key's time in active, for records written
 *             before they said it (PF_ACTIVE_HERE): emptied as they are touched
 *   consent   person id -> the person's consent and suppression flag (consent.h)
 *   smeta     counters: "next_person", "next_journal";
 *             "refused\x1f<owner>\x1f<person>\x1f<identifier>": refusals counted (once each);
 *             "refusal\x1f<owner>\x1f<reason>" -> journal seq: the owner's coalesced entry
 * An identifier key is "<kind>\x1f<value>", kind "user_id", "anonymous_id" or
 * a configured trait name. */
#define _GNU_SOURCE /* memmem */
#include "sl_stitch.h"

#include "consent.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/sha.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stitch_int.h"

/* ---- small helpers ---- */

/* Appends x[0..k) to the growable list *v (*n used, *cap allocated). */
int stitch_u64_append(uint64_t **v, size_t *n, size_t *cap, const uint64_t *x, size_t k)
{
    if (*n + k > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *n + k) c *= 2;
        uint64_t *nv = realloc(*v, c * sizeof(*nv));
        if (nv == NULL) return SL_ENOMEM;
        *v = nv;
        *cap = c;
    }
    if (k) memcpy(*v + *n, x, k * sizeof(*x));
    *n += k;
    return 0;
}

void stitch_tl_value(unsigned char out[16], int64_t ts_ms, uint64_t seq, int page)
{
    sl_be64_put(out, (uint64_t)ts_ms ^ (1ULL << 63)); /* signed order as bytes */
    sl_be64_put(out + 8, seq << 1 | (page ? 1 : 0));
}


int stitch_make_key(sl_buf_t *b, const char *kind, const char *value)
{
    b->len = 0;
    int rc = sl_buf_appends(b, kind);
    rc |= sl_buf_append(b, (char[]){KEY_SEP}, 1);
    rc |= sl_buf_appends(b, value);
    rc |= sl_buf_append(b, "", 1); /* keep a NUL, not part of the key */
    b->len--;
    return rc ? SL_ENOMEM : 0;
}

void stitch_person_id_str(uint64_t id, char out[32]) { sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, id}, out); }

int stitch_counter_next(sl_stitch_t *s, MDB_txn *txn, const char *name, uint64_t *out)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    uint64_t n = 1;
    int rc = mdb_get(txn, s->smeta, &k, &v);
    if (rc == 0 && v.mv_size == 8) memcpy(&n, v.mv_data, 8);
    else if (rc && rc != MDB_NOTFOUND) return rc;
    *out = n;
    n++;
    v.mv_size = 8;
    v.mv_data = &n;
    return mdb_put(txn, s->smeta, &k, &v, 0);
}

/* The person (0: none) and timeline number of an identifier key. */
int stitch_lookup_id(sl_stitch_t *s, MDB_txn *txn, const void *key, size_t len, uint64_t *pid, uint64_t *tl)
{
    MDB_val k = {len, (void *)key}, v;
    int rc = mdb_get(txn, s->ids, &k, &v);
    *pid = 0;
    if (tl) *tl = 0;
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size != 16) return MDB_CORRUPTED;
    memcpy(pid, v.mv_data, 8);
    if (tl) memcpy(tl, (const char *)v.mv_data + 8, 8);
    return 0;
}

int stitch_lookup(sl_stitch_t *s, MDB_txn *txn, const sl_buf_t *key, uint64_t *pid, uint64_t *tl)
{
    return stitch_lookup_id(s, txn, key->data, key->len, pid, tl);
}

/* Calls fn(txn, value, arg) for each duplicate under key in dbi, stopping at
 * the first nonzero return, which it returns (0 when all went through). */
int stitch_foreach_dup(MDB_txn *txn, MDB_dbi dbi, const void *key, size_t key_len,
                       int (*fn)(MDB_txn *txn, const MDB_val *v, void *arg), void *arg)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc) return rc;
    MDB_val k = {key_len, (void *)key}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP))
        if ((rc = fn(txn, &v, arg))) break;
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* ---- person records ---- */


int stitch_person_load(sl_stitch_t *s, MDB_txn *txn, uint64_t id, person_t *p)
{
    MDB_val k = {8, &id}, v;
    int rc = mdb_get(txn, s->persons, &k, &v);
    if (rc) return rc;
    if (v.mv_size < sizeof(person_hdr_t)) return MDB_CORRUPTED;
    memcpy(&p->h, v.mv_data, sizeof(p->h));
    if ((rc = stitch_record_ext(&p->h, v.mv_size, &p->h.ext_len))) return rc;
    p->id = id;
    p->dirty = 0;
    p->ids.len = p->traits.len = p->ext.len = 0;
    const char *d = (const char *)v.mv_data + sizeof(p->h);
    if (sl_buf_append(&p->ids, d, p->h.ids_len) || sl_buf_append(&p->traits, d + p->h.ids_len, p->h.traits_len) ||
        sl_buf_append(&p->ext, d + p->h.ids_len + p->h.traits_len, p->h.ext_len))
        return SL_ENOMEM;
    return 0;
}

static int person_save(sl_stitch_t *s, MDB_txn *txn, person_t *p)
{
    if (p->id == s->ev_id) s->ev_valid = 0; /* (attach.c's copy) */
    p->h.version = PERSON_VERSION;
    p->h.ids_len = (uint32_t)p->ids.len;
    p->h.traits_len = (uint32_t)p->traits.len;
    p->h.ext_len = (uint32_t)p->ext.len;
    p->h.ext_pad = 0;
    MDB_val k = {8, &p->id}, v = {sizeof(p->h) + p->ids.len + p->traits.len + p->ext.len, NULL};
    int rc = mdb_put(txn, s->persons, &k, &v, MDB_RESERVE);
    if (rc) return rc;
    char *d = v.mv_data;
    memcpy(d, &p->h, sizeof(p->h));
    if (p->ids.len) memcpy(d + sizeof(p->h), p->ids.data, p->ids.len);
    if (p->traits.len) memcpy(d + sizeof(p->h) + p->ids.len, p->traits.data, p->traits.len);
    if (p->ext.len) memcpy(d + sizeof(p->h) + p->ids.len + p->traits.len, p->ext.data, p->ext.len);
    return 0;
}

static void person_init(person_t *p, uint64_t id)
{
    p->id = id;
    memset(&p->h, 0, sizeof(p->h));
    p->h.flags = PF_ACTIVE_HERE; /* not in active yet */
    p->ids.len = p->traits.len = p->ext.len = 0;
    p->dirty = 1;
}

/* The first user_id identifier of p, or NULL. */
const char *stitch_person_user_id(const person_t *p)
{
    static const char prefix[] = "user_id\x1f";
    for (size_t off = 0; off < p->ids.len; off += strlen(p->ids.data + off) + 1)
        if (strncmp(p->ids.data + off, prefix, sizeof(prefix) - 1) == 0) return p->ids.data + off + sizeof(prefix) - 1;
    return NULL;
}

/* 1 when the identifier key (NUL-terminated) names someone: a kind other
 * than anonymous_id. */
static int key_identifies(const char *key)
{
    static const char anon[] = "anonymous_id\x1f";
    return strncmp(key, anon, sizeof(anon) - 1) != 0;
}

/* 1 when p has an identifier other than an anonymous_id. */
int stitch_person_identified(const person_t *p)
{
    for (size_t off = 0; off < p->ids.len; off += strlen(p->ids.data + off) + 1)
        if (key_identifies(p->ids.data + off)) return 1;
    return 0;
}

/* Gives key to p with a new timeline number (*tl, when not NULL). */
static int add_identity(sl_stitch_t *s, MDB_txn *txn, person_t *p, const sl_buf_t *key, uint64_t *tl)
{
    uint64_t val[2] = {p->id, 0};
    int rc = stitch_counter_next(s, txn, "next_tl", &val[1]);
    if (rc) return rc;
    if (tl) *tl = val[1];
    MDB_val k = {key->len, key->data}, v = {16, val};
    if ((rc = mdb_put(txn, s->ids, &k, &v, 0))) return rc;
    if (sl_buf_append(&p->ids, key->data, key->len) || sl_buf_append(&p->ids, "", 1)) return SL_ENOMEM;
    p->h.n_ids++;
    p->dirty = 1;
    if (key_identifies(p->ids.data + p->ids.len - key->len - 1)) s->gained_identity = 1;
    return 0;
}

static int person_create(sl_stitch_t *s, MDB_txn *txn, person_t *p)
{
    uint64_t id;
    int rc = stitch_counter_next(s, txn, "next_person", &id);
    if (rc) return rc;
    person_init(p, id);
    s->pend.created++;
    return 0;
}

/* ---- journal ---- */

void stitch_append_identifier_json(sl_buf_t *b, const char *key)
{
    const char *sep = strchr(key, KEY_SEP);
    if (sep == NULL) return;
    sl_buf_appends(b, "{\"kind\":");
    sl_buf_append_json_str(b, key, (size_t)(sep - key));
    sl_buf_appends(b, ",\"id\":");
    sl_buf_append_json_str(b, sep + 1, strlen(sep + 1));
    sl_buf_appends(b, "}");
}

/* Puts journal entry seq in person's journal, and in its refusals when
 * refusal. MDB_KEYEXIST: it was there. */
static int journal_ref(sl_stitch_t *s, MDB_txn *txn, uint64_t person, uint64_t seq, int refusal)
{
    MDB_val pk = {8, &person}, pv = {8, &seq};
    int rc = mdb_put(txn, s->pjournal, &pk, &pv, MDB_NODUPDATA);
    if (rc || !refusal) return rc;
    return mdb_put(txn, s->prefusals, &pk, &pv, MDB_NODUPDATA);
}

/* Takes journal entry seq out of person's journal and refusals. */
static int journal_unref(sl_stitch_t *s, MDB_txn *txn, uint64_t person, uint64_t seq)
{
    MDB_val pk = {8, &person}, pv = {8, &seq};
    int rc = mdb_del(txn, s->pjournal, &pk, &pv);
    if (rc && rc != MDB_NOTFOUND) return rc;
    rc = mdb_del(txn, s->prefusals, &pk, &pv);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Appends entry (a refusal when refusal) to the journal, in the journal of
 * persons[0..n); its number in *out (may be NULL). */
static int journal_add(sl_stitch_t *s, MDB_txn *txn, const sl_buf_t *entry, const uint64_t *persons, int n,
                       int refusal, uint64_t *out)
{
    uint64_t seq;
    int rc = stitch_counter_next(s, txn, "next_journal", &seq);
    if (rc) return rc;
    if (out) *out = seq;
    MDB_val k = {8, &seq}, v = {entry->len, entry->data};
    if ((rc = mdb_put(txn, s->journal, &k, &v, MDB_APPEND))) return rc;
    for (int i = 0; i < n; i++)
        if ((rc = journal_ref(s, txn, persons[i], seq, refusal)) && rc != MDB_KEYEXIST) return rc;
    return 0;
}

static void journal_head(sl_buf_t *b, const char *type, const sl_stitch_msg_t *m, const char *reason)
{
    char at[32];
    sl_time_format_iso(sl_now_ms(), at);
    b->len = 0;
    sl_buf_printf(b, "{\"type\":\"%s\",\"at\":\"%s\",\"reason\":", type, at);
    sl_buf_append_json_str(b, reason, strlen(reason));
    sl_buf_appends(b, ",\"messageId\":");
    if (m->message_id) sl_buf_append_json_str(b, m->message_id, strlen(m->message_id));
    else sl_buf_appends(b, "null");
}

/* The smeta key of owner's coalesced refusal entry for reason. */
static int refusal_key(sl_buf_t *b, uint64_t owner, const char *reason)
{
    b->len = 0;
    sl_buf_printf(b, "refusal%cp_%llu%c%s", KEY_SEP, (unsigned long long)owner, KEY_SEP, reason);
    return b->data ? 0 : SL_ENOMEM;
}

/* Deletes every smeta key that starts with prefix[0..n). */
int stitch_meta_del_prefix(sl_stitch_t *s, MDB_txn *txn, const char *prefix, size_t n)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->smeta, &cur);
    if (rc) return rc;
    MDB_val k = {n, (void *)prefix}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < n || memcmp(k.mv_data, prefix, n) != 0) break;
        if ((rc = mdb_cursor_del(cur, 0))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int stitch_entry_is_refusal(const MDB_val *v)
{
    static const char head[] = "{\"type\":\"refused\"";
    return v->mv_size > sizeof(head) && memcmp(v->mv_data, head, sizeof(head) - 1) == 0;
}

/* The person id an entry's member name ("owner", "event_person") holds, or 0. */
uint64_t stitch_entry_person(const cJSON *doc, const char *name)
{
    const char *v = sl_json_str(doc, name);
    sl_entity_t e;
    return v && sl_entity_parse(v, strlen(v), &e) == 0 ? e.id : 0;
}

/* Keeps at most SL_STITCH_MAX_REFUSALS refusal entries in person's journal:
 * the oldest references go (counted in sillage_identity_refusals_dropped_total),
 * and an entry the person owns goes with its reference, so that its next
 * refusal of that kind starts a new one. References to entries erased with
 * another person go too. Called when the person gains a refusal reference;
 * reads its refusal references only (prefusals), never its merges: at most
 * the bound and the one just added, or twice the bound after two persons
 * holding refusals were merged. */
static int bound_refusals(sl_stitch_t *s, MDB_txn *txn, uint64_t person)
{
    uint64_t *refs = NULL, *gone = NULL; /* refusal entries, oldest first; entries erased */
    size_t n = 0, cap = 0, n_gone = 0, cap_gone = 0, n_read = 0;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->prefusals, &cur);
    if (rc) return rc;
    MDB_val k = {8, &person}, v;
    /* the duplicates are journal numbers in order: oldest first */
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
        uint64_t seq;
        memcpy(&seq, v.mv_data, 8);
        MDB_val jk = {8, &seq}, jv;
        n_read++;
        int g = mdb_get(txn, s->journal, &jk, &jv);
        if (g == MDB_NOTFOUND) g = stitch_u64_append(&gone, &n_gone, &cap_gone, &seq, 1);
        else if (g == 0) g = stitch_u64_append(&refs, &n, &cap, &seq, 1);
        if (g) {
            rc = g;
            break;
        }
    }
    mdb_cursor_close(cur);
    atomic_fetch_add(&s->refusal_refs_read, n_read);
    if (rc != MDB_NOTFOUND) goto out;
    rc = 0;
    for (size_t i = 0; i < n_gone && rc == 0; i++) rc = journal_unref(s, txn, person, gone[i]);
    for (size_t i = 0; n > SL_STITCH_MAX_REFUSALS && i < n - SL_STITCH_MAX_REFUSALS && rc == 0; i++) {
        MDB_val jk = {8, &refs[i]}, jv;
        if ((rc = mdb_get(txn, s->journal, &jk, &jv))) break;
        cJSON *doc = cJSON_ParseWithLength(jv.mv_data, jv.mv_size);
        const char *reason = sl_json_str(doc, "reason");
        if (stitch_entry_person(doc, "owner") == person) {
            /* its own entry goes: the references others hold to it dangle,
             * which readers skip, and its next refusal of this kind starts
             * a new one */
            if ((rc = mdb_del(txn, s->journal, &jk, NULL)) == 0 && reason &&
                (rc = refusal_key(&s->k4, person, reason)) == 0) {
                MDB_val ck = {s->k4.len, s->k4.data};
                if ((rc = mdb_del(txn, s->smeta, &ck, NULL)) == MDB_NOTFOUND) rc = 0;
            }
        }
        cJSON_Delete(doc);
        if (rc == 0) rc = journal_unref(s, txn, person, refs[i]);
        s->pend.refusals_dropped++;
    }
out:
    free(refs);
    free(gone);
    return rc;
}

/* A merge the rules forbid: owner has key, the message's person (target)
 * wanted it. Refusals are coalesced per (owner, reason): one entry counts
 * them (count, first_at, last_at) and names the latest (at, messageId,
 * identifier, event_person), so that any number of persons claiming a
 * user's identifiers costs that user one entry. The entry is in the
 * journal of both persons. */
static int refuse(sl_stitch_t *s, MDB_txn *txn, const sl_stitch_msg_t *m, const char *reason, const sl_buf_t *key,
                  uint64_t owner, uint64_t target)
{
    char a[32], b[32], at[32], first_at[32];
    stitch_person_id_str(owner, a);
    stitch_person_id_str(target, b);
    /* Counted once per (identifier, owner, person): every later event of
     * the same shared device would only repeat it. */
    sl_buf_t once = {0};
    sl_buf_printf(&once, "refused%c%s%c%s%c", KEY_SEP, a, KEY_SEP, b, KEY_SEP);
    sl_buf_append(&once, key->data, key->len < 400 ? key->len : 400);
    if (once.data == NULL) return SL_ENOMEM;
    MDB_val ok = {once.len, once.data}, ov = {0, ""};
    int rc = mdb_put(txn, s->smeta, &ok, &ov, MDB_NOOVERWRITE); /* MDB_KEYEXIST: counted before */
    sl_buf_free(&once);
    if (rc) return rc == MDB_KEYEXIST ? 0 : rc;
    s->pend.refusals++;

    /* owner's entry for this reason, when it has one still */
    uint64_t seq = 0, count = 0;
    if ((rc = refusal_key(&s->k4, owner, reason))) return rc;
    MDB_val ck = {s->k4.len, s->k4.data}, cv, jv;
    if ((rc = mdb_get(txn, s->smeta, &ck, &cv)) == 0 && cv.mv_size == 8) {
        memcpy(&seq, cv.mv_data, 8);
        MDB_val jk = {8, &seq};
        if ((rc = mdb_get(txn, s->journal, &jk, &jv)) == 0) {
            cJSON *doc = cJSON_ParseWithLength(jv.mv_data, jv.mv_size);
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(doc, "count");
            const char *f = sl_json_str(doc, "first_at");
            if (f == NULL) f = sl_json_str(doc, "at");
            count = cJSON_IsNumber(c) && c->valuedouble >= 1 ? (uint64_t)c->valuedouble : 1;
            snprintf(first_at, sizeof(first_at), "%s", f ? f : "");
            cJSON_Delete(doc);
        } else if (rc != MDB_NOTFOUND) {
            return rc;
        } else {
            seq = 0; /* erased with the other person */
        }
    } else if (rc && rc != MDB_NOTFOUND) {
        return rc;
    }
    sl_time_format_iso(sl_now_ms(), at);
    if (seq == 0) snprintf(first_at, sizeof(first_at), "%s", at);
    sl_buf_t *e = &s->tmp;
    e->len = 0;
    sl_buf_printf(e, "{\"type\":\"refused\",\"at\":\"%s\",\"reason\":", at);
    sl_buf_append_json_str(e, reason, strlen(reason));
    sl_buf_appends(e, ",\"messageId\":");
    if (m->message_id) sl_buf_append_json_str(e, m->message_id, strlen(m->message_id));
    else sl_buf_appends(e, "null");
    sl_buf_appends(e, ",\"identifier\":");
    stitch_append_identifier_json(e, key->data);
    sl_buf_printf(e, ",\"owner\":\"%s\",\"event_person\":\"%s\",\"count\":%llu,\"first_at\":", a, b,
                  (unsigned long long)count + 1);
    sl_buf_append_json_str(e, first_at, strlen(first_at));
    sl_buf_printf(e, ",\"last_at\":\"%s\"}", at);
    if (e->data == NULL) return SL_ENOMEM;
    if (seq == 0) {
        uint64_t both[2] = {owner, target};
        if ((rc = journal_add(s, txn, e, both, 2, 1, &seq))) return rc;
        cv = (MDB_val){8, &seq};
        if ((rc = mdb_put(txn, s->smeta, &ck, &cv, 0))) return rc;
        if ((rc = bound_refusals(s, txn, owner))) return rc;
    } else {
        MDB_val jk = {8, &seq}, nv = {e->len, e->data};
        if ((rc = mdb_put(txn, s->journal, &jk, &nv, 0))) return rc;
        if ((rc = journal_ref(s, txn, target, seq, 1)) == MDB_KEYEXIST) return 0;
        if (rc) return rc;
    }
    return bound_refusals(s, txn, target);
}

/* ---- traits ---- */

/* Printed length of x in s->tscratch, or -1 when longer than the traits
 * document may be. */
static long printed_len(sl_stitch_t *s, const cJSON *x)
{
    size_t cap = s->cfg->limits.max_traits_bytes + 1;
    if (s->tscratch == NULL && (s->tscratch = malloc(cap + 8)) == NULL) return -1;
    size_t n;
    if (sl_json_print(x, s->tscratch, cap, &n)) return -1;
    return (long)n;
}

/* Merges the traits object `in` (set at ts_ms) into p's traits: a trait takes
 * the newer of the two values by the time each was set. The person keeps at
 * most limits.max_traits_per_person traits in at most limits.max_traits_bytes
 * (the stored document); a trait that would pass either is not kept and is
 * counted in s->msg_dropped. So the work of one merge is bounded by those
 * limits, whatever was sent before. watch: collect the changes in
 * s->trait_changes (what the later phases of the event read). */
static int merge_traits(sl_stitch_t *s, person_t *p, const cJSON *in_t, const cJSON *in_at, int64_t ts_ms, int watch)
{
    const uint64_t max_n = s->cfg->limits.max_traits_per_person, max_bytes = s->cfg->limits.max_traits_bytes;
    cJSON *doc = p->traits.len ? cJSON_ParseWithLength(p->traits.data, p->traits.len) : NULL;
    if (doc == NULL) doc = cJSON_CreateObject();
    if (doc == NULL) return SL_ENOMEM;
    cJSON *t = cJSON_GetObjectItemCaseSensitive(doc, "t"), *at = cJSON_GetObjectItemCaseSensitive(doc, "at");
    if (!cJSON_IsObject(t)) t = cJSON_AddObjectToObject(doc, "t");
    if (!cJSON_IsObject(at)) at = cJSON_AddObjectToObject(doc, "at");
    int rc = SL_ENOMEM;
    if (t == NULL || at == NULL) goto out;
    uint64_t n = (uint64_t)cJSON_GetArraySize(t);
    uint64_t size = p->traits.len ? p->traits.len : 16; /* {"t":{},"at":{}} */
    /* a trait's time never lies in the future (the collector clamps
     * timestamps; records written before it did may still hold such times) */
    double now = (double)sl_now_ms();
    for (const cJSON *x = in_t ? in_t->child : NULL; x; x = x->next) {
        if (x->string == NULL) continue;
        double when = (double)ts_ms;
        const cJSON *xa = in_at ? cJSON_GetObjectItemCaseSensitive(in_at, x->string) : NULL;
        if (xa && cJSON_IsNumber(xa)) when = xa->valuedouble;
        if (when > now) when = now;
        const cJSON *cur_at = cJSON_GetObjectItemCaseSensitive(at, x->string);
        if (cJSON_IsNumber(cur_at) && cur_at->valuedouble > when) continue; /* ours is newer */
        const cJSON *old = cJSON_GetObjectItemCaseSensitive(t, x->string);
        /* what the document grows by: the value (and for a new trait its
         * name twice, quotes, separators and a 13-digit time) */
        long vlen = printed_len(s, x), olen = old ? printed_len(s, old) : 0;
        uint64_t grow = vlen < 0 ? UINT64_MAX : old ? (uint64_t)(vlen > olen ? vlen - olen : 0)
                                                    : 2 * strlen(x->string) + (uint64_t)vlen + 24;
        if ((old == NULL && n >= max_n) || grow > max_bytes || size + grow > max_bytes) {
            s->msg_dropped++;
            continue;
        }
        size += grow;
        n += old == NULL;
        if (watch && (old == NULL || !cJSON_Compare(old, x, 1))) {
            cJSON *ch = cJSON_CreateArray();
            if (ch == NULL) goto out;
            cJSON_AddItemToArray(s->trait_changes, ch);
            cJSON_AddItemToArray(ch, cJSON_CreateString(x->string));
            cJSON_AddItemToArray(ch, old ? cJSON_Duplicate(old, 1) : cJSON_CreateNull());
            cJSON_AddItemToArray(ch, cJSON_Duplicate(x, 1));
        }
        cJSON *copy = cJSON_Duplicate(x, 1);
        if (copy == NULL) goto out;
        cJSON_DeleteItemFromObjectCaseSensitive(t, x->string);
        cJSON_AddItemToObject(t, x->string, copy);
        p->dirty = 1;
        cJSON_DeleteItemFromObjectCaseSensitive(at, x->string);
        if (cJSON_AddNumberToObject(at, x->string, when) == NULL) goto out;
    }
    char *txt = cJSON_PrintUnformatted(doc);
    if (txt == NULL) goto out;
    p->traits.len = 0;
    rc = sl_buf_appends(&p->traits, txt) ? SL_ENOMEM : 0;
    cJSON_free(txt);
out:
    cJSON_Delete(doc);
    return rc;
}

/* ---- merge ---- */

typedef struct {
    sl_stitch_t *s;
    uint64_t to;
    MDB_dbi dbi;  /* pjournal, or prefusals */
    int copied;   /* a reference was new to `to` */
} journal_copy_t;

static int copy_journal_ref(MDB_txn *txn, const MDB_val *v, void *arg)
{
    journal_copy_t *jc = arg;
    MDB_val pk = {8, &jc->to}, pv = *v;
    int rc = mdb_put(txn, jc->dbi, &pk, &pv, MDB_NODUPDATA);
    if (rc == 0) jc->copied = 1;
    return rc == MDB_KEYEXIST ? 0 : rc;
}

/* Moves every identifier of x to survivor, sums the counters, merges traits
 * and journal, deletes x. Cost: x's identifiers and journal entries, never
 * its events. */
/* ---- persons by recent activity ---- */

#define ACTIVE_STEP_MS 60000 /* a person's place in active moves at most once a minute */

void stitch_active_key(unsigned char k[16], int64_t ms, uint64_t person)
{
    sl_be64_put(k, (uint64_t)(ms < 0 ? 0 : ms));
    sl_be64_put(k + 8, person);
}

/* Where p's entry in active is: a record written before it said so reads
 * actof once, and says it from then on (p is then dirty). */
static int active_here(sl_stitch_t *s, MDB_txn *txn, person_t *p)
{
    if (p->h.flags & PF_ACTIVE_HERE) return 0;
    MDB_val k = {8, &p->id}, v;
    int rc = mdb_get(txn, s->actof, &k, &v);
    p->h.flags |= PF_ACTIVE_HERE;
    p->h.active_ms = 0;
    p->dirty = 1;
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size != 8) return MDB_CORRUPTED;
    memcpy(&p->h.active_ms, v.mv_data, 8);
    p->h.flags |= PF_ACTIVE;
    return mdb_del(txn, s->actof, &k, NULL);
}

/* p's time in active (*found 0: none), its entry removed when drop. A time
 * of 0 is a time like another (an event may claim 1970). */
int stitch_active_get(sl_stitch_t *s, MDB_txn *txn, person_t *p, int64_t *ms, int *found, int drop)
{
    int rc = active_here(s, txn, p);
    if (rc) return rc;
    *found = (p->h.flags & PF_ACTIVE) != 0;
    *ms = *found ? p->h.active_ms : 0;
    if (!drop || !*found) return 0;
    unsigned char ak[16];
    stitch_active_key(ak, *ms, p->id);
    MDB_val av = {16, ak};
    if ((rc = mdb_del(txn, s->active, &av, NULL)) && rc != MDB_NOTFOUND) return rc;
    p->h.flags &= ~(uint64_t)PF_ACTIVE;
    p->dirty = 1;
    return 0;
}

/* p was active at ms: moves it to the front when that is a minute or more
 * past its place (p is then dirty: its record says where). */
static int active_touch(sl_stitch_t *s, MDB_txn *txn, person_t *p, int64_t ms)
{
    int64_t old;
    int found;
    int rc = stitch_active_get(s, txn, p, &old, &found, 0);
    if (rc) return rc;
    if (ms < 0) ms = 0; /* the key's time is unsigned */
    if (found && ms < old + ACTIVE_STEP_MS) return 0;
    unsigned char ak[16];
    MDB_val av = {16, ak}, nothing = {0, NULL};
    if (found) {
        stitch_active_key(ak, old, p->id);
        if ((rc = mdb_del(txn, s->active, &av, NULL)) && rc != MDB_NOTFOUND) return rc;
    }
    stitch_active_key(ak, ms, p->id);
    if ((rc = mdb_put(txn, s->active, &av, &nothing, 0))) return rc;
    p->h.active_ms = ms;
    p->h.flags |= PF_ACTIVE;
    p->dirty = 1;
    return 0;
}

static int merge(sl_stitch_t *s, MDB_txn *txn, person_t *sv, person_t *x, const sl_stitch_msg_t *m,
                 const char *reason)
{
    int rc;
    char a[32], b[32];
    stitch_person_id_str(sv->id, a);
    stitch_person_id_str(x->id, b);
    journal_head(&s->tmp, "merge", m, reason);
    sl_buf_printf(&s->tmp, ",\"survivor\":\"%s\",\"absorbed\":\"%s\",\"identifiers\":[", a, b);
    for (size_t off = 0, i = 0; off < x->ids.len; off += strlen(x->ids.data + off) + 1, i++) {
        const char *key = x->ids.data + off;
        if (i) sl_buf_appends(&s->tmp, ",");
        stitch_append_identifier_json(&s->tmp, key);
        uint64_t val[2], owner;
        if ((rc = stitch_lookup_id(s, txn, key, strlen(key), &owner, &val[1]))) return rc;
        val[0] = sv->id; /* the timeline number stays: its events move with it */
        MDB_val k = {strlen(key), (void *)key}, v = {16, val};
        if ((rc = mdb_put(txn, s->ids, &k, &v, 0))) return rc;
        if (sl_buf_append(&sv->ids, key, strlen(key) + 1)) return SL_ENOMEM;
        sv->h.n_ids++;
    }
    sl_buf_appends(&s->tmp, "]}");
    if (s->tmp.data == NULL) return SL_ENOMEM;

    sv->dirty = 1; /* event counts and first/last seen follow from the identifiers' timelines */
    if (x->traits.len) {
        cJSON *doc = cJSON_ParseWithLength(x->traits.data, x->traits.len);
        rc = merge_traits(s, sv, cJSON_GetObjectItemCaseSensitive(doc, "t"), cJSON_GetObjectItemCaseSensitive(doc, "at"),
                          0, 0);
        cJSON_Delete(doc);
        if (rc) return rc;
    }

    if ((rc = consent_merge(txn, s->consent, s->ccache, sv->id, x->id))) return rc;
    /* for the later phases of the event (the stage context) */
    if (s->n_mg == s->cap_mg) {
        size_t cap = s->cap_mg ? 2 * s->cap_mg : 4;
        uint64_t *grown = realloc(s->mg_survivor, cap * sizeof(*grown));
        if (grown == NULL) return SL_ENOMEM;
        s->mg_survivor = grown;
        if ((grown = realloc(s->mg_absorbed, cap * sizeof(*grown))) == NULL) return SL_ENOMEM;
        s->mg_absorbed = grown;
        s->cap_mg = cap;
    }
    s->mg_survivor[s->n_mg] = sv->id;
    s->mg_absorbed[s->n_mg++] = x->id;
    /* The absorbed person's journal now explains the survivor too. */
    journal_copy_t jc = {s, sv->id, s->pjournal, 0}, jr = {s, sv->id, s->prefusals, 0};
    if ((rc = stitch_foreach_dup(txn, s->pjournal, &x->id, 8, copy_journal_ref, &jc))) return rc;
    if ((rc = stitch_foreach_dup(txn, s->prefusals, &x->id, 8, copy_journal_ref, &jr))) return rc;
    if (jr.copied && (rc = bound_refusals(s, txn, sv->id))) return rc; /* two users joined (trusted alias) */
    MDB_val k = {8, &x->id};
    if ((rc = mdb_del(txn, s->pjournal, &k, NULL)) && rc != MDB_NOTFOUND) return rc;
    if ((rc = mdb_del(txn, s->prefusals, &k, NULL)) && rc != MDB_NOTFOUND) return rc;
    /* MDB_NOTFOUND: x was created by this very message and never saved (an
     * identify whose new anonymousId carries another person's email). */
    if ((rc = mdb_del(txn, s->persons, &k, NULL)) && rc != MDB_NOTFOUND) return rc;
    if ((rc = stitch_attach_keep(s, x))) return rc; /* for their owners' merge, later in the event */
    int64_t x_active;
    int x_found;
    if ((rc = stitch_active_get(s, txn, x, &x_active, &x_found, 1)) ||
        (x_found && (rc = active_touch(s, txn, sv, x_active))))
        return rc;
    s->pend.merges++;
    uint64_t who = sv->id;
    return journal_add(s, txn, &s->tmp, &who, 1, 0, NULL);
}

static void swap_persons(person_t *a, person_t *b)
{
    person_t t = *a;
    *a = *b;
    *b = t;
}

/* ---- per event, in the writer's transaction ---- */

static int stitch_event(sl_stitch_t *s, MDB_txn *txn, sl_stitch_msg_t *m, uint64_t seq, sl_stage_ctx_t *ctx);

/* An identify's traits: its `traits`, or, when it has none, `context.traits`
 * (where RudderStack's SDKs put them); absent when neither is an object. */
sl_jval_t stitch_identify_traits(const sl_jindex_t *top, const sl_jindex_t *context)
{
    sl_jval_t traits = sl_jindex_get(top, "traits");
    if (sl_jtype(traits) != SL_JOBJ) traits = sl_jindex_get(context, "traits");
    return sl_jtype(traits) == SL_JOBJ ? traits : (sl_jval_t){NULL, 0};
}

/* The string member name of o, decoded into a (NULL: absent, not a string). */
static const char *jstr_ix(const sl_jindex_t *ix, const char *name, sl_arena_t *a)
{
    return sl_jstr(sl_jindex_get(ix, name), a, NULL);
}

/* The first identity trait m carries (an identify's), or -1: what the event
 * is indexed under when it has no userId or anonymousId. */
int stitch_first_trait(const sl_stitch_t *s, const sl_stitch_msg_t *m)
{
    for (size_t i = 0; i < s->cfg->n_identity_traits && i < SL_STITCH_MAX_TRAITS; i++)
        if (m->trait_ids[i]) return (int)i;
    return -1;
}

/* What the stitcher reads of a stored message (the collector normalised it:
 * ids are strings, timestamp is corrected and clamped, context.sillage.source
 * names the source), without a tree but for an identify's traits. Strings
 * (cleaned identifiers too) go to s->in_arena. Release with stitch_msg_free(). */
int stitch_read_msg(sl_stitch_t *s, const sl_jindex_t *top, const sl_jindex_t *context, uint64_t seq,
                    sl_stitch_msg_t *m)
{
    memset(m, 0, sizeof(*m));
    sl_arena_t *a = &s->in_arena;
    sl_arena_reset(a);
    sl_jval_t type = sl_jindex_get(top, "type");
    static const char *const names[] = {"track", "page", "screen", "identify", "alias", "group"};
    m->type = SL_STITCH_TRACK;
    for (int i = 0; i < 6; i++)
        if (sl_jstr_eq(type, names[i], strlen(names[i]))) m->type = SL_STITCH_TRACK + i;
    m->message_id = jstr_ix(top, "messageId", a);
    m->user_id = sl_stitch_clean_id(s, jstr_ix(top, "userId", a), a, 0);
    m->anonymous_id = sl_stitch_clean_id(s, jstr_ix(top, "anonymousId", a), a, 0);
    m->previous_id = sl_stitch_clean_id(s, jstr_ix(top, "previousId", a), a, 0);
    sl_jval_t sil = sl_jindex_get(context, "sillage");
    const sl_source_t *src = m->source = sl_config_source(s->cfg, stitch_jstr(sil, "source", a));
    m->trusted = src && src->trusted;
    /* A source marked "historical", or a message of a trusted source with
     * context.sillage.import true. A browser key is public: from it, the mark
     * would let a page hide an order from the cart rule or a trait change from
     * a CRM sync, so it is ignored there (as Subscribed is). */
    m->historical = src && (src->historical || (src->trusted && sl_jtype(sl_jget(sil, "import")) == SL_JTRUE));
    const char *ts = jstr_ix(top, "timestamp", a);
    if (ts == NULL || sl_time_parse_iso(ts, strlen(ts), &m->ts_ms)) m->ts_ms = sl_now_ms();
    sl_jval_t traits = m->type == SL_STITCH_IDENTIFY ? stitch_identify_traits(top, context) : (sl_jval_t){NULL, 0};
    if (traits.n) {
        for (size_t i = 0; i < s->cfg->n_identity_traits && i < SL_STITCH_MAX_TRAITS; i++)
            m->trait_ids[i] = sl_stitch_clean_id(s, stitch_jstr(traits, s->cfg->identity_traits[i], a), a, 1);
        /* merged into the person's traits document: a tree. The text was
         * checked, and is what cJSON printed: only memory can fail here (the
         * stage retries the transaction, it does not set the event aside) */
        if ((m->traits = cJSON_ParseWithLength(traits.p, traits.n)) == NULL) return SL_ENOMEM;
    }
    return consent_read_msg(top, context, s->cfg, m->trusted, m->ts_ms, seq, &m->consent, a);
}

void stitch_msg_free(sl_stitch_msg_t *m)
{
    consent_in_free(&m->consent);
    cJSON_Delete(m->traits);
    m->traits = NULL;
}

/* The stage step: one stored event. */
static int on_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    sl_stitch_t *s = arg;
    sl_stitch_msg_t m;
    int rc = stitch_read_msg(s, ev->top, ev->context, ev->seq, &m);
    s->n_mg = 0;
    stitch_attach_clear(s); /* (and ev_valid) */
    ev->ctx->historical = m.historical;
    ev->ctx->trusted = m.trusted;
    if (rc == 0 && m.type != SL_STITCH_IDENTIFY && m.type != SL_STITCH_ALIAS) {
        rc = stitch_event(s, txn, &m, ev->seq, ev->ctx);
    } else if (rc == 0) {
        uint64_t t0 = sl_mono_ns();
        rc = stitch_event(s, txn, &m, ev->seq, ev->ctx);
        atomic_fetch_add(&s->identify_ns, sl_mono_ns() - t0);
        atomic_fetch_add(&s->identifies, 1);
    }
    stitch_msg_free(&m);
    ev->ctx->merge_survivor = s->mg_survivor; /* even when the event was then stitched to nobody */
    ev->ctx->merge_absorbed = s->mg_absorbed;
    ev->ctx->n_merges = s->n_mg;
    return rc;
}

static int stitch_event(sl_stitch_t *s, MDB_txn *txn, sl_stitch_msg_t *m, uint64_t seq, sl_stage_ctx_t *ctx)
{
    /* a message that failed half-way (its batch then failed alone) leaves nothing behind */
    while (s->trait_changes && s->trait_changes->child) cJSON_DeleteItemFromArray(s->trait_changes, 0);
    s->msg_dropped = 0;
    s->gained_identity = 0;
    person_t *t = &s->p1, *o = &s->p2; /* the target person, and another */
    sl_buf_t *kU = &s->k1, *kA = &s->k2;
    uint64_t pU = 0, pA = 0, tlU = 0, tlA = 0; /* persons and timeline numbers of kU, kA */
    int rc;
    int index_user = 0; /* the event is indexed under kU (else under kA) */

    if (m->type == SL_STITCH_ALIAS) {
        if (m->user_id == NULL || m->previous_id == NULL) return 0;
        if ((rc = stitch_make_key(kU, "user_id", m->user_id)) || (rc = stitch_lookup(s, txn, kU, &pU, &tlU))) return rc;
        /* previousId: a former user_id, else an anonymous_id. */
        if ((rc = stitch_make_key(kA, "user_id", m->previous_id)) || (rc = stitch_lookup(s, txn, kA, &pA, &tlA))) return rc;
        if (pA == 0 && ((rc = stitch_make_key(kA, "anonymous_id", m->previous_id)) || (rc = stitch_lookup(s, txn, kA, &pA, &tlA))))
            return rc;
        /* From a source anyone can read the key of (a browser), alias never
         * joins two users: previousId's person already has a userId other
         * than the new one. The refusal is journaled; the event goes to
         * userId's person. */
        int join_users = 0;
        if (pA && pA != pU) {
            if ((rc = stitch_person_load(s, txn, pA, o))) return rc;
            const char *uo = stitch_person_user_id(o);
            join_users = uo && strcmp(uo, m->user_id) != 0;
        }
        int refused = join_users && !m->trusted;
        if (pU) {
            if ((rc = stitch_person_load(s, txn, pU, t))) return rc;
        } else if (pA && !refused) {
            if ((rc = stitch_person_load(s, txn, pA, t))) return rc;
            if ((rc = add_identity(s, txn, t, kU, &tlU))) return rc;
        } else {
            if ((rc = person_create(s, txn, t)) || (rc = add_identity(s, txn, t, kU, &tlU))) return rc;
        }
        if (pA == 0) {
            if ((rc = add_identity(s, txn, t, kA, &tlA))) return rc;
        } else if (pA != t->id) {
            if (refused) {
                if ((rc = refuse(s, txn, m, "alias would join two users: only a trusted source may", kA, pA, t->id)))
                    return rc;
            } else {
                if ((rc = stitch_person_load(s, txn, pA, o))) return rc;
                if ((rc = merge(s, txn, t, o, m, "alias: previousId merged into userId"))) return rc;
            }
        }
        index_user = 1;
    } else {
        if (m->user_id && ((rc = stitch_make_key(kU, "user_id", m->user_id)) || (rc = stitch_lookup(s, txn, kU, &pU, &tlU)))) return rc;
        if (m->anonymous_id &&
            ((rc = stitch_make_key(kA, "anonymous_id", m->anonymous_id)) || (rc = stitch_lookup(s, txn, kA, &pA, &tlA))))
            return rc;
        if (m->user_id) {
            if (pU) {
                if ((rc = stitch_person_load(s, txn, pU, t))) return rc;
            } else if (pA) {
                if ((rc = stitch_person_load(s, txn, pA, t))) return rc;
                if (stitch_person_user_id(t) == NULL) { /* the anonymous person becomes the user's */
                    if ((rc = add_identity(s, txn, t, kU, &tlU))) return rc;
                } else if ((rc = person_create(s, txn, t)) || (rc = add_identity(s, txn, t, kU, &tlU))) {
                    return rc;
                }
            } else if ((rc = person_create(s, txn, t)) || (rc = add_identity(s, txn, t, kU, &tlU))) {
                return rc;
            }
            if (m->anonymous_id) {
                if (pA == 0) {
                    if ((rc = add_identity(s, txn, t, kA, &tlA))) return rc;
                } else if (pA != t->id) {
                    if ((rc = stitch_person_load(s, txn, pA, o))) return rc;
                    if (stitch_person_user_id(o)) {
                        if ((rc = refuse(s, txn, m, "anonymous_id already belongs to another user (shared device)",
                                         kA, pA, t->id)))
                            return rc;
                    } else if ((rc = merge(s, txn, t, o, m, "identify: anonymous person merged into the user"))) {
                        return rc;
                    }
                }
            }
            index_user = 1;
        } else if (m->anonymous_id) {
            if (pA) {
                if ((rc = stitch_person_load(s, txn, pA, t))) return rc;
            } else if ((rc = person_create(s, txn, t)) || (rc = add_identity(s, txn, t, kA, &tlA))) {
                return rc;
            }
            index_user = 0;
        } else {
            /* No userId or anonymousId to stitch on (junk, or unkeyable): an
             * identity trait (an e-mail) still names someone, and erasure by
             * it must reach the event, so the event goes to the trait's
             * owner, or to a person of its own, indexed under the trait. */
            int i = stitch_first_trait(s, m);
            if (i < 0) return 0; /* nothing to stitch on (all identifiers were junk) */
            if ((rc = stitch_make_key(kA, s->cfg->identity_traits[i], m->trait_ids[i])) ||
                (rc = stitch_lookup(s, txn, kA, &pA, &tlA)))
                return rc;
            if (pA) {
                if ((rc = stitch_person_load(s, txn, pA, t))) return rc;
            } else if ((rc = person_create(s, txn, t)) || (rc = add_identity(s, txn, t, kA, &tlA))) {
                return rc;
            }
            index_user = 0;
        }

        /* Trait identifiers (email): the person who owns one absorbs an
         * anonymous one; two different users are never fused. */
        for (size_t i = 0; i < s->cfg->n_identity_traits && i < SL_STITCH_MAX_TRAITS; i++) {
            if (m->trait_ids[i] == NULL) continue;
            sl_buf_t *kT = &s->k3;
            uint64_t pT;
            if ((rc = stitch_make_key(kT, s->cfg->identity_traits[i], m->trait_ids[i])) || (rc = stitch_lookup(s, txn, kT, &pT, NULL)))
                return rc;
            if (pT == 0) {
                if ((rc = add_identity(s, txn, t, kT, NULL))) return rc;
                continue;
            }
            if (pT == t->id) continue;
            if ((rc = stitch_person_load(s, txn, pT, o))) return rc;
            const char *uo = stitch_person_user_id(o), *ut = stitch_person_user_id(t);
            if (uo && ut && strcmp(uo, ut) != 0) {
                rc = refuse(s, txn, m, "trait identifier already belongs to another user", kT, pT, t->id);
            } else if (ut) {
                rc = merge(s, txn, t, o, m, "trait identifier: its anonymous owner merged into the user");
            } else {
                /* t is anonymous: it joins the person that owns the trait. */
                rc = merge(s, txn, o, t, m, "trait identifier: anonymous person merged into its owner");
                swap_persons(t, o);
            }
            if (rc) return rc;
        }
    }
    /* Index the event under the identifier it was sent with. */
    unsigned char tv[16];
    stitch_tl_value(tv, m->ts_ms, seq, m->type == SL_STITCH_PAGE || m->type == SL_STITCH_SCREEN);
    /* kU or kA was looked up or given above: its timeline number is known */
    uint64_t tlno = index_user ? tlU : tlA;
    unsigned char tk[8];
    sl_be64_put(tk, tlno);
    MDB_val k = {8, tk}, v = {16, tv};
    if ((rc = mdb_put(txn, s->tl, &k, &v, 0)) && rc != MDB_KEYEXIST) return rc;
    if ((rc = active_touch(s, txn, t, m->ts_ms))) return rc;

    if (m->type == SL_STITCH_IDENTIFY && m->traits) {
        if (s->trait_changes == NULL && (s->trait_changes = cJSON_CreateArray()) == NULL) rc = SL_ENOMEM;
        else rc = merge_traits(s, t, m->traits, NULL, m->ts_ms, 1);
        if (rc) return rc;
    }
    if (t->dirty && (rc = person_save(s, txn, t))) return rc; /* most events change no record */
    /* before the listeners: a rule that needs consent sees what this event said */
    int consent_changed;
    if ((rc = consent_apply(txn, s->consent, s->ccache, t->id, &m->consent, &consent_changed))) return rc;
    ctx->consent_changed = consent_changed;
    s->pend.traits_dropped += s->msg_dropped;
    /* what the later phases of the event read */
    ctx->entity = (sl_entity_t){SL_ENTITY_PERSON, t->id};
    ctx->identified = stitch_person_identified(t);
    ctx->identity_changed = s->gained_identity || s->n_mg > 0;
    ctx->ts_ms = m->ts_ms;
    ctx->dropped_traits = s->msg_dropped;
    ctx->trait_changes = s->trait_changes;
    /* its attachments, for the later phases (attach.c) */
    s->ev_ext.len = 0;
    if (sl_buf_append(&s->ev_ext, t->ext.data, t->ext.len)) return SL_ENOMEM;
    s->ev_id = t->id;
    s->ev_valid = 1;
    return 0;
}

int stitch_finish_erasures(sl_stitch_t *s, MDB_txn *txn);

/* A store written before prefusals existed: every refusal reference in
 * pjournal (and every reference to an entry no longer there, which only a
 * refusal shared with an erased person leaves) is copied to it, once, in
 * the opening transaction. Costs one pass over the journal. */
static int build_prefusals(sl_stitch_t *s, MDB_txn *txn)
{
    MDB_cursor *cur;
    uint64_t n = 0;
    int rc = mdb_cursor_open(txn, s->pjournal, &cur);
    if (rc) return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        MDB_val jk = {8, v.mv_data}, jv, pv = v;
        int g = mdb_get(txn, s->journal, &jk, &jv);
        if (g == MDB_NOTFOUND || (g == 0 && stitch_entry_is_refusal(&jv))) {
            if ((g = mdb_put(txn, s->prefusals, &k, &pv, MDB_NODUPDATA)) == MDB_KEYEXIST) g = 0;
            n++;
        }
        if (g) {
            rc = g;
            break;
        }
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) return rc;
    if (n) SL_INFO("identity journal: %llu refusal references indexed apart from merges (prefusals)",
                   (unsigned long long)n);
    return 0;
}

static int on_open(void *arg, MDB_txn *txn, int read_only)
{
    sl_stitch_t *s = arg;
    unsigned c = read_only ? 0 : MDB_CREATE;
    int rc;
    if ((rc = mdb_dbi_open(txn, "ids", c, &s->ids))) return rc;
    if ((rc = mdb_dbi_open(txn, "persons", c | MDB_INTEGERKEY, &s->persons))) return rc;
    if ((rc = mdb_dbi_open(txn, "tl", c | MDB_DUPSORT | MDB_DUPFIXED, &s->tl))) return rc;
    if ((rc = mdb_dbi_open(txn, "journal", c | MDB_INTEGERKEY, &s->journal))) return rc;
    if ((rc = mdb_dbi_open(txn, "pjournal", c | MDB_INTEGERKEY | MDB_DUPSORT | MDB_DUPFIXED | MDB_INTEGERDUP,
                           &s->pjournal)))
        return rc;
    /* added after layout 3 (a store from before gets it from pjournal);
     * only the stage's writes use it */
    const unsigned pr = MDB_INTEGERKEY | MDB_DUPSORT | MDB_DUPFIXED | MDB_INTEGERDUP;
    if ((rc = mdb_dbi_open(txn, "prefusals", pr, &s->prefusals)) == MDB_NOTFOUND) {
        s->prefusals = 0;
        if (!read_only && ((rc = mdb_dbi_open(txn, "prefusals", pr | MDB_CREATE, &s->prefusals)) ||
                           (rc = build_prefusals(s, txn))))
            return rc;
    } else if (rc) {
        return rc;
    }
    if ((rc = mdb_dbi_open(txn, "smeta", c, &s->smeta))) return rc;
    if ((rc = mdb_dbi_open(txn, "erasing", c | MDB_INTEGERKEY, &s->erasing))) return rc;
    /* added after layout 3 was fixed: a store from before lists the persons
     * active since (`sillage rebuild` lists them all) */
    if ((rc = mdb_dbi_open(txn, "active", c, &s->active)) == MDB_NOTFOUND && read_only) s->active = 0;
    else if (rc) return rc;
    if ((rc = mdb_dbi_open(txn, "actof", c | MDB_INTEGERKEY, &s->actof)) == MDB_NOTFOUND && read_only) s->actof = 0;
    else if (rc) return rc;
    if ((rc = mdb_dbi_open(txn, "consent", c | MDB_INTEGERKEY, &s->consent)) == MDB_NOTFOUND && read_only) s->consent = 0;
    else if (rc) return rc;
    /* The layout of ids/tl/persons: a store of another layout is refused, not misread. */
    MDB_val k = {6, "layout"}, v;
    uint32_t layout = STITCH_LAYOUT;
    rc = mdb_get(txn, s->smeta, &k, &v);
    if (rc == 0 && v.mv_size == 4) memcpy(&layout, v.mv_data, 4);
    else if (rc == MDB_NOTFOUND) {
        MDB_stat st;
        if ((rc = mdb_stat(txn, s->persons, &st))) return rc;
        if (st.ms_entries > 0) layout = 1; /* written before the layout was recorded */
        else if (!read_only) {
            v.mv_size = 4;
            v.mv_data = &layout;
            if ((rc = mdb_put(txn, s->smeta, &k, &v, 0))) return rc;
        }
    } else if (rc) {
        return rc;
    }
    if (layout != STITCH_LAYOUT) {
        SL_ERROR("the identity graph in this data directory has layout %u; this sillage reads layout %u "
                 "(export the events and ingest them again)", layout, STITCH_LAYOUT);
        return SL_EINVAL;
    }
    return read_only ? 0 : stitch_finish_erasures(s, txn);
}

/* After each stage transaction: a committed one's counts are added; an
 * aborted one (it will be redone) takes back its counts and what the
 * consent cache saw. */
static void on_after_txn(void *arg, int ok)
{
    sl_stitch_t *s = arg;
    if (ok) {
        atomic_fetch_add(&s->created, s->pend.created);
        atomic_fetch_add(&s->refusals, s->pend.refusals);
        atomic_fetch_add(&s->refusals_dropped, s->pend.refusals_dropped);
        atomic_fetch_add(&s->merges, s->pend.merges);
        atomic_fetch_add(&s->traits_dropped, s->pend.traits_dropped);
        atomic_fetch_add(&s->prune_passes, s->pend.prune_passes);
    } else {
        consent_cache_clear(s->ccache);
    }
    /* the attachments kept in memory (attach.c) belong to one transaction:
     * after an abort they may hold what was undone */
    stitch_attach_clear(s);
    memset(&s->pend, 0, sizeof(s->pend));
}

/* ---- public ---- */

sl_stitch_t *sl_stitch_new(const sl_config_t *cfg, sl_store_t *log)
{
    sl_stitch_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return NULL;
    if ((s->ccache = calloc(1, sizeof(*s->ccache))) == NULL) {
        free(s);
        return NULL;
    }
    s->cfg = cfg;
    s->store = log;
    sl_arena_init(&s->in_arena);
    s->step = (sl_stage_step_t){.name = "identity", .phase = SL_PHASE_IDENTITY, .arg = s, .open = on_open, .apply = on_apply,
                                .after_txn = on_after_txn};
    return s;
}

const sl_stage_step_t *sl_stitch_step(sl_stitch_t *s) { return &s->step; }

int sl_stitch_listen(sl_stitch_t *s, const sl_ident_listener_t *l)
{
    if (s->n_listeners == MAX_LISTENERS) return SL_EINVAL;
    s->listeners[s->n_listeners++] = *l;
    return 0;
}

void sl_stitch_free(sl_stitch_t *s)
{
    if (s == NULL) return;
    person_t *ps[3] = {&s->p1, &s->p2, &s->p3};
    cJSON_Delete(s->trait_changes);
    free(s->mg_survivor);
    free(s->mg_absorbed);
    free(s->tscratch);
    free(s->ccache);
    for (int i = 0; i < 3; i++) {
        sl_buf_free(&ps[i]->ids);
        sl_buf_free(&ps[i]->traits);
        sl_buf_free(&ps[i]->ext);
    }
    stitch_attach_free(s);
    sl_buf_free(&s->k1);
    sl_buf_free(&s->k2);
    sl_buf_free(&s->k3);
    sl_buf_free(&s->k4);
    sl_buf_free(&s->tmp);
    sl_arena_free(&s->in_arena);
    free(s);
}
void sl_stitch_metrics(void *arg, sl_buf_t *b)
{
    sl_stitch_stats_t ss;
    sl_stitch_get_stats(arg, &ss);
    sl_metric_u64(b, "counter", "sillage_identity_merges_total", "Persons merged into another.", ss.merges);
    sl_metric_u64(b, "counter", "sillage_identity_refusals_total",
                  "Merges refused (two different users), journaled.", ss.refusals);
    sl_metric_u64(b, "counter", "sillage_identity_refusals_dropped_total",
                  "Refusal entries dropped from a person's journal past its bound (the oldest go).",
                  ss.refusals_dropped);
    sl_metric_u64(b, "counter", "sillage_traits_dropped_total", "Traits not kept on a profile (limits.max_traits_*).",
                  ss.traits_dropped);
    sl_metric_u64(b, "counter", "sillage_persons_created_total", "Persons created.", ss.persons_created);
    sl_metric_u64(b, "counter", "sillage_retention_pruned_events_total",
                  "Events removed from the log (and their timeline entries) past their retention.", ss.pruned);
    sl_metric_u64(b, "counter", "sillage_retention_examined_events_total",
                  "Events the retention pruner looked at (each pass reads the whole log once).", ss.examined);
    sl_metric_u64(b, "counter", "sillage_retention_passes_total", "Passes of the pruner over the log begun.",
                  ss.prune_passes);
    sl_metric_u64(b, "counter", "sillage_retention_persons_removed_total",
                  "Persons never identified whose every event retention pruned, removed whole.", ss.persons_expired);
    sl_metric_head(b, "summary", "sillage_identify_stitch_seconds",
                   "Time the stage spent stitching identify and alias messages (merges included).");
    sl_buf_printf(b, "sillage_identify_stitch_seconds_sum %.9f\nsillage_identify_stitch_seconds_count %llu\n",
                  (double)ss.identify_ns / 1e9, (unsigned long long)ss.identifies);
}
