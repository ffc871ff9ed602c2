/* sl_webhooks.h - delivery of the trigger feed to the configured webhooks
 * (DESIGN.md "Triggers", docs/TRIGGERS.md).
 *
 * Runs on the libuv loop with libcurl's multi interface. Each webhook reads
 * the durable feed in order from its own cursor, keeps a window of deliveries
 * in flight, retries a failed one (transport error or non-2xx) with
 * exponential backoff and jitter until it is acknowledged or older than the
 * webhook's `expire`, and stores its cursor in its own database of the
 * derived environment (whcursor: url -> u64, written by a stage job; the
 * highest sequence below which every trigger is acknowledged or expired). After a restart it
 * resends what was not acknowledged: at least once, with the same delivery id.
 *
 * Each POST carries the trigger JSON as its body and
 *   X-Sillage-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<delivery>.<body>")>
 *   X-Sillage-Delivery: <trigger id>.<webhook tag>   (the same on every retry)
 *   X-Sillage-Attempt: <1, 2, ...>
 * t is the attempt's time: each retry is signed afresh, so a receiver can
 * refuse old signatures (replays) and dedupe on the signed delivery id.
 */
#ifndef SL_WEBHOOKS_H
#define SL_WEBHOOKS_H

#include <stdint.h>
#include <uv.h>

#include "sl_config.h"
#include "sl_stage.h"
#include "sl_feed.h"

typedef struct sl_webhooks_s sl_webhooks_t;

/* Creates delivery to cfg->webhooks (none: returns 0 and *out NULL), reading
 * feed through stage; registers a step with stage (its cursors' database)
 * and subscribes to the feed, so call it before sl_stage_open(). */
int sl_webhooks_new(sl_webhooks_t **out, const sl_config_t *cfg, sl_stage_t *stage, sl_feed_t *feed);
/* Starts delivering on loop, from the stored cursors (after the stage started). */
int sl_webhooks_start(sl_webhooks_t *w, uv_loop_t *loop);
/* Stops: transfers are abandoned (they are resent after a restart), the
 * cursors already stored stay; cb(arg) once every handle is closed. */
void sl_webhooks_stop(sl_webhooks_t *w, void (*cb)(void *), void *arg);
void sl_webhooks_free(sl_webhooks_t *w);
/* Rebuild: copies the cursors from src (a read transaction of the old
 * derived store) into dst (a stage job's transaction), so nothing is
 * delivered twice. Needs no webhooks object. 0 or an LMDB error. */
int sl_webhooks_carry_over(MDB_txn *dst, MDB_txn *src);

typedef struct sl_webhooks_stats_s {
    uint64_t delivered, failed_attempts, expired, in_flight;
    uint64_t unreadable; /* feed entries that are not JSON: failed deliveries, never skipped quietly */
} sl_webhooks_stats_t;
void sl_webhooks_get_stats(const sl_webhooks_t *w, sl_webhooks_stats_t *out);
/* Prometheus text (arg: the webhooks; loop thread). */
void sl_webhooks_metrics(void *arg, sl_buf_t *out);

/* The wait before the next attempt after `attempts` failed ones: 0.5 s
 * doubling up to 5 min, with +-25 % jitter drawn from r. */
int64_t sl_webhook_backoff_ms(int attempts, uint32_t r);

/* The X-Sillage-Signature value for body sent at unix time t (seconds) under
 * delivery id (at most 100 bytes): "t=<t>,v1=<64 hex>", the HMAC-SHA256 with
 * secret of "<t>.<delivery>.<body>", NUL-terminated into out. Returns 0,
 * SL_EINVAL (delivery too long) or SL_ENOMEM. */
#define SL_WEBHOOK_SIGNATURE_BYTES 112
int sl_webhook_sign(const char *secret, int64_t t, const char *delivery, const void *body, size_t len,
                    char out[SL_WEBHOOK_SIGNATURE_BYTES]);

#endif
