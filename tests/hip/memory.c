/* Device memory through xpupool's HIP stand-in and the pool server: the device count,
 * a device's handle, name, UUID and memory,
 * hipMalloc, copies both ways and on the device, memsets, hipMemGetInfo seeing an
 * allocation, errors for a device that is not there and a size the device does not
 * have, hipMemcpyDefault in all four directions, hipFree (and frees of what is no
 * allocation refused). Run by scripts/run-hip-tests.sh through `xpupool run`. */
#define TEST_NAME "memory"
#include "check.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


int main(void) {
    int count = -1;
    CHECK(hipGetDeviceCount(&count));
    EXPECT(count >= 1, "%d devices", count);
    EXPECT(hipSetDevice(count) == hipErrorInvalidDevice, "device %d is not there", count);
    CHECK(hipSetDevice(0));
    int current = -1;
    CHECK(hipGetDevice(&current));
    EXPECT(current == 0, "current device %d", current);
    hipDevice_t dev0 = -1;
    CHECK(hipDeviceGet(&dev0, 0));
    EXPECT(dev0 == 0, "device 0 is %d", dev0);
    EXPECT(hipDeviceGet(&dev0, count) == hipErrorInvalidDevice, "no device %d", count);
    char name[256] = {0}, short_name[6] = "xxxxx";
    CHECK(hipDeviceGetName(name, sizeof name, 0));
    EXPECT(strstr(name, "xpupool") != NULL, "name %s", name);
    CHECK(hipDeviceGetName(short_name, sizeof short_name, 0));
    EXPECT(strlen(short_name) == 5 && strncmp(short_name, name, 5) == 0, "cut to fit: %s", short_name);
    EXPECT(hipDeviceGetName(name, 0, 0) == hipErrorInvalidValue, "no room");
    hipUUID uuid;
    memset(&uuid, 0, sizeof uuid);
    CHECK(hipDeviceGetUuid(&uuid, 0));
    int nonzero = 0;
    for (int i = 0; i < 16; ++i) nonzero |= uuid.bytes[i];
    EXPECT(nonzero, "a UUID");
    size_t device_total = 0;
    CHECK(hipDeviceTotalMem(&device_total, 0));

    const size_t n = 1 << 20;
    size_t free_before = 0, total = 0;
    CHECK(hipMemGetInfo(&free_before, &total));
    unsigned *a = NULL, *b = NULL;
    CHECK(hipMalloc((void **)&a, n * sizeof *a));
    CHECK(hipMalloc((void **)&b, n * sizeof *b));
    size_t free_after = 0;
    CHECK(hipMemGetInfo(&free_after, &total));
    EXPECT(total == device_total, "hipMemGetInfo's total %zu, hipDeviceTotalMem's %zu", total,
           device_total);
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

    /* hipMemcpyDefault: each side is the device's or the host's as its address says
     * (unified addressing), in all four directions; past an allocation's end is the host's. */
    unsigned *back = malloc(n * sizeof *back), *other = malloc(n * sizeof *other);
    for (size_t i = 0; i < n; ++i) host[i] = (unsigned)(i ^ 0x5a5a5a5au);
    CHECK(hipMemcpy(a, host, n * sizeof *host, hipMemcpyDefault));          /* to the device */
    CHECK(hipMemcpy(b + 1, a, (n - 1) * sizeof *a, hipMemcpyDefault));      /* on it */
    CHECK(hipMemcpy(back, b, n * sizeof *b, hipMemcpyDefault));             /* back */
    CHECK(hipMemcpy(other, back, n * sizeof *back, hipMemcpyDefault));      /* host to host */
    EXPECT(other[0] == 0, "b[0] untouched (a[0] of the first copies, 0): %#x", other[0]);
    for (size_t i = 1; i < n; ++i) {
        if (other[i] != (unsigned)((i - 1) ^ 0x5a5a5a5au)) {
            EXPECT(0, "default copies: [%zu] = %#x, expected %#x", i, other[i], (unsigned)((i - 1) ^ 0x5a5a5a5au));
            break;
        }
    }
    free(back);
    free(other);

    CHECK(hipFree(a));
    EXPECT(hipFree(a) == hipErrorInvalidValue, "a second free of the same allocation");
    EXPECT(hipFree(b + 1) == hipErrorInvalidValue, "a free inside an allocation");
    EXPECT(hipFree(host) == hipErrorInvalidValue, "a free of host memory");
    CHECK(hipFree(b));
    CHECK(hipFree(NULL));
    free(host);
    return finish();
}
