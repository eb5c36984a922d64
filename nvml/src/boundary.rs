//! The C boundary: every exported function runs through [`enter`], which turns a
//! `Result` into an `nvmlReturn_t` and catches panics (never unwinding into C).

use std::ffi::{c_char, c_void, CStr};

/// `nvmlReturn_t`.
pub(crate) type NvmlReturn = u32;

/// The result type of every implementation: `Err` carries the code to return.
pub(crate) type Res<T = ()> = Result<T, NvmlReturn>;

/// `nvmlDevice_t`: an opaque pointer (here, to one of our [`crate::state::Device`]s).
pub(crate) type NvmlDevice = *mut c_void;

pub(crate) const NVML_SUCCESS: NvmlReturn = 0;
pub(crate) const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
pub(crate) const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
pub(crate) const NVML_ERROR_NOT_SUPPORTED: NvmlReturn = 3;
pub(crate) const NVML_ERROR_NOT_FOUND: NvmlReturn = 6;
pub(crate) const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
pub(crate) const NVML_ERROR_DRIVER_NOT_LOADED: NvmlReturn = 9;
pub(crate) const NVML_ERROR_GPU_IS_LOST: NvmlReturn = 15;
pub(crate) const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: NvmlReturn = 25;
pub(crate) const NVML_ERROR_UNKNOWN: NvmlReturn = 999;

/// `nvmlErrorString`'s text for every code of `nvmlReturn_t` (NVML 13), NUL-terminated.
pub(crate) fn error_string(code: NvmlReturn) -> &'static CStr {
    match code {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        4 => c"Insufficient Permissions",
        5 => c"Already Initialized",
        6 => c"Not Found",
        7 => c"Insufficient Size",
        8 => c"Insufficient External Power",
        9 => c"Driver Not Loaded",
        10 => c"Timeout",
        11 => c"Interrupt Request Issue",
        12 => c"NVML Shared Library Not Found",
        13 => c"Function Not Found",
        14 => c"Corrupted infoROM",
        15 => c"GPU is lost",
        16 => c"GPU requires restart",
        17 => c"The operating system has blocked the request",
        18 => c"RM has detected an NVML/RM version mismatch",
        19 => c"In use by another client",
        20 => c"Insufficient Memory",
        21 => c"No data",
        22 => c"The requested vgpu operation is not available on target device, because ECC is enabled",
        23 => c"Insufficient resources",
        24 => c"Frequency not supported",
        25 => c"Argument version mismatch",
        26 => c"Deprecated",
        27 => c"Not Ready",
        28 => c"GPU not found",
        29 => c"Invalid state",
        30 => c"Reset type not supported",
        999 => c"Unknown Error",
        _ => c"Unknown Error (unrecognised nvmlReturn_t)",
    }
}

const CODES: xpupool_cabi::Codes<NvmlReturn> = xpupool_cabi::Codes {
    success: NVML_SUCCESS,
    internal: NVML_ERROR_UNKNOWN,
};

/// Runs one exported call.
pub(crate) fn enter(name: &'static str, body: impl FnOnce() -> Res) -> NvmlReturn {
    xpupool_cabi::init_logging();
    xpupool_cabi::enter(name, CODES, body)
}

/// What every NVML entry point without an implementation answers: UNINITIALIZED
/// before `nvmlInit`, NOT_SUPPORTED after it (logging its name once, at warn).
pub(crate) fn unsupported(name: &'static str) -> NvmlReturn {
    enter(name, || {
        crate::state::nvml()?;
        if xpupool_cabi::first_time(name) {
            tracing::warn!(
                "{name} is not supported by xpupool's NVML yet; returning NVML_ERROR_NOT_SUPPORTED"
            );
        }
        Err(NVML_ERROR_NOT_SUPPORTED)
    })
}

/// Writes through an out-pointer, or INVALID_ARGUMENT when it is NULL.
pub(crate) fn put<T>(out: *mut T, value: T) -> Res {
    xpupool_cabi::put(out, value, NVML_ERROR_INVALID_ARGUMENT)
}

/// Copies `text` and a NUL into the caller's buffer of `length` bytes:
/// INVALID_ARGUMENT for a NULL buffer, INSUFFICIENT_SIZE when it does not fit.
pub(crate) fn put_str(buf: *mut c_char, length: u32, text: &str) -> Res {
    if buf.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let bytes = text.as_bytes();
    if bytes.len() + 1 > length as usize {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the caller promises `length` writable bytes at `buf`; we write len + 1 ≤ length.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        buf.add(bytes.len()).write(0);
    }
    Ok(())
}

/// Reads a NUL-terminated C string argument.
pub(crate) fn c_str<'a>(ptr: *const c_char) -> Res<&'a str> {
    xpupool_cabi::c_str(ptr, NVML_ERROR_INVALID_ARGUMENT)
}

/// Defines exported NVML entry points. Each body returns [`Res`].
macro_rules! export {
    ($( $(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block )*) => {
        $(
            $(#[$meta])*
            #[no_mangle]
            #[allow(clippy::missing_safety_doc, unreachable_pub)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $crate::boundary::NvmlReturn {
                $crate::boundary::enter(stringify!($name), move || -> $crate::boundary::Res { $body })
            }
        )*
    };
}
pub(crate) use export;
