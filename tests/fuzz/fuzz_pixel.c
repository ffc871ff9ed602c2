/* fuzz_pixel.c - the pixel's query value: percent-decoding, then base64,
 * then the JSON it must hold. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "sl_collector.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536) return 0;
    char *s = malloc(size + 1);
    if (s == NULL) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    long n = sl_percent_decode(s, size);
    if (n >= 0) {
        if ((size_t)n > size) abort();
        unsigned char *out = malloc((size_t)n / 4 * 3 + 4);
        long m = out ? sl_base64_decode(s, (size_t)n, out) : -1;
        if (m > (long)((size_t)n / 4 * 3 + 3)) abort();
        if (m > 0 && sl_json_prescan((const char *)out, (size_t)m, 32) == NULL) cJSON_Delete(cJSON_ParseWithLength((const char *)out, (size_t)m));
        free(out);
    }
    free(s);
    return 0;
}
