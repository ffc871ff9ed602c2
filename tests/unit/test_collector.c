/* test_collector.c - validation, skew correction, decoders, addresses, GeoIP. */
#include "test.h"
#include "sl_collector.h"
#include "http_int.h" /* the rate limiter's tables */
#include "ack.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <zlib.h>

static const int64_t RECEIVED = 1700000000000LL; /* 2023-11-14T22:13:20.000Z */

static const char *str_at(const cJSON *o, const char *a, const char *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b) v = cJSON_GetObjectItemCaseSensitive(v, b);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

TEST(skew_correction)
{
    /* client clock 1 h fast: sent at 11:00 (client), event at 10:59 (client),
     * received at 10:00 (server): the event happened at 09:59 server time */
    CHECK_INT(sl_skew_correct(36000000, 39600000, 39540000), ==, 35940000);
    CHECK_INT(sl_skew_correct(1000, 1000, 1000), ==, 1000);
    CHECK_INT(sl_skew_correct(5000, 1000, 2000), ==, 6000); /* timestamp after sentAt: kept relative */
}

TEST(normalize_table)
{
    static const struct { const char *json; int type; const char *err; } cases[] = {
        {"{\"userId\":\"u1\",\"event\":\"Signed Up\"}", SL_MSG_TRACK, NULL},
        {"{\"anonymousId\":\"a1\",\"event\":\"Signed Up\"}", SL_MSG_TRACK, NULL},
        {"{\"anonymousId\":\"a1\"}", SL_MSG_TRACK, "track needs an event name"},
        {"{\"anonymousId\":\"a1\",\"event\":\"\"}", SL_MSG_TRACK, "track needs an event name"},
        {"{\"anonymousId\":\"a1\",\"event\":5}", SL_MSG_TRACK, "track needs an event name"},
        {"{\"event\":\"x\"}", SL_MSG_TRACK, "message needs userId or anonymousId"},
        {"{\"userId\":\"\",\"anonymousId\":null,\"event\":\"x\"}", SL_MSG_TRACK, "message needs userId or anonymousId"},
        {"{\"userId\":{},\"event\":\"x\"}", SL_MSG_TRACK, "userId must be"},
        {"{\"userId\":42}", SL_MSG_IDENTIFY, NULL},
        {"{\"anonymousId\":\"a\",\"name\":\"Home\"}", SL_MSG_PAGE, NULL},
        {"{\"anonymousId\":\"a\",\"name\":\"Home\"}", SL_MSG_SCREEN, NULL},
        {"{\"previousId\":\"a\",\"userId\":\"u\"}", SL_MSG_ALIAS, NULL},
        {"{\"userId\":\"u\"}", SL_MSG_ALIAS, "alias needs previousId and userId"},
        {"{\"previousId\":\"a\",\"anonymousId\":\"b\"}", SL_MSG_ALIAS, "alias needs previousId and userId"},
        {"{\"userId\":\"u\",\"groupId\":\"g\"}", SL_MSG_GROUP, NULL},
        {"{\"userId\":\"u\"}", SL_MSG_GROUP, "group needs groupId"},
        {"{\"userId\":\"u\",\"event\":\"x\",\"properties\":[]}", SL_MSG_TRACK, "properties must be an object"},
        {"{\"userId\":\"u\",\"traits\":\"x\"}", SL_MSG_IDENTIFY, "traits must be an object"},
        {"{\"userId\":\"u\",\"context\":1}", SL_MSG_IDENTIFY, "context must be an object"},
        {"{\"userId\":\"u\",\"timestamp\":\"tomorrow\"}", SL_MSG_IDENTIFY, "timestamp must be an ISO 8601"},
        {"{\"userId\":\"u\",\"sentAt\":12}", SL_MSG_IDENTIFY, "sentAt must be an ISO 8601"},
        {"{\"userId\":\"u\",\"messageId\":[]}", SL_MSG_IDENTIFY, "messageId must be"},
        {"{\"type\":\"track\",\"userId\":\"u\",\"event\":\"e\"}", -1, NULL},
        {"{\"type\":\"fly\",\"userId\":\"u\"}", -1, "type must be one of"},
        {"{\"userId\":\"u\"}", -1, "message needs a type"},
        {"[1]", SL_MSG_TRACK, "message must be a JSON object"},
    };
    sl_ingest_ctx_t ctx = {.received_ms = RECEIVED, .ip = "10.0.0.0"};
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        cJSON *m = cJSON_Parse(cases[i].json);
        const char *err = sl_msg_normalize(m, cases[i].type, &ctx);
        if (cases[i].err == NULL && err != NULL) {
            fprintf(stderr, "  case %zu (%s): unexpected error \"%s\"\n", i, cases[i].json, err);
            test_failures++;
        } else if (cases[i].err && (err == NULL || strstr(err, cases[i].err) == NULL)) {
            fprintf(stderr, "  case %zu (%s): error \"%s\", want \"%s\"\n", i, cases[i].json,
                    err ? err : "(none)", cases[i].err);
            test_failures++;
        }
        cJSON_Delete(m);
    }
}

TEST(normalize_fields)
{
    cJSON *bctx = cJSON_Parse("{\"library\":{\"name\":\"analytics-node\"},\"locale\":\"fr-FR\"}");
    cJSON *loc = cJSON_Parse("{\"country\":\"FR\"}");
    sl_ingest_ctx_t ctx = {.received_ms = RECEIVED, .ip = "203.0.113.0", .location = loc,
                           .batch_context = bctx, .batch_sent_at = "2023-11-14T23:13:20.000Z"};
    cJSON *m = cJSON_Parse("{\"type\":\"track\",\"userId\":7,\"event\":\"Order Completed\",\"writeKey\":\"wk\","
                           "\"timestamp\":\"2023-11-14T23:12:20.000Z\",\"context\":{\"ip\":\"1.2.3.4\",\"locale\":\"en-US\"}}");
    CHECK_NULL(sl_msg_normalize(m, -1, &ctx));
    CHECK_STR(str_at(m, "userId", NULL), "7");
    CHECK_STR(str_at(m, "receivedAt", NULL), "2023-11-14T22:13:20.000Z");
    /* client clock one hour fast, event one minute before sending */
    CHECK_STR(str_at(m, "timestamp", NULL), "2023-11-14T22:12:20.000Z");
    CHECK_STR(str_at(m, "originalTimestamp", NULL), "2023-11-14T23:12:20.000Z");
    CHECK_STR(str_at(m, "sentAt", NULL), "2023-11-14T23:13:20.000Z");
    CHECK_STR(str_at(m, "context", "ip"), "203.0.113.0");
    CHECK_STR(str_at(m, "context", "locale"), "en-US");
    CHECK(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "context"), "library") != NULL);
    CHECK_STR(str_at(cJSON_GetObjectItemCaseSensitive(m, "context"), "location", "country"), "FR");
    CHECK_NULL(cJSON_GetObjectItemCaseSensitive(m, "writeKey"));
    const char *mid = str_at(m, "messageId", NULL);
    CHECK(mid != NULL && strlen(mid) == 36);
    cJSON_Delete(m);

    /* no timestamp: receivedAt; a timestamp without sentAt is kept as sent */
    ctx.batch_sent_at = NULL;
    m = cJSON_Parse("{\"anonymousId\":\"a\",\"messageId\":\"m-1\"}");
    CHECK_NULL(sl_msg_normalize(m, SL_MSG_PAGE, &ctx));
    CHECK_STR(str_at(m, "timestamp", NULL), "2023-11-14T22:13:20.000Z");
    CHECK_STR(str_at(m, "messageId", NULL), "m-1");
    CHECK_STR(str_at(m, "type", NULL), "page");
    cJSON_Delete(m);
    m = cJSON_Parse("{\"anonymousId\":\"a\",\"timestamp\":\"2020-01-01T00:00:00+01:00\"}");
    CHECK_NULL(sl_msg_normalize(m, SL_MSG_PAGE, &ctx));
    CHECK_STR(str_at(m, "timestamp", NULL), "2019-12-31T23:00:00.000Z");
    CHECK_NULL(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "context"), "sillage"));
    cJSON_Delete(m);

    /* issue 13, M1: a time in the future becomes receivedAt (within a minute's
     * tolerance), the value it replaced is kept in context.sillage */
    m = cJSON_Parse("{\"anonymousId\":\"a\",\"timestamp\":\"2099-01-01T00:00:00Z\"}");
    CHECK_NULL(sl_msg_normalize(m, SL_MSG_PAGE, &ctx));
    CHECK_STR(str_at(m, "timestamp", NULL), "2023-11-14T22:13:20.000Z");
    CHECK_STR(str_at(m, "originalTimestamp", NULL), "2099-01-01T00:00:00Z");
    CHECK_STR(str_at(cJSON_GetObjectItemCaseSensitive(m, "context"), "sillage", "clampedTimestamp"),
              "2099-01-01T00:00:00.000Z");
    cJSON_Delete(m);
    m = cJSON_Parse("{\"anonymousId\":\"a\",\"timestamp\":\"9999-12-31T23:59:59.999Z\","
                    "\"sentAt\":\"0001-01-01T00:00:00Z\"}");
    CHECK_NULL(sl_msg_normalize(m, SL_MSG_PAGE, &ctx));
    CHECK_STR(str_at(m, "timestamp", NULL), "2023-11-14T22:13:20.000Z");
    cJSON_Delete(m);
    m = cJSON_Parse("{\"anonymousId\":\"a\",\"timestamp\":\"2023-11-14T22:14:10.000Z\"}"); /* 50 s ahead: kept */
    CHECK_NULL(sl_msg_normalize(m, SL_MSG_PAGE, &ctx));
    CHECK_STR(str_at(m, "timestamp", NULL), "2023-11-14T22:14:10.000Z");
    cJSON_Delete(m);
    cJSON_Delete(bctx);
    cJSON_Delete(loc);
}

TEST(prescan)
{
    CHECK_NULL(sl_json_prescan("{\"a\":[1,{\"b\":\"[[[[\"}]}", 21, 3));
    CHECK(sl_json_prescan("[[[[1]]]]", 9, 3) != NULL);
    CHECK_NULL(sl_json_prescan("[[[1]]]", 7, 3));
    CHECK_NULL(sl_json_prescan("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"", 15, 3));
    CHECK(sl_json_prescan("\"\xc3\x28\"", 4, 3) != NULL);         /* bad continuation */
    CHECK(sl_json_prescan("\"\xc0\xaf\"", 4, 3) != NULL);         /* overlong */
    CHECK(sl_json_prescan("\"\xed\xa0\x80\"", 5, 3) != NULL);     /* surrogate */
    CHECK(sl_json_prescan("\"\xf4\x90\x80\x80\"", 6, 3) != NULL); /* > U+10FFFF */
    CHECK(sl_json_prescan("\"\xe2\x82\"", 4, 3) != NULL);         /* truncated */
    CHECK(sl_json_prescan("{\"a\":\"\0\"}", 9, 3) != NULL);       /* NUL */
    CHECK_NULL(sl_json_prescan("\"\\\"[[[[[\"", 9, 1));           /* escaped quote keeps string */
}

TEST(base64_and_percent)
{
    unsigned char out[64];
    long n = sl_base64_decode("eyJhIjoxfQ==", 12, out);
    CHECK_INT(n, ==, 7);
    CHECK(memcmp(out, "{\"a\":1}", 7) == 0);
    CHECK_INT(sl_base64_decode("eyJhIjoxfQ", 10, out), ==, 7);
    CHECK_INT(sl_base64_decode("-_-_", 4, out), ==, 3);
    CHECK_INT(sl_base64_decode("ab$c", 4, out), ==, -1);
    CHECK_INT(sl_base64_decode("abcde", 5, out), ==, -1);
    char s[] = "ab%3D%3d+c";
    CHECK_INT(sl_percent_decode(s, strlen(s)), ==, 6);
    CHECK(memcmp(s, "ab==+c", 6) == 0);
    char bad1[] = "ab%4", bad2[] = "%zz";
    CHECK_INT(sl_percent_decode(bad1, 4), ==, -1);
    CHECK_INT(sl_percent_decode(bad2, 3), ==, -1);
}

static size_t gz(const char *in, size_t n, unsigned char *out, size_t cap)
{
    z_stream z = {0};
    deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    deflate(&z, Z_FINISH);
    size_t len = cap - z.avail_out;
    deflateEnd(&z);
    return len;
}

TEST(gunzip_bounded)
{
    static unsigned char packed[1 << 16];
    const char *msg = "{\"userId\":\"u\",\"event\":\"gz\"}";
    size_t pl = gz(msg, strlen(msg), packed, sizeof(packed));
    char *out = NULL;
    size_t ol = 0;
    CHECK_INT(sl_gunzip((char *)packed, pl, 1000, &out, &ol), ==, 0);
    CHECK_INT(ol, ==, strlen(msg));
    CHECK(out && memcmp(out, msg, ol) == 0);
    free(out);
    /* a bomb: 10 MB of zeros squeezed into ~10 KB is refused at the bound */
    char *zeros = calloc(10u << 20, 1);
    memset(zeros, ' ', 10u << 20);
    pl = gz(zeros, 10u << 20, packed, sizeof(packed));
    free(zeros);
    CHECK_INT(pl, <, 65536);
    out = NULL;
    CHECK_INT(sl_gunzip((char *)packed, pl, 512000, &out, &ol), ==, SL_ETOOBIG);
    CHECK_NULL(out);
    CHECK_INT(sl_gunzip("not gzip at all", 15, 1000, &out, &ol), ==, SL_EINVAL);
    pl = gz(msg, strlen(msg), packed, sizeof(packed));
    CHECK_INT(sl_gunzip((char *)packed, pl / 2, 1000, &out, &ol), ==, SL_EINVAL); /* truncated */
}

TEST(ip_anonymize_and_parse)
{
    static const struct { const char *in, *anon; } cases[] = {
        {"203.0.113.195", "203.0.113.0"},
        {"::ffff:198.51.100.7", "198.51.100.0"},
        {"2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"},
        {"::1", "::"},
        {"[2001:db8::1]", "2001:db8::"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        sl_ipnet_t ip;
        char out[46];
        CHECK_INT(sl_ipnet_parse(cases[i].in, strlen(cases[i].in), &ip), ==, 0);
        sl_ip_anonymize(&ip);
        sl_ip_format(&ip, out);
        CHECK_STR(out, cases[i].anon);
    }
    sl_ipnet_t ip;
    CHECK_INT(sl_ipnet_parse("300.1.1.1", 9, &ip), ==, SL_EINVAL);
    CHECK_INT(sl_ipnet_parse("1.2.3.4/33", 10, &ip), ==, SL_EINVAL);
    CHECK_INT(sl_ipnet_parse("hello", 5, &ip), ==, SL_EINVAL);
    sl_ipnet_t net, a, b;
    sl_ipnet_parse("10.0.0.0/8", 10, &net);
    sl_ipnet_parse("10.200.3.4", 10, &a);
    sl_ipnet_parse("11.0.0.1", 8, &b);
    CHECK(sl_ipnet_contains(&net, &a));
    CHECK(!sl_ipnet_contains(&net, &b));
}

TEST(client_ip_from_xff)
{
    sl_ipnet_t trusted[2], peer, out, other;
    char s[46];
    sl_ipnet_parse("127.0.0.1", 9, &trusted[0]);
    sl_ipnet_parse("10.0.0.0/8", 10, &trusted[1]);
    sl_ipnet_parse("127.0.0.1", 9, &peer);
    sl_ipnet_parse("192.0.2.9", 9, &other);
    const char *xff = "198.51.100.1, 203.0.113.5, 10.1.2.3";
    sl_client_ip(&peer, xff, strlen(xff), trusted, 2, &out);
    sl_ip_format(&out, s);
    CHECK_STR(s, "203.0.113.5");   /* right-most untrusted hop; the spoofable left part is ignored */
    sl_client_ip(&other, xff, strlen(xff), trusted, 2, &out);
    sl_ip_format(&out, s);
    CHECK_STR(s, "192.0.2.9");     /* peer not trusted: XFF ignored */
    sl_client_ip(&peer, "garbage", 7, trusted, 2, &out);
    sl_ip_format(&out, s);
    CHECK_STR(s, "127.0.0.1");
    sl_client_ip(&peer, NULL, 0, trusted, 2, &out);
    sl_ip_format(&out, s);
    CHECK_STR(s, "127.0.0.1");
}

/* Rate limiting keys IPv4 by address and IPv6 by /64: a client that holds a
 * /64 cannot mint fresh buckets by changing its interface identifier. */
TEST(ratelimit_ipv6_by_64)
{
    static const struct { const char *a, *b; int same; } keys[] = {
        {"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", 1},
        {"2001:db8:1:2::1", "2001:db8:1:3::1", 0},
        {"192.0.2.1", "192.0.2.2", 0},
        {"::ffff:192.0.2.1", "192.0.2.1", 1}, /* IPv4-mapped is IPv4 */
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        sl_ipnet_t a, b;
        CHECK_INT(sl_ipnet_parse(keys[i].a, strlen(keys[i].a), &a), ==, 0);
        CHECK_INT(sl_ipnet_parse(keys[i].b, strlen(keys[i].b), &b), ==, 0);
        CHECK_INT(http_rl_key(&a) == http_rl_key(&b), ==, keys[i].same);
    }
    /* 2 requests/s, burst 2: the third from anywhere in the /64 waits */
    rl_table_t t = {0};
    int wait = 0;
    int64_t now = 1000000;
    const char *same64[] = {"2001:db8::1", "2001:db8::2", "2001:db8::ffff"};
    int allowed[3];
    for (int i = 0; i < 3; i++) {
        sl_ipnet_t ip;
        sl_ipnet_parse(same64[i], strlen(same64[i]), &ip);
        allowed[i] = http_rl_bucket(&t, 1024, &ip, 2, 2, now, 1, &wait);
    }
    CHECK_INT(allowed[0], ==, 1);
    CHECK_INT(allowed[1], ==, 1);
    CHECK_INT(allowed[2], ==, 0);
    CHECK_INT(wait, ==, 1);
    sl_ipnet_t other;
    sl_ipnet_parse("2001:db8:0:1::1", 15, &other);
    CHECK_INT(http_rl_bucket(&t, 1024, &other, 2, 2, now, 1, &wait), ==, 1); /* the next /64 has its own */
    /* cost 0 only looks: an empty bucket stays empty, a full one full */
    sl_ipnet_t ip;
    sl_ipnet_parse("2001:db8::9", 11, &ip);
    CHECK_INT(http_rl_bucket(&t, 1024, &ip, 2, 2, now, 0, &wait), ==, 0);
    CHECK_INT(http_rl_bucket(&t, 1024, &other, 2, 2, now, 0, &wait), ==, 1);
    CHECK_INT(http_rl_bucket(&t, 1024, &other, 2, 2, now, 1, &wait), ==, 1);
    CHECK_INT(http_rl_bucket(&t, 1024, &other, 2, 2, now, 1, &wait), ==, 0);
    CHECK_INT(http_rl_bucket(&t, 1024, &ip, 2, 2, now + 500, 1, &wait), ==, 1); /* refilled */
    http_rl_table_free(&t);
}

static cJSON *geo(sl_geo_t *g, const char *addr)
{
    sl_ipnet_t ip;
    if (sl_ipnet_parse(addr, strlen(addr), &ip)) return NULL;
    return sl_geo_lookup(g, &ip);
}

TEST(geoip_country_schema)
{
    /* the CC0 ip-location-db database the README's set-up installs */
    const char *path = getenv("SL_TEST_COUNTRY_MMDB");
    sl_geo_t *g = NULL;
    CHECK(path != NULL);
    if (path == NULL) return;
    CHECK_INT(sl_geo_open(&g, path), ==, 0);
    if (g == NULL) return;
    /* 1.1.1.1 (APNIC/Cloudflare, AU in whois) and 8.8.8.8 (Google, US) */
    cJSON *l = geo(g, "8.8.8.8");
    CHECK_STR(str_at(l, "country", NULL), "US");
    cJSON_Delete(l);
    l = geo(g, "2001:4860:4860::8888");
    CHECK_STR(str_at(l, "country", NULL), "US");
    cJSON_Delete(l);
    l = geo(g, "127.0.0.1");
    CHECK_NULL(l);
    cJSON_Delete(l);
    sl_geo_close(g);
}

TEST(geoip_city_schema)
{
    /* written by tests/data/make-city-mmdb.pl in MaxMind's City layout */
    const char *path = getenv("SL_TEST_CITY_MMDB");
    sl_geo_t *g = NULL;
    CHECK(path != NULL);
    if (path == NULL) return;
    CHECK_INT(sl_geo_open(&g, path), ==, 0);
    if (g == NULL) return;
    cJSON *l = geo(g, "81.2.69.160");
    CHECK_STR(str_at(l, "country", NULL), "GB");
    CHECK_STR(str_at(l, "country_name", NULL), "United Kingdom");
    CHECK_STR(str_at(l, "city", NULL), "London");
    CHECK_STR(str_at(l, "region", NULL), "England");
    CHECK_STR(str_at(l, "region_code", NULL), "ENG");
    CHECK_STR(str_at(l, "timezone", NULL), "Europe/London");
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(l, "latitude");
    CHECK(cJSON_IsNumber(lat) && lat->valuedouble > 51.4 && lat->valuedouble < 51.6);
    cJSON_Delete(l);
    l = geo(g, "2a02:cf40::1");
    CHECK_STR(str_at(l, "country", NULL), "FR");
    CHECK_STR(str_at(l, "city", NULL), "Paris");
    cJSON_Delete(l);
    l = geo(g, "192.0.2.1");
    CHECK_NULL(l);
    cJSON_Delete(l);
    sl_geo_close(g);
}

/* Issue 13, M2: a repeated member name anywhere in a message. */
TEST(json_duplicate_members)
{
    static const struct { const char *json; const char *dup; } cases[] = {
        {"{\"a\":1,\"b\":2}", NULL},
        {"{\"a\":1,\"a\":2}", "a"},
        {"{\"userId\":\"x\",\"p\":{\"k\":[{\"z\":1,\"z\":2}]}}", "z"},
        {"[{\"a\":1},{\"a\":1}]", NULL}, /* the same name in two objects is fine */
        {"{\"a\":{\"a\":{\"a\":1}}}", NULL},
        {"{\"writeKey\":\"k\",\"x\":1,\"writeKey\":\"k\"}", "writeKey"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *x = cJSON_Parse(cases[i].json);
        CHECK(x != NULL);
        const char *d = sl_json_dup_member(x, NULL);
        if (cases[i].dup) CHECK_STR(d ? d : "(none)", cases[i].dup);
        else CHECK_NULL(d);
        cJSON_Delete(x);
    }
    /* a large object is sorted, not compared pairwise */
    sl_buf_t b = {0};
    sl_buf_appends(&b, "{");
    for (int i = 0; i < 5000; i++) sl_buf_printf(&b, "%s\"k%d\":%d", i ? "," : "", i, i);
    sl_buf_appends(&b, ",\"k4321\":0}");
    cJSON *x = cJSON_ParseWithLength(b.data, b.len);
    CHECK_STR(sl_json_dup_member(x, NULL), "k4321");
    /* skip: the subtree is not searched, the names beside it are */
    cJSON *y = cJSON_Parse("{\"batch\":[{\"a\":1,\"a\":2}],\"context\":{}}");
    CHECK_NULL(sl_json_dup_member(y, cJSON_GetObjectItem(y, "batch")));
    CHECK_STR(sl_json_dup_member(y, NULL), "a");
    cJSON_Delete(x);
    cJSON_Delete(y);
    sl_buf_free(&b);
}

/* ---- the ack path's two readers (collector/ack.h) ------------------------------ */

/* Both readers on one body: the same answer, byte for byte (no UUID is made
 * in these cases); *scan_out keeps the tree-less reader's. */
static void ack_both(const sl_config_t *cfg, int type, int basic, const char *body, ack_out_t *scan_out,
                     sl_arena_t *a, char *scratch, size_t scratch_len)
{
    ack_in_t in = {0};
    in.cfg = cfg;
    in.basic = basic;
    in.basic_src = basic ? &cfg->sources[0] : NULL;
    in.type = type;
    in.received_ms = RECEIVED;
    in.ip = "203.0.113.0";
    in.scratch = scratch;
    in.scratch_len = scratch_len;
    in.arena = a;
    ack_out_t t;
    ack_tree(&in, body, strlen(body), &t);
    ack_scan(&in, body, strlen(body), scan_out);
    const ack_out_t *s = scan_out;
    CHECK_INT(s->status, ==, t.status);
    if (t.status) CHECK_STR(s->error, t.error);
    CHECK_INT(s->n_msgs, ==, t.n_msgs);
    CHECK_INT(s->n_rejected, ==, t.n_rejected);
    for (size_t i = 0; i < t.n_msgs && i < s->n_msgs; i++) {
        CHECK_INT(s->msgs[i].json_len, ==, t.msgs[i].json_len);
        if (s->msgs[i].json_len == t.msgs[i].json_len && memcmp(s->msgs[i].json, t.msgs[i].json, t.msgs[i].json_len))
            fprintf(stderr, "  stored differ:\n  tree %.*s\n  scan %.*s\n", (int)t.msgs[i].json_len, t.msgs[i].json,
                    (int)s->msgs[i].json_len, s->msgs[i].json), test_failures++;
        CHECK_STR(s->mids[i], t.mids[i]);
    }
    CHECK_STR(s->errors.data ? s->errors.data : "", t.errors.data ? t.errors.data : "");
    CHECK_STR(s->warnings.data ? s->warnings.data : "", t.warnings.data ? t.warnings.data : "");
    ack_out_free(&t);
}

TEST(ack_scan_table)
{
    static const char conf[] = "{\"listen\":\"127.0.0.1:0\",\"data_dir\":\"/tmp/x\",\"admin_token\":\"adm-0123456789abcdef\","
                               "\"sources\":[{\"name\":\"web\",\"write_key\":\"wk1\"}],"
                               "\"limits\":{\"max_json_depth\":8,\"max_traits_per_person\":2}}";
    static const struct {
        int type;
        const char *body;
        int delegated; /* the tree reader answers it (ack.c's list) */
        const char *stored; /* a part of the first stored message, or of the refusal, or NULL */
    } cases[] = {
        /* numbers print as cJSON's double prints back: short ones as written */
        {SL_MSG_TRACK, "{\"writeKey\":\"wk1\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"e\",\"properties\":"
                       "{\"a\":1.50,\"b\":0.00012,\"c\":1e5,\"d\":-0.0,\"e\":123456789012345678,\"f\":0.1E1,\"g\":0.000012,"
                       "\"h\":19.99,\"i\":100000000000000000000}}",
         0, "\"properties\":{\"a\":1.5,\"b\":0.00012,\"c\":100000,\"d\":-0,\"e\":1.2345678901234568e+17,\"f\":1,"
            "\"g\":1.2e-05,\"h\":19.99,\"i\":1e+20}"},
        /* escapes decoded, then escaped the printer's way; a raw tab taken and escaped */
        {SL_MSG_TRACK, "{ \"writeKey\" : \"wk1\" ,\"messageId\":\"m\",\"userId\":\"\\u0041\\/b\\u00e9\\ud83d\\ude00\\u001f\","
                       "\"event\":\"x\\ty\\\"\",\"properties\":{\"s\":\"raw\ttab\"}\n}",
         0, "\"userId\":\"A/b\xc3\xa9\xf0\x9f\x98\x80\\u001f\",\"event\":\"x\\ty\\\"\",\"properties\":{\"s\":\"raw\\ttab\"}"},
        /* ids as strings, server fields in normalisation's order, writeKey gone */
        {SL_MSG_ALIAS, "{\"previousId\":7,\"userId\":9007199254740993,\"messageId\":12,\"writeKey\":\"wk1\","
                       "\"timestamp\":\"2023-11-14T22:00:00Z\",\"sentAt\":\"2023-11-14T22:00:10Z\",\"type\":5}",
         0, "{\"previousId\":\"7\",\"userId\":\"9007199254740992\",\"messageId\":\"12\",\"timestamp\":"
            "\"2023-11-14T22:13:10.000Z\",\"sentAt\":\"2023-11-14T22:00:10Z\",\"type\":\"alias\",\"originalTimestamp\":"
            "\"2023-11-14T22:00:00Z\",\"receivedAt\":\"2023-11-14T22:13:20.000Z\",\"context\":{\"sillage\":{\"source\":"
            "\"web\"},\"ip\":\"203.0.113.0\"}}"},
        /* a batch: context and sentAt after the batch, merged; sillage and ip replaced; a future time clamped */
        {-1, "{\"batch\":[{\"type\":\"page\",\"messageId\":\"a\",\"userId\":\"u\",\"timestamp\":\"2030-01-01T00:00:00Z\","
             "\"context\":{\"ip\":\"1.1.1.1\",\"sillage\":{\"clampedTimestamp\":1,\"x\":[1,{}],\"source\":\"me\"},"
             "\"page\":{}}},{\"type\":\"identify\",\"messageId\":\"b\",\"userId\":\"u\",\"traits\":{\"a\":1,\"b\":2,"
             "\"c\":3},\"context\":null,\"sentAt\":null},{\"type\":\"group\",\"groupId\":2.5,\"anonymousId\":\"x\","
             "\"messageId\":\"c\"},\"no\",{\"type\":\"track\",\"userId\":\"u\"}],\"writeKey\":\"wk1\",\"context\":"
             "{\"library\":{\"name\":\"l\"},\"ip\":\"2.2.2.2\",\"sillage\":{\"source\":\"x\",\"clampedTimestamp\":2,"
             "\"k\":true},\"page\":1},\"sentAt\":\"2023-11-14T22:13:00Z\"}",
         0, "\"context\":{\"sillage\":{\"x\":[1,{}],\"source\":\"web\",\"clampedTimestamp\":\"2030-01-01T00:00:20.000Z\"},"
            "\"page\":{},\"library\":{\"name\":\"l\"},\"ip\":\"203.0.113.0\"}"},
        {-1, "{\"batch\":[{\"type\":\"page\",\"userId\":\"u\",\"messageId\":\"a\",\"timestamp\":\"2023-11-14T22:00:00Z\"}],"
             "\"writeKey\":\"wk1\",\"sentAt\":\"2023-11-14T22:00:05Z\"}",
         0, "\"timestamp\":\"2023-11-14T22:13:15.000Z\",\"sentAt\":\"2023-11-14T22:00:05Z\",\"originalTimestamp\""},
        {-1, "{\"batch\":[{\"type\":\"page\",\"userId\":\"u\",\"messageId\":\"a\"}],\"writeKey\":\"wk1\",\"sentAt\":\"x\"}",
         0, "the batch's sentAt must be"},
        {-1, "{\"batch\":[],\"writeKey\":\"wk1\"}", 0, "batch is empty"},
        {-1, "{\"batch\":{},\"writeKey\":\"wk1\"}", 0, "batch must be an array"},
        {SL_MSG_PAGE, "{\"writeKey\":\"nope\",\"anonymousId\":\"a\"}", 0, "unknown write key"},
        {SL_MSG_PAGE, "{\"writeKey\":5,\"anonymousId\":\"a\"}", 0, "missing write key"},
        /* left to the tree reader */
        {SL_MSG_PAGE, "{\"writeKey\":\"wk1\",\"anonymousId\":\"a\",\"properties\":{\"a\":1,\"a\":2}}", 1,
         "repeats the member \"a\""},
        {SL_MSG_PAGE, "{\"writeKey\":\"wk1\",\"anonymousId\":\"a\",\"prop\\u0065rties\":5}", 1, "properties must be"},
        {SL_MSG_PAGE, "{\"writeKey\":\"wk1\",\"anonymousId\":\"a\",\"n\":1e400}", 1, "out of range"},
        {SL_MSG_PAGE, "{\"writeKey\":\"wk1\",\"messageId\":\"m\",\"anonymousId\":\"a\",\"n\":01}", 1, "\"n\":1,"},
        {SL_MSG_PAGE, "{\"writeKey\":\"wk1\",\"anonymousId\":\"a\"} x", 1, "bytes after"},
        {SL_MSG_PAGE, "{\"writeKey\":\"wk1\",\"anonymousId\":\"a\",}", 1, "not valid JSON"},
        /* cJSON reads a bad \\u escape as a NUL, which ends the string */
        {SL_MSG_PAGE, "{\"writeKey\":\"wk1\",\"messageId\":\"m\",\"anonymousId\":\"a\\u00zzb\"}", 1, "{\"messageId\":\"m\",\"anonymousId\":\"a\","},
        {SL_MSG_PAGE, "[1]", 1, "must be a JSON object"},
        {SL_MSG_PAGE, "{\"writeKey\":\"wk1\",\"anonymousId\":\"a\",\"p\":[[[[[[[[1]]]]]]]]}", 1, "max_json_depth"},
        {-1, "{\"writeKey\":\"wk1\",\"batch\":[{\"previousId\":1,\"userId\":\"u\",\"type\":\"alias\",\"messageId\":\"m\"}]}", 1,
         "{\"previousId\":\"1\""},
    };
    sl_config_t cfg;
    char err[256];
    REQUIRE(sl_config_parse(&cfg, conf, strlen(conf), err, sizeof(err)) == 0);
    size_t scratch_len = cfg.limits.max_message_bytes + 4096;
    char *scratch = malloc(scratch_len);
    /* a batch is read from its start when the write key is known by then (Basic) */
    for (size_t j = 0; j < 2 * sizeof(cases) / sizeof(cases[0]); j++) {
        size_t i = j / 2;
        int basic = j % 2;
        if (basic && cases[i].type != -1) continue;
        sl_arena_t a;
        sl_arena_init(&a);
        ack_out_t s;
        ack_both(&cfg, cases[i].type, basic, cases[i].body, &s, &a, scratch, scratch_len);
        if (s.delegated != cases[i].delegated) fprintf(stderr, "  case %zu: delegated %d\n", i, s.delegated);
        CHECK_INT(s.delegated, ==, cases[i].delegated);
        if (cases[i].stored) {
            const char *where = s.status ? s.error : s.n_msgs ? s.msgs[0].json : s.errors.data;
            if (where == NULL || strstr(where, cases[i].stored) == NULL) {
                fprintf(stderr, "  case %zu: %s\n  not in %s\n", i, cases[i].stored, where ? where : "(nothing)");
                test_failures++;
            }
        }
        ack_out_free(&s);
        sl_arena_free(&a);
    }
    free(scratch);
    sl_config_free(&cfg);
}

/* Bodies built to be costly for the readers, each answered in linear time
 * and memory (a reviewer's finding each):
 *   - member names chosen to share a few slots of the repeated-member check's
 *     (unkeyed) hash: each insertion probed the whole run, 1.1 s of the loop
 *     thread for 494 KB, 3 s when the object is the batch's context;
 *   - a batch's context of many members against messages whose contexts have
 *     many: each batch member was searched among the message's in turn;
 *   - the tree reader merged the batch's context by looking each member up in
 *     the message's context as it grew (half a second per message) and by deep
 *     copies living until the request's end (2.4 GB for 210 KB);
 *   - ack_scan kept every message of a batch over the stored-bytes bound until
 *     its end (75 MB for 115 KB), where the tree stops at the first. */
static double elapsed_since(struct timespec t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

TEST(ack_hostile_bodies_cost_linear)
{
    static const char conf[] = "{\"listen\":\"127.0.0.1:0\",\"data_dir\":\"/tmp/x\",\"admin_token\":\"adm-0123456789abcdef\","
                               "\"sources\":[{\"name\":\"web\",\"write_key\":\"wk1\"}]}";
    sl_config_t cfg;
    char err[256];
    REQUIRE(sl_config_parse(&cfg, conf, strlen(conf), err, sizeof(err)) == 0);
    size_t scratch_len = cfg.limits.max_message_bytes + 4096;
    char *scratch = malloc(scratch_len);
    sl_buf_t b = {0};
    struct timespec t0;

    /* 1. 30,000 names whose FNV-1a lands in the first 256 of 65,536 slots,
     * as the batch's context (read three times) and the last one repeated */
    static const char al[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    sl_buf_appends(&b, "{\"batch\":[{\"type\":\"page\",\"anonymousId\":\"a\"}],\"writeKey\":\"wk1\",\"context\":{");
    char name[9] = "k";
    for (unsigned long c = 0, got = 0; got < 30000; c++) {
        unsigned long x = c;
        for (int i = 1; i < 8; i++, x /= 36) name[i] = al[x % 36];
        uint32_t h = 2166136261u;
        for (int i = 0; i < 8; i++) h = (h ^ (unsigned char)name[i]) * 16777619u;
        if ((h & 65535) >= 256) continue;
        sl_buf_printf(&b, "%s\"%s\":0", got++ ? "," : "", name);
    }
    size_t open_len = b.len;
    sl_buf_appends(&b, "}}");
    sl_arena_t a;
    sl_arena_init(&a);
    ack_out_t s;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ack_both(&cfg, -1, 0, b.data, &s, &a, scratch, scratch_len);
    double took = elapsed_since(t0);
    CHECK(took < 2.0); /* tens of milliseconds; 20 s under ASan before */
    CHECK_INT(s.delegated, ==, 0);
    CHECK_INT(s.n_rejected, ==, 1); /* the context makes the message too big */
    ack_out_free(&s);
    sl_arena_free(&a);
    b.len = open_len;
    sl_buf_printf(&b, ",\"%s\":1}}", name);
    sl_arena_init(&a);
    ack_both(&cfg, -1, 0, b.data, &s, &a, scratch, scratch_len);
    CHECK_INT(s.delegated, ==, 1);
    CHECK(s.error && strstr(s.error, "repeats the member"));
    ack_out_free(&s);
    sl_arena_free(&a);

    /* 2. 20,000 members in the batch's context, 7 messages of 2,300 in theirs;
     * the same with a number cJSON alone reads (01): the tree reader's merge */
    for (int odd = 0; odd < 2; odd++) {
        b.len = 0;
        sl_buf_appends(&b, "{\"writeKey\":\"wk1\",\"context\":{");
        for (int i = 0; i < 20000; i++) sl_buf_printf(&b, "%s\"c%07d\":0", i ? "," : "", i);
        sl_buf_appends(&b, "},\"batch\":[");
        for (int m = 0; m < 7; m++) {
            sl_buf_printf(&b, "%s{\"type\":\"page\",\"anonymousId\":\"a\",\"context\":{", m ? "," : "");
            for (int j = 0; j < 2300; j++) sl_buf_printf(&b, "%s\"c%07d\":0", j ? "," : "", 9000000 + j * 10 + m);
            sl_buf_appends(&b, "}}");
        }
        sl_buf_appends(&b, odd ? "],\"n\":01}" : "]}");
        sl_arena_init(&a);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        ack_both(&cfg, -1, 0, b.data, &s, &a, scratch, scratch_len);
        took = elapsed_since(t0);
        CHECK(took < 2.0); /* 0.5 s (scan) and 3.7 s (tree) in a release build before */
        CHECK_INT(s.delegated, ==, odd);
        ack_out_free(&s);
        sl_arena_free(&a);
    }

    /* 3. the tree reader's merge: references (sillage copied: it is changed),
     * and nothing merged into a message the context cannot fit into */
    cJSON *bctx = cJSON_Parse("{\"big\":[1,2,3],\"sillage\":{\"clampedTimestamp\":1},\"ip\":\"1.1.1.1\"}");
    cJSON *msg = cJSON_Parse("{\"type\":\"page\",\"anonymousId\":\"a\",\"context\":{\"own\":1}}");
    sl_ingest_ctx_t ctx = {.received_ms = RECEIVED, .batch_context = bctx, .source = "web", .max_print = scratch_len};
    CHECK(sl_msg_normalize(msg, -1, &ctx) == NULL);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "context");
    const cJSON *big = cJSON_GetObjectItemCaseSensitive(c, "big");
    CHECK(big && (big->type & cJSON_IsReference) && big->child == bctx->child->child);
    const cJSON *sil = cJSON_GetObjectItemCaseSensitive(c, "sillage");
    CHECK(sil && !(sil->type & cJSON_IsReference));
    CHECK(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(bctx, "sillage"), "clampedTimestamp"));
    cJSON_Delete(msg);
    cJSON_Delete(bctx);
    b.len = 0;
    sl_buf_appends(&b, "{");
    for (int i = 0; i < 8000; i++) sl_buf_printf(&b, "%s\"c%d\":0", i ? "," : "", i);
    sl_buf_appends(&b, "}");
    bctx = cJSON_Parse(b.data);
    msg = cJSON_Parse("{\"type\":\"page\",\"anonymousId\":\"a\"}");
    ctx.batch_context = bctx;
    const char *why = sl_msg_normalize(msg, -1, &ctx);
    CHECK(why && strcmp(why, ACK_TOO_BIG_NORMALISED) == 0);
    CHECK(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(msg, "context"), "c0") == NULL);
    cJSON_Delete(msg);
    cJSON_Delete(bctx);

    /* 4. 2,500 messages of 30 KB once merged: refused, and ack_scan keeps no
     * more of them than the bound lets through */
    b.len = 0;
    sl_buf_appends(&b, "{\"writeKey\":\"wk1\",\"context\":{\"pad\":\"");
    for (int i = 0; i < 30000; i++) sl_buf_append(&b, "P", 1);
    sl_buf_appends(&b, "\"},\"batch\":[");
    for (int m = 0; m < 2500; m++)
        sl_buf_printf(&b, "%s{\"type\":\"page\",\"anonymousId\":\"a\",\"messageId\":\"m%d\"}", m ? "," : "", m);
    sl_buf_appends(&b, "]}");
    sl_arena_init(&a);
    ack_both(&cfg, -1, 0, b.data, &s, &a, scratch, scratch_len);
    CHECK_INT(s.status, ==, 413);
    CHECK_STR(s.error, ACK_TOO_BIG_REQUEST);
    CHECK(s.n_msgs * 30000 <= ACK_STORED_BYTES(&cfg, cfg.limits.max_batch_messages));
    ack_out_free(&s);
    sl_arena_free(&a);

    sl_buf_free(&b);
    free(scratch);
    sl_config_free(&cfg);
}
