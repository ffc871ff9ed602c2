/* stage.c - see sl_stage.h.
 *
 * The derived environment's own databases:
 *   stage   text key -> value: "applied" (u64, the cursor)
 *   aside   u64 seq -> the reason an event was set aside (text)
 */
#define _GNU_SOURCE
#include "sl_stage.h"

#include <errno.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_STEPS 8
#define MAX_ASIDE_PER_TXN 64
#define SLICE_EVENTS 512 /* events per read transaction of the log */
#define LAG_SAMPLES 256
#define MAX_OBSERVERS 4
#define MAX_TIMERS_PER_TXN 1000

struct sl_stage_s {
    sl_store_t *log;
    sl_stage_options_t opts;
    char *dir;
    MDB_env *env;
    MDB_dbi meta, aside, timers;
    sl_stage_step_t steps[MAX_STEPS];
    size_t n_steps;
    struct { void (*fn)(void *, MDB_txn *, const sl_stage_event_t *); void *arg; } observers[MAX_OBSERVERS];
    size_t n_observers;
    sl_stage_ctx_t ctx;         /* stage thread: the event under way's */
    _Atomic int64_t next_timer; /* the earliest timer's due time (or earlier: then a look finds none) */
    uint64_t pend_timers_fired, pend_timers_orphaned; /* stage thread: this transaction's */
    uint64_t map_size;          /* stage thread */
    uv_rwlock_t resize_lock;    /* readers shared, the stage thread to grow the map */
    uint64_t cursor;            /* stage thread: the last event applied */
    uint64_t pos;               /* stage thread: the last event visited in the transaction under way */
    sl_arena_t arena;           /* stage thread: one event's messageId */
    sl_jindex_t ev_top, ev_context; /* stage thread: the members of the event under way and of its context */
    void *pass;                 /* stage thread: the pass of the transaction under way (replays) */

    uv_loop_t *loop;
    uv_thread_t thread;
    uv_timer_t timer;           /* waiters' deadlines */
    sl_stage_share_t share;     /* loop thread: its sleeps for the stage past max_lag_events */
    /* loop -> stage: jobs (pushed under mu), and the stage's wake-ups for what
     * mu guards (the log's durable end, a stop); closed when the thread ends */
    sl_handoff_t in;
    /* stage -> loop: jobs done, and wake-ups for read-your-writes waiters */
    sl_handoff_t done;
    sl_stage_job_t *jobs_waiting;          /* stage thread: taken from `in`, waiting for their backlog */
    uv_mutex_t mu;
    uint64_t log_durable;                  /* under mu */
    struct { uint64_t seq; int64_t ms; } samples[LAG_SAMPLES]; /* under mu: when the log reached seq */
    size_t n_samples;
    int stopping, hurry;                   /* under mu */
    _Atomic int exited;                    /* the thread is done: its last jobs are in `done` */
    int started;
    void (*stop_cb)(void *);
    void *stop_arg;
    sl_stage_waiter_t *waiters;            /* loop thread */
    _Atomic int n_waiting;                 /* waiters is not empty: the stage commits at once */

    _Atomic uint64_t applied;
    _Atomic uint64_t durable_applied;      /* applied, and that commit is on disk */
    uint64_t prev_commit_cursor;           /* stage thread: the cursor of the commit before the latest */
    struct {
        _Atomic uint64_t events, txns, set_aside, map_resizes, replayed;
        _Atomic uint64_t timers_fired, timers_orphaned;
        _Atomic uint64_t yields, yielded_us;
    } stats;
};

/* ---- small helpers ---------------------------------------------------------- */

static int meta_get(sl_stage_t *sg, MDB_txn *txn, const char *key, uint64_t *out)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    *out = 0;
    int rc = mdb_get(txn, sg->meta, &k, &v);
    if (rc == 0 && v.mv_size == 8) memcpy(out, v.mv_data, 8);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int meta_put(sl_stage_t *sg, MDB_txn *txn, const char *key, uint64_t value)
{
    MDB_val k = {strlen(key), (void *)key}, v = {8, &value};
    return mdb_put(txn, sg->meta, &k, &v, 0);
}

/* 1 when err, raised while applying one event or job, is that event's or
 * job's own problem rather than the environment's, which every one would
 * meet. */
static int own_error(int err)
{
    switch (err) {
    case MDB_MAP_FULL: case MDB_PANIC: case MDB_MAP_RESIZED: case MDB_READERS_FULL: case MDB_TLS_FULL:
    case MDB_BAD_TXN: case MDB_TXN_FULL: case SL_ENOMEM: case ENOMEM: case EIO: case ENOSPC: case EACCES:
    case EROFS:
        return 0;
    default:
        return 1;
    }
}

static void each_after_txn(sl_stage_t *sg, int ok)
{
    for (size_t i = 0; i < sg->n_steps; i++)
        if (sg->steps[i].after_txn) sg->steps[i].after_txn(sg->steps[i].arg, ok);
}

static void each_synced(sl_stage_t *sg, int all)
{
    for (size_t i = 0; i < sg->n_steps; i++)
        if (sg->steps[i].synced) sg->steps[i].synced(sg->steps[i].arg, all);
    uint64_t d = all ? sg->cursor : sg->prev_commit_cursor;
    if (d > atomic_load(&sg->durable_applied)) {
        atomic_store(&sg->durable_applied, d);
        if (sg->started) sl_handoff_wake(&sg->done); /* waiters */
    }
}

/* 1 when someone waits for the stage's next commit: a reader for a
 * position (loop thread), or a step's readers (the feed's consumers). */
static int awaited(sl_stage_t *sg)
{
    if (atomic_load(&sg->n_waiting)) return 1;
    for (size_t i = 0; i < sg->n_steps; i++)
        if (sg->steps[i].awaited && sg->steps[i].awaited(sg->steps[i].arg)) return 1;
    return 0;
}

static int64_t next_due(sl_stage_t *sg)
{
    int64_t due = atomic_load(&sg->next_timer);
    for (size_t i = 0; i < sg->n_steps; i++) {
        if (sg->steps[i].due == NULL) continue;
        int64_t d = sg->steps[i].due(sg->steps[i].arg);
        if (d < due) due = d;
    }
    return due;
}

/* ---- setup ------------------------------------------------------------------- */

sl_stage_t *sl_stage_new(sl_store_t *log, const sl_stage_options_t *opts)
{
    sl_stage_t *sg = calloc(1, sizeof(*sg));
    if (sg == NULL) return NULL;
    sg->log = log;
    sg->opts = *opts;
    if (sg->opts.max_events_per_txn == 0) sg->opts.max_events_per_txn = sg->opts.bulk ? 65536 : 8192;
    if ((sg->dir = strdup(opts->dir)) == NULL) {
        free(sg);
        return NULL;
    }
    sg->opts.dir = sg->dir;
    sl_arena_init(&sg->arena);
    if (sl_handoff_init(&sg->in, offsetof(sl_stage_job_t, next), NULL, NULL)) {
        free(sg->dir);
        free(sg);
        return NULL;
    }
    uv_mutex_init(&sg->mu);
    uv_rwlock_init(&sg->resize_lock);
    return sg;
}

int sl_stage_add_step(sl_stage_t *sg, const sl_stage_step_t *step)
{
    if (sg->n_steps == MAX_STEPS || sg->env || step->name == NULL || strlen(step->name) > 64) return SL_EINVAL;
    sl_stage_step_t st = *step;
    if (st.phase == 0) st.phase = SL_PHASE_RULES;
    size_t at = sg->n_steps;
    while (at > 0 && sg->steps[at - 1].phase > st.phase) {
        sg->steps[at] = sg->steps[at - 1];
        at--;
    }
    sg->steps[at] = st;
    sg->n_steps++;
    return 0;
}

int sl_stage_observe(sl_stage_t *sg, void (*fn)(void *arg, MDB_txn *txn, const sl_stage_event_t *ev), void *arg)
{
    if (sg->n_observers == MAX_OBSERVERS || sg->started) return SL_EINVAL;
    sg->observers[sg->n_observers].fn = fn;
    sg->observers[sg->n_observers++].arg = arg;
    return 0;
}

/* ---- durable timers ------------------------------------------------------------
 * Key: due (8, big-endian: the earliest first), the step's name (a length
 * byte, then its bytes), the entity (kind, 8-byte big-endian id), the name.
 * Value: empty. */

#define TIMER_KEY_MAX (8 + 1 + 64 + 9 + SL_STAGE_TIMER_NAME_MAX)

int sl_stage_timer_set(sl_stage_t *sg, MDB_txn *txn, const char *step, int64_t due, sl_entity_t entity,
                       const char *name, size_t name_len)
{
    unsigned char key[TIMER_KEY_MAX];
    size_t sn = strlen(step);
    if (sn > 64 || name_len > SL_STAGE_TIMER_NAME_MAX) return SL_EINVAL;
    sl_be64_put(key, (uint64_t)due);
    key[8] = (unsigned char)sn;
    memcpy(key + 9, step, sn);
    unsigned char *e = key + 9 + sn;
    e[0] = entity.kind;
    sl_be64_put(e + 1, entity.id);
    memcpy(e + 9, name, name_len);
    MDB_val k = {9 + sn + 9 + name_len, key}, v = {0, ""};
    int rc = mdb_put(txn, sg->timers, &k, &v, 0);
    if (rc) return rc;
    int64_t cur = atomic_load(&sg->next_timer);
    while (due < cur && !atomic_compare_exchange_weak(&sg->next_timer, &cur, due)) {
    }
    return 0;
}

static const sl_stage_step_t *step_named(const sl_stage_t *sg, const unsigned char *name, size_t n)
{
    for (size_t i = 0; i < sg->n_steps; i++)
        if (strlen(sg->steps[i].name) == n && memcmp(sg->steps[i].name, name, n) == 0) return &sg->steps[i];
    return NULL;
}

/* Runs the timers due by now (at most MAX_TIMERS_PER_TXN), then notes when
 * the next one is. Returns 0 or an LMDB / SL_ code; *ran gets 1 when it ran
 * or dropped any. */
static int run_timers(sl_stage_t *sg, MDB_txn *txn, int64_t now, int *ran)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = 0;
    for (int n = 0; n < MAX_TIMERS_PER_TXN; n++) {
        if ((rc = mdb_cursor_open(txn, sg->timers, &cur))) return rc;
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc == 0 && (k.mv_size < 8 || (int64_t)sl_be64_get(k.mv_data) > now)) rc = MDB_NOTFOUND;
        unsigned char key[TIMER_KEY_MAX];
        size_t klen = k.mv_size < sizeof(key) ? k.mv_size : sizeof(key);
        if (rc == 0) {
            memcpy(key, k.mv_data, klen);
            rc = mdb_cursor_del(cur, 0);
        }
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND) break;
        if (rc) return rc;
        *ran = 1;
        /* a key too short to hold what it says is dropped, as an orphan */
        size_t sn = klen > 8 ? key[8] : 0;
        const sl_stage_step_t *st = klen >= 9 + sn + 9 ? step_named(sg, key + 9, sn) : NULL;
        if (st == NULL || st->timer == NULL) {
            sg->pend_timers_orphaned++;
            continue;
        }
        const unsigned char *e = key + 9 + sn;
        sl_entity_t ent = {e[0], sl_be64_get(e + 1)};
        sg->pend_timers_fired++;
        if ((rc = st->timer(st->arg, txn, ent, (const char *)e + 9, klen - (9 + sn + 9),
                            (int64_t)sl_be64_get(key), now)))
            return rc;
    }
    if ((rc = mdb_cursor_open(txn, sg->timers, &cur))) return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    atomic_store(&sg->next_timer, rc == 0 && k.mv_size >= 8 ? (int64_t)sl_be64_get(k.mv_data) : INT64_MAX);
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* The log's durable end moved (writer thread). */
static void on_log_durable(void *arg, uint64_t seq)
{
    sl_stage_t *sg = arg;
    int64_t now = sl_now_ms();
    uv_mutex_lock(&sg->mu);
    sg->log_durable = seq;
    /* keep only what is not applied yet; the oldest sample is the lag's */
    uint64_t applied = atomic_load(&sg->applied);
    size_t k = 0;
    for (size_t i = 0; i < sg->n_samples; i++)
        if (sg->samples[i].seq > applied) sg->samples[k++] = sg->samples[i];
    sg->n_samples = k;
    if (k < LAG_SAMPLES) {
        sg->samples[k].seq = seq;
        sg->samples[k].ms = now;
        sg->n_samples++;
    }
    sl_handoff_wake(&sg->in);
    uv_mutex_unlock(&sg->mu);
}

int sl_stage_open(sl_stage_t *sg)
{
    MDB_txn *txn = NULL;
    int rc;
    int ro = sg->opts.read_only;
    if (!ro && (rc = sl_mkdir_p(sg->dir))) return rc;
    if ((rc = mdb_env_create(&sg->env))) goto fail;
    if ((rc = mdb_env_set_maxdbs(sg->env, 32))) goto fail;
    if ((rc = mdb_env_set_maxreaders(sg->env, 256))) goto fail;
    if (!ro && (rc = mdb_env_set_mapsize(sg->env, sg->opts.map_size_bytes))) goto fail;
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
    if (ro) flags |= MDB_RDONLY;
    else if (sg->opts.nosync || sg->opts.bulk) flags |= MDB_NOSYNC;
    else flags |= MDB_NOMETASYNC; /* the stage flushes meta pages itself, as the log's writer does */
    if ((rc = mdb_env_open(sg->env, sg->dir, flags, 0640))) goto fail;
    MDB_envinfo info;
    mdb_env_info(sg->env, &info);
    sg->map_size = info.me_mapsize;
    if ((rc = mdb_txn_begin(sg->env, NULL, ro ? MDB_RDONLY : 0, &txn))) goto fail;
    unsigned c = ro ? 0 : MDB_CREATE;
    if ((rc = mdb_dbi_open(txn, "stage", c, &sg->meta))) goto fail;
    if ((rc = mdb_dbi_open(txn, "aside", c | MDB_INTEGERKEY, &sg->aside))) goto fail;
    /* a read-only open of a store from before the stage kept timers: none */
    if ((rc = mdb_dbi_open(txn, "ptimers", c, &sg->timers)) == MDB_NOTFOUND && ro) rc = 0;
    if (rc) goto fail;
    /* the cursor first: a step's open may ask where the stage resumes (sl_stage_position) */
    if ((rc = meta_get(sg, txn, "applied", &sg->cursor))) goto fail;
    sg->pos = sg->cursor;
    for (size_t i = 0; i < sg->n_steps; i++)
        if (sg->steps[i].open && (rc = sg->steps[i].open(sg->steps[i].arg, txn, ro))) goto fail;
    rc = mdb_txn_commit(txn); /* even read-only: handles opened in it stay open */
    txn = NULL;
    if (rc) goto fail;
    atomic_store(&sg->applied, sg->cursor);
    atomic_store(&sg->durable_applied, sg->cursor);
    atomic_store(&sg->next_timer, sl_now_ms()); /* whatever fell due while the server was down runs now */
    sg->prev_commit_cursor = sg->cursor;
    if (!ro) {
        uint64_t durable = sl_store_durable_seq(sg->log);
        if (sg->cursor > durable) {
            /* derived from events the log no longer has: refuse rather than
             * number new events over them */
            SL_ERROR("the derived store in %s has applied the log up to event %llu, but the log ends at %llu: "
                     "run `sillage rebuild`", sg->dir, (unsigned long long)sg->cursor, (unsigned long long)durable);
            rc = SL_EINVAL;
            goto fail;
        }
        sg->log_durable = durable;
        sl_store_on_durable(sg->log, on_log_durable, sg);
    }
    return 0;
fail:
    if (txn) mdb_txn_abort(txn);
    if (sg->env) mdb_env_close(sg->env);
    sg->env = NULL;
    return rc;
}

/* ---- the stage's thread ---------------------------------------------------------- */

typedef struct {
    sl_stage_t *sg;
    MDB_txn *txn;
    uint64_t upto;              /* apply events up to this one */
    uint64_t last;              /* the last event visited */
    size_t n;                   /* events applied */
    uint64_t culprit;           /* out: the event whose step failed (0: none) */
    const char *culprit_step;
    const uint64_t *aside;      /* events to set aside in this transaction */
    const char *const *aside_why;
    size_t n_aside;
    MDB_txn *log_txn;           /* the log's read transaction of the slice (or job) under way */
    uint64_t from;              /* the next event to visit */
    size_t slice_end;           /* this slice of the log stops when n reaches it */
    int done;                   /* upto or max_events_per_txn reached */
} pass_t;

static int set_aside(sl_stage_t *sg, MDB_txn *txn, uint64_t seq, const char *why)
{
    MDB_val k = {8, &seq}, v = {strlen(why), (void *)why};
    return mdb_put(txn, sg->aside, &k, &v, 0);
}

/* Hands one event to every step. On a step's failure the culprit is noted
 * (the transaction is redone with the event set aside). */
static int apply_steps(pass_t *p, const char *json, size_t len, uint64_t seq)
{
    sl_stage_t *sg = p->sg;
    sl_arena_reset(&sg->arena);
    sl_jval_t root = sl_jroot_index(json, len, &sg->ev_top, "context", &sg->ev_context);
    if (sl_jtype(root) != SL_JOBJ) {
        p->culprit = seq;
        p->culprit_step = "stage (the stored event is not a JSON object)";
        return SL_EINVAL;
    }
    const char *mid = sl_jstr(sl_jindex_get(&sg->ev_top, "messageId"), &sg->arena, NULL);
    memset(&sg->ctx, 0, sizeof(sg->ctx));
    sl_stage_event_t ev = {.seq = seq, .json = json, .len = len, .root = root, .top = &sg->ev_top,
                           .context = &sg->ev_context, .message_id = mid ? mid : "", .ctx = &sg->ctx};
    for (size_t i = 0; i < sg->n_steps; i++) {
        if (sg->steps[i].apply == NULL) continue;
        int rc = sg->steps[i].apply(sg->steps[i].arg, p->txn, &ev);
        /* A record the step expected and did not find: the event's failure.
         * (Passed on as MDB_NOTFOUND, the log's reader took it for the log's
         * end and the pass ended there, every later event counted applied.) */
        if (rc == MDB_NOTFOUND) rc = SL_ENOTFOUND;
        if (rc) {
            p->culprit = seq;
            p->culprit_step = sg->steps[i].name;
            return rc;
        }
    }
    for (size_t i = 0; i < sg->n_observers; i++) sg->observers[i].fn(sg->observers[i].arg, p->txn, &ev);
    return 0;
}

/* The reason seq is set aside in this pass, or NULL. */
static const char *aside_in_pass(const pass_t *p, uint64_t seq)
{
    for (size_t i = 0; i < p->n_aside; i++)
        if (p->aside[i] == seq) return p->aside_why[i];
    return NULL;
}

static int apply_one(const char *json, size_t len, uint64_t seq, void *arg)
{
    pass_t *p = arg;
    sl_stage_t *sg = p->sg;
    if (seq > p->upto || p->n >= sg->opts.max_events_per_txn) { /* stop: not an error */
        p->done = 1;
        return 1;
    }
    if (p->n >= p->slice_end) return 1; /* the next slice goes on from here */
    p->last = seq;
    p->from = seq + 1;
    sg->pos = seq;
    const char *why = aside_in_pass(p, seq);
    if (why) return set_aside(sg, p->txn, seq, why);
    int rc = apply_steps(p, json, len, seq);
    if (rc == 0) p->n++;
    return rc;
}

typedef struct {
    pass_t *p;
    sl_stage_job_t *jobs;
    sl_stage_job_t *culprit_job;
    int64_t now;
    int ticked;
    int jobs_first;             /* catch-up: its job before the events; online: after them */
} txn_ctx_t;

/* The jobs, inside a read transaction of the log (a replay reads events). */
static int jobs_in_log(MDB_txn *log_txn, void *arg)
{
    txn_ctx_t *x = arg;
    x->p->log_txn = log_txn;
    int rc = 0;
    for (sl_stage_job_t *j = x->jobs; j && rc == 0; j = j->next)
        if (j->run && (rc = j->run(x->p->txn, j->arg))) x->culprit_job = j;
    x->p->log_txn = NULL;
    return rc;
}

/* One slice of the log's events, inside its own read transaction of the
 * log: a derived transaction of thousands of events never holds the log's
 * map (and the writer that would grow it) for long. */
static int slice(MDB_txn *log_txn, void *arg)
{
    pass_t *p = arg;
    p->log_txn = log_txn;
    int rc = sl_store_foreach_event_from(p->sg->log, log_txn, p->from, apply_one, p);
    p->log_txn = NULL;
    return rc;
}

/* One transaction: jobs, events (read from the log a slice at a time),
 * timers, the cursor. */
static int one_txn(txn_ctx_t *x)
{
    pass_t *p = x->p;
    sl_stage_t *sg = p->sg;
    MDB_txn *txn = NULL;
    int rc = mdb_txn_begin(sg->env, NULL, 0, &txn);
    if (rc) return rc;
    p->txn = txn;
    sg->pass = p;
    sg->pos = sg->cursor;
    if (x->jobs_first && x->jobs && (rc = sl_store_read(sg->log, jobs_in_log, x))) goto fail;
    p->from = sg->cursor + 1;
    while (p->upto > sg->cursor && !p->done) {
        p->slice_end = p->n + SLICE_EVENTS;
        rc = sl_store_read(sg->log, slice, p);
        if (rc == 0) break; /* the log holds nothing further */
        if (rc != 1) goto fail;
    }
    /* Online, a job (an erasure, a replay, a rule reload) follows every event
     * that was durable when it was submitted: stage_main() hands jobs over
     * only with a backlog this transaction applies whole. */
    if (!x->jobs_first && x->jobs && (rc = sl_store_read(sg->log, jobs_in_log, x))) goto fail;
    /* events erased from the log leave gaps: the cursor still moves past them */
    uint64_t cursor = p->n >= sg->opts.max_events_per_txn ? p->last : p->upto;
    if (cursor < sg->cursor) cursor = sg->cursor;
    x->ticked = 0;
    if (atomic_load(&sg->next_timer) <= x->now && (rc = run_timers(sg, txn, x->now, &x->ticked))) goto fail;
    for (size_t i = 0; i < sg->n_steps; i++) {
        if (sg->steps[i].tick == NULL || sg->steps[i].due(sg->steps[i].arg) > x->now) continue;
        if ((rc = sg->steps[i].tick(sg->steps[i].arg, txn, x->now, &x->ticked))) goto fail;
    }
    if (cursor != sg->cursor && (rc = meta_put(sg, txn, "applied", cursor))) goto fail;
    if ((rc = mdb_txn_commit(txn))) {
        txn = NULL;
        goto fail;
    }
    p->last = cursor;
    return 0;
fail:
    if (txn) mdb_txn_abort(txn);
    return rc;
}

static int grow_map(sl_stage_t *sg)
{
    int rc = sl_lmdb_grow(sg->env, &sg->resize_lock, &sg->map_size, sg->opts.map_size_max_bytes, "derived store");
    if (rc == 0) atomic_fetch_add(&sg->stats.map_resizes, 1);
    return rc;
}

static sl_stage_job_t *unlink_job(sl_stage_job_t *list, sl_stage_job_t *j)
{
    sl_stage_job_t **p = &list;
    while (*p && *p != j) p = &(*p)->next;
    if (*p) *p = j->next;
    j->next = NULL;
    return list;
}

/* Hands jobs back to the loop thread, the whole list at once. */
static void deliver(sl_stage_t *sg, sl_stage_job_t *list)
{
    if (!sg->started) return; /* offline (sl_stage_catch_up): the caller looks at rc */
    sl_handoff_push_list(&sg->done, list); /* open until the thread has exited */
}

static void append_jobs(sl_stage_job_t **list, sl_stage_job_t *more)
{
    while (*list) list = &(*list)->next;
    *list = more;
}

/* Applies what is durable up to upto, with jobs; redoes the transaction
 * without an event or job that cannot be applied. *ticked (may be NULL):
 * whether timers ran. Returns 0 or the environment's error (nothing
 * applied then). */
static int run_txn(sl_stage_t *sg, sl_stage_job_t **jobs, uint64_t upto, int *ticked, int jobs_first)
{
    uint64_t aside[MAX_ASIDE_PER_TXN];
    char whys[MAX_ASIDE_PER_TXN][160];
    const char *why_p[MAX_ASIDE_PER_TXN];
    size_t n_aside = 0;
    for (;;) {
        pass_t p = {.sg = sg, .upto = upto, .aside = aside, .aside_why = why_p, .n_aside = n_aside};
        txn_ctx_t x = {.p = &p, .jobs = *jobs, .now = sl_now_ms(), .jobs_first = jobs_first};
        int rc = one_txn(&x);
        if (rc == 0) {
            each_after_txn(sg, 1);
            atomic_fetch_add(&sg->stats.timers_fired, sg->pend_timers_fired);
            atomic_fetch_add(&sg->stats.timers_orphaned, sg->pend_timers_orphaned);
            sg->pend_timers_fired = sg->pend_timers_orphaned = 0;
            atomic_fetch_add(&sg->stats.events, p.n);
            atomic_fetch_add(&sg->stats.txns, 1);
            atomic_fetch_add(&sg->stats.set_aside, n_aside);
            sg->cursor = p.last;
            if (ticked) *ticked = x.ticked;
            return 0;
        }
        each_after_txn(sg, 0);
        sg->pend_timers_fired = sg->pend_timers_orphaned = 0;
        atomic_store(&sg->next_timer, sl_now_ms()); /* look again: the aborted transaction's timers are gone */
        if (rc == MDB_MAP_FULL && grow_map(sg) == 0) continue;
        /* an event's failure first: a replay job fails through its event */
        if (p.culprit && own_error(rc) && n_aside < MAX_ASIDE_PER_TXN) {
            snprintf(whys[n_aside], sizeof(whys[0]), "%s: %s", p.culprit_step, sl_strerror(rc));
            SL_WARN("event %llu set aside (%s); the stage goes on", (unsigned long long)p.culprit, whys[n_aside]);
            why_p[n_aside] = whys[n_aside];
            aside[n_aside++] = p.culprit;
            continue;
        }
        if (x.culprit_job && own_error(rc)) {
            x.culprit_job->rc = rc;
            *jobs = unlink_job(*jobs, x.culprit_job);
            deliver(sg, x.culprit_job);
            continue;
        }
        return rc;
    }
}

static void stage_main(void *arg)
{
    sl_stage_t *sg = arg;
    sl_thread_name("sl-stage");
    int need_sync = 0; /* a commit's meta page is not flushed yet */
    uint64_t last_commit_ns = 0; /* sl_mono_ns() */
    uint64_t interval_ns = (uint64_t)sg->opts.commit_interval_ms * 1000000u;
    if (sg->opts.nice > 0) {
        /* this thread only (Linux: a thread's nice value is its own) */
        id_t tid = (id_t)syscall(SYS_gettid);
        errno = 0;
        int cur = getpriority(PRIO_PROCESS, tid);
        if ((cur != -1 || errno == 0) && setpriority(PRIO_PROCESS, tid, cur + sg->opts.nice) != 0)
            SL_WARN("the stage could not lower its priority: %s", strerror(errno));
    }
    for (;;) {
        uint64_t upto;
        int stopping, hurry;
        for (;;) {
            uv_mutex_lock(&sg->mu);
            /* taken under mu, which each push was made under: every job
             * taken was submitted when the log's durable end was at most upto */
            append_jobs(&sg->jobs_waiting, sl_handoff_take_all(&sg->in));
            upto = sg->log_durable;
            stopping = sg->stopping, hurry = sg->hurry;
            int go = sg->jobs_waiting || upto > sg->cursor || (stopping && (hurry || !need_sync));
            uint64_t ns = 0, held = 0; /* held: events wait that long for the commit interval */
            if (go && interval_ns && !sg->jobs_waiting && !stopping && upto - sg->cursor < sg->opts.max_events_per_txn &&
                !awaited(sg)) {
                uint64_t t = sl_mono_ns();
                if (t < last_commit_ns + interval_ns) held = last_commit_ns + interval_ns - t, go = 0;
            }
            if (!go) {
                int64_t due = next_due(sg), now = sl_now_ms();
                /* need_sync: nothing to do, flush the last commit first
                 * (events held: their commit flushes it) */
                go = due <= now || (need_sync && !held);
                if (!go) ns = due - now >= 1000 ? 1000000000ULL : (uint64_t)(due - now) * 1000000ULL;
                if (!go && held && held < ns) ns = held;
            }
            uv_mutex_unlock(&sg->mu);
            if (go) break;
            sl_handoff_wait(&sg->in, ns); /* a job, the log's durable end, a stop: each wakes it */
        }
        /* a job goes with the transaction that reaches what was durable when
         * it came (a transaction applies at least max_events_per_txn events
         * past the cursor, or all there is); later ones wait their turn */
        sl_stage_job_t *jobs = NULL, **tail = &jobs;
        while (sg->jobs_waiting && sg->jobs_waiting->after_seq <= sg->cursor + sg->opts.max_events_per_txn) {
            *tail = sg->jobs_waiting;
            sg->jobs_waiting = sg->jobs_waiting->next;
            tail = &(*tail)->next;
            *tail = NULL;
        }

        int work = jobs || upto > sg->cursor || next_due(sg) <= sl_now_ms();
        if (stopping && (hurry || upto <= sg->cursor) && jobs == NULL) work = 0;
        if (!work) {
            if (need_sync) {
                int rc = mdb_env_sync(sg->env, 1);
                if (rc) SL_ERROR("flushing the derived store failed: %s", sl_strerror(rc));
                else each_synced(sg, 1);
                need_sync = 0;
                continue;
            }
            if (stopping) break;
            continue;
        }
        uint64_t before = sg->cursor;
        int rc = run_txn(sg, &jobs, upto, NULL, 0);
        if (rc == 0) {
            sg->prev_commit_cursor = before;
            if (sg->cursor > before) last_commit_ns = sl_mono_ns(); /* the interval spaces commits of events */
        }
        if (rc) {
            SL_ERROR("the stage could not apply events %llu..%llu: %s; retrying in a second",
                     (unsigned long long)before + 1, (unsigned long long)upto, sl_strerror(rc));
            for (sl_stage_job_t *j = jobs; j; j = j->next) j->rc = rc;
            deliver(sg, jobs);
            uv_mutex_lock(&sg->mu);
            int stop = sg->stopping;
            uv_mutex_unlock(&sg->mu);
            if (!stop) sl_handoff_wait(&sg->in, 1000000000ULL); /* a stop (or a job) cuts it short */
            continue;
        }
        int after = 0;
        for (sl_stage_job_t *j = jobs; j; j = j->next) after |= j->after_commit != NULL;
        if (sg->opts.nosync) {
            each_synced(sg, 1);
        } else if (after) {
            /* what a job does next (erasure deletes log events) must follow
             * a commit that is on disk */
            int src = mdb_env_sync(sg->env, 1);
            if (src) SL_ERROR("flushing the derived store failed: %s", sl_strerror(src));
            else each_synced(sg, 1);
            need_sync = src != 0;
        } else {
            if (need_sync) each_synced(sg, 0); /* this commit's data flush carried the last meta page */
            need_sync = 1;
        }
        for (sl_stage_job_t *j = jobs; j; j = j->next) {
            j->rc = 0;
            if (j->after_commit) j->rc = need_sync && !sg->opts.nosync ? EIO : j->after_commit(j->arg);
        }
        atomic_store(&sg->applied, sg->cursor); /* readers' waiters follow the flush: each_synced() */
        deliver(sg, jobs);
    }
    /* jobs a hurried stop left behind: not run (an erasure that would miss
     * events acknowledged before it must not say it is done); from now on a
     * submit is refused */
    sl_handoff_close(&sg->in, NULL);
    append_jobs(&sg->jobs_waiting, sl_handoff_take_all(&sg->in));
    sl_stage_job_t *left = sg->jobs_waiting;
    sg->jobs_waiting = NULL;
    for (sl_stage_job_t *j = left; j; j = j->next) j->rc = SL_ESHUTDOWN;
    deliver(sg, left);
    atomic_store(&sg->exited, 1);
    sl_handoff_wake(&sg->done);
}

/* ---- the loop thread ------------------------------------------------------------ */

static void wake_waiters(sl_stage_t *sg, int64_t now)
{
    uint64_t applied = atomic_load(&sg->durable_applied);
    sl_stage_waiter_t *w = sg->waiters;
    while (w) {
        sl_stage_waiter_t *next = w->next;
        int reached = w->pos <= applied;
        if (reached || w->deadline_ms <= now) {
            sl_stage_cancel(sg, w);
            w->cb(w, reached);
        }
        w = next;
    }
    if (sg->waiters == NULL && sg->started) uv_timer_stop(&sg->timer);
}

static void on_timer(uv_timer_t *t)
{
    sl_stage_t *sg = t->data;
    wake_waiters(sg, sl_now_ms());
}

/* The last handle closed (the timer's close came first). */
static void done_closed(sl_handoff_t *h)
{
    sl_stage_t *sg = h->data;
    if (sg->stop_cb) sg->stop_cb(sg->stop_arg);
}

/* Loop thread: jobs done, in the stage's order; waiters. */
static void on_done(sl_handoff_t *h)
{
    sl_stage_t *sg = h->data;
    int exited = atomic_load(&sg->exited); /* before the take: it then holds the thread's last jobs */
    sl_stage_job_t *list = sl_handoff_take_all(h);
    while (list) {
        sl_stage_job_t *next = list->next;
        list->next = NULL;
        if (list->done) list->done(list);
        list = next;
    }
    wake_waiters(sg, sl_now_ms());
    if (exited && sg->started) {
        sg->started = 0;
        uv_thread_join(&sg->thread);
        /* the last waiters learn the stage is gone */
        while (sg->waiters) {
            sl_stage_waiter_t *w = sg->waiters;
            sl_stage_cancel(sg, w);
            w->cb(w, w->pos <= atomic_load(&sg->durable_applied));
        }
        uv_close((uv_handle_t *)&sg->timer, NULL);
        sl_stage_share_stop(&sg->share);
        sl_handoff_close(&sg->done, done_closed);
    }
}

/* ---- the stage's share of the core ----
 * The stage thread runs below the loop (opts.nice): on a saturated core it
 * would get nothing and fall behind without bound. Past max_lag_events the
 * loop thread, after each iteration, sleeps as long as it ran since its last
 * sleep: the stage, runnable, then gets about a quarter of the core beside
 * the loop and the log's writer (bench/RESULTS.md measured a third and a
 * half too). Below the bound it costs one comparison per iteration. */

#define YIELD_MIN_NS 50000     /* shorter owed sleeps wait to add up */
#define YIELD_MAX_NS 10000000  /* one sleep never holds the loop longer */

static uint64_t thread_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void yield_cb(uv_check_t *h)
{
    sl_stage_share_t *sh = h->data;
    sl_stage_t *sg = sh->sg;
    uint64_t durable = sl_store_durable_seq(sg->log), applied = atomic_load(&sg->applied);
    if (durable <= applied || durable - applied <= sg->opts.max_lag_events) {
        sh->from = 0; /* within the bound: nothing owed */
        return;
    }
    uint64_t cpu = thread_cpu_ns();
    if (sh->from == 0) { /* past the bound from now on */
        sh->from = cpu;
        return;
    }
    uint64_t owed = cpu - sh->from;
    if (owed < YIELD_MIN_NS) return;
    if (owed > YIELD_MAX_NS) owed = YIELD_MAX_NS;
    struct timespec t = {(time_t)(owed / 1000000000u), (long)(owed % 1000000000u)};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
    atomic_fetch_add(&sg->stats.yields, 1);
    atomic_fetch_add(&sg->stats.yielded_us, owed / 1000);
    sh->from = thread_cpu_ns();
}

void sl_stage_share_start(sl_stage_t *sg, uv_loop_t *loop, sl_stage_share_t *sh)
{
    sh->sg = sg;
    sh->from = 0;
    uv_check_init(loop, &sh->check);
    sh->check.data = sh;
    if (sg->opts.max_lag_events) {
        uv_check_start(&sh->check, yield_cb);
        uv_unref((uv_handle_t *)&sh->check); /* keeps no loop alive */
    }
}

void sl_stage_share_stop(sl_stage_share_t *sh)
{
    uv_close((uv_handle_t *)&sh->check, NULL);
}

int sl_stage_start(sl_stage_t *sg, uv_loop_t *loop)
{
    if (sg->opts.read_only || sg->env == NULL) return SL_EINVAL;
    sg->loop = loop;
    sg->done.data = sg;
    int rc = sl_handoff_init(&sg->done, offsetof(sl_stage_job_t, next), loop, on_done);
    if (rc) return rc;
    uv_timer_init(loop, &sg->timer);
    sg->timer.data = sg;
    sl_stage_share_start(sg, loop, &sg->share);
    if ((rc = uv_thread_create(&sg->thread, stage_main, sg))) {
        sl_handoff_close(&sg->done, NULL);
        uv_close((uv_handle_t *)&sg->timer, NULL);
        sl_stage_share_stop(&sg->share);
        return rc;
    }
    sg->started = 1;
    return 0;
}

void sl_stage_stop(sl_stage_t *sg, int hurry, void (*cb)(void *), void *arg)
{
    if (sg->stop_cb && sg->started) { /* again: only hurry it */
        uv_mutex_lock(&sg->mu);
        sg->hurry |= hurry;
        sl_handoff_wake(&sg->in);
        uv_mutex_unlock(&sg->mu);
        return;
    }
    sg->stop_cb = cb;
    sg->stop_arg = arg;
    if (!sg->started) {
        if (cb) cb(arg);
        return;
    }
    uv_mutex_lock(&sg->mu);
    sg->stopping = 1;
    sg->hurry = hurry;
    sl_handoff_wake(&sg->in);
    uv_mutex_unlock(&sg->mu);
}

void sl_stage_free(sl_stage_t *sg)
{
    if (sg == NULL) return;
    if (sg->env) mdb_env_close(sg->env);
    sl_arena_free(&sg->arena);
    sl_handoff_destroy(&sg->in);
    sl_handoff_destroy(&sg->done);
    uv_mutex_destroy(&sg->mu);
    uv_rwlock_destroy(&sg->resize_lock);
    free(sg->dir);
    free(sg);
}

int sl_stage_submit(sl_stage_t *sg, sl_stage_job_t *job)
{
    if (!sg->started) return SL_ESHUTDOWN;
    job->rc = 0;
    uv_mutex_lock(&sg->mu);
    int rc = SL_ESHUTDOWN;
    if (!(sg->stopping && sg->hurry)) {
        job->after_seq = sg->log_durable;
        rc = sl_handoff_push(&sg->in, job); /* under mu: see stage_main(); SL_ESHUTDOWN once the thread ended */
    }
    uv_mutex_unlock(&sg->mu);
    return rc;
}

void sl_stage_wait(sl_stage_t *sg, sl_stage_waiter_t *w, uint64_t pos, int64_t timeout_ms)
{
    w->pos = pos;
    w->deadline_ms = sl_now_ms() + timeout_ms;
    if (pos <= atomic_load(&sg->durable_applied) || !sg->started) {
        w->prev = w->next = NULL;
        w->cb(w, pos <= atomic_load(&sg->durable_applied));
        return;
    }
    w->prev = NULL;
    w->next = sg->waiters;
    if (sg->waiters) sg->waiters->prev = w;
    sg->waiters = w;
    if (!atomic_exchange(&sg->n_waiting, 1)) sl_handoff_wake(&sg->in); /* events held for the commit interval go now */
    if (!uv_is_active((uv_handle_t *)&sg->timer)) uv_timer_start(&sg->timer, on_timer, 10, 10);
}

void sl_stage_cancel(sl_stage_t *sg, sl_stage_waiter_t *w)
{
    if (w->prev) w->prev->next = w->next;
    else if (sg->waiters == w) sg->waiters = w->next;
    else return; /* not waiting */
    if (w->next) w->next->prev = w->prev;
    w->prev = w->next = NULL;
    if (sg->waiters == NULL) atomic_store(&sg->n_waiting, 0);
}

uint64_t sl_stage_position(const sl_stage_t *sg) { return sg->pos; }

uint64_t sl_stage_applied(const sl_stage_t *sg)
{
    return atomic_load(&sg->applied);
}

sl_store_t *sl_stage_log(const sl_stage_t *sg) { return sg->log; }

uint64_t sl_stage_durable_applied(const sl_stage_t *sg)
{
    return atomic_load(&sg->durable_applied);
}

/* ---- readers ----------------------------------------------------------------- */

typedef struct {
    sl_stage_t *sg;
    MDB_txn *txn;
    int (*cb)(MDB_txn *, MDB_txn *, void *);
    void *arg;
} read_ctx_t;

static int read_with_log(MDB_txn *log_txn, void *arg)
{
    read_ctx_t *r = arg;
    return r->cb(r->txn, log_txn, r->arg);
}

int sl_stage_read(sl_stage_t *sg, int want_log, int (*cb)(MDB_txn *txn, MDB_txn *log_txn, void *arg), void *arg)
{
    MDB_txn *txn;
    uv_rwlock_rdlock(&sg->resize_lock);
    int rc = mdb_txn_begin(sg->env, NULL, MDB_RDONLY, &txn);
    if (rc == MDB_MAP_RESIZED) { /* another process grew the map */
        mdb_env_set_mapsize(sg->env, 0);
        rc = mdb_txn_begin(sg->env, NULL, MDB_RDONLY, &txn);
    }
    if (rc) {
        uv_rwlock_rdunlock(&sg->resize_lock);
        return rc;
    }
    if (want_log) {
        read_ctx_t r = {sg, txn, cb, arg};
        rc = sl_store_read(sg->log, read_with_log, &r);
    } else {
        rc = cb(txn, NULL, arg);
    }
    mdb_txn_abort(txn);
    uv_rwlock_rdunlock(&sg->resize_lock);
    return rc;
}

int sl_stage_backup(sl_stage_t *sg, int dirfd)
{
    return sl_lmdb_backup(sg->env, dirfd, &sg->resize_lock);
}

typedef struct {
    sl_stage_t *sg;
    size_t limit;
    int (*cb)(uint64_t, const char *, void *);
    void *arg;
} aside_ctx_t;

static int list_aside(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    aside_ctx_t *a = arg;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, a->sg->aside, &cur);
    if (rc) return rc;
    char why[512];
    size_t n = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && n < a->limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT), n++) {
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        size_t l = v.mv_size < sizeof(why) - 1 ? v.mv_size : sizeof(why) - 1;
        memcpy(why, v.mv_data, l);
        why[l] = '\0';
        int r = a->cb(seq, why, a->arg);
        if (r) {
            rc = r;
            break;
        }
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_stage_set_aside(sl_stage_t *sg, size_t limit, int (*cb)(uint64_t seq, const char *reason, void *arg),
                       void *arg)
{
    aside_ctx_t a = {sg, limit, cb, arg};
    return sl_stage_read(sg, 0, list_aside, &a);
}

/* ---- replaying events set aside -------------------------------------------------- */

/* A job of the stage's transaction: each event set aside from r->from on
 * goes through the steps again. The job may be redone (after one of them
 * failed again): it starts afresh, and the events that failed in an earlier
 * pass are in the pass's list, kept aside with their new reason. */
static int replay_run(MDB_txn *txn, void *arg)
{
    sl_stage_replay_t *r = arg;
    sl_stage_t *sg = r->sg;
    pass_t *p = sg->pass;
    r->replayed = r->failed = r->gone = 0;
    r->more = 0;
    size_t cap = r->limit ? r->limit : 1000, n = 0;
    uint64_t *seqs = malloc(cap * sizeof(*seqs));
    if (seqs == NULL) return SL_ENOMEM;
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t from = r->from;
    k = (MDB_val){8, &from};
    int rc = mdb_cursor_open(txn, sg->aside, &cur);
    if (rc) goto out;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        if (r->to && seq > r->to) break;
        if (n == cap) {
            r->more = 1;
            break;
        }
        seqs[n++] = seq;
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND) goto out;
    rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *why = aside_in_pass(p, seqs[i]);
        if (why) { /* failed again: it stays, with the new reason */
            rc = set_aside(sg, txn, seqs[i], why);
            r->failed++;
            continue;
        }
        /* the transaction can hold only so many failures: the rest waits */
        if (p->n_aside >= MAX_ASIDE_PER_TXN / 2) {
            r->more = 1;
            break;
        }
        MDB_val ev, key = {8, &seqs[i]};
        rc = sl_store_event_get(sg->log, p->log_txn, seqs[i], &ev);
        if (rc == MDB_NOTFOUND) { /* erased from the log since */
            r->gone++;
            rc = mdb_del(txn, sg->aside, &key, NULL);
            continue;
        }
        if (rc) break;
        if ((rc = apply_steps(p, ev.mv_data, ev.mv_size, seqs[i]))) break; /* redone without it */
        r->replayed++;
        rc = mdb_del(txn, sg->aside, &key, NULL);
    }
out:
    free(seqs);
    return rc;
}

static void replay_counted(sl_stage_job_t *job)
{
    sl_stage_replay_t *r = (sl_stage_replay_t *)job;
    if (job->rc == 0) atomic_fetch_add(&r->sg->stats.replayed, r->replayed);
    r->done(r);
}

int sl_stage_replay(sl_stage_t *sg, sl_stage_replay_t *r)
{
    r->sg = sg;
    r->job = (sl_stage_job_t){.run = replay_run, .done = replay_counted, .arg = r};
    return sl_stage_submit(sg, &r->job);
}

void sl_stage_get_stats(sl_stage_t *sg, sl_stage_stats_t *o)
{
    memset(o, 0, sizeof(*o));
    o->applied = atomic_load(&sg->applied);
    int64_t now = sl_now_ms();
    uv_mutex_lock(&sg->mu);
    o->log_durable = sg->log_durable;
    for (size_t i = 0; i < sg->n_samples; i++)
        if (sg->samples[i].seq > o->applied) {
            o->lag_ms = now - sg->samples[i].ms;
            break;
        }
    uv_mutex_unlock(&sg->mu);
    o->lag_events = o->log_durable > o->applied ? o->log_durable - o->applied : 0;
    if (o->lag_events == 0) o->lag_ms = 0;
    o->events_applied = atomic_load(&sg->stats.events);
    o->txns = atomic_load(&sg->stats.txns);
    o->set_aside = atomic_load(&sg->stats.set_aside);
    o->map_resizes = atomic_load(&sg->stats.map_resizes);
    o->replayed = atomic_load(&sg->stats.replayed);
    o->timers_fired = atomic_load(&sg->stats.timers_fired);
    o->timers_orphaned = atomic_load(&sg->stats.timers_orphaned);
    o->yields = atomic_load(&sg->stats.yields);
    o->yielded_us = atomic_load(&sg->stats.yielded_us);
}

void sl_stage_metrics(void *arg, sl_buf_t *b)
{
    sl_stage_stats_t s;
    sl_stage_get_stats(arg, &s);
    sl_metric_u64(b, "gauge", "sillage_stage_applied_seq", "The last event of the log the stage applied.", s.applied);
    sl_metric_u64(b, "gauge", "sillage_stage_lag_events", "Durable events of the log not applied yet.", s.lag_events);
    sl_metric_f64(b, "gauge", "sillage_stage_lag_seconds", "How long the oldest unapplied durable event has waited.",
                  (double)s.lag_ms / 1000);
    sl_metric_u64(b, "counter", "sillage_stage_events_total", "Events applied by the stage.", s.events_applied);
    sl_metric_u64(b, "counter", "sillage_stage_commits_total", "Transactions of the derived environment.", s.txns);
    sl_metric_u64(b, "counter", "sillage_stage_set_aside_total",
                  "Events the stage could not apply, set aside with the reason (GET /v1/admin/set-aside).",
                  s.set_aside);
    sl_metric_u64(b, "counter", "sillage_stage_replayed_total",
                  "Events set aside, then applied by a replay (POST /v1/admin/set-aside/replay).", s.replayed);
    sl_metric_u64(b, "counter", "sillage_stage_map_resizes_total", "Times the derived environment's map grew.",
                  s.map_resizes);
    sl_metric_u64(b, "counter", "sillage_stage_timers_fired_total",
                  "Durable timers that came due and ran (every step's: trigger rules, computed fields).", s.timers_fired);
    sl_metric_u64(b, "counter", "sillage_stage_timers_orphaned_total",
                  "Durable timers of a step no longer registered, dropped when due.", s.timers_orphaned);
    sl_metric_u64(b, "counter", "sillage_stage_yields_total",
                  "Times the loop thread slept to leave the core to the stage, past limits.max_stage_lag.", s.yields);
    sl_metric_f64(b, "counter", "sillage_stage_yield_seconds_total", "Time the loop thread slept for the stage.",
                  (double)s.yielded_us / 1e6);
}

int sl_stage_catch_up(sl_stage_t *sg, sl_stage_job_t *first, uint64_t upto,
                      void (*progress)(uint64_t applied, void *arg), void *arg)
{
    if (sg->started || sg->opts.read_only) return SL_EINVAL;
    if (first) first->next = NULL;
    for (;;) {
        int ticked = 0;
        sl_stage_job_t *jobs = first, *job = first;
        int due = next_due(sg) <= sl_now_ms();
        if (first == NULL && sg->cursor >= upto && !due) break;
        first = NULL;
        int rc = run_txn(sg, &jobs, upto, &ticked, 1);
        if (rc == 0 && job && job->rc) rc = job->rc; /* it failed alone */
        if (rc == 0 && job && job->after_commit) rc = job->after_commit(job->arg);
        if (rc) return rc;
        atomic_store(&sg->applied, sg->cursor);
        if (progress) progress(sg->cursor, arg);
        /* timers: until none is due any more (each tick handles a bounded number) */
        if (sg->cursor >= upto && !ticked) break;
    }
    int rc = sg->opts.nosync && !sg->opts.bulk ? 0 : mdb_env_sync(sg->env, 1);
    if (rc == 0) {
        each_synced(sg, 1);
        atomic_store(&sg->durable_applied, sg->cursor);
    }
    return rc;
}
