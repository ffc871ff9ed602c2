/* message.c - validation and normalisation of one Segment message into the
 * form sillage stores. Errors are short static sentences that go straight
 * into the client's JSON answer. */
#include "sl_collector.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ID_CHARS 256

static const char *const type_names[SL_MSG_NTYPES] = {"track", "page", "screen", "identify", "alias", "group"};

int sl_msg_type_from_name(const char *name, size_t len)
{
    for (int i = 0; i < SL_MSG_NTYPES; i++)
        if (strlen(type_names[i]) == len && memcmp(type_names[i], name, len) == 0) return i;
    return -1;
}

const char *sl_msg_type_name(int type)
{
    return type >= 0 && type < SL_MSG_NTYPES ? type_names[type] : "unknown";
}

int64_t sl_skew_correct(int64_t received_ms, int64_t sent_at_ms, int64_t timestamp_ms)
{
    return received_ms - (sent_at_ms - timestamp_ms);
}

static const char *id_error(const char *key)
{
    if (strcmp(key, "userId") == 0) return "userId must be a string or a number of at most 256 characters";
    if (strcmp(key, "anonymousId") == 0) return "anonymousId must be a string or a number of at most 256 characters";
    if (strcmp(key, "previousId") == 0) return "previousId must be a string or a number of at most 256 characters";
    if (strcmp(key, "groupId") == 0) return "groupId must be a string or a number of at most 256 characters";
    return "messageId must be a string or a number of at most 256 characters";
}

/* Reads an ISO 8601 member. 1 = present and parsed, 0 = absent, -1 = bad. */
static int read_time(const cJSON *v, int64_t *ms)
{
    if (v == NULL || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return -1;
    return sl_time_parse_iso(v->valuestring, strlen(v->valuestring), ms) == 0 ? 1 : -1;
}

static void set_string(cJSON *obj, const char *key, const char *val)
{
    cJSON *s = cJSON_CreateString(val);
    if (s == NULL) return;
    if (cJSON_GetObjectItemCaseSensitive(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, s);
    else cJSON_AddItemToObject(obj, key, s);
}

/* 1 when a number in x is not finite (1e400 parses as infinity, which no
 * JSON printer can write back). Depth is bounded by sl_json_prescan(). */
static int has_nonfinite(const cJSON *x)
{
    if (cJSON_IsNumber(x)) return !isfinite(x->valuedouble);
    for (const cJSON *c = x->child; c; c = c->next)
        if (has_nonfinite(c)) return 1;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Small objects are compared pairwise; larger ones sorted by name. Depth is
 * bounded by sl_json_prescan(). */
const char *sl_json_dup_member(const cJSON *x, const cJSON *skip)
{
    const char *dup = NULL;
    if (cJSON_IsObject(x)) {
        size_t n = 0;
        for (const cJSON *c = x->child; c; c = c->next) n++;
        if (n <= 16) {
            for (const cJSON *a = x->child; a && !dup; a = a->next)
                for (const cJSON *b = a->next; b && !dup; b = b->next)
                    if (a->string && b->string && a->string[0] == b->string[0] && strcmp(a->string, b->string) == 0)
                        dup = a->string;
        } else {
            const char **names = malloc(n * sizeof(*names));
            if (names == NULL) return "(out of memory)";
            size_t k = 0;
            for (const cJSON *c = x->child; c; c = c->next)
                if (c->string) names[k++] = c->string;
            qsort(names, k, sizeof(*names), cmp_name);
            for (size_t i = 1; i < k && !dup; i++)
                if (strcmp(names[i - 1], names[i]) == 0) dup = names[i];
            free(names);
        }
    }
    for (const cJSON *c = x->child; c && !dup && (cJSON_IsObject(x) || cJSON_IsArray(x)); c = c->next)
        if (c != skip) dup = sl_json_dup_member(c, NULL);
    return dup;
}

/* The top-level members sl_msg_normalize() reads or changes, found in one
 * pass (each cJSON_GetObjectItem is a pass of string compares: a dozen of
 * them were a fifth of the ack path's CPU in batches). */
enum {
    K_TYPE, K_USER, K_ANON, K_PREVIOUS, K_GROUP, K_EVENT, K_PROPERTIES, K_TRAITS, K_CONTEXT, K_INTEGRATIONS,
    K_MESSAGE, K_TIMESTAMP, K_ORIGINAL, K_SENT, K_RECEIVED, K_WRITEKEY, K_N
};
static const char *const member_names[K_N] = {
    "type", "userId", "anonymousId", "previousId", "groupId", "event", "properties", "traits", "context",
    "integrations", "messageId", "timestamp", "originalTimestamp", "sentAt", "receivedAt", "writeKey"};

static void index_members(cJSON *msg, cJSON *ix[K_N])
{
    memset(ix, 0, K_N * sizeof(*ix));
    for (cJSON *c = msg->child; c; c = c->next) {
        if (c->string == NULL) continue;
        for (int k = 0; k < K_N; k++)
            if (member_names[k][0] == c->string[0] && strcmp(member_names[k], c->string) == 0) {
                if (ix[k] == NULL) ix[k] = c; /* the first, as cJSON_GetObjectItem finds it */
                break;
            }
    }
}

/* Sets member k of msg to the string val: in its place when it is there (of
 * whatever type), else at the end; ix follows. 0, or -1 out of memory. */
static int put_string(cJSON *msg, cJSON *ix[K_N], int k, const char *val)
{
    cJSON *s = cJSON_CreateString(val);
    if (s == NULL) return -1;
    cJSON *old = ix[k];
    if (old) {
        s->string = old->string; /* the name moves to the new item */
        s->type |= old->type & cJSON_StringIsConst;
        old->string = NULL;
        old->type &= ~cJSON_StringIsConst;
        cJSON_ReplaceItemViaPointer(msg, old, s);
    } else {
        cJSON_AddItemToObject(msg, member_names[k], s);
    }
    ix[k] = s;
    return 0;
}

/* Member k, an id: it may arrive as a string or a number; it is stored as a string. Returns
 * 1 when present and usable, 0 when absent/null/empty, -1 when of a wrong type
 * or too long. */
static int id_at(cJSON *msg, cJSON *ix[K_N], int k)
{
    cJSON *v = ix[k];
    if (v == NULL || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) {
        size_t n = strlen(v->valuestring);
        if (n == 0) return 0;
        return n <= MAX_ID_CHARS ? 1 : -1;
    }
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (!isfinite(d)) return -1;
        char buf[64];
        if (d == floor(d) && fabs(d) < 9007199254740992.0) snprintf(buf, sizeof(buf), "%.0f", d);
        else snprintf(buf, sizeof(buf), "%.17g", d);
        return put_string(msg, ix, k, buf) ? -1 : 1;
    }
    return -1;
}

static int object_or_absent_at(cJSON *const ix[K_N], int k)
{
    return ix[k] == NULL || cJSON_IsNull(ix[k]) || cJSON_IsObject(ix[k]);
}

/* 1 when own[0..n) (sorted when n > 16) holds name */
static int has_name(const char **own, size_t n, const char *name)
{
    if (n > 16) return bsearch(&name, own, n, sizeof(*own), cmp_name) != NULL;
    for (size_t i = 0; i < n; i++)
        if (own[i][0] == name[0] && strcmp(own[i], name) == 0) return 1;
    return 0;
}

/* The batch's context members that context c lacks, added to it. NULL, or
 * why the message is refused.
 *   - Only c's own members can hide one (the batch's names are unique: the
 *     request was checked), so they are looked up among those alone, sorted
 *     when many. Looking each up in c as it grew was quadratic in the batch's
 *     context: 20,000 members took half a second per message.
 *   - They are added as references, not copies, but for sillage, changed
 *     below: a member of 100,000 elements cost every message 100,000 nodes
 *     that lived until the request's end (2.4 GB for a 210 KB request).
 *   - When they cannot fit in ctx->max_print (each prints at least as
 *     "name":0 and a comma; ip, location and sillage may be replaced), none
 *     is added: the message could not be printed. */
static const char *merge_context(cJSON *c, const sl_ingest_ctx_t *ctx)
{
    size_t n = 0, k = 0, least = 0;
    for (const cJSON *x = c->child; x; x = x->next) n++;
    const char **own = malloc((n ? n : 1) * sizeof(*own));
    if (own == NULL) return "out of memory";
    for (const cJSON *x = c->child; x; x = x->next)
        if (x->string) own[k++] = x->string;
    if (k > 16) qsort(own, k, sizeof(*own), cmp_name);
    const char *why = NULL;
    const cJSON *it;
    for (it = ctx->batch_context->child; it && ctx->max_print && least <= ctx->max_print; it = it->next)
        if (!has_name(own, k, it->string) && strcmp(it->string, "ip") != 0 && strcmp(it->string, "location") != 0 &&
            strcmp(it->string, "sillage") != 0)
            least += strlen(it->string) + 5;
    if (least > ctx->max_print) why = SL_MSG_TOO_BIG;
    for (it = ctx->batch_context->child; it && why == NULL; it = it->next) {
        if (has_name(own, k, it->string)) continue;
        if (strcmp(it->string, "sillage") == 0) cJSON_AddItemToObject(c, it->string, cJSON_Duplicate(it, 1));
        else cJSON_AddItemReferenceToObject(c, it->string, (cJSON *)it);
    }
    free(own);
    return why;
}

const char *sl_msg_normalize(cJSON *msg, int type, const sl_ingest_ctx_t *ctx)
{
    if (!cJSON_IsObject(msg)) return "message must be a JSON object";
    if (has_nonfinite(msg)) return "a number is out of range";
    cJSON *ix[K_N];
    index_members(msg, ix);

    /* type */
    cJSON *t = ix[K_TYPE];
    if (type < 0) {
        if (t == NULL || !cJSON_IsString(t)) return "message needs a type: track, page, screen, identify, alias or group";
        type = sl_msg_type_from_name(t->valuestring, strlen(t->valuestring));
        if (type < 0) return "type must be one of track, page, screen, identify, alias, group";
    } else if (put_string(msg, ix, K_TYPE, type_names[type])) {
        return "out of memory";
    }

    /* identities */
    int uid = id_at(msg, ix, K_USER);
    if (uid < 0) return id_error("userId");
    int aid = id_at(msg, ix, K_ANON);
    if (aid < 0) return id_error("anonymousId");
    if (type == SL_MSG_ALIAS) {
        int pid = id_at(msg, ix, K_PREVIOUS);
        if (pid < 0) return id_error("previousId");
        if (pid == 0 || uid == 0) return "alias needs previousId and userId";
    } else if (uid == 0 && aid == 0) {
        return "message needs userId or anonymousId";
    }
    if (type == SL_MSG_TRACK) {
        const cJSON *ev = ix[K_EVENT];
        if (ev == NULL || !cJSON_IsString(ev) || ev->valuestring[0] == '\0')
            return "track needs an event name (\"event\")";
        if (strlen(ev->valuestring) > 1024) return "event name is longer than 1024 characters";
    }
    if (type == SL_MSG_GROUP) {
        int gid = id_at(msg, ix, K_GROUP);
        if (gid < 0) return id_error("groupId");
        if (gid == 0) return "group needs groupId";
    }
    if (!object_or_absent_at(ix, K_PROPERTIES)) return "properties must be an object";
    if (!object_or_absent_at(ix, K_TRAITS)) return "traits must be an object";
    if (!object_or_absent_at(ix, K_CONTEXT)) return "context must be an object";
    if (!object_or_absent_at(ix, K_INTEGRATIONS)) return "integrations must be an object";

    /* messageId: the dedupe key; assigned when missing */
    int mid = id_at(msg, ix, K_MESSAGE);
    if (mid < 0) return id_error("messageId");
    if (mid == 0) {
        char uuid[37];
        sl_uuid4(uuid);
        if (put_string(msg, ix, K_MESSAGE, uuid)) return "out of memory";
    }

    /* times: timestamp corrected for the client's clock skew */
    int64_t ts = 0, sent = 0, orig = 0;
    int has_ts = read_time(ix[K_TIMESTAMP], &ts);
    if (has_ts < 0) return "timestamp must be an ISO 8601 date-time string";
    int has_orig = read_time(ix[K_ORIGINAL], &orig);
    if (has_orig < 0) return "originalTimestamp must be an ISO 8601 date-time string";
    int has_sent = read_time(ix[K_SENT], &sent);
    if (has_sent < 0) return "sentAt must be an ISO 8601 date-time string";
    if (has_sent == 0 && ctx->batch_sent_at) {
        if (sl_time_parse_iso(ctx->batch_sent_at, strlen(ctx->batch_sent_at), &sent))
            return "the batch's sentAt must be an ISO 8601 date-time string";
        has_sent = 1;
        if (put_string(msg, ix, K_SENT, ctx->batch_sent_at)) return "out of memory";
    }
    /* A client that already moved its clock reading into originalTimestamp
     * (analytics.js does) keeps it there. */
    if (!has_ts && has_orig) {
        ts = orig;
        has_ts = 1;
    }
    int64_t corrected = ctx->received_ms;
    if (has_ts) corrected = has_sent ? sl_skew_correct(ctx->received_ms, sent, ts) : ts;
    /* A time in the future would pin traits ("the later value wins"),
     * last_seen and the timeline's order: past the tolerance it becomes
     * receivedAt, and the rejected value is kept in context.sillage. */
    int64_t clamped_from = 0;
    int clamped = 0;
    if (corrected > ctx->received_ms + SL_MSG_FUTURE_TOLERANCE_MS) {
        clamped_from = corrected;
        clamped = 1;
        corrected = ctx->received_ms;
    }
    char iso[32];
    if (has_ts && !has_orig) {
        cJSON *copy = cJSON_Duplicate(ix[K_TIMESTAMP], 0);
        if (copy == NULL) return "out of memory";
        cJSON_AddItemToObject(msg, "originalTimestamp", copy);
        ix[K_ORIGINAL] = copy;
    }
    sl_time_format_iso(corrected, iso);
    if (put_string(msg, ix, K_TIMESTAMP, iso)) return "out of memory";
    sl_time_format_iso(ctx->received_ms, iso);
    if (put_string(msg, ix, K_RECEIVED, iso)) return "out of memory";

    /* never store the write key with the event */
    if (ix[K_WRITEKEY]) cJSON_Delete(cJSON_DetachItemViaPointer(msg, ix[K_WRITEKEY]));

    /* context: the batch's shared context under the message's own */
    cJSON *c = ix[K_CONTEXT];
    if (c == NULL || cJSON_IsNull(c)) {
        if (c) cJSON_Delete(cJSON_DetachItemViaPointer(msg, c));
        c = cJSON_AddObjectToObject(msg, "context");
        if (c == NULL) return "out of memory";
    }
    if (cJSON_IsObject(ctx->batch_context)) {
        const char *why = merge_context(c, ctx);
        if (why) return why;
    }
    /* context.sillage: what the server says about the message. Its source
     * (a name, never the key) travels with the event, so whoever derives
     * from the log -- this node's stitcher or a NATS core -- knows whether
     * it came from a trusted source. A client's own values are replaced. */
    if (ctx->source || clamped) {
        cJSON *sil = cJSON_GetObjectItemCaseSensitive(c, "sillage");
        if (!cJSON_IsObject(sil)) {
            cJSON_DeleteItemFromObjectCaseSensitive(c, "sillage");
            if ((sil = cJSON_AddObjectToObject(c, "sillage")) == NULL) return "out of memory";
        }
        cJSON_DeleteItemFromObjectCaseSensitive(sil, "clampedTimestamp");
        if (ctx->source) set_string(sil, "source", ctx->source);
        if (clamped) {
            sl_time_format_iso(clamped_from, iso);
            set_string(sil, "clampedTimestamp", iso);
        }
    }
    cJSON_DeleteItemFromObjectCaseSensitive(c, "ip");
    if (ctx->ip) cJSON_AddStringToObject(c, "ip", ctx->ip);
    if (ctx->location) {
        cJSON_DeleteItemFromObjectCaseSensitive(c, "location");
        cJSON_AddItemToObject(c, "location", cJSON_Duplicate(ctx->location, 1));
    }
    return NULL;
}
