//! The trait every backend (`mock`, `cuda`, `hip`, `acl`) implements.

use serde_bytes::ByteBuf;
use xpupool_protocol::api::dispatch;
use xpupool_protocol::{code, Api, CuError, DeviceInfo, Reply, Request, MAX_COPY_CHUNK};

pub use crate::tenancy::{SessionSlot, Tenant};

/// A source of devices and of per-client sessions on them.
pub trait Backend: Send + Sync + 'static {
    /// Short name (`mock`, `cuda`, `hip`, …), reported to clients and in logs.
    fn name(&self) -> &'static str;
    /// The driver version clients report (`cuDriverGetVersion`).
    fn driver_version(&self) -> i32;
    /// The host's devices, in ordinal order (the tenancy layer makes each tenant's
    /// view of them).
    fn devices(&self) -> Vec<DeviceInfo>;
    /// Device memory in use on `device`, all sessions together, as the backend
    /// itself measures it: what the ledger is reconciled with. `None` where the
    /// backend cannot say.
    fn memory_used(&self, _device: u32) -> Option<u64> {
        None
    }
    /// What `device` draws now, in watts, where the backend can measure it.
    fn power_watts(&self, _device: u32) -> Option<f64> {
        None
    }
    /// Whether a launch returns only once its kernel is done, so that the time it
    /// takes is the kernel's: launches then go through the device's scheduler.
    fn launches_complete_on_return(&self) -> bool {
        false
    }
    /// `[start, end)` of the device addresses this backend hands out.
    fn device_address_range(&self) -> (u64, u64);
    /// A new session for `tenant` (whose policy's SM ceiling it applies where it
    /// can); dropping it frees everything it holds.
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
