//! The `hip` backend: sessions on the host's HIP runtime (`libamdhip64.so`,
//! loaded with `libloading`; `XPUPOOL_HIP_LIBRARY` may name another path, else
//! `libamdhip64.so`, `.so.6` and `.so.5` are tried in turn).
//!
//! It serves the same [`Api`](xpupool_protocol::Api) as the cuda backend, to the
//! same clients: xpupool's HIP stand-in (`hip/`) sends a program's AMD GPU code
//! objects (`Image::Elf`, `EM_AMDGPU`), its allocations, copies, streams and
//! events in CUDA's numbering, which HIP shares. Each session keeps its own
//! tables of allocations, modules (with the globals looked up), functions,
//! streams and events: every address range and handle a request names is checked
//! against them before the runtime sees it, sizes are bounded, and everything is
//! freed when the session ends. A module's kernels and their explicit parameter
//! layouts come from the code object's metadata note
//! ([`xpupool_amdgpu::read_code_object`]), as the mock lists them; a launch
//! passes its packed explicit arguments through `hipModuleLaunchKernel`'s `extra`
//! buffer and the runtime fills the hidden ones. Anything but an AMD GPU code
//! object is refused with `INVALID_IMAGE`. Kernel time is measured with event
//! pairs around each launch, as the cuda backend does, for the compute-share
//! scheduler.
//!
//! Sessions run each in a worker process of their own (`worker.rs`, isolation
//! `auto`), with the parent's tenancy layer keeping the ledger and the compute
//! shares, as for cuda.
//!
//! Every device the runtime reports is served: each request makes its
//! device current first (the one it names, or that of the allocation, stream,
//! event or module it uses), and a kernel runs on its module's device, in a
//! stream of that device.
//!
//! Not done: what HIP's module API cannot do
//! or the protocol has only in CUDA's terms answers `NOT_SUPPORTED`: virtual
//! memory, IPC, arrays, textures and surfaces, linking, cooperative and
//! clustered launches; function attributes are set on nothing (HIP's
//! `hipFuncSetAttribute` takes a host stub, not a module function); the memory
//! used and power drawn are not measured (no ROCm SMI yet), so the ledger is not
//! reconciled with the device's own figures. Clients are told the runtime's own
//! version (`hipDriverGetVersion`) as the driver version.

mod runtime;
mod session;
mod timing;

use std::ffi::{c_char, c_int, OsStr, OsString};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use xpupool_cuda_types as cu;
use xpupool_protocol::{CuError, DeviceInfo};

use crate::backend::{Backend, Session, Tenant};
use runtime::{Runtime, HIP_SUCCESS};

/// The names the runtime is looked for by, in order, when no path is given.
const LIBRARY_NAMES: &[&str] = &["libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"];

/// `hipDeviceAttribute_t` (HIP 5.x and 6.x numbering) → `CUdevice_attribute` of
/// the figures both have: what clients are told the device is.
const ATTRIBUTES: &[(c_int, u32)] = &[
    (0, cu::CU_DEVICE_ATTRIBUTE_ECC_ENABLED),
    (3, cu::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY),
    (5, cu::CU_DEVICE_ATTRIBUTE_CLOCK_RATE),
    (6, cu::CU_DEVICE_ATTRIBUTE_COMPUTE_MODE),
    (8, cu::CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS),
    (9, cu::CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS),
    (10, cu::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH),
    (16, cu::CU_DEVICE_ATTRIBUTE_INTEGRATED),
    (19, cu::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE),
    (23, cu::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
    (24, cu::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY),
    (26, cu::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X),
    (27, cu::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y),
    (28, cu::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z),
    (29, cu::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X),
    (30, cu::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y),
    (31, cu::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z),
    (56, cu::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
    (57, cu::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR),
    (59, cu::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH),
    (60, cu::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE),
    (61, cu::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    (63, cu::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
    (67, cu::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
    (68, cu::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID),
    (69, cu::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
    (71, cu::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK),
    (74, cu::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK),
    (81, cu::CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT),
    (83, cu::CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY),
    (85, cu::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING),
    (87, cu::CU_DEVICE_ATTRIBUTE_WARP_SIZE),
    (
        10002,
        cu::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
    ),
];

/// The host's HIP runtime, serving each of its devices.
pub struct HipBackend {
    shared: Arc<Shared>,
}

/// Devices one backend serves at most (a session's used-device set is 128 bits).
const MAX_DEVICES: c_int = 128;

/// What every session of the backend shares.
pub(crate) struct Shared {
    runtime: Runtime,
    /// The devices as the runtime reports them, by ordinal.
    devices: Vec<DeviceInfo>,
    version: i32,
}

impl Shared {
    /// Makes `device` current on the calling thread (each request runs on
    /// whatever thread the server picks, and HIP's current device is per thread).
    pub(crate) fn enter(&self, device: u32) -> Result<(), CuError> {
        if device as usize >= self.devices.len() {
            return Err(CuError::new(
                xpupool_protocol::code::INVALID_DEVICE,
                format!(
                    "device {device} (the hip backend serves {})",
                    self.devices.len()
                ),
            ));
        }
        // SAFETY: a device ordinal the runtime reported.
        let r = unsafe { (self.runtime.hipSetDevice)(device as c_int) };
        self.runtime.check(r, "hipSetDevice")
    }
}

impl HipBackend {
    /// Loads the runtime (`XPUPOOL_HIP_LIBRARY`, else `libamdhip64.so`, `.so.6`,
    /// `.so.5`), initialises it and describes its devices. Fails with the reason
    /// if there is no runtime, `hipInit` fails or there is no device.
    pub fn open() -> Result<Self> {
        if let Some(path) = std::env::var_os("XPUPOOL_HIP_LIBRARY").filter(|p| !p.is_empty()) {
            return Self::open_library(&path);
        }
        let mut reasons = Vec::new();
        for name in LIBRARY_NAMES {
            match Runtime::load(OsStr::new(name)) {
                Ok(runtime) => return Self::start(runtime, OsStr::new(name)),
                Err(e) => reasons.push(format!("{e:#}")),
            }
        }
        bail!("no HIP runtime: {}", reasons.join("; "))
    }

    /// As [`HipBackend::open`], with the runtime at `path`.
    pub fn open_library(path: &OsStr) -> Result<Self> {
        Self::start(Runtime::load(path)?, path)
    }

    fn start(runtime: Runtime, path: &OsStr) -> Result<Self> {
        let shown = OsString::from(path).to_string_lossy().into_owned();
        // SAFETY: the runtime's entry points with out-pointers to locals.
        unsafe {
            runtime
                .require((runtime.hipInit)(0), "hipInit")
                .with_context(|| format!("the HIP runtime {shown} did not initialise"))?;
            let mut version = 0;
            runtime.require(
                (runtime.hipDriverGetVersion)(&mut version),
                "hipDriverGetVersion",
            )?;
            let mut count = 0;
            runtime.require((runtime.hipGetDeviceCount)(&mut count), "hipGetDeviceCount")?;
            if count < 1 {
                bail!("the HIP runtime {shown} reports no devices");
            }
            if count > MAX_DEVICES {
                tracing::warn!(count, "serving the first {MAX_DEVICES} HIP devices");
            }
            let devices = (0..count.min(MAX_DEVICES))
                .map(|device| describe(&runtime, device))
                .collect::<Result<Vec<_>>>()?;
            runtime.require((runtime.hipSetDevice)(0), "hipSetDevice")?;
            for (i, d) in devices.iter().enumerate() {
                tracing::info!(device = i, name = %d.name, memory = d.total_memory, "hip device");
            }
            tracing::info!(devices = devices.len(), runtime_version = version, library = %shown, "hip backend ready");
            Ok(Self {
                shared: Arc::new(Shared {
                    runtime,
                    devices,
                    version,
                }),
            })
        }
    }
}

/// One device as the runtime reports it (`device` is an ordinal below its
/// device count).
fn describe(runtime: &Runtime, device: c_int) -> Result<DeviceInfo> {
    // SAFETY: the runtime's entry points, with a device it counted and
    // out-pointers to locals.
    unsafe {
        let mut name = [0 as c_char; 256];
        runtime.require(
            (runtime.hipDeviceGetName)(name.as_mut_ptr(), name.len() as c_int, device),
            "hipDeviceGetName",
        )?;
        let name = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        let mut uuid = [0u8; 16];
        if let Some(get_uuid) = runtime.hipDeviceGetUuid {
            if get_uuid(&mut uuid, device) != HIP_SUCCESS {
                uuid = [0; 16];
            }
        }
        let mut total = 0usize;
        runtime.require(
            (runtime.hipDeviceTotalMem)(&mut total, device),
            "hipDeviceTotalMem",
        )?;
        let attributes: Vec<(u32, i32)> = ATTRIBUTES
            .iter()
            .filter_map(|&(hip, cuda)| {
                let mut value = 0;
                let r = (runtime.hipDeviceGetAttribute)(&mut value, hip, device);
                (r == HIP_SUCCESS).then_some((cuda, value))
            })
            .collect();
        Ok(DeviceInfo {
            name,
            uuid,
            total_memory: total as u64,
            attributes,
        })
    }
}

impl Backend for HipBackend {
    fn name(&self) -> &'static str {
        "hip"
    }

    fn driver_version(&self) -> i32 {
        self.shared.version
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.shared.devices.clone()
    }

    /// The runtime's addresses lie in no fixed range (as the cuda backend's): the
    /// client reserves each device range in its own address space as it arrives.
    fn device_address_range(&self) -> (u64, u64) {
        (0, 0)
    }

    fn open_session(&self, tenant: &Tenant) -> Result<Box<dyn Session>, CuError> {
        if tenant.policy().sm_limit.is_some() {
            tracing::warn!(tenant = %tenant.name, "sm_limit is not enforced by the hip backend (no CU masks yet); the tenant's compute share still applies");
        }
        Ok(Box::new(session::HipSession::new(self.shared.clone())))
    }
}
