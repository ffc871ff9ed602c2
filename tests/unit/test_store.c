/* test_store.c - the dedupe table, and the store with its writer thread on a
 * real LMDB environment in a temporary directory. */
#include "test.h"
#include "sl_store.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static sl_hash128_t key(uint64_t i)
{
    return sl_hash128(&i, sizeof(i), 42);
}

TEST(dedupe_window)
{
    sl_dedupe_t *d = sl_dedupe_new(1000, 1000000);
    CHECK_INT(sl_dedupe_check_insert(d, key(1), 100, 100), ==, 0);
    CHECK_INT(sl_dedupe_check_insert(d, key(1), 200, 200), ==, 1);
    CHECK_INT(sl_dedupe_check_insert(d, key(2), 200, 200), ==, 0);
    /* past the window the same id is a new message */
    CHECK_INT(sl_dedupe_check_insert(d, key(1), 1200, 1200), ==, 0);
    CHECK_INT(sl_dedupe_check_insert(d, key(1), 1300, 1300), ==, 1);
    sl_dedupe_free(d);
}

TEST(dedupe_rollback)
{
    sl_dedupe_t *d = sl_dedupe_new(86400000, 1000000);
    CHECK_INT(sl_dedupe_check_insert(d, key(1), 0, 0), ==, 0);
    sl_dedupe_mark(d);
    CHECK_INT(sl_dedupe_check_insert(d, key(2), 0, 0), ==, 0);
    CHECK_INT(sl_dedupe_check_insert(d, key(3), 0, 0), ==, 0);
    CHECK_INT(sl_dedupe_check_insert(d, key(1), 0, 0), ==, 1);
    sl_dedupe_rollback(d); /* the transaction failed: 2 and 3 were never stored */
    CHECK_INT(sl_dedupe_check_insert(d, key(2), 0, 0), ==, 0);
    CHECK_INT(sl_dedupe_check_insert(d, key(3), 0, 0), ==, 0);
    CHECK_INT(sl_dedupe_check_insert(d, key(1), 0, 0), ==, 1);
    sl_dedupe_free(d);
}

TEST(dedupe_growth_and_expiry)
{
    sl_dedupe_t *d = sl_dedupe_new(1000, 1000000);
    for (uint64_t i = 0; i < 200000; i++) {
        int64_t t = (int64_t)(i / 100); /* 100 ids per ms: 100k ids per window */
        if (sl_dedupe_check_insert(d, key(i), t, t) != 0) {
            CHECK_INT(i, ==, -1);
            break;
        }
    }
    CHECK_INT(sl_dedupe_size(d), <=, 200000);
    CHECK_INT(sl_dedupe_check_insert(d, key(199999), 1999, 1999), ==, 1);
    CHECK_INT(sl_dedupe_check_insert(d, key(150000), 1999, 1999), ==, 1);
    CHECK_INT(sl_dedupe_check_insert(d, key(5), 1999, 1999), ==, 0); /* expired */
    sl_dedupe_free(d);
}

/* Issue 13, M8: the table holds at most max_ids ids; past it the oldest are
 * forgotten (counted, the window in force shrinks) and memory stays bounded. */
TEST(dedupe_bounded)
{
    sl_dedupe_t *d = sl_dedupe_new(86400000, 10000);
    for (uint64_t i = 0; i < 100000; i++) { /* one id per ms, all inside the 24 h window */
        int rc = sl_dedupe_check_insert(d, key(i), (int64_t)i, (int64_t)i);
        if (rc != 0) {
            CHECK_INT(rc, ==, 0);
            break;
        }
        if (sl_dedupe_size(d) > 10000) {
            CHECK_INT(sl_dedupe_size(d), <=, 10000);
            break;
        }
    }
    CHECK_INT(sl_dedupe_evicted(d), >=, 90000);
    /* the newest ids are still known; the window in force says how far back */
    CHECK_INT(sl_dedupe_check_insert(d, key(99999), 99999, 99999), ==, 1);
    CHECK_INT(sl_dedupe_check_insert(d, key(95000), 99999, 99999), ==, 1);
    int64_t win = sl_dedupe_window_ms(d, 100000);
    CHECK_INT(win, <, 86400000);
    CHECK_INT(win, >=, 5000);
    /* an id older than the window in force is a new message, and says so in the counters above */
    CHECK_INT(sl_dedupe_check_insert(d, key(5), 100000, 100000), ==, 0);
    sl_dedupe_free(d);

    /* a burst in one instant past the bound: the floor never moves into the
     * future (the review's case: one old id, then 1,200 at once) */
    d = sl_dedupe_new(86400000, 1000);
    CHECK_INT(sl_dedupe_check_insert(d, key(1000000), 1000, 1000), ==, 0);
    for (uint64_t i = 0; i < 1200; i++) CHECK_INT(sl_dedupe_check_insert(d, key(2000000 + i), 600000, 600000), ==, 0);
    CHECK_INT(sl_dedupe_size(d), <=, 1000);
    CHECK_INT(sl_dedupe_window_ms(d, 600000), >=, 5000);
    /* what is still held is found; ids inserted now are not born expired */
    CHECK_INT(sl_dedupe_check_insert(d, key(3000000), 600000, 600000), ==, 0);
    CHECK_INT(sl_dedupe_check_insert(d, key(3000000), 600000, 600000), ==, 1);
    sl_dedupe_free(d);
}

/* ---- the store with its writer ---------------------------------------------- */

typedef struct {
    int done;
    int rc;
} result_t;

static void on_done(sl_store_batch_t *b)
{
    result_t *r = b->data;
    r->done = 1;
    r->rc = b->rc;
}

static void on_drained(void *arg)
{
    *(int *)arg = 1;
}

static int run_batch(sl_store_t *st, uv_loop_t *loop, sl_store_msg_t *msgs, size_t n)
{
    result_t res = {0};
    sl_store_batch_t b = {.msgs = msgs, .n_msgs = n, .done = on_done, .data = &res};
    int rc = sl_store_submit(st, &b);
    if (rc) return rc;
    while (!res.done) uv_run(loop, UV_RUN_ONCE);
    return res.rc;
}

static int count_cb(const char *json, size_t len, uint64_t seq, void *arg)
{
    uint64_t *n = arg;
    (*n)++;
    return json[0] == '{' && len > 0 && seq == *n ? 0 : -1;
}

static sl_store_t *open_store(const char *dir, int read_only)
{
    sl_store_t *st = NULL;
    sl_store_options_t o = {.data_dir = dir, .map_size_bytes = 1 << 20, .map_size_max_bytes = 64 << 20,
                            .nosync = 0, .dedupe_window_ms = 86400000, .max_queue_messages = 1000,
                            .read_only = read_only};
    int rc = sl_store_open(&st, &o);
    CHECK_INT(rc, ==, 0);
    return st;
}

static void close_store(sl_store_t *st, uv_loop_t *loop)
{
    int drained = 0;
    sl_store_drain(st, on_drained, &drained);
    while (!drained) uv_run(loop, UV_RUN_ONCE);
    sl_store_close(st);
}

TEST(store_commit_dedupe_restart_grow)
{
    char dir[] = "/tmp/sl-store-test-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sl_store_t *st = open_store(dir, 0);
    if (st == NULL) return;
    CHECK_INT(sl_store_start(st, &loop), ==, 0);

    int64_t now = sl_now_ms();
    sl_store_msg_t m[3] = {
        {.json = "{\"a\":1}", .json_len = 7, .dedupe = sl_store_dedupe_key(st, "src", "m1"), .received_ms = now},
        {.json = "{\"a\":2}", .json_len = 7, .dedupe = sl_store_dedupe_key(st, "src", "m2"), .received_ms = now},
        {.json = "{\"a\":1}", .json_len = 7, .dedupe = sl_store_dedupe_key(st, "src", "m1"), .received_ms = now},
    };
    CHECK_INT(run_batch(st, &loop, m, 3), ==, 0);
    CHECK_INT(m[0].status, ==, SL_STORE_STORED);
    CHECK_INT(m[1].status, ==, SL_STORE_STORED);
    CHECK_INT(m[2].status, ==, SL_STORE_DUPLICATE); /* same id in the same commit */
    CHECK_INT(m[0].seq, ==, 1);
    CHECK_INT(m[1].seq, ==, 2);
    /* same messageId from another source is another message */
    sl_store_msg_t other = {.json = "{\"a\":3}", .json_len = 7, .dedupe = sl_store_dedupe_key(st, "other", "m1"),
                            .received_ms = now};
    CHECK_INT(run_batch(st, &loop, &other, 1), ==, 0);
    CHECK_INT(other.status, ==, SL_STORE_STORED);

    /* fill past the 1 MB initial map: it must grow, not fail */
    static char big[4000];
    memset(big, 'x', sizeof(big));
    big[0] = '{';
    size_t n_big = 600;
    sl_store_msg_t *many = calloc(n_big, sizeof(*many));
    char ids[600][16];
    for (size_t i = 0; i < n_big; i++) {
        snprintf(ids[i], sizeof(ids[i]), "big-%zu", i);
        many[i] = (sl_store_msg_t){.json = big, .json_len = sizeof(big), .received_ms = now,
                                   .dedupe = sl_store_dedupe_key(st, "src", ids[i])};
    }
    CHECK_INT(run_batch(st, &loop, many, n_big), ==, 0);
    CHECK_INT(many[n_big - 1].status, ==, SL_STORE_STORED);
    sl_store_stats_t s;
    sl_store_get_stats(st, &s);
    CHECK_INT(s.map_resizes, >=, 1);
    CHECK_INT(s.events_stored, ==, 3 + n_big);
    CHECK_INT(s.duplicates, ==, 1);
    free(many);
    close_store(st, &loop);

    /* after a restart: ids still known, sequence continues */
    st = open_store(dir, 0);
    if (st == NULL) return;
    CHECK_INT(sl_store_start(st, &loop), ==, 0);
    sl_store_msg_t again[2] = {
        {.json = "{\"a\":1}", .json_len = 7, .dedupe = sl_store_dedupe_key(st, "src", "m1"), .received_ms = now},
        {.json = "{\"a\":4}", .json_len = 7, .dedupe = sl_store_dedupe_key(st, "src", "m4"), .received_ms = now},
    };
    CHECK_INT(run_batch(st, &loop, again, 2), ==, 0);
    CHECK_INT(again[0].status, ==, SL_STORE_DUPLICATE);
    CHECK_INT(again[1].status, ==, SL_STORE_STORED);
    CHECK_INT(again[1].seq, ==, 4 + n_big);
    close_store(st, &loop);

    /* read-only open, as export does */
    st = open_store(dir, 1);
    if (st == NULL) return;
    uint64_t count = 0;
    CHECK_INT(sl_store_foreach_event(st, count_cb, &count), ==, 0);
    CHECK_INT(count, ==, 4 + n_big);
    char dest[300];
    snprintf(dest, sizeof(dest), "%s/backup", dir);
    int dfd = sl_dir_open_nofollow(dest);
    CHECK(dfd >= 0);
    CHECK_INT(sl_store_backup(st, dfd), ==, 0);
    CHECK_INT(sl_store_backup(st, dfd), ==, -EEXIST); /* refuses to overwrite */
    close(dfd);
    /* a symbolic link as the destination is refused, not followed */
    char link[320];
    snprintf(link, sizeof(link), "%s/backup-link", dir);
    CHECK_INT(symlink(dest, link), ==, 0);
    int lfd = sl_dir_open_nofollow(link);
    CHECK(lfd == -ENOTDIR || lfd == -ELOOP);
    /* nor through a trailing slash, which resolves the link (review N3) */
    strcat(link, "//");
    lfd = sl_dir_open_nofollow(link);
    CHECK(lfd == -ENOTDIR || lfd == -ELOOP);
    sl_store_close(st);
    st = open_store(dest, 1);
    if (st) {
        count = 0;
        CHECK_INT(sl_store_foreach_event(st, count_cb, &count), ==, 0);
        CHECK_INT(count, ==, 4 + n_big);
        sl_store_close(st);
    }
    uv_loop_close(&loop);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_INT(system(cmd), ==, 0);
}

typedef struct {
    char (*want)[160];
    size_t n, same;
} roundtrip_t;

static int compare_cb(const char *json, size_t len, uint64_t seq, void *arg)
{
    roundtrip_t *r = arg;
    if (seq >= 1 && seq <= r->n && strlen(r->want[seq - 1]) == len && memcmp(r->want[seq - 1], json, len) == 0)
        r->same++;
    return 0;
}

/* Past 4,000 events the store trains a zstd dictionary and stores events
 * compressed; every reader gets the JSON back byte for byte, also after a
 * restart and in a read-only open. */
TEST(store_compressed_roundtrip)
{
    char dir[] = "/tmp/sl-store-z-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sl_store_t *st = open_store(dir, 0);
    REQUIRE(st != NULL);
    CHECK_INT(sl_store_start(st, &loop), ==, 0);
    enum { N = 12000 };
    static char want[N][160];
    static sl_store_msg_t m[N];
    static char ids[N][16];
    int64_t now = sl_now_ms();
    for (int i = 0; i < N; i++) {
        snprintf(want[i], sizeof(want[i]),
                 "{\"type\":\"track\",\"event\":\"Product Viewed\",\"userId\":\"u%d\",\"properties\":"
                 "{\"sku\":\"sku-%d\",\"price\":%d.5},\"messageId\":\"m-%d\"}", i % 97, i % 13, i % 50, i);
        snprintf(ids[i], sizeof(ids[i]), "m-%d", i);
        m[i] = (sl_store_msg_t){.json = want[i], .json_len = strlen(want[i]), .received_ms = now,
                                .dedupe = sl_store_dedupe_key(st, "src", ids[i])};
    }
    /* the dictionary is trained on its own thread once 4,000 events are in:
     * events go on being stored meanwhile (uncompressed), then compressed */
    int i = 0;
    for (; i < 5000; i += 500) CHECK_INT(run_batch(st, &loop, m + i, 500), ==, 0);
    sl_store_stats_t ss;
    for (sl_store_get_stats(st, &ss); !ss.compressed && i < 7000; sl_store_get_stats(st, &ss), i++) {
        CHECK_INT(run_batch(st, &loop, m + i, 1), ==, 0);
        usleep(1000);
    }
    CHECK(ss.compressed);
    for (; i < N; i += 500) CHECK_INT(run_batch(st, &loop, m + i, i + 500 <= N ? 500 : N - i), ==, 0);
    roundtrip_t r = {want, N, 0};
    CHECK_INT(sl_store_foreach_event(st, compare_cb, &r), ==, 0);
    CHECK_INT(r.same, ==, N);
    close_store(st, &loop);
    st = open_store(dir, 1); /* a reader in another process: the dictionary comes from meta */
    REQUIRE(st != NULL);
    r.same = 0;
    CHECK_INT(sl_store_foreach_event(st, compare_cb, &r), ==, 0);
    CHECK_INT(r.same, ==, N);
    sl_store_close(st);
    /* compressed: the events' pages hold well under the ~150 bytes each has
     * as JSON (the first 4,000 stay as they came: the dictionary learns on them) */
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "mdb_stat -s events '%s' > '%s/stat.txt'", dir, dir);
    CHECK_INT(system(cmd), ==, 0);
    snprintf(cmd, sizeof(cmd), "%s/stat.txt", dir);
    FILE *f = fopen(cmd, "r");
    long pages = 0, x;
    char line[200];
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, " Branch pages: %ld", &x) == 1 || sscanf(line, " Leaf pages: %ld", &x) == 1 ||
            sscanf(line, " Overflow pages: %ld", &x) == 1)
            pages += x;
    if (f) fclose(f);
    CHECK_INT(pages, >, 0);
    CHECK_INT(pages * 4096 / N, <, 110);

    /* the last event, as a store of 2026-11-30 wrote it: type 0x01 and the
     * whole frame, magic number included; still read back as it was */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    REQUIRE(mdb_env_create(&env) == 0);
    mdb_env_set_maxdbs(env, 16);
    REQUIRE(mdb_env_open(env, dir, 0, 0600) == 0);
    REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    REQUIRE(mdb_dbi_open(txn, "events", MDB_INTEGERKEY, &dbi) == 0);
    REQUIRE(mdb_cursor_open(txn, dbi, &cur) == 0);
    REQUIRE(mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0);
    unsigned char old_form[512];
    REQUIRE(v.mv_size > 2 && v.mv_size + 4 <= sizeof(old_form));
    CHECK_INT(((const unsigned char *)v.mv_data)[0], ==, 0x02); /* lean: no magic number */
    old_form[0] = 0x01;
    memcpy(old_form + 1, "\x28\xb5\x2f\xfd", 4);
    memcpy(old_form + 5, (const char *)v.mv_data + 1, v.mv_size - 1);
    MDB_val nv = {v.mv_size + 4, old_form};
    CHECK_INT(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), ==, 0);
    mdb_cursor_close(cur);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
    st = open_store(dir, 1);
    REQUIRE(st != NULL);
    r.same = 0;
    CHECK_INT(sl_store_foreach_event(st, compare_cb, &r), ==, 0);
    CHECK_INT(r.same, ==, N);
    sl_store_close(st);
    uv_loop_close(&loop);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_INT(system(cmd), ==, 0);
}

TEST(store_queue_bound)
{
    char dir[] = "/tmp/sl-store-test-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sl_store_t *st = open_store(dir, 0); /* max_queue_messages 1000 */
    if (st == NULL) return;
    CHECK_INT(sl_store_start(st, &loop), ==, 0);
    static sl_store_msg_t a[800], b[800];
    static char ids[1600][16];
    for (int i = 0; i < 1600; i++) {
        snprintf(ids[i], 16, "q%d", i);
        sl_store_msg_t *m = i < 800 ? &a[i] : &b[i - 800];
        *m = (sl_store_msg_t){.json = "{}", .json_len = 2, .received_ms = sl_now_ms(),
                              .dedupe = sl_store_dedupe_key(st, "s", ids[i])};
    }
    result_t ra = {0}, rb = {0};
    sl_store_batch_t ba = {.msgs = a, .n_msgs = 800, .done = on_done, .data = &ra};
    sl_store_batch_t bb = {.msgs = b, .n_msgs = 800, .done = on_done, .data = &rb};
    CHECK_INT(sl_store_submit(st, &ba), ==, 0);
    CHECK_INT(sl_store_submit(st, &bb), ==, SL_EBUSY); /* 1600 > 1000 while the first is pending */
    while (!ra.done) uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(sl_store_queued(st), ==, 0);
    CHECK_INT(sl_store_submit(st, &bb), ==, 0);
    while (!rb.done) uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(rb.rc, ==, 0);
    close_store(st, &loop);
    uv_loop_close(&loop);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_INT(system(cmd), ==, 0);
}

/* ---- ports: other loops submitting to the same writer ---- */

#define PORT_BATCHES 200
typedef struct {
    sl_store_t *st;
    int id;
    sl_store_msg_t msgs[PORT_BATCHES];
    char ids[PORT_BATCHES][24];
    result_t res[PORT_BATCHES];
    sl_store_batch_t b[PORT_BATCHES];
    int done_elsewhere;  /* a done callback ran on another thread */
    int closed, open_rc;
    uv_thread_t self;
} port_run_t;

static void port_done(sl_store_batch_t *b)
{
    port_run_t *r = b->data;
    size_t i = (size_t)(b - r->b);
    r->res[i].done = 1;
    r->res[i].rc = b->rc;
    uv_thread_t me = uv_thread_self();
    if (!uv_thread_equal(&me, &r->self)) r->done_elsewhere = 1;
}

static void port_tick(uv_timer_t *t)
{
    (void)t;
}

static void port_closed_cb(void *arg)
{
    *(int *)arg = 1;
}

/* A loop of its own: submits its batches in a few iterations, waits for
 * every answer, closes its port. */
static void port_main(void *arg)
{
    port_run_t *r = arg;
    r->self = uv_thread_self();
    uv_loop_t loop;
    uv_loop_init(&loop);
    sl_store_port_t *p = NULL;
    r->open_rc = sl_store_port_open(r->st, &loop, &p);
    if (r->open_rc) {
        uv_loop_close(&loop);
        return;
    }
    uv_timer_t tick; /* keeps iterations coming while answers are awaited */
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, port_tick, 1, 1);
    for (int i = 0; i < PORT_BATCHES; i++) {
        snprintf(r->ids[i], sizeof(r->ids[i]), "p%d-%d", r->id, i);
        r->msgs[i] = (sl_store_msg_t){.json = "{}", .json_len = 2, .received_ms = sl_now_ms(),
                                      .dedupe = sl_store_dedupe_key(r->st, "s", r->ids[i])};
        r->b[i] = (sl_store_batch_t){.msgs = &r->msgs[i], .n_msgs = 1, .done = port_done, .data = r};
        while (sl_store_port_submit(p, &r->b[i]) == SL_EBUSY) uv_run(&loop, UV_RUN_ONCE);
        if (i % 50 == 49) uv_run(&loop, UV_RUN_NOWAIT); /* an iteration hands these over */
    }
    for (int i = 0; i < PORT_BATCHES; i++)
        while (!r->res[i].done) uv_run(&loop, UV_RUN_ONCE);
    sl_store_port_close(p, port_closed_cb, &r->closed);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

TEST(store_ports_on_other_loops)
{
    char dir[] = "/tmp/sl-store-test-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sl_store_t *st = open_store(dir, 0);
    if (st == NULL) return;
    CHECK_INT(sl_store_start(st, &loop), ==, 0);
    static port_run_t r[2];
    uv_thread_t t[2];
    for (int i = 0; i < 2; i++) {
        memset(&r[i], 0, sizeof(r[i]));
        r[i].st = st;
        r[i].id = i;
        REQUIRE(uv_thread_create(&t[i], port_main, &r[i]) == 0);
    }
    /* the store's own loop submits too, meanwhile */
    static sl_store_msg_t m[100];
    static char ids[100][16];
    for (int i = 0; i < 100; i++) {
        snprintf(ids[i], sizeof(ids[i]), "own%d", i);
        m[i] = (sl_store_msg_t){.json = "{}", .json_len = 2, .received_ms = sl_now_ms(),
                                .dedupe = sl_store_dedupe_key(st, "s", ids[i])};
        CHECK_INT(run_batch(st, &loop, &m[i], 1), ==, 0);
    }
    for (int i = 0; i < 2; i++) uv_thread_join(&t[i]);
    for (int i = 0; i < 2; i++) {
        CHECK_INT(r[i].open_rc, ==, 0);
        int ok = 0;
        for (int j = 0; j < PORT_BATCHES; j++) ok += r[i].res[j].done && r[i].res[j].rc == 0 && r[i].msgs[j].status == SL_STORE_STORED;
        CHECK_INT(ok, ==, PORT_BATCHES);
        CHECK(!r[i].done_elsewhere); /* answers on the port's own loop */
        CHECK_INT(r[i].closed, ==, 1);
    }
    CHECK_INT(sl_store_queued(st), ==, 0);
    CHECK_INT(sl_store_durable_seq(st), ==, 100 + 2 * PORT_BATCHES);
    close_store(st, &loop);
    uv_loop_close(&loop);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_INT(system(cmd), ==, 0);
}

static int count_any(const char *json, size_t len, uint64_t seq, void *arg)
{
    (void)json;
    (void)len;
    (void)seq;
    (*(uint64_t *)arg)++;
    return 0;
}

/* A job that refuses its batch when its message is "poison" and sleeps when
 * it is "slow" (so that the batches queued meanwhile share a commit); it
 * counts its calls. */
static int job_calls;
static int isolate_job(MDB_txn *txn, void *arg)
{
    (void)txn;
    const sl_store_msg_t *m = arg;
    job_calls++;
    if (m->json_len == 6 && memcmp(m->json, "\"slow\"", 6) == 0) usleep(200000);
    return m->json_len == 8 && memcmp(m->json, "\"poison\"", 8) == 0 ? MDB_NOTFOUND : 0;
}

/* Issue 13, H1: a message that cannot be applied fails its own request only;
 * the requests in the same group commit are stored and answered 0. */
TEST(store_failure_isolated_to_its_batch)
{
    char dir[] = "/tmp/sl-store-iso-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    int calls = 0;
    sl_store_t *st = NULL;
    sl_store_options_t o = {.data_dir = dir, .map_size_bytes = 1 << 20, .map_size_max_bytes = 64 << 20,
                            .nosync = 1, .dedupe_window_ms = 86400000, .max_queue_messages = 1000};
    CHECK_INT(sl_store_open(&st, &o), ==, 0);
    CHECK_INT(sl_store_start(st, &loop), ==, 0);
    static const char *const bodies[4] = {"\"slow\"", "\"a\"", "\"poison\"", "\"c\""};
    sl_store_msg_t m[4];
    sl_store_batch_t b[4];
    result_t res[4];
    memset(m, 0, sizeof(m));
    memset(b, 0, sizeof(b));
    memset(res, 0, sizeof(res));
    for (int i = 0; i < 4; i++) {
        m[i].json = bodies[i];
        m[i].json_len = strlen(bodies[i]);
        m[i].dedupe = key(500 + (uint64_t)i);
        b[i] = (sl_store_batch_t){.msgs = &m[i], .n_msgs = 1, .done = on_done, .data = &res[i],
                                  .job = isolate_job, .job_arg = &m[i]};
        CHECK_INT(sl_store_submit(st, &b[i]), ==, 0);
        if (i == 0) usleep(50000); /* the writer is inside "slow": a, poison and c queue up together */
    }
    while (!res[0].done || !res[1].done || !res[2].done || !res[3].done) uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(res[0].rc, ==, 0);
    CHECK_INT(res[1].rc, ==, 0);
    CHECK_INT(res[2].rc, ==, MDB_NOTFOUND);
    CHECK_INT(b[2].failed_alone, ==, 1);
    CHECK_INT(res[3].rc, ==, 0);
    CHECK_INT(m[1].status, ==, SL_STORE_STORED);
    CHECK_INT(m[2].status, ==, SL_STORE_PENDING);
    CHECK_INT(m[3].status, ==, SL_STORE_STORED);
    uint64_t n = 0;
    CHECK_INT(sl_store_foreach_event(st, count_any, &n), ==, 0);
    CHECK_INT(n, ==, 3);
    sl_store_stats_t ss;
    sl_store_get_stats(st, &ss);
    CHECK_INT(ss.batches_failed_alone, ==, 1);
    CHECK_INT(ss.commit_failures, ==, 0);
    /* Many bad requests in one commit: one probe finds them all, so the work
     * stays linear (one batch at a time redid the good ones once per bad one). */
    enum { N = 60 };
    static sl_store_msg_t mm[2 * N + 1];
    static sl_store_batch_t bb[2 * N + 1];
    static result_t rr[2 * N + 1];
    memset(mm, 0, sizeof(mm));
    memset(bb, 0, sizeof(bb));
    memset(rr, 0, sizeof(rr));
    for (int i = 0; i < 2 * N + 1; i++) {
        const char *j = i == 0 ? "\"slow\"" : i % 2 ? "\"poison\"" : "\"good\"";
        mm[i].json = j;
        mm[i].json_len = strlen(j);
        mm[i].dedupe = key(10000 + (uint64_t)i);
        bb[i] = (sl_store_batch_t){.msgs = &mm[i], .n_msgs = 1, .done = on_done, .data = &rr[i],
                                   .job = isolate_job, .job_arg = &mm[i]};
        CHECK_INT(sl_store_submit(st, &bb[i]), ==, 0);
        if (i == 0) usleep(50000);
    }
    job_calls = 0;
    for (int i = 0; i < 2 * N + 1; i++)
        while (!rr[i].done) uv_run(&loop, UV_RUN_ONCE);
    int bad = 0, good = 0;
    for (int i = 1; i < 2 * N + 1; i++) {
        if (i % 2) bad += rr[i].rc == MDB_NOTFOUND && bb[i].failed_alone;
        else good += rr[i].rc == 0 && mm[i].status == SL_STORE_STORED;
    }
    CHECK_INT(bad, ==, N);
    CHECK_INT(good, ==, N);
    CHECK_INT(job_calls, <=, 3 * (2 * N) + 10);
    (void)calls;
    close_store(st, &loop);
    uv_loop_close(&loop);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_INT(system(cmd), ==, 0);
}
