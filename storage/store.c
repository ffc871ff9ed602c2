/* store.c - see sl_store.h. */
#define _GNU_SOURCE
#include "sl_store.h"

#include <zdict.h>
#include <zstd.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCHEMA_VERSION 1
/* Events are stored compressed with zstd and a dictionary trained on the
 * store's own first events: an event value is either the JSON as is (it
 * starts with '{': every event written before the dictionary), or ZFRAME
 * followed by a zstd frame (stores of 2026-11-30), or ZFRAME_LEAN followed
 * by a zstd frame without its 4-byte magic number and without the
 * dictionary's id (there is one dictionary per store): 8 bytes less per
 * event, put back in front of the frame when it is read. */
#define ZFRAME 0x01
#define ZFRAME_LEAN 0x02
#define ZSTD_MAGIC_LEN 4
#define ZDICT_TRAIN_AT 4000        /* events the dictionary is trained on */
#define ZDICT_BYTES (64 * 1024)
#ifndef SL_ZSTD_LEVEL
#define SL_ZSTD_LEVEL 3 /* bench/RESULTS.md: levels 1-3 against bytes per event and the writer's CPU */
#endif
/* Old msgids entries deleted per commit: bounded work at the left edge. */
#define RETENTION_PER_COMMIT 512

const uint64_t sl_store_batch_bounds[11] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096};
const uint64_t sl_store_latency_bounds_us[13] = {100, 250, 500, 1000, 2500, 5000, 10000,
                                                 25000, 50000, 100000, 250000, 500000, 1000000};

typedef struct msgid_rec_s {
    int64_t received_ms;
    uint64_t lo, hi;
} msgid_rec_t;

/* A loop's way to the writer (sl_store.h). */
struct sl_store_port_s {
    sl_store_t *st;
    sl_handoff_batch_t batch;  /* this loop -> st->in, an iteration at a time */
    sl_handoff_t done;         /* writer -> this loop: batches committed or failed */
    size_t queued;             /* this loop: batches submitted, not answered yet */
    int closing;               /* this loop: sl_store_port_close() was called */
    int batch_closed, gone;    /* this loop: its batch's handles are closed; done is closing */
    void (*closed_cb)(void *);
    void *closed_arg;
    sl_store_batch_t *out_head, *out_tail; /* writer thread: one delivery's batches for this port */
};

struct sl_store_s {
    MDB_env *env;
    MDB_dbi events, msgids, meta;
    sl_store_options_t opts;
    char *data_dir;
    uint64_t seed;
    uint64_t next_seq;        /* writer thread */
    uint64_t map_size;        /* writer thread */
    sl_dedupe_t *dd;          /* writer thread */

    uv_loop_t *loop;
    uv_thread_t thread;
    sl_handoff_t in;          /* loops -> writer: batches to commit, a loop iteration's at a time
                               * (each port's batch); closed by sl_store_drain() */
    sl_store_port_t own;      /* the loop of sl_store_start(); its done queue also says the writer exited */
    _Atomic int exited;       /* the writer is done: its last batches are in own.done */
    int started;
    _Atomic int n_ports;      /* ports opened (own included) */
    _Atomic size_t queued;    /* messages submitted, not answered yet: every port's */
    void (*drain_cb)(void *);
    void *drain_arg;

    /* Who hears that events became durable (writer thread), and up to where. */
    struct {
        void (*cb)(void *arg, uint64_t seq);
        void *arg;
    } durable_cbs[4];
    size_t n_durable_cbs;
    _Atomic uint64_t durable_seq;

    /* the dictionary: the writer compresses, every thread decompresses */
    ZSTD_CDict *cdict;            /* writer thread */
    ZSTD_CCtx *cctx;              /* writer thread */
    sl_buf_t zbuf;                /* writer thread: one compressed event */
    ZSTD_DDict *_Atomic ddict;    /* set once (open or training), then read-only */
    int trained_tried;            /* writer thread */
    uv_thread_t trainer;          /* trains the dictionary beside the writer */
    int trainer_started;          /* writer thread; sl_store_close() joins it */
    _Atomic int dict_trained;     /* the trainer is done: dict/dict_len hold one (or 0 bytes) */
    void *dict;                   /* the trainer's, then the writer's */
    size_t dict_len;
    int dict_in_txn;              /* writer thread: the commit under way stores it */

    /* In-process readers hold it shared; the writer takes it to resize. */
    uv_rwlock_t resize_lock;

    struct {
        _Atomic uint64_t events_stored, duplicates, commits, commit_failures, map_resizes;
        _Atomic uint64_t erase_txns; /* transactions that deleted erased or expired events */
        _Atomic uint64_t batch_hist[12], latency_hist[14], latency_sum_us, batch_sum;
        _Atomic uint64_t dedupe_entries, map_size_bytes, last_seq, batches_failed_alone, dedupe_evicted;
        _Atomic int64_t dedupe_window_ms;
    } stats;
};

static void note_dedupe(sl_store_t *st);
static int load_dict(sl_store_t *st, MDB_txn *txn);

static int load_meta(sl_store_t *st, MDB_txn *txn)
{
    MDB_val k = {4, "seed"}, v;
    int rc = mdb_get(txn, st->meta, &k, &v);
    if (rc == 0 && v.mv_size == 8) {
        memcpy(&st->seed, v.mv_data, 8);
    } else if (rc == MDB_NOTFOUND && !st->opts.read_only) {
        if ((rc = sl_random_bytes(&st->seed, 8))) return rc;
        v.mv_size = 8;
        v.mv_data = &st->seed;
        if ((rc = mdb_put(txn, st->meta, &k, &v, 0))) return rc;
        uint32_t ver = SCHEMA_VERSION;
        MDB_val vk = {6, "schema"}, vv = {4, &ver};
        if ((rc = mdb_put(txn, st->meta, &vk, &vv, 0))) return rc;
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }
    MDB_val vk = {6, "schema"};
    if (mdb_get(txn, st->meta, &vk, &v) == 0 && v.mv_size == 4) {
        uint32_t ver;
        memcpy(&ver, v.mv_data, 4);
        if (ver > SCHEMA_VERSION) {
            SL_ERROR("data directory %s has schema %u; this sillage reads up to %u",
                     st->data_dir, ver, SCHEMA_VERSION);
            return SL_EINVAL;
        }
    }
    return 0;
}

/* Next sequence number, and the dedupe table from the log's tail. */
static int load_tail(sl_store_t *st, MDB_txn *txn)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, st->events, &cur);
    if (rc) return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    if (rc == 0) {
        uint64_t last;
        memcpy(&last, k.mv_data, 8);
        st->next_seq = last + 1;
    } else if (rc == MDB_NOTFOUND) {
        st->next_seq = 1;
        rc = 0;
    }
    mdb_cursor_close(cur);
    if (rc) return rc;
    /* erased events leave their numbers behind: never given again */
    uint64_t floor = 0;
    if ((rc = sl_store_meta_get(st, txn, "seq_floor", &floor))) return rc;
    if (floor + 1 > st->next_seq) st->next_seq = floor + 1;
    if (st->opts.read_only) return 0;

    int64_t now = sl_now_ms(), horizon = now - st->opts.dedupe_window_ms;
    size_t loaded = 0;
    if ((rc = mdb_cursor_open(txn, st->msgids, &cur))) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_LAST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_PREV)) {
        msgid_rec_t r;
        if (v.mv_size != sizeof(r)) continue;
        memcpy(&r, v.mv_data, sizeof(r));
        /* The log is in arrival order; a little clock jitter is tolerated by
         * scanning a minute past the horizon before stopping. */
        if (r.received_ms < horizon - 60000) break;
        if (r.received_ms < horizon) continue;
        sl_hash128_t h = {r.lo, r.hi};
        if (sl_dedupe_check_insert(st->dd, h, r.received_ms, now) < 0) {
            rc = SL_ENOMEM;
            break;
        }
        loaded++;
    }
    mdb_cursor_close(cur);
    sl_dedupe_mark(st->dd);
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc == 0 && loaded) SL_INFO("dedupe window: %zu message ids loaded", loaded);
    return rc;
}

int sl_store_open(sl_store_t **out, const sl_store_options_t *opts)
{
    sl_store_t *st = calloc(1, sizeof(*st));
    if (st == NULL) return SL_ENOMEM;
    st->opts = *opts;
    st->data_dir = strdup(opts->data_dir);
    st->opts.data_dir = st->data_dir;
    MDB_txn *txn = NULL;
    int rc;
    if (!opts->read_only && (rc = sl_mkdir_p(opts->data_dir))) goto fail;
    if ((rc = mdb_env_create(&st->env))) goto fail;
    if ((rc = mdb_env_set_maxdbs(st->env, 16))) goto fail;
    if ((rc = mdb_env_set_maxreaders(st->env, 256))) goto fail;
    if (!opts->read_only && (rc = mdb_env_set_mapsize(st->env, opts->map_size_bytes))) goto fail;
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
    if (opts->read_only) flags |= MDB_RDONLY;
    else if (opts->nosync) flags |= MDB_NOSYNC;
    else flags |= MDB_NOMETASYNC; /* the writer flushes meta pages itself: see writer_main() */
    if ((rc = mdb_env_open(st->env, opts->data_dir, flags, 0640))) goto fail;
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    st->map_size = info.me_mapsize;
    atomic_store(&st->stats.map_size_bytes, st->map_size);

    if (!opts->read_only) {
        st->dd = sl_dedupe_new(opts->dedupe_window_ms, opts->dedupe_max_ids ? opts->dedupe_max_ids : 4000000);
        if (st->dd == NULL) {
            rc = SL_ENOMEM;
            goto fail;
        }
    }
    if ((rc = mdb_txn_begin(st->env, NULL, opts->read_only ? MDB_RDONLY : 0, &txn))) goto fail;
    unsigned dbf = opts->read_only ? 0 : MDB_CREATE;
    if ((rc = mdb_dbi_open(txn, "events", dbf | MDB_INTEGERKEY, &st->events))) goto fail;
    if ((rc = mdb_dbi_open(txn, "msgids", dbf | MDB_INTEGERKEY, &st->msgids))) goto fail;
    if ((rc = mdb_dbi_open(txn, "meta", dbf, &st->meta))) goto fail;
    if ((rc = load_meta(st, txn))) goto fail;
    if ((rc = load_dict(st, txn))) goto fail;
    if ((rc = load_tail(st, txn))) goto fail;
    if (!opts->read_only) note_dedupe(st);
    /* Commit even a read-only txn: handles opened in an aborted one close. */
    if ((rc = mdb_txn_commit(txn))) {
        txn = NULL;
        goto fail;
    }
    txn = NULL;
    atomic_store(&st->stats.last_seq, st->next_seq - 1);
    atomic_store(&st->durable_seq, st->next_seq - 1); /* what a start finds on disk is durable */
    if (st->dd) atomic_store(&st->stats.dedupe_entries, sl_dedupe_size(st->dd));
    if (!opts->read_only && (rc = sl_handoff_init(&st->in, offsetof(sl_store_batch_t, next), NULL, NULL))) goto fail;
    uv_rwlock_init(&st->resize_lock);
    *out = st;
    return 0;
fail:
    if (txn) mdb_txn_abort(txn);
    if (st->env) mdb_env_close(st->env);
    sl_dedupe_free(st->dd);
    free(st->data_dir);
    free(st);
    return rc;
}

sl_hash128_t sl_store_dedupe_key(const sl_store_t *st, const char *source, const char *message_id)
{
    char buf[512];
    size_t sl = strlen(source), ml = strlen(message_id);
    if (sl + ml + 1 <= sizeof(buf)) {
        memcpy(buf, source, sl);
        buf[sl] = '\0';
        memcpy(buf + sl + 1, message_id, ml);
        return sl_hash128(buf, sl + 1 + ml, st->seed);
    }
    /* Long ids: hash the id, then fold in the source. */
    sl_hash128_t h = sl_hash128(message_id, ml, st->seed);
    sl_hash128_t s = sl_hash128(source, sl, st->seed ^ h.lo);
    h.lo ^= s.hi;
    h.hi ^= s.lo;
    if ((h.lo | h.hi) == 0) h.lo = 1;
    return h;
}

/* ---- writer --------------------------------------------------------------- */

static void hist_add(_Atomic uint64_t *hist, const uint64_t *bounds, size_t nb, uint64_t v)
{
    size_t i = 0;
    while (i < nb && v > bounds[i]) i++;
    atomic_fetch_add(&hist[i], 1);
}

static void reset_statuses(sl_store_batch_t *list)
{
    for (sl_store_batch_t *b = list; b; b = b->next)
        for (size_t i = 0; i < b->n_msgs; i++) b->msgs[i].status = SL_STORE_PENDING;
}

static int trim_msgids(sl_store_t *st, MDB_txn *txn, int64_t horizon)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, st->msgids, &cur);
    if (rc) return rc;
    for (int n = 0; n < RETENTION_PER_COMMIT; n++) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc) break;
        msgid_rec_t r;
        if (v.mv_size == sizeof(r)) {
            memcpy(&r, v.mv_data, sizeof(r));
            if (r.received_ms >= horizon) break;
        }
        if ((rc = mdb_cursor_del(cur, 0))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* One transaction for every batch in list. Returns 0 or an error; on error
 * nothing of the list is stored and the dedupe table is as before, and
 * *culprit is the batch whose job or hook failed (NULL: the failure is the
 * environment's, not one batch's). */
static int batch_error(int err);

/* ---- the event codec ------------------------------------------------------------ */

/* v <- ZFRAME_LEAN + the zstd frame of json less its magic number, in
 * st->zbuf (writer thread). */
static int compress_event(sl_store_t *st, const char *json, size_t len, MDB_val *v)
{
    size_t cap = ZSTD_compressBound(len);
    st->zbuf.len = 0;
    if (sl_buf_reserve(&st->zbuf, cap)) return SL_ENOMEM;
    size_t n = ZSTD_compress2(st->cctx, st->zbuf.data, cap, json, len);
    if (ZSTD_isError(n) || n < ZSTD_MAGIC_LEN + 1) return SL_ENOMEM;
    /* the frame's magic number gives way to the type byte */
    st->zbuf.data[ZSTD_MAGIC_LEN - 1] = ZFRAME_LEAN;
    v->mv_data = st->zbuf.data + ZSTD_MAGIC_LEN - 1;
    v->mv_size = n - ZSTD_MAGIC_LEN + 1;
    return 0;
}

/* One decompression context and buffer per thread that reads events,
 * freed when the thread ends (a pthread key's destructor). */
typedef struct {
    ZSTD_DCtx *dctx;
    char *buf;
    size_t cap;
    unsigned char *frame;  /* a lean frame with its magic number put back */
    size_t frame_cap;
} decoder_t;

static pthread_key_t dec_key;
static pthread_once_t dec_once = PTHREAD_ONCE_INIT;

static void decoder_free(void *p)
{
    decoder_t *d = p;
    ZSTD_freeDCtx(d->dctx);
    free(d->buf);
    free(d->frame);
    free(d);
}

static void dec_key_init(void) { pthread_key_create(&dec_key, decoder_free); }

static decoder_t *thread_decoder(void)
{
    pthread_once(&dec_once, dec_key_init);
    decoder_t *d = pthread_getspecific(dec_key);
    if (d) return d;
    if ((d = calloc(1, sizeof(*d))) == NULL) return NULL;
    if ((d->dctx = ZSTD_createDCtx()) == NULL || pthread_setspecific(dec_key, d)) {
        decoder_free(d);
        return NULL;
    }
    return d;
}

/* The JSON of a stored event value: itself, or decompressed into this
 * thread's buffer (valid until its next decode). 0 or SL_ESTORE. */
static int decode_event(sl_store_t *st, const MDB_val *in, const char **json, size_t *len)
{
    const unsigned char *p = in->mv_data;
    if (in->mv_size < 2 || (p[0] != ZFRAME && p[0] != ZFRAME_LEAN)) {
        *json = in->mv_data;
        *len = in->mv_size;
        return 0;
    }
    ZSTD_DDict *dd = atomic_load(&st->ddict);
    if (dd == NULL) return SL_ESTORE; /* compressed, and no dictionary: not ours */
    decoder_t *d = thread_decoder();
    if (d == NULL) return SL_ENOMEM;
    const unsigned char *frame = p + 1;
    size_t frame_len = in->mv_size - 1;
    if (p[0] == ZFRAME_LEAN) {
        static const unsigned char magic[ZSTD_MAGIC_LEN] = {0x28, 0xB5, 0x2F, 0xFD}; /* ZSTD_MAGICNUMBER, LE */
        if (frame_len + ZSTD_MAGIC_LEN > d->frame_cap) {
            unsigned char *b = realloc(d->frame, frame_len + ZSTD_MAGIC_LEN);
            if (b == NULL) return SL_ENOMEM;
            d->frame = b;
            d->frame_cap = frame_len + ZSTD_MAGIC_LEN;
        }
        memcpy(d->frame, magic, ZSTD_MAGIC_LEN);
        memcpy(d->frame + ZSTD_MAGIC_LEN, frame, frame_len);
        frame = d->frame;
        frame_len += ZSTD_MAGIC_LEN;
    }
    unsigned long long size = ZSTD_getFrameContentSize(frame, frame_len);
    if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN || size > (64u << 20)) return SL_ESTORE;
    if (size + 1 > d->cap) {
        char *b = realloc(d->buf, (size_t)size + 1);
        if (b == NULL) return SL_ENOMEM;
        d->buf = b;
        d->cap = (size_t)size + 1;
    }
    size_t n = ZSTD_decompress_usingDDict(d->dctx, d->buf, d->cap, frame, frame_len, dd);
    if (ZSTD_isError(n)) return SL_ESTORE;
    *json = d->buf;
    *len = n;
    return 0;
}

/* The coders of a dictionary: the readers' (every store), the writer's.
 * Published only whole: a half-made writer's coder would compress with no
 * dictionary, or crash. */
static int make_coders(sl_store_t *st, const void *dict, size_t len)
{
    ZSTD_CDict *cd = NULL;
    ZSTD_CCtx *cc = NULL;
    if (!st->opts.read_only) {
        cd = ZSTD_createCDict(dict, len, SL_ZSTD_LEVEL);
        cc = ZSTD_createCCtx();
        /* one dictionary per store: its id in every frame says nothing */
        if (cd == NULL || cc == NULL || ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_dictIDFlag, 0)) ||
            ZSTD_isError(ZSTD_CCtx_refCDict(cc, cd))) {
            ZSTD_freeCCtx(cc);
            ZSTD_freeCDict(cd);
            return SL_ENOMEM;
        }
    }
    ZSTD_DDict *dd = ZSTD_createDDict(dict, len);
    if (dd == NULL) {
        ZSTD_freeCCtx(cc);
        ZSTD_freeCDict(cd);
        return SL_ENOMEM;
    }
    atomic_store(&st->ddict, dd);
    st->cdict = cd;
    st->cctx = cc;
    return 0;
}

/* The dictionary in meta (read at open), for the writer and the readers. */
static int load_dict(sl_store_t *st, MDB_txn *txn)
{
    MDB_val k = {5, "zdict"}, v;
    int rc = mdb_get(txn, st->meta, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    return make_coders(st, v.mv_data, v.mv_size);
}

typedef struct {
    sl_buf_t samples;
    size_t *sizes;
    unsigned n;
    sl_store_t *st;
} train_t;

static int take_sample(const char *json, size_t len, uint64_t seq, void *arg);

static int train_samples(MDB_txn *txn, void *arg)
{
    train_t *t = arg;
    return sl_store_foreach_event_from(t->st, txn, 0, take_sample, t);
}

static int take_sample(const char *json, size_t len, uint64_t seq, void *arg)
{
    (void)seq;
    train_t *t = arg;
    if (t->n == ZDICT_TRAIN_AT) return 1;
    if (sl_buf_append(&t->samples, json, len)) return SL_ENOMEM;
    t->sizes[t->n++] = len;
    return 0;
}

/* The dictionary's own thread, started by the writer once the store holds
 * ZDICT_TRAIN_AT events: reads them (one read transaction), trains (~0.1 s
 * of CPU, which must not stall the acknowledgements) and leaves the result
 * in st->dict. The writer stores it in meta in its next commit and
 * compresses with it from the commit after (install_dict()). A failure
 * only leaves events uncompressed. */
static void train_main(void *arg)
{
    sl_store_t *st = arg;
    sl_thread_name("sl-zdict");
    train_t t = {{0}, calloc(ZDICT_TRAIN_AT, sizeof(size_t)), 0, st};
    void *dict = malloc(ZDICT_BYTES);
    int rc = t.sizes && dict ? sl_store_read(st, train_samples, &t) : SL_ENOMEM;
    size_t n = 0;
    if ((rc == 0 || rc == 1) && t.n >= 100) {
        n = ZDICT_trainFromBuffer(dict, ZDICT_BYTES, t.samples.data, t.sizes, t.n);
        if (ZDICT_isError(n)) {
            SL_WARN("zstd dictionary: %s; events stay uncompressed", ZDICT_getErrorName(n));
            n = 0;
        }
    }
    free(t.sizes);
    sl_buf_free(&t.samples);
    if (n == 0) {
        free(dict);
        dict = NULL;
    }
    st->dict = dict;
    st->dict_len = n;
    atomic_store(&st->dict_trained, 1);
    SL_INFO("zstd dictionary of %zu bytes trained on %u events", n, t.n);
}

/* Writer thread, after the commit that stored st->dict in meta. */
static void install_dict(sl_store_t *st)
{
    if (make_coders(st, st->dict, st->dict_len) == 0) SL_INFO("events are stored compressed from now on");
    else SL_WARN("zstd dictionary: out of memory; events stay uncompressed");
    free(st->dict);
    st->dict = NULL;
    st->dict_len = 0;
}

/* probe: find every batch that cannot be applied, in one pass: each batch in
 * a nested transaction, a failing one aborted alone and marked (b->rc); the
 * whole transaction is then aborted (nothing is stored by a probe). */
static int commit_list_mode(sl_store_t *st, sl_store_batch_t *list, size_t *n_stored, size_t *n_dup,
                            size_t *n_jobs, sl_store_batch_t **culprit, int probe)
{
    size_t jobs = 0;
    MDB_txn *txn = NULL;
    uint64_t seq0 = st->next_seq;
    int64_t now = sl_now_ms();
    size_t stored = 0, dup = 0;
    *culprit = NULL;
    sl_dedupe_mark(st->dd);
    MDB_txn *parent = NULL;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc) goto fail;
    st->dict_in_txn = 0;
    if (!probe && st->cdict == NULL && atomic_load(&st->dict_trained) == 1 && st->dict_len) {
        /* trained: stored with this commit's events, used from the next commit on */
        MDB_val k = {5, "zdict"}, v = {st->dict_len, st->dict};
        if ((rc = mdb_put(txn, st->meta, &k, &v, MDB_NOOVERWRITE))) goto fail;
        st->dict_in_txn = 1;
    }
    for (sl_store_batch_t *b = list; b; b = b->next) {
        b->rc = 0;
        if (probe) {
            parent = txn;
            if ((rc = mdb_txn_begin(st->env, parent, 0, &txn))) {
                txn = parent;
                goto fail;
            }
        }
        if (b->job) { /* runs before the batch's messages, in the same transaction */
            if ((rc = b->job(txn, b->job_arg))) {
                *culprit = b;
                goto batch_fail;
            }
            jobs++;
        }
        for (size_t i = 0; i < b->n_msgs; i++) {
            sl_store_msg_t *m = &b->msgs[i];
            rc = sl_dedupe_check_insert(st->dd, m->dedupe, m->received_ms, now);
            if (rc < 0) goto fail;
            if (rc == 1) {
                m->status = SL_STORE_DUPLICATE;
                dup++;
                continue;
            }
            uint64_t seq = st->next_seq++;
            MDB_val k = {8, &seq}, v = {m->json_len, (void *)m->json};
            if (st->cdict && (rc = compress_event(st, m->json, m->json_len, &v))) goto fail;
            if ((rc = mdb_put(txn, st->events, &k, &v, MDB_APPEND))) goto fail;
            msgid_rec_t r = {m->received_ms, m->dedupe.lo, m->dedupe.hi};
            MDB_val rv = {sizeof(r), &r};
            if ((rc = mdb_put(txn, st->msgids, &k, &rv, MDB_APPEND))) goto fail;
            m->seq = seq;
            m->status = SL_STORE_STORED;
            stored++;
        }
        if (probe && (rc = mdb_txn_commit(txn))) { /* into the parent */
            txn = parent;
            goto fail;
        }
        txn = probe ? parent : txn;
        continue;
    batch_fail:
        if (!probe || !batch_error(rc)) {
            if (probe) {
                mdb_txn_abort(txn);
                txn = parent;
            }
            goto fail;
        }
        mdb_txn_abort(txn); /* this batch alone */
        txn = parent;
        b->rc = rc;
        *culprit = NULL;
    }
    if (probe) { /* what could not be applied is known: nothing is kept */
        rc = SL_EAGAIN;
        goto fail;
    }
    if ((rc = trim_msgids(st, txn, now - st->opts.dedupe_window_ms - 60000))) goto fail;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc) goto fail;
    *n_stored = stored;
    *n_dup = dup;
    *n_jobs = jobs;
    return 0;
fail:
    if (parent && txn && txn != parent) { /* inside a probe's nested transaction */
        mdb_txn_abort(txn);
        txn = parent;
    }
    if (txn) mdb_txn_abort(txn);
    sl_dedupe_rollback(st->dd);
    st->next_seq = seq0;
    reset_statuses(list);
    return rc;
}

/* Says so, once per shrink, when the dedupe table had to forget ids before
 * their window ended. */
static void note_dedupe(sl_store_t *st)
{
    uint64_t ev = sl_dedupe_evicted(st->dd);
    int64_t win = sl_dedupe_window_ms(st->dd, sl_now_ms());
    if (ev != atomic_load(&st->stats.dedupe_evicted))
        SL_WARN("dedupe table full (limits.max_dedupe_ids): %llu ids forgotten so far; a repeat of a messageId "
                "older than %lld s is now stored again (dedupe_window is %lld s)",
                (unsigned long long)ev, (long long)(win / 1000), (long long)(st->opts.dedupe_window_ms / 1000));
    atomic_store(&st->stats.dedupe_evicted, ev);
    atomic_store(&st->stats.dedupe_window_ms, win);
}

/* 1 when err, raised by one batch's job or hook, is that batch's own
 * problem (a record it expected, a value it cannot store) rather than the
 * environment's (disk, memory, map size), which every batch would meet. */
static int batch_error(int err)
{
    /* an allow-list: an error not known to be about a record of the batch
     * is the environment's, which fails the commit rather than blame a client */
    switch (err) {
    case MDB_NOTFOUND: case MDB_KEYEXIST: case MDB_BAD_VALSIZE: case SL_EINVAL: case SL_ENOTFOUND:
    case SL_ETOOBIG:
        return 1;
    default:
        return 0;
    }
}

static sl_store_batch_t *unlink_batch(sl_store_batch_t *list, sl_store_batch_t *b)
{
    sl_store_batch_t **p = &list;
    while (*p && *p != b) p = &(*p)->next;
    if (*p) *p = b->next;
    b->next = NULL;
    return list;
}

static int commit_list(sl_store_t *st, sl_store_batch_t *list, size_t *n_stored, size_t *n_dup, size_t *n_jobs,
                       sl_store_batch_t **culprit)
{
    return commit_list_mode(st, list, n_stored, n_dup, n_jobs, culprit, 0);
}

static int grow_map(sl_store_t *st)
{
    int rc = sl_lmdb_grow(st->env, &st->resize_lock, &st->map_size, st->opts.map_size_max_bytes, "LMDB");
    if (rc) return rc;
    atomic_store(&st->stats.map_size_bytes, st->map_size);
    atomic_fetch_add(&st->stats.map_resizes, 1);
    return 0;
}

/* Hands batches back to the loop thread with their result: the whole list
 * at once, and whatever the loop has not taken yet goes with it on the same
 * wake-up. */
static void deliver(sl_store_t *st, sl_store_batch_t *list, int rc)
{
    /* each port's batches, in the writer's order, one push per port */
    sl_store_port_t *ports[SL_STORE_MAX_PORTS];
    size_t n = 0;
    (void)st;
    while (list) {
        sl_store_batch_t *b = list;
        list = b->next;
        b->next = NULL;
        b->rc = rc;
        sl_store_port_t *p = b->port;
        if (p->out_head == NULL) {
            p->out_head = b;
            ports[n++] = p; /* at most one per port: n <= SL_STORE_MAX_PORTS */
        } else {
            p->out_tail->next = b;
        }
        p->out_tail = b;
    }
    for (size_t i = 0; i < n; i++) {
        sl_store_batch_t *l = ports[i]->out_head;
        ports[i]->out_head = ports[i]->out_tail = NULL;
        sl_handoff_push_list(&ports[i]->done, l); /* open while it has batches in flight */
    }
}

static void append_list(sl_store_batch_t **head, sl_store_batch_t *list)
{
    while (*head) head = &(*head)->next;
    *head = list;
}

/* Events up to seq are on disk: tell the subscribers (writer thread). */
static void set_durable(sl_store_t *st, uint64_t seq)
{
    if (seq <= atomic_load(&st->durable_seq)) return;
    atomic_store(&st->durable_seq, seq);
    for (size_t i = 0; i < st->n_durable_cbs; i++) st->durable_cbs[i].cb(st->durable_cbs[i].arg, seq);
}

/* Durability in "sync" mode costs one flush per commit, not two: the env has
 * MDB_NOMETASYNC, so a commit syncs its data pages and writes its meta page
 * without syncing it. That meta page reaches the disk with the next commit's
 * data sync, or with mdb_env_sync() -- lmdb.h documents exactly this. A batch
 * is therefore answered only after the following commit that wrote pages, or
 * after an explicit mdb_env_sync() when no more work is queued. */
static void writer_main(void *arg)
{
    sl_store_t *st = arg;
    sl_thread_name("sl-writer");
    sl_store_batch_t *unsynced = NULL; /* committed, meta page not yet flushed */
    int need_sync = 0;                 /* a commit wrote pages whose meta page is not flushed */
    uint64_t last_commit_seq = st->next_seq - 1; /* the last event of the latest commit that wrote pages */
    for (;;) {
        sl_store_batch_t *list;
        int wrc = 0;
        while ((list = sl_handoff_take_all(&st->in)) == NULL && !need_sync && wrc != SL_ESHUTDOWN)
            wrc = sl_handoff_wait(&st->in, SL_HANDOFF_FOREVER);
        if (list == NULL) {
            if (!need_sync) break; /* stopping and nothing left */
            int src = mdb_env_sync(st->env, 1);
            if (src) {
                SL_ERROR("flushing the last commit failed: %s", sl_strerror(src));
                atomic_fetch_add(&st->stats.commit_failures, 1);
            } else {
                set_durable(st, last_commit_seq);
            }
            deliver(st, unsynced, src);
            unsynced = NULL;
            need_sync = 0;
            continue;
        }

        uint64_t t0 = sl_mono_ns();
        size_t stored = 0, dup = 0, total = 0, jobs = 0;
        sl_store_batch_t *bad;
        int rc = commit_list(st, list, &stored, &dup, &jobs, &bad);
        size_t alone = 0;
        for (int probed = 0;;) {
            if (rc == MDB_MAP_FULL && grow_map(st) == 0) {
                rc = commit_list(st, list, &stored, &dup, &jobs, &bad);
            } else if (rc && bad && batch_error(rc)) {
                /* Some batch cannot be applied: a probe finds every such
                 * batch in one pass (nested transactions), then the rest is
                 * committed without them -- linear, whatever the number of
                 * bad requests. Past one probe, one batch at a time. */
                sl_store_batch_t *found = NULL;
                if (!probed++) {
                    int prc = commit_list_mode(st, list, &stored, &dup, &jobs, &bad, 1);
                    if (prc == SL_EAGAIN) {
                        for (sl_store_batch_t *b = list, *next; b; b = next) {
                            next = b->next;
                            if (b->rc == 0) continue;
                            list = unlink_batch(list, b);
                            b->next = found;
                            found = b;
                        }
                    }
                }
                if (found == NULL) { /* the probe failed or found nothing: this one, alone */
                    list = unlink_batch(list, bad);
                    bad->rc = rc;
                    found = bad;
                }
                for (sl_store_batch_t *b = found, *next; b; b = next) {
                    next = b->next;
                    b->next = NULL;
                    SL_WARN("a request of %zu messages could not be applied and was not stored: %s", b->n_msgs,
                            sl_strerror(b->rc));
                    atomic_fetch_add(&st->stats.batches_failed_alone, 1);
                    b->failed_alone = 1;
                    deliver(st, b, b->rc);
                    alone++;
                }
                if (list == NULL) break;
                rc = commit_list(st, list, &stored, &dup, &jobs, &bad);
            } else {
                break;
            }
        }
        for (sl_store_batch_t *b = list; b; b = b->next) total += b->n_msgs;
        uint64_t us = (sl_mono_ns() - t0) / 1000;
        if (list == NULL && rc && alone) continue; /* every batch failed alone, each answered */
        if (rc) {
            SL_ERROR("commit of %zu messages failed: %s", total, sl_strerror(rc));
            atomic_fetch_add(&st->stats.commit_failures, 1);
            deliver(st, list, rc); /* nothing of it was stored */
            continue;
        }
        atomic_fetch_add(&st->stats.commits, 1);
        atomic_fetch_add(&st->stats.events_stored, stored);
        atomic_fetch_add(&st->stats.duplicates, dup);
        atomic_fetch_add(&st->stats.batch_sum, total);
        atomic_fetch_add(&st->stats.latency_sum_us, us);
        hist_add(st->stats.batch_hist, sl_store_batch_bounds, 11, total);
        hist_add(st->stats.latency_hist, sl_store_latency_bounds_us, 13, us);
        atomic_store(&st->stats.last_seq, st->next_seq - 1);
        atomic_store(&st->stats.dedupe_entries, sl_dedupe_size(st->dd));
        if (st->dict_in_txn) install_dict(st);
        if (st->cdict == NULL && !st->trained_tried && st->next_seq > ZDICT_TRAIN_AT) {
            st->trained_tried = 1;
            st->trainer_started = uv_thread_create(&st->trainer, train_main, st) == 0;
        }
        if (st->trainer_started && atomic_load(&st->dict_trained) == 1 && st->dict == NULL) {
            uv_thread_join(&st->trainer); /* done, and what it made is installed (or there was none) */
            st->trainer_started = 0;
        }
        note_dedupe(st);
        if (st->opts.nosync) {
            set_durable(st, st->next_seq - 1);
            deliver(st, list, 0); /* "os" durability: committed is enough */
        } else if (stored > 0 || jobs > 0) {
            /* this commit's data sync flushed the previous commit's meta page */
            if (need_sync) set_durable(st, last_commit_seq);
            last_commit_seq = st->next_seq - 1;
            deliver(st, unsynced, 0);
            unsynced = list;
            need_sync = 1;
        } else {
            append_list(&unsynced, list); /* all duplicates: no pages, no sync; wait with the rest */
            need_sync = need_sync || unsynced != NULL;
        }
    }
    atomic_store(&st->exited, 1);
    sl_handoff_wake(&st->own.done);
}

/* ---- ports ---- */

/* A port's loop: the batches the writer handed back, in its order. */
static void port_take(sl_store_port_t *p)
{
    sl_store_batch_t *list = sl_handoff_take_all(&p->done);
    while (list) {
        sl_store_batch_t *next = list->next;
        atomic_fetch_sub(&p->st->queued, list->n_msgs);
        p->queued--;
        list->next = NULL;
        list->done(list);
        list = next;
    }
}

static void own_closed(sl_handoff_t *h)
{
    sl_store_t *st = h->data;
    if (st->drain_cb) st->drain_cb(st->drain_arg);
}

/* The store's own loop: its batches, and the writer's exit. */
static void on_own_done(sl_handoff_t *h)
{
    sl_store_t *st = h->data;
    int exited = atomic_load(&st->exited); /* before the take: it then holds the writer's last batches */
    port_take(&st->own);
    if (exited && st->started) {
        st->started = 0;
        uv_thread_join(&st->thread);
        sl_handoff_close(&st->own.done, own_closed);
    }
}

static void port_closed(sl_handoff_t *h)
{
    sl_store_port_t *p = h->data;
    if (p->closed_cb) p->closed_cb(p->closed_arg);
    sl_handoff_destroy(&p->done);
    free(p);
}

/* A closing port goes once its batch's handles are closed and its last
 * batch came back. */
static void port_maybe_gone(sl_store_port_t *p)
{
    if (p->closing && p->batch_closed && p->queued == 0 && !p->gone) {
        p->gone = 1;
        sl_handoff_close(&p->done, port_closed);
    }
}

static void on_port_done(sl_handoff_t *h)
{
    sl_store_port_t *p = h->data;
    port_take(p);
    port_maybe_gone(p);
}

static void port_batch_closed(sl_handoff_batch_t *b)
{
    sl_store_port_t *p = b->data;
    p->batch_closed = 1;
    port_maybe_gone(p);
}

/* 0, or libuv's error: p->done is then closing (closed_cb runs on loop). */
static int port_init(sl_store_port_t *p, sl_store_t *st, uv_loop_t *loop, void (*on_done)(sl_handoff_t *h),
                     void *data, void (*closed_cb)(sl_handoff_t *h))
{
    p->st = st;
    p->done.data = data;
    p->batch.data = p;
    int rc = sl_handoff_init(&p->done, offsetof(sl_store_batch_t, next), loop, on_done);
    if (rc) {
        if (closed_cb) closed_cb(&p->done);
        return rc;
    }
    if ((rc = sl_handoff_batch_start(&p->batch, &st->in, loop))) sl_handoff_close(&p->done, closed_cb);
    return rc;
}

int sl_store_port_open(sl_store_t *st, uv_loop_t *loop, sl_store_port_t **out)
{
    *out = NULL;
    if (!st->started) return SL_ESHUTDOWN;
    if (atomic_fetch_add(&st->n_ports, 1) >= SL_STORE_MAX_PORTS) {
        atomic_fetch_sub(&st->n_ports, 1);
        return SL_ETOOBIG;
    }
    sl_store_port_t *p = calloc(1, sizeof(*p));
    int rc = p ? port_init(p, st, loop, on_port_done, p, port_closed) : SL_ENOMEM; /* failed: p freed */
    if (rc) {
        atomic_fetch_sub(&st->n_ports, 1);
        return rc;
    }
    *out = p;
    return 0;
}

int sl_store_port_submit(sl_store_port_t *p, sl_store_batch_t *batch)
{
    sl_store_t *st = p->st;
    if (!st->started || p->closing) return SL_ESHUTDOWN;
    size_t q = atomic_load(&st->queued);
    if (q > 0 && q + batch->n_msgs > st->opts.max_queue_messages) return SL_EBUSY;
    batch->rc = 0;
    batch->failed_alone = 0;
    batch->port = p;
    /* with the rest of this loop iteration's requests: one wake-up of the
     * writer for all of them, not one commit for the first */
    int rc = sl_handoff_push_batched(&p->batch, batch); /* SL_ESHUTDOWN once draining */
    if (rc == 0) {
        atomic_fetch_add(&st->queued, batch->n_msgs);
        p->queued++;
    }
    return rc;
}

/* Batches a closed queue refused: failed, on this loop. */
static void refuse_left(sl_store_port_t *p, sl_store_batch_t *left)
{
    while (left) {
        sl_store_batch_t *next = left->next;
        atomic_fetch_sub(&p->st->queued, left->n_msgs);
        p->queued--;
        left->next = NULL;
        left->rc = SL_ESHUTDOWN;
        left->done(left);
        left = next;
    }
}

void sl_store_port_close(sl_store_port_t *p, void (*cb)(void *), void *arg)
{
    if (p->closing) return;
    p->closing = 1;
    p->closed_cb = cb;
    p->closed_arg = arg;
    void *left = NULL;
    sl_handoff_batch_close(&p->batch, &left, port_batch_closed);
    refuse_left(p, left);
}

int sl_store_start(sl_store_t *st, uv_loop_t *loop)
{
    if (st->opts.read_only) return SL_EINVAL;
    st->loop = loop;
    int rc = port_init(&st->own, st, loop, on_own_done, st, NULL);
    if (rc) return rc;
    if ((rc = uv_thread_create(&st->thread, writer_main, st))) {
        sl_handoff_batch_close(&st->own.batch, NULL, NULL);
        sl_handoff_close(&st->own.done, NULL);
        sl_handoff_close(&st->in, NULL);
        return rc;
    }
    atomic_store(&st->n_ports, 1);
    st->started = 1;
    return 0;
}

int sl_store_submit(sl_store_t *st, sl_store_batch_t *batch)
{
    return sl_store_port_submit(&st->own, batch);
}

size_t sl_store_queued(const sl_store_t *st)
{
    return atomic_load(&st->queued);
}

void sl_store_drain(sl_store_t *st, void (*cb)(void *), void *arg)
{
    st->drain_cb = cb;
    st->drain_arg = arg;
    if (!st->started) {
        if (cb) cb(arg);
        return;
    }
    void *left = NULL;
    sl_handoff_batch_close(&st->own.batch, &left, NULL); /* this iteration's go over */
    refuse_left(&st->own, left);
    sl_handoff_close(&st->in, NULL); /* the writer commits what is queued, then exits */
}

void sl_store_close(sl_store_t *st)
{
    if (st == NULL) return;
    if (st->trainer_started) uv_thread_join(&st->trainer);
    free(st->dict);
    mdb_env_close(st->env);
    ZSTD_freeCDict(st->cdict);
    ZSTD_freeCCtx(st->cctx);
    ZSTD_freeDDict(atomic_load(&st->ddict));
    sl_buf_free(&st->zbuf);
    sl_dedupe_free(st->dd);
    sl_handoff_destroy(&st->in);
    sl_handoff_destroy(&st->own.done);
    uv_rwlock_destroy(&st->resize_lock);
    free(st->data_dir);
    free(st);
}

/* ---- readers --------------------------------------------------------------- */

static int read_begin(sl_store_t *st, MDB_txn **txn)
{
    uv_rwlock_rdlock(&st->resize_lock);
    int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn);
    if (rc == MDB_MAP_RESIZED) { /* another process grew the map */
        mdb_env_set_mapsize(st->env, 0);
        rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn);
    }
    if (rc) uv_rwlock_rdunlock(&st->resize_lock);
    return rc;
}

static void read_end(sl_store_t *st, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    uv_rwlock_rdunlock(&st->resize_lock);
}

int sl_store_foreach_event(sl_store_t *st, int (*cb)(const char *, size_t, uint64_t, void *), void *arg)
{
    MDB_txn *txn;
    int rc = read_begin(st, &txn);
    if (rc) return rc;
    rc = sl_store_foreach_event_from(st, txn, 0, cb, arg);
    read_end(st, txn);
    return rc;
}

int sl_store_foreach_event_txn(sl_store_t *st, MDB_txn *txn, int (*cb)(const char *, size_t, uint64_t, void *),
                               void *arg)
{
    return sl_store_foreach_event_from(st, txn, 0, cb, arg);
}

int sl_store_foreach_event_from(sl_store_t *st, MDB_txn *txn, uint64_t from,
                                int (*cb)(const char *, size_t, uint64_t, void *), void *arg)
{
    MDB_cursor *cur;
    MDB_val k = {8, &from}, v;
    int rc = mdb_cursor_open(txn, st->events, &cur);
    if (rc) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t seq;
        memcpy(&seq, k.mv_data, 8);
        const char *json;
        size_t len;
        int r = decode_event(st, &v, &json, &len);
        if (r == 0) r = cb(json, len, seq, arg);
        if (r) {
            rc = r;
            break;
        }
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_store_read(sl_store_t *st, int (*cb)(MDB_txn *txn, void *arg), void *arg)
{
    MDB_txn *txn;
    int rc = read_begin(st, &txn);
    if (rc) return rc;
    rc = cb(txn, arg);
    read_end(st, txn);
    return rc;
}

int sl_store_event_get(sl_store_t *st, MDB_txn *txn, uint64_t seq, MDB_val *json)
{
    MDB_val k = {8, &seq}, v;
    int rc = mdb_get(txn, st->events, &k, &v);
    if (rc) return rc;
    const char *p;
    size_t n;
    if ((rc = decode_event(st, &v, &p, &n))) return rc;
    json->mv_data = (void *)p;
    json->mv_size = n;
    return 0;
}


int sl_store_backup(sl_store_t *st, int dirfd)
{
    return sl_lmdb_backup(st->env, dirfd, &st->resize_lock);
}

void sl_store_get_stats(sl_store_t *st, sl_store_stats_t *o)
{
    o->events_stored = atomic_load(&st->stats.events_stored);
    o->duplicates = atomic_load(&st->stats.duplicates);
    o->commits = atomic_load(&st->stats.commits);
    o->erase_txns = atomic_load(&st->stats.erase_txns);
    o->commit_failures = atomic_load(&st->stats.commit_failures);
    o->map_resizes = atomic_load(&st->stats.map_resizes);
    for (int i = 0; i < 12; i++) o->batch_hist[i] = atomic_load(&st->stats.batch_hist[i]);
    for (int i = 0; i < 14; i++) o->latency_hist[i] = atomic_load(&st->stats.latency_hist[i]);
    o->latency_sum_us = atomic_load(&st->stats.latency_sum_us);
    o->batch_sum = atomic_load(&st->stats.batch_sum);
    o->dedupe_entries = atomic_load(&st->stats.dedupe_entries);
    o->dedupe_evicted = atomic_load(&st->stats.dedupe_evicted);
    o->dedupe_window_ms = atomic_load(&st->stats.dedupe_window_ms);
    o->map_size_bytes = atomic_load(&st->stats.map_size_bytes);
    o->last_seq = atomic_load(&st->stats.last_seq);
    o->batches_failed_alone = atomic_load(&st->stats.batches_failed_alone);
    o->compressed = atomic_load(&st->ddict) != NULL;
}

int sl_store_meta_get(sl_store_t *st, MDB_txn *txn, const char *key, uint64_t *out)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    *out = 0;
    int rc = mdb_get(txn, st->meta, &k, &v);
    if (rc == 0 && v.mv_size == 8) memcpy(out, v.mv_data, 8);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_store_meta_put(sl_store_t *st, MDB_txn *txn, const char *key, uint64_t value)
{
    MDB_val k = {strlen(key), (void *)key}, v = {8, &value};
    return mdb_put(txn, st->meta, &k, &v, 0);
}

void sl_store_on_durable(sl_store_t *st, void (*cb)(void *arg, uint64_t seq), void *arg)
{
    if (st->n_durable_cbs == sizeof(st->durable_cbs) / sizeof(st->durable_cbs[0])) abort(); /* a wiring bug */
    st->durable_cbs[st->n_durable_cbs].cb = cb;
    st->durable_cbs[st->n_durable_cbs].arg = arg;
    st->n_durable_cbs++;
}

uint64_t sl_store_durable_seq(const sl_store_t *st)
{
    return atomic_load(&st->durable_seq);
}

int sl_store_erase_events_txn(sl_store_t *st, MDB_txn *txn, const uint64_t *seqs, size_t n)
{
    uint64_t floor = 0, top = 0;
    int rc;
    if (n == 0) return 0;
    if ((rc = sl_store_meta_get(st, txn, "seq_floor", &floor))) return rc;
    for (size_t i = 0; i < n; i++) {
        MDB_val k = {8, (void *)&seqs[i]};
        rc = mdb_del(txn, st->events, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
        if (seqs[i] > top) top = seqs[i];
    }
    /* numbers are never given again, even the last one's */
    return top > floor ? sl_store_meta_put(st, txn, "seq_floor", top) : 0;
}

/* One slice of an erasure, in a write transaction of its own. */
static int erase_slice(sl_store_t *st, const uint64_t *seqs, size_t n)
{
    MDB_txn *txn;
    uv_rwlock_rdlock(&st->resize_lock);
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc) goto out;
    if ((rc = sl_store_erase_events_txn(st, txn, seqs, n))) goto fail;
    rc = mdb_txn_commit(txn); /* its data pages flushed (the env's flags) */
    if (rc == 0) atomic_fetch_add(&st->stats.erase_txns, 1);
    goto out;
fail:
    mdb_txn_abort(txn);
out:
    uv_rwlock_rdunlock(&st->resize_lock);
    return rc;
}

int sl_store_erase_events(sl_store_t *st, const uint64_t *seqs, size_t n)
{
    int rc = 0;
    /* LMDB has one writer: each slice holds the log's writer (and every
     * acknowledgement) for a few milliseconds at most, and between slices
     * the writer commits what queued up, however many events go */
    for (size_t i = 0; i < n && rc == 0; i += SL_STORE_ERASE_SLICE)
        rc = erase_slice(st, seqs + i, n - i < SL_STORE_ERASE_SLICE ? n - i : SL_STORE_ERASE_SLICE);
    uv_rwlock_rdlock(&st->resize_lock);
    if (rc == 0 && n && !st->opts.nosync) rc = mdb_env_sync(st->env, 1); /* the last meta page too */
    uv_rwlock_rdunlock(&st->resize_lock);
    return rc;
}

void sl_store_metrics(void *arg, sl_buf_t *b)
{
    sl_store_t *st = arg;
    sl_store_stats_t s;
    sl_store_get_stats(st, &s);
    sl_metric_u64(b, "counter", "sillage_events_stored_total", "Messages durably stored.", s.events_stored);
    sl_metric_u64(b, "counter", "sillage_events_duplicate_total",
                  "Messages acknowledged but not stored again (messageId seen).", s.duplicates);
    sl_metric_u64(b, "counter", "sillage_commits_total", "LMDB write transactions committed (the log).", s.commits);
    sl_metric_u64(b, "counter", "sillage_log_erase_transactions_total",
                  "Write transactions that deleted erased or expired events from the log (SL_STORE_ERASE_SLICE, "
                  "4,096 events at most, each).",
                  s.erase_txns);
    sl_metric_u64(b, "gauge", "sillage_store_compressed",
                  "1 once the zstd dictionary is trained (on the first 4,000 events) and events are stored compressed.",
                  (uint64_t)s.compressed);
    sl_metric_u64(b, "counter", "sillage_commit_failures_total", "Write transactions that failed (answered 503).",
                  s.commit_failures);
    sl_metric_u64(b, "counter", "sillage_requests_failed_alone_total",
                  "Requests that could not be applied, answered 500 while the rest of their commit went on.",
                  s.batches_failed_alone);
    sl_metric_u64(b, "counter", "sillage_lmdb_map_resizes_total", "Times the log's LMDB map grew.", s.map_resizes);
    sl_metric_u64(b, "gauge", "sillage_lmdb_map_size_bytes", "Current LMDB map size of the log.", s.map_size_bytes);
    sl_metric_u64(b, "gauge", "sillage_commit_queue_messages", "Messages waiting for or inside a commit.",
                  atomic_load(&st->queued));
    sl_metric_u64(b, "gauge", "sillage_log_last_seq", "The last event appended to the log.", s.last_seq);
    sl_metric_u64(b, "gauge", "sillage_log_durable_seq", "The last event of the log on disk.",
                  atomic_load(&st->durable_seq));
    sl_metric_u64(b, "gauge", "sillage_dedupe_entries", "Message ids held for deduplication.", s.dedupe_entries);
    sl_metric_u64(b, "counter", "sillage_dedupe_evicted_total",
                  "Message ids forgotten before dedupe_window ended (limits.max_dedupe_ids).", s.dedupe_evicted);
    sl_metric_u64(b, "gauge", "sillage_dedupe_window_seconds",
                  "The dedupe window in force (shorter than dedupe_window once ids were evicted).",
                  (uint64_t)(s.dedupe_window_ms / 1000));
    double bb[11], lb[13];
    for (int i = 0; i < 11; i++) bb[i] = (double)sl_store_batch_bounds[i];
    for (int i = 0; i < 13; i++) lb[i] = (double)sl_store_latency_bounds_us[i] / 1e6;
    sl_metric_histogram(b, "sillage_commit_batch_messages", "Messages per LMDB commit.", bb, 11, s.batch_hist,
                        (double)s.batch_sum);
    sl_metric_histogram(b, "sillage_commit_duration_seconds", "Time to commit one LMDB transaction, fsync included.",
                        lb, 13, s.latency_hist, (double)s.latency_sum_us / 1e6);
}

typedef struct {
    sl_store_t *st;
    const char *name;
    int found;
} has_db_t;

static int has_db_cb(MDB_txn *txn, void *arg)
{
    has_db_t *h = arg;
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn, h->name, 0, &dbi);
    if (rc == 0) {
        MDB_stat stt;
        h->found = mdb_stat(txn, dbi, &stt) == 0 && stt.ms_entries > 0;
    }
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_store_has_db(sl_store_t *st, const char *name)
{
    has_db_t h = {st, name, 0};
    int rc = sl_store_read(st, has_db_cb, &h);
    return rc ? rc : h.found;
}

int sl_store_drop_dbs(sl_store_t *st, const char *const *names)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc) return rc;
    for (size_t i = 0; names[i]; i++) {
        MDB_dbi dbi;
        rc = mdb_dbi_open(txn, names[i], 0, &dbi);
        if (rc == MDB_NOTFOUND) continue;
        if (rc || (rc = mdb_drop(txn, dbi, 1))) {
            mdb_txn_abort(txn);
            return rc;
        }
    }
    rc = mdb_txn_commit(txn);
    return rc == 0 && !st->opts.nosync ? mdb_env_sync(st->env, 1) : rc;
}
