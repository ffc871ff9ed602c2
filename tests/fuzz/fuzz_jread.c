/* fuzz_jread.c - the tree-less JSON reader (sl_common.h, sl_jroot/sl_jget/
 * sl_jstr/sl_jnum/sl_jiter) against cJSON, differentially. Any input: the
 * reader never reads out of its span (ASan) and answers. An input cJSON
 * parses is printed as the collector stores events (sl_json_print, compact,
 * byte for byte cJSON's); the reader must accept that text and find every
 * member cJSON finds in the same text -- the first of each name -- with the same type and value
 * (strings decoded byte for byte, numbers to the bit), and walk every object
 * and array in the same order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "sl_common.h"

static sl_arena_t arena;

static int type_of(const cJSON *x)
{
    if (cJSON_IsObject(x)) return SL_JOBJ;
    if (cJSON_IsArray(x)) return SL_JARR;
    if (cJSON_IsString(x)) return SL_JSTR;
    if (cJSON_IsNumber(x)) return SL_JNUM;
    if (cJSON_IsTrue(x)) return SL_JTRUE;
    if (cJSON_IsFalse(x)) return SL_JFALSE;
    return SL_JNULL;
}

static void same(const cJSON *x, sl_jval_t v, int depth)
{
    if (cJSON_IsNumber(x) && !isfinite(x->valuedouble)) { /* printed as null (1e999 parses as inf) */
        if (sl_jtype(v) != SL_JNULL) abort();
        return;
    }
    if (sl_jtype(v) != type_of(x)) abort();
    if (cJSON_IsString(x)) {
        size_t n;
        const char *s = sl_jstr(v, &arena, &n);
        if (s == NULL) abort();
        /* cJSON's string stops at a NUL that \u0000 decoded to */
        if (strlen(s) != strlen(x->valuestring) || strcmp(s, x->valuestring) != 0) abort();
        if (!sl_jstr_eq(v, s, n)) abort();
    } else if (cJSON_IsNumber(x)) {
        double d;
        if (!sl_jnum(v, &d)) abort();
        if (memcmp(&d, &x->valuedouble, sizeof(d)) != 0 && !(d == 0 && x->valuedouble == 0)) abort();
    } else if (cJSON_IsObject(x) || cJSON_IsArray(x)) {
        if (depth > 64) return;
        sl_jiter_t it;
        sl_jval_t k, e;
        const cJSON *c = x->child;
        sl_jiter(v, &it);
        for (; c; c = c->next) {
            if (!sl_jnext(&it, &k, &e)) abort();
            if (cJSON_IsObject(x)) {
                if (!sl_jstr_eq(k, c->string, strlen(c->string))) abort();
                /* lookup by name: the first member of that name, as cJSON finds it */
                const cJSON *first = cJSON_GetObjectItemCaseSensitive(x, c->string);
                sl_jval_t g = sl_jget(v, c->string);
                if (first == c && (g.p != e.p || g.n != e.n)) abort();
            }
            same(c, e, depth + 1);
        }
        if (sl_jnext(&it, &k, &e)) abort();
    }
}

static void same_span(sl_jval_t a, sl_jval_t b)
{
    if (a.n != b.n || (a.n && a.p != b.p)) abort();
}

/* The index a later pass finds: the members in order, by the iterator
 * (none for what is no object). */
static void index_by_iter(sl_jval_t obj, sl_jindex_t *ix)
{
    sl_jiter_t it;
    ix->obj = sl_jtype(obj) == SL_JOBJ ? obj : (sl_jval_t){NULL, 0};
    ix->n = 0;
    sl_jiter(ix->obj, &it);
    while (ix->n < SL_JINDEX_MAX && sl_jnext(&it, &ix->key[ix->n], &ix->val[ix->n])) ix->n++;
}

static void same_index(const sl_jindex_t *a, const sl_jindex_t *b)
{
    same_span(a->obj, b->obj);
    if (a->n != b->n) abort();
    for (size_t i = 0; i < a->n; i++) {
        same_span(a->key[i], b->key[i]);
        same_span(a->val[i], b->val[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        sl_arena_init(&arena);
        init = 1;
    }
    sl_arena_reset(&arena);
    const char *text = (const char *)data;
    /* any bytes: an answer, inside the span */
    sl_jval_t root = sl_jroot(text, size);
    if (root.n && (root.p < text || root.p + root.n > text + size)) abort();
    sl_jval_t m = sl_jget(root, "a");
    double d;
    (void)sl_jnum(m, &d);
    (void)sl_jstr(m, &arena, NULL);
    sl_jiter_t it;
    sl_jval_t k, v;
    int n = 0;
    sl_jiter(root, &it);
    while (sl_jnext(&it, &k, &v) && n++ < 10000) (void)sl_jtype(v);
    /* the index noted in the checking pass is the one a later pass finds */
    sl_jindex_t top, sub, top2, sub2;
    sl_jval_t root2 = sl_jroot_index(text, size, &top, "c", &sub);
    if (root2.p != root.p || root2.n != root.n) abort();
    index_by_iter(root, &top2);
    index_by_iter(sl_jindex_get(&top2, "c"), &sub2);
    same_index(&top, &top2);
    same_index(&sub, &sub2);

    cJSON *doc = cJSON_ParseWithLength(text, size);
    if (doc == NULL) return 0;
    size_t cap = size * 8 + 64, len;
    char *out = malloc(cap);
    if (out && sl_json_print(doc, out, cap, &len) == 0) {
        sl_jval_t r = sl_jroot(out, len);
        if (r.n == 0) abort(); /* what the collector stores always reads */
        /* against cJSON reading the same text (its print of a number may be
         * an ulp away from the number it parsed) */
        cJSON *again = cJSON_ParseWithLength(out, len);
        if (again == NULL) abort();
        same(again, r, 0);
        cJSON_Delete(again);
    }
    free(out);
    cJSON_Delete(doc);
    return 0;
}
