/* What real kernels are made of, each checked against the CPU: single and double
 * precision math library calls (the ROCm device libraries' code: range reduction
 * with v_trig_preop_f64, division sequences), integer division, bit operations and
 * wave votes, shuffles, atomics of every kind, half precision, a private array
 * indexed at run time (scratch memory), loops with a switch, and conversions. */
#define TEST_NAME "math"
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#include "check.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define N 64

__global__ void fmath(const float* x, float* y) {
    int i = threadIdx.x;
    float v = x[i];
    y[i * 8 + 0] = expf(v) + logf(v + 2.f);
    y[i * 8 + 1] = sinf(v) * cosf(v);
    y[i * 8 + 2] = powf(v, 1.5f) + tanhf(v);
    y[i * 8 + 3] = sqrtf(v) + rsqrtf(v + 1.f);
    y[i * 8 + 4] = floorf(v) + ceilf(v) + fmodf(v, 0.7f);
    y[i * 8 + 5] = exp2f(v) + log2f(v + 1.f);
    y[i * 8 + 6] = erff(v) + atan2f(v, 2.f);
    y[i * 8 + 7] = v / (v + 0.3f);
}

__global__ void dmath(const double* x, double* y) {
    int i = threadIdx.x;
    double v = x[i];
    y[i * 5 + 0] = exp(v) + log(v + 2.0);
    y[i * 5 + 1] = sin(v * 1000.0) + cos(v);
    y[i * 5 + 2] = pow(v, 1.5) + sqrt(v);
    y[i * 5 + 3] = v / 3.0 + fmod(v, 0.7);
    y[i * 5 + 4] = tanh(v);
}

__global__ void idiv(const int* a, const int* b, int* q, unsigned* u, long long* l) {
    int i = threadIdx.x;
    q[i] = a[i] / b[i] + a[i] % b[i];
    u[i] = (unsigned)a[i] / (unsigned)b[i];
    l[i] = (long long)a[i] * 1000000007LL / (b[i] + 1LL);
}

__global__ void bits(const unsigned* a, unsigned* o, unsigned long long* m) {
    int i = threadIdx.x;
    unsigned v = a[i];
    o[i] = __popc(v) + __clz(v) + __ffs(v) + __brev(v) + (v >> 3 | v << 29);
    unsigned long long b = __ballot(v & 1);
    if (i == 0) m[0] = b;
    o[i] += __any(v > 100) + __all(v > 0);
}

__global__ void shfl(const float* x, float* y) {
    float v = x[threadIdx.x];
    v += __shfl_xor(v, 1);
    v += __shfl_xor(v, 16);
    v += __shfl(v, 3);
    v += __shfl_up(v, 2);
    y[threadIdx.x] = v;
}

__global__ void atomics(int* c, float* f, unsigned* u, double* d) {
    atomicAdd(c, 1);
    atomicMax(c + 1, (int)threadIdx.x);
    atomicMin(c + 2, -(int)threadIdx.x);
    atomicExch(c + 3, 7);
    atomicCAS(c + 4, 0, (int)threadIdx.x + 1);
    atomicAdd(f, 0.5f);
    atomicInc(u, 100u);
    atomicAnd(u + 1, 0xf0f0u | (1u << (threadIdx.x & 15)));
    atomicOr(u + 2, 1u << (threadIdx.x & 31));
    atomicAdd(d, 1.25);
}

__global__ void halfk(const __half* a, const __half* b, __half* c, float* f) {
    int i = threadIdx.x;
    c[i] = __hmul(__hadd(a[i], b[i]), b[i]);
    f[i] = __half2float(a[i]) + __half2float(__hmul(a[i], b[i]));
}

__global__ void local(const int* idx, int* out) {
    int arr[32];
    for (int k = 0; k < 32; k++) arr[k] = k * idx[threadIdx.x];
    out[threadIdx.x] = arr[idx[threadIdx.x] & 31];
}

__global__ void loops(const float* a, float* b, int n) {
    float s = 0;
    for (int k = 0; k < n; k++) s += a[(threadIdx.x + k) % 64] * k;
    switch (threadIdx.x % 4) {
    case 0: s *= 2; break;
    case 1: s -= 1; break;
    case 2: s = -s; break;
    default: s += 3;
    }
    b[threadIdx.x] = s;
}

__global__ void conv(const double* d, const long long* l, float* f, int* i, unsigned long long* ul) {
    int t = threadIdx.x;
    f[t] = (float)d[t] + (float)l[t];
    i[t] = (int)d[t] + (int)(f[t] * 3.7e-3f);
    ul[t] = (unsigned long long)d[t] + (unsigned long long)l[t];
}

static int close_f(double got, double want, double rel) {
    return fabs(got - want) <= rel * fmax(1.0, fabs(want));
}

/* Copies n elements of `bytes` each to a new device buffer. */
static void* up(const void* host, size_t bytes) {
    void* d = NULL;
    if (hipMalloc(&d, bytes) != hipSuccess) return NULL;
    if (host) hipMemcpy(d, host, bytes, hipMemcpyHostToDevice);
    else hipMemset(d, 0, bytes);
    return d;
}

static void down(void* host, const void* dev, size_t bytes) {
    hipMemcpy(host, dev, bytes, hipMemcpyDeviceToHost);
}

int main(void) {
    /* floats */
    float x[N], y[N * 8];
    for (int i = 0; i < N; i++) x[i] = 0.05f + i * 0.37f;
    float *dx = (float*)up(x, sizeof x), *dy = (float*)up(NULL, sizeof y);
    fmath<<<1, N>>>(dx, dy);
    CHECK(hipGetLastError());
    down(y, dy, sizeof y);
    for (int i = 0; i < N; i++) {
        double v = x[i];
        double want[8] = {exp(v) + log(v + 2), sin(v) * cos(v), pow(v, 1.5) + tanh(v),
                          sqrt(v) + 1 / sqrt(v + 1), floor(v) + ceil(v) + fmod(v, (float)0.7f),
                          exp2(v) + log2(v + 1), erf(v) + atan2(v, 2), v / (v + (float)0.3f)};
        for (int k = 0; k < 8; k++)
            EXPECT(close_f(y[i * 8 + k], want[k], 2e-6 * (k == 0 || k == 2 || k == 5 ? 8 : 1) + (k == 4 ? 1e-6 : 0)),
                   "fmath[%d][%d] = %.9g, want %.9g", i, k, y[i * 8 + k], want[k]);
    }
    /* doubles */
    double dxh[N], dyh[N * 5];
    for (int i = 0; i < N; i++) dxh[i] = 0.01 + i * 0.731;
    double *ddx = (double*)up(dxh, sizeof dxh), *ddy = (double*)up(NULL, sizeof dyh);
    dmath<<<1, N>>>(ddx, ddy);
    CHECK(hipGetLastError());
    down(dyh, ddy, sizeof dyh);
    for (int i = 0; i < N; i++) {
        double v = dxh[i];
        double want[5] = {exp(v) + log(v + 2), sin(v * 1000.0) + cos(v), pow(v, 1.5) + sqrt(v),
                          v / 3 + fmod(v, 0.7), tanh(v)};
        for (int k = 0; k < 5; k++)
            EXPECT(close_f(dyh[i * 5 + k], want[k], 1e-14), "dmath[%d][%d] = %.17g, want %.17g", i, k,
                   dyh[i * 5 + k], want[k]);
    }
    /* integer division */
    int a[N], b[N], q[N];
    unsigned u[N];
    long long l[N];
    for (int i = 0; i < N; i++) { a[i] = (i * 7919) % 10007 - 3000; b[i] = (i % 13) + 1 - (i % 2) * 20; }
    int *da = (int*)up(a, sizeof a), *db = (int*)up(b, sizeof b), *dq = (int*)up(NULL, sizeof q);
    unsigned* du = (unsigned*)up(NULL, sizeof u);
    long long* dl = (long long*)up(NULL, sizeof l);
    idiv<<<1, N>>>(da, db, dq, du, dl);
    CHECK(hipGetLastError());
    down(q, dq, sizeof q); down(u, du, sizeof u); down(l, dl, sizeof l);
    for (int i = 0; i < N; i++) {
        EXPECT(q[i] == a[i] / b[i] + a[i] % b[i], "idiv q[%d] = %d", i, q[i]);
        EXPECT(u[i] == (unsigned)a[i] / (unsigned)b[i], "idiv u[%d] = %u", i, u[i]);
        EXPECT(l[i] == (long long)a[i] * 1000000007LL / (b[i] + 1LL), "idiv l[%d] = %lld", i, l[i]);
    }
    /* bits and votes */
    unsigned bv[N], bo[N];
    unsigned long long ballot = 0;
    for (int i = 0; i < N; i++) bv[i] = 0x9E3779B9u * (i + 1) ^ (i << 7);
    unsigned *dbv = (unsigned*)up(bv, sizeof bv), *dbo = (unsigned*)up(NULL, sizeof bo);
    unsigned long long* dm = (unsigned long long*)up(NULL, sizeof ballot);
    bits<<<1, N>>>(dbv, dbo, dm);
    CHECK(hipGetLastError());
    down(bo, dbo, sizeof bo); down(&ballot, dm, sizeof ballot);
    unsigned long long want_ballot = 0;
    int any = 0, all = 1;
    for (int i = 0; i < N; i++) { if (bv[i] & 1) want_ballot |= 1ull << i; any |= bv[i] > 100; all &= bv[i] > 0; }
    EXPECT(ballot == want_ballot, "ballot %llx, want %llx", ballot, want_ballot);
    for (int i = 0; i < N; i++) {
        unsigned v = bv[i], rev = 0;
        for (int k = 0; k < 32; k++) rev |= ((v >> k) & 1) << (31 - k);
        unsigned want = __builtin_popcount(v) + (v ? __builtin_clz(v) : 32) + (v ? __builtin_ctz(v) + 1 : 0) + rev +
                        (v >> 3 | v << 29) + any + all;
        EXPECT(bo[i] == want, "bits[%d] = %u, want %u", i, bo[i], want);
    }
    /* shuffles */
    float sx[N], sy[N];
    for (int i = 0; i < N; i++) sx[i] = (float)(i * i % 97);
    float *dsx = (float*)up(sx, sizeof sx), *dsy = (float*)up(NULL, sizeof sy);
    shfl<<<1, N>>>(dsx, dsy);
    CHECK(hipGetLastError());
    down(sy, dsy, sizeof sy);
    {
        float v1[N], v2[N], v3[N], v4[N];
        for (int i = 0; i < N; i++) v1[i] = sx[i] + sx[i ^ 1];
        for (int i = 0; i < N; i++) v2[i] = v1[i] + v1[i ^ 16];
        for (int i = 0; i < N; i++) v3[i] = v2[i] + v2[3];
        for (int i = 0; i < N; i++) v4[i] = v3[i] + v3[i >= 2 ? i - 2 : i];
        for (int i = 0; i < N; i++) EXPECT(sy[i] == v4[i], "shfl[%d] = %g, want %g", i, sy[i], v4[i]);
    }
    /* atomics, 4 blocks of 64 */
    int ci[5] = {0, -1000, 1000, 0, 0};
    float cf = 0;
    unsigned cu[3] = {0, 0xffffffffu, 0};
    double cd = 0;
    int* dci = (int*)up(ci, sizeof ci);
    float* dcf = (float*)up(&cf, sizeof cf);
    unsigned* dcu = (unsigned*)up(cu, sizeof cu);
    double* dcd = (double*)up(&cd, sizeof cd);
    atomics<<<4, N>>>(dci, dcf, dcu, dcd);
    CHECK(hipGetLastError());
    down(ci, dci, sizeof ci); down(&cf, dcf, sizeof cf); down(cu, dcu, sizeof cu); down(&cd, dcd, sizeof cd);
    EXPECT(ci[0] == 256 && ci[1] == 63 && ci[2] == -63 && ci[3] == 7, "atomics %d %d %d %d", ci[0], ci[1], ci[2], ci[3]);
    EXPECT(ci[4] >= 1 && ci[4] <= 64, "atomicCAS left %d", ci[4]);
    EXPECT(cf == 128.0f && cd == 320.0, "float atomics %g %g", cf, cd);
    EXPECT(cu[0] == 256 % 101 && cu[1] == 0xf0f0u && cu[2] == 0xffffffffu, "unsigned atomics %u %x %x", cu[0], cu[1], cu[2]);
    /* half precision */
    __half ha[N], hb[N], hc[N];
    float hf[N];
    for (int i = 0; i < N; i++) { ha[i] = __float2half(0.25f * i - 3); hb[i] = __float2half(1.5f - 0.125f * i); }
    __half *dha = (__half*)up(ha, sizeof ha), *dhb = (__half*)up(hb, sizeof hb), *dhc = (__half*)up(NULL, sizeof hc);
    float* dhf = (float*)up(NULL, sizeof hf);
    halfk<<<1, N>>>(dha, dhb, dhc, dhf);
    CHECK(hipGetLastError());
    down(hc, dhc, sizeof hc); down(hf, dhf, sizeof hf);
    for (int i = 0; i < N; i++) {
        float fa = __half2float(ha[i]), fb = __half2float(hb[i]);
        float sum = __half2float(__float2half(fa + fb));
        float want_c = __half2float(__float2half(sum * fb));
        float want_f = fa + __half2float(__float2half(fa * fb));
        EXPECT(__half2float(hc[i]) == want_c, "half c[%d] = %g, want %g", i, __half2float(hc[i]), want_c);
        EXPECT(hf[i] == want_f, "half f[%d] = %g, want %g", i, hf[i], want_f);
    }
    /* private array */
    int idx[N], lo[N];
    for (int i = 0; i < N; i++) idx[i] = i * 5 + 3;
    int *didx = (int*)up(idx, sizeof idx), *dlo = (int*)up(NULL, sizeof lo);
    local<<<2, N / 2>>>(didx, dlo);
    CHECK(hipGetLastError());
    down(lo, dlo, sizeof lo);
    for (int i = 0; i < N / 2; i++) {
        int t = i % (N / 2); /* each block's threads read idx[threadIdx.x] */
        EXPECT(lo[i] == (idx[t] & 31) * idx[t], "local[%d] = %d", i, lo[i]);
    }
    /* loops and a switch */
    float la[N], lb[N];
    for (int i = 0; i < N; i++) la[i] = 0.5f * i - 7;
    float *dla = (float*)up(la, sizeof la), *dlb = (float*)up(NULL, sizeof lb);
    loops<<<1, N>>>(dla, dlb, 37);
    CHECK(hipGetLastError());
    down(lb, dlb, sizeof lb);
    for (int i = 0; i < N; i++) {
        float s = 0;
        for (int k = 0; k < 37; k++) s += la[(i + k) % 64] * k;
        switch (i % 4) { case 0: s *= 2; break; case 1: s -= 1; break; case 2: s = -s; break; default: s += 3; }
        EXPECT(close_f(lb[i], s, 1e-6), "loops[%d] = %g, want %g", i, lb[i], s);
    }
    /* conversions */
    double cvd[N];
    long long cvl[N];
    float cvf[N];
    int cvi[N];
    unsigned long long cvu[N];
    for (int i = 0; i < N; i++) { cvd[i] = 1.75 * i + 0.3; cvl[i] = (long long)i * 123456789LL; }
    double* dcvd = (double*)up(cvd, sizeof cvd);
    long long* dcvl = (long long*)up(cvl, sizeof cvl);
    float* dcvf = (float*)up(NULL, sizeof cvf);
    int* dcvi = (int*)up(NULL, sizeof cvi);
    unsigned long long* dcvu = (unsigned long long*)up(NULL, sizeof cvu);
    conv<<<1, N>>>(dcvd, dcvl, dcvf, dcvi, dcvu);
    CHECK(hipGetLastError());
    down(cvf, dcvf, sizeof cvf); down(cvi, dcvi, sizeof cvi); down(cvu, dcvu, sizeof cvu);
    for (int i = 0; i < N; i++) {
        float f = (float)cvd[i] + (float)cvl[i];
        EXPECT(cvf[i] == f, "conv f[%d] = %g, want %g", i, cvf[i], f);
        EXPECT(cvi[i] == (int)cvd[i] + (int)(f * 3.7e-3f), "conv i[%d] = %d", i, cvi[i]);
        EXPECT(cvu[i] == (unsigned long long)cvd[i] + (unsigned long long)cvl[i], "conv u[%d]", i);
    }
    if (failures) return 1;
    printf("ok math: float and double math, integer division, bits and votes, shuffles, atomics, half, private arrays, loops, conversions\n");
    return 0;
}
