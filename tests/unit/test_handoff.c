/* test_handoff.c - sl_handoff_t: order, one wake-up per burst, take_all
 * empties, close, and many producer threads losing nothing. */
#include "test.h"
#include "sl_common.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>

typedef struct item_s {
    int producer;
    struct item_s *next; /* not first: the offset is used, not assumed 0 */
    int seq;
} item_t;

typedef struct {
    int wakes, nonempty, taken;
    int last_seq;
    int in_order;
} sink_t;

static void sink_list(sink_t *s, item_t *list)
{
    if (list) s->nonempty++;
    for (item_t *it = list; it; it = it->next) {
        if (it->seq != s->last_seq + 1) s->in_order = 0;
        s->last_seq = it->seq;
        s->taken++;
    }
}

static void on_wake_sink(sl_handoff_t *h)
{
    sink_t *s = h->data;
    s->wakes++;
    sink_list(s, sl_handoff_take_all(h));
}

static int closed_calls;
static void count_closed(sl_handoff_t *h)
{
    (void)h;
    closed_calls++;
}

/* Async mode, the loop not running: pushes queue in order, the burst costs
 * one wake-up, take_all empties, close refuses. */
TEST(handoff_order_and_take_all)
{
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    sl_handoff_t h = {0};
    sink_t s = {.in_order = 1};
    h.data = &s;
    REQUIRE(sl_handoff_init(&h, offsetof(item_t, next), &loop, on_wake_sink) == 0);
    CHECK(h.data == &s); /* init leaves the owner's pointer alone */
    item_t it[10];
    for (int i = 0; i < 10; i++) it[i] = (item_t){.seq = i + 1, .next = (item_t *)&it}; /* garbage next */
    for (int i = 0; i < 5; i++) CHECK_INT(sl_handoff_push(&h, &it[i]), ==, 0);
    /* a chain of three goes in whole and in order */
    it[5].next = &it[6], it[6].next = &it[7], it[7].next = NULL;
    CHECK_INT(sl_handoff_push_list(&h, &it[5]), ==, 0);
    CHECK_INT(sl_handoff_push_list(&h, NULL), ==, 0);
    CHECK_INT(sl_handoff_wakeups(&h), ==, 1); /* eight items, one wake-up */
    item_t *list = sl_handoff_take_all(&h);
    int n = 0, ordered = 1;
    for (item_t *p = list; p; p = p->next, n++) ordered &= p->seq == n + 1;
    CHECK_INT(n, ==, 8);
    CHECK(ordered);
    CHECK_NULL(sl_handoff_take_all(&h)); /* empty now */
    uv_run(&loop, UV_RUN_NOWAIT);         /* the one wake-up: nothing left to take */
    CHECK_INT(s.wakes, ==, 1);
    CHECK_INT(s.taken, ==, 0);
    /* emptied: the next push wakes again, and the loop takes it */
    s.last_seq = 8;
    CHECK_INT(sl_handoff_push(&h, &it[8]), ==, 0);
    CHECK_INT(sl_handoff_wakeups(&h), ==, 2);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT(s.wakes, ==, 2);
    CHECK_INT(s.taken, ==, 1);
    /* a wake without an item runs on_wake, which finds nothing */
    sl_handoff_wake(&h);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT(s.wakes, ==, 3);
    CHECK_INT(s.nonempty, ==, 1);
    /* closed: refused, the item stays the caller's; a wake does nothing */
    closed_calls = 0;
    sl_handoff_close(&h, count_closed);
    sl_handoff_close(&h, count_closed); /* again: a no-op */
    it[9].next = &it[0];
    CHECK_INT(sl_handoff_push(&h, &it[9]), ==, SL_ESHUTDOWN);
    sl_handoff_wake(&h);
    CHECK_INT(sl_handoff_wakeups(&h), ==, 3);
    CHECK_NULL(sl_handoff_take_all(&h));
    uv_run(&loop, UV_RUN_DEFAULT); /* the handle closes; nothing keeps the loop alive */
    CHECK_INT(closed_calls, ==, 1);
    CHECK_INT(s.wakes, ==, 3);
    sl_handoff_destroy(&h);
    sl_handoff_destroy(&h); /* destroyed: a no-op */
    CHECK_INT(uv_loop_close(&loop), ==, 0);
}

/* Condition mode on one thread: the timeout, a push or a wake before the
 * wait, the pending wake cleared, close. */
TEST(handoff_cond_wait_and_close)
{
    sl_handoff_t h = {0};
    REQUIRE(sl_handoff_init(&h, offsetof(item_t, next), NULL, NULL) == 0);
    uint64_t t0 = uv_hrtime();
    CHECK_INT(sl_handoff_wait(&h, 20 * 1000000ULL), ==, UV_ETIMEDOUT);
    CHECK_INT((uv_hrtime() - t0) / 1000000, >=, 19);
    item_t a = {.seq = 1}, b = {.seq = 2};
    CHECK_INT(sl_handoff_push(&h, &a), ==, 0);
    CHECK_INT(sl_handoff_wakeups(&h), ==, 0); /* nobody waited: no signal */
    CHECK_INT(sl_handoff_wait(&h, SL_HANDOFF_FOREVER), ==, 0); /* returns at once: an item */
    CHECK(sl_handoff_take_all(&h) == &a);
    CHECK_NULL(a.next);
    sl_handoff_wake(&h); /* a wake before the wait is kept */
    CHECK_INT(sl_handoff_wait(&h, SL_HANDOFF_FOREVER), ==, 0);
    CHECK_INT(sl_handoff_wait(&h, 1000000ULL), ==, UV_ETIMEDOUT); /* and cleared by it */
    CHECK_INT(sl_handoff_push(&h, &b), ==, 0);
    sl_handoff_close(&h, NULL);
    CHECK_INT(sl_handoff_push(&h, &a), ==, SL_ESHUTDOWN);
    CHECK_INT(sl_handoff_wait(&h, SL_HANDOFF_FOREVER), ==, SL_ESHUTDOWN);
    CHECK(sl_handoff_take_all(&h) == &b); /* queued before the close: still there */
    CHECK_NULL(sl_handoff_take_all(&h));
    sl_handoff_destroy(&h);
}

typedef struct {
    sl_handoff_t *h;
    sink_t s;
    int want;
} consumer_t;

static void consume_main(void *arg)
{
    consumer_t *c = arg;
    uint64_t deadline = uv_hrtime() + 30ULL * 1000000000ULL; /* a failure, not a hang */
    while (c->s.taken < c->want && uv_hrtime() < deadline) {
        int rc = sl_handoff_wait(c->h, 100 * 1000000ULL);
        sink_list(&c->s, sl_handoff_take_all(c->h));
        if (rc == SL_ESHUTDOWN) break;
    }
}

/* A worker waiting on the condition: a burst of pushes wakes it at most once
 * per time it found the queue empty, never once per push. */
TEST(handoff_wakes_once_per_burst)
{
    enum { N = 2000 };
    sl_handoff_t h = {0};
    REQUIRE(sl_handoff_init(&h, offsetof(item_t, next), NULL, NULL) == 0);
    item_t *items = calloc(N, sizeof(*items));
    REQUIRE(items);
    consumer_t c = {.h = &h, .s = {.in_order = 1}, .want = N};
    uv_thread_t t;
    REQUIRE(uv_thread_create(&t, consume_main, &c) == 0);
    uv_sleep(50); /* the consumer is waiting by now (if not, fewer wake-ups still) */
    for (int i = 0; i < N; i++) {
        items[i].seq = i + 1;
        CHECK_INT(sl_handoff_push(&h, &items[i]), ==, 0);
    }
    uv_thread_join(&t);
    uint64_t wakeups = sl_handoff_wakeups(&h);
    CHECK_INT(c.s.taken, ==, N);
    CHECK(c.s.in_order);
    CHECK_INT(wakeups, >=, 1);
    CHECK_INT(wakeups, <=, c.s.nonempty); /* each wake-up is followed by a take of a non-empty queue */
    CHECK_INT(wakeups, <, N / 4);
    sl_handoff_close(&h, NULL);
    sl_handoff_destroy(&h);
    free(items);
}

enum { PRODUCERS = 4, PER_PRODUCER = 20000, CHAIN = 7 };

typedef struct {
    sl_handoff_t *h;
    item_t *items;
    int id;
} producer_t;

/* Pushes its items one by one, and every few as a chain. */
static void produce_main(void *arg)
{
    producer_t *p = arg;
    for (int i = 0; i < PER_PRODUCER;) {
        item_t *it = &p->items[i];
        if (i % 3 == 0 && i + CHAIN <= PER_PRODUCER) {
            for (int k = 0; k < CHAIN; k++) {
                it[k] = (item_t){.producer = p->id, .seq = i + k, .next = k + 1 < CHAIN ? &it[k + 1] : NULL};
            }
            if (sl_handoff_push_list(p->h, it)) return;
            i += CHAIN;
        } else {
            *it = (item_t){.producer = p->id, .seq = i};
            if (sl_handoff_push(p->h, it)) return;
            i++;
        }
    }
}

typedef struct {
    int next_seq[PRODUCERS];
    int taken, bad;
} tally_t;

static void tally(tally_t *t, item_t *list)
{
    for (item_t *it = list; it; it = it->next) {
        if (it->producer < 0 || it->producer >= PRODUCERS || it->seq != t->next_seq[it->producer]) {
            t->bad++;
            continue;
        }
        t->next_seq[it->producer]++;
        t->taken++;
    }
}

static void on_wake_tally(sl_handoff_t *h)
{
    tally(h->data, sl_handoff_take_all(h));
}

static int run_producers(sl_handoff_t *h, producer_t *p, uv_thread_t *t)
{
    for (int i = 0; i < PRODUCERS; i++) {
        p[i] = (producer_t){.h = h, .items = calloc(PER_PRODUCER, sizeof(item_t)), .id = i};
        if (p[i].items == NULL || uv_thread_create(&t[i], produce_main, &p[i])) return -1;
    }
    return 0;
}

/* Four producer threads, one consumer, both wake-up modes: every item comes
 * out once, each producer's in its order. */
TEST(handoff_many_producers)
{
    producer_t p[PRODUCERS];
    uv_thread_t t[PRODUCERS];
    /* a worker thread's queue: the consumer waits on the condition */
    sl_handoff_t h = {0};
    REQUIRE(sl_handoff_init(&h, offsetof(item_t, next), NULL, NULL) == 0);
    tally_t got = {{0}, 0, 0};
    REQUIRE(run_producers(&h, p, t) == 0);
    uint64_t deadline = uv_hrtime() + 60ULL * 1000000000ULL;
    while (got.taken + got.bad < PRODUCERS * PER_PRODUCER && uv_hrtime() < deadline) {
        sl_handoff_wait(&h, 100 * 1000000ULL);
        tally(&got, sl_handoff_take_all(&h));
    }
    for (int i = 0; i < PRODUCERS; i++) uv_thread_join(&t[i]);
    tally(&got, sl_handoff_take_all(&h));
    CHECK_INT(got.taken, ==, PRODUCERS * PER_PRODUCER);
    CHECK_INT(got.bad, ==, 0);
    for (int i = 0; i < PRODUCERS; i++) CHECK_INT(got.next_seq[i], ==, PER_PRODUCER);
    CHECK_INT(sl_handoff_wakeups(&h), <=, PRODUCERS * PER_PRODUCER / 2);
    sl_handoff_close(&h, NULL);
    sl_handoff_destroy(&h);
    for (int i = 0; i < PRODUCERS; i++) free(p[i].items);

    /* the loop's queue: the uv_async wakes it */
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    sl_handoff_t a = {0};
    tally_t got2 = {{0}, 0, 0};
    a.data = &got2;
    REQUIRE(sl_handoff_init(&a, offsetof(item_t, next), &loop, on_wake_tally) == 0);
    REQUIRE(run_producers(&a, p, t) == 0);
    deadline = uv_hrtime() + 60ULL * 1000000000ULL;
    while (got2.taken + got2.bad < PRODUCERS * PER_PRODUCER && uv_hrtime() < deadline) uv_run(&loop, UV_RUN_ONCE);
    for (int i = 0; i < PRODUCERS; i++) uv_thread_join(&t[i]);
    CHECK_INT(got2.taken, ==, PRODUCERS * PER_PRODUCER);
    CHECK_INT(got2.bad, ==, 0);
    for (int i = 0; i < PRODUCERS; i++) CHECK_INT(got2.next_seq[i], ==, PER_PRODUCER);
    sl_handoff_close(&a, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    sl_handoff_destroy(&a);
    CHECK_INT(uv_loop_close(&loop), ==, 0);
    for (int i = 0; i < PRODUCERS; i++) free(p[i].items);
}

enum { CLOSER_ITEMS = 100000 };

typedef struct {
    sl_handoff_t *h;
    item_t *items; /* CLOSER_ITEMS, allocated by the main thread */
    _Atomic int *accepted;
} closer_producer_t;

/* Pushes (and wakes) until the hand-off refuses. */
static void push_until_closed(void *arg)
{
    closer_producer_t *p = arg;
    for (int i = 0; i < CLOSER_ITEMS; i++) {
        sl_handoff_wake(p->h);
        if (sl_handoff_push(p->h, &p->items[i])) return;
        atomic_fetch_add(p->accepted, 1);
    }
}

static void on_wake_count(sl_handoff_t *h)
{
    int *taken = h->data;
    for (item_t *it = sl_handoff_take_all(h); it; it = it->next) (*taken)++;
}

/* The loop closes while threads push and wake: every push it accepted is
 * taken (before the close or after it), every later one is refused. */
TEST(handoff_close_while_pushing)
{
    enum { THREADS = 3 };
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    sl_handoff_t h = {0};
    int taken = 0;
    _Atomic int accepted = 0;
    h.data = &taken;
    REQUIRE(sl_handoff_init(&h, offsetof(item_t, next), &loop, on_wake_count) == 0);
    closer_producer_t p[THREADS];
    uv_thread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        p[i] = (closer_producer_t){.h = &h, .items = calloc(CLOSER_ITEMS, sizeof(item_t)), .accepted = &accepted};
        REQUIRE(p[i].items && uv_thread_create(&t[i], push_until_closed, &p[i]) == 0);
    }
    while (atomic_load(&accepted) < 1000) uv_run(&loop, UV_RUN_ONCE); /* under way */
    closed_calls = 0;
    sl_handoff_close(&h, count_closed);
    on_wake_count(&h); /* what came before the close */
    for (int i = 0; i < THREADS; i++) uv_thread_join(&t[i]);
    CHECK_NULL(sl_handoff_take_all(&h)); /* nothing got in after it */
    CHECK_INT(taken, ==, atomic_load(&accepted));
    CHECK_INT(sl_handoff_wakeups(&h), >=, 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(closed_calls, ==, 1);
    sl_handoff_destroy(&h);
    CHECK_INT(uv_loop_close(&loop), ==, 0);
    for (int i = 0; i < THREADS; i++) free(p[i].items);
}

/* A loop's pushes of one iteration reach the worker as one list with one
 * wake-up, and not before the iteration ends; close hands the rest over. */
TEST(handoff_batched_per_iteration)
{
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    sl_handoff_t h = {0};
    REQUIRE(sl_handoff_init(&h, offsetof(item_t, next), NULL, NULL) == 0);
    sl_handoff_batch_t b = {0};
    REQUIRE(sl_handoff_batch_start(&b, &h, &loop) == 0);
    CHECK(!uv_loop_alive(&loop)); /* its handles keep no loop running */
    uv_async_t alive; /* as the server's handles do: an iteration runs */
    REQUIRE(uv_async_init(&loop, &alive, NULL) == 0);
    item_t it[120];
    for (int i = 0; i < 120; i++) it[i] = (item_t){.seq = i + 1};
    for (int i = 0; i < 5; i++) CHECK_INT(sl_handoff_push_batched(&b, &it[i]), ==, 0);
    CHECK_NULL(sl_handoff_take_all(&h)); /* the iteration is not over */
    uv_run(&loop, UV_RUN_NOWAIT);
    item_t *list = sl_handoff_take_all(&h);
    int n = 0, ordered = 1;
    for (item_t *p = list; p; p = p->next, n++) ordered &= p->seq == n + 1;
    CHECK_INT(n, ==, 5);
    CHECK(ordered);
    /* a waiting worker: a hundred pushes, one wake-up, one take */
    consumer_t c = {.h = &h, .s = {.in_order = 1, .last_seq = 5}, .want = 100};
    uv_thread_t t;
    REQUIRE(uv_thread_create(&t, consume_main, &c) == 0);
    uv_sleep(50);
    for (int i = 5; i < 105; i++) CHECK_INT(sl_handoff_push_batched(&b, &it[i]), ==, 0);
    CHECK_INT(sl_handoff_wakeups(&h), ==, 0); /* nothing handed over yet */
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_thread_join(&t);
    CHECK_INT(c.s.taken, ==, 100);
    CHECK(c.s.in_order);
    CHECK_INT(c.s.nonempty, ==, 1);
    CHECK_INT(sl_handoff_wakeups(&h), <=, 1);
    /* a second loop's batch in front of the same queue */
    uv_loop_t loop2;
    REQUIRE(uv_loop_init(&loop2) == 0);
    uv_async_t alive2;
    REQUIRE(uv_async_init(&loop2, &alive2, NULL) == 0);
    sl_handoff_batch_t b2 = {0};
    REQUIRE(sl_handoff_batch_start(&b2, &h, &loop2) == 0);
    CHECK_INT(sl_handoff_push_batched(&b2, &it[108]), ==, 0);
    CHECK_INT(sl_handoff_push_batched(&b2, &it[109]), ==, 0);
    uv_run(&loop2, UV_RUN_NOWAIT);
    n = 0;
    for (item_t *p = sl_handoff_take_all(&h); p; p = p->next) n += p->seq == 109 || p->seq == 110;
    CHECK_INT(n, ==, 2);
    /* close hands over what this iteration pushed, then refuses */
    for (int i = 105; i < 108; i++) CHECK_INT(sl_handoff_push_batched(&b, &it[i]), ==, 0);
    void *left = &it[0];
    CHECK_INT(sl_handoff_batch_close(&b, &left, NULL), ==, 0);
    CHECK_NULL(left);
    CHECK_INT(sl_handoff_push_batched(&b, &it[110]), ==, SL_ESHUTDOWN);
    n = 0;
    for (item_t *p = sl_handoff_take_all(&h); p; p = p->next) n += p->seq >= 106 && p->seq <= 108;
    CHECK_INT(n, ==, 3);
    /* the queue closed first: a batch's items come back from its close */
    CHECK_INT(sl_handoff_push_batched(&b2, &it[111]), ==, 0);
    sl_handoff_close(&h, NULL);
    CHECK_INT(sl_handoff_push(&h, &it[112]), ==, SL_ESHUTDOWN);
    uv_run(&loop2, UV_RUN_NOWAIT); /* its flush is refused: kept */
    CHECK_INT(sl_handoff_batch_close(&b2, &left, NULL), ==, SL_ESHUTDOWN);
    CHECK(left == &it[111]);
    CHECK_NULL(sl_handoff_take_all(&h));
    uv_close((uv_handle_t *)&alive2, NULL);
    uv_run(&loop2, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop2), ==, 0);
    uv_close((uv_handle_t *)&alive, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* the handles close */
    sl_handoff_destroy(&h);
    CHECK_INT(uv_loop_close(&loop), ==, 0);
}
