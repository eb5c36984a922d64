//! The pool in etcd: one key for the core and one per server's metering, so a
//! heartbeat rewrites the core and that server's part only; hours gone by move to
//! keys of their own and are still exported. Needs Debian's etcd-server
//! (`scripts/install-system-packages.sh`); without it the test says so and, under
//! CI (`CI` set), fails.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use xpupool_manager::pool::{Pool, ServerPart, Timing, HOUR_MS};
use xpupool_manager::store::{now_ms, Store, KEYS_PER_READ};
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
            "/t/state/pool",
            "/t/state/server/a:1",
            "/t/state/server/b:1"
        ]
    );
    // a's heartbeat writes a's part alone: neither b's nor the core (no lease
    // changed).
    store
        .update(&timing, |pool, _, now| {
            pool.heartbeat("a:1", "ka", 1, meter(3.0), now)
        })
        .await
        .unwrap()
        .unwrap();
    let after = revisions(&mut client, "/t/state/").await;
    assert_eq!(after[0].1, before[0].1, "the core was rewritten");
    assert_ne!(after[1].1, before[1].1, "a's part was not written");
    assert_eq!(after[2].1, before[2].1, "b's part was rewritten");
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

async fn connect(url: &str, prefix: &str) -> Store {
    let started = Instant::now();
    loop {
        match Store::etcd(url, prefix).await {
            Ok(store) => return store,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("etcd did not come up: {e:#}"),
        }
    }
}

fn record(server: &str, hour: u64, gpu_seconds: f64) -> UsageRecord {
    UsageRecord {
        tenant: "t".into(),
        server: server.into(),
        device: 0,
        uuid: format!("GPU-{server}"),
        gpu_seconds,
        gib_seconds: 0.0,
        since_ms: hour,
        updated_ms: hour,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_pool_is_read_in_pages_and_archived_a_few_servers_a_write() {
    let Some((_etcd, url)) = start_etcd() else {
        return;
    };
    let store = connect(&url, "/p").await;
    let mut client = Client::connect([url.as_str()], None).await.unwrap();
    let timing = Timing::default();
    store
        .update(&timing, |pool, _, now| {
            pool.register(
                server("a:1"),
                "ka".into(),
                None,
                now,
                None,
                &Default::default(),
            )
        })
        .await
        .unwrap()
        .unwrap();
    // 300 servers' parts, each with a record of the hour gone by: more keys
    // than one read asks for, and more servers than one write archives.
    let now = now_ms();
    let last_hour = now - now % HOUR_MS - HOUR_MS;
    let servers = 300;
    assert!(servers > KEYS_PER_READ as usize);
    for i in 0..servers {
        let address = format!("s{i:03}:1");
        let part = ServerPart {
            hourly: vec![record(&address, last_hour, 1.0)],
            ..ServerPart::default()
        };
        client
            .put(
                format!("/p/state/server/{address}"),
                serde_json::to_vec(&part).unwrap(),
                None,
            )
            .await
            .unwrap();
    }
    let (pool, _, _) = store.read(&timing).await.unwrap();
    assert_eq!(pool.hourly.len(), servers, "every page read");
    // Each heartbeat's write archives at most 8 servers' past hours besides
    // its own, until none is left; nothing is lost or counted twice.
    let archived_records = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            let got = client
                .get("/p/hourly/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            got.kvs()
                .iter()
                .map(|kv| {
                    serde_json::from_slice::<Vec<UsageRecord>>(kv.value())
                        .unwrap()
                        .len()
                })
                .collect::<Vec<_>>()
        }
    };
    let mut writes = 0;
    loop {
        let before: usize = archived_records(&mut client).await.iter().sum();
        store
            .update(&timing, |pool, _, now| {
                pool.heartbeat("a:1", "ka", 1, ServerReport::default(), now)
            })
            .await
            .unwrap()
            .unwrap();
        writes += 1;
        let after: usize = archived_records(&mut client).await.iter().sum();
        assert!(after - before <= 8, "one write archived {}", after - before);
        if after == servers {
            break;
        }
        assert!(writes < 50, "archiving stalled at {after}");
    }
    assert_eq!(writes, servers.div_ceil(8));
    let (pool, _, _) = store.read(&timing).await.unwrap();
    assert!(pool.hourly.iter().all(|u| u.since_ms > last_hour));
    let exported = store.hourly(&timing, last_hour).await.unwrap();
    let past: Vec<&UsageRecord> = exported
        .iter()
        .filter(|u| u.since_ms == last_hour)
        .collect();
    assert_eq!(past.len(), servers);
    assert!(past.iter().all(|u| u.gpu_seconds == 1.0));
    // The same hour archived twice (managers whose clocks disagree): one
    // record, the two added up.
    client
        .put(
            format!("/p/hourly/{last_hour:016}/ffff"),
            serde_json::to_vec(&vec![record("s000:1", last_hour, 2.0)]).unwrap(),
            None,
        )
        .await
        .unwrap();
    let exported = store.hourly(&timing, last_hour).await.unwrap();
    let s000: Vec<&UsageRecord> = exported
        .iter()
        .filter(|u| u.since_ms == last_hour && u.server == "s000:1")
        .collect();
    assert_eq!(s000.len(), 1, "{s000:?}");
    assert_eq!(s000[0].gpu_seconds, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_kept_whole_by_an_older_manager_moves_to_the_split_state() {
    let Some((_etcd, url)) = start_etcd() else {
        return;
    };
    // Wait for etcd with a store elsewhere, then write the old layout.
    drop(connect(&url, "/other").await);
    let mut client = Client::connect([url.as_str()], None).await.unwrap();
    let mut old = Pool::new(1);
    old.register(
        server("a:1"),
        "ka".into(),
        None,
        now_ms(),
        None,
        &Default::default(),
    )
    .unwrap();
    old.usage.push(record("a:1", 0, 42.0));
    client
        .put("/m/pool", serde_json::to_vec(&old).unwrap(), None)
        .await
        .unwrap();
    let store = connect(&url, "/m").await;
    let (pool, _, _) = store.read(&Timing::default()).await.unwrap();
    assert!(pool.servers.contains_key("a:1"));
    assert_eq!(pool.usage.len(), 1);
    assert_eq!(pool.usage[0].gpu_seconds, 42.0);
    let keys: Vec<String> = revisions(&mut client, "/m/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["/m/state/pool", "/m/state/server/a:1"]);
    // A second manager starting finds nothing more to move.
    let again = connect(&url, "/m").await;
    let (pool, _, _) = again.read(&Timing::default()).await.unwrap();
    assert_eq!(pool.usage.len(), 1);
    // The layout before per-server parts: the servers in the core, each one's
    // metering (its counters, too) in a key of its own.
    let mut core = Pool::new(1);
    core.register(
        server("b:1"),
        "kb".into(),
        None,
        now_ms(),
        None,
        &Default::default(),
    )
    .unwrap();
    let counters = TenantMeter {
        tenant: "t".into(),
        device: 0,
        busy_seconds: 5.0,
        byte_seconds: 0.0,
        memory_used: 0,
    };
    let legacy = serde_json::json!({
        "metered": [counters],
        "usage": [record("b:1", 0, 5.0)],
        "hourly": [],
    });
    client
        .put("/n/state/pool", serde_json::to_vec(&core).unwrap(), None)
        .await
        .unwrap();
    client
        .put(
            "/n/state/metering/b:1",
            serde_json::to_vec(&legacy).unwrap(),
            None,
        )
        .await
        .unwrap();
    let store = connect(&url, "/n").await;
    let keys: Vec<String> = revisions(&mut client, "/n/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["/n/state/pool", "/n/state/server/b:1"]);
    let (pool, _, _) = store.read(&Timing::default()).await.unwrap();
    assert_eq!(pool.servers["b:1"].metered, std::slice::from_ref(&counters));
    assert_eq!(pool.usage[0].gpu_seconds, 5.0);
    // Its counters are the baselines: the next heartbeat bills what they grew by.
    store
        .update(&Timing::default(), |pool, _, now| {
            let report = ServerReport {
                meters: vec![TenantMeter {
                    busy_seconds: 6.0,
                    ..counters.clone()
                }],
                ..ServerReport::default()
            };
            pool.heartbeat("b:1", "kb", 1, report, now)
        })
        .await
        .unwrap()
        .unwrap();
    let (pool, _, _) = store.read(&Timing::default()).await.unwrap();
    assert_eq!(pool.usage[0].gpu_seconds, 6.0);
    // An older manager still writing its layout afterwards (a rolling upgrade)
    // is noticed: the state is not read as if it were the new layout, and a
    // manager starting then moves nothing over what is there.
    client
        .put("/n/state/pool", serde_json::to_vec(&core).unwrap(), None)
        .await
        .unwrap();
    let e = store.read(&Timing::default()).await.unwrap_err();
    assert!(e.to_string().contains("older manager"), "{e}");
    let e = Store::etcd(&url, "/n")
        .await
        .err()
        .expect("a manager refuses to start on both layouts");
    assert!(
        format!("{e:#}").contains("both the older and the per-server layout"),
        "{e:#}"
    );
}
