//! `hipDeviceProp_tR0600`: the device properties of ROCm 6 and 7's headers, where
//! `hipGetDeviceProperties` is a macro for `hipGetDevicePropertiesR0600@hip_6.0` (and
//! `hipChooseDevice` for `hipChooseDeviceR0600`). 1472 bytes: the 5.x fields and
//! CUDA 12's, in CUDA's order, then HIP's own. Filled from the same description of
//! the device as the 5.x layout ([`crate::device::properties`]).

use std::ffi::{c_char, c_int, c_uint};
use std::mem::offset_of;

use crate::device::{properties, DeviceProp};
use crate::memory::{call, device, device_info, put};
use crate::{HipError, HIP_ERROR_INVALID_VALUE};

/// `hipDeviceProp_tR0600` (hip_runtime_api.h of ROCm 6.0 and later).
#[repr(C)]
#[allow(non_snake_case)]
pub struct DevicePropR0600 {
    pub name: [c_char; 256],
    pub uuid: [u8; 16],
    pub luid: [c_char; 8],
    pub luidDeviceNodeMask: c_uint,
    pub totalGlobalMem: usize,
    pub sharedMemPerBlock: usize,
    pub regsPerBlock: c_int,
    pub warpSize: c_int,
    pub memPitch: usize,
    pub maxThreadsPerBlock: c_int,
    pub maxThreadsDim: [c_int; 3],
    pub maxGridSize: [c_int; 3],
    pub clockRate: c_int,
    pub totalConstMem: usize,
    pub major: c_int,
    pub minor: c_int,
    pub textureAlignment: usize,
    pub texturePitchAlignment: usize,
    pub deviceOverlap: c_int,
    pub multiProcessorCount: c_int,
    pub kernelExecTimeoutEnabled: c_int,
    pub integrated: c_int,
    pub canMapHostMemory: c_int,
    pub computeMode: c_int,
    pub maxTexture1D: c_int,
    pub maxTexture1DMipmap: c_int,
    pub maxTexture1DLinear: c_int,
    pub maxTexture2D: [c_int; 2],
    pub maxTexture2DMipmap: [c_int; 2],
    pub maxTexture2DLinear: [c_int; 3],
    pub maxTexture2DGather: [c_int; 2],
    pub maxTexture3D: [c_int; 3],
    pub maxTexture3DAlt: [c_int; 3],
    pub maxTextureCubemap: c_int,
    pub maxTexture1DLayered: [c_int; 2],
    pub maxTexture2DLayered: [c_int; 3],
    pub maxTextureCubemapLayered: [c_int; 2],
    pub maxSurface1D: c_int,
    pub maxSurface2D: [c_int; 2],
    pub maxSurface3D: [c_int; 3],
    pub maxSurface1DLayered: [c_int; 2],
    pub maxSurface2DLayered: [c_int; 3],
    pub maxSurfaceCubemap: c_int,
    pub maxSurfaceCubemapLayered: [c_int; 2],
    pub surfaceAlignment: usize,
    pub concurrentKernels: c_int,
    pub ECCEnabled: c_int,
    pub pciBusID: c_int,
    pub pciDeviceID: c_int,
    pub pciDomainID: c_int,
    pub tccDriver: c_int,
    pub asyncEngineCount: c_int,
    pub unifiedAddressing: c_int,
    pub memoryClockRate: c_int,
    pub memoryBusWidth: c_int,
    pub l2CacheSize: c_int,
    pub persistingL2CacheMaxSize: c_int,
    pub maxThreadsPerMultiProcessor: c_int,
    pub streamPrioritiesSupported: c_int,
    pub globalL1CacheSupported: c_int,
    pub localL1CacheSupported: c_int,
    pub sharedMemPerMultiprocessor: usize,
    pub regsPerMultiprocessor: c_int,
    pub managedMemory: c_int,
    pub isMultiGpuBoard: c_int,
    pub multiGpuBoardGroupID: c_int,
    pub hostNativeAtomicSupported: c_int,
    pub singleToDoublePrecisionPerfRatio: c_int,
    pub pageableMemoryAccess: c_int,
    pub concurrentManagedAccess: c_int,
    pub computePreemptionSupported: c_int,
    pub canUseHostPointerForRegisteredMem: c_int,
    pub cooperativeLaunch: c_int,
    pub cooperativeMultiDeviceLaunch: c_int,
    pub sharedMemPerBlockOptin: usize,
    pub pageableMemoryAccessUsesHostPageTables: c_int,
    pub directManagedMemAccessFromHost: c_int,
    pub maxBlocksPerMultiProcessor: c_int,
    pub accessPolicyMaxWindowSize: c_int,
    pub reservedSharedMemPerBlock: usize,
    pub hostRegisterSupported: c_int,
    pub sparseHipArraySupported: c_int,
    pub hostRegisterReadOnlySupported: c_int,
    pub timelineSemaphoreInteropSupported: c_int,
    pub memoryPoolsSupported: c_int,
    pub gpuDirectRDMASupported: c_int,
    pub gpuDirectRDMAFlushWritesOptions: c_uint,
    pub gpuDirectRDMAWritesOrdering: c_int,
    pub memoryPoolSupportedHandleTypes: c_uint,
    pub deferredMappingHipArraySupported: c_int,
    pub ipcEventSupported: c_int,
    pub clusterLaunch: c_int,
    pub unifiedFunctionPointers: c_int,
    pub reserved: [c_int; 63],
    pub hipReserved: [c_int; 32],
    pub gcnArchName: [c_char; 256],
    pub maxSharedMemoryPerMultiProcessor: usize,
    pub clockInstructionRate: c_int,
    pub arch: u32,
    pub hdpMemFlushCntl: *mut u32,
    pub hdpRegFlushCntl: *mut u32,
    pub cooperativeMultiDeviceUnmatchedFunc: c_int,
    pub cooperativeMultiDeviceUnmatchedGridDim: c_int,
    pub cooperativeMultiDeviceUnmatchedBlockDim: c_int,
    pub cooperativeMultiDeviceUnmatchedSharedMem: c_int,
    pub isLargeBar: c_int,
    pub asicRevision: c_int,
}

// ROCm 6's layout: 1472 bytes, these offsets (docs/FACTS-hip.md's measurements).
const _: () = {
    assert!(size_of::<DevicePropR0600>() == 1472);
    assert!(offset_of!(DevicePropR0600, totalGlobalMem) == 288);
    assert!(offset_of!(DevicePropR0600, multiProcessorCount) == 388);
    assert!(offset_of!(DevicePropR0600, gcnArchName) == 1160);
};

/// The R0600 properties of the device the 5.x ones describe.
pub fn r0600(p: &DeviceProp, uuid: [u8; 16]) -> DevicePropR0600 {
    let lds = p.sharedMemPerBlock;
    DevicePropR0600 {
        name: p.name,
        uuid,
        luid: [0; 8],
        luidDeviceNodeMask: 0,
        totalGlobalMem: p.totalGlobalMem,
        sharedMemPerBlock: lds,
        regsPerBlock: p.regsPerBlock,
        warpSize: p.warpSize,
        memPitch: p.memPitch,
        maxThreadsPerBlock: p.maxThreadsPerBlock,
        maxThreadsDim: p.maxThreadsDim,
        maxGridSize: p.maxGridSize,
        clockRate: p.clockRate,
        totalConstMem: p.totalConstMem,
        major: p.major,
        minor: p.minor,
        textureAlignment: p.textureAlignment,
        texturePitchAlignment: p.texturePitchAlignment,
        deviceOverlap: 1,
        multiProcessorCount: p.multiProcessorCount,
        kernelExecTimeoutEnabled: p.kernelExecTimeoutEnabled,
        integrated: p.integrated,
        canMapHostMemory: p.canMapHostMemory,
        computeMode: p.computeMode,
        maxTexture1D: p.maxTexture1D,
        maxTexture1DMipmap: p.maxTexture1D,
        maxTexture1DLinear: p.maxTexture1DLinear,
        maxTexture2D: p.maxTexture2D,
        maxTexture2DMipmap: p.maxTexture2D,
        maxTexture2DLinear: [p.maxTexture2D[0], p.maxTexture2D[1], c_int::MAX],
        maxTexture2DGather: p.maxTexture2D,
        maxTexture3D: p.maxTexture3D,
        maxTexture3DAlt: p.maxTexture3D,
        maxTextureCubemap: p.maxTexture2D[0],
        maxTexture1DLayered: [p.maxTexture1D, 2048],
        maxTexture2DLayered: [p.maxTexture2D[0], p.maxTexture2D[1], 2048],
        maxTextureCubemapLayered: [p.maxTexture2D[0], 2046],
        maxSurface1D: p.maxTexture1D,
        maxSurface2D: p.maxTexture2D,
        maxSurface3D: p.maxTexture3D,
        maxSurface1DLayered: [p.maxTexture1D, 2048],
        maxSurface2DLayered: [p.maxTexture2D[0], p.maxTexture2D[1], 2048],
        maxSurfaceCubemap: p.maxTexture2D[0],
        maxSurfaceCubemapLayered: [p.maxTexture2D[0], 2046],
        surfaceAlignment: p.textureAlignment,
        concurrentKernels: p.concurrentKernels,
        ECCEnabled: p.ECCEnabled,
        pciBusID: p.pciBusID,
        pciDeviceID: p.pciDeviceID,
        pciDomainID: p.pciDomainID,
        tccDriver: p.tccDriver,
        asyncEngineCount: 2,
        unifiedAddressing: 1,
        memoryClockRate: p.memoryClockRate,
        memoryBusWidth: p.memoryBusWidth,
        l2CacheSize: p.l2CacheSize,
        persistingL2CacheMaxSize: 0,
        maxThreadsPerMultiProcessor: p.maxThreadsPerMultiProcessor,
        streamPrioritiesSupported: 1,
        globalL1CacheSupported: 1,
        localL1CacheSupported: 1,
        sharedMemPerMultiprocessor: p.maxSharedMemoryPerMultiProcessor,
        regsPerMultiprocessor: p.regsPerBlock,
        managedMemory: p.managedMemory,
        isMultiGpuBoard: p.isMultiGpuBoard,
        multiGpuBoardGroupID: 0,
        hostNativeAtomicSupported: 1,
        singleToDoublePrecisionPerfRatio: 0,
        pageableMemoryAccess: p.pageableMemoryAccess,
        concurrentManagedAccess: p.concurrentManagedAccess,
        computePreemptionSupported: 0,
        canUseHostPointerForRegisteredMem: 0,
        cooperativeLaunch: p.cooperativeLaunch,
        cooperativeMultiDeviceLaunch: p.cooperativeMultiDeviceLaunch,
        sharedMemPerBlockOptin: lds,
        pageableMemoryAccessUsesHostPageTables: p.pageableMemoryAccessUsesHostPageTables,
        directManagedMemAccessFromHost: p.directManagedMemAccessFromHost,
        maxBlocksPerMultiProcessor: 32,
        accessPolicyMaxWindowSize: 0,
        reservedSharedMemPerBlock: 0,
        hostRegisterSupported: 1,
        sparseHipArraySupported: 0,
        hostRegisterReadOnlySupported: 0,
        timelineSemaphoreInteropSupported: 0,
        memoryPoolsSupported: 0,
        gpuDirectRDMASupported: 0,
        gpuDirectRDMAFlushWritesOptions: 0,
        gpuDirectRDMAWritesOrdering: 0,
        memoryPoolSupportedHandleTypes: 0,
        deferredMappingHipArraySupported: 0,
        ipcEventSupported: 0,
        clusterLaunch: 0,
        unifiedFunctionPointers: 0,
        reserved: [0; 63],
        hipReserved: [0; 32],
        gcnArchName: p.gcnArchName,
        maxSharedMemoryPerMultiProcessor: p.maxSharedMemoryPerMultiProcessor,
        clockInstructionRate: p.clockInstructionRate,
        arch: p.arch,
        hdpMemFlushCntl: p.hdpMemFlushCntl,
        hdpRegFlushCntl: p.hdpRegFlushCntl,
        cooperativeMultiDeviceUnmatchedFunc: p.cooperativeMultiDeviceUnmatchedFunc,
        cooperativeMultiDeviceUnmatchedGridDim: p.cooperativeMultiDeviceUnmatchedGridDim,
        cooperativeMultiDeviceUnmatchedBlockDim: p.cooperativeMultiDeviceUnmatchedBlockDim,
        cooperativeMultiDeviceUnmatchedSharedMem: p.cooperativeMultiDeviceUnmatchedSharedMem,
        isLargeBar: p.isLargeBar,
        asicRevision: p.asicRevision,
    }
}

/// # Safety
/// `prop` points to a writable `hipDeviceProp_tR0600`, as ROCm 6's headers ask.
#[export_name = "xph_hipGetDevicePropertiesR0600"]
pub unsafe extern "C" fn hip_get_device_properties_r0600(
    prop: *mut DevicePropR0600,
    device: c_int,
) -> HipError {
    call(|| {
        let info = device_info(device)?;
        put(prop, r0600(&properties(info), info.uuid))
    })
}

/// `hipChooseDeviceR0600`: the device closest to `prop`: the current one (the
/// server's devices are alike).
#[export_name = "xph_hipChooseDeviceR0600"]
pub extern "C" fn hip_choose_device_r0600(
    out: *mut c_int,
    prop: *const DevicePropR0600,
) -> HipError {
    call(|| {
        if prop.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        let (_, current) = device()?;
        put(out, current as c_int)
    })
}
