//! The ACL runtime (`aclrt*`) over the pool's protocol: the same operations the
//! CUDA and HIP stand-ins send. Streams and events are the server's handles
//! (`aclrtStream` NULL is the default stream, 0 on the wire as well); device
//! pointers are the server's addresses; contexts are `device + 1`.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use xpupool_client::copy::{transfer, Direction};
use xpupool_client::ranges::{self, DeviceRanges};
use xpupool_client::standin::Standin;
use xpupool_client::Connection;
use xpupool_protocol::{Calls, DeviceInfo, Request};

use crate::*;

/// What `aclrtGetSocName` answers: a 910B's, the device torch_npu's kernels and
/// defaults are chosen for.
pub const SOC_NAME: &str = "Ascend910B3";
/// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`: what the acl backend reports its
/// AI cores as.
const MULTIPROCESSOR_COUNT: u32 = 16;

/// The connection to the pool server and the device ranges held on it.
static STANDIN: Standin = Standin::new();
/// `aclInit` was called (and `aclFinalize` not since).
static INITIALISED: AtomicBool = AtomicBool::new(false);

pub(crate) fn connection() -> Result<&'static Connection, Failure> {
    STANDIN
        .connection(at_exit)
        .ok_or_else(|| Failure::new(ACL_ERROR_RT_NO_DEVICE, "no pool server could be reached"))
}

extern "C" fn at_exit() {
    if let Some(c) = STANDIN.begin_exit() {
        let _ = guard(|| c.close());
    }
}

/// Whether the process is exiting: clean-up then talks to no server.
fn exiting() -> bool {
    STANDIN.exiting()
}

/// The device ranges this process holds (which pointers are the device's).
pub(crate) fn device_ranges() -> Result<&'static DeviceRanges, Failure> {
    Ok(STANDIN.ranges(connection()?))
}

thread_local! {
    /// The thread's device (`aclrtSetDevice`, `aclrtSetCurrentContext`), if any.
    static CURRENT: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The thread's device, if one is set.
pub(crate) fn current_device() -> Option<u32> {
    CURRENT.get()
}

/// The thread's device, as the server numbers it.
pub(crate) fn device() -> Result<(&'static Connection, u32), Failure> {
    let c = connection()?;
    let d = CURRENT.get().ok_or_else(|| {
        Failure::new(
            ACL_ERROR_RT_CONTEXT_NULL,
            "no device is set on this thread (aclrtSetDevice)",
        )
    })?;
    Ok((c, d))
}

pub(crate) fn device_info(
    device: i64,
) -> Result<(&'static Connection, u32, &'static DeviceInfo), Failure> {
    let c = connection()?;
    let d = u32::try_from(device)
        .ok()
        .filter(|&d| (d as usize) < c.welcome.devices.len())
        .ok_or_else(|| {
            Failure::new(
                ACL_ERROR_RT_INVALID_DEVICEID,
                format!("there is no device {device}"),
            )
        })?;
    Ok((c, d, &c.welcome.devices[d as usize]))
}

#[no_mangle]
pub extern "C" fn aclInit(_config: *const c_char) -> AclError {
    call(|| {
        connection()?;
        if INITIALISED.swap(true, Ordering::AcqRel) {
            return Err(ACL_ERROR_REPEAT_INITIALIZE.into());
        }
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclFinalize() -> AclError {
    call(|| {
        if !INITIALISED.swap(false, Ordering::AcqRel) {
            return Err(ACL_ERROR_UNINITIALIZE.into());
        }
        match STANDIN.opened() {
            Some(c) => Ok(c.synchronize()?),
            None => Ok(()),
        }
    })
}

#[no_mangle]
pub extern "C" fn aclrtGetDeviceCount(count: *mut u32) -> AclError {
    call(|| match connection() {
        Ok(c) => put(count, c.welcome.devices.len() as u32),
        Err(e) => {
            put(count, 0)?;
            Err(e)
        }
    })
}

#[no_mangle]
pub extern "C" fn aclrtSetDevice(device: i32) -> AclError {
    call(|| {
        let (_, d, _) = device_info(device.into())?;
        CURRENT.set(Some(d));
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclrtResetDevice(device: i32) -> AclError {
    call(|| {
        let (c, d, _) = device_info(device.into())?;
        if !exiting() {
            c.synchronize()?;
        }
        if CURRENT.get() == Some(d) {
            CURRENT.set(None);
        }
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclrtResetDeviceForce(device: i32) -> AclError {
    aclrtResetDevice(device)
}

#[no_mangle]
pub extern "C" fn aclrtGetDevice(out: *mut i32) -> AclError {
    call(|| {
        let (_, d) = device()?;
        put(out, d as i32)
    })
}

/// The server's first device, where it is a real Ascend device (the acl
/// backend's): the mock's stand-in device is described as a 910B3 instead.
fn ascend_device() -> Option<&'static DeviceInfo> {
    let c = connection().ok()?;
    c.welcome
        .devices
        .first()
        .filter(|d| d.name.starts_with("Ascend"))
}

/// The SoC's name: the acl backend's device's, else a 910B3's (also while no
/// server is reached; the name is kept once one is).
#[no_mangle]
pub extern "C" fn aclrtGetSocName() -> *const c_char {
    static NAME: std::sync::OnceLock<CString> = std::sync::OnceLock::new();
    let found = guard(|| {
        if connection().is_err() {
            return None;
        }
        let name = ascend_device().map_or(SOC_NAME, |d| d.name.as_str());
        Some(
            NAME.get_or_init(|| CString::new(name).unwrap_or_default())
                .as_ptr(),
        )
    });
    found.flatten().unwrap_or(c"Ascend910B3".as_ptr())
}

#[no_mangle]
pub extern "C" fn aclrtGetRunMode(out: *mut c_int) -> AclError {
    // ACL_HOST: the program runs on a host, the device beside it.
    call(|| put(out, 1))
}

/// `aclrtDevAttr` values answered, and what.
pub(crate) fn device_attribute(info: &DeviceInfo, device: u32, attr: i32) -> Option<i64> {
    Some(match attr {
        // AICPU_CORE_NUM, AICORE_CORE_NUM, CUBE_CORE_NUM, VECTOR_CORE_NUM: a 910B3's,
        // or the AI cores the acl backend's device reports.
        1 => 6,
        101 | 102 => info
            .attributes
            .iter()
            .find(|&&(a, _)| a == MULTIPROCESSOR_COUNT && info.name.starts_with("Ascend"))
            .map_or(20, |&(_, v)| i64::from(v)),
        201 => 40,
        // TOTAL_GLOBAL_MEM_SIZE: the tenant's memory.
        301 => info.total_memory as i64,
        // L2_CACHE_SIZE.
        302 => 192 << 20,
        // PHY_CHIP_ID.
        402 => i64::from(device),
        // IS_VIRTUAL: a pooled device is a share of one.
        501 => 1,
        _ => return None,
    })
}

#[no_mangle]
pub extern "C" fn aclrtGetDeviceInfo(device: u32, attr: i32, value: *mut i64) -> AclError {
    call(|| {
        let (_, d, info) = device_info(device.into())?;
        let v = device_attribute(info, d, attr).ok_or_else(|| {
            Failure::new(
                ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
                format!("device attribute {attr}"),
            )
        })?;
        put(value, v)
    })
}

#[no_mangle]
pub extern "C" fn aclGetDeviceCapability(device: u32, info: c_int, value: *mut i64) -> AclError {
    call(|| {
        let (_, d, dev) = device_info(device.into())?;
        // aclDeviceInfo: AI_CORE_NUM 0, VECTOR_CORE_NUM 1, L2_SIZE 2.
        let attr = match info {
            0 => 101,
            1 => 201,
            2 => 302,
            _ => {
                return Err(Failure::new(
                    ACL_ERROR_INVALID_PARAM,
                    format!("aclDeviceInfo {info}"),
                ))
            }
        };
        put(value, device_attribute(dev, d, attr).unwrap_or_default())
    })
}

#[no_mangle]
pub extern "C" fn aclGetCannAttribute(attr: c_int, value: *mut i32) -> AclError {
    // ACL_CANN_ATTR_INF_NAN 0 and BF16 1 are the 910B's; JIT_COMPILE 2 is not
    // (no operator compiler behind the stand-in).
    call(|| put(value, i32::from(matches!(attr, 0 | 1))))
}

#[no_mangle]
pub extern "C" fn aclrtDeviceCanAccessPeer(can: *mut i32, device: i32, peer: i32) -> AclError {
    call(|| {
        device_info(device.into())?;
        device_info(peer.into())?;
        put(can, i32::from(device != peer))
    })
}

#[no_mangle]
pub extern "C" fn aclrtDeviceEnablePeerAccess(peer: i32, _flags: u32) -> AclError {
    call(|| device_info(peer.into()).map(|_| ()))
}

#[no_mangle]
pub extern "C" fn aclrtCreateContext(out: *mut *mut c_void, device: i32) -> AclError {
    call(|| {
        let (_, d, _) = device_info(device.into())?;
        CURRENT.set(Some(d));
        put(out, (d as usize + 1) as *mut c_void)
    })
}

#[no_mangle]
pub extern "C" fn aclrtDestroyContext(context: *mut c_void) -> AclError {
    call(|| device_info((context as i64).wrapping_sub(1)).map(|_| ()))
}

#[no_mangle]
pub extern "C" fn aclrtSetCurrentContext(context: *mut c_void) -> AclError {
    call(|| {
        let (_, d, _) = device_info((context as i64).wrapping_sub(1))
            .map_err(|_| Failure::new(ACL_ERROR_RT_CONTEXT_NULL, "not a context"))?;
        CURRENT.set(Some(d));
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclrtGetCurrentContext(out: *mut *mut c_void) -> AclError {
    call(|| {
        let (_, d) = device()?;
        put(out, (d as usize + 1) as *mut c_void)
    })
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeDevice() -> AclError {
    call(|| Ok(device()?.0.synchronize()?))
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeDeviceWithTimeout(_timeout_ms: i32) -> AclError {
    aclrtSynchronizeDevice()
}

#[no_mangle]
pub extern "C" fn aclrtGetMemInfo(_attr: c_int, free: *mut usize, total: *mut usize) -> AclError {
    call(|| {
        let (c, d) = device()?;
        let (f, t) = c.mem_get_info(d)?;
        put(free, f as usize)?;
        put(total, t as usize)
    })
}

// ---- memory ----

fn malloc(out: *mut *mut c_void, size: usize) -> AclError {
    call(|| {
        if out.is_null() || size == 0 {
            return Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                "aclrtMalloc of 0 bytes or into NULL",
            ));
        }
        let (c, d) = device()?;
        let held = device_ranges()?;
        let address = ranges::place(
            |a| held.add(a, size as u64, true),
            || c.mem_alloc(d, size as u64).map_err(Failure::from),
            |a| {
                let _ = c.post(Request::MemFree { ptr: a });
            },
            Failure::new(ACL_ERROR_RT_MEMORY_ALLOCATION, "no device addresses left"),
        )?;
        put(out, address as *mut c_void)
    })
}

#[no_mangle]
pub extern "C" fn aclrtMalloc(out: *mut *mut c_void, size: usize, _policy: c_int) -> AclError {
    malloc(out, size)
}

#[no_mangle]
pub extern "C" fn aclrtMallocAlign32(
    out: *mut *mut c_void,
    size: usize,
    _policy: c_int,
) -> AclError {
    malloc(out, size)
}

#[no_mangle]
pub extern "C" fn aclrtMallocWithCfg(
    out: *mut *mut c_void,
    size: usize,
    _policy: c_int,
    _config: *mut c_void,
) -> AclError {
    malloc(out, size)
}

#[no_mangle]
pub extern "C" fn aclrtFree(ptr: *mut c_void) -> AclError {
    call(|| {
        if ptr.is_null() {
            return Err(Failure::new(ACL_ERROR_INVALID_PARAM, "aclrtFree(NULL)"));
        }
        if exiting() {
            return Ok(());
        }
        let c = connection()?;
        let held = device_ranges()?;
        let size = held.remove_freeable(ptr as u64).ok_or_else(|| {
            Failure::new(
                ACL_ERROR_INVALID_PARAM,
                format!("{ptr:p} is not an allocation's start"),
            )
        })?;
        if let Err(e) = c.synchronize().and_then(|()| c.mem_free(ptr as u64)) {
            held.add_given(ptr as u64, size, true);
            return Err(e.into());
        }
        Ok(())
    })
}

/// Pinned host memory is the process's own: the copies that read or fill it are
/// the protocol's, whatever memory they touch.
#[no_mangle]
pub extern "C" fn aclrtMallocHost(out: *mut *mut c_void, size: usize) -> AclError {
    call(|| {
        if out.is_null() || size == 0 {
            return Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                "aclrtMallocHost of 0 bytes or into NULL",
            ));
        }
        let mut p = std::ptr::null_mut();
        // SAFETY: posix_memalign writes a pointer or fails.
        if unsafe { libc::posix_memalign(&mut p, 64, size) } != 0 {
            return Err(Failure::new(
                ACL_ERROR_RT_MEMORY_ALLOCATION,
                format!("{size} bytes of host memory"),
            ));
        }
        put(out, p)
    })
}

/// # Safety
/// `ptr` is NULL or was given by `aclrtMallocHost` and not freed since.
#[no_mangle]
pub unsafe extern "C" fn aclrtFreeHost(ptr: *mut c_void) -> AclError {
    // SAFETY: a pointer aclrtMallocHost gave (free(NULL) does nothing).
    unsafe { libc::free(ptr) };
    ACL_SUCCESS
}

/// A copy of `size` bytes at device address `at`: refused before any host byte is
/// touched if it runs past the allocation it starts in (or, in mapped virtual
/// memory, past the mappings that follow it without a gap).
pub(crate) fn within_allocation(at: u64, size: usize) -> Result<(), Failure> {
    let held = device_ranges()?;
    let end = at
        .checked_add(size as u64)
        .filter(|_| size <= isize::MAX as usize)
        .ok_or_else(|| Failure::new(ACL_ERROR_INVALID_PARAM, "a copy past the address space"))?;
    let Some((base, len)) = held.find(at) else {
        return Err(Failure::new(
            ACL_ERROR_INVALID_PARAM,
            format!("{at:#x} is not device memory"),
        ));
    };
    let mut reached = base + len;
    while reached < end {
        match held.find(reached) {
            Some((next, len)) if next == reached => reached = next + len,
            _ => {
                return Err(Failure::new(
                    ACL_ERROR_INVALID_PARAM,
                    "a copy runs past its allocation",
                ))
            }
        }
    }
    Ok(())
}

/// A copy in `stream` of `aclrtMemcpyKind` `kind` (host to host 0, host to
/// device 1, device to host 2, device to device 3, by the addresses 4); with
/// `wait`, done before it returns. Copies to the host always wait.
fn copy(
    dst: *mut c_void,
    dst_max: usize,
    src: *const c_void,
    size: usize,
    kind: c_int,
    stream: u64,
    wait: bool,
) -> AclError {
    call(|| {
        if size == 0 {
            return Ok(());
        }
        if dst.is_null() || src.is_null() || size > dst_max || size > isize::MAX as usize {
            return Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                format!("a copy of {size} bytes into {dst_max} ({dst:p} from {src:p})"),
            ));
        }
        let c = connection()?;
        let direction = Direction::of_kind(kind, device_ranges()?, dst as u64, src as u64)
            .ok_or_else(|| {
                Failure::new(ACL_ERROR_INVALID_PARAM, format!("aclrtMemcpyKind {kind}"))
            })?;
        if matches!(
            direction,
            Direction::DeviceToHost | Direction::DeviceToDevice
        ) {
            within_allocation(src as u64, size)?;
        }
        if matches!(
            direction,
            Direction::HostToDevice | Direction::DeviceToDevice
        ) {
            within_allocation(dst as u64, size)?;
        }
        // SAFETY: the API contract: `size` bytes on each host side (at most
        // isize::MAX, checked above).
        Ok(unsafe { transfer(c, direction, dst, src, size, stream, wait) }?)
    })
}

#[no_mangle]
pub extern "C" fn aclrtMemcpy(
    dst: *mut c_void,
    dst_max: usize,
    src: *const c_void,
    count: usize,
    kind: c_int,
) -> AclError {
    copy(dst, dst_max, src, count, kind, 0, true)
}

#[no_mangle]
pub extern "C" fn aclrtMemcpyAsync(
    dst: *mut c_void,
    dst_max: usize,
    src: *const c_void,
    count: usize,
    kind: c_int,
    stream: *mut c_void,
) -> AclError {
    copy(dst, dst_max, src, count, kind, stream as u64, false)
}

fn memset(
    dst: *mut c_void,
    max: usize,
    value: i32,
    count: usize,
    stream: u64,
    wait: bool,
) -> AclError {
    call(|| {
        if count > max {
            return Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                format!("a memset of {count} bytes into {max}"),
            ));
        }
        if count == 0 {
            return Ok(());
        }
        within_allocation(dst as u64, count)?;
        let c = connection()?;
        c.post(Request::Memset {
            dst: dst as u64,
            value: u32::from(value as u8),
            elem_size: 1,
            count: count as u64,
            stream,
        })?;
        if wait {
            c.stream_synchronize(stream)?;
        }
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclrtMemset(dst: *mut c_void, max: usize, value: i32, count: usize) -> AclError {
    memset(dst, max, value, count, 0, true)
}

#[no_mangle]
pub extern "C" fn aclrtMemsetAsync(
    dst: *mut c_void,
    max: usize,
    value: i32,
    count: usize,
    stream: *mut c_void,
) -> AclError {
    memset(dst, max, value, count, stream as u64, false)
}

// ---- streams ----

fn create_stream(out: *mut *mut c_void, priority: i32) -> AclError {
    call(|| {
        if out.is_null() {
            return Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                "a NULL stream out-pointer",
            ));
        }
        let (c, d) = device()?;
        // Non-blocking with respect to the default stream, as ACL's streams are.
        let stream = c.stream_create(d, 1, priority)?;
        put(out, stream as *mut c_void)
    })
}

#[no_mangle]
pub extern "C" fn aclrtCreateStream(out: *mut *mut c_void) -> AclError {
    create_stream(out, 0)
}

#[no_mangle]
pub extern "C" fn aclrtCreateStreamWithConfig(
    out: *mut *mut c_void,
    priority: u32,
    _flags: u32,
) -> AclError {
    // ACL's priority 0 is the highest, as CUDA's lower numbers are.
    create_stream(out, -(priority.min(7) as i32))
}

#[no_mangle]
pub extern "C" fn aclrtDestroyStream(stream: *mut c_void) -> AclError {
    call(|| {
        if exiting() {
            return Ok(());
        }
        Ok(connection()?.stream_destroy(stream as u64)?)
    })
}

#[no_mangle]
pub extern "C" fn aclrtDestroyStreamForce(stream: *mut c_void) -> AclError {
    aclrtDestroyStream(stream)
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeStream(stream: *mut c_void) -> AclError {
    call(|| Ok(connection()?.stream_synchronize(stream as u64)?))
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeStreamWithTimeout(
    stream: *mut c_void,
    _timeout_ms: i32,
) -> AclError {
    aclrtSynchronizeStream(stream)
}

#[no_mangle]
pub extern "C" fn aclrtStreamQuery(stream: *mut c_void, status: *mut c_int) -> AclError {
    call(|| {
        let done = match connection()?.stream_query(stream as u64) {
            Ok(()) => true,
            Err(e) if e.code == code::NOT_READY => false,
            Err(e) => return Err(e.into()),
        };
        put(status, if done { 0 } else { 1 })
    })
}

#[no_mangle]
pub extern "C" fn aclrtSetStreamFailureMode(_stream: *mut c_void, mode: u64) -> AclError {
    // STOP_ON_FAILURE (1), what torch_npu sets, is what the pool does anyway: a
    // failed operation's error is reported at the next synchronising call.
    call(|| match mode {
        0 | 1 => Ok(()),
        _ => Err(Failure::new(
            ACL_ERROR_INVALID_PARAM,
            format!("failure mode {mode}"),
        )),
    })
}

#[no_mangle]
pub extern "C" fn aclrtStreamWaitEvent(stream: *mut c_void, event: *mut c_void) -> AclError {
    call(|| {
        Ok(connection()?.post(Request::StreamWaitEvent {
            stream: stream as u64,
            event: event as u64,
            flags: 0,
        })?)
    })
}

// ---- events ----

fn create_event(out: *mut *mut c_void, flags: u32) -> AclError {
    call(|| {
        if out.is_null() {
            return Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                "a NULL event out-pointer",
            ));
        }
        let (c, d) = device()?;
        // ACL_EVENT_TIME_LINE (8) keeps timestamps; otherwise CU_EVENT_DISABLE_TIMING.
        let cu_flags = if flags & 0x8 != 0 { 0 } else { 2 };
        let event = c.event_create(d, cu_flags)?;
        put(out, event as *mut c_void)
    })
}

#[no_mangle]
pub extern "C" fn aclrtCreateEvent(out: *mut *mut c_void) -> AclError {
    create_event(out, 0x8)
}

#[no_mangle]
pub extern "C" fn aclrtCreateEventWithFlag(out: *mut *mut c_void, flags: u32) -> AclError {
    create_event(out, flags)
}

#[no_mangle]
pub extern "C" fn aclrtCreateEventExWithFlag(out: *mut *mut c_void, flags: u32) -> AclError {
    create_event(out, flags)
}

#[no_mangle]
pub extern "C" fn aclrtRecordEvent(event: *mut c_void, stream: *mut c_void) -> AclError {
    call(|| {
        Ok(connection()?.post(Request::EventRecord {
            event: event as u64,
            stream: stream as u64,
        })?)
    })
}

/// Recording again is what resets an ACL event; nothing to do before.
#[no_mangle]
pub extern "C" fn aclrtResetEvent(_event: *mut c_void, _stream: *mut c_void) -> AclError {
    ACL_SUCCESS
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeEvent(event: *mut c_void) -> AclError {
    call(|| Ok(connection()?.event_synchronize(event as u64)?))
}

#[no_mangle]
pub extern "C" fn aclrtQueryEventStatus(event: *mut c_void, status: *mut c_int) -> AclError {
    call(|| {
        let done = match connection()?.event_query(event as u64) {
            Ok(()) => true,
            Err(e) if e.code == code::NOT_READY => false,
            Err(e) => return Err(e.into()),
        };
        // ACL_EVENT_RECORDED_STATUS_COMPLETE 1, NOT_READY 0.
        put(status, c_int::from(done))
    })
}

#[no_mangle]
pub extern "C" fn aclrtEventElapsedTime(
    ms: *mut f32,
    start: *mut c_void,
    end: *mut c_void,
) -> AclError {
    call(|| {
        let elapsed = connection()?.event_elapsed_time(start as u64, end as u64)?;
        put(ms, elapsed)
    })
}

#[no_mangle]
pub extern "C" fn aclrtDestroyEvent(event: *mut c_void) -> AclError {
    call(|| {
        if exiting() {
            return Ok(());
        }
        Ok(connection()?.post(Request::EventDestroy {
            event: event as u64,
        })?)
    })
}

/// `aclrtSetDeviceSatMode`: saturation (0) or INF/NaN (1) on float overflow.
/// The stand-in device computes IEEE floats, INF/NaN mode; saturation is refused.
#[no_mangle]
pub extern "C" fn aclrtSetDeviceSatMode(mode: c_int) -> AclError {
    call(|| match mode {
        1 => Ok(()),
        _ => Err(Failure::new(
            ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
            "the device computes IEEE floats (INF/NaN mode); saturation mode is not offered",
        )),
    })
}

#[no_mangle]
pub extern "C" fn aclrtGetDeviceSatMode(mode: *mut c_int) -> AclError {
    call(|| put(mode, 1))
}

/// `aclrtDeviceGetUuid`: the pooled device's UUID, as the server gives it.
#[no_mangle]
pub extern "C" fn aclrtDeviceGetUuid(device: i32, uuid: *mut [u8; 16]) -> AclError {
    call(|| put(uuid, device_info(device.into())?.2.uuid))
}

/// `aclrtUtilizationInfo`.
#[repr(C)]
pub struct UtilizationInfo {
    pub cube: i32,
    pub vector: i32,
    pub aicpu: i32,
    pub memory: i32,
    pub extend: *mut c_void,
}

/// `aclrtGetDeviceUtilizationRate`: the share of the last second the pooled
/// device ran any tenant's work, for its cube and vector units alike (the
/// server measures the device whole); AI CPU 0; memory bandwidth -1, which
/// CANN answers where it cannot measure it.
#[no_mangle]
pub extern "C" fn aclrtGetDeviceUtilizationRate(
    device: i32,
    info: *mut UtilizationInfo,
) -> AclError {
    call(|| {
        let (c, d, _) = device_info(device.into())?;
        let usage = c.device_usage(d)?;
        let busy = usage.utilization_percent.min(100) as i32;
        put(
            info,
            UtilizationInfo {
                cube: busy,
                vector: busy,
                aicpu: 0,
                memory: -1,
                extend: std::ptr::null_mut(),
            },
        )
    })
}
