// mma.sync through inline PTX, with fragments loaded in the layouts the PTX ISA gives
// (g = lane / 4, t = lane % 4): m16n8k16 with f16 inputs and f32 accumulators, and
// m16n8k8 with tf32 inputs; each result against a CPU reference.
#define TEST_NAME "mma_sync"
#include "check.cuh"

#include <cuda_fp16.h>

// A 16x16 row-major, B 16x8 stored column-major (B[k][n] at b[n * 16 + k]), C/D 16x8.
__global__ void f16_m16n8k16(const half *a, const half *b, const float *c, float *d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    auto pack = [](half lo, half hi) {
        return (unsigned)__half_as_ushort(lo) | ((unsigned)__half_as_ushort(hi) << 16);
    };
    unsigned ra[4], rb[2];
    for (int p = 0; p < 4; ++p) {
        const int row = g + 8 * (p % 2), col = 2 * t + 8 * (p / 2);
        ra[p] = pack(a[row * 16 + col], a[row * 16 + col + 1]);
    }
    for (int p = 0; p < 2; ++p) {
        const int k = 2 * t + 8 * p;
        rb[p] = pack(b[g * 16 + k], b[g * 16 + k + 1]);
    }
    float rc[4], rd[4];
    for (int j = 0; j < 4; ++j) rc[j] = c[(g + 8 * (j / 2)) * 8 + 2 * t + j % 2];
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(rd[0]), "=f"(rd[1]), "=f"(rd[2]), "=f"(rd[3])
                 : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]),
                   "f"(rc[0]), "f"(rc[1]), "f"(rc[2]), "f"(rc[3]));
    for (int j = 0; j < 4; ++j) d[(g + 8 * (j / 2)) * 8 + 2 * t + j % 2] = rd[j];
}

// A 16x8 row-major, B 8x8 column-major (B[k][n] at b[n * 8 + k]), tf32 inputs.
__global__ void tf32_m16n8k8(const float *a, const float *b, float *d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned ra[4], rb[2];
    for (int j = 0; j < 4; ++j) ra[j] = __float_as_uint(a[(g + 8 * (j % 2)) * 8 + t + 4 * (j / 2)]);
    for (int j = 0; j < 2; ++j) rb[j] = __float_as_uint(b[g * 8 + t + 4 * j]);
    float rd[4] = {0, 0, 0, 0};
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(rd[0]), "+f"(rd[1]), "+f"(rd[2]), "+f"(rd[3])
                 : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]));
    for (int j = 0; j < 4; ++j) d[(g + 8 * (j / 2)) * 8 + 2 * t + j % 2] = rd[j];
}

int main() {
    half ah[16 * 16], bh[8 * 16];
    float af[16 * 16], bfl[8 * 16], c[16 * 8], want[16 * 8], got[16 * 8];
    for (int i = 0; i < 256; ++i) { af[i] = (float)((i * 5) % 9 - 4); ah[i] = __float2half(af[i]); }
    for (int i = 0; i < 128; ++i) { bfl[i] = (float)((i * 7) % 5 - 2) * 0.5f; bh[i] = __float2half(bfl[i]); }
    for (int i = 0; i < 128; ++i) c[i] = (float)(i % 7) - 3.0f;
    half *da, *db;
    float *dc, *dd, *daf, *dbf;
    CHECK(cudaMalloc((void **)&da, sizeof ah));
    CHECK(cudaMalloc((void **)&db, sizeof bh));
    CHECK(cudaMalloc((void **)&dc, sizeof c));
    CHECK(cudaMalloc((void **)&dd, sizeof got));
    CHECK(cudaMalloc((void **)&daf, sizeof af));
    CHECK(cudaMalloc((void **)&dbf, sizeof bfl));
    CHECK(cudaMemcpy(da, ah, sizeof ah, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, bh, sizeof bh, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dc, c, sizeof c, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(daf, af, sizeof af, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dbf, bfl, sizeof bfl, cudaMemcpyHostToDevice));

    f16_m16n8k16<<<1, 32>>>(da, db, dc, dd);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(got, dd, sizeof got, cudaMemcpyDeviceToHost));
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            float s = c[m * 8 + n];
            for (int k = 0; k < 16; ++k) s += af[m * 16 + k] * bfl[n * 16 + k];
            want[m * 8 + n] = s;
        }
    for (int i = 0; i < 128; ++i)
        if (got[i] != want[i]) {
            fail("f16 m16n8k16: [%d][%d] expected %g got %g", i / 8, i % 8, want[i], got[i]);
            break;
        }

    tf32_m16n8k8<<<1, 32>>>(daf, dbf, dd);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(got, dd, sizeof got, cudaMemcpyDeviceToHost));
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            float s = 0;
            for (int k = 0; k < 8; ++k) s += af[m * 8 + k] * bfl[n * 8 + k];
            want[m * 8 + n] = s;
        }
    for (int i = 0; i < 128; ++i)
        if (got[i] != want[i]) {
            fail("tf32 m16n8k8: [%d][%d] expected %g got %g", i / 8, i % 8, want[i], got[i]);
            break;
        }
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    CHECK(cudaFree(dd));
    CHECK(cudaFree(daf));
    CHECK(cudaFree(dbf));
    return finish();
}
