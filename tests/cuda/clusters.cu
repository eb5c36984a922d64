// Thread-block clusters (compute capability 9.0): a kernel launched with
// cudaLaunchKernelEx in clusters of 2 and of 4 blocks writes, for each block, its rank in
// its cluster and its cluster's index, read back and checked; a grid that is not a whole
// number of clusters is refused. On a device without clusters (cudaDevAttrClusterLaunch
// 0: the mock) the launch is refused with cudaErrorNotSupported, and the process goes on.
// cuBLAS's half-precision kernels on an H100 are launched so.
#define TEST_NAME "clusters"
#include "check.cuh"

#include <cooperative_groups.h>
namespace cg = cooperative_groups;

__global__ void ranks(int *out) {
    cg::cluster_group cluster = cg::this_cluster();
    out[2 * blockIdx.x] = (int)cluster.block_rank();
    out[2 * blockIdx.x + 1] = (int)(blockIdx.x / cluster.dim_blocks().x);
}

__global__ void plain(int *out) { out[blockIdx.x] = blockIdx.x + 1; }

static cudaError_t launch(int *d, int blocks, int cluster) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(blocks);
    config.blockDim = dim3(32);
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = cluster;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    config.attrs = &attr;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, ranks, d);
}

int main() {
    int clusters = -1;
    CHECK(cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, 0));
    const int blocks = 16;
    int *d;
    CHECK(cudaMalloc(&d, 2 * blocks * sizeof(int)));
    if (clusters == 0) {
        const cudaError_t e = launch(d, blocks, 2);
        if (e != cudaErrorNotSupported) fail("a clustered launch on a device without clusters: %s", cudaGetErrorName(e));
        cudaGetLastError();
        printf("clusters: not on this device, refused\n");
    } else {
        for (int size : {2, 4}) {
            CHECK(cudaMemset(d, 0xff, 2 * blocks * sizeof(int)));
            CHECK(launch(d, blocks, size));
            CHECK(cudaDeviceSynchronize());
            int h[2 * blocks];
            CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
            for (int b = 0; b < blocks; ++b)
                if (h[2 * b] != b % size || h[2 * b + 1] != b / size) {
                    fail("clusters of %d: block %d has rank %d in cluster %d", size, b, h[2 * b], h[2 * b + 1]);
                    break;
                }
        }
        const cudaError_t e = launch(d, 15, 2);
        if (e == cudaSuccess) {
            const cudaError_t later = cudaDeviceSynchronize();
            if (later == cudaSuccess) fail("15 blocks in clusters of 2 ran");
        }
        cudaGetLastError();
        printf("clusters of 2 and 4 blocks checked\n");
    }
    // The process goes on.
    plain<<<4, 1>>>(d);
    CHECK_LAUNCH();
    int h[4];
    CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 4; ++i)
        if (h[i] != i + 1) fail("after the clustered launches: [%d] = %d", i, h[i]);
    CHECK(cudaFree(d));
    return finish();
}
