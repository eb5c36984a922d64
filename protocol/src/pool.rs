//! The pool manager's wire format: what servers, clients and managers say to each
//! other, and the signed leases a server admits.
//!
//! Every exchange is one request and one reply on a fresh QUIC stream (ALPN
//! [`MANAGER_ALPN`]), each a [`crate::frame`] of at most [`MAX_MANAGER_FRAME`]
//! bytes. A server registers with the pool's join token and is given a random key
//! of its own ([`Registered::server_key`]); it heart-beats with that key, and
//! verifies the leases clients present with it, so admission needs no round trip
//! to a manager. The join token does not let a server learn another's key: an
//! address that is alive registers again only with its current key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// QUIC application protocol name of the manager.
pub const MANAGER_ALPN: &[u8] = b"xpupool-manager/1";

/// The largest request or reply either side reads (a status of a large pool fits).
pub const MAX_MANAGER_FRAME: usize = 4 << 20;

/// Hourly records in one answer, at most (well inside [`MAX_MANAGER_FRAME`]).
pub const MAX_USAGE_PAGE: usize = 10_000;

/// A lease as a client presents it in its hello's token: this prefix, then the
/// hex of the claims, a dot and the hex of their MAC.
pub const LEASE_PREFIX: &str = "lease:";

/// Scheduling class of a tenant's jobs (as a server's tenants have).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Class {
    /// Runs only where nothing normal waits.
    Low,
    /// The default.
    Normal,
    /// Placed first; may take capacity reserved for lower jobs that have not started.
    High,
}

impl Class {
    /// `low`, `normal` or `high`.
    pub fn name(self) -> &'static str {
        match self {
            Class::Low => "low",
            Class::Normal => "normal",
            Class::High => "high",
        }
    }

    /// The class of a name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "low" => Some(Class::Low),
            "normal" => Some(Class::Normal),
            "high" => Some(Class::High),
            _ => None,
        }
    }
}

/// One device of a server, as it registers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolDevice {
    /// Marketing name.
    pub name: String,
    /// `GPU-…` text.
    pub uuid: String,
    /// Bytes of memory.
    pub memory: u64,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Compute capability, major and minor.
    pub compute_capability: (u32, u32),
}

/// A server as it registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerDescription {
    /// Where clients reach it (`host:port`); also its name in the pool.
    pub address: String,
    /// `sha256:…` of its certificate, handed to the clients it is chosen for.
    pub fingerprint: String,
    /// `cuda`, `mock`, …
    pub backend: String,
    /// Its devices, by host ordinal.
    pub devices: Vec<PoolDevice>,
    /// Random per start: a new instance's counters begin again at zero.
    pub instance: u64,
}

/// One device's figures in a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// Bytes in use on it.
    pub memory_used: u64,
    /// Fraction of the last seconds it ran kernels, in [0, 1].
    pub utilization: f64,
    /// Watts drawn, where the backend can tell.
    pub power_watts: Option<f64>,
}

/// A tenant's counters on one device since the server started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantMeter {
    /// The manager's tenant.
    pub tenant: String,
    /// Host ordinal.
    pub device: u32,
    /// Seconds of device time its kernels took.
    pub busy_seconds: f64,
    /// Integral of the bytes it held over time, in byte-seconds.
    pub byte_seconds: f64,
    /// Bytes it holds now.
    pub memory_used: u64,
}

/// A lease as its server sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseReport {
    /// The lease.
    pub lease: u64,
    /// Sessions open under it now.
    pub sessions: u32,
    /// Whether any session was ever opened under it.
    pub started: bool,
}

/// What a server tells its manager every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    /// Per device, by host ordinal.
    pub devices: Vec<DeviceReport>,
    /// Cumulative per tenant and device.
    pub meters: Vec<TenantMeter>,
    /// The leases it has seen.
    pub leases: Vec<LeaseReport>,
    /// Sessions open now.
    pub sessions: u32,
    /// The `next_lease` of the last heartbeat or registration answer the server
    /// applied before making this report: which lease lists it has heard.
    #[serde(default)]
    pub listed_below: u64,
}

/// What a job needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// Bytes of memory on each device.
    pub memory: u64,
    /// How many devices, all on one server.
    pub devices: u32,
    /// Only servers with this backend (`cuda`, `mock`, …).
    pub backend: Option<String>,
    /// Only devices whose name contains this (e.g. `H200`).
    pub kind: Option<String>,
}

/// A client's measured round trip to a candidate server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    /// The server's address.
    pub server: String,
    /// Milliseconds.
    pub millis: f64,
}

/// What a lease grants; signed by the manager with the server's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseClaims {
    /// Unique in the pool.
    pub lease: u64,
    /// The manager's tenant.
    pub tenant: String,
    /// The server it is for (its address).
    pub server: String,
    /// The host devices it may use.
    pub devices: Vec<u32>,
    /// Bytes it may hold on each.
    pub memory: u64,
    /// Its class on the server's scheduler.
    pub class: Class,
    /// Its share of each device under contention.
    pub compute_share: f64,
    /// Milliseconds since the Unix epoch, by the manager's clock.
    pub issued_ms: u64,
}

/// A placed job: where to go and what to show there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// What was granted.
    pub claims: LeaseClaims,
    /// The token to present to the server ([`LEASE_PREFIX`]…).
    pub token: String,
    /// The server's certificate fingerprint.
    pub fingerprint: String,
    /// Renew at least this often (milliseconds), or the lease lapses.
    pub renew_ms: u64,
}

/// A request to a manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ManagerRequest {
    /// A server joins the pool (again, after a restart or a manager's).
    Register {
        /// The pool's join token.
        join_token: String,
        /// Who it is.
        server: ServerDescription,
        /// The key of its registration so far, if it has one: an address still
        /// alive in the pool registers again only with it.
        #[serde(default)]
        key: Option<String>,
    },
    /// A server's periodic report.
    Heartbeat {
        /// Its address.
        server: String,
        /// Its key, from [`Registered`].
        key: String,
        /// Its instance, from its registration.
        instance: u64,
        /// The figures.
        report: ServerReport,
    },
    /// The servers a job could go to, for the client to measure round trips.
    Candidates {
        /// The tenant's token.
        token: String,
        /// What the job needs.
        need: Requirements,
    },
    /// Places a job, or queues it (`wait`).
    Place {
        /// The tenant's token.
        token: String,
        /// What the job needs.
        need: Requirements,
        /// Round trips the client measured.
        rtts: Vec<Rtt>,
        /// Queue when it cannot be placed now, instead of failing.
        wait: bool,
        /// Chosen by the client; a queued request asks again with the same one.
        request: u64,
    },
    /// Keeps a lease.
    Renew {
        /// The tenant's token.
        token: String,
        /// The lease.
        lease: u64,
    },
    /// Gives a lease back.
    Release {
        /// The tenant's token.
        token: String,
        /// The lease.
        lease: u64,
    },
    /// The pool now: all of it for the operator token, a tenant's own part
    /// otherwise.
    Status {
        /// A tenant's token, or the operator token.
        token: String,
    },
    /// Metering by the hour, from `since_ms` on (for billing), with the same
    /// scope as [`ManagerRequest::Status`].
    Usage {
        /// A tenant's token, or the operator token.
        token: String,
        /// Milliseconds since the epoch.
        since_ms: u64,
        /// The records after this one (`since_ms`, tenant, server, device) in
        /// that order: the next page. At most [`MAX_USAGE_PAGE`] come at once.
        #[serde(default)]
        after: Option<(u64, String, String, u32)>,
    },
}

/// A server's admission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// Its key: it heart-beats with it and checks leases' MACs with it.
    pub server_key: String,
    /// Heart-beat this often (milliseconds).
    pub heartbeat_ms: u64,
    /// Silent this long (milliseconds), it leaves placement and its leases go.
    pub ttl_ms: u64,
    /// Its live leases as of registration, as a heartbeat's answer lists them.
    pub listed: HeartbeatAck,
}

/// A manager's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The manager's clock (milliseconds since the epoch) when it made the list.
    pub now_ms: u64,
    /// Every lease of this server that is live. A lease numbered below
    /// `next_lease` and not here is over: no new session may use it.
    pub leases: Vec<u64>,
    /// The pool's next lease number when the list was made. Lease numbers grow
    /// in the order placements are made, whichever manager made them, so this
    /// orders the list against leases without comparing managers' clocks.
    pub next_lease: u64,
}

/// Where a queued request stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// 1 for the next to be placed.
    pub position: u32,
    /// Why it is not placed yet.
    pub reason: String,
}

/// A lease in a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The lease.
    pub lease: u64,
    /// Its tenant.
    pub tenant: String,
    /// Its server.
    pub server: String,
    /// Its first device (host ordinal).
    pub device: u32,
    /// Every device it holds.
    pub devices: Vec<u32>,
    /// Bytes on each.
    pub memory_bytes: u64,
    /// Its class.
    pub class: Class,
    /// Whether a session has used it.
    pub started: bool,
    /// Seconds since it was granted.
    pub age_seconds: f64,
}

/// A device in a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Host ordinal.
    pub index: u32,
    /// What it is.
    pub device: PoolDevice,
    /// Bytes its leases reserve.
    pub reserved: u64,
    /// Its last report.
    pub report: DeviceReport,
    /// Leases on it.
    pub leases: u32,
}

/// A server in a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Where clients reach it.
    pub address: String,
    /// Its backend.
    pub backend: String,
    /// Whether it heart-beat within the TTL.
    pub alive: bool,
    /// Seconds since its last heartbeat.
    pub last_seen_seconds: f64,
    /// Sessions open on it.
    pub sessions: u32,
    /// Its devices.
    pub devices: Vec<DeviceStatus>,
}

/// A tenant's totals in a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    /// The tenant.
    pub name: String,
    /// Measured busy device time, summed over devices.
    pub gpu_seconds: f64,
    /// Memory held over time, in GiB-seconds.
    pub gib_seconds: f64,
    /// Bytes its leases reserve now, pool-wide.
    pub memory_reserved: u64,
    /// Its pool-wide memory quota.
    pub memory_quota: Option<u64>,
    /// Devices its leases hold now.
    pub devices_leased: u32,
    /// Its pool-wide device quota.
    pub device_quota: Option<u32>,
}

/// Metering of one tenant on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The tenant.
    pub tenant: String,
    /// The server.
    pub server: String,
    /// Host ordinal.
    pub device: u32,
    /// The device's UUID.
    pub uuid: String,
    /// Busy device time.
    pub gpu_seconds: f64,
    /// Memory held over time.
    pub gib_seconds: f64,
    /// The start of the hour it covers (milliseconds since the epoch); for a
    /// total, when metering of it began.
    pub since_ms: u64,
    /// When it was last added to (milliseconds since the epoch).
    pub updated_ms: u64,
}

/// The pool, as `xpupool status --manager` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool's placement policy.
    pub policy: String,
    /// Every registered server.
    pub servers: Vec<ServerStatus>,
    /// The live leases.
    pub leases: Vec<LeaseStatus>,
    /// The tenants.
    pub tenants: Vec<TenantStatus>,
    /// Per tenant and device.
    pub usage: Vec<UsageRecord>,
    /// Requests waiting.
    pub queued: u32,
}

/// A manager's reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ManagerReply {
    /// To [`ManagerRequest::Register`].
    Registered(Registered),
    /// To a heartbeat.
    HeartbeatAck(HeartbeatAck),
    /// Candidate servers, and whether the pool wants their round trips measured.
    Candidates {
        /// Each server's address and certificate fingerprint.
        servers: Vec<(String, String)>,
        /// Whether the policy uses round trips.
        measure: bool,
    },
    /// A placement.
    Placed(Placement),
    /// Not placed yet; ask again with the same request number.
    Queued(Queued),
    /// A renewed lease.
    Renewed {
        /// Renew again within this.
        renew_ms: u64,
    },
    /// Done.
    Done,
    /// To [`ManagerRequest::Status`].
    Status(PoolStatus),
    /// To [`ManagerRequest::Usage`]: per tenant, device and hour.
    Usage(Vec<UsageRecord>),
}

/// Why a manager refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ManagerError {
    /// The token is not the pool's.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The job cannot be placed, and the request did not ask to wait.
    #[error("cannot place the job: {0}")]
    Unplaceable(String),
    /// The tenant is over its pool-wide quota.
    #[error("over quota: {0}")]
    OverQuota(String),
    /// The server is not (or no longer) registered: register again.
    #[error("unknown server: {0}")]
    UnknownServer(String),
    /// The lease is gone (released, lapsed, preempted or its server died).
    #[error("lease gone: {0}")]
    LeaseGone(String),
    /// The request makes no sense.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The manager could not do it now (its state store failed).
    #[error("manager unavailable: {0}")]
    Unavailable(String),
}

/// A manager's answer to one request.
pub type ManagerResult = Result<ManagerReply, ManagerError>;

const BLOCK: usize = 64;

/// HMAC-SHA-256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| -> [u8; BLOCK] { block.map(|b| b ^ byte) };
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Compares in time independent of where the two differ.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A server key made of `secret` (32 random bytes, say), in hex.
pub fn server_key(secret: &[u8; 32]) -> String {
    hex_encode(secret)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 2 * crate::MAX_HELLO {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl LeaseClaims {
    /// The token a client presents: the claims, MAC'd with the server's key.
    pub fn sign(&self, server_key: &str) -> String {
        let framed = crate::frame::encode(self).expect("claims are small and serialize");
        let body = &framed[4..];
        let mac = hmac_sha256(server_key.as_bytes(), body);
        format!("{LEASE_PREFIX}{}.{}", hex_encode(body), hex_encode(&mac))
    }

    /// The claims of `token` if its MAC is right under `server_key`; `None` for a
    /// token that is not a lease, `Some(Err)` for one that is forged or garbled.
    pub fn verify(token: &str, server_key: &str) -> Option<Result<Self, String>> {
        let rest = token.strip_prefix(LEASE_PREFIX)?;
        Some((|| -> Result<Self, String> {
            let garbled = || "garbled".to_owned();
            let (body, mac) = rest.split_once('.').ok_or_else(garbled)?;
            let body = hex_decode(body).ok_or_else(garbled)?;
            let mac = hex_decode(mac).ok_or_else(garbled)?;
            if !same_bytes(&hmac_sha256(server_key.as_bytes(), &body), &mac) {
                return Err("its MAC is wrong (forged, or for another server)".to_owned());
            }
            crate::frame::decode::<Self>(&body).map_err(|e| format!("claims do not decode: {e}"))
        })())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> LeaseClaims {
        LeaseClaims {
            lease: 7,
            tenant: "team-a".into(),
            server: "10.0.0.1:7800".into(),
            devices: vec![1],
            memory: 8 << 30,
            class: Class::High,
            compute_share: 0.5,
            issued_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex_encode(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex_encode(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_signed_lease_verifies_and_a_changed_one_does_not() {
        let key = server_key(&[7; 32]);
        let token = claims().sign(&key);
        assert_eq!(LeaseClaims::verify(&token, &key), Some(Ok(claims())));
        // Another server's key.
        let other = server_key(&[8; 32]);
        assert!(matches!(LeaseClaims::verify(&token, &other), Some(Err(_))));
        // More memory claimed, same MAC.
        let mut bigger = claims();
        bigger.memory *= 2;
        let forged = format!(
            "{}.{}",
            bigger.sign(&key).split_once('.').unwrap().0,
            token.split_once('.').unwrap().1
        );
        assert!(matches!(LeaseClaims::verify(&forged, &key), Some(Err(_))));
        // Garbage.
        for bad in ["lease:", "lease:zz.zz", "lease:00", "lease:0.0"] {
            assert!(matches!(LeaseClaims::verify(bad, &key), Some(Err(_))));
        }
        assert_eq!(LeaseClaims::verify("plain-token", &key), None);
    }
}
