// Cooperative launches: a grid-wide reduction that synchronises every block at once
// (cooperative_groups' grid.sync()) over several rounds, launched with
// cudaLaunchCooperativeKernel at the size the occupancy calculator allows, and with
// cudaLaunchKernelEx's cooperative attribute; a grid larger than the device holds at
// once is refused with cudaErrorCooperativeLaunchTooLarge.
#define TEST_NAME "cooperative"
#include "check.cuh"

#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// Round r: each block adds its part of in[] into partial[block], then (after a grid
// sync) block 0 sums the partials into out[r] and every thread scales in[] by 2
// for the next round (after another sync).
__global__ void rounds(int *in, int n, int *partial, int *out, int nrounds) {
    cg::grid_group grid = cg::this_grid();
    __shared__ int sum;
    for (int r = 0; r < nrounds; ++r) {
        if (threadIdx.x == 0) sum = 0;
        __syncthreads();
        for (int i = grid.thread_rank(); i < n; i += grid.size()) atomicAdd(&sum, in[i]);
        __syncthreads();
        if (threadIdx.x == 0) partial[blockIdx.x] = sum;
        grid.sync();
        if (grid.thread_rank() == 0) {
            int total = 0;
            for (int b = 0; b < (int)gridDim.x; ++b) total += partial[b];
            out[r] = total;
        }
        grid.sync();
        for (int i = grid.thread_rank(); i < n; i += grid.size()) in[i] *= 2;
        grid.sync();
    }
}

int main() {
    int coop = 0;
    CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, 0));
    if (coop != 1) fail("cudaDevAttrCooperativeLaunch is %d", coop);
    int sms = 0, per_sm = 0;
    const int threads = 128;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, rounds, threads, 0));
    // A modest grid that fits (the mock runs each block on a thread of its own).
    const int blocks = sms < 8 ? sms : 8;
    if (per_sm < 1) fail("occupancy %d", per_sm);
    const int n = 10000, nrounds = 4;
    int *in, *partial, *out;
    CHECK(cudaMalloc((void **)&in, n * sizeof(int)));
    CHECK(cudaMalloc((void **)&partial, blocks * sizeof(int)));
    CHECK(cudaMalloc((void **)&out, nrounds * sizeof(int)));
    int *h = (int *)malloc(n * sizeof(int));
    long long expect = 0;
    for (int i = 0; i < n; ++i) {
        h[i] = i % 7;
        expect += h[i];
    }
    for (int launch = 0; launch < 2; ++launch) {
        CHECK(cudaMemcpy(in, h, n * sizeof(int), cudaMemcpyHostToDevice));
        int nn = n, nr = nrounds;
        void *args[] = {&in, &nn, &partial, &out, &nr};
        if (launch == 0) {
            CHECK(cudaLaunchCooperativeKernel((void *)rounds, dim3(blocks), dim3(threads), args, 0, 0));
        } else {
            cudaLaunchAttribute attr;
            attr.id = cudaLaunchAttributeCooperative;
            attr.val.cooperative = 1;
            cudaLaunchConfig_t config = {};
            config.gridDim = dim3(blocks);
            config.blockDim = dim3(threads);
            config.attrs = &attr;
            config.numAttrs = 1;
            CHECK(cudaLaunchKernelExC(&config, (void *)rounds, args));
        }
        CHECK(cudaDeviceSynchronize());
        int got[nrounds];
        CHECK(cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost));
        for (int r = 0; r < nrounds; ++r)
            if (got[r] != (int)(expect << r)) fail("launch %d round %d: expected %lld got %d", launch, r, expect << r, got[r]);
    }
    // Larger than the device holds at once: refused, and nothing is left broken.
    int nn = n, nr = 1;
    void *args[] = {&in, &nn, &partial, &out, &nr};
    const int too_many = sms * per_sm + 1;
    cudaError_t r = cudaLaunchCooperativeKernel((void *)rounds, dim3(too_many), dim3(threads), args, 0, 0);
    if (r != cudaErrorCooperativeLaunchTooLarge) fail("a grid of %d blocks: %s", too_many, cudaGetErrorName(r));
    cudaGetLastError();
    CHECK(cudaDeviceSynchronize());
    free(h);
    CHECK(cudaFree(in));
    CHECK(cudaFree(partial));
    CHECK(cudaFree(out));
    return finish();
}
