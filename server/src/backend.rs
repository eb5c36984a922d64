//! The trait every backend (`mock`, `cuda`; `hip` and `acl` later) implements.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_bytes::ByteBuf;
use xpupool_protocol::api::dispatch;
use xpupool_protocol::{code, Api, CuError, DeviceInfo, Reply, Request, MAX_COPY_CHUNK};

use crate::quota::MemoryLedger;

/// An authenticated tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant's name, from the server's token table.
    pub name: String,
    /// The tenant's memory ledger, shared by all its sessions.
    pub memory: Arc<MemoryLedger>,
    /// How many sessions the tenant has open, across its tokens and transports.
    pub sessions: Arc<AtomicUsize>,
}

impl Tenant {
    /// A tenant with its own ledger (`limit` bytes, if limited) and no sessions yet.
    pub fn new(name: impl Into<String>, limit: Option<u64>) -> Self {
        Self {
            name: name.into(),
            memory: Arc::new(MemoryLedger::new(limit)),
            sessions: Arc::default(),
        }
    }

    /// Counts one more session of this tenant, unless it has `max` open already;
    /// the session counts until the returned slot is dropped.
    pub fn open_slot(&self, max: usize) -> Result<SessionSlot, CuError> {
        let mut open = self.sessions.load(Ordering::Acquire);
        loop {
            if open >= max {
                return Err(CuError::new(
                    code::NOT_PERMITTED,
                    format!(
                        "tenant {} has {open} sessions open, the server's limit per tenant",
                        self.name
                    ),
                ));
            }
            match self.sessions.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(SessionSlot(self.sessions.clone())),
                Err(now) => open = now,
            }
        }
    }
}

/// One open session of a tenant ([`Tenant::open_slot`]); dropping it frees the slot.
#[derive(Debug)]
pub struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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

    /// Copies host bytes held by the transport (a shared-memory region) to the
    /// device, in stream order. By default as [`Request::MemcpyHtoD`]s.
    fn memcpy_htod_from(&mut self, dst: u64, data: &[u8], stream: u64) -> Result<(), CuError> {
        htod_by_requests(|r| self.handle(r), dst, data, stream)
    }

    /// Copies device bytes into memory held by the transport, in stream order. By
    /// default as [`Request::MemcpyDtoH`]s.
    fn memcpy_dtoh_into(&mut self, src: u64, out: &mut [u8], stream: u64) -> Result<(), CuError> {
        dtoh_by_requests(|r| self.handle(r), src, out, stream)
    }
}

/// How a backend copies between the transport's memory and the device; the
/// defaults go through its ordinary copy operations.
pub trait DirectCopy: Api {
    /// [`Session::memcpy_htod_from`].
    fn memcpy_htod_direct(&mut self, dst: u64, data: &[u8], stream: u64) -> Result<(), CuError> {
        htod_by_requests(|r| dispatch(self, r), dst, data, stream)
    }

    /// [`Session::memcpy_dtoh_into`].
    fn memcpy_dtoh_direct(&mut self, src: u64, out: &mut [u8], stream: u64) -> Result<(), CuError> {
        dtoh_by_requests(|r| dispatch(self, r), src, out, stream)
    }
}

/// A backend's [`Api`] implementation is a session: each request is dispatched to it.
impl<T: DirectCopy + Send> Session for T {
    fn handle(&mut self, request: Request) -> Result<Reply, CuError> {
        dispatch(self, request)
    }

    fn memcpy_htod_from(&mut self, dst: u64, data: &[u8], stream: u64) -> Result<(), CuError> {
        self.memcpy_htod_direct(dst, data, stream)
    }

    fn memcpy_dtoh_into(&mut self, src: u64, out: &mut [u8], stream: u64) -> Result<(), CuError> {
        self.memcpy_dtoh_direct(src, out, stream)
    }
}

/// The address of chunk `i` of a copy at `base`; the client chose `base`.
fn offset(base: u64, i: usize) -> Result<u64, CuError> {
    base.checked_add((i * MAX_COPY_CHUNK) as u64)
        .ok_or_else(|| {
            CuError::new(
                code::INVALID_VALUE,
                "a copy past the end of the address space",
            )
        })
}

fn htod_by_requests(
    mut handle: impl FnMut(Request) -> Result<Reply, CuError>,
    dst: u64,
    data: &[u8],
    stream: u64,
) -> Result<(), CuError> {
    for (i, chunk) in data.chunks(MAX_COPY_CHUNK).enumerate() {
        handle(Request::MemcpyHtoD {
            dst: offset(dst, i)?,
            data: ByteBuf::from(chunk),
            stream,
        })?;
    }
    Ok(())
}

fn dtoh_by_requests(
    mut handle: impl FnMut(Request) -> Result<Reply, CuError>,
    src: u64,
    out: &mut [u8],
    stream: u64,
) -> Result<(), CuError> {
    for (i, chunk) in out.chunks_mut(MAX_COPY_CHUNK).enumerate() {
        let request = Request::MemcpyDtoH {
            src: offset(src, i)?,
            len: chunk.len() as u64,
            stream,
        };
        match handle(request)? {
            Reply::MemcpyDtoH(bytes) if bytes.len() == chunk.len() => chunk.copy_from_slice(&bytes),
            other => {
                return Err(CuError::new(
                    code::UNKNOWN,
                    format!("a device-to-host copy answered by {other:?}"),
                ))
            }
        }
    }
    Ok(())
}
