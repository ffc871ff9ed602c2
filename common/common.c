/* common.c - see sl_common.h. */
#define _GNU_SOURCE
#include "sl_common.h"

#include <cjson/cJSON.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <time.h>
#include <uv.h>

const char *sl_strerror(int rc)
{
    switch (rc) {
    case 0: return "success";
    case SL_EINVAL: return "invalid input";
    case SL_ENOMEM: return "out of memory";
    case SL_ETOOBIG: return "input too large";
    case SL_EBUSY: return "queue full, try again later";
    case SL_ESTORE: return "store failed to commit";
    case SL_ESHUTDOWN: return "server is shutting down";
    case SL_ENOTFOUND: return "not found";
    case SL_EAGAIN: return "try again";
    }
    if (rc >= MDB_KEYEXIST && rc <= MDB_LAST_ERRCODE) return mdb_strerror(rc);
    if (rc > 0) return mdb_strerror(rc);     /* LMDB passes errno values through */
    return uv_strerror(rc);                  /* negative errno */
}

/* ---- arena ---------------------------------------------------------------- */

struct sl_arena_block_s {
    sl_arena_block_t *next;
    size_t cap, used;
    _Alignas(16) char data[];
};

#define SL_ARENA_BLOCK 16384

void sl_arena_init(sl_arena_t *a)
{
    a->head = NULL;
    a->used_bytes = 0;
}

void *sl_arena_alloc(sl_arena_t *a, size_t n)
{
    sl_arena_block_t *b = a->head;
    n = (n + 7) & ~(size_t)7;
    if (b == NULL || b->cap - b->used < n) {
        size_t cap = n > SL_ARENA_BLOCK / 2 ? n : SL_ARENA_BLOCK - sizeof(*b);
        sl_arena_block_t *nb = malloc(sizeof(*nb) + cap);
        if (nb == NULL) return NULL;
        nb->cap = cap;
        nb->used = 0;
        /* A large one-off allocation goes behind the current block so the
         * current block's free space stays usable. */
        if (b != NULL && cap == n && b->cap - b->used > 64) {
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = b;
            a->head = nb;
        }
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    a->used_bytes += n;
    return p;
}

char *sl_arena_strndup(sl_arena_t *a, const char *s, size_t n)
{
    char *p = sl_arena_alloc(a, n + 1);
    if (p == NULL) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* Each cJSON allocation carries a 16-byte header saying where it came from,
 * so that free() does the right thing whichever arena is current then. */
#define JSON_HDR 16
static int json_hooks_on;
static _Thread_local sl_arena_t *json_arena;

static void *json_malloc(size_t n)
{
    char *p;
    if (json_arena) {
        if ((p = sl_arena_alloc(json_arena, n + JSON_HDR)) == NULL) return NULL;
        p[0] = 'a';
    } else {
        if ((p = malloc(n + JSON_HDR)) == NULL) return NULL;
        p[0] = 'h';
    }
    return p + JSON_HDR;
}

static void json_free(void *q)
{
    if (q == NULL) return;
    char *p = (char *)q - JSON_HDR;
    if (p[0] == 'h') free(p);
}

void sl_json_hooks_install(void)
{
    if (json_hooks_on) return;
    cJSON_Hooks h = {json_malloc, json_free};
    cJSON_InitHooks(&h);
    json_hooks_on = 1;
}

sl_arena_t *sl_json_arena_swap(sl_arena_t *a)
{
    if (!json_hooks_on) return NULL;
    sl_arena_t *old = json_arena;
    json_arena = a;
    return old;
}

void sl_arena_free(sl_arena_t *a)
{
    sl_arena_block_t *b = a->head;
    while (b) {
        sl_arena_block_t *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->used_bytes = 0;
}

void sl_arena_reset(sl_arena_t *a)
{
    sl_arena_block_t *keep = a->head;
    if (keep == NULL) return;
    /* Keep the newest block if it is an ordinary one; free the rest. */
    sl_arena_block_t *b = keep->next;
    while (b) {
        sl_arena_block_t *next = b->next;
        free(b);
        b = next;
    }
    if (keep->cap != SL_ARENA_BLOCK - sizeof(*keep)) {
        free(keep);
        a->head = NULL;
    } else {
        keep->next = NULL;
        keep->used = 0;
        a->head = keep;
    }
    a->used_bytes = 0;
}

/* ---- buffer --------------------------------------------------------------- */

int sl_buf_reserve(sl_buf_t *b, size_t extra)
{
    if (b->cap - b->len > extra) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= extra) cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL) return SL_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int sl_buf_append(sl_buf_t *b, const void *p, size_t n)
{
    if (sl_buf_reserve(b, n)) return SL_ENOMEM;
    if (n) memcpy(b->data + b->len, p, n); /* (p may be NULL when n is 0: an empty sl_buf_t's data) */
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int sl_buf_appends(sl_buf_t *b, const char *s)
{
    return sl_buf_append(b, s, strlen(s));
}

int sl_buf_printf(sl_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return SL_EINVAL;
    if (sl_buf_reserve(b, (size_t)n + 1)) return SL_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

size_t sl_json_escape_byte(unsigned char c, char out[6])
{
    static const char hex[] = "0123456789abcdef";
    if (c >= 0x20 && c != '"' && c != '\\') return 0;
    out[0] = '\\';
    switch (c) {
    case '"': out[1] = '"'; return 2;
    case '\\': out[1] = '\\'; return 2;
    case '\b': out[1] = 'b'; return 2;
    case '\f': out[1] = 'f'; return 2;
    case '\n': out[1] = 'n'; return 2;
    case '\r': out[1] = 'r'; return 2;
    case '\t': out[1] = 't'; return 2;
    default:
        out[1] = 'u';
        out[2] = out[3] = '0';
        out[4] = hex[c >> 4];
        out[5] = hex[c & 15];
        return 6;
    }
}

size_t sl_json_plain_len(const char *s, size_t n)
{
    return sl_json_plain_run(s, n, 0);
}

int sl_buf_append_json_str(sl_buf_t *b, const char *s, size_t n)
{
    if (sl_buf_reserve(b, n * 6 + 3)) return SL_ENOMEM;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n;) {
        size_t k = sl_json_plain_len(s + i, n - i);
        memcpy(o, s + i, k);
        o += k;
        i += k;
        if (i < n) o += sl_json_escape_byte((unsigned char)s[i++], o);
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->data);
    return 0;
}

void sl_buf_free(sl_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- time ----------------------------------------------------------------- */

int64_t sl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t sl_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil algorithm), and its inverse. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

int64_t sl_local_day(int64_t ms)
{
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000));
    struct tm tm;
    if (localtime_r(&t, &tm) == NULL) return ms / 86400000;
    return days_from_civil((int64_t)tm.tm_year + 1900, (unsigned)tm.tm_mon + 1, (unsigned)tm.tm_mday);
}

int sl_buf_append_day(sl_buf_t *b, int64_t day)
{
    int64_t y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    return sl_buf_printf(b, "\"%04lld-%02u-%02u\"", (long long)y, m, d);
}

void sl_time_format_iso(int64_t ms, char out[32])
{
    int64_t days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
    int64_t rem = ms - days * 86400000;
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 0 || y > 9999) y = y < 0 ? 0 : 9999; /* clamp: ISO needs 4 digits */
    /* "%04u-%02u-%02uT%02u:%02u:%02u.%03uZ" without printf (twice per stored message) */
    const unsigned v[7] = {(unsigned)y % 10000u, m % 13u, d % 32u, (unsigned)(rem / 3600000) % 24u,
                           (unsigned)(rem / 60000 % 60), (unsigned)(rem / 1000 % 60), (unsigned)(rem % 1000)};
    static const unsigned char width[7] = {4, 2, 2, 2, 2, 2, 3};
    static const char after[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    char *o = out;
    for (int i = 0; i < 7; i++) {
        unsigned x = v[i];
        for (int k = width[i] - 1; k >= 0; k--, x /= 10) o[k] = (char)('0' + x % 10);
        o += width[i];
        *o++ = after[i];
    }
    *o = '\0';
}

int sl_u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int sl_amount_ok(double x) { return isfinite(x) && fabs(x) <= SL_AMOUNT_MAX; }

int sl_amount_add(double *sum, double x)
{
    double r = *sum + x;
    if (!isfinite(r)) return SL_ETOOBIG;
    *sum = r;
    return 0;
}

int sl_buf_append_amount(sl_buf_t *b, double x)
{
    if (!isfinite(x)) return sl_buf_appends(b, "null");
    return sl_buf_printf(b, "%.2f", x);
}

int sl_buf_append_duration(sl_buf_t *b, int64_t ms)
{
    static const struct { int64_t ms; const char *unit; } units[] = {
        {86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
    for (size_t i = 0; i < sizeof(units) / sizeof(*units); i++)
        if (ms != 0 && ms % units[i].ms == 0) return sl_buf_printf(b, "\"%lld%s\"", (long long)(ms / units[i].ms), units[i].unit);
    return sl_buf_printf(b, "\"%lldms\"", (long long)ms);
}

int sl_buf_append_iso(sl_buf_t *b, int64_t ms)
{
    char t[32];
    if (ms == 0) return sl_buf_appends(b, "null");
    sl_time_format_iso(ms, t);
    return sl_buf_printf(b, "\"%s\"", t);
}

static int digits(const char *s, size_t n, size_t *i, int count, int *out)
{
    int v = 0;
    for (int k = 0; k < count; k++) {
        if (*i >= n || s[*i] < '0' || s[*i] > '9') return -1;
        v = v * 10 + (s[(*i)++] - '0');
    }
    *out = v;
    return 0;
}

int sl_time_parse_iso(const char *s, size_t n, int64_t *ms)
{
    size_t i = 0;
    int y, mo, d, h = 0, mi = 0, sec = 0, frac_ms = 0;
    if (digits(s, n, &i, 4, &y)) return SL_EINVAL;
    if (i >= n || s[i++] != '-') return SL_EINVAL;
    if (digits(s, n, &i, 2, &mo)) return SL_EINVAL;
    if (i >= n || s[i++] != '-') return SL_EINVAL;
    if (digits(s, n, &i, 2, &d)) return SL_EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > 31) return SL_EINVAL;
    int64_t offset_min = 0;
    if (i < n) {
        if (s[i] != 'T' && s[i] != 't' && s[i] != ' ') return SL_EINVAL;
        i++;
        if (digits(s, n, &i, 2, &h)) return SL_EINVAL;
        if (i >= n || s[i++] != ':') return SL_EINVAL;
        if (digits(s, n, &i, 2, &mi)) return SL_EINVAL;
        if (i < n && s[i] == ':') {
            i++;
            if (digits(s, n, &i, 2, &sec)) return SL_EINVAL;
            if (i < n && (s[i] == '.' || s[i] == ',')) {
                i++;
                int nd = 0, scale = 100;
                while (i < n && s[i] >= '0' && s[i] <= '9') {
                    if (nd < 3) frac_ms += (s[i] - '0') * scale;
                    scale /= 10;
                    nd++;
                    i++;
                }
                if (nd == 0 || nd > 9) return SL_EINVAL;
            }
        }
        if (h > 23 || mi > 59 || sec > 60) return SL_EINVAL;
        if (i < n) {
            if (s[i] == 'Z' || s[i] == 'z') {
                i++;
            } else if (s[i] == '+' || s[i] == '-') {
                int sign = s[i++] == '-' ? -1 : 1, oh, om;
                if (digits(s, n, &i, 2, &oh)) return SL_EINVAL;
                if (i < n && s[i] == ':') i++;
                if (digits(s, n, &i, 2, &om)) return SL_EINVAL;
                if (oh > 23 || om > 59) return SL_EINVAL;
                offset_min = sign * (oh * 60 + om);
            } else {
                return SL_EINVAL;
            }
        }
        if (i != n) return SL_EINVAL;
    }
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    *ms = ((days * 24 + h) * 60 + mi - offset_min) * 60000 + (int64_t)sec * 1000 + frac_ms;
    return 0;
}

/* ---- hashing -------------------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t hash64(const unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t h = mix64(seed ^ (n * 0x9e3779b97f4a7c15ULL));
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ mix64(w + 0x9e3779b97f4a7c15ULL));
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    return mix64(h ^ mix64(w ^ ((uint64_t)n << 56)));
}

sl_hash128_t sl_hash128(const void *p, size_t n, uint64_t seed)
{
    sl_hash128_t h;
    h.lo = hash64(p, n, seed);
    h.hi = hash64(p, n, mix64(seed + 0x632be59bd9b4e019ULL));
    if (h.lo == 0 && h.hi == 0) h.lo = 1;
    return h;
}

int sl_random_bytes(void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* UUIDs come from a per-thread xorshift state seeded from the kernel: one
 * getrandom() per thread, not one per message. Not for secrets. */
static _Thread_local uint64_t uuid_state[2];

static uint64_t next_rand(void)
{
    if (uuid_state[0] == 0 && uuid_state[1] == 0) {
        if (sl_random_bytes(uuid_state, sizeof(uuid_state)) || (uuid_state[0] | uuid_state[1]) == 0) {
            uuid_state[0] = (uint64_t)sl_mono_ns() | 1;
            uuid_state[1] = (uint64_t)sl_now_ms();
        }
    }
    /* xorshift128+ */
    uint64_t s1 = uuid_state[0];
    const uint64_t s0 = uuid_state[1];
    uuid_state[0] = s0;
    s1 ^= s1 << 23;
    uuid_state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return uuid_state[1] + s0;
}

size_t sl_entity_format(sl_entity_t e, char out[SL_ENTITY_STR_BYTES])
{
    if (e.kind != SL_ENTITY_PERSON) {
        out[0] = 0;
        return 0;
    }
    return (size_t)snprintf(out, SL_ENTITY_STR_BYTES, "p_%llu", (unsigned long long)e.id);
}

int sl_entity_parse(const char *s, size_t n, sl_entity_t *out)
{
    if (s == NULL || n < 3 || s[0] != 'p' || s[1] != '_') return SL_EINVAL;
    if (s[2] == '0' && n > 3) return SL_EINVAL;
    uint64_t id = 0;
    for (size_t i = 2; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return SL_EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (id > (UINT64_MAX - d) / 10) return SL_EINVAL;
        id = id * 10 + d;
    }
    out->kind = SL_ENTITY_PERSON;
    out->id = id;
    return 0;
}

void sl_uuid4(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    uint64_t r0 = next_rand(), r1 = next_rand();
    memcpy(b, &r0, 8);
    memcpy(b + 8, &r1, 8);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
}

/* ---- units ---------------------------------------------------------------- */

static int parse_number_unit(const char *s, uint64_t *num, const char **unit)
{
    if (s == NULL || *s < '0' || *s > '9') return SL_EINVAL;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        if (v > (UINT64_MAX - 9) / 10) return SL_EINVAL;
        v = v * 10 + (uint64_t)(*s++ - '0');
    }
    *num = v;
    *unit = s;
    return 0;
}

int sl_parse_duration_ms(const char *s, int64_t *ms)
{
    uint64_t v, mul;
    const char *u;
    if (parse_number_unit(s, &v, &u)) return SL_EINVAL;
    if (strcmp(u, "ms") == 0) mul = 1;
    else if (strcmp(u, "s") == 0) mul = 1000;
    else if (strcmp(u, "m") == 0) mul = 60000;
    else if (strcmp(u, "h") == 0) mul = 3600000;
    else if (strcmp(u, "d") == 0) mul = 86400000;
    else return SL_EINVAL;
    if (v > (uint64_t)INT64_MAX / mul) return SL_EINVAL;
    *ms = (int64_t)(v * mul);
    return 0;
}

int sl_parse_size_bytes(const char *s, uint64_t *bytes)
{
    uint64_t v, mul;
    const char *u;
    if (parse_number_unit(s, &v, &u)) return SL_EINVAL;
    if (*u == '\0' || strcmp(u, "B") == 0) mul = 1;
    else if (strcmp(u, "KB") == 0 || strcmp(u, "K") == 0 || strcmp(u, "KiB") == 0) mul = 1ULL << 10;
    else if (strcmp(u, "MB") == 0 || strcmp(u, "M") == 0 || strcmp(u, "MiB") == 0) mul = 1ULL << 20;
    else if (strcmp(u, "GB") == 0 || strcmp(u, "G") == 0 || strcmp(u, "GiB") == 0) mul = 1ULL << 30;
    else if (strcmp(u, "TB") == 0 || strcmp(u, "T") == 0 || strcmp(u, "TiB") == 0) mul = 1ULL << 40;
    else return SL_EINVAL;
    if (v > UINT64_MAX / mul) return SL_EINVAL;
    *bytes = v * mul;
    return 0;
}

/* ---- logging -------------------------------------------------------------- */

int sl_log_level = SL_LOG_INFO;

void sl_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if (level < sl_log_level) return;
    char ts[32], line[2048];
    sl_time_format_iso(sl_now_ms(), ts);
    int n = snprintf(line, sizeof(line), "%s %s ", ts, names[level & 3]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}

/* Length of a leading "scheme://", or 0. */
static size_t scheme_len(const char *s, size_t n)
{
    size_t i = 0;
    if (n == 0 || !((s[0] | 0x20) >= 'a' && (s[0] | 0x20) <= 'z')) return 0;
    while (i < n && (((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '+' ||
                     s[i] == '.' || s[i] == '-'))
        i++;
    return n - i >= 3 && memcmp(s + i, "://", 3) == 0 ? i + 3 : 0;
}

static void put(char *out, size_t outlen, size_t *pos, const char *p, size_t n)
{
    size_t room = outlen - 1 - *pos;
    if (n > room) n = room;
    memcpy(out + *pos, p, n);
    *pos += n;
}

char *sl_url_redact(const char *url, char *out, size_t outlen)
{
    if (outlen == 0) return out;
    size_t len = url ? strlen(url) : 0, i = 0, pos = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && url[i] == ' ') i++;
        size_t auth = i + scheme_len(url + i, len - i), q = len, end = len;
        /* A URL ends at a comma that starts the next one ("nats://a,nats://b");
         * from a '?' or '#' on, everything is query (commas included). */
        for (size_t k = auth; k < len; k++) {
            if (url[k] == '?' || url[k] == '#') {
                q = k;
                break;
            }
            if (url[k] == ',') {
                size_t j = k + 1;
                while (j < len && url[j] == ' ') j++;
                if (scheme_len(url + j, len - j)) {
                    end = k;
                    break;
                }
            }
        }
        put(out, outlen, &pos, url + start, auth - start);
        /* "nats://u:p?w@h": the '?' may belong to a password; hide it all. */
        if (q < len && memchr(url + q, '@', len - q) && !memchr(url + auth, '/', q - auth)) {
            put(out, outlen, &pos, "***", 3);
            break;
        }
        size_t stop = q < len ? q : end, from = auth;
        const char *at = memrchr(url + auth, '@', stop - auth);
        if (at) {
            put(out, outlen, &pos, "***@", 4);
            from = (size_t)(at - url) + 1;
        }
        put(out, outlen, &pos, url + from, stop - from);
        if (q < len) {
            put(out, outlen, &pos, url[q] == '?' ? "?***" : "#***", 4);
            break;
        }
        if (end < len) put(out, outlen, &pos, ",", 1);
        i = end + 1;
    }
    out[pos] = '\0';
    return out;
}

int sl_secret_equal(const char *given, size_t glen, const char *secret, size_t slen)
{
    volatile unsigned char diff = (unsigned char)(glen != slen);
    for (size_t i = 0; i < slen; i++) diff |= (unsigned char)(secret[i] ^ (i < glen ? given[i] : 0));
    return diff == 0;
}

int sl_mkdir_p(const char *path)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(tmp)) return SL_EINVAL;
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0750) && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0750) && errno != EEXIST) return -errno;
    return 0;
}

int sl_dir_open_nofollow(const char *path)
{
    /* The copy holds what the store holds: no more readable than the store
     * (0750/0640), whatever the umask. */
    char dir[4096], parent[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(dir)) return -EINVAL;
    memcpy(dir, path, n + 1);
    /* "link/" would resolve the link whatever O_NOFOLLOW says: no trailing slash */
    while (n > 1 && dir[n - 1] == '/') dir[--n] = '\0';
    memcpy(parent, dir, n + 1);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = '\0';
        int rc = sl_mkdir_p(parent);
        if (rc) return rc;
    }
    int created = mkdir(dir, 0750) == 0;
    if (!created && errno != EEXIST) return -errno;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -errno;
    if (created && fchmod(fd, 0750)) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

int sl_lmdb_backup(MDB_env *env, int dirfd, uv_rwlock_t *lock)
{
    /* Created here with its final mode, so no other user can open it before
     * fchmod; O_EXCL never overwrites an earlier backup, nor follows a link. */
    int rc, fd = openat(dirfd, "data.mdb", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0) return -errno;
    if (fchmod(fd, 0640)) {
        rc = -errno;
        goto fail;
    }
    if (lock) uv_rwlock_rdlock(lock);
    rc = mdb_env_copyfd2(env, fd, MDB_CP_COMPACT);
    if (lock) uv_rwlock_rdunlock(lock);
    if (rc) goto fail;
    if (fsync(fd)) {
        rc = -errno;
        goto fail;
    }
    rc = close(fd) ? -errno : 0;
    fd = -1;
    if (rc) goto fail;
    return 0;
fail:
    if (fd >= 0) close(fd);
    unlinkat(dirfd, "data.mdb", 0); /* a partial copy is no backup, and would refuse the next try */
    return rc;
}

void sl_metric_head(sl_buf_t *b, const char *type, const char *name, const char *help)
{
    sl_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void sl_metric_sample(sl_buf_t *b, const char *name, const char *labels, uint64_t v)
{
    if (labels) sl_buf_printf(b, "%s{%s} %llu\n", name, labels, (unsigned long long)v);
    else sl_buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

void sl_metric_u64(sl_buf_t *b, const char *type, const char *name, const char *help, uint64_t v)
{
    sl_metric_head(b, type, name, help);
    sl_metric_sample(b, name, NULL, v);
}

void sl_metric_f64(sl_buf_t *b, const char *type, const char *name, const char *help, double v)
{
    sl_metric_head(b, type, name, help);
    sl_buf_printf(b, "%s %.9g\n", name, v);
}

void sl_metric_histogram(sl_buf_t *b, const char *name, const char *help, const double *bounds, size_t n_bounds,
                         const uint64_t *counts, double sum)
{
    sl_metric_head(b, "histogram", name, help);
    uint64_t cum = 0;
    for (size_t i = 0; i <= n_bounds; i++) {
        cum += counts[i];
        if (i < n_bounds) sl_buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
        else sl_buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    sl_buf_printf(b, "%s_sum %.9g\n%s_count %llu\n", name, sum, name, (unsigned long long)cum);
}

/* ---- printing JSON (the form cJSON prints) --------------------------------- */

typedef struct {
    char *p, *end; /* end: the last byte, kept for the NUL */
} jout_t;

static int jput(jout_t *o, const char *s, size_t n)
{
    if ((size_t)(o->end - o->p) < n) return -1;
    memcpy(o->p, s, n);
    o->p += n;
    return 0;
}

static int jput_str(jout_t *o, const char *s)
{
    if (s == NULL) return jput(o, "\"\"", 2);
    if (jput(o, "\"", 1)) return -1;
    for (size_t n = strlen(s);;) {
        size_t k = sl_json_plain_len(s, n);
        if (jput(o, s, k)) return -1;
        if (k == n) break;
        char e[6];
        size_t en = sl_json_escape_byte((unsigned char)s[k], e);
        if (jput(o, e, en)) return -1;
        s += k + 1;
        n -= k + 1;
    }
    return jput(o, "\"", 1);
}

size_t sl_json_num(double d, char out[32])
{
    char *b = out;
    int n;
    if (isnan(d) || isinf(d)) {
        memcpy(b, "null", 4);
        return 4;
    }
    if (d == floor(d) && fabs(d) < 1e15) { /* what "%1.15g" prints for it: its digits ("-0" for -0.0) */
        char t[24], *e = t + sizeof(t), *p = e;
        unsigned long long u = (unsigned long long)fabs(d);
        do *--p = (char)('0' + u % 10); while ((u /= 10) != 0);
        if (signbit(d)) *--p = '-';
        memcpy(b, p, (size_t)(e - p));
        return (size_t)(e - p);
    }
    /* 15 significant digits when they give the number back, else 17 */
    n = snprintf(b, 32, "%1.15g", d);
    double t = strtod(b, NULL);
    double m = fabs(t) > fabs(d) ? fabs(t) : fabs(d);
    if (!(fabs(t - d) <= m * DBL_EPSILON)) n = snprintf(b, 32, "%1.17g", d);
    return n < 0 || n >= 32 ? 0 : (size_t)n;
}

static int jput_num(jout_t *o, const cJSON *x)
{
    char b[32];
    size_t n = sl_json_num(x->valuedouble, b);
    return n ? jput(o, b, n) : -1;
}

static int jput_value(jout_t *o, const cJSON *x)
{
    if (cJSON_IsNull(x)) return jput(o, "null", 4);
    if (cJSON_IsFalse(x)) return jput(o, "false", 5);
    if (cJSON_IsTrue(x)) return jput(o, "true", 4);
    if (cJSON_IsNumber(x)) return jput_num(o, x);
    if (cJSON_IsString(x)) return jput_str(o, x->valuestring);
    if (cJSON_IsRaw(x)) return x->valuestring ? jput(o, x->valuestring, strlen(x->valuestring)) : -1;
    int obj = cJSON_IsObject(x);
    if (!obj && !cJSON_IsArray(x)) return -1;
    if (jput(o, obj ? "{" : "[", 1)) return -1;
    for (const cJSON *c = x->child; c; c = c->next) {
        if (c != x->child && jput(o, ",", 1)) return -1;
        if (obj && (jput_str(o, c->string) || jput(o, ":", 1))) return -1;
        if (jput_value(o, c)) return -1;
    }
    return jput(o, obj ? "}" : "]", 1);
}

int sl_json_print(const cJSON *x, char *buf, size_t cap, size_t *len)
{
    if (cap == 0) return SL_ETOOBIG;
    jout_t o = {buf, buf + cap - 1};
    int rc = jput_value(&o, x);
    *o.p = '\0';
    *len = (size_t)(o.p - buf);
    return rc ? SL_ETOOBIG : 0;
}

const char *sl_json_str(const cJSON *o, const char *name)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

int sl_lmdb_has_prefix8(MDB_txn *txn, unsigned int dbi, const unsigned char key[16], int *found)
{
    MDB_cursor *cur;
    MDB_val k = {16, (void *)key}, v;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc) return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    *found = rc == 0 && k.mv_size == 16 && memcmp(k.mv_data, key, 8) == 0;
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_lmdb_grow(MDB_env *env, uv_rwlock_t *lock, uint64_t *size, uint64_t max, const char *what)
{
    if (*size >= max) return MDB_MAP_FULL;
    uint64_t want = *size * 2 < max ? *size * 2 : max;
    uv_rwlock_wrlock(lock);
    int rc = mdb_env_set_mapsize(env, want);
    uv_rwlock_wrunlock(lock);
    if (rc) return rc;
    SL_WARN("%s map full at %llu bytes: grown to %llu (at most %llu)", what, (unsigned long long)*size,
            (unsigned long long)want, (unsigned long long)max);
    *size = want;
    return 0;
}

void sl_thread_name(const char *name)
{
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

