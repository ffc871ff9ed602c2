/* internal.h - what the trigger engine's files share (not a contract for
 * anyone else: sl_triggers.h is). The engine (triggers.c) runs the rules of
 * the config's "triggers" section (rule_table.c parses it); each rule type is a
 * file of its own (rule_*.c) behind trig_type_t, listed in one table
 * (rule_table.c). Cross-file names are trig_; the rest of each file is static. */
#ifndef SL_TRIGGERS_INTERNAL_H
#define SL_TRIGGERS_INTERNAL_H

#include "sl_fields.h"
#include "sl_rules.h"
#include "sl_triggers.h"

#include <stdatomic.h>

#define SEP '\x1f'
#define MAX_RULES 64

/* What the rules read of one stored event (docs/TRIGGERS.md says which
 * members each rule looks at). */
typedef struct {
    int track, page;          /* its type */
    const char *event;        /* track: the event name */
    const char *url, *path;   /* page: properties.url / .path, else context.page's; the path without ?# */
    int64_t ts_ms;            /* the event's corrected timestamp */
    const char *type;         /* "track", "page", "identify"... */
    const char *message_id;   /* its messageId */
    uint64_t seq;             /* its place in the log */
    int identity_changed;     /* its person became identified with it, or may have (sl_stage_ctx_t) */
    const sl_stage_event_t *ev; /* the event itself: its text and members */
} rule_msg_t;

typedef struct trig_rule_s trig_rule_t;

/* A rule type: its name in the config, its own keys and how they parse, and
 * what it does with what the stage tells the engine. Each callback runs on
 * the stage thread inside the stage transaction txn; NULL when the type
 * has nothing to do then. A callback returns 0 or an LMDB / SL_ error, which
 * aborts (and redoes) the transaction. */
typedef struct trig_type_s {
    const char *name;          /* "abandoned_cart" */
    const char *const *keys;   /* the type's own keys (NULL-terminated) */
    /* Parses those keys of json (the rule object; path "triggers[3]") into
     * *conf (the type's settings, freed with free_conf). */
    int (*parse)(sl_cfg_ctx_t *x, const cJSON *json, const char *path, void **conf);
    void (*free_conf)(void *conf);
    /* an event of person (identified: it has a user id or an identity trait) */
    int (*event)(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, const rule_msg_t *m, uint64_t person,
                 int identified, int64_t now);
    /* absorbed was merged into survivor: join or drop absorbed's state */
    int (*merge)(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t survivor, uint64_t absorbed,
                 int64_t now);
    /* a durable timer the type set for person came due */
    int (*timer)(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, int64_t now);
    /* a trait of person changed (old_v NULL: it had none) */
    int (*trait)(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const char *name,
                 const cJSON *old_v, const cJSON *new_v, int64_t now);
    /* a computed field of person changed (the fields phase, a merge or a
     * timer: reason "event", "merge", "timer"; old_v and new_v JSON values) */
    int (*computed)(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const char *field,
                    const cJSON *old_v, const cJSON *new_v, const char *reason, int64_t now);
    /* 1 when the rule hears of changes to the computed field */
    int (*computed_watches)(const trig_rule_t *r, const char *field);
    /* Checks the parsed rule against the rest of cfg (sections parsed before
     * the triggers: the computed fields it names). May be NULL. */
    int (*check)(sl_cfg_ctx_t *x, const trig_rule_t *r, const char *path, const sl_config_t *cfg);
    /* 1 when the rule wants to hear of changes to trait name */
    int (*watches)(const trig_rule_t *r, const char *name);
    /* The person's state of rule r is about to be deleted (erasure,
     * retention, the rule removed by a reload): drop what it indexes
     * elsewhere (holds). */
    int (*forget)(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person);
    /* Appends the person's pending triggers of rule r as JSON objects, comma-
     * separated (*n counts those appended so far, all rules together). */
    int (*pending)(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, sl_buf_t *out, int *n);
    /* sillage verify: checks person's state of rule r (log_txn: a read
     * transaction of the log), printing each problem to out and counting it;
     * *n counts what it checked (pending triggers). */
    int (*verify)(sl_trig_t *t, MDB_txn *txn, MDB_txn *log_txn, const trig_rule_t *r, uint64_t person, FILE *out,
                  uint64_t *n, uint64_t *problems);
    /* Appends the type's settings as JSON members, each with a leading comma
     * (GET /v1/rules and the tests read them back). */
    void (*print)(const trig_rule_t *r, sl_buf_t *out);
    /* 1: the type applies the rule's `where` itself (to the events it
     * starts from), instead of the engine hiding non-matching events */
    int own_where;
} trig_type_t;

/* One configured rule: the keys every type has, then the type's own. */
struct trig_rule_s {
    char *name;
    const trig_type_t *type;
    int max_per_day;          /* this rule's triggers per profile per UTC day; 0 = no cap */
    char *requires_consent;   /* a consent category the person must have granted (and not be
                               * unsubscribed); NULL = none */
    int pressure;             /* counts toward, and is held by, pressure.max_per_profile_per_day and
                               * an unsubscribed person's cap of 0 (default true) */
    sl_cond_t *where;         /* on the causing event: the rule sees only the events that match; NULL = all */
    sl_cond_t *if_;           /* on the person, when the trigger would be appended; NULL = always */
    char **in_payload;        /* computed fields put in the payload's profile.computed */
    size_t n_in_payload;
    void *conf;               /* the type's settings (trig_type_t.parse) */
};

/* The parsed "triggers" section. */
typedef struct trig_rules_s {
    trig_rule_t *v;
    size_t n;
} trig_rules_t;

/* The rules of cfg (none when it has no "triggers"). */
const trig_rules_t *trig_rules(const sl_config_t *cfg);
const trig_rule_t *trig_rule_by_name(const sl_config_t *cfg, const char *name, size_t len);
/* Appends r as compiled, defaults included: {"name","type",<its settings>,
 * "where","if","max_per_profile_per_day","pressure","requires_consent" --
 * without the closing brace (callers add members). */
void trig_rule_print(const trig_rule_t *r, sl_buf_t *out);

extern const trig_type_t trig_type_abandoned_cart, trig_type_page_visit, trig_type_inactivity,
    trig_type_trait_change, trig_type_event, trig_type_computed_change;

struct sl_trig_s {
    const sl_config_t *_Atomic cfg;      /* written by the stage thread (reload), read by /metrics */
    sl_stitch_t *stitch;
    sl_fields_t *fields;                 /* computed fields (NULL: none wired): in_payload, changes */
    struct sl_aud_s *aud;                /* audiences (NULL: none wired): pressure tiers */
    sl_fields_listener_t flistener;
    sl_stage_t *stage;                   /* set by sl_trig_attach: the log, for events read back */
    sl_feed_t *feed;                     /* where triggers are appended */
    sl_stage_step_t step;
    sl_ident_listener_t listener;
    MDB_dbi tstate, pressure, holds, pcount; /* rstate, rpressure, holds, pcount (sl_triggers.h) */
    uint64_t verify_seen[MAX_RULES];     /* sillage verify: pending triggers found, by rule */
    sl_buf_t k, k2, v, pay, path, view;
    sl_arena_t msg_arena;                /* stage thread: what read_msg decoded of the event under way */
    _Atomic uint64_t fired, suppressed, timers_fired;
    _Atomic uint64_t fired_by_rule[MAX_RULES], suppressed_by_rule[MAX_RULES];
    _Atomic uint64_t no_consent_by_rule[MAX_RULES], unsubscribed_by_rule[MAX_RULES], if_by_rule[MAX_RULES];
    int64_t last_prune_ms;
    int muted;                           /* rebuild: states and timers, no trigger appended */
    int quiet;                           /* a historical event's merge: states, no trigger */
    _Atomic uint64_t historical;         /* events from imports the rules did not see */
    _Atomic uint64_t erasures;           /* profile_erased entries appended */
    _Atomic uint64_t amounts_ignored;    /* cart prices and quantities not finite or past SL_AMOUNT_MAX */
    _Atomic uint64_t pending_dropped;    /* pending triggers dropped past a rule's max_pending */
    _Atomic uint64_t waiting_expired;    /* pending triggers of anonymous persons past max_wait */
    /* what the current transaction counted: added to the counters above when
     * it commits, dropped when it is aborted (it will be redone) */
    struct {
        uint64_t fired, suppressed, timers_fired, historical, erasures, amounts_ignored;
        uint64_t pending_dropped, waiting_expired;
        uint64_t fired_by_rule[MAX_RULES], suppressed_by_rule[MAX_RULES];
        uint64_t no_consent_by_rule[MAX_RULES], unsubscribed_by_rule[MAX_RULES], if_by_rule[MAX_RULES];
    } pend;
    const char *cause;                   /* messageId of the event being handled; NULL for timers */
};

/* Rule state: one record per (rule, person), in tstate. */
int trig_state_get(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, MDB_val *v);
int trig_state_put(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, const void *d, size_t n);
int trig_state_del(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person);
/* The same read from any thread (a key of its own, not the engine's scratch). */
int trig_state_read(sl_trig_t *t, MDB_txn *txn, const char *rule, uint64_t person, MDB_val *v);
/* A durable timer: rule's timer callback runs for person once due (ms) passed. */
int trig_timer_add(sl_trig_t *t, MDB_txn *txn, int64_t due, uint64_t person, const char *rule);
/* Holds: stored events a rule's state still needs (an event rule's pending
 * trigger names its starting event), which retention keeps while they are
 * held. Keyed by trig_mid_hash(messageId) and the event's seq; on: 1 adds,
 * 0 removes (removing an absent hold is no error). */
uint64_t trig_mid_hash(const char *message_id);
int trig_hold(sl_trig_t *t, MDB_txn *txn, uint64_t mid_hash, uint64_t seq, int on);
int trig_holds_entry(sl_trig_t *t, MDB_txn *txn, uint64_t mid_hash, uint64_t seq); /* 1 when held */
/* The pending triggers of each rule, counted as states change (pcount):
 * GET /v1/rules reads the counts; verify compares them with the states
 * (trig_pending_seen counts what it found). */
int trig_pending_count(sl_trig_t *t, MDB_txn *txn, const char *rule, int64_t delta);
void trig_pending_seen(sl_trig_t *t, const trig_rule_t *r, uint64_t n);
/* 1 when m is an event of the kind name: a track of that name, or a call of
 * that type ("page", "screen", "identify", "group"). */
int trig_is_kind(const rule_msg_t *m, const char *name);
/* 1 when cond (NULL: none) holds for the event of m (NULL: a timer's) now;
 * the event's tree is built only when there is a condition. */
int trig_where(const sl_cond_t *cond, const rule_msg_t *m, int64_t now);
/* Appends a trigger of rule r for person with data (a JSON object's text),
 * unless consent or the pressure caps suppress it (then counted). */
int trig_fire(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, const char *data, int64_t now);

/* ---- rule state records (state.c) ----
 * A rule's state in tstate is a record: this 8-byte header, then what its
 * kind keeps (host byte order, as everything in the derived store). A
 * record of another kind or version is refused (MDB_CORRUPTED), never
 * misread. Records written before the header (the cart's struct and JSON,
 * the page rule's bare times, the event rule's version 1) have a time's or
 * a count's top byte where the header has its magic: 0, or 0xFF for a time
 * before 1970. */
#define TRIG_STATE_MAGIC 0xA7
enum { TRIG_STATE_CART = 1, TRIG_STATE_PAGE = 2, TRIG_STATE_EVENT = 3, TRIG_STATE_INACT = 4 };

typedef struct {
    uint8_t kind;          /* TRIG_STATE_* */
    uint8_t version;       /* of the kind's layout */
    uint16_t n;            /* items after the kind's fixed part */
    uint8_t pad[3];
    uint8_t magic;         /* TRIG_STATE_MAGIC, in the 8th byte */
} trig_state_hdr_t;

/* What remains to be read of a record: every read checks its length first. */
typedef struct {
    const unsigned char *p;
    size_t left;
} trig_rd_t;

/* 1 when v starts with a state header; 0 for a record from before it. */
int trig_state_is_rec(const MDB_val *v);
/* v as a record of kind and version: 0, *n (its items) and *rd over what
 * follows the header; MDB_CORRUPTED when it is not one. */
int trig_state_open(const MDB_val *v, uint8_t kind, uint8_t version, uint32_t *n, trig_rd_t *rd);
/* Empties b and writes a header of kind and version for n items. 0,
 * SL_ETOOBIG (n past 65535) or SL_ENOMEM. */
int trig_state_begin(sl_buf_t *b, uint8_t kind, uint8_t version, size_t n);
/* Copies the next len bytes of rd to out: 0, or MDB_CORRUPTED when fewer
 * remain. */
int trig_rd_copy(trig_rd_t *rd, void *out, size_t len);
/* The next len bytes of rd, in place; NULL when fewer remain. */
const char *trig_rd_take(trig_rd_t *rd, size_t len);
/* A type's verify for a record that has nothing else to check: check
 * (0, MDB_CORRUPTED, or another error, returned) decodes person's state
 * of r; a record it refuses is printed to out as not a `what` record and
 * counted in *problems. */
int trig_state_verify(sl_trig_t *t, MDB_txn *txn, const trig_rule_t *r, uint64_t person, FILE *out,
                      uint64_t *problems, int (*check)(const MDB_val *v), const char *what);
/* Prints that person's state of r is not a `what` record; counts it. */
void trig_state_report(FILE *out, const trig_rule_t *r, uint64_t person, const char *what, uint64_t *problems);

/* ---- the page_visit rule's record (rule_page.c; cross-file for its unit
 * tests): TRIG_STATE_PAGE version 1, n visit times (i64 ms), oldest first.
 * Written before the header: the bare times, still read. A state keeps
 * fewer than min_count times, and min_count is at most TRIG_PAGE_MAX_COUNT. */
#define TRIG_PAGE_MAX_COUNT 1000
/* Empties b and writes ts[0..n) as a record: 0, SL_ETOOBIG or SL_ENOMEM. */
int trig_page_encode(sl_buf_t *b, const int64_t *ts, size_t n);
/* The times of v (either layout) into ts (room for TRIG_PAGE_MAX_COUNT):
 * 0 and *n, or MDB_CORRUPTED. */
int trig_page_decode(const MDB_val *v, int64_t *ts, size_t *n);

/* ---- the inactivity rule's record (rule_inactivity.c; cross-file for its
 * unit test): its pending timer, the quiet spell it last fired for, and the
 * last matching event's time (0: none yet, or the rule reads last_seen). */
typedef struct {
    int64_t timer_ms, fired_for_ms;
    int64_t last_ms;
} trig_inact_t;
/* Empties b and writes s as a record: 0 or SL_ENOMEM. */
int trig_inact_encode(sl_buf_t *b, const trig_inact_t *s);
/* s from v (either layout: the bare struct before the header, 16 bytes
 * before `last_ms`): 0, or MDB_CORRUPTED. */
int trig_inact_decode(const MDB_val *v, trig_inact_t *s);

/* ---- the abandoned_cart rule's record (rule_cart.c; cross-file for its
 * unit tests): TRIG_STATE_CART version 1, n products: trig_cart_fix_t, then
 * per product a trig_cart_prod_t followed by its product_id's bytes and its
 * name's. Written before the header: a 64-byte struct then the products as
 * JSON text, still read (and written in the new layout at the next save). */
#define TRIG_CART_MAX_PRODUCTS 50
#define TRIG_CART_ID_MAX 256    /* bytes of a product_id: a longer one names no product */
#define TRIG_CART_NAME_MAX 1024 /* bytes of a name: cut (between two characters) past it */

typedef struct {
    int64_t started_ms, last_ms, due_ms, timer_ms;
    double value;          /* sum of price x quantity, as of the last save */
    uint32_t waiting;      /* abandoned while anonymous: fires at the login */
    char currency[8];      /* the events' currency, NUL-padded (7 bytes at most) */
    uint32_t pad;
} trig_cart_fix_t;

#define TRIG_CART_PRICE 1u /* the product has a price */
#define TRIG_CART_NAME 2u  /* ... a name */
typedef struct {
    double price, quantity;
    uint16_t id_len, name_len;
    uint8_t flags;         /* TRIG_CART_PRICE | TRIG_CART_NAME */
    uint8_t pad[3];
} trig_cart_prod_t;

/* The record written before the header: this, then products_len bytes of
 * JSON (the products as cJSON printed them). */
typedef struct {
    int64_t started_ms, last_ms, due_ms, timer_ms;
    uint32_t waiting, n_products;
    double value;
    char currency[8];
    uint32_t products_len;
    uint32_t pad;
} trig_cart_v0_t;

/* A cart in memory: its products' strings are at offsets in strs, which it
 * owns (trig_cart_free). */
typedef struct {
    trig_cart_fix_t f;
    uint32_t n;
    struct {
        trig_cart_prod_t p;
        uint32_t id_off, name_off;
    } items[TRIG_CART_MAX_PRODUCTS];
    sl_buf_t strs;
} trig_cart_t;

/* An empty cart. */
void trig_cart_init(trig_cart_t *c);
void trig_cart_free(trig_cart_t *c);
/* v (either layout) into c (initialised here; free it whatever the
 * result): 0, MDB_CORRUPTED or SL_ENOMEM. */
int trig_cart_decode(const MDB_val *v, trig_cart_t *c);
/* Empties b and writes c as a record: 0 or SL_ENOMEM. */
int trig_cart_encode(const trig_cart_t *c, sl_buf_t *b);
/* What a cart event's properties do to c: a start event adds the product
 * they describe, or replaces the products with their `products` array, and
 * sets the currency; otherwise (the remove event) the product goes. Prices
 * and quantities it leaves out are counted in *ignored. props is read as
 * text (sl_jread); its strings are decoded into a, which c does not keep.
 * 0 or SL_ENOMEM. */
int trig_cart_update(trig_cart_t *c, sl_jval_t props, int start, uint64_t *ignored, sl_arena_t *a);
/* Appends c's products as the JSON array of the trigger's data, as
 * cJSON_PrintUnformatted printed them. 0 or SL_ENOMEM. */
int trig_cart_products_json(const trig_cart_t *c, sl_buf_t *out);

#endif
