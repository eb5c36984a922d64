//! The first exchange on a connection: the client's [`Hello`], the server's [`Welcome`].

use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 4;

/// QUIC application protocol name.
pub const ALPN: &[u8] = b"xpupool/1";

/// The client's first message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the client.
    pub protocol_version: u32,
    /// The tenant token.
    pub token: String,
    /// Client process id, for the server's logs.
    pub pid: u32,
    /// Client program name, for the server's logs.
    pub program: String,
    /// Asks only where the server's Unix socket is, opening no session: a client
    /// that reached the server on a loopback address then moves to the socket
    /// (same host: no TLS or UDP in the path, and a shared-memory region for bulk
    /// data). The server answers with a [`Probe`] and waits for the real hello.
    pub probe: bool,
}

/// The answer to a probing [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// The server's Unix socket, given to clients on a loopback address with a
    /// valid token only.
    pub unix_socket: Option<String>,
}

/// One device as the server presents it to this tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Marketing name (`cuDeviceGetName`).
    pub name: String,
    /// `cuDeviceGetUuid`.
    pub uuid: [u8; 16],
    /// Memory this tenant may use, in bytes (`cuDeviceTotalMem`).
    pub total_memory: u64,
    /// Every `CUdevice_attribute` the device answers, as `(attribute, value)`.
    pub attributes: Vec<(u32, i32)>,
}

/// NVIDIA's GPU UUID text for 16 bytes: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`,
/// as NVML and the server's metrics show a device's [`DeviceInfo::uuid`].
pub fn gpu_uuid_text(bytes: &[u8; 16]) -> String {
    let hex = |range: std::ops::Range<usize>| -> String {
        bytes[range].iter().map(|b| format!("{b:02x}")).collect()
    };
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

/// The server's answer to a [`Hello`] it accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    /// [`PROTOCOL_VERSION`] of the server.
    pub protocol_version: u32,
    /// Which backend serves this session (`mock`, `cuda`, …).
    pub backend: String,
    /// The driver version to report (`cuDriverGetVersion`).
    pub driver_version: i32,
    /// The devices, in ordinal order.
    pub devices: Vec<DeviceInfo>,
    /// `[start, end)` of the device address range the server hands out, so the
    /// client can reserve it and host and device pointers never alias.
    pub device_address_range: (u64, u64),
    /// Whether the server mapped the client's shared-memory region
    /// ([`crate::region`]); bulk copies may then go through it.
    pub shared_region: bool,
}
