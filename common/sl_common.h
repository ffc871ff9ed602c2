/* sl_common.h - small pieces every sillage module uses: error codes, a
 * per-request arena, a growable byte buffer, wall-clock time in ISO 8601, a
 * keyed 128-bit hash, and the parsers for durations and sizes.
 *
 * Errors: functions return 0 or a negative code. Codes in the SL_E* range are
 * ours; anything else is a libuv code (negative errno), an LMDB code (MDB_*,
 * -30799..-30780) or an errno value LMDB passed through (positive), and
 * sl_strerror() knows all of them.
 */
#ifndef SL_COMMON_H
#define SL_COMMON_H

#include <stddef.h>
#include <endian.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

enum {
    SL_EINVAL   = -20001, /* malformed input */
    SL_ENOMEM   = -20002, /* allocation failed */
    SL_ETOOBIG  = -20003, /* an input passed its bound */
    SL_EBUSY    = -20004, /* a queue is full: try again later */
    SL_ESTORE   = -20005, /* the store could not commit */
    SL_ESHUTDOWN = -20006, /* the server is stopping */
    SL_ENOTFOUND = -20007, /* no such thing */
    SL_EAGAIN   = -20008  /* done for now, do it again (internal) */
};

/* Text for any code returned by a sillage function: our own codes, libuv's
 * (negative errno), and LMDB's (positive MDB_* codes). Never NULL. */
const char *sl_strerror(int rc);

/* ---- arena ----------------------------------------------------------------
 * A bump allocator freed in one call. Blocks are malloc'd as needed; a request
 * lives in one arena and everything it allocates goes when it is answered. */
typedef struct sl_arena_block_s sl_arena_block_t;
typedef struct sl_arena_s {
    sl_arena_block_t *head;
    size_t used_bytes; /* total handed out, for bounds and metrics */
} sl_arena_t;

void sl_arena_init(sl_arena_t *a);
/* Returns 8-byte aligned memory, or NULL when malloc fails. */
void *sl_arena_alloc(sl_arena_t *a, size_t n);
char *sl_arena_strndup(sl_arena_t *a, const char *s, size_t n);
/* Frees every block; the arena is reusable afterwards. */
void sl_arena_free(sl_arena_t *a);
/* Forgets every allocation but keeps one block for reuse. */
void sl_arena_reset(sl_arena_t *a);

/* cJSON allocation hooks. Once installed (once, at start, before any cJSON
 * object exists), cJSON allocates from the arena set for the calling thread
 * with sl_json_arena_swap(), and free() of such memory is a no-op: a request's
 * parse tree costs a handful of arena blocks instead of a malloc per node.
 * Without an arena set, allocations go to the heap as usual. Memory cJSON
 * hands out (cJSON_Print...) must then be released with cJSON_free(). */
void sl_json_hooks_install(void);

/* The string member name of o, or NULL (absent, not a string, o not an object). */
struct cJSON;
const char *sl_json_str(const struct cJSON *o, const char *name);
/* Prints x as cJSON_PrintUnformatted() would, byte for byte, into buf
 * (cap bytes, NUL included): *len gets the length. Returns 0, or SL_ETOOBIG
 * when it does not fit (buf then holds a cut-off prefix). Without cJSON's
 * sprintf and sscanf per whole number, it is what
 * the ack path prints every message with. Depth: the caller's bound
 * (sl_json_prescan). */
int sl_json_print(const struct cJSON *x, char *buf, size_t cap, size_t *len);
/* A number as sl_json_print() writes it (cJSON's form: "null" for inf and
 * nan), into out; returns its length. */
size_t sl_json_num(double d, char out[32]);
/* Sets the calling thread's cJSON arena (NULL: the heap); returns the old one.
 * A no-op returning NULL when the hooks are not installed. */
sl_arena_t *sl_json_arena_swap(sl_arena_t *a);

/* How many bytes of s[0..n) go into a JSON string as they are: the length
 * before the first that JSON escapes (a control character, '"' or '\\'),
 * n when none does. Eight bytes at a time: what printing a string, and
 * reading one, spend most of their time on. */
size_t sl_json_plain_len(const char *s, size_t n);
/* The run of bytes at s that need no escape in a JSON string (and, with
 * ascii_only, are below 0x80: UTF-8 the caller checks itself), eight at a
 * time. Inline: the ack path's scanner calls it for every string. */
static inline size_t sl_json_plain_run(const char *s, size_t n, int ascii_only)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t i = 0;
    /* 8 bytes at a time: a word with none of them goes whole. A borrow may
     * mark bytes after the first one found, never before it. */
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        w = htole64(w);
        uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
        uint64_t m = (((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w) | (ascii_only ? w : 0)) & highs;
        if (m) return i + (size_t)__builtin_ctzll(m) / 8;
    }
    while (i < n && (unsigned char)s[i] >= 0x20 && !(ascii_only && (unsigned char)s[i] >= 0x80) && s[i] != '"' &&
           s[i] != '\\')
        i++;
    return i;
}


/* ---- JSON without a tree ---------------------------------------------------
 * Reads members out of the text of a JSON value without parsing it whole:
 * what the derivation stage's steps read of each stored event (its type, ids,
 * timestamp, a few nested members), at the cost of scanning to them. A value
 * is a span of the text; every call stays inside its span, and text that is
 * not well-formed where it is scanned reads as absent (SL_JNONE). Members
 * are found by their decoded name, the first of a name (stored events have
 * no repeated member: the collector refuses them). */
/* The deepest JSON any part of sillage reads: the bound of
 * limits.max_json_depth (what the collector stores) and the depth the
 * tree-less reader checks to (cJSON's own limit is 1000 too). */
#define SL_JSON_MAX_DEPTH 1000
typedef struct sl_jval_s {
    const char *p;  /* the value's first byte (after any blank) */
    size_t n;       /* its length; 0: absent */
} sl_jval_t;
enum { SL_JNONE = 0, SL_JNULL, SL_JFALSE, SL_JTRUE, SL_JNUM, SL_JSTR, SL_JARR, SL_JOBJ };
/* The value spanning text[0..n) with blanks around it, or an absent one when
 * the text is not exactly one well-formed value (structure, strings and
 * literals are checked; numbers are checked when read). */
sl_jval_t sl_jroot(const char *text, size_t n);
int sl_jtype(sl_jval_t v);
/* Member key of object obj (absent when obj is no object or has none). */
sl_jval_t sl_jget(sl_jval_t obj, const char *key);
/* The string v decoded (escapes, \u pairs to UTF-8), NUL-terminated, in a
 * (its bytes may hold a NUL from \u0000: *len, when not NULL, says how many
 * there are); NULL when v is not a well-formed string or out of memory. */
const char *sl_jstr(sl_jval_t v, sl_arena_t *a, size_t *len);
/* 1 and *out when v is a number as JSON writes them (strtod's value), else 0. */
int sl_jnum(sl_jval_t v, double *out);
/* 1 when v is a string whose decoded bytes are exactly s[0..n) (no copy). */
int sl_jstr_eq(sl_jval_t v, const char *s, size_t n);
/* Members of an object, elements of an array, in order: sl_jnext() gives the
 * next (key: the member's name as a string value; absent for an array) and
 * returns 1, or 0 at the end or at text that is not well-formed. */
typedef struct sl_jiter_s {
    const char *p, *end;
    int obj;
} sl_jiter_t;
void sl_jiter(sl_jval_t v, sl_jiter_t *it);
int sl_jnext(sl_jiter_t *it, sl_jval_t *key, sl_jval_t *val);
/* An object's members found once, for many lookups (a lookup with sl_jget
 * scans from the start each time): the first SL_JINDEX_MAX, by name; a name
 * past them is looked up in the object itself. Made by sl_jroot_index(). */
#define SL_JINDEX_MAX 32
typedef struct sl_jindex_s {
    sl_jval_t obj;
    size_t n;
    sl_jval_t key[SL_JINDEX_MAX], val[SL_JINDEX_MAX];
} sl_jindex_t;
sl_jval_t sl_jindex_get(const sl_jindex_t *ix, const char *key);
/* sl_jroot(), and in the same pass the index of the root's members (top,
 * when the root is an object) and of its member named sub when that is an
 * object (sub_ix; sub NULL: none), in their order: what a reader of many
 * members pays once. Both are empty when the text is not well-formed. */
sl_jval_t sl_jroot_index(const char *text, size_t n, sl_jindex_t *top, const char *sub, sl_jindex_t *sub_ix);

/* ---- growable buffer ------------------------------------------------------
 * Heap-backed; sl_buf_free() releases it. Append functions return 0 or
 * SL_ENOMEM; on failure the buffer keeps its previous contents. */
typedef struct sl_buf_s {
    char *data;
    size_t len;
    size_t cap;
} sl_buf_t;

int sl_buf_reserve(sl_buf_t *b, size_t extra);
int sl_buf_append(sl_buf_t *b, const void *p, size_t n);
int sl_buf_appends(sl_buf_t *b, const char *s);
int sl_buf_printf(sl_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
int sl_buf_append_json_str(sl_buf_t *b, const char *s, size_t n);
/* Appends a derived number (a sum, a cart's value) as JSON with two decimals.
 * Never prints inf or nan, which are not JSON: a non-finite x is null. Every
 * number sillage computes goes out through it. */
int sl_buf_append_amount(sl_buf_t *b, double x);
void sl_buf_free(sl_buf_t *b);

/* ---- amounts ---------------------------------------------------------------
 * A revenue, total, price or quantity read from an event is used only when it
 * is finite and within +-SL_AMOUNT_MAX (a thousand billion, beyond any real
 * order): otherwise it is ignored (and counted by its reader). Bounded inputs
 * keep every sum of them finite; sums are checked all the same. */
#define SL_AMOUNT_MAX 1e15
int sl_amount_ok(double x);
/* *sum += x unless the result would not be finite (then *sum is unchanged and
 * SL_ETOOBIG is returned). */
int sl_amount_add(double *sum, double x);

/* ---- time -----------------------------------------------------------------*/
/* Wall clock, milliseconds since the Unix epoch (UTC). */
int64_t sl_now_ms(void);
/* Monotonic clock in nanoseconds, for latencies. */
uint64_t sl_mono_ns(void);
/* Names the calling thread (at most 15 characters: `top -H`, perf, /proc). */
void sl_thread_name(const char *name);
/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" (24 chars + NUL) into out[32]. */
void sl_time_format_iso(int64_t ms, char out[32]);
/* Appends a duration as the JSON string the config takes back ("1h", "90s",
 * "7d", "250ms": the largest unit that divides it). */
int sl_buf_append_duration(sl_buf_t *b, int64_t ms);
/* Appends ms as a JSON string in that format, or null when ms is 0 (never set). */
int sl_buf_append_iso(sl_buf_t *b, int64_t ms);
/* The local day of ms in the process's timezone (the top-level `timezone`,
 * sl_timezone_apply), as days since 1970-01-01. */
int64_t sl_local_day(int64_t ms);
/* Appends day (days since 1970-01-01) as the JSON string "YYYY-MM-DD". */
int sl_buf_append_day(sl_buf_t *b, int64_t day);
/* Parses ISO 8601 / RFC 3339: date, 'T' or ' ', time with optional fraction,
 * then 'Z', '+HH:MM', '+HHMM' or nothing (UTC). A bare date is midnight UTC.
 * Returns 0 and *ms, or SL_EINVAL. */
int sl_time_parse_iso(const char *s, size_t n, int64_t *ms);

/* ---- big-endian keys --------------------------------------------------------
 * LMDB compares keys as bytes: big-endian integers sort by value. */
static inline void sl_be64_put(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}

/* The value of hexadecimal digit c (either case), or -1. */
static inline int sl_hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The value of the four hexadecimal digits at p (a \u escape's), or -1. */
static inline long sl_hex4(const char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = sl_hex_digit(p[i]);
        if (h < 0) return -1;
        v = v << 4 | h;
    }
    return v;
}

/* The escape of byte c inside a JSON string, as cJSON writes it (\n, \b,
 * \u001f...) into out; 0 when c goes as it is. One rule for every JSON
 * sillage writes (sl_buf_append_json_str(), sl_json_print(), the ack
 * path's printer). */
size_t sl_json_escape_byte(unsigned char c, char out[6]);

static inline uint64_t sl_be64_get(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

/* ---- entities ---------------------------------------------------------------
 * What derived state is about: a kind and a number. Persons ("p_<n>") today,
 * accounts next. One formatter and one parser for the text form. */
enum { SL_ENTITY_PERSON = 1 };
typedef struct sl_entity_s {
    uint8_t kind;  /* SL_ENTITY_PERSON */
    uint64_t id;
} sl_entity_t;
#define SL_ENTITY_STR_BYTES 32
/* Writes e's text form ("p_42") NUL-terminated into out; returns its length,
 * 0 (and "") for an unknown kind. */
size_t sl_entity_format(sl_entity_t e, char out[SL_ENTITY_STR_BYTES]);
/* Parses exactly s[0..n): a known prefix, then a decimal u64 without sign or
 * leading zero. 0 and *out, or SL_EINVAL. */
int sl_entity_parse(const char *s, size_t n, sl_entity_t *out);
/* The binary form in keys (derived state, timers, pressure, the feed's
 * index): the kind, then the id big-endian, so one entity's keys are
 * adjacent and persons and accounts never share one. */
#define SL_ENTITY_KEY_BYTES 9
static inline void sl_entity_key_put(unsigned char *p, sl_entity_t e)
{
    p[0] = e.kind;
    sl_be64_put(p + 1, e.id);
}
static inline sl_entity_t sl_entity_key_get(const unsigned char *p)
{
    return (sl_entity_t){p[0], sl_be64_get(p + 1)};
}

/* ---- hashing --------------------------------------------------------------*/
typedef struct sl_hash128_s {
    uint64_t lo, hi;
} sl_hash128_t;

/* A keyed, non-cryptographic 128-bit hash. The key is a per-store random seed
 * so outsiders cannot aim collisions at other visitors' message ids. Never
 * returns the all-zero value (it is the empty-slot marker of hash tables). */
sl_hash128_t sl_hash128(const void *p, size_t n, uint64_t seed);
/* qsort/bsearch order of uint64_t values. */
int sl_u64_cmp(const void *a, const void *b);

/* Fills buf with n random bytes from the kernel. Returns 0 or -errno. */
int sl_random_bytes(void *buf, size_t n);

/* 1 when the secret a[0..alen) equals b[0..blen), in time that depends only
 * on blen (the configured secret's length), never on where they differ. */
int sl_secret_equal(const char *given, size_t glen, const char *secret, size_t slen);
/* Writes a random RFC 4122 version-4 UUID (36 chars + NUL) into out[37]. */
void sl_uuid4(char out[37]);

/* ---- logging a URL ---------------------------------------------------------
 * URLs in the config carry secrets (a NATS password, a webhook's api_key).
 * sl_url_redact() writes url into out[outlen] (truncated, always terminated)
 * with any userinfo shown as "***@" and the query string or fragment as
 * "?***" / "#***", for every URL of a comma-separated list (NATS servers).
 * Where it cannot tell a query from a password it hides more, never less.
 * Returns out. */
char *sl_url_redact(const char *url, char *out, size_t outlen);

/* ---- units ----------------------------------------------------------------*/
/* "250ms", "30s", "15m", "1h", "7d" -> milliseconds. SL_EINVAL otherwise. */
int sl_parse_duration_ms(const char *s, int64_t *ms);
/* "512000", "64KB", "500MB", "8GB" (powers of 1024; "B" optional) -> bytes. */
int sl_parse_size_bytes(const char *s, uint64_t *bytes);

/* ---- hand-off between threads ------------------------------------------------
 * The one way work crosses between the loop thread and a worker thread (the
 * log's writer, the stage, the NATS threads), in either direction: an
 * intrusive queue of items, many producers, one consumer, as libuv's
 * threadpool hands completed work back (uv__work_done: lock, move the whole
 * list out, unlock, run each item).
 *
 * Items are the caller's structs; each embeds a pointer to the next item
 * (`struct job *next`), whose offset sl_handoff_init() is given. The queue
 * owns that pointer from sl_handoff_push() until sl_handoff_take_all() hands
 * the item back, NULL-terminated, linked through the same pointer.
 *
 * The consumer is woken one of two ways, chosen at sl_handoff_init():
 *   - loop given: a uv_async on that loop runs on_wake(h) on the loop thread
 *     (for work handed to the loop);
 *   - loop NULL: a condition variable that the worker thread waits on with
 *     sl_handoff_wait(), with or without a timeout (for work handed to it).
 * A push wakes the consumer only when the queue goes from empty to
 * non-empty: a burst of pushes before the consumer takes costs one wake-up,
 * and one take_all() then carries the whole burst. The wake-up is sent after
 * the lock is released: a consumer woken on the producer's core does not run
 * only to block on that lock.
 *
 * Batches, not events: a loop thread that hands work to a worker can push
 * through a batch of its own (sl_handoff_batch_t, on its loop, in front of
 * the worker's queue): what it pushes during one iteration of its loop goes
 * over as one list, with one wake-up, once that iteration's callbacks have
 * run (a uv_check) or before the loop would block (a uv_prepare), never
 * later. (Those two handles keep no loop alive: something else must, as the
 * consumer's done queue does.) The worker then takes every request one pass
 * of the loop parsed instead of waking for the first and leaving the rest
 * for its next round. Several loops may each have a batch in front of the
 * same queue.
 *
 * Order: take_all() returns items in the order their pushes took the queue's
 * lock (FIFO); one producer's items keep that producer's order; a
 * push_list() stays contiguous.
 *
 * Threads:
 *   init            async: the loop thread; condition: any, before use
 *   push, push_list any thread, until close
 *   batch_*         the batch's loop thread
 *   wake            any thread; a no-op after close
 *   take_all        the consumer only (async: the loop thread; condition: the
 *                   thread that waits), also after close
 *   wait            the consumer, condition mode only
 *   close           async: the loop thread; condition: any thread (close the
 *                   batches in front of it first: a batch's flush after it
 *                   is refused)
 *   destroy         once no thread can touch h (async: after the loop has
 *                   run once past close)
 *
 * Close: pushes are refused from then on (the item stays the caller's) and
 * wakes do nothing; what was queued before stays for take_all(). A waiting
 * consumer wakes up; async, the handle closes and closed_cb(h) runs on the
 * loop. */
typedef struct sl_handoff_s sl_handoff_t;
struct sl_handoff_s {
    uv_mutex_t mu;
    uv_cond_t cv;              /* condition mode */
    uv_async_t async;          /* async mode */
    void (*on_wake)(sl_handoff_t *h);
    void (*closed_cb)(sl_handoff_t *h);
    void *head, *tail;         /* under mu */
    size_t next_offset;
    uint64_t wakeups;          /* under mu */
    int waiting, woken, closed; /* under mu */
    int sending;               /* under mu, async: wake-ups decided, not sent yet */
    int async_mode, inited;
    void *data;                /* the owner's: sl_handoff_init() leaves it alone */
};
/* One loop's pushes to a condition-mode handoff, an iteration at a time. */
typedef struct sl_handoff_batch_s {
    sl_handoff_t *to;
    uv_prepare_t prepare;
    uv_check_t check;
    void *head, *tail;         /* this iteration's, not handed over yet */
    int started, closed, open_handles;
    void (*closed_cb)(struct sl_handoff_batch_s *b);
    void *data;                /* the owner's */
} sl_handoff_batch_t;
#define SL_HANDOFF_FOREVER UINT64_MAX

/* Initialises h for items whose next pointer is at next_offset (offsetof).
 * loop non-NULL: async mode, on the loop thread; on_wake(h) then runs on the
 * loop thread after pushes or wakes (not once per push), and must call
 * sl_handoff_take_all(): a queue left non-empty wakes no one until emptied.
 * loop NULL: condition mode (on_wake unused). 0, or libuv's error (nothing to
 * destroy then). */
int sl_handoff_init(sl_handoff_t *h, size_t next_offset, uv_loop_t *loop, void (*on_wake)(sl_handoff_t *h));
/* Appends item; wakes the consumer when the queue was empty (condition mode:
 * when it is waiting). 0, or SL_ESHUTDOWN after close (item not queued). */
int sl_handoff_push(sl_handoff_t *h, void *item);
/* Appends a NULL-terminated chain of items in its order, under one lock and
 * with one wake-up at most. 0 (also for an empty chain), or SL_ESHUTDOWN after
 * close (nothing queued). */
int sl_handoff_push_list(sl_handoff_t *h, void *first);
/* On the loop thread that will push through b: b hands each iteration's
 * pushes over to to (condition mode), with two handles on loop
 * (unreferenced: they keep no loop alive). 0 or libuv's error. */
int sl_handoff_batch_start(sl_handoff_batch_t *b, sl_handoff_t *to, uv_loop_t *loop);
/* That loop thread: appends item to this iteration's batch (see above); in
 * queue order with the thread's other pushes through b. 0, or SL_ESHUTDOWN
 * once b (or its queue) is closed. */
int sl_handoff_push_batched(sl_handoff_batch_t *b, void *item);
/* That loop thread: hands the batch under way over and closes the handles;
 * closed_cb(b) (may be NULL) runs on the loop once they are closed (b's
 * memory may go then). Pushes are refused from then on. 0, or SL_ESHUTDOWN
 * when the queue was closed before (the batch's items, still linked, are
 * the caller's again: *left). Again: a no-op. */
int sl_handoff_batch_close(sl_handoff_batch_t *b, void **left, void (*closed_cb)(sl_handoff_batch_t *b));
/* Consumer: moves every queued item out, oldest first, NULL-terminated
 * through their next pointers; NULL when there are none. */
void *sl_handoff_take_all(sl_handoff_t *h);
/* Wakes the consumer without an item, for state it reads under its own
 * lock (the log's durable end, a stop). Condition mode: the wake is kept
 * until the next sl_handoff_wait() returns, so a wake between the consumer's
 * look at its state and its wait is not lost. */
void sl_handoff_wake(sl_handoff_t *h);
/* Condition mode, the consumer: returns at once when items are queued, a
 * wake is pending or h is closed, else waits for one of them, at most
 * timeout_ns (SL_HANDOFF_FOREVER: no bound). Clears the pending wake.
 * 0 (look at the queue and your state), UV_ETIMEDOUT, or SL_ESHUTDOWN
 * (closed: what was queued before is still there for take_all). */
int sl_handoff_wait(sl_handoff_t *h, uint64_t timeout_ns);
/* Refuses pushes and wakes from now on and wakes the consumer. Async mode
 * (loop thread): waits for a uv_async_send() a producer began before (wakes
 * are sent after the lock is released), then closes the handle; closed_cb
 * (may be NULL) runs on the loop once it is closed. Condition mode: closed_cb
 * is not used. Again: no-op. */
void sl_handoff_close(sl_handoff_t *h, void (*closed_cb)(sl_handoff_t *h));
/* Frees the lock and condition; a no-op on a zeroed h that was never
 * initialised. Items still queued stay the caller's (take them first). */
void sl_handoff_destroy(sl_handoff_t *h);
/* How many times the consumer was woken (async sends, condition signals):
 * for tests and metrics. Any thread. */
uint64_t sl_handoff_wakeups(sl_handoff_t *h);

/* ---- logging --------------------------------------------------------------*/
enum { SL_LOG_DEBUG, SL_LOG_INFO, SL_LOG_WARN, SL_LOG_ERROR };
extern int sl_log_level;
void sl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prometheus text format: one metric with its HELP and TYPE lines. type is
 * "counter" or "gauge"; labels (may be NULL) is the inside of {...}. */
void sl_metric_u64(sl_buf_t *b, const char *type, const char *name, const char *help, uint64_t v);
void sl_metric_f64(sl_buf_t *b, const char *type, const char *name, const char *help, double v);
/* The HELP and TYPE lines alone, then one sample per label set with
 * sl_metric_sample(). */
void sl_metric_head(sl_buf_t *b, const char *type, const char *name, const char *help);
void sl_metric_sample(sl_buf_t *b, const char *name, const char *labels, uint64_t v);
/* A histogram: counts[0..n_bounds] per bucket (the last one past every
 * bound), bounds[i] the bucket's upper bound, sum of the observations. */
void sl_metric_histogram(sl_buf_t *b, const char *name, const char *help, const double *bounds, size_t n_bounds,
                         const uint64_t *counts, double sum);

/* mkdir -p with mode 0750 for what it creates. 0 or -errno. */
int sl_mkdir_p(const char *path);

/* Opens directory path for a backup, creating it (and its parents) when
 * missing, without following a symbolic link at its last component (a
 * planted DEST link would send the copy elsewhere); a directory created here
 * is 0750 whatever the umask, an existing one keeps its mode (the operator
 * chose it). Returns the descriptor, or a negative errno (-ELOOP or -ENOTDIR:
 * a symbolic link or not a directory). */
int sl_dir_open_nofollow(const char *path);
/* Consistent compacting copy of env as data.mdb in the directory dirfd,
 * created 0640 whatever the umask, never over an existing file nor through a
 * symbolic link, fsynced; a failed copy is removed. lock (may be NULL) is held
 * shared during the copy (the caller's map-resize lock). 0, -EEXIST when the
 * directory holds a data.mdb, -errno or an LMDB error. */
typedef struct MDB_env MDB_env;
int sl_lmdb_backup(MDB_env *env, int dirfd, uv_rwlock_t *lock);
/* Doubles env's map (at most to max) under lock held exclusively (the
 * caller's map-resize lock; its own writer must have no transaction open),
 * updates *size and says so in the log, naming what. 0, MDB_MAP_FULL when
 * *size is already max, or an LMDB error. */
int sl_lmdb_grow(MDB_env *env, uv_rwlock_t *lock, uint64_t *size, uint64_t max, const char *what);
/* *found 1 when database dbi holds a 16-byte key whose first 8 bytes are
 * key's (indexes keyed by a hash, then a seq: the feed's causes, the
 * engine's holds). 0 or an LMDB error. */
typedef struct MDB_txn MDB_txn;
int sl_lmdb_has_prefix8(MDB_txn *txn, unsigned int dbi, const unsigned char key[16], int *found);
#define SL_INFO(...) sl_log(SL_LOG_INFO, __VA_ARGS__)
#define SL_WARN(...) sl_log(SL_LOG_WARN, __VA_ARGS__)
#define SL_ERROR(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)
#define SL_DEBUG(...) do { if (sl_log_level <= SL_LOG_DEBUG) sl_log(SL_LOG_DEBUG, __VA_ARGS__); } while (0)

#define SL_VERSION "0.1.0"

#endif
