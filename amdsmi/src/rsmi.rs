//! The implemented ROCm SMI entry points (`librocm_smi64.so`). Signatures follow
//! rocm_smi.h (5.2.3; unchanged for these calls through ROCm 7); every one runs
//! through [`export_rsmi!`], so a panic becomes `RSMI_STATUS_INTERNAL_EXCEPTION`,
//! never an unwind. Devices are addressed by index (`dv_ind`).

use std::collections::BTreeMap;
use std::ffi::c_char;

use crate::amdsmi::{PCI_VENDOR_AMD, VENDOR_NAME};
use crate::boundary::{export_rsmi, put, put_str, read, rsmi_status_text, Fail, Res, RsmiStatus};
use crate::format;
use crate::state::{self, Api, Device, Smi};
use crate::types::{RsmiProcessInfo, RsmiVersion};

/// `RSMI_MEM_TYPE_VRAM`, `_VIS_VRAM`, `_GTT`.
const MEM_TYPE_VRAM: u32 = 0;
const MEM_TYPE_VIS_VRAM: u32 = 1;
const MEM_TYPE_GTT: u32 = 2;
/// What `rsmi_version_get` reports: the rocm_smi.h whose ABI this follows.
const LIB_VERSION: (u32, u32, u32) = (5, 2, 3);

fn device(dv_ind: u32) -> Res<(&'static Smi, &'static Device)> {
    let smi = state::smi(Api::Rsmi)?;
    Ok((smi, smi.device_at(dv_ind)?))
}

fn memory_type(mem_type: u32) -> Res {
    match mem_type {
        MEM_TYPE_VRAM | MEM_TYPE_VIS_VRAM => Ok(()),
        MEM_TYPE_GTT => Err(Fail::NotSupported),
        _ => Err(Fail::Invalid),
    }
}

/// The tenant's processes on every device: pid → bytes held, summed over devices.
fn processes(smi: &Smi) -> Res<BTreeMap<u32, u64>> {
    let mut all = BTreeMap::new();
    for device in smi.devices.iter() {
        for (pid, bytes) in smi.usage(device)?.sessions {
            *all.entry(pid).or_insert(0u64) += bytes;
        }
    }
    Ok(all)
}

fn process_info(pid: u32, bytes: u64) -> RsmiProcessInfo {
    RsmiProcessInfo {
        process_id: pid,
        pasid: 0,
        vram_usage: bytes,
        sdma_usage: 0,
        cu_occupancy: 0,
    }
}

/// `rsmi_status_t rsmi_status_string(rsmi_status_t status, const char **status_string)`:
/// works before `rsmi_init`; INVALID_ARGS for a code that is not an `rsmi_status_t`.
#[no_mangle]
#[allow(unreachable_pub, clippy::missing_safety_doc)]
pub unsafe extern "C" fn rsmi_status_string(
    status: RsmiStatus,
    status_string: *mut *const c_char,
) -> RsmiStatus {
    crate::boundary::rsmi("rsmi_status_string", || {
        let text = rsmi_status_text(status).ok_or(Fail::Invalid)?;
        put(status_string, text.as_ptr())
    })
}

export_rsmi! {
    // ---- initialisation -------------------------------------------------------

    fn rsmi_init(_init_flags: u64) {
        state::initialise(Api::Rsmi)
    }

    fn rsmi_shut_down() {
        state::shutdown(Api::Rsmi)
    }

    fn rsmi_version_get(version: *mut RsmiVersion) {
        let (major, minor, patch) = LIB_VERSION;
        put(version, RsmiVersion { major, minor, patch, build: c"xpupool".as_ptr() })
    }

    /// RSMI_SW_COMP_DRIVER: there is no amdgpu driver here; the string names xpupool.
    fn rsmi_version_str_get(component: u32, ver_str: *mut c_char, len: u32) {
        state::smi(Api::Rsmi)?;
        if component != 0 {
            return Err(Fail::Invalid);
        }
        put_str(ver_str, len as usize, "xpupool")
    }

    // ---- identity -----------------------------------------------------------------

    fn rsmi_num_monitor_devices(num_devices: *mut u32) {
        put(num_devices, state::smi(Api::Rsmi)?.devices.len() as u32)
    }

    fn rsmi_dev_name_get(dv_ind: u32, name: *mut c_char, len: usize) {
        let (_, device) = device(dv_ind)?;
        put_str(name, len, &device.info.name)
    }

    fn rsmi_dev_vendor_name_get(dv_ind: u32, name: *mut c_char, len: usize) {
        device(dv_ind)?;
        put_str(name, len, VENDOR_NAME)
    }

    fn rsmi_dev_vendor_id_get(dv_ind: u32, id: *mut u16) {
        device(dv_ind)?;
        put(id, PCI_VENDOR_AMD as u16)
    }

    fn rsmi_dev_unique_id_get(dv_ind: u32, id: *mut u64) {
        let (_, device) = device(dv_ind)?;
        put(id, format::unique_id(&device.info.uuid))
    }

    fn rsmi_dev_serial_number_get(dv_ind: u32, serial_num: *mut c_char, len: u32) {
        let (_, device) = device(dv_ind)?;
        put_str(serial_num, len as usize, &format!("{:016x}", format::unique_id(&device.info.uuid)))
    }

    fn rsmi_dev_pci_id_get(dv_ind: u32, bdfid: *mut u64) {
        let (_, device) = device(dv_ind)?;
        put(bdfid, device.bdf.rsmi())
    }

    // ---- usage --------------------------------------------------------------------

    /// Bytes, as the tenant sees the device: its limit.
    fn rsmi_dev_memory_total_get(dv_ind: u32, mem_type: u32, total: *mut u64) {
        let (smi, device) = device(dv_ind)?;
        memory_type(mem_type)?;
        if total.is_null() {
            return Err(Fail::Invalid);
        }
        put(total, smi.memory(device)?.1)
    }

    /// Bytes the tenant's sessions hold on the device.
    fn rsmi_dev_memory_usage_get(dv_ind: u32, mem_type: u32, used: *mut u64) {
        let (smi, device) = device(dv_ind)?;
        memory_type(mem_type)?;
        if used.is_null() {
            return Err(Fail::Invalid);
        }
        put(used, smi.memory(device)?.0)
    }

    /// The device's utilisation over the last second (all tenants').
    fn rsmi_dev_busy_percent_get(dv_ind: u32, busy_percent: *mut u32) {
        let (smi, device) = device(dv_ind)?;
        if busy_percent.is_null() {
            return Err(Fail::Invalid);
        }
        put(busy_percent, smi.usage(device)?.utilization_percent.min(100))
    }

    /// The share of the tenant's memory in use on the device (as NVML's "memory").
    fn rsmi_dev_memory_busy_percent_get(dv_ind: u32, busy_percent: *mut u32) {
        let (smi, device) = device(dv_ind)?;
        if busy_percent.is_null() {
            return Err(Fail::Invalid);
        }
        let used = smi.usage(device)?.memory_used;
        let (_, total) = smi.memory(device)?;
        put(busy_percent, format::percent(used, total))
    }

    // ---- processes ----------------------------------------------------------------

    /// The tenant's processes holding memory on the pool's devices. NULL `procs`:
    /// only the count; otherwise `*num_items` in: capacity, out: written.
    fn rsmi_compute_process_info_get(procs: *mut RsmiProcessInfo, num_items: *mut u32) {
        let smi = state::smi(Api::Rsmi)?;
        let capacity = read(num_items)? as usize;
        let all = processes(smi)?;
        if procs.is_null() {
            return put(num_items, all.len() as u32);
        }
        let written = all.len().min(capacity);
        for (i, (&pid, &bytes)) in all.iter().take(written).enumerate() {
            // SAFETY: the caller's array holds `capacity` entries.
            put(unsafe { procs.add(i) }, process_info(pid, bytes))?;
        }
        put(num_items, written as u32)?;
        if written < all.len() {
            return Err(Fail::InsufficientSize);
        }
        Ok(())
    }

    fn rsmi_compute_process_info_by_pid_get(pid: u32, proc_: *mut RsmiProcessInfo) {
        let smi = state::smi(Api::Rsmi)?;
        let bytes = *processes(smi)?.get(&pid).ok_or(Fail::NotFound)?;
        put(proc_, process_info(pid, bytes))
    }

    /// The indices of the devices a process holds memory on. `*num_devices` in:
    /// the array's capacity; out: the number of devices.
    fn rsmi_compute_process_gpus_get(pid: u32, dv_indices: *mut u32, num_devices: *mut u32) {
        let smi = state::smi(Api::Rsmi)?;
        let capacity = read(num_devices)? as usize;
        let mut found = Vec::new();
        for device in smi.devices.iter() {
            if smi.usage(device)?.sessions.iter().any(|&(p, _)| p == pid) {
                found.push(device.index);
            }
        }
        if found.is_empty() {
            return Err(Fail::NotFound);
        }
        put(num_devices, found.len() as u32)?;
        if dv_indices.is_null() {
            return Ok(());
        }
        for (i, &index) in found.iter().take(capacity).enumerate() {
            // SAFETY: the caller's array holds `capacity` entries.
            put(unsafe { dv_indices.add(i) }, index)?;
        }
        if capacity < found.len() {
            return Err(Fail::InsufficientSize);
        }
        Ok(())
    }
}
