//! The C boundary: every exported function runs through [`enter`], which turns a
//! `Result` into a `CUresult`, catches panics (never unwinding into C), and answers
//! `CUDA_ERROR_DEINITIALIZED` once the process is tearing down.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub(crate) use xpupool_cuda_types::CUresult;
use xpupool_cuda_types::{
    CUDA_ERROR_DEINITIALIZED, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_SUPPORTED,
    CUDA_ERROR_UNKNOWN, CUDA_SUCCESS,
};

/// Set by the exit handler: from then on every call answers DEINITIALIZED.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// The result type of every implementation: `Err` carries the `CUresult` to return.
pub(crate) type Res<T = ()> = Result<T, CUresult>;

pub(crate) fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::Acquire)
}

pub(crate) fn begin_shutdown() {
    SHUTTING_DOWN.store(true, Ordering::Release);
}

/// Runs one exported call.
pub(crate) fn enter(name: &'static str, body: impl FnOnce() -> Res) -> CUresult {
    if shutting_down() {
        return CUDA_ERROR_DEINITIALIZED;
    }
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(code)) => {
            tracing::debug!(call = name, code, "call failed");
            code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(call = name, panic = %what, "internal error in xpupool's libcuda");
            CUDA_ERROR_UNKNOWN
        }
    }
}

/// What every driver entry point without an implementation answers; logs its name once.
pub(crate) fn unsupported(name: &'static str) -> CUresult {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    if shutting_down() {
        return CUDA_ERROR_DEINITIALIZED;
    }
    crate::log::init();
    let first = SEEN
        .lock()
        .map(|mut seen| seen.get_or_insert_with(HashSet::new).insert(name))
        .unwrap_or(false);
    if first {
        tracing::warn!(
            "{name} is not supported by xpupool yet; returning CUDA_ERROR_NOT_SUPPORTED"
        );
    }
    CUDA_ERROR_NOT_SUPPORTED
}

/// Writes through an out-pointer, or INVALID_VALUE when it is NULL.
pub(crate) fn put<T>(out: *mut T, value: T) -> Res {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null; the caller of the driver API promises it points to a T.
    unsafe { out.write(value) };
    Ok(())
}

/// Reads a NUL-terminated C string argument.
pub(crate) fn c_str<'a>(ptr: *const std::os::raw::c_char) -> Res<&'a str> {
    if ptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the API contract makes it a NUL-terminated string that outlives the call.
    unsafe { std::ffi::CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| CUDA_ERROR_INVALID_VALUE)
}

/// Defines exported driver entry points. Each body returns [`Res`].
macro_rules! export {
    ($( $(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block )*) => {
        $(
            $(#[$meta])*
            #[no_mangle]
            #[allow(clippy::missing_safety_doc, unreachable_pub)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $crate::boundary::CUresult {
                $crate::boundary::enter(stringify!($name), move || -> $crate::boundary::Res { $body })
            }
        )*
    };
}
pub(crate) use export;
