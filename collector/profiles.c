/* profiles.c - the admin routes over the stitcher: profiles, timelines, the
 * merge journal and erasure (DESIGN.md "Profiles", docs/API.md).
 *
 * Reads are consistent with what was acknowledged: before reading, a request
 * waits (bounded) until the derivation stage has applied the log up to
 * `position` -- by default the log's durable end when the request arrived,
 * which holds every event acknowledged before it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"
#include "sl_audiences.h"
#include "sl_fields.h"
#include "sl_stitch.h"

#define READ_BUSY_MSG "server busy: too many profile reads in progress (twice libuv's threadpool size), retry later"

/* Read once, at the first read (loop thread): the most reads queued or
 * running on the threadpool server-wide (twice its size: libuv's
 * UV_THREADPOOL_SIZE, 4 by default), and a test seam. */
static unsigned read_cap;
/* Test seam: SILLAGE_TEST_READ_DELAY_MS makes every read sleep that long
 * on its worker thread, so that a test can hold reads in flight and see
 * that the loop, and other clients, do not wait for them. Unset (0) in
 * production. */
static unsigned read_delay_ms;

static void read_setup(void)
{
    if (read_cap) return;
    const char *v = getenv("UV_THREADPOOL_SIZE");
    long pool = v ? atol(v) : 4; /* as libuv reads it */
    if (pool < 1) pool = 1;
    if (pool > 1024) pool = 1024;
    read_cap = 2 * (unsigned)pool;
    if ((v = getenv("SILLAGE_TEST_READ_DELAY_MS")) != NULL) {
        long ms = atol(v);
        read_delay_ms = ms > 0 && ms < 60000 ? (unsigned)ms : 0;
        if (read_delay_ms) SL_WARN("SILLAGE_TEST_READ_DELAY_MS=%u: every profile read sleeps (a test seam)", read_delay_ms);
    }
}

/* One read of the profile routes. It is built on libuv's threadpool in its
 * own read transactions -- a page of a large journal or timeline, or a
 * profile whose timelines are long, would otherwise hold the loop and every
 * other client -- and answered from the loop. It lives in the request's
 * arena: the request is kept (the connection busy) until the answer. */
typedef struct {
    uv_work_t work;
    req_t *r;
    sl_server_t *srv;
    int queued;   /* on the threadpool: http_read_cancel may cancel it */
    sl_stage_t *stage;
    sl_stitch_t *stitch;
    const char *kind, *id, *before;
    int what; /* 0 profile, 1 events, 2 merges, 3 the most recently active, 4 orders, 5 computed,
               * 6 the computed fields, 7 a field's distribution, 8 the audiences, 9 an audience's members,
               * 10 an audience's KPIs */
    sl_fields_t *fields;
    sl_aud_t *aud;
    sl_aud_export_t ex;  /* 9: an audience's members (field: the audience) */
    int64_t period_ms;   /* 10: an audience's KPIs (field: the audience) */
    int days;
    const char *field; /* 5: ?explain=; 7: the field */
    size_t limit;
    int reached; /* the stage had applied what the request waited for */
    int rc;
    sl_buf_t out; /* heap: freed by read_done */
} read_req_t;

static int read_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    read_req_t *q = arg;
    if (read_delay_ms) uv_sleep(read_delay_ms); /* the test seam: where the answer is built */
    switch (q->what) {
    case 0: return sl_stitch_profile(q->stitch, txn, q->kind, q->id, &q->out);
    case 1: return sl_stitch_timeline(q->stitch, txn, log_txn, q->kind, q->id, q->limit, q->before, &q->out);
    case 3: return sl_stitch_recent(q->stitch, txn, q->limit, q->before, &q->out);
    case 4:
    case 5: {
        uint64_t person;
        int rc = sl_stitch_find(q->stitch, txn, q->kind, q->id, &person);
        if (rc) return rc;
        if (q->what == 4) return sl_fields_orders(q->fields, txn, person, q->limit, q->before, &q->out);
        if (q->field) return sl_fields_explain(q->fields, txn, person, q->field, sl_now_ms(), &q->out);
        char pid[SL_ENTITY_STR_BYTES];
        sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, person}, pid);
        sl_buf_printf(&q->out, "{\"person\":\"%s\",\"computed\":", pid);
        if ((rc = sl_fields_computed(q->fields, txn, person, sl_now_ms(), &q->out))) return rc;
        sl_buf_appends(&q->out, ",\"backfilling\":");
        if ((rc = sl_fields_backfilling(q->fields, &q->out))) return rc;
        return sl_buf_appends(&q->out, "}");
    }
    case 6: return sl_fields_list(q->fields, &q->out);
    case 7: return sl_fields_distribution(q->fields, txn, q->field, sl_now_ms(), q->limit, &q->out);
    case 8: return sl_aud_list(q->aud, txn, &q->out);
    case 9: return sl_aud_members(q->aud, txn, q->field, &q->ex, &q->out);
    case 10: return sl_aud_kpis(q->aud, txn, q->field, q->period_ms, q->days, q->limit, sl_now_ms(), &q->out);
    default: return sl_stitch_merges(q->stitch, txn, q->kind, q->id, q->limit, q->before, &q->out);
    }
}

/* A stage job or a threadpool read of request r is done: the connection
 * still waiting for its answer (no longer busy), or NULL when the client
 * left -- r is freed then, and the job's work stands all the same. */
static conn_t *job_conn(req_t *r)
{
    conn_t *c = r->conn;
    if (c && c->req == r) {
        c->busy = 0;
        return c;
    }
    http_req_free(r);
    return NULL;
}

static void erase_done(sl_stage_job_t *job)
{
    sl_stitch_erase_t *e = job->arg;
    conn_t *c = job_conn(e->ctx);
    if (c == NULL) {
        sl_stitch_erase_free(e);
        free(e);
        return;
    }
    if (job->rc) {
        char msg[200];
        snprintf(msg, sizeof(msg), "storage unavailable, the erasure did not complete: %s", sl_strerror(job->rc));
        http_respond_error(c, 503, msg);
    } else if (!e->found) {
        http_respond_error(c, 404, "no profile has that identifier");
    } else {
        char out[256];
        int n = snprintf(out, sizeof(out),
                         "{\"success\":true,\"erased\":{\"person\":\"%s\",\"events\":%llu,\"identities\":%llu,"
                         "\"journal_entries\":%llu,\"triggers\":%llu}}",
                         e->person, (unsigned long long)e->events, (unsigned long long)e->identities,
                         (unsigned long long)e->journal, (unsigned long long)e->triggers);
        http_respond(c, 200, "application/json", "Cache-Control: no-store\r\n", out, (size_t)n);
    }
    sl_stitch_erase_free(e);
    free(e);
}

/* Threadpool. */
static void read_work(uv_work_t *w)
{
    read_req_t *q = w->data;
    q->rc = sl_stage_read(q->stage, q->what == 1, read_cb, q);
}

/* Loop thread, once read_work is over, or was cancelled (status
 * UV_ECANCELED: the client left, http_read_cancel; r is freed here all the
 * same, by job_conn). */
static void read_done(uv_work_t *w, int status)
{
    read_req_t *q = w->data;
    sl_buf_t out = q->out; /* q lives in the request's arena, which job_conn may free */
    int rc = status ? SL_ESHUTDOWN : q->rc, reached = q->reached, what = q->what;
    sl_aud_export_t ex = q->ex;
    q->queued = 0;
    q->srv->admin_reads--;
    conn_t *c = job_conn(q->r);
    if (c == NULL) { /* the client left meanwhile */
        sl_buf_free(&out);
        return;
    }
    /* how far the answer is from what was asked: 0 when it was reached */
    char h[256];
    uint64_t applied = sl_stage_applied(c->srv->stage);
    snprintf(h, sizeof(h), "Cache-Control: no-store\r\nX-Sillage-Applied: %llu\r\n%s",
             (unsigned long long)applied, reached ? "" : "X-Sillage-Stale: 1\r\n");
    const char *ctype = "application/json";
    if (what == 9) { /* an audience's page: the feed position it was read at, where the next one starts */
        char pid[SL_ENTITY_STR_BYTES] = "";
        if (ex.next) sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, ex.next}, pid);
        size_t n = strlen(h);
        snprintf(h + n, sizeof(h) - n, "X-Sillage-Feed-Position: %llu\r\n%s%s%s", (unsigned long long)ex.position,
                 ex.next ? "X-Sillage-Next: " : "", pid, ex.next ? "\r\n" : "");
        ctype = ex.format == SL_AUD_CSV ? "text/csv; charset=utf-8; header=present"
                : ex.format == SL_AUD_NDJSON ? "application/x-ndjson" : "application/json";
    }
    if (rc == SL_ENOTFOUND) http_respond_error(c, 404, what >= 9 ? "no such audience" : "no profile has that identifier");
    else if (rc == SL_EINVAL) http_respond_error(c, 400, "before must be a cursor from a previous page");
    else if (rc || out.data == NULL) http_respond_error(c, 503, sl_strerror(rc ? rc : SL_ENOMEM));
    else http_respond(c, 200, ctype, h, out.data, out.len);
    sl_buf_free(&out);
}

/* The read, once the stage has applied what the request waited for. At
 * most read_cap reads are on the threadpool at once, server-wide: past it,
 * 503 (clients that pipeline large reads and leave would otherwise queue
 * work that every later read waits behind). */
static void answer_read(conn_t *c, int reached)
{
    req_t *r = c->req;
    read_req_t *q = r->read;
    sl_server_t *srv = c->srv;
    read_setup();
    if (srv->admin_reads >= read_cap) {
        http_log_refused(srv, "refusing a profile read: %zu reads already in progress (at most %u)",
                         srv->admin_reads, read_cap);
        http_respond_error(c, 503, READ_BUSY_MSG);
        return;
    }
    q->r = r;
    q->srv = srv;
    q->reached = reached;
    q->work.data = q;
    c->busy = 1; /* the connection keeps r until read_done (http.c: on_conn_closed) */
    int rc = uv_queue_work(srv->loop, &q->work, read_work, read_done);
    if (rc) {
        c->busy = 0;
        http_respond_error(c, 503, sl_strerror(rc));
        return;
    }
    q->queued = 1;
    srv->admin_reads++;
}

void http_read_cancel(req_t *r)
{
    read_req_t *q = r->read;
    /* 0: read_done comes with UV_ECANCELED; UV_EBUSY: it runs, and its
     * answer is dropped */
    if (q && q->queued) uv_cancel((uv_req_t *)&q->work);
}

/* The `before` of a page: *out NULL when there is none; -1 after answering
 * 400 for one that is not a cursor as a whole: empty, a bad %-escape, or
 * one holding a NUL byte (`before=1%00` would read as 1). */
static int read_before(conn_t *c, char **out)
{
    req_t *r = c->req;
    *out = NULL;
    for (const char *p = r->query; p && *p;) { /* http_query_param skips empty values */
        if (strncmp(p, "before=", 7) == 0 && (p[7] == '&' || p[7] == '\0')) goto bad;
        p = strchr(p, '&');
        if (p) p++;
    }
    long n = http_query_param(r, "before", out);
    if (n == SL_ENOTFOUND) {
        *out = NULL;
        return 0;
    }
    if (n == SL_ENOMEM) {
        http_respond_error(c, 503, "out of memory");
        return -1;
    }
    if (n > 0 && memchr(*out, '\0', (size_t)n) == NULL) return 0;
bad:
    http_respond_error(c, 400, "before must be a cursor from a previous page");
    return -1;
}

void http_handle_profiles(conn_t *c, const char *rest)
{
    sl_server_t *srv = c->srv;
    req_t *r = c->req;
    int m = r->method;
    int ok = http_admin_gate(c);
    if (ok < 0) return; /* answered 429 */
    if (!ok) {
        static const char body[] =
            "{\"success\":false,\"error\":\"profile routes need Authorization: Bearer <admin_token>\"}";
        http_respond(c, 401, "application/json", "WWW-Authenticate: Bearer\r\n", body, sizeof(body) - 1);
        return;
    }
    if (srv->stitch == NULL || srv->stage == NULL) { /* an edge: the core keeps the profiles */
        http_respond_error(c, 404, "this node keeps no profiles (role edge: ask the core)");
        return;
    }
    if (rest[0] == '\0') { /* GET /v1/profiles: the most recently active, a page at a time */
        if (m != HTTP_GET) {
            http_respond_error(c, 405, "use GET");
            return;
        }
        read_req_t *q = sl_arena_alloc(&r->arena, sizeof(*q));
        unsigned long long limit = 50;
        char *before = NULL;
        if (q == NULL) {
            http_respond_error(c, 503, "out of memory");
            return;
        }
        if (http_query_num(c, "limit", 1, 100, &limit) < 0 || read_before(c, &before) < 0) return;
        *q = (read_req_t){.stage = srv->stage, .stitch = srv->stitch, .before = before, .what = 3,
                          .limit = (size_t)limit};
        r->read = q;
        http_after_stage(c, answer_read);
        return;
    }
    /* {kind}/{id}[/events|/merges]; id percent-encoded (e-mail addresses). */
    char *kind = sl_arena_strndup(&r->arena, rest, strlen(rest));
    if (kind == NULL) {
        http_respond_error(c, 503, "out of memory");
        return;
    }
    char *id = strchr(kind, '/');
    if (id == NULL || id[1] == '\0') {
        http_respond_error(c, 404, "use /v1/profiles/{kind}/{id}");
        return;
    }
    *id++ = '\0';
    int what = 0;
    char *tail = strchr(id, '/');
    if (tail) {
        *tail++ = '\0';
        if (strcmp(tail, "events") == 0) what = 1;
        else if (strcmp(tail, "merges") == 0) what = 2;
        else if (strcmp(tail, "orders") == 0 && srv->fields) what = 4;
        else if (strcmp(tail, "computed") == 0 && srv->fields) what = 5;
        else {
            http_respond_error(c, 404, "no such route: use .../events, .../merges, .../orders or .../computed");
            return;
        }
    }
    long n = sl_percent_decode(id, strlen(id));
    if (n <= 0) {
        http_respond_error(c, 400, "the identifier is not validly percent-encoded");
        return;
    }
    if (memchr(id, '\0', (size_t)n)) { /* %00 would cut the lookup short: another person's id */
        http_respond_error(c, 400, "the identifier holds a NUL byte (%00)");
        return;
    }
    id[n] = '\0';
    if (!sl_stitch_kind_ok(srv->stitch, kind)) {
        http_respond_error(c, 404, "unknown identifier kind: use user_id, anonymous_id or a configured identity trait");
        return;
    }
    if (m == HTTP_DELETE && what == 0) {
        /* the stage applies every durable event before its jobs: all that
         * was acknowledged about the person is erased too */
        sl_stitch_erase_t *e = calloc(1, sizeof(*e));
        if (e == NULL) {
            http_respond_error(c, 503, "out of memory");
            return;
        }
        sl_stitch_erase_init(e, srv->stitch, kind, id, erase_done);
        e->ctx = r;
        int rc = sl_stage_submit(srv->stage, &e->job);
        if (rc) {
            free(e);
            http_respond_error(c, 503, sl_strerror(rc));
            return;
        }
        c->busy = 1;
        return;
    }
    if (m != HTTP_GET) {
        http_respond_error(c, 405, what == 0 ? "use GET or DELETE" : "use GET");
        return;
    }
    read_req_t *q = sl_arena_alloc(&r->arena, sizeof(*q));
    if (q == NULL) {
        http_respond_error(c, 503, "out of memory");
        return;
    }
    *q = (read_req_t){.stage = srv->stage, .stitch = srv->stitch, .kind = kind, .id = id, .what = what,
                      .limit = what == 2 || what == 4 ? 100 : 50, .fields = srv->fields};
    if (what == 5) { /* ?explain=FIELD */
        char *field = NULL;
        long fn = http_query_param(r, "explain", &field);
        if (fn == SL_ENOMEM) {
            http_respond_error(c, 503, "out of memory");
            return;
        }
        if (fn >= 0 && (field == NULL || memchr(field, '\0', (size_t)fn) || !sl_fields_has(srv->fields, field))) {
            http_respond_error(c, 404, "explain: no such computed field (GET /v1/computed lists them)");
            return;
        }
        q->field = fn >= 0 ? field : NULL;
    } else if (what) { /* events, merges and orders come a page at a time */
        unsigned long long limit = q->limit;
        char *before = NULL;
        if (http_query_num(c, "limit", 1, 1000, &limit) < 0 || read_before(c, &before) < 0) return;
        q->limit = (size_t)limit;
        q->before = before;
    }
    r->read = q;
    http_after_stage(c, answer_read);
}

/* GET /v1/computed, GET /v1/computed/{field}/distribution: the fields the
 * configuration computes, and one's distribution over every person (a
 * scan, on the threadpool like every admin read). */
/* The start of an admin GET read on the threadpool: the admin token
 * (401 saying the routes' name), the component that answers (404 saying
 * absent when it is not there: an edge node), GET only; a zeroed request
 * (NULL after answering). */
static read_req_t *admin_read_begin(conn_t *c, const char *routes, int here, const char *absent)
{
    req_t *r = c->req;
    int ok = http_admin_gate(c);
    if (ok < 0) return NULL;
    if (!ok) {
        char body[160];
        int n = snprintf(body, sizeof(body),
                         "{\"success\":false,\"error\":\"%s routes need Authorization: Bearer <admin_token>\"}", routes);
        http_respond(c, 401, "application/json", "WWW-Authenticate: Bearer\r\n", body, (size_t)n);
        return NULL;
    }
    if (!here || c->srv->stage == NULL) {
        http_respond_error(c, 404, absent);
        return NULL;
    }
    if (r->method != HTTP_GET) {
        http_respond_error(c, 405, "use GET");
        return NULL;
    }
    read_req_t *q = sl_arena_alloc(&r->arena, sizeof(*q));
    if (q == NULL) http_respond_error(c, 503, "out of memory");
    else *q = (read_req_t){.stage = c->srv->stage, .stitch = c->srv->stitch};
    return q;
}

void http_handle_computed(conn_t *c, const char *rest)
{
    sl_server_t *srv = c->srv;
    req_t *r = c->req;
    read_req_t *q = admin_read_begin(c, "computed", srv->fields != NULL, "this node computes no fields (role edge: ask the core)");
    if (q == NULL) return;
    q->fields = srv->fields;
    q->what = 6;
    if (rest[0] == '/') {
        size_t n = strlen(rest + 1);
        const char *tail = n > 13 ? rest + 1 + n - 13 : NULL;
        char *field = tail && strcmp(tail, "/distribution") == 0 ? sl_arena_strndup(&r->arena, rest + 1, n - 13) : NULL;
        if (field == NULL || !sl_fields_has(srv->fields, field)) {
            http_respond_error(c, 404, "use /v1/computed/{field}/distribution with a computed field (GET /v1/computed lists them)");
            return;
        }
        unsigned long long limit = 1000000;
        if (http_query_num(c, "limit", 1, 100000000, &limit) < 0) return;
        q->what = 7;
        q->field = field;
        q->limit = (size_t)limit;
    } else if (rest[0] != '\0') {
        http_respond_error(c, 404, "no such route");
        return;
    }
    r->read = q;
    http_after_stage(c, answer_read);
}

/* /{name}/members?format=&fields=&hash=&after=&limit= into q (what 9): 0,
 * or -1 after answering 400/404 */
/* rest "/{name}<tail>": the audience's name, decoded into the request's
 * arena, when it names one (else NULL) */
static char *audience_named(conn_t *c, read_req_t *q, const char *rest, const char *tail)
{
    size_t n = strlen(rest), tl = strlen(tail);
    char *name = rest[0] == '/' && n > tl + 1 && strcmp(rest + n - tl, tail) == 0
                     ? sl_arena_strndup(&c->req->arena, rest + 1, n - tl - 1)
                     : NULL;
    long dn = name ? sl_percent_decode(name, strlen(name)) : -1;
    if (dn <= 0 || memchr(name, '\0', (size_t)dn)) return NULL;
    name[dn] = '\0';
    return sl_aud_has(q->aud, name) ? name : NULL;
}

/* /{name}/kpis?period=30d&days=30&limit=: into q (what 10); 0, or -1 after answering */
static int audience_kpis_query(conn_t *c, char *name, read_req_t *q)
{
    char *v = NULL;
    q->period_ms = 30 * 86400000LL;
    if (http_query_param(c->req, "period", &v) > 0 &&
        (sl_parse_duration_ms(v, &q->period_ms) || q->period_ms <= 0 || q->period_ms > 3660LL * 86400000)) {
        http_respond_error(c, 400, "period must be a duration from 1s to 3660d (\"30d\")");
        return -1;
    }
    unsigned long long days = 30, limit = 1000000;
    if (http_query_num(c, "days", 1, 730, &days) < 0 || http_query_num(c, "limit", 1, 100000000, &limit) < 0) return -1;
    q->days = (int)days;
    q->limit = (size_t)limit;
    q->field = name;
    q->what = 10;
    return 0;
}

static int audience_members_query(conn_t *c, const char *rest, read_req_t *q)
{
    req_t *r = c->req;
    char *name = audience_named(c, q, rest, "/kpis");
    if (name) return audience_kpis_query(c, name, q);
    if ((name = audience_named(c, q, rest, "/members")) == NULL) {
        http_respond_error(c, 404, "use /v1/audiences/{name}/members or /v1/audiences/{name}/kpis with an audience "
                                   "(GET /v1/audiences lists them)");
        return -1;
    }
    sl_aud_export_t *x = &q->ex;
    *x = (sl_aud_export_t){.format = SL_AUD_JSON, .fields = SL_AUD_F_DEFAULT, .limit = 1000};
    char *v = NULL;
    if (http_query_param(r, "format", &v) > 0) {
        if (strcmp(v, "ndjson") == 0) x->format = SL_AUD_NDJSON;
        else if (strcmp(v, "csv") == 0) x->format = SL_AUD_CSV;
        else if (strcmp(v, "json") != 0) goto bad_format;
    }
    if (http_query_param(r, "hash", &v) > 0) {
        if (strcmp(v, "email:sha256") != 0) {
            http_respond_error(c, 400, "hash must be email:sha256");
            return -1;
        }
        x->hash_email = 1;
    }
    if (http_query_param(r, "fields", &v) > 0) {
        static const struct { const char *name; unsigned bit; } known[] = {
            {"id", SL_AUD_F_ID}, {"user_id", SL_AUD_F_USER_ID}, {"email", SL_AUD_F_EMAIL},
            {"entered_at", SL_AUD_F_ENTERED_AT}, {"unsubscribed", SL_AUD_F_UNSUBSCRIBED}};
        x->fields = 0;
        for (char *save = NULL, *f = strtok_r(v, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
            size_t k = 0;
            while (k < sizeof(known) / sizeof(known[0]) && strcmp(known[k].name, f) != 0) k++;
            if (k == sizeof(known) / sizeof(known[0])) {
                http_respond_error(c, 400, "fields is a comma-separated list of id, user_id, email, entered_at, unsubscribed");
                return -1;
            }
            x->fields |= known[k].bit;
        }
        if (x->fields == 0) x->fields = SL_AUD_F_DEFAULT;
    }
    if (http_query_param(r, "after", &v) > 0) {
        unsigned long long id;
        if (strncmp(v, "p_", 2) != 0 || http_parse_num(v + 2, 1, UINT64_MAX - 1, &id)) {
            http_respond_error(c, 400, "after must be the X-Sillage-Next (or \"next\") of a previous page: p_<number>");
            return -1;
        }
        x->after = id;
    }
    unsigned long long limit = 1000;
    if (http_query_num(c, "limit", 1, SL_AUD_EXPORT_MAX, &limit) < 0) return -1;
    x->limit = (size_t)limit;
    q->field = name;
    q->what = 9;
    return 0;
bad_format:
    http_respond_error(c, 400, "format must be json, ndjson or csv");
    return -1;
}

/* GET /v1/audiences: the configured audiences and their member counts
 * (docs/AUDIENCES.md), read like the other admin reads. */
void http_handle_audiences(conn_t *c, const char *rest)
{
    sl_server_t *srv = c->srv;
    req_t *r = c->req;
    read_req_t *q = admin_read_begin(c, "audience", srv->aud != NULL, "this node keeps no audiences (role edge: ask the core)");
    if (q == NULL) return;
    q->aud = srv->aud;
    q->what = 8;
    if (rest[0] != '\0' && audience_members_query(c, rest, q) < 0) return;
    r->read = q;
    http_after_stage(c, answer_read);
}

static int list_one(uint64_t seq, const char *reason, void *arg)
{
    sl_buf_t *b = arg;
    if (b->len && b->data[b->len - 1] != '[') sl_buf_appends(b, ",");
    sl_buf_printf(b, "{\"seq\":%llu,\"reason\":", (unsigned long long)seq);
    sl_buf_append_json_str(b, reason, strlen(reason));
    sl_buf_appends(b, "}");
    return 0;
}

static void replay_done(sl_stage_replay_t *q)
{
    conn_t *c = job_conn(q->arg);
    if (c == NULL) {
        free(q);
        return;
    }
    if (q->job.rc) {
        char msg[200];
        snprintf(msg, sizeof(msg), "storage unavailable, nothing was replayed: %s", sl_strerror(q->job.rc));
        http_respond_error(c, 503, msg);
    } else {
        char out[200];
        int n = snprintf(out, sizeof(out), "{\"success\":true,\"replayed\":%zu,\"failed\":%zu,\"gone\":%zu,\"more\":%s}",
                         q->replayed, q->failed, q->gone, q->more ? "true" : "false");
        http_respond(c, 200, "application/json", "Cache-Control: no-store\r\n", out, (size_t)n);
    }
    free(q);
}

/* POST /v1/admin/set-aside/replay[?from=&to=&limit=] */
static void replay(conn_t *c)
{
    unsigned long long from = 0, to = 0, limit = 1000;
    if (http_query_num(c, "from", 0, UINT64_MAX, &from) < 0 || http_query_num(c, "to", 0, UINT64_MAX, &to) < 0 ||
        http_query_num(c, "limit", 1, 10000, &limit) < 0)
        return;
    sl_stage_replay_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        http_respond_error(c, 503, "out of memory");
        return;
    }
    q->from = from;
    q->to = to;
    q->limit = (size_t)limit;
    q->done = replay_done;
    q->arg = c->req;
    int rc = sl_stage_replay(c->srv->stage, q);
    if (rc) {
        free(q);
        http_respond_error(c, 503, sl_strerror(rc));
        return;
    }
    c->busy = 1;
}

/* GET /v1/admin/set-aside: the events the stage could not apply, and why
 * (their JSON is in the log: `sillage export`); POST .../replay applies them
 * again once what failed is fixed. */
void http_handle_set_aside(conn_t *c, int replay_route)
{
    sl_server_t *srv = c->srv;
    if (!http_admin_required(c)) return;
    if (srv->stage == NULL) {
        http_respond_error(c, 404, "this node derives nothing (role edge)");
        return;
    }
    if (replay_route) {
        if (c->req->method != HTTP_POST) http_respond_error(c, 405, "use POST");
        else replay(c);
        return;
    }
    if (c->req->method != HTTP_GET) {
        http_respond_error(c, 405, "use GET");
        return;
    }
    sl_buf_t b = {0};
    sl_buf_appends(&b, "{\"set_aside\":[");
    int rc = sl_stage_set_aside(srv->stage, 1000, list_one, &b);
    sl_buf_appends(&b, "]}");
    if (rc || b.data == NULL) http_respond_error(c, 503, sl_strerror(rc ? rc : SL_ENOMEM));
    else http_respond(c, 200, "application/json", "Cache-Control: no-store\r\n", b.data, b.len);
    sl_buf_free(&b);
}
