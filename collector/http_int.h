/* http_int.h - structures shared by the collector's own files (http.c owns
 * connections and parsing, routes.c answers requests). Not part of the
 * collector's contract. */
#ifndef SL_HTTP_INT_H
#define SL_HTTP_INT_H

#include "sl_collector.h"
#include "sl_stage.h"
#include <llhttp.h>

enum route_id {
    ROUTE_TRACK, ROUTE_PAGE, ROUTE_SCREEN, ROUTE_IDENTIFY, ROUTE_ALIAS, ROUTE_GROUP,
    ROUTE_BATCH, ROUTE_PIXEL, ROUTE_PREFLIGHT, ROUTE_HEALTHZ, ROUTE_METRICS, ROUTE_PROFILES, ROUTE_TRIGGERS, ROUTE_STATIC, ROUTE_DEBUG, ROUTE_LIBRARY_METRICS, ROUTE_OTHER,
    N_ROUTES
};
extern const char *const http_route_names[N_ROUTES];
/* The routes whose body is read (POST): the ingestion routes, ROUTE_TRACK..ROUTE_BATCH. */
#define HTTP_ROUTE_INGESTS(route) ((route) >= ROUTE_TRACK && (route) <= ROUTE_BATCH)

#define N_STATUS 20
extern const int http_status_codes[N_STATUS]; /* last slot: any other code */

typedef struct conn_s conn_t;

/* ratelimit.c: fixed-size tables of token buckets, one per client address
 * (IPv4, or the /64 of an IPv6 address). */
typedef struct rl_table_s {
    struct rl_slot_s *slots;      /* NULL until first used */
    size_t n;                     /* slots, a power of two */
} rl_table_t;

typedef struct req_s {
    sl_arena_t arena;
    conn_t *conn;                 /* NULL once the connection is gone */
    sl_server_t *srv;             /* counts the body's bytes (buffered_body_bytes) */
    int method;                   /* llhttp_method_t */
    int http_minor;
    char *path, *query;           /* arena */
    const char *content_type, *content_encoding, *authorization, *xff, *origin,
               *acr_headers, *expect, *last_event_id, *accept_encoding, *if_none_match;
    sl_buf_t body;
    uint64_t body_seen;           /* body bytes received, kept or not (max_request_bytes, min_body_rate) */
    int route;                    /* http_route_of(), from the headers */
    int keeps_body;               /* an ingestion POST: its body is buffered; any other is drained unkept */
    int key_checked;              /* its Basic write key was found at headers-complete */
    /* ingestion in flight */
    sl_store_batch_t batch;
    struct ip_conns_s *body_ipc;  /* the client address whose share the body counts in (http.c) */
    size_t stored_bytes;          /* printed messages so far (STORED_BYTES_PER_REQUEST) */
    size_t n_in_request;          /* messages the request holds */
    int over_stored;
    sl_buf_t errors;              /* JSON array members for rejected messages */
    sl_buf_t warnings;            /* JSON array members for stored messages with a remark */
    size_t n_rejected;
    int is_pixel;
    sl_ipnet_t client_ip;         /* routes.c client_ip() */
    int has_client_ip;
    /* a read waiting for the stage (http_after_stage) */
    void *read;                   /* profiles.c: what to read */
    sl_stage_waiter_t waiter;
    void (*after_stage)(conn_t *c, int reached);
    int waiting;
} req_t;

struct conn_s {
    uv_tcp_t tcp;
    llhttp_t parser;
    sl_server_t *srv;
    conn_t *prev, *next;
    req_t *req;
    char *pending;                /* unparsed bytes (heap, or the server's read buffer) */
    size_t pending_len, pending_off;
    int pending_borrowed;
    sl_buf_t hname, hval, url;
    size_t header_bytes;
    int n_headers;
    int err_status;               /* set by a parser callback that refused input */
    const char *err_msg;
    sl_ipnet_t peer;
    struct ip_conns_s *ipc;       /* connections held by this peer address (limits.max_connections_per_ip) */
    int64_t last_active_ms;
    int64_t msg_start_ms;         /* the request's first byte; before any, the accept */
    int64_t body_start_ms;        /* its headers were complete (limits.min_body_rate) */
    unsigned busy : 1;            /* waiting for a commit */
    unsigned in_message : 1;      /* the parser is inside a request */
    unsigned headers_done : 1;    /* ... and past its headers */
    unsigned had_request : 1;     /* some request's headers were complete (limits.header_timeout) */
    unsigned in_reserve : 1;      /* accepted past limits.max_connections (RESERVE_CONNS) */
    unsigned closing : 1;
    unsigned close_after_write : 1;
    unsigned keep_alive : 1;
    unsigned in_feed : 1;
    unsigned reading : 1;
    unsigned feed_mode : 2;       /* FEED_POLL or FEED_STREAM (feed.c) */
    unsigned await_line : 1;      /* another loop's: its next request line is not all in yet */
    conn_t *feed_prev, *feed_next;
    uint64_t feed_after;          /* the last trigger sequence the client has */
    size_t feed_limit;
    struct sl_feed_filter_s *feed_filter; /* ?rule=, ?type= (in the request's arena); NULL: none */
    int64_t feed_deadline_ms, feed_last_write_ms;
    /* fuzzing (http_fake_conn): answers go here instead of a socket */
    void (*write_hook)(conn_t *c, const char *p, size_t n, void *arg);
    void *hook_arg;
};

struct sl_server_s {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t sweep;
    uv_timer_t grace;
    const sl_config_t *cfg;
    sl_store_t *store;
    sl_stage_t *stage;            /* NULL: an edge, no derived state */
    struct sl_stitch_s *stitch;   /* NULL: no profiles */
    struct sl_fields_s *fields;   /* NULL: no order ledger route */
    struct sl_aud_s *aud;         /* NULL: no audience routes */
    struct sl_trig_s *trig;       /* NULL: no trigger rules (GET /v1/rules) */
    struct sl_feed_s *feed;       /* NULL: no trigger feed */
    struct {
        void (*render)(void *arg, sl_buf_t *out);
        void *arg;
    } metrics[12];                /* other components' /metrics lines */
    size_t n_metrics;
    sl_handoff_t debug_ready;     /* stage -> loop: stitched events a debug viewer wants */
    _Atomic size_t debug_queued;  /* bytes in debug_ready: the stage adds, the loop takes off */
    _Atomic int debug_viewers;    /* read by the stage thread */
    int debug_open;               /* loop thread: debug_ready is open */
    uv_async_t feed_async;        /* the writer made more triggers durable */
    uv_timer_t feed_timer;        /* long-poll deadlines, stream keep-alives */
    conn_t *feed_waiters;         /* long polls and streams */
    conn_t *debug_streams;        /* /debug/stream readers */
    struct static_file_s *files;  /* built-in files with their gzip copy and ETag */
    rl_table_t rl;                /* rate limiter (ratelimit.c), allocated on first use */
    rl_table_t auth_rl;           /* failed admin-token attempts per address */
    uint64_t rate_limited, auth_limited;
    struct ip_conns_s **ipc;      /* connections per peer address: IPC_BUCKETS chains */
    uint64_t buffered_body_bytes; /* request bodies held, all connections (limits.max_buffered_bytes) */
    uint64_t unchecked_body_bytes; /* ... of them, of requests whose key was not checked from the headers */
    uint64_t buffered_peak;       /* highest since the last malloc_trim */
    uint64_t body_refused;        /* requests answered 503 for limits.max_buffered_bytes */
    size_t admin_reads;           /* profile reads queued or running on the threadpool (profiles.c) */
    struct {                      /* refused-request log lines (http_log_refused) */
        int64_t sec;
        unsigned lines;
        uint64_t suppressed;
    } refusal_log;
    size_t n_files;
    int feed_started;
    sl_geo_t *geo;
    sl_ipnet_t *trusted;
    size_t n_trusted;
    llhttp_settings_t settings;
    conn_t *conns;
    size_t n_conns;
    int port;
    int stopping;
    int store_draining;
    int handles_open;
    void (*stop_cb)(void *);
    void *stop_arg;
    char *scratch;                /* for printing one message: max_message_bytes + 4 KB */
    size_t scratch_len;
    sl_arena_t json_arena;        /* parse trees of the request being handled */
    char date[40];
    int64_t date_sec;
    uint64_t requests[N_ROUTES][N_STATUS];
    uint64_t rejected_messages;
    uint64_t accepted_connections, refused_connections, refused_per_ip;
    /* more loops (ingest_loops > 1, loops.c) */
    sl_server_t *main;            /* another loop's server: the main one, which takes the routes this
                                   * one does not serve (http_served_here()) */
    struct sl_store_port_s *sport; /* that loop's way to the log's writer */
    sl_handoff_t moved;           /* the main server: connections other loops hand over */
    int moved_open;
    int port_closing;
    uint64_t handed_over;         /* another loop's: connections handed to the main loop */
    char readbuf[65536];
};

/* A connection another loop hands to the main one, with the bytes it read
 * and did not parse. */
typedef struct http_moved_s {
    struct http_moved_s *next;
    uv_os_sock_t fd;
    size_t len;
    char bytes[];
} http_moved_t;

/* http.c: a server on another loop than the main one's (loops.c), listening
 * on port beside it. */
int http_server_start_beside(sl_server_t **out, uv_loop_t *loop, sl_server_t *main, int port);
/* 1 when a server on another loop answers route itself. */
int http_served_here(int route);

/* http.c */
/* Sends the answer to c's current request and finishes it. extra_headers is
 * either NULL or complete "Name: value\r\n" lines. */
void http_respond(conn_t *c, int status, const char *content_type, const char *extra_headers,
                  const char *body, size_t body_len);
void http_respond_error(conn_t *c, int status, const char *msg);
const char *http_status_text(int status);
/* Appends the CORS headers for the request's Origin, when it is allowed.
 * Returns 0 when allowed (or no Origin), -1 when the origin is refused. */
int http_cors_headers(const sl_server_t *srv, const req_t *r, sl_buf_t *out);
/* 1 when the request has no Origin or cors_origins allows it. */
int http_origin_allowed(const sl_server_t *srv, const req_t *r);
void http_req_free(req_t *r);
/* 1 when the request carries "Authorization: Bearer <admin_token>" (constant-time compare). */
int http_admin_ok(const sl_server_t *srv, const req_t *r);
/* The admin check with failed attempts limited per client address
 * (ADMIN_FAILURES_PER_MIN): 1 when the token is right; 0 when it is not (the
 * caller answers 401); -1 after answering 429 because this address failed too
 * often (the token is not even compared then). */
/* 1 when the admin token is there; else 0 after answering 401 (or 429). */
int http_admin_required(conn_t *c);
int http_admin_gate(conn_t *c);
/* The client address: the socket's, or X-Forwarded-For from a trusted proxy;
 * worked out once per request. */
const sl_ipnet_t *http_client_ip(conn_t *c);
/* 1 for the admin routes (profiles, the trigger feed, /debug/stream,
 * /metrics): they never send CORS headers. */
int http_admin_path(const char *path);
/* An INFO line about a refused request, at most REFUSAL_LOG_PER_S a second;
 * the rest are counted and reported in one line. */
void http_log_refused(sl_server_t *srv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends the connection and body-buffer metrics (Prometheus text). */
void http_metrics(const sl_server_t *srv, sl_buf_t *b);
/* The value of name=... in the query string (the last non-empty one when repeated),
 * percent-decoded into the request's arena and NUL-terminated. Returns its
 * length, SL_ENOTFOUND when absent, SL_EINVAL for a bad %-escape, SL_ENOMEM. */
long http_query_param(req_t *r, const char *name, char **out);

/* Queues a copy of p[0..n) on c as is (a stream's next bytes). */
void http_send(conn_t *c, const char *p, size_t n);
void http_close(conn_t *c);

/* A connection without a socket, for the fuzz target of the HTTP path:
 * http_fake_input() parses bytes as if read from the network, answers go to
 * hook. Close it with http_close(); it is freed once the loop has run. */
conn_t *http_fake_conn(sl_server_t *srv, void (*hook)(conn_t *, const char *, size_t, void *), void *arg);
void http_fake_input(conn_t *c, const char *p, size_t n);

/* feed.c */
enum { FEED_NONE, FEED_POLL, FEED_STREAM, FEED_DEBUG };
void http_handle_triggers(conn_t *c, const char *rest);
/* GET /v1/rules (admin): the trigger rules as compiled, their counters and
 * pending triggers (sl_trig_rules_json). */
void http_handle_rules(conn_t *c);
/* One of the server's handles closed (loop thread): the last one ends the stop. */
void http_handle_closed(sl_server_t *srv);
int http_feed_start(sl_server_t *srv);     /* with srv->feed set */
void http_feed_stop(sl_server_t *srv);     /* answers polls, ends streams, closes its handles */
void http_feed_conn_closed(conn_t *c);
/* GET /debug/stream: stored events as SSE ("event" events). */
void http_handle_debug_stream(conn_t *c);
/* The debug view hears of each event once the stage stitched it: a listener
 * of the stitcher (stage thread) queues it for the loop, bounded; a slow or
 * absent viewer costs nothing. */
int http_feed_debug_start(sl_server_t *srv);   /* with srv->stitch set, before the stage starts */
void http_feed_debug_stop(sl_server_t *srv);     /* drops what is queued, closes its handle */

/* ratelimit.c */
/* The bucket of ip in t (rate tokens/s, up to burst): 1 when it holds a
 * token, and then takes cost (0 or 1) of it; else 0 and the seconds until it
 * holds one. Allocates t on first use (n_slots, a power of two); 1 when it
 * cannot (errs on the side of serving). */
int http_rl_bucket(rl_table_t *t, size_t n_slots, const sl_ipnet_t *ip, double rate, double burst, int64_t now_ms,
              int cost, int *retry_after_s);
void http_rl_table_free(rl_table_t *t);
/* The key of ip: IPv4 as is, IPv6 by its /64 (one subscriber's prefix). */
uint64_t http_rl_key(const sl_ipnet_t *ip);
/* 1 when ip may send a request now (limits.rate_per_ip); else 0 and the seconds to wait. */
int http_rl_allow(sl_server_t *srv, const sl_ipnet_t *ip, int64_t now_ms, int *retry_after_s);

/* static.c */
int http_static_init(sl_server_t *srv);
void http_static_free(sl_server_t *srv);
/* Serves path when it is a built-in file that is enabled; 0 when it did, -1 when not found. */
int http_handle_static(conn_t *c, const char *path);

/* routes.c */
/* The route of a request from its method and path: the one classification,
 * made once its headers are in (http.c: whether its body is kept, the early
 * key check) and then followed by http_route_request(). ROUTE_OTHER for a
 * path no route names here (a built-in file, or 404). */
int http_route_of(const sl_server_t *srv, int method, const char *path);
/* Answers c's request, routed by c->req->route. */
void http_route_request(conn_t *c);
/* For a request to an ingestion route: whether its "Authorization: Basic"
 * key is known, checked from its headers before the body is read. 1 when it
 * is; 0 when there is no Basic header (the key may be in the body); -1 when
 * it is not, with *why set (the 401's text). */
int http_route_basic_auth(conn_t *c, const char **why);
void http_handle_profiles(conn_t *c, const char *rest);
/* /v1/audiences (profiles.c); rest: what follows /v1/audiences */
void http_handle_audiences(conn_t *c, const char *rest);
/* /v1/computed[/{field}/distribution] (profiles.c); rest: what follows /v1/computed */
void http_handle_computed(conn_t *c, const char *rest);
/* profiles.c: r's connection closed while r was busy (loop thread, before
 * r->conn is cleared): a profile read still queued on the threadpool is
 * cancelled. Its completion frees r either way. */
void http_read_cancel(req_t *r);
/* GET /v1/admin/set-aside (profiles.c). */
void http_handle_set_aside(conn_t *c, int replay_route);
/* Read-your-writes: then(c, reached) once the stage has applied (and
 * flushed) the log up to ?position= (default: the log's durable end now),
 * or after ?wait_ms= (default 2000, 0..10000) with reached 0; at once when
 * it already has. Answers 400 itself for a bad parameter. */
void http_after_stage(conn_t *c, void (*then)(conn_t *c, int reached));
/* s, or the query parameter name, as a whole number within [min, max]:
 * http_parse_num 0 or -1; http_query_num 1 when absent, 0 when set, -1
 * after answering 400 ("<name> must be a whole number from <min> to <max>"). */
int http_parse_num(const char *s, unsigned long long min, unsigned long long max, unsigned long long *out);
int http_query_num(conn_t *c, const char *name, unsigned long long min, unsigned long long max,
                   unsigned long long *out);

#endif
