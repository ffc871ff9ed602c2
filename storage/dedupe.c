/* dedupe.c - the in-memory table of recent message ids.
 *
 * Open addressing with linear probing over 128-bit keyed hashes. An entry is
 * live while its time is inside the window; expired entries and tombstones
 * keep probe chains intact and are reused by later inserts, and a rehash
 * (when live + dead slots pass 70 % of the table) drops them, so memory
 * follows the number of ids in one window, not the age of the server.
 *
 * The table holds at most max_ids ids (its slots are then 24 bytes each at a
 * load between 35 % and 70 %). When a rehash finds more, the oldest quarter
 * is forgotten: the window becomes shorter than window_ms (the floor), which
 * the store reports, and a repeat of a forgotten id is stored again. Ids of
 * the last few seconds are not cut by time; if they alone pass the bound,
 * some of them are forgotten, in table order. Memory never grows past the
 * bound.
 * Only the writer thread touches it.
 */
#include "sl_store.h"

#include <stdlib.h>
#include <string.h>

#define TOMBSTONE INT64_MIN
/* A cut never forgets ids younger than this: messages of a commit in
 * progress were received up to that long before it runs. */
#define DEDUPE_MARGIN_MS 5000

typedef struct entry_s {
    uint64_t lo, hi;
    int64_t ms;
} entry_t;

struct sl_dedupe_s {
    entry_t *slots;
    size_t cap;       /* power of two */
    size_t used;      /* non-empty slots, dead or alive */
    size_t live;      /* approximate: inserts minus rollbacks since the last rehash */
    int64_t window_ms;
    size_t max_ids;
    size_t max_cap;          /* slots at max_ids */
    int64_t floor_ms;        /* ids older than this were forgotten for lack of room */
    uint64_t evicted;
    sl_hash128_t *journal;   /* keys inserted since sl_dedupe_mark() */
    size_t n_journal, cap_journal;
};

sl_dedupe_t *sl_dedupe_new(int64_t window_ms, size_t max_ids)
{
    sl_dedupe_t *d = calloc(1, sizeof(*d));
    if (d == NULL) return NULL;
    d->max_ids = max_ids < 1000 ? 1000 : max_ids;
    d->max_cap = 1024;
    while (d->max_cap * 7 < d->max_ids * 10) d->max_cap *= 2;
    d->floor_ms = INT64_MIN;
    d->cap = 1024;
    d->slots = calloc(d->cap, sizeof(entry_t));
    if (d->slots == NULL) {
        free(d);
        return NULL;
    }
    d->window_ms = window_ms;
    return d;
}

void sl_dedupe_free(sl_dedupe_t *d)
{
    if (d == NULL) return;
    free(d->slots);
    free(d->journal);
    free(d);
}

size_t sl_dedupe_size(const sl_dedupe_t *d)
{
    return d->live;
}

static int is_empty(const entry_t *e)
{
    return e->lo == 0 && e->hi == 0;
}

static int64_t horizon_at(const sl_dedupe_t *d, int64_t now_ms)
{
    int64_t h = now_ms - d->window_ms;
    return h > d->floor_ms ? h : d->floor_ms;
}

static int alive(const entry_t *e, int64_t horizon)
{
    return !is_empty(e) && e->ms != TOMBSTONE && e->ms >= horizon;
}

/* The time from which at most keep of the live ids are newer: a histogram
 * of their times in 1024 buckets between the oldest and the newest, walked
 * from the newest. Never later than the newest live time, nor than
 * latest_ms (ids of messages still being committed may be that old). */
static int64_t cutoff_for(const sl_dedupe_t *d, int64_t horizon, int64_t latest_ms, size_t keep)
{
    enum { NB = 1024 };
    size_t hist[NB] = {0}; /* on the stack: two stores in one process have two writers */
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (size_t i = 0; i < d->cap; i++) {
        if (!alive(&d->slots[i], horizon)) continue;
        if (d->slots[i].ms < lo) lo = d->slots[i].ms;
        if (d->slots[i].ms > hi) hi = d->slots[i].ms;
    }
    if (lo >= hi) return lo; /* one instant: no time to cut at */
    double span = (double)(hi - lo) + 1;
    for (size_t i = 0; i < d->cap; i++)
        if (alive(&d->slots[i], horizon)) hist[(size_t)((double)(d->slots[i].ms - lo) / span * NB)]++;
    size_t kept = 0;
    int64_t cut = lo;
    for (int b = NB - 1; b >= 0; b--) {
        if (kept + hist[b] > keep) {
            /* the start of the bucket above b: what is from there on is kept */
            cut = b == NB - 1 ? lo + (int64_t)((double)b * span / NB) : lo + (int64_t)((double)(b + 1) * span / NB);
            break;
        }
        kept += hist[b];
    }
    if (cut > hi) cut = hi;
    if (cut > latest_ms) cut = latest_ms;
    return cut;
}

static int rehash(sl_dedupe_t *d, int64_t now_ms)
{
    int64_t horizon = horizon_at(d, now_ms);
    size_t live = 0;
    for (size_t i = 0; i < d->cap; i++) live += alive(&d->slots[i], horizon);
    size_t target = d->max_ids * 3 / 4;
    size_t drop_any = 0; /* past a time cut, ids of one instant: forgotten in table order */
    if (live > d->max_ids * 9 / 10) { /* full: forget the oldest, keep three quarters of the bound */
        int64_t cut = cutoff_for(d, horizon, now_ms - DEDUPE_MARGIN_MS, target);
        size_t kept = live;
        if (cut > horizon) {
            kept = 0;
            for (size_t i = 0; i < d->cap; i++) kept += alive(&d->slots[i], cut);
            d->evicted += live - kept;
            d->floor_ms = cut;
            horizon = cut;
        }
        if (kept > target) drop_any = kept - target;
        d->evicted += drop_any;
        live = kept - drop_any;
    }
    size_t cap = 1024;
    while (cap < live * 2) cap *= 2;
    if (cap > d->max_cap) cap = d->max_cap;
    while (cap * 7 < (live + 1) * 10) cap *= 2; /* never full, whatever the bound */
    entry_t *ns = calloc(cap, sizeof(entry_t));
    if (ns == NULL) return SL_ENOMEM;
    for (size_t i = 0; i < d->cap; i++) {
        entry_t *e = &d->slots[i];
        if (!alive(e, horizon)) continue;
        if (drop_any) {
            drop_any--;
            continue;
        }
        size_t j = e->lo & (cap - 1);
        while (!is_empty(&ns[j])) j = (j + 1) & (cap - 1);
        ns[j] = *e;
    }
    free(d->slots);
    d->slots = ns;
    d->cap = cap;
    d->used = d->live = live;
    return 0;
}

static int journal_push(sl_dedupe_t *d, sl_hash128_t key)
{
    if (d->n_journal == d->cap_journal) {
        size_t cap = d->cap_journal ? d->cap_journal * 2 : 256;
        sl_hash128_t *j = realloc(d->journal, cap * sizeof(*j));
        if (j == NULL) return SL_ENOMEM;
        d->journal = j;
        d->cap_journal = cap;
    }
    d->journal[d->n_journal++] = key;
    return 0;
}

int sl_dedupe_check_insert(sl_dedupe_t *d, sl_hash128_t key, int64_t received_ms, int64_t now_ms)
{
    if (((d->used + 1) * 10 > d->cap * 7 || d->live >= d->max_ids) && rehash(d, now_ms)) return SL_ENOMEM;
    if (journal_push(d, key)) return SL_ENOMEM;
    int64_t horizon = horizon_at(d, now_ms);
    size_t mask = d->cap - 1, i = key.lo & mask, reuse = SIZE_MAX;
    for (;;) {
        entry_t *e = &d->slots[i];
        if (is_empty(e)) break;
        if (e->lo == key.lo && e->hi == key.hi && e->ms != TOMBSTONE) {
            if (e->ms >= horizon) {
                d->n_journal--; /* nothing inserted */
                return 1;
            }
            e->ms = received_ms; /* seen before the window: a new message */
            d->live++;
            return 0;
        }
        if (reuse == SIZE_MAX && (e->ms == TOMBSTONE || e->ms < horizon)) reuse = i;
        i = (i + 1) & mask;
    }
    if (reuse == SIZE_MAX) {
        reuse = i;
        d->used++;
    }
    d->slots[reuse].lo = key.lo;
    d->slots[reuse].hi = key.hi;
    d->slots[reuse].ms = received_ms;
    d->live++;
    return 0;
}

void sl_dedupe_mark(sl_dedupe_t *d)
{
    d->n_journal = 0;
}

void sl_dedupe_rollback(sl_dedupe_t *d)
{
    size_t mask = d->cap - 1;
    for (size_t k = 0; k < d->n_journal; k++) {
        sl_hash128_t key = d->journal[k];
        for (size_t i = key.lo & mask; !is_empty(&d->slots[i]); i = (i + 1) & mask) {
            entry_t *e = &d->slots[i];
            if (e->lo == key.lo && e->hi == key.hi && e->ms != TOMBSTONE) {
                e->ms = TOMBSTONE;
                if (d->live) d->live--;
                break;
            }
        }
    }
    d->n_journal = 0;
}

uint64_t sl_dedupe_evicted(const sl_dedupe_t *d)
{
    return d->evicted;
}

int64_t sl_dedupe_window_ms(const sl_dedupe_t *d, int64_t now_ms)
{
    return now_ms - horizon_at(d, now_ms);
}
