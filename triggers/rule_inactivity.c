/* rule_inactivity.c - the inactivity rule (docs/TRIGGERS.md): an identified
 * person seen by no event for `after` gets one trigger per quiet spell. A
 * lazy timer looks at the person's last_seen when it comes due -- or, with
 * `event` or `where`, at the last matching event's time the state keeps
 * ("re-engage customers whose last order is six months old": page views do
 * not count). */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t after_ms;
    char *event;           /* quiet since the last event of this kind (a track name, "page"...); NULL: any */
} inact_conf_t;
#define I(r) ((const inact_conf_t *)(r)->conf)
/* the rule measures from its own events, not from the person's last_seen */
#define OWN_CLOCK(r) (I(r)->event || (r)->where)

#define INACT_V1_BYTES 16 /* the record before `event`/`where`: no last_ms */
#define INACT_VERSION 1
typedef trig_inact_t inact_t;

int trig_inact_encode(sl_buf_t *b, const trig_inact_t *s)
{
    int rc = trig_state_begin(b, TRIG_STATE_INACT, INACT_VERSION, 0);
    return rc ? rc : sl_buf_append(b, s, sizeof(*s)) ? SL_ENOMEM : 0;
}

int trig_inact_decode(const MDB_val *v, trig_inact_t *s)
{
    memset(s, 0, sizeof(*s));
    if (!trig_state_is_rec(v)) { /* from before the header: the struct itself */
        if (v->mv_size != sizeof(*s) && v->mv_size != INACT_V1_BYTES) return MDB_CORRUPTED;
        memcpy(s, v->mv_data, v->mv_size);
        return 0;
    }
    uint32_t n;
    trig_rd_t rd;
    int rc = trig_state_open(v, TRIG_STATE_INACT, INACT_VERSION, &n, &rd);
    if (rc == 0 && (n != 0 || trig_rd_copy(&rd, s, sizeof(*s)) || rd.left)) rc = MDB_CORRUPTED;
    return rc;
}

/* MDB_NOTFOUND (s zero) when person has none. */
static int inact_load(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, inact_t *s)
{
    memset(s, 0, sizeof(*s));
    MDB_val v;
    int rc = trig_state_get(t, txn, r->name, person, &v);
    return rc ? rc : trig_inact_decode(&v, s);
}

static int inact_save(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const inact_t *s)
{
    int rc = trig_inact_encode(&t->v, s);
    return rc ? rc : trig_state_put(t, txn, r->name, person, t->v.data, t->v.len);
}

static int inact_check(const MDB_val *v)
{
    inact_t s;
    return trig_inact_decode(v, &s);
}

static int inact_verify(sl_trig_t *t, MDB_txn *txn, MDB_txn *log_txn, const trig_rule_t *r, uint64_t person,
                        FILE *out, uint64_t *n, uint64_t *problems)
{
    (void)log_txn;
    (void)n;
    return trig_state_verify(t, txn, r, person, out, problems, inact_check, "inactivity");
}

static int inact_event(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, const rule_msg_t *m, uint64_t person,
                       int identified, int64_t now)
{
    if (!identified) return 0; /* anonymous visitors who never return are not "inactive customers" */
    if (I(r)->event && !trig_is_kind(m, I(r)->event)) return 0; /* page views do not count for "last order" */
    if (!trig_where(r->where, m, now)) return 0;
    inact_t s;
    int rc = inact_load(t, txn, r, person, &s);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (OWN_CLOCK(r)) {
        if (m->ts_ms <= s.last_ms) return 0; /* a late older event moves nothing */
        s.last_ms = m->ts_ms > now ? now : m->ts_ms;
    } else if (s.timer_ms) {
        return 0; /* a timer is pending; it looks at last_seen when it fires */
    }
    if (s.timer_ms == 0) {
        s.timer_ms = (OWN_CLOCK(r) ? s.last_ms : now) + I(r)->after_ms;
        if ((rc = trig_timer_add(t, txn, s.timer_ms, person, r->name))) return rc;
    }
    return inact_save(t, txn, r, person, &s);
}

static int inact_timer(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, int64_t now)
{
    inact_t s;
    int rc = inact_load(t, txn, r, person, &s);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    int identified = 0;
    int64_t last = 0;
    rc = sl_stitch_person_payload(t->stitch, txn, person, NULL, &identified, OWN_CLOCK(r) ? NULL : &last);
    if (rc == SL_ENOTFOUND) return trig_state_del(t, txn, r->name, person);
    if (rc) return rc;
    if (OWN_CLOCK(r)) last = s.last_ms;
    if (last + I(r)->after_ms > now) {
        s.timer_ms = last + I(r)->after_ms;
        if ((rc = trig_timer_add(t, txn, s.timer_ms, person, r->name))) return rc;
        return inact_save(t, txn, r, person, &s);
    }
    s.timer_ms = 0;
    if (s.fired_for_ms != last) {
        char ls[32];
        sl_time_format_iso(last, ls);
        sl_buf_t d = {0};
        sl_buf_printf(&d, "{\"last_seen\":\"%s\",\"inactive_seconds\":%lld,\"after_seconds\":%lld,\"event\":", ls,
                      (long long)((now - last) / 1000), (long long)(I(r)->after_ms / 1000));
        if (I(r)->event) sl_buf_append_json_str(&d, I(r)->event, strlen(I(r)->event));
        else sl_buf_appends(&d, "null");
        sl_buf_appends(&d, "}");
        rc = d.data ? trig_fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
        sl_buf_free(&d);
        if (rc) return rc;
        s.fired_for_ms = last;
    }
    return inact_save(t, txn, r, person, &s);
}

/* With the person's last_seen, absorbed's quiet spell goes: the survivor's
 * own timer looks at the merged last_seen. With its own clock, absorbed's
 * last matching event joins the survivor's (a guest order, then a login). */
static int inact_merge(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t survivor, uint64_t absorbed,
                       int64_t now)
{
    inact_t a, s;
    int rc = OWN_CLOCK(r) ? inact_load(t, txn, r, absorbed, &a) : MDB_NOTFOUND;
    if (rc && rc != MDB_NOTFOUND) return rc;
    int had = rc == 0 && a.last_ms;
    if ((rc = trig_state_del(t, txn, r->name, absorbed)) || !had) return rc;
    rc = inact_load(t, txn, r, survivor, &s);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (a.last_ms <= s.last_ms) return 0;
    s.last_ms = a.last_ms;
    if (s.timer_ms == 0) {
        s.timer_ms = s.last_ms + I(r)->after_ms > now ? s.last_ms + I(r)->after_ms : now;
        if ((rc = trig_timer_add(t, txn, s.timer_ms, survivor, r->name))) return rc;
    }
    return inact_save(t, txn, r, survivor, &s);
}

static void inact_free_conf(void *conf)
{
    inact_conf_t *c = conf;
    if (c == NULL) return;
    free(c->event);
    free(c);
}

static int inact_parse(sl_cfg_ctx_t *x, const cJSON *json, const char *path, void **out)
{
    inact_conf_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return SL_ENOMEM;
    *out = c;
    if (!cJSON_GetObjectItemCaseSensitive(json, "after"))
        return sl_cfg_error(x, "%s.after is required for an inactivity rule", path);
    int rc = sl_cfg_duration(x, json, "after", path, &c->after_ms);
    return rc ? rc : sl_cfg_str(x, json, "event", path, &c->event, 0);
}

static void inact_print(const trig_rule_t *r, sl_buf_t *out)
{
    sl_buf_appends(out, ",\"after\":");
    sl_buf_append_duration(out, I(r)->after_ms);
    sl_buf_appends(out, ",\"event\":");
    if (I(r)->event) sl_buf_append_json_str(out, I(r)->event, strlen(I(r)->event));
    else sl_buf_appends(out, "null");
}

static const char *const inact_keys[] = {"after", "event", NULL};

const trig_type_t trig_type_inactivity = {
    .name = "inactivity", .keys = inact_keys, .parse = inact_parse, .free_conf = inact_free_conf,
    .event = inact_event, .merge = inact_merge, .timer = inact_timer, .print = inact_print, .own_where = 1,
    .verify = inact_verify,
};
