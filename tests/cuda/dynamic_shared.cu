// Dynamic shared memory (`extern __shared__`) sized at launch: block-local reversal with
// several block sizes and a ragged last block, one dynamic buffer carved into arrays of
// different types, static and dynamic shared memory in the same kernel (must not overlap),
// and more than 48 KiB of dynamic shared memory after opting in with
// cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize).
#define TEST_NAME "dynamic_shared"
#include "check.cuh"

#include <vector>

__global__ void reverse_block(const int *in, int *out, int n) {
    extern __shared__ int s[];
    const int base = blockIdx.x * blockDim.x;
    const int count = min((int)blockDim.x, n - base);
    const int t = threadIdx.x;
    if (t < count) s[t] = in[base + t];
    __syncthreads();
    if (t < count) out[base + t] = s[count - 1 - t];
}

// One dynamic buffer split into doubles, then ints, then chars (in decreasing alignment).
__global__ void carved(const int *in, double *out_d, int *out_i, int *out_c) {
    extern __shared__ __align__(16) unsigned char raw[];
    const int nt = blockDim.x;
    double *sd = reinterpret_cast<double *>(raw);
    int *si = reinterpret_cast<int *>(raw + nt * sizeof(double));
    char *sc = reinterpret_cast<char *>(raw + nt * (sizeof(double) + sizeof(int)));
    const int t = threadIdx.x;
    const int g = blockIdx.x * nt + t;
    const int v = in[g];
    sd[t] = v * 0.5;
    si[t] = v * 3;
    sc[t] = (char)(v & 0x7f);
    __syncthreads();
    const int u = (t + 1) % nt;  // read a neighbour's values
    out_d[g] = sd[u];
    out_i[g] = si[u];
    out_c[g] = sc[u];
}

// Static and dynamic shared memory together.
__global__ void static_and_dynamic(int *out) {
    __shared__ int stat[64];
    extern __shared__ int dyn[];
    const int t = threadIdx.x;  // blockDim.x == 64
    stat[t] = 1000 + t;
    dyn[t] = -t;
    dyn[t + 64] = 5000 + t;
    __syncthreads();
    out[blockIdx.x * 192 + t] = stat[63 - t];
    out[blockIdx.x * 192 + 64 + t] = dyn[63 - t];
    out[blockIdx.x * 192 + 128 + t] = dyn[127 - t];
}

// Reverses `count` ints within one block using a large dynamic shared buffer.
__global__ void reverse_large(const int *in, int *out, int count) {
    extern __shared__ int big[];
    for (int k = threadIdx.x; k < count; k += blockDim.x) big[k] = in[k];
    __syncthreads();
    for (int k = threadIdx.x; k < count; k += blockDim.x) out[k] = big[count - 1 - k];
}

static void test_reverse(int n, int block) {
    std::vector<int> h(n), got(n), want(n);
    for (int i = 0; i < n; ++i) h[i] = i * 31 - 7;
    const int grid = (n + block - 1) / block;
    for (int b = 0; b < grid; ++b) {
        const int base = b * block;
        const int count = n - base < block ? n - base : block;
        for (int t = 0; t < count; ++t) want[base + t] = h[base + count - 1 - t];
    }
    int *d_in, *d_out;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_out, n * sizeof(int)));
    CHECK(cudaMemcpy(d_in, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0, n * sizeof(int)));
    reverse_block<<<grid, block, block * sizeof(int)>>>(d_in, d_out, n);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(got.data(), d_out, n * sizeof(int), cudaMemcpyDeviceToHost));
    char what[64];
    snprintf(what, sizeof what, "reverse_block n=%d block=%d", n, block);
    compare_exact(what, want.data(), got.data(), n);
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
}

static void test_carved() {
    const int block = 96, grid = 10, n = block * grid;
    std::vector<int> h(n);
    for (int i = 0; i < n; ++i) h[i] = (i * 37) % 1000 - 300;
    int *d_in, *d_i, *d_c;
    double *d_d;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_i, n * sizeof(int)));
    CHECK(cudaMalloc(&d_c, n * sizeof(int)));
    CHECK(cudaMalloc(&d_d, n * sizeof(double)));
    CHECK(cudaMemcpy(d_in, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    const size_t shmem = block * (sizeof(double) + sizeof(int) + sizeof(char));
    carved<<<grid, block, shmem>>>(d_in, d_d, d_i, d_c);
    CHECK_LAUNCH();
    std::vector<double> gd(n), wd(n);
    std::vector<int> gi(n), wi(n), gc(n), wc(n);
    CHECK(cudaMemcpy(gd.data(), d_d, n * sizeof(double), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(gi.data(), d_i, n * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(gc.data(), d_c, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int b = 0; b < grid; ++b)
        for (int t = 0; t < block; ++t) {
            const int v = h[b * block + (t + 1) % block];
            wd[b * block + t] = v * 0.5;
            wi[b * block + t] = v * 3;
            wc[b * block + t] = (char)(v & 0x7f);
        }
    compare_close("carved doubles", wd.data(), gd.data(), n, 0.0);
    compare_exact("carved ints", wi.data(), gi.data(), n);
    compare_exact("carved chars", wc.data(), gc.data(), n);
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_i));
    CHECK(cudaFree(d_c));
    CHECK(cudaFree(d_d));
}

static void test_static_and_dynamic() {
    const int grid = 3;
    int *d_out;
    CHECK(cudaMalloc(&d_out, grid * 192 * sizeof(int)));
    static_and_dynamic<<<grid, 64, 128 * sizeof(int)>>>(d_out);
    CHECK_LAUNCH();
    std::vector<int> got(grid * 192), want(grid * 192);
    CHECK(cudaMemcpy(got.data(), d_out, got.size() * sizeof(int), cudaMemcpyDeviceToHost));
    for (int b = 0; b < grid; ++b)
        for (int t = 0; t < 64; ++t) {
            want[b * 192 + t] = 1000 + 63 - t;
            want[b * 192 + 64 + t] = -(63 - t);
            want[b * 192 + 128 + t] = 5000 + 63 - t;
        }
    compare_exact("static_and_dynamic", want.data(), got.data(), got.size());
    CHECK(cudaFree(d_out));
}

static void test_large() {
    int optin = 0;
    CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    size_t bytes = 96 * 1024;
    if ((size_t)optin < bytes) bytes = (size_t)optin & ~(size_t)4095;
    if (bytes <= 48 * 1024) {
        printf("note: cudaDevAttrMaxSharedMemoryPerBlockOptin = %d, skipping > 48 KiB test\n",
               optin);
        return;
    }
    const int count = (int)(bytes / sizeof(int));
    std::vector<int> h(count), got(count), want(count);
    for (int k = 0; k < count; ++k) h[k] = k ^ 0x5555;
    for (int k = 0; k < count; ++k) want[k] = h[count - 1 - k];
    int *d_in, *d_out;
    CHECK(cudaMalloc(&d_in, bytes));
    CHECK(cudaMalloc(&d_out, bytes));
    CHECK(cudaMemcpy(d_in, h.data(), bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0, bytes));

    // Without opting in, more than 48 KiB must be refused at launch (not a sticky error).
    reverse_large<<<1, 1024, bytes>>>(d_in, d_out, count);
    const cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        CHECK(cudaDeviceSynchronize());
        fail("launch with %zu bytes of dynamic shared memory succeeded without "
             "cudaFuncAttributeMaxDynamicSharedMemorySize", bytes);
    } else {
        printf("note: launch with %zu B dynamic shared memory before opting in: %s\n", bytes,
               cudaGetErrorName(e));
    }

    CHECK(cudaFuncSetAttribute(reverse_large, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               (int)bytes));
    cudaFuncAttributes attr;
    CHECK(cudaFuncGetAttributes(&attr, reverse_large));
    if ((size_t)attr.maxDynamicSharedSizeBytes != bytes)
        fail("cudaFuncGetAttributes maxDynamicSharedSizeBytes: expected %zu got %d", bytes,
             attr.maxDynamicSharedSizeBytes);
    reverse_large<<<1, 1024, bytes>>>(d_in, d_out, count);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(got.data(), d_out, bytes, cudaMemcpyDeviceToHost));
    compare_exact("reverse_large (opt-in dynamic shared)", want.data(), got.data(), count);
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
}

int main() {
    test_reverse(4096, 256);
    test_reverse(1000, 100);
    test_reverse(5000, 1024);  // ragged last block
    test_reverse(77, 32);
    test_carved();
    test_static_and_dynamic();
    test_large();
    return finish();
}
