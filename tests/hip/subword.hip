/* Bytes, shorts and half2 (what the compiler turns into SDWA, 16-bit and packed
 * instructions), DPP lane moves through the compiler's builtin, and a kernel that
 * calls a non-inlined device function with a private array (a call, a stack in
 * private memory). Each checked against the CPU. */
#define TEST_NAME "subword"
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#include "check.h"
#include <stdlib.h>
#include <string.h>

#define N 64

__global__ void bytes(const uchar4* a, uchar4* b, short* s, const short* t) {
    int i = threadIdx.x;
    uchar4 v = a[i];
    b[i] = make_uchar4(v.x + v.y, v.y * 3, v.z ^ v.w, v.w >> 1);
    s[i] = (short)(t[i] * t[i + 1] + (t[i] >> 2));
}

__global__ void halves(const __half2* a, __half2* b) {
    int i = threadIdx.x;
    b[i] = __hmul2(__hadd2(a[i], a[i + 1]), a[i]);
}

/* DPP controls: quad_perm [3,2,1,0], row_shr:1 (lane 0 of a row reads 0), row_ror:4,
 * row_mirror. */
__global__ void lanes(const int* in, int* out) {
    int v = in[threadIdx.x];
    out[threadIdx.x * 4 + 0] = __builtin_amdgcn_mov_dpp(v, 0x1b, 0xf, 0xf, true);
    out[threadIdx.x * 4 + 1] = __builtin_amdgcn_mov_dpp(v, 0x111, 0xf, 0xf, true);
    out[threadIdx.x * 4 + 2] = __builtin_amdgcn_mov_dpp(v, 0x124, 0xf, 0xf, true);
    out[threadIdx.x * 4 + 3] = __builtin_amdgcn_mov_dpp(v, 0x140, 0xf, 0xf, true);
}

__device__ __noinline__ float pick(float x, int k) {
    float a[8];
    for (int j = 0; j < 8; j++) a[j] = x * j + k;
    return a[k & 7];
}

__global__ void calls(float* o, const int* k) {
    o[threadIdx.x] = pick(o[threadIdx.x], k[threadIdx.x]);
}

/* Wave 0 spins on a flag in LDS that wave 1 sets: the waves of a workgroup must
 * take turns, not run each to its end. */
__global__ void spin(int* out) {
    __shared__ volatile int flag;
    if (threadIdx.x == 0) flag = 0;
    __syncthreads();
    if (threadIdx.x == 0) {
        int waited = 0;
        while (flag != 42) waited++;
        out[0] = flag;
        out[1] = waited > 0;
    }
    if (threadIdx.x == 64) flag = 42;
}

static void* up(const void* host, size_t bytes) {
    void* d = NULL;
    if (hipMalloc(&d, bytes) != hipSuccess) return NULL;
    if (host) hipMemcpy(d, host, bytes, hipMemcpyHostToDevice);
    else hipMemset(d, 0, bytes);
    return d;
}

int main(void) {
    uchar4 a[N], b[N];
    short s[N], t[N + 1];
    for (int i = 0; i < N; i++) {
        a[i] = make_uchar4(i * 7, 200 + i, i * 13, 255 - i);
        t[i] = (short)(i * 997 - 30000);
    }
    t[N] = 5;
    uchar4 *da = (uchar4*)up(a, sizeof a), *db = (uchar4*)up(NULL, sizeof b);
    short *ds = (short*)up(NULL, sizeof s), *dt = (short*)up(t, sizeof t);
    bytes<<<1, N>>>(da, db, ds, dt);
    CHECK(hipGetLastError());
    CHECK(hipMemcpy(b, db, sizeof b, hipMemcpyDeviceToHost));
    CHECK(hipMemcpy(s, ds, sizeof s, hipMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) {
        uchar4 v = a[i];
        EXPECT(b[i].x == (unsigned char)(v.x + v.y) && b[i].y == (unsigned char)(v.y * 3) &&
                   b[i].z == (unsigned char)(v.z ^ v.w) && b[i].w == (unsigned char)(v.w >> 1),
               "bytes[%d] = %d %d %d %d", i, b[i].x, b[i].y, b[i].z, b[i].w);
        short want = (short)(t[i] * t[i + 1] + (t[i] >> 2));
        EXPECT(s[i] == want, "shorts[%d] = %d, want %d", i, s[i], want);
    }

    __half2 h[N + 1], hr[N];
    for (int i = 0; i <= N; i++) h[i] = __halves2half2(__float2half(0.5f * i - 9), __float2half(3 - 0.25f * i));
    __half2 *dh = (__half2*)up(h, sizeof h), *dhr = (__half2*)up(NULL, sizeof hr);
    halves<<<1, N>>>(dh, dhr);
    CHECK(hipGetLastError());
    CHECK(hipMemcpy(hr, dhr, sizeof hr, hipMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) {
        float lo = __half2float(__float2half(__half2float(__float2half(__low2float(h[i]) + __low2float(h[i + 1]))) * __low2float(h[i])));
        float hi = __half2float(__float2half(__half2float(__float2half(__high2float(h[i]) + __high2float(h[i + 1]))) * __high2float(h[i])));
        EXPECT(__low2float(hr[i]) == lo && __high2float(hr[i]) == hi, "half2[%d] = (%g, %g), want (%g, %g)", i,
               __low2float(hr[i]), __high2float(hr[i]), lo, hi);
    }

    int in[N], out[N * 4];
    for (int i = 0; i < N; i++) in[i] = 1000 + i;
    int *din = (int*)up(in, sizeof in), *dout = (int*)up(NULL, sizeof out);
    lanes<<<1, N>>>(din, dout);
    CHECK(hipGetLastError());
    CHECK(hipMemcpy(out, dout, sizeof out, hipMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) {
        int row = i & ~15, r = i & 15;
        int want[4] = {in[(i & ~3) + 3 - (i & 3)], r == 0 ? 0 : in[i - 1], in[row + (r + 12) % 16], in[row + 15 - r]};
        for (int k = 0; k < 4; k++)
            EXPECT(out[i * 4 + k] == want[k], "dpp %d lane %d = %d, want %d", k, i, out[i * 4 + k], want[k]);
    }

    float o[N];
    int k[N];
    for (int i = 0; i < N; i++) { o[i] = 0.5f * i; k[i] = i * 3 + 1; }
    float* dO = (float*)up(o, sizeof o);
    int* dk = (int*)up(k, sizeof k);
    calls<<<1, N>>>(dO, dk);
    CHECK(hipGetLastError());
    float got[N];
    CHECK(hipMemcpy(got, dO, sizeof got, hipMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) {
        float want = o[i] * (k[i] & 7) + k[i];
        EXPECT(got[i] == want, "calls[%d] = %g, want %g", i, got[i], want);
    }
    int* dspin = (int*)up(NULL, 2 * sizeof(int));
    spin<<<1, 128>>>(dspin);
    CHECK(hipGetLastError());
    int spun[2];
    CHECK(hipMemcpy(spun, dspin, sizeof spun, hipMemcpyDeviceToHost));
    EXPECT(spun[0] == 42, "spin read %d", spun[0]);
    if (failures) return 1;
    printf("ok subword: bytes, shorts, half2, DPP lane moves, a call with a private array, a wave waiting on another\n");
    return 0;
}
