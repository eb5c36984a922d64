/* A kernel launched into a stream runs on the stream's device (HIP's rule),
 * whichever device is current: its code is loaded there and it writes that
 * device's memory. The null stream is the current device's. Needs a server with
 * two devices (scripts/run-hip-tests.sh gives the embedded mock two). */
#define TEST_NAME "streamdev"
#include <hip/hip_runtime.h>
#include "check.h"

__global__ void fill(int* out, int n, int value) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = value + i;
}

static int expect_filled(const int* dev, int n, int value) {
    static int host[1000];
    CHECK(hipMemcpy(host, dev, n * sizeof(int), hipMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
        if (host[i] != value + i) {
            EXPECT(0, "[%d] = %d, want %d", i, host[i], value + i);
            break;
        }
    }
    return 0;
}

int main(void) {
    int count = 0;
    CHECK(hipGetDeviceCount(&count));
    if (count < 2) {
        fprintf(stderr, "FAIL " TEST_NAME ": needs 2 devices, the server has %d\n", count);
        return 1;
    }
    const int n = 1000;
    int *one, *zero;
    hipStream_t on_one;
    CHECK(hipSetDevice(1));
    CHECK(hipStreamCreate(&on_one));
    CHECK(hipMalloc((void**)&one, n * sizeof(int)));
    CHECK(hipSetDevice(0));
    CHECK(hipMalloc((void**)&zero, n * sizeof(int)));
    /* Device 0 is current; the stream is device 1's. */
    fill<<<(n + 255) / 256, 256, 0, on_one>>>(one, n, 7);
    CHECK(hipGetLastError());
    CHECK(hipStreamSynchronize(on_one));
    if (expect_filled(one, n, 7)) return 1;
    /* The null stream: the current device. */
    fill<<<(n + 255) / 256, 256>>>(zero, n, 3);
    CHECK(hipGetLastError());
    CHECK(hipDeviceSynchronize());
    if (expect_filled(zero, n, 3)) return 1;
    CHECK(hipStreamDestroy(on_one));
    CHECK(hipFree(zero));
    CHECK(hipFree(one));
    return finish();
}
