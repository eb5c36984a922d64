// The stream-ordered allocator: cudaMallocAsync/cudaFreeAsync on a stream with kernels
// and copies between them, the device's default pool and its figures (used now and at
// most, reset of the mark, release threshold, trim), a created pool made the device's
// current one and cudaMallocFromPoolAsync, cudaMemGetInfo moving by what is allocated,
// and what is refused (a pool exportable to other processes, an unknown pool).
#define TEST_NAME "async_pool"
#include "check.cuh"

__global__ void fill(int *out, int n, int base) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = base + 3 * i;
}

static unsigned long long pool_u64(cudaMemPool_t pool, cudaMemPoolAttr attr) {
    unsigned long long v = 0;
    CHECK(cudaMemPoolGetAttribute(pool, attr, &v));
    return v;
}

static void round_trip(cudaStream_t s, int n, int base, cudaMemPool_t from) {
    int *d = nullptr;
    if (from) CHECK(cudaMallocFromPoolAsync((void **)&d, n * sizeof(int), from, s));
    else CHECK(cudaMallocAsync((void **)&d, n * sizeof(int), s));
    fill<<<(n + 255) / 256, 256, 0, s>>>(d, n, base);
    CHECK(cudaGetLastError());
    int *h = (int *)malloc(n * sizeof(int));
    CHECK(cudaMemcpyAsync(h, d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
    CHECK(cudaFreeAsync(d, s));
    CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < n; ++i)
        if (h[i] != base + 3 * i) {
            fail("base %d: [%d] expected %d got %d", base, i, base + 3 * i, h[i]);
            break;
        }
    free(h);
}

int main() {
    int supported = 0;
    CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0));
    if (supported != 1) fail("cudaDevAttrMemoryPoolsSupported is %d", supported);
    int concurrent = -1;
    CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, 0));
    if (!under_xpupool()) printf("note: concurrentManagedAccess %d natively\n", concurrent);
    else if (concurrent != 0) fail("concurrent managed access is not offered, yet the device says %d", concurrent);

    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    for (int round = 0; round < 20; ++round) round_trip(s, 1000 + 37 * round, round * 100, nullptr);

    // The default pool's figures follow what is allocated from it.
    cudaMemPool_t def;
    CHECK(cudaDeviceGetDefaultMemPool(&def, 0));
    cudaMemPool_t cur;
    CHECK(cudaDeviceGetMemPool(&cur, 0));
    if (cur != def) fail("the current pool is not the default one at first");
    if (pool_u64(def, cudaMemPoolAttrUsedMemCurrent) != 0) fail("memory in use after every free");
    const size_t big = 64u << 20;
    size_t free0, total;
    CHECK(cudaMemGetInfo(&free0, &total));
    void *a, *b;
    CHECK(cudaMallocAsync(&a, big, s));
    CHECK(cudaMallocAsync(&b, big / 2, s));
    CHECK(cudaStreamSynchronize(s));
    if (pool_u64(def, cudaMemPoolAttrUsedMemCurrent) != big + big / 2)
        fail("used now %llu, expected %zu", pool_u64(def, cudaMemPoolAttrUsedMemCurrent), big + big / 2);
    if (pool_u64(def, cudaMemPoolAttrReservedMemCurrent) < big + big / 2) fail("reserved below used");
    size_t free1;
    CHECK(cudaMemGetInfo(&free1, &total));
    if (free0 - free1 < big + big / 2 || free0 - free1 > big + big / 2 + (4u << 20))
        fail("cudaMemGetInfo moved by %zu for %zu allocated", free0 - free1, big + big / 2);
    CHECK(cudaFreeAsync(a, s));
    CHECK(cudaStreamSynchronize(s));
    if (pool_u64(def, cudaMemPoolAttrUsedMemCurrent) != big / 2) fail("used after one free");
    if (pool_u64(def, cudaMemPoolAttrUsedMemHigh) < big + big / 2) fail("the high mark forgot");
    unsigned long long zero = 0;
    CHECK(cudaMemPoolSetAttribute(def, cudaMemPoolAttrUsedMemHigh, &zero));
    if (pool_u64(def, cudaMemPoolAttrUsedMemHigh) != big / 2) fail("the high mark was not reset");
    CHECK(cudaFree(b));  // a pool allocation freed the ordinary way
    // xpupool returns it to the pool at once; NVIDIA's driver 580 still counts it here.
    const unsigned long long after_free = pool_u64(def, cudaMemPoolAttrUsedMemCurrent);
    if (!under_xpupool()) printf("note: used after cudaFree of a pool allocation: %llu of %zu\n", after_free, big / 2);
    else if (after_free != 0) fail("cudaFree left it counted");
    unsigned long long keep = ~0ull;
    CHECK(cudaMemPoolSetAttribute(def, cudaMemPoolAttrReleaseThreshold, &keep));
    if (pool_u64(def, cudaMemPoolAttrReleaseThreshold) != keep) fail("release threshold not kept");
    CHECK(cudaMemPoolTrimTo(def, 0));

    // A pool of our own, used directly and as the device's current pool.
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = 0;
    cudaMemPool_t mine;
    CHECK(cudaMemPoolCreate(&mine, &props));
    round_trip(s, 4096, 7, mine);
    CHECK(cudaDeviceSetMemPool(0, mine));
    void *c;
    CHECK(cudaMallocAsync(&c, 1 << 20, s));
    if (pool_u64(mine, cudaMemPoolAttrUsedMemCurrent) != (1 << 20)) fail("not allocated from the current pool");
    if (pool_u64(def, cudaMemPoolAttrUsedMemCurrent) != after_free) fail("allocated from the default pool");
    CHECK(cudaFreeAsync(c, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemPoolDestroy(mine));
    CHECK(cudaDeviceGetMemPool(&cur, 0));
    if (cur != def) fail("the device's pool after its current one was destroyed is not the default");

    // Refused: a pool other processes could import.
    props.handleTypes = cudaMemHandleTypePosixFileDescriptor;
    cudaMemPool_t exported;
    const cudaError_t exportable = cudaMemPoolCreate(&exported, &props);
    if (!under_xpupool()) {
        printf("note: an exportable pool natively: %s\n", cudaGetErrorName(exportable));
        if (exportable == cudaSuccess) CHECK(cudaMemPoolDestroy(exported));
    } else if (exportable != cudaErrorNotSupported) {
        fail("an exportable pool was made");
    }
    cudaGetLastError();
    round_trip(s, 10, 1, nullptr);  // still healthy
    CHECK(cudaStreamDestroy(s));
    return finish();
}
