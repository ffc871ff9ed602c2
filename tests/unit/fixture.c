/* fixture.c - the stitcher on a real store, for the unit tests (fixture.h). */
#include "fixture.h"

#include <stdlib.h>
#include <unistd.h>

void fix_batch_done(sl_store_batch_t *b) { *(int *)b->data = 1; }
const sl_stage_step_t *fix_extra_step; /* a step after the stitcher's (tests of the stage) */
int fix_extra_first;
uint64_t fix_stage_max_lag;
uint32_t fix_stage_commit_interval_ms;                    /* add it before the stitcher's (its phase orders them) */
int fix_no_stage_start;                 /* fix_open: the stage opened, its thread not started */
int fix_with_triggers;                  /* fix_init: the trigger engine too */
const char *fix_config;                 /* fix_init: this config instead of the demo's */
static void on_drained(void *arg) { *(int *)arg = 1; }

/* The log, the stitcher and the stage over it (as `sillage serve` wires them). */
int fix_open(fix_t *f)
{
    sl_store_options_t o = {.data_dir = f->dir, .map_size_bytes = 8 << 20, .map_size_max_bytes = 256 << 20,
                            .nosync = 1, .dedupe_window_ms = 86400000, .max_queue_messages = 100000};
    if (sl_store_open(&f->store, &o)) return -1;
    if ((f->stitch = sl_stitch_new(&f->cfg, f->store)) == NULL) return -1;
    snprintf(f->ddir, sizeof(f->ddir), "%s/derived", f->dir);
    sl_stage_options_t so = {.dir = f->ddir, .map_size_bytes = 8 << 20, .map_size_max_bytes = 256 << 20, .nosync = 1,
                             .max_lag_events = fix_stage_max_lag,
                             .commit_interval_ms = fix_stage_commit_interval_ms};
    if ((f->stage = sl_stage_new(f->store, &so)) == NULL) return -1;
    if (fix_extra_step && fix_extra_first && sl_stage_add_step(f->stage, fix_extra_step)) return -1;
    if (sl_stage_add_step(f->stage, sl_stitch_step(f->stitch))) return -1;
    if (fix_extra_step && !fix_extra_first && sl_stage_add_step(f->stage, fix_extra_step)) return -1;
    if ((f->with_fields || f->with_triggers) &&
        ((f->fields = sl_fields_new(&f->cfg, f->stitch)) == NULL || sl_fields_attach(f->fields, f->stage)))
        return -1;
    if (f->with_triggers &&
        ((f->feed = sl_feed_new(f->cfg.trigger_retention_ms)) == NULL || sl_feed_attach(f->feed, f->stage) ||
         (f->trig = sl_trig_new(&f->cfg, f->stitch, f->fields, f->feed)) == NULL || sl_trig_attach(f->trig, f->stage)))
        return -1;
    if (sl_stage_open(f->stage)) return -1;
    if (sl_store_start(f->store, &f->loop)) return -1;
    return fix_no_stage_start ? 0 : sl_stage_start(f->stage, &f->loop);
}

void fix_close_store(fix_t *f)
{
    int drained = 0;
    sl_store_drain(f->store, on_drained, &drained);
    while (!drained) uv_run(&f->loop, UV_RUN_ONCE);
    drained = 0;
    sl_stage_stop(f->stage, 0, on_drained, &drained);
    while (!drained) uv_run(&f->loop, UV_RUN_ONCE);
    sl_stage_free(f->stage);
    sl_trig_free(f->trig);
    f->trig = NULL;
    sl_feed_free(f->feed);
    f->feed = NULL;
    sl_fields_free(f->fields);
    f->fields = NULL;
    sl_stitch_free(f->stitch);
    sl_store_close(f->store);
    f->store = NULL;
    f->stage = NULL;
    f->stitch = NULL;
}

int fix_init(fix_t *f)
{
    memset(f, 0, sizeof(*f));
    f->with_triggers = fix_with_triggers;
    strcpy(f->dir, "/tmp/sl-stitch-test-XXXXXX");
    char err[256];
    if (mkdtemp(f->dir) == NULL || uv_loop_init(&f->loop) ||
        (fix_config ? sl_config_parse(&f->cfg, fix_config, strlen(fix_config), err, sizeof(err))
                    : sl_config_demo(&f->cfg)))
        return -1;
    /* a second, trusted (server-side) source beside the demo's browser key */
    sl_source_t *src = realloc(f->cfg.sources, (f->cfg.n_sources + 1) * sizeof(*src));
    if (src == NULL) return -1;
    f->cfg.sources = src;
    src[f->cfg.n_sources++] = (sl_source_t){.name = strdup("backend"), .write_key = strdup("wk_backend"), .trusted = 1};
    return fix_open(f);
}

/* The fixture with step after the stitcher's (a test of the stage; step
 * must live as long as the fixture), and the trigger engine when
 * with_triggers. */
int fix_init_with(fix_t *f, const sl_stage_step_t *step, int with_triggers)
{
    fix_extra_step = step;
    fix_with_triggers = with_triggers;
    int rc = fix_init(f);
    fix_extra_step = NULL;
    fix_with_triggers = 0;
    return rc;
}

void fix_free(fix_t *f)
{
    if (f->store) fix_close_store(f);
    sl_config_free(&f->cfg);
    uv_loop_close(&f->loop);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    CHECK_INT(system(cmd), ==, 0);
}

/* Stores one event (JSON as the collector stores it), waiting for the log
 * only (not for the stage); its sequence. */
uint64_t put_durable(fix_t *f, const char *json, int64_t ts, const char *mid)
{
    sl_store_msg_t sm = {.json = json, .json_len = strlen(json), .received_ms = ts,
                         .dedupe = sl_store_dedupe_key(f->store, "test", mid)};
    int done = 0;
    sl_store_batch_t b = {.msgs = &sm, .n_msgs = 1, .done = fix_batch_done, .data = &done};
    CHECK_INT(sl_store_submit(f->store, &b), ==, 0);
    while (!done) uv_run(&f->loop, UV_RUN_ONCE);
    CHECK_INT(b.rc, ==, 0);
    CHECK_INT(sm.status, ==, SL_STORE_STORED);
    return sm.seq;
}

/* The same, then waits until the stage applied it. */
void put(fix_t *f, const char *json, int64_t ts, const char *mid)
{
    uint64_t seq = put_durable(f, json, ts, mid);
    for (int i = 0; i < 5000 && sl_stage_applied(f->stage) < seq; i++) usleep(1000);
    CHECK_INT(sl_stage_applied(f->stage), >=, seq);
}

/* One message in: type, userId, anonymousId, email trait (or previousId for
 * an alias), timestamp; traits (JSON object text) for an identify, or NULL. */
void msg_traits(fix_t *f, int type, const char *user, const char *anon, const char *email, int64_t ts,
                       const char *traits)
{
    static const char *types[] = {"", "track", "page", "screen", "identify", "alias", "group"};
    char mid[32], iso[32];
    snprintf(mid, sizeof(mid), "m%d", ++f->n_sent);
    sl_time_format_iso(ts, iso);
    sl_buf_t b = {0};
    sl_buf_printf(&b, "{\"type\":\"%s\",\"messageId\":\"%s\",\"timestamp\":\"%s\"", types[type], mid, iso);
    if (type == SL_STITCH_TRACK) sl_buf_appends(&b, ",\"event\":\"E\"");
    if (user) {
        sl_buf_appends(&b, ",\"userId\":");
        sl_buf_append_json_str(&b, user, strlen(user));
    }
    if (anon) {
        sl_buf_appends(&b, ",\"anonymousId\":");
        sl_buf_append_json_str(&b, anon, strlen(anon));
    }
    if (type == SL_STITCH_ALIAS && email) {
        sl_buf_appends(&b, ",\"previousId\":");
        sl_buf_append_json_str(&b, email, strlen(email));
    } else if (traits) {
        sl_buf_printf(&b, ",\"traits\":%s", traits);
    } else if (email) {
        sl_buf_appends(&b, ",\"traits\":{\"email\":");
        sl_buf_append_json_str(&b, email, strlen(email));
        sl_buf_appends(&b, "}");
    }
    sl_buf_printf(&b, ",\"context\":{\"sillage\":{\"source\":\"%s\"}}}", f->untrusted ? "demo" : "backend");
    if (f->no_wait) put_durable(f, b.data, ts, mid);
    else put(f, b.data, ts, mid);
    sl_buf_free(&b);
}

void msg(fix_t *f, int type, const char *user, const char *anon, const char *email, int64_t ts)
{
    msg_traits(f, type, user, anon, email, ts, NULL);
}


int read_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    read_t *r = arg;
    if (r->which == 0) r->rc = sl_stitch_profile(r->s, txn, r->kind, r->id, &r->out);
    else if (r->which == 1) r->rc = sl_stitch_timeline(r->s, txn, log_txn, r->kind, r->id, 1000, NULL, &r->out);
    else if (r->which == 2) r->rc = sl_stitch_merges(r->s, txn, r->kind, r->id, r->limit ? r->limit : 1000, r->before, &r->out);
    else r->rc = sl_stitch_recent(r->s, txn, 1000, NULL, &r->out);
    return 0;
}

/* The parsed answer of a read, or NULL when no person has that identifier. */
cJSON *get(fix_t *f, int which, const char *kind, const char *id)
{
    read_t r = {.s = f->stitch, .kind = kind, .id = id, .which = which};
    CHECK_INT(sl_stage_read(f->stage, 1, read_cb, &r), ==, 0);
    cJSON *doc = r.rc == 0 ? cJSON_ParseWithLength(r.out.data, r.out.len) : NULL;
    if (r.rc && r.rc != SL_ENOTFOUND) CHECK_INT(r.rc, ==, 0);
    sl_buf_free(&r.out);
    return doc;
}

/* The person id of kind/id, or "(none)" when no person has it. */
const char *person_of(fix_t *f, const char *kind, const char *id, char out[32])
{
    cJSON *p = get(f, 0, kind, id);
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(p, "id");
    snprintf(out, 32, "%s", cJSON_IsString(pid) ? pid->valuestring : "(none)");
    cJSON_Delete(p);
    return out;
}


double num(const cJSON *o, const char *path1, const char *path2)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, path1);
    if (path2) x = cJSON_GetObjectItemCaseSensitive(x, path2);
    return cJSON_IsNumber(x) ? x->valuedouble : -1;
}

int count_journal(fix_t *f, const char *kind, const char *id, const char *type)
{
    cJSON *j = get(f, 2, kind, id);
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(j, strcmp(type, "merge") ? "refused" : "merges")) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
        if (cJSON_IsString(t) && strcmp(t->valuestring, type) == 0) n++;
    }
    cJSON_Delete(j);
    return n;
}

static void erase_done(sl_stage_job_t *job)
{
    sl_stitch_erase_t *e = job->arg;
    *(int *)e->ctx = 1;
}

/* Erases kind/id as the server does (a stage job), waits for it, checks it
 * succeeded; er stays the caller's to read and free. */
void erase_run(fix_t *f, sl_stitch_erase_t *er, const char *kind, const char *id)
{
    int done = 0;
    sl_stitch_erase_init(er, f->stitch, kind, id, erase_done);
    er->ctx = &done; /* cppcheck-suppress autoVariables ; read by the job's callback, which runs before this returns */
    CHECK_INT(sl_stage_submit(f->stage, &er->job), ==, 0);
    while (!done) uv_run(&f->loop, UV_RUN_ONCE);
    CHECK_INT(er->job.rc, ==, 0);
}


int verify_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    verify_req_t *q = arg;
    sl_verify_opts_t o = {.log_txn = log_txn, .applied = sl_stage_applied(q->f->stage)};
    return sl_stitch_verify(q->f->stitch, txn, &o, q->out, &q->rep);
}

uint64_t verify_problems(fix_t *f)
{
    verify_req_t q = {.f = f, .out = fopen("/dev/null", "w")};
    CHECK_INT(sl_stage_read(f->stage, 1, verify_cb, &q), ==, 0);
    fclose(q.out);
    return q.rep.problems;
}

/* A write transaction on the derived store opened on its own (the store
 * closed, or behind its back): commit it, then mdb_env_close(*env). */
MDB_txn *fix_raw_begin(fix_t *f, MDB_env **env)
{
    MDB_txn *txn = NULL;
    CHECK_INT(mdb_env_create(env), ==, 0);
    mdb_env_set_maxdbs(*env, 32);
    mdb_env_set_mapsize(*env, 256 << 20);
    CHECK_INT(mdb_env_open(*env, f->ddir, 0, 0640), ==, 0);
    CHECK_INT(mdb_txn_begin(*env, NULL, 0, &txn), ==, 0);
    return txn;
}

/* Removes the first entry of the named database behind the store's back. */
void drop_first(fix_t *f, const char *db)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    txn = fix_raw_begin(f, &env);
    CHECK_INT(mdb_dbi_open(txn, db, 0, &dbi), ==, 0);
    CHECK_INT(mdb_cursor_open(txn, dbi, &cur), ==, 0);
    CHECK_INT(mdb_cursor_get(cur, &k, &v, MDB_FIRST), ==, 0);
    CHECK_INT(mdb_cursor_del(cur, 0), ==, 0);
    mdb_cursor_close(cur);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
}

/* Deletes the named database of the derived store (the store closed), as a
 * store written before it existed. */
void drop_db(fix_t *f, const char *db)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    txn = fix_raw_begin(f, &env);
    CHECK_INT(mdb_dbi_open(txn, db, 0, &dbi), ==, 0);
    CHECK_INT(mdb_drop(txn, dbi, 1), ==, 0);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
}

static int count_db(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    const char *name = ((const char **)arg)[0];
    MDB_dbi dbi;
    MDB_stat st;
    int rc = mdb_dbi_open(txn, name, 0, &dbi);
    if (rc) return rc == MDB_NOTFOUND ? -1 : rc;
    if ((rc = mdb_stat(txn, dbi, &st))) return rc;
    return (int)st.ms_entries;
}

int db_entries(fix_t *f, const char *name) { return sl_stage_read(f->stage, 0, count_db, (const char *[]){name}); }

static int consent_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    consent_q_t *q = arg;
    cJSON *p = NULL;
    sl_buf_t b = {0};
    if ((q->rc = sl_stitch_profile(q->s, txn, q->kind, q->id, &b)) == 0) p = cJSON_ParseWithLength(b.data, b.len);
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(p, "id");
    q->why = "";
    if (cJSON_IsString(pid))
        q->rc = sl_stitch_consent_check(q->s, txn, strtoull(pid->valuestring + 2, NULL, 10), q->category, &q->ok, &q->why);
    cJSON_Delete(p);
    sl_buf_free(&b);
    return 0;
}

/* 1 when the person of kind/id may get a trigger that needs category; why
 * gets the reason when not. */
int consent_ok(fix_t *f, const char *kind, const char *id, const char *category, const char **why)
{
    consent_q_t q = {.s = f->stitch, .kind = kind, .id = id, .category = category};
    CHECK_INT(sl_stage_read(f->stage, 0, consent_cb, &q), ==, 0);
    CHECK_INT(q.rc, ==, 0);
    *why = q.why;
    return q.ok;
}
