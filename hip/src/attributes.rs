//! What a kernel needs, as libraries ask before choosing launch shapes:
//! `hipFuncGetAttributes` (by host stub), `hipFuncGetAttribute` (by module
//! function), and the occupancy calculator (`hipOccupancyMaxActiveBlocksPerMultiprocessor`,
//! `hipOccupancyMaxPotentialBlockSize`) for the gfx90a the stand-in describes: a
//! compute unit holds 32 waves of 64 (2048 work-items), at most 32 workgroups and
//! 64 KiB of LDS.

use std::ffi::{c_int, c_void};

use xpupool_protocol::api::FunctionInfo;

use crate::memory::{call, device, put};
use crate::module::{handle_function, stub_function};
use crate::{HipError, HIP_ERROR_INVALID_VALUE};

/// `hipFunction_attribute` (CUDA's numbering).
const MAX_THREADS_PER_BLOCK: c_int = 0;
const SHARED_SIZE_BYTES: c_int = 1;
const CONST_SIZE_BYTES: c_int = 2;
const LOCAL_SIZE_BYTES: c_int = 3;
const NUM_REGS: c_int = 4;
const MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
const PREFERRED_SHARED_MEMORY_CARVEOUT: c_int = 9;
const ATTRIBUTE_MAX: c_int = 10;

/// A compute unit's work-items, workgroups and LDS.
const CU_THREADS: u64 = 2048;
const CU_GROUPS: u64 = 32;
const CU_LDS: u64 = 64 * 1024;
const WAVE: u64 = 64;

/// `hipFuncAttributes` (hip_runtime_api.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[allow(non_snake_case)]
pub struct FuncAttributes {
    pub binaryVersion: c_int,
    pub cacheModeCA: c_int,
    pub constSizeBytes: usize,
    pub localSizeBytes: usize,
    pub maxDynamicSharedSizeBytes: c_int,
    pub maxThreadsPerBlock: c_int,
    pub numRegs: c_int,
    pub preferredShmemCarveout: c_int,
    pub ptxVersion: c_int,
    pub sharedSizeBytes: usize,
}

const _: () = assert!(size_of::<FuncAttributes>() == 56);

/// Attribute `which` of a kernel the server described.
fn attribute(info: &FunctionInfo, which: c_int) -> Option<c_int> {
    let given = |a: c_int| {
        info.attributes
            .iter()
            .find(|&&(k, _)| k as c_int == a)
            .map(|&(_, v)| v)
    };
    match which {
        MAX_THREADS_PER_BLOCK => Some(given(which).unwrap_or(1024)),
        MAX_DYNAMIC_SHARED_SIZE_BYTES => {
            let fixed = given(SHARED_SIZE_BYTES).unwrap_or(0).max(0);
            Some(given(which).unwrap_or((CU_LDS as c_int).saturating_sub(fixed)))
        }
        PREFERRED_SHARED_MEMORY_CARVEOUT => Some(given(which).unwrap_or(-1)),
        _ if (0..ATTRIBUTE_MAX).contains(&which) => Some(given(which).unwrap_or(0)),
        _ => None,
    }
}

/// All of a kernel's attributes.
pub fn attributes(info: &FunctionInfo) -> FuncAttributes {
    let get = |a| attribute(info, a).unwrap_or(0);
    FuncAttributes {
        constSizeBytes: get(CONST_SIZE_BYTES).max(0) as usize,
        localSizeBytes: get(LOCAL_SIZE_BYTES).max(0) as usize,
        maxDynamicSharedSizeBytes: get(MAX_DYNAMIC_SHARED_SIZE_BYTES),
        maxThreadsPerBlock: get(MAX_THREADS_PER_BLOCK),
        numRegs: get(NUM_REGS),
        preferredShmemCarveout: get(PREFERRED_SHARED_MEMORY_CARVEOUT),
        sharedSizeBytes: get(SHARED_SIZE_BYTES).max(0) as usize,
        ..FuncAttributes::default()
    }
}

/// Workgroups of `block` work-items (with `dynamic` bytes of LDS each) one
/// compute unit holds at once; 0 if none fits.
pub fn blocks_per_cu(info: &FunctionInfo, block: u64, dynamic: u64) -> u64 {
    let a = attributes(info);
    if block == 0 || block > a.maxThreadsPerBlock.max(0) as u64 {
        return 0;
    }
    let waves = block.div_ceil(WAVE);
    let by_threads = CU_THREADS / WAVE / waves;
    let lds = (a.sharedSizeBytes as u64).saturating_add(dynamic);
    let by_lds = CU_LDS.checked_div(lds).unwrap_or(u64::MAX);
    by_threads.min(by_lds).min(CU_GROUPS)
}

/// The block size that fills a compute unit best (the largest of those that
/// do, in whole waves, up to `limit`), and the grid that fills the device.
pub fn potential_block_size(info: &FunctionInfo, dynamic: u64, limit: u64, cus: u64) -> (u64, u64) {
    let most = (attributes(info).maxThreadsPerBlock.max(0) as u64).min(if limit == 0 {
        u64::MAX
    } else {
        limit
    });
    let mut best = (0, 0);
    let mut size = most - most % WAVE;
    if size == 0 {
        size = most;
    }
    while size > 0 {
        let resident = blocks_per_cu(info, size, dynamic) * size;
        if resident > best.0 {
            best = (resident, size);
        }
        size = size.saturating_sub(WAVE);
    }
    let block = best.1;
    (block, blocks_per_cu(info, block, dynamic) * cus)
}

fn cus() -> Result<u64, HipError> {
    let (c, d) = device()?;
    let props = crate::device::properties(&c.welcome.devices[d as usize]);
    Ok(props.multiProcessorCount.max(1) as u64)
}

#[export_name = "xph_hipFuncGetAttributes"]
pub extern "C" fn hip_func_get_attributes(
    out: *mut FuncAttributes,
    stub: *const c_void,
) -> HipError {
    call(|| {
        let (c, d) = device()?;
        let info = stub_function(stub)?.runnable(c, d)?;
        put(out, attributes(&info))
    })
}

#[export_name = "xph_hipFuncGetAttribute"]
pub extern "C" fn hip_func_get_attribute(
    out: *mut c_int,
    which: c_int,
    f: *mut c_void,
) -> HipError {
    call(|| {
        let (c, d) = device()?;
        let info = handle_function(f)?.runnable(c, d)?;
        put(out, attribute(&info, which).ok_or(HIP_ERROR_INVALID_VALUE)?)
    })
}

#[export_name = "xph_hipOccupancyMaxActiveBlocksPerMultiprocessor"]
pub extern "C" fn hip_occupancy_max_active_blocks(
    out: *mut c_int,
    stub: *const c_void,
    block: c_int,
    dynamic: usize,
) -> HipError {
    call(|| {
        let (c, d) = device()?;
        let info = stub_function(stub)?.runnable(c, d)?;
        let block = u64::try_from(block).map_err(|_| HIP_ERROR_INVALID_VALUE)?;
        put(out, blocks_per_cu(&info, block, dynamic as u64) as c_int)
    })
}

#[export_name = "xph_hipOccupancyMaxActiveBlocksPerMultiprocessorWithFlags"]
pub extern "C" fn hip_occupancy_max_active_blocks_with_flags(
    out: *mut c_int,
    stub: *const c_void,
    block: c_int,
    dynamic: usize,
    _flags: u32,
) -> HipError {
    hip_occupancy_max_active_blocks(out, stub, block, dynamic)
}

#[export_name = "xph_hipOccupancyMaxPotentialBlockSize"]
pub extern "C" fn hip_occupancy_max_potential_block_size(
    grid: *mut c_int,
    block: *mut c_int,
    stub: *const c_void,
    dynamic: usize,
    limit: c_int,
) -> HipError {
    call(|| {
        let (c, d) = device()?;
        let info = stub_function(stub)?.runnable(c, d)?;
        let limit = u64::try_from(limit).map_err(|_| HIP_ERROR_INVALID_VALUE)?;
        let (b, g) = potential_block_size(&info, dynamic as u64, limit, cus()?);
        put(grid, g.min(c_int::MAX as u64) as c_int)?;
        put(block, b as c_int)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(max_threads: i32, shared: i32) -> FunctionInfo {
        FunctionInfo {
            name: "k".into(),
            handle: 1,
            params: Vec::new(),
            param_bytes: 0,
            unusable: None,
            attributes: vec![(0, max_threads), (1, shared), (3, 16)],
        }
    }

    #[test]
    fn attributes_come_from_the_server_with_the_devices_defaults() {
        let a = attributes(&kernel(256, 1024));
        assert_eq!(a.maxThreadsPerBlock, 256);
        assert_eq!(a.sharedSizeBytes, 1024);
        assert_eq!(a.localSizeBytes, 16);
        assert_eq!(a.maxDynamicSharedSizeBytes, 65536 - 1024);
        assert_eq!(attribute(&kernel(256, 0), 42), None);
    }

    #[test]
    fn occupancy_is_bounded_by_waves_lds_and_groups() {
        let k = kernel(1024, 0);
        assert_eq!(blocks_per_cu(&k, 256, 0), 8, "2048 work-items of 256");
        assert_eq!(blocks_per_cu(&k, 1024, 0), 2);
        assert_eq!(
            blocks_per_cu(&k, 32, 0),
            32,
            "a half wave still takes a wave; 32 groups at most"
        );
        assert_eq!(blocks_per_cu(&k, 256, 20 * 1024), 3, "LDS: 64 KiB / 20 KiB");
        assert_eq!(blocks_per_cu(&k, 2048, 0), 0, "more than the kernel allows");
        let (block, grid) = potential_block_size(&k, 0, 0, 104);
        assert_eq!(
            blocks_per_cu(&k, block, 0) * block,
            2048,
            "a full compute unit"
        );
        assert_eq!(grid, blocks_per_cu(&k, block, 0) * 104);
        let (limited, _) = potential_block_size(&k, 0, 100, 104);
        assert!(limited <= 100 && limited > 0);
    }
}
