/* test_triggers.c - the rule states' records (triggers/internal.h): the
 * cart's, the page rule's and the inactivity rule's round trips, the layouts
 * written before the header, and records cut short or lying about their
 * lengths; the page rule's globs; the webhooks' backoff and signature. */
#include "test.h"
#include "internal.h"
#include "sl_webhooks.h"

#include <math.h>
#include <stdlib.h>

/* An exact-size heap copy, so that AddressSanitizer and valgrind see any
 * read past the record's end. */
static MDB_val exact(const void *p, size_t n)
{
    void *d = malloc(n ? n : 1);
    if (n) memcpy(d, p, n);
    return (MDB_val){n, d};
}

static int decode_n(const void *p, size_t n, trig_cart_t *c)
{
    MDB_val v = exact(p, n);
    int rc = trig_cart_decode(&v, c);
    free(v.mv_data);
    return rc;
}

static void update(trig_cart_t *c, const char *props, int start, uint64_t *ignored)
{
    sl_jval_t x = sl_jroot(props, strlen(props));
    CHECK(sl_jtype(x) == SL_JOBJ);
    sl_arena_t a;
    sl_arena_init(&a);
    CHECK_INT(trig_cart_update(c, x, start, ignored, &a), ==, 0);
    sl_arena_free(&a);
}

/* c's products as the trigger prints them; the caller frees. */
static char *products(const trig_cart_t *c)
{
    sl_buf_t b = {0};
    CHECK_INT(trig_cart_products_json(c, &b), ==, 0);
    return b.data;
}

/* what cJSON prints for the same JSON: the old layout's printer */
static void check_as_cjson(const char *json)
{
    cJSON *x = cJSON_Parse(json);
    char *again = x ? cJSON_PrintUnformatted(x) : NULL;
    CHECK_STR(json, again);
    cJSON_free(again);
    cJSON_Delete(x);
}

TEST(trigger_cart_record_roundtrip)
{
    trig_cart_t c, d;
    uint64_t ignored = 0;
    trig_cart_init(&c);
    c.f.started_ms = 1764000000123;
    c.f.last_ms = 1764000060000;
    c.f.due_ms = 1764003660000;
    c.f.timer_ms = 1764003660000;
    update(&c, "{\"product_id\":\"sku-1\",\"name\":\"Shirt \\\"blue\\\"\\n\",\"price\":19.99,\"quantity\":2,"
               "\"currency\":\"EUR\"}", 1, &ignored);
    update(&c, "{\"id\":12345,\"name\":\"caf\\u00e9\",\"price\":0.1}", 1, &ignored);
    update(&c, "{\"sku\":\"sku-1\",\"quantity\":3,\"price\":1}", 1, &ignored); /* the same product: 2 + 3 */
    update(&c, "{\"product_id\":\"big\",\"price\":1e300,\"quantity\":-4}", 1, &ignored);
    update(&c, "{\"product_id\":\"odd\",\"price\":-0,\"quantity\":0.30000000000000004}", 1, &ignored);
    update(&c, "{\"product_id\":\"\",\"price\":3e9,\"quantity\":1.5e-7}", 1, &ignored);
    update(&c, "{\"name\":\"no id\",\"price\":1}", 1, &ignored);
    CHECK_INT(ignored, ==, 1); /* 1e300 */
    CHECK_INT(c.n, ==, 5);
    CHECK_STR(c.f.currency, "EUR");
    static const char want[] =
        "[{\"product_id\":\"sku-1\",\"name\":\"Shirt \\\"blue\\\"\\n\",\"price\":19.99,\"quantity\":5},"
        "{\"product_id\":\"12345\",\"name\":\"caf\xc3\xa9\",\"price\":0.1,\"quantity\":1},"
        "{\"product_id\":\"big\",\"quantity\":1},"
        "{\"product_id\":\"odd\",\"price\":-0,\"quantity\":0.3},"
        "{\"product_id\":\"\",\"price\":3000000000,\"quantity\":1.5e-07}]";
    char *p = products(&c);
    CHECK_STR(p, want);
    check_as_cjson(p);
    sl_buf_t b = {0}, b2 = {0};
    REQUIRE(trig_cart_encode(&c, &b) == 0);
    CHECK_INT(trig_state_is_rec(&(MDB_val){b.len, b.data}), ==, 1);
    CHECK_INT(decode_n(b.data, b.len, &d), ==, 0);
    CHECK(memcmp(&d.f, &c.f, sizeof(c.f)) == 0);
    CHECK_INT(d.n, ==, c.n);
    char *q = products(&d);
    CHECK_STR(q, want);
    REQUIRE(trig_cart_encode(&d, &b2) == 0);
    CHECK(b2.len == b.len && memcmp(b2.data, b.data, b.len) == 0);
    free(q);
    /* the remove event takes one out; a products array replaces them all */
    update(&d, "{\"product_id\":\"big\"}", 0, &ignored);
    update(&d, "{\"product_id\":\"absent\"}", 0, &ignored);
    CHECK_INT(d.n, ==, 4);
    update(&d, "{\"products\":[{\"product_id\":\"a\",\"price\":2},{\"sku\":\"b\"},{\"x\":1},{\"product_id\":\"a\"}],"
               "\"currency\":\"USD\"}", 1, &ignored);
    q = products(&d);
    CHECK_STR(q, "[{\"product_id\":\"a\",\"price\":2,\"quantity\":2},{\"product_id\":\"b\",\"quantity\":1}]");
    CHECK_STR(d.f.currency, "USD");
    free(q);
    free(p);
    sl_buf_free(&b);
    sl_buf_free(&b2);
    trig_cart_free(&c);
    trig_cart_free(&d);
}

/* Every string an event brings in is bounded; so is the cart. */
TEST(trigger_cart_record_bounds)
{
    trig_cart_t c;
    uint64_t ignored = 0;
    trig_cart_init(&c);
    char props[2200];
    for (int i = 0; i < 60; i++) {
        snprintf(props, sizeof(props), "{\"product_id\":\"p%d\",\"price\":1}", i);
        update(&c, props, 1, &ignored);
    }
    CHECK_INT(c.n, ==, TRIG_CART_MAX_PRODUCTS);
    /* a product_id past 256 bytes names no product; 256 bytes do */
    trig_cart_free(&c);
    trig_cart_init(&c);
    char id[TRIG_CART_ID_MAX + 2];
    memset(id, 'i', sizeof(id) - 1);
    id[sizeof(id) - 1] = 0;
    snprintf(props, sizeof(props), "{\"product_id\":\"%s\"}", id);
    update(&c, props, 1, &ignored);
    CHECK_INT(c.n, ==, 0);
    id[TRIG_CART_ID_MAX] = 0;
    snprintf(props, sizeof(props), "{\"product_id\":\"%s\"}", id);
    update(&c, props, 1, &ignored);
    CHECK_INT(c.n, ==, 1);
    CHECK_INT(c.items[0].p.id_len, ==, TRIG_CART_ID_MAX);
    /* a name past 1,024 bytes is cut before the character it would split */
    char name[TRIG_CART_NAME_MAX + 8];
    memset(name, 'n', TRIG_CART_NAME_MAX - 1);
    memcpy(name + TRIG_CART_NAME_MAX - 1, "\xc3\xa9xyz", 6); /* é at bytes 1023-1024 */
    snprintf(props, sizeof(props), "{\"product_id\":\"named\",\"name\":\"%s\",\"currency\":\"EURO-LONG\"}", name);
    update(&c, props, 1, &ignored);
    REQUIRE(c.n == 2);
    CHECK_INT(c.items[1].p.name_len, ==, TRIG_CART_NAME_MAX - 1);
    CHECK_STR(c.f.currency, "EURO-LO"); /* 7 bytes, as before */
    /* a numeric id is printed as before, in at most 31 bytes */
    update(&c, "{\"product_id\":1e300}", 1, &ignored);
    REQUIRE(c.n == 3);
    CHECK_INT(c.items[2].p.id_len, ==, 31);
    CHECK_INT(ignored, ==, 0);
    trig_cart_free(&c);
}

/* The old layout's bytes for products (the JSON it kept). */
static void old_cart(sl_buf_t *b, int64_t started_ms, uint32_t waiting, const char *json)
{
    trig_cart_v0_t o = {.started_ms = started_ms, .last_ms = started_ms + 1000, .due_ms = started_ms + 3601000,
                    .timer_ms = started_ms + 3601000, .waiting = waiting, .n_products = 2, .value = 45,
                    .currency = "EUR", .products_len = (uint32_t)strlen(json)};
    b->len = 0;
    sl_buf_append(b, &o, sizeof(o));
    sl_buf_appends(b, json);
}

TEST(trigger_cart_old_layout_loads)
{
    /* what the rule printed with cJSON, kept as it was */
    static const char json[] =
        "[{\"product_id\":\"sku-1\",\"name\":\"Shirt\",\"price\":20,\"quantity\":2},"
        "{\"product_id\":\"sku-2\",\"name\":\"\\\"Socks\\\"\\u0001\",\"price\":0.1,\"quantity\":1.5},"
        "{\"product_id\":\"sku-3\",\"quantity\":1}]";
    check_as_cjson(json);
    /* a start before 1970 (top byte 0xFF), one whose low byte is the magic */
    const int64_t starts[] = {1764000000000, -86400000, (int64_t)0x0000019b000000A7LL};
    sl_buf_t b = {0}, nb = {0};
    for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
        old_cart(&b, starts[i], 1, json);
        CHECK_INT(trig_state_is_rec(&(MDB_val){b.len, b.data}), ==, 0);
        trig_cart_t c, d;
        CHECK_INT(decode_n(b.data, b.len, &c), ==, 0);
        CHECK_INT(c.f.started_ms, ==, starts[i]);
        CHECK_INT(c.f.last_ms, ==, starts[i] + 1000);
        CHECK_INT(c.f.due_ms, ==, starts[i] + 3601000);
        CHECK_INT(c.f.timer_ms, ==, starts[i] + 3601000);
        CHECK_INT(c.f.waiting, ==, 1);
        CHECK(c.f.value == 45);
        CHECK_STR(c.f.currency, "EUR");
        CHECK_INT(c.n, ==, 3);
        char *p = products(&c);
        CHECK_STR(p, json); /* byte for byte */
        free(p);
        /* written back in the new layout, it reads the same */
        REQUIRE(trig_cart_encode(&c, &nb) == 0);
        CHECK_INT(trig_state_is_rec(&(MDB_val){nb.len, nb.data}), ==, 1);
        CHECK_INT(decode_n(nb.data, nb.len, &d), ==, 0);
        p = products(&d);
        CHECK_STR(p, json);
        free(p);
        trig_cart_free(&c);
        trig_cart_free(&d);
    }
    /* what the old layout cannot be: a length that does not add up, not an
     * array, a product without its id */
    static const char *const bad[] = {"{}", "[{\"name\":\"x\"}]", "[1]", "[", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        trig_cart_t c;
        old_cart(&b, 1764000000000, 0, bad[i]);
        CHECK_INT(decode_n(b.data, b.len, &c), ==, MDB_CORRUPTED);
        trig_cart_free(&c);
    }
    old_cart(&b, 1764000000000, 0, json);
    ((trig_cart_v0_t *)(void *)b.data)->products_len++;
    trig_cart_t c;
    CHECK_INT(decode_n(b.data, b.len, &c), ==, MDB_CORRUPTED);
    trig_cart_free(&c);
    sl_buf_free(&b);
    sl_buf_free(&nb);
}

/* Changes byte at of rec (a copy) with set, and expects MDB_CORRUPTED. */
static void corrupt_at(const sl_buf_t *rec, size_t at, const void *set, size_t n, int line)
{
    unsigned char *d = malloc(rec->len);
    memcpy(d, rec->data, rec->len);
    memcpy(d + at, set, n);
    trig_cart_t c;
    int rc = decode_n(d, rec->len, &c);
    if (rc != MDB_CORRUPTED) {
        fprintf(stderr, "  %s:%d: byte %zu changed: %d, not MDB_CORRUPTED\n", __FILE__, line, at, rc);
        test_failures++;
    }
    trig_cart_free(&c);
    free(d);
}

TEST(trigger_cart_record_corrupt)
{
    trig_cart_t c;
    uint64_t ignored = 0;
    trig_cart_init(&c);
    c.f.started_ms = 1764000000000;
    update(&c, "{\"product_id\":\"sku-1\",\"name\":\"Shirt\",\"price\":20,\"currency\":\"EUR\"}", 1, &ignored);
    update(&c, "{\"product_id\":\"sku-22\",\"price\":5,\"quantity\":3}", 1, &ignored);
    sl_buf_t rec = {0}, old = {0};
    REQUIRE(trig_cart_encode(&c, &rec) == 0);
    /* each length cut short */
    for (size_t n = 0; n < rec.len; n++) {
        trig_cart_t d;
        int rc = decode_n(rec.data, n, &d);
        if (rc != MDB_CORRUPTED) {
            fprintf(stderr, "  %s:%d: cut to %zu of %zu bytes: %d\n", __FILE__, __LINE__, n, rec.len, rc);
            test_failures++;
        }
        trig_cart_free(&d);
    }
    /* and the old layout's */
    old_cart(&old, 1764000000000, 0, "[{\"product_id\":\"a\",\"quantity\":1}]");
    for (size_t n = 0; n < old.len; n++) {
        trig_cart_t d;
        CHECK_INT(decode_n(old.data, n, &d), ==, MDB_CORRUPTED);
        trig_cart_free(&d);
    }
    /* a byte too many */
    sl_buf_append(&rec, "", 1);
    trig_cart_t d;
    CHECK_INT(decode_n(rec.data, rec.len, &d), ==, MDB_CORRUPTED);
    trig_cart_free(&d);
    rec.len--;
    /* header: another kind, another version, more or fewer products than there are, past the bound */
    const size_t hdr = sizeof(trig_state_hdr_t), fix = sizeof(trig_cart_fix_t), prod = sizeof(trig_cart_prod_t);
    const uint8_t page = TRIG_STATE_PAGE, v2 = 2;
    const uint16_t n3 = 3, n1 = 1, n51 = TRIG_CART_MAX_PRODUCTS + 1, big = 0xFFFF;
    corrupt_at(&rec, 0, &page, 1, __LINE__);
    corrupt_at(&rec, 1, &v2, 1, __LINE__);
    corrupt_at(&rec, 2, &n3, 2, __LINE__);
    corrupt_at(&rec, 2, &n1, 2, __LINE__);
    corrupt_at(&rec, 2, &n51, 2, __LINE__);
    /* fixed part: a currency without its NUL, waiting neither 0 nor 1 */
    corrupt_at(&rec, hdr + offsetof(trig_cart_fix_t, currency), "ABCDEFGH", 8, __LINE__);
    const uint32_t two = 2;
    corrupt_at(&rec, hdr + offsetof(trig_cart_fix_t, waiting), &two, 4, __LINE__);
    /* first product: lengths past the record, unknown flags, a name without its flag, amounts not finite */
    const size_t p0 = hdr + fix;
    corrupt_at(&rec, p0 + offsetof(trig_cart_prod_t, id_len), &big, 2, __LINE__);
    corrupt_at(&rec, p0 + offsetof(trig_cart_prod_t, name_len), &big, 2, __LINE__);
    corrupt_at(&rec, p0 + offsetof(trig_cart_prod_t, id_len), &n51, 2, __LINE__);
    const uint8_t flags4 = 4, flags1 = TRIG_CART_PRICE;
    corrupt_at(&rec, p0 + offsetof(trig_cart_prod_t, flags), &flags4, 1, __LINE__);
    corrupt_at(&rec, p0 + offsetof(trig_cart_prod_t, flags), &flags1, 1, __LINE__);
    const double nan_ = NAN, huge = 1e300;
    corrupt_at(&rec, p0 + offsetof(trig_cart_prod_t, price), &nan_, 8, __LINE__);
    corrupt_at(&rec, p0 + offsetof(trig_cart_prod_t, quantity), &huge, 8, __LINE__);
    /* the second product's id length one byte short: a byte is left over */
    const uint16_t short_id = 5;
    corrupt_at(&rec, p0 + prod + 5 + 5 + offsetof(trig_cart_prod_t, id_len), &short_id, 2, __LINE__);
    sl_buf_free(&rec);
    sl_buf_free(&old);
    trig_cart_free(&c);
}

TEST(trigger_page_record)
{
    int64_t ts[TRIG_PAGE_MAX_COUNT], got[TRIG_PAGE_MAX_COUNT];
    size_t n;
    for (int i = 0; i < TRIG_PAGE_MAX_COUNT; i++) ts[i] = 1764000000000 + i;
    sl_buf_t b = {0};
    REQUIRE(trig_page_encode(&b, ts, 3) == 0);
    MDB_val v = exact(b.data, b.len);
    CHECK_INT(trig_page_decode(&v, got, &n), ==, 0);
    CHECK_INT(n, ==, 3);
    CHECK(memcmp(got, ts, 3 * 8) == 0);
    free(v.mv_data);
    /* each length cut short, a byte too many */
    const size_t len = b.len;
    sl_buf_append(&b, "", 1);
    for (size_t k = 0; k <= len + 1; k++) {
        if (k == len) continue; /* the record itself */
        v = exact(b.data, k);
        int rc = trig_page_decode(&v, got, &n);
        if (rc != MDB_CORRUPTED) {
            fprintf(stderr, "  %s:%d: %zu of %zu bytes: %d\n", __FILE__, __LINE__, k, len, rc);
            test_failures++;
        }
        free(v.mv_data);
    }
    /* another kind or version */
    REQUIRE(trig_page_encode(&b, ts, 2) == 0);
    for (int at = 0; at < 2; at++) {
        b.data[at] ^= 0x40;
        v = exact(b.data, b.len);
        CHECK_INT(trig_page_decode(&v, got, &n), ==, MDB_CORRUPTED);
        free(v.mv_data);
        b.data[at] ^= 0x40;
    }
    /* min_count's bound: 999 times at most */
    REQUIRE(trig_page_encode(&b, ts, TRIG_PAGE_MAX_COUNT - 1) == 0);
    v = exact(b.data, b.len);
    CHECK_INT(trig_page_decode(&v, got, &n), ==, 0);
    CHECK_INT(n, ==, TRIG_PAGE_MAX_COUNT - 1);
    free(v.mv_data);
    REQUIRE(trig_page_encode(&b, ts, TRIG_PAGE_MAX_COUNT) == 0);
    v = exact(b.data, b.len);
    CHECK_INT(trig_page_decode(&v, got, &n), ==, MDB_CORRUPTED);
    free(v.mv_data);
    /* the layout before the header: bare times (one whose low byte is the magic) */
    int64_t old[2] = {(int64_t)0x0000019b000000A7LL, 1764000000001};
    v = exact(old, sizeof(old));
    CHECK_INT(trig_page_decode(&v, got, &n), ==, 0);
    CHECK_INT(n, ==, 2);
    CHECK(got[0] == old[0] && got[1] == old[1]);
    free(v.mv_data);
    for (size_t k = 0; k < sizeof(old); k++) {
        if (k == 8) continue; /* one whole time: a record of one */
        v = exact(old, k);
        CHECK_INT(trig_page_decode(&v, got, &n), ==, MDB_CORRUPTED);
        free(v.mv_data);
    }
    v = exact(ts, TRIG_PAGE_MAX_COUNT * 8); /* more than min_count allows */
    CHECK_INT(trig_page_decode(&v, got, &n), ==, MDB_CORRUPTED);
    free(v.mv_data);
    sl_buf_free(&b);
}

/* The inactivity record: its header and fixed part round-trip; both layouts
 * from before the header read; a record cut short, a byte too many, another
 * kind or version is MDB_CORRUPTED. */
TEST(trigger_inactivity_record)
{
    trig_inact_t s = {.timer_ms = 1764000000000, .fired_for_ms = 1763000000000, .last_ms = 1762000000000}, got;
    sl_buf_t b = {0};
    REQUIRE(trig_inact_encode(&b, &s) == 0);
    MDB_val v = exact(b.data, b.len);
    CHECK_INT(trig_inact_decode(&v, &got), ==, 0);
    CHECK(memcmp(&got, &s, sizeof(s)) == 0);
    free(v.mv_data);
    const size_t len = b.len;
    sl_buf_append(&b, "", 1);
    for (size_t k = 0; k <= len + 1; k++) {
        if (k == len) continue;
        v = exact(b.data, k);
        if (trig_inact_decode(&v, &got) != MDB_CORRUPTED) {
            fprintf(stderr, "  %s:%d: %zu of %zu bytes read\n", __FILE__, __LINE__, k, len);
            test_failures++;
        }
        free(v.mv_data);
    }
    for (int at = 0; at < 2; at++) { /* kind, version */
        REQUIRE(trig_inact_encode(&b, &s) == 0);
        b.data[at] ^= 0x40;
        v = exact(b.data, b.len);
        CHECK_INT(trig_inact_decode(&v, &got), ==, MDB_CORRUPTED);
        free(v.mv_data);
    }
    /* before the header: the struct (24 bytes), and before last_ms (16) */
    v = exact((const char *)&s, sizeof(s));
    CHECK_INT(trig_inact_decode(&v, &got), ==, 0);
    CHECK(memcmp(&got, &s, sizeof(s)) == 0);
    free(v.mv_data);
    v = exact((const char *)&s, 16);
    CHECK_INT(trig_inact_decode(&v, &got), ==, 0);
    CHECK_INT(got.timer_ms, ==, s.timer_ms);
    CHECK_INT(got.fired_for_ms, ==, s.fired_for_ms);
    CHECK_INT(got.last_ms, ==, 0);
    free(v.mv_data);
    sl_buf_free(&b);
}

TEST(trigger_glob_table)
{
    static const struct { const char *p, *s; int m; } t[] = {
        {"/pricing*", "/pricing", 1},        {"/pricing*", "/pricing/teams", 1}, {"/pricing*", "/price", 0},
        {"/docs/*", "/docs/", 1},            {"/docs/*", "/docs", 0},            {"*", "", 1},
        {"/a?c", "/abc", 1},                 {"/a?c", "/ac", 0},                 {"/*/x", "/a/b/x", 1},
        {"/*/x", "/a/b/y", 0},               {"**", "/anything", 1},             {"", "", 1},
        {"", "/", 0},                        {"https://shop.example/*", "https://shop.example/p?x=1", 1},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (sl_trig_glob_match(t[i].p, t[i].s) != t[i].m) {
            fprintf(stderr, "  glob \"%s\" vs \"%s\": want %d\n", t[i].p, t[i].s, t[i].m);
            test_failures++;
        }
}

/* Webhook retries: 0.5 s doubling to 5 min, jitter within +-25 %. */
TEST(webhook_backoff)
{
    static const struct { int attempts; int64_t base; } t[] = {{1, 500}, {2, 1000}, {3, 2000}, {10, 256000}, {11, 300000},
                                                                {50, 300000}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        CHECK_INT(sl_webhook_backoff_ms(t[i].attempts, 0), ==, t[i].base * 3 / 4);
        CHECK_INT(sl_webhook_backoff_ms(t[i].attempts, (uint32_t)(t[i].base / 2)), ==, t[i].base * 5 / 4);
        int64_t x = sl_webhook_backoff_ms(t[i].attempts, 0xFFFFFFFFu);
        CHECK(x >= t[i].base * 3 / 4 && x <= t[i].base * 5 / 4);
    }
}

/* The webhook signature against a vector computed outside sillage:
 * printf '%s' '1700000000.t-1.0123456789abcdef.{"rule":"cart"}' | openssl dgst -sha256 -hmac hook-secret */
TEST(webhook_signature_vector)
{
    static const char body[] = "{\"rule\":\"cart\"}";
    char sig[SL_WEBHOOK_SIGNATURE_BYTES];
    CHECK_INT(sl_webhook_sign("hook-secret", 1700000000, "t-1.0123456789abcdef", body, sizeof(body) - 1, sig), ==, 0);
    CHECK_STR(sig, "t=1700000000,v1=07dbee2a0094efcdf136b225e704b9a242ba516a99fdb7b00807149ef7f4a19e");
    /* the time and the delivery id are signed: changing either changes it */
    char other[SL_WEBHOOK_SIGNATURE_BYTES];
    CHECK_INT(sl_webhook_sign("hook-secret", 1700000001, "t-1.0123456789abcdef", body, sizeof(body) - 1, other), ==, 0);
    CHECK(strcmp(sig + 17, other + 17) != 0);
    CHECK_INT(sl_webhook_sign("hook-secret", 1700000000, "t-2.0123456789abcdef", body, sizeof(body) - 1, other), ==, 0);
    CHECK(strcmp(sig, other) != 0);
}
