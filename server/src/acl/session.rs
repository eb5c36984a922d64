//! One client's session on CANN: its own tables of allocations, streams,
//! events and waiting executors, checked before every call.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_void};
use std::sync::Arc;

use serde_bytes::ByteBuf;
use xpupool_protocol::aclnn::{AclnnArg, AclnnPlan, MAX_EXECUTORS, MAX_HELD_BYTES};
use xpupool_protocol::api::{GlobalInfo, LaunchDims, ModuleInfo};
use xpupool_protocol::{code, Api, CuError, MAX_COPY_CHUNK};

use super::kernels::Binaries;
use super::operators::{self, Parameters};
use super::runtime::{
    Handle, PhysicalMemProp, ACL_SUCCESS, DEVICE_TO_DEVICE, DEVICE_TO_HOST, EVENT_COMPLETE,
    EVENT_TIME_LINE, HBM, HOST_TO_DEVICE, HUGE_FIRST, STREAM_COMPLETE,
};
use super::timing::KernelTimes;
use super::Shared;
use crate::checks::{
    end_of, fill_by_copies, invalid_handle, invalid_value, memset_2d_in, memset_in, uniform_bytes,
    within,
};
use crate::placement::Placement;

/// `ACL_EVENT_SYNC`: an event a host may wait for.
const EVENT_SYNC: u32 = 0x1;
/// The granularity of reservations and physical allocations (ACL's huge pages).
const VMM_GRANULARITY: u64 = 2 << 20;
/// `CU_EVENT_DISABLE_TIMING`.
const CU_EVENT_DISABLE_TIMING: u32 = 2;

/// What a host whose CANN predates virtual memory answers to it.
fn no_virtual_memory() -> CuError {
    unsupported("virtual memory (the host's CANN has no aclrtReserveMemAddress)")
}

pub(super) fn unsupported(operation: &str) -> CuError {
    CuError::new(
        code::NOT_SUPPORTED,
        format!("{operation} is not supported by the acl backend"),
    )
}

/// The second phase of an aclnn operator (`aclnnXxx`).
type SecondPhase = unsafe extern "C" fn(*mut c_void, u64, Handle, Handle) -> i32;

/// A physical allocation (`aclrtMallocPhysical`).
struct Physical {
    size: u64,
    device: u32,
    /// Mappings of it.
    mapped: u32,
    /// Released by the client while mapped: freed at its last unmapping.
    released: bool,
}

/// An executor between its two phases.
struct Waiting {
    operator: &'static str,
    /// The device it was prepared on, where it runs.
    device: u32,
    /// What its parameters take ([`AclnnArg::held_bytes`]).
    bytes: u64,
    second: SecondPhase,
    workspace: u64,
    parameters: Parameters,
}

pub(crate) struct AclSession {
    pub(super) shared: Arc<Shared>,
    /// Allocations: base → size.
    allocations: BTreeMap<u64, u64>,
    /// Its streams', events' and allocations' devices, and the devices used.
    pub(super) place: Placement,
    executors: HashMap<u64, Waiting>,
    /// Bytes the waiting executors' parameters take together.
    held: u64,
    /// Address reservations: start → (size, device).
    reservations: BTreeMap<u64, (u64, u32)>,
    physical: HashMap<u64, Physical>,
    /// Mappings: address → (size, physical handle).
    mappings: BTreeMap<u64, (u64, u64)>,
    /// Device time of its executions and launches, per device
    /// ([`Api::session_busy`]).
    pub(super) times: HashMap<u32, KernelTimes>,
    /// Its kernel binaries outside aclnn.
    pub(super) binaries: Binaries,
}

impl AclSession {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            allocations: BTreeMap::new(),
            place: Placement::default(),
            executors: HashMap::new(),
            held: 0,
            reservations: BTreeMap::new(),
            physical: HashMap::new(),
            mappings: BTreeMap::new(),
            times: HashMap::new(),
            binaries: Binaries::default(),
        }
    }

    pub(super) fn check(&self, r: c_int, what: &str) -> Result<(), CuError> {
        self.shared.cann.check(r, what)
    }

    /// The runtime's stream for a client stream handle: one of the session's, or
    /// the default one.
    pub(super) fn stream(&self, stream: u64) -> Result<Handle, CuError> {
        self.place.stream(stream)
    }

    fn event(&self, event: u64) -> Result<Handle, CuError> {
        self.place.event(event)
    }

    /// Makes `device`'s context current (checked against the backend's),
    /// noting it used.
    pub(super) fn enter(&self, device: u32) -> Result<(), CuError> {
        self.shared.enter(device)?;
        self.place.note(device);
        Ok(())
    }

    /// The device of the allocation or mapping `address` lies in; device 0 for
    /// an address of none (refused by the range checks anyway).
    fn home(&self, address: u64) -> u32 {
        self.place
            .home_in(&self.allocations, address)
            .or_else(|| {
                let (_, &(_, handle)) = self
                    .mappings
                    .range(..=address)
                    .next_back()
                    .filter(|(&b, &(l, _))| address < b.saturating_add(l))?;
                self.physical.get(&handle).map(|p| p.device)
            })
            .unwrap_or(0)
    }

    /// The device a copy or memset in `stream` over `address` runs on: the
    /// stream's, or for a default stream the memory's.
    fn device_for(&self, stream: u64, address: u64) -> u32 {
        self.place.device_for(stream, || self.home(address))
    }

    /// Checks that `[address, address+len)` lies inside one allocation of this session.
    pub(super) fn range(&self, address: u64, len: u64) -> Result<(), CuError> {
        let end = end_of(address, len)?;
        if within(&self.allocations, address, end) || self.mapped(address, end) {
            Ok(())
        } else {
            Err(invalid_value(format!(
                "[{address:#x}, +{len}) is not inside an allocation of this session"
            )))
        }
    }

    /// Whether `[address, end)` is covered by mappings without a gap.
    fn mapped(&self, address: u64, end: u64) -> bool {
        let Some((&base, &(size, _))) = self.mappings.range(..=address).next_back() else {
            return false;
        };
        let mut reached = base.saturating_add(size);
        if reached <= address {
            return false;
        }
        for (&next, &(size, _)) in self.mappings.range(reached..) {
            if reached >= end || next != reached {
                break;
            }
            reached = next.saturating_add(size);
        }
        reached >= end
    }

    /// The mappings that exactly tile `[ptr, ptr+size)`, in order.
    fn tiling(&self, ptr: u64, size: u64) -> Result<Vec<u64>, CuError> {
        let end = end_of(ptr, size)?;
        let mut at = ptr;
        let mut found = Vec::new();
        for (&base, &(len, _)) in self.mappings.range(ptr..end) {
            if base != at {
                break;
            }
            at = base + len;
            found.push(base);
        }
        if size == 0 || at != end {
            return Err(invalid_value(format!(
                "[{ptr:#x}, +{size}) is not whole mappings of this session"
            )));
        }
        Ok(found)
    }

    /// Unmaps the mapping at `base`, freeing its physical allocation if the
    /// client released it.
    fn unmap(&mut self, base: u64) -> Result<(), CuError> {
        let unmap = self
            .shared
            .cann
            .runtime
            .aclrtUnmapMem
            .ok_or_else(no_virtual_memory)?;
        self.enter(self.home(base))?;
        // SAFETY: a mapping of this session, unmapped once (removed below).
        let r = unsafe { unmap(base as *mut c_void) };
        self.check(r, "aclrtUnmapMem")?;
        let Some((_, handle)) = self.mappings.remove(&base) else {
            return Ok(());
        };
        if let Some(p) = self.physical.get_mut(&handle) {
            p.mapped = p.mapped.saturating_sub(1);
            if p.released && p.mapped == 0 {
                // The unmapping stands: a failure to free is the runtime's to log.
                if let Err(e) = self.free_physical(handle) {
                    tracing::warn!(error = %e.message, "acl: freeing unmapped physical memory");
                }
            }
        }
        Ok(())
    }

    fn free_physical(&mut self, handle: u64) -> Result<(), CuError> {
        let free = self
            .shared
            .cann
            .runtime
            .aclrtFreePhysical
            .ok_or_else(no_virtual_memory)?;
        if let Some(p) = self.physical.get(&handle) {
            self.enter(p.device)?;
        }
        // SAFETY: a physical allocation of this session, mapped nowhere, freed
        // once (removed below).
        let r = unsafe { free(handle) };
        self.check(r, "aclrtFreePhysical")?;
        self.physical.remove(&handle);
        Ok(())
    }

    fn synchronize_stream(&self, stream: Handle) -> Result<(), CuError> {
        // SAFETY: a stream checked against this session's table (or the default one).
        let r = unsafe { (self.shared.cann.runtime.aclrtSynchronizeStream)(stream) };
        self.check(r, "aclrtSynchronizeStream")
    }

    /// Copies between the host and checked device memory once `stream` has
    /// done its work (ACL's asynchronous copies want pinned host memory, which
    /// a request's buffer is not).
    fn copy_now(
        &self,
        dst: *mut c_void,
        src: *const c_void,
        len: usize,
        kind: c_int,
        stream: Handle,
    ) -> Result<(), CuError> {
        self.synchronize_stream(stream)?;
        // SAFETY: the caller's ranges: device memory of this session and a host
        // buffer of `len` bytes that outlives the call.
        let r = unsafe { (self.shared.cann.runtime.aclrtMemcpy)(dst, len, src, len, kind) };
        self.check(r, "aclrtMemcpy")
    }

    /// Fills `count` elements of `elem_size` bytes at `dst` (checked) with
    /// `value`: bytewise where that is the same, else by copying the pattern.
    fn fill(
        &self,
        dst: u64,
        value: u32,
        elem_size: u8,
        count: u64,
        stream: Handle,
    ) -> Result<(), CuError> {
        let bytes = count * u64::from(elem_size);
        if uniform_bytes(value, elem_size) {
            let len = usize::try_from(bytes).map_err(|_| invalid_value("memset too large"))?;
            // SAFETY: `bytes` at `dst` are inside this session's memory.
            let r = unsafe {
                (self.shared.cann.runtime.aclrtMemsetAsync)(
                    dst as *mut c_void,
                    len,
                    (value & 0xff) as i32,
                    len,
                    stream,
                )
            };
            return self.check(r, "aclrtMemsetAsync");
        }
        fill_by_copies(value, elem_size, bytes, |at, chunk| {
            self.copy_now(
                (dst + at) as *mut c_void,
                chunk.as_ptr().cast(),
                chunk.len(),
                HOST_TO_DEVICE,
                stream,
            )
        })
    }

    /// Drops a waiting executor's descriptors (and the executor itself, if it
    /// was never run).
    fn discard(&self, executor: u64, waiting: Waiting, run: bool) {
        if !run {
            // SAFETY: an executor this session's first phase made, not run.
            let r = unsafe {
                (self.shared.cann.descriptors.aclDestroyAclOpExecutor)(executor as Handle)
            };
            if r != ACL_SUCCESS {
                tracing::warn!(
                    operator = waiting.operator,
                    status = r,
                    "aclDestroyAclOpExecutor failed"
                );
            }
        }
        waiting.parameters.destroy(&self.shared.cann);
    }
}

/// Copies from the transport's memory go through the ordinary copy operations.
impl crate::backend::DirectCopy for AclSession {}

impl Api for AclSession {
    fn mem_alloc(&mut self, device: u32, bytes: u64) -> Result<u64, CuError> {
        if bytes == 0 {
            return Err(invalid_value("zero-byte allocation"));
        }
        let len = usize::try_from(bytes)
            .map_err(|_| CuError::new(code::OUT_OF_MEMORY, "allocation too large"))?;
        self.enter(device)?;
        let mut address: *mut c_void = std::ptr::null_mut();
        // SAFETY: an out-pointer; the context is current.
        let r = unsafe { (self.shared.cann.runtime.aclrtMalloc)(&mut address, len, HUGE_FIRST) };
        self.check(r, "aclrtMalloc")?;
        if address.is_null() {
            return Err(CuError::new(code::OUT_OF_MEMORY, "aclrtMalloc gave NULL"));
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
        let r = unsafe { (self.shared.cann.runtime.aclrtFree)(ptr as *mut c_void) };
        self.check(r, "aclrtFree")?;
        self.allocations.remove(&ptr);
        self.place.homes.remove(&ptr);
        Ok(())
    }

    fn mem_get_info(&mut self, device: u32) -> Result<(u64, u64), CuError> {
        self.enter(device)?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two out-pointers; the context is current.
        let r = unsafe { (self.shared.cann.runtime.aclrtGetMemInfo)(HBM, &mut free, &mut total) };
        self.check(r, "aclrtGetMemInfo")?;
        Ok((free as u64, total as u64))
    }

    fn memcpy_htod(&mut self, dst: u64, data: ByteBuf, stream: u64) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        self.range(dst, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.enter(self.device_for(stream, dst))?;
        self.copy_now(
            dst as *mut c_void,
            data.as_ptr().cast(),
            data.len(),
            HOST_TO_DEVICE,
            s,
        )
    }

    fn memcpy_dtoh(&mut self, src: u64, len: u64, stream: u64) -> Result<ByteBuf, CuError> {
        let s = self.stream(stream)?;
        if len > MAX_COPY_CHUNK as u64 {
            return Err(invalid_value("copy chunk over the protocol limit"));
        }
        self.range(src, len)?;
        let mut out = vec![0u8; len as usize];
        if len > 0 {
            self.enter(self.device_for(stream, src))?;
            self.copy_now(
                out.as_mut_ptr().cast(),
                src as *const c_void,
                out.len(),
                DEVICE_TO_HOST,
                s,
            )?;
        }
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
            (self.shared.cann.runtime.aclrtMemcpyAsync)(
                dst as *mut c_void,
                len as usize,
                src as *const c_void,
                len as usize,
                DEVICE_TO_DEVICE,
                s,
            )
        };
        self.check(r, "aclrtMemcpyAsync")
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

    fn module_load_cached(&mut self, _: u32, _: [u8; 32]) -> Result<Option<ModuleInfo>, CuError> {
        Ok(None)
    }

    fn module_load(&mut self, device: u32, image: ByteBuf) -> Result<ModuleInfo, CuError> {
        self.load_binary(device, &image)
    }

    fn module_get_global(&mut self, module: u64, _: String) -> Result<GlobalInfo, CuError> {
        Err(invalid_handle("module", module))
    }

    fn module_unload(&mut self, module: u64) -> Result<(), CuError> {
        self.unload_binary(module)
    }

    fn function_set_attribute(&mut self, function: u64, _: u32, _: i32) -> Result<(), CuError> {
        Err(invalid_handle("function", function))
    }

    fn function_get_attribute(&mut self, function: u64, _: u32) -> Result<i32, CuError> {
        Err(invalid_handle("function", function))
    }

    fn launch_kernel(
        &mut self,
        function: u64,
        _: LaunchDims,
        _: u64,
        _: ByteBuf,
    ) -> Result<(), CuError> {
        Err(invalid_handle("function", function))
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
            &shared.cann,
            |d| shared.enter(d),
        ))
    }

    fn stream_create(&mut self, device: u32, flags: u32, _priority: i32) -> Result<u64, CuError> {
        if flags & !1 != 0 {
            return Err(invalid_value(format!("stream flags {flags:#x}")));
        }
        self.enter(device)?;
        let mut stream: Handle = std::ptr::null_mut();
        // SAFETY: an out-pointer; the context is current.
        let r = unsafe { (self.shared.cann.runtime.aclrtCreateStream)(&mut stream) };
        self.check(r, "aclrtCreateStream")?;
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
        let r = unsafe { (self.shared.cann.runtime.aclrtDestroyStream)(stream as Handle) };
        self.check(r, "aclrtDestroyStream")?;
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
            let mut status = 0;
            // SAFETY: a checked stream; an out-pointer.
            let r = unsafe { (self.shared.cann.runtime.aclrtStreamQuery)(s, &mut status) };
            self.check(r, "aclrtStreamQuery")?;
            if status != STREAM_COMPLETE {
                return Err(CuError::new(
                    code::NOT_READY,
                    "the stream has work in flight",
                ));
            }
        }
        Ok(())
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64, _flags: u32) -> Result<(), CuError> {
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
        let r = unsafe { (self.shared.cann.runtime.aclrtStreamWaitEvent)(s, e) };
        self.check(r, "aclrtStreamWaitEvent")
    }

    fn event_create(&mut self, device: u32, flags: u32) -> Result<u64, CuError> {
        if flags & !3 != 0 {
            return Err(invalid_value(format!("event flags {flags:#x}")));
        }
        let acl_flags = if flags & CU_EVENT_DISABLE_TIMING == 0 {
            EVENT_SYNC | EVENT_TIME_LINE
        } else {
            EVENT_SYNC
        };
        self.enter(device)?;
        let mut event: Handle = std::ptr::null_mut();
        // SAFETY: an out-pointer; the context is current.
        let r =
            unsafe { (self.shared.cann.runtime.aclrtCreateEventWithFlag)(&mut event, acl_flags) };
        self.check(r, "aclrtCreateEventWithFlag")?;
        self.place.events.insert(event as u64, device);
        Ok(event as u64)
    }

    fn event_destroy(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.place.event_device(event)?)?;
        // SAFETY: an event of this session, destroyed once (removed below).
        let r = unsafe { (self.shared.cann.runtime.aclrtDestroyEvent)(e) };
        self.check(r, "aclrtDestroyEvent")?;
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
        let r = unsafe { (self.shared.cann.runtime.aclrtRecordEvent)(e, s) };
        self.check(r, "aclrtRecordEvent")
    }

    fn event_synchronize(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.place.event_device(event)?)?;
        // SAFETY: a checked event.
        let r = unsafe { (self.shared.cann.runtime.aclrtSynchronizeEvent)(e) };
        self.check(r, "aclrtSynchronizeEvent")
    }

    fn event_query(&mut self, event: u64) -> Result<(), CuError> {
        let e = self.event(event)?;
        self.enter(self.place.event_device(event)?)?;
        let mut status = 0;
        // SAFETY: a checked event; an out-pointer.
        let r = unsafe { (self.shared.cann.runtime.aclrtQueryEventStatus)(e, &mut status) };
        self.check(r, "aclrtQueryEventStatus")?;
        if status == EVENT_COMPLETE {
            Ok(())
        } else {
            Err(CuError::new(code::NOT_READY, "the event has not completed"))
        }
    }

    fn event_elapsed_time(&mut self, start: u64, end: u64) -> Result<f32, CuError> {
        let (a, b) = (self.event(start)?, self.event(end)?);
        self.enter(self.place.event_device(end)?)?;
        let mut ms = 0f32;
        // SAFETY: checked events and an out-pointer.
        let r = unsafe { (self.shared.cann.runtime.aclrtEventElapsedTime)(&mut ms, a, b) };
        self.check(r, "aclrtEventElapsedTime")?;
        Ok(ms)
    }

    /// Waits for the session's own work: the default stream and each stream it
    /// created (not `aclrtSynchronizeDevice`, which would wait for other
    /// sessions of the same process too).
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

    fn launch_with_args(
        &mut self,
        function: u64,
        blocks: u32,
        stream: u64,
        args: ByteBuf,
        placeholders: Vec<xpupool_protocol::api::Placeholder>,
    ) -> Result<(), CuError> {
        self.launch_args(function, blocks, stream, args.into_vec(), placeholders)
    }

    fn launch_with_device_args(
        &mut self,
        function: u64,
        blocks: u32,
        stream: u64,
        args: u64,
        size: u64,
    ) -> Result<(), CuError> {
        self.launch_device_args(function, blocks, stream, args, size)
    }

    fn aclnn_prepare(
        &mut self,
        device: u32,
        operator: String,
        args: Vec<AclnnArg>,
    ) -> Result<AclnnPlan, CuError> {
        let op = operators::find(&operator).ok_or_else(|| {
            unsupported(&format!(
                "{operator:.64}, which no aclnn header xpupool was built with declares,"
            ))
        })?;
        let bytes: u64 = args.iter().map(AclnnArg::held_bytes).sum();
        if self.executors.len() >= MAX_EXECUTORS || self.held + bytes > MAX_HELD_BYTES {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!(
                    "{} aclnn executors of {} bytes wait for their second phase (at most {MAX_EXECUTORS}, {MAX_HELD_BYTES} bytes)",
                    self.executors.len(),
                    self.held
                ),
            ));
        }
        let phases = self
            .shared
            .phases(op.name)
            .ok_or_else(|| unsupported(&format!("{} (the host's libopapi has not it)", op.name)))?;
        self.enter(device)?;
        let inside = |address, len| self.range(address, len);
        let (values, parameters) = operators::arguments(&self.shared.cann, op, &args, &inside)?;
        let (mut workspace, mut executor) = (0u64, std::ptr::null_mut());
        // SAFETY: `phases.first` is the operator's first phase, whose header
        // declares `op.kinds`; `values` has one of each, and the descriptors they
        // point at live in `parameters`.
        let r = unsafe { (op.first_phase)(phases.first, &values, &mut workspace, &mut executor) };
        let failed = self
            .check(r, &format!("{}GetWorkspaceSize", op.name))
            .err()
            .or_else(|| {
                executor
                    .is_null()
                    .then(|| CuError::new(code::UNKNOWN, format!("{} made no executor", op.name)))
            });
        if let Some(e) = failed {
            parameters.destroy(&self.shared.cann);
            return Err(e);
        }
        // SAFETY: the operator's second phase, of the type every aclnn header declares.
        let second: SecondPhase = unsafe { std::mem::transmute(phases.second) };
        self.held += bytes;
        let waiting = Waiting {
            operator: op.name,
            device,
            bytes,
            second,
            workspace,
            parameters,
        };
        if let Some(stale) = self.executors.insert(executor as u64, waiting) {
            // CANN handed out an address still listed: the old one was freed.
            self.held -= stale.bytes;
            stale.parameters.destroy(&self.shared.cann);
        }
        Ok(AclnnPlan {
            workspace_size: workspace,
            executor: executor as u64,
        })
    }

    fn aclnn_run(
        &mut self,
        executor: u64,
        workspace: u64,
        workspace_size: u64,
        stream: u64,
    ) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        let w = self
            .executors
            .get(&executor)
            .ok_or_else(|| invalid_handle("aclnn executor", executor))?;
        if workspace_size < w.workspace {
            return Err(invalid_value(format!(
                "{}: a workspace of {workspace_size} bytes for one of {}",
                w.operator, w.workspace
            )));
        }
        // It runs on the device it was prepared on, in a stream of that device.
        let device = w.device;
        self.place.stream_on(stream, device, || {
            format!("{} was prepared on device {device}", w.operator)
        })?;
        if workspace_size > 0 {
            self.range(workspace, workspace_size)?;
        }
        let Some(w) = self.executors.remove(&executor) else {
            return Err(invalid_handle("aclnn executor", executor));
        };
        self.held -= w.bytes;
        self.enter(device)?;
        // Its memory may have been freed (or unmapped) since the first phase.
        if let Some(&(address, len)) = w
            .parameters
            .spans()
            .iter()
            .find(|&&(a, l)| self.range(a, l).is_err())
        {
            let operator = w.operator;
            self.discard(executor, w, false);
            return Err(invalid_value(format!(
                "{operator}: [{address:#x}, +{len}) was freed after the operator's first phase"
            )));
        }
        let times = self.times.entry(device).or_default();
        let timed = times.before(&self.shared.cann, s);
        // SAFETY: an executor this session's first phase made, run once (removed
        // above), with a workspace of this session's memory at least as large as
        // it asked for.
        let r = unsafe {
            (w.second)(
                workspace as *mut c_void,
                workspace_size,
                executor as Handle,
                s,
            )
        };
        if let (Some(pair), Some(times)) = (timed, self.times.get_mut(&device)) {
            times.after(&self.shared.cann, s, pair, r == ACL_SUCCESS);
        }
        let result = self.check(r, w.operator);
        self.discard(executor, w, true);
        result
    }

    fn aclnn_destroy(&mut self, executor: u64) -> Result<(), CuError> {
        let w = self
            .executors
            .remove(&executor)
            .ok_or_else(|| invalid_handle("aclnn executor", executor))?;
        self.held -= w.bytes;
        self.enter(w.device)?;
        self.discard(executor, w, false);
        Ok(())
    }

    fn mem_address_reserve(
        &mut self,
        device: u32,
        size: u64,
        alignment: u64,
    ) -> Result<u64, CuError> {
        if size == 0
            || !size.is_multiple_of(VMM_GRANULARITY)
            || (alignment != 0 && !alignment.is_power_of_two())
        {
            return Err(invalid_value(format!(
                "a reservation of {size} bytes aligned to {alignment}: a non-zero multiple of {VMM_GRANULARITY} is needed"
            )));
        }
        let len = usize::try_from(size)
            .map_err(|_| CuError::new(code::OUT_OF_MEMORY, "reservation too large"))?;
        let reserve = self
            .shared
            .cann
            .runtime
            .aclrtReserveMemAddress
            .ok_or_else(no_virtual_memory)?;
        self.enter(device)?;
        let mut start: *mut c_void = std::ptr::null_mut();
        // SAFETY: an out-pointer; alignment 0, no address asked for and flags 0,
        // as ACL requires.
        let r = unsafe { reserve(&mut start, len, 0, std::ptr::null_mut(), 0) };
        self.check(r, "aclrtReserveMemAddress")?;
        if alignment > VMM_GRANULARITY && !(start as u64).is_multiple_of(alignment) {
            let release = self
                .shared
                .cann
                .runtime
                .aclrtReleaseMemAddress
                .ok_or_else(no_virtual_memory)?;
            // SAFETY: the reservation just made.
            unsafe { release(start) };
            return Err(unsupported(&format!(
                "a reservation aligned to {alignment} bytes"
            )));
        }
        self.reservations.insert(start as u64, (size, device));
        Ok(start as u64)
    }

    fn mem_address_free(&mut self, ptr: u64, size: u64) -> Result<(), CuError> {
        let Some(&(_, device)) = self.reservations.get(&ptr).filter(|&&(s, _)| s == size) else {
            return Err(invalid_value(format!(
                "[{ptr:#x}, +{size}) is not a reservation of this session"
            )));
        };
        let end = end_of(ptr, size)?;
        if self.mappings.range(ptr..end).next().is_some() {
            return Err(invalid_value("a reservation with mappings in it"));
        }
        let release = self
            .shared
            .cann
            .runtime
            .aclrtReleaseMemAddress
            .ok_or_else(no_virtual_memory)?;
        self.enter(device)?;
        // SAFETY: a reservation of this session with nothing mapped, released once.
        let r = unsafe { release(ptr as *mut c_void) };
        self.check(r, "aclrtReleaseMemAddress")?;
        self.reservations.remove(&ptr);
        Ok(())
    }

    fn mem_create(&mut self, device: u32, size: u64) -> Result<u64, CuError> {
        if size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(invalid_value(format!(
                "a physical allocation of {size} bytes: a non-zero multiple of {VMM_GRANULARITY} is needed"
            )));
        }
        let len = usize::try_from(size)
            .map_err(|_| CuError::new(code::OUT_OF_MEMORY, "allocation too large"))?;
        let malloc = self
            .shared
            .cann
            .runtime
            .aclrtMallocPhysical
            .ok_or_else(no_virtual_memory)?;
        self.enter(device)?;
        let prop = PhysicalMemProp::device(device);
        let mut handle = 0u64;
        // SAFETY: an out-pointer and a property structure that live through the call.
        let r = unsafe { malloc(&mut handle, len, &prop, 0) };
        self.check(r, "aclrtMallocPhysical")?;
        self.physical.insert(
            handle,
            Physical {
                size,
                device,
                mapped: 0,
                released: false,
            },
        );
        Ok(handle)
    }

    fn mem_release(&mut self, handle: u64) -> Result<(), CuError> {
        let p = self
            .physical
            .get_mut(&handle)
            .filter(|p| !p.released)
            .ok_or_else(|| invalid_handle("physical allocation", handle))?;
        p.released = true;
        if p.mapped > 0 {
            return Ok(());
        }
        self.free_physical(handle)
    }

    fn mem_map(&mut self, ptr: u64, size: u64, offset: u64, handle: u64) -> Result<(), CuError> {
        let p = self
            .physical
            .get(&handle)
            .filter(|p| !p.released)
            .ok_or_else(|| invalid_handle("physical allocation", handle))?;
        if offset != 0 || size != p.size {
            return Err(unsupported(
                "mapping part of a physical allocation (ACL maps whole ones)",
            ));
        }
        let p_device = p.device;
        let end = end_of(ptr, size)?;
        let inside = self
            .reservations
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&base, &(len, _))| end <= base.saturating_add(len));
        let overlaps = self
            .mappings
            .range(..end)
            .next_back()
            .is_some_and(|(&b, &(l, _))| b.saturating_add(l) > ptr);
        if !inside || overlaps || !ptr.is_multiple_of(VMM_GRANULARITY) {
            return Err(invalid_value(format!(
                "[{ptr:#x}, +{size}) is not a free, aligned part of a reservation of this session"
            )));
        }
        let map = self
            .shared
            .cann
            .runtime
            .aclrtMapMem
            .ok_or_else(no_virtual_memory)?;
        self.enter(p_device)?;
        // SAFETY: an unmapped, aligned part of this session's reservation and a
        // whole physical allocation of it.
        let r = unsafe { map(ptr as *mut c_void, size as usize, 0, handle, 0) };
        self.check(r, "aclrtMapMem")?;
        self.mappings.insert(ptr, (size, handle));
        if let Some(p) = self.physical.get_mut(&handle) {
            p.mapped += 1;
        }
        Ok(())
    }

    fn mem_unmap(&mut self, ptr: u64, size: u64) -> Result<(), CuError> {
        let found = self.tiling(ptr, size)?;
        for base in found {
            self.unmap(base)?;
        }
        Ok(())
    }

    /// ACL's mappings are readable and writable by their device from the start.
    fn mem_set_access(
        &mut self,
        ptr: u64,
        size: u64,
        device: u32,
        flags: u32,
    ) -> Result<(), CuError> {
        let found = self.tiling(ptr, size)?;
        self.shared.enter(device)?;
        if found.iter().any(|&base| self.home(base) != device) {
            return Err(unsupported(&format!(
                "access from device {device} to another device's mapping"
            )));
        }
        match flags {
            3 => Ok(()),
            _ => Err(unsupported(&format!(
                "access flags {flags} (ACL's mappings are read-write)"
            ))),
        }
    }

    crate::checks::refused_families!();

    xpupool_protocol::server_only_operations!();
}

impl Drop for AclSession {
    fn drop(&mut self) {
        // Let in-flight work end before its memory goes; a broken device fails
        // these and everything after, which is logged and otherwise ignored.
        if let Err(e) = self.synchronize() {
            tracing::warn!(error = %e.message, "acl session teardown: synchronize");
        }
        // Each thing is destroyed with its own device's context current.
        let shared = self.shared.clone();
        let enter = |failures: &mut Vec<c_int>, device: u32| {
            if let Err(e) = shared.enter(device) {
                tracing::error!(error = %e.message, "acl session teardown: no context");
                failures.push(-1);
            }
        };
        let mut failures = Vec::new();
        for (device, mut times) in std::mem::take(&mut self.times) {
            enter(&mut failures, device);
            times.destroy(&self.shared.cann);
        }
        for (executor, waiting) in std::mem::take(&mut self.executors) {
            enter(&mut failures, waiting.device);
            self.discard(executor, waiting, false);
        }
        let mut vmm_failures = Vec::new();
        for base in self.mappings.keys().copied().collect::<Vec<_>>() {
            if let Err(e) = self.unmap(base) {
                vmm_failures.push(e.message);
            }
        }
        for handle in self.physical.keys().copied().collect::<Vec<_>>() {
            if let Err(e) = self.free_physical(handle) {
                vmm_failures.push(e.message);
            }
        }
        if let Some(release) = self.shared.cann.runtime.aclrtReleaseMemAddress {
            for (start, (_, device)) in std::mem::take(&mut self.reservations) {
                enter(&mut failures, device);
                // SAFETY: a reservation of this session, nothing mapped in it now.
                let r = unsafe { release(start as *mut c_void) };
                if r != ACL_SUCCESS {
                    vmm_failures.push(format!("aclrtReleaseMemAddress: {r}"));
                }
            }
        }
        if let Some(first) = vmm_failures.first() {
            tracing::warn!(failures = vmm_failures.len(), first = %first, "acl session teardown: virtual memory");
        }
        failures.extend(self.unload_all_binaries());
        let rt = &self.shared.cann.runtime;
        for (event, device) in std::mem::take(&mut self.place.events) {
            enter(&mut failures, device);
            // SAFETY: an event of this session, destroyed once.
            failures.push(unsafe { (rt.aclrtDestroyEvent)(event as Handle) });
        }
        for (stream, device) in std::mem::take(&mut self.place.streams) {
            enter(&mut failures, device);
            // SAFETY: a stream of this session, destroyed once.
            failures.push(unsafe { (rt.aclrtDestroyStream)(stream as Handle) });
        }
        let homes = std::mem::take(&mut self.place.homes);
        for (address, _) in std::mem::take(&mut self.allocations) {
            enter(&mut failures, homes.get(&address).copied().unwrap_or(0));
            // SAFETY: an allocation of this session, freed once.
            failures.push(unsafe { (rt.aclrtFree)(address as *mut c_void) });
        }
        failures.retain(|&r| r != ACL_SUCCESS);
        if let Some(&first) = failures.first() {
            tracing::warn!(
                failures = failures.len(),
                first,
                "acl session teardown: some releases failed"
            );
        }
    }
}
