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
    /* What the kernel needs, and how many blocks a compute unit holds: 2048
     * work-items, 64 KiB of LDS, 32 workgroups. */
    hipFuncAttributes attr;
    CHECK(hipFuncGetAttributes(&attr, (const void*)reverse_blocks));
    EXPECT(attr.maxThreadsPerBlock == 1024 && attr.sharedSizeBytes == 0, "attributes %d threads, %zu shared",
           attr.maxThreadsPerBlock, attr.sharedSizeBytes);
    int blocks = -1, grid = -1, block = -1;
    CHECK(hipOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, reverse_blocks, 256, 256 * sizeof(int)));
    EXPECT(blocks == 8, "%d blocks of 256 per compute unit", blocks);
    CHECK(hipOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, reverse_blocks, 256, 20 * 1024));
    EXPECT(blocks == 3, "%d blocks of 256 with 20 KiB each", blocks);
    CHECK(hipOccupancyMaxPotentialBlockSize(&grid, &block, reverse_blocks, 0, 0));
    hipDeviceProp_t prop;
    CHECK(hipGetDeviceProperties(&prop, 0));
    EXPECT(block > 0 && block % 64 == 0 && grid == prop.multiProcessorCount * (2048 / block),
           "potential block %d, grid %d (%d compute units)", block, grid, prop.multiProcessorCount);
    EXPECT(hipFuncGetAttributes(&attr, (const void*)main) == hipErrorInvalidDeviceFunction,
           "a host function has no attributes");
    CHECK(hipFree(din));
    CHECK(hipFree(dout));
    if (failures) return 1;
    printf("ok dynshared: blocks of 256 and 1024 reversed in dynamic shared memory; attributes and occupancy\n");
    return 0;
}
