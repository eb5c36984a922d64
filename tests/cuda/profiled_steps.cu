// A loop of "training steps", each between cudaProfilerStart() and cudaProfilerStop(): a
// copy to the device, two kernels, a copy back. scripts/run-cuda-tests.sh records it with
// XPUPOOL_TRACE and replays the trace with `xpupool bench replay`; on its own it checks
// the arithmetic of every step.
#define TEST_NAME "profiled_steps"
#include "check.cuh"

#include <vector>

// cuda_profiler_api.h is not among the pip packages; libcudart exports these.
extern "C" cudaError_t cudaProfilerStart(void);
extern "C" cudaError_t cudaProfilerStop(void);

__global__ void scale_add(float *x, float scale, float add, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * scale + add;
}

int main() {
    const int n = 1 << 16, steps = 4;
    std::vector<float> host(n), back(n);
    float *device = nullptr;
    CHECK(cudaMalloc(&device, n * sizeof(float)));
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    for (int step = 0; step < steps; ++step) {
        for (int i = 0; i < n; ++i) host[i] = float(i % 97) + step;
        CHECK(cudaProfilerStart());
        CHECK(cudaMemcpyAsync(device, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
        scale_add<<<(n + 255) / 256, 256, 0, stream>>>(device, 2.0f, 1.0f, n);
        scale_add<<<(n + 255) / 256, 256, 0, stream>>>(device, 0.5f, -0.5f, n);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpyAsync(back.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
        CHECK(cudaStreamSynchronize(stream));
        CHECK(cudaProfilerStop());
        for (int i = 0; i < n; ++i) {
            // (x * 2 + 1) * 0.5 - 0.5 == x
            if (back[i] != host[i]) {
                fail("step %d: element %d is %g, expected %g", step, i, back[i], host[i]);
                break;
            }
        }
    }
    CHECK(cudaStreamDestroy(stream));
    CHECK(cudaFree(device));
    return finish();
}
