//! CUDA graphs, remoted as graphs: stream capture (global, thread-local and relaxed
//! modes, with the capture queries PyTorch makes, and other streams joining a
//! capture through events), instantiation, launch, upload and destruction.
//!
//! A capture records each stream operation (kernel launch, device-to-device copy,
//! memset, event record and wait) instead of sending it, in the order the
//! application issues them, which is an order the captured dependencies allow. An
//! instantiated graph is kept by the server ([`Request::GraphCreate`]): a launch is
//! one posted request however many nodes the graph has, and the server runs the
//! nodes in order in the launching stream, through the same checks, ledger and
//! scheduler as any other work. Operations a graph here cannot hold yet (copies to
//! or from host memory, host functions, allocation nodes) end the capture with
//! `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`, as do synchronising a capturing
//! stream. Not yet: building graphs node by node (`cuGraphAdd*Node`), updating an
//! instantiated graph, and running a graph's independent branches concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use xpupool_cuda_types::*;
use xpupool_protocol::api::GraphNode;
use xpupool_protocol::{Calls, Request};

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock, stream_arg, Driver};

/// A capture in progress.
struct Capture {
    id: u64,
    origin: u64,
    mode: CUstreamCaptureMode,
    nodes: Vec<GraphNode>,
    /// Why it can no longer end in a graph.
    invalidated: Option<CUresult>,
}

#[derive(Default)]
struct Graphs {
    /// Captures by id.
    captures: HashMap<u64, Capture>,
    /// Streams taking part in a capture (the origin and those that joined).
    capturing: HashMap<u64, u64>,
    /// Events last recorded inside a capture: waiting on one joins that capture.
    recorded_in: HashMap<u64, u64>,
    /// Graphs the application holds: their nodes.
    graphs: HashMap<u64, Arc<Vec<GraphNode>>>,
    /// Instantiated graphs: the server's handle of each.
    execs: HashMap<u64, u64>,
    next: u64,
}

fn table() -> &'static Mutex<Graphs> {
    static GRAPHS: OnceLock<Mutex<Graphs>> = OnceLock::new();
    GRAPHS.get_or_init(|| {
        Mutex::new(Graphs {
            // Handles are opaque to applications; these are never dereferenced.
            next: 0x6a00_0000,
            ..Graphs::default()
        })
    })
}

impl Graphs {
    fn handle(&mut self) -> u64 {
        self.next += 0x10;
        self.next
    }

    /// The capture `stream` takes part in, if any.
    fn capture_of(&mut self, stream: u64) -> Option<&mut Capture> {
        let id = *self.capturing.get(&stream)?;
        self.captures.get_mut(&id)
    }

    /// Whether a global-mode capture is running (then unsafe calls from any thread
    /// are refused).
    fn global_capture(&self) -> bool {
        self.captures
            .values()
            .any(|c| c.mode == CU_STREAM_CAPTURE_MODE_GLOBAL)
    }
}

/// Sends a stream operation, or records it where its stream is capturing (a wait
/// that only joins a stream to a capture records nothing: the capture's order
/// already holds the dependency).
pub(crate) fn submit(d: &Driver, request: Request) -> Res {
    {
        let mut t = lock(table());
        let stream = match &request {
            Request::LaunchKernel { stream, .. }
            | Request::Memset { stream, .. }
            | Request::Memset2D { stream, .. }
            | Request::MemcpyDtoD { stream, .. }
            | Request::EventRecord { stream, .. }
            | Request::StreamWaitEvent { stream, .. } => *stream,
            _ => return d.conn.post(request).map_err(fail),
        };
        // A stream waiting on an event recorded in a capture joins it.
        if let Request::StreamWaitEvent { event, .. } = &request {
            if let Some(&id) = t.recorded_in.get(event) {
                if t.captures.contains_key(&id) && t.capturing.get(&stream).is_none_or(|&c| c == id)
                {
                    t.capturing.insert(stream, id);
                    return Ok(());
                }
            }
        }
        if let Some(capture) = t.capture_of(stream) {
            let id = capture.id;
            // An event recorded in a capture is recorded when the graph runs (a
            // node), and meanwhile lets other streams join the capture.
            if let Request::EventRecord { event, .. } = &request {
                let event = *event;
                t.recorded_in.insert(event, id);
            }
            let (node, _) =
                GraphNode::from_request(&request).ok_or(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)?;
            if let Some(capture) = t.capture_of(stream) {
                capture.nodes.push(node);
            }
            return Ok(());
        }
        if let Request::EventRecord { event, .. } = &request {
            t.recorded_in.remove(event);
        }
    }
    d.conn.post(request).map_err(fail)
}

/// For an operation a capture cannot hold (a copy to or from host memory, a host
/// function, a synchronisation) on `stream`: refused, and the capture can no
/// longer end in a graph, where `stream` is capturing.
pub(crate) fn not_in_capture(stream: u64) -> Res {
    let mut t = lock(table());
    match t.capture_of(stream) {
        Some(capture) => {
            capture.invalidated = Some(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
            Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        }
        None => Ok(()),
    }
}

/// For a call unsafe during a global-mode capture (a device-wide synchronisation):
/// refused while one runs, and that capture invalidated.
pub(crate) fn not_during_global_capture() -> Res {
    let mut t = lock(table());
    if !t.global_capture() {
        return Ok(());
    }
    for c in t.captures.values_mut() {
        if c.mode == CU_STREAM_CAPTURE_MODE_GLOBAL {
            c.invalidated = Some(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        }
    }
    Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
}

/// `cuStreamIsCapturing` and the status of `cuStreamGetCaptureInfo`.
pub(crate) fn status(stream: u64) -> (CUstreamCaptureStatus, u64) {
    let mut t = lock(table());
    match t.capture_of(stream) {
        Some(c) if c.invalidated.is_some() => (CU_STREAM_CAPTURE_STATUS_INVALIDATED, c.id),
        Some(c) => (CU_STREAM_CAPTURE_STATUS_ACTIVE, c.id),
        None => (CU_STREAM_CAPTURE_STATUS_NONE, 0),
    }
}

/// The graph a capture has made so far, as `cuStreamGetCaptureInfo` names it.
pub(crate) fn capture_graph(id: u64) -> u64 {
    if id == 0 {
        0
    } else {
        // The capture's id, as a handle of its own kind (no node may be added).
        id | 1
    }
}

fn begin(stream: u64, mode: CUstreamCaptureMode) -> Res {
    if !matches!(
        mode,
        CU_STREAM_CAPTURE_MODE_GLOBAL
            | CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
            | CU_STREAM_CAPTURE_MODE_RELAXED
    ) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    // The legacy default stream cannot be captured.
    if stream == 0 || stream == 1 {
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    d.stream_device(stream)?;
    let mut t = lock(table());
    if t.capturing.contains_key(&stream) {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    }
    let id = t.handle();
    t.captures.insert(
        id,
        Capture {
            id,
            origin: stream,
            mode,
            nodes: Vec::new(),
            invalidated: None,
        },
    );
    t.capturing.insert(stream, id);
    Ok(())
}

fn end(stream: u64, graph: *mut CUgraph) -> Res {
    if graph.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut t = lock(table());
    let id = *t.capturing.get(&stream).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    if t.captures.get(&id).is_some_and(|c| c.origin != stream) {
        // Only the stream that began a capture ends it.
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
    }
    let capture = t.captures.remove(&id).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    t.capturing.retain(|_, c| *c != id);
    t.recorded_in.retain(|_, c| *c != id);
    if let Some(why) = capture.invalidated {
        put(graph, std::ptr::null_mut())?;
        return Err(if why == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED {
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        } else {
            why
        });
    }
    let handle = t.handle();
    t.graphs.insert(handle, Arc::new(capture.nodes));
    put(graph, handle as CUgraph)
}

fn nodes_of(graph: CUgraph) -> Res<Arc<Vec<GraphNode>>> {
    lock(table())
        .graphs
        .get(&(graph as u64))
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

fn instantiate(exec: *mut CUgraphExec, graph: CUgraph) -> Res {
    if exec.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let nodes = nodes_of(graph)?;
    let d = driver()?;
    let server = d.conn.graph_create(nodes.as_ref().clone()).map_err(fail)?;
    let mut t = lock(table());
    let handle = t.handle();
    t.execs.insert(handle, server);
    put(exec, handle as CUgraphExec)
}

fn instantiate_with_params(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
) -> Res {
    let result = instantiate(exec, graph);
    if !params.is_null() {
        // SAFETY: checked non-null; the caller passes its parameters.
        unsafe {
            (*params).result_out = if result.is_ok() {
                CUDA_GRAPH_INSTANTIATE_SUCCESS
            } else {
                CUDA_GRAPH_INSTANTIATE_ERROR
            };
            (*params).hErrNode_out = std::ptr::null_mut();
        }
    }
    result
}

fn launch(exec: CUgraphExec, stream: u64) -> Res {
    let d = driver()?;
    d.stream_device(stream)?;
    let server = *lock(table())
        .execs
        .get(&(exec as u64))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if status(stream).0 != CU_STREAM_CAPTURE_STATUS_NONE {
        // A graph launched into a capture would be a child graph.
        not_in_capture(stream)?;
    }
    d.conn
        .post(Request::GraphLaunch {
            graph: server,
            stream,
        })
        .map_err(fail)
}

export! {
    fn cuStreamBeginCapture(s: CUstream, mode: CUstreamCaptureMode) { begin(stream_arg(s, false), mode) }
    fn cuStreamBeginCapture_v2(s: CUstream, mode: CUstreamCaptureMode) { begin(stream_arg(s, false), mode) }
    fn cuStreamBeginCapture_ptsz(s: CUstream, mode: CUstreamCaptureMode) { begin(stream_arg(s, true), mode) }
    fn cuStreamBeginCapture_v2_ptsz(s: CUstream, mode: CUstreamCaptureMode) { begin(stream_arg(s, true), mode) }
    fn cuStreamEndCapture(s: CUstream, graph: *mut CUgraph) { end(stream_arg(s, false), graph) }
    fn cuStreamEndCapture_ptsz(s: CUstream, graph: *mut CUgraph) { end(stream_arg(s, true), graph) }

    /// Each thread's mode is not tracked apart: the exchange answers as if every
    /// thread were in global mode, which refuses the most.
    fn cuThreadExchangeStreamCaptureMode(mode: *mut CUstreamCaptureMode) {
        if mode.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes its mode and takes the old one.
        let wanted = unsafe { *mode };
        if !matches!(wanted, CU_STREAM_CAPTURE_MODE_GLOBAL | CU_STREAM_CAPTURE_MODE_THREAD_LOCAL | CU_STREAM_CAPTURE_MODE_RELAXED) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(mode, CU_STREAM_CAPTURE_MODE_GLOBAL)
    }

    fn cuGraphInstantiateWithFlags(exec: *mut CUgraphExec, graph: CUgraph, _flags: u64) { instantiate(exec, graph) }
    fn cuGraphInstantiate(exec: *mut CUgraphExec, graph: CUgraph, _flags: u64) { instantiate(exec, graph) }
    fn cuGraphInstantiateWithParams(exec: *mut CUgraphExec, graph: CUgraph, params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS) { instantiate_with_params(exec, graph, params) }
    fn cuGraphInstantiateWithParams_ptsz(exec: *mut CUgraphExec, graph: CUgraph, params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS) { instantiate_with_params(exec, graph, params) }

    fn cuGraphLaunch(exec: CUgraphExec, s: CUstream) { launch(exec, stream_arg(s, false)) }
    fn cuGraphLaunch_ptsz(exec: CUgraphExec, s: CUstream) { launch(exec, stream_arg(s, true)) }

    /// The server has the graph from its instantiation on.
    fn cuGraphUpload(exec: CUgraphExec, s: CUstream) {
        driver()?.stream_device(stream_arg(s, false))?;
        lock(table()).execs.get(&(exec as u64)).map(|_| ()).ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    fn cuGraphExecDestroy(exec: CUgraphExec) {
        let server = lock(table()).execs.remove(&(exec as u64)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        driver()?.conn.post(Request::GraphDestroy { graph: server }).map_err(fail)
    }

    fn cuGraphDestroy(graph: CUgraph) {
        lock(table()).graphs.remove(&(graph as u64)).map(|_| ()).ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// An empty graph (nodes cannot be added to it one by one yet).
    fn cuGraphCreate(graph: *mut CUgraph, flags: u32) {
        if flags != 0 || graph.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut t = lock(table());
        let handle = t.handle();
        t.graphs.insert(handle, Arc::new(Vec::new()));
        put(graph, handle as CUgraph)
    }

    /// The node count; node handles name each node by its place in the graph.
    fn cuGraphGetNodes(graph: CUgraph, nodes: *mut CUgraphNode, count: *mut usize) {
        if count.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let all = nodes_of(graph)?;
        if nodes.is_null() {
            return put(count, all.len());
        }
        // SAFETY: the caller passes room for `*count` node handles.
        let room = unsafe { *count };
        let n = room.min(all.len());
        for i in 0..n {
            // SAFETY: `i < *count`, within the caller's array.
            unsafe { *nodes.add(i) = (graph as u64 + 1 + i as u64) as CUgraphNode };
        }
        put(count, n)
    }
}
