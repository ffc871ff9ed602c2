/* read.c - audiences read from any thread: the list with its KPIs, the
 * member export, an audience's KPIs and history, sillage verify
 * (sl_audiences.h, docs/AUDIENCES.md). */
#include "aud_int.h"

#include "sl_feed.h"
#include "sl_stitch.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ,"members":...,"revenue_per_member":... of k */
/* 1 when, in the snapshot of txn, audience d is not built: its walk is
 * under way, or the store has not taken this definition yet (a reload
 * switched the config; its transaction has not committed). Read in the
 * same snapshot as the counts, so the two agree. */
static int building_in(sl_aud_t *a, MDB_txn *txn, const aud_def_t *d, def_rec_t *r)
{
    MDB_val k = {4, (void *)&d->id}, v;
    memset(r, 0, sizeof(*r));
    if (!a->defs) return 0; /* (a store read before audiences existed: nothing kept, nothing to build) */
    if (mdb_get(txn, a->defs, &k, &v) != 0 || v.mv_size < sizeof(*r)) return 1;
    memcpy(r, v.mv_data, sizeof(*r));
    return r->building != 0 || r->defhash != d->defhash;
}

static void kpi_print(sl_buf_t *out, const kpi_t *k)
{
    sl_buf_printf(out, ",\"members\":%llu,\"identified\":%llu,\"with_email\":%llu,\"orders\":%llu,\"revenue\":",
                  (unsigned long long)k->members, (unsigned long long)k->identified, (unsigned long long)k->with_email,
                  (unsigned long long)k->orders);
    sl_buf_append_amount(out, k->revenue);
    sl_buf_appends(out, ",\"aov\":");
    if (k->orders) sl_buf_append_amount(out, k->revenue / (double)k->orders);
    else sl_buf_appends(out, "null");
    sl_buf_appends(out, ",\"revenue_per_member\":");
    if (k->members) sl_buf_append_amount(out, k->revenue / (double)k->members);
    else sl_buf_appends(out, "null");
}

int sl_aud_list(sl_aud_t *a, MDB_txn *txn, sl_buf_t *out)
{
    const aud_conf_t *c = aud_conf(a);
    sl_buf_appends(out, "{\"audiences\":[");
    for (size_t i = 0; i < c->n; i++) {
        kpi_t k = {0};
        if (atomic_load(&a->have_dbs)) {
            int rc = aud_kpi_get(a, txn, c->v[i].id, &k);
            if (rc) return rc;
        }
        sl_buf_appends(out, i ? ",{\"name\":" : "{\"name\":");
        sl_buf_append_json_str(out, c->v[i].name, strlen(c->v[i].name));
        def_rec_t r = {0};
        if (building_in(a, txn, &c->v[i], &r)) /* (the walk's progress: the next person it visits) */
            sl_buf_printf(out, ",\"status\":\"building\",\"building\":true,\"progress\":{\"next\":\"p_%llu\"}",
                          (unsigned long long)r.next);
        else sl_buf_appends(out, ",\"status\":\"live\",\"building\":false");
        kpi_print(out, &k);
        sl_buf_appends(out, "}");
    }
    sl_buf_appends(out, "]}");
    return out->data ? 0 : SL_ENOMEM;
}

/* ---- the export ---- */

int sl_aud_has(sl_aud_t *a, const char *name) { return aud_conf_defines(aud_conf(a), name); }

/* a CSV field per RFC 4180: quoted when it holds a comma, a quote or a line break */
static void csv_field(sl_buf_t *b, const char *v, size_t n, int first)
{
    if (!first) sl_buf_appends(b, ",");
    if (v == NULL) return;
    size_t plain = 0; /* (v is n bytes, not always NUL-terminated: entered_at's) */
    while (plain < n && v[plain] != ',' && v[plain] != '"' && v[plain] != '\r' && v[plain] != '\n') plain++;
    if (plain == n) {
        sl_buf_append(b, v, n);
        return;
    }
    sl_buf_appends(b, "\"");
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '"') sl_buf_appends(b, "\"");
        sl_buf_append(b, v + i, 1);
    }
    sl_buf_appends(b, "\"");
}

static const struct {
    unsigned bit;
    const char *name;
} export_fields[] = {{SL_AUD_F_ID, "id"}, {SL_AUD_F_USER_ID, "user_id"}, {SL_AUD_F_EMAIL, "email"},
                     {SL_AUD_F_ENTERED_AT, "entered_at"}, {SL_AUD_F_UNSUBSCRIBED, "unsubscribed"}};
#define N_EXPORT_FIELDS (sizeof(export_fields) / sizeof(export_fields[0]))

/* one member, as x asks */
static int export_one(sl_aud_t *a, MDB_txn *txn, const sl_aud_export_t *x, uint64_t person, int64_t entered,
                      int unsub, sl_buf_t *slim, sl_arena_t *arena, sl_buf_t *out)
{
    slim->len = 0;
    int rc = sl_stitch_person_slim(a->stitch, txn, person, slim, NULL);
    if (rc) return rc;
    sl_jval_t root = sl_jroot(slim->data, slim->len);
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    int lead = 0;
    if (x->format != SL_AUD_CSV) sl_buf_appends(out, x->format == SL_AUD_JSON && x->n ? ",{" : "{");
    for (size_t f = 0; f < N_EXPORT_FIELDS; f++) {
        if (!(x->fields & export_fields[f].bit)) continue;
        char tmp[64];
        const char *v = NULL; /* the value's text (NULL: null) */
        size_t vn = 0;
        int quote = 1;        /* a JSON string (else a literal) */
        sl_jval_t jv = {0};
        switch (export_fields[f].bit) {
        case SL_AUD_F_ID:
            vn = sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, person}, tmp);
            v = tmp;
            break;
        case SL_AUD_F_USER_ID:
        case SL_AUD_F_EMAIL:
            jv = sl_jget(root, export_fields[f].name);
            if (sl_jtype(jv) == SL_JSTR) {
                size_t len;
                v = sl_jstr(jv, arena, &len);
                vn = v ? len : 0;
            }
            if (v && export_fields[f].bit == SL_AUD_F_EMAIL && x->hash_email) {
                unsigned char md[SHA256_DIGEST_LENGTH];
                SHA256((const unsigned char *)v, vn, md);
                for (size_t i = 0; i < sizeof(md); i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
                v = hex;
                vn = 2 * SHA256_DIGEST_LENGTH;
            }
            break;
        case SL_AUD_F_ENTERED_AT: {
            sl_buf_t t = {0};
            sl_buf_append_iso(&t, entered); /* "\"...\"" */
            if (t.data && t.len >= 2 && t.len - 2 < sizeof(tmp)) {
                memcpy(tmp, t.data + 1, t.len - 2);
                vn = t.len - 2;
                v = tmp;
            }
            sl_buf_free(&t);
            break;
        }
        default: /* unsubscribed */
            v = unsub ? "true" : "false";
            vn = strlen(v);
            quote = 0;
        }
        if (x->format == SL_AUD_CSV) {
            csv_field(out, v, vn, !lead++);
            continue;
        }
        if (lead++) sl_buf_appends(out, ",");
        sl_buf_append_json_str(out, export_fields[f].name, strlen(export_fields[f].name));
        sl_buf_appends(out, ":");
        if (v == NULL) sl_buf_appends(out, "null");
        else if (quote) sl_buf_append_json_str(out, v, vn);
        else sl_buf_append(out, v, vn);
    }
    sl_buf_appends(out, x->format == SL_AUD_JSON ? "}" : x->format == SL_AUD_NDJSON ? "}\n" : "\r\n");
    return out->data ? 0 : SL_ENOMEM;
}

int sl_aud_members(sl_aud_t *a, MDB_txn *txn, const char *name, sl_aud_export_t *x, sl_buf_t *out)
{
    const aud_conf_t *c = aud_conf(a);
    const aud_def_t *d = NULL;
    for (size_t i = 0; i < c->n && !d; i++)
        if (strcmp(c->v[i].name, name) == 0) d = &c->v[i];
    if (d == NULL) return SL_ENOTFOUND;
    x->n = 0;
    x->next = 0;
    int rc = sl_feed_last(a->feed, txn, &x->position);
    if (rc) return rc;
    if (x->format == SL_AUD_JSON) {
        sl_buf_appends(out, "{\"audience\":");
        sl_buf_append_json_str(out, d->name, strlen(d->name));
        sl_buf_printf(out, ",\"position\":%llu,\"members\":[", (unsigned long long)x->position);
    } else if (x->format == SL_AUD_CSV) {
        int lead = 0;
        for (size_t f = 0; f < N_EXPORT_FIELDS; f++)
            if (x->fields & export_fields[f].bit) {
                if (lead++) sl_buf_appends(out, ",");
                sl_buf_appends(out, export_fields[f].name);
            }
        sl_buf_appends(out, "\r\n");
    }
    MDB_cursor *cur = NULL;
    sl_buf_t slim = {0};
    sl_arena_t arena; /* (its own: readers run at once) */
    sl_arena_init(&arena);
    uint64_t last = 0;
    if (atomic_load(&a->have_dbs) && (rc = mdb_cursor_open(txn, a->members, &cur)) == 0) {
        unsigned char key[12];
        aud_member_key(key, d->id, x->after + 1 > x->after ? x->after + 1 : x->after);
        MDB_val k = {12, key}, v;
        size_t scanned = 0;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (k.mv_size != 12 || memcmp(k.mv_data, key, 4) != 0) break; /* another audience */
            /* more follow; a page also stops after reading 4 × limit entries
             * (members without the audience's consent are read, not listed) */
            if (x->n == x->limit || (last && scanned >= 4 * x->limit)) {
                x->next = last;
                break;
            }
            scanned++;
            uint64_t person = sl_be64_get((const unsigned char *)k.mv_data + 4);
            mval_t m; /* (either layout: the time alone, or with the KPIs' contribution) */
            aud_mval_read(&v, &m);
            int64_t entered = m.entered;
            last = person;
            int ok = 1, unsub = 0;
            const char *why = "";
            if ((rc = sl_stitch_consent_check(a->stitch, txn, person, NULL, &ok, &why))) break;
            unsub = !ok;
            if (d->requires_consent) {
                if ((rc = sl_stitch_consent_check(a->stitch, txn, person, d->requires_consent, &ok, &why))) break;
                if (!ok && strcmp(why, "unsubscribed") != 0) continue; /* not granted: not listed */
            }
            sl_arena_reset(&arena);
            if ((rc = export_one(a, txn, x, person, entered, unsub, &slim, &arena, out)) == SL_ENOTFOUND)
                continue; /* gone since: not listed (rc is the cursor's again) */
            if (rc) break;
            x->n++;
        }
        if (rc == MDB_NOTFOUND) rc = 0;
        mdb_cursor_close(cur);
    }
    sl_buf_free(&slim);
    sl_arena_free(&arena);
    if (rc) return rc;
    if (x->format == SL_AUD_JSON) {
        sl_buf_appends(out, "],\"next\":");
        if (x->next) {
            char pid[SL_ENTITY_STR_BYTES];
            sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, x->next}, pid);
            sl_buf_printf(out, "\"%s\"}", pid);
        } else {
            sl_buf_appends(out, "null}");
        }
    }
    return out->data ? 0 : SL_ENOMEM;
}


/* ---- sillage verify ---- */

typedef struct {
    sl_aud_t *a;
    MDB_txn *txn;
    int64_t now;
    FILE *out;
    uint64_t *persons, *problems, notes;
    kpi_t sums[SL_AUD_MAX];      /* the members entries added up */
    int rc;
} verify_t;

static int verify_person(uint64_t person, const MDB_val *v, void *arg)
{
    verify_t *q = arg;
    sl_aud_t *a = q->a;
    const aud_conf_t *c = aud_conf(a);
    uint32_t ids[SL_AUD_MAX];
    size_t n;
    int evaluated, rc = aud_att_read(v, ids, &n, &evaluated);
    ++*q->persons;
    if (rc) {
        fprintf(q->out, "audiences: p_%llu's memberships are unreadable\n", (unsigned long long)person);
        ++*q->problems;
        return 0;
    }
    if (!evaluated) return 0; /* never evaluated since audiences were configured: its next event does it */
    view_t vw = {a, q->txn, person, 0};
    a->view_built = 0;
    for (size_t i = 0; i < c->n; i++) {
        const aud_def_t *d = &c->v[i];
        def_rec_t r;
        if (building_in(a, q->txn, d, &r)) continue; /* being built: its members are not all there yet */
        int in = 0;
        for (size_t k = 0; k < n; k++) in |= ids[k] == d->id;
        unsigned char key[12];
        aud_member_key(key, d->id, person);
        MDB_val k = {12, key}, ev;
        int listed = (rc = mdb_get(q->txn, a->members, &k, &ev)) == 0;
        if (rc && rc != MDB_NOTFOUND) return rc;
        if (in != listed) {
            fprintf(q->out, "audiences: p_%llu is %s %s by its record but %s in the members index\n",
                    (unsigned long long)person, in ? "in" : "not in", d->name, listed ? "listed" : "not listed");
            ++*q->problems;
        }
        sl_rules_ctx_t ctx = {.now_ms = q->now, .profile = aud_person_view, .profile_arg = &vw};
        int pass = sl_rules_eval(d->where, &ctx);
        if (pass && !d->include_anonymous) pass = aud_view_identified(&vw);
        if (vw.rc) return vw.rc;
        if (pass == in) continue;
        int by_time = (d->reads & (R_SEEN | R_COMPUTED)) != 0;
        fprintf(q->out, "audiences: p_%llu is %s %s, its condition now says %s%s\n", (unsigned long long)person,
                in ? "in" : "not in", d->name, pass ? "in" : "out",
                by_time ? " (it reads times or computed fields: time alone may have moved it, a note)" : "");
        if (by_time) q->notes++;
        else ++*q->problems;
    }
    return 0;
}

int sl_aud_verify(sl_aud_t *a, MDB_txn *txn, int64_t now, FILE *out, uint64_t *persons, uint64_t *problems)
{
    const aud_conf_t *c = aud_conf(a);
    if (c->n == 0 || !atomic_load(&a->have_dbs)) return 0;
    verify_t q = {.a = a, .txn = txn, .now = now, .out = out, .persons = persons, .problems = problems};
    int rc = sl_stitch_attach_each(a->stitch, txn, SL_ATTACH_AUDIENCES, verify_person, &q);
    if (rc) return rc;
    /* the index the other way, and the counts */
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, a->members, &cur))) return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 12) {
            fprintf(out, "audiences: a members entry of %zu bytes\n", k.mv_size);
            ++*problems;
            continue;
        }
        const unsigned char *p = k.mv_data;
        uint32_t id = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        uint64_t person = sl_be64_get(p + 4);
        size_t i = 0;
        while (i < c->n && c->v[i].id != id) i++;
        if (i == c->n) continue; /* an audience no longer configured (docs/AUDIENCES.md, "Not yet") */
        mval_t m;
        aud_mval_read(&v, &m);
        kpi_t *t = &q.sums[i];
        t->members++;
        t->identified += (m.flags & M_IDENTIFIED) != 0;
        t->with_email += (m.flags & M_EMAIL) != 0;
        t->orders += m.orders;
        t->revenue += m.revenue;
        /* what the entry says the person adds, against the person now */
        mval_t now_m;
        if ((rc = aud_contribution(a, txn, person, now, &now_m))) break;
        if (now_m.flags != m.flags || now_m.orders != m.orders || now_m.revenue != m.revenue) {
            fprintf(out, "audiences: p_%llu's entry in %s adds %u orders and %.2f of revenue (flags %u), the person "
                         "now %u, %.2f (flags %u)\n", (unsigned long long)person, c->v[i].name, m.orders, m.revenue,
                    m.flags, now_m.orders, now_m.revenue, now_m.flags);
            ++*problems;
        }
        MDB_val att;
        uint32_t ids[SL_AUD_MAX];
        size_t n = 0;
        int evaluated, in = 0, r = sl_stitch_attach_get(a->stitch, txn, person, SL_ATTACH_AUDIENCES, &att);
        if (r == 0 && aud_att_read(&att, ids, &n, &evaluated) == 0)
            for (size_t j = 0; j < n; j++) in |= ids[j] == id;
        else if (r && r != SL_ENOTFOUND) {
            rc = r;
            break;
        }
        if (!in) {
            fprintf(out, "audiences: p_%llu is listed in %s but %s\n", (unsigned long long)person, c->v[i].name,
                    r == SL_ENOTFOUND ? "no such person exists" : "its record says it is not in it");
            ++*problems;
        }
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) return rc;
    for (size_t i = 0; i < c->n; i++) {
        kpi_t kept;
        if ((rc = aud_kpi_get(a, txn, c->v[i].id, &kept))) return rc;
        const kpi_t *t = &q.sums[i];
        double tol = 1e-6 * (t->revenue < 0 ? -t->revenue : t->revenue) + 0.005;
        if (kept.members != t->members || kept.identified != t->identified || kept.with_email != t->with_email ||
            kept.orders != t->orders || kept.revenue - t->revenue > tol || t->revenue - kept.revenue > tol) {
            fprintf(out, "audiences: %s counts %llu members (%llu identified, %llu with e-mail, %llu orders, %.2f), "
                         "its index lists %llu (%llu, %llu, %llu, %.2f)\n", c->v[i].name,
                    (unsigned long long)kept.members, (unsigned long long)kept.identified,
                    (unsigned long long)kept.with_email, (unsigned long long)kept.orders, kept.revenue,
                    (unsigned long long)t->members, (unsigned long long)t->identified,
                    (unsigned long long)t->with_email, (unsigned long long)t->orders, t->revenue);
            ++*problems;
        }
    }
    if (q.notes) fprintf(out, "audiences: %llu memberships may have moved with time alone (notes above)\n",
                         (unsigned long long)q.notes);
    return 0;
}

/* ---- KPIs read ---- */

static const aud_def_t *def_named(const aud_conf_t *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->v[i].name, name) == 0) return &c->v[i];
    return NULL;
}


int sl_aud_kpis(sl_aud_t *a, MDB_txn *txn, const char *name, int64_t period_ms, int days, size_t limit, int64_t now,
                sl_buf_t *out)
{
    const aud_def_t *d = def_named(aud_conf(a), name);
    if (d == NULL) return SL_ENOTFOUND;
    kpi_t k = {0};
    int rc = atomic_load(&a->have_dbs) ? aud_kpi_get(a, txn, d->id, &k) : 0;
    if (rc) return rc;
    sl_buf_appends(out, "{\"audience\":");
    sl_buf_append_json_str(out, d->name, strlen(d->name));
    kpi_print(out, &k);
    /* the history, oldest day first */
    sl_buf_appends(out, ",\"history\":[");
    int64_t today = sl_local_day(now);
    if (atomic_load(&a->have_dbs) && a->hist) {
        MDB_cursor *cur;
        if ((rc = mdb_cursor_open(txn, a->hist, &cur))) return rc;
        unsigned char key[8];
        aud_hist_key(key, d->id, today - days + 1);
        MDB_val kk = {8, key}, v;
        int lead = 0;
        for (rc = mdb_cursor_get(cur, &kk, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &kk, &v, MDB_NEXT)) {
            const unsigned char *p = kk.mv_data;
            if (kk.mv_size != 8 || memcmp(p, key, 4) != 0) break;
            int64_t day = (int64_t)(int32_t)((uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7]);
            if (day > today) break;
            hist_t h;
            if (v.mv_size != sizeof(h)) continue;
            memcpy(&h, v.mv_data, sizeof(h));
            sl_buf_appends(out, lead++ ? ",{\"day\":" : "{\"day\":");
            sl_buf_append_day(out, day);
            sl_buf_printf(out, ",\"members\":%llu,\"entered\":%u,\"exited\":%u}", (unsigned long long)h.members,
                          h.entered, h.exited);
        }
        mdb_cursor_close(cur);
        if (rc != MDB_NOTFOUND && rc != 0) return rc; /* (0: the next audience's, or a later day) */
        rc = 0;
    }
    sl_buf_appends(out, "]");
    /* the period, over the members */
    uint64_t read = 0, active = 0, base = 0, churned = 0, one = 0, two = 0;
    int complete = 1;
    if (atomic_load(&a->have_dbs)) {
        MDB_cursor *cur;
        if ((rc = mdb_cursor_open(txn, a->members, &cur))) return rc;
        unsigned char key[12];
        aud_member_key(key, d->id, 0);
        MDB_val kk = {12, key}, v;
        int64_t from = now - period_ms;
        for (rc = mdb_cursor_get(cur, &kk, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &kk, &v, MDB_NEXT)) {
            if (kk.mv_size != 12 || memcmp(kk.mv_data, key, 4) != 0) break;
            if (read == limit) {
                complete = 0;
                break;
            }
            read++;
            mval_t m;
            aud_mval_read(&v, &m);
            one += m.orders >= 1;
            two += m.orders >= 2;
            int64_t first = 0, last = 0;
            int r = sl_stitch_person_seen(a->stitch, txn, sl_be64_get((const unsigned char *)kk.mv_data + 4), &first, &last);
            if (r == SL_ENOTFOUND) continue;
            if (r) {
                rc = r;
                break;
            }
            active += last >= from;
            if (first && first < from) {
                base++;
                churned += last < from;
            }
        }
        mdb_cursor_close(cur);
        if (rc != MDB_NOTFOUND && rc != 0) return rc;
        rc = 0;
    }
    sl_buf_appends(out, ",\"period\":{\"from\":");
    sl_buf_append_iso(out, now - period_ms);
    sl_buf_appends(out, ",\"to\":");
    sl_buf_append_iso(out, now);
    sl_buf_printf(out, ",\"members_read\":%llu,\"complete\":%s,\"active\":%llu,\"active_share\":",
                  (unsigned long long)read, complete ? "true" : "false", (unsigned long long)active);
#define SHARE(n, of) ((of) ? sl_buf_printf(out, "%.4f", (double)(n) / (double)(of)) : sl_buf_appends(out, "null"))
    SHARE(active, read);
    sl_buf_printf(out, ",\"churned\":%llu,\"churned_share\":", (unsigned long long)churned);
    SHARE(churned, base);
    sl_buf_printf(out, ",\"with_orders\":%llu,\"with_two_orders\":%llu,\"second_order_conversion\":",
                  (unsigned long long)one, (unsigned long long)two);
    SHARE(two, one);
#undef SHARE
    sl_buf_appends(out, "}}");
    return out->data ? 0 : SL_ENOMEM;
}

