/* Device memory through xpupool's HIP stand-in and the pool server: the device count,
 * hipMalloc, copies both ways and on the device, memsets, hipMemGetInfo seeing an
 * allocation, errors for a device that is not there and a size the device does not
 * have, hipFree. Run by scripts/run-hip-tests.sh through `xpupool run`. */
#include <hip/hip_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define EXPECT(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "FAIL memory: " __VA_ARGS__);                   \
            fprintf(stderr, " (%s, line %d)\n", #cond, __LINE__);           \
            failures++;                                                     \
        }                                                                   \
    } while (0)
#define CHECK(call)                                                         \
    do {                                                                    \
        hipError_t e_ = (call);                                             \
        if (e_ != hipSuccess) {                                             \
            fprintf(stderr, "FAIL memory: %s returned %s\n", #call, hipGetErrorName(e_)); \
            return 1;                                                       \
        }                                                                   \
    } while (0)

int main(void) {
    int count = -1;
    CHECK(hipGetDeviceCount(&count));
    EXPECT(count >= 1, "%d devices", count);
    EXPECT(hipSetDevice(count) == hipErrorInvalidDevice, "device %d is not there", count);
    CHECK(hipSetDevice(0));
    int current = -1;
    CHECK(hipGetDevice(&current));
    EXPECT(current == 0, "current device %d", current);

    const size_t n = 1 << 20;
    size_t free_before = 0, total = 0;
    CHECK(hipMemGetInfo(&free_before, &total));
    unsigned *a = NULL, *b = NULL;
    CHECK(hipMalloc((void **)&a, n * sizeof *a));
    CHECK(hipMalloc((void **)&b, n * sizeof *b));
    size_t free_after = 0;
    CHECK(hipMemGetInfo(&free_after, &total));
    EXPECT(free_before - free_after >= 2 * n * sizeof *a, "free went from %zu to %zu",
           free_before, free_after);

    unsigned *host = malloc(n * sizeof *host);
    for (size_t i = 0; i < n; ++i) host[i] = (unsigned)(i * 2654435761u);
    CHECK(hipMemcpy(a, host, n * sizeof *host, hipMemcpyHostToDevice));
    CHECK(hipMemcpy(b, a, n * sizeof *a, hipMemcpyDeviceToDevice));
    CHECK(hipMemset(b + 10, 0xab, 4 * sizeof *b));
    memset(host, 0, n * sizeof *host);
    CHECK(hipMemcpy(host, b, n * sizeof *host, hipMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) {
        unsigned want = (i >= 10 && i < 14) ? 0xababababu : (unsigned)(i * 2654435761u);
        if (host[i] != want) {
            EXPECT(0, "[%zu] = %#x, expected %#x", i, host[i], want);
            break;
        }
    }
    void *huge = NULL;
    EXPECT(hipMalloc(&huge, total + 1) == hipErrorOutOfMemory, "more than the device refused");
    EXPECT(hipGetLastError() == hipErrorOutOfMemory, "and it is the last error");
    CHECK(hipDeviceSynchronize());
    CHECK(hipFree(a));
    CHECK(hipFree(b));
    CHECK(hipFree(NULL));
    free(host);
    if (failures) return 1;
    printf("PASS memory\n");
    return 0;
}
