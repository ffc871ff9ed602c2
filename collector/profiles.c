/* profiles.c - the admin routes over the stitcher: profiles, timelines, the
 * merge journal and erasure (DESIGN.md "Profiles", docs/API.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"
#include "sl_stitch.h"

typedef struct {
    sl_stitch_t *stitch;
    const char *kind, *id, *before;
    int what; /* 0 profile, 1 events, 2 merges */
    size_t limit;
    sl_buf_t *out;
} read_req_t;

static int read_cb(MDB_txn *txn, void *arg)
{
    read_req_t *q = arg;
    switch (q->what) {
    case 0: return sl_stitch_profile(q->stitch, txn, q->kind, q->id, q->out);
    case 1: return sl_stitch_timeline(q->stitch, txn, q->kind, q->id, q->limit, q->before, q->out);
    default: return sl_stitch_merges(q->stitch, txn, q->kind, q->id, q->out);
    }
}

static void erase_done(sl_store_batch_t *b)
{
    req_t *r = b->data;
    conn_t *c = r->conn;
    sl_stitch_erase_t *e = b->job_arg;
    if (c == NULL) { /* the client left; the erasure happened all the same */
        free(e);
        req_free(r);
        return;
    }
    if (b->rc) {
        char msg[200];
        snprintf(msg, sizeof(msg), "storage unavailable, nothing was erased: %s", sl_strerror(b->rc));
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
    free(e);
}

void handle_profiles(conn_t *c, const char *rest)
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
    if (srv->stitch == NULL) { /* an edge: the core keeps the profiles */
        http_respond_error(c, 404, "this node keeps no profiles (role edge: ask the core)");
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
        else {
            http_respond_error(c, 404, "no such route: use .../events or .../merges");
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
        sl_stitch_erase_t *e = calloc(1, sizeof(*e));
        if (e == NULL) {
            http_respond_error(c, 503, "out of memory");
            return;
        }
        e->stitch = srv->stitch;
        e->kind = kind;
        e->id = id;
        r->batch.job = sl_stitch_erase_job;
        r->batch.job_arg = e;
        r->batch.done = erase_done;
        r->batch.data = r;
        int rc = sl_store_submit(srv->store, &r->batch);
        if (rc) {
            free(e);
            http_respond_error(c, 503, rc == SL_EBUSY ? "server busy, retry later" : sl_strerror(rc));
        }
        return;
    }
    if (m != HTTP_GET) {
        http_respond_error(c, 405, what == 0 ? "use GET or DELETE" : "use GET");
        return;
    }
    read_req_t q = {srv->stitch, kind, id, NULL, what, 50, NULL};
    if (what == 1) {
        char *lim = NULL, *before = NULL;
        if (http_query_param(r, "limit", &lim) >= 0) {
            char *end;
            long l = strtol(lim, &end, 10);
            if (*end || l < 1 || l > 1000) {
                http_respond_error(c, 400, "limit must be 1..1000");
                return;
            }
            q.limit = (size_t)l;
        }
        if (http_query_param(r, "before", &before) >= 0) q.before = before;
    }
    sl_buf_t out = {0};
    q.out = &out;
    int rc = sl_store_read(srv->store, read_cb, &q);
    if (rc == SL_ENOTFOUND) http_respond_error(c, 404, "no profile has that identifier");
    else if (rc == SL_EINVAL) http_respond_error(c, 400, "before must be a cursor from a previous page");
    else if (rc || out.data == NULL) http_respond_error(c, 503, sl_strerror(rc ? rc : SL_ENOMEM));
    else http_respond(c, 200, "application/json", "Cache-Control: no-store\r\n", out.data, out.len);
    sl_buf_free(&out);
}
