/* sl_triggers.h - trigger rules, durable timers and the trigger feed
 * (DESIGN.md, "Trigger rules"; docs/TRIGGERS.md).
 *
 * The engine runs inside the writer's transaction, called by the stitcher for
 * each stitched event, merge and trait change, and by the store for due
 * timers. A trigger is appended to the feed in the same commit as its cause.
 * Readers see a trigger only once the commit that holds it is on disk
 * (sl_trig_durable_seq), so a reader never sees a trigger a crash could take
 * back.
 *
 * LMDB databases (in the store's environment):
 *   feed      seq (u64) -> int64 at_ms, then the trigger JSON
 *   timers    be64 due_ms, be64 person, rule name -> (empty)
 *   tstate    rule name \x1f be64 person -> the rule's state for that person
 *   pressure  be32 UTC day, be64 person, rule name ("" = all rules) -> u32 count
 *   tmeta     "feed_last" -> u64; "wh\x1f<url>" -> u64 webhook delivery cursor
 */
#ifndef SL_TRIGGERS_H
#define SL_TRIGGERS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "sl_common.h"
#include "sl_config.h"
#include "sl_store.h"

typedef struct sl_trig_s sl_trig_t;
struct sl_stitch_s;
struct sl_stitch_msg_s;

/* rules: the trigger rules, pressure cap and retention of cfg. cfg must stay
 * alive until replaced with sl_trig_reload_job(). */
sl_trig_t *sl_trig_new(const sl_config_t *cfg);
void sl_trig_free(sl_trig_t *t);

/* Called by the stitcher's store hooks. */
int sl_trig_open(sl_trig_t *t, MDB_txn *txn, int read_only);
void sl_trig_attach(sl_trig_t *t, struct sl_stitch_s *stitch);
int64_t sl_trig_due(sl_trig_t *t);
int sl_trig_tick(sl_trig_t *t, MDB_txn *txn, int64_t now_ms);
void sl_trig_after_txn(sl_trig_t *t, int ok);
void sl_trig_synced(sl_trig_t *t, int all);

/* Writer thread, from the stitcher. person: the person the event was
 * stitched to, after its record was saved; identified: it has a userId or an
 * identity trait. */
int sl_trig_event(sl_trig_t *t, MDB_txn *txn, const struct sl_stitch_msg_s *m, uint64_t person, int identified,
                  int64_t now_ms);
/* The messageId of the event being stitched: the "cause" of what fires next. */
void sl_trig_set_cause(sl_trig_t *t, const char *message_id);
/* absorbed was merged into survivor: its rule states move. */
int sl_trig_merge(sl_trig_t *t, MDB_txn *txn, uint64_t survivor, uint64_t absorbed);
/* Erasure: the rule states of person and every feed entry about it go;
 * *n_feed gets how many feed entries. */
int sl_trig_forget(sl_trig_t *t, MDB_txn *txn, uint64_t person, uint64_t *n_feed);
/* A trait of person changed (old NULL when it had no value). */
int sl_trig_trait(sl_trig_t *t, MDB_txn *txn, uint64_t person, const char *name, const cJSON *old_v,
                  const cJSON *new_v, int64_t now_ms);
/* 1 when some trait_change rule watches name. */
int sl_trig_watches_trait(const sl_trig_t *t, const char *name);

/* Called (writer thread) whenever the durable feed position advanced. */
void sl_trig_set_notify(sl_trig_t *t, void (*cb)(void *arg), void *arg);

/* The last trigger sequence readers may see. */
uint64_t sl_trig_durable_seq(const sl_trig_t *t);

/* Appends to out the triggers after `after` (at most limit, none past the
 * durable position) as JSON objects separated by commas; *last gets the
 * sequence of the last one appended (or after). Returns how many, or < 0 on
 * an LMDB error. */
long sl_trig_read(sl_trig_t *t, MDB_txn *txn, uint64_t after, size_t limit, sl_buf_t *out, uint64_t *last);
/* The same, one trigger at a time: fn(seq, json, len, arg); stops on nonzero. */
long sl_trig_foreach(sl_trig_t *t, MDB_txn *txn, uint64_t after, size_t limit,
                     int (*fn)(uint64_t seq, const char *json, size_t len, void *arg), void *arg);

/* Webhook delivery cursors (durable): read in any transaction, written as a
 * store job. */
int sl_trig_cursor_get(sl_trig_t *t, MDB_txn *txn, const char *url, uint64_t *seq);
int sl_trig_cursor_put(sl_trig_t *t, MDB_txn *txn, const char *url, uint64_t seq);

/* Replaces the rules with those of cfg, as a store job (arg: the reload
 * request); timers and states of rules that keep their name go on. */
typedef struct sl_trig_reload_s {
    sl_trig_t *trig;
    const sl_config_t *cfg;
} sl_trig_reload_t;
int sl_trig_reload_job(MDB_txn *txn, void *arg);

/* Checks the feed: ordered sequences, valid JSON, and every trigger caused
 * by an event names one that has_message() knows. Problems are printed to
 * out and counted. */
int sl_trig_verify(sl_trig_t *t, MDB_txn *txn, int (*has_message)(const char *id, void *arg), void *arg,
                   FILE *out, uint64_t *n_feed, uint64_t *problems);

typedef struct sl_trig_stats_s {
    uint64_t fired, suppressed, timers_fired;
    uint64_t fired_by_rule[64], suppressed_by_rule[64]; /* by rule index in the current config */
} sl_trig_stats_t;
void sl_trig_get_stats(const sl_trig_t *t, sl_trig_stats_t *out);
const sl_config_t *sl_trig_config(const sl_trig_t *t);

#endif
