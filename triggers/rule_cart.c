/* rule_cart.c - the abandoned_cart rule (docs/TRIGGERS.md): start events open
 * or fill a person's cart, the cancel event closes it, and a durable timer
 * fires once the cart saw no activity for the delay; a cart built
 * anonymously waits for the login that identifies its owner.
 *
 * Timers are lazy: the state records when the rule should next look at it
 * (due_ms) and whether a timer is pending (timer_ms). New activity only moves
 * due_ms forward; the pending timer, when it fires, sees the later due_ms and
 * re-arms itself. So an event costs a state write, never a timer delete. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PRODUCTS 50
#define WAITING_CART_TTL_MS (30LL * 86400000) /* an anonymous abandoned cart waits this long for an identity */

typedef struct {
    int64_t delay_ms;      /* default 1h */
    char **start_events;   /* default Product Added, Cart Viewed, Checkout Started */
    size_t n_start_events;
    char *cancel_event;    /* "Order Completed" */
    char *remove_event;    /* "Product Removed" takes a product out of the cart */
} cart_conf_t;
#define C(r) ((const cart_conf_t *)(r)->conf)

typedef struct {
    int64_t started_ms, last_ms, due_ms, timer_ms;
    uint32_t waiting, n_products;
    double value;
    char currency[8];
    uint32_t products_len; /* then the products JSON array */
    uint32_t pad;
} cart_t;

static int is_start_event(const trig_rule_t *r, const char *ev)
{
    for (size_t i = 0; i < C(r)->n_start_events; i++)
        if (strcmp(C(r)->start_events[i], ev) == 0) return 1;
    return 0;
}


static int cart_load(const MDB_val *v, cart_t *c, cJSON **products)
{
    *products = NULL;
    if (v->mv_size < sizeof(*c)) return MDB_CORRUPTED;
    memcpy(c, v->mv_data, sizeof(*c));
    if (sizeof(*c) + c->products_len != v->mv_size) return MDB_CORRUPTED;
    *products = cJSON_ParseWithLength((const char *)v->mv_data + sizeof(*c), c->products_len);
    if (!cJSON_IsArray(*products)) {
        cJSON_Delete(*products);
        *products = cJSON_CreateArray();
    }
    return *products ? 0 : SL_ENOMEM;
}

static int cart_save(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, cart_t *c, cJSON *products)
{
    double value = 0;
    const cJSON *p;
    c->n_products = 0;
    cJSON_ArrayForEach(p, products) {
        const cJSON *price = cJSON_GetObjectItemCaseSensitive(p, "price");
        const cJSON *qty = cJSON_GetObjectItemCaseSensitive(p, "quantity");
        /* each figure was bounded when it entered (product_of): the sum is checked all the same */
        if (cJSON_IsNumber(price)) sl_amount_add(&value, price->valuedouble * (cJSON_IsNumber(qty) ? qty->valuedouble : 1));
        c->n_products++;
    }
    c->value = value;
    char *txt = cJSON_PrintUnformatted(products);
    if (txt == NULL) return SL_ENOMEM;
    c->products_len = (uint32_t)strlen(txt);
    t->v.len = 0;
    int rc = sl_buf_append(&t->v, c, sizeof(*c)) || sl_buf_append(&t->v, txt, c->products_len) ? SL_ENOMEM : 0;
    cJSON_free(txt);
    if (rc) return rc;
    return trig_state_put(t, txn, rule, person, t->v.data, t->v.len);
}

/* The product a cart event's properties describe, normalised to
 * {product_id, name, price, quantity}; NULL when it names none. A price or
 * quantity that is not finite or past SL_AMOUNT_MAX is left out (counted in
 * *ignored): 1e300 x 1e300 would make the cart's value inf. */
static cJSON *product_of(const cJSON *props, uint64_t *ignored)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(props, "product_id");
    if (id == NULL) id = cJSON_GetObjectItemCaseSensitive(props, "id");
    if (id == NULL) id = cJSON_GetObjectItemCaseSensitive(props, "sku");
    if (!cJSON_IsString(id) && !cJSON_IsNumber(id)) return NULL;
    cJSON *p = cJSON_CreateObject();
    if (p == NULL) return NULL;
    if (cJSON_IsString(id)) cJSON_AddStringToObject(p, "product_id", id->valuestring);
    else {
        char n[32];
        snprintf(n, sizeof(n), "%.0f", id->valuedouble);
        cJSON_AddStringToObject(p, "product_id", n);
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(props, "name");
    if (cJSON_IsString(name)) cJSON_AddStringToObject(p, "name", name->valuestring);
    const cJSON *price = cJSON_GetObjectItemCaseSensitive(props, "price");
    if (cJSON_IsNumber(price) && sl_amount_ok(price->valuedouble)) cJSON_AddNumberToObject(p, "price", price->valuedouble);
    else if (cJSON_IsNumber(price)) (*ignored)++;
    const cJSON *qty = cJSON_GetObjectItemCaseSensitive(props, "quantity");
    int qty_ok = cJSON_IsNumber(qty) && sl_amount_ok(qty->valuedouble);
    if (cJSON_IsNumber(qty) && !qty_ok) (*ignored)++;
    cJSON_AddNumberToObject(p, "quantity", qty_ok && qty->valuedouble > 0 ? qty->valuedouble : 1);
    return p;
}

static int same_product(const cJSON *a, const cJSON *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(a, "product_id"), *y = cJSON_GetObjectItemCaseSensitive(b, "product_id");
    return cJSON_IsString(x) && cJSON_IsString(y) && strcmp(x->valuestring, y->valuestring) == 0;
}

/* Adds p to products (same product_id: quantities add), bounded. Takes p. */
static void cart_add(cJSON *products, cJSON *p)
{
    cJSON *q;
    cJSON_ArrayForEach(q, products) {
        if (same_product(q, p)) {
            cJSON *qa = cJSON_GetObjectItemCaseSensitive(q, "quantity");
            const cJSON *pa = cJSON_GetObjectItemCaseSensitive(p, "quantity");
            if (qa && pa && cJSON_IsNumber(qa) && cJSON_IsNumber(pa)) {
                double sum = qa->valuedouble; /* both bounded (product_of, or a merge of two carts) */
                if (sl_amount_add(&sum, pa->valuedouble) == 0 && sl_amount_ok(sum)) cJSON_SetNumberValue(qa, sum);
            }
            cJSON_Delete(p);
            return;
        }
    }
    if (cJSON_GetArraySize(products) < MAX_PRODUCTS) cJSON_AddItemToArray(products, p);
    else cJSON_Delete(p);
}

static int cart_fire(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const cart_t *c,
                     const cJSON *products, int64_t now)
{
    char started[32], last[32], abandoned[32];
    sl_time_format_iso(c->started_ms, started);
    sl_time_format_iso(c->last_ms, last);
    sl_time_format_iso(c->last_ms + C(r)->delay_ms, abandoned);
    char *ptxt = cJSON_PrintUnformatted(products);
    if (ptxt == NULL) return SL_ENOMEM;
    sl_buf_t d = {0};
    sl_buf_printf(&d, "{\"products\":%s,\"value\":", ptxt);
    cJSON_free(ptxt);
    sl_buf_append_amount(&d, c->value);
    sl_buf_appends(&d, ",\"currency\":");
    if (c->currency[0]) sl_buf_append_json_str(&d, c->currency, strnlen(c->currency, sizeof(c->currency)));
    else sl_buf_appends(&d, "null");
    sl_buf_printf(&d, ",\"started_at\":\"%s\",\"last_activity_at\":\"%s\",\"abandoned_at\":\"%s\"}", started, last,
                  abandoned);
    int rc = d.data ? trig_fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
    sl_buf_free(&d);
    return rc;
}

static int cart_event(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, const rule_msg_t *m,
                      uint64_t person, int identified, int64_t now)
{
    const char *ev = m->event;
    int rc;
    if (m->track && ev && C(r)->cancel_event && strcmp(ev, C(r)->cancel_event) == 0)
        return trig_state_del(t, txn, r->name, person); /* bought: the pending timer will find nothing */
    int start = m->track && ev && is_start_event(r, ev);
    int removed = m->track && ev && C(r)->remove_event && strcmp(ev, C(r)->remove_event) == 0;
    /* any other event reads the cart only to fire an identified person's
     * waiting one: an anonymous visitor's (most events) is not read at all */
    if (!start && !removed && !identified) return 0;
    MDB_val v;
    rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    int have = rc == 0;
    if (!start && !removed) {
        if (!have) return 0;
        /* An identified person with an abandoned anonymous cart: fire now. */
        cart_t c;
        cJSON *products;
        if ((rc = cart_load(&v, &c, &products))) return rc;
        if (c.waiting) {
            rc = cart_fire(t, txn, r, person, &c, products, now);
            if (rc == 0) rc = trig_state_del(t, txn, r->name, person);
        }
        cJSON_Delete(products);
        return rc;
    }
    if (removed && !have) return 0;
    cart_t c;
    cJSON *products = NULL;
    if (have) {
        if ((rc = cart_load(&v, &c, &products))) return rc;
    } else {
        memset(&c, 0, sizeof(c));
        c.started_ms = m->ts_ms;
        if ((products = cJSON_CreateArray()) == NULL) return SL_ENOMEM;
    }
    const cJSON *props = m->props;
    if (start) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(props, "products");
        if (cJSON_IsArray(list) && cJSON_GetArraySize(list) > 0) {
            /* Cart Viewed / Checkout Started carry the whole cart: it replaces ours. */
            cJSON_Delete(products);
            products = cJSON_CreateArray();
            const cJSON *x;
            cJSON_ArrayForEach(x, list) {
                cJSON *p = product_of(x, &t->pend.amounts_ignored);
                if (p && products) cart_add(products, p);
            }
        } else {
            cJSON *p = product_of(props, &t->pend.amounts_ignored);
            if (p) cart_add(products, p);
        }
        const char *cur = NULL;
        const cJSON *cu = cJSON_GetObjectItemCaseSensitive(props, "currency");
        if (cJSON_IsString(cu)) cur = cu->valuestring;
        if (cur) snprintf(c.currency, sizeof(c.currency), "%s", cur);
    } else {
        cJSON *p = product_of(props, &t->pend.amounts_ignored);
        for (int i = 0; p && i < cJSON_GetArraySize(products); i++)
            if (same_product(cJSON_GetArrayItem(products, i), p)) {
                cJSON_DeleteItemFromArray(products, i);
                break;
            }
        cJSON_Delete(p);
    }
    if (products == NULL) return SL_ENOMEM;
    if (cJSON_GetArraySize(products) == 0) {
        cJSON_Delete(products);
        return trig_state_del(t, txn, r->name, person); /* emptied: no cart */
    }
    int64_t act = m->ts_ms > c.last_ms ? m->ts_ms : c.last_ms;
    if (act > now) act = now;
    c.last_ms = act;
    c.due_ms = act + C(r)->delay_ms;
    c.waiting = 0;
    if (c.timer_ms == 0 || c.timer_ms > c.due_ms) { /* none pending, or only a later one (waiting expiry) */
        int64_t due = c.due_ms > now ? c.due_ms : now;
        if ((rc = trig_timer_add(t, txn, due, person, r->name))) goto out;
        c.timer_ms = due;
    }
    rc = cart_save(t, txn, r->name, person, &c, products);
out:
    cJSON_Delete(products);
    return rc;
}

static int cart_timer(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, int64_t now)
{
    MDB_val v;
    int rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    cart_t c;
    cJSON *products;
    if ((rc = cart_load(&v, &c, &products))) return rc;
    if (c.waiting) { /* the waiting period ran out without an identity */
        if (c.due_ms + WAITING_CART_TTL_MS <= now) rc = trig_state_del(t, txn, r->name, person);
        goto out;
    }
    if (c.due_ms > now) { /* activity since: look again later */
        c.timer_ms = c.due_ms;
        if ((rc = trig_timer_add(t, txn, c.due_ms, person, r->name)) == 0)
            rc = cart_save(t, txn, r->name, person, &c, products);
        goto out;
    }
    int identified = 0;
    rc = sl_stitch_person_payload(t->stitch, txn, person, NULL, &identified, NULL);
    if (rc == SL_ENOTFOUND) {
        rc = trig_state_del(t, txn, r->name, person);
    } else if (rc == 0 && identified) {
        if ((rc = cart_fire(t, txn, r, person, &c, products, now)) == 0) rc = trig_state_del(t, txn, r->name, person);
    } else if (rc == 0) {
        /* Abandoned while anonymous: it fires when the visitor is identified. */
        c.waiting = 1;
        c.timer_ms = c.due_ms + WAITING_CART_TTL_MS;
        if ((rc = trig_timer_add(t, txn, c.timer_ms, person, r->name)) == 0)
            rc = cart_save(t, txn, r->name, person, &c, products);
    }
out:
    cJSON_Delete(products);
    return rc;
}

/* absorbed's cart joins survivor's: products added, earliest start, latest activity. */
static int cart_merge(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t sv, uint64_t ab, int64_t now)
{
    MDB_val v;
    int rc = trig_state_get(t, txn, r->name, ab, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    cart_t a, s;
    cJSON *pa, *ps = NULL;
    if ((rc = cart_load(&v, &a, &pa))) return rc;
    if ((rc = trig_state_del(t, txn, r->name, ab))) goto out;
    rc = trig_state_get(t, txn, r->name, sv, &v);
    if (rc == MDB_NOTFOUND) {
        s = a;
        ps = pa;
        pa = NULL;
        rc = 0;
    } else if (rc == 0 && (rc = cart_load(&v, &s, &ps)) == 0) {
        cJSON *x;
        while (pa && (x = cJSON_DetachItemFromArray(pa, 0)) != NULL) cart_add(ps, x);
        if (a.started_ms && a.started_ms < s.started_ms) s.started_ms = a.started_ms;
        if (a.last_ms > s.last_ms) {
            s.last_ms = a.last_ms;
            s.due_ms = a.due_ms;
        }
        s.waiting = s.waiting && a.waiting;
        if (!s.currency[0]) memcpy(s.currency, a.currency, sizeof(s.currency));
    }
    if (rc) goto out;
    /* The absorbed state's timer is keyed by the absorbed person: arm one for the survivor. */
    int64_t due = s.waiting ? s.due_ms + WAITING_CART_TTL_MS : s.due_ms;
    if (due < now) due = now;
    if ((rc = trig_timer_add(t, txn, due, sv, r->name))) goto out;
    s.timer_ms = due;
    rc = cart_save(t, txn, r->name, sv, &s, ps);
out:
    cJSON_Delete(pa);
    cJSON_Delete(ps);
    return rc;
}

static void cart_free_conf(void *conf)
{
    cart_conf_t *c = conf;
    if (c == NULL) return;
    sl_cfg_strv_free(c->start_events, c->n_start_events);
    free(c->cancel_event);
    free(c->remove_event);
    free(c);
}

static int cart_parse(sl_cfg_ctx_t *x, const cJSON *json, const char *path, void **out)
{
    static const char *starts[] = {"Product Added", "Cart Viewed", "Checkout Started"};
    cart_conf_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return SL_ENOMEM;
    *out = c;
    c->delay_ms = 3600000;
    c->start_events = sl_cfg_strv_dup(starts, 3);
    c->n_start_events = 3;
    c->cancel_event = strdup("Order Completed");
    c->remove_event = strdup("Product Removed");
    if (c->start_events == NULL || c->cancel_event == NULL || c->remove_event == NULL) return SL_ENOMEM;
    int rc = sl_cfg_duration(x, json, "delay", path, &c->delay_ms);
    if (rc == 0) rc = sl_cfg_strv(x, json, "start_events", path, &c->start_events, &c->n_start_events);
    if (rc == 0) rc = sl_cfg_str(x, json, "cancel_event", path, &c->cancel_event, 0);
    if (rc == 0) rc = sl_cfg_str(x, json, "remove_event", path, &c->remove_event, 0);
    return rc;
}

static void cart_print(const trig_rule_t *r, sl_buf_t *out)
{
    sl_buf_appends(out, ",\"delay\":");
    sl_buf_append_duration(out, C(r)->delay_ms);
    sl_buf_appends(out, ",\"start_events\":[");
    for (size_t i = 0; i < C(r)->n_start_events; i++) {
        if (i) sl_buf_appends(out, ",");
        sl_buf_append_json_str(out, C(r)->start_events[i], strlen(C(r)->start_events[i]));
    }
    sl_buf_appends(out, "],\"cancel_event\":");
    sl_buf_append_json_str(out, C(r)->cancel_event, strlen(C(r)->cancel_event));
    sl_buf_appends(out, ",\"remove_event\":");
    sl_buf_append_json_str(out, C(r)->remove_event, strlen(C(r)->remove_event));
}

static const char *const cart_keys[] = {"delay", "start_events", "cancel_event", "remove_event", NULL};

const trig_type_t trig_type_abandoned_cart = {
    .name = "abandoned_cart", .keys = cart_keys, .parse = cart_parse, .free_conf = cart_free_conf,
    .event = cart_event, .merge = cart_merge, .timer = cart_timer, .print = cart_print,
};
