//! The listeners: QUIC (TLS 1.3) for clients on other hosts and, optionally, a Unix
//! socket for clients on this one. Either way a connection is one ordered pair of
//! byte streams and one session; the session layer does not know which it has.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xpupool_protocol::{
    code, frame, CuError, Hello, Probe, Reply, Request, Welcome, ALPN, PROTOCOL_VERSION,
};

use crate::backend::{Backend, Session, Tenant};
use crate::module_cache::{CachingSession, ModuleCache};
use crate::quota::MemoryLedger;
use crate::tls::Identity;
use xpupool_protocol::region::Region;

/// A tenant's token, name and limits.
#[derive(Clone)]
pub struct TokenEntry {
    /// The secret the client presents.
    pub token: String,
    /// Who it is.
    pub tenant: String,
    /// Device memory the tenant's session may hold (`--memory-limit`), if limited.
    pub memory_limit: Option<u64>,
}

/// Everything a server needs to start.
pub struct ServerConfig {
    /// Address to listen on (UDP).
    pub listen: SocketAddr,
    /// TLS certificate and key.
    pub identity: Identity,
    /// Accepted tokens.
    pub tokens: Vec<TokenEntry>,
    /// Where sessions run.
    pub backend: Arc<dyn Backend>,
    /// Where module images are kept across processes (memory only if `None`).
    pub module_cache_dir: Option<std::path::PathBuf>,
    /// A Unix socket to listen on as well, for clients on this host (`unix:PATH`).
    /// Made readable and writable by its owner only; its folder should be private.
    pub unix_socket: Option<std::path::PathBuf>,
}

/// A bound server; [`Server::serve`] runs it.
pub struct Server {
    endpoint: quinn::Endpoint,
    unix: Option<(tokio::net::UnixListener, std::path::PathBuf)>,
    tenants: Arc<Vec<(String, Tenant)>>,
    backend: Arc<dyn Backend>,
    modules: Arc<ModuleCache>,
}

/// Pairs each token with its tenant; tokens naming the same tenant share its ledger.
fn tenants(tokens: Vec<TokenEntry>) -> Vec<(String, Tenant)> {
    let mut ledgers: HashMap<String, Arc<MemoryLedger>> = HashMap::new();
    tokens
        .into_iter()
        .map(|t| {
            let memory = ledgers
                .entry(t.tenant.clone())
                .or_insert_with(|| Arc::new(MemoryLedger::new(t.memory_limit)))
                .clone();
            (
                t.token,
                Tenant {
                    name: t.tenant,
                    memory,
                },
            )
        })
        .collect()
}

impl Server {
    /// Binds the QUIC endpoint. Must be called inside a tokio runtime.
    pub fn bind(config: ServerConfig) -> Result<Self> {
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(config.identity.chain, config.identity.key)
        .context("server certificate")?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(std::time::Duration::from_secs(60).try_into()?));
        transport.keep_alive_interval(None);
        server_config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .with_context(|| format!("listening on {}", config.listen))?;
        let unix = config
            .unix_socket
            .as_deref()
            .and_then(|path| match bind_unix(path) {
                Ok(listener) => Some((listener, path.to_owned())),
                Err(e) => {
                    tracing::warn!("no Unix socket, clients on this host use QUIC: {e:#}");
                    None
                }
            });
        Ok(Self {
            endpoint,
            unix,
            tenants: Arc::new(tenants(config.tokens)),
            backend: config.backend,
            modules: Arc::new(ModuleCache::new(config.module_cache_dir)),
        })
    }

    /// Whether the Unix socket asked for is listening.
    pub fn has_unix_socket(&self) -> bool {
        self.unix.is_some()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Accepts connections (QUIC, and the Unix socket if any) until the endpoint is closed.
    pub async fn serve(self) {
        let shared = Shared {
            tenants: self.tenants,
            backend: self.backend,
            modules: self.modules,
            unix_socket: self.unix.as_ref().map(|(_, path)| path.clone()),
        };
        if let Some((unix, _)) = self.unix {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    match unix.accept().await {
                        Ok((stream, _)) => {
                            let shared = shared.clone();
                            let spawned = stream.into_std().and_then(|stream| {
                                stream.set_nonblocking(false)?;
                                std::thread::Builder::new().name("xpupool-unix-session".to_owned()).spawn(move || {
                                    if let Err(e) = serve_unix(stream, shared) {
                                        tracing::info!(remote = "unix", error = %e, "connection ended");
                                    }
                                })
                            });
                            if let Err(e) = spawned {
                                tracing::error!("serving a Unix-socket client: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::error!("accepting on the Unix socket: {e}");
                            break;
                        }
                    }
                }
            });
        }
        while let Some(incoming) = self.endpoint.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(connection) => {
                        if let Err(e) = serve_connection(connection, shared).await {
                            tracing::info!(%remote, error = %e, "connection ended");
                        }
                    }
                    Err(e) => tracing::info!(%remote, error = %e, "handshake failed"),
                }
            });
        }
    }
}

/// Binds a Unix socket only its owner can use, replacing a stale one.
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// What every connection handler needs.
#[derive(Clone)]
struct Shared {
    tenants: Arc<Vec<(String, Tenant)>>,
    backend: Arc<dyn Backend>,
    modules: Arc<ModuleCache>,
    /// The Unix socket, told to probing clients on this host.
    unix_socket: Option<std::path::PathBuf>,
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn read_frame(recv: &mut (impl AsyncRead + Unpin)) -> Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::body_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(body))
}

async fn write_message<T: serde::Serialize>(
    send: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<()> {
    let bytes = frame::encode(message)?;
    send.write_all(&bytes).await?;
    send.flush().await?;
    Ok(())
}

/// A QUIC connection: its first bi-directional stream carries the session.
async fn serve_connection(connection: quinn::Connection, shared: Shared) -> Result<()> {
    let address = connection.remote_address();
    let loopback = address.ip().to_canonical().is_loopback();
    let remote = address.to_string();
    let (send, recv) = connection.accept_bi().await?;
    let result = serve_stream(recv, send, remote, loopback, shared).await;
    // Let the client read the last reply (or a refusal) before the connection goes.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection.closed()).await;
    result
}

/// One session over an ordered pair of byte streams, whatever carries them.
async fn serve_stream(
    mut recv: impl AsyncRead + Unpin + Send + 'static,
    mut send: impl AsyncWrite + Unpin + Send + 'static,
    remote: String,
    loopback: bool,
    shared: Shared,
) -> Result<()> {
    let mut hello: Hello = frame::decode(&read_frame(&mut recv).await?.context("no hello")?)?;
    while hello.probe {
        let answer = shared.probe(&hello, loopback);
        write_message(&mut send, &answer).await?;
        hello = match read_frame(&mut recv).await? {
            Some(body) => frame::decode(&body)?,
            // The client moved to the Unix socket.
            None => return Ok(()),
        };
    }
    let admitting = shared.clone();
    let greeting = hello.clone();
    let (tenant, session) = match tokio::task::spawn_blocking(move || admitting.admit(&greeting))
        .await?
    {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%remote, pid = hello.pid, program = %hello.program, reason = %e.message, "refused client");
            write_message(&mut send, &Err::<Welcome, _>(e)).await?;
            send.shutdown().await?;
            return Ok(());
        }
    };
    write_message(
        &mut send,
        &Ok::<_, CuError>(welcome(&shared.backend, &tenant, false)),
    )
    .await?;
    tracing::info!(%remote, tenant = %tenant.name, pid = hello.pid, program = %hello.program, "session opened");
    // Three stages run at once: this task reads requests, the session's own thread
    // runs them in order, and a writer sends replies, as many per write as are ready.
    // Requests the client did not wait for thus cost no thread hand-over each.
    let (requests_in, requests_out) = std::sync::mpsc::channel::<Vec<u8>>();
    let (replies_in, mut replies_out) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let worker = std::thread::Builder::new()
        .name("xpupool-session".to_owned())
        .spawn(move || run_session(session, requests_out, replies_in))
        .context("starting a session thread")?;
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(reply) = replies_out.recv().await {
            batch.extend_from_slice(&reply);
            while batch.len() < (1 << 20) {
                match replies_out.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            send.write_all(&batch).await?;
            send.flush().await?;
            batch.clear();
        }
        anyhow::Ok(())
    });
    let mut requests = 0u64;
    let result = async {
        while let Some(body) = read_frame(&mut recv).await? {
            requests += 1;
            if requests_in.send(body).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    // Closing the request channel ends the session thread, which drops the session:
    // that frees every allocation, module, stream and event it held.
    drop(requests_in);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    let written = writer.await.map_err(anyhow::Error::from).and_then(|r| r);
    tracing::info!(%remote, tenant = %tenant.name, pid = hello.pid, requests, "session closed");
    result.and(written)
}

/// The session's thread: runs each request in order and hands its encoded reply to
/// the writer, until the connection's request stream ends.
fn run_session(
    mut session: Box<dyn Session>,
    requests: std::sync::mpsc::Receiver<Vec<u8>>,
    replies: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) {
    for body in requests {
        let encoded = handle_frame(session.as_mut(), None, &body);
        if replies.send(encoded).is_err() {
            break;
        }
    }
}

/// Runs one encoded request and encodes its reply.
fn handle_frame(session: &mut dyn Session, region: Option<&mut Region>, body: &[u8]) -> Vec<u8> {
    let reply = match frame::decode::<Request>(body) {
        Ok(request) => {
            let name = request.name();
            let reply = handle_request(session, region, request);
            if let Err(e) = &reply {
                tracing::debug!(op = name, code = e.code, error = %e.message, "request failed");
            }
            reply
        }
        Err(e) => Err(CuError::new(
            code::INVALID_VALUE,
            format!("malformed request: {e}"),
        )),
    };
    frame::encode(&reply).unwrap_or_else(|e| {
        let error = Err::<Reply, _>(CuError::new(code::UNKNOWN, format!("reply too large: {e}")));
        frame::encode(&error).expect("a short error encodes")
    })
}

/// Runs one request; copies through the connection's shared-memory region are the
/// transport's part, the rest is the session's.
fn handle_request(
    session: &mut dyn Session,
    region: Option<&mut Region>,
    request: Request,
) -> Result<Reply, CuError> {
    let out_of_region = |offset: u64, len: u64| {
        CuError::new(
            code::INVALID_VALUE,
            format!("[{offset:#x}, +{len:#x}) is outside the shared-memory region"),
        )
    };
    match (request, region) {
        (
            Request::MemcpyHtoDShared {
                dst,
                offset,
                len,
                stream,
            },
            Some(region),
        ) => {
            let bytes = region
                .bytes(offset, len as usize)
                .ok_or_else(|| out_of_region(offset, len))?;
            session
                .memcpy_htod_from(dst, bytes, stream)
                .map(Reply::MemcpyHtoDShared)
        }
        (
            Request::MemcpyDtoHShared {
                src,
                offset,
                len,
                stream,
            },
            Some(region),
        ) => {
            let bytes = region
                .bytes_mut(offset, len as usize)
                .ok_or_else(|| out_of_region(offset, len))?;
            session
                .memcpy_dtoh_into(src, bytes, stream)
                .map(Reply::MemcpyDtoHShared)
        }
        (request, _) => session.handle(request),
    }
}

/// What the server tells an admitted client.
fn welcome(backend: &Arc<dyn Backend>, tenant: &Tenant, shared_region: bool) -> Welcome {
    Welcome {
        shared_region,
        protocol_version: PROTOCOL_VERSION,
        backend: backend.name().to_owned(),
        driver_version: backend.driver_version(),
        devices: backend.devices(tenant),
        device_address_range: backend.device_address_range(),
    }
}

impl Shared {
    /// Answers a probing hello: the Unix socket, for a client on a loopback address
    /// whose token is valid.
    fn probe(&self, hello: &Hello, loopback: bool) -> Result<Probe, CuError> {
        self.tenant(hello)?;
        Ok(Probe {
            unix_socket: self
                .unix_socket
                .as_ref()
                .filter(|_| loopback)
                .map(|p| p.to_string_lossy().into_owned()),
        })
    }

    fn tenant(&self, hello: &Hello) -> Result<Tenant, CuError> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(CuError::new(
                code::NOT_PERMITTED,
                format!(
                    "protocol version {} is not {PROTOCOL_VERSION}",
                    hello.protocol_version
                ),
            ));
        }
        self.tenants
            .iter()
            .find(|(token, _)| same_secret(token, &hello.token))
            .map(|(_, tenant)| tenant.clone())
            .ok_or_else(|| CuError::new(code::NOT_PERMITTED, "unknown tenant token"))
    }

    /// Decides on a client's hello: its tenant and a new session, or why not. May
    /// block (opening a session can start a worker process).
    fn admit(&self, hello: &Hello) -> Result<(Tenant, Box<dyn Session>), CuError> {
        let tenant = self.tenant(hello)?;
        let session = self.backend.open_session(&tenant)?;
        let session: Box<dyn Session> = Box::new(CachingSession {
            inner: session,
            cache: self.modules.clone(),
        });
        Ok((tenant, session))
    }
}

/// Reads one frame's body with blocking I/O; `None` at a clean end of stream.
pub(crate) fn read_frame_blocking(recv: &mut impl std::io::Read) -> Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; frame::body_len(prefix)?];
    recv.read_exact(&mut body)?;
    Ok(Some(body))
}

/// One session on a Unix socket, all on one thread with blocking I/O: read a
/// request, run it, and send the replies that have piled up whenever no further
/// request is already waiting (the client is then waiting for them). No hand-over
/// between threads on the way.
fn serve_unix(stream: std::os::unix::net::UnixStream, shared: Shared) -> Result<()> {
    use std::io::Write;
    // Replies to requests the client sent without waiting pile up unread until it
    // collects them (at most 1024 of them): give them room, so this thread never
    // blocks writing while the client blocks writing.
    let room: libc::c_int = 4 << 20;
    // SAFETY: setting an integer socket option on a socket this thread owns.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&room as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // The first byte, before anything is buffered: it may carry the client's
    // shared-memory region.
    let mut region = match xpupool_protocol::region::recv_region(&stream)? {
        Some(fd) => match Region::map_received(&fd) {
            Ok(region) => Some(region),
            Err(e) => {
                tracing::warn!("not using a client's shared-memory region: {e}");
                None
            }
        },
        None => None,
    };
    let mut send = stream.try_clone()?;
    let mut recv = std::io::BufReader::with_capacity(1 << 16, stream);
    let mut hello: Hello = frame::decode(&read_frame_blocking(&mut recv)?.context("no hello")?)?;
    while hello.probe {
        send.write_all(&frame::encode(&shared.probe(&hello, true))?)?;
        hello = match read_frame_blocking(&mut recv)? {
            Some(body) => frame::decode(&body)?,
            None => return Ok(()),
        };
    }
    let (tenant, mut session) = match shared.admit(&hello) {
        Ok(admitted) => admitted,
        Err(e) => {
            tracing::warn!(remote = "unix", pid = hello.pid, program = %hello.program, reason = %e.message, "refused client");
            send.write_all(&frame::encode(&Err::<Welcome, _>(e))?)?;
            let _ = send.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
    };
    send.write_all(&frame::encode(&Ok::<_, CuError>(welcome(
        &shared.backend,
        &tenant,
        region.is_some(),
    )))?)?;
    tracing::info!(remote = "unix", tenant = %tenant.name, pid = hello.pid, program = %hello.program, "session opened");
    let mut out = Vec::new();
    let mut requests = 0u64;
    let result = loop {
        if !out.is_empty() && (recv.buffer().is_empty() || out.len() >= 1 << 20) {
            if let Err(e) = send.write_all(&out) {
                break Err(e.into());
            }
            out.clear();
        }
        match read_frame_blocking(&mut recv) {
            Ok(Some(body)) => {
                requests += 1;
                out.extend_from_slice(&handle_frame(session.as_mut(), region.as_mut(), &body));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if !out.is_empty() {
        let _ = send.write_all(&out);
    }
    // Dropping the session frees every allocation, module, stream and event it held.
    drop(session);
    tracing::info!(remote = "unix", tenant = %tenant.name, pid = hello.pid, requests, "session closed");
    result
}
