// A compute-saturating CUDA program for the tenancy tests (tests/tenancy).
//
//   spin load SECONDS      launch kernels back to back for SECONDS, two in flight at
//                          a time; prints "launches=N"
//   spin latency COUNT     COUNT short kernels one at a time, each waited for; prints
//                          "median_us=X" (launch to completion, as the program sees it)
//   spin hold MIB SECONDS  holds MIB of device memory (written and read back) while it
//                          runs `load SECONDS`: a job with known memory-time and busy
//                          time, for the pool's metering tests (tests/pool)
//   spin                   a short self-check of both
//
// Every kernel's result is checked against the CPU. Exit status: 0 PASS, 1 wrong
// result, 2 a CUDA call failed.
#define TEST_NAME "spin"
#include "../cuda/check.cuh"

#include <algorithm>
#include <chrono>
#include <vector>

// Each thread iterates a 32-bit LCG `iters` times from its own seed.
__global__ void lcg(unsigned* out, unsigned iters, unsigned seed) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned x = seed ^ (i * 2654435761u);
    for (unsigned k = 0; k < iters; ++k) x = x * 1664525u + 1013904223u;
    out[i] = x;
}

static unsigned lcg_cpu(unsigned i, unsigned iters, unsigned seed) {
    unsigned x = seed ^ (i * 2654435761u);
    for (unsigned k = 0; k < iters; ++k) x = x * 1664525u + 1013904223u;
    return x;
}

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Checks a few threads' results of the launch with `seed`.
static void verify(const unsigned* dev, unsigned n, unsigned iters, unsigned seed) {
    unsigned idx[3] = {0, n / 2, n - 1};
    for (unsigned j : idx) {
        unsigned got = 0;
        CHECK(cudaMemcpy(&got, dev + j, sizeof got, cudaMemcpyDeviceToHost));
        unsigned want = lcg_cpu(j, iters, seed);
        if (got != want) fail("thread %u of seed %u: %u, expected %u", j, seed, got, want);
    }
}

// Many small blocks, so a kernel can give way to another between blocks.
static const unsigned BLOCKS = 128, THREADS = 32, N = BLOCKS * THREADS;

static void load(double seconds, unsigned iters, unsigned* dev) {
    double end = now_s() + seconds;
    unsigned seed = 1;
    long launches = 0;
    while (now_s() < end) {
        // Two in flight: the server has the next kernel when one ends.
        lcg<<<BLOCKS, THREADS>>>(dev, iters, seed);
        lcg<<<BLOCKS, THREADS>>>(dev, iters, seed + 1);
        CHECK_LAUNCH();
        launches += 2;
        seed += 2;
    }
    verify(dev, N, iters, seed - 1);
    printf("launches=%ld\n", launches);
}

static void latency(int count, unsigned iters, unsigned* dev) {
    std::vector<double> us;
    for (int i = 0; i < count; ++i) {
        double t = now_s();
        lcg<<<8, THREADS>>>(dev, iters, 7 + i);
        CHECK_LAUNCH();
        us.push_back((now_s() - t) * 1e6);
        verify(dev, 8 * THREADS, iters, 7 + i);
    }
    std::sort(us.begin(), us.end());
    printf("median_us=%.0f\n", us[us.size() / 2]);
}

int main(int argc, char** argv) {
    unsigned* dev = nullptr;
    CHECK(cudaMalloc(&dev, N * sizeof(unsigned)));
    const char* mode = argc > 1 ? argv[1] : "";
    unsigned iters = argc > 3 ? (unsigned)atoi(argv[3]) : 400;
    if (!strcmp(mode, "load")) {
        load(argc > 2 ? atof(argv[2]) : 1.0, iters, dev);
    } else if (!strcmp(mode, "hold")) {
        size_t bytes = (size_t)(argc > 2 ? atol(argv[2]) : 64) << 20;
        unsigned char* held = nullptr;
        CHECK(cudaMalloc(&held, bytes));
        CHECK(cudaMemset(held, 0x5a, bytes));
        load(argc > 3 ? atof(argv[3]) : 1.0, 400, dev);
        unsigned char last = 0;
        CHECK(cudaMemcpy(&last, held + bytes - 1, 1, cudaMemcpyDeviceToHost));
        if (last != 0x5a) fail("held memory reads %u, expected 0x5a", last);
        CHECK(cudaFree(held));
    } else if (!strcmp(mode, "latency")) {
        latency(argc > 2 ? atoi(argv[2]) : 20, iters, dev);
    } else {
        load(0.2, 50, dev);
        latency(3, 50, dev);
    }
    CHECK(cudaFree(dev));
    return finish();
}
