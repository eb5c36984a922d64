//! The strings NVML hands out: PCI bus ids, version strings.

/// A PCI address: (domain, bus, device); the function is always 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PciAddress {
    pub(crate) domain: u32,
    pub(crate) bus: u32,
    pub(crate) device: u32,
}

impl PciAddress {
    /// `nvmlPciInfo_t.busId` (NVML ≥ 9): `00000000:1B:00.0`.
    pub(crate) fn bus_id(&self) -> String {
        format!("{:08X}:{:02X}:{:02X}.0", self.domain, self.bus, self.device)
    }

    /// `nvmlPciInfo_t.busIdLegacy` (16 bytes): `0000:1B:00.0`.
    pub(crate) fn bus_id_legacy(&self) -> String {
        format!(
            "{:04X}:{:02X}:{:02X}.0",
            self.domain & 0xffff,
            self.bus,
            self.device
        )
    }

    /// Parses what `nvmlDeviceGetHandleByPciBusId` accepts: hexadecimal
    /// `domain:bus:device.function`, `domain:bus:device` or `bus:device.function`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let (domain, bus, rest) = match parts.as_slice() {
            [domain, bus, rest] => (u32::from_str_radix(domain, 16).ok()?, *bus, *rest),
            [bus, rest] if rest.contains('.') => (0, *bus, *rest),
            _ => return None,
        };
        let (device, function) = match rest.split_once('.') {
            Some((device, function)) => (device, u32::from_str_radix(function, 16).ok()?),
            None => (rest, 0),
        };
        if function != 0 {
            return None;
        }
        Some(Self {
            domain,
            bus: u32::from_str_radix(bus, 16).ok()?,
            device: u32::from_str_radix(device, 16).ok()?,
        })
    }
}

/// `nvmlSystemGetDriverVersion`: there is no NVIDIA kernel driver here, so the
/// string names xpupool and the CUDA version it presents (13020 → `xpupool-13.2`).
pub(crate) fn driver_version(cuda_version: i32) -> String {
    format!("xpupool-{}", cuda_version_text(cuda_version))
}

/// `nvmlSystemGetNVMLVersion`: the CUDA version presented, then `-xpupool`.
pub(crate) fn nvml_version(cuda_version: i32) -> String {
    format!("{}-xpupool", cuda_version_text(cuda_version))
}

fn cuda_version_text(version: i32) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}
