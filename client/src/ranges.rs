//! The device ranges a client process knows (allocations, arrays, mappings,
//! module variables, opened IPC memory), and keeping their addresses out of its
//! own memory: what lets every vendor's stand-in (CUDA's, HIP's) tell a device
//! pointer from a host one, as unified addressing promises.
//!
//! A server whose devices use a fixed address range (the mock) has it reserved
//! here once, at start. The cuda backend's driver places memory anywhere in its
//! process, where this process may have memory of its own: a host buffer at an
//! address that is also a device address would be taken for device memory. So
//! with such a server each device range is reserved here too (inaccessible
//! pages, whole pages around it, shared by ranges that share a page) as it
//! arrives, and given back when the last range on its pages goes. An address
//! the server chose that is already this process's memory is refused, and the
//! allocation asked again ([`place`]); where the address cannot be chosen (a
//! module variable, opened IPC memory) it is kept unreserved, with a warning.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Mutex;

use std::sync::MutexGuard;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The address is already this process's memory.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken;

#[derive(Default)]
struct Inner {
    /// Base → (size, whether `cuMemFree` takes it).
    ranges: BTreeMap<u64, (u64, bool)>,
    /// Base → the device a range is on, where it is not device 0.
    devices: std::collections::HashMap<u64, u32>,
    /// Address reservations (`cuMemAddressReserve`): start → size. Mappings lie inside.
    holds: BTreeMap<u64, u64>,
    /// What is reserved here, in disjoint runs of pages: start → end.
    reserved: BTreeMap<u64, u64>,
}

pub struct DeviceRanges {
    inner: Mutex<Inner>,
    /// Whether ranges are reserved one by one (the server has no fixed range).
    reserve: bool,
}

fn page() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// `[start, end)` widened to whole pages.
fn pages(start: u64, size: u64) -> (u64, u64) {
    let p = page();
    let end = start.saturating_add(size.max(1));
    (start / p * p, end.div_ceil(p).saturating_mul(p))
}

/// The parts of `[start, end)` that no interval of `covered` (sorted, any
/// overlap) covers.
fn gaps(start: u64, end: u64, covered: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    let mut covered: Vec<(u64, u64)> = covered.into_iter().collect();
    covered.sort_unstable();
    for (s, e) in covered {
        if e <= at {
            continue;
        }
        if s >= end {
            break;
        }
        if s > at {
            out.push((at, s.min(end)));
        }
        at = at.max(e);
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end));
    }
    out
}

pub fn map_none(start: u64, end: u64) -> Result<(), Taken> {
    // SAFETY: an inaccessible anonymous mapping that replaces nothing
    // (MAP_FIXED_NOREPLACE); on failure nothing is mapped.
    let mapped = unsafe {
        libc::mmap(
            start as *mut c_void,
            (end - start) as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(Taken);
    }
    if mapped as u64 != start {
        // A kernel without MAP_FIXED_NOREPLACE put it elsewhere.
        // SAFETY: undoing the mapping just made.
        unsafe { libc::munmap(mapped, (end - start) as usize) };
        return Err(Taken);
    }
    Ok(())
}

fn unmap(start: u64, end: u64) {
    // SAFETY: only runs this module reserved are given back.
    unsafe { libc::munmap(start as *mut c_void, (end - start) as usize) };
}

impl Inner {
    /// Reserves the pages of `[start, start+size)` not reserved yet.
    fn reserve(&mut self, start: u64, size: u64) -> Result<(), Taken> {
        let (lo, hi) = pages(start, size);
        let overlapping: Vec<(u64, u64)> = self
            .reserved
            .range(..hi)
            .rev()
            .take_while(|&(_, &e)| e > lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        let mut made = Vec::new();
        for (s, e) in gaps(lo, hi, overlapping) {
            if map_none(s, e).is_err() {
                for (s, e) in made {
                    unmap(s, e);
                }
                return Err(Taken);
            }
            made.push((s, e));
        }
        for (s, e) in made {
            self.reserved.insert(s, e);
        }
        Ok(())
    }

    /// Gives back the pages of `[start, start+size)` no range or hold still uses.
    fn release(&mut self, start: u64, size: u64) {
        let (lo, hi) = pages(start, size);
        let mut users: Vec<(u64, u64)> = self
            .ranges
            .range(..hi)
            .rev()
            .take_while(|&(&b, &(s, _))| pages(b, s).1 > lo)
            .map(|(&b, &(s, _))| pages(b, s))
            .collect();
        users.extend(self.holds.iter().map(|(&b, &s)| pages(b, s)));
        for (s, e) in gaps(lo, hi, users) {
            // Split the reserved runs at the edges of what goes.
            let runs: Vec<(u64, u64)> = self
                .reserved
                .range(..e)
                .rev()
                .take_while(|&(_, &re)| re > s)
                .map(|(&rs, &re)| (rs, re))
                .collect();
            for (rs, re) in runs {
                self.reserved.remove(&rs);
                if rs < s {
                    self.reserved.insert(rs, s);
                }
                if re > e {
                    self.reserved.insert(e, re);
                }
                unmap(rs.max(s), re.min(e));
            }
        }
    }
}

impl DeviceRanges {
    /// `reserve`: whether each range is to be reserved here as it arrives.
    /// Makes the range at `base` one the application frees (`cuMemFree`), in
    /// place: its pages stay reserved throughout. False if there is none.
    pub fn set_freeable(&self, base: u64) -> bool {
        match lock(&self.inner).ranges.get_mut(&base) {
            Some((_, freeable)) => {
                *freeable = true;
                true
            }
            None => false,
        }
    }

    /// Whether the server's fixed range is reserved here (so ranges are not,
    /// one by one).
    pub fn fixed_range_reserved(&self) -> bool {
        !self.reserve
    }

    pub fn new(reserve: bool) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            reserve,
        }
    }

    /// Records a range, reserving its addresses here; `Err(Taken)` (and nothing
    /// recorded) where some of them are this process's memory.
    pub fn add(&self, base: u64, size: u64, freeable: bool) -> Result<(), Taken> {
        let mut inner = lock(&self.inner);
        if self.reserve {
            inner.reserve(base, size)?;
        }
        inner.ranges.insert(base, (size, freeable));
        Ok(())
    }

    /// Records a range whose address could not be chosen: reserved where that
    /// can be done, else kept as it is, with a warning.
    pub fn add_given(&self, base: u64, size: u64, freeable: bool) {
        if self.add(base, size, freeable).is_err() {
            tracing::warn!(
                "device memory at {base:#x} ({size} bytes) overlaps this process's own memory; \
                 host buffers there would be taken for device memory"
            );
            lock(&self.inner).ranges.insert(base, (size, freeable));
        }
    }

    /// Records a range this process has mapped itself (managed memory): nothing
    /// to reserve.
    pub fn add_mapped(&self, base: u64, size: u64, freeable: bool) {
        lock(&self.inner).ranges.insert(base, (size, freeable));
    }

    /// Forgets the range at `base`, giving back the pages only it used.
    pub fn remove(&self, base: u64) -> Option<(u64, bool)> {
        let mut inner = lock(&self.inner);
        let found = inner.ranges.remove(&base)?;
        inner.devices.remove(&base);
        if self.reserve {
            inner.release(base, found.0);
        }
        Some(found)
    }

    /// Forgets the range at `base` if `cuMemFree` may take it, in one step that
    /// another thread cannot come between: its size, or `None` if it may not.
    pub fn remove_freeable(&self, base: u64) -> Option<u64> {
        let mut inner = lock(&self.inner);
        let Some(&(size, true)) = inner.ranges.get(&base) else {
            return None;
        };
        inner.ranges.remove(&base);
        inner.devices.remove(&base);
        if self.reserve {
            inner.release(base, size);
        }
        Some(size)
    }

    /// Reserves an address reservation's range (`cuMemAddressReserve`).
    pub fn hold(&self, start: u64, size: u64) -> Result<(), Taken> {
        let mut inner = lock(&self.inner);
        if self.reserve {
            inner.reserve(start, size)?;
        }
        inner.holds.insert(start, size);
        Ok(())
    }

    /// Records a reservation the server has, reserving its addresses here where
    /// that can still be done (else with a warning, as [`Self::add_given`]).
    pub fn hold_given(&self, start: u64, size: u64) {
        if self.hold(start, size).is_err() {
            tracing::warn!(
                "address reservation at {start:#x} ({size} bytes) overlaps this process's own memory"
            );
            lock(&self.inner).holds.insert(start, size);
        }
    }

    /// Gives back the reservation of `size` bytes at `start` (`cuMemAddressFree`),
    /// if there is one: whether there was.
    pub fn take_hold(&self, start: u64, size: u64) -> bool {
        let mut inner = lock(&self.inner);
        if inner.holds.get(&start) != Some(&size) {
            return false;
        }
        inner.holds.remove(&start);
        if self.reserve {
            inner.release(start, size);
        }
        true
    }

    /// Records that the range at `base` is on device `device` (ranges are on
    /// device 0 until said otherwise).
    pub fn set_device(&self, base: u64, device: u32) {
        let mut inner = lock(&self.inner);
        if device != 0 && inner.ranges.contains_key(&base) {
            inner.devices.insert(base, device);
        }
    }

    /// The device of the range containing `address`, if there is one.
    pub fn device_of(&self, address: u64) -> Option<u32> {
        let (base, _) = self.find(address)?;
        Some(lock(&self.inner).devices.get(&base).copied().unwrap_or(0))
    }

    /// The range containing `address`: (base, size).
    pub fn find(&self, address: u64) -> Option<(u64, u64)> {
        let inner = lock(&self.inner);
        let (&base, &(size, _)) = inner.ranges.range(..=address).next_back()?;
        (address < base + size).then_some((base, size))
    }
}

/// Allocates with `alloc` until `record` takes the address it gives (it is free
/// here), at most 8 times; the allocations whose addresses were taken are given
/// back with `free` once one is found (or the tries run out, which answers
/// `exhausted`: the caller's out-of-memory error).
pub fn place<E>(
    record: impl Fn(u64) -> Result<(), Taken>,
    mut alloc: impl FnMut() -> Result<u64, E>,
    free: impl Fn(u64),
    exhausted: E,
) -> Result<u64, E> {
    const TRIES: usize = 8;
    let mut taken = Vec::new();
    let result = loop {
        let address = match alloc() {
            Ok(a) => a,
            Err(code) => break Err(code),
        };
        match record(address) {
            Ok(()) => break Ok(address),
            Err(Taken) => {
                taken.push(address);
                if taken.len() == TRIES {
                    tracing::warn!(
                        "{TRIES} device addresses in a row are this process's own memory"
                    );
                    break Err(exhausted);
                }
            }
        }
    };
    for address in taken {
        free(address);
    }
    result
}

/// The ranges of a connection whose server announced `range` as where its
/// devices' addresses lie (the mock's fixed range; empty for the cuda backend):
/// that range reserved here once, if it can be, else each range as it arrives.
pub fn for_server((start, end): (u64, u64)) -> DeviceRanges {
    let fixed = end > start
        && {
            let reserved = map_none(start, end).is_ok();
            if !reserved {
                tracing::warn!("could not reserve the device address range {start:#x}..{end:#x}; host and device pointers may alias");
            }
            reserved
        };
    DeviceRanges::new(!fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These tests map and unmap parts of the address space and check what is
    /// free: one at a time, or one's mappings land in what another just freed.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Whether one page at `address` can be mapped (is free) in this process.
    fn free_here(address: u64) -> bool {
        let ok = map_none(address, address + page()).is_ok();
        if ok {
            unmap(address, address + page());
        }
        ok
    }

    /// A stretch of this process's address space nothing uses, far below where
    /// the kernel places mappings made without an address (thread stacks of
    /// other tests among them), so that nothing else lands in it meanwhile.
    fn spare(pages_wanted: u64) -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0x5e00_0000_0000);
        loop {
            let base = NEXT.fetch_add((pages_wanted + 16) * page(), Ordering::Relaxed);
            if (0..pages_wanted).all(|k| free_here(base + k * page())) {
                return base;
            }
        }
    }

    #[test]
    fn gaps_are_what_nothing_covers() {
        assert_eq!(gaps(0, 10, []), vec![(0, 10)]);
        assert_eq!(gaps(0, 10, [(2, 4), (3, 6), (8, 12)]), vec![(0, 2), (6, 8)]);
        assert_eq!(gaps(5, 10, [(0, 20)]), vec![]);
    }

    #[test]
    fn ranges_are_reserved_while_any_range_on_their_pages_lives() {
        let _serial = lock(&SERIAL);
        let p = page();
        let base = spare(16);
        let ranges = DeviceRanges::new(true);
        // Two ranges sharing the second page, and one three pages on.
        ranges.add(base + 100, p, true).unwrap();
        ranges.add(base + p + 200, 300, true).unwrap();
        ranges.add(base + 4 * p, 2 * p, false).unwrap();
        assert!(!free_here(base) && !free_here(base + p) && !free_here(base + 5 * p));
        assert!(free_here(base + 3 * p), "a page no range touches");
        assert_eq!(ranges.find(base + p + 250), Some((base + p + 200, 300)));
        assert!(ranges.remove_freeable(base + 100).is_some());
        assert!(free_here(base), "only the first range used the first page");
        assert!(
            !free_here(base + p),
            "the second range still uses the second page"
        );
        assert!(
            ranges.remove_freeable(base + 4 * p).is_none(),
            "not one cuMemFree takes"
        );
        assert!(!free_here(base + 4 * p), "and it stays");
        assert_eq!(ranges.remove(base + 4 * p), Some((2 * p, false)));
        assert!(free_here(base + 4 * p) && free_here(base + 5 * p));
        ranges.remove(base + p + 200);
        assert!(free_here(base + p));
    }

    #[test]
    fn an_address_that_is_this_process_memory_is_refused_and_allocated_again() {
        let _serial = lock(&SERIAL);
        let p = page();
        let base = spare(8);
        // This process's own memory at the first address the "server" gives.
        map_none(base + 2 * p, base + 3 * p).unwrap();
        let ranges = DeviceRanges::new(true);
        assert_eq!(ranges.add(base + 2 * p + 64, 128, true), Err(Taken));
        assert_eq!(ranges.find(base + 2 * p + 64), None, "nothing recorded");
        let offers = std::cell::RefCell::new(vec![base + 5 * p, base + 2 * p + 64]);
        let freed = std::cell::RefCell::new(Vec::new());
        let placed: Result<u64, ()> = place(
            |a| ranges.add(a, 128, true),
            || Ok(offers.borrow_mut().pop().unwrap()),
            |a| freed.borrow_mut().push(a),
            (),
        );
        assert_eq!(placed, Ok(base + 5 * p));
        assert_eq!(
            *freed.borrow(),
            vec![base + 2 * p + 64],
            "the taken one given back"
        );
        assert!(!free_here(base + 5 * p));
        // A hold covers the mappings inside it; they leave its pages reserved.
        let hold = spare(4);
        ranges.hold(hold, 4 * p).unwrap();
        ranges.add(hold + p, p, false).unwrap();
        ranges.remove(hold + p);
        // A range's device, forgotten with it.
        assert_eq!(ranges.device_of(base + 5 * p + 64), Some(0));
        ranges.set_device(base + 5 * p, 3);
        assert_eq!(ranges.device_of(base + 5 * p + 64), Some(3));
        assert_eq!(ranges.device_of(base + 5 * p + 128), None, "past its end");
        assert!(ranges.remove_freeable(base + 5 * p).is_some());
        assert_eq!(ranges.device_of(base + 5 * p + 64), None);
        assert!(!free_here(hold + p), "still held");
        assert!(
            !ranges.take_hold(hold, 3 * p),
            "a size not the hold's is refused"
        );
        assert!(!free_here(hold), "and the hold stays");
        assert!(ranges.take_hold(hold, 4 * p));
        assert!(free_here(hold) && free_here(hold + 3 * p));
        assert!(!ranges.take_hold(hold, 4 * p), "given back once");
        unmap(base + 2 * p, base + 3 * p);
    }

    #[test]
    fn without_reservation_nothing_is_mapped() {
        let _serial = lock(&SERIAL);
        let base = spare(2);
        let ranges = DeviceRanges::new(false);
        ranges.add(base, 100, true).unwrap();
        assert!(free_here(base));
        assert_eq!(ranges.find(base + 99), Some((base, 100)));
        assert_eq!(ranges.find(base + 100), None);
    }
}
