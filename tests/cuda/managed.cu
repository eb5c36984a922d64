// Managed memory (cudaMallocManaged) used as ordinary programs use it: initialised on
// the host, computed on the device, read on the host, over several rounds; copies and
// memsets into and out of it; pointer attributes; a large array read sequentially and
// sparsely; memory attached to one stream; prefetches and advice read back; a captured
// graph over it; host threads reading it at once; many allocations made and freed; an
// allocation larger than the device refused; the program's own SIGSEGV handler still
// gets the faults that are not managed memory's, again after it leaves by siglongjmp.
//   managed          the checks above
//   managed cost     what it costs, against explicit copies of the same bytes (prints
//                    figures; no checks)
#define TEST_NAME "managed"
#include "check.cuh"

#include <chrono>
#include <csetjmp>
#include <csignal>
#include <sys/mman.h>
#include <thread>
#include <vector>

__global__ void add(int *data, int n, int v) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] += v;
}

__global__ void twice(int *data, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] *= 2;
}

// Every `stride`-th element of `data` plus one.
__global__ void bump_strided(float *data, int n, int stride) {
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * stride;
    if (i < n) data[i] += 1.0f;
}

__global__ void triple_first(int *data) { data[1] = data[0] * 3; }

__global__ void touch(int *data) { data[0] += 1; }

static int blocks(int n) { return (n + 255) / 256; }

static void rounds() {
    const int n = 1 << 16;
    int *data = nullptr;
    CHECK(cudaMallocManaged(&data, n * sizeof(int)));
    for (int i = 0; i < n; ++i) data[i] = i;
    std::vector<int> expect(n);
    for (int i = 0; i < n; ++i) expect[i] = i;
    for (int round = 0; round < 5; ++round) {
        add<<<blocks(n), 256>>>(data, n, round + 1);
        CHECK_LAUNCH();
        for (int i = 0; i < n; ++i) expect[i] += round + 1;
        int wrong = 0;
        for (int i = 0; i < n; ++i)
            if (data[i] != expect[i] && wrong++ < 3)
                fail("round %d after add: data[%d] = %d, expected %d", round, i, data[i], expect[i]);
        // The host changes some of it; the device must see exactly that.
        for (int i = round; i < n; i += 7) {
            data[i] -= 5;
            expect[i] -= 5;
        }
        twice<<<blocks(n), 256>>>(data, n);
        CHECK_LAUNCH();
        for (int i = 0; i < n; ++i) expect[i] *= 2;
        wrong = 0;
        for (int i = 0; i < n; ++i)
            if (data[i] != expect[i] && wrong++ < 3)
                fail("round %d after twice: data[%d] = %d, expected %d", round, i, data[i], expect[i]);
        // Reset the values so that they stay small.
        for (int i = 0; i < n; ++i) data[i] = expect[i] = i % 1000;
    }
    // Pointer attributes say managed, with the same address on both sides.
    cudaPointerAttributes attr;
    CHECK(cudaPointerGetAttributes(&attr, data + 10));
    expect_true(attr.type == cudaMemoryTypeManaged, "pointer attributes: type is managed");
    expect_true(attr.devicePointer == data + 10, "pointer attributes: device pointer");
    expect_true(attr.hostPointer == data + 10, "pointer attributes: host pointer");
    CHECK(cudaFree(data));
}

static void copies() {
    const int n = 50000;
    int *m = nullptr, *dev = nullptr;
    CHECK(cudaMallocManaged(&m, n * sizeof(int)));
    CHECK(cudaMalloc(&dev, n * sizeof(int)));
    std::vector<int> host(n);
    // Host writes, then a copy out of managed memory on the device sees them.
    for (int i = 0; i < n; ++i) m[i] = 3 * i;
    CHECK(cudaMemcpy(dev, m, n * sizeof(int), cudaMemcpyDefault));
    CHECK(cudaMemcpy(host.data(), dev, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i)
        if (host[i] != 3 * i) { fail("copy from managed: [%d] = %d", i, host[i]); break; }
    // The kernel's writes, copied out by the runtime as host memory.
    add<<<blocks(n), 256>>>(m, n, 1);
    CHECK_LAUNCH();
    CHECK(cudaMemcpy(host.data(), m, n * sizeof(int), cudaMemcpyDefault));
    for (int i = 0; i < n; ++i)
        if (host[i] != 3 * i + 1) { fail("copy of kernel results: [%d] = %d", i, host[i]); break; }
    // A copy into managed memory (after the host wrote part of it), then the host reads.
    for (int i = 0; i < n; ++i) host[i] = -i;
    m[0] = 12345;
    CHECK(cudaMemcpy(m + 100, host.data() + 100, (n - 100) * sizeof(int), cudaMemcpyHostToDevice));
    for (int i = 0; i < n; ++i) {
        const int want = i == 0 ? 12345 : i < 100 ? 3 * i + 1 : -i;
        if (m[i] != want) { fail("copy into managed: [%d] = %d, expected %d", i, m[i], want); break; }
    }
    // Device to managed, and a memset, seen by the host.
    CHECK(cudaMemcpy(m, dev, n * sizeof(int), cudaMemcpyDeviceToDevice));
    for (int i = 0; i < n; ++i)
        if (m[i] != 3 * i) { fail("device to managed: [%d] = %d", i, m[i]); break; }
    CHECK(cudaMemset(m + 10, 0, 20 * sizeof(int)));
    for (int i = 0; i < 40; ++i) {
        const int want = i >= 10 && i < 30 ? 0 : 3 * i;
        if (m[i] != want) { fail("memset of managed: [%d] = %d, expected %d", i, m[i], want); break; }
    }
    CHECK(cudaFree(dev));
    CHECK(cudaFree(m));
}

static void large() {
    // 8 MiB: host writes scattered over it, the device changes every 1024th element,
    // then the host reads it all in order (fetched in growing windows) and a few
    // elements far apart.
    const int n = 2 << 20;
    const int stride = 1024;
    float *p = nullptr;
    CHECK(cudaMallocManaged(&p, n * sizeof(float)));
    for (int i = 0; i < n; i += 4096) p[i] = (float)(i / 4096);
    bump_strided<<<blocks(n / stride), 256>>>(p, n, stride);
    CHECK_LAUNCH();
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += p[i];
    double want = 0;
    for (int i = 0; i < n; i += 4096) want += (double)(i / 4096);
    want += n / stride;
    if (sum != want) fail("large: sum %.1f, expected %.1f", sum, want);
    bump_strided<<<blocks(n / stride), 256>>>(p, n, stride);
    CHECK_LAUNCH();
    for (int i : {n - 1024, 7 * 1024 * 97, 1024, 0}) {
        const float expect = (i % 4096 == 0 ? (float)(i / 4096) : 0.0f) + 2.0f;
        if (p[i] != expect) fail("large: p[%d] = %f, expected %f", i, p[i], expect);
    }
    CHECK(cudaFree(p));
}

static void attached() {
    const int n = 4096;
    int *mine = nullptr, *shared = nullptr;
    cudaStream_t s, t;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK(cudaStreamCreateWithFlags(&t, cudaStreamNonBlocking));
    CHECK(cudaMallocManaged(&mine, n * sizeof(int), cudaMemAttachHost));
    CHECK(cudaMallocManaged(&shared, n * sizeof(int)));
    for (int i = 0; i < n; ++i) mine[i] = i, shared[i] = 1;
    CHECK(cudaStreamAttachMemAsync(s, mine, 0, cudaMemAttachSingle));
    CHECK(cudaStreamSynchronize(s));
    add<<<blocks(n), 256, 0, s>>>(mine, n, 10);
    add<<<blocks(n), 256, 0, t>>>(shared, n, 1);
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaStreamSynchronize(t));
    for (int i = 0; i < n; ++i) {
        if (mine[i] != i + 10) { fail("attached to a stream: [%d] = %d", i, mine[i]); break; }
        if (shared[i] != 2) { fail("global beside it: [%d] = %d", i, shared[i]); break; }
    }
    // Host writes to memory attached to s while t works; then s sees them.
    for (int i = 0; i < n; ++i) mine[i] = 2 * i;
    add<<<blocks(n), 256, 0, t>>>(shared, n, 1);
    twice<<<blocks(n), 256, 0, s>>>(mine, n);
    CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < n; ++i) {
        if (mine[i] != 4 * i) { fail("attached, second round: [%d] = %d", i, mine[i]); break; }
        if (shared[i] != 3) { fail("global, second round: [%d] = %d", i, shared[i]); break; }
    }
    // Memory attached to a stream that is destroyed goes back to what its
    // allocation gave it: `shared` is global again, so t's kernels see it.
    cudaStream_t u;
    CHECK(cudaStreamCreateWithFlags(&u, cudaStreamNonBlocking));
    CHECK(cudaStreamAttachMemAsync(u, shared, 0, cudaMemAttachSingle));
    CHECK(cudaStreamSynchronize(u));
    CHECK(cudaStreamDestroy(u));
    for (int i = 0; i < n; ++i) shared[i] = i;
    add<<<blocks(n), 256, 0, t>>>(shared, n, 5);
    CHECK(cudaStreamSynchronize(t));
    for (int i = 0; i < n; ++i)
        if (shared[i] != i + 5) { fail("attached to a destroyed stream: [%d] = %d", i, shared[i]); break; }
    // Attaching to the legacy stream alone is refused.
    expect_true(cudaStreamAttachMemAsync(0, mine, 0, cudaMemAttachSingle) == cudaErrorInvalidValue,
                "attach single to the NULL stream refused");
    cudaGetLastError();
    CHECK(cudaFree(mine));
    CHECK(cudaFree(shared));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaStreamDestroy(t));
}

static void hints() {
    const int n = 1 << 14;
    int *p = nullptr;
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    CHECK(cudaMallocManaged(&p, n * sizeof(int)));
    for (int i = 0; i < n; ++i) p[i] = i;
    cudaMemLocation dev0 = {};
    dev0.type = cudaMemLocationTypeDevice;
    dev0.id = 0;
    cudaMemLocation host = {};
    host.type = cudaMemLocationTypeHost;
    CHECK(cudaMemAdvise(p, n * sizeof(int), cudaMemAdviseSetReadMostly, dev0));
    CHECK(cudaMemAdvise(p, n * sizeof(int), cudaMemAdviseSetPreferredLocation, dev0));
    CHECK(cudaMemAdvise(p, n / 2 * sizeof(int), cudaMemAdviseSetAccessedBy, dev0));
    CHECK(cudaMemPrefetchAsync(p, n * sizeof(int), dev0, 0, s));
    add<<<blocks(n), 256, 0, s>>>(p, n, 5);
    CHECK(cudaMemPrefetchAsync(p, n * sizeof(int), host, 0, s));
    CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < n; ++i)
        if (p[i] != i + 5) { fail("after prefetches: [%d] = %d", i, p[i]); break; }
    int v = -7;
    CHECK(cudaMemRangeGetAttribute(&v, 4, cudaMemRangeAttributeReadMostly, p, n * sizeof(int)));
    expect_true(v == 1, "read-mostly read back");
    CHECK(cudaMemRangeGetAttribute(&v, 4, cudaMemRangeAttributePreferredLocation, p, n * sizeof(int)));
    expect_true(v == 0, "preferred location read back");
    CHECK(cudaMemRangeGetAttribute(&v, 4, cudaMemRangeAttributeLastPrefetchLocation, p, n * sizeof(int)));
    expect_true(v == cudaCpuDeviceId, "last prefetch location is the CPU");
    int by[2] = {-7, -7};
    CHECK(cudaMemRangeGetAttribute(by, sizeof by, cudaMemRangeAttributeAccessedBy, p, 64));
    expect_true(by[0] == 0 && by[1] == cudaInvalidDeviceId, "accessed-by on the first half");
    CHECK(cudaMemRangeGetAttribute(by, sizeof by, cudaMemRangeAttributeAccessedBy, p, n * sizeof(int)));
    expect_true(by[0] == cudaInvalidDeviceId, "accessed-by is not on the whole range");
    CHECK(cudaMemAdvise(p, n * sizeof(int), cudaMemAdviseUnsetReadMostly, dev0));
    CHECK(cudaMemRangeGetAttribute(&v, 4, cudaMemRangeAttributeReadMostly, p, n * sizeof(int)));
    expect_true(v == 0, "read-mostly unset");
    // Memory that is not managed is refused.
    int *plain = nullptr;
    CHECK(cudaMalloc(&plain, 64));
    expect_true(cudaMemPrefetchAsync(plain, 64, dev0, 0, s) == cudaErrorInvalidValue,
                "prefetch of unmanaged memory refused");
    cudaGetLastError();
    CHECK(cudaFree(plain));
    CHECK(cudaFree(p));
    CHECK(cudaStreamDestroy(s));
}

static void graph() {
    const int n = 1 << 12;
    int *p = nullptr;
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    CHECK(cudaMallocManaged(&p, n * sizeof(int)));
    cudaGraph_t g;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    add<<<blocks(n), 256, 0, s>>>(p, n, 2);
    twice<<<blocks(n), 256, 0, s>>>(p, n);
    CHECK(cudaStreamEndCapture(s, &g));
    CHECK(cudaGraphInstantiate(&exec, g, 0));
    for (int round = 0; round < 4; ++round) {
        for (int i = 0; i < n; ++i) p[i] = i + round;
        CHECK(cudaGraphLaunch(exec, s));
        CHECK(cudaStreamSynchronize(s));
        for (int i = 0; i < n; ++i)
            if (p[i] != 2 * (i + round + 2)) { fail("graph round %d: [%d] = %d", round, i, p[i]); break; }
    }
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(g));
    // A host node between two kernels changes what the second one reads.
    struct Scale { int *p; int n; } scale{p, n};
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    add<<<blocks(n), 256, 0, s>>>(p, n, 1);
    CHECK(cudaLaunchHostFunc(s, [](void *arg) {
        Scale *k = static_cast<Scale *>(arg);
        for (int i = 0; i < k->n; ++i) k->p[i] *= 10;
    }, &scale));
    add<<<blocks(n), 256, 0, s>>>(p, n, 5);
    CHECK(cudaStreamEndCapture(s, &g));
    CHECK(cudaGraphInstantiate(&exec, g, 0));
    for (int i = 0; i < n; ++i) p[i] = i;
    CHECK(cudaGraphLaunch(exec, s));
    CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < n; ++i)
        if (p[i] != (i + 1) * 10 + 5) { fail("graph with a host node: [%d] = %d", i, p[i]); break; }
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaFree(p));
    CHECK(cudaStreamDestroy(s));
}

static void threads() {
    const int n = 1 << 18;
    int *p = nullptr;
    CHECK(cudaMallocManaged(&p, n * sizeof(int)));
    for (int i = 0; i < n; ++i) p[i] = i;
    add<<<blocks(n), 256>>>(p, n, 3);
    CHECK_LAUNCH();
    const int parts = 4;
    std::vector<long long> sums(parts);
    std::vector<std::thread> workers;
    for (int t = 0; t < parts; ++t)
        workers.emplace_back([&, t] {
            long long sum = 0;
            for (int i = t; i < n; i += parts) sum += p[i];
            sums[t] = sum;
        });
    for (auto &w : workers) w.join();
    long long total = 0, want = 0;
    for (long long s : sums) total += s;
    for (int i = 0; i < n; ++i) want += i + 3;
    if (total != want) fail("threads: sum %lld, expected %lld", total, want);
    CHECK(cudaFree(p));
}

static void churn() {
    for (int k = 0; k < 40; ++k) {
        const size_t bytes = 100 + (size_t)k * 5000;
        char *p = nullptr;
        CHECK(cudaMallocManaged(&p, bytes));
        for (size_t i = 0; i < bytes; ++i)
            if (p[i] != 0) { fail("churn %d: fresh managed memory not zero at %zu", k, i); break; }
        memset(p, k, bytes);
        touch<<<1, 1>>>((int *)p);
        CHECK_LAUNCH();
        if (p[bytes - 1] != (char)k) fail("churn %d: last byte %d", k, p[bytes - 1]);
        CHECK(cudaFree(p));
    }
    size_t free_bytes = 0, total = 0;
    CHECK(cudaMemGetInfo(&free_bytes, &total));
    void *huge = nullptr;
    const cudaError_t e = cudaMallocManaged(&huge, total + (1 << 20));
    // xpupool backs managed memory with the tenant's device memory, so it refuses; a
    // driver that oversubscribes (NVIDIA's on Linux) accepts it.
    if (!under_xpupool()) {
        printf("note: a managed allocation larger than the device natively: %s\n", cudaGetErrorName(e));
        if (e == cudaSuccess) CHECK(cudaFree(huge));
    } else {
        expect_true(e == cudaErrorMemoryAllocation, "an allocation larger than the device refused");
    }
    cudaGetLastError();
}

// The one allocation whose figures the test script checks (XPUPOOL_LOG=debug): the
// host writes one word, a kernel reads it and writes the next, the host reads that:
// one page written back (4096 bytes), one fetch of the first window (65536 bytes),
// two faults (the write to a shared page, the read of a page on the device).
static void figures() {
    const size_t bytes = (3 << 20) + 100;
    int *p = nullptr;
    CHECK(cudaMallocManaged(&p, bytes));
    p[0] = 7;
    triple_first<<<1, 1>>>(p);
    CHECK_LAUNCH();
    if (p[1] != 21) fail("figures: p[1] = %d, expected 21", p[1]);
    CHECK(cudaFree(p));
}

static double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

static int cost() {
    const size_t bytes = 64 << 20;
    const size_t n = bytes / sizeof(int);
    int *m = nullptr, *dev = nullptr;
    std::vector<int> host(n, 1);
    CHECK(cudaMallocManaged(&m, bytes));
    CHECK(cudaMalloc(&dev, bytes));
    // A first round warms both paths up (the pages of the memory file and of the
    // server's allocations are made at first touch); the next two are reported.
    for (int rep = 0; rep < 3; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        CHECK(cudaMemcpy(dev, host.data(), bytes, cudaMemcpyHostToDevice));
        touch<<<1, 1>>>(dev);
        CHECK(cudaDeviceSynchronize());
        const double h2d = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        for (size_t i = 0; i < n; i += 1024) m[i] = (int)i;  // one write per 4 KiB page
        const double first_writes = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        touch<<<1, 1>>>(m);
        CHECK(cudaDeviceSynchronize());
        const double write_back = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        CHECK(cudaMemcpy(host.data(), dev, bytes, cudaMemcpyDeviceToHost));
        const double d2h = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        long long sum = 0;
        for (size_t i = 0; i < n; i += 1024) sum += m[i];
        const double reads = ms_since(t0);
        // Plain launches and launches with managed memory live (nothing dirty),
        // alternated, the best of two each.
        double plain = 1e9, with_managed = 1e9;
        for (int k = 0; k < 4; ++k) {
            int *target = k % 2 ? m : dev;
            t0 = std::chrono::steady_clock::now();
            for (int j = 0; j < 200; ++j) touch<<<1, 1>>>(target);
            CHECK(cudaDeviceSynchronize());
            double &best = k % 2 ? with_managed : plain;
            best = std::min(best, ms_since(t0) / 200);
        }
        // One read after a launch: a fault and one fetch of the first window,
        // against an idle synchronisation (one round trip).
        double one_read = 1e9, round_trip = 1e9;
        for (int k = 0; k < 20; ++k) {
            touch<<<1, 1>>>(m);
            CHECK(cudaDeviceSynchronize());
            t0 = std::chrono::steady_clock::now();
            sum += m[k * 4096];
            one_read = std::min(one_read, ms_since(t0));
            t0 = std::chrono::steady_clock::now();
            CHECK(cudaDeviceSynchronize());
            round_trip = std::min(round_trip, ms_since(t0));
        }
        if (rep == 0) continue;
        printf("run %d, 64 MiB:\n", rep);
        printf("  host writes every page (first-touch faults): %8.2f ms (%.2f us a page)\n",
               first_writes, first_writes * 1000 / (n / 1024));
        printf("  launch writing back 64 MiB dirty + sync:     %8.2f ms   cudaMemcpy H2D + launch + sync: %8.2f ms  (%.2fx)\n",
               write_back, h2d, write_back / h2d);
        printf("  host reads every page after the device:      %8.2f ms   cudaMemcpy D2H:                 %8.2f ms  (%.2fx)\n",
               reads, d2h, reads / d2h);
        printf("  one host read after a launch (a 64 KiB fetch): %.1f us   idle cudaDeviceSynchronize: %.1f us\n",
               one_read * 1000, round_trip * 1000);
        printf("  launch with managed memory live, nothing dirty: %.3f ms   plain launch: %.3f ms  (%.2fx)  [sum %lld]\n",
               with_managed, plain, with_managed / plain, sum);
    }
    CHECK(cudaFree(dev));
    CHECK(cudaFree(m));
    return 0;
}

static sigjmp_buf probe_env;
static volatile sig_atomic_t probe_faults = 0;

static void probe_handler(int, siginfo_t *, void *) {
    probe_faults = probe_faults + 1;
    siglongjmp(probe_env, 1);
}

// Whether reading `at` faults, as a program that probes memory finds out.
static bool faults(const volatile int *at) {
    if (sigsetjmp(probe_env, 1) != 0) return true;
    (void)*at;
    return false;
}

// The same, from `depth` calls further down the stack (each with a frame of its own).
static __attribute__((noinline)) bool faults_deeper(const volatile int *at, int depth) {
    volatile char frame[256];
    frame[0] = (char)depth;
    if (depth == 0) return faults(at);
    const bool r = faults_deeper(at, depth - 1);
    return r && frame[0] == (char)depth;
}

// The program's handler was there before managed memory put its own in front:
// faults that are not managed memory's reach it, every time, on a page mapped
// without access and on an unmapped address alike.
static void foreign_faults() {
    struct sigaction mine = {}, before = {};
    mine.sa_sigaction = probe_handler;
    mine.sa_flags = SA_SIGINFO;
    sigemptyset(&mine.sa_mask);
    CHECK(sigaction(SIGSEGV, &mine, &before) == 0 ? cudaSuccess : cudaErrorUnknown);
    int *p = nullptr;
    CHECK(cudaMallocManaged(&p, 1 << 16));
    void *guard = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    expect_true(guard != MAP_FAILED, "a guard page is mapped");
    const int *unmapped = reinterpret_cast<const int *>(16);
    int seen = 0;
    for (int round = 0; round < 3; ++round) {
        // Each round from deeper down: a fault after a siglongjmp is the
        // program's, wherever on the stack it happens.
        seen += faults_deeper(static_cast<const int *>(guard), 8 * round);
        seen += faults_deeper(unmapped, 8 * round);
        // Managed memory still works between them.
        p[round] = round + 1;
        touch<<<1, 1>>>(p + round);
        CHECK_LAUNCH();
        if (p[round] != round + 2) fail("managed memory between probes: %d", p[round]);
    }
    if (seen != 6 || probe_faults != 6)
        fail("the program's handler got %d of 6 foreign faults (%d calls)", seen, (int)probe_faults);
    munmap(guard, 4096);
    CHECK(cudaFree(p));
    sigaction(SIGSEGV, &before, nullptr);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "cost") == 0) return cost();
    int managed = 0, concurrent = -1;
    CHECK(cudaDeviceGetAttribute(&managed, cudaDevAttrManagedMemory, 0));
    CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, 0));
    expect_true(managed == 1, "managedMemory is 1");
    if (managed != 1) return finish();
    rounds();
    copies();
    large();
    attached();
    hints();
    graph();
    threads();
    churn();
    foreign_faults();
    figures();
    printf("managed memory checked (concurrentManagedAccess %d)\n", concurrent);
    return finish();
}
