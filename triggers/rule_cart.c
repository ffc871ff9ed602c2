/* rule_cart.c - the abandoned_cart rule (docs/TRIGGERS.md): start events open
 * or fill a person's cart, the cancel event closes it, and a durable timer
 * fires once the cart saw no activity for the delay; a cart built
 * anonymously waits for the login that identifies its owner.
 *
 * Timers are lazy: the state records when the rule should next look at it
 * (due_ms) and whether a timer is pending (timer_ms). New activity only moves
 * due_ms forward; the pending timer, when it fires, sees the later due_ms and
 * re-arms itself. So an event costs a state write, never a timer delete.
 *
 * The state is a record (internal.h): the cart's times, value and currency,
 * then each product's figures and strings, read and rewritten with no JSON
 * parse; JSON is printed only for the trigger. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAITING_CART_TTL_MS (30LL * 86400000) /* an anonymous abandoned cart waits this long for an identity */

typedef struct {
    int64_t delay_ms;      /* default 1h */
    char **start_events;   /* default Product Added, Cart Viewed, Checkout Started */
    size_t n_start_events;
    char *cancel_event;    /* "Order Completed" */
    char *remove_event;    /* "Product Removed" takes a product out of the cart */
} cart_conf_t;
#define C(r) ((const cart_conf_t *)(r)->conf)

#define CART_VERSION 1
_Static_assert(sizeof(trig_cart_v0_t) == 64, "the layout written before the header");
_Static_assert(sizeof(trig_cart_fix_t) == 56 && sizeof(trig_cart_prod_t) == 24, "version 1's layout");

/* A product as an event's properties (or the cart it comes from) describe
 * it; its strings live as long as they do. */
typedef struct {
    const char *id, *name;
    size_t id_len, name_len;
    unsigned flags;        /* TRIG_CART_PRICE | TRIG_CART_NAME */
    double price, quantity;
    char num[32];          /* a numeric id, printed */
} cart_prod_t;

static int is_start_event(const trig_rule_t *r, const char *ev)
{
    for (size_t i = 0; i < C(r)->n_start_events; i++)
        if (strcmp(C(r)->start_events[i], ev) == 0) return 1;
    return 0;
}

/* ---- the record ---- */

void trig_cart_init(trig_cart_t *c)
{
    memset(c, 0, sizeof(*c));
}

void trig_cart_free(trig_cart_t *c)
{
    sl_buf_free(&c->strs);
}

static const char *item_id(const trig_cart_t *c, uint32_t i) { return c->strs.data + c->items[i].id_off; }

/* The index of p's product_id in c, or c->n. */
static uint32_t cart_find(const trig_cart_t *c, const cart_prod_t *p)
{
    uint32_t i = 0;
    while (i < c->n && (c->items[i].p.id_len != p->id_len || memcmp(item_id(c, i), p->id, p->id_len) != 0)) i++;
    return i;
}

/* Adds p to c (the same product_id: quantities add), at most
 * TRIG_CART_MAX_PRODUCTS. 0 or SL_ENOMEM. */
static int cart_add(trig_cart_t *c, const cart_prod_t *p)
{
    uint32_t i = cart_find(c, p);
    if (i < c->n) {
        double sum = c->items[i].p.quantity; /* both bounded (product_of, or a merge of two carts) */
        if (sl_amount_add(&sum, p->quantity) == 0 && sl_amount_ok(sum)) c->items[i].p.quantity = sum;
        return 0;
    }
    if (c->n >= TRIG_CART_MAX_PRODUCTS) return 0;
    uint32_t at = (uint32_t)c->strs.len;
    if (sl_buf_append(&c->strs, p->id, p->id_len) || sl_buf_append(&c->strs, p->name, p->name_len)) return SL_ENOMEM;
    c->items[c->n].id_off = at;
    c->items[c->n].name_off = at + (uint32_t)p->id_len;
    c->items[c->n].p = (trig_cart_prod_t){.price = p->price, .quantity = p->quantity, .id_len = (uint16_t)p->id_len,
                                          .name_len = (uint16_t)p->name_len, .flags = (uint8_t)p->flags};
    c->n++;
    return 0;
}

/* Product i of c as cart_add takes it. */
static void item_prod(const trig_cart_t *c, uint32_t i, cart_prod_t *p)
{
    const trig_cart_prod_t *q = &c->items[i].p;
    *p = (cart_prod_t){.id = item_id(c, i), .name = c->strs.data + c->items[i].name_off, .id_len = q->id_len,
                       .name_len = q->name_len, .flags = q->flags, .price = q->price, .quantity = q->quantity};
}

/* The product a cart event's properties describe, normalised to
 * {product_id, name, price, quantity}: 1, or 0 when they name none (or a
 * product_id past TRIG_CART_ID_MAX). A name past TRIG_CART_NAME_MAX is cut
 * between two characters. A price or quantity that is not finite or past
 * SL_AMOUNT_MAX is left out (counted in *ignored): 1e300 x 1e300 would make
 * the cart's value inf. */
static int product_of(sl_jval_t props, cart_prod_t *p, uint64_t *ignored, sl_arena_t *a)
{
    sl_jval_t id = sl_jget(props, "product_id");
    if (sl_jtype(id) == SL_JNONE) id = sl_jget(props, "id");
    if (sl_jtype(id) == SL_JNONE) id = sl_jget(props, "sku");
    memset(p, 0, sizeof(*p));
    p->name = "";
    double x;
    /* strings as cJSON read them: up to a \u0000 */
    if (sl_jtype(id) == SL_JSTR) {
        if ((p->id = sl_jstr(id, a, NULL)) == NULL) return 0;
    } else if (sl_jtype(id) == SL_JNUM && sl_jnum(id, &x)) {
        snprintf(p->num, sizeof(p->num), "%.0f", x);
        p->id = p->num;
    } else {
        return 0;
    }
    if ((p->id_len = strlen(p->id)) > TRIG_CART_ID_MAX) return 0;
    const char *name = sl_jstr(sl_jget(props, "name"), a, NULL); /* NULL: no string */
    if (name) {
        p->flags |= TRIG_CART_NAME;
        p->name = name;
        p->name_len = strlen(p->name);
        if (p->name_len > TRIG_CART_NAME_MAX) { /* not inside a UTF-8 sequence */
            p->name_len = TRIG_CART_NAME_MAX;
            while (p->name_len && ((unsigned char)p->name[p->name_len] & 0xC0) == 0x80) p->name_len--;
        }
    }
    double price, qty;
    int has_price = sl_jnum(sl_jget(props, "price"), &price), has_qty = sl_jnum(sl_jget(props, "quantity"), &qty);
    if (has_price && sl_amount_ok(price)) {
        p->flags |= TRIG_CART_PRICE;
        p->price = price;
    } else if (has_price) {
        (*ignored)++;
    }
    int qty_ok = has_qty && sl_amount_ok(qty);
    if (has_qty && !qty_ok) (*ignored)++;
    p->quantity = qty_ok && qty > 0 ? qty : 1;
    return 1;
}

/* The record from before the header: its products are JSON, read as
 * events' products are (they were normalised when they came in). */
static int cart_decode_v0(const MDB_val *v, trig_cart_t *c)
{
    trig_cart_v0_t o;
    if (v->mv_size < sizeof(o)) return MDB_CORRUPTED;
    memcpy(&o, v->mv_data, sizeof(o));
    if (sizeof(o) + (size_t)o.products_len != v->mv_size) return MDB_CORRUPTED;
    c->f = (trig_cart_fix_t){.started_ms = o.started_ms, .last_ms = o.last_ms, .due_ms = o.due_ms,
                             .timer_ms = o.timer_ms, .value = o.value, .waiting = o.waiting != 0};
    memcpy(c->f.currency, o.currency, sizeof(c->f.currency) - 1);
    sl_jval_t list = sl_jroot((const char *)v->mv_data + sizeof(o), o.products_len), k, x;
    int rc = sl_jtype(list) == SL_JARR ? 0 : MDB_CORRUPTED;
    uint64_t ignored = 0;
    sl_arena_t a;
    sl_arena_init(&a);
    sl_jiter_t it;
    sl_jiter(list, &it);
    while (rc == 0 && sl_jnext(&it, &k, &x)) {
        cart_prod_t p;
        rc = product_of(x, &p, &ignored, &a) ? cart_add(c, &p) : MDB_CORRUPTED;
    }
    sl_arena_free(&a);
    return rc;
}

int trig_cart_decode(const MDB_val *v, trig_cart_t *c)
{
    trig_cart_init(c);
    if (!trig_state_is_rec(v)) return cart_decode_v0(v, c);
    uint32_t n;
    trig_rd_t rd;
    int rc = trig_state_open(v, TRIG_STATE_CART, CART_VERSION, &n, &rd);
    if (rc || (rc = trig_rd_copy(&rd, &c->f, sizeof(c->f)))) return rc;
    if (n > TRIG_CART_MAX_PRODUCTS || c->f.waiting > 1 || c->f.currency[sizeof(c->f.currency) - 1])
        return MDB_CORRUPTED;
    if (sl_buf_reserve(&c->strs, rd.left)) return SL_ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        trig_cart_prod_t q;
        const char *id, *name;
        if (trig_rd_copy(&rd, &q, sizeof(q)) || (id = trig_rd_take(&rd, q.id_len)) == NULL ||
            (name = trig_rd_take(&rd, q.name_len)) == NULL)
            return MDB_CORRUPTED;
        if ((q.flags & ~(TRIG_CART_PRICE | TRIG_CART_NAME)) || (q.name_len && !(q.flags & TRIG_CART_NAME)) ||
            q.id_len > TRIG_CART_ID_MAX || q.name_len > TRIG_CART_NAME_MAX || !sl_amount_ok(q.price) ||
            !sl_amount_ok(q.quantity))
            return MDB_CORRUPTED;
        c->items[i].p = q;
        c->items[i].id_off = (uint32_t)c->strs.len;
        c->items[i].name_off = (uint32_t)c->strs.len + q.id_len;
        sl_buf_append(&c->strs, id, q.id_len); /* reserved above */
        sl_buf_append(&c->strs, name, q.name_len);
        c->n = i + 1;
    }
    return rd.left ? MDB_CORRUPTED : 0;
}

int trig_cart_encode(const trig_cart_t *c, sl_buf_t *b)
{
    int rc = trig_state_begin(b, TRIG_STATE_CART, CART_VERSION, c->n);
    if (rc || sl_buf_append(b, &c->f, sizeof(c->f))) return rc ? rc : SL_ENOMEM;
    for (uint32_t i = 0; i < c->n; i++)
        if (sl_buf_append(b, &c->items[i].p, sizeof(c->items[i].p)) ||
            sl_buf_append(b, item_id(c, i), c->items[i].p.id_len) ||
            sl_buf_append(b, c->strs.data + c->items[i].name_off, c->items[i].p.name_len))
            return SL_ENOMEM;
    return 0;
}

/* Whether the cart of v waits for its owner's login, from its fixed part
 * alone (asked at every event of an identified person who has a cart). */
static int cart_waiting(const MDB_val *v, int *waiting)
{
    uint32_t n;
    trig_rd_t rd;
    if (!trig_state_is_rec(v)) {
        trig_cart_v0_t o;
        if (v->mv_size < sizeof(o)) return MDB_CORRUPTED;
        memcpy(&o, v->mv_data, sizeof(o));
        *waiting = o.waiting != 0;
        return 0;
    }
    trig_cart_fix_t f;
    int rc = trig_state_open(v, TRIG_STATE_CART, CART_VERSION, &n, &rd);
    if (rc || (rc = trig_rd_copy(&rd, &f, sizeof(f)))) return rc;
    *waiting = f.waiting != 0;
    return 0;
}

static int cart_check(const MDB_val *v)
{
    trig_cart_t c;
    int rc = trig_cart_decode(v, &c);
    trig_cart_free(&c);
    return rc;
}

static int cart_verify(sl_trig_t *t, MDB_txn *txn, MDB_txn *log_txn, const trig_rule_t *r, uint64_t person,
                       FILE *out, uint64_t *n, uint64_t *problems)
{
    return trig_state_verify(t, txn, r, person, out, problems, cart_check, "cart");
}

static int cart_save(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, trig_cart_t *c)
{
    /* each figure was bounded when it entered (product_of): the sum is checked all the same */
    double value = 0;
    for (uint32_t i = 0; i < c->n; i++)
        if (c->items[i].p.flags & TRIG_CART_PRICE) sl_amount_add(&value, c->items[i].p.price * c->items[i].p.quantity);
    c->f.value = value;
    int rc = trig_cart_encode(c, &t->v);
    return rc ? rc : trig_state_put(t, txn, rule, person, t->v.data, t->v.len);
}

int trig_cart_update(trig_cart_t *c, sl_jval_t props, int start, uint64_t *ignored, sl_arena_t *a)
{
    cart_prod_t p;
    int rc = 0;
    if (sl_jtype(props) != SL_JOBJ) props = (sl_jval_t){NULL, 0}; /* as {} */
    if (!start) { /* the remove event */
        uint32_t i = product_of(props, &p, ignored, a) ? cart_find(c, &p) : c->n;
        if (i < c->n) {
            memmove(c->items + i, c->items + i + 1, (c->n - i - 1) * sizeof(c->items[0]));
            c->n--;
        }
        return 0;
    }
    sl_jval_t list = sl_jget(props, "products"), k, x;
    sl_jiter_t it;
    sl_jiter(list, &it);
    if (sl_jtype(list) == SL_JARR && sl_jnext(&it, &k, &x)) {
        /* Cart Viewed / Checkout Started carry the whole cart: it replaces ours. */
        c->n = 0;
        do {
            if (product_of(x, &p, ignored, a) && (rc = cart_add(c, &p))) return rc;
        } while (sl_jnext(&it, &k, &x));
    } else if (product_of(props, &p, ignored, a) && (rc = cart_add(c, &p))) {
        return rc;
    }
    const char *cu = sl_jstr(sl_jget(props, "currency"), a, NULL);
    if (cu) snprintf(c->f.currency, sizeof(c->f.currency), "%s", cu);
    return 0;
}

/* x as cJSON prints a number (sl_json_print's rule). */
static int append_number(sl_buf_t *b, double x)
{
    cJSON num;
    memset(&num, 0, sizeof(num));
    num.type = cJSON_Number;
    num.valuedouble = x;
    char s[64];
    size_t n;
    return sl_json_print(&num, s, sizeof(s), &n) || sl_buf_append(b, s, n) ? SL_ENOMEM : 0;
}

int trig_cart_products_json(const trig_cart_t *c, sl_buf_t *out)
{
    int rc = sl_buf_appends(out, "[");
    for (uint32_t i = 0; i < c->n && rc == 0; i++) {
        const trig_cart_prod_t *q = &c->items[i].p;
        rc = sl_buf_appends(out, i ? ",{\"product_id\":" : "{\"product_id\":") ||
             sl_buf_append_json_str(out, item_id(c, i), q->id_len);
        if (rc == 0 && (q->flags & TRIG_CART_NAME))
            rc = sl_buf_appends(out, ",\"name\":") ||
                 sl_buf_append_json_str(out, c->strs.data + c->items[i].name_off, q->name_len);
        if (rc == 0 && (q->flags & TRIG_CART_PRICE))
            rc = sl_buf_appends(out, ",\"price\":") || append_number(out, q->price);
        if (rc == 0)
            rc = sl_buf_appends(out, ",\"quantity\":") || append_number(out, q->quantity) || sl_buf_appends(out, "}");
    }
    return rc || sl_buf_appends(out, "]") ? SL_ENOMEM : 0;
}

/* ---- the rule ---- */

static int cart_fire(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const trig_cart_t *c,
                     int64_t now)
{
    char started[32], last[32], abandoned[32];
    sl_time_format_iso(c->f.started_ms, started);
    sl_time_format_iso(c->f.last_ms, last);
    sl_time_format_iso(c->f.last_ms + C(r)->delay_ms, abandoned);
    sl_buf_t d = {0};
    int rc = sl_buf_appends(&d, "{\"products\":") || trig_cart_products_json(c, &d) ? SL_ENOMEM : 0;
    sl_buf_appends(&d, ",\"value\":");
    sl_buf_append_amount(&d, c->f.value);
    sl_buf_appends(&d, ",\"currency\":");
    if (c->f.currency[0]) sl_buf_append_json_str(&d, c->f.currency, strnlen(c->f.currency, sizeof(c->f.currency)));
    else sl_buf_appends(&d, "null");
    sl_buf_printf(&d, ",\"started_at\":\"%s\",\"last_activity_at\":\"%s\",\"abandoned_at\":\"%s\"}", started, last,
                  abandoned);
    if (rc == 0) rc = d.data ? trig_fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
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
    /* any other event reads the cart only to fire a waiting one, which waits
     * for its person to be identified: read when that may have just happened
     * (an anonymous visitor's events, and most of an identified person's, do
     * not read it at all) */
    if (!start && !removed && !(identified && m->identity_changed)) return 0;
    MDB_val v;
    rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    int have = rc == 0, waiting = 0;
    trig_cart_t c;
    if (!start && !removed) { /* just identified */
        if (!have) return 0;
        /* An identified person with an abandoned anonymous cart: fire now. */
        if ((rc = cart_waiting(&v, &waiting)) || !waiting) return rc;
        if ((rc = trig_cart_decode(&v, &c)) == 0 && (rc = cart_fire(t, txn, r, person, &c, now)) == 0)
            rc = trig_state_del(t, txn, r->name, person);
        goto out;
    }
    if (removed && !have) return 0;
    if (have) {
        if ((rc = trig_cart_decode(&v, &c))) goto out;
    } else {
        trig_cart_init(&c);
        c.f.started_ms = m->ts_ms;
    }
    if ((rc = trig_cart_update(&c, sl_jindex_get(m->ev->top, "properties"), start, &t->pend.amounts_ignored,
                               &t->msg_arena)))
        goto out;
    if (c.n == 0) {
        rc = trig_state_del(t, txn, r->name, person); /* emptied: no cart */
        goto out;
    }
    int64_t act = m->ts_ms > c.f.last_ms ? m->ts_ms : c.f.last_ms;
    if (act > now) act = now;
    c.f.last_ms = act;
    c.f.due_ms = act + C(r)->delay_ms;
    c.f.waiting = 0;
    if (c.f.timer_ms == 0 || c.f.timer_ms > c.f.due_ms) { /* none pending, or only a later one (waiting expiry) */
        int64_t due = c.f.due_ms > now ? c.f.due_ms : now;
        if ((rc = trig_timer_add(t, txn, due, person, r->name))) goto out;
        c.f.timer_ms = due;
    }
    rc = cart_save(t, txn, r->name, person, &c);
out:
    trig_cart_free(&c);
    return rc;
}

static int cart_timer(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, int64_t now)
{
    MDB_val v;
    int rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    trig_cart_t c;
    if ((rc = trig_cart_decode(&v, &c))) goto out;
    if (c.f.waiting) { /* the waiting period ran out without an identity */
        if (c.f.due_ms + WAITING_CART_TTL_MS <= now) rc = trig_state_del(t, txn, r->name, person);
        goto out;
    }
    if (c.f.due_ms > now) { /* activity since: look again later */
        c.f.timer_ms = c.f.due_ms;
        if ((rc = trig_timer_add(t, txn, c.f.due_ms, person, r->name)) == 0)
            rc = cart_save(t, txn, r->name, person, &c);
        goto out;
    }
    int identified = 0;
    rc = sl_stitch_person_payload(t->stitch, txn, person, NULL, &identified, NULL);
    if (rc == SL_ENOTFOUND) {
        rc = trig_state_del(t, txn, r->name, person);
    } else if (rc == 0 && identified) {
        if ((rc = cart_fire(t, txn, r, person, &c, now)) == 0) rc = trig_state_del(t, txn, r->name, person);
    } else if (rc == 0) {
        /* Abandoned while anonymous: it fires when the visitor is identified. */
        c.f.waiting = 1;
        c.f.timer_ms = c.f.due_ms + WAITING_CART_TTL_MS;
        if ((rc = trig_timer_add(t, txn, c.f.timer_ms, person, r->name)) == 0)
            rc = cart_save(t, txn, r->name, person, &c);
    }
out:
    trig_cart_free(&c);
    return rc;
}

/* absorbed's cart joins survivor's: products added, earliest start, latest activity. */
static int cart_merge(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t sv, uint64_t ab, int64_t now)
{
    MDB_val v;
    int rc = trig_state_get(t, txn, r->name, ab, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    trig_cart_t a, s;
    trig_cart_init(&s);
    if ((rc = trig_cart_decode(&v, &a)) || (rc = trig_state_del(t, txn, r->name, ab))) goto out;
    rc = trig_state_get(t, txn, r->name, sv, &v);
    trig_cart_t *to = &s;
    if (rc == MDB_NOTFOUND) {
        to = &a;
        rc = 0;
    } else if (rc == 0 && (rc = trig_cart_decode(&v, &s)) == 0) {
        for (uint32_t i = 0; i < a.n && rc == 0; i++) {
            cart_prod_t p;
            item_prod(&a, i, &p);
            rc = cart_add(&s, &p);
        }
        if (a.f.started_ms && a.f.started_ms < s.f.started_ms) s.f.started_ms = a.f.started_ms;
        if (a.f.last_ms > s.f.last_ms) {
            s.f.last_ms = a.f.last_ms;
            s.f.due_ms = a.f.due_ms;
        }
        s.f.waiting = s.f.waiting && a.f.waiting;
        if (!s.f.currency[0]) memcpy(s.f.currency, a.f.currency, sizeof(s.f.currency));
    }
    if (rc) goto out;
    /* The absorbed state's timer is keyed by the absorbed person: arm one for the survivor. */
    int64_t due = to->f.waiting ? to->f.due_ms + WAITING_CART_TTL_MS : to->f.due_ms;
    if (due < now) due = now;
    if ((rc = trig_timer_add(t, txn, due, sv, r->name))) goto out;
    to->f.timer_ms = due;
    rc = cart_save(t, txn, r->name, sv, to);
out:
    trig_cart_free(&a);
    trig_cart_free(&s);
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
    .event = cart_event, .merge = cart_merge, .timer = cart_timer, .print = cart_print, .verify = cart_verify,
};
