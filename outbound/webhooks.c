/* webhooks.c - see sl_webhooks.h. libcurl's multi interface driven by the
 * libuv loop: curl tells us which sockets to watch (socket callback) and when
 * to call it back (timer callback); uv_poll and a uv_timer do the watching.
 * Nothing polls: the feed's "advanced" wakes the pump through
 * a uv_async, a finished attempt pumps, and a one-shot timer waits for the
 * next retry. */
#include "sl_webhooks.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 16                 /* deliveries in flight or waiting, per webhook */
#define BACKOFF_BASE_MS 500
#define BACKOFF_MAX_MS 300000
#define TIMEOUT_MS 10000          /* one attempt */
#define MAX_RESPONSE 65536

typedef struct target_s target_t;
typedef struct sl_webhooks_s sl_webhooks_t;

typedef struct {
    target_t *t;
    uint64_t seq;
    int64_t at_ms;               /* the trigger's time, for expiry */
    char *body;
    size_t body_len;
    char delivery[64];
    int attempts;
    int64_t next_ms;             /* next attempt */
    int state;                   /* D_WAIT, D_FLIGHT, D_DONE */
    CURL *easy;
    struct curl_slist *headers;
    size_t resp_bytes;
} delivery_t;

enum { D_WAIT, D_FLIGHT, D_DONE };

struct target_s {
    sl_webhooks_t *w;
    const sl_webhook_t *cfg;
    char tag[17];                /* hex of a hash of the URL: part of the delivery id */
    char shown[256];             /* the URL for the log: its query may hold a token (sl_url_redact) */
    uint64_t cursor;             /* everything <= cursor acknowledged or expired */
    uint64_t stored_cursor;      /* what LMDB holds */
    uint64_t read_upto;          /* the last sequence taken into the window */
    delivery_t win[WINDOW];
    int n;                       /* deliveries in win, in sequence order */
};

typedef struct {
    uv_poll_t poll;
    curl_socket_t fd;
    sl_webhooks_t *w;
} sock_t;

typedef struct {
    sl_webhooks_t *w;
    size_t n;
    struct { const char *url; uint64_t seq; } c[];
} cursor_job_t;

struct sl_webhooks_s {
    uv_loop_t *loop;
    const sl_config_t *cfg;
    sl_stage_t *stage;
    sl_feed_t *feed;
    sl_stage_step_t step;        /* opens the cursors' database */
    MDB_dbi cursors;             /* whcursor: url -> u64 */
    CURLM *multi;
    uv_timer_t curl_timer, retry;
    uv_async_t wake;             /* the feed advanced (from the stage thread) */
    target_t *t;
    size_t n_t;
    int handles, stopping, started;
    uv_mutex_t mu;
    int wake_open;               /* under mu */
    void (*stop_cb)(void *);
    void *stop_arg;
    sl_stage_job_t job_s;
    cursor_job_t *job;           /* in flight, or NULL */
    uint64_t delivered, failed_attempts, expired, in_flight, unreadable;
};

int sl_webhook_sign(const char *secret, int64_t t, const char *delivery, const void *body, size_t len,
                    char out[SL_WEBHOOK_SIGNATURE_BYTES])
{
    char head[128];
    int n = snprintf(head, sizeof(head), "%lld.%s.", (long long)t, delivery);
    if (n < 0 || (size_t)n >= sizeof(head)) return SL_EINVAL;
    unsigned char *msg = malloc((size_t)n + len), mac[EVP_MAX_MD_SIZE];
    if (msg == NULL) return SL_ENOMEM;
    memcpy(msg, head, (size_t)n);
    memcpy(msg + n, body, len);
    unsigned int mac_len = 0;
    int ok = HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, (size_t)n + len, mac, &mac_len) != NULL;
    free(msg);
    if (!ok || mac_len != 32) return SL_ENOMEM;
    int k = snprintf(out, SL_WEBHOOK_SIGNATURE_BYTES, "t=%lld,v1=", (long long)t);
    for (unsigned i = 0; i < 32; i++) snprintf(out + k + 2 * i, 3, "%02x", mac[i]);
    return 0;
}

static void check_done(sl_webhooks_t *w);
static void pump(sl_webhooks_t *w);

/* ---- curl <-> libuv ---- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_t *s = h->data;
    int flags = 0, running;
    if (status < 0) flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(s->w->multi, s->fd, flags, &running);
    check_done(s->w);
}

static void on_sock_closed(uv_handle_t *h)
{
    sock_t *s = h->data;
    sl_webhooks_t *w = s->w;
    free(s);
    if (--w->handles == 0 && w->stopping && w->stop_cb) w->stop_cb(w->stop_arg);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    sl_webhooks_t *w = userp;
    sock_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_sock_closed);
            curl_multi_assign(w->multi, fd, NULL);
        }
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL) return -1;
        s->fd = fd;
        s->w = w;
        if (uv_poll_init_socket(w->loop, &s->poll, fd)) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        w->handles++;
        curl_multi_assign(w->multi, fd, s);
    }
    int ev = 0;
    if (what & CURL_POLL_IN) ev |= UV_READABLE;
    if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

static void on_curl_timer(uv_timer_t *t)
{
    sl_webhooks_t *w = t->data;
    int running;
    curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(w);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    sl_webhooks_t *w = userp;
    if (timeout_ms < 0) uv_timer_stop(&w->curl_timer);
    else uv_timer_start(&w->curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static size_t discard_cb(char *p, size_t size, size_t n, void *arg)
{
    delivery_t *d = arg;
    d->resp_bytes += size * n;
    return d->resp_bytes > MAX_RESPONSE ? 0 : size * n; /* a huge answer aborts the attempt */
}

/* ---- deliveries ---- */

static void delivery_free(delivery_t *d)
{
    if (d->easy) {
        curl_multi_remove_handle(d->t->w->multi, d->easy);
        curl_easy_cleanup(d->easy);
        d->easy = NULL;
    }
    curl_slist_free_all(d->headers);
    d->headers = NULL;
    free(d->body);
    d->body = NULL;
}

static void start_attempt(delivery_t *d)
{
    target_t *t = d->t;
    sl_webhooks_t *w = t->w;
    char sig[SL_WEBHOOK_SIGNATURE_BYTES], h[160];
    curl_slist_free_all(d->headers);
    d->headers = NULL;
    /* Signed at each attempt: the receiver's age check applies to this send. */
    if (sl_webhook_sign(t->cfg->secret, sl_now_ms() / 1000, d->delivery, d->body, d->body_len, sig)) {
        d->next_ms = sl_now_ms() + BACKOFF_BASE_MS;
        return;
    }
    d->headers = curl_slist_append(d->headers, "Content-Type: application/json");
    snprintf(h, sizeof(h), "X-Sillage-Signature: %s", sig);
    d->headers = curl_slist_append(d->headers, h);
    snprintf(h, sizeof(h), "X-Sillage-Delivery: %s", d->delivery);
    d->headers = curl_slist_append(d->headers, h);
    snprintf(h, sizeof(h), "X-Sillage-Attempt: %d", d->attempts + 1);
    d->headers = curl_slist_append(d->headers, h);
    d->headers = curl_slist_append(d->headers, "Expect:");
    CURL *e = curl_easy_init();
    if (e == NULL || d->headers == NULL) {
        if (e) curl_easy_cleanup(e);
        d->next_ms = sl_now_ms() + BACKOFF_BASE_MS;
        return;
    }
    curl_easy_setopt(e, CURLOPT_URL, t->cfg->url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, d->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)d->body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, d->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sillage-webhook/" SL_VERSION);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, d);
    curl_easy_setopt(e, CURLOPT_PRIVATE, d);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (t->cfg->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, t->cfg->ca_file);
    d->resp_bytes = 0;
    d->easy = e;
    d->state = D_FLIGHT;
    w->in_flight++;
    if (curl_multi_add_handle(w->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        d->easy = NULL;
        d->state = D_WAIT;
        w->in_flight--;
        d->next_ms = sl_now_ms() + BACKOFF_BASE_MS;
    }
}

int64_t sl_webhook_backoff_ms(int attempts, uint32_t r)
{
    int64_t b = BACKOFF_BASE_MS;
    for (int i = 1; i < attempts && b < BACKOFF_MAX_MS; i++) b *= 2;
    if (b > BACKOFF_MAX_MS) b = BACKOFF_MAX_MS;
    return b * 3 / 4 + (int64_t)(r % (uint32_t)(b / 2 + 1)); /* +-25 % jitter */
}

static int64_t backoff_ms(int attempts)
{
    uint32_t r;
    sl_random_bytes(&r, sizeof(r));
    return sl_webhook_backoff_ms(attempts, r);
}

static void finish_attempt(delivery_t *d, CURLcode res)
{
    sl_webhooks_t *w = d->t->w;
    long code = 0;
    curl_easy_getinfo(d->easy, CURLINFO_RESPONSE_CODE, &code);
    curl_multi_remove_handle(w->multi, d->easy);
    curl_easy_cleanup(d->easy);
    d->easy = NULL;
    w->in_flight--;
    d->attempts++;
    if (res == CURLE_OK && code >= 200 && code < 300) {
        d->state = D_DONE;
        w->delivered++;
        SL_DEBUG("webhook %s: delivered trigger %llu (attempt %d)", d->t->shown, (unsigned long long)d->seq,
                 d->attempts);
        return;
    }
    w->failed_attempts++;
    d->state = D_WAIT;
    d->next_ms = sl_now_ms() + backoff_ms(d->attempts);
    SL_INFO("webhook %s: trigger %llu attempt %d failed (%s, HTTP %ld); next in %lld ms", d->t->shown,
            (unsigned long long)d->seq, d->attempts, res == CURLE_OK ? "answered" : curl_easy_strerror(res), code,
            (long long)(d->next_ms - sl_now_ms()));
}

static void pump(sl_webhooks_t *w);

static void check_done(sl_webhooks_t *w)
{
    CURLMsg *m;
    int left, finished = 0;
    while ((m = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        delivery_t *d = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&d);
        if (d) finish_attempt(d, m->data.result);
        finished = 1;
    }
    if (finished) pump(w); /* retire what was acknowledged, take more, schedule retries */
}

/* ---- the feed side ---- */

typedef struct {
    target_t *t;
    int room;
} fill_ctx_t;

static int rule_wanted(const sl_webhook_t *h, const char *rule, size_t len)
{
    if (h->n_rules == 0) return 1;
    for (size_t i = 0; i < h->n_rules; i++)
        if (strlen(h->rules[i]) == len && memcmp(h->rules[i], rule, len) == 0) return 1;
    return 0;
}

static int take_one(const sl_feed_item_t *it, void *arg)
{
    fill_ctx_t *f = arg;
    target_t *t = f->t;
    t->read_upto = it->seq;
    delivery_t *d = &t->win[t->n++];
    memset(d, 0, sizeof(*d));
    d->t = t;
    d->seq = it->seq;
    /* Whose it is, from the entry's header. An entry of no rule
     * (profile_erased) goes to every webhook: whoever received a person's
     * triggers must hear of its erasure. An old entry that is not JSON has
     * no type: nobody can tell whose it is, so it is judged below. */
    int wanted = it->type == NULL         ? 1
                 : it->rule == NULL       ? t->cfg->profile_erased
                                          : rule_wanted(t->cfg, it->rule, it->rule_len);
    if (!wanted) {
        d->state = D_DONE; /* not for this webhook: only moves the cursor */
        return --f->room > 0 ? 0 : 1;
    }
    /* What is sent must be JSON; its id names the delivery. */
    cJSON *doc = cJSON_ParseWithLength(it->json, it->len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "id");
    if (doc == NULL) {
        /* Not JSON (a store written before non-finite numbers were kept out,
         * or damaged): a failed delivery, loudly, not a quiet skip. */
        SL_ERROR("webhook %s: feed entry %llu is not valid JSON; not delivered (sillage verify names it)", t->shown,
                 (unsigned long long)it->seq);
        t->w->unreadable++;
        t->w->expired++;
        d->state = D_DONE;
    } else {
        d->body = malloc(it->len);
        if (d->body) memcpy(d->body, it->json, it->len);
        d->body_len = it->len;
        snprintf(d->delivery, sizeof(d->delivery), "%s.%s", cJSON_IsString(id) ? id->valuestring : "?", t->tag);
        d->at_ms = it->at_ms;
        d->state = d->body ? D_WAIT : D_DONE;
        d->next_ms = 0;
    }
    cJSON_Delete(doc);
    return --f->room > 0 ? 0 : 1;
}

static int fill_read(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    fill_ctx_t *f = arg;
    return sl_feed_foreach(f->t->w->feed, txn, f->t->read_upto, (size_t)f->room, NULL, take_one, f, NULL) < 0
               ? SL_ESTORE
               : 0;
}

static void cursor_done(sl_stage_job_t *b)
{
    cursor_job_t *j = b->arg;
    sl_webhooks_t *w = j->w;
    if (b->rc == 0)
        for (size_t i = 0; i < w->n_t && i < j->n; i++) w->t[i].stored_cursor = j->c[i].seq;
    free(j);
    w->job = NULL;
}

/* ---- the cursors: whcursor (url -> u64), in the derived environment ---- */

static int cursor_get(MDB_txn *txn, MDB_dbi db, const char *url, uint64_t *seq)
{
    MDB_val k = {strlen(url), (void *)url}, v;
    *seq = 0;
    int rc = mdb_get(txn, db, &k, &v);
    if (rc == 0 && v.mv_size == 8) memcpy(seq, v.mv_data, 8);
    return rc;
}

static int cursor_job(MDB_txn *txn, void *arg)
{
    cursor_job_t *j = arg;
    for (size_t i = 0; i < j->n; i++) {
        MDB_val k = {strlen(j->c[i].url), (void *)j->c[i].url}, v = {8, &j->c[i].seq};
        int rc = mdb_put(txn, j->w->cursors, &k, &v, 0);
        if (rc) return rc;
    }
    return 0;
}

/* Cursors written before the webhooks kept their own (until 2026-12): in
 * the trigger engine's tmeta as "wh\x1f<url>". Read once, at the first open
 * without our own: a restart after the upgrade does not deliver again. */
static int migrate_cursor(MDB_txn *txn, MDB_dbi cursors, MDB_dbi tmeta, const char *url)
{
    uint64_t seq;
    int rc = cursor_get(txn, cursors, url, &seq);
    if (rc != MDB_NOTFOUND) return rc;
    sl_buf_t b = {0};
    if (sl_buf_appends(&b, "wh\x1f") || sl_buf_appends(&b, url)) {
        sl_buf_free(&b);
        return SL_ENOMEM;
    }
    MDB_val k = {b.len, b.data}, v;
    rc = mdb_get(txn, tmeta, &k, &v);
    sl_buf_free(&b);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc || v.mv_size != 8) return rc;
    MDB_val uk = {strlen(url), (void *)url};
    return mdb_put(txn, cursors, &uk, &v, 0);
}

/* The step's open (stage thread, first transaction). */
static int on_open(void *arg, MDB_txn *txn, int read_only)
{
    sl_webhooks_t *w = arg;
    int rc = mdb_dbi_open(txn, "whcursor", read_only ? 0 : MDB_CREATE, &w->cursors);
    if (rc || read_only) return rc;
    MDB_dbi tmeta;
    rc = mdb_dbi_open(txn, "tmeta", 0, &tmeta);
    if (rc == MDB_NOTFOUND) return 0;
    for (size_t i = 0; i < w->n_t && rc == 0; i++) rc = migrate_cursor(txn, w->cursors, tmeta, w->t[i].cfg->url);
    return rc;
}

int sl_webhooks_carry_over(MDB_txn *dst, MDB_txn *src)
{
    MDB_dbi s, d;
    int rc = mdb_dbi_open(src, "whcursor", 0, &s);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc || (rc = mdb_dbi_open(dst, "whcursor", MDB_CREATE, &d))) return rc;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(src, s, &cur))) return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        if ((rc = mdb_put(dst, d, &k, &v, 0))) break;
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Stores the cursors that moved, one job at a time. */
static void save_cursors(sl_webhooks_t *w)
{
    if (w->job) return;
    int dirty = 0;
    for (size_t i = 0; i < w->n_t; i++) dirty |= w->t[i].cursor != w->t[i].stored_cursor;
    if (!dirty) return;
    cursor_job_t *j = malloc(sizeof(*j) + w->n_t * sizeof(j->c[0]));
    if (j == NULL) return;
    j->w = w;
    j->n = w->n_t;
    for (size_t i = 0; i < w->n_t; i++) {
        j->c[i].url = w->t[i].cfg->url;
        j->c[i].seq = w->t[i].cursor;
    }
    w->job_s = (sl_stage_job_t){.run = cursor_job, .done = cursor_done, .arg = j};
    w->job = j;
    if (sl_stage_submit(w->stage, &w->job_s)) { /* stopping: the next start resends from the stored cursor */
        free(j);
        w->job = NULL;
    }
}

static void pump_target(target_t *t, int64_t now)
{
    sl_webhooks_t *w = t->w;
    /* retire the acknowledged prefix */
    int k = 0;
    while (k < t->n && t->win[k].state == D_DONE) {
        t->cursor = t->win[k].seq;
        delivery_free(&t->win[k]);
        k++;
    }
    if (k) {
        memmove(t->win, t->win + k, (size_t)(t->n - k) * sizeof(t->win[0]));
        t->n -= k;
        for (int i = 0; i < t->n; i++) /* curl holds pointers to the moved deliveries */
            if (t->win[i].easy) curl_easy_setopt(t->win[i].easy, CURLOPT_PRIVATE, &t->win[i]),
                                curl_easy_setopt(t->win[i].easy, CURLOPT_WRITEDATA, &t->win[i]);
    }
    if (t->n == 0) t->cursor = t->read_upto > t->cursor ? t->read_upto : t->cursor;
    /* take more from the feed */
    if (t->n < WINDOW && sl_feed_durable_seq(w->feed) > t->read_upto) {
        fill_ctx_t f = {t, WINDOW - t->n};
        sl_stage_read(w->stage, 0, fill_read, &f);
    }
    for (int i = 0; i < t->n; i++) {
        delivery_t *d = &t->win[i];
        if (d->state != D_WAIT || d->next_ms > now) continue;
        if (t->cfg->expire_ms > 0 && now - d->at_ms > t->cfg->expire_ms) {
            SL_WARN("webhook %s: trigger %llu expired after %d attempts", t->shown, (unsigned long long)d->seq,
                    d->attempts);
            d->state = D_DONE;
            w->expired++;
            continue;
        }
        start_attempt(d);
    }
}

static void on_retry(uv_timer_t *t);

static void pump(sl_webhooks_t *w)
{
    if (w->stopping) return;
    int64_t now = sl_now_ms(), next = INT64_MAX;
    for (size_t i = 0; i < w->n_t; i++) {
        pump_target(&w->t[i], now);
        for (int k = 0; k < w->t[i].n; k++)
            if (w->t[i].win[k].state == D_WAIT && w->t[i].win[k].next_ms < next) next = w->t[i].win[k].next_ms;
    }
    save_cursors(w);
    /* the next retry, if any: a one-shot timer, no polling */
    if (next != INT64_MAX) uv_timer_start(&w->retry, on_retry, next > now ? (uint64_t)(next - now) : 0, 0);
    else uv_timer_stop(&w->retry);
}

static void on_retry(uv_timer_t *t) { pump(t->data); }
static void on_wake(uv_async_t *a) { pump(a->data); }

/* The feed's subscription: runs on the stage thread, which may
 * outlive the handle (the stage stops after webhooks). */
static void feed_advanced(void *arg)
{
    sl_webhooks_t *w = arg;
    uv_mutex_lock(&w->mu);
    if (w->wake_open) uv_async_send(&w->wake);
    uv_mutex_unlock(&w->mu);
}

typedef struct {
    sl_webhooks_t *w;
    int rc;
} load_ctx_t;

static int load_cursors(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    load_ctx_t *l = arg;
    for (size_t i = 0; i < l->w->n_t; i++) {
        target_t *t = &l->w->t[i];
        l->rc = cursor_get(txn, l->w->cursors, t->cfg->url, &t->cursor);
        if (l->rc && l->rc != MDB_NOTFOUND) return l->rc;
        l->rc = 0;
        t->stored_cursor = t->read_upto = t->cursor;
    }
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    sl_webhooks_t *w = h->data;
    if (--w->handles == 0 && w->stopping && w->stop_cb) w->stop_cb(w->stop_arg);
}

int sl_webhooks_new(sl_webhooks_t **out, const sl_config_t *cfg, sl_stage_t *stage, sl_feed_t *feed)
{
    *out = NULL;
    if (cfg->n_webhooks == 0) return 0;
    static int curl_ready;
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return SL_ENOMEM;
        curl_ready = 1;
    }
    sl_webhooks_t *w = calloc(1, sizeof(*w));
    if (w == NULL) return SL_ENOMEM;
    w->cfg = cfg;
    w->stage = stage;
    w->feed = feed;
    w->step = (sl_stage_step_t){.name = "webhooks", .phase = SL_PHASE_DELIVERY, .arg = w, .open = on_open};
    uv_mutex_init(&w->mu);
    w->n_t = cfg->n_webhooks;
    w->t = calloc(w->n_t, sizeof(target_t));
    w->multi = curl_multi_init();
    if (w->t == NULL || w->multi == NULL) {
        sl_webhooks_free(w);
        return SL_ENOMEM;
    }
    for (size_t i = 0; i < w->n_t; i++) {
        target_t *t = &w->t[i];
        t->w = w;
        t->cfg = &cfg->webhooks[i];
        sl_hash128_t h = sl_hash128(t->cfg->url, strlen(t->cfg->url), 7);
        snprintf(t->tag, sizeof(t->tag), "%016llx", (unsigned long long)h.lo);
        sl_url_redact(t->cfg->url, t->shown, sizeof(t->shown));
    }
    int rc = sl_stage_add_step(stage, &w->step);
    if (rc == 0) rc = sl_feed_subscribe(feed, feed_advanced, w);
    if (rc) {
        sl_webhooks_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

int sl_webhooks_start(sl_webhooks_t *w, uv_loop_t *loop)
{
    if (w == NULL) return 0;
    w->loop = loop;
    load_ctx_t l = {w, 0};
    int rc = sl_stage_read(w->stage, 0, load_cursors, &l);
    if (rc) return rc;
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    uv_timer_init(loop, &w->curl_timer);
    w->curl_timer.data = w;
    uv_timer_init(loop, &w->retry);
    w->retry.data = w;
    uv_async_init(loop, &w->wake, on_wake);
    w->wake.data = w;
    w->handles = 3;
    w->started = 1;
    uv_mutex_lock(&w->mu);
    w->wake_open = 1;
    uv_mutex_unlock(&w->mu);
    for (size_t i = 0; i < w->n_t; i++)
        SL_INFO("webhook %s: delivering triggers after %llu", w->t[i].shown, (unsigned long long)w->t[i].cursor);
    uv_async_send(&w->wake); /* what was durable before the start */
    return 0;
}

void sl_webhooks_stop(sl_webhooks_t *w, void (*cb)(void *), void *arg)
{
    if (w == NULL || w->stopping) return;
    /* Acknowledged deliveries move the cursor one last time. */
    for (size_t i = 0; i < w->n_t; i++) {
        target_t *t = &w->t[i];
        for (int k = 0; k < t->n && t->win[k].state == D_DONE; k++) t->cursor = t->win[k].seq;
    }
    save_cursors(w);
    w->stopping = 1;
    w->stop_cb = cb;
    w->stop_arg = arg;
    for (size_t i = 0; i < w->n_t; i++)
        for (int k = 0; k < w->t[i].n; k++) delivery_free(&w->t[i].win[k]); /* sockets close via sock_cb */
    for (size_t i = 0; i < w->n_t; i++) w->t[i].n = 0;
    if (!w->started) {
        if (cb) cb(arg);
        return;
    }
    uv_mutex_lock(&w->mu);
    w->wake_open = 0;
    uv_mutex_unlock(&w->mu);
    uv_timer_stop(&w->retry);
    uv_timer_stop(&w->curl_timer);
    uv_close((uv_handle_t *)&w->retry, on_handle_closed);
    uv_close((uv_handle_t *)&w->curl_timer, on_handle_closed);
    uv_close((uv_handle_t *)&w->wake, on_handle_closed);
}

void sl_webhooks_free(sl_webhooks_t *w)
{
    if (w == NULL) return;
    if (w->multi) curl_multi_cleanup(w->multi);
    uv_mutex_destroy(&w->mu);
    free(w->t);
    free(w);
}

void sl_webhooks_get_stats(const sl_webhooks_t *w, sl_webhooks_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    if (w == NULL) return;
    out->delivered = w->delivered;
    out->failed_attempts = w->failed_attempts;
    out->expired = w->expired;
    out->in_flight = w->in_flight;
    out->unreadable = w->unreadable;
}

void sl_webhooks_metrics(void *arg, sl_buf_t *b)
{
    sl_webhooks_stats_t ws;
    sl_webhooks_get_stats(arg, &ws);
    sl_metric_u64(b, "counter", "sillage_webhook_deliveries_total", "Triggers acknowledged (2xx) by a webhook.",
                  ws.delivered);
    sl_metric_u64(b, "counter", "sillage_webhook_failed_attempts_total", "Attempts that failed and will be retried.",
                  ws.failed_attempts);
    sl_metric_u64(b, "counter", "sillage_webhook_expired_total", "Triggers given up after the webhook's expire.",
                  ws.expired);
    sl_metric_u64(b, "gauge", "sillage_webhook_in_flight", "Requests on the wire.", ws.in_flight);
    sl_metric_u64(b, "counter", "sillage_webhook_unreadable_total",
                  "Feed entries a webhook could not parse, given up at once (also in sillage_webhook_expired_total).",
                  ws.unreadable);
}
