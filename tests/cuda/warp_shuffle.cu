// Warp-level primitives: __shfl_down_sync / __shfl_up_sync / __shfl_xor_sync / __shfl_sync
// (full width and with width 8/16, including out-of-segment and out-of-range lanes), float and
// double shuffles, __ballot_sync / __any_sync / __all_sync with divergent predicates and
// divergent member masks (if/else branches, loops with per-lane trip counts, a partial last
// warp), plus __match_any_sync and the sm_80 __reduce_*_sync. The CPU emulates each warp.
#define TEST_NAME "warp_shuffle"
#include "check.cuh"

#include <vector>

constexpr unsigned FULL = 0xffffffffu;
constexpr int kShflOut = 12;  // results per thread of the shuffle kernel
constexpr int kVoteOut = 8;   // results per thread of the vote kernel

__global__ void shuffles(const int *in, int *out, float *fout, double *dout) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const int warp = i >> 5;
    const int v = in[i];
    int *o = out + (size_t)i * kShflOut;

    // Tree reduction with shfl_down: lane 0 ends with the warp sum; the others keep
    // well-defined partial sums (out-of-range sources return the caller's own value).
    int s = v;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(FULL, s, off);
    o[0] = s;

    // Butterfly: every lane ends with the warp sum.
    int x = v;
    for (int m = 1; m < 32; m <<= 1) x += __shfl_xor_sync(FULL, x, m);
    o[1] = x;

    o[2] = __shfl_sync(FULL, v, warp % 32);           // broadcast from one lane
    o[3] = __shfl_sync(FULL, v, lane * 7 + 3);        // gather; srcLane >= 32 wraps mod 32
    o[4] = __shfl_up_sync(FULL, v, 3);                // lanes 0..2 keep their own value
    o[5] = __shfl_xor_sync(FULL, v, 20, 16);          // later segment -> own value
    int seg = v;                                      // sum over each group of 8 lanes
    for (int m = 4; m > 0; m >>= 1) seg += __shfl_xor_sync(FULL, seg, m, 8);
    o[6] = seg;
    o[7] = __shfl_sync(FULL, v, 2, 8);                // lane 2 of each group of 8
    o[8] = __shfl_down_sync(FULL, v, 3, 8);
    o[9] = __shfl_up_sync(FULL, v, 2, 8);
    o[10] = __shfl_sync(FULL, v, 13, 16);
    o[11] = __shfl_down_sync(FULL, v, 1);

    // Float reduction (values are small integers, so any order is exact) and a double
    // permutation (64-bit shuffles are two 32-bit ones).
    float f = (float)v * 0.5f;
    for (int m = 16; m > 0; m >>= 1) f += __shfl_xor_sync(FULL, f, m);
    fout[i] = f;
    const double d = (double)v * 1.0e10 + 0.25;
    dout[i] = __shfl_sync(FULL, d, 31 - lane);
}

__global__ void votes(const int *in, unsigned *out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const int v = in[i];
    unsigned *o = out + (size_t)i * kVoteOut;

    o[0] = __ballot_sync(FULL, v % 3 == 0);
    o[1] = __any_sync(FULL, v == 77) ? 1u : 0u;
    o[2] = __all_sync(FULL, v >= 0) ? 1u : 0u;

    // Divergent branches, each voting among its own lanes only.
    if (lane < 20) {
        o[3] = __ballot_sync(0x000fffffu, v & 1) & 0x000fffffu;
        o[4] = __all_sync(0x000fffffu, v < 90) ? 1u : 0u;
    } else {
        o[3] = __ballot_sync(0xfff00000u, v & 2) & 0xfff00000u;
        o[4] = __any_sync(0xfff00000u, v > 95) ? 1u : 0u;
    }
    if (lane & 1) {
        o[5] = (__any_sync(0xaaaaaaaau, v % 10 == 0) ? 1u : 0u) |
               (__all_sync(0xaaaaaaaau, v % 2 == 0) ? 2u : 0u);
    } else {
        o[5] = (__any_sync(0x55555555u, v % 10 == 0) ? 1u : 0u) |
               (__all_sync(0x55555555u, v % 2 == 0) ? 2u : 0u);
    }

    // Loop whose trip count differs per lane: at iteration k the lanes with lane%4 >= k
    // are still running.
    const int trips = (lane % 4) + 1;
    unsigned acc = 0;
    for (int k = 0; k < trips; ++k) {
        const unsigned mk = ((0xfu << k) & 0xfu) * 0x11111111u;
        acc += (unsigned)__popc(__ballot_sync(mk, (v >> k) & 1) & mk) * (unsigned)(k + 1);
    }
    o[6] = acc;

    // Lanes holding the same value mod 4.
    o[7] = __match_any_sync(FULL, v & 3);
}

// Blocks of 48 threads: the second warp of each block has only 16 lanes.
__global__ void partial_warp(const int *in, int *out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int warp_base = threadIdx.x & ~31;
    const int active = min(32, (int)blockDim.x - warp_base);
    const unsigned mask = active == 32 ? FULL : ((1u << active) - 1u);
    const int v = in[i];
    out[i * 3 + 0] = (int)__ballot_sync(mask, v & 1);
    out[i * 3 + 1] = __shfl_xor_sync(mask, v, 1);
    out[i * 3 + 2] = __all_sync(mask, v >= 0) ? 1 : 0;
}

// sm_80+ warp reductions (redux.sync).
__global__ void reductions(const int *in, int *out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = in[i];
    out[i * 5 + 0] = __reduce_add_sync(FULL, v);
    out[i * 5 + 1] = __reduce_min_sync(FULL, v - 50);
    out[i * 5 + 2] = (int)__reduce_max_sync(FULL, (unsigned)v);
    out[i * 5 + 3] = (int)__reduce_or_sync(FULL, 1u << (v % 32));
    out[i * 5 + 4] = (int)__reduce_and_sync(FULL, ~(1u << (v % 32)));
}

// ---- CPU emulation ---------------------------------------------------------------------

// Source lane for a shuffle (PTX shfl.sync semantics for width = power of two <= 32).
enum Mode { UP, DOWN, BFLY, IDX };
static int shfl_src(Mode mode, int lane, int b, int width) {
    const int seg_lo = lane & ~(width - 1);
    const int seg_hi = seg_lo + width - 1;
    int j;
    switch (mode) {
        case UP: j = lane - b; return j >= seg_lo ? j : lane;
        case DOWN: j = lane + b; return j <= seg_hi ? j : lane;
        case BFLY: j = lane ^ b; return j <= seg_hi ? j : lane;
        case IDX: default: return seg_lo | (b & (width - 1));
    }
}

template <typename T>
static void shfl_warp(Mode mode, const T *src, T *dst, int b, int width) {
    for (int l = 0; l < 32; ++l) dst[l] = src[shfl_src(mode, l, b, width)];
}

static void test_shuffles(const std::vector<int> &hin, int n) {
    int *d_in, *d_out;
    float *d_f;
    double *d_d;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_out, (size_t)n * kShflOut * sizeof(int)));
    CHECK(cudaMalloc(&d_f, n * sizeof(float)));
    CHECK(cudaMalloc(&d_d, n * sizeof(double)));
    CHECK(cudaMemcpy(d_in, hin.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0, (size_t)n * kShflOut * sizeof(int)));
    shuffles<<<n / 128, 128>>>(d_in, d_out, d_f, d_d);
    CHECK_LAUNCH();
    std::vector<int> got((size_t)n * kShflOut), want((size_t)n * kShflOut);
    std::vector<float> gotf(n), wantf(n);
    std::vector<double> gotd(n), wantd(n);
    CHECK(cudaMemcpy(got.data(), d_out, got.size() * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(gotf.data(), d_f, n * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(gotd.data(), d_d, n * sizeof(double), cudaMemcpyDeviceToHost));

    for (int w = 0; w < n / 32; ++w) {
        const int *v = &hin[w * 32];
        int s[32], t[32], r[12][32];
        // 0: shfl_down tree
        for (int l = 0; l < 32; ++l) s[l] = v[l];
        for (int off = 16; off > 0; off >>= 1) {
            shfl_warp(DOWN, s, t, off, 32);
            for (int l = 0; l < 32; ++l) s[l] += t[l];
        }
        for (int l = 0; l < 32; ++l) r[0][l] = s[l];
        // 1: butterfly
        for (int l = 0; l < 32; ++l) s[l] = v[l];
        for (int m = 1; m < 32; m <<= 1) {
            shfl_warp(BFLY, s, t, m, 32);
            for (int l = 0; l < 32; ++l) s[l] += t[l];
        }
        for (int l = 0; l < 32; ++l) r[1][l] = s[l];
        for (int l = 0; l < 32; ++l) {
            r[2][l] = v[w % 32];
            r[3][l] = v[shfl_src(IDX, l, l * 7 + 3, 32)];
            r[4][l] = v[shfl_src(UP, l, 3, 32)];
            r[5][l] = v[shfl_src(BFLY, l, 20, 16)];
        }
        for (int l = 0; l < 32; ++l) s[l] = v[l];
        for (int m = 4; m > 0; m >>= 1) {
            shfl_warp(BFLY, s, t, m, 8);
            for (int l = 0; l < 32; ++l) s[l] += t[l];
        }
        for (int l = 0; l < 32; ++l) {
            r[6][l] = s[l];
            r[7][l] = v[shfl_src(IDX, l, 2, 8)];
            r[8][l] = v[shfl_src(DOWN, l, 3, 8)];
            r[9][l] = v[shfl_src(UP, l, 2, 8)];
            r[10][l] = v[shfl_src(IDX, l, 13, 16)];
            r[11][l] = v[shfl_src(DOWN, l, 1, 32)];
        }
        float fsum = 0.0f;
        for (int l = 0; l < 32; ++l) fsum += (float)v[l] * 0.5f;
        for (int l = 0; l < 32; ++l) {
            for (int k = 0; k < kShflOut; ++k) want[(size_t)(w * 32 + l) * kShflOut + k] = r[k][l];
            wantf[w * 32 + l] = fsum;
            wantd[w * 32 + l] = (double)v[31 - l] * 1.0e10 + 0.25;
        }
    }
    static const char *names[kShflOut] = {
        "shfl_down tree",   "shfl_xor butterfly", "shfl broadcast",  "shfl gather mod 32",
        "shfl_up 3",        "shfl_xor 20 w16",    "shfl_xor sum w8", "shfl lane2 w8",
        "shfl_down 3 w8",   "shfl_up 2 w8",       "shfl lane13 w16", "shfl_down 1"};
    for (int k = 0; k < kShflOut; ++k) {
        int bad = 0;
        for (int i = 0; i < n && bad < 3; ++i) {
            const size_t at = (size_t)i * kShflOut + k;
            if (got[at] != want[at]) {
                fail("%s: thread %d (lane %d) expected %d got %d", names[k], i, i % 32, want[at],
                     got[at]);
                ++bad;
            }
        }
    }
    compare_close("float xor reduction", wantf.data(), gotf.data(), n, 0.0);
    compare_close("double shfl", wantd.data(), gotd.data(), n, 0.0);
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
    CHECK(cudaFree(d_f));
    CHECK(cudaFree(d_d));
}

static void test_votes(const std::vector<int> &hin, int n) {
    int *d_in;
    unsigned *d_out;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_out, (size_t)n * kVoteOut * sizeof(unsigned)));
    CHECK(cudaMemcpy(d_in, hin.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0, (size_t)n * kVoteOut * sizeof(unsigned)));
    votes<<<n / 64, 64>>>(d_in, d_out);
    CHECK_LAUNCH();
    std::vector<unsigned> got((size_t)n * kVoteOut);
    CHECK(cudaMemcpy(got.data(), d_out, got.size() * sizeof(unsigned), cudaMemcpyDeviceToHost));

    static const char *names[kVoteOut] = {"ballot v%3==0",       "any v==77",
                                          "all v>=0",            "divergent ballot",
                                          "divergent all/any",   "odd/even lanes any|all",
                                          "ballot in divergent loop", "match_any v&3"};
    int bad[kVoteOut] = {0};
    for (int w = 0; w < n / 32; ++w) {
        const int *v = &hin[w * 32];
        unsigned ballot3 = 0, lo1 = 0, hi2 = 0;
        bool any77 = false, allpos = true, lo_all = true, hi_any = false;
        bool any10[2] = {false, false}, alleven[2] = {true, true};
        for (int l = 0; l < 32; ++l) {
            if (v[l] % 3 == 0) ballot3 |= 1u << l;
            any77 |= v[l] == 77;
            allpos &= v[l] >= 0;
            if (l < 20) {
                if (v[l] & 1) lo1 |= 1u << l;
                lo_all &= v[l] < 90;
            } else {
                if (v[l] & 2) hi2 |= 1u << l;
                hi_any |= v[l] > 95;
            }
            any10[l & 1] |= v[l] % 10 == 0;
            alleven[l & 1] &= v[l] % 2 == 0;
        }
        for (int l = 0; l < 32; ++l) {
            unsigned want[kVoteOut];
            want[0] = ballot3;
            want[1] = any77;
            want[2] = allpos;
            want[3] = l < 20 ? lo1 : hi2;
            want[4] = l < 20 ? lo_all : hi_any;
            want[5] = (any10[l & 1] ? 1u : 0u) | (alleven[l & 1] ? 2u : 0u);
            unsigned acc = 0;
            for (int k = 0; k < (l % 4) + 1; ++k) {
                int pop = 0;
                for (int m = 0; m < 32; ++m)
                    if (m % 4 >= k && ((v[m] >> k) & 1)) ++pop;
                acc += (unsigned)pop * (unsigned)(k + 1);
            }
            want[6] = acc;
            unsigned match = 0;
            for (int m = 0; m < 32; ++m)
                if ((v[m] & 3) == (v[l] & 3)) match |= 1u << m;
            want[7] = match;
            for (int k = 0; k < kVoteOut; ++k) {
                const unsigned g = got[(size_t)(w * 32 + l) * kVoteOut + k];
                if (g != want[k] && bad[k]++ < 3)
                    fail("%s: thread %d (lane %d) expected 0x%08x got 0x%08x", names[k],
                         w * 32 + l, l, want[k], g);
            }
        }
    }
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
}

static void test_partial_warp(const std::vector<int> &hin) {
    const int block = 48, grid = 20, n = block * grid;
    int *d_in, *d_out;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_out, n * 3 * sizeof(int)));
    CHECK(cudaMemcpy(d_in, hin.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0, n * 3 * sizeof(int)));
    partial_warp<<<grid, block>>>(d_in, d_out);
    CHECK_LAUNCH();
    std::vector<int> got(n * 3), want(n * 3);
    CHECK(cudaMemcpy(got.data(), d_out, n * 3 * sizeof(int), cudaMemcpyDeviceToHost));
    for (int b = 0; b < grid; ++b) {
        for (int wb = 0; wb < block; wb += 32) {
            const int active = block - wb < 32 ? block - wb : 32;
            const int *v = &hin[b * block + wb];
            unsigned ballot = 0;
            bool all = true;
            for (int l = 0; l < active; ++l) {
                if (v[l] & 1) ballot |= 1u << l;
                all &= v[l] >= 0;
            }
            for (int l = 0; l < active; ++l) {
                const int i = b * block + wb + l;
                want[i * 3 + 0] = (int)ballot;
                want[i * 3 + 1] = v[l ^ 1];
                want[i * 3 + 2] = all ? 1 : 0;
            }
        }
    }
    compare_exact("partial_warp (ballot, shfl_xor 1, all) x3", want.data(), got.data(), n * 3);
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
}

static void test_reductions(const std::vector<int> &hin, int n) {
    int *d_in, *d_out;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_out, (size_t)n * 5 * sizeof(int)));
    CHECK(cudaMemcpy(d_in, hin.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0, (size_t)n * 5 * sizeof(int)));
    reductions<<<n / 256, 256>>>(d_in, d_out);
    CHECK_LAUNCH();
    std::vector<int> got((size_t)n * 5), want((size_t)n * 5);
    CHECK(cudaMemcpy(got.data(), d_out, got.size() * sizeof(int), cudaMemcpyDeviceToHost));
    for (int w = 0; w < n / 32; ++w) {
        const int *v = &hin[w * 32];
        int sum = 0, mn = v[0] - 50;
        unsigned mx = 0, orv = 0, andv = FULL;
        for (int l = 0; l < 32; ++l) {
            sum += v[l];
            mn = v[l] - 50 < mn ? v[l] - 50 : mn;
            mx = (unsigned)v[l] > mx ? (unsigned)v[l] : mx;
            orv |= 1u << (v[l] % 32);
            andv &= ~(1u << (v[l] % 32));
        }
        for (int l = 0; l < 32; ++l) {
            int *o = &want[(size_t)(w * 32 + l) * 5];
            o[0] = sum;
            o[1] = mn;
            o[2] = (int)mx;
            o[3] = (int)orv;
            o[4] = (int)andv;
        }
    }
    compare_exact("__reduce_{add,min,max,or,and}_sync x5", want.data(), got.data(), (size_t)n * 5);
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
}

int main() {
    const int n = 8192;
    std::vector<int> hin(n);
    Rng rng(2024);
    for (int i = 0; i < n; ++i) hin[i] = rng.range(0, 99);
    // Make some warps uniform so that all/any take both outcomes.
    for (int i = 0; i < 32; ++i) hin[64 + i] = 77;       // warp 2: all 77
    for (int i = 0; i < 32; ++i) hin[128 + i] = 2 * i;   // warp 4: all even, < 90 in lanes < 20
    for (int i = 0; i < 32; ++i) hin[192 + i] = 10 * (i % 9);  // warp 6: multiples of 10

    test_shuffles(hin, n);
    test_votes(hin, n);
    test_partial_warp(hin);
    test_reductions(hin, n);
    return finish();
}
