//! Devices, memory, copies, memsets and synchronisation, over the pool's protocol:
//! the same operations the CUDA stand-in sends (the server's codes are CUDA's, which
//! HIP's equal where both have one).

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};

use xpupool_client::copy::{transfer, Direction};
use xpupool_client::ranges::{self, DeviceRanges};
use xpupool_client::standin::Standin;
use xpupool_client::Connection;
use xpupool_protocol::{Calls, CuError};

use crate::{record, HipError, HIP_ERROR_INVALID_VALUE, HIP_SUCCESS};

const HIP_ERROR_OUT_OF_MEMORY: HipError = 2;
const HIP_ERROR_NO_DEVICE: HipError = 100;
const HIP_ERROR_INVALID_DEVICE: HipError = 101;
pub(crate) const HIP_ERROR_INVALID_MEMCPY_DIRECTION: HipError = 21;
pub(crate) const HIP_ERROR_UNKNOWN: HipError = 999;

/// The connection to the pool server and the device ranges held on it.
static STANDIN: Standin = Standin::new();

/// The connection to the pool server, opened at the first call that needs it.
/// Its `atexit` handler is registered after hipcc's module destructors (static
/// initialisation), so it runs before them at exit.
pub(crate) fn connection() -> Result<&'static Connection, HipError> {
    STANDIN.connection(at_exit).ok_or(HIP_ERROR_NO_DEVICE)
}

/// At exit: the session is closed politely (the server frees it at once), and
/// the module destructors hipcc registered, which run after, unload nothing.
extern "C" fn at_exit() {
    if let Some(c) = STANDIN.begin_exit() {
        let _ = guard(|| c.close());
    }
}

/// The connection if a call has opened it and the process is not exiting: what
/// clean-up uses, which must not open one.
pub(crate) fn connection_opened() -> Option<&'static Connection> {
    STANDIN.opened()
}

/// The device ranges this process holds, kept out of its own memory: how a
/// pointer is told to be the device's (`hipMemcpyDefault`), and which frees
/// are of allocations.
fn device_ranges() -> Result<&'static DeviceRanges, HipError> {
    Ok(STANDIN.ranges(connection()?))
}

thread_local! {
    /// `hipSetDevice`'s device on this thread.
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// HIP's code for the server's (CUDA's numbering: equal where HIP has the code).
pub(crate) fn hip_code(e: &CuError) -> HipError {
    let code = e.code as HipError;
    if crate::ERRORS.iter().any(|(c, _, _)| *c == code) {
        code
    } else {
        HIP_ERROR_UNKNOWN
    }
}

/// Runs a call's body and keeps its result as the thread's last. A panic (a bug
/// here) does not unwind into the C caller: it is `hipErrorUnknown`.
pub(crate) fn call(body: impl FnOnce() -> Result<(), HipError>) -> HipError {
    record(
        guard(body)
            .unwrap_or(Err(HIP_ERROR_UNKNOWN))
            .err()
            .unwrap_or(HIP_SUCCESS),
    )
}

/// Runs `body`, catching a panic (`None`, said on stderr): for entry points that
/// return no `hipError_t`.
pub(crate) fn guard<T>(body: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("xpupool: internal error in the HIP stand-in (a panic); the call failed");
            None
        }
    }
}

/// A copy of `size` bytes at device address `at`: refused before any host byte is
/// touched if it runs past the allocation it starts in (or past isize::MAX).
fn within_allocation(at: u64, size: usize) -> Result<(), HipError> {
    if size > isize::MAX as usize {
        return Err(HIP_ERROR_INVALID_VALUE);
    }
    if let Some((base, len)) = device_ranges()?.find(at) {
        if at - base + size as u64 > len {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
    }
    Ok(())
}

/// Whether `p` is in a device allocation this process holds (how
/// `hipMemcpyDefault` tells the sides apart).
pub(crate) fn on_device(p: *const c_void) -> Result<bool, HipError> {
    Ok(device_ranges()?.find(p as u64).is_some())
}

pub(crate) fn put<T>(out: *mut T, value: T) -> Result<(), HipError> {
    if out.is_null() {
        return Err(HIP_ERROR_INVALID_VALUE);
    }
    // SAFETY: the caller's out-pointer, checked non-NULL.
    unsafe { out.write(value) };
    Ok(())
}

pub(crate) fn device() -> Result<(&'static Connection, u32), HipError> {
    let c = connection()?;
    let d = CURRENT.get();
    if d as usize >= c.welcome.devices.len() {
        return Err(HIP_ERROR_INVALID_DEVICE);
    }
    Ok((c, d))
}

#[export_name = "xph_hipInit"]
pub extern "C" fn hip_init(flags: u32) -> HipError {
    call(|| {
        if flags != 0 {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        connection().map(|_| ())
    })
}

#[export_name = "xph_hipGetDeviceCount"]
pub extern "C" fn hip_get_device_count(count: *mut c_int) -> HipError {
    call(|| match connection() {
        Ok(c) => put(count, c.welcome.devices.len() as c_int),
        Err(e) => {
            put(count, 0)?;
            Err(e)
        }
    })
}

#[export_name = "xph_hipSetDevice"]
pub extern "C" fn hip_set_device(device: c_int) -> HipError {
    call(|| {
        let c = connection()?;
        let d = u32::try_from(device).map_err(|_| HIP_ERROR_INVALID_DEVICE)?;
        if d as usize >= c.welcome.devices.len() {
            return Err(HIP_ERROR_INVALID_DEVICE);
        }
        CURRENT.set(d);
        Ok(())
    })
}

#[export_name = "xph_hipGetDevice"]
pub extern "C" fn hip_get_device(out: *mut c_int) -> HipError {
    call(|| {
        connection()?;
        put(out, CURRENT.get() as c_int)
    })
}

/// Device `device` of the connection, as the server describes it.
pub(crate) fn device_info(
    device: c_int,
) -> Result<&'static xpupool_protocol::DeviceInfo, HipError> {
    let c = connection()?;
    usize::try_from(device)
        .ok()
        .and_then(|d| c.welcome.devices.get(d))
        .ok_or(HIP_ERROR_INVALID_DEVICE)
}

#[export_name = "xph_hipDeviceGet"]
pub extern "C" fn hip_device_get(out: *mut c_int, ordinal: c_int) -> HipError {
    call(|| {
        device_info(ordinal)?;
        put(out, ordinal)
    })
}

/// # Safety
/// `name` is `len` writable bytes, as HIP's API asks.
#[export_name = "xph_hipDeviceGetName"]
pub unsafe extern "C" fn hip_device_get_name(
    name: *mut c_char,
    len: c_int,
    device: c_int,
) -> HipError {
    call(|| {
        let info = device_info(device)?;
        let len = usize::try_from(len).map_err(|_| HIP_ERROR_INVALID_VALUE)?;
        if name.is_null() || len == 0 {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        // As much of the name as fits, and its NUL.
        let bytes = info.name.as_bytes();
        let n = bytes.len().min(len - 1);
        // SAFETY: the caller gave `len` writable bytes at `name`; n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name.cast::<u8>(), n);
            name.add(n).write(0);
        }
        Ok(())
    })
}

#[export_name = "xph_hipDeviceGetUuid"]
pub extern "C" fn hip_device_get_uuid(out: *mut [u8; 16], device: c_int) -> HipError {
    call(|| put(out, device_info(device)?.uuid))
}

#[export_name = "xph_hipDeviceTotalMem"]
pub extern "C" fn hip_device_total_mem(out: *mut usize, device: c_int) -> HipError {
    call(|| put(out, device_info(device)?.total_memory as usize))
}

#[export_name = "xph_hipMalloc"]
pub extern "C" fn hip_malloc(out: *mut *mut c_void, size: usize) -> HipError {
    call(|| {
        if out.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        if size == 0 {
            return put(out, std::ptr::null_mut());
        }
        let (c, d) = device()?;
        let held = device_ranges()?;
        let address = ranges::place(
            |a| held.add(a, size as u64, true),
            || c.mem_alloc(d, size as u64).map_err(|e| hip_code(&e)),
            |a| {
                let _ = c.post(xpupool_protocol::Request::MemFree { ptr: a });
            },
            HIP_ERROR_OUT_OF_MEMORY,
        )?;
        put(out, address as *mut c_void)
    })
}

#[export_name = "xph_hipFree"]
pub extern "C" fn hip_free(ptr: *mut c_void) -> HipError {
    call(|| {
        if ptr.is_null() {
            return Ok(());
        }
        let c = connection()?;
        let held = device_ranges()?;
        // Checked here: only an allocation's base is freed, once.
        let size = held
            .remove_freeable(ptr as u64)
            .ok_or(HIP_ERROR_INVALID_VALUE)?;
        // As the device does: after the work before it. If the server refuses,
        // the allocation is still there, and still this process's.
        let freed = c.synchronize().and_then(|()| c.mem_free(ptr as u64));
        if let Err(e) = freed {
            held.add_given(ptr as u64, size, true);
            return Err(hip_code(&e));
        }
        Ok(())
    })
}

/// `hipMemcpyKind`.
pub(crate) const HOST_TO_DEVICE: c_int = 1;
pub(crate) const DEVICE_TO_HOST: c_int = 2;
pub(crate) const DEVICE_TO_DEVICE: c_int = 3;
/// Either side may be either: told apart by the device ranges this process holds.
pub(crate) const DEFAULT: c_int = 4;

#[export_name = "xph_hipMemcpy"]
pub extern "C" fn hip_memcpy(
    dst: *mut c_void,
    src: *const c_void,
    size: usize,
    kind: c_int,
) -> HipError {
    copy(dst, src, size, kind, 0, true)
}

/// A copy in `stream`: with `wait`, done (and its errors known) before it
/// returns; without, copies to the device are sent without waiting (their bytes
/// taken now) and the others still wait.
pub(crate) fn copy(
    dst: *mut c_void,
    src: *const c_void,
    size: usize,
    kind: c_int,
    stream: u64,
    wait: bool,
) -> HipError {
    call(|| {
        if size == 0 {
            return Ok(());
        }
        if dst.is_null() || src.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        let c = connection()?;
        let direction = Direction::of_kind(kind, device_ranges()?, dst as u64, src as u64)
            .ok_or(HIP_ERROR_INVALID_MEMCPY_DIRECTION)?;
        match direction {
            Direction::HostToDevice => within_allocation(dst as u64, size)?,
            Direction::DeviceToHost => within_allocation(src as u64, size)?,
            _ => {}
        }
        // SAFETY: the API contract: `size` bytes on each host side (at most
        // isize::MAX where a host side is read or written, checked above).
        unsafe { transfer(c, direction, dst, src, size, stream, wait) }.map_err(|e| hip_code(&e))
    })
}

#[export_name = "xph_hipMemset"]
pub extern "C" fn hip_memset(dst: *mut c_void, value: c_int, size: usize) -> HipError {
    call(|| {
        if size == 0 {
            return Ok(());
        }
        let c = connection()?;
        c.memset(dst as u64, u32::from(value as u8), 1, size as u64, 0)
            .map_err(|e| hip_code(&e))
    })
}

#[export_name = "xph_hipDeviceSynchronize"]
pub extern "C" fn hip_device_synchronize() -> HipError {
    call(|| connection()?.synchronize().map_err(|e| hip_code(&e)))
}

#[export_name = "xph_hipMemGetInfo"]
pub extern "C" fn hip_mem_get_info(free: *mut usize, total: *mut usize) -> HipError {
    call(|| {
        let (c, d) = device()?;
        let (f, t) = c.mem_get_info(d).map_err(|e| hip_code(&e))?;
        put(free, f as usize)?;
        put(total, t as usize)
    })
}
