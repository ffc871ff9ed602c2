/* fuzz_message.c - a request body as the ingestion path sees it: the
 * prescan (UTF-8, depth, NUL), the JSON parse, batch splitting, and each
 * message's validation and normalisation; the normalised message must print
 * back to JSON that parses, and a message without repeated members must
 * still have none once normalised (what is stored is read one way only).
 * The ack path's printer (sl_json_print) must print what cJSON prints, byte
 * for byte, and report a buffer one byte too small. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "sl_collector.h"

static void one(cJSON *m, int type)
{
    if (sl_json_dup_member(m, NULL)) return; /* refused by the server */
    sl_ingest_ctx_t ctx = {0};
    ctx.received_ms = 1700000000000;
    ctx.ip = "203.0.113.0";
    if (sl_msg_normalize(m, type, &ctx) == NULL) {
        char *txt = cJSON_PrintUnformatted(m);
        if (txt == NULL) abort();
        size_t n = strlen(txt), got;
        char *mine = malloc(n + 1);
        if (mine == NULL) abort();
        if (sl_json_print(m, mine, n + 1, &got) || got != n || memcmp(mine, txt, n + 1) != 0) abort();
        if (sl_json_print(m, mine, n, &got) != SL_ETOOBIG) abort();
        free(mine);
        cJSON *back = cJSON_Parse(txt);
        if (back == NULL) abort(); /* what is stored must be valid JSON */
        if (sl_json_dup_member(back, NULL)) abort();
        cJSON_Delete(back);
        cJSON_free(txt);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20) return 0;
    if (sl_json_prescan((const char *)data, size, 32) != NULL) return 0;
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    if (root == NULL) return 0;
    const cJSON *batch = cJSON_GetObjectItemCaseSensitive(root, "batch");
    if (cJSON_IsArray(batch)) {
        int n = 0;
        for (cJSON *m = batch->child; m && n < 2500; m = m->next, n++) one(m, -1);
    } else {
        one(root, size ? data[0] % 6 : 0);
    }
    cJSON_Delete(root);
    return 0;
}
