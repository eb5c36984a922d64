/* Kernels on two streams ordered by an event: stream a fills, records; stream b
 * waits for the event and doubles what a wrote; async copies on both streams;
 * hipEventElapsedTime between two records; hipStreamQuery and hipEventQuery after
 * the work is done. Checked against the CPU. */
#define TEST_NAME "events"
#include <hip/hip_runtime.h>
#include "check.h"
#include <stdlib.h>

__global__ void fill(int* x, int n, int base) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = base + i;
}

__global__ void twice(int* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= 2;
}

int main(void) {
    const int n = 5000;
    int* host = (int*)malloc(n * sizeof(int));
    int* dx;
    hipStream_t a, b;
    hipEvent_t filled, start, stop;
    CHECK(hipMalloc((void**)&dx, n * sizeof(int)));
    CHECK(hipStreamCreate(&a));
    CHECK(hipStreamCreateWithFlags(&b, hipStreamNonBlocking));
    CHECK(hipEventCreateWithFlags(&filled, hipEventDisableTiming));
    CHECK(hipEventCreate(&start));
    CHECK(hipEventCreate(&stop));

    CHECK(hipEventRecord(start, a));
    hipLaunchKernelGGL(fill, dim3((n + 127) / 128), dim3(128), 0, a, dx, n, 7);
    CHECK(hipGetLastError());
    CHECK(hipEventRecord(filled, a));
    CHECK(hipStreamWaitEvent(b, filled, 0));
    twice<<<(n + 255) / 256, 256, 0, b>>>(dx, n);
    CHECK(hipGetLastError());
    CHECK(hipMemcpyAsync(host, dx, n * sizeof(int), hipMemcpyDeviceToHost, b));
    CHECK(hipEventRecord(stop, b));
    CHECK(hipEventSynchronize(stop));
    for (int i = 0; i < n; i++) EXPECT(host[i] == 2 * (7 + i), "x[%d] = %d", i, host[i]);

    float ms = -1;
    CHECK(hipEventElapsedTime(&ms, start, stop));
    EXPECT(ms >= 0, "elapsed %g ms", ms);
    EXPECT(hipEventElapsedTime(&ms, filled, stop) != hipSuccess, "a timing-disabled event has no time");
    CHECK(hipStreamQuery(a));
    CHECK(hipStreamQuery(b));
    CHECK(hipEventQuery(filled));

    /* Back the other way: b fills, a waits and doubles. */
    hipLaunchKernelGGL(fill, dim3((n + 127) / 128), dim3(128), 0, b, dx, n, -100);
    CHECK(hipEventRecord(filled, b));
    CHECK(hipStreamWaitEvent(a, filled, 0));
    twice<<<(n + 255) / 256, 256, 0, a>>>(dx, n);
    CHECK(hipMemcpyAsync(host, dx, n * sizeof(int), hipMemcpyDeviceToHost, a));
    CHECK(hipStreamSynchronize(a));
    for (int i = 0; i < n; i++) EXPECT(host[i] == 2 * (i - 100), "y[%d] = %d", i, host[i]);

    CHECK(hipEventDestroy(filled));
    CHECK(hipEventDestroy(start));
    CHECK(hipEventDestroy(stop));
    CHECK(hipStreamDestroy(a));
    CHECK(hipStreamDestroy(b));
    CHECK(hipFree(dx));
    if (failures) return 1;
    printf("ok events: kernels on two streams ordered by events, async copies, elapsed time\n");
    return 0;
}
