//! The C boundary: every exported function runs through [`enter`], which turns a
//! `Result` into a `CUresult`, catches panics (never unwinding into C), and answers
//! `CUDA_ERROR_DEINITIALIZED` once the process is tearing down. With `XPUPOOL_TRACE`
//! set it records each call ([`xpupool_client::trace`]).

use std::sync::atomic::{AtomicBool, Ordering};

use xpupool_client::trace;

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

const CODES: xpupool_cabi::Codes<CUresult> = xpupool_cabi::Codes {
    success: CUDA_SUCCESS,
    internal: CUDA_ERROR_UNKNOWN,
};

/// Runs one exported call.
pub(crate) fn enter(name: &'static str, body: impl FnOnce() -> Res) -> CUresult {
    if shutting_down() {
        return CUDA_ERROR_DEINITIALIZED;
    }
    // Recording happens inside the caught region too: nothing may unwind into C.
    xpupool_cabi::enter(name, CODES, || {
        let traced = trace::begin(name);
        let result = body();
        if let Some(call) = traced {
            call.end(result.err().unwrap_or(CUDA_SUCCESS));
        }
        result
    })
}

/// What every driver entry point without an implementation answers; logs its name once.
pub(crate) fn unsupported(name: &'static str) -> CUresult {
    if shutting_down() {
        return CUDA_ERROR_DEINITIALIZED;
    }
    crate::log::init();
    if xpupool_cabi::first_time(name) {
        tracing::warn!(
            "{name} is not supported by xpupool yet; returning CUDA_ERROR_NOT_SUPPORTED"
        );
    }
    xpupool_cabi::enter(name, CODES, || {
        if let Some(call) = trace::begin(name) {
            call.end(CUDA_ERROR_NOT_SUPPORTED);
        }
        Err(CUDA_ERROR_NOT_SUPPORTED)
    })
}

/// Writes through an out-pointer, or INVALID_VALUE when it is NULL.
pub(crate) fn put<T>(out: *mut T, value: T) -> Res {
    xpupool_cabi::put(out, value, CUDA_ERROR_INVALID_VALUE)
}

/// Reads a NUL-terminated C string argument.
pub(crate) fn c_str<'a>(ptr: *const std::os::raw::c_char) -> Res<&'a str> {
    xpupool_cabi::c_str(ptr, CUDA_ERROR_INVALID_VALUE)
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

            // The signature CUDA's headers give it (`generated/prototypes.rs`):
            // a parameter of another type, or one too many or too few, does not
            // compile.
            const _: $crate::generated::prototypes::$name = $name;
        )*
    };
}
pub(crate) use export;
