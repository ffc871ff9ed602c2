/* fuzz_ack.c - the two readers of an ingestion body (collector/ack.h) on the
 * same input must give the same result: refused or not, with which status,
 * error text and log line; which messages are stored, byte for byte, with
 * which messageId; which are rejected and why; the warnings. The tree-less
 * reader (ack_scan) is the server's; the tree reader (ack_tree) is the
 * reference it must match.
 *
 * The first two bytes of the input choose the request: its route (a single
 * message of each type, or the batch), its configuration (tight limits or
 * the defaults), a Basic key (none, known, unknown), a client address and a
 * GeoIP location or not. The rest is the body. UUIDs the server makes differ
 * between two runs: they are masked before comparing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ack.h"

static sl_config_t cfgs[2];
static cJSON *location;
static char *scratch[2];
static size_t scratch_len[2];

static void setup(void)
{
    static const char *const texts[2] = {
        "{\"listen\":\"127.0.0.1:0\",\"data_dir\":\"/tmp/x\",\"admin_token\":\"adm-0123456789abcdef\",\"sources\":["
        "{\"name\":\"web\",\"write_key\":\"wk1\"},{\"name\":\"serv\\\"er\\u00e9\",\"write_key\":\"k\\u00e92\"}],"
        "\"limits\":{\"max_message_bytes\":600,\"max_request_bytes\":1500,\"max_batch_messages\":6,"
        "\"max_json_depth\":6,\"max_traits_per_person\":3,\"max_traits_bytes\":256}}",
        "{\"listen\":\"127.0.0.1:0\",\"data_dir\":\"/tmp/x\",\"admin_token\":\"adm-0123456789abcdef\",\"sources\":["
        "{\"name\":\"web\",\"write_key\":\"wk1\"},{\"name\":\"app\",\"write_key\":\"k2\"}]}"};
    char err[256];
    for (int i = 0; i < 2; i++) {
        if (sl_config_parse(&cfgs[i], texts[i], strlen(texts[i]), err, sizeof(err))) {
            fprintf(stderr, "fuzz_ack: config %d: %s\n", i, err);
            abort();
        }
        scratch_len[i] = cfgs[i].limits.max_message_bytes + 4096;
        scratch[i] = malloc(scratch_len[i]);
    }
    location = cJSON_Parse("{\"country\":\"FR\",\"city\":\"Par\\\"is\\n\",\"latitude\":48.8566,\"longitude\":2.35,"
                           "\"big\":1e300}");
}

/* s with every UUID the server could have made replaced by "U" */
static char *masked(const char *s, size_t n)
{
    char *o = malloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        int uuid = n - i >= 36;
        for (size_t j = 0; uuid && j < 36; j++) {
            char c = s[i + j];
            if (j == 8 || j == 13 || j == 18 || j == 23) uuid = c == '-';
            else uuid = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        }
        if (uuid && s[i + 14] == '4') {
            o[k++] = 'U';
            i += 36;
        } else {
            o[k++] = s[i++];
        }
    }
    o[k] = '\0';
    return o;
}

static void same_text(const char *what, const char *a, size_t an, const char *b, size_t bn)
{
    char *ma = masked(a ? a : "", a ? an : 0), *mb = masked(b ? b : "", b ? bn : 0);
    if (strcmp(ma, mb) != 0) {
        fprintf(stderr, "fuzz_ack: %s differ\n  tree: %s\n  scan: %s\n", what, ma, mb);
        abort();
    }
    free(ma);
    free(mb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 3 || size > 1 << 16) return 0;
    unsigned a = data[0], b = data[1];
    int c = (a >> 3) & 1;
    ack_in_t in = {0};
    in.cfg = &cfgs[c];
    in.type = (int)(a % 8) - 1;
    if (in.type >= SL_MSG_NTYPES) in.type = -1;
    switch (b & 3) {
    case 1: in.basic = 1, in.basic_src = &cfgs[c].sources[1]; break;
    case 2: in.basic = 1, in.basic_why = "unknown write key"; break;
    default: break;
    }
    in.received_ms = 1700000000000LL + (b >> 4) * 7919;
    in.ip = b & 4 ? "203.0.113.0" : NULL;
    in.location = b & 8 ? location : NULL;
    in.scratch = scratch[c];
    in.scratch_len = scratch_len[c];
    const char *body = (const char *)data + 2;
    size_t len = size - 2;

    sl_arena_t ta, sa;
    sl_arena_init(&ta);
    sl_arena_init(&sa);
    ack_out_t t, s;
    in.arena = &ta;
    ack_tree(&in, body, len, &t);
    in.arena = &sa;
    ack_scan(&in, body, len, &s);
    if (getenv("FUZZ_ACK_VERBOSE")) /* which inputs the tree-less reader read itself */
        fprintf(stderr, "fuzz_ack: %s, status %d, %zu stored, %zu rejected\n", s.delegated ? "delegated" : "scanned",
                s.status, s.n_msgs, s.n_rejected);

    if (t.status != s.status || t.log != s.log || (t.status == 0 && t.src != s.src)) {
        fprintf(stderr, "fuzz_ack: status %d/%d log %d/%d src %p/%p\n", t.status, s.status, t.log, s.log,
                (const void *)t.src, (const void *)s.src);
        same_text("errors", t.error, t.error ? strlen(t.error) : 0, s.error, s.error ? strlen(s.error) : 0);
        abort();
    }
    if (t.status) {
        same_text("the refusal", t.error, strlen(t.error), s.error, strlen(s.error));
    } else {
        if (t.n_msgs != s.n_msgs || t.n_rejected != s.n_rejected || t.n_in_request != s.n_in_request ||
            t.stored_bytes != s.stored_bytes) {
            fprintf(stderr, "fuzz_ack: stored %zu/%zu rejected %zu/%zu in request %zu/%zu bytes %zu/%zu\n", t.n_msgs,
                    s.n_msgs, t.n_rejected, s.n_rejected, t.n_in_request, s.n_in_request, t.stored_bytes,
                    s.stored_bytes);
            same_text("rejections", t.errors.data, t.errors.len, s.errors.data, s.errors.len);
            for (size_t i = 0; i < t.n_msgs && i < s.n_msgs; i++)
                same_text("a stored message", t.msgs[i].json, t.msgs[i].json_len, s.msgs[i].json, s.msgs[i].json_len);
            abort();
        }
        for (size_t i = 0; i < t.n_msgs; i++) {
            same_text("a stored message", t.msgs[i].json, t.msgs[i].json_len, s.msgs[i].json, s.msgs[i].json_len);
            same_text("a messageId", t.mids[i], strlen(t.mids[i]), s.mids[i], strlen(s.mids[i]));
            if (t.msgs[i].received_ms != s.msgs[i].received_ms) abort();
        }
        same_text("rejections", t.errors.data, t.errors.len, s.errors.data, s.errors.len);
        same_text("warnings", t.warnings.data, t.warnings.len, s.warnings.data, s.warnings.len);
    }
    ack_out_free(&t);
    ack_out_free(&s);
    sl_arena_free(&ta);
    sl_arena_free(&sa);
    return 0;
}
