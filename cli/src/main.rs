//! `xpupool`: run a program on pooled accelerators (`run`), serve them (`server`), or
//! measure the path between them (`bench`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use xpupool_server::acl::AclBackend;
use xpupool_server::cuda::CudaBackend;
use xpupool_server::embedded::EmbeddedServer;
use xpupool_server::hip::HipBackend;
use xpupool_server::worker::IsolatedBackend;
use xpupool_server::{tls, Backend, MockBackend, Server, ServerConfig, TokenEntry};

mod pool;

#[derive(Parser)]
#[command(
    name = "xpupool",
    version,
    about = "Pool GPUs across machines: run unmodified CUDA programs where there is no GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run PROGRAM with xpupool's libcuda.so.1 in place of NVIDIA's driver. With no
    /// --server, an embedded pool server runs for as long as the program does.
    Run(RunArgs),
    /// Serve this host's accelerators (or the CPU mock) to xpupool clients.
    Server(ServerArgs),
    /// Show a server's devices and this tenant's use of them (--server), or the
    /// whole pool (--manager), as a table.
    Status(StatusArgs),
    /// Run a pool manager: servers register with it, jobs are placed by it.
    Manager(pool::ManagerArgs),
    /// Measure xpupool against an embedded mock server over QUIC on loopback, beside
    /// the raw transport and this machine's memcpy measured in the same run.
    Bench(BenchArgs),
    /// One session's worker process (started by the server, not by hand).
    #[command(hide = true)]
    ServerWorker(WorkerArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchCommand>,
    /// Print the figures as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// A shorter run: 100,000 launches, fewer round trips and copies.
    #[arg(long)]
    quick: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Replay a call trace (recorded with XPUPOOL_TRACE=FILE, plain or gzip) against
    /// an embedded mock server, over QUIC and the Unix socket, and report per step
    /// (cuProfilerStart … cuProfilerStop): wall time, round trips, synchronisation
    /// points, bytes sent. Without FILE, the committed PyTorch trace.
    Replay {
        /// The trace file.
        file: Option<PathBuf>,
    },
}

#[derive(Args)]
struct WorkerArgs {
    #[arg(long)]
    backend: String,
    #[arg(long, default_value_t = 16384)]
    mock_memory_mib: u64,
    #[arg(long, default_value_t = 1)]
    mock_devices: u32,
    /// The tenant's SM ceiling, which the worker's backend applies.
    #[arg(long)]
    sm_limit: Option<f64>,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    access: ServerAccess,
    #[command(flatten)]
    pool: pool::ManagerFlags,
    #[command(flatten)]
    pool_status: pool::PoolStatusArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// How a client reaches a pool server (`run --server`, `status`).
#[derive(Args)]
struct ServerAccess {
    /// A pool server (host:port, or unix:PATH of its socket on this host); `run`
    /// without one starts an embedded server.
    #[arg(long, env = "XPUPOOL_SERVER")]
    server: Option<String>,
    /// The server's certificate (PEM), with --server.
    #[arg(long, env = "XPUPOOL_SERVER_CERT")]
    cert: Option<PathBuf>,
    /// The server certificate's pinned fingerprint (sha256:HEX), instead of --cert.
    #[arg(long, env = "XPUPOOL_SERVER_FINGERPRINT")]
    fingerprint: Option<String>,
    /// The tenant token, with --server. Other local users can read a command line:
    /// prefer --token-file or XPUPOOL_TOKEN.
    #[arg(long, env = "XPUPOOL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the tenant token, with --server.
    #[arg(long, env = "XPUPOOL_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
}

impl ServerAccess {
    /// The tenant token, from --token or the first token of --token-file.
    fn token(&self) -> Result<String> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(token.clone()),
            (None, Some(path)) => Ok(read_token_file(path)?.swap_remove(0)),
            (None, None) => {
                bail!("no tenant token: give --token-file or XPUPOOL_TOKEN (or --token)")
            }
        }
    }

    /// Refuses a QUIC server that nothing given can verify.
    fn check_verifiable(&self, server: &str) -> Result<()> {
        if self.cert.is_none()
            && self.fingerprint.is_none()
            && !server.starts_with(xpupool_client::UNIX_PREFIX)
        {
            bail!("--server needs --cert or --fingerprint to verify the server");
        }
        Ok(())
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    access: ServerAccess,
    #[command(flatten)]
    pool: pool::ManagerFlags,
    #[command(flatten)]
    needs: pool::JobNeeds,
    /// Backend of the embedded server: `auto` (cuda when an NVIDIA driver is
    /// installed and works, else mock), `cuda`, `hip`, `acl` or `mock`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "acl", "cuda", "hip", "mock"])]
    backend: String,
    /// Device memory of each embedded mock device, in MiB.
    #[arg(long, default_value_t = 16384)]
    mock_memory_mib: u64,
    /// How many devices the embedded mock has.
    #[arg(long, default_value_t = 1)]
    mock_devices: u32,
    /// What the embedded mock does with kernel launches: `run` them on its PTX
    /// interpreter, or `skip` them — checked, never run, results wrong. `skip` exists
    /// only to record call traces (XPUPOOL_TRACE) of programs whose kernels the
    /// interpreter cannot run; it needs --backend mock.
    #[arg(long, default_value = "run", value_parser = ["run", "skip"])]
    kernels: String,
    /// Device memory the program may use (e.g. 1GiB), with the embedded server; the
    /// device reports this as its total memory.
    #[arg(long, value_parser = xpupool_server::parse_size)]
    memory_limit: Option<u64>,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    program: Vec<OsString>,
}

#[derive(Args)]
struct ServerArgs {
    /// The server's settings and tenant table (TOML; README: "Sharing a GPU host").
    /// `kill -HUP` reloads its tenants. The flags below override its settings; the
    /// one-tenant flags (--token, --token-file, --memory-limit) are for running
    /// without one.
    #[arg(long, conflicts_with_all = ["tokens", "token_files", "memory_limit"])]
    config: Option<PathBuf>,
    /// Backend: `cuda` (this host's NVIDIA GPUs), `hip` (its AMD GPUs, through
    /// libamdhip64; XPUPOOL_HIP_LIBRARY may name it), `acl` (its Ascend NPUs,
    /// through CANN; XPUPOOL_ACL_LIBRARY_DIR may name its lib64 folder) or `mock`
    /// (CPU interpreter; works everywhere). Default: the config's, else mock.
    #[arg(long, value_parser = ["acl", "cuda", "hip", "mock"])]
    backend: Option<String>,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Also listen on this Unix socket (default: server.sock in the state directory),
    /// the fast path for clients on this host: one that reaches the server on a
    /// loopback address moves to it by itself, with a shared-memory region for bulk
    /// copies (or name it: `XPUPOOL_SERVER=unix:PATH`). Only its owner may use it.
    #[arg(long, conflicts_with = "no_unix_socket")]
    unix_socket: Option<PathBuf>,
    /// Listen on QUIC only.
    #[arg(long)]
    no_unix_socket: bool,
    /// Where sessions run: `process` (each in its own worker process, so one tenant's
    /// fault cannot reach another), `none` (in the server), or `auto` (process for
    /// cuda and hip, none for mock).
    #[arg(long, value_parser = ["auto", "process", "none"])]
    isolation: Option<String>,
    /// Address to listen on (UDP, QUIC). Default: the config's, else 127.0.0.1:7800.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the certificate, key and generated token are kept.
    #[arg(long, env = "XPUPOOL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Certificate (PEM) to use instead of the self-signed one; needs --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Accepted tenant token, as TENANT=TOKEN or just TOKEN (tenant `default`);
    /// repeatable, or comma-separated in XPUPOOL_TOKENS. Other local users can read
    /// a command line: prefer --token-file or XPUPOOL_TOKENS. Without any, a token
    /// is generated once and kept in the state directory.
    #[arg(
        long = "token",
        env = "XPUPOOL_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// A file of accepted tokens, one TENANT=TOKEN (or TOKEN) a line; `#` starts a
    /// comment. Repeatable.
    #[arg(long = "token-file", env = "XPUPOOL_TOKEN_FILE")]
    token_files: Vec<PathBuf>,
    /// Sessions one tenant may have open at once, across its tokens.
    #[arg(long, default_value_t = xpupool_server::server::DEFAULT_MAX_SESSIONS_PER_TENANT)]
    max_sessions_per_tenant: usize,
    /// Device memory of each mock device, in MiB (default: the config's, else 16384).
    #[arg(long)]
    mock_memory_mib: Option<u64>,
    /// Join a pool: register with its manager(s) and admit only the clients its
    /// leases send (needs --join-token-file).
    #[command(flatten)]
    pool: pool::ManagerFlags,
    /// The pool's join token (the manager's state directory has it).
    #[arg(long, env = "XPUPOOL_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// Where clients reach this server, as the manager tells them (default:
    /// the listen address, which must then not be 0.0.0.0).
    #[arg(long)]
    advertise: Option<String>,
    /// How many mock devices (default: the config's, else 1).
    #[arg(long)]
    mock_devices: Option<u32>,
    /// Device memory each tenant may use at once (e.g. 8GiB); the device reports this
    /// as its total memory to that tenant.
    #[arg(long, value_parser = xpupool_server::parse_size)]
    memory_limit: Option<u64>,
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XPUPOOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether NVIDIA's driver is installed on this machine.
fn nvidia_driver_present() -> bool {
    // SAFETY: dlopen/dlclose of a library by name, with no symbols used.
    unsafe {
        let handle = libc::dlopen(
            c"libcuda.so.1".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_LOCAL | libc::RTLD_NOLOAD,
        );
        let handle = if handle.is_null() {
            libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL)
        } else {
            handle
        };
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
        true
    }
}

/// The mock's devices: how many, and MiB each.
#[derive(Clone, Copy)]
struct Mock {
    devices: u32,
    memory_mib: u64,
}

/// The backend for `name`.
fn backend(name: &str, mock: Mock) -> Result<Arc<dyn Backend>> {
    match name {
        "mock" => Ok(Arc::new(MockBackend::with_devices(
            mock.devices,
            mock.memory_mib << 20,
        ))),
        "cuda" => Ok(Arc::new(CudaBackend::open().context(
            "the cuda backend needs NVIDIA's driver (libcuda.so.1) and a GPU; use --backend mock without one",
        )?)),
        "hip" => Ok(Arc::new(HipBackend::open().context(
            "the hip backend needs ROCm's HIP runtime (libamdhip64.so) and a GPU; use --backend mock without one",
        )?)),
        "acl" => Ok(Arc::new(AclBackend::open().context(
            "the acl backend needs Huawei's CANN (libascendcl.so, libnnopbase.so, libopapi.so) and an NPU; use --backend mock without one",
        )?)),
        other => bail!("unknown backend {other:?} (available: acl, cuda, hip, mock)"),
    }
}

/// The backend a server serves: in-process, or with each session in a worker
/// process (`xpupool server-worker`), as `isolation` (`auto`, `process`, `none`) says.
fn serving_backend(name: &str, mock: Mock, isolation: &str) -> Result<Arc<dyn Backend>> {
    let isolate = match isolation {
        "auto" => matches!(name, "acl" | "cuda" | "hip"),
        "process" => true,
        _ => false,
    };
    if !isolate {
        return backend(name, mock);
    }
    let exe = std::env::current_exe().context("locating the xpupool executable")?;
    let command = vec![
        exe.into_os_string(),
        "server-worker".into(),
        "--backend".into(),
        name.into(),
        "--mock-memory-mib".into(),
        mock.memory_mib.to_string().into(),
        "--mock-devices".into(),
        mock.devices.to_string().into(),
    ];
    Ok(Arc::new(
        IsolatedBackend::new(command).with_context(|| format!("the {name} backend"))?,
    ))
}

/// Finds xpupool's `libcuda.so` beside this executable (or `XPUPOOL_SHIM`).
fn shim_library() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("XPUPOOL_SHIM") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the xpupool executable")?;
    let dir = exe.parent().context("executable has no folder")?;
    for name in ["libcuda.so.1", "libcuda.so", "../lib/xpupool/libcuda.so.1"] {
        let candidate = dir.join(name);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("xpupool's libcuda.so was not found beside {} (build it with `cargo build --release`, or set XPUPOOL_SHIM)", exe.display())
}

/// Finds xpupool's NVML stand-in beside this executable (or `XPUPOOL_NVML`).
/// Cargo names the built file `libnvidia_ml.so`; its SONAME is `libnvidia-ml.so.1`.
fn nvml_library() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("XPUPOOL_NVML") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        "libnvidia_ml.so",
        "libnvidia-ml.so",
        "libnvidia-ml.so.1",
        "../lib/xpupool/libnvidia-ml.so.1",
    ]
    .iter()
    .map(|name| dir.join(name))
    .find(|candidate| candidate.exists())
}

/// The folder of xpupool's HIP stand-in (`libamdhip64.so*`, made by
/// scripts/build-hip-libs.sh beside this executable, or `XPUPOOL_HIP_DIR`), if
/// it is there: HIP programs find it before the system's on LD_LIBRARY_PATH.
fn hip_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("XPUPOOL_HIP_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe().ok()?.parent()?.join("hip"),
    };
    dir.join("libamdhip64.so.5").exists().then_some(dir)
}

/// The folder of xpupool's CANN stand-in (`libascendcl.so`, `libopapi.so`, …,
/// made by scripts/build-acl-libs.sh beside this executable, or
/// `XPUPOOL_ACL_DIR`), if it is there: torch_npu opens CANN's libraries by bare
/// name, so they are found on LD_LIBRARY_PATH, before any CANN install's.
fn acl_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("XPUPOOL_ACL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe().ok()?.parent()?.join("acl"),
    };
    dir.join("libascendcl.so").exists().then_some(dir)
}

/// Whether `program` is a Python whose environment has torch_npu: torch_npu
/// refuses to start beside a second accelerator, so such a job sees no CUDA
/// device (a CUDA job cannot run in that environment with torch_npu loaded).
fn is_torch_npu_python(program: &std::ffi::OsStr) -> bool {
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.starts_with("python") {
        return false;
    }
    std::process::Command::new(program)
        .args([
            "-c",
            "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('torch_npu') else 1)",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A folder holding `libcuda.so.1` → the shim and, when it is built,
/// `libnvidia-ml.so.1` → the NVML stand-in, for LD_LIBRARY_PATH.
fn shim_dir(shim: &Path) -> Result<tempdir::Dir> {
    let dir = tempdir::Dir::new("xpupool-lib")?;
    std::os::unix::fs::symlink(shim.canonicalize()?, dir.path().join("libcuda.so.1"))
        .context("linking libcuda.so.1")?;
    match nvml_library() {
        Some(nvml) => {
            let linked = nvml.canonicalize().and_then(|target| {
                std::os::unix::fs::symlink(target, dir.path().join("libnvidia-ml.so.1"))
            });
            if let Err(e) = linked {
                tracing::warn!("not providing NVML: linking {}: {e}", nvml.display());
            }
        }
        None => tracing::warn!("xpupool's libnvidia_ml.so was not found beside the executable (build it with `cargo build --release`, or set XPUPOOL_NVML); NVML queries will not see the pooled device"),
    }
    // The AMD SMI / ROCm SMI stand-in (amdsmi/), when built, under the names callers load.
    let beside = std::env::current_exe().map(|exe| exe.with_file_name("libamd_smi.so"));
    let amdsmi = std::env::var_os("XPUPOOL_AMDSMI")
        .map(PathBuf::from)
        .or(beside.ok());
    if let Some(target) = amdsmi.and_then(|lib| lib.canonicalize().ok()) {
        for name in [
            "libamd_smi.so",
            "libamd_smi.so.24",
            "libamd_smi.so.25",
            "libamd_smi.so.26",
            "librocm_smi64.so",
            "librocm_smi64.so.1",
            "librocm_smi64.so.5",
            "librocm_smi64.so.6",
            "librocm_smi64.so.7",
        ] {
            let _ = std::os::unix::fs::symlink(&target, dir.path().join(name));
        }
    }
    Ok(dir)
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A temporary folder removed on drop.
    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn new(prefix: &str) -> std::io::Result<Self> {
            let path = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                &xpupool_server::random_token()[..8]
            ));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn prepend_path(var: &str, first: &Path) -> OsString {
    let mut value = OsString::from(first);
    if let Some(rest) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        value.push(if var == "LD_PRELOAD" { " " } else { ":" });
        value.push(rest);
    }
    value
}

fn run(args: RunArgs) -> Result<ExitCode> {
    init_logging("warn");
    let shim = shim_library()?;
    let lib_dir = shim_dir(&shim)?;
    let mut preload = OsString::from(lib_dir.path().join("libcuda.so.1"));
    let nvml = lib_dir.path().join("libnvidia-ml.so.1");
    if nvml.exists() {
        preload.push(" ");
        preload.push(&nvml);
    }
    let mut command = std::process::Command::new(&args.program[0]);
    command.args(&args.program[1..]);
    command.env(
        "LD_PRELOAD",
        prepend_path("LD_PRELOAD", Path::new(&preload)),
    );
    let mut libraries = OsString::from(lib_dir.path());
    if let Some(hip) = hip_dir() {
        libraries.push(":");
        libraries.push(hip);
    }
    if let Some(acl) = acl_dir() {
        libraries.push(":");
        libraries.push(&acl);
        if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none()
            && is_torch_npu_python(&args.program[0])
        {
            eprintln!("xpupool: a torch_npu job: its CUDA stand-in shows no device (CUDA_VISIBLE_DEVICES=)");
            command.env("CUDA_VISIBLE_DEVICES", "");
        }
        // torch_npu's operator plugin looks for CANN's split operator libraries
        // under ASCEND_HOME_PATH: there, it finds the stand-in's.
        command
            .env("ASCEND_HOME_PATH", &acl)
            .env("ASCEND_OPP_PATH", acl.join("opp"));
        // npu-smi, on the pooled device (scripts count devices with `npu-smi info`).
        let bin = acl.join("bin");
        if bin.join("npu-smi").exists() {
            command.env("PATH", prepend_path("PATH", &bin));
        }
    }
    command.env(
        "LD_LIBRARY_PATH",
        prepend_path("LD_LIBRARY_PATH", Path::new(&libraries)),
    );

    if args.kernels == "skip" && args.access.server.is_some() {
        bail!("--kernels skip is an option of the embedded mock server, not of --server");
    }
    let mock = Mock {
        devices: args.mock_devices,
        memory_mib: args.mock_memory_mib,
    };
    let lease = match args.pool.access()? {
        Some(_) if args.access.server.is_some() => {
            bail!("give --server or --manager (XPUPOOL_SERVER or XPUPOOL_MANAGER), not both")
        }
        Some(access) => {
            let lease = pool::Lease::obtain(access, args.access.token()?, &args.needs)?;
            let placement = lease.placement();
            let claims = &placement.claims;
            eprintln!(
                "xpupool: placed on {} device{} {:?} with {} MiB each (lease {})",
                claims.server,
                if claims.devices.len() == 1 { "" } else { "s" },
                claims.devices,
                claims.memory >> 20,
                claims.lease
            );
            command
                .env("XPUPOOL_SERVER", &claims.server)
                .env("XPUPOOL_SERVER_FINGERPRINT", &placement.fingerprint)
                .env("XPUPOOL_TOKEN", &placement.token)
                .env_remove("XPUPOOL_SERVER_CERT")
                .env_remove("XPUPOOL_TOKEN_FILE");
            Some(lease)
        }
        None => None,
    };
    let _embedded = match &args.access.server {
        _ if lease.is_some() => None,
        Some(server) => {
            let token = args.access.token()?;
            args.access.check_verifiable(server)?;
            command
                .env("XPUPOOL_SERVER", server)
                .env("XPUPOOL_TOKEN", token);
            if let Some(cert) = &args.access.cert {
                command.env(
                    "XPUPOOL_SERVER_CERT",
                    cert.canonicalize()
                        .with_context(|| format!("{}", cert.display()))?,
                );
            }
            if let Some(fp) = &args.access.fingerprint {
                command.env("XPUPOOL_SERVER_FINGERPRINT", fp);
            }
            None
        }
        None => {
            const MOCK: &str = "the embedded server uses the mock backend (CUDA kernels run on the CPU PTX interpreter, HIP kernels on its gfx90a interpreter)";
            if args.kernels == "skip" && args.backend != "mock" {
                bail!("--kernels skip needs --backend mock");
            }
            let chosen = match args.backend.as_str() {
                "mock" if args.kernels == "skip" => {
                    eprintln!("xpupool: the embedded server uses the mock backend and SKIPS every kernel (--kernels skip): results are wrong; for recording traces only");
                    Arc::new(
                        MockBackend::with_devices(mock.devices, mock.memory_mib << 20)
                            .skipping_kernels(),
                    )
                }
                "auto" if nvidia_driver_present() => {
                    match serving_backend("cuda", mock, "auto") {
                        Ok(cuda) => cuda,
                        Err(e) => {
                            eprintln!("xpupool: an NVIDIA driver is installed but unusable ({e:#}); {MOCK}");
                            backend("mock", mock)?
                        }
                    }
                }
                "auto" => {
                    eprintln!("xpupool: no NVIDIA driver on this machine; {MOCK}");
                    backend("mock", mock)?
                }
                name => serving_backend(name, mock, "auto")?,
            };
            if chosen.name() == "cuda" {
                eprintln!("xpupool: the embedded server uses the cuda backend (NVIDIA's driver)");
            } else if args.backend == "mock" && args.kernels == "run" {
                eprintln!("xpupool: {MOCK}");
            }
            let server = EmbeddedServer::start_for_run(chosen, args.memory_limit)?;
            command
                .env("XPUPOOL_SERVER", server.client_address())
                .env("XPUPOOL_SERVER_CERT", server.cert_path())
                .env("XPUPOOL_TOKEN", server.token())
                .env_remove("XPUPOOL_SERVER_FINGERPRINT");
            Some(server)
        }
    };
    // The child gets the terminal's signals; this process only waits for it.
    // SAFETY: ignoring SIGINT/SIGQUIT in this process; the child resets them on exec.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = command.status();
    if let Some(lease) = lease {
        lease.release();
    }
    let status =
        status.with_context(|| format!("starting {}", args.program[0].to_string_lossy()))?;
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn state_dir(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(state).join("xpupool"));
    }
    let home =
        std::env::var_os("HOME").context("neither --state-dir, XDG_STATE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/state/xpupool"))
}

/// Reads a token file: one `TENANT=TOKEN` or `TOKEN` a line, `#` comments. Warns
/// when other users may read it.
fn read_token_file(path: &Path) -> Result<Vec<String>> {
    xpupool_server::config::read_token_lines(path).map_err(anyhow::Error::msg)
}

/// Tells the user that a secret given on the command line is not secret.
fn warn_if_on_command_line(matches: Option<&clap::ArgMatches>, id: &str, instead: &str) {
    if matches.and_then(|m| m.value_source(id)) == Some(clap::parser::ValueSource::CommandLine) {
        eprintln!(
            "xpupool: warning: a token given on the command line can be read by every local user in the process list; use {instead}"
        );
    }
}

fn tokens(args: &ServerArgs, dir: &Path) -> Result<(Vec<TokenEntry>, Option<PathBuf>)> {
    let mut given = args.tokens.clone();
    for path in &args.token_files {
        given.extend(read_token_file(path)?);
    }
    if !given.is_empty() {
        let entries = given
            .iter()
            .map(|t| match t.split_once('=') {
                Some((tenant, token)) => one_tenant(args, tenant, token),
                None => one_tenant(args, "default", t),
            })
            .collect();
        return Ok((entries, None));
    }
    let path = dir.join("token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            std::fs::create_dir_all(dir)?;
            let token = xpupool_server::random_token();
            tls::write_private(&path, token.as_bytes())?;
            token
        }
    };
    Ok((vec![one_tenant(args, "default", &token)], Some(path)))
}

/// A token of the flags' one-tenant setup.
fn one_tenant(args: &ServerArgs, tenant: &str, token: &str) -> TokenEntry {
    let mut entry = TokenEntry::new(tenant, token, args.memory_limit);
    entry.policy.max_sessions = args.max_sessions_per_tenant;
    entry
}

fn serve(args: ServerArgs) -> Result<ExitCode> {
    use xpupool_server::config::ServerSettings;
    init_logging("info");
    let dir = state_dir(args.state_dir.clone())?;
    let settings = match &args.config {
        Some(path) => Some(ServerSettings::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let file = settings.as_ref();
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => tls::load(cert, key)?,
        _ => tls::load_or_create(&dir)?,
    };
    let joining = match args.pool.access()? {
        Some(access) => {
            let path = args.join_token_file.as_ref().context(
                "--manager needs --join-token-file (the manager's state directory has join-token)",
            )?;
            Some((access, pool::read_pool_token(path)?))
        }
        None => None,
    };
    if let (Some(settings), None) = (file, &joining) {
        settings.check_tenants().map_err(anyhow::Error::msg)?;
    }
    let (tokens, token_file) = match file {
        _ if joining.is_some() => (Vec::new(), None),
        Some(settings) => (settings.tokens.clone(), None),
        None => tokens(&args, &dir)?,
    };
    let backend_name = args
        .backend
        .clone()
        .or_else(|| file.and_then(|f| f.backend.clone()))
        .unwrap_or_else(|| "mock".to_owned());
    let mock_file = file.and_then(|f| f.mock.clone());
    let mock = Mock {
        devices: args
            .mock_devices
            .or(mock_file.as_ref().map(|m| m.devices))
            .unwrap_or(1),
        memory_mib: args
            .mock_memory_mib
            .or(mock_file.as_ref().map(|m| m.memory >> 20))
            .unwrap_or(16384),
    };
    let isolation = args
        .isolation
        .clone()
        .or_else(|| file.and_then(|f| f.isolation.clone()))
        .unwrap_or_else(|| "auto".to_owned());
    let listen = args
        .listen
        .or(file.and_then(|f| f.listen))
        .unwrap_or_else(|| "127.0.0.1:7800".parse().expect("literal address"));
    let metrics_listen = args.metrics_listen.or(file.and_then(|f| f.metrics_listen));
    let backend = serving_backend(&backend_name, mock, &isolation)?;
    let device_count = backend.devices().len();
    if let Some(settings) = file {
        settings
            .check_devices(device_count)
            .map_err(anyhow::Error::msg)?;
    }
    if backend_name == "mock" {
        eprintln!(
            "xpupool: serving the mock backend (CPU PTX interpreter, {} device{} of {} MiB)",
            mock.devices,
            if mock.devices == 1 { "" } else { "s" },
            mock.memory_mib
        );
    }
    if backend.name() == "cuda" && tokens.iter().any(|t| t.policy.sm_limit.is_some()) {
        let version = backend.driver_version();
        let how = if xpupool_server::worker::mps_running() {
            Some("the MPS daemon's active thread percentage for each session's worker".to_owned())
        } else if version >= 12040 {
            Some(format!("a green context per session (driver {}.{}); a session whose device refuses one says so, and has its time share only", version / 1000, version % 1000 / 10))
        } else {
            None
        };
        for t in tokens.iter().filter(|t| t.policy.sm_limit.is_some()) {
            match &how {
                Some(how) => eprintln!("xpupool: tenant {}: sm_limit through {how}", t.tenant),
                None => eprintln!("xpupool: warning: tenant {}: sm_limit is not enforced (no MPS daemon, and driver {version} has no green contexts, which need CUDA 12.4); its compute share still applies", t.tenant),
            }
        }
    }
    // Threads for blocking work (admitting a session, ending one) go once idle
    // for a second, so the server's thread count follows its load.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()?;
    let config_path = args.config.clone();
    runtime.block_on(async move {
        let cert_path = identity.cert_path.clone();
        let fingerprint = identity.fingerprint();
        let server = Server::bind(ServerConfig {
            listen,
            identity,
            tokens,
            backend,
            module_cache_dir: Some(dir.join("modules")),
            unix_socket: match (&args.unix_socket, args.no_unix_socket) {
                (_, true) => None,
                (Some(path), false) => Some(path.clone()),
                (None, false) => Some(dir.join("server.sock")),
            },
        })?;
        let bound = server.local_addr()?;
        println!("listening: {bound}");
        println!("certificate: {}", cert_path.display());
        println!("fingerprint: {fingerprint}");
        println!("devices: {device_count}");
        match (token_file, joining) {
            (_, Some((access, join_token))) => {
                let address = match &args.advertise {
                    Some(a) => a.clone(),
                    None if bound.ip().is_unspecified() => bail!(
                        "listening on {bound}: give --advertise HOST:PORT, the address clients reach this server at"
                    ),
                    None => bound.to_string(),
                };
                println!("pool: {} (admitting its leases, as {address})", access.addresses.join(","));
                let membership =
                    xpupool_server::membership::Membership::new(xpupool_server::membership::JoinSettings {
                        access,
                        join_token,
                        key_file: Some(dir.join(format!(
                            "pool-key-{}",
                            address.replace(['/', ':', '[', ']'], "_")
                        ))),
                        address,
                        fingerprint: fingerprint.clone(),
                    });
                server.tenants().join_pool(membership.clone());
                tokio::spawn(membership.run(server.host()));
            }
            (Some(path), None) => println!("token file: {}", path.display()),
            (None, None) => println!("tokens: as given"),
        }
        if let Some(listen) = metrics_listen {
            let bound =
                xpupool_server::metrics::start(server.host(), server.tenants(), listen).await?;
            println!("metrics: http://{bound}/metrics");
        }
        match (config_path, server.tenants().pool()) {
            (Some(path), None) => {
                tokio::spawn(reload_on_hangup(path, server.tenants(), device_count));
            }
            // A hang-up must not end a pool server: there is nothing to reload.
            (_, Some(_)) => {
                tokio::spawn(async {
                    use tokio::signal::unix::{signal, SignalKind};
                    if let Ok(mut hangups) = signal(SignalKind::hangup()) {
                        while hangups.recv().await.is_some() {
                            tracing::info!("SIGHUP: in a pool the manager's leases are the tenant table; nothing to reload");
                        }
                    }
                });
            }
            (None, None) => {}
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = server.serve() => {}
            _ = tokio::signal::ctrl_c() => eprintln!("xpupool: shutting down"),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// On each SIGHUP, reads the config again and, if it is valid, replaces the tenant
/// table; live sessions carry on either way. Settings other than the tenants
/// (listen, backend, …) take effect at the next start.
async fn reload_on_hangup(
    path: PathBuf,
    tenants: xpupool_server::server::Tenants,
    device_count: usize,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch for SIGHUP: the tenant table will not reload");
        return;
    };
    while hangups.recv().await.is_some() {
        let loaded = xpupool_server::config::ServerSettings::load(&path).and_then(|s| {
            s.check_devices(device_count)?;
            s.check_tenants()?;
            Ok(s)
        });
        match loaded {
            Ok(settings) => {
                let count = settings.tokens.len();
                tenants.reload(settings.tokens);
                tracing::info!(tenants = count, "reloaded {}", path.display());
            }
            Err(e) => {
                tracing::error!("not reloading, the tenant table stays as it was: {e}")
            }
        }
    }
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    use xpupool_protocol::Calls;
    init_logging("warn");
    if let Some(manager) = args.pool.access()? {
        let token = match &args.pool_status.operator_token_file {
            Some(path) => pool::read_pool_token(path)?,
            None => args.access.token()?,
        };
        return pool::status(manager, token, &args.pool_status, args.json);
    }
    if args.pool_status.usage {
        bail!("--usage needs --manager");
    }
    let access = &args.access;
    let server = access
        .server
        .clone()
        .context("status needs --server or --manager (or XPUPOOL_SERVER, XPUPOOL_MANAGER)")?;
    access.check_verifiable(&server)?;
    let settings = xpupool_client::Settings {
        server: server.clone(),
        cert: access.cert.as_ref().map(|p| p.display().to_string()),
        fingerprint: access.fingerprint.clone(),
        token: access.token()?,
        quic_only: false,
    };
    let conn = xpupool_client::Connection::open(&settings)?;
    let status = conn
        .server_status()
        .map_err(|e| anyhow::anyhow!("{server}: {}", e.message))?;
    conn.close();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", status_table(&server, &status));
    Ok(ExitCode::SUCCESS)
}

/// `xpupool status` for someone at a terminal.
fn status_table(server: &str, status: &xpupool_protocol::api::ServerStatus) -> String {
    use std::fmt::Write as _;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "server {server}: {} backend, {} session{} of this tenant\n",
        status.backend,
        status.sessions,
        if status.sessions == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "{:<4} {:<40} {:>10} {:>10} {:>6}",
        "DEV", "NAME / UUID", "USED GiB", "TOTAL GiB", "UTIL"
    );
    for d in &status.devices {
        let _ = writeln!(
            out,
            "{:<4} {:<40} {:>10.2} {:>10.2} {:>5.0}%",
            d.device,
            d.name,
            gib(d.memory_used),
            gib(d.memory_total),
            d.utilization * 100.0
        );
        let _ = writeln!(out, "{:<4} {:<40}", "", d.uuid);
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<4} {:>10} {:>10} {:>6} {:>10} {:>10} {:>10} {:>5}",
        "TENANT", "DEV", "USED GiB", "LIMIT GiB", "SHARE", "BUSY s", "HELD s", "LAUNCHES", "OOM"
    );
    for t in &status.tenants {
        let limit = t
            .memory_limit
            .map_or_else(|| "-".to_owned(), |l| format!("{:.2}", gib(l)));
        let _ = writeln!(
            out,
            "{:<12} {:<4} {:>10.2} {:>10} {:>6.2} {:>10.2} {:>10.2} {:>10} {:>5}",
            t.tenant,
            t.device,
            gib(t.memory_used),
            limit,
            t.compute_share,
            t.busy_seconds,
            t.throttled_seconds,
            t.kernel_launches,
            t.oom
        );
    }
    out
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    init_logging("warn");
    if let Some(BenchCommand::Replay { file }) = &args.what {
        let (trace, name) = match file {
            Some(path) => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let trace = xpupool_bench::replay::Trace::parse(&bytes)
                    .with_context(|| format!("{}", path.display()))?;
                (trace, path.display().to_string())
            }
            None => (
                xpupool_bench::replay::Trace::committed()?,
                xpupool_bench::replay::COMMITTED_NAME.to_owned(),
            ),
        };
        let report = xpupool_bench::replay_report(&trace, &name)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{report}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let options = if args.quick {
        xpupool_bench::Options::quick()
    } else {
        xpupool_bench::Options::full()
    };
    let report = xpupool_bench::run(&options)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    warn_if_on_command_line(
        matches.subcommand_matches("server"),
        "tokens",
        "--token-file or XPUPOOL_TOKENS",
    );
    for command in ["run", "status"] {
        warn_if_on_command_line(
            matches.subcommand_matches(command),
            "token",
            "--token-file or XPUPOOL_TOKEN",
        );
    }
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Server(args) => serve(args),
        Command::Status(args) => status(args),
        Command::Manager(args) => pool::manager(args),
        Command::Bench(args) => bench(args),
        Command::ServerWorker(args) => {
            init_logging("warn");
            let mock = Mock {
                devices: args.mock_devices,
                memory_mib: args.mock_memory_mib,
            };
            let policy = xpupool_server::tenancy::Policy {
                sm_limit: args.sm_limit,
                ..Default::default()
            };
            xpupool_server::worker::serve_worker(backend(&args.backend, mock), policy)
                .map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xpupool: {e:#}");
        ExitCode::from(1)
    })
}
