/* sl_config.h - the configuration file (JSON, see DESIGN.md) and the embedded
 * demo default. A loaded config owns all its strings; sl_config_free()
 * releases them.
 */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define SL_MAX_INGEST_LOOPS 16

typedef struct sl_source_s {
    char *name;
    char *write_key;
    int trusted;           /* a server-side key: may merge two identified persons (default 0:
                            * a browser key, which anyone can read from the page) */
    int historical;        /* an import of past data: stored and stitched, no trigger fired */
    int64_t retention_ms;  /* events older than this (by their timestamp) are pruned; 0 = kept */
} sl_source_t;

enum sl_durability { SL_DURABLE_SYNC = 0, SL_DURABLE_OS = 1 };
enum sl_role { SL_ROLE_ALL = 0, SL_ROLE_EDGE, SL_ROLE_CORE };

#define SL_CONSENT_MAX_NAME 64 /* a consent category's name, in bytes */

/* Sections a component parses itself (sl_config_register): at most this many. */
#define SL_CONFIG_MAX_SECTIONS 8

typedef struct sl_webhook_s {
    char *url;
    char *secret;
    char **rules;          /* NULL/0 = every rule */
    size_t n_rules;
    int64_t expire_ms;     /* give up after this long; default 24h */
    char *ca_file;         /* PEM bundle to verify an https URL with; NULL = the system's */
    int profile_erased;    /* erasures (feed entries of no rule) are sent too (default 1) */
} sl_webhook_t;

#define SL_PRESSURE_MAX_TIERS 16

typedef struct sl_config_s {
    int is_demo;                 /* no file: the embedded demo default */
    char *listen;                /* "HOST:PORT" */
    char *data_dir;
    uint64_t map_size_bytes;     /* initial LMDB map size */
    uint64_t map_size_max_bytes; /* the map grows on MDB_MAP_FULL up to this */
    int durability;              /* enum sl_durability */
    char *geoip_db;              /* NULL = no GeoIP */
    int ip_anonymize;
    int ingest_loops;            /* loops (threads) accepting connections on listen, SO_REUSEPORT: 1 */
    int demo_shop;               /* serve /demo/ (default: only in the demo) */
    int debug_page;              /* serve /debug (default: only in the demo) */
    int metrics_auth;            /* /metrics needs the admin token (default false) */
    int role;                    /* enum sl_role */
    struct {
        char *url;               /* "nats://127.0.0.1:4222" (several: comma-separated) */
        char *stream;            /* "SILLAGE" */
        char *events_subject;    /* "sillage.events" */
        char *triggers_subject;  /* "sillage.triggers" */
        char *credentials;       /* .creds file, optional */
        char *consumer;          /* durable consumer of the core: "sillage-core" */
        int replicas;            /* stream replicas when sillage creates it: 1 */
        int64_t duplicate_window_ms; /* the stream's Nats-Msg-Id window: 1h */
        int64_t edge_keep_ms;    /* an edge keeps a forwarded event at least this long after
                                  * receiving it, whatever its retention: 1h */
    } nats;
    char **trusted_proxies;
    size_t n_trusted_proxies;
    char **cors_origins;         /* NULL/0 = any origin */
    size_t n_cors_origins;
    sl_source_t *sources;
    size_t n_sources;
    char *admin_token;
    char **identity_traits;      /* default {"email"} */
    size_t n_identity_traits;
    char **junk_ids;             /* values that are never identifiers */
    size_t n_junk_ids;
    struct {
        uint64_t max_message_bytes;   /* 32768 */
        uint64_t max_request_bytes;   /* 512000 */
        uint64_t max_batch_messages;  /* 2500 */
        uint64_t max_header_bytes;    /* 16384 */
        uint64_t max_connections;     /* 16384 */
        uint64_t max_connections_per_ip; /* 1280 per peer address (IPv6: per /64); not for trusted_proxies */
        uint64_t max_buffered_bytes;  /* 64 MB of request bodies held, all connections together */
        uint64_t max_queue_messages;  /* 65536 pending in the commit queue */
        uint64_t max_json_depth;      /* 32 */
        uint64_t max_traits_per_person; /* 256 traits kept on a profile */
        uint64_t max_traits_bytes;    /* 32768: a profile's traits document as stored */
        uint64_t max_dedupe_ids;      /* 4,000,000 message ids held for dedupe (at most ~50 MB per million) */
        uint64_t rate_per_ip;         /* requests/s per client IP (token bucket); 0 = no limit */
        uint64_t rate_burst;          /* bucket size; default 2 x rate_per_ip */
        int64_t idle_timeout_ms;      /* keep-alive idle: 60s */
        int64_t request_timeout_ms;   /* a started request must finish: 30s */
        int64_t header_timeout_ms;    /* a connection's first request, or a started one, must have
                                       * its headers in: 10s (1s..1h) */
        uint64_t min_body_rate;       /* bytes/s a body must average after its first 5 s: 4096;
                                       * 0 = no minimum (0..1e9) */
        uint64_t max_stage_lag;       /* events the stage may lag before the loop thread leaves it a
                                       * quarter of the core: 100,000; 0 = never (0..1e9) */
        int64_t stage_commit_interval_ms; /* while no one waits for them, derived commits are at least
                                           * this far apart: 50 ms; 0 = each as soon as applied (0..10 s) */
    } limits;
    int64_t dedupe_window_ms;    /* 24h */
    void *sections[SL_CONFIG_MAX_SECTIONS]; /* the registered sections' parsed forms (sl_config_section) */
    int pressure_max_per_profile_per_day; /* 0 = no cap */
    struct sl_pressure_tier_s {   /* pressure.tiers: the first whose audience holds the person replaces the cap */
        char *audience;
        int per_day, per_week;    /* one of them set (the other 0) */
    } *pressure_tiers;
    size_t n_pressure_tiers;      /* at most SL_PRESSURE_MAX_TIERS */
    int pressure_local_days;      /* pressure.timezone: days in the top-level timezone (else UTC) */
    int64_t trigger_retention_ms; /* feed entries older than this are pruned; 30d */
    char *timezone;                 /* "Europe/Paris": calendar days of computed windows (NULL: UTC); read at start */
    int64_t anonymous_retention_ms; /* events of persons never identified older than this are pruned; 0 = kept */
    char *unsubscribe_event;     /* a track of this name sets the person's suppression flag: "Unsubscribed" */
    char *subscribe_event;       /* ... and this one clears it: "Subscribed" */
    sl_webhook_t *webhooks;
    size_t n_webhooks;
} sl_config_t;

/* ---- sections of their own ----------------------------------------------------
 * A component parses its own section of the file (nginx's modules declare
 * their directives): it registers the section once, before the first
 * sl_config_parse() -- the command line at start, tests and fuzzers in their
 * set-up -- and reads its parsed form back with sl_config_section(). A
 * top-level key that neither the core nor a registered section knows is an
 * unknown key. Registration is not thread-safe: do it before any thread runs. */
typedef struct cJSON sl_cfg_json_t;
typedef struct sl_config_section_s {
    const char *key; /* the top-level key, e.g. "triggers" */
    /* Parses json (the section's value; NULL when the file has none) into
     * *out (may stay NULL for an absent section). c is the config being
     * built: every core key is parsed, earlier sections too. An error names
     * the key path in err[errlen] ("triggers[3].where: ..."). Returns 0,
     * SL_EINVAL or SL_ENOMEM; on error *out is freed by the parser. */
    int (*parse)(const sl_cfg_json_t *json, const struct sl_config_s *c, void **out, char *err, size_t errlen);
    void (*free)(void *parsed);
    /* 1 when the parsed section defines something called name (a trigger
     * rule; later an audience): webhooks[].rules names them, and names are
     * unique across sections. May be NULL. */
    int (*defines)(const void *parsed, const char *name);
} sl_config_section_t;

/* Registers s (which must outlive every config). Returns its index, the same
 * one when s is registered again, or SL_EINVAL when SL_CONFIG_MAX_SECTIONS
 * are taken. */
int sl_config_register(const sl_config_section_t *s);
/* 1 when a section of c parsed so far defines name (a section's parse asks
 * it to keep names unique across sections: those registered before it). */
int sl_config_defined(const struct sl_config_s *c, const char *name);
/* The parsed form of section index (sl_config_register's answer), or NULL. */
static inline void *sl_config_section(const struct sl_config_s *c, int index)
{
    return index >= 0 && index < SL_CONFIG_MAX_SECTIONS ? c->sections[index] : NULL;
}

/* ---- the readers sections use ---------------------------------------------------
 * Each reads obj.key (left alone when absent unless required), checks its
 * type and bound, and on error writes a sentence naming "path.key" into the
 * context and returns SL_EINVAL (SL_ENOMEM when out of memory). path is
 * where obj sits ("triggers[2]"; "" at the top). */
typedef struct sl_cfg_ctx_s {
    char *err;
    size_t errlen;
} sl_cfg_ctx_t;
int sl_cfg_error(sl_cfg_ctx_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3))); /* SL_EINVAL */
/* obj is an object whose keys are all in the NULL-terminated known list. */
int sl_cfg_check_keys(sl_cfg_ctx_t *x, const sl_cfg_json_t *obj, const char *path, const char *const *known);
/* A non-empty string, strdup'ed into *out (the old value freed). */
int sl_cfg_str(sl_cfg_ctx_t *x, const sl_cfg_json_t *obj, const char *key, const char *path, char **out, int required);
int sl_cfg_bool(sl_cfg_ctx_t *x, const sl_cfg_json_t *obj, const char *key, const char *path, int *out);
/* A duration string ("30s", "15m", "1h", "7d"). */
int sl_cfg_duration(sl_cfg_ctx_t *x, const sl_cfg_json_t *obj, const char *key, const char *path, int64_t *out);
/* An array of strings (the old array freed). */
int sl_cfg_strv(sl_cfg_ctx_t *x, const sl_cfg_json_t *obj, const char *key, const char *path, char ***out, size_t *n);
/* A whole number from lo to hi; note ends the error (" (0 = no cap)"). */
int sl_cfg_int(sl_cfg_ctx_t *x, const sl_cfg_json_t *obj, const char *key, const char *path, int lo, int hi,
               const char *note, int *out);
char **sl_cfg_strv_dup(const char *const *v, size_t n);
void sl_cfg_strv_free(char **v, size_t n);

/* 1 when tz names a time zone this machine knows ("UTC", or a file under
 * /usr/share/zoneinfo: "Europe/Paris"). */
int sl_timezone_ok(const char *tz);
/* Makes tz (NULL: UTC) the process's local time (TZ, tzset): calendar days
 * of computed windows. Once, before any thread. */
void sl_timezone_apply(const char *tz);
/* Counts sl_timezone_apply() calls: what a reader of local days caches
 * goes with it. */
extern _Atomic unsigned sl_timezone_gen;

/* Fills *cfg with the demo default: 127.0.0.1:8080, ./sillage-data, write key
 * "demo", admin token "demo-admin", the demo trigger rules. */
int sl_config_demo(sl_config_t *cfg);

/* Loads and validates FILE. On error returns SL_EINVAL, writes a sentence
 * naming the first problem (file, key, why) into err[errlen], and leaves *cfg
 * zeroed (nothing to free). */
int sl_config_load(sl_config_t *cfg, const char *path, char *err, size_t errlen);

/* Same, from a JSON text (used by the loader and the tests). */
int sl_config_parse(sl_config_t *cfg, const char *json, size_t len, char *err, size_t errlen);

/* Refuses to serve demo secrets beyond loopback. Returns 0 or SL_EINVAL with
 * the reason in err. */
int sl_config_check_exposure(const sl_config_t *cfg, char *err, size_t errlen);

/* Refuses weak admin secrets (not for the demo): an admin_token shorter than
 * SL_ADMIN_TOKEN_MIN_CHARS, or equal to a source's write key (write keys are
 * public). Returns 0 or SL_EINVAL with the reason in err; the reason names
 * the keys, never their values. */
#define SL_ADMIN_TOKEN_MIN_CHARS 16
int sl_config_check_secrets(const sl_config_t *cfg, char *err, size_t errlen);

/* 1, with a sentence for a WARN in warn, when the config file at path holds
 * secrets and "others" may read it (mode & 0004); else 0 (also for the demo,
 * or when path cannot be stat'ed). A warning, not a refusal: the operator
 * may have reasons (a container with one user). */
int sl_config_check_file_mode(const sl_config_t *cfg, const char *path, char *warn, size_t warnlen);

/* Splits "HOST:PORT" / "[v6]:PORT". Returns 0 or SL_EINVAL. */
int sl_config_split_listen(const char *listen, char *host, size_t hostlen, int *port);

void sl_config_free(sl_config_t *cfg);

/* The source named name in cfg, or NULL. */
const sl_source_t *sl_config_source(const sl_config_t *cfg, const char *name);

/* Retention (docs/PRIVACY.md): how often a pass over the log begins — a
 * 60th of the shortest retention configured, within 1 s and 1 h, so an
 * event outlives its retention by at most that; 0 when none is configured. */
int64_t sl_config_retention_pass_ms(const sl_config_t *cfg);
/* When the next pruning run goes, after one that failed, left more to read
 * (at once: each run is short), or reached what there is (look again for new
 * events, and a due pass, after the pass interval, at most 5 s). */
int64_t sl_config_retention_wait_ms(const sl_config_t *cfg, int failed, int more);

#endif
