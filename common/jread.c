/* jread.c - reading members out of JSON text without building a tree
 * (sl_common.h, "JSON without a tree").
 *
 * One scanner checks and skips a value: strings (escapes, no raw control
 * character), the literals, numbers by their characters, and objects and
 * arrays with an explicit stack (no recursion; SL_JDEPTH levels), so a lookup
 * costs one pass over what lies before the member, allocates nothing, and
 * never reads outside its span. */
#include "sl_common.h"

#include <stdlib.h>
#include <string.h>

#define SL_JDEPTH SL_JSON_MAX_DEPTH /* every event the collector may store */

static const char *ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}


/* Decodes the string character at *pp (inside the quotes; end: the closing
 * quote) into out (1 to 4 bytes), advancing *pp. Returns the byte count, or
 * -1 when it is not well-formed (a bad escape, a lone surrogate). */
static int decode_char(const char **pp, const char *end, unsigned char out[4])
{
    const char *p = *pp;
    if (*p != '\\') {
        out[0] = (unsigned char)*p;
        *pp = p + 1;
        return 1;
    }
    if (end - p < 2) return -1;
    char e = p[1];
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *k = e ? strchr(from, e) : NULL;
    if (k) {
        out[0] = (unsigned char)to[k - from];
        *pp = p + 2;
        return 1;
    }
    if (e != 'u' || end - p < 6) return -1;
    long c = sl_hex4(p + 2);
    p += 6;
    if (c < 0 || (c >= 0xDC00 && c <= 0xDFFF)) return -1;
    if (c >= 0xD800 && c <= 0xDBFF) { /* a pair: the low half must follow */
        if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return -1;
        long lo = sl_hex4(p + 2);
        if (lo < 0xDC00 || lo > 0xDFFF) return -1;
        c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
        p += 6;
    }
    *pp = p;
    if (c < 0x80) {
        out[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (unsigned char)(0xC0 | c >> 6);
        out[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (unsigned char)(0xE0 | c >> 12);
        out[1] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
        out[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | c >> 18);
    out[1] = (unsigned char)(0x80 | (c >> 12 & 0x3F));
    out[2] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
    out[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* p inside a string: past the bytes that need no look (sl_json_plain_len) */
static const char *plain_run(const char *p, const char *end) { return p + sl_json_plain_len(p, (size_t)(end - p)); }

/* p at a quote: past the closing quote, or NULL. An escape is checked as
 * decode_char() will read it (a \u surrogate with its pair). */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end;) {
        p = plain_run(p, end);
        if (p >= end) break;
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        unsigned char b[4];
        if (decode_char(&p, end, b) < 0) return NULL; /* c is a backslash: past its escape */
    }
    return NULL;
}

/* A number's characters, or a literal: past it, or NULL. */
static const char *skip_scalar(const char *p, const char *end)
{
    static const char *const lits[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if (*p == lits[i][0]) return (size_t)(end - p) >= n && memcmp(p, lits[i], n) == 0 ? p + n : NULL;
    }
    const char *s = p;
    while (p < end && (strchr("0123456789+-.eE", *p) && *p)) p++;
    return p > s ? p : NULL;
}

static const char *skip_fast(const char *p, const char *end);

/* p at ws then '"name"' ws ':': past the colon, or NULL; *key the name's span
 * (checked: skip_string; fast: the text was checked already). */
static const char *member_key(const char *p, const char *end, sl_jval_t *key, int fast)
{
    p = ws(p, end);
    if (p >= end || *p != '"') return NULL;
    const char *e = fast ? skip_fast(p, end) : skip_string(p, end);
    if (e == NULL) return NULL;
    if (key) *key = (sl_jval_t){p, (size_t)(e - p)};
    p = ws(e, end);
    return p < end && *p == ':' ? p + 1 : NULL;
}

/* What a checking pass notes on its way (NULL: nothing): the members of
 * the value it checks, when that is an object, and those of one of them
 * named sub, when that is an object too (the first SL_JINDEX_MAX of each). */
typedef struct {
    sl_jindex_t *top, *sub;
    const char *sub_name;
    size_t sub_len;
    int in_sub;              /* the member of top under way is sub */
    int sub_seen;            /* a member named sub was met (the first counts) */
    const char *start[3];    /* where the value under way at depth 1, 2 began */
    sl_jval_t key[3];        /* its name */
} notes_t;

static void note_key(notes_t *nt, int depth, sl_jval_t key, const char *stack)
{
    if (depth == 1 && stack[0] == '}') {
        nt->key[1] = key;
        nt->in_sub = nt->sub && !nt->sub_seen && sl_jstr_eq(key, nt->sub_name, nt->sub_len);
        nt->sub_seen |= nt->in_sub;
    } else if (depth == 2 && nt->in_sub && stack[1] == '}') {
        nt->key[2] = key;
    }
}

static void note_start(notes_t *nt, int depth, const char *p)
{
    if (depth == 1 || depth == 2) nt->start[depth] = p;
}

static void note_end(notes_t *nt, int depth, const char *p, const char *stack)
{
    sl_jindex_t *ix = depth == 1 && stack[0] == '}' ? nt->top : depth == 2 && nt->in_sub && stack[1] == '}' ? nt->sub : NULL;
    if (ix == NULL) return;
    sl_jval_t v = {nt->start[depth], (size_t)(p - nt->start[depth])};
    if (ix->n < SL_JINDEX_MAX) {
        ix->key[ix->n] = nt->key[depth];
        ix->val[ix->n++] = v;
    }
    if (depth == 1 && nt->in_sub) {
        if (v.p[0] == '{') nt->sub->obj = v; /* else no index: nothing was noted under it */
        nt->in_sub = 0;
    }
}

/* p at a value (after any blank): past it, or NULL when it is not
 * well-formed; on the way, what nt asks for (nt NULL: nothing). */
static const char *skip_value_noting(const char *p, const char *end, notes_t *nt)
{
    char stack[SL_JDEPTH];
    int depth = 0;
    sl_jval_t key;
    for (;;) {
        /* a value starts here */
        p = ws(p, end);
        if (p >= end) return NULL;
        if (nt) note_start(nt, depth, p);
        if (*p == '{' || *p == '[') {
            if (depth == SL_JDEPTH) return NULL;
            stack[depth++] = *p == '{' ? '}' : ']';
            p = ws(p + 1, end);
            if (p >= end) return NULL;
            if (*p == stack[depth - 1]) {
                p++;
                depth--;
            } else {
                if (stack[depth - 1] == '}') {
                    if ((p = member_key(p, end, &key, 0)) == NULL) return NULL;
                    if (nt) note_key(nt, depth, key, stack);
                }
                continue;
            }
        } else if (*p == '"') {
            if ((p = skip_string(p, end)) == NULL) return NULL;
        } else if ((p = skip_scalar(p, end)) == NULL) {
            return NULL;
        }
        /* after a value: close containers, or go on to the next element */
        for (;;) {
            if (nt) note_end(nt, depth, p, stack);
            if (depth == 0) return p;
            p = ws(p, end);
            if (p >= end) return NULL;
            if (*p == stack[depth - 1]) {
                p++;
                depth--;
                continue;
            }
            if (*p != ',') return NULL;
            p++;
            if (stack[depth - 1] == '}') {
                if ((p = member_key(p, end, &key, 0)) == NULL) return NULL;
                if (nt) note_key(nt, depth, key, stack);
            }
            break;
        }
    }
}

/* p at a value that sl_jroot checked: past it, without checking again (a
 * lookup skips the members before the one it wants this way). On text that
 * was not checked it still never passes end. */
static const char *skip_fast(const char *p, const char *end)
{
    int depth = 0;
    while (p < end) {
        char c = *p;
        if (c == '"') { /* to the closing quote (strings are short: a byte loop beats memchr's call) */
            for (p++; p < end; p++) {
                p = plain_run(p, end);
                if (p >= end) break;
                char b = *p;
                if (b == '"') break;
                /* the escaped byte is no quote; a branch, not p += (b == '\\'), which would
                 * make each step wait for the load before it */
                if (__builtin_expect(b == '\\', 0) && ++p >= end) break;
            }
            if (p >= end) return end;
            p++;
            if (depth == 0) return p;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) return p; /* the end of the container a scalar is in */
            if (--depth == 0) return p + 1;
        } else if (depth == 0 && (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == ':')) {
            return p; /* the end of a number or a literal */
        }
        p++;
    }
    return end;
}

sl_jval_t sl_jroot(const char *text, size_t n) { return sl_jroot_index(text, n, NULL, NULL, NULL); }

sl_jval_t sl_jroot_index(const char *text, size_t n, sl_jindex_t *top, const char *sub, sl_jindex_t *sub_ix)
{
    sl_jval_t none = {NULL, 0};
    notes_t nt = {top, sub ? sub_ix : NULL, sub, sub ? strlen(sub) : 0, 0, 0, {NULL}, {{NULL, 0}}};
    if (top) top->obj = none, top->n = 0;
    if (nt.sub) nt.sub->obj = none, nt.sub->n = 0;
    if (text == NULL) return none;
    const char *end = text + n, *p = ws(text, end);
    const char *e = p < end ? skip_value_noting(p, end, top ? &nt : NULL) : NULL;
    if (e == NULL || ws(e, end) != end) {
        if (top) top->n = 0;
        if (nt.sub) nt.sub->obj = none, nt.sub->n = 0;
        return none;
    }
    sl_jval_t root = {p, (size_t)(e - p)};
    if (top && sl_jtype(root) == SL_JOBJ) top->obj = root;
    else if (top) top->n = 0;
    return root;
}

int sl_jtype(sl_jval_t v)
{
    if (v.n == 0) return SL_JNONE;
    switch (v.p[0]) {
    case '{': return SL_JOBJ;
    case '[': return SL_JARR;
    case '"': return SL_JSTR;
    case 't': return SL_JTRUE;
    case 'f': return SL_JFALSE;
    case 'n': return SL_JNULL;
    default: return SL_JNUM;
    }
}

void sl_jiter(sl_jval_t v, sl_jiter_t *it)
{
    int t = sl_jtype(v);
    it->obj = t == SL_JOBJ;
    it->p = t == SL_JOBJ || t == SL_JARR ? v.p + 1 : NULL;
    it->end = it->p ? v.p + v.n : NULL;
}

int sl_jnext(sl_jiter_t *it, sl_jval_t *key, sl_jval_t *val)
{
    if (it->p == NULL) return 0;
    const char *p = ws(it->p, it->end);
    if (p >= it->end || *p == '}' || *p == ']') goto done;
    if (*p == ',') p++;
    sl_jval_t k = {NULL, 0};
    if (it->obj && (p = member_key(p, it->end, &k, 1)) == NULL) goto done;
    p = ws(p, it->end);
    const char *e = p < it->end ? skip_fast(p, it->end) : NULL;
    if (e == NULL || e == p) goto done;
    if (key) *key = k;
    *val = (sl_jval_t){p, (size_t)(e - p)};
    it->p = e;
    return 1;
done:
    it->p = NULL;
    return 0;
}

int sl_jstr_eq(sl_jval_t v, const char *s, size_t n)
{
    if (sl_jtype(v) != SL_JSTR || v.n < 2) return 0;
    const char *p = v.p + 1, *end = v.p + v.n - 1;
    size_t raw = (size_t)(end - p);
    /* the common case: no escape, the bytes themselves (decoded, a string is
     * never longer than its text) */
    if (raw < n) return 0;
    /* as long: equal only without an escape (one would make it shorter), so
     * the bytes are s and s has no backslash */
    if (raw == n) return memcmp(p, s, n) == 0 && memchr(s, '\\', n) == NULL;
    if (memchr(p, '\\', raw) == NULL) return 0; /* longer, and no escape to make it shorter */
    size_t at = 0;
    while (p < end) {
        unsigned char b[4];
        int k = decode_char(&p, end, b);
        if (k < 0 || at + (size_t)k > n || memcmp(s + at, b, (size_t)k) != 0) return 0;
        at += (size_t)k;
    }
    return at == n;
}

sl_jval_t sl_jget(sl_jval_t obj, const char *key)
{
    sl_jiter_t it;
    sl_jval_t k, v, none = {NULL, 0};
    if (sl_jtype(obj) != SL_JOBJ) return none;
    size_t n = strlen(key);
    sl_jiter(obj, &it);
    while (sl_jnext(&it, &k, &v))
        if (sl_jstr_eq(k, key, n)) return v;
    return none;
}

const char *sl_jstr(sl_jval_t v, sl_arena_t *a, size_t *len)
{
    if (sl_jtype(v) != SL_JSTR || v.n < 2) return NULL;
    const char *p = v.p + 1, *end = v.p + v.n - 1;
    char *out = sl_arena_alloc(a, v.n); /* decoded, it is never longer */
    if (out == NULL) return NULL;
    const char *bs = memchr(p, '\\', (size_t)(end - p));
    size_t at = (size_t)((bs ? bs : end) - p); /* up to the first escape: the bytes themselves */
    memcpy(out, p, at);
    p += at;
    while (p < end) {
        int k = decode_char(&p, end, (unsigned char *)out + at);
        if (k < 0) return NULL;
        at += (size_t)k;
    }
    out[at] = 0;
    if (len) *len = at;
    return out;
}

int sl_jnum(sl_jval_t v, double *out)
{
    if (v.n == 0 || v.n > 400) return 0;
    const char *p = v.p, *end = v.p + v.n;
    /* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
    if (p < end && *p == '-') p++;
    if (p < end && *p == '0') p++;
    else if (p < end && *p >= '1' && *p <= '9') while (p < end && *p >= '0' && *p <= '9') p++;
    else return 0;
    if (p < end && *p == '.') {
        const char *d = ++p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == d) return 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        const char *d = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == d) return 0;
    }
    if (p != end) return 0;
    char buf[401];
    memcpy(buf, v.p, v.n);
    buf[v.n] = 0;
    *out = strtod(buf, NULL);
    return 1;
}

sl_jval_t sl_jindex_get(const sl_jindex_t *ix, const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < ix->n; i++)
        if (sl_jstr_eq(ix->key[i], key, n)) return ix->val[i];
    return ix->n == SL_JINDEX_MAX ? sl_jget(ix->obj, key) : (sl_jval_t){NULL, 0};
}
