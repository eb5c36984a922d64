//! Dying and hostile peers, each in a process of its own: `xpupool server`
//! processes on loopback, and clients that are this very binary started again
//! with `XPUPOOL_FAULT_ROLE` set (see [`role`]). Clients are killed mid-copy and
//! mid-kernel, servers are killed and restarted, and what the server holds is read
//! from outside: the tenant's ledger (through `cuMemGetInfo` of another session of
//! the same tenant) and the server's `/proc` status.
//!
//! Every request loop is bounded in count and time, and only loopback addresses
//! are used. Prints one line per check and closes with "N passed, N failed".

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xpupool_client::{Connection, Settings};
use xpupool_protocol::api::LaunchDims;
use xpupool_protocol::Calls;

const XPUPOOL: &str = env!("CARGO_BIN_EXE_xpupool");

/// Kernels the clients run: an in-place `buf[i] = buf[i] * mul + add`, and one
/// thread spinning `count` times.
const PTX: &str = r#"
.version 8.0
.target sm_90
.address_size 64

.visible .entry affine(.param .u64 buf, .param .u32 n, .param .u32 mul, .param .u32 add)
{
    .reg .pred %p<2>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [buf];
    ld.param.u32 %r1, [n];
    ld.param.u32 %r2, [mul];
    ld.param.u32 %r3, [add];
    mov.u32 %r4, %ctaid.x;
    mov.u32 %r5, %ntid.x;
    mov.u32 %r6, %tid.x;
    mad.lo.s32 %r7, %r4, %r5, %r6;
    setp.ge.u32 %p1, %r7, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r7, 4;
    add.s64 %rd4, %rd2, %rd3;
    ld.global.u32 %r8, [%rd4];
    mad.lo.s32 %r9, %r8, %r2, %r3;
    st.global.u32 [%rd4], %r9;
DONE:
    ret;
}

.visible .entry spin(.param .u64 out, .param .u32 count)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .b64 %rd<3>;
    ld.param.u64 %rd1, [out];
    ld.param.u32 %r1, [count];
    mov.u32 %r2, 0;
LOOP:
    add.u32 %r2, %r2, 1;
    setp.lt.u32 %p1, %r2, %r1;
    @%p1 bra LOOP;
    cvta.to.global.u64 %rd2, %rd1;
    st.global.u32 [%rd2], %r2;
    ret;
}
"#;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
}

/// The client processes: what each role does, and how it reports (one line a step,
/// on stdout).
mod role {
    use super::*;

    pub(super) fn run(role: &str) -> i32 {
        let conn = match Connection::open_from_env() {
            Ok(conn) => conn,
            Err(e) => {
                println!("ERROR connect {} {e:#}", now_ms());
                return 4;
            }
        };
        let result = match role {
            "hold" => hold(conn),
            "exit" => exit(conn),
            "work" => work(&conn),
            "spin" => spin(&conn),
            other => Err(format!("unknown role {other}")),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                println!("ERROR {} {e}", now_ms());
                let _ = std::io::stdout().flush();
                4
            }
        }
    }

    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn bytes_env(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Allocates and fills `XPUPOOL_FAULT_BYTES`, then waits to be killed.
    fn hold(conn: Connection) -> Result<i32, String> {
        let bytes = bytes_env("XPUPOOL_FAULT_BYTES", 8 << 20);
        let a = conn.mem_alloc(0, bytes).map_err(|e| e.to_string())?;
        conn.memset(a, 0x5a, 1, bytes, 0)
            .map_err(|e| e.to_string())?;
        conn.synchronize().map_err(|e| e.to_string())?;
        say("READY");
        std::thread::sleep(Duration::from_secs(60));
        drop(conn);
        Ok(0)
    }

    static CLOSING: std::sync::OnceLock<Connection> = std::sync::OnceLock::new();

    extern "C" fn close_at_exit() {
        if let Some(conn) = CLOSING.get() {
            conn.close();
        }
    }

    /// Allocates, then exits the way a CUDA program does: the connection is closed
    /// from an `atexit` handler, as the shim closes it, after this thread's
    /// thread-locals are gone.
    fn exit(conn: Connection) -> Result<i32, String> {
        let bytes = bytes_env("XPUPOOL_FAULT_BYTES", 8 << 20);
        conn.mem_alloc(0, bytes).map_err(|e| e.to_string())?;
        conn.synchronize().map_err(|e| e.to_string())?;
        let _ = CLOSING.set(conn);
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(close_at_exit) };
        say(&format!("EXITING {}", now_ms()));
        std::process::exit(0);
    }

    /// Rounds of: allocate, upload checksummed data, run `affine` on part of it,
    /// download and check every byte, free; for `XPUPOOL_FAULT_SECONDS`. Announces
    /// each phase so a killer knows what it interrupted.
    fn work(conn: &Connection) -> Result<i32, String> {
        let seconds = bytes_env("XPUPOOL_FAULT_SECONDS", 5);
        let mut seed = bytes_env("XPUPOOL_FAULT_SEED", 1) | 1;
        let words = bytes_env("XPUPOOL_FAULT_WORDS", 256 << 10) as usize;
        let kernel_words = (words / 16).max(1) as u32;
        let pause = bytes_env("XPUPOOL_FAULT_PAUSE_MS", 0);
        let affine = kernel(conn, "affine")?;
        say("READY");
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut rounds = 0u64;
        while Instant::now() < deadline && rounds < 10_000 {
            let data: Vec<u32> = (0..words)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u32
                })
                .collect();
            let (mul, add) = (3 + (rounds as u32 % 5), rounds as u32);
            let bytes: Vec<u8> = data.iter().flat_map(|w| w.to_le_bytes()).collect();
            say("PHASE copy");
            let a = conn
                .mem_alloc(0, bytes.len() as u64)
                .map_err(|e| e.to_string())?;
            conn.copy_to_device(a, &bytes, 0)
                .map_err(|e| e.to_string())?;
            say("PHASE kernel");
            let mut params = a.to_le_bytes().to_vec();
            for v in [kernel_words, mul, add] {
                params.extend_from_slice(&v.to_le_bytes());
            }
            let dims = LaunchDims {
                grid: [kernel_words.div_ceil(256), 1, 1],
                block: [256, 1, 1],
                shared_bytes: 0,
            };
            conn.post(xpupool_protocol::Request::LaunchKernel {
                function: affine,
                dims,
                stream: 0,
                params: serde_bytes::ByteBuf::from(params),
            })
            .map_err(|e| e.to_string())?;
            conn.synchronize().map_err(|e| e.to_string())?;
            say("PHASE copy");
            let mut back = vec![0u8; bytes.len()];
            conn.copy_from_device(a, &mut back, 0)
                .map_err(|e| e.to_string())?;
            for (i, (w, got)) in data.iter().zip(back.chunks_exact(4)).enumerate() {
                let want = if i < kernel_words as usize {
                    w.wrapping_mul(mul).wrapping_add(add)
                } else {
                    *w
                };
                let got = u32::from_le_bytes(got.try_into().expect("4 bytes"));
                if got != want {
                    say(&format!(
                        "CORRUPT round {rounds} word {i}: {got:#x} != {want:#x}"
                    ));
                    return Ok(3);
                }
            }
            conn.mem_free(a).map_err(|e| e.to_string())?;
            rounds += 1;
            say(&format!("ROUND {rounds}"));
            std::thread::sleep(Duration::from_millis(pause));
        }
        say(&format!("DONE {rounds}"));
        conn.close();
        Ok(0)
    }

    /// Loads [`PTX`] and returns the handle of its kernel `name`.
    fn kernel(conn: &Connection, name: &str) -> Result<u64, String> {
        let image =
            serde_bytes::ByteBuf::from(xpupool_fatbin::Image::Ptx(PTX.to_owned()).to_wire());
        let module = conn.module_load(0, image).map_err(|e| e.to_string())?;
        module
            .functions
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.handle)
            .ok_or_else(|| format!("no {name} kernel"))
    }

    /// One kernel spinning `XPUPOOL_FAULT_SPIN` times, waited for; reports how long.
    fn spin(conn: &Connection) -> Result<i32, String> {
        let count = bytes_env("XPUPOOL_FAULT_SPIN", 1 << 20) as u32;
        let spin = kernel(conn, "spin")?;
        let out = conn.mem_alloc(0, 4).map_err(|e| e.to_string())?;
        let mut params = out.to_le_bytes().to_vec();
        params.extend_from_slice(&count.to_le_bytes());
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [1, 1, 1],
            shared_bytes: 0,
        };
        say("READY");
        let started = Instant::now();
        conn.post(xpupool_protocol::Request::LaunchKernel {
            function: spin,
            dims,
            stream: 0,
            params: serde_bytes::ByteBuf::from(params),
        })
        .map_err(|e| e.to_string())?;
        conn.synchronize().map_err(|e| e.to_string())?;
        let spun = conn.memcpy_dtoh(out, 4, 0).map_err(|e| e.to_string())?;
        let spun = u32::from_le_bytes(spun.as_slice().try_into().map_err(|_| "4 bytes")?);
        if spun != count {
            return Err(format!("the kernel counted {spun}, not {count}"));
        }
        say(&format!("SPUN {}", started.elapsed().as_millis()));
        conn.close();
        Ok(0)
    }
}

/// A `xpupool server --backend mock` process with its own state folder.
struct Server {
    child: Child,
    dir: PathBuf,
    addr: String,
    tokens: Vec<(String, String)>,
    memory_limit: Option<u64>,
}

impl Server {
    fn start(name: &str, tenants: usize, memory_limit: Option<u64>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("xpupool-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state folder");
        let tokens = (0..tenants)
            .map(|i| (format!("t{i}"), format!("token-{name}-{i}")))
            .collect();
        Self::start_in(dir, "127.0.0.1:0", tokens, memory_limit)
    }

    fn start_in(
        dir: PathBuf,
        listen: &str,
        tokens: Vec<(String, String)>,
        memory_limit: Option<u64>,
    ) -> Self {
        let token_file = dir.join("tokens");
        let lines: String = tokens.iter().map(|(t, k)| format!("{t}={k}\n")).collect();
        std::fs::write(&token_file, lines).expect("token file");
        let _ = std::fs::set_permissions(
            &token_file,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        );
        let mut command = Command::new(XPUPOOL);
        command
            .args(["server", "--backend", "mock", "--mock-memory-mib", "8192"])
            .args(["--listen", listen])
            .arg("--state-dir")
            .arg(&dir)
            .arg("--token-file")
            .arg(&token_file)
            .args(["--max-sessions-per-tenant", "16"])
            .env("XPUPOOL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(limit) = memory_limit {
            command.args(["--memory-limit", &limit.to_string()]);
        }
        let mut child = command.spawn().expect("xpupool server starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server says where it listens")
                .expect("a line");
            if let Some(addr) = line.strip_prefix("listening: ") {
                break addr.to_owned();
            }
        };
        // Keep reading so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            dir,
            addr,
            tokens,
            memory_limit,
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("server-cert.pem")
    }

    fn unix_socket(&self) -> PathBuf {
        self.dir.join("server.sock")
    }

    fn token(&self, tenant: usize) -> &str {
        &self.tokens[tenant].1
    }

    /// Client settings for `tenant`, over QUIC or the Unix socket.
    fn settings(&self, tenant: usize, quic: bool) -> Settings {
        Settings {
            server: if quic {
                self.addr.clone()
            } else {
                format!("unix:{}", self.unix_socket().display())
            },
            cert: Some(self.cert().to_string_lossy().into_owned()),
            fingerprint: None,
            token: self.token(tenant).to_owned(),
            quic_only: true,
        }
    }

    /// A client process of `role` for `tenant`, with `env` besides.
    fn client(&self, role: &str, tenant: usize, quic: bool, env: &[(&str, String)]) -> Client {
        let settings = self.settings(tenant, quic);
        let mut command = Command::new(std::env::current_exe().expect("this binary"));
        command
            .env("XPUPOOL_FAULT_ROLE", role)
            .env("XPUPOOL_SERVER", &settings.server)
            .env("XPUPOOL_SERVER_CERT", self.cert())
            .env("XPUPOOL_TOKEN", &settings.token)
            .env("XPUPOOL_TRANSPORT", if quic { "quic" } else { "" })
            .env("XPUPOOL_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        Client::spawn(command)
    }

    /// Bytes the tenant holds now, as another of its sessions sees them.
    fn held(&self, probe: &Connection) -> u64 {
        let (free, total) = probe.mem_get_info(0).expect("the probe answers");
        total - free
    }

    /// Another session of `tenant`, to read its ledger: on the Unix socket, so
    /// that what it sees never waits on QUIC's own timers.
    fn probe(&self, tenant: usize) -> Connection {
        Connection::open(&self.settings(tenant, false)).expect("a probe connects")
    }

    fn status(&self) -> (u64, u64) {
        proc_status(self.child.id())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same server again: same folder, port and tokens.
    fn restart(mut self) -> Self {
        self.kill();
        let dir = std::mem::take(&mut self.dir);
        let tokens = std::mem::take(&mut self.tokens);
        let addr = self.addr.clone();
        let limit = self.memory_limit;
        std::mem::forget(self);
        Self::start_in(dir, &addr, tokens, limit)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `(RSS bytes, threads)` of a process.
fn proc_status(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:") << 10, field("Threads:"))
}

/// A client process and the lines it printed, each with when it came.
struct Client {
    child: Child,
    lines: Arc<Mutex<Vec<(u128, String)>>>,
    stderr: Arc<Mutex<String>>,
}

impl Client {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("a client starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((now_ms(), line));
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for a line starting with `prefix`; its arrival time.
    fn wait_for(&self, prefix: &str, within: Duration) -> Result<u128, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((at, _)) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.starts_with(prefix))
            {
                return Ok(*at);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no {prefix:?} within {within:?}; said {:?}; stderr {}",
                    self.lines.lock().unwrap().last(),
                    self.stderr.lock().unwrap()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn last_phase(&self) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|(_, l)| l.strip_prefix("PHASE ").map(str::to_owned))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait(&mut self, within: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("still running after {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until the tenant holds `bytes` or `within` passes; how long it took.
fn until_held(
    server: &Server,
    probe: &Connection,
    bytes: u64,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let held = server.held(probe);
        if held == bytes {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!(
                "the tenant still holds {held} bytes after {within:?}, not {bytes}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn killed_clients_are_released(quic: bool) -> Result<String, String> {
    let server = Server::start(
        if quic { "kill-quic" } else { "kill-unix" },
        1,
        Some(64 << 20),
    );
    let probe = server.probe(0);
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let mut client = server.client(
            "hold",
            0,
            quic,
            &[("XPUPOOL_FAULT_BYTES", (8u64 << 20).to_string())],
        );
        client.wait_for("READY", Duration::from_secs(20))?;
        until_held(&server, &probe, 8 << 20, Duration::from_secs(2))?;
        let killed = Instant::now();
        client.kill();
        until_held(&server, &probe, 0, Duration::from_secs(1))
            .map_err(|e| format!("round {round}: {e}"))?;
        worst = worst.max(killed.elapsed());
    }
    Ok(format!(
        "worst of 3: {} ms after SIGKILL",
        worst.as_millis()
    ))
}

fn an_exiting_client_closes_at_once_and_prints_no_panic() -> Result<String, String> {
    let server = Server::start("exit", 1, Some(64 << 20));
    let probe = server.probe(0);
    let mut report = Vec::new();
    for quic in [true, false] {
        let mut client = server.client("exit", 0, quic, &[]);
        let said = client.wait_for("EXITING", Duration::from_secs(20))?;
        let code = client.wait(Duration::from_secs(5))?;
        let released = until_held(&server, &probe, 0, Duration::from_secs(1))?;
        let gone = now_ms().saturating_sub(said) as u64;
        std::thread::sleep(Duration::from_millis(100));
        let stderr = client.stderr.lock().unwrap().clone();
        if code != 0 || stderr.contains("panicked") || stderr.contains("panic") {
            return Err(format!("exit code {code}, stderr: {stderr}"));
        }
        // Released by the close, not by the peer timeout.
        if gone >= xpupool_protocol::PEER_TIMEOUT.as_millis() as u64 {
            return Err(format!(
                "released {gone} ms after the exit: by the peer timeout, not the close"
            ));
        }
        report.push(format!(
            "{}: released within {gone} ms of exit (probe saw it in {} ms)",
            if quic { "QUIC" } else { "Unix" },
            released.as_millis()
        ));
    }
    Ok(report.join("; "))
}

fn a_killed_server_is_an_error_within_3_s() -> Result<String, String> {
    let mut server = Server::start("dying", 2, None);
    let mut report = Vec::new();
    let mut clients = Vec::new();
    for quic in [true, false] {
        let client = server.client(
            "work",
            0,
            quic,
            &[
                ("XPUPOOL_FAULT_SECONDS", "30".to_owned()),
                ("XPUPOOL_FAULT_WORDS", (16 << 10).to_string()),
            ],
        );
        client.wait_for("ROUND 2", Duration::from_secs(30))?;
        clients.push((quic, client));
    }
    // An idle client too, waiting for nothing when the server goes.
    let idle = Connection::open(&server.settings(1, true)).map_err(|e| format!("{e:#}"))?;
    let killed = now_ms();
    server.kill();
    for (quic, client) in &mut clients {
        let at = client
            .wait_for("ERROR", Duration::from_secs(3))
            .map_err(|e| format!("{}: {e}", if *quic { "QUIC" } else { "Unix" }))?;
        report.push(format!(
            "{} {} ms",
            if *quic { "QUIC" } else { "Unix" },
            at.saturating_sub(killed)
        ));
        client.wait(Duration::from_secs(3))?;
    }
    let started = Instant::now();
    let err = idle
        .synchronize()
        .err()
        .ok_or("an idle client's next call succeeded")?;
    if started.elapsed() > Duration::from_secs(3) {
        return Err(format!(
            "an idle QUIC client's next call took {:?}",
            started.elapsed()
        ));
    }
    report.push(format!(
        "idle QUIC: next call fails in {} ms (code {})",
        started.elapsed().as_millis(),
        err.code
    ));
    Ok(report.join(", "))
}

fn a_long_kernel_is_not_a_dead_peer() -> Result<String, String> {
    let server = Server::start("spin", 1, None);
    // Calibrate: how long do a million turns take on this machine?
    let short = server.client(
        "spin",
        0,
        true,
        &[("XPUPOOL_FAULT_SPIN", (1u32 << 20).to_string())],
    );
    short.wait_for("SPUN", Duration::from_secs(120))?;
    let ms = short
        .lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|(_, l)| l.strip_prefix("SPUN ").and_then(|v| v.parse::<u64>().ok()))
        .ok_or("no timing")?
        .max(1);
    // A kernel of at least 4 peer timeouts (3 s), over QUIC.
    let want = 4 * xpupool_protocol::PEER_TIMEOUT.as_millis() as u64;
    let count = ((1u64 << 20) * want / ms).clamp(1 << 20, u32::MAX as u64);
    let mut long = server.client(
        "spin",
        0,
        true,
        &[("XPUPOOL_FAULT_SPIN", count.to_string())],
    );
    long.wait_for("SPUN", Duration::from_secs(120))?;
    let code = long.wait(Duration::from_secs(10))?;
    let took = long
        .lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|(_, l)| l.strip_prefix("SPUN ").map(str::to_owned))
        .unwrap_or_default();
    if code != 0 {
        return Err(format!("exit {code}"));
    }
    Ok(format!(
        "a {took} ms kernel over QUIC completed (peer timeout {} ms)",
        xpupool_protocol::PEER_TIMEOUT.as_millis()
    ))
}

/// What an unauthenticated connection costs the server: many of them held open,
/// each having sent a length prefix that claims 80 MiB.
fn unauthenticated_connections_cost_little() -> Result<String, String> {
    let server = Server::start("unauth", 1, None);
    // Warm up: one real session, so the server's own start-up is in the baseline.
    server.probe(0).synchronize().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let (rss_before, threads_before) = server.status();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let _context = runtime.enter();
    let pem = std::fs::read(server.cert()).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![xpupool_protocol::ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let addr: std::net::SocketAddr = server.addr.parse().map_err(|e| format!("{e}"))?;
    // 2 x 60 stay under the server's cap of 128 waiting connections.
    const EACH: usize = 60;
    // A hello that claims 4000 bytes and brings 1000 of them, then stalls: the
    // server holds it until the hello deadline.
    let mut stalled = 4000u32.to_le_bytes().to_vec();
    stalled.extend_from_slice(&[0x41; 1000]);
    let connect = |endpoint: &quinn::Endpoint, first: Vec<u8>| {
        let connecting = endpoint.connect(addr, "xpupool-server");
        async move {
            let connection = connecting
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&first).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((connection, send, recv))
        }
    };
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address"))
        .map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let held_quic = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..EACH {
            held.push(connect(&endpoint, stalled.clone()).await?);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, String>(held)
    })?;
    let (rss_quic, _) = server.status();
    let mut held_unix = Vec::new();
    for _ in 0..EACH {
        let stream = std::os::unix::net::UnixStream::connect(server.unix_socket())
            .map_err(|e| e.to_string())?;
        xpupool_protocol::region::send_region(&stream, None).map_err(|e| e.to_string())?;
        (&stream).write_all(&stalled).map_err(|e| e.to_string())?;
        held_unix.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss_held, threads_held) = server.status();
    let per_quic = rss_quic.saturating_sub(rss_before) / EACH as u64;
    let per_unix = rss_held.saturating_sub(rss_quic) / EACH as u64;
    // One that claims an 80 MiB hello is closed at once, on either transport.
    let lie = ((80u32 << 20) - 1).to_le_bytes().to_vec();
    let refused = runtime.block_on(async {
        let (connection, _send, _recv) = connect(&endpoint, lie.clone()).await?;
        tokio::time::timeout(Duration::from_secs(2), connection.closed())
            .await
            .map_err(|_| "a QUIC hello claiming 80 MiB was not refused".to_owned())?;
        Ok::<_, String>(())
    });
    refused?;
    let mut liar =
        std::os::unix::net::UnixStream::connect(server.unix_socket()).map_err(|e| e.to_string())?;
    xpupool_protocol::region::send_region(&liar, None).map_err(|e| e.to_string())?;
    liar.write_all(&lie).map_err(|e| e.to_string())?;
    liar.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    if !matches!(std::io::Read::read(&mut liar, &mut [0u8; 8]), Ok(0)) {
        return Err("a Unix hello claiming 80 MiB was not refused".into());
    }
    drop(held_unix);
    drop(held_quic);
    if threads_held > threads_before + 2 {
        return Err(format!(
            "threads went from {threads_before} to {threads_held} for connections without a token"
        ));
    }
    if per_quic > 96 << 10 || per_unix > 32 << 10 {
        return Err(format!(
            "an unauthenticated connection costs {per_quic} bytes on QUIC, {per_unix} on Unix"
        ));
    }
    Ok(format!(
        "{EACH} stalled hellos on each transport: {per_quic} bytes each on QUIC (TLS and connection state included), {per_unix} bytes each on the Unix socket; threads {threads_before} -> {threads_held}; hellos claiming 80 MiB refused at once"
    ))
}

fn tokens_on_the_command_line_warn() -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("xpupool-faults-{}-tokens", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let warned = |args: &[&str], env: &[(&str, &str)]| -> Result<bool, String> {
        let mut command = Command::new(XPUPOOL);
        command
            .args([
                "server",
                "--backend",
                "mock",
                "--listen",
                "127.0.0.1:0",
                "--no-unix-socket",
            ])
            .arg("--state-dir")
            .arg(&dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.starts_with("token") {
                break;
            }
        }
        let _ = child.kill();
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stderr).contains("process list"))
    };
    if !warned(&["--token", "a=secret"], &[])? {
        return Err("--token on the command line gave no warning".into());
    }
    if warned(&[], &[("XPUPOOL_TOKENS", "a=secret")])? {
        return Err("XPUPOOL_TOKENS warned as if on the command line".into());
    }
    let file = dir.join("tokens");
    std::fs::write(&file, "# tenants\na=secret\n").map_err(|e| e.to_string())?;
    std::fs::set_permissions(
        &file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .map_err(|e| e.to_string())?;
    if warned(&["--token-file", file.to_str().unwrap_or_default()], &[])? {
        return Err("--token-file warned".into());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok("--token warns; XPUPOOL_TOKENS and --token-file do not".into())
}

/// The fault suite: two servers, 64 clients at once over both transports with
/// checksummed data; random clients killed mid-copy and mid-kernel; one server
/// killed and restarted.
fn fault_suite() -> Result<String, String> {
    const CLIENTS: usize = 64;
    const LIMIT: u64 = 64 << 20;
    let seconds: u64 = std::env::var("XPUPOOL_FAULT_SUITE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let survivor = Server::start("suite-a", CLIENTS, Some(LIMIT));
    let mut doomed = Server::start("suite-b", CLIENTS, Some(LIMIT));
    // Baselines after one session each, so start-up costs are in them.
    for s in [&survivor, &doomed] {
        s.probe(0).synchronize().map_err(|e| e.to_string())?;
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (rss_base, threads_base) = survivor.status();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ now_ms() as u64);
    let env = |seed: u64| {
        vec![
            ("XPUPOOL_FAULT_SECONDS", seconds.to_string()),
            ("XPUPOOL_FAULT_SEED", seed.to_string()),
            ("XPUPOOL_FAULT_WORDS", (32 << 10).to_string()),
            // Sixty-four clients on a 2-core machine: each one mostly waits
            // between rounds, as most of a pool's clients do.
            ("XPUPOOL_FAULT_PAUSE_MS", "100".to_owned()),
        ]
    };
    // Clients 0..48 on the server that lives, 48..64 on the one that is killed;
    // even ones over QUIC, odd ones on the Unix socket. A tenant each.
    let mut clients: Vec<(usize, bool, bool, Client)> = (0..CLIENTS)
        .map(|i| {
            let on_doomed = i >= 48;
            let server = if on_doomed { &doomed } else { &survivor };
            let quic = i % 2 == 0;
            (
                i,
                quic,
                on_doomed,
                server.client("work", i, quic, &env(i as u64 + 1)),
            )
        })
        .collect();
    for (i, _, _, c) in &clients {
        c.wait_for("READY", Duration::from_secs(60))
            .map_err(|e| format!("client {i}: {e}"))?;
    }
    // Probes for the tenants whose clients will be killed.
    let victims: Vec<usize> = {
        let mut v: Vec<usize> = (0..48).collect();
        for k in 0..v.len() {
            let j = k + (rng.next() as usize % (v.len() - k));
            v.swap(k, j);
        }
        v.truncate(12);
        v
    };
    let probes: HashMap<usize, Connection> =
        victims.iter().map(|&i| (i, survivor.probe(i))).collect();
    let mut killed_in: HashMap<String, usize> = HashMap::new();
    let mut release_ms = Vec::new();
    for &victim in &victims {
        std::thread::sleep(Duration::from_millis(100 + rng.next() % 400));
        let (_, quic, _, client) = clients
            .iter_mut()
            .find(|(i, ..)| *i == victim)
            .expect("victim");
        let phase = client.last_phase().unwrap_or_else(|| "start".into());
        let transport = if *quic { "QUIC" } else { "Unix" };
        client.kill();
        let killed = Instant::now();
        let probe = &probes[&victim];
        until_held(&survivor, probe, 0, Duration::from_secs(1))
            .map_err(|e| format!("client {victim} ({transport}, killed mid-{phase}): {e}"))?;
        release_ms.push((transport, killed.elapsed().as_millis()));
        *killed_in
            .entry(format!("{transport} mid-{phase}"))
            .or_default() += 1;
    }
    // The second server dies under its 16 clients, and comes back.
    let killed_at = now_ms();
    doomed.kill();
    let mut detect_ms = Vec::new();
    for (i, quic, on_doomed, c) in &clients {
        if !*on_doomed {
            continue;
        }
        let at = c.wait_for("ERROR", Duration::from_secs(3)).map_err(|e| {
            format!(
                "client {i} of the killed server ({}): {e}",
                if *quic { "QUIC" } else { "Unix" }
            )
        })?;
        detect_ms.push(at.saturating_sub(killed_at));
    }
    let doomed = doomed.restart();
    let mut after: Vec<Client> = (0..8)
        .map(|i| {
            doomed.client(
                "work",
                i,
                i % 2 == 0,
                &[
                    ("XPUPOOL_FAULT_SECONDS", "3".into()),
                    ("XPUPOOL_FAULT_SEED", (100 + i).to_string()),
                    ("XPUPOOL_FAULT_WORDS", (16u64 << 10).to_string()),
                ],
            )
        })
        .collect();
    // Every survivor finishes with every byte right.
    let mut rounds = 0u64;
    let mut survivors = 0;
    for (i, quic, on_doomed, c) in &mut clients {
        if *on_doomed || victims.contains(i) {
            continue;
        }
        let code = c
            .wait(Duration::from_secs(seconds + 120))
            .map_err(|e| format!("client {i}: {e}"))?;
        let lines = c.lines.lock().unwrap();
        let done = lines
            .iter()
            .find_map(|(_, l)| l.strip_prefix("DONE ").and_then(|n| n.parse::<u64>().ok()));
        match (code, done) {
            (0, Some(n)) if n > 0 => {
                rounds += n;
                survivors += 1;
            }
            _ => {
                return Err(format!(
                    "client {i} ({}) exit {code}, last said {:?}, stderr {}",
                    if *quic { "QUIC" } else { "Unix" },
                    lines.last(),
                    c.stderr.lock().unwrap()
                ))
            }
        }
    }
    for (i, c) in after.iter_mut().enumerate() {
        let code = c.wait(Duration::from_secs(120))?;
        if code != 0 {
            return Err(format!(
                "client {i} of the restarted server exit {code}: {:?}",
                c.lines.lock().unwrap().last()
            ));
        }
    }
    drop(probes);
    drop(clients);
    // The server that lived gives back what its clients took.
    let settle = Instant::now();
    let (rss, threads) = loop {
        let (rss, threads) = survivor.status();
        if threads <= threads_base && rss <= rss_base + (32 << 20) {
            break (rss, threads);
        }
        if settle.elapsed() > Duration::from_secs(10) {
            return Err(format!("the server did not return to its baseline: RSS {} -> {} MiB, threads {threads_base} -> {threads}", rss_base >> 20, rss >> 20));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let worst_release = release_ms.iter().map(|(_, ms)| *ms).max().unwrap_or(0);
    let quic_release: Vec<u128> = release_ms
        .iter()
        .filter(|(t, _)| *t == "QUIC")
        .map(|(_, ms)| *ms)
        .collect();
    let unix_release: Vec<u128> = release_ms
        .iter()
        .filter(|(t, _)| *t == "Unix")
        .map(|(_, ms)| *ms)
        .collect();
    let mut kinds: Vec<String> = killed_in.iter().map(|(k, n)| format!("{n} {k}")).collect();
    kinds.sort();
    Ok(format!(
        "{CLIENTS} clients: {survivors} survivors ran {rounds} checked rounds, all right; killed {} ({}); released in ≤ {worst_release} ms (QUIC {:?}, Unix {:?}); the killed server's 16 clients got errors in {:?} ms; 8 clients of the restarted server ran; server RSS {} -> {} MiB, threads {threads_base} -> {threads} after {} ms",
        victims.len(),
        kinds.join(", "),
        quic_release,
        unix_release,
        detect_ms,
        rss_base >> 20,
        rss >> 20,
        settle.elapsed().as_millis()
    ))
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    if let Ok(role) = std::env::var("XPUPOOL_FAULT_ROLE") {
        std::process::exit(role::run(&role));
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    type Check = fn() -> Result<String, String>;
    let checks: &[(&str, Check)] = &[
        ("killed_quic_client_released_within_1s", || {
            killed_clients_are_released(true)
        }),
        ("killed_unix_client_released_within_1s", || {
            killed_clients_are_released(false)
        }),
        (
            "exiting_client_closes_at_once_without_panic",
            an_exiting_client_closes_at_once_and_prints_no_panic,
        ),
        (
            "killed_server_is_an_error_within_3s",
            a_killed_server_is_an_error_within_3_s,
        ),
        (
            "long_kernel_is_not_a_dead_peer",
            a_long_kernel_is_not_a_dead_peer,
        ),
        (
            "unauthenticated_connections_cost_little",
            unauthenticated_connections_cost_little,
        ),
        (
            "tokens_on_the_command_line_warn",
            tokens_on_the_command_line_warn,
        ),
        ("fault_suite", fault_suite),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in checks {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        match std::panic::catch_unwind(check) {
            Ok(Ok(report)) => {
                passed += 1;
                println!(
                    "ok    {name} ({:.1} s): {report}",
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(Err(why)) => {
                failed += 1;
                println!(
                    "FAIL  {name} ({:.1} s): {why}",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(_) => {
                failed += 1;
                println!("FAIL  {name}: panicked");
            }
        }
    }
    println!("faults: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
