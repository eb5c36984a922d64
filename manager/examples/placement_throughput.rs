//! Placement throughput of one manager: CLIENTS concurrent clients, each placing a
//! 1 GiB job and releasing it again, as fast as the manager answers, for SECONDS,
//! over QUIC on loopback against a pool of SERVERS registered servers of 8
//! devices each. Beside it, in the same run, the manager's cheapest answer (a
//! renewal of a lease that does not exist) as the baseline of the transport.
//!
//!   cargo run --release -p xpupool-manager --example placement_throughput -- \
//!       [--clients 16] [--seconds 5] [--servers 64] [--etcd http://127.0.0.1:2379]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use xpupool_client::pool::{ManagerAccess, ManagerLink};
use xpupool_manager::pool::{PolicyKind, TenantRule, Timing};
use xpupool_manager::store::Store;
use xpupool_manager::{BoundManager, ManagerConfig};
use xpupool_protocol::pool::{
    Class, ManagerError, ManagerReply, ManagerRequest, PoolDevice, Requirements, ServerDescription,
    ServerReport,
};

const TOKEN: &str = "benchmark-tenant-token-0123456789";
const JOIN: &str = "benchmark-join-token-0123456789";

struct Options {
    clients: usize,
    seconds: f64,
    servers: usize,
    etcd: Option<String>,
}

fn options() -> Result<Options> {
    let mut o = Options {
        clients: 16,
        seconds: 5.0,
        servers: 64,
        etcd: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--clients" => o.clients = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--servers" => o.servers = value()?.parse()?,
            "--etcd" => o.etcd = Some(value()?),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// Runs `clients` loops of `one` for `seconds`; calls per second.
async fn rate<F, Fut>(clients: &[Arc<ManagerLink>], seconds: f64, one: F) -> Result<f64>
where
    F: Fn(Arc<ManagerLink>, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, link) in clients.iter().enumerate() {
        let (link, done, one) = (link.clone(), done.clone(), one.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                one(link.clone(), (i as u64) << 32 | n).await?;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let o = options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = std::env::temp_dir().join(format!("xpupool-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let identity = xpupool_server::tls::load_or_create_as(
            &dir,
            "manager",
            xpupool_client::pool::MANAGER_NAME,
        )?;
        let cert = identity.cert_path.display().to_string();
        let store = match &o.etcd {
            Some(url) => Store::etcd(url, &format!("/xpupool-bench-{}", std::process::id())).await?,
            None => Store::memory(),
        };
        let bound = BoundManager::bind(ManagerConfig {
            listen: "127.0.0.1:0".parse()?,
            identity,
            join_token: JOIN.into(),
            operator_token: "benchmark-operator".into(),
            tenants: vec![(
                TOKEN.into(),
                TenantRule {
                    name: "bench".into(),
                    memory_quota: None,
                    device_quota: None,
                    class: Class::Normal,
                    compute_share: 1.0,
                    policy: None,
                },
            )],
            policy: PolicyKind::LeastLoaded,
            timing: Timing::default(),
            store,
        })?;
        let address = bound.local_addr()?.to_string();
        tokio::spawn(bound.serve());
        let access = ManagerAccess::new(&address, Some(cert), None)?;
        let admin = ManagerLink::new(access.clone())?;
        let mut keys = Vec::new();
        for s in 0..o.servers {
            let registered = admin
                .ask(&ManagerRequest::Register {
                    join_token: JOIN.into(),
                    server: ServerDescription {
                        address: format!("10.0.{}.{}:7800", s / 250, s % 250),
                        fingerprint: "sha256:00".into(),
                        backend: "mock".into(),
                        devices: (0..8)
                            .map(|d| PoolDevice {
                                name: "bench GPU".into(),
                                uuid: format!("GPU-{s}-{d}"),
                                memory: 80 << 30,
                                sms: 132,
                                compute_capability: (9, 0),
                            })
                            .collect(),
                        instance: 1,
                    },
                    key: None,
                })
                .await?;
            match registered {
                ManagerReply::Registered(r) => keys.push(r.server_key),
                other => anyhow::bail!("registration answered with {other:?}"),
            }
        }
        // Keep the servers alive while the benchmark runs.
        let beats = {
            let link = Arc::new(ManagerLink::new(access.clone())?);
            let servers = o.servers;
            tokio::spawn(async move {
                loop {
                    for (s, key) in keys.iter().enumerate().take(servers) {
                        let server = format!("10.0.{}.{}:7800", s / 250, s % 250);
                        let key = key.clone();
                        let _ = link
                            .call(&ManagerRequest::Heartbeat {
                                server,
                                key,
                                instance: 1,
                                report: ServerReport::default(),
                            })
                            .await;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            })
        };
        let clients: Vec<Arc<ManagerLink>> = (0..o.clients)
            .map(|_| ManagerLink::new(access.clone()).map(Arc::new))
            .collect::<Result<_>>()?;
        let baseline = rate(&clients, o.seconds, |link, n| async move {
            match link
                .call(&ManagerRequest::Renew {
                    token: TOKEN.into(),
                    lease: u64::MAX - n,
                })
                .await?
            {
                Err(ManagerError::LeaseGone(_)) => Ok(()),
                other => bail!("a renewal of no lease answered {other:?}"),
            }
        })
        .await?;
        let placements = rate(&clients, o.seconds, |link, n| async move {
            let placed = link
                .ask(&ManagerRequest::Place {
                    token: TOKEN.into(),
                    need: Requirements {
                        memory: 1 << 30,
                        devices: 1,
                        backend: None,
                        kind: None,
                    },
                    rtts: Vec::new(),
                    wait: false,
                    request: n,
                })
                .await?;
            let ManagerReply::Placed(p) = placed else {
                bail!("not placed: {placed:?}");
            };
            link.ask(&ManagerRequest::Release {
                token: TOKEN.into(),
                lease: p.claims.lease,
            })
            .await?;
            Ok(())
        })
        .await?;
        beats.abort();
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "state: {}; {} servers of 8 devices; {} clients; {:.0} s each",
            if o.etcd.is_some() { "etcd" } else { "memory" },
            o.servers,
            o.clients,
            o.seconds
        );
        println!("baseline (renewal of no lease): {baseline:.0} requests/s");
        println!(
            "placement + release:            {placements:.0} jobs/s ({:.0} requests/s, {:.2} of the baseline's request rate)",
            2.0 * placements,
            2.0 * placements / baseline
        );
        anyhow::Ok(())
    })
}
