// Function attributes and occupancy: cudaFuncGetAttributes (maxThreadsPerBlock honouring
// __launch_bounds__, numRegs, static sharedSizeBytes, default maxDynamicSharedSizeBytes,
// PTX/binary versions), cudaFuncSetCacheConfig, cudaFuncSetAttribute (carveout),
// cudaOccupancyMaxActiveBlocksPerMultiprocessor, cudaOccupancyMaxPotentialBlockSize,
// cudaOccupancyAvailableDynamicSMemPerBlock, explicit cudaLaunchKernel, and a launch above a
// kernel's __launch_bounds__ being refused.
#define TEST_NAME "occupancy_attrs"
#include "check.cuh"

#include <vector>

constexpr int kTile = 512;

// Static shared memory (2 KiB) and a 256-thread launch bound.
__global__ void __launch_bounds__(256) tiled(const float *in, float *out, int n) {
    __shared__ float tile[kTile];
    const int base = blockIdx.x * kTile;
    for (int k = threadIdx.x; k < kTile; k += blockDim.x)
        tile[k] = base + k < n ? in[base + k] : 0.0f;
    __syncthreads();
    for (int k = threadIdx.x; k < kTile; k += blockDim.x)
        if (base + k < n) out[base + k] = tile[kTile - 1 - k] + tile[k];
}

__global__ void plain(int *out, int n, int mul) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        out[i] = i * mul;
}

static void print_attrs(const char *name, const cudaFuncAttributes &a) {
    printf("%s: maxThreadsPerBlock=%d numRegs=%d sharedSizeBytes=%zu constSizeBytes=%zu "
           "localSizeBytes=%zu maxDynamicSharedSizeBytes=%d ptxVersion=%d binaryVersion=%d\n",
           name, a.maxThreadsPerBlock, a.numRegs, a.sharedSizeBytes, a.constSizeBytes,
           a.localSizeBytes, a.maxDynamicSharedSizeBytes, a.ptxVersion, a.binaryVersion);
}

static void test_attributes(const cudaDeviceProp &prop) {
    cudaFuncAttributes a;
    memset(&a, 0xff, sizeof a);
    CHECK(cudaFuncGetAttributes(&a, tiled));
    print_attrs("tiled", a);
    if (a.maxThreadsPerBlock <= 0 || a.maxThreadsPerBlock > 256)
        fail("tiled: maxThreadsPerBlock %d, expected 1..256 (__launch_bounds__(256))",
             a.maxThreadsPerBlock);
    if (a.numRegs < 0) fail("tiled: numRegs %d < 0", a.numRegs);
    if (a.sharedSizeBytes < kTile * sizeof(float) || a.sharedSizeBytes > kTile * sizeof(float) + 1024)
        fail("tiled: sharedSizeBytes %zu, expected about %zu", a.sharedSizeBytes, kTile * sizeof(float));
    if (a.maxDynamicSharedSizeBytes <= 0 ||
        (size_t)a.maxDynamicSharedSizeBytes + a.sharedSizeBytes > prop.sharedMemPerBlock)
        fail("tiled: maxDynamicSharedSizeBytes %d (static %zu, per-block limit %zu)",
             a.maxDynamicSharedSizeBytes, a.sharedSizeBytes, prop.sharedMemPerBlock);
    if (a.ptxVersion <= 0) fail("tiled: ptxVersion %d", a.ptxVersion);
    if (a.binaryVersion <= 0) fail("tiled: binaryVersion %d", a.binaryVersion);

    memset(&a, 0xff, sizeof a);
    CHECK(cudaFuncGetAttributes(&a, plain));
    print_attrs("plain", a);
    if (a.maxThreadsPerBlock != 1024)
        fail("plain: maxThreadsPerBlock %d, expected 1024", a.maxThreadsPerBlock);
    if (a.numRegs < 0) fail("plain: numRegs %d < 0", a.numRegs);
    if (a.sharedSizeBytes != 0) fail("plain: sharedSizeBytes %zu, expected 0", a.sharedSizeBytes);
    if (a.localSizeBytes != 0) fail("plain: localSizeBytes %zu, expected 0", a.localSizeBytes);

    CHECK(cudaFuncSetCacheConfig(plain, cudaFuncCachePreferShared));
    CHECK(cudaFuncSetAttribute(plain, cudaFuncAttributePreferredSharedMemoryCarveout, 50));
}

static void test_occupancy(const cudaDeviceProp &prop) {
    int blocks = 0;
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, tiled, 256, 0));
    printf("tiled: %d active blocks of 256 threads per SM\n", blocks);
    if (blocks <= 0) fail("cudaOccupancyMaxActiveBlocksPerMultiprocessor(tiled, 256) = %d", blocks);
    if (blocks * 256 > prop.maxThreadsPerMultiProcessor)
        fail("tiled: %d blocks x 256 threads exceed maxThreadsPerMultiProcessor %d", blocks,
             prop.maxThreadsPerMultiProcessor);
    int blocks_dyn = 0;
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_dyn, tiled, 256, 16 * 1024));
    if (blocks_dyn <= 0 || blocks_dyn > blocks)
        fail("tiled with 16 KiB dynamic shared: %d blocks per SM (without: %d)", blocks_dyn, blocks);
    int blocks_plain = 0;
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_plain, plain, 128, 0));
    if (blocks_plain <= 0 || blocks_plain * 128 > prop.maxThreadsPerMultiProcessor)
        fail("plain: %d blocks of 128 threads per SM", blocks_plain);

    int min_grid = 0, block = 0;
    CHECK(cudaOccupancyMaxPotentialBlockSize(&min_grid, &block, plain, 0, 0));
    printf("plain: cudaOccupancyMaxPotentialBlockSize -> block %d, min grid %d\n", block, min_grid);
    if (block < 32 || block > 1024 || block % 32 != 0)
        fail("plain: suggested block size %d", block);
    if (min_grid <= 0) fail("plain: suggested min grid %d", min_grid);
    int min_grid_t = 0, block_t = 0;
    CHECK(cudaOccupancyMaxPotentialBlockSize(&min_grid_t, &block_t, tiled, 0, 0));
    if (block_t < 32 || block_t > 256 || block_t % 32 != 0)
        fail("tiled: suggested block size %d, expected a multiple of 32 <= 256", block_t);

    size_t dyn = 0;
    CHECK(cudaOccupancyAvailableDynamicSMemPerBlock(&dyn, tiled, 1, 256));
    if (dyn == 0) fail("cudaOccupancyAvailableDynamicSMemPerBlock(tiled) = 0");

    // Use the suggested configuration.
    const int n = 20000;
    int *d;
    CHECK(cudaMalloc(&d, n * sizeof(int)));
    CHECK(cudaMemset(d, 0, n * sizeof(int)));
    int grid = min_grid < (n + block - 1) / block ? min_grid : (n + block - 1) / block;
    if (grid > 64) grid = 64;  // keep the emulated run short; the loop is grid-stride
    plain<<<grid, block>>>(d, n, 3);
    CHECK_LAUNCH();
    std::vector<int> got(n), want(n);
    CHECK(cudaMemcpy(got.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) want[i] = 3 * i;
    compare_exact("plain with the suggested block size", want.data(), got.data(), n);

    // Explicit cudaLaunchKernel with an argument array.
    int mul = -5, nn = n;
    void *args[] = {&d, &nn, &mul};
    CHECK(cudaLaunchKernel((const void *)plain, dim3(16), dim3(128), args, 0, nullptr));
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(got.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) want[i] = -5 * i;
    compare_exact("plain via cudaLaunchKernel", want.data(), got.data(), n);
    CHECK(cudaFree(d));
}

static void test_tiled_launches() {
    const int n = 3000;
    std::vector<float> in(n), got(n), want(n);
    for (int i = 0; i < n; ++i) in[i] = (float)(i % 101) - 50.0f;
    const int blocks = (n + kTile - 1) / kTile;
    for (int b = 0; b < blocks; ++b)
        for (int k = 0; k < kTile; ++k) {
            const int i = b * kTile + k;
            if (i >= n) continue;
            const int j = b * kTile + kTile - 1 - k;
            want[i] = (j < n ? in[j] : 0.0f) + in[i];
        }
    float *d_in, *d_out;
    CHECK(cudaMalloc(&d_in, n * sizeof(float)));
    CHECK(cudaMalloc(&d_out, n * sizeof(float)));
    CHECK(cudaMemcpy(d_in, in.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    tiled<<<blocks, 256>>>(d_in, d_out, n);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(got.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost));
    compare_close("tiled (256 threads)", want.data(), got.data(), n, 0.0);
    CHECK(cudaMemset(d_out, 0, n * sizeof(float)));
    tiled<<<blocks, 96>>>(d_in, d_out, n);  // fewer threads than the bound is fine
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(got.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost));
    compare_close("tiled (96 threads)", want.data(), got.data(), n, 0.0);

    // More threads than __launch_bounds__ allows: the launch is refused.
    tiled<<<blocks, 512>>>(d_in, d_out, n);
    const cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        CHECK(cudaDeviceSynchronize());
        fail("tiled launched with 512 threads despite __launch_bounds__(256)");
    } else {
        printf("note: tiled with 512 threads (__launch_bounds__(256)): %s\n", cudaGetErrorName(e));
    }
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
}

int main() {
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    test_attributes(prop);
    test_occupancy(prop);
    test_tiled_launches();
    return finish();
}
