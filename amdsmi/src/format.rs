//! Pure conversions: PCI addresses in both APIs' packings, UUID and serial text.

/// A PCI address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bdf {
    pub(crate) domain: u64,
    pub(crate) bus: u8,
    pub(crate) device: u8,
    pub(crate) function: u8,
}

impl Bdf {
    /// `amdsmi_bdf_t.as_uint`: function in bits 0–2, device 3–7, bus 8–15, domain 16–63.
    pub(crate) fn amdsmi(&self) -> u64 {
        (self.function as u64 & 0x7)
            | ((self.device as u64 & 0x1f) << 3)
            | ((self.bus as u64) << 8)
            | ((self.domain & 0xffff_ffff_ffff) << 16)
    }

    /// rocm_smi's BDFID (`rsmi_dev_pci_id_get`, and `amdsmi_get_gpu_bdf_id`):
    /// domain in bits 32–63, bus 8–15, device 3–7, function 0–2.
    pub(crate) fn rsmi(&self) -> u64 {
        ((self.domain & 0xffff_ffff) << 32)
            | ((self.bus as u64) << 8)
            | ((self.device as u64 & 0x1f) << 3)
            | (self.function as u64 & 0x7)
    }

    /// `0000:1b:00.0`, as amd-smi and rocm-smi print a BDF.
    pub(crate) fn text(&self) -> String {
        format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// `amdsmi_get_gpu_device_uuid`'s text for a device's 16 UUID bytes:
/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (36 characters; AMDSMI_GPU_UUID_SIZE is 38).
pub(crate) fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex = |range: std::ops::Range<usize>| -> String {
        bytes[range].iter().map(|b| format!("{b:02x}")).collect()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

/// The device's 64-bit unique id (`rsmi_dev_unique_id_get`): its first 8 UUID
/// bytes, big-endian, so that its hexadecimal is the UUID text's first 16 digits.
pub(crate) fn unique_id(bytes: &[u8; 16]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// `amdsmi_asic_info_t.asic_serial`: the unique id as `0x` and 16 upper-case
/// hexadecimal digits (PyTorch drops the `0x` and matches the rest, lower-cased,
/// against UUIDs in HIP_VISIBLE_DEVICES).
pub(crate) fn asic_serial(bytes: &[u8; 16]) -> String {
    format!("0x{:016X}", unique_id(bytes))
}

/// Bytes to whole MiB, saturating (`amdsmi_vram_usage_t` counts MB in 32 bits).
pub(crate) fn mib(bytes: u64) -> u32 {
    (bytes >> 20).min(u32::MAX as u64) as u32
}

/// `part` as a whole percentage of `whole` (0 when `whole` is 0), at most 100.
pub(crate) fn percent(part: u64, whole: u64) -> u32 {
    if whole == 0 {
        return 0;
    }
    (part as u128 * 100 / whole as u128).min(100) as u32
}
