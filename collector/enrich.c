/* enrich.c - client address, IP anonymisation, GeoIP lookups. */
#include "sl_collector.h"

#include <arpa/inet.h>
#include <maxminddb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int sl_ipnet_parse(const char *s, size_t n, sl_ipnet_t *out)
{
    char buf[64];
    while (n > 0 && (*s == ' ' || *s == '\t')) s++, n--;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    if (n == 0 || n >= sizeof(buf)) return SL_EINVAL;
    memcpy(buf, s, n);
    buf[n] = '\0';
    int prefix = -1;
    char *slash = strchr(buf, '/');
    if (slash) {
        *slash = '\0';
        char *end;
        long p = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || p < 0 || p > 128) return SL_EINVAL;
        prefix = (int)p;
    }
    /* "[::1]" as some proxies write it */
    char *a = buf;
    size_t al = strlen(a);
    if (al >= 2 && a[0] == '[' && a[al - 1] == ']') {
        a[al - 1] = '\0';
        a++;
    }
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, a, out->addr) == 1) {
        out->family = AF_INET;
        if (prefix > 32) return SL_EINVAL;
        out->prefix = prefix < 0 ? 32 : prefix;
        return 0;
    }
    if (inet_pton(AF_INET6, a, out->addr) == 1) {
        out->family = AF_INET6;
        out->prefix = prefix < 0 ? 128 : prefix;
        if (memcmp(out->addr, v4mapped, 12) == 0 && out->prefix >= 96) {
            memmove(out->addr, out->addr + 12, 4);
            memset(out->addr + 4, 0, 12);
            out->family = AF_INET;
            out->prefix -= 96;
        }
        return 0;
    }
    return SL_EINVAL;
}

int sl_ipnet_contains(const sl_ipnet_t *net, const sl_ipnet_t *ip)
{
    if (net->family != ip->family) return 0;
    int bits = net->prefix, i = 0;
    for (; bits >= 8; bits -= 8, i++)
        if (net->addr[i] != ip->addr[i]) return 0;
    if (bits == 0) return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - bits));
    return (net->addr[i] & mask) == (ip->addr[i] & mask);
}

void sl_ip_anonymize(sl_ipnet_t *ip)
{
    if (ip->family == AF_INET) ip->addr[3] = 0;
    else memset(ip->addr + 6, 0, 10);
}

void sl_ip_format(const sl_ipnet_t *ip, char out[46])
{
    if (inet_ntop(ip->family, ip->addr, out, 46) == NULL) out[0] = '\0';
}

static int is_trusted(const sl_ipnet_t *ip, const sl_ipnet_t *trusted, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (sl_ipnet_contains(&trusted[i], ip)) return 1;
    return 0;
}

void sl_client_ip(const sl_ipnet_t *peer, const char *xff, size_t xff_len,
                  const sl_ipnet_t *trusted, size_t n_trusted, sl_ipnet_t *out)
{
    *out = *peer;
    if (xff == NULL || xff_len == 0 || !is_trusted(peer, trusted, n_trusted)) return;
    /* Walk right to left: each hop appended the address it saw. The first
     * one not belonging to our proxies is the client. */
    size_t end = xff_len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',') start--;
        sl_ipnet_t hop;
        if (sl_ipnet_parse(xff + start, end - start, &hop) != 0) return; /* garbage: keep the last good */
        hop.prefix = hop.family == AF_INET ? 32 : 128;
        *out = hop;
        if (!is_trusted(&hop, trusted, n_trusted)) return;
        end = start > 0 ? start - 1 : 0;
    }
}

/* ---- GeoIP ----------------------------------------------------------------- */

struct sl_geo_s {
    MMDB_s mmdb;
};

int sl_geo_open(sl_geo_t **out, const char *path)
{
    sl_geo_t *g = calloc(1, sizeof(*g));
    if (g == NULL) return SL_ENOMEM;
    int rc = MMDB_open(path, MMDB_MODE_MMAP, &g->mmdb);
    if (rc != MMDB_SUCCESS) {
        SL_ERROR("geoip_db %s: %s", path, MMDB_strerror(rc));
        free(g);
        return SL_EINVAL;
    }
    SL_INFO("GeoIP database %s (%s, %llu nodes)", path, g->mmdb.metadata.database_type,
            (unsigned long long)g->mmdb.metadata.node_count);
    *out = g;
    return 0;
}

void sl_geo_close(sl_geo_t *g)
{
    if (g == NULL) return;
    MMDB_close(&g->mmdb);
    free(g);
}

static void add_string(cJSON *obj, const char *name, MMDB_entry_s *e, const char *const *path)
{
    MMDB_entry_data_s d;
    if (cJSON_GetObjectItemCaseSensitive(obj, name)) return;
    if (MMDB_aget_value(e, &d, path) != MMDB_SUCCESS || !d.has_data) return;
    if (d.type != MMDB_DATA_TYPE_UTF8_STRING || d.data_size == 0 || d.data_size > 256) return;
    char buf[257];
    memcpy(buf, d.utf8_string, d.data_size);
    buf[d.data_size] = '\0';
    cJSON_AddStringToObject(obj, name, buf);
}

static void add_number(cJSON *obj, const char *name, MMDB_entry_s *e, const char *const *path)
{
    MMDB_entry_data_s d;
    if (MMDB_aget_value(e, &d, path) != MMDB_SUCCESS || !d.has_data) return;
    double v;
    if (d.type == MMDB_DATA_TYPE_DOUBLE) v = d.double_value;
    else if (d.type == MMDB_DATA_TYPE_FLOAT) v = d.float_value;
    else return;
    cJSON_AddNumberToObject(obj, name, v);
}

cJSON *sl_geo_lookup(sl_geo_t *g, const sl_ipnet_t *ip)
{
    if (g == NULL) return NULL;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (ip->family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, ip->addr, 4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, ip->addr, 16);
    }
    int mmerr;
    MMDB_lookup_result_s r = MMDB_lookup_sockaddr(&g->mmdb, (struct sockaddr *)&ss, &mmerr);
    if (mmerr != MMDB_SUCCESS || !r.found_entry) return NULL;
    cJSON *loc = cJSON_CreateObject();
    if (loc == NULL) return NULL;
    /* MaxMind GeoIP2/GeoLite2 City and Country schema */
    static const char *const p_cc[] = {"country", "iso_code", NULL};
    static const char *const p_cn[] = {"country", "names", "en", NULL};
    static const char *const p_rn[] = {"subdivisions", "0", "names", "en", NULL};
    static const char *const p_rc[] = {"subdivisions", "0", "iso_code", NULL};
    static const char *const p_city[] = {"city", "names", "en", NULL};
    static const char *const p_post[] = {"postal", "code", NULL};
    static const char *const p_lat[] = {"location", "latitude", NULL};
    static const char *const p_lon[] = {"location", "longitude", NULL};
    static const char *const p_tz[] = {"location", "time_zone", NULL};
    /* ip-location-db (country_code) and DB-IP lite style flat schemas */
    static const char *const p_cc2[] = {"country_code", NULL};
    static const char *const p_city2[] = {"city", NULL};
    static const char *const p_rn2[] = {"state1", NULL};
    static const char *const p_lat2[] = {"latitude", NULL};
    static const char *const p_lon2[] = {"longitude", NULL};
    static const char *const p_tz2[] = {"timezone", NULL};
    add_string(loc, "country", &r.entry, p_cc);
    add_string(loc, "country", &r.entry, p_cc2);
    add_string(loc, "country_name", &r.entry, p_cn);
    add_string(loc, "region", &r.entry, p_rn);
    add_string(loc, "region", &r.entry, p_rn2);
    add_string(loc, "region_code", &r.entry, p_rc);
    add_string(loc, "city", &r.entry, p_city);
    add_string(loc, "city", &r.entry, p_city2);
    add_string(loc, "postal_code", &r.entry, p_post);
    add_number(loc, "latitude", &r.entry, p_lat);
    if (!cJSON_GetObjectItemCaseSensitive(loc, "latitude")) add_number(loc, "latitude", &r.entry, p_lat2);
    add_number(loc, "longitude", &r.entry, p_lon);
    if (!cJSON_GetObjectItemCaseSensitive(loc, "longitude")) add_number(loc, "longitude", &r.entry, p_lon2);
    add_string(loc, "timezone", &r.entry, p_tz);
    add_string(loc, "timezone", &r.entry, p_tz2);
    if (loc->child == NULL) {
        cJSON_Delete(loc);
        return NULL;
    }
    return loc;
}
