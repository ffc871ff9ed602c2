/* config.c - see sl_config.h. Every key is checked against the list of known
 * keys of its object, so a typo is an error that names it. */
#define _GNU_SOURCE
#include "sl_config.h"
#include "sl_common.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CONFIG_BYTES (4u << 20)

static const char *default_junk[] = {
    "", "null", "undefined", "nil", "none", "anonymous", "anon", "guest",
    "unknown", "0", "-1", "false", "true", "nan", "[object object]",
    "00000000-0000-0000-0000-000000000000", "n/a", "na", "test", "user",
    "email", "noreply@example.com", "\"\"", "''"
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

char **sl_cfg_strv_dup(const char *const *v, size_t n)
{
    char **out = calloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; out && i < n; i++) out[i] = strdup(v[i]);
    return out;
}

void sl_cfg_strv_free(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) free(v[i]);
    free(v);
}

static void set_defaults(sl_config_t *c)
{
    memset(c, 0, sizeof(*c));
    c->listen = strdup("127.0.0.1:8080");
    c->data_dir = strdup("./sillage-data");
    c->map_size_bytes = 1ULL << 30;
    c->map_size_max_bytes = 64ULL << 30;
    c->durability = SL_DURABLE_SYNC;
    c->ip_anonymize = 1;
    static const char *email[] = {"email"};
    c->identity_traits = sl_cfg_strv_dup(email, 1);
    c->n_identity_traits = 1;
    c->junk_ids = sl_cfg_strv_dup(default_junk, sizeof(default_junk) / sizeof(*default_junk));
    c->n_junk_ids = sizeof(default_junk) / sizeof(*default_junk);
    c->limits.max_message_bytes = 32768;
    c->limits.max_request_bytes = 512000;
    c->limits.max_batch_messages = 2500;
    c->limits.max_header_bytes = 16384;
    c->limits.max_connections = 16384;
    c->limits.max_connections_per_ip = 1280;
    c->limits.max_buffered_bytes = 64u << 20;
    c->limits.max_queue_messages = 65536;
    c->limits.max_json_depth = 32;
    c->limits.max_traits_per_person = 256;
    c->limits.max_traits_bytes = 32768;
    c->limits.max_dedupe_ids = 4000000;
    c->limits.idle_timeout_ms = 60000;
    c->limits.request_timeout_ms = 30000;
    c->limits.header_timeout_ms = 10000;
    c->limits.min_body_rate = 4096;
    c->limits.max_stage_lag = 100000;
    c->limits.stage_commit_interval_ms = 50;
    c->ingest_loops = 1;
    c->dedupe_window_ms = 86400000;
    c->trigger_retention_ms = 30LL * 86400000;
    c->unsubscribe_event = strdup("Unsubscribed");
    c->subscribe_event = strdup("Subscribed");
    c->nats.url = strdup("nats://127.0.0.1:4222");
    c->nats.stream = strdup("SILLAGE");
    c->nats.events_subject = strdup("sillage.events");
    c->nats.triggers_subject = strdup("sillage.triggers");
    c->nats.consumer = strdup("sillage-core");
    c->nats.replicas = 1;
    c->nats.duplicate_window_ms = 3600000;
    c->nats.edge_keep_ms = 3600000;
}

/* ---- typed readers: each names the key path in its error --------------------- */

typedef sl_cfg_ctx_t ctx_t;

int sl_cfg_error(sl_cfg_ctx_t *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err, x->errlen, fmt, ap);
    va_end(ap);
    return SL_EINVAL;
}

int sl_cfg_check_keys(ctx_t *x, const cJSON *obj, const char *path, const char *const *known)
{
    if (!cJSON_IsObject(obj)) {
        seterr(x->err, x->errlen, "%s must be an object", path[0] ? path : "the top level");
        return SL_EINVAL;
    }
    for (const cJSON *it = obj->child; it; it = it->next) {
        int ok = 0;
        for (const char *const *k = known; *k; k++)
            if (strcmp(it->string, *k) == 0) ok = 1;
        if (!ok) {
            seterr(x->err, x->errlen, "unknown key \"%s%s%s\"", path, path[0] ? "." : "", it->string);
            return SL_EINVAL;
        }
    }
    return 0;
}

int sl_cfg_str(ctx_t *x, const cJSON *obj, const char *key, const char *path, char **out, int required)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL) {
        if (!required) return 0;
        seterr(x->err, x->errlen, "%s%s%s is required", path, path[0] ? "." : "", key);
        return SL_EINVAL;
    }
    if (!cJSON_IsString(v) || v->valuestring[0] == '\0') {
        seterr(x->err, x->errlen, "%s%s%s must be a non-empty string", path, path[0] ? "." : "", key);
        return SL_EINVAL;
    }
    free(*out);
    *out = strdup(v->valuestring);
    return *out ? 0 : SL_ENOMEM;
}

/* obj.key, a boolean, into *out (left alone when absent); path names obj in
 * the error ("" at the top). */
int sl_cfg_bool(ctx_t *x, const cJSON *obj, const char *key, const char *path, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL) return 0;
    if (!cJSON_IsBool(v)) {
        seterr(x->err, x->errlen, "%s%s%s must be true or false", path, path[0] ? "." : "", key);
        return SL_EINVAL;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

static int get_bool(ctx_t *x, const cJSON *obj, const char *key, int *out)
{
    return sl_cfg_bool(x, obj, key, "", out);
}

int sl_cfg_duration(ctx_t *x, const cJSON *obj, const char *key, const char *path, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL) return 0;
    if (!cJSON_IsString(v) || sl_parse_duration_ms(v->valuestring, out)) {
        seterr(x->err, x->errlen, "%s%s%s must be a duration string such as \"30s\", \"15m\", \"1h\" or \"7d\"",
               path, path[0] ? "." : "", key);
        return SL_EINVAL;
    }
    return 0;
}

/* A retention: a duration of at least one minute (the pruner's grain). */
static int get_retention(ctx_t *x, const cJSON *obj, const char *key, const char *path, int64_t *out)
{
    int rc = sl_cfg_duration(x, obj, key, path, out);
    if (rc == 0 && cJSON_GetObjectItemCaseSensitive(obj, key) && *out < 60000) {
        seterr(x->err, x->errlen, "%s%s%s must be at least 1m (e.g. \"760d\")", path, path[0] ? "." : "", key);
        return SL_EINVAL;
    }
    return rc;
}

static int get_size(ctx_t *x, const cJSON *obj, const char *key, const char *path, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL) return 0;
    if (cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble <= 1e15 &&
        v->valuedouble == (double)(uint64_t)v->valuedouble) {
        *out = (uint64_t)v->valuedouble;
        return 0;
    }
    if (cJSON_IsString(v) && sl_parse_size_bytes(v->valuestring, out) == 0 && *out > 0) return 0;
    seterr(x->err, x->errlen, "%s%s%s must be a positive number of bytes or a size such as \"512KB\" or \"8GB\"",
           path, path[0] ? "." : "", key);
    return SL_EINVAL;
}

int sl_cfg_strv(ctx_t *x, const cJSON *obj, const char *key, const char *path, char ***out, size_t *n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL) return 0;
    if (!cJSON_IsArray(v)) goto bad;
    size_t cnt = (size_t)cJSON_GetArraySize(v);
    char **arr = calloc(cnt ? cnt : 1, sizeof(char *));
    if (arr == NULL) return SL_ENOMEM;
    size_t i = 0;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        if (!cJSON_IsString(it)) {
            sl_cfg_strv_free(arr, i);
            goto bad;
        }
        arr[i] = strdup(it->valuestring);
    }
    sl_cfg_strv_free(*out, *n);
    *out = arr;
    *n = cnt;
    return 0;
bad:
    seterr(x->err, x->errlen, "%s%s%s must be an array of strings", path, path[0] ? "." : "", key);
    return SL_EINVAL;
}

/* obj.key as a whole number from lo to hi into *out (unchanged when absent);
 * note ends the error message, e.g. " (0 = no cap)". */
int sl_cfg_int(ctx_t *x, const cJSON *obj, const char *key, const char *path, int lo, int hi, const char *note,
                   int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi || v->valuedouble != (int)v->valuedouble) {
        seterr(x->err, x->errlen, "%s%s%s must be a whole number from %d to %d%s", path, *path ? "." : "", key, lo, hi,
               note);
        return SL_EINVAL;
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int get_limit(ctx_t *x, const cJSON *obj, const char *key, uint64_t lo, uint64_t hi, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL) return 0;
    uint64_t val;
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 1e15 &&
        v->valuedouble == (double)(uint64_t)v->valuedouble) {
        val = (uint64_t)v->valuedouble;
    } else if (!(cJSON_IsString(v) && sl_parse_size_bytes(v->valuestring, &val) == 0)) {
        seterr(x->err, x->errlen, "limits.%s must be a whole number", key);
        return SL_EINVAL;
    }
    if (val < lo || val > hi) {
        seterr(x->err, x->errlen, "limits.%s must be between %llu and %llu", key,
               (unsigned long long)lo, (unsigned long long)hi);
        return SL_EINVAL;
    }
    *out = val;
    return 0;
}

/* ---- sections -------------------------------------------------------------- */

/* ---- sections of their own ---------------------------------------------------- */

static const sl_config_section_t *sections[SL_CONFIG_MAX_SECTIONS];
static int n_sections;

int sl_config_register(const sl_config_section_t *s)
{
    for (int i = 0; i < n_sections; i++)
        if (sections[i] == s) return i;
    if (n_sections == SL_CONFIG_MAX_SECTIONS) return SL_EINVAL;
    sections[n_sections] = s;
    return n_sections++;
}

/* 1 when a registered section of c defines name. */
static int section_defines(const sl_config_t *c, const char *name)
{
    for (int i = 0; i < n_sections; i++)
        if (sections[i]->defines && c->sections[i] && sections[i]->defines(c->sections[i], name)) return 1;
    return 0;
}

int sl_config_defined(const sl_config_t *c, const char *name) { return section_defines(c, name); }

/* pressure.tiers: [{"audience", "max_per_profile_per_day" | "max_per_profile_per_week"}]
 * (the audiences section checks that each names one of its audiences) */
static int parse_pressure_tiers(ctx_t *x, const cJSON *tiers, sl_config_t *c)
{
    if (tiers == NULL) return 0;
    if (!cJSON_IsArray(tiers) || cJSON_GetArraySize(tiers) > SL_PRESSURE_MAX_TIERS) {
        seterr(x->err, x->errlen, "pressure.tiers must be an array of at most 16 tiers");
        return SL_EINVAL;
    }
    size_t n = (size_t)cJSON_GetArraySize(tiers);
    if (n == 0) return 0;
    if ((c->pressure_tiers = calloc(n, sizeof(*c->pressure_tiers))) == NULL) return SL_ENOMEM;
    static const char *tk[] = {"audience", "max_per_profile_per_day", "max_per_profile_per_week", NULL};
    int rc = 0;
    for (const cJSON *t = tiers->child; t && rc == 0 && c->n_pressure_tiers < n; t = t->next) {
        char path[40];
        snprintf(path, sizeof(path), "pressure.tiers[%zu]", c->n_pressure_tiers);
        struct sl_pressure_tier_s *pt = &c->pressure_tiers[c->n_pressure_tiers++];
        if (!cJSON_IsObject(t)) {
            seterr(x->err, x->errlen, "%s must be an object", path);
            return SL_EINVAL;
        }
        if ((rc = sl_cfg_check_keys(x, t, path, tk)) || (rc = sl_cfg_str(x, t, "audience", path, &pt->audience, 1)) ||
            (rc = sl_cfg_int(x, t, "max_per_profile_per_day", path, 0, 1000000, "", &pt->per_day)) ||
            (rc = sl_cfg_int(x, t, "max_per_profile_per_week", path, 0, 1000000, "", &pt->per_week)))
            return rc;
        int day = cJSON_GetObjectItemCaseSensitive(t, "max_per_profile_per_day") != NULL,
            week = cJSON_GetObjectItemCaseSensitive(t, "max_per_profile_per_week") != NULL;
        if (day == week) {
            seterr(x->err, x->errlen, "%s needs one of max_per_profile_per_day and max_per_profile_per_week", path);
            return SL_EINVAL;
        }
    }
    return rc;
}

static int parse_config(sl_config_t *c, const cJSON *root, ctx_t *x)
{
    static const char *core[] = {
        "listen", "data_dir", "map_size", "map_size_max", "durability", "geoip_db", "ip_anonymize",
        "trusted_proxies", "cors_origins", "sources", "admin_token", "identity", "limits",
        "dedupe_window", "pressure", "webhooks", "log_level", "trigger_retention", "demo", "debug", "metrics_auth", "role", "nats",
        "anonymous_retention", "unsubscribe_event", "subscribe_event", "ingest_loops", "timezone", NULL};
    const char *known[sizeof(core) / sizeof(*core) + SL_CONFIG_MAX_SECTIONS];
    size_t n_known = 0;
    for (; core[n_known]; n_known++) known[n_known] = core[n_known];
    for (int i = 0; i < n_sections; i++) known[n_known++] = sections[i]->key;
    known[n_known] = NULL;
    int rc;
    if ((rc = sl_cfg_check_keys(x, root, "", known))) return rc;
    if ((rc = sl_cfg_str(x, root, "listen", "", &c->listen, 0))) return rc;
    char host[256];
    int port;
    if (sl_config_split_listen(c->listen, host, sizeof(host), &port)) {
        seterr(x->err, x->errlen, "listen \"%s\" must be HOST:PORT with a port from 0 (any free port) to 65535", c->listen);
        return SL_EINVAL;
    }
    if ((rc = sl_cfg_str(x, root, "data_dir", "", &c->data_dir, 0))) return rc;
    if ((rc = get_size(x, root, "map_size", "", &c->map_size_bytes))) return rc;
    if (c->map_size_max_bytes < c->map_size_bytes) c->map_size_max_bytes = c->map_size_bytes;
    if ((rc = get_size(x, root, "map_size_max", "", &c->map_size_max_bytes))) return rc;
    if (c->map_size_bytes < (1u << 20)) {
        seterr(x->err, x->errlen, "map_size must be at least 1MB");
        return SL_EINVAL;
    }
    if (c->map_size_max_bytes < c->map_size_bytes) {
        seterr(x->err, x->errlen, "map_size_max must not be smaller than map_size");
        return SL_EINVAL;
    }
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "durability");
    if (d) {
        if (cJSON_IsString(d) && strcmp(d->valuestring, "sync") == 0) c->durability = SL_DURABLE_SYNC;
        else if (cJSON_IsString(d) && strcmp(d->valuestring, "os") == 0) c->durability = SL_DURABLE_OS;
        else {
            seterr(x->err, x->errlen, "durability must be \"sync\" or \"os\"");
            return SL_EINVAL;
        }
    }
    if ((rc = sl_cfg_str(x, root, "geoip_db", "", &c->geoip_db, 0))) return rc;
    if ((rc = get_bool(x, root, "ip_anonymize", &c->ip_anonymize))) return rc;
    const cJSON *loops = cJSON_GetObjectItemCaseSensitive(root, "ingest_loops");
    if (loops) {
        /* the range first: a double outside int's cannot be converted to one */
        if (!cJSON_IsNumber(loops) || !(loops->valuedouble >= 1 && loops->valuedouble <= SL_MAX_INGEST_LOOPS) ||
            loops->valuedouble != (double)(int)loops->valuedouble) {
            seterr(x->err, x->errlen, "ingest_loops must be a whole number from 1 to %d", SL_MAX_INGEST_LOOPS);
            return SL_EINVAL;
        }
        c->ingest_loops = (int)loops->valuedouble;
    }
    if ((rc = get_bool(x, root, "demo", &c->demo_shop))) return rc;
    if ((rc = get_bool(x, root, "debug", &c->debug_page))) return rc;
    if ((rc = get_bool(x, root, "metrics_auth", &c->metrics_auth))) return rc;
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(root, "role");
    if (role) {
        if (cJSON_IsString(role) && strcmp(role->valuestring, "all") == 0) c->role = SL_ROLE_ALL;
        else if (cJSON_IsString(role) && strcmp(role->valuestring, "edge") == 0) c->role = SL_ROLE_EDGE;
        else if (cJSON_IsString(role) && strcmp(role->valuestring, "core") == 0) c->role = SL_ROLE_CORE;
        else {
            seterr(x->err, x->errlen, "role must be \"all\", \"edge\" or \"core\"");
            return SL_EINVAL;
        }
    }
    const cJSON *nats = cJSON_GetObjectItemCaseSensitive(root, "nats");
    if (nats) {
        static const char *nk[] = {"url", "stream", "events_subject", "triggers_subject", "credentials", "consumer",
                                   "replicas", "duplicate_window", "edge_keep", NULL};
        if ((rc = sl_cfg_check_keys(x, nats, "nats", nk))) return rc;
        struct { const char *key; char **slot; } strs[] = {
            {"url", &c->nats.url}, {"stream", &c->nats.stream}, {"events_subject", &c->nats.events_subject},
            {"triggers_subject", &c->nats.triggers_subject}, {"credentials", &c->nats.credentials},
            {"consumer", &c->nats.consumer}};
        for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
            if (!cJSON_GetObjectItemCaseSensitive(nats, strs[i].key)) continue;
            free(*strs[i].slot);
            *strs[i].slot = NULL;
            if ((rc = sl_cfg_str(x, nats, strs[i].key, "nats", strs[i].slot, 1))) return rc;
        }
        if ((rc = sl_cfg_int(x, nats, "replicas", "nats", 1, 5, "", &c->nats.replicas))) return rc;
        if ((rc = sl_cfg_duration(x, nats, "duplicate_window", "nats", &c->nats.duplicate_window_ms))) return rc;
        if ((rc = sl_cfg_duration(x, nats, "edge_keep", "nats", &c->nats.edge_keep_ms))) return rc;
        if (strncmp(c->nats.url, "nats://", 7) != 0 && strncmp(c->nats.url, "tls://", 6) != 0) {
            seterr(x->err, x->errlen, "nats.url must start with nats:// or tls://");
            return SL_EINVAL;
        }
    }
    if (c->role != SL_ROLE_ALL && nats == NULL) {
        seterr(x->err, x->errlen, "role \"%s\" needs a \"nats\" section with at least its url",
               c->role == SL_ROLE_EDGE ? "edge" : "core");
        return SL_EINVAL;
    }
    if ((rc = sl_cfg_strv(x, root, "trusted_proxies", "", &c->trusted_proxies, &c->n_trusted_proxies))) return rc;
    if ((rc = sl_cfg_strv(x, root, "cors_origins", "", &c->cors_origins, &c->n_cors_origins))) return rc;

    const cJSON *srcs = cJSON_GetObjectItemCaseSensitive(root, "sources");
    if (srcs) {
        if (!cJSON_IsArray(srcs) || cJSON_GetArraySize(srcs) == 0) {
            seterr(x->err, x->errlen, "sources must be a non-empty array of {\"name\", \"write_key\"}");
            return SL_EINVAL;
        }
        c->n_sources = (size_t)cJSON_GetArraySize(srcs);
        c->sources = calloc(c->n_sources, sizeof(sl_source_t));
        if (c->sources == NULL) return SL_ENOMEM;
        size_t i = 0;
        for (const cJSON *s = srcs->child; s; s = s->next, i++) {
            static const char *sk[] = {"name", "write_key", "trusted", "historical", "retention", NULL};
            char path[32];
            snprintf(path, sizeof(path), "sources[%zu]", i);
            if ((rc = sl_cfg_check_keys(x, s, path, sk))) return rc;
            if ((rc = sl_cfg_str(x, s, "name", path, &c->sources[i].name, 1))) return rc;
            if ((rc = sl_cfg_str(x, s, "write_key", path, &c->sources[i].write_key, 1))) return rc;
            if ((rc = sl_cfg_bool(x, s, "trusted", path, &c->sources[i].trusted))) return rc;
            if ((rc = sl_cfg_bool(x, s, "historical", path, &c->sources[i].historical))) return rc;
            if ((rc = get_retention(x, s, "retention", path, &c->sources[i].retention_ms))) return rc;
            for (size_t j = 0; j < i; j++)
                if (strcmp(c->sources[j].name, c->sources[i].name) == 0) {
                    seterr(x->err, x->errlen, "%s.name repeats the name of sources[%zu]", path, j);
                    return SL_EINVAL;
                }
            for (size_t j = 0; j < i; j++)
                if (strcmp(c->sources[j].write_key, c->sources[i].write_key) == 0) {
                    seterr(x->err, x->errlen, "%s.write_key repeats the key of sources[%zu]", path, j);
                    return SL_EINVAL;
                }
        }
    } else {
        seterr(x->err, x->errlen, "sources is required: at least one {\"name\", \"write_key\"}");
        return SL_EINVAL;
    }
    if ((rc = sl_cfg_str(x, root, "admin_token", "", &c->admin_token, 1))) return rc;

    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "identity");
    if (id) {
        static const char *ik[] = {"traits", "junk_values", NULL};
        if ((rc = sl_cfg_check_keys(x, id, "identity", ik))) return rc;
        if ((rc = sl_cfg_strv(x, id, "traits", "identity", &c->identity_traits, &c->n_identity_traits))) return rc;
        if ((rc = sl_cfg_strv(x, id, "junk_values", "identity", &c->junk_ids, &c->n_junk_ids))) return rc;
        /* a trait name is part of every key it makes (sl_stitch.h: SL_IDENT_MAX_KIND) */
        for (size_t i = 0; i < c->n_identity_traits; i++) {
            size_t n = c->identity_traits[i] ? strlen(c->identity_traits[i]) : 0;
            if (n == 0 || n > 64 || strchr(c->identity_traits[i], '\x1f') != NULL) {
                seterr(x->err, x->errlen, "identity.traits[%zu] must be a name of 1 to 64 characters", i);
                return SL_EINVAL;
            }
            /* the identifier kinds a trait would be confused with */
            if (strcmp(c->identity_traits[i], "user_id") == 0 || strcmp(c->identity_traits[i], "anonymous_id") == 0) {
                seterr(x->err, x->errlen, "identity.traits[%zu] \"%s\" is the name of an identifier kind", i,
                       c->identity_traits[i]);
                return SL_EINVAL;
            }
            for (size_t j = 0; j < i; j++)
                if (strcmp(c->identity_traits[j], c->identity_traits[i]) == 0) {
                    seterr(x->err, x->errlen, "identity.traits[%zu] repeats identity.traits[%zu]", i, j);
                    return SL_EINVAL;
                }
        }
        if (c->n_identity_traits > 8) {
            seterr(x->err, x->errlen, "identity.traits holds at most 8 trait names");
            return SL_EINVAL;
        }
    }

    const cJSON *lim = cJSON_GetObjectItemCaseSensitive(root, "limits");
    if (lim) {
        static const char *lk[] = {"max_message_bytes", "max_request_bytes", "max_batch_messages",
                                   "max_header_bytes", "max_connections", "max_queue_messages",
                                   "max_json_depth", "idle_timeout", "request_timeout", "rate_per_ip",
                                   "rate_burst", "max_connections_per_ip", "max_buffered_bytes", "max_traits_per_person",
                                   "max_traits_bytes", "max_dedupe_ids", "header_timeout", "min_body_rate", "max_stage_lag",
                                   "stage_commit_interval", NULL};
        if ((rc = sl_cfg_check_keys(x, lim, "limits", lk))) return rc;
        if ((rc = get_limit(x, lim, "max_message_bytes", 256, 16u << 20, &c->limits.max_message_bytes))) return rc;
        if ((rc = get_limit(x, lim, "max_request_bytes", 256, 64u << 20, &c->limits.max_request_bytes))) return rc;
        if ((rc = get_limit(x, lim, "max_batch_messages", 1, 1000000, &c->limits.max_batch_messages))) return rc;
        if ((rc = get_limit(x, lim, "max_header_bytes", 1024, 1u << 20, &c->limits.max_header_bytes))) return rc;
        if ((rc = get_limit(x, lim, "max_connections", 1, 1000000, &c->limits.max_connections))) return rc;
        if ((rc = get_limit(x, lim, "max_connections_per_ip", 1, 1000000, &c->limits.max_connections_per_ip))) return rc;
        if ((rc = get_limit(x, lim, "max_buffered_bytes", 256, 1ull << 40, &c->limits.max_buffered_bytes))) return rc;
        if ((rc = get_limit(x, lim, "max_queue_messages", 1, 10000000, &c->limits.max_queue_messages))) return rc;
        if ((rc = get_limit(x, lim, "max_json_depth", 2, SL_JSON_MAX_DEPTH, &c->limits.max_json_depth))) return rc;
        if ((rc = get_limit(x, lim, "max_traits_per_person", 1, 100000, &c->limits.max_traits_per_person))) return rc;
        if ((rc = get_limit(x, lim, "max_traits_bytes", 256, 16u << 20, &c->limits.max_traits_bytes))) return rc;
        if ((rc = get_limit(x, lim, "max_dedupe_ids", 1000, 1000000000, &c->limits.max_dedupe_ids))) return rc;
        if ((rc = get_limit(x, lim, "rate_per_ip", 0, 10000000, &c->limits.rate_per_ip))) return rc;
        c->limits.rate_burst = 2 * c->limits.rate_per_ip;
        if ((rc = get_limit(x, lim, "rate_burst", 1, 100000000, &c->limits.rate_burst))) return rc;
        if ((rc = sl_cfg_duration(x, lim, "idle_timeout", "limits", &c->limits.idle_timeout_ms))) return rc;
        if ((rc = sl_cfg_duration(x, lim, "request_timeout", "limits", &c->limits.request_timeout_ms))) return rc;
        if ((rc = sl_cfg_duration(x, lim, "header_timeout", "limits", &c->limits.header_timeout_ms))) return rc;
        if (c->limits.header_timeout_ms < 1000 || c->limits.header_timeout_ms > 3600000) {
            seterr(x->err, x->errlen, "limits.header_timeout must be between 1s and 1h");
            return SL_EINVAL;
        }
        if ((rc = get_limit(x, lim, "min_body_rate", 0, 1000000000, &c->limits.min_body_rate))) return rc;
        if ((rc = get_limit(x, lim, "max_stage_lag", 0, 1000000000, &c->limits.max_stage_lag))) return rc;
        if ((rc = sl_cfg_duration(x, lim, "stage_commit_interval", "limits", &c->limits.stage_commit_interval_ms)))
            return rc;
        if (c->limits.stage_commit_interval_ms > 10000) {
            seterr(x->err, x->errlen, "limits.stage_commit_interval must be at most 10s (\"0ms\": commit at once)");
            return SL_EINVAL;
        }
        if (c->limits.max_message_bytes > c->limits.max_request_bytes) {
            seterr(x->err, x->errlen, "limits.max_message_bytes must not exceed limits.max_request_bytes");
            return SL_EINVAL;
        }
        if (c->limits.max_request_bytes > c->limits.max_buffered_bytes) {
            seterr(x->err, x->errlen, "limits.max_request_bytes must not exceed limits.max_buffered_bytes");
            return SL_EINVAL;
        }
    }
    if ((rc = sl_cfg_duration(x, root, "dedupe_window", "", &c->dedupe_window_ms))) return rc;

    if ((rc = sl_cfg_duration(x, root, "trigger_retention", "", &c->trigger_retention_ms))) return rc;
    if ((rc = get_retention(x, root, "anonymous_retention", "", &c->anonymous_retention_ms))) return rc;
    if ((rc = sl_cfg_str(x, root, "timezone", "", &c->timezone, 0))) return rc;
    if (c->timezone && !sl_timezone_ok(c->timezone)) {
        seterr(x->err, x->errlen, "timezone \"%.64s\" is not a time zone of /usr/share/zoneinfo (\"UTC\", \"Europe/Paris\")",
               c->timezone);
        return SL_EINVAL;
    }
    if ((rc = sl_cfg_str(x, root, "unsubscribe_event", "", &c->unsubscribe_event, 0)) ||
        (rc = sl_cfg_str(x, root, "subscribe_event", "", &c->subscribe_event, 0)))
        return rc;
    if (strcmp(c->unsubscribe_event, c->subscribe_event) == 0) {
        seterr(x->err, x->errlen, "unsubscribe_event and subscribe_event must differ");
        return SL_EINVAL;
    }
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(root, "pressure");
    if (pr) {
        static const char *pk[] = {"max_per_profile_per_day", "tiers", "timezone", NULL};
        if ((rc = sl_cfg_check_keys(x, pr, "pressure", pk))) return rc;
        if ((rc = sl_cfg_int(x, pr, "max_per_profile_per_day", "pressure", 0, 1000000, " (0 = no cap)",
                          &c->pressure_max_per_profile_per_day)) ||
            (rc = sl_cfg_bool(x, pr, "timezone", "pressure", &c->pressure_local_days)))
            return rc;
        if ((rc = parse_pressure_tiers(x, cJSON_GetObjectItemCaseSensitive(pr, "tiers"), c))) return rc;
    }
    const cJSON *wh = cJSON_GetObjectItemCaseSensitive(root, "webhooks");
    if (wh) {
        if (!cJSON_IsArray(wh)) {
            seterr(x->err, x->errlen, "webhooks must be an array");
            return SL_EINVAL;
        }
        c->n_webhooks = (size_t)cJSON_GetArraySize(wh);
        c->webhooks = calloc(c->n_webhooks ? c->n_webhooks : 1, sizeof(sl_webhook_t));
        if (c->webhooks == NULL) return SL_ENOMEM;
        size_t i = 0;
        for (const cJSON *w = wh->child; w; w = w->next, i++) {
            static const char *wk[] = {"url", "secret", "rules", "expire", "ca_file", "profile_erased", NULL};
            char path[32];
            snprintf(path, sizeof(path), "webhooks[%zu]", i);
            sl_webhook_t *h = &c->webhooks[i];
            h->expire_ms = 86400000;
            h->profile_erased = 1;
            if ((rc = sl_cfg_check_keys(x, w, path, wk))) return rc;
            if ((rc = sl_cfg_bool(x, w, "profile_erased", path, &h->profile_erased))) return rc;
            if ((rc = sl_cfg_str(x, w, "url", path, &h->url, 1))) return rc;
            if (strncmp(h->url, "http://", 7) != 0 && strncmp(h->url, "https://", 8) != 0) {
                seterr(x->err, x->errlen, "%s.url must start with http:// or https://", path);
                return SL_EINVAL;
            }
            if ((rc = sl_cfg_str(x, w, "secret", path, &h->secret, 1))) return rc;
            if ((rc = sl_cfg_strv(x, w, "rules", path, &h->rules, &h->n_rules))) return rc;
            if ((rc = sl_cfg_duration(x, w, "expire", path, &h->expire_ms))) return rc;
            if ((rc = sl_cfg_str(x, w, "ca_file", path, &h->ca_file, 0))) return rc;
        }
    }
    /* the components' own sections, once every core key is in */
    for (int i = 0; i < n_sections; i++)
        if ((rc = sections[i]->parse(cJSON_GetObjectItemCaseSensitive(root, sections[i]->key), c, &c->sections[i],
                                     x->err, x->errlen)))
            return rc;
    for (size_t i = 0; i < c->n_webhooks; i++)
        for (size_t k = 0; k < c->webhooks[i].n_rules; k++)
            if (!section_defines(c, c->webhooks[i].rules[k]))
                return sl_cfg_error(x, "webhooks[%zu].rules names \"%s\", which is not a trigger rule or an audience", i,
                                    c->webhooks[i].rules[k]);
    const cJSON *ll = cJSON_GetObjectItemCaseSensitive(root, "log_level");
    if (ll) {
        static const char *lv[] = {"debug", "info", "warn", "error"};
        int found = -1;
        for (int i = 0; i < 4; i++)
            if (cJSON_IsString(ll) && strcmp(ll->valuestring, lv[i]) == 0) found = i;
        if (found < 0) {
            seterr(x->err, x->errlen, "log_level must be one of debug, info, warn, error");
            return SL_EINVAL;
        }
        sl_log_level = found;
    }
    return 0;
}

int sl_config_parse(sl_config_t *cfg, const char *json, size_t len, char *err, size_t errlen)
{
    ctx_t x = {err, errlen};
    set_defaults(cfg);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (root == NULL) {
        size_t off = end ? (size_t)(end - json) : 0;
        size_t line = 1;
        for (size_t i = 0; i < off && i < len; i++)
            if (json[i] == '\n') line++;
        seterr(err, errlen, "not valid JSON near line %zu (byte %zu)", line, off);
        sl_config_free(cfg);
        return SL_EINVAL;
    }
    int rc = parse_config(cfg, root, &x);
    cJSON_Delete(root);
    if (rc) sl_config_free(cfg); /* leaves it zeroed: nothing to free */
    return rc;
}

int sl_config_load(sl_config_t *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        memset(cfg, 0, sizeof(*cfg));
        return SL_EINVAL;
    }
    char *buf = malloc(MAX_CONFIG_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_CONFIG_BYTES + 1, f) : 0;
    fclose(f);
    if (buf == NULL) return SL_ENOMEM;
    if (n > MAX_CONFIG_BYTES) {
        free(buf);
        seterr(err, errlen, "%s: larger than %u bytes", path, MAX_CONFIG_BYTES);
        memset(cfg, 0, sizeof(*cfg));
        return SL_EINVAL;
    }
    char inner[400];
    int rc = sl_config_parse(cfg, buf, n, inner, sizeof(inner));
    free(buf);
    if (rc) seterr(err, errlen, "%s: %s", path, inner);
    return rc;
}

int sl_timezone_ok(const char *tz)
{
    size_t n = strlen(tz);
    if (n == 0 || n > 64 || tz[0] == '/' || strstr(tz, "..")) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)tz[i]) && !strchr("/_+-", tz[i])) return 0;
    if (strcmp(tz, "UTC") == 0) return 1;
    char path[128];
    snprintf(path, sizeof(path), "/usr/share/zoneinfo/%s", tz);
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

_Atomic unsigned sl_timezone_gen;

void sl_timezone_apply(const char *tz)
{
    setenv("TZ", tz ? tz : "UTC", 1);
    tzset();
    atomic_fetch_add(&sl_timezone_gen, 1);
}

int sl_config_demo(sl_config_t *cfg)
{
    static const char demo[] =
        "{\"listen\":\"127.0.0.1:8080\",\"data_dir\":\"./sillage-data\","
        "\"sources\":[{\"name\":\"demo\",\"write_key\":\"demo\"}],"
        "\"admin_token\":\"demo-admin\","
        "\"triggers\":["
        /* rules a newcomer sees fire within a minute of clicking around the
         * demo shop (README, "Try it"); production values are in TRIGGERS.md */
        "{\"name\":\"cart\",\"type\":\"abandoned_cart\",\"delay\":\"30s\"},"
        "{\"name\":\"viewed-twice\",\"type\":\"page_visit\",\"url\":\"/demo/product.html\",\"min_count\":2,"
        "\"within\":\"1h\"},"
        "{\"name\":\"plan\",\"type\":\"trait_change\",\"trait\":\"plan\",\"on_first_set\":true},"
        "{\"name\":\"dormant\",\"type\":\"inactivity\",\"after\":\"30d\"}],"
        "\"pressure\":{\"max_per_profile_per_day\":20},"
        /* the commerce pack (docs/COMPUTED.md): its default RFM table */
        "\"computed\":{\"commerce\":{\"currency\":\"EUR\",\"windows\":[\"90d\",\"365d\"]}}}";
    char err[256];
    int rc = sl_config_parse(cfg, demo, sizeof(demo) - 1, err, sizeof(err));
    if (rc) return rc;
    cfg->is_demo = 1;
    cfg->demo_shop = cfg->debug_page = 1;
    return 0;
}

int sl_config_split_listen(const char *listen, char *host, size_t hostlen, int *port)
{
    if (listen == NULL) return SL_EINVAL;
    const char *colon = strrchr(listen, ':');
    if (colon == NULL) return SL_EINVAL;
    const char *h = listen;
    size_t hl = (size_t)(colon - listen);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostlen) return SL_EINVAL;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p < 0 || p > 65535 || colon[1] == '\0') return SL_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

static int is_loopback_host(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 || strcmp(host, "localhost") == 0;
}

int sl_config_check_exposure(const sl_config_t *cfg, char *err, size_t errlen)
{
    char host[256];
    int port;
    if (sl_config_split_listen(cfg->listen, host, sizeof(host), &port)) {
        seterr(err, errlen, "listen \"%s\" must be HOST:PORT", cfg->listen);
        return SL_EINVAL;
    }
    if (is_loopback_host(host)) return 0;
    if (cfg->is_demo) {
        seterr(err, errlen, "refusing to listen on %s with the demo write key and admin token; "
               "write a config file with your own secrets (see README)", cfg->listen);
        return SL_EINVAL;
    }
    if (cfg->admin_token && strcmp(cfg->admin_token, "demo-admin") == 0) {
        seterr(err, errlen, "refusing to listen on %s with admin_token \"demo-admin\"", cfg->listen);
        return SL_EINVAL;
    }
    for (size_t i = 0; i < cfg->n_sources; i++)
        if (strcmp(cfg->sources[i].write_key, "demo") == 0) {
            seterr(err, errlen, "refusing to listen on %s with the demo write key \"demo\"", cfg->listen);
            return SL_EINVAL;
        }
    return 0;
}

int sl_config_check_secrets(const sl_config_t *cfg, char *err, size_t errlen)
{
    if (cfg->is_demo) return 0; /* loopback only: sl_config_check_exposure() */
    size_t n = cfg->admin_token ? strlen(cfg->admin_token) : 0;
    if (n < SL_ADMIN_TOKEN_MIN_CHARS) {
        seterr(err, errlen, "admin_token has %zu characters; it must have at least %d (a random one: openssl rand -hex 24)",
               n, SL_ADMIN_TOKEN_MIN_CHARS);
        return SL_EINVAL;
    }
    for (size_t i = 0; i < cfg->n_sources; i++)
        if (strcmp(cfg->sources[i].write_key, cfg->admin_token) == 0) {
            seterr(err, errlen, "admin_token is the same as sources[%zu].write_key (source \"%s\"); write keys are "
                   "public (every page with the tag holds one), so the admin token must differ", i, cfg->sources[i].name);
            return SL_EINVAL;
        }
    return 0;
}

int sl_config_check_file_mode(const sl_config_t *cfg, const char *path, char *warn, size_t warnlen)
{
    struct stat sb;
    int hooks = 0;
    for (size_t i = 0; i < cfg->n_webhooks; i++) hooks |= cfg->webhooks[i].secret != NULL;
    if (cfg->is_demo || path == NULL || (cfg->admin_token == NULL && cfg->n_sources == 0 && !hooks) ||
        stat(path, &sb) != 0 || !(sb.st_mode & S_IROTH))
        return 0;
    seterr(warn, warnlen, "%s holds secrets (%s) and every local user can read it (mode %03o): chmod o-r it (640 or 600)",
           path, hooks ? "admin_token, write keys, webhook secrets" : "admin_token, write keys",
           (unsigned)(sb.st_mode & 0777));
    return 1;
}

void sl_config_free(sl_config_t *c)
{
    free(c->nats.url);
    free(c->nats.stream);
    free(c->nats.events_subject);
    free(c->nats.triggers_subject);
    free(c->nats.credentials);
    free(c->nats.consumer);
    free(c->listen);
    free(c->data_dir);
    free(c->geoip_db);
    sl_cfg_strv_free(c->trusted_proxies, c->n_trusted_proxies);
    sl_cfg_strv_free(c->cors_origins, c->n_cors_origins);
    for (size_t i = 0; i < c->n_sources; i++) {
        free(c->sources[i].name);
        free(c->sources[i].write_key);
    }
    free(c->sources);
    free(c->admin_token);
    free(c->unsubscribe_event);
    free(c->timezone);
    free(c->subscribe_event);
    sl_cfg_strv_free(c->identity_traits, c->n_identity_traits);
    sl_cfg_strv_free(c->junk_ids, c->n_junk_ids);
    for (int i = 0; i < n_sections; i++)
        if (c->sections[i]) sections[i]->free(c->sections[i]);
    for (size_t i = 0; i < c->n_webhooks; i++) {
        free(c->webhooks[i].url);
        free(c->webhooks[i].secret);
        free(c->webhooks[i].ca_file);
        sl_cfg_strv_free(c->webhooks[i].rules, c->n_webhooks ? c->webhooks[i].n_rules : 0);
    }
    free(c->webhooks);
    for (size_t i = 0; i < c->n_pressure_tiers; i++) free(c->pressure_tiers[i].audience);
    free(c->pressure_tiers);
    memset(c, 0, sizeof(*c));
}

const sl_source_t *sl_config_source(const sl_config_t *cfg, const char *name)
{
    for (size_t i = 0; name && i < cfg->n_sources; i++)
        if (strcmp(cfg->sources[i].name, name) == 0) return &cfg->sources[i];
    return NULL;
}

int64_t sl_config_retention_pass_ms(const sl_config_t *cfg)
{
    int64_t r = cfg->anonymous_retention_ms;
    for (size_t i = 0; i < cfg->n_sources; i++)
        if (cfg->sources[i].retention_ms && (r == 0 || cfg->sources[i].retention_ms < r))
            r = cfg->sources[i].retention_ms;
    if (r == 0) return 0;
    r /= 60;
    return r < 1000 ? 1000 : r > 3600000 ? 3600000 : r;
}

int64_t sl_config_retention_wait_ms(const sl_config_t *cfg, int failed, int more)
{
    int64_t every = sl_config_retention_pass_ms(cfg);
    return failed ? 1000 : more ? 0 : every < 5000 ? every : 5000;
}
