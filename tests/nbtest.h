/* A minimal test harness shared by the suite: checks count and report, each test program returns
 * non-zero when any check failed (one meson test per area). */
#ifndef NBTEST_H
#define NBTEST_H

#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

static int nbt_checks = 0, nbt_failures = 0;

#define NBT_FAIL(...)                                                                                  \
    do {                                                                                               \
        nbt_failures++;                                                                                \
        fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);                                          \
        fprintf(stderr, __VA_ARGS__);                                                                  \
        fprintf(stderr, "\n");                                                                         \
    } while (0)

/* A condition that must hold. */
#define CHECK(cond, ...)                                                                               \
    do {                                                                                               \
        nbt_checks++;                                                                                  \
        if (!(cond)) NBT_FAIL(__VA_ARGS__);                                                            \
    } while (0)

/* |a - b| <= atol + rtol |b| */
#define CHECK_CLOSE(a, b, rtol, atol)                                                                  \
    do {                                                                                               \
        double nbt_a = (a), nbt_b = (b);                                                               \
        nbt_checks++;                                                                                  \
        if (!(fabs(nbt_a - nbt_b) <= (atol) + (rtol) * fabs(nbt_b)))                                   \
            NBT_FAIL("%s = %.17g, expected %s = %.17g", #a, nbt_a, #b, nbt_b);                         \
    } while (0)

/* expr must fail (NULL result, or a non-NB_OK status: pass `ok` as 1 when expr's value says success)
 * with error `code` and a message containing `needle`; the error is cleared afterwards. */
#define CHECK_ERROR(failed, code, needle)                                                              \
    do {                                                                                               \
        nb_error_clear();                                                                              \
        int nbt_failed = (failed);                                                                     \
        nbt_checks++;                                                                                  \
        if (!nbt_failed)                                                                               \
            NBT_FAIL("%s: expected a failure", #failed);                                               \
        else if (nb_error_code() != (code))                                                            \
            NBT_FAIL("%s: error %s, expected %s (%s)", #failed, nb_status_name(nb_error_code()),       \
                     nb_status_name(code), nb_error_message());                                        \
        else if (!strstr(nb_error_message(), (needle)))                                                \
            NBT_FAIL("%s: message \"%s\" lacks \"%s\"", #failed, nb_error_message(), (needle));        \
        nb_error_clear();                                                                              \
    } while (0)

/* No error recorded so far (then clears nothing). */
#define CHECK_NO_ERROR()                                                                               \
    do {                                                                                               \
        nbt_checks++;                                                                                  \
        if (nb_error_code() != NB_OK) {                                                                \
            NBT_FAIL("unexpected error: %s", nb_error_message());                                      \
            nb_error_clear();                                                                          \
        }                                                                                              \
    } while (0)

static inline int nbt_report(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, nbt_checks, nbt_failures);
    return nbt_failures ? 1 : 0;
}

#endif
