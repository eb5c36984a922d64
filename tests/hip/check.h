/* What the HIP test programs share: EXPECT(cond, fmt, ...) counts a failure and goes
 * on, CHECK(call) stops the program at a call that does not return hipSuccess. Define
 * TEST_NAME before including it. */
#ifndef XPUPOOL_HIP_CHECK_H
#define XPUPOOL_HIP_CHECK_H
#include <hip/hip_runtime_api.h>
#include <stdio.h>

static int failures = 0;
#define EXPECT(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "FAIL " TEST_NAME ": " __VA_ARGS__);            \
            fprintf(stderr, " (%s, line %d)\n", #cond, __LINE__);           \
            failures++;                                                     \
        }                                                                   \
    } while (0)
#define CHECK(call)                                                         \
    do {                                                                    \
        hipError_t e_ = (call);                                             \
        if (e_ != hipSuccess) {                                             \
            fprintf(stderr, "FAIL " TEST_NAME ": %s returned %s\n", #call, hipGetErrorName(e_)); \
            return 1;                                                       \
        }                                                                   \
    } while (0)

/* main's last line: 1 if anything failed, else PASS. */
static int finish(void) {
    if (failures) return 1;
    printf("PASS " TEST_NAME "\n");
    return 0;
}
#endif
