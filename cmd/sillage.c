/* sillage.c - the command line: serve, check-config, export, backup, version. */
#define _GNU_SOURCE
#include "sl_collector.h"
#include "sl_common.h"
#include "sl_config.h"
#include "sl_stitch.h"
#include "sl_triggers.h"
#include "sl_webhooks.h"
#include "sl_nats.h"
#include "sl_store.h"

#include <cjson/cJSON.h>
#include <llhttp.h>
#include <lmdb.h>
#include <maxminddb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define DEFAULT_GEOIP "/usr/share/sillage/geo.mmdb"

static void usage(FILE *f)
{
    fprintf(f,
            "usage:\n"
            "  sillage serve [-c FILE] [--listen HOST:PORT] [--data DIR]\n"
            "  sillage check-config [-c FILE]\n"
            "  sillage export [-c FILE] [--data DIR]\n"
            "  sillage backup [-c FILE] [--data DIR] DEST\n"
            "  sillage verify [-c FILE] [--data DIR]   consistency check of the store (events, identity graph, triggers)\n"
            "  sillage version\n"
            "Without -c, sillage runs the local demo: 127.0.0.1:8080, data in ./sillage-data,\n"
            "write key \"demo\", admin token \"demo-admin\".\n");
}

typedef struct args_s {
    const char *config, *listen, *data, *dest;
} args_t;

static int parse_args(int argc, char **argv, args_t *a, int want_dest)
{
    memset(a, 0, sizeof(*a));
    for (int i = 2; i < argc; i++) {
        const char *s = argv[i];
        const char **slot = NULL;
        if (strcmp(s, "-c") == 0 || strcmp(s, "--config") == 0) slot = &a->config;
        else if (strcmp(s, "--listen") == 0) slot = &a->listen;
        else if (strcmp(s, "--data") == 0) slot = &a->data;
        else if (strncmp(s, "--listen=", 9) == 0) { a->listen = s + 9; continue; }
        else if (strncmp(s, "--data=", 7) == 0) { a->data = s + 7; continue; }
        else if (strncmp(s, "--config=", 9) == 0) { a->config = s + 9; continue; }
        else if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) { usage(stdout); exit(0); }
        else if (want_dest && s[0] != '-' && a->dest == NULL) { a->dest = s; continue; }
        else {
            fprintf(stderr, "sillage: unknown argument \"%s\"\n", s);
            usage(stderr);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "sillage: %s needs a value\n", s);
            return -1;
        }
        *slot = argv[++i];
    }
    return 0;
}

/* The config from -c, or the demo default; then the flags over it. */
static int load_config(const args_t *a, sl_config_t *cfg)
{
    char err[512];
    if (a->config) {
        if (sl_config_load(cfg, a->config, err, sizeof(err))) {
            fprintf(stderr, "sillage: config error: %s\n", err);
            return -1;
        }
    } else if (sl_config_demo(cfg)) {
        fprintf(stderr, "sillage: the demo config does not load\n");
        return -1;
    }
    if (a->listen) {
        char host[256];
        int port;
        if (sl_config_split_listen(a->listen, host, sizeof(host), &port)) {
            fprintf(stderr, "sillage: --listen \"%s\" must be HOST:PORT\n", a->listen);
            return -1;
        }
        free(cfg->listen);
        cfg->listen = strdup(a->listen);
    }
    if (a->data) {
        free(cfg->data_dir);
        cfg->data_dir = strdup(a->data);
    }
    return 0;
}

/* serve and check-config: what would make the server unsafe is refused, a
 * config file others can read is a warning. 0, or 1 after saying why. */
static int check_secrets(const args_t *a, const sl_config_t *cfg, int serving)
{
    char msg[512];
    if (sl_config_check_secrets(cfg, msg, sizeof(msg))) {
        fprintf(stderr, "sillage: config error: %s%s%s\n", a->config ? a->config : "", a->config ? ": " : "", msg);
        return 1;
    }
    if (sl_config_check_file_mode(cfg, a->config, msg, sizeof(msg))) {
        if (serving) SL_WARN("%s", msg);
        else fprintf(stderr, "sillage: WARN: %s\n", msg);
    }
    return 0;
}

static sl_store_options_t store_options(const sl_config_t *cfg, int read_only)
{
    sl_store_options_t o = {
        .data_dir = cfg->data_dir,
        .map_size_bytes = cfg->map_size_bytes,
        .map_size_max_bytes = cfg->map_size_max_bytes,
        .nosync = cfg->durability == SL_DURABLE_OS,
        .dedupe_window_ms = cfg->dedupe_window_ms,
        .dedupe_max_ids = cfg->limits.max_dedupe_ids,
        .max_queue_messages = cfg->limits.max_queue_messages,
        .read_only = read_only,
    };
    return o;
}

/* ---- serve ------------------------------------------------------------------- */

typedef struct app_s {
    uv_loop_t *loop;
    sl_server_t *srv;
    sl_store_t *store;
    sl_trig_t *trig;
    sl_webhooks_t *webhooks;
    sl_nats_t *nats;
    const char *config_path;    /* NULL: the demo default, nothing to reload */
    sl_config_t *rules;         /* the rules of the last reload (heap), or NULL */
    sl_config_t *pending;       /* a reload in flight */
    sl_trig_reload_t reload;
    sl_store_batch_t reload_batch;
    uv_signal_t sigterm, sigint, sighup;
    int stopped;
} app_t;

static void on_reloaded(sl_store_batch_t *b)
{
    app_t *app = b->data;
    if (b->rc) {
        SL_ERROR("reload: the rules could not be switched (%s); the old ones stay", sl_strerror(b->rc));
        sl_config_free(app->pending);
        free(app->pending);
    } else {
        /* The writer runs the new rules now; so does the loop thread from here
         * on, and the previous heap copy is unused. */
        sl_http_server_set_rules(app->srv, app->pending);
        if (app->rules) {
            sl_config_free(app->rules);
            free(app->rules);
        }
        app->rules = app->pending;
        SL_INFO("reload: %zu trigger rules, %zu webhooks from %s", app->rules->n_triggers, app->rules->n_webhooks,
                app->config_path);
    }
    app->pending = NULL;
}

/* SIGHUP: the trigger rules, pressure cap and retention are read again from
 * the config file; timers and rule states go on under their rule names. The
 * other settings need a restart. */
static void on_sighup(uv_signal_t *s, int signum)
{
    (void)signum;
    app_t *app = s->data;
    if (app->config_path == NULL || app->trig == NULL) {
        SL_INFO("SIGHUP: no config file to reload (demo default)");
        return;
    }
    if (app->pending) {
        SL_WARN("SIGHUP: a reload is still in progress");
        return;
    }
    sl_config_t *c = calloc(1, sizeof(*c));
    char err[512];
    if (c == NULL || sl_config_load(c, app->config_path, err, sizeof(err))) {
        SL_ERROR("reload: %s; the old rules stay", c ? err : "out of memory");
        if (c) sl_config_free(c);
        free(c);
        return;
    }
    app->pending = c;
    app->reload = (sl_trig_reload_t){app->trig, c};
    app->reload_batch = (sl_store_batch_t){.job = sl_trig_reload_job, .job_arg = &app->reload,
                                           .done = on_reloaded, .data = app};
    int rc = sl_store_submit(app->store, &app->reload_batch);
    if (rc) {
        SL_ERROR("reload: %s; the old rules stay", sl_strerror(rc));
        sl_config_free(c);
        free(c);
        app->pending = NULL;
    }
}

static void on_stopped(void *arg)
{
    app_t *app = arg;
    app->stopped = 1;
    uv_close((uv_handle_t *)&app->sigterm, NULL);
    uv_close((uv_handle_t *)&app->sigint, NULL);
    uv_close((uv_handle_t *)&app->sighup, NULL);
}

static void on_signal(uv_signal_t *s, int signum)
{
    app_t *app = s->data;
    SL_INFO("received %s: finishing in-flight commits, then exiting", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    sl_webhooks_stop(app->webhooks, NULL, NULL); /* its last cursor job goes in before the store drains */
    sl_nats_stop(app->nats);                     /* so do the NATS cursors and a batch being handed over */
    sl_http_server_stop(app->srv, 10000, on_stopped, app);
}

static int cmd_serve(int argc, char **argv)
{
    args_t a;
    if (parse_args(argc, argv, &a, 0)) return 2;
    sl_config_t cfg;
    if (load_config(&a, &cfg)) return 1;
    char err[512];
    if (sl_config_check_exposure(&cfg, err, sizeof(err))) {
        fprintf(stderr, "sillage: %s\n", err);
        sl_config_free(&cfg);
        return 1;
    }
    if (check_secrets(&a, &cfg, 1)) {
        sl_config_free(&cfg);
        return 1;
    }
    struct stat sb;
    if (cfg.is_demo && cfg.geoip_db == NULL && stat(DEFAULT_GEOIP, &sb) == 0) cfg.geoip_db = strdup(DEFAULT_GEOIP);
    if (cfg.is_demo) {
        SL_INFO("no config file: running the local demo on http://%s with data in %s, "
                "write key \"demo\", admin token \"demo-admin\", the demo trigger rules%s%s",
                cfg.listen, cfg.data_dir, cfg.geoip_db ? ", GeoIP from " : ", no GeoIP database",
                cfg.geoip_db ? cfg.geoip_db : "");
    }
    signal(SIGPIPE, SIG_IGN);

    int rc, ret = 1;
    sl_store_t *store = NULL;
    /* An edge collects and forwards: the core stitches and runs the triggers. */
    int stitching = cfg.role != SL_ROLE_EDGE;
    sl_stitch_t *stitch = stitching ? sl_stitch_new(&cfg) : NULL;
    sl_trig_t *trig = stitching ? sl_trig_new(&cfg) : NULL;
    sl_store_options_t so = store_options(&cfg, 0);
    so.hooks = stitch ? sl_stitch_hooks(stitch) : NULL;
    if (stitch) sl_stitch_set_triggers(stitch, trig);
    if ((stitching && (stitch == NULL || trig == NULL)) || (rc = sl_store_open(&store, &so))) {
        fprintf(stderr, "sillage: cannot open the store in %s: %s\n", cfg.data_dir,
                sl_strerror(!stitching || (stitch && trig) ? rc : SL_ENOMEM));
        sl_stitch_free(stitch);
        sl_trig_free(trig);
        sl_config_free(&cfg);
        return 1;
    }
    if (stitch) sl_stitch_attach(stitch, store);
    app_t app = {0};
    app.store = store;
    app.trig = trig;
    app.config_path = cfg.is_demo ? NULL : a.config;
    app.loop = uv_default_loop();
    if ((rc = sl_store_start(store, app.loop))) {
        fprintf(stderr, "sillage: cannot start the writer: %s\n", sl_strerror(rc));
        goto out;
    }
    if ((rc = sl_http_server_start(&app.srv, app.loop, &cfg, store, stitch))) {
        fprintf(stderr, "sillage: cannot start the HTTP server on %s: %s\n", cfg.listen, sl_strerror(rc));
        sl_store_drain(store, NULL, NULL);
        uv_run(app.loop, UV_RUN_DEFAULT);
        goto out;
    }
    if ((rc = sl_http_server_set_triggers(app.srv, trig))) {
        fprintf(stderr, "sillage: cannot start the trigger feed: %s\n", sl_strerror(rc));
        sl_http_server_stop(app.srv, 0, NULL, NULL);
        uv_run(app.loop, UV_RUN_DEFAULT);
        goto out;
    }
    if (trig && (rc = sl_webhooks_start(&app.webhooks, app.loop, &cfg, store, trig))) {
        fprintf(stderr, "sillage: cannot start webhook delivery: %s\n", sl_strerror(rc));
        sl_http_server_stop(app.srv, 0, NULL, NULL);
        uv_run(app.loop, UV_RUN_DEFAULT);
        goto out;
    }
    sl_http_server_set_webhooks(app.srv, app.webhooks);
    if ((rc = sl_nats_start(&app.nats, app.loop, &cfg, store, app.srv, trig))) {
        fprintf(stderr, "sillage: cannot start the NATS %s: %s\n", cfg.role == SL_ROLE_EDGE ? "forwarder" : "consumer",
                sl_strerror(rc));
        sl_webhooks_stop(app.webhooks, NULL, NULL);
        sl_http_server_stop(app.srv, 0, NULL, NULL);
        uv_run(app.loop, UV_RUN_DEFAULT);
        goto out;
    }
    sl_http_server_set_nats(app.srv, app.nats);
    uv_signal_init(app.loop, &app.sigterm);
    uv_signal_init(app.loop, &app.sigint);
    uv_signal_init(app.loop, &app.sighup);
    app.sigterm.data = app.sigint.data = app.sighup.data = &app;
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sighup, on_sighup, SIGHUP);
    char host[256];
    int port;
    sl_config_split_listen(cfg.listen, host, sizeof(host), &port);
    SL_INFO("sillage %s listening on %s%s%s:%d (durability %s)", SL_VERSION, strchr(host, ':') ? "[" : "", host,
            strchr(host, ':') ? "]" : "", sl_http_server_port(app.srv),
            cfg.durability == SL_DURABLE_SYNC ? "sync" : "os");
    uv_run(app.loop, UV_RUN_DEFAULT);
    ret = app.stopped ? 0 : 1;
    SL_INFO("stopped");
out:
    sl_http_server_free(app.srv);
    uv_loop_close(app.loop);
    sl_store_close(store);
    sl_stitch_free(stitch);
    sl_trig_free(trig);
    sl_webhooks_free(app.webhooks);
    sl_nats_free(app.nats);
    if (app.rules) {
        sl_config_free(app.rules);
        free(app.rules);
    }
    sl_config_free(&cfg);
    return ret;
}

/* ---- check-config --------------------------------------------------------------- */

static int cmd_check_config(int argc, char **argv)
{
    args_t a;
    if (parse_args(argc, argv, &a, 0)) return 2;
    sl_config_t cfg;
    if (load_config(&a, &cfg)) return 1;
    char err[512];
    int rc = sl_config_check_exposure(&cfg, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "sillage: config error: %s\n", err);
        sl_config_free(&cfg);
        return 1;
    }
    if (check_secrets(&a, &cfg, 0)) {
        sl_config_free(&cfg);
        return 1;
    }
    printf("%s: OK\n  listen %s, data_dir %s, durability %s, %zu source(s), %zu trigger rule(s), %zu webhook(s)%s%s\n",
           a.config ? a.config : "demo default", cfg.listen, cfg.data_dir,
           cfg.durability == SL_DURABLE_SYNC ? "sync" : "os", cfg.n_sources, cfg.n_triggers, cfg.n_webhooks,
           cfg.geoip_db ? ", geoip_db " : "", cfg.geoip_db ? cfg.geoip_db : "");
    sl_config_free(&cfg);
    return 0;
}

/* ---- export / backup ------------------------------------------------------------- */

/* The config, and 0 when its data directory holds a store; else says why,
 * frees the config and returns 1. Commands that read a store never create one. */
static int load_existing(const args_t *a, sl_config_t *cfg)
{
    if (load_config(a, cfg)) return 1;
    char path[4096];
    snprintf(path, sizeof(path), "%s/data.mdb", cfg->data_dir);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "sillage: no store in %s (no data.mdb)\n", cfg->data_dir);
        sl_config_free(cfg);
        return 1;
    }
    return 0;
}

static int open_existing(const args_t *a, sl_config_t *cfg, sl_store_t **st)
{
    if (load_existing(a, cfg)) return 1;
    sl_store_options_t so = store_options(cfg, 1);
    int rc = sl_store_open(st, &so);
    if (rc) {
        fprintf(stderr, "sillage: cannot open the store in %s: %s\n", cfg->data_dir, sl_strerror(rc));
        sl_config_free(cfg);
        return 1;
    }
    return 0;
}

static int print_event(const char *json, size_t len, uint64_t seq, void *arg)
{
    (void)seq;
    (void)arg;
    if (fwrite(json, 1, len, stdout) != len || fputc('\n', stdout) == EOF) return SL_ESTORE;
    return 0;
}

static int cmd_export(int argc, char **argv)
{
    args_t a;
    if (parse_args(argc, argv, &a, 0)) return 2;
    sl_config_t cfg;
    sl_store_t *st;
    if (open_existing(&a, &cfg, &st)) return 1;
    int rc = sl_store_foreach_event(st, print_event, NULL);
    if (fflush(stdout) != 0) rc = SL_ESTORE;
    if (rc) fprintf(stderr, "sillage: export failed: %s\n", rc == SL_ESTORE ? "cannot write to stdout" : sl_strerror(rc));
    sl_store_close(st);
    sl_config_free(&cfg);
    return rc ? 1 : 0;
}

typedef struct {
    sl_stitch_t *stitch;
    sl_store_t *st;
    sl_verify_report_t rep;
} verify_req_t;

static int verify_cb(MDB_txn *txn, void *arg)
{
    verify_req_t *q = arg;
    return sl_stitch_verify(q->stitch, txn, q->st, stdout, &q->rep);
}

/* sillage verify: the consistency check of a stopped (or running) store. */
static int cmd_verify(int argc, char **argv)
{
    args_t a;
    if (parse_args(argc, argv, &a, 0)) return 2;
    sl_config_t cfg;
    if (load_existing(&a, &cfg)) return 1;
    sl_stitch_t *stitch = sl_stitch_new(&cfg);
    sl_trig_t *trig = sl_trig_new(&cfg);
    if (stitch && trig) sl_stitch_set_triggers(stitch, trig);
    sl_store_options_t so = store_options(&cfg, 1);
    so.hooks = stitch ? sl_stitch_hooks(stitch) : NULL;
    verify_req_t q = {stitch, NULL, {0}};
    int rc = stitch && trig ? sl_store_open(&q.st, &so) : SL_ENOMEM;
    if (rc == 0) rc = sl_store_read(q.st, verify_cb, &q);
    if (rc) fprintf(stderr, "sillage: verify failed: %s\n", sl_strerror(rc));
    else printf("%llu events (%llu indexed), %llu identifiers, %llu persons, %llu triggers: %llu problems\n",
                (unsigned long long)q.rep.events, (unsigned long long)q.rep.indexed,
                (unsigned long long)q.rep.identifiers, (unsigned long long)q.rep.persons,
                (unsigned long long)q.rep.triggers, (unsigned long long)q.rep.problems);
    if (q.st) sl_store_close(q.st);
    sl_stitch_free(stitch);
    sl_trig_free(trig);
    sl_config_free(&cfg);
    return rc || q.rep.problems ? 1 : 0;
}

static int cmd_backup(int argc, char **argv)
{
    args_t a;
    if (parse_args(argc, argv, &a, 1)) return 2;
    if (a.dest == NULL) {
        fprintf(stderr, "sillage: backup needs a destination directory\n");
        usage(stderr);
        return 2;
    }
    sl_config_t cfg;
    sl_store_t *st;
    if (open_existing(&a, &cfg, &st)) return 1;
    int rc = sl_store_backup(st, a.dest);
    if (rc) fprintf(stderr, "sillage: backup to %s failed: %s\n", a.dest,
                    rc == -EEXIST ? "it already holds a data.mdb" : sl_strerror(rc));
    else printf("backup of %s written to %s/data.mdb\n", cfg.data_dir, a.dest);
    sl_store_close(st);
    sl_config_free(&cfg);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    sl_json_hooks_install();
    if (strcmp(cmd, "serve") == 0) return cmd_serve(argc, argv);
    if (strcmp(cmd, "check-config") == 0) return cmd_check_config(argc, argv);
    if (strcmp(cmd, "export") == 0) return cmd_export(argc, argv);
    if (strcmp(cmd, "backup") == 0) return cmd_backup(argc, argv);
    if (strcmp(cmd, "verify") == 0) return cmd_verify(argc, argv);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("sillage %s (libuv %s, %s, llhttp %d.%d.%d, cJSON %s, libmaxminddb %s, zlib %s)\n", SL_VERSION,
               uv_version_string(), MDB_VERSION_STRING, LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR,
               LLHTTP_VERSION_PATCH, cJSON_Version(), MMDB_lib_version(), zlibVersion());
        return 0;
    }
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "sillage: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
