/* test_rules.c - the condition language (rules/sl_rules.h) by table:
 * operators, missing paths, types, [] paths, times, combinators, the
 * person view, compile errors with their exact text, bounds, printing, and
 * that evaluating allocates nothing. JSON in the tables is written with '
 * for " (no case needs a quote character inside a string). */
#include "test.h"
#include "tests.h"
#include "sl_rules.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

/* ---- allocation counter: the unit tests link with -Wl,--wrap for these
 * (tests/CMakeLists.txt), so every call from our code (rules/ included)
 * passes here, in the plain, valgrind and ASan runs alike. ---- */
static volatile long allocs; /* volatile: the compiler assumes malloc() leaves our globals alone */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n) { allocs++; return __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) { allocs++; return __real_calloc(n, m); }
void *__wrap_realloc(void *p, size_t n) { allocs++; return __real_realloc(p, n); }
char *__wrap_strdup(const char *s) { allocs++; return __real_strdup(s); }
char *__wrap_strndup(const char *s, size_t n) { allocs++; return __real_strndup(s, n); }

static cJSON *q(const char *s)
{
    char *t = strdup(s);
    for (char *p = t; *p; p++)
        if (*p == '\'') *p = '"';
    cJSON *j = cJSON_Parse(t);
    if (j == NULL) fprintf(stderr, "  bad test JSON: %s\n", s);
    free(t);
    return j;
}

/* 2026-12-01T00:00:00Z */
#define NOW_MS 1796083200000LL

static const char *base_event =
    "{'type':'track','event':'Order Completed','userId':'u1','timestamp':'2026-11-25T10:00:00.000Z',"
    "'properties':{'total':120.5,'count':10,'code':'10','name':'Blue Shirt','coupon':null,'vip':true,"
    "'gift':false,'tags':['sale','new'],'nums':[1,5,9],'empty':[],'mixed':[1,'x',null,{'k':1}],"
    "'products':[{'sku':'a1','category':'shoes','price':50,'opts':[{'c':'red'},{'c':'blue'}]},"
    "{'sku':'b2','category':'hats','price':20.5}],'url':'https://shop.example/p/42?x=1',"
    "'seen':'2026-11-30T12:00:00Z','old':'2026-10-01T00:00:00Z','nested':{'a':{'b':'deep'}}},"
    "'context':{'page':{'path':'/pricing/teams'}}}";

static const char *base_view =
    "{'traits':{'email':'a@b.example','plan':'pro','age':41,'phone':null,'tags':['vip']},'identified':true,"
    "'first_seen':'2026-01-10T00:00:00Z','last_seen':'2026-11-29T00:00:00Z',"
    "'consent':{'email':true,'sms':false},'unsubscribed':false}";

typedef struct view_s {
    const cJSON *view;
    int calls;
    char *text; /* the view as the callback answers it: printed at its first call (or beforehand) */
} view_t;

static sl_jval_t get_view(void *arg)
{
    view_t *v = arg;
    v->calls++;
    if (v->view == NULL) return (sl_jval_t){0};
    if (v->text == NULL) v->text = cJSON_PrintUnformatted(v->view);
    return sl_jroot(v->text, strlen(v->text));
}

/* The text of ev (NULL: an absent value) as evaluation reads it; *hold to free. */
static sl_jval_t ev_text(const cJSON *ev, char **hold)
{
    *hold = ev ? cJSON_PrintUnformatted(ev) : NULL;
    return *hold ? sl_jroot(*hold, strlen(*hold)) : (sl_jval_t){0};
}

/* Compiles cond (both sides) and evaluates it: 1/0, or -1 when it does not compile. */
static int eval_q(const char *cond, const cJSON *event, view_t *view)
{
    cJSON *j = q(cond);
    sl_cond_t *c = NULL;
    char err[512];
    int rc = sl_rules_compile(j, SL_RULES_EVENT | SL_RULES_PROFILE, "t", &c, err, sizeof(err));
    cJSON_Delete(j);
    if (rc) {
        fprintf(stderr, "  compile %s: %s\n", cond, err);
        return -1;
    }
    char *text;
    sl_rules_ctx_t ctx = {.event = ev_text(event, &text), .now_ms = NOW_MS, .profile = get_view, .profile_arg = view};
    int r = sl_rules_eval(c, &ctx);
    sl_rules_free(c);
    free(text);
    free(view->text);
    view->text = NULL;
    return r;
}

/* ev: NULL the base event, "-" no event (ctx.event NULL), else JSON.
 * view: NULL the base view, "-" the callback answers NULL. */
static const struct {
    const char *cond, *ev, *view;
    int want;
} eval_cases[] = {
    /* eq: scalars, exact strings, numbers as numbers */
    {"{'field':'event','eq':'Order Completed'}", NULL, NULL, 1},
    {"{'field':'event','eq':'order completed'}", NULL, NULL, 0},
    {"{'field':'properties.total','eq':120.5}", NULL, NULL, 1},
    {"{'field':'properties.count','eq':10}", NULL, NULL, 1},
    {"{'field':'properties.count','eq':10.0}", NULL, NULL, 1},
    {"{'field':'properties.code','eq':10}", NULL, NULL, 0},
    {"{'field':'properties.count','eq':'10'}", NULL, NULL, 0},
    {"{'field':'properties.vip','eq':true}", NULL, NULL, 1},
    {"{'field':'properties.vip','eq':false}", NULL, NULL, 0},
    {"{'field':'properties.gift','eq':false}", NULL, NULL, 1},
    {"{'field':'properties.coupon','eq':null}", NULL, NULL, 1},
    {"{'field':'properties.name','eq':null}", NULL, NULL, 0},
    {"{'field':'properties.tags','eq':'sale'}", NULL, NULL, 0},
    {"{'field':'properties.nested','eq':null}", NULL, NULL, 0},
    /* ne: present and not equal */
    {"{'field':'event','ne':'Page Viewed'}", NULL, NULL, 1},
    {"{'field':'event','ne':'Order Completed'}", NULL, NULL, 0},
    {"{'field':'properties.code','ne':10}", NULL, NULL, 1},
    {"{'field':'properties.tags','ne':'sale'}", NULL, NULL, 1},
    {"{'field':'properties.coupon','ne':null}", NULL, NULL, 0},
    {"{'field':'properties.name','ne':null}", NULL, NULL, 1},
    /* in / nin */
    {"{'field':'event','in':['Cart Viewed','Order Completed']}", NULL, NULL, 1},
    {"{'field':'event','in':['Cart Viewed']}", NULL, NULL, 0},
    {"{'field':'properties.count','in':[1,10]}", NULL, NULL, 1},
    {"{'field':'properties.code','in':[10]}", NULL, NULL, 0},
    {"{'field':'properties.coupon','in':[1,null]}", NULL, NULL, 1},
    {"{'field':'event','in':[]}", NULL, NULL, 0},
    {"{'field':'event','nin':['Cart Viewed']}", NULL, NULL, 1},
    {"{'field':'event','nin':['Order Completed','x']}", NULL, NULL, 0},
    {"{'field':'event','nin':[]}", NULL, NULL, 1},
    {"{'field':'properties.tags','in':['sale']}", NULL, NULL, 0},
    /* gt gte lt lte: numbers as numbers, strings bytewise, mixed false */
    {"{'field':'properties.count','gt':9}", NULL, NULL, 1},
    {"{'field':'properties.count','gt':10}", NULL, NULL, 0},
    {"{'field':'properties.count','gte':10}", NULL, NULL, 1},
    {"{'field':'properties.count','gte':10.5}", NULL, NULL, 0},
    {"{'field':'properties.count','lt':11}", NULL, NULL, 1},
    {"{'field':'properties.count','lt':10}", NULL, NULL, 0},
    {"{'field':'properties.count','lte':10}", NULL, NULL, 1},
    {"{'field':'properties.count','lte':9}", NULL, NULL, 0},
    {"{'field':'properties.total','gt':100}", NULL, NULL, 1},
    {"{'field':'properties.total','lt':-1e300}", NULL, NULL, 0},
    {"{'field':'properties.code','gt':9}", NULL, NULL, 0},
    {"{'field':'properties.code','lt':9}", NULL, NULL, 0},
    {"{'field':'properties.count','gt':'9'}", NULL, NULL, 0},
    {"{'field':'properties.code','gt':'9'}", NULL, NULL, 0},
    {"{'field':'properties.code','lt':'9'}", NULL, NULL, 1},
    {"{'field':'properties.name','gt':'Aaa'}", NULL, NULL, 1},
    {"{'field':'properties.name','lt':'a'}", NULL, NULL, 1},
    {"{'field':'properties.name','gte':'Blue Shirt'}", NULL, NULL, 1},
    {"{'field':'properties.name','lte':'Blue Shir'}", NULL, NULL, 0},
    {"{'field':'properties.vip','gt':0}", NULL, NULL, 0},
    {"{'field':'properties.nums','gt':0}", NULL, NULL, 0},
    /* exists: null is a value */
    {"{'field':'properties.total','exists':true}", NULL, NULL, 1},
    {"{'field':'properties.total','exists':false}", NULL, NULL, 0},
    {"{'field':'properties.coupon','exists':true}", NULL, NULL, 1},
    {"{'field':'properties.nested.a','exists':true}", NULL, NULL, 1},
    /* contains: substring of a string, element of an array */
    {"{'field':'properties.name','contains':'Shirt'}", NULL, NULL, 1},
    {"{'field':'properties.name','contains':'shirt'}", NULL, NULL, 0},
    {"{'field':'properties.name','contains':''}", NULL, NULL, 1},
    {"{'field':'properties.tags','contains':'new'}", NULL, NULL, 1},
    {"{'field':'properties.tags','contains':'ne'}", NULL, NULL, 0},
    {"{'field':'properties.nums','contains':5}", NULL, NULL, 1},
    {"{'field':'properties.nums','contains':'5'}", NULL, NULL, 0},
    {"{'field':'properties.mixed','contains':null}", NULL, NULL, 1},
    {"{'field':'properties.code','contains':1}", NULL, NULL, 0},
    {"{'field':'properties.count','contains':1}", NULL, NULL, 0},
    /* starts_with */
    {"{'field':'context.page.path','starts_with':'/pricing'}", NULL, NULL, 1},
    {"{'field':'context.page.path','starts_with':'/price'}", NULL, NULL, 0},
    {"{'field':'context.page.path','starts_with':''}", NULL, NULL, 1},
    {"{'field':'properties.count','starts_with':'1'}", NULL, NULL, 0},
    /* glob: the page rule's */
    {"{'field':'properties.url','glob':'https://shop.example/*'}", NULL, NULL, 1},
    {"{'field':'properties.url','glob':'*/p/4?'}", NULL, NULL, 0},
    {"{'field':'properties.url','glob':'*/p/42?x=?'}", NULL, NULL, 1},
    {"{'field':'context.page.path','glob':'/pricing*'}", NULL, NULL, 1},
    {"{'field':'properties.count','glob':'*'}", NULL, NULL, 0},
    /* before / after: now is 2026-12-01T00:00Z; seen 11-30T12:00Z, old 10-01 */
    {"{'field':'properties.seen','after':'30d'}", NULL, NULL, 1},
    {"{'field':'properties.seen','after':'1h'}", NULL, NULL, 0},
    {"{'field':'properties.seen','before':'1h'}", NULL, NULL, 1},
    {"{'field':'properties.seen','after':'12h'}", NULL, NULL, 0},
    {"{'field':'properties.seen','before':'12h'}", NULL, NULL, 0},
    {"{'field':'properties.old','after':'30d'}", NULL, NULL, 0},
    {"{'field':'properties.old','before':'30d'}", NULL, NULL, 1},
    {"{'field':'timestamp','after':'7d'}", NULL, NULL, 1},
    {"{'field':'properties.seen','after':'2026-11-30'}", NULL, NULL, 1},
    {"{'field':'properties.seen','after':'2026-11-30T12:00:00Z'}", NULL, NULL, 0},
    {"{'field':'properties.seen','before':'2026-11-30T12:00:00.001Z'}", NULL, NULL, 1},
    {"{'field':'properties.seen','after':'2026-11-30T13:00:00+02:00'}", NULL, NULL, 1},
    {"{'field':'properties.name','after':'30d'}", NULL, NULL, 0},
    {"{'field':'properties.total','before':'2100-01-01'}", NULL, NULL, 0},
    /* a missing path: every operator false, exists:false true */
    {"{'field':'properties.nope','eq':1}", NULL, NULL, 0},
    {"{'field':'properties.nope','eq':null}", NULL, NULL, 0},
    {"{'field':'properties.nope','ne':1}", NULL, NULL, 0},
    {"{'field':'properties.nope','in':[1,null]}", NULL, NULL, 0},
    {"{'field':'properties.nope','nin':[1]}", NULL, NULL, 0},
    {"{'field':'properties.nope','gt':0}", NULL, NULL, 0},
    {"{'field':'properties.nope','gte':0}", NULL, NULL, 0},
    {"{'field':'properties.nope','lt':0}", NULL, NULL, 0},
    {"{'field':'properties.nope','lte':0}", NULL, NULL, 0},
    {"{'field':'properties.nope','exists':true}", NULL, NULL, 0},
    {"{'field':'properties.nope','exists':false}", NULL, NULL, 1},
    {"{'field':'properties.nope','contains':''}", NULL, NULL, 0},
    {"{'field':'properties.nope','starts_with':''}", NULL, NULL, 0},
    {"{'field':'properties.nope','glob':'*'}", NULL, NULL, 0},
    {"{'field':'properties.nope','before':'1ms'}", NULL, NULL, 0},
    {"{'field':'properties.nope','after':'1970-01-01'}", NULL, NULL, 0},
    {"{'not':{'field':'properties.nope','eq':1}}", NULL, NULL, 1},
    {"{'field':'event','eq':'x'}", "-", NULL, 0},
    {"{'field':'event','exists':false}", "-", NULL, 1},
    {"{'field':'event','exists':false}", "[1]", NULL, 1},
    {"{'field':'event','ne':'x'}", "{'type':'page'}", NULL, 0},
    /* through a non-object: missing */
    {"{'field':'properties.name.x','exists':true}", NULL, NULL, 0},
    {"{'field':'properties.name.x','exists':false}", NULL, NULL, 1},
    {"{'field':'properties.tags.x','eq':1}", NULL, NULL, 0},
    {"{'field':'properties.coupon.x','exists':false}", NULL, NULL, 1},
    /* [] over arrays: any element */
    {"{'field':'properties.tags[]','eq':'sale'}", NULL, NULL, 1},
    {"{'field':'properties.tags[]','eq':'old'}", NULL, NULL, 0},
    {"{'field':'properties.tags[]','ne':'sale'}", NULL, NULL, 1},
    {"{'field':'properties.tags[]','starts_with':'ne'}", NULL, NULL, 1},
    {"{'field':'properties.nums[]','gt':8}", NULL, NULL, 1},
    {"{'field':'properties.nums[]','gt':9}", NULL, NULL, 0},
    {"{'field':'properties.nums[]','in':[2,9]}", NULL, NULL, 1},
    {"{'field':'properties.mixed[]','eq':null}", NULL, NULL, 1},
    {"{'field':'properties.mixed[]','eq':'x'}", NULL, NULL, 1},
    /* over arrays of objects */
    {"{'field':'properties.products[].category','eq':'hats'}", NULL, NULL, 1},
    {"{'field':'properties.products[].category','eq':'bags'}", NULL, NULL, 0},
    {"{'field':'properties.products[].price','gte':50}", NULL, NULL, 1},
    {"{'field':'properties.products[].price','gt':50}", NULL, NULL, 0},
    {"{'field':'properties.products[].price','exists':false}", NULL, NULL, 0},
    {"{'field':'properties.products[].opts','exists':false}", NULL, NULL, 0},
    {"{'field':'properties.products[].zzz','exists':false}", NULL, NULL, 1},
    {"{'field':'properties.products[].zzz','exists':true}", NULL, NULL, 0},
    {"{'field':'properties.mixed[].k','eq':1}", NULL, NULL, 1},
    /* nested [] */
    {"{'field':'properties.products[].opts[].c','eq':'blue'}", NULL, NULL, 1},
    {"{'field':'properties.products[].opts[].c','eq':'green'}", NULL, NULL, 0},
    {"{'field':'properties.products[].opts[].c','exists':false}", NULL, NULL, 0},
    /* [] over non-arrays and empty arrays: missing */
    {"{'field':'properties.name[]','eq':'Blue Shirt'}", NULL, NULL, 0},
    {"{'field':'properties.nested[]','exists':false}", NULL, NULL, 1},
    {"{'field':'properties.nested[].a','exists':true}", NULL, NULL, 0},
    {"{'field':'properties.nope[]','exists':true}", NULL, NULL, 0},
    {"{'field':'properties.empty[]','exists':true}", NULL, NULL, 0},
    {"{'field':'properties.empty[]','exists':false}", NULL, NULL, 1},
    {"{'field':'properties.empty','exists':true}", NULL, NULL, 1},
    /* all / any / not */
    {"{'all':[]}", NULL, NULL, 1},
    {"{'any':[]}", NULL, NULL, 0},
    {"{'not':{'all':[]}}", NULL, NULL, 0},
    {"{'all':[{'field':'type','eq':'track'},{'field':'properties.total','gt':100}]}", NULL, NULL, 1},
    {"{'all':[{'field':'type','eq':'track'},{'field':'properties.total','gt':200}]}", NULL, NULL, 0},
    {"{'any':[{'field':'type','eq':'page'},{'field':'properties.total','gt':100}]}", NULL, NULL, 1},
    {"{'any':[{'field':'type','eq':'page'},{'field':'properties.total','gt':200}]}", NULL, NULL, 0},
    {"{'not':{'field':'type','eq':'track'}}", NULL, NULL, 0},
    {"{'not':{'not':{'field':'type','eq':'track'}}}", NULL, NULL, 1},
    {"{'any':[{'all':[]},{'field':'nope','eq':1}]}", NULL, NULL, 1},
    {"{'not':{'field':'properties.tags[]','eq':'old'}}", NULL, NULL, 1},
    /* the person, through the callback */
    {"{'field':'profile.traits.plan','eq':'pro'}", NULL, NULL, 1},
    {"{'field':'profile.traits.age','gte':18}", NULL, NULL, 1},
    {"{'field':'profile.traits.phone','exists':true}", NULL, NULL, 1},
    {"{'field':'profile.traits.phone','ne':null}", NULL, NULL, 0},
    {"{'field':'profile.traits.tags','contains':'vip'}", NULL, NULL, 1},
    {"{'field':'profile.traits.tags[]','eq':'vip'}", NULL, NULL, 1},
    {"{'field':'profile.identified','eq':true}", NULL, NULL, 1},
    {"{'field':'profile.unsubscribed','eq':false}", NULL, NULL, 1},
    {"{'field':'profile.consent.email','eq':true}", NULL, NULL, 1},
    {"{'field':'profile.consent.sms','eq':true}", NULL, NULL, 0},
    {"{'field':'profile.consent.push','exists':false}", NULL, NULL, 1},
    {"{'field':'profile.last_seen','after':'7d'}", NULL, NULL, 1},
    {"{'field':'profile.first_seen','before':'30d'}", NULL, NULL, 1},
    {"{'field':'profile.first_seen','after':'30d'}", NULL, NULL, 0},
    {"{'field':'profile.traits.plan','eq':'pro'}", NULL, "-", 0},
    {"{'field':'profile.traits.plan','exists':false}", NULL, "-", 1},
    {"{'field':'profile.identified','eq':true}", NULL, "{'identified':'yes'}", 0},
    {"{'field':'profile.traits.plan','eq':'pro'}", NULL, "[]", 0},
    {"{'all':[{'field':'event','eq':'Order Completed'},{'field':'profile.traits.plan','eq':'pro'}]}", NULL, NULL, 1},
    /* the event's own traits are not the person's */
    {"{'field':'traits.plan','eq':'pro'}", NULL, NULL, 0},
    {"{'field':'traits.plan','eq':'pro'}", "{'type':'identify','traits':{'plan':'pro'}}", NULL, 1},
};

TEST(rules_eval_table)
{
    cJSON *ev0 = q(base_event), *view0 = q(base_view);
    REQUIRE(ev0 && view0);
    for (size_t i = 0; i < sizeof(eval_cases) / sizeof(eval_cases[0]); i++) {
        cJSON *ev = NULL, *vw = NULL;
        const cJSON *event = ev0;
        view_t view = {.view = view0};
        if (eval_cases[i].ev) event = strcmp(eval_cases[i].ev, "-") == 0 ? NULL : (ev = q(eval_cases[i].ev));
        if (eval_cases[i].view) view.view = strcmp(eval_cases[i].view, "-") == 0 ? NULL : (vw = q(eval_cases[i].view));
        int r = eval_q(eval_cases[i].cond, event, &view);
        if (r != eval_cases[i].want) {
            fprintf(stderr, "  case %zu: %s on %s: got %d, want %d\n", i, eval_cases[i].cond,
                    eval_cases[i].ev ? eval_cases[i].ev : "the base event", r, eval_cases[i].want);
            test_failures++;
        }
        cJSON_Delete(ev);
        cJSON_Delete(vw);
    }
    cJSON_Delete(ev0);
    cJSON_Delete(view0);
}

/* The view is built at most once per evaluation, and only when a profile
 * leaf is reached. */
TEST(rules_profile_callback)
{
    static const struct {
        const char *cond;
        int reads_event, reads_profile, calls, want;
    } t[] = {
        {"{'field':'event','eq':'Order Completed'}", 1, 0, 0, 1},
        {"{'all':[{'field':'profile.traits.plan','eq':'pro'},{'field':'profile.identified','eq':true},"
         "{'not':{'field':'profile.unsubscribed','eq':true}},{'field':'profile.consent.email','eq':true}]}",
         0, 1, 1, 1},
        {"{'any':[{'field':'event','eq':'Order Completed'},{'field':'profile.traits.plan','eq':'pro'}]}", 1, 1, 0, 1},
        {"{'all':[{'field':'event','eq':'Page Viewed'},{'field':'profile.traits.plan','eq':'pro'}]}", 1, 1, 0, 0},
        {"{'any':[{'field':'event','eq':'Page Viewed'},{'field':'profile.traits.plan','eq':'x'},"
         "{'field':'profile.traits.age','eq':41}]}", 1, 1, 1, 1},
        {"{'all':[]}", 0, 0, 0, 1},
    };
    cJSON *ev = q(base_event), *vw = q(base_view);
    REQUIRE(ev && vw);
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        cJSON *j = q(t[i].cond);
        sl_cond_t *c = NULL;
        char err[256];
        int rc = sl_rules_compile(j, SL_RULES_EVENT | SL_RULES_PROFILE, "t", &c, err, sizeof(err));
        cJSON_Delete(j);
        CHECK_INT(rc, ==, 0);
        if (rc) continue;
        CHECK_INT(sl_rules_reads_event(c), ==, t[i].reads_event);
        CHECK_INT(sl_rules_reads_profile(c), ==, t[i].reads_profile);
        view_t view = {.view = vw};
        char *text;
        sl_rules_ctx_t ctx = {.event = ev_text(ev, &text), .now_ms = NOW_MS, .profile = get_view, .profile_arg = &view};
        CHECK_INT(sl_rules_eval(c, &ctx), ==, t[i].want);
        CHECK_INT(view.calls, ==, t[i].calls);
        /* twice: the cache is per evaluation, not per condition */
        CHECK_INT(sl_rules_eval(c, &ctx), ==, t[i].want);
        CHECK_INT(view.calls, ==, 2 * t[i].calls);
        /* no callback at all: every profile path missing */
        ctx.profile = NULL;
        if (t[i].reads_profile && !t[i].reads_event) CHECK_INT(sl_rules_eval(c, &ctx), ==, 0);
        sl_rules_free(c);
        free(text);
        free(view.text);
    }
    cJSON_Delete(ev);
    cJSON_Delete(vw);
}

/* Nested `not`s around a leaf: depth n (the leaf alone is 1). */
static char *nest_not(int n)
{
    sl_buf_t b = {0};
    for (int i = 1; i < n; i++) sl_buf_appends(&b, "{\"not\":");
    sl_buf_appends(&b, "{\"field\":\"a\",\"eq\":1}");
    for (int i = 1; i < n; i++) sl_buf_appends(&b, "}");
    return b.data;
}

/* {"all": [n leaves]} */
static char *many_leaves(int n)
{
    sl_buf_t b = {0};
    sl_buf_appends(&b, "{\"all\":[");
    for (int i = 0; i < n; i++) sl_buf_printf(&b, "%s{\"field\":\"a\",\"eq\":%d}", i ? "," : "", i);
    sl_buf_appends(&b, "]}");
    return b.data;
}

/* {"field":"a","eq":"xxx..."} with a string of n bytes */
static char *long_value(int n)
{
    sl_buf_t b = {0};
    sl_buf_appends(&b, "{\"field\":\"a\",\"eq\":\"");
    for (int i = 0; i < n; i++) sl_buf_appends(&b, "x");
    sl_buf_appends(&b, "\"}");
    return b.data;
}

/* {"field":"a","in":[n numbers]}: 8 bytes each */
static char *long_list(int n)
{
    sl_buf_t b = {0};
    sl_buf_appends(&b, "{\"field\":\"a\",\"in\":[");
    for (int i = 0; i < n; i++) sl_buf_printf(&b, "%s%d", i ? "," : "", i);
    sl_buf_appends(&b, "]}");
    return b.data;
}

/* a path of n segments "s.s.s...", or of n bytes when bytes */
static char *long_path(int n, int bytes)
{
    sl_buf_t b = {0};
    sl_buf_appends(&b, "{\"field\":\"");
    if (bytes) {
        for (int i = 0; i < n; i++) sl_buf_appends(&b, "p");
    } else {
        for (int i = 0; i < n; i++) sl_buf_appends(&b, i ? ".s" : "s");
    }
    sl_buf_appends(&b, "\",\"exists\":true}");
    return b.data;
}

static const char *known_profile =
    "(known: profile.traits.<name>, profile.identified, profile.first_seen, profile.last_seen, "
    "profile.consent.<category>, profile.unsubscribed, profile.computed.<name>, profile.audiences)";

TEST(rules_compile_errors_table)
{
    enum { E = SL_RULES_EVENT, P = SL_RULES_PROFILE, B = SL_RULES_EVENT | SL_RULES_PROFILE };
    static const struct {
        const char *cond; /* ' for " */
        unsigned sides;
        const char *where;
        int rc;
        const char *err; /* exact; NULL: compiles */
    } t[] = {
        {"{'field':'properties.total','greater':5}", E, "triggers[3].where", SL_EINVAL,
         "triggers[3].where: unknown operator \"greater\""},
        {"{'all':[{'field':'profile.traits.a','eq':1},{'field':5,'eq':1}]}", P, "triggers[0].if", SL_EINVAL,
         "triggers[0].if.all[1]: \"field\" must be a string"},
        {"{'eq':1}", E, "w", SL_EINVAL, "w: \"field\" must be a string"},
        {"{'field':'profile.traits.x','exists':true}", E, "triggers[0].where", SL_EINVAL,
         "triggers[0].where: profile paths are not allowed here (where reads the event)"},
        {"{'any':[{'field':'event','eq':'x'}]}", P, "triggers[0].if", SL_EINVAL,
         "triggers[0].if.any[0]: event paths are not allowed here (if reads the person)"},
        {"{'not':{'field':'profile.traits.x','exists':true}}", E, NULL, SL_EINVAL,
         "condition.not: profile paths are not allowed here (condition reads the event)"},
        {"{'field':'profile.foo','eq':1}", P, "a.if", SL_EINVAL, "a.if: unknown profile field \"profile.foo\" "},
        {"{'field':'profile','eq':1}", P, "a.if", SL_EINVAL, "a.if: unknown profile field \"profile\" "},
        {"{'field':'profile.traits','exists':true}", P, "a.if", SL_EINVAL, "a.if: unknown profile field \"profile.traits\" "},
        {"{'field':'profile.consent.email.x','eq':true}", P, "a.if", SL_EINVAL,
         "a.if: unknown profile field \"profile.consent.email.x\" "},
        {"{'field':'profile.identified.x','eq':true}", P, "a.if", SL_EINVAL,
         "a.if: unknown profile field \"profile.identified.x\" "},
        {"{'field':'profile[].traits.x','eq':true}", P, "a.if", SL_EINVAL,
         "a.if: unknown profile field \"profile[].traits.x\" "},
        {"{'field':'account.plan','eq':1}", B, "w", SL_EINVAL,
         "w: \"account\" paths are reserved (accounts are not available yet)"},
        /* paths */
        {"{'field':'a..b','eq':1}", E, "w", SL_EINVAL, "w: malformed path \"a..b\": an empty segment"},
        {"{'field':'.a','eq':1}", E, "w", SL_EINVAL, "w: malformed path \".a\": an empty segment"},
        {"{'field':'a.','eq':1}", E, "w", SL_EINVAL, "w: malformed path \"a.\": an empty segment"},
        {"{'field':'a[','eq':1}", E, "w", SL_EINVAL, "w: malformed path \"a[\": \"[]\" may only end a segment"},
        {"{'field':'a[]b.c','eq':1}", E, "w", SL_EINVAL, "w: malformed path \"a[]b.c\": \"[]\" may only end a segment"},
        {"{'field':'a[][]','eq':1}", E, "w", SL_EINVAL, "w: malformed path \"a[][]\": \"[]\" may only end a segment"},
        {"{'field':'a]','eq':1}", E, "w", SL_EINVAL, "w: malformed path \"a]\": \"[]\" may only end a segment"},
        {"{'field':'a.[].b','eq':1}", E, "w", SL_EINVAL, "w: malformed path \"a.[].b\": \"[]\" must follow a member name"},
        {"{'field':'','eq':1}", E, "w", SL_EINVAL, "w: \"field\" is empty"},
        {"{'field':'a[].b[].c','eq':1}", E, "w", 0, NULL},
        /* values */
        {"{'field':'a','eq':[1]}", E, "w", SL_EINVAL, "w: \"eq\" takes a number, a string, true, false or null"},
        {"{'field':'a','ne':{}}", E, "w", SL_EINVAL, "w: \"ne\" takes a number, a string, true, false or null"},
        {"{'field':'a','gt':true}", E, "w", SL_EINVAL, "w: \"gt\" takes a number or a string"},
        {"{'field':'a','lte':null}", E, "w", SL_EINVAL, "w: \"lte\" takes a number or a string"},
        {"{'field':'a','exists':'yes'}", E, "w", SL_EINVAL, "w: \"exists\" takes true or false"},
        {"{'field':'a','exists':1}", E, "w", SL_EINVAL, "w: \"exists\" takes true or false"},
        {"{'field':'a','in':'x'}", E, "w", SL_EINVAL, "w: \"in\" takes an array of numbers, strings, true, false or null"},
        {"{'field':'a','nin':[1,[2]]}", E, "w", SL_EINVAL,
         "w: \"nin\" takes an array of numbers, strings, true, false or null"},
        {"{'field':'a','contains':[1]}", E, "w", SL_EINVAL,
         "w: \"contains\" takes a number, a string, true, false or null"},
        {"{'field':'a','starts_with':1}", E, "w", SL_EINVAL, "w: \"starts_with\" takes a string"},
        {"{'field':'a','glob':null}", E, "w", SL_EINVAL, "w: \"glob\" takes a string"},
        {"{'field':'a','after':'yesterday'}", E, "w", SL_EINVAL,
         "w: \"after\" takes an ISO-8601 time or a duration (\"30d\"), not \"yesterday\""},
        {"{'field':'a','before':5}", E, "w", SL_EINVAL, "w: \"before\" takes an ISO-8601 time or a duration (\"30d\")"},
        {"{'field':'a','before':'30 d'}", E, "w", SL_EINVAL,
         "w: \"before\" takes an ISO-8601 time or a duration (\"30d\"), not \"30 d\""},
        {"{'field':'a','before':'2026-13-01'}", E, "w", SL_EINVAL,
         "w: \"before\" takes an ISO-8601 time or a duration (\"30d\"), not \"2026-13-01\""},
        {"{'field':'a','eq':1e999}", E, "w", SL_EINVAL, "w: \"eq\" takes a finite number"},
        /* structure */
        {"[]", E, "w", SL_EINVAL, "w: a condition must be an object"},
        {"{}", E, "w", SL_EINVAL, "w: an empty condition: give \"all\", \"any\", \"not\" or \"field\""},
        {"{'alll':[]}", E, "w", SL_EINVAL,
         "w: unknown key \"alll\" (a condition is \"all\", \"any\", \"not\" or \"field\" with an operator)"},
        {"{'all':{}}", E, "w", SL_EINVAL, "w: \"all\" must be an array of conditions"},
        {"{'any':[true]}", E, "w", SL_EINVAL, "w.any[0]: a condition must be an object"},
        {"{'not':[]}", E, "w", SL_EINVAL, "w.not: a condition must be an object"},
        {"{'all':[],'any':[]}", E, "w", SL_EINVAL, "w: \"all\" cannot be combined with \"any\""},
        {"{'field':'a','eq':1,'not':{}}", E, "w", SL_EINVAL, "w: \"not\" cannot be combined with \"field\""},
        {"{'field':'a'}", E, "w", SL_EINVAL,
         "w: \"field\" without an operator (eq ne in nin gt gte lt lte exists contains starts_with glob before after)"},
        {"{'field':'a','eq':1,'gt':2}", E, "w", SL_EINVAL, "w: more than one operator (\"eq\" and \"gt\"): use \"all\""},
        {"{'field':'a','eq':1,'field':'b'}", E, "w", SL_EINVAL, "w: \"field\" given twice"},
        {"{'all':[{'any':[{'not':{'field':'a','Eq':1}}]}]}", E, "w", SL_EINVAL,
         "w.all[0].any[0].not: unknown operator \"Eq\""},
        {"{'field':'a','eq':1}", 0, "w", SL_EINVAL,
         "w: no side to read (sides has neither SL_RULES_EVENT nor SL_RULES_PROFILE)"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        cJSON *j = q(t[i].cond);
        sl_cond_t *c = (sl_cond_t *)1;
        char err[512] = "unset";
        int rc = sl_rules_compile(j, t[i].sides, t[i].where, &c, err, sizeof(err));
        cJSON_Delete(j);
        if (rc != t[i].rc) {
            fprintf(stderr, "  case %zu %s: rc %d, want %d (%s)\n", i, t[i].cond, rc, t[i].rc, err);
            test_failures++;
        }
        if (t[i].err == NULL) {
            sl_rules_free(c);
            continue;
        }
        CHECK_NULL(c);
        /* unknown profile field messages end with the table of known fields */
        size_t n = strlen(t[i].err);
        int ok = t[i].err[n - 1] == ' ' ? strncmp(err, t[i].err, n) == 0 && strcmp(err + n, known_profile) == 0
                                         : strcmp(err, t[i].err) == 0;
        if (!ok) {
            fprintf(stderr, "  case %zu %s:\n    got  %s\n    want %s%s\n", i, t[i].cond, err, t[i].err,
                    t[i].err[n - 1] == ' ' ? known_profile : "");
            test_failures++;
        }
    }
    /* a message too long for err is cut, and terminated */
    {
        cJSON *j = q("{'field':'a','greater':5}");
        char err[8];
        sl_cond_t *c;
        CHECK_INT(sl_rules_compile(j, E, "triggers[3].where", &c, err, sizeof(err)), ==, SL_EINVAL);
        CHECK_STR(err, "trigger");
        cJSON_Delete(j);
    }
}

/* Bounds: the last size that compiles and the first that does not. */
TEST(rules_bounds)
{
    static const struct {
        char *(*make)(int);
        int ok, over;
        const char *err;
    } t[] = {
        {nest_not, 8, 9, "w.not.not.not.not.not.not.not.not: a condition nests deeper than 8"},
        {many_leaves, 64, 65, "w: more than 64 leaves"},
        {long_value, 1024, 1025, "w: a value over 1 KB"},
        {long_list, 128, 129, "w: a value over 1 KB"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        for (int k = 0; k < 2; k++) {
            char *s = t[i].make(k ? t[i].over : t[i].ok);
            cJSON *j = cJSON_Parse(s);
            sl_cond_t *c = NULL;
            char err[256] = "";
            int rc = sl_rules_compile(j, SL_RULES_EVENT, "w", &c, err, sizeof(err));
            if (k == 0) {
                if (rc) fprintf(stderr, "  bound %zu at %d: %s\n", i, t[i].ok, err);
                CHECK_INT(rc, ==, 0);
            } else {
                CHECK_INT(rc, ==, SL_ETOOBIG);
                CHECK_STR(err, t[i].err);
            }
            sl_rules_free(c);
            cJSON_Delete(j);
            free(s);
        }
    }
    /* paths: 256 bytes and 16 segments */
    static const struct {
        int n, bytes, rc;
        const char *err;
    } p[] = {
        {256, 1, 0, ""}, {257, 1, SL_ETOOBIG, "w: a path over 256 bytes"},
        {16, 0, 0, ""},  {17, 0, SL_ETOOBIG, "w: a path of more than 16 segments"},
    };
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
        char *s = long_path(p[i].n, p[i].bytes);
        cJSON *j = cJSON_Parse(s);
        sl_cond_t *c = NULL;
        char err[256] = "";
        CHECK_INT(sl_rules_compile(j, SL_RULES_EVENT, "w", &c, err, sizeof(err)), ==, p[i].rc);
        CHECK_STR(err, p[i].err);
        sl_rules_free(c);
        cJSON_Delete(j);
        free(s);
    }
    /* 64 leaves nested in all/any/not, the deepest allowed, evaluate */
    char *s = many_leaves(64);
    cJSON *j = cJSON_Parse(s), *ev = cJSON_Parse("{\"a\":63}");
    sl_cond_t *c = NULL;
    char err[256];
    REQUIRE(sl_rules_compile(j, SL_RULES_EVENT, "w", &c, err, sizeof(err)) == 0);
    char *text;
    sl_rules_ctx_t ctx = {.event = ev_text(ev, &text), .now_ms = NOW_MS};
    CHECK_INT(sl_rules_eval(c, &ctx), ==, 0); /* a == 0 and a == 1 ... */
    sl_rules_free(c);
    free(text);
    cJSON_Delete(j);
    cJSON_Delete(ev);
    free(s);
}

/* compile -> print gives the canonical text; compile that -> print gives it again. */
TEST(rules_print_roundtrip)
{
    static const struct {
        const char *in, *out; /* ' for " in both */
    } t[] = {
        {"{ 'eq' : 0.1, 'field' : 'p' }", "{'field':'p','eq':0.1}"},
        {"{'any':[{'field':'a','after':'720h'},{'not':{'field':'b','in':[1,2.5,'x',true,null]}}]}",
         "{'any':[{'field':'a','after':'30d'},{'not':{'field':'b','in':[1,2.5,'x',true,null]}}]}"},
        {"{'all':[]}", "{'all':[]}"},
        {"{'any':[]}", "{'any':[]}"},
        {"{'field':'t','before':'2026-01-01'}", "{'field':'t','before':'2026-01-01T00:00:00.000Z'}"},
        {"{'field':'t','before':'2026-01-01T02:00:00+02:00'}", "{'field':'t','before':'2026-01-01T00:00:00.000Z'}"},
        {"{'field':'t','after':'0000-01-01'}", "{'field':'t','after':'0000-01-01T00:00:00.000Z'}"},
        {"{'field':'t','after':'9999-12-31T23:59:59.999Z'}", "{'field':'t','after':'9999-12-31T23:59:59.999Z'}"},
        {"{'field':'t','after':'90s'}", "{'field':'t','after':'90s'}"},
        {"{'field':'t','after':'1500ms'}", "{'field':'t','after':'1500ms'}"},
        {"{'field':'t','after':'120m'}", "{'field':'t','after':'2h'}"},
        {"{'field':'t','after':'0d'}", "{'field':'t','after':'0d'}"},
        {"{'field':'n','gte':1e21}", "{'field':'n','gte':1e+21}"},
        {"{'field':'n','lt':-0.000123}", "{'field':'n','lt':-0.000123}"},
        {"{'field':'n','eq':123456789012345678}", "{'field':'n','eq':1.2345678901234568e+17}"},
        {"{'field':'properties.products[].category','exists':false}",
         "{'field':'properties.products[].category','exists':false}"},
        {"{'field':'profile.consent.sms','eq':true}", "{'field':'profile.consent.sms','eq':true}"},
        {"{'field':'s','glob':'/a?b*'}", "{'field':'s','glob':'/a?b*'}"},
        {"{'field':'s','contains':'tab\\there \\u00e9 \\\\ \\/'}", "{'field':'s','contains':'tab\\there \u00e9 \\\\ /'}"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        cJSON *j = q(t[i].in);
        sl_cond_t *c = NULL, *c2 = NULL;
        char err[256];
        if (sl_rules_compile(j, SL_RULES_EVENT | SL_RULES_PROFILE, "w", &c, err, sizeof(err))) {
            fprintf(stderr, "  case %zu: %s\n", i, err);
            test_failures++;
            cJSON_Delete(j);
            continue;
        }
        sl_buf_t b1 = {0}, b2 = {0};
        CHECK_INT(sl_rules_print(c, &b1), ==, 0);
        char *want = strdup(t[i].out);
        for (char *p = want; *p; p++)
            if (*p == '\'') *p = '"';
        CHECK_STR(b1.data, want);
        cJSON *j2 = cJSON_Parse(b1.data);
        CHECK_INT(sl_rules_compile(j2, SL_RULES_EVENT | SL_RULES_PROFILE, "w", &c2, err, sizeof(err)), ==, 0);
        if (c2) {
            CHECK_INT(sl_rules_print(c2, &b2), ==, 0);
            CHECK_STR(b2.data, b1.data);
        }
        free(want);
        sl_buf_free(&b1);
        sl_buf_free(&b2);
        sl_rules_free(c);
        sl_rules_free(c2);
        cJSON_Delete(j);
        cJSON_Delete(j2);
    }
    /* print appends */
    cJSON *j = q("{'field':'a','exists':true}");
    sl_cond_t *c = NULL;
    char err[64];
    REQUIRE(sl_rules_compile(j, SL_RULES_EVENT, "w", &c, err, sizeof(err)) == 0);
    sl_buf_t b = {0};
    sl_buf_appends(&b, "[");
    CHECK_INT(sl_rules_print(c, &b), ==, 0);
    CHECK_STR(b.data, "[{\"field\":\"a\",\"exists\":true}");
    sl_buf_free(&b);
    sl_rules_free(c);
    cJSON_Delete(j);
}

/* Evaluating allocates nothing: every case of the eval table, all of them
 * at once (ctx and view prepared beforehand), under the malloc counter. */
TEST(rules_eval_allocates_nothing)
{
    long before = allocs;
    void *volatile p = malloc(16); /* the counter counts (else this test could not fail) */
    free(p);
    CHECK_INT(allocs, ==, before + 1);

    size_t n = sizeof(eval_cases) / sizeof(eval_cases[0]);
    sl_cond_t **cs = calloc(n, sizeof(*cs));
    cJSON **evs = calloc(n, sizeof(*evs)), **vws = calloc(n, sizeof(*vws));
    char **evt = calloc(n, sizeof(*evt)), **vwt = calloc(n, sizeof(*vwt)), *ev0t, *view0t;
    cJSON *ev0 = q(base_event), *view0 = q(base_view);
    REQUIRE(cs && evs && vws && evt && vwt && ev0 && view0);
    sl_jval_t ev0v = ev_text(ev0, &ev0t);
    view0t = cJSON_PrintUnformatted(view0);
    for (size_t i = 0; i < n; i++) {
        cJSON *j = q(eval_cases[i].cond);
        char err[256];
        CHECK_INT(sl_rules_compile(j, SL_RULES_EVENT | SL_RULES_PROFILE, "t", &cs[i], err, sizeof(err)), ==, 0);
        cJSON_Delete(j);
        if (eval_cases[i].ev && strcmp(eval_cases[i].ev, "-")) evs[i] = q(eval_cases[i].ev);
        if (evs[i]) ev_text(evs[i], &evt[i]);
        if (eval_cases[i].view && strcmp(eval_cases[i].view, "-")) vws[i] = q(eval_cases[i].view);
        if (vws[i]) vwt[i] = cJSON_PrintUnformatted(vws[i]);
    }
    int agree = 1;
    before = allocs;
    for (size_t i = 0; i < n; i++) {
        if (cs[i] == NULL) continue;
        view_t view = {.view = eval_cases[i].view ? vws[i] : view0, .text = eval_cases[i].view ? vwt[i] : view0t};
        sl_rules_ctx_t ctx = {.event = eval_cases[i].ev ? (evs[i] ? sl_jroot(evt[i], strlen(evt[i])) : (sl_jval_t){0}) : ev0v,
                              .now_ms = NOW_MS, .profile = get_view, .profile_arg = &view};
        if (sl_rules_eval(cs[i], &ctx) != eval_cases[i].want) agree = 0;
    }
    CHECK_INT(allocs - before, ==, 0);
    CHECK(agree);
    for (size_t i = 0; i < n; i++) {
        sl_rules_free(cs[i]);
        cJSON_Delete(evs[i]);
        cJSON_Delete(vws[i]);
        free(evt[i]);
        free(vwt[i]);
    }
    free(cs);
    free(evs);
    free(vws);
    free(evt);
    free(vwt);
    free(ev0t);
    free(view0t);
    cJSON_Delete(ev0);
    cJSON_Delete(view0);
}

/* sl_rules_glob_match (also page_visit's url: trigger_glob_table). */
TEST(rules_glob_table)
{
    static const struct {
        const char *p, *s;
        int m;
    } t[] = {
        {"", "", 1},          {"", "a", 0},         {"*", "", 1},          {"*", "anything", 1},
        {"?", "", 0},         {"?", "a", 1},        {"?", "ab", 0},        {"a*b", "ab", 1},
        {"a*b", "axxb", 1},   {"a*b", "axxbc", 0},  {"a*b*c", "abbbc", 1}, {"*a", "bba", 1},
        {"*a", "bab", 0},     {"a?c", "abc", 1},    {"a?c", "ac", 0},      {"**?", "x", 1},
        {"*x*", "aaxaa", 1},  {"*x*", "aaaa", 0},   {"A", "a", 0},         {"\xc3\xa9", "\xc3\xa9", 1},
        {"?", "\xc3\xa9", 0}, {"??", "\xc3\xa9", 1},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (sl_rules_glob_match(t[i].p, t[i].s) != t[i].m) {
            fprintf(stderr, "  glob \"%s\" vs \"%s\": want %d\n", t[i].p, t[i].s, t[i].m);
            test_failures++;
        }
}

/* Evaluation reads the text as stored or as sent: blanks, escapes (a string
 * operator decodes them, eq compares without decoding), numbers as numbers,
 * the first of a repeated name, and text that is no JSON reads as no event. */
TEST(rules_eval_on_text)
{
    static const char ev[] =
        " { \"event\" : \"Caf\\u00e9 \\\"x\\\"\", \"type\":\"track\", \"properties\" : {\"path\" : \"\\/c\\/shoes\", "
        "\"n\": 1e2, \"tags\": [\"a\", \"b\\u0000c\"], \"when\": \"2026-11-30T00:00:00\\u005a\", \"n\": 5}}\n";
    static const struct {
        const char *cond;
        int want;
    } t[] = {
        {"{'field':'event','eq':'Caf\xc3\xa9 \\\"x\\\"'}", 1},
        {"{'field':'event','starts_with':'Caf\xc3\xa9'}", 1},
        {"{'field':'event','contains':'\xc3\xa9 \\\"'}", 1},
        {"{'field':'event','gt':'Caf'}", 1},
        {"{'field':'event','lt':'Caf\xc3\xa9 \\\"y'}", 1},
        {"{'field':'properties.path','starts_with':'/c/'}", 1},
        {"{'field':'properties.path','glob':'/c/*'}", 1},
        {"{'field':'properties.path','glob':'/c/?'}", 0},
        {"{'field':'properties.n','eq':100}", 1},   /* the first n */
        {"{'field':'properties.n','gt':99.5}", 1},
        {"{'field':'properties.n','eq':'100'}", 0}, /* a number is no string */
        {"{'field':'properties.tags[]','eq':'b'}", 0},
        {"{'field':'properties.tags','contains':'a'}", 1},
        {"{'field':'properties.when','before':'2026-12-01T00:00:00Z'}", 1},
        {"{'field':'properties.when','after':'2026-12-01T00:00:00Z'}", 0},
        {"{'field':'properties.missing','exists':false}", 1},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        cJSON *j = q(t[i].cond);
        sl_cond_t *c = NULL;
        char err[256];
        CHECK_INT(sl_rules_compile(j, SL_RULES_EVENT, "t", &c, err, sizeof(err)), ==, 0);
        cJSON_Delete(j);
        if (c == NULL) continue;
        sl_rules_ctx_t ctx = {.event = sl_jroot(ev, sizeof(ev) - 1), .now_ms = NOW_MS};
        if (sl_rules_eval(c, &ctx) != t[i].want) {
            fprintf(stderr, "  case %zu: %s: want %d\n", i, t[i].cond, t[i].want);
            test_failures++;
        }
        /* the same through an index of the event's members (as the stage gives it) */
        sl_jindex_t top;
        ctx.event = sl_jroot_index(ev, sizeof(ev) - 1, &top, NULL, NULL);
        ctx.event_top = &top;
        CHECK_INT(sl_rules_eval(c, &ctx), ==, t[i].want);
        /* text that is not JSON: no event */
        ctx.event = sl_jroot(ev, sizeof(ev) - 3);
        ctx.event_top = NULL;
        CHECK_INT(sl_rules_eval(c, &ctx), ==, strstr(t[i].cond, "'exists':false") != NULL);
        sl_rules_free(c);
    }
    /* text nobody checked (a caller's mistake: sl_rules.h asks for sl_jroot's)
     * is still read inside its span: a string cut to its opening quote */
    static const char cut[] = "{\"a\":\"";
    cJSON *j = q("{'field':'a','contains':'x'}");
    sl_cond_t *c = NULL;
    char err[256];
    REQUIRE(sl_rules_compile(j, SL_RULES_EVENT, "t", &c, err, sizeof(err)) == 0);
    cJSON_Delete(j);
    char *heap = malloc(sizeof(cut) - 1); /* exact size: ASan sees a read past it */
    REQUIRE(heap != NULL);
    memcpy(heap, cut, sizeof(cut) - 1);
    sl_rules_ctx_t ctx = {.event = {heap, sizeof(cut) - 1}, .now_ms = NOW_MS};
    CHECK_INT(sl_rules_eval(c, &ctx), ==, 0);
    free(heap);
    sl_rules_free(c);
}
