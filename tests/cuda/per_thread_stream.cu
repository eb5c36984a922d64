// The per-thread default stream: each host thread's cudaStreamPerThread is a stream
// of its own (its id differs from the other thread's and from the legacy stream's),
// work on it is ordered within the thread and synchronised alone, and it can be
// captured into a graph.
#define TEST_NAME "per_thread_stream"
#include "check.cuh"

#include <thread>

__global__ void fill(int *a, int n, int v) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = v * 1000 + i;
}
__global__ void bump(int *a, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] += 1;
}

static void worker(int v, unsigned long long *id) {
    const int n = 5000;
    int *a;
    CHECK(cudaMalloc(&a, n * sizeof(int)));
    CHECK(cudaStreamGetId(cudaStreamPerThread, id));
    fill<<<(n + 255) / 256, 256, 0, cudaStreamPerThread>>>(a, n, v);
    bump<<<(n + 255) / 256, 256, 0, cudaStreamPerThread>>>(a, n);
    CHECK(cudaStreamSynchronize(cudaStreamPerThread));
    static thread_local int h[n];
    CHECK(cudaMemcpyAsync(h, a, sizeof h, cudaMemcpyDeviceToHost, cudaStreamPerThread));
    CHECK(cudaStreamSynchronize(cudaStreamPerThread));
    for (int i = 0; i < n; ++i)
        if (h[i] != v * 1000 + i + 1) { fail("thread %d: a[%d] = %d", v, i, h[i]); break; }
    // Captured and replayed on the per-thread stream.
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeThreadLocal));
    bump<<<(n + 255) / 256, 256, 0, cudaStreamPerThread>>>(a, n);
    CHECK(cudaStreamEndCapture(cudaStreamPerThread, &g));
    cudaGraphExec_t e;
    CHECK(cudaGraphInstantiate(&e, g, 0));
    for (int r = 0; r < 3; ++r) CHECK(cudaGraphLaunch(e, cudaStreamPerThread));
    CHECK(cudaMemcpyAsync(h, a, sizeof h, cudaMemcpyDeviceToHost, cudaStreamPerThread));
    CHECK(cudaStreamSynchronize(cudaStreamPerThread));
    if (h[7] != v * 1000 + 7 + 4) fail("thread %d after 3 replays: a[7] = %d", v, h[7]);
    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaFree(a));
}

int main() {
    CHECK(cudaSetDevice(0));
    unsigned long long legacy = 0, one = 0, two = 0;
    CHECK(cudaStreamGetId(cudaStreamLegacy, &legacy));
    std::thread t1(worker, 1, &one), t2(worker, 2, &two);
    t1.join();
    t2.join();
    if (one == two || one == legacy || two == legacy)
        fail("stream ids: legacy %llu, thread 1 %llu, thread 2 %llu", legacy, one, two);
    return finish();
}
