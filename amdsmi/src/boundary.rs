//! The C boundary of both APIs: every exported function runs through [`amdsmi`] or
//! [`rsmi`], which turn a `Result` into the API's status code and catch panics
//! (never unwinding into C).

use std::ffi::{c_char, CStr};

/// `amdsmi_status_t`.
pub(crate) type AmdsmiStatus = u32;
/// `rsmi_status_t`.
pub(crate) type RsmiStatus = u32;

/// What an implementation returns: `Err` carries the API-neutral failure.
pub(crate) type Res<T = ()> = Result<T, Fail>;

/// Why a call failed, mapped to each API's code by [`Fail::amdsmi`] / [`Fail::rsmi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    /// Before init, or after shut-down (or process exit).
    NotInit,
    /// Init could not reach the pool server.
    NoDriver,
    /// A NULL pointer, an unknown handle or device index, a bad enum value.
    Invalid,
    /// The stand-in has no answer for this.
    NotSupported,
    /// The caller's buffer is too small.
    InsufficientSize,
    /// More items than the caller's array holds (the count has been written).
    OutOfResources,
    /// No such item.
    NotFound,
    /// The server refused or is gone.
    Server,
}

pub(crate) const AMDSMI_STATUS_SUCCESS: AmdsmiStatus = 0;
pub(crate) const AMDSMI_STATUS_INVAL: AmdsmiStatus = 1;
pub(crate) const AMDSMI_STATUS_NOT_SUPPORTED: AmdsmiStatus = 2;
pub(crate) const AMDSMI_STATUS_OUT_OF_RESOURCES: AmdsmiStatus = 15;
pub(crate) const AMDSMI_STATUS_INTERNAL_EXCEPTION: AmdsmiStatus = 16;
pub(crate) const AMDSMI_STATUS_NOT_FOUND: AmdsmiStatus = 31;
pub(crate) const AMDSMI_STATUS_NOT_INIT: AmdsmiStatus = 32;
pub(crate) const AMDSMI_STATUS_DRIVER_NOT_LOADED: AmdsmiStatus = 34;
pub(crate) const AMDSMI_STATUS_INSUFFICIENT_SIZE: AmdsmiStatus = 41;
pub(crate) const AMDSMI_STATUS_API_FAILED: AmdsmiStatus = 7;

pub(crate) const RSMI_STATUS_SUCCESS: RsmiStatus = 0;
pub(crate) const RSMI_STATUS_INVALID_ARGS: RsmiStatus = 1;
pub(crate) const RSMI_STATUS_NOT_SUPPORTED: RsmiStatus = 2;
pub(crate) const RSMI_STATUS_INTERNAL_EXCEPTION: RsmiStatus = 6;
pub(crate) const RSMI_STATUS_INIT_ERROR: RsmiStatus = 8;
pub(crate) const RSMI_STATUS_NOT_FOUND: RsmiStatus = 10;
pub(crate) const RSMI_STATUS_INSUFFICIENT_SIZE: RsmiStatus = 11;
pub(crate) const RSMI_STATUS_UNKNOWN_ERROR: RsmiStatus = 0xFFFF_FFFF;

impl Fail {
    pub(crate) fn amdsmi(self) -> AmdsmiStatus {
        match self {
            Fail::NotInit => AMDSMI_STATUS_NOT_INIT,
            Fail::NoDriver => AMDSMI_STATUS_DRIVER_NOT_LOADED,
            Fail::Invalid => AMDSMI_STATUS_INVAL,
            Fail::NotSupported => AMDSMI_STATUS_NOT_SUPPORTED,
            Fail::InsufficientSize => AMDSMI_STATUS_INSUFFICIENT_SIZE,
            Fail::OutOfResources => AMDSMI_STATUS_OUT_OF_RESOURCES,
            Fail::NotFound => AMDSMI_STATUS_NOT_FOUND,
            Fail::Server => AMDSMI_STATUS_API_FAILED,
        }
    }

    pub(crate) fn rsmi(self) -> RsmiStatus {
        match self {
            // rocm_smi has no "not initialised" code; its own library answers
            // INIT_ERROR when called before rsmi_init.
            Fail::NotInit | Fail::NoDriver => RSMI_STATUS_INIT_ERROR,
            Fail::Invalid => RSMI_STATUS_INVALID_ARGS,
            Fail::NotSupported => RSMI_STATUS_NOT_SUPPORTED,
            Fail::InsufficientSize | Fail::OutOfResources => RSMI_STATUS_INSUFFICIENT_SIZE,
            Fail::NotFound => RSMI_STATUS_NOT_FOUND,
            Fail::Server => RSMI_STATUS_UNKNOWN_ERROR,
        }
    }
}

/// `amdsmi_status_code_to_string`'s text for every `amdsmi_status_t` (ROCm 7), NUL-terminated.
pub(crate) fn amdsmi_status_text(code: AmdsmiStatus) -> &'static CStr {
    match code {
        0 => c"AMDSMI_STATUS_SUCCESS: Call succeeded",
        1 => c"AMDSMI_STATUS_INVAL: Invalid parameters",
        2 => c"AMDSMI_STATUS_NOT_SUPPORTED: Command not supported",
        3 => c"AMDSMI_STATUS_NOT_YET_IMPLEMENTED: Not implemented yet",
        4 => c"AMDSMI_STATUS_FAIL_LOAD_MODULE: Fail to load lib",
        5 => c"AMDSMI_STATUS_FAIL_LOAD_SYMBOL: Fail to load symbol",
        6 => c"AMDSMI_STATUS_DRM_ERROR: Error when call libdrm",
        7 => c"AMDSMI_STATUS_API_FAILED: API call failed",
        8 => c"AMDSMI_STATUS_TIMEOUT: Timeout in API call",
        9 => c"AMDSMI_STATUS_RETRY: Retry operation",
        10 => c"AMDSMI_STATUS_NO_PERM: Permission Denied",
        11 => c"AMDSMI_STATUS_INTERRUPT: An interrupt occurred during execution of function",
        12 => c"AMDSMI_STATUS_IO: I/O Error",
        13 => c"AMDSMI_STATUS_ADDRESS_FAULT: Bad address",
        14 => c"AMDSMI_STATUS_FILE_ERROR: Problem accessing a file",
        15 => c"AMDSMI_STATUS_OUT_OF_RESOURCES: Not enough memory",
        16 => c"AMDSMI_STATUS_INTERNAL_EXCEPTION: An internal exception was caught",
        17 => c"AMDSMI_STATUS_INPUT_OUT_OF_BOUNDS: The provided input is out of allowable or safe range",
        18 => c"AMDSMI_STATUS_INIT_ERROR: An error occurred when initializing internal data structures",
        19 => c"AMDSMI_STATUS_REFCOUNT_OVERFLOW: An internal reference counter exceeded INT32_MAX",
        30 => c"AMDSMI_STATUS_BUSY: Processor busy",
        31 => c"AMDSMI_STATUS_NOT_FOUND: Processor Not found",
        32 => c"AMDSMI_STATUS_NOT_INIT: Processor not initialized",
        33 => c"AMDSMI_STATUS_NO_SLOT: No more free slot",
        34 => c"AMDSMI_STATUS_DRIVER_NOT_LOADED: Processor driver not loaded",
        40 => c"AMDSMI_STATUS_NO_DATA: No data was found for a given input",
        41 => c"AMDSMI_STATUS_INSUFFICIENT_SIZE: Not enough resources were available for the operation",
        42 => c"AMDSMI_STATUS_UNEXPECTED_SIZE: An unexpected amount of data was read",
        43 => c"AMDSMI_STATUS_UNEXPECTED_DATA: The data read or provided to function is not what was expected",
        44 => c"AMDSMI_STATUS_NON_AMD_CPU: System has different cpu than AMD",
        45 => c"AMDSMI_NO_ENERGY_DRV: Energy driver not found",
        46 => c"AMDSMI_NO_MSR_DRV: MSR driver not found",
        47 => c"AMDSMI_NO_HSMP_DRV: HSMP driver not found",
        48 => c"AMDSMI_NO_HSMP_SUP: HSMP not supported",
        49 => c"AMDSMI_NO_HSMP_MSG_SUP: HSMP message/feature not supported",
        50 => c"AMDSMI_HSMP_TIMEOUT: HSMP message timed out",
        51 => c"AMDSMI_NO_DRV: No Energy and HSMP driver present",
        52 => c"AMDSMI_FILE_NOT_FOUND: file or directory not found",
        53 => c"AMDSMI_ARG_PTR_NULL: Parsed argument is invalid",
        0xFFFF_FFFE => c"AMDSMI_STATUS_MAP_ERROR: The internal library error did not map to a status code",
        _ => c"AMDSMI_STATUS_UNKNOWN_ERROR: An unknown error occurred",
    }
}

/// `rsmi_status_string`'s text for every `rsmi_status_t` (rocm_smi.h 5.2.3).
pub(crate) fn rsmi_status_text(code: RsmiStatus) -> Option<&'static CStr> {
    Some(match code {
        0 => c"RSMI_STATUS_SUCCESS: The function has been executed successfully.",
        1 => c"RSMI_STATUS_INVALID_ARGS: The provided arguments do not meet the preconditions required for the input.",
        2 => c"RSMI_STATUS_NOT_SUPPORTED: This function is not supported in the current environment.",
        3 => c"RSMI_STATUS_FILE_ERROR: There was an error in finding or opening a file or directory.",
        4 => c"RSMI_STATUS_PERMISSION: The user ID of the calling process does not have sufficient permission to execute a command.",
        5 => c"RSMI_STATUS_OUT_OF_RESOURCES: Unable to acquire memory or other resource",
        6 => c"RSMI_STATUS_INTERNAL_EXCEPTION: An internal exception was caught",
        7 => c"RSMI_STATUS_INPUT_OUT_OF_BOUNDS: The provided input is out of allowable or safe range",
        8 => c"RSMI_STATUS_INIT_ERROR: An error occurred during initialization, during monitor discovery or when when initializing internal data structures",
        9 => c"RSMI_STATUS_NOT_YET_IMPLEMENTED: The called function has not been implemented in this system for this device type",
        10 => c"RSMI_STATUS_NOT_FOUND: An item required to complete the call was not found",
        11 => c"RSMI_STATUS_INSUFFICIENT_SIZE: Not enough resources were available to fully execute the call",
        12 => c"RSMI_STATUS_INTERRUPT: An interrupt occurred while executing the function",
        13 => c"RSMI_STATUS_UNEXPECTED_SIZE: Data (usually from reading a file) was out of range from what was expected",
        14 => c"RSMI_STATUS_NO_DATA: No data was found for a given input",
        15 => c"RSMI_STATUS_UNEXPECTED_DATA: The data read or provided was not what was expected",
        16 => c"RSMI_STATUS_BUSY: A resource or mutex could not be acquired because it is already being used",
        17 => c"RSMI_STATUS_REFCOUNT_OVERFLOW: An internal reference counter exceeded INT32_MAX",
        0xFFFF_FFFF => c"RSMI_STATUS_UNKNOWN_ERROR: An unknown error prevented the call from completing successfully",
        _ => return None,
    })
}

const AMDSMI_CODES: xpupool_cabi::Codes<AmdsmiStatus> = xpupool_cabi::Codes {
    success: AMDSMI_STATUS_SUCCESS,
    internal: AMDSMI_STATUS_INTERNAL_EXCEPTION,
};

const RSMI_CODES: xpupool_cabi::Codes<RsmiStatus> = xpupool_cabi::Codes {
    success: RSMI_STATUS_SUCCESS,
    internal: RSMI_STATUS_INTERNAL_EXCEPTION,
};

/// Runs one exported AMD SMI call.
pub(crate) fn amdsmi(name: &'static str, body: impl FnOnce() -> Res) -> AmdsmiStatus {
    xpupool_cabi::init_logging();
    xpupool_cabi::enter(name, AMDSMI_CODES, || body().map_err(Fail::amdsmi))
}

/// Runs one exported ROCm SMI call.
pub(crate) fn rsmi(name: &'static str, body: impl FnOnce() -> Res) -> RsmiStatus {
    xpupool_cabi::init_logging();
    xpupool_cabi::enter(name, RSMI_CODES, || body().map_err(Fail::rsmi))
}

fn unsupported(name: &'static str) -> Res {
    if xpupool_cabi::first_time(name) {
        tracing::warn!(
            "{name} is not supported by xpupool's AMD SMI stand-in; returning NOT_SUPPORTED"
        );
    }
    Err(Fail::NotSupported)
}

/// What every AMD SMI entry point without an implementation answers: NOT_INIT
/// before `amdsmi_init`, NOT_SUPPORTED after it (logging its name once).
pub(crate) fn amdsmi_unsupported(name: &'static str) -> AmdsmiStatus {
    amdsmi(name, || {
        crate::state::smi(crate::state::Api::Amdsmi)?;
        unsupported(name)
    })
}

/// As [`amdsmi_unsupported`], for ROCm SMI.
pub(crate) fn rsmi_unsupported(name: &'static str) -> RsmiStatus {
    rsmi(name, || {
        crate::state::smi(crate::state::Api::Rsmi)?;
        unsupported(name)
    })
}

/// Writes through an out-pointer, or `Invalid` when it is NULL.
pub(crate) fn put<T>(out: *mut T, value: T) -> Res {
    xpupool_cabi::put(out, value, Fail::Invalid)
}

/// Reads an in/out count, or `Invalid` when the pointer is NULL.
pub(crate) fn read<T: Copy>(ptr: *const T) -> Res<T> {
    if ptr.is_null() {
        return Err(Fail::Invalid);
    }
    // SAFETY: non-null; the API contract makes it point to a T.
    Ok(unsafe { ptr.read_unaligned() })
}

/// Copies `text` and a NUL into the caller's buffer of `length` bytes: `Invalid`
/// for a NULL buffer or zero length, `InsufficientSize` when it does not fit (the
/// buffer then holds as much as fits, NUL-terminated, as the real libraries do).
pub(crate) fn put_str(buf: *mut c_char, length: usize, text: &str) -> Res {
    if buf.is_null() || length == 0 {
        return Err(Fail::Invalid);
    }
    let bytes = text.as_bytes();
    let n = bytes.len().min(length - 1);
    // SAFETY: the caller promises `length` writable bytes at `buf`; we write n + 1 ≤ length.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
        buf.add(n).write(0);
    }
    if n < bytes.len() {
        Err(Fail::InsufficientSize)
    } else {
        Ok(())
    }
}

/// A fixed-size C string field holding `text`, truncated to leave its NUL.
pub(crate) fn c_chars<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (slot, &b) in out
        .iter_mut()
        .zip(text.as_bytes().iter().take(N.saturating_sub(1)))
    {
        *slot = b as c_char;
    }
    out
}

/// Defines exported AMD SMI entry points. Each body returns [`Res`].
macro_rules! export_amdsmi {
    ($( $(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block )*) => {
        $(
            $(#[$meta])*
            #[no_mangle]
            #[allow(clippy::missing_safety_doc, unreachable_pub)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $crate::boundary::AmdsmiStatus {
                $crate::boundary::amdsmi(stringify!($name), move || -> $crate::boundary::Res { $body })
            }
        )*
    };
}
pub(crate) use export_amdsmi;

/// Defines exported ROCm SMI entry points. Each body returns [`Res`].
macro_rules! export_rsmi {
    ($( $(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block )*) => {
        $(
            $(#[$meta])*
            #[no_mangle]
            #[allow(clippy::missing_safety_doc, unreachable_pub)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $crate::boundary::RsmiStatus {
                $crate::boundary::rsmi(stringify!($name), move || -> $crate::boundary::Res { $body })
            }
        )*
    };
}
pub(crate) use export_rsmi;
