//! The `cuda` backend: sessions on the host's NVIDIA driver (`libcuda.so.1`, loaded
//! with `libloading`; `XPUPOOL_CUDA_DRIVER` may name another path).
//!
//! All sessions share each device's primary context, each with its own tables of
//! allocations, modules, functions, streams and events: every pointer and handle a
//! request names is checked against them before the driver sees it, and everything
//! is freed when the session ends. Handles given to clients are the driver's own
//! values (modules excepted: a session-local number, since a module the driver could
//! not load still needs one); they are opaque to clients and never trusted.
//!
//! **Isolation** (docs/DESIGN.md §3.7): sessions of one process share the device's
//! primary context, so a kernel fault would poison it for all of them and a kernel
//! given a forged pointer argument (which cannot be checked) could reach another
//! session's memory. The server therefore runs each session of this backend in a
//! worker process of its own by default (`worker.rs`, `--isolation auto`); in one
//! process (`--isolation none`) it is for tests and a single trusted tenant.
//!
//! Every device the driver reports is served, each through its primary context:
//! a session enters the context of the device a request concerns (the device it
//! names, or that of the stream, function, event or memory it names), and copies
//! between two devices' memory go through `cuMemcpyPeerAsync`.
//!
//! SM ceilings (`sm_limit`) are green contexts per session (`green.rs`), or MPS. Kernel time is measured with events around each launch
//! (`timing.rs`); the server's scheduler paces launches with it
//! (`scheduler/lease.rs`).

mod driver;
mod green;
mod module;
pub(crate) mod power;
mod session;
mod timing;

use std::collections::HashMap;
use std::ffi::{c_char, OsString};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use xpupool_cuda_types::{
    CUcontext, CUdevice, CUuuid, CUDA_SUCCESS, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, CU_DEVICE_ATTRIBUTE_MAX,
};
use xpupool_protocol::{CuError, DeviceInfo};

use crate::backend::{Backend, Session, Tenant};
use driver::Driver;
use module::Kernel;

/// Set (by the server, for a session's worker) where the host runs MPS: the
/// session's SM ceiling as MPS applies it, instead of a green context.
pub const MPS_PERCENTAGE: &str = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE";

/// Images remembered at most (their kernel lists are small; the bytes are not kept).
const MAX_CACHED_IMAGES: usize = 4096;

/// The host's CUDA driver, serving every device it reports.
pub struct CudaBackend {
    shared: Arc<Shared>,
    /// NVML for power figures, loaded at the first ask (`None`: not available).
    power: std::sync::OnceLock<Option<power::Power>>,
}

/// What every session of the backend shares.
pub(crate) struct Shared {
    driver: Driver,
    /// The host's devices, by ordinal.
    devices: Vec<Device>,
    version: i32,
    /// Kernels of images loaded before, by SHA-256 of their wire bytes, so a second
    /// load of the same image (by any session) skips introspection.
    images: Mutex<HashMap<[u8; 32], Arc<Vec<Kernel>>>>,
}

/// One of the host's devices.
pub(crate) struct Device {
    device: CUdevice,
    /// Its primary context, retained for the backend's lifetime.
    context: usize,
    /// The device as the driver reports it (memory not yet clamped to a tenant).
    info: DeviceInfo,
    /// Compute capability as an SM number (90 for 9.0).
    sm: u32,
}

impl Shared {
    /// Device `ordinal`, or `CUDA_ERROR_INVALID_DEVICE`.
    pub(crate) fn device(&self, ordinal: u32) -> Result<&Device, CuError> {
        self.devices.get(ordinal as usize).ok_or_else(|| {
            CuError::new(
                xpupool_protocol::code::INVALID_DEVICE,
                format!("device {ordinal} (the host has {})", self.devices.len()),
            )
        })
    }

    /// Makes device `ordinal`'s primary context current on the calling thread
    /// (each request runs on whatever blocking thread the server picks).
    pub(crate) fn enter(&self, ordinal: u32) -> Result<(), CuError> {
        let context = self.device(ordinal)?.context;
        self.set_current(context)
    }

    /// Makes `context` (of this backend: a primary or a green one) current.
    pub(crate) fn set_current(&self, context: usize) -> Result<(), CuError> {
        // SAFETY: a context this backend retained or made.
        let r = unsafe { (self.driver.cuCtxSetCurrent)(context as CUcontext) };
        self.driver.check(r, "cuCtxSetCurrent")
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Arc<Vec<Kernel>>> {
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn remember(&self, key: [u8; 32], kernels: Arc<Vec<Kernel>>) {
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        if images.len() >= MAX_CACHED_IMAGES {
            images.clear();
        }
        images.insert(key, kernels);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for d in &self.devices {
            // SAFETY: releases the retain taken in `open_library`.
            unsafe { (self.driver.cuDevicePrimaryCtxRelease_v2)(d.device) };
        }
    }
}

/// Device `ordinal` of the driver: what it reports, and its primary context retained.
fn open_device(driver: &Driver, ordinal: i32) -> Result<Device> {
    // SAFETY: every call below passes valid out-pointers and values the driver
    // handed out.
    unsafe {
        let mut device: CUdevice = 0;
        driver.require((driver.cuDeviceGet)(&mut device, ordinal), "cuDeviceGet")?;
        let mut name = [0 as c_char; 256];
        driver.require(
            (driver.cuDeviceGetName)(name.as_mut_ptr(), name.len() as i32, device),
            "cuDeviceGetName",
        )?;
        let name = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        let mut uuid = CUuuid::default();
        driver.require(
            (driver.cuDeviceGetUuid_v2)(&mut uuid, device),
            "cuDeviceGetUuid_v2",
        )?;
        let mut total = 0usize;
        driver.require(
            (driver.cuDeviceTotalMem_v2)(&mut total, device),
            "cuDeviceTotalMem_v2",
        )?;
        // Every attribute the device answers; deprecated or unknown ones fail
        // and are left out (the client reads those as 0).
        let attributes: Vec<(u32, i32)> = (1..CU_DEVICE_ATTRIBUTE_MAX)
            .filter_map(|attribute| {
                let mut value = 0;
                let r = (driver.cuDeviceGetAttribute)(&mut value, attribute, device);
                (r == CUDA_SUCCESS).then_some((attribute, value))
            })
            .collect();
        let attr = |a| {
            attributes
                .iter()
                .find(|&&(x, _)| x == a)
                .map_or(0, |&(_, v)| v as u32)
        };
        let sm = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) * 10
            + attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
        let mut context: CUcontext = std::ptr::null_mut();
        driver.require(
            (driver.cuDevicePrimaryCtxRetain)(&mut context, device),
            "cuDevicePrimaryCtxRetain",
        )?;
        tracing::info!(ordinal, device = %name, sm, memory = total, "cuda backend: device ready");
        Ok(Device {
            info: DeviceInfo {
                name,
                uuid: uuid.bytes.map(|b| b as u8),
                total_memory: total as u64,
                attributes,
            },
            device,
            context: context as usize,
            sm,
        })
    }
}

impl CudaBackend {
    /// The host's NVML for this backend's devices, loaded on first use.
    fn nvml(&self) -> Option<&power::Power> {
        self.power
            .get_or_init(|| power::load_for(&self.devices()))
            .as_ref()
    }

    /// Loads the driver (`XPUPOOL_CUDA_DRIVER`, else `libcuda.so.1`), initialises it
    /// and retains each device's primary context. Fails with the reason if there is no
    /// driver, `cuInit` fails or there is no device.
    pub fn open() -> Result<Self> {
        let path = std::env::var_os("XPUPOOL_CUDA_DRIVER")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| OsString::from("libcuda.so.1"));
        Self::open_library(&path)
    }

    /// Like [`CudaBackend::open`], with the driver library at `path`.
    pub fn open_library(path: &std::ffi::OsStr) -> Result<Self> {
        let driver = Driver::load(path)?;
        let shown = path.to_string_lossy();
        // SAFETY: every call below passes valid out-pointers and values the driver
        // handed out.
        unsafe {
            driver
                .require((driver.cuInit)(0), "cuInit")
                .with_context(|| format!("the CUDA driver {shown} did not initialise"))?;
            let mut version = 0;
            driver.require(
                (driver.cuDriverGetVersion)(&mut version),
                "cuDriverGetVersion",
            )?;
            let mut count = 0;
            driver.require((driver.cuDeviceGetCount)(&mut count), "cuDeviceGetCount")?;
            if count < 1 {
                bail!("the CUDA driver {shown} reports no devices");
            }
            let devices = (0..count)
                .map(|ordinal| open_device(&driver, ordinal))
                .collect::<Result<Vec<_>>>()?;
            tracing::info!(
                devices = devices.len(),
                driver_version = version,
                "cuda backend ready"
            );
            Ok(Self {
                power: std::sync::OnceLock::new(),
                shared: Arc::new(Shared {
                    driver,
                    devices,
                    version,
                    images: Mutex::new(HashMap::new()),
                }),
            })
        }
    }

    /// Acts as a driver older than CUDA 12.4 would: no function enumeration and no
    /// `cuFuncGetParamInfo`, so kernel names and parameter layouts come from the
    /// image (PTX `.entry` signatures, cubin `.nv.info`). For tests of that path;
    /// call before any session opens.
    #[doc(hidden)]
    pub fn without_driver_introspection(mut self) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("no session is open yet");
        shared.driver.cuModuleGetFunctionCount = None;
        shared.driver.cuModuleEnumerateFunctions = None;
        shared.driver.cuFuncGetName = None;
        shared.driver.cuFuncGetParamInfo = None;
        self
    }

    /// Distinct module images whose kernel lists are cached.
    pub fn cached_images(&self) -> usize {
        self.shared
            .images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn driver_version(&self) -> i32 {
        self.shared.version
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.shared.devices.iter().map(|d| d.info.clone()).collect()
    }

    /// The driver's addresses lie in no fixed range, so there is none to report:
    /// the client reserves each device range in its own address space as it
    /// arrives instead, and asks again for memory the driver placed where the
    /// client has memory of its own. (For migration later, allocating through the
    /// VMM API inside one range reserved at start would give a fixed range.)
    fn device_address_range(&self) -> (u64, u64) {
        (0, 0)
    }

    fn power_watts(&self, device: u32) -> Option<f64> {
        self.nvml()?.watts(device)
    }

    /// What this process (whose sessions all run here) holds, as NVML counts it.
    fn memory_used(&self, device: u32) -> Option<u64> {
        let me = std::collections::HashSet::from([std::process::id()]);
        self.nvml()?.memory_of(device, &me)
    }

    fn open_session(&self, tenant: &Tenant) -> Result<Box<dyn Session>, CuError> {
        let green = match tenant.policy().sm_limit {
            Some(fraction) if std::env::var_os(MPS_PERCENTAGE).is_some() => {
                tracing::info!(tenant = %tenant.name, fraction, "sm_limit: MPS active thread percentage {}", std::env::var(MPS_PERCENTAGE).unwrap_or_default());
                Vec::new()
            }
            Some(fraction) => match green::create(&self.shared, fraction) {
                Ok(green) => {
                    for (device, g) in green.iter().enumerate() {
                        tracing::info!(tenant = %tenant.name, device, sms = g.sms, of = g.of, "sm_limit: a green context");
                    }
                    green
                }
                Err(why) => {
                    tracing::warn!(tenant = %tenant.name, "sm_limit {fraction} is not enforced for this session: {why}; the tenant's compute share still applies");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        Ok(Box::new(session::CudaSession::new(
            self.shared.clone(),
            green,
        )))
    }
}
