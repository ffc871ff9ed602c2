/* attach.c - person attachments (sl_stitch.h): other components' bytes
 * about a person, kept at the end of the person's record. The stitcher
 * reads that record for every event, so an owner that reads and writes its
 * bytes in a later phase finds the record's page already in memory (and,
 * once written, already dirty in the transaction), where a database of its
 * own would cost one more B-tree descent per event (docs/ARCHITECTURE.md,
 * "Person attachments").
 *
 * The record's tail (ext_len bytes after the traits) is a list of entries
 * [tag u8][len u32, host order][len bytes], one per tag, in no set order. */
#include "stitch_int.h"

#include <stdlib.h>
#include <string.h>

#define ENTRY_HDR 5

/* The entry of tag in ext[0..n): its bytes in *out (0), or 0 with out empty
 * when there is none; MDB_CORRUPTED when the list does not parse. */
static int entry_find(const char *ext, size_t n, int tag, MDB_val *out, size_t *at)
{
    out->mv_size = 0;
    out->mv_data = NULL;
    size_t off = 0;
    while (off < n) {
        uint32_t len;
        if (n - off < ENTRY_HDR) return MDB_CORRUPTED;
        memcpy(&len, ext + off + 1, 4);
        if (len > n - off - ENTRY_HDR) return MDB_CORRUPTED;
        if ((unsigned char)ext[off] == tag) {
            out->mv_size = len;
            out->mv_data = (char *)ext + off + ENTRY_HDR;
            if (at) *at = off;
            return 0;
        }
        off += ENTRY_HDR + len;
    }
    return 0;
}

/* out = ext with tag's entry replaced by data[0..len) (len 0: removed) */
static int entry_replace(sl_buf_t *out, const char *ext, size_t n, int tag, const void *data, size_t len)
{
    MDB_val old;
    size_t at = 0;
    int rc = entry_find(ext, n, tag, &old, &at);
    if (rc) return rc;
    if (old.mv_data == NULL) { /* (ext may be NULL then: no arithmetic on it) */
        if (sl_buf_append(out, ext, n)) return SL_ENOMEM;
    } else {
        size_t resume = at + ENTRY_HDR + old.mv_size;
        if (sl_buf_append(out, ext, at) || sl_buf_append(out, ext + resume, n - resume)) return SL_ENOMEM;
    }
    if (len == 0) return 0;
    if (len > UINT32_MAX) return SL_ETOOBIG;
    unsigned char h[ENTRY_HDR] = {(unsigned char)tag};
    uint32_t l = (uint32_t)len;
    memcpy(h + 1, &l, 4);
    return sl_buf_append(out, h, ENTRY_HDR) || sl_buf_append(out, data, len) ? SL_ENOMEM : 0;
}

static struct stitch_kept_s *kept_of(sl_stitch_t *s, uint64_t person)
{
    for (size_t i = 0; i < s->n_kept; i++)
        if (s->kept[i].id == person) return &s->kept[i];
    return NULL;
}

int stitch_attach_keep(sl_stitch_t *s, const person_t *absorbed)
{
    /* kept even when empty: a person absorbed after it absorbed another in
     * the same event (a chain) takes the other's joined into it here, and
     * _put to a record already deleted would lose them */
    struct stitch_kept_s *k = kept_of(s, absorbed->id);
    if (k == NULL) {
        if (s->n_kept == s->cap_kept) {
            size_t cap = s->cap_kept ? 2 * s->cap_kept : 4;
            struct stitch_kept_s *grown = realloc(s->kept, cap * sizeof(*grown));
            if (grown == NULL) return SL_ENOMEM;
            memset(grown + s->cap_kept, 0, (cap - s->cap_kept) * sizeof(*grown));
            s->kept = grown;
            s->cap_kept = cap;
        }
        k = &s->kept[s->n_kept++];
        k->id = absorbed->id;
    }
    k->ext.len = 0;
    return sl_buf_append(&k->ext, absorbed->ext.data, absorbed->ext.len) ? SL_ENOMEM : 0;
}

void stitch_attach_clear(sl_stitch_t *s)
{
    s->n_kept = 0; /* (their buffers are kept for the next events) */
    s->ev_valid = 0;
}

void stitch_attach_free(sl_stitch_t *s)
{
    for (size_t i = 0; i < s->cap_kept; i++) sl_buf_free(&s->kept[i].ext);
    free(s->kept);
    s->kept = NULL;
    s->n_kept = s->cap_kept = 0;
    sl_buf_free(&s->attach_tmp);
    sl_buf_free(&s->ev_ext);
}

/* A stored person record's tail (the attachments) in *ext. */
static int record_split(const MDB_val *rec, MDB_val *ext)
{
    person_hdr_t h;
    uint32_t n;
    if (rec->mv_size < sizeof(h)) return MDB_CORRUPTED;
    memcpy(&h, rec->mv_data, sizeof(h));
    int rc = stitch_record_ext(&h, rec->mv_size, &n);
    if (rc) return rc;
    ext->mv_size = n;
    ext->mv_data = (char *)rec->mv_data + sizeof(h) + h.ids_len + h.traits_len;
    return 0;
}

int sl_stitch_attach_get(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int tag, MDB_val *out)
{
    MDB_val k = {8, &person}, rec, ext;
    int rc = mdb_get(txn, s->persons, &k, &rec);
    if (rc == 0) rc = record_split(&rec, &ext);
    if (rc == MDB_NOTFOUND) return SL_ENOTFOUND;
    return rc ? rc : entry_find(ext.mv_data, ext.mv_size, tag, out, NULL);
}

int sl_stitch_attach_step_get(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int tag, MDB_val *out)
{
    struct stitch_kept_s *k = kept_of(s, person);
    if (k) return entry_find(k->ext.data, k->ext.len, tag, out, NULL);
    if (s->ev_valid && person == s->ev_id) return entry_find(s->ev_ext.data, s->ev_ext.len, tag, out, NULL);
    return sl_stitch_attach_get(s, txn, person, tag, out);
}

int sl_stitch_attach_put(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int tag, const void *data, size_t len)
{
    if (tag <= 0 || tag > 255) return SL_EINVAL;
    sl_buf_t *t = &s->attach_tmp;
    t->len = 0;
    struct stitch_kept_s *k = kept_of(s, person);
    if (k) { /* absorbed earlier in this event: its owner's merge reads it from here */
        int rc = entry_replace(t, k->ext.data, k->ext.len, tag, data, len);
        if (rc) return rc;
        k->ext.len = 0;
        return sl_buf_append(&k->ext, t->data, t->len) ? SL_ENOMEM : 0;
    }
    /* one descent: the cursor that found the record writes it (a record of
     * the same size is written over in place) */
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->persons, &cur);
    if (rc) return rc;
    /* (MDB_SET leaves kk alone: a key returned would point into the page the write rearranges) */
    MDB_val kk = {8, &person}, rec, ext;
    if ((rc = mdb_cursor_get(cur, &kk, &rec, MDB_SET)) == 0 && (rc = record_split(&rec, &ext)) == 0) {
        size_t head = rec.mv_size - ext.mv_size; /* the header, identifiers and traits */
        /* copied first: the write moves the record's bytes */
        if (sl_buf_append(t, rec.mv_data, head)) rc = SL_ENOMEM;
        else rc = entry_replace(t, ext.mv_data, ext.mv_size, tag, data, len);
        if (rc == 0 && t->len - head > UINT32_MAX) rc = SL_ETOOBIG;
        if (rc == 0) {
            person_hdr_t h;
            memcpy(&h, t->data, sizeof(h));
            h.ext_len = (uint32_t)(t->len - head);
            h.ext_pad = 0; /* (a record from before the ledger: its order count's high word) */
            memcpy(t->data, &h, sizeof(h));
            MDB_val v = {t->len, t->data};
            rc = mdb_cursor_put(cur, &kk, &v, MDB_CURRENT);
            if (person == s->ev_id && s->ev_valid) { /* the event's person: its copy follows */
                s->ev_ext.len = 0;
                if (rc == 0 && sl_buf_append(&s->ev_ext, t->data + head, t->len - head)) s->ev_valid = 0;
                if (rc) s->ev_valid = 0;
            }
        }
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? SL_ENOTFOUND : rc;
}

int sl_stitch_attach_each(sl_stitch_t *s, MDB_txn *txn, int tag, int (*cb)(uint64_t person, const MDB_val *v, void *arg),
                          void *arg)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->persons, &cur);
    if (rc) return rc;
    MDB_val k, rec;
    for (rc = mdb_cursor_get(cur, &k, &rec, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &rec, MDB_NEXT)) {
        uint64_t person;
        MDB_val v;
        if (k.mv_size != 8) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&person, k.mv_data, 8);
        MDB_val ext;
        if ((rc = record_split(&rec, &ext))) break;
        if ((rc = entry_find(ext.mv_data, ext.mv_size, tag, &v, NULL)) || (rc = cb(person, &v, arg))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int sl_stitch_person_ids(sl_stitch_t *s, MDB_txn *txn, uint64_t from, uint64_t *ids, size_t cap, size_t *n)
{
    *n = 0;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->persons, &cur);
    if (rc) return rc;
    MDB_val k = {8, &from}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && *n < cap;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&ids[(*n)++], k.mv_data, 8);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}
