//! Interprocess sharing of device memory and events (`cuIpcGetMemHandle`,
//! `cuIpcOpenMemHandle`, `cuIpcGetEventHandle`, …), as `torch.multiprocessing`
//! shares CUDA tensors: between processes of one tenant whose sessions are on
//! the same server. The server makes the handles and checks each one opened
//! (a handle of another tenant, or of memory freed since, is refused); an
//! opened allocation stays on the device, charged to the tenant once, until the
//! exporter has freed it and every process that opened it has closed it.

use std::ffi::c_uint;

use serde_bytes::ByteBuf;
use xpupool_cuda_types::*;
use xpupool_protocol::api::IPC_HANDLE_BYTES;
use xpupool_protocol::Calls;

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock};

/// A handle's bytes as the server sent them, into the driver's structure.
fn to_reserved(bytes: &[u8]) -> Res<[std::ffi::c_char; 64]> {
    let bytes: [u8; IPC_HANDLE_BYTES] = bytes.try_into().map_err(|_| CUDA_ERROR_UNKNOWN)?;
    Ok(bytes.map(|b| b as std::ffi::c_char))
}

fn from_reserved(reserved: &[std::ffi::c_char; 64]) -> ByteBuf {
    ByteBuf::from(reserved.iter().map(|&b| b as u8).collect::<Vec<u8>>())
}

fn open_mem(out: *mut CUdeviceptr, handle: CUipcMemHandle, flags: c_uint) -> Res {
    if out.is_null() || flags & !CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    let device = d.current_context()?.device;
    let (ptr, size) = d
        .conn
        .ipc_open_mem_handle(device as u32, from_reserved(&handle.reserved))
        .map_err(fail)?;
    // Copies and launches into it are checked as into an allocation; cuMemFree
    // does not take it (cuIpcCloseMemHandle does).
    d.device_ranges.add_given(ptr, size, false);
    d.device_ranges.set_device(ptr, device as u32);
    lock(opened()).insert(ptr, size);
    put(out, ptr)
}

/// Memory this process opened (`cuIpcOpenMemHandle`): base → size. Only these
/// are `cuIpcCloseMemHandle`'s to close.
fn opened() -> &'static std::sync::Mutex<std::collections::HashMap<u64, u64>> {
    static OPENED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u64, u64>>> =
        std::sync::OnceLock::new();
    OPENED.get_or_init(Default::default)
}

export! {
    fn cuIpcGetMemHandle(out: *mut CUipcMemHandle, ptr: CUdeviceptr) {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = driver()?.conn.ipc_get_mem_handle(ptr).map_err(fail)?;
        put(out, CUipcMemHandle { reserved: to_reserved(&bytes)? })
    }

    fn cuIpcOpenMemHandle(out: *mut CUdeviceptr, handle: CUipcMemHandle, flags: c_uint) { open_mem(out, handle, flags) }
    fn cuIpcOpenMemHandle_v2(out: *mut CUdeviceptr, handle: CUipcMemHandle, flags: c_uint) { open_mem(out, handle, flags) }

    fn cuIpcCloseMemHandle(ptr: CUdeviceptr) {
        let d = driver()?;
        // Forgotten here first (only an opened range: not an allocation), as
        // once the server has closed it the address may come back for another.
        let size = lock(opened()).remove(&ptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        d.device_ranges.remove(ptr);
        d.conn.ipc_close_mem_handle(ptr).map_err(|e| {
            // Still open on the server: recorded again.
            d.device_ranges.add_given(ptr, size, false);
            lock(opened()).insert(ptr, size);
            fail(e)
        })
    }

    fn cuIpcGetEventHandle(out: *mut CUipcEventHandle, event: CUevent) {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let d = driver()?;
        if !lock(&d.events).contains(&(event as u64)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let bytes = d.conn.ipc_get_event_handle(event as u64).map_err(fail)?;
        put(out, CUipcEventHandle { reserved: to_reserved(&bytes)? })
    }

    fn cuIpcOpenEventHandle(out: *mut CUevent, handle: CUipcEventHandle) {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let d = driver()?;
        let device = d.current_context()?.device;
        let event = d
            .conn
            .ipc_open_event_handle(device as u32, from_reserved(&handle.reserved))
            .map_err(fail)?;
        lock(&d.events).insert(event);
        put(out, event as CUevent)
    }
}
