// Tensor-core matrix multiply through nvcuda::wmma: f16 inputs with f32 accumulators
// (row-major A, column-major B, one warp per 16x16 tile, over K in steps), bf16 inputs
// on the m32n8k16 shape, tf32 on m16n16k8, f16 accumulators stored column-major, tiles
// staged through shared memory, and an element-wise operation on an accumulator
// fragment; every result against a CPU reference (inputs chosen so the sums are exact).
#define TEST_NAME "wmma"
#include "check.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
using namespace nvcuda;

static const int M = 32, N = 32, K = 64;

__global__ void gemm_f16(const half *a, const half *b, const float *c, float *d) {
    const int tm = blockIdx.y, tn = blockIdx.x;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(acc, c + tm * 16 * N + tn * 16, N, wmma::mem_row_major);
    for (int k = 0; k < K; k += 16) {
        wmma::load_matrix_sync(fa, a + tm * 16 * K + k, K);
        wmma::load_matrix_sync(fb, b + tn * 16 * K + k, K);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 2.0f;
    wmma::store_matrix_sync(d + tm * 16 * N + tn * 16, acc, N, wmma::mem_row_major);
}

// The same through shared memory, with f16 accumulators stored column-major.
__global__ void gemm_f16_shared(const half *a, const half *b, half *d_colmajor) {
    __shared__ half sa[16 * 16], sb[16 * 16];
    const int tm = blockIdx.y, tn = blockIdx.x;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, half> acc;
    wmma::fill_fragment(acc, __float2half(0.0f));
    for (int k = 0; k < K; k += 16) {
        for (int i = threadIdx.x; i < 256; i += 32) {
            sa[i] = a[(tm * 16 + i / 16) * K + k + i % 16];
            sb[i] = b[(tn * 16 + i / 16) * K + k + i % 16];
        }
        __syncwarp();
        wmma::load_matrix_sync(fa, sa, 16);
        wmma::load_matrix_sync(fb, sb, 16);
        wmma::mma_sync(acc, fa, fb, acc);
        __syncwarp();
    }
    wmma::store_matrix_sync(d_colmajor + tn * 16 * M + tm * 16, acc, M, wmma::mem_col_major);
}

// bf16 on m32n8k16: one warp per 32x8 tile.
__global__ void gemm_bf16(const __nv_bfloat16 *a, const __nv_bfloat16 *b, float *d) {
    const int tm = blockIdx.y, tn = blockIdx.x;
    wmma::fragment<wmma::matrix_a, 32, 8, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 32, 8, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 32, 8, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < K; k += 16) {
        wmma::load_matrix_sync(fa, a + tm * 32 * K + k, K);
        wmma::load_matrix_sync(fb, b + tn * 8 * K + k, K);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(d + tm * 32 * N + tn * 8, acc, N, wmma::mem_row_major);
}

// tf32 on m16n16k8.
__global__ void gemm_tf32(const float *a, const float *b, float *d) {
    const int tm = blockIdx.y, tn = blockIdx.x;
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < K; k += 8) {
        wmma::load_matrix_sync(fa, a + tm * 16 * K + k, K);
        wmma::load_matrix_sync(fb, b + tn * 16 * K + k, K);
        for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
        for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(d + tm * 16 * N + tn * 16, acc, N, wmma::mem_row_major);
}

int main() {
    // A is M x K row-major; B is K x N held column-major (element (k, n) at b[n * K + k]).
    float af[M * K], bf[N * K], cf[M * N], ref[M * N];
    for (int i = 0; i < M * K; ++i) af[i] = (float)((i * 7) % 5 - 2);
    for (int i = 0; i < N * K; ++i) bf[i] = (float)((i * 3) % 7 - 3) * 0.5f;
    for (int i = 0; i < M * N; ++i) cf[i] = (float)(i % 11) - 5.0f;
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            float s = 0;
            for (int k = 0; k < K; ++k) s += af[m * K + k] * bf[n * K + k];
            ref[m * N + n] = s;
        }
    half ah[M * K], bh[N * K];
    __nv_bfloat16 ab[M * K], bb[N * K];
    for (int i = 0; i < M * K; ++i) { ah[i] = __float2half(af[i]); ab[i] = __float2bfloat16(af[i]); }
    for (int i = 0; i < N * K; ++i) { bh[i] = __float2half(bf[i]); bb[i] = __float2bfloat16(bf[i]); }
    half *da, *db, *dh;
    __nv_bfloat16 *dab, *dbb;
    float *dc, *dd, *daf, *dbf;
    CHECK(cudaMalloc((void **)&da, sizeof ah));
    CHECK(cudaMalloc((void **)&db, sizeof bh));
    CHECK(cudaMalloc((void **)&dab, sizeof ab));
    CHECK(cudaMalloc((void **)&dbb, sizeof bb));
    CHECK(cudaMalloc((void **)&daf, sizeof af));
    CHECK(cudaMalloc((void **)&dbf, sizeof bf));
    CHECK(cudaMalloc((void **)&dc, sizeof cf));
    CHECK(cudaMalloc((void **)&dd, sizeof cf));
    CHECK(cudaMalloc((void **)&dh, M * N * sizeof(half)));
    CHECK(cudaMemcpy(da, ah, sizeof ah, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, bh, sizeof bh, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dab, ab, sizeof ab, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dbb, bb, sizeof bb, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(daf, af, sizeof af, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dbf, bf, sizeof bf, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dc, cf, sizeof cf, cudaMemcpyHostToDevice));
    float out[M * N];

    gemm_f16<<<dim3(N / 16, M / 16), 32>>>(da, db, dc, dd);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(out, dd, sizeof out, cudaMemcpyDeviceToHost));
    for (int i = 0; i < M * N; ++i)
        if (out[i] != 2.0f * (ref[i] + cf[i])) {
            fail("f16: [%d] expected %g got %g", i, 2.0f * (ref[i] + cf[i]), out[i]);
            break;
        }

    gemm_f16_shared<<<dim3(N / 16, M / 16), 32>>>(da, db, dh);
    CHECK_LAUNCH();
    half hout[M * N];
    CHECK(cudaMemcpy(hout, dh, sizeof hout, cudaMemcpyDeviceToHost));
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n)
            if (__half2float(hout[n * M + m]) != ref[m * N + n]) {
                fail("f16 accumulators, column-major: (%d, %d) expected %g got %g", m, n, ref[m * N + n],
                     __half2float(hout[n * M + m]));
                m = M;
                break;
            }

    gemm_bf16<<<dim3(N / 8, M / 32), 32>>>(dab, dbb, dd);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(out, dd, sizeof out, cudaMemcpyDeviceToHost));
    for (int i = 0; i < M * N; ++i)
        if (out[i] != ref[i]) {
            fail("bf16: [%d] expected %g got %g", i, ref[i], out[i]);
            break;
        }

    gemm_tf32<<<dim3(N / 16, M / 16), 32>>>(daf, dbf, dd);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(out, dd, sizeof out, cudaMemcpyDeviceToHost));
    for (int i = 0; i < M * N; ++i)
        if (out[i] != ref[i]) {
            fail("tf32: [%d] expected %g got %g", i, ref[i], out[i]);
            break;
        }
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dab));
    CHECK(cudaFree(dbb));
    CHECK(cudaFree(daf));
    CHECK(cudaFree(dbf));
    CHECK(cudaFree(dc));
    CHECK(cudaFree(dd));
    CHECK(cudaFree(dh));
    return finish();
}
