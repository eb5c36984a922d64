//! Kernels outside aclnn: Ascend binaries loaded from memory or a file
//! (`aclrtBinaryLoadFromData`/`FromFile`, and the older `rtDevBinaryRegister`
//! that Ascend C's `<<<>>>` host stubs call), their kernels looked up by name
//! (`aclrtBinaryGetFunction`, or bound to a host stub by `rtFunctionRegister`),
//! and launched with one argument string (`aclrtLaunchKernelWithHostArgs`,
//! `rtKernelLaunch`) or with arguments already in device memory
//! (`aclrtLaunchKernel`, `aclrtLaunchKernelV2`).
//!
//! A binary travels once per server, by content hash (with the magic number it
//! was loaded with, which says which cores it runs on). Its handle is the
//! server's module, its functions' handles the server's; the launch's argument
//! string and placeholders go as they are, checked first. A server that cannot
//! run a kernel says why when it loads the binary (the stand-in device runs no
//! AI Core code): the look-up works, and a launch is refused here, naming it.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::{Mutex, MutexGuard};

use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use xpupool_protocol::api::{check_device_args, check_launch_args, FunctionInfo, Placeholder};
use xpupool_protocol::Calls;

use crate::runtime::{connection, device, within_allocation};
use crate::*;

/// `ACL_RT_BINARY_MAGIC_ELF_AICORE` (`RT_DEV_BINARY_MAGIC_ELF`): what a load
/// with no magic option means.
const MAGIC_AICORE: u32 = 0x4355_4245;
/// `ACL_RT_BINARY_LOAD_OPT_LAZY_LOAD`, `_MAGIC`, `_CPU_KERNEL_MODE`.
const OPT_LAZY_LOAD: i32 = 1;
const OPT_MAGIC: i32 = 2;
const OPT_CPU_KERNEL_MODE: i32 = 3;
/// Load options one call may pass.
const MAX_OPTIONS: usize = 64;
/// Bytes of one binary: what one request to the server may carry.
const MAX_BINARY: usize = 64 << 20;

/// `aclrtBinaryLoadOption`: a type and its 16-byte value.
#[repr(C)]
pub struct LoadOption {
    kind: i32,
    value: [u32; 4],
}

/// `aclrtBinaryLoadOptions`.
#[repr(C)]
pub struct LoadOptions {
    options: *const LoadOption,
    count: usize,
}

/// `aclrtLaunchKernelCfg`: launch attributes (20 bytes each) and their count.
#[repr(C)]
pub struct LaunchCfg {
    attrs: *const c_void,
    count: usize,
}

/// `rtDevBinary_t`.
#[repr(C)]
pub struct DevBinary {
    magic: u32,
    version: u32,
    data: *const c_void,
    length: u64,
}

/// A loaded binary: its kernels by name.
struct Binary {
    functions: HashMap<String, FunctionInfo>,
}

#[derive(Default)]
struct Tables {
    /// Server module → the binary.
    binaries: HashMap<u64, Binary>,
    /// Server function → (its binary, its name, why it cannot run).
    functions: HashMap<u64, (u64, String, Option<String>)>,
    /// Host stub (`rtFunctionRegister`) → server function.
    stubs: HashMap<usize, u64>,
}

static TABLES: Mutex<Option<Tables>> = Mutex::new(None);

fn tables() -> MutexGuard<'static, Option<Tables>> {
    TABLES.lock().unwrap_or_else(|e| e.into_inner())
}

fn with_tables<R>(f: impl FnOnce(&mut Tables) -> R) -> R {
    f(tables().get_or_insert_with(Tables::default))
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure::new(ACL_ERROR_INVALID_PARAM, message)
}

/// The magic number `options` ask for (the AI Core's if none); other options
/// are accepted where they change nothing the pool does (lazy loading) and
/// refused otherwise.
///
/// # Safety
/// `options` is NULL or an `aclrtBinaryLoadOptions` whose `options` holds
/// `numOpt` of them.
unsafe fn magic_of(options: *const LoadOptions) -> Result<u32, Failure> {
    if options.is_null() {
        return Ok(MAGIC_AICORE);
    }
    // SAFETY: the caller's options structure, non-NULL.
    let o = unsafe { &*options };
    if o.count == 0 {
        return Ok(MAGIC_AICORE);
    }
    if o.options.is_null() || o.count > MAX_OPTIONS {
        return Err(Failure::new(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("{} load options at {:p}", o.count, o.options),
        ));
    }
    // SAFETY: `count` options at `options`, as the caller declares (bounded above).
    let list = unsafe { std::slice::from_raw_parts(o.options, o.count) };
    let mut magic = MAGIC_AICORE;
    for option in list {
        match option.kind {
            OPT_LAZY_LOAD if option.value[0] <= 1 => {}
            OPT_MAGIC => magic = option.value[0],
            OPT_CPU_KERNEL_MODE => {
                return Err(Failure::new(
                    ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
                    "AI CPU kernels (ACL_RT_BINARY_LOAD_OPT_CPU_KERNEL_MODE) are not supported by the pool",
                ))
            }
            kind => {
                return Err(Failure::new(
                    ACL_ERROR_RT_PARAM_INVALID,
                    format!("load option {kind} with value {}", option.value[0]),
                ))
            }
        }
    }
    Ok(magic)
}

/// Loads `bytes` on the thread's device (the server's copy if it has one with
/// the same content); the binary's handle.
fn load(bytes: Vec<u8>, magic: u32) -> Result<u64, Failure> {
    if bytes.is_empty() || bytes.len() > MAX_BINARY {
        return Err(Failure::new(
            ACL_ERROR_RT_PARAM_INVALID,
            format!(
                "a kernel binary of {} bytes (1 to {MAX_BINARY})",
                bytes.len()
            ),
        ));
    }
    let (c, d) = device()?;
    let wire = xpupool_fatbin::Image::Ascend { magic, elf: bytes }.to_wire();
    let hash: [u8; 32] = Sha256::digest(&wire).into();
    let info = match c.module_load_cached(d, hash)? {
        Some(info) => info,
        None => c.module_load(d, ByteBuf::from(wire))?,
    };
    if let Some(why) = &info.no_code {
        say(&format!("the server cannot run this kernel binary: {why}"));
    }
    let module = info.handle;
    with_tables(|t| {
        for f in info.functions.iter().filter(|f| f.handle != 0) {
            t.functions
                .insert(f.handle, (module, f.name.clone(), f.unusable.clone()));
        }
        let functions = info
            .functions
            .into_iter()
            .map(|f| (f.name.clone(), f))
            .collect();
        t.binaries.insert(module, Binary { functions });
    });
    Ok(module)
}

/// Copies `length` bytes at `data`, checked.
///
/// # Safety
/// `data` is NULL or has `length` readable bytes (up to [`MAX_BINARY`] are read).
unsafe fn bytes_at(data: *const c_void, length: u64) -> Result<Vec<u8>, Failure> {
    if data.is_null() {
        return Err(invalid("a NULL binary"));
    }
    let len = usize::try_from(length)
        .ok()
        .filter(|&l| l <= MAX_BINARY)
        .ok_or_else(|| {
            Failure::new(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("a kernel binary of {length} bytes (at most {MAX_BINARY})"),
            )
        })?;
    // SAFETY: `len` readable bytes at `data`, as the caller declares.
    Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec())
}

/// # Safety
/// `data` has `length` readable bytes; `options` is NULL or an
/// `aclrtBinaryLoadOptions`.
#[no_mangle]
pub unsafe extern "C" fn aclrtBinaryLoadFromData(
    data: *const c_void,
    length: usize,
    options: *const LoadOptions,
    out: *mut *mut c_void,
) -> AclError {
    call(|| {
        if out.is_null() {
            return Err(invalid("a NULL binary handle"));
        }
        // SAFETY: the caller's options and bytes, as this function's contract says.
        let (magic, bytes) = unsafe { (magic_of(options)?, bytes_at(data, length as u64)?) };
        put(out, load(bytes, magic)? as *mut c_void)
    })
}

/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn aclrtBinaryLoadFromFile(
    path: *const c_char,
    options: *const LoadOptions,
    out: *mut *mut c_void,
) -> AclError {
    call(|| {
        if path.is_null() || out.is_null() {
            return Err(invalid("a NULL path or binary handle"));
        }
        // SAFETY: the caller's options, as this function's contract says.
        let magic = unsafe { magic_of(options)? };
        // SAFETY: a NUL-terminated path, non-NULL.
        let path = unsafe { CStr::from_ptr(path) }
            .to_string_lossy()
            .into_owned();
        let size = std::fs::metadata(&path)
            .map_err(|e| invalid(format!("kernel binary {path}: {e}")))?
            .len();
        if size > MAX_BINARY as u64 {
            return Err(Failure::new(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("kernel binary {path} has {size} bytes (at most {MAX_BINARY})"),
            ));
        }
        let bytes =
            std::fs::read(&path).map_err(|e| invalid(format!("kernel binary {path}: {e}")))?;
        put(out, load(bytes, magic)? as *mut c_void)
    })
}

/// The function `name` of binary `bin`: its handle, or why there is none.
fn function(bin: u64, name: &str) -> Result<u64, Failure> {
    let not_found = |why: String| Failure::new(ACL_ERROR_RT_PARAM_INVALID, why);
    with_tables(|t| {
        let b = t.binaries.get(&bin).ok_or_else(|| {
            Failure::new(ACL_ERROR_RT_INVALID_HANDLE, format!("no binary {bin:#x}"))
        })?;
        let f = b
            .functions
            .get(name)
            .ok_or_else(|| not_found(format!("the binary has no kernel {name}")))?;
        if f.handle == 0 {
            return Err(not_found(format!(
                "kernel {name}: {}",
                f.unusable
                    .as_deref()
                    .unwrap_or("the server has no handle for it")
            )));
        }
        Ok(f.handle)
    })
}

/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn aclrtBinaryGetFunction(
    bin: *mut c_void,
    name: *const c_char,
    out: *mut *mut c_void,
) -> AclError {
    call(|| {
        if bin.is_null() || name.is_null() || out.is_null() {
            return Err(invalid("a NULL binary, kernel name or function handle"));
        }
        // SAFETY: a NUL-terminated name, non-NULL.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        put(out, function(bin as u64, &name)? as *mut c_void)
    })
}

/// Forgets binary `bin` and unloads it from the server.
fn unload(bin: u64) -> Result<(), Failure> {
    let known = with_tables(|t| {
        let b = t.binaries.remove(&bin)?;
        t.functions.retain(|_, (m, _, _)| *m != bin);
        let gone: Vec<u64> = b.functions.values().map(|f| f.handle).collect();
        t.stubs.retain(|_, f| !gone.contains(f));
        Some(())
    });
    if known.is_none() {
        return Err(Failure::new(
            ACL_ERROR_RT_INVALID_HANDLE,
            format!("no binary {bin:#x}"),
        ));
    }
    Ok(connection()?.module_unload(bin)?)
}

#[no_mangle]
pub extern "C" fn aclrtBinaryUnLoad(bin: *mut c_void) -> AclError {
    call(|| unload(bin as u64))
}

/// A launch's arguments: a string in host memory with its placeholders, or
/// bytes already in device memory.
enum Args {
    Host {
        at: *const c_void,
        placeholders: Vec<Placeholder>,
    },
    Device {
        at: u64,
    },
}

/// Launches `function` with `size` bytes of arguments: checked, then refused
/// here if the server said it cannot run it.
///
/// # Safety
/// Host arguments are NULL or have `size` readable bytes (up to
/// [`MAX_LAUNCH_ARGS`](xpupool_protocol::api::MAX_LAUNCH_ARGS) are read).
unsafe fn launch(
    function: u64,
    blocks: u32,
    stream: *mut c_void,
    args: Args,
    size: usize,
) -> Result<(), Failure> {
    let found = with_tables(|t| t.functions.get(&function).cloned());
    let (_, name, unusable) = found.ok_or_else(|| {
        Failure::new(
            ACL_ERROR_RT_INVALID_HANDLE,
            format!("no function {function:#x}"),
        )
    })?;
    let invalid =
        |why: String| Failure::new(ACL_ERROR_RT_PARAM_INVALID, format!("kernel {name}: {why}"));
    let null = matches!(args, Args::Host { at, .. } if at.is_null())
        || matches!(args, Args::Device { at: 0 });
    if blocks == 0 || size == 0 || null {
        return Err(invalid(format!(
            "{blocks} blocks, {size} bytes of arguments"
        )));
    }
    match &args {
        Args::Host { placeholders, .. } => {
            check_launch_args(size, placeholders).map_err(|e| invalid(e.message))?
        }
        Args::Device { at } => {
            check_device_args(blocks, size as u64).map_err(|e| invalid(e.message))?;
            within_allocation(*at, size).map_err(|e| {
                Failure::new(e.code, format!("kernel {name}'s arguments: {}", e.message))
            })?;
        }
    }
    if let Some(why) = unusable {
        return Err(Failure::new(
            ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
            format!("kernel {name}: {why}"),
        ));
    }
    let c = connection()?;
    match args {
        Args::Host { at, placeholders } => {
            // SAFETY: `size` readable bytes at `at`, as the caller declares
            // (bounded above).
            let bytes = unsafe { std::slice::from_raw_parts(at.cast::<u8>(), size) }.to_vec();
            c.launch_with_args(
                function,
                blocks,
                stream as u64,
                ByteBuf::from(bytes),
                placeholders,
            )?;
        }
        Args::Device { at } => {
            c.launch_with_device_args(function, blocks, stream as u64, at, size as u64)?;
        }
    }
    Ok(())
}

/// A launch configuration with no attributes (NULL or empty), or a refusal.
///
/// # Safety
/// `cfg` is NULL or an `aclrtLaunchKernelCfg`.
unsafe fn no_attributes(cfg: *const LaunchCfg) -> Result<(), Failure> {
    if cfg.is_null() {
        return Ok(());
    }
    // SAFETY: an `aclrtLaunchKernelCfg`, non-NULL.
    let attrs = unsafe { cfg.read() }.count;
    if attrs > 0 {
        return Err(Failure::new(
            ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
            format!(
                "{attrs} launch attributes (aclrtLaunchKernelCfg): the pool launches with none"
            ),
        ));
    }
    Ok(())
}

/// # Safety
/// `args` is device memory (never read here); the other pointers are handles.
#[no_mangle]
pub unsafe extern "C" fn aclrtLaunchKernel(
    function: *mut c_void,
    blocks: u32,
    args: *const c_void,
    size: usize,
    stream: *mut c_void,
) -> AclError {
    // SAFETY: no configuration; device arguments are not read here.
    unsafe { aclrtLaunchKernelV2(function, blocks, args, size, std::ptr::null(), stream) }
}

/// # Safety
/// `cfg` is NULL or an `aclrtLaunchKernelCfg`.
#[no_mangle]
pub unsafe extern "C" fn aclrtLaunchKernelV2(
    function: *mut c_void,
    blocks: u32,
    args: *const c_void,
    size: usize,
    cfg: *const LaunchCfg,
    stream: *mut c_void,
) -> AclError {
    call(|| {
        // SAFETY: the caller's configuration, as this function's contract says;
        // device arguments are not read here.
        unsafe {
            no_attributes(cfg)?;
            launch(
                function as u64,
                blocks,
                stream,
                Args::Device { at: args as u64 },
                size,
            )
        }
    })
}

/// # Safety
/// `cfg` is NULL or an `aclrtLaunchKernelCfg`; `placeholders` holds `count` of them
/// (or is NULL); `args` has `size` readable bytes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclrtLaunchKernelWithHostArgs(
    function: *mut c_void,
    blocks: u32,
    stream: *mut c_void,
    cfg: *const LaunchCfg,
    args: *mut c_void,
    size: usize,
    placeholders: *const Placeholder,
    count: usize,
) -> AclError {
    call(|| {
        // SAFETY: the caller's configuration, as this function's contract says.
        unsafe { no_attributes(cfg)? };
        if count > xpupool_protocol::api::MAX_PLACEHOLDERS || (count > 0 && placeholders.is_null())
        {
            return Err(Failure::new(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("{count} placeholders at {placeholders:p}"),
            ));
        }
        let list = if count == 0 {
            Vec::new()
        } else {
            // SAFETY: `count` placeholders (bounded above), laid out as
            // `aclrtPlaceHolderInfo`, as the caller declares.
            unsafe { std::slice::from_raw_parts(placeholders, count) }.to_vec()
        };
        let args = Args::Host {
            at: args,
            placeholders: list,
        };
        // SAFETY: `size` bytes at `args`, as this function's contract says.
        unsafe { launch(function as u64, blocks, stream, args, size) }
    })
}

/// # Safety
/// `bin` is NULL or an `rtDevBinary_t` whose `data` has `length` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rtDevBinaryRegister(
    bin: *const DevBinary,
    out: *mut *mut c_void,
) -> AclError {
    call(|| {
        if bin.is_null() || out.is_null() {
            return Err(invalid("a NULL rtDevBinary_t or handle"));
        }
        // SAFETY: the caller's rtDevBinary_t, non-NULL, whose `data` has
        // `length` bytes.
        let (magic, bytes) = unsafe { ((*bin).magic, bytes_at((*bin).data, (*bin).length)?) };
        let module = load(bytes, magic)?;
        put(out, module as *mut c_void)
    })
}

#[no_mangle]
pub extern "C" fn rtDevBinaryUnRegister(bin: *mut c_void) -> AclError {
    call(|| unload(bin as u64))
}

/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rtFunctionRegister(
    bin: *mut c_void,
    stub: *const c_void,
    name: *const c_char,
    _info: *const c_void,
    _mode: u32,
) -> AclError {
    call(|| {
        if bin.is_null() || stub.is_null() || name.is_null() {
            return Err(invalid("a NULL binary, stub or kernel name"));
        }
        // SAFETY: a NUL-terminated name, non-NULL.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        let f = function(bin as u64, &name)?;
        with_tables(|t| t.stubs.insert(stub as usize, f));
        Ok(())
    })
}

/// # Safety
/// `args` has `size` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rtKernelLaunch(
    stub: *const c_void,
    blocks: u32,
    args: *mut c_void,
    size: u32,
    _sm: *mut c_void,
    stream: *mut c_void,
) -> AclError {
    call(|| {
        let f = with_tables(|t| t.stubs.get(&(stub as usize)).copied()).ok_or_else(|| {
            Failure::new(
                ACL_ERROR_RT_INVALID_HANDLE,
                format!("no kernel is registered for stub {stub:p} (rtFunctionRegister)"),
            )
        })?;
        let args = Args::Host {
            at: args,
            placeholders: Vec::new(),
        };
        // SAFETY: `size` bytes at `args`, as this function's contract says.
        unsafe { launch(f, blocks, stream, args, size as usize) }
    })
}
