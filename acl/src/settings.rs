//! Settings torch_npu makes at start: compile options, system parameters,
//! timeouts, overflow switches. Each is kept and read back as set; what the
//! stand-in device does with them is said at each.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Mutex;

use crate::runtime::device;
use crate::*;

/// `aclCompileOpt` → its value, as `aclSetCompileopt` set it. Nothing compiles
/// operators behind the stand-in (aclnn operators are the server's), so they
/// are only read back.
static COMPILE_OPTIONS: Mutex<Option<HashMap<c_int, CString>>> = Mutex::new(None);
/// `aclSysParamOpt` → value (process-wide and per context alike). The stand-in
/// device's operators are deterministic whatever ACL_OPT_DETERMINISTIC says.
static SYS_PARAMS: Mutex<Option<HashMap<c_int, i64>>> = Mutex::new(None);

/// # Safety
/// `value` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn aclSetCompileopt(opt: c_int, value: *const c_char) -> AclError {
    call(|| {
        if value.is_null() {
            return Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                "aclSetCompileopt: a NULL value",
            ));
        }
        // SAFETY: the API contract: a NUL-terminated string.
        let value = unsafe { CStr::from_ptr(value) }.to_owned();
        let mut options = COMPILE_OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        options.get_or_insert_with(HashMap::new).insert(opt, value);
        Ok(())
    })
}

/// `ACL_OP_JIT_COMPILE`.
const JIT_COMPILE: c_int = 10;

/// An option's value: what was set, else CANN's default where the stand-in
/// has one. `ACL_OP_JIT_COMPILE` is "disable", as on a 910B with its operators'
/// kernels installed (nothing is compiled behind the stand-in): torch_npu then
/// keeps tensors in ND instead of casting weights to the cube's private formats.
fn compile_option(opt: c_int) -> Option<CString> {
    let options = COMPILE_OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    match options.as_ref().and_then(|o| o.get(&opt)) {
        Some(v) => Some(v.clone()),
        None if opt == JIT_COMPILE => Some(c"disable".to_owned()),
        None => None,
    }
}

#[no_mangle]
pub extern "C" fn aclGetCompileoptSize(opt: c_int) -> usize {
    compile_option(opt).map_or(1, |v| v.as_bytes_with_nul().len())
}

#[no_mangle]
pub extern "C" fn aclGetCompileopt(opt: c_int, value: *mut c_char, length: usize) -> AclError {
    call(|| {
        let v = compile_option(opt).unwrap_or_default();
        let bytes = v.as_bytes_with_nul();
        if value.is_null() || length < bytes.len() {
            return Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                "aclGetCompileopt: the buffer is too small",
            ));
        }
        // SAFETY: the caller's buffer of `length` bytes, checked large enough.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.cast::<u8>(), bytes.len()) };
        Ok(())
    })
}

/// `aclopSetCompileFlag`: whether the old GE single-operator path compiles
/// (it does not exist behind the stand-in; aclnn is used).
#[no_mangle]
pub extern "C" fn aclopSetCompileFlag(_flag: c_int) -> AclError {
    ACL_SUCCESS
}

fn set_param(opt: c_int, value: i64) -> AclError {
    let mut params = SYS_PARAMS.lock().unwrap_or_else(|e| e.into_inner());
    params.get_or_insert_with(HashMap::new).insert(opt, value);
    ACL_SUCCESS
}

fn get_param(opt: c_int, value: *mut i64) -> AclError {
    call(|| {
        let params = SYS_PARAMS.lock().unwrap_or_else(|e| e.into_inner());
        // A parameter never set has its default, 0 (ACL_OPT_DETERMINISTIC off,
        // ACL_OPT_ENABLE_DEBUG_KERNEL off, …).
        put(
            value,
            params
                .as_ref()
                .and_then(|p| p.get(&opt).copied())
                .unwrap_or(0),
        )
    })
}

#[no_mangle]
pub extern "C" fn aclrtSetSysParamOpt(opt: c_int, value: i64) -> AclError {
    set_param(opt, value)
}

#[no_mangle]
pub extern "C" fn aclrtCtxSetSysParamOpt(opt: c_int, value: i64) -> AclError {
    set_param(opt, value)
}

#[no_mangle]
pub extern "C" fn aclrtGetSysParamOpt(opt: c_int, value: *mut i64) -> AclError {
    get_param(opt, value)
}

#[no_mangle]
pub extern "C" fn aclrtCtxGetSysParamOpt(opt: c_int, value: *mut i64) -> AclError {
    get_param(opt, value)
}

/// Operator timeouts: the pool server's own limits on device work apply (a
/// kernel that runs past them fails its stream), whatever is set here.
#[no_mangle]
pub extern "C" fn aclrtSetOpWaitTimeout(_timeout: u32) -> AclError {
    ACL_SUCCESS
}

#[no_mangle]
pub extern "C" fn aclrtSetOpExecuteTimeOut(_timeout: u32) -> AclError {
    ACL_SUCCESS
}

#[no_mangle]
pub extern "C" fn aclrtSetOpExecuteTimeOutWithMs(_timeout: u32) -> AclError {
    ACL_SUCCESS
}

#[no_mangle]
pub extern "C" fn aclrtSetOpExecuteTimeOutV2(timeout: u64, actual: *mut u64) -> AclError {
    call(|| put(actual, timeout))
}

/// Overflow detection per stream: the stand-in device computes IEEE floats and
/// reports no overflow status, so the switch reads back off.
#[no_mangle]
pub extern "C" fn aclrtSetStreamOverflowSwitch(_stream: *mut c_void, _flag: u32) -> AclError {
    ACL_SUCCESS
}

#[no_mangle]
pub extern "C" fn aclrtGetStreamOverflowSwitch(_stream: *mut c_void, flag: *mut u32) -> AclError {
    call(|| put(flag, 0))
}

#[no_mangle]
pub extern "C" fn aclrtDeviceGetBareTgid(pid: *mut i32) -> AclError {
    // SAFETY: getpid has no preconditions.
    call(|| put(pid, unsafe { libc::getpid() }))
}

#[no_mangle]
pub extern "C" fn aclrtGetPrimaryCtxState(
    device_id: i32,
    flags: *mut u32,
    active: *mut i32,
) -> AclError {
    call(|| {
        let on = device()
            .map(|(_, d)| d as i32 == device_id)
            .unwrap_or(false);
        if !flags.is_null() {
            put(flags, 0)?;
        }
        put(active, i32::from(on))
    })
}

/// A log line of level `level` from `file`:`line`, formatted (the CANN
/// libraries' `aclAppLog`, `acl/tools/applog.c`): errors (level 3 and above)
/// are said on stderr, the rest dropped, as CANN drops what its log level hides.
///
/// # Safety
/// `file` and `text` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn xpupool_acl_log(
    level: c_int,
    file: *const c_char,
    line: u32,
    text: *const c_char,
) {
    if level < 3 || text.is_null() {
        return;
    }
    let read = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: the caller's NUL-terminated string.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    say(&format!(
        "CANN log (error) from {}:{line}: {}",
        read(file),
        read(text).trim_end()
    ));
}

/// `aclAppLog(level, func, file, line, fmt, ...)` looked up on the core itself:
/// the format unformatted (its variadic arguments cannot be read in Rust). The
/// libraries torch_npu opens each have the formatting one (`acl/tools/applog.c`),
/// which their own look-ups and links find first.
///
/// # Safety
/// `file` and `fmt` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn aclAppLog(
    level: c_int,
    _func: *const c_char,
    file: *const c_char,
    line: u32,
    fmt: *const c_char,
) {
    // SAFETY: the caller's strings, as this function's contract says.
    unsafe { xpupool_acl_log(level, file, line, fmt) }
}
