/* routes.c - what each request gets: ingestion (single messages, batches,
 * the pixel), CORS preflight, /healthz and /metrics.
 *
 * Ingestion: decode the body (gzip, bounded), read it (ack.h: check it,
 * authenticate the write key, normalise and enrich every message, print it),
 * and queue the printed messages for the writer. The answer is written by
 * ingest_done() once the writer reports the commit.
 */
#define _GNU_SOURCE
#include "ack.h"
#include "http_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const unsigned char pixel_gif[] = {
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
    0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b};

/* ---- authentication ------------------------------------------------------------ */

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
    const sl_source_t *s = ack_find_source(c->srv->cfg, (const char *)dec, kl);
    if (s == NULL) *why = "unknown write key";
    return s;
}

static int has_basic(const req_t *r)
{
    return r->authorization && strncasecmp(r->authorization, "Basic ", 6) == 0;
}

int http_route_basic_auth(conn_t *c, const char **why)
{
    if (!has_basic(c->req)) return 0;
    return basic_source(c, why) ? 1 : -1;
}

/* ---- ingestion ------------------------------------------------------------------- */

static void ingest_done(sl_store_batch_t *b)
{
    req_t *r = b->data;
    conn_t *c = r->conn;
    if (c == NULL) { /* the client left; the messages are stored all the same */
        http_req_free(r);
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
    /* Where this request's events are in the log: a read that passes it as
     * ?position= sees them applied (read-your-writes). A duplicate's event
     * is older: the durable end covers it. */
    uint64_t pos = 0;
    for (size_t i = 0; i < b->n_msgs; i++)
        if (b->msgs[i].status == SL_STORE_STORED && b->msgs[i].seq > pos) pos = b->msgs[i].seq;
    if (pos == 0) pos = sl_store_durable_seq(c->srv->store);
    char h[96];
    snprintf(h, sizeof(h), "X-Sillage-Position: %llu\r\n", (unsigned long long)pos);
    if (r->is_pixel) {
        sl_buf_t hp = {0};
        sl_buf_printf(&hp, "Cache-Control: no-store, max-age=0\r\n%s", h);
        http_respond(c, 200, "image/gif", hp.data, (const char *)pixel_gif, sizeof(pixel_gif));
        sl_buf_free(&hp);
        return;
    }
    if (r->n_rejected == 0 && r->warnings.len == 0) {
        static const char ok[] = "{\"success\":true}";
        http_respond(c, 200, "application/json", h, ok, sizeof(ok) - 1);
        return;
    }
    sl_buf_t out = {0};
    sl_buf_printf(&out, "{\"success\":true,\"accepted\":%zu,\"rejected\":%zu,\"errors\":[",
                  b->n_msgs, r->n_rejected);
    if (r->errors.len) sl_buf_append(&out, r->errors.data, r->errors.len);
    sl_buf_appends(&out, "]");
    if (r->warnings.len) {
        sl_buf_appends(&out, ",\"warnings\":[");
        sl_buf_append(&out, r->warnings.data, r->warnings.len);
        sl_buf_appends(&out, "]");
    }
    sl_buf_appends(&out, "}");
    http_respond(c, 200, "application/json", h, out.data ? out.data : "", out.len);
    sl_buf_free(&out);
}

/* The address and location every message of this request gets. */
static void request_context(conn_t *c, ack_in_t *ctx, char ipbuf[46], cJSON **loc)
{
    sl_server_t *srv = c->srv;
    sl_ipnet_t ip = *http_client_ip(c);
    *loc = ip.family ? sl_geo_lookup(srv->geo, &ip) : NULL; /* full address: better precision */
    if (srv->cfg->ip_anonymize) sl_ip_anonymize(&ip);
    ipbuf[0] = '\0';
    if (ip.family) sl_ip_format(&ip, ipbuf);
    ctx->ip = ipbuf[0] ? ipbuf : NULL;
    ctx->location = *loc;
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
    int rc = srv->sport ? sl_store_port_submit(srv->sport, &r->batch) : sl_store_submit(srv->store, &r->batch);
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
    ack_in_t in = {0};
    in.cfg = srv->cfg;
    in.type = type;
    if (has_basic(r)) {
        in.basic = 1;
        in.basic_src = basic_source(c, &in.basic_why);
    }
    in.received_ms = sl_now_ms();
    in.scratch = srv->scratch;
    in.scratch_len = srv->scratch_len;
    in.arena = &r->arena;
    /* Trees (the GeoIP location's, the reference reader's) live in the
     * server's JSON arena, emptied at the end: the request's arena may be
     * gone by then (answering frees the request). */
    sl_arena_t *old_arena = sl_json_arena_swap(&srv->json_arena);
    in.tree_in_arena = sl_json_arena_swap(&srv->json_arena) == &srv->json_arena; /* the hooks are on */
    char ipbuf[46];
    cJSON *loc = NULL;
    request_context(c, &in, ipbuf, &loc);
    ack_out_t out;
    ack_scan(&in, body, len, &out);
    if (out.status) {
        if (out.log == ACK_LOG_BODY) http_log_refused(srv, "reading client request body: %s", out.error);
        if (out.log == ACK_LOG_AUTH) http_log_refused(srv, "authenticating client request: %s", out.error);
        http_respond_error(c, out.status, out.error);
        ack_out_free(&out);
        goto done;
    }
    for (size_t i = 0; i < out.n_msgs; i++)
        out.msgs[i].dedupe = sl_store_dedupe_key(srv->store, out.src->name, out.mids[i]);
    r->batch.msgs = out.msgs;
    r->batch.n_msgs = out.n_msgs;
    r->n_in_request = out.n_in_request;
    r->stored_bytes = out.stored_bytes;
    r->errors = out.errors;
    r->warnings = out.warnings;
    r->n_rejected = out.n_rejected;
    submit(c);
done:
    /* in the arena (the hooks on: the swap gives it back), the reset frees the
     * trees at once; walking them to free nothing was 3 % of a batch's cost */
    if (!in.tree_in_arena) cJSON_Delete(loc);
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

/* analytics.js 2.0 posts each message to /v1/<first letter of its type>
 * (and batches to /v1/b): the same routes under their short names. */
static int short_type(char c)
{
    switch (c) {
    case 't': return SL_MSG_TRACK;
    case 'p': return SL_MSG_PAGE;
    case 's': return SL_MSG_SCREEN;
    case 'i': return SL_MSG_IDENTIFY;
    case 'a': return SL_MSG_ALIAS;
    case 'g': return SL_MSG_GROUP;
    default: return -1;
    }
}

/* Admin routes allow no cross-origin use: their preflight grants nothing.
 * Elsewhere only the headers the tag and SDKs send are allowed: analytics.js
 * 2.0 adds X-Retry-Count to its retries, RudderStack's browser SDK sends
 * AnonymousId, SentAt and its Rsa-* retry headers (sillage reads none of
 * them: the body carries the same). */
static void handle_preflight(conn_t *c)
{
    req_t *r = c->req;
    if (http_admin_path(r->path)) {
        http_respond(c, 204, NULL, r->origin ? NULL : "Allow: GET, POST, DELETE, OPTIONS\r\n", NULL, 0);
        return;
    }
    if (!http_origin_allowed(c->srv, r)) {
        http_respond_error(c, 403, "origin not allowed by cors_origins");
        return;
    }
    static const char allow[] = "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                                "Access-Control-Allow-Headers: Content-Type, Authorization, Content-Encoding, X-Retry-Count, "
                                "AnonymousId, SentAt, Rsa-Retry-Attempt, Rsa-Retry-Reason, Rsa-Since-First-Attempt, "
                                "Rsa-Since-Last-Attempt, Rsa-Recovered\r\n"
                                "Access-Control-Max-Age: 86400\r\n";
    http_respond(c, 204, NULL, r->origin ? allow : "Allow: GET, POST, OPTIONS\r\n", NULL, 0);
}

static void handle_healthz(conn_t *c)
{
    char body[384];
    sl_server_t *srv = c->srv;
    sl_store_stats_t s;
    sl_store_get_stats(srv->store, &s);
    int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"version\":\"%s\",\"last_seq\":%llu,\"queued\":%zu",
                     srv->stopping ? "stopping" : "ok", SL_VERSION, (unsigned long long)s.last_seq,
                     sl_store_queued(srv->store));
    if (srv->stage) { /* how far derivation is behind the log */
        sl_stage_stats_t st;
        sl_stage_get_stats(srv->stage, &st);
        n += snprintf(body + n, sizeof(body) - (size_t)n,
                      ",\"stage\":{\"applied\":%llu,\"lag_events\":%llu,\"lag_ms\":%lld,\"set_aside\":%llu}",
                      (unsigned long long)st.applied, (unsigned long long)st.lag_events, (long long)st.lag_ms,
                      (unsigned long long)st.set_aside);
    }
    n += snprintf(body + n, sizeof(body) - (size_t)n, "}");
    http_respond(c, srv->stopping ? 503 : 200, "application/json", "Cache-Control: no-store\r\n", body, (size_t)n);
}

/* The HTTP server's own metrics; every other component renders its own
 * (sl_http_server_add_metrics). */
static void handle_metrics(conn_t *c)
{
    sl_server_t *srv = c->srv;
    sl_buf_t b = {0};
    /* count this request before rendering, so a scrape sees itself */
    srv->requests[ROUTE_METRICS][1]++;
    sl_metric_head(&b, "counter", "sillage_http_requests_total", "HTTP requests answered, by route and status.");
    for (int r = 0; r < N_ROUTES; r++)
        for (int st = 0; st < N_STATUS; st++)
            if (srv->requests[r][st]) {
                char labels[96];
                if (st == N_STATUS - 1) snprintf(labels, sizeof(labels), "route=\"%s\",status=\"other\"", http_route_names[r]);
                else snprintf(labels, sizeof(labels), "route=\"%s\",status=\"%d\"", http_route_names[r], http_status_codes[st]);
                sl_metric_sample(&b, "sillage_http_requests_total", labels, srv->requests[r][st]);
            }
    srv->requests[ROUTE_METRICS][1]--;
    sl_metric_u64(&b, "counter", "sillage_messages_rejected_total", "Messages refused by validation.",
                  srv->rejected_messages);
    sl_metric_u64(&b, "gauge", "sillage_connections", "Open client connections.", srv->n_conns);
    sl_metric_u64(&b, "counter", "sillage_rate_limited_total", "Requests answered 429 (limits.rate_per_ip).",
                  srv->rate_limited);
    sl_metric_u64(&b, "counter", "sillage_connections_refused_total",
                  "Connections closed at once (limits.max_connections, limits.max_connections_per_ip).",
                  srv->refused_connections);
    http_metrics(srv, &b);
    sl_store_metrics(srv->store, &b);
    for (size_t i = 0; i < srv->n_metrics; i++) srv->metrics[i].render(srv->metrics[i].arg, &b);
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
    if (http_rl_allow(srv, http_client_ip(c), sl_now_ms(), &wait)) return 0;
    srv->rate_limited++;
    char h[64];
    snprintf(h, sizeof(h), "Retry-After: %d\r\n", wait);
    static const char body[] = "{\"success\":false,\"error\":\"too many requests from this address (limits.rate_per_ip)\"}";
    http_respond(c, 429, "application/json", h, body, sizeof(body) - 1);
    return 1;
}

/* One table of paths for both callers of http_route_of(): an ingestion path
 * recognised here is the one whose key is checked early and whose body is
 * kept, so the two can never disagree (the short routes once did). */
int http_route_of(const sl_server_t *srv, int method, const char *path)
{
    if (method == HTTP_OPTIONS) return ROUTE_PREFLIGHT;
    if (strncmp(path, "/v1/", 4) == 0) {
        const char *rest = path + 4;
        if (strncmp(rest, "pixel/", 6) == 0) return ROUTE_PIXEL;
        if (strcmp(rest, "m") == 0) return ROUTE_LIBRARY_METRICS;
        if (strcmp(rest, "batch") == 0 || strcmp(rest, "b") == 0) return ROUTE_BATCH;
        int type = sl_msg_type_from_name(rest, strlen(rest));
        if (type == -1 && rest[0] != '\0' && rest[1] == '\0') type = short_type(rest[0]);
        if (type != -1) return type; /* ROUTE_TRACK.. match SL_MSG_* */
        if (strncmp(rest, "profiles/", 9) == 0 || strcmp(rest, "profiles") == 0 ||
            strcmp(rest, "admin/set-aside") == 0 || strcmp(rest, "admin/set-aside/replay") == 0 ||
            strcmp(rest, "computed") == 0 || strncmp(rest, "computed/", 9) == 0 || strcmp(rest, "audiences") == 0 ||
            strncmp(rest, "audiences/", 10) == 0)
            return ROUTE_PROFILES;
        if (strncmp(rest, "triggers", 8) == 0 && (rest[8] == '\0' || rest[8] == '/')) return ROUTE_TRIGGERS;
        if (strcmp(rest, "rules") == 0) return ROUTE_TRIGGERS;
        return ROUTE_OTHER;
    }
    if (strcmp(path, "/healthz") == 0) return ROUTE_HEALTHZ;
    if (strcmp(path, "/metrics") == 0) return ROUTE_METRICS;
    if (strcmp(path, "/debug/stream") == 0 && srv->cfg->debug_page) return ROUTE_DEBUG;
    return ROUTE_OTHER;
}

void http_route_request(conn_t *c)
{
    req_t *r = c->req;
    const char *path = r->path;
    int m = r->method;

    switch (r->route) {
    case ROUTE_PREFLIGHT:
        handle_preflight(c);
        return;
    case ROUTE_PIXEL:
        if (m != HTTP_GET) http_respond_error(c, 405, "use GET for the pixel");
        else if (rate_limited(c)) return;
        else if (!http_origin_allowed(c->srv, r)) http_respond_error(c, 403, "origin not allowed by cors_origins");
        else handle_pixel(c, path + 10);
        return;
    case ROUTE_LIBRARY_METRICS: /* analytics.js 2.0's metrics about itself: not ours to keep, nor to read */
        if (m != HTTP_POST) http_respond_error(c, 405, "use POST");
        else if (rate_limited(c)) return;
        else if (!http_origin_allowed(c->srv, r)) http_respond_error(c, 403, "origin not allowed by cors_origins");
        else http_respond(c, 200, "application/json", NULL, "{\"success\":true}", 16);
        return;
    case ROUTE_PROFILES:
        if (strncmp(path, "/v1/admin/", 10) == 0) http_handle_set_aside(c, path[19] == '/');
        else if (strncmp(path, "/v1/computed", 12) == 0) http_handle_computed(c, path + 12);
        else if (strncmp(path, "/v1/audiences", 13) == 0) http_handle_audiences(c, path + 13);
        else http_handle_profiles(c, path[12] ? path + 13 : "");
        return;
    case ROUTE_TRIGGERS:
        if (strcmp(path, "/v1/rules") == 0) http_handle_rules(c);
        else http_handle_triggers(c, path + 12);
        return;
    case ROUTE_HEALTHZ:
        if (m != HTTP_GET) http_respond_error(c, 405, "use GET");
        else handle_healthz(c);
        return;
    case ROUTE_METRICS:
        if (m != HTTP_GET) http_respond_error(c, 405, "use GET");
        else if (!c->srv->cfg->metrics_auth) handle_metrics(c);
        else {
            int ok = http_admin_gate(c);
            if (ok > 0) handle_metrics(c);
            else if (ok == 0) http_respond_error(c, 401, "admin token required (metrics_auth)");
        }
        return;
    case ROUTE_DEBUG:
        if (m != HTTP_GET) http_respond_error(c, 405, "use GET");
        else http_handle_debug_stream(c);
        return;
    }
    if (HTTP_ROUTE_INGESTS(r->route)) {
        if (m != HTTP_POST) http_respond_error(c, 405, "use POST to send messages");
        else if (rate_limited(c)) return;
        else if (!http_origin_allowed(c->srv, r)) http_respond_error(c, 403, "origin not allowed by cors_origins");
        else handle_ingest(c, r->route == ROUTE_BATCH ? -1 : r->route);
        return;
    }
    if (strncmp(path, "/v1/", 4) != 0 && http_handle_static(c, path) == 0) return;
    http_respond_error(c, 404, "no such route");
}
