/* sl_nats.h - edge and core roles on NATS JetStream (outbound/nats.c,
 * docs/SCALING.md). */
#ifndef SL_NATS_H
#define SL_NATS_H

#include <stdint.h>
#include <uv.h>

#include "sl_config.h"
#include "sl_stage.h"
#include "sl_store.h"
#include "sl_feed.h"

typedef struct sl_nats_s sl_nats_t;

/* role edge: forward the log's durable events; role core: consume them into
 * the log (the stage derives from them as from any others) and publish
 * the feed, read through stage; role all: nothing (*out NULL). Registers
 * with the store (edge) or the feed (core) to hear that there is
 * more: call before the store and the stage start. */
int sl_nats_new(sl_nats_t **out, const sl_config_t *cfg, sl_store_t *store, sl_stage_t *stage, sl_feed_t *feed);
/* Starts the threads; completions on loop. */
int sl_nats_start(sl_nats_t *n, uv_loop_t *loop);
/* Loop thread: tells the threads to end (they check between steps). */
void sl_nats_stop(sl_nats_t *n);
/* After the loop has ended: joins the threads. Bounded even when no NATS
 * server answers: a thread waits at most for the connect attempt in progress
 * (2 s per server of nats.url) or a JetStream request (5 s). */
void sl_nats_free(sl_nats_t *n);

typedef struct sl_nats_stats_s {
    int role, connected;
    uint64_t published, publish_errors, lag;   /* edge */
    uint64_t consumed, position, triggers_published; /* core */
    uint64_t pruned, examined, prune_passes;   /* edge retention */
} sl_nats_stats_t;
void sl_nats_get_stats(const sl_nats_t *n, sl_nats_stats_t *out);
/* Prometheus text (arg: the NATS side; loop thread). */
void sl_nats_metrics(void *arg, sl_buf_t *out);

#endif
