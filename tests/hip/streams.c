/* Streams and events through xpupool's HIP stand-in: two streams ordered by an event,
 * copies and memsets sent without waiting, elapsed time, queries after the work, a
 * bad handle refused. Run by scripts/run-hip-tests.sh through `xpupool run`. */
#define TEST_NAME "streams"
#include "check.h"
#include <stdio.h>
#include <stdlib.h>


int main(void) {
    const size_t n = 1 << 18;
    hipStream_t first, second;
    CHECK(hipStreamCreateWithFlags(&first, hipStreamNonBlocking));
    CHECK(hipStreamCreateWithPriority(&second, hipStreamNonBlocking, -1));
    hipEvent_t start, copied, end;
    CHECK(hipEventCreate(&start));
    CHECK(hipEventCreateWithFlags(&copied, hipEventDisableTiming));
    CHECK(hipEventCreate(&end));

    int *dev = NULL;
    int *host = malloc(n * sizeof *host);
    for (size_t i = 0; i < n; ++i) host[i] = (int)i;
    CHECK(hipMalloc((void **)&dev, n * sizeof *dev));
    CHECK(hipEventRecord(start, first));
    CHECK(hipMemcpyAsync(dev, host, n * sizeof *host, hipMemcpyHostToDevice, first));
    CHECK(hipEventRecord(copied, first));
    /* The second stream waits for the copy, then clears the first 100 ints. */
    CHECK(hipStreamWaitEvent(second, copied, 0));
    CHECK(hipMemsetAsync(dev, 0, 100 * sizeof *dev, second));
    CHECK(hipEventRecord(end, second));
    CHECK(hipEventSynchronize(end));
    EXPECT(hipEventQuery(end) == hipSuccess, "a finished event");
    EXPECT(hipStreamQuery(second) == hipSuccess, "an idle stream");
    float ms = -1;
    CHECK(hipEventElapsedTime(&ms, start, end));
    EXPECT(ms >= 0, "elapsed %f ms", ms);
    EXPECT(hipEventElapsedTime(&ms, start, copied) != hipSuccess, "an event without timing has no time");

    for (size_t i = 0; i < n; ++i) host[i] = -1;
    CHECK(hipMemcpyWithStream(host, dev, n * sizeof *host, hipMemcpyDeviceToHost, second));
    for (size_t i = 0; i < n; ++i) {
        int want = i < 100 ? 0 : (int)i;
        if (host[i] != want) {
            EXPECT(0, "[%zu] = %d, expected %d", i, host[i], want);
            break;
        }
    }
    EXPECT(hipStreamSynchronize((hipStream_t)0x7777) == hipErrorInvalidHandle,
           "a stream that does not exist");
    CHECK(hipEventDestroy(start));
    CHECK(hipEventDestroy(copied));
    CHECK(hipEventDestroy(end));
    CHECK(hipStreamDestroy(first));
    CHECK(hipStreamDestroy(second));
    CHECK(hipFree(dev));
    free(host);
    return finish();
}
