//! Device memory (on the server), pinned host memory (allocated here), copies,
//! memsets, and pointer queries answered from the client's own tables.

use std::ffi::{c_uint, c_void};

use serde_bytes::ByteBuf;
use xpupool_cuda_types::*;
use xpupool_protocol::api::{ArrayBox, ArrayDesc};
use xpupool_protocol::{Calls, Request};

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock, per_thread_default, stream_arg, HostBlock};

/// Where one side of a copy lives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Host,
    Device,
}

fn side(address: u64) -> Res<Side> {
    Ok(if driver()?.is_device_address(address) {
        Side::Device
    } else {
        Side::Host
    })
}

fn alloc(out: *mut CUdeviceptr, bytes: usize) -> Res {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    let device = d.current_context()?.device;
    let address = xpupool_client::ranges::place(
        |a| d.device_ranges.add(a, bytes as u64, true),
        || d.conn.mem_alloc(device as u32, bytes as u64).map_err(fail),
        |a| {
            let _ = d.conn.post(Request::MemFree { ptr: a });
        },
        CUDA_ERROR_OUT_OF_MEMORY,
    )?;
    d.device_ranges.set_device(address, device as u32);
    put(out, address)
}

/// Frees a device allocation (posted: the server runs it after the work sent
/// before it). A pool allocation leaves its pool's figures too.
pub(crate) fn free(address: CUdeviceptr) -> Res {
    if address == 0 {
        return Ok(());
    }
    // Graph memory stays for the graphs' next launch.
    if super::graph::free_graph_memory(address) {
        return Ok(());
    }
    let d = driver()?;
    // Checked here, so that the free need not wait for the server.
    if d.device_ranges.remove_freeable(address).is_none() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    super::pool::forget(address);
    // Managed memory leaves this process's address space too.
    let ptr = super::managed::release(address).unwrap_or(address);
    d.conn.post(Request::MemFree { ptr }).map_err(fail)
}

/// Checks that `[address, address+len)` lies inside one device allocation, as the
/// driver would before accepting the operation. Operations sent without waiting
/// (copies from host memory, memsets, launches) must fail here, at the call, when
/// their arguments are wrong.
/// A span may also run across mappings (`cuMemMap`) that follow each other
/// without a gap, as the mappings of one reservation do.
pub(crate) fn device_span(address: u64, len: u64) -> Res {
    let d = driver()?;
    let (base, size) = d.device_range(address).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let end = address.checked_add(len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut covered = base + size;
    while covered < end {
        // The next range must start where this one ends.
        match d.device_range(covered) {
            Some((next, size)) if next == covered => covered += size,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    Ok(())
}

/// Checks that `height` rows of `width` elements of `elem` bytes, rows `pitch`
/// bytes apart from `dst`, lie inside one device allocation (`height` ≥ 1).
pub(crate) fn device_span_2d(dst: u64, pitch: u64, width: u64, elem: u64, height: u64) -> Res {
    let span = (height - 1)
        .checked_mul(pitch)
        .and_then(|rows| rows.checked_add(width.checked_mul(elem)?))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    device_span(dst, span)
}

/// Copies `len` bytes between any two places, splitting transfers into chunks the
/// protocol accepts. `stream` orders it on the server. Copies into device memory
/// are sent without waiting: the host bytes are captured at the call, so the host
/// buffer is free again at once, as the driver promises for synchronous copies.
pub(crate) fn copy(dst: u64, src: u64, len: usize, stream: u64) -> Res {
    if len == 0 {
        return Ok(());
    }
    if dst == 0 || src == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let conn = &driver()?.conn;
    match (side(dst)?, side(src)?) {
        (Side::Device, Side::Device) => {
            device_span(dst, len as u64)?;
            device_span(src, len as u64)?;
            let len = len as u64;
            let request = Request::MemcpyDtoD {
                dst,
                src,
                len,
                stream,
            };
            super::graph::submit(driver()?, request)
        }
        (Side::Device, Side::Host) => {
            device_span(dst, len as u64)?;
            // In a capture, a copy node that reads the host bytes when it runs.
            let op = super::graph::HostOp::ToDevice {
                dst,
                src: src as usize,
                len,
            };
            if super::graph::capture_host(stream, op)? {
                return Ok(());
            }
            super::managed::before(super::managed::Touch::Write(dst, len as u64), stream)?;
            // SAFETY: the API contract: `src` is `len` readable host bytes.
            let bytes = unsafe { std::slice::from_raw_parts(src as *const u8, len) };
            conn.copy_to_device(dst, bytes, stream).map_err(fail)
        }
        (Side::Host, Side::Device) => {
            // In a capture, a copy node that writes the host bytes when it runs.
            let op = super::graph::HostOp::ToHost {
                dst: dst as usize,
                src,
                len,
            };
            if super::graph::capture_host(stream, op)? {
                return Ok(());
            }
            super::managed::before(super::managed::Touch::Read(src, len as u64), stream)?;
            xpupool_client::trace::sync_point();
            // SAFETY: the API contract: `dst` is `len` writable host bytes.
            let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, len) };
            conn.copy_from_device(src, out, stream).map_err(fail)
        }
        (Side::Host, Side::Host) => {
            super::graph::not_in_capture(stream)?;
            conn.stream_synchronize(stream).map_err(fail)?;
            // SAFETY: both are host ranges of `len` bytes per the API contract.
            unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) };
            Ok(())
        }
    }
}

fn memset(dst: CUdeviceptr, value: u32, elem_size: u8, count: usize, stream: u64) -> Res {
    if count == 0 {
        return Ok(());
    }
    let count = count as u64;
    device_span(
        dst,
        count
            .checked_mul(elem_size as u64)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?,
    )?;
    let request = Request::Memset {
        dst,
        value,
        elem_size,
        count,
        stream,
    };
    super::graph::submit(driver()?, request)
}

fn memset_2d(
    dst: CUdeviceptr,
    pitch: usize,
    value: u32,
    elem_size: u8,
    width: usize,
    height: usize,
    stream: u64,
) -> Res {
    if width == 0 || height == 0 {
        return Ok(());
    }
    let (pitch, width, height) = (pitch as u64, width as u64, height as u64);
    device_span_2d(dst, pitch, width, elem_size as u64, height)?;
    let request = Request::Memset2D {
        dst,
        pitch,
        value,
        elem_size,
        width,
        height,
        stream,
    };
    super::graph::submit(driver()?, request)
}

fn host_alloc(out: *mut *mut c_void, bytes: usize, flags: c_uint) -> Res {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    let mut ptr = std::ptr::null_mut();
    // SAFETY: posix_memalign writes a fresh allocation into `ptr` on success.
    if unsafe { libc::posix_memalign(&mut ptr, 4096, bytes.max(1)) } != 0 {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    lock(&d.host_blocks).insert(
        ptr as usize,
        HostBlock {
            len: bytes.max(1),
            flags,
            owned: true,
        },
    );
    put(out, ptr)
}

/// One side of a 2-D or 3-D copy.
#[derive(Clone, Copy)]
enum Place {
    /// Host or device memory: where (0, 0, 0) is, and the bytes from one row to
    /// the next and from one slice to the next.
    Linear(u64, u64, u64),
    /// An array: the server's handle, and its description.
    Array(u64, ArrayDesc),
}

fn copy_side(
    memory_type: CUmemorytype,
    host: *const c_void,
    device: CUdeviceptr,
    array: CUarray,
    pitch: usize,
    height: usize,
) -> Res<Place> {
    let (pitch, height) = (pitch as u64, height as u64);
    match memory_type {
        CU_MEMORYTYPE_HOST | CU_MEMORYTYPE_DEVICE | CU_MEMORYTYPE_UNIFIED => {
            let slice = pitch.checked_mul(height).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            let base = if memory_type == CU_MEMORYTYPE_HOST {
                host as u64
            } else {
                device
            };
            Ok(Place::Linear(base, pitch, slice))
        }
        CU_MEMORYTYPE_ARRAY => {
            let a = super::texture::array(array)?;
            Ok(Place::Array(a.server, a.wire()?))
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// Where byte `at[0]` of row `at[1]` of slice `at[2]` of linear memory is.
fn linear_at(base: u64, pitch: u64, slice: u64, at: [u64; 3]) -> Res<u64> {
    at[2]
        .checked_mul(slice)
        .and_then(|z| at[1].checked_mul(pitch)?.checked_add(z))
        .and_then(|o| o.checked_add(at[0]))
        .and_then(|o| base.checked_add(o))
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

/// Copies a box of `extent` (bytes, rows, slices) from `src` at `src_at` to
/// `dst` at `dst_at` (x in bytes, row, slice), as each side lays it out.
fn copy_places(
    dst: Place,
    dst_at: [u64; 3],
    src: Place,
    src_at: [u64; 3],
    extent: [u64; 3],
    stream: u64,
) -> Res {
    if extent.contains(&0) {
        return Ok(());
    }
    let [width, height, depth] = extent;
    // A box outside an array is refused here, before any piece is sent.
    for (place, at) in [(dst, dst_at), (src, src_at)] {
        if let Place::Array(_, desc) = place {
            if !desc.holds(&ArrayBox { at, extent }) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
        }
    }
    match (dst, src) {
        (Place::Linear(d, dp, ds), Place::Linear(s, sp, ss)) => copy_box(
            (linear_at(d, dp, ds, dst_at)?, dp, ds),
            (linear_at(s, sp, ss, src_at)?, sp, ss),
            width,
            height,
            depth,
            stream,
        ),
        (Place::Array(array, _), Place::Linear(s, sp, ss)) => array_copy(
            array,
            ArrayBox { at: dst_at, extent },
            (linear_at(s, sp, ss, src_at)?, sp, ss),
            true,
            stream,
        ),
        (Place::Linear(d, dp, ds), Place::Array(array, _)) => array_copy(
            array,
            ArrayBox { at: src_at, extent },
            (linear_at(d, dp, ds, dst_at)?, dp, ds),
            false,
            stream,
        ),
        (Place::Array(dst, _), Place::Array(src, _)) => {
            let request = Request::MemcpyArrayArray {
                dst,
                dst_at,
                src,
                region: ArrayBox { at: src_at, extent },
                stream,
            };
            super::graph::submit(driver()?, request)
        }
    }
}

/// Copies between a box of an array and linear memory (`base`, rows `pitch`
/// bytes apart, slices `slice`): device memory by the server, in one request;
/// host memory here, in pieces the protocol takes (whole rows where they fit).
fn array_copy(
    array: u64,
    region: ArrayBox,
    (base, pitch, slice): (u64, u64, u64),
    to_array: bool,
    stream: u64,
) -> Res {
    let [width, rows, slices] = region.extent;
    let rows_span = pitch.checked_mul(rows).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if (rows > 1 && width > pitch) || (slices > 1 && slice < rows_span) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    if side(base)? == Side::Device {
        let span = region
            .linear_span(pitch, slice)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        device_span(base, span)?;
        let request = Request::MemcpyArrayDevice {
            array,
            region,
            ptr: base,
            pitch,
            slice_pitch: slice,
            to_array,
            stream,
        };
        return super::graph::submit(d, request);
    }
    // Host memory is read or written when the call is made: no graph can hold it.
    super::graph::not_in_capture(stream)?;
    if !to_array {
        xpupool_client::trace::sync_point();
    }
    let chunk = xpupool_protocol::MAX_COPY_CHUNK as u64;
    for z in 0..slices {
        let mut y = 0;
        while y < rows {
            // Whole rows where they fit, else pieces of one row.
            let (n, pieces) = if width <= chunk {
                ((chunk / width).min(rows - y), vec![(0, width)])
            } else {
                (
                    1,
                    (0..width)
                        .step_by(chunk as usize)
                        .map(|x| (x, chunk.min(width - x)))
                        .collect(),
                )
            };
            for (x, len) in pieces {
                let piece = ArrayBox {
                    at: [region.at[0] + x, region.at[1] + y, region.at[2] + z],
                    extent: [len, n, 1],
                };
                let row = |k: u64| linear_at(base, pitch, slice, [x, y + k, z]);
                if to_array {
                    let mut data = Vec::with_capacity((len * n) as usize);
                    for k in 0..n {
                        // SAFETY: the API contract: the host rows are readable.
                        data.extend_from_slice(unsafe {
                            std::slice::from_raw_parts(row(k)? as *const u8, len as usize)
                        });
                    }
                    let request = Request::MemcpyToArray {
                        array,
                        region: piece,
                        data: ByteBuf::from(data),
                        stream,
                    };
                    d.conn.post(request).map_err(fail)?;
                } else {
                    let data = d
                        .conn
                        .memcpy_from_array(array, piece, stream)
                        .map_err(fail)?;
                    if data.len() as u64 != len * n {
                        return Err(CUDA_ERROR_UNKNOWN);
                    }
                    for (k, bytes) in data.chunks(len as usize).enumerate() {
                        // SAFETY: the API contract: the host rows are writable.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                bytes.as_ptr(),
                                row(k as u64)? as *mut u8,
                                bytes.len(),
                            )
                        };
                    }
                }
            }
            y += n;
        }
    }
    Ok(())
}

/// Copies `depth` slices of `height` rows of `width` bytes, rows and slices as
/// each side lays them out: whole slices at once where the rows are contiguous
/// on both sides, else row by row.
#[allow(clippy::too_many_arguments)]
fn copy_box(
    dst: (u64, u64, u64),
    src: (u64, u64, u64),
    width: u64,
    height: u64,
    depth: u64,
    stream: u64,
) -> Res {
    if width == 0 || height == 0 || depth == 0 {
        return Ok(());
    }
    if height > 1 && (width > src.1 || width > dst.1) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let contiguous = width == src.1 && width == dst.1;
    for z in 0..depth {
        let (d, s) = (dst.0 + z * dst.2, src.0 + z * src.2);
        if contiguous {
            copy(d, s, (width * height) as usize, stream)?;
            continue;
        }
        for row in 0..height {
            copy(d + row * dst.1, s + row * src.1, width as usize, stream)?;
        }
    }
    Ok(())
}

/// A 2-D copy (`cuMemcpy2D`), between any of host, device and array memory.
fn copy_2d(p: *const CUDA_MEMCPY2D, stream: u64) -> Res {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null descriptor provided by the caller.
    let p = unsafe { &*p };
    let src = copy_side(
        p.srcMemoryType,
        p.srcHost,
        p.srcDevice,
        p.srcArray,
        p.srcPitch,
        0,
    )?;
    let dst = copy_side(
        p.dstMemoryType,
        p.dstHost,
        p.dstDevice,
        p.dstArray,
        p.dstPitch,
        0,
    )?;
    copy_places(
        dst,
        [p.dstXInBytes as u64, p.dstY as u64, 0],
        src,
        [p.srcXInBytes as u64, p.srcY as u64, 0],
        [p.WidthInBytes as u64, p.Height as u64, 1],
        stream,
    )
}

/// A 3-D copy (`cuMemcpy3D`), between any of host, device and array memory.
fn copy_3d(p: *const CUDA_MEMCPY3D, stream: u64) -> Res {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null descriptor provided by the caller.
    let p = unsafe { &*p };
    let src = copy_side(
        p.srcMemoryType,
        p.srcHost,
        p.srcDevice,
        p.srcArray,
        p.srcPitch,
        p.srcHeight,
    )?;
    let dst = copy_side(
        p.dstMemoryType,
        p.dstHost,
        p.dstDevice,
        p.dstArray,
        p.dstPitch,
        p.dstHeight,
    )?;
    copy_places(
        dst,
        [p.dstXInBytes as u64, p.dstY as u64, p.dstZ as u64],
        src,
        [p.srcXInBytes as u64, p.srcY as u64, p.srcZ as u64],
        [p.WidthInBytes as u64, p.Height as u64, p.Depth as u64],
        stream,
    )
}

/// A one-row array and byte `offset` of it, for the 1-D copies (`cuMemcpyHtoA`, …).
fn array_row(array: CUarray, offset: usize) -> Res<(Place, [u64; 3])> {
    let a = super::texture::array(array)?;
    if a.desc.Height > 1 || a.desc.Depth > 1 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok((Place::Array(a.server, a.wire()?), [offset as u64, 0, 0]))
}

/// A 1-D copy with an array on one side or both.
fn copy_1d(dst: (Place, [u64; 3]), src: (Place, [u64; 3]), bytes: usize) -> Res {
    copy_places(dst.0, dst.1, src.0, src.1, [bytes as u64, 1, 1], 0)
}

/// Host or device memory at `address`, as one side of a 1-D array copy.
fn flat(address: u64) -> (Place, [u64; 3]) {
    (Place::Linear(address, 0, 0), [0; 3])
}

/// Answers one `CUpointer_attribute` for `ptr` into `data`.
fn pointer_attribute(
    data: *mut c_void,
    attribute: CUpointer_attribute,
    ptr: CUdeviceptr,
    lenient: bool,
) -> Res {
    let d = driver()?;
    let device = d.device_range(ptr);
    let host = d.host_block(ptr as usize);
    if device.is_none() && host.is_none() {
        if !lenient {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // cuPointerGetAttributes: unknown pointers get NULL-like answers.
        return match attribute {
            CU_POINTER_ATTRIBUTE_MEMORY_TYPE | CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL => {
                put(data.cast::<u32>(), 0)
            }
            CU_POINTER_ATTRIBUTE_IS_MANAGED
            | CU_POINTER_ATTRIBUTE_MAPPED
            | CU_POINTER_ATTRIBUTE_SYNC_MEMOPS => put(data.cast::<u32>(), 0),
            CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL_NONE => put(data.cast::<i32>(), -2),
            _ => put(data.cast::<u64>(), 0),
        };
    }
    // Device memory is on the device it was made on; pinned host memory is
    // reported as device 0's, as the context that made it.
    let ordinal = d.device_ranges.device_of(ptr).unwrap_or(0);
    let ctx = d
        .primary
        .get(ordinal as usize)
        .map_or(0, |c| std::sync::Arc::as_ptr(c) as usize);
    let (base, size, memory_type) = match (device, host) {
        (Some((base, size)), _) => (base, size, CU_MEMORYTYPE_DEVICE),
        (None, Some((base, size, _))) => (base as u64, size as u64, CU_MEMORYTYPE_HOST),
        (None, None) => unreachable!("handled above"),
    };
    match attribute {
        CU_POINTER_ATTRIBUTE_CONTEXT => put(data.cast::<CUcontext>(), ctx as CUcontext),
        CU_POINTER_ATTRIBUTE_MEMORY_TYPE => put(data.cast::<u32>(), memory_type),
        CU_POINTER_ATTRIBUTE_DEVICE_POINTER if memory_type == CU_MEMORYTYPE_DEVICE => {
            put(data.cast::<u64>(), ptr)
        }
        CU_POINTER_ATTRIBUTE_DEVICE_POINTER if lenient => put(data.cast::<u64>(), 0),
        CU_POINTER_ATTRIBUTE_DEVICE_POINTER => Err(CUDA_ERROR_INVALID_VALUE),
        // Managed memory has the same address on the host.
        CU_POINTER_ATTRIBUTE_HOST_POINTER
            if memory_type == CU_MEMORYTYPE_HOST || super::managed::contains(ptr) =>
        {
            put(data.cast::<u64>(), ptr)
        }
        CU_POINTER_ATTRIBUTE_HOST_POINTER if lenient => put(data.cast::<u64>(), 0),
        CU_POINTER_ATTRIBUTE_HOST_POINTER => Err(CUDA_ERROR_INVALID_VALUE),
        CU_POINTER_ATTRIBUTE_SYNC_MEMOPS => put(data.cast::<u32>(), 1),
        CU_POINTER_ATTRIBUTE_BUFFER_ID | CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID => {
            put(data.cast::<u64>(), base)
        }
        CU_POINTER_ATTRIBUTE_IS_MANAGED => {
            put(data.cast::<u32>(), super::managed::contains(ptr) as u32)
        }
        CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL => put(data.cast::<i32>(), ordinal as i32),
        CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE => put(data.cast::<u32>(), 0),
        CU_POINTER_ATTRIBUTE_RANGE_START_ADDR | CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR => {
            put(data.cast::<u64>(), base)
        }
        CU_POINTER_ATTRIBUTE_RANGE_SIZE | CU_POINTER_ATTRIBUTE_MAPPING_SIZE => {
            put(data.cast::<u64>(), size)
        }
        CU_POINTER_ATTRIBUTE_MAPPED => put(data.cast::<u32>(), 1),
        CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES => put(data.cast::<u64>(), 0),
        CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE => put(data.cast::<u32>(), 0),
        CU_POINTER_ATTRIBUTE_ACCESS_FLAGS => put(
            data.cast::<u32>(),
            CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE,
        ),
        CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE => put(data.cast::<u64>(), 0),
        CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE => put(data.cast::<u32>(), 0),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// Not a real attribute: `cuPointerGetAttributes` answers -2 for the device ordinal of
/// an unknown pointer (CU_DEVICE_INVALID).
const CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL_NONE: CUpointer_attribute = u32::MAX;

/// `CU_DEVICE_ATTRIBUTE_MAX_PITCH` of every device xpupool serves (the mock's, and
/// what NVIDIA's devices report).
const MAX_PITCH: usize = i32::MAX as usize;

export! {
    fn cuMemAlloc_v2(out: *mut CUdeviceptr, bytes: usize) { alloc(out, bytes) }

    fn cuMemAllocPitch_v2(out: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, elem_size: c_uint) {
        if !matches!(elem_size, 4 | 8 | 16) || pitch.is_null() || width == 0 || height == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // Rows start 512 bytes apart at least; a row wider than the device's largest
        // pitch, or a total past the address space, is refused as the driver does.
        let aligned = width
            .checked_next_multiple_of(512)
            .filter(|&p| p <= MAX_PITCH)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let bytes = aligned.checked_mul(height).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        alloc(out, bytes)?;
        put(pitch, aligned)
    }

    fn cuMemFree_v2(address: CUdeviceptr) { free(address) }

    fn cuMemGetInfo_v2(free_bytes: *mut usize, total_bytes: *mut usize) {
        let d = driver()?;
        let device = d.current_context()?.device;
        let (free_now, total) = d.conn.mem_get_info(device as u32).map_err(fail)?;
        put(free_bytes, free_now as usize)?;
        put(total_bytes, total as usize)
    }

    fn cuMemGetAddressRange_v2(base: *mut CUdeviceptr, size: *mut usize, address: CUdeviceptr) {
        let (b, s) = driver()?.device_range(address).ok_or(CUDA_ERROR_NOT_FOUND)?;
        if !base.is_null() { put(base, b)?; }
        if !size.is_null() { put(size, s as usize)?; }
        Ok(())
    }

    fn cuMemAllocHost_v2(out: *mut *mut c_void, bytes: usize) { host_alloc(out, bytes, 0) }
    fn cuMemHostAlloc(out: *mut *mut c_void, bytes: usize, flags: c_uint) {
        if flags & CU_MEMHOSTALLOC_DEVICEMAP != 0 {
            // Mapping host memory into a remote device's address space cannot work.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        host_alloc(out, bytes, flags)
    }

    fn cuMemFreeHost(ptr: *mut c_void) {
        let d = driver()?;
        let mut blocks = lock(&d.host_blocks);
        match blocks.get(&(ptr as usize)) {
            Some(block) if block.owned => {
                blocks.remove(&(ptr as usize));
                // SAFETY: allocated by posix_memalign in host_alloc.
                unsafe { libc::free(ptr) };
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    fn cuMemHostGetFlags(flags: *mut c_uint, ptr: *mut c_void) {
        let (_, _, f) = driver()?.host_block(ptr as usize).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        put(flags, f)
    }

    fn cuMemHostRegister_v2(ptr: *mut c_void, bytes: usize, flags: c_uint) {
        let d = driver()?;
        if ptr.is_null() || bytes == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if flags & CU_MEMHOSTREGISTER_DEVICEMAP != 0 {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        if d.host_block(ptr as usize).is_some() {
            return Err(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
        }
        // Copies always go through the client, so registered memory needs no pinning;
        // the range is recorded so pointer queries and unregister behave as documented.
        lock(&d.host_blocks).insert(ptr as usize, HostBlock { len: bytes, flags, owned: false });
        Ok(())
    }

    fn cuMemHostUnregister(ptr: *mut c_void) {
        let d = driver()?;
        let mut blocks = lock(&d.host_blocks);
        match blocks.get(&(ptr as usize)) {
            Some(block) if !block.owned => {
                blocks.remove(&(ptr as usize));
                Ok(())
            }
            _ => Err(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED),
        }
    }

    fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, src, n, 0) }
    fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, src, n, per_thread_default()) }
    fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst, src, n, stream_arg(s, false)) }
    fn cuMemcpyAsync_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst, src, n, stream_arg(s, true)) }
    fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) { copy(dst, src as u64, n, 0) }
    fn cuMemcpyHtoD_v2_ptds(dst: CUdeviceptr, src: *const c_void, n: usize) { copy(dst, src as u64, n, per_thread_default()) }
    fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) { copy(dst as u64, src, n, 0) }
    fn cuMemcpyDtoH_v2_ptds(dst: *mut c_void, src: CUdeviceptr, n: usize) { copy(dst as u64, src, n, per_thread_default()) }
    fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, src, n, 0) }
    fn cuMemcpyDtoD_v2_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, src, n, per_thread_default()) }
    fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, n: usize, s: CUstream) { copy(dst, src as u64, n, stream_arg(s, false)) }
    fn cuMemcpyHtoDAsync_v2_ptsz(dst: CUdeviceptr, src: *const c_void, n: usize, s: CUstream) { copy(dst, src as u64, n, stream_arg(s, true)) }
    fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst as u64, src, n, stream_arg(s, false)) }
    fn cuMemcpyDtoHAsync_v2_ptsz(dst: *mut c_void, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst as u64, src, n, stream_arg(s, true)) }
    fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst, src, n, stream_arg(s, false)) }
    fn cuMemcpyDtoDAsync_v2_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst, src, n, stream_arg(s, true)) }
    // Between devices of one server: the server copies between its devices, so a
    // peer copy is a device-to-device copy (the contexts only name the devices).
    fn cuMemcpyPeer(dst: CUdeviceptr, _dc: CUcontext, src: CUdeviceptr, _sc: CUcontext, n: usize) { copy(dst, src, n, 0) }
    fn cuMemcpyPeer_ptds(dst: CUdeviceptr, _dc: CUcontext, src: CUdeviceptr, _sc: CUcontext, n: usize) { copy(dst, src, n, per_thread_default()) }
    fn cuMemcpyPeerAsync(dst: CUdeviceptr, _dc: CUcontext, src: CUdeviceptr, _sc: CUcontext, n: usize, s: CUstream) { copy(dst, src, n, stream_arg(s, false)) }
    fn cuMemcpyPeerAsync_ptsz(dst: CUdeviceptr, _dc: CUcontext, src: CUdeviceptr, _sc: CUcontext, n: usize, s: CUstream) { copy(dst, src, n, stream_arg(s, true)) }
    fn cuMemcpy3D_v2(p: *const CUDA_MEMCPY3D) { copy_3d(p, 0) }
    fn cuMemcpy3D_v2_ptds(p: *const CUDA_MEMCPY3D) { copy_3d(p, per_thread_default()) }
    fn cuMemcpy3DAsync_v2(p: *const CUDA_MEMCPY3D, s: CUstream) { copy_3d(p, stream_arg(s, false)) }
    fn cuMemcpy3DAsync_v2_ptsz(p: *const CUDA_MEMCPY3D, s: CUstream) { copy_3d(p, stream_arg(s, true)) }
    fn cuMemcpyHtoA_v2(dst: CUarray, offset: usize, src: *const c_void, bytes: usize) { copy_1d(array_row(dst, offset)?, flat(src as u64), bytes) }
    fn cuMemcpyAtoH_v2(dst: *mut c_void, src: CUarray, offset: usize, bytes: usize) { copy_1d(flat(dst as u64), array_row(src, offset)?, bytes) }
    fn cuMemcpyDtoA_v2(dst: CUarray, offset: usize, src: CUdeviceptr, bytes: usize) { copy_1d(array_row(dst, offset)?, flat(src), bytes) }
    fn cuMemcpyAtoD_v2(dst: CUdeviceptr, src: CUarray, offset: usize, bytes: usize) { copy_1d(flat(dst), array_row(src, offset)?, bytes) }
    fn cuMemcpyAtoA_v2(dst: CUarray, dst_offset: usize, src: CUarray, src_offset: usize, bytes: usize) {
        copy_1d(array_row(dst, dst_offset)?, array_row(src, src_offset)?, bytes)
    }
    fn cuMemcpy2D_v2(p: *const CUDA_MEMCPY2D) { copy_2d(p, 0) }
    fn cuMemcpy2D_v2_ptds(p: *const CUDA_MEMCPY2D) { copy_2d(p, per_thread_default()) }
    fn cuMemcpy2DUnaligned_v2(p: *const CUDA_MEMCPY2D) { copy_2d(p, 0) }
    fn cuMemcpy2DUnaligned_v2_ptds(p: *const CUDA_MEMCPY2D) { copy_2d(p, per_thread_default()) }
    fn cuMemcpy2DAsync_v2(p: *const CUDA_MEMCPY2D, s: CUstream) { copy_2d(p, stream_arg(s, false)) }
    fn cuMemcpy2DAsync_v2_ptsz(p: *const CUDA_MEMCPY2D, s: CUstream) { copy_2d(p, stream_arg(s, true)) }

    fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) { memset(dst, v as u32, 1, n, 0) }
    fn cuMemsetD8_v2_ptds(dst: CUdeviceptr, v: u8, n: usize) { memset(dst, v as u32, 1, n, per_thread_default()) }
    fn cuMemsetD16_v2(dst: CUdeviceptr, v: u16, n: usize) { memset(dst, v as u32, 2, n, 0) }
    fn cuMemsetD16_v2_ptds(dst: CUdeviceptr, v: u16, n: usize) { memset(dst, v as u32, 2, n, per_thread_default()) }
    fn cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize) { memset(dst, v, 4, n, 0) }
    fn cuMemsetD32_v2_ptds(dst: CUdeviceptr, v: c_uint, n: usize) { memset(dst, v, 4, n, per_thread_default()) }
    fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: CUstream) { memset(dst, v as u32, 1, n, stream_arg(s, false)) }
    fn cuMemsetD8Async_ptsz(dst: CUdeviceptr, v: u8, n: usize, s: CUstream) { memset(dst, v as u32, 1, n, stream_arg(s, true)) }
    fn cuMemsetD16Async(dst: CUdeviceptr, v: u16, n: usize, s: CUstream) { memset(dst, v as u32, 2, n, stream_arg(s, false)) }
    fn cuMemsetD16Async_ptsz(dst: CUdeviceptr, v: u16, n: usize, s: CUstream) { memset(dst, v as u32, 2, n, stream_arg(s, true)) }
    fn cuMemsetD32Async(dst: CUdeviceptr, v: c_uint, n: usize, s: CUstream) { memset(dst, v, 4, n, stream_arg(s, false)) }
    fn cuMemsetD32Async_ptsz(dst: CUdeviceptr, v: c_uint, n: usize, s: CUstream) { memset(dst, v, 4, n, stream_arg(s, true)) }
    fn cuMemsetD2D8_v2(dst: CUdeviceptr, pitch: usize, v: u8, w: usize, h: usize) { memset_2d(dst, pitch, v as u32, 1, w, h, 0) }
    fn cuMemsetD2D8_v2_ptds(dst: CUdeviceptr, pitch: usize, v: u8, w: usize, h: usize) { memset_2d(dst, pitch, v as u32, 1, w, h, per_thread_default()) }
    fn cuMemsetD2D16_v2(dst: CUdeviceptr, pitch: usize, v: u16, w: usize, h: usize) { memset_2d(dst, pitch, v as u32, 2, w, h, 0) }
    fn cuMemsetD2D16_v2_ptds(dst: CUdeviceptr, pitch: usize, v: u16, w: usize, h: usize) { memset_2d(dst, pitch, v as u32, 2, w, h, per_thread_default()) }
    fn cuMemsetD2D32_v2(dst: CUdeviceptr, pitch: usize, v: c_uint, w: usize, h: usize) { memset_2d(dst, pitch, v, 4, w, h, 0) }
    fn cuMemsetD2D32_v2_ptds(dst: CUdeviceptr, pitch: usize, v: c_uint, w: usize, h: usize) { memset_2d(dst, pitch, v, 4, w, h, per_thread_default()) }
    fn cuMemsetD2D8Async(dst: CUdeviceptr, pitch: usize, v: u8, w: usize, h: usize, s: CUstream) { memset_2d(dst, pitch, v as u32, 1, w, h, stream_arg(s, false)) }
    fn cuMemsetD2D8Async_ptsz(dst: CUdeviceptr, pitch: usize, v: u8, w: usize, h: usize, s: CUstream) { memset_2d(dst, pitch, v as u32, 1, w, h, stream_arg(s, true)) }
    fn cuMemsetD2D16Async(dst: CUdeviceptr, pitch: usize, v: u16, w: usize, h: usize, s: CUstream) { memset_2d(dst, pitch, v as u32, 2, w, h, stream_arg(s, false)) }
    fn cuMemsetD2D16Async_ptsz(dst: CUdeviceptr, pitch: usize, v: u16, w: usize, h: usize, s: CUstream) { memset_2d(dst, pitch, v as u32, 2, w, h, stream_arg(s, true)) }
    fn cuMemsetD2D32Async(dst: CUdeviceptr, pitch: usize, v: c_uint, w: usize, h: usize, s: CUstream) { memset_2d(dst, pitch, v, 4, w, h, stream_arg(s, false)) }
    fn cuMemsetD2D32Async_ptsz(dst: CUdeviceptr, pitch: usize, v: c_uint, w: usize, h: usize, s: CUstream) { memset_2d(dst, pitch, v, 4, w, h, stream_arg(s, true)) }

    fn cuPointerGetAttribute(data: *mut c_void, attribute: CUpointer_attribute, ptr: CUdeviceptr) {
        if data.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        pointer_attribute(data, attribute, ptr, false)
    }

    fn cuPointerGetAttributes(count: c_uint, attributes: *mut CUpointer_attribute, data: *mut *mut c_void, ptr: CUdeviceptr) {
        if attributes.is_null() || data.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        for i in 0..count as usize {
            // SAFETY: the caller passes `count` attributes and `count` out-pointers.
            let (attribute, out) = unsafe { (*attributes.add(i), *data.add(i)) };
            if out.is_null() {
                continue;
            }
            let attribute = if attribute == CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL && driver()?.device_range(ptr).is_none() && driver()?.host_block(ptr as usize).is_none() {
                CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL_NONE
            } else {
                attribute
            };
            pointer_attribute(out, attribute, ptr, true)?;
        }
        Ok(())
    }
}
