/* routes.c - what each request gets: ingestion (single messages, batches,
 * the pixel), CORS preflight, /healthz and /metrics.
 *
 * Ingestion: decode the body (gzip, bounded), prescan (depth, UTF-8), parse,
 * authenticate the write key, normalise and enrich every message, print it,
 * and queue the printed messages for the writer. The answer is written by
 * ingest_done() once the writer reports the commit.
 */
#define _GNU_SOURCE
#include "http_int.h"
#include "sl_stitch.h"
#include "sl_triggers.h"
#include "sl_webhooks.h"
#include "sl_nats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const unsigned char pixel_gif[] = {
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
    0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b};

/* ---- authentication ------------------------------------------------------------ */

/* Every source is compared, each in constant time: the answer's timing says
 * nothing about which bytes of which key matched. */
static const sl_source_t *find_source(const sl_config_t *cfg, const char *key, size_t len)
{
    const sl_source_t *found = NULL;
    for (size_t i = 0; i < cfg->n_sources; i++) {
        const char *wk = cfg->sources[i].write_key;
        if (sl_secret_equal(key, len, wk, strlen(wk)) && found == NULL) found = &cfg->sources[i];
    }
    return found;
}

/* The source of "Authorization: Basic base64(key:)", or NULL with *why set. */
static const sl_source_t *basic_source(conn_t *c, const char **why)
{
    req_t *r = c->req;
    const char *b64 = r->authorization + 6;
    while (*b64 == ' ') b64++;
    size_t n = strlen(b64);
    if (n > 1024) {
        *why = "Authorization header is too long";
        return NULL;
    }
    unsigned char *dec = sl_arena_alloc(&r->arena, n * 3 / 4 + 4);
    long dl = dec ? sl_base64_decode(b64, n, dec) : -1;
    if (dl < 0) {
        *why = "Authorization: Basic credentials are not valid base64";
        return NULL;
    }
    const unsigned char *colon = memchr(dec, ':', (size_t)dl);
    size_t kl = colon ? (size_t)(colon - dec) : (size_t)dl;
    const sl_source_t *s = find_source(c->srv->cfg, (const char *)dec, kl);
    if (s == NULL) *why = "unknown write key";
    return s;
}

static int has_basic(const req_t *r)
{
    return r->authorization && strncasecmp(r->authorization, "Basic ", 6) == 0;
}

const char *route_basic_auth_refusal(conn_t *c)
{
    const char *why = NULL;
    if (!has_basic(c->req) || basic_source(c, &why)) return NULL;
    return why;
}

/* The write key from "Authorization: Basic base64(key:)", else from the
 * body's writeKey. Returns the source, or NULL with *why set. */
static const sl_source_t *authenticate(conn_t *c, const cJSON *body, const char **why)
{
    const sl_config_t *cfg = c->srv->cfg;
    if (has_basic(c->req)) return basic_source(c, why);
    const cJSON *wk = cJSON_GetObjectItemCaseSensitive(body, "writeKey");
    if (cJSON_IsString(wk)) {
        const sl_source_t *s = find_source(cfg, wk->valuestring, strlen(wk->valuestring));
        if (s) return s;
        *why = "unknown write key";
        return NULL;
    }
    *why = "missing write key: send it as the Basic auth username or as writeKey in the body";
    return NULL;
}

/* ---- ingestion ------------------------------------------------------------------- */

/* What one request of n messages may store once normalised: a batch's
 * context is copied into each of its messages, so a small request could
 * otherwise store a thousand times its size. The 1 KB per message leaves
 * room for the server's fields (receivedAt, timestamp, messageId, context.ip
 * and a GeoIP city location). */
#define STORED_BYTES_PER_REQUEST(cfg, n) (4 * (cfg)->limits.max_request_bytes + 1024 * (uint64_t)(n))

static void add_rejection(req_t *r, long index, const char *msg)
{
    if (r->n_rejected) sl_buf_append(&r->errors, ",", 1);
    if (index >= 0) sl_buf_printf(&r->errors, "{\"index\":%ld,\"error\":", index);
    else sl_buf_appends(&r->errors, "{\"error\":");
    sl_buf_append_json_str(&r->errors, msg, strlen(msg));
    sl_buf_append(&r->errors, "}", 1);
    r->n_rejected++;
}

static void ingest_done(sl_store_batch_t *b)
{
    req_t *r = b->data;
    conn_t *c = r->conn;
    if (b->rc == 0 && c && c->srv->debug_streams) {
        for (size_t i = 0; i < b->n_msgs; i++) {
            const sl_store_msg_t *m = &b->msgs[i];
            const sl_stitch_msg_t *sm = m->meta;
            if (m->status == SL_STORE_STORED) feed_debug_publish(c->srv, m->json, m->json_len, sm ? sm->person : 0);
        }
    }
    if (c == NULL) { /* the client left; the messages are stored all the same */
        req_free(r);
        return;
    }
    if (b->rc) {
        char msg[200];
        if (b->failed_alone) { /* this request's own fault: retrying as is would fail again */
            snprintf(msg, sizeof(msg), "this request could not be applied, nothing of it was stored: %s",
                     sl_strerror(b->rc));
            http_respond_error(c, 500, msg);
            return;
        }
        snprintf(msg, sizeof(msg), "storage unavailable, nothing was stored: %s", sl_strerror(b->rc));
        http_respond_error(c, 503, msg);
        return;
    }
    if (r->is_pixel) {
        http_respond(c, 200, "image/gif", "Cache-Control: no-store, max-age=0\r\n",
                     (const char *)pixel_gif, sizeof(pixel_gif));
        return;
    }
    /* Stored, but some traits were not kept on the profile (limits). */
    size_t n_warn = 0;
    for (size_t i = 0; i < b->n_msgs; i++) {
        const sl_stitch_msg_t *sm = b->msgs[i].meta;
        n_warn += sm && sm->dropped_traits && b->msgs[i].status == SL_STORE_STORED;
    }
    if (r->n_rejected == 0 && n_warn == 0) {
        static const char ok[] = "{\"success\":true}";
        http_respond(c, 200, "application/json", NULL, ok, sizeof(ok) - 1);
        return;
    }
    sl_buf_t out = {0};
    sl_buf_printf(&out, "{\"success\":true,\"accepted\":%zu,\"rejected\":%zu,\"errors\":[",
                  b->n_msgs, r->n_rejected);
    if (r->errors.len) sl_buf_append(&out, r->errors.data, r->errors.len);
    sl_buf_appends(&out, "]");
    if (n_warn) {
        const sl_config_t *cfg = c->srv->cfg;
        sl_buf_appends(&out, ",\"warnings\":[");
        for (size_t i = 0, k = 0; i < b->n_msgs; i++) {
            const sl_stitch_msg_t *sm = b->msgs[i].meta;
            if (sm == NULL || sm->dropped_traits == 0 || b->msgs[i].status != SL_STORE_STORED) continue;
            sl_buf_printf(&out, "%s{\"messageId\":", k++ ? "," : "");
            sl_buf_append_json_str(&out, sm->message_id, strlen(sm->message_id));
            sl_buf_printf(&out, ",\"warning\":\"stored, but %llu traits were not kept on the profile: a person "
                                "keeps at most limits.max_traits_per_person (%llu) traits in "
                                "limits.max_traits_bytes (%llu)\"}",
                          (unsigned long long)sm->dropped_traits, (unsigned long long)cfg->limits.max_traits_per_person,
                          (unsigned long long)cfg->limits.max_traits_bytes);
        }
        sl_buf_appends(&out, "]");
    }
    sl_buf_appends(&out, "}");
    http_respond(c, 200, "application/json", NULL, out.data ? out.data : "", out.len);
    sl_buf_free(&out);
}

/* The client's address: the socket's, or X-Forwarded-For from a trusted
 * proxy. Worked out once per request (the rate limiter and enrichment). */
static const sl_ipnet_t *client_ip(conn_t *c)
{
    req_t *r = c->req;
    if (!r->has_client_ip) {
        sl_client_ip(&c->peer, r->xff, r->xff ? strlen(r->xff) : 0, c->srv->trusted, c->srv->n_trusted,
                     &r->client_ip);
        r->has_client_ip = 1;
    }
    return &r->client_ip;
}

/* The address and location every message of this request gets. */
static void request_context(conn_t *c, sl_ingest_ctx_t *ctx, char ipbuf[46], cJSON **loc)
{
    sl_server_t *srv = c->srv;
    sl_ipnet_t ip = *client_ip(c);
    *loc = ip.family ? sl_geo_lookup(srv->geo, &ip) : NULL; /* full address: better precision */
    if (srv->cfg->ip_anonymize) sl_ip_anonymize(&ip);
    ipbuf[0] = '\0';
    if (ip.family) sl_ip_format(&ip, ipbuf);
    ctx->ip = ipbuf[0] ? ipbuf : NULL;
    ctx->location = *loc;
}

static const char *str_member(const cJSON *o, const char *name)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

/* 1 when an abandoned_cart rule of cfg looks at track events named event. */
static int cart_rule_event(const sl_config_t *cfg, const char *event)
{
    if (strcmp(event, "Product Removed") == 0) return 1;
    for (size_t i = 0; i < cfg->n_triggers; i++) {
        const sl_trigger_rule_t *t = &cfg->triggers[i];
        if (t->type != SL_TRIG_ABANDONED_CART) continue;
        for (size_t j = 0; j < t->n_start_events; j++)
            if (strcmp(t->start_events[j], event) == 0) return 1;
    }
    return 0;
}

/* What the stitcher needs of a normalised message, in the request's arena
 * (alive until the commit is answered). NULL when out of memory. */
sl_stitch_msg_t *collector_stitch_input(const sl_config_t *cfg, const sl_config_t *rules, sl_stitch_t *stitch,
                                        const cJSON *msg, const char *message_id, sl_arena_t *arena)
{
    sl_stitch_msg_t *sm = sl_arena_alloc(arena, sizeof(*sm));
    if (sm == NULL) return NULL;
    memset(sm, 0, sizeof(*sm));
    const char *type = str_member(msg, "type");
    int t = type ? sl_msg_type_from_name(type, strlen(type)) : -1;
    static const int map[SL_MSG_NTYPES] = {
        [SL_MSG_TRACK] = SL_STITCH_TRACK,       [SL_MSG_PAGE] = SL_STITCH_PAGE,
        [SL_MSG_SCREEN] = SL_STITCH_SCREEN,     [SL_MSG_IDENTIFY] = SL_STITCH_IDENTIFY,
        [SL_MSG_ALIAS] = SL_STITCH_ALIAS,       [SL_MSG_GROUP] = SL_STITCH_GROUP};
    sm->type = t >= 0 && t < SL_MSG_NTYPES ? map[t] : SL_STITCH_TRACK;
    if ((sm->message_id = sl_arena_strndup(arena, message_id, strlen(message_id))) == NULL) return NULL;
    sm->user_id = sl_stitch_clean_id(stitch, str_member(msg, "userId"), arena, 0);
    sm->anonymous_id = sl_stitch_clean_id(stitch, str_member(msg, "anonymousId"), arena, 0);
    sm->previous_id = sl_stitch_clean_id(stitch, str_member(msg, "previousId"), arena, 0);
    /* the source as stored with the event (context.sillage.source): one
     * answer for this node and for a NATS core reading the same event */
    const cJSON *sil = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(msg, "context"), "sillage");
    const sl_source_t *src = sl_config_source(cfg, str_member(sil, "source"));
    sm->trusted = src && src->trusted;
    const char *ts = str_member(msg, "timestamp");
    if (ts == NULL || sl_time_parse_iso(ts, strlen(ts), &sm->ts_ms)) sm->ts_ms = sl_now_ms();
    const cJSON *traits = cJSON_GetObjectItemCaseSensitive(msg, "traits");
    if (sm->type == SL_STITCH_IDENTIFY && cJSON_IsObject(traits)) {
        for (size_t i = 0; i < cfg->n_identity_traits && i < SL_STITCH_MAX_TRAITS; i++)
            sm->trait_ids[i] = sl_stitch_clean_id(stitch, str_member(traits, cfg->identity_traits[i]), arena, 1);
        char *txt = cJSON_PrintUnformatted(traits);
        if (txt == NULL) return NULL;
        sm->traits_json = sl_arena_strndup(arena, txt, strlen(txt));
        cJSON_free(txt);
        if (sm->traits_json == NULL) return NULL;
    }
    const char *event = str_member(msg, "event");
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(msg, "properties");
    if (rules->n_triggers && sm->type == SL_STITCH_TRACK && event) {
        if ((sm->event = sl_arena_strndup(arena, event, strlen(event))) == NULL) return NULL;
        if (cJSON_IsObject(props) && cart_rule_event(rules, event)) {
            char *txt = cJSON_PrintUnformatted(props);
            if (txt == NULL) return NULL;
            sm->props_json = sl_arena_strndup(arena, txt, strlen(txt));
            cJSON_free(txt);
            if (sm->props_json == NULL) return NULL;
        }
    }
    if (rules->n_triggers && sm->type == SL_STITCH_PAGE) {
        const cJSON *page = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(msg, "context"), "page");
        const char *url = str_member(props, "url"), *path = str_member(props, "path");
        if (url == NULL) url = str_member(page, "url");
        if (path == NULL) path = str_member(page, "path");
        if (url && (sm->url = sl_arena_strndup(arena, url, strlen(url))) == NULL) return NULL;
        if (path == NULL && url) { /* the path of an absolute URL */
            const char *p = strstr(url, "://");
            p = p ? strchr(p + 3, '/') : NULL;
            if (p) path = p;
        }
        if (path) {
            size_t n = strcspn(path, "?#");
            if ((sm->path = sl_arena_strndup(arena, path, n)) == NULL) return NULL;
        }
    }
    if (sm->type == SL_STITCH_TRACK && event && strcmp(event, "Order Completed") == 0) {
        const cJSON *rev = cJSON_GetObjectItemCaseSensitive(props, "revenue");
        if (!cJSON_IsNumber(rev)) rev = cJSON_GetObjectItemCaseSensitive(props, "total");
        sm->is_order = 1;
        sm->revenue = cJSON_IsNumber(rev) ? rev->valuedouble : 0;
        const char *cur = str_member(props, "currency");
        if (cur) snprintf(sm->currency, sizeof(sm->currency), "%s", cur);
    }
    return sm;
}

static sl_stitch_msg_t *stitch_input(conn_t *c, const cJSON *msg, const char *message_id)
{
    return collector_stitch_input(c->srv->cfg, c->srv->rules_cfg, c->srv->stitch, msg, message_id, &c->req->arena);
}

/* 1 (with the error in msg) when an object of x, outside skip, repeats a member. */
static int duplicate_member(const cJSON *x, const cJSON *skip, char *msg, size_t msg_len)
{
    const char *d = sl_json_dup_member(x, skip);
    if (d == NULL) return 0;
    snprintf(msg, msg_len, "an object repeats the member \"%.64s\": each name may appear once", d);
    return 1;
}

/* Normalises one message and appends its printed form to the batch.
 * Returns NULL or why it was refused (*status: the HTTP status a single
 * message gets for it).
 *
 * The message is printed into the scratch buffer (max_message_bytes plus
 * 4 KB for the fields the server adds) and copied into the request's arena,
 * which lives until the commit is answered. A message that does not fit once
 * normalised -- cJSON prints 9e15 as 9e+15, a batch's context is merged in --
 * is refused: the stored form is bounded, and nothing printed into the JSON
 * arena (emptied when ingest_json returns) ever reaches the writer. */
static const char *accept_message(conn_t *c, cJSON *msg, int type, const sl_ingest_ctx_t *ctx,
                                  const sl_source_t *src, int *status)
{
    req_t *r = c->req;
    *status = 400;
    const char *why = sl_msg_normalize(msg, type, ctx);
    if (why) return why;
    sl_server_t *srv = c->srv;
    if (!cJSON_PrintPreallocated(msg, srv->scratch, (int)srv->scratch_len, 0)) {
        *status = 413;
        return "message exceeds limits.max_message_bytes once normalised (the batch's context and the "
               "server's fields included)";
    }
    size_t len = strlen(srv->scratch);
    if (r->stored_bytes + len > STORED_BYTES_PER_REQUEST(srv->cfg, r->n_in_request)) {
        *status = 413;
        r->over_stored = 1;
        return "request would store more than 4 x limits.max_request_bytes + 1 KB per message once normalised "
               "(a batch's context is "
               "copied into every message)";
    }
    char *json = sl_arena_strndup(&r->arena, srv->scratch, len);
    if (json == NULL) return "out of memory";
    r->stored_bytes += len;
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(msg, "messageId");
    sl_store_msg_t *m = &r->batch.msgs[r->batch.n_msgs++];
    memset(m, 0, sizeof(*m));
    m->json = json;
    m->json_len = len;
    m->received_ms = ctx->received_ms;
    m->dedupe = sl_store_dedupe_key(c->srv->store, src->name, mid->valuestring);
    if (srv->stitch && (m->meta = stitch_input(c, msg, mid->valuestring)) == NULL) {
        r->batch.n_msgs--;
        return "out of memory";
    }
    return NULL;
}

static int content_type_ok(const char *ct)
{
    if (ct == NULL || ct[0] == '\0') return 1;
    /* text/plain is what sendBeacon sends; the form type is curl -d's
     * default. The body must be JSON whatever the label says. */
    return strncasecmp(ct, "application/json", 16) == 0 || strncasecmp(ct, "text/plain", 10) == 0 ||
           strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0 || strcasestr(ct, "+json") != NULL;
}

/* Queues the accepted messages, or answers at once when there are none. */
static void submit(conn_t *c)
{
    req_t *r = c->req;
    sl_server_t *srv = c->srv;
    srv->rejected_messages += r->n_rejected;
    if (r->batch.n_msgs == 0) {
        sl_buf_t out = {0};
        if (r->n_rejected == 1 && r->route != ROUTE_BATCH) {
            /* single message: the error itself is the answer */
            const char *e = strstr(r->errors.data, "\"error\":");
            sl_buf_printf(&out, "{\"success\":false,%s", e ? e : "\"error\":\"rejected\"}");
        } else {
            sl_buf_printf(&out, "{\"success\":false,\"error\":\"every message in the batch was rejected\","
                                "\"errors\":[%s]}", r->errors.data ? r->errors.data : "");
        }
        http_respond(c, 400, "application/json", NULL, out.data ? out.data : "", out.len);
        sl_buf_free(&out);
        return;
    }
    r->batch.done = ingest_done;
    r->batch.data = r;
    int rc = sl_store_submit(srv->store, &r->batch);
    if (rc == SL_EBUSY) {
        SL_INFO("commit queue full (%zu messages): answering 503", sl_store_queued(srv->store));
        http_respond_error(c, 503, "server busy: the commit queue is full, retry later");
        return;
    }
    if (rc) {
        http_respond_error(c, 503, sl_strerror(rc));
        return;
    }
    c->busy = 1;
}

/* Everything after the body is known to be a JSON document. */
static void ingest_json(conn_t *c, const char *body, size_t len, int type)
{
    req_t *r = c->req;
    sl_server_t *srv = c->srv;
    const sl_config_t *cfg = srv->cfg;
    const char *why = sl_json_prescan(body, len, cfg->limits.max_json_depth);
    if (why) {
        http_log_refused(srv, "reading client request body: %s", why);
        http_respond_error(c, 400, why);
        return;
    }
    /* The parse tree lives in the server's JSON arena, emptied at the end:
     * the request's arena may be gone by then (answering frees the request). */
    sl_arena_t *old_arena = sl_json_arena_swap(&srv->json_arena);
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &parse_end, 0);
    cJSON *loc = NULL;
    if (root == NULL) {
        http_respond_error(c, 400, "body is not valid JSON");
        goto out;
    }
    while (parse_end && parse_end < body + len && strchr(" \t\r\n", *parse_end) && *parse_end) parse_end++;
    if (parse_end != body + len) {
        http_respond_error(c, 400, "body has bytes after its JSON value");
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        http_respond_error(c, 400, "body must be a JSON object");
        goto out;
    }
    /* A repeated member (two writeKeys, two userIds) would be read one way
     * here and another way by whoever reads the stored event. In a batch,
     * each message is checked on its own below. */
    const cJSON *batch = type == -1 ? cJSON_GetObjectItemCaseSensitive(root, "batch") : NULL;
    char dupmsg[160];
    if (duplicate_member(root, batch, dupmsg, sizeof(dupmsg))) {
        http_respond_error(c, 400, dupmsg);
        goto out;
    }
    const sl_source_t *src = authenticate(c, root, &why);
    if (src == NULL) {
        http_log_refused(srv, "authenticating client request: %s", why);
        http_respond_error(c, 401, why);
        goto out;
    }
    sl_ingest_ctx_t ctx = {0};
    char ipbuf[46];
    ctx.received_ms = sl_now_ms();
    ctx.source = src->name;
    if (type != -1) {
        if (len > cfg->limits.max_message_bytes) {
            char msg[128];
            snprintf(msg, sizeof(msg), "message exceeds limits.max_message_bytes (%llu bytes)",
                     (unsigned long long)cfg->limits.max_message_bytes);
            http_respond_error(c, 413, msg);
            goto out;
        }
        r->batch.msgs = calloc(1, sizeof(sl_store_msg_t));
        r->n_in_request = 1;
        if (r->batch.msgs == NULL) {
            http_respond_error(c, 503, "out of memory");
            goto out;
        }
        request_context(c, &ctx, ipbuf, &loc);
        int status;
        why = accept_message(c, root, type, &ctx, src, &status);
        if (why && status != 400) {
            http_respond_error(c, status, why);
            goto out;
        }
        if (why) add_rejection(r, -1, why);
        submit(c);
        goto out;
    }

    if (!cJSON_IsArray(batch)) {
        http_respond_error(c, 400, "batch must be an array of messages");
        goto out;
    }
    size_t n = (size_t)cJSON_GetArraySize(batch);
    if (n == 0) {
        http_respond_error(c, 400, "batch is empty");
        goto out;
    }
    if (n > cfg->limits.max_batch_messages) {
        char msg[128];
        snprintf(msg, sizeof(msg), "batch holds %zu messages; limits.max_batch_messages is %llu", n,
                 (unsigned long long)cfg->limits.max_batch_messages);
        http_respond_error(c, 413, msg);
        goto out;
    }
    const cJSON *bctx = cJSON_GetObjectItemCaseSensitive(root, "context");
    const cJSON *bsent = cJSON_GetObjectItemCaseSensitive(root, "sentAt");
    ctx.batch_context = cJSON_IsObject(bctx) ? bctx : NULL;
    ctx.batch_sent_at = cJSON_IsString(bsent) ? bsent->valuestring : NULL;
    r->batch.msgs = calloc(n, sizeof(sl_store_msg_t));
    r->n_in_request = n;
    if (r->batch.msgs == NULL) {
        http_respond_error(c, 503, "out of memory");
        goto out;
    }
    request_context(c, &ctx, ipbuf, &loc);
    long i = 0;
    for (cJSON *m = batch->child; m; m = m->next, i++) {
        /* A body within max_message_bytes cannot hold a message over it. */
        if (len > cfg->limits.max_message_bytes &&
            !cJSON_PrintPreallocated(m, srv->scratch, (int)cfg->limits.max_message_bytes + 1, 0)) {
            char msg[128];
            snprintf(msg, sizeof(msg), "message exceeds limits.max_message_bytes (%llu bytes)",
                     (unsigned long long)cfg->limits.max_message_bytes);
            add_rejection(r, i, msg);
            continue;
        }
        if (duplicate_member(m, NULL, dupmsg, sizeof(dupmsg))) {
            add_rejection(r, i, dupmsg);
            continue;
        }
        int status;
        why = accept_message(c, m, -1, &ctx, src, &status);
        if (r->over_stored) {
            http_respond_error(c, 413, why);
            goto out;
        }
        if (why) add_rejection(r, i, why);
    }
    submit(c);
out:
    cJSON_Delete(loc);
    cJSON_Delete(root);
    sl_json_arena_swap(old_arena);
    sl_arena_reset(&srv->json_arena);
}

static void handle_ingest(conn_t *c, int type)
{
    req_t *r = c->req;
    if (!content_type_ok(r->content_type)) {
        http_respond_error(c, 415, "Content-Type must be application/json or text/plain (the body is JSON)");
        return;
    }
    const char *body = r->body.data ? r->body.data : "";
    size_t len = r->body.len;
    char *inflated = NULL;
    if (r->content_encoding && strcasecmp(r->content_encoding, "identity") != 0) {
        if (strcasecmp(r->content_encoding, "gzip") != 0 && strcasecmp(r->content_encoding, "x-gzip") != 0 &&
            strcasecmp(r->content_encoding, "deflate") != 0) {
            http_respond_error(c, 415, "Content-Encoding must be gzip or identity");
            return;
        }
        size_t out_len;
        int rc = sl_gunzip(body, len, c->srv->cfg->limits.max_request_bytes, &inflated, &out_len);
        if (rc == SL_ETOOBIG) {
            http_respond_error(c, 413, "decompressed body exceeds limits.max_request_bytes");
            return;
        }
        if (rc) {
            http_respond_error(c, 400, "body is not valid gzip");
            return;
        }
        body = inflated;
        len = out_len;
    }
    if (len == 0) {
        http_respond_error(c, 400, "empty body: send a JSON message");
        free(inflated);
        return;
    }
    ingest_json(c, body, len, type);
    free(inflated);
}

/* GET /v1/pixel/{track|page|identify}?data=<base64 JSON message> */
static void handle_pixel(conn_t *c, const char *what)
{
    req_t *r = c->req;
    int type = sl_msg_type_from_name(what, strlen(what));
    if (type != SL_MSG_TRACK && type != SL_MSG_PAGE && type != SL_MSG_IDENTIFY) {
        http_respond_error(c, 404, "pixel routes are /v1/pixel/track, /v1/pixel/page and /v1/pixel/identify");
        return;
    }
    char *enc;
    long el = http_query_param(r, "data", &enc);
    if (el == SL_ENOTFOUND) {
        http_respond_error(c, 400, "pixel needs ?data=<base64 JSON message>");
        return;
    }
    if (el < 0) {
        http_respond_error(c, 400, "data has a bad %-escape");
        return;
    }
    unsigned char *json = sl_arena_alloc(&r->arena, (size_t)el * 3 / 4 + 4);
    long jl = json ? sl_base64_decode(enc, (size_t)el, json) : -1;
    if (jl <= 0) {
        http_respond_error(c, 400, "data is not valid base64");
        return;
    }
    r->is_pixel = 1;
    ingest_json(c, (const char *)json, (size_t)jl, type);
}

/* Admin routes allow no cross-origin use: their preflight grants nothing.
 * Elsewhere only the headers the tag and SDKs send are allowed. */
static void handle_preflight(conn_t *c)
{
    req_t *r = c->req;
    if (http_admin_path(r->path)) {
        http_respond(c, 204, NULL, r->origin ? NULL : "Allow: GET, DELETE, OPTIONS\r\n", NULL, 0);
        return;
    }
    if (!http_origin_allowed(c->srv, r)) {
        http_respond_error(c, 403, "origin not allowed by cors_origins");
        return;
    }
    static const char allow[] = "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                                "Access-Control-Allow-Headers: Content-Type, Authorization, Content-Encoding\r\n"
                                "Access-Control-Max-Age: 86400\r\n";
    http_respond(c, 204, NULL, r->origin ? allow : "Allow: GET, POST, OPTIONS\r\n", NULL, 0);
}

static void handle_healthz(conn_t *c)
{
    char body[256];
    sl_store_stats_t s;
    sl_store_get_stats(c->srv->store, &s);
    int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"version\":\"%s\",\"last_seq\":%llu,\"queued\":%zu}",
                     c->srv->stopping ? "stopping" : "ok", SL_VERSION, (unsigned long long)s.last_seq,
                     sl_store_queued(c->srv->store));
    http_respond(c, c->srv->stopping ? 503 : 200, "application/json", "Cache-Control: no-store\r\n", body, (size_t)n);
}

/* A counter with one sample per trigger rule. */
static void append_by_rule(sl_buf_t *b, const char *name, const char *help, const sl_config_t *cfg,
                           const uint64_t *values)
{
    sl_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (size_t i = 0; i < cfg->n_triggers && i < 64; i++)
        sl_buf_printf(b, "%s{rule=\"%s\"} %llu\n", name, cfg->triggers[i].name, (unsigned long long)values[i]);
}

static void handle_metrics(conn_t *c)
{
    sl_server_t *srv = c->srv;
    sl_buf_t b = {0};
    /* count this request before rendering, so a scrape sees itself */
    srv->requests[ROUTE_METRICS][1]++;
    sl_buf_appends(&b, "# HELP sillage_http_requests_total HTTP requests answered, by route and status.\n"
                       "# TYPE sillage_http_requests_total counter\n");
    for (int r = 0; r < N_ROUTES; r++)
        for (int s = 0; s < N_STATUS; s++)
            if (srv->requests[r][s])
                sl_buf_printf(&b, "sillage_http_requests_total{route=\"%s\",status=\"%s%d\"} %llu\n",
                              route_names[r], s == N_STATUS - 1 ? "other" : "",
                              s == N_STATUS - 1 ? 0 : status_codes[s], (unsigned long long)srv->requests[r][s]);
    srv->requests[ROUTE_METRICS][1]--;
    sl_store_stats_t st;
    sl_store_get_stats(srv->store, &st);
    sl_buf_printf(&b,
                  "# HELP sillage_events_stored_total Messages durably stored.\n"
                  "# TYPE sillage_events_stored_total counter\nsillage_events_stored_total %llu\n"
                  "# HELP sillage_events_duplicate_total Messages acknowledged but not stored again (messageId seen).\n"
                  "# TYPE sillage_events_duplicate_total counter\nsillage_events_duplicate_total %llu\n"
                  "# HELP sillage_messages_rejected_total Messages refused by validation.\n"
                  "# TYPE sillage_messages_rejected_total counter\nsillage_messages_rejected_total %llu\n"
                  "# HELP sillage_commits_total LMDB write transactions committed.\n"
                  "# TYPE sillage_commits_total counter\nsillage_commits_total %llu\n"
                  "# HELP sillage_commit_failures_total Write transactions that failed (answered 503).\n"
                  "# TYPE sillage_commit_failures_total counter\nsillage_commit_failures_total %llu\n"
                  "# HELP sillage_requests_failed_alone_total Requests that could not be applied, answered 500 "
                  "while the rest of their commit went on.\n"
                  "# TYPE sillage_requests_failed_alone_total counter\nsillage_requests_failed_alone_total %llu\n"
                  "# HELP sillage_lmdb_map_resizes_total Times the LMDB map grew.\n"
                  "# TYPE sillage_lmdb_map_resizes_total counter\nsillage_lmdb_map_resizes_total %llu\n"
                  "# HELP sillage_lmdb_map_size_bytes Current LMDB map size.\n"
                  "# TYPE sillage_lmdb_map_size_bytes gauge\nsillage_lmdb_map_size_bytes %llu\n"
                  "# HELP sillage_commit_queue_messages Messages waiting for or inside a commit.\n"
                  "# TYPE sillage_commit_queue_messages gauge\nsillage_commit_queue_messages %zu\n"
                  "# HELP sillage_dedupe_entries Message ids held for deduplication.\n"
                  "# TYPE sillage_dedupe_entries gauge\nsillage_dedupe_entries %llu\n"
                  "# HELP sillage_dedupe_evicted_total Message ids forgotten before dedupe_window ended "
                  "(limits.max_dedupe_ids).\n"
                  "# TYPE sillage_dedupe_evicted_total counter\nsillage_dedupe_evicted_total %llu\n"
                  "# HELP sillage_dedupe_window_seconds The dedupe window in force (shorter than dedupe_window "
                  "once ids were evicted).\n"
                  "# TYPE sillage_dedupe_window_seconds gauge\nsillage_dedupe_window_seconds %lld\n"
                  "# HELP sillage_connections Open client connections.\n"
                  "# TYPE sillage_connections gauge\nsillage_connections %zu\n"
                  "# HELP sillage_rate_limited_total Requests answered 429 (limits.rate_per_ip).\n"
                  "# TYPE sillage_rate_limited_total counter\nsillage_rate_limited_total %llu\n"
                  "# HELP sillage_connections_refused_total Connections closed at once (limits.max_connections).\n"
                  "# TYPE sillage_connections_refused_total counter\nsillage_connections_refused_total %llu\n",
                  (unsigned long long)st.events_stored, (unsigned long long)st.duplicates,
                  (unsigned long long)srv->rejected_messages, (unsigned long long)st.commits,
                  (unsigned long long)st.commit_failures, (unsigned long long)st.batches_failed_alone,
                  (unsigned long long)st.map_resizes,
                  (unsigned long long)st.map_size_bytes, sl_store_queued(srv->store),
                  (unsigned long long)st.dedupe_entries, (unsigned long long)st.dedupe_evicted,
                  (long long)(st.dedupe_window_ms / 1000), srv->n_conns, (unsigned long long)srv->rate_limited,
                  (unsigned long long)srv->refused_connections);
    http_metrics(srv, &b);
    uint64_t cum = 0;
    sl_buf_appends(&b, "# HELP sillage_commit_batch_messages Messages per LMDB commit.\n"
                       "# TYPE sillage_commit_batch_messages histogram\n");
    for (int i = 0; i < 12; i++) {
        cum += st.batch_hist[i];
        if (i < 11) sl_buf_printf(&b, "sillage_commit_batch_messages_bucket{le=\"%llu\"} %llu\n",
                                  (unsigned long long)sl_store_batch_bounds[i], (unsigned long long)cum);
        else sl_buf_printf(&b, "sillage_commit_batch_messages_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    sl_buf_printf(&b, "sillage_commit_batch_messages_sum %llu\nsillage_commit_batch_messages_count %llu\n",
                  (unsigned long long)st.batch_sum, (unsigned long long)cum);
    cum = 0;
    sl_buf_appends(&b, "# HELP sillage_commit_duration_seconds Time to commit one LMDB transaction, fsync included.\n"
                       "# TYPE sillage_commit_duration_seconds histogram\n");
    for (int i = 0; i < 14; i++) {
        cum += st.latency_hist[i];
        if (i < 13) sl_buf_printf(&b, "sillage_commit_duration_seconds_bucket{le=\"%g\"} %llu\n",
                                  (double)sl_store_latency_bounds_us[i] / 1e6, (unsigned long long)cum);
        else sl_buf_printf(&b, "sillage_commit_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    sl_buf_printf(&b, "sillage_commit_duration_seconds_sum %.6f\nsillage_commit_duration_seconds_count %llu\n",
                  (double)st.latency_sum_us / 1e6, (unsigned long long)cum);
    if (srv->stitch) {
        sl_stitch_stats_t ss;
        sl_stitch_get_stats(srv->stitch, &ss);
        sl_buf_printf(&b,
                      "# HELP sillage_identity_merges_total Persons merged into another.\n"
                      "# TYPE sillage_identity_merges_total counter\nsillage_identity_merges_total %llu\n"
                      "# HELP sillage_identity_refusals_total Merges refused (two different users), journaled.\n"
                      "# TYPE sillage_identity_refusals_total counter\nsillage_identity_refusals_total %llu\n"
                      "# HELP sillage_traits_dropped_total Traits not kept on a profile (limits.max_traits_*).\n"
                      "# TYPE sillage_traits_dropped_total counter\nsillage_traits_dropped_total %llu\n"
                      "# HELP sillage_persons_created_total Persons created.\n"
                      "# TYPE sillage_persons_created_total counter\nsillage_persons_created_total %llu\n"
                      "# HELP sillage_identify_stitch_seconds Time the writer spent stitching identify and alias "
                      "messages (merges included).\n"
                      "# TYPE sillage_identify_stitch_seconds summary\n"
                      "sillage_identify_stitch_seconds_sum %.9f\nsillage_identify_stitch_seconds_count %llu\n",
                      (unsigned long long)ss.merges, (unsigned long long)ss.refusals,
                      (unsigned long long)ss.traits_dropped, (unsigned long long)ss.persons_created, (double)ss.identify_ns / 1e9,
                      (unsigned long long)ss.identifies);
    }
    if (srv->trig) {
        sl_trig_stats_t ts;
        sl_trig_get_stats(srv->trig, &ts);
        const sl_config_t *cfg = srv->rules_cfg; /* the rules the writer runs (reloaded on SIGHUP) */
        append_by_rule(&b, "sillage_triggers_fired_total", "Triggers appended to the feed, by rule.", cfg,
                       ts.fired_by_rule);
        append_by_rule(&b, "sillage_triggers_suppressed_total", "Triggers held back by the pressure cap, by rule.",
                       cfg, ts.suppressed_by_rule);
        sl_buf_printf(&b,
                      "# HELP sillage_trigger_timers_fired_total Durable timers that came due.\n"
                      "# TYPE sillage_trigger_timers_fired_total counter\nsillage_trigger_timers_fired_total %llu\n"
                      "# HELP sillage_trigger_feed_last_seq The last trigger readers can see (durable).\n"
                      "# TYPE sillage_trigger_feed_last_seq gauge\nsillage_trigger_feed_last_seq %llu\n",
                      (unsigned long long)ts.timers_fired, (unsigned long long)sl_trig_durable_seq(srv->trig));
    }
    if (srv->nats) {
        sl_nats_stats_t ns;
        sl_nats_get_stats(srv->nats, &ns);
        sl_buf_printf(&b,
                      "# HELP sillage_nats_connected 1 when the last NATS operation worked.\n"
                      "# TYPE sillage_nats_connected gauge\nsillage_nats_connected %d\n"
                      "# HELP sillage_nats_published_total Events published to JetStream and acknowledged (edge).\n"
                      "# TYPE sillage_nats_published_total counter\nsillage_nats_published_total %llu\n"
                      "# HELP sillage_nats_publish_errors_total Publish rounds that failed and were retried (edge).\n"
                      "# TYPE sillage_nats_publish_errors_total counter\nsillage_nats_publish_errors_total %llu\n"
                      "# HELP sillage_nats_lag_events Stored events not yet acknowledged by JetStream (edge).\n"
                      "# TYPE sillage_nats_lag_events gauge\nsillage_nats_lag_events %llu\n"
                      "# HELP sillage_nats_consumed_total Events applied from the stream (core).\n"
                      "# TYPE sillage_nats_consumed_total counter\nsillage_nats_consumed_total %llu\n"
                      "# HELP sillage_nats_position The last stream sequence applied (core).\n"
                      "# TYPE sillage_nats_position gauge\nsillage_nats_position %llu\n"
                      "# HELP sillage_nats_triggers_published_total Triggers published to the triggers subject (core).\n"
                      "# TYPE sillage_nats_triggers_published_total counter\nsillage_nats_triggers_published_total %llu\n",
                      ns.connected, (unsigned long long)ns.published, (unsigned long long)ns.publish_errors,
                      (unsigned long long)ns.lag, (unsigned long long)ns.consumed, (unsigned long long)ns.position,
                      (unsigned long long)ns.triggers_published);
    }
    if (srv->webhooks) {
        sl_webhooks_stats_t ws;
        sl_webhooks_get_stats(srv->webhooks, &ws);
        sl_buf_printf(&b,
                      "# HELP sillage_webhook_deliveries_total Triggers acknowledged (2xx) by a webhook.\n"
                      "# TYPE sillage_webhook_deliveries_total counter\nsillage_webhook_deliveries_total %llu\n"
                      "# HELP sillage_webhook_failed_attempts_total Attempts that failed and will be retried.\n"
                      "# TYPE sillage_webhook_failed_attempts_total counter\nsillage_webhook_failed_attempts_total %llu\n"
                      "# HELP sillage_webhook_expired_total Triggers given up after the webhook's expire.\n"
                      "# TYPE sillage_webhook_expired_total counter\nsillage_webhook_expired_total %llu\n"
                      "# HELP sillage_webhook_in_flight Requests on the wire.\n"
                      "# TYPE sillage_webhook_in_flight gauge\nsillage_webhook_in_flight %llu\n",
                      (unsigned long long)ws.delivered, (unsigned long long)ws.failed_attempts,
                      (unsigned long long)ws.expired, (unsigned long long)ws.in_flight);
    }
    http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", "Cache-Control: no-store\r\n",
                 b.data ? b.data : "", b.len);
    sl_buf_free(&b);
}

/* limits.rate_per_ip: 1 (after answering 429) when the client must wait. */
static int rate_limited(conn_t *c)
{
    sl_server_t *srv = c->srv;
    if (srv->cfg->limits.rate_per_ip == 0) return 0;
    int wait = 1;
    if (rl_allow(srv, client_ip(c), sl_now_ms(), &wait)) return 0;
    srv->rate_limited++;
    char h[64];
    snprintf(h, sizeof(h), "Retry-After: %d\r\n", wait);
    static const char body[] = "{\"success\":false,\"error\":\"too many requests from this address (limits.rate_per_ip)\"}";
    http_respond(c, 429, "application/json", h, body, sizeof(body) - 1);
    return 1;
}

void route_request(conn_t *c)
{
    req_t *r = c->req;
    const char *path = r->path;
    int m = r->method;

    if (m == HTTP_OPTIONS) {
        r->route = ROUTE_PREFLIGHT;
        handle_preflight(c);
        return;
    }
    if (strncmp(path, "/v1/", 4) == 0) {
        const char *rest = path + 4;
        if (strncmp(rest, "pixel/", 6) == 0) {
            r->route = ROUTE_PIXEL;
            if (m != HTTP_GET) http_respond_error(c, 405, "use GET for the pixel");
            else if (rate_limited(c)) return;
            else if (!http_origin_allowed(c->srv, r))
                http_respond_error(c, 403, "origin not allowed by cors_origins");
            else handle_pixel(c, rest + 6);
            return;
        }
        int type = strcmp(rest, "batch") == 0 ? -1 : sl_msg_type_from_name(rest, strlen(rest));
        if (type != -1 || strcmp(rest, "batch") == 0) {
            r->route = type == -1 ? ROUTE_BATCH : type; /* ROUTE_TRACK.. match SL_MSG_* */
            if (m != HTTP_POST) http_respond_error(c, 405, "use POST to send messages");
            else if (rate_limited(c)) return;
            else if (!http_origin_allowed(c->srv, r)) http_respond_error(c, 403, "origin not allowed by cors_origins");
            else handle_ingest(c, type);
            return;
        }
        if (strncmp(rest, "profiles/", 9) == 0) {
            r->route = ROUTE_PROFILES;
            handle_profiles(c, rest + 9);
            return;
        }
        if (strncmp(rest, "triggers", 8) == 0 && (rest[8] == '\0' || rest[8] == '/')) {
            r->route = ROUTE_TRIGGERS;
            handle_triggers(c, rest + 8);
            return;
        }
    } else if (strcmp(path, "/healthz") == 0) {
        r->route = ROUTE_HEALTHZ;
        if (m != HTTP_GET) http_respond_error(c, 405, "use GET");
        else handle_healthz(c);
        return;
    } else if (strcmp(path, "/metrics") == 0) {
        r->route = ROUTE_METRICS;
        if (m != HTTP_GET) http_respond_error(c, 405, "use GET");
        else if (!c->srv->cfg->metrics_auth) handle_metrics(c);
        else {
            int ok = http_admin_gate(c);
            if (ok > 0) handle_metrics(c);
            else if (ok == 0) http_respond_error(c, 401, "admin token required (metrics_auth)");
        }
        return;
    } else if (strcmp(path, "/debug/stream") == 0 && c->srv->cfg->debug_page) {
        r->route = ROUTE_DEBUG;
        if (m != HTTP_GET) http_respond_error(c, 405, "use GET");
        else handle_debug_stream(c);
        return;
    } else if (handle_static(c, path) == 0) {
        return;
    }
    http_respond_error(c, 404, "no such route");
}
