//! The operator's view: a Prometheus endpoint (`metrics_listen`) with per-tenant
//! and per-device figures, made afresh from the tenancy layer at each scrape.
//!
//! Names follow Prometheus' conventions (base units, `_total` on counters, `_ratio`
//! for fractions); labels are `tenant`, `device` (the host's ordinal) and `uuid`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::Tenants;
use crate::tenancy::Host;
use xpupool_protocol::gpu_uuid_text;

/// The most scrapes served at once; more wait for a place.
const MAX_SCRAPERS: usize = 8;
/// A scraper's request: at most this many bytes, within this long.
const MAX_REQUEST: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
    device: String,
    uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
    uuid: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// Makes the metrics text of a host and its tenants.
#[derive(Clone)]
pub struct Exporter {
    host: Arc<Host>,
    tenants: Tenants,
}

impl Exporter {
    /// An exporter of `host`'s devices and `tenants`' figures.
    pub fn new(host: Arc<Host>, tenants: Tenants) -> Self {
        Self { host, tenants }
    }

    /// What the tenants' ledgers hold on `device`, together.
    fn ledger_sum(&self, device: u32) -> u64 {
        self.tenants
            .all()
            .iter()
            .flat_map(|t| self.host.figures(t))
            .filter(|f| f.device == device)
            .map(|f| f.memory_used)
            .sum()
    }

    /// What the backend measures on `device` less what the ledgers hold. A
    /// session charges its ledger before it allocates and refunds it after it
    /// frees, so a reading between the two would show as drift: where the two
    /// differ, they are read again (up to 20 times, a millisecond apart) until
    /// neither has moved since the last reading.
    fn settled_drift(&self, device: u32, mut ledger: u64, mut measured: u64) -> i64 {
        if measured == ledger {
            return 0;
        }
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(1));
            let now = (
                self.ledger_sum(device),
                self.host.memory_used(device).unwrap_or(measured),
            );
            if now == (ledger, measured) {
                break;
            }
            (ledger, measured) = now;
        }
        measured as i64 - ledger as i64
    }

    /// The metrics now, in the OpenMetrics text format Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("xpupool");
        let memory_used = Family::<TenantLabels, Gauge>::default();
        let memory_limit = Family::<TenantLabels, Gauge>::default();
        let busy = Family::<TenantLabels, FloatCounter>::default();
        let throttled = Family::<TenantLabels, FloatCounter>::default();
        let launches = Family::<TenantLabels, Counter>::default();
        let oom = Family::<TenantLabels, Counter>::default();
        let sessions = Family::<TenantLabels, Gauge>::default();
        let device_used = Family::<DeviceLabels, Gauge>::default();
        let device_total = Family::<DeviceLabels, Gauge>::default();
        let utilization = Family::<DeviceLabels, FloatGauge>::default();
        let power = Family::<DeviceLabels, FloatGauge>::default();
        let drift = Family::<DeviceLabels, Gauge>::default();

        let devices = self.host.devices();
        let mut ledger_sum = vec![0u64; devices.len()];
        for tenant in self.tenants.all() {
            for f in self.host.figures(&tenant) {
                let info = &devices[f.device as usize];
                let labels = TenantLabels {
                    tenant: tenant.name.clone(),
                    device: f.device.to_string(),
                    uuid: gpu_uuid_text(&info.uuid),
                };
                ledger_sum[f.device as usize] += f.memory_used;
                // A tenant may be here more than once (one per lease): add up.
                memory_used
                    .get_or_create(&labels)
                    .inc_by(clamp(f.memory_used));
                memory_limit.get_or_create(&labels).set(clamp(
                    f.memory_limit
                        .unwrap_or(info.total_memory)
                        .min(info.total_memory),
                ));
                busy.get_or_create(&labels).inc_by(f.busy_seconds);
                throttled.get_or_create(&labels).inc_by(f.throttled_seconds);
                launches.get_or_create(&labels).inc_by(f.kernel_launches);
                oom.get_or_create(&labels).inc_by(f.oom);
                sessions
                    .get_or_create(&labels)
                    .inc_by(tenant.sessions() as i64);
            }
        }
        for (device, info) in devices.iter().enumerate() {
            let labels = DeviceLabels {
                device: device.to_string(),
                uuid: gpu_uuid_text(&info.uuid),
            };
            let figures = self.host.device_figures(device as u32, ledger_sum[device]);
            device_used
                .get_or_create(&labels)
                .set(clamp(figures.memory_used));
            device_total
                .get_or_create(&labels)
                .set(clamp(info.total_memory));
            utilization.get_or_create(&labels).set(figures.utilization);
            if let Some(watts) = self.host.power_watts(device as u32) {
                power.get_or_create(&labels).set(watts);
            }
            if let Some(measured) = self.host.memory_used(device as u32) {
                drift.get_or_create(&labels).set(self.settled_drift(
                    device as u32,
                    ledger_sum[device],
                    measured,
                ));
            }
        }

        if let Some(pool) = self.tenants.pool() {
            let busy = Family::<TenantLabels, FloatCounter>::default();
            let held = Family::<TenantLabels, FloatCounter>::default();
            for m in pool.meters(&self.host) {
                let labels = TenantLabels {
                    tenant: m.tenant,
                    device: m.device.to_string(),
                    uuid: gpu_uuid_text(&devices[m.device as usize].uuid),
                };
                busy.get_or_create(&labels).inc_by(m.busy_seconds);
                held.get_or_create(&labels).inc_by(m.byte_seconds);
            }
            registry.register(
                "metered_busy_seconds",
                "Device time of the pool tenant's kernels on this server since it started, as its manager is told",
                busy,
            );
            registry.register(
                "metered_memory_byte_seconds",
                "Device memory the pool tenant held on this server over time since it started, as its manager is told",
                held,
            );
        }
        registry.register(
            "tenant_memory_used_bytes",
            "Device memory the tenant holds on the device, as its ledger charges it",
            memory_used,
        );
        registry.register(
            "tenant_memory_limit_bytes",
            "Device memory the tenant may hold on the device",
            memory_limit,
        );
        registry.register(
            "tenant_busy_seconds",
            "Device time the tenant's kernels took",
            busy,
        );
        registry.register(
            "tenant_throttled_seconds",
            "Time the tenant's launches waited while the device ran other tenants' work",
            throttled,
        );
        registry.register(
            "tenant_kernel_launches",
            "Kernel launches of the tenant",
            launches,
        );
        registry.register(
            "tenant_oom",
            "Allocations refused for the tenant's memory limit",
            oom,
        );
        registry.register("tenant_sessions", "Sessions the tenant has open", sessions);
        registry.register(
            "device_memory_used_bytes",
            "Device memory in use, all tenants",
            device_used,
        );
        registry.register(
            "device_memory_total_bytes",
            "The device's memory",
            device_total,
        );
        registry.register(
            "device_utilization_ratio",
            "Fraction of the last second the device ran kernels",
            utilization,
        );
        registry.register(
            "device_power_watts",
            "What the device draws now, where the backend measures it (cuda: NVML)",
            power,
        );
        registry.register(
            "admission_seconds",
            "Time from a client's hello to its session being open",
            self.host.admission.clone(),
        );
        registry.register(
            "accounting_drift_bytes",
            "Device memory in use as the backend measures it, less what the tenants' ledgers hold",
            drift,
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Serves `GET /metrics` on `listener` until the runtime stops.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        serve_http(listener, Arc::new(move || self.render())).await
    }
}

/// What makes a scrape's text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` with what `render` makes, until the
/// runtime stops. A scraper gets [`REQUEST_TIMEOUT`] and [`MAX_REQUEST`] bytes for
/// its request, and at most [`MAX_SCRAPERS`] are served at once.
pub async fn serve_http(listener: tokio::net::TcpListener, render: Render) {
    {
        let places = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
        loop {
            let Ok(place) = places.clone().acquire_owned().await else {
                return;
            };
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("metrics endpoint: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let render = render.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &render).await {
                    tracing::debug!(%remote, "metrics request: {e}");
                }
                drop(place);
            });
        }
    }
}

async fn answer(mut stream: tokio::net::TcpStream, render: &Render) -> std::io::Result<()> {
    {
        let mut request = Vec::with_capacity(512);
        let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                if request.len() >= MAX_REQUEST {
                    return Err(std::io::Error::other("request too large"));
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                request.extend_from_slice(&chunk[..n]);
            }
            Ok(())
        })
        .await;
        match read {
            Ok(result) => result?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
            ("GET", "/metrics") => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(),
            ),
            ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
            _ => (
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n".to_owned(),
            ),
        };
        let mut head = String::new();
        let _ = write!(
            head,
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    }
}

/// Binds `listen` and serves the metrics there on the current runtime; the bound
/// address is returned.
pub async fn start(
    host: Arc<Host>,
    tenants: Tenants,
    listen: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(Exporter::new(host, tenants).serve(listener));
    Ok(bound)
}

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
