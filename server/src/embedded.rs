//! A server that lives inside another process for as long as a handle to it does:
//! what `xpupool run` starts when no server is named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::{tls, Backend, Server, ServerConfig, TokenEntry};

/// How to start an embedded server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Device memory each tenant may hold.
    pub memory_limit: Option<u64>,
    /// Where module images are kept on disk (memory only if `None`).
    pub module_cache_dir: Option<PathBuf>,
    /// Sessions each tenant may have open at once.
    pub max_sessions_per_tenant: usize,
    /// Tenants besides the one whose token [`EmbeddedServer::token`] gives, as
    /// `(tenant, token)`, each with `memory_limit`.
    pub extra_tenants: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            memory_limit: None,
            module_cache_dir: None,
            max_sessions_per_tenant: crate::server::DEFAULT_MAX_SESSIONS_PER_TENANT,
            extra_tenants: Vec::new(),
        }
    }
}

/// A running embedded server; dropping it stops the server and removes its files.
pub struct EmbeddedServer {
    addr: SocketAddr,
    unix_socket: Option<PathBuf>,
    token: String,
    cert_path: PathBuf,
    dir: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EmbeddedServer {
    /// Starts `backend` on a loopback port with a throw-away certificate and token,
    /// keeping module images in memory only.
    pub fn start(backend: Arc<dyn Backend>) -> Result<Self> {
        Self::start_with(backend, Options::default())
    }

    /// Like [`EmbeddedServer::start`], with a device-memory limit for its one tenant.
    pub fn start_with_limit(backend: Arc<dyn Backend>, memory_limit: Option<u64>) -> Result<Self> {
        Self::start_with(
            backend,
            Options {
                memory_limit,
                ..Options::default()
            },
        )
    }

    /// What `xpupool run` starts: module images are also kept on disk
    /// ([`default_module_cache`]), so the next run uploads none it has sent before.
    pub fn start_for_run(backend: Arc<dyn Backend>, memory_limit: Option<u64>) -> Result<Self> {
        Self::start_with(
            backend,
            Options {
                memory_limit,
                module_cache_dir: default_module_cache(),
                ..Options::default()
            },
        )
    }

    /// Starts `backend` as `options` say.
    pub fn start_with(backend: Arc<dyn Backend>, options: Options) -> Result<Self> {
        let Options {
            memory_limit,
            module_cache_dir,
            max_sessions_per_tenant,
            extra_tenants,
        } = options;
        let dir = std::env::temp_dir().join(format!(
            "xpupool-{}-{}",
            std::process::id(),
            &crate::random_token()[..8]
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The folder holds the Unix socket: only this user may reach it.
        std::fs::set_permissions(
            &dir,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
        )?;
        let unix_socket = dir.join("server.sock");
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
            tokens: std::iter::once(("local".to_owned(), token.clone()))
                .chain(extra_tenants)
                .map(|(tenant, token)| {
                    let mut entry = TokenEntry::new(tenant, token, memory_limit);
                    entry.policy.max_sessions = max_sessions_per_tenant;
                    entry
                })
                .collect(),
            backend,
            module_cache_dir,
            unix_socket: Some(unix_socket.clone()),
        };
        let server = runtime.block_on(async { Server::bind(config) })?;
        let addr = server.local_addr()?;
        let unix_socket = server.has_unix_socket().then_some(unix_socket);
        runtime.spawn(server.serve());
        Ok(Self {
            addr,
            unix_socket,
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

    /// Its Unix socket, for clients on this host (`XPUPOOL_SERVER=unix:PATH`), unless
    /// it could not be made (then clients use [`EmbeddedServer::addr`]).
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// What a client on this host sets `XPUPOOL_SERVER` to: the Unix socket if there
    /// is one, else the QUIC address.
    pub fn client_address(&self) -> String {
        match &self.unix_socket {
            Some(path) => format!("{}{}", xpupool_protocol::UNIX_PREFIX, path.display()),
            None => self.addr.to_string(),
        }
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

/// Where an embedded server keeps module images between runs:
/// `$XDG_CACHE_HOME/xpupool/modules` or `~/.cache/xpupool/modules`.
pub fn default_module_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("xpupool").join("modules"))
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
