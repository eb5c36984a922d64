/* A device's properties through xpupool's HIP stand-in: hipGetDeviceProperties with the
 * header's own hipDeviceProp_t (HIP 5.2's 792-byte layout) agrees with the device's name
 * and memory as asked one by one, and describes a gfx90a device (wave64); every
 * attribute hipDeviceGetAttribute answers equals the property field it names, by the
 * header's own enumerators (so a wrong layout or number shows); a device that is not
 * there and an attribute with no answer are refused. Run by scripts/run-hip-tests.sh
 * through `xpupool run`. */
#define TEST_NAME "device"
#include "check.h"
#include <limits.h>
#include <string.h>

int main(void) {
    int count = 0;
    CHECK(hipGetDeviceCount(&count));
    hipDeviceProp_t p;
    memset(&p, 0xab, sizeof p);
    CHECK(hipGetDeviceProperties(&p, 0));
    EXPECT(hipGetDeviceProperties(&p, count) == hipErrorInvalidDevice, "device %d is not there", count);
    CHECK(hipGetDeviceProperties(&p, 0));
    char name[256] = {0};
    CHECK(hipDeviceGetName(name, sizeof name, 0));
    EXPECT(strcmp(p.name, name) == 0, "name %s, hipDeviceGetName %s", p.name, name);
    size_t total = 0;
    CHECK(hipDeviceTotalMem(&total, 0));
    EXPECT(p.totalGlobalMem == total, "totalGlobalMem %zu, hipDeviceTotalMem %zu", p.totalGlobalMem, total);
    EXPECT(strncmp(p.gcnArchName, "gfx90a", 6) == 0, "gcnArchName %s", p.gcnArchName);
    EXPECT(p.warpSize == 64 && p.major == 9 && p.gcnArch == 910, "warp %d, %d.%d, gcnArch %d", p.warpSize, p.major, p.minor, p.gcnArch);
    EXPECT(p.multiProcessorCount > 0 && p.maxThreadsPerBlock == 1024, "%d CUs, %d threads a block", p.multiProcessorCount, p.maxThreadsPerBlock);
    EXPECT(p.arch.hasDoubles && p.arch.hasWarpShuffle && p.arch.has3dGrid && !p.arch.hasDynamicParallelism, "feature bits");
    EXPECT(p.pageableMemoryAccessUsesHostPageTables == 0, "the last field written (0x%x)", p.pageableMemoryAccessUsesHostPageTables);

    struct { hipDeviceAttribute_t attribute; long long field; const char *what; } fields[] = {
        {hipDeviceAttributeEccEnabled, p.ECCEnabled, "ECCEnabled"},
        {hipDeviceAttributeCanMapHostMemory, p.canMapHostMemory, "canMapHostMemory"},
        {hipDeviceAttributeClockRate, p.clockRate, "clockRate"},
        {hipDeviceAttributeComputeMode, p.computeMode, "computeMode"},
        {hipDeviceAttributeConcurrentKernels, p.concurrentKernels, "concurrentKernels"},
        {hipDeviceAttributeConcurrentManagedAccess, p.concurrentManagedAccess, "concurrentManagedAccess"},
        {hipDeviceAttributeCooperativeLaunch, p.cooperativeLaunch, "cooperativeLaunch"},
        {hipDeviceAttributeIntegrated, p.integrated, "integrated"},
        {hipDeviceAttributeL2CacheSize, p.l2CacheSize, "l2CacheSize"},
        {hipDeviceAttributeComputeCapabilityMajor, p.major, "major"},
        {hipDeviceAttributeManagedMemory, p.managedMemory, "managedMemory"},
        {hipDeviceAttributeMaxBlockDimX, p.maxThreadsDim[0], "maxThreadsDim[0]"},
        {hipDeviceAttributeMaxBlockDimY, p.maxThreadsDim[1], "maxThreadsDim[1]"},
        {hipDeviceAttributeMaxBlockDimZ, p.maxThreadsDim[2], "maxThreadsDim[2]"},
        {hipDeviceAttributeMaxGridDimX, p.maxGridSize[0], "maxGridSize[0]"},
        {hipDeviceAttributeMaxGridDimY, p.maxGridSize[1], "maxGridSize[1]"},
        {hipDeviceAttributeMaxGridDimZ, p.maxGridSize[2], "maxGridSize[2]"},
        {hipDeviceAttributeMaxThreadsPerBlock, p.maxThreadsPerBlock, "maxThreadsPerBlock"},
        {hipDeviceAttributeMaxThreadsPerMultiProcessor, p.maxThreadsPerMultiProcessor, "maxThreadsPerMultiProcessor"},
        {hipDeviceAttributeMemoryBusWidth, p.memoryBusWidth, "memoryBusWidth"},
        {hipDeviceAttributeMemoryClockRate, p.memoryClockRate, "memoryClockRate"},
        {hipDeviceAttributeComputeCapabilityMinor, p.minor, "minor"},
        {hipDeviceAttributeMultiprocessorCount, p.multiProcessorCount, "multiProcessorCount"},
        {hipDeviceAttributePciBusId, p.pciBusID, "pciBusID"},
        {hipDeviceAttributePciDeviceId, p.pciDeviceID, "pciDeviceID"},
        {hipDeviceAttributePciDomainID, p.pciDomainID, "pciDomainID"},
        {hipDeviceAttributeMaxRegistersPerBlock, p.regsPerBlock, "regsPerBlock"},
        {hipDeviceAttributeMaxSharedMemoryPerBlock, (long long)p.sharedMemPerBlock, "sharedMemPerBlock"},
        {hipDeviceAttributeTextureAlignment, (long long)p.textureAlignment, "textureAlignment"},
        {hipDeviceAttributeTotalConstantMemory, (long long)p.totalConstMem, "totalConstMem"},
        {hipDeviceAttributeWarpSize, p.warpSize, "warpSize"},
        {hipDeviceAttributeMaxSharedMemoryPerMultiprocessor, (long long)p.maxSharedMemoryPerMultiProcessor, "maxSharedMemoryPerMultiProcessor"},
        {hipDeviceAttributeAsicRevision, p.asicRevision, "asicRevision"},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; ++i) {
        int value = INT_MIN;
        hipError_t e = hipDeviceGetAttribute(&value, fields[i].attribute, 0);
        EXPECT(e == hipSuccess, "hipDeviceGetAttribute for %s: %s", fields[i].what, hipGetErrorName(e));
        EXPECT(value == fields[i].field, "attribute %d is %d, %s is %lld", (int)fields[i].attribute, value, fields[i].what, fields[i].field);
    }
    int unified = 0;
    CHECK(hipDeviceGetAttribute(&unified, hipDeviceAttributeUnifiedAddressing, 0));
    EXPECT(unified == 1, "unified addressing %d", unified);
    int v = 0;
    EXPECT(hipDeviceGetAttribute(&v, hipDeviceAttributeWarpSize, count) == hipErrorInvalidDevice, "no device %d", count);
    EXPECT(hipDeviceGetAttribute(&v, (hipDeviceAttribute_t)123456, 0) == hipErrorInvalidValue, "an attribute that does not exist");
    EXPECT(hipDeviceGetAttribute(NULL, hipDeviceAttributeWarpSize, 0) == hipErrorInvalidValue, "no out-pointer");
    return finish();
}
