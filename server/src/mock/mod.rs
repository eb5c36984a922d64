//! The mock backend: a CPU stand-in for a GPU, good enough for CI.
//!
//! Device memory is real bytes ([`memory`]); streams run their work in order as it
//! is submitted (so every stream is always complete when asked); events carry the
//! time they were recorded; kernels run on the PTX interpreter (`xpupool-ptx`). What
//! it cannot run it refuses with the driver's error code and a reason in the log —
//! it never reports success for work it did not do.
//!
//! The one exception is explicit: a mock made with [`MockBackend::skipping_kernels`]
//! accepts every kernel it can read the parameters of (SASS-only ones too) and
//! skips launching them, saying so loudly. It exists to record call traces of
//! programs whose kernels the interpreter cannot run (`xpupool run --kernels skip`);
//! results computed by kernels are wrong under it, and no test uses it.

mod aclnn;
mod amd;
mod ascend;
mod device;
mod heap;
pub(crate) mod memory;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_bytes::ByteBuf;
use xpupool_fatbin::{EntryKind, Image};
use xpupool_protocol::api::{
    ArrayBox, ArrayDesc, FunctionInfo, GlobalInfo, LaunchDims, ModuleInfo,
};
use xpupool_protocol::{code, Api, CuError, DeviceInfo};
use xpupool_ptx::{ExecError, Launch};

use crate::backend::{Backend, DirectCopy, Session, Tenant};
use crate::checks::invalid_handle;
use memory::{DeviceMemory, SessionMemory};

/// `CU_EVENT_DISABLE_TIMING`
const EVENT_DISABLE_TIMING: u32 = 0x2;

/// `CU_EVENT_INTERPROCESS`
const EVENT_INTERPROCESS: u32 = 0x4;

/// The mock devices, shared by every session of one server.
pub struct MockBackend {
    memory: Vec<Arc<DeviceMemory>>,
    workers: usize,
    skip_kernels: bool,
    ipc: Arc<std::sync::Mutex<Ipc>>,
}

/// What sessions of this server have exported by IPC, by the handle's token.
/// Entries hold no memory or event alive: each goes with what it names. (Which
/// tenant may open what is the tenancy layer's to check.)
#[derive(Default)]
struct Ipc {
    /// token → (storage, length, the exporting session).
    memory: HashMap<[u8; 32], (std::sync::Weak<memory::Block>, u64, u64)>,
    /// token → (the event's life, its device, the exporting session).
    events: HashMap<[u8; 32], (std::sync::Weak<()>, u32, u64)>,
}

/// Exports at most, live ones; past it the dead are forgotten first.
const MAX_IPC_EXPORTS: usize = 65_536;

impl Ipc {
    fn prune(&mut self) {
        if self.memory.len() + self.events.len() >= MAX_IPC_EXPORTS {
            self.memory
                .retain(|_, (storage, _, _)| storage.strong_count() > 0);
            self.events
                .retain(|_, (life, _, _)| life.strong_count() > 0);
        }
    }
}

/// An IPC handle's bytes: a random token, then zeros to the handle's size.
fn ipc_handle(token: [u8; 32]) -> ByteBuf {
    let mut bytes = token.to_vec();
    bytes.resize(xpupool_protocol::api::IPC_HANDLE_BYTES, 0);
    ByteBuf::from(bytes)
}

fn ipc_token(handle: &[u8]) -> Result<[u8; 32], CuError> {
    if handle.len() != xpupool_protocol::api::IPC_HANDLE_BYTES {
        return Err(CuError::new(
            code::INVALID_VALUE,
            "an IPC handle of the wrong size",
        ));
    }
    Ok(handle[..32].try_into().expect("32 bytes"))
}

/// The most mock devices one server has.
pub const MAX_MOCK_DEVICES: u32 = 8;

impl MockBackend {
    /// One mock device with `capacity` bytes of device memory.
    pub fn new(capacity: u64) -> Self {
        Self::with_devices(1, capacity)
    }

    /// `count` mock devices (at most [`MAX_MOCK_DEVICES`]) of `capacity` bytes each.
    /// A device runs one kernel at a time, on as many threads as the host has cores.
    pub fn with_devices(count: u32, capacity: u64) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            memory: DeviceMemory::devices(count.clamp(1, MAX_MOCK_DEVICES), capacity),
            workers,
            skip_kernels: false,
            ipc: Arc::default(),
        }
    }

    /// This mock, but launching no kernel at all: launches are checked (function,
    /// stream, shared memory) and then skipped. For recording call traces only —
    /// every result a kernel computes is missing.
    pub fn skipping_kernels(mut self) -> Self {
        tracing::warn!(
            "the mock backend SKIPS every kernel launch (--kernels skip): kernels compute nothing, results are wrong; use it only to record call traces"
        );
        self.skip_kernels = true;
        self
    }

    /// Bytes currently allocated by all sessions, on every device.
    pub fn used_memory(&self) -> u64 {
        self.memory.iter().map(|d| d.used()).sum()
    }
}

impl Backend for MockBackend {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn driver_version(&self) -> i32 {
        13020
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        (0..)
            .zip(&self.memory)
            .map(|(i, d)| device::device_info(i, d.capacity()))
            .collect()
    }

    fn memory_used(&self, device: u32) -> Option<u64> {
        self.memory.get(device as usize).map(|d| d.used())
    }

    fn launches_complete_on_return(&self) -> bool {
        true
    }

    fn device_address_range(&self) -> (u64, u64) {
        (memory::DEVICE_VA_START, memory::DEVICE_VA_END)
    }

    fn open_session(&self, tenant: &Tenant) -> Result<Box<dyn Session>, CuError> {
        // An SM ceiling is a ceiling on the interpreter's threads.
        let workers = match tenant.policy().sm_limit {
            Some(fraction) => {
                ((self.workers as f64 * fraction).ceil() as usize).clamp(1, self.workers)
            }
            None => self.workers,
        };
        Ok(Box::new(MockSession {
            id: rand::random(),
            ipc: self.ipc.clone(),
            exported: HashMap::new(),
            textures: HashMap::new(),
            surfaces: HashMap::new(),
            arrays: HashMap::new(),
            memory: SessionMemory::new(self.memory.clone()),
            devices: self.memory.len() as u32,
            workers,
            skip_kernels: self.skip_kernels,
            skipped: 0,
            next_handle: 1,
            modules: HashMap::new(),
            functions: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            sticky: None,
            heap: heap::Heap::default(),
            executors: aclnn::Executors::default(),
        }))
    }
}

/// The usable parts of a module image.
struct Code {
    ptx: Option<xpupool_ptx::Module>,
    /// Kernels of a cubin and their parameter layouts, when kernels are skipped.
    cubin_kernels: Vec<(String, Vec<(u32, u32)>)>,
    no_code: Option<String>,
    /// Module-scope variables: name, size and initial bytes (the rest zero).
    variables: Vec<(String, usize, Vec<u8>)>,
}

impl Code {
    fn from_ptx(text: &str) -> Result<Self, CuError> {
        let module = xpupool_ptx::parse_module(text)
            .map_err(|e| CuError::new(code::INVALID_IMAGE, format!("PTX does not parse: {e}")))?;
        let variables = module
            .globals()
            .iter()
            .map(|g| (g.name.clone(), g.size, g.init.clone()))
            .collect();
        Ok(Self {
            ptx: Some(module),
            cubin_kernels: Vec::new(),
            no_code: None,
            variables,
        })
    }
}

struct LoadedModule {
    ptx: Option<Arc<xpupool_ptx::Module>>,
    /// An AMD GPU code object's program, run by the gfx90a interpreter.
    amd: Option<Arc<amd::AmdCode>>,
    /// Whether it is an Ascend kernel binary (loaded, never run: [`ascend`]).
    ascend: bool,
    /// The allocation an AMD GPU code object's image lies in (its variables
    /// are inside it).
    image: Option<u64>,
    /// The device it is loaded on.
    device: u32,
    /// Module-scope variables: name → (device address, size).
    globals: HashMap<String, (u64, u64)>,
    functions: Vec<u64>,
    /// Its region of the device heap, if its kernels use device `malloc`.
    heap: Option<u64>,
}

impl LoadedModule {
    /// A module on `device` with nothing in it yet.
    fn on(device: u32) -> Self {
        Self {
            ptx: None,
            amd: None,
            ascend: false,
            image: None,
            device,
            globals: HashMap::new(),
            functions: Vec::new(),
            heap: None,
        }
    }
}

struct Function {
    module: u64,
    name: String,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` as set by the client.
    max_dynamic_shared: Option<u32>,
}

/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`
const ATTRIBUTE_MAX_DYNAMIC_SHARED: u32 = 8;

/// Device memory as a running kernel sees it: the session's allocations, and its
/// device heap for device `malloc` and `free`.
struct WithHeap<'a> {
    view: &'a memory::View<'a>,
    heap: &'a heap::Heap,
    device: u32,
    textures: &'a HashMap<u64, xpupool_ptx::Texture>,
    surfaces: &'a HashMap<u64, xpupool_ptx::Texture>,
}

impl xpupool_ptx::Memory for WithHeap<'_> {
    fn translate(&self, addr: u64, len: usize) -> Option<*mut u8> {
        self.view.translate(addr, len as u64)
    }

    fn heap_alloc(&self, size: u64) -> u64 {
        self.heap.alloc(self.device, size)
    }

    fn heap_free(&self, address: u64) -> bool {
        self.heap.free(address)
    }

    fn texture(&self, handle: u64) -> Option<xpupool_ptx::Texture> {
        self.textures.get(&handle).cloned()
    }

    fn surface(&self, handle: u64) -> Option<xpupool_ptx::Texture> {
        self.surfaces.get(&handle).cloned()
    }
}

/// Texture and surface objects one session may hold (and arrays).
const MAX_TEXTURE_OBJECTS: usize = 65_536;

/// A CUDA array: device memory laid out row by row, slices one after another.
#[derive(Clone, Copy)]
struct MockArray {
    address: u64,
    desc: ArrayDesc,
    /// Bytes from one row to the next.
    pitch: u64,
}

impl MockArray {
    fn slice_pitch(&self) -> u64 {
        self.pitch * self.desc.height.max(1)
    }

    /// The device address of byte `at[0]` of row `at[1]` of slice `at[2]`.
    fn at(&self, at: [u64; 3]) -> u64 {
        self.address + at[0] + at[1] * self.pitch + at[2] * self.slice_pitch()
    }

    /// A texture or surface over this array: its sampling as `desc` asks, its
    /// texels as the array has them.
    fn texture(
        &self,
        desc: &xpupool_protocol::api::TextureDesc,
    ) -> xpupool_protocol::api::TextureDesc {
        use xpupool_protocol::api::{ARRAY_CUBEMAP, ARRAY_LAYERED};
        let d = &self.desc;
        let layered = d.flags & ARRAY_LAYERED != 0;
        let cubemap = d.flags & ARRAY_CUBEMAP != 0;
        xpupool_protocol::api::TextureDesc {
            address: self.address,
            dims: match (d.height, d.depth) {
                (0, _) => 1,
                (_, 0) => 2,
                _ if layered || cubemap => 2,
                _ => 3,
            },
            size: [d.width, d.height.max(1), d.depth.max(1)],
            pitch: self.pitch,
            slice_pitch: self.slice_pitch(),
            channel: d.channel,
            bits: d.bits,
            channels: d.channels,
            layered,
            cubemap,
            array: 0,
            ..desc.clone()
        }
    }
}

/// A texture as the interpreter samples it.
fn texture_of(desc: &xpupool_protocol::api::TextureDesc) -> xpupool_ptx::Texture {
    use xpupool_ptx::{AddressMode, ChannelKind};
    xpupool_ptx::Texture {
        address: desc.address,
        dims: desc.dims,
        size: desc.size,
        pitch: desc.pitch,
        slice_pitch: desc.slice_pitch,
        channel: match desc.channel {
            0 => ChannelKind::Unsigned,
            1 => ChannelKind::Signed,
            _ => ChannelKind::Float,
        },
        bits: desc.bits,
        channels: desc.channels,
        address_mode: desc.address_mode.map(|m| match m {
            0 => AddressMode::Wrap,
            1 => AddressMode::Clamp,
            2 => AddressMode::Mirror,
            _ => AddressMode::Border,
        }),
        linear: desc.linear,
        normalized_coords: desc.normalized_coords,
        read_normalized: desc.read_normalized,
        border: desc.border,
        layered: desc.layered,
        cubemap: desc.cubemap,
    }
}
/// `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT`
const ATTRIBUTE_CARVEOUT: u32 = 9;
/// `CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED`
const ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED: u32 = 14;
/// `CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE`
const ATTRIBUTE_CLUSTER_SCHEDULING_POLICY: u32 = 15;

struct Event {
    flags: u32,
    recorded: Option<Instant>,
    /// Once exported by IPC: its token and what the registry's entry watches.
    exported: Option<([u8; 32], Arc<()>)>,
}

/// One client's view of the mock device.
struct MockSession {
    /// Names this session in the IPC registry.
    id: u64,
    ipc: Arc<std::sync::Mutex<Ipc>>,
    /// Allocations exported: base → token (the same handle each time).
    exported: HashMap<u64, [u8; 32]>,
    /// Texture and surface objects.
    textures: HashMap<u64, xpupool_ptx::Texture>,
    surfaces: HashMap<u64, xpupool_ptx::Texture>,
    /// CUDA arrays: device memory laid out row by row.
    arrays: HashMap<u64, MockArray>,
    memory: SessionMemory,
    /// How many devices there are.
    devices: u32,
    workers: usize,
    /// Launches are checked and skipped ([`MockBackend::skipping_kernels`]).
    skip_kernels: bool,
    /// How many were skipped.
    skipped: u64,
    next_handle: u64,
    modules: HashMap<u64, LoadedModule>,
    functions: HashMap<u64, Function>,
    /// Streams: their flags and device.
    streams: HashMap<u64, (u32, u32)>,
    events: HashMap<u64, Event>,
    /// A kernel fault poisons the context, as on a device: every later call fails.
    sticky: Option<CuError>,
    /// Device `malloc`'s heap.
    heap: heap::Heap,
    /// aclnn operators between their two phases.
    executors: aclnn::Executors,
}

impl MockSession {
    fn handle(&mut self, tag: u64) -> u64 {
        self.next_handle += 1;
        (tag << 48) | self.next_handle
    }

    /// Runs a kernel to its end; a cooperative one with every block at once and
    /// a grid-sync workspace, within what the device holds at once.
    /// Lists kernel `name` of `module` (being loaded as `loaded`) as one of the
    /// session's functions; its handle.
    fn add_function(&mut self, loaded: &mut LoadedModule, module: u64, name: &str) -> u64 {
        let f = self.handle(0x4655);
        self.functions.insert(
            f,
            Function {
                module,
                name: name.to_owned(),
                max_dynamic_shared: None,
            },
        );
        loaded.functions.push(f);
        f
    }

    /// Puts a code image of `bytes` bytes in an allocation of its own on
    /// `device`, as a device holds a loaded module's code (`image` gives the
    /// bytes for the address it lands at); its address and what it is charged.
    fn place_image(
        &mut self,
        device: u32,
        bytes: u64,
        image: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(u64, u64), CuError> {
        let charge = crate::quota::allocation_charge(bytes.max(1)).unwrap_or(u64::MAX);
        let base = self.memory.alloc(device, bytes.max(1))?;
        if let Err(e) = self.memory.write(base, &image(base)) {
            let _ = self.memory.free(base);
            return Err(e);
        }
        Ok((base, charge))
    }

    /// A function of this session, launched in `stream`: a kernel runs on the
    /// device its module was loaded on, and a stream of another device is the
    /// wrong context's, as on a real driver.
    fn function_in(&self, function: u64, stream: u64) -> Result<&Function, CuError> {
        self.stream(stream)?;
        let f = self
            .functions
            .get(&function)
            .ok_or_else(|| invalid_handle("function", function))?;
        if let Some(&(device, _)) = self.streams.get(&stream) {
            let module_device = self.modules[&f.module].device;
            if device != module_device {
                return Err(CuError::new(
                    code::INVALID_HANDLE,
                    format!("{} is loaded on device {module_device}; stream {stream:#x} is device {device}'s", f.name),
                ));
            }
        }
        Ok(f)
    }

    fn run_kernel(
        &mut self,
        function: u64,
        dims: LaunchDims,
        stream: u64,
        params: ByteBuf,
        cooperative: bool,
    ) -> Result<(), CuError> {
        let f = self.function_in(function, stream)?;
        if self.skip_kernels {
            // The same limit as a launch that runs, with the kernel's static shared
            // memory when the module's PTX says what it is.
            let static_shared = self.modules[&f.module]
                .ptx
                .as_ref()
                .and_then(|m| m.kernel(&f.name))
                .map_or(0, |k| k.static_shared_bytes as u32);
            check_dynamic_shared(f, static_shared, &dims)?;
            if self.skipped == 0 {
                tracing::warn!(
                    "skipping kernel launches (--kernels skip), starting with {}",
                    f.name
                );
            }
            self.skipped += 1;
            return Ok(());
        }
        let module = &self.modules[&f.module];
        if let Some(code) = module.amd.clone() {
            let name = f.name.clone();
            return self.run_amdgpu(&code, &name, &dims, &params);
        }
        let ptx = module
            .ptx
            .clone()
            .ok_or_else(|| CuError::new(code::NO_BINARY_FOR_GPU, "module has no PTX"))?;
        let kernel = ptx.kernel(&f.name).ok_or_else(|| {
            CuError::new(
                code::NOT_FOUND,
                format!("kernel {} vanished from its module", f.name),
            )
        })?;
        if let Some(reason) = &kernel.unsupported {
            return Err(CuError::new(
                code::NO_BINARY_FOR_GPU,
                format!("{}: {reason}", f.name),
            ));
        }
        check_dynamic_shared(f, kernel.static_shared_bytes as u32, &dims)?;
        let name = f.name.clone();
        let globals = &module.globals;
        let symbols = |symbol: &str| globals.get(symbol).map(|&(address, _)| address);
        // Between blocks the kernel gives way to a higher-priority tenant's, when the
        // device's scheduler runs it (scheduler.rs).
        let running = crate::scheduler::current();
        let checkpoint = || {
            if let Some(r) = &running {
                r.checkpoint();
            }
        };
        let device = module.device;
        let workspace = if cooperative {
            let blocks: u64 = dims.grid.iter().map(|&g| u64::from(g)).product();
            let threads: u64 = dims.block.iter().map(|&b| u64::from(b)).product();
            let most = cooperative_blocks(threads);
            if blocks > most {
                return Err(CuError::new(
                    code::COOPERATIVE_LAUNCH_TOO_LARGE,
                    format!("{name}: a cooperative grid of {blocks} blocks of {threads} threads; the device holds {most} at once"),
                ));
            }
            Some(self.memory.alloc(device, 8)?)
        } else {
            None
        };
        let launch = Launch {
            grid: dims.grid,
            block: dims.block,
            dynamic_shared_bytes: dims.shared_bytes,
            params: &params,
            symbols: &symbols,
            workers: self.workers,
            between_blocks: Some(&checkpoint),
            grid_workspace: workspace.unwrap_or(0),
            deadline: Some(Instant::now() + amd::kernel_time_limit()),
        };
        let started = Instant::now();
        let heap = &self.heap;
        let (textures, surfaces) = (&self.textures, &self.surfaces);
        let result = self.memory.with_view(|view| {
            let memory = WithHeap {
                view,
                heap,
                device,
                textures,
                surfaces,
            };
            xpupool_ptx::launch(&ptx, &name, &launch, &memory)
        });
        if let Some(workspace) = workspace {
            let _ = self.memory.free(workspace);
        }
        tracing::debug!(kernel = %name, grid = ?dims.grid, block = ?dims.block, elapsed = ?started.elapsed(), "kernel ran");
        result.map_err(|e| {
            let error = exec_error(&name, e);
            tracing::warn!(error = %error, "kernel failed");
            if is_sticky(error.code) {
                self.sticky = Some(error.clone());
            }
            error
        })
    }

    /// A texture or surface whose texels all lie in this session's memory on
    /// `device`, within the bound on objects.
    fn checked_texture(
        &self,
        device: u32,
        desc: &xpupool_protocol::api::TextureDesc,
    ) -> Result<xpupool_ptx::Texture, CuError> {
        self.device(device)?;
        if self.textures.len() + self.surfaces.len() >= MAX_TEXTURE_OBJECTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("this session holds {MAX_TEXTURE_OBJECTS} texture and surface objects, its most"),
            ));
        }
        let desc = match desc.array {
            0 => desc.clone(),
            handle => self.array(handle)?.texture(desc),
        };
        let span = desc
            .span()
            .map_err(|why| CuError::new(code::INVALID_VALUE, why))?;
        self.memory.check_span(desc.address, span)?;
        Ok(texture_of(&desc))
    }

    fn array(&self, handle: u64) -> Result<&MockArray, CuError> {
        self.arrays
            .get(&handle)
            .ok_or_else(|| invalid_handle("array", handle))
    }

    /// Copies the rows of a box between an array and device memory (`to_array`:
    /// into the array), row `y` of slice `z` of the other side at
    /// `base + y * pitch + z * slice_pitch`.
    fn copy_rows(
        &self,
        array: &MockArray,
        region: &ArrayBox,
        base: u64,
        pitch: u64,
        slice_pitch: u64,
        to_array: bool,
    ) -> Result<(), CuError> {
        if !array.desc.holds(region) {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("{region:?} is not inside the array"),
            ));
        }
        let [width, rows, slices] = region.extent;
        for z in 0..slices {
            for y in 0..rows {
                let other = y
                    .checked_mul(pitch)
                    .and_then(|r| z.checked_mul(slice_pitch)?.checked_add(r))
                    .and_then(|o| base.checked_add(o))
                    .ok_or_else(|| {
                        CuError::new(code::INVALID_VALUE, "a copy past the address space")
                    })?;
                let cell = array.at([region.at[0], region.at[1] + y, region.at[2] + z]);
                let (dst, src) = if to_array {
                    (cell, other)
                } else {
                    (other, cell)
                };
                self.memory.copy(dst, src, width)?;
            }
        }
        Ok(())
    }

    fn healthy(&self) -> Result<(), CuError> {
        self.sticky.clone().map_or(Ok(()), Err)
    }

    /// Checks a stream argument; the default streams (0, legacy, per-thread) always exist.
    fn stream(&self, stream: u64) -> Result<(), CuError> {
        self.healthy()?;
        if stream <= 2 || self.streams.contains_key(&stream) {
            Ok(())
        } else {
            Err(invalid_handle("stream", stream))
        }
    }

    fn device(&self, device: u32) -> Result<(), CuError> {
        if device < self.devices {
            Ok(())
        } else {
            Err(CuError::new(
                code::INVALID_DEVICE,
                format!("device {device}"),
            ))
        }
    }

    fn event(&mut self, event: u64) -> Result<&mut Event, CuError> {
        self.events
            .get_mut(&event)
            .ok_or_else(|| invalid_handle("event", event))
    }

    /// What of an image the mock can use: its PTX (parsed), or why there is none,
    /// and its module-scope variables either way (from the PTX, else from a cubin's
    /// symbol table, so libraries that only look up and copy to their globals work).
    fn load_code(&mut self, image: &Image) -> Result<Code, CuError> {
        let entries = match image {
            Image::Ptx(text) => return Code::from_ptx(text),
            _ => image
                .entries()
                .map_err(|e| CuError::new(code::INVALID_IMAGE, format!("module image: {e}")))?,
        };
        if let Some(entry) = xpupool_fatbin::best_ptx(&entries, device::SM) {
            return Code::from_ptx(&String::from_utf8_lossy(&entry.data));
        }
        let archs: Vec<String> = entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::Ptx => format!("compute_{}", e.arch),
                EntryKind::Elf => format!("sm_{}", e.arch),
            })
            .collect();
        let reason = format!(
            "the image has no PTX for sm_{} or older (it holds: {}); the mock backend runs PTX only",
            device::SM,
            archs.join(", ")
        );
        let cubin = xpupool_fatbin::cubin_for(&entries, device::SM).or_else(|| {
            entries
                .iter()
                .filter(|e| e.kind == EntryKind::Elf)
                .max_by_key(|e| e.arch)
        });
        let variables = match cubin.map(|e| xpupool_fatbin::cubin_globals(&e.data)) {
            Some(Ok(globals)) => globals
                .into_iter()
                .map(|g| (g.name, g.size, g.init))
                .collect(),
            Some(Err(e)) => {
                tracing::warn!("reading the variables of a cubin: {e}");
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut cubin_kernels = Vec::new();
        if self.skip_kernels {
            match cubin.map(|e| xpupool_fatbin::cubin_param_layouts(&e.data)) {
                Some(Ok(layouts)) => cubin_kernels = layouts.into_iter().collect(),
                Some(Err(e)) => tracing::warn!("reading the kernels of a cubin: {e}"),
                None => {}
            }
            cubin_kernels.sort();
        }
        Ok(Code {
            ptx: None,
            no_code: if cubin_kernels.is_empty() {
                Some(reason)
            } else {
                None
            },
            cubin_kernels,
            variables,
        })
    }

    fn free_module(&mut self, module: LoadedModule) {
        for f in module.functions {
            self.functions.remove(&f);
        }
        let heap = module.heap.inspect(|&base| self.heap.remove(base));
        // A code object's variables lie in its image: the image is what was allocated.
        let globals = module
            .globals
            .values()
            .map(|(a, _)| *a)
            .filter(|_| module.image.is_none());
        for address in globals.chain(heap).chain(module.image) {
            // The module allocated these itself; failure would mean a bookkeeping bug.
            if let Err(e) = self.memory.free(address) {
                tracing::error!(error = %e, "freeing a module global or heap");
            }
        }
    }
}

fn function_attributes(
    kernel: &xpupool_ptx::KernelInfo,
    module: &xpupool_ptx::Module,
) -> Vec<(u32, i32)> {
    let const_bytes: usize = module
        .globals()
        .iter()
        .filter(|g| matches!(g.space, xpupool_ptx::Space::Const))
        .map(|g| g.size)
        .sum();
    attributes(
        kernel.max_threads_per_block.unwrap_or(1024).min(1024) as i32,
        kernel.static_shared_bytes as i32,
        const_bytes as i32,
        kernel.local_bytes as i32,
    )
}

/// Attributes of a cubin kernel accepted under skipped kernels: the device's limits
/// and no resources of its own.
fn skipped_kernel_attributes() -> Vec<(u32, i32)> {
    attributes(1024, 0, 0, 0)
}

/// `(CUfunction_attribute, value)` pairs of a kernel with these resources.
fn attributes(
    max_threads: i32,
    static_shared: i32,
    const_bytes: i32,
    local_bytes: i32,
) -> Vec<(u32, i32)> {
    vec![
        (0, max_threads),
        (1, static_shared),
        (2, const_bytes),
        (3, local_bytes),
        (4, 32), // NUM_REGS: the interpreter has no register limit; report a typical figure
        (5, device::SM as i32),
        (6, device::SM as i32),
        (7, 0),
        (8, (device::attribute(8) - static_shared).max(0)),
        (9, -1),
    ]
}

/// Like a device: more than 48 KiB of dynamic shared memory (less the kernel's own
/// static shared memory) needs the opt-in.
fn check_dynamic_shared(
    f: &Function,
    static_shared: u32,
    dims: &LaunchDims,
) -> Result<(), CuError> {
    let allowed = f
        .max_dynamic_shared
        .unwrap_or_else(|| (device::attribute(8) - static_shared as i32).max(0) as u32);
    if dims.shared_bytes > allowed {
        return Err(CuError::new(
            code::INVALID_VALUE,
            format!(
                "{}: {} bytes of dynamic shared memory, {allowed} allowed",
                f.name, dims.shared_bytes
            ),
        ));
    }
    Ok(())
}

impl Drop for MockSession {
    fn drop(&mut self) {
        if self.skipped > 0 {
            tracing::warn!(
                launches = self.skipped,
                "the session ended; its kernel launches were skipped (--kernels skip), none ran"
            );
        }
    }
}

/// The driver's code for each way a kernel can fail on the mock.
fn exec_error(kernel: &str, e: ExecError) -> CuError {
    let code = match &e {
        // The shim checks launch shapes first; what reaches here is e.g. a short
        // parameter buffer.
        ExecError::InvalidLaunch(_) => code::INVALID_VALUE,
        ExecError::IllegalAddress { .. } => code::ILLEGAL_ADDRESS,
        ExecError::MisalignedAddress { .. } => code::MISALIGNED_ADDRESS,
        ExecError::AssertFailed(_) => code::ASSERT,
        ExecError::Trap => code::ILLEGAL_INSTRUCTION,
        ExecError::KernelNotFound(_) => code::NOT_FOUND,
        ExecError::Unsupported(_) | ExecError::Deadlock(_) => code::LAUNCH_FAILED,
        ExecError::TimedOut(_) => code::LAUNCH_TIMEOUT,
    };
    CuError::new(code, format!("{kernel}: {e}"))
}

/// Blocks of `threads` threads a cooperative grid may have: what the mock
/// device holds at once by its attributes (16 multiprocessors, 2048 threads and
/// 32 blocks each), as the occupancy calculator says; each runs on a thread of
/// its own.
fn cooperative_blocks(threads: u64) -> u64 {
    16 * (2048 / threads.max(1)).min(32)
}

/// Whether a failure poisons the context, as a device fault does.
fn is_sticky(code: u32) -> bool {
    matches!(
        code,
        code::ILLEGAL_ADDRESS
            | code::LAUNCH_TIMEOUT
            | code::MISALIGNED_ADDRESS
            | code::ASSERT
            | code::ILLEGAL_INSTRUCTION
            | code::LAUNCH_FAILED
    )
}

impl DirectCopy for MockSession {
    fn memcpy_htod_direct(&mut self, dst: u64, data: &[u8], stream: u64) -> Result<(), CuError> {
        self.stream(stream)?;
        self.memory.write(dst, data)
    }

    fn memcpy_dtoh_direct(&mut self, src: u64, out: &mut [u8], stream: u64) -> Result<(), CuError> {
        self.stream(stream)?;
        self.memory.read_into(src, out)
    }
}

impl Api for MockSession {
    fn mem_alloc(&mut self, device: u32, bytes: u64) -> Result<u64, CuError> {
        self.healthy()?;
        self.memory.alloc(device, bytes)
    }

    fn mem_free(&mut self, ptr: u64) -> Result<(), CuError> {
        self.healthy()?;
        if self
            .modules
            .values()
            .any(|m| m.globals.values().any(|&(g, _)| g == ptr))
            || self.arrays.values().any(|a| a.address == ptr)
        {
            return Err(CuError::new(
                code::INVALID_VALUE,
                "cannot free a module variable",
            ));
        }
        self.memory.free(ptr)
    }

    fn mem_get_info(&mut self, device: u32) -> Result<(u64, u64), CuError> {
        Ok((self.memory.available(device)?, self.memory.total(device)?))
    }

    fn mem_address_reserve(
        &mut self,
        device: u32,
        size: u64,
        alignment: u64,
    ) -> Result<u64, CuError> {
        self.healthy()?;
        self.memory.reserve(device, size, alignment)
    }

    fn mem_address_free(&mut self, ptr: u64, size: u64) -> Result<(), CuError> {
        self.healthy()?;
        self.memory.address_free(ptr, size)
    }

    fn mem_create(&mut self, device: u32, size: u64) -> Result<u64, CuError> {
        self.healthy()?;
        self.memory.create(device, size)
    }

    fn mem_release(&mut self, handle: u64) -> Result<(), CuError> {
        self.healthy()?;
        self.memory.release(handle)
    }

    fn mem_map(&mut self, ptr: u64, size: u64, offset: u64, handle: u64) -> Result<(), CuError> {
        self.healthy()?;
        self.memory.map(ptr, size, offset, handle)
    }

    fn mem_unmap(&mut self, ptr: u64, size: u64) -> Result<(), CuError> {
        self.healthy()?;
        self.memory.unmap(ptr, size)
    }

    fn mem_set_access(
        &mut self,
        ptr: u64,
        size: u64,
        device: u32,
        flags: u32,
    ) -> Result<(), CuError> {
        self.healthy()?;
        self.memory.set_access(ptr, size, device, flags)
    }

    fn memcpy_htod(&mut self, dst: u64, data: ByteBuf, stream: u64) -> Result<(), CuError> {
        self.stream(stream)?;
        self.memory.write(dst, &data)
    }

    fn memcpy_dtoh(&mut self, src: u64, len: u64, stream: u64) -> Result<ByteBuf, CuError> {
        self.stream(stream)?;
        if len > xpupool_protocol::MAX_COPY_CHUNK as u64 {
            return Err(CuError::new(
                code::INVALID_VALUE,
                "copy chunk over the protocol limit",
            ));
        }
        self.memory.read(src, len).map(ByteBuf::from)
    }

    fn memcpy_htod_shared(&mut self, _: u64, _: u64, _: u64, _: u64) -> Result<(), CuError> {
        Err(xpupool_protocol::api::transport_only("memcpy_htod_shared"))
    }

    fn memcpy_dtoh_shared(&mut self, _: u64, _: u64, _: u64, _: u64) -> Result<(), CuError> {
        Err(xpupool_protocol::api::transport_only("memcpy_dtoh_shared"))
    }

    fn memcpy_dtod(&mut self, dst: u64, src: u64, len: u64, stream: u64) -> Result<(), CuError> {
        self.stream(stream)?;
        self.memory.copy(dst, src, len)
    }

    fn memset(
        &mut self,
        dst: u64,
        value: u32,
        elem_size: u8,
        count: u64,
        stream: u64,
    ) -> Result<(), CuError> {
        self.stream(stream)?;
        self.memory.fill(dst, value, elem_size, count)
    }

    fn memset_2d(
        &mut self,
        dst: u64,
        pitch: u64,
        value: u32,
        elem_size: u8,
        width: u64,
        height: u64,
        stream: u64,
    ) -> Result<(), CuError> {
        self.stream(stream)?;
        self.memory
            .fill_2d(dst, pitch, value, elem_size, width, height)
    }

    fn module_load_cached(
        &mut self,
        _device: u32,
        _hash: [u8; 32],
    ) -> Result<Option<ModuleInfo>, CuError> {
        // Images are cached by the server around every session (module_cache.rs);
        // the backend itself keeps none.
        Ok(None)
    }

    fn module_load(&mut self, device: u32, image: ByteBuf) -> Result<ModuleInfo, CuError> {
        self.healthy()?;
        self.device(device)?;
        let image = Image::from_wire(&image)
            .map_err(|e| CuError::new(code::INVALID_IMAGE, format!("module image: {e}")))?;
        if let Image::Elf(bytes) = &image {
            if amd::is_code_object(bytes) {
                return self.load_amdgpu(device, bytes);
            }
        }
        if let Image::Ascend { magic, elf } = &image {
            return self.load_ascend(device, *magic, elf);
        }
        let Code {
            ptx,
            cubin_kernels,
            no_code,
            variables,
        } = self.load_code(&image)?;
        let handle = self.handle(0x4d4f);
        let mut loaded = LoadedModule::on(device);
        let mut info = ModuleInfo {
            handle,
            functions: Vec::new(),
            no_code,
            device_bytes: 0,
        };
        for (name, size, init) in variables {
            // A module's variables are allocations on its device, and its footprint.
            let bytes = size.max(1) as u64;
            info.device_bytes += crate::quota::allocation_charge(bytes).unwrap_or(u64::MAX);
            let address = match self.memory.alloc(device, bytes) {
                Ok(a) => a,
                Err(e) => {
                    self.free_module(loaded);
                    return Err(e);
                }
            };
            self.memory.write(address, &init[..init.len().min(size)])?;
            loaded.globals.insert(name, (address, size as u64));
        }
        // Addresses the variables hold (vtables, tables of function pointers),
        // now that every variable has its place.
        if let Some(module) = &ptx {
            for global in module.globals() {
                let Some(&(base, _)) = loaded.globals.get(&global.name) else {
                    continue;
                };
                for (offset, symbol) in &global.relocs {
                    let value = module
                        .function_address(symbol)
                        .or_else(|| loaded.globals.get(symbol).map(|&(a, _)| a));
                    match value {
                        Some(v) => self.memory.write(base + *offset as u64, &v.to_le_bytes())?,
                        None => tracing::warn!(
                            "`{}` holds the address of `{symbol}`, which the module does not define: left as zero",
                            global.name
                        ),
                    }
                }
            }
        }
        // A module whose kernels use device malloc brings a heap region, part of
        // its footprint.
        let wants_heap = ptx
            .as_ref()
            .is_some_and(|m| m.kernels().iter().any(|k| k.uses_heap))
            && !self.skip_kernels;
        if wants_heap {
            info.device_bytes +=
                crate::quota::allocation_charge(heap::REGION_BYTES).unwrap_or(u64::MAX);
            match self.memory.alloc(device, heap::REGION_BYTES) {
                Ok(base) => {
                    self.heap.add(device, base, heap::REGION_BYTES);
                    loaded.heap = Some(base);
                }
                Err(e) => {
                    self.free_module(loaded);
                    return Err(e);
                }
            }
        }
        if let Some(module) = ptx {
            for kernel in module.kernels() {
                let f = self.add_function(&mut loaded, handle, &kernel.name);
                info.functions.push(FunctionInfo {
                    name: kernel.name.clone(),
                    handle: f,
                    params: kernel
                        .params
                        .iter()
                        .map(|p| (p.offset as u32, p.size as u32))
                        .collect(),
                    param_bytes: kernel.param_bytes as u32,
                    unusable: kernel.unsupported.clone().filter(|_| !self.skip_kernels),
                    attributes: function_attributes(kernel, &module),
                });
            }
            loaded.ptx = Some(Arc::new(module));
        }
        for (name, params) in cubin_kernels {
            let f = self.add_function(&mut loaded, handle, &name);
            info.functions.push(FunctionInfo {
                name,
                handle: f,
                param_bytes: params.iter().map(|&(o, s)| o + s).max().unwrap_or(0),
                params,
                unusable: None,
                attributes: skipped_kernel_attributes(),
            });
        }
        tracing::debug!(
            module = handle,
            functions = info.functions.len(),
            globals = loaded.globals.len(),
            "module loaded"
        );
        self.modules.insert(handle, loaded);
        Ok(info)
    }

    fn module_get_global(&mut self, module: u64, name: String) -> Result<GlobalInfo, CuError> {
        let loaded = self
            .modules
            .get(&module)
            .ok_or_else(|| invalid_handle("module", module))?;
        let &(address, size) = loaded.globals.get(&name).ok_or_else(|| {
            CuError::new(code::NOT_FOUND, format!("no global {name:?} in the module"))
        })?;
        Ok(GlobalInfo {
            name,
            address,
            size,
        })
    }

    fn module_unload(&mut self, module: u64) -> Result<(), CuError> {
        let loaded = self
            .modules
            .remove(&module)
            .ok_or_else(|| invalid_handle("module", module))?;
        self.free_module(loaded);
        Ok(())
    }

    fn launch_kernel(
        &mut self,
        function: u64,
        dims: LaunchDims,
        stream: u64,
        params: ByteBuf,
    ) -> Result<(), CuError> {
        self.run_kernel(function, dims, stream, params, false)
    }

    fn launch_cooperative(
        &mut self,
        function: u64,
        dims: LaunchDims,
        stream: u64,
        params: ByteBuf,
    ) -> Result<(), CuError> {
        self.run_kernel(function, dims, stream, params, true)
    }

    fn launch_with_args(
        &mut self,
        function: u64,
        blocks: u32,
        stream: u64,
        args: ByteBuf,
        placeholders: Vec<xpupool_protocol::api::Placeholder>,
    ) -> Result<(), CuError> {
        let args = ascend::AscendArgs::Host {
            blocks,
            bytes: &args,
            placeholders: &placeholders,
        };
        self.launch_ascend(function, stream, args)
    }

    fn launch_with_device_args(
        &mut self,
        function: u64,
        blocks: u32,
        stream: u64,
        address: u64,
        size: u64,
    ) -> Result<(), CuError> {
        let args = ascend::AscendArgs::Device {
            blocks,
            address,
            size,
        };
        self.launch_ascend(function, stream, args)
    }

    fn aclnn_prepare(
        &mut self,
        device: u32,
        operator: String,
        args: Vec<xpupool_protocol::aclnn::AclnnArg>,
    ) -> Result<xpupool_protocol::aclnn::AclnnPlan, CuError> {
        self.healthy()?;
        self.device(device)?;
        // Every tensor's memory is the session's, however far its view reaches.
        for t in args.iter().flat_map(aclnn::tensors_of) {
            let bytes = t
                .byte_extent()
                .map_err(|e| CuError::new(code::INVALID_VALUE, e))?;
            if bytes > 0 {
                self.memory.check_span(t.data, bytes)?;
            }
        }
        let prepared = aclnn::prepare(&operator, args)?;
        let executor = self.handle(0xac);
        self.executors.insert(executor, prepared)?;
        // The stand-in device's operators need no workspace.
        Ok(xpupool_protocol::aclnn::AclnnPlan {
            workspace_size: 0,
            executor,
        })
    }

    fn aclnn_run(
        &mut self,
        executor: u64,
        _workspace: u64,
        _workspace_size: u64,
        stream: u64,
    ) -> Result<(), CuError> {
        // An executor is used up by its run, not by a run refused before it starts.
        if !self.executors.has(executor) {
            return Err(invalid_handle("aclnn executor", executor));
        }
        self.stream(stream)?;
        let prepared = self.executors.take(executor)?;
        aclnn::run(&prepared, &self.memory)
    }

    fn aclnn_destroy(&mut self, executor: u64) -> Result<(), CuError> {
        self.executors.take(executor).map(|_| ())
    }

    fn function_get_attribute(&mut self, function: u64, attribute: u32) -> Result<i32, CuError> {
        // Every attribute the mock has is reported when the module loads.
        Err(CuError::new(
            code::INVALID_VALUE,
            format!("function {function:#x} has no attribute {attribute} beyond those its module's load reported"),
        ))
    }

    fn session_busy(&mut self) -> Result<xpupool_protocol::api::SessionWork, CuError> {
        // Kernels run inside the launch here, timed by the server's scheduler.
        Err(CuError::new(
            code::NOT_SUPPORTED,
            "the mock backend's kernels are timed by the server's scheduler",
        ))
    }

    fn launch_clustered(
        &mut self,
        _function: u64,
        _dims: LaunchDims,
        cluster: [u32; 3],
        _stream: u64,
        _params: ByteBuf,
    ) -> Result<(), CuError> {
        // The device says it has none (CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH 0), so
        // the client refuses these itself; one that arrives anyway is refused.
        Err(CuError::new(
            code::NOT_SUPPORTED,
            format!("a launch in clusters of {cluster:?} blocks: the mock device runs no thread-block clusters"),
        ))
    }

    fn function_set_attribute(
        &mut self,
        function: u64,
        attribute: u32,
        value: i32,
    ) -> Result<(), CuError> {
        self.healthy()?;
        let f = self
            .functions
            .get_mut(&function)
            .ok_or_else(|| invalid_handle("function", function))?;
        match attribute {
            ATTRIBUTE_MAX_DYNAMIC_SHARED if (0..=device::attribute(97)).contains(&value) => {
                f.max_dynamic_shared = Some(value as u32);
                Ok(())
            }
            // The interpreter has no L1/shared split to prefer.
            ATTRIBUTE_CARVEOUT if (-1..=100).contains(&value) => Ok(()),
            // Permission for cluster sizes over 8 and a scheduling preference: the
            // mock launches no clusters, so neither changes what it does.
            ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED if (0..=1).contains(&value) => Ok(()),
            ATTRIBUTE_CLUSTER_SCHEDULING_POLICY if (0..=2).contains(&value) => Ok(()),
            _ => Err(CuError::new(
                code::INVALID_VALUE,
                format!("function attribute {attribute} = {value}"),
            )),
        }
    }

    fn stream_create(&mut self, device: u32, flags: u32, _priority: i32) -> Result<u64, CuError> {
        self.healthy()?;
        self.device(device)?;
        let handle = self.handle(0x5354);
        self.streams.insert(handle, (device, flags));
        Ok(handle)
    }

    fn stream_destroy(&mut self, stream: u64) -> Result<(), CuError> {
        self.streams
            .remove(&stream)
            .map(|_| ())
            .ok_or_else(|| invalid_handle("stream", stream))
    }

    fn stream_synchronize(&mut self, stream: u64) -> Result<(), CuError> {
        // Work runs as it is submitted, so a known stream is always complete.
        self.stream(stream)
    }

    fn stream_query(&mut self, stream: u64) -> Result<(), CuError> {
        self.stream(stream)
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64, _flags: u32) -> Result<(), CuError> {
        self.stream(stream)?;
        // The event's work has already run: submission order is execution order.
        self.event(event).map(|_| ())
    }

    fn event_create(&mut self, device: u32, flags: u32) -> Result<u64, CuError> {
        self.healthy()?;
        self.device(device)?;
        let handle = self.handle(0x4556);
        self.events.insert(
            handle,
            Event {
                flags,
                recorded: None,
                exported: None,
            },
        );
        Ok(handle)
    }

    fn event_destroy(&mut self, event: u64) -> Result<(), CuError> {
        self.events
            .remove(&event)
            .map(|_| ())
            .ok_or_else(|| invalid_handle("event", event))
    }

    fn event_record(&mut self, event: u64, stream: u64) -> Result<(), CuError> {
        self.stream(stream)?;
        self.event(event)?.recorded = Some(Instant::now());
        Ok(())
    }

    fn event_synchronize(&mut self, event: u64) -> Result<(), CuError> {
        self.healthy()?;
        self.event(event).map(|_| ())
    }

    fn event_query(&mut self, event: u64) -> Result<(), CuError> {
        self.healthy()?;
        self.event(event).map(|_| ())
    }

    fn event_elapsed_time(&mut self, start: u64, end: u64) -> Result<f32, CuError> {
        self.healthy()?;
        let times = [start, end].map(|e| self.events.get(&e).map(|ev| (ev.flags, ev.recorded)));
        match times {
            [Some((f1, Some(t1))), Some((f2, Some(t2)))] => {
                if (f1 | f2) & EVENT_DISABLE_TIMING != 0 {
                    return Err(CuError::new(
                        code::INVALID_HANDLE,
                        "event created with CU_EVENT_DISABLE_TIMING",
                    ));
                }
                let ms = if t2 >= t1 {
                    t2.duration_since(t1).as_secs_f32() * 1000.0
                } else {
                    -(t1.duration_since(t2).as_secs_f32() * 1000.0)
                };
                Ok(ms)
            }
            [Some(_), Some(_)] => Err(CuError::new(
                code::INVALID_HANDLE,
                "event was never recorded",
            )),
            _ => Err(CuError::new(code::INVALID_HANDLE, "unknown event")),
        }
    }

    fn synchronize(&mut self) -> Result<(), CuError> {
        self.healthy()
    }

    fn ipc_get_mem_handle(&mut self, ptr: u64) -> Result<ByteBuf, CuError> {
        self.healthy()?;
        let (storage, len) = self.memory.exportable(ptr)?;
        let mut ipc = self.ipc.lock().unwrap_or_else(|e| e.into_inner());
        // The same allocation, still exported: the same handle.
        if let Some(token) = self.exported.get(&ptr) {
            if ipc
                .memory
                .get(token)
                .is_some_and(|(s, _, _)| s.upgrade().is_some_and(|s| Arc::ptr_eq(&s, &storage)))
            {
                return Ok(ipc_handle(*token));
            }
        }
        ipc.prune();
        if ipc.memory.len() + ipc.events.len() >= MAX_IPC_EXPORTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                "the server holds too many IPC exports",
            ));
        }
        let token: [u8; 32] = rand::random();
        ipc.memory
            .insert(token, (Arc::downgrade(&storage), len, self.id));
        self.exported.retain(|_, t| ipc.memory.contains_key(t));
        self.exported.insert(ptr, token);
        Ok(ipc_handle(token))
    }

    fn ipc_open_mem_handle(
        &mut self,
        _device: u32,
        handle: ByteBuf,
    ) -> Result<(u64, u64), CuError> {
        self.healthy()?;
        let token = ipc_token(&handle)?;
        let found = {
            let ipc = self.ipc.lock().unwrap_or_else(|e| e.into_inner());
            ipc.memory
                .get(&token)
                .map(|(s, len, by)| (s.upgrade(), *len, *by))
        };
        match found {
            Some((_, _, by)) if by == self.id => Err(CuError::new(
                code::INVALID_CONTEXT,
                "an IPC handle opened by the process that made it",
            )),
            Some((Some(storage), len, _)) => {
                let address = self.memory.open_shared(storage, len)?;
                Ok((address, len))
            }
            _ => Err(CuError::new(
                code::INVALID_HANDLE,
                "no live allocation has this IPC handle",
            )),
        }
    }

    fn ipc_close_mem_handle(&mut self, ptr: u64) -> Result<(), CuError> {
        self.memory.close_shared(ptr)
    }

    fn ipc_get_event_handle(&mut self, event: u64) -> Result<ByteBuf, CuError> {
        self.healthy()?;
        let ipc = self.ipc.clone();
        let id = self.id;
        let e = self.event(event)?;
        if e.flags & (EVENT_INTERPROCESS | EVENT_DISABLE_TIMING)
            != EVENT_INTERPROCESS | EVENT_DISABLE_TIMING
        {
            return Err(CuError::new(
                code::INVALID_VALUE,
                "an IPC event handle needs an event created with CU_EVENT_INTERPROCESS and CU_EVENT_DISABLE_TIMING",
            ));
        }
        if let Some((token, _)) = &e.exported {
            return Ok(ipc_handle(*token));
        }
        let mut ipc = ipc.lock().unwrap_or_else(|e| e.into_inner());
        ipc.prune();
        if ipc.memory.len() + ipc.events.len() >= MAX_IPC_EXPORTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                "the server holds too many IPC exports",
            ));
        }
        let token: [u8; 32] = rand::random();
        let life = Arc::new(());
        // The device is the session's first: events are not tied to one here.
        ipc.events.insert(token, (Arc::downgrade(&life), 0, id));
        e.exported = Some((token, life));
        Ok(ipc_handle(token))
    }

    fn ipc_open_event_handle(&mut self, _device: u32, handle: ByteBuf) -> Result<u64, CuError> {
        self.healthy()?;
        let token = ipc_token(&handle)?;
        let found = {
            let ipc = self.ipc.lock().unwrap_or_else(|e| e.into_inner());
            ipc.events
                .get(&token)
                .map(|(life, _, by)| (life.strong_count() > 0, *by))
        };
        match found {
            Some((_, by)) if by == self.id => Err(CuError::new(
                code::INVALID_CONTEXT,
                "an IPC handle opened by the process that made it",
            )),
            // The exporter's work up to each record has run by the time its
            // handle was made (a session's requests run in order, each to its
            // end), so waiting on it here never has to wait: an event of its own
            // stands for it.
            Some((true, _)) => {
                let handle = self.handle(0x4556);
                self.events.insert(
                    handle,
                    Event {
                        flags: EVENT_INTERPROCESS | EVENT_DISABLE_TIMING,
                        recorded: None,
                        exported: None,
                    },
                );
                Ok(handle)
            }
            _ => Err(CuError::new(
                code::INVALID_HANDLE,
                "no live event has this IPC handle",
            )),
        }
    }

    fn tex_object_create(
        &mut self,
        device: u32,
        desc: xpupool_protocol::api::TextureDesc,
    ) -> Result<u64, CuError> {
        self.healthy()?;
        let texture = self.checked_texture(device, &desc)?;
        let handle = self.handle(0x5445);
        self.textures.insert(handle, texture);
        Ok(handle)
    }

    fn tex_object_destroy(&mut self, handle: u64) -> Result<(), CuError> {
        self.textures
            .remove(&handle)
            .map(|_| ())
            .ok_or_else(|| invalid_handle("texture object", handle))
    }

    fn surf_object_create(
        &mut self,
        device: u32,
        desc: xpupool_protocol::api::TextureDesc,
    ) -> Result<u64, CuError> {
        self.healthy()?;
        if desc.array != 0
            && self.array(desc.array)?.desc.flags & xpupool_protocol::api::ARRAY_SURFACE_LDST == 0
        {
            return Err(CuError::new(
                code::INVALID_VALUE,
                "a surface over an array made without CUDA_ARRAY3D_SURFACE_LDST",
            ));
        }
        let surface = self.checked_texture(device, &desc)?;
        let handle = self.handle(0x5355);
        self.surfaces.insert(handle, surface);
        Ok(handle)
    }

    fn surf_object_destroy(&mut self, handle: u64) -> Result<(), CuError> {
        self.surfaces
            .remove(&handle)
            .map(|_| ())
            .ok_or_else(|| invalid_handle("surface object", handle))
    }

    fn array_create(&mut self, device: u32, desc: ArrayDesc) -> Result<u64, CuError> {
        self.healthy()?;
        desc.check()
            .map_err(|why| CuError::new(code::INVALID_VALUE, why))?;
        if self.arrays.len() >= MAX_TEXTURE_OBJECTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("this session holds {MAX_TEXTURE_OBJECTS} arrays, its most"),
            ));
        }
        let pitch = desc.extent()[0].next_multiple_of(xpupool_protocol::api::ARRAY_ROW_ALIGN);
        let bytes = desc
            .footprint()
            .ok_or_else(|| CuError::new(code::OUT_OF_MEMORY, "array too large"))?;
        let address = self.memory.alloc(device, bytes)?;
        let handle = self.handle(0x4152);
        self.arrays.insert(
            handle,
            MockArray {
                address,
                desc,
                pitch,
            },
        );
        Ok(handle)
    }

    fn link(
        &mut self,
        device: u32,
        _inputs: Vec<xpupool_protocol::api::LinkInput>,
    ) -> Result<ByteBuf, CuError> {
        self.device(device)?;
        Err(CuError::new(
            code::NOT_SUPPORTED,
            "linking cubins, objects or libraries needs a GPU's own linker; the mock runs PTX, which the client links itself",
        ))
    }

    fn array_destroy(&mut self, array: u64) -> Result<(), CuError> {
        self.healthy()?;
        let a = self
            .arrays
            .remove(&array)
            .ok_or_else(|| invalid_handle("array", array))?;
        self.memory.free(a.address)
    }

    fn memcpy_to_array(
        &mut self,
        array: u64,
        region: ArrayBox,
        data: ByteBuf,
        stream: u64,
    ) -> Result<(), CuError> {
        self.stream(stream)?;
        let a = self.array(array)?;
        if !a.desc.holds(&region) || region.bytes() != Some(data.len() as u64) {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("{} bytes for {region:?} of the array", data.len()),
            ));
        }
        let [width, rows, _] = region.extent;
        for (k, row) in data.chunks(width as usize).enumerate() {
            let (y, z) = (k as u64 % rows, k as u64 / rows);
            let cell = a.at([region.at[0], region.at[1] + y, region.at[2] + z]);
            self.memory.write(cell, row)?;
        }
        Ok(())
    }

    fn memcpy_from_array(
        &mut self,
        array: u64,
        region: ArrayBox,
        stream: u64,
    ) -> Result<ByteBuf, CuError> {
        self.stream(stream)?;
        let a = self.array(array)?;
        let bytes = region.bytes().unwrap_or(u64::MAX);
        if !a.desc.holds(&region) || bytes > xpupool_protocol::MAX_COPY_CHUNK as u64 {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("{region:?} of the array, or over the protocol's copy limit"),
            ));
        }
        let [width, rows, slices] = region.extent;
        let mut out = Vec::with_capacity(bytes as usize);
        for z in 0..slices {
            for y in 0..rows {
                let cell = a.at([region.at[0], region.at[1] + y, region.at[2] + z]);
                out.extend_from_slice(&self.memory.read(cell, width)?);
            }
        }
        Ok(ByteBuf::from(out))
    }

    fn memcpy_array_device(
        &mut self,
        array: u64,
        region: ArrayBox,
        ptr: u64,
        pitch: u64,
        slice_pitch: u64,
        to_array: bool,
        stream: u64,
    ) -> Result<(), CuError> {
        self.stream(stream)?;
        let a = *self.array(array)?;
        self.copy_rows(&a, &region, ptr, pitch, slice_pitch, to_array)
    }

    fn memcpy_array_array(
        &mut self,
        dst: u64,
        dst_at: [u64; 3],
        src: u64,
        region: ArrayBox,
        stream: u64,
    ) -> Result<(), CuError> {
        self.stream(stream)?;
        let (d, s) = (*self.array(dst)?, *self.array(src)?);
        let target = ArrayBox {
            at: dst_at,
            extent: region.extent,
        };
        if !d.desc.holds(&target) {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("{target:?} is not inside the array copied into"),
            ));
        }
        // Row by row from the source box into the destination's rows.
        let base = d.at(dst_at);
        self.copy_rows(&s, &region, base, d.pitch, d.slice_pitch(), false)
    }

    xpupool_protocol::server_only_operations!();
}
