/* ack.c - the ingestion body read without a tree (ack.h).
 *
 * The body is read in three steps, none of which allocates per message:
 *   1. the root object's members are located, up to a batch when the write
 *      key is known by then (Basic auth, a writeKey before it); otherwise a
 *      skim of the batch finds the members after it (scan_batch());
 *   2. the few members the request needs (writeKey, a batch's context and
 *      sentAt) are checked and read;
 *   3. each message is checked, normalised and printed in one pass over its
 *      text into the scratch buffer: members are copied as sl_json_print()
 *      would print them after a cJSON parse (blanks dropped, escapes decoded
 *      and only what the printer escapes escaped, numbers in the printer's
 *      form), the ones normalisation changes are written changed in their
 *      place (a timestamp whose correction depends on a later member gets a
 *      24-character placeholder, filled at the end), the server's fields are
 *      appended in sl_msg_normalize()'s order. The rest of the body is checked
 *      too (what a message is not is part of the answer). A batch read before
 *      what follows it is read again when that changes its messages (a
 *      context to merge, a sentAt one of them lacks).
 *
 * Reading as cJSON would is exact only for the text this reader accepts. Any
 * other body is handed whole to ack_tree(), which answers as before:
 *   - not valid JSON as written by JSON's grammar (cJSON also takes "01",
 *     "1.", other control bytes as blanks, a byte-order mark...), a root
 *     that is not an object, bytes after it, a NUL, bad UTF-8, nesting past
 *     max_json_depth, \u0000 or a \u escape that is not four hex digits;
 *   - a number of 64 characters or more, or one out of a double's range;
 *   - a member name holding an escape, or an object that repeats a name
 *     (the tree's answer names which, in its order);
 *   - a numeric previousId or groupId before the batch message's type (its
 *     form depends on the type).
 * Valid traffic has none of these; each costs what the tree path costs. */
#include "ack.h"

#include <endian.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ID_CHARS 256

typedef struct {
    const char *p;
    size_t n;
} span_t;

/* Where a message is printed: bytes past cap are counted, not written. */
typedef struct {
    char *buf;
    size_t cap, len;
} out_t;

static inline void put(out_t *o, const void *s, size_t n)
{
    if (o == NULL) return;
    if (o->len + n <= o->cap) memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static inline void put1(out_t *o, char c)
{
    if (o == NULL) return;
    if (o->len < o->cap) o->buf[o->len] = c;
    o->len++;
}

#define PUTS(o, lit) put(o, lit, sizeof(lit) - 1)

/* A member of a batch's context, ready to be merged into a message's. */
enum { BM_PLAIN, BM_DROP, BM_SILLAGE, BM_SILLAGE_OTHER };
typedef struct {
    span_t name;
    const char *txt; /* "name":value as printed; a sillage object without its '}' */
    size_t len;
    int kind;
} bmember_t;

typedef struct scan_s {
    const ack_in_t *in;
    const char *end;
    size_t max_depth;
    int bail;                  /* the body goes to the tree reader */
    int type;                  /* the route's, or -1 */
    /* what every message of the request gets */
    const char *src_kv, *ip_kv, *loc_kv, *sent_txt;
    size_t src_kv_len, ip_kv_len, loc_kv_len, sent_txt_len;
    int has_sent, sent_ok;     /* a batch's sentAt (a string), and whether it parses */
    int64_t sent_ms;
    int needs_sent;            /* a message read the batch's sentAt (while none was known) */
    bmember_t *bctx;           /* a batch's context members */
    size_t n_bctx;
    char received[32];
    /* the names of the objects open, for the repeated-member check */
    span_t *names;
    size_t n_names, cap_names;
    /* not zeroed: */
    size_t frame[SL_JSON_MAX_DEPTH + 2];
    char close[SL_JSON_MAX_DEPTH + 2];
    span_t names0[256];
} scan_t;

static const char *bail(scan_t *s)
{
    s->bail = 1;
    return NULL;
}

static inline const char *ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* ---- strings --------------------------------------------------------------------- */


/* A UTF-8 sequence of 2 to 4 bytes at s: its length, or 0 when it is not
 * one sl_json_prescan() lets by. */
static size_t utf8_seq(const unsigned char *s, const unsigned char *end)
{
    unsigned char c = *s;
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
    else return 0;
    if ((size_t)(end - s) < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}


/* Code point cp of a \u escape as the printer writes it once decoded. */
static void put_cp(out_t *o, long cp)
{
    char b[6];
    if (cp < 0x80) {
        if (cp < 0x20 || cp == '"' || cp == '\\') put(o, b, sl_json_escape_byte((unsigned char)cp, b));
        else put1(o, (char)cp);
        return;
    }
    size_t n;
    if (cp < 0x800) {
        b[0] = (char)(0xC0 | cp >> 6);
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | cp >> 12);
        b[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | cp >> 18);
        b[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        b[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    put(o, b, n);
}

/* p at a string's quote: past its closing quote, or NULL (s->bail). Its
 * print goes to o (NULL: nowhere); *esc (when not NULL): 1 when it holds an
 * escape, so that its text is not its value. */
static const char *str(scan_t *s, const char *p, out_t *o, int *esc)
{
    const char *end = s->end, *q = p + 1;
    int e = 0;
    put1(o, '"');
    for (;;) {
        size_t k = sl_json_plain_run(q, (size_t)(end - q), 1);
        put(o, q, k);
        q += k;
        if (q >= end) return bail(s);
        unsigned char c = (unsigned char)*q;
        if (c == '"') break;
        if (c == '\\') {
            e = 1;
            if (end - q < 2) return bail(s);
            char x = q[1];
            if (x == 'u') {
                /* what cJSON reads otherwise (a NUL, for a bad digit) is left to it */
                long cp = end - q >= 6 ? sl_hex4(q + 2) : -1;
                if (cp <= 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) return bail(s);
                q += 6;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (end - q < 6 || q[0] != '\\' || q[1] != 'u') return bail(s);
                    long lo = sl_hex4(q + 2);
                    if (lo < 0xDC00 || lo > 0xDFFF) return bail(s);
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    q += 6;
                }
                put_cp(o, cp);
                continue;
            }
            if (x == '/') {
                put1(o, '/');
            } else if (x == '"' || x == '\\' || x == 'b' || x == 'f' || x == 'n' || x == 'r' || x == 't') {
                put(o, q, 2); /* the printer writes it back as it is */
            } else {
                return bail(s);
            }
            q += 2;
            continue;
        }
        if (c < 0x20) { /* cJSON takes a raw control byte; the printer escapes it */
            if (c == 0) return bail(s);
            char b[6];
            put(o, b, sl_json_escape_byte(c, b));
            q++;
            continue;
        }
        size_t n = utf8_seq((const unsigned char *)q, (const unsigned char *)end);
        if (n == 0) return bail(s);
        put(o, q, n);
        q += n;
    }
    put1(o, '"');
    if (esc) *esc = e;
    return q + 1;
}

/* The value of string v (checked by str()) into out (NULL: only counted);
 * its length. */
static size_t sdecode(span_t v, char *out)
{
    const char *p = v.p + 1, *end = v.p + v.n - 1;
    size_t n = 0;
    while (p < end) {
        const char *b = memchr(p, '\\', (size_t)(end - p));
        size_t k = (size_t)((b ? b : end) - p);
        if (out) memcpy(out + n, p, k);
        n += k;
        p += k;
        if (p >= end) break;
        char x = p[1];
        if (x != 'u') {
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            if (out) out[n] = to[strchr(from, x) - from];
            n++;
            p += 2;
            continue;
        }
        long cp = sl_hex4(p + 2);
        p += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (sl_hex4(p + 2) - 0xDC00);
            p += 6;
        }
        char tmp[8];
        out_t t = {tmp, sizeof(tmp), 0};
        put_cp(&t, cp);
        /* put_cp escapes what the printer escapes: the value is the byte itself */
        if (cp < 0x80) tmp[0] = (char)cp, t.len = 1;
        if (out) memcpy(out + n, tmp, t.len);
        n += t.len;
    }
    return n;
}

/* ---- numbers --------------------------------------------------------------------- */

/* p at '-' or a digit: past the number, or NULL (s->bail). Its print goes to
 * o. A number that JSON's grammar writes and sl_json_num() would print as
 * written (a short integer, a short decimal) is copied as written, without
 * strtod and printf: what cJSON's double prints back to. */
static const char *num(scan_t *s, const char *p, out_t *o)
{
    const char *end = s->end, *q = p;
    int neg = *q == '-';
    q += neg;
    const char *ip = q;
    if (q < end && *q == '0') q++;
    else if (q < end && *q >= '1' && *q <= '9')
        while (q < end && *q >= '0' && *q <= '9') q++;
    else return bail(s);
    size_t ni = (size_t)(q - ip), nf = 0;
    const char *fp = NULL;
    int has_e = 0;
    if (q < end && *q == '.') {
        fp = ++q;
        while (q < end && *q >= '0' && *q <= '9') q++;
        if ((nf = (size_t)(q - fp)) == 0) return bail(s);
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        has_e = 1;
        q++;
        if (q < end && (*q == '+' || *q == '-')) q++;
        const char *ed = q;
        while (q < end && *q >= '0' && *q <= '9') q++;
        if (q == ed) return bail(s);
    }
    /* cJSON reads a number as far as these characters go (then strtod) */
    if (q < end && (*q == '+' || *q == '-' || *q == '.' || *q == 'e' || *q == 'E' || (*q >= '0' && *q <= '9')))
        return bail(s);
    size_t len = (size_t)(q - p);
    if (len >= 64) return bail(s);
    if (!has_e) {
        size_t nf2 = nf;
        while (nf2 && fp[nf2 - 1] == '0') nf2--;
        if (nf2 == 0 && ni <= 15) { /* a whole number below 1e15: its digits ("-0" stays) */
            put(o, p, (size_t)neg + ni);
            return q;
        }
        /* up to 15 significant digits give the double back ("%1.15g"), in
         * fixed notation from 1e-4 up; trailing zeros go */
        if (ni == 1 && ip[0] == '0') {
            size_t lz = 0;
            while (lz < nf2 && fp[lz] == '0') lz++;
            if (lz <= 3 && nf2 - lz <= 15) {
                put(o, p, (size_t)neg + 2 + nf2);
                return q;
            }
        } else if (ni + nf2 <= 15) {
            put(o, p, (size_t)neg + ni + 1 + nf2);
            return q;
        }
    }
    char buf[64], nb[32];
    memcpy(buf, p, len);
    buf[len] = '\0';
    double d = strtod(buf, NULL);
    if (!isfinite(d)) return bail(s); /* refused: the tree says so, in its order */
    put(o, nb, sl_json_num(d, nb));
    return q;
}

/* A numeric id (span checked by num()) as the string sl_msg_normalize()
 * makes of it, into b[64]; its length. */
static size_t id_of_number(span_t v, char b[64])
{
    char buf[64];
    memcpy(buf, v.p, v.n);
    buf[v.n] = '\0';
    double d = strtod(buf, NULL);
    int n;
    if (d == floor(d) && fabs(d) < 9007199254740992.0) n = snprintf(b, 64, "%.0f", d);
    else n = snprintf(b, 64, "%.17g", d);
    return n > 0 && n < 64 ? (size_t)n : 0;
}

/* ---- repeated members -------------------------------------------------------------- */

static void names_open(scan_t *s, size_t depth) { s->frame[depth] = s->n_names; }

static int names_add(scan_t *s, span_t k)
{
    if (s->n_names == s->cap_names) {
        size_t cap = s->cap_names * 2;
        span_t *n = malloc(cap * sizeof(*n));
        if (n == NULL) return -1;
        memcpy(n, s->names, s->n_names * sizeof(*n));
        if (s->names != s->names0) free(s->names);
        s->names = n;
        s->cap_names = cap;
    }
    s->names[s->n_names++] = k;
    return 0;
}

static int same(span_t a, span_t b) { return a.n == b.n && (a.n == 0 || (a.p[0] == b.p[0] && memcmp(a.p, b.p, a.n) == 0)); }

static int cmp_span(const void *x, const void *y)
{
    const span_t *a = x, *b = y;
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    return a->n ? memcmp(a->p, b->p, a->n) : 0;
}

/* repeats() by sorting a copy: n log n whatever the names are */
static int repeats_sorted(const span_t *v, size_t n)
{
    span_t *c = malloc(n * sizeof(*c));
    if (c == NULL) return 1;
    memcpy(c, v, n * sizeof(*c));
    qsort(c, n, sizeof(*c), cmp_span);
    int dup = 0;
    for (size_t i = 1; i < n && !dup; i++) dup = same(c[i - 1], c[i]);
    free(c);
    return dup;
}

/* 1 when two of v[0..n) are the same name (as written: no name here holds
 * an escape). Which one, and in which object first, is the tree's to say.
 * The hash is not keyed: names chosen to land in a few slots (found
 * offline in a second) made each insertion probe the whole run, and one
 * 500 KB body held the loop thread for seconds. Past a budget of probes
 * the names are sorted instead. */
static int repeats(const span_t *v, size_t n)
{
    if (n <= 16) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (same(v[i], v[j])) return 1;
        return 0;
    }
    size_t cap = 64;
    while (cap < 2 * n) cap *= 2;
    uint32_t small[512], *t = cap <= 512 ? small : calloc(cap, sizeof(*t));
    if (t == NULL) return 1;
    if (t == small) memset(t, 0, cap * sizeof(*t));
    int dup = 0;
    size_t probes = 0, budget = 8 * n;
    for (size_t i = 0; i < n && !dup && probes <= budget; i++) {
        uint32_t h = 2166136261u;
        for (size_t k = 0; k < v[i].n; k++) h = (h ^ (unsigned char)v[i].p[k]) * 16777619u;
        for (size_t at = h & (cap - 1);; at = (at + 1) & (cap - 1), probes++) {
            if (t[at] == 0) {
                t[at] = (uint32_t)i + 1;
                break;
            }
            if (same(v[t[at] - 1], v[i])) {
                dup = 1;
                break;
            }
        }
    }
    if (t != small) free(t);
    return dup || probes <= budget ? dup : repeats_sorted(v, n);
}

/* The object open at depth closes: NULL (s->bail) when it repeats a name, else p. */
static const char *names_close(scan_t *s, size_t depth, const char *p)
{
    size_t from = s->frame[depth];
    int dup = repeats(s->names + from, s->n_names - from);
    s->n_names = from;
    return dup ? bail(s) : p;
}

/* ---- values ------------------------------------------------------------------------ */

/* p at a member's name: past the ':' and blanks after it, or NULL. *k: the
 * name as written, without its quotes. */
static const char *key(scan_t *s, const char *p, span_t *k)
{
    const char *end = s->end;
    int esc = 0;
    if (p >= end || *p != '"') return bail(s);
    const char *e = str(s, p, NULL, &esc);
    if (e == NULL) return NULL;
    if (esc) return bail(s); /* its value is not its text */
    *k = (span_t){p + 1, (size_t)(e - p - 2)};
    if (names_add(s, *k)) return bail(s);
    p = ws(e, end);
    if (p >= end || *p != ':') return bail(s);
    p = ws(p + 1, end);
    return p < end ? p : bail(s); /* callers look at the value's first byte */
}

/* A name as printed, with its ':' (it was checked by key()). */
static void put_key(scan_t *s, out_t *o, span_t k)
{
    if (sl_json_plain_run(k.p, k.n, 1) == k.n) {
        put1(o, '"');
        put(o, k.p, k.n);
        PUTS(o, "\":");
        return;
    }
    str(s, k.p - 1, o, NULL);
    put1(o, ':');
}

/* p at a value (after any blank), inside depth containers: past it, or NULL
 * (s->bail). Checked, its objects' names compared, printed to o (NULL:
 * nowhere). No recursion: the containers open are in s->close. */
static const char *walk(scan_t *s, const char *p, size_t depth, out_t *o)
{
    const char *end = s->end;
    size_t base = depth;
    span_t k;
    for (;;) {
        if (p >= end) return bail(s);
        char c = *p;
        if (c == '"') {
            if ((p = str(s, p, o, NULL)) == NULL) return NULL;
        } else if (c == '{' || c == '[') {
            if (++depth > s->max_depth) return bail(s);
            s->close[depth] = (char)(c + 2);
            put1(o, c);
            if (c == '{') names_open(s, depth);
            p = ws(p + 1, end);
            if (p < end && *p == c + 2) {
                put1(o, *p);
                if (c == '{' && names_close(s, depth, p) == NULL) return NULL;
                depth--;
                p++;
            } else {
                if (c == '{') {
                    if ((p = key(s, p, &k)) == NULL) return NULL;
                    if (o) put_key(s, o, k);
                }
                continue;
            }
        } else if (c == 't' || c == 'f' || c == 'n') {
            const char *lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
            size_t n = c == 'f' ? 5 : 4;
            if ((size_t)(end - p) < n || memcmp(p, lit, n) != 0) return bail(s);
            put(o, lit, n);
            p += n;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            if ((p = num(s, p, o)) == NULL) return NULL;
        } else {
            return bail(s);
        }
        /* after a value: close containers, or go on to the next element */
        for (;;) {
            if (depth == base) return p;
            p = ws(p, end);
            if (p >= end) return bail(s);
            if (*p == ',') {
                put1(o, ',');
                p = ws(p + 1, end);
                if (s->close[depth] == '}') {
                    if ((p = key(s, p, &k)) == NULL) return NULL;
                    if (o) put_key(s, o, k);
                }
                break;
            }
            if (*p != s->close[depth]) return bail(s);
            put1(o, *p);
            if (*p == '}' && names_close(s, depth, p) == NULL) return NULL;
            depth--;
            p++;
        }
    }
}

/* p at a value this reader checks later: past it, unchecked (NULL when the
 * body ends first). *count, for an array: its elements when it is
 * well-formed. */
static const char *skim(const char *p, const char *end, size_t *count)
{
    size_t depth = 0, commas = 0;
    int any = 0;
    if (p >= end) return NULL;
    if (*p != '"' && *p != '{' && *p != '[') { /* a number or a literal */
        const char *s = p;
        while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            p++;
        return p > s ? p : NULL;
    }
    while (p < end) {
        char c = *p;
        if (c == '"') {
            if (depth == 1) any = 1;
            for (p++;;) {
                p += sl_json_plain_len(p, (size_t)(end - p));
                if (p >= end) return NULL;
                if (*p == '"') break;
                if (*p == '\\' && ++p >= end) return NULL;
                p++;
            }
            p++;
            if (depth == 0) return p;
            continue;
        }
        if (c == '{' || c == '[') {
            if (depth == 1) any = 1;
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) return NULL;
            if (--depth == 0) {
                if (count) *count = any ? commas + 1 : 0;
                return p + 1;
            }
        } else if (depth == 1) {
            if (c == ',') commas++;
            else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') any = 1;
        }
        p++;
    }
    return NULL;
}

/* ---- what every message gets --------------------------------------------------------- */

/* prefix then the C string v as printed, into the arena */
static const char *arena_str(scan_t *s, const char *prefix, const char *v, size_t *len)
{
    size_t pl = strlen(prefix), vl = strlen(v);
    char *b = sl_arena_alloc(s->in->arena, pl + vl * 6 + 3);
    if (b == NULL) return NULL;
    out_t o = {b, pl + vl * 6 + 3, 0};
    put(&o, prefix, pl);
    put1(&o, '"');
    for (size_t i = 0; i < vl;) {
        size_t k = sl_json_plain_len(v + i, vl - i);
        put(&o, v + i, k);
        i += k;
        if (i < vl) {
            char e[6];
            put(&o, e, sl_json_escape_byte((unsigned char)v[i++], e));
        }
    }
    put1(&o, '"');
    *len = o.len;
    return b;
}

/* o's bytes into the arena */
static const char *keep(scan_t *s, const out_t *o, size_t *len)
{
    if (o->len > o->cap) return NULL;
    *len = o->len;
    return sl_arena_strndup(s->in->arena, o->buf, o->len);
}

/* A batch's context object at p (checked): its members as each message gets
 * them when it lacks them (sl_msg_normalize(): merged, then context.ip
 * replaced, context.location replaced when there is one, context.sillage
 * made an object with the source and without clampedTimestamp). */
static int batch_context(scan_t *s, const char *p)
{
    const ack_in_t *in = s->in;
    const char *end = s->end;
    size_t n = 0;
    sl_jiter_t it;
    sl_jval_t jk, jv;
    sl_jiter((sl_jval_t){p, (size_t)(end - p)}, &it); /* checked: the members are counted */
    while (sl_jnext(&it, &jk, &jv)) n++;
    s->bctx = sl_arena_alloc(in->arena, (n ? n : 1) * sizeof(*s->bctx));
    if (s->bctx == NULL) return -1;
    p = ws(p + 1, end);
    if (p < end && *p == '}') return 0;
    names_open(s, 2);
    for (;;) {
        span_t k;
        if (s->n_bctx == n || (p = key(s, p, &k)) == NULL) return -1;
        bmember_t *b = &s->bctx[s->n_bctx++];
        b->name = k;
        b->kind = BM_PLAIN;
        out_t o = {in->scratch, in->scratch_len, 0};
        if (k.n == 2 && memcmp(k.p, "ip", 2) == 0) b->kind = BM_DROP;
        if (k.n == 8 && memcmp(k.p, "location", 8) == 0 && in->location) b->kind = BM_DROP;
        if (k.n == 7 && memcmp(k.p, "sillage", 7) == 0) b->kind = *p == '{' ? BM_SILLAGE : BM_SILLAGE_OTHER;
        if (b->kind == BM_SILLAGE) {
            PUTS(&o, "\"sillage\":{");
            names_open(s, 3);
            int had_source = 0, any = 0;
            p = ws(p + 1, end);
            if (p < end && *p == '}') {
                p++;
            } else {
                for (;;) {
                    span_t sk;
                    if ((p = key(s, p, &sk)) == NULL) return -1;
                    if (sk.n == 16 && memcmp(sk.p, "clampedTimestamp", 16) == 0) {
                        p = walk(s, p, 3, NULL);
                    } else if (sk.n == 6 && memcmp(sk.p, "source", 6) == 0) {
                        if (any++) put1(&o, ',');
                        put(&o, s->src_kv, s->src_kv_len);
                        had_source = 1;
                        p = walk(s, p, 3, NULL);
                    } else {
                        if (any++) put1(&o, ',');
                        put_key(s, &o, sk);
                        p = walk(s, p, 3, &o);
                    }
                    if (p == NULL) return -1;
                    p = ws(p, end);
                    if (p < end && *p == ',') {
                        p = ws(p + 1, end);
                        continue;
                    }
                    if (p >= end || *p != '}') return -1;
                    p++;
                    break;
                }
            }
            if (names_close(s, 3, p) == NULL) return -1;
            if (!had_source) {
                if (any) put1(&o, ',');
                put(&o, s->src_kv, s->src_kv_len);
            }
        } else {
            put_key(s, &o, k);
            if ((p = walk(s, p, 2, &o)) == NULL) return -1;
        }
        if (b->kind == BM_PLAIN || b->kind == BM_SILLAGE) {
            if ((b->txt = keep(s, &o, &b->len)) == NULL) return -1;
        }
        p = ws(p, end);
        if (p < end && *p == ',') {
            p = ws(p + 1, end);
            continue;
        }
        if (p >= end || *p != '}') return -1;
        break;
    }
    return names_close(s, 2, p) ? 0 : -1;
}

/* ---- one message ------------------------------------------------------------------- */

enum {
    K_TYPE, K_USER, K_ANON, K_PREVIOUS, K_GROUP, K_EVENT, K_PROPERTIES, K_TRAITS, K_CONTEXT, K_INTEGRATIONS,
    K_MESSAGE, K_TIMESTAMP, K_ORIGINAL, K_SENT, K_RECEIVED, K_WRITEKEY, K_N, K_OTHER = K_N
};

#define IS(k, lit) ((k).n == sizeof(lit) - 1 && memcmp((k).p, lit, sizeof(lit) - 1) == 0)

/* The member sl_msg_normalize() knows name k as, by its first byte. */
static int classify(span_t k)
{
    if (k.n < 5) return IS(k, "type") ? K_TYPE : K_OTHER;
    switch (k.p[0]) {
    case 't': return IS(k, "traits") ? K_TRAITS : IS(k, "timestamp") ? K_TIMESTAMP : K_OTHER;
    case 'u': return IS(k, "userId") ? K_USER : K_OTHER;
    case 'a': return IS(k, "anonymousId") ? K_ANON : K_OTHER;
    case 'p': return IS(k, "previousId") ? K_PREVIOUS : IS(k, "properties") ? K_PROPERTIES : K_OTHER;
    case 'g': return IS(k, "groupId") ? K_GROUP : K_OTHER;
    case 'e': return IS(k, "event") ? K_EVENT : K_OTHER;
    case 'c': return IS(k, "context") ? K_CONTEXT : K_OTHER;
    case 'i': return IS(k, "integrations") ? K_INTEGRATIONS : K_OTHER;
    case 'm': return IS(k, "messageId") ? K_MESSAGE : K_OTHER;
    case 'o': return IS(k, "originalTimestamp") ? K_ORIGINAL : K_OTHER;
    case 's': return IS(k, "sentAt") ? K_SENT : K_OTHER;
    case 'r': return IS(k, "receivedAt") ? K_RECEIVED : K_OTHER;
    case 'w': return IS(k, "writeKey") ? K_WRITEKEY : K_OTHER;
    default: return K_OTHER;
    }
}

typedef struct {
    span_t v[K_N];          /* the first value of each member normalisation reads, as written */
    int type;               /* a batch message's type as read (-1: none known) */
    int ctx_obj;            /* its context is an object (printed normalised in its place) */
    size_t n;               /* members printed so far */
    size_t ts_at;           /* where the timestamp's placeholder is (0: none) */
    size_t clamp_at;        /* where context.sillage ends, for a clampedTimestamp */
    size_t traits_at, traits_end;
    char mid[40];           /* a messageId the server made */
} msg_t;

static inline void comma(out_t *o, msg_t *m)
{
    if (m->n++) put1(o, ',');
}

/* A member as its name and value print (the value checked and printed from p). */
static const char *copy_member(scan_t *s, const char *p, size_t depth, out_t *o, msg_t *m, span_t k)
{
    comma(o, m);
    put_key(s, o, k);
    return walk(s, p, depth, o);
}

/* Context's last members (after its own): the batch's, then sillage, ip and
 * location, as sl_msg_normalize() adds them. own: the names it has. */
static void context_tail(scan_t *s, out_t *o, msg_t *m, size_t *n, const span_t *own, size_t n_own, int sillage)
{
    /* Many names on both sides: the message's are sorted and each of the
     * batch's looked up (searching them in turn was n x m: 20,000 against
     * 7 x 2,300 held the loop thread half a second). */
    span_t *sorted = NULL;
    if (n_own > 16 && s->n_bctx > 16 && (sorted = malloc(n_own * sizeof(*sorted))) != NULL) {
        memcpy(sorted, own, n_own * sizeof(*sorted));
        qsort(sorted, n_own, sizeof(*sorted), cmp_span);
    }
    for (size_t i = 0; i < s->n_bctx && o->len <= o->cap; i++) { /* past cap, the message is refused */
        const bmember_t *b = &s->bctx[i];
        int own_has;
        if (sorted) {
            own_has = bsearch(&b->name, sorted, n_own, sizeof(*sorted), cmp_span) != NULL;
        } else {
            size_t j = 0;
            while (j < n_own && !same(own[j], b->name)) j++;
            own_has = j < n_own;
        }
        if (own_has || b->kind == BM_DROP || b->kind == BM_SILLAGE_OTHER) continue;
        if ((*n)++) put1(o, ',');
        put(o, b->txt, b->len);
        if (b->kind == BM_SILLAGE) {
            m->clamp_at = o->len;
            put1(o, '}');
            sillage = 1;
        }
    }
    free(sorted);
    if (!sillage) {
        if ((*n)++) put1(o, ',');
        PUTS(o, "\"sillage\":{");
        put(o, s->src_kv, s->src_kv_len);
        m->clamp_at = o->len;
        put1(o, '}');
    }
    if (s->ip_kv) {
        if ((*n)++) put1(o, ',');
        put(o, s->ip_kv, s->ip_kv_len);
    }
    if (s->loc_kv) {
        if ((*n)++) put1(o, ',');
        put(o, s->loc_kv, s->loc_kv_len);
    }
}

/* p at the '{' of a message's context.sillage (depth: its own). */
static const char *sillage_obj(scan_t *s, const char *p, size_t depth, out_t *o, msg_t *m)
{
    const char *end = s->end;
    size_t n = 0;
    int had_source = 0;
    put1(o, '{');
    if (depth > s->max_depth) return bail(s);
    names_open(s, depth);
    p = ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            span_t k;
            if ((p = key(s, p, &k)) == NULL) return NULL;
            if (IS(k, "clampedTimestamp")) {
                p = walk(s, p, depth, NULL);
            } else if (IS(k, "source")) {
                if (n++) put1(o, ',');
                put(o, s->src_kv, s->src_kv_len);
                had_source = 1;
                p = walk(s, p, depth, NULL);
            } else {
                if (n++) put1(o, ',');
                put_key(s, o, k);
                p = walk(s, p, depth, o);
            }
            if (p == NULL) return NULL;
            p = ws(p, end);
            if (p < end && *p == ',') {
                p = ws(p + 1, end);
                continue;
            }
            if (p >= end || *p != '}') return bail(s);
            p++;
            break;
        }
    }
    if (!had_source) {
        if (n++) put1(o, ',');
        put(o, s->src_kv, s->src_kv_len);
    }
    m->clamp_at = o->len;
    put1(o, '}');
    return names_close(s, depth, p);
}

/* p at the '{' of a message's context (depth: its own): printed normalised. */
static const char *context_obj(scan_t *s, const char *p, size_t depth, out_t *o, msg_t *m)
{
    const char *end = s->end;
    size_t n = 0;
    int sillage = 0;
    const int drop_location = s->in->location != NULL;
    if (depth > s->max_depth) return bail(s);
    put1(o, '{');
    names_open(s, depth);
    p = ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            span_t k;
            if ((p = key(s, p, &k)) == NULL) return NULL;
            if (IS(k, "sillage") && *p == '{') {
                if (n++) put1(o, ',');
                PUTS(o, "\"sillage\":");
                p = sillage_obj(s, p, depth + 1, o, m);
                sillage = 1;
            } else if (IS(k, "sillage") || IS(k, "ip") || (drop_location && IS(k, "location"))) {
                p = walk(s, p, depth, NULL); /* replaced after the batch's members */
            } else {
                if (n++) put1(o, ',');
                put_key(s, o, k);
                p = walk(s, p, depth, o);
            }
            if (p == NULL) return NULL;
            p = ws(p, end);
            if (p < end && *p == ',') {
                p = ws(p + 1, end);
                continue;
            }
            if (p >= end || *p != '}') return bail(s);
            p++;
            break;
        }
    }
    size_t from = s->frame[depth];
    context_tail(s, o, m, &n, s->names + from, s->n_names - from, sillage);
    put1(o, '}');
    return names_close(s, depth, p);
}

/* The id member k at p: printed as sl_msg_normalize() leaves it (a number
 * becomes a string; a messageId null or "" becomes a UUID). */
static const char *id_member(scan_t *s, const char *p, size_t depth, out_t *o, msg_t *m, span_t key_name, int k)
{
    const char *e;
    comma(o, m);
    put_key(s, o, key_name);
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        int convert = 1;
        if (k == K_PREVIOUS || k == K_GROUP) { /* read as an id only for an alias, a group */
            int type = s->type >= 0 ? s->type : m->type;
            if (s->type < 0 && m->v[K_TYPE].p == NULL) return bail(s); /* its type is not known yet */
            convert = type == (k == K_PREVIOUS ? SL_MSG_ALIAS : SL_MSG_GROUP);
        }
        if (!convert) return walk(s, p, depth, o);
        if ((e = num(s, p, NULL)) == NULL) return NULL;
        char b[64];
        size_t n = id_of_number((span_t){p, (size_t)(e - p)}, b);
        put1(o, '"');
        put(o, b, n);
        put1(o, '"');
        return e;
    }
    if (k == K_MESSAGE && (*p == 'n' || (*p == '"' && p + 1 < s->end && p[1] == '"'))) {
        if ((e = walk(s, p, depth, NULL)) == NULL) return NULL;
        if (*p == 'n' || e - p == 2) { /* null, or "" */
            sl_uuid4(m->mid);
            put1(o, '"');
            put(o, m->mid, 36);
            put1(o, '"');
            return e;
        }
    }
    return walk(s, p, depth, o);
}

/* p at a message object's '{' (depth: its own): past its '}', or NULL
 * (s->bail). Its members are printed to o, normalised where they stand; the
 * object is left open for finish(). */
static const char *message(scan_t *s, const char *p, size_t depth, out_t *o, msg_t *m)
{
    const char *end = s->end;
    memset(m, 0, sizeof(*m));
    m->type = -1;
    if (depth > s->max_depth) return bail(s);
    put1(o, '{');
    names_open(s, depth);
    p = ws(p + 1, end);
    if (p < end && *p == '}') return names_close(s, depth, p + 1);
    for (;;) {
        span_t k;
        if ((p = key(s, p, &k)) == NULL) return NULL;
        if (p >= end) return bail(s);
        int id = classify(k);
        if (id < K_N && m->v[id].p) id = K_OTHER; /* repeated: refused when the object closes */
        const char *v = p;
        switch (id) {
        case K_WRITEKEY: /* never stored */
            p = walk(s, p, depth, NULL);
            break;
        case K_CONTEXT:
            if (*p == '{') {
                comma(o, m);
                PUTS(o, "\"context\":");
                p = context_obj(s, p, depth + 1, o, m);
                m->ctx_obj = 1;
            } else if (*p == 'n') {
                p = walk(s, p, depth, NULL); /* null: replaced by an object at the end */
            } else {
                p = copy_member(s, p, depth, o, m, k);
            }
            break;
        case K_TYPE:
            if (s->type >= 0) {
                comma(o, m);
                PUTS(o, "\"type\":\"");
                put(o, sl_msg_type_name(s->type), strlen(sl_msg_type_name(s->type)));
                put1(o, '"');
                p = walk(s, p, depth, NULL);
            } else {
                p = copy_member(s, p, depth, o, m, k);
                if (p && *v == '"') {
                    char b[16];
                    span_t t = {v, (size_t)(p - v)};
                    size_t n = t.n <= 16 * 6 ? sdecode(t, NULL) : 16;
                    if (n < sizeof(b)) {
                        sdecode(t, b);
                        m->type = sl_msg_type_from_name(b, n);
                    }
                }
            }
            break;
        case K_TIMESTAMP: /* corrected once every member is known */
            comma(o, m);
            PUTS(o, "\"timestamp\":\"");
            m->ts_at = o->len;
            PUTS(o, "000000000000000000000000\"");
            p = walk(s, p, depth, NULL);
            break;
        case K_RECEIVED:
            comma(o, m);
            PUTS(o, "\"receivedAt\":\"");
            put(o, s->received, 24);
            put1(o, '"');
            p = walk(s, p, depth, NULL);
            break;
        case K_SENT:
            if (*p == 'n' && s->has_sent) { /* null: the batch's takes its place */
                comma(o, m);
                PUTS(o, "\"sentAt\":");
                put(o, s->sent_txt, s->sent_txt_len);
                p = walk(s, p, depth, NULL);
            } else {
                p = copy_member(s, p, depth, o, m, k);
            }
            break;
        case K_USER: case K_ANON: case K_MESSAGE: case K_PREVIOUS: case K_GROUP:
            p = id_member(s, p, depth, o, m, k, id);
            break;
        case K_TRAITS:
            comma(o, m);
            put_key(s, o, k);
            m->traits_at = o->len;
            p = walk(s, p, depth, o);
            m->traits_end = o->len;
            break;
        default:
            p = copy_member(s, p, depth, o, m, k);
        }
        if (p == NULL) return NULL;
        if (id < K_N) m->v[id] = (span_t){v, (size_t)(p - v)};
        p = ws(p, end);
        if (p < end && *p == ',') {
            p = ws(p + 1, end);
            continue;
        }
        if (p >= end || *p != '}') return bail(s);
        return names_close(s, depth, p + 1);
    }
}

static int is_null(span_t v) { return v.p && v.p[0] == 'n'; }

/* sl_msg_normalize()'s id_at(): 1 present and usable, 0 absent, null or "",
 * -1 of a wrong type or longer than 256 bytes. */
static int id_state(span_t v)
{
    if (v.p == NULL || is_null(v)) return 0;
    if (v.p[0] == '"') {
        size_t n = memchr(v.p, '\\', v.n) ? sdecode(v, NULL) : v.n - 2;
        return n == 0 ? 0 : n <= MAX_ID_CHARS ? 1 : -1;
    }
    return v.p[0] == '-' || (v.p[0] >= '0' && v.p[0] <= '9') ? 1 : -1;
}

/* sl_msg_normalize()'s read_time(): 1 and *ms, 0 absent or null, -1 bad. */
static int read_time(span_t v, int64_t *ms)
{
    if (v.p == NULL || is_null(v)) return 0;
    if (v.p[0] != '"' || v.n > 64 * 6) return -1;
    char b[64 * 4];
    size_t n = sdecode(v, NULL);
    if (n >= 64) return -1; /* no date-time is that long */
    sdecode(v, b);
    return sl_time_parse_iso(b, n, ms) == 0 ? 1 : -1;
}

static int object_or_absent(span_t v) { return v.p == NULL || v.p[0] == 'n' || v.p[0] == '{'; }

static const char *id_error(int k)
{
    switch (k) {
    case K_USER: return "userId must be a string or a number of at most 256 characters";
    case K_ANON: return "anonymousId must be a string or a number of at most 256 characters";
    case K_PREVIOUS: return "previousId must be a string or a number of at most 256 characters";
    case K_GROUP: return "groupId must be a string or a number of at most 256 characters";
    default: return "messageId must be a string or a number of at most 256 characters";
    }
}

/* The checks of sl_msg_normalize(), in its order, on the members message()
 * found; then the members it appends and the corrected timestamp. NULL, or
 * why the message is refused. *type: its type. */
static const char *finish(scan_t *s, msg_t *m, out_t *o, size_t depth, int *type_out)
{
    const ack_in_t *in = s->in;
    int type = s->type;
    if (type < 0) {
        if (m->v[K_TYPE].p == NULL || m->v[K_TYPE].p[0] != '"')
            return "message needs a type: track, page, screen, identify, alias or group";
        if ((type = m->type) < 0) return "type must be one of track, page, screen, identify, alias, group";
    }
    *type_out = type;
    int uid = id_state(m->v[K_USER]);
    if (uid < 0) return id_error(K_USER);
    int aid = id_state(m->v[K_ANON]);
    if (aid < 0) return id_error(K_ANON);
    if (type == SL_MSG_ALIAS) {
        int pid = id_state(m->v[K_PREVIOUS]);
        if (pid < 0) return id_error(K_PREVIOUS);
        if (pid == 0 || uid == 0) return "alias needs previousId and userId";
    } else if (uid == 0 && aid == 0) {
        return "message needs userId or anonymousId";
    }
    if (type == SL_MSG_TRACK) {
        span_t ev = m->v[K_EVENT];
        if (ev.p == NULL || ev.p[0] != '"' || ev.n == 2) return "track needs an event name (\"event\")";
        if (ev.n - 2 > 1024 && (!memchr(ev.p, '\\', ev.n) || sdecode(ev, NULL) > 1024))
            return "event name is longer than 1024 characters";
    }
    if (type == SL_MSG_GROUP) {
        int gid = id_state(m->v[K_GROUP]);
        if (gid < 0) return id_error(K_GROUP);
        if (gid == 0) return "group needs groupId";
    }
    if (!object_or_absent(m->v[K_PROPERTIES])) return "properties must be an object";
    if (!object_or_absent(m->v[K_TRAITS])) return "traits must be an object";
    if (!object_or_absent(m->v[K_CONTEXT])) return "context must be an object";
    if (!object_or_absent(m->v[K_INTEGRATIONS])) return "integrations must be an object";
    int mid = id_state(m->v[K_MESSAGE]);
    if (mid < 0) return id_error(K_MESSAGE);

    int64_t ts = 0, sent = 0, orig = 0;
    int has_ts = read_time(m->v[K_TIMESTAMP], &ts);
    if (has_ts < 0) return "timestamp must be an ISO 8601 date-time string";
    int has_orig = read_time(m->v[K_ORIGINAL], &orig);
    if (has_orig < 0) return "originalTimestamp must be an ISO 8601 date-time string";
    int has_sent = read_time(m->v[K_SENT], &sent);
    if (has_sent < 0) return "sentAt must be an ISO 8601 date-time string";
    int sent_from_batch = 0;
    if (has_sent == 0) s->needs_sent = 1;
    if (has_sent == 0 && s->has_sent) {
        if (!s->sent_ok) return "the batch's sentAt must be an ISO 8601 date-time string";
        sent = s->sent_ms;
        has_sent = sent_from_batch = 1;
    }
    int ts_from_member = has_ts;
    if (!has_ts && has_orig) {
        ts = orig;
        has_ts = 1;
    }
    int64_t corrected = in->received_ms;
    if (has_ts) corrected = has_sent ? sl_skew_correct(in->received_ms, sent, ts) : ts;
    int64_t clamped_from = 0;
    int clamped = 0;
    if (corrected > in->received_ms + SL_MSG_FUTURE_TOLERANCE_MS) {
        clamped_from = corrected;
        clamped = 1;
        corrected = in->received_ms;
    }

    /* what sl_msg_normalize() appends, in its order */
    char iso[32];
    if (s->type >= 0 && m->v[K_TYPE].p == NULL) {
        comma(o, m);
        PUTS(o, "\"type\":\"");
        put(o, sl_msg_type_name(s->type), strlen(sl_msg_type_name(s->type)));
        put1(o, '"');
    }
    if (m->v[K_MESSAGE].p == NULL) {
        sl_uuid4(m->mid);
        comma(o, m);
        PUTS(o, "\"messageId\":\"");
        put(o, m->mid, 36);
        put1(o, '"');
    }
    if (sent_from_batch && m->v[K_SENT].p == NULL) {
        comma(o, m);
        PUTS(o, "\"sentAt\":");
        put(o, s->sent_txt, s->sent_txt_len);
    }
    if (ts_from_member && !has_orig) { /* the client's clock reading */
        comma(o, m);
        PUTS(o, "\"originalTimestamp\":");
        if (walk(s, m->v[K_TIMESTAMP].p, depth, o) == NULL) return "out of memory";
    }
    sl_time_format_iso(corrected, iso);
    if (m->v[K_TIMESTAMP].p == NULL) {
        comma(o, m);
        PUTS(o, "\"timestamp\":\"");
        put(o, iso, 24);
        put1(o, '"');
    } else if (m->ts_at + 24 <= o->cap) {
        memcpy(o->buf + m->ts_at, iso, 24);
    }
    if (m->v[K_RECEIVED].p == NULL) {
        comma(o, m);
        PUTS(o, "\"receivedAt\":\"");
        put(o, s->received, 24);
        put1(o, '"');
    }
    if (!m->ctx_obj) { /* absent or null: a new one at the end */
        comma(o, m);
        PUTS(o, "\"context\":{");
        size_t n = 0;
        context_tail(s, o, m, &n, NULL, 0, 0);
        put1(o, '}');
    }
    put1(o, '}');
    if (clamped) { /* at the end of context.sillage */
        static const char name[] = ",\"clampedTimestamp\":\"";
        size_t ins = sizeof(name) - 1 + 25;
        if (o->len + ins <= o->cap) {
            char *at = o->buf + m->clamp_at;
            memmove(at + ins, at, o->len - m->clamp_at);
            memcpy(at, name, sizeof(name) - 1);
            sl_time_format_iso(clamped_from, iso);
            memcpy(at + sizeof(name) - 1, iso, 24);
            at[ins - 1] = '"';
        }
        o->len += ins;
    }
    return NULL;
}

/* ---- the request ------------------------------------------------------------------- */

/* The messageId a stored message has (into the arena). */
static const char *message_id(scan_t *s, const msg_t *m)
{
    span_t v = m->v[K_MESSAGE];
    if (m->mid[0]) return sl_arena_strndup(s->in->arena, m->mid, 36);
    char b[64];
    if (v.p[0] != '"') {
        size_t n = id_of_number(v, b);
        return sl_arena_strndup(s->in->arena, b, n);
    }
    char *d = sl_arena_alloc(s->in->arena, v.n);
    if (d == NULL) return NULL;
    d[sdecode(v, d)] = '\0';
    return d;
}

/* The identify's traits warning (ack_tree.c's note_traits()). */
static void note_traits(scan_t *s, ack_out_t *out, const msg_t *m, int type, size_t printed_len, const char *mid)
{
    const sl_config_t *cfg = s->in->cfg;
    span_t t = m->v[K_TRAITS];
    if (type != SL_MSG_IDENTIFY || t.p == NULL || t.p[0] != '{') return;
    size_t n = 0;
    sl_jiter_t it;
    sl_jval_t k, v;
    sl_jiter((sl_jval_t){t.p, t.n}, &it);
    while (sl_jnext(&it, &k, &v)) n++;
    if (n <= cfg->limits.max_traits_per_person) {
        if (printed_len <= cfg->limits.max_traits_bytes) return;
        if (m->traits_end - m->traits_at <= cfg->limits.max_traits_bytes) return;
    }
    ack_traits_warning(cfg, &out->warnings, mid, n);
}

/* One message printed: checks, the stored-bytes bound, into the arena.
 * NULL, or why it is refused (*status: the single message's answer; *over:
 * the request's). */
static const char *store(scan_t *s, ack_out_t *out, msg_t *m, out_t *o, size_t depth, int *status)
{
    const ack_in_t *in = s->in;
    int type;
    *status = 400;
    const char *why = finish(s, m, o, depth, &type);
    if (why) return why;
    if (o->len > o->cap) {
        *status = 413;
        return ACK_TOO_BIG_NORMALISED;
    }
    /* Past what a batch of any size may store, the request is refused at the
     * end (scan_batch()) as the tree refuses it at this message: the rest is
     * counted, no longer kept (2,500 messages with a 30 KB context put 75 MB
     * in the arena of a 115 KB request). */
    if (out->stored_bytes + o->len > ACK_STORED_BYTES(in->cfg, in->cfg->limits.max_batch_messages)) {
        out->stored_bytes += o->len;
        return NULL;
    }
    if (out->n_msgs == out->n_in_request) { /* room for more: a batch is counted as it is read */
        size_t cap = out->n_in_request ? 2 * out->n_in_request : 16;
        sl_store_msg_t *msgs = realloc(out->msgs, cap * sizeof(*msgs));
        if (msgs == NULL) return "out of memory";
        out->msgs = msgs;
        const char **mids = sl_arena_alloc(in->arena, cap * sizeof(*mids));
        if (mids == NULL) return "out of memory";
        memset(msgs + out->n_msgs, 0, (cap - out->n_msgs) * sizeof(*msgs));
        if (out->n_msgs) memcpy(mids, out->mids, out->n_msgs * sizeof(*mids));
        out->mids = mids;
        out->n_in_request = cap;
    }
    char *json = sl_arena_strndup(in->arena, o->buf, o->len);
    const char *mid = message_id(s, m);
    if (json == NULL || mid == NULL) return "out of memory";
    out->stored_bytes += o->len;
    out->mids[out->n_msgs] = mid;
    sl_store_msg_t *sm = &out->msgs[out->n_msgs++];
    sm->json = json;
    sm->json_len = o->len;
    sm->received_ms = in->received_ms;
    note_traits(s, out, m, type, o->len, mid);
    return NULL;
}

typedef struct {
    span_t name, val;
} member_t;

/* The root object's members from p (after its '{', or after a value when
 * resuming), the first of each name located, a batch's elements counted
 * (count: NULL, not counted). With stop, it stops at the batch's value when
 * the write key is known by then (*stopped: that value). The rest of the
 * body must be blanks. 0, or -1 (s->bail). */
static int locate(scan_t *s, const char *p, int resume, member_t *batch, member_t *ctx, member_t *sent,
                  member_t *wk, size_t *count, int stop, const char **stopped)
{
    const char *end = s->end;
    if (!resume) {
        names_open(s, 1);
        p = ws(p + 1, end);
        if (p < end && *p == '}') goto close;
    } else {
        goto next;
    }
    for (;;) {
        span_t k;
        if ((p = key(s, p, &k)) == NULL) return -1;
        member_t *m = IS(k, "batch") ? batch : IS(k, "context") ? ctx : IS(k, "sentAt") ? sent
                    : IS(k, "writeKey") ? wk : NULL;
        if (m == batch && batch->name.p == NULL && stop && p < end && *p == '[' && (s->in->basic || wk->name.p)) {
            batch->name = k;
            batch->val.p = p;
            *stopped = p;
            return 0;
        }
        const char *e = skim(p, end, m == batch ? count : NULL);
        if (e == NULL) return -1;
        if (m && m->name.p == NULL) *m = (member_t){k, {p, (size_t)(e - p)}};
        p = e;
    next:
        p = ws(p, end);
        if (p < end && *p == ',') {
            p = ws(p + 1, end);
            continue;
        }
        if (p >= end || *p != '}') return -1;
    close:
        p++;
        break;
    }
    if (names_close(s, 1, p) == NULL) return -1;
    return ws(p, end) == end ? 0 : -1;
}

/* A located value checked (and printed to o): 0, or -1 when it does not
 * end where it was located to. */
static int check(scan_t *s, span_t v, size_t depth, out_t *o)
{
    return walk(s, v.p, depth, o) == v.p + v.n ? 0 : -1;
}

/* The write key, or the answer: the source, or NULL with *why. -1: bail. */
static int authenticate(scan_t *s, const member_t *wk, const sl_source_t **src, const char **why)
{
    const ack_in_t *in = s->in;
    if (in->basic) {
        *src = in->basic_src;
        *why = in->basic_why;
        return 0;
    }
    *src = NULL;
    if (wk->val.p == NULL || wk->val.p[0] != '"') {
        *why = "missing write key: send it as the Basic auth username or as writeKey in the body";
        return wk->val.p && check(s, wk->val, 1, NULL) ? -1 : 0;
    }
    if (check(s, wk->val, 1, NULL)) return -1;
    char *wkey = sl_arena_alloc(in->arena, wk->val.n);
    if (wkey == NULL) return -1;
    size_t n = sdecode(wk->val, wkey);
    *src = ack_find_source(in->cfg, wkey, n);
    if (*src == NULL) *why = "unknown write key";
    return 0;
}

/* The fields every message of the request gets, as printed. */
static int prepare(scan_t *s, const sl_source_t *src, const member_t *ctx, const member_t *sent)
{
    const ack_in_t *in = s->in;
    sl_time_format_iso(in->received_ms, s->received);
    if ((s->src_kv = arena_str(s, "\"source\":", src->name, &s->src_kv_len)) == NULL) return -1;
    if (in->ip && (s->ip_kv = arena_str(s, "\"ip\":", in->ip, &s->ip_kv_len)) == NULL) return -1;
    if (in->location) {
        size_t n;
        if (sl_json_print(in->location, in->scratch, in->scratch_len, &n)) return -1;
        char *b = sl_arena_alloc(in->arena, n + 11);
        if (b == NULL) return -1;
        memcpy(b, "\"location\":", 11);
        memcpy(b + 11, in->scratch, n);
        s->loc_kv = b;
        s->loc_kv_len = n + 11;
    }
    if (sent && sent->val.p && sent->val.p[0] == '"') {
        out_t o = {in->scratch, in->scratch_len, 0};
        if (check(s, sent->val, 1, &o) || (s->sent_txt = keep(s, &o, &s->sent_txt_len)) == NULL) return -1;
        s->has_sent = 1;
        char *d = sl_arena_alloc(in->arena, sent->val.n);
        if (d == NULL) return -1;
        size_t n = sdecode(sent->val, d);
        s->sent_ok = sl_time_parse_iso(d, n, &s->sent_ms) == 0;
    }
    if (ctx && ctx->val.p && ctx->val.p[0] == '{') {
        if (check(s, ctx->val, 1, NULL) || batch_context(s, ctx->val.p)) return -1;
    }
    return 0;
}

static void refuse(ack_out_t *out, int status, const char *why, int log)
{
    out->status = status;
    out->error = why;
    out->log = log;
}

static const char *too_big(char *b, size_t n, const sl_config_t *cfg)
{
    snprintf(b, n, "message exceeds limits.max_message_bytes (%llu bytes)",
             (unsigned long long)cfg->limits.max_message_bytes);
    return b;
}

/* A single message's route: 0, or -1 (s->bail). */
static int scan_single(scan_t *s, const char *p, size_t len, ack_out_t *out)
{
    const ack_in_t *in = s->in;
    member_t wk = {{0}, {0}};
    const sl_source_t *src;
    const char *why;
    member_t none = {{0}, {0}};
    if (!in->basic && locate(s, p, 0, &none, &none, &none, &wk, NULL, 0, NULL)) return -1;
    if (authenticate(s, &wk, &src, &why)) return -1;
    if (src == NULL || len > in->cfg->limits.max_message_bytes) {
        const char *e = walk(s, p, 0, NULL);
        if (e == NULL || ws(e, s->end) != s->end) return -1;
        if (src == NULL) refuse(out, 401, why, ACK_LOG_AUTH);
        else refuse(out, 413, too_big(out->errbuf, sizeof(out->errbuf), in->cfg), ACK_LOG_NONE);
        return 0;
    }
    if (prepare(s, src, NULL, NULL) || ack_alloc_msgs(in, out, 1)) return out->status ? 0 : -1;
    out->src = src;
    msg_t m;
    out_t o = {in->scratch, in->scratch_len - 1, 0};
    const char *e = message(s, p, 1, &o, &m);
    if (e == NULL || ws(e, s->end) != s->end) return -1;
    if (!in->basic && (m.v[K_WRITEKEY].p != wk.val.p || m.v[K_WRITEKEY].n != wk.val.n)) return -1;
    int status;
    why = store(s, out, &m, &o, 1, &status);
    if (s->bail) return -1;
    if (why && status != 400) refuse(out, status, why, ACK_LOG_NONE);
    else if (why) ack_reject(out, -1, why);
    else if (out->stored_bytes > ACK_STORED_BYTES(in->cfg, 1)) refuse(out, 413, ACK_TOO_BIG_REQUEST, ACK_LOG_NONE);
    return 0;
}

/* A batch's elements from p (its '['): each checked, then normalised and
 * stored or refused, into out (emptied first). Past its ']', or NULL
 * (s->bail); *n: how many. Past limits.max_batch_messages they are only
 * checked: the request is refused. */
static const char *elements(scan_t *s, const char *p, size_t len, ack_out_t *out, size_t *n)
{
    const ack_in_t *in = s->in;
    const sl_config_t *cfg = in->cfg;
    const char *end = s->end;
    ack_out_free(out);
    s->needs_sent = 0;
    p = ws(p + 1, end);
    if (p < end && *p == ']') {
        *n = 0;
        return p + 1;
    }
    for (size_t i = 0;; i++) {
        if (p >= end) return bail(s);
        const char *start = p;
        msg_t m;
        out_t o = {in->scratch, in->scratch_len - 1, 0};
        int checked_only = i >= cfg->limits.max_batch_messages;
        if (!checked_only && *p == '{') p = message(s, p, 3, &o, &m);
        else p = walk(s, p, 2, NULL);
        if (p == NULL) return NULL;
        if (!checked_only) {
            /* A body within max_message_bytes cannot hold a message over it. */
            out_t count = {NULL, 0, 0};
            if (len > cfg->limits.max_message_bytes &&
                (walk(s, start, 2, &count), count.len) > cfg->limits.max_message_bytes) {
                char msg[128];
                ack_reject(out, (long)i, too_big(msg, sizeof(msg), cfg));
            } else if (*start != '{') {
                ack_reject(out, (long)i, "message must be a JSON object");
            } else {
                int status;
                const char *why = store(s, out, &m, &o, 3, &status);
                if (s->bail) return NULL;
                if (why) ack_reject(out, (long)i, why);
            }
        }
        p = ws(p, end);
        if (p < end && *p == ',') {
            p = ws(p + 1, end);
            continue;
        }
        if (p >= end || *p != ']') return bail(s);
        *n = i + 1;
        return p + 1;
    }
}

/* The batch route: 0, or -1 (s->bail). Analytics libraries put the batch
 * first and its sentAt after it: the elements are read as soon as the write
 * key is known, and read again only when what follows them changes them (a
 * context to merge, a sentAt one of them lacks). */
static int scan_batch(scan_t *s, const char *root, size_t len, ack_out_t *out)
{
    const ack_in_t *in = s->in;
    const sl_config_t *cfg = in->cfg;
    member_t batch = {{0}, {0}}, ctx = {{0}, {0}}, sent = {{0}, {0}}, wk = {{0}, {0}};
    size_t n = 0, skimmed = 0;
    const sl_source_t *src;
    const char *why, *end = s->end, *stopped = NULL, *p;
    if (locate(s, root, 0, &batch, &ctx, &sent, &wk, &skimmed, 1, &stopped)) return -1;
    if (authenticate(s, &wk, &src, &why)) return -1;
    int early = stopped && src; /* the elements before what follows them */
    if (early) {
        size_t open = s->n_names; /* the root's names so far: the elements' are above them */
        if (prepare(s, src, &ctx, &sent)) return -1;
        s->n_names = open;
        if ((p = elements(s, stopped, len, out, &n)) == NULL) return -1;
        batch.val.n = (size_t)(p - stopped);
        if (locate(s, p, 1, &batch, &ctx, &sent, &wk, NULL, 0, NULL)) return -1;
        int redo = (ctx.val.p > stopped && ctx.val.p[0] == '{') || (sent.val.p > stopped && s->needs_sent);
        if (redo) {
            s->n_bctx = 0;
            s->has_sent = s->sent_ok = 0;
            if (prepare(s, src, &ctx, &sent) || elements(s, stopped, len, out, &n) == NULL) return -1;
        }
    } else if (stopped) { /* refused: its elements matter no more */
        const char *e = skim(stopped, end, &skimmed);
        if (e == NULL) return -1;
        batch.val.n = (size_t)(e - stopped);
        if (locate(s, e, 1, &batch, &ctx, &sent, &wk, NULL, 0, NULL)) return -1;
    }
    /* the root's other members are checked here */
    p = ws(root + 1, end);
    while (p < end && *p != '}') {
        span_t k;
        if ((p = key(s, p, &k)) == NULL) return -1;
        const char *e = p == batch.val.p && batch.val.n ? p + batch.val.n : walk(s, p, 1, NULL);
        if (e == NULL) return -1;
        p = ws(e, end);
        if (p < end && *p == ',') p = ws(p + 1, end);
        else if (p >= end || *p != '}') return -1; /* skimmed as a value, it was not one */
    }
    s->n_names = 0;
    if (!early) {
        int refused = 1;
        if (src == NULL) refuse(out, 401, why, ACK_LOG_AUTH);
        else if (batch.val.p == NULL || batch.val.p[0] != '[') refuse(out, 400, "batch must be an array of messages", 0);
        else refused = 0;
        if (refused) /* the batch is checked all the same: a body that is not JSON is answered so */
            return batch.val.p && check(s, batch.val, 1, NULL) ? -1 : 0;
        if (prepare(s, src, &ctx, &sent) || (p = elements(s, batch.val.p, len, out, &n)) == NULL) return -1;
        if (p != batch.val.p + batch.val.n || n != skimmed) return -1;
    }
    out->src = src;
    if (n == 0) {
        refuse(out, 400, "batch is empty", 0);
    } else if (n > cfg->limits.max_batch_messages) {
        snprintf(out->errbuf, sizeof(out->errbuf), "batch holds %zu messages; limits.max_batch_messages is %llu", n,
                 (unsigned long long)cfg->limits.max_batch_messages);
        refuse(out, 413, out->errbuf, 0);
    } else if (out->stored_bytes > ACK_STORED_BYTES(cfg, n)) {
        /* the bound each message was held to, as the sum only grows: passed by all once passed at the end */
        refuse(out, 413, ACK_TOO_BIG_REQUEST, 0);
    }
    out->n_in_request = n;
    return 0;
}

void ack_scan(const ack_in_t *in, const char *body, size_t len, ack_out_t *out)
{
    scan_t scan, *s = &scan; /* 13 KB of the loop thread's stack */
    memset(out, 0, sizeof(*out));
    memset(s, 0, offsetof(scan_t, frame));
    s->in = in;
    s->end = body + len;
    s->max_depth = in->cfg->limits.max_json_depth;
    s->type = in->type;
    s->names = s->names0;
    s->cap_names = sizeof(s->names0) / sizeof(s->names0[0]);
    const char *p = ws(body, s->end);
    int rc = p < s->end && *p == '{' ? (in->type >= 0 ? scan_single(s, p, len, out) : scan_batch(s, p, len, out)) : -1;
    if (s->names != s->names0) free(s->names);
    if (rc == 0) return;
    ack_out_free(out);
    ack_tree(in, body, len, out);
    out->delegated = 1;
}
