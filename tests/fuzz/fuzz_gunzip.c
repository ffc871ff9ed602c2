/* fuzz_gunzip.c - gzip/deflate bodies: the output never exceeds its bound. */
#include <stdlib.h>

#include "sl_collector.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *out = NULL;
    size_t n = 0;
    if (sl_gunzip((const char *)data, size, 4096, &out, &n) == 0 && n > 4096) abort();
    free(out);
    return 0;
}
