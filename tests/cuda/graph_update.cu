// Updating instantiated graphs, as llama.cpp and XLA do: a graph captured again with
// new kernel arguments updates the instantiation (cudaGraphExecUpdate), one kernel
// node's parameters are changed in the instantiation (cudaGraphExecKernelNodeSetParams)
// and in the graph (cudaGraphKernelNodeSetParams), and a graph of another shape is
// refused with the reason, the instantiation running on as it was.
#define TEST_NAME "graph_update"
#include "check.cuh"

__global__ void scale(int *out, int n, int k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = k * i;
}

__global__ void add(int *out, int n, int k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] += k;
}

static const int N = 4096;

static cudaGraph_t capture(cudaStream_t s, int *d, int k, int extra) {
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    scale<<<N / 256, 256, 0, s>>>(d, N, k);
    add<<<N / 256, 256, 0, s>>>(d, N, 1);
    if (extra) add<<<N / 256, 256, 0, s>>>(d, N, extra);
    CHECK(cudaStreamEndCapture(s, &g));
    return g;
}

static void expect(cudaStream_t s, cudaGraphExec_t e, const int *d, int k, int plus, const char *what) {
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    int h[N];
    CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; ++i)
        if (h[i] != k * i + plus) {
            fail("%s: [%d] expected %d got %d", what, i, k * i + plus, h[i]);
            return;
        }
}

int main() {
    int *d;
    CHECK(cudaMalloc((void **)&d, N * sizeof(int)));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaGraph_t g = capture(s, d, 2, 0);
    cudaGraphExec_t e;
    CHECK(cudaGraphInstantiate(&e, g, 0));
    expect(s, e, d, 2, 1, "as captured");

    // Captured again with another argument: the same shape, so an update.
    cudaGraph_t g2 = capture(s, d, 5, 0);
    cudaGraphExecUpdateResultInfo info = {};
    CHECK(cudaGraphExecUpdate(e, g2, &info));
    if (info.result != cudaGraphExecUpdateSuccess) fail("update result %d", (int)info.result);
    expect(s, e, d, 5, 1, "updated from a new capture");

    // One node's parameters in the instantiation (a node of the graph it came from).
    size_t count = 0;
    CHECK(cudaGraphGetNodes(g, nullptr, &count));
    if (count != 2) fail("%zu nodes", count);
    cudaGraphNode_t nodes[2];
    CHECK(cudaGraphGetNodes(g, nodes, &count));
    int n = N, k = 9;
    void *args[] = {&d, &n, &k};
    cudaKernelNodeParams kp = {};
    kp.func = (void *)scale;
    kp.gridDim = dim3(N / 256);
    kp.blockDim = dim3(256);
    kp.kernelParams = args;
    CHECK(cudaGraphExecKernelNodeSetParams(e, nodes[0], &kp));
    expect(s, e, d, 9, 1, "a kernel node's parameters set in the instantiation");

    // Another shape: refused, and the instantiation runs on as it was.
    cudaGraph_t g3 = capture(s, d, 3, 7);
    cudaError_t r = cudaGraphExecUpdate(e, g3, &info);
    if (r != cudaErrorGraphExecUpdateFailure || info.result != cudaGraphExecUpdateErrorTopologyChanged)
        fail("another shape: %s, result %d", cudaGetErrorName(r), (int)info.result);
    cudaGetLastError();
    expect(s, e, d, 9, 1, "after a refused update");

    // In the graph itself, then instantiated anew.
    k = 4;
    CHECK(cudaGraphKernelNodeSetParams(nodes[0], &kp));
    cudaGraphExec_t e2;
    CHECK(cudaGraphInstantiate(&e2, g, 0));
    expect(s, e2, d, 4, 1, "a kernel node's parameters set in the graph");

    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphExecDestroy(e2));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaGraphDestroy(g2));
    CHECK(cudaGraphDestroy(g3));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFree(d));
    return finish();
}
