/* test_stitch.c - the stitching rules, on the stitcher plugged into a real
 * store (LMDB in a temporary directory, the writer thread), read back through
 * the same profile functions the HTTP routes use. The HTTP-level scenarios are
 * in tests/identity/scenarios.json; these pin the rules one by one. */
#include "test.h"
#include "sl_config.h"
#include "sl_stage.h"
#include "sl_stitch.h"
#include "sl_store.h"
#include "sl_triggers.h"
#include "sl_webhooks.h"
#include "internal.h" /* the engine's rule states, written as an older version did */

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    char dir[32], ddir[48];
    uv_loop_t loop;
    sl_config_t cfg;
    sl_stitch_t *stitch;
    sl_store_t *store;
    sl_stage_t *stage;
    int n_sent;
    int untrusted;  /* messages come from a browser key (default: a trusted source) */
    int no_wait;    /* msg() waits for the log only, not for the stage */
    int with_triggers; /* the trigger engine too (the demo rules) */
    sl_trig_t *trig;
    sl_feed_t *feed;
} fix_t;

static void on_done(sl_store_batch_t *b) { *(int *)b->data = 1; }
static const sl_stage_step_t *fix_extra_step; /* a step after the stitcher's (tests of the stage) */
static int fix_extra_first;                    /* add it before the stitcher's (its phase orders them) */
static int fix_no_stage_start;                 /* fix_open: the stage opened, its thread not started */
static int fix_with_triggers;                  /* fix_init: the trigger engine too */
static const char *fix_config;                 /* fix_init: this config instead of the demo's */
static void on_drained(void *arg) { *(int *)arg = 1; }

/* The log, the stitcher and the stage over it (as `sillage serve` wires them). */
static int fix_open(fix_t *f)
{
    sl_store_options_t o = {.data_dir = f->dir, .map_size_bytes = 8 << 20, .map_size_max_bytes = 256 << 20,
                            .nosync = 1, .dedupe_window_ms = 86400000, .max_queue_messages = 100000};
    if (sl_store_open(&f->store, &o)) return -1;
    if ((f->stitch = sl_stitch_new(&f->cfg, f->store)) == NULL) return -1;
    snprintf(f->ddir, sizeof(f->ddir), "%s/derived", f->dir);
    sl_stage_options_t so = {.dir = f->ddir, .map_size_bytes = 8 << 20, .map_size_max_bytes = 256 << 20, .nosync = 1};
    if ((f->stage = sl_stage_new(f->store, &so)) == NULL) return -1;
    if (fix_extra_step && fix_extra_first && sl_stage_add_step(f->stage, fix_extra_step)) return -1;
    if (sl_stage_add_step(f->stage, sl_stitch_step(f->stitch))) return -1;
    if (fix_extra_step && !fix_extra_first && sl_stage_add_step(f->stage, fix_extra_step)) return -1;
    if (f->with_triggers &&
        ((f->feed = sl_feed_new(f->cfg.trigger_retention_ms)) == NULL || sl_feed_attach(f->feed, f->stage) ||
         (f->trig = sl_trig_new(&f->cfg, f->stitch, f->feed)) == NULL || sl_trig_attach(f->trig, f->stage)))
        return -1;
    if (sl_stage_open(f->stage)) return -1;
    if (sl_store_start(f->store, &f->loop)) return -1;
    return fix_no_stage_start ? 0 : sl_stage_start(f->stage, &f->loop);
}

static void fix_close_store(fix_t *f)
{
    int drained = 0;
    sl_store_drain(f->store, on_drained, &drained);
    while (!drained) uv_run(&f->loop, UV_RUN_ONCE);
    drained = 0;
    sl_stage_stop(f->stage, 0, on_drained, &drained);
    while (!drained) uv_run(&f->loop, UV_RUN_ONCE);
    sl_stage_free(f->stage);
    sl_trig_free(f->trig);
    f->trig = NULL;
    sl_feed_free(f->feed);
    f->feed = NULL;
    sl_stitch_free(f->stitch);
    sl_store_close(f->store);
    f->store = NULL;
    f->stage = NULL;
    f->stitch = NULL;
}

static int fix_init(fix_t *f)
{
    memset(f, 0, sizeof(*f));
    f->with_triggers = fix_with_triggers;
    strcpy(f->dir, "/tmp/sl-stitch-test-XXXXXX");
    char err[256];
    if (mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) ||
        (fix_config ? sl_config_parse(&f->cfg, fix_config, strlen(fix_config), err, sizeof(err))
                    : sl_config_demo(&f->cfg)))
        return -1;
    /* a second, trusted (server-side) source beside the demo's browser key */
    sl_source_t *src = realloc(f->cfg.sources, (f->cfg.n_sources + 1) * sizeof(*src));
    if (src == NULL) return -1;
    f->cfg.sources = src;
    src[f->cfg.n_sources++] = (sl_source_t){.name = strdup("backend"), .write_key = strdup("wk_backend"), .trusted = 1};
    return fix_open(f);
}

/* The fixture with step after the stitcher's (a test of the stage; step
 * must live as long as the fixture), and the trigger engine when
 * with_triggers. */
static int fix_init_with(fix_t *f, const sl_stage_step_t *step, int with_triggers)
{
    fix_extra_step = step;
    fix_with_triggers = with_triggers;
    int rc = fix_init(f);
    fix_extra_step = NULL;
    fix_with_triggers = 0;
    return rc;
}

static void fix_free(fix_t *f)
{
    if (f->store) fix_close_store(f);
    sl_config_free(&f->cfg);
    uv_loop_close(&f->loop);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    CHECK_INT(system(cmd), ==, 0);
}

/* Stores one event (JSON as the collector stores it), waiting for the log
 * only (not for the stage); its sequence. */
static uint64_t put_durable(fix_t *f, const char *json, int64_t ts, const char *mid)
{
    sl_store_msg_t sm = {.json = json, .json_len = strlen(json), .received_ms = ts,
                         .dedupe = sl_store_dedupe_key(f->store, "test", mid)};
    int done = 0;
    sl_store_batch_t b = {.msgs = &sm, .n_msgs = 1, .done = on_done, .data = &done};
    CHECK_INT(sl_store_submit(f->store, &b), ==, 0);
    while (!done) uv_run(&f->loop, UV_RUN_ONCE);
    CHECK_INT(b.rc, ==, 0);
    CHECK_INT(sm.status, ==, SL_STORE_STORED);
    return sm.seq;
}

/* The same, then waits until the stage applied it. */
static void put(fix_t *f, const char *json, int64_t ts, const char *mid)
{
    uint64_t seq = put_durable(f, json, ts, mid);
    for (int i = 0; i < 5000 && sl_stage_applied(f->stage) < seq; i++) usleep(1000);
    CHECK_INT(sl_stage_applied(f->stage), >=, seq);
}

/* One message in: type, userId, anonymousId, email trait (or previousId for
 * an alias), timestamp; traits (JSON object text) for an identify, or NULL. */
static void msg_traits(fix_t *f, int type, const char *user, const char *anon, const char *email, int64_t ts,
                       const char *traits)
{
    static const char *types[] = {"", "track", "page", "screen", "identify", "alias", "group"};
    char mid[32], iso[32];
    snprintf(mid, sizeof(mid), "m%d", ++f->n_sent);
    sl_time_format_iso(ts, iso);
    sl_buf_t b = {0};
    sl_buf_printf(&b, "{\"type\":\"%s\",\"messageId\":\"%s\",\"timestamp\":\"%s\"", types[type], mid, iso);
    if (type == SL_STITCH_TRACK) sl_buf_appends(&b, ",\"event\":\"E\"");
    if (user) {
        sl_buf_appends(&b, ",\"userId\":");
        sl_buf_append_json_str(&b, user, strlen(user));
    }
    if (anon) {
        sl_buf_appends(&b, ",\"anonymousId\":");
        sl_buf_append_json_str(&b, anon, strlen(anon));
    }
    if (type == SL_STITCH_ALIAS && email) {
        sl_buf_appends(&b, ",\"previousId\":");
        sl_buf_append_json_str(&b, email, strlen(email));
    } else if (traits) {
        sl_buf_printf(&b, ",\"traits\":%s", traits);
    } else if (email) {
        sl_buf_appends(&b, ",\"traits\":{\"email\":");
        sl_buf_append_json_str(&b, email, strlen(email));
        sl_buf_appends(&b, "}");
    }
    sl_buf_printf(&b, ",\"context\":{\"sillage\":{\"source\":\"%s\"}}}", f->untrusted ? "demo" : "backend");
    if (f->no_wait) put_durable(f, b.data, ts, mid);
    else put(f, b.data, ts, mid);
    sl_buf_free(&b);
}

static void msg(fix_t *f, int type, const char *user, const char *anon, const char *email, int64_t ts)
{
    msg_traits(f, type, user, anon, email, ts, NULL);
}

typedef struct {
    sl_stitch_t *s;
    const char *kind, *id;
    int which; /* 0 profile, 1 timeline, 2 merges, 3 recent */
    size_t limit;       /* merges: a page (0: 1,000) */
    const char *before; /* merges: the cursor of the previous page */
    int rc;
    sl_buf_t out;
} read_t;

static int read_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    read_t *r = arg;
    if (r->which == 0) r->rc = sl_stitch_profile(r->s, txn, r->kind, r->id, &r->out);
    else if (r->which == 1) r->rc = sl_stitch_timeline(r->s, txn, log_txn, r->kind, r->id, 1000, NULL, &r->out);
    else if (r->which == 2) r->rc = sl_stitch_merges(r->s, txn, r->kind, r->id, r->limit ? r->limit : 1000, r->before, &r->out);
    else r->rc = sl_stitch_recent(r->s, txn, 1000, NULL, &r->out);
    return 0;
}

/* The parsed answer of a read, or NULL when no person has that identifier. */
static cJSON *get(fix_t *f, int which, const char *kind, const char *id)
{
    read_t r = {.s = f->stitch, .kind = kind, .id = id, .which = which};
    CHECK_INT(sl_stage_read(f->stage, 1, read_cb, &r), ==, 0);
    cJSON *doc = r.rc == 0 ? cJSON_ParseWithLength(r.out.data, r.out.len) : NULL;
    if (r.rc && r.rc != SL_ENOTFOUND) CHECK_INT(r.rc, ==, 0);
    sl_buf_free(&r.out);
    return doc;
}

/* The person id of kind/id, or "(none)" when no person has it. */
static const char *person_of(fix_t *f, const char *kind, const char *id, char out[32])
{
    cJSON *p = get(f, 0, kind, id);
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(p, "id");
    snprintf(out, 32, "%s", cJSON_IsString(pid) ? pid->valuestring : "(none)");
    cJSON_Delete(p);
    return out;
}

/* x and y name the same person, and one that exists: two lookups that both
 * find no one must not pass for "the same person". */
#define CHECK_SAME(x, y) do { \
    const char *x_ = (x), *y_ = (y); \
    CHECK(strcmp(x_, "(none)") != 0); \
    CHECK_STR(x_, y_); \
    } while (0)

static double num(const cJSON *o, const char *path1, const char *path2)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, path1);
    if (path2) x = cJSON_GetObjectItemCaseSensitive(x, path2);
    return cJSON_IsNumber(x) ? x->valuedouble : -1;
}

static int count_journal(fix_t *f, const char *kind, const char *id, const char *type)
{
    cJSON *j = get(f, 2, kind, id);
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(j, strcmp(type, "merge") ? "refused" : "merges")) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
        if (cJSON_IsString(t) && strcmp(t->valuestring, type) == 0) n++;
    }
    cJSON_Delete(j);
    return n;
}

TEST(stitch_identify_absorbs_anonymous_trail)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    for (int i = 0; i < 5; i++) msg(&f, SL_STITCH_PAGE, NULL, "a1", NULL, 1000 + i);
    msg(&f, SL_STITCH_TRACK, NULL, "a1", NULL, 2000);
    msg(&f, SL_STITCH_IDENTIFY, "u1", "a1", NULL, 3000);
    char pa[32], pu[32];
    CHECK_SAME(person_of(&f, "anonymous_id", "a1", pa), person_of(&f, "user_id", "u1", pu));
    cJSON *p = get(&f, 0, "user_id", "u1");
    CHECK_INT(num(p, "counters", "events"), ==, 7);
    CHECK_INT(num(p, "counters", "page_views"), ==, 5);
    cJSON_Delete(p);
    cJSON *tl = get(&f, 1, "user_id", "u1");
    CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(tl, "events")), ==, 7);
    cJSON_Delete(tl);
    /* the anonymous person was new at the identify: it became the user's, no merge needed */
    CHECK_INT(count_journal(&f, "user_id", "u1", "merge"), ==, 0);
    fix_free(&f);
}

TEST(stitch_second_device_merges)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_IDENTIFY, "u1", "phone", NULL, 1000);
    msg(&f, SL_STITCH_PAGE, NULL, "laptop", NULL, 2000);
    msg(&f, SL_STITCH_PAGE, NULL, "laptop", NULL, 2001);
    msg(&f, SL_STITCH_IDENTIFY, "u1", "laptop", NULL, 3000);
    char a[32], b[32];
    CHECK_SAME(person_of(&f, "anonymous_id", "laptop", a), person_of(&f, "anonymous_id", "phone", b));
    CHECK_INT(count_journal(&f, "user_id", "u1", "merge"), ==, 1);
    cJSON *p = get(&f, 0, "user_id", "u1");
    CHECK_INT(num(p, "counters", "events"), ==, 4);
    cJSON_Delete(p);
    /* a late anonymous event from the laptop lands on the merged person */
    msg(&f, SL_STITCH_TRACK, NULL, "laptop", NULL, 1500);
    p = get(&f, 0, "user_id", "u1");
    CHECK_INT(num(p, "counters", "events"), ==, 5);
    cJSON_Delete(p);
    fix_free(&f);
}

TEST(stitch_shared_device_refused_once)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_IDENTIFY, "alice", "kiosk", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, "bob", "kiosk", NULL, 2000);
    msg(&f, SL_STITCH_TRACK, "bob", "kiosk", NULL, 2001);
    char a[32], b[32];
    CHECK(strcmp(person_of(&f, "user_id", "alice", a), person_of(&f, "user_id", "bob", b)) != 0);
    /* the device stays with its first user; bob's events go to bob */
    CHECK_SAME(person_of(&f, "anonymous_id", "kiosk", b), a);
    cJSON *p = get(&f, 0, "user_id", "bob");
    CHECK_INT(num(p, "counters", "events"), ==, 2);
    cJSON_Delete(p);
    CHECK_INT(count_journal(&f, "user_id", "bob", "refused"), ==, 1); /* once, not per event */
    CHECK_INT(count_journal(&f, "user_id", "alice", "refused"), ==, 1);
    fix_free(&f);
}

TEST(stitch_alias_and_email)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    /* alias: two identified users become one */
    msg(&f, SL_STITCH_IDENTIFY, "old-id", "d1", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, "new-id", "d2", NULL, 1001);
    msg(&f, SL_STITCH_ALIAS, "new-id", NULL, "old-id", 1002);
    char a[32], b[32];
    CHECK_SAME(person_of(&f, "user_id", "old-id", a), person_of(&f, "user_id", "new-id", b));
    CHECK_INT(count_journal(&f, "user_id", "new-id", "merge"), ==, 1);

    /* issue 13, H4: from a browser key, alias never joins two users; the
     * refusal is journaled and the event goes to the new userId's person */
    f.untrusted = 1;
    msg(&f, SL_STITCH_IDENTIFY, "victim", "v1", NULL, 1100);
    msg(&f, SL_STITCH_IDENTIFY, "attacker", "x1", NULL, 1101);
    msg(&f, SL_STITCH_ALIAS, "attacker", NULL, "victim", 1102);
    CHECK(strcmp(person_of(&f, "user_id", "victim", a), person_of(&f, "user_id", "attacker", b)) != 0);
    CHECK_INT(count_journal(&f, "user_id", "victim", "refused"), ==, 1);
    CHECK_INT(count_journal(&f, "user_id", "victim", "merge"), ==, 0);
    msg(&f, SL_STITCH_ALIAS, "newcomer", NULL, "victim", 1103); /* a userId never seen: not grafted on the victim */
    CHECK(strcmp(person_of(&f, "user_id", "victim", a), person_of(&f, "user_id", "newcomer", b)) != 0);
    msg(&f, SL_STITCH_PAGE, NULL, "anon-z", NULL, 1104); /* an anonymous previousId still merges */
    msg(&f, SL_STITCH_ALIAS, "attacker", NULL, "anon-z", 1105);
    CHECK_SAME(person_of(&f, "anonymous_id", "anon-z", a), person_of(&f, "user_id", "attacker", b));
    f.untrusted = 0;

    /* email seen on an anonymous visitor joins the owner of that email,
     * matched trimmed and lower-cased */
    msg(&f, SL_STITCH_IDENTIFY, "carol", "c1", "carol@example.com", 2000);
    msg(&f, SL_STITCH_PAGE, NULL, "c2", NULL, 2100);
    msg(&f, SL_STITCH_IDENTIFY, NULL, "c2", "  Carol@Example.COM ", 2200);
    CHECK_SAME(person_of(&f, "anonymous_id", "c2", a), person_of(&f, "user_id", "carol", b));
    CHECK_SAME(person_of(&f, "email", "carol@example.com", a), b);
    /* an anonymousId never seen before, with carol's email (a newsletter
     * signup): the person made for it is merged before it was ever saved
     * (issue 13, H1: MDB_NOTFOUND failed the whole commit) */
    msg(&f, SL_STITCH_IDENTIFY, NULL, "brand-new-anon", "carol@example.com", 2250);
    CHECK_SAME(person_of(&f, "anonymous_id", "brand-new-anon", a), b);

    /* but an email never fuses two different users */
    msg(&f, SL_STITCH_IDENTIFY, "dave", "d9", "carol@example.com", 2300);
    CHECK(strcmp(person_of(&f, "user_id", "dave", a), person_of(&f, "user_id", "carol", b)) != 0);
    CHECK_INT(count_journal(&f, "user_id", "dave", "refused"), ==, 1);
    fix_free(&f);
}

TEST(stitch_junk_and_traits)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_IDENTIFY, "undefined", "j1", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, "null", "j2", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, " Guest ", "j3", NULL, 1000);
    char a[32], b[32];
    CHECK_STR(person_of(&f, "user_id", "undefined", a), "(none)");
    CHECK(strcmp(person_of(&f, "anonymous_id", "j1", a), person_of(&f, "anonymous_id", "j2", b)) != 0);
    CHECK(strcmp(a, person_of(&f, "anonymous_id", "j3", b)) != 0);

    /* later identify wins per trait, by the time it was set */
    msg_traits(&f, SL_STITCH_IDENTIFY, "t1", NULL, NULL, 5000, "{\"plan\":\"pro\",\"name\":\"T\"}");
    msg_traits(&f, SL_STITCH_IDENTIFY, "t1", NULL, NULL, 4000, "{\"plan\":\"free\",\"city\":\"Lyon\"}");
    cJSON *p = get(&f, 0, "user_id", "t1");
    const cJSON *traits = cJSON_GetObjectItemCaseSensitive(p, "traits");
    const cJSON *plan = cJSON_GetObjectItemCaseSensitive(traits, "plan");
    const cJSON *city = cJSON_GetObjectItemCaseSensitive(traits, "city");
    CHECK_STR(cJSON_IsString(plan) ? plan->valuestring : NULL, "pro"); /* set at 5000, not overridden by 4000 */
    CHECK_STR(cJSON_IsString(city) ? city->valuestring : NULL, "Lyon");
    cJSON_Delete(p);
    fix_free(&f);
}

static void erase_done(sl_stage_job_t *job)
{
    sl_stitch_erase_t *e = job->arg;
    *(int *)e->ctx = 1;
}

/* Erases kind/id as the server does (a stage job), waits for it, checks it
 * succeeded; er stays the caller's to read and free. */
static void erase_run(fix_t *f, sl_stitch_erase_t *er, const char *kind, const char *id)
{
    int done = 0;
    sl_stitch_erase_init(er, f->stitch, kind, id, erase_done);
    er->ctx = &done;
    CHECK_INT(sl_stage_submit(f->stage, &er->job), ==, 0);
    while (!done) uv_run(&f->loop, UV_RUN_ONCE);
    CHECK_INT(er->job.rc, ==, 0);
}

static int count_event(const char *json, size_t len, uint64_t seq, void *arg)
{
    (void)json;
    (void)len;
    (void)seq;
    (*(uint64_t *)arg)++;
    return 0;
}

TEST(stitch_erasure_and_restart)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_PAGE, NULL, "e1", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, "eve", "e1", NULL, 1001);
    msg(&f, SL_STITCH_IDENTIFY, "frank", "f1", NULL, 1002);
    /* restart: the graph is on disk */
    fix_close_store(&f);
    CHECK_INT(fix_open(&f), ==, 0);
    char a[32], b[32];
    CHECK_SAME(person_of(&f, "anonymous_id", "e1", a), person_of(&f, "user_id", "eve", b));

    sl_stitch_erase_t er;
    erase_run(&f, &er, "anonymous_id", "e1");
    CHECK_INT(er.found, ==, 1);
    CHECK_INT(er.events, ==, 2);
    CHECK_INT(er.identities, ==, 2);
    sl_stitch_erase_free(&er);
    /* the events went from the log too */
    uint64_t n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 1);
    CHECK_STR(person_of(&f, "user_id", "eve", a), "(none)");
    CHECK(strcmp(person_of(&f, "user_id", "frank", a), "(none)") != 0); /* others untouched */
    /* an erased anonymousId starts a new, empty person */
    msg(&f, SL_STITCH_PAGE, NULL, "e1", NULL, 9000);
    cJSON *p = get(&f, 0, "anonymous_id", "e1");
    CHECK_INT(num(p, "counters", "events"), ==, 1);
    cJSON_Delete(p);
    fix_free(&f);
}

typedef struct {
    fix_t *f;
    sl_verify_report_t rep;
    FILE *out;
} verify_req_t;

static int verify_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    verify_req_t *q = arg;
    sl_verify_opts_t o = {.log_txn = log_txn, .applied = sl_stage_applied(q->f->stage)};
    return sl_stitch_verify(q->f->stitch, txn, &o, q->out, &q->rep);
}

static uint64_t verify_problems(fix_t *f)
{
    verify_req_t q = {.f = f, .out = fopen("/dev/null", "w")};
    CHECK_INT(sl_stage_read(f->stage, 1, verify_cb, &q), ==, 0);
    fclose(q.out);
    return q.rep.problems;
}

/* Removes the first entry of the named database behind the store's back. */
static void drop_first(fix_t *f, const char *db)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    CHECK_INT(mdb_env_create(&env), ==, 0);
    mdb_env_set_maxdbs(env, 32);
    mdb_env_set_mapsize(env, 256 << 20);
    CHECK_INT(mdb_env_open(env, f->ddir, 0, 0640), ==, 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
    CHECK_INT(mdb_dbi_open(txn, db, 0, &dbi), ==, 0);
    CHECK_INT(mdb_cursor_open(txn, dbi, &cur), ==, 0);
    CHECK_INT(mdb_cursor_get(cur, &k, &v, MDB_FIRST), ==, 0);
    CHECK_INT(mdb_cursor_del(cur, 0), ==, 0);
    mdb_cursor_close(cur);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
}

typedef struct {
    sl_stitch_t *s;
    const char *kind, *id, *category;
    int ok, rc;
    const char *why;
} consent_q_t;

static int consent_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    consent_q_t *q = arg;
    cJSON *p = NULL;
    sl_buf_t b = {0};
    if ((q->rc = sl_stitch_profile(q->s, txn, q->kind, q->id, &b)) == 0) p = cJSON_ParseWithLength(b.data, b.len);
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(p, "id");
    q->why = "";
    if (cJSON_IsString(pid))
        q->rc = sl_stitch_consent_check(q->s, txn, strtoull(pid->valuestring + 2, NULL, 10), q->category, &q->ok, &q->why);
    cJSON_Delete(p);
    sl_buf_free(&b);
    return 0;
}

/* 1 when the person of kind/id may get a trigger that needs category; why
 * gets the reason when not. */
static int consent_ok(fix_t *f, const char *kind, const char *id, const char *category, const char **why)
{
    consent_q_t q = {.s = f->stitch, .kind = kind, .id = id, .category = category};
    CHECK_INT(sl_stage_read(f->stage, 0, consent_cb, &q), ==, 0);
    CHECK_INT(q.rc, ==, 0);
    *why = q.why;
    return q.ok;
}

/* A track of user/anon at ts with an extra "context" member text (or NULL). */
static void track_ctx(fix_t *f, const char *user, const char *anon, const char *event, int64_t ts, const char *consent)
{
    char mid[32], iso[32];
    snprintf(mid, sizeof(mid), "m%d", ++f->n_sent);
    sl_time_format_iso(ts, iso);
    sl_buf_t b = {0};
    sl_buf_printf(&b, "{\"type\":\"track\",\"messageId\":\"%s\",\"timestamp\":\"%s\",\"event\":\"%s\"", mid, iso, event);
    if (user) sl_buf_printf(&b, ",\"userId\":\"%s\"", user);
    if (anon) sl_buf_printf(&b, ",\"anonymousId\":\"%s\"", anon);
    sl_buf_printf(&b, ",\"context\":{%s%s\"sillage\":{\"source\":\"backend\"}}}", consent ? consent : "",
                  consent ? "," : "");
    put(f, b.data, ts, mid);
    sl_buf_free(&b);
}

TEST(stitch_consent_merges_and_erases)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    const char *why;
    const char *granted = "\"consent\":{\"categoryPreferences\":{\"marketing\":true,\"ads\":false}}";
    track_ctx(&f, NULL, "c1", "Viewed", 1000, granted);
    CHECK_INT(consent_ok(&f, "anonymous_id", "c1", "marketing", &why), ==, 1);
    CHECK_INT(consent_ok(&f, "anonymous_id", "c1", "ads", &why), ==, 0);
    CHECK_STR(why, "consent");
    CHECK_INT(consent_ok(&f, "anonymous_id", "c1", NULL, &why), ==, 1); /* only the flag */
    track_ctx(&f, "cu", NULL, "Unsubscribed", 2000, NULL);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 0);
    CHECK_STR(why, "unsubscribed");
    /* the merge keeps, of each part, the later: c1's categories, cu's flag */
    msg(&f, SL_STITCH_IDENTIFY, "cu", "c1", NULL, 3000);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 0);
    CHECK_STR(why, "unsubscribed");
    track_ctx(&f, "cu", NULL, "Subscribed", 4000, NULL);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 1);
    /* older than what the person holds: changes nothing */
    track_ctx(&f, "cu", NULL, "Late", 500, "\"consent\":{\"categoryPreferences\":{\"marketing\":false}}");
    track_ctx(&f, "cu", NULL, "Unsubscribed", 3500, NULL);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 1);
    /* RudderStack's shape */
    track_ctx(&f, "cu", NULL, "Now", 5000, "\"consentManagement\":{\"deniedConsentIds\":[\"marketing\"]}");
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 0);
    CHECK_STR(why, "consent");
    CHECK_INT(verify_problems(&f), ==, 0);
    /* erasure takes the record: a new person with the same id starts knowing nothing */
    sl_stitch_erase_t er;
    erase_run(&f, &er, "user_id", "cu");
    sl_stitch_erase_free(&er);
    track_ctx(&f, "cu", NULL, "Again", 6000, NULL);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 0);
    CHECK_STR(why, "consent");
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

static int pruned_flag;
static void prune_done(sl_stage_job_t *job)
{
    (void)job;
    pruned_flag = 1;
}

/* Runs pruning until it has read everything the stage applied. */
static void prune_all(fix_t *f, sl_stitch_prune_t *p, uint64_t *pruned, uint64_t *gone)
{
    *pruned = *gone = 0;
    for (int i = 0; i < 100; i++) {
        pruned_flag = 0;
        p->upto = sl_stage_applied(f->stage);
        p->limit = 2; /* small runs: the cursor must carry over */
        CHECK_INT(sl_stage_submit(f->stage, &p->job), ==, 0);
        while (!pruned_flag) uv_run(&f->loop, UV_RUN_ONCE);
        CHECK_INT(p->job.rc, ==, 0);
        *pruned += p->pruned;
        *gone += p->persons_gone;
        if (!p->more) return;
    }
    CHECK(!"pruning never reached the end");
}

TEST(stitch_retention_prunes_and_restarts)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    int64_t day = 86400000, now = sl_now_ms();
    f.cfg.anonymous_retention_ms = 395 * day;
    f.cfg.sources[f.cfg.n_sources - 1].retention_ms = 760 * day; /* backend, the source of msg() */
    CHECK_INT(sl_stitch_prune_interval_ms(f.stitch), ==, 3600000);
    msg(&f, SL_STITCH_TRACK, "old", NULL, NULL, now - 800 * day);   /* past the source's retention */
    msg(&f, SL_STITCH_PAGE, "old", NULL, NULL, now - 700 * day);    /* kept */
    msg(&f, SL_STITCH_PAGE, NULL, "gone", NULL, now - 400 * day);   /* anonymous, past 395 d: the person goes */
    msg(&f, SL_STITCH_PAGE, NULL, "half", NULL, now - 400 * day);   /* anonymous, pruned ... */
    msg(&f, SL_STITCH_PAGE, NULL, "half", NULL, now - 10 * day);    /* ... but this one stays, and the person */
    msg(&f, SL_STITCH_PAGE, NULL, "later", NULL, now - 400 * day);  /* identified since: kept */
    msg(&f, SL_STITCH_IDENTIFY, "u-later", "later", NULL, now);
    sl_stitch_prune_t p;
    sl_stitch_prune_init(&p, f.stitch, prune_done);
    uint64_t pruned, gone;
    prune_all(&f, &p, &pruned, &gone);
    CHECK_INT(pruned, ==, 3);
    CHECK_INT(gone, ==, 1);
    uint64_t n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 4);
    char a[32];
    CHECK_STR(person_of(&f, "anonymous_id", "gone", a), "(none)");
    cJSON *pr = get(&f, 0, "user_id", "old");
    CHECK_INT(num(pr, "counters", "events"), ==, 1);
    cJSON_Delete(pr);
    pr = get(&f, 0, "anonymous_id", "half");
    CHECK_INT(num(pr, "counters", "events"), ==, 1);
    cJSON_Delete(pr);
    pr = get(&f, 0, "user_id", "u-later");
    CHECK_INT(num(pr, "counters", "events"), ==, 2);
    cJSON_Delete(pr);
    CHECK_INT(verify_problems(&f), ==, 0);
    /* a second pass finds nothing more; a restart finishes the last run's record */
    prune_all(&f, &p, &pruned, &gone);
    CHECK_INT(pruned, ==, 0);
    sl_stitch_prune_free(&p);
    fix_close_store(&f);
    CHECK_INT(fix_open(&f), ==, 0);
    CHECK_INT(verify_problems(&f), ==, 0);
    n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 4);
    fix_free(&f);
}

TEST(stitch_verify_finds_damage)
{
    const char *dbs[] = {"tl", "ids", "persons", "active"};
    for (int i = 0; i < 4; i++) {
        fix_t f;
        if (fix_init(&f)) { CHECK(!"fixture"); return; }
        msg(&f, SL_STITCH_PAGE, NULL, "v1", NULL, 1000);
        msg(&f, SL_STITCH_IDENTIFY, "vu", "v1", "v@example.com", 2000);
        msg(&f, SL_STITCH_PAGE, NULL, "v2", NULL, 3000);
        CHECK_INT(verify_problems(&f), ==, 0); /* a sound store */
        if (verify_problems(&f)) {
            verify_req_t q = {.f = &f, .out = stderr};
            sl_stage_read(f.stage, 1, verify_cb, &q);
        }
        fix_close_store(&f);
        drop_first(&f, dbs[i]);
        CHECK_INT(fix_open(&f), ==, 0);
        if (verify_problems(&f) == 0) fprintf(stderr, "  damage to %s not found\n", dbs[i]);
        CHECK_INT(verify_problems(&f), >, 0);
        fix_free(&f);
    }
}

static int count_any(uint64_t seq, const char *why, void *arg)
{
    (void)seq;
    (void)why;
    (*(int *)arg)++;
    return 0;
}

static int count_aside(uint64_t seq, const char *why, void *arg)
{
    (void)seq;
    CHECK(strstr(why, "not a JSON object") != NULL);
    (*(int *)arg)++;
    return 0;
}

/* An event the stage cannot apply is set aside with its reason; the stage
 * goes on with the next ones (issue 14). */
TEST(stage_sets_aside_and_goes_on)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_PAGE, NULL, "sa1", NULL, 1000);
    put(&f, "[1,2,3]", 1001, "bad-1"); /* not what the collector stores: a step cannot read it */
    msg(&f, SL_STITCH_PAGE, NULL, "sa1", NULL, 1002);
    cJSON *p = get(&f, 0, "anonymous_id", "sa1");
    CHECK_INT(num(p, "counters", "events"), ==, 2);
    cJSON_Delete(p);
    int n = 0;
    CHECK_INT(sl_stage_set_aside(f.stage, 100, count_aside, &n), ==, 0);
    CHECK_INT(n, ==, 1);
    sl_stage_stats_t st;
    sl_stage_get_stats(f.stage, &st);
    CHECK_INT(st.set_aside, ==, 1);
    CHECK_INT(st.applied, ==, 3);
    CHECK_INT(verify_problems(&f), ==, 0); /* an event set aside is not expected in a timeline */
    fix_free(&f);
}

/* A step that refuses the events whose messageId starts with "bad" while
 * refuse is set: a bug that a later release fixes. */
typedef struct {
    int refuse;
    int applied_bad;
} picky_t;

static int picky_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    (void)txn;
    picky_t *p = arg;
    if (strncmp(ev->message_id, "bad", 3) != 0) return 0;
    if (p->refuse) return SL_EINVAL;
    p->applied_bad++;
    return 0;
}

static int last_reason(uint64_t seq, const char *why, void *arg)
{
    (void)seq;
    snprintf(arg, 128, "%s", why);
    return 0;
}

static void replay_done(sl_stage_replay_t *r) { *(int *)r->arg = 1; }

/* Stores two events in one log commit (so the stage applies them in one
 * transaction) and waits until the stage applied both. */
static void put_together(fix_t *f, const char *a, const char *a_id, const char *b, const char *b_id)
{
    sl_store_msg_t sm[2] = {{.json = a, .json_len = strlen(a), .received_ms = 1000,
                             .dedupe = sl_store_dedupe_key(f->store, "test", a_id)},
                            {.json = b, .json_len = strlen(b), .received_ms = 2000,
                             .dedupe = sl_store_dedupe_key(f->store, "test", b_id)}};
    int done = 0;
    sl_store_batch_t batch = {.msgs = sm, .n_msgs = 2, .done = on_done, .data = &done};
    CHECK_INT(sl_store_submit(f->store, &batch), ==, 0);
    while (!done) uv_run(&f->loop, UV_RUN_ONCE);
    CHECK_INT(batch.rc, ==, 0);
    for (int i = 0; i < 5000 && sl_stage_applied(f->stage) < sm[1].seq; i++) usleep(1000);
    CHECK_INT(sl_stage_applied(f->stage), >=, sm[1].seq);
}

/* A transaction redone without an event set aside: what the consent cache
 * saw in the aborted one must not pass for stored (the repeat would be
 * skipped and the person's consent lost). */
TEST(stitch_consent_survives_a_redone_transaction)
{
    picky_t pk = {.refuse = 1};
    sl_stage_step_t step = {.name = "picky", .arg = &pk, .apply = picky_apply};
    fix_t f;
    REQUIRE(fix_init_with(&f, &step, 0) == 0);
    const char *ok = "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"ok-1\",\"timestamp\":\"2026-01-01T00:00:01.000Z\","
                     "\"userId\":\"cc\",\"context\":{\"consent\":{\"categoryPreferences\":{\"marketing\":true}},"
                     "\"sillage\":{\"source\":\"backend\"}}}";
    const char *no = "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"bad-1\",\"timestamp\":\"2026-01-01T00:00:02.000Z\","
                     "\"userId\":\"cc\",\"context\":{\"consent\":{\"categoryPreferences\":{\"marketing\":true}},"
                     "\"sillage\":{\"source\":\"backend\"}}}";
    /* one log commit: the stage applies both in one transaction, which the
     * refused second one aborts */
    put_together(&f, ok, "ok-1", no, "bad-1");
    sl_stage_stats_t st;
    sl_stage_get_stats(f.stage, &st);
    CHECK_INT(st.set_aside, ==, 1);
    const char *why;
    CHECK_INT(consent_ok(&f, "user_id", "cc", "marketing", &why), ==, 1);
    fix_free(&f);
}

/* The same redone transaction: a trigger its first try fired is counted
 * once, when the transaction that holds it commits. */
TEST(trigger_counted_once_when_a_transaction_is_redone)
{
    picky_t pk = {.refuse = 1};
    sl_stage_step_t step = {.name = "picky", .arg = &pk, .apply = picky_apply};
    fix_t f;
    REQUIRE(fix_init_with(&f, &step, 1) == 0);
    /* the demo's "plan" rule fires on the trait's first value */
    const char *ok = "{\"type\":\"identify\",\"messageId\":\"ok-2\",\"timestamp\":\"2026-01-01T00:00:01.000Z\","
                     "\"userId\":\"tc\",\"traits\":{\"plan\":\"pro\"},\"context\":{\"sillage\":{\"source\":\"backend\"}}}";
    const char *no = "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"bad-2\",\"timestamp\":\"2026-01-01T00:00:02.000Z\","
                     "\"userId\":\"tc\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}";
    put_together(&f, ok, "ok-2", no, "bad-2");
    sl_stage_stats_t st;
    sl_stage_get_stats(f.stage, &st);
    CHECK_INT(st.set_aside, ==, 1);
    sl_trig_stats_t ts;
    sl_trig_get_stats(f.trig, &ts);
    CHECK_INT(ts.fired, ==, 1);
    CHECK_INT(sl_feed_durable_seq(f.feed), ==, 1);
    fix_free(&f);
}

static sl_stage_replay_t replay_all(fix_t *f)
{
    int done = 0;
    sl_stage_replay_t r = {.done = replay_done, .arg = &done};
    CHECK_INT(sl_stage_replay(f->stage, &r), ==, 0);
    while (!done) uv_run(&f->loop, UV_RUN_ONCE);
    CHECK_INT(r.job.rc, ==, 0);
    return r;
}

/* Set aside, then replayed once fixed: a replay that fails again keeps the
 * event aside; once the step is fixed the event reaches the profile as if
 * it had just arrived, and leaves the list (issue 14). */
TEST(stage_replays_set_aside)
{
    picky_t pk = {.refuse = 1};
    sl_stage_step_t step = {.name = "picky", .arg = &pk, .apply = picky_apply};
    fix_t f;
    REQUIRE(fix_init_with(&f, &step, 0) == 0);
    msg(&f, SL_STITCH_PAGE, NULL, "rp1", NULL, 1000);
    put(&f, "{\"type\":\"page\",\"messageId\":\"bad-1\",\"timestamp\":\"2026-01-01T00:00:01.500Z\","
            "\"anonymousId\":\"rp1\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
        1500, "bad-1");
    msg(&f, SL_STITCH_PAGE, NULL, "rp1", NULL, 2000);
    cJSON *p = get(&f, 0, "anonymous_id", "rp1");
    CHECK_INT(num(p, "counters", "events"), ==, 2);
    cJSON_Delete(p);
    char why[128] = "";
    int n = 0;
    CHECK_INT(sl_stage_set_aside(f.stage, 100, count_any, &n), ==, 0);
    CHECK_INT(n, ==, 1);

    /* not fixed yet: it stays aside */
    sl_stage_replay_t r = replay_all(&f);
    CHECK_INT(r.replayed, ==, 0);
    CHECK_INT(r.failed, ==, 1);
    n = 0;
    CHECK_INT(sl_stage_set_aside(f.stage, 100, count_any, &n), ==, 0);
    CHECK_INT(n, ==, 1);
    CHECK_INT(sl_stage_set_aside(f.stage, 100, last_reason, why), ==, 0);
    CHECK(strstr(why, "picky") != NULL);

    /* fixed: replayed into the profile, and gone from the list */
    pk.refuse = 0;
    r = replay_all(&f);
    CHECK_INT(r.replayed, ==, 1);
    CHECK_INT(r.failed, ==, 0);
    CHECK_INT(r.more, ==, 0);
    CHECK_INT(pk.applied_bad, ==, 1);
    n = 0;
    CHECK_INT(sl_stage_set_aside(f.stage, 100, count_any, &n), ==, 0);
    CHECK_INT(n, ==, 0);
    p = get(&f, 0, "anonymous_id", "rp1");
    CHECK_INT(num(p, "counters", "events"), ==, 3);
    cJSON_Delete(p);
    sl_stage_stats_t st;
    sl_stage_get_stats(f.stage, &st);
    CHECK_INT(st.replayed, ==, 1);
    CHECK_INT(verify_problems(&f), ==, 0); /* the replayed event is in its timeline */
    /* nothing left: a replay is a no-op */
    r = replay_all(&f);
    CHECK_INT(r.replayed + r.failed + r.gone, ==, 0);
    fix_free(&f);
}

/* A step that takes its time over events whose messageId starts with
 * "slow": the stage is busy while the test queues more behind it. */
static int slow_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    (void)arg;
    (void)txn;
    if (strncmp(ev->message_id, "slow", 4) == 0) usleep(100000);
    return 0;
}

/* A job follows every event that was durable when it was submitted: an
 * erasure asked right after an acknowledged identify erases that person,
 * even when the stage was still busy and had not applied the identify (the
 * job used to run before the events of its transaction: 404). */
TEST(stage_job_follows_acknowledged_events)
{
    sl_stage_step_t step = {.name = "slow", .apply = slow_apply};
    fix_t f;
    REQUIRE(fix_init_with(&f, &step, 0) == 0);
    put_durable(&f, "{\"type\":\"page\",\"messageId\":\"slow-1\",\"timestamp\":\"2026-01-01T00:00:01.000Z\","
                    "\"anonymousId\":\"jf-other\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
                sl_now_ms(), "slow-1");
    put_durable(&f, "{\"type\":\"identify\",\"messageId\":\"jf-2\",\"timestamp\":\"2026-01-01T00:00:02.000Z\","
                    "\"userId\":\"jf-user\",\"anonymousId\":\"jf-a\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
                sl_now_ms(), "jf-2");
    CHECK_INT(sl_stage_applied(f.stage), <, 2); /* the stage is still on the slow event */
    sl_stitch_erase_t er;
    erase_run(&f, &er, "user_id", "jf-user");
    CHECK_INT(er.found, ==, 1);
    CHECK_INT(er.identities, ==, 2);
    sl_stitch_erase_free(&er);
    char a[32];
    CHECK_STR(person_of(&f, "anonymous_id", "jf-a", a), "(none)");
    fix_free(&f);
}

/* page_visit patterns (docs/TRIGGERS.md): pattern, subject, match. */
/* ---- rule states written before the record header ---- */

typedef struct {
    sl_trig_t *trig;
    uint64_t person, seq;      /* seq: a stored event, the pending trigger's start */
    const char *mid;           /* its messageId */
    int garbage;               /* write records no layout reads instead */
    sl_stage_job_t job;
    int done;
} old_states_t;

static int put_old_states(MDB_txn *txn, void *arg)
{
    old_states_t *o = arg;
    sl_trig_t *t = o->trig;
    int rc;
    if (o->garbage) {
        static const char junk[] = "not a record, of any kind";
        if ((rc = trig_state_put(t, txn, "cart", o->person, junk, 10)) ||
            (rc = trig_state_put(t, txn, "viewed-twice", o->person, junk, 12)))
            return rc;
        return trig_state_put(t, txn, "nudge", o->person, junk, 20);
    }
    /* the cart: a struct, then the products as the rule printed them with cJSON */
    static const char json[] = "[{\"product_id\":\"sku-1\",\"name\":\"Shirt\",\"price\":20,\"quantity\":2},"
                               "{\"product_id\":\"sku-2\",\"name\":\"Socks\",\"price\":5,\"quantity\":1}]";
    struct {
        trig_cart_v0_t c;
        char products[sizeof(json)];
    } cart = {{1764000000000, 1764000060000, 1764000090000, 1764000090000 + 30LL * 86400000, 1, 2, 45, "EUR",
               sizeof(json) - 1, 0},
              {0}};
    memcpy(cart.products, json, sizeof(json) - 1);
    if ((rc = trig_state_put(t, txn, "cart", o->person, &cart, sizeof(cart.c) + sizeof(json) - 1))) return rc;
    /* the page rule: one bare visit time, within the hour */
    int64_t visit = sl_now_ms() - 60000;
    if ((rc = trig_state_put(t, txn, "viewed-twice", o->person, &visit, sizeof(visit)))) return rc;
    /* the event rule, version 1: its own header, then one pending trigger (and its hold) */
    struct {
        uint8_t version, pad[3];
        uint32_t n;
        int64_t timer_ms;
        int64_t start_ms, due_ms;
        uint64_t seq, mid, match;
        uint32_t waiting, pad2;
    } ev = {1, {0}, 1, sl_now_ms() + 86400000, sl_now_ms(), sl_now_ms() + 86400000, o->seq, trig_mid_hash(o->mid), 0, 0, 0};
    if ((rc = trig_state_put(t, txn, "nudge", o->person, &ev, sizeof(ev))) ||
        (rc = trig_hold(t, txn, ev.mid, ev.seq, 1)))
        return rc;
    return trig_pending_count(t, txn, "nudge", 1);
}

static void old_states_done(sl_stage_job_t *job) { ((old_states_t *)job->arg)->done = 1; }

static void write_states(fix_t *f, old_states_t *o)
{
    o->trig = f->trig;
    o->job = (sl_stage_job_t){.run = put_old_states, .done = old_states_done, .arg = o};
    CHECK_INT(sl_stage_submit(f->stage, &o->job), ==, 0);
    while (!o->done) uv_run(&f->loop, UV_RUN_ONCE);
    CHECK_INT(o->job.rc, ==, 0);
}

typedef struct {
    sl_trig_t *trig;
    sl_feed_t *feed;
    uint64_t person, n_pending, problems;
    sl_buf_t out;
    char *report;
    size_t report_len;
} trig_read_t;

static int trig_read_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    trig_read_t *q = arg;
    FILE *out = open_memstream(&q->report, &q->report_len);
    if (out == NULL) return SL_ENOMEM;
    int rc = sl_trig_verify_states(q->trig, txn, log_txn, out, &q->n_pending, &q->problems);
    fclose(out);
    if (rc == 0) rc = sl_trig_pending(q->trig, txn, q->person, &q->out);
    if (rc == 0 && sl_feed_read(q->feed, txn, 0, 100, NULL, &q->out, NULL) < 0) rc = SL_ESTORE;
    return rc;
}

/* verify's report and problems, person's pending triggers, then the feed's entries (in q->out) */
static void trig_read(fix_t *f, trig_read_t *q, uint64_t person)
{
    free(q->report);
    sl_buf_free(&q->out);
    *q = (trig_read_t){.trig = f->trig, .feed = f->feed, .person = person};
    CHECK_INT(sl_stage_read(f->stage, 1, trig_read_cb, q), ==, 0);
}

static uint64_t person_num(fix_t *f, const char *anon)
{
    char p[32];
    person_of(f, "anonymous_id", anon, p);
    return strtoull(p + 2, NULL, 10);
}

/* A data dir from before the record header: a cart (its struct and JSON),
 * bare page visit times and an event rule's version-1 pending trigger are
 * read, verified and fire as before -- the cart's products byte for byte --
 * and a record no layout reads is a verify problem naming its rule. */
TEST(trigger_states_from_before_the_header)
{
    fix_config = "{\"listen\":\"127.0.0.1:8080\",\"data_dir\":\"./unused\","
                 "\"sources\":[{\"name\":\"demo\",\"write_key\":\"demo\"}],"
                 "\"admin_token\":\"0123456789abcdef0123456789abcdef\",\"triggers\":["
                 "{\"name\":\"cart\",\"type\":\"abandoned_cart\",\"delay\":\"30s\"},"
                 "{\"name\":\"viewed-twice\",\"type\":\"page_visit\",\"url\":\"/p\",\"min_count\":2,\"within\":\"1h\"},"
                 "{\"name\":\"nudge\",\"type\":\"event\",\"event\":\"Signed Up\",\"delay\":\"1d\"}]}";
    fix_t f;
    int rc = fix_init_with(&f, NULL, 1);
    fix_config = NULL;
    REQUIRE(rc == 0);
    uint64_t seq = put_durable(&f, "{\"type\":\"page\",\"messageId\":\"old-1\",\"timestamp\":\"2026-01-01T00:00:01.000Z\","
                                   "\"anonymousId\":\"old-a\",\"properties\":{\"path\":\"/home\"},"
                                   "\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
                               1000, "old-1");
    for (int i = 0; i < 5000 && sl_stage_applied(f.stage) < seq; i++) usleep(1000);
    old_states_t o = {.person = person_num(&f, "old-a"), .seq = seq, .mid = "old-1"};
    REQUIRE(o.person != 0);
    write_states(&f, &o);
    trig_read_t q = {0};
    trig_read(&f, &q, o.person);
    CHECK_INT(q.problems, ==, 0);
    CHECK_INT(q.n_pending, ==, 1);
    if (q.problems) fprintf(stderr, "%s", q.report);
    CHECK(strstr(q.out.data, "{\"rule\":\"nudge\",\"due\":") != NULL); /* version 1, listed */
    /* the login: the waiting cart fires, as the old layout printed it */
    put(&f, "{\"type\":\"identify\",\"messageId\":\"old-2\",\"timestamp\":\"2026-01-01T00:00:02.000Z\","
            "\"anonymousId\":\"old-a\",\"userId\":\"old-u\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
        2000, "old-2");
    /* and a second visit of /p: the old time and this one make two */
    put(&f, "{\"type\":\"page\",\"messageId\":\"old-3\",\"timestamp\":\"2026-01-01T00:00:03.000Z\","
            "\"anonymousId\":\"old-a\",\"properties\":{\"path\":\"/p\"},\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
        3000, "old-3");
    for (int i = 0; i < 5000 && sl_feed_durable_seq(f.feed) < 2; i++) usleep(1000);
    uint64_t now_person = person_num(&f, "old-a");
    trig_read(&f, &q, now_person);
    CHECK_INT(q.problems, ==, 0);
    CHECK_INT(q.n_pending, ==, 1);
    REQUIRE(q.out.data != NULL);
    CHECK(strstr(q.out.data, "\"rule\":\"nudge\"") != NULL); /* still pending, wherever the person went */
    CHECK(strstr(q.out.data, "\"data\":{\"products\":[{\"product_id\":\"sku-1\",\"name\":\"Shirt\",\"price\":20,"
                             "\"quantity\":2},{\"product_id\":\"sku-2\",\"name\":\"Socks\",\"price\":5,\"quantity\":1}],"
                             "\"value\":45.00,\"currency\":\"EUR\",\"started_at\":\"2025-11-24T16:00:00.000Z\"") != NULL);
    CHECK(strstr(q.out.data, "\"data\":{\"url\":null,\"path\":\"/p\",\"count\":2,\"pattern\":\"/p\"}") != NULL);
    if (!strstr(q.out.data, "\"count\":2")) fprintf(stderr, "  feed: %s\n", q.out.data);
    /* records no layout reads: each a problem naming its rule */
    put(&f, "{\"type\":\"page\",\"messageId\":\"old-4\",\"timestamp\":\"2026-01-01T00:00:04.000Z\","
            "\"anonymousId\":\"old-b\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
        4000, "old-4");
    old_states_t g = {.person = person_num(&f, "old-b"), .garbage = 1};
    write_states(&f, &g);
    trig_read(&f, &q, g.person);
    CHECK_INT(q.problems, ==, 3);
    char want[3][96];
    snprintf(want[0], sizeof(want[0]), "rule cart: the state of p_%llu is not a cart record", (unsigned long long)g.person);
    snprintf(want[1], sizeof(want[1]), "rule viewed-twice: the state of p_%llu is not a visit-times record",
             (unsigned long long)g.person);
    snprintf(want[2], sizeof(want[2]), "rule nudge: the state of p_%llu is not a pending-trigger record",
             (unsigned long long)g.person);
    for (int i = 0; i < 3; i++) CHECK(q.report && strstr(q.report, want[i]) != NULL);
    free(q.report);
    sl_buf_free(&q.out);
    fix_free(&f);
}

TEST(trigger_glob_table)
{
    static const struct { const char *p, *s; int m; } t[] = {
        {"/pricing*", "/pricing", 1},        {"/pricing*", "/pricing/teams", 1}, {"/pricing*", "/price", 0},
        {"/docs/*", "/docs/", 1},            {"/docs/*", "/docs", 0},            {"*", "", 1},
        {"/a?c", "/abc", 1},                 {"/a?c", "/ac", 0},                 {"/*/x", "/a/b/x", 1},
        {"/*/x", "/a/b/y", 0},               {"**", "/anything", 1},             {"", "", 1},
        {"", "/", 0},                        {"https://shop.example/*", "https://shop.example/p?x=1", 1},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (sl_trig_glob_match(t[i].p, t[i].s) != t[i].m) {
            fprintf(stderr, "  glob \"%s\" vs \"%s\": want %d\n", t[i].p, t[i].s, t[i].m);
            test_failures++;
        }
}

/* Webhook retries: 0.5 s doubling to 5 min, jitter within +-25 %. */
TEST(webhook_backoff)
{
    static const struct { int attempts; int64_t base; } t[] = {{1, 500}, {2, 1000}, {3, 2000}, {10, 256000}, {11, 300000},
                                                                {50, 300000}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        CHECK_INT(sl_webhook_backoff_ms(t[i].attempts, 0), ==, t[i].base * 3 / 4);
        CHECK_INT(sl_webhook_backoff_ms(t[i].attempts, (uint32_t)(t[i].base / 2)), ==, t[i].base * 5 / 4);
        int64_t x = sl_webhook_backoff_ms(t[i].attempts, 0xFFFFFFFFu);
        CHECK(x >= t[i].base * 3 / 4 && x <= t[i].base * 5 / 4);
    }
}

/* The webhook signature against a vector computed outside sillage:
 * printf '%s' '1700000000.t-1.0123456789abcdef.{"rule":"cart"}' | openssl dgst -sha256 -hmac hook-secret */
TEST(webhook_signature_vector)
{
    static const char body[] = "{\"rule\":\"cart\"}";
    char sig[SL_WEBHOOK_SIGNATURE_BYTES];
    CHECK_INT(sl_webhook_sign("hook-secret", 1700000000, "t-1.0123456789abcdef", body, sizeof(body) - 1, sig), ==, 0);
    CHECK_STR(sig, "t=1700000000,v1=07dbee2a0094efcdf136b225e704b9a242ba516a99fdb7b00807149ef7f4a19e");
    /* the time and the delivery id are signed: changing either changes it */
    char other[SL_WEBHOOK_SIGNATURE_BYTES];
    CHECK_INT(sl_webhook_sign("hook-secret", 1700000001, "t-1.0123456789abcdef", body, sizeof(body) - 1, other), ==, 0);
    CHECK(strcmp(sig + 17, other + 17) != 0);
    CHECK_INT(sl_webhook_sign("hook-secret", 1700000000, "t-2.0123456789abcdef", body, sizeof(body) - 1, other), ==, 0);
    CHECK(strcmp(sig, other) != 0);
}

/* A page of the journal of kind/id: limit entries before the cursor. */
static cJSON *get_merges(fix_t *f, const char *kind, const char *id, size_t limit, const char *before, int *rc)
{
    read_t r = {.s = f->stitch, .kind = kind, .id = id, .which = 2, .limit = limit, .before = before};
    CHECK_INT(sl_stage_read(f->stage, 1, read_cb, &r), ==, 0);
    *rc = r.rc;
    cJSON *doc = r.rc == 0 ? cJSON_ParseWithLength(r.out.data, r.out.len) : NULL;
    sl_buf_free(&r.out);
    return doc;
}

static const cJSON *first_refusal(const cJSON *j)
{
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "refused"), 0);
}

/* Issue 21, M4: refusals against one person coalesce into one entry per
 * reason, counted, whoever claims its identifiers. */
TEST(stitch_refusals_coalesce)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    f.untrusted = 1;
    msg(&f, SL_STITCH_IDENTIFY, "victim", "va", "victim@example.com", 1000);
    char user[32];
    for (int i = 0; i < 150; i++) {
        snprintf(user, sizeof(user), "att-%d", i);
        msg(&f, SL_STITCH_ALIAS, user, NULL, "victim", 2000 + i);
    }
    /* the same claim again counts no more (a shared device's every event) */
    msg(&f, SL_STITCH_ALIAS, "att-0", NULL, "victim", 3000);
    /* another reason: the victim's e-mail claimed by another user */
    msg(&f, SL_STITCH_IDENTIFY, "att-1", NULL, "victim@example.com", 3001);
    int rc;
    cJSON *j = get_merges(&f, "user_id", "victim", 0, NULL, &rc);
    REQUIRE(rc == 0 && j);
    const cJSON *refused = cJSON_GetObjectItemCaseSensitive(j, "refused");
    CHECK_INT(cJSON_GetArraySize(refused), ==, 2);
    const cJSON *e;
    int alias = 0, trait = 0;
    cJSON_ArrayForEach(e, refused) {
        const char *reason = cJSON_GetObjectItemCaseSensitive(e, "reason")->valuestring;
        if (strncmp(reason, "alias", 5) == 0) {
            alias = 1;
            CHECK_INT(num(e, "count", NULL), ==, 150);
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "messageId")), "m151"); /* the latest */
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(e, "identifier"), "id")), "victim");
            const char *first = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "first_at"));
            const char *last = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "last_at"));
            CHECK(first && last && strcmp(first, last) <= 0);
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "at")), last);
        } else {
            trait = 1;
            CHECK_INT(num(e, "count", NULL), ==, 1);
        }
    }
    CHECK(alias && trait);
    cJSON_Delete(j);
    /* each claimant sees the refusal of its claim */
    CHECK_INT(count_journal(&f, "user_id", "att-7", "refused"), ==, 1);
    sl_stitch_stats_t st;
    sl_stitch_get_stats(f.stitch, &st);
    CHECK_INT(st.refusals, ==, 151);
    CHECK_INT(st.refusals_dropped, ==, 0);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* Issue 21, M4: at most SL_STITCH_MAX_REFUSALS refusal entries per person,
 * the oldest dropped and counted; the journal comes a page at a time. */
TEST(stitch_refusals_bounded_and_paged)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    f.untrusted = 1;
    char user[32];
    for (int i = 0; i < SL_STITCH_MAX_REFUSALS + 20; i++) {
        snprintf(user, sizeof(user), "owner-%d", i);
        msg(&f, SL_STITCH_IDENTIFY, user, NULL, NULL, 1000 + i);
    }
    /* one user claims the ids of 120 others: its journal is the one that grows */
    for (int i = 0; i < SL_STITCH_MAX_REFUSALS + 20; i++) {
        snprintf(user, sizeof(user), "owner-%d", i);
        msg(&f, SL_STITCH_ALIAS, "claimer", NULL, user, 2000 + i);
    }
    sl_stitch_stats_t st;
    sl_stitch_get_stats(f.stitch, &st);
    CHECK_INT(st.refusals, ==, SL_STITCH_MAX_REFUSALS + 20);
    CHECK_INT(st.refusals_dropped, ==, 20);
    /* the owners keep their own entries */
    CHECK_INT(count_journal(&f, "user_id", "owner-0", "refused"), ==, 1);
    /* pages of 30, newest first, until next is null */
    int rc, pages = 0, total = 0;
    char cursor[32] = "";
    const char *want_first = "owner-119";
    for (;;) {
        cJSON *j = get_merges(&f, "user_id", "claimer", 30, cursor[0] ? cursor : NULL, &rc);
        REQUIRE(rc == 0 && j);
        const cJSON *refused = cJSON_GetObjectItemCaseSensitive(j, "refused");
        CHECK_INT(cJSON_GetArraySize(refused), <=, 30);
        if (pages == 0)
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(first_refusal(j), "identifier"), "id")), want_first);
        total += cJSON_GetArraySize(refused);
        pages++;
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(j, "next");
        if (!cJSON_IsString(next)) {
            const cJSON *oldest = cJSON_GetArrayItem(refused, cJSON_GetArraySize(refused) - 1);
            /* the 20 oldest claims went */
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(oldest, "identifier"), "id")), "owner-20");
            cJSON_Delete(j);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", next->valuestring);
        cJSON_Delete(j);
        REQUIRE(pages < 10);
    }
    CHECK_INT(total, ==, SL_STITCH_MAX_REFUSALS);
    CHECK_INT(pages, ==, 4);
    /* a cursor that is not one */
    static const char *const bad[] = {"x", "-1", "0", "12a", "+5", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cJSON_Delete(get_merges(&f, "user_id", "claimer", 30, bad[i], &rc));
        CHECK_INT(rc, ==, SL_EINVAL);
    }
    fix_free(&f);
}

/* A user with many merges: what the public key can build (one merge per
 * anonymousId it identifies with), and owners of e-mails it then claims. */
static void many_merges_then_owners(fix_t *f, int merges, int owners)
{
    char anon[32], user[32], email[48];
    f->no_wait = 1;
    for (int i = 0; i < merges; i++) {
        snprintf(anon, sizeof(anon), "mm-a%d", i);
        msg(f, SL_STITCH_PAGE, NULL, anon, NULL, 1000 + i);
        msg(f, SL_STITCH_IDENTIFY, "mm-u", anon, NULL, 1000 + i);
    }
    for (int i = 0; i < owners; i++) {
        snprintf(user, sizeof(user), "mm-v%d", i);
        snprintf(email, sizeof(email), "mm-e%d@x.com", i);
        msg(f, SL_STITCH_IDENTIFY, user, NULL, email, 5000 + i);
    }
    f->no_wait = 0;
    msg(f, SL_STITCH_PAGE, NULL, "mm-sync", NULL, 6000); /* waits for the stage */
}

/* mm-u claims the e-mails of owners [from, to): one refusal each. */
static void claim_emails(fix_t *f, int from, int to)
{
    char email[48];
    f->no_wait = 1;
    for (int i = from; i < to; i++) {
        snprintf(email, sizeof(email), "mm-e%d@x.com", i);
        msg(f, SL_STITCH_IDENTIFY, "mm-u", NULL, email, 7000 + i);
    }
    f->no_wait = 0;
    msg(f, SL_STITCH_PAGE, NULL, "mm-sync", NULL, 8000);
}

/* Review N1: keeping a person's refusal bound reads its refusal references,
 * not its merges. A claimant with 400 merges (its journal is 400 entries
 * long) refused 150 times: each refusal reads at most the bound's worth of
 * references for the claimant and one for the owner; reading the whole
 * journal each time was 400+ per refusal. */
TEST(stitch_refusal_bound_reads_refusals_only)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    f.untrusted = 1;
    const int merges = 400, claims = SL_STITCH_MAX_REFUSALS + 50;
    many_merges_then_owners(&f, merges, claims);
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "merge"), ==, merges - 1);
    sl_stitch_stats_t st0, st;
    sl_stitch_get_stats(f.stitch, &st0);
    claim_emails(&f, 0, claims);
    sl_stitch_get_stats(f.stitch, &st);
    CHECK_INT(st.refusals - st0.refusals, ==, claims);
    CHECK_INT(st.refusals_dropped - st0.refusals_dropped, ==, claims - SL_STITCH_MAX_REFUSALS);
    uint64_t read = st.refusal_refs_read - st0.refusal_refs_read;
    CHECK_INT(read, >=, claims); /* the counter counts */
    CHECK_INT(read, <=, (uint64_t)claims * (SL_STITCH_MAX_REFUSALS + 2));
    /* the journal still holds every merge and the newest refusals */
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "merge"), ==, merges - 1);
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "refused"), ==, SL_STITCH_MAX_REFUSALS);
    CHECK_INT(count_journal(&f, "user_id", "mm-v0", "refused"), ==, 1); /* the owners keep theirs */
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* Deletes the named database of the derived store (the store closed), as a
 * store written before it existed. */
static void drop_db(fix_t *f, const char *db)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CHECK_INT(mdb_env_create(&env), ==, 0);
    mdb_env_set_maxdbs(env, 32);
    mdb_env_set_mapsize(env, 256 << 20);
    CHECK_INT(mdb_env_open(env, f->ddir, 0, 0640), ==, 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
    CHECK_INT(mdb_dbi_open(txn, db, 0, &dbi), ==, 0);
    CHECK_INT(mdb_drop(txn, dbi, 1), ==, 0);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
}

/* Rewrites every person record of the derived store (closed) as records
 * were before they said where their entry in active is: that goes to actof,
 * the record's two words are zero. The number of records rewritten. */
static int records_before_active_here(fix_t *f)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi persons, actof;
    MDB_cursor *cur;
    MDB_val k, v;
    int n = 0;
    CHECK_INT(mdb_env_create(&env), ==, 0);
    mdb_env_set_maxdbs(env, 32);
    mdb_env_set_mapsize(env, 256 << 20);
    CHECK_INT(mdb_env_open(env, f->ddir, 0, 0640), ==, 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
    CHECK_INT(mdb_dbi_open(txn, "persons", MDB_INTEGERKEY, &persons), ==, 0);
    CHECK_INT(mdb_dbi_open(txn, "actof", MDB_INTEGERKEY, &actof), ==, 0);
    CHECK_INT(mdb_cursor_open(txn, persons, &cur), ==, 0);
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        unsigned char rec[4096];
        if (v.mv_size < 24 || v.mv_size > sizeof(rec)) {
            CHECK(!"a person record of an unexpected size");
            break;
        }
        memcpy(rec, v.mv_data, v.mv_size);
        uint64_t flags;
        memcpy(&flags, rec + 16, 8); /* version, n_ids, active_ms, flags */
        CHECK_INT(flags, ==, 3);     /* written by this version: here, and active */
        MDB_val av = {8, rec + 8}, nv = {v.mv_size, rec};
        CHECK_INT(mdb_put(txn, actof, &k, &av, 0), ==, 0);
        memset(rec + 8, 0, 16);
        CHECK_INT(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), ==, 0);
        n++;
    }
    mdb_cursor_close(cur);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
    return n;
}

static int db_entries(fix_t *f, const char *name); /* entries of a derived database (the store open) */

/* The ids of the recent-activity listing, newest first, as "p_1,p_2". */
static void recent_ids(fix_t *f, char *out, size_t cap)
{
    read_t r = {.s = f->stitch, .which = 3};
    CHECK_INT(sl_stage_read(f->stage, 1, read_cb, &r), ==, 0);
    CHECK_INT(r.rc, ==, 0);
    cJSON *doc = cJSON_ParseWithLength(r.out.data, r.out.len), *p;
    out[0] = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(doc, "profiles")) {
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%s", len ? "," : "", cJSON_GetObjectItemCaseSensitive(p, "id")->valuestring);
    }
    cJSON_Delete(doc);
    sl_buf_free(&r.out);
}

/* A person's place in the recent-activity index is read from its record
 * (an event reads no other record to know whether it moves); records
 * written before kept it in actof: each says it once touched, and the
 * listing, merges and erasure keep working across the upgrade. */
TEST(stitch_active_from_records_before)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    int64_t t = 1700000000000;
    msg(&f, SL_STITCH_PAGE, NULL, "ra", NULL, t);
    msg(&f, SL_STITCH_PAGE, NULL, "rb", NULL, t + 1000);
    msg(&f, SL_STITCH_PAGE, NULL, "rc", NULL, t + 2000);
    char a[32], b[32], c[32], want[128], got[128];
    person_of(&f, "anonymous_id", "ra", a);
    person_of(&f, "anonymous_id", "rb", b);
    person_of(&f, "anonymous_id", "rc", c);
    snprintf(want, sizeof(want), "%s,%s,%s", c, b, a);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, want);
    CHECK_INT(db_entries(&f, "actof"), ==, 0); /* nothing kept there any more */
    fix_close_store(&f);
    CHECK_INT(records_before_active_here(&f), ==, 3);
    REQUIRE(fix_open(&f) == 0);
    CHECK_INT(db_entries(&f, "actof"), ==, 3);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, want);
    CHECK_INT(verify_problems(&f), ==, 0);
    /* ra, a minute later: moves to the front, its place now in its record */
    msg(&f, SL_STITCH_PAGE, NULL, "ra", NULL, t + 120000);
    snprintf(want, sizeof(want), "%s,%s,%s", a, c, b);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, want);
    /* rb logs in as rc's user: rb's person is merged into rc's, which keeps the later place */
    msg(&f, SL_STITCH_IDENTIFY, "ru", "rc", NULL, t + 3000);
    msg(&f, SL_STITCH_IDENTIFY, "ru", "rb", NULL, t + 4000);
    CHECK_SAME(person_of(&f, "anonymous_id", "rb", got), c);
    snprintf(want, sizeof(want), "%s,%s", a, c);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, want);
    /* ra's erasure takes its entry */
    sl_stitch_erase_t er;
    erase_run(&f, &er, "anonymous_id", "ra");
    sl_stitch_erase_free(&er);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, c);
    CHECK_INT(verify_problems(&f), ==, 0);
    CHECK_INT(db_entries(&f, "actof"), ==, 0); /* every record touched says it now */
    fix_free(&f);
}

/* Review N1: a store written before refusal references were kept apart
 * (no "prefusals") gets them from the journal at open: the bound still
 * counts the refusals made before the upgrade. */
TEST(stitch_refusal_refs_migrated_at_open)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    f.untrusted = 1;
    many_merges_then_owners(&f, 20, SL_STITCH_MAX_REFUSALS + 10);
    claim_emails(&f, 0, SL_STITCH_MAX_REFUSALS);
    fix_close_store(&f);
    drop_db(&f, "prefusals");
    REQUIRE(fix_open(&f) == 0);
    claim_emails(&f, SL_STITCH_MAX_REFUSALS, SL_STITCH_MAX_REFUSALS + 10);
    sl_stitch_stats_t st;
    sl_stitch_get_stats(f.stitch, &st);
    CHECK_INT(st.refusals_dropped, ==, 10); /* the 10 oldest, made before the reopening */
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "refused"), ==, SL_STITCH_MAX_REFUSALS);
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "merge"), ==, 19);
    /* an erased owner's entry goes from the claimant's journal too */
    sl_stitch_erase_t er;
    erase_run(&f, &er, "user_id", "mm-v50");
    sl_stitch_erase_free(&er);
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "refused"), ==, SL_STITCH_MAX_REFUSALS - 1);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* Issue 21, L2: an identify whose userId and anonymousId are junk or
 * unkeyable still names someone by its e-mail: a person of its own, found
 * and erased by that e-mail, and joined by its owner later. */
TEST(stitch_junk_ids_with_email_are_erasable)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_PAGE, NULL, "bystander", NULL, 500);
    msg(&f, SL_STITCH_IDENTIFY, "undefined", NULL, "junk@x.com", 1000);
    msg(&f, SL_STITCH_IDENTIFY, "0", "a\x1f" "c", " JUNK@x.com", 1001); /* unkeyable anonymousId */
    msg(&f, SL_STITCH_IDENTIFY, "null", "null", "other@x.com", 1002);
    char a[32], b[32];
    CHECK(strcmp(person_of(&f, "email", "junk@x.com", a), "(none)") != 0);
    CHECK(strcmp(a, person_of(&f, "email", "other@x.com", b)) != 0);
    cJSON *p = get(&f, 0, "email", "junk@x.com");
    CHECK_INT(num(p, "counters", "events"), ==, 2);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(p, "user_id")));
    cJSON_Delete(p);
    CHECK_INT(verify_problems(&f), ==, 0);

    sl_stitch_erase_t er;
    erase_run(&f, &er, "email", "junk@x.com");
    CHECK_INT(er.found, ==, 1);
    CHECK_INT(er.events, ==, 2);
    sl_stitch_erase_free(&er);
    uint64_t n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 2); /* the bystander's page and other@x.com's identify */
    CHECK_STR(person_of(&f, "email", "junk@x.com", a), "(none)");

    /* the e-mail's owner identifies later: the person made for it joins the user */
    msg(&f, SL_STITCH_IDENTIFY, "owner", "o1", "other@x.com", 2000);
    CHECK_SAME(person_of(&f, "email", "other@x.com", a), person_of(&f, "user_id", "owner", b));
    p = get(&f, 0, "user_id", "owner");
    CHECK_INT(num(p, "counters", "events"), ==, 2);
    cJSON_Delete(p);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* Issue 21, L4: a person with more events than one slice of the log's
 * erasure still loses them all, and the erasure is reported done once they
 * are gone. */
TEST(stitch_erasure_in_slices)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    const int n = SL_STORE_ERASE_SLICE * 2 + 7;
    sl_buf_t b = {0};
    for (int i = 0; i < n; i++) {
        char mid[32];
        snprintf(mid, sizeof(mid), "big-%d", i);
        b.len = 0;
        sl_buf_printf(&b, "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"%s\",\"userId\":\"big\","
                          "\"timestamp\":\"2026-01-01T00:00:00.000Z\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
                      mid);
        if (i < n - 1) put_durable(&f, b.data, 1000, mid);
        else put(&f, b.data, 1000, mid);
    }
    sl_buf_free(&b);
    msg(&f, SL_STITCH_PAGE, NULL, "small", NULL, 1000);
    sl_stitch_erase_t er;
    erase_run(&f, &er, "user_id", "big");
    CHECK_INT(er.events, ==, n);
    sl_stitch_erase_free(&er);
    uint64_t n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 1);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* ---- the stage's seams (issue 22, item 6) ---------------------------------- */

/* A step of a later phase that writes down what the identity phase told it
 * (the stage context), and sets durable timers when an event asks for one. */
typedef struct {
    sl_stage_t *sg;
    char log[4096];
    size_t len;
    int fired;                 /* timers that reached this step */
    char fired_log[512];
} seam_t;

static int seam_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    seam_t *s = arg;
    const sl_stage_ctx_t *x = ev->ctx;
    char e[SL_ENTITY_STR_BYTES];
    sl_entity_format(x->entity, e);
    int n = snprintf(s->log + s->len, sizeof(s->log) - s->len, "%s:%s:i%d:h%d", ev->message_id, e[0] ? e : "-",
                     x->identified, x->historical);
    s->len += n > 0 ? (size_t)n : 0;
    for (size_t i = 0; i < x->n_merges; i++) {
        n = snprintf(s->log + s->len, sizeof(s->log) - s->len, ":m%llu<%llu", (unsigned long long)x->merge_survivor[i],
                     (unsigned long long)x->merge_absorbed[i]);
        s->len += n > 0 ? (size_t)n : 0;
    }
    const cJSON *ch;
    cJSON_ArrayForEach(ch, x->trait_changes) {
        const cJSON *old = cJSON_GetArrayItem(ch, 1), *nw = cJSON_GetArrayItem(ch, 2);
        n = snprintf(s->log + s->len, sizeof(s->log) - s->len, ":t%s=%s>%s", cJSON_GetArrayItem(ch, 0)->valuestring,
                     cJSON_IsString(old) ? old->valuestring : "null", cJSON_IsString(nw) ? nw->valuestring : "?");
        s->len += n > 0 ? (size_t)n : 0;
    }
    n = snprintf(s->log + s->len, sizeof(s->log) - s->len, ";");
    s->len += n > 0 ? (size_t)n : 0;
    int rc = 0;
    if (strncmp(ev->message_id, "timer-", 6) == 0) { /* timer-<ms from now> */
        int64_t due = sl_now_ms() + atoll(ev->message_id + 6);
        rc = sl_stage_timer_set(s->sg, txn, "seam", due, x->entity, "hello", 5);
        /* and one of a step that is not registered: dropped when due */
        if (rc == 0) rc = sl_stage_timer_set(s->sg, txn, "ghost", 0, x->entity, "boo", 3);
    }
    return rc;
}

static int seam_timer(void *arg, MDB_txn *txn, sl_entity_t e, const char *name, size_t name_len, int64_t due,
                      int64_t now)
{
    (void)txn;
    seam_t *s = arg;
    CHECK(now >= due);
    char es[SL_ENTITY_STR_BYTES];
    sl_entity_format(e, es);
    size_t l = strlen(s->fired_log);
    snprintf(s->fired_log + l, sizeof(s->fired_log) - l, "%s:%.*s;", es, (int)name_len, name);
    s->fired++;
    return 0;
}

static void seam_put(fix_t *f, const char *type, const char *mid, const char *rest)
{
    char json[512];
    snprintf(json, sizeof(json),
             "{\"type\":\"%s\",\"messageId\":\"%s\",\"timestamp\":\"2026-01-01T00:00:00.000Z\"%s}", type, mid, rest);
    put(f, json, 1000, mid);
}

/* Steps run by phase, whatever the order they were added in; a later phase
 * reads from the context whom the event was stitched to, whether that person
 * is identified, the merges and the trait changes the event made, and
 * whether it is historical. */
TEST(stage_context_by_phase)
{
    seam_t sm = {0};
    sl_stage_step_t step = {.name = "seam", .phase = SL_PHASE_FIELDS, .arg = &sm, .apply = seam_apply};
    fix_t f;
    fix_extra_first = 1;
    int rc = fix_init_with(&f, &step, 0);
    fix_extra_first = 0;
    REQUIRE(rc == 0);
    sm.sg = f.stage;
    const char *src = ",\"context\":{\"sillage\":{\"source\":\"backend\"}}";
    char rest[256];
    snprintf(rest, sizeof(rest), ",\"anonymousId\":\"c1\"%s", src);
    seam_put(&f, "page", "a1", rest);
    snprintf(rest, sizeof(rest), ",\"anonymousId\":\"c1\",\"userId\":\"u1\",\"traits\":{\"plan\":\"pro\"}%s", src);
    seam_put(&f, "identify", "a2", rest);
    snprintf(rest, sizeof(rest), ",\"anonymousId\":\"c1\",\"userId\":\"u1\",\"traits\":{\"plan\":\"pro\"}%s", src);
    seam_put(&f, "identify", "a3", rest); /* the same value: no change */
    snprintf(rest, sizeof(rest), ",\"anonymousId\":\"c2\"%s", src);
    seam_put(&f, "page", "a4", rest);
    snprintf(rest, sizeof(rest), ",\"anonymousId\":\"c2\",\"userId\":\"u1\",\"traits\":{\"plan\":\"max\"}%s", src);
    seam_put(&f, "identify", "a5", rest);
    seam_put(&f, "track", "a6",
             ",\"event\":\"Old\",\"userId\":\"u1\",\"context\":{\"sillage\":{\"source\":\"backend\",\"import\":true}}");
    seam_put(&f, "alias", "a7", src); /* no ids: stitched to nobody */
    CHECK_STR(sm.log, "a1:p_1:i0:h0;a2:p_1:i1:h0:tplan=null>pro;a3:p_1:i1:h0;a4:p_2:i0:h0;"
                      "a5:p_1:i1:h0:m1<2:tplan=pro>max;a6:p_1:i1:h1;a7:-:i0:h0;");
    fix_free(&f);
}

/* Durable timers belong to the stage: a step sets one in its transaction,
 * the stage runs it once due -- also after a restart -- and drops (and
 * counts) a timer of a step that is not registered. */
TEST(stage_timers_durable)
{
    seam_t sm = {0};
    sl_stage_step_t step = {.name = "seam", .phase = SL_PHASE_FIELDS, .arg = &sm, .apply = seam_apply,
                            .timer = seam_timer};
    fix_t f;
    REQUIRE(fix_init_with(&f, &step, 0) == 0);
    sm.sg = f.stage;
    seam_put(&f, "page", "timer-50", ",\"anonymousId\":\"t1\",\"context\":{\"sillage\":{\"source\":\"backend\"}}");
    for (int i = 0; i < 3000 && sm.fired < 1; i++) usleep(1000);
    CHECK_INT(sm.fired, ==, 1);
    CHECK_STR(sm.fired_log, "p_1:hello;");
    sl_stage_stats_t st;
    for (int i = 0; i < 1000; i++) {
        sl_stage_get_stats(f.stage, &st);
        if (st.timers_orphaned == 1) break;
        usleep(1000);
    }
    CHECK_INT(st.timers_orphaned, ==, 1);
    /* one due after a restart: it waits in the store, then runs */
    seam_put(&f, "page", "timer-2500", /* far enough that a valgrind run closes first */ ",\"anonymousId\":\"t2\",\"context\":{\"sillage\":{\"source\":\"backend\"}}");
    fix_close_store(&f);
    CHECK_INT(sm.fired, ==, 1);
    fix_extra_step = &step;
    REQUIRE(fix_open(&f) == 0);
    fix_extra_step = NULL;
    sm.sg = f.stage;
    for (int i = 0; i < 8000 && sm.fired < 2; i++) usleep(1000);
    CHECK_INT(sm.fired, ==, 2);
    CHECK_STR(sm.fired_log, "p_1:hello;p_2:hello;");
    fix_free(&f);
}

/* Rewrites the derived store's trigger records to layout 1 (keys without
 * the entity kind; the engine's own timers database), as a store written
 * before 2026-12 has them; n[] gets how many records each of rstate,
 * rpressure and ptimers held. */
static void to_layout1(fix_t *f, int n[3])
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi from, to;
    MDB_cursor *cur;
    MDB_val k, v;
    CHECK_INT(mdb_env_create(&env), ==, 0);
    mdb_env_set_maxdbs(env, 32);
    mdb_env_set_mapsize(env, 256 << 20);
    CHECK_INT(mdb_env_open(env, f->ddir, 0, 0640), ==, 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
    const char *names[][2] = {{"rstate", "tstate"}, {"rpressure", "pressure"}, {"ptimers", "timers"}};
    for (int d = 0; d < 3; d++) {
        n[d] = 0;
        CHECK_INT(mdb_dbi_open(txn, names[d][0], 0, &from), ==, 0);
        CHECK_INT(mdb_dbi_open(txn, names[d][1], MDB_CREATE, &to), ==, 0);
        CHECK_INT(mdb_cursor_open(txn, from, &cur), ==, 0);
        for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            unsigned char o[512];
            const unsigned char *p = k.mv_data;
            size_t len = 0;
            if (d == 0) { /* rule SEP kind id -> rule SEP id */
                memcpy(o, p, k.mv_size - 9);
                memcpy(o + k.mv_size - 9, p + k.mv_size - 8, 8);
                len = k.mv_size - 1;
            } else if (d == 1) { /* day kind id rule -> day id rule */
                memcpy(o, p, 4);
                memcpy(o + 4, p + 5, k.mv_size - 5);
                len = k.mv_size - 1;
            } else { /* due len step kind id name -> due id name */
                size_t sn = p[8];
                memcpy(o, p, 8);
                memcpy(o + 8, p + 9 + sn + 1, k.mv_size - (9 + sn + 1));
                len = k.mv_size - (1 + sn + 1);
            }
            MDB_val ok = {len, o};
            CHECK_INT(mdb_put(txn, to, &ok, &v, 0), ==, 0);
            n[d]++;
        }
        mdb_cursor_close(cur);
        CHECK_INT(mdb_drop(txn, from, 1), ==, 0);
    }
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
}

static int count_db(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    const char *name = ((const char **)arg)[0];
    MDB_dbi dbi;
    MDB_stat st;
    int rc = mdb_dbi_open(txn, name, 0, &dbi);
    if (rc) return rc == MDB_NOTFOUND ? -1 : rc;
    if ((rc = mdb_stat(txn, dbi, &st))) return rc;
    return (int)st.ms_entries;
}

static int db_entries(fix_t *f, const char *name) { return sl_stage_read(f->stage, 0, count_db, (const char *[]){name}); }

typedef struct {
    sl_trig_t *t;
    uint64_t pending, problems;
    char out[1024];
} trig_verify_t;

static int trig_verify_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    trig_verify_t *v = arg;
    FILE *out = fmemopen(v->out, sizeof(v->out) - 1, "w");
    int rc = sl_trig_verify_states(v->t, txn, log_txn, out, &v->pending, &v->problems);
    fclose(out);
    return rc;
}

/* A derived store of layout 1 (trigger states, pressure counts and timers
 * keyed by the bare person number) is converted when the server opens it:
 * the records keep their values under keys with the entity kind, the old
 * databases go, and every record is still there (verify finds nothing). */
TEST(trigger_layout1_converted_at_open)
{
    fix_t f;
    REQUIRE(fix_init_with(&f, NULL, 1) == 0);
    const char *src = ",\"userId\":\"lay\",\"context\":{\"sillage\":{\"source\":\"backend\"}}";
    char rest[256];
    snprintf(rest, sizeof(rest), ",\"event\":\"Product Added\",\"properties\":{\"product_id\":\"x\"}%s", src);
    seam_put(&f, "track", "l1", rest);
    fix_close_store(&f);
    int n[3]; /* what the stopped store holds: rstate, rpressure, ptimers */
    to_layout1(&f, n);
    int states = n[0], counts = n[1], timers = n[2];
    CHECK_INT(states, >=, 1);
    CHECK_INT(timers, >=, 1);
    /* converted in the opening transaction: counted before any timer runs */
    fix_no_stage_start = 1;
    int rc = fix_open(&f);
    fix_no_stage_start = 0;
    REQUIRE(rc == 0);
    CHECK_INT(db_entries(&f, "tstate"), ==, -1);
    CHECK_INT(db_entries(&f, "timers"), ==, -1);
    CHECK_INT(db_entries(&f, "pressure"), ==, -1);
    CHECK_INT(db_entries(&f, "rstate"), ==, states);
    CHECK_INT(db_entries(&f, "ptimers"), ==, timers);
    CHECK_INT(db_entries(&f, "rpressure"), ==, counts);
    trig_verify_t v = {.t = f.trig};
    CHECK_INT(sl_stage_read(f.stage, 1, trig_verify_cb, &v), ==, 0);
    CHECK_INT(v.problems, ==, 0);
    REQUIRE(sl_stage_start(f.stage, &f.loop) == 0);
    fix_free(&f);
}
