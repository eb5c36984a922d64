/* Scalar and struct-by-value parameters: a short, a struct {char[3]; long long;
 * float[5]} (40 bytes, 8-aligned), a char, a double, an unsigned long long and a
 * pointer, each written back by the kernel and compared with what was passed. */
#define TEST_NAME "params"
#include <hip/hip_runtime.h>
#include "check.h"

struct Big {
    char a[3];
    long long b;
    float c[5];
};

template <typename T>
__global__ void tk(T s, Big big, char ch, double d, unsigned long long u, long long* out) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = s;
    out[1] = big.a[0] + 256 * big.a[1] + 65536 * big.a[2];
    out[2] = big.b;
    for (int k = 0; k < 5; ++k) out[3 + k] = (long long)(big.c[k] * 1000.0f);
    out[8] = ch;
    out[9] = (long long)(d * 1000.0);
    out[10] = (long long)u;
}

int main(void) {
    long long* dout;
    CHECK(hipMalloc((void**)&dout, 11 * sizeof(long long)));
    CHECK(hipMemset(dout, 0, 11 * sizeof(long long)));
    Big big = {{1, 2, 3}, -1234567890123LL, {0.5f, -1.25f, 2.0f, 3.5f, -4.75f}};
    short s = -321;
    tk<short><<<1, 64>>>(s, big, 'x', 2.718, 0x8000000000000001ULL, dout);
    CHECK(hipGetLastError());
    long long out[11];
    CHECK(hipMemcpy(out, dout, sizeof out, hipMemcpyDeviceToHost));
    long long want[11] = {-321, 1 + 256 * 2 + 65536 * 3, -1234567890123LL, 500, -1250, 2000, 3500, -4750,
                          'x', 2718, (long long)0x8000000000000001ULL};
    for (int k = 0; k < 11; ++k)
        EXPECT(out[k] == want[k], "out[%d] = %lld, want %lld", k, out[k], want[k]);
    /* The same template for another scalar type: a different kernel. */
    tk<int><<<1, 1>>>(70000, big, -5, -0.5, 7, dout);
    CHECK(hipMemcpy(out, dout, sizeof out, hipMemcpyDeviceToHost));
    EXPECT(out[0] == 70000 && out[8] == -5 && out[9] == -500 && out[10] == 7,
           "tk<int>: %lld %lld %lld %lld", out[0], out[8], out[9], out[10]);
    CHECK(hipFree(dout));
    if (failures) return 1;
    printf("ok params: scalars and a 40-byte struct by value\n");
    return 0;
}
