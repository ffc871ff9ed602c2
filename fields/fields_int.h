/* fields_int.h - private to fields/: the parsed "computed" section
 * (config.c), the record layouts and the commerce pack's arithmetic
 * (commerce.c), shared with the step (fields.c) and the reads (read.c).
 * Cross-file names carry the fld_ prefix; sl_fields.h is the contract. */
#ifndef SL_FIELDS_INT_H
#define SL_FIELDS_INT_H

#include "sl_fields.h"
#include "sl_rules.h"

#include <stdatomic.h>

/* ---- configuration (config.c) ---- */

#define FLD_MAX_WINDOWS 8
#define FLD_MAX_SEGMENTS 32
#define FLD_MAX_FX 64
#define FLD_MAX_EVENT_NAMES 8
#define FLD_SEGMENT_PROSPECT 0xFF /* a person without orders */
#define FLD_SEGMENT_NONE 0xFE     /* never in a segment yet */
/* the longest window or recency threshold: 100 years. A time plus one stays
 * far inside int64 (a duration may be written up to INT64_MAX ms, and
 * fld_rfm_next() adds it to an order's time). */
#define FLD_MAX_DURATION_MS (36500LL * 86400000LL)

typedef struct {
    char *name;
    uint8_t lo[3], hi[3];   /* r, f, m: inclusive, 1 to 5 */
} fld_segment_t;

/* ---- generic fields (generic.c) ---- */
enum {
    FG_COUNT = 1, FG_SUM, FG_AVG, FG_MIN, FG_MAX, FG_FIRST, FG_LAST, FG_DISTINCT_COUNT, FG_DISTINCT_LIST,
    FG_MOST_FREQUENT, FG_SCORE, FG_LABEL
};
#define FLD_MAX_GFIELDS 32
#define FLD_NAME_MAX 64
#define FLD_VALUE_MAX 128        /* bytes of a value's JSON text (first, last, distinct...): longer ones do not count */
#define FLD_MAX_VALUES 200       /* the bound of max_values */
#define FLD_MAX_BUCKETS 800      /* a window's buckets: 730 days at most */

typedef struct {
    char *event;                 /* the kind: a track's name, or "page", "identify"... */
    sl_cond_t *where;
    double points;
} fld_pts_t;

typedef struct {
    sl_cond_t *cond;             /* on profile.computed */
    char *value;                 /* JSON text */
} fld_label_t;

typedef struct {
    char name[FLD_NAME_MAX + 1];
    int type;                    /* FG_* */
    char *event;                 /* the events it reads (not score, label) */
    sl_cond_t *where;
    char **path;                 /* property, split on dots */
    size_t n_path;
    int64_t window_ms;           /* 0: lifetime */
    int64_t bucket_ms;           /* with a window: 0 a calendar day in `timezone`, else its width */
    int max_values;              /* distinct_*, most_frequent */
    fld_pts_t *points;           /* score */
    size_t n_points;
    fld_label_t *labels;         /* label */
    size_t n_labels;
    char *else_value;
    uint32_t def;                /* a hash of its definition: states kept under another are stale */
} fld_gfield_t;

#define FLD_GSTATE_VERSION 4
#define FG_OVERFLOW 1u           /* distinct values past max_values were seen */
typedef struct {
    int64_t id;                  /* bucket number: a local day, or time / bucket_ms */
    uint64_t count;
    double sum, min, max;
} fld_bucket_t;
typedef struct {
    uint32_t count;
    char text[FLD_VALUE_MAX + 1];
} fld_gvalue_t;
typedef struct {
    uint8_t version, type, flags, pad;
    uint32_t n_buckets, n_values, first_len, last_len, pad2;
    uint64_t count;              /* lifetime aggregates (a window's are its buckets') */
    double sum, min, max;
    int64_t first_ts, last_ts;
    int64_t timer_ms;            /* the window timer set (0: none) */
    uint32_t told_len;           /* the value last told (a watched window's timer compares with it) */
} fld_gfix_t;
typedef struct {
    fld_gfix_t f;
    char told[FLD_VALUE_MAX + 4];
    fld_bucket_t buckets[FLD_MAX_BUCKETS];
    char first[FLD_VALUE_MAX + 1], last[FLD_VALUE_MAX + 1];
    fld_gvalue_t values[FLD_MAX_VALUES];
} fld_gstate_t;

int64_t fld_local_day(int64_t ms);
/* the first instant (ms) of local day `day` (DST days are 23 or 25 hours) */
int64_t fld_local_day_start(int64_t day);
void fld_gstate_init(fld_gstate_t *s, const fld_gfield_t *g);
int fld_gstate_encode(const fld_gstate_t *s, sl_buf_t *b);
/* v as a LEB128 varint into out: its length (1 to 10) */
size_t fld_varint(unsigned char out[10], uint64_t v);
int fld_gstate_decode(const MDB_val *v, fld_gstate_t *s);
/* 1 when the event (its kind: a track's name or the call's type) is one g
 * reads; *points: a score's points for it */
int fld_gfield_matches(const fld_gfield_t *g, const char *kind, size_t kind_len, const sl_stage_event_t *ev,
                       int64_t now, double *points);
/* adds the event to s (1), or leaves s (0: no usable value, or out of the window) */
int fld_gstate_apply(const fld_gfield_t *g, fld_gstate_t *s, const sl_stage_event_t *ev, double points, int64_t now);
void fld_gstate_merge(const fld_gfield_t *g, fld_gstate_t *s, const fld_gstate_t *absorbed);
void fld_gstate_prune(const fld_gfield_t *g, fld_gstate_t *s, int64_t now);
/* when the window's value next changes by time alone (INT64_MAX: never) */
int64_t fld_gstate_next(const fld_gfield_t *g, const fld_gstate_t *s, int64_t now);
/* the value at now, as JSON */
int fld_gstate_value(const fld_gfield_t *g, const fld_gstate_t *s, int64_t now, sl_buf_t *out);

typedef struct fld_conf_s {
    int commerce;                  /* the pack's fields are computed and shown */
    char *currency;                /* amounts converted into it; NULL: summed as sent */
    struct {
        char code[8];
        double rate;               /* 1 code = rate currency */
    } fx[FLD_MAX_FX];
    size_t n_fx;
    char *order_events[FLD_MAX_EVENT_NAMES], *refund_events[FLD_MAX_EVENT_NAMES];
    size_t n_order_events, n_refund_events;
    int64_t windows[FLD_MAX_WINDOWS];
    char window_names[FLD_MAX_WINDOWS][16]; /* "90d" */
    size_t n_windows;
    int promo_min_orders;
    double promo_min_share;
    int max_categories;
    int64_t recency[4];            /* r 5 within recency[0], 4 within [1]... 1 past [3] */
    double frequency[4], monetary[4]; /* f/m 2 from [0], 3 from [1]... 5 from [3] */
    fld_segment_t segments[FLD_MAX_SEGMENTS];
    size_t n_segments;
    fld_gfield_t *gfields;         /* generic fields, in config order */
    size_t n_gfields;
} fld_conf_t;

int fld_gfields_parse(sl_cfg_ctx_t *x, const cJSON *json, fld_conf_t *c);
void fld_gfields_free(fld_conf_t *c);

/* The parsed section of cfg (defaults when the file has none). */
const fld_conf_t *fld_conf(const sl_config_t *cfg);
/* 1 when name is one of names[0..n). */
int fld_name_in(char *const *names, size_t n, const char *name, size_t len);

/* ---- records (commerce.c) ----
 * Host byte order, as everything in the derived store; each begins with a
 * version byte: a record of another version is refused (MDB_CORRUPTED). */
#define FLD_ORDER_VERSION 1
#define FLD_SUM_VERSION 1

/* an order's marks */
#define FO_PLACED 1u        /* the order itself arrived (else only refunds so far) */
#define FO_PROMO 2u         /* a coupon, or a discount > 0 */
#define FO_REV_KNOWN 4u     /* its revenue was converted (a known currency, a finite amount) */
#define FO_REFUNDED 8u      /* fully refunded: out of every figure */
#define FO_BY_MSGID 16u     /* keyed by its messageId (no order_id) */

typedef struct {
    uint8_t version, flags;
    uint16_t n_cats, n_refunds;
    uint16_t pad;
    uint32_t duplicates;
    uint32_t pad2;
    uint64_t person, origin;       /* whose it is now; who placed it */
    uint64_t seq;                  /* the order event in the log */
    int64_t ts_ms;                 /* its timestamp */
    double revenue, total;         /* converted (revenue: 0 unless FO_REV_KNOWN); total: what a
                                    * refund compares with, in the same currency */
    double refunded;               /* refunds so far, converted */
    char currency[8];              /* as sent */
} fld_order_fix_t;

typedef struct {
    int64_t ts_ms;
    double amount;                 /* converted; NAN: the whole order */
    uint64_t seq;
} fld_refund_t;

typedef struct {
    fld_order_fix_t f;
    char cats[SL_FIELDS_ORDER_CATS][SL_FIELDS_CAT_BYTES + 1];
    fld_refund_t refunds[SL_FIELDS_ORDER_REFUNDS];
} fld_order_t;

int fld_order_encode(const fld_order_t *o, sl_buf_t *b);
int fld_order_decode(const MDB_val *v, fld_order_t *o);
/* the order's revenue net of its refunds, never below 0 (0 once refunded) */
double fld_order_net(const fld_order_t *o);

/* porders values: what a window needs of an order */
typedef struct {
    double net;                    /* fld_order_net() */
    uint8_t flags;                 /* FO_* */
    uint8_t pad[7];
} fld_porder_t;

/* A person's summary (fstate): figures over its orders that are placed
 * and not refunded, and the RFM segment it was last put in. */
#define FS_CAT_OVERFLOW 1u
typedef struct {
    uint8_t version, flags;
    uint8_t seg, prev_seg;         /* FLD_SEGMENT_*, or an index in the segment table */
    uint8_t r, f, m, pad;          /* the RFM scores seg was put from (0: none) */
    uint32_t n_cats;
    uint32_t orders, rev_orders, promo_orders;
    int64_t first_ms, second_ms, last_ms;
    double revenue;
    int64_t seg_since_ms;          /* when it entered seg (0: never) */
    int64_t timer_ms;              /* the RFM timer set (0: none) */
    char currency[8];              /* with no configured currency: the last order's */
} fld_sum_fix_t;

#define FLD_MAX_CATEGORIES 256     /* the bound of commerce.max_categories */
typedef struct {
    fld_sum_fix_t f;
    struct {
        uint32_t count;
        char name[SL_FIELDS_CAT_BYTES + 1];
    } cats[FLD_MAX_CATEGORIES];
} fld_sum_t;

int fld_sum_encode(const fld_sum_t *s, sl_buf_t *b);
int fld_sum_decode(const MDB_val *v, fld_sum_t *s);
void fld_sum_init(fld_sum_t *s);
/* Adds (sign 1) or removes (-1) order o's share of the figures. */
void fld_sum_order(fld_sum_t *s, const fld_order_t *o, int sign, int max_categories);
/* Folds absorbed into s (a merge): exact, as if every order had been s's. */
void fld_sum_merge(fld_sum_t *s, const fld_sum_t *absorbed, int max_categories);

/* RFM scores of s at now (0 when it has no orders) and its segment. */
typedef struct {
    int r, f, m;
    uint8_t seg;
} fld_rfm_t;
fld_rfm_t fld_rfm(const fld_conf_t *c, const fld_sum_t *s, int64_t now);
/* When s's recency score next changes after now (INT64_MAX: never). */
int64_t fld_rfm_next(const fld_conf_t *c, const fld_sum_t *s, int64_t now);
const char *fld_segment_name(const fld_conf_t *c, uint8_t seg);

/* The window sums of a person, read from porders. */
typedef struct {
    uint32_t orders[FLD_MAX_WINDOWS], rev_orders[FLD_MAX_WINDOWS];
    double revenue[FLD_MAX_WINDOWS];
} fld_windows_t;

/* Every computed field of s as flat (name, JSON value) pairs, in one order
 * for a configuration (changes compare two lists by index); names are
 * static or in the conf (window names), values in the pairs' buffer. */
#define FLD_MAX_FLAT 128
typedef struct {
    size_t n;
    const char *name[FLD_MAX_FLAT];
    char wname[FLD_MAX_WINDOWS][3][24];
    sl_buf_t scratch;              /* labels: the object they read */
    size_t off[FLD_MAX_FLAT], len[FLD_MAX_FLAT];
    sl_buf_t text;
} fld_flat_t;
/* gvals: the generic fields' values (JSON texts, config order; labels'
 * ignored: they are evaluated here, over the other values); NULL: each
 * field's empty value */
int fld_flatten(const fld_conf_t *c, const fld_sum_t *s, const fld_windows_t *w, const sl_buf_t *gvals, int64_t now,
                fld_flat_t *out);
/* The flat pairs as the nested object the profile shows ("rfm.r" under "rfm"). */
int fld_flat_object(const fld_flat_t *fl, sl_buf_t *out);
/* The fields whose changes are told (not rfm.since / rfm.previous). */
int fld_flat_tracked(const char *name);

/* ---- the component (fields.c; read.c reads through it) ---- */
#define FLD_MAX_LISTENERS 4
#define FLD_PORDER_PREFIX 16 /* person (8), time (8) */

struct sl_fields_s {
    const sl_config_t *_Atomic cfg; /* swapped by sl_fields_reload (stage thread); readers load it */
    sl_stitch_t *stitch;
    sl_stage_t *stage;
    sl_stage_step_t step;
    sl_ident_listener_t ilis;
    sl_fields_listener_t listeners[FLD_MAX_LISTENERS];
    size_t n_listeners;
    MDB_dbi ledger, porders, fstate, fmeta; /* (the generic fields' records are person attachments) */
    /* backfills (stage thread), by generic field: the log's events up to upto,
     * when the field's definition began, are read from next on; readers see
     * bf_mask and the progress */
    struct {
        int on;
        uint64_t next, upto;
    } bf[FLD_MAX_GFIELDS], bf_committed[FLD_MAX_GFIELDS]; /* as of the last commit: an abort goes back to it */
    _Atomic uint64_t bf_mask, bf_next[FLD_MAX_GFIELDS], bf_upto[FLD_MAX_GFIELDS];
    _Atomic uint64_t backfilled;         /* events a backfill read */
    int have_dbs;                /* 0: a read-only open of a store from before the ledger */
    /* stage thread scratch */
    sl_buf_t k, v, k2;
    fld_order_t ord;
    fld_sum_t *sum, *sum2;
    fld_gstate_t *gs, *gs2;      /* generic fields' states */
    sl_buf_t gvals[FLD_MAX_GFIELDS]; /* their values, for a flat list */
    sl_buf_t gstates[FLD_MAX_GFIELDS]; /* states encoded for a person's record */
    sl_buf_t grec_old, grec_out; /* a person's record: read (a copy), written */
    sl_buf_t vold;               /* a watched field's value before an event */
    fld_flat_t fl_old, fl_new;
    cJSON *changes;              /* the event's (ctx->computed_changes) */
    cJSON *tchanges;             /* a timer's, or a change of another person than the event's */
    int quiet;                   /* the event under way is historical (an import): listeners hear nothing */
    struct {                     /* what listeners watch (stage thread; remade when invalid) */
        int valid, any, rfm, labels;
        uint64_t gmask;          /* generic fields watched, by index */
        uint8_t flat[FLD_MAX_FLAT]; /* by index in the flat list */
    } watch;
    sl_arena_t arena;
    _Atomic uint64_t orders, duplicates, refunds, refunds_unmatched, unknown_currency, amounts_ignored, refunds_untrusted;
    _Atomic uint64_t timers, timer_changes, timer_late_ms_max;
    struct {
        uint64_t backfilled;
        uint64_t orders, duplicates, refunds, refunds_unmatched, unknown_currency, amounts_ignored, refunds_untrusted;
        uint64_t timers, timer_changes, timer_late_ms_max;
    } pend;
};

/* person's summary into s (an empty one, *found 0, when it has none) */
int fld_sum_load(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_sum_t *s, int *found);
/* Calls fn for each of person's orders, oldest first, with its porders key
 * and value and (o not NULL) its ledger record in *o; fn may not write
 * porders. */
int fld_each_order(sl_fields_t *f, MDB_txn *txn, uint64_t person, fld_order_t *o,
                   int (*fn)(void *arg, const MDB_val *pkey, const fld_porder_t *po, const fld_order_t *o), void *arg);
/* the generic fields' values of person at now into gv[0..n_gfields)
 * (scratch: a state buffer of the caller's) */
int fld_gvalues(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now, fld_gstate_t *scratch, sl_buf_t *gv);
/* The state of generic field g of person (an empty one, *found 0, when it
 * has none): any thread. */
int fld_gstate_read(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_gfield_t *g, fld_gstate_t *s, int *found);
/* An order's ledger key into k: 'o' + properties.order_id (a string, or a
 * number as written), else (by_msgid_ok) 'm' + the messageId; cut at
 * SL_FIELDS_ORDER_KEY_MAX between characters. SL_ENOTFOUND: no key. */
int fld_order_key(sl_jval_t props, const char *message_id, int by_msgid_ok, sl_buf_t *k, sl_arena_t *a, int *by_msgid);
/* A stored event read back as the stage hands it to the steps (backfill,
 * verify): its members, its corrected timestamp in the context, its kind
 * (a track's name, else its type; decoded into a). r must not move while
 * r->ev is used. 0, or SL_EINVAL: not an object with a kind and a
 * timestamp. */
typedef struct {
    sl_jindex_t top, context;
    sl_stage_ctx_t ctx;
    sl_stage_event_t ev;
    const char *kind;
    size_t kind_len;
} fld_replay_t;
int fld_replay_event(fld_replay_t *r, const char *json, size_t len, uint64_t seq, sl_arena_t *a);
/* The kind of the event whose members are top (NULL: none). */
const char *fld_event_kind(const sl_jindex_t *top, sl_arena_t *a, size_t *len);
/* The generic fields' records (fields.c), shared with the backfill: a
 * person's record copied into out (empty: none); the state of g in it (an
 * empty one, *found 0, when none or stale); after a change at now, windows
 * pruned and a tracked field's value told and timer set; the record
 * written with the states of repl[0..n) replaced. Stage thread (grec_get:
 * any). */
int fld_grec_get(sl_fields_t *f, MDB_txn *txn, uint64_t person, sl_buf_t *out);
int fld_gstate_from(const MDB_val *rec, const fld_gfield_t *g, fld_gstate_t *s, int *found);
int fld_gstate_settle(sl_fields_t *f, MDB_txn *txn, uint64_t person, const fld_gfield_t *g, fld_gstate_t *s,
                      int64_t now);
int fld_grec_put(sl_fields_t *f, MDB_txn *txn, uint64_t person, const sl_buf_t *old, const fld_gfield_t *const *repl,
                 const sl_buf_t *states, size_t n);
/* What the listeners watch, asked again when the rules or the config changed. */
void fld_watch_update(sl_fields_t *f);
/* backfill.c: which generic fields must read the log's past (the step's
 * open, a reload's job), and the stage step's due/tick that read it. */
int fld_backfill_plan(sl_fields_t *f, MDB_txn *txn);
int64_t fld_backfill_due(void *arg);
int fld_backfill_tick(void *arg, MDB_txn *txn, int64_t now, int *wrote);
/* A reader's flat list of person at now (its own scratch: any thread). */
int fld_read_flat(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now, fld_flat_t *fl);
/* person's window sums at now */
int fld_windows(sl_fields_t *f, MDB_txn *txn, uint64_t person, int64_t now, fld_windows_t *w);

#endif
