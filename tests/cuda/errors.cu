// Error reporting, without sticky errors:
//  - bad launch configurations (1025 threads, 0 blocks, 0 threads, 1024x2 threads, blockDim.z
//    65, gridDim.y 65536, too much static+dynamic shared memory) -> cudaErrorInvalidValue, as
//    NVIDIA's driver 580 answers (not cudaErrorInvalidConfiguration, as older documentation
//    suggests; or, for shared memory, some launch error) from cudaGetLastError, which then resets;
//    cudaPeekAtLastError does not reset;
//  - cudaFree of a bogus pointer -> cudaErrorInvalidValue (cudaErrorInvalidDevicePointer also
//    accepted); cudaFree(NULL) succeeds;
//  - cudaMalloc of 2^50 bytes -> cudaErrorMemoryAllocation, pointer left NULL;
//  - cudaMemcpy with an invalid direction, past the end of an allocation, or to NULL -> an error;
//  - after each error a small allocation + kernel + copy still work.
#define TEST_NAME "errors"
#include "check.cuh"

__global__ void iota(int *out, int n, int base) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = base + i;
}

__global__ void shared_hog(int *out) {
    __shared__ int s[8 * 1024];  // 32 KiB static
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Allocates, runs a kernel, checks the result: the context is healthy.
static void expect_healthy(const char *after) {
    const int n = 300;
    int *d = nullptr;
    CHECK(cudaMalloc(&d, n * sizeof(int)));
    iota<<<(n + 127) / 128, 128>>>(d, n, 42);
    CHECK_LAUNCH();
    int h[n];
    CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    CHECK(cudaFree(d));
    for (int i = 0; i < n; ++i)
        if (h[i] != 42 + i) {
            fail("after %s: kernel result [%d] expected %d got %d", after, i, 42 + i, h[i]);
            return;
        }
}

static void expect_error(const char *what, cudaError_t got, cudaError_t want) {
    if (got != want)
        fail("%s: expected %s got %s (%d)", what, cudaGetErrorName(want), cudaGetErrorName(got),
             (int)got);
}

static void test_launch_config() {
    int *d;
    CHECK(cudaMalloc(&d, 4096 * sizeof(int)));

    struct Case {
        const char *name;
        dim3 grid, block;
    } cases[] = {
        {"1025 threads per block", dim3(1), dim3(1025)},
        {"0 blocks", dim3(0), dim3(32)},
        {"0 threads", dim3(1), dim3(0)},
        {"1024x2 threads per block", dim3(1), dim3(1024, 2)},
        {"blockDim.z = 65", dim3(1), dim3(1, 1, 65)},
        {"gridDim.y = 65536", dim3(1, 65536), dim3(32)},
        {"gridDim.z = 0", dim3(1, 1, 0), dim3(32)},
    };
    for (const Case &c : cases) {
        iota<<<c.grid, c.block>>>(d, 4096, 0);
        const cudaError_t peek = cudaPeekAtLastError();
        const cudaError_t peek2 = cudaPeekAtLastError();
        const cudaError_t e = cudaGetLastError();
        const cudaError_t after = cudaGetLastError();
        char what[96];
        snprintf(what, sizeof what, "launch with %s: cudaGetLastError", c.name);
        expect_error(what, e, cudaErrorInvalidValue);
        snprintf(what, sizeof what, "launch with %s: cudaPeekAtLastError", c.name);
        expect_error(what, peek, cudaErrorInvalidValue);
        expect_error(what, peek2, cudaErrorInvalidValue);
        snprintf(what, sizeof what, "launch with %s: second cudaGetLastError", c.name);
        expect_error(what, after, cudaSuccess);
        // Synchronising does not report it again.
        snprintf(what, sizeof what, "launch with %s: cudaDeviceSynchronize", c.name);
        expect_error(what, cudaDeviceSynchronize(), cudaSuccess);
    }

    // 32 KiB static + 32 KiB dynamic > 48 KiB without opt-in: the launch must fail.
    shared_hog<<<1, 64, 32 * 1024>>>(d);
    const cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        fail("launch with 64 KiB of shared memory (no opt-in) succeeded");
        CHECK(cudaDeviceSynchronize());
    } else {
        printf("note: launch with 64 KiB shared memory (no opt-in): %s\n", cudaGetErrorName(e));
    }
    expect_error("cudaGetLastError after the shared-memory launch error", cudaGetLastError(),
                 cudaSuccess);

    // The largest legal block still works.
    iota<<<4, 1024>>>(d, 4096, 7);
    CHECK_LAUNCH();
    int last = 0;
    CHECK(cudaMemcpy(&last, d + 4095, sizeof last, cudaMemcpyDeviceToHost));
    if (last != 7 + 4095) fail("1024-thread launch: d[4095] expected %d got %d", 7 + 4095, last);
    CHECK(cudaFree(d));
    expect_healthy("bad launch configurations");
}

static void test_free_errors() {
    // A pointer that was never allocated (inside no allocation; not dereferenced).
    void *bogus = reinterpret_cast<void *>(static_cast<uintptr_t>(0x7f0000001230ull));
    const cudaError_t e = cudaFree(bogus);
    if (e == cudaErrorInvalidValue || e == cudaErrorInvalidDevicePointer) {
        printf("note: cudaFree(bogus) returned %s\n", cudaGetErrorName(e));
    } else {
        fail("cudaFree(bogus): expected cudaErrorInvalidValue or cudaErrorInvalidDevicePointer, "
             "got %s (%d)", cudaGetErrorName(e), (int)e);
    }
    cudaGetLastError();
    expect_error("cudaFree(NULL)", cudaFree(nullptr), cudaSuccess);

    // Freeing an interior pointer of a live allocation is an error too; the allocation
    // survives and can be freed properly afterwards.
    char *d;
    CHECK(cudaMalloc(&d, 4096));
    const cudaError_t ei = cudaFree(d + 256);
    if (ei == cudaSuccess) fail("cudaFree(interior pointer) succeeded");
    cudaGetLastError();
    CHECK(cudaMemset(d, 1, 4096));
    CHECK(cudaFree(d));
    expect_healthy("cudaFree errors");
}

static void test_malloc_errors() {
    void *p = nullptr;
    const cudaError_t e = cudaMalloc(&p, (size_t)1 << 50);
    expect_error("cudaMalloc(1 << 50)", e, cudaErrorMemoryAllocation);
    if (p != nullptr) fail("cudaMalloc(1 << 50) failed but set the pointer to %p", p);
    // The error is recorded as the last error once, and is not sticky.
    expect_error("cudaGetLastError after failed cudaMalloc", cudaGetLastError(),
                 cudaErrorMemoryAllocation);
    expect_error("second cudaGetLastError after failed cudaMalloc", cudaGetLastError(),
                 cudaSuccess);
    expect_healthy("cudaMalloc(1 << 50)");

    void *h = nullptr;
    const cudaError_t eh = cudaMallocHost(&h, (size_t)1 << 50);
    if (eh == cudaSuccess) {
        fail("cudaMallocHost(1 << 50) succeeded");
        cudaFreeHost(h);
    }
    cudaGetLastError();
    expect_healthy("cudaMallocHost(1 << 50)");
}

static void test_memcpy_errors() {
    const size_t n = 4096;
    char *d;
    CHECK(cudaMalloc(&d, n));
    CHECK(cudaMemset(d, 0x11, n));
    static char h[2 * 4096];
    memset(h, 0x22, sizeof h);

    cudaError_t e = cudaMemcpy(d, h, 64, (cudaMemcpyKind)7);
    if (e == cudaSuccess) fail("cudaMemcpy with direction 7 succeeded");
    else printf("note: cudaMemcpy with direction 7: %s\n", cudaGetErrorName(e));
    cudaGetLastError();

    // Past the end of the allocation (the host buffer is large enough).
    e = cudaMemcpy(h, d + n - 16, 64, cudaMemcpyDeviceToHost);
    if (e == cudaSuccess) fail("cudaMemcpy D2H reading 48 bytes past the end of an allocation succeeded");
    else printf("note: cudaMemcpy D2H past the end: %s\n", cudaGetErrorName(e));
    cudaGetLastError();
    e = cudaMemcpy(d + 100, h, n, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) fail("cudaMemcpy H2D writing past the end of an allocation succeeded");
    else printf("note: cudaMemcpy H2D past the end: %s\n", cudaGetErrorName(e));
    cudaGetLastError();

    // NULL device destination.
    e = cudaMemcpy(nullptr, h, 64, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) fail("cudaMemcpy to NULL succeeded");
    else printf("note: cudaMemcpy H2D to NULL: %s\n", cudaGetErrorName(e));
    cudaGetLastError();

    // The allocation is intact.
    char back[4096];
    CHECK(cudaMemcpy(back, d, n, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (size_t i = 0; i < n; ++i)
        if (back[i] != 0x11 && bad++ < 3)
            fail("allocation after failed copies: byte %zu expected 0x11 got 0x%02x", i,
                 (unsigned char)back[i]);
    CHECK(cudaFree(d));
    expect_healthy("cudaMemcpy errors");
}

static void test_error_strings() {
    if (strcmp(cudaGetErrorName(cudaErrorInvalidConfiguration), "cudaErrorInvalidConfiguration"))
        fail("cudaGetErrorName(cudaErrorInvalidConfiguration) = %s",
             cudaGetErrorName(cudaErrorInvalidConfiguration));
    const char *s = cudaGetErrorString(cudaErrorMemoryAllocation);
    if (s == nullptr || s[0] == 0) fail("cudaGetErrorString(cudaErrorMemoryAllocation) is empty");
}

int main() {
    // Create the context first so that every later error is about the call being tested.
    CHECK(cudaFree(nullptr));
    test_error_strings();
    test_launch_config();
    test_free_errors();
    test_malloc_errors();
    test_memcpy_errors();
    expect_healthy("all error cases");
    return finish();
}
