//! The C structures of NVML's ABI that this library fills (layouts from nvml.h, as
//! pynvml's ctypes definitions restate them).

use std::ffi::c_char;

/// `nvmlMemory_t` (`nvmlDeviceGetMemoryInfo`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Memory {
    pub(crate) total: u64,
    pub(crate) free: u64,
    pub(crate) used: u64,
}

/// `nvmlMemory_v2_t` (`nvmlDeviceGetMemoryInfo_v2`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemoryV2 {
    pub(crate) version: u32,
    pub(crate) total: u64,
    pub(crate) reserved: u64,
    pub(crate) free: u64,
    pub(crate) used: u64,
}

/// `nvmlMemory_v2`: `sizeof(nvmlMemory_v2_t) | 2 << 24`.
pub(crate) const MEMORY_V2_VERSION: u32 = size_of::<MemoryV2>() as u32 | 2 << 24;

/// `nvmlPciInfo_t` since NVML 9 (`nvmlDeviceGetPciInfo_v3`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct PciInfo {
    pub(crate) bus_id_legacy: [c_char; 16],
    pub(crate) domain: u32,
    pub(crate) bus: u32,
    pub(crate) device: u32,
    /// `device id << 16 | vendor id`.
    pub(crate) pci_device_id: u32,
    pub(crate) pci_sub_system_id: u32,
    pub(crate) bus_id: [c_char; 32],
}

/// The `nvmlPciInfo_t` older callers of `nvmlDeviceGetPciInfo` / `_v2` were built
/// with: the same first 36 bytes, then four reserved words.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct PciInfoLegacy {
    pub(crate) bus_id: [c_char; 16],
    pub(crate) domain: u32,
    pub(crate) bus: u32,
    pub(crate) device: u32,
    pub(crate) pci_device_id: u32,
    pub(crate) pci_sub_system_id: u32,
    pub(crate) reserved: [u32; 4],
}

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Utilization {
    pub(crate) gpu: u32,
    pub(crate) memory: u32,
}

/// `nvmlProcessInfo_v1_t` (the unversioned `nvmlDevice*RunningProcesses`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessInfoV1 {
    pub(crate) pid: u32,
    pub(crate) used_gpu_memory: u64,
}

/// `nvmlProcessInfo_v2_t`, which is also `nvmlProcessInfo_t` (`_v2` and `_v3` calls).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessInfo {
    pub(crate) pid: u32,
    pub(crate) used_gpu_memory: u64,
    pub(crate) gpu_instance_id: u32,
    pub(crate) compute_instance_id: u32,
}

/// Fills a fixed C char array with `text` and NUL padding (truncating to fit).
pub(crate) fn c_chars<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (slot, byte) in out.iter_mut().zip(text.bytes().take(N - 1)) {
        *slot = byte as c_char;
    }
    out
}
