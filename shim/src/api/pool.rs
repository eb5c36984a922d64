//! The stream-ordered allocator: `cuMemAllocAsync`, `cuMemFreeAsync`, memory pools
//! (each device's default pool, pools the application creates, the device's
//! current pool) and their attributes.
//!
//! A pool here holds no memory of its own: an allocation is a server allocation
//! (charged to the tenant's ledger when it is made), and a free returns it to the
//! server in stream order (posted behind the work already sent, which the server
//! runs first). So the reserved and used figures of a pool are the same, the
//! release threshold and trimming have nothing to release, and `cuMemGetInfo` is
//! exact at every moment. What this costs: one round trip per allocation, none per
//! free. IPC export of pools is not offered (`MEMPOOL_SUPPORTED_HANDLE_TYPES` is 0).
//! Graph memory's figures are here too (the graph module keeps them).

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::{Mutex, OnceLock};

use xpupool_cuda_types::*;
use xpupool_protocol::Calls;

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock, stream_arg};

/// A pool's figures and settings.
struct Pool {
    device: CUdevice,
    /// Bytes allocated from it now, and the most since the mark was reset.
    used: u64,
    used_high: u64,
    /// `RESERVED_MEM_HIGH` (the same as used: nothing is kept in reserve), reset
    /// apart.
    reserved_high: u64,
    release_threshold: u64,
    /// The three reuse policies (`CU_MEMPOOL_ATTR_REUSE_*`), as set.
    reuse: [c_int; 3],
    /// Peer access as set with `cuMemPoolSetAccess`, by device.
    access: HashMap<CUdevice, CUmemAccess_flags>,
    /// Created by the application (may be destroyed), not a default pool.
    created: bool,
    /// Destroyed with allocations still out: goes when the last is freed.
    destroyed: bool,
}

#[derive(Default)]
struct Pools {
    pools: HashMap<u64, Pool>,
    /// Each device's default pool, made on first use.
    defaults: HashMap<CUdevice, u64>,
    /// Each device's current pool (`cuDeviceSetMemPool`), if not its default.
    current: HashMap<CUdevice, u64>,
    /// Live allocations from pools: address → (pool, bytes).
    allocations: HashMap<u64, (u64, u64)>,
    next: u64,
}

fn pools() -> &'static Mutex<Pools> {
    static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
    POOLS.get_or_init(|| {
        Mutex::new(Pools {
            // Handles are opaque to applications; these are never dereferenced.
            next: 0x7d00_0000,
            ..Pools::default()
        })
    })
}

impl Pools {
    fn add(&mut self, device: CUdevice, created: bool) -> u64 {
        self.next += 0x10;
        let handle = self.next;
        self.pools.insert(
            handle,
            Pool {
                device,
                used: 0,
                used_high: 0,
                reserved_high: 0,
                release_threshold: 0,
                reuse: [1, 1, 1],
                access: HashMap::new(),
                created,
                destroyed: false,
            },
        );
        handle
    }

    fn default_of(&mut self, device: CUdevice) -> u64 {
        if let Some(&pool) = self.defaults.get(&device) {
            return pool;
        }
        let pool = self.add(device, false);
        self.defaults.insert(device, pool);
        pool
    }

    fn current_of(&mut self, device: CUdevice) -> u64 {
        match self.current.get(&device) {
            Some(&pool) => pool,
            None => self.default_of(device),
        }
    }

    fn live(&mut self, pool: CUmemoryPool) -> Res<&mut Pool> {
        self.pools
            .get_mut(&(pool as u64))
            .filter(|p| !p.destroyed)
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }
}

fn valid_device(device: CUdevice) -> Res<CUdevice> {
    driver()?.device(device).map(|_| device)
}

/// Allocates `bytes` from `pool` (the current pool of the stream's device when
/// `None`) for work in `stream`.
fn alloc_async(
    out: *mut CUdeviceptr,
    bytes: usize,
    pool: Option<CUmemoryPool>,
    stream: u64,
) -> Res {
    if out.is_null() || bytes == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    let stream_device = d.stream_device(stream)?;
    let (pool, device) = {
        let mut table = lock(pools());
        match pool {
            Some(p) => (p as u64, table.live(p)?.device),
            None => (table.current_of(stream_device), stream_device),
        }
    };
    // In a capture: graph memory, an allocation node.
    if let Some(address) = super::graph::capture_alloc(stream, device, bytes as u64)? {
        return put(out, address);
    }
    let address = xpupool_client::ranges::place(
        |a| d.device_ranges.add(a, bytes as u64, true),
        || d.conn.mem_alloc(device as u32, bytes as u64).map_err(fail),
        |a| {
            let _ = d.conn.post(xpupool_protocol::Request::MemFree { ptr: a });
        },
        CUDA_ERROR_OUT_OF_MEMORY,
    )?;
    d.device_ranges.set_device(address, device as u32);
    let mut table = lock(pools());
    table.allocations.insert(address, (pool, bytes as u64));
    if let Some(p) = table.pools.get_mut(&pool) {
        p.used += bytes as u64;
        p.used_high = p.used_high.max(p.used);
        p.reserved_high = p.reserved_high.max(p.used);
    }
    put(out, address)
}

/// An allocation freed (by `cuMemFreeAsync` or `cuMemFree`): its pool's figures
/// drop, and a destroyed pool whose last allocation this was goes.
pub(crate) fn forget(address: u64) {
    let mut table = lock(pools());
    let Some((pool, bytes)) = table.allocations.remove(&address) else {
        return;
    };
    let gone = match table.pools.get_mut(&pool) {
        Some(p) => {
            p.used = p.used.saturating_sub(bytes);
            p.destroyed && p.used == 0
        }
        None => false,
    };
    if gone {
        table.pools.remove(&pool);
    }
}

fn free_async(address: CUdeviceptr, stream: u64) -> Res {
    let d = driver()?;
    d.stream_device(stream)?;
    // In a capture: a free node (of graph memory; any other ends the capture).
    if super::graph::capture_free(stream, address)? {
        return Ok(());
    }
    // Posted behind the stream's work (and everything else already sent), which
    // the server finishes first.
    super::memory::free(address)
}

fn get_attribute(pool: CUmemoryPool, attribute: CUmemPool_attribute, value: *mut c_void) -> Res {
    let mut table = lock(pools());
    let p = table.live(pool)?;
    match attribute {
        CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => {
            put(value.cast::<c_int>(), p.reuse[attribute as usize - 1])
        }
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => put(value.cast::<u64>(), p.release_threshold),
        CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT | CU_MEMPOOL_ATTR_USED_MEM_CURRENT => {
            put(value.cast::<u64>(), p.used)
        }
        CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH => put(value.cast::<u64>(), p.reserved_high),
        CU_MEMPOOL_ATTR_USED_MEM_HIGH => put(value.cast::<u64>(), p.used_high),
        CU_MEMPOOL_ATTR_ALLOCATION_TYPE => put(
            value.cast::<c_int>(),
            CU_MEM_ALLOCATION_TYPE_PINNED as c_int,
        ),
        CU_MEMPOOL_ATTR_EXPORT_HANDLE_TYPES => {
            put(value.cast::<c_int>(), CU_MEM_HANDLE_TYPE_NONE as c_int)
        }
        CU_MEMPOOL_ATTR_LOCATION_ID => put(value.cast::<c_int>(), p.device),
        CU_MEMPOOL_ATTR_LOCATION_TYPE => {
            put(value.cast::<c_int>(), CU_MEM_LOCATION_TYPE_DEVICE as c_int)
        }
        CU_MEMPOOL_ATTR_MAX_POOL_SIZE => put(value.cast::<u64>(), 0),
        CU_MEMPOOL_ATTR_HW_DECOMPRESS_ENABLED => put(value.cast::<c_int>(), 0),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

fn set_attribute(pool: CUmemoryPool, attribute: CUmemPool_attribute, value: *mut c_void) -> Res {
    if value.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut table = lock(pools());
    let p = table.live(pool)?;
    // SAFETY (both reads): the caller passes a value of the attribute's type.
    match attribute {
        CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => {
            p.reuse[attribute as usize - 1] = unsafe { *value.cast::<c_int>() };
        }
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => p.release_threshold = unsafe { *value.cast::<u64>() },
        // The high-water marks may only be reset, to zero (to the current figure).
        CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH | CU_MEMPOOL_ATTR_USED_MEM_HIGH => {
            if unsafe { *value.cast::<u64>() } != 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            if attribute == CU_MEMPOOL_ATTR_USED_MEM_HIGH {
                p.used_high = p.used;
            } else {
                p.reserved_high = p.used;
            }
        }
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    Ok(())
}

/// The device a `CUmemLocation` names, if it is one of this server's devices.
pub(crate) fn location_device(location: &CUmemLocation) -> Res<CUdevice> {
    if location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: for a device location the union holds the ordinal.
    valid_device(unsafe { location.__bindgen_anon_1.id })
}

export! {
    fn cuDeviceGetDefaultMemPool(pool: *mut CUmemoryPool, device: CUdevice) {
        let device = valid_device(device)?;
        put(pool, lock(pools()).default_of(device) as CUmemoryPool)
    }

    fn cuDeviceGetMemPool(pool: *mut CUmemoryPool, device: CUdevice) {
        let device = valid_device(device)?;
        put(pool, lock(pools()).current_of(device) as CUmemoryPool)
    }

    fn cuDeviceSetMemPool(device: CUdevice, pool: CUmemoryPool) {
        let device = valid_device(device)?;
        let mut table = lock(pools());
        if table.live(pool)?.device != device {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        table.current.insert(device, pool as u64);
        Ok(())
    }

    fn cuMemPoolCreate(pool: *mut CUmemoryPool, props: *const CUmemPoolProps) {
        if pool.is_null() || props.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes a CUmemPoolProps.
        let props = unsafe { &*props };
        if props.allocType != CU_MEM_ALLOCATION_TYPE_PINNED {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if props.handleTypes != CU_MEM_HANDLE_TYPE_NONE {
            // No pool is exportable to another process through xpupool.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let device = location_device(&props.location)?;
        put(pool, lock(pools()).add(device, true) as CUmemoryPool)
    }

    fn cuMemPoolDestroy(pool: CUmemoryPool) {
        let mut table = lock(pools());
        let p = table.live(pool)?;
        if !p.created {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // With allocations still out it goes when the last is freed.
        p.destroyed = true;
        let (device, empty) = (p.device, p.used == 0);
        if table.current.get(&device) == Some(&(pool as u64)) {
            table.current.remove(&device);
        }
        if empty {
            table.pools.remove(&(pool as u64));
        }
        Ok(())
    }

    fn cuMemPoolGetAttribute(pool: CUmemoryPool, attribute: CUmemPool_attribute, value: *mut c_void) {
        get_attribute(pool, attribute, value)
    }

    fn cuMemPoolSetAttribute(pool: CUmemoryPool, attribute: CUmemPool_attribute, value: *mut c_void) {
        set_attribute(pool, attribute, value)
    }

    /// Nothing is kept beyond what is allocated, so there is nothing to trim.
    fn cuMemPoolTrimTo(pool: CUmemoryPool, _min_bytes_to_keep: usize) {
        lock(pools()).live(pool).map(|_| ())
    }

    fn cuMemPoolSetAccess(pool: CUmemoryPool, descs: *const CUmemAccessDesc, count: usize) {
        if count > 0 && descs.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `count` descriptors at `descs`, as the caller says.
        let descs = if count == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(descs, count) } };
        let mut checked = Vec::with_capacity(descs.len());
        for desc in descs {
            let device = location_device(&desc.location)?;
            if !matches!(desc.flags, CU_MEM_ACCESS_FLAGS_PROT_NONE | CU_MEM_ACCESS_FLAGS_PROT_READ | CU_MEM_ACCESS_FLAGS_PROT_READWRITE) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            checked.push((device, desc.flags));
        }
        let mut table = lock(pools());
        let p = table.live(pool)?;
        for (device, flags) in checked {
            // A pool's own device always has read-write access.
            if device == p.device && flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE {
                return Err(CUDA_ERROR_INVALID_DEVICE);
            }
            p.access.insert(device, flags);
        }
        Ok(())
    }

    fn cuMemPoolGetAccess(flags: *mut CUmemAccess_flags, pool: CUmemoryPool, location: *mut CUmemLocation) {
        if location.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes a CUmemLocation.
        let device = location_device(unsafe { &*location })?;
        let mut table = lock(pools());
        let p = table.live(pool)?;
        let access = if device == p.device {
            CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        } else {
            p.access.get(&device).copied().unwrap_or(CU_MEM_ACCESS_FLAGS_PROT_NONE)
        };
        put(flags, access)
    }

    fn cuDeviceGetGraphMemAttribute(device: CUdevice, attribute: CUgraphMem_attribute, value: *mut c_void) {
        valid_device(device)?;
        match attribute {
            CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT | CU_GRAPH_MEM_ATTR_USED_MEM_HIGH
            | CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT | CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH => {
                // Graph memory is allocated as it is and kept whole: reserved is used.
                let (now, most) = super::graph::graph_memory_used(device);
                let current = matches!(attribute, CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT | CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT);
                put(value.cast::<u64>(), if current { now } else { most })
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    fn cuDeviceSetGraphMemAttribute(device: CUdevice, attribute: CUgraphMem_attribute, value: *mut c_void) {
        valid_device(device)?;
        if value.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // Only the high-water marks may be set, and only to zero.
        // SAFETY: checked non-null; the value of these attributes is a cuuint64_t.
        match attribute {
            CU_GRAPH_MEM_ATTR_USED_MEM_HIGH | CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH if unsafe { *value.cast::<u64>() } == 0 => {
                super::graph::reset_graph_memory_high(device);
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    fn cuDeviceGraphMemTrim(device: CUdevice) {
        valid_device(device).map(|_| ())
    }

    fn cuMemAllocAsync(out: *mut CUdeviceptr, bytes: usize, stream: CUstream) { alloc_async(out, bytes, None, stream_arg(stream, false)) }
    fn cuMemAllocAsync_ptsz(out: *mut CUdeviceptr, bytes: usize, stream: CUstream) { alloc_async(out, bytes, None, stream_arg(stream, true)) }
    fn cuMemAllocFromPoolAsync(out: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) { alloc_async(out, bytes, Some(pool), stream_arg(stream, false)) }
    fn cuMemAllocFromPoolAsync_ptsz(out: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) { alloc_async(out, bytes, Some(pool), stream_arg(stream, true)) }
    fn cuMemFreeAsync(address: CUdeviceptr, stream: CUstream) { free_async(address, stream_arg(stream, false)) }
    fn cuMemFreeAsync_ptsz(address: CUdeviceptr, stream: CUstream) { free_async(address, stream_arg(stream, true)) }
}
