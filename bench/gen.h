/* Visitor traffic model for sillage-bench.
 *
 * A population of visitors, each with an anonymousId, browsing in sessions:
 * a landing page view (referrer, UTM campaign), category and product pages,
 * "Product Viewed" and "Product Added" with product properties, for a share of
 * them a login (identify with userId and email traits) and for a smaller share
 * an "Order Completed" with revenue. Messages are Segment spec JSON of roughly
 * 400-900 bytes, like the ones sillage.js sends.
 *
 * The stream depends only on the seed, so two servers driven with the same
 * seed receive the same messages in the same order (except for messageId,
 * which carries a per-run prefix so that a second run is not deduplicated).
 */
#ifndef SL_BENCH_GEN_H
#define SL_BENCH_GEN_H

#include <stddef.h>
#include <stdint.h>

typedef struct sl_gen_s sl_gen_t;

typedef struct {
    uint32_t visitors;     /* population size */
    uint32_t active;       /* 0: any visitor at any moment (uniform). N: only the N most
                            * recent arrivals browse; a new visitor arrives every 10
                            * messages and the oldest active one leaves */
    uint64_t seed;
    double login_share;    /* share of visitors who log in at some point */
    double order_share;    /* share of visitors who complete an order */
    const char *run_id;    /* messageId prefix */
    int consent;           /* every message carries context.consent.categoryPreferences, as
                            * sillage.js sends them once a banner was answered (analytics
                            * granted; marketing granted by 7 visitors in 10) */
} sl_gen_options_t;

/* Creates a generator. Returns NULL on allocation failure. */
sl_gen_t *sl_gen_new(const sl_gen_options_t *opts);
void sl_gen_free(sl_gen_t *g);

/* Writes the next message of the stream as a JSON object into out (at most
 * cap bytes, NUL-terminated). *type gets "track", "page" or "identify" (the
 * single-message route), id/id_cap the messageId. Returns the JSON length,
 * or 0 if cap was too small. now_ms stamps timestamp and sentAt. */
size_t sl_gen_next(sl_gen_t *g, int64_t now_ms, char *out, size_t cap,
                   const char **type, char *id, size_t id_cap);

/* Counters of what was generated so far, by kind. */
typedef struct {
    uint64_t pages, product_views, cart_adds, identifies, orders, refunds;
} sl_gen_stats_t;
void sl_gen_stats(const sl_gen_t *g, sl_gen_stats_t *out);

#endif
