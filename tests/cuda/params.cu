// Kernel parameter passing: many scalar parameters of mixed sizes (interleaved so that
// alignment padding is needed between them), pointers, CUDA vector types, by-value structs
// with internal padding and array members, an over-aligned struct, and a 1 KiB struct.
// Each kernel writes what it received back to global memory; the host compares it with what
// it passed.
#define TEST_NAME "params"
#include "check.cuh"

#include <cstdint>

// ---- 1. many mixed scalars -------------------------------------------------------------

__global__ void mixed_scalars(signed char c, double d, short s, long long ll, unsigned char uc,
                              float f, int i, const int *ptr, unsigned short us, double d2,
                              bool flag, unsigned long long ull, char c2, float f2,
                              unsigned u, long long *outI, double *outD) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    outI[0] = c;
    outI[1] = s;
    outI[2] = ll;
    outI[3] = uc;
    outI[4] = i;
    outI[5] = (long long)(uintptr_t)ptr;
    outI[6] = ptr[3];  // the pointer must be dereferenceable, too
    outI[7] = us;
    outI[8] = flag ? 1 : 0;
    outI[9] = (long long)ull;
    outI[10] = c2;
    outI[11] = u;
    outD[0] = d;
    outD[1] = f;
    outD[2] = d2;
    outD[3] = f2;
}

// ---- 2. structs by value ---------------------------------------------------------------

struct Small {  // size 4, align 2
    char a;
    short b;
};

struct Inner {  // size 16, align 8
    short s;
    double d;
};

struct __align__(16) Big {
    char c;             // 0, then 7 bytes padding
    double d;           // 8
    int arr[5];         // 16
    short s;            // 36, then 2 bytes padding
    float f;            // 40, then 4 bytes padding
    long long ll;       // 48
    char tail[3];       // 56, then 5 bytes padding
    Inner inner;        // 64
    unsigned char bytes[13];  // 80, then padding up to 96 (struct alignment 16)
};

static_assert(sizeof(Small) == 4, "Small layout");
static_assert(sizeof(Inner) == 16, "Inner layout");
static_assert(sizeof(Big) == 96 && alignof(Big) == 16, "Big layout");

// Output mirror of everything received, written field by field (never copying padding).
struct StructOut {
    long long pre, mid, after;
    Small small;
    Big big;
    float3 v3;
    double2 v2;
    int2 i2;
    double post;
};

__global__ void struct_params(char pre, Big big, char mid, Small small, float3 v3, double2 v2,
                              int2 i2, double post, int after, StructOut *out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    out->pre = pre;
    out->mid = mid;
    out->after = after;
    out->small.a = small.a;
    out->small.b = small.b;
    out->big.c = big.c;
    out->big.d = big.d;
    for (int k = 0; k < 5; ++k) out->big.arr[k] = big.arr[k];
    out->big.s = big.s;
    out->big.f = big.f;
    out->big.ll = big.ll;
    for (int k = 0; k < 3; ++k) out->big.tail[k] = big.tail[k];
    out->big.inner.s = big.inner.s;
    out->big.inner.d = big.inner.d;
    for (int k = 0; k < 13; ++k) out->big.bytes[k] = big.bytes[k];
    out->v3 = v3;
    out->v2 = v2;
    out->i2 = i2;
    out->post = post;
}

// The struct is read by every thread (different member per thread).
__global__ void struct_member_per_thread(Big big, int *out) {
    int t = threadIdx.x;
    if (t < 5) out[t] = big.arr[t];
    else if (t < 18) out[t] = big.bytes[t - 5];
    else if (t < 21) out[t] = big.tail[t - 18];
    else if (t == 21) out[t] = big.s;
    else if (t == 22) out[t] = big.inner.s;
    else if (t == 23) out[t] = big.c;
}

// ---- 3. a large struct (1 KiB) and many parameters ----------------------------------------

struct Large {
    int data[256];
};

__global__ void large_struct(int scale, Large l, int *out) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < 256) out[t] = l.data[t] * scale + l.data[255 - t];
}

__global__ void many_ints(int a0, int a1, int a2, int a3, int a4, int a5, int a6, int a7,
                          int a8, int a9, int a10, int a11, int a12, int a13, int a14, int a15,
                          int a16, int a17, int a18, int a19, int a20, int a21, int a22, int a23,
                          int a24, int a25, int a26, int a27, int a28, int a29, int a30, int a31,
                          int *out) {
    int v[32] = {a0,  a1,  a2,  a3,  a4,  a5,  a6,  a7,  a8,  a9,  a10, a11, a12, a13, a14, a15,
                 a16, a17, a18, a19, a20, a21, a22, a23, a24, a25, a26, a27, a28, a29, a30, a31};
    int t = threadIdx.x;
    if (t < 32) out[t] = v[t];
}

__global__ void many_doubles(double a0, float b0, double a1, float b1, double a2, float b2,
                             double a3, float b3, double a4, float b4, double a5, float b5,
                             double *out) {
    if (threadIdx.x != 0) return;
    out[0] = a0; out[1] = b0; out[2] = a1; out[3] = b1; out[4] = a2; out[5] = b2;
    out[6] = a3; out[7] = b3; out[8] = a4; out[9] = b4; out[10] = a5; out[11] = b5;
}

// ----------------------------------------------------------------------------------------

static void test_mixed_scalars() {
    int host_src[8] = {10, 11, 12, 0x7eadbeef, 14, 15, 16, 17};
    int *d_src;
    long long *d_outI;
    double *d_outD;
    CHECK(cudaMalloc(&d_src, sizeof host_src));
    CHECK(cudaMalloc(&d_outI, 12 * sizeof(long long)));
    CHECK(cudaMalloc(&d_outD, 4 * sizeof(double)));
    CHECK(cudaMemcpy(d_src, host_src, sizeof host_src, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_outI, 0xff, 12 * sizeof(long long)));
    CHECK(cudaMemset(d_outD, 0xff, 4 * sizeof(double)));

    const signed char c = -5;
    const double d = 3.141592653589793;
    const short s = -12345;
    const long long ll = -0x123456789abcdefLL;
    const unsigned char uc = 250;
    const float f = -2.5e-3f;
    const int i = -2000000000;
    const unsigned short us = 65000;
    const double d2 = -1.0e300;
    const bool flag = true;
    const unsigned long long ull = 0xfedcba9876543210ULL;
    const char c2 = 'Q';
    const float f2 = 1.0e30f;
    const unsigned u = 0xdeadbeefu;

    mixed_scalars<<<1, 32>>>(c, d, s, ll, uc, f, i, d_src, us, d2, flag, ull, c2, f2, u, d_outI,
                             d_outD);
    CHECK_LAUNCH();

    long long gotI[12];
    double gotD[4];
    CHECK(cudaMemcpy(gotI, d_outI, sizeof gotI, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(gotD, d_outD, sizeof gotD, cudaMemcpyDeviceToHost));
    const long long wantI[12] = {c,  s,  ll, uc,       i,    (long long)(uintptr_t)d_src,
                                 host_src[3], us, 1, (long long)ull, c2, (long long)u};
    const char *namesI[12] = {"signed char", "short", "long long", "unsigned char", "int",
                              "pointer", "*(pointer+3)", "unsigned short", "bool",
                              "unsigned long long", "char", "unsigned"};
    for (int k = 0; k < 12; ++k)
        if (gotI[k] != wantI[k])
            fail("mixed_scalars %s: expected %lld (0x%llx) got %lld (0x%llx)", namesI[k],
                 wantI[k], (unsigned long long)wantI[k], gotI[k], (unsigned long long)gotI[k]);
    const double wantD[4] = {d, (double)f, d2, (double)f2};
    const char *namesD[4] = {"double", "float", "double #2", "float #2"};
    for (int k = 0; k < 4; ++k)
        if (gotD[k] != wantD[k])
            fail("mixed_scalars %s: expected %.17g got %.17g", namesD[k], wantD[k], gotD[k]);

    CHECK(cudaFree(d_src));
    CHECK(cudaFree(d_outI));
    CHECK(cudaFree(d_outD));
}

static Big make_big() {
    Big b;
    memset(&b, 0xcc, sizeof b);  // poison padding: the kernel must not depend on it
    b.c = -100;
    b.d = -6.02214076e23;
    for (int k = 0; k < 5; ++k) b.arr[k] = 1000003 * (k + 1) * (k % 2 ? -1 : 1);
    b.s = 31111;
    b.f = 0.15625f;
    b.ll = 0x0102030405060708LL;
    b.tail[0] = 'x';
    b.tail[1] = 'y';
    b.tail[2] = 'z';
    b.inner.s = -2;
    b.inner.d = 1.0 / 7.0;
    for (int k = 0; k < 13; ++k) b.bytes[k] = (unsigned char)(0xf0 + k);
    return b;
}

static void compare_big(const char *what, const Big &want, const Big &got) {
    if (got.c != want.c) fail("%s.c: expected %d got %d", what, want.c, got.c);
    if (got.d != want.d) fail("%s.d: expected %.17g got %.17g", what, want.d, got.d);
    for (int k = 0; k < 5; ++k)
        if (got.arr[k] != want.arr[k])
            fail("%s.arr[%d]: expected %d got %d", what, k, want.arr[k], got.arr[k]);
    if (got.s != want.s) fail("%s.s: expected %d got %d", what, want.s, got.s);
    if (got.f != want.f) fail("%s.f: expected %.9g got %.9g", what, want.f, got.f);
    if (got.ll != want.ll) fail("%s.ll: expected %lld got %lld", what, want.ll, got.ll);
    for (int k = 0; k < 3; ++k)
        if (got.tail[k] != want.tail[k])
            fail("%s.tail[%d]: expected %d got %d", what, k, want.tail[k], got.tail[k]);
    if (got.inner.s != want.inner.s)
        fail("%s.inner.s: expected %d got %d", what, want.inner.s, got.inner.s);
    if (got.inner.d != want.inner.d)
        fail("%s.inner.d: expected %.17g got %.17g", what, want.inner.d, got.inner.d);
    for (int k = 0; k < 13; ++k)
        if (got.bytes[k] != want.bytes[k])
            fail("%s.bytes[%d]: expected %d got %d", what, k, want.bytes[k], got.bytes[k]);
}

static void test_struct_params() {
    StructOut *d_out;
    CHECK(cudaMalloc(&d_out, sizeof(StructOut)));
    CHECK(cudaMemset(d_out, 0, sizeof(StructOut)));

    const Big big = make_big();
    const char pre = 7, mid = -9;
    Small small;
    memset(&small, 0xcc, sizeof small);
    small.a = 'k';
    small.b = -30000;
    const float3 v3 = make_float3(1.5f, -2.25f, 1e-20f);
    const double2 v2 = make_double2(-0.1, 1e100);
    const int2 i2 = make_int2(-77, 0x12345678);
    const double post = 2.718281828459045;
    const int after = 0x5a5a5a5a;

    struct_params<<<1, 1>>>(pre, big, mid, small, v3, v2, i2, post, after, d_out);
    CHECK_LAUNCH();

    StructOut got;
    CHECK(cudaMemcpy(&got, d_out, sizeof got, cudaMemcpyDeviceToHost));
    if (got.pre != pre) fail("struct_params pre: expected %d got %lld", pre, got.pre);
    if (got.mid != mid) fail("struct_params mid: expected %d got %lld", mid, got.mid);
    if (got.after != after) fail("struct_params after: expected %d got %lld", after, got.after);
    if (got.small.a != small.a || got.small.b != small.b)
        fail("struct_params small: expected {%d,%d} got {%d,%d}", small.a, small.b, got.small.a,
             got.small.b);
    compare_big("struct_params big", big, got.big);
    if (got.v3.x != v3.x || got.v3.y != v3.y || got.v3.z != v3.z)
        fail("struct_params float3: expected {%g,%g,%g} got {%g,%g,%g}", v3.x, v3.y, v3.z,
             got.v3.x, got.v3.y, got.v3.z);
    if (got.v2.x != v2.x || got.v2.y != v2.y)
        fail("struct_params double2: expected {%g,%g} got {%g,%g}", v2.x, v2.y, got.v2.x,
             got.v2.y);
    if (got.i2.x != i2.x || got.i2.y != i2.y)
        fail("struct_params int2: expected {%d,%d} got {%d,%d}", i2.x, i2.y, got.i2.x, got.i2.y);
    if (got.post != post) fail("struct_params post: expected %.17g got %.17g", post, got.post);
    CHECK(cudaFree(d_out));

    // Per-thread member reads.
    int *d_members;
    CHECK(cudaMalloc(&d_members, 32 * sizeof(int)));
    CHECK(cudaMemset(d_members, 0, 32 * sizeof(int)));
    struct_member_per_thread<<<1, 32>>>(big, d_members);
    CHECK_LAUNCH();
    int members[32];
    CHECK(cudaMemcpy(members, d_members, sizeof members, cudaMemcpyDeviceToHost));
    int want[32] = {0};
    for (int t = 0; t < 5; ++t) want[t] = big.arr[t];
    for (int t = 5; t < 18; ++t) want[t] = big.bytes[t - 5];
    for (int t = 18; t < 21; ++t) want[t] = big.tail[t - 18];
    want[21] = big.s;
    want[22] = big.inner.s;
    want[23] = big.c;
    compare_exact("struct_member_per_thread", want, members, 32);
    CHECK(cudaFree(d_members));
}

static void test_large_and_many() {
    Large l;
    for (int k = 0; k < 256; ++k) l.data[k] = k * k - 3 * k + 11;
    int *d_out;
    CHECK(cudaMalloc(&d_out, 256 * sizeof(int)));
    CHECK(cudaMemset(d_out, 0, 256 * sizeof(int)));
    large_struct<<<2, 128>>>(-3, l, d_out);
    CHECK_LAUNCH();
    int got[256], want[256];
    CHECK(cudaMemcpy(got, d_out, sizeof got, cudaMemcpyDeviceToHost));
    for (int t = 0; t < 256; ++t) want[t] = l.data[t] * -3 + l.data[255 - t];
    compare_exact("large_struct", want, got, 256);

    CHECK(cudaMemset(d_out, 0, 256 * sizeof(int)));
    many_ints<<<1, 32>>>(100, -101, 102, -103, 104, -105, 106, -107, 108, -109, 110, -111, 112,
                         -113, 114, -115, 116, -117, 118, -119, 120, -121, 122, -123, 124, -125,
                         126, -127, 128, -129, 130, -131, d_out);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(got, d_out, 32 * sizeof(int), cudaMemcpyDeviceToHost));
    for (int t = 0; t < 32; ++t) want[t] = (t % 2 ? -1 : 1) * (100 + t);
    compare_exact("many_ints", want, got, 32);
    CHECK(cudaFree(d_out));

    double *d_dbl;
    CHECK(cudaMalloc(&d_dbl, 12 * sizeof(double)));
    CHECK(cudaMemset(d_dbl, 0, 12 * sizeof(double)));
    many_doubles<<<1, 1>>>(0.5, 1.5f, -1e-300, -2.5f, 1e300, 3.25f, 1.0 / 3.0, -4.125f,
                           -7.0e-10, 5.0625f, 123456789.123, -6.5f, d_dbl);
    CHECK_LAUNCH();
    double gotd[12];
    CHECK(cudaMemcpy(gotd, d_dbl, sizeof gotd, cudaMemcpyDeviceToHost));
    const double wantd[12] = {0.5,      1.5,      -1e-300, -2.5,          1e300, 3.25,
                              1.0 / 3.0, -4.125, -7.0e-10, 5.0625, 123456789.123, -6.5};
    compare_close("many_doubles", wantd, gotd, 12, 0.0);
    CHECK(cudaFree(d_dbl));
}

int main() {
    test_mixed_scalars();
    test_struct_params();
    test_large_and_many();
    return finish();
}
