/* Visitor traffic model: see gen.h. */
#include "gen.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_common.h"

typedef struct {
    uint16_t pages_left;   /* 0: no session running */
    uint8_t cart_items;
    uint8_t logged_in;
    uint8_t ua;
    uint8_t campaign;      /* index into campaigns[], 0 = none */
    uint8_t viewed;        /* a product was viewed this session */
    uint16_t product;      /* last product looked at */
    uint32_t cart_cents;
    uint64_t refund_of;    /* an order of this visitor to refund with its next message (0: none) */
} visitor_t;

struct sl_gen_s {
    sl_gen_options_t o;
    uint64_t rng;
    uint64_t counter;
    visitor_t *v;
    uint64_t arrivals;     /* --active: the window's start */
    sl_gen_stats_t stats;
};

static const char *const user_agents[] = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
};
#define N_UA (sizeof(user_agents) / sizeof(user_agents[0]))

static const struct { const char *w, *h, *locale, *tz; } screens[] = {
    {"1920", "1080", "fr-FR", "Europe/Paris"},      {"1440", "900", "en-GB", "Europe/London"},
    {"390", "844", "de-DE", "Europe/Berlin"},       {"412", "915", "es-ES", "Europe/Madrid"},
    {"2560", "1440", "en-US", "America/New_York"},  {"1366", "768", "it-IT", "Europe/Rome"},
};

/* source, medium, campaign, referrer */
static const struct { const char *src, *med, *name, *ref; } campaigns[] = {
    {NULL, NULL, NULL, ""},
    {"google", "cpc", "winter_sale", "https://www.google.com/"},
    {"newsletter", "email", "weekly_2026_47", ""},
    {"facebook", "paid_social", "retargeting_q4", "https://l.facebook.com/"},
    {"instagram", "social", "influencer_linen", "https://www.instagram.com/"},
    {NULL, NULL, NULL, "https://www.bing.com/"},
    {NULL, NULL, NULL, "https://duckduckgo.com/"},
};
#define N_CAMPAIGNS (sizeof(campaigns) / sizeof(campaigns[0]))

static const char *const adjectives[] = {"Linen", "Merino", "Organic", "Vintage", "Classic",
                                         "Slim", "Oversized", "Recycled", "Waxed", "Quilted"};
static const char *const nouns[] = {"Shirt", "Sweater", "Jacket", "Trousers", "Scarf",
                                    "Beanie", "Dress", "Coat", "Hoodie", "Sneakers"};
static const char *const categories[] = {"shirts", "knitwear", "outerwear", "trousers", "accessories",
                                         "accessories", "dresses", "outerwear", "sweatshirts", "shoes"};
static const char *const colors[] = {"navy", "sand", "forest", "charcoal", "ecru", "rust"};
#define N_PRODUCTS 300

static uint64_t next_u64(sl_gen_t *g)
{
    /* xorshift64* */
    uint64_t x = g->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint32_t below(sl_gen_t *g, uint32_t n) { return (uint32_t)((next_u64(g) >> 32) % n); }

/* Per-visitor traits fixed by the seed: who logs in, who orders. */
static uint64_t visitor_hash(const sl_gen_t *g, uint32_t i)
{
    uint64_t x = (g->o.seed + 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)i * 0xBF58476D1CE4E5B9ULL);
    x ^= x >> 31;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 29;
    return x;
}

static int visitor_will(const sl_gen_t *g, uint32_t i, int bit, double share)
{
    uint64_t h = visitor_hash(g, i) >> (bit * 20);
    return (double)(h & 0xFFFFF) / (double)0x100000 < share;
}

sl_gen_t *sl_gen_new(const sl_gen_options_t *opts)
{
    sl_gen_t *g = calloc(1, sizeof(*g));
    if (g == NULL) return NULL;
    g->o = *opts;
    if (g->o.visitors == 0) g->o.visitors = 1;
    g->rng = opts->seed * 0x9E3779B97F4A7C15ULL + 0x1234567;
    if (g->rng == 0) g->rng = 1;
    g->v = calloc(g->o.visitors, sizeof(visitor_t));
    if (g->v == NULL) {
        free(g);
        return NULL;
    }
    return g;
}

void sl_gen_free(sl_gen_t *g)
{
    if (g == NULL) return;
    free(g->v);
    free(g);
}

void sl_gen_stats(const sl_gen_t *g, sl_gen_stats_t *out) { *out = g->stats; }

typedef struct {
    char *p;
    size_t left;
    int overflow;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...)
{
    if (o->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p, o->left, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= o->left) {
        o->overflow = 1;
        return;
    }
    o->p += n;
    o->left -= (size_t)n;
}

static void product_name(uint16_t p, char *out, size_t cap)
{
    snprintf(out, cap, "%s %s", adjectives[p % 10], nouns[(p / 10) % 10]);
}

static uint32_t product_cents(uint16_t p) { return 1900 + (p * 7919u) % 18000u; }

static void slug(const char *name, uint16_t p, char *out, size_t cap)
{
    size_t j = 0;
    for (const char *s = name; *s && j + 8 < cap; s++)
        out[j++] = (*s == ' ') ? '-' : (char)((*s >= 'A' && *s <= 'Z') ? *s + 32 : *s);
    snprintf(out + j, cap - j, "-%u", p);
}

/* The context every message carries; page is the page the visitor is on. */
static void put_context(out_t *o, const sl_gen_t *g, uint32_t vi, const char *path, const char *title)
{
    const visitor_t *v = &g->v[vi];
    unsigned s = (unsigned)(visitor_hash(g, vi) % (sizeof(screens) / sizeof(screens[0])));
    put(o, ",\"context\":{\"library\":{\"name\":\"sillage.js\",\"version\":\"0.1.0\"},"
           "\"page\":{\"path\":\"%s\",\"url\":\"https://shop.example.com%s\",\"title\":\"%s | Maison Example\","
           "\"referrer\":\"%s\"}",
        path, path, title, campaigns[v->campaign].ref);
    if (campaigns[v->campaign].src)
        put(o, ",\"campaign\":{\"source\":\"%s\",\"medium\":\"%s\",\"name\":\"%s\"}", campaigns[v->campaign].src,
            campaigns[v->campaign].med, campaigns[v->campaign].name);
    if (g->o.consent)
        put(o, ",\"consent\":{\"categoryPreferences\":{\"analytics\":true,\"marketing\":%s}}",
            visitor_hash(g, vi) % 10 < 7 ? "true" : "false");
    put(o, ",\"userAgent\":\"%s\",\"locale\":\"%s\",\"timezone\":\"%s\",\"screen\":{\"width\":%s,\"height\":%s}}",
        user_agents[v->ua], screens[s].locale, screens[s].tz, screens[s].w, screens[s].h);
}

size_t sl_gen_next(sl_gen_t *g, int64_t now_ms, char *out, size_t cap, const char **type, char *id, size_t id_cap)
{
    uint32_t vi;
    if (g->o.active && g->o.active < g->o.visitors) {
        /* a sliding window of active visitors over the population */
        vi = (uint32_t)((g->arrivals + below(g, g->o.active)) % g->o.visitors);
        if (below(g, 10) == 0) g->arrivals++;
    } else {
        vi = below(g, g->o.visitors);
    }
    visitor_t *v = &g->v[vi];
    out_t o = {out, cap, 0};
    char ts[32], name[48], sl[64], path[128];
    sl_time_format_iso(now_ms, ts);
    snprintf(id, id_cap, "%s-%llx", g->o.run_id, (unsigned long long)g->counter++);

    int starting = v->pages_left == 0;
    if (starting) {
        v->pages_left = (uint16_t)(3 + below(g, 14));
        v->ua = (uint8_t)below(g, N_UA);
        v->campaign = (uint8_t)below(g, N_CAMPAIGNS);
        v->viewed = 0;
    }
    v->pages_left--;

    put(&o, "{\"messageId\":\"%s\",\"anonymousId\":\"%08x-5e1a-4a6e-9d2b-%012llx\"", id, vi,
        (unsigned long long)(visitor_hash(g, vi) & 0xFFFFFFFFFFFFULL));
    if (v->logged_in) put(&o, ",\"userId\":\"user-%u\"", vi);

    uint32_t r = below(g, 100);
    if (starting) {
        /* Landing page: home or a category page, with the campaign. */
        uint16_t c = (uint16_t)below(g, 10);
        if (r < 50) snprintf(path, sizeof(path), "/");
        else snprintf(path, sizeof(path), "/c/%s", categories[c]);
        if (campaigns[v->campaign].src) {
            size_t n = strlen(path);
            snprintf(path + n, sizeof(path) - n, "?utm_source=%s&utm_medium=%s&utm_campaign=%s",
                     campaigns[v->campaign].src, campaigns[v->campaign].med, campaigns[v->campaign].name);
        }
        *type = "page";
        g->stats.pages++;
        put(&o, ",\"type\":\"page\",\"name\":\"%s\",\"properties\":{\"path\":\"%s\",\"title\":\"%s\"}",
            r < 50 ? "Home" : "Category", path, r < 50 ? "Home" : categories[c]);
        put_context(&o, g, vi, path, r < 50 ? "Home" : categories[c]);
    } else if (v->refund_of) {
        /* The back office refunds one order in ten: half of them whole, half in part. */
        *type = "track";
        g->stats.refunds++;
        put(&o, ",\"type\":\"track\",\"event\":\"Order Refunded\",\"properties\":{\"order_id\":\"ord-%llx\"",
            (unsigned long long)v->refund_of);
        if (r & 1) put(&o, ",\"total\":%u.50", 1 + r % 20);
        put(&o, "}");
        put_context(&o, g, vi, "/account/orders", "Orders");
        v->refund_of = 0;
    } else if (!v->logged_in && visitor_will(g, vi, 0, g->o.login_share) && r < 25) {
        /* Login: identify with traits; from now on messages carry userId. */
        v->logged_in = 1;
        *type = "identify";
        g->stats.identifies++;
        put(&o, ",\"userId\":\"user-%u\",\"type\":\"identify\",\"traits\":{\"email\":\"user-%u@mail.example.com\","
                "\"firstName\":\"Camille\",\"lastName\":\"Martin-%u\",\"plan\":\"%s\",\"createdAt\":\"2025-03-1%uT09:12:00Z\"}",
            vi, vi, vi % 1000, (vi % 3) ? "member" : "vip", vi % 10);
        put_context(&o, g, vi, "/account/login", "Sign in");
    } else if (v->cart_items > 0 && v->pages_left == 0 && visitor_will(g, vi, 1, g->o.order_share)) {
        /* Checkout at the end of the session. */
        *type = "track";
        g->stats.orders++;
        uint32_t cents = v->cart_cents;
        product_name(v->product, name, sizeof(name));
        put(&o, ",\"type\":\"track\",\"event\":\"Order Completed\",\"properties\":{\"order_id\":\"ord-%llx\","
                "\"revenue\":%u.%02u,\"shipping\":4.90,\"tax\":%u.%02u,\"currency\":\"EUR\",\"coupon\":\"%s\","
                "\"products\":[{\"product_id\":\"p-%u\",\"name\":\"%s\",\"quantity\":%u,\"category\":\"%s\"}]}",
            (unsigned long long)g->counter, cents / 100, cents % 100, cents / 600, (cents / 6) % 100,
            (r & 1) ? "WINTER10" : "", v->product, name, v->cart_items, categories[(v->product / 10) % 10]);
        if (r % 10 == 3) v->refund_of = g->counter;
        put_context(&o, g, vi, "/checkout/confirmation", "Thank you");
        v->cart_items = 0;
        v->cart_cents = 0;
    } else if (r < 35 || (r < 50 && !v->viewed)) {
        /* Product page view as a track event. */
        uint16_t p = (uint16_t)below(g, N_PRODUCTS);
        v->product = p;
        v->viewed = 1;
        product_name(p, name, sizeof(name));
        slug(name, p, sl, sizeof(sl));
        snprintf(path, sizeof(path), "/p/%s", sl);
        uint32_t c = product_cents(p);
        *type = "track";
        g->stats.product_views++;
        put(&o, ",\"type\":\"track\",\"event\":\"Product Viewed\",\"properties\":{\"product_id\":\"p-%u\","
                "\"sku\":\"SKU-%05u\",\"name\":\"%s\",\"category\":\"%s\",\"brand\":\"Maison Example\","
                "\"variant\":\"%s\",\"price\":%u.%02u,\"currency\":\"EUR\",\"url\":\"https://shop.example.com%s\"}",
            p, p * 13u, name, categories[(p / 10) % 10], colors[p % 6], c / 100, c % 100, path);
        put_context(&o, g, vi, path, name);
    } else if (r < 50) {
        /* Add the last viewed product to the cart. */
        uint16_t p = v->product;
        product_name(p, name, sizeof(name));
        slug(name, p, sl, sizeof(sl));
        snprintf(path, sizeof(path), "/p/%s", sl);
        uint32_t c = product_cents(p);
        unsigned q = 1 + (r & 1);
        v->cart_items = (uint8_t)(v->cart_items < 250 ? v->cart_items + q : v->cart_items);
        v->cart_cents += c * q;
        *type = "track";
        g->stats.cart_adds++;
        put(&o, ",\"type\":\"track\",\"event\":\"Product Added\",\"properties\":{\"cart_id\":\"cart-%u\","
                "\"product_id\":\"p-%u\",\"sku\":\"SKU-%05u\",\"name\":\"%s\",\"category\":\"%s\","
                "\"variant\":\"%s\",\"price\":%u.%02u,\"quantity\":%u,\"currency\":\"EUR\"}",
            vi, p, p * 13u, name, categories[(p / 10) % 10], colors[p % 6], c / 100, c % 100, q);
        put_context(&o, g, vi, path, name);
    } else {
        /* Browsing: category, search or cart page. */
        uint16_t c = (uint16_t)below(g, 10);
        const char *title = categories[c];
        if (r < 80) snprintf(path, sizeof(path), "/c/%s?page=%u", categories[c], 1 + (r % 4));
        else if (r < 92) {
            snprintf(path, sizeof(path), "/search?q=%s+%s", colors[r % 6], categories[c]);
            title = "Search";
        } else {
            snprintf(path, sizeof(path), "/cart");
            title = "Your cart";
        }
        *type = "page";
        g->stats.pages++;
        put(&o, ",\"type\":\"page\",\"name\":\"%s\",\"properties\":{\"path\":\"%s\",\"title\":\"%s\"}",
            r < 80 ? "Category" : (r < 92 ? "Search" : "Cart"), path, title);
        put_context(&o, g, vi, path, title);
    }
    put(&o, ",\"timestamp\":\"%s\",\"sentAt\":\"%s\"}", ts, ts);
    if (o.overflow) return 0;
    return cap - o.left;
}
