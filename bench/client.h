/* client.h - a blocking HTTP/1.1 client on one keep-alive connection, for the
 * bench tool's scripted scenarios (identify latency, trigger latency), where
 * one request at a time is the point. Responses are parsed with llhttp. */
#ifndef SL_BENCH_CLIENT_H
#define SL_BENCH_CLIENT_H

#include <stddef.h>

#include "sl_common.h"

typedef struct bclient_s bclient_t;

/* Parses "http://IP:PORT" into host and port; 0 or -1. */
int bclient_parse_url(const char *url, char *host, size_t host_len, int *port);

/* Connects to host:port (an IPv4 or IPv6 literal). NULL on failure, with a
 * message on stderr. */
bclient_t *bclient_new(const char *host, int port);
void bclient_free(bclient_t *c);

/* Sends one request and waits for the whole answer. headers: extra header
 * lines, each ending in "\r\n" (or NULL). Returns the status code, the body
 * in *body (valid until the next request), or -1 on a connection error (the
 * next request reconnects). */
int bclient_request(bclient_t *c, const char *method, const char *path, const char *headers, const char *body,
                    size_t body_len, const sl_buf_t **resp_body);

/* Standard base64 of in[0..n) into out (4 * ((n + 2) / 3) + 1 bytes). */
void bclient_base64(const unsigned char *in, size_t n, char *out);

/* `sillage-bench identify ...` (identify.c); argv[0] is "identify". */
int identify_mode(int argc, char **argv);
/* `sillage-bench triggers ...` (triggers.c). */
int triggers_mode(int argc, char **argv);

/* The value of a Prometheus sample "name value" in a /metrics body, or -1. */
double bclient_metric(const sl_buf_t *metrics, const char *name);

#endif
