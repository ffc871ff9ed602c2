/* sillage.c - the command line: serve, check-config, export, backup, version. */
#define _GNU_SOURCE
#include "sl_audiences.h"
#include "sl_collector.h"
#include "sl_common.h"
#include "sl_config.h"
#include "sl_feed.h"
#include "sl_stage.h"
#include "sl_stitch.h"
#include "sl_triggers.h"
#include "sl_webhooks.h"
#include "sl_nats.h"
#include "sl_store.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <lmdb.h>
#include <maxminddb.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
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
            "  sillage rebuild [-c FILE] [--data DIR]  derive profiles, timelines and trigger state again from the log\n"
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
    sl_timezone_apply(cfg->timezone); /* before any thread: computed windows' calendar days */
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

/* The derived environment: <data_dir>/derived. */
static sl_stage_options_t stage_options(const sl_config_t *cfg, char *dir, size_t dirlen, int read_only)
{
    snprintf(dir, dirlen, "%s/derived", cfg->data_dir);
    sl_stage_options_t o = {
        .dir = dir,
        .map_size_bytes = cfg->map_size_bytes,
        .map_size_max_bytes = cfg->map_size_max_bytes,
        .nosync = cfg->durability == SL_DURABLE_OS,
        .read_only = read_only,
        .nice = 10,
        .max_lag_events = cfg->limits.max_stage_lag,
        .commit_interval_ms = (uint32_t)cfg->limits.stage_commit_interval_ms,
    };
    return o;
}

/* What derives from the log: the stage, the stitcher its first step, the
 * feed its second, the trigger engine its third (and a listener of the
 * stitcher, appending to the feed). Delivery (webhooks) adds its own step
 * before the stage opens. */
typedef struct derived_s {
    sl_stage_t *stage;
    sl_stitch_t *stitch;
    sl_fields_t *fields;
    sl_feed_t *feed;
    sl_trig_t *trig;
    sl_aud_t *aud;
    char dir[4096];
} derived_t;

/* dir: a scratch directory that a rebuild fills (flushed once, at the end) */
static int derived_new_at(derived_t *d, const sl_config_t *cfg, sl_store_t *store, int read_only, const char *dir)
{
    memset(d, 0, sizeof(*d));
    sl_stage_options_t o = stage_options(cfg, d->dir, sizeof(d->dir), read_only);
    if (dir) {
        snprintf(d->dir, sizeof(d->dir), "%s", dir);
        o.bulk = 1;
    }
    d->stage = sl_stage_new(store, &o);
    d->stitch = sl_stitch_new(cfg, store);
    d->fields = d->stitch ? sl_fields_new(cfg, d->stitch) : NULL;
    d->feed = sl_feed_new(cfg->trigger_retention_ms);
    d->trig = d->fields && d->feed ? sl_trig_new(cfg, d->stitch, d->fields, d->feed) : NULL;
    d->aud = d->fields && d->feed ? sl_aud_new(cfg, d->stitch, d->fields, d->feed) : NULL;
    if (d->stage == NULL || d->stitch == NULL || d->fields == NULL || d->feed == NULL || d->trig == NULL ||
        d->aud == NULL)
        return SL_ENOMEM;
    int rc = sl_stage_add_step(d->stage, sl_stitch_step(d->stitch));
    if (rc == 0) rc = sl_fields_attach(d->fields, d->stage);
    if (rc == 0) rc = sl_feed_attach(d->feed, d->stage);
    if (rc == 0) rc = sl_trig_attach(d->trig, d->stage);
    sl_trig_set_audiences(d->trig, d->aud); /* pressure tiers */
    return rc ? rc : sl_aud_attach(d->aud, d->stage); /* after the engine: its erasure hook runs after the engine's */
}

static int derived_new(derived_t *d, const sl_config_t *cfg, sl_store_t *store, int read_only)
{
    return derived_new_at(d, cfg, store, read_only, NULL);
}

static void derived_free(derived_t *d)
{
    sl_stage_free(d->stage);
    sl_trig_free(d->trig);
    sl_aud_free(d->aud);
    sl_feed_free(d->feed);
    sl_fields_free(d->fields);
    sl_stitch_free(d->stitch);
}

/* ---- the data directory: its lock, and the derived store's state ---------------- */

/* serve and rebuild hold an exclusive flock() on the data directory itself
 * for their whole run (the kernel drops it when the process ends, however it
 * ends; a directory cannot be unlinked from under it the way a lock file
 * could). A rebuild beside a live server swapped derived/ under it, and an
 * erasure made meanwhile came back at the next start (issue 21, M1).
 * export, verify and backup take no lock: they read from read transactions,
 * beside a server or a rebuild alike. data_dir/sillage.pid names the holder
 * (for the message only). Returns the descriptor (kept open), or -1 after
 * saying why; `doing` names what the caller is about to do. */
static int lock_data_dir(const char *data_dir, const char *doing)
{
    char path[4200], holder[64] = "";
    int rc = sl_mkdir_p(data_dir);
    if (rc) {
        fprintf(stderr, "sillage: cannot create %s: %s\n", data_dir, sl_strerror(rc));
        return -1;
    }
    int fd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "sillage: cannot open %s: %s\n", data_dir, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof(path), "%s/sillage.pid", data_dir);
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        int pfd = e == EWOULDBLOCK ? open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
        ssize_t n = pfd >= 0 ? read(pfd, holder, sizeof(holder) - 1) : -1;
        if (pfd >= 0) close(pfd);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            fprintf(stderr, "sillage: another sillage (a server or a rebuild%s%s) is using %s: it holds a lock on "
                            "the directory, which is never stale (it goes with its process). Stop it before you %s\n",
                    holder[0] ? ", process " : "", holder, data_dir, doing);
        else fprintf(stderr, "sillage: cannot lock %s: %s\n", data_dir, strerror(e));
        close(fd);
        return -1;
    }
    int pfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (pfd >= 0) {
        char pid[32];
        int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
        if (write(pfd, pid, (size_t)n) != n) { /* only the message above reads it */ }
        close(pfd);
    }
    return fd;
}

/* serve refuses a derived store that is missing beside a non-empty log, or
 * the leftovers of an interrupted rebuild: deriving the whole log again with
 * the rules live fired every past trigger a second time, and the next
 * rebuild deleted the real feed left in derived.old/ (issue 21, M2).
 * 0 when serving is safe; else 1 after saying which command to run. */
static int derived_ready(const sl_config_t *cfg, sl_store_t *store, const args_t *a)
{
    static const char *const leftovers[] = {"derived.old", "derived.rebuild"};
    char path[4300];
    struct stat sb;
    const char *cflag = a->config ? " -c " : "", *cpath = a->config ? a->config : "";
    for (size_t i = 0; i < sizeof(leftovers) / sizeof(*leftovers); i++) {
        snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, leftovers[i]);
        if (lstat(path, &sb) == 0) {
            fprintf(stderr, "sillage: %s is left by an interrupted `sillage rebuild`: run `sillage rebuild%s%s` "
                            "(it takes up the store in place and its trigger feed), then start again\n",
                    path, cflag, cpath);
            return 1;
        }
    }
    snprintf(path, sizeof(path), "%s/derived/data.mdb", cfg->data_dir);
    uint64_t events = sl_store_durable_seq(store);
    if (events > 0 && stat(path, &sb) != 0) {
        fprintf(stderr, "sillage: the log in %s holds events (up to %llu) but there is no derived store (%s): "
                        "serving would derive the whole log again with the trigger rules live and fire every "
                        "past trigger a second time. Run `sillage rebuild%s%s` (it derives with the rules "
                        "muted), then start again\n",
                cfg->data_dir, (unsigned long long)events, path, cflag, cpath);
        return 1;
    }
    return 0;
}

/* ---- serve ------------------------------------------------------------------- */

typedef struct app_s {
    uv_loop_t *loop;
    sl_server_t *srv;
    sl_store_t *store;
    sl_stage_t *stage;
    sl_feed_t *feed;
    sl_fields_t *fields;
    sl_aud_t *aud;
    sl_trig_t *trig;
    sl_webhooks_t *webhooks;
    sl_nats_t *nats;
    const char *config_path;    /* NULL: the demo default, nothing to reload */
    sl_config_t *rules;         /* the rules of the last reload (heap), or NULL */
    sl_config_t **retired;      /* rules a reload replaced: kept until exit (a profile read on the
                                 * threadpool may still be walking them), one per SIGHUP */
    size_t n_retired;
    sl_config_t *pending;       /* a reload in flight */
    sl_trig_reload_t reload;
    sl_stage_job_t reload_job;
    uv_signal_t sigterm, sigint, sighup;
    const sl_config_t *cfg;     /* as read at start (retention is not reloaded) */
    sl_http_loops_t *loops;     /* ingest_loops > 1: the other loops */
    sl_stitch_prune_t prune;    /* retention: one run at a time */
    uv_timer_t prune_timer;
    int64_t prune_every_ms;     /* 0: no retention configured */
    int stopping, stopped;
} app_t;

/* ---- retention: a pruning run now and then (sl_stitch.h) ---- */

static void prune_submit(uv_timer_t *t)
{
    app_t *app = t->data;
    if (app->stopping) return;
    sl_stitch_prune_t *p = &app->prune;
    p->upto = sl_stage_applied(app->stage);
    if (sl_stage_submit(app->stage, &p->job)) uv_timer_start(&app->prune_timer, prune_submit, 1000, 0);
}

static void prune_done(sl_stage_job_t *job)
{
    sl_stitch_prune_t *p = job->arg; /* the prune request, a member of the app */
    app_t *a = (app_t *)(void *)((char *)p - offsetof(app_t, prune));
    if (job->rc && job->rc != SL_ESHUTDOWN) SL_ERROR("retention: a pruning run failed (%s); retrying", sl_strerror(job->rc));
    if (p->pruned || p->held)
        SL_INFO("retention: %llu events pruned, %llu past their age kept while a trigger in the feed names them",
                (unsigned long long)p->pruned, (unsigned long long)p->held);
    if (a->stopping) return;
    uv_timer_start(&a->prune_timer, prune_submit, (uint64_t)sl_config_retention_wait_ms(a->cfg, job->rc != 0, p->more), 0);
}

static int reload_run(MDB_txn *txn, void *arg)
{
    app_t *app = arg;
    int rc = sl_trig_reload_job(txn, &app->reload);
    if (rc == 0) sl_feed_set_retention(app->feed, app->reload.cfg->trigger_retention_ms);
    if (rc == 0) rc = sl_fields_reload(app->fields, txn, app->reload.cfg);
    if (rc == 0) rc = sl_aud_reload(app->aud, txn, app->reload.cfg);
    return rc;
}

static void on_reloaded(sl_stage_job_t *b)
{
    app_t *app = b->arg;
    if (b->rc) {
        SL_ERROR("reload: the rules could not be switched (%s); the old ones stay", sl_strerror(b->rc));
        sl_config_free(app->pending);
        free(app->pending);
    } else {
        /* The stage runs the new rules now; the previous copy is kept: a
         * profile read on libuv's threadpool may still be walking it (a few
         * KB per SIGHUP, freed at exit). */
        sl_config_t **r = app->rules ? realloc(app->retired, (app->n_retired + 1) * sizeof(*r)) : NULL;
        if (r) {
            app->retired = r;
            app->retired[app->n_retired++] = app->rules;
        } else if (app->rules) {
            SL_WARN("reload: out of memory keeping the previous rules: they leak");
        }
        app->rules = app->pending;
        SL_INFO("reload: %zu trigger rules, %zu webhooks from %s", sl_trig_rule_count(app->rules), app->rules->n_webhooks,
                app->config_path);
    }
    app->pending = NULL;
}

/* SIGHUP: the trigger rules, pressure cap, retention and computed section
 * are read again from the config file; timers and rule states go on under
 * their rule names. The other settings need a restart. */
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
    app->reload = (sl_trig_reload_t){.trig = app->trig, .cfg = c};
    app->reload_job = (sl_stage_job_t){.run = reload_run, .done = on_reloaded, .arg = app};
    int rc = sl_stage_submit(app->stage, &app->reload_job);
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
    if (app->prune_every_ms) uv_close((uv_handle_t *)&app->prune_timer, NULL);
    uv_close((uv_handle_t *)&app->sigterm, NULL);
    uv_close((uv_handle_t *)&app->sigint, NULL);
    uv_close((uv_handle_t *)&app->sighup, NULL);
}

/* The other loops stopped (or there are none): the main server stops and
 * drains the store. */
static void stop_main_server(void *arg)
{
    app_t *app = arg;
    sl_http_server_stop(app->srv, 10000, on_stopped, app);
}

static void on_signal(uv_signal_t *s, int signum)
{
    app_t *app = s->data;
    SL_INFO("received %s: finishing in-flight commits, then exiting", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    app->stopping = 1;
    if (app->prune_every_ms) uv_timer_stop(&app->prune_timer);
    sl_webhooks_stop(app->webhooks, NULL, NULL); /* its last cursor job goes in before the store drains */
    sl_nats_stop(app->nats);                     /* so do the NATS cursors and a batch being handed over */
    if (app->loops) sl_http_loops_stop(app->loops, 10000, stop_main_server, app); /* theirs first */
    else stop_main_server(app);
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
    app_t app = {0};
    derived_t d = {0};
    int lock = lock_data_dir(cfg.data_dir, "start a server on it");
    if (lock < 0) {
        sl_config_free(&cfg);
        return 1;
    }
    sl_store_options_t so = store_options(&cfg, 0);
    if ((rc = sl_store_open(&store, &so))) {
        fprintf(stderr, "sillage: cannot open the store in %s: %s\n", cfg.data_dir, sl_strerror(rc));
        sl_config_free(&cfg);
        close(lock);
        return 1;
    }
    /* A store written before the pipeline holds its derived state beside
     * the log: `sillage rebuild` moves it (nothing is fired twice). */
    if (cfg.role != SL_ROLE_EDGE && sl_store_has_db(store, "persons") == 1) {
        fprintf(stderr, "sillage: %s holds the identity graph beside the log (a store of sillage before the "
                        "pipeline): stop every sillage on it and run `sillage rebuild%s%s`, then start again\n",
                cfg.data_dir, a.config ? " -c " : "", a.config ? a.config : "");
        goto out_early;
    }
    /* An edge collects and forwards: the core derives. */
    if (cfg.role != SL_ROLE_EDGE) {
        if (derived_ready(&cfg, store, &a)) goto out_early;
        if ((rc = derived_new(&d, &cfg, store, 0))) {
            fprintf(stderr, "sillage: cannot open the derived store in %s: %s\n", d.dir, sl_strerror(rc));
            goto out_early;
        }
    }
    app.cfg = &cfg;
    app.store = store;
    app.stage = d.stage;
    app.feed = d.feed;
    app.fields = d.fields;
    app.aud = d.aud;
    app.trig = d.trig;
    app.config_path = cfg.is_demo ? NULL : a.config;
    app.loop = uv_default_loop();
    /* Who listens to whom is wired before anything starts (webhooks add a
     * step for their cursors: before the stage opens). */
    if ((rc = sl_webhooks_new(&app.webhooks, &cfg, d.stage, d.feed)) ||
        (rc = sl_nats_new(&app.nats, &cfg, store, d.stage, d.feed))) {
        fprintf(stderr, "sillage: cannot set up delivery: %s\n", sl_strerror(rc));
        goto out_early;
    }
    if (d.stage && (rc = sl_stage_open(d.stage))) {
        fprintf(stderr, "sillage: cannot open the derived store in %s: %s\n", d.dir, sl_strerror(rc));
        goto out_early;
    }
    if ((rc = sl_store_start(store, app.loop))) {
        fprintf(stderr, "sillage: cannot start the writer: %s\n", sl_strerror(rc));
        goto out;
    }
    if ((rc = sl_http_server_start(&app.srv, app.loop, &cfg, store))) {
        fprintf(stderr, "sillage: cannot start the HTTP server on %s: %s\n", cfg.listen, sl_strerror(rc));
        sl_store_drain(store, NULL, NULL);
        uv_run(app.loop, UV_RUN_DEFAULT);
        goto out;
    }
    if (d.stage) {
        sl_http_server_add_metrics(app.srv, sl_stage_metrics, d.stage);
        sl_http_server_add_metrics(app.srv, sl_stitch_metrics, d.stitch);
        sl_http_server_add_metrics(app.srv, sl_fields_metrics, d.fields);
        sl_http_server_add_metrics(app.srv, sl_trig_metrics, d.trig);
    }
    if (app.webhooks) sl_http_server_add_metrics(app.srv, sl_webhooks_metrics, app.webhooks);
    if (app.nats) sl_http_server_add_metrics(app.srv, sl_nats_metrics, app.nats);
    if (d.stage) sl_http_server_set_fields(app.srv, d.fields);
    if (d.stage) sl_http_server_set_audiences(app.srv, d.aud);
    if (d.stage && ((rc = sl_http_server_set_stage(app.srv, d.stage, d.stitch, d.trig, d.feed)) ||
                    (rc = sl_stage_start(d.stage, app.loop)))) {
        fprintf(stderr, "sillage: cannot start the derivation stage: %s\n", sl_strerror(rc));
        sl_http_server_stop(app.srv, 0, NULL, NULL);
        uv_run(app.loop, UV_RUN_DEFAULT);
        goto out;
    }
    if ((rc = sl_webhooks_start(app.webhooks, app.loop)) || (rc = sl_nats_start(app.nats, app.loop))) {
        fprintf(stderr, "sillage: cannot start %s: %s\n", cfg.role == SL_ROLE_ALL ? "webhook delivery" : "NATS",
                sl_strerror(rc));
        sl_webhooks_stop(app.webhooks, NULL, NULL);
        sl_nats_stop(app.nats);
        sl_http_server_stop(app.srv, 0, NULL, NULL);
        uv_run(app.loop, UV_RUN_DEFAULT);
        goto out;
    }
    if (cfg.ingest_loops > 1 && (rc = sl_http_loops_start(&app.loops, app.srv, cfg.ingest_loops - 1))) {
        fprintf(stderr, "sillage: cannot start %d more loops on %s: %s\n", cfg.ingest_loops - 1, cfg.listen,
                sl_strerror(rc));
        sl_webhooks_stop(app.webhooks, NULL, NULL);
        sl_nats_stop(app.nats);
        sl_http_loops_stop(app.loops, 0, stop_main_server, &app);
        uv_run(app.loop, UV_RUN_DEFAULT);
        goto out;
    }
    uv_signal_init(app.loop, &app.sigterm);
    uv_signal_init(app.loop, &app.sigint);
    uv_signal_init(app.loop, &app.sighup);
    app.sigterm.data = app.sigint.data = app.sighup.data = &app;
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sighup, on_sighup, SIGHUP);
    if (d.stage && (app.prune_every_ms = sl_stitch_prune_interval_ms(d.stitch)) > 0) {
        sl_stitch_prune_init(&app.prune, d.stitch, prune_done);
        uv_timer_init(app.loop, &app.prune_timer);
        app.prune_timer.data = &app;
        uv_timer_start(&app.prune_timer, prune_submit, 1000, 0);
        SL_INFO("retention: pruning what is past its age, each event looked at again every %lld s",
                (long long)(app.prune_every_ms / 1000));
    }
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
    sl_http_loops_free(app.loops);
    sl_http_server_free(app.srv);
    uv_loop_close(app.loop);
out_early:
    derived_free(&d);
    sl_stitch_prune_free(&app.prune);
    sl_store_close(store);
    sl_webhooks_free(app.webhooks);
    sl_nats_free(app.nats);
    if (app.rules) {
        sl_config_free(app.rules);
        free(app.rules);
    }
    for (size_t i = 0; i < app.n_retired; i++) {
        sl_config_free(app.retired[i]);
        free(app.retired[i]);
    }
    free(app.retired);
    sl_config_free(&cfg);
    close(lock);
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
    /* serve would refuse to start without it: say so now (a package built
     * without the CC0 database once carried a config naming it) */
    sl_geo_t *geo = NULL;
    if (cfg.geoip_db && sl_geo_open(&geo, cfg.geoip_db)) {
        fprintf(stderr, "sillage: config error: geoip_db %s cannot be opened as a MaxMind database (see the line "
                        "above); serve would refuse to start\n", cfg.geoip_db);
        sl_config_free(&cfg);
        return 1;
    }
    sl_geo_close(geo);
    printf("%s: OK\n  listen %s, data_dir %s, durability %s, %zu source(s), %zu trigger rule(s), %zu webhook(s)%s%s\n",
           a.config ? a.config : "demo default", cfg.listen, cfg.data_dir,
           cfg.durability == SL_DURABLE_SYNC ? "sync" : "os", cfg.n_sources, sl_trig_rule_count(&cfg), cfg.n_webhooks,
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
    derived_t *d;
    sl_verify_report_t rep;
    uint64_t *aside;            /* events set aside, in order */
    size_t n_aside, cap_aside;
} verify_req_t;

static int collect_aside(uint64_t seq, const char *why, void *arg)
{
    (void)why;
    verify_req_t *q = arg;
    if (q->n_aside == q->cap_aside) {
        size_t cap = q->cap_aside ? q->cap_aside * 2 : 64;
        uint64_t *n = realloc(q->aside, cap * sizeof(*n));
        if (n == NULL) return SL_ENOMEM;
        q->aside = n;
        q->cap_aside = cap;
    }
    q->aside[q->n_aside++] = seq;
    return 0;
}

static int is_aside(uint64_t seq, void *arg)
{
    verify_req_t *q = arg;
    size_t lo = 0, hi = q->n_aside;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (q->aside[mid] < seq) lo = mid + 1;
        else hi = mid;
    }
    return lo < q->n_aside && q->aside[lo] == seq;
}

static int verify_feed(void *arg, MDB_txn *txn, int (*has_message)(const char *, void *), void *hm_arg, FILE *out,
                       uint64_t *n, uint64_t *problems)
{
    return sl_feed_verify(arg, txn, has_message, hm_arg, out, n, problems);
}

static int verify_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    verify_req_t *q = arg;
    sl_verify_opts_t o = {.log_txn = log_txn, .applied = sl_stage_applied(q->d->stage), .skip = is_aside,
                          .skip_arg = q, .also = verify_feed, .also_arg = q->d->feed};
    int rc = sl_stitch_verify(q->d->stitch, txn, &o, stdout, &q->rep);
    uint64_t pending = 0;
    if (rc == 0) rc = sl_trig_verify_states(q->d->trig, txn, log_txn, stdout, &pending, &q->rep.problems);
    if (rc == 0 && pending) printf("%llu pending triggers checked\n", (unsigned long long)pending);
    uint64_t orders = 0, gpersons = 0;
    if (rc == 0) rc = sl_fields_verify(q->d->fields, txn, stdout, &orders, &q->rep.problems);
    if (rc == 0) printf("%llu orders checked against their persons' computed fields\n", (unsigned long long)orders);
    uint64_t order_events = 0;
    if (rc == 0)
        rc = sl_fields_verify_ledger(q->d->fields, txn, log_txn, is_aside, q, sl_stage_applied(q->d->stage), stdout,
                                     &order_events, &q->rep.problems);
    if (rc == 0) printf("%llu stored order events found in the ledger\n", (unsigned long long)order_events);
    /* the generic fields replayed from the events: not where retention pruned events they counted */
    if (rc == 0 && sl_stitch_prune_interval_ms(q->d->stitch) == 0) {
        rc = sl_fields_verify_generic(q->d->fields, txn, log_txn, is_aside, q, sl_now_ms(), stdout, &gpersons,
                                      &q->rep.problems);
        if (rc == 0 && gpersons)
            printf("%llu persons' generic computed fields recomputed from their events\n", (unsigned long long)gpersons);
    } else if (rc == 0) {
        printf("generic computed fields not recomputed: retention prunes events they counted\n");
    }
    uint64_t apersons = 0;
    if (rc == 0) rc = sl_aud_verify(q->d->aud, txn, sl_now_ms(), stdout, &apersons, &q->rep.problems);
    if (rc == 0 && apersons) printf("%llu persons' audiences evaluated again\n", (unsigned long long)apersons);
    return rc;
}

/* The log and the derived store of cfg, read-only; 1 after saying why. */
static int open_both(const args_t *a, sl_config_t *cfg, sl_store_t **st, derived_t *d)
{
    if (open_existing(a, cfg, st)) return 1;
    int rc = derived_new(d, cfg, *st, 1);
    char path[4200];
    snprintf(path, sizeof(path), "%s/data.mdb", d->dir);
    struct stat sb;
    if (rc == 0 && stat(path, &sb) != 0) rc = SL_ENOTFOUND;
    if (rc == 0) rc = sl_stage_open(d->stage);
    if (rc) {
        fprintf(stderr, "sillage: cannot open the derived store in %s: %s\n", d->dir,
                rc == SL_ENOTFOUND ? "there is none (an edge, or a store never served: `sillage rebuild` makes it)"
                                   : sl_strerror(rc));
        derived_free(d);
        sl_store_close(*st);
        sl_config_free(cfg);
        return 1;
    }
    return 0;
}

/* sillage verify: the consistency check of a stopped (or running) store. */
static int cmd_verify(int argc, char **argv)
{
    args_t a;
    if (parse_args(argc, argv, &a, 0)) return 2;
    sl_config_t cfg;
    sl_store_t *st;
    derived_t d;
    if (open_both(&a, &cfg, &st, &d)) return 1;
    verify_req_t q = {&d, {0}, NULL, 0, 0};
    int rc = sl_stage_set_aside(d.stage, SIZE_MAX, collect_aside, &q);
    if (rc == 0) rc = sl_stage_read(d.stage, 1, verify_cb, &q);
    if (rc) fprintf(stderr, "sillage: verify failed: %s\n", sl_strerror(rc));
    else printf("%llu events (%llu indexed, %zu set aside, applied up to %llu), %llu identifiers, %llu persons, "
                "%llu triggers: %llu problems\n",
                (unsigned long long)q.rep.events, (unsigned long long)q.rep.indexed, q.n_aside,
                (unsigned long long)sl_stage_applied(d.stage), (unsigned long long)q.rep.identifiers,
                (unsigned long long)q.rep.persons, (unsigned long long)q.rep.triggers,
                (unsigned long long)q.rep.problems);
    free(q.aside);
    derived_free(&d);
    sl_store_close(st);
    sl_config_free(&cfg);
    return rc || q.rep.problems ? 1 : 0;
}

/* ---- rebuild ------------------------------------------------------------------- */

/* The databases a store kept beside the log before the pipeline. */
static const char *const legacy_dbs[] = {"ids", "persons", "tl", "journal", "pjournal", "smeta", "feed", "timers",
                                         "tstate", "pressure", "tmeta", NULL};

typedef struct {
    derived_t *d;
    MDB_txn *src;          /* the old feed and cursors */
    uint64_t total;
    int64_t t0;
    int tty;
} rebuild_t;

static int carry_run(MDB_txn *txn, void *arg)
{
    rebuild_t *r = arg;
    if (r->src == NULL) return 0;
    int rc = sl_feed_carry_over(r->d->feed, txn, r->src);
    return rc ? rc : sl_webhooks_carry_over(txn, r->src);
}

static void rebuild_progress(uint64_t applied, void *arg)
{
    rebuild_t *r = arg;
    if (!r->tty) return;
    double s = (double)(sl_now_ms() - r->t0) / 1000;
    fprintf(stderr, "\rrebuild: %llu / %llu events (%.0f%%, %.0f events/s)   ", (unsigned long long)applied,
            (unsigned long long)r->total, r->total ? 100.0 * (double)applied / (double)r->total : 100.0,
            s > 0 ? (double)applied / s : 0.0);
}

typedef struct {
    rebuild_t *r;
    uint64_t upto;
    int rc;
} rebuild_legacy_t;

/* Old layout: the feed is read from the log's own environment. */
static int rebuild_in_log_txn(MDB_txn *log_txn, void *arg)
{
    rebuild_legacy_t *x = arg;
    x->r->src = log_txn;
    sl_stage_job_t job = {.run = carry_run, .arg = x->r};
    return x->rc = sl_stage_catch_up(x->r->d->stage, &job, x->upto, rebuild_progress, x->r);
}

/* Removes an LMDB environment's directory (its files, no subdirectory); a
 * missing one is already removed. 0, or -1 with errno set. */
static int remove_env_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) return errno == ENOENT ? 0 : -1;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (unlink(path) != 0 && errno != ENOENT) rc = -1;
    }
    int saved = errno;
    closedir(d);
    errno = saved;
    if (rc == 0 && rmdir(dir) != 0 && errno != ENOENT) rc = -1;
    return rc;
}

/* fsync of a directory: a rename in it is on disk once this returns. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* What an interrupted rebuild left, made whole before a new one starts.
 * derived.old/ is from a build before issue 21, which put the new store in
 * place with two renames: without derived/ it is the store in place (the
 * crash fell between the renames) and goes back; beside derived/ it is the
 * replaced store that could not be removed. derived.rebuild/ is scratch, or
 * the replaced store after an exchange. 0, or -1 after saying why. */
static int rebuild_tidy(const char *cur, const char *tmp, const char *old)
{
    char path[4300];
    struct stat sb;
    snprintf(path, sizeof(path), "%s/data.mdb", old);
    int old_store = stat(path, &sb) == 0;
    snprintf(path, sizeof(path), "%s/data.mdb", cur);
    if (old_store && stat(path, &sb) != 0) {
        if (remove_env_dir(cur) != 0 || rename(old, cur) != 0) {
            fprintf(stderr, "sillage: cannot put %s back in place of %s: %s\n", old, cur, strerror(errno));
            return -1;
        }
        fprintf(stderr, "sillage: %s was the store in place (a rebuild stopped between its renames): put back\n",
                old);
    }
    const char *left = remove_env_dir(tmp) ? tmp : remove_env_dir(old) ? old : NULL;
    if (left) {
        fprintf(stderr, "sillage: cannot clear %s: %s\n", left, strerror(errno));
        return -1;
    }
    return 0;
}

/* sillage rebuild: derives everything again from the log into a new derived
 * store, then puts it in place of the old one. The trigger feed and the
 * webhook cursors are carried over, and the engine is muted while it
 * replays: rule states and timers are rebuilt, timers that came due are
 * consumed, no trigger is appended -- none fires twice. It refuses to run
 * beside a server (the data directory's lock): a server would go on writing
 * to the store it replaces. The swap is one renameat2(RENAME_EXCHANGE): at
 * every instant derived/ is a whole store, the old or the new. */
static int cmd_rebuild(int argc, char **argv)
{
    args_t a;
    if (parse_args(argc, argv, &a, 0)) return 2;
    sl_config_t cfg;
    if (load_existing(&a, &cfg)) return 1;
    int lock = lock_data_dir(cfg.data_dir, "run sillage rebuild (beside a server it would swap the derived "
                                           "store under it, and undo what the server derives meanwhile)");
    if (lock < 0) {
        sl_config_free(&cfg);
        return 1;
    }
    sl_store_t *st = NULL;
    sl_store_options_t so = store_options(&cfg, 0);
    int rc = sl_store_open(&st, &so);
    if (rc) {
        fprintf(stderr, "sillage: cannot open the store in %s: %s\n", cfg.data_dir, sl_strerror(rc));
        sl_config_free(&cfg);
        close(lock);
        return 1;
    }
    char cur[4200], tmp[4200], old[4200], path[4300];
    snprintf(cur, sizeof(cur), "%s/derived", cfg.data_dir);
    snprintf(tmp, sizeof(tmp), "%s/derived.rebuild", cfg.data_dir);
    snprintf(old, sizeof(old), "%s/derived.old", cfg.data_dir);
    struct stat lsb;
    if (lstat(cur, &lsb) == 0 && S_ISLNK(lsb.st_mode)) {
        /* the exchange would move the link, and the store behind it would be emptied as "the old one" */
        fprintf(stderr, "sillage: %s is a symbolic link: rebuild swaps directories inside %s and cannot keep the "
                        "derived store elsewhere; move it back into the data directory (nothing was changed)\n",
                cur, cfg.data_dir);
        rc = SL_EINVAL;
    }
    if (rc == 0 && rebuild_tidy(cur, tmp, old)) rc = SL_EINVAL;
    int legacy = rc == 0 ? sl_store_has_db(st, "persons") : 0;
    snprintf(path, sizeof(path), "%s/data.mdb", cur);
    struct stat sb;
    int have_derived = stat(path, &sb) == 0;
    derived_t d = {0};
    rebuild_t r = {.d = &d, .t0 = sl_now_ms(), .tty = isatty(2)};
    r.total = sl_store_durable_seq(st);
    if (rc == 0) rc = derived_new_at(&d, &cfg, st, 0, tmp);
    if (rc == 0) rc = sl_stage_open(d.stage);
    if (rc == 0) sl_trig_mute(d.trig, 1);
    if (rc == 0) sl_aud_mute(d.aud, 1);
    MDB_env *oenv = NULL;
    MDB_txn *otxn = NULL;
    if (rc == 0 && have_derived) { /* the feed of the derived store in place */
        if ((rc = mdb_env_create(&oenv)) == 0 && (rc = mdb_env_set_maxdbs(oenv, 32)) == 0 &&
            (rc = mdb_env_open(oenv, cur, MDB_RDONLY | MDB_NOTLS, 0640)) == 0)
            rc = mdb_txn_begin(oenv, NULL, MDB_RDONLY, &otxn);
        r.src = otxn;
    }
    if (rc == 0 && !have_derived && legacy == 1) { /* the feed still in the log */
        rebuild_legacy_t x = {&r, r.total, 0};
        rc = sl_store_read(st, rebuild_in_log_txn, &x);
        if (rc == 0) rc = x.rc;
    } else if (rc == 0) {
        sl_stage_job_t job = {.run = carry_run, .arg = &r};
        rc = sl_stage_catch_up(d.stage, &job, r.total, rebuild_progress, &r);
    }
    if (otxn) mdb_txn_abort(otxn);
    if (oenv) mdb_env_close(oenv);
    if (r.tty) fputc('\n', stderr);
    uint64_t applied = d.stage ? sl_stage_applied(d.stage) : 0;
    derived_free(&d);
    /* the new one in place of the old one, in one step; the old one is then
     * in derived.rebuild/ (or, where the filesystem cannot exchange, moved to
     * derived.old/ first: a crash between the two renames is finished by the
     * next rebuild, and serve refuses to start until then) */
    const char *replaced = NULL;
    if (rc == 0 && have_derived) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, cur, RENAME_EXCHANGE) == 0) replaced = tmp;
        else if (errno != EINVAL && errno != ENOSYS) rc = -errno;
        else if (rename(cur, old) != 0 || rename(tmp, cur) != 0) rc = -errno;
        else replaced = old;
    } else if (rc == 0 && rename(tmp, cur) != 0) {
        rc = -errno;
    }
    if (rc == 0) rc = sync_dir(cfg.data_dir);
    if (rc == 0 && legacy == 1) rc = sl_store_drop_dbs(st, legacy_dbs);
    if (rc == 0 && replaced && remove_env_dir(replaced))
        SL_WARN("could not remove the replaced store %s: %s (serve refuses to start beside it: remove it)", replaced,
                strerror(errno));
    if (rc) fprintf(stderr, "sillage: rebuild failed: %s (the derived store in place is unchanged)\n",
                    sl_strerror(rc));
    else printf("rebuilt %s from %llu events in %.1f s%s\n", cur, (unsigned long long)applied,
                (double)(sl_now_ms() - r.t0) / 1000, legacy == 1 ? " (moved out of the log)" : "");
    sl_store_close(st);
    sl_config_free(&cfg);
    close(lock);
    return rc ? 1 : 0;
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
    /* DEST is opened once, without following a link, and checked before
     * anything is written: a planted DEST/derived link sent the copy
     * elsewhere, and a DEST holding a data.mdb got half a backup (issue 21,
     * L3). The derived store first: a copy of it never holds an event the
     * copy of the log lacks (the stage catches up on the rest after a restore). */
    derived_t d = {0};
    char path[4200];
    snprintf(path, sizeof(path), "%s/derived/data.mdb", cfg.data_dir);
    struct stat sb;
    int rc = 0, with_derived = stat(path, &sb) == 0, ddfd = -1, made_derived = 0;
    const char *why = NULL;
    int dfd = sl_dir_open_nofollow(a.dest);
    if (dfd < 0) {
        rc = dfd;
        why = rc == -ELOOP || rc == -ENOTDIR ? "it is a symbolic link or not a directory" : NULL;
    } else if (fstatat(dfd, "data.mdb", &sb, AT_SYMLINK_NOFOLLOW) == 0) {
        rc = -EEXIST;
        why = "it already holds a data.mdb";
    } else if (with_derived && fstatat(dfd, "derived", &sb, AT_SYMLINK_NOFOLLOW) == 0) {
        rc = -EEXIST;
        why = "it already holds a derived/";
    }
    if (rc == 0 && with_derived) {
        rc = derived_new(&d, &cfg, st, 1);
        if (rc == 0) rc = sl_stage_open(d.stage);
        if (rc == 0 && mkdirat(dfd, "derived", 0750) != 0) rc = -errno;
        made_derived = rc == 0;
        if (rc == 0 && (ddfd = openat(dfd, "derived", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) rc = -errno;
        if (rc == 0 && fchmod(ddfd, 0750) != 0) rc = -errno;
        if (rc == 0) rc = sl_stage_backup(d.stage, ddfd);
    }
    if (rc == 0) rc = sl_store_backup(st, dfd);
    if (rc && made_derived) { /* no half backup left behind */
        if (ddfd >= 0) unlinkat(ddfd, "data.mdb", 0);
        unlinkat(dfd, "derived", AT_REMOVEDIR);
    }
    if (ddfd >= 0) close(ddfd);
    if (dfd >= 0) close(dfd);
    if (rc) fprintf(stderr, "sillage: backup to %s failed: %s\n", a.dest,
                    why ? why : rc == -EEXIST ? "it already holds a data.mdb" : sl_strerror(rc));
    else printf("backup of %s written to %s/data.mdb%s\n", cfg.data_dir, a.dest,
                with_derived ? " and derived/data.mdb" : "");
    derived_free(&d);
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
    /* the components that parse their own sections of the config */
    /* computed first: rules name its fields; audiences after the rules: names are unique across both */
    if (sl_fields_config_register() || sl_trig_config_register() || sl_aud_config_register()) return 1;
    if (strcmp(cmd, "serve") == 0) return cmd_serve(argc, argv);
    if (strcmp(cmd, "check-config") == 0) return cmd_check_config(argc, argv);
    if (strcmp(cmd, "export") == 0) return cmd_export(argc, argv);
    if (strcmp(cmd, "backup") == 0) return cmd_backup(argc, argv);
    if (strcmp(cmd, "verify") == 0) return cmd_verify(argc, argv);
    if (strcmp(cmd, "rebuild") == 0) return cmd_rebuild(argc, argv);
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
