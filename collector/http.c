/* http.c - connections: accept, read, parse with llhttp, write, time out, close.
 *
 * One request per connection is in flight at a time: when llhttp completes a
 * message the parser pauses, the request is routed, and the bytes behind it
 * (pipelined requests) wait, unread by the socket, until the answer is
 * written. Answers therefore leave in request order, and a client that
 * pipelines cannot make the server buffer without bound.
 */
#define _GNU_SOURCE
#include "http_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#define MAX_URL_BYTES 8192
#define MAX_HEADERS 100
#define WRITE_HIGH_WATER (256 * 1024)
/* Unparsed bytes a connection may hold while its request is in flight; the
 * socket is read on (no epoll changes per request) until this is reached. */
#define PENDING_HIGH_WATER (64 * 1024)
/* Connections beyond limits.max_connections kept for a load balancer's
 * /healthz or a /metrics scrape while others hold the whole server: only
 * for an address holding at most RESERVE_MAX_HELD connections, and one
 * reserved slot per address, so taking the reserve needs RESERVE_CONNS
 * addresses rather than four. */
#define RESERVE_CONNS 16
#define RESERVE_MAX_HELD 4
#define RESERVE_PER_ADDRESS 1
#define IPC_BUCKETS 4096
/* Request bodies one client address may hold: 1/64 of
 * limits.max_buffered_bytes, never less than two full-size bodies. A client
 * trickling bodies needs 64 addresses to take the budget, not a handful. */
#define ADDRESS_SHARE(srv)                                                                                         \
    ((srv)->cfg->limits.max_buffered_bytes / 64 > 2 * (srv)->cfg->limits.max_request_bytes                         \
         ? (srv)->cfg->limits.max_buffered_bytes / 64                                                              \
         : 2 * (srv)->cfg->limits.max_request_bytes)
/* Bodies of requests whose write key was not checked from the headers (it is
 * in the body, or missing) may hold half of limits.max_buffered_bytes, never
 * less than one full-size body: the other half is kept for requests whose
 * Basic key was found, which anyone without a key cannot take. */
#define UNCHECKED_SHARE(srv)                                                                                       \
    ((srv)->cfg->limits.max_buffered_bytes / 2 > (srv)->cfg->limits.max_request_bytes                              \
         ? (srv)->cfg->limits.max_buffered_bytes / 2                                                               \
         : (srv)->cfg->limits.max_request_bytes)
#define BUFFERED_FULL_MSG "server busy: request bodies in memory reached limits.max_buffered_bytes, retry later"
#define ADDRESS_SHARE_MSG "server busy: request bodies in memory from this address reached its share of " \
                          "limits.max_buffered_bytes (1/64, at least 2 x limits.max_request_bytes), retry later"
#define UNCHECKED_SHARE_MSG "server busy: request bodies without a write key in an Authorization header reached " \
                            "half of limits.max_buffered_bytes (send the key as the Basic auth username), retry later"
/* limits.min_body_rate is not asked of a body's first seconds (a client's
 * slow start, a mobile radio waking up). */
#define BODY_RATE_GRACE_MS 5000

/* One entry per address that holds a connection (by its peer address) or a
 * request body (by its client address, which trusted_proxies may take from
 * X-Forwarded-For); it lives while it holds either. */
typedef struct ip_conns_s {
    struct ip_conns_s *next;
    int family;
    unsigned char addr[8];
    uint32_t n;                   /* connections from this peer address */
    uint32_t n_reserve;           /* of them, in the reserve (RESERVE_PER_ADDRESS) */
    uint32_t n_bodies;            /* requests whose body counts in body_bytes */
    uint64_t body_bytes;          /* request bodies this client address has in memory */
} ip_conns_t;
/* Failed admin-token attempts per address and minute; then 429. */
#define ADMIN_FAILURES_PER_MIN 10
#define AUTH_RL_SLOTS 4096
/* Refused-request INFO lines per second; the rest are counted. */
#define REFUSAL_LOG_PER_S 10
/* malloc_trim once the bytes held in bodies fell this far below their peak. */
#define TRIM_AFTER_DROP (8u << 20)

const char *const http_route_names[N_ROUTES] = {"track", "page", "screen", "identify", "alias", "group",
                                           "batch", "pixel", "preflight", "healthz", "metrics", "profiles",
                                           "triggers", "static", "debug", "library_metrics", "other"};
const int http_status_codes[N_STATUS] = {100, 200, 204, 301, 304, 400, 401, 403, 404, 405,
                                    408, 410, 413, 414, 415, 429, 431, 500, 503, 0};

static void conn_feed(conn_t *c);
static void conn_close(conn_t *c);
static void close_handles(void *arg);
static void maybe_finish_stop(sl_server_t *srv);
static ip_conns_t *ip_entry_get(sl_server_t *srv, const sl_ipnet_t *ip);
static void ip_entry_put(sl_server_t *srv, ip_conns_t *e);

void http_close(conn_t *c) { conn_close(c); }

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 410: return "Gone";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    }
    return "Unknown";
}

static int status_index(int status)
{
    for (int i = 0; i < N_STATUS - 1; i++)
        if (http_status_codes[i] == status) return i;
    return N_STATUS - 1;
}

/* ---- requests -------------------------------------------------------------- */

static req_t *req_new(conn_t *c)
{
    req_t *r = calloc(1, sizeof(*r));
    if (r == NULL) return NULL;
    sl_arena_init(&r->arena);
    r->conn = c;
    r->srv = c->srv;
    r->route = ROUTE_OTHER;
    return r;
}

long http_query_param(req_t *r, const char *name, char **out)
{
    size_t nl = strlen(name);
    const char *val = NULL;
    size_t vl = 0;
    for (const char *q = r->query; q && *q;) {
        const char *amp = strchr(q, '&');
        size_t pl = amp ? (size_t)(amp - q) : strlen(q);
        if (pl > nl + 1 && strncmp(q, name, nl) == 0 && q[nl] == '=') { /* the last non-empty one counts */
            val = q + nl + 1;
            vl = pl - nl - 1;
        }
        q = amp ? amp + 1 : NULL;
    }
    if (val == NULL) return SL_ENOTFOUND;
    char *v = sl_arena_strndup(&r->arena, val, vl);
    if (v == NULL) return SL_ENOMEM;
    long n = sl_percent_decode(v, vl);
    if (n < 0) return SL_EINVAL;
    v[n] = '\0';
    *out = v;
    return n;
}

/* The body is given back as soon as the request is routed: what outlives it
 * (printed messages, errors) is copied. */
static void body_release(req_t *r)
{
    sl_server_t *srv = r->srv;
    if (srv) {
        srv->buffered_body_bytes -= r->body.len;
        if (r->keeps_body && !r->key_checked) srv->unchecked_body_bytes -= r->body.len;
    }
    if (r->body_ipc) {
        r->body_ipc->body_bytes -= r->body.len;
        r->body_ipc->n_bodies--;
        ip_entry_put(srv, r->body_ipc);
    }
    r->body_ipc = NULL;
    sl_buf_free(&r->body);
}

void http_req_free(req_t *r)
{
    if (r == NULL) return;
    free(r->batch.msgs);
    body_release(r);
    sl_buf_free(&r->errors);
    sl_buf_free(&r->warnings);
    sl_arena_free(&r->arena);
    free(r);
}

/* ---- writing --------------------------------------------------------------- */

typedef struct write_req_s {
    uv_write_t w;
    conn_t *c;
    char *buf;
} write_req_t;

static void after_write(uv_write_t *w, int status)
{
    write_req_t *wr = (write_req_t *)w;
    conn_t *c = wr->c;
    free(wr->buf);
    free(wr);
    if (c->closing) return;
    if (status < 0 || (c->close_after_write && c->tcp.write_queue_size == 0)) {
        conn_close(c);
        return;
    }
    conn_feed(c); /* the write queue drained: pipelined requests may go on */
}

static void conn_write(conn_t *c, char *buf, size_t len)
{
    size_t off = 0;
    if (c->write_hook) {
        c->write_hook(c, buf, len, c->hook_arg);
        free(buf);
        if (c->close_after_write) conn_close(c);
        return;
    }
    if (c->tcp.write_queue_size == 0) {
        uv_buf_t b = uv_buf_init(buf, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n > 0) off = (size_t)n;
        else if (n != UV_EAGAIN && n != UV_ENOSYS) {
            free(buf);
            conn_close(c);
            return;
        }
    }
    if (off == len) {
        free(buf);
        if (c->close_after_write) conn_close(c);
        return;
    }
    write_req_t *wr = malloc(sizeof(*wr));
    if (wr == NULL) {
        free(buf);
        conn_close(c);
        return;
    }
    wr->c = c;
    wr->buf = buf;
    uv_buf_t b = uv_buf_init(buf + off, (unsigned)(len - off));
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, after_write) != 0) {
        free(buf);
        free(wr);
        conn_close(c);
    }
}

void http_send(conn_t *c, const char *p, size_t n)
{
    if (c->closing) return;
    char *copy = malloc(n ? n : 1);
    if (copy == NULL) {
        conn_close(c);
        return;
    }
    memcpy(copy, p, n);
    conn_write(c, copy, n);
}

static const char *http_date(sl_server_t *srv)
{
    int64_t now = sl_now_ms() / 1000;
    if (now != srv->date_sec) {
        static const char *days[] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
        static const char *mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        char iso[32];
        sl_time_format_iso(now * 1000, iso);
        int y = atoi(iso), mo = atoi(iso + 5), d = atoi(iso + 8);
        snprintf(srv->date, sizeof(srv->date), "%s, %02d %s %04d %.8s GMT",
                 days[(now / 86400) % 7], d, mons[(mo - 1) % 12], y, iso + 11);
        srv->date_sec = now;
    }
    return srv->date;
}

int http_origin_allowed(const sl_server_t *srv, const req_t *r)
{
    if (r == NULL || r->origin == NULL) return 1;
    const sl_config_t *cfg = srv->cfg;
    if (cfg->n_cors_origins == 0) return 1;
    for (size_t i = 0; i < cfg->n_cors_origins; i++)
        if (strcmp(cfg->cors_origins[i], "*") == 0 || strcasecmp(cfg->cors_origins[i], r->origin) == 0) return 1;
    return 0;
}

int http_admin_path(const char *p)
{
    if (p == NULL) return 0;
    return strncmp(p, "/v1/profiles/", 13) == 0 || strncmp(p, "/v1/admin/", 10) == 0 ||
           (strncmp(p, "/v1/triggers", 12) == 0 && (p[12] == '\0' || p[12] == '/')) ||
           strncmp(p, "/debug/", 7) == 0 || strcmp(p, "/metrics") == 0;
}

int http_cors_headers(const sl_server_t *srv, const req_t *r, sl_buf_t *out)
{
    if (r == NULL || r->origin == NULL) return 0;
    if (!http_origin_allowed(srv, r)) return -1;
    /* No admin route is meant for a foreign page: no CORS at all, so a token
     * a browser might attach (cookie-based proxies) is never readable. */
    if (http_admin_path(r->path)) return 0;
    /* "null" is any sandboxed frame or file:// page: reflected only when
     * cors_origins names it. */
    if (strcmp(r->origin, "null") == 0) {
        int listed = 0;
        for (size_t i = 0; i < srv->cfg->n_cors_origins; i++)
            if (strcmp(srv->cfg->cors_origins[i], "null") == 0) listed = 1;
        if (!listed) return 0;
    }
    sl_buf_appends(out, "Access-Control-Allow-Origin: ");
    sl_buf_appends(out, r->origin);
    sl_buf_appends(out, "\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
    return 0;
}

/* "Authorization: Bearer <admin_token>", compared in constant time. */
int http_admin_ok(const sl_server_t *srv, const req_t *r)
{
    const char *tok = srv->cfg->admin_token;
    const char *h = r->authorization;
    if (tok == NULL || tok[0] == '\0' || h == NULL || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    return sl_secret_equal(h + 7, strlen(h + 7), tok, strlen(tok));
}

const sl_ipnet_t *http_client_ip(conn_t *c)
{
    req_t *r = c->req;
    if (!r->has_client_ip) {
        sl_client_ip(&c->peer, r->xff, r->xff ? strlen(r->xff) : 0, c->srv->trusted, c->srv->n_trusted,
                     &r->client_ip);
        r->has_client_ip = 1;
    }
    return &r->client_ip;
}

int http_admin_gate(conn_t *c)
{
    sl_server_t *srv = c->srv;
    const double rate = ADMIN_FAILURES_PER_MIN / 60.0, burst = ADMIN_FAILURES_PER_MIN;
    int64_t now = sl_now_ms();
    int wait = 1;
    const sl_ipnet_t *ip = http_client_ip(c);
    /* Over the limit, even the right token is refused: else guessing would go on. */
    if (!http_rl_bucket(&srv->auth_rl, AUTH_RL_SLOTS, ip, rate, burst, now, 0, &wait)) {
        srv->auth_limited++;
        char h[64];
        snprintf(h, sizeof(h), "Retry-After: %d\r\n", wait);
        static const char body[] = "{\"success\":false,\"error\":\"too many failed admin token attempts from this "
                                   "address; retry later\"}";
        http_log_refused(srv, "checking the admin token: too many failed attempts from one address");
        http_respond(c, 429, "application/json", h, body, sizeof(body) - 1);
        return -1;
    }
    if (http_admin_ok(srv, c->req)) return 1;
    http_rl_bucket(&srv->auth_rl, AUTH_RL_SLOTS, ip, rate, burst, now, 1, &wait);
    http_log_refused(srv, "checking the admin token: missing or wrong");
    return 0;
}

static void flush_refusal_log(sl_server_t *srv)
{
    if (srv->refusal_log.suppressed)
        SL_INFO("(%llu similar refused-request lines suppressed)", (unsigned long long)srv->refusal_log.suppressed);
    srv->refusal_log.suppressed = 0;
}

void http_log_refused(sl_server_t *srv, const char *fmt, ...)
{
    if (sl_log_level > SL_LOG_INFO) return;
    int64_t sec = sl_now_ms() / 1000;
    if (sec != srv->refusal_log.sec) {
        flush_refusal_log(srv);
        srv->refusal_log.sec = sec;
        srv->refusal_log.lines = 0;
    }
    if (srv->refusal_log.lines >= REFUSAL_LOG_PER_S) {
        srv->refusal_log.suppressed++;
        return;
    }
    srv->refusal_log.lines++;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    SL_INFO("%s", line);
}

void http_metrics(const sl_server_t *srv, sl_buf_t *b)
{
    sl_buf_printf(b,
                  "# HELP sillage_connections_refused_per_ip_total Connections closed at once because their "
                  "address held limits.max_connections_per_ip (also in sillage_connections_refused_total).\n"
                  "# TYPE sillage_connections_refused_per_ip_total counter\n"
                  "sillage_connections_refused_per_ip_total %llu\n"
                  "# HELP sillage_buffered_body_bytes Request body bytes held in memory, all connections.\n"
                  "# TYPE sillage_buffered_body_bytes gauge\nsillage_buffered_body_bytes %llu\n"
                  "# HELP sillage_buffered_body_refused_total Requests answered 503 for limits.max_buffered_bytes.\n"
                  "# TYPE sillage_buffered_body_refused_total counter\nsillage_buffered_body_refused_total %llu\n"
                  "# HELP sillage_admin_auth_limited_total Admin requests answered 429 after too many failed "
                  "token attempts from one address.\n"
                  "# TYPE sillage_admin_auth_limited_total counter\nsillage_admin_auth_limited_total %llu\n",
                  (unsigned long long)srv->refused_per_ip, (unsigned long long)srv->buffered_body_bytes,
                  (unsigned long long)srv->body_refused, (unsigned long long)srv->auth_limited);
}

void http_respond(conn_t *c, int status, const char *content_type, const char *extra_headers,
                  const char *body, size_t body_len)
{
    sl_server_t *srv = c->srv;
    req_t *r = c->req;
    int route = r ? r->route : ROUTE_OTHER;
    srv->requests[route][status_index(status)]++;
    if (srv->stopping || status == 413 || status == 431 || status == 414 || status == 408 ||
        (status == 400 && c->err_status))
        c->keep_alive = 0;

    sl_buf_t out = {0};
    sl_buf_reserve(&out, 256 + body_len);
    sl_buf_printf(&out, "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: sillage\r\n", status,
                  http_status_text(status), http_date(srv));
    if (content_type) sl_buf_printf(&out, "Content-Type: %s\r\n", content_type);
    if (status != 204 && status != 304) sl_buf_printf(&out, "Content-Length: %zu\r\n", body_len);
    http_cors_headers(srv, r, &out);
    if (extra_headers) sl_buf_appends(&out, extra_headers);
    if (!c->keep_alive) sl_buf_appends(&out, "Connection: close\r\n");
    else if (r && r->http_minor == 0) sl_buf_appends(&out, "Connection: keep-alive\r\n");
    sl_buf_append(&out, "\r\n", 2);
    if (body_len && status != 204 && status != 304 && !(r && r->method == HTTP_HEAD))
        sl_buf_append(&out, body, body_len);

    http_req_free(r);
    c->req = NULL;
    c->busy = 0;
    c->last_active_ms = sl_now_ms();
    if (out.data == NULL) { /* out of memory: nothing sensible to send */
        conn_close(c);
        return;
    }
    if (!c->keep_alive) c->close_after_write = 1;
    conn_write(c, out.data, out.len);
    if (!c->closing && !c->in_feed) conn_feed(c);
}

void http_respond_error(conn_t *c, int status, const char *msg)
{
    sl_buf_t b = {0};
    sl_buf_appends(&b, "{\"success\":false,\"error\":");
    sl_buf_append_json_str(&b, msg, strlen(msg));
    sl_buf_appends(&b, "}");
    const char *extra = status == 503 ? "Retry-After: 1\r\n" : status == 405 ? "Allow: GET, POST, OPTIONS\r\n" : NULL;
    if (c->req) SL_DEBUG("answering %d to %s: %s", status, c->req->path ? c->req->path : "?", msg);
    http_respond(c, status, "application/json", extra, b.data ? b.data : "", b.len);
    sl_buf_free(&b);
}

/* ---- parser callbacks ------------------------------------------------------- */

static int refuse(conn_t *c, int status, const char *msg)
{
    c->err_status = status;
    c->err_msg = msg;
    return HPE_USER;
}

/* NULL when len more bytes of c's request body fit in the buffer budget:
 * the whole of limits.max_buffered_bytes, the part open to bodies whose key
 * was not checked (UNCHECKED_SHARE), and the client address's share
 * (ADDRESS_SHARE); else the 503's text. */
static const char *body_budget_refusal(conn_t *c, uint64_t len)
{
    sl_server_t *srv = c->srv;
    const req_t *r = c->req;
    const char *why = NULL;
    if (srv->buffered_body_bytes + len > srv->cfg->limits.max_buffered_bytes) why = BUFFERED_FULL_MSG;
    else if (!r->key_checked && srv->unchecked_body_bytes + len > UNCHECKED_SHARE(srv)) why = UNCHECKED_SHARE_MSG;
    else if (r->body_ipc->body_bytes + len > ADDRESS_SHARE(srv)) why = ADDRESS_SHARE_MSG;
    if (why) srv->body_refused++;
    return why;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    c->in_message = 1;
    c->headers_done = 0;
    c->err_status = 0;
    c->msg_start_ms = sl_now_ms();
    c->header_bytes = 0;
    c->n_headers = 0;
    c->url.len = c->hname.len = c->hval.len = 0;
    http_req_free(c->req);
    c->req = req_new(c);
    if (c->req == NULL) return refuse(c, 503, "out of memory");
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (c->url.len + len > MAX_URL_BYTES) return refuse(c, 414, "request URL is longer than 8192 bytes");
    return sl_buf_append(&c->url, at, len) ? refuse(c, 503, "out of memory") : 0;
}

static int header_bytes(conn_t *c, size_t len)
{
    c->header_bytes += len;
    if (c->header_bytes > c->srv->cfg->limits.max_header_bytes)
        return refuse(c, 431, "request headers exceed limits.max_header_bytes");
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (header_bytes(c, len)) return HPE_USER;
    return sl_buf_append(&c->hname, at, len) ? refuse(c, 503, "out of memory") : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (header_bytes(c, len)) return HPE_USER;
    return sl_buf_append(&c->hval, at, len) ? refuse(c, 503, "out of memory") : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    req_t *r = c->req;
    if (++c->n_headers > MAX_HEADERS) return refuse(c, 431, "more than 100 request headers");
    const char *name = c->hname.data ? c->hname.data : "";
    const char *val = c->hval.data ? c->hval.data : "";
    size_t vlen = c->hval.len;
    const char **slot = NULL;
    switch (c->hname.len) {
    case 6: if (strcasecmp(name, "origin") == 0) slot = &r->origin;
        else if (strcasecmp(name, "expect") == 0) slot = &r->expect;
        break;
    case 12: if (strcasecmp(name, "content-type") == 0) slot = &r->content_type; break;
    case 13: if (strcasecmp(name, "authorization") == 0) slot = &r->authorization;
        else if (strcasecmp(name, "last-event-id") == 0) slot = &r->last_event_id;
        else if (strcasecmp(name, "if-none-match") == 0) slot = &r->if_none_match;
        break;
    case 15: if (strcasecmp(name, "x-forwarded-for") == 0) slot = &r->xff;
        else if (strcasecmp(name, "accept-encoding") == 0) slot = &r->accept_encoding;
        break;
    case 16: if (strcasecmp(name, "content-encoding") == 0) slot = &r->content_encoding; break;
    case 30: if (strcasecmp(name, "access-control-request-headers") == 0) slot = &r->acr_headers; break;
    }
    if (slot) {
        if (*slot && slot == &r->xff) {
            /* Repeated X-Forwarded-For headers form one list. */
            size_t ol = strlen(*slot);
            char *j = sl_arena_alloc(&r->arena, ol + vlen + 2);
            if (j == NULL) return refuse(c, 503, "out of memory");
            memcpy(j, *slot, ol);
            j[ol] = ',';
            memcpy(j + ol + 1, val, vlen);
            j[ol + 1 + vlen] = '\0';
            *slot = j;
        } else {
            *slot = sl_arena_strndup(&r->arena, val, vlen);
            if (*slot == NULL) return refuse(c, 503, "out of memory");
        }
    }
    c->hname.len = c->hval.len = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    req_t *r = c->req;
    r->method = p->method;
    r->http_minor = p->http_minor;
    uint64_t max = c->srv->cfg->limits.max_request_bytes;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > max)
        return refuse(c, 413, "request body exceeds limits.max_request_bytes");
    /* Split the target into path and query once, in the arena. */
    const char *u = c->url.data ? c->url.data : "/";
    size_t ul = c->url.data ? c->url.len : 1;
    const char *q = memchr(u, '?', ul);
    size_t pl = q ? (size_t)(q - u) : ul;
    r->path = sl_arena_strndup(&r->arena, u, pl);
    r->query = q ? sl_arena_strndup(&r->arena, q + 1, ul - pl - 1) : NULL;
    if (r->path == NULL || (q && r->query == NULL)) return refuse(c, 503, "out of memory");
    c->headers_done = 1;
    c->had_request = 1;
    c->body_start_ms = sl_now_ms();
    r->route = http_route_of(c->srv, r->method, r->path);
    /* Only an ingestion POST reads its body; any other body is drained
     * unkept (it costs no memory, and the connection stays usable). */
    r->keeps_body = r->method == HTTP_POST && HTTP_ROUTE_INGESTS(r->route);
    if (r->keeps_body) {
        /* A Basic key is checked before the body is read: a wrong key costs
         * the server no body buffer, and gets no 100 Continue. */
        const char *why = NULL;
        int auth = http_route_basic_auth(c, &why);
        if (auth < 0) return refuse(c, 401, why);
        r->key_checked = auth > 0;
        /* The body counts in the share of the client address (what
         * trusted_proxies yields), not the peer's: behind a proxy, each
         * client has its own. */
        r->body_ipc = ip_entry_get(c->srv, http_client_ip(c));
        if (r->body_ipc == NULL) return refuse(c, 503, "out of memory");
        r->body_ipc->n_bodies++;
        if (p->flags & F_CONTENT_LENGTH) {
            const char *full = body_budget_refusal(c, p->content_length);
            if (full) return refuse(c, 503, full);
        }
    }
    if (r->expect && strcasecmp(r->expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        char *b = malloc(sizeof(cont) - 1);
        if (b) {
            memcpy(b, cont, sizeof(cont) - 1);
            conn_write(c, b, sizeof(cont) - 1);
        }
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    req_t *r = c->req;
    sl_server_t *srv = c->srv;
    r->body_seen += len;
    if (r->body_seen > srv->cfg->limits.max_request_bytes)
        return refuse(c, 413, "request body exceeds limits.max_request_bytes");
    if (!r->keeps_body) return 0;
    const char *full = body_budget_refusal(c, len);
    if (full) return refuse(c, 503, full);
    if (sl_buf_append(&r->body, at, len)) return refuse(c, 503, "out of memory");
    srv->buffered_body_bytes += len;
    if (!r->key_checked) srv->unchecked_body_bytes += len;
    r->body_ipc->body_bytes += len;
    if (srv->buffered_body_bytes > srv->buffered_peak) srv->buffered_peak = srv->buffered_body_bytes;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    c->in_message = 0;
    c->keep_alive = llhttp_should_keep_alive(p) ? 1 : 0;
    return HPE_PAUSED;
}

/* ---- the feed loop ------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void update_reading(conn_t *c)
{
    if (c->write_hook) return; /* no socket */
    int want = !c->closing && !c->close_after_write && c->pending_len - c->pending_off < PENDING_HIGH_WATER &&
               c->tcp.write_queue_size < WRITE_HIGH_WATER;
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

static void parse_error(conn_t *c, enum llhttp_errno e)
{
    if (c->req == NULL) c->req = req_new(c);
    if (c->req == NULL) {
        conn_close(c);
        return;
    }
    c->keep_alive = 0;
    c->in_message = 0;
    /* A callback that refused input recorded why; llhttp reports it as
     * HPE_USER, or HPE_CB_HEADERS_COMPLETE from on_headers_complete. */
    if (c->err_status) {
        http_log_refused(c->srv, "refused request from client: %s", c->err_msg);
        http_respond_error(c, c->err_status, c->err_msg);
        return;
    }
    char msg[160];
    snprintf(msg, sizeof(msg), "malformed HTTP request: %s", llhttp_get_error_reason(&c->parser));
    c->err_status = 400;
    http_log_refused(c->srv, "reading client request: %s", msg);
    http_respond_error(c, 400, msg);
}

/* ---- another loop's connections ----
 * A server on another loop (loops.c) answers what needs no derived state;
 * before each request it reads the request line, and a request for a route
 * the main loop serves (profiles, the feed, /healthz, /metrics, /debug)
 * takes the connection there, with every byte not parsed yet. */

int http_served_here(int route)
{
    return HTTP_ROUTE_INGESTS(route) || route == ROUTE_PIXEL || route == ROUTE_PREFLIGHT ||
           route == ROUTE_LIBRARY_METRICS || route == ROUTE_OTHER;
}

/* 1: the next request is served here; 0: by the main loop; -1: its request
 * line is not all in yet. */
static int route_here(const conn_t *c)
{
    const char *p = c->pending + c->pending_off, *end = c->pending + c->pending_len;
    while (p < end && (*p == '\r' || *p == '\n')) p++; /* blank lines between requests */
    const char *sp = memchr(p, ' ', (size_t)(end - p));
    if (sp == NULL) return end - p > 32 ? 1 : -1; /* no method is that long: the parser refuses it here */
    const char *u = sp + 1, *q = u;
    while (q < end && *q != ' ' && *q != '?' && *q != '\r' && *q != '\n') q++;
    if (q == end) return (size_t)(end - u) > MAX_URL_BYTES ? 1 : -1;
    if ((size_t)(q - u) > MAX_URL_BYTES) return 1; /* refused here (414) */
    char path[MAX_URL_BYTES + 1];
    memcpy(path, u, (size_t)(q - u));
    path[q - u] = '\0';
    int method = sp - p == 7 && memcmp(p, "OPTIONS", 7) == 0 ? HTTP_OPTIONS : HTTP_GET;
    return http_served_here(http_route_of(c->srv, method, path));
}

/* Hands c, with its unparsed bytes, to the main loop; c is closed here. */
static void hand_over(conn_t *c)
{
    sl_server_t *srv = c->srv;
    uv_os_fd_t fd;
    size_t n = c->pending_len - c->pending_off;
    http_moved_t *m = malloc(sizeof(*m) + n);
    int nfd = -1;
    if (m && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (nfd < 0) {
        SL_WARN("handing a connection to the main loop: %s", m ? strerror(errno) : "out of memory");
        free(m);
        conn_close(c);
        return;
    }
    m->fd = nfd;
    m->len = n;
    memcpy(m->bytes, c->pending + c->pending_off, n);
    c->pending_off = c->pending_len;
    conn_close(c); /* this loop lets go of the socket first (its epoll forgets it) */
    if (sl_handoff_push(&srv->main->moved, m) != 0) { /* the main loop is stopping */
        close(nfd);
        free(m);
        return;
    }
    srv->handed_over++;
}

static void conn_feed(conn_t *c)
{
    if (c->in_feed || c->closing) return;
    c->in_feed = 1;
    while (!c->closing && !c->busy && !c->close_after_write &&
           c->tcp.write_queue_size < WRITE_HIGH_WATER && c->pending_off < c->pending_len) {
        if (c->srv->main && !c->in_message) { /* another loop's: is the next request for it? */
            int here = route_here(c);
            if (here < 0) {
                c->await_line = 1; /* on_read feeds again with more */
                break;
            }
            if (here == 0) {
                /* an answer still queued here goes first: after_write()
                 * feeds again once it is in the kernel */
                if (c->tcp.write_queue_size == 0) hand_over(c);
                break;
            }
        }
        const char *p = c->pending + c->pending_off;
        size_t n = c->pending_len - c->pending_off;
        enum llhttp_errno e = llhttp_execute(&c->parser, p, n);
        if (e == HPE_OK) {
            c->pending_off = c->pending_len;
        } else if (e == HPE_PAUSED) {
            c->pending_off += (size_t)(llhttp_get_error_pos(&c->parser) - p);
            llhttp_resume(&c->parser);
            http_route_request(c); /* may answer now, or set busy */
            if (c->req) body_release(c->req);
        } else {
            parse_error(c, e);
            break;
        }
    }
    c->in_feed = 0;
    if (c->closing) return;
    if (c->pending_off >= c->pending_len) {
        if (!c->pending_borrowed) free(c->pending);
        c->pending = NULL;
        c->pending_len = c->pending_off = 0;
        c->pending_borrowed = 0;
    }
    update_reading(c);
    if (c->srv->stopping && !c->busy && !c->in_message && c->pending == NULL && c->tcp.write_queue_size == 0)
        conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn_t *c = h->data;
    buf->base = c->srv->readbuf;
    buf->len = sizeof(c->srv->readbuf);
}

/* Keeps the unparsed bytes [p, p+n) on the heap, after what is held already. */
static int keep_pending(conn_t *c, const char *p, size_t n)
{
    size_t held = c->pending_borrowed ? 0 : c->pending_len - c->pending_off;
    char *nb = malloc(held + n);
    if (nb == NULL) return SL_ENOMEM;
    if (held) memcpy(nb, c->pending + c->pending_off, held);
    memcpy(nb + held, p, n);
    if (!c->pending_borrowed) free(c->pending);
    c->pending = nb;
    c->pending_len = held + n;
    c->pending_off = 0;
    c->pending_borrowed = 0;
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (nread == 0) return;
    if (nread < 0) {
        /* EOF or reset: a request mid-commit still commits; its answer is dropped. */
        conn_close(c);
        return;
    }
    c->last_active_ms = sl_now_ms();
    if (c->busy || c->pending_off < c->pending_len) {
        /* A request is in flight (or bytes wait already): queue behind it. */
        if (keep_pending(c, buf->base, (size_t)nread)) {
            conn_close(c);
            return;
        }
        update_reading(c);
        if (c->await_line && !c->busy) { /* the request line waited for these */
            c->await_line = 0;
            conn_feed(c);
        }
        return;
    }
    /* Parse straight from the shared read buffer; what is left when a request
     * pauses the parser is copied to the connection. */
    c->pending = buf->base;
    c->pending_len = (size_t)nread;
    c->pending_off = 0;
    c->pending_borrowed = 1;
    conn_feed(c);
    if (!c->closing && c->pending_borrowed && c->pending_off < c->pending_len) {
        if (keep_pending(c, c->pending + c->pending_off, c->pending_len - c->pending_off)) {
            conn_close(c);
            return;
        }
        update_reading(c);
    }
}

/* ---- connections ------------------------------------------------------------ */

/* Per address (IPv6: per /64): the connections of a peer address, for
 * limits.max_connections_per_ip and the reserve, and the request bodies of a
 * client address, for ADDRESS_SHARE. An entry lives while it holds either, so
 * the table holds at most two entries per open connection. */

/* The entry of ip, made when there is none (NULL when out of memory). */
static ip_conns_t *ip_entry_get(sl_server_t *srv, const sl_ipnet_t *ip)
{
    if (srv->ipc == NULL && (srv->ipc = calloc(IPC_BUCKETS, sizeof(*srv->ipc))) == NULL) return NULL;
    unsigned char a[8] = {0};
    memcpy(a, ip->addr, ip->family == AF_INET ? 4 : 8);
    ip_conns_t **head = &srv->ipc[http_rl_key(ip) % IPC_BUCKETS];
    for (ip_conns_t *e = *head; e; e = e->next)
        if (e->family == ip->family && memcmp(e->addr, a, 8) == 0) return e;
    ip_conns_t *e = calloc(1, sizeof(*e));
    if (e == NULL) return NULL;
    e->family = ip->family;
    memcpy(e->addr, a, 8);
    e->next = *head;
    *head = e;
    return e;
}

/* Frees e once it holds neither a connection nor a body. */
static void ip_entry_put(sl_server_t *srv, ip_conns_t *e)
{
    if (e->n > 0 || e->n_bodies > 0) return;
    sl_ipnet_t ip = {.family = e->family};
    memcpy(ip.addr, e->addr, 8);
    for (ip_conns_t **pp = &srv->ipc[http_rl_key(&ip) % IPC_BUCKETS]; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            free(e);
            return;
        }
}

static void ip_conns_release(sl_server_t *srv, conn_t *c)
{
    ip_conns_t *e = c->ipc;
    c->ipc = NULL;
    if (e == NULL) return;
    e->n--;
    if (c->in_reserve) e->n_reserve--;
    ip_entry_put(srv, e);
}

/* 1 when the peer is one of trusted_proxies. */
static int peer_trusted(const sl_server_t *srv, const sl_ipnet_t *peer)
{
    for (size_t i = 0; i < srv->n_trusted; i++)
        if (sl_ipnet_contains(&srv->trusted[i], peer)) return 1;
    return 0;
}

static void ip_conns_free(sl_server_t *srv)
{
    for (size_t i = 0; srv->ipc && i < IPC_BUCKETS; i++)
        for (ip_conns_t *e = srv->ipc[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    free(srv->ipc);
    srv->ipc = NULL;
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    sl_server_t *srv = c->srv;
    if (c->prev) c->prev->next = c->next;
    else srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->n_conns--;
    if (c->feed_mode) http_feed_conn_closed(c); /* a long poll or a stream: no commit holds its request */
    if (c->req && c->req->waiting) { /* a read waiting for the stage: nothing else holds it */
        sl_stage_cancel(srv->stage, &c->req->waiter);
        c->req->waiting = 0;
        c->busy = 0;
    }
    if (c->req) {
        if (c->busy && c->req->read) http_read_cancel(c->req); /* a profile read nobody will get */
        if (c->busy) c->req->conn = NULL; /* the commit callback frees it */
        else http_req_free(c->req);
    }
    ip_conns_release(srv, c); /* after the request gave its body back to the address */
    if (!c->pending_borrowed) free(c->pending);
    sl_buf_free(&c->hname);
    sl_buf_free(&c->hval);
    sl_buf_free(&c->url);
    free(c);
    maybe_finish_stop(srv);
}

static void conn_close(conn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* A connection accepted (or handed over by another loop): counted against
 * the limits, then read. 0, or -1 when refused (c is closing). */
static int conn_admit(sl_server_t *srv, conn_t *c)
{
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[64] = "";
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof(host));
        else if (ss.ss_family == AF_INET6) inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof(host));
    }
    if (sl_ipnet_parse(host, strlen(host), &c->peer) != 0) memset(&c->peer, 0, sizeof(c->peer));
    c->ipc = ip_entry_get(srv, &c->peer);
    if (c->ipc) c->ipc->n++;
    const uint64_t max = srv->cfg->limits.max_connections;
    uint64_t held = c->ipc ? c->ipc->n : 1;
    int refuse_it = srv->stopping || c->ipc == NULL;
    /* A trusted proxy carries many clients: only max_connections bounds it. */
    if (!refuse_it && held > srv->cfg->limits.max_connections_per_ip && !peer_trusted(srv, &c->peer)) {
        srv->refused_per_ip++;
        refuse_it = 1;
    }
    /* Past the global cap, only the reserve: for an address with few
     * connections and no reserved slot yet. */
    if (!refuse_it && srv->n_conns > max) {
        if (srv->n_conns > max + RESERVE_CONNS || held > RESERVE_MAX_HELD ||
            c->ipc->n_reserve >= RESERVE_PER_ADDRESS)
            refuse_it = 1;
        else {
            c->in_reserve = 1;
            c->ipc->n_reserve++;
        }
    }
    if (refuse_it) {
        srv->refused_connections++;
        conn_close(c);
        return -1;
    }
    srv->accepted_connections++;
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;
    c->keep_alive = 1;
    c->last_active_ms = c->msg_start_ms = sl_now_ms();
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) {
        c->reading = 1;
        return 0;
    }
    conn_close(c);
    return -1;
}

static void on_connection(uv_stream_t *server, int status)
{
    sl_server_t *srv = server->data;
    if (status < 0) {
        SL_WARN("accept: %s", uv_strerror(status));
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return;
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return;
    }
    conn_admit(srv, c);
}

/* The main loop: connections other loops handed over, each with the bytes
 * they read and did not parse. */
static void on_moved(sl_handoff_t *h)
{
    sl_server_t *srv = h->data;
    http_moved_t *m = sl_handoff_take_all(h);
    while (m) {
        http_moved_t *next = m->next;
        conn_t *c = srv->stopping ? NULL : calloc(1, sizeof(*c));
        if (c == NULL) {
            close(m->fd);
            free(m);
            m = next;
            continue;
        }
        c->srv = srv;
        uv_tcp_init(srv->loop, &c->tcp);
        c->tcp.data = c;
        if (uv_tcp_open(&c->tcp, m->fd) != 0) {
            close(m->fd);
            uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        } else if (conn_admit(srv, c) == 0) {
            if (m->len && keep_pending(c, m->bytes, m->len)) conn_close(c);
            else conn_feed(c);
        }
        free(m);
        m = next;
    }
}

/* 1 when c's request body, past its first BODY_RATE_GRACE_MS, arrived
 * slower than limits.min_body_rate on average. Not while the server itself
 * holds the body back: bytes read but not parsed yet, or reading stopped
 * because the client does not take its answers (request_timeout bounds that). */
static int body_too_slow(const conn_t *c, int64_t now)
{
    uint64_t rate = c->srv->cfg->limits.min_body_rate;
    int64_t t = now - c->body_start_ms - BODY_RATE_GRACE_MS;
    if (rate == 0 || !c->headers_done || c->req == NULL || t <= 0) return 0;
    if (!c->reading || c->pending_off < c->pending_len) return 0;
    return c->req->body_seen < rate * (uint64_t)t / 1000;
}

/* Idle keep-alive connections, connections that never sent a request, and
 * slow requests are closed once a second. */
static void on_sweep(uv_timer_t *t)
{
    sl_server_t *srv = t->data;
    const sl_config_t *cfg = srv->cfg;
    int64_t now = sl_now_ms();
    if (now / 1000 != srv->refusal_log.sec) flush_refusal_log(srv);
    /* Large bodies come from the heap's top or mmap'd chunks; once they are
     * gone, give the pages back rather than keep the peak for ever. */
    if (srv->buffered_peak - srv->buffered_body_bytes >= TRIM_AFTER_DROP) {
        malloc_trim(0);
        srv->buffered_peak = srv->buffered_body_bytes;
    }
    conn_t *next;
    for (conn_t *c = srv->conns; c; c = next) {
        next = c->next;
        if (c->closing || c->busy) continue;
        const char *late = NULL; /* why a started request is cut off */
        int64_t age = now - c->msg_start_ms;
        if (c->in_message && !c->headers_done && age > cfg->limits.header_timeout_ms)
            late = "request headers not completed within limits.header_timeout";
        else if (c->in_message && age > cfg->limits.request_timeout_ms)
            late = "request not completed within limits.request_timeout";
        else if (c->in_message && body_too_slow(c, now))
            late = "request body arrived slower than limits.min_body_rate";
        if (late) {
            c->in_message = 0;
            c->err_status = 408;
            c->keep_alive = 0;
            if (c->req == NULL) c->req = req_new(c);
            http_log_refused(srv, "closing a connection: %s", late);
            if (c->req) http_respond_error(c, 408, late);
            else conn_close(c);
        } else if (!c->in_message && !c->had_request && age > cfg->limits.header_timeout_ms &&
                   c->tcp.write_queue_size == 0) {
            /* connected and sent nothing: no request to answer */
            conn_close(c);
        } else if (!c->in_message && now - c->last_active_ms > cfg->limits.idle_timeout_ms &&
                   c->tcp.write_queue_size == 0) {
            conn_close(c);
        }
    }
}

/* ---- server ------------------------------------------------------------------- */

static void free_after_close(uv_handle_t *h)
{
    sl_http_server_free(h->data);
}

/* The listening socket, shared with the other loops' (SO_REUSEPORT: the
 * kernel spreads new connections across them). libuv 1.44 has no flag for
 * it: the socket is made here and given to the handle. */
static int bind_shared(uv_tcp_t *h, const struct sockaddr *addr)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return uv_translate_sys_error(errno);
    int one = 1, rc = 0;
    socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 || bind(fd, addr, len) != 0)
        rc = uv_translate_sys_error(errno);
    if (rc == 0) rc = uv_tcp_open(h, fd);
    if (rc) close(fd);
    return rc;
}

static int server_start(sl_server_t **out, uv_loop_t *loop, const sl_config_t *cfg, sl_store_t *store,
                        sl_server_t *main, int port_beside)
{
    sl_server_t *srv = calloc(1, sizeof(*srv));
    if (srv == NULL) return SL_ENOMEM;
    srv->loop = loop;
    srv->cfg = cfg;
    srv->store = store;
    srv->main = main;
    int rc;
    srv->scratch_len = cfg->limits.max_message_bytes + 4096;
    srv->scratch = malloc(srv->scratch_len);
    srv->trusted = calloc(cfg->n_trusted_proxies + 1, sizeof(sl_ipnet_t));
    if (srv->scratch == NULL || srv->trusted == NULL) {
        rc = SL_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < cfg->n_trusted_proxies; i++) {
        const char *s = cfg->trusted_proxies[i];
        if (sl_ipnet_parse(s, strlen(s), &srv->trusted[srv->n_trusted]) == 0) srv->n_trusted++;
        else SL_WARN("trusted_proxies: \"%s\" is not an address or CIDR block; ignored", s);
    }
    if (cfg->geoip_db && (rc = sl_geo_open(&srv->geo, cfg->geoip_db))) goto fail;
    if ((rc = http_static_init(srv))) goto fail;

    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_header_value_complete = on_header_value_complete;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_message_complete = on_message_complete;

    /* One descriptor per connection: raise the soft limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    char host[256];
    int port;
    if (sl_config_split_listen(cfg->listen, host, sizeof(host), &port)) {
        rc = SL_EINVAL;
        goto fail;
    }
    if (main) port = port_beside;
    struct sockaddr_storage addr;
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        SL_ERROR("listen: \"%s\" is not an IP address", host);
        rc = SL_EINVAL;
        goto fail;
    }
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    srv->handles_open++;
    if ((rc = cfg->ingest_loops > 1 ? bind_shared(&srv->listener, (struct sockaddr *)&addr)
                                     : uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0)) ||
        (rc = uv_listen((uv_stream_t *)&srv->listener, 4096, on_connection))) {
        SL_ERROR("cannot listen on %s: %s", cfg->listen, uv_strerror(rc));
        /* The handle is the loop's until its close callback: free there. */
        uv_close((uv_handle_t *)&srv->listener, free_after_close);
        return rc;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen);
    srv->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                                 : ((struct sockaddr_in6 *)&bound)->sin6_port);
    srv->moved.data = srv;
    int more_loops = main == NULL && cfg->ingest_loops > 1;
    if ((main && (rc = sl_store_port_open(store, loop, &srv->sport))) ||
        (more_loops && (rc = sl_handoff_init(&srv->moved, offsetof(http_moved_t, next), loop, on_moved)))) {
        SL_ERROR("cannot start a loop's server: %s", sl_strerror(rc));
        uv_close((uv_handle_t *)&srv->listener, free_after_close); /* as above: nothing else is open */
        return rc;
    }
    if (more_loops) {
        srv->moved_open = 1;
        srv->handles_open++;
    }
    uv_timer_init(loop, &srv->sweep);
    srv->sweep.data = srv;
    srv->handles_open++;
    uv_timer_start(&srv->sweep, on_sweep, 1000, 1000);
    uv_timer_init(loop, &srv->grace);
    srv->grace.data = srv;
    srv->handles_open++;
    *out = srv;
    return 0;
fail:
    sl_geo_close(srv->geo);
    http_static_free(srv);
    http_rl_table_free(&srv->rl);
    http_rl_table_free(&srv->auth_rl);
    ip_conns_free(srv);
    free(srv->scratch);
    sl_arena_free(&srv->json_arena);
    free(srv->trusted);
    free(srv);
    return rc;
}

int sl_http_server_start(sl_server_t **out, uv_loop_t *loop, const sl_config_t *cfg, sl_store_t *store)
{
    return server_start(out, loop, cfg, store, NULL, 0);
}

int http_server_start_beside(sl_server_t **out, uv_loop_t *loop, sl_server_t *main, int port)
{
    return server_start(out, loop, main->cfg, main->store, main, port);
}

int sl_http_server_set_stage(sl_server_t *srv, sl_stage_t *stage, struct sl_stitch_s *stitch,
                             struct sl_trig_s *trig, struct sl_feed_s *feed)
{
    srv->stage = stage;
    srv->stitch = stitch;
    srv->trig = trig;
    srv->feed = feed;
    int rc = feed ? http_feed_start(srv) : 0;
    if (rc == 0 && stitch && srv->cfg->debug_page) rc = http_feed_debug_start(srv);
    return rc;
}

void sl_http_server_set_fields(sl_server_t *srv, struct sl_fields_s *fields) { srv->fields = fields; }
void sl_http_server_set_audiences(sl_server_t *srv, struct sl_aud_s *aud) { srv->aud = aud; }

int sl_http_server_add_metrics(sl_server_t *srv, void (*render)(void *arg, sl_buf_t *out), void *arg)
{
    if (srv->n_metrics == sizeof(srv->metrics) / sizeof(srv->metrics[0])) return SL_EINVAL;
    srv->metrics[srv->n_metrics].render = render;
    srv->metrics[srv->n_metrics].arg = arg;
    srv->n_metrics++;
    return 0;
}

int sl_http_server_port(const sl_server_t *srv)
{
    return srv->port;
}

void http_handle_closed(sl_server_t *srv)
{
    if (--srv->handles_open == 0 && srv->stop_cb) srv->stop_cb(srv->stop_arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    http_handle_closed(h->data);
}

static void moved_closed(sl_handoff_t *h)
{
    sl_server_t *srv = h->data;
    for (http_moved_t *m = sl_handoff_take_all(h), *next; m; m = next) { /* handed over too late */
        next = m->next;
        close(m->fd);
        free(m);
    }
    http_handle_closed(srv);
}

/* Another loop's server: its last batch came back, its port is closed. */
static void port_closed(void *arg)
{
    close_handles(arg);
}

/* Last step of a stop: nothing signals the asyncs any more. */
static void close_handles(void *arg)
{
    sl_server_t *srv = arg;
    uv_timer_stop(&srv->grace);
    if (srv->feed_started) {
        srv->feed_started = 0;
        uv_close((uv_handle_t *)&srv->feed_async, on_handle_closed);
        uv_close((uv_handle_t *)&srv->feed_timer, on_handle_closed);
    }
    if (srv->debug_open) http_feed_debug_stop(srv);
    if (srv->moved_open) {
        srv->moved_open = 0;
        sl_handoff_close(&srv->moved, moved_closed);
    }
    uv_close((uv_handle_t *)&srv->sweep, on_handle_closed);
    uv_close((uv_handle_t *)&srv->grace, on_handle_closed);
}

/* The stage takes too long to apply what is left: it stops now and takes
 * up where it left off at the next start. */
static void on_stage_grace(uv_timer_t *t)
{
    sl_server_t *srv = t->data;
    SL_WARN("the stage is %llu events behind at shutdown: it stops now and resumes at the next start",
            (unsigned long long)(sl_store_durable_seq(srv->store) - sl_stage_applied(srv->stage)));
    sl_stage_stop(srv->stage, 1, close_handles, srv);
}

/* Every acknowledged event is on disk: the stage applies what is left
 * (bounded), then the handles close. */
static void on_store_drained(void *arg)
{
    sl_server_t *srv = arg;
    uv_timer_stop(&srv->grace);
    if (srv->stage == NULL) {
        close_handles(srv);
        return;
    }
    uv_timer_start(&srv->grace, on_stage_grace, 5000, 0);
    sl_stage_stop(srv->stage, 0, close_handles, srv);
}

static void maybe_finish_stop(sl_server_t *srv)
{
    if (!srv->stopping || srv->n_conns > 0 || srv->store_draining) return;
    if (srv->main) { /* another loop's: the store goes on; its port closes */
        if (srv->port_closing) return;
        srv->port_closing = 1;
        sl_store_port_close(srv->sport, port_closed, srv);
        return;
    }
    srv->store_draining = 1;
    sl_store_drain(srv->store, on_store_drained, srv);
}

static void on_grace(uv_timer_t *t)
{
    sl_server_t *srv = t->data;
    SL_WARN("shutdown grace period over: closing %zu connections", srv->n_conns);
    for (conn_t *c = srv->conns; c; c = c->next) conn_close(c);
    maybe_finish_stop(srv);
}

void sl_http_server_stop(sl_server_t *srv, int64_t grace_ms, void (*cb)(void *), void *arg)
{
    if (srv->stopping) return;
    srv->stopping = 1;
    srv->stop_cb = cb;
    srv->stop_arg = arg;
    uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
    http_feed_stop(srv);
    conn_t *next;
    for (conn_t *c = srv->conns; c; c = next) {
        next = c->next;
        if (!c->busy && !c->in_message && c->tcp.write_queue_size == 0) conn_close(c);
        else c->keep_alive = 0;
    }
    uv_timer_start(&srv->grace, on_grace, (uint64_t)grace_ms, 0);
    maybe_finish_stop(srv);
}

void sl_http_server_free(sl_server_t *srv)
{
    if (srv == NULL) return;
    sl_handoff_destroy(&srv->moved);
    sl_geo_close(srv->geo);
    http_static_free(srv);
    http_rl_table_free(&srv->rl);
    http_rl_table_free(&srv->auth_rl);
    ip_conns_free(srv);
    free(srv->scratch);
    sl_arena_free(&srv->json_arena);
    free(srv->trusted);
    sl_handoff_destroy(&srv->debug_ready);
    free(srv);
}

/* ---- fuzzing ---------------------------------------------------------------- */

conn_t *http_fake_conn(sl_server_t *srv, void (*hook)(conn_t *, const char *, size_t, void *), void *arg)
{
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp); /* no socket until bound or connected: only for uv_close */
    c->tcp.data = c;
    c->write_hook = hook;
    c->hook_arg = arg;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    sl_ipnet_parse("203.0.113.9", 11, &c->peer);
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;
    c->keep_alive = 1;
    c->last_active_ms = c->msg_start_ms = sl_now_ms();
    return c;
}

void http_fake_input(conn_t *c, const char *p, size_t n)
{
    if (c->closing || n == 0) return;
    if (keep_pending(c, p, n)) {
        conn_close(c);
        return;
    }
    conn_feed(c);
}

int http_admin_required(conn_t *c)
{
    int ok = http_admin_gate(c);
    if (ok < 0) return 0; /* answered 429 */
    if (!ok) http_respond_error(c, 401, "admin token required (Authorization: Bearer <admin_token>)");
    return ok;
}

int http_parse_num(const char *s, unsigned long long min, unsigned long long max, unsigned long long *out)
{
    if (s[0] < '0' || s[0] > '9') return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno == ERANGE || *end || x < min || x > max) return -1;
    *out = x;
    return 0;
}

int http_query_num(conn_t *c, const char *name, unsigned long long min, unsigned long long max,
                   unsigned long long *out)
{
    char *v = NULL;
    long n = http_query_param(c->req, name, &v);
    if (n == SL_ENOTFOUND) return 1;
    if (n <= 0 || http_parse_num(v, min, max, out)) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s must be a whole number from %llu to %llu", name, min, max);
        http_respond_error(c, 400, msg);
        return -1;
    }
    return 0;
}

static void stage_reached(sl_stage_waiter_t *w, int reached)
{
    req_t *r = w->arg;
    conn_t *c = r->conn;
    r->waiting = 0;
    c->busy = 0;
    r->after_stage(c, reached);
}

void http_after_stage(conn_t *c, void (*then)(conn_t *c, int reached))
{
    req_t *r = c->req;
    sl_stage_t *stage = c->srv->stage;
    unsigned long long pos = sl_store_durable_seq(c->srv->store), wait_ms = 2000;
    if (http_query_num(c, "position", 0, UINT64_MAX, &pos) < 0 || http_query_num(c, "wait_ms", 0, 10000, &wait_ms) < 0)
        return;
    if (pos <= sl_stage_durable_applied(stage) || wait_ms == 0) {
        then(c, pos <= sl_stage_durable_applied(stage));
        return;
    }
    r->after_stage = then;
    r->waiter.cb = stage_reached;
    r->waiter.arg = r;
    r->waiting = 1;
    c->busy = 1;
    sl_stage_wait(stage, &r->waiter, pos, (int64_t)wait_ms);
}
