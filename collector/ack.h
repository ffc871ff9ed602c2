/* ack.h - what an ingestion request's body comes to: the messages to store,
 * the ones refused and why, or the answer that refuses the whole request.
 * routes.c answers from it; the fuzz target and the tests compare its two
 * readers. Not part of the collector's contract.
 *
 * Two readers give the same result for every body:
 *   ack_scan()  the one the server runs: each message is checked, normalised
 *               and printed in one pass over its text, without a tree;
 *   ack_tree()  the reference: prescan, cJSON parse, sl_msg_normalize() and
 *               sl_json_print() per message. ack_scan() hands it a body it
 *               does not read itself (not valid JSON, a repeated member, an
 *               escaped member name, a number out of range...: ack.c lists
 *               them), so such a body is answered exactly as before.
 * Both run on the loop thread and write only into in->scratch, in->arena and
 * *out. */
#ifndef SL_ACK_H
#define SL_ACK_H

#include "sl_collector.h"

typedef struct ack_in_s {
    const sl_config_t *cfg;        /* limits and sources */
    int type;                      /* SL_MSG_* for a single-message route, -1 for the batch */
    int basic;                     /* the request carries Authorization: Basic, */
    const sl_source_t *basic_src;  /* ... whose source is this, or NULL with basic_why */
    const char *basic_why;
    int64_t received_ms;
    const char *ip;                /* context.ip as stored, or NULL */
    const cJSON *location;         /* context.location, or NULL */
    char *scratch;                 /* one message printed: max_message_bytes + 4 KB */
    size_t scratch_len;
    sl_arena_t *arena;             /* the request's: the stored messages and their ids live here */
    int tree_in_arena;             /* cJSON allocates from an arena reset afterwards: no need to free trees */
} ack_in_t;

enum { ACK_LOG_NONE, ACK_LOG_BODY, ACK_LOG_AUTH };

typedef struct ack_out_s {
    int status;                /* 0: store msgs (there may be none); else refuse the request: */
    const char *error;         /* ... its answer's error (static, or errbuf) */
    char errbuf[192];
    int log;                   /* ACK_LOG_*: the refusal is logged (reading the body, authenticating) */
    const sl_source_t *src;    /* when status is 0 */
    sl_store_msg_t *msgs;      /* n_in_request of them (calloc), json, json_len, received_ms set */
    const char **mids;         /* their messageIds (arena), for the dedupe key */
    size_t n_msgs, n_in_request;
    sl_buf_t errors;           /* members of the answer's "errors" array */
    sl_buf_t warnings;         /* members of its "warnings" array */
    size_t n_rejected;
    size_t stored_bytes;
    int delegated;             /* ack_scan() handed the body to ack_tree() */
} ack_out_t;

/* Fill *out (zeroed first) for body[0..len), len > 0. Free it with ack_out_free(). */
void ack_scan(const ack_in_t *in, const char *body, size_t len, ack_out_t *out);
void ack_tree(const ack_in_t *in, const char *body, size_t len, ack_out_t *out);
void ack_out_free(ack_out_t *out);

/* The source whose write key is key[0..len), compared with every source in
 * constant time; NULL when none. */
const sl_source_t *ack_find_source(const sl_config_t *cfg, const char *key, size_t len);

/* What one request of n messages may store once normalised: a batch's
 * context is copied into each of its messages, so a small request could
 * otherwise store a thousand times its size. The 1 KB per message leaves
 * room for the server's fields (receivedAt, timestamp, messageId, context.ip
 * and a GeoIP city location). */
#define ACK_STORED_BYTES(cfg, n) (4 * (cfg)->limits.max_request_bytes + 1024 * (uint64_t)(n))

/* Shared by the two readers (ack_tree.c). */
#define ACK_TOO_BIG_NORMALISED SL_MSG_TOO_BIG
#define ACK_TOO_BIG_REQUEST                                                                                      \
    "request would store more than 4 x limits.max_request_bytes + 1 KB per message once normalised (a batch's " \
    "context is copied into every message)"
/* Appends {"index":index,"error":msg} (no index when index < 0) to out->errors. */
void ack_reject(ack_out_t *out, long index, const char *msg);
/* The warning for an identify with n traits, more than a profile keeps. */
void ack_traits_warning(const sl_config_t *cfg, sl_buf_t *w, const char *mid, size_t n);
/* out->msgs and out->mids for n messages: 0, or -1 with the request refused (503). */
int ack_alloc_msgs(const ack_in_t *in, ack_out_t *out, size_t n);

#endif
