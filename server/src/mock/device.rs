//! What the mock device reports: an H200-shaped device whose name says it is a mock.

use xpupool_protocol::DeviceInfo;

/// Compute capability the mock presents (PTX is chosen for this SM).
pub(crate) const SM: u32 = 90;

/// `(CUdevice_attribute, value)` pairs of the mock device; attributes not listed
/// read as 0 (not supported).
const ATTRIBUTES: &[(u32, i32)] = &[
    (1, 1024),       // MAX_THREADS_PER_BLOCK
    (2, 1024),       // MAX_BLOCK_DIM_X
    (3, 1024),       // MAX_BLOCK_DIM_Y
    (4, 64),         // MAX_BLOCK_DIM_Z
    (5, i32::MAX),   // MAX_GRID_DIM_X
    (6, 65535),      // MAX_GRID_DIM_Y
    (7, 65535),      // MAX_GRID_DIM_Z
    (8, 49152),      // MAX_SHARED_MEMORY_PER_BLOCK
    (9, 65536),      // TOTAL_CONSTANT_MEMORY
    (10, 32),        // WARP_SIZE
    (11, i32::MAX),  // MAX_PITCH
    (12, 65536),     // MAX_REGISTERS_PER_BLOCK
    (13, 1_980_000), // CLOCK_RATE (kHz)
    (14, 512),       // TEXTURE_ALIGNMENT
    (15, 1),         // GPU_OVERLAP
    (16, 16),        // MULTIPROCESSOR_COUNT
    (20, 0),         // COMPUTE_MODE default
    (30, 512),       // SURFACE_ALIGNMENT
    (31, 1),         // CONCURRENT_KERNELS
    (33, 0x1b),      // PCI_BUS_ID
    (34, 0),         // PCI_DEVICE_ID
    (36, 2_619_000), // MEMORY_CLOCK_RATE (kHz)
    (37, 5120),      // GLOBAL_MEMORY_BUS_WIDTH
    (38, 50 << 20),  // L2_CACHE_SIZE
    (39, 2048),      // MAX_THREADS_PER_MULTIPROCESSOR
    (40, 2),         // ASYNC_ENGINE_COUNT
    (41, 1),         // UNIFIED_ADDRESSING
    (50, 0),         // PCI_DOMAIN_ID
    (51, 32),        // TEXTURE_PITCH_ALIGNMENT
    (75, 9),         // COMPUTE_CAPABILITY_MAJOR
    (76, 0),         // COMPUTE_CAPABILITY_MINOR
    (78, 1),         // STREAM_PRIORITIES_SUPPORTED
    (79, 1),         // GLOBAL_L1_CACHE_SUPPORTED
    (80, 1),         // LOCAL_L1_CACHE_SUPPORTED
    (81, 233_472),   // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    (82, 65536),     // MAX_REGISTERS_PER_MULTIPROCESSOR
    (87, 2),         // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
    (90, 1),         // COMPUTE_PREEMPTION_SUPPORTED
    (97, 232_448),   // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    (106, 32),       // MAX_BLOCKS_PER_MULTIPROCESSOR
    (111, 1024),     // RESERVED_SHARED_MEMORY_PER_BLOCK
    (126, 1),        // MEM_SYNC_DOMAIN_COUNT
];

/// Mock device `index` of the host, with `total_memory` bytes: each has its own
/// UUID and PCI bus.
pub(crate) fn device_info(index: u32, total_memory: u64) -> DeviceInfo {
    let mut uuid = *b"xpupool-mock-gpu";
    uuid[14] = 0;
    uuid[15] = index as u8;
    let mut attributes = ATTRIBUTES.to_vec();
    for (attribute, value) in &mut attributes {
        if *attribute == 33 {
            *value += index as i32;
        }
    }
    DeviceInfo {
        name: "xpupool mock GPU (CPU interpreter)".to_owned(),
        uuid,
        total_memory,
        attributes,
    }
}

/// Limits checked at launch, read from the same table.
pub(crate) fn attribute(attr: u32) -> i32 {
    ATTRIBUTES
        .iter()
        .find(|&&(a, _)| a == attr)
        .map_or(0, |&(_, v)| v)
}
