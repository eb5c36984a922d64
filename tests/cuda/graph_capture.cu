// CUDA graphs by stream capture: a memset, two kernels and a device-to-device copy
// captured and replayed 50 times (an accumulating kernel counts the replays); a
// fork/join capture across two streams joined by events; the capture queries
// (cudaStreamIsCapturing, cudaStreamGetCaptureInfo) and node count; a synchronisation
// inside a capture refused and the capture invalidated, the stream usable after; a
// graph launched on another stream; and 1,000 tiny kernels launched one by one vs as
// one graph (timings printed, not judged).
#define TEST_NAME "graph_capture"
#include "check.cuh"

#include <chrono>

__global__ void twice_plus_one(int *x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = 2 * x[i] + 1;
}
__global__ void add_const(const int *x, int *y, int n, int k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + k + i;
}
__global__ void accumulate(int *acc, const int *z, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += z[i];
}
__global__ void set_to(int *a, int n, int v) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = v + i;
}
__global__ void sum_into(int *c, const int *a, const int *b, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] += a[i] + b[i];
}
__global__ void tiny(int *p) { if (threadIdx.x == 0) p[0] += 1; }

int main() {
    const int n = 1000, blocks = (n + 127) / 128;
    int *x, *y, *z, *acc;
    CHECK(cudaMalloc(&x, n * sizeof(int)));
    CHECK(cudaMalloc(&y, n * sizeof(int)));
    CHECK(cudaMalloc(&z, n * sizeof(int)));
    CHECK(cudaMalloc(&acc, n * sizeof(int)));
    CHECK(cudaMemset(acc, 0, n * sizeof(int)));
    cudaStream_t s, s2;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));

    // 1. Capture a sequence; nothing runs while capturing.
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    cudaStreamCaptureStatus status;
    CHECK(cudaStreamIsCapturing(s, &status));
    if (status != cudaStreamCaptureStatusActive) fail("not capturing after begin");
    unsigned long long id = 0;
    CHECK(cudaStreamGetCaptureInfo(s, &status, &id));
    if (id == 0) fail("a capture without an id");
    CHECK(cudaMemsetAsync(x, 0, n * sizeof(int), s));
    twice_plus_one<<<blocks, 128, 0, s>>>(x, n);
    add_const<<<blocks, 128, 0, s>>>(x, y, n, 5);
    CHECK(cudaMemcpyAsync(z, y, n * sizeof(int), cudaMemcpyDeviceToDevice, s));
    accumulate<<<blocks, 128, 0, s>>>(acc, z, n);
    cudaGraph_t graph;
    CHECK(cudaStreamEndCapture(s, &graph));
    CHECK(cudaStreamIsCapturing(s, &status));
    if (status != cudaStreamCaptureStatusNone) fail("still capturing after end");
    size_t nodes = 0;
    CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
    if (nodes != 5) fail("%zu nodes captured, expected 5", nodes);
    int h[n];
    CHECK(cudaMemcpy(h, acc, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i)
        if (h[i] != 0) { fail("captured work ran during capture: acc[%d] = %d", i, h[i]); break; }
    cudaGraphExec_t exec;
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    const int replays = 50;
    for (int r = 0; r < replays; ++r) CHECK(cudaGraphLaunch(exec, r % 2 ? s : s2));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(h, acc, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i)
        if (h[i] != replays * (1 + 5 + i)) { fail("acc[%d] = %d after %d replays, expected %d", i, h[i], replays, replays * (6 + i)); break; }

    // 2. Fork and join across two streams.
    int *a, *b, *c;
    CHECK(cudaMalloc(&a, n * sizeof(int)));
    CHECK(cudaMalloc(&b, n * sizeof(int)));
    CHECK(cudaMalloc(&c, n * sizeof(int)));
    CHECK(cudaMemset(c, 0, n * sizeof(int)));
    cudaEvent_t fork, join;
    CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    CHECK(cudaEventRecord(fork, s));
    CHECK(cudaStreamWaitEvent(s2, fork, 0));
    CHECK(cudaStreamIsCapturing(s2, &status));
    if (status != cudaStreamCaptureStatusActive) fail("the forked stream did not join the capture");
    set_to<<<blocks, 128, 0, s2>>>(b, n, 1000);
    set_to<<<blocks, 128, 0, s>>>(a, n, 7);
    CHECK(cudaEventRecord(join, s2));
    CHECK(cudaStreamWaitEvent(s, join, 0));
    sum_into<<<blocks, 128, 0, s>>>(c, a, b, n);
    cudaGraph_t forked;
    CHECK(cudaStreamEndCapture(s, &forked));
    CHECK(cudaStreamIsCapturing(s2, &status));
    if (status != cudaStreamCaptureStatusNone) fail("the forked stream is still capturing");
    cudaGraphExec_t forked_exec;
    CHECK(cudaGraphInstantiate(&forked_exec, forked, 0));
    for (int r = 0; r < 10; ++r) CHECK(cudaGraphLaunch(forked_exec, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(h, c, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i)
        if (h[i] != 10 * (7 + i + 1000 + i)) { fail("c[%d] = %d, expected %d", i, h[i], 10 * (1007 + 2 * i)); break; }

    // 3. A synchronisation inside a capture is refused and ends it in error.
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    set_to<<<blocks, 128, 0, s>>>(a, n, 0);
    if (cudaStreamSynchronize(s) != cudaErrorStreamCaptureUnsupported) fail("a sync inside a capture was not refused");
    cudaGraph_t broken = nullptr;
    if (cudaStreamEndCapture(s, &broken) != cudaErrorStreamCaptureInvalidated) fail("an invalidated capture ended well");
    if (broken != nullptr) fail("an invalidated capture made a graph");
    cudaGetLastError();
    set_to<<<blocks, 128, 0, s>>>(a, n, 3);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(h, a, sizeof h, cudaMemcpyDeviceToHost));
    if (h[10] != 13) fail("the stream after a failed capture: a[10] = %d", h[10]);

    // 4. 1,000 tiny kernels: one by one, and as one graph launch.
    int *counter;
    CHECK(cudaMalloc(&counter, sizeof(int)));
    CHECK(cudaMemset(counter, 0, sizeof(int)));
    const int kernels = 1000;
    auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < kernels; ++k) tiny<<<1, 32, 0, s>>>(counter);
    CHECK(cudaStreamSynchronize(s));
    auto t1 = std::chrono::steady_clock::now();
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int k = 0; k < kernels; ++k) tiny<<<1, 32, 0, s>>>(counter);
    cudaGraph_t many;
    CHECK(cudaStreamEndCapture(s, &many));
    cudaGraphExec_t many_exec;
    CHECK(cudaGraphInstantiate(&many_exec, many, 0));
    auto t2 = std::chrono::steady_clock::now();
    CHECK(cudaGraphLaunch(many_exec, s));
    CHECK(cudaStreamSynchronize(s));
    auto t3 = std::chrono::steady_clock::now();
    int count = 0;
    CHECK(cudaMemcpy(&count, counter, sizeof count, cudaMemcpyDeviceToHost));
    if (count != 2 * kernels) fail("the counter is %d, expected %d", count, 2 * kernels);
    printf("1000 kernels: launched one by one %.2f ms, as one graph launch %.2f ms\n",
           std::chrono::duration<double, std::milli>(t1 - t0).count(),
           std::chrono::duration<double, std::milli>(t3 - t2).count());

    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphExecDestroy(forked_exec));
    CHECK(cudaGraphExecDestroy(many_exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaGraphDestroy(forked));
    CHECK(cudaGraphDestroy(many));
    return finish();
}
