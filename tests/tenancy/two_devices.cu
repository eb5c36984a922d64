// Two devices of one pool server (tests/tenancy).
//
//   two_devices            fills device 0 up to the tenant's limit, then works on
//                          device 1 (its own memory), copies device 0 -> device 1
//                          with cudaMemcpyPeer and runs a kernel on device 1;
//                          each allocation's cudaPointerGetAttributes names its device
//   two_devices count      prints "devices=N" and each device's name and memory
//
// Exit status: 0 PASS, 1 wrong result, 2 a CUDA call failed.
#define TEST_NAME "two_devices"
#include "../cuda/check.cuh"

#include <vector>

__global__ void add_one(int* data, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] += 1;
}

int main(int argc, char** argv) {
    int count = 0;
    CHECK(cudaGetDeviceCount(&count));
    if (argc > 1 && !strcmp(argv[1], "count")) {
        printf("devices=%d\n", count);
        for (int d = 0; d < count; ++d) {
            cudaDeviceProp p;
            CHECK(cudaGetDeviceProperties(&p, d));
            printf("device %d: %s, %zu MiB, pci bus %d\n", d, p.name, p.totalGlobalMem >> 20, p.pciBusID);
        }
        return finish();
    }
    if (!expect_true(count >= 2, "at least two devices")) return finish();

    const int n = 1 << 16;
    std::vector<int> host(n);
    for (int i = 0; i < n; ++i) host[i] = i * 3;

    // Device 0: the data, then allocations until the tenant's limit refuses one.
    CHECK(cudaSetDevice(0));
    int* on0 = nullptr;
    CHECK(cudaMalloc(&on0, n * sizeof(int)));
    CHECK(cudaMemcpy(on0, host.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    std::vector<void*> filler;
    const size_t chunk = 4 << 20;
    for (;;) {
        void* p = nullptr;
        cudaError_t e = cudaMalloc(&p, chunk);
        if (e == cudaErrorMemoryAllocation) break;
        CHECK(e);
        filler.push_back(p);
        if (filler.size() > 4096) break;
    }
    (void)cudaGetLastError();
    size_t free0 = 0, total0 = 0;
    CHECK(cudaMemGetInfo(&free0, &total0));
    expect_true(!filler.empty() && filler.size() <= 4096, "device 0 filled up to a limit");
    expect_true(free0 < chunk, "device 0 has less than a chunk free once full");
    printf("device 0: %zu chunks of 4 MiB, %zu of %zu bytes free\n", filler.size(), free0, total0);

    // Device 1: its own memory, untouched by device 0's.
    CHECK(cudaSetDevice(1));
    size_t free1 = 0, total1 = 0;
    CHECK(cudaMemGetInfo(&free1, &total1));
    expect_true(free1 > total1 / 2, "device 1 is nearly empty while device 0 is full");
    int* on1 = nullptr;
    CHECK(cudaMalloc(&on1, n * sizeof(int)));
    int can = -1;
    CHECK(cudaDeviceCanAccessPeer(&can, 1, 0));
    CHECK(cudaMemcpyPeer(on1, 1, on0, 0, n * sizeof(int)));
    add_one<<<(n + 255) / 256, 256>>>(on1, n);
    CHECK_LAUNCH();
    std::vector<int> back(n);
    CHECK(cudaMemcpy(back.data(), on1, n * sizeof(int), cudaMemcpyDeviceToHost));
    std::vector<int> want(n);
    for (int i = 0; i < n; ++i) want[i] = host[i] + 1;
    compare_exact("device 1 after the peer copy and its kernel", want.data(), back.data(), n);
    // Each allocation says which device it is on.
    cudaPointerAttributes a0, a1;
    CHECK(cudaPointerGetAttributes(&a0, on0));
    CHECK(cudaPointerGetAttributes(&a1, on1 + 5));
    expect_true(a0.type == cudaMemoryTypeDevice && a0.device == 0, "an allocation of device 0 is on device 0");
    expect_true(a1.type == cudaMemoryTypeDevice && a1.device == 1, "an allocation of device 1 is on device 1");
    int current = -1;
    CHECK(cudaGetDevice(&current));
    expect_true(current == 1, "cudaGetDevice says 1");
    printf("peer access 1->0: %d\n", can);

    CHECK(cudaFree(on1));
    CHECK(cudaSetDevice(0));
    for (void* p : filler) CHECK(cudaFree(p));
    CHECK(cudaFree(on0));
    return finish();
}
