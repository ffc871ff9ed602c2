/* ident.c - see sl_stitch.h. */
#include "sl_stitch.h"

#include <string.h>
#include <strings.h>

int sl_ident_is_junk(const char *value, size_t len, char *const *junk, size_t n_junk)
{
    while (len > 0 && (*value == ' ' || *value == '\t')) value++, len--;
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t')) len--;
    if (len == 0) return 1;
    for (size_t i = 0; i < n_junk; i++)
        if (strlen(junk[i]) == len && strncasecmp(junk[i], value, len) == 0) return 1;
    return 0;
}
