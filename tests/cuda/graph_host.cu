// Graph steps that run in the client: a capture holding a copy from pinned host memory,
// a kernel, a copy back and a host function, replayed with new host input each time
// (host memory is read and written when the graph runs, not when it was captured);
// and a host node added by hand, its function called once per launch, in order.
#define TEST_NAME "graph_host"
#include "check.cuh"

__global__ void twice(float *x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= 2.0f;
}

static int calls = 0;
static void CUDART_CB count(void *data) { *(int *)data += 1; }

int main() {
    const int n = 1024;
    float *hin, *hout, *d;
    CHECK(cudaMallocHost(&hin, n * sizeof(float)));
    CHECK(cudaMallocHost(&hout, n * sizeof(float)));
    CHECK(cudaMalloc(&d, n * sizeof(float)));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    for (int i = 0; i < n; ++i) hin[i] = -1.0f;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CHECK(cudaMemcpyAsync(d, hin, n * sizeof(float), cudaMemcpyHostToDevice, s));
    twice<<<(n + 255) / 256, 256, 0, s>>>(d, n);
    CHECK(cudaMemcpyAsync(hout, d, n * sizeof(float), cudaMemcpyDeviceToHost, s));
    CHECK(cudaLaunchHostFunc(s, count, &calls));
    cudaGraph_t g;
    CHECK(cudaStreamEndCapture(s, &g));
    if (calls != 0) fail("the host function ran during the capture");
    cudaGraphExec_t e;
    CHECK(cudaGraphInstantiate(&e, g, 0));
    for (int r = 0; r < 5; ++r) {
        for (int i = 0; i < n; ++i) hin[i] = (float)(r * 10 + i);
        CHECK(cudaGraphLaunch(e, s));
        CHECK(cudaStreamSynchronize(s));
        if (calls != r + 1) fail("replay %d: the host function ran %d times", r, calls);
        for (int i = 0; i < n; ++i)
            if (hout[i] != 2.0f * (r * 10 + i)) { fail("replay %d: out[%d] = %f", r, i, hout[i]); break; }
    }

    // A host node added by hand, after a kernel node.
    cudaGraph_t h;
    CHECK(cudaGraphCreate(&h, 0));
    int n_ = n;
    void *args[] = {&d, &n_};
    cudaKernelNodeParams kp = {};
    kp.func = (void *)twice;
    kp.gridDim = dim3((n + 255) / 256);
    kp.blockDim = dim3(256);
    kp.kernelParams = args;
    cudaGraphNode_t k, host;
    CHECK(cudaGraphAddKernelNode(&k, h, nullptr, 0, &kp));
    cudaHostNodeParams hp = {};
    hp.fn = count;
    hp.userData = &calls;
    CHECK(cudaGraphAddHostNode(&host, h, &k, 1, &hp));
    cudaGraphNodeType type;
    CHECK(cudaGraphNodeGetType(host, &type));
    if (type != cudaGraphNodeTypeHost) fail("the host node is of type %d", (int)type);
    cudaGraphExec_t he;
    CHECK(cudaGraphInstantiate(&he, h, 0));
    const int before = calls;
    for (int r = 0; r < 3; ++r) CHECK(cudaGraphLaunch(he, s));
    CHECK(cudaStreamSynchronize(s));
    if (calls != before + 3) fail("the host node ran %d times for 3 launches", calls - before);

    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphExecDestroy(he));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaGraphDestroy(h));
    return finish();
}
