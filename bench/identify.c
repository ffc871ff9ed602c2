/* identify.c - `sillage-bench identify`: what a merge costs against the length
 * of the history being merged (issue 4, "merge cost independent of history").
 *
 * For each history size N and each sample, a user is first identified on one
 * device ("home"), and a second device browses anonymously for N page views.
 * Then that second device identifies as the same user: the stitcher merges the
 * anonymous person (N events) into the user's person. Each identify is sent
 * alone on an idle server, and timed twice: the HTTP round trip (the commit
 * and its fsync included), and the writer's own stitching time for it, read
 * from /metrics (sillage_identify_stitch_seconds) before and after. The run
 * also checks through /metrics that each timed identify caused exactly one
 * merge, so it cannot measure the wrong thing quietly.
 *
 * Identifies are sent in rounds that visit every size once, so drift in the
 * machine's speed spreads over all sizes alike. */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "sl_common.h"

#define MAX_SIZES 16
#define MAX_SAMPLES 100

typedef struct {
    bclient_t *c;
    const char *auth;  /* "Authorization: Basic ...\r\n" */
    char headers[512];
    const char *run;
    sl_buf_t body;
} ident_t;

static int post(ident_t *x, const char *path, const sl_buf_t *body)
{
    const sl_buf_t *resp;
    int st = bclient_request(x->c, "POST", path, x->headers, body->data, body->len, &resp);
    if (st != 200) {
        fprintf(stderr, "sillage-bench identify: POST %s: status %d: %.300s\n", path, st,
                st > 0 && resp->data ? resp->data : "");
        return -1;
    }
    return 0;
}

static int metrics(ident_t *x, double *sum, double *count, double *merges)
{
    const sl_buf_t *resp;
    int st = bclient_request(x->c, "GET", "/metrics", NULL, NULL, 0, &resp);
    if (st != 200) return -1;
    *sum = bclient_metric(resp, "sillage_identify_stitch_seconds_sum");
    *count = bclient_metric(resp, "sillage_identify_stitch_seconds_count");
    *merges = bclient_metric(resp, "sillage_identity_merges_total");
    return *sum < 0 || *count < 0 || *merges < 0 ? -1 : 0;
}

/* The stage derives behind the log (the pipeline): wait until it has applied
 * everything acknowledged, so that its metrics count what was sent. A
 * server without a stage (no such gauge) needs no wait. */
static int wait_applied(ident_t *x)
{
    for (int i = 0; i < 10000; i++) {
        const sl_buf_t *resp;
        if (bclient_request(x->c, "GET", "/metrics", NULL, NULL, 0, &resp) != 200) return -1;
        double lag = bclient_metric(resp, "sillage_stage_lag_events");
        if (lag <= 0) return 0;
        usleep(1000);
    }
    return -1;
}

static void identify_body(sl_buf_t *b, const char *run, long size, int sample, const char *device)
{
    b->len = 0;
    sl_buf_printf(b,
                  "{\"userId\":\"%s-u-%ld-%d\",\"anonymousId\":\"%s-%s-%ld-%d\",\"messageId\":\"%s-id-%s-%ld-%d\","
                  "\"traits\":{\"email\":\"%s-%ld-%d@bench.example\",\"plan\":\"pro\"}}",
                  run, size, sample, run, device, size, sample, run, device, size, sample, run, size, sample);
}

/* N page views of the anonymous device "web" of (size, sample), in batches. */
static int load_history(ident_t *x, long size, int sample)
{
    for (long i = 0; i < size;) {
        x->body.len = 0;
        sl_buf_appends(&x->body, "{\"batch\":[");
        for (long k = 0; k < 1000 && i < size; k++, i++) {
            sl_buf_printf(&x->body,
                          "%s{\"type\":\"page\",\"anonymousId\":\"%s-web-%ld-%d\",\"messageId\":\"%s-p-%ld-%d-%ld\","
                          "\"name\":\"Product\",\"properties\":{\"path\":\"/p/%ld\",\"url\":\"https://shop.example/p/%ld\"}}",
                          k ? "," : "", x->run, size, sample, x->run, size, sample, i, i % 500, i % 500);
        }
        sl_buf_appends(&x->body, "]}");
        if (x->body.data == NULL || post(x, "/v1/batch", &x->body)) return -1;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: sillage-bench identify [--sizes 10,1000,10000,100000] [--samples 5] [-k KEY]\n"
               "                              [--run-id S] [--csv FILE] http://IP:PORT\n");
}

int identify_mode(int argc, char **argv)
{
    long sizes[MAX_SIZES] = {10, 1000, 10000, 100000};
    int n_sizes = 4, samples = 5;
    const char *key = "demo", *run = NULL, *csv = NULL;
    static const struct option longs[] = {{"sizes", 1, 0, 's'}, {"samples", 1, 0, 'n'}, {"key", 1, 0, 'k'},
                                          {"run-id", 1, 0, 'r'}, {"csv", 1, 0, 'o'},   {"help", 0, 0, 'h'},
                                          {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "k:h", longs, NULL)) != -1) {
        switch (ch) {
        case 's': {
            n_sizes = 0;
            for (char *p = optarg, *end; *p && n_sizes < MAX_SIZES; p = *end ? end + 1 : end) {
                sizes[n_sizes] = strtol(p, &end, 10);
                if (end == p || sizes[n_sizes] < 1 || sizes[n_sizes] > 10000000) {
                    usage(stderr);
                    return 2;
                }
                n_sizes++;
            }
            break;
        }
        case 'n': samples = atoi(optarg); break;
        case 'k': key = optarg; break;
        case 'r': run = optarg; break;
        case 'o': csv = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    char host[256];
    int port;
    if (optind != argc - 1 || n_sizes == 0 || samples < 1 || samples > MAX_SAMPLES ||
        bclient_parse_url(argv[optind], host, sizeof(host), &port)) {
        usage(stderr);
        return 2;
    }
    char run_buf[32];
    if (run == NULL) {
        unsigned char r[6];
        sl_random_bytes(r, sizeof(r));
        snprintf(run_buf, sizeof(run_buf), "i%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5]);
        run = run_buf;
    }
    ident_t x = {.run = run};
    char cred[300], b64[420];
    snprintf(cred, sizeof(cred), "%s:", key);
    bclient_base64((const unsigned char *)cred, strlen(cred), b64);
    snprintf(x.headers, sizeof(x.headers), "Authorization: Basic %s\r\nContent-Type: application/json\r\n", b64);
    if ((x.c = bclient_new(host, port)) == NULL) return 2;

    /* Phase 1: every user known on a "home" device, every history loaded. */
    long total = 0;
    for (int s = 0; s < samples; s++)
        for (int i = 0; i < n_sizes; i++) {
            identify_body(&x.body, run, sizes[i], s, "home");
            if (post(&x, "/v1/identify", &x.body) || load_history(&x, sizes[i], s)) goto fail;
            total += sizes[i];
        }
    fprintf(stderr, "loaded %ld history events for %d x %d visitors\n", total, samples, n_sizes);

    /* Phase 2: the timed identifies, one size after another in each round,
     * starting at a different size each round. */
    static double http_us[MAX_SIZES][MAX_SAMPLES], stitch_us[MAX_SIZES][MAX_SAMPLES];
    for (int s = 0; s < samples; s++)
        for (int j = 0; j < n_sizes; j++) {
            int i = (j + s) % n_sizes;
            double sum0, cnt0, mg0, sum1, cnt1, mg1;
            identify_body(&x.body, run, sizes[i], s, "web");
            if (wait_applied(&x) || metrics(&x, &sum0, &cnt0, &mg0)) goto fail_metrics;
            uint64_t t0 = sl_mono_ns();
            if (post(&x, "/v1/identify", &x.body)) goto fail;
            http_us[i][s] = (double)(sl_mono_ns() - t0) / 1e3;
            if (wait_applied(&x) || metrics(&x, &sum1, &cnt1, &mg1)) goto fail_metrics;
            if (cnt1 - cnt0 != 1 || mg1 - mg0 != 1) {
                fprintf(stderr, "sillage-bench identify: expected one identify and one merge, saw %.0f and %.0f "
                                "(is another client writing?)\n", cnt1 - cnt0, mg1 - mg0);
                goto fail;
            }
            stitch_us[i][s] = (sum1 - sum0) * 1e6;
        }

    FILE *out = csv ? fopen(csv, "a") : NULL;
    printf("identify that merges an anonymous history into a known user; %d samples per size\n", samples);
    printf("%10s %14s %14s %16s %16s\n", "history", "http p50 ms", "http max ms", "stitch p50 us", "stitch max us");
    double first_http = 0, last_http = 0, first_st = 0, last_st = 0;
    for (int i = 0; i < n_sizes; i++) {
        double hm = median(http_us[i], samples), sm = median(stitch_us[i], samples);
        double hx = http_us[i][samples - 1], sx = stitch_us[i][samples - 1]; /* sorted by median() */
        printf("%10ld %14.3f %14.3f %16.1f %16.1f\n", sizes[i], hm / 1e3, hx / 1e3, sm, sx);
        if (out) fprintf(out, "%ld,%d,%.1f,%.1f,%.2f,%.2f\n", sizes[i], samples, hm, hx, sm, sx);
        if (i == 0) first_http = hm, first_st = sm;
        last_http = hm, last_st = sm;
    }
    if (out) fclose(out);
    printf("ratio largest/smallest history: http p50 %.2f, stitch p50 %.2f\n", last_http / first_http,
           last_st / first_st);
    sl_buf_free(&x.body);
    bclient_free(x.c);
    return 0;
fail_metrics:
    fprintf(stderr, "sillage-bench identify: GET /metrics failed or lacks the stitcher's metrics\n");
fail:
    sl_buf_free(&x.body);
    bclient_free(x.c);
    return 1;
}
