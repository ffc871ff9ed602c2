/* fuzz_http.c - the HTTP request path without a socket: bytes are parsed by
 * llhttp with the server's own callbacks, routed, authenticated, validated,
 * enriched, stored (a real store in a temporary directory, durability "os",
 * with the derivation stage running the stitcher and trigger engine on its
 * own thread; each input's events are derived before the next input) and
 * answered into a buffer.
 *
 * max_message_bytes is small (2 KB, so the scratch buffer is 6 KB) and the
 * loop below waits for the writer thread's commit: a message that outgrows
 * the scratch buffer once normalised (a batch's context merged into it) is
 * within the fuzzer's reach, with the writer copying what the loop thread
 * handed it (issue 13, C1).
 *
 * Every answer that says it is JSON must parse as JSON, and every
 * Server-Sent Event's data too; after each input the harness reads the feed
 * entries it has not read yet and the most recently active profiles, as an
 * automation engine and the console would (issue 21, H1: a sum that
 * overflowed printed as inf, which is not JSON). */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "sl_audiences.h"
#include "http_int.h"
#include "sl_stitch.h"
#include "sl_triggers.h"

static uv_loop_t loop;
static sl_config_t cfg;
static sl_store_t *store;
static sl_stage_t *stage;
static sl_server_t *srv;
static size_t answered;
static uint64_t feed_read; /* the feed entries read back so far */

static void must_parse(const char *p, size_t n, const char *what)
{
    cJSON *doc = cJSON_ParseWithLength(p, n);
    if (doc == NULL) {
        fprintf(stderr, "fuzz_http: %s is not JSON: %.*s\n", what, (int)(n > 2000 ? 2000 : n), p);
        abort();
    }
    cJSON_Delete(doc);
}

/* The value of header name in head[0..n), or NULL; *len its length. */
static const char *header(const char *head, size_t n, const char *name, size_t *len)
{
    size_t k = strlen(name);
    for (const char *l = head; l && l < head + n;) {
        const char *e = memmem(l, (size_t)(head + n - l), "\r\n", 2);
        if (e == NULL) break;
        if ((size_t)(e - l) > k + 1 && strncasecmp(l, name, k) == 0 && l[k] == ':') {
            const char *v = l + k + 1;
            while (v < e && *v == ' ') v++;
            *len = (size_t)(e - v);
            return v;
        }
        l = e + 2;
    }
    return NULL;
}

/* Each SSE event's data lines in p[0..n) parse as JSON (comments and
 * other fields are not data). */
static void check_sse(const char *p, size_t n)
{
    for (const char *l = p; l < p + n;) {
        const char *e = memchr(l, '\n', (size_t)(p + n - l));
        if (e == NULL) break; /* a cut-off line: its rest never comes */
        if (e - l > 5 && memcmp(l, "data:", 5) == 0) {
            const char *v = l + 5 + (l[5] == ' ');
            must_parse(v, (size_t)(e - v), "an SSE event's data");
        }
        l = e + 1;
    }
}

static void hook(conn_t *c, const char *p, size_t n, void *arg)
{
    (void)c;
    sl_buf_t *keep = arg;
    if (n < 12 || memcmp(p, "HTTP/1.1 ", 9) != 0) abort(); /* every answer is a status line */
    answered += n;
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (end == NULL) abort();
    size_t hn = (size_t)(end - p) + 2, tl = 0, ll = 0;
    const char *body = end + 4;
    size_t have = (size_t)(p + n - body);
    const char *type = header(p, hn, "Content-Type", &tl);
    const char *len = header(p, hn, "Content-Length", &ll);
    if (type && tl >= 17 && memcmp(type, "text/event-stream", 17) == 0) {
        check_sse(body, have);
    } else if (type && tl >= 16 && memcmp(type, "application/json", 16) == 0 && len) {
        size_t want = (size_t)strtoull(len, NULL, 10);
        if (want > have) abort(); /* an answer is written whole */
        must_parse(body, want, "an answer said to be JSON");
        if (keep) {
            keep->len = 0;
            sl_buf_append(keep, body, want);
        }
    }
}

/* Sends one admin GET from an address of its own (the fuzzed requests may
 * have spent 203.0.113.9's admin attempts) and runs the loop until it is
 * answered; the JSON body, if any, in out. */
static void admin_get(const char *path, sl_buf_t *out)
{
    out->len = 0;
    conn_t *c = http_fake_conn(srv, hook, out);
    if (c == NULL) return;
    sl_ipnet_parse("127.0.0.1", 9, &c->peer);
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n\r\n", path);
    http_fake_input(c, req, (size_t)n);
    for (int i = 0; i < 10000 && srv->n_conns == 1 && !c->closing && c->busy; i++) uv_run(&loop, UV_RUN_ONCE);
    if (srv->n_conns == 1 && !c->closing) http_close(c);
    while (srv->n_conns > 0) uv_run(&loop, UV_RUN_NOWAIT);
}

/* Reads back what consumers read: the feed entries not read yet (the page
 * is parsed by the hook) and the profiles of the persons active last. */
static void read_back(void)
{
    sl_buf_t out = {0};
    char path[128];
    snprintf(path, sizeof(path), "/v1/triggers?after=%llu&limit=200", (unsigned long long)feed_read);
    admin_get(path, &out);
    cJSON *doc = out.len ? cJSON_ParseWithLength(out.data, out.len) : NULL;
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(doc, "next");
    if (cJSON_IsNumber(next) && next->valuedouble > (double)feed_read) feed_read = (uint64_t)next->valuedouble;
    cJSON_Delete(doc);
    admin_get("/v1/profiles?limit=5", &out);
    admin_get("/v1/audiences", &out);
    admin_get("/v1/audiences/a-pro/members?limit=3", &out);
    sl_buf_free(&out);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    sl_log_level = SL_LOG_ERROR;
    sl_json_hooks_install();
    if (sl_fields_config_register() || sl_trig_config_register() || sl_aud_config_register()) abort();
    static char dir[] = "/tmp/sl-fuzz-http-XXXXXX";
    if (mkdtemp(dir) == NULL) abort();
    char json[6144];
    snprintf(json, sizeof(json),
             "{\"listen\":\"127.0.0.1:0\",\"data_dir\":\"%s\",\"durability\":\"os\",\"map_size\":\"64MB\","
             "\"sources\":[{\"name\":\"s\",\"write_key\":\"wk\"},{\"name\":\"b\",\"write_key\":\"bk\",\"trusted\":true}],\"admin_token\":\"tok\",\"demo\":true,\"debug\":true,"
             "\"limits\":{\"max_request_bytes\":65536,\"max_message_bytes\":2048},"
             /* the computed fields the public key's events reach: the ledger, refunds (key bk),
              * generic fields with windows and values, tracked changes */
             "\"computed\":{\"commerce\":{\"currency\":\"EUR\",\"fx\":{\"USD\":0.5},\"windows\":[\"90d\"]},"
             "\"fields\":[{\"name\":\"v\",\"type\":\"count\",\"event\":\"Product Viewed\",\"window\":\"2s\"},"
             "{\"name\":\"dl\",\"type\":\"distinct_list\",\"event\":\"Order Completed\",\"property\":\"properties.coupon\"},"
             "{\"name\":\"mx\",\"type\":\"max\",\"event\":\"track\",\"property\":\"properties.n\",\"window\":\"3d\"}]},"
             "\"triggers\":[{\"name\":\"c\",\"type\":\"abandoned_cart\",\"delay\":\"1s\"},"
             "{\"name\":\"cc\",\"type\":\"computed_change\",\"field\":\"v\",\"crosses\":1,\"in_payload\":[\"orders\",\"dl\"]},"
             "{\"name\":\"rs\",\"type\":\"computed_change\",\"field\":\"rfm.segment\"},"
             "{\"name\":\"p\",\"type\":\"page_visit\",\"url\":\"/*\",\"requires_consent\":\"marketing\"},{\"name\":\"t\",\"type\":\"trait_change\",\"trait\":\"plan\",\"pressure\":false},"
             "{\"name\":\"e\",\"type\":\"event\",\"event\":\"Email Sent\",\"delay\":\"1s\",\"max_pending\":3,"
             "\"where\":{\"field\":\"properties.items[].n\",\"gte\":1},\"unless\":{\"event\":\"Email Opened\","
             "\"match\":\"properties.id\",\"where\":{\"not\":{\"field\":\"properties.bot\",\"eq\":true}}},"
             "\"if\":{\"any\":[{\"field\":\"profile.traits.phone\",\"exists\":true},{\"field\":\"profile.identified\",\"eq\":true}]}},"
             "{\"name\":\"i\",\"type\":\"inactivity\",\"after\":\"2s\",\"event\":\"Order Completed\"}],\"pressure\":{\"max_per_profile_per_day\":5,\"tiers\":[{\"audience\":\"a-pro\",\"max_per_profile_per_week\":2}]},"
             /* audiences the public key's events move: traits, computed (a timer's too), consent, one reading another */
             "\"audiences\":[{\"name\":\"a-v\",\"where\":{\"field\":\"profile.computed.v\",\"gte\":1},\"include_anonymous\":true},"
             "{\"name\":\"a-pro\",\"where\":{\"any\":[{\"field\":\"profile.traits.plan\",\"eq\":\"pro\"},"
             "{\"field\":\"profile.consent.marketing\",\"eq\":true}]},\"requires_consent\":\"marketing\"},"
             "{\"name\":\"a-both\",\"where\":{\"all\":[{\"field\":\"profile.audiences\",\"contains\":\"a-v\"},"
             "{\"field\":\"profile.audiences\",\"contains\":\"a-pro\"},{\"field\":\"profile.last_seen\",\"after\":\"1d\"}]}}]}",
             dir);
    char err[256];
    if (sl_config_parse(&cfg, json, strlen(json), err, sizeof(err))) abort();
    sl_store_options_t so = {.data_dir = dir, .map_size_bytes = 64 << 20, .map_size_max_bytes = 1ULL << 30,
                             .nosync = 1, .dedupe_window_ms = 86400000, .max_queue_messages = 100000};
    uv_loop_init(&loop);
    if (sl_store_open(&store, &so)) abort();
    /* the derivation stage as `sillage serve` wires it: identity, the feed, then triggers */
    static char ddir[64];
    snprintf(ddir, sizeof(ddir), "%s/derived", dir);
    sl_stage_options_t go = {.dir = ddir, .map_size_bytes = 64 << 20, .map_size_max_bytes = 1ULL << 30, .nosync = 1};
    stage = sl_stage_new(store, &go);
    sl_stitch_t *stitch = sl_stitch_new(&cfg, store);
    sl_feed_t *feed = sl_feed_new(cfg.trigger_retention_ms);
    sl_fields_t *fields = stitch ? sl_fields_new(&cfg, stitch) : NULL;
    sl_trig_t *trig = feed && fields ? sl_trig_new(&cfg, stitch, fields, feed) : NULL;
    sl_aud_t *aud = feed && fields ? sl_aud_new(&cfg, stitch, fields, feed) : NULL;
    if (stage == NULL || stitch == NULL || trig == NULL || aud == NULL || sl_stage_add_step(stage, sl_stitch_step(stitch)) ||
        sl_fields_attach(fields, stage) || sl_feed_attach(feed, stage) || sl_trig_attach(trig, stage) ||
        (sl_trig_set_audiences(trig, aud), sl_aud_attach(aud, stage)) || sl_stage_open(stage) || sl_store_start(store, &loop))
        abort();
    if (sl_http_server_start(&srv, &loop, &cfg, store) ||
        (sl_http_server_set_fields(srv, fields), sl_http_server_set_audiences(srv, aud),
         sl_http_server_set_stage(srv, stage, stitch, trig, feed)) ||
        sl_stage_start(stage, &loop))
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    conn_t *c = http_fake_conn(srv, hook, NULL);
    if (c == NULL) return 0;
    /* in two pieces, so that requests split across reads are exercised too */
    size_t half = size > 1 ? (size_t)data[0] % size : size;
    http_fake_input(c, (const char *)data, half);
    http_fake_input(c, (const char *)data + half, size - half);
    /* c is the only connection: n_conns == 1 while it is not freed */
    for (int i = 0; i < 10000 && srv->n_conns == 1 && !c->closing && c->busy && c->feed_mode == FEED_NONE; i++)
        uv_run(&loop, UV_RUN_ONCE);
    if (srv->n_conns == 1 && !c->closing) http_close(c);
    while (srv->n_conns > 0) uv_run(&loop, UV_RUN_NOWAIT);
    /* what the input stored is derived before the next one: a crash in a
     * step belongs to this input */
    for (int i = 0; i < 100000 && sl_stage_applied(stage) < sl_store_durable_seq(store); i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(50);
    }
    read_back();
    return 0;
}
