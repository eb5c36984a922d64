//! A server that lives inside another process for as long as a handle to it does:
//! what `xpupool run` starts when no server is named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::{tls, Backend, Server, ServerConfig, TokenEntry};

/// A running embedded server; dropping it stops the server and removes its files.
pub struct EmbeddedServer {
    addr: SocketAddr,
    token: String,
    cert_path: PathBuf,
    dir: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EmbeddedServer {
    /// Starts `backend` on a loopback port with a throw-away certificate and token.
    pub fn start(backend: Arc<dyn Backend>) -> Result<Self> {
        Self::start_with_limit(backend, None)
    }

    /// Like [`EmbeddedServer::start`], with a device-memory limit for its one tenant.
    pub fn start_with_limit(backend: Arc<dyn Backend>, memory_limit: Option<u64>) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "xpupool-{}-{}",
            std::process::id(),
            &crate::random_token()[..8]
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let identity = tls::create_ephemeral(&dir)?;
        let cert_path = identity.cert_path.clone();
        let token = crate::random_token();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xpupool-server")
            .enable_all()
            .build()?;
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            identity,
            tokens: vec![TokenEntry {
                token: token.clone(),
                tenant: "local".to_owned(),
                memory_limit,
            }],
            backend,
        };
        let server = runtime.block_on(async { Server::bind(config) })?;
        let addr = server.local_addr()?;
        runtime.spawn(server.serve());
        Ok(Self {
            addr,
            token,
            cert_path,
            dir,
            runtime: Some(runtime),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token its one tenant uses.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Its certificate, for `XPUPOOL_SERVER_CERT`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
