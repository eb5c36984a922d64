//! xpupool's own figures: a client of an embedded mock server, over QUIC on loopback
//! or over the server's Unix socket, making the calls the shim makes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_bytes::ByteBuf;
use xpupool_client::{Connection, Settings, UNIX_PREFIX};
use xpupool_protocol::api::{GraphNode, LaunchDims};
use xpupool_protocol::{Calls, CuError, Request};
use xpupool_server::embedded::EmbeddedServer;
use xpupool_server::MockBackend;

use crate::{Progress, Transport};

/// A kernel that does nothing; hand-written PTX.
const EMPTY_PTX: &str = r#"
.version 8.0
.target sm_90
.address_size 64

.visible .entry empty()
{
    ret;
}
"#;

/// An embedded mock server and one client session of it.
pub(crate) struct Pool {
    // Field order: the connection goes before the server it talks to.
    pub(crate) conn: Connection,
    _server: EmbeddedServer,
}

/// A CUDA error as an error of the harness.
pub(crate) fn cu(e: CuError) -> anyhow::Error {
    anyhow!("CUDA error {}: {}", e.code, e.message)
}

impl Pool {
    /// Starts a mock server with `memory` bytes of device memory.
    pub(crate) fn server(memory: u64) -> Result<EmbeddedServer> {
        EmbeddedServer::start(Arc::new(MockBackend::new(memory)))
            .context("starting the embedded mock server")
    }

    /// Connects to `server` over `transport`; the pool then owns the server.
    pub(crate) fn connect(server: EmbeddedServer, transport: Transport) -> Result<Self> {
        let token = server.token().to_owned();
        let settings = match transport {
            Transport::Quic => Settings {
                server: server.addr().to_string(),
                cert: Some(server.cert_path().to_string_lossy().into_owned()),
                fingerprint: None,
                token,
                quic_only: true,
            },
            Transport::Local => {
                let socket = server
                    .unix_socket()
                    .context("the embedded server could not make its Unix socket")?;
                Settings {
                    server: format!("{UNIX_PREFIX}{}", socket.display()),
                    cert: None,
                    fingerprint: None,
                    token,
                    quic_only: false,
                }
            }
        };
        let conn = Connection::open(&settings).context("connecting to the embedded server")?;
        Ok(Self {
            conn,
            _server: server,
        })
    }

    /// One idle `synchronize()` round trip.
    pub(crate) fn sync_round_trip(&self) -> Result<Duration> {
        let start = Instant::now();
        self.conn.synchronize().map_err(cu)?;
        Ok(start.elapsed())
    }

    /// Loads the empty kernel and returns its function handle.
    fn empty_kernel(&self) -> Result<u64> {
        let image = ByteBuf::from(xpupool_fatbin::Image::Ptx(EMPTY_PTX.to_owned()).to_wire());
        let module = self.conn.module_load(0, image).map_err(cu)?;
        module
            .functions
            .iter()
            .find(|f| f.name == "empty")
            .map(|f| f.handle)
            .context("the empty kernel is not in its module")
    }

    /// Posts `count` launches of a one-thread empty kernel, then synchronises;
    /// returns the time from the first post to the end of the synchronisation.
    pub(crate) fn launches(&self, count: u64, progress: &mut Progress) -> Result<Duration> {
        let function = self.empty_kernel()?;
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [1, 1, 1],
            shared_bytes: 0,
        };
        // Warm up (and check that the kernel really launches).
        self.conn
            .launch_kernel(function, dims, 0, ByteBuf::new())
            .map_err(cu)?;
        let step = (count / 20).max(1);
        let start = Instant::now();
        for i in 0..count {
            self.conn
                .post(Request::LaunchKernel {
                    function,
                    dims,
                    stream: 0,
                    params: ByteBuf::new(),
                })
                .map_err(cu)?;
            if (i + 1) % step == 0 {
                progress.percent((i + 1) as f64 / count as f64);
            }
        }
        self.conn.synchronize().map_err(cu)?;
        Ok(start.elapsed())
    }

    /// `nodes` empty-kernel launches sent one by one (posted, then a synchronise),
    /// and the same as one graph kept by the server (one posted launch, then a
    /// synchronise): the best time of `rounds` of each.
    pub(crate) fn graph_vs_launches(
        &self,
        nodes: usize,
        rounds: usize,
    ) -> Result<(Duration, Duration)> {
        let function = self.empty_kernel()?;
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [1, 1, 1],
            shared_bytes: 0,
        };
        let node = GraphNode::Kernel {
            function,
            dims,
            params: ByteBuf::new(),
        };
        let graph = self
            .conn
            .graph_create(vec![node.clone(); nodes])
            .map_err(cu)?;
        let (mut one_by_one, mut as_graph) = (Duration::MAX, Duration::MAX);
        for _ in 0..rounds.max(1) {
            let start = Instant::now();
            for _ in 0..nodes {
                self.conn.post(node.in_stream(0)).map_err(cu)?;
            }
            self.conn.synchronize().map_err(cu)?;
            one_by_one = one_by_one.min(start.elapsed());
            let start = Instant::now();
            self.conn
                .post(Request::GraphLaunch { graph, stream: 0 })
                .map_err(cu)?;
            self.conn.synchronize().map_err(cu)?;
            as_graph = as_graph.min(start.elapsed());
        }
        self.conn
            .post(Request::GraphDestroy { graph })
            .map_err(cu)?;
        Ok((one_by_one, as_graph))
    }

    /// Allocates `bytes` of device memory.
    pub(crate) fn alloc(&self, bytes: u64) -> Result<u64> {
        self.conn.mem_alloc(0, bytes).map_err(cu)
    }

    /// Copies `src` to device memory at `dst` as the shim does
    /// ([`Connection::copy_to_device`]: through the shared-memory region on the
    /// local transport, in messages over QUIC), then synchronises; returns the time
    /// until the copy is known to be done.
    pub(crate) fn h2d(&self, dst: u64, src: &[u8]) -> Result<Duration> {
        let start = Instant::now();
        self.conn.copy_to_device(dst, src, 0).map_err(cu)?;
        self.conn.synchronize().map_err(cu)?;
        Ok(start.elapsed())
    }

    /// Copies device memory at `src` into `dst` as the shim does; returns the time
    /// taken.
    pub(crate) fn d2h(&self, src: u64, dst: &mut [u8]) -> Result<Duration> {
        let start = Instant::now();
        self.conn.copy_from_device(src, dst, 0).map_err(cu)?;
        Ok(start.elapsed())
    }
}
