//! Talking to a pool manager: one request and one reply per QUIC stream, over a
//! connection kept open between calls. Several manager addresses may be given
//! (`XPUPOOL_MANAGER=a:7700,b:7700`); a call that cannot reach one tries the next.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::Mutex;
use xpupool_protocol::frame;
use xpupool_protocol::pool::{
    ManagerReply, ManagerRequest, ManagerResult, MANAGER_ALPN, MAX_MANAGER_FRAME,
};

/// The name in every manager certificate.
pub const MANAGER_NAME: &str = "xpupool-manager";

/// How long one call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the pool's managers.
#[derive(Debug, Clone)]
pub struct ManagerAccess {
    /// `host:port` of each manager, tried in order.
    pub addresses: Vec<String>,
    /// The managers' certificate(s), PEM.
    pub cert: Option<String>,
    /// Or a pinned fingerprint (`sha256:HEX`).
    pub fingerprint: Option<String>,
}

impl ManagerAccess {
    /// From a comma-separated address list and the verification settings;
    /// refuses what could not be verified.
    pub fn new(addresses: &str, cert: Option<String>, fingerprint: Option<String>) -> Result<Self> {
        let addresses: Vec<String> = addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addresses.is_empty() {
            bail!("no manager address given");
        }
        if cert.is_none() && fingerprint.is_none() {
            bail!("set XPUPOOL_MANAGER_CERT (the manager's certificate, --manager-cert) or XPUPOOL_MANAGER_FINGERPRINT to verify the manager");
        }
        Ok(Self {
            addresses,
            cert,
            fingerprint,
        })
    }
}

/// A client of the pool's managers.
pub struct ManagerLink {
    access: ManagerAccess,
    tls: rustls::ClientConfig,
    /// The manager in use: its index in the address list and its connection.
    current: Mutex<(usize, Option<(quinn::Endpoint, quinn::Connection)>)>,
}

impl ManagerLink {
    /// A link to `access`'s managers; nothing is connected until the first call.
    pub fn new(access: ManagerAccess) -> Result<Self> {
        let tls = crate::tls_client_config(
            access.cert.as_deref(),
            access.fingerprint.as_deref(),
            MANAGER_ALPN,
            "XPUPOOL_MANAGER",
        )?;
        Ok(Self {
            access,
            tls,
            current: Mutex::new((0, None)),
        })
    }

    /// The manager in use now.
    pub async fn address(&self) -> String {
        let current = self.current.lock().await;
        self.access.addresses[current.0].clone()
    }

    /// Sends `request` and returns the manager's answer. Tries every manager once,
    /// starting with the one in use; `Err` only when none answered.
    pub async fn call(&self, request: &ManagerRequest) -> Result<ManagerResult> {
        let body = frame::encode(request)?;
        let mut current = self.current.lock().await;
        let count = self.access.addresses.len();
        let mut failures = Vec::new();
        for attempt in 0..count {
            if attempt > 0 {
                current.0 = (current.0 + 1) % count;
                current.1 = None;
            }
            let address = self.access.addresses[current.0].clone();
            let answer = tokio::time::timeout(CALL_TIMEOUT, async {
                if current
                    .1
                    .as_ref()
                    .is_none_or(|(_, c)| c.close_reason().is_some())
                {
                    current.1 =
                        Some(crate::quic_connect(&address, self.tls.clone(), MANAGER_NAME).await?);
                }
                let connection = &current.1.as_ref().expect("just made").1;
                exchange(connection, &body).await
            })
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within {CALL_TIMEOUT:?}")));
            match answer {
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    current.1 = None;
                    failures.push(format!("{address}: {e:#}"));
                }
            }
        }
        bail!("no manager answered ({})", failures.join("; "))
    }

    /// [`Self::call`], with a refusal as an error too.
    pub async fn ask(&self, request: &ManagerRequest) -> Result<ManagerReply> {
        Ok(self.call(request).await??)
    }
}

async fn exchange(connection: &quinn::Connection, body: &[u8]) -> Result<ManagerResult> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(body).await?;
    send.finish()?;
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let len = frame::body_len(prefix)?;
    if len > MAX_MANAGER_FRAME {
        bail!("a reply of {len} bytes, over {MAX_MANAGER_FRAME}");
    }
    let mut reply = vec![0u8; len];
    recv.read_exact(&mut reply).await?;
    frame::decode(&reply).context("the manager's reply")
}

/// The round trip to a pool server, as a QUIC handshake with it takes (the best
/// of two), verifying it by `fingerprint`; `None` if it does not answer within a
/// second.
pub async fn measure_rtt(address: &str, fingerprint: &str) -> Option<f64> {
    let tls = crate::tls_client_config(
        None,
        Some(fingerprint),
        xpupool_protocol::ALPN,
        "XPUPOOL_SERVER",
    )
    .ok()?;
    let mut best: Option<f64> = None;
    for _ in 0..2 {
        let started = Instant::now();
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            crate::quic_connect(address, tls.clone(), crate::SERVER_NAME),
        )
        .await;
        if let Ok(Ok((_endpoint, connection))) = attempt {
            let millis = started.elapsed().as_secs_f64() * 1e3;
            connection.close(0u32.into(), b"measured");
            best = Some(best.map_or(millis, |b| b.min(millis)));
        }
    }
    best
}
