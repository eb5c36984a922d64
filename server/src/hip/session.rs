//! One client's session on the HIP runtime: its own tables, checked before every call.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_void, CString};
use std::sync::Arc;

use serde_bytes::ByteBuf;
use xpupool_fatbin::Image;
use xpupool_protocol::api::{FunctionInfo, GlobalInfo, LaunchDims, ModuleInfo};
use xpupool_protocol::{code, Api, CuError, MAX_COPY_CHUNK};

use super::runtime::{
    Handle, DEVICE_TO_DEVICE, DEVICE_TO_HOST, HIP_ERROR_NOT_SUPPORTED, HIP_ERROR_NO_BINARY_FOR_GPU,
    HIP_SUCCESS, HOST_TO_DEVICE, LAUNCH_PARAM_BUFFER_POINTER, LAUNCH_PARAM_BUFFER_SIZE,
    LAUNCH_PARAM_END,
};
use super::timing::KernelTimes;
use super::Shared;
use crate::checks::{
    end_of, fill_by_copies, invalid_handle, invalid_value, memset_2d_in, memset_in, uniform_bytes,
    within,
};
use crate::placement::Placement;

/// `CU_FUNC_ATTRIBUTE_*` the code object's metadata answers.
const MAX_THREADS_PER_BLOCK: u32 = 0;
const SHARED_SIZE_BYTES: u32 = 1;
const LOCAL_SIZE_BYTES: u32 = 3;
const MAX_DYNAMIC_SHARED_SIZE_BYTES: u32 = 8;
const PREFERRED_SHARED_MEMORY_CARVEOUT: u32 = 9;
/// Local data share one workgroup may have on AMD's devices.
const MAX_LDS: i32 = 64 << 10;
/// Kernels one code object may list (its metadata is read from client bytes).
const MAX_KERNELS: usize = 65_536;

struct Module {
    /// The runtime's module; `None` when it had no code for the device.
    raw: Option<u64>,
    /// The device it is loaded on.
    device: u32,
    functions: Vec<u64>,
    /// Module variables looked up so far: address → size (valid copy targets).
    globals: BTreeMap<u64, u64>,
}

struct Function {
    /// The runtime's function; `None` for a kernel it did not find.
    raw: Option<u64>,
    /// Its module's device.
    device: u32,
    param_bytes: u32,
    /// Why it cannot be launched (the client is told at load).
    unusable: Option<String>,
    /// `CU_FUNC_ATTRIBUTE_*` values its metadata gives.
    attributes: Vec<(u32, i32)>,
}

pub(crate) struct HipSession {
    shared: Arc<Shared>,
    /// Allocations: base → size.
    allocations: BTreeMap<u64, u64>,
    modules: HashMap<u64, Module>,
    next_handle: u64,
    functions: HashMap<u64, Function>,
    /// Its streams', events' and allocations' devices, and the devices used.
    place: Placement,
    /// Device time of its kernels, per device ([`Api::session_busy`]).
    times: HashMap<u32, KernelTimes>,
}

fn unsupported(operation: &str) -> CuError {
    CuError::new(
        code::NOT_SUPPORTED,
        format!("{operation} is not supported by the hip backend"),
    )
}

/// Whether `image` is an AMD GPU code object (ELF for machine 224, `EM_AMDGPU`).
pub(crate) fn is_code_object(image: &[u8]) -> bool {
    image.len() > 20 && image.starts_with(b"\x7fELF") && image[18..20] == 224u16.to_le_bytes()
}

/// The code object a wire image carries, or why it is not one (`INVALID_IMAGE`).
pub(crate) fn code_object(wire: &[u8]) -> Result<Vec<u8>, CuError> {
    let bad = |why: String| CuError::new(code::INVALID_IMAGE, why);
    match Image::from_wire(wire).map_err(|e| bad(format!("module image: {e}")))? {
        Image::Elf(bytes) if is_code_object(&bytes) => Ok(bytes),
        Image::Elf(_) => Err(bad(
            "the hip backend runs AMD GPU code objects; this ELF is not one".to_owned(),
        )),
        _ => Err(bad(
            "the hip backend runs AMD GPU code objects, not PTX, cubins, fatbins or Ascend binaries".to_owned(),
        )),
    }
}

/// The launches' parameter buffer: the first `param_bytes` of the client's
/// (which must have them), 8-byte aligned for the runtime.
pub(crate) fn kernel_arguments(params: &[u8], param_bytes: u32) -> Result<Vec<u64>, CuError> {
    let size = param_bytes as usize;
    if params.len() < size {
        return Err(invalid_value(format!(
            "{} parameter bytes for a kernel that takes {size}",
            params.len()
        )));
    }
    let mut words = vec![0u64; size.div_ceil(8)];
    // SAFETY: `words` has at least `size` bytes; u64 has no invalid bit patterns.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), size) };
    bytes.copy_from_slice(&params[..size]);
    Ok(words)
}

impl HipSession {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            allocations: BTreeMap::new(),
            modules: HashMap::new(),
            next_handle: 0,
            functions: HashMap::new(),
            place: Placement::default(),
            times: HashMap::new(),
        }
    }

    /// Makes `device` current (checked against the backend's), noting it used.
    fn enter(&self, device: u32) -> Result<(), CuError> {
        self.shared.enter(device)?;
        self.place.note(device);
        Ok(())
    }

    /// The device of the allocation (or module variable) `address` lies in;
    /// device 0 for an address of none (refused by the range checks anyway).
    fn home(&self, address: u64) -> u32 {
        self.place
            .home_in(&self.allocations, address)
            .or_else(|| {
                self.modules
                    .values()
                    .find(|m| within(&m.globals, address, address.saturating_add(1)))
                    .map(|m| m.device)
            })
            .unwrap_or(0)
    }

    /// The device a copy or memset in `stream` over `address` runs on: the
    /// stream's, or for a null stream the memory's.
    fn device_for(&self, stream: u64, address: u64) -> u32 {
        self.place.device_for(stream, || self.home(address))
    }

    fn check(&self, r: c_int, what: &str) -> Result<(), CuError> {
        self.shared.runtime.check(r, what)
    }

    /// A session-local handle with `tag` in its top bits (never a user address).
    fn handle(&mut self, tag: u64) -> u64 {
        self.next_handle += 1;
        (tag << 48) | self.next_handle
    }

    fn stream(&self, stream: u64) -> Result<Handle, CuError> {
        self.place.stream(stream)
    }

    fn event(&self, event: u64) -> Result<Handle, CuError> {
        self.place.event(event)
    }

    /// Checks that `[address, address+len)` lies inside one allocation (or module
    /// variable) of this session.
    fn range(&self, address: u64, len: u64) -> Result<(), CuError> {
        let end = end_of(address, len)?;
        if within(&self.allocations, address, end)
            || self
                .modules
                .values()
                .any(|m| within(&m.globals, address, end))
        {
            Ok(())
        } else {
            Err(invalid_value(format!(
                "[{address:#x}, +{len}) is not inside an allocation of this session"
            )))
        }
    }

    fn synchronize_stream(&self, stream: Handle) -> Result<(), CuError> {
        // SAFETY: a stream checked against this session's table (or the null one).
        let r = unsafe { (self.shared.runtime.hipStreamSynchronize)(stream) };
        self.check(r, "hipStreamSynchronize")
    }

    /// Copies `len` bytes at `src` (host) to `dst` (checked device memory) in
    /// `stream`, and waits for it: `src` must live only as long as the call.
    fn copy_in(&self, dst: u64, src: *const u8, len: usize, stream: Handle) -> Result<(), CuError> {
        // SAFETY: `dst` is inside this session's memory for `len` bytes (the caller
        // checked); `src` has `len` readable bytes and outlives the synchronize below.
        let r = unsafe {
            (self.shared.runtime.hipMemcpyAsync)(
                dst as *mut c_void,
                src.cast(),
                len,
                HOST_TO_DEVICE,
                stream,
            )
        };
        self.check(r, "hipMemcpyAsync")?;
        self.synchronize_stream(stream)
    }

    /// Fills `count` elements of `elem_size` bytes at `dst` (checked) with
    /// `value`: bytewise where that is the same, else with the runtime's word
    /// fills, else by copying the pattern from the host.
    fn fill(
        &self,
        dst: u64,
        value: u32,
        elem_size: u8,
        count: u64,
        stream: Handle,
    ) -> Result<(), CuError> {
        let rt = &self.shared.runtime;
        let bytes = count * u64::from(elem_size);
        let n = usize::try_from(count).map_err(|_| invalid_value("memset too large"))?;
        if uniform_bytes(value, elem_size) {
            // SAFETY: `count` elements at `dst` are inside this session's memory.
            let r = unsafe {
                (rt.hipMemsetAsync)(
                    dst as *mut c_void,
                    (value & 0xff) as c_int,
                    bytes as usize,
                    stream,
                )
            };
            return self.check(r, "hipMemsetAsync");
        }
        // SAFETY: as above.
        let r = unsafe {
            match (elem_size, rt.hipMemsetD16Async, rt.hipMemsetD32Async) {
                (2, Some(d16), _) => d16(dst as *mut c_void, value as u16, n, stream),
                (4, _, Some(d32)) => d32(dst as *mut c_void, value as c_int, n, stream),
                _ => HIP_ERROR_NOT_SUPPORTED,
            }
        };
        if r != HIP_ERROR_NOT_SUPPORTED {
            return self.check(r, "hipMemsetD16Async/hipMemsetD32Async");
        }
        fill_by_copies(value, elem_size, bytes, |at, chunk| {
            self.copy_in(dst + at, chunk.as_ptr(), chunk.len(), stream)
        })
    }

    fn unload(&mut self, module: Module) -> Result<(), CuError> {
        for f in &module.functions {
            self.functions.remove(f);
        }
        match module.raw {
            Some(raw) => {
                // SAFETY: a module this session loaded; its functions are gone
                // from the table.
                let r = unsafe { (self.shared.runtime.hipModuleUnload)(raw as Handle) };
                self.check(r, "hipModuleUnload")
            }
            None => Ok(()),
        }
    }
}

/// Copies from the transport's memory go through the ordinary copy operations.
impl crate::backend::DirectCopy for HipSession {}

impl Api for HipSession {
    fn mem_alloc(&mut self, device: u32, bytes: u64) -> Result<u64, CuError> {
        if bytes == 0 {
            return Err(invalid_value("zero-byte allocation"));
        }
        let len = usize::try_from(bytes)
            .map_err(|_| CuError::new(code::OUT_OF_MEMORY, "allocation too large"))?;
        self.enter(device)?;
        let mut address: *mut c_void = std::ptr::null_mut();
        // SAFETY: an out-pointer; the device is current.
        let r = unsafe { (self.shared.runtime.hipMalloc)(&mut address, len) };
        self.check(r, "hipMalloc")?;
        if address.is_null() {
            return Err(CuError::new(code::OUT_OF_MEMORY, "hipMalloc gave NULL"));
        }
        self.allocations.insert(address as u64, bytes);
        self.place.homes.insert(address as u64, device);
        Ok(address as u64)
    }

    fn mem_free(&mut self, ptr: u64) -> Result<(), CuError> {
        if !self.allocations.contains_key(&ptr) {
            return Err(invalid_value(format!(
                "{ptr:#x} is not an allocation of this session"
            )));
        }
        self.enter(self.home(ptr))?;
        // SAFETY: an allocation of this session, freed once (removed below).
        let r = unsafe { (self.shared.runtime.hipFree)(ptr as *mut c_void) };
        self.check(r, "hipFree")?;
        self.allocations.remove(&ptr);
        self.place.homes.remove(&ptr);
        Ok(())
    }

    fn mem_get_info(&mut self, device: u32) -> Result<(u64, u64), CuError> {
        self.enter(device)?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two out-pointers; the device is current.
        let r = unsafe { (self.shared.runtime.hipMemGetInfo)(&mut free, &mut total) };
        self.check(r, "hipMemGetInfo")?;
        Ok((free as u64, total as u64))
    }

    fn memcpy_htod(&mut self, dst: u64, data: ByteBuf, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        self.range(dst, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.enter(self.device_for(stream, dst))?;
        self.copy_in(dst, data.as_ptr(), data.len(), s)
    }

    fn memcpy_dtoh(&mut self, src: u64, len: u64, stream: u64) -> Result<ByteBuf, CuError> {
        let s = self.stream(stream)?;
        if len > MAX_COPY_CHUNK as u64 {
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
            (self.shared.runtime.hipMemcpyAsync)(
                out.as_mut_ptr().cast(),
                src as *const c_void,
                out.len(),
                DEVICE_TO_HOST,
                s,
            )
        };
        self.check(r, "hipMemcpyAsync")?;
        self.synchronize_stream(s)?;
        Ok(ByteBuf::from(out))
    }

    fn memcpy_dtod(&mut self, dst: u64, src: u64, len: u64, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        self.range(src, len)?;
        self.range(dst, len)?;
        if len == 0 {
            return Ok(());
        }
        self.enter(self.device_for(stream, dst))?;
        // SAFETY: both ranges are inside this session's memory.
        let r = unsafe {
            (self.shared.runtime.hipMemcpyAsync)(
                dst as *mut c_void,
                src as *const c_void,
                len as usize,
                DEVICE_TO_DEVICE,
                s,
            )
        };
        self.check(r, "hipMemcpyAsync")
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
        memset_in(
            dst,
            elem_size,
            count,
            |a, l| self.range(a, l),
            |at, n| {
                self.enter(self.device_for(stream, at))?;
                self.fill(at, value, elem_size, n, s)
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
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
        self.enter(self.device_for(stream, dst))?;
        let range = |a, l| self.range(a, l);
        memset_2d_in(dst, pitch, elem_size, width, height, range, |at, n| {
            self.fill(at, value, elem_size, n, s)
        })
    }

    fn module_load_cached(
        &mut self,
        _device: u32,
        _hash: [u8; 32],
    ) -> Result<Option<ModuleInfo>, CuError> {
        // Images are cached by the server around every session (module_cache.rs).
        Ok(None)
    }

    fn module_load(&mut self, device: u32, image: ByteBuf) -> Result<ModuleInfo, CuError> {
        self.enter(device)?;
        let code = code_object(&image)?;
        let meta = xpupool_amdgpu::read_code_object(&code)
            .map_err(|e| CuError::new(code::INVALID_IMAGE, format!("AMD GPU code object: {e}")))?;
        if meta.kernels.len() > MAX_KERNELS {
            return Err(CuError::new(code::INVALID_IMAGE, "too many kernels"));
        }
        // An aligned copy for the runtime, which reads the ELF in place.
        let mut words = vec![0u64; code.len().div_ceil(8)];
        // SAFETY: `words` has at least `code.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                code.as_ptr(),
                words.as_mut_ptr().cast::<u8>(),
                code.len(),
            )
        };
        let mut raw: Handle = std::ptr::null_mut();
        // SAFETY: a whole code object (its metadata read above), alive across the
        // call; the runtime copies what it keeps.
        let r = unsafe { (self.shared.runtime.hipModuleLoadData)(&mut raw, words.as_ptr().cast()) };
        let handle = self.handle(0x4d4f);
        if r == HIP_ERROR_NO_BINARY_FOR_GPU {
            let reason = format!(
                "the device cannot run code for {} (the code object's target)",
                meta.target
            );
            tracing::info!(%reason, "module has no code for this device");
            self.modules.insert(
                handle,
                Module {
                    raw: None,
                    device,
                    functions: Vec::new(),
                    globals: BTreeMap::new(),
                },
            );
            return Ok(ModuleInfo {
                handle,
                functions: Vec::new(),
                no_code: Some(reason),
                device_bytes: 0,
            });
        }
        self.check(r, "hipModuleLoadData")?;
        let mut loaded = Module {
            raw: Some(raw as u64),
            device,
            functions: Vec::with_capacity(meta.kernels.len()),
            globals: BTreeMap::new(),
        };
        let mut functions = Vec::with_capacity(meta.kernels.len());
        for kernel in &meta.kernels {
            let params = kernel.explicit_args();
            let param_bytes = params.iter().map(|&(o, s)| o + s).max().unwrap_or(0);
            let attributes = vec![
                (
                    MAX_THREADS_PER_BLOCK,
                    kernel.max_flat_workgroup_size.min(1024) as i32,
                ),
                (SHARED_SIZE_BYTES, kernel.group_segment_size as i32),
                (LOCAL_SIZE_BYTES, kernel.private_segment_size as i32),
            ];
            let mut f: Handle = std::ptr::null_mut();
            let found = CString::new(kernel.name.clone())
                .map_err(|_| "its name has a NUL".to_owned())
                .and_then(|name| {
                    // SAFETY: a module just loaded, a C string and an out-pointer.
                    let r = unsafe {
                        (self.shared.runtime.hipModuleGetFunction)(&mut f, raw, name.as_ptr())
                    };
                    self.check(r, "hipModuleGetFunction").map_err(|e| e.message)
                });
            let (handle, raw_f, unusable) = match found {
                Ok(()) if !f.is_null() => (f as u64, Some(f as u64), None),
                Ok(()) => (
                    self.handle(0x4655),
                    None,
                    Some("the runtime gave no function".to_owned()),
                ),
                Err(why) => (self.handle(0x4655), None, Some(why)),
            };
            self.functions.insert(
                handle,
                Function {
                    raw: raw_f,
                    device,
                    param_bytes,
                    unusable: unusable.clone(),
                    attributes: attributes.clone(),
                },
            );
            loaded.functions.push(handle);
            functions.push(FunctionInfo {
                name: kernel.name.clone(),
                handle,
                params,
                param_bytes,
                unusable,
                attributes,
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
            // The runtime does not say what a module takes; its code object is
            // what it loads onto the device.
            device_bytes: code.len() as u64,
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
        let (mut address, mut size): (*mut c_void, usize) = (std::ptr::null_mut(), 0);
        // SAFETY: a module of this session, a C string and two out-pointers.
        let r = unsafe {
            (self.shared.runtime.hipModuleGetGlobal)(
                &mut address,
                &mut size,
                raw as Handle,
                c_name.as_ptr(),
            )
        };
        self.check(r, &format!("hipModuleGetGlobal({name})"))?;
        if let Some(m) = self.modules.get_mut(&module) {
            m.globals.insert(address as u64, size as u64);
        }
        Ok(GlobalInfo {
            name,
            address: address as u64,
            size: size as u64,
        })
    }

    fn module_unload(&mut self, module: u64) -> Result<(), CuError> {
        let device = self
            .modules
            .get(&module)
            .ok_or_else(|| invalid_handle("module", module))?
            .device;
        // Its device first: a module left in the table is unloaded at the end.
        self.enter(device)?;
        let loaded = self
            .modules
            .remove(&module)
            .ok_or_else(|| invalid_handle("module", module))?;
        self.unload(loaded)
    }

    /// AMD's devices need no opt-in for dynamic LDS up to the workgroup's 64 KiB,
    /// and have no carveout to prefer: those two are accepted and change nothing.
    fn function_set_attribute(
        &mut self,
        function: u64,
        attribute: u32,
        value: i32,
    ) -> Result<(), CuError> {
        if !self.functions.contains_key(&function) {
            return Err(invalid_handle("function", function));
        }
        match attribute {
            MAX_DYNAMIC_SHARED_SIZE_BYTES if (0..=MAX_LDS).contains(&value) => Ok(()),
            MAX_DYNAMIC_SHARED_SIZE_BYTES => Err(invalid_value(format!(
                "{value} bytes of dynamic shared memory (at most {MAX_LDS})"
            ))),
            PREFERRED_SHARED_MEMORY_CARVEOUT => Ok(()),
            other => Err(unsupported(&format!("function attribute {other}"))),
        }
    }

    crate::checks::no_aclnn_methods!("hip");

    fn function_get_attribute(&mut self, function: u64, attribute: u32) -> Result<i32, CuError> {
        let f = self
            .functions
            .get(&function)
            .ok_or_else(|| invalid_handle("function", function))?;
        if attribute > 9 {
            return Err(invalid_value(format!("function attribute {attribute}")));
        }
        if let (Some(raw), Some(get)) = (f.raw, self.shared.runtime.hipFuncGetAttribute) {
            self.enter(f.device)?;
            let mut value = 0;
            // SAFETY: a function of this session and an out-pointer.
            if unsafe { get(&mut value, attribute as c_int, raw as Handle) } == HIP_SUCCESS {
                return Ok(value);
            }
        }
        f.attributes
            .iter()
            .find(|&&(a, _)| a == attribute)
            .map(|&(_, v)| v)
            .ok_or_else(|| unsupported(&format!("function attribute {attribute}")))
    }

    fn launch_kernel(
        &mut self,
        function: u64,
        dims: LaunchDims,
        stream: u64,
        params: ByteBuf,
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
        let raw = f.raw.ok_or_else(|| invalid_handle("function", function))?;
        let device = f.device;
        // A kernel runs on its module's device, in a stream of that device.
        self.place.stream_on(stream, device, || {
            format!("the kernel is loaded on device {device}")
        })?;
        let mut buffer = kernel_arguments(&params, f.param_bytes)?;
        let mut size = f.param_bytes as usize;
        let mut extra = [
            LAUNCH_PARAM_BUFFER_POINTER as *mut c_void,
            buffer.as_mut_ptr().cast(),
            LAUNCH_PARAM_BUFFER_SIZE as *mut c_void,
            (&mut size as *mut usize).cast(),
            LAUNCH_PARAM_END as *mut c_void,
        ];
        let extra = if size == 0 {
            std::ptr::null_mut()
        } else {
            extra.as_mut_ptr()
        };
        self.enter(device)?;
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        let times = self.times.entry(device).or_default();
        let timed = times.before(&self.shared.runtime, s);
        // SAFETY: a function of this session and its explicit arguments, packed
        // (the runtime copies them at launch and fills the hidden ones). What the
        // kernel does with pointer arguments cannot be checked: each session runs
        // in a worker process of its own for that.
        let r = unsafe {
            (self.shared.runtime.hipModuleLaunchKernel)(
                raw as Handle,
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
        };
        if let (Some(pair), Some(times)) = (timed, self.times.get_mut(&device)) {
            times.after(&self.shared.runtime, s, pair, r == HIP_SUCCESS);
        }
        self.check(r, "hipModuleLaunchKernel")
    }

    fn launch_cooperative(
        &mut self,
        _: u64,
        _: LaunchDims,
        _: u64,
        _: ByteBuf,
    ) -> Result<(), CuError> {
        Err(unsupported("a cooperative launch"))
    }

    fn launch_clustered(
        &mut self,
        _: u64,
        _: LaunchDims,
        _: [u32; 3],
        _: u64,
        _: ByteBuf,
    ) -> Result<(), CuError> {
        Err(unsupported("a clustered launch"))
    }

    fn session_busy(&mut self) -> Result<xpupool_protocol::api::SessionWork, CuError> {
        let shared = &self.shared;
        Ok(KernelTimes::collect_all(
            &mut self.times,
            &shared.runtime,
            |d| shared.enter(d),
        ))
    }

    fn stream_create(&mut self, device: u32, flags: u32, priority: i32) -> Result<u64, CuError> {
        if flags & !1 != 0 {
            return Err(invalid_value(format!("stream flags {flags:#x}")));
        }
        self.enter(device)?;
        let mut stream: Handle = std::ptr::null_mut();
        // SAFETY: an out-pointer; the device is current.
        let r = unsafe {
            (self.shared.runtime.hipStreamCreateWithPriority)(&mut stream, flags, priority)
        };
        self.check(r, "hipStreamCreateWithPriority")?;
        self.place.streams.insert(stream as u64, device);
        Ok(stream as u64)
    }

    fn stream_destroy(&mut self, stream: u64) -> Result<(), CuError> {
        let &device = self
            .place
            .streams
            .get(&stream)
            .ok_or_else(|| invalid_handle("stream", stream))?;
        self.enter(device)?;
        // SAFETY: a stream of this session, destroyed once (removed below).
        let r = unsafe { (self.shared.runtime.hipStreamDestroy)(stream as Handle) };
        self.check(r, "hipStreamDestroy")?;
        self.place.streams.remove(&stream);
        Ok(())
    }

    fn stream_synchronize(&mut self, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        for device in self.place.stream_devices(stream) {
            self.enter(device)?;
            self.synchronize_stream(s)?;
        }
        Ok(())
    }

    fn stream_query(&mut self, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        for device in self.place.stream_devices(stream) {
            self.enter(device)?;
            // SAFETY: a checked stream.
            let r = unsafe { (self.shared.runtime.hipStreamQuery)(s) };
            self.check(r, "hipStreamQuery")?;
        }
        Ok(())
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64, flags: u32) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        let e = self.event(event)?;
        // The waiting stream's device. A default stream is taken to be the
        // event's device's: the protocol does not carry the client's current
        // device.
        let device = match self.place.streams.get(&stream) {
            Some(&d) => d,
            None => self.place.event_device(event)?,
        };
        self.enter(device)?;
        // SAFETY: a checked stream and event.
        let r = unsafe { (self.shared.runtime.hipStreamWaitEvent)(s, e, flags) };
        self.check(r, "hipStreamWaitEvent")
    }

    fn event_create(&mut self, device: u32, flags: u32) -> Result<u64, CuError> {
        // hipEventDefault, BlockingSync, DisableTiming (CUDA's numbers); not
        // Interprocess (4), whose handles could not be shared anyway.
        if flags & !3 != 0 {
            return Err(invalid_value(format!("event flags {flags:#x}")));
        }
        self.enter(device)?;
        let mut event: Handle = std::ptr::null_mut();
        // SAFETY: an out-pointer; the device is current.
        let r = unsafe { (self.shared.runtime.hipEventCreateWithFlags)(&mut event, flags) };
        self.check(r, "hipEventCreateWithFlags")?;
        self.place.events.insert(event as u64, device);
        Ok(event as u64)
    }

    fn event_destroy(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.place.event_device(event)?)?;
        // SAFETY: an event of this session, destroyed once (removed below).
        let r = unsafe { (self.shared.runtime.hipEventDestroy)(e) };
        self.check(r, "hipEventDestroy")?;
        self.place.events.remove(&event);
        Ok(())
    }

    fn event_record(&mut self, event: u64, stream: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        let s = self.stream(stream)?;
        let device = self.place.event_device(event)?;
        // An event is recorded in a stream of its own device.
        self.place.stream_on(stream, device, || {
            format!("event {event:#x} is device {device}'s")
        })?;
        self.enter(device)?;
        // SAFETY: a checked event and stream.
        let r = unsafe { (self.shared.runtime.hipEventRecord)(e, s) };
        self.check(r, "hipEventRecord")
    }

    fn event_synchronize(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.place.event_device(event)?)?;
        // SAFETY: a checked event.
        let r = unsafe { (self.shared.runtime.hipEventSynchronize)(e) };
        self.check(r, "hipEventSynchronize")
    }

    fn event_query(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.place.event_device(event)?)?;
        // SAFETY: a checked event.
        let r = unsafe { (self.shared.runtime.hipEventQuery)(e) };
        self.check(r, "hipEventQuery")
    }

    fn event_elapsed_time(&mut self, start: u64, end: u64) -> Result<f32, CuError> {
        let (a, b) = (self.event(start)?, self.event(end)?);
        self.enter(self.place.event_device(end)?)?;
        let mut ms = 0f32;
        // SAFETY: checked events and an out-pointer.
        let r = unsafe { (self.shared.runtime.hipEventElapsedTime)(&mut ms, a, b) };
        self.check(r, "hipEventElapsedTime")?;
        Ok(ms)
    }

    /// Waits for the session's own work: the null stream and each stream it
    /// created (not `hipDeviceSynchronize`, which would wait for other sessions
    /// of the same process too).
    fn synchronize(&mut self) -> Result<(), CuError> {
        for device in self.place.used_devices() {
            self.enter(device)?;
            self.synchronize_stream(std::ptr::null_mut())?;
        }
        for (&s, &device) in &self.place.streams {
            self.enter(device)?;
            self.synchronize_stream(s as Handle)?;
        }
        Ok(())
    }

    // What HIP's module API has no counterpart for here.
    crate::checks::refused_families!();
    crate::checks::refused_vmm!();

    xpupool_protocol::server_only_operations!();
}

impl Drop for HipSession {
    fn drop(&mut self) {
        // Let in-flight work end before its memory goes; a broken device fails
        // these and everything after, which is logged and otherwise ignored.
        if let Err(e) = self.synchronize() {
            tracing::warn!(error = %e.message, "hip session teardown: synchronize");
        }
        let mut failures = Vec::new();
        // Each thing is destroyed with its own device current.
        let enter = |failures: &mut Vec<c_int>, device: u32| {
            if let Err(e) = self.shared.enter(device) {
                tracing::error!(error = %e.message, "hip session teardown: no device");
                failures.push(HIP_ERROR_NOT_SUPPORTED);
            }
        };
        let rt = &self.shared.runtime;
        for (device, mut times) in std::mem::take(&mut self.times) {
            enter(&mut failures, device);
            times.destroy(rt);
        }
        for (event, device) in std::mem::take(&mut self.place.events) {
            enter(&mut failures, device);
            // SAFETY: an event of this session, destroyed once.
            failures.push(unsafe { (rt.hipEventDestroy)(event as Handle) });
        }
        for (stream, device) in std::mem::take(&mut self.place.streams) {
            enter(&mut failures, device);
            // SAFETY: a stream of this session, destroyed once.
            failures.push(unsafe { (rt.hipStreamDestroy)(stream as Handle) });
        }
        for (_, module) in std::mem::take(&mut self.modules) {
            if let Some(raw) = module.raw {
                enter(&mut failures, module.device);
                // SAFETY: a module of this session, unloaded once.
                failures.push(unsafe { (rt.hipModuleUnload)(raw as Handle) });
            }
        }
        self.functions.clear();
        let homes = std::mem::take(&mut self.place.homes);
        for (address, _) in std::mem::take(&mut self.allocations) {
            enter(&mut failures, homes.get(&address).copied().unwrap_or(0));
            // SAFETY: an allocation of this session, freed once.
            failures.push(unsafe { (rt.hipFree)(address as *mut c_void) });
        }
        failures.retain(|&r| r != HIP_SUCCESS);
        if let Some(&first) = failures.first() {
            tracing::warn!(
                failures = failures.len(),
                first = %rt.error_name(first),
                "hip session teardown: some frees failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::rows_span;

    #[test]
    fn only_amd_code_objects_are_images() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[18..20].copy_from_slice(&224u16.to_le_bytes());
        assert!(is_code_object(&elf));
        let wire = Image::Elf(elf.clone()).to_wire();
        assert_eq!(code_object(&wire).unwrap(), elf);
        // A cubin (EM_CUDA, 190), PTX and garbage are refused as images.
        let mut cubin = elf.clone();
        cubin[18..20].copy_from_slice(&190u16.to_le_bytes());
        for wire in [
            Image::Elf(cubin).to_wire(),
            Image::Ptx(".version 8.0".to_owned()).to_wire(),
            b"garbage".to_vec(),
            Vec::new(),
        ] {
            assert_eq!(code_object(&wire).unwrap_err().code, code::INVALID_IMAGE);
        }
        assert!(!is_code_object(b"\x7fELF"));
    }

    #[test]
    fn kernel_arguments_are_the_explicit_bytes_aligned() {
        let params: Vec<u8> = (0..20).collect();
        let words = kernel_arguments(&params, 12).unwrap();
        assert_eq!(words.len(), 2);
        // SAFETY: reading the words' bytes.
        let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), 12) };
        assert_eq!(bytes, &params[..12]);
        assert!(kernel_arguments(&params, 0).unwrap().is_empty());
        assert_eq!(
            kernel_arguments(&params[..4], 8).unwrap_err().code,
            code::INVALID_VALUE
        );
    }

    #[test]
    fn memset_shapes_are_checked() {
        assert_eq!(rows_span(4, 64, 16, 3).unwrap(), (64, 192));
        assert_eq!(rows_span(1, 100, 10, 4).unwrap(), (10, 310));
        assert_eq!(rows_span(4, 8, 16, 1).unwrap(), (64, 64));
        assert!(rows_span(4, 8, 16, 2).is_err(), "rows overlap");
        assert!(rows_span(4, u64::MAX, 1, 3).is_err(), "wraps");
        assert!(rows_span(4, 8, u64::MAX, 1).is_err(), "wraps");
        assert!(uniform_bytes(0, 4));
        assert!(uniform_bytes(0xffff_ffff, 4));
        assert!(uniform_bytes(0x1234_4141, 2));
        assert!(!uniform_bytes(0x3f80_0000, 4));
        assert!(!uniform_bytes(0x0102, 2));
    }

    #[test]
    fn ranges_wrap_into_errors() {
        assert!(end_of(u64::MAX, 1).is_err());
        assert_eq!(end_of(16, 16).unwrap(), 32);
    }
}
