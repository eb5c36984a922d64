// Device-side malloc and free: every thread allocates, fills, sums and frees a buffer of
// its own; pointers allocated in one launch are used and freed in the next; a request
// larger than the heap gets NULL, as on a device; printf of a heap string.
#define TEST_NAME "device_malloc"
#include "check.cuh"

__global__ void own_buffers(long long *sums, int per) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    int *buf = (int *)malloc(per * sizeof(int));
    if (buf == nullptr) { sums[t] = -1; return; }
    for (int i = 0; i < per; ++i) buf[i] = t + i;
    long long s = 0;
    for (int i = 0; i < per; ++i) s += buf[i];
    sums[t] = s;
    free(buf);
}

__global__ void keep(int **slots, int n) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    int *p = (int *)malloc(4 * sizeof(int));
    if (p) for (int i = 0; i < 4; ++i) p[i] = 10 * t + i;
    slots[t] = p;
}

__global__ void use_and_free(int **slots, int *out, int n) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    int *p = slots[t];
    out[t] = p ? p[0] + p[1] + p[2] + p[3] : -1;
    free(p);
}

__global__ void too_big(unsigned long long *got) {
    void *p = malloc((size_t)64 << 20);
    *got = (unsigned long long)p;
    free(p);
}

int main() {
    const int threads = 256, per = 100;
    long long *sums;
    CHECK(cudaMalloc(&sums, threads * sizeof(long long)));
    own_buffers<<<4, threads / 4>>>(sums, per);
    CHECK_LAUNCH();
    long long hs[threads];
    CHECK(cudaMemcpy(hs, sums, sizeof hs, cudaMemcpyDeviceToHost));
    for (int t = 0; t < threads; ++t) {
        const long long want = (long long)per * t + (long long)per * (per - 1) / 2;
        if (hs[t] != want) { fail("thread %d: sum %lld, expected %lld", t, hs[t], want); break; }
    }
    // Twice over: what one launch allocates, the next uses and frees.
    const int n = 128;
    int **slots, *out;
    CHECK(cudaMalloc(&slots, n * sizeof(int *)));
    CHECK(cudaMalloc(&out, n * sizeof(int)));
    for (int round = 0; round < 2; ++round) {
        keep<<<2, 64>>>(slots, n);
        use_and_free<<<2, 64>>>(slots, out, n);
        CHECK_LAUNCH();
        int ho[n];
        CHECK(cudaMemcpy(ho, out, sizeof ho, cudaMemcpyDeviceToHost));
        for (int t = 0; t < n; ++t)
            if (ho[t] != 40 * t + 6) { fail("round %d, slot %d: %d", round, t, ho[t]); break; }
    }
    unsigned long long *got;
    CHECK(cudaMalloc(&got, sizeof *got));
    too_big<<<1, 1>>>(got);
    CHECK_LAUNCH();
    unsigned long long hg = 1;
    CHECK(cudaMemcpy(&hg, got, sizeof hg, cudaMemcpyDeviceToHost));
    if (hg != 0) fail("malloc of 64 MiB from an 8 MiB heap gave %#llx, expected NULL", hg);
    return finish();
}
