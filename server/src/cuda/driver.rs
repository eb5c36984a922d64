//! The host's CUDA driver, loaded once with `libloading`: every entry point the
//! backend calls, resolved at start by its concrete ABI name (`cuMemAlloc_v2`, not
//! `cuMemAlloc`, whose ABI is the 32-bit one) into one table of typed pointers.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, OsStr};

use anyhow::{bail, Context as _, Result};
use xpupool_cuda_types::{
    CUarray, CUcontext, CUdevResource, CUdevResourceDesc, CUdevResourceType, CUdevice,
    CUdevice_attribute, CUdeviceptr, CUevent, CUfunction, CUfunction_attribute, CUgreenCtx,
    CUipcEventHandle, CUipcMemHandle, CUjitInputType, CUjit_option, CUlaunchConfig, CUlinkState,
    CUmemAccessDesc, CUmemAllocationProp, CUmemGenericAllocationHandle, CUmodule, CUresult,
    CUstream, CUuuid, CUDA_ARRAY3D_DESCRIPTOR, CUDA_MEMCPY3D, CUDA_RESOURCE_DESC, CUDA_SUCCESS,
    CUDA_TEXTURE_DESC,
};
use xpupool_protocol::CuError;

crate::dynlib::entry_points! {
    /// The driver's entry points (names as the library exports them).
    pub(crate) struct Driver -> CUresult;
    required {
        cuInit: fn(c_uint);
        cuDriverGetVersion: fn(*mut c_int);
        cuDeviceGetCount: fn(*mut c_int);
        cuDeviceGet: fn(*mut CUdevice, c_int);
        cuDeviceGetName: fn(*mut c_char, c_int, CUdevice);
        cuDeviceGetUuid_v2: fn(*mut CUuuid, CUdevice);
        cuDeviceTotalMem_v2: fn(*mut usize, CUdevice);
        cuDeviceGetAttribute: fn(*mut c_int, CUdevice_attribute, CUdevice);
        cuDevicePrimaryCtxRetain: fn(*mut CUcontext, CUdevice);
        cuDevicePrimaryCtxRelease_v2: fn(CUdevice);
        cuCtxSetCurrent: fn(CUcontext);
        cuMemAlloc_v2: fn(*mut CUdeviceptr, usize);
        cuMemFree_v2: fn(CUdeviceptr);
        cuMemGetInfo_v2: fn(*mut usize, *mut usize);
        cuMemcpyHtoDAsync_v2: fn(CUdeviceptr, *const c_void, usize, CUstream);
        cuMemcpyDtoHAsync_v2: fn(*mut c_void, CUdeviceptr, usize, CUstream);
        cuMemcpyDtoDAsync_v2: fn(CUdeviceptr, CUdeviceptr, usize, CUstream);
        cuMemsetD8Async: fn(CUdeviceptr, u8, usize, CUstream);
        cuMemsetD16Async: fn(CUdeviceptr, u16, usize, CUstream);
        cuMemsetD32Async: fn(CUdeviceptr, c_uint, usize, CUstream);
        cuMemsetD2D8Async: fn(CUdeviceptr, usize, u8, usize, usize, CUstream);
        cuMemsetD2D16Async: fn(CUdeviceptr, usize, u16, usize, usize, CUstream);
        cuMemsetD2D32Async: fn(CUdeviceptr, usize, c_uint, usize, usize, CUstream);
        cuModuleLoadData: fn(*mut CUmodule, *const c_void);
        cuModuleUnload: fn(CUmodule);
        cuModuleGetFunction: fn(*mut CUfunction, CUmodule, *const c_char);
        cuModuleGetGlobal_v2: fn(*mut CUdeviceptr, *mut usize, CUmodule, *const c_char);
        cuFuncGetAttribute: fn(*mut c_int, CUfunction_attribute, CUfunction);
        cuFuncSetAttribute: fn(CUfunction, CUfunction_attribute, c_int);
        cuLaunchKernel: fn(
            CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint,
            CUstream, *mut *mut c_void, *mut *mut c_void,
        );
        cuStreamCreateWithPriority: fn(*mut CUstream, c_uint, c_int);
        cuStreamDestroy_v2: fn(CUstream);
        cuStreamSynchronize: fn(CUstream);
        cuStreamQuery: fn(CUstream);
        cuStreamWaitEvent: fn(CUstream, CUevent, c_uint);
        cuEventCreate: fn(*mut CUevent, c_uint);
        cuEventDestroy_v2: fn(CUevent);
        cuEventRecord: fn(CUevent, CUstream);
        cuEventSynchronize: fn(CUevent);
        cuEventQuery: fn(CUevent);
        cuGetErrorName: fn(CUresult, *mut *const c_char);
    }
    optional {
        // CUDA 10.2: virtual memory management.
        cuMemAddressReserve: fn(*mut CUdeviceptr, usize, usize, CUdeviceptr, u64);
        cuMemAddressFree: fn(CUdeviceptr, usize);
        cuMemCreate: fn(*mut CUmemGenericAllocationHandle, usize, *const CUmemAllocationProp, u64);
        cuMemRelease: fn(CUmemGenericAllocationHandle);
        cuMemMap: fn(CUdeviceptr, usize, usize, CUmemGenericAllocationHandle, u64);
        cuMemUnmap: fn(CUdeviceptr, usize);
        cuMemSetAccess: fn(CUdeviceptr, usize, *const CUmemAccessDesc, usize);
        // CUDA 12.0: launches with attributes (cooperative ones).
        cuLaunchKernelEx: fn(*const CUlaunchConfig, CUfunction, *mut *mut c_void, *mut *mut c_void);
        // Texture objects (over linear and pitched memory).
        cuTexObjectCreate: fn(*mut u64, *const CUDA_RESOURCE_DESC, *const CUDA_TEXTURE_DESC, *const c_void);
        cuTexObjectDestroy: fn(u64);
        // CUDA arrays, copies to and from them, surface objects.
        cuArray3DCreate_v2: fn(*mut CUarray, *const CUDA_ARRAY3D_DESCRIPTOR);
        cuArrayDestroy: fn(CUarray);
        cuMemcpy3DAsync_v2: fn(*const CUDA_MEMCPY3D, CUstream);
        cuSurfObjectCreate: fn(*mut u64, *const CUDA_RESOURCE_DESC);
        cuSurfObjectDestroy: fn(u64);
        // The JIT linker, for inputs other than PTX.
        cuLinkCreate_v2: fn(c_uint, *mut CUjit_option, *mut *mut c_void, *mut CUlinkState);
        cuLinkAddData_v2: fn(
            CUlinkState, CUjitInputType, *mut c_void, usize, *const c_char, c_uint,
            *mut CUjit_option, *mut *mut c_void,
        );
        cuLinkComplete: fn(CUlinkState, *mut *mut c_void, *mut usize);
        cuLinkDestroy: fn(CUlinkState);
        // Interprocess sharing (sessions are processes of their own).
        cuIpcGetMemHandle: fn(*mut CUipcMemHandle, CUdeviceptr);
        cuIpcOpenMemHandle_v2: fn(*mut CUdeviceptr, CUipcMemHandle, c_uint);
        cuIpcCloseMemHandle: fn(CUdeviceptr);
        cuIpcGetEventHandle: fn(*mut CUipcEventHandle, CUevent);
        cuIpcOpenEventHandle: fn(*mut CUevent, CUipcEventHandle);
        cuMemGetAddressRange_v2: fn(*mut CUdeviceptr, *mut usize, CUdeviceptr);
        // CUDA 12.4: green contexts (SM ceilings).
        cuDeviceGetDevResource: fn(CUdevice, *mut CUdevResource, CUdevResourceType);
        cuDevSmResourceSplitByCount: fn(
            *mut CUdevResource, *mut c_uint, *const CUdevResource, *mut CUdevResource, c_uint, c_uint,
        );
        cuDevResourceGenerateDesc: fn(*mut CUdevResourceDesc, *mut CUdevResource, c_uint);
        cuGreenCtxCreate: fn(*mut CUgreenCtx, CUdevResourceDesc, CUdevice, c_uint);
        cuCtxFromGreenCtx: fn(*mut CUcontext, CUgreenCtx);
        cuGreenCtxDestroy: fn(CUgreenCtx);
        // Copies between two devices.
        cuMemcpyPeerAsync: fn(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, usize, CUstream);
        // CUDA 12.4: function enumeration and parameter layouts.
        cuModuleGetFunctionCount: fn(*mut c_uint, CUmodule);
        cuModuleEnumerateFunctions: fn(*mut CUfunction, c_uint, CUmodule);
        cuFuncGetName: fn(*mut *const c_char, CUfunction);
        cuFuncGetParamInfo: fn(CUfunction, usize, *mut usize, *mut usize);
        // Loads a function lazy loading left unloaded (CUDA 12.4).
        cuFuncLoad: fn(CUfunction);
        // `_v2` (CUDA 12.8) and the original have the same signature; one must exist.
        cuEventElapsedTime_v2: fn(*mut f32, CUevent, CUevent);
        cuEventElapsedTime: fn(*mut f32, CUevent, CUevent);
    }
    other {}
}

impl Driver {
    /// Loads the driver library at `path` and resolves every entry point.
    pub(crate) fn load(path: &OsStr) -> Result<Self> {
        let lib = crate::dynlib::load(
            path,
            "is the NVIDIA driver installed? XPUPOOL_CUDA_DRIVER may name its libcuda.so.1",
        )?;
        let driver = Self::resolve(lib)
            .with_context(|| format!("{} is not a usable CUDA driver", path.to_string_lossy()))?;
        if driver.cuEventElapsedTime_v2.is_none() && driver.cuEventElapsedTime.is_none() {
            bail!("the driver has neither cuEventElapsedTime_v2 nor cuEventElapsedTime");
        }
        Ok(driver)
    }

    /// The driver's name for `code` (`CUDA_ERROR_OUT_OF_MEMORY`), or the number.
    pub(crate) fn error_name(&self, code: CUresult) -> String {
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string or fails.
        let r = unsafe { (self.cuGetErrorName)(code, &mut name) };
        if r == CUDA_SUCCESS && !name.is_null() {
            // SAFETY: a NUL-terminated static string owned by the driver.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        } else {
            format!("CUresult {code}")
        }
    }

    /// `Ok` for `CUDA_SUCCESS`, else the driver's code with its name and `what`.
    pub(crate) fn check(&self, code: CUresult, what: &str) -> Result<(), CuError> {
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(CuError::new(
                code,
                format!("{what}: {}", self.error_name(code)),
            ))
        }
    }

    /// Like [`Driver::check`], for start-up code that reports with `anyhow`.
    pub(crate) fn require(&self, code: CUresult, what: &str) -> Result<()> {
        self.check(code, what)
            .map_err(|e| anyhow::anyhow!(e.message))
    }
}
