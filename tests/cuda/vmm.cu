// Virtual memory management, as a growing allocator (PyTorch's expandable segments) uses
// it: reserve addresses, back them piece by piece with physical allocations mapped one
// after another, run kernels and copies across the pieces, release a handle while it is
// still mapped (the memory stays until unmapped), retain a handle from an address,
// read an allocation's properties and access, and see cudaMemGetInfo follow the
// physical memory. When the device is small (`xpupool run --memory-limit 64MiB`), it
// also allocates until the device is full and checks the refusal.
// The driver calls come through cudaGetDriverEntryPointByVersion, as PyTorch gets them.
#define TEST_NAME "vmm"
#include "check.cuh"

#include <cuda.h>

#define DRV(call)                                                                           \
    do {                                                                                    \
        CUresult drv_err_ = (call);                                                         \
        if (drv_err_ != CUDA_SUCCESS) {                                                     \
            fprintf(stderr, "%s:%d: %s returned %d\n", __FILE__, __LINE__, #call,           \
                    (int)drv_err_);                                                         \
            printf("FAIL %s: driver error %d at %s:%d\n", TEST_NAME, (int)drv_err_,         \
                   __FILE__, __LINE__);                                                     \
            exit(2);                                                                        \
        }                                                                                   \
    } while (0)

static CUresult (*memGetAllocationGranularity)(size_t *, const CUmemAllocationProp *,
                                               CUmemAllocationGranularity_flags);
static CUresult (*memAddressReserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr,
                                     unsigned long long);
static CUresult (*memAddressFree)(CUdeviceptr, size_t);
static CUresult (*memCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                             unsigned long long);
static CUresult (*memRelease)(CUmemGenericAllocationHandle);
static CUresult (*memMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                          unsigned long long);
static CUresult (*memUnmap)(CUdeviceptr, size_t);
static CUresult (*memSetAccess)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
static CUresult (*memGetAccess)(unsigned long long *, const CUmemLocation *, CUdeviceptr);
static CUresult (*memRetainAllocationHandle)(CUmemGenericAllocationHandle *, void *);
static CUresult (*memGetAllocationPropertiesFromHandle)(CUmemAllocationProp *,
                                                        CUmemGenericAllocationHandle);

template <typename F> static void entry(F *out, const char *name) {
    cudaDriverEntryPointQueryResult found;
    CHECK(cudaGetDriverEntryPointByVersion(name, (void **)out, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || !*out) {
        printf("FAIL %s: no driver entry point %s\n", TEST_NAME, name);
        exit(2);
    }
}

__global__ void fill(int *out, size_t n, int base) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = base + (int)(i % 100003);
}

__global__ void add_one(int *data, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        data[i] += 1;
}

static CUmemAllocationProp device_prop() {
    CUmemAllocationProp prop = {};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    return prop;
}

static void map_rw(CUdeviceptr at, size_t size, CUmemGenericAllocationHandle h) {
    DRV(memMap(at, size, 0, h, 0));
    CUmemAccessDesc access = {};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = 0;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    DRV(memSetAccess(at, size, &access, 1));
}

static void check_ints(const int *h, size_t n, int base, int plus, const char *what) {
    for (size_t i = 0; i < n; ++i) {
        const int want = base + (int)(i % 100003) + plus;
        if (h[i] != want) {
            fail("%s: [%zu] expected %d got %d", what, i, want, h[i]);
            return;
        }
    }
}

int main() {
    CHECK(cudaFree(0));
    CUresult (*deviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
    entry(&deviceGetAttribute, "cuDeviceGetAttribute");
    int vmm = 0;
    DRV(deviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0));
    if (vmm != 1) fail("CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is %d", vmm);
    entry(&memGetAllocationGranularity, "cuMemGetAllocationGranularity");
    entry(&memAddressReserve, "cuMemAddressReserve");
    entry(&memAddressFree, "cuMemAddressFree");
    entry(&memCreate, "cuMemCreate");
    entry(&memRelease, "cuMemRelease");
    entry(&memMap, "cuMemMap");
    entry(&memUnmap, "cuMemUnmap");
    entry(&memSetAccess, "cuMemSetAccess");
    entry(&memGetAccess, "cuMemGetAccess");
    entry(&memRetainAllocationHandle, "cuMemRetainAllocationHandle");
    entry(&memGetAllocationPropertiesFromHandle, "cuMemGetAllocationPropertiesFromHandle");

    const CUmemAllocationProp prop = device_prop();
    size_t g = 0;
    DRV(memGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    if (g == 0 || (g & (g - 1)) != 0) fail("granularity %zu", g);

    size_t free0, total;
    CHECK(cudaMemGetInfo(&free0, &total));

    // Reserve eight granules; back the first, then grow by two more.
    const size_t reserved = 8 * g;
    CUdeviceptr base = 0;
    DRV(memAddressReserve(&base, reserved, 0, 0, 0));
    if (base == 0 || base % g != 0) fail("reservation at %llx", (unsigned long long)base);
    CUmemGenericAllocationHandle a, b;
    DRV(memCreate(&a, g, &prop, 0));
    map_rw(base, g, a);
    int *p = (int *)base;
    const size_t n1 = g / sizeof(int);
    fill<<<64, 256>>>(p, n1, 7);
    CHECK_LAUNCH();
    DRV(memCreate(&b, 2 * g, &prop, 0));
    map_rw(base + g, 2 * g, b);
    size_t free1;
    CHECK(cudaMemGetInfo(&free1, &total));
    if (free0 - free1 < 3 * g) fail("cudaMemGetInfo moved by %zu after creating %zu", free0 - free1, 3 * g);

    // One kernel and one copy over all three granules, across the two mappings.
    const size_t n = 3 * g / sizeof(int);
    fill<<<64, 256>>>(p, n, 11);
    add_one<<<64, 256>>>(p, n);
    CHECK_LAUNCH();
    int *h = (int *)malloc(3 * g);
    CHECK(cudaMemcpy(h, p, 3 * g, cudaMemcpyDeviceToHost));
    check_ints(h, n, 11, 1, "after the kernels");
    // A copy from the host and a memset, each across the boundary.
    for (size_t i = 0; i < n; ++i) h[i] = 5 + (int)(i % 100003);
    CHECK(cudaMemcpy(p, h, 3 * g, cudaMemcpyHostToDevice));
    CHECK(cudaMemset((char *)p + g - 4096, 0, 8192));
    memset(h, 0xff, 3 * g);
    CHECK(cudaMemcpy(h, p, 3 * g, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) {
        const size_t byte = i * sizeof(int);
        const int want = (byte >= g - 4096 && byte < g + 4096) ? 0 : 5 + (int)(i % 100003);
        if (h[i] != want) {
            fail("after the memset: [%zu] expected %d got %d", i, want, h[i]);
            break;
        }
    }
    // A device-to-device copy from one mapping into the other, overlapping the seam.
    CHECK(cudaMemcpy((char *)p + g + g / 2, (char *)p + g / 4, g, cudaMemcpyDeviceToDevice));
    int *back = (int *)malloc(g);
    CHECK(cudaMemcpy(back, (char *)p + g + g / 2, g, cudaMemcpyDeviceToHost));
    if (memcmp(back, (char *)h + g / 4, g) != 0) fail("device-to-device copy across mappings");
    free(back);

    // The handle behind an address, its properties and the access of the range.
    CUmemGenericAllocationHandle again = 0;
    DRV(memRetainAllocationHandle(&again, (void *)(base + g + 12345)));
    if (again != b) fail("retained handle %llx, mapped %llx", (unsigned long long)again, (unsigned long long)b);
    DRV(memRelease(again));
    CUmemAllocationProp got = {};
    DRV(memGetAllocationPropertiesFromHandle(&got, b));
    if (got.type != CU_MEM_ALLOCATION_TYPE_PINNED || got.location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        got.location.id != 0)
        fail("properties of the handle: type %d location %d/%d", got.type, got.location.type, got.location.id);
    CUmemLocation here = {};
    here.type = CU_MEM_LOCATION_TYPE_DEVICE;
    here.id = 0;
    unsigned long long flags = 0;
    DRV(memGetAccess(&flags, &here, base + 2 * g));
    if (flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE) fail("access flags %llu", flags);

    // Released while mapped, the memory stays until it is unmapped.
    CHECK(cudaMemcpy(h, p, 3 * g, cudaMemcpyDeviceToHost));
    DRV(memRelease(b));
    add_one<<<64, 256>>>(p, n);
    CHECK_LAUNCH();
    int *after = (int *)malloc(2 * g);
    CHECK(cudaMemcpy(after, (char *)p + g, 2 * g, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < 2 * g / sizeof(int); ++i) {
        const int want = h[g / sizeof(int) + i] + 1;
        if (after[i] != want) {
            fail("after its handle was released: [%zu] expected %d got %d", i, want, after[i]);
            break;
        }
    }
    free(after);
    DRV(memUnmap(base, 3 * g));
    DRV(memRelease(a));
    DRV(memAddressFree(base, reserved));
    size_t free2;
    CHECK(cudaMemGetInfo(&free2, &total));
    if (free2 + g < free0) fail("cudaMemGetInfo after everything went: %zu, at first %zu", free2, free0);

    // On a small device: physical allocations until it is full, then a clear refusal.
    if (total <= (256u << 20)) {
        CUmemGenericAllocationHandle held[512];
        int count = 0;
        CUresult r = CUDA_SUCCESS;
        while (count < 512 && (r = memCreate(&held[count], g, &prop, 0)) == CUDA_SUCCESS) ++count;
        if (r != CUDA_ERROR_OUT_OF_MEMORY) fail("filling the device ended with %d, not out of memory", (int)r);
        if ((size_t)count * g > free2) fail("%d granules created with %zu free", count, free2);
        if ((size_t)(count + 2) * g < free2) fail("only %d granules created with %zu free", count, free2);
        for (int i = 0; i < count; ++i) DRV(memRelease(held[i]));
        size_t free3;
        CHECK(cudaMemGetInfo(&free3, &total));
        if (free3 != free2) fail("after releasing them: %zu free, before %zu", free3, free2);
        printf("filled the device with %d granules of %zu bytes\n", count, g);
    }
    free(h);
    return finish();
}
