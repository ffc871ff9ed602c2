/* rule_inactivity.c - the inactivity rule (docs/TRIGGERS.md): an identified
 * person seen by no event for `after` gets one trigger per quiet spell. A
 * lazy timer looks at the person's last_seen when it comes due. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t after_ms;
} inact_conf_t;
#define I(r) ((const inact_conf_t *)(r)->conf)

typedef struct {
    int64_t timer_ms, fired_for_ms;
} inact_t;


static int inact_event(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, const rule_msg_t *m, uint64_t person,
                       int identified, int64_t now)
{
    (void)m;
    if (!identified) return 0; /* anonymous visitors who never return are not "inactive customers" */
    MDB_val v;
    inact_t s = {0, 0};
    int rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (rc == 0 && v.mv_size == sizeof(s)) memcpy(&s, v.mv_data, sizeof(s));
    if (s.timer_ms) return 0; /* a timer is pending; it looks at last_seen when it fires */
    s.timer_ms = now + I(r)->after_ms;
    if ((rc = trig_timer_add(t, txn, s.timer_ms, person, r->name))) return rc;
    return trig_state_put(t, txn, r->name, person, &s, sizeof(s));
}

static int inact_timer(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, int64_t now)
{
    MDB_val v;
    inact_t s = {0, 0};
    int rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    if (v.mv_size == sizeof(s)) memcpy(&s, v.mv_data, sizeof(s));
    int identified = 0;
    int64_t last = 0;
    rc = sl_stitch_person_payload(t->stitch, txn, person, NULL, &identified, &last);
    if (rc == SL_ENOTFOUND) return trig_state_del(t, txn, r->name, person);
    if (rc) return rc;
    if (last + I(r)->after_ms > now) {
        s.timer_ms = last + I(r)->after_ms;
        if ((rc = trig_timer_add(t, txn, s.timer_ms, person, r->name))) return rc;
        return trig_state_put(t, txn, r->name, person, &s, sizeof(s));
    }
    s.timer_ms = 0;
    if (s.fired_for_ms != last) {
        char ls[32], dur[32];
        sl_time_format_iso(last, ls);
        snprintf(dur, sizeof(dur), "%lld", (long long)(I(r)->after_ms / 1000));
        sl_buf_t d = {0};
        sl_buf_printf(&d, "{\"last_seen\":\"%s\",\"inactive_seconds\":%lld,\"after_seconds\":%s}", ls,
                      (long long)((now - last) / 1000), dur);
        rc = d.data ? trig_fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
        sl_buf_free(&d);
        if (rc) return rc;
        s.fired_for_ms = last;
    }
    return trig_state_put(t, txn, r->name, person, &s, sizeof(s));
}

/* absorbed's quiet spell goes: the survivor's own timer looks at the merged last_seen */
static int inact_merge(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t survivor, uint64_t absorbed,
                       int64_t now)
{
    (void)survivor;
    (void)now;
    return trig_state_del(t, txn, r->name, absorbed);
}

static void inact_free_conf(void *conf) { free(conf); }

static int inact_parse(sl_cfg_ctx_t *x, const cJSON *json, const char *path, void **out)
{
    inact_conf_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return SL_ENOMEM;
    *out = c;
    if (!cJSON_GetObjectItemCaseSensitive(json, "after"))
        return sl_cfg_error(x, "%s.after is required for an inactivity rule", path);
    return sl_cfg_duration(x, json, "after", path, &c->after_ms);
}

static void inact_print(const trig_rule_t *r, sl_buf_t *out)
{
    sl_buf_appends(out, ",\"after\":");
    sl_buf_append_duration(out, I(r)->after_ms);
}

static const char *const inact_keys[] = {"after", NULL};

const trig_type_t trig_type_inactivity = {
    .name = "inactivity", .keys = inact_keys, .parse = inact_parse, .free_conf = inact_free_conf,
    .event = inact_event, .merge = inact_merge, .timer = inact_timer, .print = inact_print,
};
