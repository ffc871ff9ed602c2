/* test_stitch.c - the stitching rules, on the stitcher plugged into a real
 * store (LMDB in a temporary directory, the writer thread), read back through
 * the same profile functions the HTTP routes use. The HTTP-level scenarios are
 * in tests/identity/scenarios.json; these pin the rules one by one. */
#include "test.h"
#include "sl_config.h"
#include "sl_stitch.h"
#include "sl_store.h"
#include "sl_webhooks.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    char dir[32];
    uv_loop_t loop;
    sl_config_t cfg;
    sl_stitch_t *stitch;
    sl_store_t *store;
    sl_arena_t arena;
    int n_sent;
    int untrusted;  /* messages come from a browser key (default: a trusted source) */
} fix_t;

static void on_done(sl_store_batch_t *b) { *(int *)b->data = 1; }
static void on_drained(void *arg) { *(int *)arg = 1; }

static int fix_open(fix_t *f)
{
    sl_store_options_t o = {.data_dir = f->dir, .map_size_bytes = 8 << 20, .map_size_max_bytes = 256 << 20,
                            .nosync = 1, .dedupe_window_ms = 86400000, .max_queue_messages = 100000,
                            .hooks = sl_stitch_hooks(f->stitch)};
    if (sl_store_open(&f->store, &o)) return -1;
    sl_stitch_attach(f->stitch, f->store);
    return sl_store_start(f->store, &f->loop);
}

static void fix_close_store(fix_t *f)
{
    int drained = 0;
    sl_store_drain(f->store, on_drained, &drained);
    while (!drained) uv_run(&f->loop, UV_RUN_ONCE);
    sl_store_close(f->store);
    f->store = NULL;
}

static int fix_init(fix_t *f)
{
    memset(f, 0, sizeof(*f));
    strcpy(f->dir, "/tmp/sl-stitch-test-XXXXXX");
    if (mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) || sl_config_demo(&f->cfg)) return -1;
    if ((f->stitch = sl_stitch_new(&f->cfg)) == NULL) return -1;
    return fix_open(f);
}

static void fix_free(fix_t *f)
{
    if (f->store) fix_close_store(f);
    sl_stitch_free(f->stitch);
    sl_config_free(&f->cfg);
    sl_arena_free(&f->arena);
    uv_loop_close(&f->loop);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    CHECK_INT(system(cmd), ==, 0);
}

/* One message in: type, userId, anonymousId, email trait (or previousId for
 * an alias), timestamp. Identifiers go through sl_stitch_clean_id as the
 * collector's do, so junk values become NULL here too. */
static void msg(fix_t *f, int type, const char *user, const char *anon, const char *email, int64_t ts)
{
    sl_stitch_msg_t m = {.type = type, .ts_ms = ts, .trusted = !f->untrusted};
    char mid[32];
    snprintf(mid, sizeof(mid), "m%d", ++f->n_sent);
    m.message_id = mid;
    m.user_id = sl_stitch_clean_id(f->stitch, user, &f->arena, 0);
    m.anonymous_id = sl_stitch_clean_id(f->stitch, anon, &f->arena, 0);
    if (type == SL_STITCH_ALIAS) m.previous_id = sl_stitch_clean_id(f->stitch, email, &f->arena, 0);
    else m.trait_ids[0] = sl_stitch_clean_id(f->stitch, email, &f->arena, 1);
    /* the stored JSON says what the meta says (sillage verify reads it) */
    static const char *types[] = {"", "track", "page", "screen", "identify", "alias", "group"};
    char json[512];
    int n = snprintf(json, sizeof(json), "{\"type\":\"%s\",\"messageId\":\"%s\"", types[type], mid);
    if (user) n += snprintf(json + n, sizeof(json) - (size_t)n, ",\"userId\":\"%s\"", user);
    if (anon) n += snprintf(json + n, sizeof(json) - (size_t)n, ",\"anonymousId\":\"%s\"", anon);
    if (type == SL_STITCH_ALIAS && email) n += snprintf(json + n, sizeof(json) - (size_t)n, ",\"previousId\":\"%s\"", email);
    n += snprintf(json + n, sizeof(json) - (size_t)n, "}");
    sl_store_msg_t sm = {.json = json, .json_len = (size_t)n, .received_ms = ts, .meta = &m,
                         .dedupe = sl_store_dedupe_key(f->store, "test", mid)};
    int done = 0;
    sl_store_batch_t b = {.msgs = &sm, .n_msgs = 1, .done = on_done, .data = &done};
    CHECK_INT(sl_store_submit(f->store, &b), ==, 0);
    while (!done) uv_run(&f->loop, UV_RUN_ONCE);
    CHECK_INT(b.rc, ==, 0);
    CHECK_INT(sm.status, ==, SL_STORE_STORED);
}

typedef struct {
    sl_stitch_t *s;
    const char *kind, *id;
    int which; /* 0 profile, 1 timeline, 2 merges */
    int rc;
    sl_buf_t out;
} read_t;

static int read_cb(MDB_txn *txn, void *arg)
{
    read_t *r = arg;
    if (r->which == 0) r->rc = sl_stitch_profile(r->s, txn, r->kind, r->id, &r->out);
    else if (r->which == 1) r->rc = sl_stitch_timeline(r->s, txn, r->kind, r->id, 1000, NULL, &r->out);
    else r->rc = sl_stitch_merges(r->s, txn, r->kind, r->id, &r->out);
    return 0;
}

/* The parsed answer of a read, or NULL when no person has that identifier. */
static cJSON *get(fix_t *f, int which, const char *kind, const char *id)
{
    read_t r = {.s = f->stitch, .kind = kind, .id = id, .which = which};
    CHECK_INT(sl_store_read(f->store, read_cb, &r), ==, 0);
    cJSON *doc = r.rc == 0 ? cJSON_ParseWithLength(r.out.data, r.out.len) : NULL;
    if (r.rc && r.rc != SL_ENOTFOUND) CHECK_INT(r.rc, ==, 0);
    sl_buf_free(&r.out);
    return doc;
}

static const char *person_of(fix_t *f, const char *kind, const char *id, char out[32])
{
    cJSON *p = get(f, 0, kind, id);
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(p, "id");
    snprintf(out, 32, "%s", cJSON_IsString(pid) ? pid->valuestring : "(none)");
    cJSON_Delete(p);
    return out;
}

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
    CHECK_STR(person_of(&f, "anonymous_id", "a1", pa), person_of(&f, "user_id", "u1", pu));
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
    CHECK_STR(person_of(&f, "anonymous_id", "laptop", a), person_of(&f, "anonymous_id", "phone", b));
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
    CHECK_STR(person_of(&f, "anonymous_id", "kiosk", b), a);
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
    CHECK_STR(person_of(&f, "user_id", "old-id", a), person_of(&f, "user_id", "new-id", b));
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
    CHECK_STR(person_of(&f, "anonymous_id", "anon-z", a), person_of(&f, "user_id", "attacker", b));
    f.untrusted = 0;

    /* email seen on an anonymous visitor joins the owner of that email,
     * matched trimmed and lower-cased */
    msg(&f, SL_STITCH_IDENTIFY, "carol", "c1", "carol@example.com", 2000);
    msg(&f, SL_STITCH_PAGE, NULL, "c2", NULL, 2100);
    msg(&f, SL_STITCH_IDENTIFY, NULL, "c2", "  Carol@Example.COM ", 2200);
    CHECK_STR(person_of(&f, "anonymous_id", "c2", a), person_of(&f, "user_id", "carol", b));
    CHECK_STR(person_of(&f, "email", "carol@example.com", a), b);
    /* an anonymousId never seen before, with carol's email (a newsletter
     * signup): the person made for it is merged before it was ever saved
     * (issue 13, H1: MDB_NOTFOUND failed the whole commit) */
    msg(&f, SL_STITCH_IDENTIFY, NULL, "brand-new-anon", "carol@example.com", 2250);
    CHECK_STR(person_of(&f, "anonymous_id", "brand-new-anon", a), b);

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
    sl_stitch_msg_t m = {.type = SL_STITCH_IDENTIFY, .user_id = "t1", .message_id = "tr1", .ts_ms = 5000,
                         .traits_json = "{\"plan\":\"pro\",\"name\":\"T\"}"};
    sl_stitch_msg_t late = {.type = SL_STITCH_IDENTIFY, .user_id = "t1", .message_id = "tr2", .ts_ms = 4000,
                            .traits_json = "{\"plan\":\"free\",\"city\":\"Lyon\"}"};
    sl_store_msg_t sm[2] = {
        {.json = "{}", .json_len = 2, .received_ms = 1, .meta = &m, .dedupe = sl_store_dedupe_key(f.store, "t", "tr1")},
        {.json = "{}", .json_len = 2, .received_ms = 1, .meta = &late,
         .dedupe = sl_store_dedupe_key(f.store, "t", "tr2")}};
    int done = 0;
    sl_store_batch_t bt = {.msgs = sm, .n_msgs = 2, .done = on_done, .data = &done};
    CHECK_INT(sl_store_submit(f.store, &bt), ==, 0);
    while (!done) uv_run(&f.loop, UV_RUN_ONCE);
    cJSON *p = get(&f, 0, "user_id", "t1");
    const cJSON *traits = cJSON_GetObjectItemCaseSensitive(p, "traits");
    const cJSON *plan = cJSON_GetObjectItemCaseSensitive(traits, "plan");
    const cJSON *city = cJSON_GetObjectItemCaseSensitive(traits, "city");
    CHECK_STR(cJSON_IsString(plan) ? plan->valuestring : NULL, "pro"); /* set at 5000, not overridden by 4000 */
    CHECK_STR(cJSON_IsString(city) ? city->valuestring : NULL, "Lyon");
    cJSON_Delete(p);
    fix_free(&f);
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
    CHECK_STR(person_of(&f, "anonymous_id", "e1", a), person_of(&f, "user_id", "eve", b));

    sl_stitch_erase_t er = {.stitch = f.stitch, .kind = "anonymous_id", .id = "e1"};
    int done = 0;
    sl_store_batch_t bt = {.job = sl_stitch_erase_job, .job_arg = &er, .done = on_done, .data = &done};
    CHECK_INT(sl_store_submit(f.store, &bt), ==, 0);
    while (!done) uv_run(&f.loop, UV_RUN_ONCE);
    CHECK_INT(bt.rc, ==, 0);
    CHECK_INT(er.found, ==, 1);
    CHECK_INT(er.events, ==, 2);
    CHECK_INT(er.identities, ==, 2);
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
    sl_stitch_t *s;
    sl_store_t *st;
    sl_verify_report_t rep;
    FILE *out;
} verify_req_t;

static int verify_cb(MDB_txn *txn, void *arg)
{
    verify_req_t *q = arg;
    return sl_stitch_verify(q->s, txn, q->st, q->out, &q->rep);
}

static uint64_t verify_problems(fix_t *f)
{
    verify_req_t q = {.s = f->stitch, .st = f->store, .out = fopen("/dev/null", "w")};
    CHECK_INT(sl_store_read(f->store, verify_cb, &q), ==, 0);
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
    CHECK_INT(mdb_env_open(env, f->dir, 0, 0640), ==, 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &txn), ==, 0);
    CHECK_INT(mdb_dbi_open(txn, db, 0, &dbi), ==, 0);
    CHECK_INT(mdb_cursor_open(txn, dbi, &cur), ==, 0);
    CHECK_INT(mdb_cursor_get(cur, &k, &v, MDB_FIRST), ==, 0);
    CHECK_INT(mdb_cursor_del(cur, 0), ==, 0);
    mdb_cursor_close(cur);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
}

TEST(stitch_verify_finds_damage)
{
    const char *dbs[] = {"tl", "ids", "persons"};
    for (int i = 0; i < 3; i++) {
        fix_t f;
        if (fix_init(&f)) { CHECK(!"fixture"); return; }
        msg(&f, SL_STITCH_PAGE, NULL, "v1", NULL, 1000);
        msg(&f, SL_STITCH_IDENTIFY, "vu", "v1", "v@example.com", 2000);
        msg(&f, SL_STITCH_PAGE, NULL, "v2", NULL, 3000);
        CHECK_INT(verify_problems(&f), ==, 0); /* a sound store */
        if (verify_problems(&f)) {
            verify_req_t q = {.s = f.stitch, .st = f.store, .out = stderr};
            sl_store_read(f.store, verify_cb, &q);
        }
        fix_close_store(&f);
        drop_first(&f, dbs[i]);
        CHECK_INT(fix_open(&f), ==, 0);
        if (verify_problems(&f) == 0) fprintf(stderr, "  damage to %s not found\n", dbs[i]);
        CHECK_INT(verify_problems(&f), >, 0);
        fix_free(&f);
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
