//! What xpupool's C-ABI stand-ins (`libcuda.so.1`, `libnvidia-ml.so.1`, `libamd_smi.so`) share.
//!
//! - [`enter`]: every exported call runs through it; it turns a `Result` into the
//!   library's status code and catches panics, so nothing unwinds into C.
//! - [`first_time`]: for logging an unsupported entry point once.
//! - [`put`] and [`c_str`]: the argument checks every entry point needs.
//! - [`init_logging`]: the library's log, to stderr, filtered by `XPUPOOL_LOG`.
//! - [`build`]: used by the libraries' build scripts to export a stub for every
//!   entry point nobody has written, and a symbol table of everything exported.

pub mod build;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once};

/// The status codes one library answers with.
#[derive(Debug, Clone, Copy)]
pub struct Codes<C> {
    /// Success.
    pub success: C,
    /// What a caught panic becomes.
    pub internal: C,
}

/// Runs one exported call: `Ok` is `codes.success`, `Err(c)` is `c`, and a panic is
/// logged and answered with `codes.internal`.
pub fn enter<C: Copy + std::fmt::Debug>(
    name: &'static str,
    codes: Codes<C>,
    body: impl FnOnce() -> Result<(), C>,
) -> C {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => codes.success,
        Ok(Err(code)) => {
            tracing::debug!(call = name, ?code, "call failed");
            code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(call = name, panic = %what, "internal error in xpupool; returning {:?}", codes.internal);
            codes.internal
        }
    }
}

/// Whether `name` is seen here for the first time (for logging it once).
pub fn first_time(name: &'static str) -> bool {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    SEEN.lock()
        .map(|mut seen| seen.get_or_insert_with(HashSet::new).insert(name))
        .unwrap_or(false)
}

/// Writes through an out-pointer, or `null` when it is NULL.
///
/// Safe to call in the sense the C entry points are: the pointer comes from the C
/// caller, whose API contract makes a non-NULL one valid.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn put<T, C>(out: *mut T, value: T, null: C) -> Result<(), C> {
    if out.is_null() {
        return Err(null);
    }
    // SAFETY: non-null; the caller of the C API promises it points to a T (possibly
    // unaligned, as C structs in caller buffers can be).
    unsafe { out.write_unaligned(value) };
    Ok(())
}

/// Reads a NUL-terminated UTF-8 string argument, or `invalid` when it is NULL or
/// not UTF-8 (pointer validity as for [`put`]).
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn c_str<'a, C: Copy>(ptr: *const std::ffi::c_char, invalid: C) -> Result<&'a str, C> {
    if ptr.is_null() {
        return Err(invalid);
    }
    // SAFETY: the API contract makes it a NUL-terminated string that outlives the call.
    unsafe { std::ffi::CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| invalid)
}

/// Starts the library's logging once: to stderr, filtered by `XPUPOOL_LOG`
/// (default: warnings).
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("XPUPOOL_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODES: Codes<u32> = Codes {
        success: 0,
        internal: 999,
    };

    #[test]
    fn results_become_codes_and_panics_do_not_escape() {
        assert_eq!(enter("ok", CODES, || Ok(())), 0);
        assert_eq!(enter("err", CODES, || Err(7)), 7);
        assert_eq!(enter("panic", CODES, || panic!("boom")), 999);
    }

    #[test]
    fn arguments() {
        let mut slot = 0u64;
        assert_eq!(put(std::ptr::null_mut::<u64>(), 1, 2), Err(2));
        put(&mut slot, 5, 2).unwrap();
        assert_eq!(slot, 5);
        assert_eq!(c_str(std::ptr::null(), 1), Err(1));
        assert_eq!(c_str(c"name".as_ptr(), 1), Ok("name"));
        assert!(first_time("x") && !first_time("x"));
    }
}
