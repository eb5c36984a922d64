//! Peers that lie, stall or never show a token, against an embedded mock server:
//! each costs the server what the limits say, and no more.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use serde_bytes::ByteBuf;
use sha2::Digest;
use xpupool_client::Connection;
use xpupool_protocol::{code, frame, Calls, Hello, PROTOCOL_VERSION};
use xpupool_server::embedded::{EmbeddedServer, Options};
use xpupool_server::MockBackend;

fn server(memory: u64, options: Options) -> EmbeddedServer {
    EmbeddedServer::start_with(Arc::new(MockBackend::new(memory)), options).expect("server starts")
}

fn hello(token: &str) -> Vec<u8> {
    frame::encode(&Hello {
        protocol_version: PROTOCOL_VERSION,
        token: token.to_owned(),
        pid: 1,
        program: "hostile".to_owned(),
        probe: false,
    })
    .unwrap()
}

/// A raw connection to the server's Unix socket, past its first byte (no region).
fn unix_peer(server: &EmbeddedServer) -> UnixStream {
    let stream = UnixStream::connect(server.unix_socket().expect("a Unix socket")).unwrap();
    // A server that refuses the connection may have closed it already.
    let _ = xpupool_protocol::region::send_region(&stream, None);
    stream
}

/// Whether the server closes `stream` within `within` (reads end or fail).
fn closed_by_server(stream: &mut UnixStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 64];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// Threads of this process whose name starts with `prefix` (names are cut at 15).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|n| n.starts_with(prefix))
        })
        .count()
}

/// A QUIC connection and its stream, trusting the server's certificate, with no
/// xpupool code: a peer that says what it likes.
struct QuicPeer {
    runtime: tokio::runtime::Runtime,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl QuicPeer {
    fn connect(server: &EmbeddedServer) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pem = std::fs::read(server.cert_path()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![xpupool_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let addr = server.addr();
        let (connection, send, recv) = runtime.block_on(async {
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            let mut transport = quinn::TransportConfig::default();
            transport.keep_alive_interval(Some(Duration::from_millis(100)));
            config.transport_config(Arc::new(transport));
            endpoint.set_default_client_config(config);
            let connection = endpoint
                .connect(addr, "xpupool-server")
                .unwrap()
                .await
                .unwrap();
            let (send, recv) = connection.open_bi().await.unwrap();
            (connection, send, recv)
        });
        Self {
            runtime,
            connection,
            send,
            recv,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), quinn::WriteError> {
        self.runtime.block_on(self.send.write_all(bytes))
    }

    /// Reads one frame's body, or `None` once the server has closed the stream
    /// or the connection.
    fn read_frame(&mut self, within: Duration) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            tokio::time::timeout(within, async {
                let mut prefix = [0u8; 4];
                self.recv.read_exact(&mut prefix).await.ok()?;
                let mut body = vec![0u8; frame::body_len(prefix).ok()?];
                self.recv.read_exact(&mut body).await.ok()?;
                Some(body)
            })
            .await
            .expect("the server answers or closes in time")
        })
    }

    /// Whether the server closed the connection within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        let connection = self.connection.clone();
        self.runtime
            .block_on(async { tokio::time::timeout(within, connection.closed()).await })
            .is_ok()
    }
}

#[test]
fn a_hello_longer_than_a_few_kib_is_refused_before_it_is_read() {
    let server = server(64 << 20, Options::default());
    // It declares 80 MiB and sends 1 KiB of it: nothing is allocated, the server
    // closes at once.
    let mut quic = QuicPeer::connect(&server);
    let mut lie = ((80u32 << 20) - 1).to_le_bytes().to_vec();
    lie.extend_from_slice(&[0x41; 1024]);
    quic.write(&lie).unwrap();
    assert!(quic.closed_within(Duration::from_secs(2)), "QUIC: closed");
    let mut unix = unix_peer(&server);
    unix.write_all(&lie).unwrap();
    assert!(
        closed_by_server(&mut unix, Duration::from_secs(2)),
        "Unix: closed"
    );
    // A hello just past the limit, well-formed otherwise, is refused too.
    let mut unix = unix_peer(&server);
    let long = hello(&"x".repeat(xpupool_protocol::MAX_HELLO));
    unix.write_all(&long).unwrap();
    assert!(
        closed_by_server(&mut unix, Duration::from_secs(2)),
        "long hello"
    );
    // The server serves the next client as ever.
    let client = common::connect(&server);
    client.mem_alloc(0, 4096).unwrap();
}

#[test]
fn a_connection_that_sends_no_hello_is_closed_after_the_deadline() {
    let server = server(64 << 20, Options::default());
    let mut silent = unix_peer(&server);
    let started = Instant::now();
    assert!(
        closed_by_server(&mut silent, Duration::from_secs(15)),
        "a silent Unix peer is closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "not before its 5 s: {waited:?}"
    );
    // And on QUIC: a stream opened, nothing sent.
    let mut quic = QuicPeer::connect(&server);
    quic.write(&[]).unwrap();
    assert!(
        quic.closed_within(Duration::from_secs(15)),
        "a silent QUIC peer is closed"
    );
}

#[test]
fn unauthenticated_connections_are_capped_and_hold_no_thread() {
    let server = server(64 << 20, Options::default());
    let before = threads_named("xpupool-unix");
    let mut waiting: Vec<UnixStream> = (0..128).map(|_| unix_peer(&server)).collect();
    // Let the server take them all in.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        threads_named("xpupool-unix"),
        before,
        "a connection without a token costs no thread"
    );
    let mut one_more = unix_peer(&server);
    assert!(
        closed_by_server(&mut one_more, Duration::from_secs(2)),
        "the 129th waiting connection is refused at once"
    );
    // Once they go, clients are let in again.
    waiting.clear();
    std::thread::sleep(Duration::from_millis(200));
    let client = common::connect(&server);
    client.mem_alloc(0, 4096).unwrap();
}

#[test]
fn a_tenant_has_at_most_its_sessions() {
    let server = server(
        64 << 20,
        Options {
            max_sessions_per_tenant: 2,
            ..Options::default()
        },
    );
    let first = common::connect(&server);
    let second = common::connect(&server);
    let refused = Connection::open(&common::settings(&server, server.token()))
        .err()
        .expect("a third session is refused");
    assert!(
        format!("{refused:#}").contains("sessions open"),
        "{refused:#}"
    );
    drop(first);
    // The slot comes back once the first session has closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let third = loop {
        match Connection::open(&common::settings(&server, server.token())) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the slot never came back: {e:#}"),
        }
    };
    third.mem_alloc(0, 4096).unwrap();
    second.mem_alloc(0, 4096).unwrap();
}

#[test]
fn a_2d_memset_is_bounded_by_its_allocation_before_any_work() {
    let server = server(64 << 20, Options::default());
    let c = common::connect(&server);
    let a = c.mem_alloc(0, 1 << 20).unwrap();
    // No columns and 2^60 rows: no work at all, and an answer at once.
    c.memset_2d(a, 0, 7, 1, 0, 1 << 60, 0).unwrap();
    c.memset_2d(a, 1 << 10, 7, 1, 0, 1 << 60, 0).unwrap();
    // One column, a pitch of 1 byte and 2^40 rows: past the allocation, refused
    // before the first row (the old loop wrote 1 MiB of rows before failing).
    let before = c.memcpy_dtoh(a, 64, 0).unwrap();
    assert_eq!(
        c.memset_2d(a, 1, 9, 1, 1, 1 << 40, 0).unwrap_err().code,
        code::INVALID_VALUE
    );
    assert_eq!(
        c.memcpy_dtoh(a, 64, 0).unwrap(),
        before,
        "no row was written"
    );
    // Rows that wrap around the address space, and a pitch narrower than the row.
    assert_eq!(
        c.memset_2d(a, u64::MAX / 2, 9, 4, 1, 3, 0)
            .unwrap_err()
            .code,
        code::INVALID_VALUE
    );
    assert_eq!(
        c.memset_2d(a, 8, 9, 4, 4, 2, 0).unwrap_err().code,
        code::INVALID_VALUE
    );
    // A real one still works: 4 rows of 3 u32, 64 bytes apart.
    c.memset_2d(a, 64, 0x01020304, 4, 3, 4, 0).unwrap();
    let bytes = c.memcpy_dtoh(a, 256, 0).unwrap();
    assert_eq!(&bytes[192..196], &[4, 3, 2, 1]);
    assert_eq!(&bytes[204..208], &before[12..16], "past the row untouched");
}

#[test]
fn allocations_are_charged_what_they_take_and_addresses_are_reused() {
    let limit = 1 << 20;
    let server = server(
        64 << 20,
        Options {
            memory_limit: Some(limit),
            ..Options::default()
        },
    );
    let c = common::connect(&server);
    // 1-byte allocations cost 512 bytes each: 2048 fit in 1 MiB, not a million.
    let mut tiny = Vec::new();
    loop {
        match c.mem_alloc(0, 1) {
            Ok(a) => tiny.push(a),
            Err(e) => {
                assert_eq!(e.code, code::OUT_OF_MEMORY);
                break;
            }
        }
        assert!(
            tiny.len() <= 2048,
            "more 1-byte allocations than the limit pays for"
        );
    }
    assert_eq!(tiny.len(), 2048);
    assert_eq!(c.mem_get_info(0).unwrap().0, 0);
    for a in tiny {
        c.mem_free(a).unwrap();
    }
    assert_eq!(c.mem_get_info(0).unwrap(), (limit, limit));

    // Freed device addresses are handed out again: the 4 TiB range outlasts any
    // allocate/free loop (8 GiB a time would exhaust it after 512 rounds).
    let big = server_with_big_device();
    let c = common::connect(&big);
    let first = c.mem_alloc(0, 8 << 30).unwrap();
    c.mem_free(first).unwrap();
    for round in 0..600 {
        let a = c
            .mem_alloc(0, 8 << 30)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(a, first, "the same addresses again");
        c.mem_free(a).unwrap();
    }
}

fn server_with_big_device() -> EmbeddedServer {
    server(16 << 30, Options::default())
}

#[test]
fn the_module_cache_keeps_only_what_loaded_and_only_for_whoever_sent_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("xpupool-hostile-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = server(
        64 << 20,
        Options {
            module_cache_dir: Some(dir.clone()),
            extra_tenants: vec![("other".to_owned(), "other-token".to_owned())],
            ..Options::default()
        },
    );
    let mine = common::connect(&server);
    let theirs = Connection::open(&common::settings(&server, "other-token")).unwrap();

    // An image the backend refuses is not kept, in memory or on disk.
    let garbage = ByteBuf::from(b"\x00not an image at all".to_vec());
    let garbage_hash: [u8; 32] = sha2::Sha256::digest(&garbage).into();
    assert!(mine.module_load(0, garbage).is_err());
    assert!(mine.module_load_cached(0, garbage_hash).unwrap().is_none());
    assert!(!dir.join(hex::encode(garbage_hash)).exists());

    // A good image is kept, privately, for its tenant only.
    let image = common::ptx_image(common::SCALE_PTX);
    let hash: [u8; 32] = sha2::Sha256::digest(&image).into();
    mine.module_load(0, image.clone()).unwrap();
    let file = dir.join(hex::encode(hash));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&file),
        0o600,
        "the image file is the server user's alone"
    );
    assert_eq!(mode(&dir), 0o700, "and so is its folder");
    assert!(
        theirs.module_load_cached(0, hash).unwrap().is_none(),
        "another tenant learns nothing from a hash"
    );
    let again = common::connect(&server);
    assert!(
        again.module_load_cached(0, hash).unwrap().is_some(),
        "another session of the same tenant loads it by hash"
    );
    theirs.module_load(0, image).unwrap();
    assert!(
        theirs.module_load_cached(0, hash).unwrap().is_some(),
        "once it has sent the bytes itself"
    );
    drop((mine, theirs, again));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A QUIC client that asks for a megabyte at a time and never reads the answers
/// stalls itself: the server's queues for it stay bounded, and the server serves
/// the others meanwhile.
#[test]
fn a_client_that_stops_reading_stalls_only_itself() {
    let server = server(64 << 20, Options::default());
    let mut peer = QuicPeer::connect(&server);
    peer.write(&hello(server.token())).unwrap();
    peer.read_frame(Duration::from_secs(5)).expect("welcome");
    let alloc = xpupool_protocol::Request::MemAlloc {
        device: 0,
        bytes: 1 << 20,
    };
    peer.write(&frame::encode(&alloc).unwrap()).unwrap();
    let reply: Result<xpupool_protocol::Reply, xpupool_protocol::CuError> =
        frame::decode(&peer.read_frame(Duration::from_secs(5)).unwrap()).unwrap();
    let Ok(xpupool_protocol::Reply::MemAlloc(src)) = reply else {
        panic!("{reply:?}")
    };
    let ask = frame::encode(&xpupool_protocol::Request::MemcpyDtoH {
        src,
        len: 1 << 20,
        stream: 0,
    })
    .unwrap();
    let rss = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            << 10
    };
    let before = rss();
    // 2,000 requests for 1 MiB each: 2 GiB of replies if the server queued them.
    let mut requests = Vec::new();
    for _ in 0..2000 {
        requests.extend_from_slice(&ask);
    }
    // (The requests are small: the server takes them all, and stalls on the replies.)
    let _ = peer.runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), peer.send.write_all(&requests)).await
    });
    // Drive the peer's connection a while (it acknowledges, but reads nothing).
    peer.runtime
        .block_on(async { tokio::time::sleep(Duration::from_millis(1500)).await });
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 96 << 20,
        "the server grew by {} MiB for a client that reads nothing",
        grown >> 20
    );
    // Everyone else is served meanwhile.
    let other = common::connect(&server);
    let a = other.mem_alloc(0, 4096).unwrap();
    other
        .memcpy_htod(a, ByteBuf::from(vec![5u8; 16]), 0)
        .unwrap();
    assert_eq!(other.memcpy_dtoh(a, 16, 0).unwrap().as_slice(), &[5u8; 16]);
}

/// A cooperative grid runs every block at once, on a thread each: one larger than
/// the device holds at once is refused before any thread starts, whatever the
/// client's shim would have said.
#[test]
fn a_cooperative_grid_larger_than_the_device_is_refused_before_it_runs() {
    let server = server(64 << 20, Options::default());
    let c = common::connect(&server);
    let module = c
        .module_load(0, common::ptx_image(common::SCALE_PTX))
        .unwrap();
    let out = c.mem_alloc(0, 4 << 20).unwrap();
    let function = module.functions[0].handle;
    let dims = |blocks: u32| xpupool_protocol::api::LaunchDims {
        grid: [blocks, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    };
    let refused = c
        .launch_cooperative(function, dims(1 << 20), 0, common::params(out, 1 << 20, 3))
        .unwrap_err();
    assert_eq!(
        refused.code,
        code::COOPERATIVE_LAUNCH_TOO_LARGE,
        "{refused:?}"
    );
    // One that fits runs, every block at once.
    c.launch_cooperative(function, dims(16), 0, common::params(out, 16 * 128, 3))
        .unwrap();
    let bytes = c.memcpy_dtoh(out + 4 * 2047, 4, 0).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()), 2047 * 3);
}

/// A texture or surface object's texels must all lie in the session's own
/// memory: one reaching past its allocation, into another tenant's, or with a
/// nonsense layout is refused when it is made, not when a kernel reads it.
#[test]
fn texture_objects_are_bounded_by_the_sessions_memory() {
    use xpupool_protocol::api::TextureDesc;
    let server = server(
        64 << 20,
        Options {
            extra_tenants: vec![("other".to_owned(), "other-token".to_owned())],
            ..Options::default()
        },
    );
    let mine = common::connect(&server);
    let theirs = Connection::open(&common::settings(&server, "other-token")).unwrap();
    let buffer = mine.mem_alloc(0, 64 * 64 * 4).unwrap();
    let desc = |address: u64, width: u64, height: u64, pitch: u64| TextureDesc {
        address,
        dims: 2,
        size: [width, height, 1],
        pitch,
        slice_pitch: pitch * height,
        channel: 2,
        bits: 32,
        channels: 1,
        address_mode: [1; 3],
        linear: true,
        ..TextureDesc::default()
    };
    let ok = mine
        .tex_object_create(0, desc(buffer, 64, 64, 256))
        .unwrap();
    mine.tex_object_destroy(ok).unwrap();
    let refused = |r: Result<u64, xpupool_protocol::CuError>| r.unwrap_err().code;
    assert_eq!(
        refused(mine.tex_object_create(0, desc(buffer, 64, 65, 256))),
        code::INVALID_VALUE,
        "one row past"
    );
    assert_eq!(
        refused(mine.tex_object_create(0, desc(buffer, 65, 64, 256))),
        code::INVALID_VALUE,
        "rows wider than the pitch"
    );
    assert_eq!(
        refused(mine.tex_object_create(0, desc(buffer, 1 << 40, 1 << 40, 1 << 42))),
        code::INVALID_VALUE,
        "past the address space"
    );
    assert_eq!(
        refused(theirs.tex_object_create(0, desc(buffer, 8, 8, 256))),
        code::INVALID_VALUE,
        "another tenant's memory"
    );
    // Layers and cube faces are slices, each inside the memory too.
    let slices = |width: u64, layers: u64, layered: bool, cubemap: bool| TextureDesc {
        size: [width, width, layers],
        slice_pitch: 256 * width,
        layered,
        cubemap,
        ..desc(buffer, width, width, 256)
    };
    let cube = mine
        .tex_object_create(0, slices(2, 6, false, true))
        .unwrap();
    mine.tex_object_destroy(cube).unwrap();
    assert_eq!(
        refused(mine.tex_object_create(0, slices(2, 5, false, true))),
        code::INVALID_VALUE,
        "a cubemap of five faces"
    );
    assert_eq!(
        refused(mine.tex_object_create(
            0,
            TextureDesc {
                size: [4, 2, 6],
                ..slices(2, 6, false, true)
            }
        )),
        code::INVALID_VALUE,
        "a cubemap of faces that are not square"
    );
    assert_eq!(
        refused(mine.tex_object_create(0, slices(8, 9, true, false))),
        code::INVALID_VALUE,
        "a layer past the memory"
    );
    assert_eq!(
        refused(theirs.surf_object_create(0, desc(buffer, 8, 8, 256))),
        code::INVALID_VALUE
    );
    assert!(mine.tex_object_destroy(ok).is_err(), "destroyed twice");
}

/// Arrays are charged to the ledger, and every box a copy names, every byte
/// count and every handle is checked against the session's own arrays.
#[test]
fn arrays_are_charged_and_every_copy_is_bounded() {
    use xpupool_protocol::api::{
        ArrayBox, ArrayDesc, TextureDesc, ARRAY_LAYERED, ARRAY_SURFACE_LDST,
    };
    let server = server(
        64 << 20,
        Options {
            memory_limit: Some(4 << 20),
            extra_tenants: vec![("other".to_owned(), "other-token".to_owned())],
            ..Options::default()
        },
    );
    let mine = common::connect(&server);
    let theirs = Connection::open(&common::settings(&server, "other-token")).unwrap();
    let code_of = |r: Result<(), xpupool_protocol::CuError>| r.unwrap_err().code;
    let float = |width, height, depth, flags| ArrayDesc {
        width,
        height,
        depth,
        channel: 2,
        bits: 32,
        channels: 1,
        flags,
    };
    // 16 x 8 floats in 3 layers: rows of 64 bytes, 128 apart.
    let desc = float(16, 8, 3, ARRAY_LAYERED | ARRAY_SURFACE_LDST);
    let before = mine.mem_get_info(0).unwrap().0;
    let array = mine.array_create(0, desc).unwrap();
    assert_eq!(
        before - mine.mem_get_info(0).unwrap().0,
        128 * 8 * 3,
        "charged what it takes"
    );
    let whole = ArrayBox {
        at: [0; 3],
        extent: [64, 8, 3],
    };
    let data: Vec<u8> = (0..64 * 8 * 3).map(|i| i as u8).collect();
    mine.memcpy_to_array(array, whole, ByteBuf::from(data.clone()), 0)
        .unwrap();
    assert_eq!(
        mine.memcpy_from_array(array, whole, 0).unwrap().to_vec(),
        data
    );
    // Through device memory and back, and into a second array.
    let buffer = mine.mem_alloc(0, 64 * 8 * 3).unwrap();
    mine.memcpy_array_device(array, whole, buffer, 64, 64 * 8, false, 0)
        .unwrap();
    assert_eq!(
        mine.memcpy_dtoh(buffer, 64 * 8 * 3, 0).unwrap().to_vec(),
        data
    );
    let second = mine.array_create(0, desc).unwrap();
    let layer = ArrayBox {
        at: [0, 0, 2],
        extent: [64, 8, 1],
    };
    mine.memcpy_array_array(second, [0, 0, 0], array, layer, 0)
        .unwrap();
    let first_layer = ArrayBox {
        at: [0; 3],
        extent: [64, 8, 1],
    };
    assert_eq!(
        mine.memcpy_from_array(second, first_layer, 0)
            .unwrap()
            .to_vec(),
        data[64 * 8 * 2..]
    );
    mine.synchronize().unwrap();
    // Boxes past the array, byte counts that do not match, overflowing boxes.
    let past = ArrayBox {
        at: [8, 0, 0],
        extent: [64, 1, 1],
    };
    assert_eq!(
        code_of(
            mine.memcpy_to_array(array, past, ByteBuf::from(vec![0; 64]), 0)
                .and_then(|()| mine.synchronize())
        ),
        code::INVALID_VALUE
    );
    assert_eq!(
        code_of(
            mine.memcpy_to_array(array, first_layer, ByteBuf::from(vec![0; 5]), 0)
                .and_then(|()| mine.synchronize())
        ),
        code::INVALID_VALUE
    );
    let wrapping = ArrayBox {
        at: [u64::MAX - 2, 0, 0],
        extent: [8, 1, 1],
    };
    assert!(mine.memcpy_from_array(array, wrapping, 0).is_err());
    let empty = ArrayBox {
        at: [0; 3],
        extent: [0, 1, 1],
    };
    assert!(mine.memcpy_from_array(array, empty, 0).is_err());
    // Device memory past its allocation, and pitches that would wrap.
    assert_eq!(
        code_of(
            mine.memcpy_array_device(array, whole, buffer + 64, 64, 64 * 8, true, 0)
                .and_then(|()| mine.synchronize())
        ),
        code::INVALID_VALUE
    );
    assert!(mine
        .memcpy_array_device(array, whole, buffer, u64::MAX / 2, u64::MAX / 2, true, 0)
        .and_then(|()| mine.synchronize())
        .is_err());
    // Another tenant's array is not theirs to copy, sample, or destroy.
    assert!(theirs.memcpy_from_array(array, first_layer, 0).is_err());
    let texture = TextureDesc {
        dims: 2,
        size: [16, 8, 3],
        channel: 2,
        bits: 32,
        channels: 1,
        address_mode: [1; 3],
        layered: true,
        array,
        ..TextureDesc::default()
    };
    assert!(theirs.tex_object_create(0, texture.clone()).is_err());
    assert!(theirs.array_destroy(array).is_err());
    let t = mine.tex_object_create(0, texture.clone()).unwrap();
    mine.tex_object_destroy(t).unwrap();
    // A surface over an array made without surface load/store is refused.
    let plain = mine.array_create(0, float(16, 8, 0, 0)).unwrap();
    assert!(mine
        .surf_object_create(
            0,
            TextureDesc {
                array: plain,
                layered: false,
                size: [16, 8, 1],
                ..texture
            }
        )
        .is_err());
    // Shapes no array has, and one larger than the tenant's memory.
    assert!(mine.array_create(0, float(0, 8, 0, 0)).is_err());
    assert!(
        mine.array_create(0, float(1 << 20, 1, 0, 0)).is_err(),
        "wider than any device takes"
    );
    assert!(
        mine.array_create(0, float(4, 0, 3, 0)).is_err(),
        "a 1-D array with depth"
    );
    assert_eq!(
        mine.array_create(0, float(4096, 4096, 0, 0))
            .unwrap_err()
            .code,
        code::OUT_OF_MEMORY,
        "64 MiB past a 4 MiB limit"
    );
    // Destroyed arrays give their memory back.
    for a in [array, second, plain] {
        mine.array_destroy(a).unwrap();
    }
    mine.mem_free(buffer).unwrap();
    assert_eq!(mine.mem_get_info(0).unwrap().0, before);
    assert!(mine.array_destroy(array).is_err(), "destroyed twice");
}

/// An Ascend kernel binary on the mock: loaded and charged as a device would,
/// its kernels listed, and every launch checked before the stand-in device
/// refuses it by name (it runs no AI Core code). Posted launches report at the
/// next synchronisation.
#[test]
fn ascend_launches_are_checked_then_refused_by_name() {
    use xpupool_protocol::api::Placeholder;
    use xpupool_server::ascend_elf::sample_object;
    let server = server(64 << 20, Options::default());
    let c = common::connect(&server);
    let wire = |magic, elf| ByteBuf::from(xpupool_fatbin::Image::Ascend { magic, elf }.to_wire());
    let elf = sample_object(&["add_custom", "dvm_mix_aic"]);
    let (free_before, _) = c.mem_get_info(0).unwrap();
    let module = c.module_load(0, wire(0x4355_4245, elf.clone())).unwrap();
    let names: Vec<_> = module.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["add_custom", "dvm_mix_aic"],
        "the global functions, no others"
    );
    assert!(module.functions[0]
        .unusable
        .as_deref()
        .unwrap()
        .contains("cannot run Ascend"));
    assert!(
        c.mem_get_info(0).unwrap().0 < free_before,
        "the image is charged"
    );
    let f = module.functions[0].handle;
    let args = ByteBuf::from(vec![0u8; 48]);
    let at = |at, data| Placeholder { at, data };

    // Refused before anything runs, each with its reason (at the launch, or at
    // the synchronisation after it where the launch was posted).
    let refused = |blocks, args: ByteBuf, holders: Vec<Placeholder>, function| match c
        .launch_with_args(function, blocks, 0, args, holders)
    {
        Err(e) => e.message,
        Ok(()) => c.synchronize().unwrap_err().message,
    };
    assert!(refused(8, args.clone(), vec![at(44, 0)], f).contains("placeholder at byte 44"));
    assert!(refused(8, args.clone(), vec![at(0, 48)], f).contains("placeholder"));
    assert!(refused(0, args.clone(), vec![], f).contains("0 blocks"));
    let too_many = vec![at(0, 8); xpupool_protocol::api::MAX_PLACEHOLDERS + 1];
    assert!(refused(8, args.clone(), too_many, f).contains("placeholders (at most"));
    let huge = ByteBuf::from(vec![0u8; xpupool_protocol::api::MAX_LAUNCH_ARGS + 1]);
    assert!(refused(8, huge, vec![], f).contains("bytes of kernel arguments"));
    assert!(refused(8, args.clone(), vec![], 0xdead).contains("does not belong"));
    // A PTX kernel is not launched this way.
    let ptx = c
        .module_load(0, common::ptx_image(common::SCALE_PTX))
        .unwrap();
    let message = refused(1, args.clone(), vec![], ptx.functions[0].handle);
    assert!(message.contains("not an Ascend kernel"), "{message}");

    // A launch that passes the checks reaches the device, which names it.
    let message = refused(8, args, vec![at(0, 16), at(8, 40)], f);
    assert!(
        message.contains("kernel add_custom (8 blocks, 48 bytes of arguments, 2 placeholders)")
            && message.contains("cannot run Ascend AI Core code"),
        "{message}"
    );
    assert_eq!(c.synchronize(), Ok(()), "reported once");

    // Arguments already in device memory: the session's own, and bounded.
    let memory = c.mem_alloc(0, 64).unwrap();
    let device_args = |address, size| match c.launch_with_device_args(f, 4, 0, address, size) {
        Err(e) => e.message,
        Ok(()) => c.synchronize().unwrap_err().message,
    };
    assert!(device_args(memory, 0).contains("bytes of arguments (1 to"));
    assert!(device_args(memory, 65).contains("not inside an allocation"));
    assert!(device_args(0xdead_0000, 8).contains("not inside an allocation"));
    let message = device_args(memory, 64);
    assert!(
        message.contains("kernel add_custom (4 blocks, 64 bytes of arguments in device memory)")
            && message.contains("cannot run Ascend AI Core code"),
        "{message}"
    );
    c.mem_free(memory).unwrap();

    // Not an AI Core object, or an unknown magic: refused at load, nothing charged.
    let mut cubin = elf.clone();
    cubin[18] = 190;
    assert!(c.module_load(0, wire(0x4355_4245, cubin)).is_err());
    let message = c.module_load(0, wire(0x1234, elf)).unwrap_err().message;
    assert!(message.contains("magic number 0x1234"), "{message}");
    c.module_unload(ptx.handle).unwrap();
    c.module_unload(module.handle).unwrap();
    assert_eq!(
        c.mem_get_info(0).unwrap().0,
        free_before,
        "unloading refunds it"
    );
}
