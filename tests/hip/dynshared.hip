/* Dynamic shared memory (extern __shared__), sized at launch: each block reverses
 * its slice; two launches with different block and shared sizes. */
#define TEST_NAME "dynshared"
#include <hip/hip_runtime.h>
#include "check.h"

__global__ void reverse_blocks(const int* in, int* out) {
    extern __shared__ int slice[];
    int base = blockIdx.x * blockDim.x;
    slice[threadIdx.x] = in[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = slice[blockDim.x - 1 - threadIdx.x];
}

static int run(int blocks, int threads, const int* din, int* dout, int* out) {
    hipLaunchKernelGGL(reverse_blocks, dim3(blocks), dim3(threads), threads * sizeof(int), 0, din, dout);
    CHECK(hipGetLastError());
    CHECK(hipMemcpy(out, dout, blocks * threads * sizeof(int), hipMemcpyDeviceToHost));
    for (int b = 0; b < blocks; ++b)
        for (int t = 0; t < threads; ++t) {
            int got = out[b * threads + t], want = b * threads + (threads - 1 - t);
            if (got != want) {
                EXPECT(got == want, "block size %d: out[%d] = %d, want %d", threads, b * threads + t, got, want);
                return 0;
            }
        }
    return 0;
}

int main(void) {
    const int n = 4096;
    static int in[n], out[n];
    for (int i = 0; i < n; ++i) in[i] = i;
    int *din, *dout;
    CHECK(hipMalloc((void**)&din, sizeof in));
    CHECK(hipMalloc((void**)&dout, sizeof out));
    CHECK(hipMemcpy(din, in, sizeof in, hipMemcpyHostToDevice));
    if (run(n / 256, 256, din, dout, out)) return 1;
    if (run(n / 1024, 1024, din, dout, out)) return 1;
    CHECK(hipFree(din));
    CHECK(hipFree(dout));
    if (failures) return 1;
    printf("ok dynshared: blocks of 256 and 1024 reversed in dynamic shared memory\n");
    return 0;
}
