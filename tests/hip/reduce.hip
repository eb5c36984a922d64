/* A block sum in __shared__ memory with __syncthreads, then one atomicAdd per
 * block into a single global; compared with the CPU's sum. */
#define TEST_NAME "reduce"
#include <hip/hip_runtime.h>
#include "check.h"
#include <stdlib.h>

#define BLOCK 256

__global__ void block_sum(const int* in, int n, unsigned long long* total) {
    __shared__ int part[BLOCK];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    part[threadIdx.x] = i < n ? in[i] : 0;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(total, (unsigned long long)part[0]);
}

int main(void) {
    const int n = (1 << 16) + 123;
    int* in = (int*)malloc(n * sizeof(int));
    unsigned long long want = 0;
    for (int i = 0; i < n; ++i) { in[i] = (i * 7) % 101; want += in[i]; }
    int* din;
    unsigned long long* dtotal;
    CHECK(hipMalloc((void**)&din, n * sizeof(int)));
    CHECK(hipMalloc((void**)&dtotal, sizeof *dtotal));
    CHECK(hipMemcpy(din, in, n * sizeof(int), hipMemcpyHostToDevice));
    CHECK(hipMemset(dtotal, 0, sizeof *dtotal));
    block_sum<<<(n + BLOCK - 1) / BLOCK, BLOCK>>>(din, n, dtotal);
    CHECK(hipGetLastError());
    unsigned long long total = 0;
    CHECK(hipMemcpy(&total, dtotal, sizeof total, hipMemcpyDeviceToHost));
    EXPECT(total == want, "sum %llu, want %llu", total, want);
    CHECK(hipFree(din));
    CHECK(hipFree(dtotal));
    if (failures) return 1;
    printf("ok reduce: %d values sum to %llu\n", n, total);
    return 0;
}
