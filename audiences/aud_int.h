/* aud_int.h - private to audiences/: the parsed section, the component's
 * state, the records, and what audiences.c (the step, moves, builds) and
 * read.c (lists, export, KPIs, verify) share. sl_audiences.h is the
 * contract. */
#ifndef SL_AUD_INT_H
#define SL_AUD_INT_H

#include "sl_audiences.h"

#include "sl_feed.h"
#include "sl_fields.h"
#include "sl_rules.h"
#include "sl_stage.h"
#include "sl_stitch.h"

#include <cjson/cJSON.h>
#include <stdatomic.h>

/* what an audience's condition reads (sl_rules_each_leaf) */
enum { R_TRAITS = 1, R_IDENTIFIED = 2, R_SEEN = 4, R_CONSENT = 8, R_COMPUTED = 16, R_AUDIENCES = 32 };

#define ATT_VERSION 1

typedef struct {
    char *name;
    uint32_t id;                 /* FNV-1a of name */
    sl_cond_t *where;
    int include_anonymous;
    char *requires_consent;
    unsigned reads;              /* R_* */
    char **computed;             /* the computed fields it reads */
    size_t n_computed;
    char **ref_names;            /* the audiences it reads, by name (parse), ... */
    size_t n_refs;
    uint64_t refs;               /* ... and as a mask of indexes */
    uint32_t defhash;            /* FNV-1a of what decides membership (the printed where, include_anonymous) */
} aud_def_t;

typedef struct {
    aud_def_t *v;
    size_t n;
    size_t order[SL_AUD_MAX];    /* evaluation order: each after those it reads */
} aud_conf_t;

struct sl_aud_s {
    const sl_config_t *_Atomic cfg;
    sl_stitch_t *stitch;
    sl_fields_t *fields;
    sl_feed_t *feed;
    MDB_dbi members, meta, defs, hist;
    _Atomic int have_dbs;
    int muted;
    /* building (stage thread): the audiences new or changed since the store
     * last saw them (and those reading them), walked over every person from
     * build_next on; the audiences the store holds and the config does not,
     * whose members go */
    uint64_t building, build_next;
    struct {
        uint32_t id;
        char name[SL_AUD_NAME_MAX + 1];
    } deleted[SL_AUD_MAX];
    size_t n_deleted;
    uint64_t announce;                 /* built with no person to walk: announced at the next tick */
    uint64_t c_building, c_build_next; /* as the last commit left them (an aborted transaction goes back) */
    size_t c_n_deleted;
    uint64_t c_announce;
    sl_stage_step_t step;
    sl_ident_listener_t ilis;
    sl_fields_listener_t flis;
    /* stage thread scratch */
    sl_buf_t view, prof, data, att;
    int view_built;
    uint32_t cur[SL_AUD_MAX];    /* the memberships of the person under evaluation */
    size_t n_cur;
};

typedef struct {
    int64_t entered;             /* ms */
    uint32_t flags;              /* M_IDENTIFIED, M_EMAIL */
    uint32_t orders;
    double revenue;
} mval_t;
enum { M_IDENTIFIED = 1, M_EMAIL = 2 };

typedef struct {
    uint64_t members, identified, with_email, orders;
    double revenue;
} kpi_t;

/* ahist: be32 id, be32 day -> the members at the day's last move, entered, exited */
typedef struct {
    uint64_t members;
    uint32_t entered, exited;
} hist_t;

typedef struct {
    sl_aud_t *a;
    MDB_txn *txn;
    uint64_t person;
    int rc;
} view_t;

/* adefs' value: then the name */
typedef struct {
    uint32_t defhash, building;
    uint64_t next;
} def_rec_t;

/* the audiences of the config in use (none: an empty list) */
const aud_conf_t *aud_conf(const sl_aud_t *a);
int aud_conf_defines(const void *parsed, const char *name);
/* a person's memberships (the attachment): ids[0..*n); *evaluated 0 when it has none */
int aud_att_read(const MDB_val *v, uint32_t *ids, size_t *n, int *evaluated);
/* amembers' key: be32 audience id, be64 person */
void aud_member_key(unsigned char k[12], uint32_t id, uint64_t person);
void aud_mval_read(const MDB_val *v, mval_t *m);
int aud_kpi_get(sl_aud_t *a, MDB_txn *txn, uint32_t id, kpi_t *k);
/* what person adds to an audience's sums now */
int aud_contribution(sl_aud_t *a, MDB_txn *txn, uint64_t person, int64_t now, mval_t *m);
void aud_hist_key(unsigned char k[8], uint32_t id, int64_t day);
/* the person view conditions read, built once per evaluation (sl_rules_profile_fn) */
sl_jval_t aud_person_view(void *arg);
int aud_view_identified(view_t *v);

#endif
