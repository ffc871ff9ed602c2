/* sl_store.h - the LMDB store and its single writer thread.
 *
 * Layout (named databases in one environment under data_dir):
 *   events  u64 seq -> stored message (compact JSON), appended with MDB_APPEND;
 *           once the store holds 4,000 events, compressed with zstd and a
 *           dictionary trained on them (meta "zdict"); readers get the JSON
 *   msgids  u64 seq -> {i64 received_ms, u128 hash(source, messageId)}: the
 *           dedupe log, appended in the same transaction as the event
 *   meta    text key -> value (schema version, hash seed)
 *
 * Every write on the hot path is an append to an integer key, so a commit
 * dirties a few pages at the right edge of each B-tree whatever the batch
 * size. Dedupe lookups go to an in-memory table rebuilt from the tail of
 * the msgids log at open (only the last dedupe window is read).
 *
 * Threads: sl_store_submit() is called from the event loop thread; the writer
 * thread takes every pending batch, commits them in one transaction (group
 * commit), then hands them back to the loop thread, where each batch's done
 * callback runs, in the order the writer finished them. Both ways go through
 * an sl_handoff_t (sl_common.h): the writer sleeps on its condition variable
 * only when nothing is queued, and one uv_async wake-up carries every batch
 * finished before the loop took the last ones. Nothing here calls a loop
 * function from the writer thread except uv_async_send().
 */
#ifndef SL_STORE_H
#define SL_STORE_H

#include "sl_common.h"
#include <stddef.h>
#include <stdint.h>
#include <lmdb.h>
#include <uv.h>

typedef struct sl_store_s sl_store_t;

/* The outcome of one message, set by the writer. */
enum sl_store_status {
    SL_STORE_PENDING = 0,
    SL_STORE_STORED,     /* appended and durable */
    SL_STORE_DUPLICATE   /* same (source, messageId) within the window: not stored again */
};

typedef struct sl_store_msg_s {
    const char *json;       /* the message to store; owned by the caller */
    size_t json_len;
    sl_hash128_t dedupe;    /* sl_store_dedupe_key() of (source, messageId) */
    int64_t received_ms;
    int status;             /* out: enum sl_store_status */
    uint64_t seq;           /* out: the event's sequence number when stored */
    void *meta;             /* the caller's */
} sl_store_msg_t;

typedef struct sl_store_batch_s sl_store_batch_t;
/* Runs on the loop thread once the batch is committed (rc == 0) or failed
 * (rc < 0: SL_ESTORE, or an LMDB/errno code). The batch and its messages are
 * the caller's again from this point. */
typedef void (*sl_store_done_cb)(sl_store_batch_t *batch);

struct sl_store_batch_s {
    sl_store_msg_t *msgs;
    size_t n_msgs;
    sl_store_done_cb done;
    void *data;             /* the caller's */
    int rc;                 /* out */
    int failed_alone;       /* out: rc is this batch's own failure (its job refused
                             * it); the batches committed with it were not affected.
                             * Otherwise a failure is the commit's. */
    /* job (optional) runs inside the writer's transaction, before the batch's
     * messages if it has any (erasure; a NATS consumer position stored in the
     * same commit as the events it delivered). It returns 0, keeping its own result in arg, or
     * an error, which fails its batch alone unless it is the environment's (disk,
     * memory, map size): the commit is then retried without that batch. It may run more than once
     * (the commit is retried after the map grows), so it must start afresh. */
    int (*job)(MDB_txn *txn, void *arg);
    void *job_arg;
    sl_store_batch_t *next; /* private to the store */
    struct sl_store_port_s *port; /* private: where its done callback runs */
};

typedef struct sl_store_options_s {
    const char *data_dir;
    uint64_t map_size_bytes;
    uint64_t map_size_max_bytes;
    int nosync;                 /* durability "os": skip fsync */
    int64_t dedupe_window_ms;
    size_t dedupe_max_ids;      /* bound of the dedupe table (0: 4,000,000) */
    size_t max_queue_messages;  /* bound of the commit queue */
    int read_only;              /* export/backup: no writer, no dedupe table */
} sl_store_options_t;

/* The log's durable end: every event up to sl_store_durable_seq() is on
 * disk (with durability "os": committed). Only durable events may be
 * derived from -- a crash can take back the others, and their numbers would
 * be given again. cb(arg, seq) runs on the writer thread each time the end
 * moves; register (at most 4) before sl_store_start(). */
void sl_store_on_durable(sl_store_t *st, void (*cb)(void *arg, uint64_t seq), void *arg);
uint64_t sl_store_durable_seq(const sl_store_t *st);

/* Erasure: deletes events seqs[0..n) (absent ones are skipped) in write
 * transactions of their own, SL_STORE_ERASE_SLICE events each, so that the
 * writer is never held for long whatever n is, and flushes; from any thread
 * but the writer's, returning once all are gone. Their numbers are never
 * given again. Returns 0 or an LMDB error (the slices before it stay
 * deleted: callers record what to erase before, and erase again after a
 * crash or a failure -- deleting is idempotent). */
#define SL_STORE_ERASE_SLICE 4096
int sl_store_erase_events(sl_store_t *st, const uint64_t *seqs, size_t n);
/* The same inside txn, a write transaction on the log (a job's). */
int sl_store_erase_events_txn(sl_store_t *st, MDB_txn *txn, const uint64_t *seqs, size_t n);

/* 1 when the environment holds a non-empty database called name, 0 when
 * not, or an error. Upgrades: a store written before the pipeline kept the
 * derived databases (persons, ...) beside the log. */
int sl_store_has_db(sl_store_t *st, const char *name);
/* Deletes the named databases (a NULL-terminated list; absent ones are
 * skipped) in one synced transaction. The writer must not run. */
int sl_store_drop_dbs(sl_store_t *st, const char *const *names);

/* Opens (creating if needed) the environment in opts->data_dir. For a
 * writable store, also loads the dedupe window. Returns 0 or an error. */
int sl_store_open(sl_store_t **out, const sl_store_options_t *opts);

/* Starts the writer thread; completions are delivered on loop. */
int sl_store_start(sl_store_t *st, uv_loop_t *loop);

/* Queues a batch for the next commit. Returns 0, or SL_EBUSY when the queue
 * holds max_queue_messages already (answer 503), or SL_ESHUTDOWN. The batch
 * must stay valid until its done callback runs. Loop thread only. */
int sl_store_submit(sl_store_t *st, sl_store_batch_t *batch);

/* Messages queued or being committed right now, from every loop (any
 * thread). */
size_t sl_store_queued(const sl_store_t *st);

/* ---- more loops ----
 * A port is another loop's way to the writer, beside the loop given to
 * sl_store_start() (whose port sl_store_submit() uses): what that loop
 * submits during one of its iterations goes to the writer as one list, and
 * its batches' done callbacks run on that loop. The queue bound
 * (max_queue_messages) is shared. At most SL_STORE_MAX_PORTS. */
#define SL_STORE_MAX_PORTS 64
typedef struct sl_store_port_s sl_store_port_t;
/* On loop's thread, after sl_store_start(). 0, SL_ETOOBIG (too many),
 * SL_ESHUTDOWN, SL_ENOMEM or libuv's error. */
int sl_store_port_open(sl_store_t *st, uv_loop_t *loop, sl_store_port_t **out);
/* sl_store_submit() through p, on p's loop thread. */
int sl_store_port_submit(sl_store_port_t *p, sl_store_batch_t *batch);
/* On p's loop thread: refuses further batches, hands this iteration's over,
 * and once every batch of p came back (done called), closes p and runs
 * cb(arg) on its loop; p is freed then. Before sl_store_drain(): a port
 * still open then would have its last batches refused. */
void sl_store_port_close(sl_store_port_t *p, void (*cb)(void *), void *arg);

/* Stops accepting batches, lets the writer commit what is queued, delivers
 * the last completions, then joins the thread. Call from the loop thread;
 * cb runs once everything is done. */
void sl_store_drain(sl_store_t *st, void (*cb)(void *), void *arg);

/* Closes the environment. The writer must be drained first. */
void sl_store_close(sl_store_t *st);

/* The dedupe key of a message: keyed hash of source name and messageId. */
sl_hash128_t sl_store_dedupe_key(const sl_store_t *st, const char *source, const char *message_id);

/* Calls cb(json, len, seq, arg) for every stored event in order (the JSON,
 * decompressed when stored compressed: valid during the call); stops early
 * when cb returns non-zero (that value is returned). Safe while a server
 * writes the same data directory. */
int sl_store_foreach_event(sl_store_t *st, int (*cb)(const char *, size_t, uint64_t, void *), void *arg);

/* Consistent compacting copy of the environment as data.mdb in the
 * directory dirfd (opened with sl_dir_open_nofollow; it must not hold a
 * data.mdb). The file is 0640 whatever the umask, like the store, never
 * written through a symbolic link; a failed copy leaves no file. Safe while
 * serving. Returns 0, -EEXIST when the directory holds a data.mdb, or a
 * negative errno / LMDB code. */
int sl_store_backup(sl_store_t *st, int dirfd);

/* Runs cb in a read transaction (any thread; safe against map growth).
 * Returns cb's result, or the error that kept the transaction from starting. */
int sl_store_read(sl_store_t *st, int (*cb)(MDB_txn *txn, void *arg), void *arg);
/* Small named counters in the store's meta database (NATS cursors): get in
 * any transaction (0 when unset), put in a job. */
int sl_store_meta_get(sl_store_t *st, MDB_txn *txn, const char *key, uint64_t *out);
int sl_store_meta_put(sl_store_t *st, MDB_txn *txn, const char *key, uint64_t value);
/* sl_store_foreach_event() inside the caller's transaction; _from: starting
 * at sequence from. */
int sl_store_foreach_event_from(sl_store_t *st, MDB_txn *txn, uint64_t from,
                                int (*cb)(const char *, size_t, uint64_t, void *), void *arg);
int sl_store_foreach_event_txn(sl_store_t *st, MDB_txn *txn, int (*cb)(const char *, size_t, uint64_t, void *),
                               void *arg);

/* The stored event seq (its JSON): valid until the calling thread's next
 * event read, and while txn lives. MDB_NOTFOUND when absent. */
int sl_store_event_get(sl_store_t *st, MDB_txn *txn, uint64_t seq, MDB_val *json);


/* Counters and gauges for /metrics; safe to call from any thread. */
typedef struct sl_store_stats_s {
    uint64_t events_stored;
    uint64_t duplicates;
    uint64_t commits;
    uint64_t commit_failures;
    uint64_t map_resizes;
    uint64_t batch_hist[12];     /* messages per commit, buckets of sl_store_batch_bounds */
    uint64_t latency_hist[14];   /* commit latency, buckets of sl_store_latency_bounds_us */
    uint64_t latency_sum_us;
    uint64_t batch_sum;
    uint64_t dedupe_entries;
    uint64_t dedupe_evicted;     /* ids forgotten before their window ended (table full) */
    int64_t dedupe_window_ms;    /* the window in force */
    uint64_t map_size_bytes;
    uint64_t last_seq;
    uint64_t batches_failed_alone; /* batches a job or hook refused, answered alone */
    uint64_t erase_txns;         /* transactions that deleted erased or expired events (a slice each) */
    int compressed;              /* the dictionary is trained: new events are stored compressed */
} sl_store_stats_t;

extern const uint64_t sl_store_batch_bounds[11];      /* last bucket is +Inf */
extern const uint64_t sl_store_latency_bounds_us[13]; /* last bucket is +Inf */

void sl_store_get_stats(sl_store_t *st, sl_store_stats_t *out);
/* The same as Prometheus text, appended to out (arg: the store; loop thread). */
void sl_store_metrics(void *arg, sl_buf_t *out);

/* ---- dedupe table (exposed for unit tests) -------------------------------- */
typedef struct sl_dedupe_s sl_dedupe_t;
/* At most max_ids ids are held (at least 1,000); past it the oldest are
 * forgotten and the effective window shrinks (sl_dedupe_window_ms). */
sl_dedupe_t *sl_dedupe_new(int64_t window_ms, size_t max_ids);
void sl_dedupe_free(sl_dedupe_t *d);
/* Returns 1 when key was seen at a time >= now_ms - window, else records it
 * at received_ms and returns 0 (or SL_ENOMEM). */
int sl_dedupe_check_insert(sl_dedupe_t *d, sl_hash128_t key, int64_t received_ms, int64_t now_ms);
/* Forgets the inserts made since the last sl_dedupe_mark() (an aborted
 * transaction must not leave its ids behind). */
void sl_dedupe_mark(sl_dedupe_t *d);
void sl_dedupe_rollback(sl_dedupe_t *d);
size_t sl_dedupe_size(const sl_dedupe_t *d);
/* Ids forgotten before their window ended, for lack of room. */
uint64_t sl_dedupe_evicted(const sl_dedupe_t *d);
/* The window in force: dedupe_window, or less once ids were forgotten. */
int64_t sl_dedupe_window_ms(const sl_dedupe_t *d, int64_t now_ms);

#endif
