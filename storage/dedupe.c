/* dedupe.c - the in-memory table of recent message ids.
 *
 * Open addressing with linear probing over 128-bit keyed hashes. An entry is
 * live while its time is inside the window; expired entries and tombstones
 * keep probe chains intact and are reused by later inserts, and a rehash
 * (when live + dead slots pass 70 % of the table) drops them, so memory
 * follows the number of ids in one window, not the age of the server.
 * Only the writer thread touches it.
 */
#include "sl_store.h"

#include <stdlib.h>
#include <string.h>

#define TOMBSTONE INT64_MIN

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
    sl_hash128_t *journal;   /* keys inserted since sl_dedupe_mark() */
    size_t n_journal, cap_journal;
};

sl_dedupe_t *sl_dedupe_new(int64_t window_ms)
{
    sl_dedupe_t *d = calloc(1, sizeof(*d));
    if (d == NULL) return NULL;
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

static int rehash(sl_dedupe_t *d, int64_t now_ms)
{
    int64_t horizon = now_ms - d->window_ms;
    size_t live = 0;
    for (size_t i = 0; i < d->cap; i++)
        if (!is_empty(&d->slots[i]) && d->slots[i].ms != TOMBSTONE && d->slots[i].ms >= horizon) live++;
    size_t cap = 1024;
    while (cap < live * 4) cap *= 2;
    entry_t *ns = calloc(cap, sizeof(entry_t));
    if (ns == NULL) return SL_ENOMEM;
    for (size_t i = 0; i < d->cap; i++) {
        entry_t *e = &d->slots[i];
        if (is_empty(e) || e->ms == TOMBSTONE || e->ms < horizon) continue;
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
    if ((d->used + 1) * 10 > d->cap * 7 && rehash(d, now_ms)) return SL_ENOMEM;
    if (journal_push(d, key)) return SL_ENOMEM;
    int64_t horizon = now_ms - d->window_ms;
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
