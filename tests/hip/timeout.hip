/* A kernel that never ends: its launch fails with hipErrorLaunchTimeOut once the
 * server's limit (XPUPOOL_KERNEL_TIME_LIMIT seconds; the test scripts set a few)
 * passes, as a device's watchdog would end it, and the device stays unusable for
 * this process, as after a fault. */
#define TEST_NAME "timeout"
#include <hip/hip_runtime.h>
#include "check.h"

__global__ void forever(volatile int* flag) {
    while (*flag == 0) {
    }
}

int main(void) {
    int* flag;
    CHECK(hipMalloc((void**)&flag, sizeof *flag));
    CHECK(hipMemset(flag, 0, sizeof *flag));
    forever<<<4, 64>>>(flag);
    CHECK(hipGetLastError());
    hipError_t e = hipDeviceSynchronize();
    EXPECT(e == hipErrorLaunchTimeOut, "synchronize returned %s", hipGetErrorName(e));
    if (failures) return 1;
    printf("ok timeout: a kernel that never ends fails with %s\n", hipGetErrorName(e));
    return 0;
}
