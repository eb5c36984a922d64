// Memory operations without kernels (plus one kernel that reads pitched memory):
// cudaMemset whole/at odd offsets/with a value above 255, cudaMemcpy H2D/D2H/D2D/H2H and
// cudaMemcpyDefault with offsets into the middle of allocations, cudaMallocPitch +
// cudaMemcpy2D (H2D, D2D, D2H with padded host pitches) + cudaMemset2D, cudaMemsetAsync /
// cudaMemcpyAsync on a stream, cudaMemGetInfo before/after a large allocation, and
// cudaPointerGetAttributes for device, interior-device, pinned and pageable pointers; no
// host memory can be made where device memory lives (a host buffer there would be taken
// for device memory).
#define TEST_NAME "memops"
#include "check.cuh"

#include <errno.h>
#include <sys/mman.h>

#include <vector>

typedef unsigned char u8;

// Compares host bytes with the expected bytes, reporting the first few differences.
static void compare_bytes(const char *what, const u8 *want, const u8 *got, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; ++i) {
        if (want[i] != got[i]) {
            if (bad < 5)
                fail("%s: byte %zu expected 0x%02x got 0x%02x", what, i, want[i], got[i]);
            ++bad;
        }
    }
    if (bad > 5) fail("%s: %d bytes differ in total", what, bad);
}

// Reads a pitched 2-D array of bytes: out[r] = sum of the row.
__global__ void row_sums(const u8 *p, size_t pitch, int width, int height, unsigned *out) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= height) return;
    const u8 *row = p + r * pitch;
    unsigned s = 0;
    for (int c = 0; c < width; ++c) s += row[c] * (unsigned)(c + 1);
    out[r] = s;
}

static void test_memset_memcpy() {
    const size_t size = 1 << 20;
    u8 *d;
    CHECK(cudaMalloc(&d, size));
    std::vector<u8> mirror(size), got(size);

    // Whole allocation.
    CHECK(cudaMemset(d, 0xAB, size));
    memset(mirror.data(), 0xAB, size);
    CHECK(cudaMemcpy(got.data(), d, size, cudaMemcpyDeviceToHost));
    compare_bytes("cudaMemset whole", mirror.data(), got.data(), size);

    // Odd offset and length.
    CHECK(cudaMemset(d + 1001, 0x5C, 3333));
    memset(mirror.data() + 1001, 0x5C, 3333);
    // Only the low byte of the value is used.
    CHECK(cudaMemset(d + 7, 0x1234, 10));
    memset(mirror.data() + 7, 0x34, 10);
    // Single byte at the very end.
    CHECK(cudaMemset(d + size - 1, 0x01, 1));
    mirror[size - 1] = 0x01;
    CHECK(cudaMemcpy(got.data(), d, size, cudaMemcpyDeviceToHost));
    compare_bytes("cudaMemset at offsets", mirror.data(), got.data(), size);

    // H2D into the middle.
    std::vector<u8> pattern(5000);
    for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = (u8)(i * 7 + 3);
    CHECK(cudaMemcpy(d + 777, pattern.data(), pattern.size(), cudaMemcpyHostToDevice));
    memcpy(mirror.data() + 777, pattern.data(), pattern.size());
    // D2H of a sub-range starting in the middle.
    std::vector<u8> part(6000);
    CHECK(cudaMemcpy(part.data(), d + 500, part.size(), cudaMemcpyDeviceToHost));
    compare_bytes("H2D at offset 777, D2H from offset 500", mirror.data() + 500, part.data(),
                  part.size());

    // D2D into another allocation at an offset.
    u8 *d2;
    const size_t size2 = 64 * 1024;
    CHECK(cudaMalloc(&d2, size2));
    CHECK(cudaMemset(d2, 0, size2));
    CHECK(cudaMemcpy(d2 + 13, d + 777, 5000, cudaMemcpyDeviceToDevice));
    std::vector<u8> got2(5004), want2(5004, 0);
    memcpy(want2.data() + 2, pattern.data(), 5000);
    CHECK(cudaMemcpy(got2.data(), d2 + 11, got2.size(), cudaMemcpyDeviceToHost));
    compare_bytes("D2D between allocations at offsets", want2.data(), got2.data(), got2.size());

    // D2D within one allocation (non-overlapping).
    CHECK(cudaMemcpy(d + 500001, d + 777, 5000, cudaMemcpyDeviceToDevice));
    memcpy(mirror.data() + 500001, pattern.data(), 5000);

    // cudaMemcpyDefault infers the direction from the pointers (unified addressing).
    std::vector<u8> pattern2(4096);
    for (size_t i = 0; i < pattern2.size(); ++i) pattern2[i] = (u8)(255 - i % 251);
    CHECK(cudaMemcpy(d + 600000, pattern2.data(), pattern2.size(), cudaMemcpyDefault));
    memcpy(mirror.data() + 600000, pattern2.data(), pattern2.size());
    CHECK(cudaMemcpy(d2 + 30000, d + 600000, 4096, cudaMemcpyDefault));
    std::vector<u8> back(4096);
    CHECK(cudaMemcpy(back.data(), d2 + 30000, back.size(), cudaMemcpyDefault));
    compare_bytes("cudaMemcpyDefault H2D, D2D, D2H", pattern2.data(), back.data(), back.size());

    CHECK(cudaMemcpy(got.data(), d, size, cudaMemcpyDeviceToHost));
    compare_bytes("whole allocation after all copies", mirror.data(), got.data(), size);

    // Host-to-host through the runtime.
    std::vector<u8> hh(1000, 0);
    CHECK(cudaMemcpy(hh.data(), pattern.data() + 100, hh.size(), cudaMemcpyHostToHost));
    compare_bytes("cudaMemcpyHostToHost", pattern.data() + 100, hh.data(), hh.size());

    CHECK(cudaFree(d));
    CHECK(cudaFree(d2));
}

static void test_2d() {
    const int width = 300, height = 50;
    u8 *p;
    size_t pitch = 0;
    CHECK(cudaMallocPitch((void **)&p, &pitch, width, height));
    if (pitch < (size_t)width) fail("cudaMallocPitch pitch %zu < width %d", pitch, width);

    // Host source with its own padding (pitch 320); padding bytes must not be copied.
    const size_t hpitch = 320;
    std::vector<u8> src(hpitch * height);
    for (int r = 0; r < height; ++r)
        for (size_t c = 0; c < hpitch; ++c)
            src[r * hpitch + c] = c < (size_t)width ? (u8)(r * 31 + c * 3) : (u8)0xEE;
    CHECK(cudaMemcpy2D(p, pitch, src.data(), hpitch, width, height, cudaMemcpyHostToDevice));

    // The device sees each row at p + r * pitch.
    unsigned *d_sums;
    CHECK(cudaMalloc(&d_sums, height * sizeof(unsigned)));
    row_sums<<<2, 32>>>(p, pitch, width, height, d_sums);
    CHECK_LAUNCH();
    std::vector<unsigned> sums(height), want_sums(height);
    CHECK(cudaMemcpy(sums.data(), d_sums, height * sizeof(unsigned), cudaMemcpyDeviceToHost));
    for (int r = 0; r < height; ++r) {
        unsigned s = 0;
        for (int c = 0; c < width; ++c) s += src[r * hpitch + c] * (unsigned)(c + 1);
        want_sums[r] = s;
    }
    compare_exact("row sums of pitched memory", want_sums.data(), sums.data(), height);

    // Impossible sizes are refused, as a device refuses them, not answered with success:
    // a row wider than any pitch, and width x height past the address space.
    u8 *none = nullptr;
    size_t none_pitch = 0;
    if (cudaMallocPitch((void **)&none, &none_pitch, (size_t)1 << 40, 2) == cudaSuccess)
        fail("cudaMallocPitch of a 1 TiB row succeeded");
    if (cudaMallocPitch((void **)&none, &none_pitch, 1 << 20, SIZE_MAX / 4096) == cudaSuccess)
        fail("cudaMallocPitch whose width x height overflows succeeded");
    (void)cudaGetLastError();
    // A 2-D memset of no columns and a huge height is no work; a tall one past the
    // allocation is refused before any row is written.
    CHECK(cudaMemset2D(p, pitch, 0x11, 0, (size_t)1 << 40));
    if (cudaMemset2D(p, pitch, 0x11, 1, (size_t)1 << 40) == cudaSuccess &&
        cudaDeviceSynchronize() == cudaSuccess)
        fail("cudaMemset2D past the allocation succeeded");
    (void)cudaGetLastError();

    // Memset a 100 x 10 sub-rectangle starting at row 5, column 20.
    CHECK(cudaMemset2D(p + 5 * pitch + 20, pitch, 0x42, 100, 10));
    std::vector<u8> want(src);
    for (int r = 5; r < 15; ++r) memset(want.data() + r * hpitch + 20, 0x42, 100);

    // D2D into a linear (pitch = width) buffer, then D2H with a wide host pitch (400).
    u8 *lin;
    CHECK(cudaMalloc(&lin, width * height));
    CHECK(cudaMemcpy2D(lin, width, p, pitch, width, height, cudaMemcpyDeviceToDevice));
    const size_t opitch = 400;
    std::vector<u8> out(opitch * height, 0x99);
    CHECK(cudaMemcpy2D(out.data(), opitch, lin, width, width, height, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int r = 0; r < height; ++r)
        for (size_t c = 0; c < opitch; ++c) {
            const u8 w = c < (size_t)width ? want[r * hpitch + c] : (u8)0x99;
            const u8 g = out[r * opitch + c];
            if (w != g && bad++ < 5)
                fail("cudaMemcpy2D round trip: row %d col %zu expected 0x%02x got 0x%02x", r, c, w, g);
        }

    // A 2-D copy of a sub-rectangle between two pitched places.
    std::vector<u8> sub(40 * 7);
    CHECK(cudaMemcpy2D(sub.data(), 40, p + 3 * pitch + 250, pitch, 40, 7, cudaMemcpyDeviceToHost));
    bad = 0;
    for (int r = 0; r < 7; ++r)
        for (int c = 0; c < 40; ++c)
            if (sub[r * 40 + c] != want[(r + 3) * hpitch + 250 + c] && bad++ < 5)
                fail("cudaMemcpy2D sub-rectangle: row %d col %d expected 0x%02x got 0x%02x", r, c,
                     want[(r + 3) * hpitch + 250 + c], sub[r * 40 + c]);

    CHECK(cudaFree(p));
    CHECK(cudaFree(lin));
    CHECK(cudaFree(d_sums));
}

static void test_async() {
    const size_t size = 256 * 1024;
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    u8 *d, *pinned;
    CHECK(cudaMalloc(&d, size));
    CHECK(cudaMallocHost(&pinned, size));
    std::vector<u8> want(size);
    for (size_t i = 0; i < size; ++i) pinned[i] = want[i] = (u8)(i * 13 + (i >> 9));
    CHECK(cudaMemcpyAsync(d, pinned, size, cudaMemcpyHostToDevice, s));
    CHECK(cudaMemsetAsync(d + 100, 0x77, 200, s));
    CHECK(cudaMemsetAsync(d + size - 4096, 0, 4096, s));
    CHECK(cudaMemcpyAsync(d + 50000, d + 1000, 3000, cudaMemcpyDeviceToDevice, s));
    memset(want.data() + 100, 0x77, 200);
    memset(want.data() + size - 4096, 0, 4096);
    memmove(want.data() + 50000, want.data() + 1000, 3000);
    CHECK(cudaMemcpyAsync(pinned, d, size, cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    compare_bytes("cudaMemsetAsync/cudaMemcpyAsync sequence", want.data(), pinned, size);
    CHECK(cudaFree(d));
    CHECK(cudaFreeHost(pinned));
    CHECK(cudaStreamDestroy(s));
}

static void test_mem_get_info() {
    size_t free0 = 0, total0 = 0;
    CHECK(cudaMemGetInfo(&free0, &total0));
    if (total0 == 0) fail("cudaMemGetInfo total is 0");
    if (free0 > total0) fail("cudaMemGetInfo free %zu > total %zu", free0, total0);

    const size_t big = 64u << 20;
    void *p;
    CHECK(cudaMalloc(&p, big));
    CHECK(cudaMemset(p, 0, big));  // make sure it is really backed
    size_t free1 = 0, total1 = 0;
    CHECK(cudaMemGetInfo(&free1, &total1));
    if (total1 != total0) fail("cudaMemGetInfo total changed: %zu -> %zu", total0, total1);
    if (free1 > total1) fail("cudaMemGetInfo free %zu > total %zu", free1, total1);
    if (!(free1 < free0 && free0 - free1 >= big / 2))
        fail("cudaMemGetInfo free did not drop by about %zu bytes after cudaMalloc: %zu -> %zu",
             big, free0, free1);
    CHECK(cudaFree(p));
    size_t free2 = 0, total2 = 0;
    CHECK(cudaMemGetInfo(&free2, &total2));
    if (free2 <= free1) printf("note: cudaMemGetInfo free did not grow after cudaFree (%zu -> %zu)\n", free1, free2);
}

static void test_pointer_attributes() {
    char *d;
    CHECK(cudaMalloc(&d, 4096));
    int dev = -1;
    CHECK(cudaGetDevice(&dev));

    cudaPointerAttributes a;
    CHECK(cudaPointerGetAttributes(&a, d));
    if (a.type != cudaMemoryTypeDevice)
        fail("device pointer: type %d, expected cudaMemoryTypeDevice (%d)", (int)a.type,
             (int)cudaMemoryTypeDevice);
    if (a.device != dev) fail("device pointer: device %d, expected %d", a.device, dev);
    if (a.devicePointer != d) fail("device pointer: devicePointer %p, expected %p", a.devicePointer, (void *)d);
    if (a.hostPointer != nullptr) fail("device pointer: hostPointer %p, expected NULL", a.hostPointer);

    CHECK(cudaPointerGetAttributes(&a, d + 100));
    if (a.type != cudaMemoryTypeDevice) fail("interior device pointer: type %d", (int)a.type);
    if (a.devicePointer != d + 100)
        fail("interior device pointer: devicePointer %p, expected %p", a.devicePointer, (void *)(d + 100));

    void *pinned;
    CHECK(cudaMallocHost(&pinned, 4096));
    CHECK(cudaPointerGetAttributes(&a, pinned));
    if (a.type != cudaMemoryTypeHost)
        fail("cudaMallocHost pointer: type %d, expected cudaMemoryTypeHost (%d)", (int)a.type,
             (int)cudaMemoryTypeHost);
    if (a.hostPointer != pinned)
        fail("cudaMallocHost pointer: hostPointer %p, expected %p", a.hostPointer, pinned);

    void *halloc;
    CHECK(cudaHostAlloc(&halloc, 8192, cudaHostAllocDefault));
    CHECK(cudaPointerGetAttributes(&a, (char *)halloc + 64));
    if (a.type != cudaMemoryTypeHost)
        fail("cudaHostAlloc interior pointer: type %d, expected cudaMemoryTypeHost", (int)a.type);
    // Pinned memory is usable as a cudaMemcpy source/target.
    memset(halloc, 0x3c, 8192);
    CHECK(cudaMemcpy(d, halloc, 4096, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(pinned, d, 4096, cudaMemcpyDeviceToHost));
    std::vector<u8> want(4096, 0x3c);
    compare_bytes("pinned -> device -> pinned", want.data(), (const u8 *)pinned, 4096);

    // Ordinary pageable memory: reported as unregistered (CUDA 11+), not an error.
    std::vector<char> pageable(256);
    CHECK(cudaPointerGetAttributes(&a, pageable.data()));
    if (a.type != cudaMemoryTypeUnregistered)
        fail("pageable pointer: type %d, expected cudaMemoryTypeUnregistered (%d)", (int)a.type,
             (int)cudaMemoryTypeUnregistered);

    CHECK(cudaFreeHost(pinned));
    CHECK(cudaFreeHost(halloc));
    CHECK(cudaFree(d));
}

// Device addresses are kept out of this process's own memory: mapping a page of host
// memory over any allocation's first or last byte fails. (Under xpupool this holds with
// every backend; natively, the driver's own reservations make it hold.)
static void test_address_space() {
    const size_t sizes[] = {100, 4096, 5000, 1 << 20, 3 << 20};
    void *ptrs[5];
    for (int k = 0; k < 5; ++k) CHECK(cudaMalloc(&ptrs[k], sizes[k]));
    const uintptr_t page = 4096;
    for (int k = 0; k < 5; ++k) {
        for (uintptr_t at : {(uintptr_t)ptrs[k], (uintptr_t)ptrs[k] + sizes[k] - 1}) {
            void *hint = (void *)(at / page * page);
            void *m = mmap(hint, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
            if (m != MAP_FAILED) {
                // (A kernel without MAP_FIXED_NOREPLACE may put it elsewhere.)
                if (m == hint)
                    fail("host memory mapped at device address %p (allocation %d of %zu bytes)", (void *)at, k, sizes[k]);
                munmap(m, page);
            }
        }
    }
    for (int k = 0; k < 5; ++k) CHECK(cudaFree(ptrs[k]));
}

int main() {
    test_address_space();
    test_memset_memcpy();
    test_2d();
    test_async();
    test_mem_get_info();
    test_pointer_attributes();
    return finish();
}
