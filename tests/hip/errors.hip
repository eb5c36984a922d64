/* Launch and module errors, none of which runs a kernel: a stub that was never
 * registered (hipErrorInvalidDeviceFunction), zero and oversized blocks and grids
 * (hipErrorInvalidConfiguration, by <<<>>>, hipLaunchKernelGGL and hipLaunchKernel),
 * garbage given to hipModuleLoadData, a file that is not there, bogus module and
 * function handles (hipErrorInvalidHandle), a kernel name a module does not have
 * (hipErrorNotFound), an unregistered symbol (hipErrorInvalidSymbol), a kernel calling
 * printf (hipErrorNoBinaryForGpu: no host call service). */
#define TEST_NAME "errors"
#include <hip/hip_runtime.h>
#include "check.h"
#include <string.h>

__global__ void k(int* out) { out[threadIdx.x] = 1; }
/* printf calls the runtime's host service, which the pool does not offer. */
__global__ void says(int* out) { printf("out %d\n", out[threadIdx.x]); }

static void not_a_kernel(void) {}
static int not_a_symbol;

int main(int argc, char** argv) {
    (void)argc;
    int* out = NULL;
    CHECK(hipMalloc((void**)&out, 1024 * sizeof(int)));
    void* args[] = {&out};
    EXPECT(hipLaunchKernel((const void*)not_a_kernel, dim3(1), dim3(1), args, 0, 0) == hipErrorInvalidDeviceFunction,
           "an unregistered stub");
    EXPECT(hipGetLastError() == hipErrorInvalidDeviceFunction, "and it is the last error");

    says<<<1, 1>>>(out);
    /* Refused at launch by the client (it knows from the server that the kernel
     * cannot run), or, behind a hip backend that lists it, at the next
     * synchronisation. */
    hipError_t e = hipGetLastError();
    if (e == hipSuccess) e = hipDeviceSynchronize();
    EXPECT(e == hipErrorNoBinaryForGpu, "a kernel calling printf is refused: %s", hipGetErrorName(e));

    k<<<1, 0>>>(out);
    EXPECT(hipGetLastError() == hipErrorInvalidConfiguration, "a block of 0 threads by <<<>>>");
    hipLaunchKernelGGL(k, dim3(0), dim3(1), 0, 0, out);
    EXPECT(hipGetLastError() == hipErrorInvalidConfiguration, "a grid of 0 blocks by hipLaunchKernelGGL");
    EXPECT(hipLaunchKernel((const void*)k, dim3(1), dim3(1, 0, 1), args, 0, 0) == hipErrorInvalidConfiguration,
           "a block 0 high by hipLaunchKernel");
    EXPECT(hipLaunchKernel((const void*)k, dim3(1), dim3(2048), args, 0, 0) == hipErrorInvalidConfiguration,
           "a block of 2048 threads");
    EXPECT(hipGetLastError() == hipErrorInvalidConfiguration, "the last error");
    EXPECT(hipGetLastError() == hipSuccess, "cleared");

    hipModule_t module = NULL;
    static const char garbage[] = "this is not a code object";
    EXPECT(hipModuleLoadData(&module, garbage) != hipSuccess, "garbage is no module");
    static const char fake_elf[] = "\x7f" "ELF";
    EXPECT(hipModuleLoadData(&module, fake_elf) != hipSuccess, "nor is a 4-byte ELF magic");
    EXPECT(hipModuleLoad(&module, "/nonexistent/kernels.co") == hipErrorFileNotFound, "no such file");
    EXPECT(hipModuleLoadData(NULL, garbage) == hipErrorInvalidValue, "no out-pointer");

    hipFunction_t f = NULL;
    EXPECT(hipModuleGetFunction(&f, (hipModule_t)&not_a_symbol, "k") == hipErrorInvalidHandle, "a bogus module");
    EXPECT(hipModuleUnload((hipModule_t)&not_a_symbol) == hipErrorInvalidHandle, "unloading a bogus module");
    EXPECT(hipModuleLaunchKernel((hipFunction_t)&not_a_symbol, 1, 1, 1, 1, 1, 1, 0, 0, (void**)args, NULL) ==
               hipErrorInvalidHandle,
           "a bogus function");
    EXPECT(hipMemcpyToSymbol(HIP_SYMBOL(not_a_symbol), &out, sizeof(int), 0, hipMemcpyHostToDevice) ==
               hipErrorInvalidSymbol,
           "an unregistered symbol");
    size_t size = 0;
    EXPECT(hipGetSymbolSize(&size, HIP_SYMBOL(not_a_symbol)) == hipErrorInvalidSymbol, "its size");

    /* A kernel name the module does not have (module_kernels.co, beside this program). */
    char path[4096];
    const char* slash = strrchr(argv[0], '/');
    snprintf(path, sizeof path, "%.*smodule_kernels.co", slash ? (int)(slash - argv[0] + 1) : 0, argv[0]);
    CHECK(hipModuleLoad(&module, path));
    EXPECT(hipModuleGetFunction(&f, module, "no_such_kernel") == hipErrorNotFound, "a missing kernel");
    EXPECT(hipModuleGetFunction(NULL, module, "axpy") == hipErrorInvalidValue, "no out-pointer");
    CHECK(hipModuleUnload(module));
    CHECK(hipFree(out));
    if (failures) return 1;
    printf("ok errors: launch, module and symbol errors\n");
    return 0;
}
