// Warp operations whose member mask differs between lanes at one call site: even lanes
// reduce over the even lanes (mask 0x55555555) and odd lanes over the odd ones
// (0xaaaaaaaa) with __reduce_max_sync, __reduce_add_sync and __ballot_sync; and
// warpSize (PTX's predefined WARP_SZ). The CPU computes what each lane must get.
#define TEST_NAME "warp_masks"
#include "check.cuh"

constexpr int kOut = 4;

__global__ void by_parity(const unsigned *in, unsigned *out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const unsigned mask = (lane & 1) ? 0xaaaaaaaau : 0x55555555u;
    unsigned *o = out + (size_t)i * kOut;
    o[0] = __reduce_max_sync(mask, in[i]);
    o[1] = __reduce_add_sync(mask, in[i]);
    o[2] = __ballot_sync(mask, in[i] % 3 == 0);
    o[3] = warpSize;
}

int main() {
    const int blocks = 3, threads = 64, n = blocks * threads;
    unsigned h_in[n];
    for (int i = 0; i < n; ++i) h_in[i] = (i * 2654435761u) % 1000;
    unsigned *d_in, *d_out;
    CHECK(cudaMalloc(&d_in, sizeof h_in));
    CHECK(cudaMalloc(&d_out, n * kOut * sizeof(unsigned)));
    CHECK(cudaMemcpy(d_in, h_in, sizeof h_in, cudaMemcpyHostToDevice));
    by_parity<<<blocks, threads>>>(d_in, d_out);
    CHECK_LAUNCH();
    static unsigned h_out[n * kOut];
    CHECK(cudaMemcpy(h_out, d_out, sizeof h_out, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
        const int warp = i / 32, parity = i & 1;
        unsigned max = 0, sum = 0, ballot = 0;
        for (int l = parity; l < 32; l += 2) {
            const unsigned v = h_in[warp * 32 + l];
            max = v > max ? v : max;
            sum += v;
            if (v % 3 == 0) ballot |= 1u << l;
        }
        const unsigned want[kOut] = {max, sum, ballot, 32};
        for (int k = 0; k < kOut; ++k)
            if (h_out[i * kOut + k] != want[k])
                fail("thread %d result %d: expected %u got %u", i, k, want[k], h_out[i * kOut + k]);
    }
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
    return finish();
}
