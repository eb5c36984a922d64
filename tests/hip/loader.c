/* xpupool's libamdhip64 stand-in as the loader and a program see it. Built with gcc
 * against Debian's HIP headers and linked against Debian's real libamdhip64.so.5, so
 * that it imports its symbols @hip_4.2 and @hip_5.1 as a hipcc program does; run with
 * the stand-in first on LD_LIBRARY_PATH and no server (scripts/run-hip-tests.sh).
 * Checks: the stand-in is what got loaded; no server is no device; HIP's last-error rule, error names and strings;
 * hipCreateChannelDesc (a struct returned by value) and the half conversions (a float
 * argument and result) come back right through the jumps; a symbol of another node
 * (hipMallocAsync, hip_5.1) resolves; libamdhip64.so and .so.7 opened beside it share
 * one core. */
#define _GNU_SOURCE
#define TEST_NAME "loader"
#include "check.h"
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

unsigned short __gnu_f2h_ieee(float);
float __gnu_h2f_ieee(unsigned short);


int main(void) {
    Dl_info info;
    EXPECT(dladdr((void *)hipMalloc, &info) && strstr(info.dli_fname, "/hip/libamdhip64.so.5"),
           "hipMalloc comes from %s", info.dli_fname ? info.dli_fname : "nowhere");

    int version = 0;
    EXPECT(hipRuntimeGetVersion(&version) == hipSuccess && version == 50221153,
           "hipRuntimeGetVersion gave %d", version);
    EXPECT(hipGetLastError() == hipSuccess, "a successful call leaves hipSuccess");

    /* Run without a server (XPUPOOL_SERVER unset), as the real runtime is on a machine
     * without a GPU: no device. */
    int count = -1;
    EXPECT(hipGetDeviceCount(&count) == hipErrorNoDevice && count == 0,
           "no server: %d devices", count);
    void *p = NULL;
    EXPECT(hipMalloc(&p, 64) == hipErrorNoDevice, "no server, no memory");
    EXPECT(hipPeekAtLastError() == hipErrorNoDevice, "peek sees it");
    EXPECT(hipGetLastError() == hipErrorNoDevice, "get returns it");
    EXPECT(hipGetLastError() == hipSuccess, "and clears it");
    EXPECT(hipMallocAsync(&p, 64, 0) == hipErrorNotSupported, "hipMallocAsync (hip_5.1) is not there yet");

    EXPECT(strcmp(hipGetErrorName(hipErrorNotSupported), "hipErrorNotSupported") == 0,
           "name %s", hipGetErrorName(hipErrorNotSupported));
    EXPECT(strcmp(hipGetErrorName(hipErrorNoDevice), "hipErrorNoDevice") == 0, "name of 100");
    EXPECT(strstr(hipGetErrorString(hipErrorNotReady), "not ready") != NULL,
           "string %s", hipGetErrorString(hipErrorNotReady));

    hipChannelFormatDesc d = hipCreateChannelDesc(32, 16, 8, 0, hipChannelFormatKindFloat);
    EXPECT(d.x == 32 && d.y == 16 && d.z == 8 && d.w == 0 && d.f == hipChannelFormatKindFloat,
           "channel desc %d %d %d %d %d", d.x, d.y, d.z, d.w, (int)d.f);
    EXPECT(__gnu_f2h_ieee(1.5f) == 0x3e00, "1.5 as a half: %#x", __gnu_f2h_ieee(1.5f));
    EXPECT(__gnu_h2f_ieee(0xc000) == -2.0f, "0xc000 as a float: %f", __gnu_h2f_ieee(0xc000));

    void *plain = dlopen("libamdhip64.so", RTLD_NOW);
    void *seven = dlopen("libamdhip64.so.7", RTLD_NOW);
    EXPECT(plain && seven, "the other names open: %s", dlerror());
    if (plain && seven) {
        hipError_t (*malloc7)(void **, size_t) = (hipError_t(*)(void **, size_t))dlsym(seven, "hipMalloc");
        hipError_t (*last)(void) = (hipError_t(*)(void))dlsym(plain, "hipGetLastError");
        EXPECT(malloc7 && last, "their symbols are there");
        if (malloc7 && last) {
            malloc7(&p, 64);
            EXPECT(last() == hipErrorNoDevice, "one core: .so sees what .so.7 did");
        }
        EXPECT(dlsym(plain, "xph_hipGetLastError") == dlsym(seven, "xph_hipGetLastError"),
               "one core under both names");
    }
    return finish();
}
