// A failed device-side assert() must reach the program as cudaErrorAssert at the
// next synchronisation, and (as on a GPU) poison the context: later calls fail too.
#include <cassert>
#include <cstdio>

__global__ void check_positive(const int *v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) assert(v[i] > 0);
}

int main() {
    const int n = 256;
    int h[n];
    for (int i = 0; i < n; i++) h[i] = i == 100 ? -1 : i + 1;
    int *d;
    if (cudaMalloc(&d, sizeof h) != cudaSuccess || cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice) != cudaSuccess) {
        printf("FAIL device_assert: set-up\n");
        return 2;
    }
    check_positive<<<2, 128>>>(d, n);
    cudaError_t launch = cudaGetLastError();
    cudaError_t sync = cudaDeviceSynchronize();
    cudaError_t later = cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    printf("launch: %s, synchronize: %s, later copy: %s\n", cudaGetErrorName(launch), cudaGetErrorName(sync),
           cudaGetErrorName(later));
    // As on a GPU: the launch is accepted, the failure surfaces at the synchronisation.
    bool ok = launch == cudaSuccess && sync == cudaErrorAssert && later == cudaErrorAssert;
    printf(ok ? "PASS device_assert\n" : "FAIL device_assert: expected cudaErrorAssert, sticky\n");
    return ok ? 0 : 1;
}
