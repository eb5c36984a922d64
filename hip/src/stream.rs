//! Streams, events, and the copies and memsets that go in a stream, over the
//! pool's protocol. Handles are the server's: `hipStream_t` 0 is the null stream,
//! `hipStreamPerThread` (2) the thread's default stream, as on the wire.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::{Mutex, MutexGuard};

use xpupool_protocol::{Calls, CuError, Request};

use crate::memory::{call, connection, device, hip_code, put};
use crate::{HipError, HIP_ERROR_INVALID_VALUE};

/// `hipStream_t` and `hipEvent_t`: the server's handles.
type Handle = *mut c_void;

fn code(e: CuError) -> HipError {
    hip_code(&e)
}

/// The device of each stream this process created: a kernel launched into a
/// stream runs on the stream's device, whichever is current (HIP's rule).
static STREAM_DEVICES: Mutex<Option<HashMap<u64, u32>>> = Mutex::new(None);

fn stream_devices() -> MutexGuard<'static, Option<HashMap<u64, u32>>> {
    STREAM_DEVICES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The device `stream` was created on; `None` for the null and per-thread
/// streams (the current device's) and for a handle this process did not make.
pub(crate) fn stream_device(stream: u64) -> Option<u32> {
    stream_devices().as_ref()?.get(&stream).copied()
}

fn create_stream(out: *mut Handle, flags: c_uint, priority: c_int) -> HipError {
    call(|| {
        if out.is_null() || flags & !1 != 0 {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        let (c, d) = device()?;
        let stream = c.stream_create(d, flags, priority).map_err(code)?;
        stream_devices()
            .get_or_insert_with(HashMap::new)
            .insert(stream, d);
        put(out, stream as Handle)
    })
}

#[export_name = "xph_hipStreamCreate"]
pub extern "C" fn hip_stream_create(out: *mut Handle) -> HipError {
    create_stream(out, 0, 0)
}

#[export_name = "xph_hipStreamCreateWithFlags"]
pub extern "C" fn hip_stream_create_with_flags(out: *mut Handle, flags: c_uint) -> HipError {
    create_stream(out, flags, 0)
}

#[export_name = "xph_hipStreamCreateWithPriority"]
pub extern "C" fn hip_stream_create_with_priority(
    out: *mut Handle,
    flags: c_uint,
    priority: c_int,
) -> HipError {
    create_stream(out, flags, priority)
}

#[export_name = "xph_hipStreamDestroy"]
pub extern "C" fn hip_stream_destroy(stream: Handle) -> HipError {
    call(|| {
        // Forgotten before the server hears of it: once it is gone there, its
        // handle may be another thread's new stream's at once.
        let device = stream_devices()
            .as_mut()
            .and_then(|d| d.remove(&(stream as u64)));
        let result = connection()?.stream_destroy(stream as u64);
        if let (Err(e), Some(device)) = (&result, device) {
            if e.code != xpupool_protocol::code::INVALID_HANDLE {
                stream_devices()
                    .get_or_insert_with(HashMap::new)
                    .insert(stream as u64, device);
            }
        }
        result.map_err(code)
    })
}

#[export_name = "xph_hipStreamSynchronize"]
pub extern "C" fn hip_stream_synchronize(stream: Handle) -> HipError {
    call(|| {
        connection()?
            .stream_synchronize(stream as u64)
            .map_err(code)
    })
}

#[export_name = "xph_hipStreamQuery"]
pub extern "C" fn hip_stream_query(stream: Handle) -> HipError {
    call(|| connection()?.stream_query(stream as u64).map_err(code))
}

#[export_name = "xph_hipStreamWaitEvent"]
pub extern "C" fn hip_stream_wait_event(stream: Handle, event: Handle, flags: c_uint) -> HipError {
    call(|| {
        let request = Request::StreamWaitEvent {
            stream: stream as u64,
            event: event as u64,
            flags,
        };
        connection()?.post(request).map_err(code)
    })
}

fn create_event(out: *mut Handle, flags: c_uint) -> HipError {
    call(|| {
        if out.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        let (c, d) = device()?;
        let event = c.event_create(d, flags).map_err(code)?;
        put(out, event as Handle)
    })
}

#[export_name = "xph_hipEventCreate"]
pub extern "C" fn hip_event_create(out: *mut Handle) -> HipError {
    create_event(out, 0)
}

#[export_name = "xph_hipEventCreateWithFlags"]
pub extern "C" fn hip_event_create_with_flags(out: *mut Handle, flags: c_uint) -> HipError {
    create_event(out, flags)
}

#[export_name = "xph_hipEventRecord"]
pub extern "C" fn hip_event_record(event: Handle, stream: Handle) -> HipError {
    call(|| {
        let request = Request::EventRecord {
            event: event as u64,
            stream: stream as u64,
        };
        connection()?.post(request).map_err(code)
    })
}

#[export_name = "xph_hipEventSynchronize"]
pub extern "C" fn hip_event_synchronize(event: Handle) -> HipError {
    call(|| connection()?.event_synchronize(event as u64).map_err(code))
}

#[export_name = "xph_hipEventQuery"]
pub extern "C" fn hip_event_query(event: Handle) -> HipError {
    call(|| connection()?.event_query(event as u64).map_err(code))
}

#[export_name = "xph_hipEventElapsedTime"]
pub extern "C" fn hip_event_elapsed_time(ms: *mut f32, start: Handle, end: Handle) -> HipError {
    call(|| {
        if ms.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        let elapsed = connection()?
            .event_elapsed_time(start as u64, end as u64)
            .map_err(code)?;
        put(ms, elapsed)
    })
}

#[export_name = "xph_hipEventDestroy"]
pub extern "C" fn hip_event_destroy(event: Handle) -> HipError {
    call(|| connection()?.event_destroy(event as u64).map_err(code))
}

#[export_name = "xph_hipMemcpyAsync"]
pub extern "C" fn hip_memcpy_async(
    dst: *mut c_void,
    src: *const c_void,
    size: usize,
    kind: c_int,
    stream: Handle,
) -> HipError {
    crate::memory::copy(dst, src, size, kind, stream as u64, false)
}

#[export_name = "xph_hipMemcpyWithStream"]
pub extern "C" fn hip_memcpy_with_stream(
    dst: *mut c_void,
    src: *const c_void,
    size: usize,
    kind: c_int,
    stream: Handle,
) -> HipError {
    crate::memory::copy(dst, src, size, kind, stream as u64, true)
}

#[export_name = "xph_hipMemsetAsync"]
pub extern "C" fn hip_memset_async(
    dst: *mut c_void,
    value: c_int,
    size: usize,
    stream: Handle,
) -> HipError {
    call(|| {
        if size == 0 {
            return Ok(());
        }
        let request = Request::Memset {
            dst: dst as u64,
            value: u32::from(value as u8),
            elem_size: 1,
            count: size as u64,
            stream: stream as u64,
        };
        connection()?.post(request).map_err(code)
    })
}
