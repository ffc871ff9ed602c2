/* test_stage.c - the derivation stage on a real store (fixture.h): events
 * set aside and replayed, transactions redone, jobs, the steps' phases and
 * context, durable timers, and the trigger engine's states across layouts. */
#include "fixture.h"
#include "internal.h" /* the engine's rule states, written as an older version did */
#include "stitch_int.h" /* person records, written as an older version did */

#include <stdlib.h>
#include <time.h>
#include <unistd.h>

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

/* A step that loses a record (LMDB's MDB_NOTFOUND) on the events whose
 * messageId starts with "lost": that event is set aside and the ones after
 * it are applied. It once ended the pass, the rest of the log counted as
 * applied without being read (a rebuild said it had rebuilt everything). */
static int lost_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    (void)txn;
    (void)arg;
    return strncmp(ev->message_id, "lost", 4) == 0 ? MDB_NOTFOUND : 0;
}

static int why_not_found(uint64_t seq, const char *why, void *arg)
{
    (void)seq;
    CHECK(strstr(why, "lost") != NULL);
    (*(int *)arg)++;
    return 0;
}

TEST(stage_step_not_found_is_not_the_end)
{
    sl_stage_step_t step = {.name = "lost", .apply = lost_apply};
    fix_t f;
    REQUIRE(fix_init_with(&f, &step, 0) == 0);
    msg(&f, SL_STITCH_PAGE, NULL, "nf1", NULL, 1000);
    put(&f, "{\"type\":\"page\",\"messageId\":\"lost-1\",\"timestamp\":\"2026-01-01T00:00:01.500Z\","
            "\"anonymousId\":\"nf1\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
        1500, "lost-1");
    msg(&f, SL_STITCH_PAGE, NULL, "nf1", NULL, 2000);
    msg(&f, SL_STITCH_PAGE, NULL, "nf1", NULL, 3000);
    cJSON *p = get(&f, 0, "anonymous_id", "nf1");
    CHECK_INT(num(p, "counters", "events"), ==, 3); /* the two after it too */
    cJSON_Delete(p);
    int n = 0;
    CHECK_INT(sl_stage_set_aside(f.stage, 100, why_not_found, &n), ==, 0);
    CHECK_INT(n, ==, 1);
    fix_free(&f);
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
    sl_store_batch_t batch = {.msgs = sm, .n_msgs = 2, .done = fix_batch_done, .data = &done};
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

/* The test thread is the loop thread: it uses ms of CPU, then runs one
 * loop iteration (the stage's check handle runs in it). */
static void burn_then_iterate(fix_t *f, int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    uint64_t until = (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec + (uint64_t)ms * 1000000u;
    do clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    while ((uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec < until);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* Past max_lag_events the loop thread leaves the core to the stage: after
 * each iteration it sleeps as long as it ran since its last sleep; within
 * the bound it never sleeps. */
TEST(stage_yields_past_its_lag_bound)
{
    sl_stage_step_t step = {.name = "slow", .apply = slow_apply};
    fix_t f;
    fix_stage_max_lag = 2;
    REQUIRE(fix_init_with(&f, &step, 0) == 0);
    for (int i = 0; i < 6; i++) { /* 100 ms each in the stage: it lags for 600 ms */
        char mid[16], ev[256];
        snprintf(mid, sizeof(mid), "slow-%d", i);
        snprintf(ev, sizeof(ev), "{\"type\":\"page\",\"messageId\":\"%s\",\"timestamp\":\"2026-01-01T00:00:01.000Z\","
                                 "\"anonymousId\":\"yl\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}", mid);
        put_durable(&f, ev, sl_now_ms(), mid);
    }
    sl_stage_stats_t st0, st;
    sl_stage_get_stats(f.stage, &st0);
    CHECK_INT(st0.lag_events, >, 2);
    for (int i = 0; i < 60; i++) burn_then_iterate(&f, 1);
    sl_stage_get_stats(f.stage, &st);
    CHECK_INT(st.yields - st0.yields, >=, 20);
    uint64_t slept = st.yielded_us - st0.yielded_us;
    CHECK_INT(slept, >=, 30000); /* about the 60 ms it ran (the first ms sets the start) */
    CHECK_INT(slept, <=, 150000); /* its loop iterations add a little (more under valgrind) */
    /* caught up: within the bound, no sleep */
    for (int i = 0; i < 200 && sl_stage_applied(f.stage) < 6; i++) usleep(10000);
    CHECK_INT(sl_stage_applied(f.stage), ==, 6);
    sl_stage_get_stats(f.stage, &st0);
    for (int i = 0; i < 20; i++) burn_then_iterate(&f, 1);
    sl_stage_get_stats(f.stage, &st);
    CHECK_INT(st.yields, ==, st0.yields);
    fix_stage_max_lag = 0;
    fix_free(&f);
}

/* ---- the commit interval ---- */

static int step_awaited_flag;
static int step_awaited(void *arg)
{
    (void)arg;
    return step_awaited_flag;
}

static void interval_waiter_cb(sl_stage_waiter_t *w, int reached)
{
    *(int *)w->arg = reached ? 1 : -1;
}

static uint64_t interval_event(fix_t *f, int i)
{
    char mid[16], ev[256];
    snprintf(mid, sizeof(mid), "iv-%d", i);
    snprintf(ev, sizeof(ev), "{\"type\":\"page\",\"messageId\":\"%s\",\"timestamp\":\"2026-01-01T00:00:01.000Z\","
                             "\"anonymousId\":\"iv\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}", mid);
    return put_durable(f, ev, sl_now_ms(), mid);
}

static int64_t until_applied(fix_t *f, uint64_t seq, int64_t max_ms)
{
    int64_t t0 = sl_now_ms();
    while (sl_stage_applied(f->stage) < seq && sl_now_ms() - t0 < max_ms) usleep(1000);
    return sl_now_ms() - t0;
}

/* Events wait for the commit interval unless someone awaits the next
 * commit: a reader waiting for a position, or a step's readers. */
TEST(stage_commits_spaced_unless_awaited)
{
    sl_stage_step_t step = {.name = "awaits", .awaited = step_awaited};
    fix_t f;
    fix_stage_commit_interval_ms = 4000;
    step_awaited_flag = 0;
    REQUIRE(fix_init_with(&f, &step, 0) == 0);
    /* the first commit has no predecessor to wait for */
    uint64_t s1 = interval_event(&f, 1);
    until_applied(&f, s1, 3000);
    CHECK_INT(sl_stage_applied(f.stage), ==, s1);
    /* the next waits: 4 s after the last commit */
    uint64_t s2 = interval_event(&f, 2);
    usleep(300000);
    CHECK_INT(sl_stage_applied(f.stage), <, s2);
    /* a reader waiting for it: committed at once */
    int got = 0;
    sl_stage_waiter_t w = {.cb = interval_waiter_cb, .arg = &got};
    int64_t t0 = sl_now_ms();
    sl_stage_wait(f.stage, &w, s2, 10000);
    while (got == 0 && sl_now_ms() - t0 < 3000) uv_run(&f.loop, UV_RUN_ONCE);
    CHECK_INT(got, ==, 1);
    CHECK_INT(sl_stage_applied(f.stage), >=, s2);
    /* a step whose readers wait: at once as well */
    step_awaited_flag = 1;
    uint64_t s3 = interval_event(&f, 3);
    CHECK_INT(until_applied(&f, s3, 3000), <, 3000);
    CHECK_INT(sl_stage_applied(f.stage), ==, s3);
    /* no one waits: held, then committed once the interval passed */
    step_awaited_flag = 0;
    uint64_t s4 = interval_event(&f, 4);
    usleep(300000);
    CHECK_INT(sl_stage_applied(f.stage), <, s4);
    until_applied(&f, s4, 8000);
    CHECK_INT(sl_stage_applied(f.stage), ==, s4);
    fix_stage_commit_interval_ms = 0;
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
    txn = fix_raw_begin(f, &env);
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

/* A person's computed "pages" (profile.computed), or -1 while absent. */
static double pages_of(fix_t *f, const char *anon)
{
    cJSON *p = get(f, 0, "anonymous_id", anon);
    const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(p, "computed"), "pages");
    double n = cJSON_IsNumber(v) ? v->valuedouble : -1;
    cJSON_Delete(p);
    return n;
}

/* A derived store from before the generic fields became person
 * attachments: their records in a database of their own ("gfields"), none
 * in the person records, the field's definition known. At open that
 * database goes and the field is backfilled from the log: the same value
 * as before, counted once. */
TEST(fields_records_moved_into_person_records)
{
    fix_config = "{\"listen\":\"127.0.0.1:8080\",\"data_dir\":\"./unused\","
                 "\"sources\":[{\"name\":\"demo\",\"write_key\":\"demo\"}],"
                 "\"admin_token\":\"0123456789abcdef0123456789abcdef\","
                 "\"computed\":{\"fields\":[{\"name\":\"pages\",\"type\":\"count\",\"event\":\"page\"}]}}";
    fix_t f;
    int rc = fix_init_with(&f, NULL, 1);
    fix_config = NULL;
    REQUIRE(rc == 0);
    for (int i = 0; i < 3; i++) msg(&f, SL_STITCH_PAGE, NULL, "mv-a", NULL, 1000 + i);
    CHECK(pages_of(&f, "mv-a") == 3);
    fix_close_store(&f);
    /* as the build before left it: the person records without attachments,
     * and a gfields database */
    MDB_env *env;
    MDB_txn *txn = fix_raw_begin(&f, &env);
    MDB_dbi persons, old;
    MDB_cursor *cur;
    MDB_val k, v;
    REQUIRE(mdb_dbi_open(txn, "persons", MDB_INTEGERKEY, &persons) == 0);
    REQUIRE(mdb_cursor_open(txn, persons, &cur) == 0);
    int stripped = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        person_hdr_t h;
        REQUIRE(v.mv_size >= sizeof(h));
        memcpy(&h, v.mv_data, sizeof(h));
        if (h.ext_len == 0) continue;
        char buf[4096];
        size_t n = v.mv_size - h.ext_len;
        REQUIRE(n <= sizeof(buf));
        memcpy(buf, v.mv_data, n);
        h.ext_len = 0;
        memcpy(buf, &h, sizeof(h));
        MDB_val nv = {n, buf};
        CHECK_INT(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), ==, 0);
        stripped++;
    }
    mdb_cursor_close(cur);
    CHECK_INT(stripped, ==, 1);
    REQUIRE(mdb_dbi_open(txn, "gfields", MDB_CREATE | MDB_INTEGERKEY, &old) == 0);
    uint64_t id = 1;
    k = (MDB_val){8, &id}, v = (MDB_val){5, "stale"};
    CHECK_INT(mdb_put(txn, old, &k, &v, 0), ==, 0);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);

    f.with_triggers = 1;
    fix_no_stage_start = 1; /* the backfill planned, not run yet: the profile says so */
    rc = fix_open(&f);
    fix_no_stage_start = 0;
    REQUIRE(rc == 0);
    cJSON *p = get(&f, 0, "anonymous_id", "mv-a");
    const cJSON *bf = cJSON_GetObjectItem(p, "backfilling");
    CHECK(cJSON_IsArray(bf) && cJSON_GetArraySize(bf) == 1 &&
          strcmp(cJSON_GetStringValue(cJSON_GetArrayItem(bf, 0)), "pages") == 0);
    cJSON_Delete(p);
    REQUIRE(sl_stage_start(f.stage, &f.loop) == 0);
    double n = -1;
    for (int i = 0; i < 5000 && (n = pages_of(&f, "mv-a")) != 3; i++) usleep(1000);
    CHECK(n == 3);
    CHECK_INT(db_entries(&f, "gfields"), ==, -1); /* gone */
    p = get(&f, 0, "anonymous_id", "mv-a");
    CHECK(cJSON_GetObjectItem(p, "backfilling") == NULL); /* caught up */
    cJSON_Delete(p);
    msg(&f, SL_STITCH_PAGE, NULL, "mv-a", NULL, 2000);
    CHECK(pages_of(&f, "mv-a") == 4);
    fix_free(&f);
}

/* sl_fields_verify_generic in a read of the stage */
typedef struct {
    fix_t *f;
    uint64_t persons, problems;
} gverify_t;

static int gverify_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    gverify_t *q = arg;
    FILE *out = fopen("/dev/null", "w");
    int rc = sl_fields_verify_generic(q->f->fields, txn, log_txn, NULL, NULL, sl_now_ms(), out, &q->persons, &q->problems);
    fclose(out);
    return rc;
}

/* A chain of merges in one event: an anonymous visitor's identify names two
 * identity traits, the first owned by an anonymous person P1 (which absorbs
 * the visitor), the second by another, P2 (which then absorbs P1). P1 had
 * no generic field state of its own, so the stitcher kept nothing for it;
 * the visitor's pages, joined into P1 first, were written to a record
 * already deleted and lost (P2 read 1, not 3). */
TEST(fields_merge_chain_through_a_person_without_state)
{
    fix_config = "{\"listen\":\"127.0.0.1:8080\",\"data_dir\":\"./unused\","
                 "\"sources\":[{\"name\":\"demo\",\"write_key\":\"demo\"}],"
                 "\"admin_token\":\"0123456789abcdef0123456789abcdef\","
                 "\"identity\":{\"traits\":[\"email\",\"phone\"]},"
                 "\"computed\":{\"fields\":[{\"name\":\"pages\",\"type\":\"count\",\"event\":\"page\"}]}}";
    fix_t f;
    int rc = fix_init_with(&f, NULL, 1);
    fix_config = NULL;
    REQUIRE(rc == 0);
    msg(&f, SL_STITCH_PAGE, NULL, "ch-a", NULL, 1000);
    msg(&f, SL_STITCH_PAGE, NULL, "ch-a", NULL, 1001);
    msg_traits(&f, SL_STITCH_IDENTIFY, NULL, "ch-1", NULL, 1002, "{\"email\":\"one@example.com\"}"); /* P1: no page */
    msg_traits(&f, SL_STITCH_IDENTIFY, NULL, "ch-2", NULL, 1003, "{\"phone\":\"555 0100\"}");
    msg(&f, SL_STITCH_PAGE, NULL, "ch-2", NULL, 1004);
    CHECK(pages_of(&f, "ch-a") == 2);
    CHECK(pages_of(&f, "ch-2") == 1);
    msg_traits(&f, SL_STITCH_IDENTIFY, NULL, "ch-a", NULL, 1005,
               "{\"email\":\"one@example.com\",\"phone\":\"555 0100\"}");
    char a[32], b[32], c[32];
    CHECK_STR(person_of(&f, "anonymous_id", "ch-a", a), person_of(&f, "anonymous_id", "ch-2", b));
    CHECK_STR(person_of(&f, "anonymous_id", "ch-1", c), b); /* one person now */
    CHECK(pages_of(&f, "ch-2") == 3);
    CHECK_INT(verify_problems(&f), ==, 0);
    gverify_t q = {.f = &f};
    CHECK_INT(sl_stage_read(f.stage, 1, gverify_cb, &q), ==, 0);
    CHECK_INT(q.persons, ==, 1);
    CHECK_INT(q.problems, ==, 0); /* the kept state is what the person's events make */
    fix_free(&f);
}

/* Person records written before the ledger (fields/) counted the person's
 * orders in the header word that now says the attachments' length (and
 * its revenue beside it); nothing rewrote them to 0. Such a record holds
 * no attachments: it is read as having none, not as damaged (every event
 * of the person was set aside, its profile unreadable), and the next
 * rewrite says 0. */
TEST(stitch_records_with_an_order_count_from_before_the_ledger)
{
    fix_config = "{\"listen\":\"127.0.0.1:8080\",\"data_dir\":\"./unused\","
                 "\"sources\":[{\"name\":\"demo\",\"write_key\":\"demo\"}],"
                 "\"admin_token\":\"0123456789abcdef0123456789abcdef\","
                 "\"computed\":{\"fields\":[{\"name\":\"pages\",\"type\":\"count\",\"event\":\"page\"}]}}";
    fix_t f;
    int rc = fix_init_with(&f, NULL, 1);
    fix_config = NULL;
    REQUIRE(rc == 0);
    msg(&f, SL_STITCH_IDENTIFY, "buyer", "ob-a", NULL, 1000);
    fix_close_store(&f);
    /* as a build before the ledger left it: 3 orders, 120.5 of revenue */
    MDB_env *env;
    MDB_txn *txn = fix_raw_begin(&f, &env);
    MDB_dbi persons;
    MDB_cursor *cur;
    MDB_val k, v;
    REQUIRE(mdb_dbi_open(txn, "persons", MDB_INTEGERKEY, &persons) == 0);
    REQUIRE(mdb_cursor_open(txn, persons, &cur) == 0);
    int n = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        person_hdr_t h;
        char buf[4096];
        REQUIRE(v.mv_size >= sizeof(h) && v.mv_size <= sizeof(buf));
        memcpy(&h, v.mv_data, sizeof(h));
        CHECK_INT(h.ext_len, ==, 0);
        uint64_t orders = 3;
        memcpy(&h.ext_len, &orders, 8); /* (the word was `uint64_t orders`) */
        h.revenue = 120.5;
        memcpy(buf, v.mv_data, v.mv_size);
        memcpy(buf, &h, sizeof(h));
        MDB_val nv = {v.mv_size, buf};
        CHECK_INT(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), ==, 0);
        n++;
    }
    mdb_cursor_close(cur);
    CHECK_INT(n, ==, 1);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
    REQUIRE(fix_open(&f) == 0);
    cJSON *p = get(&f, 0, "user_id", "buyer");
    CHECK(p != NULL && cJSON_GetObjectItem(p, "id") != NULL);
    cJSON_Delete(p);
    msg(&f, SL_STITCH_PAGE, "buyer", "ob-a", NULL, 2000);
    msg(&f, SL_STITCH_PAGE, "buyer", "ob-a", NULL, 3000);
    int aside = 0;
    CHECK_INT(sl_stage_set_aside(f.stage, 100, count_any, &aside), ==, 0);
    CHECK_INT(aside, ==, 0);
    CHECK(pages_of(&f, "ob-a") == 2);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}
