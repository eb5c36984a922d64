/* The module API: module_kernels.co (beside this program) loaded with hipModuleLoad
 * and with hipModuleLoadData (from memory, no size given); kernels found with
 * hipModuleGetFunction and launched with hipModuleLaunchKernel, by kernelParams and
 * by the extra list's packed buffer; a __device__ variable found with
 * hipModuleGetGlobal; hipModuleUnload. */
#define TEST_NAME "module"
#include <hip/hip_runtime.h>
#include "check.h"
#include <stdlib.h>
#include <string.h>

static char* read_file(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* bytes = (char*)malloc(*size);
    if (fread(bytes, 1, *size, f) != *size) { free(bytes); bytes = NULL; }
    fclose(f);
    return bytes;
}

int main(int argc, char** argv) {
    (void)argc;
    char path[4096];
    const char* slash = strrchr(argv[0], '/');
    snprintf(path, sizeof path, "%.*smodule_kernels.co", slash ? (int)(slash - argv[0] + 1) : 0, argv[0]);

    hipModule_t module;
    CHECK(hipModuleLoad(&module, path));
    hipFunction_t axpy, fill;
    CHECK(hipModuleGetFunction(&axpy, module, "axpy"));
    CHECK(hipModuleGetFunction(&fill, module, "fill"));
    EXPECT(hipModuleGetFunction(&fill, module, "no_such_kernel") == hipErrorNotFound, "a missing kernel");

    const int n = 3000;
    float x[n], y[n], want[n];
    for (int i = 0; i < n; ++i) { x[i] = i * 0.5f; y[i] = 1.0f; want[i] = 2.0f * x[i] + 1.0f; }
    float *dx, *dy;
    CHECK(hipMalloc((void**)&dx, sizeof x));
    CHECK(hipMalloc((void**)&dy, sizeof y));
    CHECK(hipMemcpy(dx, x, sizeof x, hipMemcpyHostToDevice));
    CHECK(hipMemcpy(dy, y, sizeof y, hipMemcpyHostToDevice));
    /* kernelParams: one pointer per parameter. */
    float a = 2.0f;
    int count = n;
    void* params[] = {&a, &dx, &dy, &count};
    CHECK(hipModuleLaunchKernel(axpy, (n + 255) / 256, 1, 1, 256, 1, 1, 0, 0, params, NULL));
    CHECK(hipMemcpy(y, dy, sizeof y, hipMemcpyDeviceToHost));
    int bad = 0;
    for (int i = 0; i < n; ++i)
        if (y[i] != want[i] && bad++ < 5) EXPECT(0, "kernelParams: y[%d] = %g, want %g", i, y[i], want[i]);

    /* extra: the arguments packed as the kernel lays them out. */
    struct { float a; const float* x; float* y; int n; } packed = {-1.0f, dx, dy, n};
    size_t packed_size = sizeof packed;
    void* extra[] = {HIP_LAUNCH_PARAM_BUFFER_POINTER, &packed, HIP_LAUNCH_PARAM_BUFFER_SIZE, &packed_size,
                     HIP_LAUNCH_PARAM_END};
    CHECK(hipModuleLaunchKernel(axpy, (n + 127) / 128, 1, 1, 128, 1, 1, 0, 0, NULL, extra));
    CHECK(hipMemcpy(y, dy, sizeof y, hipMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i)
        if (y[i] != want[i] - x[i] && bad++ < 10) EXPECT(0, "extra: y[%d] = %g, want %g", i, y[i], want[i] - x[i]);

    /* The module's __device__ variable: one increment per launch. */
    hipDeviceptr_t calls_address;
    size_t calls_size = 0;
    CHECK(hipModuleGetGlobal(&calls_address, &calls_size, module, "module_calls"));
    EXPECT(calls_size == sizeof(int), "module_calls is %zu bytes", calls_size);
    int calls = -1;
    CHECK(hipMemcpy(&calls, (const void*)calls_address, sizeof calls, hipMemcpyDeviceToHost));
    EXPECT(calls == 2, "module_calls %d after two launches", calls);
    CHECK(hipModuleUnload(module));
    EXPECT(hipModuleLaunchKernel(axpy, 1, 1, 1, 1, 1, 1, 0, 0, params, NULL) == hipErrorInvalidHandle,
           "a function of an unloaded module");

    /* hipModuleLoadData: the same code object, from memory. */
    size_t size = 0;
    char* image = read_file(path, &size);
    EXPECT(image != NULL, "reading %s", path);
    if (image) {
        hipModule_t again;
        CHECK(hipModuleLoadData(&again, image));
        free(image);
        CHECK(hipModuleGetFunction(&fill, again, "fill"));
        int* dout;
        CHECK(hipMalloc((void**)&dout, n * sizeof(int)));
        int value = 100;
        void* fill_params[] = {&dout, &value, &count};
        CHECK(hipModuleLaunchKernel(fill, (n + 63) / 64, 1, 1, 64, 1, 1, 0, 0, fill_params, NULL));
        static int out[n];
        CHECK(hipMemcpy(out, dout, sizeof out, hipMemcpyDeviceToHost));
        for (int i = 0; i < n; ++i)
            if (out[i] != 100 + i && bad++ < 15) EXPECT(0, "fill: out[%d] = %d", i, out[i]);
        CHECK(hipFree(dout));
        CHECK(hipModuleUnload(again));
    }
    CHECK(hipFree(dx));
    CHECK(hipFree(dy));
    if (failures) return 1;
    printf("ok module: hipModuleLoad and hipModuleLoadData, launches by kernelParams and extra\n");
    return 0;
}
