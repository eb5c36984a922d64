//! The `acl` backend: sessions on the host's CANN (Huawei's Ascend runtime,
//! `libascendcl`, and its aclnn operators, `libnnopbase` and `libopapi`), loaded
//! with `libloading` from `XPUPOOL_ACL_LIBRARY_DIR` or by bare name (the
//! loader's path, as CANN's `set_env.sh` sets it).
//!
//! It serves xpupool's CANN stand-in (`acl/`): the client keeps torch_npu's
//! descriptors and sends each aclnn operator's parameters by value; here they
//! become CANN's own descriptors again, over device memory checked to be the
//! session's, and the operator's two phases run on the host's `libopapi`
//! through pointers of their headers' exact C types (generated from
//! vendor-headers/aclnn-ops.tsv). Memory, copies, memsets, streams and events
//! are the ACL runtime's, checked against the session's own tables as the hip
//! backend checks HIP's. Each execution is timed with a pair of time-line events
//! for the compute-share scheduler, as kernels are.
//!
//! Sessions run each in a worker process of their own (`worker.rs`, isolation
//! `auto`), with the parent's tenancy layer keeping the ledger and the compute
//! shares.
//!
//! Kernel binaries outside aclnn (`kernels.rs`) are loaded with their magic
//! number and launched with their argument strings and placeholders.
//!
//! Every device CANN reports is served, each with a context of its own: a
//! request makes its device's context current first (the device it names, or
//! that of the allocation, stream, event, executor or binary it uses).
//!
//! Not done: the aclop path and graphs are
//! refused as NOT_SUPPORTED; the memory used and power drawn are not
//! measured (no DCMI yet). Tested only through xpupool's own stand-in as the
//! host's CANN (scripts/run-acl-backend-tests.sh): no NPU host was available.

mod kernels;
mod operators;
mod runtime;
mod session;
mod timing;

use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use xpupool_cuda_types as cu;
use xpupool_protocol::{CuError, DeviceInfo};

use crate::backend::{Backend, Session, Tenant};
use runtime::{Cann, Handle, ACL_SUCCESS, HBM};

/// `ACL_ERROR_REPEAT_INITIALIZE`: `aclInit` called before, which is fine here.
const REPEAT_INITIALIZE: i32 = 100_002;
/// `ACL_DEV_ATTR_AICORE_CORE_NUM`.
const AICORE_CORE_NUM: i32 = 101;

/// The host's CANN, serving each of its devices.
pub struct AclBackend {
    shared: Arc<Shared>,
}

/// An operator's two phases in the host's `libopapi`.
#[derive(Clone, Copy)]
pub(crate) struct Phases {
    first: *const c_void,
    second: *const c_void,
}

// SAFETY: function addresses in a library loaded for good.
unsafe impl Send for Phases {}

/// What every session of the backend shares.
pub(crate) struct Shared {
    cann: Cann,
    /// Each device's context, which its requests run in (ACL's current context
    /// is per thread), and the device as CANN reports it.
    devices: Vec<(usize, DeviceInfo)>,
    /// Each operator's phases, looked up once (`None`: the host's libopapi lacks it).
    phases: Mutex<HashMap<&'static str, Option<Phases>>>,
}

// SAFETY: the contexts are opaque handles ACL lets any thread make current.
unsafe impl Send for Shared {}
// SAFETY: as above; the table of phases is behind a lock.
unsafe impl Sync for Shared {}

impl Shared {
    /// Makes `device`'s context current on the calling thread.
    pub(crate) fn enter(&self, device: u32) -> Result<(), CuError> {
        let &(context, _) = self.devices.get(device as usize).ok_or_else(|| {
            CuError::new(
                xpupool_protocol::code::INVALID_DEVICE,
                format!(
                    "device {device} (the acl backend serves {})",
                    self.devices.len()
                ),
            )
        })?;
        // SAFETY: a context made at start, never destroyed.
        let r = unsafe { (self.cann.runtime.aclrtSetCurrentContext)(context as Handle) };
        self.cann.check(r, "aclrtSetCurrentContext")
    }

    /// The two phases of `operator` in the host's library, if it has both.
    pub(crate) fn phases(&self, operator: &'static str) -> Option<Phases> {
        let mut cache = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        *cache.entry(operator).or_insert_with(|| {
            Some(Phases {
                first: self.cann.operator(&format!("{operator}GetWorkspaceSize"))?,
                second: self.cann.operator(operator)?,
            })
        })
    }
}

impl AclBackend {
    /// Loads CANN (`XPUPOOL_ACL_LIBRARY_DIR`, else by bare name), initialises it
    /// and describes each device. Fails with the reason if a library is missing,
    /// `aclInit` fails or there is no device.
    pub fn open() -> Result<Self> {
        let dir = std::env::var_os("XPUPOOL_ACL_LIBRARY_DIR").filter(|d| !d.is_empty());
        let cann = Cann::load(dir.as_deref())?;
        let shown = dir.map_or_else(|| "CANN".to_owned(), |d| d.to_string_lossy().into_owned());
        let rt = &cann.runtime;
        // SAFETY: every call below passes valid out-pointers and values the
        // runtime handed out.
        unsafe {
            let r = (rt.aclInit)(std::ptr::null());
            if r != REPEAT_INITIALIZE {
                cann.require(r, "aclInit")
                    .with_context(|| format!("{shown} did not initialise"))?;
            }
            let mut count = 0u32;
            cann.require((rt.aclrtGetDeviceCount)(&mut count), "aclrtGetDeviceCount")?;
            if count < 1 {
                bail!("{shown} reports no devices");
            }
            if count > MAX_DEVICES {
                tracing::warn!(count, "serving the first {MAX_DEVICES} devices");
            }
            let mut devices = Vec::new();
            for device in 0..count.min(MAX_DEVICES) {
                devices.push(describe(&cann, device as i32)?);
            }
            for (i, (_, d)) in devices.iter().enumerate() {
                tracing::info!(device = i, name = %d.name, memory = d.total_memory, "acl device");
            }
            tracing::info!(devices = devices.len(), library = %shown, "acl backend ready");
            Ok(Self {
                shared: Arc::new(Shared {
                    cann,
                    devices,
                    phases: Mutex::new(HashMap::new()),
                }),
            })
        }
    }
}

/// Devices one backend serves at most (a session's used-device set is 128 bits).
const MAX_DEVICES: u32 = 128;

/// Sets `device`, makes its context and describes it as CANN reports it.
///
/// # Safety
/// CANN is initialised and `device` is below its device count.
unsafe fn describe(cann: &Cann, device: i32) -> Result<(usize, DeviceInfo)> {
    let rt = &cann.runtime;
    // SAFETY: the caller's device; out-pointers to locals.
    unsafe {
        cann.require((rt.aclrtSetDevice)(device), "aclrtSetDevice")?;
        let mut context: Handle = std::ptr::null_mut();
        cann.require(
            (rt.aclrtCreateContext)(&mut context, device),
            "aclrtCreateContext",
        )?;
        let soc = (rt.aclrtGetSocName)();
        let name = if soc.is_null() {
            "Ascend".to_owned()
        } else {
            CStr::from_ptr(soc).to_string_lossy().into_owned()
        };
        let mut uuid = [0u8; 16];
        if let Some(get_uuid) = rt.aclrtDeviceGetUuid {
            if get_uuid(device, &mut uuid) != ACL_SUCCESS {
                uuid = [0; 16];
            }
        }
        // Of the current context's device: the one just made.
        let (mut free, mut total) = (0usize, 0usize);
        cann.require(
            (rt.aclrtGetMemInfo)(HBM, &mut free, &mut total),
            "aclrtGetMemInfo",
        )?;
        // The AI cores are what kernels are spread over: CUDA's multiprocessors.
        let mut attributes = Vec::new();
        if let Some(info) = rt.aclrtGetDeviceInfo {
            let mut cores = 0i64;
            if info(device as u32, AICORE_CORE_NUM, &mut cores) == ACL_SUCCESS {
                attributes.push((cu::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, cores as i32));
            }
        }
        Ok((
            context as usize,
            DeviceInfo {
                name,
                uuid,
                total_memory: total as u64,
                attributes,
            },
        ))
    }
}

impl Backend for AclBackend {
    fn name(&self) -> &'static str {
        "acl"
    }

    /// CANN has no driver version in CUDA's terms.
    fn driver_version(&self) -> i32 {
        0
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.shared.devices.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The runtime's addresses lie in no fixed range: the client reserves each
    /// device range in its own address space as it arrives.
    fn device_address_range(&self) -> (u64, u64) {
        (0, 0)
    }

    fn open_session(&self, tenant: &Tenant) -> Result<Box<dyn Session>, CuError> {
        if tenant.policy().sm_limit.is_some() {
            tracing::warn!(tenant = %tenant.name, "sm_limit is not enforced by the acl backend (no core limits yet); the tenant's compute share still applies");
        }
        Ok(Box::new(session::AclSession::new(self.shared.clone())))
    }
}
