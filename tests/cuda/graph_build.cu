// CUDA graphs built node by node: a diamond (memset, then two kernels side by side,
// then a kernel joining them), a device-to-device copy node, an empty node, a child
// graph, event record and wait nodes, and a dependency added afterwards; node types
// and counts read back; instantiated and replayed 20 times with every result checked;
// a dependency that closes a cycle accepted, the graph then refusing to instantiate until
// it is removed (as the driver does).
#define TEST_NAME "graph_build"
#include "check.cuh"

__global__ void set_to(int *a, int n, int v) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = v + i;
}
__global__ void add_into(int *c, const int *a, const int *b, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] += a[i] + b[i];
}
__global__ void times(int *a, int n, int k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] *= k;
}

static cudaKernelNodeParams kernel(void *f, int n, void **args) {
    cudaKernelNodeParams p = {};
    p.func = f;
    p.gridDim = dim3((n + 127) / 128);
    p.blockDim = dim3(128);
    p.kernelParams = args;
    return p;
}

int main() {
    const int n = 777;
    int *a, *b, *c, *d;
    CHECK(cudaMalloc(&a, n * sizeof(int)));
    CHECK(cudaMalloc(&b, n * sizeof(int)));
    CHECK(cudaMalloc(&c, n * sizeof(int)));
    CHECK(cudaMalloc(&d, n * sizeof(int)));
    CHECK(cudaMemset(c, 0, n * sizeof(int)));

    cudaGraph_t g;
    CHECK(cudaGraphCreate(&g, 0));
    // a = 0 (memset), then a = 5+i and b = 100+i side by side, then c += a + b.
    cudaMemsetParams ms = {};
    ms.dst = a;
    ms.value = 0;
    ms.elementSize = 4;
    ms.width = n;
    ms.height = 1;
    cudaGraphNode_t zero, fa, fb, join, copy, empty, child, rec, wait;
    CHECK(cudaGraphAddMemsetNode(&zero, g, nullptr, 0, &ms));
    int n_ = n, five = 5, hundred = 100;
    void *args_a[] = {&a, &n_, &five};
    void *args_b[] = {&b, &n_, &hundred};
    cudaKernelNodeParams pa = kernel((void *)set_to, n, args_a), pb = kernel((void *)set_to, n, args_b);
    CHECK(cudaGraphAddKernelNode(&fa, g, &zero, 1, &pa));
    CHECK(cudaGraphAddKernelNode(&fb, g, nullptr, 0, &pb));
    cudaGraphNode_t both[] = {fa, fb};
    void *args_j[] = {&c, &a, &b, &n_};
    cudaKernelNodeParams pj = kernel((void *)add_into, n, args_j);
    CHECK(cudaGraphAddKernelNode(&join, g, both, 2, &pj));
    // d = c (copy), then an empty node, then a child graph that doubles d.
    CHECK(cudaGraphAddMemcpyNode1D(&copy, g, &join, 1, d, c, n * sizeof(int), cudaMemcpyDeviceToDevice));
    CHECK(cudaGraphAddEmptyNode(&empty, g, &copy, 1));
    cudaGraph_t sub;
    CHECK(cudaGraphCreate(&sub, 0));
    int two = 2;
    void *args_t[] = {&d, &n_, &two};
    cudaKernelNodeParams pt = kernel((void *)times, n, args_t);
    cudaGraphNode_t doubling;
    CHECK(cudaGraphAddKernelNode(&doubling, sub, nullptr, 0, &pt));
    CHECK(cudaGraphAddChildGraphNode(&child, g, &empty, 1, sub));
    cudaEvent_t ev;
    CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    CHECK(cudaGraphAddEventRecordNode(&rec, g, &child, 1, ev));
    CHECK(cudaGraphAddEventWaitNode(&wait, g, nullptr, 0, ev));
    // A dependency added afterwards: the wait comes after the record.
    CHECK(cudaGraphAddDependencies(g, &rec, &wait, nullptr, 1));
    // One that closes a cycle is accepted (the driver does not look, seen with driver 580),
    // and the graph then fails to instantiate until it is removed again.
    CHECK(cudaGraphAddDependencies(g, &join, &zero, nullptr, 1));
    cudaGraphExec_t cyclic = nullptr;
    if (cudaGraphInstantiate(&cyclic, g, 0) != cudaErrorInvalidValue) fail("a graph with a cycle instantiated");
    cudaGetLastError();
    CHECK(cudaGraphRemoveDependencies(g, &join, &zero, nullptr, 1));

    size_t count = 0;
    CHECK(cudaGraphGetNodes(g, nullptr, &count));
    if (count != 9) fail("%zu nodes, expected 9", count);
    cudaGraphNodeType type;
    CHECK(cudaGraphNodeGetType(join, &type));
    if (type != cudaGraphNodeTypeKernel) fail("join is of type %d", (int)type);
    CHECK(cudaGraphNodeGetType(child, &type));
    if (type != cudaGraphNodeTypeGraph) fail("child is of type %d", (int)type);
    CHECK(cudaGraphNodeGetType(zero, &type));
    if (type != cudaGraphNodeTypeMemset) fail("zero is of type %d", (int)type);

    cudaGraphExec_t exec;
    CHECK(cudaGraphInstantiate(&exec, g, 0));
    // The child graph was copied when added: changing it now changes nothing.
    CHECK(cudaGraphDestroy(sub));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int h[n];
    for (int r = 1; r <= 20; ++r) {
        CHECK(cudaGraphLaunch(exec, s));
        CHECK(cudaStreamSynchronize(s));
        CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
        for (int i = 0; i < n; ++i)
            if (h[i] != 2 * r * (105 + 2 * i)) {
                fail("replay %d: d[%d] = %d, expected %d", r, i, h[i], 2 * r * (105 + 2 * i));
                r = 21;
                break;
            }
    }
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaEventDestroy(ev));
    return finish();
}
