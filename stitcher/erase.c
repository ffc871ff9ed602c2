/* erase.c - erasure (sl_stitch_erase_*, docs/PRIVACY.md): a person, its
 * identifiers, timeline, journal entries and consent go in one stage
 * transaction, its events leave the log after it, and an erasure a crash
 * cut short is finished at open. Private to stitcher/ (stitch_int.h). */
#define _GNU_SOURCE /* memmem */
#include "stitch_int.h"

#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

static int erase_event(MDB_txn *txn, const MDB_val *v, void *arg)
{
    (void)txn;
    sl_stitch_erase_t *e = arg;
    uint64_t seq = stitch_tl_seq(v->mv_data);
    return stitch_u64_append(&e->seqs, &e->n_seqs, &e->cap_seqs, &seq, 1);
}

/* A refusal entry of another, living person (the one whose identifier was
 * claimed) stays in that person's journal: it holds none of the erased
 * person's identifiers, and the erased person is no longer named in it as
 * the latest claimant. 1 when it stays. */
static int keep_others_refusal(MDB_txn *txn, sl_stitch_erase_t *e, const MDB_val *jk, const MDB_val *jv, int *kept)
{
    sl_stitch_t *s = e->stitch;
    *kept = 0;
    if (!stitch_entry_is_refusal(jv)) return 0;
    cJSON *doc = cJSON_ParseWithLength(jv->mv_data, jv->mv_size);
    uint64_t owner = stitch_entry_person(doc, "owner"), me = e->person[0] ? strtoull(e->person + 2, NULL, 10) : 0;
    MDB_val ok = {8, &owner}, ov;
    int rc = 0;
    if (doc && owner && owner != me && (rc = mdb_get(txn, s->persons, &ok, &ov)) == 0) {
        *kept = 1;
        if (stitch_entry_person(doc, "event_person") == me) {
            cJSON_ReplaceItemInObjectCaseSensitive(doc, "event_person", cJSON_CreateNull());
            cJSON_ReplaceItemInObjectCaseSensitive(doc, "messageId", cJSON_CreateNull());
            char *txt = cJSON_PrintUnformatted(doc);
            MDB_val nv = {txt ? strlen(txt) : 0, txt};
            rc = txt ? mdb_put(txn, s->journal, (MDB_val *)jk, &nv, 0) : SL_ENOMEM;
            cJSON_free(txt);
        }
    }
    cJSON_Delete(doc);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int erase_journal_entry(MDB_txn *txn, const MDB_val *v, void *arg)
{
    sl_stitch_erase_t *e = arg;
    MDB_val jk = {8, v->mv_data}, jv;
    /* a merge into the person: the absorbed id is named to consumers (the
     * triggers they got before the merge carry it) and its feed entries go */
    int rc = mdb_get(txn, e->stitch->journal, &jk, &jv), kept;
    if (rc == 0 && (rc = keep_others_refusal(txn, e, &jk, &jv, &kept)) == 0 && kept) return 0;
    if (rc == 0 && memmem(jv.mv_data, jv.mv_size, "\"type\":\"merge\"", 14)) {
        cJSON *doc = cJSON_ParseWithLength(jv.mv_data, jv.mv_size);
        const char *ab = sl_json_str(doc, "absorbed");
        sl_entity_t who = {0, 0};
        uint64_t id = ab && sl_entity_parse(ab, strlen(ab), &who) == 0 ? who.id : 0;
        if (id) rc = stitch_u64_append(&e->merged, &e->n_merged, &e->cap_merged, &id, 1);
        cJSON_Delete(doc);
        if (rc) return rc;
    }
    rc = mdb_del(txn, e->stitch->journal, &jk, NULL);
    if (rc == 0) e->journal++;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* What an erasure tells downstream tools of p (sl_ident_listener_t.forgotten):
 * its id, the ids of the persons merged into it, and the SHA-256 of each
 * userId and identity-trait value, by kind. */
static int erased_json(const sl_stitch_t *s, const person_t *p, const uint64_t *merged, size_t n_merged,
                       sl_buf_t *out)
{
    char pid[32];
    stitch_person_id_str(p->id, pid);
    out->len = 0;
    sl_buf_printf(out, "{\"id\":\"%s\"", pid);
    if (n_merged) {
        sl_buf_appends(out, ",\"merged_ids\":[");
        for (size_t i = 0; i < n_merged; i++) {
            stitch_person_id_str(merged[i], pid);
            sl_buf_printf(out, "%s\"%s\"", i ? "," : "", pid);
        }
        sl_buf_appends(out, "]");
    }
    for (size_t k = 0; k <= s->cfg->n_identity_traits; k++) {
        const char *kind = k == 0 ? "user_id" : s->cfg->identity_traits[k - 1];
        size_t kl = strlen(kind), n = 0;
        for (size_t off = 0; off < p->ids.len; off += strlen(p->ids.data + off) + 1) {
            const char *key = p->ids.data + off;
            if (strncmp(key, kind, kl) != 0 || key[kl] != KEY_SEP) continue;
            unsigned char md[SHA256_DIGEST_LENGTH];
            SHA256((const unsigned char *)key + kl + 1, strlen(key + kl + 1), md);
            char hex[2 * SHA256_DIGEST_LENGTH + 1];
            for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
            if (n++ == 0) {
                sl_buf_appends(out, ",");
                sl_buf_append_json_str(out, kind, kl); /* "email" -> "email_sha256" */
                out->len--;
                sl_buf_appends(out, "_sha256\":[");
            } else {
                sl_buf_appends(out, ",");
            }
            sl_buf_printf(out, "\"%s\"", hex);
        }
        if (n) sl_buf_appends(out, "]");
    }
    sl_buf_appends(out, "}");
    return out->data ? 0 : SL_ENOMEM;
}

/* In the stage's transaction: the person's derived state goes, and the
 * numbers of its events are kept in `erasing` until the log lets them go. */
/* Everything the stitcher derived about p goes: identifiers, timelines
 * (their events' numbers into e->seqs), journal (the persons merged into p
 * into e->merged), record, recent activity, consent. The listeners are told
 * after (tell_forgotten). */
int stitch_forget_person(sl_stitch_t *s, MDB_txn *txn, person_t *p, sl_stitch_erase_t *e)
{
    int rc;
    for (size_t off = 0; off < p->ids.len; off += strlen(p->ids.data + off) + 1) {
        const char *key = p->ids.data + off;
        MDB_val k = {strlen(key), (void *)key};
        uint64_t owner, tlno;
        unsigned char tk[8];
        if ((rc = stitch_lookup_id(s, txn, key, k.mv_size, &owner, &tlno))) return rc;
        sl_be64_put(tk, tlno);
        MDB_val tkv = {8, tk};
        if ((rc = stitch_foreach_dup(txn, s->tl, tk, 8, erase_event, e))) return rc;
        if ((rc = mdb_del(txn, s->tl, &tkv, NULL)) && rc != MDB_NOTFOUND) return rc;
        if ((rc = mdb_del(txn, s->ids, &k, NULL)) && rc != MDB_NOTFOUND) return rc;
        e->identities++;
    }
    /* The journal entries name the person's identifiers: they go too. */
    if ((rc = stitch_foreach_dup(txn, s->pjournal, &p->id, 8, erase_journal_entry, e))) return rc;
    MDB_val k = {8, &p->id};
    if ((rc = mdb_del(txn, s->pjournal, &k, NULL)) && rc != MDB_NOTFOUND) return rc;
    if ((rc = mdb_del(txn, s->prefusals, &k, NULL)) && rc != MDB_NOTFOUND) return rc;
    if (p->id == s->ev_id) s->ev_valid = 0; /* (attach.c's copy) */
    if ((rc = mdb_del(txn, s->persons, &k, NULL))) return rc;
    int64_t was;
    int had;
    if ((rc = stitch_active_get(s, txn, p, &was, &had, 1))) return rc;
    return consent_forget(txn, s->consent, s->ccache, p->id);
}

/* Tells the listeners that persons[0..n) (sorted) are forgotten: erased is
 * what consumers may hear (an erasure), or NULL (retention). */
int stitch_tell_forgotten(sl_stitch_t *s, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                          uint64_t *n_removed)
{
    int rc = 0;
    for (size_t i = 0; i < s->n_listeners && rc == 0; i++) {
        uint64_t k = 0;
        if (s->listeners[i].forgotten) rc = s->listeners[i].forgotten(s->listeners[i].arg, txn, persons, n, erased, &k);
        *n_removed += k;
    }
    return rc;
}

/* Sorts v[0..*n) and drops repeats. */
void stitch_sort_unique(uint64_t *v, size_t *n)
{
    if (*n == 0) return;
    qsort(v, *n, sizeof(*v), sl_u64_cmp);
    size_t w = 1;
    for (size_t i = 1; i < *n; i++)
        if (v[i] != v[w - 1]) v[w++] = v[i];
    *n = w;
}

/* The refusal keys of persons[0..n) (smeta: "refused\x1fp_N\x1f..." name
 * their identifiers, "refusal\x1fp_N\x1f..." their coalesced entries) go
 * with them. */
static int forget_refusal_keys(sl_stitch_t *s, MDB_txn *txn, const uint64_t *persons, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        for (int j = 0; j < 2 && rc == 0; j++) {
            char prefix[64];
            int len = snprintf(prefix, sizeof(prefix), "%s%cp_%llu%c", j ? "refusal" : "refused", KEY_SEP,
                               (unsigned long long)persons[i], KEY_SEP);
            rc = stitch_meta_del_prefix(s, txn, prefix, (size_t)len);
        }
    }
    return rc;
}

static int erase_run(MDB_txn *txn, void *arg)
{
    sl_stitch_erase_t *e = arg;
    sl_stitch_t *s = e->stitch;
    e->found = 0;
    e->n_seqs = 0;
    e->events = e->identities = e->journal = e->triggers = 0;
    person_t p = {0};
    int rc = stitch_find_person(s, txn, e->kind, e->id, &p);
    if (rc == SL_ENOTFOUND) {
        rc = 0;
        goto out;
    }
    if (rc) goto out;
    e->found = 1;
    stitch_person_id_str(p.id, e->person);
    e->n_merged = 0;
    if ((rc = stitch_forget_person(s, txn, &p, e))) goto out;
    e->events = e->n_seqs;
    stitch_sort_unique(e->merged, &e->n_merged);
    if ((rc = erased_json(s, &p, e->merged, e->n_merged, &s->tmp)) ||
        (rc = stitch_u64_append(&e->merged, &e->n_merged, &e->cap_merged, &p.id, 1)))
        goto out;
    stitch_sort_unique(e->merged, &e->n_merged); /* the person and those merged into it */
    if ((rc = forget_refusal_keys(s, txn, e->merged, e->n_merged))) goto out;
    if ((rc = stitch_tell_forgotten(s, txn, e->merged, e->n_merged, s->tmp.data, &e->triggers))) goto out;
    if (e->n_seqs == 0) goto out;
    uint64_t key;
    if ((rc = stitch_counter_next(s, txn, "next_erasure", &key))) goto out;
    MDB_val ek = {8, &key}, ev = {e->n_seqs * 8, e->seqs};
    rc = mdb_put(txn, s->erasing, &ek, &ev, 0);
out:
    stitch_person_free(&p);
    return rc;
}

/* On the stage's thread, once the erasure is on disk: the events go from the log. */
static int erase_after(void *arg)
{
    sl_stitch_erase_t *e = arg;
    return sl_store_erase_events(e->stitch->store, e->seqs, e->n_seqs);
}

void sl_stitch_erase_init(sl_stitch_erase_t *e, sl_stitch_t *s, const char *kind, const char *id,
                          void (*done)(sl_stage_job_t *job))
{
    memset(e, 0, sizeof(*e));
    e->stitch = s;
    e->kind = kind;
    e->id = id;
    e->job = (sl_stage_job_t){.run = erase_run, .after_commit = erase_after, .done = done, .arg = e};
}

void sl_stitch_erase_free(sl_stitch_erase_t *e)
{
    free(e->seqs);
    free(e->merged);
    e->merged = NULL;
    e->seqs = NULL;
}

/* At open: erasures whose log deletion a crash may have cut short are done
 * again (deleting is idempotent), then forgotten. */
int stitch_finish_erasures(sl_stitch_t *s, MDB_txn *txn)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, s->erasing, &cur);
    if (rc) return rc;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
        size_t n = v.mv_size / 8;
        uint64_t *seqs = malloc(n ? n * 8 : 8);
        if (seqs == NULL) {
            rc = SL_ENOMEM;
            break;
        }
        memcpy(seqs, v.mv_data, n * 8);
        rc = sl_store_erase_events(s->store, seqs, n);
        free(seqs);
        if (rc || (rc = mdb_cursor_del(cur, 0))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}
