// __constant__ and __device__ variables: coefficients uploaded with cudaMemcpyToSymbol (whole,
// at an offset, from device memory, asynchronously) and used by a polynomial kernel; values
// read back with cudaMemcpyFromSymbol(Async); statically initialised variables; a __device__
// global written by kernels; cudaGetSymbolAddress / cudaGetSymbolSize.
#define TEST_NAME "constant_mem"
#include "check.cuh"

#include <vector>

constexpr int kDegree = 7;
__constant__ float coef[kDegree + 1];
__constant__ int ctable[16];
__constant__ double c_init_double = 2.5;  // statically initialised constant
__constant__ int c_init_array[4] = {11, -22, 33, -44};

__device__ int d_counter;
__device__ float d_table[256];
__device__ long long d_init_scalar = 0x1122334455667788LL;  // statically initialised global
__device__ short d_init_shorts[3] = {-1, 2, -3};

__global__ void poly(const float *x, float *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    float acc = coef[kDegree];
    for (int k = kDegree - 1; k >= 0; --k) acc = acc * v + coef[k];
    y[i] = acc;
}

// Per-thread (divergent) constant indexing plus the initialised constants.
__global__ void lookup(int *out, double *outd, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = ctable[(i * 5) % 16] + c_init_array[i % 4];
    outd[i] = c_init_double * i;
}

__global__ void fill_table(float scale) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < 256) {
        d_table[i] = i * scale;
        atomicAdd(&d_counter, 1);
    }
    if (i == 0) {
        d_init_scalar += 1;
        d_init_shorts[1] *= 10;
    }
}

__global__ void through_pointer(float *table, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) table[i] = table[i] + 1000.0f;
}

static float host_poly(const float *c, float v) {
    float acc = c[kDegree];
    for (int k = kDegree - 1; k >= 0; --k) acc = acc * v + c[k];
    return acc;
}

static void run_poly(const char *what, const float *c, int n) {
    std::vector<float> x(n), y(n), want(n);
    Rng rng(31337);
    for (int i = 0; i < n; ++i) {
        x[i] = rng.unit() * 1.5f;
        want[i] = host_poly(c, x[i]);
    }
    float *dx, *dy;
    CHECK(cudaMalloc(&dx, n * sizeof(float)));
    CHECK(cudaMalloc(&dy, n * sizeof(float)));
    CHECK(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    poly<<<(n + 255) / 256, 256>>>(dx, dy, n);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(y.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    // The device may contract to FMA; allow rounding differences of the intermediate terms.
    compare_close(what, want.data(), y.data(), n, 1e-4);
    CHECK(cudaFree(dx));
    CHECK(cudaFree(dy));
}

static void test_polynomial() {
    float c[kDegree + 1] = {1.0f, -0.5f, 0.25f, 2.0f, -1.5f, 0.75f, 0.125f, -0.0625f};
    CHECK(cudaMemcpyToSymbol(coef, c, sizeof c));
    run_poly("poly (cudaMemcpyToSymbol)", c, 3000);

    float back[kDegree + 1];
    CHECK(cudaMemcpyFromSymbol(back, coef, sizeof back));
    compare_close("cudaMemcpyFromSymbol(coef)", c, back, kDegree + 1, 0.0);

    // Replace the upper half only, via the offset argument.
    const float upper[4] = {3.0f, -2.0f, 1.0f, 0.5f};
    CHECK(cudaMemcpyToSymbol(coef, upper, sizeof upper, 4 * sizeof(float)));
    for (int k = 0; k < 4; ++k) c[4 + k] = upper[k];
    run_poly("poly (cudaMemcpyToSymbol with offset)", c, 3000);

    // Replace the lower half from device memory, asynchronously on a stream.
    const float lower[4] = {-1.0f, 0.0f, 4.0f, -0.25f};
    float *d_lower;
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    CHECK(cudaMalloc(&d_lower, sizeof lower));
    CHECK(cudaMemcpy(d_lower, lower, sizeof lower, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpyToSymbolAsync(coef, d_lower, sizeof lower, 0, cudaMemcpyDeviceToDevice, s));
    CHECK(cudaStreamSynchronize(s));
    for (int k = 0; k < 4; ++k) c[k] = lower[k];
    run_poly("poly (cudaMemcpyToSymbolAsync device-to-device)", c, 1000);

    float back2[kDegree + 1];
    CHECK(cudaMemcpyFromSymbolAsync(back2, coef, sizeof back2, 0, cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    compare_close("cudaMemcpyFromSymbolAsync(coef)", c, back2, kDegree + 1, 0.0);
    CHECK(cudaFree(d_lower));
    CHECK(cudaStreamDestroy(s));
}

static void test_lookup() {
    int table[16];
    for (int k = 0; k < 16; ++k) table[k] = k * k * 100 - 7;
    CHECK(cudaMemcpyToSymbol(ctable, table, sizeof table));
    const int n = 1000;
    const int init_array[4] = {11, -22, 33, -44};
    int *d_out;
    double *d_outd;
    CHECK(cudaMalloc(&d_out, n * sizeof(int)));
    CHECK(cudaMalloc(&d_outd, n * sizeof(double)));
    lookup<<<(n + 127) / 128, 128>>>(d_out, d_outd, n);
    CHECK_LAUNCH();
    std::vector<int> got(n), want(n);
    std::vector<double> gotd(n), wantd(n);
    CHECK(cudaMemcpy(got.data(), d_out, n * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(gotd.data(), d_outd, n * sizeof(double), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
        want[i] = table[(i * 5) % 16] + init_array[i % 4];
        wantd[i] = 2.5 * i;
    }
    compare_exact("lookup (ctable + initialised c_init_array)", want.data(), got.data(), n);
    compare_close("lookup (initialised c_init_double)", wantd.data(), gotd.data(), n, 0.0);

    // Initialised constants read back from the host.
    double cd = 0;
    int ca[4] = {0};
    CHECK(cudaMemcpyFromSymbol(&cd, c_init_double, sizeof cd));
    CHECK(cudaMemcpyFromSymbol(ca, c_init_array, sizeof ca));
    if (cd != 2.5) fail("c_init_double: expected 2.5 got %.17g", cd);
    compare_exact("c_init_array", init_array, ca, 4);
    CHECK(cudaFree(d_out));
    CHECK(cudaFree(d_outd));
}

static void test_device_globals() {
    // Statically initialised __device__ variables hold their initial values.
    long long scalar = 0;
    short shorts[3] = {0, 0, 0};
    CHECK(cudaMemcpyFromSymbol(&scalar, d_init_scalar, sizeof scalar));
    CHECK(cudaMemcpyFromSymbol(shorts, d_init_shorts, sizeof shorts));
    if (scalar != 0x1122334455667788LL)
        fail("d_init_scalar initial value: expected 0x1122334455667788 got 0x%llx", scalar);
    const short want_shorts[3] = {-1, 2, -3};
    compare_exact("d_init_shorts initial", want_shorts, shorts, 3);

    const int zero = 0;
    CHECK(cudaMemcpyToSymbol(d_counter, &zero, sizeof zero));
    fill_table<<<4, 64>>>(1.5f);
    CHECK_LAUNCH();
    fill_table<<<2, 128>>>(1.5f);  // second launch: counter accumulates
    CHECK_LAUNCH();

    int counter = -1;
    CHECK(cudaMemcpyFromSymbol(&counter, d_counter, sizeof counter));
    if (counter != 512) fail("d_counter: expected 512 got %d", counter);
    CHECK(cudaMemcpyFromSymbol(&scalar, d_init_scalar, sizeof scalar));
    if (scalar != 0x1122334455667788LL + 2)
        fail("d_init_scalar after kernels: expected 0x%llx got 0x%llx",
             0x1122334455667788LL + 2, scalar);
    CHECK(cudaMemcpyFromSymbol(shorts, d_init_shorts, sizeof shorts));
    const short want_shorts2[3] = {-1, 200, -3};
    compare_exact("d_init_shorts after kernels", want_shorts2, shorts, 3);

    float table[256], want[256];
    for (int k = 0; k < 256; ++k) want[k] = k * 1.5f;
    CHECK(cudaMemcpyFromSymbol(table, d_table, sizeof table));
    compare_close("d_table via cudaMemcpyFromSymbol", want, table, 256, 0.0);
    float part[16];
    CHECK(cudaMemcpyFromSymbol(part, d_table, sizeof part, 100 * sizeof(float)));
    compare_close("d_table[100..115] via cudaMemcpyFromSymbol offset", want + 100, part, 16, 0.0);

    // Symbol address and size.
    void *addr = nullptr;
    size_t size = 0;
    CHECK(cudaGetSymbolAddress(&addr, d_table));
    CHECK(cudaGetSymbolSize(&size, d_table));
    if (addr == nullptr) fail("cudaGetSymbolAddress(d_table) returned NULL");
    if (size != sizeof(float) * 256) fail("cudaGetSymbolSize(d_table): expected 1024 got %zu", size);
    size_t csize = 0;
    CHECK(cudaGetSymbolSize(&csize, coef));
    if (csize != sizeof(float) * (kDegree + 1))
        fail("cudaGetSymbolSize(coef): expected %zu got %zu", sizeof(float) * (kDegree + 1), csize);
    void *caddr = nullptr;
    CHECK(cudaGetSymbolAddress(&caddr, coef));
    if (caddr == nullptr) fail("cudaGetSymbolAddress(coef) returned NULL");

    // The address is an ordinary device pointer: memcpy through it and pass it to a kernel.
    float viaptr[256];
    CHECK(cudaMemcpy(viaptr, addr, sizeof viaptr, cudaMemcpyDeviceToHost));
    compare_close("d_table via cudaGetSymbolAddress + cudaMemcpy", want, viaptr, 256, 0.0);
    through_pointer<<<2, 128>>>(static_cast<float *>(addr), 256);
    CHECK_LAUNCH();
    for (int k = 0; k < 256; ++k) want[k] += 1000.0f;
    CHECK(cudaMemcpyFromSymbol(table, d_table, sizeof table));
    compare_close("d_table after kernel through symbol address", want, table, 256, 0.0);
    const float seven[4] = {7.0f, 7.0f, 7.0f, 7.0f};
    CHECK(cudaMemcpy(static_cast<float *>(addr) + 10, seven, sizeof seven, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpyFromSymbol(part, d_table, 8 * sizeof(float), 8 * sizeof(float)));
    const float want_part[8] = {want[8], want[9], 7.0f, 7.0f, 7.0f, 7.0f, want[14], want[15]};
    compare_close("d_table written through symbol address", want_part, part, 8, 0.0);
}

int main() {
    test_polynomial();
    test_lookup();
    test_device_globals();
    return finish();
}
