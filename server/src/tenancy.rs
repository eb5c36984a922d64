//! Many tenants on one host: who each tenant is and what it may use ([`Policy`]),
//! and the one layer every session passes through ([`TenantSession`]), whatever
//! its backend.
//!
//! The layer is where the memory ledger is kept (charged before an allocation is
//! forwarded, refunded when it is freed or the session ends), where a tenant's
//! device numbers are mapped to the host's (a tenant allowed devices `[1]` sees one
//! device, its 0), where launches wait for their turn on the device's
//! [`DeviceScheduler`], and where the figures of metrics, NVML and `xpupool status`
//! are kept. Backends do none of this: they make allocations, load modules and
//! run kernels, and report what a module takes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use xpupool_protocol::api::{
    Arg, DeviceFigures, DeviceUsage, GraphNode, ModuleInfo, ServerStatus, SessionWork,
    TenantFigures, MAX_GRAPH_NODES, OPERATIONS,
};
use xpupool_protocol::{code, CuError, DeviceInfo, Reply, Request};

use crate::backend::{Backend, Session};
use crate::quota::{allocation_charge, MemoryLedger};
use crate::scheduler::{Claimant, DeviceScheduler, Priority, Usage};

/// The most devices one host offers.
pub const MAX_DEVICES: usize = 16;

/// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`
const ATTRIBUTE_MULTIPROCESSOR_COUNT: u32 = 16;

/// What a tenant may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Device memory it may hold on each device it uses.
    pub memory_limit: Option<u64>,
    /// Its share of each device under contention, in (0, 1].
    pub compute_share: f64,
    /// Its scheduling class.
    pub priority: Priority,
    /// The host's devices it may use, in the order it sees them (`None`: all).
    pub devices: Option<Vec<u32>>,
    /// A ceiling on the fraction of a device's SMs its kernels may use.
    pub sm_limit: Option<f64>,
    /// Sessions it may have open at once.
    pub max_sessions: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            memory_limit: None,
            compute_share: 1.0,
            priority: Priority::Normal,
            devices: None,
            sm_limit: None,
            max_sessions: crate::server::DEFAULT_MAX_SESSIONS_PER_TENANT,
        }
    }
}

/// An authenticated tenant: its name, policy, ledgers and figures, shared by all of
/// its sessions. Reloading the server's tenant table keeps a tenant's state and
/// replaces only its policy.
#[derive(Clone)]
pub struct Tenant {
    /// The tenant's name, from the server's tenant table.
    pub name: String,
    state: Arc<TenantState>,
}

struct TenantState {
    policy: RwLock<Policy>,
    /// Per host device.
    memory: Vec<MemoryLedger>,
    usage: Vec<Arc<Usage>>,
    oom: Vec<AtomicU64>,
    sessions: AtomicUsize,
    /// The live sessions, for NVML's running processes.
    live: Mutex<Vec<Weak<SessionHeld>>>,
}

/// What one session holds on each device.
struct SessionHeld {
    pid: u32,
    bytes: Vec<AtomicU64>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant").field("name", &self.name).finish()
    }
}

impl Tenant {
    /// A tenant with this policy, no sessions and nothing held.
    pub fn with_policy(name: impl Into<String>, policy: Policy) -> Self {
        let limit = policy.memory_limit;
        Self {
            name: name.into(),
            state: Arc::new(TenantState {
                policy: RwLock::new(policy),
                memory: (0..MAX_DEVICES).map(|_| MemoryLedger::new(limit)).collect(),
                usage: (0..MAX_DEVICES).map(|_| Arc::default()).collect(),
                oom: (0..MAX_DEVICES).map(|_| AtomicU64::new(0)).collect(),
                sessions: AtomicUsize::new(0),
                live: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A tenant with the default policy and this memory limit.
    pub fn new(name: impl Into<String>, memory_limit: Option<u64>) -> Self {
        Self::with_policy(
            name,
            Policy {
                memory_limit,
                ..Policy::default()
            },
        )
    }

    /// Its policy now.
    pub fn policy(&self) -> Policy {
        self.state
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces its policy (a reload); what it holds stays charged.
    pub fn set_policy(&self, policy: Policy) {
        for ledger in &self.state.memory {
            ledger.set_limit(policy.memory_limit);
        }
        *self.state.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Its ledger on host device `device`.
    pub fn memory(&self, device: u32) -> &MemoryLedger {
        &self.state.memory[(device as usize).min(MAX_DEVICES - 1)]
    }

    /// Its scheduling figures on host device `device`.
    pub fn usage(&self, device: u32) -> &Usage {
        &self.state.usage[(device as usize).min(MAX_DEVICES - 1)]
    }

    /// Allocations refused for its limit on host device `device`.
    pub fn oom(&self, device: u32) -> u64 {
        self.state.oom[(device as usize).min(MAX_DEVICES - 1)].load(Ordering::Relaxed)
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.state.sessions.load(Ordering::Acquire)
    }

    /// Counts one more session, unless it has its policy's most open already; the
    /// session counts until the returned slot is dropped.
    pub fn open_slot(&self) -> Result<SessionSlot, CuError> {
        let max = self.policy().max_sessions;
        let sessions = &self.state.sessions;
        let mut open = sessions.load(Ordering::Acquire);
        loop {
            if open >= max {
                return Err(CuError::new(
                    code::NOT_PERMITTED,
                    format!(
                        "tenant {} has {open} sessions open, the server's limit per tenant",
                        self.name
                    ),
                ));
            }
            match sessions.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(SessionSlot(self.state.clone())),
                Err(now) => open = now,
            }
        }
    }

    /// Who asks for host device `device` for one kernel: its share and class are
    /// read under the policy's lock, not copied with the whole policy.
    fn claimant(&self, device: u32) -> Claimant {
        let policy = self.state.policy.read().unwrap_or_else(|e| e.into_inner());
        Claimant {
            tenant: self.name.clone(),
            share: policy.compute_share,
            priority: policy.priority,
            usage: self.state.usage[device as usize].clone(),
        }
    }
}

/// One open session of a tenant ([`Tenant::open_slot`]); dropping it frees the slot.
pub struct SessionSlot(Arc<TenantState>);

impl std::fmt::Debug for SessionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSlot")
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The host's side of tenancy, shared by every session: the backend, its devices
/// and one scheduler per device.
pub struct Host {
    backend: Arc<dyn Backend>,
    devices: Vec<DeviceInfo>,
    schedulers: Vec<Arc<DeviceScheduler>>,
    /// Seconds from a client's hello to its session being open, every tenant's.
    pub admission: prometheus_client::metrics::histogram::Histogram,
    /// What sessions have exported by IPC, by handle: only sessions of the
    /// same tenant may open them.
    ipc: Mutex<IpcExports>,
}

/// The IPC exports of every session of one host.
#[derive(Default)]
struct IpcExports {
    memory: HashMap<Vec<u8>, IpcShare>,
    /// Event handle → tenant.
    events: HashMap<Vec<u8>, String>,
}

/// An exported allocation as the ledger sees it: charged to its tenant until
/// the exporter has freed it and every session that opened it has closed it.
struct IpcShare {
    tenant: String,
    device: u32,
    charge: u64,
    holders: usize,
}

impl Host {
    /// The host of `backend`'s devices (at most [`MAX_DEVICES`]).
    pub fn new(backend: Arc<dyn Backend>) -> Arc<Self> {
        let mut devices = backend.devices();
        if devices.len() > MAX_DEVICES {
            tracing::warn!(
                devices = devices.len(),
                "offering the first {MAX_DEVICES} devices only"
            );
            devices.truncate(MAX_DEVICES);
        }
        let schedulers = devices.iter().map(|_| Arc::default()).collect();
        Arc::new(Self {
            backend,
            devices,
            schedulers,
            admission: prometheus_client::metrics::histogram::Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            ipc: Mutex::default(),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The host's devices, unclamped.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// The scheduler of host device `device`.
    pub fn scheduler(&self, device: u32) -> Option<&Arc<DeviceScheduler>> {
        self.schedulers.get(device as usize)
    }

    /// Device memory in use on host device `device`, as the backend measures it
    /// (`None` where it cannot).
    pub fn memory_used(&self, device: u32) -> Option<u64> {
        self.backend.memory_used(device)
    }

    /// What `device` draws now, in watts, where the backend can measure it.
    pub fn power_watts(&self, device: u32) -> Option<f64> {
        self.backend.power_watts(device)
    }

    /// The host devices `tenant` may use, in the order it sees them; devices its
    /// policy names that the host lacks are left out.
    pub fn visible(&self, policy: &Policy) -> Vec<u32> {
        let all = 0..self.devices.len() as u32;
        match &policy.devices {
            None => all.collect(),
            Some(list) => list.iter().copied().filter(|d| all.contains(d)).collect(),
        }
    }

    /// The devices as `tenant` sees them: its own, renumbered from 0, with its
    /// memory limit as their memory and its SM ceiling in their SM count.
    pub fn devices_for(&self, tenant: &Tenant) -> Vec<DeviceInfo> {
        let policy = tenant.policy();
        self.visible(&policy)
            .into_iter()
            .map(|d| {
                let mut info = self.devices[d as usize].clone();
                if let Some(limit) = policy.memory_limit {
                    info.total_memory = info.total_memory.min(limit);
                }
                if let Some(fraction) = policy.sm_limit {
                    for (attribute, value) in &mut info.attributes {
                        if *attribute == ATTRIBUTE_MULTIPROCESSOR_COUNT {
                            *value = ((*value as f64 * fraction).round() as i32).max(1);
                        }
                    }
                }
                info
            })
            .collect()
    }

    /// Opens a session for `tenant` (whose slot the caller holds) around the
    /// backend's: `wrap` adds layers between the two (the module cache).
    pub fn open_session(
        self: &Arc<Self>,
        tenant: &Tenant,
        pid: u32,
        wrap: impl FnOnce(Box<dyn Session>) -> Box<dyn Session>,
    ) -> Result<TenantSession, CuError> {
        let policy = tenant.policy();
        let visible = self.visible(&policy);
        if visible.is_empty() {
            return Err(CuError::new(
                code::NO_DEVICE,
                format!(
                    "tenant {} may use none of this server's devices",
                    tenant.name
                ),
            ));
        }
        let inner = wrap(self.backend.open_session(tenant)?);
        let held = Arc::new(SessionHeld {
            pid,
            bytes: (0..self.devices.len()).map(|_| AtomicU64::new(0)).collect(),
        });
        {
            let mut live = tenant.state.live.lock().unwrap_or_else(|e| e.into_inner());
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&held));
        }
        Ok(TenantSession {
            inner,
            host: self.clone(),
            tenant: tenant.clone(),
            visible,
            scheduled: self.backend.launches_complete_on_return(),
            allocations: HashMap::new(),
            physical: HashMap::new(),
            mapped: BTreeMap::new(),
            exported: HashMap::new(),
            opened: HashMap::new(),
            exported_events: HashMap::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            executors: HashMap::new(),
            graphs: HashMap::new(),
            next_graph: 1,
            held,
            busy: BusyPoll {
                device: None,
                seen: 0,
                at: Instant::now(),
                off: false,
            },
        })
    }

    /// `tenant`'s figures on the devices it may use.
    pub fn figures(&self, tenant: &Tenant) -> Vec<TenantFigures> {
        let policy = tenant.policy();
        self.visible(&policy)
            .into_iter()
            .map(|d| {
                let usage = tenant.usage(d);
                TenantFigures {
                    tenant: tenant.name.clone(),
                    device: d,
                    memory_used: tenant.memory(d).used(),
                    memory_limit: policy.memory_limit,
                    busy_seconds: usage.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9,
                    throttled_seconds: usage.throttled_ns.load(Ordering::Relaxed) as f64 * 1e-9,
                    kernel_launches: usage.launches.load(Ordering::Relaxed),
                    oom: tenant.oom(d),
                    compute_share: policy.compute_share,
                }
            })
            .collect()
    }

    /// Host device `device` as `xpupool status` shows it; `used` is the memory
    /// the ledger holds on it when the backend cannot measure it.
    pub fn device_figures(&self, device: u32, ledger_used: u64) -> DeviceFigures {
        let info = &self.devices[device as usize];
        DeviceFigures {
            device,
            name: info.name.clone(),
            uuid: xpupool_protocol::gpu_uuid_text(&info.uuid),
            memory_used: self.memory_used(device).unwrap_or(ledger_used),
            memory_total: info.total_memory,
            utilization: self.schedulers[device as usize].utilization(),
        }
    }
}

/// The operations the ledger charges; every other declared operation that
/// allocates is refused ([`TenantSession`]), so a new one cannot slip past.
pub const CHARGED: &[&str] = &[
    "array_create",
    "mem_alloc",
    "mem_create",
    "module_load",
    "module_load_cached",
];

/// A session as the tenancy layer runs it, around the backend's.
pub struct TenantSession {
    inner: Box<dyn Session>,
    host: Arc<Host>,
    tenant: Tenant,
    /// Tenant device number → host device number.
    visible: Vec<u32>,
    /// Whether launches go through the device's scheduler: only where the
    /// backend's launch returns when the kernel is done, so its time is measured.
    scheduled: bool,
    /// Allocation base → (host device, bytes charged).
    allocations: HashMap<u64, (u32, u64)>,
    /// Physical allocation (`cuMemCreate`) handle → what it is charged and who
    /// holds it: charged until its handle is released and its last mapping gone.
    physical: HashMap<u64, Physical>,
    /// Mapping start → (bytes, physical handle).
    mapped: BTreeMap<u64, (u64, u64)>,
    /// Allocations this session exported by IPC: base → handle.
    exported: HashMap<u64, Vec<u8>>,
    /// Allocations it opened by IPC: address → handle.
    opened: HashMap<u64, Vec<u8>>,
    /// Events it exported: event → handle.
    exported_events: HashMap<u64, Vec<u8>>,
    /// Module → (host device, bytes charged, its functions).
    modules: HashMap<u64, (u32, u64, Vec<u64>)>,
    /// Function → host device.
    functions: HashMap<u64, u32>,
    /// aclnn executor between its two phases → host device (the backend bounds
    /// how many a session holds).
    executors: HashMap<u64, u32>,
    /// Graphs kept for the client ([`Request::GraphCreate`]).
    graphs: HashMap<u64, Arc<Vec<GraphNode>>>,
    next_graph: u64,
    held: Arc<SessionHeld>,
    /// Where launches run asynchronously (not `scheduled`): the backend's
    /// measure of their device time, read now and then.
    busy: BusyPoll,
}

/// The device time a backend measured for a session, as last read
/// ([`Request::SessionBusy`]).
struct BusyPoll {
    /// The host device its kernels ran on (the last launched), once one was.
    device: Option<u32>,
    /// Nanoseconds read so far (the backend's running total).
    seen: u64,
    /// When it was last read.
    at: Instant,
    /// The backend does not measure it: never asked again.
    off: bool,
}

/// How often a session's device time is read while it works.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// A physical allocation as the ledger sees it.
struct Physical {
    device: u32,
    charge: u64,
    released: bool,
    mappings: usize,
}

/// Graphs one session may keep at once.
pub const MAX_GRAPHS: usize = 4096;
/// Kernel parameter bytes of one kept graph, at most.
pub const MAX_GRAPH_PARAM_BYTES: usize = 64 << 20;

impl TenantSession {
    /// Keeps a graph's nodes, once their number and size are within bounds.
    fn graph_create(&mut self, nodes: Vec<GraphNode>) -> Result<u64, CuError> {
        if self.graphs.len() >= MAX_GRAPHS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("this session keeps {MAX_GRAPHS} graphs, its most"),
            ));
        }
        let params: usize = nodes
            .iter()
            .map(|n| match n {
                GraphNode::Kernel { params, .. } | GraphNode::ClusteredKernel { params, .. } => {
                    params.len()
                }
                _ => 0,
            })
            .sum();
        if nodes.len() > MAX_GRAPH_NODES || params > MAX_GRAPH_PARAM_BYTES {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!(
                    "a graph of {} nodes and {params} parameter bytes; at most {MAX_GRAPH_NODES} and {MAX_GRAPH_PARAM_BYTES}",
                    nodes.len()
                ),
            ));
        }
        let graph = self.next_graph;
        self.next_graph += 1;
        self.graphs.insert(graph, Arc::new(nodes));
        Ok(graph)
    }

    /// [`Session::handle`] for a request whose devices are the host's.
    fn handle_on_host(&mut self, request: Request) -> Result<Reply, CuError> {
        self.poll_busy(false);
        match request {
            Request::MemAlloc { device, bytes } => self.alloc(device, bytes),
            Request::MemFree { ptr } => {
                let reply = self.inner.handle(Request::MemFree { ptr });
                if reply.is_ok() {
                    if let Some((device, bytes)) = self.allocations.remove(&ptr) {
                        match self.exported.remove(&ptr) {
                            // Sessions that opened it may hold it still.
                            Some(handle) => {
                                self.held.bytes[device as usize]
                                    .fetch_sub(bytes, Ordering::Relaxed);
                                self.release_share(&handle);
                            }
                            None => self.refund(device, bytes),
                        }
                    }
                }
                reply
            }
            Request::EventDestroy { event } => {
                let reply = self.inner.handle(Request::EventDestroy { event });
                if let Some(handle) = self.exported_events.remove(&event) {
                    self.host
                        .ipc
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .events
                        .remove(&handle);
                }
                reply
            }
            request @ (Request::IpcGetMemHandle { .. }
            | Request::IpcOpenMemHandle { .. }
            | Request::IpcCloseMemHandle { .. }
            | Request::IpcGetEventHandle { .. }
            | Request::IpcOpenEventHandle { .. }) => self.ipc(request),
            Request::MemGetInfo { device: host } => {
                match self.inner.handle(Request::MemGetInfo { device: host })? {
                    Reply::MemGetInfo((free, total)) => {
                        let ledger = self.tenant.memory(host);
                        let total = ledger.limit().map_or(total, |l| l.min(total));
                        Ok(Reply::MemGetInfo((free.min(ledger.remaining()), total)))
                    }
                    other => Ok(other),
                }
            }
            Request::ModuleLoad {
                device: host,
                image,
            } => {
                let reply = self.inner.handle(Request::ModuleLoad {
                    device: host,
                    image,
                })?;
                if let Reply::ModuleLoad(info) = &reply {
                    self.loaded(host, info)?;
                }
                Ok(reply)
            }
            Request::ModuleLoadCached { device: host, hash } => {
                let reply = self
                    .inner
                    .handle(Request::ModuleLoadCached { device: host, hash })?;
                if let Reply::ModuleLoadCached(Some(info)) = &reply {
                    self.loaded(host, info)?;
                }
                Ok(reply)
            }
            Request::ModuleUnload { module } => {
                let reply = self.inner.handle(Request::ModuleUnload { module });
                if reply.is_ok() {
                    if let Some((device, bytes, functions)) = self.modules.remove(&module) {
                        self.refund(device, bytes);
                        for f in functions {
                            self.functions.remove(&f);
                        }
                    }
                }
                reply
            }
            Request::MemCreate { device, size } => self.create(device, size),
            Request::MemRelease { handle } => {
                let reply = self.inner.handle(Request::MemRelease { handle });
                if reply.is_ok() {
                    if let Some(p) = self.physical.get_mut(&handle) {
                        p.released = true;
                    }
                    self.settle_physical(handle);
                }
                reply
            }
            Request::MemMap {
                ptr,
                size,
                offset,
                handle,
            } => {
                let reply = self.inner.handle(Request::MemMap {
                    ptr,
                    size,
                    offset,
                    handle,
                });
                if reply.is_ok() {
                    self.mapped.insert(ptr, (size, handle));
                    if let Some(p) = self.physical.get_mut(&handle) {
                        p.mappings += 1;
                    }
                }
                reply
            }
            Request::MemUnmap { ptr, size } => {
                let reply = self.inner.handle(Request::MemUnmap { ptr, size });
                if reply.is_ok() {
                    let end = ptr.saturating_add(size);
                    let gone: Vec<(u64, u64)> = self
                        .mapped
                        .range(ptr..end)
                        .map(|(&at, &(_, handle))| (at, handle))
                        .collect();
                    for (at, handle) in gone {
                        self.mapped.remove(&at);
                        if let Some(p) = self.physical.get_mut(&handle) {
                            p.mappings = p.mappings.saturating_sub(1);
                        }
                        self.settle_physical(handle);
                    }
                }
                reply
            }
            Request::ArrayCreate { device: host, desc } => {
                desc.check()
                    .map_err(|why| CuError::new(code::INVALID_VALUE, why))?;
                let charge = desc
                    .footprint()
                    .and_then(allocation_charge)
                    .ok_or_else(|| CuError::new(code::OUT_OF_MEMORY, "array too large"))?;
                self.charge(host, charge)?;
                let reply = self
                    .inner
                    .handle(Request::ArrayCreate { device: host, desc });
                match &reply {
                    // Kept with the allocations (an array handle is never a device
                    // address): refunded when destroyed or at the session's end.
                    Ok(Reply::ArrayCreate(handle)) => {
                        self.allocations.insert(*handle, (host, charge));
                    }
                    _ => self.refund(host, charge),
                }
                reply
            }
            Request::ArrayDestroy { array } => {
                let reply = self.inner.handle(Request::ArrayDestroy { array });
                if reply.is_ok() {
                    if let Some((device, charge)) = self.allocations.remove(&array) {
                        self.refund(device, charge);
                    }
                }
                reply
            }
            request @ (Request::LaunchKernel { function, .. }
            | Request::LaunchCooperative { function, .. }
            | Request::LaunchClustered { function, .. }
            | Request::LaunchWithArgs { function, .. }
            | Request::LaunchWithDeviceArgs { function, .. }) => {
                let device = self.functions.get(&function).copied();
                self.launch(request, device)
            }
            request @ Request::AclnnPrepare { device: host, .. } => {
                let reply = self.inner.handle(request)?;
                if let Reply::AclnnPrepare(plan) = &reply {
                    self.executors.insert(plan.executor, host);
                }
                Ok(reply)
            }
            // An operator's second phase is the device's work as a kernel is:
            // scheduled, timed and counted the same way.
            request @ Request::AclnnRun { executor, .. } => {
                let device = self.executors.remove(&executor);
                self.launch(request, device)
            }
            Request::AclnnDestroy { executor } => {
                self.executors.remove(&executor);
                self.inner.handle(Request::AclnnDestroy { executor })
            }
            Request::GraphCreate { nodes } => self.graph_create(nodes).map(Reply::GraphCreate),
            Request::GraphLaunch { graph, stream } => {
                let nodes = self.graphs.get(&graph).cloned().ok_or_else(|| {
                    CuError::new(code::INVALID_HANDLE, format!("no graph {graph:#x}"))
                })?;
                // Each node as the request it is, so the ledger, the checks and the
                // device's scheduler see a graph's work as any other.
                for node in nodes.iter() {
                    self.handle_on_host(node.in_stream(stream))?;
                }
                Ok(Reply::GraphLaunch(()))
            }
            Request::GraphDestroy { graph } => match self.graphs.remove(&graph) {
                Some(_) => Ok(Reply::GraphDestroy(())),
                None => Err(CuError::new(
                    code::INVALID_HANDLE,
                    format!("no graph {graph:#x}"),
                )),
            },
            Request::DeviceUsage { device } => {
                self.poll_busy(true);
                self.device_usage(device).map(Reply::DeviceUsage)
            }
            Request::ServerStatus {} => {
                self.poll_busy(true);
                Ok(Reply::ServerStatus(self.status()))
            }
            other if other.allocates() => Err(CuError::new(
                code::NOT_SUPPORTED,
                format!(
                    "{} allocates device memory and the server's ledger cannot charge it yet",
                    other.name()
                ),
            )),
            other => self.inner.handle(other),
        }
    }

    fn host_device(&self, device: u32) -> Result<u32, CuError> {
        self.visible.get(device as usize).copied().ok_or_else(|| {
            CuError::new(
                code::INVALID_DEVICE,
                format!("device {device}: this tenant has {}", self.visible.len()),
            )
        })
    }

    fn charge(&mut self, device: u32, bytes: u64) -> Result<(), CuError> {
        self.tenant.memory(device).charge(bytes).inspect_err(|_| {
            self.tenant.state.oom[device as usize].fetch_add(1, Ordering::Relaxed);
        })?;
        self.held.bytes[device as usize].fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn refund(&self, device: u32, bytes: u64) {
        self.tenant.memory(device).refund(bytes);
        self.held.bytes[device as usize].fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A physical allocation, charged before it is made.
    fn create(&mut self, host: u32, size: u64) -> Result<Reply, CuError> {
        let charge = allocation_charge(size)
            .ok_or_else(|| CuError::new(code::OUT_OF_MEMORY, "allocation too large"))?;
        self.charge(host, charge)?;
        let reply = self.inner.handle(Request::MemCreate { device: host, size });
        match &reply {
            Ok(Reply::MemCreate(handle)) => {
                self.physical.insert(
                    *handle,
                    Physical {
                        device: host,
                        charge,
                        released: false,
                        mappings: 0,
                    },
                );
            }
            _ => self.refund(host, charge),
        }
        reply
    }

    /// Lets go of one hold on an exported allocation; the last refunds it.
    fn release_share(&self, handle: &[u8]) {
        let mut ipc = self.host.ipc.lock().unwrap_or_else(|e| e.into_inner());
        let Some(share) = ipc.memory.get_mut(handle) else {
            return;
        };
        share.holders = share.holders.saturating_sub(1);
        if share.holders == 0 {
            let (device, charge) = (share.device, share.charge);
            ipc.memory.remove(handle);
            self.tenant.memory(device).refund(charge);
        }
    }

    /// Whether `handle` was exported by a session of this tenant.
    fn own_export(&self, handle: &[u8], event: bool) -> Result<(), CuError> {
        let ipc = self.host.ipc.lock().unwrap_or_else(|e| e.into_inner());
        let tenant = if event {
            ipc.events.get(handle)
        } else {
            ipc.memory.get(handle).map(|s| &s.tenant)
        };
        match tenant {
            Some(t) if *t == self.tenant.name => Ok(()),
            _ => Err(CuError::new(
                code::INVALID_HANDLE,
                "not an IPC handle of a live export of this tenant on this server",
            )),
        }
    }

    fn ipc(&mut self, request: Request) -> Result<Reply, CuError> {
        match request {
            Request::IpcGetMemHandle { ptr } => {
                let reply = self.inner.handle(Request::IpcGetMemHandle { ptr })?;
                let Reply::IpcGetMemHandle(handle) = &reply else {
                    return Ok(reply);
                };
                if !self.exported.contains_key(&ptr) {
                    if let Some(&(device, charge)) = self.allocations.get(&ptr) {
                        // The allocation's charge now belongs to the export.
                        self.host
                            .ipc
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .memory
                            .insert(
                                handle.to_vec(),
                                IpcShare {
                                    tenant: self.tenant.name.clone(),
                                    device,
                                    charge,
                                    holders: 1,
                                },
                            );
                        self.exported.insert(ptr, handle.to_vec());
                    }
                }
                Ok(reply)
            }
            Request::IpcOpenMemHandle { device, handle } => {
                self.own_export(&handle, false)?;
                let key = handle.to_vec();
                let reply = self
                    .inner
                    .handle(Request::IpcOpenMemHandle { device, handle })?;
                if let Reply::IpcOpenMemHandle((ptr, _)) = &reply {
                    let mut ipc = self.host.ipc.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(share) = ipc.memory.get_mut(&key) {
                        share.holders += 1;
                        self.opened.insert(*ptr, key);
                    }
                }
                Ok(reply)
            }
            Request::IpcCloseMemHandle { ptr } => {
                let reply = self.inner.handle(Request::IpcCloseMemHandle { ptr })?;
                if let Some(handle) = self.opened.remove(&ptr) {
                    self.release_share(&handle);
                }
                Ok(reply)
            }
            Request::IpcGetEventHandle { event } => {
                let reply = self.inner.handle(Request::IpcGetEventHandle { event })?;
                if let Reply::IpcGetEventHandle(handle) = &reply {
                    self.host
                        .ipc
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .events
                        .insert(handle.to_vec(), self.tenant.name.clone());
                    self.exported_events.insert(event, handle.to_vec());
                }
                Ok(reply)
            }
            Request::IpcOpenEventHandle { device, handle } => {
                self.own_export(&handle, true)?;
                self.inner
                    .handle(Request::IpcOpenEventHandle { device, handle })
            }
            other => self.inner.handle(other),
        }
    }

    /// Refunds a physical allocation that is released and mapped nowhere.
    fn settle_physical(&mut self, handle: u64) {
        if let Some(p) = self.physical.get(&handle) {
            if p.released && p.mappings == 0 {
                let (device, charge) = (p.device, p.charge);
                self.physical.remove(&handle);
                self.refund(device, charge);
            }
        }
    }

    fn alloc(&mut self, host: u32, bytes: u64) -> Result<Reply, CuError> {
        let charge = allocation_charge(bytes)
            .ok_or_else(|| CuError::new(code::OUT_OF_MEMORY, "allocation too large"))?;
        if bytes > 0 {
            self.charge(host, charge)?;
        }
        let reply = self.inner.handle(Request::MemAlloc {
            device: host,
            bytes,
        });
        match &reply {
            Ok(Reply::MemAlloc(address)) => {
                self.allocations.insert(*address, (host, charge));
            }
            _ if bytes > 0 => self.refund(host, charge),
            _ => {}
        }
        reply
    }

    /// Charges a module the backend loaded, or unloads it again if the tenant's
    /// limit has no room for it.
    fn loaded(&mut self, host: u32, info: &ModuleInfo) -> Result<(), CuError> {
        let charge = allocation_charge(info.device_bytes).unwrap_or(u64::MAX);
        if let Err(e) = self.charge(host, charge) {
            let _ = self.inner.handle(Request::ModuleUnload {
                module: info.handle,
            });
            return Err(CuError::new(
                e.code,
                format!(
                    "loading a module of {} bytes: {}",
                    info.device_bytes, e.message
                ),
            ));
        }
        // Handle 0 is no function (a kernel the backend could not resolve).
        let functions: Vec<u64> = info
            .functions
            .iter()
            .map(|f| f.handle)
            .filter(|&f| f != 0)
            .collect();
        for &f in &functions {
            self.functions.insert(f, host);
        }
        self.modules.insert(info.handle, (host, charge, functions));
        Ok(())
    }

    /// A launch on `device` (`None`: its function or executor is not this
    /// session's, which the backend says).
    fn launch(&mut self, request: Request, device: Option<u32>) -> Result<Reply, CuError> {
        let scheduler = device.and_then(|d| self.host.scheduler(d).cloned());
        match (device, scheduler) {
            (Some(d), Some(scheduler)) if self.scheduled => {
                let claimant = self.tenant.claimant(d);
                let running = Arc::new(scheduler.acquire(&claimant));
                crate::scheduler::with_current(running, || self.inner.handle(request))
            }
            (Some(d), scheduler) => {
                self.tenant
                    .usage(d)
                    .launches
                    .fetch_add(1, Ordering::Relaxed);
                // Read at the next request (handle_on_host) from now on.
                self.busy.device = Some(d);
                let _launching = scheduler.map(|scheduler| {
                    let claimant = self.tenant.claimant(d);
                    scheduler.admit(&claimant, &mut || self.read_work())
                });
                self.inner.handle(request)
            }
            // Not a function or executor of this session: the backend says so.
            (None, _) => self.inner.handle(request),
        }
    }

    /// Reads the device time the backend measured for this session's kernels (at
    /// most every [`BUSY_POLL`] unless `now`) and adds what is new to the
    /// tenant's busy time and the device's, through its scheduler's accounts.
    fn poll_busy(&mut self, now: bool) {
        if self.busy.off || (!now && self.busy.at.elapsed() < BUSY_POLL) {
            return;
        }
        self.read_work();
    }

    /// Asks the backend how this session's launches stand, and adds the device
    /// time it measured since the last ask to the tenant's and the device's
    /// accounts; `None` if it has launched nothing yet or the backend cannot say.
    fn read_work(&mut self) -> Option<SessionWork> {
        let device = self.busy.device?;
        if self.busy.off {
            return None;
        }
        self.busy.at = Instant::now();
        match self.inner.handle(Request::SessionBusy {}) {
            Ok(Reply::SessionBusy(work)) => {
                let new = work.busy_ns.saturating_sub(self.busy.seen);
                self.busy.seen = self.busy.seen.max(work.busy_ns);
                if let Some(scheduler) = self.host.scheduler(device) {
                    scheduler.record(&self.tenant.claimant(device), new);
                }
                Some(work)
            }
            Ok(_) | Err(_) => {
                self.busy.off = true;
                None
            }
        }
    }

    fn device_usage(&self, host: u32) -> Result<DeviceUsage, CuError> {
        let sessions = self
            .tenant
            .state
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| (s.pid, s.bytes[host as usize].load(Ordering::Relaxed)))
            .filter(|&(_, bytes)| bytes > 0)
            .collect();
        let scheduler = &self.host.schedulers[host as usize];
        Ok(DeviceUsage {
            utilization_percent: (scheduler.utilization() * 100.0).round() as u32,
            memory_used: self
                .host
                .memory_used(host)
                .unwrap_or_else(|| self.tenant.memory(host).used()),
            sessions,
        })
    }

    fn status(&self) -> ServerStatus {
        ServerStatus {
            backend: self.host.backend.name().to_owned(),
            sessions: self.tenant.sessions() as u64,
            devices: self
                .visible
                .iter()
                .map(|&d| self.host.device_figures(d, self.tenant.memory(d).used()))
                .collect(),
            tenants: self.host.figures(&self.tenant),
        }
    }
}

impl Session for TenantSession {
    fn handle(&mut self, mut request: Request) -> Result<Reply, CuError> {
        // Every device a request names, as this tenant numbers them, becomes the
        // host's: what the rest of this layer and the backend see.
        request.for_each_arg(|arg| {
            if let Arg::Device(device) = arg {
                *device = self.host_device(*device)?;
            }
            Ok(())
        })?;
        // Where launches are paced (kernels that run asynchronously), a session
        // in a request is not quiet: its tenant keeps the device's lease.
        let _present = self.busy.device.and_then(|d| {
            let scheduler = self.host.scheduler(d)?;
            Some(scheduler.present(&self.tenant.claimant(d)))
        });
        // What a synchronising call waited for has finished: read it now (at
        // most every BUSY_POLL: a read is a round trip to the session's worker).
        let synchronizes = request.synchronizes();
        let reply = self.handle_on_host(request);
        if synchronizes {
            self.poll_busy(false);
        }
        reply
    }

    fn memcpy_htod_from(&mut self, dst: u64, data: &[u8], stream: u64) -> Result<(), CuError> {
        self.inner.memcpy_htod_from(dst, data, stream)
    }

    fn memcpy_dtoh_into(&mut self, src: u64, out: &mut [u8], stream: u64) -> Result<(), CuError> {
        self.inner.memcpy_dtoh_into(src, out, stream)
    }
}

impl Drop for TenantSession {
    fn drop(&mut self) {
        // The last of its kernels' device time, while the backend still has it.
        self.poll_busy(true);
        // Exports and opens let go of their holds; exported allocations are
        // refunded by the last holder.
        let exported: Vec<(u64, Vec<u8>)> = self.exported.drain().collect();
        for (ptr, handle) in exported {
            if let Some((device, bytes)) = self.allocations.remove(&ptr) {
                self.held.bytes[device as usize].fetch_sub(bytes, Ordering::Relaxed);
            }
            self.release_share(&handle);
        }
        let opened: Vec<Vec<u8>> = self.opened.drain().map(|(_, h)| h).collect();
        for handle in opened {
            self.release_share(&handle);
        }
        {
            let mut ipc = self.host.ipc.lock().unwrap_or_else(|e| e.into_inner());
            for (_, handle) in self.exported_events.drain() {
                ipc.events.remove(&handle);
            }
        }
        let charged: Vec<(u32, u64)> = self
            .allocations
            .drain()
            .map(|(_, c)| c)
            .chain(self.modules.drain().map(|(_, (d, b, _))| (d, b)))
            .chain(self.physical.drain().map(|(_, p)| (p.device, p.charge)))
            .collect();
        for (device, bytes) in charged {
            self.refund(device, bytes);
        }
    }
}

/// Every declared operation that allocates, for the test that the ledger charges
/// each of them.
pub fn allocating_operations() -> Vec<&'static str> {
    OPERATIONS
        .iter()
        .filter(|o| o.flags.has(xpupool_protocol::api::Flags::ALLOCATES))
        .map(|o| o.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_charges_every_operation_that_allocates() {
        let mut declared = allocating_operations();
        declared.sort_unstable();
        let mut charged = CHARGED.to_vec();
        charged.sort_unstable();
        assert_eq!(
            declared, charged,
            "an allocating operation the ledger does not charge (it is refused at run time): add it to TenantSession::handle and CHARGED"
        );
    }

    #[test]
    fn a_tenant_sees_its_devices_renumbered_and_clamped() {
        let host = Host::new(Arc::new(crate::MockBackend::with_devices(3, 1 << 30)));
        let tenant = Tenant::with_policy(
            "t",
            Policy {
                memory_limit: Some(1 << 20),
                devices: Some(vec![2, 7, 0]),
                sm_limit: Some(0.5),
                ..Policy::default()
            },
        );
        let devices = host.devices_for(&tenant);
        assert_eq!(devices.len(), 2, "device 7 does not exist");
        assert_eq!(devices[0].uuid, host.devices()[2].uuid);
        assert_eq!(devices[1].uuid, host.devices()[0].uuid);
        assert_eq!(devices[0].total_memory, 1 << 20);
        let sms = |d: &DeviceInfo| {
            d.attributes
                .iter()
                .find(|a| a.0 == ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map(|a| a.1)
        };
        assert_eq!(sms(&devices[0]), sms(&host.devices()[0]).map(|n| n / 2));
    }
}

#[cfg(test)]
mod graph_tests {
    use super::*;
    use xpupool_protocol::api::LaunchDims;

    #[test]
    fn kept_graphs_are_bounded_replayed_in_order_and_forgotten() {
        let host = Host::new(Arc::new(crate::MockBackend::with_devices(1, 1 << 30)));
        let tenant = Tenant::with_policy("t", Policy::default());
        let mut session = host.open_session(&tenant, 1, |inner| inner).unwrap();
        let Reply::MemAlloc(buffer) = session
            .handle(Request::MemAlloc {
                device: 0,
                bytes: 64,
            })
            .unwrap()
        else {
            panic!("no allocation")
        };
        // Two memsets in order: the second wins.
        let node = |value| GraphNode::Memset {
            dst: buffer,
            value,
            elem_size: 4,
            count: 16,
        };
        let Reply::GraphCreate(graph) = session
            .handle(Request::GraphCreate {
                nodes: vec![node(1), node(7)],
            })
            .unwrap()
        else {
            panic!("no graph")
        };
        session
            .handle(Request::GraphLaunch { graph, stream: 0 })
            .unwrap();
        let Reply::MemcpyDtoH(bytes) = session
            .handle(Request::MemcpyDtoH {
                src: buffer,
                len: 64,
                stream: 0,
            })
            .unwrap()
        else {
            panic!("no copy")
        };
        assert!(
            bytes.chunks(4).all(|w| w == 7u32.to_le_bytes()),
            "{bytes:?}"
        );
        // A node that fails stops the launch with its error.
        let bad = GraphNode::Kernel {
            function: 0xdead,
            dims: LaunchDims {
                grid: [1; 3],
                block: [1; 3],
                shared_bytes: 0,
            },
            params: Default::default(),
        };
        let Reply::GraphCreate(failing) = session
            .handle(Request::GraphCreate { nodes: vec![bad] })
            .unwrap()
        else {
            panic!("no graph")
        };
        assert!(session
            .handle(Request::GraphLaunch {
                graph: failing,
                stream: 0
            })
            .is_err());
        // Too many nodes, or too many parameter bytes, are refused before anything
        // is kept.
        let e = session
            .handle(Request::GraphCreate {
                nodes: vec![node(0); MAX_GRAPH_NODES + 1],
            })
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_VALUE, "{e}");
        // Destroyed, a graph is gone; an unknown one is an invalid handle.
        session.handle(Request::GraphDestroy { graph }).unwrap();
        for request in [
            Request::GraphLaunch { graph, stream: 0 },
            Request::GraphDestroy { graph },
        ] {
            let e = session.handle(request).unwrap_err();
            assert_eq!(e.code, code::INVALID_HANDLE, "{e}");
        }
    }
}

#[cfg(test)]
mod vmm_tests {
    use super::*;

    #[test]
    fn physical_memory_is_charged_until_released_and_unmapped() {
        const G: u64 = 2 << 20;
        let host = Host::new(Arc::new(crate::MockBackend::with_devices(1, 1 << 30)));
        let tenant = Tenant::new("t", Some(4 * G));
        let mut session = host.open_session(&tenant, 1, |inner| inner).unwrap();
        let mut call = |r: Request| session.handle(r);
        let Reply::MemAddressReserve(base) = call(Request::MemAddressReserve {
            device: 0,
            size: 16 * G,
            alignment: 0,
        })
        .unwrap() else {
            panic!("no reservation")
        };
        assert_eq!(tenant.memory(0).used(), 0, "addresses cost nothing");
        let create = |call: &mut dyn FnMut(Request) -> Result<Reply, CuError>, size| {
            call(Request::MemCreate { device: 0, size })
        };
        let Ok(Reply::MemCreate(a)) = create(&mut call, 3 * G) else {
            panic!("no physical allocation")
        };
        assert_eq!(tenant.memory(0).used(), 3 * G);
        // Over the tenant's limit: refused, nothing charged.
        let over = create(&mut call, 2 * G).unwrap_err();
        assert_eq!(over.code, code::OUT_OF_MEMORY);
        assert_eq!(tenant.memory(0).used(), 3 * G);
        call(Request::MemMap {
            ptr: base,
            size: 3 * G,
            offset: 0,
            handle: a,
        })
        .unwrap();
        // Released while mapped: still charged (the memory is still there),
        // so release-then-map-more cannot pass the limit.
        call(Request::MemRelease { handle: a }).unwrap();
        assert_eq!(tenant.memory(0).used(), 3 * G);
        assert!(create(&mut call, 2 * G).is_err());
        call(Request::MemUnmap {
            ptr: base,
            size: 3 * G,
        })
        .unwrap();
        assert_eq!(tenant.memory(0).used(), 0);
        // Another tenant's device number is checked too.
        assert_eq!(
            call(Request::MemCreate { device: 3, size: G })
                .unwrap_err()
                .code,
            code::INVALID_DEVICE
        );
        // A session that ends refunds what it still holds.
        let Ok(Reply::MemCreate(_)) = create(&mut call, G) else {
            panic!("no physical allocation")
        };
        drop(session);
        assert_eq!(tenant.memory(0).used(), 0);
    }
}

#[cfg(test)]
mod device_tests {
    use super::*;
    use xpupool_protocol::api::{ArrayDesc, TextureDesc};

    /// Every request that names a device (as its declaration marks it) names it
    /// as the tenant numbers them: the host's other devices are out of reach,
    /// and the tenant's device 0 is the host's device 1.
    #[test]
    fn every_device_a_request_names_is_the_tenants() {
        let host = Host::new(Arc::new(crate::MockBackend::with_devices(2, 1 << 30)));
        let tenant = Tenant::with_policy(
            "t",
            Policy {
                devices: Some(vec![1]),
                ..Policy::default()
            },
        );
        let mut session = host.open_session(&tenant, 1, |inner| inner).unwrap();
        let texture = TextureDesc {
            dims: 1,
            size: [16, 1, 1],
            pitch: 64,
            slice_pitch: 64,
            channel: 2,
            bits: 32,
            channels: 1,
            address_mode: [1; 3],
            ..TextureDesc::default()
        };
        let array = ArrayDesc {
            width: 16,
            height: 0,
            depth: 0,
            channel: 2,
            bits: 32,
            channels: 1,
            flags: 0,
        };
        let naming = |device: u32| {
            vec![
                Request::MemAlloc { device, bytes: 64 },
                Request::MemGetInfo { device },
                Request::StreamCreate {
                    device,
                    flags: 0,
                    priority: 0,
                },
                Request::EventCreate { device, flags: 0 },
                Request::MemAddressReserve {
                    device,
                    size: 2 << 20,
                    alignment: 0,
                },
                Request::MemCreate {
                    device,
                    size: 2 << 20,
                },
                Request::TexObjectCreate {
                    device,
                    desc: texture.clone(),
                },
                Request::SurfObjectCreate {
                    device,
                    desc: texture.clone(),
                },
                Request::ArrayCreate {
                    device,
                    desc: array,
                },
                Request::Link {
                    device,
                    inputs: Vec::new(),
                },
                Request::DeviceUsage { device },
            ]
        };
        for request in naming(1) {
            let name = request.name();
            let e = session.handle(request).unwrap_err();
            assert_eq!(e.code, code::INVALID_DEVICE, "{name}: {e}");
        }
        let Reply::MemAlloc(address) = session
            .handle(Request::MemAlloc {
                device: 0,
                bytes: 64,
            })
            .unwrap()
        else {
            panic!("no allocation")
        };
        assert_eq!(tenant.memory(1).used(), allocation_charge(64).unwrap());
        assert_eq!(
            tenant.memory(0).used(),
            0,
            "the host's device 1 was charged"
        );
        session.handle(Request::MemFree { ptr: address }).unwrap();
        let Reply::StreamCreate(_) = session
            .handle(Request::StreamCreate {
                device: 0,
                flags: 0,
                priority: 0,
            })
            .unwrap()
        else {
            panic!("no stream")
        };
    }
}
