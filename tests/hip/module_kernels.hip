/* Kernels for module.hip, built on their own as a code object (hipcc --genco) and
 * loaded with hipModuleLoad / hipModuleLoadData. */
#include <hip/hip_runtime.h>

__device__ int module_calls;

extern "C" __global__ void axpy(float a, const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
    if (i == 0) atomicAdd(&module_calls, 1);
}

extern "C" __global__ void fill(int* out, int value, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = value + i;
}
