// Device enumeration and properties: cudaGetDeviceCount, cudaGetDeviceProperties (fields
// sane and fixed architectural limits right), cudaDeviceGetAttribute agreeing with the
// properties, cudaSetDevice/cudaGetDevice, driver and runtime versions, PCI bus id (format,
// agreement with the properties, round trip through cudaDeviceGetByPCIBusId), invalid device
// ordinals refused with cudaErrorInvalidDevice, a kernel still runs afterwards, and
// cudaDeviceReset at the end.
#define TEST_NAME "device_query"
#include "check.cuh"

__global__ void write_value(int *out, int v) { *out = v + (int)(blockDim.x * gridDim.x); }

static void check_attr(int dev, cudaDeviceAttr attr, const char *name, long long want) {
    int v = -12345;
    CHECK(cudaDeviceGetAttribute(&v, attr, dev));
    if ((long long)v != want)
        fail("cudaDeviceGetAttribute(%s) = %d, cudaGetDeviceProperties says %lld", name, v, want);
}
#define ATTR(attr, field) check_attr(dev, attr, #attr, (long long)(field))

static void check_device(int dev) {
    cudaDeviceProp p;
    memset(&p, 0, sizeof p);
    CHECK(cudaGetDeviceProperties(&p, dev));
    printf("device %d: \"%s\" sm_%d%d, %d SMs, %zu MiB, L2 %d KiB, bus %04x:%02x:%02x\n", dev,
           p.name, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem >> 20,
           p.l2CacheSize >> 10, p.pciDomainID, p.pciBusID, p.pciDeviceID);

    if (strnlen(p.name, sizeof p.name) == 0) fail("device %d: empty name", dev);
    if (strnlen(p.name, sizeof p.name) == sizeof p.name) fail("device %d: name not terminated", dev);
    if (p.major < 7) fail("device %d: compute capability major %d < 7", dev, p.major);
    if (p.minor < 0 || p.minor > 9) fail("device %d: compute capability minor %d", dev, p.minor);
    if (p.maxThreadsPerBlock != 1024) fail("maxThreadsPerBlock %d != 1024", p.maxThreadsPerBlock);
    if (p.warpSize != 32) fail("warpSize %d != 32", p.warpSize);
    if (p.totalGlobalMem == 0) fail("totalGlobalMem is 0");
    if (p.multiProcessorCount <= 0) fail("multiProcessorCount %d", p.multiProcessorCount);
    if (p.maxThreadsDim[0] != 1024 || p.maxThreadsDim[1] != 1024 || p.maxThreadsDim[2] != 64)
        fail("maxThreadsDim {%d,%d,%d} != {1024,1024,64}", p.maxThreadsDim[0], p.maxThreadsDim[1],
             p.maxThreadsDim[2]);
    if (p.maxGridSize[0] != 2147483647 || p.maxGridSize[1] != 65535 || p.maxGridSize[2] != 65535)
        fail("maxGridSize {%d,%d,%d} != {2147483647,65535,65535}", p.maxGridSize[0],
             p.maxGridSize[1], p.maxGridSize[2]);
    if (p.sharedMemPerBlock != 48 * 1024) fail("sharedMemPerBlock %zu != 49152", p.sharedMemPerBlock);
    if (p.sharedMemPerBlockOptin < p.sharedMemPerBlock)
        fail("sharedMemPerBlockOptin %zu < sharedMemPerBlock %zu", p.sharedMemPerBlockOptin,
             p.sharedMemPerBlock);
    if (p.totalConstMem != 64 * 1024) fail("totalConstMem %zu != 65536", p.totalConstMem);
    if (p.regsPerBlock <= 0) fail("regsPerBlock %d", p.regsPerBlock);
    if (p.maxThreadsPerMultiProcessor < 1024)
        fail("maxThreadsPerMultiProcessor %d < 1024", p.maxThreadsPerMultiProcessor);
    if (p.unifiedAddressing != 1) fail("unifiedAddressing %d != 1", p.unifiedAddressing);

    ATTR(cudaDevAttrMaxThreadsPerBlock, p.maxThreadsPerBlock);
    ATTR(cudaDevAttrWarpSize, p.warpSize);
    ATTR(cudaDevAttrMultiProcessorCount, p.multiProcessorCount);
    ATTR(cudaDevAttrComputeCapabilityMajor, p.major);
    ATTR(cudaDevAttrComputeCapabilityMinor, p.minor);
    ATTR(cudaDevAttrMaxBlockDimX, p.maxThreadsDim[0]);
    ATTR(cudaDevAttrMaxBlockDimY, p.maxThreadsDim[1]);
    ATTR(cudaDevAttrMaxBlockDimZ, p.maxThreadsDim[2]);
    ATTR(cudaDevAttrMaxGridDimX, p.maxGridSize[0]);
    ATTR(cudaDevAttrMaxGridDimY, p.maxGridSize[1]);
    ATTR(cudaDevAttrMaxGridDimZ, p.maxGridSize[2]);
    ATTR(cudaDevAttrMaxSharedMemoryPerBlock, p.sharedMemPerBlock);
    ATTR(cudaDevAttrMaxSharedMemoryPerBlockOptin, p.sharedMemPerBlockOptin);
    ATTR(cudaDevAttrMaxSharedMemoryPerMultiprocessor, p.sharedMemPerMultiprocessor);
    ATTR(cudaDevAttrTotalConstantMemory, p.totalConstMem);
    ATTR(cudaDevAttrMaxRegistersPerBlock, p.regsPerBlock);
    ATTR(cudaDevAttrMaxRegistersPerMultiprocessor, p.regsPerMultiprocessor);
    ATTR(cudaDevAttrMaxThreadsPerMultiProcessor, p.maxThreadsPerMultiProcessor);
    ATTR(cudaDevAttrMaxBlocksPerMultiprocessor, p.maxBlocksPerMultiProcessor);
    ATTR(cudaDevAttrL2CacheSize, p.l2CacheSize);
    ATTR(cudaDevAttrGlobalMemoryBusWidth, p.memoryBusWidth);
    ATTR(cudaDevAttrPciBusId, p.pciBusID);
    ATTR(cudaDevAttrPciDeviceId, p.pciDeviceID);
    ATTR(cudaDevAttrPciDomainId, p.pciDomainID);
    ATTR(cudaDevAttrUnifiedAddressing, p.unifiedAddressing);
    ATTR(cudaDevAttrConcurrentKernels, p.concurrentKernels);
    ATTR(cudaDevAttrAsyncEngineCount, p.asyncEngineCount);
    ATTR(cudaDevAttrManagedMemory, p.managedMemory);
    ATTR(cudaDevAttrCooperativeLaunch, p.cooperativeLaunch);
    ATTR(cudaDevAttrIntegrated, p.integrated);
    ATTR(cudaDevAttrCanMapHostMemory, p.canMapHostMemory);

    // PCI bus id string: "dddd:bb:dd.f" (hex), consistent with the properties.
    char bus[64];
    memset(bus, 0, sizeof bus);
    CHECK(cudaDeviceGetPCIBusId(bus, sizeof bus, dev));
    unsigned domain = 0, busno = 0, devno = 0, fn = 0;
    if (bus[0] == 0) {
        fail("cudaDeviceGetPCIBusId returned an empty string");
    } else if (sscanf(bus, "%x:%x:%x.%x", &domain, &busno, &devno, &fn) != 4) {
        fail("cudaDeviceGetPCIBusId returned \"%s\", not domain:bus:device.function", bus);
    } else if ((int)domain != p.pciDomainID || (int)busno != p.pciBusID ||
               (int)devno != p.pciDeviceID) {
        fail("cudaDeviceGetPCIBusId \"%s\" disagrees with props %04x:%02x:%02x", bus,
             p.pciDomainID, p.pciBusID, p.pciDeviceID);
    } else {
        int back = -1;
        CHECK(cudaDeviceGetByPCIBusId(&back, bus));
        if (back != dev) fail("cudaDeviceGetByPCIBusId(\"%s\") = %d, expected %d", bus, back, dev);
    }
}

static void expect_invalid_device(const char *what, cudaError_t e) {
    if (e != cudaErrorInvalidDevice)
        fail("%s returned %s (%d), expected cudaErrorInvalidDevice", what, cudaGetErrorName(e),
             (int)e);
    cudaGetLastError();  // clear it
}

int main() {
    int count = 0;
    CHECK(cudaGetDeviceCount(&count));
    if (count < 1) {
        fail("cudaGetDeviceCount = %d", count);
        return finish();
    }

    int driver = 0, runtime = 0;
    CHECK(cudaDriverGetVersion(&driver));
    CHECK(cudaRuntimeGetVersion(&runtime));
    printf("%d device(s), driver version %d, runtime version %d\n", count, driver, runtime);
    if (driver < 13000) fail("cudaDriverGetVersion = %d, expected >= 13000", driver);
    if (runtime < 13000) fail("cudaRuntimeGetVersion = %d, expected >= 13000", runtime);
    if (runtime != CUDART_VERSION)
        fail("cudaRuntimeGetVersion = %d, but compiled against %d", runtime, CUDART_VERSION);

    CHECK(cudaSetDevice(0));
    int cur = -1;
    CHECK(cudaGetDevice(&cur));
    if (cur != 0) fail("cudaGetDevice = %d after cudaSetDevice(0)", cur);

    for (int d = 0; d < count; ++d) check_device(d);

    // Invalid ordinals.
    expect_invalid_device("cudaSetDevice(count)", cudaSetDevice(count));
    expect_invalid_device("cudaSetDevice(-1)", cudaSetDevice(-1));
    cudaDeviceProp p;
    expect_invalid_device("cudaGetDeviceProperties(count)", cudaGetDeviceProperties(&p, count));
    int v = 0;
    expect_invalid_device("cudaDeviceGetAttribute(count)",
                          cudaDeviceGetAttribute(&v, cudaDevAttrWarpSize, count));
    CHECK(cudaGetDevice(&cur));
    if (cur != 0) fail("cudaGetDevice = %d after failed cudaSetDevice calls", cur);

    // The device still works.
    int *d_out, got = 0;
    CHECK(cudaMalloc(&d_out, sizeof(int)));
    write_value<<<3, 32>>>(d_out, 1000);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(&got, d_out, sizeof got, cudaMemcpyDeviceToHost));
    if (got != 1096) fail("kernel after invalid-device errors: expected 1096 got %d", got);
    CHECK(cudaFree(d_out));

    CHECK(cudaDeviceSynchronize());
    CHECK(cudaDeviceReset());
    return finish();
}
