//! The pool in etcd: one key for the core and one per server's metering, so a
//! heartbeat rewrites the core and that server's part only; hours gone by move to
//! keys of their own and are still exported. Needs Debian's etcd-server
//! (`scripts/install-system-packages.sh`); without it the test says so and, under
//! CI (`CI` set), fails.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use xpupool_manager::pool::{Timing, HOUR_MS};
use xpupool_manager::store::{now_ms, Store};
use xpupool_protocol::pool::{
    PoolDevice, ServerDescription, ServerReport, TenantMeter, UsageRecord,
};

/// A running etcd; killed, and its data directory removed, when dropped.
struct Etcd {
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A fresh etcd, or `None` (with a word why) where none is installed.
fn start_etcd() -> Option<(Etcd, String)> {
    let Ok(found) = Command::new("sh").args(["-c", "command -v etcd"]).output() else {
        return None;
    };
    if !found.status.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is not installed (scripts/install-system-packages.sh installs Debian's etcd-server)"
        );
        eprintln!("skipped: etcd is not installed (scripts/install-system-packages.sh)");
        return None;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    Some((Etcd { child, _data: dir }, url))
}

fn server(address: &str) -> ServerDescription {
    ServerDescription {
        address: address.into(),
        fingerprint: "sha256:00".into(),
        backend: "mock".into(),
        devices: vec![PoolDevice {
            name: "GPU".into(),
            uuid: format!("GPU-{address}"),
            memory: 16 << 30,
            sms: 1,
            compute_capability: (9, 0),
        }],
        instance: 1,
    }
}

async fn revisions(client: &mut Client, prefix: &str) -> Vec<(String, i64)> {
    let got = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("etcd answers");
    got.kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.mod_revision()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_rewrites_its_own_part_and_past_hours_move_out() {
    let Some((_etcd, url)) = start_etcd() else {
        return;
    };
    let started = Instant::now();
    let store = loop {
        match Store::etcd(&url, "/t").await {
            Ok(store) => break store,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("etcd did not come up: {e:#}"),
        }
    };
    let mut client = Client::connect([url.as_str()], None).await.unwrap();
    let timing = Timing::default();
    for (address, key) in [("a:1", "ka"), ("b:1", "kb")] {
        store
            .update(&timing, |pool, _, now| {
                pool.register(
                    server(address),
                    key.into(),
                    None,
                    now,
                    None,
                    &Default::default(),
                )
            })
            .await
            .unwrap()
            .unwrap();
    }
    let meter = |busy: f64| ServerReport {
        meters: vec![TenantMeter {
            tenant: "t".into(),
            device: 0,
            busy_seconds: busy,
            byte_seconds: 0.0,
            memory_used: 0,
        }],
        ..ServerReport::default()
    };
    for (address, key) in [("a:1", "ka"), ("b:1", "kb")] {
        store
            .update(&timing, |pool, _, now| {
                pool.heartbeat(address, key, 1, meter(1.0), now)
            })
            .await
            .unwrap()
            .unwrap();
    }
    let before = revisions(&mut client, "/t/state/").await;
    let keys: Vec<&str> = before.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/t/state/metering/a:1",
            "/t/state/metering/b:1",
            "/t/state/pool"
        ]
    );
    // a's heartbeat writes the core and a's part; b's part is untouched.
    store
        .update(&timing, |pool, _, now| {
            pool.heartbeat("a:1", "ka", 1, meter(3.0), now)
        })
        .await
        .unwrap()
        .unwrap();
    let after = revisions(&mut client, "/t/state/").await;
    assert_ne!(after[0].1, before[0].1, "a's metering was not written");
    assert_eq!(after[1].1, before[1].1, "b's metering was rewritten");
    assert_ne!(after[2].1, before[2].1, "the core was not written");
    let (pool, _, _) = store.read(&timing).await.unwrap();
    let billed: f64 = pool.usage.iter().map(|u| u.gpu_seconds).sum();
    assert!((billed - 4.0).abs() < 1e-9, "{:?}", pool.usage);
    // A record of an hour gone by leaves the state at the next write, and is
    // still exported.
    let now = now_ms();
    let last_hour = now - now % HOUR_MS - HOUR_MS;
    store
        .update(&timing, |pool, _, _| {
            pool.hourly.push(UsageRecord {
                tenant: "t".into(),
                server: "b:1".into(),
                device: 0,
                uuid: "GPU-b:1".into(),
                gpu_seconds: 7.0,
                gib_seconds: 0.0,
                since_ms: last_hour,
                updated_ms: last_hour,
            })
        })
        .await
        .unwrap();
    let (pool, _, _) = store.read(&timing).await.unwrap();
    assert!(
        pool.hourly.iter().all(|u| u.since_ms > last_hour),
        "{:?}",
        pool.hourly
    );
    let archived = revisions(&mut client, "/t/hourly/").await;
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert!(archived[0]
        .0
        .starts_with(&format!("/t/hourly/{last_hour:016}/")));
    let exported = store.hourly(&timing, last_hour).await.unwrap();
    assert!(
        exported
            .iter()
            .any(|u| u.since_ms == last_hour && u.gpu_seconds == 7.0),
        "{exported:?}"
    );
    assert!(exported.iter().any(|u| u.since_ms > last_hour));
    // Asked from this hour on, the past hour is not there.
    let recent = store.hourly(&timing, now).await.unwrap();
    assert!(recent.iter().all(|u| u.since_ms > last_hour), "{recent:?}");
}
