//! ACL's virtual memory (`aclrtReserveMemAddress`, `aclrtMallocPhysical`,
//! `aclrtMapMem`, …), which torch_npu's caching allocator uses for its
//! expandable segments (`PYTORCH_NPU_ALLOC_CONF=expandable_segments:True`), over
//! the protocol's virtual-memory operations (CUDA's `cuMem*` family). ACL's
//! calls name a reservation or a mapping by its address alone, so their sizes are
//! kept here; sizes are rounded up to the server's granularity (2 MiB), as ACL's
//! own are to its page size. A mapping is readable and writable by its device
//! as soon as it is made (ACL has no separate access call).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use xpupool_protocol::Calls;

use crate::runtime::{connection, current_device, device_ranges};
use crate::*;

/// The server's virtual-memory granularity.
const GRANULARITY: u64 = 2 << 20;
/// `ACL_MEM_LOCATION_TYPE_DEVICE`.
const LOCATION_DEVICE: u32 = 1;
/// `CU_MEM_ACCESS_FLAGS_PROT_READWRITE`.
const READ_WRITE: u32 = 3;

/// `aclrtPhysicalMemProp`.
#[repr(C)]
pub struct PhysicalMemProp {
    handle_type: u32,
    allocation_type: u32,
    mem_attr: u32,
    location_id: u32,
    location_type: u32,
    reserve: u64,
}

#[derive(Default)]
struct Table {
    /// Reservations: start → size.
    reservations: HashMap<u64, u64>,
    /// Physical allocations: handle → (size, device).
    physical: HashMap<u64, (u64, u32)>,
    /// Mappings: address → size.
    mappings: HashMap<u64, u64>,
}

fn table() -> std::sync::MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// `size` rounded up to the granularity; an error for 0 or one too large.
fn rounded(size: usize) -> Result<u64, Failure> {
    (size as u64)
        .checked_next_multiple_of(GRANULARITY)
        .filter(|&s| s > 0)
        .ok_or_else(|| Failure::new(ACL_ERROR_INVALID_PARAM, format!("a size of {size} bytes")))
}

fn invalid(what: String) -> Failure {
    Failure::new(ACL_ERROR_INVALID_PARAM, what)
}

#[no_mangle]
pub extern "C" fn aclrtReserveMemAddress(
    out: *mut *mut c_void,
    size: usize,
    alignment: usize,
    expect: *mut c_void,
    _flags: u64,
) -> AclError {
    call(|| {
        if out.is_null() {
            return Err(invalid("a NULL out-pointer".into()));
        }
        if !expect.is_null() {
            return Err(Failure::new(
                ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
                "a reservation at a chosen address (expectPtr)",
            ));
        }
        let size = rounded(size)?;
        // Addresses are the process's, not a device's: torch_npu reserves (to see
        // whether it can) before it sets a device.
        let (c, d) = (connection()?, current_device().unwrap_or(0));
        let held = device_ranges()?;
        let start = xpupool_client::ranges::place(
            |a| held.hold(a, size),
            || {
                c.mem_address_reserve(d, size, alignment as u64)
                    .map_err(Failure::from)
            },
            |a| {
                let _ = c.mem_address_free(a, size);
            },
            Failure::new(ACL_ERROR_RT_MEMORY_ALLOCATION, "no device addresses left"),
        )?;
        table().reservations.insert(start, size);
        put(out, start as *mut c_void)
    })
}

#[no_mangle]
pub extern "C" fn aclrtReleaseMemAddress(start: *mut c_void) -> AclError {
    call(|| {
        let start = start as u64;
        let mut t = table();
        let size = *t
            .reservations
            .get(&start)
            .ok_or_else(|| invalid(format!("{start:#x} is no reservation")))?;
        let c = connection()?;
        c.mem_address_free(start, size)?;
        t.reservations.remove(&start);
        device_ranges()?.take_hold(start, size);
        Ok(())
    })
}

/// # Safety
/// `prop`, if not NULL, points at an `aclrtPhysicalMemProp` (ACL's contract).
#[no_mangle]
pub unsafe extern "C" fn aclrtMallocPhysical(
    out: *mut u64,
    size: usize,
    prop: *const PhysicalMemProp,
    _flags: u64,
) -> AclError {
    call(|| {
        if out.is_null() || prop.is_null() {
            return Err(invalid("a NULL handle or property pointer".into()));
        }
        // SAFETY: the caller's property structure, checked non-NULL.
        let prop = unsafe { &*prop };
        if prop.location_type != LOCATION_DEVICE {
            return Err(Failure::new(
                ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
                format!(
                    "physical memory of location type {} (only the device's)",
                    prop.location_type
                ),
            ));
        }
        let size = rounded(size)?;
        let c = connection()?;
        let handle = c.mem_create(prop.location_id, size)?;
        table().physical.insert(handle, (size, prop.location_id));
        put(out, handle)
    })
}

#[no_mangle]
pub extern "C" fn aclrtFreePhysical(handle: u64) -> AclError {
    call(|| {
        let mut t = table();
        if !t.physical.contains_key(&handle) {
            return Err(invalid(format!("{handle:#x} is no physical allocation")));
        }
        let c = connection()?;
        c.mem_release(handle)?;
        t.physical.remove(&handle);
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclrtMapMem(
    at: *mut c_void,
    size: usize,
    offset: usize,
    handle: u64,
    _flags: u64,
) -> AclError {
    call(|| {
        let at = at as u64;
        let mut t = table();
        let &(physical, on) = t
            .physical
            .get(&handle)
            .ok_or_else(|| invalid(format!("{handle:#x} is no physical allocation")))?;
        let size = rounded(size)?;
        if offset != 0 || size != physical {
            return Err(invalid(format!(
                "a mapping of {size} bytes at offset {offset} of a physical allocation of {physical}"
            )));
        }
        let c = connection()?;
        c.mem_map(at, size, 0, handle)?;
        if let Err(e) = c.mem_set_access(at, size, on, READ_WRITE) {
            let _ = c.mem_unmap(at, size);
            return Err(e.into());
        }
        t.mappings.insert(at, size);
        let held = device_ranges()?;
        held.add_given(at, size, false);
        held.set_device(at, on);
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclrtUnmapMem(at: *mut c_void) -> AclError {
    call(|| {
        let at = at as u64;
        let mut t = table();
        let size = *t
            .mappings
            .get(&at)
            .ok_or_else(|| invalid(format!("{at:#x} is no mapping")))?;
        let c = connection()?;
        c.mem_unmap(at, size)?;
        t.mappings.remove(&at);
        device_ranges()?.remove(at);
        Ok(())
    })
}
