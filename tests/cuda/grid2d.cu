// 2-D grids of 2-D blocks: a naive and a shared-memory-tiled matrix transpose (with a
// padded tile), a tiled matrix multiply with shared-memory tiles and ragged edges, and a 3-D
// grid of 3-D blocks that records every built-in index variable.
#define TEST_NAME "grid2d"
#include "check.cuh"

#include <vector>

constexpr int TILE = 16;

__global__ void transpose_naive(const int *in, int *out, int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (r < rows && c < cols) out[c * rows + r] = in[r * cols + c];
}

// 32x8 threads move a 32x32 tile; the +1 column avoids shared-memory bank conflicts.
__global__ void transpose_tiled(const float *in, float *out, int rows, int cols) {
    __shared__ float tile[32][32 + 1];
    int c = blockIdx.x * 32 + threadIdx.x;
    int r = blockIdx.y * 32 + threadIdx.y;
    for (int k = 0; k < 32; k += 8)
        if (r + k < rows && c < cols) tile[threadIdx.y + k][threadIdx.x] = in[(r + k) * cols + c];
    __syncthreads();
    c = blockIdx.y * 32 + threadIdx.x;  // column in the output = row in the input
    r = blockIdx.x * 32 + threadIdx.y;
    for (int k = 0; k < 32; k += 8)
        if (r + k < cols && c < rows) out[(r + k) * rows + c] = tile[threadIdx.x][threadIdx.y + k];
}

// C[M x N] = A[M x K] * B[K x N], TILE x TILE blocks, shared tiles of A and B.
__global__ void matmul_tiled(const float *A, const float *B, float *C, int M, int N, int K) {
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE];
    const int row = blockIdx.y * TILE + threadIdx.y;
    const int col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int t = 0; t < K; t += TILE) {
        const int ak = t + threadIdx.x, bk = t + threadIdx.y;
        As[threadIdx.y][threadIdx.x] = (row < M && ak < K) ? A[row * K + ak] : 0.0f;
        Bs[threadIdx.y][threadIdx.x] = (bk < K && col < N) ? B[bk * N + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < TILE; ++k) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
        __syncthreads();
    }
    if (row < M && col < N) C[row * N + col] = acc;
}

// Records all index variables of every thread of a 3-D launch.
struct Idx3 {
    unsigned tx, ty, tz, bx, by, bz, ndx, ndy, ndz, ngx, ngy, ngz;
};

__global__ void index3d(Idx3 *out, int *linear_check) {
    const unsigned block_linear = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned thread_linear =
        threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned threads_per_block = blockDim.x * blockDim.y * blockDim.z;
    const unsigned g = block_linear * threads_per_block + thread_linear;
    Idx3 r;
    r.tx = threadIdx.x; r.ty = threadIdx.y; r.tz = threadIdx.z;
    r.bx = blockIdx.x;  r.by = blockIdx.y;  r.bz = blockIdx.z;
    r.ndx = blockDim.x; r.ndy = blockDim.y; r.ndz = blockDim.z;
    r.ngx = gridDim.x;  r.ngy = gridDim.y;  r.ngz = gridDim.z;
    out[g] = r;
    atomicAdd(&linear_check[g], 1);  // every slot must be hit exactly once
}

static void test_transpose() {
    const int rows = 200, cols = 136;  // neither is a multiple of the tile sizes
    const int n = rows * cols;
    std::vector<int> hi(n);
    std::vector<float> hf(n);
    for (int k = 0; k < n; ++k) {
        hi[k] = k * 7 + 3;
        hf[k] = (float)k * 0.5f - 1000.0f;
    }
    int *d_in, *d_out;
    float *d_inf, *d_outf;
    CHECK(cudaMalloc(&d_in, n * sizeof(int)));
    CHECK(cudaMalloc(&d_out, n * sizeof(int)));
    CHECK(cudaMalloc(&d_inf, n * sizeof(float)));
    CHECK(cudaMalloc(&d_outf, n * sizeof(float)));
    CHECK(cudaMemcpy(d_in, hi.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_inf, hf.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0, n * sizeof(int)));
    CHECK(cudaMemset(d_outf, 0, n * sizeof(float)));

    const dim3 block(16, 8);
    const dim3 grid((cols + block.x - 1) / block.x, (rows + block.y - 1) / block.y);
    transpose_naive<<<grid, block>>>(d_in, d_out, rows, cols);
    CHECK_LAUNCH();
    const dim3 tblock(32, 8);
    const dim3 tgrid((cols + 31) / 32, (rows + 31) / 32);
    transpose_tiled<<<tgrid, tblock>>>(d_inf, d_outf, rows, cols);
    CHECK_LAUNCH();

    std::vector<int> got(n), want(n);
    std::vector<float> gotf(n), wantf(n);
    CHECK(cudaMemcpy(got.data(), d_out, n * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(gotf.data(), d_outf, n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            want[c * rows + r] = hi[r * cols + c];
            wantf[c * rows + r] = hf[r * cols + c];
        }
    compare_exact("transpose_naive", want.data(), got.data(), n);
    compare_close("transpose_tiled", wantf.data(), gotf.data(), n, 0.0);
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
    CHECK(cudaFree(d_inf));
    CHECK(cudaFree(d_outf));
}

static void test_matmul(int M, int N, int K) {
    std::vector<float> A(M * K), B(K * N), C(M * N), ref(M * N);
    Rng rng(M * 1000 + N * 10 + K);
    // Small integers: every product and partial sum is exact, so any summation order and
    // fused multiply-adds give identical results.
    for (auto &x : A) x = (float)rng.range(-8, 8);
    for (auto &x : B) x = (float)rng.range(-8, 8);
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float acc = 0.0f;
            for (int k = 0; k < K; ++k) acc += A[i * K + k] * B[k * N + j];
            ref[i * N + j] = acc;
        }
    float *dA, *dB, *dC;
    CHECK(cudaMalloc(&dA, A.size() * sizeof(float)));
    CHECK(cudaMalloc(&dB, B.size() * sizeof(float)));
    CHECK(cudaMalloc(&dC, C.size() * sizeof(float)));
    CHECK(cudaMemcpy(dA, A.data(), A.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dB, B.data(), B.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dC, 0xff, C.size() * sizeof(float)));  // NaN: unwritten outputs show up
    const dim3 block(TILE, TILE);
    const dim3 grid((N + TILE - 1) / TILE, (M + TILE - 1) / TILE);
    matmul_tiled<<<grid, block>>>(dA, dB, dC, M, N, K);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(C.data(), dC, C.size() * sizeof(float), cudaMemcpyDeviceToHost));
    char what[64];
    snprintf(what, sizeof what, "matmul %dx%dx%d", M, N, K);
    compare_close(what, ref.data(), C.data(), C.size(), 0.0);
    CHECK(cudaFree(dA));
    CHECK(cudaFree(dB));
    CHECK(cudaFree(dC));
}

static void test_index3d() {
    const dim3 block(4, 3, 5);  // 60 threads: the second warp is partial
    const dim3 grid(3, 2, 4);
    const int per_block = block.x * block.y * block.z;
    const int total = per_block * grid.x * grid.y * grid.z;
    Idx3 *d_out;
    int *d_hits;
    CHECK(cudaMalloc(&d_out, total * sizeof(Idx3)));
    CHECK(cudaMalloc(&d_hits, total * sizeof(int)));
    CHECK(cudaMemset(d_out, 0xff, total * sizeof(Idx3)));
    CHECK(cudaMemset(d_hits, 0, total * sizeof(int)));
    index3d<<<grid, block>>>(d_out, d_hits);
    CHECK_LAUNCH();
    std::vector<Idx3> got(total);
    std::vector<int> hits(total), ones(total, 1);
    CHECK(cudaMemcpy(got.data(), d_out, total * sizeof(Idx3), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(hits.data(), d_hits, total * sizeof(int), cudaMemcpyDeviceToHost));
    compare_exact("index3d hits per slot", ones.data(), hits.data(), total);
    int bad = 0;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            const unsigned bl = bx + grid.x * (by + grid.y * bz);
                            const unsigned tl = tx + block.x * (ty + block.y * tz);
                            const Idx3 &r = got[bl * per_block + tl];
                            const Idx3 w = {tx, ty, tz, bx, by, bz, block.x, block.y,
                                            block.z, grid.x, grid.y, grid.z};
                            if (memcmp(&r, &w, sizeof w) != 0 && bad++ < 5)
                                fail("index3d block (%u,%u,%u) thread (%u,%u,%u): got tid "
                                     "(%u,%u,%u) bid (%u,%u,%u) bdim (%u,%u,%u) gdim (%u,%u,%u)",
                                     bx, by, bz, tx, ty, tz, r.tx, r.ty, r.tz, r.bx, r.by, r.bz,
                                     r.ndx, r.ndy, r.ndz, r.ngx, r.ngy, r.ngz);
                        }
    CHECK(cudaFree(d_out));
    CHECK(cudaFree(d_hits));
}

int main() {
    test_transpose();
    test_matmul(96, 112, 80);  // whole tiles in every dimension
    test_matmul(50, 37, 29);   // ragged in every dimension
    test_index3d();
    return finish();
}
