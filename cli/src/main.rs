//! `xpupool`: run a program on pooled accelerators (`run`), serve them (`server`), or
//! measure the path between them (`bench`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use xpupool_server::cuda::CudaBackend;
use xpupool_server::embedded::EmbeddedServer;
use xpupool_server::worker::IsolatedBackend;
use xpupool_server::{tls, Backend, MockBackend, Server, ServerConfig, TokenEntry};

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
}

#[derive(Args)]
struct RunArgs {
    /// A pool server to use instead of the embedded one (host:port).
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
    /// Backend of the embedded server: `auto` (cuda when an NVIDIA driver is
    /// installed and works, else mock), `cuda` or `mock`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cuda", "mock"])]
    backend: String,
    /// Device memory of the embedded mock device, in MiB.
    #[arg(long, default_value_t = 16384)]
    mock_memory_mib: u64,
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
    /// Backend: `cuda` (this host's NVIDIA GPUs) or `mock` (CPU interpreter; works everywhere).
    #[arg(long, default_value = "mock")]
    backend: String,
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
    /// cuda, none for mock).
    #[arg(long, default_value = "auto", value_parser = ["auto", "process", "none"])]
    isolation: String,
    /// Address to listen on (UDP, QUIC).
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: SocketAddr,
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
    /// Device memory of the mock device, in MiB.
    #[arg(long, default_value_t = 16384)]
    mock_memory_mib: u64,
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

/// The backend for `name`.
fn backend(name: &str, mock_memory_mib: u64) -> Result<Arc<dyn Backend>> {
    match name {
        "mock" => Ok(Arc::new(MockBackend::new(mock_memory_mib << 20))),
        "cuda" => Ok(Arc::new(CudaBackend::open().context(
            "the cuda backend needs NVIDIA's driver (libcuda.so.1) and a GPU; use --backend mock without one",
        )?)),
        other => bail!("unknown backend {other:?} (available: cuda, mock)"),
    }
}

/// The backend a server serves: in-process, or with each session in a worker
/// process (`xpupool server-worker`), as `isolation` (`auto`, `process`, `none`) says.
fn serving_backend(name: &str, mock_memory_mib: u64, isolation: &str) -> Result<Arc<dyn Backend>> {
    let isolate = match isolation {
        "auto" => name == "cuda",
        "process" => true,
        _ => false,
    };
    if !isolate {
        return backend(name, mock_memory_mib);
    }
    let exe = std::env::current_exe().context("locating the xpupool executable")?;
    let command = vec![
        exe.into_os_string(),
        "server-worker".into(),
        "--backend".into(),
        name.into(),
        "--mock-memory-mib".into(),
        mock_memory_mib.to_string().into(),
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
    command.env(
        "LD_LIBRARY_PATH",
        prepend_path("LD_LIBRARY_PATH", lib_dir.path()),
    );

    if args.kernels == "skip" && args.server.is_some() {
        bail!("--kernels skip is an option of the embedded mock server, not of --server");
    }
    let _embedded = match &args.server {
        Some(server) => {
            let token = match (&args.token, &args.token_file) {
                (Some(token), _) => token.clone(),
                (None, Some(path)) => read_token_file(path)?.swap_remove(0),
                (None, None) => {
                    bail!("--server needs --token-file or XPUPOOL_TOKEN (or --token)")
                }
            };
            if args.cert.is_none()
                && args.fingerprint.is_none()
                && !server.starts_with(xpupool_client::UNIX_PREFIX)
            {
                bail!("--server needs --cert or --fingerprint to verify the server");
            }
            command
                .env("XPUPOOL_SERVER", server)
                .env("XPUPOOL_TOKEN", token);
            if let Some(cert) = &args.cert {
                command.env(
                    "XPUPOOL_SERVER_CERT",
                    cert.canonicalize()
                        .with_context(|| format!("{}", cert.display()))?,
                );
            }
            if let Some(fp) = &args.fingerprint {
                command.env("XPUPOOL_SERVER_FINGERPRINT", fp);
            }
            None
        }
        None => {
            const MOCK: &str = "the embedded server uses the mock backend (kernels run on the CPU PTX interpreter)";
            if args.kernels == "skip" && args.backend != "mock" {
                bail!("--kernels skip needs --backend mock");
            }
            let chosen = match args.backend.as_str() {
                "mock" if args.kernels == "skip" => {
                    eprintln!("xpupool: the embedded server uses the mock backend and SKIPS every kernel (--kernels skip): results are wrong; for recording traces only");
                    Arc::new(MockBackend::new(args.mock_memory_mib << 20).skipping_kernels())
                }
                "auto" if nvidia_driver_present() => {
                    match serving_backend("cuda", args.mock_memory_mib, "auto") {
                        Ok(cuda) => cuda,
                        Err(e) => {
                            eprintln!("xpupool: an NVIDIA driver is installed but unusable ({e:#}); {MOCK}");
                            backend("mock", args.mock_memory_mib)?
                        }
                    }
                }
                "auto" => {
                    eprintln!("xpupool: no NVIDIA driver on this machine; {MOCK}");
                    backend("mock", args.mock_memory_mib)?
                }
                name => serving_backend(name, args.mock_memory_mib, "auto")?,
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
    let status = command
        .status()
        .with_context(|| format!("starting {}", args.program[0].to_string_lossy()))?;
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
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        eprintln!(
            "xpupool: warning: {} can be read by other users; `chmod 600` it",
            path.display()
        );
    }
    let tokens: Vec<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!tokens.is_empty(), "{} holds no token", path.display());
    Ok(tokens)
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
                Some((tenant, token)) => TokenEntry {
                    tenant: tenant.to_owned(),
                    token: token.to_owned(),
                    memory_limit: args.memory_limit,
                },
                None => TokenEntry {
                    tenant: "default".to_owned(),
                    token: t.clone(),
                    memory_limit: args.memory_limit,
                },
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
    Ok((
        vec![TokenEntry {
            tenant: "default".to_owned(),
            token,
            memory_limit: args.memory_limit,
        }],
        Some(path),
    ))
}

fn serve(args: ServerArgs) -> Result<ExitCode> {
    init_logging("info");
    let dir = state_dir(args.state_dir.clone())?;
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => tls::load(cert, key)?,
        _ => tls::load_or_create(&dir)?,
    };
    let (tokens, token_file) = tokens(&args, &dir)?;
    let backend = serving_backend(&args.backend, args.mock_memory_mib, &args.isolation)?;
    if args.backend == "mock" {
        eprintln!(
            "xpupool: serving the mock backend (CPU PTX interpreter, {} MiB of device memory)",
            args.mock_memory_mib
        );
    }
    // Threads for blocking work (admitting a session, ending one) go once idle
    // for a second, so the server's thread count follows its load.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()?;
    runtime.block_on(async move {
        let cert_path = identity.cert_path.clone();
        let fingerprint = identity.fingerprint();
        let server = Server::bind(ServerConfig {
            listen: args.listen,
            identity,
            tokens,
            backend,
            module_cache_dir: Some(dir.join("modules")),
            unix_socket: match (&args.unix_socket, args.no_unix_socket) {
                (_, true) => None,
                (Some(path), false) => Some(path.clone()),
                (None, false) => Some(dir.join("server.sock")),
            },
            max_sessions_per_tenant: args.max_sessions_per_tenant,
        })?;
        println!("listening: {}", server.local_addr()?);
        println!("certificate: {}", cert_path.display());
        println!("fingerprint: {fingerprint}");
        match token_file {
            Some(path) => println!("token file: {}", path.display()),
            None => println!("tokens: as given"),
        }
        tokio::select! {
            _ = server.serve() => {}
            _ = tokio::signal::ctrl_c() => eprintln!("xpupool: shutting down"),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
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
    warn_if_on_command_line(
        matches.subcommand_matches("run"),
        "token",
        "--token-file or XPUPOOL_TOKEN",
    );
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Server(args) => serve(args),
        Command::Bench(args) => bench(args),
        Command::ServerWorker(args) => {
            init_logging("warn");
            xpupool_server::worker::serve_worker(backend(&args.backend, args.mock_memory_mib))
                .map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xpupool: {e:#}");
        ExitCode::from(1)
    })
}
