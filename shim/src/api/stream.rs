//! Streams, events and host callbacks. Stream and event handles are the server's;
//! the NULL stream and the two special handles (legacy, per-thread) pass through.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

use xpupool_client::trace::sync_point;
use xpupool_cuda_types::*;
use xpupool_protocol::{Calls, Request};

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock, stream_arg, StreamInfo};

fn create(out: *mut CUstream, flags: c_uint, priority: c_int) -> Res {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    let context = d.current_context()?;
    let handle = d
        .conn
        .stream_create(context.device as u32, flags, priority)
        .map_err(fail)?;
    let info = StreamInfo {
        flags,
        priority: priority.clamp(-5, 0),
        context: std::sync::Arc::as_ptr(&context) as usize,
        id: d.fresh_id(),
    };
    lock(&d.streams).insert(handle, info);
    put(out, handle as CUstream)
}

/// What we know of a stream; the default streams belong to the current context.
fn info(stream: u64) -> Res<StreamInfo> {
    let d = driver()?;
    if stream <= 2 {
        let context = d.current_context()?;
        return Ok(StreamInfo {
            flags: 0,
            priority: 0,
            context: std::sync::Arc::as_ptr(&context) as usize,
            id: stream,
        });
    }
    lock(&d.streams)
        .get(&stream)
        .copied()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

fn synchronize(stream: u64) -> Res {
    super::graph::not_in_capture(stream)?;
    sync_point();
    driver()?.conn.stream_synchronize(stream).map_err(fail)
}

fn query(stream: u64) -> Res {
    super::graph::not_in_capture(stream)?;
    sync_point();
    driver()?.conn.stream_query(stream).map_err(fail)
}

/// Checks an event and a stream here, so that what uses them need not wait for
/// the server.
fn live(event: CUevent, stream: u64) -> Res<&'static crate::state::Driver> {
    let d = driver()?;
    if !lock(&d.events).contains(&(event as u64)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    info(stream)?;
    Ok(d)
}

fn wait_event(stream: u64, event: CUevent, flags: c_uint) -> Res {
    if flags & !CU_EVENT_WAIT_EXTERNAL != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = live(event, stream)?;
    let request = Request::StreamWaitEvent {
        stream,
        event: event as u64,
        flags,
    };
    super::graph::submit(d, request)
}

fn record(event: CUevent, stream: u64) -> Res {
    let d = live(event, stream)?;
    let request = Request::EventRecord {
        event: event as u64,
        stream,
    };
    super::graph::submit(d, request)
}

/// Runs a host function in stream order: once the work before it in the stream is
/// done, on the calling thread, before anything later in the stream is submitted.
pub(crate) fn host_func(stream: u64, f: CUhostFn, data: *mut c_void) -> Res {
    let f = f.ok_or(CUDA_ERROR_INVALID_VALUE)?;
    // In a capture, a host node: it runs when the graph does.
    let op = super::graph::HostOp::Func {
        f: f as usize,
        data: data as usize,
    };
    if super::graph::capture_host(stream, op)? {
        return Ok(());
    }
    synchronize(stream)?;
    // SAFETY: the application's callback with its own argument.
    unsafe { f(data) };
    Ok(())
}

fn add_callback(
    stream: CUstream,
    callback: CUstreamCallback,
    data: *mut c_void,
    flags: c_uint,
    per_thread: bool,
) -> Res {
    let callback = callback.ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if flags != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let status = synchronize(stream_arg(stream, per_thread))
        .err()
        .unwrap_or(CUDA_SUCCESS);
    // SAFETY: the application's callback, called as the driver would.
    unsafe { callback(stream, status, data) };
    Ok(())
}

fn elapsed(out: *mut f32, start: CUevent, end: CUevent) -> Res {
    sync_point();
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    put(
        out,
        driver()?
            .conn
            .event_elapsed_time(start as u64, end as u64)
            .map_err(fail)?,
    )
}

fn capture_status(stream: u64, out: *mut CUstreamCaptureStatus) -> Res {
    info(stream)?;
    put(out, super::graph::status(stream).0)
}

/// `cuStreamGetCaptureInfo`: the stream's capture status and id, and the graph it
/// is capturing into; dependencies are not listed (a capture's nodes run in the
/// order they were issued).
fn capture_info(
    stream: u64,
    status: *mut CUstreamCaptureStatus,
    id: *mut cuuint64_t,
    graph: *mut CUgraph,
    deps: *mut *const CUgraphNode,
    edges: *mut *const CUgraphEdgeData,
    count: *mut usize,
) -> Res {
    capture_status(stream, status)?;
    let (_, capture) = super::graph::status(stream);
    if !id.is_null() {
        put(id, capture)?;
    }
    if !graph.is_null() {
        put(graph, super::graph::capture_graph(capture) as CUgraph)?;
    }
    if !deps.is_null() {
        put(deps, std::ptr::null())?;
    }
    if !edges.is_null() {
        put(edges, std::ptr::null())?;
    }
    if !count.is_null() {
        put(count, 0)?;
    }
    Ok(())
}

/// Stream attributes the application set: performance hints (the L2 access policy
/// window, the synchronisation policy, memory sync domains) that change no result,
/// kept so that reading them back gives what was set.
fn attributes() -> &'static std::sync::Mutex<HashMap<(u64, CUstreamAttrID), Stored>> {
    static ATTRIBUTES: OnceLock<std::sync::Mutex<HashMap<(u64, CUstreamAttrID), Stored>>> =
        OnceLock::new();
    ATTRIBUTES.get_or_init(Default::default)
}

/// A value as the application gave it; its pointers (an access window's base) are
/// addresses only, never dereferenced here.
#[derive(Clone, Copy)]
struct Stored(CUstreamAttrValue);

// SAFETY: plain data; the pointers inside are never dereferenced.
unsafe impl Send for Stored {}

fn set_attribute(stream: u64, id: CUstreamAttrID, value: *const CUstreamAttrValue) -> Res {
    info(stream)?;
    if value.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: checked non-null; the caller passes a CUstreamAttrValue.
    let value = unsafe { *value };
    match id {
        CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW => {
            // SAFETY: the member `id` names.
            let window = unsafe { value.accessPolicyWindow };
            if !(0.0..=1.0).contains(&window.hitRatio) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
        }
        CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY
        | CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP
        | CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN => {}
        // A stream's priority is fixed at its creation here.
        CU_LAUNCH_ATTRIBUTE_PRIORITY => return Err(CUDA_ERROR_NOT_SUPPORTED),
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    lock(attributes()).insert((stream, id), Stored(value));
    Ok(())
}

fn get_attribute(stream: u64, id: CUstreamAttrID, out: *mut CUstreamAttrValue) -> Res {
    let stream_info = info(stream)?;
    // SAFETY: an all-zero union is a valid value of each member.
    let mut value: CUstreamAttrValue = unsafe { std::mem::zeroed() };
    match id {
        CU_LAUNCH_ATTRIBUTE_PRIORITY => value.priority = stream_info.priority,
        CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW
        | CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY
        | CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP
        | CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN => match lock(attributes()).get(&(stream, id)) {
            Some(set) => value = set.0,
            None if id == CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY => {
                value.syncPolicy = CU_SYNC_POLICY_AUTO
            }
            None => {}
        },
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    put(out, value)
}

fn copy_attributes(dst: u64, src: u64) -> Res {
    info(dst)?;
    info(src)?;
    let mut all = lock(attributes());
    let from: Vec<(CUstreamAttrID, Stored)> = all
        .iter()
        .filter(|((s, _), _)| *s == src)
        .map(|((_, id), v)| (*id, *v))
        .collect();
    all.retain(|(s, _), _| *s != dst);
    for (id, value) in from {
        all.insert((dst, id), value);
    }
    Ok(())
}

export! {
    fn cuStreamSetAttribute(s: CUstream, id: CUstreamAttrID, value: *const CUstreamAttrValue) { set_attribute(stream_arg(s, false), id, value) }
    fn cuStreamSetAttribute_ptsz(s: CUstream, id: CUstreamAttrID, value: *const CUstreamAttrValue) { set_attribute(stream_arg(s, true), id, value) }
    fn cuStreamGetAttribute(s: CUstream, id: CUstreamAttrID, value: *mut CUstreamAttrValue) { get_attribute(stream_arg(s, false), id, value) }
    fn cuStreamGetAttribute_ptsz(s: CUstream, id: CUstreamAttrID, value: *mut CUstreamAttrValue) { get_attribute(stream_arg(s, true), id, value) }
    fn cuStreamCopyAttributes(dst: CUstream, src: CUstream) { copy_attributes(stream_arg(dst, false), stream_arg(src, false)) }
    fn cuStreamCopyAttributes_ptsz(dst: CUstream, src: CUstream) { copy_attributes(stream_arg(dst, true), stream_arg(src, true)) }
}

export! {
    fn cuStreamCreate(out: *mut CUstream, flags: c_uint) { create(out, flags, 0) }
    fn cuStreamCreateWithPriority(out: *mut CUstream, flags: c_uint, priority: c_int) { create(out, flags, priority) }

    fn cuStreamDestroy_v2(stream: CUstream) {
        let d = driver()?;
        d.conn.stream_destroy(stream as u64).map_err(fail)?;
        lock(&d.streams).remove(&(stream as u64));
        lock(attributes()).retain(|(s, _), _| *s != stream as u64);
        super::managed::stream_destroyed(stream as u64);
        Ok(())
    }

    fn cuStreamSynchronize(s: CUstream) { synchronize(stream_arg(s, false)) }
    fn cuStreamSynchronize_ptsz(s: CUstream) { synchronize(stream_arg(s, true)) }
    fn cuStreamQuery(s: CUstream) { query(stream_arg(s, false)) }
    fn cuStreamQuery_ptsz(s: CUstream) { query(stream_arg(s, true)) }
    fn cuStreamWaitEvent(s: CUstream, e: CUevent, flags: c_uint) { wait_event(stream_arg(s, false), e, flags) }
    fn cuStreamWaitEvent_ptsz(s: CUstream, e: CUevent, flags: c_uint) { wait_event(stream_arg(s, true), e, flags) }
    fn cuStreamGetFlags(s: CUstream, out: *mut c_uint) { put(out, info(stream_arg(s, false))?.flags) }
    fn cuStreamGetFlags_ptsz(s: CUstream, out: *mut c_uint) { put(out, info(stream_arg(s, true))?.flags) }
    fn cuStreamGetPriority(s: CUstream, out: *mut c_int) { put(out, info(stream_arg(s, false))?.priority) }
    fn cuStreamGetPriority_ptsz(s: CUstream, out: *mut c_int) { put(out, info(stream_arg(s, true))?.priority) }
    fn cuStreamGetId(s: CUstream, out: *mut u64) { put(out, info(stream_arg(s, false))?.id) }
    fn cuStreamGetId_ptsz(s: CUstream, out: *mut u64) { put(out, info(stream_arg(s, true))?.id) }
    fn cuStreamGetCtx(s: CUstream, out: *mut CUcontext) { put(out, info(stream_arg(s, false))?.context as CUcontext) }
    fn cuStreamGetCtx_ptsz(s: CUstream, out: *mut CUcontext) { put(out, info(stream_arg(s, true))?.context as CUcontext) }
    fn cuStreamGetCtx_v2(s: CUstream, out: *mut CUcontext, green: *mut CUgreenCtx) {
        if !green.is_null() { put(green, std::ptr::null_mut())?; }
        put(out, info(stream_arg(s, false))?.context as CUcontext)
    }
    fn cuStreamGetCtx_v2_ptsz(s: CUstream, out: *mut CUcontext, green: *mut CUgreenCtx) {
        if !green.is_null() { put(green, std::ptr::null_mut())?; }
        put(out, info(stream_arg(s, true))?.context as CUcontext)
    }
    fn cuStreamGetDevice(s: CUstream, out: *mut CUdevice) {
        let ctx = info(stream_arg(s, false))?.context;
        put(out, driver()?.contexts.get(ctx)?.device)
    }
    fn cuStreamGetDevice_ptsz(s: CUstream, out: *mut CUdevice) {
        let ctx = info(stream_arg(s, true))?.context;
        put(out, driver()?.contexts.get(ctx)?.device)
    }
    fn cuStreamIsCapturing(s: CUstream, out: *mut CUstreamCaptureStatus) { capture_status(stream_arg(s, false), out) }
    fn cuStreamIsCapturing_ptsz(s: CUstream, out: *mut CUstreamCaptureStatus) { capture_status(stream_arg(s, true), out) }

    fn cuStreamGetCaptureInfo_v2(s: CUstream, status: *mut CUstreamCaptureStatus, id: *mut cuuint64_t, graph: *mut CUgraph, deps: *mut *const CUgraphNode, count: *mut usize) {
        capture_info(stream_arg(s, false), status, id, graph, deps, std::ptr::null_mut(), count)
    }
    fn cuStreamGetCaptureInfo_v2_ptsz(s: CUstream, status: *mut CUstreamCaptureStatus, id: *mut cuuint64_t, graph: *mut CUgraph, deps: *mut *const CUgraphNode, count: *mut usize) {
        capture_info(stream_arg(s, true), status, id, graph, deps, std::ptr::null_mut(), count)
    }
    fn cuStreamGetCaptureInfo_v3(s: CUstream, status: *mut CUstreamCaptureStatus, id: *mut cuuint64_t, graph: *mut CUgraph, deps: *mut *const CUgraphNode, edges: *mut *const CUgraphEdgeData, count: *mut usize) {
        capture_info(stream_arg(s, false), status, id, graph, deps, edges, count)
    }
    fn cuStreamGetCaptureInfo_v3_ptsz(s: CUstream, status: *mut CUstreamCaptureStatus, id: *mut cuuint64_t, graph: *mut CUgraph, deps: *mut *const CUgraphNode, edges: *mut *const CUgraphEdgeData, count: *mut usize) {
        capture_info(stream_arg(s, true), status, id, graph, deps, edges, count)
    }

    fn cuStreamAddCallback(s: CUstream, cb: CUstreamCallback, data: *mut c_void, flags: c_uint) { add_callback(s, cb, data, flags, false) }
    fn cuStreamAddCallback_ptsz(s: CUstream, cb: CUstreamCallback, data: *mut c_void, flags: c_uint) { add_callback(s, cb, data, flags, true) }
    fn cuLaunchHostFunc(s: CUstream, f: CUhostFn, data: *mut c_void) { host_func(stream_arg(s, false), f, data) }
    fn cuLaunchHostFunc_ptsz(s: CUstream, f: CUhostFn, data: *mut c_void) { host_func(stream_arg(s, true), f, data) }
    fn cuLaunchHostFunc_v2(s: CUstream, f: CUhostFn, data: *mut c_void, _sync_mode: c_uint) { host_func(stream_arg(s, false), f, data) }
    fn cuLaunchHostFunc_v2_ptsz(s: CUstream, f: CUhostFn, data: *mut c_void, _sync_mode: c_uint) { host_func(stream_arg(s, true), f, data) }

    fn cuEventCreate(out: *mut CUevent, flags: c_uint) {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let d = driver()?;
        let device = d.current_context()?.device as u32;
        let event = d.conn.event_create(device, flags).map_err(fail)?;
        lock(&d.events).insert(event);
        put(out, event as CUevent)
    }

    fn cuEventDestroy_v2(e: CUevent) {
        let d = driver()?;
        if !lock(&d.events).remove(&(e as u64)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        d.conn.post(Request::EventDestroy { event: e as u64 }).map_err(fail)
    }
    fn cuEventRecord(e: CUevent, s: CUstream) { record(e, stream_arg(s, false)) }
    fn cuEventRecord_ptsz(e: CUevent, s: CUstream) { record(e, stream_arg(s, true)) }
    fn cuEventRecordWithFlags(e: CUevent, s: CUstream, _flags: c_uint) { record(e, stream_arg(s, false)) }
    fn cuEventRecordWithFlags_ptsz(e: CUevent, s: CUstream, _flags: c_uint) { record(e, stream_arg(s, true)) }
    fn cuEventSynchronize(e: CUevent) { sync_point(); driver()?.conn.event_synchronize(e as u64).map_err(fail) }
    fn cuEventQuery(e: CUevent) { sync_point(); driver()?.conn.event_query(e as u64).map_err(fail) }
    fn cuEventElapsedTime(out: *mut f32, start: CUevent, end: CUevent) { elapsed(out, start, end) }
    fn cuEventElapsedTime_v2(out: *mut f32, start: CUevent, end: CUevent) { elapsed(out, start, end) }
}
