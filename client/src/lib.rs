//! The client end of an xpupool connection: QUIC with TLS 1.3, one ordered stream
//! of requests and replies. The server is verified by its certificate
//! (`XPUPOOL_SERVER_CERT`) or a pinned fingerprint (`XPUPOOL_SERVER_FINGERPRINT`),
//! and the client presents its tenant token. Every shim (CUDA now; NVML, HIP and
//! ACL later) talks to the server through [`Connection`], whose [`Calls`] methods are
//! one round trip each.

pub mod copy;
pub mod pool;
pub mod ranges;
pub mod standin;
pub mod trace;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use xpupool_protocol::region::{self, Region};
use xpupool_protocol::{
    code, frame, Calls, CuError, Hello, Probe, Reply, Request, Welcome, ALPN, KEEP_ALIVE,
    MAX_COPY_CHUNK, PEER_TIMEOUT, PROTOCOL_VERSION,
};

/// The name in every xpupool server certificate.
const SERVER_NAME: &str = "xpupool-server";

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port` of the server.
    pub server: String,
    /// PEM file of the server's certificate.
    pub cert: Option<String>,
    /// `sha256:<hex>` of the server's certificate, instead of `cert`.
    pub fingerprint: Option<String>,
    /// The tenant token.
    pub token: String,
    /// Stay on QUIC even when the server is on this host (`XPUPOOL_TRANSPORT=quic`);
    /// otherwise a server reached on a loopback address is asked for its Unix
    /// socket, and the connection moves there.
    pub quic_only: bool,
}

impl Settings {
    /// Reads `XPUPOOL_SERVER`, `XPUPOOL_SERVER_CERT` / `XPUPOOL_SERVER_FINGERPRINT` and
    /// `XPUPOOL_TOKEN` (or the first token line of the file `XPUPOOL_TOKEN_FILE`).
    pub fn from_env() -> Result<Self> {
        let server = std::env::var("XPUPOOL_SERVER").map_err(|_| {
            anyhow!("XPUPOOL_SERVER is not set (run the program with `xpupool run -- PROGRAM`, or set XPUPOOL_SERVER, XPUPOOL_SERVER_CERT and XPUPOOL_TOKEN)")
        })?;
        let cert = std::env::var("XPUPOOL_SERVER_CERT")
            .ok()
            .filter(|s| !s.is_empty());
        let fingerprint = std::env::var("XPUPOOL_SERVER_FINGERPRINT")
            .ok()
            .filter(|s| !s.is_empty());
        // A Unix socket on this host needs no TLS: the socket's permissions guard it.
        if cert.is_none() && fingerprint.is_none() && !server.starts_with(UNIX_PREFIX) {
            bail!("set XPUPOOL_SERVER_CERT (the server's certificate file) or XPUPOOL_SERVER_FINGERPRINT (sha256:...) to verify {server}");
        }
        let token = match (
            std::env::var("XPUPOOL_TOKEN"),
            std::env::var_os("XPUPOOL_TOKEN_FILE"),
        ) {
            (Ok(token), _) => token,
            (Err(_), Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading XPUPOOL_TOKEN_FILE {}", path.to_string_lossy()))?
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .with_context(|| {
                    format!(
                        "XPUPOOL_TOKEN_FILE {} holds no token",
                        path.to_string_lossy()
                    )
                })?,
            (Err(_), None) => bail!("neither XPUPOOL_TOKEN nor XPUPOOL_TOKEN_FILE is set"),
        };
        let quic_only = std::env::var("XPUPOOL_TRANSPORT").is_ok_and(|t| t == "quic");
        Ok(Self {
            server,
            cert,
            fingerprint,
            token,
            quic_only,
        })
    }
}

/// Accepts exactly the certificate whose SHA-256 is pinned; signatures are still checked.
#[derive(Debug)]
struct Pinned {
    sha256: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The setting that pinned it, for the error.
    what: String,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the peer's certificate does not match {}",
                self.what
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration that verifies its peer by the certificates in
/// the PEM file `cert` (its roots) or by a pinned `fingerprint` (`sha256:HEX`), and
/// offers `alpn`. `what` names the setting in errors (`XPUPOOL_SERVER_…`).
pub fn tls_client_config(
    cert: Option<&str>,
    fingerprint: Option<&str>,
    alpn: &[u8],
    what: &str,
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = if let Some(pin) = fingerprint {
        let hex_part = pin.strip_prefix("sha256:").unwrap_or(pin);
        let sha256 = hex::decode(hex_part)
            .with_context(|| format!("{what}_FINGERPRINT is not sha256:<hex>"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256,
                provider,
                what: format!("{what}_FINGERPRINT"),
            }))
            .with_no_client_auth()
    } else {
        let path =
            cert.with_context(|| format!("neither {what}_CERT nor {what}_FINGERPRINT is set"))?;
        let pem = std::fs::read(path).with_context(|| format!("reading {what}_CERT {path}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.with_context(|| format!("parsing {path}"))?)?;
        }
        anyhow::ensure!(!roots.is_empty(), "{path} holds no certificate");
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Opens a QUIC connection to `address` (`host:port`) with `tls`, expecting the
/// certificate name `name`, within 10 s. Keep-alives and the idle timeout are
/// those of every xpupool connection.
pub async fn quic_connect(
    address: &str,
    tls: rustls::ClientConfig,
    name: &str,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let addr: SocketAddr = tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(PEER_TIMEOUT.try_into()?));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    client_config.transport_config(Arc::new(transport));
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client_config);
    let connection = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(addr, name)?)
        .await
        .map_err(|_| anyhow!("no answer from {addr} within 10 s"))??;
    Ok((endpoint, connection))
}

pub use xpupool_protocol::UNIX_PREFIX;

/// What carries the session. The session layer above does not care which.
enum Link {
    /// QUIC: the stream's halves, on a current-thread runtime that the calling
    /// thread drives while it waits, so a round trip crosses no thread; the flush
    /// thread drives it now and then between calls (keep-alives).
    Quic {
        runtime: Arc<tokio::runtime::Runtime>,
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    /// A Unix socket on this host: plain blocking I/O on the calling thread, so a
    /// round trip crosses no thread; replies are read out of a 64 KiB buffer.
    Unix {
        send: UnixStream,
        recv: std::io::BufReader<UnixStream>,
    },
}

impl Link {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            Link::Quic { runtime, send, .. } => runtime.block_on(async {
                send.write_all(bytes).await?;
                // Let the connection's task put the bytes on the wire before this
                // thread stops driving the runtime.
                tokio::task::yield_now().await;
                Ok(())
            }),
            Link::Unix { send, .. } => Ok(send.write_all(bytes)?),
        }
    }

    fn read_frame(&mut self) -> Result<Vec<u8>> {
        let mut prefix = [0u8; 4];
        match self {
            Link::Quic { runtime, recv, .. } => runtime.block_on(async {
                recv.read_exact(&mut prefix).await?;
                let mut body = vec![0u8; frame::body_len(prefix)?];
                recv.read_exact(&mut body).await?;
                Ok(body)
            }),
            Link::Unix { recv, .. } => {
                recv.read_exact(&mut prefix)?;
                let mut body = vec![0u8; frame::body_len(prefix)?];
                recv.read_exact(&mut body)?;
                Ok(body)
            }
        }
    }
}

/// A live connection; [`Calls`] on it are one round trip each.
pub struct Connection {
    pipe: Arc<Mutex<Option<Pipe>>>,
    io: Arc<Io>,
    round_trips: AtomicU64,
    posted: AtomicU64,
    /// Wakes the thread that writes what was posted and left waiting.
    linger: Arc<Linger>,
    /// What the server said about itself and its devices.
    pub welcome: Welcome,
}

/// Opens a QUIC connection and its one bi-directional stream.
async fn connect_quic(
    settings: &Settings,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let tls = tls_client_config(
        settings.cert.as_deref(),
        settings.fingerprint.as_deref(),
        ALPN,
        "XPUPOOL_SERVER",
    )?;
    let (_endpoint, connection) = quic_connect(&settings.server, tls, SERVER_NAME)
        .await
        .with_context(|| format!("XPUPOOL_SERVER {}", settings.server))?;
    let (send, recv) = connection.open_bi().await?;
    Ok((connection, send, recv))
}

/// Size of the shared-memory region a Unix-socket client offers its server.
const REGION_BYTES: usize = 32 << 20;
/// The region is used in slots of this size, one copy message each.
const SLOT_BYTES: usize = 4 << 20;
/// Copies smaller than this travel inside their message instead.
const REGION_MIN_COPY: usize = 64 << 10;

/// A shared-memory region for a Unix-socket connection, unless `XPUPOOL_SHM=0`; a
/// failure to make one only costs speed.
fn offer_region(socket: &UnixStream) -> Result<Option<Region>> {
    let wanted = std::env::var("XPUPOOL_SHM").map_or(true, |v| v != "0");
    let made = if wanted {
        match Region::create(REGION_BYTES) {
            Ok(made) => Some(made),
            Err(e) => {
                tracing::debug!("no shared-memory region for bulk copies: {e}");
                None
            }
        }
    } else {
        None
    };
    region::send_region(socket, made.as_ref().map(|(_, fd)| fd))
        .context("starting the Unix-socket connection")?;
    Ok(made.map(|(region, _fd)| region))
}

fn connect_unix(path: &str) -> Result<(Link, Option<Region>)> {
    let send = UnixStream::connect(path)
        .with_context(|| format!("connecting to the Unix socket {path}"))?;
    let region = offer_region(&send)?;
    let recv = std::io::BufReader::with_capacity(1 << 16, send.try_clone()?);
    Ok((Link::Unix { send, recv }, region))
}

/// The longest program name a hello carries (it must fit in [`xpupool_protocol::MAX_HELLO`]).
const PROGRAM_NAME_BYTES: usize = 256;

fn hello(settings: &Settings, probe: bool) -> Hello {
    let mut program = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    if program.len() > PROGRAM_NAME_BYTES {
        let mut end = PROGRAM_NAME_BYTES;
        while !program.is_char_boundary(end) {
            end -= 1;
        }
        program.truncate(end);
    }
    Hello {
        protocol_version: PROTOCOL_VERSION,
        token: settings.token.clone(),
        pid: std::process::id(),
        program,
        probe,
    }
}

fn connect(settings: &Settings) -> Result<(Link, Option<Region>)> {
    if let Some(path) = settings.server.strip_prefix(UNIX_PREFIX) {
        return connect_unix(path);
    }
    let runtime = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    );
    let (connection, send, recv) = runtime.block_on(connect_quic(settings))?;
    // A server on this host is better reached on its Unix socket, if it has one
    // and this process may use it ([`Settings::quic_only`] keeps QUIC).
    let loopback = connection
        .remote_address()
        .ip()
        .to_canonical()
        .is_loopback();
    let mut link = Link::Quic {
        runtime,
        connection,
        send,
        recv,
    };
    if loopback && !settings.quic_only {
        link.write(&frame::encode(&hello(settings, true))?)?;
        let answer: Result<Probe, CuError> = frame::decode(&link.read_frame()?)?;
        let answer = answer.map_err(|e| anyhow!("server refused the connection: {}", e.message))?;
        if let Some(path) = answer.unix_socket {
            match connect_unix(&path) {
                Ok(unix) => {
                    tracing::debug!("the server is on this host: using its Unix socket {path}");
                    if let Link::Quic {
                        runtime,
                        connection,
                        ..
                    } = link
                    {
                        connection.close(0u32.into(), b"moved to the Unix socket");
                        runtime
                            .block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
                    }
                    return Ok(unix);
                }
                Err(e) => tracing::debug!("staying on QUIC: {e:#}"),
            }
        }
    }
    Ok((link, None))
}

impl Connection {
    /// Connects, presents the token, and returns once the server has welcomed us.
    pub fn open(settings: &Settings) -> Result<Self> {
        let (mut link, region) = connect(settings)?;
        link.write(&frame::encode(&hello(settings, false))?)?;
        let welcome: Result<Welcome, CuError> = frame::decode(&link.read_frame()?)?;
        let welcome =
            welcome.map_err(|e| anyhow!("server refused the connection: {}", e.message))?;
        let region = region.filter(|_| welcome.shared_region);
        let slots = region.as_ref().map_or(0, |r| r.len() / SLOT_BYTES);
        let connection = Self {
            pipe: Arc::new(Mutex::new(Some(Pipe {
                link,
                out: Vec::new(),
                sent: 0,
                received: 0,
                deferred: None,
                writes: 0,
                region,
                slots: vec![None; slots],
                next_slot: 0,
            }))),
            io: Arc::new(Io::default()),
            round_trips: AtomicU64::new(0),
            posted: AtomicU64::new(0),
            linger: Arc::new(Linger::default()),
            welcome,
        };
        connection.start_flusher()?;
        Ok(connection)
    }

    /// Starts the thread that writes posted operations nobody else writes: a
    /// launch must not wait in the batch for the program's next call, which may be
    /// far away. While the program is busy the thread looks every [`POLL`], so a
    /// batch waits at most about that long plus [`LINGER`]; when it has been quiet,
    /// the thread sleeps until the next batch wakes it. It ends with the
    /// connection.
    fn start_flusher(&self) -> Result<()> {
        let pipe = Arc::downgrade(&self.pipe);
        let linger = self.linger.clone();
        let runtime = match &self.pipe.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(Pipe {
                link: Link::Quic { runtime, .. },
                ..
            }) => Some(Arc::downgrade(runtime)),
            _ => None,
        };
        let io = self.io.clone();
        std::thread::Builder::new()
            .name("xpupool-flush".to_owned())
            .spawn(move || {
                // Each pause first drives a QUIC connection's runtime once, so that
                // what quinn still holds of earlier writes (past its congestion
                // window) keeps going out while the program is busy elsewhere,
                // without holding the runtime the program's own calls drive.
                let pause = |how_long: Duration| {
                    if let Some(runtime) = runtime.as_ref().and_then(|r| r.upgrade()) {
                        runtime.block_on(tokio::task::yield_now());
                    }
                    std::thread::sleep(how_long);
                };
                // Rounds of POLL without anything to write since the last write.
                let mut idle = 0u32;
                loop {
                    if linger.stop.load(Ordering::Acquire) {
                        return;
                    }
                    if linger.armed.load(Ordering::SeqCst) {
                        // Give the program the chance to write it with its next call.
                        pause(LINGER);
                        linger.armed.store(false, Ordering::SeqCst);
                        idle = 0;
                        let Some(pipe) = pipe.upgrade() else { return };
                        let mut guard = pipe.lock().unwrap_or_else(|e| e.into_inner());
                        let Some(pipe) = guard.as_mut() else { return };
                        if io.lost.load(Ordering::Acquire) {
                            continue;
                        }
                        // A failure marks the connection lost; the program's next
                        // call reports it.
                        let _ = io.flush(pipe);
                        if pipe.writes >= MAX_UNREAD_WRITES {
                            let _ = io.collect(pipe);
                        }
                        continue;
                    }
                    // While the program is busy, look now and then (no wake-up
                    // per batch); once it has been quiet a while, sleep until woken.
                    idle += 1;
                    if idle < ACTIVE_ROUNDS {
                        pause(POLL);
                        continue;
                    }
                    idle = 0;
                    let mut guard = linger.lock.lock().unwrap_or_else(|e| e.into_inner());
                    linger.parked.store(true, Ordering::SeqCst);
                    while !linger.armed.load(Ordering::SeqCst)
                        && !linger.stop.load(Ordering::Acquire)
                    {
                        let (next, waited) = linger
                            .wake
                            .wait_timeout(guard, TICK)
                            .unwrap_or_else(|e| e.into_inner());
                        guard = next;
                        if waited.timed_out() && runtime.is_some() {
                            // Nobody drove the QUIC runtime for a while: let it
                            // answer the server and send its keep-alives.
                            drop(guard);
                            pause(Duration::from_millis(1));
                            guard = linger.lock.lock().unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    linger.parked.store(false, Ordering::SeqCst);
                }
            })
            .context("starting the connection's flush thread")?;
        Ok(())
    }

    /// Connects as the environment says ([`Settings::from_env`]); errors name the server.
    pub fn open_from_env() -> Result<Self> {
        let settings = Settings::from_env()?;
        Self::open(&settings)
            .with_context(|| format!("connecting to the xpupool server at {}", settings.server))
    }

    /// Closes the connection politely so the server frees the session at once,
    /// after sending what is still batched. Runs at process exit, when this thread's
    /// tokio context may already be gone, so QUIC's part is handed to its runtime.
    pub fn close(&self) {
        // Stop the flush thread, and wait a little for whoever holds the pipe.
        self.linger.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_millis(100);
        let mut guard = loop {
            match self.pipe.try_lock() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        let Some(pipe) = guard.take() else { return };
        match pipe.link {
            Link::Unix { mut send, .. } => {
                let _ = send.write_all(&pipe.out);
                let _ = send.shutdown(std::net::Shutdown::Write);
            }
            Link::Quic {
                runtime,
                connection,
                mut send,
                ..
            } => {
                let out = pipe.out;
                // At process exit this thread's thread-locals (tokio's context among
                // them) may already be gone: a runtime driven here would panic. A
                // fresh thread has its own.
                let (done, finished) = std::sync::mpsc::channel();
                let closing = std::thread::Builder::new()
                    .name("xpupool-close".to_owned())
                    .spawn(move || {
                        runtime.block_on(async move {
                            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                                let _ = send.write_all(&out).await;
                                let _ = send.finish();
                                connection.close(0u32.into(), b"client exit");
                                // Drive the runtime until the close has gone out.
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            })
                            .await;
                        });
                        let _ = done.send(());
                        // Not dropped: at process exit, tearing a runtime down can hang.
                        std::mem::forget(runtime);
                    });
                if closing.is_ok() {
                    let _ = finished.recv_timeout(Duration::from_millis(600));
                }
            }
        }
    }

    /// Sends an operation whose errors the driver reports later
    /// ([`Request::completes_later`]) without waiting for its reply. Operations are
    /// batched into large writes; an error among them is reported by the next
    /// synchronising call ([`Request::synchronizes`]), as the driver does. Any other
    /// request is simply [`Calls::call`]ed.
    pub fn post(&self, request: Request) -> Result<(), CuError> {
        if !request.completes_later() {
            return self.call(request).map(|_| ());
        }
        self.check_alive()?;
        let mut guard = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let pipe = guard.as_mut().ok_or_else(closed)?;
        self.post_locked(pipe, &request)
    }

    fn post_locked(&self, pipe: &mut Pipe, request: &Request) -> Result<(), CuError> {
        frame::encode_into(request, &mut pipe.out)
            .map_err(|e| CuError::new(code::INVALID_VALUE, e.to_string()))?;
        if let Some(t) = trace::tracer() {
            trace::request(t, request, Instant::now(), None);
        }
        self.posted.fetch_add(1, Ordering::Relaxed);
        pipe.sent += 1;
        if pipe.sent - pipe.received >= MAX_PENDING || pipe.writes >= MAX_UNREAD_WRITES {
            // Keep the server's replies from filling its socket (each write of
            // replies takes room there, however small): collect them.
            self.io.flush(pipe)?;
            self.io.collect(pipe)?;
        } else if pipe.out.len() >= FLUSH_BYTES {
            self.io.flush(pipe)?;
        } else if !self.linger.armed.swap(true, Ordering::SeqCst)
            && self.linger.parked.load(Ordering::SeqCst)
        {
            // Left waiting, and the flush thread sleeps: wake it to write this soon
            // if nothing else does.
            let _guard = self.linger.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.linger.wake.notify_one();
        }
        Ok(())
    }

    /// Copies host bytes to the device in stream order, without waiting (errors
    /// come at the next synchronising call): through the shared-memory region of a
    /// same-host connection when it has one, else in messages of at most
    /// [`MAX_COPY_CHUNK`] bytes. The bytes are captured before it returns.
    pub fn copy_to_device(&self, dst: u64, bytes: &[u8], stream: u64) -> Result<(), CuError> {
        self.check_alive()?;
        let mut guard = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let pipe = guard.as_mut().ok_or_else(closed)?;
        if pipe.slots.is_empty() || bytes.len() < REGION_MIN_COPY {
            for (i, chunk) in bytes.chunks(MAX_COPY_CHUNK).enumerate() {
                let request = Request::MemcpyHtoD {
                    dst: dst + (i * MAX_COPY_CHUNK) as u64,
                    data: serde_bytes::ByteBuf::from(chunk),
                    stream,
                };
                self.post_locked(pipe, &request)?;
            }
            return Ok(());
        }
        for (i, chunk) in bytes.chunks(SLOT_BYTES).enumerate() {
            let slot = pipe.next_slot;
            pipe.next_slot = (slot + 1) % pipe.slots.len();
            // The slot is free once the server has answered the copy that used it.
            if let Some(last) = pipe.slots[slot] {
                self.io.flush(pipe)?;
                while pipe.received <= last {
                    self.io.collect_one(pipe)?;
                }
            }
            let offset = (slot * SLOT_BYTES) as u64;
            pipe.region_bytes(offset, chunk.len())?
                .copy_from_slice(chunk);
            pipe.slots[slot] = Some(pipe.sent);
            let request = Request::MemcpyHtoDShared {
                dst: dst + (i * SLOT_BYTES) as u64,
                offset,
                len: chunk.len() as u64,
                stream,
            };
            self.post_locked(pipe, &request)?;
            // Let the server copy this slot while the next one is filled.
            self.io.flush(pipe)?;
        }
        Ok(())
    }

    /// Copies device bytes into `out` in stream order, waiting for them (and
    /// reporting earlier operations' errors, like any synchronising call): through
    /// the shared-memory region when the connection has one, the server filling a
    /// slot while the client empties the previous one.
    pub fn copy_from_device(&self, src: u64, out: &mut [u8], stream: u64) -> Result<(), CuError> {
        self.check_alive()?;
        let mut guard = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let pipe = guard.as_mut().ok_or_else(closed)?;
        if pipe.slots.is_empty() || out.len() < REGION_MIN_COPY {
            for (i, chunk) in out.chunks_mut(MAX_COPY_CHUNK).enumerate() {
                let request = Request::MemcpyDtoH {
                    src: src + (i * MAX_COPY_CHUNK) as u64,
                    len: chunk.len() as u64,
                    stream,
                };
                match self.call_locked(pipe, request)? {
                    Reply::MemcpyDtoH(bytes) if bytes.len() == chunk.len() => {
                        chunk.copy_from_slice(&bytes)
                    }
                    other => return Err(self.io.lost(format!("a copy answered by {other:?}"))),
                }
            }
            return Ok(());
        }
        let batch_bytes = pipe.slots.len() * SLOT_BYTES;
        for (b, batch) in out.chunks_mut(batch_bytes).enumerate() {
            let base = src + (b * batch_bytes) as u64;
            let started = Instant::now();
            let requests: Vec<Request> = batch
                .chunks(SLOT_BYTES)
                .enumerate()
                .map(|(k, chunk)| Request::MemcpyDtoHShared {
                    src: base + (k * SLOT_BYTES) as u64,
                    offset: (k * SLOT_BYTES) as u64,
                    len: chunk.len() as u64,
                    stream,
                })
                .collect();
            for request in &requests {
                frame::encode_into(request, &mut pipe.out)
                    .map_err(|e| CuError::new(code::INVALID_VALUE, e.to_string()))?;
                self.round_trips.fetch_add(1, Ordering::Relaxed);
            }
            self.io.flush(pipe)?;
            self.io.collect(pipe)?;
            let mut failed = None;
            for ((k, chunk), request) in batch.chunks_mut(SLOT_BYTES).enumerate().zip(&requests) {
                let reply = self.io.read_reply(pipe)?;
                if let Some(t) = trace::tracer() {
                    trace::request(t, request, started, Some(&reply));
                }
                match reply {
                    Ok(_) if failed.is_none() => {
                        let offset = (k * SLOT_BYTES) as u64;
                        chunk.copy_from_slice(pipe.region_bytes(offset, chunk.len())?);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = pipe.deferred.take().or(failed) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Keeps `error` to be reported at the next synchronising call, as an
    /// error of posted work is: for a caller that took such an error back where
    /// nobody could be told of it. An error kept already stays (it came first).
    pub fn defer(&self, error: CuError) {
        let mut guard = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipe) = guard.as_mut() {
            pipe.deferred.get_or_insert(error);
        }
    }

    /// What this connection has sent so far.
    pub fn stats(&self) -> Stats {
        Stats {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            posted: self.posted.load(Ordering::Relaxed),
            bytes_sent: self.io.bytes_sent.load(Ordering::Relaxed),
            replies_waiting: self
                .pipe
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(0, |pipe| pipe.sent - pipe.received),
        }
    }

    fn check_alive(&self) -> Result<(), CuError> {
        if self.io.lost.load(Ordering::Acquire) {
            return Err(CuError::new(
                DEVICE_UNAVAILABLE,
                "connection to the server lost",
            ));
        }
        Ok(())
    }
}

/// The connection's I/O on its pipe, shared with the flush thread.
#[derive(Default)]
struct Io {
    lost: AtomicBool,
    bytes_sent: AtomicU64,
}

impl Io {
    /// Writes what is batched.
    fn flush(&self, pipe: &mut Pipe) -> Result<(), CuError> {
        if pipe.out.is_empty() {
            return Ok(());
        }
        let written = pipe.link.write(&pipe.out);
        self.bytes_sent
            .fetch_add(pipe.out.len() as u64, Ordering::Relaxed);
        pipe.out.clear();
        pipe.writes += 1;
        written.map_err(|e| self.lost(e))
    }

    /// Reads the replies of every posted operation, keeping the first error.
    fn collect(&self, pipe: &mut Pipe) -> Result<(), CuError> {
        while pipe.received < pipe.sent {
            self.collect_one(pipe)?;
        }
        pipe.writes = 0;
        Ok(())
    }

    /// Reads the reply of the oldest posted operation, keeping the first error.
    fn collect_one(&self, pipe: &mut Pipe) -> Result<(), CuError> {
        let reply = self.read_reply(pipe)?;
        pipe.received += 1;
        if let Err(e) = reply {
            tracing::debug!(code = e.code, reason = %e.message, "an operation sent without waiting failed");
            pipe.deferred.get_or_insert(e);
        }
        Ok(())
    }

    /// Reads one reply; a connection that breaks or garbles is lost.
    fn read_reply(&self, pipe: &mut Pipe) -> Result<Result<Reply, CuError>, CuError> {
        let body = pipe.link.read_frame().map_err(|e| self.lost(e))?;
        frame::decode::<Result<Reply, CuError>>(&body).map_err(|e| self.lost(e))
    }

    fn lost(&self, why: impl std::fmt::Display) -> CuError {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::error!("lost the connection to the xpupool server: {why}");
        }
        CuError::new(
            DEVICE_UNAVAILABLE,
            format!("connection to the server lost: {why}"),
        )
    }
}

/// How long a posted operation may wait in the batch before the flush thread
/// writes it, once the thread has noticed it.
const LINGER: Duration = Duration::from_micros(100);
/// How often the flush thread looks while the program is busy, and for how many
/// rounds without anything to write before it sleeps until woken.
const POLL: Duration = Duration::from_millis(1);
const ACTIVE_ROUNDS: u32 = 50;

/// How often the flush thread drives an idle QUIC connection's runtime, so its
/// keep-alives ([`KEEP_ALIVE`]) go out while the program makes no call.
const TICK: Duration = Duration::from_millis(100);

/// The flush thread's signal: `armed` once something waits in the batch; `parked`
/// while the thread sleeps until woken.
#[derive(Default)]
struct Linger {
    armed: AtomicBool,
    parked: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: std::sync::Condvar,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(tracer) = trace::tracer() {
            tracer.flush();
        }
        self.linger.stop.store(true, Ordering::Release);
        let _guard = self.linger.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.linger.wake.notify_one();
    }
}

/// Counters of one connection ([`Connection::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests that waited for their reply.
    pub round_trips: u64,
    /// Requests sent without waiting.
    pub posted: u64,
    /// Bytes written to the server after the handshake.
    pub bytes_sent: u64,
    /// Requests sent without waiting whose replies have not been read yet.
    pub replies_waiting: u64,
}

/// `CUDA_ERROR_DEVICE_UNAVAILABLE`: what every call answers once the server is gone.
const DEVICE_UNAVAILABLE: u32 = 46;

/// Batched operations are written once this many bytes are waiting.
const FLUSH_BYTES: usize = 64 << 10;
/// At most this many operations wait for their replies (whose bytes the server
/// must be able to buffer while the client is still writing).
const MAX_PENDING: u64 = 1024;
/// At most this many writes wait for their replies to be read: the server answers
/// each write it reads with a write of its own, and a blocked server stops reading.
const MAX_UNREAD_WRITES: u32 = 64;

/// The request stream and what travels on it.
struct Pipe {
    link: Link,
    /// Encoded operations not written yet.
    out: Vec<u8>,
    /// Operations posted (sent without waiting) so far.
    sent: u64,
    /// Replies of posted operations read so far (they come in order).
    received: u64,
    /// The first error of an operation sent without waiting, not yet reported.
    deferred: Option<CuError>,
    /// Writes since the replies were last all read.
    writes: u32,
    /// The shared-memory region the server accepted, if any.
    region: Option<Region>,
    /// For each region slot, the posted copy (its number) that last used it.
    slots: Vec<Option<u64>>,
    /// The slot the next copy to the device uses.
    next_slot: usize,
}

impl Pipe {
    fn region_bytes(&mut self, offset: u64, len: usize) -> Result<&mut [u8], CuError> {
        self.region
            .as_mut()
            .and_then(|r| r.bytes_mut(offset, len))
            .ok_or_else(|| CuError::new(code::UNKNOWN, "outside the shared-memory region"))
    }
}

fn closed() -> CuError {
    CuError::new(code::DEINITIALIZED, "the connection is closed")
}

impl Connection {
    fn call_locked(&self, pipe: &mut Pipe, request: Request) -> Result<Reply, CuError> {
        let synchronizes = request.synchronizes();
        let started = Instant::now();
        frame::encode_into(&request, &mut pipe.out)
            .map_err(|e| CuError::new(code::INVALID_VALUE, e.to_string()))?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.io.flush(pipe)?;
        self.io.collect(pipe)?;
        let reply = self.io.read_reply(pipe)?;
        if let Some(t) = trace::tracer() {
            trace::request(t, &request, started, Some(&reply));
        }
        let reply = match reply {
            Ok(reply) => reply,
            // An earlier operation's error comes first, as on a device.
            Err(e) if synchronizes => return Err(pipe.deferred.take().unwrap_or(e)),
            Err(e) => return Err(e),
        };
        match pipe.deferred.take() {
            // An earlier operation's error surfaces at a synchronising call; other
            // calls keep their own result and leave it for the next one.
            Some(e) if synchronizes => Err(e),
            other => {
                pipe.deferred = other;
                Ok(reply)
            }
        }
    }
}

impl Calls for Connection {
    fn call(&self, request: Request) -> Result<Reply, CuError> {
        self.check_alive()?;
        let mut guard = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let pipe = guard.as_mut().ok_or_else(closed)?;
        self.call_locked(pipe, request)
    }
}
