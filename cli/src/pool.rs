//! The pool side of the command: `xpupool manager`, `xpupool run` through a
//! manager (placement, lease renewal, release), and `xpupool status --manager`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use xpupool_client::pool::{measure_rtt, ManagerAccess, ManagerLink, MANAGER_NAME};
use xpupool_manager::config::ManagerSettings;
use xpupool_manager::pool::{PolicyKind, TenantRule, Timing};
use xpupool_manager::store::Store;
use xpupool_manager::{BoundManager, ManagerConfig};
use xpupool_protocol::pool::{
    Class, ManagerError, ManagerReply, ManagerRequest, Placement, PoolStatus, Requirements, Rtt,
    UsageRecord, MAX_USAGE_PAGE,
};
use xpupool_server::tls;

/// How a client or server reaches the pool's managers.
#[derive(Args, Clone)]
pub(crate) struct ManagerFlags {
    /// The pool manager(s), host:port, comma-separated; the job is placed by it
    /// instead of naming a server.
    #[arg(long, env = "XPUPOOL_MANAGER")]
    pub(crate) manager: Option<String>,
    /// The manager's certificate (PEM; its state directory's manager-cert.pem).
    #[arg(long, env = "XPUPOOL_MANAGER_CERT")]
    pub(crate) manager_cert: Option<PathBuf>,
    /// The manager certificate's pinned fingerprint (sha256:HEX), instead of --manager-cert.
    #[arg(long, env = "XPUPOOL_MANAGER_FINGERPRINT")]
    pub(crate) manager_fingerprint: Option<String>,
}

impl ManagerFlags {
    pub(crate) fn access(&self) -> Result<Option<ManagerAccess>> {
        let Some(addresses) = &self.manager else {
            return Ok(None);
        };
        let cert = self
            .manager_cert
            .as_ref()
            .map(|p| {
                p.canonicalize()
                    .with_context(|| format!("--manager-cert {}", p.display()))
                    .map(|p| p.display().to_string())
            })
            .transpose()?;
        Ok(Some(ManagerAccess::new(
            addresses,
            cert,
            self.manager_fingerprint.clone(),
        )?))
    }
}

/// What a job asks of the pool (`xpupool run` with a manager).
#[derive(Args)]
pub(crate) struct JobNeeds {
    /// Device memory the job needs on each device (e.g. 8GiB); with a manager,
    /// the lease's memory and the limit the server enforces.
    #[arg(long, value_parser = xpupool_server::parse_size)]
    pub(crate) memory: Option<u64>,
    /// Devices the job needs, all on one server.
    #[arg(long, default_value_t = 1)]
    pub(crate) devices: u32,
    /// Only devices whose name contains this (e.g. H200).
    #[arg(long)]
    pub(crate) device_kind: Option<String>,
    /// Only servers with this backend (cuda, mock).
    #[arg(long)]
    pub(crate) server_backend: Option<String>,
    /// Wait in the manager's queue when the job cannot be placed now, instead of failing.
    #[arg(long)]
    pub(crate) wait: bool,
}

#[derive(Args)]
pub(crate) struct ManagerArgs {
    /// The pool's policy and tenants (TOML; README: "A pool of many servers").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (UDP, QUIC). Default: the config's, else 127.0.0.1:7700.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where manager-cert.pem, its key, the join token and the pool secret are
    /// kept (made on first start).
    #[arg(long, env = "XPUPOOL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep the pool's state in etcd (comma-separated endpoint URLs), so several
    /// managers serve one pool and a restart loses nothing.
    #[arg(long)]
    etcd: Option<String>,
    /// The key prefix of the pool in etcd.
    #[arg(long, default_value = "/xpupool")]
    etcd_prefix: String,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// The placement policy (overrides the config's).
    #[arg(long, value_parser = PolicyKind::NAMES.to_vec())]
    policy: Option<String>,
    /// A server silent this many seconds leaves placement and its leases are
    /// reclaimed (default: the config's, else 10).
    #[arg(long)]
    server_ttl: Option<u64>,
    /// Servers heart-beat this often, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u64,
}

/// `xpupool manager`.
pub(crate) fn manager(args: ManagerArgs) -> Result<ExitCode> {
    crate::init_logging("info");
    let dir = crate::state_dir(args.state_dir.clone())?;
    let settings = args
        .config
        .as_ref()
        .map(|path| ManagerSettings::load(path).map_err(anyhow::Error::msg))
        .transpose()?;
    let identity = tls::load_or_create_as(&dir, "manager", MANAGER_NAME)?;
    let mut tenants = settings
        .as_ref()
        .map(|s| s.tenants.clone())
        .unwrap_or_default();
    let mut token_file = None;
    if tenants.is_empty() {
        let path = dir.join("token");
        let token = tls::load_or_create_secret(&path)?;
        tenants.push((
            token,
            TenantRule {
                name: "default".into(),
                memory_quota: None,
                device_quota: None,
                class: Class::Normal,
                compute_share: 1.0,
                policy: None,
            },
        ));
        token_file = Some(path);
    }
    let policy = match &args.policy {
        Some(name) => PolicyKind::parse(name).expect("clap checked it"),
        None => settings
            .as_ref()
            .map_or(PolicyKind::LeastLoaded, |s| s.policy),
    };
    let ttl = args
        .server_ttl
        .or(settings.as_ref().and_then(|s| s.server_ttl_seconds))
        .unwrap_or(10);
    if !(1..=3600).contains(&ttl) || !(100..=60_000).contains(&args.heartbeat_ms) {
        bail!("--server-ttl must be 1 to 3600 seconds and --heartbeat-ms 100 to 60000");
    }
    if args.heartbeat_ms >= ttl * 1000 {
        bail!("--heartbeat-ms must be well under the server TTL");
    }
    let timing = Timing {
        server_ttl_ms: ttl * 1000,
        heartbeat_ms: args.heartbeat_ms,
        ..Timing::default()
    };
    let listen = args
        .listen
        .or(settings.as_ref().and_then(|s| s.listen))
        .unwrap_or_else(|| "127.0.0.1:7700".parse().expect("literal address"));
    let metrics_listen = args
        .metrics_listen
        .or(settings.as_ref().and_then(|s| s.metrics_listen));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = match &args.etcd {
            Some(endpoints) => Store::etcd(endpoints, &args.etcd_prefix).await?,
            None => Store::memory(),
        };
        // With etcd, the first manager's secrets are every manager's; the state
        // directory keeps a copy (written only when it differs, so a read-only
        // mount of the right files works).
        let mut shared = Vec::new();
        for name in ["join-token", "operator-token"] {
            let path = dir.join(name);
            let local = tls::load_or_create_secret(&path)?;
            let value = store.shared_value(name, &local).await?;
            if value != local {
                tls::write_private(&path, value.as_bytes())?;
            }
            shared.push(value);
        }
        let operator_token = shared.pop().expect("two values");
        let join_token = shared.pop().expect("two values");
        let join_path = dir.join("join-token");
        let operator_path = dir.join("operator-token");
        let cert_path = identity.cert_path.clone();
        let fingerprint = identity.fingerprint();
        let etcd = store.is_etcd();
        let bound = BoundManager::bind(ManagerConfig {
            listen,
            identity,
            join_token,
            operator_token,
            tenants,
            policy,
            timing,
            store,
        })?;
        println!("listening: {}", bound.local_addr()?);
        println!("certificate: {}", cert_path.display());
        println!("fingerprint: {fingerprint}");
        println!("join token file: {}", join_path.display());
        println!("operator token file: {}", operator_path.display());
        println!("policy: {}", policy.name());
        println!(
            "state: {}",
            if etcd {
                format!("etcd {}", args.etcd.as_deref().unwrap_or(""))
            } else {
                "in memory".to_owned()
            }
        );
        if let Some(path) = token_file {
            println!("tenant token file: {} (tenant default)", path.display());
        }
        if let Some(listen) = metrics_listen {
            let at = xpupool_manager::metrics::start(bound.manager(), listen).await?;
            println!("metrics: http://{at}/metrics");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = bound.serve() => {}
            _ = tokio::signal::ctrl_c() => eprintln!("xpupool: shutting down"),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A job's lease, kept while the program runs and given back after.
pub(crate) struct Lease {
    runtime: tokio::runtime::Runtime,
    link: Arc<ManagerLink>,
    token: String,
    placement: Placement,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Asks the manager for a place for the job (measuring round trips to the
    /// candidates when the pool's policy wants them), waiting in its queue if
    /// `needs.wait`.
    pub(crate) fn obtain(access: ManagerAccess, token: String, needs: &JobNeeds) -> Result<Self> {
        let memory = needs.memory.context(
            "with a manager, say how much device memory the job needs: xpupool run --memory SIZE",
        )?;
        let need = Requirements {
            memory,
            devices: needs.devices,
            backend: needs.server_backend.clone(),
            kind: needs.device_kind.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let link = Arc::new(ManagerLink::new(access)?);
        let wait = needs.wait;
        let placement = runtime.block_on(place(&link, &token, need, wait))?;
        let renewer = runtime.spawn(renew(link.clone(), token.clone(), placement.clone()));
        Ok(Self {
            runtime,
            link,
            token,
            placement,
            renewer,
        })
    }

    /// Where the job goes and what it presents there.
    pub(crate) fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Gives the lease back.
    pub(crate) fn release(self) {
        self.renewer.abort();
        let request = ManagerRequest::Release {
            token: self.token.clone(),
            lease: self.placement.claims.lease,
        };
        match self.runtime.block_on(self.link.call(&request)) {
            Ok(Ok(_)) | Ok(Err(ManagerError::LeaseGone(_))) => {}
            Ok(Err(e)) => eprintln!("xpupool: releasing the lease: {e}"),
            Err(e) => eprintln!("xpupool: releasing the lease (it lapses by itself): {e:#}"),
        }
    }
}

async fn place(
    link: &ManagerLink,
    token: &str,
    need: Requirements,
    wait: bool,
) -> Result<Placement> {
    let candidates = link
        .ask(&ManagerRequest::Candidates {
            token: token.to_owned(),
            need: need.clone(),
        })
        .await?;
    let mut rtts = Vec::new();
    if let ManagerReply::Candidates {
        servers,
        measure: true,
    } = candidates
    {
        for (server, fingerprint) in servers.into_iter().take(64) {
            if let Some(millis) = measure_rtt(&server, &fingerprint).await {
                tracing::debug!(%server, millis, "round trip");
                rtts.push(Rtt { server, millis });
            }
        }
    }
    let request: u64 = rand::random();
    let mut last_position = 0;
    loop {
        let answer = link
            .ask(&ManagerRequest::Place {
                token: token.to_owned(),
                need: need.clone(),
                rtts: rtts.clone(),
                wait,
                request,
            })
            .await?;
        match answer {
            ManagerReply::Placed(placement) => return Ok(placement),
            ManagerReply::Queued(queued) => {
                if queued.position != last_position {
                    eprintln!(
                        "xpupool: waiting for capacity, position {} in the queue ({})",
                        queued.position, queued.reason
                    );
                    last_position = queued.position;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => bail!("the manager answered a placement with {other:?}"),
        }
    }
}

async fn renew(link: Arc<ManagerLink>, token: String, placement: Placement) {
    let mut every = Duration::from_millis(placement.renew_ms.max(200));
    loop {
        tokio::time::sleep(every).await;
        let request = ManagerRequest::Renew {
            token: token.clone(),
            lease: placement.claims.lease,
        };
        match link.call(&request).await {
            Ok(Ok(ManagerReply::Renewed { renew_ms })) => {
                every = Duration::from_millis(renew_ms.max(200))
            }
            Ok(Err(ManagerError::LeaseGone(why))) => {
                eprintln!("xpupool: the job's lease is gone ({why}); sessions it opened carry on, new ones will be refused");
                return;
            }
            Ok(other) => tracing::warn!("renewing the lease: {other:?}"),
            Err(e) => tracing::warn!("renewing the lease: {e:#}"),
        }
    }
}

#[derive(Args)]
pub(crate) struct PoolStatusArgs {
    /// Per tenant, server, device and hour, as CSV (for billing), from --since on.
    #[arg(long)]
    pub(crate) usage: bool,
    /// With --usage: from this time on; an RFC 3339 UTC time
    /// (2026-12-01T00:00:00Z), a date (2026-12-01), or an age (24h, 7d, 90m).
    #[arg(long, requires = "usage")]
    pub(crate) since: Option<String>,
    /// The pool's operator token file (the manager's state directory has it),
    /// to see every tenant, instead of a tenant token.
    #[arg(long)]
    pub(crate) operator_token_file: Option<PathBuf>,
}

/// Parses `--since`: an age (`24h`, `7d`, `90m`, `30s`), a date or an RFC 3339
/// UTC time; milliseconds since the epoch.
pub(crate) fn parse_since(text: &str, now_ms: u64) -> Result<u64> {
    let text = text.trim();
    if let Some(unit) = text.chars().last().filter(char::is_ascii_alphabetic) {
        if let Ok(n) = text[..text.len() - 1].parse::<u64>() {
            let ms = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                _ => bail!("--since {text}: the unit is s, m, h or d"),
            };
            return Ok(now_ms.saturating_sub(n.saturating_mul(ms)));
        }
    }
    let (date, time) = text
        .trim_end_matches('Z')
        .split_once('T')
        .unwrap_or((text, "00:00:00"));
    let number = |s: &str| -> Result<i64> {
        s.parse().with_context(|| {
            format!("--since {text}: not YYYY-MM-DD[THH:MM:SSZ] or an age like 24h")
        })
    };
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 {
        bail!("--since {text}: not YYYY-MM-DD[THH:MM:SSZ] or an age like 24h");
    }
    let (y, m, day) = (number(d[0])?, number(d[1])?, number(d[2])?);
    let (hh, mm, ss) = (number(t[0])?, number(t[1])?, number(t[2])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        bail!("--since {text}: not a valid time");
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    u64::try_from(seconds * 1000).context("--since before 1970")
}

/// `xpupool status --manager`.
pub(crate) fn status(
    access: ManagerAccess,
    token: String,
    args: &PoolStatusArgs,
    json: bool,
) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let link = ManagerLink::new(access)?;
    if args.usage {
        let now = xpupool_manager::store::now_ms();
        let since_ms = match &args.since {
            Some(text) => parse_since(text, now)?,
            None => 0,
        };
        // Page by page: a month of a large pool is more than one answer holds.
        let mut records: Vec<UsageRecord> = Vec::new();
        loop {
            let after = records
                .last()
                .map(|u| (u.since_ms, u.tenant.clone(), u.server.clone(), u.device));
            let reply = runtime.block_on(link.ask(&ManagerRequest::Usage {
                token: token.clone(),
                since_ms,
                after,
            }))?;
            let ManagerReply::Usage(page) = reply else {
                bail!("the manager answered with {reply:?}");
            };
            let full = page.len() >= MAX_USAGE_PAGE;
            records.extend(page);
            if !full {
                break;
            }
        }
        print!("{}", usage_csv(&records));
        return Ok(ExitCode::SUCCESS);
    }
    let reply = runtime.block_on(link.ask(&ManagerRequest::Status { token }))?;
    let ManagerReply::Status(status) = reply else {
        bail!("the manager answered with {reply:?}");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status_table(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(ms: u64) -> String {
    let seconds = (ms / 1000) as i64;
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Hourly metering as CSV, oldest first.
pub(crate) fn usage_csv(records: &[UsageRecord]) -> String {
    use std::fmt::Write as _;
    let mut rows: Vec<&UsageRecord> = records.iter().collect();
    rows.sort_by(|a, b| {
        (a.since_ms, &a.tenant, &a.server, a.device)
            .cmp(&(b.since_ms, &b.tenant, &b.server, b.device))
    });
    let mut out = String::from("hour_start,tenant,server,device,uuid,gpu_seconds,gib_seconds\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.3},{:.3}",
            rfc3339(r.since_ms),
            r.tenant,
            r.server,
            r.device,
            r.uuid,
            r.gpu_seconds,
            r.gib_seconds
        );
    }
    out
}

/// The pool for someone at a terminal.
pub(crate) fn status_table(status: &PoolStatus) -> String {
    use std::fmt::Write as _;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut out = String::new();
    let alive = status.servers.iter().filter(|s| s.alive).count();
    let _ = writeln!(
        out,
        "pool: {} server{} ({alive} alive), {} lease{}, {} queued, policy {}\n",
        status.servers.len(),
        if status.servers.len() == 1 { "" } else { "s" },
        status.leases.len(),
        if status.leases.len() == 1 { "" } else { "s" },
        status.queued,
        status.policy
    );
    let _ = writeln!(
        out,
        "{:<22} {:<7} {:<5} {:<4} {:<36} {:>9} {:>9} {:>9} {:>5} {:>6}",
        "SERVER",
        "BACKEND",
        "ALIVE",
        "DEV",
        "NAME",
        "RESV GiB",
        "USED GiB",
        "TOTAL GiB",
        "UTIL",
        "LEASES"
    );
    for s in &status.servers {
        for (i, d) in s.devices.iter().enumerate() {
            let (server, backend, alive) = if i == 0 {
                (
                    s.address.as_str(),
                    s.backend.as_str(),
                    if s.alive { "yes" } else { "NO" },
                )
            } else {
                ("", "", "")
            };
            let _ = writeln!(
                out,
                "{:<22} {:<7} {:<5} {:<4} {:<36} {:>9.2} {:>9.2} {:>9.2} {:>4.0}% {:>6}",
                server,
                backend,
                alive,
                d.index,
                d.device.name,
                gib(d.reserved),
                gib(d.report.memory_used),
                gib(d.device.memory),
                d.report.utilization * 100.0,
                d.leases
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<14} {:<22} {:<8} {:>9} {:<7} {:>8}",
        "LEASE", "TENANT", "SERVER", "DEVICES", "GiB", "CLASS", "AGE s"
    );
    for l in &status.leases {
        let devices: Vec<String> = l.devices.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "{:<12} {:<14} {:<22} {:<8} {:>9.2} {:<7} {:>8.0}{}",
            l.lease,
            l.tenant,
            l.server,
            devices.join(","),
            gib(l.memory_bytes),
            l.class.name(),
            l.age_seconds,
            if l.started { "" } else { "  (not started)" }
        );
    }
    let _ = writeln!(
        out,
        "\n{:<14} {:>12} {:>12} {:>16} {:>10}",
        "TENANT", "GPU s", "GiB·s", "RESV / QUOTA GiB", "DEVICES"
    );
    for t in &status.tenants {
        let quota = t
            .memory_quota
            .map_or_else(|| "-".to_owned(), |q| format!("{:.1}", gib(q)));
        let devices = t
            .device_quota
            .map_or_else(|| "-".to_owned(), |q| q.to_string());
        let _ = writeln!(
            out,
            "{:<14} {:>12.2} {:>12.2} {:>16} {:>10}",
            t.name,
            t.gpu_seconds,
            t.gib_seconds,
            format!("{:.1} / {quota}", gib(t.memory_reserved)),
            format!("{} / {devices}", t.devices_leased)
        );
    }
    out
}

/// The token (join or operator) in `path`.
pub(crate) fn read_pool_token(path: &Path) -> Result<String> {
    xpupool_server::config::read_token_file(path).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_ages_dates_and_times() {
        let now = 1_764_892_800_000; // 2025-12-05T00:00:00Z
        assert_eq!(parse_since("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_since("2025-12-05", now).unwrap(), now);
        assert_eq!(
            parse_since("2025-12-04T12:30:00Z", now).unwrap(),
            now - 41_400_000
        );
        assert_eq!(rfc3339(now - 41_400_000), "2025-12-04T12:30:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        for bad in ["yesterday", "2025-13-01", "5w", "2025-12-05T25:00:00Z"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
