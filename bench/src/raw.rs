//! The raw transports, with nothing of xpupool in the path: their figures are the
//! floor xpupool's own are compared with.
//!
//! - QUIC: a plain quinn server and client with the same TLS 1.3 setup as xpupool
//!   (ring provider, TLS 1.3 only, a self-signed certificate made with rcgen, the same
//!   transport settings).
//! - Local: what xpupool's same-host transport is made of — a Unix socket with
//!   blocking I/O on one thread per side, and a shared-memory region (a memfd) that
//!   bulk data crosses in 4 MiB slots: the client copies a slot in and sends its
//!   offset and length on the socket, the server copies it out into its own buffer
//!   and answers with one byte.
//!
//! The server takes streams (QUIC bi-streams, Unix socket connections) whose first
//! byte says what they are for: [`ECHO`] (every 64-byte message is sent back),
//! [`SINK`] (QUIC: a `u64` length, then that many bytes, answered with one byte once
//! all have arrived) or [`RING`] (Unix: a `u64` length, a byte back once the
//! destination buffer is ready, then one 16-byte slot message per slot, each
//! answered with a byte).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xpupool_protocol::region::{recv_region, send_region, Region};

use crate::Transport;

/// Size of an echo message.
pub(crate) const MESSAGE: usize = 64;
/// Size of one bulk write.
pub(crate) const BULK_WRITE: usize = 1 << 20;

const ECHO: u8 = b'E';
const SINK: u8 = b'S';
const RING: u8 = b'G';
/// Slots of the raw ring, and their size: as xpupool's client uses its region.
const RING_SLOTS: usize = 8;
const RING_SLOT: usize = 4 << 20;
const SERVER_NAME: &str = "xpupool-bench";
const ALPN: &[u8] = b"xpupool-bench";

/// Where a [`RawServer`] listens.
enum Listening {
    Quic {
        addr: SocketAddr,
        cert: CertificateDer<'static>,
    },
    /// A socket in a folder of its own, removed with the server; served by plain
    /// threads with blocking I/O.
    Unix { dir: PathBuf, socket: PathBuf },
}

/// A raw echo/sink server on this host, running on its own runtime like the embedded
/// xpupool server (two worker threads).
pub(crate) struct RawServer {
    listening: Listening,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RawServer {
    pub(crate) fn start(transport: Transport) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("raw-server")
            .enable_all()
            .build()?;
        let listening = match transport {
            Transport::Quic => start_quic(&runtime)?,
            Transport::Local => start_unix()?,
        };
        Ok(Self {
            listening,
            runtime: Some(runtime),
        })
    }
}

fn start_quic(runtime: &tokio::runtime::Runtime) -> Result<Listening> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into()?));
    transport.keep_alive_interval(None);
    config.transport_config(Arc::new(transport));
    let endpoint = runtime.block_on(async {
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("literal address"))
    })?;
    let addr = endpoint.local_addr()?;
    runtime.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    tokio::spawn(serve_stream(send, recv));
                }
            });
        }
    });
    Ok(Listening::Quic { addr, cert })
}

fn start_unix() -> Result<Listening> {
    static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xpupool-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("raw.sock");
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::thread::Builder::new()
        .name("raw-unix".into())
        .spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let _ = std::thread::Builder::new()
                    .name("raw-unix-conn".into())
                    .spawn(move || serve_unix(stream));
            }
        })?;
    Ok(Listening::Unix { dir, socket })
}

/// One raw Unix connection: its region (if any), then what its kind byte asks.
fn serve_unix(stream: UnixStream) -> Result<()> {
    let region = recv_region(&stream)?
        .map(|fd| Region::map_received(&fd))
        .transpose()?;
    let mut send = &stream;
    let mut recv = &stream;
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind)?;
    match (kind[0], region) {
        (ECHO, _) => {
            let mut message = [0u8; MESSAGE];
            while recv.read_exact(&mut message).is_ok() {
                send.write_all(&message)?;
            }
        }
        (RING, Some(region)) => {
            // Transfers one after another; the destination is kept and touched
            // before each transfer's clock starts (like device memory in the
            // xpupool measurement).
            let mut destination = Vec::new();
            let mut len = [0u8; 8];
            while recv.read_exact(&mut len).is_ok() {
                let total = u64::from_le_bytes(len) as usize;
                if destination.len() < total {
                    destination = vec![0x11u8; total];
                }
                send.write_all(&[1])?;
                let mut at = 0usize;
                let mut slot = [0u8; 16];
                while at < total && recv.read_exact(&mut slot).is_ok() {
                    let offset = u64::from_le_bytes(slot[..8].try_into().expect("8 bytes"));
                    let n = u64::from_le_bytes(slot[8..].try_into().expect("8 bytes")) as usize;
                    let bytes = region
                        .bytes(offset, n)
                        .context("a slot outside the region")?;
                    destination[at..at + n].copy_from_slice(bytes);
                    at += n;
                    send.write_all(&[1])?;
                }
                std::hint::black_box(&destination);
            }
        }
        _ => {}
    }
    Ok(())
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        if let Listening::Unix { dir, .. } = &self.listening {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The receiving end of a bulk transfer, drained the cheapest way it allows.
trait Drain: AsyncRead + Unpin {
    /// Reads and discards `len` bytes.
    async fn drain(&mut self, len: u64) -> Result<()>;
}

impl Drain for quinn::RecvStream {
    /// Takes the received chunks as they are, without copying them out.
    async fn drain(&mut self, mut len: u64) -> Result<()> {
        while len > 0 {
            let chunk = self
                .read_chunk(usize::MAX, true)
                .await?
                .context("bulk stream ended early")?;
            len -= chunk.bytes.len() as u64;
        }
        Ok(())
    }
}

async fn serve_stream(mut send: impl AsyncWrite + Unpin, mut recv: impl Drain) -> Result<()> {
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind).await?;
    match kind[0] {
        ECHO => {
            let mut message = [0u8; MESSAGE];
            while recv.read_exact(&mut message).await.is_ok() {
                send.write_all(&message).await?;
            }
        }
        SINK => {
            let mut len = [0u8; 8];
            recv.read_exact(&mut len).await?;
            recv.drain(u64::from_le_bytes(len)).await?;
            send.write_all(&[1]).await?;
        }
        _ => {}
    }
    let _ = send.shutdown().await;
    Ok(())
}

type Writer = Box<dyn AsyncWrite + Unpin>;
type Reader = Box<dyn AsyncRead + Unpin>;

/// How a [`RawClient`] reaches its server.
enum Link {
    Quic(quinn::Connection),
    Unix(PathBuf),
}

impl Link {
    /// Opens a QUIC bi-stream of `kind`.
    async fn open(&self, kind: u8) -> Result<(Writer, Reader)> {
        let Link::Quic(connection) = self else {
            anyhow::bail!("not a QUIC link");
        };
        let (mut send, recv) = connection.open_bi().await?;
        send.write_all(&[kind]).await?;
        Ok((Box::new(send), Box::new(recv)))
    }

    /// Opens a Unix socket connection of `kind`, offering `region`'s descriptor.
    fn open_unix(&self, kind: u8, region: Option<&std::os::fd::OwnedFd>) -> Result<UnixStream> {
        let Link::Unix(socket) = self else {
            anyhow::bail!("not a Unix link");
        };
        let mut stream = UnixStream::connect(socket)?;
        send_region(&stream, region)?;
        stream.write_all(&[kind])?;
        Ok(stream)
    }
}

/// A client of [`RawServer`] on a current-thread runtime driven by `block_on` from the
/// calling thread: the transport's own floor. (xpupool's client drives a one-worker
/// multi-thread runtime from the calling thread, so each of its reads and writes
/// crosses threads; that cost is xpupool's, and shows in the ratios.)
pub(crate) struct RawClient {
    runtime: tokio::runtime::Runtime,
    link: Link,
    echo: Option<(Writer, Reader)>,
    unix_echo: Option<UnixStream>,
    /// The ring connection and its region, made on first use (its pages touched).
    ring: std::cell::RefCell<Option<(UnixStream, Region)>>,
}

impl RawClient {
    pub(crate) fn connect(server: &RawServer) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let link = match &server.listening {
            Listening::Quic { addr, cert } => {
                Link::Quic(runtime.block_on(connect_quic(*addr, cert.clone()))?)
            }
            Listening::Unix { socket, .. } => Link::Unix(socket.clone()),
        };
        Ok(Self {
            runtime,
            link,
            echo: None,
            unix_echo: None,
            ring: std::cell::RefCell::new(None),
        })
    }

    /// One 64-byte request and its echo; returns the round trip's duration.
    pub(crate) fn round_trip(&mut self) -> Result<Duration> {
        if let Link::Unix(_) = self.link {
            if self.unix_echo.is_none() {
                self.unix_echo = Some(self.link.open_unix(ECHO, None)?);
            }
            let mut stream = self.unix_echo.as_ref().expect("opened above");
            let message = [0x5au8; MESSAGE];
            let mut back = [0u8; MESSAGE];
            let start = Instant::now();
            stream.write_all(&message)?;
            stream.read_exact(&mut back)?;
            return Ok(start.elapsed());
        }
        if self.echo.is_none() {
            self.echo = Some(self.runtime.block_on(self.link.open(ECHO))?);
        }
        let (send, recv) = self.echo.as_mut().expect("opened above");
        let message = [0x5au8; MESSAGE];
        let mut back = [0u8; MESSAGE];
        let start = Instant::now();
        self.runtime.block_on(async {
            send.write_all(&message).await?;
            recv.read_exact(&mut back).await?;
            anyhow::Ok(())
        })?;
        Ok(start.elapsed())
    }

    /// Sends `total` bytes on a new stream in [`BULK_WRITE`] writes and waits for the
    /// sink's acknowledgement; returns the time from the length's write to the ack.
    pub(crate) fn bulk(&self, total: u64) -> Result<Duration> {
        if let Link::Unix(_) = self.link {
            return self.ring(total);
        }
        let block = vec![0xa5u8; BULK_WRITE];
        self.runtime.block_on(async {
            let (mut send, mut recv) = self.link.open(SINK).await?;
            let start = Instant::now();
            send.write_all(&total.to_le_bytes()).await?;
            let mut left = total;
            while left > 0 {
                let n = left.min(BULK_WRITE as u64) as usize;
                send.write_all(&block[..n]).await?;
                left -= n as u64;
            }
            let mut ack = [0u8; 1];
            recv.read_exact(&mut ack).await?;
            let elapsed = start.elapsed();
            let _ = send.shutdown().await;
            anyhow::Ok(elapsed)
        })
    }
}

impl RawClient {
    /// Carries `total` bytes from a buffer here to one in the server through a
    /// shared-memory ring ([`RING`]); returns the time from the first slot to the
    /// last acknowledgement.
    fn ring(&self, total: u64) -> Result<Duration> {
        let mut ring = self.ring.borrow_mut();
        if ring.is_none() {
            let (mut region, fd) = Region::create(RING_SLOTS * RING_SLOT)?;
            region
                .bytes_mut(0, region.len())
                .context("the whole region")?
                .fill(0);
            let stream = self.link.open_unix(RING, Some(&fd))?;
            *ring = Some((stream, region));
        }
        let (stream, region) = ring.as_mut().expect("made above");
        let source = vec![0xa5u8; total as usize];
        stream.write_all(&total.to_le_bytes())?;
        let mut ready = [0u8; 1];
        stream.read_exact(&mut ready)?;
        let start = Instant::now();
        let mut acked = 0usize;
        let mut ack = [0u8; 1];
        for (i, chunk) in source.chunks(RING_SLOT).enumerate() {
            let slot = i % RING_SLOTS;
            // The slot is free once the copy that used it was acknowledged.
            while i >= RING_SLOTS && acked <= i - RING_SLOTS {
                stream.read_exact(&mut ack)?;
                acked += 1;
            }
            let offset = (slot * RING_SLOT) as u64;
            region
                .bytes_mut(offset, chunk.len())
                .context("slot inside the region")?
                .copy_from_slice(chunk);
            let mut message = [0u8; 16];
            message[..8].copy_from_slice(&offset.to_le_bytes());
            message[8..].copy_from_slice(&(chunk.len() as u64).to_le_bytes());
            stream.write_all(&message)?;
        }
        let slots = source.len().div_ceil(RING_SLOT);
        while acked < slots {
            stream.read_exact(&mut ack)?;
            acked += 1;
        }
        Ok(start.elapsed())
    }
}

async fn connect_quic(
    addr: SocketAddr,
    cert: CertificateDer<'static>,
) -> Result<quinn::Connection> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint.connect(addr, SERVER_NAME)?.await?)
}

impl Drop for RawClient {
    fn drop(&mut self) {
        if let Link::Quic(connection) = &self.link {
            connection.close(0u32.into(), b"done");
        }
    }
}
