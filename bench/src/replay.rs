//! Replaying a call trace (`XPUPOOL_TRACE`, see `xpupool_client::trace`) against a
//! server: every request the traced process sent is sent again, in order, through
//! a client [`Connection`], which decides as it always does what waits for a reply.
//!
//! The trace has no data, so:
//! - copies carry zeros of the recorded length, kernels get zeroed parameters;
//! - each module is replaced by PTX with the same number of kernels (each of which
//!   returns at once, with the recorded parameter size) and the module variables the
//!   program looked up (with their recorded sizes);
//! - handles and device addresses of the recording are mapped to the ones the
//!   replaying server hands out (an address inside an allocation maps to the same
//!   offset in the new one).
//!
//! Each span between a `cuProfilerStart` and a `cuProfilerStop` call is one step. For
//! every step the replay measures its wall time, the round trips and bytes the
//! client needed, and counts the synchronisation points the trace marks in it.
//! A request that succeeded when recorded and fails now stops the replay with the
//! trace line at fault.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Serialize;
use serde_bytes::ByteBuf;
use serde_json::Value;
use sha2::{Digest, Sha256};
use xpupool_client::Connection;

use crate::pool::cu;
use xpupool_fatbin::Image;
use xpupool_protocol::api::{Arg, GraphNode, ModuleInfo};
use xpupool_protocol::{Calls, CuError, Reply, Request};

/// The trace committed with xpupool: three training steps of a small PyTorch model
/// (`bench/traces/torch_step.py`, recorded by `bench/traces/record.sh`).
pub const COMMITTED: &[u8] = include_bytes!("../traces/torch-train-step.jsonl.gz");
/// Its name, for reports.
pub const COMMITTED_NAME: &str = "bench/traces/torch-train-step.jsonl.gz";

/// One line of a trace.
#[derive(Debug)]
enum Event {
    /// A driver call.
    Call { name: String, sync: bool },
    /// A request to the server.
    Op(Op),
}

#[derive(Debug)]
struct Op {
    /// Line number in the trace (1-based), for errors.
    line: usize,
    /// The driver call that sent it (its `seq`).
    within: u64,
    request: Request,
    /// Length of the data the trace left out.
    bytes: u64,
    /// The recorded answer (`None`: sent without waiting, or failed).
    reply: Option<Reply>,
    /// Whether it failed when recorded.
    failed: bool,
}

/// A parsed trace.
pub struct Trace {
    events: Vec<Event>,
    /// The traced command line.
    pub program: String,
    /// Steps (`cuProfilerStart` … `cuProfilerStop` spans).
    pub steps: usize,
    /// Driver calls recorded.
    pub calls: usize,
    /// Requests recorded.
    pub requests: usize,
    /// Wall time of each step when recorded, ms.
    pub recorded_step_ms: Vec<f64>,
}

impl Trace {
    /// Parses a trace, plain or gzip-compressed.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let text = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut text = String::new();
            flate2::read::GzDecoder::new(bytes)
                .read_to_string(&mut text)
                .context("decompressing the trace")?;
            text
        } else {
            String::from_utf8(bytes.to_vec()).context("the trace is not UTF-8")?
        };
        let mut lines = text.lines().enumerate();
        let header: Value = match lines.next() {
            Some((_, line)) => serde_json::from_str(line).context("trace line 1")?,
            None => bail!("the trace is empty"),
        };
        ensure!(
            header["trace"] == "xpupool" && header["version"] == 1,
            "line 1 is not an xpupool trace header (version 1): {header}"
        );
        let mut trace = Trace {
            events: Vec::new(),
            program: header["program"].as_str().unwrap_or_default().to_owned(),
            steps: 0,
            calls: 0,
            requests: 0,
            recorded_step_ms: Vec::new(),
        };
        let mut step_start = None;
        for (i, line) in lines {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).with_context(|| format!("trace line {n}"))?;
            if let Some(name) = v["call"].as_str() {
                trace.calls += 1;
                let at = v["t_us"].as_f64().unwrap_or(0.0);
                match name {
                    "cuProfilerStart" => step_start = Some(at),
                    "cuProfilerStop" => {
                        if let Some(start) = step_start.take() {
                            trace.steps += 1;
                            trace.recorded_step_ms.push((at - start) / 1000.0);
                        }
                    }
                    _ => {}
                }
                trace.events.push(Event::Call {
                    name: name.to_owned(),
                    sync: v["sync"].as_bool().unwrap_or(false),
                });
            } else if !v["op"].is_null() {
                trace.requests += 1;
                let request: Request = serde_json::from_value(with_device(v["op"].clone()))
                    .with_context(|| format!("trace line {n}: the request"))?;
                let reply = if v["reply"].is_null() {
                    None
                } else {
                    Some(
                        serde_json::from_value(v["reply"].clone())
                            .with_context(|| format!("trace line {n}: the reply"))?,
                    )
                };
                trace.events.push(Event::Op(Op {
                    line: n,
                    within: v["in"].as_u64().unwrap_or(0),
                    request,
                    bytes: v["bytes"].as_u64().unwrap_or(0),
                    reply,
                    failed: !v["error"].is_null(),
                }));
            } else {
                bail!("trace line {n} is neither a call nor a request: {line}");
            }
        }
        ensure!(
            trace.steps > 0,
            "the trace has no step (no cuProfilerStart … cuProfilerStop span)"
        );
        Ok(trace)
    }

    /// The committed PyTorch trace.
    pub fn committed() -> Result<Self> {
        Self::parse(COMMITTED).context(COMMITTED_NAME)
    }
}

/// What a replay measured, per step (medians over the steps).
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    /// Steps replayed.
    pub steps: usize,
    /// Wall time of a step, ms.
    pub step_ms: f64,
    /// Requests per step that waited for their reply.
    pub round_trips_per_step: f64,
    /// Requests per step sent without waiting.
    pub posted_per_step: f64,
    /// Synchronisation points per step in the trace (calls marked `sync`).
    pub sync_points_per_step: f64,
    /// Bytes per step the client wrote to the server.
    pub bytes_per_step: f64,
    /// Driver calls per step in the trace.
    pub calls_per_step: f64,
    /// Wall time of the whole replay (set-up included), ms.
    pub total_ms: f64,
}

/// A module of the recording and the stand-in sent in its place.
struct Stand {
    /// The recorded module handle.
    handle: u64,
    /// The recorded functions' handles and parameter sizes, in order: kernel `k{i}`
    /// stands for the i-th.
    functions: Vec<(u64, u32)>,
    /// Recorded variable names looked up in it: `g{i}` stands for the i-th, with its size.
    globals: Vec<(String, u64)>,
}

impl Stand {
    fn image(&self) -> Vec<u8> {
        let mut ptx = String::from(".version 8.0\n.target sm_90\n.address_size 64\n\n");
        for (i, (_, size)) in self.globals.iter().enumerate() {
            ptx.push_str(&format!(
                ".visible .global .align 8 .b8 g{i}[{}];\n",
                size.max(&1)
            ));
        }
        for (i, &(_, params)) in self.functions.iter().enumerate() {
            match params {
                0 => ptx.push_str(&format!(".visible .entry k{i}()\n{{\n\tret;\n}}\n")),
                n => ptx.push_str(&format!(
                    ".visible .entry k{i}(.param .align 8 .b8 k{i}_p[{n}])\n{{\n\tret;\n}}\n"
                )),
            }
        }
        Image::Ptx(ptx).to_wire()
    }
}

/// Old → new handles and addresses.
#[derive(Default)]
struct Map {
    /// Recorded allocation base → (length, new base).
    ranges: BTreeMap<u64, (u64, u64)>,
    /// Streams, events, modules.
    handles: HashMap<u64, u64>,
    /// Recorded function → new function.
    functions: HashMap<u64, u64>,
    /// Recorded module → the stand-in loaded for it.
    modules: HashMap<u64, usize>,
    /// Stand-ins loaded.
    loaded: std::collections::HashSet<usize>,
}

impl Map {
    fn address(&self, old: u64) -> Result<u64> {
        if old == 0 {
            return Ok(0);
        }
        match self.ranges.range(..=old).next_back() {
            Some((&base, &(len, new))) if old - base <= len => Ok(new + (old - base)),
            _ => bail!("device address {old:#x} lies in no allocation of the trace"),
        }
    }

    fn stream(&self, old: u64) -> Result<u64> {
        if old <= 2 {
            return Ok(old);
        }
        self.handle(old, "stream")
    }

    fn handle(&self, old: u64, what: &str) -> Result<u64> {
        self.handles
            .get(&old)
            .copied()
            .ok_or_else(|| anyhow!("{what} {old:#x} was never created in the trace"))
    }

    fn function(&self, old: u64) -> Result<u64> {
        self.functions
            .get(&old)
            .copied()
            .ok_or_else(|| anyhow!("function {old:#x} of no loaded module"))
    }
}

/// Per-module facts gathered before replaying.
struct Plan {
    /// One stand-in per recorded module load, in trace order (handles of the
    /// recording may be reused after an unload, so loads are told apart by when
    /// they happened, not by handle).
    stands: Vec<Stand>,
    /// Event index of a load whose reply names the module → its stand-in.
    loads: HashMap<usize, usize>,
    /// Driver call (`seq`) of a cache look-up that missed → the stand-in of the
    /// upload that followed it in the same call.
    uploads: HashMap<u64, usize>,
}

fn module_info(reply: &Option<Reply>) -> Option<&ModuleInfo> {
    match reply {
        Some(Reply::ModuleLoad(info)) | Some(Reply::ModuleLoadCached(Some(info))) => Some(info),
        _ => None,
    }
}

fn plan(trace: &Trace) -> Plan {
    let mut plan = Plan {
        stands: Vec::new(),
        loads: HashMap::new(),
        uploads: HashMap::new(),
    };
    // The stand-in of each recorded module handle, as of this point of the trace.
    let mut current: HashMap<u64, usize> = HashMap::new();
    for (i, event) in trace.events.iter().enumerate() {
        let Event::Op(op) = event else { continue };
        if let Some(info) = module_info(&op.reply) {
            let k = plan.stands.len();
            plan.stands.push(Stand {
                handle: info.handle,
                functions: info
                    .functions
                    .iter()
                    .map(|f| (f.handle, f.param_bytes))
                    .collect(),
                globals: Vec::new(),
            });
            plan.loads.insert(i, k);
            current.insert(info.handle, k);
            if matches!(op.request, Request::ModuleLoad { .. }) {
                plan.uploads.insert(op.within, k);
            }
        }
        if let (Request::ModuleGetGlobal { module, name }, Some(Reply::ModuleGetGlobal(g))) =
            (&op.request, &op.reply)
        {
            if let Some(&k) = current.get(module) {
                let stand = &mut plan.stands[k];
                if !stand.globals.iter().any(|(n, _)| n == name) {
                    stand.globals.push((name.clone(), g.size));
                }
            }
        }
    }
    plan
}

/// Replays `trace` on `conn`, reporting `progress` (0..1) as it goes.
pub fn replay(trace: &Trace, conn: &Connection, mut progress: impl FnMut(f64)) -> Result<Replay> {
    let plan = plan(trace);
    let mut map = Map::default();
    let mut steps: Vec<StepFigures> = Vec::new();
    let mut step: Option<(Instant, xpupool_client::Stats, StepFigures)> = None;
    let started = Instant::now();
    let total = trace.events.len().max(1);
    let events = &trace.events;
    let mut i = 0;
    while i < events.len() {
        if i % 256 == 0 {
            progress(i as f64 / total as f64);
        }
        let op = match &events[i] {
            Event::Call { name, sync } => {
                match name.as_str() {
                    "cuProfilerStart" => {
                        step = Some((Instant::now(), conn.stats(), StepFigures::default()))
                    }
                    "cuProfilerStop" => {
                        if let Some((at, before, mut figures)) = step.take() {
                            figures.time = at.elapsed();
                            let after = conn.stats();
                            figures.round_trips = after.round_trips - before.round_trips;
                            figures.posted = after.posted - before.posted;
                            figures.bytes = after.bytes_sent - before.bytes_sent;
                            steps.push(figures);
                        }
                    }
                    _ => {}
                }
                if let Some((_, _, figures)) = &mut step {
                    figures.calls += 1;
                    figures.sync_points += u64::from(*sync);
                }
                i += 1;
                continue;
            }
            Event::Op(op) => op,
        };
        let context = || format!("replaying trace line {} ({})", op.line, op.request.name());
        // One copy through the recording's shared-memory region is several slot
        // requests of one driver call: copied again as one, the way this
        // connection copies.
        if let Some((address, len, stream, to_device)) = shared_copy(op) {
            let mut total = len;
            let mut next = i + 1;
            while let Some(Event::Op(more)) = events.get(next) {
                match shared_copy(more) {
                    Some((a, l, s, t))
                        if more.within == op.within
                            && t == to_device
                            && s == stream
                            && a == address + total =>
                    {
                        total += l;
                        next += 1;
                    }
                    _ => break,
                }
            }
            let (address, stream) = (map.address(address), map.stream(stream));
            let (address, stream) = (
                address.with_context(context)?,
                stream.with_context(context)?,
            );
            let mut bytes = vec![0u8; total as usize];
            let result = if to_device {
                conn.copy_to_device(address, &bytes, stream)
            } else {
                conn.copy_from_device(address, &mut bytes, stream)
            };
            expect(op, result).with_context(context)?;
            i = next;
            continue;
        }
        send(op, i, &plan, &mut map, conn).with_context(context)?;
        i += 1;
    }
    conn.synchronize()
        .map_err(cu)
        .context("the final synchronize of the replay")?;
    progress(1.0);
    ensure!(!steps.is_empty(), "the replay measured no step");
    let med = |f: &dyn Fn(&StepFigures) -> f64| {
        let mut v: Vec<f64> = steps.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Replay {
        steps: steps.len(),
        step_ms: med(&|s| s.time.as_secs_f64() * 1000.0),
        round_trips_per_step: med(&|s| s.round_trips as f64),
        posted_per_step: med(&|s| s.posted as f64),
        sync_points_per_step: med(&|s| s.sync_points as f64),
        bytes_per_step: med(&|s| s.bytes as f64),
        calls_per_step: med(&|s| s.calls as f64),
        total_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

#[derive(Default)]
struct StepFigures {
    time: Duration,
    round_trips: u64,
    posted: u64,
    bytes: u64,
    calls: u64,
    sync_points: u64,
}

/// A copy through the shared-memory region: (device address, length, stream,
/// whether to the device).
fn shared_copy(op: &Op) -> Option<(u64, u64, u64, bool)> {
    match op.request {
        Request::MemcpyHtoDShared {
            dst, len, stream, ..
        } => Some((dst, len, stream, true)),
        Request::MemcpyDtoHShared {
            src, len, stream, ..
        } => Some((src, len, stream, false)),
        _ => None,
    }
}

/// A request recorded before requests named their device (protocol 2), as it is
/// now: those programs had one device, 0.
fn with_device(mut op: Value) -> Value {
    const NAMING: &[&str] = &[
        "ModuleLoad",
        "ModuleLoadCached",
        "StreamCreate",
        "EventCreate",
    ];
    if let Some(map) = op.as_object_mut() {
        for name in NAMING {
            if let Some(fields) = map.get_mut(*name).and_then(Value::as_object_mut) {
                fields.entry("device").or_insert(Value::from(0));
            }
        }
    }
    op
}

/// Loads stand-in `k` (by content hash first, as the shim does) and maps its
/// recorded module and functions to the new ones.
fn load_stand(k: usize, plan: &Plan, map: &mut Map, conn: &Connection) -> Result<()> {
    let stand = &plan.stands[k];
    let wire = stand.image();
    let hash: [u8; 32] = Sha256::digest(&wire).into();
    let info = match conn.module_load_cached(0, hash).map_err(cu)? {
        Some(info) => info,
        None => conn.module_load(0, ByteBuf::from(wire)).map_err(cu)?,
    };
    ensure!(
        info.functions.len() == stand.functions.len(),
        "the stand-in of module {:#x} has {} kernels, the recording {}",
        stand.handle,
        info.functions.len(),
        stand.functions.len()
    );
    map.handles.insert(stand.handle, info.handle);
    map.modules.insert(stand.handle, k);
    for new in &info.functions {
        let i: usize = new.name[1..]
            .parse()
            .with_context(|| format!("stand-in kernel {}", new.name))?;
        map.functions.insert(stand.functions[i].0, new.handle);
    }
    Ok(())
}

fn send(op: &Op, index: usize, plan: &Plan, map: &mut Map, conn: &Connection) -> Result<()> {
    match &op.request {
        Request::ModuleLoadCached { .. } | Request::ModuleLoad { .. } => {
            // A look-up by hash that missed is followed, in the same driver call, by
            // the upload whose reply names the module; both become one load here.
            let stand = plan
                .loads
                .get(&index)
                .or_else(|| plan.uploads.get(&op.within))
                .copied();
            match stand {
                // The upload after a missed look-up: loaded at the look-up.
                Some(k) if map.loaded.contains(&k) => {}
                Some(k) => {
                    load_stand(k, plan, map, conn)?;
                    map.loaded.insert(k);
                }
                None if op.failed => {}
                None => bail!("a module load whose module the trace does not name"),
            }
            return Ok(());
        }
        Request::MemAlloc { device, bytes } => {
            let new = conn.mem_alloc(*device, *bytes);
            if let (Some(Reply::MemAlloc(old)), Ok(new)) = (&op.reply, &new) {
                map.ranges.insert(*old, (*bytes, *new));
            }
            return expect(op, new.map(|_| ()));
        }
        Request::MemFree { ptr } => {
            let new = map.address(*ptr)?;
            map.ranges.remove(ptr);
            return expect(op, conn.post(Request::MemFree { ptr: new }));
        }
        Request::ModuleGetGlobal { module, name } => {
            let stand = map
                .modules
                .get(module)
                .map(|&k| &plan.stands[k])
                .ok_or_else(|| anyhow!("module {module:#x} was never loaded"))?;
            let index = stand.globals.iter().position(|(n, _)| n == name);
            let (Some(index), Some(Reply::ModuleGetGlobal(old))) = (index, &op.reply) else {
                return Ok(()); // a look-up that failed when recorded
            };
            let new = conn
                .module_get_global(map.handle(*module, "module")?, format!("g{index}"))
                .map_err(cu)?;
            map.ranges.insert(old.address, (old.size, new.address));
            return Ok(());
        }
        Request::StreamCreate { .. } | Request::EventCreate { .. } => {
            let result = conn.call(op.request.clone());
            if let (
                Some(Reply::StreamCreate(old) | Reply::EventCreate(old)),
                Ok(Reply::StreamCreate(new) | Reply::EventCreate(new)),
            ) = (&op.reply, &result)
            {
                map.handles.insert(*old, *new);
            }
            return expect(op, result.map(|_| ()));
        }
        Request::MemAddressReserve {
            device,
            size,
            alignment,
        } => {
            let new = conn.mem_address_reserve(*device, *size, *alignment);
            if let (Some(Reply::MemAddressReserve(old)), Ok(new)) = (&op.reply, &new) {
                map.ranges.insert(*old, (*size, *new));
            }
            return expect(op, new.map(|_| ()));
        }
        Request::MemAddressFree { ptr, size } => {
            let new = map.address(*ptr)?;
            map.ranges.remove(ptr);
            return expect(op, conn.mem_address_free(new, *size));
        }
        Request::MemCreate { device, size } => {
            let new = conn.mem_create(*device, *size);
            if let (Some(Reply::MemCreate(old)), Ok(new)) = (&op.reply, &new) {
                map.handles.insert(*old, *new);
            }
            return expect(op, new.map(|_| ()));
        }
        Request::GraphCreate { nodes } => {
            let nodes = nodes
                .iter()
                .map(|node| {
                    let bytes = match node {
                        GraphNode::Kernel { params, .. }
                        | GraphNode::ClusteredKernel { params, .. } => params.len() as u64,
                        _ => 0,
                    };
                    let request = remapped(&node.in_stream(0), bytes, map)?;
                    GraphNode::from_request(&request)
                        .map(|(node, _)| node)
                        .ok_or_else(|| anyhow!("a graph node that is no stream operation"))
                })
                .collect::<Result<Vec<_>>>()?;
            let new = conn.graph_create(nodes);
            if let (Some(Reply::GraphCreate(old)), Ok(new)) = (&op.reply, &new) {
                map.handles.insert(*old, *new);
            }
            return expect(op, new.map(|_| ()));
        }
        // A link's image is only ever loaded as a module, which the replay
        // replaces with a stand-in of its own.
        Request::Link { .. } => return Ok(()),
        Request::ArrayCreate { device, desc } => {
            let new = conn.array_create(*device, *desc);
            if let (Some(Reply::ArrayCreate(old)), Ok(new)) = (&op.reply, &new) {
                map.handles.insert(*old, *new);
            }
            return expect(op, new.map(|_| ()));
        }
        Request::TexObjectCreate { device, desc } | Request::SurfObjectCreate { device, desc } => {
            let mut desc = desc.clone();
            if desc.array == 0 {
                desc.address = map.address(desc.address)?;
            } else {
                desc.array = map.handle(desc.array, "array")?;
            }
            let surface = matches!(op.request, Request::SurfObjectCreate { .. });
            let new = if surface {
                conn.surf_object_create(*device, desc)
            } else {
                conn.tex_object_create(*device, desc)
            };
            if let (Some(Reply::TexObjectCreate(old) | Reply::SurfObjectCreate(old)), Ok(new)) =
                (&op.reply, &new)
            {
                map.handles.insert(*old, *new);
            }
            return expect(op, new.map(|_| ()));
        }
        _ => {}
    }
    let request = remapped(&op.request, op.bytes, map)?;
    expect(op, conn.post(request))
}

/// A request of the recording with its addresses and handles as this replay
/// has them, and zeros for its data (`bytes` of them): each argument its
/// declaration marks, mapped by its kind.
fn remapped(request: &Request, bytes: u64, map: &Map) -> Result<Request> {
    match request {
        Request::MemcpyHtoDShared { .. } | Request::MemcpyDtoHShared { .. } => {
            bail!("a copy through the shared-memory region reached the wrong replay path")
        }
        Request::GraphCreate { .. }
        | Request::Link { .. }
        | Request::ArrayCreate { .. }
        | Request::TexObjectCreate { .. }
        | Request::SurfObjectCreate { .. }
        | Request::MemAlloc { .. }
        | Request::MemFree { .. }
        | Request::ModuleLoadCached { .. }
        | Request::ModuleLoad { .. }
        | Request::ModuleGetGlobal { .. }
        | Request::StreamCreate { .. }
        | Request::EventCreate { .. }
        | Request::MemAddressReserve { .. }
        | Request::MemAddressFree { .. }
        | Request::MemCreate { .. } => {
            bail!(
                "{} makes something the replay must map (sent by `send`)",
                request.name()
            )
        }
        Request::IpcGetMemHandle { .. }
        | Request::IpcOpenMemHandle { .. }
        | Request::IpcCloseMemHandle { .. }
        | Request::IpcGetEventHandle { .. }
        | Request::IpcOpenEventHandle { .. } => {
            bail!("the trace shares memory or events with other processes (IPC), which a replay of one process cannot")
        }
        _ => {}
    }
    let mut request = request.clone();
    request.for_each_arg(|arg| {
        match arg {
            Arg::Address(a) => *a = map.address(*a)?,
            Arg::Stream(s) => *s = map.stream(*s)?,
            Arg::Function(f) => *f = map.function(*f)?,
            Arg::Handle(what, h) => *h = map.handle(*h, what)?,
            Arg::Data(data) => *data = ByteBuf::from(vec![0u8; bytes as usize]),
            // The replay's server numbers its devices as the recording's did.
            Arg::Device(_) => {}
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(request)
}

/// A failure now of a request that succeeded when recorded is an error; one that
/// failed then may fail again.
fn expect(op: &Op, result: Result<impl Sized, CuError>) -> Result<()> {
    match result {
        Err(_) if op.failed => Ok(()),
        Err(e) => Err(cu(e)),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_trace_parses_and_has_steps() {
        let trace = Trace::committed().expect("parses");
        assert_eq!(trace.steps, 3);
        assert!(trace.program.contains("torch_step.py"), "{}", trace.program);
        assert!(trace.requests > 100 && trace.calls > trace.requests);
        assert_eq!(trace.recorded_step_ms.len(), 3);
    }

    #[test]
    fn a_trace_without_steps_or_header_is_refused() {
        assert!(Trace::parse(b"").is_err());
        assert!(Trace::parse(b"{\"call\":\"cuInit\"}\n").is_err());
        let header = b"{\"trace\":\"xpupool\",\"version\":1,\"pid\":1,\"program\":\"x\"}\n";
        let err = Trace::parse(header).err().expect("no steps");
        assert!(err.to_string().contains("no step"), "{err}");
    }

    #[test]
    fn addresses_inside_allocations_keep_their_offset() {
        let mut map = Map::default();
        map.ranges.insert(0x1000, (0x100, 0x9000));
        assert_eq!(map.address(0x1000).unwrap(), 0x9000);
        assert_eq!(map.address(0x1080).unwrap(), 0x9080);
        assert_eq!(map.address(0x1100).unwrap(), 0x9100); // one past the end
        assert!(map.address(0x1101).is_err());
        assert!(map.address(0x0fff).is_err());
        assert_eq!(map.address(0).unwrap(), 0);
        assert_eq!(map.stream(2).unwrap(), 2);
        assert!(map.stream(7).is_err());
    }
}
