// Stream attributes: an L2 access-policy window, the synchronisation policy and the
// priority read back as set (or as made), copied to another stream, refused for an
// out-of-range hit ratio; kernels on the streams still give the right results.
#define TEST_NAME "stream_attrs"
#include "check.cuh"

__global__ void scale(float *x, int n, float k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= k;
}

int main() {
    const int n = 4096;
    float *d;
    CHECK(cudaMalloc(&d, n * sizeof(float)));
    cudaStream_t s, t;
    int low, high;
    CHECK(cudaDeviceGetStreamPriorityRange(&low, &high));
    CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, high));
    CHECK(cudaStreamCreate(&t));

    cudaStreamAttrValue v = {};
    v.accessPolicyWindow.base_ptr = d;
    v.accessPolicyWindow.num_bytes = n * sizeof(float);
    v.accessPolicyWindow.hitRatio = 0.6f;
    v.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
    v.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
    CHECK(cudaStreamSetAttribute(s, cudaStreamAttributeAccessPolicyWindow, &v));
    cudaStreamAttrValue got = {};
    CHECK(cudaStreamGetAttribute(s, cudaStreamAttributeAccessPolicyWindow, &got));
    if (got.accessPolicyWindow.base_ptr != d || got.accessPolicyWindow.num_bytes != n * sizeof(float) ||
        got.accessPolicyWindow.hitRatio != 0.6f || got.accessPolicyWindow.hitProp != cudaAccessPropertyPersisting)
        fail("the access policy window did not read back as set");
    CHECK(cudaStreamGetAttribute(s, cudaStreamAttributeSynchronizationPolicy, &got));
    // Never set: xpupool answers Auto; NVIDIA's driver 580 answers -1.
    if (got.syncPolicy != cudaSyncPolicyAuto && (int)got.syncPolicy != -1)
        fail("default sync policy %d", (int)got.syncPolicy);
    v.syncPolicy = cudaSyncPolicyYield;
    CHECK(cudaStreamSetAttribute(s, cudaStreamAttributeSynchronizationPolicy, &v));
    CHECK(cudaStreamGetAttribute(s, cudaStreamAttributeSynchronizationPolicy, &got));
    if (got.syncPolicy != cudaSyncPolicyYield) fail("sync policy %d after setting yield", (int)got.syncPolicy);
    CHECK(cudaStreamGetAttribute(s, cudaStreamAttributePriority, &got));
    if (got.priority != high) fail("priority %d, created with %d", got.priority, high);

    CHECK(cudaStreamCopyAttributes(t, s));
    CHECK(cudaStreamGetAttribute(t, cudaStreamAttributeAccessPolicyWindow, &got));
    if (got.accessPolicyWindow.base_ptr != d) fail("the window was not copied");

    cudaStreamAttrValue bad = {};
    bad.accessPolicyWindow.hitRatio = 1.5f;
    if (cudaStreamSetAttribute(s, cudaStreamAttributeAccessPolicyWindow, &bad) != cudaErrorInvalidValue)
        fail("a hit ratio of 1.5 was taken");
    cudaGetLastError();

    float h[n];
    for (int i = 0; i < n; ++i) h[i] = (float)i;
    CHECK(cudaMemcpyAsync(d, h, sizeof h, cudaMemcpyHostToDevice, s));
    scale<<<(n + 255) / 256, 256, 0, s>>>(d, n, 2.0f);
    CHECK(cudaStreamSynchronize(s));
    scale<<<(n + 255) / 256, 256, 0, t>>>(d, n, 3.0f);
    CHECK(cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, t));
    CHECK(cudaStreamSynchronize(t));
    for (int i = 0; i < n; ++i)
        if (h[i] != 6.0f * i) { fail("h[%d] = %f", i, h[i]); break; }
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaStreamDestroy(t));
    CHECK(cudaFree(d));
    return finish();
}
