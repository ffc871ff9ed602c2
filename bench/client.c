/* client.c - see client.h. */
#define _GNU_SOURCE
#include "client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>

struct bclient_s {
    char host[256];
    int port;
    int fd;
    llhttp_t parser;
    llhttp_settings_t settings;
    sl_buf_t req, body;
    int complete;
};

int bclient_parse_url(const char *url, char *host, size_t host_len, int *port)
{
    const char *p = strncmp(url, "http://", 7) == 0 ? url + 7 : NULL;
    const char *colon = p ? strrchr(p, ':') : NULL;
    if (colon == NULL || (size_t)(colon - p) >= host_len || colon == p) return -1;
    char *end;
    long n = strtol(colon + 1, &end, 10);
    if (n <= 0 || n > 65535 || (*end && strcmp(end, "/") != 0)) return -1;
    const char *h = p, *he = colon;
    if (*h == '[' && he[-1] == ']') h++, he--;
    memcpy(host, h, (size_t)(he - h));
    host[he - h] = '\0';
    *port = (int)n;
    return 0;
}

void bclient_base64(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[j++] = t[v >> 18 & 63];
        out[j++] = t[v >> 12 & 63];
        out[j++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[j++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[j] = 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    bclient_t *c = p->data;
    return sl_buf_append(&c->body, at, n) ? -1 : 0;
}

static int on_complete(llhttp_t *p)
{
    bclient_t *c = p->data;
    c->complete = 1;
    return HPE_PAUSED;
}

static int do_connect(bclient_t *c)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, c->host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)c->port);
        len = sizeof(*a4);
    } else if (inet_pton(AF_INET6, c->host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)c->port);
        len = sizeof(*a6);
    } else {
        fprintf(stderr, "bench client: %s is not an IP address\n", c->host);
        return -1;
    }
    c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&ss, len) != 0) {
        fprintf(stderr, "bench client: connect %s:%d: %s\n", c->host, c->port, strerror(errno));
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

bclient_t *bclient_new(const char *host, int port)
{
    bclient_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    snprintf(c->host, sizeof(c->host), "%s", host);
    c->port = port;
    llhttp_settings_init(&c->settings);
    c->settings.on_body = on_body;
    c->settings.on_message_complete = on_complete;
    if (do_connect(c)) {
        free(c);
        return NULL;
    }
    return c;
}

void bclient_free(bclient_t *c)
{
    if (c == NULL) return;
    if (c->fd >= 0) close(c->fd);
    sl_buf_free(&c->req);
    sl_buf_free(&c->body);
    free(c);
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int bclient_request(bclient_t *c, const char *method, const char *path, const char *headers, const char *body,
                    size_t body_len, const sl_buf_t **resp_body)
{
    if (c->fd < 0 && do_connect(c)) return -1;
    c->req.len = 0;
    sl_buf_printf(&c->req, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %zu\r\n\r\n", method, path, c->host,
                  c->port, headers ? headers : "", body_len);
    if (body_len) sl_buf_append(&c->req, body, body_len);
    if (c->req.data == NULL) return -1;
    c->body.len = 0;
    c->complete = 0;
    llhttp_init(&c->parser, HTTP_RESPONSE, &c->settings);
    c->parser.data = c;
    if (send_all(c->fd, c->req.data, c->req.len)) goto fail;
    char buf[16384];
    while (!c->complete) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) goto fail;
        llhttp_errno_t e = llhttp_execute(&c->parser, buf, (size_t)n);
        if (e != HPE_OK && e != HPE_PAUSED) goto fail;
    }
    if (resp_body) *resp_body = &c->body;
    int status = c->parser.status_code;
    if (!llhttp_should_keep_alive(&c->parser)) {
        close(c->fd);
        c->fd = -1;
    }
    return status;
fail:
    close(c->fd);
    c->fd = -1;
    return -1;
}

double bclient_metric(const sl_buf_t *m, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = m->data, *end = m->data + m->len; p && p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if ((size_t)(end - p) > n && memcmp(p, name, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
        p = nl ? nl + 1 : NULL;
    }
    return -1;
}
