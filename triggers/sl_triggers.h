/* sl_triggers.h - trigger rules, durable timers and the trigger feed
 * (DESIGN.md, "Trigger rules"; docs/TRIGGERS.md).
 *
 * The engine is a step of the derivation stage (sl_stage.h) for its timers
 * and a listener of the stitcher (sl_stitch.h) for what happens to persons:
 * each stitched event, merge, trait change and erasure. It reads what its
 * rules need from the stored event itself. A trigger is appended to the
 * feed in the same stage transaction as its cause. Readers see a trigger
 * only once the transaction that holds it is on disk (sl_trig_durable_seq),
 * so a reader never sees a trigger a crash could take back; subscribers
 * (sl_trig_subscribe) hear each time that position moves.
 *
 * LMDB databases (in the derived environment):
 *   feed      seq (u64) -> int64 at_ms, then the trigger JSON
 *   timers    be64 due_ms, be64 person, rule name -> (empty)
 *   tstate    rule name \x1f be64 person -> the rule's state for that person
 *   pressure  be32 UTC day, be64 person, rule name ("" = all rules) -> u32 count
 *   tmeta     "feed_last" -> u64; "wh\x1f<url>" -> u64 webhook delivery cursor
 *   fcause    be64 hash of a cause's messageId, be64 seq -> (empty): the stored
 *             events the feed names (retention keeps them while it does)
 */
#ifndef SL_TRIGGERS_H
#define SL_TRIGGERS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "sl_common.h"
#include "sl_config.h"
#include "sl_stage.h"
#include "sl_stitch.h"
#include "sl_store.h"

typedef struct sl_trig_s sl_trig_t;

/* Registers the "triggers" section of the configuration with
 * sl_config_register() (the engine parses its own rules: rule_table.c). Call it
 * once before the first config is parsed. 0 or SL_EINVAL. */
int sl_trig_config_register(void);
/* How many trigger rules cfg holds. */
size_t sl_trig_rule_count(const sl_config_t *cfg);
/* Appends cfg's rules as a JSON array: each rule's name, type and settings
 * as compiled, defaults included (durations as "1h"). 0 or SL_ENOMEM. */
int sl_trig_rules_print(const sl_config_t *cfg, sl_buf_t *out);

/* rules: the trigger rules, pressure cap and retention of cfg. cfg must stay
 * alive until replaced with sl_trig_reload_job(). Payloads read persons
 * from stitch. */
sl_trig_t *sl_trig_new(const sl_config_t *cfg, sl_stitch_t *stitch);
void sl_trig_free(sl_trig_t *t);

/* Registers the engine with the stage (a step: its databases, timers and
 * commits) and with the stitcher (a listener); before sl_stage_open(). */
int sl_trig_attach(sl_trig_t *t, sl_stage_t *stage);

/* cb(arg) runs on the stage thread each time the durable feed position
 * advanced (long polls, streams, webhooks, the NATS publisher: at most 8);
 * it must only wake its own thread or loop. Before the stage starts. */
int sl_trig_subscribe(sl_trig_t *t, void (*cb)(void *arg), void *arg);

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

/* page_visit's pattern: `*` any run of characters (also none), `?` one
 * character, anything else itself; the whole subject must match. */
int sl_trig_glob_match(const char *pattern, const char *subject);

/* GET /v1/rules: {"rules": [each rule as compiled (sl_trig_rules_print's
 * members), "fired", "suppressed": {"pressure","consent","unsubscribed","if"}
 * (since the process started), "pending" (pending triggers now)]}. On the
 * loop thread (the rules there are the ones /metrics reads), in a read
 * transaction of the derived store. 0 or SL_ENOMEM. */
int sl_trig_rules_json(sl_trig_t *t, MDB_txn *txn, sl_buf_t *out);

/* Appends person's pending triggers (event rules with a delay) as a JSON
 * array: [{"rule", "due", "waiting_for_login", "started_by" (the starting
 * event's seq), "cancelled_by" (the unless event or null)}], in any read or
 * stage transaction. 0, SL_ENOMEM or an LMDB error. */
int sl_trig_pending(sl_trig_t *t, MDB_txn *txn, uint64_t person, sl_buf_t *out);

/* Rebuild (sillage rebuild): muted, the engine keeps rule states and
 * timers but appends no trigger -- what fired before is in the feed it
 * carried over; sl_trig_carry_over() copies the feed and the delivery
 * cursors from src (a read transaction of the old derived store) into dst,
 * in a stage job's transaction. */
void sl_trig_mute(sl_trig_t *t, int muted);
int sl_trig_carry_over(sl_trig_t *t, MDB_txn *dst, MDB_txn *src);

/* Webhook delivery cursors (durable): read in any transaction, written in a
 * stage job. */
int sl_trig_cursor_get(sl_trig_t *t, MDB_txn *txn, const char *url, uint64_t *seq);
int sl_trig_cursor_put(sl_trig_t *t, MDB_txn *txn, const char *url, uint64_t seq);

/* Replaces the rules with those of cfg, as a stage job's run (arg: the
 * reload request); timers and states of rules that keep their name go on. */
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

/* Checks the rule states: each pending trigger names a stored starting event
 * (log_txn: a read transaction of the log), holds it, and has a live person;
 * every hold belongs to a pending trigger. Problems are printed to out and
 * counted; *n_pending counts the pending triggers. */
int sl_trig_verify_states(sl_trig_t *t, MDB_txn *txn, MDB_txn *log_txn, FILE *out, uint64_t *n_pending,
                          uint64_t *problems);

typedef struct sl_trig_stats_s {
    uint64_t fired, suppressed, timers_fired;
    uint64_t fired_by_rule[64], suppressed_by_rule[64]; /* by rule index in the current config */
    uint64_t no_consent_by_rule[64], unsubscribed_by_rule[64]; /* suppressed for want of consent */
    uint64_t if_by_rule[64];                                   /* suppressed by the rule's `if` */
} sl_trig_stats_t;
void sl_trig_get_stats(const sl_trig_t *t, sl_trig_stats_t *out);
const sl_config_t *sl_trig_config(const sl_trig_t *t);
/* Prometheus text (arg: the engine; loop thread). */
void sl_trig_metrics(void *arg, sl_buf_t *out);

#endif
