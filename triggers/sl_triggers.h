/* sl_triggers.h - trigger rules, their states and marketing pressure
 * (DESIGN.md, "Trigger rules"; docs/TRIGGERS.md).
 *
 * The engine is a step of the derivation stage's rules phase (sl_stage.h):
 * from each event's context it takes what the identity phase did (merges,
 * trait changes, the person the event landed on) and reads what its rules
 * need from the stored event itself; its delays are the stage's durable
 * timers. It is a listener of the stitcher (sl_stitch.h) for what is no
 * event's doing: erasures, retention's holds, profile answers. A trigger is
 * appended to the feed (sl_feed.h) in the same stage transaction as its
 * cause; the feed tells its readers and subscribers.
 *
 * LMDB databases (in the derived environment; E = entity kind u8, be64 id):
 *   rstate     rule name \x1f E -> the rule's state for that entity
 *   rpressure  be32 UTC day, E, rule name ("" = all rules) -> u32 count
 *   holds      be64 hash of a starting event's messageId, be64 seq -> (empty)
 *   pcount     rule name -> u64 pending triggers
 * (Layout 1, before 2026-12: tstate, pressure and the engine's own timers,
 * keyed by the bare person number; converted when serve opens the store.)
 */
#ifndef SL_TRIGGERS_H
#define SL_TRIGGERS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "sl_common.h"
#include "sl_config.h"
#include "sl_feed.h"
#include "sl_stage.h"
#include "sl_fields.h"
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

/* rules: the trigger rules and pressure cap of cfg. cfg must stay alive
 * until replaced with sl_trig_reload_job(). Payloads read persons from
 * stitch and computed values from fields (NULL: none; computed_change rules
 * then never fire); triggers are appended to feed (attached to the same
 * stage). */
sl_trig_t *sl_trig_new(const sl_config_t *cfg, sl_stitch_t *stitch, sl_fields_t *fields, sl_feed_t *feed);
void sl_trig_free(sl_trig_t *t);

/* Registers the engine with the stage (a step: its databases, timers and
 * commits) and with the stitcher (a listener); before sl_stage_open(). */
int sl_trig_attach(sl_trig_t *t, sl_stage_t *stage);

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
 * timers but appends no trigger -- what fired before is in the feed the
 * rebuild carried over (sl_feed_carry_over). */
void sl_trig_mute(sl_trig_t *t, int muted);
/* The audiences pressure.tiers read (audiences/sl_audiences.h); before the
 * stage starts. Without them, the tiers hold nobody. */
struct sl_aud_s;
void sl_trig_set_audiences(sl_trig_t *t, struct sl_aud_s *aud);

/* Replaces the rules with those of cfg, as a stage job's run (arg: the
 * reload request); timers and states of rules that keep their name go on. */
typedef struct sl_trig_reload_s {
    sl_trig_t *trig;
    const sl_config_t *cfg;
    const sl_config_t *from;   /* private (zero it): the rules it replaces, noted at its first run so
                                * that a redone transaction drops the removed rules' states again */
} sl_trig_reload_t;
int sl_trig_reload_job(MDB_txn *txn, void *arg);

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
