/* A __constant__ array set with hipMemcpyToSymbol (whole, then part of it at an
 * offset) and read back with hipMemcpyFromSymbol; a __device__ counter the kernel
 * adds to, read back the same way; hipGetSymbolSize and hipGetSymbolAddress. */
#define TEST_NAME "constant"
#include <hip/hip_runtime.h>
#include "check.h"
#include <string.h>

#define N 16
__constant__ float coef[N];
__device__ int counter;

__global__ void apply(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = coef[i % N] * x[i];
        atomicAdd(&counter, 1);
    }
}

int main(void) {
    float host[N], back[N];
    for (int k = 0; k < N; ++k) host[k] = 0.5f * k - 3.0f;
    CHECK(hipMemcpyToSymbol(HIP_SYMBOL(coef), host, sizeof host, 0, hipMemcpyHostToDevice));
    /* Part of it, at an offset: the last four. */
    float tail[4] = {10.0f, 20.0f, 30.0f, 40.0f};
    CHECK(hipMemcpyToSymbol(HIP_SYMBOL(coef), tail, sizeof tail, 12 * sizeof(float), hipMemcpyHostToDevice));
    memcpy(host + 12, tail, sizeof tail);
    memset(back, 0, sizeof back);
    CHECK(hipMemcpyFromSymbol(back, HIP_SYMBOL(coef), sizeof back, 0, hipMemcpyDeviceToHost));
    EXPECT(memcmp(back, host, sizeof host) == 0, "the constant array reads back as written");
    size_t size = 0;
    CHECK(hipGetSymbolSize(&size, HIP_SYMBOL(coef)));
    EXPECT(size == sizeof host, "hipGetSymbolSize %zu", size);
    void* address = NULL;
    CHECK(hipGetSymbolAddress(&address, HIP_SYMBOL(counter)));
    EXPECT(address != NULL, "hipGetSymbolAddress");
    EXPECT(hipMemcpyToSymbol(HIP_SYMBOL(coef), host, sizeof host, 4, hipMemcpyHostToDevice) == hipErrorInvalidValue,
           "a copy past the symbol's end is refused");
    int zero = 0;
    CHECK(hipMemcpyToSymbol(HIP_SYMBOL(counter), &zero, sizeof zero, 0, hipMemcpyHostToDevice));

    const int n = 1000;
    float x[n], y[n];
    for (int i = 0; i < n; ++i) x[i] = i + 1.0f;
    float *dx, *dy;
    CHECK(hipMalloc((void**)&dx, sizeof x));
    CHECK(hipMalloc((void**)&dy, sizeof y));
    CHECK(hipMemcpy(dx, x, sizeof x, hipMemcpyHostToDevice));
    apply<<<(n + 127) / 128, 128>>>(dx, dy, n);
    CHECK(hipGetLastError());
    CHECK(hipMemcpy(y, dy, sizeof y, hipMemcpyDeviceToHost));
    int bad = 0;
    for (int i = 0; i < n; ++i)
        if (y[i] != host[i % N] * x[i] && bad++ < 5) EXPECT(0, "y[%d] = %g, want %g", i, y[i], host[i % N] * x[i]);
    int count = -1;
    CHECK(hipMemcpyFromSymbol(&count, HIP_SYMBOL(counter), sizeof count, 0, hipMemcpyDeviceToHost));
    EXPECT(count == n, "counter %d, want %d", count, n);
    /* The address hipGetSymbolAddress gave is the variable's. */
    count = -1;
    CHECK(hipMemcpy(&count, address, sizeof count, hipMemcpyDeviceToHost));
    EXPECT(count == n, "counter through its address %d", count);
    CHECK(hipFree(dx));
    CHECK(hipFree(dy));
    if (failures) return 1;
    printf("ok constant: __constant__ and __device__ variables through the symbol calls\n");
    return 0;
}
