/* nats.c - scale-out on NATS JetStream (docs/SCALING.md), with libnats.
 *
 * edge: the events table is the outbox. A forwarder thread publishes every
 *   stored event after the durable cursor "nats_cursor" to events_subject with
 *   Nats-Msg-Id = messageId (the stream's duplicate window absorbs resends),
 *   waits for the JetStream acknowledgements, then moves the cursor (a store
 *   job, submitted by the loop thread). NATS down: the edge keeps accepting
 *   and storing; the forwarder retries and drains when NATS is back.
 * core: a durable pull consumer fetches batches; the loop thread submits each
 *   batch to the store with the consumer position ("nats_position", the last
 *   stream sequence applied) as a job in the same commit, and acknowledges the
 *   messages after the commit. Redeliveries at or below the position are only
 *   acknowledged; the store's messageId dedupe catches the rest.
 *   A second thread publishes the trigger feed to triggers_subject from the
 *   durable cursor "nats_triggers_cursor", Nats-Msg-Id = the trigger's id.
 * Threads never touch the store's submit queue: they hand work to the loop
 * thread through an sl_handoff_t (`ready`).
 * edge retention: with retention configured, runs on a timer delete
 *   events already forwarded (at or below "nats_cursor") whose timestamp is
 *   past the shortest retention that could apply to them: the source's, or
 *   anonymous_retention (an edge knows no identities; the core keeps the
 *   copy that counts). At most PRUNE_RUN events are examined per run, from
 *   the cursor "edge_prune_next", in a read transaction on libuv's
 *   threadpool (the ingestion writer is not held); a short store job then
 *   deletes them and moves the cursor. A new pass over the log begins every
 *   sl_config_retention_pass_ms(). */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <nats/nats.h>

#include "sl_nats.h"

#define PAGE 256
#define RETRY_MS 500
#define CONNECT_TIMEOUT_MS 2000   /* per server and attempt: bounds how long a stop waits */
#define PRUNE_RUN 2000            /* edge retention: events examined per run */

typedef struct nbatch_s {
    natsMsgList list;
    sl_store_msg_t *msgs;
    size_t n;
    uint64_t position;        /* the highest stream sequence in the batch */
    sl_arena_t arena;
    sl_store_batch_t batch;
    struct sl_nats_s *n_owner;
    struct nbatch_s *next;
} nbatch_t;

struct sl_nats_s {
    uv_loop_t *loop;
    const sl_config_t *cfg;
    sl_store_t *store;
    sl_stage_t *stage;            /* core: the trigger feed is read through it */
    sl_feed_t *feed;              /* core: the trigger feed */
    uint64_t wakes;               /* under mu: bumped when the log or the feed advanced */
    /* threads -> loop: fetched batches (core: one at a time, its thread waits
     * for batch_done), and wake-ups for the cursors to store */
    sl_handoff_t ready;
    int ready_open;               /* loop thread: started, not stopped */
    uv_thread_t thread, trig_thread;
    int have_thread, have_trig_thread;
    _Atomic int stopping;
    uv_mutex_t mu;
    uv_cond_t cv;
    int batch_done, batch_rc;     /* core: the loop thread finished the last batch (under mu) */
    /* cursors the threads want stored, and what is stored */
    _Atomic uint64_t want_cursor, want_trig_cursor;
    uint64_t stored_cursor, stored_trig_cursor;
    int job_busy;
    sl_store_batch_t job;
    uint64_t job_values[2];
    /* stats */
    _Atomic uint64_t published, publish_errors, consumed, applied_position, triggers_published;
    _Atomic int connected;
    _Atomic int64_t connect_warned_ms; /* last "cannot connect" line; 0 = connected since */
    char shown_url[512];          /* nats.url for the log: no user:password@ (sl_url_redact) */
    /* edge retention (loop thread, and the store's writer during a job) */
    int64_t prune_every_ms;       /* 0: no retention configured */
    uv_timer_t prune_timer;
    uv_work_t prune_work;         /* a run's read, on libuv's threadpool */
    sl_store_batch_t prune_job;   /* then its deletions, a store job */
    struct {                      /* one run: filled by the read, used by the job */
        uint64_t *seqs;           /* due: to delete */
        size_t n, cap;
        uint64_t examined, upto, last; /* upto: the forwarded cursor; last: the last event examined */
        uint64_t next, pass;      /* the cursor and pass start to store */
        uint64_t was_next, was_pass, was_at_end; /* as stored: a run that changes nothing writes nothing */
        int more, new_pass, rc;
        int64_t now;
    } run;
    _Atomic uint64_t pruned, examined, prune_passes;
};

/* Wakes the loop thread, unless sl_nats_stop() closed the hand-off. */
static void notify(sl_nats_t *n)
{
    sl_handoff_wake(&n->ready);
}

/* ---- connection ---- */

/* One connection attempt: up to CONNECT_TIMEOUT_MS per server of the list,
 * then NULL. Never libnats's retry-on-failed-connect: with MaxReconnect -1 it
 * blocks in natsConnection_Connect until a server answers, and a stopping
 * node would wait for it for ever. The callers retry, checking n->stopping. */
static natsConnection *nats_connect(sl_nats_t *n)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    if (natsOptions_Create(&o) != NATS_OK) return NULL;
    /* "nats://a:4222,nats://b:4222": every server of a cluster */
    char *list = strdup(n->cfg->nats.url), *save = NULL;
    const char *servers[16];
    int n_servers = 0;
    for (char *t = list ? strtok_r(list, ", ", &save) : NULL; t && n_servers < 16; t = strtok_r(NULL, ", ", &save))
        servers[n_servers++] = t;
    if (n_servers) natsOptions_SetServers(o, servers, n_servers);
    free(list);
    natsOptions_SetMaxReconnect(o, -1); /* once connected, a lost server is waited for */
    natsOptions_SetReconnectWait(o, 250);
    natsOptions_SetTimeout(o, CONNECT_TIMEOUT_MS);
    if (n->cfg->nats.credentials) natsOptions_SetUserCredentialsFromFiles(o, n->cfg->nats.credentials, NULL);
    natsStatus s = natsConnection_Connect(&nc, o);
    natsOptions_Destroy(o);
    int64_t now = sl_now_ms(), last = atomic_load(&n->connect_warned_ms);
    if (s != NATS_OK) {
        /* retried every RETRY_MS: one line a minute while it lasts */
        if (now - last >= 60000 && atomic_compare_exchange_strong(&n->connect_warned_ms, &last, now))
            SL_WARN("nats: cannot connect to %s: %s; retrying", n->shown_url, natsStatus_GetText(s));
        return NULL;
    }
    if (last && atomic_exchange(&n->connect_warned_ms, 0)) SL_INFO("nats: connected to %s", n->shown_url);
    return nc;
}

/* Creates the stream when it does not exist (events and triggers subjects). */
static int ensure_stream(sl_nats_t *n, jsCtx *js)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js, n->cfg->nats.stream, NULL, &jerr);
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[2] = {n->cfg->nats.events_subject, n->cfg->nats.triggers_subject};
    sc.Name = n->cfg->nats.stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 2;
    sc.Storage = js_FileStorage;
    sc.Replicas = n->cfg->nats.replicas;
    sc.Duplicates = n->cfg->nats.duplicate_window_ms * 1000000LL;
    s = js_AddStream(&si, js, &sc, NULL, &jerr);
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        SL_INFO("nats: created stream %s (%s, %s; %d replicas)", sc.Name, subjects[0], subjects[1], (int)sc.Replicas);
        return 0;
    }
    if (jerr == JSStreamNameExistErr) return 0; /* created by another node meanwhile */
    SL_WARN("nats: cannot create stream %s: %s (%d)", sc.Name, natsStatus_GetText(s), (int)jerr);
    return -1;
}

static void sleep_ms(sl_nats_t *n, int ms)
{
    for (int i = 0; i < ms / 50 && !atomic_load(&n->stopping); i++) nats_Sleep(50);
}

/* Waits (at most a second) for the log or the feed to advance past what the
 * caller saw: no polling. */
static void wait_more(sl_nats_t *n, uint64_t *seen)
{
    uv_mutex_lock(&n->mu);
    if (n->wakes == *seen && !atomic_load(&n->stopping)) uv_cond_timedwait(&n->cv, &n->mu, 1000000000ULL);
    *seen = n->wakes;
    uv_mutex_unlock(&n->mu);
}

/* The store's durable end moved (edge) or the feed advanced (core):
 * writer or stage thread. */
static void advanced(void *arg)
{
    sl_nats_t *n = arg;
    uv_mutex_lock(&n->mu);
    n->wakes++;
    uv_cond_broadcast(&n->cv);
    uv_mutex_unlock(&n->mu);
}

static void advanced_log(void *arg, uint64_t seq)
{
    (void)seq;
    advanced(arg);
}

/* ---- publishing: the edge's events, the core's triggers ---- */

/* A page of what to publish, copied out of a read transaction. */
typedef struct {
    uint64_t after;           /* everything up to here is published */
    size_t n;
    uint64_t seq[PAGE];
    char *json[PAGE];
    size_t len[PAGE];
    char *id[PAGE];           /* Nats-Msg-Id: the event's messageId, the trigger's id ("" if none) */
} page_t;

static int page_add(page_t *p, uint64_t seq, const char *json, size_t len, const char *id_field)
{
    cJSON *doc = cJSON_ParseWithLength(json, len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, id_field);
    p->json[p->n] = malloc(len);
    p->id[p->n] = strdup(cJSON_IsString(id) ? id->valuestring : "");
    cJSON_Delete(doc);
    if (p->json[p->n] == NULL || p->id[p->n] == NULL) {
        free(p->json[p->n]);
        free(p->id[p->n]);
        return SL_ENOMEM;
    }
    memcpy(p->json[p->n], json, len);
    p->len[p->n] = len;
    p->seq[p->n++] = seq;
    return 0;
}

static void page_free(page_t *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->json[i]);
        free(p->id[i]);
    }
    p->n = 0;
}

typedef struct {
    sl_nats_t *n;
    page_t *p;
} page_read_t;

static int take_event(const char *json, size_t len, uint64_t seq, void *arg)
{
    page_read_t *r = arg;
    page_t *p = r->p;
    /* only what is on disk: a crash could take back the rest, and give its numbers again */
    if (p->n == PAGE || seq > sl_store_durable_seq(r->n->store)) return 1;
    return page_add(p, seq, json, len, "messageId");
}

/* The durable events after p->after. */
static int read_events(MDB_txn *txn, void *arg)
{
    page_read_t *r = arg;
    int rc = sl_store_foreach_event_from(r->n->store, txn, r->p->after + 1, take_event, r);
    return rc == 1 ? 0 : rc; /* 1: the page is full */
}

static int take_trigger(const sl_feed_item_t *it, void *arg)
{
    return page_add(((page_read_t *)arg)->p, it->seq, it->json, it->len, "id") ? 1 : 0;
}

/* The durable triggers after p->after. */
static int read_triggers(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    page_read_t *r = arg;
    return sl_feed_foreach(r->n->feed, txn, r->p->after, PAGE, NULL, take_trigger, r, NULL) < 0 ? SL_ESTORE : 0;
}

/* Acknowledgements of one page of asynchronous publishes. Each page has its
 * own JetStream context, so a late answer for an abandoned page cannot be
 * counted for the next one. (js_PublishAsyncComplete of libnats 3.4 did not
 * return after a cluster node died mid-publish: hence our own count.) */
typedef struct {
    _Atomic int acked, failed;
} acks_t;

static void on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    acks_t *a = closure;
    if (pa) atomic_fetch_add(&a->acked, 1);
    else if (pae) atomic_fetch_add(&a->failed, 1);
    natsMsg_Destroy(msg);
}

/* Publishes p to subject and waits for every acknowledgement (5 s at most).
 * 0 when all were acknowledged. */
static int publish_page(sl_nats_t *n, natsConnection *nc, const char *subject, page_t *p)
{
    acks_t *a = calloc(1, sizeof(*a));
    if (a == NULL) return -1;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    jo.PublishAsync.AckHandler = on_puback;
    jo.PublishAsync.AckHandlerClosure = a;
    jo.PublishAsync.MaxPending = PAGE * 2;
    jsCtx *js = NULL;
    natsStatus s = natsConnection_JetStream(&js, nc, &jo);
    size_t sent = 0;
    for (size_t i = 0; s == NATS_OK && i < p->n; i++, sent++) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = p->id[i][0] ? p->id[i] : NULL;
        s = js_PublishAsync(js, subject, p->json[i], (int)p->len[i], &po);
    }
    int64_t deadline = sl_now_ms() + 5000;
    while (s == NATS_OK && (size_t)(atomic_load(&a->acked) + atomic_load(&a->failed)) < sent && sl_now_ms() < deadline &&
           !atomic_load(&n->stopping))
        nats_Sleep(2);
    int ok = s == NATS_OK && (size_t)atomic_load(&a->acked) == p->n;
    if (js) {
        natsMsgList pending = {0};
        if (js_PublishAsyncGetPendingList(&pending, js) == NATS_OK) natsMsgList_Destroy(&pending);
        jsCtx_Destroy(js);
    }
    /* The context may still call back for a message answered late: keep the
     * counters alive (a few bytes per failed page) rather than risk it. */
    if (ok) free(a);
    return ok ? 0 : -1;
}

/* What a publishing thread reads and where it reports. */
typedef struct {
    const char *what;                   /* for the log */
    int events;                         /* 1: the edge's events from the log (reports connected,
                                         * errors); 0: the core's triggers from the feed */
} source_t;

static int read_page(sl_nats_t *n, const source_t *src, page_read_t *r)
{
    if (src->events) return sl_store_read(n->store, read_events, r);
    return sl_stage_read(n->stage, 0, read_triggers, r);
}

static void publish_main(sl_nats_t *n, const source_t *src, const char *subject, uint64_t cursor,
                         _Atomic uint64_t *want, _Atomic uint64_t *count)
{
    natsConnection *nc = NULL;
    page_t *p = calloc(1, sizeof(*p));
    int stream_ok = 0;
    uint64_t seen = 0;
    while (p && !atomic_load(&n->stopping)) {
        if (nc == NULL && (nc = nats_connect(n)) == NULL) {
            sleep_ms(n, RETRY_MS);
            continue;
        }
        if (!stream_ok) {
            jsCtx *js = NULL;
            jsOptions jo;
            jsOptions_Init(&jo);
            jo.Wait = 5000;
            stream_ok = natsConnection_JetStream(&js, nc, &jo) == NATS_OK && ensure_stream(n, js) == 0;
            if (js) jsCtx_Destroy(js);
            if (src->events) atomic_store(&n->connected, stream_ok);
            if (!stream_ok) {
                sleep_ms(n, RETRY_MS);
                continue;
            }
        }
        /* connected (the edge says so in /metrics): now wait for something to send */
        uint64_t end = src->events ? sl_store_durable_seq(n->store) : sl_feed_durable_seq(n->feed);
        if (end <= cursor) {
            wait_more(n, &seen);
            continue;
        }
        page_read_t r = {n, p};
        p->after = cursor;
        if (read_page(n, src, &r) != 0 || p->n == 0) {
            page_free(p);
            wait_more(n, &seen);
            continue;
        }
        if (publish_page(n, nc, subject, p) == 0) {
            cursor = p->seq[p->n - 1];
            atomic_fetch_add(count, p->n);
            atomic_store(want, cursor);
            if (src->events) atomic_store(&n->connected, 1);
            notify(n);
        } else {
            if (src->events) {
                atomic_fetch_add(&n->publish_errors, 1);
                atomic_store(&n->connected, 0);
            }
            SL_INFO("nats: publishing %s after %llu was not acknowledged; retrying", src->what,
                    (unsigned long long)cursor);
            sleep_ms(n, RETRY_MS);
        }
        page_free(p);
    }
    free(p);
    if (nc) natsConnection_Destroy(nc);
}

/* edge: the stored events, from the durable cursor */
static void forward_main(void *arg)
{
    sl_nats_t *n = arg;
    sl_thread_name("sl-nats-fwd");
    static const source_t events = {"events", 1};
    publish_main(n, &events, n->cfg->nats.events_subject, n->stored_cursor, &n->want_cursor, &n->published);
}

/* core: the durable trigger feed, from its own cursor */
static void triggers_main(void *arg)
{
    sl_nats_t *n = arg;
    sl_thread_name("sl-nats-trig");
    static const source_t triggers = {"triggers", 0};
    publish_main(n, &triggers, n->cfg->nats.triggers_subject, n->stored_trig_cursor, &n->want_trig_cursor,
                 &n->triggers_published);
}

/* ---- core: the consumer ---- */

static void consume_main(void *arg)
{
    sl_nats_t *n = arg;
    sl_thread_name("sl-nats-core");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    uint64_t position = n->stored_cursor; /* for the core, stored_cursor is the applied position */
    int idle = 0;
    while (!atomic_load(&n->stopping)) {
        if (nc == NULL && (nc = nats_connect(n)) == NULL) {
            sleep_ms(n, RETRY_MS);
            continue;
        }
        if (sub == NULL) {
            jsOptions jo;
            jsOptions_Init(&jo);
            jo.Wait = 5000;
            jsSubOptions so;
            jsSubOptions_Init(&so);
            so.Stream = n->cfg->nats.stream;
            so.Config.AckPolicy = js_AckExplicit;
            /* A fetched batch whose reply was lost (a cluster node died) comes
             * back after AckWait; a redelivery of what was applied is only
             * acknowledged, so a short wait costs nothing but a resend. */
            so.Config.AckWait = 10LL * 1000000000LL;
            so.Config.MaxAckPending = 4096;
            jsErrCode jerr = 0;
            if ((js || natsConnection_JetStream(&js, nc, &jo) == NATS_OK) && ensure_stream(n, js) == 0 &&
                js_PullSubscribe(&sub, js, n->cfg->nats.events_subject, n->cfg->nats.consumer, &jo, &so, &jerr) ==
                    NATS_OK) {
                atomic_store(&n->connected, 1);
                SL_INFO("nats: consuming %s as %s from position %llu", n->cfg->nats.events_subject,
                        n->cfg->nats.consumer, (unsigned long long)position);
            } else {
                atomic_store(&n->connected, 0);
                sleep_ms(n, RETRY_MS);
                continue;
            }
        }
        nbatch_t *b = calloc(1, sizeof(*b));
        if (b == NULL) {
            sleep_ms(n, RETRY_MS);
            continue;
        }
        jsErrCode jerr = 0;
        natsStatus s = natsSubscription_Fetch(&b->list, sub, PAGE, 1000, &jerr);
        if (s == NATS_OK && b->list.Count > 0) {
            idle = 0;
        } else {
            natsMsgList_Destroy(&b->list);
            free(b);
            /* An error, or a long silence: the server behind the pull may be
             * gone (a cluster node died). Subscribe again: the durable
             * consumer keeps its place. */
            if ((s != NATS_TIMEOUT && s != NATS_OK) || ++idle >= 5) {
                natsSubscription_Destroy(sub);
                sub = NULL;
                idle = 0;
                if (s != NATS_TIMEOUT && s != NATS_OK) {
                    atomic_store(&n->connected, 0);
                    sleep_ms(n, RETRY_MS);
                }
            }
            continue;
        }
        atomic_store(&n->connected, 1);
        /* Already applied (redelivered after a crash between commit and ack): acknowledge only. */
        int keep = 0;
        for (int i = 0; i < b->list.Count; i++) {
            jsMsgMetaData *md = NULL;
            uint64_t sseq = 0;
            if (natsMsg_GetMetaData(&md, b->list.Msgs[i]) == NATS_OK) {
                sseq = md->Sequence.Stream;
                jsMsgMetaData_Destroy(md);
            }
            if (sseq && sseq <= position) {
                natsMsg_Ack(b->list.Msgs[i], NULL);
                natsMsg_Destroy(b->list.Msgs[i]);
                continue;
            }
            if (sseq > b->position) b->position = sseq;
            b->list.Msgs[keep++] = b->list.Msgs[i];
        }
        b->list.Count = keep;
        if (keep == 0) {
            natsMsgList_Destroy(&b->list);
            free(b);
            continue;
        }
        b->n_owner = n;
        uv_mutex_lock(&n->mu);
        n->batch_done = 0;
        uv_mutex_unlock(&n->mu);
        /* One batch at a time: wait for the loop thread's commit. A batch
         * the loop can no longer take (it stopped) is dropped unacknowledged;
         * one it took is submitted, and the store's drain answers it. */
        int abandoned = sl_handoff_push(&n->ready, b) != 0;
        uv_mutex_lock(&n->mu);
        while (!abandoned && !n->batch_done) uv_cond_timedwait(&n->cv, &n->mu, 100000000ULL);
        int rc = abandoned ? -1 : n->batch_rc;
        uv_mutex_unlock(&n->mu);
        if (rc == 0) position = b->position;
        else if (!abandoned) sleep_ms(n, RETRY_MS); /* not acknowledged: redelivered after AckWait */
        natsMsgList_Destroy(&b->list);
        sl_arena_free(&b->arena);
        free(b->msgs);
        free(b);
    }
    if (sub) natsSubscription_Destroy(sub);
    if (js) jsCtx_Destroy(js);
    if (nc) natsConnection_Destroy(nc);
}

static int position_job(MDB_txn *txn, void *arg)
{
    nbatch_t *b = arg;
    return sl_store_meta_put(b->n_owner->store, txn, "nats_position", b->position);
}

static void batch_done(sl_store_batch_t *sb)
{
    nbatch_t *b = sb->data;
    sl_nats_t *n = b->n_owner;
    if (sb->rc == 0) {
        for (int i = 0; i < b->list.Count; i++) natsMsg_Ack(b->list.Msgs[i], NULL);
        atomic_fetch_add(&n->consumed, (uint64_t)b->list.Count);
        atomic_store(&n->applied_position, b->position);
    } else {
        SL_WARN("nats: a batch of %d events could not be stored (%s); it will be redelivered", b->list.Count,
                sl_strerror(sb->rc));
    }
    uv_mutex_lock(&n->mu);
    n->batch_done = 1;
    n->batch_rc = sb->rc;
    uv_cond_signal(&n->cv);
    uv_mutex_unlock(&n->mu);
}

/* Loop thread: a fetched batch becomes a store batch; the stage derives
 * from the stored events as from any others. */
static void submit_batch(sl_nats_t *n, nbatch_t *b)
{
    b->n = (size_t)b->list.Count;
    b->msgs = calloc(b->n, sizeof(*b->msgs));
    int64_t now = sl_now_ms();
    size_t k = 0;
    /* every parse tree of the batch lives in its arena, freed with it */
    sl_arena_t *saved = sl_json_arena_swap(&b->arena);
    for (size_t i = 0; b->msgs && i < b->n; i++) {
        natsMsg *m = b->list.Msgs[i];
        const char *data = natsMsg_GetData(m);
        int len = natsMsg_GetDataLength(m);
        cJSON *doc = cJSON_ParseWithLength(data, (size_t)len);
        const cJSON *mid = cJSON_GetObjectItemCaseSensitive(doc, "messageId");
        if (!cJSON_IsString(mid)) continue; /* not an event of ours: acknowledged, dropped */
        sl_store_msg_t *sm = &b->msgs[k++];
        sm->json = data;
        sm->json_len = (size_t)len;
        sm->received_ms = now;
        sm->dedupe = sl_store_dedupe_key(n->store, "nats", mid->valuestring);
    }
    sl_json_arena_swap(saved);
    b->batch = (sl_store_batch_t){.msgs = b->msgs, .n_msgs = k, .done = batch_done, .data = b,
                                  .job = position_job, .job_arg = b};
    int rc = b->msgs ? sl_store_submit(n->store, &b->batch) : SL_ENOMEM;
    if (rc) {
        b->batch.rc = rc;
        batch_done(&b->batch);
    }
}

/* ---- edge retention ---- */

/* The time in doc's member name (ISO 8601), or -1. */
static int64_t doc_time(const cJSON *doc, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, name);
    int64_t ms;
    return cJSON_IsString(v) && sl_time_parse_iso(v->valuestring, strlen(v->valuestring), &ms) == 0 ? ms : -1;
}

/* 1 when the forwarded event (json) is past the shortest retention that
 * could apply to it, and was received nats.edge_keep ago at least (JetStream
 * may acknowledge what is not on its disk yet); an event without readable
 * times is kept. */
static int edge_due(const sl_config_t *cfg, const char *json, size_t len, int64_t now)
{
    cJSON *doc = cJSON_ParseWithLength(json, len);
    if (doc == NULL) return 0;
    const cJSON *sil = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "context"), "sillage");
    const sl_source_t *src = sl_config_source(cfg, sl_json_str(sil, "source"));
    int64_t r = cfg->anonymous_retention_ms, at = doc_time(doc, "timestamp"), got = doc_time(doc, "receivedAt");
    if (src && src->retention_ms && (r == 0 || src->retention_ms < r)) r = src->retention_ms;
    int due = r && at >= 0 && now - at > r && got >= 0 && now - got >= cfg->nats.edge_keep_ms;
    cJSON_Delete(doc);
    return due;
}

static int prune_take(const char *json, size_t len, uint64_t seq, void *arg)
{
    sl_nats_t *n = arg;
    if (seq > n->run.upto) return 1; /* not forwarded yet */
    if (n->run.examined == PRUNE_RUN) {
        n->run.more = 1;
        return 1;
    }
    n->run.examined++;
    n->run.last = seq;
    if (!edge_due(n->cfg, json, len, n->run.now)) return 0;
    if (n->run.n == n->run.cap) {
        size_t cap = n->run.cap ? 2 * n->run.cap : 256;
        uint64_t *s = realloc(n->run.seqs, cap * sizeof(*s));
        if (s == NULL) return SL_ENOMEM;
        n->run.seqs = s, n->run.cap = cap;
    }
    n->run.seqs[n->run.n++] = seq;
    return 0;
}

/* A threadpool thread, in a read transaction: which forwarded events are due,
 * from the durable cursor; the ingestion writer is not held meanwhile. */
static int prune_read(MDB_txn *txn, void *arg)
{
    sl_nats_t *n = arg;
    uint64_t at_end = 0;
    int rc;
    if ((rc = sl_store_meta_get(n->store, txn, "nats_cursor", &n->run.upto)) ||
        (rc = sl_store_meta_get(n->store, txn, "edge_prune_next", &n->run.next)) ||
        (rc = sl_store_meta_get(n->store, txn, "edge_prune_pass", &n->run.pass)) ||
        (rc = sl_store_meta_get(n->store, txn, "edge_prune_at_end", &at_end)))
        return rc;
    n->run.was_next = n->run.next, n->run.was_pass = n->run.pass, n->run.was_at_end = at_end;
    if (n->run.pass == 0 || (at_end && n->run.now - (int64_t)n->run.pass >= n->prune_every_ms)) {
        n->run.next = 1; /* a new pass: what was young at the last one has aged */
        n->run.pass = (uint64_t)n->run.now;
        n->run.new_pass = 1;
    }
    rc = sl_store_foreach_event_from(n->store, txn, n->run.next, prune_take, n);
    if (rc < 0 || rc > 1) return rc;
    if (n->run.last) n->run.next = n->run.last + 1;
    return 0;
}

static void prune_work(uv_work_t *w)
{
    sl_nats_t *n = w->data;
    n->run.n = 0, n->run.examined = 0, n->run.more = 0, n->run.new_pass = 0, n->run.last = 0;
    n->run.now = sl_now_ms();
    n->run.rc = sl_store_read(n->store, prune_read, n);
}

/* The store's writer thread, in its transaction: the run's deletions and
 * cursor, in one short commit (may run again: it only repeats the same). */
static int prune_job(MDB_txn *txn, void *arg)
{
    sl_nats_t *n = arg;
    int rc;
    if ((rc = sl_store_erase_events_txn(n->store, txn, n->run.seqs, n->run.n)) ||
        (rc = sl_store_meta_put(n->store, txn, "edge_prune_next", n->run.next)) ||
        (rc = sl_store_meta_put(n->store, txn, "edge_prune_pass", n->run.pass)))
        return rc;
    return sl_store_meta_put(n->store, txn, "edge_prune_at_end", !n->run.more);
}

static void prune_tick(uv_timer_t *t);

static void prune_again(sl_nats_t *n, int failed)
{
    if (atomic_load(&n->stopping)) return; /* the timer is closed */
    /* (the timer fires once: one run at a time) */
    uv_timer_start(&n->prune_timer, prune_tick, (uint64_t)sl_config_retention_wait_ms(n->cfg, failed, n->run.more), 0);
}

/* Loop thread: the run is committed (or failed); the next one is timed. */
static void prune_done(sl_store_batch_t *b)
{
    sl_nats_t *n = b->data;
    if (b->rc) {
        SL_ERROR("edge retention: a run failed (%s); trying again in a second", sl_strerror(b->rc));
    } else {
        atomic_fetch_add(&n->pruned, n->run.n);
        atomic_fetch_add(&n->examined, n->run.examined);
        if (n->run.new_pass) atomic_fetch_add(&n->prune_passes, 1);
        if (n->run.n) SL_INFO("edge retention: %zu forwarded events pruned", n->run.n);
    }
    prune_again(n, b->rc != 0);
}

/* Loop thread: the read is done; its deletions go to the writer. */
static void prune_read_done(uv_work_t *w, int status)
{
    sl_nats_t *n = w->data;
    if (status == 0 && n->run.rc)
        SL_ERROR("edge retention: reading the log failed (%s); trying again in a second", sl_strerror(n->run.rc));
    if (status || n->run.rc || atomic_load(&n->stopping)) {
        prune_again(n, 1);
        return;
    }
    if (n->run.n == 0 && n->run.next == n->run.was_next && n->run.pass == n->run.was_pass &&
        (uint64_t)!n->run.more == n->run.was_at_end) { /* an idle edge: no commit, no fsync */
        if (n->run.examined) atomic_fetch_add(&n->examined, n->run.examined);
        prune_again(n, 0);
        return;
    }
    n->prune_job = (sl_store_batch_t){.job = prune_job, .job_arg = n, .done = prune_done, .data = n};
    if (sl_store_submit(n->store, &n->prune_job)) prune_again(n, 1); /* the store is busy: a second later */
}

static void prune_tick(uv_timer_t *t)
{
    sl_nats_t *n = t->data;
    if (atomic_load(&n->stopping)) return;
    n->prune_work.data = n;
    if (uv_queue_work(n->loop, &n->prune_work, prune_work, prune_read_done)) prune_again(n, 1);
}

/* ---- loop thread ---- */

static int cursor_job(MDB_txn *txn, void *arg)
{
    sl_nats_t *n = arg;
    int rc = sl_store_meta_put(n->store, txn, "nats_cursor", n->job_values[0]);
    if (rc == 0) rc = sl_store_meta_put(n->store, txn, "nats_triggers_cursor", n->job_values[1]);
    return rc;
}

static void cursor_done(sl_store_batch_t *b)
{
    sl_nats_t *n = b->data;
    n->job_busy = 0;
    if (b->rc == 0) {
        n->stored_cursor = n->job_values[0];
        n->stored_trig_cursor = n->job_values[1];
    }
    notify(n); /* more may have moved meanwhile */
}

/* Loop thread: a fetched batch to store, cursors to store. */
static void on_ready(sl_handoff_t *h)
{
    sl_nats_t *n = h->data;
    for (nbatch_t *b = sl_handoff_take_all(h), *next; b; b = next) {
        next = b->next;
        submit_batch(n, b);
    }
    uint64_t c = atomic_load(&n->want_cursor), t = atomic_load(&n->want_trig_cursor);
    if (n->job_busy || (c <= n->stored_cursor && t <= n->stored_trig_cursor)) return;
    n->job_values[0] = c > n->stored_cursor ? c : n->stored_cursor;
    n->job_values[1] = t > n->stored_trig_cursor ? t : n->stored_trig_cursor;
    n->job = (sl_store_batch_t){.job = cursor_job, .job_arg = n, .done = cursor_done, .data = n};
    n->job_busy = 1;
    if (sl_store_submit(n->store, &n->job)) n->job_busy = 0; /* busy: the next wake-up tries again */
}

static int load_cursors(MDB_txn *txn, void *arg)
{
    sl_nats_t *n = arg;
    int rc = sl_store_meta_get(n->store, txn, n->cfg->role == SL_ROLE_CORE ? "nats_position" : "nats_cursor",
                               &n->stored_cursor);
    if (rc == 0) rc = sl_store_meta_get(n->store, txn, "nats_triggers_cursor", &n->stored_trig_cursor);
    return rc;
}

int sl_nats_new(sl_nats_t **out, const sl_config_t *cfg, sl_store_t *store, sl_stage_t *stage, sl_feed_t *feed)
{
    *out = NULL;
    if (cfg->role == SL_ROLE_ALL) return 0;
    sl_nats_t *n = calloc(1, sizeof(*n));
    if (n == NULL) return SL_ENOMEM;
    n->cfg = cfg;
    n->store = store;
    n->stage = stage;
    n->feed = feed;
    sl_url_redact(cfg->nats.url, n->shown_url, sizeof(n->shown_url));
    uv_mutex_init(&n->mu);
    uv_cond_init(&n->cv);
    if (cfg->role == SL_ROLE_EDGE) sl_store_on_durable(store, advanced_log, n);
    else if (feed && sl_feed_subscribe(feed, advanced, n)) {
        sl_nats_free(n);
        return SL_EINVAL;
    }
    *out = n;
    return 0;
}

int sl_nats_start(sl_nats_t *n, uv_loop_t *loop)
{
    if (n == NULL) return 0;
    const sl_config_t *cfg = n->cfg;
    n->loop = loop;
    int rc = sl_store_read(n->store, load_cursors, n);
    n->ready.data = n;
    if (rc == 0) rc = sl_handoff_init(&n->ready, offsetof(nbatch_t, next), loop, on_ready);
    if (rc) return rc;
    n->ready_open = 1;
    atomic_store(&n->want_cursor, n->stored_cursor);
    atomic_store(&n->want_trig_cursor, n->stored_trig_cursor);
    atomic_store(&n->applied_position, n->stored_cursor);
    if (cfg->role == SL_ROLE_EDGE) {
        rc = uv_thread_create(&n->thread, forward_main, n);
        n->have_thread = rc == 0;
        if (rc == 0 && (n->prune_every_ms = sl_config_retention_pass_ms(cfg)) > 0) {
            uv_timer_init(loop, &n->prune_timer);
            n->prune_timer.data = n;
            uv_timer_start(&n->prune_timer, prune_tick, 1000, 0);
            SL_INFO("edge retention: forwarded events past their retention are pruned, a pass every %lld s",
                    (long long)(n->prune_every_ms / 1000));
        }
    } else {
        rc = uv_thread_create(&n->thread, consume_main, n);
        n->have_thread = rc == 0;
        if (rc == 0 && n->feed) n->have_trig_thread = uv_thread_create(&n->trig_thread, triggers_main, n) == 0;
    }
    SL_INFO("nats: %s node on %s, stream %s", cfg->role == SL_ROLE_EDGE ? "edge" : "core", n->shown_url,
            cfg->nats.stream);
    return rc;
}

/* Loop thread, before the server stops (so that what is handed over is
 * still committed by the store's drain). The threads end by themselves; a
 * core batch already submitted is committed and acknowledged during the
 * drain; sl_nats_free() joins them after the loop has ended. */
void sl_nats_stop(sl_nats_t *n)
{
    if (n == NULL || atomic_load(&n->stopping)) return;
    atomic_store(&n->stopping, 1);
    uv_mutex_lock(&n->mu);
    uv_cond_broadcast(&n->cv);
    uv_mutex_unlock(&n->mu);
    if (!n->ready_open) return; /* never started */
    n->ready_open = 0;
    sl_handoff_close(&n->ready, NULL); /* the threads' batches and wake-ups are refused from now on */
    on_ready(&n->ready);               /* a batch handed over before, the last cursors */
    if (n->prune_every_ms) uv_close((uv_handle_t *)&n->prune_timer, NULL); /* a run under way still ends */
}

void sl_nats_free(sl_nats_t *n)
{
    if (n == NULL) return;
    if (n->have_thread) uv_thread_join(&n->thread);
    if (n->have_trig_thread) uv_thread_join(&n->trig_thread);
    sl_handoff_destroy(&n->ready);
    uv_mutex_destroy(&n->mu);
    uv_cond_destroy(&n->cv);
    free(n->run.seqs);
    free(n);
}

void sl_nats_get_stats(const sl_nats_t *n, sl_nats_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    if (n == NULL) return;
    sl_store_stats_t st;
    sl_store_get_stats(n->store, &st);
    out->role = n->cfg->role;
    out->connected = atomic_load(&n->connected);
    out->published = atomic_load(&n->published);
    out->publish_errors = atomic_load(&n->publish_errors);
    out->consumed = atomic_load(&n->consumed);
    out->position = atomic_load(&n->applied_position);
    out->triggers_published = atomic_load(&n->triggers_published);
    uint64_t c = atomic_load(&n->want_cursor);
    out->lag = n->cfg->role == SL_ROLE_EDGE && st.last_seq > c ? st.last_seq - c : 0;
    out->pruned = atomic_load(&n->pruned);
    out->examined = atomic_load(&n->examined);
    out->prune_passes = atomic_load(&n->prune_passes);
}

void sl_nats_metrics(void *arg, sl_buf_t *b)
{
    sl_nats_stats_t ns;
    sl_nats_get_stats(arg, &ns);
    sl_metric_u64(b, "gauge", "sillage_nats_connected", "1 when the last NATS operation worked.",
                  (uint64_t)ns.connected);
    sl_metric_u64(b, "counter", "sillage_nats_published_total",
                  "Events published to JetStream and acknowledged (edge).", ns.published);
    sl_metric_u64(b, "counter", "sillage_nats_publish_errors_total",
                  "Publish rounds that failed and were retried (edge).", ns.publish_errors);
    sl_metric_u64(b, "gauge", "sillage_nats_lag_events", "Stored events not yet acknowledged by JetStream (edge).",
                  ns.lag);
    sl_metric_u64(b, "counter", "sillage_nats_consumed_total", "Events stored from the stream (core).", ns.consumed);
    sl_metric_u64(b, "gauge", "sillage_nats_position", "The last stream sequence stored (core).", ns.position);
    sl_metric_u64(b, "counter", "sillage_nats_triggers_published_total",
                  "Triggers published to the triggers subject (core).", ns.triggers_published);
    if (ns.role != SL_ROLE_EDGE) return; /* a core's retention counters are the stitcher's */
    sl_metric_u64(b, "counter", "sillage_retention_pruned_events_total",
                  "Forwarded events removed from the edge's log past their retention.", ns.pruned);
    sl_metric_u64(b, "counter", "sillage_retention_examined_events_total",
                  "Forwarded events the edge's retention looked at (each pass reads them all).", ns.examined);
    sl_metric_u64(b, "counter", "sillage_retention_passes_total", "Passes of the edge's retention begun.",
                  ns.prune_passes);
}
