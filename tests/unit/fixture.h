/* fixture.h - the unit tests' fixture for the stitcher on a real store:
 * LMDB in a temporary directory, the writer thread, the stage (and, when
 * asked, the trigger engine and the feed), read back through the same
 * functions the HTTP routes use (test_stitch.c, test_stage.c). */
#ifndef SL_TEST_FIXTURE_H
#define SL_TEST_FIXTURE_H
#include "test.h"
#include "sl_config.h"
#include "sl_stage.h"
#include "sl_fields.h"
#include "sl_stitch.h"
#include "sl_store.h"
#include "sl_triggers.h"

#include <cjson/cJSON.h>
#include <stdio.h>

typedef struct {
    char dir[32], ddir[48];
    uv_loop_t loop;
    sl_config_t cfg;
    sl_stitch_t *stitch;
    sl_store_t *store;
    sl_stage_t *stage;
    int n_sent;
    int untrusted;  /* messages come from a browser key (default: a trusted source) */
    int no_wait;    /* msg() waits for the log only, not for the stage */
    int with_triggers; /* the trigger engine too (the demo rules) */
    sl_trig_t *trig;
    sl_feed_t *feed;
    int with_fields;   /* the computed fields step (also with_triggers) */
    sl_fields_t *fields;
} fix_t;

/* set before fix_init/fix_open: */
extern const sl_stage_step_t *fix_extra_step; /* a step after the stitcher's (tests of the stage) */
extern int fix_extra_first;                    /* add it before the stitcher's (its phase orders them) */
extern int fix_no_stage_start;                 /* fix_open: the stage opened, its thread not started */
extern int fix_with_triggers;                  /* fix_init: the trigger engine too */
extern const char *fix_config;                 /* fix_init: this config instead of the demo's */
extern uint64_t fix_stage_max_lag;             /* fix_open: the stage's max_lag_events (0: none) */
extern uint32_t fix_stage_commit_interval_ms;  /* fix_open: the stage's commit_interval_ms (0: none) */

typedef struct {
    sl_stitch_t *s;
    const char *kind, *id;
    int which; /* 0 profile, 1 timeline, 2 merges, 3 recent */
    size_t limit;       /* merges: a page (0: 1,000) */
    const char *before; /* merges: the cursor of the previous page */
    int rc;
    sl_buf_t out;
} read_t;

typedef struct {
    fix_t *f;
    sl_verify_report_t rep;
    FILE *out;
} verify_req_t;

/* x and y name the same person, and one that exists: two lookups that both
 * find no one must not pass for "the same person". */
#define CHECK_SAME(x, y) do { \
    const char *x_ = (x), *y_ = (y); \
    CHECK(strcmp(x_, "(none)") != 0); \
    CHECK_STR(x_, y_); \
    } while (0)

typedef struct {
    sl_stitch_t *s;
    const char *kind, *id, *category;
    int ok, rc;
    const char *why;
} consent_q_t;

/* Each is described where it is defined (fixture.c). */
int fix_open(fix_t *f);
void fix_close_store(fix_t *f);
int fix_init(fix_t *f);
int fix_init_with(fix_t *f, const sl_stage_step_t *step, int with_triggers);
void fix_free(fix_t *f);
uint64_t put_durable(fix_t *f, const char *json, int64_t ts, const char *mid);
void put(fix_t *f, const char *json, int64_t ts, const char *mid);
void msg_traits(fix_t *f, int type, const char *user, const char *anon, const char *email, int64_t ts,
                       const char *traits);
void msg(fix_t *f, int type, const char *user, const char *anon, const char *email, int64_t ts);
int read_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg);
cJSON *get(fix_t *f, int which, const char *kind, const char *id);
const char *person_of(fix_t *f, const char *kind, const char *id, char out[32]);
double num(const cJSON *o, const char *path1, const char *path2);
int count_journal(fix_t *f, const char *kind, const char *id, const char *type);
void erase_run(fix_t *f, sl_stitch_erase_t *er, const char *kind, const char *id);
int verify_cb(MDB_txn *txn, MDB_txn *log_txn, void *arg);
uint64_t verify_problems(fix_t *f);
MDB_txn *fix_raw_begin(fix_t *f, MDB_env **env);
void drop_first(fix_t *f, const char *db);
void drop_db(fix_t *f, const char *db);
int db_entries(fix_t *f, const char *name);
int consent_ok(fix_t *f, const char *kind, const char *id, const char *category, const char **why);
void fix_batch_done(sl_store_batch_t *b); /* a batch's done callback: sets *(int *)b->data */

#endif
