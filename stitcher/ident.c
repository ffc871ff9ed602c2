/* ident.c - see sl_stitch.h: which values are identifiers, and how trait
 * identifiers (e-mails) are folded before they are keyed. */
#define _GNU_SOURCE
#include "sl_stitch.h"

#include <locale.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <wctype.h>

/* One code point of valid UTF-8 (the prescan checked it) at p; its length. */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
    if (p[0] < 0x80) return *cp = p[0], 1;
    /* not the start of a whole code point (a trim looking backwards lands
     * on continuation bytes): nothing invisible */
    if ((p[0] & 0xC0) == 0x80 || n < 2) return *cp = 0xFFFD, 1;
    if ((p[0] & 0xE0) == 0xC0) return *cp = (uint32_t)((p[0] & 0x1F) << 6 | (p[1] & 0x3F)), 2;
    if ((p[0] & 0xF0) == 0xE0 && n >= 3)
        return *cp = (uint32_t)((p[0] & 0x0F) << 12 | (p[1] & 0x3F) << 6 | (p[2] & 0x3F)), 3;
    if ((p[0] & 0xF8) == 0xF0 && n >= 4)
        return *cp = (uint32_t)((p[0] & 0x07) << 18 | (p[1] & 0x3F) << 12 | (p[2] & 0x3F) << 6 | (p[3] & 0x3F)), 4;
    return *cp = 0xFFFD, 1;
}

/* Unicode's White_Space and Default_Ignorable_Code_Point: what shows
 * nothing, so that "\u200Bnull" or "null\u00AD" is as junk as "null". */
static int invisible(uint32_t c)
{
    static const uint32_t r[][2] = {
        {0x09, 0x0D}, {0x20, 0x20}, {0x85, 0x85}, {0xA0, 0xA0}, {0xAD, 0xAD}, {0x34F, 0x34F}, {0x61C, 0x61C},
        {0x115F, 0x1160}, {0x1680, 0x1680}, {0x17B4, 0x17B5}, {0x180B, 0x180F}, {0x2000, 0x200F},
        {0x2028, 0x202F}, {0x205F, 0x206F}, {0x3000, 0x3000}, {0x3164, 0x3164}, {0xFE00, 0xFE0F},
        {0xFEFF, 0xFEFF}, {0xFFA0, 0xFFA0}, {0xFFF0, 0xFFF8}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A},
        {0xE0000, 0xE0FFF},
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++)
        if (c >= r[i][0] && c <= r[i][1]) return 1;
    return 0;
}

/* Length of the invisible code point at p, 0 when p starts anything else. */
static size_t invisible_len(const unsigned char *p, size_t n)
{
    if (n && *p < 0x80) return (*p >= 0x09 && *p <= 0x0D) || *p == 0x20; /* most ids are ASCII */
    uint32_t c;
    size_t l = utf8_decode(p, n, &c);
    return invisible(c) ? l : 0;
}

int sl_ident_is_junk(const char *value, size_t len, char *const *junk, size_t n_junk)
{
    /* the value without any invisible code point, bounded: ids are at most
     * 256 characters, a longer value is not junk */
    char buf[512];
    size_t k = 0;
    const unsigned char *p = (const unsigned char *)value;
    for (size_t i = 0; i < len;) {
        size_t inv = invisible_len(p + i, len - i);
        if (inv) {
            i += inv;
            continue;
        }
        if (k == sizeof(buf)) return 0;
        buf[k++] = (char)p[i++];
    }
    if (k == 0) return 1;
    for (size_t i = 0; i < n_junk; i++)
        if (strlen(junk[i]) == k && strncasecmp(junk[i], buf, k) == 0) return 1;
    return 0;
}

size_t sl_ident_trim(const char **v, size_t n)
{
    const unsigned char *p = (const unsigned char *)*v;
    for (size_t inv; n && (inv = invisible_len(p, n)); p += inv, n -= inv) {}
    for (;;) { /* from the end: the longest invisible code point that ends there */
        size_t inv = 0;
        for (size_t l = 1; l <= 4 && l <= n && !inv; l++)
            if (invisible_len(p + n - l, l) == l) inv = l;
        if (inv == 0) break;
        n -= inv;
    }
    *v = (const char *)p;
    return n;
}

static locale_t utf8_locale;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;
static void utf8_init(void) { utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0); }

static size_t utf8_encode(wint_t c, char *out)
{
    if (c < 0x80) return out[0] = (char)c, 1;
    if (c < 0x800) return out[0] = (char)(0xC0 | c >> 6), out[1] = (char)(0x80 | (c & 0x3F)), 2;
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | c >> 12);
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | c >> 18);
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

char *sl_ident_lower(const char *v, size_t n, sl_arena_t *arena)
{
    pthread_once(&utf8_once, utf8_init);
    char *out = sl_arena_alloc(arena, 2 * n + 1); /* a lower case letter is at most 3/2 as long */
    if (out == NULL) return NULL;
    const unsigned char *p = (const unsigned char *)v;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += utf8_decode(p + i, n - i, &cp);
        wint_t c = (wint_t)cp;
        if (c < 0x80) c = (wint_t)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        else if (utf8_locale != (locale_t)0) c = towlower_l(c, utf8_locale);
        k += utf8_encode(c, out + k);
    }
    out[k] = '\0';
    return out;
}
