/* rule_table.c - the "triggers" section of the configuration, parsed by the
 * engine itself (sl_config_register), and the table of rule types: adding a
 * type is one file (rule_*.c) and one line in `types`. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const trig_type_t *const types[] = {&trig_type_page_visit, &trig_type_abandoned_cart, &trig_type_inactivity,
                                           &trig_type_trait_change, &trig_type_event,
                                           &trig_type_computed_change};
#define N_TYPES (sizeof(types) / sizeof(*types))

/* the keys every rule has */
#define RULE_NAME_MAX 128

static const char *const common_keys[] = {"name", "type", "max_per_profile_per_day", "requires_consent", "pressure",
                                          "where", "if", "in_payload", NULL};
#define MAX_IN_PAYLOAD 16

static void rules_free(void *parsed)
{
    trig_rules_t *rs = parsed;
    if (rs == NULL) return;
    for (size_t i = 0; i < rs->n; i++) {
        trig_rule_t *r = &rs->v[i];
        free(r->name);
        free(r->requires_consent);
        sl_rules_free(r->where);
        sl_rules_free(r->if_);
        sl_cfg_strv_free(r->in_payload, r->n_in_payload);
        if (r->type && r->conf) r->type->free_conf(r->conf);
    }
    free(rs->v);
    free(rs);
}

static int rules_defines(const void *parsed, const char *name)
{
    const trig_rules_t *rs = parsed;
    for (size_t i = 0; i < rs->n; i++)
        if (strcmp(rs->v[i].name, name) == 0) return 1;
    return 0;
}

static const trig_type_t *type_named(const char *name)
{
    for (size_t i = 0; i < N_TYPES; i++)
        if (strcmp(types[i]->name, name) == 0) return types[i];
    return NULL;
}

static int parse_rule(sl_cfg_ctx_t *x, const cJSON *json, size_t idx, trig_rule_t *r, const sl_config_t *cfg)
{
    char path[48], *type = NULL;
    snprintf(path, sizeof(path), "triggers[%zu]", idx);
    if (!cJSON_IsObject(json)) return sl_cfg_error(x, "%s must be an object", path);
    int rc = sl_cfg_str(x, json, "name", path, &r->name, 1);
    if (rc == 0) rc = sl_cfg_str(x, json, "type", path, &type, 1);
    if (rc) goto out;
    /* a name is a key (states, timers, ?rule=a,b): bounded, no separator */
    size_t nl = strlen(r->name);
    int bad = nl == 0 || nl > RULE_NAME_MAX;
    for (size_t i = 0; i < nl && !bad; i++) bad = (unsigned char)r->name[i] < 0x20 || r->name[i] == ',';
    if (bad) {
        rc = sl_cfg_error(x, "%s.name must be 1 to %d bytes without a comma or a control character", path,
                          RULE_NAME_MAX);
        goto out;
    }
    if ((r->type = type_named(type)) == NULL) {
        char list[256] = "";
        for (size_t i = 0; i < N_TYPES; i++)
            snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "", types[i]->name);
        rc = sl_cfg_error(x, "%s.type \"%s\" is not one of %s", path, type, list);
        goto out;
    }
    /* the keys of every rule, then the type's own: one list */
    const char *known[32];
    size_t n = 0;
    for (const char *const *k = common_keys; *k; k++) known[n++] = *k;
    for (const char *const *k = r->type->keys; k && *k && n < 31; k++) known[n++] = *k;
    known[n] = NULL;
    if ((rc = sl_cfg_check_keys(x, json, path, known))) goto out;
    if ((rc = r->type->parse(x, json, path, &r->conf))) goto out;
    if ((rc = sl_cfg_int(x, json, "max_per_profile_per_day", path, 0, 1000000, " (0 = no cap)", &r->max_per_day)))
        goto out;
    r->pressure = 1;
    if ((rc = sl_cfg_bool(x, json, "pressure", path, &r->pressure))) goto out;
    if ((rc = sl_cfg_str(x, json, "requires_consent", path, &r->requires_consent, 0))) goto out;
    if (r->requires_consent && strlen(r->requires_consent) > SL_CONSENT_MAX_NAME) {
        rc = sl_cfg_error(x, "%s.requires_consent must name a consent category of 1 to %d bytes", path,
                          SL_CONSENT_MAX_NAME);
        goto out;
    }
    /* a rule's where reads the causing event, its if the person (DESIGN.md) */
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(json, "where"), *f = cJSON_GetObjectItemCaseSensitive(json, "if");
    char cpath[64];
    snprintf(cpath, sizeof(cpath), "%s.where", path);
    if (w && (rc = sl_rules_compile(w, SL_RULES_EVENT, cpath, &r->where, x->err, x->errlen))) goto out;
    snprintf(cpath, sizeof(cpath), "%s.if", path);
    if (f && (rc = sl_rules_compile(f, SL_RULES_PROFILE, cpath, &r->if_, x->err, x->errlen))) goto out;
    if ((rc = sl_cfg_strv(x, json, "in_payload", path, &r->in_payload, &r->n_in_payload))) goto out;
    if (r->n_in_payload > MAX_IN_PAYLOAD) {
        rc = sl_cfg_error(x, "%s.in_payload names at most %d computed fields", path, MAX_IN_PAYLOAD);
        goto out;
    }
    for (size_t i = 0; i < r->n_in_payload; i++)
        if (!sl_fields_known(cfg, r->in_payload[i])) {
            rc = sl_cfg_error(x, "%s.in_payload: \"%s\" is not a computed field%s", path, r->in_payload[i],
                              sl_fields_commerce_on(cfg) ? "" : " (computed.commerce is off)");
            goto out;
        }
    if (r->type->check) rc = r->type->check(x, r, path, cfg);
out:
    if (rc == SL_ETOOBIG) rc = SL_EINVAL; /* a condition past its bounds: a config error like any other */
    free(type);
    return rc;
}

static int rules_parse(const cJSON *json, const sl_config_t *c, void **out, char *err, size_t errlen)
{
    sl_cfg_ctx_t x = {err, errlen};
    *out = NULL;
    if (json == NULL) return 0;
    if (!cJSON_IsArray(json)) return sl_cfg_error(&x, "triggers must be an array of rules");
    trig_rules_t *rs = calloc(1, sizeof(*rs));
    size_t n = (size_t)cJSON_GetArraySize(json);
    if (rs == NULL || (rs->v = calloc(n ? n : 1, sizeof(*rs->v))) == NULL) {
        free(rs);
        return SL_ENOMEM;
    }
    int rc = 0;
    for (const cJSON *j = json->child; j && rc == 0; j = j->next) {
        size_t i = rs->n++;
        if ((rc = parse_rule(&x, j, i, &rs->v[i], c))) break;
        for (size_t k = 0; k < i && rc == 0; k++)
            if (strcmp(rs->v[k].name, rs->v[i].name) == 0)
                rc = sl_cfg_error(&x, "triggers[%zu].name \"%s\" is used twice", i, rs->v[i].name);
    }
    if (rc == 0 && rs->n > MAX_RULES) rc = sl_cfg_error(&x, "triggers holds at most %d rules", MAX_RULES);
    if (rc) {
        rules_free(rs);
        return rc;
    }
    *out = rs;
    return 0;
}

static const sl_config_section_t section = {
    .key = "triggers", .parse = rules_parse, .free = rules_free, .defines = rules_defines};
static int section_index = -1;

int sl_trig_config_register(void)
{
    int i = sl_config_register(&section);
    if (i < 0) return i;
    section_index = i;
    return 0;
}

const trig_rules_t *trig_rules(const sl_config_t *cfg)
{
    static const trig_rules_t none = {NULL, 0};
    const trig_rules_t *rs = sl_config_section(cfg, section_index);
    return rs ? rs : &none;
}

const trig_rule_t *trig_rule_by_name(const sl_config_t *cfg, const char *name, size_t len)
{
    const trig_rules_t *rs = trig_rules(cfg);
    for (size_t i = 0; i < rs->n; i++)
        if (strlen(rs->v[i].name) == len && memcmp(rs->v[i].name, name, len) == 0) return &rs->v[i];
    return NULL;
}

size_t sl_trig_rule_count(const sl_config_t *cfg) { return trig_rules(cfg)->n; }

void trig_rule_print(const trig_rule_t *r, sl_buf_t *out)
{
        sl_buf_appends(out, "{\"name\":");
        sl_buf_append_json_str(out, r->name, strlen(r->name));
        sl_buf_printf(out, ",\"type\":\"%s\"", r->type->name);
        if (r->type->print) r->type->print(r, out);
        sl_buf_appends(out, ",\"where\":");
        if (r->where) sl_rules_print(r->where, out);
        else sl_buf_appends(out, "null");
        sl_buf_appends(out, ",\"if\":");
        if (r->if_) sl_rules_print(r->if_, out);
        else sl_buf_appends(out, "null");
        if (r->n_in_payload) {
            sl_buf_appends(out, ",\"in_payload\":[");
            for (size_t i = 0; i < r->n_in_payload; i++) {
                if (i) sl_buf_appends(out, ",");
                sl_buf_append_json_str(out, r->in_payload[i], strlen(r->in_payload[i]));
            }
            sl_buf_appends(out, "]");
        }
        sl_buf_printf(out, ",\"max_per_profile_per_day\":%d,\"pressure\":%s,\"requires_consent\":", r->max_per_day,
                      r->pressure ? "true" : "false");
        if (r->requires_consent) sl_buf_append_json_str(out, r->requires_consent, strlen(r->requires_consent));
        else sl_buf_appends(out, "null");
}

int sl_trig_rules_print(const sl_config_t *cfg, sl_buf_t *out)
{
    const trig_rules_t *rs = trig_rules(cfg);
    sl_buf_appends(out, "[");
    for (size_t i = 0; i < rs->n; i++) {
        if (i) sl_buf_appends(out, ",");
        trig_rule_print(&rs->v[i], out);
        sl_buf_appends(out, "}");
    }
    sl_buf_appends(out, "]");
    return out->data ? 0 : SL_ENOMEM;
}
