/* xpupool's AMD SMI / ROCm SMI stand-in (amdsmi/) answering from the pool server:
 * rocm_smi's calls through the real rocm_smi.h (Debian's librocm-smi-dev 5.2.3), and
 * amd_smi's through amdsmi_abi.h (ROCm 7's layouts). Checks the device count, that
 * total memory matches what the HIP stand-in's hipMemGetInfo reports, that used
 * memory and the process lists see an allocation made through the HIP stand-in,
 * identity answers agreeing between the two APIs, not-supported answers for what
 * the pool cannot know, and NOT_INIT / INIT_ERROR outside init. Run by
 * scripts/run-amdsmi-tests.sh through `xpupool run`. */
#include <rocm_smi/rocm_smi.h>
#include "amdsmi_abi.h"
#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(sizeof(rsmi_process_info_t) == 32, "rsmi_process_info_t as amdsmi/src/types.rs has it");
_Static_assert(sizeof(rsmi_version_t) == 24, "rsmi_version_t as amdsmi/src/types.rs has it");
_Static_assert(RSMI_STATUS_INIT_ERROR == 8 && RSMI_STATUS_NOT_SUPPORTED == 2 &&
               RSMI_STATUS_INSUFFICIENT_SIZE == 11 && RSMI_MEM_TYPE_VRAM == 0,
               "rsmi codes as amdsmi/src/boundary.rs has them");

static int failures = 0;
#define EXPECT(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "FAIL  smi: %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, "\n");                                          \
            failures++;                                                     \
        }                                                                   \
    } while (0)
#define OK(call) EXPECT((call) == 0, "%s failed", #call)

typedef int (*hip_mem_get_info_t)(size_t *, size_t *);
typedef int (*hip_malloc_t)(void **, size_t);
typedef int (*hip_free_t)(void *);

int main(void) {
    uint32_t n = 77;
    EXPECT(rsmi_num_monitor_devices(&n) == RSMI_STATUS_INIT_ERROR && n == 77, "before rsmi_init");
    EXPECT(amdsmi_get_socket_handles(&n, NULL) == AMDSMI_STATUS_NOT_INIT, "before amdsmi_init");
    const char *text = NULL;
    OK(rsmi_status_string(RSMI_STATUS_NOT_SUPPORTED, &text));
    EXPECT(text && strstr(text, "NOT_SUPPORTED"), "%s", text ? text : "(null)");
    amdsmi_version_t version = {0};
    OK(amdsmi_get_lib_version(&version));
    EXPECT(version.build && strcmp(version.build, "xpupool") == 0, "build %s", version.build);

    /* ---- rocm_smi ---- */
    OK(rsmi_init(0));
    OK(rsmi_num_monitor_devices(&n));
    EXPECT(n >= 1, "%u devices", n);
    EXPECT(rsmi_dev_name_get(n, (char[8]){0}, 8) == RSMI_STATUS_INVALID_ARGS, "device %u is not there", n);
    char name[128] = {0};
    OK(rsmi_dev_name_get(0, name, sizeof name));
    EXPECT(name[0] != 0, "empty name");
    uint64_t total = 0, used = ~0ull, unique = 0, bdfid = ~0ull, power = 0;
    OK(rsmi_dev_memory_total_get(0, RSMI_MEM_TYPE_VRAM, &total));
    OK(rsmi_dev_memory_usage_get(0, RSMI_MEM_TYPE_VRAM, &used));
    EXPECT(total > 0 && used <= total, "used %" PRIu64 " of %" PRIu64, used, total);
    EXPECT(rsmi_dev_memory_total_get(0, RSMI_MEM_TYPE_VRAM, NULL) == RSMI_STATUS_INVALID_ARGS, "NULL");
    EXPECT(rsmi_dev_memory_total_get(0, RSMI_MEM_TYPE_GTT, &power) == RSMI_STATUS_NOT_SUPPORTED, "GTT");
    uint32_t busy = 1000;
    OK(rsmi_dev_busy_percent_get(0, &busy));
    EXPECT(busy <= 100, "busy %u%%", busy);
    OK(rsmi_dev_unique_id_get(0, &unique));
    OK(rsmi_dev_pci_id_get(0, &bdfid));
    uint16_t vendor = 0;
    OK(rsmi_dev_vendor_id_get(0, &vendor));
    EXPECT(vendor == 0x1002, "vendor %#x", vendor);
    EXPECT(rsmi_dev_power_ave_get(0, 0, &power) == RSMI_STATUS_NOT_SUPPORTED, "power is not known");
    EXPECT(rsmi_dev_temp_metric_get(0, RSMI_TEMP_TYPE_EDGE, RSMI_TEMP_CURRENT, (int64_t *)&power) ==
               RSMI_STATUS_NOT_SUPPORTED, "temperature is not known");
    rsmi_version_t rversion = {0};
    OK(rsmi_version_get(&rversion));
    EXPECT(rversion.major == 5, "rsmi version %u", rversion.major);

    /* ---- amd_smi ---- */
    OK(amdsmi_init(AMDSMI_INIT_AMD_GPUS));
    uint32_t sockets = 0;
    OK(amdsmi_get_socket_handles(&sockets, NULL));
    EXPECT(sockets == n, "%u sockets, %u devices", sockets, n);
    amdsmi_socket_handle socket_handles[64];
    OK(amdsmi_get_socket_handles(&sockets, socket_handles));
    char socket_name[64] = {0};
    OK(amdsmi_get_socket_info(socket_handles[0], sizeof socket_name, socket_name));
    uint32_t count = 0;
    OK(amdsmi_get_processor_handles(socket_handles[0], &count, NULL));
    EXPECT(count == 1, "%u processors in socket 0", count);
    amdsmi_processor_handle gpu = NULL;
    OK(amdsmi_get_processor_handles(socket_handles[0], &count, &gpu));
    EXPECT(amdsmi_get_gpu_vram_usage((void *)socket_handles[0] + 1, &(amdsmi_vram_usage_t){0}) ==
               AMDSMI_STATUS_INVAL, "not a handle");
    uint32_t type = 0;
    OK(amdsmi_get_processor_type(gpu, &type));
    EXPECT(type == AMDSMI_PROCESSOR_TYPE_AMD_GPU, "type %u", type);
    char uuid[AMDSMI_GPU_UUID_SIZE] = {0};
    unsigned int uuid_length = sizeof uuid;
    OK(amdsmi_get_gpu_device_uuid(gpu, &uuid_length, uuid));
    EXPECT(uuid_length == 36 && strlen(uuid) == 36, "uuid %s (%u)", uuid, uuid_length);
    amdsmi_asic_info_t asic;
    memset(&asic, 0x55, sizeof asic);
    OK(amdsmi_get_gpu_asic_info(gpu, &asic));
    EXPECT(strcmp(asic.market_name, name) == 0, "market name %s, rsmi name %s", asic.market_name, name);
    char serial[32];
    snprintf(serial, sizeof serial, "0x%016" PRIX64, unique);
    EXPECT(strcmp(asic.asic_serial, serial) == 0, "serial %s, unique id %s", asic.asic_serial, serial);
    amdsmi_bdf_t bdf = {0};
    OK(amdsmi_get_gpu_device_bdf(gpu, &bdf));
    EXPECT(bdf.bus_number == ((bdfid >> 8) & 0xff) && bdf.domain_number == (bdfid >> 32),
           "bdf %#" PRIx64 " vs bdfid %#" PRIx64, bdf.as_uint, bdfid);
    amdsmi_processor_handle again = NULL;
    OK(amdsmi_get_processor_handle_from_bdf(bdf, &again));
    EXPECT(again == gpu, "handle from bdf");
    amdsmi_vram_usage_t vram = {0};
    OK(amdsmi_get_gpu_vram_usage(gpu, &vram));
    EXPECT(vram.vram_total == (uint32_t)(total >> 20), "vram_total %u MB, rsmi %" PRIu64, vram.vram_total, total);
    uint64_t amd_total = 0;
    OK(amdsmi_get_gpu_memory_total(gpu, AMDSMI_MEM_TYPE_VRAM, &amd_total));
    EXPECT(amd_total == total, "%" PRIu64 " vs %" PRIu64, amd_total, total);
    amdsmi_engine_usage_t activity = {0};
    OK(amdsmi_get_gpu_activity(gpu, &activity));
    EXPECT(activity.gfx_activity <= 100 && activity.umc_activity <= 100, "gfx %u umc %u",
           activity.gfx_activity, activity.umc_activity);
    amdsmi_clk_info_t clock = {0};
    amdsmi_status_t st = amdsmi_get_clock_info(gpu, AMDSMI_CLK_TYPE_GFX, &clock);
    EXPECT(st == AMDSMI_STATUS_SUCCESS || st == AMDSMI_STATUS_NOT_SUPPORTED, "clock: %u", st);
    int64_t temperature = 0;
    EXPECT(amdsmi_get_temp_metric(gpu, AMDSMI_TEMPERATURE_TYPE_JUNCTION, AMDSMI_TEMP_CURRENT, &temperature) ==
               AMDSMI_STATUS_NOT_SUPPORTED, "temperature is not known");

    /* ---- an allocation through the HIP stand-in ---- */
    void *hip = dlopen("libamdhip64.so.5", RTLD_NOW);
    if (!hip) {
        printf("skip  smi: HIP part (%s)\n", dlerror());
    } else {
        hip_mem_get_info_t mem_get_info = (hip_mem_get_info_t)dlsym(hip, "hipMemGetInfo");
        hip_malloc_t hip_malloc = (hip_malloc_t)dlsym(hip, "hipMalloc");
        hip_free_t hip_free = (hip_free_t)dlsym(hip, "hipFree");
        size_t hip_free_bytes = 0, hip_total = 0;
        OK(mem_get_info(&hip_free_bytes, &hip_total));
        EXPECT(hip_total == total, "hipMemGetInfo total %zu, rsmi %" PRIu64, hip_total, total);
        const size_t size = 64 << 20;
        void *ptr = NULL;
        OK(hip_malloc(&ptr, size));
        uint64_t after = 0, amd_after = 0;
        OK(rsmi_dev_memory_usage_get(0, RSMI_MEM_TYPE_VRAM, &after));
        OK(amdsmi_get_gpu_memory_usage(gpu, AMDSMI_MEM_TYPE_VRAM, &amd_after));
        EXPECT(after >= used + size && amd_after == after, "used %" PRIu64 " -> %" PRIu64 " (amdsmi %" PRIu64 ")",
               used, after, amd_after);
        OK(amdsmi_get_gpu_vram_usage(gpu, &vram));
        EXPECT(vram.vram_used >= 64, "vram_used %u MB", vram.vram_used);
        uint32_t max = 0;
        OK(amdsmi_get_gpu_process_list(gpu, &max, NULL));
        EXPECT(max >= 1, "%u processes", max);
        amdsmi_proc_info_t procs[8];
        max = 8;
        OK(amdsmi_get_gpu_process_list(gpu, &max, procs));
        int found = 0;
        for (uint32_t i = 0; i < max && i < 8; i++)
            if (procs[i].pid == (uint32_t)getpid())
                found = procs[i].memory_usage.vram_mem >= size && procs[i].mem == procs[i].memory_usage.vram_mem;
        EXPECT(found, "pid %d with %zu bytes among %u processes", getpid(), size, max);
        uint32_t items = 0;
        OK(rsmi_compute_process_info_get(NULL, &items));
        rsmi_process_info_t rprocs[8];
        items = 8;
        OK(rsmi_compute_process_info_get(rprocs, &items));
        found = 0;
        for (uint32_t i = 0; i < items && i < 8; i++)
            found |= rprocs[i].process_id == (uint32_t)getpid() && rprocs[i].vram_usage >= size;
        EXPECT(found, "rsmi: pid %d among %u processes", getpid(), items);
        OK(hip_free(ptr));
        OK(rsmi_dev_memory_usage_get(0, RSMI_MEM_TYPE_VRAM, &after));
        EXPECT(after == used, "after hipFree used %" PRIu64 ", before %" PRIu64, after, used);
    }

    OK(amdsmi_shut_down());
    OK(rsmi_shut_down());
    EXPECT(amdsmi_get_gpu_vram_usage(gpu, &vram) == AMDSMI_STATUS_NOT_INIT, "after amdsmi_shut_down");
    EXPECT(rsmi_num_monitor_devices(&n) == RSMI_STATUS_INIT_ERROR, "after rsmi_shut_down");
    if (failures) return 1;
    printf("ok    smi: %u device(s), %s, %" PRIu64 " MiB, uuid %s, bdf %s\n", sockets, name, total >> 20, uuid,
           socket_name);
    return 0;
}
