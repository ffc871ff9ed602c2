/* sl_stitch.h - identity stitching (DESIGN.md, "Identity stitching rules",
 * docs/IDENTITY.md): the first step of the derivation stage (sl_stage.h).
 *
 * The identity graph lives in the derived environment and changes in the
 * stage's transaction that applies the events changing it: the stitcher is a
 * stage step (sl_stitch_step()) that reads each stored event. Persons are
 * numbered; identifiers (anonymous_id, user_id and the configured traits,
 * e.g. email) point at a person; each event is indexed under the identifier
 * it was sent with. A merge re-points the absorbed person's identifiers and
 * never touches its events, so its cost depends on the number of
 * identifiers, not on the length of the history.
 *
 * What an event did -- the person it was stitched to, the merges, the trait
 * changes -- goes into the stage context for the later phases (computed
 * fields, audiences, rules: sl_stage.h); what no event does -- persons
 * forgotten, retention asking who still holds an event, a profile answer's
 * extra members -- is told to listeners, in the same transaction. The
 * stitcher knows none of them.
 *
 * Reads (profiles, timelines, journal) run in read transactions from any
 * thread; erasure runs as a stage job.
 */
#ifndef SL_STITCH_H
#define SL_STITCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sl_common.h"
#include "sl_config.h"
#include "sl_stage.h"
#include "sl_store.h"

/* 1 when value must never become an identifier: empty or blank, or equal
 * (ASCII case-insensitively, invisible code points ignored) to one of the
 * configured junk values ("null", "undefined", "anonymous", "0", "guest"...). */
int sl_ident_is_junk(const char *value, size_t len, char *const *junk, size_t n_junk);
/* Blanks and invisible code points (no-break and zero-width spaces, BOM...)
 * are ignored by sl_ident_is_junk, and sl_ident_trim() removes them from
 * both ends of v (updated), returning the new length. */
size_t sl_ident_trim(const char **v, size_t n);
/* v[0..n) (valid UTF-8) lower-cased by Unicode's simple case mapping, in
 * arena, NUL-terminated; NULL when out of memory. */
char *sl_ident_lower(const char *v, size_t n, sl_arena_t *arena);

enum { SL_STITCH_TRACK = 1, SL_STITCH_PAGE, SL_STITCH_SCREEN, SL_STITCH_IDENTIFY, SL_STITCH_ALIAS, SL_STITCH_GROUP };

#define SL_STITCH_MAX_TRAITS 8

typedef struct sl_stitch_s sl_stitch_t;

/* What the stitcher tells the later phases of each event is in the stage
 * context (sl_stage.h, sl_stage_ctx_t: the person, identified, merges,
 * changed traits, historical). Listeners hear of what is no event's doing:
 * they run on the stage thread inside its transaction (profile_extra: on a
 * reader's); an error fails the job. Every member but arg is optional. */
typedef struct sl_ident_listener_s {
    void *arg;
    /* Erasure: forget persons[0..n) (sorted: the person and those merged
     * into it over time, or the persons retention emptied); *n_removed gets
     * how many of their records went. erased: what downstream tools may be
     * told, a JSON object with no clear identifier: {"id":"p_N",
     * "merged_ids":["p_M"...],"user_id_sha256":[hex...],"<trait>_sha256":[...]}
     * (SHA-256 of each userId and identity-trait value as the stitcher keys it:
     * trait values trimmed and lower-cased; anonymous ids are not listed), or
     * NULL when nobody is to be told (retention emptied an anonymous person). */
    int (*forgotten)(void *arg, MDB_txn *txn, const uint64_t *persons, size_t n, const char *erased,
                     uint64_t *n_removed);
    /* Retention: *held 1 when the listener still refers to the stored event
     * message_id (a trigger in the feed names it as its cause): it is kept
     * until that reference goes. */
    int (*holds)(void *arg, MDB_txn *txn, const char *message_id, int *held);
    /* A profile answer (GET /v1/profiles/...) is written for person: append
     * the listener's own members, each with a leading comma (the trigger
     * engine: ",\"pending_triggers\":[...]"). Called on the thread that
     * reads (libuv's threadpool), in its read transaction: it must touch no
     * stage-thread scratch. */
    int (*profile_extra)(void *arg, MDB_txn *txn, uint64_t person, sl_buf_t *out);
    /* The same answer's "counters" object: append the listener's counters,
     * each with a leading comma (the ledger: ",\"orders\":3,\"revenue\":..."). */
    int (*profile_counters)(void *arg, MDB_txn *txn, uint64_t person, sl_buf_t *out);
    /* The person view conditions read (sl_stitch_person_view) is written for
     * person: append the listener's members, each with a leading comma
     * (computed fields: ",\"computed\":{...}"). Stage thread or a reader;
     * no stage-thread scratch. */
    int (*view_extra)(void *arg, MDB_txn *txn, uint64_t person, sl_buf_t *out);
} sl_ident_listener_t;


/* Creates the stitcher for cfg (identity traits, junk list, sources), over
 * the log (events are read from it, erased from it); both must outlive it. */
sl_stitch_t *sl_stitch_new(const sl_config_t *cfg, sl_store_t *log);
void sl_stitch_free(sl_stitch_t *s);

/* The stage step to register (sl_stage_add_step) before sl_stage_open(). */
const sl_stage_step_t *sl_stitch_step(sl_stitch_t *s);
/* Adds a listener (copied; at most 8), before the stage starts. */
int sl_stitch_listen(sl_stitch_t *s, const sl_ident_listener_t *l);

/* The trigger payload's "profile" of person id, appended to out (may be NULL):
 * {"id","user_id","email","traits"}. identified (may be NULL) gets 1 when the
 * person has a userId or an identity trait; last_ms (may be NULL) its last
 * event time. SL_ENOTFOUND when there is no such person. */
/* What conditions read of person id (rules/sl_rules.h, the "profile." paths),
 * appended to out: {"traits":{...}, "identified":bool, "first_seen":ISO,
 * "last_seen":ISO, "consent":{category:bool}, "unsubscribed":bool, and the
 * listeners' members (view_extra: "computed")}.
 * SL_ENOTFOUND when there is no such person. Stage thread or a reader. */
int sl_stitch_person_view(sl_stitch_t *s, MDB_txn *txn, uint64_t id, sl_buf_t *out);
int sl_stitch_person_payload(sl_stitch_t *s, MDB_txn *txn, uint64_t id, sl_buf_t *out, int *identified,
                             int64_t *last_ms);
/* The slim profile of person id, appended to out: {"id","user_id","email"}
 * (an audience's entries and export: no traits). Any thread. SL_ENOTFOUND:
 * no such person. */
int sl_stitch_person_slim(sl_stitch_t *s, MDB_txn *txn, uint64_t id, sl_buf_t *out, int *identified);

/* Consent (docs/PRIVACY.md): each person's latest consent categories, from
 * context.consent.categoryPreferences (Segment) or context.consentManagement
 * (RudderStack), and a suppression flag set by the unsubscribe event and
 * cleared by the subscribe event (config unsubscribe_event / subscribe_event),
 * each part going by the time of its last change; merges keep the later of
 * each part; the profile shows it as "consent". For the trigger engine: *ok
 * 1 when person is not unsubscribed and granted category (NULL: only the
 * flag is asked about), else 0 with *why "consent" or "unsubscribed".
 * Returns 0 or an LMDB error. */
int sl_stitch_consent_check(sl_stitch_t *s, MDB_txn *txn, uint64_t person, const char *category, int *ok,
                            const char **why);

/* Identifier values are at most this long (bytes), identity trait names at
 * most SL_IDENT_MAX_KIND: a key "<kind>\x1f<value>" always fits LMDB's 511. */
#define SL_IDENT_MAX_BYTES 256
#define SL_IDENT_MAX_KIND 64

/* An identifier value as the stitcher keys it, copied into arena: NULL for
 * junk, a value over SL_IDENT_MAX_BYTES (or no value); trait values trimmed
 * and lower-cased. */
const char *sl_stitch_clean_id(const sl_stitch_t *s, const char *v, sl_arena_t *arena, int is_trait);

/* The person the identifier (kind, id) resolves to, as the profile routes
 * find it: 0 and *person, SL_ENOTFOUND, or an LMDB error. Any thread, in a
 * read transaction. */
int sl_stitch_find(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, uint64_t *person);

/* The person a stored event belongs to now (its userId, else its
 * anonymousId, else -- an identify -- its first identity trait, as the
 * stitcher keys them; merges since followed): 0 and *person, SL_ENOTFOUND
 * (no such identifier: erased), or an LMDB error. top, context: the
 * event's members and its context's (sl_jindex). Stage thread or a reader. */
int sl_stitch_event_person(sl_stitch_t *s, MDB_txn *txn, const sl_jindex_t *top, const sl_jindex_t *context,
                           uint64_t *person);

/* Calls cb(seq, arg) for each stored event of person (every identifier's
 * timeline: merged persons' events too), in no particular order; cb's
 * non-zero result stops and is returned. SL_ENOTFOUND: no such person. Any
 * thread (a read transaction): `sillage verify` replays them. */
int sl_stitch_person_events(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int (*cb)(uint64_t seq, void *arg),
                            void *arg);

/* Person attachments: a component's own bytes about a person, kept at the
 * end of the person's record. The stitcher reads that record for every
 * event, so an owner reading and writing its bytes in a later phase of the
 * event finds the page in memory, where a database of its own would cost
 * one more B-tree descent per event (docs/ARCHITECTURE.md). Each owner has
 * a tag (below); the stitcher never reads the bytes. They go with the
 * record: erasure, and retention removing a person never identified. A
 * merge leaves them to their owner: the absorbed person's are kept for the
 * rest of the event (sl_stitch_attach_step_get and _put still find them
 * under its id), so the owner's step joins them into the survivor's. */
enum { SL_ATTACH_FIELDS = 1, SL_ATTACH_AUDIENCES = 2 };
/* person's bytes under tag in *out (empty: none), valid until the next
 * write in txn: 0, SL_ENOTFOUND (no such person) or an LMDB error. Any
 * thread. */
int sl_stitch_attach_get(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int tag, MDB_val *out);
/* The same on the stage thread, during an event's steps: a person absorbed
 * earlier in the event is found too. */
int sl_stitch_attach_step_get(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int tag, MDB_val *out);
/* Replaces person's bytes under tag with data[0..len) (len 0: removes
 * them). Stage thread, in the stage transaction. SL_ENOTFOUND: no such
 * person (nothing written). */
int sl_stitch_attach_put(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int tag, const void *data, size_t len);
/* cb(person, bytes under tag (empty: none), arg) for every person, in id
 * order; cb's non-zero result stops and is returned. Any thread. */
int sl_stitch_attach_each(sl_stitch_t *s, MDB_txn *txn, int tag,
                          int (*cb)(uint64_t person, const MDB_val *v, void *arg), void *arg);

/* The first and last times (ms) of person id's stored events (0: none
 * left). Any thread. SL_ENOTFOUND: no such person. */
int sl_stitch_person_seen(sl_stitch_t *s, MDB_txn *txn, uint64_t id, int64_t *first, int64_t *last);

/* The ids of the persons from `from` on, in order, at most cap of them,
 * into ids[0..*n) (a walk over every person in chunks: an audience built).
 * Any thread. */
int sl_stitch_person_ids(sl_stitch_t *s, MDB_txn *txn, uint64_t from, uint64_t *ids, size_t cap, size_t *n);

/* 1 when kind names an identifier kind: "user_id", "anonymous_id" or a
 * configured identity trait. */
int sl_stitch_kind_ok(const sl_stitch_t *s, const char *kind);

/* Profile reads, in a read transaction of the derived environment
 * (sl_stage_read()), from any thread (the collector runs them on libuv's
 * threadpool); the timeline also reads events from log_txn. Each appends
 * JSON to out (the caller's) and returns 0, SL_ENOTFOUND when no person has
 * that identifier, or an LMDB error. before: the "next" cursor of a previous
 * page, or NULL. An identify whose userId and anonymousId are junk or
 * unkeyable but which carries an identity trait is found by that trait. */
int sl_stitch_profile(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, sl_buf_t *out);
int sl_stitch_timeline(sl_stitch_t *s, MDB_txn *txn, MDB_txn *log_txn, const char *kind, const char *id,
                       size_t limit, const char *before, sl_buf_t *out);
/* The person's journal, newest entry first, at most limit entries:
 * {"person","merges":[...],"refused":[...],"next":"<cursor>"|null}.
 * A merge entry per person absorbed (so merges are bounded only by the
 * identifiers the person gains, which the write key can grow: a page costs
 * limit entries, never the journal); refusals coalesced per (owner, reason),
 * each entry counting them ("count", "first_at", "last_at") and naming the
 * latest, at most SL_STITCH_MAX_REFUSALS per person (the oldest go).
 * SL_EINVAL: before is not a cursor of a previous page. */
int sl_stitch_merges(sl_stitch_t *s, MDB_txn *txn, const char *kind, const char *id, size_t limit,
                     const char *before, sl_buf_t *out);
#define SL_STITCH_MAX_REFUSALS 100
/* The most recently active persons, newest first, at most limit:
 * {"profiles":[<profile>...],"next":"<cursor>"|null}. Activity is each
 * person's newest event time, kept to the minute. SL_EINVAL: a bad cursor. */
int sl_stitch_recent(sl_stitch_t *s, MDB_txn *txn, size_t limit, const char *before, sl_buf_t *out);

/* Erasure, as a stage job: sl_stitch_erase_init(), then
 * sl_stage_submit(stage, &e->job); in done (loop thread) read the counts,
 * then sl_stitch_erase_free(). The person's derived state goes in the
 * stage's transaction, its events from the log once that is on disk (a
 * crash in between is finished at the next start). */
typedef struct sl_stitch_erase_s {
    sl_stage_job_t job;
    sl_stitch_t *stitch;
    const char *kind, *id;
    int found;                 /* out */
    char person[32];           /* out */
    uint64_t events, identities, journal; /* out: what was erased */
    uint64_t triggers;         /* out: listeners' records about the person (feed entries) */
    void *ctx;                 /* the caller's */
    uint64_t *seqs;            /* private: the person's events */
    size_t n_seqs, cap_seqs;
    uint64_t *merged;          /* private: the persons merged into it */
    size_t n_merged, cap_merged;
} sl_stitch_erase_t;
void sl_stitch_erase_init(sl_stitch_erase_t *e, sl_stitch_t *s, const char *kind, const char *id,
                          void (*done)(sl_stage_job_t *job));
void sl_stitch_erase_free(sl_stitch_erase_t *e);

/* Retention (docs/PRIVACY.md): events older (by their timestamp) than
 * their source's `retention`, or than `anonymous_retention` when their
 * person was never identified, leave the log with their timeline entry.
 * Person records stay: traits, consent and identifiers survive (and the
 * listeners' own state: the order ledger); event counts and first/last seen follow the timelines. A person
 * never identified whose every event is pruned goes whole (identifiers,
 * record, consent, rule states, feed entries), with no profile_erased. A stage
 * job, like erasure, examining at most `limit` events of the log per run
 * from a durable cursor: it follows the log's end, and starts again from
 * the beginning once a pass is over and sl_stitch_prune_interval_ms() has
 * passed since that pass began (events age while stored). Set upto to
 * sl_stage_applied() when submitting: later events are left for another
 * run. The events go from the log once the run is on disk (a crash in
 * between is finished at the next start). */
typedef struct sl_stitch_prune_s {
    sl_stage_job_t job;
    sl_stitch_t *stitch;
    uint64_t upto;             /* in: the last event the stage applied */
    size_t limit;              /* in: events examined per run (0: 2,000) */
    uint64_t examined, pruned; /* out: this run */
    uint64_t persons_gone;     /* out: persons never identified left with no event, removed */
    uint64_t held;             /* out: past their age, kept while a trigger in the feed names them */
    int more;                  /* out: events up to upto are left to examine */
    uint64_t *seqs;            /* private */
    size_t n_seqs, cap_seqs;
    uint64_t erasing_key, cleared_key; /* private: this run's record of its seqs; the last one done */
    uint64_t *persons;         /* private: anonymous persons whose events were pruned */
    size_t n_persons, cap_persons;
} sl_stitch_prune_t;
/* 0 when no retention is configured (nothing to prune, never submit). */
int64_t sl_stitch_prune_interval_ms(const sl_stitch_t *s);
void sl_stitch_prune_init(sl_stitch_prune_t *p, sl_stitch_t *s, void (*done)(sl_stage_job_t *job));
void sl_stitch_prune_free(sl_stitch_prune_t *p);

/* Consistency check of a store (`sillage verify`), in one read transaction:
 * every timeline entry is a stored event indexed once under an identifier
 * that resolves; every event with an identifier is indexed; identifiers and
 * persons agree both ways; person counters add up to the timelines; the
 * trigger feed is ordered and every trigger's cause is a stored event.
 * Problems are printed to out and counted in rep->problems. */
typedef struct sl_verify_report_s {
    uint64_t events, expected_indexed, indexed, identifiers, persons, triggers, problems;
} sl_verify_report_t;
typedef struct sl_verify_opts_s {
    MDB_txn *log_txn;          /* a read transaction of the log */
    uint64_t applied;          /* the stage's cursor: later events are not indexed yet */
    int (*skip)(uint64_t seq, void *arg); /* events set aside (may be NULL) */
    void *skip_arg;
    /* more checks at the end (the trigger feed), given a test of messageIds */
    int (*also)(void *arg, MDB_txn *txn, int (*has_message)(const char *id, void *hm_arg), void *hm_arg,
                FILE *out, uint64_t *n, uint64_t *problems);
    void *also_arg;
} sl_verify_opts_t;
int sl_stitch_verify(sl_stitch_t *s, MDB_txn *txn, const sl_verify_opts_t *o, FILE *out, sl_verify_report_t *rep);

typedef struct sl_stitch_stats_s {
    uint64_t merges, refusals, persons_created;
    uint64_t refusals_dropped;        /* refusal entries dropped past SL_STITCH_MAX_REFUSALS */
    uint64_t refusal_refs_read;       /* journal references read to keep that bound (its cost: tests) */
    uint64_t identifies, identify_ns; /* identify and alias messages stitched, time spent on them */
    uint64_t traits_dropped;          /* traits not kept on a profile (limits.max_traits_*) */
    uint64_t pruned, examined, prune_passes, persons_expired; /* retention */
} sl_stitch_stats_t;
void sl_stitch_get_stats(const sl_stitch_t *s, sl_stitch_stats_t *out);
/* The same as Prometheus text (arg: the stitcher). */
void sl_stitch_metrics(void *arg, sl_buf_t *out);

#endif
