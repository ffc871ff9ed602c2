/* ratelimit.c - per-client-address token buckets: requests (limits.rate_per_ip,
 * limits.rate_burst) and failed admin-token attempts. A table has a fixed
 * size, so a flood of distinct addresses cannot grow memory: each address
 * hashes to a set of 4 slots, and a new address takes the slot that was used
 * longest ago. An evicted address comes back with a full bucket, which errs on
 * the side of serving.
 *
 * IPv6 clients are keyed by their /64: one subscriber or host usually holds a
 * whole /64 and can pick any address in it, so a /128 key would give it 2^64
 * buckets. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "http_int.h"

#define RL_SLOTS 65536 /* 1.5 MB */
#define RL_WAYS 4

typedef struct rl_slot_s {
    uint64_t key;      /* 0: free */
    double tokens;
    int64_t last_ms;
} rl_slot_t;

uint64_t http_rl_key(const sl_ipnet_t *ip)
{
    unsigned char a[16] = {0};
    size_t n = ip->family == AF_INET ? 4 : 8; /* IPv6: the /64 */
    memcpy(a, ip->addr, n);
    return sl_hash128(a, n, (uint64_t)ip->family).lo | 1;
}

int http_rl_bucket(rl_table_t *t, size_t n_slots, const sl_ipnet_t *ip, double rate, double burst, int64_t now_ms,
              int cost, int *retry_after_s)
{
    if (rate <= 0) return 1;
    if (t->slots == NULL) {
        if ((t->slots = calloc(n_slots, sizeof(rl_slot_t))) == NULL) return 1;
        t->n = n_slots;
    }
    uint64_t key = http_rl_key(ip);
    rl_slot_t *set = &t->slots[(key >> 1) & (t->n - RL_WAYS)], *s = NULL, *oldest = &set[0];
    for (int i = 0; i < RL_WAYS; i++) {
        if (set[i].key == key) s = &set[i];
        if (set[i].last_ms < oldest->last_ms) oldest = &set[i];
    }
    if (s == NULL) {
        s = oldest;
        s->key = key;
        s->tokens = burst;
        s->last_ms = now_ms;
    }
    s->tokens += (double)(now_ms - s->last_ms) * rate / 1000.0;
    if (s->tokens > burst) s->tokens = burst;
    s->last_ms = now_ms;
    if (s->tokens >= 1) {
        s->tokens -= cost;
        return 1;
    }
    *retry_after_s = (int)ceil((1 - s->tokens) / rate);
    if (*retry_after_s < 1) *retry_after_s = 1;
    return 0;
}

void http_rl_table_free(rl_table_t *t)
{
    free(t->slots);
    t->slots = NULL;
    t->n = 0;
}

int http_rl_allow(sl_server_t *srv, const sl_ipnet_t *ip, int64_t now_ms, int *retry_after_s)
{
    const sl_config_t *cfg = srv->cfg;
    return http_rl_bucket(&srv->rl, RL_SLOTS, ip, (double)cfg->limits.rate_per_ip, (double)cfg->limits.rate_burst, now_ms,
                     1, retry_after_s);
}
