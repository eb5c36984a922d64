//! Device code: what hipcc's constructors register (`__hipRegisterFatBinary`,
//! `__hipRegisterFunction`, `__hipRegisterVar`), the module API
//! (`hipModuleLoad`, `hipModuleLoadData`, `hipModuleGetFunction`,
//! `hipModuleGetGlobal`, `hipModuleUnload`) and the symbol calls
//! (`hipMemcpyToSymbol`, `hipGetSymbolAddress`, …).
//!
//! A registered fat binary is only recorded: nothing goes to the server until one
//! of its kernels is launched or one of its variables used (the HIP runtime's
//! deferred loading), and then only the code object for the device's target ID,
//! once per device. `hipModuleLoad*` load at once on the current device (and
//! lazily on any other a launch goes to). The server answers each load with its
//! kernels' explicit parameter layouts, which launches pack arguments by
//! ([`crate::launch`]).
//!
//! Handles handed out (`void**` of a registration, `hipModule_t`,
//! `hipFunction_t`) are the addresses of objects kept in tables here, and every
//! handle received is looked up in them: a stale or bogus one is an error, never
//! dereferenced.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};

use sha2::{Digest, Sha256};
use xpupool_client::Connection;
use xpupool_protocol::api::{FunctionInfo, GlobalInfo};
use xpupool_protocol::{Calls, CuError};

use crate::image::{self, HIP_ERROR_INVALID_IMAGE, HIP_ERROR_NO_BINARY_FOR_GPU};
use crate::memory::{self, call, connection_opened, device, guard, hip_code, put};
use crate::{HipError, HIP_ERROR_INVALID_VALUE};

pub(crate) const HIP_ERROR_INVALID_SYMBOL: HipError = 13;
pub(crate) const HIP_ERROR_INVALID_DEVICE_FUNCTION: HipError = 98;
pub(crate) const HIP_ERROR_FILE_NOT_FOUND: HipError = 301;
pub(crate) const HIP_ERROR_INVALID_HANDLE: HipError = 400;
pub(crate) const HIP_ERROR_NOT_FOUND: HipError = 500;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a module's image is.
enum Source {
    /// A registered fat binary's bundle, in the program's memory for its lifetime;
    /// sized and read at the first use.
    Registered(usize),
    /// A copy of a `hipModuleLoad*` image.
    Copied(Vec<u8>),
}

/// An image as the wire carries it, and its SHA-256 (what the server caches by).
type Wire = ([u8; 32], Vec<u8>);

/// A registered fat binary or a loaded module (`hipModule_t`): one image, loaded
/// on each device it is used on.
pub(crate) struct Module {
    source: Source,
    /// The wire image (the code object for the device) and its hash, or why there
    /// is none; made once.
    wire: OnceLock<Result<Wire, HipError>>,
    /// The server's module on each device it was loaded on (or why it was not).
    loaded: Mutex<HashMap<u32, Arc<Loaded>>>,
    /// The kernels its code object's metadata names (empty if unreadable): what
    /// `hipModuleGetFunction` checks names against when the server cannot list them.
    names: OnceLock<Vec<String>>,
    /// `hipFunction_t`s handed out, by name.
    kernels: Mutex<HashMap<String, usize>>,
    /// Whether its failure to load was said.
    warned: AtomicBool,
}

/// What the server made of a module on one device.
pub(crate) struct Loaded {
    pub(crate) server: u64,
    pub(crate) functions: Vec<Arc<FunctionInfo>>,
    pub(crate) no_code: Option<String>,
    /// Globals looked up so far (their addresses do not change while loaded).
    globals: Mutex<HashMap<String, GlobalInfo>>,
}

impl Module {
    fn new(source: Source) -> Self {
        Self {
            source,
            wire: OnceLock::new(),
            names: OnceLock::new(),
            loaded: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
            warned: AtomicBool::new(false),
        }
    }

    /// Says why the module cannot be used, once.
    fn warn(&self, why: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!("xpupool: a HIP module cannot be loaded: {why}");
        }
    }

    /// The code object for the device, as the wire carries it, and its hash.
    fn wire(&self) -> Result<&Wire, HipError> {
        self.wire
            .get_or_init(|| {
                let code = match &self.source {
                    Source::Registered(bundle) => {
                        // SAFETY: the bundle a validated wrapper points to, in the
                        // program's image.
                        let bytes =
                            unsafe { image::image_at(*bundle as *const u8) }.map_err(|why| {
                                self.warn(&format!("its fat binary is not readable: {why}"));
                                HIP_ERROR_INVALID_IMAGE
                            })?;
                        image::code_object_for(bytes, crate::device::GCN_ARCH_NAME)
                    }
                    Source::Copied(bytes) => {
                        image::code_object_for(bytes, crate::device::GCN_ARCH_NAME)
                    }
                };
                let code = code.map_err(|(e, why)| {
                    self.warn(&why);
                    e
                })?;
                let names = xpupool_amdgpu::read_code_object(&code)
                    .map(|co| co.kernels.into_iter().map(|k| k.name).collect())
                    .unwrap_or_default();
                let _ = self.names.set(names);
                let wire = xpupool_fatbin::Image::Elf(code).to_wire();
                Ok((Sha256::digest(&wire).into(), wire))
            })
            .as_ref()
            .map_err(|&e| e)
    }

    /// The module on `device`, loaded there at its first use.
    pub(crate) fn loaded(&self, c: &Connection, device: u32) -> Result<Arc<Loaded>, HipError> {
        let mut loaded = lock(&self.loaded);
        if let Some(ready) = loaded.get(&device) {
            return Ok(ready.clone());
        }
        // Only a load that worked is kept: a refusal (a full device, a lost
        // connection) is tried again at the next use.
        let ready = self.load(c, device)?;
        loaded.insert(device, ready.clone());
        Ok(ready)
    }

    fn load(&self, c: &Connection, device: u32) -> Result<Arc<Loaded>, HipError> {
        let (hash, wire) = self.wire()?;
        let refused = |e: CuError| {
            self.warn(&format!("the server refused it: {}", e.message));
            hip_code(&e)
        };
        // By content hash first: an image the server has is not sent again.
        let info = match c.module_load_cached(device, *hash).map_err(refused)? {
            Some(info) => info,
            None => c
                .module_load(device, serde_bytes::ByteBuf::from(wire.clone()))
                .map_err(refused)?,
        };
        Ok(Arc::new(Loaded {
            server: info.handle,
            functions: info.functions.into_iter().map(Arc::new).collect(),
            no_code: info.no_code,
            globals: Mutex::new(HashMap::new()),
        }))
    }

    /// Unloads it from every device it was loaded on, through a connection
    /// already open (never opening one: this runs at exit too). The first
    /// server error, if any.
    fn unload(&self) -> Result<(), HipError> {
        let loaded: Vec<_> = lock(&self.loaded).drain().collect();
        let Some(c) = connection_opened() else {
            return Ok(());
        };
        let mut result = Ok(());
        for (_, l) in loaded {
            if let Err(e) = c.module_unload(l.server) {
                result = result.and(Err(hip_code(&e)));
            }
        }
        result
    }
}

impl Loaded {
    /// A module-scope variable's address and size.
    pub(crate) fn global(&self, c: &Connection, name: &str) -> Result<GlobalInfo, HipError> {
        if let Some(g) = lock(&self.globals).get(name) {
            return Ok(g.clone());
        }
        let g = c
            .module_get_global(self.server, name.to_owned())
            .map_err(|e| hip_code(&e))?;
        lock(&self.globals).insert(name.to_owned(), g.clone());
        Ok(g)
    }
}

/// A kernel: a registered host stub's, or a `hipFunction_t`.
pub(crate) struct Function {
    pub(crate) module: Arc<Module>,
    pub(crate) name: String,
    /// The server's kernel on each device (or why it cannot run there).
    bound: Mutex<HashMap<u32, Result<Arc<FunctionInfo>, HipError>>>,
    warned: AtomicBool,
}

/// The most argument bytes a kernel may have (a kernarg segment's 64 KiB).
const MAX_PARAM_BYTES: u32 = 64 * 1024;

impl Function {
    fn new(module: Arc<Module>, name: String) -> Self {
        Self {
            module,
            name,
            bound: Mutex::new(HashMap::new()),
            warned: AtomicBool::new(false),
        }
    }

    /// The kernel on `device` if the server can run it; else why not:
    /// `hipErrorNoBinaryForGpu` (said once, with the reason) for no code, the
    /// load's error, or `hipErrorInvalidDeviceFunction` for a name the module
    /// does not have.
    pub(crate) fn runnable(
        &self,
        c: &Connection,
        device: u32,
    ) -> Result<Arc<FunctionInfo>, HipError> {
        if let Some(outcome) = lock(&self.bound).get(&device) {
            return outcome.clone();
        }
        let outcome = self.bind(c, device);
        // What the loaded module says is kept; a failed load is tried again.
        if matches!(
            outcome,
            Ok(_) | Err(HIP_ERROR_NO_BINARY_FOR_GPU | HIP_ERROR_INVALID_DEVICE_FUNCTION)
        ) {
            lock(&self.bound).insert(device, outcome.clone());
        }
        outcome
    }

    fn bind(&self, c: &Connection, device: u32) -> Result<Arc<FunctionInfo>, HipError> {
        let loaded = self.module.loaded(c, device)?;
        let say = |why: &str| {
            if !self.warned.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "xpupool: kernel {} cannot run on this server: {why}",
                    self.name
                );
            }
        };
        if let Some(why) = &loaded.no_code {
            say(why);
            return Err(HIP_ERROR_NO_BINARY_FOR_GPU);
        }
        let Some(info) = loaded.functions.iter().find(|f| f.name == self.name) else {
            say("its module has no kernel of that name");
            return Err(HIP_ERROR_INVALID_DEVICE_FUNCTION);
        };
        if let Some(why) = &info.unusable {
            say(why);
            return Err(HIP_ERROR_NO_BINARY_FOR_GPU);
        }
        // Arguments are packed into a buffer of this size at each launch: a
        // kernel claiming more than any kernarg segment holds is not run.
        if info.param_bytes > MAX_PARAM_BYTES
            || info
                .params
                .iter()
                .any(|&(o, s)| o.saturating_add(s) > info.param_bytes)
        {
            say(&format!("its arguments claim {} bytes", info.param_bytes));
            return Err(HIP_ERROR_NO_BINARY_FOR_GPU);
        }
        Ok(info.clone())
    }
}

/// A registered `__device__` or `__constant__` variable.
pub(crate) struct Var {
    module: Arc<Module>,
    name: String,
    size: usize,
}

/// Everything handed out or registered, by address.
#[derive(Default)]
struct Tables {
    /// Registered fat binaries and `hipModule_t`s.
    modules: HashMap<usize, Arc<Module>>,
    /// `hipFunction_t`s.
    functions: HashMap<usize, Arc<Function>>,
    /// Host stubs (`hipLaunchKernel`'s first argument) → kernels.
    stubs: HashMap<usize, Arc<Function>>,
    /// Shadow variables' addresses → variables.
    vars: HashMap<usize, Arc<Var>>,
}

static TABLES: LazyLock<Mutex<Tables>> = LazyLock::new(Mutex::default);

fn tables() -> MutexGuard<'static, Tables> {
    lock(&TABLES)
}

/// The kernel a host stub was registered for (`hipErrorInvalidDeviceFunction`
/// for one never registered).
pub(crate) fn stub_function(stub: *const c_void) -> Result<Arc<Function>, HipError> {
    tables()
        .stubs
        .get(&(stub as usize))
        .cloned()
        .ok_or(HIP_ERROR_INVALID_DEVICE_FUNCTION)
}

/// The kernel of a `hipFunction_t` handed out and not unloaded.
pub(crate) fn handle_function(f: *mut c_void) -> Result<Arc<Function>, HipError> {
    tables()
        .functions
        .get(&(f as usize))
        .cloned()
        .ok_or(HIP_ERROR_INVALID_HANDLE)
}

fn handle_module(m: *mut c_void) -> Result<Arc<Module>, HipError> {
    tables()
        .modules
        .get(&(m as usize))
        .cloned()
        .ok_or(HIP_ERROR_INVALID_HANDLE)
}

/// A C string argument (`hipErrorInvalidValue` for NULL or not UTF-8).
fn c_str<'a>(p: *const c_char) -> Result<&'a str, HipError> {
    if p.is_null() {
        return Err(HIP_ERROR_INVALID_VALUE);
    }
    // SAFETY: the API contract: a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| HIP_ERROR_INVALID_VALUE)
}

/// A NUL-terminated path, any bytes (not only UTF-8).
fn c_path<'a>(p: *const c_char) -> Result<&'a std::path::Path, HipError> {
    use std::os::unix::ffi::OsStrExt;
    if p.is_null() {
        return Err(HIP_ERROR_INVALID_VALUE);
    }
    // SAFETY: the API contract: a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    Ok(std::path::Path::new(std::ffi::OsStr::from_bytes(bytes)))
}

/// Registers a module, returning its handle.
fn register(module: Module) -> usize {
    let handle = next_handle();
    tables().modules.insert(handle, Arc::new(module));
    handle
}

/// A handle never handed out before (an address would be reused once freed,
/// and a stale handle would then name someone else's module or kernel).
fn next_handle() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0x10_0000);
    NEXT.fetch_add(16, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// What hipcc's module constructor and destructor call.

/// # Safety
/// `wrapper` is NULL or a `__hip_fatbin_wrapper` (24 bytes), whose bundle stays
/// mapped while it is registered.
#[export_name = "xph___hipRegisterFatBinary"]
pub unsafe extern "C" fn hip_register_fat_binary(wrapper: *const c_void) -> *mut *mut c_void {
    guard(|| {
        // SAFETY: the caller's wrapper (24 bytes), or NULL.
        match unsafe { image::wrapper_bundle(wrapper) } {
            Ok(bundle) => {
                register(Module::new(Source::Registered(bundle as usize))) as *mut *mut c_void
            }
            Err(why) => {
                eprintln!("xpupool: __hipRegisterFatBinary: cannot register a fat binary: {why}");
                std::ptr::null_mut()
            }
        }
    })
    .unwrap_or(std::ptr::null_mut())
}

/// Says once per entry point that it got a handle it did not hand out.
fn bad_registration(entry: &'static str) {
    if crate::first_time(crate::Once::Entry(entry)) {
        eprintln!("xpupool: {entry} with a handle __hipRegisterFatBinary did not give (ignored)");
    }
}

/// # Safety
/// `device_name` (or `device_function`) is NULL or a NUL-terminated string.
#[export_name = "xph___hipRegisterFunction"]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn hip_register_function(
    handle: *mut *mut c_void,
    host_stub: *const c_void,
    device_function: *const c_char,
    device_name: *const c_char,
    _thread_limit: c_uint,
    _tid: *mut c_void,
    _bid: *mut c_void,
    _block_dim: *mut c_void,
    _grid_dim: *mut c_void,
    _w_size: *mut c_int,
) {
    guard(|| {
        let name = c_str(device_name).or_else(|_| c_str(device_function));
        let (Ok(module), Ok(name)) = (handle_module(handle.cast()), name) else {
            bad_registration("__hipRegisterFunction");
            return;
        };
        if host_stub.is_null() {
            bad_registration("__hipRegisterFunction");
            return;
        }
        let function = Arc::new(Function::new(module, name.to_owned()));
        tables().stubs.insert(host_stub as usize, function);
    });
}

/// # Safety
/// `device_var` is NULL or a NUL-terminated string.
#[export_name = "xph___hipRegisterVar"]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn hip_register_var(
    handle: *mut *mut c_void,
    var: *mut c_void,
    _host_var: *mut c_char,
    device_var: *mut c_char,
    _ext: c_int,
    size: usize,
    _constant: c_int,
    _global: c_int,
) {
    guard(|| {
        let (Ok(module), Ok(name)) = (handle_module(handle.cast()), c_str(device_var)) else {
            bad_registration("__hipRegisterVar");
            return;
        };
        if var.is_null() {
            bad_registration("__hipRegisterVar");
            return;
        }
        let v = Arc::new(Var {
            module,
            name: name.to_owned(),
            size,
        });
        tables().vars.insert(var as usize, v);
    });
}

#[export_name = "xph___hipRegisterManagedVar"]
pub extern "C" fn hip_register_managed_var(
    _handle: *mut c_void,
    _pointer: *mut *mut c_void,
    _init_value: *mut c_void,
    name: *const c_char,
    _size: usize,
    _align: c_uint,
) {
    guard(|| {
        let name = c_str(name).unwrap_or("?");
        eprintln!("xpupool: __hipRegisterManagedVar({name}): __managed__ variables are not supported yet; the program must not use it");
    });
}

#[export_name = "xph___hipUnregisterFatBinary"]
pub extern "C" fn hip_unregister_fat_binary(handle: *mut *mut c_void) {
    guard(|| {
        let module = {
            let mut t = tables();
            let Some(module) = t.modules.remove(&(handle as usize)) else {
                return;
            };
            t.stubs.retain(|_, f| !Arc::ptr_eq(&f.module, &module));
            t.vars.retain(|_, v| !Arc::ptr_eq(&v.module, &module));
            t.functions.retain(|_, f| !Arc::ptr_eq(&f.module, &module));
            module
        };
        // At exit the server may be gone: nothing to say about it then.
        let _ = module.unload();
    });
}

// ---------------------------------------------------------------------------
// The module API.

/// Registers `bytes` as a module and loads it on the current device.
fn load_module(out: *mut *mut c_void, bytes: Vec<u8>) -> Result<(), HipError> {
    if out.is_null() {
        return Err(HIP_ERROR_INVALID_VALUE);
    }
    let module = Module::new(Source::Copied(bytes));
    let (c, d) = device()?;
    module.loaded(c, d)?;
    put(out, register(module) as *mut c_void)
}

/// The image at `image` (no size given), copied.
fn image_copy(image: *const c_void) -> Result<Vec<u8>, HipError> {
    if image.is_null() {
        return Err(HIP_ERROR_INVALID_VALUE);
    }
    // SAFETY: the API contract: an image the program holds.
    let bytes = unsafe { image::image_at(image.cast()) }.map_err(|why| {
        eprintln!("xpupool: hipModuleLoadData: not a code object or bundle: {why}");
        HIP_ERROR_INVALID_IMAGE
    })?;
    Ok(bytes.to_vec())
}

#[export_name = "xph_hipModuleLoadData"]
pub extern "C" fn hip_module_load_data(out: *mut *mut c_void, image: *const c_void) -> HipError {
    call(|| {
        if out.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        load_module(out, image_copy(image)?)
    })
}

#[export_name = "xph_hipModuleLoadDataEx"]
pub extern "C" fn hip_module_load_data_ex(
    out: *mut *mut c_void,
    image: *const c_void,
    _options: c_uint,
    _option_keys: *mut c_int,
    _option_values: *mut *mut c_void,
) -> HipError {
    hip_module_load_data(out, image)
}

#[export_name = "xph_hipModuleLoad"]
pub extern "C" fn hip_module_load(out: *mut *mut c_void, path: *const c_char) -> HipError {
    call(|| {
        if out.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        let path = c_path(path)?;
        let bytes = std::fs::read(path).map_err(|e| {
            eprintln!("xpupool: hipModuleLoad({}): {e}", path.display());
            HIP_ERROR_FILE_NOT_FOUND
        })?;
        let len = xpupool_amdgpu::image_len(&bytes).map_err(|e| {
            eprintln!(
                "xpupool: hipModuleLoad({}): not a code object or bundle: {e}",
                path.display()
            );
            HIP_ERROR_INVALID_IMAGE
        })?;
        load_module(out, bytes[..len].to_vec())
    })
}

#[export_name = "xph_hipModuleUnload"]
pub extern "C" fn hip_module_unload(module: *mut c_void) -> HipError {
    call(|| {
        let module = {
            let mut t = tables();
            let module = t
                .modules
                .remove(&(module as usize))
                .ok_or(HIP_ERROR_INVALID_HANDLE)?;
            t.functions.retain(|_, f| !Arc::ptr_eq(&f.module, &module));
            t.stubs.retain(|_, f| !Arc::ptr_eq(&f.module, &module));
            t.vars.retain(|_, v| !Arc::ptr_eq(&v.module, &module));
            module
        };
        module.unload()
    })
}

#[export_name = "xph_hipModuleGetFunction"]
pub extern "C" fn hip_module_get_function(
    out: *mut *mut c_void,
    module: *mut c_void,
    name: *const c_char,
) -> HipError {
    call(|| {
        if out.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        let m = handle_module(module)?;
        let name = c_str(name)?;
        if let Some(&f) = lock(&m.kernels).get(name) {
            return put(out, f as *mut c_void);
        }
        let (c, d) = device()?;
        let loaded = m.loaded(c, d)?;
        // A module the server has no code for still hands its kernels out (their
        // launches fail): it cannot list them, so the code object's metadata says
        // which there are (any name, if it could not be read).
        let known = match &loaded.no_code {
            None => loaded.functions.iter().any(|f| f.name == name),
            Some(_) => {
                let names = m.names.get().map(Vec::as_slice).unwrap_or_default();
                names.is_empty() || names.iter().any(|n| n == name)
            }
        };
        if !known {
            return Err(HIP_ERROR_NOT_FOUND);
        }
        let function = Arc::new(Function::new(m.clone(), name.to_owned()));
        let handle = next_handle();
        tables().functions.insert(handle, function);
        lock(&m.kernels).insert(name.to_owned(), handle);
        put(out, handle as *mut c_void)
    })
}

#[export_name = "xph_hipModuleGetGlobal"]
pub extern "C" fn hip_module_get_global(
    address: *mut *mut c_void,
    bytes: *mut usize,
    module: *mut c_void,
    name: *const c_char,
) -> HipError {
    call(|| {
        let m = handle_module(module)?;
        let name = c_str(name)?;
        let (c, d) = device()?;
        let g = m.loaded(c, d)?.global(c, name)?;
        if !address.is_null() {
            put(address, g.address as *mut c_void)?;
        }
        if !bytes.is_null() {
            put(bytes, g.size as usize)?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Symbols: a registered variable, by its shadow's address.

/// A registered variable's device address and size on the current device.
fn symbol(symbol: *const c_void) -> Result<(u64, usize), HipError> {
    if symbol.is_null() {
        return Err(HIP_ERROR_INVALID_SYMBOL);
    }
    let var = tables()
        .vars
        .get(&(symbol as usize))
        .cloned()
        .ok_or(HIP_ERROR_INVALID_SYMBOL)?;
    let (c, d) = device()?;
    let g = var.module.loaded(c, d)?.global(c, &var.name)?;
    // The registered size if the server does not say (it should).
    let size = if g.size == 0 {
        var.size
    } else {
        g.size as usize
    };
    Ok((g.address, size))
}

/// `[offset, offset + size)` of a symbol of `total` bytes, checked.
fn within(total: usize, offset: usize, size: usize) -> Result<(), HipError> {
    match offset.checked_add(size) {
        Some(end) if end <= total => Ok(()),
        _ => Err(HIP_ERROR_INVALID_VALUE),
    }
}

/// The result of a copy made by `memory::copy` (which records it too).
fn copied(code: HipError) -> Result<(), HipError> {
    match code {
        crate::HIP_SUCCESS => Ok(()),
        e => Err(e),
    }
}

fn to_symbol(
    sym: *const c_void,
    src: *const c_void,
    size: usize,
    offset: usize,
    kind: c_int,
    stream: u64,
    wait: bool,
) -> HipError {
    call(|| {
        let (address, total) = symbol(sym)?;
        within(total, offset, size)?;
        let kind = match kind {
            memory::HOST_TO_DEVICE | memory::DEVICE_TO_DEVICE => kind,
            memory::DEFAULT if memory::on_device(src)? => memory::DEVICE_TO_DEVICE,
            memory::DEFAULT => memory::HOST_TO_DEVICE,
            _ => return Err(memory::HIP_ERROR_INVALID_MEMCPY_DIRECTION),
        };
        let dst = (address + offset as u64) as *mut c_void;
        copied(memory::copy(dst, src, size, kind, stream, wait))
    })
}

fn from_symbol(
    dst: *mut c_void,
    sym: *const c_void,
    size: usize,
    offset: usize,
    kind: c_int,
    stream: u64,
    wait: bool,
) -> HipError {
    call(|| {
        let (address, total) = symbol(sym)?;
        within(total, offset, size)?;
        let kind = match kind {
            memory::DEVICE_TO_HOST | memory::DEVICE_TO_DEVICE => kind,
            memory::DEFAULT if memory::on_device(dst)? => memory::DEVICE_TO_DEVICE,
            memory::DEFAULT => memory::DEVICE_TO_HOST,
            _ => return Err(memory::HIP_ERROR_INVALID_MEMCPY_DIRECTION),
        };
        let src = (address + offset as u64) as *const c_void;
        copied(memory::copy(dst, src, size, kind, stream, wait))
    })
}

#[export_name = "xph_hipMemcpyToSymbol"]
pub extern "C" fn hip_memcpy_to_symbol(
    symbol: *const c_void,
    src: *const c_void,
    size: usize,
    offset: usize,
    kind: c_int,
) -> HipError {
    to_symbol(symbol, src, size, offset, kind, 0, true)
}

#[export_name = "xph_hipMemcpyToSymbolAsync"]
pub extern "C" fn hip_memcpy_to_symbol_async(
    symbol: *const c_void,
    src: *const c_void,
    size: usize,
    offset: usize,
    kind: c_int,
    stream: *mut c_void,
) -> HipError {
    to_symbol(symbol, src, size, offset, kind, stream as u64, false)
}

#[export_name = "xph_hipMemcpyFromSymbol"]
pub extern "C" fn hip_memcpy_from_symbol(
    dst: *mut c_void,
    symbol: *const c_void,
    size: usize,
    offset: usize,
    kind: c_int,
) -> HipError {
    from_symbol(dst, symbol, size, offset, kind, 0, true)
}

#[export_name = "xph_hipMemcpyFromSymbolAsync"]
pub extern "C" fn hip_memcpy_from_symbol_async(
    dst: *mut c_void,
    symbol: *const c_void,
    size: usize,
    offset: usize,
    kind: c_int,
    stream: *mut c_void,
) -> HipError {
    from_symbol(dst, symbol, size, offset, kind, stream as u64, false)
}

#[export_name = "xph_hipGetSymbolAddress"]
pub extern "C" fn hip_get_symbol_address(out: *mut *mut c_void, sym: *const c_void) -> HipError {
    call(|| {
        if out.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        put(out, symbol(sym)?.0 as *mut c_void)
    })
}

#[export_name = "xph_hipGetSymbolSize"]
pub extern "C" fn hip_get_symbol_size(out: *mut usize, sym: *const c_void) -> HipError {
    call(|| {
        if out.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        put(out, symbol(sym)?.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::{bundle, elf};
    use crate::image::{FatbinWrapper, WRAPPER_MAGIC};

    #[test]
    fn registration_needs_no_server_and_checks_its_handles() {
        let code = elf(b"code");
        let image = bundle(&[("hipv4-amdgcn-amd-amdhsa--gfx90a", &code)]);
        let wrapper = FatbinWrapper {
            magic: WRAPPER_MAGIC,
            version: 1,
            binary: image.as_ptr(),
            unused: std::ptr::null(),
        };
        let bad = FatbinWrapper {
            magic: 1,
            ..wrapper
        };
        // SAFETY: live wrappers; C strings.
        unsafe {
            assert!(hip_register_fat_binary((&bad as *const FatbinWrapper).cast()).is_null());
            let handle = hip_register_fat_binary((&wrapper as *const FatbinWrapper).cast());
            assert!(!handle.is_null());
            static STUB: u8 = 0;
            let stub = (&STUB as *const u8).cast::<c_void>();
            let name = c"_Z4vaddPfi".as_ptr();
            let none = std::ptr::null_mut();
            hip_register_function(
                handle,
                stub,
                name,
                name,
                0,
                none,
                none,
                none,
                none,
                none.cast(),
            );
            // A bogus handle is ignored, not followed.
            let other = (&STUB as *const u8).wrapping_add(1).cast::<c_void>();
            hip_register_function(
                8 as _,
                other,
                name,
                name,
                0,
                none,
                none,
                none,
                none,
                none.cast(),
            );
            assert_eq!(stub_function(stub).unwrap().name, "_Z4vaddPfi");
            assert_eq!(
                stub_function(other).err(),
                Some(HIP_ERROR_INVALID_DEVICE_FUNCTION)
            );
            static VAR: u8 = 0;
            let var = (&VAR as *const u8).cast_mut().cast::<c_void>();
            hip_register_var(
                handle,
                var,
                none.cast(),
                c"table".as_ptr().cast_mut(),
                0,
                16,
                1,
                0,
            );
            assert_eq!(tables().vars[&(var as usize)].name, "table");
            // The image is read at the first use only, and only the device's entry.
            let module = handle_module(handle.cast()).unwrap();
            assert!(module.wire.get().is_none());
            let (_, wire) = module.wire().unwrap();
            assert_eq!(wire, &xpupool_fatbin::Image::Elf(code).to_wire());
            hip_unregister_fat_binary(handle);
            assert!(stub_function(stub).is_err());
            assert!(!tables().vars.contains_key(&(var as usize)));
            // Twice, or bogus: nothing happens.
            hip_unregister_fat_binary(handle);
            hip_unregister_fat_binary(12 as _);
        }
        // Bogus module and function handles are refused.
        let mut f = std::ptr::null_mut();
        assert_eq!(
            hip_module_get_function(&mut f, 16 as _, c"k".as_ptr()),
            HIP_ERROR_INVALID_HANDLE
        );
        assert_eq!(hip_module_unload(16 as _), HIP_ERROR_INVALID_HANDLE);
        assert_eq!(
            handle_function(24 as _).err(),
            Some(HIP_ERROR_INVALID_HANDLE)
        );
        assert_eq!(
            hip_module_load_data(&mut f, c"garbage".as_ptr().cast()),
            HIP_ERROR_INVALID_IMAGE
        );
        assert_eq!(
            hip_module_load_data(&mut f, std::ptr::null()),
            HIP_ERROR_INVALID_VALUE
        );
        let mut size = 0;
        assert_eq!(
            hip_get_symbol_size(&mut size, (&f as *const *mut c_void).cast()),
            HIP_ERROR_INVALID_SYMBOL
        );
    }

    #[test]
    fn symbol_ranges_are_checked() {
        assert_eq!(within(16, 0, 16), Ok(()));
        assert_eq!(within(16, 8, 8), Ok(()));
        assert_eq!(within(16, 8, 9), Err(HIP_ERROR_INVALID_VALUE));
        assert_eq!(within(16, usize::MAX, 2), Err(HIP_ERROR_INVALID_VALUE));
    }
}
