//! The xpupool pool server.
//!
//! A QUIC listener ([`server`]) authenticates each client by its tenant token and
//! gives it a session on a [`Backend`]. Every handle and device pointer a request
//! names is checked against that session's own tables, and everything a session
//! holds is freed when its client disconnects or dies. Backends: [`mock`] (a CPU
//! stand-in that interprets PTX) now; `cuda`, `hip` and `acl` later.

pub mod backend;
pub mod embedded;
pub mod mock;
pub mod server;
pub mod tls;

pub use backend::{Backend, Tenant};
pub use mock::MockBackend;
pub use server::{Server, ServerConfig, TokenEntry};

/// A fresh random token (32 hex characters).
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}
