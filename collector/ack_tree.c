/* ack_tree.c - the reference reader of an ingestion body (ack.h): prescan
 * (depth, UTF-8), cJSON parse, a check that no object repeats a member,
 * the write key, then per message sl_msg_normalize() and sl_json_print().
 * ack_scan() must answer every body as this does; it hands this the bodies
 * it does not read itself. */
#include "ack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const sl_source_t *ack_find_source(const sl_config_t *cfg, const char *key, size_t len)
{
    /* Every source is compared, each in constant time: the answer's timing
     * says nothing about which bytes of which key matched. */
    const sl_source_t *found = NULL;
    for (size_t i = 0; i < cfg->n_sources; i++) {
        const char *wk = cfg->sources[i].write_key;
        if (sl_secret_equal(key, len, wk, strlen(wk)) && found == NULL) found = &cfg->sources[i];
    }
    return found;
}

void ack_out_free(ack_out_t *out)
{
    free(out->msgs);
    sl_buf_free(&out->errors);
    sl_buf_free(&out->warnings);
    memset(out, 0, sizeof(*out));
}

static void refuse(ack_out_t *out, int status, const char *why)
{
    out->status = status;
    out->error = why;
}

void ack_reject(ack_out_t *out, long index, const char *msg)
{
    if (out->n_rejected) sl_buf_append(&out->errors, ",", 1);
    if (index >= 0) sl_buf_printf(&out->errors, "{\"index\":%ld,\"error\":", index);
    else sl_buf_appends(&out->errors, "{\"error\":");
    sl_buf_append_json_str(&out->errors, msg, strlen(msg));
    sl_buf_append(&out->errors, "}", 1);
    out->n_rejected++;
}

/* The write key from "Authorization: Basic base64(key:)", else from the
 * body's writeKey. Returns the source, or NULL with *why set. */
static const sl_source_t *authenticate(const ack_in_t *in, const cJSON *body, const char **why)
{
    if (in->basic) {
        *why = in->basic_why;
        return in->basic_src;
    }
    const cJSON *wk = cJSON_GetObjectItemCaseSensitive(body, "writeKey");
    if (cJSON_IsString(wk)) {
        const sl_source_t *s = ack_find_source(in->cfg, wk->valuestring, strlen(wk->valuestring));
        if (s) return s;
        *why = "unknown write key";
        return NULL;
    }
    *why = "missing write key: send it as the Basic auth username or as writeKey in the body";
    return NULL;
}

/* An identify whose traits a profile cannot keep all of (a person keeps at
 * most limits.max_traits_per_person traits in limits.max_traits_bytes): the
 * message is stored whole, the answer says so. What a person accumulated
 * over many messages is bounded by the stage, which counts what it drops
 * (sillage_traits_dropped_total). */
static void note_traits(const ack_in_t *in, ack_out_t *out, const cJSON *msg, size_t printed_len)
{
    const sl_config_t *cfg = in->cfg;
    const cJSON *traits = cJSON_GetObjectItemCaseSensitive(msg, "traits");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(msg, "type");
    if (!cJSON_IsObject(traits) || !cJSON_IsString(type) || strcmp(type->valuestring, "identify") != 0) return;
    size_t n = (size_t)cJSON_GetArraySize(traits);
    if (n <= cfg->limits.max_traits_per_person) {
        /* the traits are part of the message: one that fits is no news, and
         * most do -- only then are they printed alone (the scratch buffer is
         * free again: the message was copied out of it) */
        if (printed_len <= cfg->limits.max_traits_bytes) return;
        size_t tl;
        if (sl_json_print(traits, in->scratch, in->scratch_len, &tl)) return;
        if (tl <= cfg->limits.max_traits_bytes) return;
    }
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(msg, "messageId");
    ack_traits_warning(cfg, &out->warnings, mid->valuestring, n);
}

void ack_traits_warning(const sl_config_t *cfg, sl_buf_t *w, const char *mid, size_t n)
{
    if (w->len) sl_buf_append(w, ",", 1);
    sl_buf_appends(w, "{\"messageId\":");
    sl_buf_append_json_str(w, mid, strlen(mid));
    sl_buf_printf(w, ",\"warning\":\"stored, but its %zu traits are more than a profile keeps: a person "
                     "keeps at most limits.max_traits_per_person (%llu) traits in limits.max_traits_bytes "
                     "(%llu); the rest is not kept\"}",
                  n, (unsigned long long)cfg->limits.max_traits_per_person,
                  (unsigned long long)cfg->limits.max_traits_bytes);
}

/* 1 (with the error in msg) when an object of x, outside skip, repeats a member. */
static int duplicate_member(const cJSON *x, const cJSON *skip, char *msg, size_t msg_len)
{
    const char *d = sl_json_dup_member(x, skip);
    if (d == NULL) return 0;
    snprintf(msg, msg_len, "an object repeats the member \"%.64s\": each name may appear once", d);
    return 1;
}

/* Normalises one message and appends its printed form to out.
 * Returns NULL or why it was refused (*status: the HTTP status a single
 * message gets for it; *over: the whole request is refused).
 *
 * The message is printed into the scratch buffer (max_message_bytes plus
 * 4 KB for the fields the server adds) and copied into the request's arena,
 * which lives until the commit is answered. A message that does not fit once
 * normalised -- cJSON prints 9e15 as 9e+15, a batch's context is merged in --
 * is refused: the stored form is bounded, and nothing printed into the JSON
 * arena (emptied when the request is handled) ever reaches the writer. */
static const char *accept_message(const ack_in_t *in, ack_out_t *out, cJSON *msg, int type,
                                  const sl_ingest_ctx_t *ctx, int *status, int *over)
{
    *status = 400;
    const char *why = sl_msg_normalize(msg, type, ctx);
    if (why) return why;
    size_t len;
    if (sl_json_print(msg, in->scratch, in->scratch_len, &len)) {
        *status = 413;
        return ACK_TOO_BIG_NORMALISED;
    }
    if (out->stored_bytes + len > ACK_STORED_BYTES(in->cfg, out->n_in_request)) {
        *status = 413;
        *over = 1;
        return ACK_TOO_BIG_REQUEST;
    }
    char *json = sl_arena_strndup(in->arena, in->scratch, len);
    if (json == NULL) return "out of memory";
    out->stored_bytes += len;
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(msg, "messageId");
    /* copied: the tree may be freed before the dedupe key is made */
    const char *mids = sl_arena_strndup(in->arena, mid->valuestring, strlen(mid->valuestring));
    if (mids == NULL) return "out of memory";
    out->mids[out->n_msgs] = mids;
    sl_store_msg_t *m = &out->msgs[out->n_msgs++];
    m->json = json;
    m->json_len = len;
    m->received_ms = ctx->received_ms;
    note_traits(in, out, msg, len);
    return NULL;
}

/* msgs for n messages; 0, or -1 after refusing the request */
int ack_alloc_msgs(const ack_in_t *in, ack_out_t *out, size_t n)
{
    out->n_in_request = n;
    out->msgs = calloc(n, sizeof(sl_store_msg_t));
    out->mids = sl_arena_alloc(in->arena, n * sizeof(*out->mids));
    if (out->msgs == NULL || out->mids == NULL) {
        refuse(out, 503, "out of memory");
        return -1;
    }
    return 0;
}

void ack_tree(const ack_in_t *in, const char *body, size_t len, ack_out_t *out)
{
    const sl_config_t *cfg = in->cfg;
    memset(out, 0, sizeof(*out));
    const char *why = sl_json_prescan(body, len, cfg->limits.max_json_depth);
    if (why) {
        refuse(out, 400, why);
        out->log = ACK_LOG_BODY;
        return;
    }
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &parse_end, 0);
    if (root == NULL) {
        refuse(out, 400, "body is not valid JSON");
        goto out;
    }
    while (parse_end && parse_end < body + len && strchr(" \t\r\n", *parse_end) && *parse_end) parse_end++;
    if (parse_end != body + len) {
        refuse(out, 400, "body has bytes after its JSON value");
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        refuse(out, 400, "body must be a JSON object");
        goto out;
    }
    /* A repeated member (two writeKeys, two userIds) would be read one way
     * here and another way by whoever reads the stored event. In a batch,
     * each message is checked on its own below. */
    int type = in->type;
    const cJSON *batch = type == -1 ? cJSON_GetObjectItemCaseSensitive(root, "batch") : NULL;
    char dupmsg[160];
    if (duplicate_member(root, batch, dupmsg, sizeof(dupmsg))) {
        snprintf(out->errbuf, sizeof(out->errbuf), "%s", dupmsg);
        refuse(out, 400, out->errbuf);
        goto out;
    }
    const sl_source_t *src = authenticate(in, root, &why);
    if (src == NULL) {
        refuse(out, 401, why);
        out->log = ACK_LOG_AUTH;
        goto out;
    }
    out->src = src;
    sl_ingest_ctx_t ctx = {0};
    ctx.received_ms = in->received_ms;
    ctx.source = src->name;
    ctx.ip = in->ip;
    ctx.location = in->location;
    ctx.max_print = in->scratch_len;
    if (type != -1) {
        if (len > cfg->limits.max_message_bytes) {
            snprintf(out->errbuf, sizeof(out->errbuf), "message exceeds limits.max_message_bytes (%llu bytes)",
                     (unsigned long long)cfg->limits.max_message_bytes);
            refuse(out, 413, out->errbuf);
            goto out;
        }
        if (ack_alloc_msgs(in, out, 1)) goto out;
        int status, over = 0;
        why = accept_message(in, out, root, type, &ctx, &status, &over);
        if (why && status != 400) {
            refuse(out, status, why);
            goto out;
        }
        if (why) ack_reject(out, -1, why);
        goto out;
    }

    if (!cJSON_IsArray(batch)) {
        refuse(out, 400, "batch must be an array of messages");
        goto out;
    }
    size_t n = (size_t)cJSON_GetArraySize(batch);
    if (n == 0) {
        refuse(out, 400, "batch is empty");
        goto out;
    }
    if (n > cfg->limits.max_batch_messages) {
        snprintf(out->errbuf, sizeof(out->errbuf), "batch holds %zu messages; limits.max_batch_messages is %llu", n,
                 (unsigned long long)cfg->limits.max_batch_messages);
        refuse(out, 413, out->errbuf);
        goto out;
    }
    const cJSON *bctx = cJSON_GetObjectItemCaseSensitive(root, "context");
    const cJSON *bsent = cJSON_GetObjectItemCaseSensitive(root, "sentAt");
    ctx.batch_context = cJSON_IsObject(bctx) ? bctx : NULL;
    ctx.batch_sent_at = cJSON_IsString(bsent) ? bsent->valuestring : NULL;
    if (ack_alloc_msgs(in, out, n)) goto out;
    long i = 0;
    for (cJSON *m = batch->child; m; m = m->next, i++) {
        /* A body within max_message_bytes cannot hold a message over it. */
        size_t ml;
        if (len > cfg->limits.max_message_bytes &&
            sl_json_print(m, in->scratch, cfg->limits.max_message_bytes + 1, &ml)) {
            char msg[128];
            snprintf(msg, sizeof(msg), "message exceeds limits.max_message_bytes (%llu bytes)",
                     (unsigned long long)cfg->limits.max_message_bytes);
            ack_reject(out, i, msg);
            continue;
        }
        if (duplicate_member(m, NULL, dupmsg, sizeof(dupmsg))) {
            ack_reject(out, i, dupmsg);
            continue;
        }
        int status, over = 0;
        why = accept_message(in, out, m, -1, &ctx, &status, &over);
        if (over) {
            refuse(out, 413, why);
            goto out;
        }
        if (why) ack_reject(out, i, why);
    }
out:
    if (!in->tree_in_arena) cJSON_Delete(root);
}
