//! Virtual memory management: address reservations, physical allocations,
//! mappings and access (`cuMemAddressReserve`, `cuMemCreate`, `cuMemMap`,
//! `cuMemSetAccess`, …), as PyTorch's `expandable_segments` allocator uses them.
//!
//! Each call is one request to the server, which reserves the addresses in the
//! device's range (so they never alias host or other device addresses), backs
//! physical allocations (charged to the tenant's ledger from `cuMemCreate` until
//! the handle is released and its last mapping gone) and checks every mapping.
//! The client keeps what the query calls answer (`cuMemGetAccess`,
//! `cuMemRetainAllocationHandle`, `cuMemGetAllocationPropertiesFromHandle`) and
//! each handle's reference count, and lists mapped ranges beside allocations so
//! copies and launches into them are checked as any others. Exporting a handle
//! to another process (`cuMemExportToShareableHandle`) is not offered.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use xpupool_cuda_types::*;
use xpupool_protocol::Calls;

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock};

/// Granularity of reservations, physical allocations and mappings (2 MiB, as
/// on NVIDIA's data-centre GPUs); the server checks the same.
pub(crate) const GRANULARITY: usize = 2 << 20;

/// A physical allocation as the client knows it.
struct Physical {
    device: CUdevice,
    /// `cuMemCreate` and each `cuMemRetainAllocationHandle` add one; each
    /// `cuMemRelease` takes one; at zero the server is told.
    references: u32,
}

/// A mapping: its size, physical allocation and access flags.
struct Mapping {
    size: u64,
    handle: u64,
    access: CUmemAccess_flags,
}

#[derive(Default)]
struct Table {
    physical: HashMap<u64, Physical>,
    mappings: BTreeMap<u64, Mapping>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The device a `CUmemAllocationProp` places memory on, if it is one xpupool
/// can allocate: pinned device memory, no compression. A POSIX file descriptor
/// may be asked for as the handle type (PyTorch asks, to share segments between
/// processes); it is the export itself, `cuMemExportToShareableHandle`, that is
/// not offered. Fabric handles are refused here.
fn prop_device(prop: *const CUmemAllocationProp) -> Res<CUdevice> {
    if prop.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: checked non-null; the caller passes a CUmemAllocationProp.
    let prop = unsafe { &*prop };
    if prop.type_ != CU_MEM_ALLOCATION_TYPE_PINNED {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if !matches!(
        prop.requestedHandleTypes,
        CU_MEM_HANDLE_TYPE_NONE | CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
    ) || prop.allocFlags.compressionType != 0
    {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    super::pool::location_device(&prop.location)
}

/// The mappings exactly covering `[ptr, ptr+size)`.
fn covering(table: &Table, ptr: u64, size: u64) -> Res<Vec<u64>> {
    let end = ptr
        .checked_add(size)
        .filter(|_| size > 0)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut at = ptr;
    let mut found = Vec::new();
    for (&base, m) in table.mappings.range(ptr..end) {
        if base != at {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        at = base + m.size;
        found.push(base);
    }
    if at != end {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(found)
}

/// Drops one reference to `handle`, telling the server at the last.
fn release(handle: u64) -> Res {
    let mut t = lock(table());
    let p = t
        .physical
        .get_mut(&handle)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if p.references > 1 {
        p.references -= 1;
        return Ok(());
    }
    driver()?.conn.mem_release(handle).map_err(fail)?;
    t.physical.remove(&handle);
    Ok(())
}

export! {
    fn cuMemGetAllocationGranularity(granularity: *mut usize, prop: *const CUmemAllocationProp, option: CUmemAllocationGranularity_flags) {
        prop_device(prop)?;
        if !matches!(option, CU_MEM_ALLOC_GRANULARITY_MINIMUM | CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(granularity, GRANULARITY)
    }

    fn cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, alignment: usize, _addr: CUdeviceptr, flags: u64) {
        // The address asked for is a hint, which the driver may ignore too.
        if ptr.is_null() || flags != 0 || size == 0 || !size.is_multiple_of(GRANULARITY)
            || (alignment != 0 && !alignment.is_power_of_two())
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let d = driver()?;
        let device = d.current_device();
        // Reserved here too, so that no host memory ever lies inside it.
        let start = xpupool_client::ranges::place(
            |a| d.device_ranges.hold(a, size as u64),
            || d.conn.mem_address_reserve(device as u32, size as u64, alignment as u64).map_err(fail),
            |a| {
                let _ = d.conn.mem_address_free(a, size as u64);
            },
            CUDA_ERROR_OUT_OF_MEMORY,
        )?;
        put(ptr, start)
    }

    fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) {
        let d = driver()?;
        // Forgotten here first: once the server has it back, another thread's
        // reservation may get the same addresses.
        if !d.device_ranges.take_hold(ptr, size as u64) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        d.conn.mem_address_free(ptr, size as u64).map_err(|e| {
            // Still the server's reservation: held here again.
            d.device_ranges.hold_given(ptr, size as u64);
            fail(e)
        })
    }

    fn cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: u64) {
        let device = prop_device(prop)?;
        if handle.is_null() || flags != 0 || size == 0 || !size.is_multiple_of(GRANULARITY) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let d = driver()?;
        d.device(device)?;
        let h = d.conn.mem_create(device as u32, size as u64).map_err(fail)?;
        lock(table()).physical.insert(h, Physical { device, references: 1 });
        put(handle, h)
    }

    fn cuMemRelease(handle: CUmemGenericAllocationHandle) {
        release(handle)
    }

    fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64) {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let d = driver()?;
        let mut t = lock(table());
        let Some(device) = t.physical.get(&handle).map(|p| p.device) else {
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        d.conn.mem_map(ptr, size as u64, offset as u64, handle).map_err(fail)?;
        t.mappings.insert(ptr, Mapping { size: size as u64, handle, access: CU_MEM_ACCESS_FLAGS_PROT_NONE });
        // Copies and launches into it are checked as into an allocation (one
        // cuMemFree does not take).
        d.device_ranges.add_given(ptr, size as u64, false);
        d.device_ranges.set_device(ptr, device as u32);
        Ok(())
    }

    fn cuMemUnmap(ptr: CUdeviceptr, size: usize) {
        let d = driver()?;
        let mut t = lock(table());
        let found = covering(&t, ptr, size as u64)?;
        d.conn.mem_unmap(ptr, size as u64).map_err(fail)?;
        for base in found {
            t.mappings.remove(&base);
            d.device_ranges.remove(base);
        }
        Ok(())
    }

    fn cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: *const CUmemAccessDesc, count: usize) {
        if desc.is_null() || count == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `count` descriptors at `desc`, as the caller says.
        let descs = unsafe { std::slice::from_raw_parts(desc, count) };
        let d = driver()?;
        let mut t = lock(table());
        let found = covering(&t, ptr, size as u64)?;
        for desc in descs {
            let device = super::pool::location_device(&desc.location)?;
            if !matches!(desc.flags, CU_MEM_ACCESS_FLAGS_PROT_NONE | CU_MEM_ACCESS_FLAGS_PROT_READ | CU_MEM_ACCESS_FLAGS_PROT_READWRITE) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            d.conn.mem_set_access(ptr, size as u64, device as u32, desc.flags).map_err(fail)?;
            for base in &found {
                if let Some(m) = t.mappings.get_mut(base) {
                    m.access = desc.flags;
                }
            }
        }
        Ok(())
    }

    fn cuMemGetAccess(flags: *mut u64, location: *const CUmemLocation, ptr: CUdeviceptr) {
        if location.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes a CUmemLocation.
        super::pool::location_device(unsafe { &*location })?;
        let t = lock(table());
        let (base, m) = t.mappings.range(..=ptr).next_back().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if ptr >= base + m.size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(flags, u64::from(m.access))
    }

    fn cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle, addr: *mut std::ffi::c_void) {
        let addr = addr as u64;
        let mut t = lock(table());
        let h = {
            let (base, m) = t.mappings.range(..=addr).next_back().ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if addr >= base + m.size {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            m.handle
        };
        let p = t.physical.get_mut(&h).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        p.references += 1;
        put(handle, h)
    }

    fn cuMemGetAllocationPropertiesFromHandle(prop: *mut CUmemAllocationProp, handle: CUmemGenericAllocationHandle) {
        let t = lock(table());
        let p = t.physical.get(&handle).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut out = CUmemAllocationProp { type_: CU_MEM_ALLOCATION_TYPE_PINNED, ..Default::default() };
        out.location.type_ = CU_MEM_LOCATION_TYPE_DEVICE;
        out.location.__bindgen_anon_1.id = p.device;
        put(prop, out)
    }
}
