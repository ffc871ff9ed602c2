/* test_feed.c - the feed component (feed/sl_feed.h): the entry header's
 * codec, entries written before it, the entity index, filters, erasure and
 * verify, on a real LMDB environment driven by the stage offline. */
#include "sl_feed.h"
#include "sl_stage.h"
#include "sl_store.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <lmdb.h>
#include <stdlib.h>
#include <sys/stat.h>

static const char *str_of(const char *p, size_t n, char *buf, size_t cap)
{
    if (p == NULL) return NULL;
    if (n >= cap) n = cap - 1;
    memcpy(buf, p, n);
    buf[n] = 0;
    return buf;
}

TEST(entity_text_table)
{
    static const struct {
        const char *s;
        int ok;
        uint64_t id;
    } t[] = {
        {"p_0", 1, 0},          {"p_1", 1, 1},        {"p_18446744073709551615", 1, UINT64_MAX},
        {"p_18446744073709551616", 0, 0}, {"p_", 0, 0}, {"p_01", 0, 0}, {"p_1x", 0, 0},
        {"q_1", 0, 0},          {"p-1", 0, 0},        {"p_-1", 0, 0},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        sl_entity_t e = {0, 0};
        int rc = sl_entity_parse(t[i].s, strlen(t[i].s), &e);
        if ((rc == 0) != t[i].ok || (t[i].ok && (e.id != t[i].id || e.kind != SL_ENTITY_PERSON))) {
            fprintf(stderr, "  entity \"%s\": rc %d id %llu, wanted ok %d id %llu\n", t[i].s, rc,
                    (unsigned long long)e.id, t[i].ok, (unsigned long long)t[i].id);
            test_failures++;
        }
        if (t[i].ok) {
            char back[SL_ENTITY_STR_BYTES];
            CHECK_INT(sl_entity_format(e, back), ==, strlen(t[i].s));
            CHECK_STR(back, t[i].s);
        }
    }
    char out[SL_ENTITY_STR_BYTES];
    CHECK_INT(sl_entity_format((sl_entity_t){7, 1}, out), ==, 0);
}

TEST(feed_header_codec)
{
    char longrule[301];
    memset(longrule, 'r', 300);
    longrule[300] = 0;
    static const char json[] = "{\"seq\":1}";
    const sl_feed_entry_t cases[] = {
        {.at_ms = 1764000000123, .entity = {SL_ENTITY_PERSON, 42}, .rule = "cart", .type = "abandoned_cart",
         .cause = "m-1"},
        {.at_ms = 1, .entity = {SL_ENTITY_PERSON, UINT64_MAX}, .rule = NULL, .type = "profile_erased"},
        {.at_ms = 1764000000000, .entity = {0, 0}, .rule = longrule, .type = "event", .cause = "m-2"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const sl_feed_entry_t *e = &cases[i];
        sl_buf_t b = {0};
        uint64_t h = e->cause ? sl_feed_mid_hash(e->cause, strlen(e->cause)) : 0;
        REQUIRE(sl_feed_encode(&b, e, h) == 0);
        sl_buf_append(&b, json, sizeof(json) - 1);
        sl_feed_item_t it = {.seq = 9};
        CHECK_INT(sl_feed_decode(b.data, b.len, &it), ==, 0);
        CHECK_INT(it.seq, ==, 9);
        CHECK_INT(it.at_ms, ==, e->at_ms);
        CHECK_INT(it.entity.kind, ==, e->entity.kind);
        CHECK(it.entity.id == e->entity.id);
        CHECK(it.cause_hash == h);
        char r[400], ty[64], js[64];
        if (e->rule) CHECK_STR(str_of(it.rule, it.rule_len, r, sizeof(r)), e->rule);
        else CHECK_NULL(it.rule);
        CHECK_STR(str_of(it.type, it.type_len, ty, sizeof(ty)), e->type);
        CHECK_STR(str_of(it.json, it.len, js, sizeof(js)), json);
        CHECK_INT(it.old_layout, ==, 0);
        /* another version, or a value cut short, is neither layout */
        ((unsigned char *)b.data)[1] = 2;
        CHECK_INT(sl_feed_decode(b.data, b.len, &it), ==, SL_EINVAL);
        ((unsigned char *)b.data)[1] = 1;
        CHECK_INT(sl_feed_decode(b.data, SL_FEED_HEADER_BYTES + 1, &it), ==, SL_EINVAL);
        sl_buf_free(&b);
    }
    /* bounds: no type, a type past 255 bytes, an empty rule */
    char longtype[300];
    memset(longtype, 't', 299);
    longtype[299] = 0;
    sl_buf_t b = {0};
    CHECK_INT(sl_feed_encode(&b, &(sl_feed_entry_t){.type = NULL}, 0), ==, SL_EINVAL);
    CHECK_INT(sl_feed_encode(&b, &(sl_feed_entry_t){.type = longtype}, 0), ==, SL_EINVAL);
    CHECK_INT(sl_feed_encode(&b, &(sl_feed_entry_t){.type = "t", .rule = ""}, 0), ==, SL_EINVAL);
    sl_buf_free(&b);
}

/* An entry as the trigger engine wrote it before the header: 8 bytes of
 * host-order at_ms, then the JSON. */
static void old_value(sl_buf_t *b, int64_t at_ms, const char *json)
{
    b->len = 0;
    sl_buf_append(b, &at_ms, 8);
    sl_buf_appends(b, json);
}

TEST(feed_old_layout_read)
{
    sl_buf_t b = {0};
    /* an at_ms whose low byte is the magic: still an old entry (its 8th byte is 0) */
    int64_t at = (int64_t)0x0000019b000000F5LL;
    old_value(&b, at,
              "{\"seq\":3,\"id\":\"x\",\"rule\":\"cart\",\"type\":\"abandoned_cart\",\"at\":\"\","
              "\"profile\":{\"id\":\"p_17\"},\"cause\":{\"messageId\":\"m-9\"},\"data\":{}}");
    sl_feed_item_t it = {.seq = 3};
    CHECK_INT(sl_feed_decode(b.data, b.len, &it), ==, 1);
    CHECK_INT(it.old_layout, ==, 1);
    CHECK_INT(it.at_ms, ==, at);
    cJSON *doc = NULL;
    REQUIRE(sl_feed_item_parse(&it, &doc) == 0);
    char r[32], ty[32];
    CHECK_STR(str_of(it.rule, it.rule_len, r, sizeof(r)), "cart");
    CHECK_STR(str_of(it.type, it.type_len, ty, sizeof(ty)), "abandoned_cart");
    CHECK_INT(it.entity.kind, ==, SL_ENTITY_PERSON);
    CHECK_INT(it.entity.id, ==, 17);
    CHECK(it.cause_hash == sl_feed_mid_hash("m-9", 3));
    cJSON_Delete(doc);
    /* profile_erased: no rule, no cause */
    old_value(&b, 5, "{\"seq\":4,\"rule\":null,\"type\":\"profile_erased\",\"profile\":{\"id\":\"p_2\"},\"cause\":null}");
    it = (sl_feed_item_t){.seq = 4};
    CHECK_INT(sl_feed_decode(b.data, b.len, &it), ==, 1);
    REQUIRE(sl_feed_item_parse(&it, &doc) == 0);
    CHECK_NULL(it.rule);
    CHECK(it.cause_hash == 0);
    CHECK_INT(it.entity.id, ==, 2);
    cJSON_Delete(doc);
    /* not JSON: SL_EINVAL, at_ms still read */
    old_value(&b, 6, "{\"value\":inf}");
    it = (sl_feed_item_t){.seq = 5};
    CHECK_INT(sl_feed_decode(b.data, b.len, &it), ==, 1);
    CHECK_INT(sl_feed_item_parse(&it, &doc), ==, SL_EINVAL);
    CHECK_INT(it.at_ms, ==, 6);
    sl_buf_free(&b);
}

/* ---- a feed over a real derived environment ---- */

typedef struct {
    char dir[64], ddir[96];
    sl_store_t *store;
    sl_stage_t *stage;
    sl_feed_t *feed;
} ffix_t;

static int ffix_open(ffix_t *x)
{
    sl_store_options_t o = {.data_dir = x->dir, .map_size_bytes = 8 << 20, .map_size_max_bytes = 256 << 20,
                            .nosync = 1, .dedupe_window_ms = 86400000, .max_queue_messages = 1000};
    if (sl_store_open(&x->store, &o)) return -1;
    snprintf(x->ddir, sizeof(x->ddir), "%s/derived", x->dir);
    sl_stage_options_t so = {.dir = x->ddir, .map_size_bytes = 8 << 20, .map_size_max_bytes = 256 << 20, .nosync = 1};
    if ((x->stage = sl_stage_new(x->store, &so)) == NULL || (x->feed = sl_feed_new(30LL * 86400000)) == NULL) return -1;
    if (sl_feed_attach(x->feed, x->stage) || sl_stage_open(x->stage)) return -1;
    return 0;
}

static void ffix_close(ffix_t *x)
{
    sl_stage_free(x->stage);
    sl_feed_free(x->feed);
    sl_store_close(x->store);
    x->stage = NULL;
    x->feed = NULL;
    x->store = NULL;
}

/* Runs job(txn, arg) in one stage transaction, offline; the feed sees it durable. */
static int ffix_run(ffix_t *x, int (*job)(MDB_txn *, void *), void *arg)
{
    sl_stage_job_t j = {.run = job, .arg = arg};
    return sl_stage_catch_up(x->stage, &j, 0, NULL, NULL);
}

typedef struct {
    sl_feed_t *feed;
    int n;            /* entries to append: person i % 5 + 1, rule "r<i % 3>" */
    uint64_t removed;
    uint64_t persons[2];
    size_t n_persons;
} app_arg_t;

static int append_many(MDB_txn *txn, void *arg)
{
    app_arg_t *a = arg;
    for (int i = 0; i < a->n; i++) {
        char rule[8], data[32], mid[16], profile[48];
        snprintf(rule, sizeof(rule), "r%d", i % 3);
        snprintf(data, sizeof(data), "{\"i\":%d}", i);
        snprintf(mid, sizeof(mid), "m%d", i);
        snprintf(profile, sizeof(profile), "{\"id\":\"p_%d\"}", i % 5 + 1);
        sl_feed_entry_t e = {.at_ms = sl_now_ms(), .entity = {SL_ENTITY_PERSON, (uint64_t)(i % 5 + 1)}, .rule = rule,
                             .type = i % 10 == 9 ? "other" : "event", .cause = mid, .profile = profile,
                             .data = data};
        int rc = sl_feed_append(a->feed, txn, &e, NULL);
        if (rc) return rc;
    }
    return 0;
}

static int forget_job(MDB_txn *txn, void *arg)
{
    app_arg_t *a = arg;
    return sl_feed_forget(a->feed, txn, SL_ENTITY_PERSON, a->persons, a->n_persons, &a->removed);
}

typedef struct {
    sl_feed_t *feed;
    uint64_t after;
    size_t limit;
    const sl_feed_filter_t *flt;
    uint64_t seqs[256];
    uint64_t persons[256];
    long n, got;
    uint64_t last;
    uint64_t problems, n_feed;
} rd_t;

static int take(const sl_feed_item_t *it, void *arg)
{
    rd_t *r = arg;
    if (r->got < 256) {
        r->seqs[r->got] = it->seq;
        r->persons[r->got] = it->entity.id;
    }
    r->got++;
    return 0;
}

static int rd_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    rd_t *r = arg;
    r->got = 0;
    long n = sl_feed_foreach(r->feed, txn, r->after, r->limit, r->flt, take, r, &r->last);
    (void)n;
    r->n = n;
    return n < 0 ? SL_ESTORE : 0;
}

static int all_there(const char *id, void *arg)
{
    (void)id;
    (void)arg;
    return 1;
}

static int verify_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    rd_t *r = arg;
    r->problems = r->n_feed = 0;
    FILE *out = fopen("/dev/null", "w");
    int rc = sl_feed_verify(r->feed, txn, all_there, NULL, out ? out : stderr, &r->n_feed, &r->problems);
    if (out) fclose(out);
    return rc;
}

/* the take() callback collects at most 256: counts rely on n */
static long read_with(ffix_t *x, rd_t *r, uint64_t after, size_t limit, const sl_feed_filter_t *flt)
{
    r->feed = x->feed;
    r->after = after;
    r->limit = limit;
    r->flt = flt;
    return sl_stage_read(x->stage, 0, rd_cb, r) ? -1 : r->n;
}

TEST(feed_index_filters_erasure)
{
    ffix_t x = {.dir = "/tmp/sl-feed-test-XXXXXX"};
    REQUIRE(mkdtemp(x.dir) != NULL);
    REQUIRE(ffix_open(&x) == 0);
    app_arg_t a = {.feed = x.feed, .n = 100};
    REQUIRE(ffix_run(&x, append_many, &a) == 0);
    CHECK_INT(sl_feed_durable_seq(x.feed), ==, 100);

    static rd_t r;
    /* unfiltered: all, in order */
    CHECK_INT(read_with(&x, &r, 0, 1000, NULL), ==, 100);
    CHECK_INT(r.last, ==, 100);
    /* a rule: i % 3 == 1 -> 33 entries; two rules: 66 */
    const char *one[] = {"r1"}, *two[] = {"r1", "r2"}, *none[] = {"nope"};
    sl_feed_filter_t f1 = {.rules = one, .n_rules = 1};
    CHECK_INT(read_with(&x, &r, 0, 1000, &f1), ==, 33);
    CHECK_INT(r.seqs[0], ==, 2);
    sl_feed_filter_t f2 = {.rules = two, .n_rules = 2};
    CHECK_INT(read_with(&x, &r, 0, 1000, &f2), ==, 66);
    /* a type: i % 10 == 9 -> 10 entries, the first i = 9 (seq 10) */
    sl_feed_filter_t ft = {.type = "other"};
    CHECK_INT(read_with(&x, &r, 0, 1000, &ft), ==, 10);
    CHECK_INT(r.seqs[0], ==, 10);
    /* rule and type together */
    sl_feed_filter_t frt = {.rules = one, .n_rules = 1, .type = "other"}; /* i % 3 == 1 and i % 10 == 9: 19, 49, 79 */
    CHECK_INT(read_with(&x, &r, 0, 1000, &frt), ==, 3);
    CHECK_INT(r.seqs[0], ==, 20);
    /* the scan bound: nothing matches, next is the last entry looked at */
    sl_feed_filter_t fn = {.rules = none, .n_rules = 1, .max_scan = 40};
    CHECK_INT(read_with(&x, &r, 0, 1000, &fn), ==, 0);
    CHECK_INT(r.last, ==, 40);
    CHECK_INT(read_with(&x, &r, 40, 1000, &fn), ==, 0);
    CHECK_INT(r.last, ==, 80);
    /* limit stops at the last one delivered */
    CHECK_INT(read_with(&x, &r, 0, 5, &f1), ==, 5);
    CHECK_INT(r.last, ==, 14);
    /* an entity, through the index: person 3 has i % 5 == 2 -> 20 entries */
    sl_entity_t p3 = {SL_ENTITY_PERSON, 3};
    sl_feed_filter_t fe = {.entity = &p3};
    CHECK_INT(read_with(&x, &r, 0, 1000, &fe), ==, 20);
    CHECK_INT(r.seqs[0], ==, 3);
    CHECK_INT(r.persons[19], ==, 3);
    CHECK_INT(read_with(&x, &r, 50, 1000, &fe), ==, 10);

    /* erasure: persons 2 and 4 (40 entries) go, nothing else */
    a.persons[0] = 2, a.persons[1] = 4, a.n_persons = 2;
    REQUIRE(ffix_run(&x, forget_job, &a) == 0);
    CHECK_INT(a.removed, ==, 40);
    CHECK_INT(read_with(&x, &r, 0, 1000, NULL), ==, 60);
    for (long i = 0; i < r.n; i++) CHECK(r.persons[i] != 2 && r.persons[i] != 4);
    sl_entity_t p2 = {SL_ENTITY_PERSON, 2};
    sl_feed_filter_t fe2 = {.entity = &p2};
    CHECK_INT(read_with(&x, &r, 0, 1000, &fe2), ==, 0);
    /* a second erasure of them finds nothing */
    REQUIRE(ffix_run(&x, forget_job, &a) == 0);
    CHECK_INT(a.removed, ==, 0);
    r.feed = x.feed;
    REQUIRE(sl_stage_read(x.stage, 0, verify_cb, &r) == 0);
    CHECK_INT(r.n_feed, ==, 60);
    CHECK_INT(r.problems, ==, 0);
    ffix_close(&x);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", x.dir);
    CHECK_INT(system(cmd), ==, 0);
}

/* A derived store written before the header and the entity index: its
 * entries are indexed at open, read, filtered, erased and verified. */
TEST(feed_old_store_indexed_at_open)
{
    ffix_t x = {.dir = "/tmp/sl-feed-old-XXXXXX"};
    REQUIRE(mkdtemp(x.dir) != NULL);
    snprintf(x.ddir, sizeof(x.ddir), "%s/derived", x.dir);
    REQUIRE(mkdir(x.ddir, 0700) == 0);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi feed, tmeta;
    REQUIRE(mdb_env_create(&env) == 0);
    mdb_env_set_maxdbs(env, 64);
    mdb_env_set_mapsize(env, 8 << 20);
    REQUIRE(mdb_env_open(env, x.ddir, MDB_NOSYNC, 0600) == 0);
    REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    REQUIRE(mdb_dbi_open(txn, "feed", MDB_CREATE | MDB_INTEGERKEY, &feed) == 0);
    REQUIRE(mdb_dbi_open(txn, "tmeta", MDB_CREATE, &tmeta) == 0);
    sl_buf_t b = {0};
    for (uint64_t seq = 1; seq <= 6; seq++) {
        char json[256];
        snprintf(json, sizeof(json),
                 "{\"seq\":%llu,\"id\":\"i%llu\",\"rule\":\"%s\",\"type\":\"page_visit\",\"at\":\"\","
                 "\"profile\":{\"id\":\"p_%llu\"},\"cause\":null,\"data\":{}}",
                 (unsigned long long)seq, (unsigned long long)seq, seq % 2 ? "odd" : "even",
                 (unsigned long long)(seq <= 3 ? 1 : 2));
        old_value(&b, sl_now_ms(), json);
        MDB_val k = {8, &seq}, v = {b.len, b.data};
        REQUIRE(mdb_put(txn, feed, &k, &v, MDB_APPEND) == 0);
    }
    uint64_t last = 6;
    MDB_val lk = {9, "feed_last"}, lv = {8, &last};
    REQUIRE(mdb_put(txn, tmeta, &lk, &lv, 0) == 0);
    REQUIRE(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
    sl_buf_free(&b);

    REQUIRE(ffix_open(&x) == 0); /* builds fcause and fentity */
    CHECK_INT(sl_feed_durable_seq(x.feed), ==, 6);
    static rd_t r;
    const char *odd[] = {"odd"};
    sl_feed_filter_t fo = {.rules = odd, .n_rules = 1};
    CHECK_INT(read_with(&x, &r, 0, 100, &fo), ==, 3);
    CHECK_INT(r.seqs[1], ==, 3);
    sl_entity_t p2 = {SL_ENTITY_PERSON, 2};
    sl_feed_filter_t fe = {.entity = &p2};
    CHECK_INT(read_with(&x, &r, 0, 100, &fe), ==, 3);
    /* a new entry beside the old ones */
    app_arg_t a = {.feed = x.feed, .n = 1};
    REQUIRE(ffix_run(&x, append_many, &a) == 0); /* person 1, rule r0 */
    CHECK_INT(read_with(&x, &r, 0, 100, NULL), ==, 7);
    a.persons[0] = 1, a.n_persons = 1;
    REQUIRE(ffix_run(&x, forget_job, &a) == 0);
    CHECK_INT(a.removed, ==, 4); /* three old, one new */
    CHECK_INT(read_with(&x, &r, 0, 100, NULL), ==, 3);
    CHECK_INT(r.seqs[0], ==, 4);
    r.feed = x.feed;
    REQUIRE(sl_stage_read(x.stage, 0, verify_cb, &r) == 0);
    CHECK_INT(r.n_feed, ==, 3);
    CHECK_INT(r.problems, ==, 0);
    ffix_close(&x);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", x.dir);
    CHECK_INT(system(cmd), ==, 0);
}

/* Entries of different ages: 3 past the 30-day retention, then 2 fresh. */
static int append_aged(MDB_txn *txn, void *arg)
{
    sl_feed_t *f = arg;
    for (int i = 0; i < 5; i++) {
        sl_feed_entry_t e = {.at_ms = sl_now_ms() - (i < 3 ? 40LL : 0) * 86400000, .entity = {SL_ENTITY_PERSON, 1},
                             .rule = "r", .type = "event", .profile = "{\"id\":\"p_1\"}", .data = "{}"};
        int rc = sl_feed_append(f, txn, &e, NULL);
        if (rc) return rc;
    }
    return 0;
}

/* Retention says how far it removed (a reader after an older position
 * misses entries: the feed route answers 410), and a restart remembers. */
TEST(feed_pruned_position)
{
    ffix_t x = {0};
    strcpy(x.dir, "/tmp/sl-feed-pruned-XXXXXX");
    REQUIRE(mkdtemp(x.dir) != NULL);
    REQUIRE(ffix_open(&x) == 0);
    CHECK_INT(sl_feed_pruned_upto(x.feed), ==, 0);
    REQUIRE(ffix_run(&x, append_aged, x.feed) == 0); /* the prune is due at once: it runs after the job */
    CHECK_INT(sl_feed_pruned_upto(x.feed), ==, 3);
    ffix_close(&x);
    REQUIRE(ffix_open(&x) == 0);
    CHECK_INT(sl_feed_pruned_upto(x.feed), ==, 3);
    ffix_close(&x);
}
