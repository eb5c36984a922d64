//! The implemented AMD SMI entry points (`libamd_smi.so`). Signatures follow
//! amdsmi.h of ROCm 7; every one runs through [`export_amdsmi!`], so a panic becomes
//! `AMDSMI_STATUS_INTERNAL_EXCEPTION`, never an unwind.

use std::ffi::{c_char, c_uint, c_void};

use crate::boundary::{
    amdsmi_status_text, c_chars, export_amdsmi, put, put_str, read, AmdsmiStatus, Fail, Res,
};
use crate::format;
use crate::state::{self, attr, Api, Device, Smi};
use crate::types::{
    AmdsmiVersion, AsicInfo, ClkInfo, EngineUsage, ProcEngineUsage, ProcInfo, ProcMemoryUsage,
    VramUsage,
};

/// `AMDSMI_PROCESSOR_TYPE_AMD_GPU`.
const PROCESSOR_TYPE_AMD_GPU: u32 = 1;
/// PCI vendor id of AMD.
pub(crate) const PCI_VENDOR_AMD: u32 = 0x1002;
/// What the vendor-name queries answer: the devices are the pool's, whatever they are.
pub(crate) const VENDOR_NAME: &str = "xpupool";
/// `AMDSMI_MEM_TYPE_VRAM`, `_VIS_VRAM`.
const MEM_TYPE_VRAM: u32 = 0;
const MEM_TYPE_VIS_VRAM: u32 = 1;
/// `AMDSMI_CLK_TYPE_GFX` (= `_SYS`), `AMDSMI_CLK_TYPE_MEM`.
const CLK_TYPE_GFX: u32 = 0;
const CLK_TYPE_MEM: u32 = 4;
/// What `amdsmi_get_lib_version` reports: amd-smi-lib 26.0 (ROCm 7.0).
const LIB_VERSION: (u32, u32, u32) = (26, 0, 0);

fn gpu(handle: *mut c_void) -> Res<(&'static Smi, &'static Device)> {
    let smi = state::smi(Api::Amdsmi)?;
    Ok((smi, smi.device(handle)?))
}

/// Fills `handles` (capacity `*count`) and writes the number available to `*count`:
/// with NULL `handles` (or a zero count) only the count, as the header describes.
fn fill_handles(count: *mut u32, handles: *mut *mut c_void, all: &[*mut c_void]) -> Res {
    let capacity = read(count)? as usize;
    put(count, all.len() as u32)?;
    if handles.is_null() || capacity == 0 {
        return Ok(());
    }
    for (i, &handle) in all.iter().take(capacity).enumerate() {
        // SAFETY: the caller's array holds `capacity` handles.
        put(unsafe { handles.add(i) }, handle)?;
    }
    if capacity < all.len() {
        return Err(Fail::InsufficientSize);
    }
    Ok(())
}

fn memory_type(mem_type: u32) -> Res {
    match mem_type {
        MEM_TYPE_VRAM | MEM_TYPE_VIS_VRAM => Ok(()),
        // GTT (system memory the GPU maps): the pool has none to report.
        2 => Err(Fail::NotSupported),
        _ => Err(Fail::Invalid),
    }
}

/// The command of a local process (from /proc), empty when it is not visible here.
pub(crate) fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

pub(crate) fn asic_info(device: &Device) -> AsicInfo {
    let compute_units = device
        .attribute(attr::MULTIPROCESSOR_COUNT)
        .filter(|&n| n > 0)
        .map_or(u32::MAX, |n| n as u32);
    AsicInfo {
        market_name: c_chars(&device.info.name),
        vendor_id: PCI_VENDOR_AMD,
        vendor_name: c_chars(VENDOR_NAME),
        subvendor_id: u32::MAX,
        // The server reports no PCI product id.
        device_id: 0,
        rev_id: 0,
        asic_serial: c_chars(&format::asic_serial(&device.info.uuid)),
        oam_id: u32::MAX,
        num_of_compute_units: compute_units,
        target_graphics_version: u64::MAX,
        subsystem_id: u32::MAX,
        reserved: [0; 21],
    }
}

/// `amdsmi_status_code_to_string(amdsmi_status_t status, const char **status_string)`.
#[no_mangle]
#[allow(unreachable_pub, clippy::missing_safety_doc)]
pub unsafe extern "C" fn amdsmi_status_code_to_string(
    status: AmdsmiStatus,
    status_string: *mut *const c_char,
) -> AmdsmiStatus {
    crate::boundary::amdsmi("amdsmi_status_code_to_string", || {
        put(status_string, amdsmi_status_text(status).as_ptr())
    })
}

export_amdsmi! {
    // ---- initialisation -------------------------------------------------------

    /// Any flags: the pool's devices are GPUs, whichever kinds are asked for.
    fn amdsmi_init(_flags: u64) {
        state::initialise(Api::Amdsmi)
    }

    fn amdsmi_shut_down() {
        state::shutdown(Api::Amdsmi)
    }

    fn amdsmi_get_lib_version(version: *mut AmdsmiVersion) {
        let (major, minor, release) = LIB_VERSION;
        put(version, AmdsmiVersion { major, minor, release, build: c"xpupool".as_ptr() })
    }

    // ---- enumeration -----------------------------------------------------------

    fn amdsmi_get_socket_handles(count: *mut u32, handles: *mut *mut c_void) {
        let smi = state::smi(Api::Amdsmi)?;
        let all: Vec<_> = smi.sockets.iter().map(|s| s.handle()).collect();
        fill_handles(count, handles, &all)
    }

    /// The socket's name: its device's BDF, as amd-smi names a GPU's socket.
    fn amdsmi_get_socket_info(socket: *mut c_void, len: usize, name: *mut c_char) {
        let smi = state::smi(Api::Amdsmi)?;
        let socket = smi.socket(socket)?;
        put_str(name, len, &smi.device_at(socket.index)?.bdf.text())
    }

    fn amdsmi_get_processor_handles(socket: *mut c_void, count: *mut u32, handles: *mut *mut c_void) {
        let smi = state::smi(Api::Amdsmi)?;
        let all = if socket.is_null() {
            // NULL: every processor of every socket.
            smi.devices.iter().map(|d| d.handle()).collect::<Vec<_>>()
        } else {
            vec![smi.device_at(smi.socket(socket)?.index)?.handle()]
        };
        fill_handles(count, handles, &all)
    }

    fn amdsmi_get_processor_handles_by_type(
        socket: *mut c_void,
        processor_type: u32,
        handles: *mut *mut c_void,
        count: *mut u32,
    ) {
        let smi = state::smi(Api::Amdsmi)?;
        let mut all = if socket.is_null() {
            smi.devices.iter().map(|d| d.handle()).collect::<Vec<_>>()
        } else {
            vec![smi.device_at(smi.socket(socket)?.index)?.handle()]
        };
        if processor_type != PROCESSOR_TYPE_AMD_GPU {
            all.clear();
        }
        fill_handles(count, handles, &all)
    }

    fn amdsmi_get_processor_type(handle: *mut c_void, processor_type: *mut u32) {
        gpu(handle)?;
        put(processor_type, PROCESSOR_TYPE_AMD_GPU)
    }

    fn amdsmi_get_processor_handle_from_bdf(bdf: u64, handle: *mut *mut c_void) {
        let smi = state::smi(Api::Amdsmi)?;
        let device = smi
            .devices
            .iter()
            .find(|d| d.bdf.amdsmi() == bdf)
            .ok_or(Fail::NotFound)?;
        put(handle, device.handle())
    }

    // ---- identity ---------------------------------------------------------------

    fn amdsmi_get_gpu_device_bdf(handle: *mut c_void, bdf: *mut u64) {
        let (_, device) = gpu(handle)?;
        put(bdf, device.bdf.amdsmi())
    }

    fn amdsmi_get_gpu_bdf_id(handle: *mut c_void, bdfid: *mut u64) {
        let (_, device) = gpu(handle)?;
        put(bdfid, device.bdf.rsmi())
    }

    /// `*uuid_length` in: the buffer's size; out: the UUID's length.
    fn amdsmi_get_gpu_device_uuid(handle: *mut c_void, uuid_length: *mut c_uint, uuid: *mut c_char) {
        let (_, device) = gpu(handle)?;
        let capacity = read(uuid_length)? as usize;
        let text = format::uuid_text(&device.info.uuid);
        put_str(uuid, capacity, &text)?;
        put(uuid_length, text.len() as c_uint)
    }

    fn amdsmi_get_gpu_vendor_name(handle: *mut c_void, name: *mut c_char, len: usize) {
        gpu(handle)?;
        put_str(name, len, VENDOR_NAME)
    }

    /// Name (`market_name`), serial (from the UUID), compute units; PCI product,
    /// revision and gfx target are not known here.
    fn amdsmi_get_gpu_asic_info(handle: *mut c_void, info: *mut AsicInfo) {
        let (_, device) = gpu(handle)?;
        put(info, asic_info(device))
    }

    // ---- usage --------------------------------------------------------------------

    /// gfx: the device's utilisation over the last second (all tenants'); umc: the
    /// share of the tenant's memory in use on it (as the NVML stand-in's "memory").
    fn amdsmi_get_gpu_activity(handle: *mut c_void, info: *mut EngineUsage) {
        let (smi, device) = gpu(handle)?;
        if info.is_null() {
            return Err(Fail::Invalid);
        }
        let usage = smi.usage(device)?;
        let (_, total) = smi.memory(device)?;
        put(info, EngineUsage {
            gfx_activity: usage.utilization_percent.min(100),
            umc_activity: format::percent(usage.memory_used, total),
            mm_activity: u32::MAX,
            reserved: [0; 13],
        })
    }

    /// MB, as the tenant sees the device: total is its limit.
    fn amdsmi_get_gpu_vram_usage(handle: *mut c_void, info: *mut VramUsage) {
        let (smi, device) = gpu(handle)?;
        if info.is_null() {
            return Err(Fail::Invalid);
        }
        let (used, total) = smi.memory(device)?;
        put(info, VramUsage { vram_total: format::mib(total), vram_used: format::mib(used), reserved: [0; 2] })
    }

    fn amdsmi_get_gpu_memory_total(handle: *mut c_void, mem_type: u32, total: *mut u64) {
        let (smi, device) = gpu(handle)?;
        memory_type(mem_type)?;
        if total.is_null() {
            return Err(Fail::Invalid);
        }
        put(total, smi.memory(device)?.1)
    }

    fn amdsmi_get_gpu_memory_usage(handle: *mut c_void, mem_type: u32, used: *mut u64) {
        let (smi, device) = gpu(handle)?;
        memory_type(mem_type)?;
        if used.is_null() {
            return Err(Fail::Invalid);
        }
        put(used, smi.memory(device)?.0)
    }

    /// The tenant's processes holding memory on the device (other tenants' are not
    /// theirs to see). `*max_processes` in: the list's capacity (0: only count);
    /// out: the number written, or all of them when they did not fit
    /// (OUT_OF_RESOURCES).
    fn amdsmi_get_gpu_process_list(handle: *mut c_void, max_processes: *mut u32, list: *mut ProcInfo) {
        let (smi, device) = gpu(handle)?;
        let capacity = read(max_processes)? as usize;
        let sessions = smi.usage(device)?.sessions;
        if capacity == 0 || list.is_null() {
            return put(max_processes, sessions.len() as u32);
        }
        let written = sessions.len().min(capacity);
        for (i, &(pid, bytes)) in sessions.iter().take(written).enumerate() {
            let info = ProcInfo {
                name: c_chars(&process_name(pid)),
                pid,
                mem: bytes,
                engine_usage: ProcEngineUsage { gfx: 0, enc: 0, reserved: [0; 12] },
                memory_usage: ProcMemoryUsage { gtt_mem: 0, cpu_mem: 0, vram_mem: bytes, reserved: [0; 10] },
                container_name: [0; 256],
                cu_occupancy: u32::MAX,
                reserved: [0; 11],
            };
            // SAFETY: the caller's list holds `capacity` entries.
            put(unsafe { list.add(i) }, info)?;
        }
        if written < sessions.len() {
            put(max_processes, sessions.len() as u32)?;
            return Err(Fail::OutOfResources);
        }
        put(max_processes, written as u32)
    }

    /// GFX and MEM clocks (MHz) from the device's CUDA clock-rate attributes.
    fn amdsmi_get_clock_info(handle: *mut c_void, clk_type: u32, info: *mut ClkInfo) {
        let (_, device) = gpu(handle)?;
        let khz = match clk_type {
            CLK_TYPE_GFX => device.attribute(attr::CLOCK_RATE_KHZ),
            CLK_TYPE_MEM => device.attribute(attr::MEMORY_CLOCK_RATE_KHZ),
            1..=9 => None,
            _ => return Err(Fail::Invalid),
        };
        let mhz = khz.filter(|&k| k > 0).ok_or(Fail::NotSupported)? as u32 / 1000;
        put(info, ClkInfo {
            clk: mhz,
            min_clk: mhz,
            max_clk: mhz,
            clk_locked: 0,
            clk_deep_sleep: 0,
            reserved: [0; 4],
        })
    }
}
