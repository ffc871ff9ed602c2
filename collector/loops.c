/* loops.c - more loops accepting connections beside the main one
 * (ingest_loops > 1, docs/SCALING.md).
 *
 * Each loop runs on a thread of its own with a server of its own listening
 * on the same address (SO_REUSEPORT): its own connections, parse, scratch
 * and arena, and its own port to the log's writer. It answers what needs
 * no derived state (ingestion, the pixel, preflights, the tag and static
 * files) and hands a connection whose next request needs more to the main
 * loop (http.c, hand_over()). A stop stops these loops first -- each
 * answers its requests, waits for its last commit, closes its port -- and
 * only then the main server, which drains the store. */
#include "http_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct loop_s {
    struct sl_http_loops_s *all;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t stop;
    sl_server_t *srv;
    sl_stage_share_t share;  /* the stage's share of the core, as the main loop leaves it */
    int sharing;
    int64_t grace_ms;
    int rc;                  /* its start */
    uv_sem_t started;
} loop_t;

struct sl_http_loops_s {
    sl_server_t *main;
    loop_t *loops;
    int n, n_running;
    uv_async_t stopped;      /* main loop: one of them stopped */
    _Atomic int n_stopped;
    void (*stop_cb)(void *);
    void *stop_arg;
    int stopping;
};

/* Its loop: the server stopped (its port closed, its handles too). */
static void on_server_stopped(void *arg)
{
    loop_t *l = arg;
    uv_close((uv_handle_t *)&l->stop, NULL);
    if (l->sharing) sl_stage_share_stop(&l->share);
    atomic_fetch_add(&l->all->n_stopped, 1);
    uv_async_send(&l->all->stopped);
}

static void on_stop(uv_async_t *a)
{
    loop_t *l = a->data;
    sl_http_server_stop(l->srv, l->grace_ms, on_server_stopped, l);
}

static void loop_main(void *arg)
{
    loop_t *l = arg;
    char name[24];
    snprintf(name, sizeof(name), "sl-loop-%d", ((int)(l - l->all->loops) + 2) & 0xff);
    sl_thread_name(name);
    int rc = uv_loop_init(&l->loop);
    if (rc) {
        l->rc = rc;
        uv_sem_post(&l->started);
        return;
    }
    if ((rc = uv_async_init(&l->loop, &l->stop, on_stop)) == 0) {
        l->stop.data = l;
        rc = http_server_start_beside(&l->srv, &l->loop, l->all->main, sl_http_server_port(l->all->main));
        if (rc) uv_close((uv_handle_t *)&l->stop, NULL);
    }
    if (rc == 0 && l->all->main->stage) {
        sl_stage_share_start(l->all->main->stage, &l->loop, &l->share);
        l->sharing = 1;
    }
    l->rc = rc;
    uv_sem_post(&l->started);
    uv_run(&l->loop, UV_RUN_DEFAULT); /* until stopped (or, failed, until what it opened is closed) */
    sl_http_server_free(l->srv);
    l->srv = NULL;
    uv_loop_close(&l->loop);
}

/* Main loop: a loop stopped; once all did, the caller goes on. */
static void on_stopped(uv_async_t *a)
{
    sl_http_loops_t *all = a->data;
    if (atomic_load(&all->n_stopped) < all->n_running || !all->stopping) return;
    all->stopping = 0;
    uv_close((uv_handle_t *)&all->stopped, NULL);
    if (all->stop_cb) all->stop_cb(all->stop_arg);
}

int sl_http_loops_start(sl_http_loops_t **out, sl_server_t *main, int n)
{
    *out = NULL;
    sl_http_loops_t *all = calloc(1, sizeof(*all));
    if (all == NULL || (all->loops = calloc((size_t)n, sizeof(loop_t))) == NULL) {
        free(all);
        return SL_ENOMEM;
    }
    all->main = main;
    all->n = n;
    int rc = uv_async_init(main->loop, &all->stopped, on_stopped);
    if (rc) {
        free(all->loops);
        free(all);
        return rc;
    }
    all->stopped.data = all;
    for (int i = 0; i < n && rc == 0; i++) {
        loop_t *l = &all->loops[i];
        l->all = all;
        if ((rc = uv_sem_init(&l->started, 0))) break;
        if ((rc = uv_thread_create(&l->thread, loop_main, l))) {
            uv_sem_destroy(&l->started);
            break;
        }
        uv_sem_wait(&l->started);
        uv_sem_destroy(&l->started);
        all->n_running++;
        rc = l->rc;
    }
    *out = all; /* also on failure: the loops that run must be stopped and joined */
    return rc;
}

void sl_http_loops_stop(sl_http_loops_t *all, int64_t grace_ms, void (*cb)(void *), void *arg)
{
    all->stop_cb = cb;
    all->stop_arg = arg;
    all->stopping = 1;
    for (int i = 0; i < all->n_running; i++) {
        loop_t *l = &all->loops[i];
        l->grace_ms = grace_ms;
        if (l->rc == 0) uv_async_send(&l->stop);
        else atomic_fetch_add(&all->n_stopped, 1); /* it never started its server */
    }
    uv_async_send(&all->stopped); /* in case none was running */
}

void sl_http_loops_free(sl_http_loops_t *all)
{
    if (all == NULL) return;
    for (int i = 0; i < all->n_running; i++) uv_thread_join(&all->loops[i].thread);
    free(all->loops);
    free(all);
}
