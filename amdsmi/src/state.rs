//! Process-wide state: the connection to the pool server (made once, by the first
//! `amdsmi_init` or `rsmi_init`), the devices it presented, and each API's init count.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use xpupool_client::Connection;
use xpupool_protocol::{Calls, CuError, DeviceInfo};

use crate::boundary::{Fail, Res};
use crate::format::Bdf;

/// CUDA device attributes (`CUdevice_attribute`) some answers come from.
pub(crate) mod attr {
    pub(crate) const CLOCK_RATE_KHZ: u32 = 13;
    pub(crate) const MULTIPROCESSOR_COUNT: u32 = 16;
    pub(crate) const PCI_BUS_ID: u32 = 33;
    pub(crate) const PCI_DEVICE_ID: u32 = 34;
    pub(crate) const MEMORY_CLOCK_RATE_KHZ: u32 = 36;
    pub(crate) const PCI_DOMAIN_ID: u32 = 50;
}

/// `CUDA_ERROR_DEVICE_UNAVAILABLE`: what the client answers once the server is gone.
const CUDA_ERROR_DEVICE_UNAVAILABLE: u32 = 46;

/// The two APIs; each counts its own init / shut-down calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Amdsmi,
    Rsmi,
}

/// One device; an `amdsmi_processor_handle` is a pointer to one of these.
pub(crate) struct Device {
    pub(crate) index: u32,
    pub(crate) info: DeviceInfo,
    pub(crate) bdf: Bdf,
}

/// One socket (one a device, as amdsmi reports a discrete GPU); an
/// `amdsmi_socket_handle` is a pointer to one of these.
pub(crate) struct Socket {
    pub(crate) index: u32,
}

impl Device {
    fn new(index: u32, info: DeviceInfo) -> Self {
        let attribute = |a| {
            info.attributes
                .iter()
                .find(|&&(k, _)| k == a)
                .map_or(0, |&(_, v)| v.max(0) as u64)
        };
        let bdf = Bdf {
            domain: attribute(attr::PCI_DOMAIN_ID),
            bus: attribute(attr::PCI_BUS_ID) as u8,
            device: attribute(attr::PCI_DEVICE_ID) as u8,
            function: 0,
        };
        Self { index, info, bdf }
    }

    /// A CUDA device attribute, if the server reported it.
    pub(crate) fn attribute(&self, attr: u32) -> Option<i32> {
        self.info
            .attributes
            .iter()
            .find(|&&(a, _)| a == attr)
            .map(|&(_, v)| v)
    }

    pub(crate) fn handle(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

impl Socket {
    pub(crate) fn handle(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

pub(crate) struct Smi {
    conn: Connection,
    pub(crate) devices: Box<[Device]>,
    pub(crate) sockets: Box<[Socket]>,
}

/// The outcome of the one connection attempt.
static SMI: OnceLock<Result<Smi, ()>> = OnceLock::new();
/// `amdsmi_init` / `rsmi_init` calls not yet matched by a shut-down.
static INIT_COUNTS: Mutex<[u32; 2]> = Mutex::new([0; 2]);
/// Set by the exit handler: from then on every call answers "not initialised".
static EXITING: AtomicBool = AtomicBool::new(false);

fn counts() -> MutexGuard<'static, [u32; 2]> {
    INIT_COUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn slot(api: Api) -> usize {
    match api {
        Api::Amdsmi => 0,
        Api::Rsmi => 1,
    }
}

/// `amdsmi_init` / `rsmi_init`: connects on the first call of either (later calls
/// reuse the outcome) and counts the initialisation.
pub(crate) fn initialise(api: Api) -> Res {
    if EXITING.load(Ordering::Acquire) {
        return Err(Fail::NotInit);
    }
    let mut counts = counts();
    match SMI.get_or_init(connect) {
        Ok(_) => {
            counts[slot(api)] += 1;
            Ok(())
        }
        Err(()) => Err(Fail::NoDriver),
    }
}

/// `amdsmi_shut_down` / `rsmi_shut_down`: undoes one init. The connection stays
/// open for a later init and is closed at process exit.
pub(crate) fn shutdown(api: Api) -> Res {
    let mut counts = counts();
    let count = &mut counts[slot(api)];
    if *count == 0 {
        return Err(Fail::NotInit);
    }
    *count -= 1;
    Ok(())
}

/// The initialised library, or `NotInit`.
pub(crate) fn smi(api: Api) -> Res<&'static Smi> {
    if EXITING.load(Ordering::Acquire) || counts()[slot(api)] == 0 {
        return Err(Fail::NotInit);
    }
    match SMI.get() {
        Some(Ok(smi)) => Ok(smi),
        _ => Err(Fail::NotInit),
    }
}

fn connect() -> Result<Smi, ()> {
    xpupool_cabi::init_logging();
    match Connection::open_from_env() {
        Ok(conn) => {
            let welcome = &conn.welcome;
            tracing::info!(
                backend = %welcome.backend,
                devices = welcome.devices.len(),
                "AMD SMI connected to the xpupool server"
            );
            let devices: Box<[Device]> = welcome
                .devices
                .iter()
                .enumerate()
                .map(|(i, info)| Device::new(i as u32, info.clone()))
                .collect();
            let sockets = (0..devices.len() as u32)
                .map(|index| Socket { index })
                .collect();
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(at_exit) };
            Ok(Smi {
                conn,
                devices,
                sockets,
            })
        }
        Err(e) => {
            tracing::error!("AMD SMI: {e:#}; init returns DRIVER_NOT_LOADED / INIT_ERROR");
            Err(())
        }
    }
}

extern "C" fn at_exit() {
    EXITING.store(true, Ordering::Release);
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(smi)) = SMI.get() {
            smi.conn.close();
        }
    });
}

impl Smi {
    /// The device behind a processor handle, or `Invalid` for anything else.
    pub(crate) fn device(&self, handle: *mut c_void) -> Res<&Device> {
        self.devices
            .iter()
            .find(|d| d.handle() == handle)
            .ok_or(Fail::Invalid)
    }

    /// The device of an index (rocm_smi's `dv_ind`), or `Invalid`.
    pub(crate) fn device_at(&self, index: u32) -> Res<&Device> {
        self.devices.get(index as usize).ok_or(Fail::Invalid)
    }

    /// The socket behind a socket handle, or `Invalid`.
    pub(crate) fn socket(&self, handle: *mut c_void) -> Res<&Socket> {
        self.sockets
            .iter()
            .find(|s| s.handle() == handle)
            .ok_or(Fail::Invalid)
    }

    /// (used, total) bytes of a device as the tenant sees them: total is the
    /// tenant's limit, used what the tenant's sessions hold of it.
    pub(crate) fn memory(&self, device: &Device) -> Res<(u64, u64)> {
        let (free, total) = self.conn.mem_get_info(device.index).map_err(server_error)?;
        Ok((total - free.min(total), total))
    }

    /// How busy the device is and what the tenant's sessions hold on it.
    pub(crate) fn usage(&self, device: &Device) -> Res<xpupool_protocol::api::DeviceUsage> {
        self.conn.device_usage(device.index).map_err(server_error)
    }
}

fn server_error(e: CuError) -> Fail {
    if e.code == CUDA_ERROR_DEVICE_UNAVAILABLE {
        tracing::debug!(reason = %e.message, "the xpupool server is gone");
    } else {
        tracing::warn!(code = e.code, reason = %e.message, "the xpupool server refused an AMD SMI query");
    }
    Fail::Server
}
