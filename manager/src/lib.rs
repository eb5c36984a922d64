//! The xpupool pool manager: GPU hosts' servers register and heart-beat, jobs are
//! placed on a server and device by policy under a lease the server enforces,
//! and each tenant's use is metered from the servers' own counters.
//!
//! [`pool`] holds every decision (no I/O, no clock), [`store`] keeps the state in
//! memory or in etcd, [`service`] is the QUIC listener, [`metrics`] the
//! Prometheus endpoint, [`config`] the `manager.toml` parser.

pub mod config;
pub mod metrics;
pub mod pool;
pub mod service;
pub mod store;

pub use service::{BoundManager, Manager, ManagerConfig};
