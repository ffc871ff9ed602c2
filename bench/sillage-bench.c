/* sillage-bench: a load generator that simulates visitors (gen.h) against a
 * Segment-compatible HTTP endpoint, closed or open loop, with a latency
 * histogram, a record of acknowledged messageIds, and a check mode that
 * compares that record with `sillage export`. See bench/README.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <llhttp.h>
#include <uv.h>

#include "client.h"
#include "gen.h"
#include "sl_common.h"

/* ---- latency histogram: exact below 256 us, then 128 sub-buckets per power of two (<1 % error) ---- */

#define HIST_BUCKETS 4096

typedef struct {
    uint64_t n[HIST_BUCKETS];
    uint64_t count, max;
} hist_t;

static int hist_index(uint64_t v)
{
    if (v < 256) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int s = msb - 7;
    int idx = 256 + (s - 1) * 128 + (int)((v >> s) - 128);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

static uint64_t hist_value(int idx) /* upper bound of the bucket */
{
    if (idx < 256) return (uint64_t)idx;
    int s = (idx - 256) / 128 + 1;
    uint64_t m = (uint64_t)((idx - 256) % 128 + 128);
    return ((m + 1) << s) - 1;
}

static void hist_add(hist_t *h, uint64_t us)
{
    h->n[hist_index(us)]++;
    h->count++;
    if (us > h->max) h->max = us;
}

static uint64_t hist_pct(const hist_t *h, double p)
{
    if (h->count == 0) return 0;
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->count), seen = 0;
    if (want == 0) want = 1;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= want) return hist_value(i) < h->max ? hist_value(i) : h->max;
    }
    return h->max;
}

/* ---- options ---- */

typedef struct {
    const char *url;
    char host[256];
    int port;
    const char *key;
    int conns;
    double duration_s;
    double rate;         /* requests/s over all connections; 0 = closed loop */
    int batch;           /* 1: one message per request; N: /v1/batch of N */
    uint32_t visitors;
    uint32_t active;
    int consent;
    uint64_t seed;
    double login_share, order_share;
    const char *record;  /* file of acknowledged messageIds */
    const char *csv;
    const char *label;
    const char *run_id;
    uint64_t max_requests; /* 0: no limit */
    int idle;            /* > 0: open this many idle keep-alive connections */
} opts_t;

/* ---- the run ---- */

typedef struct bench_s bench_t;

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_timer_t timer;
    llhttp_t parser;
    bench_t *b;
    int idx;
    int started, connected, busy, writing, closing, want_send, dead;
    uint64_t k;              /* requests scheduled on this connection (open loop) */
    uint64_t lat_start_ns;
    int n_events;
    sl_buf_t req;            /* the request in flight */
    sl_buf_t ids;            /* its messageIds, newline-separated */
    sl_buf_t body;           /* the response body (first bytes) */
    char rbuf[16384];
} conn_t;

struct bench_s {
    opts_t o;
    uv_loop_t *loop;
    conn_t *c;
    sl_gen_t *gen;
    llhttp_settings_t settings;
    char auth[512];
    uint64_t t0_ns, end_ns, last_done_ns;
    int stopping;
    int grace;               /* the stop timer has fired once */
    uint64_t sent, done, events_ok, bytes_sent, msg_bytes, msgs;
    uint64_t status[6];      /* by class: 0 = no answer, 1xx..5xx */
    uint64_t partial;        /* 200 with rejected messages */
    uint64_t conn_errors;
    uint64_t by_code[600];
    hist_t lat;
    FILE *record;
    uv_timer_t stop_timer;
    uv_signal_t sigint;
    int idle_ready;
};

static void conn_send(conn_t *c);
static void conn_start(conn_t *c);
static void on_reconnect_timer(uv_timer_t *t) { conn_start(t->data); }

static void maybe_finish(bench_t *b)
{
    if (!b->stopping) return;
    for (int i = 0; i < b->o.conns; i++)
        if (b->c[i].busy && !b->c[i].dead) return;
    for (int i = 0; i < b->o.conns; i++) {
        conn_t *c = &b->c[i];
        if (c->dead) continue;
        c->dead = 1;
        uv_close((uv_handle_t *)&c->timer, NULL);
        if (c->started && !uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, NULL);
    }
    if (!uv_is_closing((uv_handle_t *)&b->stop_timer)) uv_close((uv_handle_t *)&b->stop_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&b->sigint)) uv_close((uv_handle_t *)&b->sigint, NULL);
}

static void on_tcp_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    bench_t *b = c->b;
    c->closing = 0;
    c->connected = 0;
    if (b->stopping) {
        maybe_finish(b);
        return;
    }
    /* Reconnect shortly: the server may be restarting (crash tests). */
    uv_timer_start(&c->timer, on_reconnect_timer, 10, 0);
}

/* Closes the connection (it reconnects unless the run is over); a request
 * still waiting counts as unanswered. */
static void conn_close(conn_t *c)
{
    bench_t *b = c->b;
    if (c->busy) {
        c->busy = 0;
        b->status[0]++;
        b->done++;
    }
    if (!c->closing && !uv_is_closing((uv_handle_t *)&c->tcp)) {
        c->closing = 1;
        uv_read_stop((uv_stream_t *)&c->tcp);
        uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
    }
}

static void conn_fail(conn_t *c)
{
    c->b->conn_errors++;
    conn_close(c);
}

/* ---- scheduling ---- */

static void on_send_timer(uv_timer_t *t)
{
    conn_t *c = t->data;
    c->lat_start_ns = uv_hrtime(); /* we were early: the server held nothing up */
    conn_send(c);
}

/* Called when a connection is free. Closed loop: send now. Open loop: send at
 * the connection's next slot; if the slot has already passed, the wait was the
 * server's doing, and latency counts from the slot (no coordinated omission). */
static void conn_next(conn_t *c)
{
    bench_t *b = c->b;
    uint64_t now = uv_hrtime();
    if (b->stopping || now >= b->end_ns || (b->o.max_requests && b->sent >= b->o.max_requests)) {
        b->stopping = 1;
        maybe_finish(b);
        return;
    }
    if (b->o.idle) return;
    if (b->o.rate <= 0) {
        c->lat_start_ns = now;
        conn_send(c);
        return;
    }
    double period_ns = 1e9 / b->o.rate;
    uint64_t slot = b->t0_ns + (uint64_t)(((double)c->k * b->o.conns + c->idx) * period_ns);
    c->k++;
    if (slot <= now) {
        c->lat_start_ns = slot;
        conn_send(c);
    } else {
        uint64_t ms = (slot - now + 999999) / 1000000;
        uv_timer_start(&c->timer, on_send_timer, ms, 0);
    }
}

/* ---- requests ---- */

static void on_write(uv_write_t *w, int status)
{
    conn_t *c = w->data;
    c->writing = 0;
    if (status < 0) {
        if (status != UV_ECANCELED) conn_fail(c);
        return;
    }
    if (c->want_send) { /* the answer came before the write callback */
        c->want_send = 0;
        conn_next(c);
    }
}

static int build_request(conn_t *c)
{
    bench_t *b = c->b;
    char msg[4096], id[96];
    const char *type = "track";
    int64_t now_ms = sl_now_ms();
    c->body.len = 0;
    c->ids.len = 0;
    sl_buf_t *body = &c->body; /* reuse as the request body scratch */
    int rc = 0;
    if (b->o.batch > 1) rc |= sl_buf_appends(body, "{\"batch\":[");
    for (int i = 0; i < b->o.batch; i++) {
        size_t n = sl_gen_next(b->gen, now_ms, msg, sizeof(msg), &type, id, sizeof(id));
        if (n == 0) return SL_EINVAL;
        b->msg_bytes += n;
        b->msgs++;
        if (i) rc |= sl_buf_append(body, ",", 1);
        rc |= sl_buf_append(body, msg, n);
        if (b->record) {
            rc |= sl_buf_appends(&c->ids, id);
            rc |= sl_buf_append(&c->ids, "\n", 1);
        }
    }
    if (b->o.batch > 1) {
        char ts[32];
        sl_time_format_iso(now_ms, ts);
        rc |= sl_buf_printf(body, "],\"sentAt\":\"%s\"}", ts);
    }
    c->req.len = 0;
    rc |= sl_buf_printf(&c->req,
                        "POST /v1/%s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Basic %s\r\n"
                        "Content-Type: application/json\r\nUser-Agent: sillage-bench/0.1\r\n"
                        "Content-Length: %zu\r\n\r\n",
                        b->o.batch > 1 ? "batch" : type, b->o.host, b->o.port, b->auth, body->len);
    rc |= sl_buf_append(&c->req, body->data, body->len);
    c->body.len = 0;
    c->n_events = b->o.batch;
    return rc ? SL_ENOMEM : 0;
}

static void conn_send(conn_t *c)
{
    bench_t *b = c->b;
    if (!c->connected || c->closing) return;
    if (b->o.idle) {
        c->req.len = 0;
        if (sl_buf_printf(&c->req, "GET /healthz HTTP/1.1\r\nHost: %s:%d\r\n\r\n", b->o.host, b->o.port)) return;
        c->n_events = 0;
        c->ids.len = 0;
    } else if (build_request(c)) {
        fprintf(stderr, "sillage-bench: cannot build a request\n");
        exit(2);
    }
    uv_buf_t buf = uv_buf_init(c->req.data, (unsigned)c->req.len);
    c->busy = 1;
    c->writing = 1;
    c->wreq.data = c;
    b->sent++;
    b->bytes_sent += c->req.len;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rc) {
        c->writing = 0;
        conn_fail(c);
    }
}

/* ---- responses ---- */

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (c->body.len < 4096) sl_buf_append(&c->body, at, n < 4096 ? n : 4096);
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    c->body.len = 0;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    bench_t *b = c->b;
    uint64_t now = uv_hrtime();
    if (!c->busy) return HPE_USER; /* an answer nobody asked for */
    c->busy = 0;
    b->done++;
    b->last_done_ns = now;
    int code = p->status_code;
    if (code >= 100 && code < 600) {
        b->status[code / 100]++;
        b->by_code[code]++;
    }
    hist_add(&b->lat, (now - c->lat_start_ns) / 1000);
    if (code >= 200 && code < 300) {
        int rejected = c->body.len && memmem(c->body.data, c->body.len, "\"rejected\"", 10) != NULL;
        if (rejected) {
            b->partial++;
        } else {
            b->events_ok += (uint64_t)c->n_events;
            if (b->record && c->ids.len) fwrite(c->ids.data, 1, c->ids.len, b->record);
        }
    }
    if (b->o.idle) {
        b->idle_ready++;
        return 0;
    }
    if (!llhttp_should_keep_alive(p)) { /* the server closes: not an error */
        conn_close(c);
        return HPE_PAUSED;
    }
    if (c->writing) c->want_send = 1;
    else conn_next(c);
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn_t *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (n == 0) return;
    if (n < 0) {
        conn_fail(c);
        return;
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)n);
    if (e == HPE_PAUSED) return; /* closing */
    if (e != HPE_OK) conn_fail(c);
}

static void on_connect(uv_connect_t *r, int status)
{
    conn_t *c = r->data;
    bench_t *b = c->b;
    if (status < 0) {
        b->conn_errors++;
        if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
            c->closing = 1;
            uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
        }
        return;
    }
    c->connected = 1;
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_RESPONSE, &b->settings);
    c->parser.data = c;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (b->o.idle) {
        c->lat_start_ns = uv_hrtime();
        conn_send(c);
    } else {
        conn_next(c);
    }
}

static void conn_start(conn_t *c)
{
    bench_t *b = c->b;
    if (b->stopping) {
        maybe_finish(b);
        return;
    }
    struct sockaddr_storage addr;
    if (uv_ip4_addr(b->o.host, b->o.port, (struct sockaddr_in *)&addr) &&
        uv_ip6_addr(b->o.host, b->o.port, (struct sockaddr_in6 *)&addr)) {
        fprintf(stderr, "sillage-bench: %s is not an IP address\n", b->o.host);
        exit(2);
    }
    uv_tcp_init(b->loop, &c->tcp);
    c->started = 1;
    c->tcp.data = c;
    c->creq.data = c;
    c->closing = 0;
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&addr, on_connect);
    if (rc) {
        b->conn_errors++;
        c->closing = 1;
        uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
    }
}

static void on_stop_timer(uv_timer_t *t)
{
    bench_t *b = t->data;
    if (!b->grace) {
        b->grace = 1;
        b->stopping = 1;
        /* Connections waiting for their slot will not send again. */
        for (int i = 0; i < b->o.conns; i++)
            if (!b->c[i].busy) uv_timer_stop(&b->c[i].timer);
        maybe_finish(b);
        if (!uv_is_closing((uv_handle_t *)t)) uv_timer_start(t, on_stop_timer, 10000, 0); /* grace for answers in flight */
        return;
    }
    /* Grace over: what is still in flight counts as unanswered. */
    for (int i = 0; i < b->o.conns; i++)
        if (b->c[i].busy) {
            b->c[i].busy = 0;
            b->status[0]++;
            b->done++;
        }
    maybe_finish(b);
}

static void on_sigint(uv_signal_t *s, int sig)
{
    bench_t *b = s->data;
    b->end_ns = uv_hrtime();
    on_stop_timer(&b->stop_timer);
}

/* ---- report ---- */

static void report(bench_t *b, double elapsed_s)
{
    const opts_t *o = &b->o;
    printf("sillage-bench %s: %s, %d connections, %s, %.1f s\n", o->url,
           o->rate > 0 ? "open loop" : "closed loop", o->conns,
           o->batch > 1 ? "batches" : "one message per request", elapsed_s);
    if (o->rate > 0) printf("  offered rate  %.0f req/s\n", o->rate);
    printf("  requests      %" PRIu64 " answered (%.0f req/s)\n", b->done, b->done / elapsed_s);
    printf("  events        %" PRIu64 " acknowledged (%.0f events/s), messages %.0f bytes on average\n",
           b->events_ok, b->events_ok / elapsed_s, b->msgs ? (double)b->msg_bytes / b->msgs : 0.0);
    printf("  status       ");
    for (int i = 100; i < 600; i++)
        if (b->by_code[i]) printf(" %d=%" PRIu64, i, b->by_code[i]);
    printf(" unanswered=%" PRIu64 " partial=%" PRIu64 "\n", b->status[0], b->partial);
    printf("  conn errors   %" PRIu64 "\n", b->conn_errors);
    printf("  latency (us)  p50 %" PRIu64 "  p90 %" PRIu64 "  p99 %" PRIu64 "  p99.9 %" PRIu64 "  max %" PRIu64 "\n",
           hist_pct(&b->lat, 50), hist_pct(&b->lat, 90), hist_pct(&b->lat, 99), hist_pct(&b->lat, 99.9), b->lat.max);
    if (o->csv) {
        FILE *f = fopen(o->csv, "a+");
        if (f == NULL) {
            fprintf(stderr, "sillage-bench: %s: %s\n", o->csv, strerror(errno));
            return;
        }
        fseek(f, 0, SEEK_END);
        if (ftell(f) == 0)
            fprintf(f, "label,mode,conns,offered_rps,batch,seconds,requests,req_per_s,events_per_s,"
                       "non2xx,unanswered,p50_us,p90_us,p99_us,p999_us,max_us\n");
        uint64_t non2xx = b->status[1] + b->status[3] + b->status[4] + b->status[5] + b->partial;
        fprintf(f, "%s,%s,%d,%.0f,%d,%.2f,%" PRIu64 ",%.0f,%.0f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
                   ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n",
                o->label ? o->label : "", o->rate > 0 ? "open" : "closed", o->conns, o->rate, o->batch, elapsed_s,
                b->done, b->done / elapsed_s, b->events_ok / elapsed_s, non2xx, b->status[0], hist_pct(&b->lat, 50),
                hist_pct(&b->lat, 90), hist_pct(&b->lat, 99), hist_pct(&b->lat, 99.9), b->lat.max);
        fclose(f);
    }
}

/* ---- check mode: acknowledged ids against `sillage export` ---- */

typedef struct {
    char **key;
    uint32_t *seen;
    size_t cap, n;
} idset_t;

static uint64_t str_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static int idset_grow(idset_t *s)
{
    size_t cap = s->cap ? s->cap * 2 : 1 << 16;
    char **key = calloc(cap, sizeof(char *));
    uint32_t *seen = calloc(cap, sizeof(uint32_t));
    if (!key || !seen) {
        free(key);
        free(seen);
        return SL_ENOMEM;
    }
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->key[i]) continue;
        size_t j = str_hash(s->key[i], strlen(s->key[i])) & (cap - 1);
        while (key[j]) j = (j + 1) & (cap - 1);
        key[j] = s->key[i];
        seen[j] = s->seen[i];
    }
    free(s->key);
    free(s->seen);
    s->key = key;
    s->seen = seen;
    s->cap = cap;
    return 0;
}

static void idset_free(idset_t *s)
{
    for (size_t i = 0; i < s->cap; i++) free(s->key[i]);
    free(s->key);
    free(s->seen);
}

/* Returns the slot of id, inserting it when insert is set; -1 if absent. */
static long idset_slot(idset_t *s, const char *id, size_t n, int insert)
{
    if (insert && (s->n + 1) * 2 > s->cap && idset_grow(s)) return -1;
    if (s->cap == 0) return -1;
    size_t j = str_hash(id, n) & (s->cap - 1);
    while (s->key[j]) {
        if (strlen(s->key[j]) == n && memcmp(s->key[j], id, n) == 0) return (long)j;
        j = (j + 1) & (s->cap - 1);
    }
    if (!insert) return -1;
    s->key[j] = strndup(id, n);
    if (s->key[j] == NULL) return -1;
    s->n++;
    return (long)j;
}

static int check_mode(const char *acked_path, const char *export_path)
{
    FILE *fa = fopen(acked_path, "r");
    if (fa == NULL) {
        fprintf(stderr, "sillage-bench: %s: %s\n", acked_path, strerror(errno));
        return 2;
    }
    FILE *fe = strcmp(export_path, "-") == 0 ? stdin : fopen(export_path, "r");
    if (fe == NULL) {
        fprintf(stderr, "sillage-bench: %s: %s\n", export_path, strerror(errno));
        fclose(fa);
        return 2;
    }
    idset_t set = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    uint64_t acked_lines = 0, acked_twice = 0, exported = 0, unparsable = 0, dup = 0, missing = 0;
    while ((n = getline(&line, &cap, fa)) > 0) {
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        if (n == 0) continue;
        acked_lines++;
        size_t before = set.n;
        if (idset_slot(&set, line, (size_t)n, 1) < 0) {
            fprintf(stderr, "sillage-bench: out of memory\n");
            return 2;
        }
        if (set.n == before) acked_twice++;
    }
    idset_t extra = {0}; /* exported ids that were never acknowledged, for duplicate counting */
    while ((n = getline(&line, &cap, fe)) > 0) {
        cJSON *ev = cJSON_ParseWithLength(line, (size_t)n);
        const cJSON *mid = cJSON_GetObjectItemCaseSensitive(ev, "messageId");
        if (!cJSON_IsString(mid)) {
            unparsable++;
            cJSON_Delete(ev);
            continue;
        }
        exported++;
        size_t len = strlen(mid->valuestring);
        long j = idset_slot(&set, mid->valuestring, len, 0);
        idset_t *s = &set;
        if (j < 0) {
            s = &extra;
            j = idset_slot(&extra, mid->valuestring, len, 1);
        }
        if (j >= 0 && ++s->seen[j] == 2) {
            dup++;
            if (dup <= 10) printf("duplicated: %s\n", mid->valuestring);
        }
        cJSON_Delete(ev);
    }
    for (size_t i = 0; i < set.cap; i++)
        if (set.key[i] && set.seen[i] == 0) {
            missing++;
            if (missing <= 10) printf("missing: %s\n", set.key[i]);
        }
    printf("acknowledged %" PRIu64 " ids (%zu distinct), exported %" PRIu64 " events "
           "(%zu not in the acknowledged list), missing %" PRIu64 ", duplicated %" PRIu64 "\n",
           acked_lines, set.n, exported, extra.n, missing, dup);
    if (unparsable) printf("export lines without a messageId: %" PRIu64 "\n", unparsable);
    free(line);
    idset_free(&set);
    idset_free(&extra);
    fclose(fa);
    if (fe != stdin) fclose(fe);
    return (missing || dup) ? 1 : 0;
}

/* ---- main ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage:\n"
            "  sillage-bench [options] URL          drive http://HOST:PORT with simulated visitors\n"
            "  sillage-bench check ACKED EXPORT     compare acknowledged ids with `sillage export` output (- = stdin)\n"
            "  sillage-bench identify [--sizes L] [--samples N] URL\n"
            "                                       identify latency against the merged history's length\n"
            "  sillage-bench triggers [-n N] [--admin TOKEN] URL\n"
            "                                       hit acknowledged -> trigger readable in the feed\n"
            "options:\n"
            "  -c, --connections N   keep-alive connections (64)\n"
            "  -d, --duration S      seconds to send for (10)\n"
            "  -r, --rate R          open loop: R requests/s over all connections, latency from the\n"
            "                        intended send time; 0 = closed loop, as fast as answers come (0)\n"
            "  -b, --batch N         1: one message per request to /v1/{track,page,identify};\n"
            "                        N > 1: /v1/batch with N messages (1)\n"
            "  -n, --requests N      stop after N requests (no limit)\n"
            "  -k, --key KEY         write key (demo)\n"
            "      --visitors N      visitor population (100000)\n"
            "      --active N        only the N most recent arrivals browse, a new one every 10\n"
            "                        messages (0: every visitor equally likely at any moment)\n"
            "      --consent         messages carry context.consent.categoryPreferences\n"
            "      --login-share F   share of visitors who log in (0.15)\n"
            "      --order-share F   share of visitors who order (0.04)\n"
            "      --seed N          stream seed (1)\n"
            "      --run-id S        messageId prefix (random)\n"
            "      --record FILE     append every acknowledged messageId to FILE\n"
            "      --csv FILE        append a CSV row of the results to FILE\n"
            "      --label S         the CSV row's label\n"
            "      --idle N          open N keep-alive connections, one GET /healthz each, hold them\n"
            "                        for the duration; prints \"idle ready\" once all have answered\n");
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "check") == 0) return check_mode(argv[2], argv[3]);
    if (argc >= 2 && strcmp(argv[1], "identify") == 0) return identify_mode(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "triggers") == 0) return triggers_mode(argc - 1, argv + 1);
    static bench_t bench;
    bench_t *b = &bench;
    opts_t *o = &b->o;
    o->key = "demo";
    o->conns = 64;
    o->duration_s = 10;
    o->batch = 1;
    o->visitors = 100000;
    o->seed = 1;
    o->login_share = 0.15;
    o->order_share = 0.04;
    enum { O_VISITORS = 256, O_LOGIN, O_ORDER, O_SEED, O_RUN, O_RECORD, O_CSV, O_LABEL, O_IDLE, O_ACTIVE, O_CONSENT };
    static const struct option longs[] = {
        {"connections", 1, 0, 'c'}, {"duration", 1, 0, 'd'},   {"rate", 1, 0, 'r'},
        {"batch", 1, 0, 'b'},       {"requests", 1, 0, 'n'},   {"key", 1, 0, 'k'},
        {"visitors", 1, 0, O_VISITORS}, {"login-share", 1, 0, O_LOGIN}, {"order-share", 1, 0, O_ORDER},
        {"seed", 1, 0, O_SEED},     {"run-id", 1, 0, O_RUN},   {"record", 1, 0, O_RECORD},
        {"csv", 1, 0, O_CSV},       {"label", 1, 0, O_LABEL},  {"idle", 1, 0, O_IDLE},
        {"active", 1, 0, O_ACTIVE},
        {"consent", 0, 0, O_CONSENT},
        {"help", 0, 0, 'h'},        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "c:d:r:b:n:k:h", longs, NULL)) != -1) {
        switch (ch) {
        case 'c': o->conns = atoi(optarg); break;
        case 'd': o->duration_s = atof(optarg); break;
        case 'r': o->rate = atof(optarg); break;
        case 'b': o->batch = atoi(optarg); break;
        case 'n': o->max_requests = strtoull(optarg, NULL, 10); break;
        case 'k': o->key = optarg; break;
        case O_VISITORS: o->visitors = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_LOGIN: o->login_share = atof(optarg); break;
        case O_ORDER: o->order_share = atof(optarg); break;
        case O_SEED: o->seed = strtoull(optarg, NULL, 10); break;
        case O_RUN: o->run_id = optarg; break;
        case O_RECORD: o->record = optarg; break;
        case O_CSV: o->csv = optarg; break;
        case O_LABEL: o->label = optarg; break;
        case O_IDLE: o->idle = atoi(optarg); break;
        case O_ACTIVE: o->active = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_CONSENT: o->consent = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    o->url = argv[optind];
    if (o->idle > 0) o->conns = o->idle;
    if (o->conns < 1 || o->conns > 100000 || o->batch < 1 || o->batch > 1000 || o->duration_s <= 0 ||
        o->rate < 0 || o->visitors == 0) {
        fprintf(stderr, "sillage-bench: connections 1..100000, batch 1..1000, duration > 0, rate >= 0\n");
        return 2;
    }
    if (sscanf(o->url, "http://%255[^:/]:%d", o->host, &o->port) != 2 || o->port <= 0 || o->port > 65535) {
        fprintf(stderr, "sillage-bench: URL must be http://IP:PORT, not %s\n", o->url);
        return 2;
    }
    char run_id[32];
    if (o->run_id == NULL) {
        unsigned char r[6];
        sl_random_bytes(r, sizeof(r));
        snprintf(run_id, sizeof(run_id), "b%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5]);
        o->run_id = run_id;
    }
    char cred[300];
    snprintf(cred, sizeof(cred), "%s:", o->key);
    bclient_base64((const unsigned char *)cred, strlen(cred), b->auth);
    if (o->record && (b->record = fopen(o->record, "a")) == NULL) {
        fprintf(stderr, "sillage-bench: %s: %s\n", o->record, strerror(errno));
        return 2;
    }
    sl_gen_options_t go = {o->visitors, o->active, o->seed, o->login_share, o->order_share, o->run_id, o->consent};
    b->gen = sl_gen_new(&go);
    b->c = calloc((size_t)o->conns, sizeof(conn_t));
    if (b->gen == NULL || b->c == NULL) {
        fprintf(stderr, "sillage-bench: out of memory\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    llhttp_settings_init(&b->settings);
    b->settings.on_message_begin = on_message_begin;
    b->settings.on_body = on_body;
    b->settings.on_message_complete = on_message_complete;

    b->loop = uv_default_loop();
    b->t0_ns = uv_hrtime();
    b->end_ns = b->t0_ns + (uint64_t)(o->duration_s * 1e9);
    uv_timer_init(b->loop, &b->stop_timer);
    b->stop_timer.data = b;
    uv_timer_start(&b->stop_timer, on_stop_timer, (uint64_t)(o->duration_s * 1000), 0);
    uv_signal_init(b->loop, &b->sigint);
    b->sigint.data = b;
    uv_signal_start(&b->sigint, on_sigint, SIGINT);
    for (int i = 0; i < o->conns; i++) {
        conn_t *c = &b->c[i];
        c->b = b;
        c->idx = i;
        uv_timer_init(b->loop, &c->timer);
        c->timer.data = c;
    }
    if (o->idle) {
        /* Open idle connections in waves so the listen backlog is not flooded. */
        int opened = 0, announced = 0;
        while (opened < o->conns || !announced) {
            int wave = opened + 256 < o->conns ? opened + 256 : o->conns;
            for (; opened < wave; opened++) conn_start(&b->c[opened]);
            while (b->idle_ready + (int)b->conn_errors < opened && uv_hrtime() < b->end_ns)
                uv_run(b->loop, UV_RUN_ONCE);
            if (opened == o->conns && !announced) {
                printf("idle ready: %d connections answered, %" PRIu64 " connection errors\n", b->idle_ready,
                       b->conn_errors);
                fflush(stdout);
                announced = 1;
            }
            if (uv_hrtime() >= b->end_ns) break;
        }
    } else {
        for (int i = 0; i < o->conns; i++) conn_start(&b->c[i]);
    }
    uv_run(b->loop, UV_RUN_DEFAULT);
    uint64_t end = b->last_done_ns > b->t0_ns ? b->last_done_ns : b->t0_ns + 1;
    double elapsed = (double)(end - b->t0_ns) / 1e9;
    if (b->record) fclose(b->record);
    if (!o->idle) report(b, elapsed);
    for (int i = 0; i < o->conns; i++) {
        sl_buf_free(&b->c[i].req);
        sl_buf_free(&b->c[i].ids);
        sl_buf_free(&b->c[i].body);
    }
    free(b->c);
    sl_gen_free(b->gen);
    uv_loop_close(b->loop);
    /* Nothing acknowledged is a failed run (the smoke test relies on it). */
    return (!o->idle && b->events_ok == 0) ? 1 : 0;
}
