/* feed.c - the trigger feed over HTTP (DESIGN.md "Triggers", docs/TRIGGERS.md):
 *   GET /v1/triggers?after=SEQ&limit=N&wait=SECONDS&rule=A,B&type=T   JSON page, long poll
 *   GET /v1/triggers/stream?rule=A,B&type=T                           Server-Sent Events
 * Reads run in LMDB read transactions of the derived environment on the loop
 * thread and never wait for the stage. The feed tells the loop (feed_async,
 * one of its "feed advanced" subscribers) when more entries became durable;
 * waiting polls and open streams are then served. A filter (rule, type) is
 * applied by the feed on its entries' headers: each read looks at no more
 * than MAX_SCAN entries, and `next` is the last one looked at.
 * Also /debug/stream: each event once the stage stitched it. */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"
#include "sl_feed.h"
#include "sl_stitch.h"
#include "sl_triggers.h"

#define DEBUG_QUEUE_BYTES (4u << 20) /* events waiting for the loop, for the debug viewers */

#define MAX_WAIT_S 60
#define STREAM_PING_MS 15000
#define STREAM_BATCH 500
#define MAX_SCAN 10000               /* entries one read looks at (issue 22) */
#define STREAM_READS_PER_PUSH 8      /* then the 100 ms timer goes on */

static const char ping[] = ": ping\n\n";

typedef struct {
    sl_feed_t *feed;
    uint64_t after;
    size_t limit;
    const sl_feed_filter_t *flt;
    sl_buf_t *out;
    uint64_t last;
    long n;
} feed_read_t;

static int read_page(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    feed_read_t *q = arg;
    q->n = sl_feed_read(q->feed, txn, q->after, q->limit, q->flt, q->out, &q->last);
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

static void poll_wait(conn_t *c)
{
    if (c->feed_mode == FEED_POLL) return;
    c->feed_mode = FEED_POLL;
    c->busy = 1;
    waiter_link(c);
}

/* Answers a poll with what is there now (possibly nothing). */
static void poll_answer(conn_t *c)
{
    sl_server_t *srv = c->srv;
    sl_buf_t out = {0};
    sl_buf_appends(&out, "{\"triggers\":[");
    feed_read_t q = {srv->feed, c->feed_after, c->feed_limit, c->feed_filter, &out, c->feed_after, 0};
    int rc = sl_stage_read(srv->stage, 0, read_page, &q);
    /* A filtered poll that looked at everything durable and found nothing
     * waits on from there, while it has time left. */
    if (rc == 0 && q.n == 0 && c->feed_filter && !srv->stopping && sl_now_ms() < c->feed_deadline_ms &&
        q.last >= sl_feed_durable_seq(srv->feed)) {
        c->feed_after = q.last;
        sl_buf_free(&out);
        poll_wait(c);
        return;
    }
    sl_buf_printf(&out, "],\"next\":%llu}", (unsigned long long)q.last);
    if (c->feed_mode) {
        waiter_unlink(c);
        c->feed_mode = FEED_NONE;
    }
    c->feed_filter = NULL; /* it lives in the request's arena */
    if (rc || out.data == NULL) http_respond_error(c, 503, sl_strerror(rc ? rc : SL_ENOMEM));
    else http_respond(c, 200, "application/json", "Cache-Control: no-store\r\n", out.data, out.len);
    sl_buf_free(&out);
}

static int sse_one(const sl_feed_item_t *it, void *arg)
{
    sl_buf_t *out = arg;
    sl_buf_printf(out, "id: %llu\nevent: trigger\ndata: ", (unsigned long long)it->seq);
    sl_buf_append(out, it->json, it->len); /* one line: the JSON has no raw newlines */
    sl_buf_appends(out, "\n\n");
    return 0;
}

typedef struct {
    sl_feed_t *feed;
    uint64_t after;
    const sl_feed_filter_t *flt;
    sl_buf_t *out;
    uint64_t last;
    long n;
} sse_read_t;

static int sse_read(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    sse_read_t *q = arg;
    q->n = sl_feed_foreach(q->feed, txn, q->after, STREAM_BATCH, q->flt, sse_one, q->out, &q->last);
    return q->n < 0 ? SL_ESTORE : 0;
}

/* Sends a stream everything durable past its cursor (a filtered one: what
 * passes its filter; its cursor moves past what does not). */
static void stream_push(conn_t *c)
{
    sl_server_t *srv = c->srv;
    for (int reads = 0; reads < STREAM_READS_PER_PUSH; reads++) {
        if (c->closing || c->tcp.write_queue_size > (1u << 20)) return; /* slow reader: wait for the next wake-up */
        sl_buf_t out = {0};
        sse_read_t q = {srv->feed, c->feed_after, c->feed_filter, &out, c->feed_after, 0};
        int rc = sl_stage_read(srv->stage, 0, sse_read, &q);
        if (rc) {
            sl_buf_free(&out);
            http_close(c);
            return;
        }
        if (out.len) {
            http_send(c, out.data, out.len);
            c->feed_last_write_ms = sl_now_ms();
        }
        c->feed_after = q.last;
        sl_buf_free(&out);
        if (q.n < STREAM_BATCH && q.last >= sl_feed_durable_seq(srv->feed)) return;
    }
}

static void wake(sl_server_t *srv)
{
    uint64_t durable = sl_feed_durable_seq(srv->feed);
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

/* The feed's "advanced": runs on the stage thread. */
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
    return sl_feed_subscribe(srv->feed, feed_advanced, srv);
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
    c->feed_filter = NULL;
    c->busy = 0; /* nothing else holds its request: the connection frees it */
}

/* Answers a poll now, or waits for more (long poll). */
static void poll_or_wait(conn_t *c)
{
    sl_server_t *srv = c->srv;
    if (c->feed_deadline_ms <= sl_now_ms() || sl_feed_durable_seq(srv->feed) > c->feed_after || srv->stopping) {
        poll_answer(c);
        return;
    }
    poll_wait(c);
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

static void rules_answer(conn_t *c, int reached)
{
    sl_buf_t out = {0};
    void *a[2] = {c->srv->trig, &out};
    /* small: one line per rule (64 at most) and a count each */
    int rc = sl_stage_read(c->srv->stage, 0, rules_read, a);
    if (rc) http_respond_error(c, 503, "storage unavailable");
    else
        http_respond(c, 200, "application/json",
                     reached ? "Cache-Control: no-store\r\n" : "Cache-Control: no-store\r\nX-Sillage-Stale: 1\r\n",
                     out.data, out.len);
    sl_buf_free(&out);
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
    /* the pending counts of every event acknowledged before this read */
    http_after_stage(c, rules_answer);
}

static int filter_refused(conn_t *c, const char *msg)
{
    http_log_refused(c->srv, "reading the trigger feed: %s", msg);
    http_respond_error(c, 400, msg);
    return -1;
}

/* ?rule=A,B (at most SL_FEED_MAX_FILTER_RULES names of 1 to
 * SL_FEED_MAX_FILTER_NAME bytes) and ?type=T into c->feed_filter, in the
 * request's arena. 0, or -1 after answering 400 (or 503). */
static int filter_parse(conn_t *c)
{
    req_t *r = c->req;
    char *rules = NULL, *type = NULL;
    long rl = http_query_param(r, "rule", &rules), tl = http_query_param(r, "type", &type);
    c->feed_filter = NULL;
    if (rl == SL_EINVAL) return filter_refused(c, "rule has a bad %-escape");
    if (tl == SL_EINVAL) return filter_refused(c, "type has a bad %-escape");
    if (rl == SL_ENOMEM || tl == SL_ENOMEM) {
        http_respond_error(c, 503, "out of memory");
        return -1;
    }
    if (rl < 0 && tl < 0) return 0;
    if (tl >= 0 && (tl == 0 || tl > SL_FEED_MAX_FILTER_NAME))
        return filter_refused(c, "type must be a name of 1 to 128 bytes");
    sl_feed_filter_t *f = sl_arena_alloc(&r->arena, sizeof(*f));
    const char **names = rl >= 0 ? sl_arena_alloc(&r->arena, SL_FEED_MAX_FILTER_RULES * sizeof(*names)) : NULL;
    if (f == NULL || (rl >= 0 && names == NULL)) {
        http_respond_error(c, 503, "out of memory");
        return -1;
    }
    memset(f, 0, sizeof(*f));
    f->type = tl >= 0 ? type : NULL;
    f->max_scan = MAX_SCAN;
    for (char *p = rl >= 0 ? rules : NULL; p;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        size_t n = strlen(p);
        if (n == 0) return filter_refused(c, "rule must list names separated by commas, none empty");
        if (n > SL_FEED_MAX_FILTER_NAME) return filter_refused(c, "rule: each name is at most 128 bytes");
        if (f->n_rules == SL_FEED_MAX_FILTER_RULES) return filter_refused(c, "rule lists at most 64 names");
        names[f->n_rules++] = p;
        p = comma ? comma + 1 : NULL;
    }
    f->rules = names;
    c->feed_filter = f;
    return 0;
}


/* 1 after answering 410 when the entries after position `after` are no
 * longer all there (trigger_retention pruned past it; 0 reads from the
 * oldest entry kept): a consumer keeping state from the feed takes a new
 * snapshot. */
static int pruned_past(conn_t *c, unsigned long long after)
{
    uint64_t pruned = sl_feed_pruned_upto(c->srv->feed);
    if (after == 0 || after >= pruned) return 0;
    char msg[200];
    snprintf(msg, sizeof(msg),
             "the feed no longer holds every entry after %llu (trigger_retention removed up to %llu): "
             "take a new snapshot (docs/AUDIENCES.md, \"Export\")",
             after, (unsigned long long)pruned);
    http_respond_error(c, 410, msg);
    return 1;
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
    if (srv->feed == NULL) {
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
    if (has_after == 0 && pruned_past(c, after)) return;
    if (strcmp(rest, "") == 0) {
        if (http_query_num(c, "limit", 1, 1000, &limit) < 0 || http_query_num(c, "wait", 0, MAX_WAIT_S, &wait) < 0 ||
            filter_parse(c) < 0)
            return;
        c->feed_after = after;
        c->feed_limit = (size_t)limit;
        c->feed_deadline_ms = sl_now_ms() + (int64_t)wait * 1000;
        /* First what the stage owes this read: the triggers of every event
         * acknowledged before it (or up to ?position=), bounded by ?wait_ms=. */
        http_after_stage(c, after_stage);
        return;
    }
    if (strcmp(rest, "/stream") == 0) {
        if (filter_parse(c) < 0) return;
        /* Resume after ?after=, else Last-Event-ID, else from now on. */
        if (has_after == 1) {
            if (r->last_event_id) {
                if (http_parse_num(r->last_event_id, 0, UINT64_MAX, &after)) {
                    c->feed_filter = NULL;
                    http_respond_error(c, 400, "Last-Event-ID must be a trigger sequence number");
                    return;
                }
                if (pruned_past(c, after)) { /* a stream resuming where retention has been */
                    c->feed_filter = NULL;
                    return;
                }
            } else {
                after = sl_feed_durable_seq(srv->feed);
            }
        }
        sl_buf_t h = {0};
        /* no CORS headers: an admin route (http_admin_path) */
        sl_buf_printf(&h, "HTTP/1.1 200 OK\r\nServer: sillage\r\nContent-Type: text/event-stream\r\n"
                          "Cache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n"
                          "\r\n: sillage trigger stream\n\n");
        if (h.data == NULL) {
            c->feed_filter = NULL;
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

/* A stage observer (stage thread): an event and the person it was stitched
 * into, queued for the loop when someone is watching. */
static void debug_observe(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    sl_server_t *srv = arg;
    if (atomic_load(&srv->debug_viewers) == 0 || ev->ctx->entity.kind == 0) return;
    sl_buf_t b = {0};
    char pid[SL_ENTITY_STR_BYTES];
    sl_entity_format(ev->ctx->entity, pid);
    sl_buf_printf(&b, "event: event\ndata: {\"person\":\"%s\",\"rfm_segment\":", pid);
    /* the person's RFM segment after this event (null: the commerce pack is off) */
    size_t at = b.len;
    if (srv->fields == NULL ||
        sl_fields_value(srv->fields, txn, ev->ctx->entity.id, "rfm.segment", sl_now_ms(), &b) != 0) {
        b.len = at;
        sl_buf_appends(&b, "null");
    }
    sl_buf_appends(&b, ",\"message\":");
    sl_buf_append(&b, ev->json, ev->len);
    sl_buf_appends(&b, "}\n\n");
    debug_item_t *it = b.data ? malloc(sizeof(*it) + b.len) : NULL;
    if (it) {
        it->next = NULL;
        it->len = b.len;
        memcpy(it->data, b.data, b.len);
    }
    sl_buf_free(&b);
    if (it == NULL) return; /* the view is lossy, never the stage's problem */
    /* one producer (this thread): the look and the add need no lock */
    if (atomic_load(&srv->debug_queued) + it->len > DEBUG_QUEUE_BYTES) {
        free(it); /* the loop is behind: viewers miss this one */
        return;
    }
    atomic_fetch_add(&srv->debug_queued, it->len);
    if (sl_handoff_push(&srv->debug_ready, it)) { /* stopped */
        atomic_fetch_sub(&srv->debug_queued, it->len);
        free(it);
    }
}

/* Takes every queued event off the queue and its bound. */
static debug_item_t *debug_take(sl_server_t *srv)
{
    debug_item_t *list = sl_handoff_take_all(&srv->debug_ready);
    size_t bytes = 0;
    for (debug_item_t *it = list; it; it = it->next) bytes += it->len;
    atomic_fetch_sub(&srv->debug_queued, bytes);
    return list;
}

static void on_debug_ready(sl_handoff_t *h)
{
    sl_server_t *srv = h->data;
    debug_item_t *list = debug_take(srv);
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
    srv->debug_ready.data = srv;
    int rc = sl_handoff_init(&srv->debug_ready, offsetof(debug_item_t, next), srv->loop, on_debug_ready);
    if (rc) return rc;
    srv->handles_open++;
    srv->debug_open = 1;
    return sl_stage_observe(srv->stage, debug_observe, srv);
}

static void debug_closed(sl_handoff_t *h)
{
    http_handle_closed(h->data);
}

/* At stop (loop thread): nothing more is queued, what was is dropped. */
void http_feed_debug_stop(sl_server_t *srv)
{
    if (!srv->debug_open) return;
    srv->debug_open = 0;
    sl_handoff_close(&srv->debug_ready, debug_closed);
    debug_item_t *list = debug_take(srv);
    while (list) {
        debug_item_t *next = list->next;
        free(list);
        list = next;
    }
}
