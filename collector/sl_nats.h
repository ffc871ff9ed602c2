/* sl_nats.h - edge and core roles on NATS JetStream (collector/nats.c,
 * docs/SCALING.md). */
#ifndef SL_NATS_H
#define SL_NATS_H

#include <stdint.h>
#include <uv.h>

#include "sl_collector.h"
#include "sl_config.h"
#include "sl_store.h"

typedef struct sl_nats_s sl_nats_t;
struct sl_trig_s;

/* role edge: forward stored events; role core: consume them (and publish
 * trig's feed); role all: nothing (*out NULL). srv: the HTTP server, whose
 * stitcher the core feeds. */
int sl_nats_start(sl_nats_t **out, uv_loop_t *loop, const sl_config_t *cfg, sl_store_t *store, sl_server_t *srv,
                  struct sl_trig_s *trig);
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
} sl_nats_stats_t;
void sl_nats_get_stats(const sl_nats_t *n, sl_nats_stats_t *out);

#endif
