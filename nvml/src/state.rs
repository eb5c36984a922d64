//! Process-wide state: the connection to the pool server (made once, by the first
//! `nvmlInit`), the devices it presented, and NVML's init count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use xpupool_client::Connection;
use xpupool_protocol::{Calls, CuError, DeviceInfo};

use crate::boundary::{
    NvmlDevice, Res, NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_UNINITIALIZED, NVML_ERROR_UNKNOWN,
};
use crate::format::PciAddress;

/// CUDA device attributes (`CUdevice_attribute`) NVML answers come from.
pub(crate) mod attr {
    pub(crate) const CLOCK_RATE_KHZ: u32 = 13;
    pub(crate) const PCI_BUS_ID: u32 = 33;
    pub(crate) const PCI_DEVICE_ID: u32 = 34;
    pub(crate) const MEMORY_CLOCK_RATE_KHZ: u32 = 36;
    pub(crate) const GLOBAL_MEMORY_BUS_WIDTH: u32 = 37;
    pub(crate) const PCI_DOMAIN_ID: u32 = 50;
    pub(crate) const COMPUTE_CAPABILITY_MAJOR: u32 = 75;
    pub(crate) const COMPUTE_CAPABILITY_MINOR: u32 = 76;
}

/// `CUDA_ERROR_DEVICE_UNAVAILABLE`: what the client answers once the server is gone.
const CUDA_ERROR_DEVICE_UNAVAILABLE: u32 = 46;

/// One device; an `nvmlDevice_t` is a pointer to one of these.
pub(crate) struct Device {
    pub(crate) index: u32,
    pub(crate) info: DeviceInfo,
    pub(crate) uuid: String,
    pub(crate) pci: PciAddress,
}

impl Device {
    fn new(index: u32, info: DeviceInfo) -> Self {
        let uuid = xpupool_protocol::gpu_uuid_text(&info.uuid);
        let mut device = Self {
            index,
            info,
            uuid,
            pci: PciAddress {
                domain: 0,
                bus: 0,
                device: 0,
            },
        };
        device.pci = PciAddress {
            domain: device.attribute(attr::PCI_DOMAIN_ID).unwrap_or(0) as u32,
            bus: device.attribute(attr::PCI_BUS_ID).unwrap_or(0) as u32,
            device: device.attribute(attr::PCI_DEVICE_ID).unwrap_or(0) as u32,
        };
        device
    }

    /// A CUDA device attribute, if the server reported it.
    pub(crate) fn attribute(&self, attr: u32) -> Option<i32> {
        self.info
            .attributes
            .iter()
            .find(|&&(a, _)| a == attr)
            .map(|&(_, v)| v)
    }

    pub(crate) fn handle(&self) -> NvmlDevice {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

pub(crate) struct Nvml {
    conn: Connection,
    pub(crate) devices: Box<[Device]>,
    pub(crate) driver_version: i32,
}

/// The outcome of the one connection attempt.
static NVML: OnceLock<Result<Nvml, ()>> = OnceLock::new();
/// `nvmlInit` calls not yet matched by `nvmlShutdown`.
static INIT_COUNT: Mutex<u32> = Mutex::new(0);
/// Set by the exit handler: from then on every call answers UNINITIALIZED.
static EXITING: AtomicBool = AtomicBool::new(false);

fn init_count() -> MutexGuard<'static, u32> {
    INIT_COUNT.lock().unwrap_or_else(|e| e.into_inner())
}

/// `nvmlInit*`: connects on the first call (later calls reuse the outcome) and
/// counts the initialisation.
pub(crate) fn initialise() -> Res {
    if EXITING.load(Ordering::Acquire) {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    let mut count = init_count();
    match NVML.get_or_init(connect) {
        Ok(_) => {
            *count += 1;
            Ok(())
        }
        Err(()) => {
            tracing::debug!("nvmlInit: the earlier connection attempt failed");
            Err(NVML_ERROR_DRIVER_NOT_LOADED)
        }
    }
}

/// `nvmlShutdown`: undoes one `nvmlInit`. The connection stays open for a later
/// `nvmlInit` and is closed at process exit.
pub(crate) fn shutdown() -> Res {
    let mut count = init_count();
    if *count == 0 {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    *count -= 1;
    Ok(())
}

/// The initialised library, or UNINITIALIZED.
pub(crate) fn nvml() -> Res<&'static Nvml> {
    if EXITING.load(Ordering::Acquire) || *init_count() == 0 {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    match NVML.get() {
        Some(Ok(nvml)) => Ok(nvml),
        _ => Err(NVML_ERROR_UNINITIALIZED),
    }
}

fn connect() -> Result<Nvml, ()> {
    xpupool_cabi::init_logging();
    let connection = Connection::open_from_env();
    match connection {
        Ok(conn) => {
            let welcome = &conn.welcome;
            tracing::info!(
                backend = %welcome.backend,
                devices = welcome.devices.len(),
                "NVML connected to the xpupool server"
            );
            let devices = welcome
                .devices
                .iter()
                .enumerate()
                .map(|(i, info)| Device::new(i as u32, info.clone()))
                .collect();
            let driver_version = welcome.driver_version;
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(at_exit) };
            Ok(Nvml {
                conn,
                devices,
                driver_version,
            })
        }
        Err(e) => {
            tracing::error!("NVML: {e:#}; nvmlInit returns NVML_ERROR_DRIVER_NOT_LOADED");
            Err(())
        }
    }
}

extern "C" fn at_exit() {
    EXITING.store(true, Ordering::Release);
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(nvml)) = NVML.get() {
            nvml.conn.close();
        }
    });
}

impl Nvml {
    /// The device behind a handle, or INVALID_ARGUMENT for anything that is not one.
    pub(crate) fn device(&self, handle: NvmlDevice) -> Res<&Device> {
        self.devices
            .iter()
            .find(|d| d.handle() == handle)
            .ok_or(NVML_ERROR_INVALID_ARGUMENT)
    }

    /// (free, total) bytes of a device as the tenant sees them: total is the
    /// tenant's limit, free what the tenant's sessions leave of it.
    pub(crate) fn memory(&self, device: &Device) -> Res<(u64, u64)> {
        let (free, total) = self.conn.mem_get_info(device.index).map_err(server_error)?;
        Ok((free.min(total), total))
    }

    /// How busy the device is and what the tenant's sessions hold on it.
    pub(crate) fn usage(&self, device: &Device) -> Res<xpupool_protocol::api::DeviceUsage> {
        self.conn.device_usage(device.index).map_err(server_error)
    }
}

/// Maps a failed server call to NVML's code: a lost server is a lost GPU.
fn server_error(e: CuError) -> u32 {
    if e.code == CUDA_ERROR_DEVICE_UNAVAILABLE {
        tracing::debug!(reason = %e.message, "the xpupool server is gone");
        NVML_ERROR_GPU_IS_LOST
    } else {
        tracing::warn!(code = e.code, reason = %e.message, "the xpupool server refused an NVML query");
        NVML_ERROR_UNKNOWN
    }
}
