/* state.c - the records rule states are kept as (internal.h, "rule state
 * records"): one header for every kind, so that a change of layout is
 * refused rather than misread, and a bounded reader, so that a record cut
 * short or lying about its lengths is MDB_CORRUPTED, never a read past its
 * end. Each rule type lays out its own fixed part and items behind it. */
#include "internal.h"

#include <string.h>

_Static_assert(sizeof(trig_state_hdr_t) == 8, "the header is 8 bytes: its magic is the 8th");

int trig_state_is_rec(const MDB_val *v)
{
    return v->mv_size >= sizeof(trig_state_hdr_t) && ((const unsigned char *)v->mv_data)[7] == TRIG_STATE_MAGIC;
}

int trig_state_open(const MDB_val *v, uint8_t kind, uint8_t version, uint32_t *n, trig_rd_t *rd)
{
    trig_state_hdr_t h;
    if (!trig_state_is_rec(v)) return MDB_CORRUPTED;
    memcpy(&h, v->mv_data, sizeof(h));
    if (h.kind != kind || h.version != version) return MDB_CORRUPTED;
    *n = h.n;
    rd->p = (const unsigned char *)v->mv_data + sizeof(h);
    rd->left = v->mv_size - sizeof(h);
    return 0;
}

int trig_state_begin(sl_buf_t *b, uint8_t kind, uint8_t version, size_t n)
{
    if (n > UINT16_MAX) return SL_ETOOBIG;
    trig_state_hdr_t h = {.kind = kind, .version = version, .n = (uint16_t)n, .magic = TRIG_STATE_MAGIC};
    b->len = 0;
    return sl_buf_append(b, &h, sizeof(h)) ? SL_ENOMEM : 0;
}

const char *trig_rd_take(trig_rd_t *rd, size_t len)
{
    if (len > rd->left) return NULL;
    const char *p = (const char *)rd->p;
    rd->p += len;
    rd->left -= len;
    return p;
}

int trig_rd_copy(trig_rd_t *rd, void *out, size_t len)
{
    const char *p = trig_rd_take(rd, len);
    if (p == NULL) return MDB_CORRUPTED;
    memcpy(out, p, len);
    return 0;
}

void trig_state_report(FILE *out, const trig_rule_t *r, uint64_t person, const char *what, uint64_t *problems)
{
    fprintf(out, "rule %s: the state of p_%llu is not a %s record\n", r->name, (unsigned long long)person, what);
    (*problems)++;
}

int trig_state_verify(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, FILE *out,
                      uint64_t *problems, int (*check)(const MDB_val *v), const char *what)
{
    MDB_val v;
    int rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc == 0) rc = check(&v);
    if (rc == MDB_CORRUPTED) trig_state_report(out, r, person, what, problems);
    return rc == MDB_CORRUPTED || rc == MDB_NOTFOUND ? 0 : rc;
}
