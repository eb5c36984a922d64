//! HCCL for one rank: what `torch.distributed`'s `hccl` backend needs when a job
//! runs as a single process (its collectives are then copies, or nothing, in the
//! stream). A communicator of more ranks is refused clearly: collectives across
//! pooled devices are not implemented.

use std::collections::HashSet;
use std::ffi::{c_char, c_void};
use std::sync::Mutex;

use xpupool_protocol::Request;

use crate::runtime::{connection, within_allocation};
use crate::{guard, say, Failure};

/// `HcclResult`.
pub type HcclResult = i32;
const HCCL_SUCCESS: HcclResult = 0;
const HCCL_E_PARA: HcclResult = 1;
const HCCL_E_PTR: HcclResult = 2;
const HCCL_E_INTERNAL: HcclResult = 4;
const HCCL_E_NOT_SUPPORT: HcclResult = 5;
const HCCL_E_RUNTIME: HcclResult = 15;
/// `HCCL_ROOT_INFO_BYTES`.
const ROOT_INFO_BYTES: usize = 4108;
/// What the root information of a one-rank communicator begins with.
const MARK: &[u8] = b"xpupool single-rank HCCL\0";
/// `COMM_NAME_MAX_LENGTH`.
const NAME_BYTES: usize = 128;
const NAME: &[u8] = b"xpupool-hccl-1\0";

/// The communicators made here (each a one-rank one).
static COMMS: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn result(body: impl FnOnce() -> Result<(), HcclResult>) -> HcclResult {
    match guard(body) {
        Some(Ok(())) => HCCL_SUCCESS,
        Some(Err(code)) => code,
        None => HCCL_E_INTERNAL,
    }
}

fn live(comm: *mut c_void) -> Result<(), HcclResult> {
    let comms = COMMS.lock().unwrap_or_else(|e| e.into_inner());
    match comms.as_ref() {
        Some(c) if c.contains(&(comm as usize)) => Ok(()),
        _ => Err(HCCL_E_PARA),
    }
}

/// Bytes of one element of `HcclDataType` `dtype`.
fn type_size(dtype: i32) -> Option<u64> {
    Some(match dtype {
        0 | 7 => 1,
        1 | 3 | 8 | 11 => 2,
        2 | 4 | 9 => 4,
        5 | 6 | 10 => 8,
        12 => 16,
        _ => return None,
    })
}

/// # Safety
/// `root` is NULL or an `HcclRootInfo` (4108 writable bytes).
#[no_mangle]
pub unsafe extern "C" fn HcclGetRootInfo(root: *mut u8) -> HcclResult {
    result(|| {
        if root.is_null() {
            return Err(HCCL_E_PTR);
        }
        let mut info = [0u8; ROOT_INFO_BYTES];
        info[..MARK.len()].copy_from_slice(MARK);
        // SAFETY: the API contract: an HcclRootInfo, 4108 bytes.
        unsafe { std::ptr::copy_nonoverlapping(info.as_ptr(), root, ROOT_INFO_BYTES) };
        Ok(())
    })
}

fn init(ranks: u32, root: *const u8, rank: u32, comm: *mut *mut c_void) -> HcclResult {
    result(|| {
        if root.is_null() || comm.is_null() {
            return Err(HCCL_E_PTR);
        }
        if ranks != 1 || rank != 0 {
            say(&format!(
                "HCCL across {ranks} ranks is not implemented by xpupool's CANN stand-in (one rank only)"
            ));
            return Err(HCCL_E_NOT_SUPPORT);
        }
        // SAFETY: the API contract: an HcclRootInfo, 4108 bytes.
        let info = unsafe { std::slice::from_raw_parts(root, MARK.len()) };
        if info != MARK {
            return Err(HCCL_E_PARA);
        }
        let handle = Box::into_raw(Box::new(0u8)).cast::<c_void>();
        let mut comms = COMMS.lock().unwrap_or_else(|e| e.into_inner());
        comms
            .get_or_insert_with(HashSet::new)
            .insert(handle as usize);
        // SAFETY: the caller's out-pointer, checked non-NULL.
        unsafe { comm.write(handle) };
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn HcclCommInitRootInfo(
    ranks: u32,
    root: *const u8,
    rank: u32,
    comm: *mut *mut c_void,
) -> HcclResult {
    init(ranks, root, rank, comm)
}

#[no_mangle]
pub extern "C" fn HcclCommInitRootInfoConfig(
    ranks: u32,
    root: *const u8,
    rank: u32,
    _config: *const c_void,
    comm: *mut *mut c_void,
) -> HcclResult {
    init(ranks, root, rank, comm)
}

#[no_mangle]
pub extern "C" fn HcclCommDestroy(comm: *mut c_void) -> HcclResult {
    result(|| {
        let mut comms = COMMS.lock().unwrap_or_else(|e| e.into_inner());
        if !comms.as_mut().is_some_and(|c| c.remove(&(comm as usize))) {
            return Err(HCCL_E_PARA);
        }
        // SAFETY: made by Box::into_raw in init(), removed from COMMS just now.
        drop(unsafe { Box::from_raw(comm.cast::<u8>()) });
        Ok(())
    })
}

fn put_u32(out: *mut u32, value: u32) -> Result<(), HcclResult> {
    if out.is_null() {
        return Err(HCCL_E_PTR);
    }
    // SAFETY: the caller's out-pointer, checked non-NULL.
    unsafe { out.write(value) };
    Ok(())
}

#[no_mangle]
pub extern "C" fn HcclGetRankSize(comm: *mut c_void, size: *mut u32) -> HcclResult {
    result(|| live(comm).and_then(|()| put_u32(size, 1)))
}

#[no_mangle]
pub extern "C" fn HcclGetRankId(comm: *mut c_void, rank: *mut u32) -> HcclResult {
    result(|| live(comm).and_then(|()| put_u32(rank, 0)))
}

#[no_mangle]
pub extern "C" fn HcclGetCommName(comm: *mut c_void, name: *mut c_char) -> HcclResult {
    result(|| {
        live(comm)?;
        if name.is_null() {
            return Err(HCCL_E_PTR);
        }
        // SAFETY: the API contract: COMM_NAME_MAX_LENGTH (128) bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                NAME.as_ptr(),
                name.cast::<u8>(),
                NAME.len().min(NAME_BYTES),
            )
        };
        Ok(())
    })
}

/// # Safety
/// `error` is NULL or a writable `HcclResult`.
#[no_mangle]
pub unsafe extern "C" fn HcclGetCommAsyncError(comm: *mut c_void, error: *mut i32) -> HcclResult {
    result(|| {
        live(comm)?;
        if error.is_null() {
            return Err(HCCL_E_PTR);
        }
        // SAFETY: the caller's out-pointer, checked non-NULL.
        unsafe { error.write(HCCL_SUCCESS) };
        Ok(())
    })
}

/// A one-rank collective's result: `count` elements of `dtype` from `send` to
/// `recv`, copied in the stream unless they are the same buffer.
fn copy(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dtype: i32,
    comm: *mut c_void,
    stream: *mut c_void,
) -> HcclResult {
    result(|| {
        live(comm)?;
        let bytes = type_size(dtype)
            .and_then(|s| s.checked_mul(count))
            .ok_or(HCCL_E_PARA)?;
        if bytes == 0 || send == recv {
            return Ok(());
        }
        let checked = |at: *mut c_void| {
            within_allocation(at as u64, bytes as usize).map_err(|_: Failure| HCCL_E_PARA)
        };
        checked(send)?;
        checked(recv)?;
        let c = connection().map_err(|_| HCCL_E_RUNTIME)?;
        c.post(Request::MemcpyDtoD {
            dst: recv as u64,
            src: send as u64,
            len: bytes,
            stream: stream as u64,
        })
        .map_err(|_| HCCL_E_RUNTIME)
    })
}

#[no_mangle]
pub extern "C" fn HcclAllReduce(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dtype: i32,
    _op: i32,
    comm: *mut c_void,
    stream: *mut c_void,
) -> HcclResult {
    copy(send, recv, count, dtype, comm, stream)
}

#[no_mangle]
pub extern "C" fn HcclAllGather(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dtype: i32,
    comm: *mut c_void,
    stream: *mut c_void,
) -> HcclResult {
    copy(send, recv, count, dtype, comm, stream)
}

#[no_mangle]
pub extern "C" fn HcclReduceScatter(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dtype: i32,
    _op: i32,
    comm: *mut c_void,
    stream: *mut c_void,
) -> HcclResult {
    copy(send, recv, count, dtype, comm, stream)
}

#[no_mangle]
pub extern "C" fn HcclBroadcast(
    _buf: *mut c_void,
    _count: u64,
    _dtype: i32,
    root: u32,
    comm: *mut c_void,
    _stream: *mut c_void,
) -> HcclResult {
    result(|| {
        live(comm)?;
        if root == 0 {
            Ok(())
        } else {
            Err(HCCL_E_PARA)
        }
    })
}

#[no_mangle]
pub extern "C" fn HcclBarrier(comm: *mut c_void, _stream: *mut c_void) -> HcclResult {
    result(|| live(comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_is_a_communicator_and_more_are_refused() {
        let mut root = vec![0u8; ROOT_INFO_BYTES];
        // SAFETY: 4108 writable bytes.
        assert_eq!(unsafe { HcclGetRootInfo(root.as_mut_ptr()) }, HCCL_SUCCESS);
        let mut comm = std::ptr::null_mut();
        assert_eq!(
            HcclCommInitRootInfo(2, root.as_ptr(), 0, &mut comm),
            HCCL_E_NOT_SUPPORT
        );
        assert_eq!(
            HcclCommInitRootInfo(1, root.as_ptr(), 0, &mut comm),
            HCCL_SUCCESS
        );
        let (mut size, mut rank) = (0, 7);
        assert_eq!(HcclGetRankSize(comm, &mut size), HCCL_SUCCESS);
        assert_eq!(HcclGetRankId(comm, &mut rank), HCCL_SUCCESS);
        assert_eq!((size, rank), (1, 0));
        // In place: nothing to copy, and no server needed.
        let buf = 0x1000 as *mut c_void;
        assert_eq!(
            HcclAllReduce(buf, buf, 4, 4, 0, comm, std::ptr::null_mut()),
            HCCL_SUCCESS
        );
        assert_eq!(
            HcclBroadcast(buf, 4, 4, 1, comm, std::ptr::null_mut()),
            HCCL_E_PARA
        );
        assert_eq!(
            HcclAllReduce(buf, buf, 4, 99, 0, comm, std::ptr::null_mut()),
            HCCL_E_PARA
        );
        assert_eq!(HcclCommDestroy(comm), HCCL_SUCCESS);
        assert_eq!(HcclCommDestroy(comm), HCCL_E_PARA, "destroyed once");
        assert_eq!(HcclBarrier(comm, std::ptr::null_mut()), HCCL_E_PARA);
    }
}
