//! A session's device heap (device `malloc` and `free`): regions of the session's
//! own device memory, one made when a module whose kernels use the heap is loaded
//! (charged as part of that module's footprint, and freed with it), from which
//! kernels allocate while they run. First fit, 16-byte aligned; a region's free
//! space is coalesced on every free.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Bytes of heap a module's region holds: CUDA's default `cudaLimitMallocHeapSize`.
pub(crate) const REGION_BYTES: u64 = 8 << 20;

const ALIGN: u64 = 16;

struct Region {
    device: u32,
    base: u64,
    /// Free spans: start → length.
    free: BTreeMap<u64, u64>,
    /// Allocations: start → length.
    used: BTreeMap<u64, u64>,
}

/// The heap of one session.
#[derive(Default)]
pub(crate) struct Heap {
    regions: Mutex<Vec<Region>>,
}

impl Heap {
    fn regions(&self) -> std::sync::MutexGuard<'_, Vec<Region>> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the region `[base, base+len)` on `device`.
    pub(crate) fn add(&self, device: u32, base: u64, len: u64) {
        self.regions().push(Region {
            device,
            base,
            free: BTreeMap::from([(base, len)]),
            used: BTreeMap::new(),
        });
    }

    /// Forgets the region at `base` (its module is unloaded), and what was in it.
    pub(crate) fn remove(&self, base: u64) {
        self.regions().retain(|r| r.base != base);
    }

    /// `size` bytes on `device`, or 0 when no region has room.
    pub(crate) fn alloc(&self, device: u32, size: u64) -> u64 {
        let Some(size) = size.max(1).checked_next_multiple_of(ALIGN) else {
            return 0;
        };
        for region in self.regions().iter_mut().filter(|r| r.device == device) {
            let found = region
                .free
                .iter()
                .find(|&(_, &len)| len >= size)
                .map(|(&start, &len)| (start, len));
            if let Some((start, len)) = found {
                region.free.remove(&start);
                if len > size {
                    region.free.insert(start + size, len - size);
                }
                region.used.insert(start, size);
                return start;
            }
        }
        0
    }

    /// Frees what [`Heap::alloc`] gave at `address`; `false` if it gave nothing
    /// there.
    pub(crate) fn free(&self, address: u64) -> bool {
        let mut regions = self.regions();
        let Some(region) = regions.iter_mut().find(|r| r.used.contains_key(&address)) else {
            return false;
        };
        let Some(mut len) = region.used.remove(&address) else {
            return false;
        };
        let mut start = address;
        // Coalesce with the free span after, then the one before.
        if let Some(next) = region.free.remove(&(start + len)) {
            len += next;
        }
        if let Some((&before, &before_len)) = region.free.range(..start).next_back() {
            if before + before_len == start {
                region.free.remove(&before);
                start = before;
                len += before_len;
            }
        }
        region.free.insert(start, len);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_fit_frees_and_coalesces() {
        let heap = Heap::default();
        heap.add(0, 0x1000, 256);
        let a = heap.alloc(0, 100);
        let b = heap.alloc(0, 16);
        assert_eq!((a, b), (0x1000, 0x1070));
        assert_eq!(heap.alloc(1, 16), 0, "no region on device 1");
        assert_eq!(heap.alloc(0, 200), 0, "no room left for 200");
        assert!(heap.free(a));
        assert!(!heap.free(a), "freed twice");
        assert!(!heap.free(0x1004), "not an allocation's start");
        assert!(heap.free(b));
        // All free again and in one piece.
        assert_eq!(heap.alloc(0, 256), 0x1000);
        heap.remove(0x1000);
        assert_eq!(heap.alloc(0, 16), 0);
    }
}
