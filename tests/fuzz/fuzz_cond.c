/* fuzz_cond.c - the condition language (rules/sl_rules.h): compile and
 * evaluate. The input is two JSON texts one after the other, a condition
 * then an event (`{"field":"event","eq":"x"} {"event":"x"}`, the event's
 * bytes read as they are: they may be no JSON at all); the person is a
 * fixed view. Any input is a compiled condition or one clear error; an
 * evaluation answers 0 or 1, asks for the view at most once and only when
 * the condition reads the person; the canonical print compiles back to the
 * same text; a condition compiles for the event side alone exactly when it
 * reads no profile path. Differential: an event as the collector stores it
 * (cJSON's print) answers as the same event written otherwise (blanks and
 * newlines between tokens, '/' escaped). */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "sl_rules.h"

static const char VIEW[] =
    "{\"traits\":{\"email\":\"a@b.example\",\"plan\":\"pro\",\"age\":41,\"tags\":[\"vip\",\"beta\"],"
    "\"address\":{\"city\":\"Lyon\"}},\"identified\":true,\"first_seen\":\"2026-01-10T00:00:00Z\","
    "\"last_seen\":\"2026-11-29T08:00:00Z\",\"consent\":{\"email\":true,\"sms\":false},\"unsubscribed\":false}";
#define NOW_MS 1796083200000LL /* 2026-12-01T00:00:00Z */

static int calls;

static sl_jval_t get_view(void *arg)
{
    (void)arg;
    calls++;
    return sl_jroot(VIEW, sizeof(VIEW) - 1);
}

static int eval(const sl_cond_t *c, sl_jval_t event, int with_view)
{
    sl_rules_ctx_t ctx = {.event = event, .now_ms = NOW_MS, .profile = with_view ? get_view : NULL};
    calls = 0;
    int r = sl_rules_eval(c, &ctx);
    if (r != 0 && r != 1) abort();
    if (calls > 1 || (calls && !sl_rules_reads_profile(c))) abort();
    return r;
}

static void check_print(const sl_cond_t *c)
{
    sl_buf_t b = {0}, b2 = {0};
    sl_cond_t *c2 = NULL;
    char err[512];
    if (sl_rules_print(c, &b)) abort();
    cJSON *j = cJSON_Parse(b.data);
    if (j == NULL) abort(); /* the print is JSON */
    if (sl_rules_compile(j, SL_RULES_EVENT | SL_RULES_PROFILE, "print", &c2, err, sizeof(err))) abort();
    if (sl_rules_print(c2, &b2) || strcmp(b.data, b2.data) != 0) abort();
    if (sl_rules_reads_event(c2) != sl_rules_reads_event(c) || sl_rules_reads_profile(c2) != sl_rules_reads_profile(c))
        abort();
    sl_rules_free(c2);
    cJSON_Delete(j);
    sl_buf_free(&b);
    sl_buf_free(&b2);
}

/* text with every '/' written "\/" (a '/' is only ever inside a string) */
static char *escape_slashes(const char *text)
{
    size_t n = strlen(text), k = 0;
    char *out = malloc(2 * n + 1);
    if (out == NULL) abort();
    for (size_t i = 0; i < n; i++) {
        if (text[i] == '/') out[k++] = '\\';
        out[k++] = text[i];
    }
    out[k] = '\0';
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data, *end = NULL;
    cJSON *cond = cJSON_ParseWithLengthOpts(text, size, &end, 0);
    if (cond == NULL) return 0;
    size_t used = (size_t)(end - text);
    sl_jval_t event = sl_jroot(end, size - used);
    /* the event as the collector stores it (cJSON's print), and the same
     * written otherwise: blanks and newlines between tokens, "\/" for '/' */
    cJSON *tree = cJSON_ParseWithLength(end, size - used);
    char *stored = tree ? cJSON_PrintUnformatted(tree) : NULL, *pretty = tree ? cJSON_Print(tree) : NULL;
    char *other = pretty ? escape_slashes(pretty) : NULL;

    sl_cond_t *c = NULL, *ce = NULL, *cp = NULL;
    char err[512];
    err[0] = '\0';
    int rc = sl_rules_compile(cond, SL_RULES_EVENT | SL_RULES_PROFILE, "fuzz", &c, err, sizeof(err));
    if (rc != 0) {
        if (err[0] == '\0' || c != NULL) abort(); /* an error always explains itself */
        goto done;
    }
    /* one side only: refused exactly when the other side is read */
    err[0] = '\0';
    int rce = sl_rules_compile(cond, SL_RULES_EVENT, "fuzz.where", &ce, err, sizeof(err));
    if ((rce == 0) == sl_rules_reads_profile(c) || (rce && !strstr(err, "profile paths are not allowed"))) abort();
    err[0] = '\0';
    int rcp = sl_rules_compile(cond, SL_RULES_PROFILE, "fuzz.if", &cp, err, sizeof(err));
    if ((rcp == 0) == sl_rules_reads_event(c) || (rcp && !strstr(err, "event paths are not allowed"))) abort();

    int r = eval(c, event, 1);
    { /* the same through the index of its members, as the stage gives it */
        sl_jindex_t top;
        sl_jval_t ev2 = sl_jroot_index(end, size - used, &top, NULL, NULL);
        sl_rules_ctx_t ix = {.event = ev2, .event_top = &top, .now_ms = NOW_MS, .profile = get_view};
        if (sl_rules_eval(c, &ix) != r) abort();
    }
    if (eval(c, event, 1) != r) abort(); /* nothing carried over between evaluations */
    if (ce && eval(ce, event, 1) != r) abort();
    if (cp && eval(cp, event, 1) != r) abort();
    if (stored && other &&
        eval(c, sl_jroot(stored, strlen(stored)), 1) != eval(c, sl_jroot(other, strlen(other)), 1))
        abort();
    eval(c, (sl_jval_t){0}, 0);
    eval(c, event, 0);
    check_print(c);
done:
    sl_rules_free(c);
    sl_rules_free(ce);
    sl_rules_free(cp);
    cJSON_Delete(cond);
    cJSON_Delete(tree);
    free(stored);
    free(pretty);
    free(other);
    return 0;
}
