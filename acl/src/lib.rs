//! The core of xpupool's CANN stand-in: what torch_npu finds when it opens
//! `libascendcl.so`, `libopapi.so`, `libhccl.so` and the other CANN libraries.
//!
//! torch_npu opens CANN's libraries by bare name and looks functions up with
//! `dlsym` on their handles, so no preload can stand in for them: xpupool ships
//! libraries under those names (`scripts/build-acl-libs.sh`), each an object
//! whose only dependency is this core, so a lookup on any of them finds the
//! core's function, and one process has one state. Their one function of their
//! own is `aclAppLog`, which formats its C variadic arguments
//! (`acl/tools/applog.c`) and hands the line to [`settings::xpupool_acl_log`].
//!
//! Every function torch_npu imports directly is exported (Python loads it with
//! RTLD_NOW, so one missing symbol fails `import torch_npu`): those src/ does not
//! implement are generated stubs that say once they are not implemented and
//! answer `ACL_ERROR_API_NOT_SUPPORT` (or NULL, nothing or 0, as they return).
//! Functions torch_npu only looks up are exported only when implemented, so a
//! lookup of another is NULL and torch_npu takes its fallback.
//!
//! What is implemented ([`runtime`]): initialisation, devices and their
//! properties (an "Ascend910B3" whose memory is the tenant's quota), contexts,
//! streams, events, device and pinned host memory, copies and memsets, over the
//! pool's protocol; errors with ACL's codes and `aclGetRecentErrMsg`. Kernel
//! binaries outside aclnn and their launches are [`kernel`]'s. No entry
//! point lets a panic unwind into its caller ([`call`]).

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{c_char, CString};
use std::sync::Mutex;

use xpupool_protocol::{code, CuError};

pub mod callback;
pub mod dcmi;
pub mod hccl;
pub mod kernel;
pub mod nn;
pub mod op;
pub mod runtime;
pub mod settings;
pub mod vmm;

#[allow(non_snake_case, unreachable_pub, clippy::missing_safety_doc)]
mod stubs {
    include!(concat!(env!("OUT_DIR"), "/stubs.rs"));
}

/// `aclError`.
pub type AclError = i32;
pub const ACL_SUCCESS: AclError = 0;
pub const ACL_ERROR_INVALID_PARAM: AclError = 100_000;
pub const ACL_ERROR_UNINITIALIZE: AclError = 100_001;
pub const ACL_ERROR_REPEAT_INITIALIZE: AclError = 100_002;
pub const ACL_ERROR_API_NOT_SUPPORT: AclError = 200_001;
pub const ACL_ERROR_RT_PARAM_INVALID: AclError = 107_000;
pub const ACL_ERROR_RT_INVALID_DEVICEID: AclError = 107_001;
pub const ACL_ERROR_RT_CONTEXT_NULL: AclError = 107_002;
pub const ACL_ERROR_RT_INVALID_HANDLE: AclError = 107_017;
pub const ACL_ERROR_RT_FEATURE_NOT_SUPPORT: AclError = 207_000;
pub const ACL_ERROR_RT_MEMORY_ALLOCATION: AclError = 207_001;
pub const ACL_ERROR_RT_NO_DEVICE: AclError = 207_004;
pub const ACL_ERROR_RT_INTERNAL_ERROR: AclError = 507_000;
pub const ACL_ERROR_RT_AICORE_EXCEPTION: AclError = 507_015;
pub const ACL_ERROR_RT_STREAM_SYNC_TIMEOUT: AclError = 507_046;
/// Entry points of the symbol table the core defines itself (the others are stubs).
pub const IMPLEMENTED: &str = env!("XPUPOOL_ACL_IMPLEMENTED");

thread_local! {
    /// The last failure's message on this thread (`aclGetRecentErrMsg`).
    static RECENT: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// A failed call: ACL's code, and what `aclGetRecentErrMsg` says of it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: AclError,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: AclError, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<AclError> for Failure {
    fn from(code: AclError) -> Self {
        Failure::new(code, error_name(code))
    }
}

impl From<CuError> for Failure {
    fn from(e: CuError) -> Self {
        Failure::new(acl_code(&e), e.message)
    }
}

/// ACL's code for the server's (CUDA's numbering).
pub(crate) fn acl_code(e: &CuError) -> AclError {
    match e.code {
        code::INVALID_VALUE => ACL_ERROR_INVALID_PARAM,
        // A kernel binary CANN could not read (rt's RT_ERROR_INVALID_VALUE).
        code::INVALID_IMAGE => ACL_ERROR_RT_PARAM_INVALID,
        code::OUT_OF_MEMORY => ACL_ERROR_RT_MEMORY_ALLOCATION,
        code::NO_DEVICE => ACL_ERROR_RT_NO_DEVICE,
        code::INVALID_DEVICE => ACL_ERROR_RT_INVALID_DEVICEID,
        code::INVALID_HANDLE | code::NOT_FOUND => ACL_ERROR_RT_INVALID_HANDLE,
        code::NOT_SUPPORTED => ACL_ERROR_API_NOT_SUPPORT,
        code::LAUNCH_TIMEOUT => ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
        code::ILLEGAL_ADDRESS
        | code::LAUNCH_FAILED
        | code::ILLEGAL_INSTRUCTION
        | code::MISALIGNED_ADDRESS
        | code::ASSERT => ACL_ERROR_RT_AICORE_EXCEPTION,
        _ => ACL_ERROR_RT_INTERNAL_ERROR,
    }
}

/// The name ACL's headers give `code`.
pub(crate) fn error_name(code: AclError) -> &'static str {
    match code {
        ACL_SUCCESS => "ACL_SUCCESS",
        ACL_ERROR_INVALID_PARAM => "ACL_ERROR_INVALID_PARAM",
        ACL_ERROR_UNINITIALIZE => "ACL_ERROR_UNINITIALIZE",
        ACL_ERROR_REPEAT_INITIALIZE => "ACL_ERROR_REPEAT_INITIALIZE",
        ACL_ERROR_API_NOT_SUPPORT => "ACL_ERROR_API_NOT_SUPPORT",
        ACL_ERROR_RT_PARAM_INVALID => "ACL_ERROR_RT_PARAM_INVALID",
        ACL_ERROR_RT_INVALID_DEVICEID => "ACL_ERROR_RT_INVALID_DEVICEID",
        ACL_ERROR_RT_CONTEXT_NULL => "ACL_ERROR_RT_CONTEXT_NULL",
        ACL_ERROR_RT_INVALID_HANDLE => "ACL_ERROR_RT_INVALID_HANDLE",
        ACL_ERROR_RT_FEATURE_NOT_SUPPORT => "ACL_ERROR_RT_FEATURE_NOT_SUPPORT",
        ACL_ERROR_RT_MEMORY_ALLOCATION => "ACL_ERROR_RT_MEMORY_ALLOCATION",
        ACL_ERROR_RT_NO_DEVICE => "ACL_ERROR_RT_NO_DEVICE",
        ACL_ERROR_RT_AICORE_EXCEPTION => "ACL_ERROR_RT_AICORE_EXCEPTION",
        ACL_ERROR_RT_STREAM_SYNC_TIMEOUT => "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
        _ => "ACL_ERROR_RT_INTERNAL_ERROR",
    }
}

/// Runs a call's body: a failure's message becomes the thread's recent error
/// message, and a panic (a bug here) does not unwind into the C caller.
pub(crate) fn call(body: impl FnOnce() -> Result<(), Failure>) -> AclError {
    match guard(body) {
        Some(Ok(())) => ACL_SUCCESS,
        Some(Err(f)) => {
            let text = format!("xpupool: {} ({})", f.message, error_name(f.code));
            RECENT.with(|r| *r.borrow_mut() = CString::new(text).ok());
            f.code
        }
        None => ACL_ERROR_RT_INTERNAL_ERROR,
    }
}

/// Runs `body`, catching a panic (`None`, said on stderr).
pub(crate) fn guard<T>(body: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(v) => Some(v),
        Err(_) => {
            say("internal error in the CANN stand-in (a panic); the call failed");
            None
        }
    }
}

/// Says `what` on stderr, if it can: a closed stderr (EPIPE) is no reason to
/// fail, and `eprintln!` would panic, which across `extern "C"` aborts.
pub(crate) fn say(what: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "xpupool: {what}");
}

/// Says once per entry point that it is not implemented.
pub(crate) fn log_once(name: &'static str) {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(name) {
        say(&format!(
            "{name} is not implemented yet (the CANN stand-in answers ACL_ERROR_API_NOT_SUPPORT)"
        ));
    }
}

pub(crate) fn unsupported(name: &'static str) -> AclError {
    log_once(name);
    call(|| {
        Err(Failure::new(
            ACL_ERROR_API_NOT_SUPPORT,
            format!("{name} is not implemented by xpupool's CANN stand-in"),
        ))
    })
}

pub(crate) fn put<T>(out: *mut T, value: T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::new(ACL_ERROR_INVALID_PARAM, "a NULL out-pointer"));
    }
    // SAFETY: the caller's out-pointer, checked non-NULL.
    unsafe { out.write(value) };
    Ok(())
}

/// `aclGetRecentErrMsg`: the message of this thread's last failure, once
/// (NULL when there is none).
#[no_mangle]
pub extern "C" fn aclGetRecentErrMsg() -> *const c_char {
    thread_local! {
        static GIVEN: RefCell<Option<CString>> = const { RefCell::new(None) };
    }
    guard(|| {
        let recent = RECENT.with(|r| r.borrow_mut().take());
        GIVEN.with(|g| {
            let mut g = g.borrow_mut();
            *g = recent;
            g.as_ref().map_or(std::ptr::null(), |m| m.as_ptr())
        })
    })
    .unwrap_or(std::ptr::null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn a_failure_leaves_its_message_once_and_unknown_calls_say_not_supported() {
        assert!(aclGetRecentErrMsg().is_null());
        assert_eq!(unsupported("aclFoo"), ACL_ERROR_API_NOT_SUPPORT);
        // SAFETY: a NUL-terminated string this thread owns until its next call.
        let text = unsafe { CStr::from_ptr(aclGetRecentErrMsg()) }
            .to_str()
            .unwrap()
            .to_owned();
        assert!(text.contains("aclFoo is not implemented"), "{text}");
        assert!(aclGetRecentErrMsg().is_null(), "read once");
        assert!(IMPLEMENTED.parse::<usize>().unwrap() >= 30);
    }

    #[test]
    fn server_codes_become_acls() {
        let e = |c| CuError::new(c, "x");
        assert_eq!(
            acl_code(&e(code::OUT_OF_MEMORY)),
            ACL_ERROR_RT_MEMORY_ALLOCATION
        );
        assert_eq!(acl_code(&e(code::INVALID_VALUE)), ACL_ERROR_INVALID_PARAM);
        assert_eq!(acl_code(&e(code::NOT_SUPPORTED)), ACL_ERROR_API_NOT_SUPPORT);
        assert_eq!(acl_code(&e(code::UNKNOWN)), ACL_ERROR_RT_INTERNAL_ERROR);
    }
}
