/* retention.c - the stitcher's retention pass: events of a source past its
 * retention, and anonymous persons past anonymous_retention, leave the log
 * and the timeline (docs/PRIVACY.md). Private to stitcher/ (stitch_int.h). */
#include "stitch_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- retention ---- */

int64_t sl_stitch_prune_interval_ms(const sl_stitch_t *s)
{
    return sl_config_retention_pass_ms(s->cfg);
}

typedef struct {
    sl_stitch_prune_t *p;
    MDB_txn *txn;
    int64_t now;
    uint64_t next;    /* the cursor: the next event to examine */
    int rc;
} prune_ctx_t;

/* 1 when the event's person has an identifier other than an anonymous id. */
static int event_identified(sl_stitch_t *s, MDB_txn *txn, const sl_stitch_msg_t *m, int *identified)
{
    *identified = m->user_id != NULL || (m->anonymous_id == NULL && stitch_first_trait(s, m) >= 0);
    if (*identified || m->anonymous_id == NULL) return 0;
    uint64_t pid, tl;
    int rc = stitch_make_key(&s->k2, "anonymous_id", m->anonymous_id);
    if (rc || (rc = stitch_lookup(s, txn, &s->k2, &pid, &tl)) || pid == 0) return rc;
    if ((rc = stitch_person_load(s, txn, pid, &s->p1))) return rc == MDB_NOTFOUND ? 0 : rc;
    *identified = stitch_person_identified(&s->p1);
    return 0;
}

/* The person and timeline number of the identifier stitch_event indexed
 * the event (m) under (*pid 0: none, the event was never indexed). */
static int event_index(sl_stitch_t *s, MDB_txn *txn, const sl_stitch_msg_t *m, uint64_t *pid, uint64_t *tlno)
{
    *pid = 0;
    const char *kind = m->user_id ? "user_id" : "anonymous_id", *id = m->user_id ? m->user_id : m->anonymous_id;
    if (m->type == SL_STITCH_ALIAS && (m->user_id == NULL || m->previous_id == NULL)) return 0; /* never indexed */
    int ft = id ? -1 : stitch_first_trait(s, m);
    if (ft >= 0) { /* only an identity trait named someone */
        kind = s->cfg->identity_traits[ft];
        id = m->trait_ids[ft];
    }
    if (id == NULL) return 0;
    int rc = stitch_make_key(&s->k1, kind, id);
    return rc ? rc : stitch_lookup(s, txn, &s->k1, pid, tlno);
}

/* Removes the timeline entry of the event (seq, m), where stitch_event put
 * it (pid, tlno: event_index()'s). */
static int unindex_event(sl_stitch_t *s, MDB_txn *txn, const sl_stitch_msg_t *m, uint64_t seq, uint64_t pid,
                         uint64_t tlno)
{
    if (pid == 0) return 0;
    int rc;
    unsigned char tk[8], tv[16];
    sl_be64_put(tk, tlno);
    stitch_tl_value(tv, m->ts_ms, seq, m->type == SL_STITCH_PAGE || m->type == SL_STITCH_SCREEN);
    MDB_val k = {8, tk}, v = {16, tv};
    rc = mdb_del(txn, s->tl, &k, &v);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Persons never identified whose every event the run pruned go whole, as an
 * erasure would take them, telling no consumer: nothing is left to keep. */
static int prune_persons(sl_stitch_t *s, MDB_txn *txn, sl_stitch_prune_t *p)
{
    person_t q = {0};
    sl_stitch_erase_t e = {.stitch = s};
    int rc = 0;
    size_t gone = 0; /* p->persons[0..gone): the ones removed */
    stitch_sort_unique(p->persons, &p->n_persons);
    for (size_t i = 0; i < p->n_persons && rc == 0; i++) {
        uint64_t events;
        int64_t first, last;
        if ((rc = stitch_person_load(s, txn, p->persons[i], &q)) == MDB_NOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc || stitch_person_identified(&q) || (rc = stitch_person_stats(s, txn, &q, &events, NULL, &first, &last)) || events)
            continue;
        if ((rc = stitch_forget_person(s, txn, &q, &e)) == 0) p->persons[gone++] = q.id;
    }
    /* the listeners hear of them all at once: one pass over the feed */
    uint64_t n_removed = 0;
    if (rc == 0 && gone) rc = stitch_tell_forgotten(s, txn, p->persons, gone, NULL, &n_removed);
    p->persons_gone = gone;
    stitch_person_free(&q);
    free(e.seqs);
    free(e.merged);
    return rc;
}

static int prune_event(const char *json, size_t len, uint64_t seq, void *arg)
{
    prune_ctx_t *c = arg;
    sl_stitch_prune_t *p = c->p;
    sl_stitch_t *s = p->stitch;
    if (seq > p->upto) return 1; /* not applied yet when the run was asked for */
    if (p->examined == (p->limit ? p->limit : 2000)) {
        p->more = 1;
        return 1;
    }
    p->examined++;
    c->next = seq + 1;
    sl_jindex_t top, context;
    if (sl_jtype(sl_jroot_index(json, len, &top, "context", &context)) != SL_JOBJ)
        return 0; /* not ours to judge: verify reports it */
    sl_stitch_msg_t m;
    int rc = stitch_read_msg(s, &top, &context, seq, &m), prune = 0;
    const sl_source_t *src = m.source;
    int64_t age = c->now - m.ts_ms;
    int src_due = src && src->retention_ms && age > src->retention_ms;
    int anon_due = s->cfg->anonymous_retention_ms && age > s->cfg->anonymous_retention_ms;
    int states = m.consent.states || m.consent.unsub, identified = 0;
    if (rc == 0 && (anon_due || (src_due && states))) rc = event_identified(s, c->txn, &m, &identified);
    prune = src_due || (anon_due && !identified);
    uint64_t pid = 0, tlno = 0;
    if (rc == 0 && prune) rc = event_index(s, c->txn, &m, &pid, &tlno);
    for (size_t i = 0; rc == 0 && prune && m.message_id && i < s->n_listeners; i++) {
        /* a trigger still in the feed names it: kept until the trigger leaves */
        int held = 0;
        if (s->listeners[i].holds && (rc = s->listeners[i].holds(s->listeners[i].arg, c->txn, m.message_id, &held)) == 0 &&
            held)
            prune = 0, p->held++;
    }
    if (rc == 0 && prune && pid && identified && states) {
        /* an identified person's current consent or refusal keeps its proof:
         * the event that set it */
        int keep;
        if ((rc = consent_keeps(c->txn, s->consent, pid, seq, &keep)) == 0 && keep) prune = 0;
    }
    if (rc == 0 && prune && (rc = unindex_event(s, c->txn, &m, seq, pid, tlno)) == 0) {
        rc = stitch_u64_append(&p->seqs, &p->n_seqs, &p->cap_seqs, &seq, 1);
        /* an anonymous person may be left with nothing: looked at after the run */
        if (rc == 0 && pid && m.user_id == NULL && (p->n_persons == 0 || p->persons[p->n_persons - 1] != pid))
            rc = stitch_u64_append(&p->persons, &p->n_persons, &p->cap_persons, &pid, 1);
    }
    stitch_msg_free(&m);
    c->rc = rc;
    return rc ? 1 : 0;
}

static int prune_read(MDB_txn *log_txn, void *arg)
{
    prune_ctx_t *c = arg;
    int rc = sl_store_foreach_event_from(c->p->stitch->store, log_txn, c->next, prune_event, c);
    return rc < 0 || rc > 1 ? rc : 0;
}

static int meta_u64(sl_stitch_t *s, MDB_txn *txn, const char *key, uint64_t *v, int put)
{
    MDB_val k = {strlen(key), (void *)key}, d = {8, v};
    if (put) return mdb_put(txn, s->smeta, &k, &d, 0);
    int rc = mdb_get(txn, s->smeta, &k, &d);
    if (rc == 0 && d.mv_size == 8) memcpy(v, d.mv_data, 8);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int prune_run(MDB_txn *txn, void *arg)
{
    sl_stitch_prune_t *p = arg;
    sl_stitch_t *s = p->stitch;
    p->examined = p->pruned = p->persons_gone = p->held = 0;
    p->n_seqs = p->n_persons = 0;
    p->more = 0;
    p->erasing_key = 0;
    int rc;
    if (p->cleared_key) { /* the previous run's events left the log: its record goes */
        MDB_val k = {8, &p->cleared_key};
        if ((rc = mdb_del(txn, s->erasing, &k, NULL)) && rc != MDB_NOTFOUND) return rc;
    }
    prune_ctx_t c = {.p = p, .txn = txn, .now = sl_now_ms(), .next = 1};
    uint64_t pass_ms = 0, at_end = 0;
    if ((rc = meta_u64(s, txn, "prune_next", &c.next, 0)) || (rc = meta_u64(s, txn, "prune_pass", &pass_ms, 0)) ||
        (rc = meta_u64(s, txn, "prune_at_end", &at_end, 0)))
        return rc;
    if (pass_ms == 0 || (at_end && c.now - (int64_t)pass_ms >= sl_stitch_prune_interval_ms(s))) {
        c.next = 1; /* a new pass: events stored since the last one began have aged */
        pass_ms = (uint64_t)c.now;
        s->pend.prune_passes++;
    }
    if ((rc = sl_store_read(s->store, prune_read, &c)) || (rc = c.rc)) return rc;
    at_end = !p->more;
    if ((rc = meta_u64(s, txn, "prune_next", &c.next, 1)) || (rc = meta_u64(s, txn, "prune_pass", &pass_ms, 1)) ||
        (rc = meta_u64(s, txn, "prune_at_end", &at_end, 1)))
        return rc;
    p->pruned = p->n_seqs;
    if ((rc = prune_persons(s, txn, p))) return rc;
    if (p->n_seqs == 0) return 0;
    if ((rc = stitch_counter_next(s, txn, "next_erasure", &p->erasing_key))) return rc;
    MDB_val ek = {8, &p->erasing_key}, ev = {p->n_seqs * 8, p->seqs};
    return mdb_put(txn, s->erasing, &ek, &ev, 0);
}

/* Once the run is on disk: its events go from the log. */
static int prune_after(void *arg)
{
    sl_stitch_prune_t *p = arg;
    atomic_fetch_add(&p->stitch->examined, p->examined);
    if (p->n_seqs == 0) return 0;
    int rc = sl_store_erase_events(p->stitch->store, p->seqs, p->n_seqs);
    if (rc == 0) {
        p->cleared_key = p->erasing_key;
        atomic_fetch_add(&p->stitch->pruned, p->n_seqs);
        atomic_fetch_add(&p->stitch->persons_expired, p->persons_gone);
    }
    return rc;
}

void sl_stitch_prune_init(sl_stitch_prune_t *p, sl_stitch_t *s, void (*done)(sl_stage_job_t *job))
{
    memset(p, 0, sizeof(*p));
    p->stitch = s;
    p->job = (sl_stage_job_t){.run = prune_run, .after_commit = prune_after, .done = done, .arg = p};
}

void sl_stitch_prune_free(sl_stitch_prune_t *p)
{
    free(p->seqs);
    free(p->persons);
    p->seqs = p->persons = NULL;
}
