//! The manager's Prometheus endpoint: the pool as the last reaper pass saw it
//! (servers, devices, leases, metering), and this process's placement counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::service::Manager;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    server: String,
    device: String,
    uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabels {
    tenant: String,
    server: String,
    device: String,
    uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The metrics text now.
pub fn render(manager: &Arc<Manager>) -> String {
    let mut registry = Registry::with_prefix("xpupool_pool");
    let alive = Family::<ServerLabels, Gauge>::default();
    let sessions = Family::<ServerLabels, Gauge>::default();
    let total = Family::<DeviceLabels, Gauge>::default();
    let reserved = Family::<DeviceLabels, Gauge>::default();
    let used = Family::<DeviceLabels, Gauge>::default();
    let utilization = Family::<DeviceLabels, FloatGauge>::default();
    let power = Family::<DeviceLabels, FloatGauge>::default();
    let gpu_seconds = Family::<UsageLabels, FloatCounter>::default();
    let gib_seconds = Family::<UsageLabels, FloatCounter>::default();
    let leases = Family::<TenantLabels, Gauge>::default();
    let tenant_reserved = Family::<TenantLabels, Gauge>::default();
    let requests = Family::<OutcomeLabels, Counter>::default();
    let queued = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    if let Some(status) = manager.last_status() {
        for server in &status.servers {
            let labels = ServerLabels {
                server: server.address.clone(),
            };
            alive.get_or_create(&labels).set(server.alive as i64);
            sessions.get_or_create(&labels).set(server.sessions as i64);
            for d in &server.devices {
                let labels = DeviceLabels {
                    server: server.address.clone(),
                    device: d.index.to_string(),
                    uuid: d.device.uuid.clone(),
                };
                total.get_or_create(&labels).set(clamp(d.device.memory));
                reserved.get_or_create(&labels).set(clamp(d.reserved));
                used.get_or_create(&labels).set(clamp(d.report.memory_used));
                utilization.get_or_create(&labels).set(d.report.utilization);
                if let Some(watts) = d.report.power_watts {
                    power.get_or_create(&labels).set(watts);
                }
            }
        }
        for u in &status.usage {
            let labels = UsageLabels {
                tenant: u.tenant.clone(),
                server: u.server.clone(),
                device: u.device.to_string(),
                uuid: u.uuid.clone(),
            };
            gpu_seconds.get_or_create(&labels).inc_by(u.gpu_seconds);
            gib_seconds.get_or_create(&labels).inc_by(u.gib_seconds);
        }
        for t in &status.tenants {
            let labels = TenantLabels {
                tenant: t.name.clone(),
            };
            tenant_reserved
                .get_or_create(&labels)
                .set(clamp(t.memory_reserved));
            leases
                .get_or_create(&labels)
                .set(status.leases.iter().filter(|l| l.tenant == t.name).count() as i64);
        }
        queued.set(status.queued as i64);
    }
    let counters = &manager.counters;
    for (outcome, counter) in [
        ("placed", &counters.placed),
        ("queued", &counters.queued),
        ("refused", &counters.refused),
        ("reclaimed", &counters.reclaimed),
    ] {
        requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc_by(counter.load(Ordering::Relaxed));
    }
    registry.register(
        "server_alive",
        "Whether the server heart-beat within the TTL",
        alive,
    );
    registry.register("server_sessions", "Sessions open on the server", sessions);
    registry.register("device_memory_total_bytes", "The device's memory", total);
    registry.register(
        "device_memory_reserved_bytes",
        "Device memory the leases on the device reserve",
        reserved,
    );
    registry.register(
        "device_memory_used_bytes",
        "Device memory in use, as the server last reported it",
        used,
    );
    registry.register(
        "device_utilization_ratio",
        "Fraction of time the device ran kernels, as the server last reported it",
        utilization,
    );
    registry.register(
        "device_power_watts",
        "Power the device draws, where reported",
        power,
    );
    registry.register(
        "tenant_gpu_seconds",
        "Measured busy device time of the tenant's kernels",
        gpu_seconds,
    );
    registry.register(
        "tenant_gib_seconds",
        "Device memory the tenant held over time, in GiB-seconds",
        gib_seconds,
    );
    registry.register("tenant_leases", "Live leases of the tenant", leases);
    registry.register(
        "tenant_memory_reserved_bytes",
        "Device memory the tenant's leases reserve, pool-wide",
        tenant_reserved,
    );
    registry.register(
        "placement_requests",
        "Placement requests this manager answered, by outcome; reclaimed counts leases taken back by a TTL",
        requests,
    );
    registry.register("queued_requests", "Requests waiting for capacity", queued);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// Binds `listen` and serves the metrics there; the bound address.
pub async fn start(
    manager: Arc<Manager>,
    listen: std::net::SocketAddr,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(xpupool_server::metrics::serve_http(
        listener,
        Arc::new(move || render(&manager)),
    ));
    Ok(bound)
}
