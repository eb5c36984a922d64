//! The C structures the implemented calls fill. AMD SMI's are laid out as ROCm
//! 7's amdsmi.h declares them (the layout the `amdsmi` 7.0.2 Python package's
//! ctypes wrapper reads); ROCm SMI's as rocm_smi.h (5.2.3) declares them. Sizes
//! and offsets are checked in lib.rs's tests and, against the real rocm_smi.h, by
//! tests/amdsmi/rsmi_check.c.

use std::ffi::c_char;

/// `amdsmi_engine_usage_t` (64 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EngineUsage {
    pub(crate) gfx_activity: u32,
    pub(crate) umc_activity: u32,
    pub(crate) mm_activity: u32,
    pub(crate) reserved: [u32; 13],
}

/// `amdsmi_vram_usage_t` (16 bytes): MB.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct VramUsage {
    pub(crate) vram_total: u32,
    pub(crate) vram_used: u32,
    pub(crate) reserved: [u32; 2],
}

/// `amdsmi_clk_info_t` (32 bytes): MHz.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ClkInfo {
    pub(crate) clk: u32,
    pub(crate) min_clk: u32,
    pub(crate) max_clk: u32,
    pub(crate) clk_locked: u8,
    pub(crate) clk_deep_sleep: u8,
    pub(crate) reserved: [u32; 4],
}

/// `amdsmi_asic_info_t` of ROCm 7 (896 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct AsicInfo {
    pub(crate) market_name: [c_char; 256],
    pub(crate) vendor_id: u32,
    pub(crate) vendor_name: [c_char; 256],
    pub(crate) subvendor_id: u32,
    pub(crate) device_id: u64,
    pub(crate) rev_id: u32,
    pub(crate) asic_serial: [c_char; 256],
    pub(crate) oam_id: u32,
    pub(crate) num_of_compute_units: u32,
    pub(crate) target_graphics_version: u64,
    pub(crate) subsystem_id: u32,
    pub(crate) reserved: [u32; 21],
}

/// `amdsmi_proc_info_t.engine_usage` (64 bytes): ns.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcEngineUsage {
    pub(crate) gfx: u64,
    pub(crate) enc: u64,
    pub(crate) reserved: [u32; 12],
}

/// `amdsmi_proc_info_t.memory_usage` (64 bytes): bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcMemoryUsage {
    pub(crate) gtt_mem: u64,
    pub(crate) cpu_mem: u64,
    pub(crate) vram_mem: u64,
    pub(crate) reserved: [u32; 10],
}

/// `amdsmi_proc_info_t` of ROCm 7 (704 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcInfo {
    pub(crate) name: [c_char; 256],
    pub(crate) pid: u32,
    pub(crate) mem: u64,
    pub(crate) engine_usage: ProcEngineUsage,
    pub(crate) memory_usage: ProcMemoryUsage,
    pub(crate) container_name: [c_char; 256],
    pub(crate) cu_occupancy: u32,
    pub(crate) reserved: [u32; 11],
}

/// `amdsmi_version_t` of ROCm 7 (24 bytes; ROCm 6's had a `year` first).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct AmdsmiVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) release: u32,
    pub(crate) build: *const c_char,
}

/// `rsmi_version_t` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RsmiVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) patch: u32,
    pub(crate) build: *const c_char,
}

/// `rsmi_process_info_t` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RsmiProcessInfo {
    pub(crate) process_id: u32,
    pub(crate) pasid: u32,
    pub(crate) vram_usage: u64,
    pub(crate) sdma_usage: u64,
    pub(crate) cu_occupancy: u32,
}
