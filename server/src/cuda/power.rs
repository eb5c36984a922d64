//! The devices' power draw, from the host's NVML (`libnvidia-ml.so.1`, or the
//! library `XPUPOOL_NVML_LIBRARY` names), for the pool's `lowest-energy`
//! placement and the metrics. Optional: where NVML cannot be loaded or does not
//! know a device, the server reports no power for it and says why once.

use std::ffi::{c_char, c_int, c_uint, c_void, CString, OsString};

/// `nvmlReturn_t`'s success.
const NVML_SUCCESS: c_int = 0;

type NvmlInit = unsafe extern "C" fn() -> c_int;
type NvmlHandleByUuid = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int;
type NvmlPowerUsage = unsafe extern "C" fn(*mut c_void, *mut c_uint) -> c_int;

/// NVML, initialised, with a handle for each device that has one.
pub(crate) struct Power {
    usage: NvmlPowerUsage,
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
        Ok(Self { usage, handles })
    }

    /// `device`'s draw now, in watts; `None` where NVML cannot say.
    pub(crate) fn watts(&self, device: u32) -> Option<f64> {
        let handle = (*self.handles.get(device as usize)?)?;
        let mut milliwatts: c_uint = 0;
        // SAFETY: a handle NVML gave for this process, and a place for the figure.
        let status = unsafe { (self.usage)(handle as *mut c_void, &mut milliwatts) };
        (status == NVML_SUCCESS).then(|| f64::from(milliwatts) / 1000.0)
    }
}
