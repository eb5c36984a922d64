//! What a HIP program learns of its device: `hipGetDeviceProperties` (the 5.x
//! `hipDeviceProp_t`, 792 bytes, whose layout `tests/hip/device.c` checks against
//! the pinned header field by field through `hipDeviceGetAttribute`) and
//! `hipDeviceGetAttribute`.
//!
//! The device is the pool server's, described as the AMD GPU whose code xpupool's
//! mock is to run: gfx90a (CDNA2, as an MI210), wave64, with its name, memory
//! (the tenant's limit) and the figures the server reports where both vendors
//! have them (compute units as multiprocessors, clocks, L2, PCI location).
//! `gcnArchName` is what rocBLAS and MIOpen choose their kernels by, and what a
//! code object bundle is matched against. Managed memory is not concurrent, as
//! on the CUDA side.

use std::ffi::{c_char, c_int};
use std::mem::offset_of;

use xpupool_protocol::DeviceInfo;

use crate::memory::{call, device_info, put};
use crate::{HipError, HIP_ERROR_INVALID_VALUE};

/// The target ID reported (`gcnArchName`).
pub const GCN_ARCH_NAME: &str = "gfx90a:sramecc+:xnack-";

/// `hipDeviceProp_t` of HIP 5.x (`hipDeviceProp_tR0000` from 6.0 on).
#[repr(C)]
#[allow(non_snake_case)]
pub struct DeviceProp {
    pub name: [c_char; 256],
    pub totalGlobalMem: usize,
    pub sharedMemPerBlock: usize,
    pub regsPerBlock: c_int,
    pub warpSize: c_int,
    pub maxThreadsPerBlock: c_int,
    pub maxThreadsDim: [c_int; 3],
    pub maxGridSize: [c_int; 3],
    pub clockRate: c_int,
    pub memoryClockRate: c_int,
    pub memoryBusWidth: c_int,
    pub totalConstMem: usize,
    pub major: c_int,
    pub minor: c_int,
    pub multiProcessorCount: c_int,
    pub l2CacheSize: c_int,
    pub maxThreadsPerMultiProcessor: c_int,
    pub computeMode: c_int,
    pub clockInstructionRate: c_int,
    /// `hipDeviceArch_t`: one bit per feature.
    pub arch: u32,
    pub concurrentKernels: c_int,
    pub pciDomainID: c_int,
    pub pciBusID: c_int,
    pub pciDeviceID: c_int,
    pub maxSharedMemoryPerMultiProcessor: usize,
    pub isMultiGpuBoard: c_int,
    pub canMapHostMemory: c_int,
    pub gcnArch: c_int,
    pub gcnArchName: [c_char; 256],
    pub integrated: c_int,
    pub cooperativeLaunch: c_int,
    pub cooperativeMultiDeviceLaunch: c_int,
    pub maxTexture1DLinear: c_int,
    pub maxTexture1D: c_int,
    pub maxTexture2D: [c_int; 2],
    pub maxTexture3D: [c_int; 3],
    pub hdpMemFlushCntl: *mut u32,
    pub hdpRegFlushCntl: *mut u32,
    pub memPitch: usize,
    pub textureAlignment: usize,
    pub texturePitchAlignment: usize,
    pub kernelExecTimeoutEnabled: c_int,
    pub ECCEnabled: c_int,
    pub tccDriver: c_int,
    pub cooperativeMultiDeviceUnmatchedFunc: c_int,
    pub cooperativeMultiDeviceUnmatchedGridDim: c_int,
    pub cooperativeMultiDeviceUnmatchedBlockDim: c_int,
    pub cooperativeMultiDeviceUnmatchedSharedMem: c_int,
    pub isLargeBar: c_int,
    pub asicRevision: c_int,
    pub managedMemory: c_int,
    pub directManagedMemAccessFromHost: c_int,
    pub concurrentManagedAccess: c_int,
    pub pageableMemoryAccess: c_int,
    pub pageableMemoryAccessUsesHostPageTables: c_int,
}

// The layout of HIP 5.2's header (gcc: sizeof 792; these offsets).
const _: () = {
    assert!(size_of::<DeviceProp>() == 792);
    assert!(offset_of!(DeviceProp, totalGlobalMem) == 256);
    assert!(offset_of!(DeviceProp, multiProcessorCount) == 336);
    assert!(offset_of!(DeviceProp, arch) == 356);
    assert!(offset_of!(DeviceProp, gcnArchName) == 396);
    assert!(offset_of!(DeviceProp, hdpMemFlushCntl) == 696);
    assert!(offset_of!(DeviceProp, pageableMemoryAccessUsesHostPageTables) == 788);
};

/// `hipDeviceArch_t` of gfx90a: 32- and 64-bit atomics (global and shared),
/// float atomics, doubles, warp vote, ballot and shuffle, funnel shift, system
/// fences, the synchronisation extensions and 3-D grids; no surface functions and
/// no dynamic parallelism.
const GFX90A_ARCH: u32 = 0x3fff | 1 << 15;

/// CUDA's number of a device attribute the server reports, or `default`.
fn server(info: &DeviceInfo, attribute: u32, default: c_int) -> c_int {
    info.attributes
        .iter()
        .find(|(a, _)| *a == attribute)
        .map_or(default, |&(_, v)| v)
}

fn c_string<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (slot, &b) in out.iter_mut().zip(text.as_bytes().iter().take(N - 1)) {
        *slot = b as c_char;
    }
    out
}

/// The properties of the device `info` describes.
pub fn properties(info: &DeviceInfo) -> DeviceProp {
    // CUDA attribute numbers (cuda.h) of the figures both vendors have.
    const CLOCK_RATE: u32 = 13;
    const MULTIPROCESSOR_COUNT: u32 = 16;
    const PCI_BUS_ID: u32 = 33;
    const PCI_DEVICE_ID: u32 = 34;
    const MEMORY_CLOCK_RATE: u32 = 36;
    const GLOBAL_MEMORY_BUS_WIDTH: u32 = 37;
    const L2_CACHE_SIZE: u32 = 38;
    const PCI_DOMAIN_ID: u32 = 50;
    let lds = 64 << 10;
    DeviceProp {
        name: c_string(&info.name),
        totalGlobalMem: info.total_memory as usize,
        sharedMemPerBlock: lds,
        regsPerBlock: 65536,
        warpSize: 64,
        maxThreadsPerBlock: 1024,
        maxThreadsDim: [1024, 1024, 1024],
        maxGridSize: [c_int::MAX; 3],
        clockRate: server(info, CLOCK_RATE, 1_700_000),
        memoryClockRate: server(info, MEMORY_CLOCK_RATE, 1_600_000),
        memoryBusWidth: server(info, GLOBAL_MEMORY_BUS_WIDTH, 4096),
        totalConstMem: 64 << 10,
        major: 9,
        minor: 0,
        multiProcessorCount: server(info, MULTIPROCESSOR_COUNT, 104),
        l2CacheSize: server(info, L2_CACHE_SIZE, 8 << 20),
        maxThreadsPerMultiProcessor: 2048,
        computeMode: 0,
        clockInstructionRate: 100_000,
        arch: GFX90A_ARCH,
        concurrentKernels: 1,
        pciDomainID: server(info, PCI_DOMAIN_ID, 0),
        pciBusID: server(info, PCI_BUS_ID, 0),
        pciDeviceID: server(info, PCI_DEVICE_ID, 0),
        maxSharedMemoryPerMultiProcessor: lds,
        isMultiGpuBoard: 0,
        canMapHostMemory: 1,
        gcnArch: 910,
        gcnArchName: c_string(GCN_ARCH_NAME),
        integrated: 0,
        cooperativeLaunch: 1,
        cooperativeMultiDeviceLaunch: 1,
        maxTexture1DLinear: 1 << 27,
        maxTexture1D: 16384,
        maxTexture2D: [16384, 16384],
        maxTexture3D: [16384, 16384, 8192],
        hdpMemFlushCntl: std::ptr::null_mut(),
        hdpRegFlushCntl: std::ptr::null_mut(),
        memPitch: c_int::MAX as usize,
        textureAlignment: 256,
        texturePitchAlignment: 256,
        kernelExecTimeoutEnabled: 0,
        ECCEnabled: 0,
        tccDriver: 0,
        cooperativeMultiDeviceUnmatchedFunc: 1,
        cooperativeMultiDeviceUnmatchedGridDim: 1,
        cooperativeMultiDeviceUnmatchedBlockDim: 1,
        cooperativeMultiDeviceUnmatchedSharedMem: 1,
        isLargeBar: 0,
        asicRevision: 1,
        managedMemory: 1,
        directManagedMemAccessFromHost: 0,
        concurrentManagedAccess: 0,
        pageableMemoryAccess: 0,
        pageableMemoryAccessUsesHostPageTables: 0,
    }
}

/// `hipDeviceAttribute_t` of HIP 5.2 (its number in the header) → the property
/// that answers it. `tests/hip/device.c` compares each with the property it
/// names, by the header's own enumerators.
const ATTRIBUTES: &[(c_int, Answer)] = &[
    (0, |p| p.ECCEnabled),                                  // EccEnabled
    (3, |p| p.canMapHostMemory),                            // CanMapHostMemory
    (5, |p| p.clockRate),                                   // ClockRate
    (6, |p| p.computeMode),                                 // ComputeMode
    (8, |p| p.concurrentKernels),                           // ConcurrentKernels
    (9, |p| p.concurrentManagedAccess),                     // ConcurrentManagedAccess
    (10, |p| p.cooperativeLaunch),                          // CooperativeLaunch
    (16, |p| p.integrated),                                 // Integrated
    (19, |p| p.l2CacheSize),                                // L2CacheSize
    (23, |p| p.major),                                      // ComputeCapabilityMajor
    (24, |p| p.managedMemory),                              // ManagedMemory
    (26, |p| p.maxThreadsDim[0]),                           // MaxBlockDimX
    (27, |p| p.maxThreadsDim[1]),                           // MaxBlockDimY
    (28, |p| p.maxThreadsDim[2]),                           // MaxBlockDimZ
    (29, |p| p.maxGridSize[0]),                             // MaxGridDimX
    (30, |p| p.maxGridSize[1]),                             // MaxGridDimY
    (31, |p| p.maxGridSize[2]),                             // MaxGridDimZ
    (56, |p| p.maxThreadsPerBlock),                         // MaxThreadsPerBlock
    (57, |p| p.maxThreadsPerMultiProcessor),                // MaxThreadsPerMultiProcessor
    (59, |p| p.memoryBusWidth),                             // MemoryBusWidth
    (60, |p| p.memoryClockRate),                            // MemoryClockRate
    (61, |p| p.minor),                                      // ComputeCapabilityMinor
    (63, |p| p.multiProcessorCount),                        // MultiprocessorCount
    (67, |p| p.pciBusID),                                   // PciBusId
    (68, |p| p.pciDeviceID),                                // PciDeviceId
    (69, |p| p.pciDomainID),                                // PciDomainID
    (71, |p| p.regsPerBlock),                               // MaxRegistersPerBlock
    (74, |p| clamp(p.sharedMemPerBlock)),                   // MaxSharedMemoryPerBlock
    (81, |p| clamp(p.textureAlignment)),                    // TextureAlignment
    (83, |p| clamp(p.totalConstMem)),                       // TotalConstantMemory
    (85, |_| 1),                                            // UnifiedAddressing
    (87, |p| p.warpSize),                                   // WarpSize
    (10002, |p| clamp(p.maxSharedMemoryPerMultiProcessor)), // MaxSharedMemoryPerMultiprocessor
    (10012, |p| p.asicRevision),                            // AsicRevision
];

/// How an attribute is read off the properties.
type Answer = fn(&DeviceProp) -> c_int;

fn clamp(v: usize) -> c_int {
    c_int::try_from(v).unwrap_or(c_int::MAX)
}

/// # Safety
/// `prop` points to a writable `hipDeviceProp_t` (5.x layout), as HIP's API asks.
#[export_name = "xph_hipGetDeviceProperties"]
pub unsafe extern "C" fn hip_get_device_properties(
    prop: *mut DeviceProp,
    device: c_int,
) -> HipError {
    call(|| put(prop, properties(device_info(device)?)))
}

#[export_name = "xph_hipDeviceGetAttribute"]
pub extern "C" fn hip_device_get_attribute(
    out: *mut c_int,
    attribute: c_int,
    device: c_int,
) -> HipError {
    call(|| {
        let p = properties(device_info(device)?);
        match ATTRIBUTES.iter().find(|(a, _)| *a == attribute) {
            Some((_, answer)) => put(out, answer(&p)),
            None => {
                unanswered(attribute);
                Err(HIP_ERROR_INVALID_VALUE)
            }
        }
    })
}

/// Says once per attribute that it has no answer here.
fn unanswered(attribute: c_int) {
    if crate::first_time(crate::Once::Attribute(attribute)) {
        eprintln!("xpupool: hipDeviceGetAttribute({attribute}) is not answered yet (hipErrorInvalidValue)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_follow_the_servers_device() {
        let info = DeviceInfo {
            name: "xpupool mock GPU".into(),
            uuid: [7; 16],
            total_memory: 8 << 30,
            attributes: vec![(16, 16), (33, 27)],
        };
        let p = properties(&info);
        let name: Vec<u8> = p
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        assert_eq!(name, b"xpupool mock GPU");
        assert_eq!(p.totalGlobalMem, 8 << 30);
        assert_eq!(
            (p.multiProcessorCount, p.pciBusID, p.warpSize),
            (16, 27, 64)
        );
        let arch: Vec<u8> = p
            .gcnArchName
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        assert_eq!(arch, GCN_ARCH_NAME.as_bytes());
        // Every attribute is listed once.
        let mut seen: Vec<c_int> = ATTRIBUTES.iter().map(|(a, _)| *a).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ATTRIBUTES.len());
    }
}
