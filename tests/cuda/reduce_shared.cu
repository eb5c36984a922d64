// Shared-memory tree reductions (int and float) with __syncthreads, per-block partial sums
// combined with atomicAdd into a global counter, a shared-memory atomic histogram, and the
// other atomics: atomicMax/Min (signed and unsigned), atomicCAS loops, atomicExch,
// atomicAdd tickets, atomicAnd/Or/Xor, atomicInc/Dec, atomicSub, 64-bit and double atomicAdd.
#define TEST_NAME "reduce_shared"
#include "check.cuh"

#include <algorithm>
#include <vector>

constexpr int kBlock = 256;

// Each block reduces 2*kBlock elements; thread 0 stores the block's partial sum and adds it
// to *total.
__global__ void reduce_int(const int *in, int n, int *partials, int *total) {
    __shared__ int s[kBlock];
    const int t = threadIdx.x;
    const int i = blockIdx.x * (2 * kBlock) + t;
    int v = 0;
    if (i < n) v = in[i];
    if (i + kBlock < n) v += in[i + kBlock];
    s[t] = v;
    __syncthreads();
    for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) {
        partials[blockIdx.x] = s[0];
        atomicAdd(total, s[0]);
    }
}

__global__ void reduce_float(const float *in, int n, float *partials, float *total) {
    __shared__ float s[kBlock];
    const int t = threadIdx.x;
    const int i = blockIdx.x * (2 * kBlock) + t;
    float v = 0.0f;
    if (i < n) v = in[i];
    if (i + kBlock < n) v += in[i + kBlock];
    s[t] = v;
    __syncthreads();
    for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) {
        partials[blockIdx.x] = s[0];
        atomicAdd(total, s[0]);
    }
}

// 64-bin histogram: shared-memory atomics per block, then merged with global atomics.
__global__ void histogram64(const int *in, int n, unsigned *bins) {
    __shared__ unsigned local[64];
    for (int b = threadIdx.x; b < 64; b += blockDim.x) local[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        atomicAdd(&local[in[i] & 63], 1u);
    __syncthreads();
    for (int b = threadIdx.x; b < 64; b += blockDim.x)
        if (local[b]) atomicAdd(&bins[b], local[b]);
}

struct AtomicState {
    int max_i, min_i;
    unsigned max_u, min_u;
    int cas_counter;
    int exch_slot;
    int ticket_counter;
    unsigned or_v, and_v, xor_v;
    unsigned inc_v, dec_v;
    int sub_v;
    unsigned long long add64;
    double add_d;
};

__global__ void atomics(const int *in, int n, AtomicState *st, int *cas_tickets,
                        int *exch_old, int *add_tickets) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int v = in[i];
    atomicMax(&st->max_i, v);
    atomicMin(&st->min_i, v);
    atomicMax(&st->max_u, (unsigned)v * 2654435761u);
    atomicMin(&st->min_u, (unsigned)v * 2654435761u);

    // Increment through a CAS loop; the value this thread swapped in is its ticket.
    int old = atomicAdd(&st->cas_counter, 0);  // atomic read
    int assumed;
    do {
        assumed = old;
        old = atomicCAS(&st->cas_counter, assumed, assumed + 1);
    } while (old != assumed);
    cas_tickets[i] = assumed;

    exch_old[i] = atomicExch(&st->exch_slot, i + 1);
    add_tickets[i] = atomicAdd(&st->ticket_counter, 1);

    atomicOr(&st->or_v, 1u << (i % 29));
    if (i % 3 == 0) atomicAnd(&st->and_v, ~(1u << (i % 31)));
    atomicXor(&st->xor_v, (unsigned)i * 2246822519u);
    atomicInc(&st->inc_v, 9u);
    atomicDec(&st->dec_v, 9u);
    atomicSub(&st->sub_v, v);
    atomicAdd(&st->add64, (unsigned long long)(v + 5000) << 20);
    atomicAdd(&st->add_d, (double)v * 0.125);
}

static void test_reductions() {
    const int n = 65536 + 123;
    const int grid = (n + 2 * kBlock - 1) / (2 * kBlock);
    std::vector<int> hi(n);
    std::vector<float> hf(n);
    Rng rng(42);
    for (int k = 0; k < n; ++k) {
        hi[k] = rng.range(-1000, 1000);
        hf[k] = 0.25f * (float)rng.range(-64, 64);  // every partial sum is exactly representable
    }
    std::vector<int> ref_pi(grid, 0);
    std::vector<float> ref_pf(grid, 0.0f);
    long long ref_ti = 0;
    double ref_tf = 0.0;
    for (int k = 0; k < n; ++k) {
        const int b = k / (2 * kBlock);
        ref_pi[b] += hi[k];
        ref_pf[b] += hf[k];
        ref_ti += hi[k];
        ref_tf += hf[k];
    }

    int *d_in, *d_pi, *d_ti;
    float *d_inf, *d_pf, *d_tf;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_inf, n * sizeof(float)));
    CHECK(cudaMalloc(&d_pi, grid * sizeof(int)));
    CHECK(cudaMalloc(&d_pf, grid * sizeof(float)));
    CHECK(cudaMalloc(&d_ti, sizeof(int)));
    CHECK(cudaMalloc(&d_tf, sizeof(float)));
    CHECK(cudaMemcpy(d_in, hi.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_inf, hf.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_ti, 0, sizeof(int)));
    CHECK(cudaMemset(d_tf, 0, sizeof(float)));

    reduce_int<<<grid, kBlock>>>(d_in, n, d_pi, d_ti);
    CHECK_LAUNCH();
    reduce_float<<<grid, kBlock>>>(d_inf, n, d_pf, d_tf);
    CHECK_LAUNCH();

    std::vector<int> pi(grid);
    std::vector<float> pf(grid);
    int ti;
    float tf;
    CHECK(cudaMemcpy(pi.data(), d_pi, grid * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(pf.data(), d_pf, grid * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(&ti, d_ti, sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(&tf, d_tf, sizeof(float), cudaMemcpyDeviceToHost));
    compare_exact("reduce_int partials", ref_pi.data(), pi.data(), grid);
    compare_close("reduce_float partials", ref_pf.data(), pf.data(), grid, 0.0);
    if (ti != ref_ti) fail("reduce_int total: expected %lld got %d", ref_ti, ti);
    if ((double)tf != ref_tf) fail("reduce_float total: expected %.9g got %.9g", ref_tf, tf);

    // Histogram of the same ints.
    unsigned *d_bins;
    CHECK(cudaMalloc(&d_bins, 64 * sizeof(unsigned)));
    CHECK(cudaMemset(d_bins, 0, 64 * sizeof(unsigned)));
    histogram64<<<24, 192>>>(d_in, n, d_bins);
    CHECK_LAUNCH();
    unsigned bins[64], ref_bins[64] = {0};
    CHECK(cudaMemcpy(bins, d_bins, sizeof bins, cudaMemcpyDeviceToHost));
    for (int k = 0; k < n; ++k) ref_bins[hi[k] & 63]++;
    compare_exact("histogram64", ref_bins, bins, 64);

    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_inf));
    CHECK(cudaFree(d_pi));
    CHECK(cudaFree(d_pf));
    CHECK(cudaFree(d_ti));
    CHECK(cudaFree(d_tf));
    CHECK(cudaFree(d_bins));
}

// Checks that v holds each of 0..n-1 exactly once.
static void expect_permutation(const char *what, std::vector<int> v, int base) {
    std::sort(v.begin(), v.end());
    for (size_t k = 0; k < v.size(); ++k) {
        if (v[k] != (int)k + base) {
            fail("%s: sorted[%zu] expected %d got %d (values are not a permutation)", what, k,
                 (int)k + base, v[k]);
            return;
        }
    }
}

static void test_atomics() {
    const int n = 4096 + 17;
    std::vector<int> hin(n);
    Rng rng(7);
    for (int k = 0; k < n; ++k) hin[k] = rng.range(-100000, 100000);

    AtomicState init;
    memset(&init, 0, sizeof init);
    init.max_i = -2147483647 - 1;
    init.min_i = 2147483647;
    init.max_u = 0;
    init.min_u = 0xffffffffu;
    init.and_v = 0xffffffffu;
    init.xor_v = 0x12345678u;
    init.sub_v = 1000;
    init.add64 = 1ull << 40;
    init.add_d = 0.5;

    AtomicState ref = init;
    for (int i = 0; i < n; ++i) {
        const int v = hin[i];
        ref.max_i = std::max(ref.max_i, v);
        ref.min_i = std::min(ref.min_i, v);
        ref.max_u = std::max(ref.max_u, (unsigned)v * 2654435761u);
        ref.min_u = std::min(ref.min_u, (unsigned)v * 2654435761u);
        ref.or_v |= 1u << (i % 29);
        if (i % 3 == 0) ref.and_v &= ~(1u << (i % 31));
        ref.xor_v ^= (unsigned)i * 2246822519u;
        ref.inc_v = ref.inc_v >= 9u ? 0u : ref.inc_v + 1;
        ref.dec_v = (ref.dec_v == 0 || ref.dec_v > 9u) ? 9u : ref.dec_v - 1;
        ref.sub_v -= v;
        ref.add64 += (unsigned long long)(v + 5000) << 20;
        ref.add_d += (double)v * 0.125;  // multiples of 1/8 well below 2^53: exact in any order
    }

    int *d_in, *d_cas, *d_exch, *d_tickets;
    AtomicState *d_st;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_cas, n * sizeof(int)));
    CHECK(cudaMalloc(&d_exch, n * sizeof(int)));
    CHECK(cudaMalloc(&d_tickets, n * sizeof(int)));
    CHECK(cudaMalloc(&d_st, sizeof(AtomicState)));
    CHECK(cudaMemcpy(d_in, hin.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_st, &init, sizeof init, cudaMemcpyHostToDevice));

    atomics<<<(n + 127) / 128, 128>>>(d_in, n, d_st, d_cas, d_exch, d_tickets);
    CHECK_LAUNCH();

    AtomicState got;
    std::vector<int> cas(n), exch(n), tickets(n);
    CHECK(cudaMemcpy(&got, d_st, sizeof got, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(cas.data(), d_cas, n * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(exch.data(), d_exch, n * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(tickets.data(), d_tickets, n * sizeof(int), cudaMemcpyDeviceToHost));

#define CMP(field, fmt)                                                                     \
    if (got.field != ref.field)                                                             \
        fail("atomic " #field ": expected " fmt " got " fmt, ref.field, got.field);
    CMP(max_i, "%d");
    CMP(min_i, "%d");
    CMP(max_u, "%u");
    CMP(min_u, "%u");
    CMP(or_v, "0x%08x");
    CMP(and_v, "0x%08x");
    CMP(xor_v, "0x%08x");
    CMP(inc_v, "%u");
    CMP(dec_v, "%u");
    CMP(sub_v, "%d");
    CMP(add64, "%llu");
    CMP(add_d, "%.17g");
#undef CMP
    if (got.cas_counter != n) fail("atomicCAS counter: expected %d got %d", n, got.cas_counter);
    if (got.ticket_counter != n)
        fail("atomicAdd ticket counter: expected %d got %d", n, got.ticket_counter);
    expect_permutation("atomicCAS tickets", cas, 0);
    expect_permutation("atomicAdd tickets", tickets, 0);
    // atomicExch: the old values plus the final slot value are exactly {0, 1, ..., n}.
    exch.push_back(got.exch_slot);
    expect_permutation("atomicExch old values + final", exch, 0);

    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_cas));
    CHECK(cudaFree(d_exch));
    CHECK(cudaFree(d_tickets));
    CHECK(cudaFree(d_st));
}

int main() {
    test_reductions();
    test_atomics();
    return finish();
}
