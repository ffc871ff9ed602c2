/* static.c - the built-in files (sl_assets.h): GET/HEAD /sillage.js and its
 * IAB TCF adapter /sillage-tcf.js, the demo shop under /demo/, the /debug
 * page and the operator's /console. Each is compressed once at start;
 * answers carry an ETag, honour If-None-Match, and are gzipped when the
 * client accepts it. Only exact paths from the table are served, so there is
 * no file system path to traverse. /demo/ and /debug are off unless the
 * config enables them (they are on in the embedded demo); /console is always
 * there, and shows nothing without the admin token. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "http_int.h"
#include "sl_assets.h"

typedef struct static_file_s {
    const sl_asset_t *a;
    unsigned char *gz;
    size_t gz_len;
    char etag[40];
} static_file_t;

static int gzip_buf(const unsigned char *in, size_t n, unsigned char **out, size_t *out_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK) return SL_ENOMEM;
    size_t cap = deflateBound(&z, (uLong)n);
    *out = malloc(cap);
    if (*out == NULL) {
        deflateEnd(&z);
        return SL_ENOMEM;
    }
    z.next_in = (unsigned char *)in;
    z.avail_in = (uInt)n;
    z.next_out = *out;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    *out_len = z.total_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? 0 : SL_ENOMEM;
}

int http_static_init(sl_server_t *srv)
{
    srv->files = calloc(sl_n_assets ? sl_n_assets : 1, sizeof(static_file_t));
    if (srv->files == NULL) return SL_ENOMEM;
    srv->n_files = sl_n_assets;
    for (size_t i = 0; i < sl_n_assets; i++) {
        static_file_t *f = &srv->files[i];
        f->a = &sl_assets[i];
        sl_hash128_t h = sl_hash128(f->a->data, f->a->len, 0x5111a9e);
        snprintf(f->etag, sizeof(f->etag), "\"%016llx\"", (unsigned long long)h.lo);
        if (gzip_buf(f->a->data, f->a->len, &f->gz, &f->gz_len)) return SL_ENOMEM;
    }
    return 0;
}

void http_static_free(sl_server_t *srv)
{
    for (size_t i = 0; srv->files && i < srv->n_files; i++) free(srv->files[i].gz);
    free(srv->files);
    srv->files = NULL;
}

static int accepts_gzip(const char *ae)
{
    /* "gzip" listed without q=0 */
    for (const char *p = ae; p && (p = strstr(p, "gzip")) != NULL; p += 4) {
        const char *end = strchr(p, ',');
        const char *q = strstr(p, "q=");
        if (q && (end == NULL || q < end)) return strtod(q + 2, NULL) > 0;
        return 1;
    }
    return 0;
}

/* The demo's settings for its pages: the write key of the first source. */
static void demo_config(conn_t *c)
{
    const sl_config_t *cfg = c->srv->cfg;
    sl_buf_t b = {0};
    sl_buf_appends(&b, "window.SILLAGE_DEMO={writeKey:");
    const char *wk = cfg->n_sources ? cfg->sources[0].write_key : "";
    sl_buf_append_json_str(&b, wk, strlen(wk));
    sl_buf_appends(&b, "};\n");
    if (b.data == NULL) http_respond_error(c, 503, "out of memory");
    else http_respond(c, 200, "application/javascript; charset=utf-8", "Cache-Control: no-cache\r\n", b.data, b.len);
    sl_buf_free(&b);
}

int http_handle_static(conn_t *c, const char *path)
{
    sl_server_t *srv = c->srv;
    const sl_config_t *cfg = srv->cfg;
    req_t *r = c->req;
    int is_demo = strncmp(path, "/demo", 5) == 0 && (path[5] == '\0' || path[5] == '/');
    int is_debug = strcmp(path, "/debug") == 0 || strcmp(path, "/debug/") == 0;
    if ((is_demo && !cfg->demo_shop) || (is_debug && !cfg->debug_page)) return -1;
    if (strcmp(path, "/demo") == 0) {
        r->route = ROUTE_STATIC;
        static const char body[] = "/demo/\n";
        http_respond(c, 301, "text/plain; charset=utf-8", "Location: /demo/\r\n", body, sizeof(body) - 1);
        return 0;
    }
    if (strcmp(path, "/demo/") == 0) path = "/demo/index.html";
    if (strcmp(path, "/debug/") == 0) path = "/debug";
    int is_console = strcmp(path, "/console") == 0 || strcmp(path, "/console/") == 0;
    if (is_console) path = "/console"; /* always served: every call it makes needs the admin token */
    if (strcmp(path, "/demo/config.js") == 0) {
        r->route = ROUTE_STATIC;
        if (r->method != HTTP_GET && r->method != HTTP_HEAD) http_respond_error(c, 405, "use GET");
        else demo_config(c);
        return 0;
    }
    const static_file_t *f = NULL;
    for (size_t i = 0; i < srv->n_files && f == NULL; i++)
        if (strcmp(srv->files[i].a->path, path) == 0) f = &srv->files[i];
    if (f == NULL) return -1;
    r->route = ROUTE_STATIC;
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_respond_error(c, 405, "use GET");
        return 0;
    }
    int is_tag = strcmp(path, "/sillage.js") == 0 || strcmp(path, "/sillage-tcf.js") == 0;
    /* The admin pages run no inline script and load nothing from elsewhere:
     * an injected <script> or handler would not run even if a value escaped
     * esc() (defence in depth; their scripts are files of their own). */
    static const char admin_headers[] =
        "X-Frame-Options: DENY\r\nContent-Security-Policy: default-src 'none'; script-src 'self'; "
        "style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'\r\n";
    char h[600];
    snprintf(h, sizeof(h), "ETag: %s\r\nCache-Control: %s\r\nVary: Accept-Encoding\r\n%s", f->etag,
             is_tag ? "public, max-age=3600" : "no-cache",
             is_debug || is_console ? admin_headers : "");
    if (r->if_none_match && strstr(r->if_none_match, f->etag)) {
        http_respond(c, 304, NULL, h, "", 0);
        return 0;
    }
    if (accepts_gzip(r->accept_encoding)) {
        size_t n = strlen(h);
        snprintf(h + n, sizeof(h) - n, "Content-Encoding: gzip\r\n");
        http_respond(c, 200, f->a->content_type, h, (const char *)f->gz, f->gz_len);
    } else {
        http_respond(c, 200, f->a->content_type, h, (const char *)f->a->data, f->a->len);
    }
    return 0;
}
