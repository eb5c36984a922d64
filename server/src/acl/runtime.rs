//! The host's CANN libraries, loaded once with `libloading`: the ACL runtime
//! (`libascendcl`), the aclnn descriptors (`libnnopbase`) and the operators
//! (`libopapi`, looked up per operator); ACL's and aclnn's status codes as the
//! protocol's (CUDA's numbering).

use std::ffi::{c_char, c_int, c_void, CStr, OsStr, OsString};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use xpupool_protocol::{code, CuError};

/// `aclError` and `aclnnStatus`.
pub(crate) type AclError = c_int;
pub(crate) const ACL_SUCCESS: AclError = 0;

/// `aclrtStream`, `aclrtEvent`, `aclrtContext`, `aclOpExecutor*`, descriptors.
pub(crate) type Handle = *mut c_void;

/// `aclrtMemcpyKind`.
pub(crate) const HOST_TO_DEVICE: c_int = 1;
pub(crate) const DEVICE_TO_HOST: c_int = 2;
pub(crate) const DEVICE_TO_DEVICE: c_int = 3;
/// `aclrtMemAttr` `ACL_HBM_MEM`: the device's own memory.
pub(crate) const HBM: c_int = 1;
/// `aclrtMemMallocPolicy` `ACL_MEM_MALLOC_HUGE_FIRST`.
pub(crate) const HUGE_FIRST: c_int = 0;
/// `aclrtEventRecordedStatus` `ACL_EVENT_RECORDED_STATUS_COMPLETE`.
pub(crate) const EVENT_COMPLETE: c_int = 1;
/// `aclrtStreamStatus` `ACL_STREAM_STATUS_COMPLETE`.
pub(crate) const STREAM_COMPLETE: c_int = 0;
/// `ACL_EVENT_TIME_LINE`: an event that keeps its timestamp.
pub(crate) const EVENT_TIME_LINE: u32 = 0x8;

/// `aclrtPhysicalMemProp`: device memory of 2 MiB pages.
#[repr(C)]
pub(crate) struct PhysicalMemProp {
    /// `aclrtMemHandleType`: `ACL_MEM_HANDLE_TYPE_NONE`.
    pub(crate) handle_type: u32,
    /// `aclrtMemAllocationType`: `ACL_MEM_ALLOCATION_TYPE_PINNED`.
    pub(crate) allocation_type: u32,
    /// `aclrtMemAttr`: `ACL_HBM_MEM_HUGE`.
    pub(crate) mem_attr: u32,
    /// `aclrtMemLocation`: the device's id and `ACL_MEM_LOCATION_TYPE_DEVICE`.
    pub(crate) location_id: u32,
    pub(crate) location_type: u32,
    pub(crate) reserve: u64,
}

impl PhysicalMemProp {
    pub(crate) fn device(id: u32) -> Self {
        Self {
            handle_type: 0,
            allocation_type: 0,
            mem_attr: 4,
            location_id: id,
            location_type: 1,
            reserve: 0,
        }
    }
}

/// `aclrtBinaryLoadOption`: an option type and its 16-byte value.
#[repr(C)]
pub(crate) struct BinaryLoadOption {
    /// `aclrtBinaryLoadOptionType`.
    pub(crate) kind: c_int,
    /// `aclrtBinaryLoadOptionValue`; the magic number in its first word.
    pub(crate) value: [u32; 4],
}

/// `aclrtBinaryLoadOptions`.
#[repr(C)]
pub(crate) struct BinaryLoadOptions {
    pub(crate) options: *mut BinaryLoadOption,
    pub(crate) count: usize,
}

/// `ACL_RT_BINARY_LOAD_OPT_MAGIC`.
pub(crate) const BINARY_LOAD_MAGIC: c_int = 2;

crate::dynlib::entry_points! {
    /// The ACL runtime's entry points (`libascendcl.so`).
    pub(crate) struct Runtime -> AclError;
    required {
        aclInit: fn(*const c_char);
        aclrtGetDeviceCount: fn(*mut u32);
        aclrtSetDevice: fn(i32);
        aclrtCreateContext: fn(*mut Handle, i32);
        aclrtSetCurrentContext: fn(Handle);
        aclrtGetMemInfo: fn(c_int, *mut usize, *mut usize);
        aclrtMalloc: fn(*mut *mut c_void, usize, c_int);
        aclrtFree: fn(*mut c_void);
        aclrtMemcpy: fn(*mut c_void, usize, *const c_void, usize, c_int);
        aclrtMemcpyAsync: fn(*mut c_void, usize, *const c_void, usize, c_int, Handle);
        aclrtMemsetAsync: fn(*mut c_void, usize, i32, usize, Handle);
        aclrtCreateStream: fn(*mut Handle);
        aclrtDestroyStream: fn(Handle);
        aclrtSynchronizeStream: fn(Handle);
        aclrtStreamQuery: fn(Handle, *mut c_int);
        aclrtStreamWaitEvent: fn(Handle, Handle);
        aclrtCreateEventWithFlag: fn(*mut Handle, u32);
        aclrtDestroyEvent: fn(Handle);
        aclrtRecordEvent: fn(Handle, Handle);
        aclrtSynchronizeEvent: fn(Handle);
        aclrtQueryEventStatus: fn(Handle, *mut c_int);
        aclrtEventElapsedTime: fn(*mut f32, Handle, Handle);
    }
    optional {
        aclrtDeviceGetUuid: fn(i32, *mut [u8; 16]);
        // Virtual memory (CANN 8 and later).
        aclrtReserveMemAddress: fn(*mut *mut c_void, usize, usize, *mut c_void, u64);
        aclrtReleaseMemAddress: fn(*mut c_void);
        aclrtMallocPhysical: fn(*mut u64, usize, *const PhysicalMemProp, u64);
        aclrtFreePhysical: fn(u64);
        aclrtMapMem: fn(*mut c_void, usize, usize, u64, u64);
        aclrtUnmapMem: fn(*mut c_void);
        // ACL_DEV_ATTR_*: core counts.
        aclrtGetDeviceInfo: fn(u32, c_int, *mut i64);
        // Kernel binaries outside aclnn.
        aclrtBinaryLoadFromData: fn(*const c_void, usize, *const BinaryLoadOptions, *mut Handle);
        aclrtBinaryGetFunction: fn(Handle, *const c_char, *mut Handle);
        aclrtBinaryUnLoad: fn(Handle);
        aclrtLaunchKernel: fn(Handle, u32, *const c_void, usize, Handle);
        aclrtLaunchKernelWithHostArgs: fn(
            Handle, u32, Handle, *mut c_void, *mut c_void, usize,
            *mut xpupool_protocol::api::Placeholder, usize,
        );
    }
    other {
        aclrtGetSocName: fn() -> *const c_char;
        aclGetRecentErrMsg: fn() -> *const c_char;
    }
}

crate::dynlib::entry_points! {
    /// The aclnn descriptors' entry points (`libnnopbase.so`).
    pub(crate) struct Descriptors -> AclError;
    required {
        aclDestroyTensor: fn(Handle);
        aclDestroyScalar: fn(Handle);
        aclDestroyIntArray: fn(Handle);
        aclDestroyFloatArray: fn(Handle);
        aclDestroyBoolArray: fn(Handle);
        aclDestroyTensorList: fn(Handle);
        aclDestroyScalarList: fn(Handle);
        aclDestroyAclOpExecutor: fn(Handle);
    }
    optional {}
    other {
        aclCreateTensor: fn(
            *const i64, u64, c_int, *const i64, i64, c_int, *const i64, u64, *mut c_void,
        ) -> Handle;
        aclCreateScalar: fn(*mut c_void, c_int) -> Handle;
        aclCreateIntArray: fn(*const i64, u64) -> Handle;
        aclCreateFloatArray: fn(*const f32, u64) -> Handle;
        aclCreateBoolArray: fn(*const bool, u64) -> Handle;
        aclCreateTensorList: fn(*const Handle, u64) -> Handle;
        aclCreateScalarList: fn(*const Handle, u64) -> Handle;
    }
}

/// The three libraries.
pub(crate) struct Cann {
    pub(crate) runtime: Runtime,
    pub(crate) descriptors: Descriptors,
    /// `libopapi.so`, whose operators are looked up by name as they are asked for.
    pub(crate) operators: &'static libloading::Library,
}

impl Cann {
    /// Loads `libascendcl.so`, `libnnopbase.so` and `libopapi.so` from `dir`, or
    /// by bare name (the loader's path, as CANN's `set_env.sh` sets it) without one.
    pub(crate) fn load(dir: Option<&OsStr>) -> Result<Self> {
        let path = |name: &str| -> OsString {
            match dir {
                Some(dir) => PathBuf::from(dir).join(name).into_os_string(),
                None => name.into(),
            }
        };
        let hint = "is CANN installed and its set_env.sh sourced? XPUPOOL_ACL_LIBRARY_DIR may name its lib64 folder";
        let open = |name: &str| {
            let p = path(name);
            crate::dynlib::load(&p, hint).map(|lib| (lib, p))
        };
        let (runtime, p) = open("libascendcl.so")?;
        let runtime = Runtime::resolve(runtime)
            .with_context(|| format!("{} is not a usable ACL runtime", p.to_string_lossy()))?;
        let (descriptors, p) = open("libnnopbase.so")?;
        let descriptors = Descriptors::resolve(descriptors)
            .with_context(|| format!("{} has not aclnn's descriptors", p.to_string_lossy()))?;
        let (operators, _) = open("libopapi.so")?;
        Ok(Self {
            runtime,
            descriptors,
            operators,
        })
    }

    /// The C function `name` of `libopapi`, if it exports one.
    pub(crate) fn operator(&self, name: &str) -> Option<*const c_void> {
        crate::dynlib::symbol::<*const c_void>(self.operators, name)
            .ok()
            .flatten()
            .filter(|f| !f.is_null())
    }

    /// What the runtime last said went wrong on this thread, if anything.
    pub(crate) fn recent_message(&self) -> Option<String> {
        // SAFETY: a NUL-terminated string the runtime owns (or NULL).
        let message = unsafe { (self.runtime.aclGetRecentErrMsg)() };
        if message.is_null() {
            return None;
        }
        // SAFETY: as above.
        let text = unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        (!text.trim().is_empty()).then_some(text)
    }

    /// `Ok` for success, else the protocol's code for `status` with `what` and
    /// the runtime's own message.
    pub(crate) fn check(&self, status: AclError, what: &str) -> Result<(), CuError> {
        if status == ACL_SUCCESS {
            return Ok(());
        }
        let said = self
            .recent_message()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        Err(CuError::new(
            protocol_code(status),
            format!("{what} failed with {status}{said}"),
        ))
    }

    /// Like [`Cann::check`], for start-up code that reports with `anyhow`.
    pub(crate) fn require(&self, status: AclError, what: &str) -> Result<()> {
        self.check(status, what)
            .map_err(|e| anyhow::anyhow!(e.message))
    }
}

/// The protocol's code for an ACL or aclnn status (`acl_base.h`, `aclnn/acl_meta.h`).
pub(crate) fn protocol_code(status: AclError) -> u32 {
    match status {
        // ACL_ERROR_INVALID_PARAM, RT_PARAM_INVALID; ACLNN_ERR_PARAM_NULLPTR, _INVALID.
        100_000 | 107_000 | 161_001 | 161_002 => code::INVALID_VALUE,
        // ACL_ERROR_UNINITIALIZE.
        100_001 => code::NOT_INITIALIZED,
        // ACL_ERROR_RT_INVALID_DEVICEID.
        107_001 => code::INVALID_DEVICE,
        // ACL_ERROR_RT_CONTEXT_NULL.
        107_002 => code::INVALID_CONTEXT,
        // ACL_ERROR_INVALID_DEVICE.
        200_002 => code::INVALID_DEVICE,
        // ACL_ERROR_RT_INVALID_HANDLE.
        107_017 => code::INVALID_HANDLE,
        // ACL_ERROR_BAD_ALLOC, RT_MEMORY_ALLOCATION, RT_DEVICE_OOM.
        200_000 | 207_001 | 207_018 => code::OUT_OF_MEMORY,
        // ACL_ERROR_API_NOT_SUPPORT, FEATURE_UNSUPPORTED, RT_FEATURE_NOT_SUPPORT;
        // ACLNN_ERR_INNER_FIND_KERNEL_ERROR (no kernel for the device).
        200_001 | 200_006 | 207_000 | 561_003 => code::NOT_SUPPORTED,
        // ACL_ERROR_RT_NO_DEVICE.
        207_004 => code::NO_DEVICE,
        // ACL_ERROR_RT_AICORE_EXCEPTION: a kernel faulted.
        507_015 => code::LAUNCH_FAILED,
        // ACL_ERROR_RT_STREAM_SYNC_TIMEOUT.
        507_046 => code::LAUNCH_TIMEOUT,
        _ => code::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_codes_become_the_protocols() {
        assert_eq!(protocol_code(100_000), code::INVALID_VALUE);
        assert_eq!(protocol_code(161_002), code::INVALID_VALUE);
        assert_eq!(protocol_code(207_001), code::OUT_OF_MEMORY);
        assert_eq!(protocol_code(200_001), code::NOT_SUPPORTED);
        assert_eq!(protocol_code(561_003), code::NOT_SUPPORTED);
        assert_eq!(protocol_code(107_017), code::INVALID_HANDLE);
        assert_eq!(protocol_code(107_001), code::INVALID_DEVICE);
        assert_eq!(protocol_code(507_015), code::LAUNCH_FAILED);
        assert_eq!(protocol_code(507_046), code::LAUNCH_TIMEOUT);
        for other in [1, -1, 361_001, 507_000, 999_999] {
            assert_eq!(protocol_code(other), code::UNKNOWN, "{other}");
        }
    }
}
