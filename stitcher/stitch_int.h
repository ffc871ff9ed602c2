/* stitch_int.h - private to stitcher/: the stitcher's state and record
 * layouts, shared by the files that do its jobs (stitch.c: records,
 * stitching, merges; read.c; erase.c; retention.c; verify.c). Names used
 * across them carry the stitch_ prefix; sl_stitch.h is the contract. */
#ifndef SL_STITCH_INT_H
#define SL_STITCH_INT_H

#include "sl_stitch.h"

#include "consent.h"

#include <cjson/cJSON.h>
#include <stdatomic.h>

#define KEY_SEP '\x1f'
#define PERSON_VERSION 1
#define STITCH_LAYOUT 3 /* 2: tl values carry seq << 1 | page, counters derived; 3: tl keyed by number */

/* flags of a person record */
#define PF_ACTIVE_HERE 1 /* active_ms and PF_ACTIVE say where the person is in active (else actof does) */
#define PF_ACTIVE 2      /* the person has an entry in active, at active_ms */

typedef struct {
    uint32_t version;
    uint32_t n_ids;
    int64_t active_ms;    /* its key's time in active, with PF_ACTIVE (records before had zero here) */
    uint64_t flags;       /* PF_* */
    uint64_t events, page_views;
    uint32_t ext_len;     /* the attachments' bytes, after the traits (stitch_record_ext()) */
    uint32_t ext_pad;     /* written 0 */
    double revenue;       /* revenue, currency: no longer kept (the ledger, fields/, keeps them); never read */
    char currency[8];
    uint32_t ids_len;     /* identifier keys, each NUL-terminated */
    uint32_t traits_len;  /* {"t":{name:value},"at":{name:ms}} */
} person_hdr_t;

typedef struct {
    uint64_t id;
    person_hdr_t h;
    sl_buf_t ids;
    sl_buf_t traits;
    sl_buf_t ext;         /* attachments (attach.c): [tag u8][len u32][bytes]... */
    int dirty;            /* the record must be written back */
} person_t;


/* What the stitcher reads of one stored message. */
typedef struct sl_stitch_msg_s {
    int type;                        /* SL_STITCH_* */
    const char *message_id;
    const char *user_id;
    const char *anonymous_id;
    const char *previous_id;         /* alias */
    const char *trait_ids[SL_STITCH_MAX_TRAITS]; /* values of the configured identity traits */
    cJSON *traits;                   /* identify: the traits object (owned: msg_free); else NULL */
    int64_t ts_ms;                   /* the corrected timestamp */
    const sl_source_t *source;       /* the configured source it came from (NULL: none now) */
    int trusted;                     /* from a trusted (server-side) source */
    int historical;                  /* from the past (docs/TRIGGERS.md, "Historical imports") */
    consent_in_t consent;            /* what it says of consent (an unsubscribe...) */
} sl_stitch_msg_t;

#define MAX_LISTENERS 8

struct sl_stitch_s {
    const sl_config_t *cfg;
    sl_store_t *store;
    MDB_dbi ids, persons, tl, journal, pjournal, prefusals, smeta, erasing, active, actof, consent;
    consent_cache_t *ccache;  /* stage thread: recent persons' categories (consent.h) */
    sl_stage_step_t step;
    person_t p1, p2, p3;      /* stage thread scratch (p3: listeners' payloads) */
    sl_ident_listener_t listeners[MAX_LISTENERS];
    size_t n_listeners;
    sl_arena_t in_arena;      /* the current message's cleaned identifiers */
    cJSON *trait_changes;     /* identify: [name, old, new] of each trait it changed (the stage context's) */
    uint64_t *mg_survivor, *mg_absorbed; /* the merges of the current event (the stage context's) */
    size_t n_mg, cap_mg;
    struct stitch_kept_s { /* the current event's absorbed persons' attachments (attach.c) */
        uint64_t id;
        sl_buf_t ext;
    } *kept;
    size_t n_kept, cap_kept;
    sl_buf_t attach_tmp;      /* attach.c: a record rewritten */
    /* the event's person's attachments as its record holds them, from the
     * identity step to the end of the event (attach.c: read without a
     * descent); ev_valid 0 when the record may have changed otherwise */
    uint64_t ev_id;
    int ev_valid;
    sl_buf_t ev_ext;
    int gained_identity;      /* stage thread: the event under way gave its person a non-anonymous identifier */
    sl_buf_t k1, k2, k3, tmp; /* identifier keys; tmp: journal entries and index keys */
    sl_buf_t k4;              /* smeta keys of coalesced refusals */
    char *tscratch;           /* printing one trait value: limits.max_traits_bytes + 1 */
    uint64_t msg_dropped;     /* traits of the current message not kept (limits) */
    _Atomic uint64_t merges, refusals, created, traits_dropped, refusals_dropped;
    _Atomic uint64_t refusal_refs_read; /* references bound_refusals read: its cost */
    _Atomic uint64_t pruned, examined, prune_passes, persons_expired;
    struct { /* the current transaction's, added when it commits (an aborted one is redone) */
        uint64_t created, refusals, merges, traits_dropped, prune_passes, refusals_dropped;
    } pend;
    _Atomic uint64_t identifies, identify_ns; /* identify and alias: count, time in on_event */
};

int stitch_read_msg(sl_stitch_t *s, const sl_jindex_t *top, const sl_jindex_t *context, uint64_t seq, sl_stitch_msg_t *m);
void stitch_msg_free(sl_stitch_msg_t *m);
sl_jval_t stitch_identify_traits(const sl_jindex_t *top, const sl_jindex_t *context);
int stitch_first_trait(const sl_stitch_t *s, const sl_stitch_msg_t *m);
int stitch_make_key(sl_buf_t *b, const char *kind, const char *value);
int stitch_lookup(sl_stitch_t *s, MDB_txn *txn, const sl_buf_t *key, uint64_t *pid, uint64_t *tl);
int stitch_counter_next(sl_stitch_t *s, MDB_txn *txn, const char *name, uint64_t *out);
int stitch_person_load(sl_stitch_t *s, MDB_txn *txn, uint64_t id, person_t *p);
void stitch_person_free(person_t *p);
int stitch_person_identified(const person_t *p);
int stitch_person_stats(sl_stitch_t *s, MDB_txn *txn, const person_t *p, uint64_t *events, uint64_t *pages,
                        int64_t *first, int64_t *last);
int stitch_forget_person(sl_stitch_t *s, MDB_txn *txn, person_t *p, sl_stitch_erase_t *e);
int stitch_tell_forgotten(sl_stitch_t *s, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                          uint64_t *n_removed);
void stitch_tl_value(unsigned char out[16], int64_t ts_ms, uint64_t seq, int page);
void stitch_active_key(unsigned char k[16], int64_t ms, uint64_t person);
int stitch_u64_append(uint64_t **v, size_t *n, size_t *cap, const uint64_t *x, size_t k);
void stitch_sort_unique(uint64_t *v, size_t *n);
int stitch_finish_erasures(sl_stitch_t *s, MDB_txn *txn);
int stitch_lookup_id(sl_stitch_t *s, MDB_txn *txn, const void *key, size_t len, uint64_t *pid, uint64_t *tl);
int stitch_foreach_dup(MDB_txn *txn, MDB_dbi dbi, const void *key, size_t key_len, int (*fn)(MDB_txn *txn, const MDB_val *v, void *arg), void *arg);
int stitch_active_get(sl_stitch_t *s, MDB_txn *txn, person_t *p, int64_t *ms, int *found, int drop);
int stitch_meta_del_prefix(sl_stitch_t *s, MDB_txn *txn, const char *prefix, size_t n);
int stitch_find_person(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, person_t *p);
int stitch_entry_is_refusal(const MDB_val *v);
uint64_t stitch_entry_person(const cJSON *doc, const char *name);
void stitch_person_id_str(uint64_t id, char out[32]);
const char *stitch_person_user_id(const person_t *p);
void stitch_append_identifier_json(sl_buf_t *b, const char *key);
/* attach.c: keeps absorbed's attachments for the rest of the event (a merge
 * deletes its record); forgets them (the next event) */
int stitch_attach_keep(sl_stitch_t *s, const person_t *absorbed);
void stitch_attach_clear(sl_stitch_t *s);
void stitch_attach_free(sl_stitch_t *s);

/* The length of the attachments of a person record of size bytes whose
 * header is h: 0 and *ext, or MDB_CORRUPTED when the lengths do not add
 * up. The word was the person's order count (ext_len, ext_pad) before the
 * ledger, and nothing rewrote it to 0: a record of exactly its header,
 * identifiers and traits has none. */
static inline int stitch_record_ext(const person_hdr_t *h, size_t size, uint32_t *ext)
{
    size_t base = sizeof(*h) + (size_t)h->ids_len + h->traits_len;
    if (size >= base && size - base == h->ext_len && h->ext_pad == 0) *ext = h->ext_len;
    else if (size == base) *ext = 0;
    else return MDB_CORRUPTED;
    return 0;
}

/* The timeline value's log sequence (stitch_tl_value()). */
static inline uint64_t stitch_tl_seq(const void *v)
{
    return sl_be64_get((const unsigned char *)v + 8) >> 1;
}

/* Member name of o as a string in a (NULL: absent or not a string). */
static inline const char *stitch_jstr(sl_jval_t o, const char *name, sl_arena_t *a)
{
    return sl_jstr(sl_jget(o, name), a, NULL);
}

#endif
