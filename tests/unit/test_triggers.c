/* test_triggers.c - the rule states' records (triggers/internal.h): round
 * trips, the layouts written before the header, and records cut short or
 * lying about their lengths. */
#include "test.h"
#include "internal.h"

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
