/* A vector add with a scalar int and a double parameter, launched with <<<...>>>
 * (hipcc's push/pop of the configuration, then hipLaunchKernel) and with
 * hipLaunchKernelGGL, n not a multiple of the block. Checked against the CPU. */
#define TEST_NAME "vadd"
#include <hip/hip_runtime.h>
#include "check.h"
#include <math.h>
#include <stdlib.h>

__global__ void vadd(const float* a, const float* b, float* c, int n, double scale) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = (float)((double)(a[i] + b[i]) * scale);
}

int main(void) {
    const int n = 10007;
    const double scale = 1.5;
    float *a = (float*)malloc(n * sizeof(float)), *b = (float*)malloc(n * sizeof(float));
    float *c = (float*)malloc(n * sizeof(float));
    for (int i = 0; i < n; ++i) { a[i] = i * 0.25f; b[i] = 1000.0f - i; }
    float *da, *db, *dc;
    CHECK(hipMalloc((void**)&da, n * sizeof(float)));
    CHECK(hipMalloc((void**)&db, n * sizeof(float)));
    CHECK(hipMalloc((void**)&dc, n * sizeof(float)));
    CHECK(hipMemcpy(da, a, n * sizeof(float), hipMemcpyHostToDevice));
    CHECK(hipMemcpy(db, b, n * sizeof(float), hipMemcpyHostToDevice));
    const int block = 256, grid = (n + block - 1) / block;
    vadd<<<grid, block>>>(da, db, dc, n, scale);
    CHECK(hipGetLastError());
    CHECK(hipDeviceSynchronize());
    CHECK(hipMemcpy(c, dc, n * sizeof(float), hipMemcpyDeviceToHost));
    int bad = 0;
    for (int i = 0; i < n; ++i) {
        float want = (float)((double)(a[i] + b[i]) * scale);
        if (fabsf(c[i] - want) > 1e-6f * fabsf(want) && bad++ < 5)
            EXPECT(0, "c[%d] = %g, want %g", i, c[i], want);
    }
    /* Again through hipLaunchKernelGGL, in a stream, with the operands swapped. */
    hipStream_t s;
    CHECK(hipStreamCreate(&s));
    CHECK(hipMemset(dc, 0, n * sizeof(float)));
    hipLaunchKernelGGL(vadd, dim3(grid), dim3(block), 0, s, db, da, dc, n, -2.0);
    CHECK(hipGetLastError());
    CHECK(hipStreamSynchronize(s));
    CHECK(hipMemcpy(c, dc, n * sizeof(float), hipMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
        float want = (float)((double)(b[i] + a[i]) * -2.0);
        if (fabsf(c[i] - want) > 1e-6f * fabsf(want) && bad++ < 10)
            EXPECT(0, "second launch: c[%d] = %g, want %g", i, c[i], want);
    }
    CHECK(hipStreamDestroy(s));
    CHECK(hipFree(da));
    CHECK(hipFree(db));
    CHECK(hipFree(dc));
    if (failures) return 1;
    printf("ok vadd: %d elements, two launches\n", n);
    return 0;
}
