// Graph memory: cudaMallocAsync and cudaFreeAsync captured into a graph (allocation and
// free nodes), a kernel writing the graph's allocation and a copy out of it, replayed
// with new inputs; the same built node by node (cudaGraphAddMemAllocNode/FreeNode) with
// the node's parameters read back; the device's graph memory figures while graphs hold
// memory and after they are destroyed; an allocation its graph does not free, freed by the
// application after the graph went. On a small device (`xpupool run --memory-limit
// 64MiB`) a graph allocation larger than the device is refused, at capture or at
// instantiation.
#define TEST_NAME "graph_memory"
#include "check.cuh"

__global__ void scaled(int *out, const int *scale, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = *scale * i;
}

static unsigned long long reserved_now() {
    unsigned long long v = 0;
    CHECK(cudaDeviceGetGraphMemAttribute(0, cudaGraphMemAttrReservedMemCurrent, &v));
    return v;
}

static void check_out(const int *d_out, int n, int scale, const char *what) {
    int *h = (int *)malloc(n * sizeof(int));
    CHECK(cudaMemcpy(h, d_out, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i)
        if (h[i] != scale * i) {
            fail("%s: [%d] expected %d got %d", what, i, scale * i, h[i]);
            break;
        }
    free(h);
}

int main() {
    const int n = 1 << 16;
    const size_t bytes = n * sizeof(int);
    int *d_out, *d_scale;
    CHECK(cudaMalloc((void **)&d_out, bytes));
    CHECK(cudaMalloc((void **)&d_scale, sizeof(int)));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    size_t free0, total;
    CHECK(cudaMemGetInfo(&free0, &total));

    // Captured: allocate, compute into it, copy out, free.
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    int *tmp = nullptr;
    CHECK(cudaMallocAsync((void **)&tmp, bytes, s));
    scaled<<<(n + 255) / 256, 256, 0, s>>>(tmp, d_scale, n);
    CHECK(cudaMemcpyAsync(d_out, tmp, bytes, cudaMemcpyDeviceToDevice, s));
    CHECK(cudaFreeAsync(tmp, s));
    CHECK(cudaStreamEndCapture(s, &g));
    size_t count = 0;
    CHECK(cudaGraphGetNodes(g, nullptr, &count));
    if (count != 4) fail("the captured graph has %zu nodes, not 4", count);
    cudaGraphExec_t exec;
    CHECK(cudaGraphInstantiate(&exec, g, 0));
    for (int scale = 1; scale <= 3; ++scale) {
        CHECK(cudaMemcpy(d_scale, &scale, sizeof(int), cudaMemcpyHostToDevice));
        CHECK(cudaGraphLaunch(exec, s));
        CHECK(cudaStreamSynchronize(s));
        check_out(d_out, n, scale, "captured graph");
    }
    if (reserved_now() < bytes) fail("graph memory reserved %llu, the graph allocates %zu", reserved_now(), bytes);
    size_t free1;
    CHECK(cudaMemGetInfo(&free1, &total));
    // The mock accounts to the byte; a real driver's free figure moves in its own granules
    // and may serve a small allocation from one it already holds (seen through xpupool's
    // cuda backend on an H100), so there it is only noted.
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    if (strstr(prop.name, "xpupool mock") == nullptr)
        printf("note: cudaMemGetInfo moved by %zu with %zu of graph memory\n", free0 - free1, bytes);
    else if (free0 - free1 < bytes)
        fail("cudaMemGetInfo moved by %zu with %zu of graph memory", free0 - free1, bytes);

    // Built node by node.
    cudaGraph_t b;
    CHECK(cudaGraphCreate(&b, 0));
    cudaMemAllocNodeParams ap = {};
    ap.poolProps.allocType = cudaMemAllocationTypePinned;
    ap.poolProps.location.type = cudaMemLocationTypeDevice;
    ap.poolProps.location.id = 0;
    ap.bytesize = bytes;
    cudaGraphNode_t alloc, kernel, copy, release;
    CHECK(cudaGraphAddMemAllocNode(&alloc, b, nullptr, 0, &ap));
    if (ap.dptr == nullptr) fail("no address from the allocation node");
    int *buf = (int *)ap.dptr;
    int nn = n;
    void *args[] = {&buf, &d_scale, &nn};
    cudaKernelNodeParams kp = {};
    kp.func = (void *)scaled;
    kp.gridDim = dim3((n + 255) / 256);
    kp.blockDim = dim3(256);
    kp.kernelParams = args;
    CHECK(cudaGraphAddKernelNode(&kernel, b, &alloc, 1, &kp));
    CHECK(cudaGraphAddMemcpyNode1D(&copy, b, &kernel, 1, d_out, buf, bytes, cudaMemcpyDeviceToDevice));
    CHECK(cudaGraphAddMemFreeNode(&release, b, &copy, 1, buf));
    cudaMemAllocNodeParams got = {};
    CHECK(cudaGraphMemAllocNodeGetParams(alloc, &got));
    if (got.dptr != ap.dptr || got.bytesize != bytes) fail("allocation node parameters read back differ");
    void *freed = nullptr;
    CHECK(cudaGraphMemFreeNodeGetParams(release, &freed));
    if (freed != ap.dptr) fail("free node frees %p, not %p", freed, ap.dptr);
    cudaGraphExec_t bexec;
    CHECK(cudaGraphInstantiate(&bexec, b, 0));
    const int seven = 7;
    CHECK(cudaMemcpy(d_scale, &seven, sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaGraphLaunch(bexec, s));
    CHECK(cudaStreamSynchronize(s));
    check_out(d_out, n, 7, "built graph");

    // Destroyed, both: no graph memory left once trimmed.
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaGraphExecDestroy(bexec));
    CHECK(cudaGraphDestroy(b));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaDeviceGraphMemTrim(0));
    if (reserved_now() != 0) fail("graph memory reserved after every graph went: %llu", reserved_now());

    // An allocation its graph does not free outlives the graph: the application's, freed
    // as any allocation (PyTorch frees its captured tensors so at exit), and only once.
    {
        CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        int *kept = nullptr;
        CHECK(cudaMallocAsync((void **)&kept, bytes, s));
        scaled<<<(n + 255) / 256, 256, 0, s>>>(kept, d_scale, n);
        cudaGraph_t kg;
        CHECK(cudaStreamEndCapture(s, &kg));
        cudaGraphExec_t ke;
        CHECK(cudaGraphInstantiate(&ke, kg, 0));
        CHECK(cudaGraphLaunch(ke, s));
        CHECK(cudaStreamSynchronize(s));
        // Freed by the application, then allocated again by a second launch.
        CHECK(cudaFreeAsync(kept, s));
        CHECK(cudaGraphLaunch(ke, s));
        CHECK(cudaStreamSynchronize(s));
        CHECK(cudaGraphExecDestroy(ke));
        CHECK(cudaGraphDestroy(kg));
        check_out(kept, n, 7, "an unfreed graph allocation after its graph went");
        CHECK(cudaFreeAsync(kept, s));
        CHECK(cudaStreamSynchronize(s));
        if (cudaFree(kept) == cudaSuccess) fail("a graph allocation was freed twice");
        cudaGetLastError();

        // One whose graph never ran was never the application's.
        cudaGraph_t ng;
        CHECK(cudaGraphCreate(&ng, 0));
        cudaMemAllocNodeParams np = {};
        np.poolProps.allocType = cudaMemAllocationTypePinned;
        np.poolProps.location.type = cudaMemLocationTypeDevice;
        np.poolProps.location.id = 0;
        np.bytesize = bytes;
        cudaGraphNode_t alloc;
        CHECK(cudaGraphAddMemAllocNode(&alloc, ng, nullptr, 0, &np));
        CHECK(cudaGraphDestroy(ng));
        if (cudaFree(np.dptr) == cudaSuccess) fail("freed the allocation of a graph that never ran");
        cudaGetLastError();
        CHECK(cudaDeviceGraphMemTrim(0));
        if (reserved_now() != 0) fail("graph memory reserved after a graph that never ran went: %llu", reserved_now());
    }

    // On a small device: more than it has, refused.
    if (total <= (256u << 20)) {
        const size_t huge = total + (16u << 20);
        CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        void *big = nullptr;
        cudaError_t r = cudaMallocAsync(&big, huge, s);
        cudaGraph_t bg = nullptr;
        cudaError_t end = cudaStreamEndCapture(s, &bg);
        if (r == cudaSuccess && end == cudaSuccess) {
            cudaGraphExec_t be;
            r = cudaGraphInstantiate(&be, bg, 0);
            if (r == cudaSuccess) cudaGraphExecDestroy(be);
        }
        if (bg) cudaGraphDestroy(bg);
        if (r != cudaErrorMemoryAllocation) fail("a graph allocation of %zu on a %zu-byte device: %s", huge, total, cudaGetErrorName(r));
        cudaGetLastError();
        printf("refused a graph allocation larger than the device\n");
    }
    CHECK(cudaFree(d_out));
    CHECK(cudaFree(d_scale));
    CHECK(cudaStreamDestroy(s));
    return finish();
}
