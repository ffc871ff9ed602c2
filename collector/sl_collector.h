/* sl_collector.h - the HTTP front of sillage: the server (libuv + llhttp), the
 * Segment-compatible ingestion API, enrichment, and the operational routes.
 *
 * The server runs on one libuv loop thread. A hit is parsed, validated,
 * enriched and serialised on that thread, then handed to the store's writer
 * (sl_store_submit); the answer goes out only when the store reports the
 * commit durable.
 *
 * The pure functions further down (validation, enrichment, parsing helpers)
 * are part of the contract so that unit tests and fuzz targets can drive them
 * without a socket.
 */
#ifndef SL_COLLECTOR_H
#define SL_COLLECTOR_H

#include "sl_common.h"
#include "sl_config.h"
#include "sl_stage.h"
#include "sl_store.h"

#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sl_server_s sl_server_t;

/* Creates the server on loop with cfg (borrowed; must outlive the server) and
 * store, binds cfg->listen and starts accepting. Opens cfg->geoip_db when
 * set. Returns 0 or an error; the reason is logged. On error the caller
 * still runs the loop once so that handles already opened can close. */
int sl_http_server_start(sl_server_t **out, uv_loop_t *loop, const sl_config_t *cfg, sl_store_t *store);

/* Role all/core: profiles are read from stage's derived environment with
 * stitch, the trigger feed (GET /v1/triggers...) is feed (may be NULL), the
 * rules (GET /v1/rules) are trig's (may be NULL), and /debug/stream hears
 * from stitch. Subscribes to feed and stitch: call before the stage starts. */
struct sl_stitch_s;
struct sl_trig_s;
struct sl_feed_s;
int sl_http_server_set_stage(sl_server_t *srv, sl_stage_t *stage, struct sl_stitch_s *stitch,
                             struct sl_trig_s *trig, struct sl_feed_s *feed);
/* The order ledger (GET /v1/profiles/{kind}/{id}/orders) is fields's
 * (NULL: the route answers 404); before the stage starts. */
struct sl_fields_s;
void sl_http_server_set_fields(sl_server_t *srv, struct sl_fields_s *fields);
/* The audiences GET /v1/audiences lists (audiences/sl_audiences.h); before serving. */
struct sl_aud_s;
void sl_http_server_set_audiences(sl_server_t *srv, struct sl_aud_s *aud);

/* Graceful stop: no new connections, in-flight requests are answered after
 * their commit, idle connections close, the store is drained, the stage
 * applies what is durable (5 s at most, then it resumes at the next start);
 * then cb(arg) runs on the loop thread and the server can be freed. Forced
 * after grace_ms. */
void sl_http_server_stop(sl_server_t *srv, int64_t grace_ms, void (*cb)(void *), void *arg);
void sl_http_server_free(sl_server_t *srv);

/* /metrics also shows what render(arg, out) appends (Prometheus text; the
 * sl_metric_* helpers of sl_common.h): other components' counters. At most 8. */
int sl_http_server_add_metrics(sl_server_t *srv, void (*render)(void *arg, sl_buf_t *out), void *arg);

/* The bound port (useful with port 0). */
int sl_http_server_port(const sl_server_t *srv);

/* More loops beside srv's (ingest_loops > 1, docs/SCALING.md): n threads,
 * each with a server of its own listening on srv's address (SO_REUSEPORT)
 * and a port to the log's writer. They answer ingestion, the pixel,
 * preflights and static files; a connection whose next request needs the
 * derived state (profiles, the feed, /healthz, /metrics, /debug) goes to
 * srv's loop with the bytes it has not parsed. srv must be started with
 * cfg->ingest_loops > 1 (its listener then shares the address). On srv's
 * loop thread. Returns 0 or the first error; *out is set either way (stop
 * and free it). */
typedef struct sl_http_loops_s sl_http_loops_t;
int sl_http_loops_start(sl_http_loops_t **out, sl_server_t *srv, int n);
/* Stops them -- each answers its requests in flight (at most grace_ms),
 * waits for its last commit and closes its port -- then cb(arg) on srv's
 * loop: stop srv after that (it drains the store). */
void sl_http_loops_stop(sl_http_loops_t *loops, int64_t grace_ms, void (*cb)(void *), void *arg);
/* Joins the threads (after the stop's cb). */
void sl_http_loops_free(sl_http_loops_t *loops);

/* ---- message validation and normalisation ---------------------------------- */

enum sl_msg_type {
    SL_MSG_TRACK, SL_MSG_PAGE, SL_MSG_SCREEN, SL_MSG_IDENTIFY, SL_MSG_ALIAS, SL_MSG_GROUP,
    SL_MSG_NTYPES
};
/* "track" -> SL_MSG_TRACK ...; -1 when unknown. */
int sl_msg_type_from_name(const char *name, size_t len);
const char *sl_msg_type_name(int type);

/* What the server knows about one request, applied to each of its messages. */
typedef struct sl_ingest_ctx_s {
    int64_t received_ms;
    const char *ip;              /* as stored (anonymised when configured); NULL = none */
    const cJSON *location;       /* GeoIP result object, or NULL */
    const cJSON *batch_context;  /* a batch's top-level context, or NULL */
    const char *batch_sent_at;   /* a batch's top-level sentAt, or NULL */
    const char *source;          /* the source's name, stored as context.sillage.source; NULL = none */
    size_t max_print;            /* what a message may print to (0: no bound): one the batch's context
                                    cannot fit into is refused with SL_MSG_TOO_BIG before the merge */
} sl_ingest_ctx_t;

#define SL_MSG_TOO_BIG                                                                                           \
    "message exceeds limits.max_message_bytes once normalised (the batch's context and the server's fields " \
    "included)"

/* Validates msg in place and turns it into the stored form: type (forced to
 * type when type >= 0, else read from the message), ids as strings, messageId
 * assigned when missing, writeKey removed, receivedAt, skew-corrected
 * timestamp (originalTimestamp keeps the client's), context.ip and
 * context.location. Returns NULL on success, or a static sentence saying what
 * is wrong (the message must then be dropped). */
const char *sl_msg_normalize(cJSON *msg, int type, const sl_ingest_ctx_t *ctx);
/* A corrected timestamp later than receivedAt by more than this becomes
 * receivedAt; the value it replaced goes to context.sillage.clampedTimestamp. */
#define SL_MSG_FUTURE_TOLERANCE_MS 60000

/* The first member name that some object of x (x included, at any depth,
 * but not inside skip, which may be NULL) holds twice, or NULL. Parsers
 * differ on which copy of a repeated name they keep, so such a message is
 * refused rather than stored as sent. Cost: O(n log n) in the members of
 * each object. */
const char *sl_json_dup_member(const cJSON *x, const cJSON *skip);

/* timestamp corrected for client clock skew: received - (sent_at - timestamp). */
int64_t sl_skew_correct(int64_t received_ms, int64_t sent_at_ms, int64_t timestamp_ms);

/* One pass over a JSON text before it is parsed: nesting depth at most
 * max_depth and valid UTF-8 everywhere. Returns NULL or why the text is
 * refused. */
const char *sl_json_prescan(const char *p, size_t n, size_t max_depth);

/* Base64 (standard or URL-safe alphabet, padding optional) into out, which
 * has room for at least n*3/4+3 bytes. Returns the decoded length or -1. */
long sl_base64_decode(const char *in, size_t n, unsigned char *out);

/* In-place %XX decoding ('+' is kept: base64 uses it). Returns new length or
 * -1 on a bad escape. */
long sl_percent_decode(char *s, size_t n);

/* Inflates a gzip or zlib body into out (malloc'd) without passing max_bytes.
 * Returns 0, SL_ETOOBIG past the bound, or SL_EINVAL for a corrupt stream. */
int sl_gunzip(const char *in, size_t n, size_t max_bytes, char **out, size_t *out_len);

/* ---- addresses ------------------------------------------------------------- */

typedef struct sl_ipnet_s {
    int family;                  /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int prefix;                  /* bits */
} sl_ipnet_t;

/* Parses "1.2.3.4", "::1", "10.0.0.0/8", "fd00::/8". IPv4-mapped IPv6 becomes
 * IPv4. Returns 0 or SL_EINVAL. */
int sl_ipnet_parse(const char *s, size_t n, sl_ipnet_t *out);
int sl_ipnet_contains(const sl_ipnet_t *net, const sl_ipnet_t *ip);

/* Zeroes the last IPv4 octet or everything after the first 48 IPv6 bits. */
void sl_ip_anonymize(sl_ipnet_t *ip);
/* Text form of ip->addr into out[46]. */
void sl_ip_format(const sl_ipnet_t *ip, char out[46]);

/* The client address: peer, or when the peer is a trusted proxy, the
 * right-most X-Forwarded-For entry that is not itself trusted. */
void sl_client_ip(const sl_ipnet_t *peer, const char *xff, size_t xff_len,
                  const sl_ipnet_t *trusted, size_t n_trusted, sl_ipnet_t *out);

/* ---- GeoIP ----------------------------------------------------------------- */
typedef struct sl_geo_s sl_geo_t;
/* Opens an MMDB file (MaxMind City/Country schema or ip-location-db's
 * country_code schema). Returns 0 or SL_EINVAL with the reason logged. */
int sl_geo_open(sl_geo_t **out, const char *path);
/* A new cJSON object {country, country_name, region, region_code, city,
 * postal_code, latitude, longitude, timezone} with the members the database
 * has, or NULL when the address is not in it. Caller deletes. */
cJSON *sl_geo_lookup(sl_geo_t *g, const sl_ipnet_t *ip);
void sl_geo_close(sl_geo_t *g);

#endif
