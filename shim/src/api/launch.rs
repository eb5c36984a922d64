//! Kernel launches. `cuLaunchKernel` gets `void**` with no count: the parameter
//! layout comes from the server (reported at module load), and each argument is
//! copied into one packed buffer. The `extra` form's buffer is forwarded as is.

use std::ffi::{c_int, c_uint, c_void};

use serde_bytes::ByteBuf;
use xpupool_cuda_types::*;
use xpupool_protocol::api::{FunctionInfo, LaunchDims};
use xpupool_protocol::Request;

use crate::boundary::{export, put, Res};
use crate::state::{driver, stream_arg, Driver, Function};

const LAUNCH_PARAM_END: usize = 0;
const LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
const LAUNCH_PARAM_BUFFER_SIZE: usize = 2;

/// Builds the packed parameter buffer from `kernelParams` or `extra`.
fn pack(f: &FunctionInfo, params: *mut *mut c_void, extra: *mut *mut c_void) -> Res<Vec<u8>> {
    let size = f.param_bytes as usize;
    if !params.is_null() {
        let mut buffer = vec![0u8; size];
        for (i, &(offset, len)) in f.params.iter().enumerate() {
            // SAFETY: the API contract: one pointer per kernel parameter.
            let arg = unsafe { *params.add(i) };
            if arg.is_null() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            // SAFETY: `arg` points at a value of the parameter's size.
            let bytes = unsafe { std::slice::from_raw_parts(arg.cast::<u8>(), len as usize) };
            buffer[offset as usize..(offset + len) as usize].copy_from_slice(bytes);
        }
        return Ok(buffer);
    }
    if !extra.is_null() {
        let (mut pointer, mut length) = (std::ptr::null::<u8>(), None);
        for i in (0..).step_by(2) {
            // SAFETY: the API contract: a key/value list ended by CU_LAUNCH_PARAM_END.
            let key = unsafe { *extra.add(i) } as usize;
            if key == LAUNCH_PARAM_END {
                break;
            }
            // SAFETY: every key but END is followed by its value.
            let value = unsafe { *extra.add(i + 1) };
            match key {
                LAUNCH_PARAM_BUFFER_POINTER => pointer = value.cast(),
                // SAFETY: the value of BUFFER_SIZE points at a size_t.
                LAUNCH_PARAM_BUFFER_SIZE if !value.is_null() => {
                    length = Some(unsafe { *value.cast::<usize>() })
                }
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        let length = length.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if pointer.is_null() || length < size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: the caller's packed buffer of `length` bytes.
        return Ok(unsafe { std::slice::from_raw_parts(pointer, length) }[..size].to_vec());
    }
    if f.params.is_empty() {
        Ok(Vec::new())
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

/// What a launch whose shape the device cannot run fails with: the driver answers
/// `CUDA_ERROR_INVALID_VALUE`, which the runtime reports as `cudaErrorInvalidValue`,
/// for every bad shape tests/cuda/errors.cu tries and for too much shared memory
/// (seen on an H100, driver 580.159.04, runtime 13.2, by scripts/gpu-check.sh).
const INVALID_CONFIGURATION: CUresult = CUDA_ERROR_INVALID_VALUE;

/// Checks a launch's shape against the device's limits, as the driver does.
fn check_dims(d: &Driver, f: &Function, dims: &LaunchDims) -> Res {
    let attr = |a| d.attribute(0, a).map(|v| v as u32);
    let [bx, by, bz] = dims.block;
    let [gx, gy, gz] = dims.grid;
    let threads = bx as u64 * by as u64 * bz as u64;
    let max_threads = f
        .attribute(d, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?
        .unwrap_or(1024) as u64;
    let within = bx >= 1
        && by >= 1
        && bz >= 1
        && gx >= 1
        && gy >= 1
        && gz >= 1
        && bx <= attr(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X)?
        && by <= attr(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y)?
        && bz <= attr(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z)?
        && gx <= attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)?
        && gy <= attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?
        && gz <= attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)?
        && threads <= max_threads;
    if !within {
        return Err(INVALID_CONFIGURATION);
    }
    let max_dynamic = f
        .attribute(d, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)?
        .unwrap_or(0)
        .max(0) as u32;
    if dims.shared_bytes > max_dynamic {
        return Err(INVALID_CONFIGURATION);
    }
    Ok(())
}

pub(crate) fn launch(
    function: CUfunction,
    dims: LaunchDims,
    stream: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Res {
    let d = driver()?;
    let request = launch_request(function, dims, stream, params, extra)?;
    // Sent without waiting: what the kernel does wrong is reported at the next
    // synchronising call, as on a device.
    super::graph::submit(d, request)
}

/// The request of a launch, checked and with its parameters packed (graph
/// kernel nodes keep it, as the driver keeps a node's parameters).
pub(crate) fn launch_request(
    function: CUfunction,
    dims: LaunchDims,
    stream: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Res<Request> {
    let d = driver()?;
    let f = d.functions.get(function as usize)?;
    // The kernel as loaded on the device whose stream it goes to.
    let info = f.runnable_on(d, d.stream_device(stream)?)?;
    f.loaded.store(true, std::sync::atomic::Ordering::Relaxed);
    check_dims(d, &f, &dims)?;
    let buffer = pack(info, params, extra)?;
    Ok(Request::LaunchKernel {
        function: info.handle,
        dims,
        stream,
        params: ByteBuf::from(buffer),
    })
}

/// A cooperative launch: all blocks at once, so no more than the device holds at
/// once by the occupancy calculator (`CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE`).
fn launch_cooperative(
    function: CUfunction,
    dims: LaunchDims,
    stream: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Res {
    let d = driver()?;
    let threads = dims.block.iter().map(|&b| b as i32).product::<i32>();
    let per_sm = occupancy(function, threads, dims.shared_bytes as usize)?;
    let sms = d.attribute(0, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let blocks: u64 = dims.grid.iter().map(|&g| u64::from(g)).product();
    if blocks > (per_sm.max(0) as u64) * (sms.max(0) as u64) {
        return Err(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
    }
    submit_as(
        function,
        dims,
        stream,
        params,
        extra,
        |function, dims, stream, params| Request::LaunchCooperative {
            function,
            dims,
            stream,
            params,
        },
    )
}

/// Packs a launch's parameters as [`launch_request`] does and submits it as the
/// request `kind` makes of its parts (a cooperative or clustered launch).
fn submit_as(
    function: CUfunction,
    dims: LaunchDims,
    stream: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    kind: impl FnOnce(u64, LaunchDims, u64, ByteBuf) -> Request,
) -> Res {
    let Request::LaunchKernel {
        function,
        dims,
        stream,
        params,
    } = launch_request(function, dims, stream, params, extra)?
    else {
        return Err(CUDA_ERROR_UNKNOWN);
    };
    super::graph::submit(driver()?, kind(function, dims, stream, params))
}

/// A launch in thread-block clusters (`cuLaunchKernelEx` with a cluster
/// dimension), where the device has them (`CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH`;
/// the mock device does not): the grid must be a whole number of clusters.
fn launch_clustered(
    function: CUfunction,
    dims: LaunchDims,
    cluster: [u32; 3],
    stream: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Res {
    let d = driver()?;
    let device = d.stream_device(stream)?;
    if d.attribute(device, CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH)? == 0 {
        tracing::warn!(
            ?cluster,
            "a launch in thread-block clusters, which this server's device does not run"
        );
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let blocks_per_cluster: u64 = cluster.iter().map(|&c| u64::from(c)).product();
    let fits = dims.grid.iter().zip(cluster).all(|(&g, c)| g % c == 0);
    if !fits || blocks_per_cluster > 16 {
        return Err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
    }
    submit_as(
        function,
        dims,
        stream,
        params,
        extra,
        |function, dims, stream, params| Request::LaunchClustered {
            function,
            dims,
            cluster,
            stream,
            params,
        },
    )
}

fn launch_ex(
    config: *const CUlaunchConfig,
    function: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    per_thread: bool,
) -> Res {
    if config.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null configuration from the caller.
    let c = unsafe { &*config };
    let mut cooperative = false;
    let mut cluster = None;
    for i in 0..c.numAttrs as usize {
        // SAFETY: `attrs` holds `numAttrs` entries.
        let attr = unsafe { &*c.attrs.add(i) };
        // SAFETY: the union member read is the one `id` names.
        match attr.id {
            CU_LAUNCH_ATTRIBUTE_COOPERATIVE => {
                cooperative = (unsafe { attr.value.cooperative }) != 0;
            }
            CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION => {
                let cd = unsafe { attr.value.clusterDim };
                let dims = [cd.x.max(1), cd.y.max(1), cd.z.max(1)];
                cluster = (dims != [1, 1, 1]).then_some(dims);
            }
            // Hints about scheduling, priority and memory order do not change results.
            _ => {}
        }
    }
    let dims = LaunchDims {
        grid: [c.gridDimX, c.gridDimY, c.gridDimZ],
        block: [c.blockDimX, c.blockDimY, c.blockDimZ],
        shared_bytes: c.sharedMemBytes,
    };
    if let Some(cluster) = cluster {
        if cooperative {
            tracing::warn!("a cooperative launch in clusters is not supported by xpupool");
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        return launch_clustered(
            function,
            dims,
            cluster,
            stream_arg(c.hStream, per_thread),
            params,
            extra,
        );
    }
    if cooperative {
        return launch_cooperative(
            function,
            dims,
            stream_arg(c.hStream, per_thread),
            params,
            extra,
        );
    }
    launch(
        function,
        dims,
        stream_arg(c.hStream, per_thread),
        params,
        extra,
    )
}

export! {
    fn cuLaunchKernel(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, s: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) {
        launch(f, LaunchDims { grid: [gx, gy, gz], block: [bx, by, bz], shared_bytes: shared }, stream_arg(s, false), params, extra)
    }

    fn cuLaunchKernel_ptsz(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, s: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) {
        launch(f, LaunchDims { grid: [gx, gy, gz], block: [bx, by, bz], shared_bytes: shared }, stream_arg(s, true), params, extra)
    }

    fn cuLaunchCooperativeKernel(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, s: CUstream, params: *mut *mut c_void) {
        launch_cooperative(f, LaunchDims { grid: [gx, gy, gz], block: [bx, by, bz], shared_bytes: shared }, stream_arg(s, false), params, std::ptr::null_mut())
    }

    fn cuLaunchCooperativeKernel_ptsz(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, s: CUstream, params: *mut *mut c_void) {
        launch_cooperative(f, LaunchDims { grid: [gx, gy, gz], block: [bx, by, bz], shared_bytes: shared }, stream_arg(s, true), params, std::ptr::null_mut())
    }

    fn cuLaunchKernelEx(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) {
        launch_ex(config, f, params, extra, false)
    }

    fn cuLaunchKernelEx_ptsz(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) {
        launch_ex(config, f, params, extra, true)
    }

    fn cuOccupancyMaxActiveBlocksPerMultiprocessor(blocks: *mut i32, f: CUfunction, block_size: i32, dynamic_shared: usize) {
        put(blocks, occupancy(f, block_size, dynamic_shared)?)
    }

    fn cuOccupancyAvailableDynamicSMemPerBlock(out: *mut usize, f: CUfunction, blocks: i32, block_size: i32) {
        let d = driver()?;
        let function = d.functions.get(f as usize)?;
        if blocks <= 0 || block_size <= 0 || occupancy(f, block_size, 0)? < blocks {
            return put(out, 0);
        }
        let static_bytes = function.attribute(d, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?.unwrap_or(0).max(0) as usize;
        let per_sm = d.attribute(0, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)? as usize / blocks as usize;
        let per_block = d.attribute(0, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
        put(out, per_sm.min(per_block).saturating_sub(static_bytes))
    }

    fn cuOccupancyMaxActiveClusters(clusters: *mut i32, f: CUfunction, config: *const CUlaunchConfig) {
        if config.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null configuration from the caller.
        let c = unsafe { &*config };
        let mut cluster = 1u32;
        for i in 0..c.numAttrs as usize {
            // SAFETY: `attrs` holds `numAttrs` entries; the union member read is the one `id` names.
            let attr = unsafe { &*c.attrs.add(i) };
            if attr.id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION {
                let cd = unsafe { attr.value.clusterDim };
                cluster = cd.x.max(1) * cd.y.max(1) * cd.z.max(1);
            }
        }
        let block = (c.blockDimX * c.blockDimY * c.blockDimZ) as i32;
        let per_sm = occupancy(f, block, c.sharedMemBytes as usize)?;
        let sms = driver()?.attribute(0, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        put(clusters, per_sm * sms / cluster as i32)
    }

    fn cuOccupancyMaxPotentialBlockSize(min_grid: *mut c_int, block: *mut c_int, f: CUfunction, to_shared: CUoccupancyB2DSize, shared: usize, limit: c_int) {
        max_potential_block_size(min_grid, block, f, to_shared, shared, limit)
    }

    fn cuOccupancyMaxPotentialBlockSizeWithFlags(min_grid: *mut c_int, block: *mut c_int, f: CUfunction, to_shared: CUoccupancyB2DSize, shared: usize, limit: c_int, _flags: c_uint) {
        max_potential_block_size(min_grid, block, f, to_shared, shared, limit)
    }

    fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks: *mut i32, f: CUfunction, block_size: i32, dynamic_shared: usize, _flags: c_uint) {
        put(blocks, occupancy(f, block_size, dynamic_shared)?)
    }
}

/// The block size that keeps the most threads resident on a multiprocessor (the
/// largest such, warp by warp from the kernel's and the caller's limit down), and
/// the grid that fills the device with it. `to_shared` gives the dynamic shared
/// memory a block size needs, where the caller has such a rule.
fn max_potential_block_size(
    min_grid: *mut c_int,
    block: *mut c_int,
    f: CUfunction,
    to_shared: CUoccupancyB2DSize,
    shared: usize,
    limit: c_int,
) -> Res {
    if min_grid.is_null() || block.is_null() || limit < 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    let function = d.functions.get(f as usize)?;
    let kernel_limit = function
        .attribute(d, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?
        .unwrap_or(1024)
        .max(1);
    let device_limit = d
        .attribute(0, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?
        .max(1);
    let mut most = kernel_limit.min(device_limit);
    if limit > 0 {
        most = most.min(limit);
    }
    let (mut best, mut best_threads, mut best_blocks) = (0, 0, 0);
    let mut size = most;
    while size > 0 {
        let dynamic = match to_shared {
            // SAFETY: the caller's rule, with a block size, as the API says.
            Some(rule) => unsafe { rule(size) },
            None => shared,
        };
        let blocks = occupancy(f, size, dynamic)?;
        if blocks * size > best_threads {
            (best, best_threads, best_blocks) = (size, blocks * size, blocks);
        }
        // Down to the next whole warp (from an odd limit, first to its warp).
        size = if size % 32 == 0 {
            size - 32
        } else {
            size - size % 32
        };
    }
    let sms = d.attribute(0, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    put(min_grid, best_blocks * sms)?;
    put(block, best)
}

/// Blocks of `block_size` threads that fit one multiprocessor, by threads, blocks and
/// shared memory (the mock has no register file to run out of).
fn occupancy(function: CUfunction, block_size: i32, dynamic_shared: usize) -> Res<i32> {
    let d = driver()?;
    let f = d.functions.get(function as usize)?;
    if block_size <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let threads = d.attribute(0, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)?;
    let blocks = d.attribute(0, CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR)?;
    let shared = d.attribute(0, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)? as usize;
    let per_block = f
        .attribute(d, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?
        .unwrap_or(0) as usize
        + dynamic_shared;
    let by_shared = shared.checked_div(per_block).map_or(i32::MAX, |n| n as i32);
    Ok((threads / block_size).min(blocks).min(by_shared))
}
