/* verify.c - sillage verify for the identity graph: every index, record
 * and journal reference read back against the others and the log
 * (sl_stitch_verify(), sl_stitch.h). Private to stitcher/ (stitch_int.h). */
#include "stitch_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- verification (sillage verify) ---- */

typedef struct {
    sl_stitch_t *s;
    const sl_verify_opts_t *o;
    MDB_txn *txn;
    FILE *out;
    sl_verify_report_t *rep;
    uint64_t *ids;       /* messageId hashes, sorted after the events pass */
    size_t n_ids, cap_ids;
    struct dup_s { uint64_t key; int64_t ms; } *keys; /* (source, messageId) and receivedAt, per event */
    uint8_t *seen;       /* per event seq: indexed in tl */
    uint64_t max_seq;
    sl_arena_t arena;
    uint64_t *pending;   /* events an erasure or retention took, waiting to leave the log (sorted) */
    size_t n_pending;
} verify_t;

/* The event numbers held in `erasing` (a commit on disk, the log deletion
 * not yet done: verify runs between the two, or after a crash there). */
static int load_pending(verify_t *v)
{
    MDB_cursor *cur;
    MDB_val k, d;
    int rc = mdb_cursor_open(v->txn, v->s->erasing, &cur);
    if (rc) return rc;
    size_t cap = 0;
    for (rc = mdb_cursor_get(cur, &k, &d, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT))
        if (d.mv_size >= 8 && (rc = stitch_u64_append(&v->pending, &v->n_pending, &cap, d.mv_data, d.mv_size / 8))) break;
    mdb_cursor_close(cur);
    if (v->n_pending) qsort(v->pending, v->n_pending, 8, sl_u64_cmp);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static uint64_t mid_hash(const char *id) { return sl_hash128(id, strlen(id), 99).lo; }

static int verify_event(const char *json, size_t len, uint64_t seq, void *arg)
{
    verify_t *v = arg;
    if (v->n_pending && bsearch(&seq, v->pending, v->n_pending, 8, sl_u64_cmp)) return 0; /* leaving */
    v->rep->events++;
    cJSON *doc = cJSON_ParseWithLength(json, len);
    if (doc == NULL) {
        fprintf(v->out, "events: %llu is not valid JSON\n", (unsigned long long)seq);
        v->rep->problems++;
        return 0;
    }
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(doc, "messageId");
    if (cJSON_IsString(mid)) {
        if (v->n_ids == v->cap_ids) {
            size_t cap = v->cap_ids ? v->cap_ids * 2 : 4096;
            uint64_t *n = realloc(v->ids, cap * sizeof(*n));
            if (n) v->ids = n;
            struct dup_s *nk = n ? realloc(v->keys, cap * sizeof(*nk)) : NULL;
            if (nk) v->keys = nk;
            if (n == NULL || nk == NULL) {
                cJSON_Delete(doc);
                return SL_ENOMEM;
            }
            v->cap_ids = cap;
        }
        /* the dedupe key is the source's and the messageId together */
        const cJSON *sil = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "context"), "sillage");
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(sil, "source");
        const cJSON *rcv = cJSON_GetObjectItemCaseSensitive(doc, "receivedAt");
        int64_t ms = 0;
        if (cJSON_IsString(rcv)) sl_time_parse_iso(rcv->valuestring, strlen(rcv->valuestring), &ms);
        sl_hash128_t kh = sl_hash128(mid->valuestring, strlen(mid->valuestring), 99);
        if (cJSON_IsString(src)) kh.lo ^= sl_hash128(src->valuestring, strlen(src->valuestring), 7).lo;
        v->keys[v->n_ids] = (struct dup_s){kh.lo, ms};
        v->ids[v->n_ids++] = mid_hash(mid->valuestring);
    }
    /* only what the stage applied is indexed; an event set aside is not */
    if (seq > v->o->applied || (v->o->skip && v->o->skip(seq, v->o->skip_arg))) {
        cJSON_Delete(doc);
        if (seq > v->max_seq) v->max_seq = seq;
        return 0;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(doc, "type");
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(doc, "userId");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(doc, "anonymousId");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(doc, "previousId");
    sl_arena_reset(&v->arena);
#define CLEAN(x) (cJSON_IsString(x) ? sl_stitch_clean_id(v->s, (x)->valuestring, &v->arena, 0) : NULL)
    int is_alias = cJSON_IsString(type) && strcmp(type->valuestring, "alias") == 0;
    int indexed = is_alias ? CLEAN(u) && CLEAN(p) : CLEAN(u) || CLEAN(a);
#undef CLEAN
    /* an identify with no id but an identity trait is indexed under the trait */
    sl_jval_t traits = {NULL, 0};
    if (!indexed && cJSON_IsString(type) && strcmp(type->valuestring, "identify") == 0) {
        sl_jindex_t top, context;
        sl_jroot_index(json, len, &top, "context", &context);
        traits = stitch_identify_traits(&top, &context);
    }
    for (size_t i = 0; traits.n && !indexed && i < v->s->cfg->n_identity_traits && i < SL_STITCH_MAX_TRAITS; i++)
        indexed = sl_stitch_clean_id(v->s, stitch_jstr(traits, v->s->cfg->identity_traits[i], &v->arena), &v->arena, 1) != NULL;
    cJSON_Delete(doc);
    if (indexed) v->rep->expected_indexed++;
    if (seq > v->max_seq) v->max_seq = seq;
    return 0;
}

static int cmp_dup(const void *a, const void *b)
{
    const struct dup_s *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->ms < y->ms ? -1 : x->ms > y->ms;
}

static int has_message(const char *id, void *arg)
{
    verify_t *v = arg;
    uint64_t h = mid_hash(id);
    return v->n_ids && bsearch(&h, v->ids, v->n_ids, sizeof(h), sl_u64_cmp) != NULL;
}

static void problem(verify_t *v, const char *what, const void *key, size_t klen)
{
    fprintf(v->out, "%s: %.*s\n", what, (int)(klen > 200 ? 200 : klen), (const char *)key);
    v->rep->problems++;
}

int sl_stitch_verify(sl_stitch_t *s, MDB_txn *txn, const sl_verify_opts_t *o, FILE *out, sl_verify_report_t *rep)
{
    verify_t v = {.s = s, .o = o, .txn = txn, .out = out, .rep = rep};
    memset(rep, 0, sizeof(*rep));
    sl_store_t *st = s->store;
    MDB_txn *log_txn = o->log_txn;
    int rc = load_pending(&v);
    if (rc == 0) rc = sl_store_foreach_event_txn(st, log_txn, verify_event, &v);
    if (rc) goto out;
    /* a log with no event left (all erased): nothing to sort, and qsort(NULL, 0) is undefined */
    if (v.n_ids) qsort(v.ids, v.n_ids, sizeof(*v.ids), sl_u64_cmp);
    /* A repeat within a minute should have been deduplicated; a later one
     * may be past the dedupe window (or past limits.max_dedupe_ids) and is
     * stored again by design. */
    if (v.n_ids) qsort(v.keys, v.n_ids, sizeof(*v.keys), cmp_dup);
    uint64_t later = 0;
    for (size_t i = 1; i < v.n_ids; i++)
        if (v.keys[i].key == v.keys[i - 1].key) {
            if (v.keys[i].ms - v.keys[i - 1].ms < 60000) {
                fprintf(out, "events: a messageId of one source is stored twice within a minute\n");
                rep->problems++;
            } else {
                later++;
            }
        }
    if (later)
        fprintf(out, "events: %llu messageIds repeated after more than a minute (past the dedupe window): "
                     "not a problem\n", (unsigned long long)later);
    v.seen = calloc(v.max_seq + 1, 1);
    if (v.seen == NULL) {
        rc = SL_ENOMEM;
        goto out;
    }

    /* the timeline numbers the identifiers own */
    MDB_cursor *cur;
    MDB_val k, val;
    uint64_t *tls = NULL;
    size_t n_tls = 0, cap_tls = 0;
    if ((rc = mdb_cursor_open(txn, s->ids, &cur))) goto out;
    for (rc = mdb_cursor_get(cur, &k, &val, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
        if (val.mv_size != 16) continue; /* reported below */
        if (n_tls == cap_tls) {
            cap_tls = cap_tls ? cap_tls * 2 : 4096;
            uint64_t *nt = realloc(tls, cap_tls * sizeof(*nt));
            if (nt == NULL) {
                rc = SL_ENOMEM;
                break;
            }
            tls = nt;
        }
        memcpy(&tls[n_tls++], (const char *)val.mv_data + 8, 8);
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) {
        free(tls);
        goto out;
    }
    if (n_tls) qsort(tls, n_tls, sizeof(*tls), sl_u64_cmp); /* tls may be NULL when empty */

    /* tl: every entry is an existing event, indexed once, under a timeline an identifier owns */
    if ((rc = mdb_cursor_open(txn, s->tl, &cur))) {
        free(tls);
        goto out;
    }
    for (rc = mdb_cursor_get(cur, &k, &val, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
        if (val.mv_size != 16) {
            fprintf(out, "tl: a bad entry\n");
            rep->problems++;
            continue;
        }
        uint64_t seq = stitch_tl_seq(val.mv_data);
        MDB_val ev;
        rep->indexed++;
        if (seq > v.max_seq || sl_store_event_get(st, log_txn, seq, &ev) != 0) {
            fprintf(out, "tl: event %llu is not stored\n", (unsigned long long)seq);
            rep->problems++;
        } else if (v.seen[seq]++) {
            fprintf(out, "tl: event %llu is indexed twice\n", (unsigned long long)seq);
            rep->problems++;
        }
        uint64_t tlno = k.mv_size == 8 ? sl_be64_get(k.mv_data) : 0;
        if (n_tls == 0 || bsearch(&tlno, tls, n_tls, sizeof(tlno), sl_u64_cmp) == NULL) {
            fprintf(out, "tl: timeline %llu belongs to no identifier\n", (unsigned long long)tlno);
            rep->problems++;
        }
    }
    mdb_cursor_close(cur);
    free(tls);
    if (rc != MDB_NOTFOUND) goto out;
    if (rep->indexed != rep->expected_indexed) {
        fprintf(out, "tl: %llu events indexed, %llu stored events have an identifier\n",
                (unsigned long long)rep->indexed, (unsigned long long)rep->expected_indexed);
        rep->problems++;
    }

    /* ids -> persons, and persons -> ids */
    if ((rc = mdb_cursor_open(txn, s->ids, &cur))) goto out;
    person_t p = {0};
    for (rc = mdb_cursor_get(cur, &k, &val, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
        rep->identifiers++;
        uint64_t pid;
        if (val.mv_size != 16) {
            problem(&v, "ids: bad value for", k.mv_data, k.mv_size);
            continue;
        }
        memcpy(&pid, val.mv_data, 8);
        if (stitch_person_load(s, txn, pid, &p) != 0) {
            problem(&v, "ids: identifier of a missing person", k.mv_data, k.mv_size);
            continue;
        }
        int listed = 0;
        for (size_t off = 0; off < p.ids.len && !listed; off += strlen(p.ids.data + off) + 1)
            listed = strlen(p.ids.data + off) == k.mv_size && memcmp(p.ids.data + off, k.mv_data, k.mv_size) == 0;
        if (!listed) problem(&v, "ids: the person does not list", k.mv_data, k.mv_size);
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) goto out_p;
    uint64_t counted = 0;
    if ((rc = mdb_cursor_open(txn, s->persons, &cur))) goto out_p;
    for (rc = mdb_cursor_get(cur, &k, &val, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
        uint64_t pid;
        memcpy(&pid, k.mv_data, 8);
        rep->persons++;
        if (stitch_person_load(s, txn, pid, &p) != 0) {
            fprintf(out, "persons: p_%llu is unreadable\n", (unsigned long long)pid);
            rep->problems++;
            continue;
        }
        uint64_t n;
        int64_t first, last;
        if (stitch_person_stats(s, txn, &p, &n, NULL, &first, &last) == 0) counted += n;
        for (size_t off = 0; off < p.ids.len; off += strlen(p.ids.data + off) + 1) {
            sl_buf_t key = {p.ids.data + off, strlen(p.ids.data + off), 0};
            uint64_t owner;
            if (stitch_lookup(s, txn, &key, &owner, NULL) || owner != pid) problem(&v, "persons: an identifier points elsewhere", key.data, key.len);
        }
        /* where the record says its entry in active is, it is */
        if ((p.h.flags & (PF_ACTIVE_HERE | PF_ACTIVE)) == (PF_ACTIVE_HERE | PF_ACTIVE) && s->active) {
            unsigned char ak[16];
            stitch_active_key(ak, p.h.active_ms, pid);
            MDB_val av = {16, ak}, nothing;
            if (mdb_get(txn, s->active, &av, &nothing) != 0) {
                fprintf(out, "persons: p_%llu is missing from the recent-activity index\n", (unsigned long long)pid);
                rep->problems++;
            }
        }
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) goto out_p;
    if (counted != rep->indexed) {
        fprintf(out, "persons: counters say %llu events, the timelines hold %llu\n", (unsigned long long)counted,
                (unsigned long long)rep->indexed);
        rep->problems++;
    }
    /* consent records belong to persons */
    if (s->consent) {
        if ((rc = mdb_cursor_open(txn, s->consent, &cur))) goto out_p;
        for (rc = mdb_cursor_get(cur, &k, &val, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
            MDB_val pv;
            uint64_t pid = 0;
            memcpy(&pid, k.mv_data, k.mv_size < 8 ? k.mv_size : 8);
            if (!consent_check_record(val.mv_data, val.mv_size)) {
                fprintf(out, "consent: the record of p_%llu is unreadable\n", (unsigned long long)pid);
                rep->problems++;
            }
            if (k.mv_size == 8 && mdb_get(txn, s->persons, &k, &pv) == 0) continue;
            fprintf(out, "consent: a record of p_%llu, no such person\n", (unsigned long long)pid);
            rep->problems++;
        }
        mdb_cursor_close(cur);
        if (rc != MDB_NOTFOUND) goto out_p;
    }
    rc = o->also ? o->also(o->also_arg, txn, has_message, &v, out, &rep->triggers, &rep->problems) : 0;
out_p:
    stitch_person_free(&p);
    if (rc == MDB_NOTFOUND) rc = 0;
out:
    free(v.ids);
    free(v.keys);
    free(v.pending);
    free(v.seen);
    sl_arena_free(&v.arena);
    return rc;
}
