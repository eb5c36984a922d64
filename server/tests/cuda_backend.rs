//! The `cuda` backend on a driver without a GPU: xpupool's own `libcuda.so.1` (the
//! shim, forwarding to a mock server in this process) stands in for NVIDIA's. The
//! chain is client → server with the cuda backend → driver ABI (the shim) → mock
//! server, so every driver entry point the backend uses is called through its real C
//! ABI and the results are the mock's real bytes.
//!
//! Needs the shim built first (`cargo build --release -p xpupool-shim`, or a debug
//! build). This is its own test binary because it sets process environment variables
//! (the shim reads them at `cuInit`), and the shim holds one connection per process,
//! so the tests share one mock server and run one at a time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

mod common;

use common::{params, ptx_image, SCALE_PTX};
use serde_bytes::ByteBuf;
use xpupool_client::{Connection, Settings};
use xpupool_protocol::api::{ArrayDesc, LaunchDims, TextureDesc, ARRAY_SURFACE_LDST};
use xpupool_protocol::{code, Calls};
use xpupool_server::cuda::CudaBackend;
use xpupool_server::embedded::EmbeddedServer;
use xpupool_server::MockBackend;

const MOCK_MEMORY: u64 = 256 << 20;

/// The mock device behind the shim, and the cuda backend on top of the shim.
struct World {
    mock: Arc<MockBackend>,
    _mock_server: EmbeddedServer,
    cuda: Arc<CudaBackend>,
}

/// xpupool's `libcuda.so`, built beforehand: beside this test's profile folder
/// (wherever CARGO_TARGET_DIR puts it), else in the workspace's target/.
fn shim_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // .../<target>/<profile>/deps/cuda_backend-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from);
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let candidates: Vec<PathBuf> = profile_dir
        .into_iter()
        .chain(["release", "debug"].iter().map(|p| workspace.join(p)))
        .map(|dir| dir.join("libcuda.so"))
        .collect();
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "xpupool's libcuda.so is not built (looked for {candidates:?}): \
             build the shim first with `cargo build --release -p xpupool-shim`"
            )
        })
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let shim = shim_path();
        let mock = Arc::new(MockBackend::new(MOCK_MEMORY));
        let mock_server = EmbeddedServer::start(mock.clone()).expect("mock server starts");
        // Read by the shim at cuInit, i.e. inside CudaBackend::open.
        std::env::set_var("XPUPOOL_SERVER", mock_server.addr().to_string());
        std::env::set_var("XPUPOOL_SERVER_CERT", mock_server.cert_path());
        std::env::set_var("XPUPOOL_TOKEN", mock_server.token());
        std::env::remove_var("XPUPOOL_SERVER_FINGERPRINT");
        std::env::set_var("XPUPOOL_CUDA_DRIVER", &shim);
        let cuda = CudaBackend::open()
            .unwrap_or_else(|e| panic!("cuda backend on {}: {e:#}", shim.display()));
        World {
            mock,
            _mock_server: mock_server,
            cuda: Arc::new(cuda),
        }
    })
}

/// One test at a time: they share the mock device and check its memory.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server whose backend is the cuda backend.
struct Front {
    server: EmbeddedServer,
}

impl Front {
    fn start(limit: Option<u64>) -> Self {
        let backend = world().cuda.clone();
        Self {
            server: EmbeddedServer::start_with_limit(backend, limit).expect("cuda server starts"),
        }
    }

    fn connect(&self) -> Connection {
        common::connect(&self.server)
    }
}

/// Waits (a little) until the mock holds `bytes`, then checks.
fn mock_memory_settles_at(bytes: u64, why: &str) {
    let mock = &world().mock;
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.used_memory() != bytes && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mock.used_memory(), bytes, "{why}");
}

#[test]
fn the_device_is_the_drivers() {
    let _serial = serial();
    let front = Front::start(None);
    let c = front.connect();
    assert_eq!(c.welcome.backend, "cuda");
    assert_eq!(c.welcome.device_address_range, (0, 0));
    assert!(
        c.welcome.driver_version >= 12000,
        "{}",
        c.welcome.driver_version
    );
    let device = &c.welcome.devices[0];
    assert!(
        device.name.contains("mock"),
        "the shim's device: {}",
        device.name
    );
    assert_eq!(device.total_memory, MOCK_MEMORY);
    let attr = |a: u32| device.attributes.iter().find(|x| x.0 == a).map(|x| x.1);
    assert_eq!(attr(75), Some(9), "compute capability major");
    assert_eq!(attr(1), Some(1024), "max threads per block");
    assert_eq!(c.mem_get_info(0).unwrap(), (MOCK_MEMORY, MOCK_MEMORY));
    assert_eq!(c.mem_alloc(1, 16).unwrap_err().code, code::INVALID_DEVICE);
}

#[test]
fn copies_and_memsets_with_offsets() {
    let _serial = serial();
    let front = Front::start(None);
    let c = front.connect();
    let a = c.mem_alloc(0, 4096).unwrap();
    let b = c.mem_alloc(0, 4096).unwrap();
    mock_memory_settles_at(8192, "allocations reach the device");
    let data: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    c.memcpy_htod(a + 100, ByteBuf::from(data.clone()), 0)
        .unwrap();
    assert_eq!(c.memcpy_dtoh(a + 100, 200, 0).unwrap().into_vec(), data);
    assert_eq!(&c.memcpy_dtoh(a + 150, 10, 1).unwrap()[..], &data[50..60]);
    c.memcpy_dtod(b + 8, a + 110, 50, 2).unwrap();
    assert_eq!(&c.memcpy_dtoh(b + 8, 50, 0).unwrap()[..], &data[10..60]);

    c.memset(b, 0xAB, 1, 8, 0).unwrap();
    c.memset(b + 64, 0xBEEF, 2, 4, 0).unwrap();
    c.memset(b + 128, 0xDEAD_BEEF, 4, 2, 0).unwrap();
    let bytes = c.memcpy_dtoh(b, 136, 0).unwrap();
    assert_eq!(&bytes[..8], &[0xAB; 8]);
    assert_eq!(&bytes[8..12], &data[10..14], "the copy is untouched");
    assert_eq!(
        &bytes[64..72],
        &[0xEF, 0xBE, 0xEF, 0xBE, 0xEF, 0xBE, 0xEF, 0xBE]
    );
    assert_eq!(
        &bytes[128..136],
        &[0xEF, 0xBE, 0xAD, 0xDE, 0xEF, 0xBE, 0xAD, 0xDE]
    );

    // 3 rows of 4 u16 elements, 32 bytes apart, starting 512 bytes in.
    c.memset_2d(b + 512, 32, 0x0102, 2, 4, 3, 0).unwrap();
    let rows = c.memcpy_dtoh(b + 512, 96, 0).unwrap();
    for row in 0..3 {
        assert_eq!(&rows[row * 32..row * 32 + 8], &[2, 1, 2, 1, 2, 1, 2, 1]);
        assert_eq!(&rows[row * 32 + 8..row * 32 + 32], &[0; 24]);
    }
    assert_eq!(
        c.memset_2d(b + 4000, 64, 0, 1, 32, 3, 0).unwrap_err().code,
        code::INVALID_VALUE,
        "rows past the allocation's end"
    );
    assert_eq!(
        c.memset(b + 1, 0, 4, 1, 0).unwrap_err().code,
        code::INVALID_VALUE,
        "misaligned 32-bit memset"
    );
    c.synchronize().unwrap();
    c.mem_free(a).unwrap();
    c.mem_free(b).unwrap();
    mock_memory_settles_at(0, "frees reach the device");
}

#[test]
fn kernels_streams_events_and_globals() {
    let _serial = serial();
    let front = Front::start(None);
    let c = front.connect();
    let n = 1000u32;
    let out = c.mem_alloc(0, u64::from(n) * 4).unwrap();
    let module = c.module_load(0, ptx_image(SCALE_PTX)).unwrap();
    assert!(module.no_code.is_none());
    let scale = module
        .functions
        .iter()
        .find(|f| f.name == "scale")
        .expect("kernel listed");
    assert_eq!(scale.params, vec![(0, 8), (8, 4), (12, 4)]);
    assert_eq!(scale.param_bytes, 16);
    assert!(scale.unusable.is_none());
    // The stand-in driver loads lazily, as NVIDIA's does: an enumerated function
    // refuses its device-dependent attributes until loaded, so the load reports
    // the others, and the backend loads it when one of those is asked for.
    let attributes: Vec<u32> = scale.attributes.iter().map(|a| a.0).collect();
    assert_eq!(attributes, [1, 2, 3, 4, 5, 6, 7, 9]);
    assert_eq!(c.function_get_attribute(scale.handle, 0).unwrap(), 1024);
    assert!(c.function_get_attribute(scale.handle, 8).unwrap() > 0);
    assert_eq!(
        c.function_get_attribute(scale.handle, 10).unwrap_err().code,
        code::INVALID_VALUE
    );
    assert_eq!(
        c.function_get_attribute(0xdead, 0).unwrap_err().code,
        code::INVALID_HANDLE
    );

    let stream = c.stream_create(0, 0, 0).unwrap();
    let (start, end) = (c.event_create(0, 0).unwrap(), c.event_create(0, 0).unwrap());
    c.memset(out, 0xFFFF_FFFF, 4, u64::from(n), stream).unwrap();
    c.event_record(start, stream).unwrap();
    let dims = LaunchDims {
        grid: [4, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    c.launch_kernel(scale.handle, dims, stream, params(out, n, 3))
        .unwrap();
    c.event_record(end, stream).unwrap();
    c.stream_wait_event(0, end, 0).unwrap();
    c.event_synchronize(end).unwrap();
    c.event_query(end).unwrap();
    c.stream_query(stream).unwrap();
    let ms = c.event_elapsed_time(start, end).unwrap();
    assert!(ms >= 0.0, "{ms}");
    c.stream_synchronize(stream).unwrap();
    let bytes = c.memcpy_dtoh(out, u64::from(n) * 4, 0).unwrap();
    for (i, word) in bytes.chunks_exact(4).enumerate() {
        assert_eq!(u32::from_le_bytes(word.try_into().unwrap()), i as u32 * 3);
    }
    assert_eq!(
        c.launch_kernel(scale.handle, dims, 0, ByteBuf::from(vec![0; 8]))
            .unwrap_err()
            .code,
        code::INVALID_VALUE,
        "a parameter buffer shorter than the kernel's parameters"
    );

    // A module variable: found, readable and writable like an allocation.
    let counter = c
        .module_get_global(module.handle, "counter".into())
        .unwrap();
    assert_eq!(counter.size, 4);
    assert_eq!(
        &c.memcpy_dtoh(counter.address, 4, 0).unwrap()[..],
        &7u32.to_le_bytes()
    );
    c.memcpy_htod(
        counter.address,
        ByteBuf::from(9u32.to_le_bytes().to_vec()),
        0,
    )
    .unwrap();
    assert_eq!(
        &c.memcpy_dtoh(counter.address, 4, 0).unwrap()[..],
        &9u32.to_le_bytes()
    );
    assert_eq!(
        c.mem_free(counter.address).unwrap_err().code,
        code::INVALID_VALUE,
        "a module variable is not an allocation"
    );
    assert_eq!(
        c.module_get_global(module.handle, "nothing".into())
            .unwrap_err()
            .code,
        code::NOT_FOUND
    );

    // The same image again (here, or in another session) reuses the kernel list.
    let cached = world().cuda.cached_images();
    let again = c.module_load(0, ptx_image(SCALE_PTX)).unwrap();
    assert_eq!(again.functions[0].params, scale.params);
    assert_ne!(
        again.functions[0].handle, scale.handle,
        "a module of its own"
    );
    assert_eq!(world().cuda.cached_images(), cached);

    c.event_destroy(start).unwrap();
    c.event_destroy(end).unwrap();
    assert_eq!(c.event_query(end).unwrap_err().code, code::INVALID_HANDLE);
    c.stream_destroy(stream).unwrap();
    assert_eq!(
        c.stream_synchronize(stream).unwrap_err().code,
        code::INVALID_HANDLE
    );
    c.module_unload(module.handle).unwrap();
    assert_eq!(
        c.launch_kernel(scale.handle, dims, 0, params(out, n, 3))
            .unwrap_err()
            .code,
        code::INVALID_HANDLE,
        "the function went with its module"
    );
    assert_eq!(
        c.memcpy_dtoh(counter.address, 4, 0).unwrap_err().code,
        code::INVALID_VALUE,
        "so did its variable"
    );
    c.module_unload(again.handle).unwrap();
    c.mem_free(out).unwrap();
    mock_memory_settles_at(0, "the modules' variables are freed with them");
}

/// Runs `fill(p, v, n)` (`p[i] = v + i`) from the fixture fatbin's `fill` kernel.
fn run_fill(c: &Connection, module: &xpupool_protocol::api::ModuleInfo) {
    let fill = module
        .functions
        .iter()
        .find(|f| f.name == "fill")
        .expect("fill listed");
    assert_eq!(fill.params, vec![(0, 8), (8, 4), (12, 4)]);
    let axpy = module
        .functions
        .iter()
        .find(|f| f.name == "axpy")
        .expect("axpy listed");
    assert_eq!(axpy.params, vec![(0, 4), (8, 8), (16, 8), (24, 4)]);
    assert_eq!(axpy.param_bytes, 28);
    let n = 100u32;
    let p = c.mem_alloc(0, u64::from(n) * 4).unwrap();
    let mut args = p.to_le_bytes().to_vec();
    args.extend_from_slice(&1000u32.to_le_bytes());
    args.extend_from_slice(&n.to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    };
    c.launch_kernel(fill.handle, dims, 0, ByteBuf::from(args))
        .unwrap();
    let bytes = c.memcpy_dtoh(p, u64::from(n) * 4, 0).unwrap();
    for (i, word) in bytes.chunks_exact(4).enumerate() {
        assert_eq!(
            u32::from_le_bytes(word.try_into().unwrap()),
            1000 + i as u32
        );
    }
    c.mem_free(p).unwrap();
}

fn fixture_fatbin() -> ByteBuf {
    let fatbin = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fatbin/tests/fixtures/plain.fatbin"
    ))
    .expect("fixture");
    ByteBuf::from(xpupool_fatbin::image_from_bytes(&fatbin).unwrap().to_wire())
}

#[test]
fn an_nvcc_fatbin_loads_and_runs() {
    let _serial = serial();
    let front = Front::start(None);
    let c = front.connect();
    let module = c.module_load(0, fixture_fatbin()).unwrap();
    assert!(module.no_code.is_none(), "{:?}", module.no_code);
    run_fill(&c, &module);
}

#[test]
fn an_older_driver_gets_layouts_from_the_image() {
    let _serial = serial();
    world();
    let old = CudaBackend::open()
        .expect("a second backend on the same driver")
        .without_driver_introspection();
    let server = EmbeddedServer::start(Arc::new(old)).expect("server starts");
    let c = Connection::open(&Settings {
        server: server.addr().to_string(),
        cert: Some(server.cert_path().to_string_lossy().into_owned()),
        fingerprint: None,
        token: server.token().to_owned(),
        quic_only: true,
    })
    .unwrap();
    // A fatbin: names and layouts from its cubin's .nv.info (and its PTX).
    let module = c.module_load(0, fixture_fatbin()).unwrap();
    assert!(module.no_code.is_none(), "{:?}", module.no_code);
    run_fill(&c, &module);
    // PTX: from the .entry signature.
    let module = c.module_load(0, ptx_image(SCALE_PTX)).unwrap();
    assert_eq!(module.functions.len(), 1);
    assert_eq!(module.functions[0].params, vec![(0, 8), (8, 4), (12, 4)]);
    drop(c);
    drop(server);
    mock_memory_settles_at(0, "the second backend's session is gone");
}

#[test]
fn an_image_without_code_for_the_device_says_so() {
    let _serial = serial();
    let front = Front::start(None);
    let c = front.connect();
    let cubin = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fatbin/tests/fixtures/kernel.cubin"
    ))
    .expect("fixture");
    let image = xpupool_fatbin::image_from_bytes(&cubin).unwrap().to_wire();
    let info = c.module_load(0, ByteBuf::from(image)).unwrap();
    let reason = info.no_code.expect("the mock runs no SASS");
    assert!(reason.contains("sm_90"), "{reason}");
    assert!(info.functions.is_empty());
    c.module_unload(info.handle).unwrap();
}

#[test]
fn sessions_cannot_touch_each_other() {
    let _serial = serial();
    let front = Front::start(None);
    common::assert_sessions_isolated(&front.connect(), &front.connect());
}

/// The device time of a session's kernels, measured by the backend with events
/// around each launch it forwards and read without waiting: what the server's busy
/// time, compute shares and utilisation read where kernels run asynchronously.
#[test]
fn the_device_time_of_kernels_is_measured_with_events() {
    let _serial = serial();
    let front = Front::start(None);
    let c = front.connect();
    assert_eq!(
        c.session_busy().unwrap(),
        Default::default(),
        "nothing launched yet"
    );
    let n = 4096u32;
    let out = c.mem_alloc(0, u64::from(n) * 4).unwrap();
    let module = c.module_load(0, ptx_image(SCALE_PTX)).unwrap();
    let scale = module.functions.iter().find(|f| f.name == "scale").unwrap();
    let stream = c.stream_create(0, 0, 0).unwrap();
    let dims = LaunchDims {
        grid: [16, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    let started = Instant::now();
    for _ in 0..20 {
        c.launch_kernel(scale.handle, dims, stream, params(out, n, 3))
            .unwrap();
    }
    c.stream_synchronize(stream).unwrap();
    let wall = started.elapsed().as_nanos() as u64;
    let work = c.session_busy().unwrap();
    assert_eq!((work.completed, work.pending), (20, 0), "{work:?}");
    let busy = work.busy_ns;
    assert!(busy > 0, "20 kernels took no device time");
    assert!(busy <= wall, "{busy} ns of kernels in {wall} ns");
    assert_eq!(c.session_busy().unwrap(), work, "nothing new ran");
    // The tenancy layer adds it to the tenant's busy time.
    let status = c.server_status().unwrap();
    let seconds: f64 = status.tenants.iter().map(|t| t.busy_seconds).sum();
    assert!(
        (seconds - busy as f64 * 1e-9).abs() < 1e-6,
        "the tenant's busy time {seconds} s, the session's {busy} ns"
    );
}

#[test]
fn a_memory_limit_is_what_the_tenant_sees_and_gets() {
    let _serial = serial();
    let front = Front::start(Some(8 << 20));
    common::assert_memory_limit_of_8_mib(&front.connect(), &mock_memory_settles_at);
}

#[test]
fn a_departed_clients_resources_are_freed() {
    let _serial = serial();
    let front = Front::start(None);
    let c = front.connect();
    let out = c.mem_alloc(0, 1 << 20).unwrap();
    c.mem_alloc(0, 3 << 20).unwrap();
    let module = c.module_load(0, ptx_image(SCALE_PTX)).unwrap();
    c.module_get_global(module.handle, "counter".into())
        .unwrap();
    let stream = c.stream_create(0, 0, 0).unwrap();
    c.event_create(0, 0).unwrap();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [64, 1, 1],
        shared_bytes: 0,
    };
    c.launch_kernel(module.functions[0].handle, dims, stream, params(out, 64, 2))
        .unwrap();
    // An array, with a texture and a surface over it: the array's memory is
    // on the mock too.
    let array = c
        .array_create(
            0,
            ArrayDesc {
                width: 64,
                height: 64,
                depth: 0,
                channel: 2,
                bits: 32,
                channels: 1,
                flags: ARRAY_SURFACE_LDST,
            },
        )
        .unwrap();
    let over_array = TextureDesc {
        dims: 2,
        size: [64, 64, 1],
        channel: 2,
        bits: 32,
        channels: 1,
        address_mode: [1; 3],
        array,
        ..TextureDesc::default()
    };
    c.tex_object_create(0, over_array.clone()).unwrap();
    c.surf_object_create(0, over_array).unwrap();
    assert!(world().mock.used_memory() >= (4 << 20) + 64 * 64 * 4);
    c.close();
    drop(c);
    mock_memory_settles_at(
        0,
        "allocations, module variables and arrays (after the texture and surface over one) are freed",
    );
}
