//! The `acl` backend without an NPU: xpupool's own CANN libraries (the stand-in
//! made by scripts/build-acl-libs.sh, forwarding to a mock server in this
//! process) stand in for Huawei's. The chain is client → server with the acl
//! backend → CANN's C ABI (`libascendcl`, `libnnopbase`, `libopapi`: the
//! stand-in) → mock server, so every entry point the backend uses, and every
//! operator it calls through its generated C type, is called through the real
//! ABI, and the results are the mock's real bytes.
//!
//! Needs the stand-in made first (`cargo build --release` and
//! scripts/build-acl-libs.sh). Its own test binary: it sets process environment
//! variables (the stand-in reads them at `aclInit`) and the stand-in holds one
//! connection per process, so the tests share one mock server, one at a time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

mod common;

use serde_bytes::ByteBuf;
use xpupool_client::Connection;
use xpupool_protocol::aclnn::{AclnnArg, TensorDesc, MAX_EXECUTORS};
use xpupool_protocol::{code, Calls};
use xpupool_server::acl::AclBackend;
use xpupool_server::embedded::EmbeddedServer;
use xpupool_server::MockBackend;

const MOCK_MEMORY: u64 = 256 << 20;

struct World {
    mock: Arc<MockBackend>,
    _mock_server: EmbeddedServer,
    acl: Arc<AclBackend>,
}

/// The stand-in's folder: beside this test's profile folder (wherever
/// CARGO_TARGET_DIR puts it), else in the workspace's target/.
fn standin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from);
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    let candidates: Vec<PathBuf> = profile_dir
        .into_iter()
        .chain([workspace])
        .map(|dir| dir.join("acl"))
        .collect();
    candidates
        .iter()
        .find(|p| p.join("libopapi.so").exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "xpupool's CANN stand-in is not made (looked in {candidates:?}): \
                 cargo build --release && scripts/build-acl-libs.sh"
            )
        })
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = standin_dir();
        // Two devices behind CANN, so the backend serves two.
        let mock = Arc::new(MockBackend::with_devices(2, MOCK_MEMORY));
        let mock_server = EmbeddedServer::start(mock.clone()).expect("mock server starts");
        // Read by the stand-in at aclInit, i.e. inside AclBackend::open.
        std::env::set_var("XPUPOOL_SERVER", mock_server.addr().to_string());
        std::env::set_var("XPUPOOL_SERVER_CERT", mock_server.cert_path());
        std::env::set_var("XPUPOOL_TOKEN", mock_server.token());
        std::env::remove_var("XPUPOOL_SERVER_FINGERPRINT");
        std::env::set_var("XPUPOOL_ACL_LIBRARY_DIR", &dir);
        let acl = AclBackend::open()
            .unwrap_or_else(|e| panic!("acl backend on {}: {e:#}", dir.display()));
        World {
            mock,
            _mock_server: mock_server,
            acl: Arc::new(acl),
        }
    })
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server whose backend is the acl backend.
fn front() -> EmbeddedServer {
    EmbeddedServer::start(world().acl.clone()).expect("acl server starts")
}

fn mock_memory_settles_at(bytes: u64, why: &str) {
    let mock = &world().mock;
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.used_memory() != bytes && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mock.used_memory(), bytes, "{why}");
}

/// A contiguous float32 tensor of `n` elements at `data`.
fn floats(n: i64, data: u64) -> TensorDesc {
    TensorDesc {
        dtype: 0,
        dims: vec![n],
        strides: vec![1],
        offset: 0,
        format: 2,
        storage_dims: vec![n],
        data,
    }
}

fn bytes_of(v: &[f32]) -> ByteBuf {
    ByteBuf::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

fn read_floats(c: &Connection, at: u64, n: usize) -> Vec<f32> {
    let mut bytes = Vec::with_capacity(4 * n);
    while bytes.len() < 4 * n {
        let len = (4 * n - bytes.len()).min(xpupool_protocol::MAX_COPY_CHUNK);
        bytes.extend_from_slice(
            &c.memcpy_dtoh(at + bytes.len() as u64, len as u64, 0)
                .unwrap(),
        );
    }
    bytes
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes(w.try_into().unwrap()))
        .collect()
}

/// `aclnnAdd(self, other, alpha, out)`.
fn add(a: TensorDesc, b: TensorDesc, alpha: f32, out: TensorDesc) -> Vec<AclnnArg> {
    vec![
        AclnnArg::Tensor(a),
        AclnnArg::Tensor(b),
        AclnnArg::Scalar(0, ByteBuf::from(alpha.to_le_bytes().to_vec())),
        AclnnArg::Tensor(out),
    ]
}

#[test]
fn the_device_is_canns_and_operators_run_on_it() {
    let _serial = serial();
    let server = front();
    let c = common::connect(&server);
    assert_eq!(c.welcome.backend, "acl");
    let device = &c.welcome.devices[0];
    assert_eq!(device.name, "Ascend910B3", "the stand-in's aclrtGetSocName");
    assert_eq!(device.total_memory, MOCK_MEMORY);
    assert_eq!(c.mem_get_info(0).unwrap().1, MOCK_MEMORY);
    assert_eq!(c.welcome.devices.len(), 2, "every device CANN reports");
    assert_eq!(c.mem_alloc(2, 16).unwrap_err().code, code::INVALID_DEVICE);

    let n = 1000;
    let (a, b, out) = (
        c.mem_alloc(0, 4 * n).unwrap(),
        c.mem_alloc(0, 4 * n).unwrap(),
        c.mem_alloc(0, 4 * n).unwrap(),
    );
    let xs: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let ys: Vec<f32> = (0..n).map(|i| 3.0 - i as f32).collect();
    c.memcpy_htod(a, bytes_of(&xs), 0).unwrap();
    c.memcpy_htod(b, bytes_of(&ys), 0).unwrap();
    let stream = c.stream_create(0, 0, 0).unwrap();
    let plan = c
        .aclnn_prepare(
            0,
            "aclnnAdd".into(),
            add(
                floats(n as i64, a),
                floats(n as i64, b),
                2.0,
                floats(n as i64, out),
            ),
        )
        .unwrap();
    c.aclnn_run(plan.executor, 0, plan.workspace_size, stream)
        .unwrap();
    c.stream_synchronize(stream).unwrap();
    let want: Vec<f32> = xs.iter().zip(&ys).map(|(x, y)| x + 2.0 * y).collect();
    assert_eq!(read_floats(&c, out, n as usize), want);
    // An executor runs once.
    assert_eq!(
        c.aclnn_run(plan.executor, 0, 0, stream).unwrap_err().code,
        code::INVALID_HANDLE
    );

    // A strided view and a memset pattern the runtime has no word fill for.
    c.memset(out, 0x3f80_0000, 4, n, 0).unwrap(); // 1.0f
    let half = TensorDesc {
        dims: vec![n as i64 / 2],
        strides: vec![2],
        ..floats(n as i64, a)
    };
    let half_out = TensorDesc {
        dims: vec![n as i64 / 2],
        strides: vec![2],
        ..floats(n as i64, out)
    };
    let plan = c
        .aclnn_prepare(0, "aclnnAdd".into(), add(half.clone(), half, 1.0, half_out))
        .unwrap();
    c.aclnn_run(plan.executor, 0, 0, 0).unwrap();
    let got = read_floats(&c, out, n as usize);
    for i in 0..n as usize {
        let want = if i % 2 == 0 { 2.0 * xs[i] } else { 1.0 };
        assert_eq!(got[i], want, "element {i}");
    }
    c.stream_destroy(stream).unwrap();
    for p in [a, b, out] {
        c.mem_free(p).unwrap();
    }
    mock_memory_settles_at(0, "frees reach the device");
}

#[test]
fn hostile_operators_are_refused_before_cann_sees_them() {
    let _serial = serial();
    let server = front();
    let c = common::connect(&server);
    let a = c.mem_alloc(0, 64).unwrap();
    let t = floats(16, a);
    let refused = |operator: &str, args: Vec<AclnnArg>| {
        c.aclnn_prepare(0, operator.into(), args).unwrap_err()
    };
    let e = refused("aclnnNoSuchThing", vec![]);
    assert_eq!(e.code, code::NOT_SUPPORTED);
    assert!(e.message.contains("aclnnNoSuchThing"), "{}", e.message);
    // Too few parameters, and one of the wrong kind.
    assert_eq!(
        refused("aclnnAdd", vec![AclnnArg::Tensor(t.clone())]).code,
        code::INVALID_VALUE
    );
    let mut wrong = add(t.clone(), t.clone(), 1.0, t.clone());
    wrong[2] = AclnnArg::F64(1.0);
    assert_eq!(refused("aclnnAdd", wrong).code, code::INVALID_VALUE);
    // Memory that is not the session's, or a view reaching past its allocation,
    // or one before its storage, or a type of no whole bytes.
    for bad in [
        floats(16, a + (1 << 30)),
        floats(17, a),
        TensorDesc {
            strides: vec![1 << 40],
            dims: vec![2],
            ..t.clone()
        },
        TensorDesc {
            strides: vec![-1],
            offset: 0,
            ..t.clone()
        },
        TensorDesc {
            dtype: 29,
            ..t.clone()
        },
        TensorDesc {
            dims: vec![1; 129],
            strides: vec![1; 129],
            ..t.clone()
        },
    ] {
        let e = refused("aclnnAdd", add(bad.clone(), t.clone(), 1.0, t.clone()));
        assert_eq!(e.code, code::INVALID_VALUE, "{bad:?}: {}", e.message);
        // In a list too.
        let e = refused(
            "aclnnForeachAddListV2",
            vec![
                AclnnArg::TensorList(vec![Some(t.clone()), Some(bad.clone())]),
                AclnnArg::TensorList(vec![Some(t.clone()), Some(t.clone())]),
                AclnnArg::Scalar(0, ByteBuf::from(1f32.to_le_bytes().to_vec())),
                AclnnArg::TensorList(vec![Some(t.clone()), Some(t.clone())]),
            ],
        );
        assert_eq!(
            e.code,
            code::INVALID_VALUE,
            "{bad:?} in a list: {}",
            e.message
        );
    }

    // Another session's memory, which the host's CANN (one process here, as the
    // stand-in's one connection is) would happily read: refused by the backend.
    let other = common::connect(&server);
    let theirs = other.mem_alloc(0, 64).unwrap();
    let e = refused(
        "aclnnAdd",
        add(floats(16, theirs), t.clone(), 1.0, t.clone()),
    );
    assert_eq!(e.code, code::INVALID_VALUE, "{}", e.message);
    assert!(
        e.message
            .contains("not inside an allocation of this session"),
        "{}",
        e.message
    );

    // Executors: another session's, a stream not the session's, a workspace too small.
    let plan = c
        .aclnn_prepare(
            0,
            "aclnnAdd".into(),
            add(t.clone(), t.clone(), 1.0, t.clone()),
        )
        .unwrap();
    assert_eq!(
        other.aclnn_run(plan.executor, 0, 0, 0).unwrap_err().code,
        code::INVALID_HANDLE
    );
    assert_eq!(
        other.aclnn_destroy(plan.executor).unwrap_err().code,
        code::INVALID_HANDLE
    );
    assert_eq!(
        c.aclnn_run(plan.executor, 0, 0, 0xdead_0000)
            .unwrap_err()
            .code,
        code::INVALID_HANDLE
    );
    assert_eq!(
        c.aclnn_run(plan.executor, a + 4096, 64, 0)
            .unwrap_err()
            .code,
        code::INVALID_VALUE
    );
    // Destroyed unrun, it is gone.
    c.aclnn_destroy(plan.executor).unwrap();
    assert_eq!(
        c.aclnn_run(plan.executor, 0, 0, 0).unwrap_err().code,
        code::INVALID_HANDLE
    );

    // Executors waiting for their second phase are bounded.
    let mut held = Vec::new();
    let full = loop {
        match c.aclnn_prepare(
            0,
            "aclnnRelu".into(),
            vec![AclnnArg::Tensor(t.clone()), AclnnArg::Tensor(t.clone())],
        ) {
            Ok(plan) => held.push(plan.executor),
            Err(e) => break e,
        }
        assert!(held.len() <= MAX_EXECUTORS, "no bound on waiting executors");
    };
    assert_eq!(full.code, code::OUT_OF_MEMORY, "{}", full.message);
    assert_eq!(held.len(), MAX_EXECUTORS);
    // A session that ends with executors waiting frees them and its memory.
    drop(other);
    c.close();
    mock_memory_settles_at(0, "a closed session's memory is freed");
}

#[test]
fn virtual_memory_maps_whole_physical_allocations_into_reservations() {
    let _serial = serial();
    let server = front();
    let c = common::connect(&server);
    const G: u64 = 2 << 20;
    let start = c.mem_address_reserve(0, 4 * G, 0).unwrap();
    let (p, q) = (c.mem_create(0, G).unwrap(), c.mem_create(0, G).unwrap());
    mock_memory_settles_at(2 * G, "physical allocations reach the device");
    // ACL maps whole physical allocations, inside a reservation, each once.
    assert_eq!(
        c.mem_map(start, G / 2, 0, p).unwrap_err().code,
        code::NOT_SUPPORTED
    );
    assert_eq!(
        c.mem_map(start + 4 * G, G, 0, p).unwrap_err().code,
        code::INVALID_VALUE
    );
    c.mem_map(start + G, G, 0, p).unwrap();
    assert_eq!(
        c.mem_map(start + G, G, 0, q).unwrap_err().code,
        code::INVALID_VALUE,
        "overlap"
    );
    c.mem_map(start + 2 * G, G, 0, q).unwrap();
    c.mem_set_access(start + G, 2 * G, 0, 3).unwrap();
    assert_eq!(
        c.mem_set_access(start, 2 * G, 0, 3).unwrap_err().code,
        code::INVALID_VALUE
    );
    // Another session can neither map nor release this one's memory.
    let other = common::connect(&server);
    assert_eq!(other.mem_release(p).unwrap_err().code, code::INVALID_HANDLE);
    drop(other);

    // An operator over a tensor that spans both mappings, and copies across them.
    let n = (G / 4) as i64; // a mapping's floats
    let at = start + G + G / 2;
    let xs: Vec<f32> = (0..n).map(|i| i as f32).collect();
    c.memcpy_htod(at, bytes_of(&xs), 0).unwrap();
    let plan = c
        .aclnn_prepare(
            0,
            "aclnnAdd".into(),
            add(floats(n, at), floats(n, at), 0.5, floats(n, at)),
        )
        .unwrap();
    c.aclnn_run(plan.executor, 0, 0, 0).unwrap();
    let got = read_floats(&c, at, n as usize);
    assert!(got.iter().zip(&xs).all(|(g, x)| *g == x * 1.5));
    // Past the mapped part it is refused.
    let e = c
        .aclnn_prepare(
            0,
            "aclnnAdd".into(),
            add(
                floats(n, start + 2 * G),
                floats(2 * n, start + 2 * G),
                1.0,
                floats(n, at),
            ),
        )
        .unwrap_err();
    assert_eq!(e.code, code::INVALID_VALUE, "{}", e.message);

    // Released while mapped, the physical memory goes when it is unmapped.
    c.mem_release(p).unwrap();
    c.mem_release(q).unwrap();
    assert_eq!(
        c.mem_address_free(start, 4 * G).unwrap_err().code,
        code::INVALID_VALUE,
        "still mapped"
    );
    assert_eq!(
        c.mem_unmap(start + G, G / 2).unwrap_err().code,
        code::INVALID_VALUE,
        "part of a mapping"
    );
    c.mem_unmap(start + G, 2 * G).unwrap();
    mock_memory_settles_at(0, "unmapped and released");
    c.mem_address_free(start, 4 * G).unwrap();

    // A session that ends with memory mapped gives it all back.
    let start = c.mem_address_reserve(0, 2 * G, 0).unwrap();
    let h = c.mem_create(0, 2 * G).unwrap();
    c.mem_map(start, 2 * G, 0, h).unwrap();
    c.close();
    mock_memory_settles_at(0, "a closed session's mappings are freed");
}

#[test]
fn an_executor_whose_memory_went_between_its_phases_does_not_run() {
    let _serial = serial();
    let server = front();
    let c = common::connect(&server);
    let a = c.mem_alloc(0, 64).unwrap();
    let t = floats(16, a);
    let plan = c
        .aclnn_prepare(
            0,
            "aclnnAdd".into(),
            add(t.clone(), t.clone(), 1.0, t.clone()),
        )
        .unwrap();
    c.mem_free(a).unwrap();
    let e = c.aclnn_run(plan.executor, 0, 0, 0).unwrap_err();
    assert_eq!(e.code, code::INVALID_VALUE, "{}", e.message);
    assert!(e.message.contains("was freed after"), "{}", e.message);
    assert_eq!(
        c.aclnn_run(plan.executor, 0, 0, 0).unwrap_err().code,
        code::INVALID_HANDLE
    );

    // Waiting executors are bounded by their parameters' bytes too: lists of
    // 4096 tensors reach the budget long before 4096 executors do.
    let b = c.mem_alloc(0, 64).unwrap();
    let list = || AclnnArg::TensorList(vec![Some(floats(16, b)); 4096]);
    let one = AclnnArg::Scalar(0, ByteBuf::from(1f32.to_le_bytes().to_vec()));
    let mut held = 0;
    let full = loop {
        match c.aclnn_prepare(
            0,
            "aclnnForeachAddListV2".into(),
            vec![list(), list(), one.clone(), list()],
        ) {
            Ok(_) => held += 1,
            Err(e) => break e,
        }
        assert!(held < MAX_EXECUTORS, "no byte budget on waiting executors");
    };
    assert_eq!(full.code, code::OUT_OF_MEMORY, "{}", full.message);
    assert!(held > 10, "{held} executors");
    c.close();
    mock_memory_settles_at(0, "a closed session's memory is freed");
}

/// Kernel binaries outside aclnn through the backend: loaded on CANN with their
/// magic number and resolved there by name, launched with their argument
/// strings (the stand-in device then refuses to run AI Core code, naming the
/// kernel, which shows the launch reached CANN), hostile launches refused before
/// CANN sees them, and what a session leaves loaded unloaded at its end.
#[test]
fn kernel_binaries_load_on_cann_and_hostile_launches_stop_at_the_backend() {
    use xpupool_protocol::api::Placeholder;
    let _one = serial();
    let server = front();
    let mock_base = world().mock.used_memory();
    let c = common::connect(&server);
    let other = common::connect(&server);
    let wire = |elf| {
        ByteBuf::from(
            xpupool_fatbin::Image::Ascend {
                magic: 0x4141_5246,
                elf,
            }
            .to_wire(),
        )
    };
    let elf = xpupool_server::ascend_elf::sample_object(&["add_custom"]);
    let module = c.module_load(0, wire(elf.clone())).unwrap();
    let f = &module.functions[0];
    assert_eq!(f.name, "add_custom");
    assert_eq!(f.unusable, None, "CANN resolved it");
    assert!(
        world().mock.used_memory() > mock_base,
        "the binary is on the device behind CANN"
    );
    let refused = |conn: &Connection, function, blocks, args: Vec<u8>, holders| match conn
        .launch_with_args(function, blocks, 0, ByteBuf::from(args), holders)
    {
        Err(e) => e.message,
        Ok(()) => conn.synchronize().unwrap_err().message,
    };
    let at = |at, data| Placeholder { at, data };
    // Stopped at the backend: CANN's own error would name aclrtLaunchKernelWithHostArgs.
    for (blocks, args, holders) in [
        (8, vec![0u8; 48], vec![at(44, 0)]),
        (8, vec![0u8; 48], vec![at(0, 48)]),
        (0, vec![0u8; 48], vec![]),
    ] {
        let message = refused(&c, f.handle, blocks, args, holders);
        assert!(
            !message.contains("aclrtLaunchKernelWithHostArgs"),
            "{message}"
        );
    }
    let message = refused(&other, f.handle, 8, vec![0u8; 48], vec![]);
    assert!(
        message.contains("does not belong"),
        "another session's function: {message}"
    );
    let message = c
        .module_load(0, common::ptx_image(common::SCALE_PTX))
        .unwrap_err()
        .message;
    assert!(message.contains("runs Ascend kernel binaries"), "{message}");
    // A launch that passes reaches CANN, whose device names the kernel.
    let message = refused(&c, f.handle, 8, vec![0u8; 48], vec![at(0, 16)]);
    assert!(
        message.contains("aclrtLaunchKernelWithHostArgs failed")
            && message.contains("kernel add_custom")
            && message.contains("cannot run Ascend AI Core code"),
        "{message}"
    );
    // Arguments in device memory: another session's are stopped at the backend;
    // the session's own reach CANN's aclrtLaunchKernel.
    let mine = c.mem_alloc(0, 64).unwrap();
    let theirs = other.mem_alloc(0, 64).unwrap();
    let device_args = |address| match c.launch_with_device_args(f.handle, 2, 0, address, 64) {
        Err(e) => e.message,
        Ok(()) => c.synchronize().unwrap_err().message,
    };
    let message = device_args(theirs);
    assert!(
        message.contains("not inside an allocation") && !message.contains("aclrtLaunchKernel"),
        "{message}"
    );
    let message = device_args(mine);
    assert!(
        message.contains("aclrtLaunchKernel failed") && message.contains("kernel add_custom"),
        "{message}"
    );
    c.mem_free(mine).unwrap();
    other.mem_free(theirs).unwrap();
    // Unloaded by hand, and at a session's end.
    c.module_unload(module.handle).unwrap();
    assert!(c.module_unload(module.handle).is_err());
    c.module_load(0, wire(elf)).unwrap();
    drop((c, other));
    mock_memory_settles_at(mock_base, "the session's binaries went with it");
}

/// The second device: memory, streams, events and operators on device 1 go to
/// CANN's device 1 (its memory, not device 0's, is what they take), and an
/// executor or kernel of one device is refused in a stream of the other.
#[test]
fn the_second_device_is_served_and_devices_do_not_mix() {
    let _one = serial();
    let server = front();
    let c = common::connect(&server);
    let free = |d| c.mem_get_info(d).unwrap().0;
    let (zero, one) = (free(0), free(1));
    let n = 256u64;
    let (a, out) = (
        c.mem_alloc(1, 4 * n).unwrap(),
        c.mem_alloc(1, 4 * n).unwrap(),
    );
    assert_eq!(free(0), zero, "nothing on device 0");
    assert!(free(1) < one, "device 1's memory");
    let xs: Vec<f32> = (0..n).map(|i| i as f32).collect();
    c.memcpy_htod(a, bytes_of(&xs), 0).unwrap();
    let on_one = c.stream_create(1, 0, 0).unwrap();
    let on_zero = c.stream_create(0, 0, 0).unwrap();
    let args = || {
        add(
            floats(n as i64, a),
            floats(n as i64, a),
            0.5,
            floats(n as i64, out),
        )
    };
    let plan = c.aclnn_prepare(1, "aclnnAdd".into(), args()).unwrap();
    let refused = c.aclnn_run(plan.executor, 0, 0, on_zero).unwrap_err();
    assert!(
        refused.message.contains("prepared on device 1"),
        "{}",
        refused.message
    );
    let plan = c.aclnn_prepare(1, "aclnnAdd".into(), args()).unwrap();
    c.aclnn_run(plan.executor, 0, 0, on_one).unwrap();
    let done = c.event_create(1, 0).unwrap();
    c.event_record(done, on_one).unwrap();
    c.event_synchronize(done).unwrap();
    let want: Vec<f32> = xs.iter().map(|x| x * 1.5).collect();
    assert_eq!(read_floats(&c, out, n as usize), want);
    // A kernel binary on device 1, launched in device 0's stream.
    let image = xpupool_fatbin::Image::Ascend {
        magic: 0x4355_4245,
        elf: xpupool_server::ascend_elf::sample_object(&["k"]),
    };
    let module = c.module_load(1, ByteBuf::from(image.to_wire())).unwrap();
    let message = match c.launch_with_args(
        module.functions[0].handle,
        1,
        on_zero,
        ByteBuf::from(vec![0u8; 8]),
        vec![],
    ) {
        Err(e) => e.message,
        Ok(()) => c.synchronize().unwrap_err().message,
    };
    assert!(message.contains("loaded on device 1"), "{message}");
    drop(c);
    mock_memory_settles_at(0, "the session's memory on both devices went with it");
}
