// A loop of "training steps", each between cudaProfilerStart() and cudaProfilerStop(): a
// copy to the device, two kernels, a copy back. scripts/run-cuda-tests.sh records it with
// XPUPOOL_TRACE and replays the trace with `xpupool bench replay`; on its own it checks
// the arithmetic of every step. `profiled_steps graph` runs the two kernels as one
// captured graph and copies the result back through a CUDA array (with a texture object
// over it), for the replay of graphs, arrays and textures.
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

int main(int argc, char **argv) {
    const bool graph = argc > 1 && strcmp(argv[1], "graph") == 0;
    const int n = 1 << 16, steps = 4, width = 256;
    std::vector<float> host(n), back(n);
    float *device = nullptr;
    CHECK(cudaMalloc(&device, n * sizeof(float)));
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    cudaGraphExec_t exec = nullptr;
    cudaArray_t array = nullptr;
    cudaTextureObject_t texture = 0;
    if (graph) {
        cudaGraph_t g;
        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        scale_add<<<(n + 255) / 256, 256, 0, stream>>>(device, 2.0f, 1.0f, n);
        scale_add<<<(n + 255) / 256, 256, 0, stream>>>(device, 0.5f, -0.5f, n);
        CHECK(cudaStreamEndCapture(stream, &g));
        CHECK(cudaGraphInstantiate(&exec, g, 0));
        CHECK(cudaGraphDestroy(g));
        cudaChannelFormatDesc f = cudaCreateChannelDesc<float>();
        CHECK(cudaMallocArray(&array, &f, width, n / width));
        cudaResourceDesc res = {};
        res.resType = cudaResourceTypeArray;
        res.res.array.array = array;
        cudaTextureDesc td = {};
        td.readMode = cudaReadModeElementType;
        CHECK(cudaCreateTextureObject(&texture, &res, &td, nullptr));
    }
    for (int step = 0; step < steps; ++step) {
        for (int i = 0; i < n; ++i) host[i] = float(i % 97) + step;
        CHECK(cudaProfilerStart());
        CHECK(cudaMemcpyAsync(device, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
        if (graph) {
            CHECK(cudaGraphLaunch(exec, stream));
            const size_t row = width * sizeof(float);
            CHECK(cudaMemcpy2DToArrayAsync(array, 0, 0, device, row, row, n / width, cudaMemcpyDeviceToDevice, stream));
            CHECK(cudaMemcpy2DFromArrayAsync(back.data(), row, array, 0, 0, row, n / width, cudaMemcpyDeviceToHost, stream));
        } else {
            scale_add<<<(n + 255) / 256, 256, 0, stream>>>(device, 2.0f, 1.0f, n);
            scale_add<<<(n + 255) / 256, 256, 0, stream>>>(device, 0.5f, -0.5f, n);
            CHECK(cudaGetLastError());
            CHECK(cudaMemcpyAsync(back.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
        }
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
    if (graph) {
        CHECK(cudaDestroyTextureObject(texture));
        CHECK(cudaFreeArray(array));
        CHECK(cudaGraphExecDestroy(exec));
    }
    CHECK(cudaStreamDestroy(stream));
    CHECK(cudaFree(device));
    return finish();
}
