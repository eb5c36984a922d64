//! The implemented NVML entry points. Signatures follow nvml.h; every one runs
//! through [`export!`], so a panic becomes `NVML_ERROR_UNKNOWN`, never an unwind.

use std::ffi::{c_char, c_int, c_uint, CStr};

use crate::boundary::{
    c_str, error_string, export, put, put_str, NvmlDevice, NvmlReturn, Res,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH, NVML_ERROR_INSUFFICIENT_SIZE,
    NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_FOUND, NVML_ERROR_NOT_SUPPORTED,
};
use crate::format::{self, PciAddress};
use crate::state::{self, attr, Device, Nvml};
use crate::types::{
    c_chars, Memory, MemoryV2, PciInfo, PciInfoLegacy, ProcessInfo, ProcessInfoV1, Utilization,
    MEMORY_V2_VERSION,
};

/// PCI vendor id of NVIDIA, the low half of `pciDeviceId`.
const PCI_VENDOR_NVIDIA: u32 = 0x10de;
/// `NVML_BRAND_NVIDIA`.
const NVML_BRAND_NVIDIA: c_uint = 14;
/// `NVML_VALUE_NOT_AVAILABLE` as an `unsigned int`: the GPU / compute instance of a
/// process on a GPU without MIG.
const NOT_AVAILABLE_U32: u32 = u32::MAX;

/// The library and the device behind `handle`.
fn device(handle: NvmlDevice) -> Res<(&'static Nvml, &'static Device)> {
    let nvml = state::nvml()?;
    Ok((nvml, nvml.device(handle)?))
}

fn attribute(device: &Device, attr: u32) -> Res<i32> {
    device.attribute(attr).ok_or(NVML_ERROR_NOT_SUPPORTED)
}

fn device_count() -> Res<c_uint> {
    Ok(state::nvml()?.devices.len() as c_uint)
}

fn handle_by_index(index: c_uint, out: *mut NvmlDevice) -> Res {
    let nvml = state::nvml()?;
    let device = nvml
        .devices
        .get(index as usize)
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    put(out, device.handle())
}

fn handle_by_pci_bus_id(bus_id: *const c_char, out: *mut NvmlDevice) -> Res {
    let nvml = state::nvml()?;
    let wanted = PciAddress::parse(c_str(bus_id)?).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    let device = nvml
        .devices
        .iter()
        .find(|d| d.pci == wanted)
        .ok_or(NVML_ERROR_NOT_FOUND)?;
    put(out, device.handle())
}

/// The `_v3` structure: both bus id forms.
fn pci_info(device: &Device) -> PciInfo {
    PciInfo {
        bus_id_legacy: c_chars(&device.pci.bus_id_legacy()),
        domain: device.pci.domain,
        bus: device.pci.bus,
        device: device.pci.device,
        // The server reports no PCI product id; only the vendor half is known.
        pci_device_id: PCI_VENDOR_NVIDIA,
        pci_sub_system_id: 0,
        bus_id: c_chars(&device.pci.bus_id()),
    }
}

/// The plain and `_v2` calls write only the 52 bytes callers built against older
/// headers have (legacy bus id first, then four reserved words).
fn pci_info_legacy(handle: NvmlDevice, out: *mut PciInfo) -> Res {
    let (_, device) = device(handle)?;
    let info = pci_info(device);
    put(
        out.cast::<PciInfoLegacy>(),
        PciInfoLegacy {
            bus_id: info.bus_id_legacy,
            domain: info.domain,
            bus: info.bus,
            device: info.device,
            pci_device_id: info.pci_device_id,
            pci_sub_system_id: info.pci_sub_system_id,
            reserved: [0; 4],
        },
    )
}

/// The tenant's processes that hold memory on the device, each with what its
/// session holds there as the server's ledger charges it (other tenants' are
/// not theirs to see).
fn running_processes<T>(
    handle: NvmlDevice,
    count: *mut c_uint,
    infos: *mut T,
    make: impl Fn(u32, u64) -> T,
) -> Res {
    let (nvml, device) = device(handle)?;
    if count.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null; the API makes it an in/out unsigned int.
    let capacity = unsafe { count.read_unaligned() } as usize;
    let sessions = nvml.usage(device)?.sessions;
    put(count, sessions.len() as c_uint)?;
    if sessions.is_empty() {
        return Ok(());
    }
    if infos.is_null() || capacity < sessions.len() {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (i, &(pid, bytes)) in sessions.iter().enumerate() {
        // SAFETY: the caller's array holds `capacity` entries, checked above.
        put(unsafe { infos.add(i) }, make(pid, bytes))?;
    }
    Ok(())
}

/// No processes (graphics and MPS lists: the pool runs neither).
fn no_processes(handle: NvmlDevice, count: *mut c_uint) -> Res {
    device(handle)?;
    put(count, 0)
}

fn clock_mhz(device: &Device, clock_type: c_uint) -> Res<c_uint> {
    let khz = match clock_type {
        // NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM
        0 | 1 => attribute(device, attr::CLOCK_RATE_KHZ)?,
        // NVML_CLOCK_MEM
        2 => attribute(device, attr::MEMORY_CLOCK_RATE_KHZ)?,
        // NVML_CLOCK_VIDEO has no CUDA attribute.
        3 => return Err(NVML_ERROR_NOT_SUPPORTED),
        _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
    };
    if khz <= 0 {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(khz as c_uint / 1000)
}

/// `const char *nvmlErrorString(nvmlReturn_t result)`.
#[no_mangle]
#[allow(unreachable_pub)]
pub extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    error_string(result).as_ptr()
}

export! {
    // ---- initialisation -------------------------------------------------------

    fn nvmlInit_v2() {
        state::initialise()
    }

    fn nvmlInit() {
        state::initialise()
    }

    /// Flags (`NVML_INIT_FLAG_NO_GPUS`, `_NO_ATTACH`) change nothing here.
    fn nvmlInitWithFlags(_flags: c_uint) {
        state::initialise()
    }

    fn nvmlShutdown() {
        state::shutdown()
    }

    // ---- system queries -------------------------------------------------------

    fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) {
        put_str(version, length, &format::driver_version(state::nvml()?.driver_version))
    }

    fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) {
        put_str(version, length, &format::nvml_version(state::nvml()?.driver_version))
    }

    fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) {
        put(version, state::nvml()?.driver_version)
    }

    fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) {
        put(version, state::nvml()?.driver_version)
    }

    /// The command of a process on this machine (from /proc).
    fn nvmlSystemGetProcessName(pid: c_uint, name: *mut c_char, length: c_uint) {
        state::nvml()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| NVML_ERROR_NOT_FOUND)?;
        let first = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let text = if first.is_empty() {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).map_err(|_| NVML_ERROR_NOT_FOUND)?
        } else {
            String::from_utf8_lossy(first).into_owned()
        };
        put_str(name, length, text.trim_end())
    }

    // ---- device enumeration ---------------------------------------------------

    fn nvmlDeviceGetCount_v2(count: *mut c_uint) {
        put(count, device_count()?)
    }

    fn nvmlDeviceGetCount(count: *mut c_uint) {
        put(count, device_count()?)
    }

    fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, out: *mut NvmlDevice) {
        handle_by_index(index, out)
    }

    fn nvmlDeviceGetHandleByIndex(index: c_uint, out: *mut NvmlDevice) {
        handle_by_index(index, out)
    }

    fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, out: *mut NvmlDevice) {
        let nvml = state::nvml()?;
        let wanted = c_str(uuid)?.trim();
        let device = nvml
            .devices
            .iter()
            .find(|d| d.uuid.eq_ignore_ascii_case(wanted))
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        put(out, device.handle())
    }

    fn nvmlDeviceGetHandleByPciBusId_v2(bus_id: *const c_char, out: *mut NvmlDevice) {
        handle_by_pci_bus_id(bus_id, out)
    }

    fn nvmlDeviceGetHandleByPciBusId(bus_id: *const c_char, out: *mut NvmlDevice) {
        handle_by_pci_bus_id(bus_id, out)
    }

    // ---- device identity ------------------------------------------------------

    fn nvmlDeviceGetName(handle: NvmlDevice, name: *mut c_char, length: c_uint) {
        let (_, device) = device(handle)?;
        put_str(name, length, &device.info.name)
    }

    fn nvmlDeviceGetUUID(handle: NvmlDevice, uuid: *mut c_char, length: c_uint) {
        let (_, device) = device(handle)?;
        put_str(uuid, length, &device.uuid)
    }

    fn nvmlDeviceGetIndex(handle: NvmlDevice, index: *mut c_uint) {
        let (_, device) = device(handle)?;
        put(index, device.index)
    }

    /// There is no /dev/nvidiaN here; the minor number is the index.
    fn nvmlDeviceGetMinorNumber(handle: NvmlDevice, minor: *mut c_uint) {
        let (_, device) = device(handle)?;
        put(minor, device.index)
    }

    fn nvmlDeviceGetBrand(handle: NvmlDevice, brand: *mut c_uint) {
        device(handle)?;
        put(brand, NVML_BRAND_NVIDIA)
    }

    fn nvmlDeviceGetMultiGpuBoard(handle: NvmlDevice, multi: *mut c_uint) {
        device(handle)?;
        put(multi, 0)
    }

    fn nvmlDeviceGetPciInfo_v3(handle: NvmlDevice, pci: *mut PciInfo) {
        let (_, device) = device(handle)?;
        put(pci, pci_info(device))
    }

    fn nvmlDeviceGetPciInfo_v2(handle: NvmlDevice, pci: *mut PciInfo) {
        pci_info_legacy(handle, pci)
    }

    fn nvmlDeviceGetPciInfo(handle: NvmlDevice, pci: *mut PciInfo) {
        pci_info_legacy(handle, pci)
    }

    fn nvmlDeviceGetCudaComputeCapability(handle: NvmlDevice, major: *mut c_int, minor: *mut c_int) {
        let (_, device) = device(handle)?;
        let (ma, mi) = (
            attribute(device, attr::COMPUTE_CAPABILITY_MAJOR)?,
            attribute(device, attr::COMPUTE_CAPABILITY_MINOR)?,
        );
        if major.is_null() || minor.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        put(major, ma)?;
        put(minor, mi)
    }

    fn nvmlDeviceGetMemoryBusWidth(handle: NvmlDevice, width: *mut c_uint) {
        let (_, device) = device(handle)?;
        put(width, attribute(device, attr::GLOBAL_MEMORY_BUS_WIDTH)? as c_uint)
    }

    fn nvmlDeviceGetClockInfo(handle: NvmlDevice, clock_type: c_uint, mhz: *mut c_uint) {
        let (_, device) = device(handle)?;
        put(mhz, clock_mhz(device, clock_type)?)
    }

    /// The server reports one (rated) clock per domain, so current and max agree.
    fn nvmlDeviceGetMaxClockInfo(handle: NvmlDevice, clock_type: c_uint, mhz: *mut c_uint) {
        let (_, device) = device(handle)?;
        put(mhz, clock_mhz(device, clock_type)?)
    }

    /// `NVML_COMPUTEMODE_DEFAULT`: any number of contexts (the pool shares devices).
    fn nvmlDeviceGetComputeMode(handle: NvmlDevice, mode: *mut c_uint) {
        device(handle)?;
        put(mode, 0)
    }

    /// `NVML_GPU_VIRTUALIZATION_MODE_NONE`.
    fn nvmlDeviceGetVirtualizationMode(handle: NvmlDevice, mode: *mut c_uint) {
        device(handle)?;
        put(mode, 0)
    }

    /// No display is attached to a pooled device (`NVML_FEATURE_DISABLED`).
    fn nvmlDeviceGetDisplayMode(handle: NvmlDevice, mode: *mut c_uint) {
        device(handle)?;
        put(mode, 0)
    }

    fn nvmlDeviceGetDisplayActive(handle: NvmlDevice, active: *mut c_uint) {
        device(handle)?;
        put(active, 0)
    }

    // ---- memory and utilisation -----------------------------------------------

    fn nvmlDeviceGetMemoryInfo(handle: NvmlDevice, memory: *mut Memory) {
        let (nvml, device) = device(handle)?;
        if memory.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let (free, total) = nvml.memory(device)?;
        put(memory, Memory { total, free, used: total - free })
    }

    fn nvmlDeviceGetMemoryInfo_v2(handle: NvmlDevice, memory: *mut MemoryV2) {
        let (nvml, device) = device(handle)?;
        if memory.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null; the caller sets `version` before the call.
        let version = unsafe { memory.cast::<u32>().read_unaligned() };
        if version != MEMORY_V2_VERSION {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let (free, total) = nvml.memory(device)?;
        put(
            memory,
            MemoryV2 { version, total, reserved: 0, free, used: total - free },
        )
    }

    /// The percent of the last second the device ran kernels (any tenant's), as
    /// the server's scheduler measures it; memory: the percent of the device's
    /// memory in use.
    fn nvmlDeviceGetUtilizationRates(handle: NvmlDevice, utilization: *mut Utilization) {
        let (nvml, device) = device(handle)?;
        let usage = nvml.usage(device)?;
        let (_, total) = nvml.memory(device)?;
        let memory = (usage.memory_used.saturating_mul(100) / total.max(1)).min(100) as c_uint;
        put(utilization, Utilization { gpu: usage.utilization_percent.min(100), memory })
    }

    // ---- processes ------------------------------------------------------------

    fn nvmlDeviceGetComputeRunningProcesses_v3(handle: NvmlDevice, count: *mut c_uint, infos: *mut ProcessInfo) {
        running_processes(handle, count, infos, process_info)
    }

    fn nvmlDeviceGetComputeRunningProcesses_v2(handle: NvmlDevice, count: *mut c_uint, infos: *mut ProcessInfo) {
        running_processes(handle, count, infos, process_info)
    }

    fn nvmlDeviceGetComputeRunningProcesses(handle: NvmlDevice, count: *mut c_uint, infos: *mut ProcessInfoV1) {
        running_processes(handle, count, infos, |pid, used_gpu_memory| ProcessInfoV1 { pid, used_gpu_memory })
    }

    fn nvmlDeviceGetGraphicsRunningProcesses_v3(handle: NvmlDevice, count: *mut c_uint, _infos: *mut ProcessInfo) {
        no_processes(handle, count)
    }

    fn nvmlDeviceGetGraphicsRunningProcesses_v2(handle: NvmlDevice, count: *mut c_uint, _infos: *mut ProcessInfo) {
        no_processes(handle, count)
    }

    fn nvmlDeviceGetGraphicsRunningProcesses(handle: NvmlDevice, count: *mut c_uint, _infos: *mut ProcessInfoV1) {
        no_processes(handle, count)
    }

    fn nvmlDeviceGetMPSComputeRunningProcesses_v3(handle: NvmlDevice, count: *mut c_uint, _infos: *mut ProcessInfo) {
        no_processes(handle, count)
    }

    fn nvmlDeviceGetMPSComputeRunningProcesses_v2(handle: NvmlDevice, count: *mut c_uint, _infos: *mut ProcessInfo) {
        no_processes(handle, count)
    }

    fn nvmlDeviceGetMPSComputeRunningProcesses(handle: NvmlDevice, count: *mut c_uint, _infos: *mut ProcessInfoV1) {
        no_processes(handle, count)
    }

    // ---- deliberately NOT_SUPPORTED (quietly: real NVML answers the same on
    //      devices without the sensor or feature) ----------------------------------

    /// The pool does not report sensors.
    fn nvmlDeviceGetTemperature(handle: NvmlDevice, _sensor: c_uint, _temp: *mut c_uint) {
        device(handle)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    }

    fn nvmlDeviceGetPowerUsage(handle: NvmlDevice, _milliwatts: *mut c_uint) {
        device(handle)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    }

    fn nvmlDeviceGetFanSpeed(handle: NvmlDevice, _speed: *mut c_uint) {
        device(handle)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    }

    fn nvmlDeviceGetFanSpeed_v2(handle: NvmlDevice, _fan: c_uint, _speed: *mut c_uint) {
        device(handle)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    }

    fn nvmlDeviceGetTotalEnergyConsumption(handle: NvmlDevice, _energy: *mut u64) {
        device(handle)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    }

    /// What NVML answers on a GPU without MIG.
    fn nvmlDeviceGetMigMode(handle: NvmlDevice, _current: *mut c_uint, _pending: *mut c_uint) {
        device(handle)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    }

    /// What NVML answers for a GPU that is not its own NUMA node (PyTorch expects it).
    fn nvmlDeviceGetNumaNodeId(handle: NvmlDevice, _node: *mut c_uint) {
        device(handle)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    }
}

fn process_info(pid: u32, used_gpu_memory: u64) -> ProcessInfo {
    ProcessInfo {
        pid,
        used_gpu_memory,
        gpu_instance_id: NOT_AVAILABLE_U32,
        compute_instance_id: NOT_AVAILABLE_U32,
    }
}

/// `nvmlErrorString` as a Rust string (tests).
#[allow(dead_code)]
pub(crate) fn error_text(code: NvmlReturn) -> &'static str {
    // SAFETY: error_string returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(nvmlErrorString(code)) }
        .to_str()
        .unwrap_or("")
}
