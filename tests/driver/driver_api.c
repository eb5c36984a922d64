/* Driver-API end-to-end test, in plain C, with no link-time dependency on CUDA:
 * dlopen("libcuda.so.1"), dlsym every entry point, load a hand-written PTX module, and launch
 * its kernel twice -- once with kernelParams (void *[]) and once with the `extra` form
 * (CU_LAUNCH_PARAM_BUFFER_POINTER / _SIZE / _END over a packed, properly aligned buffer) --
 * checking the results each time. Also checks cuGetProcAddress_v2 for a known and an unknown
 * symbol (and calls through the pointer it returns), cuModuleGetFunction of a missing name,
 * cuCtxSynchronize, cuMemsetD32, and error names.
 *
 * Prints "PASS driver_api" and exits 0, or "FAIL driver_api: ..." and exits 1 (a mismatch)
 * or 2 (a driver call failed). `driver_api --print-ptx` prints the PTX and exits (used by
 * scripts/build-cuda-tests.sh to check that ptxas accepts it).
 *
 * cuda.h is used for types and constants only; the versioned entry points are looked up by
 * their real symbol names (cuMemAlloc_v2, ...). */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* saxpy-like kernel: y[i] = a * x[i] + y[i] + (float)bias, for i < n.
 * Parameter layout (C ABI, as the `extra` buffer must be packed):
 *   offset  0: .u32 n
 *   offset  8: .u64 x        (8-byte aligned: 4 bytes of padding before it)
 *   offset 16: .f32 a
 *   offset 20: .s32 bias
 *   offset 24: .u64 y
 *   total 32 bytes */
/* Two PTX modules for the JIT linker: kLinkMain's kernel calls add_seven, which
 * only kLinkLib defines. */
static const char kLinkMain[] =
    ".version 8.0\n"
    ".target sm_90\n"
    ".address_size 64\n"
    ".extern .func (.param .b32 r) add_seven(.param .b32 x);\n"
    ".visible .entry bump(.param .u64 p)\n"
    "{\n"
    "    .reg .b32 %r<4>;\n"
    "    .reg .b64 %rd<5>;\n"
    "    ld.param.u64 %rd1, [p];\n"
    "    cvta.to.global.u64 %rd2, %rd1;\n"
    "    mov.u32 %r3, %tid.x;\n"
    "    mul.wide.u32 %rd3, %r3, 4;\n"
    "    add.s64 %rd4, %rd2, %rd3;\n"
    "    ld.global.u32 %r1, [%rd4];\n"
    "    {\n"
    "    .param .b32 a0;\n"
    "    st.param.b32 [a0], %r1;\n"
    "    .param .b32 r0;\n"
    "    call.uni (r0), add_seven, (a0);\n"
    "    ld.param.b32 %r2, [r0];\n"
    "    }\n"
    "    st.global.u32 [%rd4], %r2;\n"
    "    ret;\n"
    "}\n";
static const char kLinkLib[] =
    ".version 8.0\n"
    ".target sm_90\n"
    ".address_size 64\n"
    ".visible .func (.param .b32 r) add_seven(.param .b32 x)\n"
    "{\n"
    "    .reg .b32 %r<3>;\n"
    "    ld.param.b32 %r1, [x];\n"
    "    add.s32 %r2, %r1, 7;\n"
    "    st.param.b32 [r], %r2;\n"
    "    ret;\n"
    "}\n";

static const char kPtx[] =
    ".version 8.0\n"
    ".target sm_90\n"
    ".address_size 64\n"
    "\n"
    ".visible .entry saxpy_bias(\n"
    "    .param .u32 saxpy_bias_n,\n"
    "    .param .u64 saxpy_bias_x,\n"
    "    .param .f32 saxpy_bias_a,\n"
    "    .param .s32 saxpy_bias_bias,\n"
    "    .param .u64 saxpy_bias_y\n"
    ")\n"
    "{\n"
    "    .reg .pred  %p<2>;\n"
    "    .reg .b32   %r<8>;\n"
    "    .reg .f32   %f<7>;\n"
    "    .reg .b64   %rd<8>;\n"
    "\n"
    "    ld.param.u32    %r1, [saxpy_bias_n];\n"
    "    ld.param.u64    %rd1, [saxpy_bias_x];\n"
    "    ld.param.f32    %f1, [saxpy_bias_a];\n"
    "    ld.param.s32    %r2, [saxpy_bias_bias];\n"
    "    ld.param.u64    %rd2, [saxpy_bias_y];\n"
    "    mov.u32         %r3, %ctaid.x;\n"
    "    mov.u32         %r4, %ntid.x;\n"
    "    mov.u32         %r5, %tid.x;\n"
    "    mad.lo.s32      %r6, %r3, %r4, %r5;\n"
    "    setp.ge.u32     %p1, %r6, %r1;\n"
    "    @%p1 bra        $L_done;\n"
    "    cvta.to.global.u64  %rd3, %rd1;\n"
    "    cvta.to.global.u64  %rd4, %rd2;\n"
    "    mul.wide.u32    %rd5, %r6, 4;\n"
    "    add.s64         %rd6, %rd3, %rd5;\n"
    "    add.s64         %rd7, %rd4, %rd5;\n"
    "    ld.global.f32   %f2, [%rd6];\n"
    "    ld.global.f32   %f3, [%rd7];\n"
    "    cvt.rn.f32.s32  %f4, %r2;\n"
    "    fma.rn.f32      %f5, %f1, %f2, %f3;\n"
    "    add.rn.f32      %f6, %f5, %f4;\n"
    "    st.global.f32   [%rd7], %f6;\n"
    "$L_done:\n"
    "    ret;\n"
    "}\n";

/* Entry points, resolved with dlsym. */
static CUresult (*p_cuInit)(unsigned);
static CUresult (*p_cuDriverGetVersion)(int *);
static CUresult (*p_cuDeviceGetCount)(int *);
static CUresult (*p_cuDeviceGet)(CUdevice *, int);
static CUresult (*p_cuDeviceGetName)(char *, int, CUdevice);
static CUresult (*p_cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
static CUresult (*p_cuDeviceTotalMem)(size_t *, CUdevice);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
static CUresult (*p_cuDevicePrimaryCtxRelease)(CUdevice);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuCtxGetCurrent)(CUcontext *);
static CUresult (*p_cuCtxSynchronize)(void);
static CUresult (*p_cuModuleLoadData)(CUmodule *, const void *);
static CUresult (*p_cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
static CUresult (*p_cuModuleUnload)(CUmodule);
static CUresult (*p_cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*p_cuMemFree)(CUdeviceptr);
static CUresult (*p_cuMemcpyHtoD)(CUdeviceptr, const void *, size_t);
static CUresult (*p_cuMemcpyDtoH)(void *, CUdeviceptr, size_t);
static CUresult (*p_cuMemsetD32)(CUdeviceptr, unsigned int, size_t);
static CUresult (*p_cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                    unsigned, unsigned, CUstream, void **, void **);
static CUresult (*p_cuOccupancyMaxPotentialBlockSize)(int *, int *, CUfunction, size_t (*)(int),
                                                      size_t, int);
static CUresult (*p_cuOccupancyMaxActiveBlocksPerMultiprocessor)(int *, CUfunction, int, size_t);
static CUresult (*p_cuLinkCreate)(unsigned, CUjit_option *, void **, CUlinkState *);
static CUresult (*p_cuLinkAddData)(CUlinkState, CUjitInputType, void *, size_t, const char *, unsigned,
                                   CUjit_option *, void **);
static CUresult (*p_cuLinkComplete)(CUlinkState, void **, size_t *);
static CUresult (*p_cuLinkDestroy)(CUlinkState);
static CUresult (*p_cuGetErrorName)(CUresult, const char **);
static CUresult (*p_cuGetErrorString)(CUresult, const char **);
static CUresult (*p_cuGetProcAddress)(const char *, void **, int, cuuint64_t,
                                      CUdriverProcAddressQueryResult *);

static int g_failures = 0;

static const char *err_name(CUresult r) {
    const char *s = NULL;
    if (p_cuGetErrorName == NULL || p_cuGetErrorName(r, &s) != CUDA_SUCCESS || s == NULL)
        return "(unknown CUresult)";
    return s;
}

#define CHECK(call)                                                                       \
    do {                                                                                  \
        CUresult r_ = (call);                                                             \
        if (r_ != CUDA_SUCCESS) {                                                         \
            fprintf(stderr, "%s:%d: %s returned %s (%d)\n", __FILE__, __LINE__, #call,    \
                    err_name(r_), (int)r_);                                               \
            printf("FAIL driver_api: %s returned %s (%d) at %s:%d\n", #call, err_name(r_), \
                   (int)r_, __FILE__, __LINE__);                                          \
            exit(2);                                                                      \
        }                                                                                 \
    } while (0)

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    va_list ap;
    if (++g_failures > 20) return;
    va_start(ap, fmt);
    printf("FAIL driver_api: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

static void *lib;

static void *need(const char *name) {
    void *p = dlsym(lib, name);
    if (p == NULL) {
        printf("FAIL driver_api: dlsym(\"%s\") failed: %s\n", name, dlerror());
        exit(2);
    }
    return p;
}

#define LOAD(var, name) (*(void **)(&(var)) = need(name))

static void load_entry_points(void) {
    lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (lib == NULL) {
        printf("FAIL driver_api: dlopen(\"libcuda.so.1\") failed: %s\n", dlerror());
        exit(2);
    }
    LOAD(p_cuGetErrorName, "cuGetErrorName");
    LOAD(p_cuGetErrorString, "cuGetErrorString");
    LOAD(p_cuInit, "cuInit");
    LOAD(p_cuDriverGetVersion, "cuDriverGetVersion");
    LOAD(p_cuDeviceGetCount, "cuDeviceGetCount");
    LOAD(p_cuDeviceGet, "cuDeviceGet");
    LOAD(p_cuDeviceGetName, "cuDeviceGetName");
    LOAD(p_cuDeviceGetAttribute, "cuDeviceGetAttribute");
    LOAD(p_cuDeviceTotalMem, "cuDeviceTotalMem_v2");
    LOAD(p_cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    LOAD(p_cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
    LOAD(p_cuCtxSetCurrent, "cuCtxSetCurrent");
    LOAD(p_cuCtxGetCurrent, "cuCtxGetCurrent");
    LOAD(p_cuCtxSynchronize, "cuCtxSynchronize");
    LOAD(p_cuModuleLoadData, "cuModuleLoadData");
    LOAD(p_cuModuleGetFunction, "cuModuleGetFunction");
    LOAD(p_cuModuleUnload, "cuModuleUnload");
    LOAD(p_cuMemAlloc, "cuMemAlloc_v2");
    LOAD(p_cuMemFree, "cuMemFree_v2");
    LOAD(p_cuMemcpyHtoD, "cuMemcpyHtoD_v2");
    LOAD(p_cuMemcpyDtoH, "cuMemcpyDtoH_v2");
    LOAD(p_cuMemsetD32, "cuMemsetD32_v2");
    LOAD(p_cuLaunchKernel, "cuLaunchKernel");
    LOAD(p_cuLinkCreate, "cuLinkCreate_v2");
    LOAD(p_cuLinkAddData, "cuLinkAddData_v2");
    LOAD(p_cuLinkComplete, "cuLinkComplete");
    LOAD(p_cuLinkDestroy, "cuLinkDestroy");
    LOAD(p_cuOccupancyMaxPotentialBlockSize, "cuOccupancyMaxPotentialBlockSize");
    LOAD(p_cuOccupancyMaxActiveBlocksPerMultiprocessor, "cuOccupancyMaxActiveBlocksPerMultiprocessor");
    LOAD(p_cuGetProcAddress, "cuGetProcAddress_v2");
}

/* Host reference: the same operations in the same order (fmaf is correctly rounded, like
 * fma.rn.f32; the bias add is a separate rounding, like add.rn.f32). */
static float ref_saxpy(float a, float x, float y, int bias) {
    return fmaf(a, x, y) + (float)bias;
}

static int compare(const char *what, const float *want, const float *got, int n) {
    int bad = 0;
    for (int i = 0; i < n; ++i) {
        if (memcmp(&want[i], &got[i], sizeof(float)) != 0) {
            if (bad < 5) fail("%s[%d]: expected %.9g got %.9g", what, i, want[i], got[i]);
            ++bad;
        }
    }
    if (bad > 5) fail("%s: %d mismatches in total", what, bad);
    return bad;
}

/* The export table cuBLAS(Lt) asks for (21318c60): slot 4 gives a context's unique id, as
 * cuCtxGetId does, and 0 for NULL (driver 580 on an H100: 1 and 0); without it cuBLASLt
 * finds no algorithm for any matrix product. */
static void test_tools_context_table(CUcontext ctx) {
    static const unsigned char id[16] = {0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48,
                                         0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2};
    CUresult (*get_table)(const void **, const CUuuid *);
    CUresult (*get_id)(CUcontext, unsigned long long *);
    LOAD(get_table, "cuGetExportTable");
    LOAD(get_id, "cuCtxGetId");
    const void *const *table = NULL;
    CUuuid uuid;
    memcpy(uuid.bytes, id, sizeof id);
    CHECK(get_table((const void **)&table, &uuid));
    if (table == NULL || (size_t)table[0] < 5 * sizeof(void *) || table[4] == NULL) {
        fail("export table 21318c60 has no slot 4");
        return;
    }
    CUresult (*slot4)(CUcontext, unsigned long long *) = (CUresult (*)(CUcontext, unsigned long long *))table[4];
    unsigned long long want = 0, got = ~0ull, current = ~0ull;
    CHECK(get_id(ctx, &want));
    CHECK(slot4(ctx, &got));
    CHECK(slot4(NULL, &current));
    if (!getenv("XPUPOOL_SERVER"))
        printf("note: export table 21318c60 slot 4 natively: %llu (cuCtxGetId %llu), current %llu\n", got, want, current);
    else if (got != want || current != 0)
        fail("export table 21318c60 slot 4: %llu for the context (cuCtxGetId %llu) and %llu for NULL (0 natively)", got, want, current);
}

/* Lazy loading, as driver 580 does it (seen on an H100 through the cuda backend): a
 * function only enumerated is not loaded, refuses its device-dependent attributes
 * (CUDA_ERROR_FUNCTION_NOT_LOADED) until cuFuncLoad, and answers them after. The cuda
 * backend relies on this to load only the kernels a program uses. Natively noted. */
static void test_lazy_loading(CUmodule mod) {
    CUresult (*count_fn)(unsigned *, CUmodule);
    CUresult (*enumerate)(CUfunction *, unsigned, CUmodule);
    CUresult (*is_loaded)(CUfunctionLoadingState *, CUfunction);
    CUresult (*load)(CUfunction);
    CUresult (*get_attribute)(int *, CUfunction_attribute, CUfunction);
    LOAD(count_fn, "cuModuleGetFunctionCount");
    LOAD(enumerate, "cuModuleEnumerateFunctions");
    LOAD(is_loaded, "cuFuncIsLoaded");
    LOAD(load, "cuFuncLoad");
    LOAD(get_attribute, "cuFuncGetAttribute");
    unsigned n = 0;
    CHECK(count_fn(&n, mod));
    CUfunction fns[8];
    if (n == 0 || n > 8) {
        fail("%u functions in the test module", n);
        return;
    }
    CHECK(enumerate(fns, n, mod));
    CUfunctionLoadingState state = CU_FUNCTION_LOADING_STATE_MAX;
    CHECK(is_loaded(&state, fns[0]));
    int threads = -1, regs = -1;
    CUresult before = get_attribute(&threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fns[0]);
    CHECK(get_attribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, fns[0]));
    CHECK(load(fns[0]));
    CUfunctionLoadingState after_load = CU_FUNCTION_LOADING_STATE_MAX;
    CHECK(is_loaded(&after_load, fns[0]));
    CHECK(get_attribute(&threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fns[0]));
    if (!getenv("XPUPOOL_SERVER")) {
        printf("note: an enumerated function natively: state %d, MAX_THREADS_PER_BLOCK %s before cuFuncLoad\n",
               (int)state, err_name(before));
        return;
    }
    const int lazy = getenv("CUDA_MODULE_LOADING") == NULL || strcmp(getenv("CUDA_MODULE_LOADING"), "EAGER") != 0;
    if (lazy && (state != CU_FUNCTION_LOADING_STATE_UNLOADED || before != CUDA_ERROR_FUNCTION_NOT_LOADED))
        fail("an enumerated function: state %d, MAX_THREADS_PER_BLOCK %s before it is loaded", (int)state, err_name(before));
    if (after_load != CU_FUNCTION_LOADING_STATE_LOADED || threads <= 0)
        fail("after cuFuncLoad: state %d, %d threads a block", (int)after_load, threads);
}

/* An entry point by name and CUDA version, as the runtime gets it. */
static void *proc(const char *name, int version) {
    void *pfn = NULL;
    CUdriverProcAddressQueryResult status = (CUdriverProcAddressQueryResult)-1;
    CHECK(p_cuGetProcAddress(name, &pfn, version, CU_GET_PROC_ADDRESS_DEFAULT, &status));
    if (pfn == NULL) fail("cuGetProcAddress_v2(\"%s\", %d) returned a NULL pfn", name, version);
    return pfn;
}

/* CUDA 10's capture (no mode argument) and CUDA 10's and 11's instantiation (an error
 * node and a log buffer, no flags), called with their own signatures. */
static void test_old_capture_and_instantiate(void) {
    CUresult (*alloc)(CUdeviceptr *, size_t) = proc("cuMemAlloc", 3020);
    CUresult (*create)(CUstream *, unsigned) = proc("cuStreamCreate", 2000);
    CUresult (*begin)(CUstream) = proc("cuStreamBeginCapture", 10000);
    CUresult (*fill)(CUdeviceptr, unsigned, size_t, CUstream) = proc("cuMemsetD32Async", 3020);
    CUresult (*end)(CUstream, CUgraph *) = proc("cuStreamEndCapture", 10000);
    CUresult (*launch)(CUgraphExec, CUstream) = proc("cuGraphLaunch", 10000);
    CUresult (*sync)(CUstream) = proc("cuStreamSynchronize", 2000);
    CUresult (*exec_destroy)(CUgraphExec) = proc("cuGraphExecDestroy", 10000);
    CUresult (*graph_destroy)(CUgraph) = proc("cuGraphDestroy", 10000);
    CUresult (*stream_destroy)(CUstream) = proc("cuStreamDestroy", 4000);
    const int versions[2] = {10000, 11000};
    CUdeviceptr p = 0;
    CUstream s = NULL;
    CHECK(alloc(&p, 4096));
    CHECK(create(&s, CU_STREAM_NON_BLOCKING));
    for (int k = 0; k < 2; ++k) {
        CUresult (*instantiate)(CUgraphExec *, CUgraph, CUgraphNode *, char *, size_t) =
            proc("cuGraphInstantiate", versions[k]);
        const unsigned value = 0x12340000u + (unsigned)k;
        CUgraph graph = NULL;
        CUgraphExec exec = NULL;
        CHECK(begin(s));
        CHECK(fill(p, value, 1024, s));
        CHECK(end(s, &graph));
        CUgraphNode error_node = (CUgraphNode)&graph; /* garbage that must be cleared */
        char log[16] = "garbage";
        CHECK(instantiate(&exec, graph, &error_node, log, sizeof log));
        if (error_node != NULL) fail("cuGraphInstantiate (%d) left an error node", versions[k]);
        if (log[0] != 0) fail("cuGraphInstantiate (%d) left the log \"%s\"", versions[k], log);
        CHECK(launch(exec, s));
        CHECK(sync(s));
        unsigned word = 0;
        CHECK(p_cuMemcpyDtoH(&word, p + 4092, sizeof word));
        if (word != value)
            fail("a graph captured and instantiated the CUDA %d way wrote 0x%08x", versions[k], word);
        CHECK(exec_destroy(exec));
        CHECK(graph_destroy(graph));
    }
    CHECK(stream_destroy(s));
    CHECK(p_cuMemFree(p));
}

static void test_proc_address(void) {
    void *pfn = NULL;
    CUdriverProcAddressQueryResult status = (CUdriverProcAddressQueryResult)-1;
    CHECK(p_cuGetProcAddress("cuMemAlloc", &pfn, 3020, CU_GET_PROC_ADDRESS_DEFAULT, &status));
    if (pfn == NULL) fail("cuGetProcAddress_v2(\"cuMemAlloc\", 3020) returned a NULL pfn");
    if (status != CU_GET_PROC_ADDRESS_SUCCESS)
        fail("cuGetProcAddress_v2(\"cuMemAlloc\", 3020) status %d, expected SUCCESS", (int)status);
    if (pfn != NULL) {
        /* Version 3020 of cuMemAlloc is cuMemAlloc_v2 (size_t bytes): use it. */
        CUresult (*alloc)(CUdeviceptr *, size_t) = (CUresult(*)(CUdeviceptr *, size_t))pfn;
        CUdeviceptr p = 0;
        CHECK(alloc(&p, 1 << 20));
        if (p == 0) fail("cuMemAlloc through cuGetProcAddress returned a NULL pointer");
        CHECK(p_cuMemsetD32(p, 0xfeedf00du, (1 << 20) / 4));
        unsigned int word = 0;
        CHECK(p_cuMemcpyDtoH(&word, p + 4096, sizeof word));
        if (word != 0xfeedf00du)
            fail("cuMemsetD32 on memory from the cuGetProcAddress pointer: 0x%08x", word);
        CHECK(p_cuMemFree(p));
    }

    void *pfn2 = (void *)&pfn; /* non-NULL garbage that must be cleared */
    CUdriverProcAddressQueryResult status2 = (CUdriverProcAddressQueryResult)-1;
    CUresult r = p_cuGetProcAddress("cuDefinitelyNotARealDriverFunction", &pfn2, 13000,
                                    CU_GET_PROC_ADDRESS_DEFAULT, &status2);
    /* Either an error (CUDA_ERROR_NOT_FOUND on current drivers), or -- as cuda.h documents --
     * CUDA_SUCCESS with a NULL pfn and status SYMBOL_NOT_FOUND. */
    if (r == CUDA_SUCCESS) {
        if (pfn2 != NULL)
            fail("cuGetProcAddress_v2 of an unknown name succeeded with pfn %p", pfn2);
        if (status2 != CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND)
            fail("cuGetProcAddress_v2 of an unknown name: status %d, expected SYMBOL_NOT_FOUND (%d)",
                 (int)status2, (int)CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    }
    printf("cuGetProcAddress_v2(unknown) returned %s, status %d\n", err_name(r), (int)status2);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--print-ptx") == 0) {
        fputs(kPtx, stdout);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--print-link-lib") == 0) {
        fputs(kLinkLib, stdout);
        return 0;
    }
    load_entry_points();

    CHECK(p_cuInit(0));
    int version = 0, count = 0;
    CHECK(p_cuDriverGetVersion(&version));
    CHECK(p_cuDeviceGetCount(&count));
    if (version < 13000) fail("cuDriverGetVersion = %d, expected >= 13000", version);
    if (count < 1) {
        fail("cuDeviceGetCount = %d", count);
        return 1;
    }
    CUdevice dev;
    CHECK(p_cuDeviceGet(&dev, 0));
    char name[256];
    memset(name, 0, sizeof name);
    CHECK(p_cuDeviceGetName(name, sizeof name, dev));
    int major = 0, warp = 0;
    CHECK(p_cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
    CHECK(p_cuDeviceGetAttribute(&warp, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev));
    size_t total = 0;
    CHECK(p_cuDeviceTotalMem(&total, dev));
    printf("driver %d, %d device(s); device 0: \"%s\", cc major %d, %zu MiB\n", version, count,
           name, major, total >> 20);
    if (name[0] == 0) fail("cuDeviceGetName returned an empty name");
    if (warp != 32) fail("CU_DEVICE_ATTRIBUTE_WARP_SIZE = %d", warp);
    if (total == 0) fail("cuDeviceTotalMem = 0");

    CUcontext ctx = NULL, cur = NULL;
    CHECK(p_cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(p_cuCtxSetCurrent(ctx));
    CHECK(p_cuCtxGetCurrent(&cur));
    if (cur != ctx) fail("cuCtxGetCurrent returned %p, expected %p", (void *)cur, (void *)ctx);

    test_proc_address();
    test_old_capture_and_instantiate();
    test_tools_context_table(ctx);

    CUmodule mod;
    CHECK(p_cuModuleLoadData(&mod, kPtx));
    test_lazy_loading(mod);
    CUfunction fn;
    CHECK(p_cuModuleGetFunction(&fn, mod, "saxpy_bias"));
    CUfunction missing = NULL;
    CUresult r = p_cuModuleGetFunction(&missing, mod, "no_such_kernel");
    if (r != CUDA_ERROR_NOT_FOUND)
        fail("cuModuleGetFunction(\"no_such_kernel\") returned %s, expected CUDA_ERROR_NOT_FOUND",
             err_name(r));

    /* The occupancy calculator: the block size it picks keeps at least as many threads
     * resident as every other whole-warp size, and the grid fills every SM. */
    {
        int min_grid = 0, best = 0, sms = 0;
        CHECK(p_cuOccupancyMaxPotentialBlockSize(&min_grid, &best, fn, NULL, 0, 0));
        CHECK(p_cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0));
        int best_blocks = 0;
        CHECK(p_cuOccupancyMaxActiveBlocksPerMultiprocessor(&best_blocks, fn, best, 0));
        if (best <= 0 || best % 32 != 0 || min_grid != best_blocks * sms)
            fail("cuOccupancyMaxPotentialBlockSize: block %d, min grid %d (%d blocks/SM, %d SMs)",
                 best, min_grid, best_blocks, sms);
        for (int size = 32; size <= 1024; size += 32) {
            int blocks = 0;
            CHECK(p_cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, size, 0));
            if (blocks * size > best_blocks * best)
                fail("block %d keeps %d threads resident, more than the chosen %d's %d", size,
                     blocks * size, best, best_blocks * best);
        }
        int capped = 0;
        CHECK(p_cuOccupancyMaxPotentialBlockSize(&min_grid, &capped, fn, NULL, 0, 100));
        if (capped > 100 || capped <= 0) fail("a block size limit of 100 gave %d", capped);
    }

    enum { N = 1000, BLOCK = 128 };
    const unsigned grid = (N + BLOCK - 1) / BLOCK;
    float hx[N], hy[N], want[N], got[N];
    for (int i = 0; i < N; ++i) {
        hx[i] = (float)(i % 37) * 0.375f - 5.0f;
        hy[i] = (float)i * 0.001953125f + 1.0f / 3.0f;
    }
    CUdeviceptr dx, dy;
    CHECK(p_cuMemAlloc(&dx, N * sizeof(float)));
    CHECK(p_cuMemAlloc(&dy, (N + 64) * sizeof(float)));
    CHECK(p_cuMemcpyHtoD(dx, hx, sizeof hx));
    CHECK(p_cuMemcpyHtoD(dy, hy, sizeof hy));
    /* Sentinel after the end: threads with i >= n must not write. */
    CHECK(p_cuMemsetD32(dy + N * sizeof(float), 0x7fc00001u, 64));

    /* Launch 1: kernelParams. */
    unsigned int n = N;
    float a = 2.5f;
    int bias = -3;
    void *params[] = {&n, &dx, &a, &bias, &dy};
    CHECK(p_cuLaunchKernel(fn, grid, 1, 1, BLOCK, 1, 1, 0, NULL, params, NULL));
    CHECK(p_cuCtxSynchronize());
    CHECK(p_cuMemcpyDtoH(got, dy, sizeof got));
    for (int i = 0; i < N; ++i) want[i] = ref_saxpy(a, hx[i], hy[i], bias);
    compare("launch with kernelParams", want, got, N);

    /* Launch 2: `extra` with a packed buffer laid out like the C struct below. */
    struct {
        unsigned int n;      /* 0 */
        CUdeviceptr x;       /* 8 */
        float a;             /* 16 */
        int bias;            /* 20 */
        CUdeviceptr y;       /* 24 */
    } packed;
    _Static_assert(offsetof(__typeof__(packed), x) == 8, "x offset");
    _Static_assert(offsetof(__typeof__(packed), a) == 16, "a offset");
    _Static_assert(offsetof(__typeof__(packed), bias) == 20, "bias offset");
    _Static_assert(offsetof(__typeof__(packed), y) == 24, "y offset");
    _Static_assert(sizeof(packed) == 32, "packed size");
    memset(&packed, 0xee, sizeof packed); /* padding must not matter */
    packed.n = N - 10; /* the last 10 elements stay untouched */
    packed.x = dx;
    packed.a = -0.75f;
    packed.bias = 7;
    packed.y = dy;
    size_t packed_size = sizeof packed;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &packed, CU_LAUNCH_PARAM_BUFFER_SIZE,
                     &packed_size, CU_LAUNCH_PARAM_END};
    CHECK(p_cuLaunchKernel(fn, grid, 1, 1, BLOCK, 1, 1, 0, NULL, NULL, extra));
    CHECK(p_cuCtxSynchronize());
    float got2[N + 64];
    CHECK(p_cuMemcpyDtoH(got2, dy, sizeof got2));
    for (int i = 0; i < N; ++i)
        want[i] = i < N - 10 ? ref_saxpy(packed.a, hx[i], want[i], packed.bias) : want[i];
    compare("launch with extra (packed buffer)", want, got2, N);
    for (int i = N; i < N + 64; ++i) {
        unsigned int bits;
        memcpy(&bits, &got2[i], sizeof bits);
        if (bits != 0x7fc00001u) {
            fail("sentinel after the array overwritten at [%d]: 0x%08x", i, bits);
            break;
        }
    }

    /* The JIT linker: two PTX inputs, one calling the other's function. */
    {
        CUlinkState link;
        CHECK(p_cuLinkCreate(0, NULL, NULL, &link));
        CHECK(p_cuLinkAddData(link, CU_JIT_INPUT_PTX, (void *)kLinkMain, sizeof kLinkMain, "main",
                              0, NULL, NULL));
        CHECK(p_cuLinkAddData(link, CU_JIT_INPUT_PTX, (void *)kLinkLib, sizeof kLinkLib, "lib", 0,
                              NULL, NULL));
        /* PTX posing as a cubin is refused when it is added (NVIDIA's driver 580 does
         * so, and xpupool, which sees it is no ELF file), or else when the link
         * completes; an NVVM input is refused through xpupool, and noted natively. */
        {
            CUlinkState bad;
            CHECK(p_cuLinkCreate(0, NULL, NULL, &bad));
            CHECK(p_cuLinkAddData(bad, CU_JIT_INPUT_PTX, (void *)kLinkMain, sizeof kLinkMain, "main",
                                  0, NULL, NULL));
            CUresult added = p_cuLinkAddData(bad, CU_JIT_INPUT_CUBIN, (void *)kLinkLib, sizeof kLinkLib,
                                             "cubin", 0, NULL, NULL);
            if (added == CUDA_SUCCESS) {
                void *out = NULL;
                size_t out_size = 0;
                CUresult r = p_cuLinkComplete(bad, &out, &out_size);
                if (r == CUDA_SUCCESS) fail("a link with PTX posing as a cubin succeeded");
            } else if (added != CUDA_ERROR_INVALID_IMAGE) {
                fail("PTX posing as a cubin was refused with %s, not CUDA_ERROR_INVALID_IMAGE", err_name(added));
            }
            CUresult nvvm = p_cuLinkAddData(bad, CU_JIT_INPUT_NVVM, (void *)kLinkLib, sizeof kLinkLib,
                                            "nvvm", 0, NULL, NULL);
            if (!getenv("XPUPOOL_SERVER"))
                printf("note: an NVVM input to the linker natively: %s\n", err_name(nvvm));
            else if (nvvm != CUDA_ERROR_NOT_SUPPORTED)
                fail("an NVVM input to the linker returned %s", err_name(nvvm));
            CHECK(p_cuLinkDestroy(bad));
        }
        void *image = NULL;
        size_t image_size = 0;
        CHECK(p_cuLinkComplete(link, &image, &image_size));
        CUmodule linked;
        CHECK(p_cuModuleLoadData(&linked, image));
        CHECK(p_cuLinkDestroy(link));
        CUfunction bump;
        CHECK(p_cuModuleGetFunction(&bump, linked, "bump"));
        int host[32];
        for (int i = 0; i < 32; ++i) host[i] = 100 * i;
        CUdeviceptr d;
        CHECK(p_cuMemAlloc(&d, sizeof host));
        CHECK(p_cuMemcpyHtoD(d, host, sizeof host));
        void *args[] = {&d};
        CHECK(p_cuLaunchKernel(bump, 1, 1, 1, 32, 1, 1, 0, NULL, args, NULL));
        CHECK(p_cuMemcpyDtoH(host, d, sizeof host));
        for (int i = 0; i < 32; ++i)
            if (host[i] != 100 * i + 7) {
                fail("linked kernel: [%d] = %d, expected %d", i, host[i], 100 * i + 7);
                break;
            }
        CHECK(p_cuMemFree(d));
        CHECK(p_cuModuleUnload(linked));
    }

    /* A relocatable cubin of kLinkLib (scripts/build-cuda-tests.sh makes link_lib.cubin
     * beside this program with ptxas -c) linked with PTX by the driver's own linker:
     * on a GPU host, natively or through xpupool's cuda backend; the mock has no
     * linker and refuses it. */
    {
        char path[4096];
        const char *slash = strrchr(argv[0], '/');
        int dir = slash ? (int)(slash - argv[0]) : 1;
        snprintf(path, sizeof path, "%.*s/link_lib.cubin", dir, slash ? argv[0] : ".");
        FILE *f = fopen(path, "rb");
        if (f != NULL) {
            static char cubin[1 << 20];
            size_t n = fread(cubin, 1, sizeof cubin, f);
            fclose(f);
            CUlinkState link;
            CHECK(p_cuLinkCreate(0, NULL, NULL, &link));
            CHECK(p_cuLinkAddData(link, CU_JIT_INPUT_PTX, (void *)kLinkMain, sizeof kLinkMain, "main",
                                  0, NULL, NULL));
            CHECK(p_cuLinkAddData(link, CU_JIT_INPUT_CUBIN, cubin, n, "lib", 0, NULL, NULL));
            void *image = NULL;
            size_t image_size = 0;
            CUresult r = p_cuLinkComplete(link, &image, &image_size);
            if (r == CUDA_ERROR_NOT_SUPPORTED) {
                printf("note: a cubin link input is refused here (a server without a linker)\n");
            } else {
                CHECK(r);
                CUmodule linked;
                CHECK(p_cuModuleLoadData(&linked, image));
                CUfunction bump;
                CHECK(p_cuModuleGetFunction(&bump, linked, "bump"));
                int host[32];
                for (int i = 0; i < 32; ++i) host[i] = 3 * i;
                CUdeviceptr d;
                CHECK(p_cuMemAlloc(&d, sizeof host));
                CHECK(p_cuMemcpyHtoD(d, host, sizeof host));
                void *args[] = {&d};
                CHECK(p_cuLaunchKernel(bump, 1, 1, 1, 32, 1, 1, 0, NULL, args, NULL));
                CHECK(p_cuMemcpyDtoH(host, d, sizeof host));
                int bad = 0;
                for (int i = 0; i < 32; ++i) bad += host[i] != 3 * i + 7;
                if (bad) fail("kernel linked with a cubin: %d wrong results", bad);
                else printf("linked PTX with a relocatable cubin: ok\n");
                CHECK(p_cuMemFree(d));
                CHECK(p_cuModuleUnload(linked));
            }
            CHECK(p_cuLinkDestroy(link));
        }
    }

    CHECK(p_cuMemFree(dx));
    CHECK(p_cuMemFree(dy));
    CHECK(p_cuModuleUnload(mod));
    CHECK(p_cuCtxSynchronize());
    CHECK(p_cuDevicePrimaryCtxRelease(dev));

    if (g_failures == 0) {
        printf("PASS driver_api\n");
        return 0;
    }
    printf("FAIL driver_api: %d check(s) failed\n", g_failures);
    return 1;
}
