/* A wave64 reduction with __shfl_down: each wave of 64 lanes sums its values
 * without shared memory; lane 0 writes the wave's sum. Also checks warpSize is 64
 * on the device and in the properties. */
#define TEST_NAME "wave"
#include <hip/hip_runtime.h>
#include "check.h"

__global__ void wave_sum(const int* in, int* out, int* wave_size) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = in[i];
    for (int offset = warpSize / 2; offset > 0; offset /= 2) v += __shfl_down(v, offset);
    if (threadIdx.x % warpSize == 0) out[i / warpSize] = v;
    if (i == 0) *wave_size = warpSize;
}

int main(void) {
    hipDeviceProp_t prop;
    CHECK(hipGetDeviceProperties(&prop, 0));
    EXPECT(prop.warpSize == 64, "warpSize %d", prop.warpSize);
    const int blocks = 8, threads = 256, n = blocks * threads, waves = n / 64;
    int in[n], out[waves], want[waves] = {0};
    for (int i = 0; i < n; ++i) { in[i] = (i * 13) % 17 - 8; want[i / 64] += in[i]; }
    int *din, *dout, *dsize;
    CHECK(hipMalloc((void**)&din, sizeof in));
    CHECK(hipMalloc((void**)&dout, sizeof out));
    CHECK(hipMalloc((void**)&dsize, sizeof(int)));
    CHECK(hipMemcpy(din, in, sizeof in, hipMemcpyHostToDevice));
    hipLaunchKernelGGL(wave_sum, dim3(blocks), dim3(threads), 0, 0, din, dout, dsize);
    CHECK(hipGetLastError());
    int size = 0;
    CHECK(hipMemcpy(out, dout, sizeof out, hipMemcpyDeviceToHost));
    CHECK(hipMemcpy(&size, dsize, sizeof size, hipMemcpyDeviceToHost));
    EXPECT(size == 64, "warpSize on the device %d", size);
    for (int w = 0; w < waves; ++w)
        EXPECT(out[w] == want[w], "wave %d: %d, want %d", w, out[w], want[w]);
    CHECK(hipFree(din));
    CHECK(hipFree(dout));
    CHECK(hipFree(dsize));
    if (failures) return 1;
    printf("ok wave: %d waves of 64 reduced with __shfl_down\n", waves);
    return 0;
}
