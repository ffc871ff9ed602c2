/* rule_trait.c - the trait_change rule (docs/TRIGGERS.md): an identify that
 * changes the watched trait's value (compared as JSON) fires with the old
 * and the new value; its first value only with on_first_set. No state. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *trait;
    int on_first_set;      /* also fire when the trait had no value (false) */
} trait_conf_t;
#define T(r) ((const trait_conf_t *)(r)->conf)

static int trait_watches(const trig_rule_t *r, const char *name) { return strcmp(T(r)->trait, name) == 0; }

static int trait_changed(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const char *name,
                         const cJSON *old_v, const cJSON *new_v, int64_t now)
{
    if (strcmp(T(r)->trait, name) != 0) return 0;
    if (old_v == NULL && !T(r)->on_first_set) return 0;
    char *o = old_v ? cJSON_PrintUnformatted(old_v) : NULL;
    char *n = cJSON_PrintUnformatted(new_v);
    sl_buf_t d = {0};
    sl_buf_appends(&d, "{\"trait\":");
    sl_buf_append_json_str(&d, name, strlen(name));
    sl_buf_printf(&d, ",\"old\":%s,\"new\":%s}", o ? o : "null", n ? n : "null");
    cJSON_free(o);
    cJSON_free(n);
    int rc = d.data ? trig_fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
    sl_buf_free(&d);
    return rc;
}

static void trait_free_conf(void *conf)
{
    trait_conf_t *c = conf;
    if (c == NULL) return;
    free(c->trait);
    free(c);
}

static int trait_parse(sl_cfg_ctx_t *x, const cJSON *json, const char *path, void **out)
{
    trait_conf_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return SL_ENOMEM;
    *out = c;
    int rc = sl_cfg_str(x, json, "trait", path, &c->trait, 1);
    if (rc == 0) rc = sl_cfg_bool(x, json, "on_first_set", path, &c->on_first_set);
    return rc;
}

static void trait_print(const trig_rule_t *r, sl_buf_t *out)
{
    sl_buf_appends(out, ",\"trait\":");
    sl_buf_append_json_str(out, T(r)->trait, strlen(T(r)->trait));
    sl_buf_printf(out, ",\"on_first_set\":%s", T(r)->on_first_set ? "true" : "false");
}

static const char *const trait_keys[] = {"trait", "on_first_set", NULL};

const trig_type_t trig_type_trait_change = {
    .name = "trait_change", .keys = trait_keys, .parse = trait_parse, .free_conf = trait_free_conf,
    .trait = trait_changed, .watches = trait_watches, .print = trait_print,
};
