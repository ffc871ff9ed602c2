/* rule_event.c - the generic `event` rule (docs/TRIGGERS.md, "event"): an
 * event of a given name fires, at once or after a delay, unless another
 * event of the same person comes first (optionally about the same thing:
 * `match` pairs the two by the value at a path, so the open of another
 * e-mail cancels nothing).
 *
 * State, per (rule, person): a record (internal.h: the state header, then
 * the timer's time), then the pending triggers in the order they started, each with the stored starting event's seq
 * (its data is read back from the log when it fires, so a pending trigger
 * costs 48 bytes whatever the event held; retention keeps that event while
 * it waits: the engine's holds index). One lazy timer per state, at its
 * earliest due time. A trigger that comes due while its person is still
 * anonymous waits for the login that identifies them, up to max_wait. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EV_VERSION 2 /* 1: before the common header, still read (ev_v1_hdr_t) */
#define MAX_PATH_SEGS 16

typedef struct {
    char *event;           /* a track name, or "page" / "screen" / "identify" / "group" for those calls */
    int64_t delay_ms;      /* 0: fires in the transaction that applies the event */
    char *unless_event;    /* NULL: nothing cancels */
    char *match;           /* a dotted path into both events ("properties.email_id"), or NULL */
    sl_cond_t *unless_where; /* on the cancelling event; NULL = any of that name */
    int64_t max_wait_ms;   /* a trigger due for an anonymous person waits this long for a login: 7d */
    int max_pending;       /* pending triggers per person: 100, the oldest dropped beyond */
} event_conf_t;
#define E(r) ((const event_conf_t *)(r)->conf)

typedef struct {
    uint32_t n;            /* pending triggers (the record header's n) */
    uint32_t pad;
    int64_t timer_ms;      /* a timer is set for then (0: none): the record's fixed part */
} ev_hdr_t;

typedef struct {           /* version 1's header, before the common one */
    uint8_t version;       /* 1 */
    uint8_t pad[3];
    uint32_t n;
    int64_t timer_ms;
} ev_v1_hdr_t;

typedef struct {
    int64_t start_ms;      /* the starting event's timestamp */
    int64_t due_ms;        /* start + delay: an unless event up to then cancels */
    uint64_t seq;          /* the starting event in the log */
    uint64_t mid;          /* trig_mid_hash of its messageId (the holds index) */
    uint64_t match;        /* hash of the value at `match` in it; 0 = none */
    uint32_t waiting;      /* came due while the person was anonymous */
    uint32_t pad;
} ev_pend_t;

typedef struct {
    ev_hdr_t h;
    ev_pend_t *p;          /* h.n of them (owned) */
    uint32_t loaded;       /* h.n as read: ev_save counts the difference (trig_pending_count) */
} ev_state_t;

/* ---- the state record ---- */

/* v's header, and rd over its h->n pending triggers: 0 or MDB_CORRUPTED. */
static int ev_open(const MDB_val *v, ev_hdr_t *h, trig_rd_t *rd)
{
    memset(h, 0, sizeof(*h));
    if (trig_state_is_rec(v)) {
        int rc = trig_state_open(v, TRIG_STATE_EVENT, EV_VERSION, &h->n, rd);
        if (rc || (rc = trig_rd_copy(rd, &h->timer_ms, sizeof(h->timer_ms)))) return rc;
    } else {
        ev_v1_hdr_t o;
        if (v->mv_size < sizeof(o)) return MDB_CORRUPTED;
        memcpy(&o, v->mv_data, sizeof(o));
        if (o.version != 1) return MDB_CORRUPTED;
        h->n = o.n;
        h->timer_ms = o.timer_ms;
        rd->p = (const unsigned char *)v->mv_data + sizeof(o);
        rd->left = v->mv_size - sizeof(o);
    }
    return rd->left == (size_t)h->n * sizeof(ev_pend_t) ? 0 : MDB_CORRUPTED;
}

static int ev_load(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, ev_state_t *s)
{
    memset(s, 0, sizeof(*s));
    MDB_val v;
    trig_rd_t rd;
    int rc = trig_state_get(t, txn, r->name, person, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc || (rc = ev_open(&v, &s->h, &rd))) return rc;
    if (s->h.n == 0) return 0;
    if ((s->p = malloc((size_t)s->h.n * sizeof(ev_pend_t))) == NULL) return SL_ENOMEM;
    memcpy(s->p, rd.p, (size_t)s->h.n * sizeof(ev_pend_t));
    s->loaded = s->h.n;
    return 0;
}

static int ev_save(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, ev_state_t *s)
{
    int rc = trig_pending_count(t, txn, r->name, (int64_t)s->h.n - (int64_t)s->loaded);
    if (rc) return rc;
    s->loaded = s->h.n;
    if (s->h.n == 0) return trig_state_del(t, txn, r->name, person);
    if ((rc = trig_state_begin(&t->v, TRIG_STATE_EVENT, EV_VERSION, s->h.n))) return rc;
    if (sl_buf_append(&t->v, &s->h.timer_ms, sizeof(s->h.timer_ms)) ||
        sl_buf_append(&t->v, s->p, (size_t)s->h.n * sizeof(ev_pend_t)))
        return SL_ENOMEM;
    return trig_state_put(t, txn, r->name, person, t->v.data, t->v.len);
}

/* Removes pending trigger i (its hold goes too). */
static int ev_remove(sl_trig_t *t, MDB_txn *txn, ev_state_t *s, uint32_t i)
{
    int rc = trig_hold(t, txn, s->p[i].mid, s->p[i].seq, 0);
    memmove(s->p + i, s->p + i + 1, (size_t)(s->h.n - i - 1) * sizeof(ev_pend_t));
    s->h.n--;
    return rc;
}

/* The earliest instant the state needs looking at: a due trigger, or a
 * waiting one's end. INT64_MAX when none. */
static int64_t ev_next(const trig_rule_t *r, const ev_state_t *s)
{
    int64_t next = INT64_MAX;
    for (uint32_t i = 0; i < s->h.n; i++) {
        int64_t at = s->p[i].waiting ? s->p[i].due_ms + E(r)->max_wait_ms : s->p[i].due_ms;
        if (at < next) next = at;
    }
    return next;
}

/* Sets the state's timer for its next instant unless one is set for then
 * or before (a timer set too early finds nothing due and sets the next). */
static int ev_arm(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, ev_state_t *s, int64_t now)
{
    int64_t next = ev_next(r, s);
    if (next == INT64_MAX) return 0;
    if (next < now) next = now;
    if (s->h.timer_ms && s->h.timer_ms <= next && s->h.timer_ms >= now) return 0;
    s->h.timer_ms = next;
    return trig_timer_add(t, txn, next, person, r->name);
}

/* ---- matching ---- */

/* The value at a dotted path of the event of m (its first member from the
 * stage's index), or an absent one. */
static sl_jval_t at_path(const rule_msg_t *m, const char *path)
{
    sl_jval_t x = m->ev->root;
    char seg[256];
    for (const char *p = path; sl_jtype(x) != SL_JNONE && *p;) {
        size_t n = strcspn(p, ".");
        if (n == 0 || n >= sizeof(seg)) return (sl_jval_t){NULL, 0};
        memcpy(seg, p, n);
        seg[n] = '\0';
        x = p == path ? sl_jindex_get(m->ev->top, seg) : sl_jget(x, seg);
        p += n + (p[n] == '.');
    }
    return x;
}

/* The hash of the value at the rule's match path in m's event (0: no such
 * value, which pairs with nothing). Values compare as printed JSON: the
 * stored text is cJSON's print, so a value's span is its print, as states
 * written when this read a tree hashed it. */
static uint64_t match_hash(const trig_rule_t *r, const rule_msg_t *m)
{
    sl_jval_t x = at_path(m, E(r)->match);
    if (sl_jtype(x) == SL_JNONE || sl_jtype(x) == SL_JNULL) return 0;
    uint64_t h = sl_hash128(x.p, x.n, 0x3a7c4).lo;
    return h ? h : 1;
}


/* ---- firing ---- */

typedef struct {
    uint64_t seq;
    sl_buf_t *out;
    int found;
} log_read_t;

/* Appends member name of the event whose members are top (NULL: the event
 * is gone) as stored, when it is of type want, else dflt. The stored text is
 * what cJSON prints (sl_json_print), so its spans are too. */
static void append_member(sl_buf_t *d, const sl_jindex_t *top, const char *name, int want, const char *dflt)
{
    sl_jval_t v = top ? sl_jindex_get(top, name) : (sl_jval_t){NULL, 0};
    if (sl_jtype(v) == want) sl_buf_append(d, v.p, v.n);
    else sl_buf_appends(d, dflt);
}

/* Appends the starting event's {"name","messageId","timestamp","properties"}
 * as stored, copied out of its text. */
static void event_json(sl_buf_t *d, const trig_rule_t *r, const sl_jindex_t *top)
{
    sl_buf_appends(d, "{\"name\":");
    sl_buf_append_json_str(d, E(r)->event, strlen(E(r)->event));
    sl_buf_appends(d, ",\"messageId\":");
    append_member(d, top, "messageId", SL_JSTR, "null");
    sl_buf_appends(d, ",\"timestamp\":");
    append_member(d, top, "timestamp", SL_JSTR, "null");
    sl_buf_appends(d, ",\"properties\":");
    append_member(d, top, "properties", SL_JOBJ, "{}");
    sl_buf_appends(d, "}");
}

static int fire_with(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const sl_jindex_t *top,
                     int64_t now)
{
    /* muted (a rebuild) or quiet (an import's merge): nothing is appended, so
     * nothing to print (printing the properties was most of a rebuild's cost) */
    if (t->muted || t->quiet) return 0;
    sl_buf_t d = {0};
    sl_buf_appends(&d, "{\"event\":");
    event_json(&d, r, top);
    sl_buf_printf(&d, ",\"delay_seconds\":%lld}", (long long)(E(r)->delay_ms / 1000));
    int rc = d.data ? trig_fire(t, txn, r, person, d.data, now) : SL_ENOMEM;
    sl_buf_free(&d);
    return rc;
}

typedef struct {
    sl_trig_t *t;
    MDB_txn *txn;
    const trig_rule_t *r;
    uint64_t person, seq;
    int64_t now;
    int rc;
} fire_ctx_t;

static int fire_from_log(MDB_txn *log_txn, void *arg)
{
    fire_ctx_t *f = arg;
    MDB_val json;
    int rc = sl_store_event_get(sl_stage_log(f->t->stage), log_txn, f->seq, &json);
    sl_jindex_t top;
    if (rc == 0 && sl_jtype(sl_jroot_index(json.mv_data, json.mv_size, &top, NULL, NULL)) != SL_JOBJ) rc = SL_EINVAL;
    /* the event gone (it cannot be, while held): the trigger still fires, with what the rule knows */
    f->rc = fire_with(f->t, f->txn, f->r, f->person, rc == 0 ? &top : NULL, f->now);
    return 0;
}

/* Fires pending trigger p (its starting event read back from the log). */
static int ev_fire(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const ev_pend_t *p, int64_t now)
{
    if (t->muted) return 0; /* a rebuild: it fired before, the feed holds it */
    fire_ctx_t f = {t, txn, r, person, p->seq, now, 0};
    int rc = sl_store_read(sl_stage_log(t->stage), fire_from_log, &f);
    return rc ? rc : f.rc;
}

/* ---- what the engine tells ---- */

static int ev_event(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, const rule_msg_t *m, uint64_t person,
                    int identified, int64_t now)
{
    /* the rule's where picks its starting events, unless.where its cancelling ones */
    int starts = trig_is_kind(m, E(r)->event) && trig_where(r->where, m, now);
    int cancels = E(r)->unless_event && trig_is_kind(m, E(r)->unless_event) && trig_where(E(r)->unless_where, m, now);
    /* triggers that wait for their person's login are looked at when that
     * may have just happened (not at every event of an identified person) */
    int released = identified && m->identity_changed;
    if (!starts && !cancels && !released) return 0;
    /* without a delay it fires at once, and keeps no state (nothing can cancel it: ev_parse) */
    if (E(r)->delay_ms == 0) return starts ? fire_with(t, txn, r, person, m->ev->top, now) : 0;
    ev_state_t s;
    int rc = ev_load(t, txn, r, person, &s);
    if (rc) return rc;
    if (s.h.n == 0 && !(starts && E(r)->delay_ms)) goto out;
    int changed = 0;
    if (cancels) {
        uint64_t h = E(r)->match ? match_hash(r, m) : 0;
        for (uint32_t i = 0; i < s.h.n && rc == 0;) {
            ev_pend_t *p = &s.p[i];
            int in_time = m->ts_ms > p->start_ms && m->ts_ms <= p->due_ms;
            int paired = E(r)->match == NULL || (h != 0 && h == p->match);
            if (in_time && paired && p->seq != m->seq) {
                rc = ev_remove(t, txn, &s, i);
                changed = 1;
            } else {
                i++;
            }
        }
    }
    /* an identified person's triggers that waited for the login fire now */
    for (uint32_t i = 0; released && i < s.h.n && rc == 0;) {
        if (!s.p[i].waiting) {
            i++;
            continue;
        }
        ev_pend_t p = s.p[i];
        if ((rc = ev_remove(t, txn, &s, i)) == 0) rc = ev_fire(t, txn, r, person, &p, now);
        changed = 1;
    }
    if (rc == 0 && starts && E(r)->delay_ms) {
        if (s.h.n >= (uint32_t)E(r)->max_pending) { /* the oldest goes */
            if ((rc = ev_remove(t, txn, &s, 0))) goto out;
            t->pend.pending_dropped++;
        }
        ev_pend_t *np = realloc(s.p, ((size_t)s.h.n + 1) * sizeof(ev_pend_t));
        if (np == NULL) {
            rc = SL_ENOMEM;
            goto out;
        }
        s.p = np;
        ev_pend_t *p = &s.p[s.h.n++];
        memset(p, 0, sizeof(*p));
        p->start_ms = m->ts_ms;
        p->due_ms = m->ts_ms + E(r)->delay_ms;
        p->seq = m->seq;
        p->mid = trig_mid_hash(m->message_id);
        p->match = E(r)->match ? match_hash(r, m) : 0;
        if ((rc = trig_hold(t, txn, p->mid, p->seq, 1))) goto out;
        changed = 1;
    }
    if (rc == 0 && changed && (rc = ev_arm(t, txn, r, person, &s, now)) == 0) rc = ev_save(t, txn, r, person, &s);
out:
    free(s.p);
    return rc;
}

static int ev_timer(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, int64_t now)
{
    ev_state_t s;
    int rc = ev_load(t, txn, r, person, &s);
    if (rc || s.h.n == 0) goto out;
    s.h.timer_ms = 0; /* this one came due */
    int identified = -1; /* asked once, when a trigger is due */
    for (uint32_t i = 0; i < s.h.n && rc == 0;) {
        ev_pend_t *p = &s.p[i];
        if (p->waiting && p->due_ms + E(r)->max_wait_ms <= now) { /* no login came */
            rc = ev_remove(t, txn, &s, i);
            t->pend.waiting_expired++;
            continue;
        }
        if (p->waiting || p->due_ms > now) {
            i++;
            continue;
        }
        if (identified < 0) {
            rc = sl_stitch_person_payload(t->stitch, txn, person, NULL, &identified, NULL);
            if (rc == SL_ENOTFOUND) { /* the person is gone: so are its triggers */
                rc = 0;
                while (s.h.n && rc == 0) rc = ev_remove(t, txn, &s, 0);
                break;
            }
            if (rc) break;
        }
        if (!identified) {
            p->waiting = 1;
            i++;
            continue;
        }
        ev_pend_t due = *p;
        if ((rc = ev_remove(t, txn, &s, i)) == 0) rc = ev_fire(t, txn, r, person, &due, now);
    }
    if (rc == 0 && (rc = ev_arm(t, txn, r, person, &s, now)) == 0) rc = ev_save(t, txn, r, person, &s);
out:
    free(s.p);
    return rc;
}

static int by_start(const void *a, const void *b)
{
    const ev_pend_t *x = a, *y = b;
    return x->start_ms < y->start_ms ? -1 : x->start_ms > y->start_ms;
}

/* absorbed's pending triggers follow it into survivor (an anonymous
 * sign-up's welcome joins the customer at login). */
static int ev_merge(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t sv, uint64_t ab, int64_t now)
{
    ev_state_t a, s;
    int rc = ev_load(t, txn, r, ab, &a);
    if (rc || a.h.n == 0) {
        free(a.p);
        return rc;
    }
    if ((rc = ev_load(t, txn, r, sv, &s)) == 0 && (rc = trig_state_del(t, txn, r->name, ab)) == 0 &&
        (rc = trig_pending_count(t, txn, r->name, -(int64_t)a.h.n)) == 0) { /* counted again in sv's save */
        ev_pend_t *np = realloc(s.p, (size_t)(s.h.n + a.h.n) * sizeof(ev_pend_t));
        if (np == NULL) {
            rc = SL_ENOMEM;
        } else {
            s.p = np;
            memcpy(s.p + s.h.n, a.p, (size_t)a.h.n * sizeof(ev_pend_t));
            s.h.n += a.h.n;
            qsort(s.p, s.h.n, sizeof(ev_pend_t), by_start);
            while (rc == 0 && s.h.n > (uint32_t)E(r)->max_pending) {
                rc = ev_remove(t, txn, &s, 0);
                t->pend.pending_dropped++;
            }
            /* waiting ones: the timer looks at the survivor's identity now */
            for (uint32_t i = 0; i < s.h.n; i++)
                if (s.p[i].waiting) s.p[i].waiting = 0;
            s.h.timer_ms = 0;
            if (rc == 0 && (rc = ev_arm(t, txn, r, sv, &s, now)) == 0) rc = ev_save(t, txn, r, sv, &s);
        }
    }
    free(a.p);
    free(s.p);
    return rc;
}

/* The person's state is about to go (erasure, retention, a removed rule):
 * its holds go first. */
static int ev_forget(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person)
{
    ev_state_t s;
    int rc = ev_load(t, txn, r, person, &s);
    for (uint32_t i = 0; rc == 0 && i < s.h.n; i++) rc = trig_hold(t, txn, s.p[i].mid, s.p[i].seq, 0);
    if (rc == 0) rc = trig_pending_count(t, txn, r->name, -(int64_t)s.h.n);
    free(s.p);
    return rc == MDB_CORRUPTED ? 0 : rc;
}

/* Any thread (a profile read): the record is read in place, with a key of
 * its own, none of the stage thread's scratch. */
static int ev_pending(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, sl_buf_t *out, int *n)
{
    MDB_val v;
    int rc = trig_state_read(t, txn, r->name, person, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    ev_hdr_t h;
    trig_rd_t rd;
    if (ev_open(&v, &h, &rd)) return 0;
    for (uint32_t i = 0; i < h.n; i++) {
        ev_pend_t p;
        memcpy(&p, rd.p + (size_t)i * sizeof(p), sizeof(p));
        sl_buf_appends(out, (*n)++ ? ",{\"rule\":" : "{\"rule\":");
        sl_buf_append_json_str(out, r->name, strlen(r->name));
        sl_buf_appends(out, ",\"due\":");
        sl_buf_append_iso(out, p.due_ms);
        sl_buf_printf(out, ",\"waiting_for_login\":%s,\"started_by\":%llu,\"cancelled_by\":",
                      p.waiting ? "true" : "false", (unsigned long long)p.seq);
        if (E(r)->unless_event) sl_buf_append_json_str(out, E(r)->unless_event, strlen(E(r)->unless_event));
        else sl_buf_appends(out, "null");
        sl_buf_appends(out, "}");
    }
    return out->data ? 0 : SL_ENOMEM;
}

/* Each pending trigger names a stored starting event (its messageId's hash
 * as recorded) and holds it, and its person is alive. */
static int ev_verify(sl_trig_t *t, MDB_txn *txn, MDB_txn *log_txn, const trig_rule_t *r, uint64_t person, FILE *out,
                     uint64_t *n, uint64_t *problems)
{
    ev_state_t s;
    int rc = ev_load(t, txn, r, person, &s);
    if (rc == MDB_CORRUPTED) {
        trig_state_report(out, r, person, "pending-trigger", problems);
        return 0;
    }
    if (rc) return rc;
    if (s.h.n && sl_stitch_person_payload(t->stitch, txn, person, NULL, NULL, NULL) == SL_ENOTFOUND) {
        fprintf(out, "rule %s: %u pending triggers of p_%llu, which is no person\n", r->name, s.h.n,
                (unsigned long long)person);
        (*problems)++;
    }
    trig_pending_seen(t, r, s.h.n);
    for (uint32_t i = 0; i < s.h.n && rc == 0; i++) {
        (*n)++;
        MDB_val json;
        int got = sl_store_event_get(sl_stage_log(t->stage), log_txn, s.p[i].seq, &json);
        cJSON *doc = got == 0 ? cJSON_ParseWithLength(json.mv_data, json.mv_size) : NULL;
        if (doc == NULL || trig_mid_hash(sl_json_str(doc, "messageId")) != s.p[i].mid) {
            fprintf(out, "rule %s: a pending trigger of p_%llu names event %llu, which is not stored\n", r->name,
                    (unsigned long long)person, (unsigned long long)s.p[i].seq);
            (*problems)++;
        }
        cJSON_Delete(doc);
        if (!trig_holds_entry(t, txn, s.p[i].mid, s.p[i].seq)) {
            fprintf(out, "rule %s: p_%llu's pending trigger does not hold event %llu against retention\n", r->name,
                    (unsigned long long)person, (unsigned long long)s.p[i].seq);
            (*problems)++;
        }
    }
    free(s.p);
    return rc;
}

/* ---- configuration ---- */

static void ev_free_conf(void *conf)
{
    event_conf_t *c = conf;
    if (c == NULL) return;
    free(c->event);
    free(c->unless_event);
    free(c->match);
    sl_rules_free(c->unless_where);
    free(c);
}

/* A dotted path: 1 to 16 non-empty member names, 256 bytes at most. */
static int path_ok(const char *p)
{
    size_t segs = 1;
    if (strlen(p) > 256 || p[0] == '.' || p[strlen(p) - 1] == '.' || strstr(p, "..")) return 0;
    for (const char *c = p; *c; c++) segs += *c == '.';
    return segs <= MAX_PATH_SEGS && strpbrk(p, "[]") == NULL;
}

static int ev_parse(sl_cfg_ctx_t *x, const cJSON *json, const char *path, void **out)
{
    event_conf_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return SL_ENOMEM;
    *out = c;
    c->max_wait_ms = 7LL * 86400000;
    c->max_pending = 100;
    int rc = sl_cfg_str(x, json, "event", path, &c->event, 1);
    if (rc == 0) rc = sl_cfg_duration(x, json, "delay", path, &c->delay_ms);
    if (rc == 0) rc = sl_cfg_duration(x, json, "max_wait", path, &c->max_wait_ms);
    if (rc == 0) rc = sl_cfg_int(x, json, "max_pending", path, 1, 10000, "", &c->max_pending);
    if (rc) return rc;
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(json, "unless");
    if (u == NULL) return 0;
    char upath[96];
    snprintf(upath, sizeof(upath), "%s.unless", path);
    static const char *const ukeys[] = {"event", "where", "match", NULL};
    if ((rc = sl_cfg_check_keys(x, u, upath, ukeys))) return rc;
    if ((rc = sl_cfg_str(x, u, "event", upath, &c->unless_event, 1))) return rc;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(u, "where");
    char wpath[112];
    snprintf(wpath, sizeof(wpath), "%s.where", upath);
    if (w && (rc = sl_rules_compile(w, SL_RULES_EVENT, wpath, &c->unless_where, x->err, x->errlen)))
        return rc == SL_ETOOBIG ? SL_EINVAL : rc;
    if ((rc = sl_cfg_str(x, u, "match", upath, &c->match, 0))) return rc;
    if (c->match && !path_ok(c->match))
        return sl_cfg_error(x, "%s.match \"%s\" must be a path such as \"properties.email_id\"", upath, c->match);
    if (c->delay_ms == 0)
        return sl_cfg_error(x, "%s needs %s.delay: without a wait nothing can come before the trigger", upath, path);
    return 0;
}

static void ev_print(const trig_rule_t *r, sl_buf_t *out)
{
    sl_buf_appends(out, ",\"event\":");
    sl_buf_append_json_str(out, E(r)->event, strlen(E(r)->event));
    sl_buf_appends(out, ",\"delay\":");
    if (E(r)->delay_ms) sl_buf_append_duration(out, E(r)->delay_ms);
    else sl_buf_appends(out, "null");
    sl_buf_appends(out, ",\"unless\":");
    if (E(r)->unless_event) {
        sl_buf_appends(out, "{\"event\":");
        sl_buf_append_json_str(out, E(r)->unless_event, strlen(E(r)->unless_event));
        sl_buf_appends(out, ",\"match\":");
        if (E(r)->match) sl_buf_append_json_str(out, E(r)->match, strlen(E(r)->match));
        else sl_buf_appends(out, "null");
        sl_buf_appends(out, ",\"where\":");
        if (E(r)->unless_where) sl_rules_print(E(r)->unless_where, out);
        else sl_buf_appends(out, "null");
        sl_buf_appends(out, "}");
    } else {
        sl_buf_appends(out, "null");
    }
    sl_buf_appends(out, ",\"max_wait\":");
    sl_buf_append_duration(out, E(r)->max_wait_ms);
    sl_buf_printf(out, ",\"max_pending\":%d", E(r)->max_pending);
}

static const char *const ev_keys[] = {"event", "delay", "unless", "max_wait", "max_pending", NULL};

const trig_type_t trig_type_event = {
    .name = "event", .keys = ev_keys, .parse = ev_parse, .free_conf = ev_free_conf,
    .event = ev_event, .merge = ev_merge, .timer = ev_timer, .forget = ev_forget, .pending = ev_pending,
    .print = ev_print, .own_where = 1, .verify = ev_verify,
};
