/* ack.c - the ingestion body read without a tree (ack.h). */
#include "ack.h"

void ack_scan(const ack_in_t *in, const char *body, size_t len, ack_out_t *out)
{
    ack_tree(in, body, len, out);
    out->delegated = 1;
}
