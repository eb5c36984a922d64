//! One client's session on the real driver: its own tables, checked before every call.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CString};
use std::sync::Arc;

use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use xpupool_cuda_types::{
    CUcontext, CUevent, CUfunction, CUmodule, CUstream, CUDA_ERROR_NO_BINARY_FOR_GPU, CUDA_SUCCESS,
    CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT, CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT,
    CU_LAUNCH_PARAM_END_AS_INT,
};
use xpupool_fatbin::Image;
use xpupool_protocol::api::{
    ArrayBox, ArrayDesc, FunctionInfo, GlobalInfo, LaunchDims, ModuleInfo,
};
use xpupool_protocol::{code, Api, CuError};

use super::green::Green;
use super::module::{self, Kernel};
use super::timing::KernelTimes;
use super::Shared;
use crate::checks::{end_of, invalid_handle, invalid_value, memset_element};

/// `CU_STREAM_LEGACY`.
const STREAM_LEGACY: u64 = 1;
/// Reservations, physical allocations and mappings one session may hold.
const MAX_VMM_OBJECTS: usize = 65_536;
/// Address space one session may reserve, as a multiple of the device's memory.
/// Reserving addresses costs the driver next to nothing, and PyTorch's expandable
/// segments reserve 1.125 times the device for each segment, two segments for
/// each stream that allocates (4 refused a side stream's first allocation on an
/// H100); each session's worker process has its own 128 TiB of address space.
const RESERVE_PER_CAPACITY: u64 = 64;
/// How a kernel is launched: plainly, cooperatively, or in clusters of blocks.
#[derive(Clone, Copy)]
enum LaunchKind {
    Plain,
    Cooperative,
    Cluster([u32; 3]),
}

/// `CU_STREAM_PER_THREAD`.
const STREAM_PER_THREAD: u64 = 2;

struct Module {
    /// The device it was loaded for.
    device: u32,
    /// The driver's module; `None` when it had no code for the device.
    raw: Option<u64>,
    functions: Vec<u64>,
    /// Module variables looked up so far: address → size (valid copy targets).
    globals: BTreeMap<u64, u64>,
}

struct Function {
    device: u32,
    param_bytes: u32,
    /// Why its parameters are unknown, for a kernel that cannot be launched
    /// (the client is told at load; one that launches it anyway is refused).
    unusable: Option<String>,
}

pub(crate) struct CudaSession {
    shared: Arc<Shared>,
    /// Its green context on each device, under an SM ceiling (else empty: the
    /// primary contexts).
    green: Vec<Green>,
    /// Allocations: base → size.
    allocations: BTreeMap<u64, u64>,
    /// The device of each allocation, opened allocation and mapping, by its base.
    homes: HashMap<u64, u32>,
    /// Devices whose context this session has used (bit per ordinal).
    used: Cell<u128>,
    /// Virtual memory: reservations (start → size), physical allocations
    /// (handle → size) and mappings (start → size).
    reservations: BTreeMap<u64, u64>,
    /// Physical allocations: handle → (size, device).
    physical: HashMap<u64, (u64, u32)>,
    mappings: BTreeMap<u64, u64>,
    /// Other processes' allocations opened by IPC: address → size.
    opened: BTreeMap<u64, u64>,
    /// Texture and surface objects, and the devices they were made on.
    textures: HashMap<u64, u32>,
    surfaces: HashMap<u64, u32>,
    /// CUDA arrays: handle → what they are, and their device.
    arrays: HashMap<u64, (ArrayDesc, u32)>,
    modules: HashMap<u64, Module>,
    next_module: u64,
    functions: HashMap<u64, Function>,
    /// Streams and events, and their devices.
    streams: HashMap<u64, u32>,
    events: HashMap<u64, u32>,
    /// Device time of its kernels ([`Request::SessionBusy`]), by device (a
    /// timing event belongs to one device's context).
    times: HashMap<u32, KernelTimes>,
}

/// A 3-D copy of `region`'s extent, both sides still to be filled in.
fn copy_3d(region: &ArrayBox) -> xpupool_cuda_types::CUDA_MEMCPY3D {
    // SAFETY: a plain C structure for which all zeroes is a valid (empty) value.
    let mut p: xpupool_cuda_types::CUDA_MEMCPY3D = unsafe { std::mem::zeroed() };
    p.WidthInBytes = region.extent[0] as usize;
    p.Height = region.extent[1] as usize;
    p.Depth = region.extent[2] as usize;
    p
}

/// Makes array `array` at `at` (x in bytes, row, slice) the destination of `p`
/// (`dst`) or its source.
fn place_array(p: &mut xpupool_cuda_types::CUDA_MEMCPY3D, array: u64, at: [u64; 3], dst: bool) {
    let handle = array as xpupool_cuda_types::CUarray;
    let [x, y, z] = at.map(|v| v as usize);
    if dst {
        p.dstMemoryType = xpupool_cuda_types::CU_MEMORYTYPE_ARRAY;
        p.dstArray = handle;
        (p.dstXInBytes, p.dstY, p.dstZ) = (x, y, z);
    } else {
        p.srcMemoryType = xpupool_cuda_types::CU_MEMORYTYPE_ARRAY;
        p.srcArray = handle;
        (p.srcXInBytes, p.srcY, p.srcZ) = (x, y, z);
    }
}

impl CudaSession {
    /// Checks that `region` lies inside array `array` of this session.
    fn array_box(&self, array: u64, region: &ArrayBox) -> Result<(), CuError> {
        let (desc, _) = self
            .arrays
            .get(&array)
            .ok_or_else(|| invalid_handle("array", array))?;
        if desc.holds(region) {
            Ok(())
        } else {
            Err(invalid_value(format!("{region:?} is not inside the array")))
        }
    }

    /// The device a copy to or from `array` on `stream` goes to: the stream's,
    /// or for a default stream, the array's.
    fn array_device(&self, array: u64, stream: u64) -> u32 {
        self.streams
            .get(&stream)
            .or_else(|| self.arrays.get(&array).map(|(_, device)| device))
            .copied()
            .unwrap_or(0)
    }

    /// The devices whose stream `stream` names: a stream's own, or for a
    /// default stream, each device the session has used (the client's default
    /// stream is one per device there).
    fn stream_devices(&self, stream: u64) -> Vec<u32> {
        match self.streams.get(&stream) {
            Some(&device) => vec![device],
            None => self.used_devices(),
        }
    }

    fn copy_3d(
        &self,
        p: &xpupool_cuda_types::CUDA_MEMCPY3D,
        stream: CUstream,
        device: u32,
    ) -> Result<(), CuError> {
        let copy = self.vmm(self.shared.driver.cuMemcpy3DAsync_v2, "cuMemcpy3DAsync_v2")?;
        self.enter(device)?;
        // SAFETY: a description whose arrays, device ranges and host buffers the
        // caller checked (host buffers outlive the copy).
        let r = unsafe { copy(p, stream) };
        self.check(r, "cuMemcpy3DAsync_v2")
    }

    /// What a texture or surface object is made over: an array of this session,
    /// or linear or pitched memory of it.
    fn resource(
        &self,
        desc: &xpupool_protocol::api::TextureDesc,
    ) -> Result<xpupool_cuda_types::CUDA_RESOURCE_DESC, CuError> {
        use xpupool_cuda_types as cu;
        let mut resource = cu::CUDA_RESOURCE_DESC {
            resType: 0,
            // SAFETY: all zeroes is a valid value of the union.
            res: unsafe { std::mem::zeroed() },
            flags: 0,
        };
        if desc.array != 0 {
            if !self.arrays.contains_key(&desc.array) {
                return Err(invalid_handle("array", desc.array));
            }
            resource.resType = cu::CU_RESOURCE_TYPE_ARRAY;
            resource.res.array = cu::CUDA_RESOURCE_DESC_st__bindgen_ty_1__bindgen_ty_1 {
                hArray: desc.array as cu::CUarray,
            };
            return Ok(resource);
        }
        let span = desc.span().map_err(invalid_value)?;
        self.range(desc.address, span)?;
        let format = cu::array_format_of(desc.channel, desc.bits)
            .ok_or_else(|| invalid_value("texture format"))?;
        match desc.dims {
            1 if !desc.layered => {
                resource.resType = cu::CU_RESOURCE_TYPE_LINEAR;
                resource.res.linear = cu::CUDA_RESOURCE_DESC_st__bindgen_ty_1__bindgen_ty_3 {
                    devPtr: desc.address,
                    format,
                    numChannels: u32::from(desc.channels),
                    sizeInBytes: (desc.size[0] * desc.texel_bytes()) as usize,
                };
            }
            2 if !desc.layered && !desc.cubemap => {
                resource.resType = cu::CU_RESOURCE_TYPE_PITCH2D;
                resource.res.pitch2D = cu::CUDA_RESOURCE_DESC_st__bindgen_ty_1__bindgen_ty_4 {
                    devPtr: desc.address,
                    format,
                    numChannels: u32::from(desc.channels),
                    width: desc.size[0] as usize,
                    height: desc.size[1] as usize,
                    pitchInBytes: desc.pitch as usize,
                };
            }
            _ => {
                return Err(invalid_value(
                    "3-D, layered and cubemap textures are made over arrays",
                ))
            }
        }
        Ok(resource)
    }

    pub(crate) fn new(shared: Arc<Shared>, green: Vec<Green>) -> Self {
        Self {
            shared,
            green,
            allocations: BTreeMap::new(),
            homes: HashMap::new(),
            used: Cell::new(0),
            reservations: BTreeMap::new(),
            physical: HashMap::new(),
            mappings: BTreeMap::new(),
            opened: BTreeMap::new(),
            textures: HashMap::new(),
            surfaces: HashMap::new(),
            arrays: HashMap::new(),
            modules: HashMap::new(),
            next_module: 0,
            functions: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            times: HashMap::new(),
        }
    }

    fn check(&self, r: u32, what: &str) -> Result<(), CuError> {
        self.shared.driver.check(r, what)
    }

    /// Makes device `device`'s context current for the calls that follow.
    fn enter(&self, device: u32) -> Result<(), CuError> {
        make_current(&self.shared, &self.green, device)?;
        self.used
            .set(self.used.get() | 1u128.checked_shl(device).unwrap_or(0));
        Ok(())
    }

    /// The devices whose context this session has used (device 0 if none).
    fn used_devices(&self) -> Vec<u32> {
        let used: Vec<u32> = (0..128).filter(|d| self.used.get() >> d & 1 == 1).collect();
        if used.is_empty() {
            vec![0]
        } else {
            used
        }
    }

    /// The device that memory at `address` is on: that of the allocation,
    /// opened allocation, mapping or module variable of this session holding
    /// it, else device 0 (the caller checked the range already).
    fn home(&self, address: u64) -> u32 {
        let base = |ranges: &BTreeMap<u64, u64>| {
            ranges
                .range(..=address)
                .next_back()
                .filter(|(&base, &size)| address < base.saturating_add(size))
                .map(|(&base, _)| base)
        };
        if let Some(device) = base(&self.allocations)
            .or_else(|| base(&self.opened))
            .or_else(|| base(&self.mappings))
            .and_then(|b| self.homes.get(&b))
        {
            return *device;
        }
        self.modules
            .values()
            .find(|m| base(&m.globals).is_some())
            .map_or(0, |m| m.device)
    }

    /// The device work on `stream` goes to: the stream's, or for a default
    /// stream, the device of the memory at `address`.
    fn device_for(&self, stream: u64, address: u64) -> u32 {
        self.streams
            .get(&stream)
            .copied()
            .unwrap_or_else(|| self.home(address))
    }

    /// The device of one of this session's functions.
    fn function_device(&self, function: u64) -> Result<u32, CuError> {
        self.functions
            .get(&function)
            .map(|f| f.device)
            .ok_or_else(|| invalid_handle("function", function))
    }

    /// The driver's stream for a client stream handle: one of the session's, or a
    /// default stream. The per-thread default stream maps to the legacy one: server
    /// threads are not the client's threads, so "this thread's stream" would name a
    /// different stream on each request (FACTS §7.2); a per-client-thread stream is
    /// the follow-up.
    fn stream(&self, stream: u64) -> Result<CUstream, CuError> {
        match stream {
            0 | STREAM_LEGACY => Ok(stream as CUstream),
            STREAM_PER_THREAD => Ok(STREAM_LEGACY as CUstream),
            s if self.streams.contains_key(&s) => Ok(s as CUstream),
            s => Err(invalid_handle("stream", s)),
        }
    }

    fn event(&self, event: u64) -> Result<CUevent, CuError> {
        if self.events.contains_key(&event) {
            Ok(event as CUevent)
        } else {
            Err(invalid_handle("event", event))
        }
    }

    /// Checks that `[address, address+len)` lies inside one allocation (or module
    /// variable) of this session.
    fn range(&self, address: u64, len: u64) -> Result<(), CuError> {
        let end = end_of(address, len)?;
        let inside = |ranges: &BTreeMap<u64, u64>| {
            ranges
                .range(..=address)
                .next_back()
                .is_some_and(|(&base, &size)| end <= base.saturating_add(size))
        };
        if inside(&self.allocations)
            || inside(&self.opened)
            || self.mapped_run(address, end)
            || self.modules.values().any(|m| inside(&m.globals))
        {
            Ok(())
        } else {
            Err(invalid_value(format!(
                "[{address:#x}, +{len}) is not inside an allocation of this session"
            )))
        }
    }

    /// Whether `[address, end)` is covered by mappings of this session without
    /// a gap (a copy may span the mappings of one reservation).
    fn mapped_run(&self, address: u64, end: u64) -> bool {
        let Some((&first, _)) = self.mappings.range(..=address).next_back() else {
            return false;
        };
        let mut at = address;
        for (&base, &size) in self.mappings.range(first..) {
            if at >= end || base > at {
                break;
            }
            at = at.max(base.saturating_add(size));
        }
        at >= end
    }

    /// A virtual memory entry point of the driver, or why there is none.
    fn vmm<F>(&self, f: Option<F>, name: &str) -> Result<F, CuError> {
        f.ok_or_else(|| {
            CuError::new(
                code::NOT_SUPPORTED,
                format!("the host's driver has no {name}"),
            )
        })
    }

    fn vmm_count(&self) -> Result<(), CuError> {
        if self.reservations.len() + self.physical.len() + self.mappings.len() >= MAX_VMM_OBJECTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("this session holds {MAX_VMM_OBJECTS} reservations, physical allocations and mappings, its most"),
            ));
        }
        Ok(())
    }

    /// A launch with its packed parameters; a cooperative or clustered one through
    /// `cuLaunchKernelEx` (which takes a parameter buffer, as
    /// `cuLaunchCooperativeKernel` does not), with that one attribute.
    fn launch(
        &mut self,
        function: u64,
        dims: LaunchDims,
        stream: u64,
        params: ByteBuf,
        kind: LaunchKind,
    ) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        let f = self
            .functions
            .get(&function)
            .ok_or_else(|| invalid_handle("function", function))?;
        if let Some(why) = &f.unusable {
            return Err(CuError::new(
                code::NO_BINARY_FOR_GPU,
                format!("the kernel cannot be launched: {why}"),
            ));
        }
        if params.len() < f.param_bytes as usize {
            return Err(invalid_value(format!(
                "{} parameter bytes for a kernel that takes {}",
                params.len(),
                f.param_bytes
            )));
        }
        let device = f.device;
        let launch_ex = match kind {
            LaunchKind::Plain => None,
            _ => Some(self.vmm(self.shared.driver.cuLaunchKernelEx, "cuLaunchKernelEx")?),
        };
        self.enter(device)?;
        let mut buffer = params.into_vec();
        let mut size = buffer.len();
        let mut extra = [
            CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT as usize as *mut c_void,
            buffer.as_mut_ptr().cast(),
            CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT as usize as *mut c_void,
            (&mut size as *mut usize).cast(),
            CU_LAUNCH_PARAM_END_AS_INT as usize as *mut c_void,
        ];
        let extra = if buffer.is_empty() {
            std::ptr::null_mut()
        } else {
            extra.as_mut_ptr()
        };
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        let times = self.times.entry(device).or_default();
        let timed = times.before(&self.shared.driver, s);
        let r = if let Some(launch_ex) = launch_ex {
            let mut attribute = xpupool_cuda_types::CUlaunchAttribute::default();
            match kind {
                LaunchKind::Cluster([x, y, z]) => {
                    attribute.id = xpupool_cuda_types::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
                    attribute.value.clusterDim.x = x;
                    attribute.value.clusterDim.y = y;
                    attribute.value.clusterDim.z = z;
                }
                _ => {
                    attribute.id = xpupool_cuda_types::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                    attribute.value.cooperative = 1;
                }
            }
            let config = xpupool_cuda_types::CUlaunchConfig {
                gridDimX: gx,
                gridDimY: gy,
                gridDimZ: gz,
                blockDimX: bx,
                blockDimY: by,
                blockDimZ: bz,
                sharedMemBytes: dims.shared_bytes,
                hStream: s,
                attrs: &mut attribute,
                numAttrs: 1,
            };
            // SAFETY: as for cuLaunchKernel below, with one attribute.
            unsafe { launch_ex(&config, function as CUfunction, std::ptr::null_mut(), extra) }
        } else {
            // SAFETY: a function of this session and a packed parameter buffer at
            // least as long as its parameters; the driver copies the parameters at
            // launch. What the kernel does with pointer arguments cannot be checked
            // (see mod.rs).
            unsafe {
                (self.shared.driver.cuLaunchKernel)(
                    function as CUfunction,
                    gx,
                    gy,
                    gz,
                    bx,
                    by,
                    bz,
                    dims.shared_bytes,
                    s,
                    std::ptr::null_mut(),
                    extra,
                )
            }
        };
        if let Some(pair) = timed {
            if let Some(times) = self.times.get_mut(&device) {
                times.after(&self.shared.driver, s, pair, r == CUDA_SUCCESS);
            }
        }
        match launch_ex {
            Some(_) => self.check(r, "cuLaunchKernelEx"),
            None => self.check(r, "cuLaunchKernel"),
        }
    }

    fn synchronize_stream(&self, stream: CUstream) -> Result<(), CuError> {
        // SAFETY: a stream checked against this session's table.
        let r = unsafe { (self.shared.driver.cuStreamSynchronize)(stream) };
        self.check(r, "cuStreamSynchronize")
    }

    fn unload(&mut self, module: Module) -> Result<(), CuError> {
        for f in &module.functions {
            self.functions.remove(f);
        }
        self.enter(module.device)?;
        match module.raw {
            // SAFETY: a module this session loaded; its functions are gone from the table.
            Some(raw) => {
                let r = unsafe { (self.shared.driver.cuModuleUnload)(raw as CUmodule) };
                self.check(r, "cuModuleUnload")
            }
            None => Ok(()),
        }
    }

    /// Records a module the driver has no code for: it can be unloaded, and the
    /// client answers every function look-up with `NO_BINARY_FOR_GPU` and the reason.
    fn no_code_module(&mut self, device: u32, handle: u64, image: &Image) -> ModuleInfo {
        let sm = self.shared.device(device).map_or(0, |d| d.sm);
        let reason = module::no_code_reason(image, sm);
        tracing::info!(%reason, "module has no code for this device");
        self.modules.insert(
            handle,
            Module {
                device,
                raw: None,
                functions: Vec::new(),
                globals: BTreeMap::new(),
            },
        );
        ModuleInfo {
            handle,
            functions: Vec::new(),
            no_code: Some(reason),
            device_bytes: 0,
        }
    }

    /// The kernels of a freshly loaded module: from the cache if this image was seen
    /// before, else asked of the driver (and the image) and remembered.
    fn kernels(
        &self,
        raw: CUmodule,
        image: &Image,
        key: [u8; 32],
    ) -> Result<Vec<(CUfunction, Kernel)>, CuError> {
        let driver = &self.shared.driver;
        if let Some(kernels) = self.shared.cached(&key) {
            let mut found = Vec::with_capacity(kernels.len());
            for kernel in kernels.iter() {
                let f = module::get_function(driver, raw, &kernel.name)?.ok_or_else(|| {
                    CuError::new(
                        code::NOT_FOUND,
                        format!("kernel {} vanished from its image", kernel.name),
                    )
                })?;
                found.push((f, kernel.clone()));
            }
            return Ok(found);
        }
        let found = module::introspect(driver, raw, image)?;
        self.shared.remember(
            key,
            Arc::new(found.iter().map(|(_, k)| k.clone()).collect()),
        );
        Ok(found)
    }
}

/// Copies from the transport's memory go through the ordinary copy operations.
impl crate::backend::DirectCopy for CudaSession {}

impl Api for CudaSession {
    fn mem_alloc(&mut self, device: u32, bytes: u64) -> Result<u64, CuError> {
        self.shared.device(device)?;
        if bytes == 0 {
            return Err(invalid_value("zero-byte allocation"));
        }
        let len = usize::try_from(bytes)
            .map_err(|_| CuError::new(code::OUT_OF_MEMORY, "allocation too large"))?;
        self.enter(device)?;
        let mut address = 0;
        // SAFETY: an out-pointer; the device's primary context is current.
        let r = unsafe { (self.shared.driver.cuMemAlloc_v2)(&mut address, len) };
        self.check(r, "cuMemAlloc_v2")?;
        self.allocations.insert(address, bytes);
        self.homes.insert(address, device);
        Ok(address)
    }

    fn mem_free(&mut self, ptr: u64) -> Result<(), CuError> {
        self.allocations.get(&ptr).ok_or_else(|| {
            invalid_value(format!("{ptr:#x} is not an allocation of this session"))
        })?;
        self.enter(self.home(ptr))?;
        // SAFETY: an allocation of this session, freed once (removed below).
        let r = unsafe { (self.shared.driver.cuMemFree_v2)(ptr) };
        self.check(r, "cuMemFree_v2")?;
        self.allocations.remove(&ptr);
        self.homes.remove(&ptr);
        Ok(())
    }

    fn mem_address_reserve(
        &mut self,
        device: u32,
        size: u64,
        alignment: u64,
    ) -> Result<u64, CuError> {
        let capacity = self.shared.device(device)?.info.total_memory;
        self.vmm_count()?;
        let reserved: u64 = self.reservations.values().sum();
        let most = capacity.saturating_mul(RESERVE_PER_CAPACITY);
        if reserved.saturating_add(size) > most {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("reserving {size} bytes: this session holds {reserved} of the {most} bytes of addresses it may reserve"),
            ));
        }
        let (len, align) = match (usize::try_from(size), usize::try_from(alignment)) {
            (Ok(l), Ok(a)) => (l, a),
            _ => return Err(invalid_value("reservation too large")),
        };
        let reserve = self.vmm(
            self.shared.driver.cuMemAddressReserve,
            "cuMemAddressReserve",
        )?;
        self.enter(device)?;
        let mut start = 0;
        // SAFETY: an out-pointer; sizes checked by the driver.
        let r = unsafe { reserve(&mut start, len, align, 0, 0) };
        self.check(r, "cuMemAddressReserve")?;
        self.reservations.insert(start, size);
        Ok(start)
    }

    fn mem_address_free(&mut self, ptr: u64, size: u64) -> Result<(), CuError> {
        if self.reservations.get(&ptr) != Some(&size) {
            return Err(invalid_value(format!(
                "[{ptr:#x}, +{size}) is not a reservation of this session"
            )));
        }
        if self
            .mappings
            .range(ptr..ptr.saturating_add(size))
            .next()
            .is_some()
        {
            return Err(invalid_value(format!(
                "the reservation at {ptr:#x} still has mappings"
            )));
        }
        let free = self.vmm(self.shared.driver.cuMemAddressFree, "cuMemAddressFree")?;
        self.enter(self.used_devices()[0])?;
        // SAFETY: a reservation of this session with nothing mapped, freed once.
        let r = unsafe { free(ptr, size as usize) };
        self.check(r, "cuMemAddressFree")?;
        self.reservations.remove(&ptr);
        Ok(())
    }

    fn mem_create(&mut self, device: u32, size: u64) -> Result<u64, CuError> {
        let ordinal = self.shared.device(device)?.device;
        self.vmm_count()?;
        let len = usize::try_from(size)
            .map_err(|_| CuError::new(code::OUT_OF_MEMORY, "allocation too large"))?;
        let create = self.vmm(self.shared.driver.cuMemCreate, "cuMemCreate")?;
        let mut prop = xpupool_cuda_types::CUmemAllocationProp {
            type_: xpupool_cuda_types::CU_MEM_ALLOCATION_TYPE_PINNED,
            ..Default::default()
        };
        prop.location.type_ = xpupool_cuda_types::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.__bindgen_anon_1.id = ordinal;
        self.enter(device)?;
        let mut handle = 0;
        // SAFETY: an out-pointer and a filled property block.
        let r = unsafe { create(&mut handle, len, &prop, 0) };
        self.check(r, "cuMemCreate")?;
        self.physical.insert(handle, (size, device));
        Ok(handle)
    }

    fn mem_release(&mut self, handle: u64) -> Result<(), CuError> {
        if !self.physical.contains_key(&handle) {
            return Err(invalid_handle("physical allocation", handle));
        }
        let release = self.vmm(self.shared.driver.cuMemRelease, "cuMemRelease")?;
        self.enter(self.physical[&handle].1)?;
        // SAFETY: a handle of this session, released once (its mappings keep the memory).
        let r = unsafe { release(handle) };
        self.check(r, "cuMemRelease")?;
        self.physical.remove(&handle);
        Ok(())
    }

    fn mem_map(&mut self, ptr: u64, size: u64, offset: u64, handle: u64) -> Result<(), CuError> {
        let Some(&(_, device)) = self.physical.get(&handle) else {
            return Err(invalid_handle("physical allocation", handle));
        };
        self.vmm_count()?;
        let end = end_of(ptr, size)?;
        let reserved = self
            .reservations
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&start, &len)| end <= start.saturating_add(len));
        if !reserved {
            return Err(invalid_value(format!(
                "[{ptr:#x}, +{size}) is not inside a reservation of this session"
            )));
        }
        let map = self.vmm(self.shared.driver.cuMemMap, "cuMemMap")?;
        self.enter(device)?;
        // SAFETY: inside a reservation of this session; the driver checks the rest.
        let r = unsafe { map(ptr, size as usize, offset as usize, handle, 0) };
        self.check(r, "cuMemMap")?;
        self.mappings.insert(ptr, size);
        self.homes.insert(ptr, device);
        Ok(())
    }

    fn mem_unmap(&mut self, ptr: u64, size: u64) -> Result<(), CuError> {
        let end = end_of(ptr, size)?;
        let inside: Vec<u64> = self.mappings.range(ptr..end).map(|(&b, _)| b).collect();
        let covered: u64 = inside.iter().map(|b| self.mappings[b]).sum();
        if inside.first() != Some(&ptr) || covered != size {
            return Err(invalid_value(format!(
                "[{ptr:#x}, +{size}) is not a run of whole mappings of this session"
            )));
        }
        let unmap = self.vmm(self.shared.driver.cuMemUnmap, "cuMemUnmap")?;
        self.enter(self.home(ptr))?;
        // SAFETY: whole mappings of this session.
        let r = unsafe { unmap(ptr, size as usize) };
        self.check(r, "cuMemUnmap")?;
        for b in inside {
            self.mappings.remove(&b);
            self.homes.remove(&b);
        }
        Ok(())
    }

    fn mem_set_access(
        &mut self,
        ptr: u64,
        size: u64,
        device: u32,
        flags: u32,
    ) -> Result<(), CuError> {
        let ordinal = self.shared.device(device)?.device;
        if !self.mapped_run(ptr, end_of(ptr, size)?) {
            return Err(invalid_value(format!(
                "[{ptr:#x}, +{size}) is not mapped by this session"
            )));
        }
        let set = self.vmm(self.shared.driver.cuMemSetAccess, "cuMemSetAccess")?;
        let mut desc = xpupool_cuda_types::CUmemAccessDesc {
            flags,
            ..Default::default()
        };
        desc.location.type_ = xpupool_cuda_types::CU_MEM_LOCATION_TYPE_DEVICE;
        desc.location.__bindgen_anon_1.id = ordinal;
        self.enter(self.home(ptr))?;
        // SAFETY: mappings of this session and one filled descriptor.
        let r = unsafe { set(ptr, size as usize, &desc, 1) };
        self.check(r, "cuMemSetAccess")
    }

    fn ipc_get_mem_handle(&mut self, ptr: u64) -> Result<ByteBuf, CuError> {
        if !self.allocations.contains_key(&ptr) {
            return Err(invalid_value(format!(
                "{ptr:#x} is not the start of an allocation of this session"
            )));
        }
        let get = self.vmm(self.shared.driver.cuIpcGetMemHandle, "cuIpcGetMemHandle")?;
        self.enter(self.home(ptr))?;
        let mut handle = xpupool_cuda_types::CUipcMemHandle { reserved: [0; 64] };
        // SAFETY: an out-pointer; an allocation of this session.
        let r = unsafe { get(&mut handle, ptr) };
        self.check(r, "cuIpcGetMemHandle")?;
        Ok(ByteBuf::from(
            handle
                .reserved
                .iter()
                .map(|&b| b as u8)
                .collect::<Vec<u8>>(),
        ))
    }

    fn ipc_open_mem_handle(&mut self, device: u32, handle: ByteBuf) -> Result<(u64, u64), CuError> {
        self.shared.device(device)?;
        self.vmm_count()?;
        let handle = ipc_bytes(&handle)?;
        let open = self.vmm(
            self.shared.driver.cuIpcOpenMemHandle_v2,
            "cuIpcOpenMemHandle_v2",
        )?;
        let range = self.vmm(
            self.shared.driver.cuMemGetAddressRange_v2,
            "cuMemGetAddressRange_v2",
        )?;
        self.enter(device)?;
        let mut ptr = 0;
        // SAFETY: an out-pointer and a handle of the right size.
        let r = unsafe {
            open(
                &mut ptr,
                xpupool_cuda_types::CUipcMemHandle { reserved: handle },
                xpupool_cuda_types::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS,
            )
        };
        self.check(r, "cuIpcOpenMemHandle_v2")?;
        let (mut base, mut size) = (0, 0);
        // SAFETY: out-pointers; an address the driver just gave.
        let r = unsafe { range(&mut base, &mut size, ptr) };
        self.check(r, "cuMemGetAddressRange_v2")?;
        self.opened.insert(ptr, size as u64);
        self.homes.insert(ptr, device);
        Ok((ptr, size as u64))
    }

    fn ipc_close_mem_handle(&mut self, ptr: u64) -> Result<(), CuError> {
        if !self.opened.contains_key(&ptr) {
            return Err(invalid_value(format!(
                "{ptr:#x} is not an allocation this session opened"
            )));
        }
        let close = self.vmm(
            self.shared.driver.cuIpcCloseMemHandle,
            "cuIpcCloseMemHandle",
        )?;
        self.enter(self.home(ptr))?;
        // SAFETY: an address this session opened, closed once.
        let r = unsafe { close(ptr) };
        self.check(r, "cuIpcCloseMemHandle")?;
        self.opened.remove(&ptr);
        self.homes.remove(&ptr);
        Ok(())
    }

    fn ipc_get_event_handle(&mut self, event: u64) -> Result<ByteBuf, CuError> {
        let device = self.events.get(&event).copied().unwrap_or(0);
        let event = self.event(event)?;
        let get = self.vmm(
            self.shared.driver.cuIpcGetEventHandle,
            "cuIpcGetEventHandle",
        )?;
        self.enter(device)?;
        let mut handle = xpupool_cuda_types::CUipcEventHandle { reserved: [0; 64] };
        // SAFETY: an out-pointer; an event of this session.
        let r = unsafe { get(&mut handle, event) };
        self.check(r, "cuIpcGetEventHandle")?;
        Ok(ByteBuf::from(
            handle
                .reserved
                .iter()
                .map(|&b| b as u8)
                .collect::<Vec<u8>>(),
        ))
    }

    fn ipc_open_event_handle(&mut self, device: u32, handle: ByteBuf) -> Result<u64, CuError> {
        self.shared.device(device)?;
        let handle = ipc_bytes(&handle)?;
        let open = self.vmm(
            self.shared.driver.cuIpcOpenEventHandle,
            "cuIpcOpenEventHandle",
        )?;
        self.enter(device)?;
        let mut event: CUevent = std::ptr::null_mut();
        // SAFETY: an out-pointer and a handle of the right size.
        let r = unsafe {
            open(
                &mut event,
                xpupool_cuda_types::CUipcEventHandle { reserved: handle },
            )
        };
        self.check(r, "cuIpcOpenEventHandle")?;
        self.events.insert(event as u64, device);
        Ok(event as u64)
    }

    fn tex_object_create(
        &mut self,
        device: u32,
        desc: xpupool_protocol::api::TextureDesc,
    ) -> Result<u64, CuError> {
        use xpupool_cuda_types as cu;
        self.shared.device(device)?;
        if self.textures.len() + self.surfaces.len() >= MAX_VMM_OBJECTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                "too many texture objects",
            ));
        }
        let resource = self.resource(&desc)?;
        let mut sampling: cu::CUDA_TEXTURE_DESC = unsafe { std::mem::zeroed() };
        sampling.addressMode = desc.address_mode.map(u32::from);
        sampling.filterMode = u32::from(desc.linear);
        sampling.flags = if desc.read_normalized {
            0
        } else {
            cu::CU_TRSF_READ_AS_INTEGER
        } | if desc.normalized_coords {
            cu::CU_TRSF_NORMALIZED_COORDINATES
        } else {
            0
        };
        sampling.borderColor = desc.border;
        let create = self.vmm(self.shared.driver.cuTexObjectCreate, "cuTexObjectCreate")?;
        self.enter(device)?;
        let mut handle = 0u64;
        // SAFETY: an out-pointer and two filled descriptors over memory of this
        // session (checked above).
        let r = unsafe { create(&mut handle, &resource, &sampling, std::ptr::null()) };
        self.check(r, "cuTexObjectCreate")?;
        self.textures.insert(handle, device);
        Ok(handle)
    }

    fn tex_object_destroy(&mut self, handle: u64) -> Result<(), CuError> {
        let Some(&device) = self.textures.get(&handle) else {
            return Err(invalid_handle("texture object", handle));
        };
        let destroy = self.vmm(self.shared.driver.cuTexObjectDestroy, "cuTexObjectDestroy")?;
        self.enter(device)?;
        // SAFETY: a texture object of this session, destroyed once.
        let r = unsafe { destroy(handle) };
        self.check(r, "cuTexObjectDestroy")?;
        self.textures.remove(&handle);
        Ok(())
    }

    fn surf_object_create(
        &mut self,
        device: u32,
        desc: xpupool_protocol::api::TextureDesc,
    ) -> Result<u64, CuError> {
        self.shared.device(device)?;
        if desc.array == 0 {
            return Err(invalid_value("a surface over memory that is not an array"));
        }
        if self.textures.len() + self.surfaces.len() >= MAX_VMM_OBJECTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                "too many surface objects",
            ));
        }
        let resource = self.resource(&desc)?;
        let create = self.vmm(self.shared.driver.cuSurfObjectCreate, "cuSurfObjectCreate")?;
        self.enter(device)?;
        let mut handle = 0u64;
        // SAFETY: an out-pointer and a description of an array of this session.
        let r = unsafe { create(&mut handle, &resource) };
        self.check(r, "cuSurfObjectCreate")?;
        self.surfaces.insert(handle, device);
        Ok(handle)
    }

    fn surf_object_destroy(&mut self, handle: u64) -> Result<(), CuError> {
        let Some(&device) = self.surfaces.get(&handle) else {
            return Err(invalid_handle("surface object", handle));
        };
        let destroy = self.vmm(
            self.shared.driver.cuSurfObjectDestroy,
            "cuSurfObjectDestroy",
        )?;
        self.enter(device)?;
        // SAFETY: a surface object of this session, destroyed once.
        let r = unsafe { destroy(handle) };
        self.check(r, "cuSurfObjectDestroy")?;
        self.surfaces.remove(&handle);
        Ok(())
    }

    fn array_create(&mut self, device: u32, desc: ArrayDesc) -> Result<u64, CuError> {
        use xpupool_cuda_types as cu;
        self.shared.device(device)?;
        desc.check().map_err(invalid_value)?;
        if self.arrays.len() >= MAX_VMM_OBJECTS {
            return Err(CuError::new(code::OUT_OF_MEMORY, "too many arrays"));
        }
        let create = self.vmm(self.shared.driver.cuArray3DCreate_v2, "cuArray3DCreate_v2")?;
        let descriptor = cu::CUDA_ARRAY3D_DESCRIPTOR {
            Width: desc.width as usize,
            Height: desc.height as usize,
            Depth: desc.depth as usize,
            Format: cu::array_format_of(desc.channel, desc.bits)
                .ok_or_else(|| invalid_value("array format"))?,
            NumChannels: u32::from(desc.channels),
            Flags: desc.flags,
        };
        self.enter(device)?;
        let mut array: cu::CUarray = std::ptr::null_mut();
        // SAFETY: an out-pointer and a checked description.
        let r = unsafe { create(&mut array, &descriptor) };
        self.check(r, "cuArray3DCreate_v2")?;
        self.arrays.insert(array as u64, (desc, device));
        Ok(array as u64)
    }

    fn link(
        &mut self,
        device: u32,
        inputs: Vec<xpupool_protocol::api::LinkInput>,
    ) -> Result<ByteBuf, CuError> {
        use xpupool_cuda_types as cu;
        self.shared.device(device)?;
        if inputs.is_empty()
            || inputs.len() > xpupool_protocol::api::MAX_LINK_INPUTS
            || inputs
                .iter()
                .any(|i| i.kind > cu::CU_JIT_INPUT_LIBRARY || i.data.is_empty())
        {
            return Err(invalid_value("link inputs"));
        }
        let d = &self.shared.driver;
        let create = self.vmm(d.cuLinkCreate_v2, "cuLinkCreate_v2")?;
        let add = self.vmm(d.cuLinkAddData_v2, "cuLinkAddData_v2")?;
        let complete = self.vmm(d.cuLinkComplete, "cuLinkComplete")?;
        let destroy = self.vmm(d.cuLinkDestroy, "cuLinkDestroy")?;
        self.enter(device)?;
        let mut state: cu::CUlinkState = std::ptr::null_mut();
        // SAFETY: an out-pointer; no options.
        let r = unsafe { create(0, std::ptr::null_mut(), std::ptr::null_mut(), &mut state) };
        self.check(r, "cuLinkCreate_v2")?;
        let linked = (|| {
            for input in &inputs {
                // PTX is text the driver reads up to its NUL.
                let mut data = input.data.to_vec();
                if input.kind == cu::CU_JIT_INPUT_PTX {
                    data.push(0);
                }
                // SAFETY: `data` lives across the call, which copies it.
                let r = unsafe {
                    add(
                        state,
                        input.kind,
                        data.as_mut_ptr().cast(),
                        data.len(),
                        c"input".as_ptr(),
                        0,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
                self.check(r, "cuLinkAddData_v2")?;
            }
            let (mut image, mut size): (*mut c_void, usize) = (std::ptr::null_mut(), 0);
            // SAFETY: out-pointers; the image stays valid until cuLinkDestroy below.
            let r = unsafe { complete(state, &mut image, &mut size) };
            self.check(r, "cuLinkComplete")?;
            if image.is_null() {
                return Err(invalid_value("the linker gave no image"));
            }
            // SAFETY: `size` bytes at `image`, the linker's output.
            Ok(unsafe { std::slice::from_raw_parts(image as *const u8, size) }.to_vec())
        })();
        // SAFETY: the link state made above, destroyed once.
        unsafe { destroy(state) };
        linked.map(ByteBuf::from)
    }

    fn array_destroy(&mut self, array: u64) -> Result<(), CuError> {
        let Some(&(_, device)) = self.arrays.get(&array) else {
            return Err(invalid_handle("array", array));
        };
        let destroy = self.vmm(self.shared.driver.cuArrayDestroy, "cuArrayDestroy")?;
        // After the work already sent, which may still use it.
        self.synchronize()?;
        self.enter(device)?;
        // SAFETY: an array of this session, destroyed once.
        let r = unsafe { destroy(array as xpupool_cuda_types::CUarray) };
        self.check(r, "cuArrayDestroy")?;
        self.arrays.remove(&array);
        Ok(())
    }

    fn memcpy_to_array(
        &mut self,
        array: u64,
        region: ArrayBox,
        data: ByteBuf,
        stream: u64,
    ) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        self.array_box(array, &region)?;
        if region.bytes() != Some(data.len() as u64) {
            return Err(invalid_value(format!(
                "{} bytes for {region:?}",
                data.len()
            )));
        }
        let mut p = copy_3d(&region);
        p.srcMemoryType = xpupool_cuda_types::CU_MEMORYTYPE_HOST;
        p.srcHost = data.as_ptr().cast();
        p.srcPitch = region.extent[0] as usize;
        p.srcHeight = region.extent[1] as usize;
        place_array(&mut p, array, region.at, true);
        // `data` lives until the stream is synchronized.
        self.copy_3d(&p, s, self.array_device(array, stream))?;
        self.synchronize_stream(s)
    }

    fn memcpy_from_array(
        &mut self,
        array: u64,
        region: ArrayBox,
        stream: u64,
    ) -> Result<ByteBuf, CuError> {
        let s = self.stream(stream)?;
        self.array_box(array, &region)?;
        let bytes = region.bytes().unwrap_or(u64::MAX);
        if bytes > xpupool_protocol::MAX_COPY_CHUNK as u64 {
            return Err(invalid_value("copy chunk over the protocol limit"));
        }
        let mut out = vec![0u8; bytes as usize];
        let mut p = copy_3d(&region);
        p.dstMemoryType = xpupool_cuda_types::CU_MEMORYTYPE_HOST;
        p.dstHost = out.as_mut_ptr().cast();
        p.dstPitch = region.extent[0] as usize;
        p.dstHeight = region.extent[1] as usize;
        place_array(&mut p, array, region.at, false);
        // `out` lives until the stream is synchronized.
        self.copy_3d(&p, s, self.array_device(array, stream))?;
        self.synchronize_stream(s)?;
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
        let s = self.stream(stream)?;
        self.array_box(array, &region)?;
        let [width, rows, slices] = region.extent;
        // The driver counts slices in rows of `pitch`.
        if (rows > 1 && pitch < width)
            || (slices > 1
                && (pitch == 0
                    || !slice_pitch.is_multiple_of(pitch)
                    || pitch
                        .checked_mul(rows)
                        .is_none_or(|rows| slice_pitch < rows)))
        {
            return Err(invalid_value("device rows or slices that overlap"));
        }
        let span = region
            .linear_span(pitch, slice_pitch)
            .ok_or_else(|| invalid_value("a copy past the address space"))?;
        self.range(ptr, span)?;
        let mut p = copy_3d(&region);
        let height = slice_pitch.checked_div(pitch).unwrap_or(rows);
        if to_array {
            p.srcMemoryType = xpupool_cuda_types::CU_MEMORYTYPE_DEVICE;
            p.srcDevice = ptr;
            p.srcPitch = pitch as usize;
            p.srcHeight = height as usize;
        } else {
            p.dstMemoryType = xpupool_cuda_types::CU_MEMORYTYPE_DEVICE;
            p.dstDevice = ptr;
            p.dstPitch = pitch as usize;
            p.dstHeight = height as usize;
        }
        place_array(&mut p, array, region.at, to_array);
        self.copy_3d(&p, s, self.array_device(array, stream))
    }

    fn memcpy_array_array(
        &mut self,
        dst: u64,
        dst_at: [u64; 3],
        src: u64,
        region: ArrayBox,
        stream: u64,
    ) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        self.array_box(src, &region)?;
        self.array_box(
            dst,
            &ArrayBox {
                at: dst_at,
                extent: region.extent,
            },
        )?;
        let mut p = copy_3d(&region);
        place_array(&mut p, src, region.at, false);
        place_array(&mut p, dst, dst_at, true);
        self.copy_3d(&p, s, self.array_device(dst, stream))
    }

    fn mem_get_info(&mut self, device: u32) -> Result<(u64, u64), CuError> {
        self.enter(device)?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two out-pointers; the device's primary context is current.
        let r = unsafe { (self.shared.driver.cuMemGetInfo_v2)(&mut free, &mut total) };
        self.check(r, "cuMemGetInfo_v2")?;
        Ok((free as u64, total as u64))
    }

    fn memcpy_htod(&mut self, dst: u64, data: ByteBuf, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        self.range(dst, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.enter(self.device_for(stream, dst))?;
        // SAFETY: `dst` is inside this session's memory for `data.len()` bytes; `data`
        // lives until the stream is synchronized below.
        let r = unsafe {
            (self.shared.driver.cuMemcpyHtoDAsync_v2)(dst, data.as_ptr().cast(), data.len(), s)
        };
        self.check(r, "cuMemcpyHtoDAsync_v2")?;
        self.synchronize_stream(s)
    }

    fn memcpy_dtoh(&mut self, src: u64, len: u64, stream: u64) -> Result<ByteBuf, CuError> {
        let s = self.stream(stream)?;
        if len > xpupool_protocol::MAX_COPY_CHUNK as u64 {
            return Err(invalid_value("copy chunk over the protocol limit"));
        }
        self.range(src, len)?;
        let mut out = vec![0u8; len as usize];
        if len == 0 {
            return Ok(ByteBuf::from(out));
        }
        self.enter(self.device_for(stream, src))?;
        // SAFETY: `src` is inside this session's memory for `len` bytes; `out` has
        // `len` bytes and outlives the synchronize below.
        let r = unsafe {
            (self.shared.driver.cuMemcpyDtoHAsync_v2)(out.as_mut_ptr().cast(), src, out.len(), s)
        };
        self.check(r, "cuMemcpyDtoHAsync_v2")?;
        self.synchronize_stream(s)?;
        Ok(ByteBuf::from(out))
    }

    fn memcpy_htod_shared(&mut self, _: u64, _: u64, _: u64, _: u64) -> Result<(), CuError> {
        Err(xpupool_protocol::api::transport_only("memcpy_htod_shared"))
    }

    fn memcpy_dtoh_shared(&mut self, _: u64, _: u64, _: u64, _: u64) -> Result<(), CuError> {
        Err(xpupool_protocol::api::transport_only("memcpy_dtoh_shared"))
    }

    fn memcpy_dtod(&mut self, dst: u64, src: u64, len: u64, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        self.range(src, len)?;
        self.range(dst, len)?;
        if len == 0 {
            return Ok(());
        }
        let (to, from) = (self.home(dst), self.home(src));
        self.enter(self.device_for(stream, dst))?;
        if to != from {
            // Between two devices: a peer copy, with each side's context.
            let peer = self.vmm(self.shared.driver.cuMemcpyPeerAsync, "cuMemcpyPeerAsync")?;
            let context = |d: u32| self.shared.device(d).map(|d| d.context as CUcontext);
            let (to_context, from_context) = (context(to)?, context(from)?);
            // SAFETY: both ranges are inside this session's memory, on those devices.
            let r = unsafe { peer(dst, to_context, src, from_context, len as usize, s) };
            return self.check(r, "cuMemcpyPeerAsync");
        }
        // SAFETY: both ranges are inside this session's memory.
        let r = unsafe { (self.shared.driver.cuMemcpyDtoDAsync_v2)(dst, src, len as usize, s) };
        self.check(r, "cuMemcpyDtoDAsync_v2")
    }

    fn memset(
        &mut self,
        dst: u64,
        value: u32,
        elem_size: u8,
        count: u64,
        stream: u64,
    ) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        memset_element(dst, elem_size)?;
        let len = count
            .checked_mul(u64::from(elem_size))
            .ok_or_else(|| invalid_value("memset too large"))?;
        self.range(dst, len)?;
        if count == 0 {
            return Ok(());
        }
        self.enter(self.device_for(stream, dst))?;
        let d = &self.shared.driver;
        let n = count as usize;
        // SAFETY: `count` elements at `dst` are inside this session's memory.
        let r = unsafe {
            match elem_size {
                1 => (d.cuMemsetD8Async)(dst, value as u8, n, s),
                2 => (d.cuMemsetD16Async)(dst, value as u16, n, s),
                _ => (d.cuMemsetD32Async)(dst, value, n, s),
            }
        };
        self.check(r, "cuMemsetD*Async")
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
        let s = self.stream(stream)?;
        memset_element(dst, elem_size)?;
        let row = width
            .checked_mul(u64::from(elem_size))
            .ok_or_else(|| invalid_value("memset2D too large"))?;
        if row > pitch && height > 1 {
            return Err(invalid_value("memset2D width exceeds pitch"));
        }
        if width == 0 || height == 0 {
            return Ok(());
        }
        // The region spans from the first row's start to the last row's end.
        let span = (height - 1)
            .checked_mul(pitch)
            .and_then(|v| v.checked_add(row))
            .ok_or_else(|| invalid_value("memset2D too large"))?;
        self.range(dst, span)?;
        self.enter(self.device_for(stream, dst))?;
        let d = &self.shared.driver;
        let (p, w, h) = (pitch as usize, width as usize, height as usize);
        // SAFETY: every row lies inside one allocation of this session (checked above).
        let r = unsafe {
            match elem_size {
                1 => (d.cuMemsetD2D8Async)(dst, p, value as u8, w, h, s),
                2 => (d.cuMemsetD2D16Async)(dst, p, value as u16, w, h, s),
                _ => (d.cuMemsetD2D32Async)(dst, p, value, w, h, s),
            }
        };
        self.check(r, "cuMemsetD2D*Async")
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
        self.shared.device(device)?;
        let key: [u8; 32] = Sha256::digest(&image).into();
        let image = Image::from_wire(&image)
            .map_err(|e| CuError::new(code::INVALID_IMAGE, format!("module image: {e}")))?;
        let words = module::driver_image(&image)?;
        self.enter(device)?;
        let mut raw: CUmodule = std::ptr::null_mut();
        // SAFETY: a complete image in one of the formats the driver accepts,
        // NUL-terminated and 8-byte aligned; the driver copies what it keeps.
        let r =
            unsafe { (self.shared.driver.cuModuleLoadData)(&mut raw, module::image_ptr(&words)) };
        self.next_module += 1;
        let handle = (0x4d4f << 48) | self.next_module;
        if r == CUDA_ERROR_NO_BINARY_FOR_GPU {
            return Ok(self.no_code_module(device, handle, &image));
        }
        self.check(r, "cuModuleLoadData")?;
        let kernels = match self.kernels(raw, &image, key) {
            Ok(kernels) => kernels,
            Err(e) => {
                // SAFETY: the module just loaded, not yet known to anyone.
                unsafe { (self.shared.driver.cuModuleUnload)(raw) };
                return Err(e);
            }
        };
        if kernels.is_empty() && !module::image_layouts(&image).is_empty() {
            // The image has kernels but the driver offers none: it accepted an image
            // it has no code for, to fail only when a kernel is used (xpupool's own
            // libcuda does this). Say so now, as the driver does at load.
            // SAFETY: the module just loaded, not yet known to anyone.
            unsafe { (self.shared.driver.cuModuleUnload)(raw) };
            return Ok(self.no_code_module(device, handle, &image));
        }
        let mut loaded = Module {
            device,
            raw: Some(raw as u64),
            functions: Vec::with_capacity(kernels.len()),
            globals: BTreeMap::new(),
        };
        let mut functions = Vec::with_capacity(kernels.len());
        for (f, kernel) in kernels {
            let param_bytes = kernel.param_bytes();
            let unusable = kernel.params.as_ref().err().cloned();
            self.functions.insert(
                f as u64,
                Function {
                    device,
                    param_bytes,
                    unusable: unusable.clone(),
                },
            );
            loaded.functions.push(f as u64);
            functions.push(FunctionInfo {
                handle: f as u64,
                param_bytes,
                unusable,
                params: kernel.params.unwrap_or_default(),
                attributes: kernel.attributes,
                name: kernel.name,
            });
        }
        tracing::debug!(
            module = handle,
            functions = functions.len(),
            "module loaded"
        );
        self.modules.insert(handle, loaded);
        Ok(ModuleInfo {
            handle,
            functions,
            no_code: None,
            // The driver does not say what a module takes; its image is its code's
            // size on the device (its variables' storage is not counted yet).
            device_bytes: (words.len() * 8) as u64,
        })
    }

    fn module_get_global(&mut self, module: u64, name: String) -> Result<GlobalInfo, CuError> {
        let loaded = self
            .modules
            .get(&module)
            .ok_or_else(|| invalid_handle("module", module))?;
        let not_found =
            || CuError::new(code::NOT_FOUND, format!("no global {name:?} in the module"));
        let raw = loaded.raw.ok_or_else(not_found)?;
        let c_name = CString::new(name.clone()).map_err(|_| not_found())?;
        self.enter(loaded.device)?;
        let (mut address, mut size) = (0u64, 0usize);
        // SAFETY: a module of this session, a C string and two out-pointers.
        let r = unsafe {
            (self.shared.driver.cuModuleGetGlobal_v2)(
                &mut address,
                &mut size,
                raw as CUmodule,
                c_name.as_ptr(),
            )
        };
        self.check(r, &format!("cuModuleGetGlobal_v2({name})"))?;
        if let Some(m) = self.modules.get_mut(&module) {
            m.globals.insert(address, size as u64);
        }
        Ok(GlobalInfo {
            name,
            address,
            size: size as u64,
        })
    }

    fn module_unload(&mut self, module: u64) -> Result<(), CuError> {
        let loaded = self
            .modules
            .remove(&module)
            .ok_or_else(|| invalid_handle("module", module))?;
        self.unload(loaded)
    }

    fn function_set_attribute(
        &mut self,
        function: u64,
        attribute: u32,
        value: i32,
    ) -> Result<(), CuError> {
        self.enter(self.function_device(function)?)?;
        // SAFETY: a function of this session; the driver validates attribute and value.
        let r = unsafe {
            (self.shared.driver.cuFuncSetAttribute)(function as CUfunction, attribute, value)
        };
        self.check(r, "cuFuncSetAttribute")
    }

    fn launch_kernel(
        &mut self,
        function: u64,
        dims: LaunchDims,
        stream: u64,
        params: ByteBuf,
    ) -> Result<(), CuError> {
        self.launch(function, dims, stream, params, LaunchKind::Plain)
    }

    fn launch_cooperative(
        &mut self,
        function: u64,
        dims: LaunchDims,
        stream: u64,
        params: ByteBuf,
    ) -> Result<(), CuError> {
        self.launch(function, dims, stream, params, LaunchKind::Cooperative)
    }

    fn launch_clustered(
        &mut self,
        function: u64,
        dims: LaunchDims,
        cluster: [u32; 3],
        stream: u64,
        params: ByteBuf,
    ) -> Result<(), CuError> {
        self.launch(function, dims, stream, params, LaunchKind::Cluster(cluster))
    }

    crate::checks::no_aclnn_methods!("cuda");

    fn function_get_attribute(&mut self, function: u64, attribute: u32) -> Result<i32, CuError> {
        let device = self.function_device(function)?;
        if attribute > 9 {
            return Err(invalid_value(format!("function attribute {attribute}")));
        }
        self.enter(device)?;
        module::function_attribute(&self.shared.driver, function as CUfunction, attribute)
    }

    fn session_busy(&mut self) -> Result<xpupool_protocol::api::SessionWork, CuError> {
        let shared = &self.shared;
        Ok(KernelTimes::collect_all(
            &mut self.times,
            &shared.driver,
            |d| shared.enter(d),
        ))
    }

    fn stream_create(&mut self, device: u32, flags: u32, priority: i32) -> Result<u64, CuError> {
        self.enter(device)?;
        let mut stream: CUstream = std::ptr::null_mut();
        // SAFETY: an out-pointer; the device's primary context is current.
        let r = unsafe {
            (self.shared.driver.cuStreamCreateWithPriority)(&mut stream, flags, priority)
        };
        self.check(r, "cuStreamCreateWithPriority")?;
        self.streams.insert(stream as u64, device);
        Ok(stream as u64)
    }

    fn stream_destroy(&mut self, stream: u64) -> Result<(), CuError> {
        let Some(&device) = self.streams.get(&stream) else {
            return Err(invalid_handle("stream", stream));
        };
        self.enter(device)?;
        // SAFETY: a stream of this session, destroyed once (removed below).
        let r = unsafe { (self.shared.driver.cuStreamDestroy_v2)(stream as CUstream) };
        self.check(r, "cuStreamDestroy_v2")?;
        self.streams.remove(&stream);
        Ok(())
    }

    fn stream_synchronize(&mut self, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        for device in self.stream_devices(stream) {
            self.enter(device)?;
            self.synchronize_stream(s)?;
        }
        Ok(())
    }

    fn stream_query(&mut self, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        for device in self.stream_devices(stream) {
            self.enter(device)?;
            // SAFETY: a checked stream.
            let r = unsafe { (self.shared.driver.cuStreamQuery)(s) };
            self.check(r, "cuStreamQuery")?;
        }
        Ok(())
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64, flags: u32) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        let e = self.event(event)?;
        self.enter(
            self.streams
                .get(&stream)
                .copied()
                .unwrap_or(self.events[&event]),
        )?;
        // SAFETY: a checked stream and event.
        let r = unsafe { (self.shared.driver.cuStreamWaitEvent)(s, e, flags) };
        self.check(r, "cuStreamWaitEvent")
    }

    fn event_create(&mut self, device: u32, flags: u32) -> Result<u64, CuError> {
        self.enter(device)?;
        let mut event: CUevent = std::ptr::null_mut();
        // SAFETY: an out-pointer; the device's primary context is current.
        let r = unsafe { (self.shared.driver.cuEventCreate)(&mut event, flags) };
        self.check(r, "cuEventCreate")?;
        self.events.insert(event as u64, device);
        Ok(event as u64)
    }

    fn event_destroy(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.events[&event])?;
        // SAFETY: an event of this session, destroyed once (removed below).
        let r = unsafe { (self.shared.driver.cuEventDestroy_v2)(e) };
        self.check(r, "cuEventDestroy_v2")?;
        self.events.remove(&event);
        Ok(())
    }

    fn event_record(&mut self, event: u64, stream: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        let s = self.stream(stream)?;
        self.enter(self.events[&event])?;
        // SAFETY: a checked event and stream.
        let r = unsafe { (self.shared.driver.cuEventRecord)(e, s) };
        self.check(r, "cuEventRecord")
    }

    fn event_synchronize(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.events[&event])?;
        // SAFETY: a checked event.
        let r = unsafe { (self.shared.driver.cuEventSynchronize)(e) };
        self.check(r, "cuEventSynchronize")
    }

    fn event_query(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.events[&event])?;
        // SAFETY: a checked event.
        let r = unsafe { (self.shared.driver.cuEventQuery)(e) };
        self.check(r, "cuEventQuery")
    }

    fn event_elapsed_time(&mut self, start: u64, end: u64) -> Result<f32, CuError> {
        let (a, b) = (self.event(start)?, self.event(end)?);
        self.enter(self.events[&end])?;
        let d = &self.shared.driver;
        let elapsed = d
            .cuEventElapsedTime_v2
            .or(d.cuEventElapsedTime)
            .expect("checked when the driver was loaded");
        let mut ms = 0f32;
        // SAFETY: checked events and an out-pointer.
        let r = unsafe { elapsed(&mut ms, a, b) };
        self.check(r, "cuEventElapsedTime")?;
        Ok(ms)
    }

    /// Waits for the session's own work: the legacy stream (which also orders the
    /// per-thread one as mapped here) and each stream it created. Not
    /// `cuCtxSynchronize`, which would also wait for every other session's work.
    fn synchronize(&mut self) -> Result<(), CuError> {
        for device in self.used_devices() {
            self.enter(device)?;
            self.synchronize_stream(STREAM_LEGACY as CUstream)?;
        }
        for (&s, &device) in &self.streams {
            self.enter(device)?;
            self.synchronize_stream(s as CUstream)?;
        }
        Ok(())
    }

    xpupool_protocol::server_only_operations!();
}

/// Makes the session's context of `device` current: its green context there,
/// or the device's primary context.
fn make_current(shared: &Shared, green: &[Green], device: u32) -> Result<(), CuError> {
    match green.get(device as usize) {
        Some(g) => shared.set_current(g.context),
        None => shared.enter(device),
    }
}

/// An IPC handle's bytes as the driver's structure holds them.
fn ipc_bytes(handle: &[u8]) -> Result<[std::ffi::c_char; 64], CuError> {
    let bytes: [u8; 64] = handle
        .try_into()
        .map_err(|_| invalid_value("an IPC handle of the wrong size"))?;
    Ok(bytes.map(|b| b as std::ffi::c_char))
}

impl Drop for CudaSession {
    fn drop(&mut self) {
        // Let in-flight work end before its memory goes; a poisoned context fails
        // these and everything after, which is logged and otherwise ignored.
        if let Err(e) = self.synchronize() {
            tracing::warn!(error = %e.message, "cuda session teardown: synchronize");
        }
        let mut failures = Vec::new();
        // Each thing is destroyed in its own device's context.
        let enter = |failures: &mut Vec<u32>, device: u32| {
            if let Err(e) = make_current(&self.shared, &self.green, device) {
                failures.push(e.code);
            }
        };
        for (device, mut times) in std::mem::take(&mut self.times) {
            enter(&mut failures, device);
            times.destroy(&self.shared.driver);
        }
        let d = &self.shared.driver;
        for (event, device) in std::mem::take(&mut self.events) {
            enter(&mut failures, device);
            // SAFETY: an event of this session, destroyed once.
            failures.push(unsafe { (d.cuEventDestroy_v2)(event as CUevent) });
        }
        for (stream, device) in std::mem::take(&mut self.streams) {
            enter(&mut failures, device);
            // SAFETY: a stream of this session, destroyed once.
            failures.push(unsafe { (d.cuStreamDestroy_v2)(stream as CUstream) });
        }
        for (_, module) in std::mem::take(&mut self.modules) {
            if let Some(raw) = module.raw {
                enter(&mut failures, module.device);
                // SAFETY: a module of this session, unloaded once.
                failures.push(unsafe { (d.cuModuleUnload)(raw as CUmodule) });
            }
        }
        self.functions.clear();
        // Texture and surface objects, before the memory and arrays they read.
        for (texture, device) in std::mem::take(&mut self.textures) {
            if let Some(destroy) = d.cuTexObjectDestroy {
                enter(&mut failures, device);
                // SAFETY: a texture object of this session, destroyed once.
                failures.push(unsafe { destroy(texture) });
            }
        }
        for (surface, device) in std::mem::take(&mut self.surfaces) {
            if let Some(destroy) = d.cuSurfObjectDestroy {
                enter(&mut failures, device);
                // SAFETY: a surface object of this session, destroyed once.
                failures.push(unsafe { destroy(surface) });
            }
        }
        for (array, (_, device)) in std::mem::take(&mut self.arrays) {
            if let Some(destroy) = d.cuArrayDestroy {
                enter(&mut failures, device);
                // SAFETY: an array of this session, destroyed once.
                failures.push(unsafe { destroy(array as xpupool_cuda_types::CUarray) });
            }
        }
        let homes = std::mem::take(&mut self.homes);
        let home = |address: u64| homes.get(&address).copied().unwrap_or(0);
        for (address, _) in std::mem::take(&mut self.allocations) {
            enter(&mut failures, home(address));
            // SAFETY: an allocation of this session, freed once.
            failures.push(unsafe { (d.cuMemFree_v2)(address) });
        }
        for (address, _) in std::mem::take(&mut self.opened) {
            if let Some(close) = d.cuIpcCloseMemHandle {
                enter(&mut failures, home(address));
                // SAFETY: an allocation this session opened, closed once.
                failures.push(unsafe { close(address) });
            }
        }
        // Virtual memory: mappings, then handles, then the reservations.
        for (address, size) in std::mem::take(&mut self.mappings) {
            if let Some(unmap) = d.cuMemUnmap {
                enter(&mut failures, home(address));
                // SAFETY: a mapping of this session, unmapped once.
                failures.push(unsafe { unmap(address, size as usize) });
            }
        }
        for (handle, (_, device)) in std::mem::take(&mut self.physical) {
            if let Some(release) = d.cuMemRelease {
                enter(&mut failures, device);
                // SAFETY: a handle of this session, released once.
                failures.push(unsafe { release(handle) });
            }
        }
        for (address, size) in std::mem::take(&mut self.reservations) {
            if let Some(free) = d.cuMemAddressFree {
                // SAFETY: a reservation of this session, freed once.
                failures.push(unsafe { free(address, size as usize) });
            }
        }
        for g in std::mem::take(&mut self.green) {
            g.destroy(&self.shared);
        }
        failures.retain(|&r| r != CUDA_SUCCESS);
        if let Some(&first) = failures.first() {
            tracing::warn!(
                failures = failures.len(),
                first = %d.error_name(first),
                "cuda session teardown: some frees failed"
            );
        }
    }
}
