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
//! scheduler as any other work. Host functions and copies between host memory and
//! the device run here, in stream order, between the server's parts of the graph
//! (host memory is read and written when the graph runs): a launch is then one
//! request per run of server nodes. Synchronising a capturing stream ends its
//! capture. Graphs are also built node by node (kernel, memset, copy, host, empty,
//! child graph, event record and wait, memory allocation and free nodes, with
//! dependencies); at instantiation their nodes are put in an order the
//! dependencies allow.
//!
//! Graph memory (`cuMemAllocAsync` captured, `cuGraphAddMemAllocNode`): allocated
//! on the server when the node is made, charged to the tenant's ledger from then
//! on, at an address that stays the same at every launch, and kept until the
//! last graph and instantiation holding the node are destroyed; a free of it (a
//! free node, or `cuMemFreeAsync` after a launch) keeps it for the next launch.
//! So it costs its bytes for the graph's lifetime, as CUDA's graph memory pool
//! does at its most.
//!
//! An instantiation is updated (`cuGraphExecUpdate`, a kernel node's new
//! parameters) by rebuilding what the server keeps for it from its own copy of
//! the graph: one request per server run of nodes. Not yet: running a graph's
//! independent branches concurrently.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use xpupool_cuda_types::*;
use xpupool_protocol::api::{GraphNode, LaunchDims, MAX_GRAPH_NODES};
use xpupool_protocol::{Calls, Request};

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock, stream_arg, Driver};

/// A graph as the application builds it: nodes and their dependencies.
#[derive(Clone, Default)]
struct Graph {
    nodes: Vec<Node>,
}

#[derive(Clone)]
struct Node {
    op: Op,
    /// Indices of the nodes it depends on.
    deps: Vec<usize>,
    handle: u64,
}

#[derive(Clone)]
enum Op {
    Work(GraphNode),
    /// Run in this process, in stream order.
    Host(HostOp),
    Empty,
    /// A copy of the child graph, taken when the node was added.
    Child(Graph),
    /// Graph memory, allocated when the node was made.
    MemAlloc(Arc<GraphMemory>),
    /// A free of graph memory: nothing to do when the graph runs (the memory
    /// stays for the next launch).
    MemFree(u64),
}

/// An allocation that belongs to graphs: freed on the server when the last
/// graph or instantiation holding it goes, unless it is outstanding then: a
/// launch allocated it and neither a free node that ran since nor the
/// application freed it. Such an allocation is the application's from then on,
/// as CUDA leaves it: an ordinary allocation it frees with `cuMemFree(Async)`
/// (PyTorch frees its captured tensors so at exit).
pub(crate) struct GraphMemory {
    address: u64,
    bytes: u64,
    device: CUdevice,
    outstanding: std::sync::atomic::AtomicBool,
}

/// Graph memory alive now, by address, and the figures
/// `cuDeviceGetGraphMemAttribute` reports, by device: (bytes now, most).
#[derive(Default)]
struct Ledger {
    live: HashMap<u64, std::sync::Weak<GraphMemory>>,
    used: HashMap<CUdevice, (u64, u64)>,
}

fn graph_memory() -> &'static Mutex<Ledger> {
    static LEDGER: OnceLock<Mutex<Ledger>> = OnceLock::new();
    LEDGER.get_or_init(Mutex::default)
}

impl GraphMemory {
    /// Allocates `bytes` on `device` for graphs.
    fn new(device: CUdevice, bytes: u64) -> Res<Arc<Self>> {
        let d = driver()?;
        // Copies and launches into it are checked as into any allocation.
        let address = xpupool_client::ranges::place(
            |a| d.device_ranges.add(a, bytes, false),
            || d.conn.mem_alloc(device as u32, bytes).map_err(fail),
            |a| {
                let _ = d.conn.post(Request::MemFree { ptr: a });
            },
            CUDA_ERROR_OUT_OF_MEMORY,
        )?;
        d.device_ranges.set_device(address, device as u32);
        let memory = Arc::new(Self {
            address,
            bytes,
            device,
            outstanding: std::sync::atomic::AtomicBool::new(false),
        });
        let mut ledger = lock(graph_memory());
        ledger.live.insert(address, Arc::downgrade(&memory));
        let used = ledger.used.entry(device).or_insert((0, 0));
        used.0 += bytes;
        used.1 = used.1.max(used.0);
        Ok(memory)
    }
}

impl Drop for GraphMemory {
    fn drop(&mut self) {
        {
            let mut ledger = lock(graph_memory());
            ledger.live.remove(&self.address);
            if let Some(used) = ledger.used.get_mut(&self.device) {
                used.0 = used.0.saturating_sub(self.bytes);
            }
        }
        if crate::boundary::shutting_down() {
            return;
        }
        if let Ok(d) = driver() {
            if self.outstanding.load(std::sync::atomic::Ordering::Relaxed) {
                // Allocated by a launch and not freed: the application's now (its
                // pages stay reserved while it changes hands).
                d.device_ranges.set_freeable(self.address);
                return;
            }
            d.device_ranges.remove(self.address);
            // Posted behind the work already sent, which may still use it.
            if let Err(e) = d.conn.post(Request::MemFree { ptr: self.address }) {
                tracing::debug!("freeing graph memory: {}", e.message);
            }
        }
    }
}

/// The graph memory at `address`, if some is alive there. (Upgraded outside the
/// ledger's lock: the last reference may go while it is held here, and its drop
/// takes that lock.)
fn graph_memory_at(address: u64) -> Option<Arc<GraphMemory>> {
    let weak = lock(graph_memory()).live.get(&address).cloned();
    weak.and_then(|w| w.upgrade())
}

/// Whether `address` is graph memory (a free of it keeps it for the graph).
pub(crate) fn is_graph_memory(address: u64) -> bool {
    graph_memory_at(address).is_some()
}

/// Marks graph memory allocated (`true`: a launch allocated it) or freed.
fn set_outstanding(memory: &GraphMemory, outstanding: bool) {
    memory
        .outstanding
        .store(outstanding, std::sync::atomic::Ordering::Relaxed);
}

/// The application frees `address`: if it is graph memory, it is no longer
/// outstanding (it stays for the graphs' next launch) and this answers true.
pub(crate) fn free_graph_memory(address: u64) -> bool {
    match graph_memory_at(address) {
        Some(memory) => {
            set_outstanding(&memory, false);
            true
        }
        None => false,
    }
}

/// The graph memory figures of `device`: (bytes now, most since reset).
pub(crate) fn graph_memory_used(device: CUdevice) -> (u64, u64) {
    lock(graph_memory())
        .used
        .get(&device)
        .copied()
        .unwrap_or((0, 0))
}

/// Resets the most to the bytes now.
pub(crate) fn reset_graph_memory_high(device: CUdevice) {
    if let Some(used) = lock(graph_memory()).used.get_mut(&device) {
        used.1 = used.0;
    }
}

/// What a graph runs in the client, in stream order: a host function, or a copy
/// between host memory and the device (host memory is read or written when the
/// node runs, not when it was captured).
#[derive(Clone, Copy)]
pub(crate) enum HostOp {
    /// `fn(data)`.
    Func { f: usize, data: usize },
    /// Host bytes at `src` to the device at `dst`.
    ToDevice { dst: u64, src: usize, len: usize },
    /// Device bytes at `src` to host memory at `dst`.
    ToHost { dst: usize, src: u64, len: usize },
}

impl HostOp {
    fn run(self, stream: u64) -> Res {
        match self {
            HostOp::Func { f, data } => {
                // SAFETY: the application's function pointer, as it gave it.
                let f: CUhostFn = unsafe { std::mem::transmute::<usize, CUhostFn>(f) };
                super::stream::host_func(stream, f, data as *mut c_void)
            }
            HostOp::ToDevice { dst, src, len } => super::memory::copy(dst, src as u64, len, stream),
            HostOp::ToHost { dst, src, len } => super::memory::copy(dst as u64, src, len, stream),
        }
    }
}

/// An instantiated graph: what runs (segments), the graph memory it holds, and
/// the graph it was made from (its own copy, which updates change), with that
/// graph's handle.
struct Exec {
    segments: Vec<Segment>,
    memory: Vec<Arc<GraphMemory>>,
    /// The graph memory its free nodes free, in order.
    frees: Vec<u64>,
    source: Graph,
    origin: u64,
}

/// One step of a graph as it runs: a node the server runs, or a host step; or
/// graph memory it holds (and, in a capture, a free of it).
#[derive(Clone)]
enum Step {
    Node(GraphNode),
    Host(HostOp),
    Mem(Arc<GraphMemory>),
    Free(u64),
}

/// An instantiated graph: runs of server nodes (one kept graph each) between
/// host steps.
enum Segment {
    Server(u64),
    Host(HostOp),
}

impl Graph {
    /// The operations in an order the dependencies allow (among those free to
    /// go, the earliest added first), child graphs flattened in place.
    fn ordered(&self, out: &mut Vec<Step>) -> Res {
        let n = self.nodes.len();
        let mut waiting: Vec<usize> = self.nodes.iter().map(|x| x.deps.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, node) in self.nodes.iter().enumerate() {
            for &d in &node.deps {
                dependents[d].push(i);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut done = 0;
        while let Some(i) = ready.pop_first() {
            done += 1;
            match &self.nodes[i].op {
                Op::Work(node) => out.push(Step::Node(node.clone())),
                Op::Host(op) => out.push(Step::Host(*op)),
                Op::Empty => {}
                Op::MemFree(address) => out.push(Step::Free(*address)),
                Op::Child(child) => child.ordered(out)?,
                Op::MemAlloc(m) => out.push(Step::Mem(m.clone())),
            }
            if out.len() > MAX_GRAPH_NODES {
                // More than the server keeps: refused before anything is sent.
                return Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
            for &j in &dependents[i] {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.insert(j);
                }
            }
        }
        // Nodes left waiting are on a cycle (cuGraphAddDependencies accepts
        // one): the graph cannot be instantiated.
        if done != n {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    }

    fn count(&self) -> usize {
        self.nodes.len()
    }

    /// How deeply child graphs nest in it.
    fn depth(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match &n.op {
                Op::Child(c) => c.depth() + 1,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }
}

/// A capture in progress.
struct Capture {
    id: u64,
    origin: u64,
    mode: CUstreamCaptureMode,
    nodes: Vec<Step>,
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
    /// Graphs the application holds.
    graphs: HashMap<u64, Graph>,
    /// Node handles: (graph, index in it).
    nodes: HashMap<u64, (u64, usize)>,
    /// Instantiated graphs.
    execs: HashMap<u64, Exec>,
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
            | Request::LaunchCooperative { stream, .. }
            | Request::LaunchClustered { stream, .. }
            | Request::Memset { stream, .. }
            | Request::Memset2D { stream, .. }
            | Request::MemcpyDtoD { stream, .. }
            | Request::MemcpyArrayDevice { stream, .. }
            | Request::MemcpyArrayArray { stream, .. }
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
                capture.nodes.push(Step::Node(node));
            }
            return Ok(());
        }
        if let Request::EventRecord { event, .. } = &request {
            t.recorded_in.remove(event);
        }
    }
    super::managed::before_request(&request)?;
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
    t.graphs.insert(handle, Graph::default());
    // A captured graph is a chain, in issue order.
    for (i, step) in capture.nodes.into_iter().enumerate() {
        let deps = if i == 0 { Vec::new() } else { vec![i - 1] };
        let op = match step {
            Step::Node(node) => Op::Work(node),
            Step::Host(op) => Op::Host(op),
            Step::Mem(m) => Op::MemAlloc(m),
            Step::Free(address) => Op::MemFree(address),
        };
        t.add(handle, op, deps)?;
    }
    put(graph, handle as CUgraph)
}

impl Graphs {
    /// Adds a node to `graph` after the nodes at `deps`; its handle.
    fn add(&mut self, graph: u64, op: Op, deps: Vec<usize>) -> Res<u64> {
        let handle = self.handle();
        let g = self
            .graphs
            .get_mut(&graph)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if g.nodes.len() >= MAX_NODES {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let index = g.nodes.len();
        g.nodes.push(Node { op, deps, handle });
        self.nodes.insert(handle, (graph, index));
        Ok(handle)
    }

    /// The indices in `graph` of the dependency handles the application gave.
    fn deps(&self, graph: u64, deps: *const CUgraphNode, count: usize) -> Res<Vec<usize>> {
        let mut out = self.indices(graph, deps, count)?;
        let mut seen = std::collections::HashSet::new();
        out.retain(|&i| seen.insert(i));
        Ok(out)
    }

    /// The indices of `count` node handles of `graph`, in order, repeats kept.
    fn indices(&self, graph: u64, nodes: *const CUgraphNode, count: usize) -> Res<Vec<usize>> {
        if count > 0 && nodes.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `count` handles at `nodes`, as the caller says.
        let given = if count == 0 {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(nodes, count) }
        };
        given
            .iter()
            .map(|&n| match self.nodes.get(&(n as u64)) {
                Some(&(g, i)) if g == graph => Ok(i),
                _ => Err(CUDA_ERROR_INVALID_VALUE),
            })
            .collect()
    }
}

/// Nodes of one graph here, at most (the server keeps fewer: its own bound
/// applies at instantiation).
const MAX_NODES: usize = 1 << 20;
/// Child graphs nested in child graphs, at most.
const MAX_DEPTH: usize = 64;

/// Adds a node of `op` to `graph` after `deps`; its handle in `out`.
fn add_node(
    out: *mut CUgraphNode,
    graph: CUgraph,
    deps: *const CUgraphNode,
    count: usize,
    op: Op,
) -> Res {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut t = lock(table());
    let deps = t.deps(graph as u64, deps, count)?;
    let handle = t.add(graph as u64, op, deps)?;
    put(out, handle as CUgraphNode)
}

fn kernel_node(
    func: CUfunction,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Res<Op> {
    let dims = LaunchDims {
        grid,
        block,
        shared_bytes: shared,
    };
    let request = super::launch::launch_request(func, dims, 0, params, extra)?;
    let (node, _) = GraphNode::from_request(&request).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    Ok(Op::Work(node))
}

fn memset_node(p: *const CUDA_MEMSET_NODE_PARAMS) -> Res<Op> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: checked non-null; the caller passes the parameters.
    let p = unsafe { &*p };
    if !matches!(p.elementSize, 1 | 2 | 4) || p.width == 0 || p.height == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let elem = p.elementSize as u64;
    super::memory::device_span_2d(p.dst, p.pitch as u64, p.width as u64, elem, p.height as u64)?;
    Ok(Op::Work(if p.height == 1 {
        GraphNode::Memset {
            dst: p.dst,
            value: p.value,
            elem_size: elem as u8,
            count: p.width as u64,
        }
    } else {
        GraphNode::Memset2D {
            dst: p.dst,
            pitch: p.pitch as u64,
            value: p.value,
            elem_size: elem as u8,
            width: p.width as u64,
            height: p.height as u64,
        }
    }))
}

/// A copy node: one row between device ranges (kept by the server), or between
/// host memory and the device (run here, in stream order); 2-D, 3-D and array
/// copies are not kept in graphs yet.
fn memcpy_node(p: *const CUDA_MEMCPY3D) -> Res<Op> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: checked non-null; the caller passes the parameters.
    let p = unsafe { &*p };
    let device = |kind: CUmemorytype, address: CUdeviceptr| {
        kind == CU_MEMORYTYPE_DEVICE
            || (kind == CU_MEMORYTYPE_UNIFIED
                && driver().is_ok_and(|d| d.is_device_address(address)))
    };
    let flat =
        p.Height <= 1 && p.Depth <= 1 && p.srcY == 0 && p.srcZ == 0 && p.dstY == 0 && p.dstZ == 0;
    if !flat {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let len = p.WidthInBytes;
    let host = |kind: CUmemorytype| kind == CU_MEMORYTYPE_HOST;
    match (
        device(p.srcMemoryType, p.srcDevice),
        device(p.dstMemoryType, p.dstDevice),
    ) {
        (true, true) => {
            let src = p.srcDevice + p.srcXInBytes as u64;
            let dst = p.dstDevice + p.dstXInBytes as u64;
            super::memory::device_span(src, len as u64)?;
            super::memory::device_span(dst, len as u64)?;
            Ok(Op::Work(GraphNode::CopyDtoD {
                dst,
                src,
                len: len as u64,
            }))
        }
        (false, true) if host(p.srcMemoryType) && !p.srcHost.is_null() => {
            let dst = p.dstDevice + p.dstXInBytes as u64;
            super::memory::device_span(dst, len as u64)?;
            Ok(Op::Host(HostOp::ToDevice {
                dst,
                src: p.srcHost as usize + p.srcXInBytes,
                len,
            }))
        }
        (true, false) if host(p.dstMemoryType) && !p.dstHost.is_null() => {
            let src = p.srcDevice + p.srcXInBytes as u64;
            super::memory::device_span(src, len as u64)?;
            Ok(Op::Host(HostOp::ToHost {
                dst: p.dstHost as usize + p.dstXInBytes,
                src,
                len,
            }))
        }
        _ => Err(CUDA_ERROR_NOT_SUPPORTED),
    }
}

fn event_known(event: CUevent) -> Res<u64> {
    let d = driver()?;
    if !lock(&d.events).contains(&(event as u64)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(event as u64)
}

/// What an instantiation of `graph` runs: runs of server nodes become kept
/// graphs (made on the server here), host steps stay here.
#[allow(clippy::type_complexity)]
fn build(graph: &Graph) -> Res<(Vec<Segment>, Vec<Arc<GraphMemory>>, Vec<u64>)> {
    let mut steps = Vec::new();
    graph.ordered(&mut steps)?;
    let d = driver()?;
    let mut segments = Vec::new();
    let mut memory = Vec::new();
    let mut frees = Vec::new();
    let mut run = Vec::new();
    let keep = |run: &mut Vec<GraphNode>, segments: &mut Vec<Segment>| -> Res {
        if !run.is_empty() {
            let server = d.conn.graph_create(std::mem::take(run)).map_err(fail)?;
            segments.push(Segment::Server(server));
        }
        Ok(())
    };
    for step in steps {
        match step {
            Step::Node(node) => run.push(node),
            Step::Host(op) => {
                keep(&mut run, &mut segments)?;
                segments.push(Segment::Host(op));
            }
            Step::Mem(m) => memory.push(m),
            Step::Free(address) => frees.push(address),
        }
    }
    keep(&mut run, &mut segments)?;
    Ok((segments, memory, frees))
}

/// Forgets the server's kept graphs of `segments`.
fn drop_segments(segments: Vec<Segment>) -> Res {
    let d = driver()?;
    for segment in segments {
        if let Segment::Server(graph) = segment {
            d.conn.post(Request::GraphDestroy { graph }).map_err(fail)?;
        }
    }
    Ok(())
}

/// `cuGraphInstantiate` of CUDA 10 and 11: the error node cleared and the log
/// empty, then as [`instantiate`].
fn instantiate_with_log(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    error_node: *mut CUgraphNode,
    log: *mut c_char,
    log_size: usize,
) -> Res {
    if !error_node.is_null() {
        put(error_node, std::ptr::null_mut())?;
    }
    if !log.is_null() && log_size > 0 {
        put(log, 0)?;
    }
    instantiate(exec, graph)
}

fn instantiate(exec: *mut CUgraphExec, graph: CUgraph) -> Res {
    if exec.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let source = lock(table())
        .graphs
        .get(&(graph as u64))
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let (segments, memory, frees) = build(&source)?;
    let mut t = lock(table());
    let handle = t.handle();
    t.execs.insert(
        handle,
        Exec {
            segments,
            memory,
            frees,
            source,
            origin: graph as u64,
        },
    );
    put(exec, handle as CUgraphExec)
}

/// Why an instantiation of `old` cannot become one of `new` by an update
/// (`cuGraphExecUpdate`): the same nodes, of the same kinds, with the same
/// dependencies, are needed; memory nodes cannot change.
fn update_refused(old: &Graph, new: &Graph) -> Option<CUgraphExecUpdateResult> {
    if old.nodes.len() != new.nodes.len() {
        return Some(CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED);
    }
    for (a, b) in old.nodes.iter().zip(&new.nodes) {
        let (mut da, mut db) = (a.deps.clone(), b.deps.clone());
        da.sort_unstable();
        db.sort_unstable();
        if da != db {
            return Some(CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED);
        }
        let same_kind = match (&a.op, &b.op) {
            (Op::Work(x), Op::Work(y)) => {
                is_kernel(x) && is_kernel(y)
                    || std::mem::discriminant(x) == std::mem::discriminant(y)
            }
            (Op::Host(x), Op::Host(y)) => std::mem::discriminant(x) == std::mem::discriminant(y),
            (Op::Empty, Op::Empty) => true,
            (Op::Child(x), Op::Child(y)) => {
                if let Some(why) = update_refused(x, y) {
                    return Some(why);
                }
                true
            }
            (Op::MemAlloc(x), Op::MemAlloc(y)) => {
                if !Arc::ptr_eq(x, y) {
                    return Some(CU_GRAPH_EXEC_UPDATE_ERROR_NOT_SUPPORTED);
                }
                true
            }
            (Op::MemFree(x), Op::MemFree(y)) => {
                if x != y {
                    return Some(CU_GRAPH_EXEC_UPDATE_ERROR_NOT_SUPPORTED);
                }
                true
            }
            _ => false,
        };
        if !same_kind {
            return Some(CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED);
        }
    }
    None
}

/// Makes `exec` run `graph`'s nodes (parameters, addresses, events) from its
/// next launch: `Err` with the reason if their shapes differ.
fn exec_update(
    exec: CUgraphExec,
    graph: CUgraph,
) -> Result<(), (CUresult, CUgraphExecUpdateResult)> {
    let refuse = |r: CUresult| (r, CU_GRAPH_EXEC_UPDATE_ERROR);
    let (new, old) = {
        let t = lock(table());
        let new = t
            .graphs
            .get(&(graph as u64))
            .cloned()
            .ok_or(refuse(CUDA_ERROR_INVALID_VALUE))?;
        let e = t
            .execs
            .get(&(exec as u64))
            .ok_or(refuse(CUDA_ERROR_INVALID_VALUE))?;
        (new, e.source.clone())
    };
    if let Some(why) = update_refused(&old, &new) {
        return Err((CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE, why));
    }
    replace(exec, new, None).map_err(refuse)
}

/// Rebuilds `exec` from `source` (and, if given, a new origin graph).
fn replace(exec: CUgraphExec, source: Graph, origin: Option<u64>) -> Res {
    let (segments, memory, frees) = build(&source)?;
    let old = {
        let mut t = lock(table());
        let e = t
            .execs
            .get_mut(&(exec as u64))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        e.source = source;
        if let Some(o) = origin {
            e.origin = o;
        }
        e.memory = memory;
        e.frees = frees;
        std::mem::replace(&mut e.segments, segments)
    };
    // Posted after every launch already sent, which still runs the old ones.
    drop_segments(old)
}

fn update_info(info: *mut CUgraphExecUpdateResultInfo, result: CUgraphExecUpdateResult) {
    if !info.is_null() {
        // SAFETY: checked non-null; the caller passes room for the result.
        unsafe {
            (*info).result = result;
            (*info).errorNode = std::ptr::null_mut();
            (*info).errorFromNode = std::ptr::null_mut();
        }
    }
}

/// Whether a node is a kernel (in clusters or not): one kind of node, as CUDA has.
fn is_kernel(node: &GraphNode) -> bool {
    matches!(
        node,
        GraphNode::Kernel { .. } | GraphNode::ClusteredKernel { .. }
    )
}

/// A kernel node's new parameters (`new`, a plain kernel node) for the node `old`:
/// a node launched in clusters keeps its clusters, as the launch attribute is
/// the node's; anything but a kernel node is refused.
fn kernel_params_for(old: &Op, new: Op) -> Res<Op> {
    match (old, new) {
        (
            Op::Work(GraphNode::ClusteredKernel { cluster, .. }),
            Op::Work(GraphNode::Kernel {
                function,
                dims,
                params,
            }),
        ) => Ok(Op::Work(GraphNode::ClusteredKernel {
            function,
            dims,
            cluster: *cluster,
            params,
        })),
        (Op::Work(GraphNode::Kernel { .. }), new) => Ok(new),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// A kernel node's new parameters in an instantiation (`exec`'s own copy of
/// the node at `node`'s place in the graph it came from).
fn exec_kernel_params(exec: CUgraphExec, node: CUgraphNode, op: Op) -> Res {
    let (index, source) = {
        let t = lock(table());
        let &(graph, index) = t
            .nodes
            .get(&(node as u64))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let e = t
            .execs
            .get(&(exec as u64))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if e.origin != graph || index >= e.source.nodes.len() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        (index, e.source.clone())
    };
    let mut source = source;
    source.nodes[index].op = kernel_params_for(&source.nodes[index].op, op)?;
    replace(exec, source, None)
}

fn kernel_params_op(p: *const CUDA_KERNEL_NODE_PARAMS) -> Res<Op> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: checked non-null; the caller passes the parameters.
    let p = unsafe { &*p };
    let func = if p.func.is_null() {
        p.kern as CUfunction
    } else {
        p.func
    };
    kernel_node(
        func,
        [p.gridDimX, p.gridDimY, p.gridDimZ],
        [p.blockDimX, p.blockDimY, p.blockDimZ],
        p.sharedMemBytes,
        p.kernelParams,
        p.extra,
    )
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

/// Adds (`add`) or removes the edges `from[i]` → `to[i]`. An edge that closes a
/// cycle is accepted, as NVIDIA's driver accepts it (seen with driver 580): the
/// graph then fails to instantiate with `CUDA_ERROR_INVALID_VALUE` until the edge
/// is removed. Removing an edge that does not exist is refused.
fn dependencies(
    graph: CUgraph,
    from: *const CUgraphNode,
    to: *const CUgraphNode,
    count: usize,
    add: bool,
) -> Res {
    edit_dependencies(graph, from, to, count, |deps, f| {
        match deps.iter().position(|&d| d == f) {
            Some(at) if !add => {
                deps.remove(at);
            }
            None if add => deps.push(f),
            Some(_) => {}
            None => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        Ok(())
    })
}

/// Applies `edit` to the dependency list of each `to[i]` with `from[i]`: all of
/// them or, if one is refused, none.
fn edit_dependencies(
    graph: CUgraph,
    from: *const CUgraphNode,
    to: *const CUgraphNode,
    count: usize,
    edit: impl Fn(&mut Vec<usize>, usize) -> Res,
) -> Res {
    let mut t = lock(table());
    let from = t.indices(graph as u64, from, count)?;
    let to = t.indices(graph as u64, to, count)?;
    let g = t
        .graphs
        .get_mut(&(graph as u64))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut trial = g.clone();
    for (&f, &d) in from.iter().zip(&to) {
        edit(&mut trial.nodes[d].deps, f)?;
    }
    *g = trial;
    Ok(())
}

fn launch(exec: CUgraphExec, stream: u64) -> Res {
    let d = driver()?;
    d.stream_device(stream)?;
    if status(stream).0 != CU_STREAM_CAPTURE_STATUS_NONE {
        // A graph launched into a capture would be a child graph.
        not_in_capture(stream)?;
    }
    let (segments, memory, frees) = {
        let t = lock(table());
        let e = t
            .execs
            .get(&(exec as u64))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let segments: Vec<(Option<u64>, Option<HostOp>)> = e
            .segments
            .iter()
            .map(|s| match s {
                Segment::Server(id) => (Some(*id), None),
                Segment::Host(op) => (None, Some(*op)),
            })
            .collect();
        (segments, e.memory.clone(), e.frees.clone())
    };
    for segment in segments {
        match segment {
            // Before each server segment: a host segment before it (a host
            // function) may have written managed memory the kernels read.
            (Some(graph), _) => {
                super::managed::before(super::managed::Touch::Launch, stream)?;
                d.conn
                    .post(Request::GraphLaunch { graph, stream })
                    .map_err(fail)?
            }
            (_, Some(op)) => op.run(stream)?,
            _ => {}
        }
    }
    // Sent: what this launch allocates is outstanding until freed; what its
    // free nodes free is not (allocations first: a graph frees after it allocates).
    for m in &memory {
        set_outstanding(m, true);
    }
    for address in frees {
        if let Some(m) = graph_memory_at(address) {
            set_outstanding(&m, false);
        }
    }
    Ok(())
}

/// Where `stream` is capturing, allocates graph memory for the capture and
/// records the node: `Ok(Some(address))`; `Ok(None)` if it is not capturing.
pub(crate) fn capture_alloc(stream: u64, device: CUdevice, bytes: u64) -> Res<Option<u64>> {
    if status(stream).0 == CU_STREAM_CAPTURE_STATUS_NONE {
        return Ok(None);
    }
    let memory = GraphMemory::new(device, bytes)?;
    let address = memory.address;
    let mut t = lock(table());
    match t.capture_of(stream) {
        Some(capture) => {
            capture.nodes.push(Step::Mem(memory));
            Ok(Some(address))
        }
        // The capture ended meanwhile on another thread: the memory goes.
        None => Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED),
    }
}

/// Where `stream` is capturing, records a free of graph memory: `Ok(true)`;
/// `Ok(false)` if the stream is not capturing. A free of other memory in a
/// capture is refused (and ends the capture).
pub(crate) fn capture_free(stream: u64, address: u64) -> Res<bool> {
    if status(stream).0 == CU_STREAM_CAPTURE_STATUS_NONE {
        return Ok(false);
    }
    if !is_graph_memory(address) {
        return not_in_capture(stream).map(|()| false);
    }
    let mut t = lock(table());
    if let Some(capture) = t.capture_of(stream) {
        capture.nodes.push(Step::Free(address));
    }
    Ok(true)
}

/// Records a host step where `stream` is capturing: `Ok(true)` if it was
/// recorded (and must not run now), `Ok(false)` if the stream is not capturing.
pub(crate) fn capture_host(stream: u64, op: HostOp) -> Res<bool> {
    let mut t = lock(table());
    match t.capture_of(stream) {
        Some(capture) => {
            capture.nodes.push(Step::Host(op));
            Ok(true)
        }
        None => Ok(false),
    }
}

export! {
    // CUDA 10.0's versions have no mode; they capture as the default mode does.
    fn cuStreamBeginCapture(s: CUstream) { begin(stream_arg(s, false), CU_STREAM_CAPTURE_MODE_GLOBAL) }
    fn cuStreamBeginCapture_v2(s: CUstream, mode: CUstreamCaptureMode) { begin(stream_arg(s, false), mode) }
    fn cuStreamBeginCapture_ptsz(s: CUstream) { begin(stream_arg(s, true), CU_STREAM_CAPTURE_MODE_GLOBAL) }
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
    // The versions before flags: an error node and a log buffer, which say
    // nothing here (a refused graph's error code does).
    fn cuGraphInstantiate(exec: *mut CUgraphExec, graph: CUgraph, error_node: *mut CUgraphNode, log: *mut c_char, log_size: usize) {
        instantiate_with_log(exec, graph, error_node, log, log_size)
    }
    fn cuGraphInstantiate_v2(exec: *mut CUgraphExec, graph: CUgraph, error_node: *mut CUgraphNode, log: *mut c_char, log_size: usize) {
        instantiate_with_log(exec, graph, error_node, log, log_size)
    }
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
        // Its graph memory goes (outside the table's lock) if no graph holds it.
        let gone = lock(table()).execs.remove(&(exec as u64)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        drop_segments(gone.segments)
    }

    fn cuGraphExecUpdate_v2(exec: CUgraphExec, graph: CUgraph, info: *mut CUgraphExecUpdateResultInfo) {
        match exec_update(exec, graph) {
            Ok(()) => {
                update_info(info, CU_GRAPH_EXEC_UPDATE_SUCCESS);
                Ok(())
            }
            Err((code, why)) => {
                update_info(info, why);
                Err(code)
            }
        }
    }

    fn cuGraphExecUpdate(exec: CUgraphExec, graph: CUgraph, error_node: *mut CUgraphNode, result: *mut CUgraphExecUpdateResult) {
        if !error_node.is_null() {
            put(error_node, std::ptr::null_mut())?;
        }
        let outcome = exec_update(exec, graph);
        let why = outcome.as_ref().err().map_or(CU_GRAPH_EXEC_UPDATE_SUCCESS, |e| e.1);
        if !result.is_null() {
            put(result, why)?;
        }
        outcome.map_err(|e| e.0)
    }

    fn cuGraphExecKernelNodeSetParams_v2(exec: CUgraphExec, node: CUgraphNode, p: *const CUDA_KERNEL_NODE_PARAMS) {
        exec_kernel_params(exec, node, kernel_params_op(p)?)
    }

    fn cuGraphKernelNodeSetParams_v2(node: CUgraphNode, p: *const CUDA_KERNEL_NODE_PARAMS) {
        let op = kernel_params_op(p)?;
        let mut t = lock(table());
        let &(graph, index) = t.nodes.get(&(node as u64)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let g = t.graphs.get_mut(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let slot = &mut g.nodes[index].op;
        *slot = kernel_params_for(slot, op)?;
        Ok(())
    }

    fn cuGraphAddHostNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, p: *const CUDA_HOST_NODE_PARAMS) {
        if p.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes the parameters.
        let p = unsafe { &*p };
        let f = p.fn_.ok_or(CUDA_ERROR_INVALID_VALUE)? as usize;
        add_node(out, graph, deps, count, Op::Host(HostOp::Func { f, data: p.userData as usize }))
    }

    fn cuGraphDestroy(graph: CUgraph) {
        let gone = {
            let mut t = lock(table());
            let gone = t.graphs.remove(&(graph as u64)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            t.nodes.retain(|_, (g, _)| *g != graph as u64);
            gone
        };
        // Its graph memory goes here, outside the table's lock, if nothing else
        // holds it.
        drop(gone);
        Ok(())
    }

    fn cuGraphCreate(graph: *mut CUgraph, flags: u32) {
        if flags != 0 || graph.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut t = lock(table());
        let handle = t.handle();
        t.graphs.insert(handle, Graph::default());
        put(graph, handle as CUgraph)
    }

    fn cuGraphGetNodes(graph: CUgraph, nodes: *mut CUgraphNode, count: *mut usize) {
        if count.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let t = lock(table());
        let g = t.graphs.get(&(graph as u64)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if nodes.is_null() {
            return put(count, g.count());
        }
        // SAFETY: the caller passes room for `*count` node handles.
        let room = unsafe { *count };
        let n = room.min(g.count());
        for (i, node) in g.nodes.iter().take(n).enumerate() {
            // SAFETY: `i < *count`, within the caller's array.
            unsafe { *nodes.add(i) = node.handle as CUgraphNode };
        }
        put(count, n)
    }

    fn cuGraphNodeGetType(node: CUgraphNode, kind: *mut CUgraphNodeType) {
        let t = lock(table());
        let &(graph, index) = t.nodes.get(&(node as u64)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let op = &t.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?.nodes[index].op;
        put(kind, match op {
            Op::Work(GraphNode::Kernel { .. } | GraphNode::ClusteredKernel { .. }) => CU_GRAPH_NODE_TYPE_KERNEL,
            Op::Work(GraphNode::Memset { .. } | GraphNode::Memset2D { .. }) => CU_GRAPH_NODE_TYPE_MEMSET,
            Op::Work(GraphNode::CopyDtoD { .. } | GraphNode::CopyArrayDevice { .. } | GraphNode::CopyArrayArray { .. }) => CU_GRAPH_NODE_TYPE_MEMCPY,
            Op::Work(GraphNode::EventRecord { .. }) => CU_GRAPH_NODE_TYPE_EVENT_RECORD,
            Op::Work(GraphNode::WaitEvent { .. }) => CU_GRAPH_NODE_TYPE_WAIT_EVENT,
            Op::Host(HostOp::Func { .. }) => CU_GRAPH_NODE_TYPE_HOST,
            Op::Host(_) => CU_GRAPH_NODE_TYPE_MEMCPY,
            Op::Empty => CU_GRAPH_NODE_TYPE_EMPTY,
            Op::Child(_) => CU_GRAPH_NODE_TYPE_GRAPH,
            Op::MemAlloc(_) => CU_GRAPH_NODE_TYPE_MEM_ALLOC,
            Op::MemFree(_) => CU_GRAPH_NODE_TYPE_MEM_FREE,
        })
    }

    fn cuGraphAddMemAllocNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, p: *mut CUDA_MEM_ALLOC_NODE_PARAMS) {
        if p.is_null() || out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes the parameters, and takes
        // the address back in them.
        let params = unsafe { &mut *p };
        if params.bytesize == 0 || params.poolProps.allocType != CU_MEM_ALLOCATION_TYPE_PINNED {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let device = super::pool::location_device(&params.poolProps.location)?;
        // The graph and dependencies are checked before memory is taken.
        lock(table()).deps(graph as u64, deps, count)?;
        let memory = GraphMemory::new(device, params.bytesize as u64)?;
        params.dptr = memory.address;
        add_node(out, graph, deps, count, Op::MemAlloc(memory))
    }

    fn cuGraphAddMemFreeNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, dptr: CUdeviceptr) {
        if !is_graph_memory(dptr) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        add_node(out, graph, deps, count, Op::MemFree(dptr))
    }

    fn cuGraphMemAllocNodeGetParams(node: CUgraphNode, p: *mut CUDA_MEM_ALLOC_NODE_PARAMS) {
        let t = lock(table());
        let &(graph, index) = t.nodes.get(&(node as u64)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let Op::MemAlloc(m) = &t.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?.nodes[index].op else {
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        let mut params = CUDA_MEM_ALLOC_NODE_PARAMS { bytesize: m.bytes as usize, dptr: m.address, ..Default::default() };
        params.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
        params.poolProps.location.type_ = CU_MEM_LOCATION_TYPE_DEVICE;
        params.poolProps.location.__bindgen_anon_1.id = m.device;
        put(p, params)
    }

    fn cuGraphMemFreeNodeGetParams(node: CUgraphNode, dptr: *mut CUdeviceptr) {
        let t = lock(table());
        let &(graph, index) = t.nodes.get(&(node as u64)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        match &t.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?.nodes[index].op {
            Op::MemFree(address) => put(dptr, *address),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    fn cuGraphAddKernelNode_v2(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, p: *const CUDA_KERNEL_NODE_PARAMS) {
        add_node(out, graph, deps, count, kernel_params_op(p)?)
    }

    fn cuGraphAddKernelNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, p: *const CUDA_KERNEL_NODE_PARAMS_v1) {
        if p.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes the parameters.
        let p = unsafe { &*p };
        let op = kernel_node(p.func, [p.gridDimX, p.gridDimY, p.gridDimZ], [p.blockDimX, p.blockDimY, p.blockDimZ], p.sharedMemBytes, p.kernelParams, p.extra)?;
        add_node(out, graph, deps, count, op)
    }

    fn cuGraphAddMemsetNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, p: *const CUDA_MEMSET_NODE_PARAMS, _ctx: CUcontext) {
        let op = memset_node(p)?;
        add_node(out, graph, deps, count, op)
    }

    fn cuGraphAddMemcpyNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, p: *const CUDA_MEMCPY3D, _ctx: CUcontext) {
        let op = memcpy_node(p)?;
        add_node(out, graph, deps, count, op)
    }

    fn cuGraphAddEmptyNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize) {
        add_node(out, graph, deps, count, Op::Empty)
    }

    fn cuGraphAddChildGraphNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, child: CUgraph) {
        let copy = lock(table()).graphs.get(&(child as u64)).cloned().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if copy.depth() >= MAX_DEPTH {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        add_node(out, graph, deps, count, Op::Child(copy))
    }

    fn cuGraphAddEventRecordNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, event: CUevent) {
        let event = event_known(event)?;
        add_node(out, graph, deps, count, Op::Work(GraphNode::EventRecord { event }))
    }

    fn cuGraphAddEventWaitNode(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, count: usize, event: CUevent) {
        let event = event_known(event)?;
        add_node(out, graph, deps, count, Op::Work(GraphNode::WaitEvent { event, flags: 0 }))
    }

    fn cuGraphAddDependencies(graph: CUgraph, from: *const CUgraphNode, to: *const CUgraphNode, count: usize) {
        dependencies(graph, from, to, count, true)
    }

    fn cuGraphAddDependencies_v2(graph: CUgraph, from: *const CUgraphNode, to: *const CUgraphNode, _edges: *const CUgraphEdgeData, count: usize) {
        dependencies(graph, from, to, count, true)
    }

    fn cuGraphRemoveDependencies(graph: CUgraph, from: *const CUgraphNode, to: *const CUgraphNode, count: usize) {
        dependencies(graph, from, to, count, false)
    }

    fn cuGraphRemoveDependencies_v2(graph: CUgraph, from: *const CUgraphNode, to: *const CUgraphNode, _edges: *const CUgraphEdgeData, count: usize) {
        dependencies(graph, from, to, count, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    fn dims(blocks: u32) -> LaunchDims {
        LaunchDims {
            grid: [blocks, 1, 1],
            block: [32, 1, 1],
            shared_bytes: 0,
        }
    }

    #[test]
    fn a_clustered_kernel_node_keeps_its_clusters_when_given_new_parameters() {
        let clustered = Op::Work(GraphNode::ClusteredKernel {
            function: 1,
            dims: dims(4),
            cluster: [2, 1, 1],
            params: ByteBuf::from(vec![1]),
        });
        let new = || {
            Op::Work(GraphNode::Kernel {
                function: 2,
                dims: dims(8),
                params: ByteBuf::from(vec![2]),
            })
        };
        assert!(matches!(
            kernel_params_for(&clustered, new()),
            Ok(Op::Work(GraphNode::ClusteredKernel { function: 2, cluster: [2, 1, 1], ref params, dims: LaunchDims { grid: [8, 1, 1], .. } })) if params.as_ref() == [2]
        ));
        assert!(matches!(
            kernel_params_for(&new(), new()),
            Ok(Op::Work(GraphNode::Kernel { function: 2, .. }))
        ));
        assert!(kernel_params_for(&Op::Empty, new()).is_err());
        // One kind of node for an update, in clusters or not.
        let Op::Work(node) = &clustered else {
            unreachable!()
        };
        assert!(is_kernel(node));
    }
}
