/* ratelimit.c - per-client-IP token buckets (limits.rate_per_ip,
 * limits.rate_burst). The table has a fixed size, so a flood of distinct
 * addresses cannot grow memory: each address hashes to a set of 4 slots, and
 * a new address takes the slot that was used longest ago. An evicted address
 * comes back with a full bucket, which errs on the side of serving. */
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

int rl_allow(sl_server_t *srv, const sl_ipnet_t *ip, int64_t now_ms, int *retry_after_s)
{
    const sl_config_t *cfg = srv->cfg;
    double rate = (double)cfg->limits.rate_per_ip, burst = (double)cfg->limits.rate_burst;
    if (rate <= 0) return 1;
    if (srv->rl == NULL && (srv->rl = calloc(RL_SLOTS, sizeof(rl_slot_t))) == NULL) return 1;
    uint64_t key = sl_hash128(ip->addr, ip->family == AF_INET ? 4 : 16, (uint64_t)ip->family).lo | 1;
    rl_slot_t *set = &srv->rl[(key >> 1) & (RL_SLOTS - RL_WAYS)], *s = NULL, *oldest = &set[0];
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
        s->tokens -= 1;
        return 1;
    }
    *retry_after_s = (int)ceil((1 - s->tokens) / rate);
    if (*retry_after_s < 1) *retry_after_s = 1;
    return 0;
}
