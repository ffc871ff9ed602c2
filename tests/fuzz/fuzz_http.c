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
 * handed it (issue 13, C1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http_int.h"
#include "sl_stitch.h"
#include "sl_triggers.h"

static uv_loop_t loop;
static sl_config_t cfg;
static sl_store_t *store;
static sl_stage_t *stage;
static sl_server_t *srv;
static size_t answered;

static void hook(conn_t *c, const char *p, size_t n, void *arg)
{
    (void)c;
    (void)arg;
    if (n < 12 || memcmp(p, "HTTP/1.1 ", 9) != 0) abort(); /* every answer is a status line */
    answered += n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    sl_log_level = SL_LOG_ERROR;
    sl_json_hooks_install();
    static char dir[] = "/tmp/sl-fuzz-http-XXXXXX";
    if (mkdtemp(dir) == NULL) abort();
    char json[1536];
    snprintf(json, sizeof(json),
             "{\"listen\":\"127.0.0.1:0\",\"data_dir\":\"%s\",\"durability\":\"os\",\"map_size\":\"64MB\","
             "\"sources\":[{\"name\":\"s\",\"write_key\":\"wk\"},{\"name\":\"b\",\"write_key\":\"bk\",\"trusted\":true}],\"admin_token\":\"tok\",\"demo\":true,\"debug\":true,"
             "\"limits\":{\"max_request_bytes\":65536,\"max_message_bytes\":2048},"
             "\"triggers\":[{\"name\":\"c\",\"type\":\"abandoned_cart\",\"delay\":\"1s\"},"
             "{\"name\":\"p\",\"type\":\"page_visit\",\"url\":\"/*\",\"requires_consent\":\"marketing\"},{\"name\":\"t\",\"type\":\"trait_change\",\"trait\":\"plan\",\"pressure\":false}],\"pressure\":{\"max_per_profile_per_day\":5}}",
             dir);
    char err[256];
    if (sl_config_parse(&cfg, json, strlen(json), err, sizeof(err))) abort();
    sl_store_options_t so = {.data_dir = dir, .map_size_bytes = 64 << 20, .map_size_max_bytes = 1ULL << 30,
                             .nosync = 1, .dedupe_window_ms = 86400000, .max_queue_messages = 100000};
    uv_loop_init(&loop);
    if (sl_store_open(&store, &so)) abort();
    /* the derivation stage as `sillage serve` wires it: identity, then triggers */
    static char ddir[64];
    snprintf(ddir, sizeof(ddir), "%s/derived", dir);
    sl_stage_options_t go = {.dir = ddir, .map_size_bytes = 64 << 20, .map_size_max_bytes = 1ULL << 30, .nosync = 1};
    stage = sl_stage_new(store, &go);
    sl_stitch_t *stitch = sl_stitch_new(&cfg, store);
    sl_trig_t *trig = sl_trig_new(&cfg, stitch);
    if (stage == NULL || stitch == NULL || trig == NULL || sl_stage_add_step(stage, sl_stitch_step(stitch)) ||
        sl_trig_attach(trig, stage) || sl_stage_open(stage) || sl_store_start(store, &loop))
        abort();
    if (sl_http_server_start(&srv, &loop, &cfg, store) || sl_http_server_set_stage(srv, stage, stitch, trig) ||
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
    return 0;
}
