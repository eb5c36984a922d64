//! The xpupool wire format, with no I/O.
//!
//! Every forwarded device operation is declared exactly once, in [`api`], by the
//! [`declare_api!`] macro. From that one declaration come the request and reply
//! variants that travel on the wire, the [`api::Api`] trait every server backend
//! implements, the server's [`api::dispatch`], and the client's typed call methods
//! ([`api::Calls`]). Adding an operation is one entry in that list plus its backend
//! implementations; nothing else is kept in parallel.
//!
//! Messages are framed as a little-endian `u32` length followed by a bincode body
//! ([`frame`]); lengths are bounded by [`MAX_FRAME`], and decoding never panics.

pub mod aclnn;
pub mod api;
pub mod frame;
mod handshake;
pub mod pool;
pub mod region;

pub use api::{Api, Calls, Reply, Request};
pub use handshake::{gpu_uuid_text, DeviceInfo, Hello, Probe, Welcome, ALPN, PROTOCOL_VERSION};

use serde::{Deserialize, Serialize};

/// `XPUPOOL_SERVER=unix:PATH` names a server's Unix socket on this host: the fast
/// path for a client beside its server (no TLS, no UDP; the token is still checked).
pub const UNIX_PREFIX: &str = "unix:";

/// The largest frame either side accepts (bulk copies are split below this).
pub const MAX_FRAME: usize = 80 << 20;

/// The largest hello a server reads before it has checked the token: a few KiB, so
/// a peer that has shown no token cannot make the server hold more.
pub const MAX_HELLO: usize = 4 << 10;

/// How often each end of a QUIC connection sends a keep-alive when it has nothing
/// else to send.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a QUIC connection may hear nothing from its peer before it is taken for
/// dead: a killed client's session is freed, and a client whose server is gone gets
/// an error, this long after the last packet. Keep-alives flow while a kernel runs,
/// so a long kernel never looks like a dead peer.
pub const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(600);

/// The largest payload of one copy message; the client splits larger copies.
pub const MAX_COPY_CHUNK: usize = 1 << 20;

/// A failed operation: the CUDA driver error code (`CUresult`) the client returns,
/// with a human-readable reason for logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CUDA error {code}: {message}")]
pub struct CuError {
    /// The `CUresult` value.
    pub code: u32,
    /// Why, for the client's log.
    pub message: String,
}

impl CuError {
    /// A new error with code and reason.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// `CUresult` codes the protocol layer itself needs (values from `cuda.h`).
pub mod code {
    /// CUDA_ERROR_INVALID_VALUE
    pub const INVALID_VALUE: u32 = 1;
    /// CUDA_ERROR_OUT_OF_MEMORY
    pub const OUT_OF_MEMORY: u32 = 2;
    /// CUDA_ERROR_NOT_INITIALIZED
    pub const NOT_INITIALIZED: u32 = 3;
    /// CUDA_ERROR_DEINITIALIZED
    pub const DEINITIALIZED: u32 = 4;
    /// CUDA_ERROR_NO_DEVICE
    pub const NO_DEVICE: u32 = 100;
    /// CUDA_ERROR_INVALID_DEVICE
    pub const INVALID_DEVICE: u32 = 101;
    /// CUDA_ERROR_INVALID_IMAGE
    pub const INVALID_IMAGE: u32 = 200;
    /// CUDA_ERROR_INVALID_CONTEXT
    pub const INVALID_CONTEXT: u32 = 201;
    /// CUDA_ERROR_NO_BINARY_FOR_GPU
    pub const NO_BINARY_FOR_GPU: u32 = 209;
    /// CUDA_ERROR_INVALID_HANDLE
    pub const INVALID_HANDLE: u32 = 400;
    /// CUDA_ERROR_NOT_FOUND
    pub const NOT_FOUND: u32 = 500;
    /// CUDA_ERROR_NOT_READY
    pub const NOT_READY: u32 = 600;
    /// CUDA_ERROR_ILLEGAL_ADDRESS
    pub const ILLEGAL_ADDRESS: u32 = 700;
    /// CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
    pub const LAUNCH_OUT_OF_RESOURCES: u32 = 701;
    /// CUDA_ERROR_LAUNCH_TIMEOUT (hipErrorLaunchTimeOut has the same number)
    pub const LAUNCH_TIMEOUT: u32 = 702;
    /// CUDA_ERROR_ASSERT
    pub const ASSERT: u32 = 710;
    /// CUDA_ERROR_ILLEGAL_INSTRUCTION
    pub const ILLEGAL_INSTRUCTION: u32 = 715;
    /// CUDA_ERROR_MISALIGNED_ADDRESS
    pub const MISALIGNED_ADDRESS: u32 = 716;
    /// CUDA_ERROR_LAUNCH_FAILED
    pub const LAUNCH_FAILED: u32 = 719;
    /// CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE
    pub const COOPERATIVE_LAUNCH_TOO_LARGE: u32 = 720;
    /// CUDA_ERROR_NOT_SUPPORTED
    pub const NOT_SUPPORTED: u32 = 801;
    /// CUDA_ERROR_NOT_PERMITTED
    pub const NOT_PERMITTED: u32 = 800;
    /// CUDA_ERROR_UNKNOWN
    pub const UNKNOWN: u32 = 999;
}
