/* feed.c - the trigger feed over HTTP (DESIGN.md "Triggers", docs/TRIGGERS.md):
 *   GET /v1/triggers?after=SEQ&limit=N&wait=SECONDS   JSON page, long poll
 *   GET /v1/triggers/stream                           Server-Sent Events
 * Reads run in LMDB read transactions of the derived environment on the loop
 * thread and never wait for the stage. The trigger engine tells the loop
 * (feed_async, one of its "feed advanced" subscribers) when more triggers
 * became durable; waiting polls and open streams are then served.
 * Also /debug/stream: each event once the stage stitched it. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"
#include "sl_stitch.h"
#include "sl_triggers.h"

#define DEBUG_QUEUE_BYTES (4u << 20) /* events waiting for the loop, for the debug viewers */

#define MAX_WAIT_S 60
#define STREAM_PING_MS 15000
#define STREAM_BATCH 500

static const char ping[] = ": ping\n\n";

typedef struct {
    sl_trig_t *trig;
    uint64_t after;
    size_t limit;
    sl_buf_t *out;
    uint64_t last;
    long n;
} feed_read_t;

static int read_page(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    feed_read_t *q = arg;
    q->n = sl_trig_read(q->trig, txn, q->after, q->limit, q->out, &q->last);
    return q->n < 0 ? SL_ESTORE : 0;
}

/* The list c belongs in by its feed_mode: debug viewers, or polls and streams. */
static conn_t **list_of(conn_t *c)
{
    return c->feed_mode == FEED_DEBUG ? &c->srv->debug_streams : &c->srv->feed_waiters;
}

static void waiter_unlink(conn_t *c)
{
    conn_t **head = list_of(c);
    if (c->feed_prev) c->feed_prev->feed_next = c->feed_next;
    else if (*head == c) *head = c->feed_next;
    if (c->feed_next) c->feed_next->feed_prev = c->feed_prev;
    c->feed_prev = c->feed_next = NULL;
}

static void waiter_link(conn_t *c)
{
    conn_t **head = list_of(c);
    c->feed_prev = NULL;
    c->feed_next = *head;
    if (*head) (*head)->feed_prev = c;
    *head = c;
}

/* Answers a poll with what is there now (possibly nothing). */
static void poll_answer(conn_t *c)
{
    sl_server_t *srv = c->srv;
    sl_buf_t out = {0};
    sl_buf_appends(&out, "{\"triggers\":[");
    feed_read_t q = {srv->trig, c->feed_after, c->feed_limit, &out, c->feed_after, 0};
    int rc = sl_stage_read(srv->stage, 0, read_page, &q);
    sl_buf_printf(&out, "],\"next\":%llu}", (unsigned long long)q.last);
    if (c->feed_mode) {
        waiter_unlink(c);
        c->feed_mode = FEED_NONE;
    }
    if (rc || out.data == NULL) http_respond_error(c, 503, sl_strerror(rc ? rc : SL_ENOMEM));
    else http_respond(c, 200, "application/json", "Cache-Control: no-store\r\n", out.data, out.len);
    sl_buf_free(&out);
}

typedef struct {
    sl_buf_t *out;
    uint64_t last;
} sse_ctx_t;

static int sse_one(uint64_t seq, const char *json, size_t len, void *arg)
{
    sse_ctx_t *s = arg;
    sl_buf_printf(s->out, "id: %llu\nevent: trigger\ndata: ", (unsigned long long)seq);
    sl_buf_append(s->out, json, len); /* one line: the JSON has no raw newlines */
    sl_buf_appends(s->out, "\n\n");
    s->last = seq;
    return 0;
}

typedef struct {
    sl_trig_t *trig;
    uint64_t after;
    sse_ctx_t *ctx;
    long n;
} sse_read_t;

static int sse_read(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    sse_read_t *q = arg;
    q->n = sl_trig_foreach(q->trig, txn, q->after, STREAM_BATCH, sse_one, q->ctx);
    return q->n < 0 ? SL_ESTORE : 0;
}

/* Sends a stream everything durable past its cursor. */
static void stream_push(conn_t *c)
{
    sl_server_t *srv = c->srv;
    for (;;) {
        if (c->closing || c->tcp.write_queue_size > (1u << 20)) return; /* slow reader: wait for the next wake-up */
        sl_buf_t out = {0};
        sse_ctx_t ctx = {&out, c->feed_after};
        sse_read_t q = {srv->trig, c->feed_after, &ctx, 0};
        int rc = sl_stage_read(srv->stage, 0, sse_read, &q);
        if (rc) {
            sl_buf_free(&out);
            http_close(c);
            return;
        }
        if (out.len) {
            http_send(c, out.data, out.len);
            c->feed_after = ctx.last;
            c->feed_last_write_ms = sl_now_ms();
        }
        sl_buf_free(&out);
        if (q.n < STREAM_BATCH) return;
    }
}

static void wake(sl_server_t *srv)
{
    uint64_t durable = sl_trig_durable_seq(srv->trig);
    conn_t *next;
    for (conn_t *c = srv->feed_waiters; c; c = next) {
        next = c->feed_next;
        if (c->feed_after >= durable) continue;
        if (c->feed_mode == FEED_POLL) poll_answer(c);
        else stream_push(c);
    }
}

static void on_feed_async(uv_async_t *a)
{
    sl_server_t *srv = a->data;
    wake(srv);
}

/* The trigger engine's "feed advanced": runs on the stage thread. */
static void feed_advanced(void *arg)
{
    sl_server_t *srv = arg;
    uv_async_send(&srv->feed_async);
}

static void on_feed_timer(uv_timer_t *t)
{
    sl_server_t *srv = t->data;
    int64_t now = sl_now_ms();
    conn_t *next;
    for (conn_t *c = srv->debug_streams; c; c = c->feed_next)
        if (now - c->feed_last_write_ms >= STREAM_PING_MS) {
            http_send(c, ping, sizeof(ping) - 1);
            c->feed_last_write_ms = now;
        }
    for (conn_t *c = srv->feed_waiters; c; c = next) {
        next = c->feed_next;
        if (c->feed_mode == FEED_POLL && now >= c->feed_deadline_ms) {
            poll_answer(c);
        } else if (c->feed_mode == FEED_STREAM) {
            if (c->tcp.write_queue_size == 0) stream_push(c); /* a slow reader caught up */
            if (now - c->feed_last_write_ms >= STREAM_PING_MS) {
                http_send(c, ping, sizeof(ping) - 1);
                c->feed_last_write_ms = now;
            }
        }
    }
}

int http_feed_start(sl_server_t *srv)
{
    int rc = uv_async_init(srv->loop, &srv->feed_async, on_feed_async);
    if (rc) return rc;
    srv->feed_async.data = srv;
    srv->handles_open++;
    uv_timer_init(srv->loop, &srv->feed_timer);
    srv->feed_timer.data = srv;
    srv->handles_open++;
    uv_timer_start(&srv->feed_timer, on_feed_timer, 100, 100);
    srv->feed_started = 1;
    return sl_trig_subscribe(srv->trig, feed_advanced, srv);
}

void http_feed_stop(sl_server_t *srv)
{
    conn_t *next;
    for (conn_t *c = srv->debug_streams; c; c = next) {
        next = c->feed_next;
        http_close(c);
    }
    for (conn_t *c = srv->feed_waiters; c; c = next) {
        next = c->feed_next;
        if (c->feed_mode == FEED_POLL) poll_answer(c);
        else http_close(c);
    }
}

void http_feed_conn_closed(conn_t *c)
{
    if (c->feed_mode == FEED_DEBUG) atomic_fetch_sub(&c->srv->debug_viewers, 1);
    waiter_unlink(c);
    c->feed_mode = FEED_NONE;
    c->busy = 0; /* nothing else holds its request: the connection frees it */
}

/* Answers a poll now, or waits for more (long poll). */
static void poll_or_wait(conn_t *c)
{
    sl_server_t *srv = c->srv;
    if (c->feed_deadline_ms <= sl_now_ms() || sl_trig_durable_seq(srv->trig) > c->feed_after || srv->stopping) {
        poll_answer(c);
        return;
    }
    c->feed_mode = FEED_POLL;
    c->busy = 1;
    waiter_link(c);
}

static void after_stage(conn_t *c, int reached)
{
    (void)reached; /* a stale answer is still an answer: the client asked for at most wait_ms */
    poll_or_wait(c);
}

static int rules_read(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    void **a = arg;
    return sl_trig_rules_json(a[0], txn, a[1]);
}

void http_handle_rules(conn_t *c)
{
    sl_server_t *srv = c->srv;
    if (!http_admin_required(c)) return;
    if (c->req->method != HTTP_GET) {
        http_respond_error(c, 405, "use GET");
        return;
    }
    if (srv->trig == NULL) {
        http_respond_error(c, 404, "no trigger rules on this node");
        return;
    }
    sl_buf_t out = {0};
    void *a[2] = {srv->trig, &out};
    /* small: one line per rule (64 at most) and a count each */
    int rc = sl_stage_read(srv->stage, 0, rules_read, a);
    if (rc) http_respond_error(c, 503, "storage unavailable");
    else http_respond(c, 200, "application/json", "Cache-Control: no-store\r\n", out.data, out.len);
    sl_buf_free(&out);
}

void http_handle_triggers(conn_t *c, const char *rest)
{
    sl_server_t *srv = c->srv;
    req_t *r = c->req;
    int ok = http_admin_gate(c);
    if (ok < 0) return; /* answered 429 */
    if (!ok) {
        static const char body[] =
            "{\"success\":false,\"error\":\"admin token required (Authorization: Bearer <admin_token>)\"}";
        http_respond(c, 401, "application/json", "WWW-Authenticate: Bearer realm=\"sillage\"\r\n", body,
                     sizeof(body) - 1);
        return;
    }
    if (srv->trig == NULL) {
        http_respond_error(c, 404, "no trigger feed on this node");
        return;
    }
    if (r->method != HTTP_GET) {
        http_respond_error(c, 405, "use GET");
        return;
    }
    unsigned long long after = 0, limit = 100, wait = 0;
    int has_after = http_query_num(c, "after", 0, UINT64_MAX, &after);
    if (has_after < 0) return;
    if (strcmp(rest, "") == 0) {
        if (http_query_num(c, "limit", 1, 1000, &limit) < 0 || http_query_num(c, "wait", 0, MAX_WAIT_S, &wait) < 0) return;
        c->feed_after = after;
        c->feed_limit = (size_t)limit;
        c->feed_deadline_ms = sl_now_ms() + (int64_t)wait * 1000;
        /* First what the stage owes this read: the triggers of every event
         * acknowledged before it (or up to ?position=), bounded by ?wait_ms=. */
        http_after_stage(c, after_stage);
        return;
    }
    if (strcmp(rest, "/stream") == 0) {
        /* Resume after ?after=, else Last-Event-ID, else from now on. */
        if (has_after == 1) {
            if (r->last_event_id) {
                if (http_parse_num(r->last_event_id, 0, UINT64_MAX, &after)) {
                    http_respond_error(c, 400, "Last-Event-ID must be a trigger sequence number");
                    return;
                }
            } else {
                after = sl_trig_durable_seq(srv->trig);
            }
        }
        sl_buf_t h = {0};
        /* no CORS headers: an admin route (http_admin_path) */
        sl_buf_printf(&h, "HTTP/1.1 200 OK\r\nServer: sillage\r\nContent-Type: text/event-stream\r\n"
                          "Cache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n"
                          "\r\n: sillage trigger stream\n\n");
        if (h.data == NULL) {
            http_respond_error(c, 503, "out of memory");
            return;
        }
        srv->requests[ROUTE_TRIGGERS][1]++; /* http_status_codes[1]: 200 */
        c->keep_alive = 0;
        c->busy = 1;
        c->feed_mode = FEED_STREAM;
        c->feed_after = after;
        c->feed_last_write_ms = sl_now_ms();
        http_send(c, h.data, h.len);
        sl_buf_free(&h);
        waiter_link(c);
        stream_push(c);
        return;
    }
    http_respond_error(c, 404, "no such route");
}

/* ---- /debug/stream ---- */

void http_handle_debug_stream(conn_t *c)
{
    sl_server_t *srv = c->srv;
    /* The token only as a header: a query string lands in proxies' access
     * logs. The /debug page reads the stream with fetch(), not EventSource. */
    if (!http_admin_required(c)) return;
    static const char head[] = "HTTP/1.1 200 OK\r\nServer: sillage\r\nContent-Type: text/event-stream\r\n"
                               "Cache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n"
                               ": sillage debug stream\n\n";
    srv->requests[ROUTE_DEBUG][1]++;
    c->keep_alive = 0;
    c->busy = 1;
    c->feed_mode = FEED_DEBUG;
    c->feed_last_write_ms = sl_now_ms();
    http_send(c, head, sizeof(head) - 1);
    waiter_link(c);
    atomic_fetch_add(&srv->debug_viewers, 1);
}

/* One SSE event for the debug viewers, queued by the stage thread. */
typedef struct debug_item_s {
    struct debug_item_s *next;
    size_t len;
    char data[];
} debug_item_t;

/* The stitcher's listener (stage thread): an event and the person it was
 * stitched into, queued for the loop when someone is watching. */
static int debug_stitched(void *arg, MDB_txn *txn, const sl_stage_event_t *ev, const sl_ident_event_t *ie)
{
    (void)txn;
    sl_server_t *srv = arg;
    if (atomic_load(&srv->debug_viewers) == 0) return 0;
    sl_buf_t b = {0};
    sl_buf_printf(&b, "event: event\ndata: {\"person\":\"p_%llu\",\"message\":", (unsigned long long)ie->person);
    sl_buf_append(&b, ev->json, ev->len);
    sl_buf_appends(&b, "}\n\n");
    debug_item_t *it = b.data ? malloc(sizeof(*it) + b.len) : NULL;
    if (it) {
        it->next = NULL;
        it->len = b.len;
        memcpy(it->data, b.data, b.len);
    }
    sl_buf_free(&b);
    if (it == NULL) return 0; /* the view is lossy, never the stage's problem */
    uv_mutex_lock(&srv->debug_mu);
    if (srv->debug_queued + it->len > DEBUG_QUEUE_BYTES || !srv->debug_async_open) {
        free(it); /* the loop is behind: viewers miss this one */
    } else {
        *srv->debug_tail = it;
        srv->debug_tail = &it->next;
        srv->debug_queued += it->len;
        uv_async_send(&srv->debug_async);
    }
    uv_mutex_unlock(&srv->debug_mu);
    return 0;
}

static void on_debug_async(uv_async_t *a)
{
    sl_server_t *srv = a->data;
    uv_mutex_lock(&srv->debug_mu);
    debug_item_t *list = srv->debug_head;
    srv->debug_head = NULL;
    srv->debug_tail = &srv->debug_head;
    srv->debug_queued = 0;
    uv_mutex_unlock(&srv->debug_mu);
    int64_t now = sl_now_ms();
    while (list) {
        debug_item_t *next = list->next;
        for (conn_t *c = srv->debug_streams; c; c = c->feed_next) {
            if (c->tcp.write_queue_size > (1u << 20)) continue; /* a slow viewer misses events, never holds memory */
            http_send(c, list->data, list->len);
            c->feed_last_write_ms = now;
        }
        free(list);
        list = next;
    }
}

int http_feed_debug_start(sl_server_t *srv)
{
    uv_mutex_init(&srv->debug_mu);
    srv->debug_tail = &srv->debug_head;
    int rc = uv_async_init(srv->loop, &srv->debug_async, on_debug_async);
    if (rc) return rc;
    srv->debug_async.data = srv;
    srv->handles_open++;
    srv->debug_async_open = 1;
    sl_ident_listener_t l = {.arg = srv, .stitched = debug_stitched};
    return sl_stitch_listen(srv->stitch, &l);
}

/* At stop (loop thread): nothing more is queued, what was is dropped. */
void http_feed_debug_stop(sl_server_t *srv)
{
    if (!srv->debug_async_open) return;
    uv_mutex_lock(&srv->debug_mu);
    srv->debug_async_open = 0;
    debug_item_t *list = srv->debug_head;
    srv->debug_head = NULL;
    srv->debug_tail = &srv->debug_head;
    uv_mutex_unlock(&srv->debug_mu);
    while (list) {
        debug_item_t *next = list->next;
        free(list);
        list = next;
    }
}
