/* test_common.c - time, units, hashing, config, junk identifiers, map growth. */
#include "test.h"
#include <cjson/cJSON.h>
#include <math.h>
#include "sl_common.h"
#include "sl_config.h"
#include "sl_stitch.h"
#include "sl_triggers.h"

#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

TEST(time_parse_table)
{
    static const struct { const char *in; int ok; long long ms; } cases[] = {
        {"1970-01-01T00:00:00Z", 1, 0},
        {"1970-01-01T00:00:00.001Z", 1, 1},
        {"2024-02-29T12:34:56.789Z", 1, 1709210096789LL},
        {"2024-02-29T12:34:56.789123Z", 1, 1709210096789LL},
        {"2024-02-29T14:34:56.789+02:00", 1, 1709210096789LL},
        {"2024-02-29T10:04:56.789-0230", 1, 1709210096789LL},
        {"2024-02-29T12:34:56", 1, 1709210096000LL},
        {"2024-02-29 12:34:56Z", 1, 1709210096000LL},
        {"2024-02-29", 1, 1709164800000LL},
        {"1969-12-31T23:59:59Z", 1, -1000},
        {"2024-13-01T00:00:00Z", 0, 0},
        {"2024-02-29T25:00:00Z", 0, 0},
        {"2024-02-29T12:34:56.Z", 0, 0},
        {"2024-02-29T12:34:56Zjunk", 0, 0},
        {"yesterday", 0, 0},
        {"", 0, 0},
        {"1709210096789", 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        int64_t ms = 0;
        int rc = sl_time_parse_iso(cases[i].in, strlen(cases[i].in), &ms);
        if (cases[i].ok) {
            CHECK_INT(rc, ==, 0);
            CHECK_INT(ms, ==, cases[i].ms);
        } else {
            CHECK_INT(rc, ==, SL_EINVAL);
        }
    }
}

TEST(time_format_roundtrip)
{
    char buf[32];
    sl_time_format_iso(1709210096789LL, buf);
    CHECK_STR(buf, "2024-02-29T12:34:56.789Z");
    sl_time_format_iso(0, buf);
    CHECK_STR(buf, "1970-01-01T00:00:00.000Z");
    sl_time_format_iso(-1, buf);
    CHECK_STR(buf, "1969-12-31T23:59:59.999Z");
    for (int64_t ms = 946684800000LL; ms < 4102444800000LL; ms += 86400000LL * 37 + 12345) {
        int64_t back;
        sl_time_format_iso(ms, buf);
        CHECK_INT(sl_time_parse_iso(buf, strlen(buf), &back), ==, 0);
        CHECK_INT(back, ==, ms);
    }
}

TEST(units)
{
    int64_t ms;
    uint64_t b;
    CHECK_INT(sl_parse_duration_ms("30s", &ms), ==, 0); CHECK_INT(ms, ==, 30000);
    CHECK_INT(sl_parse_duration_ms("15m", &ms), ==, 0); CHECK_INT(ms, ==, 900000);
    CHECK_INT(sl_parse_duration_ms("1h", &ms), ==, 0); CHECK_INT(ms, ==, 3600000);
    CHECK_INT(sl_parse_duration_ms("7d", &ms), ==, 0); CHECK_INT(ms, ==, 604800000);
    CHECK_INT(sl_parse_duration_ms("250ms", &ms), ==, 0); CHECK_INT(ms, ==, 250);
    CHECK_INT(sl_parse_duration_ms("7", &ms), ==, SL_EINVAL);
    CHECK_INT(sl_parse_duration_ms("1w", &ms), ==, SL_EINVAL);
    CHECK_INT(sl_parse_duration_ms("-1s", &ms), ==, SL_EINVAL);
    CHECK_INT(sl_parse_duration_ms("99999999999999999999d", &ms), ==, SL_EINVAL);
    CHECK_INT(sl_parse_size_bytes("8GB", &b), ==, 0); CHECK_INT(b, ==, 8LL << 30);
    CHECK_INT(sl_parse_size_bytes("512000", &b), ==, 0); CHECK_INT(b, ==, 512000);
    CHECK_INT(sl_parse_size_bytes("64KB", &b), ==, 0); CHECK_INT(b, ==, 65536);
    CHECK_INT(sl_parse_size_bytes("8 GB", &b), ==, SL_EINVAL);
    CHECK_INT(sl_parse_size_bytes("GB", &b), ==, SL_EINVAL);
}

TEST(hash_and_uuid)
{
    sl_hash128_t a = sl_hash128("abc", 3, 1), b = sl_hash128("abc", 3, 1), c = sl_hash128("abd", 3, 1),
                 d = sl_hash128("abc", 3, 2);
    CHECK(a.lo == b.lo && a.hi == b.hi);
    CHECK(a.lo != c.lo || a.hi != c.hi);
    CHECK(a.lo != d.lo || a.hi != d.hi);
    sl_hash128_t e = sl_hash128("", 0, 0);
    CHECK(e.lo != 0 || e.hi != 0);
    char u1[37], u2[37];
    sl_uuid4(u1);
    sl_uuid4(u2);
    CHECK_INT(strlen(u1), ==, 36);
    CHECK(u1[14] == '4');
    CHECK(u1[19] == '8' || u1[19] == '9' || u1[19] == 'a' || u1[19] == 'b');
    CHECK(strcmp(u1, u2) != 0);
}

TEST(arena_and_buf)
{
    sl_arena_t a;
    sl_arena_init(&a);
    char *p = sl_arena_alloc(&a, 10);
    char *big = sl_arena_alloc(&a, 100000);
    char *q = sl_arena_strndup(&a, "hello", 5);
    CHECK(p != NULL && big != NULL && q != NULL);
    memset(big, 1, 100000);
    CHECK_STR(q, "hello");
    CHECK_INT((uintptr_t)p % 8, ==, 0);
    sl_arena_free(&a);
    sl_buf_t b = {0};
    sl_buf_append_json_str(&b, "a\"b\\c\n\x01", 7);
    CHECK_STR(b.data, "\"a\\\"b\\\\c\\n\\u0001\"");
    sl_buf_free(&b);
    /* an empty buffer's bytes (data NULL) appended: nothing, and no memcpy
     * from NULL (undefined: the sanitizer build stopped at the first event) */
    sl_buf_t empty = {0};
    CHECK_INT(sl_buf_append(&b, empty.data, empty.len), ==, 0);
    CHECK_INT(b.len, ==, 0);
    CHECK(b.data != NULL && b.data[0] == '\0');
    sl_buf_free(&b);
}

/* sl_json_print prints what cJSON_PrintUnformatted prints (the stored form
 * did not change when the ack path stopped using cJSON's printer). */
TEST(json_print_as_cjson)
{
    static const char *const docs[] = {
        "{}", "[]", "null", "true", "false", "0", "-0", "1", "-1", "2147483647", "-2147483648", "2147483648",
        "-2147483649", "9007199254740993", "9e15", "1e300", "-1e-300", "0.1", "19.99", "1.5e-7", "3.141592653589793",
        "0.30000000000000004", "999999999999999", "1000000000000000", "-999999999999999.5", "123456789012345678901234567890", "\"\"", "\"a\\\"b\\\\c\\/d\"",
        "\"\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\"", "\"\\u00e9t\\u00e9 \\ud83d\\ude00\"", "\"caf\xc3\xa9\"",
        "{\"a\":[1,2,{\"b\":null}],\"c\":{\"\":\"\"},\"d\\n\":-12.5}", "[[[[[]]]],{},\"x\"]",
        ("{\"type\":\"track\",\"event\":\"Order Completed\",\"properties\":{\"revenue\":129.9,\"n\":3,"
         "\"products\":[{\"sku\":\"A-1\",\"price\":9.99,\"quantity\":2}]}}"),
    };
    char buf[512];
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        cJSON *d = cJSON_Parse(docs[i]);
        REQUIRE(d != NULL);
        char *want = cJSON_PrintUnformatted(d);
        REQUIRE(want != NULL);
        size_t n = 0;
        CHECK_INT(sl_json_print(d, buf, sizeof(buf), &n), ==, 0);
        CHECK_STR(buf, want);
        CHECK_INT(n, ==, strlen(want));
        /* exactly its length plus the NUL fits; one byte less does not */
        CHECK_INT(sl_json_print(d, buf, n + 1, &n), ==, 0);
        CHECK_INT(sl_json_print(d, buf, n, &n), ==, SL_ETOOBIG);
        cJSON_free(want);
        cJSON_Delete(d);
    }
    /* numbers made by the server (skew-corrected times are strings; counts are not) */
    cJSON *x = cJSON_CreateNumber(NAN);
    size_t n;
    CHECK_INT(sl_json_print(x, buf, sizeof(buf), &n), ==, 0);
    CHECK_STR(buf, "null");
    cJSON_Delete(x);
}

TEST(url_redact_table)
{
    static const struct { const char *in, *want; } cases[] = {
        {"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
        {"nats://natsuser:NATSPASSWORD@127.0.0.1:4999", "nats://***@127.0.0.1:4999"},
        {"nats://TOKEN@h:4222", "nats://***@h:4222"},
        {"http://127.0.0.1:18556/hook?api_key=URLSECRET", "http://127.0.0.1:18556/hook?***"},
        {"https://u:SECRET@hooks.example/x?t=SECRET#frag", "https://***@hooks.example/x?***"},
        {"https://hooks.example/x#SECRET", "https://hooks.example/x#***"},
        {"https://hooks.example/x?email=a@SECRET", "https://hooks.example/x?***"},
        {"https://hooks.example/x?a=1,https://u:SECRET@evil/", "https://hooks.example/x?***"},
        /* a list of servers: each one redacted */
        {"nats://a:4222,nats://u:SECRET@b:4222, nats://c:4222", "nats://a:4222,nats://***@b:4222, nats://c:4222"},
        /* unencoded characters in a password: more hidden, never the secret */
        {"nats://u:SEC@RET@h:1", "nats://***@h:1"},
        {"nats://u:SEC,RET@h:1", "nats://***@h:1"},
        {"nats://u:SEC/RET@h:1", "nats://***@h:1"},
        {"nats://u:SEC?RET@h:1", "nats://***"},
        {"nats://u:SEC#RET@h:1", "nats://***"},
        {"u:SECRET@h:1", "***@h:1"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        char out[256];
        CHECK_STR(sl_url_redact(cases[i].in, out, sizeof(out)), cases[i].want);
        CHECK(strstr(out, "SECRET") == NULL && strstr(out, "PASSWORD") == NULL && strstr(out, "TOKEN") == NULL);
    }
    char small[12];
    CHECK_STR(sl_url_redact("nats://u:SECRET@host:4222", small, sizeof(small)), "nats://***@");
    CHECK_STR(sl_url_redact(NULL, small, sizeof(small)), "");
}

static const char design_example[] =
    "{\"listen\": \"0.0.0.0:8080\", \"data_dir\": \"/var/lib/sillage\", \"map_size\": \"8GB\","
    " \"durability\": \"sync\", \"geoip_db\": \"/usr/share/sillage/geo.mmdb\", \"ip_anonymize\": true,"
    " \"trusted_proxies\": [\"127.0.0.1\"], \"cors_origins\": [\"https://shop.example\"],"
    " \"sources\": [{\"name\": \"shop\", \"write_key\": \"wk_live_123\"},"
    " {\"name\": \"backend\", \"write_key\": \"wk_srv_456\", \"trusted\": true}], \"admin_token\": \"change-me-to-a-long-random-token\","
    " \"identity\": {\"traits\": [\"email\"]}, \"limits\": {\"max_message_bytes\": 32768, \"max_request_bytes\": 512000},"
    " \"triggers\": [ {\"name\": \"cart\", \"type\": \"abandoned_cart\", \"delay\": \"1h\"},"
    "  {\"name\": \"pricing\", \"type\": \"page_visit\", \"url\": \"/pricing*\", \"min_count\": 2, \"within\": \"7d\"},"
    "  {\"name\": \"dormant\", \"type\": \"inactivity\", \"after\": \"30d\"},"
    "  {\"name\": \"plan\", \"type\": \"trait_change\", \"trait\": \"plan\"} ],"
    " \"pressure\": {\"max_per_profile_per_day\": 3},"
    " \"webhooks\": [{\"url\": \"https://automation.example/hook\", \"secret\": \"s3cret\", \"rules\": [\"cart\", \"pricing\"]}]}";

TEST(config_design_example)
{
    sl_config_t c;
    char err[256] = "";
    int rc = sl_config_parse(&c, design_example, sizeof(design_example) - 1, err, sizeof(err));
    CHECK_INT(rc, ==, 0);
    if (rc) fprintf(stderr, "  error: %s\n", err);
    CHECK_STR(c.listen, "0.0.0.0:8080");
    CHECK_INT(c.map_size_bytes, ==, 8LL << 30);
    CHECK_INT(c.n_sources, ==, 2);
    CHECK_STR(c.sources[0].write_key, "wk_live_123");
    CHECK_INT(c.sources[0].trusted, ==, 0); /* a browser key unless said otherwise */
    CHECK_INT(c.sources[1].trusted, ==, 1);
    CHECK(sl_config_source(&c, "backend") == &c.sources[1]);
    CHECK_NULL(sl_config_source(&c, "nope"));
    CHECK_INT(c.limits.max_traits_per_person, ==, 256);
    CHECK_INT(c.limits.max_traits_bytes, ==, 32768);
    CHECK_INT(c.limits.max_dedupe_ids, ==, 4000000);
    CHECK_INT(sl_trig_rule_count(&c), ==, 4);
    sl_buf_t rules = {0};
    CHECK_INT(sl_trig_rules_print(&c, &rules), ==, 0);
    CHECK_STR(rules.data,
              "[{\"name\":\"cart\",\"type\":\"abandoned_cart\",\"delay\":\"1h\",\"start_events\":[\"Product Added\","
              "\"Cart Viewed\",\"Checkout Started\"],\"cancel_event\":\"Order Completed\",\"remove_event\":"
              "\"Product Removed\",\"where\":null,\"if\":null,\"max_per_profile_per_day\":0,\"pressure\":true,\"requires_consent\":null},"
              "{\"name\":\"pricing\",\"type\":\"page_visit\",\"url\":\"/pricing*\",\"min_count\":2,\"within\":\"7d\","
              "\"where\":null,\"if\":null,\"max_per_profile_per_day\":0,\"pressure\":true,\"requires_consent\":null},"
              "{\"name\":\"dormant\",\"type\":\"inactivity\",\"after\":\"30d\",\"event\":null,\"where\":null,\"if\":null,"
              "\"max_per_profile_per_day\":0,\"pressure\":true,\"requires_consent\":null},"
              "{\"name\":\"plan\",\"type\":\"trait_change\",\"trait\":\"plan\",\"on_first_set\":false,"
              "\"where\":null,\"if\":null,\"max_per_profile_per_day\":0,\"pressure\":true,\"requires_consent\":null}]");
    sl_buf_free(&rules);
    CHECK_INT(c.pressure_max_per_profile_per_day, ==, 3);
    CHECK_INT(c.n_webhooks, ==, 1);
    CHECK_INT(c.limits.max_request_bytes, ==, 512000);
    CHECK_INT(c.limits.max_connections_per_ip, ==, 1280);
    CHECK_INT(c.limits.header_timeout_ms, ==, 10000);
    CHECK_INT(c.limits.stage_commit_interval_ms, ==, 50);
    CHECK_INT(c.limits.min_body_rate, ==, 4096);
    CHECK_INT(c.limits.max_buffered_bytes, ==, 64 << 20);
    CHECK_STR(c.unsubscribe_event, "Unsubscribed");
    CHECK_STR(c.subscribe_event, "Subscribed");
    CHECK_INT(c.anonymous_retention_ms, ==, 0);
    CHECK_INT(c.sources[0].retention_ms, ==, 0);
    CHECK_INT(sl_config_check_exposure(&c, err, sizeof(err)), ==, 0);
    CHECK_INT(sl_config_check_secrets(&c, err, sizeof(err)), ==, 0);
    sl_config_free(&c);
}

TEST(config_errors_table)
{
    static const struct { const char *json; const char *want; } cases[] = {
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"lisen\":\"x\"}", "unknown key \"lisen\""},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"max_body\":1}}", "unknown key \"limits.max_body\""},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\",\"x\":1}],\"admin_token\":\"t\"}", "unknown key \"sources[0].x\""},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"durability\":\"fast\"}", "durability must be"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"triggers\":[{\"name\":\"c\",\"type\":\"abandoned_cart\",\"delay\":\"1 hour\"}]}", "triggers[0].delay must be a duration"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"triggers\":[{\"name\":\"c\",\"type\":\"nope\"}]}", "triggers[0].type \"nope\""},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}]}", "admin_token is required"},
        {"{\"admin_token\":\"t\"}", "sources is required"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"listen\":\"nohost\"}", "listen \"nohost\""},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"webhooks\":[{\"url\":\"https://x\",\"secret\":\"s\",\"rules\":[\"zz\"]}]}", "not a trigger rule or an audience"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"map_size\":\"lots\"}", "map_size must be"},
        {"{\"sources\": [", "not valid JSON"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"role\":\"edge\"}", "needs a \"nats\" section"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"role\":\"hub\"}", "role must be"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"role\":\"core\",\"nats\":{\"url\":\"http://x\"}}", "nats.url must start"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"nats\":{\"replicas\":9}}", "nats.replicas"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"rate_per_ip\":-1}}", "limits.rate_per_ip"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\",\"trusted\":\"yes\"}],\"admin_token\":\"t\"}", "sources[0].trusted must be true or false"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"},{\"name\":\"a\",\"write_key\":\"k2\"}],\"admin_token\":\"t\"}", "sources[1].name repeats"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"max_traits_per_person\":0}}", "limits.max_traits_per_person"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"max_dedupe_ids\":10}}", "limits.max_dedupe_ids"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"max_buffered_bytes\":1000}}", "limits.max_request_bytes must not exceed limits.max_buffered_bytes"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"max_connections_per_ip\":0}}", "limits.max_connections_per_ip must be between 1"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"header_timeout\":\"500ms\"}}", "limits.header_timeout must be between 1s and 1h"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"header_timeout\":\"2h\"}}", "limits.header_timeout must be between 1s and 1h"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"header_timeout\":10}}", "limits.header_timeout must be a duration"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"stage_commit_interval\":\"11s\"}}", "limits.stage_commit_interval must be at most 10s"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"stage_commit_interval\":50}}", "limits.stage_commit_interval must be a duration"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"ingest_loops\":1e30}", "ingest_loops must be a whole number from 1 to 16"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"ingest_loops\":-1e30}", "ingest_loops must be a whole number from 1 to 16"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"min_body_rate\":2000000000}}", "limits.min_body_rate must be between 0 and 1000000000"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"limits\":{\"min_body_rate\":-1}}", "limits.min_body_rate must be"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\",\"retention\":\"30s\"}],\"admin_token\":\"t\"}", "sources[0].retention must be at least 1m"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"identity\":{\"traits\":[\"email\",\"email\"]}}", "identity.traits[1] repeats identity.traits[0]"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"identity\":{\"traits\":[\"user_id\"]}}", "is the name of an identifier kind"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"webhooks\":[{\"url\":\"https://x\",\"secret\":\"s\",\"profile_erased\":1}]}", "webhooks[0].profile_erased must be true or false"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"anonymous_retention\":\"13 months\"}", "anonymous_retention must be a duration"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"subscribe_event\":\"Unsubscribed\"}", "unsubscribe_event and subscribe_event must differ"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"triggers\":[{\"name\":\"c\",\"type\":\"inactivity\",\"after\":\"1d\",\"requires_consent\":\"\"}]}", "triggers[0].requires_consent must be a non-empty string"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"triggers\":[{\"name\":\"c\",\"type\":\"inactivity\",\"after\":\"1d\",\"pressure\":0}]}", "triggers[0].pressure must be true or false"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"nats\":{\"edge_keep\":\"soon\"}}", "nats.edge_keep must be a duration"},
        {"{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"triggers\":[{\"name\":\"c\",\"type\":\"trait_change\",\"trait\":\"plan\",\"on_first_set\":\"no\"}]}", "triggers[0].on_first_set must be true or false"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        sl_config_t c;
        char err[256] = "";
        CHECK_INT(sl_config_parse(&c, cases[i].json, strlen(cases[i].json), err, sizeof(err)), ==, SL_EINVAL);
        if (strstr(err, cases[i].want) == NULL) {
            fprintf(stderr, "  case %zu: error \"%s\" does not contain \"%s\"\n", i, err, cases[i].want);
            test_failures++;
        }
        sl_config_free(&c);
    }
}

/* The bounds of the connection timeouts and the body rate: the limits' edges are accepted. */
TEST(config_header_timeout_and_body_rate)
{
    static const char json[] = "{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\","
                               "\"limits\":{\"header_timeout\":\"1s\",\"min_body_rate\":0}}";
    sl_config_t c;
    char err[256] = "";
    int rc = sl_config_parse(&c, json, sizeof(json) - 1, err, sizeof(err));
    CHECK_INT(rc, ==, 0);
    if (rc) fprintf(stderr, "  error: %s\n", err);
    CHECK_INT(c.limits.header_timeout_ms, ==, 1000);
    CHECK_INT(c.limits.min_body_rate, ==, 0);
    sl_config_free(&c);
    static const char json2[] = "{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\","
                                "\"limits\":{\"header_timeout\":\"1h\",\"min_body_rate\":\"8KB\"}}";
    rc = sl_config_parse(&c, json2, sizeof(json2) - 1, err, sizeof(err));
    CHECK_INT(rc, ==, 0);
    CHECK_INT(c.limits.header_timeout_ms, ==, 3600000);
    CHECK_INT(c.limits.min_body_rate, ==, 8192);
    sl_config_free(&c);
}

TEST(config_demo_and_exposure)
{
    sl_config_t c;
    char err[256] = "";
    CHECK_INT(sl_config_demo(&c), ==, 0);
    CHECK(c.is_demo);
    CHECK_STR(c.listen, "127.0.0.1:8080");
    CHECK_STR(c.data_dir, "./sillage-data");
    CHECK_STR(c.sources[0].write_key, "demo");
    CHECK_STR(c.admin_token, "demo-admin");
    CHECK_INT(sl_trig_rule_count(&c), ==, 4);
    CHECK_INT(sl_config_check_exposure(&c, err, sizeof(err)), ==, 0);
    free(c.listen);
    c.listen = strdup("0.0.0.0:8080");
    CHECK_INT(sl_config_check_exposure(&c, err, sizeof(err)), ==, SL_EINVAL);
    CHECK(strstr(err, "demo") != NULL);
    sl_config_free(&c);
    static const char j[] = "{\"listen\":\"0.0.0.0:1\",\"sources\":[{\"name\":\"a\",\"write_key\":\"demo\"}],\"admin_token\":\"x\"}";
    CHECK_INT(sl_config_parse(&c, j, sizeof(j) - 1, err, sizeof(err)), ==, 0);
    CHECK_INT(sl_config_check_exposure(&c, err, sizeof(err)), ==, SL_EINVAL);
    sl_config_free(&c);
}

TEST(config_admin_token_checks)
{
    static const struct { const char *token; const char *want; } cases[] = {
        {"a", "admin_token has 1 characters; it must have at least 16"},
        {"adm_secret_123", "admin_token has 14 characters; it must have at least 16"},
        {"0123456789abcde", "admin_token has 15 characters"},
        {"wk_public_key_0123", "admin_token is the same as sources[1].write_key (source \"web\")"},
        {"0123456789abcdef", NULL},
        {"a-long-random-admin-token", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        char json[512], err[256] = "";
        snprintf(json, sizeof(json),
                 "{\"sources\":[{\"name\":\"api\",\"write_key\":\"wk_server\"},"
                 "{\"name\":\"web\",\"write_key\":\"wk_public_key_0123\"}],\"admin_token\":\"%s\"}", cases[i].token);
        sl_config_t c;
        CHECK_INT(sl_config_parse(&c, json, strlen(json), err, sizeof(err)), ==, 0);
        int rc = sl_config_check_secrets(&c, err, sizeof(err));
        if (cases[i].want == NULL) {
            CHECK_INT(rc, ==, 0);
        } else {
            CHECK_INT(rc, ==, SL_EINVAL);
            if (strstr(err, cases[i].want) == NULL) {
                fprintf(stderr, "  case %zu: error \"%s\" does not contain \"%s\"\n", i, err, cases[i].want);
                test_failures++;
            }
            CHECK(strstr(err, cases[i].token) == NULL || strlen(cases[i].token) < 2); /* never the secret itself */
        }
        sl_config_free(&c);
    }
    sl_config_t d;
    char err[256];
    CHECK_INT(sl_config_demo(&d), ==, 0);
    CHECK_INT(sl_config_check_secrets(&d, err, sizeof(err)), ==, 0); /* the demo's "demo-admin": loopback only */
    sl_config_free(&d);
}

TEST(config_file_mode_warning)
{
    char dir[] = "/tmp/sl-cfgmode-XXXXXX", path[64], warn[512];
    REQUIRE(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/c.json", dir);
    static const char j[] = "{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"0123456789abcdef\"}";
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) fputs(j, f), fclose(f);
    sl_config_t c;
    CHECK_INT(sl_config_load(&c, path, warn, sizeof(warn)), ==, 0);
    static const struct { mode_t mode; int warned; } cases[] = {{0644, 1}, {0604, 1}, {0640, 0}, {0600, 0}, {0660, 0}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        warn[0] = '\0';
        chmod(path, cases[i].mode);
        CHECK_INT(sl_config_check_file_mode(&c, path, warn, sizeof(warn)), ==, cases[i].warned);
        if (cases[i].warned) {
            char want[32];
            snprintf(want, sizeof(want), "(mode %03o)", (unsigned)cases[i].mode);
            CHECK(strstr(warn, path) != NULL && strstr(warn, want) != NULL && strstr(warn, "every local user") != NULL);
        }
    }
    CHECK_INT(sl_config_check_file_mode(&c, NULL, warn, sizeof(warn)), ==, 0);
    sl_config_free(&c);
    unlink(path);
    rmdir(dir);
}

TEST(junk_identifiers)
{
    sl_config_t c;
    sl_config_demo(&c);
    static const char *junk[] = {"", "  ", "null", "NULL", "undefined", "anonymous", "0", "guest", " Guest ",
                                 "\xE2\x80\x8Bnull", "nu\xE2\x80\x8Bll", "\xEF\xBB\xBFundefined\xC2\xA0",
                                 "\xE2\x80\x8B", "\xE3\x80\x80guest", "null\xC2\xAD", "\xE3\x85\xA4",
                                 "\xE1\x85\x9F", "\xE1\xA0\x8E", "\xF3\xA0\x80\xA0null"};
    static const char *good[] = {"u_123", "alice@example.com", "1234", "f47ac10b-58cc-4372-a567-0e02b2c3d479"};
    for (size_t i = 0; i < sizeof(junk) / sizeof(*junk); i++)
        CHECK_INT(sl_ident_is_junk(junk[i], strlen(junk[i]), c.junk_ids, c.n_junk_ids), ==, 1);
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++)
        CHECK_INT(sl_ident_is_junk(good[i], strlen(good[i]), c.junk_ids, c.n_junk_ids), ==, 0);
    /* trait values: trimmed of invisible code points, lower-cased beyond ASCII */
    sl_arena_t a;
    sl_arena_init(&a);
    static const struct { const char *in, *out; } fold[] = {
        {" \xE2\x80\x8B\xC3\x89lodie@Exemple.FR\xC2\xA0", "\xC3\xA9lodie@exemple.fr"}, /* Élodie -> élodie */
        {"\xC3\xA9lodie@exemple.fr", "\xC3\xA9lodie@exemple.fr"},
        {"\xCE\xA3\xCE\x91@x.gr", "\xCF\x83\xCE\xB1@x.gr"},                             /* ΣΑ -> σα */
        {"\xC8\xBA", "\xE2\xB1\xA5"},                                                  /* Ⱥ -> ⱥ grows */
        {"plain@example.com", "plain@example.com"},
        {"voil\xC3\xA0", "voil\xC3\xA0"},   /* a trailing "à" (C3 A0): not a no-break space */
        {"\xC3\x85", "\xC3\xA5"},            /* "Å" (C3 85): not U+0085 */
    };
    for (size_t i = 0; i < sizeof(fold) / sizeof(*fold); i++) {
        const char *v = fold[i].in;
        size_t n = sl_ident_trim(&v, strlen(v));
        CHECK_STR(sl_ident_lower(v, n, &a), fold[i].out);
    }
    sl_arena_free(&a);
    sl_config_free(&c);
}

/* An environment's map grows by doubling up to its bound, then says full. */
TEST(lmdb_grow)
{
    char dir[] = "/tmp/sl-grow-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    MDB_env *env = NULL;
    uint64_t size = 1 << 20, max = 3 << 20;
    REQUIRE(mdb_env_create(&env) == 0);
    REQUIRE(mdb_env_set_mapsize(env, size) == 0 && mdb_env_open(env, dir, MDB_NOSYNC, 0640) == 0);
    uv_rwlock_t lock;
    uv_rwlock_init(&lock);
    char val[4096];
    memset(val, 'x', sizeof(val));
    int grown = 0, rc = 0;
    for (uint32_t k = 0; rc == 0 && k < 10000; k++) { /* 40 MB wanted, 3 MB allowed */
        MDB_txn *txn;
        MDB_dbi dbi;
        REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0);
        MDB_val key = {sizeof(k), &k}, v = {sizeof(val), val};
        rc = mdb_dbi_open(txn, NULL, 0, &dbi);
        if (rc == 0) rc = mdb_put(txn, dbi, &key, &v, 0);
        if (rc == 0) rc = mdb_txn_commit(txn);
        else mdb_txn_abort(txn);
        if (rc == MDB_MAP_FULL) {
            rc = sl_lmdb_grow(env, &lock, &size, max, "test");
            if (rc == 0) grown++;
        }
    }
    CHECK_INT(rc, ==, MDB_MAP_FULL);
    CHECK_INT(grown, ==, 2); /* 1 -> 2 -> 3 MB, capped */
    CHECK_INT(size, ==, max);
    MDB_envinfo info;
    mdb_env_info(env, &info);
    CHECK_INT(info.me_mapsize, ==, max);
    uv_rwlock_destroy(&lock);
    mdb_env_close(env);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), ==, 0);
}

/* The tree-less reader (sl_jroot, sl_jget...): members found by decoded name,
 * the first of a name; strings decoded; numbers by JSON's grammar; text that
 * is not well-formed is absent, never read past. */
TEST(jread_table)
{
    sl_arena_t a;
    sl_arena_init(&a);
    const char *doc = " {\"type\":\"track\",\"n\":-1.5e2,\"t\":true,\"z\":null,\"o\":{\"a\":[1,{\"b\":\"c\"}],\"\\u0041\":\"A\"},"
                      "\"s\":\"x\\\"y\\u00e9\\ud83d\\ude00\",\"type\":\"dup\",\"e\":{},\"arr\":[]} ";
    sl_jval_t r = sl_jroot(doc, strlen(doc));
    CHECK_INT(sl_jtype(r), ==, SL_JOBJ);
    CHECK(r.p == strchr(doc, '{') && r.p[r.n - 1] == '}');
    size_t n;
    CHECK_STR(sl_jstr(sl_jget(r, "type"), &a, &n), "track"); /* the first of a name */
    CHECK(sl_jstr_eq(sl_jget(r, "type"), "track", 5));
    CHECK(!sl_jstr_eq(sl_jget(r, "type"), "trac", 4));
    double d = 0;
    CHECK_INT(sl_jnum(sl_jget(r, "n"), &d), ==, 1);
    CHECK(d == -150);
    CHECK_INT(sl_jtype(sl_jget(r, "t")), ==, SL_JTRUE);
    CHECK_INT(sl_jtype(sl_jget(r, "z")), ==, SL_JNULL);
    CHECK_INT(sl_jtype(sl_jget(r, "missing")), ==, SL_JNONE);
    sl_jval_t o = sl_jget(r, "o");
    CHECK_STR(sl_jstr(sl_jget(o, "A"), &a, NULL), "A"); /* an escaped name */
    sl_jiter_t it;
    sl_jval_t k, v;
    sl_jiter(sl_jget(o, "a"), &it);
    CHECK_INT(sl_jnext(&it, &k, &v), ==, 1);
    CHECK(sl_jnum(v, &d) && d == 1);
    CHECK_INT(sl_jnext(&it, &k, &v), ==, 1);
    CHECK_STR(sl_jstr(sl_jget(v, "b"), &a, NULL), "c");
    CHECK_INT(sl_jnext(&it, &k, &v), ==, 0);
    CHECK_STR(sl_jstr(sl_jget(r, "s"), &a, &n), "x\"y\xc3\xa9\xf0\x9f\x98\x80");
    CHECK_INT(n, ==, 9);
    sl_jiter(sl_jget(r, "e"), &it);
    CHECK_INT(sl_jnext(&it, &k, &v), ==, 0);
    sl_jiter(sl_jget(r, "arr"), &it);
    CHECK_INT(sl_jnext(&it, &k, &v), ==, 0);
    /* numbers: JSON's grammar only */
    static const char *const bad_nums[] = {"01", "1.", ".5", "+1", "1e", "-", "0x10", "1e+", "--1"};
    for (size_t i = 0; i < sizeof(bad_nums) / sizeof(bad_nums[0]); i++)
        CHECK_INT(sl_jnum((sl_jval_t){bad_nums[i], strlen(bad_nums[i])}, &d), ==, 0);
    CHECK(sl_jnum((sl_jval_t){"0.5e-3", 6}, &d) && d == 0.5e-3);
    /* not well-formed: absent as a whole, or from where it goes wrong */
    static const char *const bad[] = {"{", "{\"a\":}", "{\"a\" 1}", "{\"a\":1,}", "[1,]", "\"\\x\"", "\"\\ud800\"",
                                      "\"\\udc00x\"", "{\"a\":1}}", "tru", "{\"a\":\"\x01\"}", "[1 2]", "", "  "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) CHECK_INT(sl_jroot(bad[i], strlen(bad[i])).n, ==, 0);
    /* a lone surrogate is refused when decoded, also inside a span taken as is */
    CHECK(sl_jstr((sl_jval_t){"\"\\ud800\"", 8}, &a, NULL) == NULL);
    /* a span cut short finds nothing past its end */
    const char *cut = "{\"a\":1,\"b\":2}";
    CHECK_INT(sl_jtype(sl_jget((sl_jval_t){cut, 8}, "b")), ==, SL_JNONE);
    CHECK_INT(sl_jtype(sl_jget((sl_jval_t){cut, 8}, "a")), ==, SL_JNUM);
    /* depth: SL_JSON_MAX_DEPTH levels read, one more does not */
    char deep[2 * SL_JSON_MAX_DEPTH + 2];
    memset(deep, '[', SL_JSON_MAX_DEPTH + 1);
    memset(deep + SL_JSON_MAX_DEPTH + 1, ']', SL_JSON_MAX_DEPTH + 1);
    CHECK_INT(sl_jroot(deep, sizeof(deep)).n, ==, 0);
    CHECK_INT(sl_jroot(deep + 1, sizeof(deep) - 2).n, ==, sizeof(deep) - 2);
    /* an index: the first SL_JINDEX_MAX members by name, the rest looked up in the text */
    sl_buf_t big = {0};
    sl_buf_appends(&big, "{");
    for (int i = 0; i < 40; i++) sl_buf_printf(&big, "%s\"k%d\":%d", i ? "," : "", i, i);
    sl_buf_appends(&big, ",\"k1\":-1}");
    sl_jindex_t ix;
    sl_jroot_index(big.data, big.len, &ix, NULL, NULL);
    CHECK_INT(ix.n, ==, SL_JINDEX_MAX);
    CHECK(sl_jnum(sl_jindex_get(&ix, "k1"), &d) && d == 1); /* the first of a name */
    CHECK(sl_jnum(sl_jindex_get(&ix, "k31"), &d) && d == 31);
    CHECK(sl_jnum(sl_jindex_get(&ix, "k39"), &d) && d == 39); /* past the index */
    CHECK_INT(sl_jtype(sl_jindex_get(&ix, "k40")), ==, SL_JNONE);
    sl_jroot_index("[1]", 3, &ix, NULL, NULL);
    CHECK_INT(ix.n, ==, 0);
    CHECK_INT(sl_jtype(sl_jindex_get(&ix, "k1")), ==, SL_JNONE);
    sl_buf_free(&big);
    sl_arena_free(&a);
}
