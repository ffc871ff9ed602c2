/* decode.c - the byte-level decoders in front of the JSON parser: a prescan
 * for depth and UTF-8, base64 and percent decoding for the pixel, and a
 * bounded gzip inflater. Each one bounds its output before allocating. */
#include "sl_collector.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* Inside a string, the bytes the prescan need not look at one by one:
 * ASCII other than NUL, '"' and '\\', 8 at a time. */
static const unsigned char *plain_ascii(const unsigned char *s, const unsigned char *end)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (end - s >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
        if ((w | (((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones) & ~w))) & highs) break;
        s += 8;
    }
    return s;
}

const char *sl_json_prescan(const char *p, size_t n, size_t max_depth)
{
    const unsigned char *s = (const unsigned char *)p, *end = s + n;
    size_t depth = 0;
    int in_str = 0;
    while (s < end) {
        if (in_str && (s = plain_ascii(s, end)) >= end) break;
        unsigned char c = *s;
        if (c < 0x80) {
            if (c == 0) return "body contains a NUL byte";
            if (in_str) {
                if (c == '\\') {
                    /* \u0000 would end the C string early: the value would change silently. */
                    if (end - s >= 6 && s[1] == 'u' && memcmp(s + 2, "0000", 4) == 0)
                        return "strings must not contain \\u0000";
                    s += (end - s >= 2) ? 2 : 1;
                    continue;
                }
                if (c == '"') in_str = 0;
            } else if (c == '"') {
                in_str = 1;
            } else if (c == '{' || c == '[') {
                if (++depth > max_depth) return "JSON nesting is deeper than max_json_depth";
            } else if (c == '}' || c == ']') {
                if (depth) depth--;
            }
            s++;
            continue;
        }
        /* Multi-byte UTF-8: reject overlongs, surrogates and > U+10FFFF. */
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
        else return "body is not valid UTF-8";
        if ((size_t)(end - s) < len) return "body is not valid UTF-8";
        for (size_t i = 1; i < len; i++) {
            if ((s[i] & 0xc0) != 0x80) return "body is not valid UTF-8";
            cp = (cp << 6) | (s[i] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return "body is not valid UTF-8";
        s += len;
    }
    return NULL;
}

long sl_base64_decode(const char *in, size_t n, unsigned char *out)
{
    static signed char map[256];
    static int ready;
    if (!ready) {
        memset(map, -1, sizeof(map));
        for (int i = 0; i < 26; i++) {
            map['A' + i] = (signed char)i;
            map['a' + i] = (signed char)(26 + i);
        }
        for (int i = 0; i < 10; i++) map['0' + i] = (signed char)(52 + i);
        map['+'] = map['-'] = 62;
        map['/'] = map['_'] = 63;
        ready = 1;
    }
    while (n > 0 && in[n - 1] == '=') n--;
    if (n % 4 == 1) return -1;
    long o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = map[(unsigned char)in[i]];
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

long sl_percent_decode(char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) return -1;
            int h = sl_hex_digit(s[i + 1]), l = sl_hex_digit(s[i + 2]);
            if (h < 0 || l < 0) return -1;
            s[o++] = (char)(h * 16 + l);
            i += 2;
        } else {
            s[o++] = s[i];
        }
    }
    return (long)o;
}

int sl_gunzip(const char *in, size_t n, size_t max_bytes, char **out, size_t *out_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    /* 15 + 32: accept gzip or zlib headers */
    if (inflateInit2(&z, 15 + 32) != Z_OK) return SL_ENOMEM;
    size_t cap = n * 4 + 1024;
    if (cap > max_bytes + 1) cap = max_bytes + 1;
    char *buf = malloc(cap + 1);
    int rc = 0;
    if (buf == NULL) {
        rc = SL_ENOMEM;
        goto out;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    size_t len = 0;
    for (;;) {
        if (len == cap) {
            if (cap > max_bytes) {
                rc = SL_ETOOBIG;
                goto out;
            }
            size_t ncap = cap * 2 > max_bytes + 1 ? max_bytes + 1 : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (nb == NULL) {
                rc = SL_ENOMEM;
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        z.next_out = (Bytef *)buf + len;
        z.avail_out = (uInt)(cap - len);
        int zr = inflate(&z, Z_NO_FLUSH);
        len = cap - z.avail_out;
        if (zr == Z_STREAM_END) break;
        if (zr == Z_BUF_ERROR && z.avail_in == 0) {
            rc = SL_EINVAL; /* truncated */
            goto out;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            rc = SL_EINVAL;
            goto out;
        }
    }
    if (len > max_bytes) {
        rc = SL_ETOOBIG;
        goto out;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    buf = NULL;
out:
    free(buf);
    inflateEnd(&z);
    return rc;
}
