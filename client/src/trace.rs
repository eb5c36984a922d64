//! Call traces: with `XPUPOOL_TRACE=FILE` a process writes every driver call it makes
//! and every request it sends to the server to FILE, one JSON object per line. The
//! trace holds names, handles, sizes, flags and timing, never the data: copied
//! bytes, kernel parameters and module images appear as their lengths only.
//!
//! Lines, in the order things happened:
//! - the header: `{"trace":"xpupool","version":1,"pid":…,"program":…}`;
//! - a driver call, written when it returns:
//!   `{"call":"cuMemcpyDtoH_v2","seq":7,"thread":1,"t_us":…,"us":…,"result":0,"sync":true}`.
//!   `sync` marks a synchronisation point: a call whose CUDA semantics make the host
//!   wait for the device (synchronise, query, copy to the host), whether or not
//!   xpupool needed the server to answer it;
//! - a request, written when it is sent (`"wait":false`, batched without waiting) or
//!   when its reply arrived (`"wait":true`, one round trip):
//!   `{"op":{"MemAlloc":{…}},"bytes":0,"in":7,"wait":true,"t_us":…,"us":…,"reply":…,"error":null}`.
//!   `in` is the `seq` of the driver call that sent it (0: none), `bytes` the length
//!   of the data left out, `reply` the answer with its data left out too.
//!
//! `cuProfilerStart` and `cuProfilerStop` are recorded like any call; `xpupool bench
//! replay` treats each span between them as one step of the program.
//!
//! A process started by a traced process inherits `XPUPOOL_TRACE`; so that it does
//! not overwrite its parent's trace, it writes to `FILE.PID` while the process that
//! owns FILE is alive. `%p` in FILE is replaced by the process id.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde_bytes::ByteBuf;
use serde_json::{json, Value};
use xpupool_protocol::api::GraphNode;
use xpupool_protocol::{CuError, Reply, Request};

/// The environment variable naming the trace file.
pub const TRACE_ENV: &str = "XPUPOOL_TRACE";

/// An open trace.
pub struct Tracer {
    out: Mutex<BufWriter<File>>,
    start: Instant,
    seq: AtomicU64,
    threads: AtomicU64,
}

thread_local! {
    /// The driver call in progress on this thread (its `seq`), 0 if none.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    /// Set by [`sync_point`] during the current call.
    static SYNC: Cell<bool> = const { Cell::new(false) };
    /// This thread's number in the trace, 0 until it first records.
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

/// The process's tracer, if `XPUPOOL_TRACE` is set and its file could be made.
pub fn tracer() -> Option<&'static Tracer> {
    static TRACER: OnceLock<Option<Tracer>> = OnceLock::new();
    TRACER
        .get_or_init(|| {
            let path = std::env::var(TRACE_ENV).ok().filter(|p| !p.is_empty())?;
            match Tracer::create(&path) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!("{TRACE_ENV}={path}: cannot write the trace: {e:#}");
                    None
                }
            }
        })
        .as_ref()
}

/// Whether another live process owns the trace at `path` (its header names it).
fn owned_by_other(path: &str) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut first = String::new();
    if BufReader::new(file).read_line(&mut first).is_err() {
        return false;
    }
    let pid = serde_json::from_str::<Value>(&first)
        .ok()
        .and_then(|v| v["pid"].as_u64());
    match pid {
        Some(pid) if pid != u64::from(std::process::id()) => {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

impl Tracer {
    fn create(path: &str) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let mut path = path.replace("%p", &pid.to_string());
        if owned_by_other(&path) {
            path = format!("{path}.{pid}");
        }
        let file = File::create(&path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let header = json!({
            "trace": "xpupool",
            "version": 1,
            "pid": pid,
            "program": std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        });
        writeln!(out, "{header}")?;
        out.flush()?;
        tracing::info!("recording driver calls to {path}");
        Ok(Self {
            out: Mutex::new(out),
            start: Instant::now(),
            seq: AtomicU64::new(0),
            threads: AtomicU64::new(0),
        })
    }

    fn micros(&self, at: Instant) -> f64 {
        (at.duration_since(self.start).as_secs_f64() * 1e7).round() / 10.0
    }

    fn thread(&self) -> u64 {
        THREAD.with(|t| {
            if t.get() == 0 {
                t.set(self.threads.fetch_add(1, Ordering::Relaxed) + 1);
            }
            t.get()
        })
    }

    fn write(&self, line: Value) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk must not break the program being traced.
        let _ = writeln!(out, "{line}");
    }

    /// Writes what is buffered (at exit, and at the end of each step).
    pub fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

/// A driver call being recorded; [`Call::end`] writes it.
pub struct Call {
    tracer: &'static Tracer,
    name: &'static str,
    seq: u64,
    outer: u64,
    outer_sync: bool,
    started: Instant,
}

/// Starts recording a driver call, if tracing is on.
pub fn begin(name: &'static str) -> Option<Call> {
    let tracer = tracer()?;
    let seq = tracer.seq.fetch_add(1, Ordering::Relaxed) + 1;
    Some(Call {
        tracer,
        name,
        seq,
        outer: CURRENT.with(|c| c.replace(seq)),
        outer_sync: SYNC.with(|s| s.replace(false)),
        started: Instant::now(),
    })
}

impl Call {
    /// Records the call with its status code.
    pub fn end(self, result: u32) {
        let t = self.tracer;
        let sync = SYNC.with(|s| s.replace(self.outer_sync));
        CURRENT.with(|c| c.set(self.outer));
        t.write(json!({
            "call": self.name,
            "seq": self.seq,
            "thread": t.thread(),
            "t_us": t.micros(self.started),
            "us": micros_since(self.started),
            "result": result,
            "sync": sync,
        }));
        if self.name == "cuProfilerStop" {
            t.flush();
        }
    }
}

/// Marks the driver call in progress as a synchronisation point.
pub fn sync_point() {
    SYNC.with(|s| s.set(true));
}

fn micros_since(at: Instant) -> f64 {
    (at.elapsed().as_secs_f64() * 1e7).round() / 10.0
}

/// A request without its data, and the data's length.
pub fn redact(request: &Request) -> (Request, u64) {
    match request {
        Request::MemcpyHtoD { dst, data, stream } => (
            Request::MemcpyHtoD {
                dst: *dst,
                data: ByteBuf::new(),
                stream: *stream,
            },
            data.len() as u64,
        ),
        Request::LaunchKernel {
            function,
            dims,
            stream,
            params,
        } => (
            Request::LaunchKernel {
                function: *function,
                dims: *dims,
                stream: *stream,
                params: ByteBuf::new(),
            },
            params.len() as u64,
        ),
        Request::LaunchCooperative {
            function,
            dims,
            stream,
            params,
        } => (
            Request::LaunchCooperative {
                function: *function,
                dims: *dims,
                stream: *stream,
                params: ByteBuf::new(),
            },
            params.len() as u64,
        ),
        Request::LaunchClustered {
            function,
            dims,
            cluster,
            stream,
            params,
        } => (
            Request::LaunchClustered {
                function: *function,
                dims: *dims,
                cluster: *cluster,
                stream: *stream,
                params: ByteBuf::new(),
            },
            params.len() as u64,
        ),
        // IPC handles open memory: a trace keeps their length only.
        Request::IpcOpenMemHandle { device, handle } => (
            Request::IpcOpenMemHandle {
                device: *device,
                handle: ByteBuf::new(),
            },
            handle.len() as u64,
        ),
        Request::IpcOpenEventHandle { device, handle } => (
            Request::IpcOpenEventHandle {
                device: *device,
                handle: ByteBuf::new(),
            },
            handle.len() as u64,
        ),
        Request::MemcpyToArray {
            array,
            region,
            data,
            stream,
        } => (
            Request::MemcpyToArray {
                array: *array,
                region: *region,
                data: ByteBuf::new(),
                stream: *stream,
            },
            data.len() as u64,
        ),
        Request::Link { device, inputs } => (
            Request::Link {
                device: *device,
                inputs: inputs
                    .iter()
                    .map(|i| xpupool_protocol::api::LinkInput {
                        kind: i.kind,
                        data: ByteBuf::new(),
                    })
                    .collect(),
            },
            inputs.iter().map(|i| i.data.len() as u64).sum(),
        ),
        // A graph's kernel nodes keep their parameters' length, not their bytes.
        Request::GraphCreate { nodes } => (
            Request::GraphCreate {
                nodes: nodes
                    .iter()
                    .map(|node| match node {
                        GraphNode::Kernel {
                            function,
                            dims,
                            params,
                        } => GraphNode::Kernel {
                            function: *function,
                            dims: *dims,
                            params: ByteBuf::from(vec![0u8; params.len()]),
                        },
                        GraphNode::ClusteredKernel {
                            function,
                            dims,
                            cluster,
                            params,
                        } => GraphNode::ClusteredKernel {
                            function: *function,
                            dims: *dims,
                            cluster: *cluster,
                            params: ByteBuf::from(vec![0u8; params.len()]),
                        },
                        other => other.clone(),
                    })
                    .collect(),
            },
            0,
        ),
        Request::ModuleLoad { device, image } => (
            Request::ModuleLoad {
                device: *device,
                image: ByteBuf::new(),
            },
            image.len() as u64,
        ),
        other => (other.clone(), 0),
    }
}

/// A reply without its data.
fn redact_reply(reply: &Reply) -> Reply {
    match reply {
        Reply::MemcpyDtoH(_) => Reply::MemcpyDtoH(ByteBuf::new()),
        Reply::MemcpyFromArray(_) => Reply::MemcpyFromArray(ByteBuf::new()),
        Reply::IpcGetMemHandle(_) => Reply::IpcGetMemHandle(ByteBuf::new()),
        Reply::IpcGetEventHandle(_) => Reply::IpcGetEventHandle(ByteBuf::new()),
        other => other.clone(),
    }
}

/// Records a request: sent without waiting (`outcome` is `None`), or answered.
pub(crate) fn request(
    tracer: &Tracer,
    request: &Request,
    started: Instant,
    outcome: Option<&Result<Reply, CuError>>,
) {
    let (op, bytes) = redact(request);
    let (reply, error) = match outcome {
        Some(Ok(reply)) => (
            serde_json::to_value(redact_reply(reply)).unwrap_or(Value::Null),
            Value::Null,
        ),
        Some(Err(e)) => (Value::Null, json!(e.code)),
        None => (Value::Null, Value::Null),
    };
    tracer.write(json!({
        "op": serde_json::to_value(op).unwrap_or(Value::Null),
        "bytes": bytes,
        "in": CURRENT.with(|c| c.get()),
        "wait": outcome.is_some(),
        "t_us": tracer.micros(started),
        "us": micros_since(started),
        "reply": reply,
        "error": error,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use xpupool_protocol::api::LaunchDims;

    #[test]
    fn requests_are_recorded_without_their_data() {
        let launch = Request::LaunchKernel {
            function: 7,
            dims: LaunchDims {
                grid: [2, 1, 1],
                block: [64, 1, 1],
                shared_bytes: 0,
            },
            stream: 2,
            params: ByteBuf::from(vec![9u8; 40]),
        };
        let (op, bytes) = redact(&launch);
        assert_eq!(bytes, 40);
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["LaunchKernel"]["params"], json!([]));
        assert_eq!(json["LaunchKernel"]["dims"]["block"], json!([64, 1, 1]));
        let copy = Request::MemcpyHtoD {
            dst: 0x1000,
            data: ByteBuf::from(vec![1u8; 1 << 20]),
            stream: 0,
        };
        let (op, bytes) = redact(&copy);
        assert_eq!(bytes, 1 << 20);
        assert!(serde_json::to_string(&op).unwrap().len() < 100);
        let image = Request::ModuleLoad {
            device: 0,
            image: ByteBuf::from(vec![3u8; 5000]),
        };
        assert_eq!(redact(&image).1, 5000);
        let back = redact_reply(&Reply::MemcpyDtoH(ByteBuf::from(vec![1u8; 64])));
        assert!(matches!(back, Reply::MemcpyDtoH(b) if b.is_empty()));
        let to_array = Request::MemcpyToArray {
            array: 5,
            region: xpupool_protocol::api::ArrayBox {
                at: [0; 3],
                extent: [64, 2, 1],
            },
            data: ByteBuf::from(vec![7u8; 128]),
            stream: 0,
        };
        let (op, bytes) = redact(&to_array);
        assert_eq!(bytes, 128);
        assert_eq!(
            serde_json::to_value(&op).unwrap()["MemcpyToArray"]["data"],
            json!([])
        );
        let back = redact_reply(&Reply::MemcpyFromArray(ByteBuf::from(vec![1u8; 64])));
        assert!(matches!(back, Reply::MemcpyFromArray(b) if b.is_empty()));
        let graph = Request::GraphCreate {
            nodes: vec![GraphNode::Kernel {
                function: 7,
                dims: LaunchDims {
                    grid: [1; 3],
                    block: [1; 3],
                    shared_bytes: 0,
                },
                params: ByteBuf::from(vec![9u8; 24]),
            }],
        };
        let Request::GraphCreate { nodes } = redact(&graph).0 else {
            panic!("not a graph")
        };
        assert!(
            matches!(&nodes[0], GraphNode::Kernel { params, .. } if params.len() == 24 && params.iter().all(|&b| b == 0)),
            "a kernel node's parameters are recorded as zeros of their length"
        );
        // What is recorded reads back as the request it was.
        let read: Request = serde_json::from_value(json).unwrap();
        assert!(matches!(
            read,
            Request::LaunchKernel {
                function: 7,
                stream: 2,
                ..
            }
        ));
    }
}
