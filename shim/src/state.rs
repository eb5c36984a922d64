//! The driver's process-wide state: the connection, the devices the server
//! presented, contexts (and each thread's context stack), loaded modules, and the
//! tables that let pointer and handle arguments be checked before use.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use xpupool_cuda_types::*;
use xpupool_protocol::api::{FunctionInfo, GlobalInfo};
use xpupool_protocol::{CuError, DeviceInfo};

use crate::boundary::Res;
use sha2::{Digest, Sha256};
use xpupool_client::Connection;
use xpupool_fatbin::Image;
use xpupool_protocol::Calls;

/// Converts a server error into the code to return, logging the server's reason.
pub(crate) fn fail(e: CuError) -> CUresult {
    tracing::debug!(code = e.code, reason = %e.message, "server refused a call");
    if e.code == CUDA_ERROR_NO_BINARY_FOR_GPU
        || e.code == CUDA_ERROR_ILLEGAL_ADDRESS
        || e.code == CUDA_ERROR_LAUNCH_FAILED
    {
        tracing::warn!("{}", e.message);
    }
    e.code
}

/// Locks, ignoring poisoning (a panic elsewhere must not wedge the driver).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Live objects of one kind, by the address handed to the application as a handle.
pub(crate) struct Registry<T> {
    map: Mutex<HashMap<usize, Arc<T>>>,
}

impl<T> Registry<T> {
    fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn insert(&self, value: Arc<T>) -> usize {
        let handle = Arc::as_ptr(&value) as usize;
        lock(&self.map).insert(handle, value);
        handle
    }

    pub(crate) fn get(&self, handle: usize) -> Res<Arc<T>> {
        lock(&self.map)
            .get(&handle)
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    pub(crate) fn remove(&self, handle: usize) -> Res<Arc<T>> {
        lock(&self.map)
            .remove(&handle)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
}

/// A context. Every context of a device shares the one server session.
pub(crate) struct Context {
    pub(crate) device: CUdevice,
    pub(crate) primary: bool,
    pub(crate) flags: AtomicU32,
    /// Retain count (primary contexts only).
    pub(crate) retained: AtomicU32,
    pub(crate) id: u64,
}

/// A module or library (the two are the same object here). Its image stays in the
/// client until something in it is first used on a device, then goes to the server
/// once: lazy loading, as the real driver does by default, so a program that
/// registers hundreds of fatbins (PyTorch) ships only those it uses. It is loaded on
/// each device it is used on (by content hash after the first: the server has it).
pub(crate) struct Module {
    pending: Mutex<Option<Image>>,
    /// The image as sent, and its hash, once it has been sent for one device.
    wire: OnceLock<([u8; 32], Vec<u8>)>,
    /// Per device (the tenant's numbering).
    loaded: Box<[OnceLock<Result<LoadedModule, CUresult>>]>,
    /// Kernels handed out so far, by name.
    pub(crate) kernels: Mutex<HashMap<String, usize>>,
    /// Globals looked up so far, by device and name (their addresses never change
    /// while loaded).
    pub(crate) globals: Mutex<HashMap<(CUdevice, String), GlobalInfo>>,
}

/// What the server made of a module's image.
pub(crate) struct LoadedModule {
    pub(crate) server: u64,
    pub(crate) functions: Vec<FunctionInfo>,
    pub(crate) no_code: Option<String>,
}

impl Module {
    pub(crate) fn new(image: Image, devices: usize) -> Self {
        Self {
            pending: Mutex::new(Some(image)),
            wire: OnceLock::new(),
            loaded: (0..devices.max(1)).map(|_| OnceLock::new()).collect(),
            kernels: Mutex::new(HashMap::new()),
            globals: Mutex::new(HashMap::new()),
        }
    }

    /// The server's view of the module on the current context's device, uploading
    /// the image on first use there.
    pub(crate) fn loaded(&self, d: &Driver) -> Res<&LoadedModule> {
        self.loaded_on(&d.conn, d.current_device())
    }

    /// The module on `device`, loading it there on first use.
    pub(crate) fn loaded_on(&self, conn: &Connection, device: CUdevice) -> Res<&LoadedModule> {
        let outcome = per_device(&self.loaded, device)?.get_or_init(|| {
            let (hash, wire) = match self.wire.get() {
                Some(sent) => sent,
                None => {
                    let image = lock(&self.pending)
                        .take()
                        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
                    let wire = for_server(image, &conn.welcome).to_wire();
                    let hash: [u8; 32] = Sha256::digest(&wire).into();
                    self.wire.get_or_init(|| (hash, wire))
                }
            };
            let device = device as u32;
            // Ask by content hash first: an image the server has seen is not sent again.
            // A module the server cannot load (PTX its interpreter cannot parse,
            // say) is said at warning level, once per module and run: its
            // kernels' launches fail after it.
            let refused = |e: CuError| {
                if e.code == CUDA_ERROR_INVALID_IMAGE || e.code == CUDA_ERROR_INVALID_PTX {
                    tracing::warn!("the server could not load a module: {}", e.message);
                }
                fail(e)
            };
            let info = match conn.module_load_cached(device, *hash).map_err(refused)? {
                Some(info) => info,
                None => {
                    tracing::debug!(bytes = wire.len(), device, "uploading a module image");
                    conn.module_load(device, serde_bytes::ByteBuf::from(wire.clone()))
                        .map_err(refused)?
                }
            };
            if let Some(reason) = &info.no_code {
                tracing::debug!(
                    kernels = info.functions.len(),
                    "module has no usable code: {reason}"
                );
            }
            Ok(LoadedModule {
                server: info.handle,
                functions: info.functions,
                no_code: info.no_code,
            })
        });
        outcome.as_ref().map_err(|&code| code)
    }

    /// The server's modules, on each device it was loaded on.
    pub(crate) fn all_loaded(&self) -> impl Iterator<Item = &LoadedModule> {
        self.loaded
            .iter()
            .filter_map(|l| l.get().and_then(|r| r.as_ref().ok()))
    }
}

/// `device`'s entry of a per-device table, or `INVALID_DEVICE`.
fn per_device<T>(table: &[T], device: CUdevice) -> Res<&T> {
    usize::try_from(device)
        .ok()
        .and_then(|i| table.get(i))
        .ok_or(CUDA_ERROR_INVALID_DEVICE)
}

/// An image reduced to the fatbin entries the server's device can use (its SASS and
/// the newest PTX it can compile), so that only those travel.
fn for_server(image: Image, welcome: &xpupool_protocol::Welcome) -> Image {
    let attribute = |attr: u32| {
        welcome
            .devices
            .first()
            .and_then(|d| d.attributes.iter().find(|&&(a, _)| a == attr))
            .map_or(0, |&(_, v)| v as u32)
    };
    let sm = 10 * attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        + attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
    match image {
        Image::Fatbin(bytes) => match xpupool_fatbin::retain_for_device(&bytes, sm) {
            Ok(Some(smaller)) => {
                tracing::debug!(
                    before = bytes.len(),
                    after = smaller.len(),
                    sm,
                    "sending only the entries the device can use"
                );
                Image::Fatbin(smaller)
            }
            _ => Image::Fatbin(bytes),
        },
        other => other,
    }
}

/// A kernel; `CUfunction` and `CUkernel` handles are the same object. It is bound
/// to the server's function on first use.
pub(crate) struct Function {
    pub(crate) name: String,
    pub(crate) c_name: CString,
    pub(crate) module: usize,
    /// Attributes the application set (`cuFuncSetAttribute`).
    pub(crate) overrides: Mutex<Vec<(u32, i32)>>,
    /// Attributes asked of the server after the load: (server handle, attribute, value).
    fetched: Mutex<Vec<(u64, u32, i32)>>,
    /// Loaded, as lazy loading counts it: handed out by name, launched or
    /// `cuFuncLoad`ed; one only enumerated is not (the driver then refuses its
    /// device-dependent attributes).
    pub(crate) loaded: AtomicBool,
    /// Per device (the tenant's numbering).
    binding: Box<[OnceLock<Result<Binding, CUresult>>]>,
    warned: AtomicBool,
}

/// What the server knows of a kernel.
pub(crate) enum Binding {
    /// Listed by the server (runnable unless `unusable` says why not).
    Known(FunctionInfo),
    /// Its module has no code the server can run, so the server cannot list it.
    NoCode(String),
}

/// Attributes of a kernel the server cannot list: the device's limits, no resources.
fn default_attribute(attr: u32) -> Option<i32> {
    match attr {
        CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK => Some(1024),
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => Some(48 << 10),
        CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => Some(-1),
        _ => None,
    }
}

impl Function {
    pub(crate) fn new(name: String, module: usize, devices: usize) -> Res<Self> {
        Ok(Self {
            c_name: CString::new(name.clone()).map_err(|_| CUDA_ERROR_INVALID_VALUE)?,
            name,
            module,
            overrides: Mutex::new(Vec::new()),
            fetched: Mutex::new(Vec::new()),
            loaded: AtomicBool::new(false),
            binding: (0..devices.max(1)).map(|_| OnceLock::new()).collect(),
            warned: AtomicBool::new(false),
        })
    }

    /// The server's view of this kernel on the current context's device; uploads its
    /// module there if needed. A name the module does not have is `NOT_FOUND`.
    pub(crate) fn binding(&self, d: &Driver) -> Res<&Binding> {
        self.binding_on(d, d.current_device())
    }

    /// The kernel on `device`.
    pub(crate) fn binding_on(&self, d: &Driver, device: CUdevice) -> Res<&Binding> {
        let outcome = per_device(&self.binding, device)?.get_or_init(|| {
            let module = d.modules.get(self.module)?;
            let loaded = module.loaded_on(&d.conn, device)?;
            if let Some(reason) = &loaded.no_code {
                return Ok(Binding::NoCode(reason.clone()));
            }
            let info = loaded
                .functions
                .iter()
                .find(|f| f.name == self.name)
                .ok_or(CUDA_ERROR_NOT_FOUND)?;
            Ok(Binding::Known(info.clone()))
        });
        outcome.as_ref().map_err(|&code| code)
    }

    /// The kernel, if the server can run it; else `NO_BINARY_FOR_GPU`, logged once
    /// with its name and the reason. Look-ups succeed either way (so libraries that
    /// look up kernels they never launch initialise); running is what fails.
    pub(crate) fn runnable(&self, d: &Driver) -> Res<&FunctionInfo> {
        self.runnable_on(d, d.current_device())
    }

    /// Like [`Function::runnable`], on `device`.
    pub(crate) fn runnable_on(&self, d: &Driver, device: CUdevice) -> Res<&FunctionInfo> {
        let reason = match self.binding_on(d, device) {
            Ok(Binding::Known(info)) if info.unusable.is_none() => return Ok(info),
            Ok(Binding::Known(info)) => info.unusable.as_deref().unwrap_or_default(),
            Ok(Binding::NoCode(reason)) => reason,
            Err(code) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "kernel {} cannot run: its module did not load (error {code})",
                        self.name
                    );
                }
                return Err(code);
            }
        };
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("kernel {} cannot run on this server: {reason}", self.name);
        }
        Err(CUDA_ERROR_NO_BINARY_FOR_GPU)
    }

    /// An attribute: what the application set, else what the server reported.
    pub(crate) fn attribute(&self, d: &Driver, attr: u32) -> Res<Option<i32>> {
        if let Some(&(_, v)) = lock(&self.overrides).iter().find(|&&(a, _)| a == attr) {
            return Ok(Some(v));
        }
        Ok(match self.binding(d)? {
            Binding::Known(info) => match info.attributes.iter().find(|&&(a, _)| a == attr) {
                Some(&(_, v)) => Some(v),
                None => self.fetched_attribute(d, info.handle, attr),
            },
            Binding::NoCode(_) => default_attribute(attr),
        })
    }

    /// An attribute every driver answers that the module's load did not report
    /// (lazy loading: a device-dependent one), asked of the server once.
    fn fetched_attribute(&self, d: &Driver, handle: u64, attr: u32) -> Option<i32> {
        if attr > CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT {
            return None;
        }
        let mut fetched = lock(&self.fetched);
        if let Some(&(_, _, v)) = fetched.iter().find(|&&(h, a, _)| h == handle && a == attr) {
            return Some(v);
        }
        let value = d.conn.function_get_attribute(handle, attr).ok()?;
        fetched.push((handle, attr, value));
        Some(value)
    }
}

/// Device attributes that say what xpupool offers, whatever the server's device
/// says: a family this driver implements reads as supported, one it does not
/// (exportable handles, multi-device cooperative launches) as not,
/// so a program that checks first waives itself instead of failing later.
/// Managed memory is kept coherent by this client (`api::managed`), without
/// concurrent access from host and device, as on GPUs without page faulting.
const FEATURES: &[(u32, i32)] = &[
    (CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, 1),
    (CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES, 0),
    (CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, 1),
    (CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, 0),
    (CU_DEVICE_ATTRIBUTE_DIRECT_MANAGED_MEM_ACCESS_FROM_HOST, 0),
    (CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS, 0),
    (
        CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES,
        0,
    ),
    (CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1),
    (
        CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
        0,
    ),
    (CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED, 0),
    (CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED, 1),
    (CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, 1),
    (CU_DEVICE_ATTRIBUTE_COOPERATIVE_MULTI_DEVICE_LAUNCH, 0),
    (CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED, 0),
];

/// What the application told us about a stream it created.
#[derive(Clone, Copy)]
pub(crate) struct StreamInfo {
    pub(crate) flags: u32,
    pub(crate) priority: i32,
    pub(crate) context: usize,
    pub(crate) id: u64,
}

/// Locally allocated pinned host memory.
pub(crate) struct HostBlock {
    pub(crate) len: usize,
    pub(crate) flags: u32,
    /// Allocated by us (freed with `cuMemFreeHost`), or registered by the application.
    pub(crate) owned: bool,
}

/// Context-local storage entries of the runtime (dark API).
pub(crate) type ClsDtor =
    Option<unsafe extern "C" fn(CUcontext, *mut std::ffi::c_void, *mut std::ffi::c_void)>;

pub(crate) struct Driver {
    pub(crate) conn: Connection,
    pub(crate) primary: Vec<Arc<Context>>,
    pub(crate) contexts: Registry<Context>,
    pub(crate) modules: Registry<Module>,
    pub(crate) functions: Registry<Function>,
    /// Device allocations, arrays, mappings, module variables and opened IPC
    /// memory, kept out of this process's own addresses.
    pub(crate) device_ranges: xpupool_client::ranges::DeviceRanges,
    /// Live events (server handles).
    pub(crate) events: Mutex<HashSet<u64>>,
    pub(crate) host_blocks: Mutex<BTreeMap<usize, HostBlock>>,
    pub(crate) streams: Mutex<HashMap<u64, StreamInfo>>,
    pub(crate) cls: Mutex<HashMap<(usize, usize), (usize, ClsDtor)>>,
    pub(crate) limits: Mutex<HashMap<u32, usize>>,
    /// Peer access enabled: (from device, to device).
    pub(crate) peer_access: Mutex<HashSet<(CUdevice, CUdevice)>>,
    next_id: AtomicU64,
}

static DRIVER: OnceLock<Result<Driver, CUresult>> = OnceLock::new();

/// The initialised driver, or the code explaining why there is none.
pub(crate) fn driver() -> Res<&'static Driver> {
    match DRIVER.get() {
        None => Err(CUDA_ERROR_NOT_INITIALIZED),
        Some(Ok(driver)) => Ok(driver),
        Some(Err(code)) => Err(*code),
    }
}

/// `cuInit`: connects once; later calls return the first outcome.
pub(crate) fn initialise() -> Res<&'static Driver> {
    let outcome = DRIVER.get_or_init(|| {
        crate::log::init();
        // `CUDA_VISIBLE_DEVICES` empty (or `-1`) hides every device, as NVIDIA's
        // driver does: no connection is opened. (`xpupool run` sets it for a
        // torch_npu job, which refuses to start beside a second accelerator.)
        if std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| matches!(v.trim(), "" | "-1")) {
            tracing::info!("CUDA_VISIBLE_DEVICES hides every device");
            return Err(CUDA_ERROR_NO_DEVICE);
        }
        let connection = Connection::open_from_env();
        match connection {
            Ok(conn) => {
                let driver = Driver::new(conn);
                tracing::info!(
                    backend = %driver.conn.welcome.backend,
                    devices = driver.conn.welcome.devices.len(),
                    "connected to the xpupool server"
                );
                // SAFETY: registering a plain extern "C" function with no captured state.
                unsafe { libc::atexit(at_exit) };
                Ok(driver)
            }
            Err(e) => {
                tracing::error!("{e:#}");
                Err(CUDA_ERROR_NO_DEVICE)
            }
        }
    });
    match outcome {
        Ok(driver) => Ok(driver),
        Err(code) => Err(*code),
    }
}

extern "C" fn at_exit() {
    crate::boundary::begin_shutdown();
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(driver)) = DRIVER.get() {
            driver.conn.close();
        }
        if let Some(tracer) = xpupool_client::trace::tracer() {
            tracer.flush();
        }
    });
}

impl Driver {
    fn new(conn: Connection) -> Self {
        // The server's fixed range reserved here, or else each range.
        let device_ranges = xpupool_client::ranges::for_server(conn.welcome.device_address_range);
        let primary = (0..conn.welcome.devices.len())
            .map(|ordinal| {
                Arc::new(Context {
                    device: ordinal as CUdevice,
                    primary: true,
                    flags: AtomicU32::new(0),
                    retained: AtomicU32::new(0),
                    id: ordinal as u64 + 1,
                })
            })
            .collect::<Vec<_>>();
        let contexts = Registry::new();
        for ctx in &primary {
            contexts.insert(ctx.clone());
        }
        Self {
            primary,
            contexts,
            modules: Registry::new(),
            functions: Registry::new(),
            device_ranges,
            events: Mutex::new(HashSet::new()),
            host_blocks: Mutex::new(BTreeMap::new()),
            streams: Mutex::new(HashMap::new()),
            cls: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            peer_access: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(100),
            conn,
        }
    }

    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn device(&self, ordinal: CUdevice) -> Res<&DeviceInfo> {
        usize::try_from(ordinal)
            .ok()
            .and_then(|i| self.conn.welcome.devices.get(i))
            .ok_or(CUDA_ERROR_INVALID_DEVICE)
    }

    pub(crate) fn attribute(&self, ordinal: CUdevice, attr: u32) -> Res<i32> {
        let device = self.device(ordinal)?;
        if let Some(&(_, v)) = FEATURES.iter().find(|&&(a, _)| a == attr) {
            return Ok(v);
        }
        Ok(device
            .attributes
            .iter()
            .find(|&&(a, _)| a == attr)
            .map_or(0, |&(_, v)| v))
    }

    /// Whether an address is a device address: inside the server's device range, or,
    /// when the server has no fixed range (the cuda backend), inside a known device
    /// allocation or module variable.
    pub(crate) fn is_device_address(&self, address: u64) -> bool {
        let (start, end) = self.conn.welcome.device_address_range;
        if start < end {
            (start..end).contains(&address)
        } else {
            self.device_range(address).is_some()
        }
    }

    /// The device allocation containing `address`: (base, size).
    pub(crate) fn device_range(&self, address: u64) -> Option<(u64, u64)> {
        self.device_ranges.find(address)
    }

    /// The pinned host block containing `address`: (base, len, flags).
    pub(crate) fn host_block(&self, address: usize) -> Option<(usize, usize, u32)> {
        let blocks = lock(&self.host_blocks);
        let (&base, block) = blocks.range(..=address).next_back()?;
        (address < base + block.len).then_some((base, block.len, block.flags))
    }

    /// The device of the thread's current context (0 without one).
    pub(crate) fn current_device(&self) -> CUdevice {
        self.current_context().map_or(0, |c| c.device)
    }

    /// How many devices the server offers this tenant.
    pub(crate) fn device_count(&self) -> usize {
        self.conn.welcome.devices.len()
    }

    /// The device whose work `stream` is: its context's, or for the default
    /// streams the current context's.
    pub(crate) fn stream_device(&self, stream: u64) -> Res<CUdevice> {
        if stream <= 2 {
            return Ok(self.current_device());
        }
        let context = lock(&self.streams)
            .get(&stream)
            .map(|s| s.context)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        Ok(self.contexts.get(context)?.device)
    }

    /// The context a call without one acts on: the thread's current one.
    pub(crate) fn current_context(&self) -> Res<Arc<Context>> {
        let handle = current().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        self.contexts
            .get(handle)
            .map_err(|_| CUDA_ERROR_INVALID_CONTEXT)
    }
}

thread_local! {
    static STACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The calling thread's current context handle.
pub(crate) fn current() -> Option<usize> {
    STACK
        .try_with(|s| s.borrow().last().copied())
        .ok()
        .flatten()
}

/// Replaces the top of the calling thread's stack (`cuCtxSetCurrent`).
pub(crate) fn set_current(ctx: Option<usize>) {
    let _ = STACK.try_with(|s| {
        let mut stack = s.borrow_mut();
        stack.pop();
        if let Some(ctx) = ctx {
            stack.push(ctx);
        }
    });
}

pub(crate) fn push_current(ctx: usize) {
    let _ = STACK.try_with(|s| s.borrow_mut().push(ctx));
}

pub(crate) fn pop_current() -> Option<usize> {
    STACK.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// Maps a stream argument to the server's name for it. On the per-thread entry
/// points (`_ptsz`, `_ptds`) the NULL stream means this thread's default stream,
/// as `CU_STREAM_PER_THREAD` does everywhere.
pub(crate) fn stream_arg(stream: CUstream, per_thread: bool) -> u64 {
    match stream as u64 {
        0 if per_thread => per_thread_default(),
        2 => per_thread_default(),
        other => other,
    }
}

/// This thread's default stream on the current context's device: a stream of its
/// own (made at first use, synchronising with the legacy stream as the driver's
/// per-thread stream does), so threads' default-stream work is not ordered
/// against each other's. Where none can be made, the server's legacy stream.
pub(crate) fn per_thread_default() -> u64 {
    let Ok(d) = driver() else {
        return 2;
    };
    let Ok(context) = d.current_context() else {
        return 2;
    };
    let key = Arc::as_ptr(&context) as usize;
    let found = PER_THREAD
        .try_with(|s| {
            s.borrow()
                .0
                .iter()
                .find(|(c, _)| *c == key)
                .map(|&(_, h)| h)
        })
        .ok()
        .flatten();
    if let Some(handle) = found {
        return handle;
    }
    match d.conn.stream_create(context.device as u32, 0, 0) {
        Ok(handle) => {
            lock(&d.streams).insert(
                handle,
                StreamInfo {
                    flags: 0,
                    priority: 0,
                    context: key,
                    id: d.fresh_id(),
                },
            );
            let _ = PER_THREAD.try_with(|s| s.borrow_mut().0.push((key, handle)));
            handle
        }
        Err(e) => {
            tracing::warn!("no per-thread default stream ({e}); using the legacy stream");
            2
        }
    }
}

/// A thread's per-thread default streams, by context; destroyed when it exits.
#[derive(Default)]
struct PerThread(Vec<(usize, u64)>);

impl Drop for PerThread {
    fn drop(&mut self) {
        let Ok(d) = driver() else {
            return;
        };
        for (_, handle) in self.0.drain(..) {
            lock(&d.streams).remove(&handle);
            let _ = d
                .conn
                .post(xpupool_protocol::Request::StreamDestroy { stream: handle });
        }
    }
}

thread_local! {
    static PER_THREAD: RefCell<PerThread> = RefCell::new(PerThread::default());
}
