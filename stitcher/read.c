/* read.c - the stitcher's reads for the API and the rules: a profile, the
 * stitched timeline, the merges that explain a person, persons by recent
 * activity, a person's view for the conditions and payloads (sl_stitch.h).
 * Private to stitcher/ (stitch_int.h). */
#include "stitch_int.h"

#include <stdlib.h>
#include <string.h>


/* {"id":"p_N","user_id":... : the start of a profile and of a trigger's "profile". */
static void append_person_head(sl_buf_t *out, const person_t *p)
{
    char pid[32];
    stitch_person_id_str(p->id, pid);
    sl_buf_printf(out, "{\"id\":\"%s\",\"user_id\":", pid);
    const char *u = stitch_person_user_id(p);
    if (u) sl_buf_append_json_str(out, u, strlen(u));
    else sl_buf_appends(out, "null");
}

/* Appends the person's traits as a JSON object ({} when none). */
static void append_traits(sl_buf_t *out, const person_t *p)
{
    cJSON *doc = p->traits.len ? cJSON_ParseWithLength(p->traits.data, p->traits.len) : NULL;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(doc, "t");
    char *txt = cJSON_IsObject(t) ? cJSON_PrintUnformatted(t) : NULL;
    sl_buf_appends(out, txt ? txt : "{}");
    cJSON_free(txt);
    cJSON_Delete(doc);
}

/* {"id","user_id","email" (the identifier the stitcher keeps: trimmed, lower-cased) -- unterminated */
static void append_slim(sl_buf_t *out, const person_t *p)
{
    append_person_head(out, p);
    static const char em[] = "email\x1f";
    const char *email = NULL;
    for (size_t off = 0; off < p->ids.len && !email; off += strlen(p->ids.data + off) + 1)
        if (strncmp(p->ids.data + off, em, sizeof(em) - 1) == 0) email = p->ids.data + off + sizeof(em) - 1;
    sl_buf_appends(out, ",\"email\":");
    if (email) sl_buf_append_json_str(out, email, strlen(email));
    else sl_buf_appends(out, "null");
}

int sl_stitch_person_payload(sl_stitch_t *s, MDB_txn *txn, uint64_t id, sl_buf_t *out, int *identified,
                             int64_t *last_ms)
{
    person_t *p = &s->p3;
    int rc = stitch_person_load(s, txn, id, p);
    if (rc) return rc == MDB_NOTFOUND ? SL_ENOTFOUND : rc;
    if (identified) *identified = stitch_person_identified(p);
    if (last_ms) {
        uint64_t n;
        int64_t first;
        if ((rc = stitch_person_stats(s, txn, p, &n, NULL, &first, last_ms))) return rc;
    }
    if (out == NULL) return 0;
    append_slim(out, p);
    sl_buf_appends(out, ",\"traits\":");
    append_traits(out, p);
    sl_buf_appends(out, "}");
    return out->data ? 0 : SL_ENOMEM;
}

int sl_stitch_person_slim(sl_stitch_t *s, MDB_txn *txn, uint64_t id, sl_buf_t *out, int *identified)
{
    person_t p = {0}; /* (its own: readers call it too) */
    int rc = stitch_person_load(s, txn, id, &p);
    if (rc == 0) {
        if (identified) *identified = stitch_person_identified(&p);
        append_slim(out, &p);
        sl_buf_appends(out, "}");
        rc = out->data ? 0 : SL_ENOMEM;
    }
    stitch_person_free(&p);
    return rc == MDB_NOTFOUND ? SL_ENOTFOUND : rc;
}


int sl_stitch_person_view(sl_stitch_t *s, MDB_txn *txn, uint64_t id, sl_buf_t *out)
{
    person_t *p = &s->p3;
    int rc = stitch_person_load(s, txn, id, p);
    if (rc) return rc == MDB_NOTFOUND ? SL_ENOTFOUND : rc;
    uint64_t n;
    int64_t first, last;
    if ((rc = stitch_person_stats(s, txn, p, &n, NULL, &first, &last))) return rc;
    sl_buf_appends(out, "{\"traits\":");
    append_traits(out, p);
    sl_buf_printf(out, ",\"identified\":%s,\"first_seen\":", stitch_person_identified(p) ? "true" : "false");
    sl_buf_append_iso(out, first);
    sl_buf_appends(out, ",\"last_seen\":");
    sl_buf_append_iso(out, last);
    rc = s->consent ? consent_view_json(out, txn, s->consent, id) : sl_buf_appends(out, ",\"consent\":{},\"unsubscribed\":false");
    for (size_t i = 0; rc == 0 && i < s->n_listeners; i++)
        if (s->listeners[i].view_extra) rc = s->listeners[i].view_extra(s->listeners[i].arg, txn, id, out);
    sl_buf_appends(out, "}");
    return rc ? rc : out->data ? 0 : SL_ENOMEM;
}

void sl_stitch_get_stats(const sl_stitch_t *s, sl_stitch_stats_t *out)
{
    out->merges = atomic_load(&s->merges);
    out->refusals = atomic_load(&s->refusals);
    out->refusals_dropped = atomic_load(&s->refusals_dropped);
    out->refusal_refs_read = atomic_load(&s->refusal_refs_read);
    out->persons_created = atomic_load(&s->created);
    out->identifies = atomic_load(&s->identifies);
    out->identify_ns = atomic_load(&s->identify_ns);
    out->traits_dropped = atomic_load(&s->traits_dropped);
    out->pruned = atomic_load(&s->pruned);
    out->examined = atomic_load(&s->examined);
    out->prune_passes = atomic_load(&s->prune_passes);
    out->persons_expired = atomic_load(&s->persons_expired);
}

int sl_stitch_consent_check(sl_stitch_t *s, MDB_txn *txn, uint64_t person, const char *category, int *ok,
                            const char **why)
{
    if (s->consent == 0) { /* a store read before consent existed: nobody told anything */
        *ok = category == NULL;
        *why = "consent";
        return 0;
    }
    return consent_allows(txn, s->consent, person, category, ok, why);
}

const char *sl_stitch_clean_id(const sl_stitch_t *s, const char *v, sl_arena_t *arena, int is_trait)
{
    if (v == NULL) return NULL;
    size_t n = strlen(v);
    if (sl_ident_is_junk(v, n, s->cfg->junk_ids, s->cfg->n_junk_ids)) return NULL;
    if (memchr(v, KEY_SEP, n)) return NULL; /* cannot be keyed */
    /* an identifier is keyed as "<kind>\x1f<value>", which LMDB bounds (511
     * bytes): a longer value is no identifier (the message is stored all the
     * same; a trait keeps its value, it just identifies no one) */
    if (n > SL_IDENT_MAX_BYTES) return NULL;
    if (!is_trait) return sl_arena_strndup(arena, v, n);
    n = sl_ident_trim(&v, n);
    const char *low = sl_ident_lower(v, n, arena); /* Élodie@ and élodie@ are one address */
    return low && strlen(low) <= SL_IDENT_MAX_BYTES ? low : NULL;
}

int sl_stitch_kind_ok(const sl_stitch_t *s, const char *kind)
{
    if (strcmp(kind, "user_id") == 0 || strcmp(kind, "anonymous_id") == 0) return 1;
    for (size_t i = 0; i < s->cfg->n_identity_traits; i++)
        if (strcmp(kind, s->cfg->identity_traits[i]) == 0) return 1;
    return 0;
}

/* Finds and loads the person that owns kind:id (trait values normalised). */
int stitch_find_person(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, person_t *p)
{
    sl_buf_t key = {0};
    sl_arena_t a;
    sl_arena_init(&a);
    int is_trait = strcmp(kind, "user_id") != 0 && strcmp(kind, "anonymous_id") != 0;
    const char *v = is_trait ? sl_stitch_clean_id(s, id, &a, 1) : id;
    uint64_t pid = 0;
    int rc = v ? stitch_make_key(&key, kind, v) : SL_ENOTFOUND;
    if (rc == 0) rc = stitch_lookup(s, txn, &key, &pid, NULL);
    if (rc == 0 && pid == 0) rc = SL_ENOTFOUND;
    if (rc == 0) rc = stitch_person_load(s, txn, pid, p);
    if (rc == MDB_NOTFOUND) rc = SL_ENOTFOUND;
    sl_buf_free(&key);
    sl_arena_free(&a);
    return rc;
}

int sl_stitch_event_person(sl_stitch_t *s, MDB_txn *txn, const sl_jindex_t *top, const sl_jindex_t *context,
                           uint64_t *person)
{
    sl_arena_t a;
    sl_buf_t key = {0};
    sl_arena_init(&a);
    int rc = SL_ENOTFOUND;
    static const char *const kinds[2][2] = {{"userId", "user_id"}, {"anonymousId", "anonymous_id"}};
    *person = 0;
    for (int i = 0; i < 2 && rc == SL_ENOTFOUND; i++) {
        const char *v = sl_stitch_clean_id(s, sl_jstr(sl_jindex_get(top, kinds[i][0]), &a, NULL), &a, 0);
        uint64_t pid = 0;
        if (v == NULL) continue;
        if ((rc = stitch_make_key(&key, kinds[i][1], v)) == 0) rc = stitch_lookup(s, txn, &key, &pid, NULL);
        if (rc == 0 && pid == 0) rc = SL_ENOTFOUND;
        if (rc == MDB_NOTFOUND) rc = SL_ENOTFOUND;
        if (rc == 0) *person = pid;
    }
    /* an identify the stitcher keyed by a trait alone (no usable ids) */
    sl_jval_t traits = sl_jstr_eq(sl_jindex_get(top, "type"), "identify", 8) ? stitch_identify_traits(top, context)
                                                                            : (sl_jval_t){NULL, 0};
    for (size_t i = 0; rc == SL_ENOTFOUND && traits.n && i < s->cfg->n_identity_traits && i < SL_STITCH_MAX_TRAITS; i++) {
        const char *v = sl_stitch_clean_id(s, stitch_jstr(traits, s->cfg->identity_traits[i], &a), &a, 1);
        uint64_t pid = 0;
        if (v == NULL) continue;
        if ((rc = stitch_make_key(&key, s->cfg->identity_traits[i], v)) == 0) rc = stitch_lookup(s, txn, &key, &pid, NULL);
        if (rc == MDB_NOTFOUND || (rc == 0 && pid == 0)) rc = SL_ENOTFOUND;
        if (rc == 0) *person = pid;
    }
    sl_buf_free(&key);
    sl_arena_free(&a);
    return rc;
}

int sl_stitch_person_events(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int (*cb)(uint64_t seq, void *arg),
                            void *arg)
{
    person_t p = {0};
    MDB_cursor *cur = NULL;
    int rc = stitch_person_load(s, txn, person, &p);
    if (rc == MDB_NOTFOUND) rc = SL_ENOTFOUND;
    if (rc == 0) rc = mdb_cursor_open(txn, s->tl, &cur);
    for (size_t off = 0; rc == 0 && off < p.ids.len; off += strlen(p.ids.data + off) + 1) {
        const char *key = p.ids.data + off;
        uint64_t owner, tlno;
        unsigned char tk[8];
        if ((rc = stitch_lookup_id(s, txn, key, strlen(key), &owner, &tlno)) == MDB_NOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc) break;
        sl_be64_put(tk, tlno);
        MDB_val k = {8, tk}, v;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP))
            if ((rc = cb(stitch_tl_seq(v.mv_data), arg))) break;
        if (rc == MDB_NOTFOUND) rc = 0;
    }
    if (cur) mdb_cursor_close(cur);
    stitch_person_free(&p);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_stitch_find(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, uint64_t *person)
{
    person_t p = {0};
    int rc = stitch_find_person(s, txn, kind, id, &p);
    *person = rc ? 0 : p.id;
    stitch_person_free(&p);
    return rc;
}

void stitch_person_free(person_t *p)
{
    sl_buf_free(&p->ids);
    sl_buf_free(&p->traits);
    sl_buf_free(&p->ext);
}

/* What the timelines of p's identifiers say: event count (and page views
 * when pages is not NULL, which reads every entry), first and last seen. */
int stitch_person_stats(sl_stitch_t *s, MDB_txn *txn, const person_t *p, uint64_t *events, uint64_t *pages,
                        int64_t *first, int64_t *last)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->tl, &cur);
    if (rc) return rc;
    *events = 0;
    if (pages) *pages = 0;
    *first = *last = 0;
    for (size_t off = 0; off < p->ids.len; off += strlen(p->ids.data + off) + 1) {
        const char *key = p->ids.data + off;
        uint64_t owner, tlno;
        unsigned char tk[8];
        if ((rc = stitch_lookup_id(s, txn, key, strlen(key), &owner, &tlno))) break;
        sl_be64_put(tk, tlno);
        MDB_val k = {8, tk}, v;
        if ((rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY)) == MDB_NOTFOUND) continue;
        size_t n = 0;
        if (rc || (rc = mdb_cursor_count(cur, &n)) || (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST_DUP))) break;
        *events += n;
        int64_t f = (int64_t)(sl_be64_get(v.mv_data) ^ (1ULL << 63));
        if (*first == 0 || f < *first) *first = f;
        for (; pages && rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP))
            *pages += ((const unsigned char *)v.mv_data)[15] & 1;
        if (rc == MDB_NOTFOUND) rc = 0;
        if (rc || (rc = mdb_cursor_get(cur, &k, &v, MDB_LAST_DUP))) break;
        int64_t l = (int64_t)(sl_be64_get(v.mv_data) ^ (1ULL << 63));
        if (l > *last) *last = l;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int append_profile(sl_stitch_t *s, MDB_txn *txn, sl_buf_t *out, const person_t *p, uint64_t events,
                          uint64_t pages, int64_t first, int64_t last)
{
    append_person_head(out, p);
    sl_buf_appends(out, ",\"identities\":[");
    for (size_t off = 0, i = 0; off < p->ids.len; off += strlen(p->ids.data + off) + 1, i++) {
        if (i) sl_buf_appends(out, ",");
        stitch_append_identifier_json(out, p->ids.data + off);
    }
    sl_buf_appends(out, "],\"traits\":");
    cJSON *doc = p->traits.len ? cJSON_ParseWithLength(p->traits.data, p->traits.len) : NULL;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(doc, "t"), *at = cJSON_GetObjectItemCaseSensitive(doc, "at");
    char *txt = cJSON_IsObject(t) ? cJSON_PrintUnformatted(t) : NULL;
    sl_buf_appends(out, txt ? txt : "{}");
    cJSON_free(txt);
    sl_buf_appends(out, ",\"traits_updated_at\":{");
    int lead = 1;
    for (const cJSON *x = cJSON_IsObject(at) ? at->child : NULL; x; x = x->next) {
        if (!lead) sl_buf_appends(out, ",");
        lead = 0;
        sl_buf_append_json_str(out, x->string, strlen(x->string));
        sl_buf_appends(out, ":");
        sl_buf_append_iso(out, (int64_t)x->valuedouble);
    }
    cJSON_Delete(doc);
    sl_buf_appends(out, "},\"first_seen\":");
    sl_buf_append_iso(out, first);
    sl_buf_appends(out, ",\"last_seen\":");
    sl_buf_append_iso(out, last);
    sl_buf_printf(out, ",\"counters\":{\"events\":%llu,\"page_views\":%llu", (unsigned long long)events,
                  (unsigned long long)pages);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < s->n_listeners; i++)
        if (s->listeners[i].profile_counters)
            rc = s->listeners[i].profile_counters(s->listeners[i].arg, txn, p->id, out);
    sl_buf_appends(out, "},\"consent\":");
    if (rc == 0) rc = s->consent ? consent_append_json(out, txn, s->consent, p->id) : sl_buf_appends(out, "null");
    for (size_t i = 0; rc == 0 && i < s->n_listeners; i++)
        if (s->listeners[i].profile_extra) rc = s->listeners[i].profile_extra(s->listeners[i].arg, txn, p->id, out);
    sl_buf_appends(out, "}");
    return rc ? rc : out->data ? 0 : SL_ENOMEM;
}

int sl_stitch_profile(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, sl_buf_t *out)
{
    person_t p = {0};
    uint64_t events, pages;
    int64_t first, last;
    int rc = stitch_find_person(s, txn, kind, id, &p);
    if (rc == 0 && (rc = stitch_person_stats(s, txn, &p, &events, &pages, &first, &last)) == 0)
        rc = append_profile(s, txn, out, &p, events, pages, first, last);
    stitch_person_free(&p);
    return rc;
}

/* Persons by recent activity, newest first. */
int sl_stitch_recent(sl_stitch_t *s, MDB_txn *txn, size_t limit, const char *before, sl_buf_t *out)
{
    unsigned char from[16];
    int have_from = 0;
    if (before) {
        unsigned long long ms, pid;
        char extra;
        if (sscanf(before, "%llu.%llu%c", &ms, &pid, &extra) != 2) return SL_EINVAL;
        stitch_active_key(from, (int64_t)ms, pid);
        have_from = 1;
    }
    sl_buf_appends(out, "{\"profiles\":[");
    if (s->active == 0) { /* a store read before the index existed */
        sl_buf_appends(out, "],\"next\":null}");
        return out->data ? 0 : SL_ENOMEM;
    }
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->active, &cur);
    if (rc) return rc;
    MDB_val k = {16, from}, v;
    if (have_from) { /* the first key below the cursor */
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        rc = rc == 0 ? mdb_cursor_get(cur, &k, &v, MDB_PREV) : rc == MDB_NOTFOUND ? mdb_cursor_get(cur, &k, &v, MDB_LAST) : rc;
    } else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    }
    size_t n = 0;
    uint64_t last_ms = 0, last_pid = 0;
    person_t p = {0};
    for (; rc == 0 && n < limit; rc = mdb_cursor_get(cur, &k, &v, MDB_PREV)) {
        if (k.mv_size != 16) continue;
        last_ms = sl_be64_get(k.mv_data);
        last_pid = sl_be64_get((const unsigned char *)k.mv_data + 8);
        uint64_t events, pages;
        int64_t first, last;
        if ((rc = stitch_person_load(s, txn, last_pid, &p)) == MDB_NOTFOUND) continue; /* not ours to fail on */
        if (rc || (rc = stitch_person_stats(s, txn, &p, &events, &pages, &first, &last))) break;
        if (n++) sl_buf_appends(out, ",");
        if ((rc = append_profile(s, txn, out, &p, events, pages, first, last))) break;
    }
    stitch_person_free(&p);
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (n == limit && rc == 0) sl_buf_printf(out, "],\"next\":\"%llu.%llu\"}", (unsigned long long)last_ms,
                                              (unsigned long long)last_pid);
    else sl_buf_appends(out, "],\"next\":null}");
    return out->data ? 0 : SL_ENOMEM;
}

/* The newest-first merge of every identifier's event index. */
int sl_stitch_timeline(sl_stitch_t *s, MDB_txn *txn, MDB_txn *log_txn, const char *kind, const char *id,
                       size_t limit, const char *before, sl_buf_t *out)
{
    person_t p = {0};
    int rc = stitch_find_person(s, txn, kind, id, &p);
    if (rc) goto out_person;
    unsigned char bv[16];
    if (before) {
        long long ts;
        unsigned long long seq;
        char extra;
        if (sscanf(before, "%lld.%llu%c", &ts, &seq, &extra) != 2) {
            rc = SL_EINVAL;
            goto out_person;
        }
        stitch_tl_value(bv, ts, seq, 0); /* the lowest value with that (ts, seq) */
    }
    size_t n = p.h.n_ids;
    MDB_cursor **cur = calloc(n ? n : 1, sizeof(*cur));
    unsigned char(*head)[16] = calloc(n ? n : 1, 16);
    int *live = calloc(n ? n : 1, sizeof(int));
    if (!cur || !head || !live) {
        rc = SL_ENOMEM;
        goto out;
    }
    size_t i = 0;
    for (size_t off = 0; off < p.ids.len && i < n; off += strlen(p.ids.data + off) + 1, i++) {
        const char *key = p.ids.data + off;
        if ((rc = mdb_cursor_open(txn, s->tl, &cur[i]))) goto out;
        uint64_t owner, tlno;
        unsigned char tk[8];
        if ((rc = stitch_lookup_id(s, txn, key, strlen(key), &owner, &tlno))) goto out;
        sl_be64_put(tk, tlno);
        MDB_val k = {8, tk}, v;
        int r;
        if (before) {
            v.mv_size = 16;
            v.mv_data = bv;
            r = mdb_cursor_get(cur[i], &k, &v, MDB_GET_BOTH_RANGE);
            if (r == 0) r = mdb_cursor_get(cur[i], &k, &v, MDB_PREV_DUP);
            else if (r == MDB_NOTFOUND && (r = mdb_cursor_get(cur[i], &k, &v, MDB_SET)) == 0)
                r = mdb_cursor_get(cur[i], &k, &v, MDB_LAST_DUP);
        } else {
            r = mdb_cursor_get(cur[i], &k, &v, MDB_SET);
            if (r == 0) r = mdb_cursor_get(cur[i], &k, &v, MDB_LAST_DUP);
        }
        if (r && r != MDB_NOTFOUND) {
            rc = r;
            goto out;
        }
        if (r == 0 && v.mv_size == 16) {
            memcpy(head[i], v.mv_data, 16);
            live[i] = 1;
        }
    }
    sl_buf_appends(out, "{\"events\":[");
    size_t emitted = 0;
    unsigned char last[16];
    int more = 0;
    for (;;) {
        int best = -1;
        for (size_t j = 0; j < i; j++)
            if (live[j] && (best < 0 || memcmp(head[j], head[best], 16) > 0)) best = (int)j;
        if (best < 0) break;
        if (emitted == limit) {
            more = 1;
            break;
        }
        memcpy(last, head[best], 16);
        MDB_val ev;
        if (sl_store_event_get(s->store, log_txn, stitch_tl_seq(last), &ev) == 0) {
            if (emitted) sl_buf_appends(out, ",");
            sl_buf_append(out, ev.mv_data, ev.mv_size);
            emitted++;
        }
        MDB_val k, v;
        int r = mdb_cursor_get(cur[best], &k, &v, MDB_PREV_DUP);
        if (r == 0 && v.mv_size == 16) memcpy(head[best], v.mv_data, 16);
        else if (r == MDB_NOTFOUND) live[best] = 0;
        else {
            rc = r;
            goto out;
        }
    }
    sl_buf_appends(out, "],\"next\":");
    if (more) sl_buf_printf(out, "\"%lld.%llu\"", (long long)(sl_be64_get(last) ^ (1ULL << 63)),
                            (unsigned long long)stitch_tl_seq(last));
    else sl_buf_appends(out, "null");
    sl_buf_appends(out, "}");
out:
    for (size_t j = 0; cur && j < n; j++)
        if (cur[j]) mdb_cursor_close(cur[j]);
    free(cur);
    free(head);
    free(live);
out_person:
    stitch_person_free(&p);
    return rc;
}

/* The person's journal a page at a time, newest entry first: the cursor
 * is the number of the last entry listed. A refusal entry stands where the
 * first refusal it counts was journaled. */
int sl_stitch_merges(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, size_t limit,
                     const char *before, sl_buf_t *out)
{
    uint64_t from = 0, last = 0;
    if (before) {
        char *end;
        if (before[0] < '0' || before[0] > '9') return SL_EINVAL;
        errno = 0;
        unsigned long long v = strtoull(before, &end, 10);
        if (*end || errno || v == 0) return SL_EINVAL;
        from = v;
    }
    person_t p = {0};
    sl_buf_t merges = {0}, refused = {0};
    MDB_cursor *cur = NULL;
    size_t n = 0;
    int more = 0, oom = 0;
    int rc = stitch_find_person(s, txn, kind, id, &p);
    if (rc || (rc = mdb_cursor_open(txn, s->pjournal, &cur))) goto out;
    MDB_val k = {8, &p.id}, v = {8, &from};
    if (before) { /* the last entry below the cursor */
        rc = mdb_cursor_get(cur, &k, &v, MDB_GET_BOTH_RANGE);
        if (rc == 0) rc = mdb_cursor_get(cur, &k, &v, MDB_PREV_DUP);
        else if (rc == MDB_NOTFOUND && (rc = mdb_cursor_get(cur, &k, &v, MDB_SET)) == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_LAST_DUP);
    } else if ((rc = mdb_cursor_get(cur, &k, &v, MDB_SET)) == 0) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST_DUP);
    }
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_PREV_DUP)) {
        MDB_val jk = {8, v.mv_data}, jv;
        int g = mdb_get(txn, s->journal, &jk, &jv);
        if (g == MDB_NOTFOUND) continue; /* erased with another person */
        if (g) {
            rc = g;
            break;
        }
        if (n == limit) {
            more = 1;
            break;
        }
        sl_buf_t *b = stitch_entry_is_refusal(&jv) ? &refused : &merges;
        if (b->len) oom |= sl_buf_appends(b, ",");
        oom |= sl_buf_append(b, jv.mv_data, jv.mv_size);
        memcpy(&last, v.mv_data, 8);
        n++;
    }
    if (rc && rc != MDB_NOTFOUND) goto out;
    char pid[32];
    stitch_person_id_str(p.id, pid);
    sl_buf_printf(out, "{\"person\":\"%s\",\"merges\":[", pid);
    if (merges.len) sl_buf_append(out, merges.data, merges.len);
    sl_buf_appends(out, "],\"refused\":[");
    if (refused.len) sl_buf_append(out, refused.data, refused.len);
    if (more) sl_buf_printf(out, "],\"next\":\"%llu\"}", (unsigned long long)last);
    else sl_buf_appends(out, "],\"next\":null}");
    rc = oom || out->data == NULL ? SL_ENOMEM : 0;
out:
    if (cur) mdb_cursor_close(cur);
    sl_buf_free(&merges);
    sl_buf_free(&refused);
    stitch_person_free(&p);
    return rc;
}

int sl_stitch_person_seen(sl_stitch_t *s, MDB_txn *txn, uint64_t id, int64_t *first, int64_t *last)
{
    person_t p = {0}; /* (its own: readers call it) */
    int rc = stitch_person_load(s, txn, id, &p);
    uint64_t n;
    if (rc == 0) rc = stitch_person_stats(s, txn, &p, &n, NULL, first, last);
    stitch_person_free(&p);
    return rc == MDB_NOTFOUND ? SL_ENOTFOUND : rc;
}
