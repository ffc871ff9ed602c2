/* test.h - a tiny test harness in the manner of libuv's test/task.h:
 * assertions survive NDEBUG and print both sides. */
#ifndef SL_TEST_H
#define SL_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

extern int test_failures;

#define CHECK(cond) do { \
    if (!(cond)) { \
        fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
        test_failures++; \
    } } while (0)

/* A precondition: when it fails, the test stops here (the rest would only
 * report what follows from it, or crash). */
#define REQUIRE(cond) do { \
    if (!(cond)) { \
        fprintf(stderr, "  %s:%d: REQUIRE(%s) failed: test stopped\n", __FILE__, __LINE__, #cond); \
        test_failures++; \
        return; \
    } } while (0)

#define CHECK_INT(a, op, b) do { \
    long long a_ = (long long)(a), b_ = (long long)(b); \
    if (!(a_ op b_)) { \
        fprintf(stderr, "  %s:%d: %s %s %s failed: %lld vs %lld\n", __FILE__, __LINE__, \
                #a, #op, #b, a_, b_); \
        test_failures++; \
    } } while (0)

#define CHECK_STR(a, b) do { \
    const char *a_ = (a), *b_ = (b); \
    if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) { \
        fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" vs \"%s\"\n", __FILE__, __LINE__, \
                #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
        test_failures++; \
    } } while (0)

#define CHECK_NULL(a) do { \
    const void *a_ = (a); \
    if (a_ != NULL) { \
        fprintf(stderr, "  %s:%d: %s should be NULL\n", __FILE__, __LINE__, #a); \
        test_failures++; \
    } } while (0)

typedef struct test_case_s {
    const char *name;
    void (*fn)(void);
} test_case_t;

#define TEST(name) void test_##name(void)

#endif
