/* test_fields.c - the commerce pack's arithmetic (fields/commerce.c) and
 * the "computed" section: a property test over random order streams with
 * merges and refunds, RFM scores and segments, config errors. The ledger's
 * databases run in tests/integration/computed.test.mjs. */
#include "test.h"
#include "tests.h"

#include "fields_int.h"
#include "sl_config.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#define P 6   /* persons */
#define O 14  /* orders */

typedef struct {
    int placed, person, promo, full, ncat;
    int64_t ts;
    double rev, refunded;
    int known;
    int cats[3];
} m_order_t;

static const char *const cat_names[5] = {"a", "b", "c", "d", "e"};

static void to_order(const m_order_t *m, fld_order_t *o)
{
    memset(&o->f, 0, sizeof(o->f));
    o->f.flags = FO_PLACED | (m->promo ? FO_PROMO : 0) | (m->known ? FO_REV_KNOWN : 0) | (m->full ? FO_REFUNDED : 0);
    o->f.ts_ms = m->ts;
    o->f.revenue = m->rev;
    o->f.total = m->rev;
    o->f.refunded = m->refunded;
    o->f.n_cats = (uint16_t)m->ncat;
    for (int i = 0; i < m->ncat; i++) snprintf(o->cats[i], sizeof(o->cats[i]), "%s", cat_names[m->cats[i]]);
}

static void recompute(const m_order_t *ord, int person, fld_sum_t *s, fld_order_t *tmp)
{
    fld_sum_init(s);
    for (int i = 0; i < O; i++)
        if (ord[i].placed && ord[i].person == person) {
            to_order(&ord[i], tmp);
            fld_sum_order(s, tmp, 1, 50);
        }
}

static int cat_count(const fld_sum_t *s, const char *name)
{
    for (size_t i = 0; i < s->f.n_cats; i++)
        if (strcmp(s->cats[i].name, name) == 0) return (int)s->cats[i].count;
    return 0;
}

/* Random streams: orders placed (and copies of them ignored), partial and
 * full refunds, merges. The summaries kept step by step as fields.c keeps
 * them equal, for every person, the summary recomputed from the orders. */
TEST(fields_sum_property)
{
    static fld_sum_t inc[P], want;
    static fld_order_t o;
    srand(24);
    int diffs = 0;
    for (int round = 0; round < 10000; round++) {
        m_order_t ord[O];
        memset(ord, 0, sizeof(ord));
        int alive[P];
        for (int p = 0; p < P; p++) fld_sum_init(&inc[p]), alive[p] = 1;
        for (int step = 0; step < 40; step++) {
            int op = rand() % 10, i = rand() % O;
            if (op < 5) { /* an order (a copy when placed already: ignored) */
                int p = rand() % P;
                if (ord[i].placed || !alive[p]) continue;
                m_order_t *m = &ord[i];
                m->placed = 1, m->person = p, m->promo = rand() % 2, m->known = rand() % 4 != 0;
                m->ts = 1000000 + (int64_t)(rand() % 50) * 1000; /* ties too */
                m->rev = (rand() % 10000) / 100.0;
                m->ncat = rand() % 4;
                for (int k = 0; k < m->ncat; k++) m->cats[k] = (rand() % 5 + k) % 5; /* distinct within an order */
                if (m->ncat == 3 && m->cats[2] == m->cats[0]) m->ncat = 2;
                to_order(m, &o);
                fld_sum_order(&inc[p], &o, 1, 50);
            } else if (op < 7) { /* a partial refund: revenue only */
                m_order_t *m = &ord[i];
                if (!m->placed || m->full) continue;
                to_order(m, &o);
                double old = fld_order_net(&o);
                m->refunded += (rand() % 3000) / 100.0;
                to_order(m, &o);
                inc[m->person].f.revenue += fld_order_net(&o) - old;
            } else if (op < 8) { /* a full refund: out of every figure, recomputed */
                m_order_t *m = &ord[i];
                if (!m->placed || m->full) continue;
                m->full = 1;
                fld_sum_fix_t keep = inc[m->person].f;
                recompute(ord, m->person, &inc[m->person], &o);
                inc[m->person].f.seg = keep.seg;
            } else { /* a merge: b into a */
                int a = rand() % P, b = rand() % P;
                if (a == b || !alive[a] || !alive[b]) continue;
                fld_sum_merge(&inc[a], &inc[b], 50);
                fld_sum_init(&inc[b]);
                alive[b] = 0;
                for (int k = 0; k < O; k++)
                    if (ord[k].placed && ord[k].person == b) ord[k].person = a;
            }
        }
        for (int p = 0; p < P; p++) {
            recompute(ord, p, &want, &o);
            const fld_sum_fix_t *x = &inc[p].f, *y = &want.f;
            int bad = x->orders != y->orders || x->rev_orders != y->rev_orders || x->promo_orders != y->promo_orders ||
                      x->first_ms != y->first_ms || x->second_ms != y->second_ms || x->last_ms != y->last_ms ||
                      fabs(x->revenue - y->revenue) > 1e-6 || x->n_cats != y->n_cats;
            for (int c = 0; c < 5 && !bad; c++) bad = cat_count(&inc[p], cat_names[c]) != cat_count(&want, cat_names[c]);
            if (bad && diffs++ < 3)
                fprintf(stderr, "  round %d person %d: orders %u/%u revenue %.2f/%.2f first %lld/%lld second %lld/%lld\n",
                        round, p, x->orders, y->orders, x->revenue, y->revenue, (long long)x->first_ms,
                        (long long)y->first_ms, (long long)x->second_ms, (long long)y->second_ms);
        }
    }
    CHECK_INT(diffs, ==, 0);
}

static const fld_conf_t *demo_conf(sl_config_t *cfg)
{
    if (sl_config_demo(cfg)) return NULL;
    return fld_conf(cfg);
}

TEST(fields_rfm_scores_and_segments)
{
    sl_config_t cfg;
    const fld_conf_t *c = demo_conf(&cfg);
    REQUIRE(c != NULL);
    CHECK(c->commerce);
    static fld_sum_t s;
    fld_sum_init(&s);
    const int64_t day = 86400000, now = 1000 * day;
    fld_rfm_t r = fld_rfm(c, &s, now);
    CHECK_STR(fld_segment_name(c, r.seg), "prospect");
    CHECK(fld_rfm_next(c, &s, now) == INT64_MAX);
    /* one order yesterday: r 5, f 1 -> new; r moves at 30 days */
    s.f.orders = 1, s.f.revenue = 40, s.f.last_ms = now - day;
    r = fld_rfm(c, &s, now);
    CHECK_INT(r.r, ==, 5);
    CHECK_INT(r.f, ==, 1);
    CHECK_INT(r.m, ==, 1);
    CHECK_STR(fld_segment_name(c, r.seg), "new");
    CHECK_INT(fld_rfm_next(c, &s, now), ==, now - day + 30 * day + 1);
    /* six orders, 2,000 spent, 100 days ago: r 3 f 5 m 5 -> loyal */
    s.f.orders = 6, s.f.revenue = 2000, s.f.last_ms = now - 100 * day;
    r = fld_rfm(c, &s, now);
    CHECK_INT(r.r, ==, 3);
    CHECK_INT(r.f, ==, 5);
    CHECK_INT(r.m, ==, 5);
    CHECK_STR(fld_segment_name(c, r.seg), "loyal");
    /* the same a year and more later: can't lose */
    r = fld_rfm(c, &s, now + 300 * day);
    CHECK_INT(r.r, ==, 1);
    CHECK_STR(fld_segment_name(c, r.seg), "can't lose");
    CHECK(fld_rfm_next(c, &s, now + 300 * day) == INT64_MAX);
    /* every combination has a segment in the default table */
    for (int o = 1; o <= 8; o++)
        for (int d = 0; d < 500; d += 7) {
            s.f.orders = (uint32_t)o, s.f.revenue = o * 130.0, s.f.last_ms = now - d * day;
            CHECK(fld_rfm(c, &s, now).seg < c->n_segments);
        }
    sl_config_free(&cfg);
}

TEST(fields_config_errors)
{
    static const struct { const char *computed, *want; } cases[] = {
        {"{\"commerce\":{\"fx\":{\"USD\":0.9}}}", "computed.commerce.fx needs computed.commerce.currency"},
        {"{\"commerce\":{\"currency\":\"EUR\",\"fx\":{\"USD\":-1}}}", "computed.commerce.fx.USD must be a number"},
        {"{\"commerce\":{\"windows\":[\"90 days\"]}}", "computed.commerce.windows[0] must be a duration"},
        {"{\"commerce\":{\"rfm\":{\"recency\":[\"1d\",\"1d\",\"2d\",\"3d\"]}}}", "recency[1] must be longer"},
        {"{\"commerce\":{\"rfm\":{\"segments\":[{\"name\":\"x\",\"r\":[4,5]}]}}}", "leaves r=1 f=1 m=1 without a segment"},
        {"{\"commerce\":{\"rfm\":{\"segments\":[{\"name\":\"prospect\"}]}}}", "not \"prospect\""},
        {"{\"commerce\":{\"colour\":1}}", "unknown key \"computed.commerce.colour\""},
        {"{\"commerce\":1}", "computed.commerce must be true, false or an object"},
        /* durations past 100 years: a time plus one would overflow int64 */
        {"{\"commerce\":{\"windows\":[\"106751991167d\"]}}", "windows[0] must be a duration (\"90d\") of at most"},
        {"{\"commerce\":{\"rfm\":{\"recency\":[\"1d\",\"2d\",\"3d\",\"36501d\"]}}}", "recency[3] must be a duration"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[1024], err[512] = "";
        snprintf(json, sizeof(json),
                 "{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"computed\":%s}",
                 cases[i].computed);
        sl_config_t cfg;
        int rc = sl_config_parse(&cfg, json, strlen(json), err, sizeof(err));
        CHECK_INT(rc, ==, SL_EINVAL);
        if (strstr(err, cases[i].want) == NULL) {
            fprintf(stderr, "  case %zu: got \"%s\", want \"%s\"\n", i, err, cases[i].want);
            test_failures++;
        }
        if (rc == 0) sl_config_free(&cfg);
    }
    /* a rule naming a field the pack does not compute, or with the pack off */
    static const char *const rules[][2] = {
        {"{\"commerce\":true}", "\"field\":\"nope\""},
        {"{\"commerce\":false}", "\"field\":\"orders\""},
    };
    for (size_t i = 0; i < 2; i++) {
        char json[1024], err[512] = "";
        snprintf(json, sizeof(json),
                 "{\"sources\":[{\"name\":\"a\",\"write_key\":\"k\"}],\"admin_token\":\"t\",\"computed\":%s,"
                 "\"triggers\":[{\"name\":\"r\",\"type\":\"computed_change\",%s}]}",
                 rules[i][0], rules[i][1]);
        sl_config_t cfg;
        int rc = sl_config_parse(&cfg, json, strlen(json), err, sizeof(err));
        CHECK_INT(rc, ==, SL_EINVAL);
        CHECK(strstr(err, "is not a computed field") != NULL);
        if (rc == 0) sl_config_free(&cfg);
    }
}

/* Stored records read back from a store that may be damaged: every cut,
 * every byte changed, an unterminated currency, a non-finite amount. The
 * decoders refuse (MDB_CORRUPTED) or give a record the readers can use:
 * counts within the arrays, currencies C strings, amounts finite (ASan
 * checks the reads). */
static int order_usable(const fld_order_t *o)
{
    if (o->f.n_cats > SL_FIELDS_ORDER_CATS || o->f.n_refunds > SL_FIELDS_ORDER_REFUNDS) return 0;
    if (memchr(o->f.currency, 0, sizeof(o->f.currency)) == NULL) return 0;
    if (!isfinite(o->f.revenue) || !isfinite(o->f.total) || !isfinite(o->f.refunded)) return 0;
    for (size_t i = 0; i < o->f.n_cats; i++)
        if (memchr(o->cats[i], 0, sizeof(o->cats[i])) == NULL) return 0;
    for (size_t i = 0; i < o->f.n_refunds; i++)
        if (isinf(o->refunds[i].amount)) return 0;
    return 1;
}

TEST(fields_records_corrupted)
{
    static fld_order_t o, back;
    memset(&o, 0, sizeof(o));
    o.f.flags = FO_PLACED | FO_REV_KNOWN;
    o.f.person = o.f.origin = 7;
    o.f.ts_ms = 1000;
    o.f.revenue = o.f.total = 50;
    o.f.refunded = 10;
    memcpy(o.f.currency, "EUR", 4);
    o.f.n_cats = 3;
    snprintf(o.cats[0], sizeof(o.cats[0]), "shoes");
    snprintf(o.cats[1], sizeof(o.cats[1]), "%s", "bags and a category of sixty-four bytes exactly, to the end.....");
    snprintf(o.cats[2], sizeof(o.cats[2]), "h");
    o.f.n_refunds = 2;
    o.refunds[0] = (fld_refund_t){2000, 10, 3};
    o.refunds[1] = (fld_refund_t){3000, NAN, 4};
    sl_buf_t b = {0};
    REQUIRE(fld_order_encode(&o, &b) == 0);
    MDB_val v = {b.len, b.data};
    REQUIRE(fld_order_decode(&v, &back) == 0);
    CHECK_STR(back.cats[1], o.cats[1]);
    CHECK(isnan(back.refunds[1].amount));
    /* every cut, and one byte more */
    for (size_t n = 0; n < b.len; n++) {
        MDB_val cut = {n, b.data};
        CHECK_INT(fld_order_decode(&cut, &back), ==, MDB_CORRUPTED);
    }
    REQUIRE(sl_buf_append(&b, "", 1) == 0);
    MDB_val longer = {b.len, b.data};
    CHECK_INT(fld_order_decode(&longer, &back), ==, MDB_CORRUPTED);
    b.len--;
    /* every byte changed: refused, or usable */
    for (size_t i = 0; i < b.len; i++)
        for (int x = 0; x < 3; x++) {
            static const unsigned char vals[3] = {0x00, 0x7F, 0xFF};
            unsigned char *copy = malloc(b.len);
            REQUIRE(copy != NULL);
            memcpy(copy, b.data, b.len);
            copy[i] = vals[x];
            MDB_val c = {b.len, copy};
            if (fld_order_decode(&c, &back) == 0 && !order_usable(&back)) {
                fprintf(stderr, "  byte %zu = 0x%02x: decoded to a record readers cannot use\n", i, vals[x]);
                test_failures++;
            }
            free(copy);
        }
    /* the named cases */
    fld_order_fix_t *fx = (fld_order_fix_t *)b.data;
    memcpy(fx->currency, "EURUSDGB", 8); /* no NUL */
    CHECK_INT(fld_order_decode(&v, &back), ==, MDB_CORRUPTED);
    memcpy(fx->currency, "EUR\0\0\0\0", 8);
    fx->revenue = INFINITY;
    CHECK_INT(fld_order_decode(&v, &back), ==, MDB_CORRUPTED);
    fx->revenue = 50;
    fx->refunded = NAN;
    CHECK_INT(fld_order_decode(&v, &back), ==, MDB_CORRUPTED);
    fx->refunded = 10;
    /* the last refund's amount (not aligned in the record: copied) */
    char *amt = b.data + b.len - sizeof(fld_refund_t) + offsetof(fld_refund_t, amount);
    double d = -INFINITY;
    memcpy(amt, &d, sizeof(d));
    CHECK_INT(fld_order_decode(&v, &back), ==, MDB_CORRUPTED);
    d = NAN;
    memcpy(amt, &d, sizeof(d));
    CHECK_INT(fld_order_decode(&v, &back), ==, 0);
    sl_buf_free(&b);

    /* a summary */
    static fld_sum_t s, sb;
    fld_sum_init(&s);
    s.f.orders = 2, s.f.revenue = 70, s.f.n_cats = 2;
    memcpy(s.f.currency, "EUR", 4);
    s.cats[0].count = 2, snprintf(s.cats[0].name, sizeof(s.cats[0].name), "a");
    s.cats[1].count = 1, snprintf(s.cats[1].name, sizeof(s.cats[1].name), "bb");
    REQUIRE(fld_sum_encode(&s, &b) == 0);
    MDB_val sv = {b.len, b.data};
    REQUIRE(fld_sum_decode(&sv, &sb) == 0);
    CHECK_STR(sb.cats[1].name, "bb");
    for (size_t n = 0; n < b.len; n++) {
        MDB_val cut = {n, b.data};
        CHECK_INT(fld_sum_decode(&cut, &sb), ==, MDB_CORRUPTED);
    }
    for (size_t i = 0; i < b.len; i++) {
        unsigned char *copy = malloc(b.len);
        REQUIRE(copy != NULL);
        memcpy(copy, b.data, b.len);
        copy[i] ^= 0xFF;
        MDB_val c = {b.len, copy};
        if (fld_sum_decode(&c, &sb) == 0 &&
            (!isfinite(sb.f.revenue) || memchr(sb.f.currency, 0, sizeof(sb.f.currency)) == NULL ||
             sb.f.n_cats > FLD_MAX_CATEGORIES)) {
            fprintf(stderr, "  summary byte %zu flipped: decoded to a record readers cannot use\n", i);
            test_failures++;
        }
        free(copy);
    }
    fld_sum_fix_t *sf = (fld_sum_fix_t *)b.data;
    sf->revenue = INFINITY;
    CHECK_INT(fld_sum_decode(&sv, &sb), ==, MDB_CORRUPTED);
    sf->revenue = 70;
    memcpy(sf->currency, "ABCDEFGH", 8);
    CHECK_INT(fld_sum_decode(&sv, &sb), ==, MDB_CORRUPTED);
    sl_buf_free(&b);
}

/* A summary with no order left but a segment kept (its last orders were
 * refunded while the pack was off, or an older record): the read shows a
 * prospect since the stored time, without reading a fifth recency
 * threshold (there are four: recency[4] was past the array). */
TEST(fields_flatten_prospect_after_segment)
{
    sl_config_t cfg;
    const fld_conf_t *c = demo_conf(&cfg);
    REQUIRE(c != NULL);
    static fld_sum_t s;
    fld_sum_init(&s);
    const int64_t day = 86400000, now = 20000 * day;
    s.f.seg = 0; /* "can't lose" */
    s.f.seg_since_ms = now - 5 * day;
    s.f.last_ms = now - 400 * day;
    fld_flat_t fl;
    memset(&fl, 0, sizeof(fl));
    REQUIRE(fld_flatten(c, &s, NULL, NULL, now, &fl) == 0);
    char want[32], since[64] = "";
    sl_time_format_iso(now - 5 * day, want);
    for (size_t i = 0; i < fl.n; i++)
        if (strcmp(fl.name[i], "rfm.since") == 0)
            snprintf(since, sizeof(since), "%.*s", (int)fl.len[i], fl.text.data + fl.off[i]);
    char quoted[40];
    snprintf(quoted, sizeof(quoted), "\"%s\"", want);
    CHECK_STR(since, quoted);
    sl_buf_free(&fl.text);
    sl_buf_free(&fl.scratch);
    sl_config_free(&cfg);
}

static int64_t iso(const char *s)
{
    int64_t ms = 0;
    sl_time_parse_iso(s, strlen(s), &ms);
    return ms;
}

/* Calendar days in Europe/Paris across the spring DST change (2026-03-29:
 * 23 hours) and the autumn one (2026-10-25: 25 hours). */
TEST(fields_local_days_across_dst)
{
    sl_timezone_apply("Europe/Paris");
    int64_t d29 = fld_local_day(iso("2026-03-28T23:30:00Z")); /* 00:30 on the 29th, CET */
    CHECK_INT(fld_local_day(iso("2026-03-28T22:59:59Z")), ==, d29 - 1);
    CHECK_INT(fld_local_day(iso("2026-03-29T21:59:59Z")), ==, d29); /* 23:59:59 CEST */
    CHECK_INT(fld_local_day(iso("2026-03-29T22:00:00Z")), ==, d29 + 1);
    CHECK_INT(fld_local_day_start(d29), ==, iso("2026-03-28T23:00:00Z"));
    CHECK_INT(fld_local_day_start(d29 + 1) - fld_local_day_start(d29), ==, 23 * 3600000LL);
    int64_t d25 = fld_local_day(iso("2026-10-25T12:00:00Z"));
    CHECK_INT(fld_local_day_start(d25 + 1) - fld_local_day_start(d25), ==, 25 * 3600000LL);
    CHECK_INT(fld_local_day(iso("2026-10-25T22:59:59Z")), ==, d25); /* 23:59:59 CET */
    sl_timezone_apply(NULL);
    CHECK_INT(fld_local_day(iso("2026-03-28T23:30:00Z")), ==, d29 - 1); /* UTC: still the 28th */
}

/* A day-bucketed window: events land in the day of their own timestamp
 * (a late one too), leave it whole days later, and the timer is set for
 * the instant the oldest leaves. Two states merged read as one state fed
 * every event, for each aggregate. */
TEST(fields_generic_windows_and_merges)
{
    static fld_gstate_t a, b, all;
    static sl_stage_ctx_t ctx;
    fld_gfield_t g = {.type = FG_COUNT, .window_ms = 2 * 86400000LL, .bucket_ms = 0};
    sl_timezone_apply(NULL);
    const int64_t day = 86400000LL, now = iso("2026-06-10T12:00:00Z");
    char json[64] = "{\"type\":\"track\"}";
    sl_jindex_t top, sub;
    sl_stage_event_t ev = {.json = json, .len = strlen(json), .ctx = &ctx};
    ev.root = sl_jroot_index(json, ev.len, &top, NULL, &sub);
    ev.top = &top;
    fld_gstate_init(&a, &g);
    ctx.ts_ms = now - day; /* yesterday */
    CHECK(fld_gstate_apply(&g, &a, &ev, 0, now));
    ctx.ts_ms = now;
    CHECK(fld_gstate_apply(&g, &a, &ev, 0, now));
    ctx.ts_ms = now - 3 * day; /* too late for the window: not kept */
    CHECK(!fld_gstate_apply(&g, &a, &ev, 0, now));
    sl_buf_t v = {0};
    fld_gstate_value(&g, &a, now, &v);
    CHECK_INT(v.len, ==, 1);
    CHECK(v.data[0] == '2');
    v.len = 0;
    fld_gstate_value(&g, &a, now + day, &v); /* yesterday's left */
    CHECK(v.len == 1 && v.data[0] == '1');
    v.len = 0;
    fld_gstate_value(&g, &a, now + 2 * day, &v);
    CHECK(v.len == 1 && v.data[0] == '0');
    CHECK_INT(fld_gstate_next(&g, &a, now), ==, iso("2026-06-11T00:00:00Z"));

    /* merges, for each mergeable aggregate, over random values */
    static const int types[] = {FG_COUNT, FG_SUM, FG_AVG, FG_MIN, FG_MAX, FG_FIRST, FG_LAST, FG_DISTINCT_COUNT,
                                FG_MOST_FREQUENT};
    char *path[1] = {"v"};
    int diffs = 0;
    srand(7);
    for (int round = 0; round < 2000; round++) {
        fld_gfield_t h = {.type = types[round % 9], .path = path, .n_path = 1, .max_values = 50};
        if (round % 2 && h.type <= FG_MAX) h.window_ms = 30 * day;
        fld_gstate_init(&a, &h);
        fld_gstate_init(&b, &h);
        fld_gstate_init(&all, &h);
        for (int i = 0; i < 12; i++) {
            snprintf(json, sizeof(json), "{\"v\":%d}", rand() % 7);
            ev.len = strlen(json);
            ev.root = sl_jroot_index(json, ev.len, &top, NULL, &sub);
            ctx.ts_ms = now - (rand() % 40) * day + i; /* distinct times: first/last are one event */
            fld_gstate_apply(&h, rand() % 2 ? &a : &b, &ev, 0, now);
            fld_gstate_apply(&h, &all, &ev, 0, now);
        }
        fld_gstate_merge(&h, &a, &b);
        sl_buf_t x = {0}, y = {0};
        fld_gstate_value(&h, &a, now, &x);
        fld_gstate_value(&h, &all, now, &y);
        if (x.len != y.len || memcmp(x.data, y.data, x.len) != 0) {
            if (diffs++ < 3) fprintf(stderr, "  round %d type %d: %.*s vs %.*s\n", round, h.type, (int)x.len, x.data, (int)y.len, y.data);
        }
        sl_buf_free(&x);
        sl_buf_free(&y);
    }
    CHECK_INT(diffs, ==, 0);
    sl_buf_free(&v);
}

/* A generic field's state record, cut anywhere or with any byte changed,
 * is refused (MDB_CORRUPTED) or decodes to a state within its arrays with
 * finite sums (ASan checks the reads); the whole round-trips. */
TEST(fields_gstate_records_corrupted)
{
    static fld_gstate_t s, back;
    static const int types[] = {FG_COUNT, FG_SUM, FG_MIN, FG_MAX, FG_FIRST, FG_LAST, FG_DISTINCT_LIST, FG_SCORE};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        fld_gfield_t g = {.type = types[t], .max_values = 50};
        fld_gstate_init(&s, &g);
        s.f.count = 3, s.f.sum = 7.5, s.f.min = 1, s.f.max = 4, s.f.timer_ms = 99;
        s.f.n_buckets = 2;
        s.buckets[0] = (fld_bucket_t){10, 2, 3.5, 1, 2};
        s.buckets[1] = (fld_bucket_t){11, 1, 4, 4, 4};
        memcpy(s.first, "\"a\"", 4), s.f.first_len = 3, s.f.first_ts = 5;
        memcpy(s.last, "\"b\"", 4), s.f.last_len = 3, s.f.last_ts = 6;
        memcpy(s.told, "12", 3), s.f.told_len = 2;
        s.f.n_values = 1;
        s.values[0].count = 2;
        memcpy(s.values[0].text, "\"x\"", 4);
        sl_buf_t b = {0};
        REQUIRE(fld_gstate_encode(&s, &b) == 0);
        MDB_val v = {b.len, b.data};
        CHECK_INT(fld_gstate_decode(&v, &back), ==, 0);
        CHECK_INT(back.f.count, ==, 3);
        CHECK_INT(back.f.n_buckets, ==, 2);
        CHECK_INT(back.buckets[1].id, ==, 11);
        CHECK_STR(back.told, "12");
        for (size_t cut = 0; cut < b.len; cut++) {
            MDB_val c = {cut, b.data};
            CHECK_INT(fld_gstate_decode(&c, &back), ==, MDB_CORRUPTED);
        }
        for (size_t i = 0; i < b.len; i++)
            for (int x = 1; x < 256; x += 37) {
                b.data[i] ^= (char)x;
                MDB_val c = {b.len, b.data};
                if (fld_gstate_decode(&c, &back) == 0) {
                    CHECK(back.f.n_buckets <= FLD_MAX_BUCKETS && back.f.n_values <= FLD_MAX_VALUES);
                    CHECK(isfinite(back.f.sum));
                }
                b.data[i] ^= (char)x;
            }
        sl_buf_free(&b);
    }
}

/* The state codec (varints): every part comes back bit for bit -- whole and
 * fractional numbers, negative ones, -0, infinities of an empty min/max,
 * timestamps before 1970, far bucket offsets -- and the common states are
 * small (a 30-day count that saw one day: 9 bytes, was 27). */
TEST(fields_gstate_codec_compact)
{
    static fld_gstate_t s, back;
    static const int types[] = {FG_COUNT, FG_SUM, FG_AVG, FG_MIN, FG_MAX, FG_FIRST, FG_LAST, FG_DISTINCT_LIST,
                                FG_MOST_FREQUENT, FG_SCORE};
    static const double nums[] = {0, 1, -1, 42, 19.99, -0.0, 1e300, -1125899906842624.0, 1125899906842625.0, 0.1};
    sl_buf_t b = {0};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
        for (size_t n = 0; n < sizeof(nums) / sizeof(nums[0]); n++) {
            fld_gfield_t g = {.type = types[t], .max_values = 50};
            fld_gstate_init(&s, &g);
            s.f.count = n * 1000003u;
            s.f.sum = nums[n];
            s.f.min = types[t] == FG_MIN && n % 2 ? INFINITY : nums[n];
            s.f.max = types[t] == FG_MAX && n % 2 ? -INFINITY : -nums[n];
            s.f.first_ts = -86400000 * (int64_t)n, s.f.last_ts = 1790000000000 + (int64_t)n;
            s.f.timer_ms = n ? 1790000000000 + (int64_t)n : 0;
            s.f.n_buckets = n % 3;
            for (size_t i = 0; i < s.f.n_buckets; i++)
                s.buckets[i] = (fld_bucket_t){-20000 + (int64_t)(i * 700), n + i, nums[n] * (double)i, nums[n], nums[n]};
            s.f.n_values = n % 2 ? 2 : 0;
            s.values[0] = (fld_gvalue_t){.count = 4000000000u};
            strcpy(s.values[0].text, "\"shoes\"");
            s.values[1] = (fld_gvalue_t){.count = 1};
            strcpy(s.values[1].text, "\"a\"");
            REQUIRE(fld_gstate_encode(&s, &b) == 0);
            MDB_val v = {b.len, b.data};
            REQUIRE(fld_gstate_decode(&v, &back) == 0);
            CHECK_INT(back.f.type, ==, types[t]);
            CHECK_INT(back.f.count, ==, s.f.count);
            /* (no event counted yet: no lifetime aggregates to keep) */
            if (s.f.count && (types[t] == FG_SUM || types[t] == FG_AVG || types[t] == FG_SCORE))
                CHECK(memcmp(&back.f.sum, &s.f.sum, 8) == 0);
            if (s.f.count && types[t] == FG_MIN) CHECK(memcmp(&back.f.min, &s.f.min, 8) == 0);
            if (s.f.count && types[t] == FG_MAX) CHECK(memcmp(&back.f.max, &s.f.max, 8) == 0);
            if (types[t] == FG_FIRST) CHECK_INT(back.f.first_ts, ==, s.f.first_ts);
            if (types[t] == FG_LAST) CHECK_INT(back.f.last_ts, ==, s.f.last_ts);
            CHECK_INT(back.f.timer_ms, ==, s.f.timer_ms);
            CHECK_INT(back.f.n_buckets, ==, s.f.n_buckets);
            for (size_t i = 0; i < s.f.n_buckets; i++) {
                CHECK_INT(back.buckets[i].id, ==, s.buckets[i].id);
                CHECK_INT(back.buckets[i].count, ==, s.buckets[i].count);
                if (types[t] == FG_SUM || types[t] == FG_AVG || types[t] == FG_SCORE)
                    CHECK(memcmp(&back.buckets[i].sum, &s.buckets[i].sum, 8) == 0);
            }
            CHECK_INT(back.f.n_values, ==, s.f.n_values);
            if (s.f.n_values) {
                CHECK_INT(back.values[0].count, ==, 4000000000u);
                CHECK_STR(back.values[1].text, "\"a\"");
            }
        }
    /* the common states are small */
    fld_gfield_t g = {.type = FG_COUNT, .window_ms = 30 * 86400000LL};
    fld_gstate_init(&s, &g);
    s.f.n_buckets = 1;
    s.buckets[0] = (fld_bucket_t){20800, 7, 0, INFINITY, -INFINITY};
    REQUIRE(fld_gstate_encode(&s, &b) == 0);
    CHECK_INT(b.len, <=, 9); /* type, flags, marks, 1 bucket, day 20800, offset 0, count 7 */
    g.type = FG_AVG, g.window_ms = 0;
    fld_gstate_init(&s, &g);
    s.f.count = 3, s.f.sum = 126;
    REQUIRE(fld_gstate_encode(&s, &b) == 0);
    CHECK_INT(b.len, <=, 6);
    sl_buf_free(&b);
}

/* Damaged bucket lists are refused: unsorted or repeated ids (the encoder
 * never writes them; accepted, the state re-encoded from them would not
 * decode), and ids far past any clock (a day's start would overflow). */
TEST(fields_gstate_buckets_bounded)
{
    static fld_gstate_t s, back;
    fld_gfield_t g = {.type = FG_COUNT, .window_ms = 30 * 86400000LL};
    fld_gstate_init(&s, &g);
    s.f.n_buckets = 2;
    s.buckets[0] = (fld_bucket_t){10, 1, 0, INFINITY, -INFINITY};
    s.buckets[1] = (fld_bucket_t){12, 1, 0, INFINITY, -INFINITY};
    sl_buf_t b = {0};
    REQUIRE(fld_gstate_encode(&s, &b) == 0);
    REQUIRE(b.len == 9); /* type, flags, marks, 2, id 10, 0, 1, 2, 1 */
    MDB_val v = {b.len, b.data};
    CHECK_INT(fld_gstate_decode(&v, &back), ==, 0);
    CHECK_INT(back.buckets[1].id, ==, 12);
    b.data[7] = 0; /* the second bucket's offset: the first's again */
    CHECK_INT(fld_gstate_decode(&v, &back), ==, MDB_CORRUPTED);
    b.data[7] = 2, b.data[5] = 1; /* the first bucket's offset must be 0 */
    CHECK_INT(fld_gstate_decode(&v, &back), ==, MDB_CORRUPTED);
    /* a first id of 2^62: type, flags, marks, 1 bucket, the id's zigzag varint, offset 0, count 1 */
    unsigned char far[16] = {(unsigned char)FG_COUNT, 0, 4, 1};
    size_t n = 4;
    for (uint64_t z = (uint64_t)1 << 63; z; z >>= 7) far[n++] = (unsigned char)((z & 0x7f) | (z >> 7 ? 0x80 : 0));
    far[n++] = 0, far[n++] = 1;
    MDB_val fv = {n, far};
    CHECK_INT(fld_gstate_decode(&fv, &back), ==, MDB_CORRUPTED);
    sl_buf_free(&b);
}
