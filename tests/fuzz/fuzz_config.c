/* fuzz_config.c - the config parser: any input is either a config or one
 * clear error, never a crash or a leak. */
#include <stdlib.h>
#include <string.h>

#include "sl_audiences.h"
#include "sl_config.h"
#include "sl_triggers.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return sl_fields_config_register() || sl_trig_config_register() || sl_aud_config_register() ? 1 : 0; /* the "triggers" section, as the command line does */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sl_config_t cfg;
    char err[512];
    err[0] = '\0';
    int rc = sl_config_parse(&cfg, (const char *)data, size, err, sizeof(err));
    if (rc != 0 && err[0] == '\0') abort(); /* an error always explains itself */
    if (rc == 0) sl_config_free(&cfg);
    return 0;
}
