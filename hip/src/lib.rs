//! The core of xpupool's libamdhip64 stand-in.
//!
//! HIP programs and libraries link `libamdhip64.so`, `.so.5`, `.so.6` or `.so.7`,
//! and the loader checks that each symbol comes in the version node the real
//! library puts it in. `scripts/build-hip-libs.sh` makes those four libraries:
//! each exports every symbol of the real one (vendor-headers/hip-symbols-5.2.3.tsv)
//! in its node, as a jump to this library's `xph_<symbol>`, so one process that
//! loads several of them has one state.
//!
//! What is here so far: HIP's error names and strings, its last-error rule (5.x:
//! every call's own result is the last error, which `hipGetLastError` returns and
//! clears), the version queries, `hipCreateChannelDesc`, compiler-rt's half
//! conversions; and over the pool's protocol ([`memory`]): devices (count, set,
//! get, handle, name, UUID, total memory; properties and attributes in
//! [`device`]: a gfx90a device), `hipMalloc`, `hipFree`, `hipMemcpy` (any direction: `hipMemcpyDefault` by the device ranges), `hipMemset`,
//! `hipMemGetInfo`, `hipDeviceSynchronize`; streams, events, and copies and
//! memsets in a stream ([`stream`]); device code ([`module`]): what hipcc's
//! constructors register (`__hipRegisterFatBinary`, `__hipRegisterFunction`,
//! `__hipRegisterVar`, `__hipUnregisterFatBinary`; loaded lazily, only the code
//! object for the device's target ID, `image`), the module API (`hipModuleLoad`,
//! `hipModuleLoadData`, `hipModuleLoadDataEx`, `hipModuleGetFunction`,
//! `hipModuleGetGlobal`, `hipModuleUnload`) and the symbol calls
//! (`hipMemcpyToSymbol`, `hipMemcpyFromSymbol` and their `Async` forms,
//! `hipGetSymbolAddress`, `hipGetSymbolSize`); launches ([`launch`]):
//! `__hipPushCallConfiguration`/`__hipPopCallConfiguration`, `hipLaunchKernel`
//! (so `<<<…>>>` and `hipLaunchKernelGGL`), `hipModuleLaunchKernel` (by
//! `kernelParams` or the `extra` buffer) and `hipExtModuleLaunchKernel` /
//! `hipHccModuleLaunchKernel` (whole blocks only), arguments packed by the
//! layout the server reads from the code object's metadata. Not yet:
//! `__managed__` variables (`__hipRegisterManagedVar` says so), textures and
//! surfaces, `hipFuncGetAttributes`, cooperative launches. Every other entry
//! point logs its name once and answers `hipErrorNotSupported` (or NULL, or
//! nothing, as it returns). No entry point lets a panic unwind into its caller
//! ([`memory::call`]). Each implemented function whose name HIP's headers
//! declare is checked against the header's signature when this crate compiles
//! (`generated/prototypes.rs`, from vendor-headers/gen_hip_prototypes.py).

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{c_char, c_int};
use std::sync::Mutex;

pub mod attributes;
pub mod device;
pub mod device_r0600;
mod half;
mod image;
pub mod launch;
pub mod memory;
pub mod module;
pub mod stream;

#[allow(non_snake_case, unreachable_pub, clippy::missing_safety_doc)]
mod stubs {
    include!(concat!(env!("OUT_DIR"), "/stubs.rs"));
}

include!(concat!(env!("OUT_DIR"), "/errors.rs"));

/// The C signatures HIP's headers give its functions (generated).
pub(crate) mod generated {
    #[rustfmt::skip]
    pub(crate) mod prototypes;
}

// Each export checked against its header's signature (hip/build.rs).
include!(concat!(env!("OUT_DIR"), "/checks.rs"));

/// `hipError_t`.
pub type HipError = c_int;
pub const HIP_SUCCESS: HipError = 0;
pub const HIP_ERROR_INVALID_VALUE: HipError = 1;
pub const HIP_ERROR_NOT_SUPPORTED: HipError = 801;
/// `HIPRTC_ERROR_INTERNAL_ERROR`: what unimplemented hiprtc calls answer.
pub const HIPRTC_ERROR_INTERNAL_ERROR: c_int = 11;
/// `HIP_VERSION` of the release whose ABI this follows (5.2.21153).
pub const HIP_VERSION: c_int = 50_221_153;
/// Entry points the core defines itself (the others are generated stubs).
pub const IMPLEMENTED: &str = env!("XPUPOOL_HIP_IMPLEMENTED");

thread_local! {
    /// The last call's result on this thread.
    static LAST: Cell<HipError> = const { Cell::new(HIP_SUCCESS) };
}

/// Keeps `code` as this thread's last result, and returns it.
fn record(code: HipError) -> HipError {
    LAST.set(code);
    code
}

/// Says once per entry point that it is not implemented.
pub(crate) fn log_once(name: &'static str) {
    if first_time(Once::Entry(name)) {
        eprintln!("xpupool: {name} is not implemented yet (the HIP stand-in answers hipErrorNotSupported)");
    }
}

/// What is said only once: an entry point, or an attribute with no answer.
#[derive(PartialEq, Eq, Hash)]
pub(crate) enum Once {
    Entry(&'static str),
    Attribute(c_int),
}

/// Whether `what` is seen for the first time in this process.
pub(crate) fn first_time(what: Once) -> bool {
    static SEEN: Mutex<Option<HashSet<Once>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.get_or_insert_with(HashSet::new).insert(what)
}

pub(crate) fn unsupported(name: &'static str) -> HipError {
    log_once(name);
    record(HIP_ERROR_NOT_SUPPORTED)
}

pub(crate) fn unsupported_rtc(name: &'static str) -> c_int {
    log_once(name);
    HIPRTC_ERROR_INTERNAL_ERROR
}

/// `(name, description)` of `code`, NUL-terminated; an unknown code is
/// `hipErrorUnknown`'s.
fn error_text(code: HipError) -> (&'static str, &'static str) {
    let find = |c: HipError| ERRORS.iter().find(|(k, _, _)| *k == c);
    let (_, name, description) = find(code).or_else(|| find(999)).copied().unwrap_or((
        999,
        "hipErrorUnknown\0",
        "hipErrorUnknown\0",
    ));
    (name, description)
}

#[export_name = "xph_hipGetErrorName"]
pub extern "C" fn hip_get_error_name(code: HipError) -> *const c_char {
    error_text(code).0.as_ptr().cast()
}

#[export_name = "xph_hipGetErrorString"]
pub extern "C" fn hip_get_error_string(code: HipError) -> *const c_char {
    error_text(code).1.as_ptr().cast()
}

#[export_name = "xph_hipGetLastError"]
pub extern "C" fn hip_get_last_error() -> HipError {
    LAST.replace(HIP_SUCCESS)
}

#[export_name = "xph_hipPeekAtLastError"]
pub extern "C" fn hip_peek_at_last_error() -> HipError {
    LAST.get()
}

fn put_version(out: *mut c_int) -> HipError {
    if out.is_null() {
        return record(HIP_ERROR_INVALID_VALUE);
    }
    // SAFETY: the caller's out-pointer, checked non-NULL.
    unsafe { out.write(HIP_VERSION) };
    record(HIP_SUCCESS)
}

#[export_name = "xph_hipRuntimeGetVersion"]
pub extern "C" fn hip_runtime_get_version(out: *mut c_int) -> HipError {
    put_version(out)
}

#[export_name = "xph_hipDriverGetVersion"]
pub extern "C" fn hip_driver_get_version(out: *mut c_int) -> HipError {
    put_version(out)
}

/// `hipChannelFormatDesc`: bits per channel, and the kind (`hipChannelFormatKind`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelFormatDesc {
    pub x: c_int,
    pub y: c_int,
    pub z: c_int,
    pub w: c_int,
    pub f: c_int,
}

#[export_name = "xph_hipCreateChannelDesc"]
pub extern "C" fn hip_create_channel_desc(
    x: c_int,
    y: c_int,
    z: c_int,
    w: c_int,
    f: c_int,
) -> ChannelFormatDesc {
    ChannelFormatDesc { x, y, z, w, f }
}

#[export_name = "xph___gnu_f2h_ieee"]
pub extern "C" fn gnu_f2h_ieee(value: f32) -> u16 {
    half::from_f32(value)
}

#[export_name = "xph___gnu_h2f_ieee"]
pub extern "C" fn gnu_h2f_ieee(value: u16) -> f32 {
    half::to_f32(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn text(p: *const c_char) -> &'static str {
        // SAFETY: the error table's NUL-terminated strings.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap()
    }

    #[test]
    fn errors_have_the_headers_names_and_unknown_codes_are_unknown() {
        assert_eq!(text(hip_get_error_name(801)), "hipErrorNotSupported");
        assert_eq!(text(hip_get_error_name(2)), "hipErrorOutOfMemory");
        assert_eq!(text(hip_get_error_name(123_456)), "hipErrorUnknown");
        assert!(text(hip_get_error_string(801)).contains("not supported"));
        // A code the header gives no comment describes itself by name.
        assert_eq!(text(hip_get_error_string(2)), "hipErrorOutOfMemory");
    }

    #[test]
    fn the_last_error_is_the_last_calls_and_reading_it_clears_it() {
        assert_eq!(hip_get_last_error(), HIP_SUCCESS);
        assert_eq!(
            hip_runtime_get_version(std::ptr::null_mut()),
            HIP_ERROR_INVALID_VALUE
        );
        assert_eq!(hip_peek_at_last_error(), HIP_ERROR_INVALID_VALUE);
        // A successful call is the last result too (HIP 5.x).
        let mut v = 0;
        assert_eq!(hip_driver_get_version(&mut v), HIP_SUCCESS);
        assert_eq!(v, HIP_VERSION);
        assert_eq!(hip_get_last_error(), HIP_SUCCESS);
        assert_eq!(unsupported("hipMalloc"), HIP_ERROR_NOT_SUPPORTED);
        assert_eq!(hip_get_last_error(), HIP_ERROR_NOT_SUPPORTED);
        assert_eq!(hip_get_last_error(), HIP_SUCCESS, "cleared by reading");
        assert!(IMPLEMENTED.parse::<usize>().unwrap() >= 9);
    }
}
