//! The raw transport: a plain quinn server and client with the same TLS 1.3 setup as
//! xpupool (ring provider, TLS 1.3 only, a self-signed certificate made with rcgen,
//! the same transport settings) and nothing of xpupool in the path. Its figures are
//! the floor xpupool's own are compared with.
//!
//! The server takes bi-streams whose first byte says what they are for:
//! [`ECHO`] (every 64-byte message is sent back) or [`SINK`] (a `u64` length, then
//! that many bytes, answered with one byte once all have arrived).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use quinn::{RecvStream, SendStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Size of an echo message.
pub(crate) const MESSAGE: usize = 64;
/// Size of one bulk write.
pub(crate) const BULK_WRITE: usize = 1 << 20;

const ECHO: u8 = b'E';
const SINK: u8 = b'S';
const SERVER_NAME: &str = "xpupool-bench";
const ALPN: &[u8] = b"xpupool-bench";

/// A raw echo/sink server on loopback, running on its own runtime like the embedded
/// xpupool server (two worker threads).
pub(crate) struct RawServer {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RawServer {
    pub(crate) fn start() -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
        let cert = certified.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("raw-server")
            .enable_all()
            .build()?;
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
        Ok(Self {
            addr,
            cert,
            runtime: Some(runtime),
        })
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn serve_stream(mut send: SendStream, mut recv: RecvStream) -> Result<()> {
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
            let mut left = u64::from_le_bytes(len);
            while left > 0 {
                let chunk = recv
                    .read_chunk(usize::MAX, true)
                    .await?
                    .context("bulk stream ended early")?;
                left -= chunk.bytes.len() as u64;
            }
            send.write_all(&[1]).await?;
        }
        _ => {}
    }
    let _ = send.finish();
    Ok(())
}

/// A client of [`RawServer`] on a current-thread runtime driven by `block_on` from the
/// calling thread: the transport's own floor. (xpupool's client drives a one-worker
/// multi-thread runtime from the calling thread, so each of its reads and writes
/// crosses threads; that cost is xpupool's, and shows in the ratios.)
pub(crate) struct RawClient {
    runtime: tokio::runtime::Runtime,
    connection: quinn::Connection,
    echo: Option<(SendStream, RecvStream)>,
}

impl RawClient {
    pub(crate) fn connect(server: &RawServer) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.cert.clone())?;
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
        let addr = server.addr;
        let connection = runtime.block_on(async move {
            let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
            endpoint.set_default_client_config(config);
            anyhow::Ok(endpoint.connect(addr, SERVER_NAME)?.await?)
        })?;
        Ok(Self {
            runtime,
            connection,
            echo: None,
        })
    }

    /// One 64-byte request and its echo; returns the round trip's duration.
    pub(crate) fn round_trip(&mut self) -> Result<Duration> {
        if self.echo.is_none() {
            let connection = self.connection.clone();
            let stream = self.runtime.block_on(async move {
                let (mut send, recv) = connection.open_bi().await?;
                send.write_all(&[ECHO]).await?;
                anyhow::Ok((send, recv))
            })?;
            self.echo = Some(stream);
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
    /// sink's acknowledgement; returns the time from the first write to the ack.
    pub(crate) fn bulk(&self, total: u64) -> Result<Duration> {
        let connection = self.connection.clone();
        let block = vec![0xa5u8; BULK_WRITE];
        self.runtime.block_on(async move {
            let (mut send, mut recv) = connection.open_bi().await?;
            let start = Instant::now();
            let mut header = vec![SINK];
            header.extend_from_slice(&total.to_le_bytes());
            send.write_all(&header).await?;
            let mut left = total;
            while left > 0 {
                let n = left.min(BULK_WRITE as u64) as usize;
                send.write_all(&block[..n]).await?;
                left -= n as u64;
            }
            let mut ack = [0u8; 1];
            recv.read_exact(&mut ack).await?;
            let elapsed = start.elapsed();
            let _ = send.finish();
            anyhow::Ok(elapsed)
        })
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"done");
    }
}
