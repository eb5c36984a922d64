//! Initialisation, versions, device queries, error strings, `cuGetProcAddress` and
//! `cuGetExportTable`. Device facts come from the server's welcome and are answered
//! locally: they never change during a session.

use std::ffi::{c_char, c_int, c_uint, c_void};

use xpupool_cuda_types::*;

use crate::boundary::{c_str, export, put, Res};
use crate::generated::errors::ERRORS;
use crate::procaddr::{lookup, ProcStatus};
use crate::state::{driver, initialise};

/// The CUDA version this driver implements (`cuDriverGetVersion`): CUDA 13.2,
/// the headers the shim's ABI table was generated from.
pub(crate) const DRIVER_VERSION: c_int = 13020;

fn pci_bus_id(ordinal: CUdevice) -> Res<String> {
    let d = driver()?;
    let domain = d.attribute(ordinal, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?;
    let bus = d.attribute(ordinal, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?;
    let device = d.attribute(ordinal, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?;
    Ok(format!("{domain:08x}:{bus:02x}:{device:02x}.0"))
}

/// Copies `text` into a caller's buffer of `len` bytes, NUL-terminated, truncating.
fn copy_c_string(text: &str, out: *mut c_char, len: c_int) -> Res {
    if out.is_null() || len <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let n = text.len().min(len as usize - 1);
    // SAFETY: the caller promises `len` writable bytes at `out`.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), n);
        *out.add(n) = 0;
    }
    Ok(())
}

fn error_entry(code: CUresult) -> Res<&'static (u32, &'static str, &'static str)> {
    ERRORS
        .iter()
        .find(|e| e.0 == code)
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

fn proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut CUdriverProcAddressQueryResult,
) -> Res {
    let set_status = |s: CUdriverProcAddressQueryResult| {
        if !status.is_null() {
            // SAFETY: the caller passes a place for the status when non-null.
            unsafe { *status = s };
        }
    };
    put(pfn, std::ptr::null_mut())?;
    let name = c_str(symbol)?;
    if version > DRIVER_VERSION {
        set_status(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match lookup(name, version, flags) {
        ProcStatus::Found(symbol) => {
            let index = crate::symtab::SYMTAB
                .binary_search_by(|(n, _)| n.cmp(&symbol))
                .map_err(|_| CUDA_ERROR_NOT_FOUND)?;
            put(pfn, crate::symtab::SYMTAB[index].1 as *mut c_void)?;
            set_status(CU_GET_PROC_ADDRESS_SUCCESS);
            Ok(())
        }
        ProcStatus::SymbolNotFound => {
            set_status(CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
            Err(CUDA_ERROR_NOT_FOUND)
        }
        ProcStatus::VersionNotSufficient => {
            set_status(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
            Err(CUDA_ERROR_NOT_FOUND)
        }
    }
}

export! {
    fn cuInit(flags: c_uint) {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        initialise().map(|_| ())
    }

    fn cuDriverGetVersion(version: *mut c_int) {
        put(version, DRIVER_VERSION)
    }

    fn cuDeviceGetCount(count: *mut c_int) {
        put(count, driver()?.conn.welcome.devices.len() as c_int)
    }

    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) {
        driver()?.device(ordinal)?;
        put(device, ordinal)
    }

    fn cuDeviceGetName(name: *mut c_char, len: c_int, device: CUdevice) {
        copy_c_string(&driver()?.device(device)?.name, name, len)
    }

    fn cuDeviceGetUuid(uuid: *mut CUuuid, device: CUdevice) {
        let bytes = driver()?.device(device)?.uuid;
        put(uuid, CUuuid { bytes: bytes.map(|b| b as c_char) })
    }

    fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, device: CUdevice) {
        let bytes = driver()?.device(device)?.uuid;
        put(uuid, CUuuid { bytes: bytes.map(|b| b as c_char) })
    }

    fn cuDeviceTotalMem_v2(bytes: *mut usize, device: CUdevice) {
        put(bytes, driver()?.device(device)?.total_memory as usize)
    }

    fn cuDeviceTotalMem(bytes: *mut c_uint, device: CUdevice) {
        put(bytes, driver()?.device(device)?.total_memory.min(u32::MAX as u64) as c_uint)
    }

    fn cuDeviceGetAttribute(value: *mut c_int, attribute: CUdevice_attribute, device: CUdevice) {
        if attribute == 0 || attribute >= CU_DEVICE_ATTRIBUTE_MAX {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(value, driver()?.attribute(device, attribute)?)
    }

    fn cuDeviceComputeCapability(major: *mut c_int, minor: *mut c_int, device: CUdevice) {
        let d = driver()?;
        put(major, d.attribute(device, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?)?;
        put(minor, d.attribute(device, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?)
    }

    fn cuDeviceGetProperties(props: *mut CUdevprop, device: CUdevice) {
        let d = driver()?;
        let a = |attr| d.attribute(device, attr);
        put(props, CUdevprop {
            maxThreadsPerBlock: a(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            maxThreadsDim: [a(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X)?, a(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y)?, a(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z)?],
            maxGridSize: [a(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)?, a(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?, a(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)?],
            sharedMemPerBlock: a(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?,
            totalConstantMemory: a(CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY)?,
            SIMDWidth: a(CU_DEVICE_ATTRIBUTE_WARP_SIZE)?,
            memPitch: a(CU_DEVICE_ATTRIBUTE_MAX_PITCH)?,
            regsPerBlock: a(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK)?,
            clockRate: a(CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?,
            textureAlign: a(CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT)?,
        })
    }

    fn cuDeviceGetPCIBusId(bus_id: *mut c_char, len: c_int, device: CUdevice) {
        copy_c_string(&pci_bus_id(device)?, bus_id, len)
    }

    fn cuDeviceGetByPCIBusId(device: *mut CUdevice, bus_id: *const c_char) {
        let wanted = c_str(bus_id)?.to_ascii_lowercase();
        let count = driver()?.conn.welcome.devices.len() as CUdevice;
        for ordinal in 0..count {
            let id = pci_bus_id(ordinal)?;
            // Accept both the 8- and the 4-digit domain spelling.
            if id == wanted || id.get(4..) == Some(wanted.as_str()) {
                return put(device, ordinal);
            }
        }
        Err(CUDA_ERROR_INVALID_DEVICE)
    }

    fn cuDeviceCanAccessPeer(can: *mut c_int, device: CUdevice, peer: CUdevice) {
        let d = driver()?;
        d.device(device)?;
        d.device(peer)?;
        // Two devices of one server share its session's memory (the mock's do; the
        // cuda backend offers one device).
        let shared = d.conn.welcome.backend == "mock";
        put(can, c_int::from(shared && device != peer))
    }

    fn cuGetErrorName(error: CUresult, name: *mut *const c_char) {
        let entry = error_entry(error);
        put(name, entry.map_or(std::ptr::null(), |e| e.1.as_ptr().cast()))?;
        entry.map(|_| ())
    }

    fn cuGetErrorString(error: CUresult, text: *mut *const c_char) {
        let entry = error_entry(error);
        put(text, entry.map_or(std::ptr::null(), |e| e.2.as_ptr().cast()))?;
        entry.map(|_| ())
    }

    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) {
        proc_address(symbol, pfn, version, flags, std::ptr::null_mut())
    }

    fn cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut CUdriverProcAddressQueryResult) {
        proc_address(symbol, pfn, version, flags, status)
    }

    fn cuGetExportTable(table: *mut *const c_void, id: *const CUuuid) {
        put(table, std::ptr::null())?;
        if id.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: a CUuuid is 16 bytes.
        let bytes: [u8; 16] = unsafe { (*id).bytes }.map(|b| b as u8);
        match crate::dark::table(&bytes) {
            Some(found) => put(table, found),
            None => {
                tracing::debug!(id = %bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(), "unknown export table requested");
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    }
}
