//! A month of a large pool's hourly metering is more than one answer holds: the
//! manager answers it in pages of at most `MAX_USAGE_PAGE`, each after the last
//! record of the one before, nothing missed or repeated; a tenant's token pages
//! through its own records only.

use std::collections::BTreeSet;

use xpupool_manager::pool::{PolicyKind, TenantRule, Timing};
use xpupool_manager::store::Store;
use xpupool_manager::{BoundManager, ManagerConfig};
use xpupool_protocol::pool::{
    Class, ManagerError, ManagerReply, ManagerRequest, UsageRecord, MAX_USAGE_PAGE,
};

const TENANTS: usize = 5;
const SERVERS: usize = 50;
const HOURS: u64 = 100;
const HOUR_MS: u64 = 3_600_000;

fn rule(name: &str) -> TenantRule {
    TenantRule {
        name: name.into(),
        memory_quota: None,
        device_quota: None,
        class: Class::Normal,
        compute_share: 1.0,
        policy: None,
    }
}

#[tokio::test]
async fn usage_comes_in_pages() {
    let store = Store::memory();
    let now = xpupool_manager::store::now_ms();
    let first = now - now % HOUR_MS - HOURS * HOUR_MS;
    store
        .update(&Timing::default(), |pool, _, _| {
            for hour in 0..HOURS {
                for t in 0..TENANTS {
                    for s in 0..SERVERS {
                        pool.hourly.push(UsageRecord {
                            tenant: format!("t{t}"),
                            server: format!("10.0.0.{s}:7800"),
                            device: 0,
                            uuid: format!("GPU-{s}"),
                            gpu_seconds: 1.0,
                            gib_seconds: 0.0,
                            since_ms: first + hour * HOUR_MS,
                            updated_ms: first + hour * HOUR_MS,
                        });
                    }
                }
            }
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bound = BoundManager::bind(ManagerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity: xpupool_server::tls::create_ephemeral(dir.path()).unwrap(),
        join_token: "join-join-join-join".into(),
        operator_token: "operator-operator".into(),
        tenants: (0..TENANTS)
            .map(|t| (format!("token-of-tenant-{t}"), rule(&format!("t{t}"))))
            .collect(),
        policy: PolicyKind::LeastLoaded,
        timing: Timing::default(),
        store,
    })
    .unwrap();
    let manager = bound.manager();
    let remote = "127.0.0.1:9".parse().unwrap();
    let all = |token: &'static str| {
        let manager = manager.clone();
        async move {
            let mut got: Vec<UsageRecord> = Vec::new();
            let mut pages = 0;
            loop {
                let after = got
                    .last()
                    .map(|u| (u.since_ms, u.tenant.clone(), u.server.clone(), u.device));
                let request = ManagerRequest::Usage {
                    token: token.into(),
                    since_ms: first,
                    after,
                };
                let Ok(ManagerReply::Usage(page)) = manager.handle(request, remote).await else {
                    panic!("no usage page");
                };
                assert!(page.len() <= MAX_USAGE_PAGE);
                pages += 1;
                let full = page.len() == MAX_USAGE_PAGE;
                got.extend(page);
                if !full {
                    return (got, pages);
                }
            }
        }
    };
    let (records, pages) = all("operator-operator").await;
    let total = HOURS as usize * TENANTS * SERVERS;
    assert_eq!(records.len(), total);
    assert_eq!(pages, total / MAX_USAGE_PAGE + 1);
    let distinct: BTreeSet<(u64, &str, &str)> = records
        .iter()
        .map(|u| (u.since_ms, u.tenant.as_str(), u.server.as_str()))
        .collect();
    assert_eq!(distinct.len(), total, "a record repeated");
    // A tenant pages through its own only.
    let (own, _) = all("token-of-tenant-3").await;
    assert_eq!(own.len(), HOURS as usize * SERVERS);
    assert!(own.iter().all(|u| u.tenant == "t3"));
    // The join token is not the operator's.
    let refused = manager
        .handle(
            ManagerRequest::Usage {
                token: "join-join-join-join".into(),
                since_ms: 0,
                after: None,
            },
            remote,
        )
        .await;
    assert!(
        matches!(refused, Err(ManagerError::NotAllowed(_))),
        "{refused:?}"
    );
}
