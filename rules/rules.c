/* rules.c - the condition language (sl_rules.h): compile a JSON condition
 * into a tree of nodes, evaluate it against the text of an event and of a
 * person view without building a tree of them, print it back as canonical
 * JSON. */
#define _GNU_SOURCE /* memmem */
#include "sl_rules.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- operators: one table; a new operator is a row here and a case in
 * leaf_test() ---- */

enum op {
    OP_EQ, OP_NE, OP_IN, OP_NIN, OP_GT, OP_GTE, OP_LT, OP_LTE, OP_EXISTS,
    OP_CONTAINS, OP_STARTS_WITH, OP_GLOB, OP_BEFORE, OP_AFTER
};

/* what an operator's value may be */
enum takes { T_SCALAR, T_LIST, T_ORDERED, T_BOOL, T_STRING, T_TIME };

static const struct op_def {
    const char *name;
    enum op op;
    enum takes takes;
} ops[] = {
    {"eq", OP_EQ, T_SCALAR},         {"ne", OP_NE, T_SCALAR},
    {"in", OP_IN, T_LIST},           {"nin", OP_NIN, T_LIST},
    {"gt", OP_GT, T_ORDERED},        {"gte", OP_GTE, T_ORDERED},
    {"lt", OP_LT, T_ORDERED},        {"lte", OP_LTE, T_ORDERED},
    {"exists", OP_EXISTS, T_BOOL},   {"contains", OP_CONTAINS, T_SCALAR},
    {"starts_with", OP_STARTS_WITH, T_STRING}, {"glob", OP_GLOB, T_STRING},
    {"before", OP_BEFORE, T_TIME},   {"after", OP_AFTER, T_TIME},
};
#define N_OPS (sizeof(ops) / sizeof(ops[0]))

static const char *const takes_text[] = {
    [T_SCALAR] = "a number, a string, true, false or null",
    [T_LIST] = "an array of numbers, strings, true, false or null",
    [T_ORDERED] = "a number or a string",
    [T_BOOL] = "true or false",
    [T_STRING] = "a string",
    [T_TIME] = "an ISO-8601 time or a duration (\"30d\")",
};

/* ---- the person's fields: what may follow `profile.` ---- */

static const struct profile_root {
    const char *name;
    unsigned char min_after, max_after; /* segments allowed after this one */
    const char *shape;                  /* for messages */
} profile_roots[] = {
    {"traits", 1, SL_RULES_MAX_SEGMENTS, "profile.traits.<name>"},
    {"identified", 0, 0, "profile.identified"},
    {"first_seen", 0, 0, "profile.first_seen"},
    {"last_seen", 0, 0, "profile.last_seen"},
    {"consent", 1, 1, "profile.consent.<category>"},
    {"unsubscribed", 0, 0, "profile.unsubscribed"},
    {"computed", 1, 2, "profile.computed.<name>"}, /* rfm.segment: two */
    {"audiences", 0, 0, "profile.audiences"},      /* the names of the person's audiences */
};
#define N_PROFILE_ROOTS (sizeof(profile_roots) / sizeof(profile_roots[0]))

/* ---- the compiled tree ---- */

enum kind { N_ALL, N_ANY, N_NOT, N_LEAF };
enum side { SIDE_EVENT, SIDE_PROFILE };

typedef struct val_s {
    int type;        /* cJSON_Number, cJSON_String, cJSON_True, cJSON_False, cJSON_NULL */
    double num;
    const char *str; /* NUL-terminated, owned by the node */
} val_t;

typedef struct seg_s {
    const char *name; /* NUL-terminated, in node->names */
    unsigned char any; /* suffixed [] */
} seg_t;

typedef struct node_s node_t;
struct node_s {
    unsigned char kind, op, side, n_segs;
    size_t n;            /* kids, or list values */
    node_t **kids;       /* all/any: n of them; not: one */
    char *path;          /* as written */
    char *names;         /* the path's segment names, NUL-separated */
    seg_t segs[SL_RULES_MAX_SEGMENTS];
    val_t v;             /* eq ne gt.. contains starts_with glob; exists: type True/False */
    val_t *list;         /* in, nin */
    int64_t t_ms;        /* before/after: an absolute time, or a duration when rel */
    unsigned char rel;
};

struct sl_cond_s {
    node_t *root;
    unsigned reads; /* SL_RULES_EVENT | SL_RULES_PROFILE */
};

static void node_free(node_t *n)
{
    if (n == NULL) return;
    for (size_t i = 0; n->kids && i < n->n; i++) node_free(n->kids[i]);
    free(n->kids);
    if (n->list) {
        for (size_t i = 0; i < n->n; i++) free((char *)n->list[i].str);
        free(n->list);
    }
    free((char *)n->v.str);
    free(n->path);
    free(n->names);
    free(n);
}

void sl_rules_free(sl_cond_t *c)
{
    if (c == NULL) return;
    node_free(c->root);
    free(c);
}

/* ---- compiling ---- */

typedef struct compiler_s {
    char *err;
    size_t errlen;
    const char *where;    /* the config path */
    const char *reader;   /* its last member name: "where", "if" */
    char loc[256];        /* the place in the tree: ".all[1].not" */
    size_t loc_len;
    unsigned sides, reads;
    int leaves;
} compiler_t;

static int fail(compiler_t *cc, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(compiler_t *cc, int rc, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (cc->errlen) snprintf(cc->err, cc->errlen, "%s%s: %s", cc->where, cc->loc, msg);
    return rc;
}

/* s (user text) made printable for a message: at most 64 bytes, control
 * bytes and quotes as '?'. */
static const char *show(const char *s, char out[72])
{
    size_t i = 0;
    for (; i < 64 && s[i]; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[i] = ch < 0x20 || ch == 0x7f || ch == '"' ? '?' : (char)ch;
    }
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

/* Appends ".key" or ".key[i]" (i < 0: none) to the place in the tree;
 * returns the length to pop back to. */
static size_t loc_push(compiler_t *cc, const char *key, long i)
{
    size_t old = cc->loc_len, room = sizeof(cc->loc) - old;
    int w = i < 0 ? snprintf(cc->loc + old, room, ".%s", key) : snprintf(cc->loc + old, room, ".%s[%ld]", key, i);
    if (w > 0) cc->loc_len = (size_t)w < room ? old + (size_t)w : sizeof(cc->loc) - 1;
    return old;
}

static void loc_pop(compiler_t *cc, size_t old)
{
    cc->loc_len = old;
    cc->loc[old] = '\0';
}

static int is_scalar(const cJSON *j)
{
    return cJSON_IsNumber(j) || cJSON_IsString(j) || cJSON_IsBool(j) || cJSON_IsNull(j);
}

/* A scalar into v (a copy of a string); *bytes grows by what it costs. */
static int val_from_json(compiler_t *cc, const char *opname, const cJSON *j, val_t *v, size_t *bytes)
{
    if (cJSON_IsNumber(j)) {
        if (!isfinite(j->valuedouble)) return fail(cc, SL_EINVAL, "\"%s\" takes a finite number", opname);
        v->type = cJSON_Number;
        v->num = j->valuedouble;
        *bytes += 8;
    } else if (cJSON_IsString(j)) {
        size_t n = strlen(j->valuestring);
        *bytes += n + 1;
        if (n > SL_RULES_MAX_VALUE_BYTES) return fail(cc, SL_ETOOBIG, "a value over 1 KB");
        char *s = malloc(n + 1);
        if (s == NULL) return fail(cc, SL_ENOMEM, "out of memory");
        memcpy(s, j->valuestring, n + 1);
        v->type = cJSON_String;
        v->str = s;
    } else {
        v->type = cJSON_IsTrue(j) ? cJSON_True : cJSON_IsFalse(j) ? cJSON_False : cJSON_NULL;
        *bytes += 8;
    }
    return 0;
}

/* "30d" -> a duration; otherwise an ISO-8601 time within years 0000-9999
 * (what the canonical print can write back). */
#define ISO_MIN_MS (-62167219200000LL) /* 0000-01-01T00:00:00Z */
#define ISO_END_MS 253402300800000LL   /* 10000-01-01T00:00:00Z */
static int time_from_json(compiler_t *cc, const char *opname, const cJSON *j, node_t *n)
{
    if (!cJSON_IsString(j)) return fail(cc, SL_EINVAL, "\"%s\" takes %s", opname, takes_text[T_TIME]);
    const char *s = j->valuestring;
    char shown[72];
    if (strlen(s) > SL_RULES_MAX_VALUE_BYTES) return fail(cc, SL_ETOOBIG, "a value over 1 KB");
    if (sl_parse_duration_ms(s, &n->t_ms) == 0) {
        n->rel = 1;
        return 0;
    }
    if (sl_time_parse_iso(s, strlen(s), &n->t_ms) == 0 && n->t_ms >= ISO_MIN_MS && n->t_ms < ISO_END_MS) {
        n->rel = 0;
        return 0;
    }
    return fail(cc, SL_EINVAL, "\"%s\" takes %s, not \"%s\"", opname, takes_text[T_TIME], show(s, shown));
}

/* Splits the path into n->segs and decides its side. */
static int compile_path(compiler_t *cc, const char *path, node_t *n)
{
    size_t len = strlen(path);
    char shown[72];
    if (len == 0) return fail(cc, SL_EINVAL, "\"field\" is empty");
    if (len > SL_RULES_MAX_PATH_BYTES) return fail(cc, SL_ETOOBIG, "a path over 256 bytes");
    if ((n->path = malloc(len + 1)) == NULL || (n->names = malloc(len + 1)) == NULL)
        return fail(cc, SL_ENOMEM, "out of memory");
    memcpy(n->path, path, len + 1);
    memcpy(n->names, path, len + 1);
    char *p = n->names;
    for (;;) {
        char *dot = strchr(p, '.');
        if (dot) *dot = '\0';
        size_t sl = strlen(p);
        if (sl == 0) return fail(cc, SL_EINVAL, "malformed path \"%s\": an empty segment", show(path, shown));
        if (n->n_segs == SL_RULES_MAX_SEGMENTS)
            return fail(cc, SL_ETOOBIG, "a path of more than %d segments", SL_RULES_MAX_SEGMENTS);
        seg_t *sg = &n->segs[n->n_segs++];
        if (sl >= 2 && strcmp(p + sl - 2, "[]") == 0) {
            sg->any = 1;
            p[sl - 2] = '\0';
            sl -= 2;
            if (sl == 0)
                return fail(cc, SL_EINVAL, "malformed path \"%s\": \"[]\" must follow a member name",
                            show(path, shown));
        }
        if (strpbrk(p, "[]"))
            return fail(cc, SL_EINVAL, "malformed path \"%s\": \"[]\" may only end a segment", show(path, shown));
        sg->name = p;
        if (dot == NULL) break;
        p = dot + 1;
    }

    if (strcmp(n->segs[0].name, "account") == 0)
        return fail(cc, SL_EINVAL, "\"account\" paths are reserved (accounts are not available yet)");
    if (strcmp(n->segs[0].name, "profile") != 0) {
        n->side = SIDE_EVENT;
        if (!(cc->sides & SL_RULES_EVENT))
            return fail(cc, SL_EINVAL, "event paths are not allowed here (%s reads the person)", cc->reader);
        cc->reads |= SL_RULES_EVENT;
        return 0;
    }
    n->side = SIDE_PROFILE;
    if (!(cc->sides & SL_RULES_PROFILE))
        return fail(cc, SL_EINVAL, "profile paths are not allowed here (%s reads the event)", cc->reader);
    const struct profile_root *r = NULL;
    if (!n->segs[0].any && n->n_segs >= 2)
        for (size_t i = 0; i < N_PROFILE_ROOTS; i++)
            if (strcmp(n->segs[1].name, profile_roots[i].name) == 0) r = &profile_roots[i];
    unsigned after = n->n_segs >= 2 ? n->n_segs - 2u : 0;
    if (r == NULL || after < r->min_after || after > r->max_after) {
        char known[512];
        size_t k = 0;
        for (size_t i = 0; i < N_PROFILE_ROOTS && k < sizeof(known); i++)
            k += (size_t)snprintf(known + k, sizeof(known) - k, "%s%s", i ? ", " : "", profile_roots[i].shape);
        return fail(cc, SL_EINVAL, "unknown profile field \"%s\" (known: %s)", show(path, shown), known);
    }
    cc->reads |= SL_RULES_PROFILE;
    return 0;
}

static int compile_leaf(compiler_t *cc, const cJSON *j, node_t *n)
{
    const cJSON *field = NULL, *opval = NULL;
    const struct op_def *od = NULL;
    char shown[72];
    for (const cJSON *m = j->child; m; m = m->next) {
        if (strcmp(m->string, "field") == 0) {
            if (field) return fail(cc, SL_EINVAL, "\"field\" given twice");
            field = m;
            continue;
        }
        const struct op_def *d = NULL;
        for (size_t i = 0; i < N_OPS; i++)
            if (strcmp(m->string, ops[i].name) == 0) d = &ops[i];
        if (d == NULL) return fail(cc, SL_EINVAL, "unknown operator \"%s\"", show(m->string, shown));
        if (od) return fail(cc, SL_EINVAL, "more than one operator (\"%s\" and \"%s\"): use \"all\"", od->name, d->name);
        od = d;
        opval = m;
    }
    if (!cJSON_IsString(field)) return fail(cc, SL_EINVAL, "\"field\" must be a string");
    if (od == NULL)
        return fail(cc, SL_EINVAL, "\"field\" without an operator (eq ne in nin gt gte lt lte exists contains "
                                   "starts_with glob before after)");
    n->kind = N_LEAF;
    n->op = (unsigned char)od->op;
    int rc = compile_path(cc, field->valuestring, n);
    if (rc) return rc;

    size_t bytes = 0;
    switch (od->takes) {
    case T_SCALAR:
        if (!is_scalar(opval)) break;
        return val_from_json(cc, od->name, opval, &n->v, &bytes);
    case T_ORDERED:
        if (!cJSON_IsNumber(opval) && !cJSON_IsString(opval)) break;
        return val_from_json(cc, od->name, opval, &n->v, &bytes);
    case T_STRING:
        if (!cJSON_IsString(opval)) break;
        return val_from_json(cc, od->name, opval, &n->v, &bytes);
    case T_BOOL:
        if (!cJSON_IsBool(opval)) break;
        n->v.type = cJSON_IsTrue(opval) ? cJSON_True : cJSON_False;
        return 0;
    case T_TIME:
        return time_from_json(cc, od->name, opval, n);
    case T_LIST: {
        if (!cJSON_IsArray(opval)) break;
        size_t cnt = 0; /* every element costs a byte at least: count before allocating */
        for (const cJSON *e = opval->child; e; e = e->next) {
            if (!is_scalar(e)) return fail(cc, SL_EINVAL, "\"%s\" takes %s", od->name, takes_text[T_LIST]);
            if (++cnt > SL_RULES_MAX_VALUE_BYTES) return fail(cc, SL_ETOOBIG, "a value over 1 KB");
        }
        if (cnt && (n->list = calloc(cnt, sizeof(val_t))) == NULL) return fail(cc, SL_ENOMEM, "out of memory");
        for (const cJSON *e = opval->child; e; e = e->next) {
            rc = val_from_json(cc, od->name, e, &n->list[n->n++], &bytes);
            if (rc) return rc;
            if (bytes > SL_RULES_MAX_VALUE_BYTES) return fail(cc, SL_ETOOBIG, "a value over 1 KB");
        }
        return 0;
    }
    }
    return fail(cc, SL_EINVAL, "\"%s\" takes %s", od->name, takes_text[od->takes]);
}

static int compile_node(compiler_t *cc, const cJSON *j, int depth, node_t **out)
{
    if (depth > SL_RULES_MAX_DEPTH) return fail(cc, SL_ETOOBIG, "a condition nests deeper than %d", SL_RULES_MAX_DEPTH);
    if (!cJSON_IsObject(j)) return fail(cc, SL_EINVAL, "a condition must be an object");
    node_t *n = calloc(1, sizeof(*n));
    if (n == NULL) return fail(cc, SL_ENOMEM, "out of memory");
    *out = n;
    char shown[72];
    const cJSON *comb = NULL;
    int leafish = 0; /* "field" or an operator: a leaf, however malformed */
    for (const cJSON *m = j->child; m; m = m->next) {
        int is_comb = strcmp(m->string, "all") == 0 || strcmp(m->string, "any") == 0 || strcmp(m->string, "not") == 0;
        if (strcmp(m->string, "field") == 0) leafish = 1;
        for (size_t i = 0; i < N_OPS; i++)
            if (strcmp(m->string, ops[i].name) == 0) leafish = 1;
        if (is_comb && comb) return fail(cc, SL_EINVAL, "\"%s\" cannot be combined with \"%s\"", comb->string, m->string);
        if (is_comb) comb = m;
    }
    if (comb == NULL) {
        if (j->child == NULL) return fail(cc, SL_EINVAL, "an empty condition: give \"all\", \"any\", \"not\" or \"field\"");
        if (!leafish)
            return fail(cc, SL_EINVAL, "unknown key \"%s\" (a condition is \"all\", \"any\", \"not\" or \"field\" "
                                       "with an operator)", show(j->child->string, shown));
        if (++cc->leaves > SL_RULES_MAX_LEAVES) return fail(cc, SL_ETOOBIG, "more than %d leaves", SL_RULES_MAX_LEAVES);
        return compile_leaf(cc, j, n);
    }
    for (const cJSON *m = j->child; m; m = m->next)
        if (m != comb) return fail(cc, SL_EINVAL, "\"%s\" cannot be combined with \"%s\"", comb->string, show(m->string, shown));

    if (strcmp(comb->string, "not") == 0) {
        n->kind = N_NOT;
        if ((n->kids = calloc(1, sizeof(node_t *))) == NULL) return fail(cc, SL_ENOMEM, "out of memory");
        n->n = 1;
        size_t old = loc_push(cc, "not", -1);
        int rc = compile_node(cc, comb, depth + 1, &n->kids[0]);
        loc_pop(cc, old);
        return rc;
    }
    n->kind = comb->string[1] == 'l' ? N_ALL : N_ANY;
    if (!cJSON_IsArray(comb)) return fail(cc, SL_EINVAL, "\"%s\" must be an array of conditions", comb->string);
    size_t cnt = 0;
    for (const cJSON *e = comb->child; e; e = e->next)
        if (++cnt > SL_RULES_MAX_LEAVES) return fail(cc, SL_ETOOBIG, "more than %d leaves", SL_RULES_MAX_LEAVES);
    if (cnt == 0) {
        if (++cc->leaves > SL_RULES_MAX_LEAVES) return fail(cc, SL_ETOOBIG, "more than %d leaves", SL_RULES_MAX_LEAVES);
        return 0;
    }
    if ((n->kids = calloc(cnt, sizeof(node_t *))) == NULL) return fail(cc, SL_ENOMEM, "out of memory");
    size_t i = 0;
    for (const cJSON *e = comb->child; e; e = e->next, i++) {
        size_t old = loc_push(cc, comb->string, (long)i);
        int rc = compile_node(cc, e, depth + 1, &n->kids[n->n++]);
        if (rc) return rc;
        loc_pop(cc, old);
    }
    return 0;
}

int sl_rules_compile(const cJSON *json, unsigned sides, const char *where, sl_cond_t **out, char *err, size_t errlen)
{
    compiler_t cc = {.err = err, .errlen = errlen, .sides = sides};
    cc.where = where && *where ? where : "condition";
    const char *dot = strrchr(cc.where, '.');
    cc.reader = dot ? dot + 1 : cc.where;
    *out = NULL;
    if (errlen) err[0] = '\0';
    if (!(sides & (SL_RULES_EVENT | SL_RULES_PROFILE)))
        return fail(&cc, SL_EINVAL, "no side to read (sides has neither SL_RULES_EVENT nor SL_RULES_PROFILE)");
    sl_cond_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return fail(&cc, SL_ENOMEM, "out of memory");
    int rc = compile_node(&cc, json, 1, &c->root);
    if (rc) {
        sl_rules_free(c);
        return rc;
    }
    c->reads = cc.reads;
    *out = c;
    return 0;
}

/* ---- evaluating: on the text, no failure ---- */

/* pattern against subject[0..n) */
static int glob_n(const char *p, const char *s, size_t n)
{
    const char *star = NULL, *ss = NULL, *end = s + n;
    while (s < end) {
        if (*p == '*') {
            star = p++;
            ss = s;
        } else if (*p != '\0' && (*p == '?' || *p == *s)) {
            p++;
            s++;
        } else if (star) {
            p = star + 1;
            s = ++ss;
        } else {
            return 0;
        }
    }
    while (*p == '*') p++;
    return *p == '\0';
}

int sl_rules_glob_match(const char *p, const char *s) { return glob_n(p, s, strlen(s)); }

typedef struct ev_s {
    const sl_rules_ctx_t *ctx;
    sl_jval_t view;
    int fetched;        /* the profile callback was called */
    sl_arena_t scratch; /* strings with escapes, decoded (most have none: read in place) */
} ev_t;

/* The bytes of string f: in the text itself when it has no escape, else
 * decoded into the evaluation's scratch. 0 when f is no string. */
static int text_of(sl_jval_t f, ev_t *e, const char **s, size_t *n)
{
    if (sl_jtype(f) != SL_JSTR || f.n < 2) return 0;
    if (memchr(f.p + 1, '\\', f.n - 2) == NULL) {
        *s = f.p + 1;
        *n = f.n - 2;
        return 1;
    }
    return (*s = sl_jstr(f, &e->scratch, n)) != NULL;
}

static int scalar_eq(sl_jval_t f, const val_t *v)
{
    double d;
    switch (v->type) {
    case cJSON_Number: return sl_jtype(f) == SL_JNUM && sl_jnum(f, &d) && d == v->num;
    case cJSON_String: return sl_jstr_eq(f, v->str, strlen(v->str));
    case cJSON_True: return sl_jtype(f) == SL_JTRUE;
    case cJSON_False: return sl_jtype(f) == SL_JFALSE;
    default: return sl_jtype(f) == SL_JNULL;
    }
}

/* <0, 0, >0 for f against v, or 2 when they do not compare (types differ) */
static int order(sl_jval_t f, const val_t *v, ev_t *e)
{
    double d;
    if (v->type == cJSON_Number && sl_jtype(f) == SL_JNUM && sl_jnum(f, &d))
        return d < v->num ? -1 : d > v->num ? 1 : d == v->num ? 0 : 2;
    const char *s;
    size_t n;
    if (v->type == cJSON_String && text_of(f, e, &s, &n)) {
        size_t vn = strlen(v->str);
        int r = memcmp(s, v->str, n < vn ? n : vn); /* as unsigned bytes */
        if (r == 0) r = n < vn ? -1 : n > vn;
        return r < 0 ? -1 : r > 0;
    }
    return 2;
}

static int in_list(sl_jval_t f, const node_t *n)
{
    for (size_t i = 0; i < n->n; i++)
        if (scalar_eq(f, &n->list[i])) return 1;
    return 0;
}

static int64_t time_bound(const node_t *n, int64_t now_ms)
{
    if (!n->rel) return n->t_ms;
    int64_t t;
    return __builtin_sub_overflow(now_ms, n->t_ms, &t) ? INT64_MIN : t;
}

/* The leaf's operator on a value its path reached. */
static int leaf_test(const node_t *n, sl_jval_t f, ev_t *e)
{
    int o;
    const char *s;
    size_t len;
    switch ((enum op)n->op) {
    case OP_EQ: return scalar_eq(f, &n->v);
    case OP_NE: return !scalar_eq(f, &n->v);
    case OP_IN: return in_list(f, n);
    case OP_NIN: return !in_list(f, n);
    case OP_GT: return order(f, &n->v, e) == 1;
    case OP_GTE: return (o = order(f, &n->v, e)) == 1 || o == 0;
    case OP_LT: return order(f, &n->v, e) == -1;
    case OP_LTE: return (o = order(f, &n->v, e)) == -1 || o == 0;
    case OP_EXISTS: return 1; /* exists: false is the negation of the walk (leaf_eval) */
    case OP_CONTAINS:
        if (sl_jtype(f) == SL_JARR) {
            sl_jiter_t it;
            sl_jval_t k, x;
            sl_jiter(f, &it);
            while (sl_jnext(&it, &k, &x))
                if (scalar_eq(x, &n->v)) return 1;
            return 0;
        }
        return n->v.type == cJSON_String && text_of(f, e, &s, &len) &&
               memmem(s, len, n->v.str, strlen(n->v.str)) != NULL;
    case OP_STARTS_WITH: {
        size_t vn = strlen(n->v.str);
        return text_of(f, e, &s, &len) && len >= vn && memcmp(s, n->v.str, vn) == 0;
    }
    case OP_GLOB: return text_of(f, e, &s, &len) && glob_n(n->v.str, s, len);
    case OP_BEFORE:
    case OP_AFTER: {
        int64_t ms;
        if (!text_of(f, e, &s, &len) || sl_time_parse_iso(s, len, &ms)) return 0;
        int64_t bound = time_bound(n, e->ctx->now_ms);
        return n->op == OP_AFTER ? ms > bound : ms < bound;
    }
    }
    return 0;
}

/* 1 when some value reached from x by segments i.. satisfies the leaf. */
static int walk(const node_t *n, sl_jval_t x, unsigned i, ev_t *e)
{
    sl_jval_t m = i == 0 && n->side == SIDE_EVENT && e->ctx->event_top ? sl_jindex_get(e->ctx->event_top, n->segs[0].name)
                                                                      : sl_jget(x, n->segs[i].name);
    if (sl_jtype(m) == SL_JNONE) return 0;
    int last = i + 1 == n->n_segs;
    if (!n->segs[i].any) return last ? leaf_test(n, m, e) : walk(n, m, i + 1, e);
    if (sl_jtype(m) != SL_JARR) return 0;
    sl_jiter_t it;
    sl_jval_t k, el;
    sl_jiter(m, &it);
    while (sl_jnext(&it, &k, &el))
        if (last ? leaf_test(n, el, e) : walk(n, el, i + 1, e)) return 1;
    return 0;
}

static int leaf_eval(const node_t *n, ev_t *e)
{
    sl_jval_t root;
    unsigned first;
    if (n->side == SIDE_PROFILE) {
        if (!e->fetched) {
            e->fetched = 1;
            if (e->ctx->profile) e->view = e->ctx->profile(e->ctx->profile_arg);
        }
        root = e->view;
        first = 1; /* past "profile" */
    } else {
        root = e->ctx->event;
        first = 0;
    }
    int hit = walk(n, root, first, e);
    if (n->op == OP_EXISTS && n->v.type == cJSON_False) return !hit;
    return hit;
}

static int node_eval(const node_t *n, ev_t *e)
{
    switch ((enum kind)n->kind) {
    case N_ALL:
        for (size_t i = 0; i < n->n; i++)
            if (!node_eval(n->kids[i], e)) return 0;
        return 1;
    case N_ANY:
        for (size_t i = 0; i < n->n; i++)
            if (node_eval(n->kids[i], e)) return 1;
        return 0;
    case N_NOT: return !node_eval(n->kids[0], e);
    case N_LEAF: return leaf_eval(n, e);
    }
    return 0;
}

int sl_rules_eval(const sl_cond_t *c, const sl_rules_ctx_t *ctx)
{
    ev_t e = {.ctx = ctx};
    sl_arena_init(&e.scratch);
    int r = node_eval(c->root, &e);
    sl_arena_free(&e.scratch);
    return r;
}

int sl_rules_reads_event(const sl_cond_t *c) { return (c->reads & SL_RULES_EVENT) != 0; }
int sl_rules_reads_profile(const sl_cond_t *c) { return (c->reads & SL_RULES_PROFILE) != 0; }

static int each_leaf(const node_t *n, int (*fn)(const char *path, const char *const *strings, size_t n, void *arg),
                     void *arg)
{
    if (n->kind != N_LEAF) {
        for (size_t i = 0; i < n->n; i++) {
            int rc = each_leaf(n->kids[i], fn, arg);
            if (rc) return rc;
        }
        return 0;
    }
    const char *strs[SL_RULES_MAX_VALUE_BYTES];
    size_t k = 0;
    if (n->list) {
        for (size_t i = 0; i < n->n && k < SL_RULES_MAX_VALUE_BYTES; i++)
            if (n->list[i].type == cJSON_String) strs[k++] = n->list[i].str;
    } else if (n->v.type == cJSON_String) {
        strs[k++] = n->v.str;
    }
    return fn(n->path, strs, k, arg);
}

int sl_rules_each_leaf(const sl_cond_t *c, int (*fn)(const char *path, const char *const *strings, size_t n, void *arg),
                       void *arg)
{
    return c && c->root ? each_leaf(c->root, fn, arg) : 0;
}

/* ---- printing ---- */

/* The shortest of %.15g..%.17g that reads back as x. */
static int print_number(sl_buf_t *b, double x)
{
    char t[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(t, sizeof(t), "%.*g", prec, x);
        if (strtod(t, NULL) == x) break;
    }
    return sl_buf_appends(b, t);
}

static int print_val(sl_buf_t *b, const val_t *v)
{
    switch (v->type) {
    case cJSON_Number: return print_number(b, v->num);
    case cJSON_String: return sl_buf_append_json_str(b, v->str, strlen(v->str));
    case cJSON_True: return sl_buf_appends(b, "true");
    case cJSON_False: return sl_buf_appends(b, "false");
    default: return sl_buf_appends(b, "null");
    }
}

static int print_time(sl_buf_t *b, const node_t *n)
{
    if (!n->rel) {
        char iso[32];
        sl_time_format_iso(n->t_ms, iso);
        return sl_buf_printf(b, "\"%s\"", iso);
    }
    static const struct { const char *unit; int64_t ms; } units[] = {
        {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};
    size_t u = 0;
    while (n->t_ms % units[u].ms) u++;
    return sl_buf_printf(b, "\"%lld%s\"", (long long)(n->t_ms / units[u].ms), units[u].unit);
}

static int print_node(sl_buf_t *b, const node_t *n)
{
    int rc = 0;
    switch ((enum kind)n->kind) {
    case N_ALL:
    case N_ANY:
        rc = sl_buf_appends(b, n->kind == N_ALL ? "{\"all\":[" : "{\"any\":[");
        for (size_t i = 0; !rc && i < n->n; i++) {
            if (i) rc = sl_buf_appends(b, ",");
            if (!rc) rc = print_node(b, n->kids[i]);
        }
        return rc ? rc : sl_buf_appends(b, "]}");
    case N_NOT:
        rc = sl_buf_appends(b, "{\"not\":");
        if (!rc) rc = print_node(b, n->kids[0]);
        return rc ? rc : sl_buf_appends(b, "}");
    case N_LEAF: break;
    }
    const struct op_def *od = NULL;
    for (size_t i = 0; i < N_OPS; i++)
        if (ops[i].op == (enum op)n->op) od = &ops[i];
    rc = sl_buf_appends(b, "{\"field\":");
    if (!rc) rc = sl_buf_append_json_str(b, n->path, strlen(n->path));
    if (!rc) rc = sl_buf_printf(b, ",\"%s\":", od->name);
    if (rc) return rc;
    switch (od->takes) {
    case T_LIST:
        rc = sl_buf_appends(b, "[");
        for (size_t i = 0; !rc && i < n->n; i++) {
            if (i) rc = sl_buf_appends(b, ",");
            if (!rc) rc = print_val(b, &n->list[i]);
        }
        if (!rc) rc = sl_buf_appends(b, "]");
        break;
    case T_TIME: rc = print_time(b, n); break;
    default: rc = print_val(b, &n->v); break;
    }
    return rc ? rc : sl_buf_appends(b, "}");
}

int sl_rules_print(const sl_cond_t *c, sl_buf_t *out)
{
    size_t len = out->len;
    int rc = print_node(out, c->root);
    if (rc) {
        out->len = len;
        if (out->data) out->data[len] = '\0';
    }
    return rc;
}
