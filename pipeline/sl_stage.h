/* sl_stage.h - the derivation stage (DESIGN.md, "The pipeline";
 * docs/ARCHITECTURE.md).
 *
 * The log (storage/, sl_store.h) is what ingestion acknowledges. Everything
 * derived from it -- the identity graph, profiles, timelines, trigger state,
 * the trigger feed -- lives in a second LMDB environment, <data_dir>/derived,
 * written by this stage's own thread. The stage reads the log's durable
 * events in order from a cursor stored in the derived environment, hands
 * each one to its steps inside one write transaction, and stores the cursor
 * in that same transaction: across crashes every event is applied exactly
 * once. When it is behind, one transaction carries thousands of events; when
 * it keeps up, it commits what each log commit brought.
 *
 * The two environments have their own write locks: the ack path never waits
 * for derivation, and derivation never waits for an fsync of the log.
 *
 * Steps (identity, then the trigger engine, later computed fields...) are
 * registered in order before sl_stage_open(). A step that cannot apply an
 * event makes the stage set that event aside (the transaction is redone
 * without it; the reason is stored and counted) and move on: one bad event
 * never stalls the rest.
 *
 * Threads: sl_stage_submit(), sl_stage_wait() and the done/waiter callbacks
 * run on the loop thread; steps run on the stage thread; sl_stage_read() and
 * the counters are safe from any thread.
 */
#ifndef SL_STAGE_H
#define SL_STAGE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <lmdb.h>
#include <uv.h>

#include "sl_common.h"
#include "sl_store.h"

typedef struct sl_stage_s sl_stage_t;

/* What the steps of one event tell the later ones (the phases below run in
 * order: identity fills it, computed fields, audiences and rules read it).
 * The stage clears it before each event; what a pointer member points to
 * belongs to the step that filled it and lives until the next event. */
typedef struct sl_stage_ctx_s {
    sl_entity_t entity;        /* whom the event was applied to (kind 0: nobody, as an alias
                                * without its ids) */
    int identified;            /* entity has a userId or an identity trait */
    int identity_changed;      /* in this event entity gained an identifier other than an
                                * anonymousId, or absorbed another person: the moment a
                                * person becomes identified is one of these */
    int64_t ts_ms;             /* the event's corrected, clamped timestamp */
    uint64_t dropped_traits;   /* traits of this event not kept (limits.max_traits_*) */
    /* merges the event caused, in order: absorbed[i] was merged into survivor[i] */
    const uint64_t *merge_survivor, *merge_absorbed;
    size_t n_merges;
    /* traits of entity the event changed: a cJSON array of [name, old (null:
     * none), new] (NULL or empty: none) */
    const cJSON *trait_changes;
    int historical;            /* the event comes from the past (an import): rules see nothing
                                * of it (set by the identity step, from its source) */
    int consent_changed;       /* the event changed entity's consent categories or its
                                * unsubscribed flag */
    int trusted;               /* its source is a server-side one (sources[].trusted): what a
                                * browser key may not do (refund an order) is allowed */
    /* computed fields of entity the event changed (the fields phase): a cJSON
     * array of [field, old, new, reason] -- reason "merge" for what a merge
     * of the event did, "event" for the event itself -- in that order (NULL
     * or empty: none) */
    const cJSON *computed_changes;
} sl_stage_ctx_t;

/* One event of the log, as the steps see it. The stage checks that its text
 * is one well-formed JSON object (else the event is set aside) and builds no
 * tree: in that same pass it notes where root's members and its context's
 * are (top, context), and steps read the members they use from there
 * (sl_jindex_get, then sl_jget... below); a step that keeps a part as a tree
 * parses that part. Steps never keep pointers into the text past the event
 * (json lives only as long as the stage's read of the log: a slice of
 * SLICE_EVENTS events). */
typedef struct sl_stage_event_s {
    uint64_t seq;
    const char *json;
    size_t len;
    sl_jval_t root;          /* the stored message: an object */
    const sl_jindex_t *top;  /* root's members, found once for every step (sl_jindex_get) */
    const sl_jindex_t *context; /* the members of its context object (none when it has none) */
    const char *message_id;  /* its messageId ("" when it has none) */
    sl_stage_ctx_t *ctx;     /* filled by the steps, phase after phase */
} sl_stage_event_t;

/* The phases, in the order the steps of an event run (steps of one phase run
 * in the order they were added). */
enum {
    SL_PHASE_IDENTITY = 10,  /* stitcher/: who the event is about, merges, traits */
    SL_PHASE_FIELDS = 20,    /* fields/: the order ledger, computed profile fields */
    SL_PHASE_AUDIENCES = 30, /* audiences/: membership, enter and exit */
    SL_PHASE_RULES = 40,     /* triggers/: rule states, firing */
    SL_PHASE_FEED = 50,      /* feed/: pruning; appended to by the phases before */
    SL_PHASE_DELIVERY = 60   /* outbound/: consumers' cursors */
};

/* Durable timers, owned by the stage for every step: (due, step, entity,
 * name) in the derived environment. A step sets one inside a stage
 * transaction; once due has passed, the stage deletes it and runs the step's
 * timer callback in a transaction (at most 1,000 a transaction; the rest in
 * the next). Timers are lazy: setting one again for the same due time is one
 * timer, a step never deletes one, and its callback decides from its own
 * state whether the timer still matters (re-arming a later one if not yet).
 * A timer of a step no longer registered is dropped and counted. */
#define SL_STAGE_TIMER_NAME_MAX 255

/* A step: every member but name is optional. Errors are LMDB or SL_ codes. */
typedef struct sl_stage_step_s {
    const char *name;            /* also the owner of its timers: stable across versions */
    int phase;                   /* SL_PHASE_* (0: SL_PHASE_RULES) */
    void *arg;
    /* In the first transaction (read_only: a command reading a store): open
     * the step's databases in the derived environment. */
    int (*open)(void *arg, MDB_txn *txn, int read_only);
    /* One event, in order. An error other than the environment's (disk,
     * memory, map size) sets the event aside. */
    int (*apply)(void *arg, MDB_txn *txn, const sl_stage_event_t *ev);
    /* One of the step's durable timers came due (now: sl_now_ms()). */
    int (*timer)(void *arg, MDB_txn *txn, sl_entity_t entity, const char *name, size_t name_len, int64_t due,
                 int64_t now);
    /* Periodic work of its own: when (sl_now_ms() time; INT64_MAX: nothing),
     * and the work, run inside a stage transaction; *wrote set to 1 when it
     * changed something. */
    int64_t (*due)(void *arg);
    int (*tick)(void *arg, MDB_txn *txn, int64_t now_ms, int *wrote);
    /* After each transaction: committed (ok 1) or aborted (ok 0; it will be
     * redone). Then synced(all): the derived environment's commits are on
     * disk -- all = 1 every commit so far, 0 every one but the latest. */
    void (*after_txn)(void *arg, int ok);
    void (*synced)(void *arg, int all);
    /* 1 when this step's readers wait for what the next events make (the
     * feed's consumers, while entries come): the stage then commits as soon
     * as it applied them instead of waiting for commit_interval_ms. Stage
     * thread; may be NULL. */
    int (*awaited)(void *arg);
} sl_stage_step_t;

typedef struct sl_stage_options_s {
    const char *dir;             /* the derived environment: <data_dir>/derived */
    uint64_t map_size_bytes;
    uint64_t map_size_max_bytes;
    int nosync;                  /* durability "os" */
    int read_only;               /* commands: no thread */
    int bulk;                    /* a command deriving a whole store into a scratch directory
                                  * (rebuild): no flush per transaction, one at the end of
                                  * sl_stage_catch_up(); a crash leaves only the scratch copy */
    size_t max_events_per_txn;   /* 0: 8192 */
    uint32_t commit_interval_ms; /* while no one awaits the next commit (a reader waiting for a
                                  * position, a step's awaited()), events wait until the last
                                  * commit is this old: fewer, larger commits write fewer pages
                                  * and sync less beside the log (0: commit as soon as applied) */
    int nice;                    /* the stage thread's nice value above the process's: on a busy
                                  * core the acknowledgement goes first, the stage takes what is
                                  * left and its lag says how far behind it is (0: the same) */
    uint64_t max_lag_events;     /* past this lag, the loop thread leaves the stage a share of the
                                  * core (sl_stage_start: a check handle that, after each loop
                                  * iteration, sleeps as long as the loop ran since its last sleep);
                                  * 0: never, the acknowledgement always first */
} sl_stage_options_t;

/* The stage's share of a core: past max_lag_events, a loop thread that
 * acknowledges beside the stage sleeps, after each iteration, as long as
 * it ran since its last sleep (the stage's own loop does from
 * sl_stage_start(); another loop -- ingest_loops -- starts one of its own).
 * On that loop's thread; the handle keeps no loop alive; stop it before the
 * loop ends. */
typedef struct sl_stage_share_s {
    uv_check_t check;
    struct sl_stage_s *sg;
    uint64_t from;          /* the thread's CPU time at its last sleep (0: within the bound) */
} sl_stage_share_t;
void sl_stage_share_start(struct sl_stage_s *sg, uv_loop_t *loop, sl_stage_share_t *sh);
void sl_stage_share_stop(sl_stage_share_t *sh);

/* Creates the stage; add its steps, then open it. */
sl_stage_t *sl_stage_new(sl_store_t *log, const sl_stage_options_t *opts);
/* Adds step (copied) to the chain, after the steps of its phase and before
 * those of later phases; before sl_stage_open(). At most 8. */
int sl_stage_add_step(sl_stage_t *sg, const sl_stage_step_t *step);
/* Sets a durable timer of the step named step (registered) for entity: due
 * (sl_now_ms() time), name (at most SL_STAGE_TIMER_NAME_MAX bytes; a rule's
 * name, say). Stage thread, inside the stage transaction txn. */
int sl_stage_timer_set(sl_stage_t *sg, MDB_txn *txn, const char *step, int64_t due, sl_entity_t entity,
                       const char *name, size_t name_len);
/* An observer sees each event once every step applied it (ctx filled), on
 * the stage thread inside the transaction txn, which it may read (a
 * step's reader: the debug view shows the person's RFM segment); it cannot
 * fail the event and must not write. Before sl_stage_start(); at most 4. */
int sl_stage_observe(sl_stage_t *sg, void (*fn)(void *arg, MDB_txn *txn, const sl_stage_event_t *ev), void *arg);
/* Opens (creating) the derived environment and each step's databases. */
int sl_stage_open(sl_stage_t *sg);
/* Starts the stage's thread; completions and waiters run on loop. */
int sl_stage_start(sl_stage_t *sg, uv_loop_t *loop);
/* Stops the thread once what is durable in the log is applied (or at once
 * when hurry), then cb(arg) on the loop thread. Called again while stopping,
 * it only hurries the stop (cb stays the first one). */
void sl_stage_stop(sl_stage_t *sg, int hurry, void (*cb)(void *), void *arg);
void sl_stage_free(sl_stage_t *sg);

/* Work in a stage transaction (erasure, cursors, rule reloads): run(txn,
 * arg) after every event that was durable in the log when the job was
 * submitted (an erasure sees all that was acknowledged about the person;
 * far behind, a job waits for the transaction that reaches that point; one
 * still waiting when a hurried stop ends the stage gets SL_ESHUTDOWN; in
 * sl_stage_catch_up() the job runs first); it may run more than once
 * (the transaction is redone after an event is set aside), so it starts
 * afresh each time. An error fails the job alone. after_commit (optional)
 * runs on the stage thread once the transaction committed (erasure deletes
 * log events there). done runs on the loop thread. */
typedef struct sl_stage_job_s sl_stage_job_t;
struct sl_stage_job_s {
    int (*run)(MDB_txn *txn, void *arg);
    int (*after_commit)(void *arg);
    void (*done)(sl_stage_job_t *job);
    void *arg;
    int rc;                      /* out */
    sl_stage_job_t *next;        /* private */
    uint64_t after_seq;          /* private: the log's durable end when it was submitted */
};
/* Queues job. Returns 0, or SL_ESHUTDOWN. Loop thread. */
int sl_stage_submit(sl_stage_t *sg, sl_stage_job_t *job);

/* Offline (a command, no thread started): runs job first (may be NULL; a
 * failing job fails the call), applies the log up to upto in the calling
 * thread, then whatever timers are due, and flushes; progress(applied, arg)
 * after each transaction (may be NULL). */
int sl_stage_catch_up(sl_stage_t *sg, sl_stage_job_t *first, uint64_t upto,
                      void (*progress)(uint64_t applied, void *arg), void *arg);


/* Read-your-writes: cb(arg, reached) runs on the loop thread once the stage
 * has applied the log up to pos and that is on disk (reached 1: what was
 * derived, triggers included, is visible and no crash takes it back), or
 * when timeout_ms passed first (reached 0). w is the caller's until then; sl_stage_cancel()
 * takes it back without a call. */
typedef struct sl_stage_waiter_s sl_stage_waiter_t;
struct sl_stage_waiter_s {
    uint64_t pos;
    int64_t deadline_ms;
    void (*cb)(sl_stage_waiter_t *w, int reached);
    void *arg;
    sl_stage_waiter_t *prev, *next; /* private */
};
void sl_stage_wait(sl_stage_t *sg, sl_stage_waiter_t *w, uint64_t pos, int64_t timeout_ms);
void sl_stage_cancel(sl_stage_t *sg, sl_stage_waiter_t *w);

/* Stage thread only: the last event of the log visited before this point --
 * in a step's open, the cursor the stage resumes from; in a step's apply,
 * tick or timer or in a job, the last event the transaction under way went
 * through (what a definition that starts now has not seen live). */
uint64_t sl_stage_position(const sl_stage_t *sg);

/* The last event applied and committed (visible to readers). */
uint64_t sl_stage_applied(const sl_stage_t *sg);
/* The log the stage reads (a step reads a stored event again by its seq,
 * in a read transaction of its own: sl_store_read, sl_store_event_get). */
sl_store_t *sl_stage_log(const sl_stage_t *sg);
/* The last event applied whose commit is on disk. */
uint64_t sl_stage_durable_applied(const sl_stage_t *sg);

/* Runs cb in a read transaction of the derived environment, with log_txn a
 * read transaction of the log (either may be NULL when the caller does not
 * need it: pass want_log 0). Any thread. Returns cb's result. */
int sl_stage_read(sl_stage_t *sg, int want_log, int (*cb)(MDB_txn *txn, MDB_txn *log_txn, void *arg), void *arg);

/* Consistent copy of the derived environment as data.mdb in the directory
 * dirfd (sl_dir_open_nofollow; it must not hold a data.mdb), 0640. */
int sl_stage_backup(sl_stage_t *sg, int dirfd);

/* Events set aside: cb(seq, reason, arg) for each, in order, at most limit. */
int sl_stage_set_aside(sl_stage_t *sg, size_t limit, int (*cb)(uint64_t seq, const char *reason, void *arg),
                       void *arg);

/* Replays events set aside, from..to (to 0: no end), at most limit (0:
 * 1,000), in order, through every step, as if each had just arrived (its
 * triggers fire if their rules still match): one applied leaves the list,
 * one that fails again stays with its new reason. r is the caller's until
 * done(r) runs on the loop thread with r->job.rc and the counts. Loop
 * thread; returns 0 or SL_ESHUTDOWN. */
typedef struct sl_stage_replay_s sl_stage_replay_t;
struct sl_stage_replay_s {
    sl_stage_job_t job;          /* private (first: done() finds r from it) */
    uint64_t from, to;
    size_t limit;
    void (*done)(sl_stage_replay_t *r);
    void *arg;
    size_t replayed, failed, gone; /* out: applied; failed again; erased from the log since */
    int more;                    /* out: more events set aside in from..to wait for another call */
    sl_stage_t *sg;              /* private */
};
int sl_stage_replay(sl_stage_t *sg, sl_stage_replay_t *r);

typedef struct sl_stage_stats_s {
    uint64_t applied;            /* last event applied */
    uint64_t log_durable;        /* the log's durable end */
    uint64_t lag_events;         /* log_durable - applied */
    int64_t lag_ms;              /* how long the oldest unapplied durable event has waited */
    uint64_t events_applied, txns, set_aside;
    uint64_t map_resizes, replayed;
    uint64_t timers_fired, timers_orphaned; /* timers run; timers of no registered step, dropped */
    uint64_t yields, yielded_us; /* the loop's sleeps for the stage past max_lag_events, and their time */
} sl_stage_stats_t;
void sl_stage_get_stats(sl_stage_t *sg, sl_stage_stats_t *out);
/* The same as Prometheus text (arg: the stage). */
void sl_stage_metrics(void *arg, sl_buf_t *out);

#endif
