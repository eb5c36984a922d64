/* What the driver does when things go away, in plain C over dlopen("libcuda.so.1"):
 *
 *   resilience teardown       calls made from an atexit handler that runs after the
 *                             driver's own (registered before cuInit) must return
 *                             CUDA_ERROR_DEINITIALIZED, not crash.
 *   resilience lost FLAGFILE  initialise and allocate, print READY, wait until FLAGFILE
 *                             is deleted (the runner kills the server first), then every
 *                             call must fail with an error code and nothing may crash.
 *
 * With no arguments both modes that need nothing from outside run (teardown only).
 * Prints "PASS resilience-<mode>" or "FAIL resilience-<mode>: ..." (exit 1). */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef CUresult (*init_t)(unsigned);
typedef CUresult (*retain_t)(CUcontext *, CUdevice);
typedef CUresult (*set_current_t)(CUcontext);
typedef CUresult (*alloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*htod_t)(CUdeviceptr, const void *, size_t);
typedef CUresult (*sync_t)(void);

static init_t p_init;
static retain_t p_retain;
static set_current_t p_set_current;
static alloc_t p_alloc;
static htod_t p_htod;
static sync_t p_sync;

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        printf("FAIL resilience: %s not exported\n", name);
        exit(2);
    }
    return p;
}

static void after_driver_exit(void);

static int start(int teardown) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) {
        printf("FAIL resilience: dlopen: %s\n", dlerror());
        return 2;
    }
    p_init = (init_t)sym(lib, "cuInit");
    p_retain = (retain_t)sym(lib, "cuDevicePrimaryCtxRetain");
    p_set_current = (set_current_t)sym(lib, "cuCtxSetCurrent");
    p_alloc = (alloc_t)sym(lib, "cuMemAlloc_v2");
    p_htod = (htod_t)sym(lib, "cuMemcpyHtoD_v2");
    p_sync = (sync_t)sym(lib, "cuCtxSynchronize");
    /* atexit handlers run in reverse order of registration: registered before cuInit,
     * this one runs after the driver's. */
    if (teardown) atexit(after_driver_exit);
    CUcontext ctx;
    CUdeviceptr d;
    CUresult r;
    if ((r = p_init(0)) || (r = p_retain(&ctx, 0)) || (r = p_set_current(ctx)) || (r = p_alloc(&d, 1 << 20))) {
        printf("FAIL resilience: set-up failed with %d\n", (int)r);
        return 2;
    }
    return 0;
}

static void after_driver_exit(void) {
    CUdeviceptr d;
    CUresult a = p_alloc(&d, 4096), s = p_sync();
    if (a == CUDA_ERROR_DEINITIALIZED && s == CUDA_ERROR_DEINITIALIZED) {
        printf("PASS resilience-teardown\n");
        fflush(stdout);
    } else {
        printf("FAIL resilience-teardown: after exit cuMemAlloc -> %d, cuCtxSynchronize -> %d (want 4)\n", (int)a, (int)s);
        fflush(stdout);
        _exit(1);
    }
}

static int lost(const char *flag) {
    printf("READY\n");
    fflush(stdout);
    for (int i = 0; i < 3000 && access(flag, F_OK) == 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (access(flag, F_OK) == 0) {
        printf("FAIL resilience-lost: the flag file was never removed\n");
        return 1;
    }
    CUdeviceptr d;
    char buf[64] = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CUresult a = p_alloc(&d, 4096);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CUresult s = p_sync(), c = p_htod(0x200000000000ull, buf, sizeof buf);
    double waited = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (a == CUDA_SUCCESS || s == CUDA_SUCCESS || c == CUDA_SUCCESS) {
        printf("FAIL resilience-lost: calls succeeded without a server (%d %d %d)\n", (int)a, (int)s, (int)c);
        return 1;
    }
    /* A lost server is an error within seconds, never a hang. */
    if (waited > 3.0) {
        printf("FAIL resilience-lost: the first call after the server went took %.1f s\n", waited);
        return 1;
    }
    printf("PASS resilience-lost (errors %d %d %d, the first after %.3f s)\n", (int)a, (int)s, (int)c, waited);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "lost") == 0) {
        int r = start(0);
        return r ? r : lost(argv[2]);
    }
    if (argc > 1 && strcmp(argv[1], "teardown") != 0) {
        fprintf(stderr, "usage: resilience [teardown | lost FLAGFILE]\n");
        return 2;
    }
    return start(1);
}
