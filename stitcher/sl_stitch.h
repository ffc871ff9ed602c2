/* sl_stitch.h - identity stitching (DESIGN.md, "Identity stitching rules",
 * docs/IDENTITY.md).
 *
 * The identity graph lives in the store's LMDB environment and changes in the
 * same write transaction as the events that change it: the stitcher plugs into
 * the store as hooks (sl_stitch_hooks()), and the writer thread calls it for
 * every stored event. Persons are numbered; identifiers (anonymous_id, user_id
 * and the configured traits, e.g. email) point at a person; each event is
 * indexed under the identifier it was sent with. A merge re-points the absorbed
 * person's identifiers and never touches its events, so its cost depends on the
 * number of identifiers, not on the length of the history.
 *
 * Reads (profiles, timelines, journal) run in a read transaction from any
 * thread; erasure runs as a store job inside the writer's transaction.
 */
#ifndef SL_STITCH_H
#define SL_STITCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sl_common.h"
#include "sl_config.h"
#include "sl_store.h"

/* 1 when value must never become an identifier: empty or blank, or equal
 * (ASCII case-insensitively, invisible code points ignored) to one of the
 * configured junk values ("null", "undefined", "anonymous", "0", "guest"...). */
int sl_ident_is_junk(const char *value, size_t len, char *const *junk, size_t n_junk);
/* Blanks and invisible code points (no-break and zero-width spaces, BOM...)
 * are ignored by sl_ident_is_junk, and sl_ident_trim() removes them from
 * both ends of v (updated), returning the new length. */
size_t sl_ident_trim(const char **v, size_t n);
/* v[0..n) (valid UTF-8) lower-cased by Unicode's simple case mapping, in
 * arena, NUL-terminated; NULL when out of memory. */
char *sl_ident_lower(const char *v, size_t n, sl_arena_t *arena);

enum { SL_STITCH_TRACK = 1, SL_STITCH_PAGE, SL_STITCH_SCREEN, SL_STITCH_IDENTIFY, SL_STITCH_ALIAS, SL_STITCH_GROUP };

#define SL_STITCH_MAX_TRAITS 8

/* What the stitcher needs of one message, extracted by the collector on the
 * loop thread (strings owned by the caller, alive until the commit is done).
 * Junk identifiers are already NULL. */
typedef struct sl_stitch_msg_s {
    int type;                        /* SL_STITCH_* */
    const char *message_id;
    const char *user_id;
    const char *anonymous_id;
    const char *previous_id;         /* alias */
    const char *trait_ids[SL_STITCH_MAX_TRAITS]; /* values of the configured identity traits */
    const char *traits_json;         /* identify: the traits object, printed; else NULL */
    int64_t ts_ms;                   /* the corrected timestamp */
    int trusted;                     /* from a trusted (server-side) source: may merge two
                                      * persons that each have a userId */
    int is_order;                    /* track "Order Completed" */
    double revenue;                  /* properties.revenue or .total of an order */
    char currency[8];
    /* for the trigger rules */
    const char *event;               /* track: the event name */
    const char *url, *path;          /* page: properties.url / .path (or context.page's) */
    const char *props_json;          /* track events a cart rule looks at: the properties, printed */
    uint64_t person;                 /* out: the person it was stitched into (0: none) */
    uint64_t dropped_traits;         /* out: traits not kept on the profile (limits.max_traits_*) */
} sl_stitch_msg_t;

typedef struct sl_stitch_s sl_stitch_t;

/* Creates the stitcher for cfg (identity traits, junk list); cfg must outlive it. */
sl_stitch_t *sl_stitch_new(const sl_config_t *cfg);
void sl_stitch_free(sl_stitch_t *s);

struct sl_trig_s;
/* Runs the trigger engine t on every stitched event, merge and trait change,
 * and its timers from the store's hooks. Call before sl_store_open(). */
void sl_stitch_set_triggers(sl_stitch_t *s, struct sl_trig_s *t);

/* The trigger payload's "profile" of person id, appended to out (may be NULL):
 * {"id","user_id","email","traits"}. identified (may be NULL) gets 1 when the
 * person has a userId or an identity trait; last_ms (may be NULL) its last
 * event time. SL_ENOTFOUND when there is no such person. */
int sl_stitch_person_payload(sl_stitch_t *s, MDB_txn *txn, uint64_t id, sl_buf_t *out, int *identified,
                             int64_t *last_ms);

/* Hooks to pass in sl_store_options_t before sl_store_open(). */
const sl_store_hooks_t *sl_stitch_hooks(sl_stitch_t *s);

/* The store the stitcher reads events from; call after sl_store_open(). */
void sl_stitch_attach(sl_stitch_t *s, sl_store_t *store);

/* Identifier values are at most this long (bytes), identity trait names at
 * most SL_IDENT_MAX_KIND: a key "<kind>\x1f<value>" always fits LMDB's 511. */
#define SL_IDENT_MAX_BYTES 256
#define SL_IDENT_MAX_KIND 64

/* An identifier value as the stitcher keys it, copied into arena: NULL for
 * junk, a value over SL_IDENT_MAX_BYTES (or no value); trait values trimmed
 * and lower-cased. */
const char *sl_stitch_clean_id(const sl_stitch_t *s, const char *v, sl_arena_t *arena, int is_trait);

/* 1 when kind names an identifier kind: "user_id", "anonymous_id" or a
 * configured identity trait. */
int sl_stitch_kind_ok(const sl_stitch_t *s, const char *kind);

/* Profile reads, in a read transaction (sl_store_read()). Each appends JSON
 * to out and returns 0, SL_ENOTFOUND when no person has that identifier, or
 * an LMDB error. before: the "next" cursor of a previous page, or NULL. */
int sl_stitch_profile(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, sl_buf_t *out);
int sl_stitch_timeline(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, size_t limit,
                       const char *before, sl_buf_t *out);
int sl_stitch_merges(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, sl_buf_t *out);

/* Erasure, as a store job: set kind and id, submit a batch with
 * job = sl_stitch_erase_job and job_arg = the request; read the counts after. */
typedef struct sl_stitch_erase_s {
    sl_stitch_t *stitch;
    const char *kind, *id;
    int found;                 /* out */
    char person[32];           /* out */
    uint64_t events, identities, journal; /* out: what was erased */
    uint64_t triggers;         /* out: feed entries about the person */
} sl_stitch_erase_t;
int sl_stitch_erase_job(MDB_txn *txn, void *arg);

/* Consistency check of a store (`sillage verify`), in one read transaction:
 * every timeline entry is a stored event indexed once under an identifier
 * that resolves; every event with an identifier is indexed; identifiers and
 * persons agree both ways; person counters add up to the timelines; the
 * trigger feed is ordered and every trigger's cause is a stored event.
 * Problems are printed to out and counted in rep->problems. */
typedef struct sl_verify_report_s {
    uint64_t events, expected_indexed, indexed, identifiers, persons, triggers, problems;
} sl_verify_report_t;
int sl_stitch_verify(sl_stitch_t *s, MDB_txn *txn, sl_store_t *st, FILE *out, sl_verify_report_t *rep);

typedef struct sl_stitch_stats_s {
    uint64_t merges, refusals, persons_created;
    uint64_t identifies, identify_ns; /* identify and alias messages stitched, time spent on them */
    uint64_t traits_dropped;          /* traits not kept on a profile (limits.max_traits_*) */
} sl_stitch_stats_t;
void sl_stitch_get_stats(const sl_stitch_t *s, sl_stitch_stats_t *out);

#endif
