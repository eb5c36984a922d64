// Interprocess sharing, as torch.multiprocessing shares CUDA tensors: a parent allocates
// and fills a buffer, records an interprocess event, and sends both handles through a
// pipe to a child (forked before either touches CUDA); the child opens them, waits on
// the event, adds to the buffer in place, checks it, and closes it; the parent then
// sees the child's writes. With arguments, one side of it across two invocations (for
// tests that run them as different tenants):
//   ipc export FILE    allocate, fill, write the memory handle to FILE, wait for FILE.done
//   ipc open FILE      open the handle in FILE: exit 0 and print "opened" if it opens and
//                      reads what `export` wrote, print "refused: <error>" and exit 3 if not
#define TEST_NAME "ipc"
#include "check.cuh"

#include <sys/wait.h>
#include <unistd.h>

static const int N = 1 << 16;

__global__ void fill(int *out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 2 * i;
}

__global__ void add_one(int *data, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] += 1;
}

static void must_io(bool ok, const char *what) {
    if (!ok) {
        printf("FAIL %s: %s\n", TEST_NAME, what);
        exit(2);
    }
}

static int child(int from_parent, int to_parent) {
    cudaIpcMemHandle_t mh;
    cudaIpcEventHandle_t eh;
    must_io(read(from_parent, &mh, sizeof mh) == (ssize_t)sizeof mh, "child: reading the memory handle");
    must_io(read(from_parent, &eh, sizeof eh) == (ssize_t)sizeof eh, "child: reading the event handle");
    CHECK(cudaSetDevice(0));
    int *p = nullptr;
    CHECK(cudaIpcOpenMemHandle((void **)&p, mh, cudaIpcMemLazyEnablePeerAccess));
    cudaEvent_t e;
    CHECK(cudaIpcOpenEventHandle(&e, eh));
    CHECK(cudaStreamWaitEvent(0, e, 0));
    add_one<<<(N + 255) / 256, 256>>>(p, N);
    CHECK_LAUNCH();
    int *h = (int *)malloc(N * sizeof(int));
    CHECK(cudaMemcpy(h, p, N * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; ++i)
        if (h[i] != 2 * i + 1) {
            fail("child: [%d] expected %d got %d", i, 2 * i + 1, h[i]);
            break;
        }
    free(h);
    CHECK(cudaIpcCloseMemHandle(p));
    CHECK(cudaEventDestroy(e));
    const char done = 'd';
    must_io(write(to_parent, &done, 1) == 1, "child: writing");
    return finish();
}

static int both_sides() {
    int down[2], up[2];
    must_io(pipe(down) == 0 && pipe(up) == 0, "pipes");
    const pid_t pid = fork();
    must_io(pid >= 0, "fork");
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        exit(child(down[0], up[1]));
    }
    close(down[0]);
    close(up[1]);
    int *d = nullptr;
    CHECK(cudaMalloc((void **)&d, N * sizeof(int)));
    fill<<<(N + 255) / 256, 256>>>(d, N);
    CHECK(cudaGetLastError());
    cudaEvent_t e;
    CHECK(cudaEventCreateWithFlags(&e, cudaEventInterprocess | cudaEventDisableTiming));
    CHECK(cudaEventRecord(e, 0));
    cudaIpcMemHandle_t mh;
    cudaIpcEventHandle_t eh;
    CHECK(cudaIpcGetMemHandle(&mh, d));
    CHECK(cudaIpcGetEventHandle(&eh, e));
    // The same allocation exported twice: the same handle.
    cudaIpcMemHandle_t again;
    CHECK(cudaIpcGetMemHandle(&again, d));
    if (memcmp(&mh, &again, sizeof mh) != 0) fail("a second handle for the same allocation differs");
    must_io(write(down[1], &mh, sizeof mh) == (ssize_t)sizeof mh, "writing the memory handle");
    must_io(write(down[1], &eh, sizeof eh) == (ssize_t)sizeof eh, "writing the event handle");
    char done = 0;
    must_io(read(up[0], &done, 1) == 1 && done == 'd', "the child did not finish");
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("the child exited with %d", WEXITSTATUS(status));
    int *h = (int *)malloc(N * sizeof(int));
    CHECK(cudaMemcpy(h, d, N * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; ++i)
        if (h[i] != 2 * i + 1) {
            fail("parent: [%d] expected %d (the child's write) got %d", i, 2 * i + 1, h[i]);
            break;
        }
    free(h);
    CHECK(cudaEventDestroy(e));
    CHECK(cudaFree(d));
    return finish();
}

static int export_to(const char *file) {
    int *d = nullptr;
    CHECK(cudaMalloc((void **)&d, N * sizeof(int)));
    fill<<<(N + 255) / 256, 256>>>(d, N);
    CHECK(cudaDeviceSynchronize());
    cudaIpcMemHandle_t mh;
    CHECK(cudaIpcGetMemHandle(&mh, d));
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    FILE *f = fopen(tmp, "wb");
    must_io(f && fwrite(&mh, sizeof mh, 1, f) == 1 && fclose(f) == 0, "writing the handle");
    must_io(rename(tmp, file) == 0, "renaming the handle file");
    char done[4096];
    snprintf(done, sizeof done, "%s.done", file);
    for (int i = 0; i < 600 && access(done, F_OK) != 0; ++i) usleep(100000);
    CHECK(cudaFree(d));
    return finish();
}

static int open_from(const char *file) {
    cudaIpcMemHandle_t mh;
    FILE *f = fopen(file, "rb");
    must_io(f && fread(&mh, sizeof mh, 1, f) == 1, "reading the handle");
    fclose(f);
    int *p = nullptr;
    const cudaError_t err = cudaIpcOpenMemHandle((void **)&p, mh, cudaIpcMemLazyEnablePeerAccess);
    if (err != cudaSuccess) {
        printf("refused: %s\n", cudaGetErrorName(err));
        return 3;
    }
    int h[4];
    CHECK(cudaMemcpy(h, p + 1000, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 4; ++i)
        if (h[i] != 2 * (1000 + i)) fail("opened: [%d] expected %d got %d", 1000 + i, 2 * (1000 + i), h[i]);
    CHECK(cudaIpcCloseMemHandle(p));
    printf("opened\n");
    return finish();
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "export") == 0) return export_to(argv[2]);
    if (argc == 3 && strcmp(argv[1], "open") == 0) return open_from(argv[2]);
    return both_sides();
}
