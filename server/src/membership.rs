//! A server in a pool (`xpupool server --manager ADDR`): it registers with the
//! pool's manager, heart-beats its figures, and admits only clients that present
//! a lease the manager signed for it.
//!
//! A lease is checked here, with the key the manager gave this server at
//! registration: no round trip per client. The manager's heartbeat answers list
//! the server's live leases and the pool's next lease number then; a lease
//! numbered below that and not listed is over (released, lapsed or preempted),
//! so it opens no new session. Lease numbers grow in the order placements are
//! made, so no manager's clock is compared with another's. Sessions a lease
//! already opened carry on until they end. A lease's devices must be this
//! server's.
//!
//! Each lease is a tenant of this server with the lease's memory as its limit on
//! the lease's devices. Metering counters (busy seconds, byte-seconds) are kept
//! per manager tenant and device for the server's life and sent whole at every
//! heartbeat; the manager bills their growth.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xpupool_client::pool::{ManagerAccess, ManagerLink};
use xpupool_protocol::pool::{
    Class, DeviceReport, HeartbeatAck, LeaseClaims, LeaseReport, ManagerError, ManagerReply,
    ManagerRequest, PoolDevice, ServerDescription, ServerReport, TenantMeter,
};
use xpupool_protocol::{code, CuError};

use crate::scheduler::Priority;
use crate::tenancy::{Host, Policy, Tenant};

/// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`, `…COMPUTE_CAPABILITY_MAJOR`, `…MINOR`.
const ATTRIBUTE_SMS: u32 = 16;
const ATTRIBUTE_CC_MAJOR: u32 = 75;
const ATTRIBUTE_CC_MINOR: u32 = 76;

/// Sessions one lease may have open at once.
const MAX_SESSIONS_PER_LEASE: usize = 64;
/// Leases this server keeps track of at once.
const MAX_LEASES: usize = 4096;
/// Heartbeats refused in a row (other than for an unknown registration) before
/// this server registers again.
const MAX_REFUSALS: u32 = 3;
/// Longest wait between registration attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How a server joins its pool.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    /// The managers.
    pub access: ManagerAccess,
    /// The pool's join token.
    pub join_token: String,
    /// Where clients reach this server (`host:port`).
    pub address: String,
    /// This server's certificate fingerprint.
    pub fingerprint: String,
    /// Where the key of its last registration is kept (only its owner may read
    /// it): a restarted server presents it, and so registers again at once
    /// instead of waiting out the server TTL of its previous run.
    pub key_file: Option<std::path::PathBuf>,
}

/// A lease this server has admitted sessions under.
struct Held {
    tenant: Tenant,
    claims: LeaseClaims,
    started: bool,
}

#[derive(Default)]
struct State {
    /// The key from the last registration; `None` until registered.
    key: Option<String>,
    /// The key of the last registration, kept when the manager asks for a new
    /// one: presented, it lets this address register again while alive.
    last_key: Option<String>,
    /// This host's devices (known once [`Membership::run`] starts).
    devices: usize,
    /// Live leases as of the pool's lease number `listed_below`.
    live: HashSet<u64>,
    listed_below: u64,
    /// Leases sessions were opened under.
    held: HashMap<u64, Held>,
    /// Counters of leases gone, per (tenant, device): busy seconds, byte-seconds.
    retired: HashMap<(String, u32), (f64, f64)>,
}

/// This server's membership of a pool.
pub struct Membership {
    settings: JoinSettings,
    instance: u64,
    state: Mutex<State>,
}

impl Membership {
    /// A membership not yet registered; [`Self::run`] registers and heart-beats.
    pub fn new(settings: JoinSettings) -> Arc<Self> {
        let last_key = settings
            .key_file
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty());
        Arc::new(Self {
            settings,
            instance: rand::random(),
            state: Mutex::new(State {
                last_key,
                ..State::default()
            }),
        })
    }

    /// Keeps the key of this registration for the next run.
    fn keep_key(&self, key: &str) {
        let Some(path) = &self.settings.key_file else {
            return;
        };
        if let Err(e) = crate::tls::write_private(path, key.as_bytes()) {
            tracing::warn!("keeping the pool key in {}: {e:#}", path.display());
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant of a client presenting `token`, if it is a live lease for this
    /// server; every lease's sessions share one tenant (one ledger).
    pub fn admit(&self, token: &str) -> Result<Tenant, CuError> {
        let refuse = |why: String| CuError::new(code::NOT_PERMITTED, why);
        let mut state = self.state();
        let key = state.key.clone().ok_or_else(|| {
            refuse("this server has not registered with its pool manager yet; try again in a few seconds".into())
        })?;
        let claims = match LeaseClaims::verify(token, &key) {
            None => {
                return Err(refuse(
                    "this server is in a pool: it admits only leases of its pool manager (run with XPUPOOL_MANAGER, not XPUPOOL_SERVER)".into(),
                ))
            }
            Some(Err(why)) => return Err(refuse(format!("not a valid lease: {why}"))),
            Some(Ok(claims)) => claims,
        };
        if claims.server != self.settings.address {
            return Err(refuse(format!(
                "the lease is for {}, not this server",
                claims.server
            )));
        }
        let mut devices = claims.devices.clone();
        devices.sort_unstable();
        devices.dedup();
        if devices.is_empty()
            || devices.len() != claims.devices.len()
            || devices.iter().any(|&d| d as usize >= state.devices)
        {
            return Err(refuse(format!(
                "the lease names devices {:?}; this server has {}",
                claims.devices, state.devices
            )));
        }
        if !state.live.contains(&claims.lease) && claims.lease < state.listed_below {
            return Err(refuse(format!(
                "lease {} is over (released, lapsed or preempted)",
                claims.lease
            )));
        }
        if let Some(held) = state.held.get_mut(&claims.lease) {
            if held.claims != claims {
                return Err(refuse(format!(
                    "lease {} is already in use here under other terms",
                    claims.lease
                )));
            }
            held.started = true;
            return Ok(held.tenant.clone());
        }
        if state.held.len() >= MAX_LEASES {
            return Err(refuse(format!("this server holds {MAX_LEASES} leases")));
        }
        let tenant = Tenant::with_policy(
            claims.tenant.clone(),
            Policy {
                memory_limit: Some(claims.memory),
                compute_share: claims.compute_share.clamp(0.01, 1.0),
                priority: match claims.class {
                    Class::High => Priority::High,
                    Class::Normal => Priority::Normal,
                    Class::Low => Priority::Low,
                },
                devices: Some(claims.devices.clone()),
                sm_limit: None,
                max_sessions: MAX_SESSIONS_PER_LEASE,
            },
        );
        state.held.insert(
            claims.lease,
            Held {
                tenant: tenant.clone(),
                claims,
                started: true,
            },
        );
        Ok(tenant)
    }

    /// The tenants of the leases held now (for metrics and status).
    pub fn tenants(&self) -> Vec<Tenant> {
        self.state()
            .held
            .values()
            .map(|h| h.tenant.clone())
            .collect()
    }

    fn description(&self, host: &Host) -> ServerDescription {
        let attribute = |info: &xpupool_protocol::DeviceInfo, which: u32| {
            info.attributes
                .iter()
                .find(|(a, _)| *a == which)
                .map_or(0, |(_, v)| (*v).max(0) as u32)
        };
        ServerDescription {
            address: self.settings.address.clone(),
            fingerprint: self.settings.fingerprint.clone(),
            backend: host.backend().name().to_owned(),
            devices: host
                .devices()
                .iter()
                .map(|info| PoolDevice {
                    name: info.name.clone(),
                    uuid: xpupool_protocol::gpu_uuid_text(&info.uuid),
                    memory: info.total_memory,
                    sms: attribute(info, ATTRIBUTE_SMS),
                    compute_capability: (
                        attribute(info, ATTRIBUTE_CC_MAJOR),
                        attribute(info, ATTRIBUTE_CC_MINOR),
                    ),
                })
                .collect(),
            instance: self.instance,
        }
    }

    /// What this server has measured of each manager tenant on each device
    /// since it started: busy seconds and byte-seconds (cumulative), and the bytes
    /// held now. Heartbeats carry these whole; the manager bills their growth.
    pub fn meters(&self, host: &Host) -> Vec<TenantMeter> {
        let state = self.state();
        let devices = host.devices().len();
        let mut meters: HashMap<(String, u32), (f64, f64, u64)> = state
            .retired
            .iter()
            .map(|(k, (busy, bytes))| (k.clone(), (*busy, *bytes, 0)))
            .collect();
        for held in state.held.values() {
            for &d in held
                .claims
                .devices
                .iter()
                .filter(|&&d| (d as usize) < devices)
            {
                let ledger = held.tenant.memory(d);
                let entry = meters
                    .entry((held.tenant.name.clone(), d))
                    .or_insert((0.0, 0.0, 0));
                entry.0 += held.tenant.usage(d).busy_ns.load(Ordering::Relaxed) as f64 * 1e-9;
                entry.1 += ledger.byte_seconds();
                entry.2 += ledger.used();
            }
        }
        let mut meters: Vec<TenantMeter> = meters
            .into_iter()
            .map(|((tenant, device), (busy, bytes, used))| TenantMeter {
                tenant,
                device,
                busy_seconds: busy,
                byte_seconds: bytes,
                memory_used: used,
            })
            .collect();
        meters.sort_by(|a, b| (&a.tenant, a.device).cmp(&(&b.tenant, b.device)));
        meters
    }

    /// The figures of a heartbeat.
    fn report(&self, host: &Host) -> ServerReport {
        let meters = self.meters(host);
        let devices = host.devices().len();
        let mut used = vec![0u64; devices];
        for m in &meters {
            used[m.device as usize] += m.memory_used;
        }
        // Device figures (NVML's first load included) before the state lock,
        // which admission takes.
        let device_reports: Vec<DeviceReport> = (0..devices)
            .map(|d| {
                let figures = host.device_figures(d as u32, used[d]);
                DeviceReport {
                    memory_used: figures.memory_used,
                    utilization: figures.utilization,
                    power_watts: host.power_watts(d as u32),
                }
            })
            .collect();
        let state = self.state();
        let leases = state
            .held
            .iter()
            .map(|(lease, held)| LeaseReport {
                lease: *lease,
                sessions: held.tenant.sessions() as u32,
                started: held.started,
            })
            .collect::<Vec<_>>();
        ServerReport {
            devices: device_reports,
            meters,
            sessions: leases.iter().map(|l| l.sessions).sum(),
            leases,
            listed_below: state.listed_below,
        }
    }

    /// Takes a heartbeat's answer: the live leases; leases that are over and
    /// have no session left are forgotten, their counters kept.
    fn listed(&self, listed: HeartbeatAck) {
        let mut state = self.state();
        state.live = listed.leases.into_iter().collect();
        state.listed_below = listed.next_lease;
        let over: Vec<u64> = state
            .held
            .iter()
            .filter(|(id, h)| !state.live.contains(id) && h.tenant.sessions() == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            let held = state.held.remove(&id).expect("listed above");
            for &d in &held.claims.devices {
                let busy = held.tenant.usage(d).busy_ns.load(Ordering::Relaxed) as f64 * 1e-9;
                let bytes = held.tenant.memory(d).byte_seconds();
                let entry = state
                    .retired
                    .entry((held.tenant.name.clone(), d))
                    .or_insert((0.0, 0.0));
                entry.0 += busy;
                entry.1 += bytes;
            }
        }
    }

    /// Registers and heart-beats for as long as the runtime runs; a manager that
    /// forgets this server (a restart) gets it registered again.
    pub async fn run(self: Arc<Self>, host: Arc<Host>) {
        let link = match ManagerLink::new(self.settings.access.clone()) {
            Ok(link) => link,
            Err(e) => {
                tracing::error!("cannot reach the pool manager: {e:#}");
                return;
            }
        };
        self.state().devices = host.devices().len();
        let mut backoff = Duration::from_millis(500);
        let mut interval = Duration::from_secs(2);
        let mut refusals = 0;
        // Register again while keeping the key: sessions on leases already signed
        // with it are still admitted meanwhile.
        let mut register_again = false;
        loop {
            let registered = self.state().key.is_some();
            if !registered || register_again {
                let last_key = self.state().last_key.clone();
                let request = ManagerRequest::Register {
                    join_token: self.settings.join_token.clone(),
                    server: self.description(&host),
                    key: last_key,
                };
                match link.call(&request).await {
                    Ok(Ok(ManagerReply::Registered(r))) => {
                        let manager = link.address().await;
                        tracing::info!(%manager, "registered with the pool manager");
                        self.keep_key(&r.server_key);
                        {
                            let mut state = self.state();
                            state.key = Some(r.server_key.clone());
                            state.last_key = Some(r.server_key);
                        }
                        // Leases issued before now and not listed are over.
                        self.listed(r.listed);
                        interval = Duration::from_millis(r.heartbeat_ms.clamp(100, 60_000));
                        backoff = Duration::from_millis(500);
                        refusals = 0;
                        register_again = false;
                    }
                    Ok(Ok(other)) => {
                        tracing::warn!("the manager answered a registration with {other:?}")
                    }
                    Ok(Err(e)) => tracing::warn!("the pool manager refused this server: {e}"),
                    Err(e) => tracing::warn!("registering with the pool manager: {e:#}"),
                }
                if self.state().key.is_none() || register_again {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            let key = self.state().key.clone().unwrap_or_default();
            let request = ManagerRequest::Heartbeat {
                server: self.settings.address.clone(),
                key,
                instance: self.instance,
                report: self.report(&host),
            };
            let mut pause = interval;
            match link.call(&request).await {
                Ok(Ok(ManagerReply::HeartbeatAck(ack))) => {
                    refusals = 0;
                    self.listed(ack)
                }
                Ok(Err(ManagerError::UnknownServer(why))) => {
                    tracing::info!("registering again: {why}");
                    register_again = true;
                    continue;
                }
                Ok(Ok(other)) => tracing::warn!("the manager answered a heartbeat with {other:?}"),
                // Only a refusal of this server counts; an unavailable store or a
                // slow answer is the manager's trouble, not a reason to register.
                Ok(Err(e @ ManagerError::NotAllowed(_))) => {
                    tracing::warn!("the pool manager refused a heartbeat: {e}");
                    refusals += 1;
                    if refusals >= MAX_REFUSALS {
                        tracing::info!("registering again after {refusals} refused heartbeats");
                        register_again = true;
                        refusals = 0;
                        continue;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("heart-beating: the pool manager answered {e}");
                    pause = interval.min(Duration::from_millis(250));
                }
                Err(e) => {
                    // No manager answered: try again soon, not a whole interval
                    // later, so a manager's death costs little of the TTL.
                    tracing::warn!("heart-beating: {e:#}");
                    pause = interval.min(Duration::from_millis(250));
                }
            }
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn member() -> Arc<Membership> {
        let access = ManagerAccess::new("127.0.0.1:1", None, Some("sha256:00".into())).unwrap();
        let membership = Membership::new(JoinSettings {
            access,
            join_token: "join".into(),
            address: "10.0.0.1:7800".into(),
            fingerprint: "sha256:00".into(),
            key_file: None,
        });
        {
            let mut state = membership.state();
            state.key = Some(KEY.into());
            state.devices = 2;
        }
        membership
    }

    fn lease(lease: u64, devices: Vec<u32>) -> LeaseClaims {
        LeaseClaims {
            lease,
            tenant: "t".into(),
            server: "10.0.0.1:7800".into(),
            devices,
            memory: 1 << 30,
            class: Class::Normal,
            compute_share: 1.0,
            issued_ms: 0,
        }
    }

    #[test]
    fn admits_live_leases_of_its_own_devices_only() {
        let m = member();
        // Before any list: a signed lease for a device it has is admitted.
        assert!(m.admit(&lease(10, vec![1]).sign(KEY)).is_ok());
        // Devices it lacks, none, or one twice: refused.
        for devices in [vec![2], vec![], vec![0, 0]] {
            let e = m.admit(&lease(11, devices).sign(KEY)).unwrap_err();
            assert!(e.to_string().contains("this server has 2"), "{e}");
        }
        // Another key's signature, another server's lease: refused.
        assert!(m.admit(&lease(12, vec![0]).sign("another key")).is_err());
        let mut elsewhere = lease(13, vec![0]);
        elsewhere.server = "10.0.0.2:7800".into();
        assert!(m.admit(&elsewhere.sign(KEY)).is_err());
        // The manager lists lease 10 live as of lease number 20: 14 (below 20,
        // not listed) is over, 25 (placed since) is admitted, 10 still is.
        m.listed(HeartbeatAck {
            now_ms: 0,
            leases: vec![10],
            next_lease: 20,
        });
        let e = m.admit(&lease(14, vec![0]).sign(KEY)).unwrap_err();
        assert!(e.to_string().contains("lease 14 is over"), "{e}");
        assert!(m.admit(&lease(25, vec![0]).sign(KEY)).is_ok());
        assert!(m.admit(&lease(10, vec![1]).sign(KEY)).is_ok());
        // The same lease under other terms is refused.
        let e = m.admit(&lease(10, vec![0]).sign(KEY)).unwrap_err();
        assert!(e.to_string().contains("under other terms"), "{e}");
    }
}
