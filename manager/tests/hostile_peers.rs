//! Peers that say nothing cannot hold the manager: 24 connections that each open
//! 16 streams and never send a request (384 silent streams, more than the 256
//! requests the manager serves at once) do not delay an operator's request, which
//! is answered while they still hang; and the silent streams are answered with an
//! error within the request time limit.

use std::time::{Duration, Instant};

use xpupool_client::pool::{ManagerAccess, ManagerLink, MANAGER_NAME};
use xpupool_manager::pool::{PolicyKind, Timing};
use xpupool_manager::store::Store;
use xpupool_manager::{BoundManager, ManagerConfig};
use xpupool_protocol::pool::{ManagerReply, ManagerRequest, MANAGER_ALPN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_do_not_delay_real_requests() {
    let dir = tempfile::tempdir().unwrap();
    let identity =
        xpupool_server::tls::load_or_create_as(dir.path(), "manager", MANAGER_NAME).unwrap();
    let cert = identity.cert_path.display().to_string();
    let bound = BoundManager::bind(ManagerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity,
        join_token: "join-join-join-join".into(),
        operator_token: "operator-operator".into(),
        tenants: Vec::new(),
        policy: PolicyKind::LeastLoaded,
        timing: Timing::default(),
        store: Store::memory(),
    })
    .unwrap();
    let address = bound.local_addr().unwrap().to_string();
    tokio::spawn(bound.serve());

    // The silent peers: each stream is opened (its first byte sent, so the
    // manager accepts it) and then says nothing more.
    let mut silent = Silent::default();
    for _ in 0..24 {
        let tls =
            xpupool_client::tls_client_config(Some(&cert), None, MANAGER_ALPN, "TEST").unwrap();
        let (endpoint, connection) = xpupool_client::quic_connect(&address, tls, MANAGER_NAME)
            .await
            .unwrap();
        for _ in 0..16 {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            send.write_all(&[0]).await.unwrap();
            silent.push((send, recv));
        }
        silent.push_back_endpoint(endpoint, connection);
    }

    // Meanwhile an operator asks for the pool's status.
    let access = ManagerAccess::new(&address, Some(cert.clone()), None).unwrap();
    let link = ManagerLink::new(access).unwrap();
    let started = Instant::now();
    let reply = link
        .ask(&ManagerRequest::Status {
            token: "operator-operator".into(),
        })
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(matches!(reply, ManagerReply::Status(_)), "{reply:?}");
    assert!(
        took < Duration::from_millis(1500),
        "the status took {took:?} behind silent streams (they are held 2 s)"
    );

    // Each silent stream is told, within the time limit, that no request came.
    let mut answered = 0;
    for (_send, mut recv) in silent.streams.drain(..).take(8) {
        let bytes = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
            .await
            .expect("an answer within the request time limit")
            .unwrap();
        assert!(!bytes.is_empty());
        answered += 1;
    }
    assert_eq!(answered, 8);
}

/// Silent streams and what keeps their connections open.
#[derive(Default)]
struct Silent {
    streams: Vec<(quinn::SendStream, quinn::RecvStream)>,
    _connections: Vec<(quinn::Endpoint, quinn::Connection)>,
}

impl Silent {
    fn push(&mut self, stream: (quinn::SendStream, quinn::RecvStream)) {
        self.streams.push(stream);
    }

    fn push_back_endpoint(&mut self, endpoint: quinn::Endpoint, connection: quinn::Connection) {
        self._connections.push((endpoint, connection));
    }
}
