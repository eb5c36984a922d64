//! The exported driver entry points, grouped as `cuda.h` groups them. Every
//! driver function defined here is exported; `build.rs` makes a NOT_SUPPORTED entry
//! point for every other driver symbol.

pub(crate) mod context;
pub(crate) mod device;
pub(crate) mod graph;
pub(crate) mod ipc;
pub(crate) mod launch;
pub(crate) mod link;
pub(crate) mod managed;
pub(crate) mod memory;
pub(crate) mod module;
pub(crate) mod pool;
pub(crate) mod stream;
pub(crate) mod texture;
pub(crate) mod vmm;
