//! What the host's NVML (`libnvidia-ml.so.1`, or the library
//! `XPUPOOL_NVML_LIBRARY` names) says of the devices: their power draw, for the
//! pool's `lowest-energy` placement and the metrics, and the device memory each
//! of the server's processes holds, which the tenants' ledgers are reconciled
//! with (`xpupool_accounting_drift_bytes`). Optional: where NVML cannot be loaded
//! or does not know a device, the server reports neither for it and says why once.

use std::ffi::{c_char, c_int, c_uint, c_void, CString, OsString};

/// `nvmlReturn_t`'s success.
const NVML_SUCCESS: c_int = 0;

type NvmlInit = unsafe extern "C" fn() -> c_int;
type NvmlHandleByUuid = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int;
type NvmlPowerUsage = unsafe extern "C" fn(*mut c_void, *mut c_uint) -> c_int;
type NvmlRunningProcesses =
    unsafe extern "C" fn(*mut c_void, *mut c_uint, *mut ProcessInfo) -> c_int;

/// `nvmlProcessInfo_t` as `nvmlDeviceGetComputeRunningProcesses_v2` writes it, 24
/// bytes on every driver (`_v3` wrote 32-byte entries on drivers 535.43–535.86).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// `NVML_ERROR_INSUFFICIENT_SIZE`: more processes than the buffer holds.
const NVML_ERROR_INSUFFICIENT_SIZE: c_int = 7;
/// Processes read per device at most (the server's workers, and others').
const MAX_PROCESSES: usize = 4096;

/// NVML for `devices` (their UUIDs), or `None` after saying once why not.
pub(crate) fn load_for(devices: &[xpupool_protocol::DeviceInfo]) -> Option<Power> {
    let uuids: Vec<String> = devices
        .iter()
        .map(|d| xpupool_protocol::gpu_uuid_text(&d.uuid))
        .collect();
    Power::load(&uuids)
        .inspect_err(|e| tracing::info!("no power or memory figures from NVML: {e}"))
        .ok()
}

/// NVML, initialised, with a handle for each device that has one.
pub(crate) struct Power {
    usage: NvmlPowerUsage,
    processes: Option<NvmlRunningProcesses>,
    /// Per device (in the backend's order): its NVML handle, as an address.
    handles: Vec<Option<usize>>,
}

impl Power {
    /// NVML's handles for the devices of these UUIDs (`GPU-…`), or why not.
    pub(crate) fn load(uuids: &[String]) -> Result<Self, String> {
        let path = std::env::var_os("XPUPOOL_NVML_LIBRARY")
            .unwrap_or_else(|| OsString::from("libnvidia-ml.so.1"));
        // SAFETY: loading NVML runs its initialisers, which is what loading it is
        // for; the handle is leaked so the symbols below stay valid.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot load {}: {e}", path.to_string_lossy()))?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        // SAFETY: the signatures are those nvml.h declares for these names.
        let (init, by_uuid, usage) = unsafe {
            (
                *lib.get::<NvmlInit>(b"nvmlInit_v2\0")
                    .map_err(|e| format!("nvmlInit_v2: {e}"))?,
                *lib.get::<NvmlHandleByUuid>(b"nvmlDeviceGetHandleByUUID\0")
                    .map_err(|e| format!("nvmlDeviceGetHandleByUUID: {e}"))?,
                *lib.get::<NvmlPowerUsage>(b"nvmlDeviceGetPowerUsage\0")
                    .map_err(|e| format!("nvmlDeviceGetPowerUsage: {e}"))?,
            )
        };
        // SAFETY: nvmlInit_v2 takes nothing and may be called more than once.
        let status = unsafe { init() };
        if status != NVML_SUCCESS {
            return Err(format!("nvmlInit_v2 returned {status}"));
        }
        let handles = uuids
            .iter()
            .map(|uuid| {
                let text = CString::new(uuid.as_str()).ok()?;
                let mut handle: *mut c_void = std::ptr::null_mut();
                // SAFETY: a NUL-terminated string and a place for the handle.
                let status = unsafe { by_uuid(text.as_ptr(), &mut handle) };
                (status == NVML_SUCCESS && !handle.is_null()).then_some(handle as usize)
            })
            .collect();
        // SAFETY: the signature nvml.h declares for this name.
        let processes = unsafe {
            lib.get::<NvmlRunningProcesses>(b"nvmlDeviceGetComputeRunningProcesses_v2\0")
        }
        .ok()
        .map(|f| *f);
        Ok(Self {
            usage,
            processes,
            handles,
        })
    }

    /// `device`'s draw now, in watts; `None` where NVML cannot say.
    pub(crate) fn watts(&self, device: u32) -> Option<f64> {
        let handle = (*self.handles.get(device as usize)?)?;
        let mut milliwatts: c_uint = 0;
        // SAFETY: a handle NVML gave for this process, and a place for the figure.
        let status = unsafe { (self.usage)(handle as *mut c_void, &mut milliwatts) };
        (status == NVML_SUCCESS).then(|| f64::from(milliwatts) / 1000.0)
    }

    /// Device memory the processes `pids` hold on `device`, as NVML counts it
    /// (with each one's CUDA context, hundreds of MiB on a GPU); `None` where NVML
    /// cannot say.
    pub(crate) fn memory_of(
        &self,
        device: u32,
        pids: &std::collections::HashSet<u32>,
    ) -> Option<u64> {
        let handle = (*self.handles.get(device as usize)?)?;
        let read = self.processes?;
        let mut infos = vec![ProcessInfo::default(); 64];
        loop {
            let mut count = infos.len() as c_uint;
            // SAFETY: a handle NVML gave, a count and a buffer of that many entries.
            let status = unsafe { read(handle as *mut c_void, &mut count, infos.as_mut_ptr()) };
            match status {
                NVML_SUCCESS => {
                    infos.truncate(count as usize);
                    break;
                }
                NVML_ERROR_INSUFFICIENT_SIZE if (count as usize) <= MAX_PROCESSES => {
                    infos.resize(count as usize + 8, ProcessInfo::default());
                }
                _ => return None,
            }
        }
        let ours: Vec<&ProcessInfo> = infos.iter().filter(|p| pids.contains(&p.pid)).collect();
        if ours.is_empty() && !pids.is_empty() {
            // NVML names none of them: in a container without the host's process
            // ids (hostPID), it cannot say what they hold.
            return None;
        }
        ours.iter()
            .map(|p| p.used_gpu_memory)
            // NVML_VALUE_NOT_AVAILABLE: no figure for that process.
            .try_fold(0u64, |sum, used| {
                (used != u64::MAX).then(|| sum.saturating_add(used))
            })
    }
}
