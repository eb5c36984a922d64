// Streams and events:
//  - producer/consumer across two streams ordered only by events (cudaStreamWaitEvent in both
//    directions), over several rounds that reuse the same buffers, with pinned-memory
//    cudaMemcpyAsync H2D/D2H; the results are only right if every wait is honoured;
//  - timing events and cudaEventElapsedTime >= 0; cudaEventQuery / cudaStreamQuery polled
//    until cudaSuccess; cudaEventSynchronize;
//  - cudaLaunchHostFunc: a callback runs after the preceding copy into pinned memory and
//    before the following one; two callbacks in one stream run in order;
//  - the legacy default stream: it waits for work in blocking streams and blocking streams
//    wait for it; a cudaStreamNonBlocking stream synchronised through an event.
#define TEST_NAME "streams_events"
#include "check.cuh"

#include <atomic>
#include <chrono>
#include <vector>

__device__ __host__ inline unsigned mix(unsigned x, unsigned round) {
    x ^= round * 0x9e3779b9u;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return x;
}

// x[i] = mix(x[i], step); applied several times in sequence, so the order matters.
__global__ void transform(unsigned *x, int n, unsigned step) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        x[i] = mix(x[i], step);
}

__global__ void consume(const unsigned *x, unsigned *y, int n, unsigned add) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = x[i] * 3u + add;
}

__global__ void fill(unsigned *x, int n, unsigned base) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        x[i] = base + (unsigned)i;
}

// Keeps a stream busy for about `cycles` clock cycles on a real GPU, so that work in another
// stream would overtake it if an event wait were ignored. The iteration cap bounds the loop
// on an emulator whose clock advances slowly (or not at all).
__global__ void spin(long long cycles) {
    const long long start = clock64();
    for (int it = 0; it < 20000 && clock64() - start < cycles; ++it) {
    }
}

// Polls until the query returns cudaSuccess; cudaErrorNotReady is allowed meanwhile.
template <typename Query>
static void poll_until_ready(const char *what, Query q) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    long polls = 0;
    for (;;) {
        const cudaError_t e = q();
        ++polls;
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady) {
            fail("%s returned %s while polling", what, cudaGetErrorName(e));
            break;
        }
        if (std::chrono::steady_clock::now() > deadline) {
            fail("%s still cudaErrorNotReady after 60 s (%ld polls)", what, polls);
            break;
        }
    }
    // A cudaErrorNotReady from a query must not poison later error checks.
    const cudaError_t last = cudaGetLastError();
    if (last != cudaSuccess && last != cudaErrorNotReady)
        fail("cudaGetLastError after polling %s: %s", what, cudaGetErrorName(last));
}

static void test_event_ordering() {
    const int n = 4096, rounds = 3, steps = 3;
    cudaStream_t A, B;
    CHECK(cudaStreamCreate(&A));
    CHECK(cudaStreamCreate(&B));
    cudaEvent_t produced, consumed, start, stop;
    CHECK(cudaEventCreateWithFlags(&produced, cudaEventDisableTiming));
    CHECK(cudaEventCreateWithFlags(&consumed, cudaEventDisableTiming));
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));

    unsigned *h_in, *h_out;
    CHECK(cudaMallocHost(&h_in, rounds * n * sizeof(unsigned)));
    CHECK(cudaMallocHost(&h_out, rounds * n * sizeof(unsigned)));
    unsigned *d_x, *d_y;
    CHECK(cudaMalloc(&d_x, n * sizeof(unsigned)));
    CHECK(cudaMalloc(&d_y, n * sizeof(unsigned)));
    CHECK(cudaMemset(d_x, 0, n * sizeof(unsigned)));
    CHECK(cudaMemset(d_y, 0, n * sizeof(unsigned)));
    for (int i = 0; i < rounds * n; ++i) {
        h_in[i] = (unsigned)i * 2654435761u + 17u;
        h_out[i] = 0xdeadbeefu;
    }

    CHECK(cudaEventRecord(start, A));
    for (int r = 0; r < rounds; ++r) {
        // Stream A may only overwrite d_x once B has consumed the previous round.
        if (r > 0) CHECK(cudaStreamWaitEvent(A, consumed, 0));
        spin<<<1, 1, 0, A>>>(100000);  // on a GPU: B would race ahead if it did not wait
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpyAsync(d_x, h_in + r * n, n * sizeof(unsigned), cudaMemcpyHostToDevice, A));
        for (int s = 0; s < steps; ++s) {
            transform<<<8, 128, 0, A>>>(d_x, n, (unsigned)(r * 10 + s));
            CHECK(cudaGetLastError());
        }
        CHECK(cudaEventRecord(produced, A));

        CHECK(cudaStreamWaitEvent(B, produced, 0));
        consume<<<8, 128, 0, B>>>(d_x, d_y, n, (unsigned)r);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpyAsync(h_out + r * n, d_y, n * sizeof(unsigned), cudaMemcpyDeviceToHost, B));
        CHECK(cudaEventRecord(consumed, B));
    }
    CHECK(cudaStreamWaitEvent(A, consumed, 0));
    CHECK(cudaEventRecord(stop, A));

    poll_until_ready("cudaEventQuery(stop)", [&] { return cudaEventQuery(stop); });
    poll_until_ready("cudaStreamQuery(B)", [&] { return cudaStreamQuery(B); });
    CHECK(cudaEventSynchronize(stop));
    CHECK(cudaStreamSynchronize(A));
    CHECK(cudaStreamSynchronize(B));
    // Both streams are idle now.
    CHECK(cudaStreamQuery(A));
    CHECK(cudaEventQuery(consumed));

    float ms = -1.0f;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (!(ms >= 0.0f)) fail("cudaEventElapsedTime(start, stop) = %g, expected >= 0", ms);

    std::vector<unsigned> want(rounds * n);
    for (int r = 0; r < rounds; ++r)
        for (int i = 0; i < n; ++i) {
            unsigned x = h_in[r * n + i];
            for (int s = 0; s < steps; ++s) x = mix(x, (unsigned)(r * 10 + s));
            want[r * n + i] = x * 3u + (unsigned)r;
        }
    compare_exact("event-ordered producer/consumer rounds", want.data(), h_out, rounds * n);

    CHECK(cudaFree(d_x));
    CHECK(cudaFree(d_y));
    CHECK(cudaFreeHost(h_in));
    CHECK(cudaFreeHost(h_out));
    CHECK(cudaEventDestroy(produced));
    CHECK(cudaEventDestroy(consumed));
    CHECK(cudaEventDestroy(start));
    CHECK(cudaEventDestroy(stop));
    CHECK(cudaStreamDestroy(A));
    CHECK(cudaStreamDestroy(B));
}

struct CallbackCtx {
    const unsigned *pinned;  // written by the preceding cudaMemcpyAsync
    const unsigned *expected;
    int n;
    int id;
    std::atomic<int> *sequence;
    int order;       // value of *sequence when this callback ran
    bool ran;
    int mismatches;
};

static void CUDART_CB host_callback(void *p) {
    CallbackCtx *c = static_cast<CallbackCtx *>(p);
    int bad = 0;
    for (int i = 0; i < c->n; ++i)
        if (c->pinned[i] != c->expected[i]) ++bad;
    c->mismatches = bad;
    c->order = c->sequence->fetch_add(1);
    c->ran = true;
}

static void test_host_func() {
    const int n = 2048;
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    unsigned *pinned, *d_a, *d_b;
    CHECK(cudaMallocHost(&pinned, n * sizeof(unsigned)));
    CHECK(cudaMalloc(&d_a, n * sizeof(unsigned)));
    CHECK(cudaMalloc(&d_b, n * sizeof(unsigned)));
    for (int i = 0; i < n; ++i) pinned[i] = 0;
    std::vector<unsigned> first(n), second(n);
    for (int i = 0; i < n; ++i) {
        first[i] = 1000u + (unsigned)i;
        second[i] = 900000u + (unsigned)i;
    }

    std::atomic<int> sequence(0);
    CallbackCtx c1 = {pinned, first.data(), n, 1, &sequence, -1, false, -1};
    CallbackCtx c2 = {pinned, second.data(), n, 2, &sequence, -1, false, -1};

    spin<<<1, 1, 0, s>>>(100000);
    CHECK(cudaGetLastError());
    fill<<<4, 128, 0, s>>>(d_a, n, 1000u);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpyAsync(pinned, d_a, n * sizeof(unsigned), cudaMemcpyDeviceToHost, s));
    CHECK(cudaLaunchHostFunc(s, host_callback, &c1));
    // Work after the callback must not start before it returns: this copy overwrites the
    // buffer the callback is checking.
    fill<<<4, 128, 0, s>>>(d_b, n, 900000u);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpyAsync(pinned, d_b, n * sizeof(unsigned), cudaMemcpyDeviceToHost, s));
    CHECK(cudaLaunchHostFunc(s, host_callback, &c2));
    CHECK(cudaStreamSynchronize(s));

    if (!c1.ran) fail("first host callback did not run by cudaStreamSynchronize");
    if (!c2.ran) fail("second host callback did not run by cudaStreamSynchronize");
    if (c1.ran && c1.mismatches != 0)
        fail("first host callback saw %d of %d pinned values not yet (or no longer) copied",
             c1.mismatches, n);
    if (c2.ran && c2.mismatches != 0)
        fail("second host callback saw %d of %d stale pinned values", c2.mismatches, n);
    if (c1.order != 0 || c2.order != 1)
        fail("host callbacks ran out of order: first=%d second=%d", c1.order, c2.order);
    compare_exact("pinned buffer after second copy", second.data(), pinned, n);

    CHECK(cudaFree(d_a));
    CHECK(cudaFree(d_b));
    CHECK(cudaFreeHost(pinned));
    CHECK(cudaStreamDestroy(s));
}

__global__ void combine(const unsigned *parts, unsigned *out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        out[i] = parts[i] + parts[n + i] * 2u + parts[2 * n + i] * 3u + parts[3 * n + i] * 4u;
}

static void test_default_stream() {
    const int n = 1024, ns = 4;
    cudaStream_t st[ns];
    for (int k = 0; k < ns; ++k) CHECK(cudaStreamCreate(&st[k]));
    unsigned *d_parts, *d_out;
    CHECK(cudaMalloc(&d_parts, ns * n * sizeof(unsigned)));
    CHECK(cudaMalloc(&d_out, n * sizeof(unsigned)));
    CHECK(cudaMemset(d_parts, 0, ns * n * sizeof(unsigned)));

    // Fan out over blocking streams; the legacy default stream waits for all of them.
    for (int k = 0; k < ns; ++k) {
        spin<<<1, 1, 0, st[k]>>>(25000 * (ns - k));
        fill<<<2, 128, 0, st[k]>>>(d_parts + k * n, n, 100000u * (unsigned)(k + 1));
        transform<<<2, 128, 0, st[k]>>>(d_parts + k * n, n, (unsigned)k);
    }
    CHECK(cudaGetLastError());
    combine<<<4, 128>>>(d_parts, d_out, n);  // stream 0 (legacy)
    CHECK(cudaGetLastError());
    // And a blocking stream waits for earlier default-stream work.
    unsigned *d_copy;
    CHECK(cudaMalloc(&d_copy, n * sizeof(unsigned)));
    CHECK(cudaMemcpyAsync(d_copy, d_out, n * sizeof(unsigned), cudaMemcpyDeviceToDevice, st[1]));
    std::vector<unsigned> got(n), want(n);
    CHECK(cudaStreamSynchronize(st[1]));
    CHECK(cudaMemcpy(got.data(), d_copy, n * sizeof(unsigned), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
        unsigned p[ns];
        for (int k = 0; k < ns; ++k) p[k] = mix(100000u * (unsigned)(k + 1) + (unsigned)i, (unsigned)k);
        want[i] = p[0] + p[1] * 2u + p[2] * 3u + p[3] * 4u;
    }
    compare_exact("legacy default stream joins blocking streams", want.data(), got.data(), n);

    // A non-blocking stream does not synchronise with stream 0 implicitly: use an event.
    cudaStream_t nb;
    CHECK(cudaStreamCreateWithFlags(&nb, cudaStreamNonBlocking));
    unsigned flags = 12345;
    CHECK(cudaStreamGetFlags(nb, &flags));
    if (flags != cudaStreamNonBlocking)
        fail("cudaStreamGetFlags(non-blocking stream) = %u, expected %u", flags,
             (unsigned)cudaStreamNonBlocking);
    cudaEvent_t ev;
    CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    spin<<<1, 1>>>(100000);
    fill<<<2, 128>>>(d_out, n, 77u);
    CHECK(cudaGetLastError());
    CHECK(cudaEventRecord(ev, 0));
    CHECK(cudaStreamWaitEvent(nb, ev, 0));
    transform<<<2, 128, 0, nb>>>(d_out, n, 99u);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpyAsync(got.data(), d_out, n * sizeof(unsigned), cudaMemcpyDeviceToHost, nb));
    CHECK(cudaStreamSynchronize(nb));
    for (int i = 0; i < n; ++i) want[i] = mix(77u + (unsigned)i, 99u);
    compare_exact("non-blocking stream ordered by event after stream 0", want.data(), got.data(), n);

    // cudaDeviceSynchronize waits for everything.
    for (int k = 0; k < ns; ++k) fill<<<1, 64, 0, st[k]>>>(d_parts + k * n, n, 5u * (unsigned)k);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    for (int k = 0; k < ns; ++k) CHECK(cudaStreamQuery(st[k]));
    std::vector<unsigned> parts(ns * n), wparts(ns * n);
    CHECK(cudaMemcpy(parts.data(), d_parts, ns * n * sizeof(unsigned), cudaMemcpyDeviceToHost));
    for (int k = 0; k < ns; ++k)
        for (int i = 0; i < n; ++i) wparts[k * n + i] = 5u * (unsigned)k + (unsigned)i;
    compare_exact("fills after cudaDeviceSynchronize", wparts.data(), parts.data(), ns * n);

    CHECK(cudaEventDestroy(ev));
    CHECK(cudaStreamDestroy(nb));
    for (int k = 0; k < ns; ++k) CHECK(cudaStreamDestroy(st[k]));
    CHECK(cudaFree(d_parts));
    CHECK(cudaFree(d_out));
    CHECK(cudaFree(d_copy));
}

int main() {
    test_event_ordering();
    test_host_func();
    test_default_stream();
    return finish();
}
