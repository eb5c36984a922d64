//! The manager's listener: QUIC with TLS 1.3 (ALPN `xpupool-manager/1`), one
//! request and one reply per stream. Servers register with the pool's join token
//! and heart-beat with the key they are given; clients present their tenant
//! token; the operator token opens the whole pool's status.
//!
//! Nothing a peer does before it shows a token can hold the manager: one address
//! has at most [`MAX_CONNECTIONS_PER_IP`] connections, a connection at most
//! [`MAX_STREAMS`] requests at once, a request must arrive whole within
//! [`REQUEST_TIMEOUT`] before it takes one of [`MAX_IN_FLIGHT`] places, and an
//! answer that takes longer than [`ANSWER_TIMEOUT`] (etcd slow or contended) is
//! given up as unavailable.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use xpupool_protocol::frame;
use xpupool_protocol::pool::{
    same_bytes, server_key, ManagerError, ManagerReply, ManagerRequest, ManagerResult, Placement,
    Registered, UsageRecord, MANAGER_ALPN, MAX_MANAGER_FRAME, MAX_USAGE_PAGE,
};
use xpupool_server::tls::Identity;

use crate::pool::{check_need, Outcome, PolicyKind, Pool, TenantRule, Timing};
use crate::store::Store;

/// Requests served at once; more wait for a place.
const MAX_IN_FLIGHT: usize = 256;
/// Connections from one IP address at once.
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Requests one connection may have open at once.
const MAX_STREAMS: u32 = 16;
/// An answer taking longer than this is given up (the client may ask again);
/// well inside the client's own limit, so an answer it has stopped waiting for
/// is not one the manager still acts on.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections not yet established, at most.
const MAX_INCOMING: usize = 256;
/// Connections open at once, at most (servers, clients and operators together);
/// past it new ones are refused until one closes.
const MAX_CONNECTIONS: usize = 4096;
/// A request must arrive within this (it holds one of [`MAX_IN_FLIGHT`] places
/// meanwhile; clients send theirs at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection that says nothing for this long is closed (clients keep theirs
/// alive between calls).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A server description's or requirement's strings, at most.
const MAX_NAME: usize = 256;
/// Heartbeats whose key this manager has not seen accepted cost it a read of
/// the pool; one IP address may send this many a second of them...
const UNVERIFIED_PER_SECOND: f64 = 2.0;
/// ...and this many at once.
const UNVERIFIED_BURST: f64 = 8.0;

/// Everything a manager needs to start.
pub struct ManagerConfig {
    /// Where to listen (UDP).
    pub listen: SocketAddr,
    /// TLS certificate and key.
    pub identity: Identity,
    /// What servers present to register.
    pub join_token: String,
    /// What operators present to see the whole pool.
    pub operator_token: String,
    /// Each tenant's token and rule.
    pub tenants: Vec<(String, TenantRule)>,
    /// The pool's placement policy.
    pub policy: PolicyKind,
    /// TTLs and intervals.
    pub timing: Timing,
    /// Where the state is.
    pub store: Store,
}

/// Counters of this manager process (not shared between managers).
#[derive(Default)]
pub struct Counters {
    /// Jobs placed.
    pub placed: AtomicU64,
    /// Requests queued (each poll counts).
    pub queued: AtomicU64,
    /// Requests refused (unplaceable, over quota, bad).
    pub refused: AtomicU64,
    /// Leases reclaimed by a TTL (server or lease).
    pub reclaimed: AtomicU64,
}

/// The running manager's shared state.
pub struct Manager {
    join_token: String,
    operator_token: String,
    tenants: Vec<(String, TenantRule)>,
    policy: PolicyKind,
    timing: Timing,
    store: Store,
    /// What the last reaper pass saw, for metrics.
    pub snapshot: Mutex<Option<(Pool, crate::pool::Alive, u64)>>,
    /// This process's counters.
    pub counters: Counters,
    /// Server keys seen accepted, and the ration of the others.
    keys: Keys,
}

/// Server keys this manager has seen accepted (by address), so a heartbeat
/// presenting one goes straight to its work, and a ration per IP address of
/// heartbeats presenting any other (a key given by another manager, or a
/// stranger's guess), each of which costs a read of the pool.
#[derive(Default)]
struct Keys {
    known: Mutex<HashMap<String, String>>,
    ration: Mutex<HashMap<IpAddr, (f64, std::time::Instant)>>,
}

impl Keys {
    fn is_known(&self, address: &str, key: &str) -> bool {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(address)
            .is_some_and(|k| same_bytes(k.as_bytes(), key.as_bytes()))
    }

    fn remember(&self, address: &str, key: &str) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= crate::pool::MAX_SERVERS && !known.contains_key(address) {
            known.clear();
        }
        known.insert(address.to_owned(), key.to_owned());
    }

    fn forget(&self, address: &str) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.remove(address);
    }

    /// Whether `ip` may have one more heartbeat with a key not known here.
    fn ration(&self, ip: IpAddr) -> bool {
        let now = std::time::Instant::now();
        let mut ration = self.ration.lock().unwrap_or_else(|e| e.into_inner());
        if ration.len() >= 65536 {
            // Those whose ration has refilled hold nothing back: forget them;
            // and if all are fresh, start again rather than refuse everyone.
            let full = Duration::from_secs_f64(UNVERIFIED_BURST / UNVERIFIED_PER_SECOND);
            ration.retain(|_, (_, at)| now.duration_since(*at) < full);
            if ration.len() >= 65536 {
                ration.clear();
            }
        }
        // An IPv6 host has a /64 to itself: it is rationed as one.
        let ip = match ip {
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
            v4 => v4,
        };
        let (left, at) = ration.entry(ip).or_insert((UNVERIFIED_BURST, now));
        *left = (*left + now.duration_since(*at).as_secs_f64() * UNVERIFIED_PER_SECOND)
            .min(UNVERIFIED_BURST);
        *at = now;
        if *left < 1.0 {
            return false;
        }
        *left -= 1.0;
        true
    }
}

/// A bound manager; [`Self::serve`] runs it.
pub struct BoundManager {
    endpoint: quinn::Endpoint,
    manager: Arc<Manager>,
}

impl BoundManager {
    /// Binds the QUIC endpoint. Must be called inside a tokio runtime.
    pub fn bind(config: ManagerConfig) -> Result<Self> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?))
            .max_concurrent_bidi_streams(MAX_STREAMS.into())
            .max_concurrent_uni_streams(0u32.into())
            // What one connection can make the manager buffer: requests are small,
            // and a large one still flows, only paced.
            .receive_window((2u32 << 20).into())
            .stream_receive_window((1u32 << 20).into());
        let mut server_config =
            xpupool_server::tls::quic_server_config(config.identity, MANAGER_ALPN, transport)
                .context("manager certificate")?;
        server_config.max_incoming(MAX_INCOMING);
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .with_context(|| format!("listening on {}", config.listen))?;
        Ok(Self {
            endpoint,
            manager: Arc::new(Manager {
                join_token: config.join_token,
                operator_token: config.operator_token,
                tenants: config.tenants,
                policy: config.policy,
                timing: config.timing,
                store: config.store,
                snapshot: Mutex::new(None),
                counters: Counters::default(),
                keys: Keys::default(),
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The manager, for metrics.
    pub fn manager(&self) -> Arc<Manager> {
        self.manager.clone()
    }

    /// Serves until the endpoint closes. A reaper reclaims what the TTLs say is
    /// gone every second, whether or not requests come.
    pub async fn serve(self) {
        let reaper = tokio::spawn(reap(self.manager.clone()));
        let places = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_ip = Arc::new(PerIp::default());
        while let Some(incoming) = self.endpoint.accept().await {
            let remote = incoming.remote_address();
            let Ok(open) = connections.clone().try_acquire_owned() else {
                tracing::warn!(%remote, "refusing a connection: {MAX_CONNECTIONS} are open");
                incoming.refuse();
                continue;
            };
            let Some(from_ip) = per_ip.clone().take(remote.ip()) else {
                tracing::warn!(%remote, "refusing a connection: {MAX_CONNECTIONS_PER_IP} are open from that address");
                incoming.refuse();
                continue;
            };
            let manager = self.manager.clone();
            let places = places.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => serve_connection(connection, manager, places).await,
                    Err(e) => tracing::debug!(%remote, "manager handshake failed: {e}"),
                }
                drop((open, from_ip));
            });
        }
        reaper.abort();
    }
}

/// Connections open per IP address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerIp`], given back when dropped.
struct IpSlot(Arc<PerIp>, IpAddr);

impl PerIp {
    fn take(self: Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_IP {
            return None;
        }
        *n += 1;
        drop(open);
        Some(IpSlot(self, ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

async fn reap(manager: Arc<Manager>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match manager.store.expire(&manager.timing).await {
            Ok(gone) => {
                if !gone.is_empty() {
                    tracing::info!(leases = ?gone, "reclaimed leases");
                    manager
                        .counters
                        .reclaimed
                        .fetch_add(gone.len() as u64, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!("reclaiming: {e}"),
        }
        match manager.store.read(&manager.timing).await {
            Ok(snapshot) => {
                *manager.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot)
            }
            Err(e) => tracing::warn!("reading the pool: {e}"),
        }
    }
}

async fn serve_connection(
    connection: quinn::Connection,
    manager: Arc<Manager>,
    places: Arc<tokio::sync::Semaphore>,
) {
    let remote = connection.remote_address();
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::debug!(%remote, "manager connection ended: {e}");
                return;
            }
        };
        let manager = manager.clone();
        let places = places.clone();
        tokio::spawn(async move {
            // The request arrives whole (bounded by the connection's stream
            // count, window and this time) before it takes a place.
            let reply = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut recv)).await {
                Ok(Ok(request)) => match places.acquire_owned().await {
                    Ok(_place) => {
                        match tokio::time::timeout(ANSWER_TIMEOUT, manager.handle(request, remote))
                            .await
                        {
                            Ok(reply) => reply,
                            Err(_) => Err(ManagerError::Unavailable(format!(
                                "no answer within {ANSWER_TIMEOUT:?}; ask again"
                            ))),
                        }
                    }
                    Err(_) => return,
                },
                Ok(Err(e)) => Err(ManagerError::BadRequest(format!("{e:#}"))),
                Err(_) => Err(ManagerError::BadRequest(format!(
                    "no request within {REQUEST_TIMEOUT:?}"
                ))),
            };
            if let Ok(bytes) = frame::encode(&reply) {
                let _ = send.write_all(&bytes).await;
            }
            let _ = send.finish();
        });
    }
}

async fn read_request(recv: &mut quinn::RecvStream) -> Result<ManagerRequest> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let len = frame::body_len(prefix)?;
    anyhow::ensure!(
        len <= MAX_MANAGER_FRAME,
        "a request of {len} bytes, over {MAX_MANAGER_FRAME}"
    );
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(frame::decode(&body)?)
}

impl Manager {
    /// The rule of the tenant whose token this is (every token compared).
    fn tenant(&self, token: &str) -> Result<&TenantRule, ManagerError> {
        let mut found = None;
        for (candidate, rule) in &self.tenants {
            if same_bytes(candidate.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(rule);
            }
        }
        found.ok_or_else(|| ManagerError::NotAllowed("unknown tenant token".into()))
    }

    fn rule(&self, name: &str) -> Option<TenantRule> {
        self.tenants
            .iter()
            .find(|(_, r)| r.name == name)
            .map(|(_, r)| r.clone())
    }

    fn is_operator(&self, token: &str) -> bool {
        same_bytes(self.operator_token.as_bytes(), token.as_bytes())
    }

    fn is_server(&self, token: &str) -> bool {
        same_bytes(self.join_token.as_bytes(), token.as_bytes())
    }

    /// Whose figures `token` may see: everyone's (`None`) for the operator
    /// token, a tenant's own otherwise.
    fn scope(&self, token: &str) -> Result<Option<String>, ManagerError> {
        if self.is_operator(token) {
            Ok(None)
        } else {
            Ok(Some(self.tenant(token)?.name.clone()))
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: ManagerRequest, remote: SocketAddr) -> ManagerResult {
        let timing = self.timing;
        let result = self.answer(request, remote, &timing).await;
        let counter = match &result {
            Ok(ManagerReply::Placed(_)) => Some(&self.counters.placed),
            Ok(ManagerReply::Queued(_)) => Some(&self.counters.queued),
            Err(
                ManagerError::Unplaceable(_)
                | ManagerError::OverQuota(_)
                | ManagerError::BadRequest(_),
            ) => Some(&self.counters.refused),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn answer(
        &self,
        request: ManagerRequest,
        remote: SocketAddr,
        timing: &Timing,
    ) -> ManagerResult {
        match request {
            ManagerRequest::Register {
                join_token,
                server,
                key,
            } => {
                if !self.is_server(&join_token) {
                    tracing::warn!(%remote, "refused a registration: wrong join token");
                    return Err(ManagerError::NotAllowed("wrong join token".into()));
                }
                if server.address.len() > MAX_NAME
                    || server.backend.len() > MAX_NAME
                    || server.fingerprint.len() > MAX_NAME
                    || key.as_ref().is_some_and(|k| k.len() > MAX_NAME)
                    || server
                        .devices
                        .iter()
                        .any(|d| d.name.len() > MAX_NAME || d.uuid.len() > MAX_NAME)
                {
                    return Err(ManagerError::BadRequest("a name too long".into()));
                }
                let address = server.address.clone();
                let devices = server.devices.len();
                let fresh = server_key(&rand::random());
                // Whether the address is taken is judged by heartbeats (in both
                // stores): refused here before an etcd lease is made for it.
                let register = |pool: &mut Pool, now: u64, etcd_lease: Option<i64>| {
                    let live = pool.alive_by_heartbeat(now, timing);
                    pool.register(
                        server.clone(),
                        fresh.clone(),
                        key.as_deref(),
                        now,
                        etcd_lease,
                        &live,
                    )
                };
                let (mut pool, _, now) = self.store.read(timing).await?;
                register(&mut pool, now, None)?;
                let etcd_lease = self
                    .store
                    .register_alive(&server.address, timing)
                    .await
                    .map_err(|e| ManagerError::Unavailable(format!("etcd: {e:#}")))?;
                let (server_key, listed) = self
                    .store
                    .update(timing, |pool, _, now| register(pool, now, etcd_lease))
                    .await??;
                self.keys.remember(&address, &server_key);
                tracing::info!(server = %address, devices, %remote, "server registered");
                Ok(ManagerReply::Registered(Registered {
                    server_key,
                    heartbeat_ms: timing.heartbeat_ms,
                    ttl_ms: timing.server_ttl_ms,
                    listed,
                }))
            }
            ManagerRequest::Heartbeat {
                server,
                key,
                instance,
                report,
            } => {
                // A key the pool had at the reaper's last pass (a manager
                // restarted, a server moved here) is not rationed either.
                let known = self.keys.is_known(&server, &key)
                    || self
                        .snapshot
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .is_some_and(|(pool, _, _)| pool.key_is(&server, &key));
                if !known && !self.keys.ration(remote.ip()) {
                    return Err(ManagerError::Unavailable(format!(
                        "too many heartbeats from {} with keys not seen here yet; the next in a second",
                        remote.ip()
                    )));
                }
                let result = self
                    .heartbeat(&server, &key, instance, report, timing)
                    .await;
                match &result {
                    Ok(_) => self.keys.remember(&server, &key),
                    // A known key the pool no longer takes (a strangers' guess
                    // forgets nothing).
                    Err(ManagerError::NotAllowed(_) | ManagerError::UnknownServer(_)) if known => {
                        self.keys.forget(&server)
                    }
                    Err(_) => {}
                }
                result
            }
            ManagerRequest::Candidates { token, need } => {
                self.tenant(&token)?;
                check_need(&need)?;
                let (pool, alive, _) = self.store.read(timing).await?;
                Ok(ManagerReply::Candidates {
                    servers: pool.candidates(&need, &alive),
                    measure: self.policy == PolicyKind::LowestLatency
                        || self.tenant(&token)?.policy == Some(PolicyKind::LowestLatency),
                })
            }
            ManagerRequest::Place {
                token,
                need,
                rtts,
                wait,
                request,
            } => {
                let rule = self.tenant(&token)?.clone();
                let outcome = self
                    .store
                    .update(timing, |pool, alive, now| {
                        pool.place(
                            &rule,
                            &|name| self.rule(name),
                            self.policy,
                            &need,
                            &rtts,
                            wait,
                            request,
                            now,
                            alive,
                        )
                    })
                    .await??;
                match outcome {
                    Outcome::Queued(queued) => Ok(ManagerReply::Queued(queued)),
                    Outcome::Placed(granted) => {
                        let claims = granted.claims;
                        tracing::info!(
                            tenant = %claims.tenant,
                            server = %claims.server,
                            devices = ?claims.devices,
                            memory = claims.memory,
                            lease = claims.lease,
                            "placed"
                        );
                        Ok(ManagerReply::Placed(Placement {
                            token: claims.sign(&granted.key),
                            claims,
                            fingerprint: granted.fingerprint,
                            renew_ms: (timing.lease_ttl_ms / 5).max(500),
                        }))
                    }
                }
            }
            ManagerRequest::Renew { token, lease } => {
                let name = self.tenant(&token)?.name.clone();
                self.store
                    .update(timing, |pool, _, now| pool.renew(&name, lease, now))
                    .await??;
                Ok(ManagerReply::Renewed {
                    renew_ms: (timing.lease_ttl_ms / 5).max(500),
                })
            }
            ManagerRequest::Release { token, lease } => {
                let name = self.tenant(&token)?.name.clone();
                self.store
                    .update(timing, |pool, _, _| pool.release(&name, lease))
                    .await??;
                tracing::info!(tenant = %name, lease, "released");
                Ok(ManagerReply::Done)
            }
            ManagerRequest::Usage {
                token,
                since_ms,
                after,
            } => {
                let own = self.scope(&token)?;
                let mut records = self.store.hourly(timing, since_ms).await?;
                let key =
                    |u: &UsageRecord| (u.since_ms, u.tenant.clone(), u.server.clone(), u.device);
                records.retain(|u| {
                    own.as_ref().is_none_or(|t| *t == u.tenant)
                        && after.as_ref().is_none_or(|a| key(u) > *a)
                });
                records.sort_by_key(key);
                records.truncate(MAX_USAGE_PAGE);
                Ok(ManagerReply::Usage(records))
            }
            ManagerRequest::Status { token } => {
                let own = self.scope(&token)?;
                let (pool, alive, now) = self.store.read(timing).await?;
                let rules: Vec<TenantRule> = self.tenants.iter().map(|(_, r)| r.clone()).collect();
                Ok(ManagerReply::Status(pool.status(
                    self.policy,
                    &rules,
                    own.as_deref(),
                    now,
                    &alive,
                )))
            }
        }
    }

    /// A heartbeat whose key is to be checked against the pool's.
    async fn heartbeat(
        &self,
        server: &str,
        key: &str,
        instance: u64,
        report: xpupool_protocol::pool::ServerReport,
        timing: &Timing,
    ) -> ManagerResult {
        if self.store.is_etcd() {
            let (pool, _, _) = self.store.read(timing).await?;
            if pool.servers.contains_key(server) && !pool.key_is(server, key) {
                return Err(ManagerError::NotAllowed(format!(
                    "not the key of {server}'s registration"
                )));
            }
            let lease = pool.servers.get(server).and_then(|s| s.etcd_lease);
            let kept = self
                .store
                .keep_alive(lease)
                .await
                .map_err(|e| ManagerError::Unavailable(format!("etcd: {e:#}")))?;
            // The alive key must be on this registration's etcd lease: a
            // registration racing another for the address may have left
            // it on one that lapses.
            let on_lease = self
                .store
                .alive_lease(server)
                .await
                .map_err(|e| ManagerError::Unavailable(format!("etcd: {e:#}")))?;
            if !kept || lease.is_none() || on_lease != lease {
                return Err(ManagerError::UnknownServer(format!(
                    "{server}'s registration lapsed"
                )));
            }
        }
        let ack = self
            .store
            .update(timing, |pool, _, now| {
                pool.heartbeat(server, key, instance, report.clone(), now)
            })
            .await??;
        Ok(ManagerReply::HeartbeatAck(ack))
    }

    /// The pool's status as of the last reaper pass (every tenant).
    pub fn last_status(&self) -> Option<xpupool_protocol::pool::PoolStatus> {
        let snapshot = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        let (pool, alive, now) = snapshot.as_ref()?;
        let rules: Vec<TenantRule> = self.tenants.iter().map(|(_, r)| r.clone()).collect();
        Some(pool.status(self.policy, &rules, None, *now, alive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_of_connections() {
        let per_ip = Arc::new(PerIp::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut held: Vec<IpSlot> = (0..MAX_CONNECTIONS_PER_IP)
            .map(|_| per_ip.clone().take(a).expect("under the cap"))
            .collect();
        assert!(per_ip.clone().take(a).is_none());
        // Another address is not held up by it.
        let other = per_ip.clone().take(b).expect("another address");
        // A connection that ends gives its place back.
        held.pop();
        assert!(per_ip.clone().take(a).is_some());
        drop((held, other));
        assert!(per_ip.0.lock().unwrap().is_empty());
    }

    fn manager() -> Manager {
        Manager {
            join_token: "join".into(),
            operator_token: "op".into(),
            tenants: Vec::new(),
            policy: PolicyKind::LeastLoaded,
            timing: Timing::default(),
            store: Store::memory(),
            snapshot: Mutex::new(None),
            counters: Counters::default(),
            keys: Keys::default(),
        }
    }

    #[tokio::test]
    async fn heartbeats_with_unknown_keys_are_rationed_per_address() {
        use xpupool_protocol::pool::{PoolDevice, ServerDescription, ServerReport};
        let m = manager();
        let from = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 9);
        let description = ServerDescription {
            address: "gpu:7800".into(),
            fingerprint: "sha256:00".into(),
            backend: "mock".into(),
            devices: vec![PoolDevice {
                name: "GPU".into(),
                uuid: "GPU-0".into(),
                memory: 1 << 30,
                sms: 1,
                compute_capability: (9, 0),
            }],
            instance: 1,
        };
        let registered = m
            .handle(
                ManagerRequest::Register {
                    join_token: "join".into(),
                    server: description,
                    key: None,
                },
                from("10.0.0.1"),
            )
            .await;
        let Ok(ManagerReply::Registered(r)) = registered else {
            panic!("{registered:?}")
        };
        let beat = |key: &str| ManagerRequest::Heartbeat {
            server: "gpu:7800".into(),
            key: key.into(),
            instance: 1,
            report: ServerReport::default(),
        };
        // A stranger guessing keys from one address: each guess is looked up
        // (and refused) until its ration is spent, then refused unread.
        let mut looked_up = 0;
        for i in 0..40 {
            match m
                .handle(beat(&format!("guess {i}")), from("10.9.9.9"))
                .await
            {
                Err(ManagerError::NotAllowed(_)) => looked_up += 1,
                Err(ManagerError::Unavailable(e)) => {
                    assert!(e.contains("too many heartbeats"), "{e}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!((8..=10).contains(&looked_up), "{looked_up}");
        // Neither the server itself (its key is known here), from anywhere,
        // nor another address is held back by that.
        for _ in 0..20 {
            assert!(matches!(
                m.handle(beat(&r.server_key), from("10.9.9.9")).await,
                Ok(ManagerReply::HeartbeatAck(_))
            ));
        }
        assert!(matches!(
            m.handle(beat("wrong"), from("10.0.0.2")).await,
            Err(ManagerError::NotAllowed(_))
        ));
        // A key this manager has not seen accepted itself, but the pool had at
        // the reaper's last pass (say, it restarted), is not rationed either.
        m.keys.known.lock().unwrap().clear();
        *m.snapshot.lock().unwrap() = Some(m.store.read(&m.timing).await.unwrap());
        for _ in 0..20 {
            assert!(matches!(
                m.handle(beat(&r.server_key), from("10.9.9.9")).await,
                Ok(ManagerReply::HeartbeatAck(_))
            ));
        }
        // IPv6 addresses of one /64 share a ration.
        let mut refused = 0;
        for i in 0..20u16 {
            let ip = format!("2001:db8::{i:x}");
            if matches!(
                m.handle(beat("guess"), from(&ip)).await,
                Err(ManagerError::Unavailable(_))
            ) {
                refused += 1;
            }
        }
        assert!(refused >= 10, "{refused}");
    }
}
