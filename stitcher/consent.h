/* consent.h - private to stitcher/: each person's consent and suppression
 * flag (docs/PRIVACY.md), kept beside the person record and following it
 * through merges and erasure. The public face is sl_stitch_consent_check()
 * and the profile's "consent" member (sl_stitch.h).
 *
 * LMDB database "consent" (derived environment):
 *   person id (u64) -> consent_hdr_t, then the categories as a JSON object
 *   ({"analytics":true,"marketing":false}; length 0: never told)
 */
#ifndef SL_STITCH_CONSENT_H
#define SL_STITCH_CONSENT_H

#include <cjson/cJSON.h>
#include <lmdb.h>
#include <stdint.h>

#include "sl_common.h"
#include "sl_config.h"

#define CONSENT_MAX_CATEGORIES 32

/* What one stored message says: categories (states), unsub 1 (the unsubscribe event), -1 (the subscribe event, from
 * a trusted source) or 0; its time and log sequence. */
typedef struct consent_in_s {
    int states;           /* it states categories: ... */
    uint64_t hash;        /* ... these (their hash) */
    sl_jval_t seg;        /* Segment's categoryPreferences (prefs built from it when needed) */
    sl_arena_t *arena;    /* where its names are decoded (the reader's, alive for the event) */
    cJSON *prefs;         /* owned: the categories as kept (RudderStack's at once) */
    int unsub;
    int64_t ts_ms;
    uint64_t seq;
} consent_in_t;

/* Reads, of a message whose members are top and those of its context
 * context, context.consent.categoryPreferences (Segment), else
 * context.consentManagement's allowedConsentIds/deniedConsentIds
 * (RudderStack): boolean categories only, names of 1 to SL_CONSENT_MAX_NAME
 * bytes, at most CONSENT_MAX_CATEGORIES (a statement with none of those
 * says nothing). The subscribe event counts only from a trusted source.
 * Names are decoded into arena, which must outlive in. Returns SL_ENOMEM or 0. */
int consent_read_msg(const sl_jindex_t *top, const sl_jindex_t *context, const sl_config_t *cfg, int trusted, int64_t ts_ms, uint64_t seq,
                     consent_in_t *in, sl_arena_t *arena);
void consent_in_free(consent_in_t *in);

/* What the records of recently seen persons say of their categories, so the
 * tag's repeat of the same categories on every message costs no lookup: a
 * direct-mapped table, written by the stage thread as it applies, emptied
 * when a transaction is aborted (consent_cache_clear: what it saw is undone). */
#define CONSENT_CACHE_SLOTS 65536
typedef struct consent_cache_s {
    struct { uint64_t person, hash; int64_t seen_ms; } e[CONSENT_CACHE_SLOTS];
} consent_cache_t;
void consent_cache_clear(consent_cache_t *c);

/* The person's state moves to what in says, unless an event with a later
 * time already stated that part (categories, flag). cache may be NULL. */
int consent_apply(MDB_txn *txn, MDB_dbi dbi, consent_cache_t *cache, uint64_t person, consent_in_t *in, int *changed);
/* survivor keeps, of each part, the one stated last; absorbed's goes. */
int consent_merge(MDB_txn *txn, MDB_dbi dbi, consent_cache_t *cache, uint64_t survivor, uint64_t absorbed);
int consent_forget(MDB_txn *txn, MDB_dbi dbi, consent_cache_t *cache, uint64_t person);
/* Appends {"categories":{...}|null,"updated_at":…,"unsubscribed":…,"unsubscribed_at":…}
 * or null (nothing known). */
int consent_append_json(sl_buf_t *out, MDB_txn *txn, MDB_dbi dbi, uint64_t person);
/* Appends ,"consent":{category: bool...},"unsubscribed":bool (the person
 * view conditions read; {} and false when nothing is known). */
int consent_view_json(sl_buf_t *out, MDB_txn *txn, MDB_dbi dbi, uint64_t person);
/* *ok 1 when the person is not unsubscribed and granted category (NULL:
 * only the flag is asked about); else 0 with *why "consent" (not granted,
 * or never told) or "unsubscribed". Returns 0 or an LMDB error. */
int consent_allows(MDB_txn *txn, MDB_dbi dbi, uint64_t person, const char *category, int *ok, const char **why);

/* *keep 1 when event seq set one of the person's current parts: retention
 * keeps it, the proof of that consent or refusal. */
int consent_keeps(MDB_txn *txn, MDB_dbi dbi, uint64_t person, uint64_t seq, int *keep);
/* 1 when data[0..len) is a well-formed record (sillage verify). */
int consent_check_record(const void *data, size_t len);

#endif
