//! The host's HIP runtime (`libamdhip64`), loaded once with `libloading`: every
//! entry point the backend calls, resolved at start into one table of typed
//! pointers, and HIP's error codes as the protocol's (CUDA's numbering).
//!
//! Only entry points whose C signature is the same in HIP 5.x and 6.x are used
//! (`hipGetDeviceProperties` is not: its structure changed in 6.0, so the device
//! is described by attributes).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, OsStr};

use anyhow::{Context as _, Result};
use xpupool_protocol::{code, CuError};

/// `hipError_t`.
pub(crate) type HipError = c_int;
pub(crate) const HIP_SUCCESS: HipError = 0;
/// `hipErrorNotReady`.
pub(crate) const HIP_ERROR_NOT_READY: HipError = 600;
/// `hipErrorNoBinaryForGpu`.
pub(crate) const HIP_ERROR_NO_BINARY_FOR_GPU: HipError = 209;
/// `hipErrorNotSupported`.
pub(crate) const HIP_ERROR_NOT_SUPPORTED: HipError = 801;

/// `hipStream_t`, `hipEvent_t`, `hipModule_t`, `hipFunction_t`: opaque pointers.
pub(crate) type Handle = *mut c_void;

/// `hipMemcpyKind`.
pub(crate) const HOST_TO_DEVICE: c_int = 1;
pub(crate) const DEVICE_TO_HOST: c_int = 2;
pub(crate) const DEVICE_TO_DEVICE: c_int = 3;

/// `HIP_LAUNCH_PARAM_*`: the keys of `hipModuleLaunchKernel`'s `extra` list.
pub(crate) const LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
pub(crate) const LAUNCH_PARAM_BUFFER_SIZE: usize = 2;
pub(crate) const LAUNCH_PARAM_END: usize = 3;

crate::dynlib::entry_points! {
    /// The runtime's entry points (names as the library exports them).
    pub(crate) struct Runtime -> HipError;
    required {
        hipInit: fn(c_uint);
        hipDriverGetVersion: fn(*mut c_int);
        hipGetDeviceCount: fn(*mut c_int);
        hipDeviceGetName: fn(*mut c_char, c_int, c_int);
        hipDeviceTotalMem: fn(*mut usize, c_int);
        hipDeviceGetAttribute: fn(*mut c_int, c_int, c_int);
        hipSetDevice: fn(c_int);
        hipMalloc: fn(*mut *mut c_void, usize);
        hipFree: fn(*mut c_void);
        hipMemGetInfo: fn(*mut usize, *mut usize);
        hipMemcpyAsync: fn(*mut c_void, *const c_void, usize, c_int, Handle);
        hipMemsetAsync: fn(*mut c_void, c_int, usize, Handle);
        hipModuleLoadData: fn(*mut Handle, *const c_void);
        hipModuleUnload: fn(Handle);
        hipModuleGetFunction: fn(*mut Handle, Handle, *const c_char);
        hipModuleGetGlobal: fn(*mut *mut c_void, *mut usize, Handle, *const c_char);
        hipModuleLaunchKernel: fn(
            Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint,
            Handle, *mut *mut c_void, *mut *mut c_void,
        );
        hipStreamCreateWithPriority: fn(*mut Handle, c_uint, c_int);
        hipStreamDestroy: fn(Handle);
        hipStreamSynchronize: fn(Handle);
        hipStreamQuery: fn(Handle);
        hipStreamWaitEvent: fn(Handle, Handle, c_uint);
        hipEventCreateWithFlags: fn(*mut Handle, c_uint);
        hipEventDestroy: fn(Handle);
        hipEventRecord: fn(Handle, Handle);
        hipEventSynchronize: fn(Handle);
        hipEventQuery: fn(Handle);
        hipEventElapsedTime: fn(*mut f32, Handle, Handle);
    }
    optional {
        hipDeviceGetUuid: fn(*mut [u8; 16], c_int);
        // Word-wide fills; without them (or where they answer hipErrorNotSupported)
        // a pattern is copied from the host instead.
        hipMemsetD16Async: fn(*mut c_void, u16, usize, Handle);
        hipMemsetD32Async: fn(*mut c_void, c_int, usize, Handle);
        // CU_FUNC_ATTRIBUTE_* numbering; the code object's metadata answers otherwise.
        hipFuncGetAttribute: fn(*mut c_int, c_int, Handle);
    }
    other {
        hipGetErrorName: fn(HipError) -> *const c_char;
    }
}

impl Runtime {
    /// Loads the runtime library at `path` and resolves every entry point.
    pub(crate) fn load(path: &OsStr) -> Result<Self> {
        let lib = crate::dynlib::load(
            path,
            "is ROCm installed? XPUPOOL_HIP_LIBRARY may name its libamdhip64.so",
        )?;
        Self::resolve(lib)
            .with_context(|| format!("{} is not a usable HIP runtime", path.to_string_lossy()))
    }

    /// The runtime's name for `code` (`hipErrorOutOfMemory`), or the number.
    pub(crate) fn error_name(&self, code: HipError) -> String {
        // SAFETY: hipGetErrorName returns a static string (or NULL) for any code.
        let name = unsafe { (self.hipGetErrorName)(code) };
        if name.is_null() {
            format!("hipError_t {code}")
        } else {
            // SAFETY: a NUL-terminated static string owned by the runtime.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        }
    }

    /// `Ok` for `hipSuccess`, else the protocol's code for it with HIP's name and `what`.
    pub(crate) fn check(&self, code: HipError, what: &str) -> Result<(), CuError> {
        if code == HIP_SUCCESS {
            Ok(())
        } else {
            Err(CuError::new(
                protocol_code(code),
                format!("{what}: {}", self.error_name(code)),
            ))
        }
    }

    /// Like [`Runtime::check`], for start-up code that reports with `anyhow`.
    pub(crate) fn require(&self, code: HipError, what: &str) -> Result<()> {
        self.check(code, what)
            .map_err(|e| anyhow::anyhow!(e.message))
    }
}

/// HIP codes whose number CUDA's driver API gives the same meaning (HIP took
/// CUDA's numbering): passed on as they are.
const SAME_AS_CUDA: &[HipError] = &[
    1, 2, 3, 4, 5, 6, 7, 8,  // invalid value … profiler
    46, // device unavailable
    100, 101, // no device, invalid device
    200, 201, 202, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217,
    218, // invalid kernel file = CUDA's invalid PTX: the image is bad
    219, 300, 301, 302, 303, 304, 400, 401, 500, 600, 700, 701, 702, 708, 709, 710, 719, 720, 800,
    801, 900, 901, 902, 903, 904, 905, 906, 907, 908, 910, 999,
];

/// The protocol's code (CUDA's driver numbering) for HIP's `code`: the same
/// number where CUDA's driver has it with that meaning, else the nearest driver
/// code for the runtime-only ones, else `UNKNOWN`.
pub(crate) fn protocol_code(code: HipError) -> u32 {
    match code {
        c if SAME_AS_CUDA.contains(&c) => c as u32,
        // hipErrorInvalidConfiguration, InvalidPitchValue, InvalidDevicePointer,
        // InvalidMemcpyDirection, MissingConfiguration: a bad argument.
        9 | 12 | 17 | 21 | 52 => code::INVALID_VALUE,
        // hipErrorInvalidSymbol: no such variable.
        13 => code::NOT_FOUND,
        // hipErrorInsufficientDriver.
        35 => code::NOT_INITIALIZED,
        // hipErrorPriorLaunchFailure.
        53 => code::LAUNCH_FAILED,
        // hipErrorInvalidDeviceFunction: not a kernel of the module.
        98 => code::INVALID_HANDLE,
        // hipErrorRuntimeMemory.
        1052 => code::OUT_OF_MEMORY,
        _ => code::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hip_codes_become_cudas() {
        // Shared numbers pass through.
        assert_eq!(protocol_code(1), code::INVALID_VALUE);
        assert_eq!(protocol_code(2), code::OUT_OF_MEMORY);
        assert_eq!(protocol_code(101), code::INVALID_DEVICE);
        assert_eq!(protocol_code(200), code::INVALID_IMAGE);
        assert_eq!(protocol_code(209), code::NO_BINARY_FOR_GPU);
        assert_eq!(protocol_code(400), code::INVALID_HANDLE);
        assert_eq!(protocol_code(500), code::NOT_FOUND);
        assert_eq!(protocol_code(HIP_ERROR_NOT_READY), code::NOT_READY);
        assert_eq!(protocol_code(700), code::ILLEGAL_ADDRESS);
        assert_eq!(protocol_code(719), code::LAUNCH_FAILED);
        assert_eq!(protocol_code(HIP_ERROR_NOT_SUPPORTED), code::NOT_SUPPORTED);
        // Runtime-only codes have the nearest driver code.
        assert_eq!(protocol_code(13), code::NOT_FOUND);
        assert_eq!(protocol_code(17), code::INVALID_VALUE);
        assert_eq!(protocol_code(21), code::INVALID_VALUE);
        assert_eq!(protocol_code(98), code::INVALID_HANDLE);
        assert_eq!(protocol_code(53), code::LAUNCH_FAILED);
        assert_eq!(protocol_code(1052), code::OUT_OF_MEMORY);
        // Anything else is unknown, never passed through.
        for other in [10, 11, 999_999, -1, 1053, 1054] {
            assert_eq!(protocol_code(other), code::UNKNOWN, "{other}");
        }
    }
}
