/* sl_feed.h - the feed: an ordered, durable list of entries about entities
 * (docs/TRIGGERS.md, "Consuming the feed", "Storage").
 *
 * Producers append in the stage transaction that caused the entry (the
 * trigger engine today; audiences and accounts next); readers see an entry
 * only once the transaction that holds it is on disk (sl_feed_durable_seq),
 * so no reader sees an entry a crash could take back. Subscribers hear each
 * time that position moves. The feed is a stage step (sl_stage.h) for its
 * databases, its commit bookkeeping and its pruning (entries older than the
 * retention go, at most 1,000 a minute).
 *
 * Each entry is a binary header beside the JSON that consumers receive:
 * readers filter by rule, type and entity without parsing JSON, and an index
 * from entity to entries makes an erasure cost the person's entries, not a
 * scan of the feed.
 *
 * LMDB databases (in the derived environment):
 *   feed     seq (u64) -> header, then the entry's JSON (below)
 *   tmeta    "feed_last" -> u64 the last seq appended; "feed_pruned" -> u64 the last
 *            seq retention removed (other keys: carried as they are)
 *   fcause   be64 hash of a cause's messageId, be64 seq -> (empty): the stored
 *            events the feed names (retention keeps them while it does)
 *   fentity  u8 kind, be64 entity id, be64 seq -> (empty)
 *
 * Entry value, version 1 (little-endian integers):
 *   0  u8   0xF5 (SL_FEED_MAGIC)        4  u16  rule name length (0: no rule)
 *   1  u8   version (1)                 6  u8   type length (1..255)
 *   2  u8   entity kind                 7  u8   0xF5 again
 *   3  u8   flags (bit 0: a cause)      8  i64  at_ms
 *   16 u64  entity id                   24 u64  the cause's messageId hash (sl_feed_mid_hash)
 *   32 the rule name, then the type, then the JSON.
 * An entry written before (by the trigger engine until 2026-12) is an 8-byte
 * host-order (little-endian) at_ms, then the JSON: its 8th byte is the top
 * byte of a time below 2^56 ms (the year 2,285,000), always 0, never 0xF5.
 * Such entries are read, filtered, pruned, erased and carried over by
 * parsing their JSON (rule, type, profile.id, cause.messageId).
 *
 * Threads: append, holds, forget, set_retention and the step run on the stage
 * thread in its transaction; foreach/read in any read transaction of the
 * derived environment, from any thread; durable_seq from any thread.
 */
#ifndef SL_FEED_H
#define SL_FEED_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <lmdb.h>

#include "sl_common.h"
#include "sl_stage.h"

#define SL_FEED_MAGIC 0xF5
#define SL_FEED_VERSION 1
#define SL_FEED_HEADER_BYTES 32
#define SL_FEED_MAX_FILTER_RULES 64   /* names in one filter */
#define SL_FEED_MAX_FILTER_NAME 128   /* bytes of one name */

typedef struct sl_feed_s sl_feed_t;

/* What a producer appends. rule, cause may be NULL; type, profile and data
 * are required (profile and data: JSON objects' text). */
typedef struct sl_feed_entry_s {
    int64_t at_ms;
    sl_entity_t entity;
    const char *rule;       /* NULL: no rule (profile_erased) */
    const char *type;       /* "abandoned_cart", "profile_erased"... 1..255 bytes */
    const char *cause;      /* messageId of the stored event that caused it; NULL: none (a timer) */
    const char *profile;
    const char *data;
} sl_feed_entry_t;

/* One entry as a reader sees it. Pointers are into the read transaction (or,
 * for an old entry, into its parsed JSON) and live only during the callback. */
typedef struct sl_feed_item_s {
    uint64_t seq;
    int64_t at_ms;
    sl_entity_t entity;     /* kind 0: an old entry without a person's id */
    const char *rule;       /* NULL: no rule */
    size_t rule_len;
    const char *type;
    size_t type_len;
    uint64_t cause_hash;    /* 0: no cause */
    const char *json;
    size_t len;
    int old_layout;         /* 1: read from its JSON */
} sl_feed_item_t;

/* What a reader wants; every member optional (zero: no filter on it). An
 * entry passes when its rule is one of rules, its type is type and its
 * entity is *entity. */
typedef struct sl_feed_filter_s {
    const char *const *rules;
    size_t n_rules;         /* at most SL_FEED_MAX_FILTER_RULES */
    const char *type;
    const sl_entity_t *entity;
    size_t max_scan;        /* entries looked at per call (0: limit-bound only) */
} sl_feed_filter_t;

/* retention_ms: entries older than this are pruned (<= 0: never). */
sl_feed_t *sl_feed_new(int64_t retention_ms);
void sl_feed_free(sl_feed_t *f);
/* Registers the feed's step with the stage; before sl_stage_open(). */
int sl_feed_attach(sl_feed_t *f, sl_stage_t *stage);
/* A reload's new retention; on the stage thread (a job) or before start. */
void sl_feed_set_retention(sl_feed_t *f, int64_t retention_ms);

/* cb(arg) runs on the stage thread each time the durable position advanced
 * (at most 8 subscribers); it must only wake its own thread or loop. Before
 * the stage starts. 0 or SL_EINVAL (too many). */
int sl_feed_subscribe(sl_feed_t *f, void (*cb)(void *arg), void *arg);
/* The last sequence readers may see. */
uint64_t sl_feed_durable_seq(const sl_feed_t *f);
/* The last entry retention removed (0: none; tmeta "feed_pruned"): a
 * reader resuming after an earlier position would miss entries. Any thread. */
uint64_t sl_feed_pruned_upto(const sl_feed_t *f);
/* The last sequence appended in txn's snapshot (0: none): what a snapshot
 * of state read in txn is consistent with (an audience's export). Any
 * thread. 0 or an LMDB error. */
int sl_feed_last(sl_feed_t *f, MDB_txn *txn, uint64_t *last);

/* Appends e in the stage transaction txn; *seq (may be NULL) gets its
 * sequence. The JSON is {"seq","id" (a random UUID),"rule","type","at",
 * "profile","cause":{"messageId"}|null,"data"}. 0, SL_EINVAL (a field past
 * its bound), SL_ENOMEM or an LMDB error. */
int sl_feed_append(sl_feed_t *f, MDB_txn *txn, const sl_feed_entry_t *e, uint64_t *seq);

/* *held 1 when an entry names the stored event message_id as its cause
 * (retention keeps that event). 0 or an LMDB error. */
int sl_feed_holds(sl_feed_t *f, MDB_txn *txn, const char *message_id, int *held);
/* The key under which causes are indexed (also the trigger engine's holds). */
uint64_t sl_feed_mid_hash(const char *message_id, size_t len);

/* Removes every entry of the entities (kind, ids[0..n)) through the entity
 * index; *removed counts them. 0 or an LMDB error. */
int sl_feed_forget(sl_feed_t *f, MDB_txn *txn, uint8_t kind, const uint64_t *ids, size_t n, uint64_t *removed);

/* Calls fn for each durable entry after `after` that passes flt (NULL: all),
 * in order, at most limit of them and, with flt->max_scan, looking at no more
 * than max_scan entries; fn returning nonzero stops after that entry. *last
 * (may be NULL) gets the last sequence looked at (after when none): a
 * reader filtering for a rare rule still moves on. Returns how many entries
 * fn saw, or < 0 on an LMDB error. */
long sl_feed_foreach(sl_feed_t *f, MDB_txn *txn, uint64_t after, size_t limit, const sl_feed_filter_t *flt,
                     int (*fn)(const sl_feed_item_t *it, void *arg), void *arg, uint64_t *last);
/* The same, appending the entries' JSON to out separated by commas. */
long sl_feed_read(sl_feed_t *f, MDB_txn *txn, uint64_t after, size_t limit, const sl_feed_filter_t *flt,
                  sl_buf_t *out, uint64_t *last);

/* Header codec (exposed for the tests). sl_feed_encode appends an entry's
 * header for seq-less fields of e (cause_hash: its cause's hash) to b;
 * sl_feed_decode reads one stored value: 0 (a versioned entry: every field
 * set), 1 (an old entry: at_ms and json only; sl_feed_item_parse fills the
 * rest), SL_EINVAL (neither). */
int sl_feed_encode(sl_buf_t *b, const sl_feed_entry_t *e, uint64_t cause_hash);
int sl_feed_decode(const void *v, size_t n, sl_feed_item_t *it);
/* For an old entry: rule, type, entity and cause_hash from its JSON; *doc
 * holds the strings until cJSON_Delete(*doc). 0 or SL_EINVAL (not JSON). */
struct cJSON;
int sl_feed_item_parse(sl_feed_item_t *it, struct cJSON **doc);

/* Rebuild: copies the feed and its meta from src (a read transaction of the
 * old derived store, or of a log from before the pipeline) into dst, in a
 * stage job's transaction, and indexes it. */
int sl_feed_carry_over(sl_feed_t *f, MDB_txn *dst, MDB_txn *src);

/* sillage verify: order, each header against its JSON (rule, type,
 * entity), the entity index both ways, and every cause a stored event
 * (has_message). Problems are printed to out and counted. */
int sl_feed_verify(sl_feed_t *f, MDB_txn *txn, int (*has_message)(const char *id, void *arg), void *arg, FILE *out,
                   uint64_t *n_feed, uint64_t *problems);

#endif
