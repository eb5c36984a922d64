// Vector addition with grid-stride loops for float, int and double, including a grid that
// is smaller than the data (so the stride loop iterates) and a length that is not a multiple
// of the block size.
#define TEST_NAME "vector_add"
#include "check.cuh"

#include <vector>

__global__ void add_float(const float *a, const float *b, float *c, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        c[i] = a[i] + b[i];
}

__global__ void add_int(const int *a, const int *b, int *c, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        c[i] = a[i] + b[i];
}

__global__ void add_double(const double *a, const double *b, double *c, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        c[i] = a[i] + b[i];
}

// Generic one-element-per-thread variant (no stride loop, bounds check only).
template <typename T>
__global__ void add_scaled(const T *a, const T *b, T *c, T scale, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] * scale + b[i];
}

template <typename T>
struct DeviceBuffers {
    T *a = nullptr, *b = nullptr, *c = nullptr;
    explicit DeviceBuffers(int n) {
        CHECK(cudaMalloc(&a, n * sizeof(T)));
        CHECK(cudaMalloc(&b, n * sizeof(T)));
        CHECK(cudaMalloc(&c, n * sizeof(T)));
        CHECK(cudaMemset(c, 0, n * sizeof(T)));
    }
    ~DeviceBuffers() {
        CHECK(cudaFree(a));
        CHECK(cudaFree(b));
        CHECK(cudaFree(c));
    }
};

static void test_float(int n, int grid, int block) {
    std::vector<float> a(n), b(n), c(n), ref(n);
    Rng rng(1234 + n);
    for (int i = 0; i < n; ++i) {
        a[i] = rng.unit() * 100.0f;
        b[i] = rng.unit() * 100.0f;
        ref[i] = a[i] + b[i];
    }
    DeviceBuffers<float> d(n);
    CHECK(cudaMemcpy(d.a, a.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d.b, b.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    add_float<<<grid, block>>>(d.a, d.b, d.c, n);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(c.data(), d.c, n * sizeof(float), cudaMemcpyDeviceToHost));
    char what[64];
    snprintf(what, sizeof what, "float n=%d grid=%d block=%d", n, grid, block);
    compare_close(what, ref.data(), c.data(), n, 1e-6);
}

static void test_int(int n, int grid, int block) {
    std::vector<int> a(n), b(n), c(n), ref(n);
    Rng rng(99 + n);
    for (int i = 0; i < n; ++i) {
        a[i] = (int)(rng.next() >> 2) - (1 << 29);  // may be negative; sum never overflows
        b[i] = (int)(rng.next() >> 2) - (1 << 29);
        ref[i] = a[i] + b[i];
    }
    DeviceBuffers<int> d(n);
    CHECK(cudaMemcpy(d.a, a.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d.b, b.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    add_int<<<grid, block>>>(d.a, d.b, d.c, n);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(c.data(), d.c, n * sizeof(int), cudaMemcpyDeviceToHost));
    char what[64];
    snprintf(what, sizeof what, "int n=%d grid=%d block=%d", n, grid, block);
    compare_exact(what, ref.data(), c.data(), n);
}

static void test_double(int n, int grid, int block) {
    std::vector<double> a(n), b(n), c(n), ref(n);
    Rng rng(7 + n);
    for (int i = 0; i < n; ++i) {
        // Values that need more than float precision, so a float path would be caught.
        a[i] = (double)rng.unit() * 1e6 + 1e-7 * i;
        b[i] = (double)rng.unit() + 1.0 / 3.0;
        ref[i] = a[i] + b[i];
    }
    DeviceBuffers<double> d(n);
    CHECK(cudaMemcpy(d.a, a.data(), n * sizeof(double), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d.b, b.data(), n * sizeof(double), cudaMemcpyHostToDevice));
    add_double<<<grid, block>>>(d.a, d.b, d.c, n);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(c.data(), d.c, n * sizeof(double), cudaMemcpyDeviceToHost));
    char what[64];
    snprintf(what, sizeof what, "double n=%d grid=%d block=%d", n, grid, block);
    compare_close(what, ref.data(), c.data(), n, 1e-15);
}

template <typename T>
static void test_scaled(int n, T scale) {
    std::vector<T> a(n), b(n), c(n), ref(n);
    for (int i = 0; i < n; ++i) {
        a[i] = (T)(i % 97) - (T)40;
        b[i] = (T)(i / 3);
        ref[i] = a[i] * scale + b[i];
    }
    DeviceBuffers<T> d(n);
    CHECK(cudaMemcpy(d.a, a.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d.b, b.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    const int block = 128;
    add_scaled<T><<<(n + block - 1) / block, block>>>(d.a, d.b, d.c, scale, n);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(c.data(), d.c, n * sizeof(T), cudaMemcpyDeviceToHost));
    // All values are small integers, so the results are exact for every type.
    compare_close("add_scaled", ref.data(), c.data(), n, 0.0);
}

int main() {
    // Exact fit, one element per thread.
    test_float(4096, 16, 256);
    // Grid smaller than the data: each thread loops several times; ragged tail.
    test_float(10007, 8, 128);
    // Fewer elements than threads.
    test_float(37, 2, 64);

    test_int(4096, 16, 256);
    test_int(9999, 5, 96);

    test_double(4096, 16, 256);
    test_double(5003, 3, 160);

    test_scaled<float>(3000, 3.0f);
    test_scaled<int>(3000, -7);
    test_scaled<double>(3000, 0.5);

    return finish();
}
