//! The memory ledger: what a tenant holds on one device against its limit, shared
//! by all of its sessions and charged by the tenancy layer (`tenancy.rs`) before a
//! backend makes an allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use xpupool_protocol::{code, CuError};

/// The granularity allocations are charged at: an allocation takes whole units of
/// this on a device (the driver aligns every allocation to at least 256 bytes and
/// rounds its size up too), so a 1-byte allocation costs 512.
pub const ALLOCATION_GRANULARITY: u64 = 512;

/// What an allocation of `bytes` is charged: whole units of
/// [`ALLOCATION_GRANULARITY`]; `None` past the address space.
pub fn allocation_charge(bytes: u64) -> Option<u64> {
    bytes.checked_next_multiple_of(ALLOCATION_GRANULARITY)
}

/// No limit.
const UNLIMITED: u64 = u64::MAX;

/// Device memory one tenant holds on one device, against its limit.
#[derive(Debug)]
pub struct MemoryLedger {
    /// The limit; [`UNLIMITED`] for none. A reload may change it: what is held
    /// stays, and new allocations meet the new limit.
    limit: AtomicU64,
    used: AtomicU64,
    /// The integral of `used` over time, up to an instant; every change of
    /// `used` adds the stretch before it under this lock, so it is exact.
    held: Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    at: Instant,
    byte_seconds: f64,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new(None)
    }
}

impl MemoryLedger {
    /// A ledger with an optional limit in bytes.
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit: AtomicU64::new(limit.unwrap_or(UNLIMITED)),
            used: AtomicU64::new(0),
            held: Mutex::new(Held {
                at: Instant::now(),
                byte_seconds: 0.0,
            }),
        }
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        Some(self.limit.load(Ordering::Acquire)).filter(|&l| l != UNLIMITED)
    }

    /// Sets the limit for allocations from now on.
    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit
            .store(limit.unwrap_or(UNLIMITED), Ordering::Release);
    }

    /// Bytes the tenant holds now, across its sessions.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Bytes the tenant may still allocate (`u64::MAX` without a limit).
    pub fn remaining(&self) -> u64 {
        self.limit()
            .map_or(u64::MAX, |l| l.saturating_sub(self.used()))
    }

    /// Bytes held over time since the ledger was made, in byte-seconds (what
    /// metering bills as memory held).
    pub fn byte_seconds(&self) -> f64 {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.byte_seconds + self.used() as f64 * held.at.elapsed().as_secs_f64()
    }

    /// Adds the stretch since the last change at the current use; the caller
    /// changes `used` while it holds the returned guard.
    fn integrate(&self) -> std::sync::MutexGuard<'_, Held> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        held.byte_seconds += self.used() as f64 * (now - held.at).as_secs_f64();
        held.at = now;
        held
    }

    /// Charges `bytes`, or fails with `CUDA_ERROR_OUT_OF_MEMORY` past the limit.
    pub fn charge(&self, bytes: u64) -> Result<(), CuError> {
        let _held = self.integrate();
        let mut used = self.used();
        loop {
            let after = used.saturating_add(bytes);
            if let Some(limit) = self.limit().filter(|&l| after > l) {
                return Err(CuError::new(
                    code::OUT_OF_MEMORY,
                    format!(
                        "{bytes} bytes requested, {used} of the tenant's limit of {limit} in use"
                    ),
                ));
            }
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    /// Gives back `bytes` charged earlier.
    pub fn refund(&self, bytes: u64) {
        let _held = self.integrate();
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_the_limit_and_refunds_free_room() {
        let ledger = MemoryLedger::new(Some(100));
        ledger.charge(60).unwrap();
        assert_eq!(ledger.charge(41).unwrap_err().code, code::OUT_OF_MEMORY);
        ledger.charge(40).unwrap();
        assert_eq!(ledger.remaining(), 0);
        ledger.refund(60);
        assert_eq!(ledger.used(), 40);
        // Memory held over time: 40 bytes for a known stretch.
        let before = ledger.byte_seconds();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let grown = ledger.byte_seconds() - before;
        assert!((40.0 * 0.05..40.0 * 1.0).contains(&grown), "{grown}");
        let unlimited = MemoryLedger::new(None);
        unlimited.charge(u64::MAX / 2).unwrap();
        assert_eq!(unlimited.remaining(), u64::MAX);
    }
}
