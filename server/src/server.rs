//! The listeners: QUIC (TLS 1.3) for clients on other hosts and, optionally, a Unix
//! socket for clients on this one. Either way a connection is one ordered pair of
//! byte streams and one session; the session layer does not know which it has.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use xpupool_protocol::{
    code, frame, CuError, Hello, Probe, Reply, Request, Welcome, ALPN, KEEP_ALIVE, MAX_FRAME,
    MAX_HELLO, PEER_TIMEOUT, PROTOCOL_VERSION,
};

use crate::backend::{Backend, Session, SessionSlot, Tenant};
use crate::membership::Membership;
use crate::module_cache::{CachingSession, ModuleCache};
use crate::tenancy::{Host, Policy};
use crate::tls::Identity;
use xpupool_protocol::region::Region;

/// A tenant's token, name and policy.
#[derive(Clone)]
pub struct TokenEntry {
    /// The secret the client presents.
    pub token: String,
    /// Who it is.
    pub tenant: String,
    /// What it may use (tokens of one tenant should agree; the first one's wins).
    pub policy: Policy,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("tenant", &self.tenant)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    /// A token of `tenant` with the default policy and this memory limit.
    pub fn new(
        tenant: impl Into<String>,
        token: impl Into<String>,
        memory_limit: Option<u64>,
    ) -> Self {
        Self {
            token: token.into(),
            tenant: tenant.into(),
            policy: Policy {
                memory_limit,
                ..Policy::default()
            },
        }
    }
}

/// Sessions one tenant may have open at once, unless the server is told otherwise.
pub const DEFAULT_MAX_SESSIONS_PER_TENANT: usize = 64;

/// Connections that have not shown a valid token yet, on both transports together;
/// past this, new ones are refused at once.
const MAX_UNAUTHENTICATED: usize = 128;
/// How long a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A QUIC connection's receive window until its hello is accepted: what a peer
/// without a token can make the server buffer.
const UNAUTHENTICATED_WINDOW: u32 = MAX_HELLO as u32 + 64;
/// Its receive window once admitted (one stream, whose own window is smaller).
const SESSION_WINDOW: u32 = 16 << 20;
/// Bytes of requests read from a QUIC session but not yet run, and of replies made
/// but not yet written: a client that sends faster than its session runs, or stops
/// reading its replies, stalls there, and only itself.
const REQUEST_QUEUE_BYTES: usize = 8 << 20;
const REPLY_QUEUE_BYTES: usize = 4 << 20;
/// What a queued frame costs beyond its bytes (its buffer and queue entry).
const FRAME_OVERHEAD: usize = 64;

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
    tenants: Tenants,
    host: Arc<Host>,
    modules: Arc<ModuleCache>,
}

/// The server's tenant table: which token is whose, and every tenant it has known
/// (a tenant removed by a reload stays known while its sessions run, so its
/// figures stay visible). Cloning shares it; [`Tenants::reload`] replaces it
/// without touching live sessions.
#[derive(Clone, Default)]
pub struct Tenants(Arc<RwLock<TenantTable>>);

#[derive(Default)]
struct TenantTable {
    tokens: Vec<(String, Tenant)>,
    known: HashMap<String, Tenant>,
    /// In a pool, the leases of its manager are the only way in.
    pool: Option<Arc<Membership>>,
}

impl Tenants {
    /// A table of these tokens.
    pub fn new(tokens: Vec<TokenEntry>) -> Self {
        let tenants = Self::default();
        tenants.reload(tokens);
        tenants
    }

    /// Replaces the tokens. A tenant that stays keeps its ledger, figures and live
    /// sessions, under its new policy; a token that is gone admits no one new, and
    /// the sessions it admitted carry on until they end. Tokens of one tenant
    /// share it (the first token's policy is its policy).
    pub fn reload(&self, tokens: Vec<TokenEntry>) {
        let mut table = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut named: HashMap<String, Policy> = HashMap::new();
        for t in &tokens {
            named
                .entry(t.tenant.clone())
                .or_insert_with(|| t.policy.clone());
        }
        for (name, policy) in &named {
            match table.known.get(name) {
                Some(tenant) => tenant.set_policy(policy.clone()),
                None => {
                    table.known.insert(
                        name.clone(),
                        Tenant::with_policy(name.clone(), policy.clone()),
                    );
                }
            }
        }
        // Forget tenants that are gone and hold nothing any more.
        table
            .known
            .retain(|name, tenant| named.contains_key(name) || tenant.sessions() > 0);
        table.tokens = tokens
            .into_iter()
            .map(|t| {
                let tenant = table.known[&t.tenant].clone();
                (t.token, tenant)
            })
            .collect();
    }

    /// Makes this a pool member's table: from now on only `membership`'s leases
    /// admit anyone.
    pub fn join_pool(&self, membership: Arc<Membership>) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).pool = Some(membership);
    }

    /// The pool this server is a member of, if any.
    pub fn pool(&self) -> Option<Arc<Membership>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pool
            .clone()
    }

    /// The tenant a client presenting `token` is, or why it is refused.
    pub fn admit(&self, token: &str) -> Result<Tenant, CuError> {
        let pool = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pool
            .clone();
        match pool {
            Some(membership) => membership.admit(token),
            None => self
                .by_token(token)
                .ok_or_else(|| CuError::new(code::NOT_PERMITTED, "unknown tenant token")),
        }
    }

    /// The tenant whose token this is.
    pub fn by_token(&self, token: &str) -> Option<Tenant> {
        let table = self.0.read().unwrap_or_else(|e| e.into_inner());
        // Every token is compared, so the time taken says nothing of which matched.
        let mut found = None;
        for (candidate, tenant) in &table.tokens {
            if same_secret(candidate, token) && found.is_none() {
                found = Some(tenant.clone());
            }
        }
        found
    }

    /// Every tenant known now, by name.
    pub fn all(&self) -> Vec<Tenant> {
        let table = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Tenant> = table.known.values().cloned().collect();
        if let Some(pool) = &table.pool {
            all.extend(pool.tenants());
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// The QUIC transport settings of both ends' sessions: one stream each way, a
/// peer that goes quiet taken for dead after [`PEER_TIMEOUT`].
pub fn session_transport(transport: &mut quinn::TransportConfig) -> Result<()> {
    transport.max_idle_timeout(Some(PEER_TIMEOUT.try_into()?));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    Ok(())
}

impl Server {
    /// Binds the QUIC endpoint. Must be called inside a tokio runtime.
    pub fn bind(config: ServerConfig) -> Result<Self> {
        let mut transport = quinn::TransportConfig::default();
        session_transport(&mut transport)?;
        transport
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .receive_window(UNAUTHENTICATED_WINDOW.into())
            .send_window(REPLY_QUEUE_BYTES as u64);
        let mut server_config = crate::tls::quic_server_config(config.identity, ALPN, transport)
            .context("server certificate")?;
        // Connection attempts waiting to be accepted, and the early data they may
        // bring: small, since each costs memory before any token is seen.
        server_config
            .max_incoming(MAX_UNAUTHENTICATED)
            .incoming_buffer_size(UNAUTHENTICATED_WINDOW.into())
            .incoming_buffer_size_total(u64::from(UNAUTHENTICATED_WINDOW) * 16);
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
            tenants: Tenants::new(config.tokens),
            host: Host::new(config.backend),
            modules: Arc::new(ModuleCache::new(config.module_cache_dir)),
        })
    }

    /// The tenant table, to reload while the server runs.
    pub fn tenants(&self) -> Tenants {
        self.tenants.clone()
    }

    /// The host: its devices, schedulers and backend (for metrics).
    pub fn host(&self) -> Arc<Host> {
        self.host.clone()
    }

    /// Whether the Unix socket asked for is listening.
    pub fn has_unix_socket(&self) -> bool {
        self.unix.is_some()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Accepts connections (QUIC, and the Unix socket if any) until the endpoint is
    /// closed. A connection holds one of [`MAX_UNAUTHENTICATED`] places until its
    /// hello is answered; with none free, it is refused at once.
    pub async fn serve(self) {
        let shared = Shared {
            tenants: self.tenants,
            host: self.host,
            modules: self.modules,
            unix_socket: self.unix.as_ref().map(|(_, path)| path.clone()),
            unauthenticated: Arc::new(Semaphore::new(MAX_UNAUTHENTICATED)),
            refused: Arc::default(),
            refused_warned: Arc::default(),
            started: std::time::Instant::now(),
        };
        let trimming = tokio::spawn(crate::trim_heap_now_and_then());
        if let Some((unix, _)) = self.unix {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    match unix.accept().await {
                        Ok((stream, _)) => {
                            let Some(place) = shared.place("unix") else {
                                continue;
                            };
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                if let Err(e) = serve_unix(stream, shared, place).await {
                                    tracing::info!(remote = "unix", error = %e, "connection ended");
                                }
                            });
                        }
                        Err(e) => {
                            tracing::error!("accepting on the Unix socket: {e}");
                            // Out of descriptors, say: try again shortly.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        while let Some(incoming) = self.endpoint.accept().await {
            let remote = incoming.remote_address();
            let Some(place) = shared.place(&remote.to_string()) else {
                incoming.refuse();
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => {
                        if let Err(e) = serve_connection(connection, shared, place).await {
                            tracing::info!(%remote, error = %e, "connection ended");
                        }
                    }
                    Err(e) => tracing::info!(%remote, error = %e, "handshake failed"),
                }
            });
        }
        trimming.abort();
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
    tenants: Tenants,
    host: Arc<Host>,
    modules: Arc<ModuleCache>,
    /// The Unix socket, told to probing clients on this host.
    unix_socket: Option<std::path::PathBuf>,
    /// Places for connections whose hello is not answered yet.
    unauthenticated: Arc<Semaphore>,
    /// Connections refused for want of a place, and the second (since `started`,
    /// plus one) of the last warning about it.
    refused: Arc<AtomicU64>,
    refused_warned: Arc<AtomicU64>,
    started: std::time::Instant,
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Reads one frame's length prefix; `None` at a clean end of stream. A length over
/// `limit` is an error before anything is allocated for it.
async fn read_prefix(recv: &mut (impl AsyncRead + Unpin), limit: usize) -> Result<Option<usize>> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::body_len(prefix)?;
    if len > limit {
        bail!("a frame of {len} bytes where at most {limit} are accepted");
    }
    Ok(Some(len))
}

async fn read_body(recv: &mut (impl AsyncRead + Unpin), len: usize) -> Result<Vec<u8>> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(body)
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

/// A client the server has let in: its tenant, its session, and its place among
/// the tenant's sessions (given back when this is dropped, after the session).
struct Admitted {
    tenant: Tenant,
    session: Box<dyn Session>,
    hello: Hello,
    _slot: SessionSlot,
}

/// The hello exchange, the same on both transports: probes are answered, then the
/// client's hello is read (at most [`MAX_HELLO`] bytes each, all within
/// [`HELLO_TIMEOUT`]) and admitted or refused (the refusal is written). `None`
/// when the client went away or was refused.
async fn greet(
    recv: &mut (impl AsyncRead + Unpin),
    send: &mut (impl AsyncWrite + Unpin),
    remote: &str,
    loopback: bool,
    shared: &Shared,
) -> Result<Option<Admitted>> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let Some(mut hello) = read_hello(recv, deadline).await? else {
        return Ok(None);
    };
    while hello.probe {
        let answer = shared.probe(&hello, loopback);
        write_message(send, &answer).await?;
        hello = match read_hello(recv, deadline).await? {
            Some(hello) => hello,
            // The client moved to the Unix socket.
            None => return Ok(None),
        };
    }
    let admitting = shared.clone();
    let greeting = hello.clone();
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || admitting.admit(&greeting)).await? {
        Ok((tenant, session, slot)) => {
            shared
                .host
                .admission
                .observe(started.elapsed().as_secs_f64());
            Ok(Some(Admitted {
                tenant,
                session,
                hello,
                _slot: slot,
            }))
        }
        Err(e) => {
            tracing::warn!(%remote, pid = hello.pid, program = %hello.program, reason = %e.message, "refused client");
            write_message(send, &Err::<Welcome, _>(e)).await?;
            send.shutdown().await?;
            Ok(None)
        }
    }
}

/// Reads one hello of at most [`MAX_HELLO`] bytes by `deadline`; `None` at a clean
/// end of stream.
async fn read_hello(
    recv: &mut (impl AsyncRead + Unpin),
    deadline: tokio::time::Instant,
) -> Result<Option<Hello>> {
    let read = async {
        match read_prefix(recv, MAX_HELLO).await? {
            Some(len) => Ok(Some(frame::decode::<Hello>(&read_body(recv, len).await?)?)),
            None => Ok(None),
        }
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(hello) => hello,
        Err(_) => bail!("no hello within {HELLO_TIMEOUT:?}"),
    }
}

/// A QUIC connection: its first bi-directional stream carries the session.
async fn serve_connection(
    connection: quinn::Connection,
    shared: Shared,
    place: OwnedSemaphorePermit,
) -> Result<()> {
    let address = connection.remote_address();
    let loopback = address.ip().to_canonical().is_loopback();
    let remote = address.to_string();
    let (mut send, mut recv) =
        match tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await {
            Ok(streams) => streams?,
            Err(_) => {
                connection.close(0u32.into(), b"no hello");
                bail!("no stream within {HELLO_TIMEOUT:?}");
            }
        };
    let admitted = greet(&mut recv, &mut send, &remote, loopback, &shared).await;
    drop(place);
    let result = match admitted {
        Ok(Some(admitted)) => {
            connection.set_receive_window(SESSION_WINDOW.into());
            write_message(
                &mut send,
                &Ok::<_, CuError>(welcome(&shared.host, &admitted.tenant, false)),
            )
            .await?;
            serve_session(recv, send, remote, admitted).await
        }
        Ok(None) => Ok(()),
        Err(e) => {
            connection.close(0u32.into(), b"bad hello");
            return Err(e);
        }
    };
    // Let the client read the last reply (or a refusal) before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
    result
}

/// One admitted session over an ordered pair of byte streams (QUIC's). Three
/// stages run at once: this task reads requests, the session's own thread runs them
/// in order, and a writer sends replies, as many per write as are ready. Requests
/// the client did not wait for thus cost no thread hand-over each. Both queues
/// between the stages are bounded in bytes ([`REQUEST_QUEUE_BYTES`],
/// [`REPLY_QUEUE_BYTES`]).
async fn serve_session(
    mut recv: impl AsyncRead + Unpin + Send + 'static,
    mut send: impl AsyncWrite + Unpin + Send + 'static,
    remote: String,
    admitted: Admitted,
) -> Result<()> {
    let Admitted {
        tenant,
        session,
        hello,
        _slot: slot,
    } = admitted;
    tracing::info!(%remote, tenant = %tenant.name, pid = hello.pid, program = %hello.program, "session opened");
    let request_room = Arc::new(Semaphore::new(REQUEST_QUEUE_BYTES));
    let reply_room = Arc::new(Semaphore::new(REPLY_QUEUE_BYTES));
    let (requests_in, requests_out) = tokio::sync::mpsc::unbounded_channel::<Queued>();
    let (replies_in, mut replies_out) = tokio::sync::mpsc::unbounded_channel::<Queued>();
    // Set once the client is gone: what it left queued is not run.
    let gone = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Handle::current();
    let worker = {
        let gone = gone.clone();
        let reply_room = reply_room.clone();
        std::thread::Builder::new()
            .name("xpupool-session".to_owned())
            .spawn(move || {
                run_session(
                    session,
                    requests_out,
                    replies_in,
                    &reply_room,
                    &runtime,
                    &gone,
                );
                // Freed on this thread, as the session was used.
                drop(slot);
            })
            .context("starting a session thread")?
    };
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        let mut held = Vec::new();
        while let Some((reply, room)) = replies_out.recv().await {
            batch.extend_from_slice(&reply);
            held.push(room);
            while batch.len() < (1 << 20) {
                match replies_out.try_recv() {
                    Ok((more, room)) => {
                        batch.extend_from_slice(&more);
                        held.push(room);
                    }
                    Err(_) => break,
                }
            }
            send.write_all(&batch).await?;
            send.flush().await?;
            batch.clear();
            held.clear();
        }
        anyhow::Ok(())
    });
    let mut requests = 0u64;
    let result = async {
        while let Some(len) = read_prefix(&mut recv, MAX_FRAME).await? {
            let room = request_room
                .clone()
                .acquire_many_owned(cost(len))
                .await
                .expect("never closed");
            let body = read_body(&mut recv, len).await?;
            requests += 1;
            if requests_in.send((body, room)).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    // Closing the request channel ends the session thread, which drops the session:
    // that frees every allocation, module, stream and event it held.
    gone.store(true, Ordering::Release);
    drop(requests_in);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    let written = writer.await.map_err(anyhow::Error::from).and_then(|r| r);
    crate::trim_heap();
    tracing::info!(%remote, tenant = %tenant.name, pid = hello.pid, requests, "session closed");
    result.and(written)
}

/// A frame in one of a session's queues, with the room it takes there.
type Queued = (Vec<u8>, OwnedSemaphorePermit);

/// The room a frame of `len` bytes takes in a queue (all of it, for a frame larger
/// than the queue: it then waits for the queue to empty).
fn cost(len: usize) -> u32 {
    (len + FRAME_OVERHEAD).min(REQUEST_QUEUE_BYTES.min(REPLY_QUEUE_BYTES)) as u32
}

/// The session's thread: runs each request in order and hands its encoded reply to
/// the writer (waiting for room in the reply queue), until the connection's request
/// stream ends or the client is gone.
fn run_session(
    mut session: Box<dyn Session>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<Queued>,
    replies: tokio::sync::mpsc::UnboundedSender<Queued>,
    reply_room: &Arc<Semaphore>,
    runtime: &tokio::runtime::Handle,
    gone: &AtomicBool,
) {
    while let Some((body, room)) = requests.blocking_recv() {
        if gone.load(Ordering::Acquire) {
            break;
        }
        let encoded = handle_frame(session.as_mut(), None, &body);
        drop((body, room));
        let Ok(room) = runtime.block_on(reply_room.clone().acquire_many_owned(cost(encoded.len())))
        else {
            break;
        };
        if replies.send((encoded, room)).is_err() {
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
fn welcome(host: &Host, tenant: &Tenant, shared_region: bool) -> Welcome {
    let backend = host.backend();
    Welcome {
        shared_region,
        protocol_version: PROTOCOL_VERSION,
        backend: backend.name().to_owned(),
        driver_version: backend.driver_version(),
        devices: host.devices_for(tenant),
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
        self.tenants.admit(&hello.token)
    }

    /// Decides on a client's hello: its tenant and a new session (counted among
    /// the tenant's), or why not. May block (opening a session can start a worker
    /// process).
    fn admit(&self, hello: &Hello) -> Result<(Tenant, Box<dyn Session>, SessionSlot), CuError> {
        let tenant = self.tenant(hello)?;
        let slot = tenant.open_slot()?;
        let modules = self.modules.clone();
        let session = self.host.open_session(&tenant, hello.pid, |inner| {
            Box::new(CachingSession::new(inner, modules, &tenant.name))
        })?;
        Ok((tenant, Box::new(session), slot))
    }

    /// A place for a new connection among those not yet admitted, or `None` (and a
    /// warning) when they are all taken.
    fn place(&self, remote: &str) -> Option<OwnedSemaphorePermit> {
        let place = self.unauthenticated.clone().try_acquire_owned().ok();
        if place.is_none() {
            // A flood is one line a second, not one a connection.
            let refused = self.refused.fetch_add(1, Ordering::AcqRel) + 1;
            let now = self.started.elapsed().as_secs() + 1;
            if self.refused_warned.swap(now, Ordering::AcqRel) != now {
                tracing::warn!(%remote, refused, "refusing connections: {MAX_UNAUTHENTICATED} others have not sent their hello yet");
            }
        }
        place
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

/// A connection on the Unix socket: its first byte (which may carry the client's
/// shared-memory region) and its hello are read here, on the runtime, with the
/// same limits as on QUIC; only an admitted session gets a thread of its own.
async fn serve_unix(
    mut stream: tokio::net::UnixStream,
    shared: Shared,
    place: OwnedSemaphorePermit,
) -> Result<()> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            stream.readable().await?;
            match stream.try_io(tokio::io::Interest::READABLE, || {
                xpupool_protocol::region::recv_region(&stream)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                received => break received,
            }
        }
    })
    .await;
    let region_fd = match first {
        Ok(received) => received?,
        Err(_) => bail!("no first byte within {HELLO_TIMEOUT:?}"),
    };
    let (mut recv, mut send) = stream.split();
    let admitted = greet(&mut recv, &mut send, "unix", true, &shared).await?;
    drop(place);
    let Some(admitted) = admitted else {
        return Ok(());
    };
    // Mapped only for an admitted client.
    let region = region_fd.and_then(|fd| match Region::map_received(&fd) {
        Ok(region) => Some(region),
        Err(e) => {
            tracing::warn!("not using a client's shared-memory region: {e}");
            None
        }
    });
    write_message(
        &mut send,
        &Ok::<_, CuError>(welcome(&shared.host, &admitted.tenant, region.is_some())),
    )
    .await?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    std::thread::Builder::new()
        .name("xpupool-unix-session".to_owned())
        .spawn(move || {
            if let Err(e) = serve_unix_session(stream, region, admitted) {
                tracing::info!(remote = "unix", error = %e, "connection ended");
            }
        })
        .context("starting a Unix-socket session thread")?;
    Ok(())
}

/// One admitted session on a Unix socket, all on one thread with blocking I/O: read
/// a request, run it, and send the replies that have piled up whenever no further
/// request is already waiting (the client is then waiting for them). No hand-over
/// between threads on the way. Its queues are the socket's buffers and at most
/// 1 MiB of replies: a client that stops reading stalls this thread alone.
fn serve_unix_session(
    stream: std::os::unix::net::UnixStream,
    mut region: Option<Region>,
    admitted: Admitted,
) -> Result<()> {
    use std::io::Write;
    let Admitted {
        tenant,
        mut session,
        hello,
        _slot: slot,
    } = admitted;
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
    let mut send = stream.try_clone()?;
    let mut recv = std::io::BufReader::with_capacity(1 << 16, stream);
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
    drop(slot);
    crate::trim_heap();
    tracing::info!(remote = "unix", tenant = %tenant.name, pid = hello.pid, requests, "session closed");
    result
}
