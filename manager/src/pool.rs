//! The pool as the manager knows it, and every decision it makes on it: which
//! servers are alive, which leases hold what, where a job goes, and what each
//! tenant has used. Nothing here does I/O or reads a clock; the store
//! ([`crate::store`]) runs these functions on the state it keeps (in memory, or
//! read from etcd and written back only if nobody else wrote in between).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use xpupool_protocol::pool::{
    same_bytes, Class, DeviceStatus, HeartbeatAck, LeaseClaims, LeaseStatus, ManagerError,
    PoolStatus, Queued, Requirements, Rtt, ServerDescription, ServerReport, ServerStatus,
    TenantMeter, TenantStatus, UsageRecord,
};

/// How the pool picks a server and device for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// The device with the least reserved memory and utilisation.
    LeastLoaded,
    /// The fullest device the job fits on, so whole devices stay free.
    BinPack,
    /// As least-loaded; a high-priority job may also take capacity reserved by
    /// lower jobs that have not started.
    Priority,
    /// The client's measured round trip, plus the load.
    LowestLatency,
    /// Fewest active devices: onto a device already in use where one fits; among
    /// idle ones, the lowest reported power.
    LowestEnergy,
}

impl PolicyKind {
    /// Every policy's name, as `manager.toml` spells it.
    pub const NAMES: &'static [&'static str] = &[
        "least-loaded",
        "bin-pack",
        "priority",
        "lowest-latency",
        "lowest-energy",
    ];

    /// The policy of a name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "least-loaded" => Self::LeastLoaded,
            "bin-pack" => Self::BinPack,
            "priority" => Self::Priority,
            "lowest-latency" => Self::LowestLatency,
            "lowest-energy" => Self::LowestEnergy,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// What the manager's configuration says of one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRule {
    /// Its name.
    pub name: String,
    /// Bytes its leases may reserve across the pool.
    pub memory_quota: Option<u64>,
    /// Devices its leases may hold across the pool.
    pub device_quota: Option<u32>,
    /// Its class.
    pub class: Class,
    /// Its share of each device it runs on, under contention.
    pub compute_share: f64,
    /// A policy of its own instead of the pool's.
    pub policy: Option<PolicyKind>,
}

/// Timings the pool runs by, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A server silent this long leaves placement; its leases are reclaimed.
    pub server_ttl_ms: u64,
    /// Servers heart-beat this often.
    pub heartbeat_ms: u64,
    /// A lease not renewed for this long lapses.
    pub lease_ttl_ms: u64,
    /// A queued request not asked about for this long leaves the queue.
    pub queue_ttl_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            server_ttl_ms: 10_000,
            heartbeat_ms: 2_000,
            lease_ttl_ms: 15_000,
            queue_ttl_ms: 10_000,
        }
    }
}

/// A registered server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// What it said at registration.
    pub description: ServerDescription,
    /// Its last heartbeat (or registration), by the manager's clock.
    pub last_seen_ms: u64,
    /// Its last report.
    pub report: ServerReport,
    /// The cumulative counters metered so far, per tenant and device.
    pub metered: Vec<TenantMeter>,
    /// The etcd lease that keeps its registration (with `--etcd`).
    pub etcd_lease: Option<i64>,
    /// Its key (random, given at registration): its heartbeats carry it, and
    /// its leases are signed with it.
    #[serde(default)]
    pub key: String,
}

/// A live lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseEntry {
    /// What it grants.
    pub claims: LeaseClaims,
    /// Its last renewal.
    pub renewed_ms: u64,
    /// Whether a session has used it (it may then not be preempted).
    pub started: bool,
    /// The client's number for the request that placed it: the same request
    /// asked again gets this lease again.
    #[serde(default)]
    pub request: u64,
    /// Being taken back before it started: left out of its server's lease
    /// lists, its capacity still held until the server has said (in a report
    /// made after it was told) that no session uses it.
    #[serde(default)]
    pub revoking: Option<Revoking>,
}

/// A lease being preempted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoking {
    /// Why.
    pub why: String,
    /// The `next_lease` of the first answer that left it out, once one has: a
    /// report made after the server applied that answer (or a later one) settles
    /// it; an answer lost on the way settles nothing.
    pub told: Option<u64>,
    /// The waiting request it makes room for, `(tenant, request)`: its room
    /// is that request's, not another's; if the request stops waiting before
    /// the server is told, the lease is left alone after all.
    #[serde(default)]
    pub for_request: (String, u64),
}

/// A request waiting for capacity; `(tenant, request)` names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Waiting {
    /// The client's request number.
    pub request: u64,
    /// Its tenant.
    pub tenant: String,
    /// Its class.
    pub class: Class,
    /// What it needs.
    pub need: Requirements,
    /// When it was first asked.
    pub arrived_ms: u64,
    /// When it was last asked about.
    pub polled_ms: u64,
}

/// Leases taken away from their holders recently, and why; kept a while so a
/// renewal can say.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ended {
    /// The lease.
    pub lease: u64,
    /// Why it ended.
    pub why: String,
    /// When.
    pub at_ms: u64,
}

/// The whole pool.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pool {
    /// By address.
    pub servers: BTreeMap<String, ServerEntry>,
    /// By lease number.
    pub leases: BTreeMap<u64, LeaseEntry>,
    /// Waiting requests, in arrival order.
    pub queue: Vec<Waiting>,
    /// Metering per tenant, server and device.
    pub usage: Vec<UsageRecord>,
    /// The same by the hour, for the last [`HOURLY_KEEP_MS`].
    #[serde(default)]
    pub hourly: Vec<UsageRecord>,
    /// Leases that ended other than by their holder's release.
    pub ended: Vec<Ended>,
    /// The next lease number.
    pub next_lease: u64,
    /// The counters of servers forgotten since (by address), so the same
    /// instance coming back is billed only for what they grew by.
    #[serde(default)]
    pub retired: BTreeMap<String, Retired>,
}

/// A forgotten server's metering baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retired {
    /// The instance they belong to.
    pub instance: u64,
    /// Its cumulative counters metered so far ([`ServerEntry::metered`]).
    pub metered: Vec<TenantMeter>,
    /// When it was forgotten.
    pub at_ms: u64,
}

/// Which servers are alive now.
pub type Alive = BTreeSet<String>;

/// One server's part of the pool: its entry and its metering, all that its
/// heartbeat changes besides (now and then) the leases. In etcd each server's
/// is a key of its own, so a heartbeat rewrites that alone, not the whole
/// pool's servers: the etcd write a heartbeat costs stays the size of one
/// server's part however large the pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerPart {
    /// Its entry (`None` once it is forgotten, its records kept).
    #[serde(default)]
    pub server: Option<ServerEntry>,
    /// The counters of an entry kept in the core, as managers before the
    /// per-server parts stored them (read, never written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metered: Vec<TenantMeter>,
    /// Its records in [`Pool::usage`].
    pub usage: Vec<UsageRecord>,
    /// Its records in [`Pool::hourly`].
    pub hourly: Vec<UsageRecord>,
    /// Its baselines once it is forgotten ([`Pool::retired`]).
    #[serde(default)]
    pub retired: Option<Retired>,
}

/// A placement: the lease, and what the caller needs to sign it and to tell
/// the client how to reach its server.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    /// The lease's terms.
    pub claims: LeaseClaims,
    /// The server's key, to sign them with.
    pub key: String,
    /// The server's certificate fingerprint.
    pub fingerprint: String,
}

/// What a placement request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Placed.
    Placed(Granted),
    /// Waiting.
    Queued(Queued),
}

/// Bytes reserved and leases held per server and device, from one pass over
/// the leases.
type Reserved<'a> = HashMap<&'a str, Vec<(u64, u32)>>;

/// How long hourly metering is kept (for `xpupool status --usage --since`).
pub const HOURLY_KEEP_MS: u64 = 31 * 24 * HOUR_MS;
/// An hour.
pub const HOUR_MS: u64 = 3_600_000;

/// Adds to the record of `(tenant, server, device, since_ms)` in `records`.
fn add_usage(
    records: &mut Vec<UsageRecord>,
    key: (&str, &str, u32, &str),
    since_ms: Option<u64>,
    busy: f64,
    gib_seconds: f64,
    now_ms: u64,
) {
    let (tenant, server, device, uuid) = key;
    let found = records.iter().position(|u| {
        u.tenant == tenant
            && u.server == server
            && u.device == device
            && since_ms.is_none_or(|s| u.since_ms == s)
    });
    let record = match found {
        Some(i) => &mut records[i],
        None => {
            records.push(UsageRecord {
                tenant: tenant.to_owned(),
                server: server.to_owned(),
                device,
                uuid: uuid.to_owned(),
                gpu_seconds: 0.0,
                gib_seconds: 0.0,
                since_ms: since_ms.unwrap_or(now_ms),
                updated_ms: now_ms,
            });
            records.last_mut().expect("just pushed")
        }
    };
    record.gpu_seconds += busy;
    record.gib_seconds += gib_seconds;
    record.updated_ms = now_ms;
}

/// How long ended-lease notes are kept.
const ENDED_KEEP_MS: u64 = 120_000;
/// A server silent this long, with no lease left, is forgotten (its metering
/// stays).
pub const FORGET_SERVER_MS: u64 = 24 * HOUR_MS;
/// Servers forgotten, and forgotten servers' baselines dropped, in one pass at
/// most.
pub const FORGET_PER_PASS: usize = 8;
/// Queued requests ahead of a new one that are checked for whether they would
/// go first; the rest wait behind it.
const QUEUE_LOOKAHEAD: usize = 32;
/// At most this many waiting requests.
pub const MAX_QUEUE: usize = 1024;
/// At most this many of them of one tenant, so one cannot fill the queue.
pub const MAX_QUEUED_PER_TENANT: usize = 64;
/// At most this many devices in one request.
pub const MAX_DEVICES_PER_JOB: u32 = 16;
/// At most this many servers in a pool (registrations past it are refused).
pub const MAX_SERVERS: usize = 4096;
/// Round trips a placement request may carry.
pub const MAX_RTTS: usize = 256;
/// Load's weight against round-trip time in `lowest-latency`: a fully loaded
/// device costs as much as this many milliseconds more.
const LOAD_WEIGHT_MS: f64 = 10.0;
/// A candidate whose round trip was not measured counts as this far away.
const UNMEASURED_RTT_MS: f64 = 1000.0;

const GIB: f64 = (1u64 << 30) as f64;

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

/// One device a job could take, with what the policy weighs.
#[derive(Debug, Clone)]
struct Slot {
    device: u32,
    memory: u64,
    reserved: u64,
    utilization: f64,
    leases: u32,
    power: Option<f64>,
}

impl Slot {
    fn free(&self) -> u64 {
        self.memory.saturating_sub(self.reserved)
    }
    fn load(&self) -> f64 {
        self.reserved as f64 / self.memory.max(1) as f64 + self.utilization
    }
    fn active(&self) -> bool {
        self.leases > 0 || self.utilization > 0.05
    }
}

impl Pool {
    /// An empty pool whose lease numbers start at `first_lease`.
    pub fn new(first_lease: u64) -> Self {
        Self {
            next_lease: first_lease.max(1),
            ..Self::default()
        }
    }

    /// Registers (or re-registers) a server under `fresh_key`, or under the key
    /// it `presented` if that is its current one (an address still alive
    /// registers again only so: the join token alone does not take over a live
    /// server). A new instance's counters start again at zero; its leases stay
    /// (their holders still run, or will release them). Returns the key and
    /// the server's live leases.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        description: ServerDescription,
        fresh_key: String,
        presented: Option<&str>,
        now_ms: u64,
        etcd_lease: Option<i64>,
        alive: &Alive,
    ) -> Result<(String, HeartbeatAck), ManagerError> {
        let current = self.servers.get(&description.address);
        let kept = current
            .zip(presented)
            .is_some_and(|(s, p)| !s.key.is_empty() && same_bytes(s.key.as_bytes(), p.as_bytes()));
        if current.is_some() && alive.contains(&description.address) && !kept {
            return Err(ManagerError::NotAllowed(format!(
                "{} is registered and alive; it can register again with its key, or anew once it has been silent for the server TTL",
                description.address
            )));
        }
        let key = if kept {
            current.map(|s| s.key.clone()).unwrap_or_default()
        } else {
            fresh_key
        };
        if current.is_none() && self.servers.len() >= MAX_SERVERS {
            return Err(ManagerError::BadRequest(format!(
                "the pool has {MAX_SERVERS} servers, its most"
            )));
        }
        if description.devices.is_empty() || description.devices.len() > 64 {
            return Err(ManagerError::BadRequest(format!(
                "a server with {} devices",
                description.devices.len()
            )));
        }
        // The same instance keeps its baselines, also when it was forgotten
        // meanwhile (silent a day, say, behind a partition): its counters went
        // on from there, and billing them from zero would bill twice.
        let retired = self.retired.remove(&description.address);
        let metered = match (self.servers.get(&description.address), retired) {
            (Some(old), _) if old.description.instance == description.instance => {
                old.metered.clone()
            }
            (None, Some(r)) if r.instance == description.instance => r.metered,
            _ => Vec::new(),
        };
        let address = description.address.clone();
        self.servers.insert(
            address.clone(),
            ServerEntry {
                description,
                last_seen_ms: now_ms,
                report: ServerReport::default(),
                metered,
                etcd_lease,
                key: key.clone(),
            },
        );
        Ok((key, self.listed(&address, now_ms)))
    }

    /// The pool's core (leases, queue; no servers) and each server's part
    /// (by address; a server forgotten since keeps its records).
    pub fn split(mut self) -> (Pool, BTreeMap<String, ServerPart>) {
        let mut parts: BTreeMap<String, ServerPart> = BTreeMap::new();
        for (address, server) in std::mem::take(&mut self.servers) {
            parts.entry(address).or_default().server = Some(server);
        }
        for u in std::mem::take(&mut self.usage) {
            parts.entry(u.server.clone()).or_default().usage.push(u);
        }
        for u in std::mem::take(&mut self.hourly) {
            parts.entry(u.server.clone()).or_default().hourly.push(u);
        }
        for (address, r) in std::mem::take(&mut self.retired) {
            parts.entry(address).or_default().retired = Some(r);
        }
        (self, parts)
    }

    /// The pool from [`Self::split`]'s parts (or from a core that holds the
    /// servers, and parts that hold only their metering, as before).
    pub fn join(mut core: Pool, parts: BTreeMap<String, ServerPart>) -> Pool {
        for (address, part) in parts {
            if let Some(server) = part.server {
                core.servers.insert(address.clone(), server);
            } else if let Some(server) = core.servers.get_mut(&address) {
                server.metered = part.metered;
            }
            core.usage.extend(part.usage);
            core.hourly.extend(part.hourly);
            if let Some(r) = part.retired {
                core.retired.insert(address, r);
            }
        }
        core
    }

    /// A server's live leases as its heartbeat answers list them: those being
    /// revoked left out (and marked told).
    fn listed(&mut self, address: &str, now_ms: u64) -> HeartbeatAck {
        let mut leases = Vec::new();
        for l in self.leases.values_mut() {
            if l.claims.server != address {
                continue;
            }
            match &mut l.revoking {
                Some(r) => {
                    r.told.get_or_insert(self.next_lease);
                }
                None => leases.push(l.claims.lease),
            }
        }
        HeartbeatAck {
            now_ms,
            leases,
            next_lease: self.next_lease,
        }
    }

    /// Whether `key` is the key of server `address`.
    pub fn key_is(&self, address: &str, key: &str) -> bool {
        self.servers
            .get(address)
            .is_some_and(|s| !s.key.is_empty() && same_bytes(s.key.as_bytes(), key.as_bytes()))
    }

    /// Takes a server's heartbeat: meters what its counters grew by since the
    /// last one, marks the leases it has seen used, and lists its live leases.
    pub fn heartbeat(
        &mut self,
        address: &str,
        key: &str,
        instance: u64,
        report: ServerReport,
        now_ms: u64,
    ) -> Result<HeartbeatAck, ManagerError> {
        if self.servers.contains_key(address) && !self.key_is(address, key) {
            return Err(ManagerError::NotAllowed(format!(
                "not the key of {address}'s registration"
            )));
        }
        let entry = match self.servers.get_mut(address) {
            Some(e) if e.description.instance == instance => e,
            _ => {
                return Err(ManagerError::UnknownServer(format!(
                    "{address} is not registered (or registered again since)"
                )))
            }
        };
        let devices = entry.description.devices.len();
        if report.devices.len() > devices
            || report.meters.len() > 4096
            || report.leases.len() > 65536
            || report.meters.iter().any(|m| m.device as usize >= devices)
        {
            return Err(ManagerError::BadRequest(
                "a heartbeat larger than the server's registration".into(),
            ));
        }
        for meter in &report.meters {
            if !(meter.busy_seconds.is_finite() && meter.byte_seconds.is_finite()) {
                continue;
            }
            let last = entry
                .metered
                .iter_mut()
                .find(|m| m.tenant == meter.tenant && m.device == meter.device);
            let (busy, bytes) = match last {
                Some(last) => {
                    let delta = (
                        (meter.busy_seconds - last.busy_seconds).max(0.0),
                        (meter.byte_seconds - last.byte_seconds).max(0.0),
                    );
                    // A counter never goes back; a report that says so bills
                    // nothing until it passes the highest seen.
                    last.busy_seconds = last.busy_seconds.max(meter.busy_seconds);
                    last.byte_seconds = last.byte_seconds.max(meter.byte_seconds);
                    last.memory_used = meter.memory_used;
                    delta
                }
                None => {
                    entry.metered.push(meter.clone());
                    (meter.busy_seconds.max(0.0), meter.byte_seconds.max(0.0))
                }
            };
            if busy == 0.0 && bytes == 0.0 {
                continue;
            }
            let uuid = &entry.description.devices[meter.device as usize].uuid;
            let key = (meter.tenant.as_str(), address, meter.device, uuid.as_str());
            add_usage(&mut self.usage, key, None, busy, bytes / GIB, now_ms);
            let hour = now_ms - now_ms % HOUR_MS;
            add_usage(&mut self.hourly, key, Some(hour), busy, bytes / GIB, now_ms);
        }
        for seen in &report.leases {
            if let Some(lease) = self.leases.get_mut(&seen.lease) {
                if lease.claims.server == address && seen.started {
                    lease.started = true;
                }
            }
        }
        entry.last_seen_ms = now_ms;
        let report_heard = report.listed_below;
        entry.report = report;
        // Metered above; kept only as `metered`, not twice.
        entry.report.meters = Vec::new();
        // Leases being revoked: one a session took after all stays (running work
        // is never taken); one the server was told of and, in this report made
        // since, has not started, ends.
        let mut ended = Vec::new();
        for l in self.leases.values_mut() {
            if l.claims.server != address {
                continue;
            }
            match &l.revoking {
                Some(_) if l.started => l.revoking = None,
                Some(r) if r.told.is_some_and(|t| report_heard >= t) => {
                    ended.push((l.claims.lease, r.why.clone()))
                }
                _ => {}
            }
        }
        for (lease, why) in ended {
            self.leases.remove(&lease);
            self.ended.push(Ended {
                lease,
                why,
                at_ms: now_ms,
            });
        }
        Ok(self.listed(address, now_ms))
    }

    /// Servers that heart-beat within the TTL.
    pub fn alive_by_heartbeat(&self, now_ms: u64, timing: &Timing) -> Alive {
        self.servers
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_seen_ms) <= timing.server_ttl_ms)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Reclaims the leases of dead servers and lapsed leases, and forgets queued
    /// requests nobody asks about. Returns the leases reclaimed.
    pub fn expire(&mut self, now_ms: u64, alive: &Alive, timing: &Timing) -> Vec<u64> {
        let mut gone = Vec::new();
        self.leases.retain(|&id, lease| {
            let why = if !alive.contains(&lease.claims.server) {
                Some(format!(
                    "its server {} stopped heart-beating",
                    lease.claims.server
                ))
            } else if now_ms.saturating_sub(lease.renewed_ms) > timing.lease_ttl_ms {
                Some("not renewed in time".to_owned())
            } else {
                None
            };
            match why {
                Some(why) => {
                    gone.push((id, why));
                    false
                }
                None => true,
            }
        });
        for (lease, why) in &gone {
            self.ended.push(Ended {
                lease: *lease,
                why: why.clone(),
                at_ms: now_ms,
            });
        }
        self.ended
            .retain(|e| now_ms.saturating_sub(e.at_ms) <= ENDED_KEEP_MS);
        self.hourly
            .retain(|u| now_ms.saturating_sub(u.since_ms) <= HOURLY_KEEP_MS);
        self.queue
            .retain(|w| now_ms.saturating_sub(w.polled_ms) <= timing.queue_ttl_ms);
        self.cancel_unneeded_revocations();
        let leased: BTreeSet<&str> = self
            .leases
            .values()
            .map(|l| l.claims.server.as_str())
            .collect();
        // A few at a time: each forgotten server is a part written (in etcd),
        // and a write stays inside etcd's limits; the rest go in later passes.
        let forget: Vec<String> = self
            .servers
            .iter()
            .filter(|(a, s)| {
                !alive.contains(*a)
                    && !leased.contains(a.as_str())
                    && now_ms.saturating_sub(s.last_seen_ms) > FORGET_SERVER_MS
            })
            .map(|(a, _)| a.clone())
            .take(FORGET_PER_PASS)
            .collect();
        for address in forget {
            if let Some(s) = self.servers.remove(&address) {
                self.retired.insert(
                    address,
                    Retired {
                        instance: s.description.instance,
                        metered: s.metered,
                        at_ms: now_ms,
                    },
                );
            }
        }
        let expired: Vec<String> = self
            .retired
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.at_ms) > HOURLY_KEEP_MS)
            .map(|(a, _)| a.clone())
            .take(FORGET_PER_PASS)
            .collect();
        for address in expired {
            self.retired.remove(&address);
        }
        gone.into_iter().map(|(l, _)| l).collect()
    }

    /// Leases being taken back for a request that no longer waits (placed,
    /// or given up), whose server has not been told yet, are left alone after
    /// all. (Once told, the server refuses them for good, so they end.)
    fn cancel_unneeded_revocations(&mut self) {
        let waiting: BTreeSet<(&str, u64)> = self
            .queue
            .iter()
            .map(|w| (w.tenant.as_str(), w.request))
            .collect();
        for l in self.leases.values_mut() {
            if l.revoking.as_ref().is_some_and(|r| {
                r.told.is_none() && !waiting.contains(&(r.for_request.0.as_str(), r.for_request.1))
            }) {
                l.revoking = None;
            }
        }
    }

    /// What the leases reserve, per server and device.
    fn reserved(&self) -> Reserved<'_> {
        let mut reserved: Reserved<'_> = HashMap::new();
        for l in self.leases.values() {
            let Some(server) = self.servers.get(&l.claims.server) else {
                continue;
            };
            let devices = reserved
                .entry(l.claims.server.as_str())
                .or_insert_with(|| vec![(0, 0); server.description.devices.len()]);
            for &d in &l.claims.devices {
                if let Some(slot) = devices.get_mut(d as usize) {
                    slot.0 += l.claims.memory;
                    slot.1 += 1;
                }
            }
        }
        reserved
    }

    /// A server's devices, as slots.
    fn slots(&self, address: &str, reserved: &Reserved<'_>) -> Vec<Slot> {
        let Some(server) = self.servers.get(address) else {
            return Vec::new();
        };
        let held = reserved.get(address);
        server
            .description
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (bytes, leases) = held.and_then(|h| h.get(i)).copied().unwrap_or((0, 0));
                let report = server.report.devices.get(i);
                Slot {
                    device: i as u32,
                    memory: d.memory,
                    reserved: bytes,
                    utilization: report.map_or(0.0, |r| r.utilization.clamp(0.0, 1.0)),
                    leases,
                    power: report.and_then(|r| r.power_watts),
                }
            })
            .collect()
    }

    /// What a tenant's leases hold across the pool: bytes and devices.
    fn held_by(&self, tenant: &str) -> (u64, u32) {
        self.leases
            .values()
            .filter(|l| l.claims.tenant == tenant)
            .fold((0, 0), |(m, d), l| {
                (
                    m + l.claims.memory * l.claims.devices.len() as u64,
                    d + l.claims.devices.len() as u32,
                )
            })
    }

    /// Checks `need` against the tenant's pool-wide quota.
    fn within_quota(&self, rule: &TenantRule, need: &Requirements) -> Result<(), ManagerError> {
        let (memory, devices) = self.held_by(&rule.name);
        let wanted = need.memory.saturating_mul(need.devices as u64);
        if let Some(quota) = rule.memory_quota {
            if memory.saturating_add(wanted) > quota {
                return Err(ManagerError::OverQuota(format!(
                    "tenant {} holds {} of its pool quota of {}; this job needs {} more",
                    rule.name,
                    gib(memory),
                    gib(quota),
                    gib(wanted)
                )));
            }
        }
        if let Some(quota) = rule.device_quota {
            if devices + need.devices > quota {
                return Err(ManagerError::OverQuota(format!(
                    "tenant {} holds {devices} of its pool quota of {quota} devices; this job needs {} more",
                    rule.name, need.devices
                )));
            }
        }
        Ok(())
    }

    /// Servers that could ever take `need` (alive, right backend and kind, enough
    /// devices of enough memory), whether or not they have room now.
    pub fn candidates(&self, need: &Requirements, alive: &Alive) -> Vec<(String, String)> {
        self.servers
            .iter()
            .filter(|(a, s)| {
                alive.contains(*a)
                    && need
                        .backend
                        .as_ref()
                        .is_none_or(|b| *b == s.description.backend)
                    && s.description
                        .devices
                        .iter()
                        .filter(|d| kind_matches(need, &d.name) && d.memory >= need.memory)
                        .count()
                        >= need.devices as usize
            })
            .map(|(a, s)| (a.clone(), s.description.fingerprint.clone()))
            .collect()
    }

    /// Why nothing can take `need` now.
    fn why_not(&self, need: &Requirements, alive: &Alive) -> String {
        let live: Vec<&ServerEntry> = self
            .servers
            .values()
            .filter(|s| alive.contains(&s.description.address))
            .collect();
        if live.is_empty() {
            return "no server is registered and alive".into();
        }
        let of_backend: Vec<&&ServerEntry> = live
            .iter()
            .filter(|s| {
                need.backend
                    .as_ref()
                    .is_none_or(|b| *b == s.description.backend)
            })
            .collect();
        if of_backend.is_empty() {
            let mut have: Vec<&str> = live
                .iter()
                .map(|s| s.description.backend.as_str())
                .collect();
            have.sort_unstable();
            have.dedup();
            return format!(
                "no server has the {} backend (the pool has: {})",
                need.backend.as_deref().unwrap_or(""),
                have.join(", ")
            );
        }
        let kinds: Vec<(&&ServerEntry, usize)> = of_backend
            .iter()
            .map(|s| {
                let n = s
                    .description
                    .devices
                    .iter()
                    .filter(|d| kind_matches(need, &d.name))
                    .count();
                (*s, n)
            })
            .collect();
        if kinds.iter().all(|(_, n)| *n == 0) {
            return format!(
                "no device is a {}",
                need.kind.as_deref().unwrap_or("device")
            );
        }
        if kinds.iter().all(|(_, n)| *n < need.devices as usize) {
            return format!(
                "no server has {} devices{}",
                need.devices,
                need.kind
                    .as_ref()
                    .map_or(String::new(), |k| format!(" of kind {k}"))
            );
        }
        let largest = of_backend
            .iter()
            .flat_map(|s| s.description.devices.iter())
            .filter(|d| kind_matches(need, &d.name))
            .map(|d| d.memory)
            .max()
            .unwrap_or(0);
        if largest < need.memory {
            return format!(
                "no device has {}: the largest has {}",
                gib(need.memory),
                gib(largest)
            );
        }
        let mut most = (0u64, String::new(), 0u32);
        let reserved = self.reserved();
        for s in &of_backend {
            for slot in self.slots(&s.description.address, &reserved) {
                if slot.free() > most.0 {
                    most = (slot.free(), s.description.address.clone(), slot.device);
                }
            }
        }
        format!(
            "no server has {} free on {} device{}: the most free on one device is {} (server {} device {})",
            gib(need.memory),
            need.devices,
            if need.devices == 1 { "" } else { "s" },
            gib(most.0),
            most.1,
            most.2
        )
    }

    /// The best `(server, devices)` for `need` under `policy`, or `None`, with
    /// what `freed` says of each device taken off its reservations.
    fn choose(
        &self,
        need: &Requirements,
        policy: PolicyKind,
        rtts: &[Rtt],
        alive: &Alive,
        reserved: &Reserved<'_>,
        freed: &dyn Fn(&str, u32) -> u64,
    ) -> Option<(String, Vec<u32>)> {
        // (score, server, devices): the lowest score wins.
        type Choice = ((f64, f64, f64), String, Vec<u32>);
        let mut best: Option<Choice> = None;
        for (address, server) in &self.servers {
            if !alive.contains(address)
                || need
                    .backend
                    .as_ref()
                    .is_some_and(|b| *b != server.description.backend)
            {
                continue;
            }
            let all = self.slots(address, reserved);
            let mut slots: Vec<Slot> = all
                .iter()
                .filter(|s| kind_matches(need, &server.description.devices[s.device as usize].name))
                .cloned()
                .map(|mut s| {
                    s.reserved = s.reserved.saturating_sub(freed(address, s.device));
                    s
                })
                .filter(|s| s.free() >= need.memory)
                .collect();
            if slots.len() < need.devices as usize {
                continue;
            }
            // The devices this server would give, best first by the policy.
            match policy {
                PolicyKind::BinPack => slots.sort_by_key(|s| (s.free(), s.device)),
                PolicyKind::LowestEnergy => slots.sort_by(|a, b| {
                    (!a.active(), a.power.unwrap_or(0.0), a.free())
                        .partial_cmp(&(!b.active(), b.power.unwrap_or(0.0), b.free()))
                        .unwrap_or(std::cmp::Ordering::Equal)
                }),
                _ => slots.sort_by(|a, b| {
                    (a.load(), a.device)
                        .partial_cmp(&(b.load(), b.device))
                        .unwrap_or(std::cmp::Ordering::Equal)
                }),
            }
            slots.truncate(need.devices as usize);
            let n = slots.len() as f64;
            let load = slots.iter().map(Slot::load).sum::<f64>() / n;
            let score = match policy {
                PolicyKind::LeastLoaded | PolicyKind::Priority => (load, 0.0, 0.0),
                PolicyKind::BinPack => (
                    slots.iter().map(|s| (s.free() - need.memory) as f64).sum(),
                    0.0,
                    0.0,
                ),
                PolicyKind::LowestLatency => {
                    let rtt = rtts
                        .iter()
                        .find(|r| r.server == *address && r.millis.is_finite())
                        .map_or(UNMEASURED_RTT_MS, |r| r.millis.max(0.0));
                    (rtt + LOAD_WEIGHT_MS * load, 0.0, 0.0)
                }
                PolicyKind::LowestEnergy => {
                    let woken = slots.iter().filter(|s| !s.active()).count() as f64;
                    // Among servers, one already busy keeps the others idle.
                    let server_active = all.iter().filter(|s| s.active()).count() as f64;
                    let power: f64 = slots.iter().filter_map(|s| s.power).sum();
                    (woken, -server_active, power)
                }
            };
            let devices: Vec<u32> = slots.iter().map(|s| s.device).collect();
            if best.as_ref().is_none_or(|(b, _, _)| score < *b) {
                best = Some((score, address.clone(), devices));
            }
        }
        best.map(|(_, a, d)| (a, d))
    }

    /// Places a job of `rule`'s tenant, or queues it (`wait`, or while room is
    /// being made for it by preemption), or says why not. The same `request`
    /// asked again after it was placed gets the same lease.
    #[allow(clippy::too_many_arguments)]
    pub fn place(
        &mut self,
        rule: &TenantRule,
        rules: &dyn Fn(&str) -> Option<TenantRule>,
        pool_policy: PolicyKind,
        need: &Requirements,
        rtts: &[Rtt],
        wait: bool,
        request: u64,
        now_ms: u64,
        alive: &Alive,
    ) -> Result<Outcome, ManagerError> {
        check_need(need)?;
        if rtts.len() > MAX_RTTS {
            return Err(ManagerError::BadRequest(format!(
                "{} round trips, over {MAX_RTTS}",
                rtts.len()
            )));
        }
        if let Some(done) = self
            .leases
            .values()
            .find(|l| l.request == request && l.claims.tenant == rule.name)
        {
            let claims = done.claims.clone();
            return Ok(Outcome::Placed(self.granted(claims)));
        }
        let policy = rule.policy.unwrap_or(pool_policy);
        // Requests queued ahead of this one that could be placed now go first.
        let reserved = self.reserved();
        let ahead = self.queue_ahead(rule.class, &rule.name, request, now_ms);
        let blocked = ahead.iter().take(QUEUE_LOOKAHEAD).any(|w| {
            rules(&w.tenant).is_some_and(|r| {
                self.within_quota(&r, &w.need).is_ok()
                    && self
                        .choose(
                            &w.need,
                            r.policy.unwrap_or(pool_policy),
                            &[],
                            alive,
                            &reserved,
                            &|_, _| 0,
                        )
                        .is_some()
            })
        });
        drop(reserved);
        let attempt = if blocked {
            Err(ManagerError::Unplaceable(
                "a request ahead in the queue goes first".into(),
            ))
        } else {
            self.within_quota(rule, need)
                .and_then(|()| self.place_now(rule, policy, need, rtts, request, now_ms, alive))
        };
        let reason = match attempt {
            Ok(Ok(claims)) => {
                self.queue
                    .retain(|w| !(w.request == request && w.tenant == rule.name));
                self.cancel_unneeded_revocations();
                return Ok(Outcome::Placed(self.granted(claims)));
            }
            // Room is being made: the request waits for it, `wait` or not.
            Ok(Err(making_room)) => making_room,
            Err(e) if !wait => return Err(e),
            Err(e) => e.to_string(),
        };
        match self
            .queue
            .iter_mut()
            .find(|w| w.request == request && w.tenant == rule.name)
        {
            Some(w) => w.polled_ms = now_ms,
            None => {
                let own = self.queue.iter().filter(|w| w.tenant == rule.name).count();
                if own >= MAX_QUEUED_PER_TENANT {
                    return Err(ManagerError::Unplaceable(format!(
                        "{reason}, and tenant {} has {own} requests waiting, its most",
                        rule.name
                    )));
                }
                if self.queue.len() >= MAX_QUEUE {
                    return Err(ManagerError::Unplaceable(format!(
                        "{reason}, and the queue is full ({MAX_QUEUE} waiting)"
                    )));
                }
                self.queue.push(Waiting {
                    request,
                    tenant: rule.name.clone(),
                    class: rule.class,
                    need: need.clone(),
                    arrived_ms: now_ms,
                    polled_ms: now_ms,
                });
            }
        }
        let position = self
            .queue_ahead(rule.class, &rule.name, request, now_ms)
            .len() as u32
            + 1;
        Ok(Outcome::Queued(Queued { position, reason }))
    }

    /// What the caller needs to hand out `claims`.
    fn granted(&self, claims: LeaseClaims) -> Granted {
        let server = self.servers.get(&claims.server);
        Granted {
            key: server.map(|s| s.key.clone()).unwrap_or_default(),
            fingerprint: server
                .map(|s| s.description.fingerprint.clone())
                .unwrap_or_default(),
            claims,
        }
    }

    /// The waiting requests that come before `tenant`'s `request` (a class above
    /// it, or the same class and earlier), in order.
    fn queue_ahead(&self, class: Class, tenant: &str, request: u64, now_ms: u64) -> Vec<&Waiting> {
        let me = |w: &Waiting| w.request == request && w.tenant == tenant;
        let arrived = self
            .queue
            .iter()
            .find(|w| me(w))
            .map_or(now_ms, |w| w.arrived_ms);
        let mut ahead: Vec<&Waiting> = self
            .queue
            .iter()
            .filter(|w| {
                !me(w) && (w.class > class || (w.class == class && w.arrived_ms <= arrived))
            })
            .collect();
        ahead.sort_by_key(|w| (std::cmp::Reverse(w.class), w.arrived_ms));
        ahead
    }

    /// Places the job now: its lease, or (`Ok(Err(why))`) word that room is
    /// being made for it by revoking unstarted lower leases, or why it fits
    /// nowhere.
    #[allow(clippy::too_many_arguments)]
    fn place_now(
        &mut self,
        rule: &TenantRule,
        policy: PolicyKind,
        need: &Requirements,
        rtts: &[Rtt],
        request: u64,
        now_ms: u64,
        alive: &Alive,
    ) -> Result<Result<LeaseClaims, String>, ManagerError> {
        let chosen = self.choose(need, policy, rtts, alive, &self.reserved(), &|_, _| 0);
        let Some((server, devices)) = chosen else {
            if policy == PolicyKind::Priority {
                if let Some(waiting_on) = self.preempt_for(rule, need, request, alive) {
                    return Ok(Err(format!(
                        "making room: {waiting_on} lower-class lease{} that never started {} being taken back (its server confirms at its next heartbeat)",
                        if waiting_on == 1 { "" } else { "s" },
                        if waiting_on == 1 { "is" } else { "are" },
                    )));
                }
            }
            return Err(ManagerError::Unplaceable(self.why_not(need, alive)));
        };
        let lease = self.next_lease;
        self.next_lease += 1;
        let claims = LeaseClaims {
            lease,
            tenant: rule.name.clone(),
            server,
            devices,
            memory: need.memory,
            class: rule.class,
            compute_share: rule.compute_share,
            issued_ms: now_ms,
        };
        self.leases.insert(
            lease,
            LeaseEntry {
                claims: claims.clone(),
                renewed_ms: now_ms,
                started: false,
                request,
                revoking: None,
            },
        );
        Ok(Ok(claims))
    }

    /// For a job that fits nowhere: on the one server where it then fits, starts
    /// taking back leases of lower classes that no session has used, youngest
    /// first and only as many as each device needs, counting those already being
    /// taken back for this request (or for one no longer waiting). Returns how
    /// many leases the job waits on (`None`: not even that makes room).
    /// Running work is never touched: a lease whose server reports a session
    /// on it stays. What is taken back for another waiting request is that
    /// request's room, and counts for nothing here.
    fn preempt_for(
        &mut self,
        rule: &TenantRule,
        need: &Requirements,
        request: u64,
        alive: &Alive,
    ) -> Option<usize> {
        let me = (rule.name.clone(), request);
        let waiting: BTreeSet<(&str, u64)> = self
            .queue
            .iter()
            .map(|w| (w.tenant.as_str(), w.request))
            .collect();
        let mine_or_nobodys = |r: &Revoking| {
            r.for_request == me || !waiting.contains(&(r.for_request.0.as_str(), r.for_request.1))
        };
        // (lease, server, devices, memory, being revoked already)
        type Victim = (u64, String, Vec<u32>, u64, bool);
        let victims: Vec<Victim> = self
            .leases
            .values()
            .filter(|l| match &l.revoking {
                Some(r) => mine_or_nobodys(r),
                None => !l.started && l.claims.class < rule.class,
            })
            .map(|l| {
                (
                    l.claims.lease,
                    l.claims.server.clone(),
                    l.claims.devices.clone(),
                    l.claims.memory,
                    l.revoking.is_some(),
                )
            })
            .collect();
        if victims.is_empty() {
            return None;
        }
        let freed = |server: &str, device: u32| -> u64 {
            victims
                .iter()
                .filter(|v| v.1 == server && v.2.contains(&device))
                .map(|v| v.3)
                .sum()
        };
        let reserved = self.reserved();
        let (server, devices) =
            self.choose(need, PolicyKind::LeastLoaded, &[], alive, &reserved, &freed)?;
        let slots = self.slots(&server, &reserved);
        drop(reserved);
        // Room per chosen device once what is being revoked already is gone.
        let mut room: BTreeMap<u32, u64> = devices
            .iter()
            .map(|&d| {
                let pending: u64 = victims
                    .iter()
                    .filter(|v| v.4 && v.1 == server && v.2.contains(&d))
                    .map(|v| v.3)
                    .sum();
                (d, slots[d as usize].free() + pending)
            })
            .collect();
        let mut waiting_on: BTreeSet<u64> = victims
            .iter()
            .filter(|v| v.4 && v.1 == server && v.2.iter().any(|d| devices.contains(d)))
            .map(|v| v.0)
            .collect();
        let mut candidates: Vec<&Victim> =
            victims.iter().filter(|v| !v.4 && v.1 == server).collect();
        candidates.sort_by_key(|v| std::cmp::Reverse(v.0));
        let mut revoke = Vec::new();
        for v in candidates {
            let short =
                v.2.iter()
                    .any(|d| room.get(d).is_some_and(|&r| r < need.memory));
            if !short {
                continue;
            }
            for d in &v.2 {
                if let Some(r) = room.get_mut(d) {
                    *r += v.3;
                }
            }
            revoke.push(v.0);
        }
        let why = format!(
            "preempted before it started by a {} job of tenant {}",
            rule.class.name(),
            rule.name
        );
        // A number is spent, so that the answer leaving these out lists a
        // higher `next_lease` than any the server heard before.
        if !revoke.is_empty() {
            self.next_lease += 1;
        }
        for lease in revoke {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.revoking = Some(Revoking {
                    why: why.clone(),
                    told: None,
                    for_request: me.clone(),
                });
                waiting_on.insert(lease);
            }
        }
        // Those being taken back already that this job waits on are its now.
        for lease in &waiting_on {
            if let Some(r) = self.leases.get_mut(lease).and_then(|l| l.revoking.as_mut()) {
                r.for_request = me.clone();
            }
        }
        Some(waiting_on.len())
    }

    /// Renews a lease of `tenant` (one being revoked too: it may yet start).
    pub fn renew(&mut self, tenant: &str, lease: u64, now_ms: u64) -> Result<(), ManagerError> {
        match self.leases.get_mut(&lease) {
            Some(l) if l.claims.tenant == tenant => {
                l.renewed_ms = now_ms;
                Ok(())
            }
            _ => Err(ManagerError::LeaseGone(
                self.ended.iter().find(|e| e.lease == lease).map_or_else(
                    || format!("lease {lease} is not live"),
                    |e| format!("lease {lease}: {}", e.why),
                ),
            )),
        }
    }

    /// Ends a lease of `tenant` at its holder's request.
    pub fn release(&mut self, tenant: &str, lease: u64) -> Result<(), ManagerError> {
        match self.leases.get(&lease) {
            Some(l) if l.claims.tenant == tenant => {
                self.leases.remove(&lease);
                Ok(())
            }
            _ => Err(ManagerError::LeaseGone(format!(
                "lease {lease} is not live"
            ))),
        }
    }

    /// The pool as `xpupool status` shows it; only `tenant`'s leases, usage and
    /// totals unless `None` (the operator).
    pub fn status(
        &self,
        policy: PolicyKind,
        rules: &[TenantRule],
        tenant: Option<&str>,
        now_ms: u64,
        alive: &Alive,
    ) -> PoolStatus {
        let mine = |t: &str| tenant.is_none_or(|own| own == t);
        let reserved = self.reserved();
        let servers = self
            .servers
            .iter()
            .map(|(address, s)| ServerStatus {
                address: address.clone(),
                backend: s.description.backend.clone(),
                alive: alive.contains(address),
                last_seen_seconds: now_ms.saturating_sub(s.last_seen_ms) as f64 / 1e3,
                sessions: s.report.sessions,
                devices: self
                    .slots(address, &reserved)
                    .into_iter()
                    .map(|slot| DeviceStatus {
                        index: slot.device,
                        device: s.description.devices[slot.device as usize].clone(),
                        reserved: slot.reserved,
                        report: s
                            .report
                            .devices
                            .get(slot.device as usize)
                            .cloned()
                            .unwrap_or_default(),
                        leases: slot.leases,
                    })
                    .collect(),
            })
            .collect();
        let leases = self
            .leases
            .values()
            .filter(|l| mine(&l.claims.tenant))
            .map(|l| LeaseStatus {
                lease: l.claims.lease,
                tenant: l.claims.tenant.clone(),
                server: l.claims.server.clone(),
                device: l.claims.devices[0],
                devices: l.claims.devices.clone(),
                memory_bytes: l.claims.memory,
                class: l.claims.class,
                started: l.started,
                age_seconds: now_ms.saturating_sub(l.claims.issued_ms) as f64 / 1e3,
            })
            .collect();
        let mut names: BTreeSet<String> = rules.iter().map(|r| r.name.clone()).collect();
        names.extend(self.usage.iter().map(|u| u.tenant.clone()));
        let tenants = names
            .into_iter()
            .filter(|n| mine(n))
            .map(|name| {
                let rule = rules.iter().find(|r| r.name == name);
                let (memory_reserved, devices_leased) = self.held_by(&name);
                let used = self.usage.iter().filter(|u| u.tenant == name);
                TenantStatus {
                    // Folded from +0.0: an empty f64 sum is -0.0.
                    gpu_seconds: used.clone().fold(0.0, |a, u| a + u.gpu_seconds),
                    gib_seconds: used.fold(0.0, |a, u| a + u.gib_seconds),
                    memory_reserved,
                    memory_quota: rule.and_then(|r| r.memory_quota),
                    devices_leased,
                    device_quota: rule.and_then(|r| r.device_quota),
                    name,
                }
            })
            .collect();
        PoolStatus {
            policy: policy.name().to_owned(),
            servers,
            leases,
            tenants,
            usage: self
                .usage
                .iter()
                .filter(|u| mine(&u.tenant))
                .cloned()
                .collect(),
            queued: self.queue.len() as u32,
        }
    }
}

fn kind_matches(need: &Requirements, name: &str) -> bool {
    need.kind
        .as_ref()
        .is_none_or(|k| name.to_lowercase().contains(&k.to_lowercase()))
}

/// Refuses requirements no job can have.
pub fn check_need(need: &Requirements) -> Result<(), ManagerError> {
    if need.memory == 0 {
        return Err(ManagerError::BadRequest(
            "a job must say how much device memory it needs (xpupool run --memory SIZE)".into(),
        ));
    }
    if need.devices == 0 || need.devices > MAX_DEVICES_PER_JOB {
        return Err(ManagerError::BadRequest(format!(
            "{} devices: a job takes 1 to {MAX_DEVICES_PER_JOB}",
            need.devices
        )));
    }
    for text in [&need.backend, &need.kind].into_iter().flatten() {
        if text.len() > 64 {
            return Err(ManagerError::BadRequest("a name over 64 bytes".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xpupool_protocol::pool::{DeviceReport, LeaseReport, PoolDevice};

    const GB: u64 = 1 << 30;

    fn rule(name: &str, class: Class, policy: Option<PolicyKind>) -> TenantRule {
        TenantRule {
            name: name.into(),
            memory_quota: None,
            device_quota: None,
            class,
            compute_share: 1.0,
            policy,
        }
    }

    fn server(address: &str, devices: &[u64]) -> ServerDescription {
        ServerDescription {
            address: address.into(),
            fingerprint: format!("sha256:{address}"),
            backend: "mock".into(),
            devices: devices
                .iter()
                .enumerate()
                .map(|(i, &gib)| PoolDevice {
                    name: if gib >= 80 {
                        "H200".into()
                    } else {
                        "L4".into()
                    },
                    uuid: format!("GPU-{address}-{i}"),
                    memory: gib * GB,
                    sms: 132,
                    compute_capability: (9, 0),
                })
                .collect(),
            instance: 1,
        }
    }

    /// Three servers: a has one 16 GiB device, b two of 24, c four of 80.
    fn pool() -> (Pool, Alive) {
        let mut pool = Pool::new(1);
        for (a, d) in [
            ("a", vec![16]),
            ("b", vec![24, 24]),
            ("c", vec![80, 80, 80, 80]),
        ] {
            pool.register(server(a, &d), key(a), None, 0, None, &Alive::new())
                .unwrap();
        }
        let alive = pool.alive_by_heartbeat(0, &Timing::default());
        (pool, alive)
    }

    fn key(address: &str) -> String {
        format!("key of {address}")
    }

    fn need(gib: u64, devices: u32) -> Requirements {
        Requirements {
            memory: gib * GB,
            devices,
            backend: None,
            kind: None,
        }
    }

    fn place(
        pool: &mut Pool,
        alive: &Alive,
        r: &TenantRule,
        policy: PolicyKind,
        n: Requirements,
    ) -> Result<LeaseClaims, ManagerError> {
        place_rtt(pool, alive, r, policy, n, &[])
    }

    fn place_rtt(
        pool: &mut Pool,
        alive: &Alive,
        r: &TenantRule,
        policy: PolicyKind,
        n: Requirements,
        rtts: &[Rtt],
    ) -> Result<LeaseClaims, ManagerError> {
        match pool.place(
            r,
            &|_| None,
            policy,
            &n,
            rtts,
            false,
            rand::random(),
            0,
            alive,
        )? {
            Outcome::Placed(g) => Ok(g.claims),
            Outcome::Queued(q) => panic!("queued: {q:?}"),
        }
    }

    #[test]
    fn least_loaded_spreads_and_bin_pack_fills() {
        let (mut p, alive) = pool();
        let t = rule("t", Class::Normal, None);
        // Least loaded: each job on a device with nothing on it yet.
        let mut seen = BTreeSet::new();
        for _ in 0..7 {
            let c = place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(8, 1)).unwrap();
            assert!(seen.insert((c.server.clone(), c.devices[0])), "{c:?}");
        }
        // Bin-pack: the smallest device that fits, until it is full.
        let (mut p, alive) = pool();
        let got: Vec<(String, u32)> = (0..4)
            .map(|_| {
                let c = place(&mut p, &alive, &t, PolicyKind::BinPack, need(8, 1)).unwrap();
                (c.server, c.devices[0])
            })
            .collect();
        assert_eq!(
            got,
            [("a", 0), ("a", 0), ("b", 0), ("b", 0)].map(|(s, d)| (s.to_owned(), d))
        );
    }

    #[test]
    fn multi_device_jobs_and_kinds_and_clear_refusals() {
        let (mut p, alive) = pool();
        let t = rule("t", Class::Normal, None);
        let c = place(&mut p, &alive, &t, PolicyKind::BinPack, need(20, 2)).unwrap();
        assert_eq!((c.server.as_str(), c.devices.len()), ("b", 2));
        let mut h200 = need(1, 1);
        h200.kind = Some("h200".into());
        assert_eq!(
            place(&mut p, &alive, &t, PolicyKind::BinPack, h200)
                .unwrap()
                .server,
            "c"
        );
        let why = |e: ManagerError| e.to_string();
        #[allow(clippy::redundant_clone)]
        let e = place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(1, 5)).unwrap_err();
        assert!(why(e).contains("no server has 5 devices"));
        let e = place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(100, 1)).unwrap_err();
        assert!(why(e).contains("no device has 100.0 GiB: the largest has 80.0 GiB"));
        let mut cuda = need(1, 1);
        cuda.backend = Some("cuda".into());
        let e = place(&mut p, &alive, &t, PolicyKind::LeastLoaded, cuda).unwrap_err();
        assert!(why(e).contains("no server has the cuda backend (the pool has: mock)"));
        let mut tpu = need(1, 1);
        tpu.kind = Some("TPU".into());
        let e = place(&mut p, &alive, &t, PolicyKind::LeastLoaded, tpu).unwrap_err();
        assert!(why(e).contains("no device is a TPU"));
        // Fill everything that is left, then one more: the most free is named.
        while place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(10, 1)).is_ok() {}
        let e = place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(10, 1)).unwrap_err();
        assert!(
            why(e.clone()).contains("no server has 10.0 GiB free on 1 device"),
            "{e}"
        );
        assert!(matches!(
            place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(0, 1)),
            Err(ManagerError::BadRequest(_))
        ));
    }

    #[test]
    fn nothing_is_ever_over_committed() {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        for policy in PolicyKind::NAMES
            .iter()
            .map(|n| PolicyKind::parse(n).unwrap())
        {
            let (mut p, alive) = pool();
            let t = rule("t", Class::Normal, None);
            for step in 0..400 {
                let n = need(rng.gen_range(1..40), rng.gen_range(1..3));
                let _ = place(&mut p, &alive, &t, policy, n);
                if step % 3 == 0 {
                    if let Some(&l) = p.leases.keys().next() {
                        p.release("t", l).unwrap();
                    }
                }
                for (address, s) in &p.servers {
                    for (i, d) in s.description.devices.iter().enumerate() {
                        let reserved: u64 = p
                            .leases
                            .values()
                            .filter(|l| {
                                l.claims.server == *address
                                    && l.claims.devices.contains(&(i as u32))
                            })
                            .map(|l| l.claims.memory)
                            .sum();
                        assert!(
                            reserved <= d.memory,
                            "{policy:?}: {address}/{i} over-committed"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quotas_are_pool_wide() {
        let (mut p, alive) = pool();
        let mut t = rule("t", Class::Normal, None);
        t.memory_quota = Some(20 * GB);
        t.device_quota = Some(2);
        place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(8, 1)).unwrap();
        place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(8, 1)).unwrap();
        let e = place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(1, 1)).unwrap_err();
        assert!(
            matches!(&e, ManagerError::OverQuota(m) if m.contains("2 of its pool quota of 2 devices")),
            "{e}"
        );
        t.device_quota = None;
        let e = place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(8, 1)).unwrap_err();
        assert!(
            matches!(&e, ManagerError::OverQuota(m) if m.contains("16.0 GiB of its pool quota of 20.0 GiB")),
            "{e}"
        );
        // Another tenant is not affected.
        place(
            &mut p,
            &alive,
            &rule("u", Class::Normal, None),
            PolicyKind::LeastLoaded,
            need(8, 1),
        )
        .unwrap();
    }

    #[test]
    fn priority_takes_back_only_unstarted_lower_leases_once_their_server_confirms() {
        let (mut p, alive) = pool();
        let low = rule("low", Class::Low, None);
        let high = rule("high", Class::High, None);
        // Fill every device with low jobs: a's and b's started, c's not.
        let mut placed = Vec::new();
        while let Ok(c) = place(&mut p, &alive, &low, PolicyKind::Priority, need(16, 1)) {
            placed.push(c);
        }
        for c in &placed {
            if c.server != "c" {
                p.leases.get_mut(&c.lease).unwrap().started = true;
            }
        }
        let ask = |p: &mut Pool, now: u64| {
            p.place(
                &high,
                &|_| None,
                PolicyKind::Priority,
                &need(30, 1),
                &[],
                false,
                7,
                now,
                &alive,
            )
            .unwrap()
        };
        let revoking = |p: &Pool| -> Vec<u64> {
            p.leases
                .values()
                .filter(|l| l.revoking.is_some())
                .map(|l| l.claims.lease)
                .collect()
        };
        // The high job waits (even without --wait) while exactly enough is taken
        // back: two 16 GiB leases for 30 GiB, on one device of c.
        match ask(&mut p, 0) {
            Outcome::Queued(q) => assert!(
                q.reason.contains("making room: 2 lower-class leases"),
                "{q:?}"
            ),
            other => panic!("{other:?}"),
        }
        let first = revoking(&p);
        assert_eq!(first.len(), 2);
        let devices: BTreeSet<(String, u32)> = first
            .iter()
            .map(|l| {
                (
                    p.leases[l].claims.server.clone(),
                    p.leases[l].claims.devices[0],
                )
            })
            .collect();
        assert_eq!(devices.len(), 1, "{devices:?}");
        assert_eq!(devices.iter().next().unwrap().0, "c");
        // Asking again takes no more; a lease being taken back still renews.
        assert!(matches!(ask(&mut p, 1), Outcome::Queued(_)));
        assert_eq!(revoking(&p), first);
        p.renew("low", first[0], 1).unwrap();
        // c's next answer leaves them out; the capacity stays held meanwhile.
        let heard = |ack: &HeartbeatAck| ServerReport {
            listed_below: ack.next_lease,
            ..ServerReport::default()
        };
        let lost = p
            .heartbeat("c", &key("c"), 1, ServerReport::default(), 2)
            .unwrap();
        assert!(first.iter().all(|l| !lost.leases.contains(l)));
        assert_eq!(lost.leases.len(), 18);
        // That answer is lost: a report from a server that never applied it
        // settles nothing (the server may still open a session on them).
        let ack = p
            .heartbeat("c", &key("c"), 1, ServerReport::default(), 2)
            .unwrap();
        assert_eq!(revoking(&p), first);
        assert!(matches!(ask(&mut p, 2), Outcome::Queued(_)));
        // Its report after applying an answer that left them out says a session
        // took the first meanwhile: that one stays (running work is never
        // taken); the other ends.
        let report = ServerReport {
            leases: vec![LeaseReport {
                lease: first[0],
                sessions: 1,
                started: true,
            }],
            ..heard(&ack)
        };
        let ack = p.heartbeat("c", &key("c"), 1, report, 3).unwrap();
        assert!(ack.leases.contains(&first[0]));
        assert!(p.leases[&first[0]].started && p.leases[&first[0]].revoking.is_none());
        assert!(!p.leases.contains_key(&first[1]));
        let e = p.renew("low", first[1], 3).unwrap_err();
        assert!(e
            .to_string()
            .contains("preempted before it started by a high job"));
        // Not yet room for 30 GiB: more is taken back, and two heartbeats later
        // the job is placed on c.
        assert!(matches!(ask(&mut p, 4), Outcome::Queued(_)));
        assert!(!revoking(&p).is_empty());
        let mut last = ack;
        for now in [5, 6] {
            last = p.heartbeat("c", &key("c"), 1, heard(&last), now).unwrap();
        }
        match ask(&mut p, 7) {
            Outcome::Placed(g) => assert_eq!(g.claims.server, "c"),
            other => panic!("{other:?}"),
        }
        assert!(revoking(&p).is_empty());
        // Asked again, the same request gets the same lease.
        let Outcome::Placed(again) = ask(&mut p, 8) else {
            panic!("placed twice?")
        };
        assert_eq!(again.key, key("c"));
        assert_eq!(
            p.leases
                .values()
                .filter(|l| l.claims.tenant == "high")
                .count(),
            1
        );
        // Started work is never taken: with every lease started, nothing fits.
        for l in p.leases.values_mut() {
            l.started = true;
        }
        assert!(place(&mut p, &alive, &high, PolicyKind::Priority, need(30, 1)).is_err());
        // A normal job never preempts under another policy.
        let (mut p, alive) = pool();
        while place(&mut p, &alive, &low, PolicyKind::LeastLoaded, need(16, 1)).is_ok() {}
        assert!(place(&mut p, &alive, &high, PolicyKind::LeastLoaded, need(16, 1)).is_err());
    }

    #[test]
    fn each_waiting_job_gets_its_own_room_and_room_nobody_needs_is_not_taken() {
        // One server with one 64 GiB device, filled by four unstarted low leases.
        let mut p = Pool::new(1);
        p.register(server("s", &[64]), key("s"), None, 0, None, &Alive::new())
            .unwrap();
        let alive = p.alive_by_heartbeat(0, &Timing::default());
        let low = rule("low", Class::Low, None);
        let high = rule("high", Class::High, None);
        for _ in 0..4 {
            place(&mut p, &alive, &low, PolicyKind::Priority, need(16, 1)).unwrap();
        }
        let ask = |p: &mut Pool, request: u64, now: u64| {
            p.place(
                &high,
                &|_| None,
                PolicyKind::Priority,
                &need(32, 1),
                &[],
                false,
                request,
                now,
                &alive,
            )
            .unwrap()
        };
        let revoking_for = |p: &Pool, request: u64| -> Vec<u64> {
            p.leases
                .values()
                .filter(|l| {
                    l.revoking
                        .as_ref()
                        .is_some_and(|r| r.for_request.1 == request)
                })
                .map(|l| l.claims.lease)
                .collect()
        };
        // Two high jobs of 32 GiB: each takes back two leases of its own, not
        // both waiting on the same two (which would make room for one only).
        assert!(matches!(ask(&mut p, 1, 0), Outcome::Queued(_)));
        assert!(matches!(ask(&mut p, 2, 0), Outcome::Queued(_)));
        let (one, two) = (revoking_for(&p, 1), revoking_for(&p, 2));
        assert_eq!((one.len(), two.len()), (2, 2), "{one:?} {two:?}");
        assert!(one.iter().all(|l| !two.contains(l)));
        // Asked again, neither takes more.
        assert!(matches!(ask(&mut p, 1, 1), Outcome::Queued(_)));
        assert!(matches!(ask(&mut p, 2, 1), Outcome::Queued(_)));
        assert_eq!(revoking_for(&p, 1).len() + revoking_for(&p, 2).len(), 4);
        // Job 2 gives up (stops asking) before the server was told: once its
        // request has left the queue, its two leases are left alone after all.
        let timing = Timing::default();
        let later = timing.queue_ttl_ms + 2;
        p.queue
            .iter_mut()
            .find(|w| w.request == 1)
            .unwrap()
            .polled_ms = later;
        p.expire(later, &alive, &timing);
        assert_eq!(revoking_for(&p, 1), one);
        assert!(revoking_for(&p, 2).is_empty());
        assert!(two.iter().all(|l| p.leases[l].revoking.is_none()));
        // The server is told of job 1's two only, and job 1 is placed once it
        // confirms; nothing is left being taken back.
        let ack = p
            .heartbeat("s", &key("s"), 1, ServerReport::default(), later)
            .unwrap();
        assert_eq!(ack.leases.len(), 2);
        assert!(two.iter().all(|l| ack.leases.contains(l)));
        let report = ServerReport {
            listed_below: ack.next_lease,
            ..ServerReport::default()
        };
        p.heartbeat("s", &key("s"), 1, report, later + 1).unwrap();
        assert!(matches!(ask(&mut p, 1, later + 2), Outcome::Placed(_)));
        assert!(p.leases.values().all(|l| l.revoking.is_none()));
        assert_eq!(p.leases.len(), 3);
    }

    #[test]
    fn silent_servers_are_forgotten_a_few_per_pass() {
        let mut p = Pool::new(1);
        for i in 0..20 {
            let a = format!("s{i}");
            p.register(server(&a, &[16]), key(&a), None, 0, None, &Alive::new())
                .unwrap();
        }
        let later = FORGET_SERVER_MS + 1;
        let none = Alive::new();
        p.expire(later, &none, &Timing::default());
        assert_eq!(p.servers.len(), 20 - FORGET_PER_PASS);
        assert_eq!(p.retired.len(), FORGET_PER_PASS);
        for pass in 0..3 {
            p.expire(later + pass, &none, &Timing::default());
        }
        assert!(p.servers.is_empty());
        // Their baselines go a few at a time too, a month on.
        p.expire(later + HOURLY_KEEP_MS + 10, &none, &Timing::default());
        assert_eq!(p.retired.len(), 20 - FORGET_PER_PASS);
    }

    #[test]
    fn a_server_is_known_by_its_key() {
        let (mut p, _) = pool();
        let timing = Timing::default();
        // A heartbeat with another server's key is refused, and changes nothing.
        let e = p
            .heartbeat("b", &key("c"), 1, ServerReport::default(), 1000)
            .unwrap_err();
        assert!(matches!(e, ManagerError::NotAllowed(_)), "{e:?}");
        assert_eq!(p.servers["b"].last_seen_ms, 0);
        // The join token alone does not take over a live address...
        let alive = p.alive_by_heartbeat(1000, &timing);
        let mut impostor = server("b", &[24, 24]);
        impostor.fingerprint = "sha256:impostor".into();
        impostor.instance = 9;
        let e = p
            .register(impostor.clone(), "k2".into(), None, 1000, None, &alive)
            .unwrap_err();
        assert!(e.to_string().contains("registered and alive"), "{e}");
        assert_eq!(p.servers["b"].key, key("b"));
        // ...but a silent one may be taken anew, under a fresh key.
        let later = timing.server_ttl_ms + 1;
        let alive = p.alive_by_heartbeat(later, &timing);
        let (k, listed) = p
            .register(impostor, "k2".into(), None, later, None, &alive)
            .unwrap();
        assert_eq!((k.as_str(), listed.now_ms), ("k2", later));
        // Leases are signed with their server's key, and a registration lists
        // the server's live leases.
        let t = rule("t", Class::Normal, None);
        let alive = p.alive_by_heartbeat(later, &timing);
        let g = match p
            .place(
                &t,
                &|_| None,
                PolicyKind::BinPack,
                &need(20, 1),
                &[],
                false,
                1,
                later,
                &alive,
            )
            .unwrap()
        {
            Outcome::Placed(g) => g,
            other => panic!("{other:?}"),
        };
        assert_eq!(g.claims.server, "b");
        assert_eq!(
            (g.key.as_str(), g.fingerprint.as_str()),
            ("k2", "sha256:impostor")
        );
        let (_, listed) = p
            .register(
                server("b", &[24, 24]),
                "k3".into(),
                Some("k2"),
                later,
                None,
                &alive,
            )
            .unwrap();
        assert_eq!(listed.leases, vec![g.claims.lease]);
        assert_eq!(listed.next_lease, g.claims.lease + 1);
        // A server silent for a day with no lease left is forgotten.
        p.release("t", g.claims.lease).unwrap();
        let day = later + FORGET_SERVER_MS + 1;
        p.heartbeat("c", &key("c"), 1, ServerReport::default(), day)
            .unwrap();
        let alive = p.alive_by_heartbeat(day, &timing);
        p.expire(day, &alive, &timing);
        assert_eq!(p.servers.keys().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn lowest_latency_weighs_round_trips_with_load() {
        let (mut p, alive) = pool();
        let t = rule("t", Class::Normal, None);
        let rtts = |a: f64, b: f64, c: f64| {
            vec![
                Rtt {
                    server: "a".into(),
                    millis: a,
                },
                Rtt {
                    server: "b".into(),
                    millis: b,
                },
                Rtt {
                    server: "c".into(),
                    millis: c,
                },
            ]
        };
        let c = place_rtt(
            &mut p,
            &alive,
            &t,
            PolicyKind::LowestLatency,
            need(4, 1),
            &rtts(5.0, 0.5, 9.0),
        )
        .unwrap();
        assert_eq!(c.server, "b");
        // b's devices now carry load: a few ms of round trip are worth less than it.
        let c = place_rtt(
            &mut p,
            &alive,
            &t,
            PolicyKind::LowestLatency,
            need(12, 1),
            &rtts(5.0, 4.0, 9.0),
        )
        .unwrap();
        assert_eq!((c.server.as_str(), c.devices[0]), ("b", 1));
        let c = place_rtt(
            &mut p,
            &alive,
            &t,
            PolicyKind::LowestLatency,
            need(12, 1),
            &rtts(5.0, 4.0, 4.5),
        )
        .unwrap();
        assert_eq!(
            c.server, "c",
            "b is half full; c is empty and 0.5 ms further"
        );
        // Unmeasured servers come last.
        let (mut p, alive) = pool();
        let only_c = vec![Rtt {
            server: "c".into(),
            millis: 50.0,
        }];
        let c = place_rtt(
            &mut p,
            &alive,
            &t,
            PolicyKind::LowestLatency,
            need(1, 1),
            &only_c,
        )
        .unwrap();
        assert_eq!(c.server, "c");
    }

    #[test]
    fn lowest_energy_keeps_devices_idle() {
        let (mut p, alive) = pool();
        let t = rule("t", Class::Normal, None);
        // Power: c draws least per device when idle.
        for (a, watts) in [("a", 60.0), ("b", 70.0), ("c", 40.0)] {
            let n = p.servers[a].description.devices.len();
            p.servers.get_mut(a).unwrap().report.devices = (0..n)
                .map(|_| DeviceReport {
                    power_watts: Some(watts),
                    ..DeviceReport::default()
                })
                .collect();
        }
        let first = place(&mut p, &alive, &t, PolicyKind::LowestEnergy, need(8, 1)).unwrap();
        assert_eq!(first.server, "c");
        // The next jobs go onto the same active device while they fit.
        for _ in 0..9 {
            let c = place(&mut p, &alive, &t, PolicyKind::LowestEnergy, need(8, 1)).unwrap();
            assert_eq!(
                (c.server.clone(), c.devices.clone()),
                (first.server.clone(), first.devices.clone())
            );
        }
        // Full: the next wakes one more device on the server already awake.
        let c = place(&mut p, &alive, &t, PolicyKind::LowestEnergy, need(8, 1)).unwrap();
        assert_eq!(c.server, "c");
        assert_ne!(c.devices, first.devices);
    }

    #[test]
    fn a_silent_server_leaves_placement_and_its_leases_are_reclaimed() {
        let (mut p, _) = pool();
        let timing = Timing::default();
        let t = rule("t", Class::Normal, None);
        let alive = p.alive_by_heartbeat(0, &timing);
        let on_a = place(&mut p, &alive, &t, PolicyKind::BinPack, need(8, 1)).unwrap();
        assert_eq!(on_a.server, "a");
        // b and c heart-beat; a does not.
        let later = timing.server_ttl_ms + 1;
        for s in ["b", "c"] {
            p.heartbeat(s, &key(s), 1, ServerReport::default(), later)
                .unwrap();
        }
        let alive = p.alive_by_heartbeat(later, &timing);
        assert!(!alive.contains("a"));
        // Renewed in time, but its server is gone.
        p.renew("t", on_a.lease, later - 1).unwrap();
        assert_eq!(p.expire(later, &alive, &timing), vec![on_a.lease]);
        let e = p.renew("t", on_a.lease, later).unwrap_err();
        assert!(
            e.to_string().contains("its server a stopped heart-beating"),
            "{e}"
        );
        let c = place(&mut p, &alive, &t, PolicyKind::BinPack, need(8, 1)).unwrap();
        assert_ne!(c.server, "a");
        // A lease not renewed lapses.
        let much_later = later + timing.lease_ttl_ms + 1;
        for s in ["b", "c"] {
            p.heartbeat(s, &key(s), 1, ServerReport::default(), much_later)
                .unwrap();
        }
        let alive = p.alive_by_heartbeat(much_later, &timing);
        assert_eq!(p.expire(much_later, &alive, &timing), vec![c.lease]);
        // A heartbeat from an unknown instance asks for a new registration.
        assert!(matches!(
            p.heartbeat("b", &key("b"), 2, ServerReport::default(), much_later),
            Err(ManagerError::UnknownServer(_))
        ));
    }

    #[test]
    fn metering_adds_what_the_counters_grew_by() {
        let (mut p, _) = pool();
        let meter = |busy: f64, gib_s: f64| ServerReport {
            meters: vec![TenantMeter {
                tenant: "t".into(),
                device: 1,
                busy_seconds: busy,
                byte_seconds: gib_s * GIB,
                memory_used: 0,
            }],
            leases: vec![LeaseReport {
                lease: 99,
                sessions: 1,
                started: true,
            }],
            ..ServerReport::default()
        };
        p.heartbeat("b", &key("b"), 1, meter(1.5, 10.0), 1000)
            .unwrap();
        p.heartbeat("b", &key("b"), 1, meter(4.0, 30.0), 3000)
            .unwrap();
        // A counter going back (it cannot, but a bad report must not un-bill).
        p.heartbeat("b", &key("b"), 1, meter(3.0, 30.0), 5000)
            .unwrap();
        let status = p.status(PolicyKind::LeastLoaded, &[], None, 5000, &Alive::new());
        assert_eq!(status.tenants.len(), 1);
        assert!((status.tenants[0].gpu_seconds - 4.0).abs() < 1e-9);
        assert!((status.tenants[0].gib_seconds - 30.0).abs() < 1e-9);
        assert_eq!(p.hourly.len(), 1);
        // The same instance registering again keeps its baselines; a new one
        // starts from zero.
        // (b is alive: again only with its key.)
        let alive = p.alive_by_heartbeat(6000, &Timing::default());
        assert!(matches!(
            p.register(
                server("b", &[24, 24]),
                "new".into(),
                None,
                6000,
                None,
                &alive
            ),
            Err(ManagerError::NotAllowed(_))
        ));
        let (k, _) = p
            .register(
                server("b", &[24, 24]),
                "new".into(),
                Some(&key("b")),
                6000,
                None,
                &alive,
            )
            .unwrap();
        assert_eq!(k, key("b"));
        p.heartbeat("b", &key("b"), 1, meter(5.0, 30.0), 7000)
            .unwrap();
        let mut fresh = server("b", &[24, 24]);
        fresh.instance = 2;
        p.register(fresh, key("b"), Some(&key("b")), 8000, None, &alive)
            .unwrap();
        p.heartbeat("b", &key("b"), 2, meter(0.5, 1.0), 9000)
            .unwrap();
        let status = p.status(PolicyKind::LeastLoaded, &[], None, 9000, &Alive::new());
        assert!(
            (status.tenants[0].gpu_seconds - 5.5).abs() < 1e-9,
            "{:?}",
            status.tenants
        );
        assert!((status.tenants[0].gib_seconds - 31.0).abs() < 1e-9);
        // A report naming a device the server does not have is refused.
        let mut bad = meter(1.0, 1.0);
        bad.meters[0].device = 7;
        assert!(p.heartbeat("b", &key("b"), 2, bad, 9500).is_err());
        // Silent for over a day, b is forgotten; the same instance coming back
        // (through etcd's split state, too) is billed only for what its
        // counters grew by since, a new instance from zero.
        let gone = 9500 + FORGET_SERVER_MS + 1;
        let none = Alive::new();
        p.leases.clear();
        p.expire(gone, &none, &Timing::default());
        assert!(!p.servers.contains_key("b"));
        let (core, parts) = p.split();
        assert!(core.servers.is_empty());
        let mut p = Pool::join(core, parts);
        let mut back = server("b", &[24, 24]);
        back.instance = 2;
        p.register(back.clone(), "k2".into(), None, gone, None, &none)
            .unwrap();
        p.heartbeat("b", "k2", 2, meter(1.5, 2.0), gone + 1)
            .unwrap();
        let billed = |p: &Pool| {
            let s = p.status(PolicyKind::LeastLoaded, &[], None, gone + 2, &Alive::new());
            (s.tenants[0].gpu_seconds, s.tenants[0].gib_seconds)
        };
        let (gpu, gib) = billed(&p);
        assert!(
            (gpu - 6.5).abs() < 1e-9 && (gib - 32.0).abs() < 1e-9,
            "{gpu} {gib}"
        );
        let later = gone + 2 + FORGET_SERVER_MS;
        p.expire(later, &none, &Timing::default());
        back.instance = 3;
        p.register(back, "k3".into(), None, later, None, &none)
            .unwrap();
        p.heartbeat("b", "k3", 3, meter(0.5, 1.0), later + 1)
            .unwrap();
        let (gpu, _) = billed(&p);
        assert!((gpu - 7.0).abs() < 1e-9, "{gpu}");
        assert!(!p.retired.contains_key("b") && p.retired.contains_key("a"));
    }

    #[test]
    fn the_queue_places_by_class_then_arrival() {
        let (mut p, alive) = pool();
        let t = rule("t", Class::Normal, None);
        let hi = rule("hi", Class::High, None);
        while place(&mut p, &alive, &t, PolicyKind::LeastLoaded, need(16, 1)).is_ok() {}
        let rules = |name: &str| match name {
            "hi" => Some(rule("hi", Class::High, None)),
            _ => Some(rule("t", Class::Normal, None)),
        };
        let ask = |p: &mut Pool, r: &TenantRule, request: u64, now: u64| {
            p.place(
                r,
                &rules,
                PolicyKind::LeastLoaded,
                &need(16, 1),
                &[],
                true,
                request,
                now,
                &alive,
            )
            .unwrap()
        };
        assert!(matches!(
            ask(&mut p, &t, 1, 10),
            Outcome::Queued(Queued { position: 1, .. })
        ));
        assert!(matches!(
            ask(&mut p, &t, 2, 20),
            Outcome::Queued(Queued { position: 2, .. })
        ));
        // A high request goes ahead of both.
        assert!(matches!(
            ask(&mut p, &hi, 3, 30),
            Outcome::Queued(Queued { position: 1, .. })
        ));
        assert!(matches!(
            ask(&mut p, &t, 1, 40),
            Outcome::Queued(Queued { position: 2, .. })
        ));
        // Another tenant's request of the same number is another request.
        let u = rule("u", Class::Normal, None);
        assert!(matches!(
            ask(&mut p, &u, 1, 45),
            Outcome::Queued(Queued { position: 4, .. })
        ));
        assert_eq!(p.queue.len(), 4);
        p.queue.retain(|w| w.tenant != "u");
        // Room for one: request 1 asks first but 3 is ahead and fits, so 1 waits
        // (told only that a request ahead goes first, not whose).
        let l = *p.leases.keys().next().unwrap();
        p.release("t", l).unwrap();
        match ask(&mut p, &t, 1, 50) {
            Outcome::Queued(q) => assert!(
                q.reason
                    .ends_with(": a request ahead in the queue goes first"),
                "{q:?}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ask(&mut p, &hi, 3, 60), Outcome::Placed(_)));
        assert_eq!(p.queue.len(), 2);
        // One tenant cannot fill the queue.
        for request in 100..100 + MAX_QUEUED_PER_TENANT as u64 - 2 {
            assert!(matches!(ask(&mut p, &t, request, 70), Outcome::Queued(_)));
        }
        let refused = p.place(
            &t,
            &rules,
            PolicyKind::LeastLoaded,
            &need(16, 1),
            &[],
            true,
            999,
            80,
            &alive,
        );
        assert!(
            matches!(&refused, Err(ManagerError::Unplaceable(m)) if m.contains("requests waiting, its most")),
            "{refused:?}"
        );
        assert!(matches!(ask(&mut p, &hi, 1000, 80), Outcome::Queued(_)));
    }
}
