//! Address windows, raw device-memory access and atomic read-modify-write.

// `usize::is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.85.
#![allow(clippy::manual_is_multiple_of)]

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::ir::{AtomOp, Ty};
use crate::ops::{mask, sext};

/// Generic addresses `[SHARED_WINDOW, SHARED_WINDOW + WINDOW_SIZE)` are the
/// block's shared memory (offset = address - window).
pub const SHARED_WINDOW: u64 = 0xFE00_0000_0000_0000;
/// Generic window of the current thread's local memory.
pub const LOCAL_WINDOW: u64 = 0xFD00_0000_0000_0000;
/// Generic window of the kernel parameter buffer (`cvta.param`).
pub const PARAM_WINDOW: u64 = 0xFC00_0000_0000_0000;
/// Size of each window.
pub const WINDOW_SIZE: u64 = 1 << 32;

/// Which window a generic address falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Win {
    Shared(u64),
    Local(u64),
    Param(u64),
    Device,
}

#[inline]
pub(crate) fn window(addr: u64) -> Win {
    let off = addr & (WINDOW_SIZE - 1);
    match addr & !(WINDOW_SIZE - 1) {
        SHARED_WINDOW => Win::Shared(off),
        LOCAL_WINDOW => Win::Local(off),
        PARAM_WINDOW => Win::Param(off),
        _ => Win::Device,
    }
}

/// Reads `size` (1, 2, 4 or 8) bytes at `p`, little endian.
///
/// # Safety
/// `p..p+size` must be valid for reads (guaranteed by `Memory::translate`).
#[inline]
pub(crate) unsafe fn read_raw(p: *const u8, size: usize) -> u64 {
    // Naturally aligned accesses use relaxed atomics so that concurrent
    // atomics from other blocks' OS threads are not data races.
    let aligned = (p as usize) % size == 0;
    // SAFETY: caller guarantees validity; alignment checked for the atomic forms.
    unsafe {
        match (size, aligned) {
            (1, _) => AtomicU8::from_ptr(p as *mut u8).load(Ordering::Relaxed) as u64,
            (2, true) => AtomicU16::from_ptr(p as *mut u16).load(Ordering::Relaxed) as u64,
            (4, true) => AtomicU32::from_ptr(p as *mut u32).load(Ordering::Relaxed) as u64,
            (8, true) => AtomicU64::from_ptr(p as *mut u64).load(Ordering::Relaxed),
            (2, false) => (p as *const u16).read_unaligned() as u64,
            (4, false) => (p as *const u32).read_unaligned() as u64,
            _ => (p as *const u64).read_unaligned(),
        }
    }
}

/// Writes the low `size` bytes of `v` at `p`.
///
/// # Safety
/// `p..p+size` must be valid for writes (guaranteed by `Memory::translate`).
#[inline]
pub(crate) unsafe fn write_raw(p: *mut u8, size: usize, v: u64) {
    let aligned = (p as usize) % size == 0;
    // SAFETY: caller guarantees validity; alignment checked for the atomic forms.
    unsafe {
        match (size, aligned) {
            (1, _) => AtomicU8::from_ptr(p).store(v as u8, Ordering::Relaxed),
            (2, true) => AtomicU16::from_ptr(p as *mut u16).store(v as u16, Ordering::Relaxed),
            (4, true) => AtomicU32::from_ptr(p as *mut u32).store(v as u32, Ordering::Relaxed),
            (8, true) => AtomicU64::from_ptr(p as *mut u64).store(v, Ordering::Relaxed),
            (2, false) => (p as *mut u16).write_unaligned(v as u16),
            (4, false) => (p as *mut u32).write_unaligned(v as u32),
            _ => (p as *mut u64).write_unaligned(v),
        }
    }
}

/// Reads `size` bytes from a byte buffer owned by the interpreter.
#[inline]
pub(crate) fn read_buf(buf: &[u8], off: u64, size: usize) -> Option<u64> {
    let off = usize::try_from(off).ok()?;
    let s = buf.get(off..off.checked_add(size)?)?;
    let mut b = [0u8; 8];
    b[..size].copy_from_slice(s);
    Some(u64::from_le_bytes(b))
}

#[inline]
pub(crate) fn write_buf(buf: &mut [u8], off: u64, size: usize, v: u64) -> Option<()> {
    let off = usize::try_from(off).ok()?;
    let s = buf.get_mut(off..off.checked_add(size)?)?;
    s.copy_from_slice(&v.to_le_bytes()[..size]);
    Some(())
}

/// Loaded value of type `t` as register bits (signed types sign-extend).
#[inline]
pub(crate) fn extend(t: Ty, v: u64) -> u64 {
    if t.is_signed() {
        sext(v, t.bits()) as u64
    } else {
        v
    }
}

/// New memory value of an atomic operation on `old`.
pub(crate) fn rmw(op: AtomOp, t: Ty, old: u64, b: u64, c: u64) -> u64 {
    let bits = t.bits();
    let m = mask(bits);
    let (o, b) = (old & m, b & m);
    let r = match op {
        AtomOp::Add => match t {
            Ty::F32 => (f32::from_bits(o as u32) + f32::from_bits(b as u32)).to_bits() as u64,
            Ty::F64 => (f64::from_bits(o) + f64::from_bits(b)).to_bits(),
            _ => o.wrapping_add(b),
        },
        AtomOp::Min | AtomOp::Max => {
            let less = match t {
                Ty::F32 => f32::from_bits(b as u32) < f32::from_bits(o as u32),
                Ty::F64 => f64::from_bits(b) < f64::from_bits(o),
                _ if t.is_signed() => sext(b, bits) < sext(o, bits),
                _ => b < o,
            };
            if less == (op == AtomOp::Min) && b != o {
                b
            } else {
                o
            }
        }
        AtomOp::Exch => b,
        AtomOp::Cas => {
            if o == b {
                c & m
            } else {
                o
            }
        }
        AtomOp::And => o & b,
        AtomOp::Or => o | b,
        AtomOp::Xor => o ^ b,
        AtomOp::Inc => {
            if o >= b {
                0
            } else {
                o + 1
            }
        }
        AtomOp::Dec => {
            if o == 0 || o > b {
                b
            } else {
                o - 1
            }
        }
    };
    r & m
}

/// Atomic read-modify-write on device memory; returns the old value, or
/// `None` if `p` is not aligned to the operand size.
///
/// # Safety
/// `p..p+t.bytes()` must be valid for reads and writes; for 16-bit operands
/// the whole aligned 32-bit word containing `p` must be.
pub(crate) unsafe fn atomic_device(p: *mut u8, op: AtomOp, t: Ty, b: u64, c: u64) -> Option<u64> {
    let size = t.bytes();
    if (p as usize) % size != 0 {
        return None;
    }
    // SAFETY: valid per caller, alignment checked above.
    unsafe {
        match size {
            4 => {
                let a = AtomicU32::from_ptr(p as *mut u32);
                if op == AtomOp::Exch {
                    return Some(a.swap(b as u32, Ordering::AcqRel) as u64);
                }
                let r = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                    Some(rmw(op, t, old as u64, b, c) as u32)
                });
                Some(r.unwrap_or_else(|v| v) as u64)
            }
            8 => {
                let a = AtomicU64::from_ptr(p as *mut u64);
                if op == AtomOp::Exch {
                    return Some(a.swap(b, Ordering::AcqRel));
                }
                let r = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                    Some(rmw(op, t, old, b, c))
                });
                Some(r.unwrap_or_else(|v| v))
            }
            _ => {
                // 16-bit atomics (atom.cas.b16): CAS on the containing aligned word.
                let misalign = (p as usize) & 3;
                let shift = misalign * 8;
                let a = AtomicU32::from_ptr(p.wrapping_sub(misalign) as *mut u32);
                let m = mask(t.bits()) as u32;
                let r = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    let old = ((w >> shift) & m) as u64;
                    let new = rmw(op, t, old, b, c) as u32;
                    Some((w & !(m << shift)) | (new << shift))
                });
                let w = r.unwrap_or_else(|v| v);
                Some(((w >> shift) & m) as u64)
            }
        }
    }
}
