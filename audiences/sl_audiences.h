/* sl_audiences.h - audiences: live segments of persons (docs/AUDIENCES.md).
 *
 * An audience is a condition on the person (sl_rules.h, profile paths:
 * traits, computed fields, identity facts, consent, other audiences):
 *
 *   "audiences": [{"name": "promo-prone", "where": {...},
 *                  "include_anonymous": false, "requires_consent": "marketing"}]
 *
 * Membership is kept in the stage transaction of its cause, in the stage's
 * audiences phase (after computed fields, before the rules). A person's
 * audiences are evaluated again only when an input they read may have
 * changed: the person is new to the audiences; the event merged persons or
 * gave its person an identifier; it changed a trait; it changed consent; a
 * computed field it reads changed (the event's, or a timer's: the fields
 * component's listener); an audience it reads moved earlier in the event;
 * profile.first_seen / last_seen are read again at every event of the
 * person. Audiences that read others are evaluated after them (check-config
 * refuses a cycle).
 *
 * Each transition appends a feed entry in that transaction:
 *   {"type": "audience_entered" | "audience_exited", "rule": <audience>,
 *    "profile": {"id", "user_id", "email"},
 *    "data": {"audience", "reason", "members"}}
 * reason: "event", "merge" (the event merged persons: an absorbed person
 * leaves its audiences, the survivor is evaluated again), "timer" (a
 * computed field moved by time), "import" (an event from the past: rules
 * fire nothing of it, membership moves), "expired" (retention removed a
 * never-identified member; the profile is {"id"} alone). An erasure removes
 * the person's memberships with no entry of their own: the feed's
 * profile_erased is their exit from every audience. Transitions are never
 * coalesced and no pressure cap applies to them.
 *
 * State (derived environment):
 *   the person's attachment (sl_stitch.h, SL_ATTACH_AUDIENCES): a version
 *     byte, then the u32 ids of the audiences the person is in, sorted (an
 *     audience's id: FNV-1a of its name; check-config refuses two names
 *     that collide). A person without it was never evaluated.
 *   amembers  be32 audience id, be64 person -> i64 entered at (ms), u32 flags
 *             (identified, e-mail), u32 orders, f64 revenue: what the person
 *             adds to the audience's KPIs, as last taken
 *   ameta     u32 audience id -> the KPIs' sums (members, identified, with
 *             e-mail, orders: u64; revenue: f64)
 *   ahist     be32 audience id, be32 local day -> members at the day's last
 *             move, entered, exited
 *   adefs     u32 audience id -> u32 definition hash, u32 building (2: no
 *             longer configured, its members being purged), u64 the build's
 *             next person, the name (builds and deletions, below)
 *
 * Threads: the step, the listeners' callbacks and sl_aud_reload on the
 * stage thread; the reads (sl_aud_list) in any read transaction.
 */
#ifndef SL_AUDIENCES_H
#define SL_AUDIENCES_H

#include <stdint.h>
#include <stdio.h>

#include <lmdb.h>

#include "sl_common.h"
#include "sl_config.h"

struct sl_stage_s;
struct sl_stitch_s;
struct sl_fields_s;
struct sl_feed_s;

#define SL_AUD_MAX 64          /* audiences in one config */
#define SL_AUD_NAME_MAX 128    /* bytes of a name (as a trigger rule's) */

typedef struct sl_aud_s sl_aud_t;

/* Registers the "audiences" section of the configuration; once, before the
 * first sl_config_parse(), after the trigger rules' section (names are
 * unique across both). */
int sl_aud_config_register(void);

/* The audiences of cfg (which must outlive it, or be replaced by
 * sl_aud_reload), over the stitcher (persons, their attachments), the
 * computed fields (what timers move) and the feed (transitions). */
sl_aud_t *sl_aud_new(const sl_config_t *cfg, struct sl_stitch_s *stitch, struct sl_fields_s *fields,
                     struct sl_feed_s *feed);
void sl_aud_free(sl_aud_t *a);
/* Registers its step with the stage and its listeners with the stitcher and
 * the fields; after the trigger engine's (its erasure hook runs after the
 * engine's, which removes the person's feed entries), before
 * sl_stage_open(). */
int sl_aud_attach(sl_aud_t *a, struct sl_stage_s *stage);
/* A reload's new configuration, in the reload job's transaction (stage
 * thread): an audience it keeps goes on; a new or changed one (its `where`
 * or include_anonymous) is built by a walk over every person, in chunks,
 * with no entry per member, then announced once (audience_built); a
 * removed one loses its members in chunks and is announced once
 * (audience_deleted). The same at open, against what the store held. */
int sl_aud_reload(sl_aud_t *a, MDB_txn *txn, const sl_config_t *cfg);
/* Rebuild: transitions are applied, nothing is appended (the feed carried
 * over holds them). */
void sl_aud_mute(sl_aud_t *a, int on);

/* GET /v1/audiences: {"audiences":[{"name","status":"live","members"}...]}
 * appended to out, in a read transaction of the derived environment. */
int sl_aud_list(sl_aud_t *a, MDB_txn *txn, sl_buf_t *out);

/* GET /v1/audiences/{name}/members: a page of the members, in person order,
 * read in one read transaction (docs/AUDIENCES.md, "Export"). A consumer
 * keeps the first page's position and, once it has every page, replays the
 * feed after it with ?rule=<name>: it then holds exactly the membership. */
enum { SL_AUD_JSON, SL_AUD_NDJSON, SL_AUD_CSV };
enum { SL_AUD_F_ID = 1, SL_AUD_F_USER_ID = 2, SL_AUD_F_EMAIL = 4, SL_AUD_F_ENTERED_AT = 8, SL_AUD_F_UNSUBSCRIBED = 16 };
#define SL_AUD_F_DEFAULT (SL_AUD_F_ID | SL_AUD_F_USER_ID | SL_AUD_F_EMAIL | SL_AUD_F_UNSUBSCRIBED)
#define SL_AUD_EXPORT_MAX 10000 /* members per page */
typedef struct sl_aud_export_s {
    int format;             /* SL_AUD_JSON, _NDJSON, _CSV */
    unsigned fields;        /* SL_AUD_F_*, written in that order */
    int hash_email;         /* email: the hex SHA-256 of the address as kept (trimmed, lower-cased) */
    uint64_t after;         /* members after this person id (0: from the first) */
    size_t limit;           /* 1..SL_AUD_EXPORT_MAX */
    uint64_t position;      /* out: the feed's last entry in this snapshot */
    uint64_t next;          /* out: the last person listed when more may follow (0: the end) */
    size_t n;               /* out: members listed */
} sl_aud_export_t;
/* Appends the page to out (JSON {"audience","position","members":[...],
 * "next"}; NDJSON one object a line; CSV per RFC 4180 with a header line).
 * An audience with requires_consent lists only members who granted it; a
 * page then reads at most 4 × limit entries (fewer members, and a next). 
 * 0, SL_ENOTFOUND (no such audience) or an LMDB error. Any thread. */
int sl_aud_members(sl_aud_t *a, MDB_txn *txn, const char *name, sl_aud_export_t *x, sl_buf_t *out);
/* sillage verify: every person's memberships against the members index
 * both ways, each audience's count against its entries, and each member's
 * audiences evaluated again at now. An audience that reads
 * profile.first_seen / last_seen or a computed field can differ by time
 * alone (a timer due and not run yet, a condition moving on the next
 * event): such a difference is printed as a note, not counted. Problems are
 * printed to out and counted; *persons counts the persons looked at. */
int sl_aud_verify(sl_aud_t *a, MDB_txn *txn, int64_t now, FILE *out, uint64_t *persons, uint64_t *problems);
/* GET /v1/audiences/{name}/kpis: the sums kept with each move (members,
 * identified, with e-mail, orders, revenue, AOV, revenue per member), the
 * daily history of the last `days` days (members at the day's last move,
 * entered, exited; days in the configured timezone) and, over the members
 * (at most `limit` of them read), the shares over the period before now:
 * active (an event within it), churned (seen before it, no event within
 * it), second-order conversion (two orders or more among those with one).
 * 0, SL_ENOTFOUND (no such audience) or an LMDB error. Any thread. */
int sl_aud_kpis(sl_aud_t *a, MDB_txn *txn, const char *name, int64_t period_ms, int days, size_t limit, int64_t now,
                sl_buf_t *out);
/* 1 when person is a member of the audience name (pressure tiers). Stage
 * thread, during an event or a timer. */
int sl_aud_is_member(sl_aud_t *a, MDB_txn *txn, uint64_t person, const char *name);
/* 1 when cfg's audiences hold name */
int sl_aud_has(sl_aud_t *a, const char *name);

#endif
