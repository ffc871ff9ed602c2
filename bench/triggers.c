/* triggers.c - `sillage-bench triggers`: trigger latency, from the moment a
 * hit is acknowledged to the moment its trigger is read from the feed
 * (issue 5: p99 <= 10 ms).
 *
 * The server must have a page_visit rule whose url pattern is "/bench-trigger/" followed by a star
 * with min_count 1 (bench/triggers.sh writes one). One connection sends a
 * page view to /bench-trigger/<n> for a new user; as soon as the 200 arrives
 * the clock starts, and a second connection long-polls
 * GET /v1/triggers?after=<last>&wait=5 until the trigger of that user is in
 * the answer. Other load can run beside it (bench/triggers.sh does). */
#define _GNU_SOURCE
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "client.h"
#include "sl_common.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t pct(const uint64_t *v, size_t n, double p)
{
    size_t i = (size_t)ceil(p / 100.0 * (double)n);
    return v[i ? i - 1 : 0];
}

/* The last sequence of the feed and whether user's trigger is in the page. */
static int scan_page(const sl_buf_t *body, const char *user, uint64_t *next)
{
    cJSON *doc = cJSON_ParseWithLength(body->data, body->len);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(doc, "next");
    if (cJSON_IsNumber(n)) *next = (uint64_t)n->valuedouble;
    int found = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(doc, "triggers")) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "profile"), "user_id");
        if (cJSON_IsString(u) && strcmp(u->valuestring, user) == 0) found = 1;
    }
    int ok = doc != NULL;
    cJSON_Delete(doc);
    return ok ? found : -1;
}

int triggers_mode(int argc, char **argv)
{
    long n = 1000;
    const char *key = "demo", *admin = "demo-admin", *csv = NULL, *label = "triggers";
    static const struct option longs[] = {{"requests", 1, 0, 'n'}, {"key", 1, 0, 'k'}, {"admin", 1, 0, 'a'},
                                          {"csv", 1, 0, 'o'},      {"label", 1, 0, 'l'}, {"help", 0, 0, 'h'},
                                          {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "n:k:h", longs, NULL)) != -1) {
        switch (ch) {
        case 'n': n = atol(optarg); break;
        case 'k': key = optarg; break;
        case 'a': admin = optarg; break;
        case 'o': csv = optarg; break;
        case 'l': label = optarg; break;
        case 'h':
        default:
            fprintf(ch == 'h' ? stdout : stderr,
                    "usage: sillage-bench triggers [-n N] [-k KEY] [--admin TOKEN] [--csv FILE] [--label S] URL\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    char host[256];
    int port;
    if (optind != argc - 1 || n < 1 || n > 10000000 || bclient_parse_url(argv[optind], host, sizeof(host), &port)) {
        fprintf(stderr, "sillage-bench triggers: bad arguments (see --help)\n");
        return 2;
    }
    char cred[300], b64[420], hdr_ingest[600], hdr_admin[400];
    snprintf(cred, sizeof(cred), "%s:", key);
    bclient_base64((const unsigned char *)cred, strlen(cred), b64);
    snprintf(hdr_ingest, sizeof(hdr_ingest), "Authorization: Basic %s\r\nContent-Type: application/json\r\n", b64);
    snprintf(hdr_admin, sizeof(hdr_admin), "Authorization: Bearer %s\r\n", admin);
    bclient_t *in = bclient_new(host, port), *fd = bclient_new(host, port);
    uint64_t *lat = calloc((size_t)n, sizeof(*lat));
    if (in == NULL || fd == NULL || lat == NULL) return 2;
    unsigned char r[4];
    sl_random_bytes(r, sizeof(r));
    char run[16], user[64], path[160];
    snprintf(run, sizeof(run), "t%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
    const sl_buf_t *resp;
    uint64_t next = 0;
    if (bclient_request(fd, "GET", "/v1/triggers?limit=1", hdr_admin, NULL, 0, &resp) != 200) {
        fprintf(stderr, "sillage-bench triggers: GET /v1/triggers failed (admin token?)\n");
        return 1;
    }
    /* Start at the end of the feed. */
    int st = bclient_request(fd, "GET", "/metrics", NULL, NULL, 0, &resp);
    double last = st == 200 ? bclient_metric(resp, "sillage_trigger_feed_last_seq") : -1;
    if (last < 0) {
        fprintf(stderr, "sillage-bench triggers: /metrics has no sillage_trigger_feed_last_seq\n");
        return 1;
    }
    next = (uint64_t)last;
    sl_buf_t body = {0};
    long missing = 0;
    for (long i = 0; i < n; i++) {
        snprintf(user, sizeof(user), "%s-u%ld", run, i);
        body.len = 0;
        sl_buf_printf(&body, "{\"userId\":\"%s\",\"messageId\":\"%s-m%ld\",\"properties\":{\"path\":\"/bench-trigger/%ld\"}}",
                      user, run, i, i);
        st = bclient_request(in, "POST", "/v1/page", hdr_ingest, body.data, body.len, &resp);
        uint64_t t0 = sl_mono_ns();
        if (st != 200) {
            fprintf(stderr, "sillage-bench triggers: POST /v1/page: status %d\n", st);
            return 1;
        }
        int found = 0;
        while (!found) {
            snprintf(path, sizeof(path), "/v1/triggers?after=%llu&limit=1000&wait=5", (unsigned long long)next);
            st = bclient_request(fd, "GET", path, hdr_admin, NULL, 0, &resp);
            if (st != 200) {
                fprintf(stderr, "sillage-bench triggers: GET %s: status %d\n", path, st);
                return 1;
            }
            uint64_t before = next;
            found = scan_page(resp, user, &next);
            if (found < 0) return 1;
            if (!found && next == before) { /* 5 s and nothing: the rule does not match */
                missing++;
                break;
            }
        }
        lat[i] = found ? (sl_mono_ns() - t0) / 1000 : UINT64_MAX / 2;
        if (missing > 3) {
            fprintf(stderr, "sillage-bench triggers: no trigger for /bench-trigger/* (is the page_visit rule configured?)\n");
            return 1;
        }
    }
    qsort(lat, (size_t)n, sizeof(*lat), cmp_u64);
    printf("%s: %ld triggers, ack -> readable in the feed: p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms\n", label,
           n, pct(lat, (size_t)n, 50) / 1e3, pct(lat, (size_t)n, 90) / 1e3, pct(lat, (size_t)n, 99) / 1e3,
           lat[n - 1] / 1e3);
    if (csv) {
        FILE *f = fopen(csv, "a");
        if (f) {
            fprintf(f, "%s,%ld,%.3f,%.3f,%.3f,%.3f\n", label, n, pct(lat, (size_t)n, 50) / 1e3,
                    pct(lat, (size_t)n, 90) / 1e3, pct(lat, (size_t)n, 99) / 1e3, lat[n - 1] / 1e3);
            fclose(f);
        }
    }
    sl_buf_free(&body);
    free(lat);
    bclient_free(in);
    bclient_free(fd);
    return missing ? 1 : 0;
}
