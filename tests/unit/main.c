/* main.c - runs every unit test; prints "N passed, N failed". */
#include "sl_audiences.h"
#include "test.h"
#include "tests.h"
#include "sl_common.h"
#include "sl_triggers.h"

#include <stdlib.h>

int test_failures;

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    sl_log_level = SL_LOG_ERROR;
    if (sl_fields_config_register() || sl_trig_config_register() || sl_aud_config_register()) return 1; /* the "triggers" section, as the command line does */
    for (size_t i = 0; i < sizeof(all_tests) / sizeof(*all_tests); i++) {
        if (argc > 1 && strstr(all_tests[i].name, argv[1]) == NULL) continue;
        int before = test_failures;
        all_tests[i].fn();
        if (test_failures == before) {
            passed++;
            printf("ok   %s\n", all_tests[i].name);
        } else {
            failed++;
            printf("FAIL %s\n", all_tests[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
