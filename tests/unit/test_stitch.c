/* test_stitch.c - the stitching rules, on the stitcher plugged into a real
 * store (fixture.h), read back through the same profile functions the HTTP
 * routes use. The HTTP-level scenarios are in tests/identity/scenarios.json;
 * these pin the rules one by one. The stage's own behaviour (phases, timers,
 * set-aside events, redone transactions) is in test_stage.c. */
#include "fixture.h"

#include <stdlib.h>
#include <unistd.h>

TEST(stitch_identify_absorbs_anonymous_trail)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    for (int i = 0; i < 5; i++) msg(&f, SL_STITCH_PAGE, NULL, "a1", NULL, 1000 + i);
    msg(&f, SL_STITCH_TRACK, NULL, "a1", NULL, 2000);
    msg(&f, SL_STITCH_IDENTIFY, "u1", "a1", NULL, 3000);
    char pa[32], pu[32];
    CHECK_SAME(person_of(&f, "anonymous_id", "a1", pa), person_of(&f, "user_id", "u1", pu));
    cJSON *p = get(&f, 0, "user_id", "u1");
    CHECK_INT(num(p, "counters", "events"), ==, 7);
    CHECK_INT(num(p, "counters", "page_views"), ==, 5);
    cJSON_Delete(p);
    cJSON *tl = get(&f, 1, "user_id", "u1");
    CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(tl, "events")), ==, 7);
    cJSON_Delete(tl);
    /* the anonymous person was new at the identify: it became the user's, no merge needed */
    CHECK_INT(count_journal(&f, "user_id", "u1", "merge"), ==, 0);
    fix_free(&f);
}

TEST(stitch_second_device_merges)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_IDENTIFY, "u1", "phone", NULL, 1000);
    msg(&f, SL_STITCH_PAGE, NULL, "laptop", NULL, 2000);
    msg(&f, SL_STITCH_PAGE, NULL, "laptop", NULL, 2001);
    msg(&f, SL_STITCH_IDENTIFY, "u1", "laptop", NULL, 3000);
    char a[32], b[32];
    CHECK_SAME(person_of(&f, "anonymous_id", "laptop", a), person_of(&f, "anonymous_id", "phone", b));
    CHECK_INT(count_journal(&f, "user_id", "u1", "merge"), ==, 1);
    cJSON *p = get(&f, 0, "user_id", "u1");
    CHECK_INT(num(p, "counters", "events"), ==, 4);
    cJSON_Delete(p);
    /* a late anonymous event from the laptop lands on the merged person */
    msg(&f, SL_STITCH_TRACK, NULL, "laptop", NULL, 1500);
    p = get(&f, 0, "user_id", "u1");
    CHECK_INT(num(p, "counters", "events"), ==, 5);
    cJSON_Delete(p);
    fix_free(&f);
}

TEST(stitch_shared_device_refused_once)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_IDENTIFY, "alice", "kiosk", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, "bob", "kiosk", NULL, 2000);
    msg(&f, SL_STITCH_TRACK, "bob", "kiosk", NULL, 2001);
    char a[32], b[32];
    CHECK(strcmp(person_of(&f, "user_id", "alice", a), person_of(&f, "user_id", "bob", b)) != 0);
    /* the device stays with its first user; bob's events go to bob */
    CHECK_SAME(person_of(&f, "anonymous_id", "kiosk", b), a);
    cJSON *p = get(&f, 0, "user_id", "bob");
    CHECK_INT(num(p, "counters", "events"), ==, 2);
    cJSON_Delete(p);
    CHECK_INT(count_journal(&f, "user_id", "bob", "refused"), ==, 1); /* once, not per event */
    CHECK_INT(count_journal(&f, "user_id", "alice", "refused"), ==, 1);
    fix_free(&f);
}

TEST(stitch_alias_and_email)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    /* alias: two identified users become one */
    msg(&f, SL_STITCH_IDENTIFY, "old-id", "d1", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, "new-id", "d2", NULL, 1001);
    msg(&f, SL_STITCH_ALIAS, "new-id", NULL, "old-id", 1002);
    char a[32], b[32];
    CHECK_SAME(person_of(&f, "user_id", "old-id", a), person_of(&f, "user_id", "new-id", b));
    CHECK_INT(count_journal(&f, "user_id", "new-id", "merge"), ==, 1);

    /* issue 13, H4: from a browser key, alias never joins two users; the
     * refusal is journaled and the event goes to the new userId's person */
    f.untrusted = 1;
    msg(&f, SL_STITCH_IDENTIFY, "victim", "v1", NULL, 1100);
    msg(&f, SL_STITCH_IDENTIFY, "attacker", "x1", NULL, 1101);
    msg(&f, SL_STITCH_ALIAS, "attacker", NULL, "victim", 1102);
    CHECK(strcmp(person_of(&f, "user_id", "victim", a), person_of(&f, "user_id", "attacker", b)) != 0);
    CHECK_INT(count_journal(&f, "user_id", "victim", "refused"), ==, 1);
    CHECK_INT(count_journal(&f, "user_id", "victim", "merge"), ==, 0);
    msg(&f, SL_STITCH_ALIAS, "newcomer", NULL, "victim", 1103); /* a userId never seen: not grafted on the victim */
    CHECK(strcmp(person_of(&f, "user_id", "victim", a), person_of(&f, "user_id", "newcomer", b)) != 0);
    msg(&f, SL_STITCH_PAGE, NULL, "anon-z", NULL, 1104); /* an anonymous previousId still merges */
    msg(&f, SL_STITCH_ALIAS, "attacker", NULL, "anon-z", 1105);
    CHECK_SAME(person_of(&f, "anonymous_id", "anon-z", a), person_of(&f, "user_id", "attacker", b));
    f.untrusted = 0;

    /* email seen on an anonymous visitor joins the owner of that email,
     * matched trimmed and lower-cased */
    msg(&f, SL_STITCH_IDENTIFY, "carol", "c1", "carol@example.com", 2000);
    msg(&f, SL_STITCH_PAGE, NULL, "c2", NULL, 2100);
    msg(&f, SL_STITCH_IDENTIFY, NULL, "c2", "  Carol@Example.COM ", 2200);
    CHECK_SAME(person_of(&f, "anonymous_id", "c2", a), person_of(&f, "user_id", "carol", b));
    CHECK_SAME(person_of(&f, "email", "carol@example.com", a), b);
    /* an anonymousId never seen before, with carol's email (a newsletter
     * signup): the person made for it is merged before it was ever saved
     * (issue 13, H1: MDB_NOTFOUND failed the whole commit) */
    msg(&f, SL_STITCH_IDENTIFY, NULL, "brand-new-anon", "carol@example.com", 2250);
    CHECK_SAME(person_of(&f, "anonymous_id", "brand-new-anon", a), b);

    /* but an email never fuses two different users */
    msg(&f, SL_STITCH_IDENTIFY, "dave", "d9", "carol@example.com", 2300);
    CHECK(strcmp(person_of(&f, "user_id", "dave", a), person_of(&f, "user_id", "carol", b)) != 0);
    CHECK_INT(count_journal(&f, "user_id", "dave", "refused"), ==, 1);
    fix_free(&f);
}

TEST(stitch_junk_and_traits)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_IDENTIFY, "undefined", "j1", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, "null", "j2", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, " Guest ", "j3", NULL, 1000);
    char a[32], b[32];
    CHECK_STR(person_of(&f, "user_id", "undefined", a), "(none)");
    CHECK(strcmp(person_of(&f, "anonymous_id", "j1", a), person_of(&f, "anonymous_id", "j2", b)) != 0);
    CHECK(strcmp(a, person_of(&f, "anonymous_id", "j3", b)) != 0);

    /* later identify wins per trait, by the time it was set */
    msg_traits(&f, SL_STITCH_IDENTIFY, "t1", NULL, NULL, 5000, "{\"plan\":\"pro\",\"name\":\"T\"}");
    msg_traits(&f, SL_STITCH_IDENTIFY, "t1", NULL, NULL, 4000, "{\"plan\":\"free\",\"city\":\"Lyon\"}");
    cJSON *p = get(&f, 0, "user_id", "t1");
    const cJSON *traits = cJSON_GetObjectItemCaseSensitive(p, "traits");
    const cJSON *plan = cJSON_GetObjectItemCaseSensitive(traits, "plan");
    const cJSON *city = cJSON_GetObjectItemCaseSensitive(traits, "city");
    CHECK_STR(cJSON_IsString(plan) ? plan->valuestring : NULL, "pro"); /* set at 5000, not overridden by 4000 */
    CHECK_STR(cJSON_IsString(city) ? city->valuestring : NULL, "Lyon");
    cJSON_Delete(p);
    fix_free(&f);
}

static int count_event(const char *json, size_t len, uint64_t seq, void *arg)
{
    (void)json;
    (void)len;
    (void)seq;
    (*(uint64_t *)arg)++;
    return 0;
}

TEST(stitch_erasure_and_restart)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_PAGE, NULL, "e1", NULL, 1000);
    msg(&f, SL_STITCH_IDENTIFY, "eve", "e1", NULL, 1001);
    msg(&f, SL_STITCH_IDENTIFY, "frank", "f1", NULL, 1002);
    /* restart: the graph is on disk */
    fix_close_store(&f);
    CHECK_INT(fix_open(&f), ==, 0);
    char a[32], b[32];
    CHECK_SAME(person_of(&f, "anonymous_id", "e1", a), person_of(&f, "user_id", "eve", b));

    sl_stitch_erase_t er;
    erase_run(&f, &er, "anonymous_id", "e1");
    CHECK_INT(er.found, ==, 1);
    CHECK_INT(er.events, ==, 2);
    CHECK_INT(er.identities, ==, 2);
    sl_stitch_erase_free(&er);
    /* the events went from the log too */
    uint64_t n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 1);
    CHECK_STR(person_of(&f, "user_id", "eve", a), "(none)");
    CHECK(strcmp(person_of(&f, "user_id", "frank", a), "(none)") != 0); /* others untouched */
    /* an erased anonymousId starts a new, empty person */
    msg(&f, SL_STITCH_PAGE, NULL, "e1", NULL, 9000);
    cJSON *p = get(&f, 0, "anonymous_id", "e1");
    CHECK_INT(num(p, "counters", "events"), ==, 1);
    cJSON_Delete(p);
    fix_free(&f);
}

/* A track of user/anon at ts with an extra "context" member text (or NULL). */
static void track_ctx(fix_t *f, const char *user, const char *anon, const char *event, int64_t ts, const char *consent)
{
    char mid[32], iso[32];
    snprintf(mid, sizeof(mid), "m%d", ++f->n_sent);
    sl_time_format_iso(ts, iso);
    sl_buf_t b = {0};
    sl_buf_printf(&b, "{\"type\":\"track\",\"messageId\":\"%s\",\"timestamp\":\"%s\",\"event\":\"%s\"", mid, iso, event);
    if (user) sl_buf_printf(&b, ",\"userId\":\"%s\"", user);
    if (anon) sl_buf_printf(&b, ",\"anonymousId\":\"%s\"", anon);
    sl_buf_printf(&b, ",\"context\":{%s%s\"sillage\":{\"source\":\"backend\"}}}", consent ? consent : "",
                  consent ? "," : "");
    put(f, b.data, ts, mid);
    sl_buf_free(&b);
}

TEST(stitch_consent_merges_and_erases)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    const char *why;
    const char *granted = "\"consent\":{\"categoryPreferences\":{\"marketing\":true,\"ads\":false}}";
    track_ctx(&f, NULL, "c1", "Viewed", 1000, granted);
    CHECK_INT(consent_ok(&f, "anonymous_id", "c1", "marketing", &why), ==, 1);
    CHECK_INT(consent_ok(&f, "anonymous_id", "c1", "ads", &why), ==, 0);
    CHECK_STR(why, "consent");
    CHECK_INT(consent_ok(&f, "anonymous_id", "c1", NULL, &why), ==, 1); /* only the flag */
    track_ctx(&f, "cu", NULL, "Unsubscribed", 2000, NULL);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 0);
    CHECK_STR(why, "unsubscribed");
    /* the merge keeps, of each part, the later: c1's categories, cu's flag */
    msg(&f, SL_STITCH_IDENTIFY, "cu", "c1", NULL, 3000);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 0);
    CHECK_STR(why, "unsubscribed");
    track_ctx(&f, "cu", NULL, "Subscribed", 4000, NULL);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 1);
    /* older than what the person holds: changes nothing */
    track_ctx(&f, "cu", NULL, "Late", 500, "\"consent\":{\"categoryPreferences\":{\"marketing\":false}}");
    track_ctx(&f, "cu", NULL, "Unsubscribed", 3500, NULL);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 1);
    /* RudderStack's shape */
    track_ctx(&f, "cu", NULL, "Now", 5000, "\"consentManagement\":{\"deniedConsentIds\":[\"marketing\"]}");
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 0);
    CHECK_STR(why, "consent");
    CHECK_INT(verify_problems(&f), ==, 0);
    /* erasure takes the record: a new person with the same id starts knowing nothing */
    sl_stitch_erase_t er;
    erase_run(&f, &er, "user_id", "cu");
    sl_stitch_erase_free(&er);
    track_ctx(&f, "cu", NULL, "Again", 6000, NULL);
    CHECK_INT(consent_ok(&f, "user_id", "cu", "marketing", &why), ==, 0);
    CHECK_STR(why, "consent");
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

static int pruned_flag;
static void prune_done(sl_stage_job_t *job)
{
    (void)job;
    pruned_flag = 1;
}

/* Runs pruning until it has read everything the stage applied. */
static void prune_all(fix_t *f, sl_stitch_prune_t *p, uint64_t *pruned, uint64_t *gone)
{
    *pruned = *gone = 0;
    for (int i = 0; i < 100; i++) {
        pruned_flag = 0;
        p->upto = sl_stage_applied(f->stage);
        p->limit = 2; /* small runs: the cursor must carry over */
        CHECK_INT(sl_stage_submit(f->stage, &p->job), ==, 0);
        while (!pruned_flag) uv_run(&f->loop, UV_RUN_ONCE);
        CHECK_INT(p->job.rc, ==, 0);
        *pruned += p->pruned;
        *gone += p->persons_gone;
        if (!p->more) return;
    }
    CHECK(!"pruning never reached the end");
}

TEST(stitch_retention_prunes_and_restarts)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    int64_t day = 86400000, now = sl_now_ms();
    f.cfg.anonymous_retention_ms = 395 * day;
    f.cfg.sources[f.cfg.n_sources - 1].retention_ms = 760 * day; /* backend, the source of msg() */
    CHECK_INT(sl_stitch_prune_interval_ms(f.stitch), ==, 3600000);
    msg(&f, SL_STITCH_TRACK, "old", NULL, NULL, now - 800 * day);   /* past the source's retention */
    msg(&f, SL_STITCH_PAGE, "old", NULL, NULL, now - 700 * day);    /* kept */
    msg(&f, SL_STITCH_PAGE, NULL, "gone", NULL, now - 400 * day);   /* anonymous, past 395 d: the person goes */
    msg(&f, SL_STITCH_PAGE, NULL, "half", NULL, now - 400 * day);   /* anonymous, pruned ... */
    msg(&f, SL_STITCH_PAGE, NULL, "half", NULL, now - 10 * day);    /* ... but this one stays, and the person */
    msg(&f, SL_STITCH_PAGE, NULL, "later", NULL, now - 400 * day);  /* identified since: kept */
    msg(&f, SL_STITCH_IDENTIFY, "u-later", "later", NULL, now);
    sl_stitch_prune_t p;
    sl_stitch_prune_init(&p, f.stitch, prune_done);
    uint64_t pruned, gone;
    prune_all(&f, &p, &pruned, &gone);
    CHECK_INT(pruned, ==, 3);
    CHECK_INT(gone, ==, 1);
    uint64_t n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 4);
    char a[32];
    CHECK_STR(person_of(&f, "anonymous_id", "gone", a), "(none)");
    cJSON *pr = get(&f, 0, "user_id", "old");
    CHECK_INT(num(pr, "counters", "events"), ==, 1);
    cJSON_Delete(pr);
    pr = get(&f, 0, "anonymous_id", "half");
    CHECK_INT(num(pr, "counters", "events"), ==, 1);
    cJSON_Delete(pr);
    pr = get(&f, 0, "user_id", "u-later");
    CHECK_INT(num(pr, "counters", "events"), ==, 2);
    cJSON_Delete(pr);
    CHECK_INT(verify_problems(&f), ==, 0);
    /* a second pass finds nothing more; a restart finishes the last run's record */
    prune_all(&f, &p, &pruned, &gone);
    CHECK_INT(pruned, ==, 0);
    sl_stitch_prune_free(&p);
    fix_close_store(&f);
    CHECK_INT(fix_open(&f), ==, 0);
    CHECK_INT(verify_problems(&f), ==, 0);
    n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 4);
    fix_free(&f);
}

TEST(stitch_verify_finds_damage)
{
    const char *dbs[] = {"tl", "ids", "persons", "active"};
    for (int i = 0; i < 4; i++) {
        fix_t f;
        if (fix_init(&f)) { CHECK(!"fixture"); return; }
        msg(&f, SL_STITCH_PAGE, NULL, "v1", NULL, 1000);
        msg(&f, SL_STITCH_IDENTIFY, "vu", "v1", "v@example.com", 2000);
        msg(&f, SL_STITCH_PAGE, NULL, "v2", NULL, 3000);
        CHECK_INT(verify_problems(&f), ==, 0); /* a sound store */
        if (verify_problems(&f)) {
            verify_req_t q = {.f = &f, .out = stderr};
            sl_stage_read(f.stage, 1, verify_cb, &q);
        }
        fix_close_store(&f);
        drop_first(&f, dbs[i]);
        CHECK_INT(fix_open(&f), ==, 0);
        if (verify_problems(&f) == 0) fprintf(stderr, "  damage to %s not found\n", dbs[i]);
        CHECK_INT(verify_problems(&f), >, 0);
        fix_free(&f);
    }
}

/* A page of the journal of kind/id: limit entries before the cursor. */
static cJSON *get_merges(fix_t *f, const char *kind, const char *id, size_t limit, const char *before, int *rc)
{
    read_t r = {.s = f->stitch, .kind = kind, .id = id, .which = 2, .limit = limit, .before = before};
    CHECK_INT(sl_stage_read(f->stage, 1, read_cb, &r), ==, 0);
    *rc = r.rc;
    cJSON *doc = r.rc == 0 ? cJSON_ParseWithLength(r.out.data, r.out.len) : NULL;
    sl_buf_free(&r.out);
    return doc;
}

static const cJSON *first_refusal(const cJSON *j)
{
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "refused"), 0);
}

/* Issue 21, M4: refusals against one person coalesce into one entry per
 * reason, counted, whoever claims its identifiers. */
TEST(stitch_refusals_coalesce)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    f.untrusted = 1;
    msg(&f, SL_STITCH_IDENTIFY, "victim", "va", "victim@example.com", 1000);
    char user[32];
    for (int i = 0; i < 150; i++) {
        snprintf(user, sizeof(user), "att-%d", i);
        msg(&f, SL_STITCH_ALIAS, user, NULL, "victim", 2000 + i);
    }
    /* the same claim again counts no more (a shared device's every event) */
    msg(&f, SL_STITCH_ALIAS, "att-0", NULL, "victim", 3000);
    /* another reason: the victim's e-mail claimed by another user */
    msg(&f, SL_STITCH_IDENTIFY, "att-1", NULL, "victim@example.com", 3001);
    int rc;
    cJSON *j = get_merges(&f, "user_id", "victim", 0, NULL, &rc);
    REQUIRE(rc == 0 && j);
    const cJSON *refused = cJSON_GetObjectItemCaseSensitive(j, "refused");
    CHECK_INT(cJSON_GetArraySize(refused), ==, 2);
    const cJSON *e;
    int alias = 0, trait = 0;
    cJSON_ArrayForEach(e, refused) {
        const char *reason = cJSON_GetObjectItemCaseSensitive(e, "reason")->valuestring;
        if (strncmp(reason, "alias", 5) == 0) {
            alias = 1;
            CHECK_INT(num(e, "count", NULL), ==, 150);
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "messageId")), "m151"); /* the latest */
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(e, "identifier"), "id")), "victim");
            const char *first = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "first_at"));
            const char *last = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "last_at"));
            CHECK(first && last && strcmp(first, last) <= 0);
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "at")), last);
        } else {
            trait = 1;
            CHECK_INT(num(e, "count", NULL), ==, 1);
        }
    }
    CHECK(alias && trait);
    cJSON_Delete(j);
    /* each claimant sees the refusal of its claim */
    CHECK_INT(count_journal(&f, "user_id", "att-7", "refused"), ==, 1);
    sl_stitch_stats_t st;
    sl_stitch_get_stats(f.stitch, &st);
    CHECK_INT(st.refusals, ==, 151);
    CHECK_INT(st.refusals_dropped, ==, 0);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* Issue 21, M4: at most SL_STITCH_MAX_REFUSALS refusal entries per person,
 * the oldest dropped and counted; the journal comes a page at a time. */
TEST(stitch_refusals_bounded_and_paged)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    f.untrusted = 1;
    char user[32];
    for (int i = 0; i < SL_STITCH_MAX_REFUSALS + 20; i++) {
        snprintf(user, sizeof(user), "owner-%d", i);
        msg(&f, SL_STITCH_IDENTIFY, user, NULL, NULL, 1000 + i);
    }
    /* one user claims the ids of 120 others: its journal is the one that grows */
    for (int i = 0; i < SL_STITCH_MAX_REFUSALS + 20; i++) {
        snprintf(user, sizeof(user), "owner-%d", i);
        msg(&f, SL_STITCH_ALIAS, "claimer", NULL, user, 2000 + i);
    }
    sl_stitch_stats_t st;
    sl_stitch_get_stats(f.stitch, &st);
    CHECK_INT(st.refusals, ==, SL_STITCH_MAX_REFUSALS + 20);
    CHECK_INT(st.refusals_dropped, ==, 20);
    /* the owners keep their own entries */
    CHECK_INT(count_journal(&f, "user_id", "owner-0", "refused"), ==, 1);
    /* pages of 30, newest first, until next is null */
    int rc, pages = 0, total = 0;
    char cursor[32] = "";
    const char *want_first = "owner-119";
    for (;;) {
        cJSON *j = get_merges(&f, "user_id", "claimer", 30, cursor[0] ? cursor : NULL, &rc);
        REQUIRE(rc == 0 && j);
        const cJSON *refused = cJSON_GetObjectItemCaseSensitive(j, "refused");
        CHECK_INT(cJSON_GetArraySize(refused), <=, 30);
        if (pages == 0)
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(first_refusal(j), "identifier"), "id")), want_first);
        total += cJSON_GetArraySize(refused);
        pages++;
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(j, "next");
        if (!cJSON_IsString(next)) {
            const cJSON *oldest = cJSON_GetArrayItem(refused, cJSON_GetArraySize(refused) - 1);
            /* the 20 oldest claims went */
            CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(oldest, "identifier"), "id")), "owner-20");
            cJSON_Delete(j);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", next->valuestring);
        cJSON_Delete(j);
        REQUIRE(pages < 10);
    }
    CHECK_INT(total, ==, SL_STITCH_MAX_REFUSALS);
    CHECK_INT(pages, ==, 4);
    /* a cursor that is not one */
    static const char *const bad[] = {"x", "-1", "0", "12a", "+5", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cJSON_Delete(get_merges(&f, "user_id", "claimer", 30, bad[i], &rc));
        CHECK_INT(rc, ==, SL_EINVAL);
    }
    fix_free(&f);
}

/* A user with many merges: what the public key can build (one merge per
 * anonymousId it identifies with), and owners of e-mails it then claims. */
static void many_merges_then_owners(fix_t *f, int merges, int owners)
{
    char anon[32], user[32], email[48];
    f->no_wait = 1;
    for (int i = 0; i < merges; i++) {
        snprintf(anon, sizeof(anon), "mm-a%d", i);
        msg(f, SL_STITCH_PAGE, NULL, anon, NULL, 1000 + i);
        msg(f, SL_STITCH_IDENTIFY, "mm-u", anon, NULL, 1000 + i);
    }
    for (int i = 0; i < owners; i++) {
        snprintf(user, sizeof(user), "mm-v%d", i);
        snprintf(email, sizeof(email), "mm-e%d@x.com", i);
        msg(f, SL_STITCH_IDENTIFY, user, NULL, email, 5000 + i);
    }
    f->no_wait = 0;
    msg(f, SL_STITCH_PAGE, NULL, "mm-sync", NULL, 6000); /* waits for the stage */
}

/* mm-u claims the e-mails of owners [from, to): one refusal each. */
static void claim_emails(fix_t *f, int from, int to)
{
    char email[48];
    f->no_wait = 1;
    for (int i = from; i < to; i++) {
        snprintf(email, sizeof(email), "mm-e%d@x.com", i);
        msg(f, SL_STITCH_IDENTIFY, "mm-u", NULL, email, 7000 + i);
    }
    f->no_wait = 0;
    msg(f, SL_STITCH_PAGE, NULL, "mm-sync", NULL, 8000);
}

/* Review N1: keeping a person's refusal bound reads its refusal references,
 * not its merges. A claimant with 400 merges (its journal is 400 entries
 * long) refused 150 times: each refusal reads at most the bound's worth of
 * references for the claimant and one for the owner; reading the whole
 * journal each time was 400+ per refusal. */
TEST(stitch_refusal_bound_reads_refusals_only)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    f.untrusted = 1;
    const int merges = 400, claims = SL_STITCH_MAX_REFUSALS + 50;
    many_merges_then_owners(&f, merges, claims);
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "merge"), ==, merges - 1);
    sl_stitch_stats_t st0, st;
    sl_stitch_get_stats(f.stitch, &st0);
    claim_emails(&f, 0, claims);
    sl_stitch_get_stats(f.stitch, &st);
    CHECK_INT(st.refusals - st0.refusals, ==, claims);
    CHECK_INT(st.refusals_dropped - st0.refusals_dropped, ==, claims - SL_STITCH_MAX_REFUSALS);
    uint64_t read = st.refusal_refs_read - st0.refusal_refs_read;
    CHECK_INT(read, >=, claims); /* the counter counts */
    CHECK_INT(read, <=, (uint64_t)claims * (SL_STITCH_MAX_REFUSALS + 2));
    /* the journal still holds every merge and the newest refusals */
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "merge"), ==, merges - 1);
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "refused"), ==, SL_STITCH_MAX_REFUSALS);
    CHECK_INT(count_journal(&f, "user_id", "mm-v0", "refused"), ==, 1); /* the owners keep theirs */
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* Rewrites every person record of the derived store (closed) as records
 * were before they said where their entry in active is: that goes to actof,
 * the record's two words are zero. The number of records rewritten. */
static int records_before_active_here(fix_t *f)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi persons, actof;
    MDB_cursor *cur;
    MDB_val k, v;
    int n = 0;
    txn = fix_raw_begin(f, &env);
    CHECK_INT(mdb_dbi_open(txn, "persons", MDB_INTEGERKEY, &persons), ==, 0);
    CHECK_INT(mdb_dbi_open(txn, "actof", MDB_INTEGERKEY, &actof), ==, 0);
    CHECK_INT(mdb_cursor_open(txn, persons, &cur), ==, 0);
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        unsigned char rec[4096];
        if (v.mv_size < 24 || v.mv_size > sizeof(rec)) {
            CHECK(!"a person record of an unexpected size");
            break;
        }
        memcpy(rec, v.mv_data, v.mv_size);
        uint64_t flags;
        memcpy(&flags, rec + 16, 8); /* version, n_ids, active_ms, flags */
        CHECK_INT(flags, ==, 3);     /* written by this version: here, and active */
        MDB_val av = {8, rec + 8}, nv = {v.mv_size, rec};
        CHECK_INT(mdb_put(txn, actof, &k, &av, 0), ==, 0);
        memset(rec + 8, 0, 16);
        CHECK_INT(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), ==, 0);
        n++;
    }
    mdb_cursor_close(cur);
    CHECK_INT(mdb_txn_commit(txn), ==, 0);
    mdb_env_close(env);
    return n;
}

/* The ids of the recent-activity listing, newest first, as "p_1,p_2". */
static void recent_ids(fix_t *f, char *out, size_t cap)
{
    read_t r = {.s = f->stitch, .which = 3};
    CHECK_INT(sl_stage_read(f->stage, 1, read_cb, &r), ==, 0);
    CHECK_INT(r.rc, ==, 0);
    cJSON *doc = cJSON_ParseWithLength(r.out.data, r.out.len), *p;
    out[0] = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(doc, "profiles")) {
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%s", len ? "," : "", cJSON_GetObjectItemCaseSensitive(p, "id")->valuestring);
    }
    cJSON_Delete(doc);
    sl_buf_free(&r.out);
}

/* A person's place in the recent-activity index is read from its record
 * (an event reads no other record to know whether it moves); records
 * written before kept it in actof: each says it once touched, and the
 * listing, merges and erasure keep working across the upgrade. */
TEST(stitch_active_from_records_before)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    int64_t t = 1700000000000;
    msg(&f, SL_STITCH_PAGE, NULL, "ra", NULL, t);
    msg(&f, SL_STITCH_PAGE, NULL, "rb", NULL, t + 1000);
    msg(&f, SL_STITCH_PAGE, NULL, "rc", NULL, t + 2000);
    char a[32], b[32], c[32], want[128], got[128];
    person_of(&f, "anonymous_id", "ra", a);
    person_of(&f, "anonymous_id", "rb", b);
    person_of(&f, "anonymous_id", "rc", c);
    snprintf(want, sizeof(want), "%s,%s,%s", c, b, a);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, want);
    CHECK_INT(db_entries(&f, "actof"), ==, 0); /* nothing kept there any more */
    fix_close_store(&f);
    CHECK_INT(records_before_active_here(&f), ==, 3);
    REQUIRE(fix_open(&f) == 0);
    CHECK_INT(db_entries(&f, "actof"), ==, 3);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, want);
    CHECK_INT(verify_problems(&f), ==, 0);
    /* ra, a minute later: moves to the front, its place now in its record */
    msg(&f, SL_STITCH_PAGE, NULL, "ra", NULL, t + 120000);
    snprintf(want, sizeof(want), "%s,%s,%s", a, c, b);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, want);
    /* rb logs in as rc's user: rb's person is merged into rc's, which keeps the later place */
    msg(&f, SL_STITCH_IDENTIFY, "ru", "rc", NULL, t + 3000);
    msg(&f, SL_STITCH_IDENTIFY, "ru", "rb", NULL, t + 4000);
    CHECK_SAME(person_of(&f, "anonymous_id", "rb", got), c);
    snprintf(want, sizeof(want), "%s,%s", a, c);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, want);
    /* ra's erasure takes its entry */
    sl_stitch_erase_t er;
    erase_run(&f, &er, "anonymous_id", "ra");
    sl_stitch_erase_free(&er);
    recent_ids(&f, got, sizeof(got));
    CHECK_STR(got, c);
    CHECK_INT(verify_problems(&f), ==, 0);
    CHECK_INT(db_entries(&f, "actof"), ==, 0); /* every record touched says it now */
    fix_free(&f);
}

/* Review N1: a store written before refusal references were kept apart
 * (no "prefusals") gets them from the journal at open: the bound still
 * counts the refusals made before the upgrade. */
TEST(stitch_refusal_refs_migrated_at_open)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    f.untrusted = 1;
    many_merges_then_owners(&f, 20, SL_STITCH_MAX_REFUSALS + 10);
    claim_emails(&f, 0, SL_STITCH_MAX_REFUSALS);
    fix_close_store(&f);
    drop_db(&f, "prefusals");
    REQUIRE(fix_open(&f) == 0);
    claim_emails(&f, SL_STITCH_MAX_REFUSALS, SL_STITCH_MAX_REFUSALS + 10);
    sl_stitch_stats_t st;
    sl_stitch_get_stats(f.stitch, &st);
    CHECK_INT(st.refusals_dropped, ==, 10); /* the 10 oldest, made before the reopening */
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "refused"), ==, SL_STITCH_MAX_REFUSALS);
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "merge"), ==, 19);
    /* an erased owner's entry goes from the claimant's journal too */
    sl_stitch_erase_t er;
    erase_run(&f, &er, "user_id", "mm-v50");
    sl_stitch_erase_free(&er);
    CHECK_INT(count_journal(&f, "user_id", "mm-u", "refused"), ==, SL_STITCH_MAX_REFUSALS - 1);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* Issue 21, L2: an identify whose userId and anonymousId are junk or
 * unkeyable still names someone by its e-mail: a person of its own, found
 * and erased by that e-mail, and joined by its owner later. */
TEST(stitch_junk_ids_with_email_are_erasable)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    msg(&f, SL_STITCH_PAGE, NULL, "bystander", NULL, 500);
    msg(&f, SL_STITCH_IDENTIFY, "undefined", NULL, "junk@x.com", 1000);
    msg(&f, SL_STITCH_IDENTIFY, "0", "a\x1f" "c", " JUNK@x.com", 1001); /* unkeyable anonymousId */
    msg(&f, SL_STITCH_IDENTIFY, "null", "null", "other@x.com", 1002);
    char a[32], b[32];
    CHECK(strcmp(person_of(&f, "email", "junk@x.com", a), "(none)") != 0);
    CHECK(strcmp(a, person_of(&f, "email", "other@x.com", b)) != 0);
    cJSON *p = get(&f, 0, "email", "junk@x.com");
    CHECK_INT(num(p, "counters", "events"), ==, 2);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(p, "user_id")));
    cJSON_Delete(p);
    CHECK_INT(verify_problems(&f), ==, 0);

    sl_stitch_erase_t er;
    erase_run(&f, &er, "email", "junk@x.com");
    CHECK_INT(er.found, ==, 1);
    CHECK_INT(er.events, ==, 2);
    sl_stitch_erase_free(&er);
    uint64_t n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 2); /* the bystander's page and other@x.com's identify */
    CHECK_STR(person_of(&f, "email", "junk@x.com", a), "(none)");

    /* the e-mail's owner identifies later: the person made for it joins the user */
    msg(&f, SL_STITCH_IDENTIFY, "owner", "o1", "other@x.com", 2000);
    CHECK_SAME(person_of(&f, "email", "other@x.com", a), person_of(&f, "user_id", "owner", b));
    p = get(&f, 0, "user_id", "owner");
    CHECK_INT(num(p, "counters", "events"), ==, 2);
    cJSON_Delete(p);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* Issue 21, L4: a person with more events than one slice of the log's
 * erasure still loses them all, and the erasure is reported done once they
 * are gone. */
TEST(stitch_erasure_in_slices)
{
    fix_t f;
    if (fix_init(&f)) { CHECK(!"fixture"); return; }
    const int n = SL_STORE_ERASE_SLICE * 2 + 7;
    sl_buf_t b = {0};
    for (int i = 0; i < n; i++) {
        char mid[32];
        snprintf(mid, sizeof(mid), "big-%d", i);
        b.len = 0;
        sl_buf_printf(&b, "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"%s\",\"userId\":\"big\","
                          "\"timestamp\":\"2026-01-01T00:00:00.000Z\",\"context\":{\"sillage\":{\"source\":\"backend\"}}}",
                      mid);
        if (i < n - 1) put_durable(&f, b.data, 1000, mid);
        else put(&f, b.data, 1000, mid);
    }
    sl_buf_free(&b);
    msg(&f, SL_STITCH_PAGE, NULL, "small", NULL, 1000);
    sl_stitch_erase_t er;
    erase_run(&f, &er, "user_id", "big");
    CHECK_INT(er.events, ==, n);
    sl_stitch_erase_free(&er);
    uint64_t n_events = 0;
    CHECK_INT(sl_store_foreach_event(f.store, count_event, &n_events), ==, 0);
    CHECK_INT(n_events, ==, 1);
    CHECK_INT(verify_problems(&f), ==, 0);
    fix_free(&f);
}

/* ---- the stage's seams (issue 22, item 6) ---------------------------------- */

/* ---- person attachments (sl_stitch.h) ---- */

/* A step of a later phase that counts each person's events in its
 * attachment, and joins an absorbed person's count into the survivor's
 * within the event, as fields/ does with its states. */
typedef struct {
    sl_stitch_t *s;
    int errors;
} tally_t;

static uint32_t tally_read(sl_stitch_t *s, MDB_txn *txn, uint64_t person, int step, int *rc)
{
    MDB_val v;
    *rc = step ? sl_stitch_attach_step_get(s, txn, person, SL_ATTACH_AUDIENCES, &v)
               : sl_stitch_attach_get(s, txn, person, SL_ATTACH_AUDIENCES, &v);
    uint32_t n = 0;
    if (*rc == 0 && v.mv_size == 4) memcpy(&n, v.mv_data, 4);
    else if (*rc == 0 && v.mv_size != 0) *rc = MDB_CORRUPTED;
    return n;
}

static int tally_apply(void *arg, MDB_txn *txn, const sl_stage_event_t *ev)
{
    tally_t *t = arg;
    const sl_stage_ctx_t *x = ev->ctx;
    int rc = 0;
    for (size_t i = 0; i < x->n_merges && rc == 0; i++) {
        uint32_t a = tally_read(t->s, txn, x->merge_absorbed[i], 1, &rc);
        uint32_t sv = rc ? 0 : tally_read(t->s, txn, x->merge_survivor[i], 1, &rc);
        uint32_t sum = a + sv;
        if (rc == 0) rc = sl_stitch_attach_put(t->s, txn, x->merge_survivor[i], SL_ATTACH_AUDIENCES, &sum, 4);
    }
    if (rc == 0 && x->entity.kind == SL_ENTITY_PERSON) {
        uint32_t n = tally_read(t->s, txn, x->entity.id, 1, &rc) + 1;
        if (rc == 0) rc = sl_stitch_attach_put(t->s, txn, x->entity.id, SL_ATTACH_AUDIENCES, &n, 4);
    }
    if (rc) t->errors++;
    return rc;
}

typedef struct {
    sl_stitch_t *s;
    uint64_t person;
    uint32_t n;
    int rc;
    uint64_t persons, total;
} tally_q_t;

static int tally_one(uint64_t person, const MDB_val *v, void *arg)
{
    tally_q_t *q = arg;
    uint32_t n = 0;
    if (v->mv_size == 4) memcpy(&n, v->mv_data, 4);
    q->persons++;
    q->total += n;
    (void)person;
    return v->mv_size == 0 || v->mv_size == 4 ? 0 : MDB_CORRUPTED;
}

static int tally_q(MDB_txn *txn, MDB_txn *log_txn, void *arg)
{
    (void)log_txn;
    tally_q_t *q = arg;
    int rc = sl_stitch_find(q->s, txn, "user_id", "ann", &q->person);
    if (rc == 0) q->n = tally_read(q->s, txn, q->person, 0, &q->rc);
    if (rc == 0) rc = sl_stitch_attach_each(q->s, txn, SL_ATTACH_AUDIENCES, tally_one, q);
    return rc;
}

/* A later phase's bytes ride in the person record: they survive the
 * stitcher's own rewrites of the record (traits), an absorbed person's are
 * found under its id for the rest of the event, so a merge joins them, and
 * they go with the record on erasure. */
TEST(stitch_attachments_follow_merges_and_erasure)
{
    tally_t t = {0};
    sl_stage_step_t step = {.name = "tally", .arg = &t, .apply = tally_apply, .phase = SL_PHASE_FIELDS};
    fix_t f;
    REQUIRE(fix_init_with(&f, &step, 0) == 0);
    t.s = f.stitch;
    msg(&f, SL_STITCH_PAGE, NULL, "at-a", NULL, 1000);
    msg(&f, SL_STITCH_PAGE, NULL, "at-a", NULL, 1001);
    msg(&f, SL_STITCH_PAGE, NULL, "at-b", NULL, 1002);
    msg(&f, SL_STITCH_IDENTIFY, "ann", "at-c", "ann@example.com", 1003);   /* the user, with a trait */
    msg(&f, SL_STITCH_IDENTIFY, "ann", "at-a", NULL, 1004);                /* absorbs at-a (2) */
    msg(&f, SL_STITCH_IDENTIFY, NULL, "at-b", "ann@example.com", 1005);    /* at-b (1) joins by e-mail */
    msg_traits(&f, SL_STITCH_IDENTIFY, "ann", "at-c", NULL, 1006, "{\"plan\":\"pro\"}");
    CHECK_INT(t.errors, ==, 0);
    tally_q_t q = {.s = f.stitch};
    CHECK_INT(sl_stage_read(f.stage, 0, tally_q, &q), ==, 0);
    CHECK_INT(q.rc, ==, 0);
    CHECK_INT(q.n, ==, 7);            /* every event, through both merges */
    CHECK_INT(q.persons, ==, 1);      /* the absorbed records are gone */
    CHECK_INT(q.total, ==, 7);
    cJSON *p = get(&f, 0, "user_id", "ann");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(p, "traits"), "plan")), "pro");
    cJSON_Delete(p);
    CHECK_INT(verify_problems(&f), ==, 0);
    /* a restart reads them back */
    fix_close_store(&f);
    fix_extra_step = &step;
    CHECK_INT(fix_open(&f), ==, 0);
    fix_extra_step = NULL;
    t.s = f.stitch;
    msg(&f, SL_STITCH_TRACK, "ann", NULL, NULL, 1007);
    q = (tally_q_t){.s = f.stitch};
    CHECK_INT(sl_stage_read(f.stage, 0, tally_q, &q), ==, 0);
    CHECK_INT(q.n, ==, 8);
    sl_stitch_erase_t er;
    erase_run(&f, &er, "user_id", "ann");
    CHECK_INT(er.found, ==, 1);
    sl_stitch_erase_free(&er);
    q = (tally_q_t){.s = f.stitch};
    CHECK_INT(sl_stage_read(f.stage, 0, tally_q, &q), ==, SL_ENOTFOUND);
    CHECK_INT(q.total, ==, 0);
    fix_free(&f);
}
