/* audiences.c - the "audiences" section, the audiences phase of each event,
 * its listeners, memberships, KPIs as they move, and builds
 * (sl_audiences.h, docs/AUDIENCES.md; reads: read.c). */
#include "aud_int.h"

#include "sl_feed.h"
#include "sl_fields.h"
#include "sl_stage.h"
#include "sl_stitch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- configuration ---- */

static int section_index = -1;

static uint32_t aud_id(const char *name)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 16777619u;
    return h;
}

static void def_free(aud_def_t *d)
{
    free(d->name);
    sl_rules_free(d->where);
    free(d->requires_consent);
    sl_cfg_strv_free(d->computed, d->n_computed);
    sl_cfg_strv_free(d->ref_names, d->n_refs);
}

static void conf_free(void *parsed)
{
    aud_conf_t *c = parsed;
    if (c == NULL) return;
    for (size_t i = 0; i < c->n; i++) def_free(&c->v[i]);
    free(c->v);
    free(c);
}

const aud_conf_t *aud_conf(const sl_aud_t *a)
{
    static const aud_conf_t none;
    const aud_conf_t *c = sl_config_section(atomic_load(&a->cfg), section_index);
    return c ? c : &none;
}

static int strv_add(char ***v, size_t *n, const char *s, size_t len)
{
    for (size_t i = 0; i < *n; i++)
        if (strlen((*v)[i]) == len && memcmp((*v)[i], s, len) == 0) return 0;
    char **g = realloc(*v, (*n + 1) * sizeof(*g));
    if (g == NULL) return SL_ENOMEM;
    *v = g;
    if ((g[*n] = strndup(s, len)) == NULL) return SL_ENOMEM;
    (*n)++;
    return 0;
}

/* a leaf of an audience's condition: what it reads */
static int note_leaf(const char *path, const char *const *strings, size_t n, void *arg)
{
    aud_def_t *d = arg;
    static const char pre[] = "profile.";
    if (strncmp(path, pre, sizeof(pre) - 1) != 0) return 0;
    const char *p = path + sizeof(pre) - 1;
    size_t root = strcspn(p, ".[");
#define IS(s) (root == sizeof(s) - 1 && strncmp(p, s, root) == 0)
    if (IS("traits")) d->reads |= R_TRAITS;
    else if (IS("identified")) d->reads |= R_IDENTIFIED;
    else if (IS("first_seen") || IS("last_seen")) d->reads |= R_SEEN;
    else if (IS("consent") || IS("unsubscribed")) d->reads |= R_CONSENT;
    else if (IS("computed")) {
        d->reads |= R_COMPUTED;
        const char *f = p + root + (p[root] == '.');
        return strv_add(&d->computed, &d->n_computed, f, strcspn(f, "["));
    } else if (IS("audiences")) {
        d->reads |= R_AUDIENCES;
        for (size_t i = 0; i < n; i++) {
            int rc = strv_add(&d->ref_names, &d->n_refs, strings[i], strlen(strings[i]));
            if (rc) return rc;
        }
    }
#undef IS
    return 0;
}

static int parse_one(sl_cfg_ctx_t *x, const cJSON *j, size_t idx, aud_def_t *d, const sl_config_t *c)
{
    static const char *const keys[] = {"name", "where", "include_anonymous", "requires_consent", NULL};
    char path[48];
    snprintf(path, sizeof(path), "audiences[%zu]", idx);
    if (!cJSON_IsObject(j)) return sl_cfg_error(x, "%s must be an object", path);
    int rc = sl_cfg_check_keys(x, j, path, keys);
    if (rc == 0) rc = sl_cfg_str(x, j, "name", path, &d->name, 1);
    if (rc || d->name == NULL) return rc ? rc : SL_EINVAL; /* (required: set when 0) */
    size_t nl = strlen(d->name);
    int bad = nl > SL_AUD_NAME_MAX;
    for (size_t i = 0; i < nl && !bad; i++) bad = (unsigned char)d->name[i] < 0x20 || d->name[i] == ',';
    if (bad)
        return sl_cfg_error(x, "%s.name must be 1 to %d bytes without a comma or a control character", path,
                            SL_AUD_NAME_MAX);
    if (sl_config_defined(c, d->name))
        return sl_cfg_error(x, "%s.name \"%s\" is also the name of a trigger rule (names are unique across both)",
                            path, d->name);
    d->id = aud_id(d->name);
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(j, "where");
    if (!cJSON_IsObject(w)) return sl_cfg_error(x, "%s.where must be a condition (an object, docs/CONDITIONS.md)", path);
    char wpath[64];
    snprintf(wpath, sizeof(wpath), "%s.where", path);
    if ((rc = sl_rules_compile(w, SL_RULES_PROFILE, wpath, &d->where, x->err, x->errlen))) return rc;
    if ((rc = sl_cfg_bool(x, j, "include_anonymous", path, &d->include_anonymous)) ||
        (rc = sl_cfg_str(x, j, "requires_consent", path, &d->requires_consent, 0)))
        return rc;
    sl_buf_t pr = {0};
    if ((rc = sl_rules_print(d->where, &pr)) == 0 && sl_buf_appends(&pr, d->include_anonymous ? "+anon" : "")) rc = SL_ENOMEM;
    if (rc == 0) {
        sl_buf_append(&pr, "", 1);
        d->defhash = pr.data ? aud_id(pr.data) : 0;
    }
    sl_buf_free(&pr);
    return rc ? rc : sl_rules_each_leaf(d->where, note_leaf, d);
}

/* Depth-first: the order (each after those it reads); a cycle is an error naming it. */
static int visit(sl_cfg_ctx_t *x, aud_conf_t *c, size_t i, unsigned char *mark, size_t *stack, size_t depth,
                 size_t *n_order)
{
    if (mark[i] == 2) return 0;
    stack[depth] = i;
    if (mark[i] == 1) {
        char msg[512];
        size_t k = 0, from = 0;
        while (stack[from] != i) from++;
        for (size_t s = from; s <= depth && k < sizeof(msg); s++)
            k += (size_t)snprintf(msg + k, sizeof(msg) - k, "%s%s", s > from ? " -> " : "", c->v[stack[s]].name);
        return sl_cfg_error(x, "audiences: a cycle of audiences reading each other: %s", msg);
    }
    mark[i] = 1;
    for (size_t r = 0; r < c->n; r++)
        if (c->v[i].refs >> r & 1) {
            int rc = visit(x, c, r, mark, stack, depth + 1, n_order);
            if (rc) return rc;
        }
    mark[i] = 2;
    c->order[(*n_order)++] = i;
    return 0;
}

int aud_conf_defines(const void *parsed, const char *name);

static int conf_parse(const sl_cfg_json_t *json, const sl_config_t *cfg, void **out, char *err, size_t errlen)
{
    sl_cfg_ctx_t x = {err, errlen};
    *out = NULL;
    if (json == NULL) {
        if (cfg->n_pressure_tiers)
            return sl_cfg_error(&x, "pressure.tiers[0].audience names \"%s\", which is not an audience (none is configured)",
                                cfg->pressure_tiers[0].audience);
        return 0;
    }
    if (!cJSON_IsArray(json) || cJSON_GetArraySize(json) > SL_AUD_MAX)
        return sl_cfg_error(&x, "audiences must be an array of at most %d audiences", SL_AUD_MAX);
    aud_conf_t *c = calloc(1, sizeof(*c));
    size_t n = (size_t)cJSON_GetArraySize(json);
    if (c == NULL || (n && (c->v = calloc(n, sizeof(*c->v))) == NULL)) {
        conf_free(c);
        return SL_ENOMEM;
    }
    int rc = 0; /* (*out is set at the end: until then sl_config_defined() must not see these names) */
    for (const cJSON *j = json->child; j && rc == 0 && c->n < n; j = j->next) {
        size_t i = c->n++;
        rc = parse_one(&x, j, i, &c->v[i], cfg);
        if (rc == 0 && c->v[i].name == NULL) rc = SL_EINVAL; /* (parse_one sets it when it returns 0) */
        for (size_t k = 0; k < i && rc == 0 && c->v[k].name; k++) {
            if (strcmp(c->v[k].name, c->v[i].name) == 0)
                rc = sl_cfg_error(&x, "audiences[%zu].name \"%s\" is used twice", i, c->v[i].name);
            else if (c->v[k].id == c->v[i].id)
                rc = sl_cfg_error(&x, "audiences[%zu].name \"%s\" and \"%s\" share a key (rename one)", i,
                                  c->v[i].name, c->v[k].name);
        }
    }
    for (size_t i = 0; i < c->n && rc == 0; i++)
        for (size_t r = 0; r < c->v[i].n_refs && rc == 0; r++) {
            size_t k = 0;
            while (k < c->n && (c->v[k].name == NULL || strcmp(c->v[k].name, c->v[i].ref_names[r]) != 0)) k++;
            if (k == c->n)
                rc = sl_cfg_error(&x, "audiences[%zu].where reads the audience \"%s\", which is not defined", i,
                                  c->v[i].ref_names[r]);
            else c->v[i].refs |= 1ULL << k;
        }
    unsigned char mark[SL_AUD_MAX] = {0};
    size_t stack[SL_AUD_MAX + 1], n_order = 0;
    for (size_t i = 0; i < c->n && rc == 0; i++) rc = visit(&x, c, i, mark, stack, 0, &n_order);
    for (size_t t = 0; t < cfg->n_pressure_tiers && rc == 0; t++) /* the core's pressure.tiers name audiences */
        if (!aud_conf_defines(c, cfg->pressure_tiers[t].audience))
            rc = sl_cfg_error(&x, "pressure.tiers[%zu].audience names \"%s\", which is not an audience", t,
                              cfg->pressure_tiers[t].audience);
    *out = c; /* (on error too: the parser frees it) */
    return rc;
}

int aud_conf_defines(const void *parsed, const char *name)
{
    const aud_conf_t *c = parsed;
    for (size_t i = 0; c && i < c->n; i++)
        if (strcmp(c->v[i].name, name) == 0) return 1;
    return 0;
}

static const sl_config_section_t section = {.key = "audiences", .parse = conf_parse, .free = conf_free,
                                            .defines = aud_conf_defines};

int sl_aud_config_register(void)
{
    int i = sl_config_register(&section);
    if (i < 0) return i;
    section_index = i;
    return 0;
}

/* ---- a person's memberships (the attachment) ---- */

int aud_att_read(const MDB_val *v, uint32_t *ids, size_t *n, int *evaluated)
{
    *n = 0;
    *evaluated = v->mv_size > 0;
    if (v->mv_size == 0) return 0;
    const unsigned char *p = v->mv_data;
    if (p[0] != ATT_VERSION || (v->mv_size - 1) % 4 || (v->mv_size - 1) / 4 > SL_AUD_MAX) return MDB_CORRUPTED;
    *n = (v->mv_size - 1) / 4;
    memcpy(ids, p + 1, *n * 4);
    return 0;
}

static int att_write(sl_aud_t *a, MDB_txn *txn, uint64_t person)
{
    sl_buf_t *b = &a->att;
    b->len = 0;
    unsigned char ver = ATT_VERSION;
    if (sl_buf_append(b, &ver, 1) || sl_buf_append(b, a->cur, a->n_cur * 4)) return SL_ENOMEM;
    int rc = sl_stitch_attach_put(a->stitch, txn, person, SL_ATTACH_AUDIENCES, b->data, b->len);
    return rc == SL_ENOTFOUND ? 0 : rc;
}

static int cur_has(const sl_aud_t *a, uint32_t id)
{
    for (size_t i = 0; i < a->n_cur; i++)
        if (a->cur[i] == id) return 1;
    return 0;
}

static void cur_set(sl_aud_t *a, uint32_t id, int in)
{
    size_t i = 0;
    while (i < a->n_cur && a->cur[i] < id) i++;
    int there = i < a->n_cur && a->cur[i] == id;
    if (in && !there && a->n_cur < SL_AUD_MAX) {
        memmove(&a->cur[i + 1], &a->cur[i], (a->n_cur - i) * 4);
        a->cur[i] = id;
        a->n_cur++;
    } else if (!in && there) {
        memmove(&a->cur[i], &a->cur[i + 1], (a->n_cur - i - 1) * 4);
        a->n_cur--;
    }
}

/* ---- transitions ---- */

void aud_member_key(unsigned char k[12], uint32_t id, uint64_t person)
{
    unsigned char b[8];
    sl_be64_put(b, person);
    k[0] = (unsigned char)(id >> 24), k[1] = (unsigned char)(id >> 16), k[2] = (unsigned char)(id >> 8),
    k[3] = (unsigned char)id;
    memcpy(k + 4, b, 8);
}

/* ---- KPIs, kept with each transition ----
 * A members entry keeps what its person adds to the audience's sums (the
 * contribution as it was last taken); ameta holds the sums, so a person's
 * exit takes away exactly what its entry and updates added. */
void aud_mval_read(const MDB_val *v, mval_t *m)
{
    memset(m, 0, sizeof(*m));
    if (v->mv_size == sizeof(*m)) memcpy(m, v->mv_data, sizeof(*m));
    else if (v->mv_size == 8) memcpy(&m->entered, v->mv_data, 8); /* (the first layout: the time alone) */
}

int aud_kpi_get(sl_aud_t *a, MDB_txn *txn, uint32_t id, kpi_t *k)
{
    MDB_val key = {4, &id}, v;
    memset(k, 0, sizeof(*k));
    int rc = mdb_get(txn, a->meta, &key, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size == sizeof(*k)) memcpy(k, v.mv_data, sizeof(*k));
    else if (v.mv_size == 8) memcpy(&k->members, v.mv_data, 8);
    else return MDB_CORRUPTED;
    return 0;
}

/* the sums of id with m added (sign 1) or taken away (-1), members too when whole */
static int kpi_add(sl_aud_t *a, MDB_txn *txn, uint32_t id, const mval_t *m, int sign, int whole, kpi_t *out)
{
    kpi_t k;
    int rc = aud_kpi_get(a, txn, id, &k);
    if (rc) return rc;
#define ADD(f, x) (k.f = sign > 0 ? k.f + (x) : k.f >= (x) ? k.f - (x) : 0)
    if (whole) ADD(members, 1u);
    ADD(identified, (uint64_t)(m->flags & M_IDENTIFIED ? 1 : 0));
    ADD(with_email, (uint64_t)(m->flags & M_EMAIL ? 1 : 0));
    ADD(orders, (uint64_t)m->orders);
#undef ADD
    k.revenue += sign * m->revenue;
    if (k.members == 0) k.revenue = 0; /* (no drift left behind) */
    if (out) *out = k;
    MDB_val key = {4, &id}, v = {sizeof(k), &k};
    return mdb_put(txn, a->meta, &key, &v, 0);
}

static double num_of(const sl_buf_t *b)
{
    return b->len ? strtod(b->data, NULL) : 0;
}

/* what person adds to an audience's sums now */
int aud_contribution(sl_aud_t *a, MDB_txn *txn, uint64_t person, int64_t now, mval_t *m)
{
    sl_buf_t *b = &a->prof;
    b->len = 0;
    int identified = 0, rc = sl_stitch_person_slim(a->stitch, txn, person, b, &identified);
    m->flags = 0;
    m->orders = 0;
    m->revenue = 0;
    if (rc == SL_ENOTFOUND) return 0;
    if (rc) return rc;
    if (identified) m->flags |= M_IDENTIFIED;
    if (sl_buf_append(b, "", 1)) return SL_ENOMEM;
    if (!strstr(b->data, "\"email\":null")) m->flags |= M_EMAIL;
    if (a->fields) {
        b->len = 0;
        if ((rc = sl_fields_value(a->fields, txn, person, "orders", now, b)) || sl_buf_append(b, "", 1)) return rc ? rc : SL_ENOMEM;
        double o = num_of(b);
        m->orders = o > 0 && o < 4e9 ? (uint32_t)o : 0;
        b->len = 0;
        if ((rc = sl_fields_value(a->fields, txn, person, "revenue", now, b)) || sl_buf_append(b, "", 1)) return rc ? rc : SL_ENOMEM;
        m->revenue = num_of(b);
        if (!(m->revenue == m->revenue) || m->revenue > 1e15 || m->revenue < -1e15) m->revenue = 0;
    }
    return 0;
}

void aud_hist_key(unsigned char k[8], uint32_t id, int64_t day)
{
    uint32_t d = (uint32_t)day;
    for (int i = 0; i < 4; i++) k[i] = (unsigned char)(id >> (24 - 8 * i)), k[4 + i] = (unsigned char)(d >> (24 - 8 * i));
}

static int hist_add(sl_aud_t *a, MDB_txn *txn, uint32_t id, int in, uint64_t members, int64_t now)
{
    unsigned char key[8];
    aud_hist_key(key, id, sl_local_day(now));
    MDB_val k = {8, key}, v;
    hist_t h = {0};
    int rc = mdb_get(txn, a->hist, &k, &v);
    if (rc == 0 && v.mv_size == sizeof(h)) memcpy(&h, v.mv_data, sizeof(h));
    else if (rc && rc != MDB_NOTFOUND) return rc;
    h.members = members;
    if (in) h.entered++;
    else h.exited++;
    v = (MDB_val){sizeof(h), &h};
    return mdb_put(txn, a->hist, &k, &v, 0);
}

/* The person's audiences' sums follow what it now adds (its orders,
 * revenue, identification or e-mail changed). */
static int kpi_refresh(sl_aud_t *a, MDB_txn *txn, uint64_t person, int64_t now)
{
    MDB_val v;
    int evaluated, rc = sl_stitch_attach_step_get(a->stitch, txn, person, SL_ATTACH_AUDIENCES, &v);
    uint32_t ids[SL_AUD_MAX];
    size_t n = 0;
    if (rc == SL_ENOTFOUND) return 0;
    if (rc || (rc = aud_att_read(&v, ids, &n, &evaluated)) || n == 0) return rc;
    mval_t m;
    if ((rc = aud_contribution(a, txn, person, now, &m))) return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        unsigned char key[12];
        aud_member_key(key, ids[i], person);
        MDB_val k = {12, key}, mv;
        mval_t old;
        if ((rc = mdb_get(txn, a->members, &k, &mv)) == MDB_NOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc) break;
        aud_mval_read(&mv, &old);
        if (old.flags == m.flags && old.orders == m.orders && old.revenue == m.revenue) continue;
        mval_t upd = m;
        upd.entered = old.entered;
        mv = (MDB_val){sizeof(upd), &upd};
        if ((rc = kpi_add(a, txn, ids[i], &old, -1, 0, NULL)) || (rc = kpi_add(a, txn, ids[i], &upd, 1, 0, NULL)))
            break;
        rc = mdb_put(txn, a->members, &k, &mv, 0);
    }
    return rc;
}

/* person leaves id's index: its contribution goes from the sums */
static int member_remove(sl_aud_t *a, MDB_txn *txn, uint32_t id, uint64_t person, uint64_t *members)
{
    unsigned char key[12];
    aud_member_key(key, id, person);
    MDB_val k = {12, key}, v;
    int rc = mdb_get(txn, a->members, &k, &v);
    if (rc == MDB_NOTFOUND) {
        kpi_t kk;
        rc = aud_kpi_get(a, txn, id, &kk);
        *members = kk.members;
        return rc;
    }
    mval_t old;
    if (rc) return rc;
    aud_mval_read(&v, &old);
    kpi_t kk;
    if ((rc = mdb_del(txn, a->members, &k, NULL)) || (rc = kpi_add(a, txn, id, &old, -1, 1, &kk))) return rc;
    *members = kk.members;
    return 0;
}

/* person enters (in 1) or leaves d: its members entry and count, then the
 * feed's entry (the slim profile; only the id when no_profile or the person
 * is gone). */
enum { T_NO_PROFILE = 1, T_QUIET = 2 };

static int transition(sl_aud_t *a, MDB_txn *txn, const aud_def_t *d, uint64_t person, int in, const char *reason,
                      const char *cause, int flags, int64_t now)
{
    int no_profile = flags & T_NO_PROFILE, rc;
    uint64_t members = 0;
    if (in) {
        unsigned char key[12];
        aud_member_key(key, d->id, person);
        mval_t m;
        if ((rc = aud_contribution(a, txn, person, now, &m))) return rc;
        m.entered = now;
        MDB_val k = {12, key}, v = {sizeof(m), &m};
        kpi_t kk;
        if ((rc = mdb_put(txn, a->members, &k, &v, 0)) || (rc = kpi_add(a, txn, d->id, &m, 1, 1, &kk))) return rc;
        members = kk.members;
    } else if ((rc = member_remove(a, txn, d->id, person, &members))) {
        return rc;
    }
    if ((rc = hist_add(a, txn, d->id, in, members, now))) return rc;
    if (a->muted || (flags & T_QUIET)) return 0; /* a rebuild (the feed carried over holds the entries); a build */
    sl_buf_t *p = &a->prof, *b = &a->data;
    p->len = b->len = 0;
    rc = no_profile ? SL_ENOTFOUND : sl_stitch_person_slim(a->stitch, txn, person, p, NULL);
    if (rc == SL_ENOTFOUND) {
        char pid[SL_ENTITY_STR_BYTES];
        sl_entity_format((sl_entity_t){SL_ENTITY_PERSON, person}, pid);
        p->len = 0;
        rc = sl_buf_printf(p, "{\"id\":\"%s\"}", pid) ? SL_ENOMEM : 0;
    }
    if (rc) return rc;
    sl_buf_appends(b, "{\"audience\":");
    sl_buf_append_json_str(b, d->name, strlen(d->name));
    sl_buf_printf(b, ",\"reason\":\"%s\",\"members\":%llu}", reason, (unsigned long long)members);
    if (sl_buf_append(p, "", 1) || sl_buf_append(b, "", 1)) return SL_ENOMEM;
    /* no cause: an entry naming one holds that event back from retention
     * (docs/PRIVACY.md), and every member's would then be held */
    (void)cause;
    sl_feed_entry_t e = {.at_ms = now, .entity = {SL_ENTITY_PERSON, person}, .rule = d->name,
                         .type = in ? "audience_entered" : "audience_exited", .profile = p->data, .data = b->data};
    return sl_feed_append(a->feed, txn, &e, NULL);
}

/* ---- evaluation ---- */



sl_jval_t aud_person_view(void *arg)
{
    view_t *v = arg;
    sl_aud_t *a = v->a;
    if (!a->view_built) {
        a->view.len = 0;
        v->rc = sl_stitch_person_view(a->stitch, v->txn, v->person, &a->view);
        if (v->rc == SL_ENOTFOUND) v->rc = 0;
        a->view_built = v->rc == 0;
    }
    return a->view_built && a->view.data ? sl_jroot(a->view.data, a->view.len) : (sl_jval_t){0};
}

/* 1 when the view says the person is identified */
int aud_view_identified(view_t *v)
{
    sl_jval_t root = aud_person_view(v);
    return root.n && sl_jtype(sl_jget(root, "identified")) == SL_JTRUE;
}

/* Evaluates person's audiences -- every one when all (or when the person
 * was never evaluated), else those in need (a mask of indexes) and those
 * reading an audience that moved -- in order, moving the person in and out
 * with reason. An audience being built is left to the walk for a person it
 * has not reached, and moves quietly for one it has; walking: the walk's
 * own visit, the audiences being built only, quietly. */
static int evaluate(sl_aud_t *a, MDB_txn *txn, uint64_t person, uint64_t need, int all, const char *reason,
                    const char *cause, int64_t now, int walking, int identified)
{
    const aud_conf_t *c = aud_conf(a);
    if (c->n == 0) return 0;
    MDB_val v;
    int evaluated, rc = sl_stitch_attach_step_get(a->stitch, txn, person, SL_ATTACH_AUDIENCES, &v);
    if (rc == SL_ENOTFOUND) return 0; /* no such person (erased) */
    if (rc || (rc = aud_att_read(&v, a->cur, &a->n_cur, &evaluated))) return rc;
    int fixed = 0; /* the record's memberships changed before any move */
    for (size_t k = 0; k < a->n_cur;) { /* an audience no longer configured: its members went with it */
        size_t i = 0;
        while (i < c->n && c->v[i].id != a->cur[k]) i++;
        if (i < c->n) k++;
        else cur_set(a, a->cur[k], 0), fixed = 1;
    }
    /* The walk starts from the members index, not the record: an audience
     * removed and configured again (its members purged, all or part of
     * them) left its id in records it never rewrote. */
    for (size_t i = 0; walking && i < c->n; i++) {
        if (!(a->building >> i & 1)) continue;
        unsigned char key[12];
        aud_member_key(key, c->v[i].id, person);
        MDB_val k = {12, key}, mv;
        if ((rc = mdb_get(txn, a->members, &k, &mv)) && rc != MDB_NOTFOUND) return rc;
        int listed = rc == 0;
        rc = 0;
        if (listed != cur_has(a, c->v[i].id)) cur_set(a, c->v[i].id, listed), fixed = 1;
    }
    uint64_t skip = 0, quiet = a->building;
    if (walking) all = 0, need = a->building;
    else if (person >= a->build_next) skip = a->building, quiet = 0;
    if (!evaluated && !walking) all = 1;
    if (!all && (need & ~skip) == 0) return evaluated && !fixed ? 0 : att_write(a, txn, person);
    view_t vw = {a, txn, person, 0};
    a->view_built = 0;
    uint64_t moved = 0;
    int wrote = 0;
    for (size_t o = 0; o < c->n && rc == 0; o++) {
        size_t i = c->order[o];
        const aud_def_t *d = &c->v[i];
        if (skip >> i & 1) continue;
        if (!all && !(need >> i & 1) && !(d->refs & moved)) continue;
        int pass;
        if (!d->include_anonymous && identified == 0) {
            pass = 0; /* known not identified (the event's person): no view to build */
        } else {
            sl_rules_ctx_t ctx = {.now_ms = now, .profile = aud_person_view, .profile_arg = &vw};
            pass = sl_rules_eval(d->where, &ctx);
            if (pass && !d->include_anonymous) pass = identified > 0 || aud_view_identified(&vw);
            if (vw.rc) return vw.rc;
        }
        if (pass == cur_has(a, d->id)) continue;
        cur_set(a, d->id, pass);
        moved |= 1ULL << i;
        /* written at once: an audience reading this one sees it in the view */
        if ((rc = att_write(a, txn, person)) ||
            (rc = transition(a, txn, d, person, pass, walking ? "definition" : reason, cause,
                             quiet >> i & 1 ? T_QUIET : 0, now)))
            return rc;
        wrote = 1;
        a->view_built = 0;
    }
    return rc == 0 && (!evaluated || fixed) && !wrote ? att_write(a, txn, person) : rc;
}

/* which audiences read the computed field (rfm moves rfm.segment, and the other way round) */
static uint64_t need_field(const aud_conf_t *c, const char *field)
{
    uint64_t need = 0;
    size_t fl = strlen(field);
    for (size_t i = 0; i < c->n; i++)
        for (size_t k = 0; k < c->v[i].n_computed; k++) {
            const char *r = c->v[i].computed[k];
            size_t rl = strlen(r), m = rl < fl ? rl : fl;
            if (strncmp(r, field, m) == 0 && (rl == fl || (rl > fl ? r[fl] : field[rl]) == '.')) need |= 1ULL << i;
        }
    return need;
}

/* ... named in changes ([[field, old, new, reason]...]) */
static uint64_t need_computed(const aud_conf_t *c, const cJSON *changes)
{
    uint64_t need = 0;
    const cJSON *ch;
    cJSON_ArrayForEach(ch, changes) {
        const char *field = cJSON_GetStringValue(cJSON_GetArrayItem(ch, 0));
        if (field) need |= need_field(c, field);
    }
    return need;
}

/* 1 when changes name orders or revenue (the KPIs' sums) */
static int kpi_moved(const cJSON *changes)
{
    const cJSON *ch;
    cJSON_ArrayForEach(ch, changes) {
        const char *field = cJSON_GetStringValue(cJSON_GetArrayItem(ch, 0));
        if (field && (strcmp(field, "orders") == 0 || strcmp(field, "revenue") == 0)) return 1;
    }
    return 0;
}

static uint64_t need_reading(const aud_conf_t *c, unsigned reads)
{
    uint64_t need = 0;
    for (size_t i = 0; i < c->n; i++) {
        unsigned r = c->v[i].reads | (c->v[i].include_anonymous ? 0 : R_IDENTIFIED);
        if (r & reads) need |= 1ULL << i;
    }
    return need;
}

/* ---- the step ---- */

/* ---- building: an audience new or changed walks every person ----
 * adefs: u32 audience id -> u32 definition hash, u32 building, u64 the walk's
 * next person, then the name (so that a deleted one can be announced). */

#define BUILD_CHUNK 2000
#define DEF_DELETING 2 /* def_rec_t.building: no longer configured, its members being purged */


static int def_put(sl_aud_t *a, MDB_txn *txn, uint32_t id, const def_rec_t *r, const char *name)
{
    sl_buf_t *b = &a->att;
    b->len = 0;
    if (sl_buf_append(b, r, sizeof(*r)) || sl_buf_appends(b, name)) return SL_ENOMEM;
    MDB_val k = {4, &id}, v = {b->len, b->data};
    return mdb_put(txn, a->defs, &k, &v, 0);
}


/* What the store holds against c: which audiences to build, which to
 * delete. Stage thread, in a transaction (the step's open, a reload). */
static int plan(sl_aud_t *a, MDB_txn *txn, const aud_conf_t *c, int read_only)
{
    uint64_t building = 0, fresh = 0, next = UINT64_MAX;
    int rc = 0;
    for (size_t i = 0; i < c->n && rc == 0; i++) {
        const aud_def_t *d = &c->v[i];
        MDB_val k = {4, (void *)&d->id}, v;
        def_rec_t r = {0};
        if ((rc = mdb_get(txn, a->defs, &k, &v)) == 0 && v.mv_size >= sizeof(r)) memcpy(&r, v.mv_data, sizeof(r));
        else if (rc && rc != MDB_NOTFOUND) break;
        rc = 0;
        if (v.mv_size < sizeof(r) || r.defhash != d->defhash || r.building == DEF_DELETING)
            fresh |= 1ULL << i; /* new, changed, or removed and configured again: from the start */
        else if (r.building) building |= 1ULL << i, next = r.next < next ? r.next : next;
    }
    if (rc) return rc;
    /* an audience reading one being built is built again with it */
    for (size_t o = 0; o < c->n; o++) {
        size_t i = c->order[o];
        if (c->v[i].refs & (building | fresh)) fresh |= 1ULL << i;
    }
    if (fresh) next = 1; /* one walk for all of them */
    /* a store without persons has nothing to walk: built at once (announced
     * at the next tick), and every person is evaluated live from its first event */
    uint64_t none[1];
    size_t n_persons = 1;
    if ((building | fresh) && (rc = sl_stitch_person_ids(a->stitch, txn, 1, none, 1, &n_persons))) return rc;
    if (n_persons == 0) a->announce |= building | fresh, building = fresh = 0;
    a->building = building | fresh;
    a->build_next = a->building ? next : 0;
    for (size_t i = 0; i < c->n && rc == 0 && !read_only; i++) {
        def_rec_t r = {c->v[i].defhash, (uint32_t)(a->building >> i & 1), a->build_next};
        rc = def_put(a, txn, c->v[i].id, &r, c->v[i].name);
    }
    /* held and no longer configured: deleted */
    a->n_deleted = 0;
    MDB_cursor *cur;
    if (rc == 0 && (rc = mdb_cursor_open(txn, a->defs, &cur)) == 0) {
        MDB_val k, v;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && a->n_deleted < SL_AUD_MAX;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            uint32_t id;
            if (k.mv_size != 4 || v.mv_size < sizeof(def_rec_t)) continue;
            memcpy(&id, k.mv_data, 4);
            size_t i = 0;
            while (i < c->n && c->v[i].id != id) i++;
            if (i < c->n) continue;
            size_t nl = v.mv_size - sizeof(def_rec_t);
            if (nl > SL_AUD_NAME_MAX) nl = SL_AUD_NAME_MAX;
            a->deleted[a->n_deleted].id = id;
            memcpy(a->deleted[a->n_deleted].name, (const char *)v.mv_data + sizeof(def_rec_t), nl);
            a->deleted[a->n_deleted++].name[nl] = '\0';
        }
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND) rc = 0;
    }
    /* durably marked: configured again before its purge ends (a reload, a
     * restart), it is built again rather than taken as live with part of
     * its members gone */
    for (size_t i = 0; i < a->n_deleted && rc == 0 && !read_only; i++) {
        MDB_val k = {4, &a->deleted[i].id}, v;
        def_rec_t r;
        if ((rc = mdb_get(txn, a->defs, &k, &v))) break;
        memcpy(&r, v.mv_data, sizeof(r));
        if (r.building == DEF_DELETING) continue;
        r.building = DEF_DELETING;
        rc = def_put(a, txn, a->deleted[i].id, &r, a->deleted[i].name);
    }
    return rc;
}

/* An announcement of a whole audience: built (reason definition) or deleted. */
static int announce(sl_aud_t *a, MDB_txn *txn, const char *name, const char *type, uint64_t members, int64_t now)
{
    if (a->muted) return 0;
    sl_buf_t *b = &a->data;
    b->len = 0;
    sl_buf_appends(b, "{\"audience\":");
    sl_buf_append_json_str(b, name, strlen(name));
    sl_buf_printf(b, ",\"reason\":\"definition\",\"members\":%llu}", (unsigned long long)members);
    if (sl_buf_append(b, "", 1)) return SL_ENOMEM;
    sl_feed_entry_t e = {.at_ms = now, .rule = name, .type = type, .profile = "null", .data = b->data};
    return sl_feed_append(a->feed, txn, &e, NULL);
}

static uint64_t count_of(sl_aud_t *a, MDB_txn *txn, uint32_t id)
{
    kpi_t k;
    return aud_kpi_get(a, txn, id, &k) == 0 ? k.members : 0;
}

static int64_t build_due(void *arg)
{
    sl_aud_t *a = arg;
    return a->building || a->n_deleted || a->announce ? sl_now_ms() : INT64_MAX;
}

/* A chunk: a deleted audience's members go, or the walk visits the next
 * persons; at its end the audience is announced once. */
static int build_tick(void *arg, MDB_txn *txn, int64_t now, int *wrote)
{
    sl_aud_t *a = arg;
    const aud_conf_t *c = aud_conf(a);
    int rc = 0;
    *wrote = 1;
    if (a->n_deleted) {
        uint32_t id = a->deleted[a->n_deleted - 1].id;
        unsigned char key[12];
        aud_member_key(key, id, 0);
        MDB_cursor *cur;
        if ((rc = mdb_cursor_open(txn, a->members, &cur))) return rc;
        MDB_val k = {12, key}, v;
        size_t n = 0;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && n < BUILD_CHUNK;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT), n++) {
            if (k.mv_size != 12 || memcmp(k.mv_data, key, 4) != 0) break;
            mval_t m; /* (the sums follow the index: the audience may be configured again mid-purge) */
            aud_mval_read(&v, &m);
            if ((rc = mdb_cursor_del(cur, 0)) || (rc = kpi_add(a, txn, id, &m, -1, 1, NULL))) break;
        }
        mdb_cursor_close(cur);
        if (rc && rc != MDB_NOTFOUND) return rc;
        if (n == BUILD_CHUNK) return 0; /* more next tick */
        /* its daily history goes too (a day a key: at most a few hundred) */
        unsigned char hk[8];
        aud_hist_key(hk, id, 0);
        if ((rc = mdb_cursor_open(txn, a->hist, &cur))) return rc;
        for (;;) {
            MDB_val k2 = {4, hk}, v2;
            if ((rc = mdb_cursor_get(cur, &k2, &v2, MDB_SET_RANGE)) || k2.mv_size != 8 || memcmp(k2.mv_data, hk, 4) != 0 ||
                (rc = mdb_cursor_del(cur, 0)))
                break;
        }
        mdb_cursor_close(cur);
        if (rc && rc != MDB_NOTFOUND) return rc;
        MDB_val ik = {4, &id};
        if ((rc = mdb_del(txn, a->meta, &ik, NULL)) && rc != MDB_NOTFOUND) return rc;
        if ((rc = mdb_del(txn, a->defs, &ik, NULL)) && rc != MDB_NOTFOUND) return rc;
        a->n_deleted--;
        return announce(a, txn, a->deleted[a->n_deleted].name, "audience_deleted", 0, now);
    }
    if (a->announce) {
        for (size_t i = 0; i < c->n && rc == 0; i++)
            if (a->announce >> i & 1)
                rc = announce(a, txn, c->v[i].name, "audience_built", count_of(a, txn, c->v[i].id), now);
        if (rc == 0) a->announce = 0;
        return rc;
    }
    if (!a->building) return 0;
    uint64_t ids[BUILD_CHUNK];
    size_t n;
    if ((rc = sl_stitch_person_ids(a->stitch, txn, a->build_next, ids, BUILD_CHUNK, &n))) return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        a->build_next = ids[i];
        rc = evaluate(a, txn, ids[i], 0, 0, "definition", NULL, now, 1, -1);
    }
    if (rc) return rc;
    a->build_next = n ? ids[n - 1] + 1 : a->build_next;
    int done = n < BUILD_CHUNK;
    uint64_t built = a->building;
    if (done) a->building = 0;
    for (size_t i = 0; i < c->n && rc == 0; i++) {
        if (!(built >> i & 1)) continue;
        def_rec_t r = {c->v[i].defhash, !done, a->build_next};
        if ((rc = def_put(a, txn, c->v[i].id, &r, c->v[i].name)) == 0 && done)
            rc = announce(a, txn, c->v[i].name, "audience_built", count_of(a, txn, c->v[i].id), now);
    }
    return rc;
}

/* The walk's state follows the transactions: kept when one commits, taken
 * back when one is aborted (it is redone). */
static void on_after_txn(void *arg, int ok)
{
    sl_aud_t *a = arg;
    if (ok) {
        a->c_building = a->building, a->c_build_next = a->build_next, a->c_n_deleted = a->n_deleted;
        a->c_announce = a->announce;
    } else {
        a->building = a->c_building, a->build_next = a->c_build_next, a->n_deleted = a->c_n_deleted;
        a->announce = a->c_announce;
    }
}

static int on_open(void *arg, MDB_txn *txn, int read_only)
{
    sl_aud_t *a = arg;
    unsigned c = read_only ? 0 : MDB_CREATE;
    int rc = mdb_dbi_open(txn, "amembers", c, &a->members);
    if (rc == MDB_NOTFOUND && read_only) return 0; /* a store from before audiences: none */
    if (rc || (rc = mdb_dbi_open(txn, "ameta", c | MDB_INTEGERKEY, &a->meta))) return rc;
    if ((rc = mdb_dbi_open(txn, "adefs", c, &a->defs)) == MDB_NOTFOUND && read_only) a->defs = 0;
    else if (rc) return rc;
    if ((rc = mdb_dbi_open(txn, "ahist", c, &a->hist)) == MDB_NOTFOUND && read_only) a->hist = 0;
    else if (rc) return rc;
    /* (read-only: a command such as verify learns what is being built) */
    if (a->defs && (rc = plan(a, txn, aud_conf(a), read_only))) return rc;
    on_after_txn(a, 1); /* (the opening transaction commits) */
    atomic_store(&a->have_dbs, 1);
    return 0;
}

/* an absorbed person leaves its audiences (its record went with the merge) */
static int absorbed_leave(sl_aud_t *a, MDB_txn *txn, uint64_t absorbed, const char *cause, int64_t now)
{
    const aud_conf_t *c = aud_conf(a);
    MDB_val v;
    int evaluated, rc = sl_stitch_attach_step_get(a->stitch, txn, absorbed, SL_ATTACH_AUDIENCES, &v);
    if (rc == SL_ENOTFOUND) return 0;
    uint32_t ids[SL_AUD_MAX];
    size_t n;
    if (rc || (rc = aud_att_read(&v, ids, &n, &evaluated))) return rc;
    for (size_t k = 0; k < n && rc == 0; k++)
        for (size_t i = 0; i < c->n && rc == 0; i++)
            if (c->v[i].id == ids[k]) /* (an audience being built moves quietly) */
                rc = transition(a, txn, &c->v[i], absorbed, 0, "merge", cause,
                                T_NO_PROFILE | (a->building >> i & 1 ? T_QUIET : 0), now);
    return rc;
}

static int on_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    sl_aud_t *a = arg;
    const sl_stage_ctx_t *x = ev->ctx;
    const aud_conf_t *c = aud_conf(a);
    if (c->n == 0 || x->entity.kind != SL_ENTITY_PERSON) return 0;
    int64_t now = sl_now_ms();
    const char *cause = ev->message_id[0] ? ev->message_id : NULL;
    int rc = 0;
    for (size_t i = 0; i < x->n_merges && rc == 0; i++) rc = absorbed_leave(a, txn, x->merge_absorbed[i], cause, now);
    if (rc) return rc;
    unsigned reads = R_SEEN; /* last_seen moves with every event */
    if (x->trait_changes && cJSON_GetArraySize(x->trait_changes)) reads |= R_TRAITS;
    if (x->identity_changed) reads |= R_IDENTIFIED;
    if (x->consent_changed) reads |= R_CONSENT;
    uint64_t need = need_reading(c, reads);
    if (x->computed_changes) need |= need_computed(c, x->computed_changes);
    const char *reason = x->n_merges ? "merge" : x->historical ? "import" : "event";
    if ((rc = evaluate(a, txn, x->entity.id, need, x->n_merges > 0, reason, cause, now, 0, x->identified))) return rc;
    /* what the person adds to its audiences' sums changed */
    if (x->n_merges || x->identity_changed || (x->computed_changes && kpi_moved(x->computed_changes)))
        rc = kpi_refresh(a, txn, x->entity.id, now);
    return rc;
}

/* ---- listeners ---- */

/* a computed field moved by a timer */
static int on_computed_changed(void *arg, MDB_txn *txn, uint64_t person, const cJSON *changes, int64_t now)
{
    sl_aud_t *a = arg;
    uint64_t need = need_computed(aud_conf(a), changes);
    int rc = need ? evaluate(a, txn, person, need, 0, "timer", NULL, now, 0, -1) : 0;
    /* orders or revenue a window moved: what the person adds to its audiences' sums (as on_apply) */
    if (rc == 0 && kpi_moved(changes)) rc = kpi_refresh(a, txn, person, now);
    return rc;
}

static int on_computed_watches(void *arg, const char *field)
{
    const aud_conf_t *c = aud_conf(arg);
    if (c->n && (strcmp(field, "orders") == 0 || strcmp(field, "revenue") == 0)) return 1; /* the KPIs' sums */
    return need_field(c, field) != 0;
}

/* Erasure and retention: the persons' memberships go; a never-identified
 * member that retention removed (erased NULL) leaves with reason "expired". */
static int on_forgotten(void *arg, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                        uint64_t *n_removed)
{
    sl_aud_t *a = arg;
    (void)n_removed;
    const aud_conf_t *c = aud_conf(a);
    if (!atomic_load(&a->have_dbs)) return 0;
    int rc = 0;
    int64_t now = sl_now_ms();
    for (size_t p = 0; p < n && rc == 0; p++)
        for (size_t i = 0; i < c->n && rc == 0; i++) {
            unsigned char key[12];
            aud_member_key(key, c->v[i].id, persons[p]);
            MDB_val k = {12, key}, v;
            if ((rc = mdb_get(txn, a->members, &k, &v)) == MDB_NOTFOUND) {
                rc = 0;
                continue;
            }
            if (rc) break;
            if (erased) { /* profile_erased is the exit: no entry of its own */
                uint64_t left;
                if ((rc = member_remove(a, txn, c->v[i].id, persons[p], &left)) == 0)
                    rc = hist_add(a, txn, c->v[i].id, 0, left, now);
            } else {
                rc = transition(a, txn, &c->v[i], persons[p], 0, "expired", NULL, T_NO_PROFILE, now);
            }
        }
    return rc;
}

/* ",\"audiences\":[names]" of person (the profile and the person view) */
static int append_names(void *arg, MDB_txn *txn, uint64_t person, sl_buf_t *out)
{
    sl_aud_t *a = arg;
    const aud_conf_t *c = aud_conf(a);
    MDB_val v = {0, NULL};
    uint32_t ids[SL_AUD_MAX];
    size_t n = 0;
    int evaluated, rc = sl_stitch_attach_get(a->stitch, txn, person, SL_ATTACH_AUDIENCES, &v);
    if (rc == SL_ENOTFOUND) rc = 0, v.mv_size = 0;
    if (rc || (rc = aud_att_read(&v, ids, &n, &evaluated))) return rc;
    sl_buf_appends(out, ",\"audiences\":[");
    int lead = 0;
    for (size_t i = 0; i < c->n; i++)
        for (size_t k = 0; k < n; k++)
            if (ids[k] == c->v[i].id) {
                if (lead++) sl_buf_appends(out, ",");
                sl_buf_append_json_str(out, c->v[i].name, strlen(c->v[i].name));
            }
    sl_buf_appends(out, "]");
    return out->data ? 0 : SL_ENOMEM;
}

/* ---- public ---- */

sl_aud_t *sl_aud_new(const sl_config_t *cfg, sl_stitch_t *stitch, sl_fields_t *fields, sl_feed_t *feed)
{
    sl_aud_t *a = calloc(1, sizeof(*a));
    if (a == NULL) return NULL;
    atomic_store(&a->cfg, cfg);
    a->stitch = stitch;
    a->fields = fields;
    a->feed = feed;
    a->step = (sl_stage_step_t){.name = "audiences", .phase = SL_PHASE_AUDIENCES, .arg = a, .open = on_open,
                                .apply = on_apply, .due = build_due, .tick = build_tick, .after_txn = on_after_txn};
    a->ilis = (sl_ident_listener_t){.arg = a, .forgotten = on_forgotten, .profile_extra = append_names,
                                    .view_extra = append_names};
    a->flis = (sl_fields_listener_t){.arg = a, .changed = on_computed_changed, .watches = on_computed_watches};
    return a;
}

void sl_aud_free(sl_aud_t *a)
{
    if (a == NULL) return;
    sl_buf_free(&a->view);
    sl_buf_free(&a->prof);
    sl_buf_free(&a->data);
    sl_buf_free(&a->att);
    free(a);
}

int sl_aud_attach(sl_aud_t *a, sl_stage_t *stage)
{
    int rc = sl_stage_add_step(stage, &a->step);
    if (rc == 0) rc = sl_stitch_listen(a->stitch, &a->ilis);
    if (rc == 0 && a->fields) rc = sl_fields_listen(a->fields, &a->flis);
    return rc;
}

int sl_aud_reload(sl_aud_t *a, MDB_txn *txn, const sl_config_t *cfg)
{
    const aud_conf_t *c = sl_config_section(cfg, section_index);
    static const aud_conf_t none;
    int rc = atomic_load(&a->have_dbs) ? plan(a, txn, c ? c : &none, 0) : 0;
    if (rc) return rc; /* the old config stays */
    /* (readers tell what is being built from adefs in their own snapshot) */
    atomic_store(&a->cfg, cfg);
    if (a->fields) sl_fields_rules_changed(a->fields); /* what it watches may have changed */
    return 0;
}

void sl_aud_mute(sl_aud_t *a, int on) { a->muted = on; }

int sl_aud_is_member(sl_aud_t *a, MDB_txn *txn, uint64_t person, const char *name)
{
    MDB_val v;
    uint32_t ids[SL_AUD_MAX], id = aud_id(name);
    size_t n = 0;
    int evaluated;
    if (sl_stitch_attach_step_get(a->stitch, txn, person, SL_ATTACH_AUDIENCES, &v) != 0 || aud_att_read(&v, ids, &n, &evaluated))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id) return 1;
    return 0;
}
