//! Copies as the HIP and ACL stand-ins take them, whose copy kinds number alike
//! (host to host 0, host to device 1, device to host 2, device to device 3, and
//! 4: told by the addresses): the direction, and the transfer over the protocol.

use std::ffi::c_void;

use xpupool_protocol::{Calls, CuError, Request};

use crate::ranges::DeviceRanges;
use crate::Connection;

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HostToHost,
    HostToDevice,
    DeviceToHost,
    DeviceToDevice,
}

impl Direction {
    /// The direction of copy kind `kind` (`None`: no such kind); kind 4 by which
    /// sides are device memory this process holds.
    pub fn of_kind(kind: i32, held: &DeviceRanges, dst: u64, src: u64) -> Option<Direction> {
        Some(match kind {
            0 => Direction::HostToHost,
            1 => Direction::HostToDevice,
            2 => Direction::DeviceToHost,
            3 => Direction::DeviceToDevice,
            4 => match (held.find(src).is_some(), held.find(dst).is_some()) {
                (false, false) => Direction::HostToHost,
                (false, true) => Direction::HostToDevice,
                (true, false) => Direction::DeviceToHost,
                (true, true) => Direction::DeviceToDevice,
            },
            _ => return None,
        })
    }
}

/// Copies `size` bytes in `stream`: with `wait`, done (and its errors known)
/// before it returns; without, copies to the device are sent without waiting
/// (their bytes taken now), copies between device addresses are posted, and
/// copies to the host still wait (their bytes are delivered before it returns).
/// A host-to-host copy waits for the stream first.
///
/// # Safety
/// A host side is `size` readable (source) or writable (destination) bytes, and
/// `size` is at most `isize::MAX`.
pub unsafe fn transfer(
    c: &Connection,
    direction: Direction,
    dst: *mut c_void,
    src: *const c_void,
    size: usize,
    stream: u64,
    wait: bool,
) -> Result<(), CuError> {
    match direction {
        Direction::HostToHost => {
            c.stream_synchronize(stream)?;
            // SAFETY: the caller's contract.
            unsafe { std::ptr::copy(src.cast::<u8>(), dst.cast::<u8>(), size) };
            return Ok(());
        }
        Direction::HostToDevice => {
            // SAFETY: the caller's contract: `size` readable bytes at `src`.
            let bytes = unsafe { std::slice::from_raw_parts(src.cast::<u8>(), size) };
            c.copy_to_device(dst as u64, bytes, stream)?;
        }
        Direction::DeviceToHost => {
            // SAFETY: the caller's contract: `size` writable bytes at `dst`.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), size) };
            return c.copy_from_device(src as u64, out, stream);
        }
        Direction::DeviceToDevice => c.post(Request::MemcpyDtoD {
            dst: dst as u64,
            src: src as u64,
            len: size as u64,
            stream,
        })?,
    }
    if wait {
        c.stream_synchronize(stream)?;
    }
    Ok(())
}
