/* sl_rules.h - the condition language: one namespace of conditions on an
 * event and on a person, shared by trigger rules (`where`, `if`) and, next,
 * by computed fields and audiences. docs/CONDITIONS.md is the user's manual;
 * this header is the programmer's.
 *
 * A condition is JSON, compiled once at config load and evaluated per event:
 *
 *   {"all": [C, ...]}    every C is true (an empty list: true)
 *   {"any": [C, ...]}    some C is true (an empty list: false)
 *   {"not": C}           C is false
 *   {"field": PATH, OP: VALUE}   a leaf, exactly one OP:
 *
 *   eq, ne        VALUE a number, string, true, false or null. eq: equal (a
 *                 number to a number, a string byte for byte, ...); ne: the
 *                 field is present and not equal (an object or an array is
 *                 equal to no scalar).
 *   in, nin       VALUE an array of such scalars. in: equal to one of them;
 *                 nin: present and equal to none.
 *   gt gte lt lte VALUE a number or a string: two numbers compare as numbers,
 *                 two strings byte for byte; any other pair is false ("10" is
 *                 not greater than 9).
 *   exists        VALUE true or false: the path reaches a value (null is a
 *                 value: {"ne": null} asks for a non-null one).
 *   contains      VALUE a scalar: a string field containing VALUE (a string)
 *                 as a substring, or an array field with an element equal to it.
 *   starts_with   VALUE a string: a string field beginning with it.
 *   glob          VALUE a pattern: `*` any run, `?` one byte, the rest itself,
 *                 matching the whole string field (sl_rules_glob_match).
 *   before, after VALUE an ISO-8601 time, or a duration ("30d", as
 *                 sl_parse_duration_ms) meaning that long before the
 *                 evaluation clock: the field, an ISO-8601 string, is strictly
 *                 older (before) or strictly more recent (after) than it.
 *                 A field that is not such a string is false.
 *
 * Paths: member names separated by `.`, each optionally suffixed `[]` ("any
 * element": `properties.products[].category`). Event paths are bare (the
 * stored message: `event`, `properties.x`, `context.x`, `traits.x`, ...);
 * person paths start with `profile.` and name one of `profile.traits.<x...>`,
 * `profile.identified`, `profile.first_seen`, `profile.last_seen`,
 * `profile.consent.<category>`, `profile.unsubscribed`,
 * `profile.computed.<name>`, `profile.audiences` (one table in rules.c). `account` as a first segment is reserved (for accounts, later).
 *
 * Semantics of a leaf:
 *   - A missing path makes the leaf false, whatever its operator, except
 *     `exists: false`, which is then true. A path through a non-object, or
 *     `[]` over a non-array, is missing. (`not` of a leaf on a missing path
 *     is therefore true, unlike `ne`.)
 *   - With `[]`, the leaf is true when ANY element reached satisfies it (so
 *     `tags[] ne "x"` is "some tag is not x"; "no tag is x" is
 *     `{"not": {"field": "tags[]", "eq": "x"}}`); `exists: false` with `[]`
 *     is true when NO element reached has the rest of the path.
 *   - all/any evaluate their list in order and stop at the first false/true:
 *     put event leaves first and the person view may never be built.
 *
 * Bounds (each a compile error): nesting depth 8 (a lone leaf is depth 1,
 * each all/any/not adds one); 64 leaves (an empty all/any counts as one);
 * a value of 1 KB (a string's bytes; an `in`/`nin` list counts each
 * string's bytes plus 1 and 8 for any other element); paths of 256 bytes
 * and 16 segments.
 *
 * Threads: a compiled condition is immutable; any thread may evaluate it,
 * concurrently. Compile and free belong to whoever owns the configuration.
 */
#ifndef SL_RULES_H
#define SL_RULES_H

#include <stddef.h>
#include <stdint.h>

#include "sl_common.h"

struct cJSON;

#define SL_RULES_MAX_DEPTH 8
#define SL_RULES_MAX_LEAVES 64
#define SL_RULES_MAX_VALUE_BYTES 1024
#define SL_RULES_MAX_PATH_BYTES 256
#define SL_RULES_MAX_SEGMENTS 16

/* Which side a condition may read: a trigger's `where` reads the event, its
 * `if` (and an audience's `where`) the person. */
enum {
    SL_RULES_EVENT = 1,   /* bare paths */
    SL_RULES_PROFILE = 2  /* profile.* paths */
};

/* A compiled condition (opaque). */
typedef struct sl_cond_s sl_cond_t;

/* The person view: returns the text of an object shaped
 *   {"traits": {...}, "identified": bool, "first_seen": "ISO",
 *    "last_seen": "ISO", "consent": {"<category>": bool}, "unsubscribed": bool}
 * as a value of the tree-less reader (sl_jroot() of it; members may be
 * absent: the paths into them are then missing), or an absent value when
 * there is no person (every profile path is then missing). Called by
 * sl_rules_eval() on its own thread, at most once per evaluation and only
 * when a profile leaf is reached, so callers build the view lazily. The
 * caller keeps ownership: the text must stay valid until sl_rules_eval()
 * returns. */
typedef sl_jval_t (*sl_rules_profile_fn)(void *arg);
/* What one evaluation reads. Both sides are read as text, without a tree:
 * a member is found by its decoded name, the first of a name. */
typedef struct sl_rules_ctx_s {
    sl_jval_t event;           /* the stored message (sl_jroot()); absent: every event path is missing */
    const sl_jindex_t *event_top; /* NULL, or event's members found once (sl_jindex): read by first segments */
    int64_t now_ms;            /* the clock durations count back from (ms since the epoch) */
    sl_rules_profile_fn profile; /* NULL: every profile path is missing */
    void *profile_arg;         /* passed to profile */
} sl_rules_ctx_t;
/* Compiles json (not kept: the condition owns copies of what it needs) into
 * *out. sides: SL_RULES_EVENT and/or SL_RULES_PROFILE, the paths it may read.
 * where: the config path of the condition for messages (e.g.
 * "triggers[3].where"; NULL: "condition"); its last member name tells which
 * side reads what ("... (where reads the event)").
 *
 * Every error writes into err[errlen] (truncated, always terminated when
 * errlen > 0) one line naming where, the place in the tree and the offending
 * key, e.g.
 *   triggers[3].where: unknown operator "greater"
 *   triggers[0].if.all[1]: "field" must be a string
 *   triggers[0].where.any[0].not: profile paths are not allowed here (where reads the event)
 * Returns 0 (then *out is set, free it with sl_rules_free()), or
 *   SL_EINVAL   not a condition: unknown key or operator, wrong value type,
 *               malformed path, a path from the wrong side or an unknown
 *               profile field; also sides without either flag;
 *   SL_ETOOBIG  past a bound (depth, leaves, value or path size);
 *   SL_ENOMEM   out of memory.
 * On error *out is NULL. */
int sl_rules_compile(const struct cJSON *json, unsigned sides, const char *where, sl_cond_t **out,
                     char *err, size_t errlen);

/* 1 when c holds for ctx, else 0. Never fails, reads ctx->event and the
 * view only, in place: it allocates only to decode a string with escapes
 * that a string operator (gt..lte, contains, starts_with, glob, before,
 * after) reads, freed before it returns (eq/in compare without decoding). */
int sl_rules_eval(const sl_cond_t *c, const sl_rules_ctx_t *ctx);

/* 1 when some leaf of c reads that side (known at compile time: a caller can
 * skip building a context it would never read). */
int sl_rules_reads_event(const sl_cond_t *c);
int sl_rules_reads_profile(const sl_cond_t *c);

/* Calls fn for each leaf of c, in order: its path as written
 * ("profile.computed.rfm.segment") and the string values it compares with
 * (eq, ne, contains, starts_with, glob: one; in, nin: each string of the
 * list; none for other operators); fn's non-zero result stops and is
 * returned. What an audience reads: which inputs move it, which audiences
 * it names. */
int sl_rules_each_leaf(const sl_cond_t *c, int (*fn)(const char *path, const char *const *strings, size_t n, void *arg),
                       void *arg);

/* Appends c to out as canonical JSON: no whitespace, "field" before its
 * operator, numbers in their shortest exact form, times as
 * "YYYY-MM-DDTHH:MM:SS.mmmZ", durations in their largest exact unit
 * ("720h" prints "30d"). Compiling what it prints gives the same condition
 * and the same text. 0, or SL_ENOMEM (out then holds what it held before). */
int sl_rules_print(const sl_cond_t *c, sl_buf_t *out);

/* Frees c (NULL is a no-op). No evaluation of c may be running. */
void sl_rules_free(sl_cond_t *c);

/* pattern against the whole of subject (both NUL-terminated): `*` any run
 * of bytes (also none), `?` exactly one byte, anything else itself. 1 or 0.
 * Time O(strlen(pattern) * strlen(subject)) at worst, no recursion, no
 * allocation. Also page_visit's url (sl_trig_glob_match). */
int sl_rules_glob_match(const char *pattern, const char *subject);

#endif
