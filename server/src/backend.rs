//! The trait every backend (`mock` now; `cuda`, `hip`, `acl` later) implements.

use xpupool_protocol::{Api, DeviceInfo};

/// An authenticated tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant's name, from the server's token table.
    pub name: String,
    /// Device memory this tenant may hold at once, if limited.
    pub memory_limit: Option<u64>,
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
    fn open_session(&self, tenant: &Tenant) -> Box<dyn Api + Send>;
}
