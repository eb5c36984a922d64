// Shared helpers for the self-checking CUDA test programs in tests/cuda/.
//
// Each program defines TEST_NAME before including this header, calls CHECK() on every CUDA
// runtime call, reports mismatches with fail(), and ends with `return finish();`.
//
// Exit status: 0 = PASS, 1 = a result differed from the CPU reference, 2 = a CUDA call failed.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#ifndef TEST_NAME
#error "define TEST_NAME before including check.cuh"
#endif

// Abort with exit status 2 when a CUDA runtime call does not return cudaSuccess.
#define CHECK(call)                                                                         \
    do {                                                                                    \
        cudaError_t check_err_ = (call);                                                    \
        if (check_err_ != cudaSuccess) {                                                    \
            fprintf(stderr, "%s:%d: %s returned %s (%d): %s\n", __FILE__, __LINE__, #call,  \
                    cudaGetErrorName(check_err_), (int)check_err_,                          \
                    cudaGetErrorString(check_err_));                                        \
            printf("FAIL %s: CUDA error %s at %s:%d\n", TEST_NAME,                          \
                   cudaGetErrorName(check_err_), __FILE__, __LINE__);                       \
            exit(2);                                                                        \
        }                                                                                   \
    } while (0)

// Check a kernel launch: configuration errors show up in cudaGetLastError(), execution
// errors in the synchronize.
#define CHECK_LAUNCH()                                                                      \
    do {                                                                                    \
        CHECK(cudaGetLastError());                                                          \
        CHECK(cudaDeviceSynchronize());                                                     \
    } while (0)

// Whether the program runs through xpupool (`xpupool run` sets XPUPOOL_SERVER). Checks of
// xpupool's own policies (what it does not offer, or refuses) apply only then; natively a
// GPU may do otherwise, and the program prints what it did as a "note:" line.
static inline bool under_xpupool() { return getenv("XPUPOOL_SERVER") != nullptr; }

static int g_failures = 0;
static const int kMaxReported = 20;

// Record one mismatch; prints the first kMaxReported of them.
static inline void fail(const char *fmt, ...) {
    ++g_failures;
    if (g_failures > kMaxReported) return;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s: ", TEST_NAME);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

static inline bool expect_true(bool cond, const char *what) {
    if (!cond) fail("%s", what);
    return cond;
}

// Compare integer arrays exactly; reports index/expected/got.
template <typename T>
static int compare_exact(const char *what, const T *expected, const T *got, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; ++i) {
        if (expected[i] != got[i]) {
            if (bad < 5)
                fail("%s[%zu]: expected %lld got %lld", what, i, (long long)expected[i],
                     (long long)got[i]);
            ++bad;
        }
    }
    if (bad > 5) fail("%s: %d mismatches in total", what, bad);
    return bad;
}

static inline bool close_enough(double expected, double got, double rel) {
    if (std::isnan(expected) || std::isnan(got)) return false;
    double diff = std::fabs(expected - got);
    double scale = std::fmax(1.0, std::fmax(std::fabs(expected), std::fabs(got)));
    return diff <= rel * scale;
}

// Compare floating-point arrays with a relative tolerance (absolute below magnitude 1).
template <typename T>
static int compare_close(const char *what, const T *expected, const T *got, size_t n, double rel) {
    int bad = 0;
    for (size_t i = 0; i < n; ++i) {
        if (!close_enough((double)expected[i], (double)got[i], rel)) {
            if (bad < 5)
                fail("%s[%zu]: expected %.9g got %.9g", what, i, (double)expected[i],
                     (double)got[i]);
            ++bad;
        }
    }
    if (bad > 5) fail("%s: %d mismatches in total", what, bad);
    return bad;
}

static inline int finish() {
    if (g_failures == 0) {
        printf("PASS %s\n", TEST_NAME);
        return 0;
    }
    printf("FAIL %s: %d check(s) failed\n", TEST_NAME, g_failures);
    return 1;
}

// Small deterministic PRNG (xorshift32) so host references never depend on libc rand().
struct Rng {
    unsigned s;
    explicit Rng(unsigned seed) : s(seed ? seed : 0x9e3779b9u) {}
    unsigned next() {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        return s;
    }
    // Uniform integer in [lo, hi].
    int range(int lo, int hi) { return lo + (int)(next() % (unsigned)(hi - lo + 1)); }
    // Uniform float in [-1, 1).
    float unit() { return (float)((next() >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }
};
