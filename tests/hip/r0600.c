/* A program built for ROCm 6 or 7: it imports hipGetDevicePropertiesR0600@hip_6.0 from
 * libamdhip64.so.6 (what hipGetDeviceProperties is a macro for in their headers) and
 * reads the 1472-byte hipDeviceProp_tR0600 at that layout's offsets; the figures
 * must be the 5.x layout's. Debian's headers are 5.2's, so the declaration and the
 * offsets are written here (ROCm 6's hip_runtime_api.h). */
#define TEST_NAME "r0600"
#include <hip/hip_runtime_api.h>
#include "check.h"
#include <string.h>

hipError_t hipGetDevicePropertiesR0600(void* prop, int device);
hipError_t hipChooseDeviceR0600(int* device, const void* prop);

int main(void) {
    static char r0600[1472];
    hipDeviceProp_t old;
    memset(r0600, 0xa5, sizeof r0600);
    CHECK(hipGetDevicePropertiesR0600(r0600, 0));
    CHECK(hipGetDeviceProperties(&old, 0));
    size_t total;
    int cus;
    memcpy(&total, r0600 + 288, sizeof total);
    memcpy(&cus, r0600 + 388, sizeof cus);
    EXPECT(strcmp(r0600, old.name) == 0, "name %s, want %s", r0600, old.name);
    EXPECT(total == old.totalGlobalMem, "totalGlobalMem %zu, want %zu", total, old.totalGlobalMem);
    EXPECT(cus == old.multiProcessorCount, "multiProcessorCount %d, want %d", cus, old.multiProcessorCount);
    EXPECT(strcmp(r0600 + 1160, old.gcnArchName) == 0, "gcnArchName %s, want %s", r0600 + 1160, old.gcnArchName);
    int warp;
    memcpy(&warp, r0600 + 308, sizeof warp);
    EXPECT(warp == 64, "warpSize %d", warp);
    EXPECT(hipGetDevicePropertiesR0600(NULL, 0) == hipErrorInvalidValue, "a NULL struct");
    EXPECT(hipGetDevicePropertiesR0600(r0600, 99) == hipErrorInvalidDevice, "device 99");
    int chosen = -1;
    CHECK(hipChooseDeviceR0600(&chosen, r0600));
    EXPECT(chosen == 0, "chose %d", chosen);
    return finish();
}
