/* The part of AMD SMI's C API (amdsmi.h, ROCm 7) that tests/amdsmi/smi.c calls,
 * written for xpupool from these facts, not copied: names, argument types and
 * structure layouts as the `amdsmi` 7.0.2 Python package (PyPI) declares them in its
 * ctypes wrapper (amdsmi/amdsmi_wrapper.py), which is what PyTorch's ROCm code paths
 * call through; the status and enum values from the same file. No Debian package
 * ships amdsmi.h. The sizes are asserted below and, for the Rust side, in
 * amdsmi/src/lib.rs's tests. */
#ifndef XPUPOOL_AMDSMI_ABI_H
#define XPUPOOL_AMDSMI_ABI_H
#include <stddef.h>
#include <stdint.h>

typedef uint32_t amdsmi_status_t;
#define AMDSMI_STATUS_SUCCESS 0
#define AMDSMI_STATUS_INVAL 1
#define AMDSMI_STATUS_NOT_SUPPORTED 2
#define AMDSMI_STATUS_NOT_INIT 32
#define AMDSMI_INIT_AMD_GPUS 2
#define AMDSMI_PROCESSOR_TYPE_AMD_GPU 1
#define AMDSMI_MEM_TYPE_VRAM 0
#define AMDSMI_MEM_TYPE_GTT 2
#define AMDSMI_CLK_TYPE_GFX 0
#define AMDSMI_TEMPERATURE_TYPE_JUNCTION 1
#define AMDSMI_TEMP_CURRENT 0
#define AMDSMI_GPU_UUID_SIZE 38

typedef void *amdsmi_socket_handle;
typedef void *amdsmi_processor_handle;

typedef union {
    struct {
        uint64_t function_number : 3;
        uint64_t device_number : 5;
        uint64_t bus_number : 8;
        uint64_t domain_number : 48;
    };
    uint64_t as_uint;
} amdsmi_bdf_t;

typedef struct { uint32_t gfx_activity, umc_activity, mm_activity, reserved[13]; } amdsmi_engine_usage_t;
typedef struct { uint32_t vram_total, vram_used, reserved[2]; } amdsmi_vram_usage_t;
typedef struct {
    uint32_t clk, min_clk, max_clk;
    uint8_t clk_locked, clk_deep_sleep;
    uint32_t reserved[4];
} amdsmi_clk_info_t;
typedef struct {
    char market_name[256];
    uint32_t vendor_id;
    char vendor_name[256];
    uint32_t subvendor_id;
    uint64_t device_id;
    uint32_t rev_id;
    char asic_serial[256];
    uint32_t oam_id;
    uint32_t num_of_compute_units;
    uint64_t target_graphics_version;
    uint32_t subsystem_id;
    uint32_t reserved[21];
} amdsmi_asic_info_t;
typedef struct {
    char name[256];
    uint32_t pid;
    uint64_t mem;
    struct { uint64_t gfx, enc; uint32_t reserved[12]; } engine_usage;
    struct { uint64_t gtt_mem, cpu_mem, vram_mem; uint32_t reserved[10]; } memory_usage;
    char container_name[256];
    uint32_t cu_occupancy;
    uint32_t reserved[11];
} amdsmi_proc_info_t;
typedef struct { uint32_t major, minor, release; const char *build; } amdsmi_version_t;

_Static_assert(sizeof(amdsmi_bdf_t) == 8, "amdsmi_bdf_t");
_Static_assert(sizeof(amdsmi_engine_usage_t) == 64, "amdsmi_engine_usage_t");
_Static_assert(sizeof(amdsmi_vram_usage_t) == 16, "amdsmi_vram_usage_t");
_Static_assert(sizeof(amdsmi_clk_info_t) == 32, "amdsmi_clk_info_t");
_Static_assert(sizeof(amdsmi_asic_info_t) == 896, "amdsmi_asic_info_t");
_Static_assert(sizeof(amdsmi_proc_info_t) == 704, "amdsmi_proc_info_t");
_Static_assert(sizeof(amdsmi_version_t) == 24, "amdsmi_version_t");

amdsmi_status_t amdsmi_init(uint64_t init_flags);
amdsmi_status_t amdsmi_shut_down(void);
amdsmi_status_t amdsmi_get_lib_version(amdsmi_version_t *version);
amdsmi_status_t amdsmi_status_code_to_string(amdsmi_status_t status, const char **status_string);
amdsmi_status_t amdsmi_get_socket_handles(uint32_t *socket_count, amdsmi_socket_handle *socket_handles);
amdsmi_status_t amdsmi_get_socket_info(amdsmi_socket_handle socket_handle, size_t len, char *name);
amdsmi_status_t amdsmi_get_processor_handles(amdsmi_socket_handle socket_handle, uint32_t *processor_count,
                                             amdsmi_processor_handle *processor_handles);
amdsmi_status_t amdsmi_get_processor_type(amdsmi_processor_handle processor_handle, uint32_t *processor_type);
amdsmi_status_t amdsmi_get_gpu_device_bdf(amdsmi_processor_handle processor_handle, amdsmi_bdf_t *bdf);
amdsmi_status_t amdsmi_get_processor_handle_from_bdf(amdsmi_bdf_t bdf, amdsmi_processor_handle *processor_handle);
amdsmi_status_t amdsmi_get_gpu_device_uuid(amdsmi_processor_handle processor_handle, unsigned int *uuid_length,
                                           char *uuid);
amdsmi_status_t amdsmi_get_gpu_asic_info(amdsmi_processor_handle processor_handle, amdsmi_asic_info_t *info);
amdsmi_status_t amdsmi_get_gpu_activity(amdsmi_processor_handle processor_handle, amdsmi_engine_usage_t *info);
amdsmi_status_t amdsmi_get_gpu_vram_usage(amdsmi_processor_handle processor_handle, amdsmi_vram_usage_t *info);
amdsmi_status_t amdsmi_get_gpu_memory_total(amdsmi_processor_handle processor_handle, uint32_t mem_type,
                                            uint64_t *total);
amdsmi_status_t amdsmi_get_gpu_memory_usage(amdsmi_processor_handle processor_handle, uint32_t mem_type,
                                            uint64_t *used);
amdsmi_status_t amdsmi_get_gpu_process_list(amdsmi_processor_handle processor_handle, uint32_t *max_processes,
                                            amdsmi_proc_info_t *list);
amdsmi_status_t amdsmi_get_clock_info(amdsmi_processor_handle processor_handle, uint32_t clk_type,
                                      amdsmi_clk_info_t *info);
amdsmi_status_t amdsmi_get_temp_metric(amdsmi_processor_handle processor_handle, uint32_t sensor_type,
                                       uint32_t metric, int64_t *temperature);
#endif
