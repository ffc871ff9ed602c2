/* rule_computed.c - the computed_change rule (docs/TRIGGERS.md,
 * docs/COMPUTED.md): a computed field of the person changed (the fields
 * phase told it, or its timer did) -- from one of `from` to one of `to`, or
 * across the number `crosses` in `direction` -- and the rule fires with the
 * field, the old and new values and the reason (event, timer, merge). No
 * state. */
#include "internal.h"
#include "sl_fields.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { DIR_UP = 1, DIR_DOWN, DIR_ANY };

typedef struct {
    char *field;
    cJSON *from, *to;      /* arrays of scalars, or NULL: any */
    int has_crosses;
    double crosses;
    int direction;
} comp_conf_t;
#define C(r) ((const comp_conf_t *)(r)->conf)

static int in_list(const cJSON *list, const cJSON *v)
{
    if (list == NULL) return 1;
    const cJSON *e;
    cJSON_ArrayForEach(e, list) if (cJSON_Compare(e, v, 1)) return 1;
    return 0;
}

/* null (no value yet) is below every number */
static double num_of(const cJSON *v) { return cJSON_IsNumber(v) ? v->valuedouble : -INFINITY; }

static int comp_changed(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const char *field,
                        const cJSON *old_v, const cJSON *new_v, const char *reason, int64_t now)
{
    const comp_conf_t *c = C(r);
    if (strcmp(c->field, field) != 0) return 0;
    if (!in_list(c->from, old_v) || !in_list(c->to, new_v)) return 0;
    if (c->has_crosses) {
        double o = num_of(old_v), n = num_of(new_v);
        int up = o < c->crosses && n >= c->crosses, down = o >= c->crosses && n < c->crosses;
        if (!(c->direction == DIR_UP ? up : c->direction == DIR_DOWN ? down : up || down)) return 0;
    }
    char *o = cJSON_PrintUnformatted(old_v), *n = cJSON_PrintUnformatted(new_v);
    sl_buf_t d = {0};
    sl_buf_appends(&d, "{\"field\":");
    sl_buf_append_json_str(&d, field, strlen(field));
    sl_buf_printf(&d, ",\"old\":%s,\"new\":%s,\"reason\":\"%s\"}", o ? o : "null", n ? n : "null", reason);
    cJSON_free(o);
    cJSON_free(n);
    int rc = d.data ? trig_fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
    sl_buf_free(&d);
    return rc;
}

static int comp_watches(const trig_rule_t *r, const char *field) { return strcmp(C(r)->field, field) == 0; }

static void comp_free_conf(void *conf)
{
    comp_conf_t *c = conf;
    if (c == NULL) return;
    free(c->field);
    cJSON_Delete(c->from);
    cJSON_Delete(c->to);
    free(c);
}

static int scalar_list(sl_cfg_ctx_t *x, const cJSON *json, const char *key, const char *path, cJSON **out)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(json, key);
    if (j == NULL) return 0;
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) < 1 || cJSON_GetArraySize(j) > 64)
        return sl_cfg_error(x, "%s.%s must be an array of 1 to 64 values", path, key);
    const cJSON *e;
    cJSON_ArrayForEach(e, j) if (cJSON_IsArray(e) || cJSON_IsObject(e))
        return sl_cfg_error(x, "%s.%s must hold numbers, strings, booleans or null", path, key);
    return (*out = cJSON_Duplicate(j, 1)) ? 0 : SL_ENOMEM;
}

static int comp_parse(sl_cfg_ctx_t *x, const cJSON *json, const char *path, void **out)
{
    comp_conf_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return SL_ENOMEM;
    *out = c;
    int rc = sl_cfg_str(x, json, "field", path, &c->field, 1);
    if (rc == 0) rc = scalar_list(x, json, "from", path, &c->from);
    if (rc == 0) rc = scalar_list(x, json, "to", path, &c->to);
    if (rc) return rc;
    const cJSON *cr = cJSON_GetObjectItemCaseSensitive(json, "crosses");
    if (cr) {
        if (!cJSON_IsNumber(cr) || !isfinite(cr->valuedouble) || fabs(cr->valuedouble) > SL_AMOUNT_MAX)
            return sl_cfg_error(x, "%s.crosses must be a number", path);
        c->has_crosses = 1;
        c->crosses = cr->valuedouble;
    }
    char *dir = NULL;
    if ((rc = sl_cfg_str(x, json, "direction", path, &dir, 0))) return rc;
    c->direction = DIR_UP;
    if (dir && strcmp(dir, "down") == 0) c->direction = DIR_DOWN;
    else if (dir && strcmp(dir, "any") == 0) c->direction = DIR_ANY;
    else if (dir && strcmp(dir, "up") != 0) rc = sl_cfg_error(x, "%s.direction must be \"up\", \"down\" or \"any\"", path);
    if (rc == 0 && dir && !c->has_crosses) rc = sl_cfg_error(x, "%s.direction goes with crosses", path);
    free(dir);
    return rc;
}

static int comp_check(sl_cfg_ctx_t *x, const trig_rule_t *r, const char *path, const sl_config_t *cfg)
{
    if (sl_fields_known(cfg, C(r)->field)) return 0;
    return sl_cfg_error(x, "%s.field \"%s\" is not a computed field%s (docs/COMPUTED.md lists them)", path,
                        C(r)->field, sl_fields_commerce_on(cfg) ? "" : ": computed.commerce is off");
}

static void comp_print(const trig_rule_t *r, sl_buf_t *out)
{
    const comp_conf_t *c = C(r);
    sl_buf_appends(out, ",\"field\":");
    sl_buf_append_json_str(out, c->field, strlen(c->field));
    char *f = c->from ? cJSON_PrintUnformatted(c->from) : NULL, *t = c->to ? cJSON_PrintUnformatted(c->to) : NULL;
    sl_buf_printf(out, ",\"from\":%s,\"to\":%s,\"crosses\":", f ? f : "null", t ? t : "null");
    cJSON_free(f);
    cJSON_free(t);
    if (c->has_crosses) sl_buf_printf(out, "%.17g", c->crosses);
    else sl_buf_appends(out, "null");
    sl_buf_printf(out, ",\"direction\":\"%s\"",
                  c->direction == DIR_DOWN ? "down" : c->direction == DIR_ANY ? "any" : "up");
}

static const char *const comp_keys[] = {"field", "from", "to", "crosses", "direction", NULL};

const trig_type_t trig_type_computed_change = {
    .name = "computed_change",
    .keys = comp_keys,
    .parse = comp_parse,
    .free_conf = comp_free_conf,
    .check = comp_check,
    .computed = comp_changed,
    .computed_watches = comp_watches,
    .print = comp_print,
};
