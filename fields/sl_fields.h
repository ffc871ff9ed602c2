/* sl_fields.h - computed profile fields (docs/COMPUTED.md): the order
 * ledger and the commerce pack (orders, revenue, average basket, order
 * dates, categories, promo affinity, windows, RFM), kept live and exact in
 * the stage transaction that applies each event.
 *
 * A stage step of the fields phase (after identity, before audiences and
 * rules: sl_stage.h), with its own databases in the derived environment:
 *   ledger   order key -> the order: its person, time, amounts, categories,
 *            promo mark, refunds and duplicate copies (the first copy wins)
 *   porders  person, time, order key -> the order's net revenue and marks:
 *            each person's orders in time order (windows read them)
 *   fstate   person -> the person's summary: counts, sums, dates, category
 *            counts, the RFM segment it was last in and since when
 * It reads what identity told of each event (sl_stage_ctx_t: the person, the
 * merges), and tells the later phases what it changed (ctx->computed_changes);
 * what no event does -- a timer moving an RFM segment -- it tells listeners.
 * It listens to the stitcher for erasure (state and ledger entries go in the
 * erasure's transaction) and for profile answers (counters, `computed`) and
 * person views (conditions' `profile.computed.<name>`).
 *
 * The ledger always runs (a profile's counters.orders and .revenue come from
 * it); the computed fields are shown once the config's
 * "computed": {"commerce": ...} turns the pack on.
 *
 * Threads: the step and listeners' stage callbacks run on the stage
 * thread; the reads (sl_fields_computed, sl_fields_orders, sl_fields_value)
 * run in any read transaction of the derived environment, on any thread.
 */
#ifndef SL_FIELDS_H
#define SL_FIELDS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>
#include <lmdb.h>

#include "sl_common.h"
#include "sl_config.h"
#include "sl_stage.h"
#include "sl_stitch.h"

typedef struct sl_fields_s sl_fields_t;

/* Registers the config's "computed" section (sl_config_register); once,
 * before the first config is parsed. 0 or SL_EINVAL. */
int sl_fields_config_register(void);

/* The fields of cfg, over the stitcher (it listens to it); both outlive it. */
sl_fields_t *sl_fields_new(const sl_config_t *cfg, sl_stitch_t *stitch);
void sl_fields_free(sl_fields_t *f);
/* Adds the step to the stage and listens to the stitcher; before
 * sl_stage_open(). */
int sl_fields_attach(sl_fields_t *f, sl_stage_t *stage);

/* The computed section of cfg from now on (SIGHUP), inside a stage job
 * (txn): the commerce figures are kept from the ledger, so new windows,
 * thresholds and RFM tables read right at once (the RFM segments move at
 * their next event or timer); a generic field added or changed reads the
 * log's past in chunks (a backfill with a durable cursor, its changes quiet
 * meanwhile) and sees the events after this one live. The previous cfg must
 * stay alive (readers may still use it). */
int sl_fields_reload(sl_fields_t *f, MDB_txn *txn, const sl_config_t *cfg);
/* The generic fields reading the log's past now, as a JSON array of their
 * names ([] when none). Any thread. */
int sl_fields_backfilling(sl_fields_t *f, sl_buf_t *out);

/* Listeners hear of changes no event made (an RFM segment moved by time):
 * changes is a JSON array of [field, old, new, reason] (reason "timer"), as
 * ctx->computed_changes. Stage thread, inside its transaction; an error
 * aborts (and redoes) the transaction. At most 4, before the stage starts. */
typedef struct sl_fields_listener_s {
    void *arg;
    int (*changed)(void *arg, MDB_txn *txn, uint64_t person, const cJSON *changes, int64_t now);
    /* 1 when the listener wants to hear of changes to field (may be NULL:
     * none). Only watched fields are tracked -- their changes computed, their
     * timers set: a field nobody watches costs its update alone. Asked again
     * after sl_fields_rules_changed(). */
    int (*watches)(void *arg, const char *field);
} sl_fields_listener_t;
int sl_fields_listen(sl_fields_t *f, const sl_fields_listener_t *l);
/* What listeners watch changed (a reload of the rules): stage thread. */
void sl_fields_rules_changed(sl_fields_t *f);

/* 1 when name is a field the configuration computes ("orders",
 * "rfm.segment", "revenue_90d"...): computed_change rules and in_payload
 * name them. */
int sl_fields_known(const sl_config_t *cfg, const char *name);
/* 1 when the commerce pack is on in cfg. */
int sl_fields_commerce_on(const sl_config_t *cfg);

/* The person's computed fields as a JSON object, appended to out, evaluated
 * against now (windows and recency move with the clock): {} when the pack is
 * off, every field with its empty value for a person without orders. */
int sl_fields_computed(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now, sl_buf_t *out);
/* One field's value (name as sl_fields_known), appended to out as JSON;
 * null for an unknown name. */
int sl_fields_value(sl_fields_t *f, MDB_txn *txn, uint64_t person, const char *name, int64_t now, sl_buf_t *out);
/* The values of names[0..n) (as sl_fields_value, null for an unknown one)
 * as JSON members "name":value, comma-separated, appended to out: one read
 * of the person for all of them (a trigger's in_payload). */
int sl_fields_values(sl_fields_t *f, MDB_txn *txn, uint64_t person, char *const *names, size_t n, int64_t now,
                     sl_buf_t *out);
/* The person's ledger, newest first, at most limit orders after the cursor
 * before (NULL: from the newest): {"person","currency","orders":[...],
 * "next"}. Each order: order_id (or message_id when it had none), at,
 * revenue, total, currency (as sent), categories, promo, status
 * ("completed", "partially_refunded", "refunded"), refunded, refunds
 * [{at, amount, message_id}], duplicates, from (the person it was placed by,
 * when it was merged into this one; else null). SL_EINVAL: a bad cursor. */
int sl_fields_orders(sl_fields_t *f, MDB_txn *txn, uint64_t person, size_t limit, const char *before,
                     sl_buf_t *out);

/* GET /v1/computed: {"commerce", "timezone", "fields": [{"name", "source"
 * ("commerce" | "generic"), "type", "window", "status", "backfilling"}]}. */
int sl_fields_list(sl_fields_t *f, sl_buf_t *out);
/* 1 when f computes field name now (its configuration, reloads included;
 * "rfm" too, with the pack on). */
int sl_fields_has(sl_fields_t *f, const char *name);
/* ?explain=FIELD: {"person", "field", "value", "at", "explain": the inputs
 * behind it -- the orders counted (in its window), the RFM scores with the
 * thresholds crossed and the next timer, a generic field's buckets, values
 * or matching label}. SL_ENOTFOUND: no such field. */
int sl_fields_explain(sl_fields_t *f, MDB_txn *txn, uint64_t person, const char *field, int64_t now, sl_buf_t *out);
/* GET /v1/computed/{field}/distribution: over the persons with computed
 * state (at most max_persons of them; "complete" says whether all were
 * read): numbers' count, min, max, mean and quintiles, or the count of each
 * value (256 at most); for "rfm" / "rfm.segment", the count per segment and
 * thresholds suggested from today's customers (quintiles). A scan: run it
 * off the stage thread. SL_ENOTFOUND: no such field. */
int sl_fields_distribution(sl_fields_t *f, MDB_txn *txn, const char *field, int64_t now, size_t max_persons,
                           sl_buf_t *out);

/* Bounds (docs/COMPUTED.md). */
#define SL_FIELDS_ORDER_KEY_MAX 256  /* bytes of an order_id (or messageId): longer ones are cut between characters */
#define SL_FIELDS_ORDER_CATS 16      /* categories kept per order */
#define SL_FIELDS_CAT_BYTES 64       /* bytes of a category (longer ones are cut between characters) */
#define SL_FIELDS_ORDER_REFUNDS 32   /* refunds listed per order (more still count in `refunded`) */

/* `sillage verify`: every ledger entry's person exists in porders and the
 * other way round; each person's summary equals a recomputation from its
 * orders. Problems printed and counted. */
int sl_fields_verify(sl_fields_t *f, MDB_txn *txn, FILE *out, uint64_t *orders, uint64_t *problems);

/* `sillage verify`, the generic fields: each person's fields recomputed from
 * the person's stored events (log_txn: a read transaction of the log; skip:
 * events set aside, may be NULL) and compared with what is kept, at now.
 * Not meaningful where retention pruned events the fields counted: the
 * caller skips it then. Fields still backfilling are not compared. */
int sl_fields_verify_generic(sl_fields_t *f, MDB_txn *txn, MDB_txn *log_txn, int (*skip)(uint64_t seq, void *arg),
                             void *skip_arg, int64_t now, FILE *out, uint64_t *persons, uint64_t *problems);

/* `sillage verify`, the ledger against the log: every stored order event
 * (not set aside, of a person that still exists) is in the ledger -- as the
 * order, with the person it belongs to now, or as a later copy counted on it.
 * (Orders pruned by retention are simply not read: the ledger keeps them.) */
int sl_fields_verify_ledger(sl_fields_t *f, MDB_txn *txn, MDB_txn *log_txn, int (*skip)(uint64_t seq, void *arg),
                            void *skip_arg, uint64_t applied, FILE *out, uint64_t *checked, uint64_t *problems);

typedef struct sl_fields_stats_s {
    uint64_t orders, duplicates, refunds, refunds_unmatched; /* ledger entries made; copies; refunds */
    uint64_t refunds_untrusted;  /* refunds from a browser (untrusted) key: ignored */
    uint64_t unknown_currency;   /* orders counted without their revenue: a currency with no fx rate */
    uint64_t amounts_ignored;    /* amounts not finite or beyond SL_AMOUNT_MAX */
    uint64_t timers, timer_changes; /* timers run; of them, those that moved a value */
    uint64_t timer_late_ms_max;  /* the latest a timer ran after it was due */
    uint64_t backfilled;         /* events read again for a field added or changed */
} sl_fields_stats_t;
void sl_fields_get_stats(const sl_fields_t *f, sl_fields_stats_t *out);
/* Prometheus text (arg: the fields). */
void sl_fields_metrics(void *arg, sl_buf_t *out);

#endif
