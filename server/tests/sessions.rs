//! End-to-end tests of the server over real QUIC on loopback: authentication,
//! per-session checking of pointers and handles, kernels on the mock, and that a
//! departed client's resources are freed.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{params, SCALE_PTX};
use serde_bytes::ByteBuf;
use xpupool_client::{Connection, Settings};
use xpupool_protocol::api::LaunchDims;
use xpupool_protocol::{code, Calls};
use xpupool_server::embedded::EmbeddedServer;
use xpupool_server::MockBackend;

struct Fixture {
    backend: Arc<MockBackend>,
    server: EmbeddedServer,
}

fn fixture(memory: u64) -> Fixture {
    limited_fixture(memory, None)
}

fn limited_fixture(memory: u64, limit: Option<u64>) -> Fixture {
    let backend = Arc::new(MockBackend::new(memory));
    let server = EmbeddedServer::start_with_limit(backend.clone(), limit).expect("server starts");
    Fixture { backend, server }
}

impl Fixture {
    fn settings(&self, token: &str) -> Settings {
        common::settings(&self.server, token)
    }

    fn connect(&self) -> Connection {
        common::connect(&self.server)
    }
}

#[test]
fn wrong_token_is_refused() {
    let f = fixture(1 << 20);
    let err = Connection::open(&f.settings("not-the-token"))
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}").contains("unknown tenant token"),
        "{err:#}"
    );
}

#[test]
fn wrong_certificate_is_refused() {
    let f = fixture(1 << 20);
    let other = fixture(1 << 20);
    let mut settings = f.settings(f.server.token());
    settings.cert = Some(other.server.cert_path().to_string_lossy().into_owned());
    assert!(
        Connection::open(&settings).is_err(),
        "a server with another certificate must not be trusted"
    );
    settings.cert = None;
    settings.fingerprint = Some("sha256:00".to_owned());
    assert!(
        Connection::open(&settings).is_err(),
        "a wrong pinned fingerprint must fail"
    );
}

#[test]
fn kernel_runs_and_results_come_back() {
    let f = fixture(64 << 20);
    let c = f.connect();
    assert_eq!(c.welcome.backend, "mock");
    let n = 1000u32;
    let out = c.mem_alloc(0, n as u64 * 4).unwrap();
    let module = c
        .module_load(
            0,
            ByteBuf::from(xpupool_fatbin::Image::Ptx(SCALE_PTX.to_owned()).to_wire()),
        )
        .unwrap();
    assert!(module.no_code.is_none());
    let function = module
        .functions
        .iter()
        .find(|f| f.name == "scale")
        .expect("kernel listed");
    assert_eq!(function.params, vec![(0, 8), (8, 4), (12, 4)]);
    let dims = LaunchDims {
        grid: [4, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    c.launch_kernel(function.handle, dims, 0, params(out, n, 3))
        .unwrap();
    let bytes = c.memcpy_dtoh(out, n as u64 * 4, 0).unwrap();
    for (i, word) in bytes.chunks_exact(4).enumerate() {
        assert_eq!(u32::from_le_bytes(word.try_into().unwrap()), i as u32 * 3);
    }
}

#[test]
fn sessions_cannot_touch_each_other() {
    let f = fixture(64 << 20);
    common::assert_sessions_isolated(&f.connect(), &f.connect());
}

#[test]
fn out_of_bounds_kernel_faults_and_poisons_the_session() {
    let f = fixture(64 << 20);
    let c = f.connect();
    let out = c.mem_alloc(0, 64).unwrap();
    let module = c
        .module_load(
            0,
            ByteBuf::from(xpupool_fatbin::Image::Ptx(SCALE_PTX.to_owned()).to_wire()),
        )
        .unwrap();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [64, 1, 1],
        shared_bytes: 0,
    };
    let err = c
        .launch_kernel(module.functions[0].handle, dims, 0, params(out, 64, 1))
        .unwrap_err();
    assert_eq!(err.code, code::ILLEGAL_ADDRESS, "{}", err.message);
    assert_eq!(
        c.synchronize().unwrap_err().code,
        code::ILLEGAL_ADDRESS,
        "the fault is sticky"
    );
    // Another session is unaffected.
    let other = f.connect();
    other.synchronize().unwrap();
}

#[test]
fn memory_is_bounded_and_freed_when_the_client_goes() {
    let f = fixture(8 << 20);
    let c = f.connect();
    c.mem_alloc(0, 6 << 20).unwrap();
    assert_eq!(
        c.mem_alloc(0, 4 << 20).unwrap_err().code,
        code::OUT_OF_MEMORY
    );
    let (free, total) = c.mem_get_info(0).unwrap();
    assert_eq!(total, 8 << 20);
    assert_eq!(free, 2 << 20);
    assert_eq!(f.backend.used_memory(), 6 << 20);
    c.close();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.backend.used_memory() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        f.backend.used_memory(),
        0,
        "a departed client's memory is freed"
    );
}

#[test]
fn image_without_ptx_reports_no_usable_code_but_has_its_variables() {
    let f = fixture(1 << 20);
    let c = f.connect();
    // A bare cubin: ELF for sm_90 with no PTX the mock could interpret.
    let cubin = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fatbin/tests/fixtures/globals.cubin"
    ))
    .expect("fixture");
    let image = xpupool_fatbin::image_from_bytes(&cubin).unwrap();
    let info = c.module_load(0, ByteBuf::from(image.to_wire())).unwrap();
    let reason = info.no_code.expect("no PTX means no usable code");
    assert!(reason.contains("no PTX"), "{reason}");
    // Its variables exist anyway, initialised from the cubin (cuBLAS needs this).
    let coef = c.module_get_global(info.handle, "coef".to_owned()).unwrap();
    assert_eq!(coef.size, 16);
    let bytes = c.memcpy_dtoh(coef.address, 16, 0).unwrap();
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(values, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        c.module_get_global(info.handle, "nothing".to_owned())
            .unwrap_err()
            .code,
        code::NOT_FOUND
    );
}

#[test]
fn skipping_kernels_accepts_sass_only_kernels_and_runs_none() {
    // kernel.cubin: SASS only, `axpy(float, const float*, float*, int)` and
    // `fill(int*, int, int)`.
    let cubin = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fatbin/tests/fixtures/kernel.cubin"
    ))
    .expect("fixture");
    let wire = xpupool_fatbin::image_from_bytes(&cubin).unwrap().to_wire();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        shared_bytes: 0,
    };

    // The ordinary mock lists none of them.
    let ordinary = fixture(1 << 20);
    let c = ordinary.connect();
    let info = c.module_load(0, ByteBuf::from(wire.clone())).unwrap();
    assert!(info.no_code.is_some() && info.functions.is_empty());

    let backend = Arc::new(MockBackend::new(1 << 20).skipping_kernels());
    let server = EmbeddedServer::start(backend).expect("server starts");
    let c = common::connect(&server);
    let info = c.module_load(0, ByteBuf::from(wire)).unwrap();
    assert_eq!(info.no_code, None);
    let mut names: Vec<_> = info.functions.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["axpy", "fill"]);
    let fill = info.functions.iter().find(|f| f.name == "fill").unwrap();
    assert_eq!(fill.params, [(0, 8), (8, 4), (12, 4)]);
    assert_eq!(fill.param_bytes, 16);
    // The launch is accepted and nothing runs: the memory stays as it was.
    let out = c.mem_alloc(0, 64).unwrap();
    c.memset(out, 0xab, 1, 64, 0).unwrap();
    let mut p = out.to_le_bytes().to_vec();
    p.extend_from_slice(&5i32.to_le_bytes());
    p.extend_from_slice(&16i32.to_le_bytes());
    c.launch_kernel(fill.handle, dims, 0, ByteBuf::from(p.clone()))
        .unwrap();
    assert_eq!(
        c.memcpy_dtoh(out, 64, 0).unwrap().into_vec(),
        vec![0xab; 64]
    );
    // Launches are still checked.
    let too_much = LaunchDims {
        shared_bytes: 1 << 30,
        ..dims
    };
    let e = c
        .launch_kernel(fill.handle, too_much, 0, ByteBuf::from(p))
        .unwrap_err();
    assert_eq!(e.code, code::INVALID_VALUE);
    let e = c
        .launch_kernel(0x4655_0000_0000_0999, dims, 0, ByteBuf::new())
        .unwrap_err();
    assert_eq!(e.code, code::INVALID_HANDLE);
}

#[test]
fn a_memory_limit_is_what_the_tenant_sees_and_gets() {
    let f = limited_fixture(64 << 20, Some(8 << 20));
    common::assert_memory_limit_of_8_mib(&f.connect(), &|bytes, why| {
        assert_eq!(f.backend.used_memory(), bytes, "{why}")
    });
}

/// Allocates 4 KiB and posts a launch, with it as the parameter, of a function
/// that does not exist: accepted when sent, an INVALID_HANDLE later. The
/// allocation.
fn post_launch_of_nothing(c: &Connection) -> u64 {
    let out = c.mem_alloc(0, 4096).unwrap();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        shared_bytes: 0,
    };
    c.post(xpupool_protocol::Request::LaunchKernel {
        function: 0xdead,
        dims,
        stream: 0,
        params: params(out, 32, 1),
    })
    .unwrap();
    out
}

#[test]
fn operations_sent_without_waiting_report_errors_at_the_next_synchronisation() {
    let f = fixture(64 << 20);
    let c = f.connect();
    // A launch of a function that does not exist: accepted now, reported later.
    let out = post_launch_of_nothing(&c);
    let other = c
        .mem_alloc(0, 4096)
        .expect("a non-synchronising call keeps its own result");
    assert_ne!(other, out);
    assert_eq!(
        c.synchronize().unwrap_err().code,
        code::INVALID_HANDLE,
        "reported at the sync"
    );
    c.synchronize().expect("reported once");
}

#[test]
fn an_error_taken_back_where_it_cannot_be_reported_is_kept_for_the_next_synchronisation() {
    let f = fixture(64 << 20);
    let c = f.connect();
    let out = post_launch_of_nothing(&c);
    // A copy back (as a managed-memory fault makes) brings the launch's error.
    let taken = c.memcpy_dtoh(out, 16, 0).unwrap_err();
    assert_eq!(taken.code, code::INVALID_HANDLE);
    assert!(
        c.memcpy_dtoh(out, 16, 0).is_ok(),
        "the second try is the copy's own"
    );
    c.defer(taken);
    c.defer(xpupool_protocol::CuError::new(code::UNKNOWN, "later"));
    assert!(
        c.mem_alloc(0, 4096).is_ok(),
        "a non-synchronising call keeps its own result"
    );
    assert_eq!(
        c.synchronize().unwrap_err().code,
        code::INVALID_HANDLE,
        "the first error kept comes out at the sync"
    );
    c.synchronize().expect("reported once");
}

#[test]
fn many_operations_sent_without_waiting_arrive_in_order() {
    let f = fixture(64 << 20);
    let c = f.connect();
    let n = 10_000u64;
    let out = c.mem_alloc(0, n * 4).unwrap();
    for i in 0..n {
        let request = xpupool_protocol::Request::Memset {
            dst: out + i * 4,
            value: i as u32,
            elem_size: 4,
            count: 1,
            stream: 0,
        };
        c.post(request).unwrap();
    }
    // One more pass overwrites the first half, which must land after the first.
    c.post(xpupool_protocol::Request::Memset {
        dst: out,
        value: 7,
        elem_size: 4,
        count: n / 2,
        stream: 0,
    })
    .unwrap();
    let bytes = c.memcpy_dtoh(out, n * 4, 0).unwrap();
    for (i, word) in bytes.chunks_exact(4).enumerate() {
        let want = if (i as u64) < n / 2 { 7 } else { i as u32 };
        assert_eq!(
            u32::from_le_bytes(word.try_into().unwrap()),
            want,
            "element {i}"
        );
    }
}

#[test]
fn an_image_is_uploaded_once_and_then_loaded_by_its_hash() {
    use sha2::Digest;
    let f = fixture(64 << 20);
    let image = common::ptx_image(SCALE_PTX);
    let hash: [u8; 32] = sha2::Sha256::digest(&image).into();
    let first = f.connect();
    assert!(
        first.module_load_cached(0, hash).unwrap().is_none(),
        "not seen yet"
    );
    first.module_load(0, image).unwrap();
    // Another client (another process, say) gets it by hash alone, and it runs.
    let second = f.connect();
    let module = second
        .module_load_cached(0, hash)
        .unwrap()
        .expect("cached by the first upload");
    let out = second.mem_alloc(0, 64 * 4).unwrap();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [64, 1, 1],
        shared_bytes: 0,
    };
    second
        .launch_kernel(module.functions[0].handle, dims, 0, params(out, 64, 5))
        .unwrap();
    let bytes = second.memcpy_dtoh(out, 64 * 4, 0).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[40..44].try_into().unwrap()), 50);
    assert!(second.module_load_cached(0, [7; 32]).unwrap().is_none());
}

#[test]
fn clients_on_this_host_use_the_unix_socket_with_the_same_checks() {
    let f = fixture(64 << 20);
    let mut settings = f.settings(f.server.token());
    settings.server = f.server.client_address();
    assert!(settings.server.starts_with(xpupool_client::UNIX_PREFIX));
    settings.cert = None;
    let c = Connection::open(&settings).expect("connects over the Unix socket");
    let n = 256u32;
    let out = c.mem_alloc(0, n as u64 * 4).unwrap();
    let module = c.module_load(0, common::ptx_image(SCALE_PTX)).unwrap();
    let dims = LaunchDims {
        grid: [2, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    };
    c.post(xpupool_protocol::Request::LaunchKernel {
        function: module.functions[0].handle,
        dims,
        stream: 0,
        params: params(out, n, 2),
    })
    .unwrap();
    let bytes = c.memcpy_dtoh(out, n as u64 * 4, 0).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[400..404].try_into().unwrap()), 200);
    // The token is checked here too, and other sessions stay out of reach.
    settings.token = "wrong".to_owned();
    let refused = Connection::open(&settings).err().expect("refused");
    assert!(
        format!("{refused:#}").contains("unknown tenant token"),
        "{refused:#}"
    );
    common::assert_sessions_isolated(&c, &f.connect());
    // The socket is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.server.unix_socket().expect("a socket"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "socket mode {mode:o}");
}

#[test]
fn thousands_of_failing_operations_on_the_unix_socket_do_not_wedge_it() {
    let f = fixture(64 << 20);
    let mut settings = f.settings(f.server.token());
    settings.server = f.server.client_address();
    let c = Connection::open(&settings).expect("connects over the Unix socket");
    let out = c.mem_alloc(0, 4096).unwrap();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [1, 1, 1],
        shared_bytes: 0,
    };
    // Every one fails with a long message; their replies pile up unread meanwhile.
    for _ in 0..20_000 {
        let request = xpupool_protocol::Request::LaunchKernel {
            function: 0xbad,
            dims,
            stream: 0,
            params: params(out, 1, 1),
        };
        c.post(request).unwrap();
    }
    assert_eq!(c.synchronize().unwrap_err().code, code::INVALID_HANDLE);
    c.synchronize().expect("only the first error is reported");
}

#[test]
fn bulk_copies_on_this_host_go_through_the_shared_region_and_stay_checked() {
    let f = fixture(128 << 20);
    let mut settings = f.settings(f.server.token());
    settings.server = f.server.client_address();
    settings.cert = None;
    let c = Connection::open(&settings).expect("connects over the Unix socket");
    assert!(
        c.welcome.shared_region,
        "the server takes the client's region"
    );
    // 40 MiB plus a little: more than the region's slots, and a short last one.
    let len = (40 << 20) + 12_345;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let device = c.mem_alloc(0, len as u64).unwrap();
    let before = c.stats();
    c.copy_to_device(device, &data, 0).unwrap();
    let mut back = vec![0u8; len];
    c.copy_from_device(device, &mut back, 0).unwrap();
    assert!(back == data, "the bytes came back changed");
    // Through the region the payload does not cross the socket.
    assert!(c.stats().bytes_sent - before.bytes_sent < 64 << 10);
    // A part of it, at an offset, both ways.
    let mut part = vec![0u8; 3 << 20];
    c.copy_from_device(device + 5, &mut part, 0).unwrap();
    assert!(part[..] == data[5..5 + (3 << 20)]);
    // Bad device ranges fail like any copy: the upload's error at the next sync.
    c.copy_to_device(device + len as u64 - 100, &data[..1 << 20], 0)
        .unwrap();
    assert_eq!(c.synchronize().unwrap_err().code, code::INVALID_VALUE);
    let e = c
        .copy_from_device(device + len as u64 - 100, &mut part, 0)
        .unwrap_err();
    assert_eq!(e.code, code::INVALID_VALUE);
    // A slot outside the region is refused by the server, not read.
    let e = c
        .memcpy_htod_shared(device, (32 << 20) - 10, 100, 0)
        .unwrap_err();
    assert!(
        e.message.contains("outside the shared-memory region"),
        "{e:?}"
    );
    c.synchronize().unwrap();
    // Over QUIC there is no region: the same request is refused.
    let quic = f.connect();
    assert!(!quic.welcome.shared_region);
    let e = quic.memcpy_htod_shared(device, 0, 16, 0).unwrap_err();
    assert_eq!(e.code, code::INVALID_VALUE);
    // And copies over QUIC still work, in messages.
    let mut small = vec![0u8; 100_000];
    quic.copy_to_device(quic.mem_alloc(0, 100_000).unwrap(), &data[..100_000], 0)
        .unwrap();
    assert_eq!(quic.synchronize(), Ok(()));
    c.copy_from_device(device, &mut small, 0).unwrap();
    assert!(small[..] == data[..100_000]);
}

#[test]
fn a_client_reaching_the_server_on_loopback_moves_to_its_unix_socket() {
    let f = fixture(64 << 20);
    let mut settings = f.settings(f.server.token());
    assert!(
        settings.server.starts_with("127.0.0.1:"),
        "{}",
        settings.server
    );
    settings.quic_only = false;
    let c = Connection::open(&settings).expect("connects");
    // Only the Unix socket carries a shared-memory region.
    assert!(c.welcome.shared_region, "the client stayed on QUIC");
    let device = c.mem_alloc(0, 1 << 20).unwrap();
    let data = vec![0x5au8; 1 << 20];
    c.copy_to_device(device, &data, 0).unwrap();
    let mut back = vec![0u8; 1 << 20];
    c.copy_from_device(device, &mut back, 0).unwrap();
    assert!(back == data);
    // The socket is told to holders of a valid token only.
    settings.token = "wrong".to_owned();
    let refused = Connection::open(&settings).err().expect("refused");
    assert!(
        format!("{refused:#}").contains("unknown tenant token"),
        "{refused:#}"
    );
    // And QUIC stays available to those who ask for it.
    let quic = f.connect();
    assert!(!quic.welcome.shared_region);
    assert_eq!(quic.synchronize(), Ok(()));
}

#[test]
fn an_operation_sent_without_waiting_reaches_the_server_without_another_call() {
    let f = fixture(64 << 20);
    let c = f.connect();
    let device = c.mem_alloc(0, 1 << 20).unwrap();
    assert_eq!(f.backend.used_memory(), 1 << 20);
    // Batched, then left alone: the connection's flush thread must send it.
    c.post(xpupool_protocol::Request::MemFree { ptr: device })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.backend.used_memory() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(f.backend.used_memory(), 0, "the free never left the client");
    assert_eq!(c.stats().round_trips, 1);
    assert_eq!(c.synchronize(), Ok(()));
}

#[test]
fn an_idle_quic_connection_is_kept_and_still_flushed() {
    let f = fixture(64 << 20);
    let c = f.connect();
    let device = c.mem_alloc(0, 1 << 20).unwrap();
    // Longer than the flush thread's tick, which drives the idle QUIC runtime.
    std::thread::sleep(Duration::from_millis(2500));
    c.post(xpupool_protocol::Request::MemFree { ptr: device })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.backend.used_memory() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(f.backend.used_memory(), 0, "the flush thread is gone");
    assert_eq!(c.synchronize(), Ok(()));
}

#[test]
fn many_small_batches_without_a_round_trip_do_not_wedge_the_unix_socket() {
    // Each operation goes out alone (the flush thread writes it while the program
    // "works"), and each write gets a reply write of its own from the server: unread,
    // those would fill the server's socket and stop it reading.
    let f = fixture(64 << 20);
    let mut settings = f.settings(f.server.token());
    settings.server = f.server.client_address();
    settings.cert = None;
    let c = Connection::open(&settings).expect("connects over the Unix socket");
    let device = c.mem_alloc(0, 4096).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut most_waiting = 0;
        for i in 0..1200u32 {
            c.post(xpupool_protocol::Request::Memset {
                dst: device,
                value: i,
                elem_size: 4,
                count: 1024,
                stream: 0,
            })
            .unwrap();
            std::thread::sleep(Duration::from_micros(1500));
            most_waiting = most_waiting.max(c.stats().replies_waiting);
        }
        let _ = done.send((c.synchronize(), most_waiting));
    });
    let (result, most_waiting) = finished
        .recv_timeout(Duration::from_secs(60))
        .expect("client and server wedged");
    assert_eq!(result, Ok(()));
    // Replies are read long before a socket buffer of default size could fill
    // (this machine's may be larger, so the wedge itself need not show here).
    assert!(most_waiting <= 80, "{most_waiting} replies left unread");
}
