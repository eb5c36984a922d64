//! The `xpupool bench` harness: xpupool's figures (idle synchronisation round trip,
//! sustained kernel launches, host↔device copies) measured against embedded mock
//! servers over each transport (QUIC on loopback, and the same-host Unix socket), and
//! in the same run the floor they are compared with: the raw transports (plain quinn
//! with the same TLS 1.3 setup; a blocking Unix socket and a shared-memory ring, as
//! the same-host transport is built; no xpupool code) and this
//! machine's memcpy. [`run`] measures and returns a [`Report`], which prints as an
//! aligned table ([`std::fmt::Display`]) or serialises to JSON ([`Report::to_json`]).
//!
//! Every transport figure has a `quic` and a `local` value; `local` is the same-host
//! transport: a Unix socket for messages, a shared-memory region for bulk copies.
//! The run ends by replaying the committed PyTorch training-step trace
//! ([`replay`]) over each transport. Criterion micro-benchmarks of the wire layer are
//! in `benches/`.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

mod pin;
mod pool;
mod raw;
pub mod replay;

/// What to measure, and how much.
#[derive(Debug, Clone)]
pub struct Options {
    /// Idle round trips timed, for each of xpupool and the raw transport.
    pub rtt_samples: usize,
    /// Empty-kernel launches posted.
    pub launches: u64,
    /// Smallest copy of the sweep, in bytes (the sweep goes up in powers of 4).
    pub sweep_min: u64,
    /// Largest copy of the sweep, in bytes; also the size of the headline copy
    /// figures, the raw bulk transfer and the memcpy.
    pub large: u64,
    /// Bytes each sweep size moves per direction, as a number of repetitions
    /// bounded by `min_reps` and `max_reps`.
    pub sweep_bytes: u64,
    /// Fewest repetitions of one copy size.
    pub min_reps: usize,
    /// Most repetitions of one copy size.
    pub max_reps: usize,
    /// Whether progress is shown on stderr.
    pub progress: bool,
    /// Whether this is the shorter run (a label in the report).
    pub quick: bool,
}

impl Options {
    /// The full run: 2000 round trips, 1,000,000 launches, 4 KiB … 256 MiB.
    pub fn full() -> Self {
        Self {
            rtt_samples: 2000,
            launches: 1_000_000,
            sweep_min: 4 << 10,
            large: 256 << 20,
            sweep_bytes: 128 << 20,
            min_reps: 5,
            max_reps: 200,
            progress: true,
            quick: false,
        }
    }

    /// A shorter run: 500 round trips, 100,000 launches, fewer repetitions.
    pub fn quick() -> Self {
        Self {
            rtt_samples: 500,
            launches: 100_000,
            sweep_bytes: 32 << 20,
            min_reps: 1,
            max_reps: 50,
            quick: true,
            ..Self::full()
        }
    }

    /// The copy sizes of the sweep.
    fn sizes(&self) -> Vec<u64> {
        let mut sizes = Vec::new();
        let mut size = self.sweep_min.max(1);
        while size < self.large {
            sizes.push(size);
            size *= 4;
        }
        sizes.push(self.large);
        sizes
    }

    fn reps(&self, size: u64) -> usize {
        ((self.sweep_bytes / size.max(1)) as usize).clamp(self.min_reps.max(1), self.max_reps)
    }
}

/// The transports measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC on loopback.
    Quic,
    /// The same-host transport: a Unix socket and a shared-memory region.
    Local,
}

/// Uploads `bytes` to an embedded mock server over `transport` again and again for
/// `seconds`, each upload synchronised, and returns the GB/s reached: a steady load
/// to look at with a profiler (`cargo run --release --example copy_loop`).
pub fn copy_loop(transport: Transport, bytes: u64, seconds: f64) -> Result<f64> {
    let pool = pool::Pool::connect(pool::Pool::server(bytes + (64 << 20))?, transport)?;
    let device = pool.alloc(bytes)?;
    let source = touched(bytes, 0x3c);
    let start = Instant::now();
    let mut copied = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        pool.h2d(device, &source)?;
        copied += bytes;
    }
    Ok(gbps(copied, start.elapsed()))
}

impl Transport {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "QUIC",
            Transport::Local => "local (Unix socket)",
        }
    }
}

/// One figure (a number unless said otherwise) per transport.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerTransport<T = f64> {
    /// Over QUIC on loopback.
    pub quic: T,
    /// Over the same-host transport (a Unix socket, bulk data in shared memory).
    pub local: T,
}

impl<T> PerTransport<T> {
    /// `f` of each transport, QUIC first.
    fn try_each(mut f: impl FnMut(Transport) -> Result<T>) -> Result<Self> {
        Ok(Self {
            quic: f(Transport::Quic)?,
            local: f(Transport::Local)?,
        })
    }

    fn try_map<U>(self, mut f: impl FnMut(Transport, T) -> Result<U>) -> Result<PerTransport<U>> {
        Ok(PerTransport {
            quic: f(Transport::Quic, self.quic)?,
            local: f(Transport::Local, self.local)?,
        })
    }

    fn try_map_ref<U>(
        &self,
        mut f: impl FnMut(Transport, &T) -> Result<U>,
    ) -> Result<PerTransport<U>> {
        Ok(PerTransport {
            quic: f(Transport::Quic, &self.quic)?,
            local: f(Transport::Local, &self.local)?,
        })
    }

    fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> PerTransport<U> {
        PerTransport {
            quic: f(&self.quic),
            local: f(&self.local),
        }
    }

    fn each_mut(&mut self) -> [&mut T; 2] {
        [&mut self.quic, &mut self.local]
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model (`model name` in /proc/cpuinfo).
    pub cpu: String,
    /// CPUs this process may use.
    pub cores: usize,
    /// Whether the CPU reports running under a hypervisor.
    pub virtualised: bool,
    /// Kernel release.
    pub kernel: String,
    /// Total memory in GiB.
    pub memory_gib: f64,
}

impl Machine {
    /// Describes this machine from /proc.
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_owned())
            })
        };
        let cpu = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        let virtualised = field("flags").is_some_and(|f| f.split(' ').any(|f| f == "hypervisor"));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(0.0, |kib| kib / (1 << 20) as f64);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            virtualised,
            kernel,
            memory_gib,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} core{}{}, {:.0} GiB, Linux {}",
            self.cpu,
            self.cores,
            if self.cores == 1 { "" } else { "s" },
            if self.virtualised {
                " (virtual machine)"
            } else {
                ""
            },
            self.memory_gib,
            self.kernel
        )
    }
}

/// Round-trip times around the median, to show whether they are of one kind.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// 10th percentile, µs.
    pub p10_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
}

/// Median round trips with the clients and the servers pinned to CPUs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PinnedRtt {
    /// CPU of the servers' threads.
    pub server_cpu: usize,
    /// CPU of the clients' threads.
    pub client_cpu: usize,
    /// Median idle `synchronize()` round trip, µs.
    pub sync_us: PerTransport,
    /// Median raw 64-byte round trip, µs.
    pub raw_us: PerTransport,
}

/// Round trips measured with both ends pinned, since on these machines whether the
/// two ends share a CPU changes a round trip several times over and an unpinned
/// median flips between the two. `None` where pinning is not possible.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Pinned {
    /// Client and servers on one CPU.
    pub same_cpu: Option<PinnedRtt>,
    /// Servers on one CPU, the client on another.
    pub other_cpu: Option<PinnedRtt>,
}

/// One size of the copy sweep.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CopyRow {
    /// Bytes per copy.
    pub bytes: u64,
    /// Copies timed in each direction.
    pub reps: usize,
    /// Host to device, GB/s (10⁹ bytes), median copy.
    pub h2d_gbps: PerTransport,
    /// Device to host, GB/s, median copy.
    pub d2h_gbps: PerTransport,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it ran (UTC).
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// The server's backend.
    pub backend: String,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// Median idle `synchronize()` round trip, µs.
    pub sync_rtt_us: PerTransport,
    /// Median 64-byte request/reply round trip on one raw stream, µs.
    pub raw_rtt_us: PerTransport,
    /// Spread of the idle `synchronize()` round trips.
    pub sync_rtt_spread: PerTransport<Spread>,
    /// Spread of the raw round trips.
    pub raw_rtt_spread: PerTransport<Spread>,
    /// The same round trips with both ends pinned.
    pub rtt_pinned: Pinned,
    /// Empty-kernel launches per second, posted without waiting, final sync included.
    pub launches_per_s: PerTransport,
    /// Launches posted.
    pub launches: u64,
    /// 1,000 empty kernels posted one by one, with the synchronise after, ms.
    pub launches_1000_ms: PerTransport,
    /// The same 1,000 kernels as one graph the server keeps: one launch and the
    /// synchronise after, ms.
    pub graph_1000_ms: PerTransport,
    /// Host-to-device copy of the largest size (256 MiB in a full run), GB/s.
    pub h2d_256mib_gbps: PerTransport,
    /// Device-to-host copy of the largest size, GB/s.
    pub d2h_256mib_gbps: PerTransport,
    /// One raw stream (a QUIC stream, a Unix socket connection) carrying the largest
    /// size in 1 MiB writes to a sink, GB/s.
    pub raw_bulk_gbps: PerTransport,
    /// Single-thread memcpy of the largest size on this machine, GB/s.
    pub memcpy_gbps: f64,
    /// Bytes of the largest copy.
    pub large_bytes: u64,
    /// Copy throughput by size.
    pub copy_sweep: Vec<CopyRow>,
    /// Round trips per training step of the replayed trace (the larger of the two
    /// transports'; the client decides the same way on both).
    pub trace_sync_round_trips_per_step: f64,
    /// Synchronisation points per step that the trace marks (calls whose CUDA
    /// semantics make the host wait for the device).
    pub trace_sync_points_per_step: f64,
    /// The replay of the committed trace.
    pub trace: ReplayReport,
}

/// A trace replayed over each transport (`xpupool bench replay`).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The trace's name (its file).
    pub trace: String,
    /// The traced command line.
    pub program: String,
    /// Median wall time of a step when the trace was recorded, ms.
    pub recorded_step_ms: f64,
    /// The replay's figures on each transport.
    pub replay: PerTransport<replay::Replay>,
}

/// Replays `trace` on a fresh embedded mock server per transport, showing progress.
pub fn replay_report(trace: &replay::Trace, name: &str) -> Result<ReplayReport> {
    let mut progress = Progress {
        enabled: true,
        shown: 0,
        started: false,
    };
    let result = replay_each(trace, name, &mut progress);
    progress.finish();
    result
}

fn replay_each(trace: &replay::Trace, name: &str, progress: &mut Progress) -> Result<ReplayReport> {
    let replay = PerTransport::try_each(|t| {
        progress.stage(&format!(
            "replaying {name} ({} steps), {}",
            trace.steps,
            t.name()
        ));
        let pool = pool::Pool::connect(pool::Pool::server(REPLAY_MEMORY)?, t)?;
        replay::replay(trace, &pool.conn, |done| progress.percent(done))
    })?;
    let mut recorded = trace.recorded_step_ms.clone();
    recorded.sort_by(f64::total_cmp);
    Ok(ReplayReport {
        trace: name.to_owned(),
        program: trace.program.clone(),
        recorded_step_ms: recorded.get(recorded.len() / 2).copied().unwrap_or(0.0),
        replay,
    })
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.replay;
        writeln!(
            f,
            "trace replay: {} ({} steps; recorded from `{}`, where a step took {:.2} ms; medians per step)",
            self.trace, r.local.steps, self.program, self.recorded_step_ms
        )?;
        let per_step = |what: &str, v: PerTransport<f64>, digits: usize| {
            vec![
                what.to_owned(),
                format!("{:.digits$}", v.quic),
                format!("{:.digits$}", v.local),
            ]
        };
        let rows = vec![
            cells(&["per step", "QUIC", "local"]),
            per_step("wall time, ms", r.map(|x| x.step_ms), 3),
            per_step(
                "round trips (trace_sync_round_trips_per_step)",
                r.map(|x| x.round_trips_per_step),
                0,
            ),
            per_step(
                "sync points in the trace (trace_sync_points_per_step)",
                r.map(|x| x.sync_points_per_step),
                0,
            ),
            per_step(
                "requests sent without waiting",
                r.map(|x| x.posted_per_step),
                0,
            ),
            per_step("bytes sent", r.map(|x| x.bytes_per_step), 0),
            per_step("driver calls in the trace", r.map(|x| x.calls_per_step), 0),
        ];
        table(f, &rows, 1)
    }
}

impl Report {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}

/// Progress on stderr: the stage, then dots or percentages.
pub(crate) struct Progress {
    enabled: bool,
    shown: u32,
    started: bool,
}

impl Progress {
    fn stage(&mut self, name: &str) {
        if self.enabled {
            if self.started {
                eprintln!();
            }
            eprint!("xpupool bench: {name} ");
            self.started = true;
            self.shown = 0;
            let _ = std::io::stderr().flush();
        }
    }

    fn dot(&mut self) {
        if self.enabled {
            eprint!(".");
            let _ = std::io::stderr().flush();
        }
    }

    /// Shows `done` (0…1) in steps of 10%.
    pub(crate) fn percent(&mut self, done: f64) {
        let tenth = (done * 10.0).floor() as u32;
        if self.enabled && tenth > self.shown {
            self.shown = tenth;
            eprint!("{}% ", tenth * 10);
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&mut self) {
        if self.enabled && self.started {
            eprintln!();
        }
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    percentile(samples, 0.5)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

/// A buffer of `len` bytes whose pages are all touched.
fn touched(len: u64, value: u8) -> Vec<u8> {
    vec![value; len as usize]
}

/// Runs every measurement of `options` and returns the figures.
pub fn run(options: &Options) -> Result<Report> {
    let mut progress = Progress {
        enabled: options.progress,
        shown: 0,
        started: false,
    };
    let result = measure(options, &mut progress);
    progress.finish();
    result
}

/// One transport's ends: an xpupool session of an embedded mock server, and a raw
/// client of a raw server.
struct Ends {
    pool: pool::Pool,
    raw: raw::RawClient,
    _raw_server: raw::RawServer,
}

/// The servers behind [`Ends`], started before the clients (so that they can be
/// started on other CPUs).
struct Servers {
    embedded: xpupool_server::embedded::EmbeddedServer,
    raw: raw::RawServer,
}

impl Servers {
    fn start(memory: u64, transport: Transport) -> Result<Self> {
        Ok(Self {
            embedded: pool::Pool::server(memory)?,
            raw: raw::RawServer::start(transport)?,
        })
    }

    fn connect(self, transport: Transport) -> Result<Ends> {
        Ok(Ends {
            pool: pool::Pool::connect(self.embedded, transport)?,
            raw: raw::RawClient::connect(&self.raw)?,
            _raw_server: self.raw,
        })
    }
}

/// Idle round trips of one transport: xpupool's and the raw transport's.
struct RoundTrips {
    sync: Vec<Duration>,
    raw: Vec<Duration>,
}

fn measure(options: &Options, progress: &mut Progress) -> Result<Report> {
    let large = options.large.max(1);
    progress.stage(
        "starting embedded mock servers (QUIC, Unix socket) and raw quinn and Unix socket servers",
    );
    let mut ends = PerTransport::try_each(|t| Servers::start(large + (64 << 20), t)?.connect(t))?;

    // 1. Idle round trips.
    progress.stage("idle round trips, synchronize() and raw, both transports, unpinned");
    let mut rtts = round_trips(&mut ends, options.rtt_samples, progress)?;
    let sync_rtt_us = rtts.map(|r| micros(median(&mut r.sync.clone())));
    let raw_rtt_us = rtts.map(|r| micros(median(&mut r.raw.clone())));
    let spread = |samples: &mut [Duration]| Spread {
        p10_us: micros(percentile(samples, 0.1)),
        p90_us: micros(percentile(samples, 0.9)),
    };
    let [quic, local] = rtts.each_mut();
    let sync_rtt_spread = PerTransport {
        quic: spread(&mut quic.sync),
        local: spread(&mut local.sync),
    };
    let raw_rtt_spread = PerTransport {
        quic: spread(&mut quic.raw),
        local: spread(&mut local.raw),
    };
    let cpus = pin::allowed();
    let mut pinned = |server_cpu: usize, client_cpu: usize| {
        let what = if server_cpu == client_cpu {
            format!("both ends on CPU {client_cpu}")
        } else {
            format!("servers on CPU {server_cpu}, clients on CPU {client_cpu}")
        };
        progress.stage(&format!("idle round trips, {what}"));
        let samples = (options.rtt_samples / 2).max(1);
        pinned_round_trips(server_cpu, client_cpu, samples, progress)
    };
    let rtt_pinned = Pinned {
        same_cpu: match cpus.first() {
            Some(&cpu) => Some(pinned(cpu, cpu)?),
            None => None,
        },
        other_cpu: match cpus.as_slice() {
            [client, server, ..] => Some(pinned(*server, *client)?),
            _ => None,
        },
    };

    // 2. Sustained launches.
    let launches = options.launches.max(1);
    let launches_per_s = ends.try_map_ref(|t, e| {
        progress.stage(&format!(
            "{} empty-kernel launches, {}",
            thousands(launches),
            t.name()
        ));
        let time = e.pool.launches(launches, progress)?;
        Ok(launches as f64 / time.as_secs_f64().max(1e-9))
    })?;

    // 2b. 1,000 kernels one by one against one graph of them.
    let graphs = ends.try_map_ref(|t, e| {
        progress.stage(&format!(
            "1,000 kernels, one by one and as a graph, {}",
            t.name()
        ));
        e.pool
            .graph_vs_launches(1000, if options.quick { 3 } else { 10 })
    })?;
    let launches_1000_ms = graphs.map(|(one, _)| one.as_secs_f64() * 1e3);
    let graph_1000_ms = graphs.map(|(_, graph)| graph.as_secs_f64() * 1e3);

    // 3. Copies, 4 KiB … large; every copy timed to completion.
    let source = touched(large, 0x3c);
    let mut sink = touched(large, 0);
    let sizes = options.sizes();
    let sweeps = ends.try_map_ref(|t, e| {
        progress.stage(&format!(
            "copy sweep up to {}, {}",
            size_name(large),
            t.name()
        ));
        let device = e.pool.alloc(large)?;
        // Touch the device memory once, untimed.
        e.pool.h2d(device, &source)?;
        sink.fill(0);
        let mut rows = Vec::with_capacity(sizes.len());
        for &size in &sizes {
            let reps = options.reps(size);
            let len = size as usize;
            let mut h2d = Vec::with_capacity(reps);
            let mut d2h = Vec::with_capacity(reps);
            for _ in 0..reps {
                h2d.push(e.pool.h2d(device, &source[..len])?);
            }
            for _ in 0..reps {
                d2h.push(e.pool.d2h(device, &mut sink[..len])?);
            }
            rows.push((gbps(size, median(&mut h2d)), gbps(size, median(&mut d2h))));
            progress.dot();
        }
        anyhow::ensure!(
            sink == source,
            "the bytes copied back over {} differ from those sent",
            t.name()
        );
        Ok(rows)
    })?;
    drop(sink);
    let copy_sweep: Vec<CopyRow> = sizes
        .iter()
        .enumerate()
        .map(|(i, &bytes)| CopyRow {
            bytes,
            reps: options.reps(bytes),
            h2d_gbps: sweeps.map(|rows| rows[i].0),
            d2h_gbps: sweeps.map(|rows| rows[i].1),
        })
        .collect();
    let last = *copy_sweep.last().expect("the sweep has the large size");

    // The raw floor of bulk transfer: one stream, 1 MiB writes, ack at the end.
    let bulk_reps = options.min_reps.max(1);
    let raw_bulk_gbps = ends.try_map_ref(|t, e| {
        progress.stage(&format!("raw bulk, {}, {}", size_name(large), t.name()));
        e.raw.bulk(large.min(16 << 20))?;
        let mut bulk = Vec::with_capacity(bulk_reps);
        for _ in 0..bulk_reps {
            bulk.push(e.raw.bulk(large)?);
            progress.dot();
        }
        Ok(gbps(large, median(&mut bulk)))
    })?;
    drop(ends);

    // And of this machine's memory: one thread's memcpy.
    progress.stage(&format!("memcpy {}", size_name(large)));
    let mut target = touched(large, 0);
    let mut copies = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        target.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&mut target);
        copies.push(start.elapsed());
        progress.dot();
    }
    let memcpy_gbps = gbps(large, median(&mut copies));
    drop((source, target));

    // 4. The PyTorch training-step trace, replayed on a fresh server per transport.
    let trace = replay_each(
        &replay::Trace::committed()?,
        replay::COMMITTED_NAME,
        progress,
    )?;

    Ok(Report {
        date: utc_now(),
        machine: Machine::describe(),
        backend: "mock".to_owned(),
        quick: options.quick,
        sync_rtt_us,
        raw_rtt_us,
        sync_rtt_spread,
        raw_rtt_spread,
        rtt_pinned,
        launches_per_s,
        launches,
        launches_1000_ms,
        graph_1000_ms,
        h2d_256mib_gbps: last.h2d_gbps,
        d2h_256mib_gbps: last.d2h_gbps,
        raw_bulk_gbps,
        memcpy_gbps,
        large_bytes: large,
        copy_sweep,
        trace_sync_round_trips_per_step: trace
            .replay
            .quic
            .round_trips_per_step
            .max(trace.replay.local.round_trips_per_step),
        trace_sync_points_per_step: trace.replay.local.sync_points_per_step,
        trace,
    })
}

/// Device memory of the servers that replay the trace.
const REPLAY_MEMORY: u64 = 4 << 30;

/// Idle round trips of xpupool and of the raw transport over each transport,
/// interleaved in blocks so that all see the same state of this noisy machine, after
/// a warm-up.
fn round_trips(
    ends: &mut PerTransport<Ends>,
    samples: usize,
    progress: &mut Progress,
) -> Result<PerTransport<RoundTrips>> {
    for e in ends.each_mut() {
        for _ in 0..samples.min(100) {
            e.pool.sync_round_trip()?;
            e.raw.round_trip()?;
        }
    }
    let samples = samples.max(1);
    let block = (samples / 10).max(1);
    let mut rtts = PerTransport::try_each(|_| {
        Ok(RoundTrips {
            sync: Vec::with_capacity(samples),
            raw: Vec::with_capacity(samples),
        })
    })?;
    let mut done = 0;
    while done < samples {
        let n = block.min(samples - done);
        for (e, r) in ends.each_mut().into_iter().zip(rtts.each_mut()) {
            for _ in 0..n {
                r.sync.push(e.pool.sync_round_trip()?);
            }
            for _ in 0..n {
                r.raw.push(e.raw.round_trip()?);
            }
        }
        done += n;
        progress.percent(done as f64 / samples as f64);
    }
    Ok(rtts)
}

/// [`round_trips`] with fresh servers whose threads are all on `server_cpu` and
/// fresh clients whose threads are all on `client_cpu`.
fn pinned_round_trips(
    server_cpu: usize,
    client_cpu: usize,
    samples: usize,
    progress: &mut Progress,
) -> Result<PinnedRtt> {
    let original = pin::allowed();
    let result = (|| {
        anyhow::ensure!(pin::set(&[server_cpu]), "cannot pin to CPU {server_cpu}");
        let servers = PerTransport::try_each(|t| Servers::start(16 << 20, t))?;
        anyhow::ensure!(pin::set(&[client_cpu]), "cannot pin to CPU {client_cpu}");
        let mut ends = servers.try_map(|t, s| s.connect(t))?;
        let rtts = round_trips(&mut ends, samples, progress)?;
        Ok(PinnedRtt {
            server_cpu,
            client_cpu,
            sync_us: rtts.map(|r| micros(median(&mut r.sync.clone()))),
            raw_us: rtts.map(|r| micros(median(&mut r.raw.clone()))),
        })
    })();
    pin::set(&original);
    result
}

/// `2026-11-28 14:03 UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days to a civil date (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        of_day / 3600,
        of_day / 60 % 60
    )
}

fn size_name(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|group| std::str::from_utf8(group).expect("ASCII digits"))
        .collect();
    groups.join(",")
}

/// Writes `rows` as columns: the first `left` left-aligned, the rest right-aligned.
fn table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>], left: usize) -> fmt::Result {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            line.push_str("  ");
            if c < left {
                line.push_str(&format!("{cell:<w$}", w = widths[c]));
            } else {
                line.push_str(&format!("{cell:>w$}", w = widths[c]));
            }
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

fn cells(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let large = size_name(self.large_bytes);
        writeln!(
            f,
            "xpupool bench{}: {} backend, {}",
            if self.quick { " (quick)" } else { "" },
            self.backend,
            self.date
        )?;
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(
            f,
            "transports: QUIC on loopback (quinn, TLS 1.3); local: Unix socket, copies of 64 KiB and more through a shared-memory region"
        )?;
        writeln!(f)?;
        let row = |what: String, key: &str, v: PerTransport, unit: &str, digits: usize| {
            vec![
                what,
                key.to_owned(),
                format!("{:.digits$}", v.quic),
                format!("{:.digits$}", v.local),
                unit.to_owned(),
            ]
        };
        let rows = vec![
            cells(&["figure", "key", "QUIC", "local", ""]),
            row(
                "idle synchronize() round trip, median".into(),
                "sync_rtt_us",
                self.sync_rtt_us,
                "µs",
                1,
            ),
            row(
                "raw 64 B round trip, median".into(),
                "raw_rtt_us",
                self.raw_rtt_us,
                "µs",
                1,
            ),
            vec![
                format!("empty-kernel launches ({})", thousands(self.launches)),
                "launches_per_s".into(),
                thousands(self.launches_per_s.quic.round() as u64),
                thousands(self.launches_per_s.local.round() as u64),
                "/s".into(),
            ],
            row(
                "1,000 kernels posted one by one + sync".into(),
                "launches_1000_ms",
                self.launches_1000_ms,
                "ms",
                2,
            ),
            row(
                "the same 1,000 as one graph launch + sync".into(),
                "graph_1000_ms",
                self.graph_1000_ms,
                "ms",
                2,
            ),
            row(
                format!("host to device, {large}"),
                "h2d_256mib_gbps",
                self.h2d_256mib_gbps,
                "GB/s",
                3,
            ),
            row(
                format!("device to host, {large}"),
                "d2h_256mib_gbps",
                self.d2h_256mib_gbps,
                "GB/s",
                3,
            ),
            row(
                format!("raw bulk, one stream, {large}"),
                "raw_bulk_gbps",
                self.raw_bulk_gbps,
                "GB/s",
                3,
            ),
            vec![
                format!("memcpy {large}, one thread"),
                "memcpy_gbps".into(),
                format!("{:.2}", self.memcpy_gbps),
                String::new(),
                "GB/s".into(),
            ],
        ];
        table(f, &rows, 2)?;
        writeln!(
            f,
            "  (raw: plain quinn with the same TLS setup / a blocking Unix socket; local raw bulk: a shared-memory ring of 4 MiB slots handed over on the socket)"
        )?;
        writeln!(f)?;
        writeln!(f, "unpinned round trips, p10 … p90:")?;
        let mut spreads = Vec::new();
        for (name, sync, raw) in [
            ("QUIC", self.sync_rtt_spread.quic, self.raw_rtt_spread.quic),
            (
                "local",
                self.sync_rtt_spread.local,
                self.raw_rtt_spread.local,
            ),
        ] {
            spreads.push(vec![
                format!("{name}:"),
                format!(
                    "synchronize {:.1} … {:.1} µs, raw {:.1} … {:.1} µs",
                    sync.p10_us, sync.p90_us, raw.p10_us, raw.p90_us
                ),
            ]);
        }
        table(f, &spreads, 2)?;
        let pinned = [
            ("both ends on one CPU", self.rtt_pinned.same_cpu),
            (
                "servers and clients on different CPUs",
                self.rtt_pinned.other_cpu,
            ),
        ];
        for (what, rtt) in pinned {
            if let Some(r) = rtt {
                let each = |sync: f64, raw: f64| {
                    format!(
                        "synchronize {sync:.1} µs, raw {raw:.1} µs ({:.2}×)",
                        sync / raw
                    )
                };
                writeln!(
                    f,
                    "pinned, {what}: QUIC {}; local {}",
                    each(r.sync_us.quic, r.raw_us.quic),
                    each(r.sync_us.local, r.raw_us.local)
                )?;
            }
        }
        writeln!(f)?;
        let ratio = |what: &str, value: PerTransport<f64>, digits: usize| {
            vec![
                what.to_owned(),
                format!("{:.digits$}×", value.quic),
                format!("{:.digits$}×", value.local),
            ]
        };
        let over = |a: PerTransport, b: PerTransport| PerTransport {
            quic: a.quic / b.quic,
            local: a.local / b.local,
        };
        let memcpy = PerTransport {
            quic: self.memcpy_gbps,
            local: self.memcpy_gbps,
        };
        let ratios = vec![
            cells(&["ratio", "QUIC", "local"]),
            ratio(
                "synchronize RTT / raw RTT",
                over(self.sync_rtt_us, self.raw_rtt_us),
                2,
            ),
            ratio(
                "H2D / raw bulk",
                over(self.h2d_256mib_gbps, self.raw_bulk_gbps),
                2,
            ),
            ratio(
                "D2H / raw bulk",
                over(self.d2h_256mib_gbps, self.raw_bulk_gbps),
                2,
            ),
            ratio("H2D / memcpy", over(self.h2d_256mib_gbps, memcpy), 3),
        ];
        table(f, &ratios, 1)?;
        writeln!(f)?;
        writeln!(
            f,
            "copy sweep (each copy timed until done: H2D posted then synchronize(), D2H until its bytes are here; QUIC in {} KiB messages; median GB/s)", xpupool_protocol::MAX_COPY_CHUNK >> 10
        )?;
        let mut sweep = vec![cells(&[
            "size",
            "copies",
            "QUIC H2D",
            "QUIC D2H",
            "local H2D",
            "local D2H",
        ])];
        for r in &self.copy_sweep {
            sweep.push(vec![
                size_name(r.bytes),
                r.reps.to_string(),
                format!("{:.3}", r.h2d_gbps.quic),
                format!("{:.3}", r.d2h_gbps.quic),
                format!("{:.3}", r.h2d_gbps.local),
                format!("{:.3}", r.d2h_gbps.local),
            ]);
        }
        table(f, &sweep, 0)?;
        writeln!(f)?;
        write!(f, "{}", self.trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every number must be finite and positive; nulls are allowed only where a
    /// figure does not exist yet (serde_json writes NaN and infinities as null too).
    fn check(value: &serde_json::Value, path: &str) {
        match value {
            serde_json::Value::Null => {
                assert!(path.starts_with(".rtt_pinned."), "{path} is null")
            }
            serde_json::Value::Number(n) => {
                let v = n.as_f64().expect("a number");
                // CPU numbers start at 0; every figure and count must be positive.
                let least = if path.ends_with("_cpu") {
                    0.0
                } else {
                    f64::MIN_POSITIVE
                };
                assert!(v.is_finite() && v >= least, "{path} = {v}");
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, &format!("{path}[{i}]"));
                }
            }
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    check(item, &format!("{path}.{key}"));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn a_tiny_run_gives_finite_positive_figures() {
        let options = Options {
            rtt_samples: 20,
            launches: 300,
            sweep_min: 4 << 10,
            large: 64 << 10,
            sweep_bytes: 64 << 10,
            min_reps: 2,
            max_reps: 3,
            progress: false,
            quick: true,
        };
        let report = run(&options).expect("the harness runs");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        check(&json, "");
        for key in [
            "sync_rtt_us",
            "raw_rtt_us",
            "launches_per_s",
            "launches_1000_ms",
            "graph_1000_ms",
            "h2d_256mib_gbps",
            "d2h_256mib_gbps",
            "raw_bulk_gbps",
        ] {
            assert!(json[key]["quic"].is_number(), "{key}: {}", json[key]);
            assert!(json[key]["local"].is_number(), "{key}: {}", json[key]);
        }
        for key in ["sync_rtt_spread", "raw_rtt_spread"] {
            for transport in ["quic", "local"] {
                assert!(json[key][transport]["p10_us"].is_number(), "{key}");
            }
        }
        for row in json["copy_sweep"].as_array().expect("a sweep") {
            for key in ["h2d_gbps", "d2h_gbps"] {
                assert!(row[key]["quic"].is_number() && row[key]["local"].is_number());
            }
        }
        assert!(json["memcpy_gbps"].is_number());
        // The committed trace: per step, one copy to the host (loss.item()) and the
        // stream synchronise after it; nothing else may wait for the server.
        assert_eq!(json["trace_sync_points_per_step"], 2.0);
        assert_eq!(json["trace_sync_round_trips_per_step"], 2.0);
        for transport in ["quic", "local"] {
            let r = &json["trace"]["replay"][transport];
            assert_eq!(r["steps"], 3);
            assert!(r["posted_per_step"].as_f64().unwrap() >= 30.0, "{r}");
        }
        let sizes: Vec<u64> = report.copy_sweep.iter().map(|r| r.bytes).collect();
        assert_eq!(sizes, [4 << 10, 16 << 10, 64 << 10]);
        let table = report.to_string();
        assert!(table.contains("sync_rtt_us") && table.contains("trace_sync_points_per_step"));
        assert!(!table.contains("n/a") && !table.contains("NaN"), "{table}");
    }

    #[test]
    fn dates_and_names() {
        assert_eq!(size_name(4 << 10), "4 KiB");
        assert_eq!(size_name(256 << 20), "256 MiB");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        let date = utc_now();
        assert!(date.ends_with(" UTC") && date.len() == 20, "{date}");
    }
}
