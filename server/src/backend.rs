//! The trait every backend (`mock`, `cuda`; `hip` and `acl` later) implements.

use std::sync::Arc;

use xpupool_protocol::{Api, CuError, DeviceInfo, Reply, Request};

use crate::quota::MemoryLedger;

/// An authenticated tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant's name, from the server's token table.
    pub name: String,
    /// The tenant's memory ledger, shared by all its sessions.
    pub memory: Arc<MemoryLedger>,
}

/// A source of devices and of per-client sessions on them.
pub trait Backend: Send + Sync + 'static {
    /// Short name (`mock`, `cuda`, …), reported to clients and in logs.
    fn name(&self) -> &'static str;
    /// The driver version clients report (`cuDriverGetVersion`).
    fn driver_version(&self) -> i32;
    /// The devices as this tenant sees them (memory clamped to its quota).
    fn devices(&self, tenant: &Tenant) -> Vec<DeviceInfo>;
    /// `[start, end)` of the device addresses this backend hands out.
    fn device_address_range(&self) -> (u64, u64);
    /// A new session; dropping it frees everything it holds.
    fn open_session(&self, tenant: &Tenant) -> Result<Box<dyn Session>, CuError>;
}

/// One client's session: handles its requests in order.
pub trait Session: Send {
    /// Runs one request.
    fn handle(&mut self, request: Request) -> Result<Reply, CuError>;
}

/// A backend's [`Api`] implementation is a session: each request is dispatched to it.
impl<T: Api + Send> Session for T {
    fn handle(&mut self, request: Request) -> Result<Reply, CuError> {
        xpupool_protocol::api::dispatch(self, request)
    }
}
