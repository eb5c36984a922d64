//! Device memory of the mock backend: real bytes on the host, at device addresses
//! handed out from one server-wide range (a slice of it per device) so no two live
//! allocations' pointers coincide, and a pointer names its device. Freed addresses are handed out again (as a device's are), and every
//! allocation is charged what it really takes: its size rounded up to [`ALIGN`].

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use xpupool_protocol::{code, CuError};

use crate::quota::allocation_charge;

/// Start of the device address range the mock hands out.
pub(crate) const DEVICE_VA_START: u64 = 0x2000_0000_0000;
/// End (exclusive) of that range: 4 TiB of address space, shared by the devices.
pub(crate) const DEVICE_VA_END: u64 = 0x2400_0000_0000;
/// Unmapped bytes left after each allocation so an overrun faults.
const GUARD: u64 = 64 << 10;
/// Alignment of every allocation (what `cuMemAlloc` guarantees is 256), and the
/// granularity it takes and is charged at: a 1-byte allocation takes (and costs) 512.
pub(crate) const ALIGN: u64 = crate::quota::ALLOCATION_GRANULARITY;

/// One allocation's host storage.
pub(crate) struct Block {
    ptr: *mut u8,
    /// Bytes allocated (and charged): `len` rounded up to [`ALIGN`].
    size: usize,
    /// The device it is on.
    device: u32,
    /// For a physical allocation (`cuMemCreate`): the device memory it is
    /// charged to, refunded when the last mapping or handle of it goes.
    charged: Option<Arc<DeviceMemory>>,
}

// SAFETY: the block owns its heap storage; concurrent access to the bytes is the
// kernel's business (as on a device), and atomics go through atomic types.
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

/// Blocks of at least this many bytes are mapped straight from the kernel: zero
/// pages that cost host memory only once written, and go back to it when freed.
const MAPPED_BLOCK: usize = 1 << 20;

impl Block {
    fn new(size: usize, device: u32) -> Option<Self> {
        if size >= MAPPED_BLOCK {
            // SAFETY: a fresh private anonymous mapping; the result is checked.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            return (ptr != libc::MAP_FAILED).then_some(Self {
                ptr: ptr.cast(),
                size,
                device,
                charged: None,
            });
        }
        let layout = Layout::from_size_align(size, ALIGN as usize).ok()?;
        // SAFETY: the layout has a non-zero size (at least ALIGN).
        let ptr = unsafe { alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(Self {
            ptr,
            size,
            device,
            charged: None,
        })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(memory) = &self.charged {
            memory.refund(self.size as u64);
        }
        if self.size >= MAPPED_BLOCK {
            // SAFETY: unmapping exactly the mapping made in `Block::new`.
            unsafe { libc::munmap(self.ptr.cast(), self.size) };
            return;
        }
        let layout = Layout::from_size_align(self.size, ALIGN as usize)
            .expect("layout was valid at allocation");
        // SAFETY: allocated in `Block::new` with this layout.
        unsafe { dealloc(self.ptr, layout) }
    }
}

/// The device's address space: free extents, handed out best fit first and merged
/// with their neighbours when given back.
struct AddressSpace {
    /// Free extents: start → length.
    free: BTreeMap<u64, u64>,
    /// The same extents by (length, start), for the best fit.
    by_length: BTreeSet<(u64, u64)>,
}

impl AddressSpace {
    fn new(start: u64, end: u64) -> Self {
        Self {
            free: BTreeMap::from([(start, end - start)]),
            by_length: BTreeSet::from([(end - start, start)]),
        }
    }

    /// Takes `len` bytes (a multiple of [`ALIGN`]) from the smallest extent that has them.
    fn take(&mut self, len: u64) -> Option<u64> {
        let &(extent, start) = self.by_length.range((len, 0)..).next()?;
        self.by_length.remove(&(extent, start));
        self.free.remove(&start);
        if extent > len {
            self.add(start + len, extent - len);
        }
        Some(start)
    }

    /// Gives `[start, start + len)` back, merged with the free extents beside it.
    fn give_back(&mut self, mut start: u64, mut len: u64) {
        if let Some((&before, &before_len)) = self.free.range(..start).next_back() {
            if before + before_len == start {
                self.remove(before, before_len);
                start = before;
                len += before_len;
            }
        }
        if let Some(&after_len) = self.free.get(&(start + len)) {
            self.remove(start + len, after_len);
            len += after_len;
        }
        self.add(start, len);
    }

    fn add(&mut self, start: u64, len: u64) {
        self.free.insert(start, len);
        self.by_length.insert((len, start));
    }

    fn remove(&mut self, start: u64, len: u64) {
        self.free.remove(&start);
        self.by_length.remove(&(len, start));
    }
}

/// The memory of one mock device, shared by every session: its capacity, what is
/// in use, and its slice of the address range.
pub(crate) struct DeviceMemory {
    addresses: Mutex<AddressSpace>,
    used: AtomicU64,
    capacity: u64,
    /// `[start, end)` of its addresses.
    #[cfg_attr(not(test), allow(dead_code))]
    range: (u64, u64),
}

impl DeviceMemory {
    /// `count` devices of `capacity` bytes each, splitting the address range.
    pub(crate) fn devices(count: u32, capacity: u64) -> Vec<Arc<Self>> {
        let span = (DEVICE_VA_END - DEVICE_VA_START) / u64::from(count.max(1));
        (0..u64::from(count.max(1)))
            .map(|i| {
                let start = DEVICE_VA_START + i * span;
                Arc::new(Self {
                    addresses: Mutex::new(AddressSpace::new(start, start + span)),
                    used: AtomicU64::new(0),
                    capacity,
                    range: (start, start + span),
                })
            })
            .collect()
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, bytes: u64) -> Result<(), CuError> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let after = used
                .checked_add(bytes)
                .filter(|&after| after <= self.capacity)
                .ok_or_else(|| {
                    CuError::new(
                        code::OUT_OF_MEMORY,
                        format!(
                            "{bytes} bytes requested, {} of the device's {} in use",
                            used, self.capacity
                        ),
                    )
                })?;
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    fn refund(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Device addresses for an allocation of `size` (already rounded) bytes,
    /// followed by an unmapped guard.
    fn reserve_address(&self, size: u64) -> Result<u64, CuError> {
        let exhausted = || CuError::new(code::OUT_OF_MEMORY, "mock device address space exhausted");
        let len = size.checked_add(GUARD).ok_or_else(exhausted)?;
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(len)
            .ok_or_else(exhausted)
    }

    fn release_address(&self, base: u64, size: u64) {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .give_back(base, size + GUARD);
    }
}

/// Granularity of the virtual memory calls (`cuMemGetAllocationGranularity`):
/// physical allocations, mappings and reservations are multiples of it.
pub(crate) const VMM_GRANULARITY: u64 = 2 << 20;
/// Address space one session may hold reserved, as a multiple of the device's
/// memory (the address range is shared by every session on the server).
const RESERVE_PER_CAPACITY: u64 = 4;
/// Reservations, physical allocations and mappings one session may hold.
const MAX_VMM_OBJECTS: usize = 65_536;

/// A range of device addresses a session can reach: all of an allocation, or
/// a mapping of (part of) a physical allocation inside a reservation.
struct Region {
    storage: Arc<Block>,
    /// Where in `storage` it starts.
    offset: usize,
    /// Its bytes.
    len: usize,
    /// What made it, and so what ends it.
    kind: Kind,
    /// Whether kernels and copies may touch it (`cuMemSetAccess`; a mapping
    /// is reachable only once access is set, as on a device).
    accessible: bool,
}

/// How a session came to reach a [`Region`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `cuMemAlloc`: freed with `cuMemFree`.
    Allocation,
    /// `cuMemMap` inside a reservation: unmapped with `cuMemUnmap`.
    Mapping,
    /// Another session's allocation opened by IPC: closed with
    /// `cuIpcCloseMemHandle`.
    Opened,
}

/// One session's reservations and physical allocations.
#[derive(Default)]
struct Vmm {
    /// start → (size, device).
    reservations: BTreeMap<u64, (u64, u32)>,
    /// Address space reserved, per device.
    reserved: BTreeMap<u32, u64>,
    /// handle → physical allocation.
    handles: BTreeMap<u64, Arc<Block>>,
    next_handle: u64,
    mappings: usize,
}

/// One session's allocations on every device: the table every pointer it names is
/// checked against. The tenant's ledger is the server's tenancy layer's business;
/// here only each device's capacity is enforced.
pub(crate) struct SessionMemory {
    devices: Vec<Arc<DeviceMemory>>,
    blocks: RwLock<BTreeMap<u64, Region>>,
    vmm: Mutex<Vmm>,
    /// Bytes held on each device.
    held: Vec<AtomicU64>,
}

impl SessionMemory {
    pub(crate) fn new(devices: Vec<Arc<DeviceMemory>>) -> Self {
        Self {
            held: devices.iter().map(|_| AtomicU64::new(0)).collect(),
            devices,
            blocks: RwLock::new(BTreeMap::new()),
            vmm: Mutex::new(Vmm {
                // Handles are opaque to the program; these name nothing else.
                next_handle: 0x5600_0000,
                ..Vmm::default()
            }),
        }
    }

    fn device(&self, device: u32) -> Result<&Arc<DeviceMemory>, CuError> {
        self.devices
            .get(device as usize)
            .ok_or_else(|| CuError::new(code::INVALID_DEVICE, format!("device {device}")))
    }

    /// The device's memory.
    pub(crate) fn total(&self, device: u32) -> Result<u64, CuError> {
        Ok(self.device(device)?.capacity)
    }

    /// What the device has free, all sessions together.
    pub(crate) fn available(&self, device: u32) -> Result<u64, CuError> {
        let d = self.device(device)?;
        Ok(d.capacity.saturating_sub(d.used()))
    }

    /// The device an address lies on.
    #[cfg(test)]
    pub(crate) fn device_of(&self, address: u64) -> Option<u32> {
        self.devices
            .iter()
            .position(|d| (d.range.0..d.range.1).contains(&address))
            .map(|i| i as u32)
    }

    /// Allocates `bytes` zeroed bytes on `device` and returns their device address;
    /// takes what it charges ([`allocation_charge`]) from the device's capacity.
    pub(crate) fn alloc(&self, device: u32, bytes: u64) -> Result<u64, CuError> {
        let memory = self.device(device)?;
        if bytes == 0 {
            return Err(CuError::new(code::INVALID_VALUE, "zero-byte allocation"));
        }
        let too_large = || CuError::new(code::OUT_OF_MEMORY, "allocation too large");
        let size = allocation_charge(bytes).ok_or_else(too_large)?;
        let (len, host_size) = match (usize::try_from(bytes), usize::try_from(size)) {
            (Ok(len), Ok(host_size)) => (len, host_size),
            _ => return Err(too_large()),
        };
        memory.charge(size)?;
        let address = match memory.reserve_address(size) {
            Ok(address) => address,
            Err(e) => {
                memory.refund(size);
                return Err(e);
            }
        };
        let Some(mut block) = Block::new(host_size, device) else {
            memory.refund(size);
            memory.release_address(address, size);
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("host could not back {bytes} bytes"),
            ));
        };
        // Refunded when the last session reaching it (by IPC too) lets go.
        block.charged = Some(memory.clone());
        self.blocks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                address,
                Region {
                    storage: Arc::new(block),
                    offset: 0,
                    len,
                    kind: Kind::Allocation,
                    accessible: true,
                },
            );
        self.held[device as usize].fetch_add(size, Ordering::AcqRel);
        Ok(address)
    }

    /// Removes the region of `kind` that starts at `address` (`what` says
    /// what it should have been, for the error).
    fn take(&self, address: u64, kind: Kind, what: &str) -> Result<Region, CuError> {
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        match blocks.get(&address) {
            Some(r) if r.kind == kind => Ok(blocks.remove(&address).expect("just found")),
            _ => Err(CuError::new(
                code::INVALID_VALUE,
                format!("{address:#x} is not {what}"),
            )),
        }
    }

    /// Frees the allocation that starts at `address`; its addresses may be handed
    /// out again.
    pub(crate) fn free(&self, address: u64) -> Result<(), CuError> {
        let region = self.take(address, Kind::Allocation, "an allocation of this session")?;
        let (size, device) = (region.storage.size as u64, region.storage.device as usize);
        drop(region);
        self.devices[device].release_address(address, size);
        self.held[device].fetch_sub(size, Ordering::AcqRel);
        Ok(())
    }

    /// Runs `f` with a view on every allocation, for a kernel launch or a copy.
    pub(crate) fn with_view<R>(&self, f: impl FnOnce(&View<'_>) -> R) -> R {
        let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        f(&View { blocks: &blocks })
    }

    /// Whether `[address, address+len)` lies in this session's memory (one
    /// allocation, or mappings without a gap).
    pub(crate) fn check_span(&self, address: u64, len: u64) -> Result<(), CuError> {
        self.with_view(|view| view.pieces(address, len).map(|_| ()))
    }

    /// Copies bytes out of device memory.
    pub(crate) fn read(&self, address: u64, len: u64) -> Result<Vec<u8>, CuError> {
        let len = usize::try_from(len)
            .map_err(|_| CuError::new(code::INVALID_VALUE, "a read past the address space"))?;
        let mut out = Vec::new();
        // Checked before the buffer is made: its length is then a live range's.
        self.with_view(|view| view.pieces(address, len as u64).map(|_| ()))?;
        out.resize(len, 0);
        self.read_into(address, &mut out)?;
        Ok(out)
    }

    /// Copies bytes out of device memory into `out`.
    pub(crate) fn read_into(&self, address: u64, out: &mut [u8]) -> Result<(), CuError> {
        self.with_view(|view| {
            let mut done = 0;
            for (ptr, len) in view.pieces(address, out.len() as u64)? {
                // SAFETY: `pieces` proved [ptr, ptr+len) lies inside live storage.
                unsafe { std::ptr::copy_nonoverlapping(ptr, out[done..].as_mut_ptr(), len) };
                done += len;
            }
            Ok(())
        })
    }

    /// Copies bytes into device memory.
    pub(crate) fn write(&self, address: u64, data: &[u8]) -> Result<(), CuError> {
        self.with_view(|view| {
            let mut done = 0;
            for (ptr, len) in view.pieces(address, data.len() as u64)? {
                // SAFETY: as in `read_into`; requests of one session are handled
                // one at a time.
                unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), ptr, len) };
                done += len;
            }
            Ok(())
        })
    }

    /// Copies between two device ranges (which may overlap).
    pub(crate) fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), CuError> {
        let spanning = self.with_view(|view| -> Result<bool, CuError> {
            let from = view.pieces(src, len)?;
            let to = view.pieces(dst, len)?;
            if let ([(from, _)], [(to, _)]) = (from.as_slice(), to.as_slice()) {
                // SAFETY: both ranges are inside live storage; `copy` allows overlap.
                unsafe { std::ptr::copy(*from, *to, len as usize) };
                return Ok(false);
            }
            Ok(true)
        })?;
        if spanning {
            // Across mappings: through a buffer, which also keeps overlap right.
            let bytes = self.read(src, len)?;
            self.write(dst, &bytes)?;
        }
        Ok(())
    }

    /// Fills `count` elements of `elem_size` bytes at `address` with `value`.
    pub(crate) fn fill(
        &self,
        address: u64,
        value: u32,
        elem_size: u8,
        count: u64,
    ) -> Result<(), CuError> {
        crate::checks::memset_element(address, elem_size)?;
        let pattern = &value.to_le_bytes()[..elem_size as usize];
        let len = count
            .checked_mul(elem_size as u64)
            .ok_or_else(|| CuError::new(code::INVALID_VALUE, "memset too large"))?;
        self.with_view(|view| {
            // Pieces start at element boundaries (mappings are granularity-aligned).
            for (ptr, len) in view.pieces(address, len)? {
                // SAFETY: inside live storage.
                let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                fill_pattern(bytes, pattern);
            }
            Ok(())
        })
    }

    /// Fills `height` rows of `width` elements of `elem_size` bytes, rows `pitch`
    /// bytes apart. The whole span must lie inside one allocation, checked before
    /// any row is written: the rows are then at most as many as its bytes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fill_2d(
        &self,
        address: u64,
        pitch: u64,
        value: u32,
        elem_size: u8,
        width: u64,
        height: u64,
    ) -> Result<(), CuError> {
        let invalid = |why: &str| CuError::new(code::INVALID_VALUE, format!("memset2D: {why}"));
        if !matches!(elem_size, 1 | 2 | 4) {
            return Err(invalid("element size"));
        }
        if width == 0 || height == 0 {
            return Ok(());
        }
        let row = width
            .checked_mul(elem_size as u64)
            .ok_or_else(|| invalid("row too large"))?;
        if height > 1 && row > pitch {
            return Err(invalid("width exceeds pitch"));
        }
        let span = (height - 1)
            .checked_mul(pitch)
            .and_then(|rows| rows.checked_add(row))
            .ok_or_else(|| invalid("region too large"))?;
        self.with_view(|view| view.pieces(address, span).map(|_| ()))?;
        for r in 0..height {
            self.fill(address + r * pitch, value, elem_size, width)?;
        }
        Ok(())
    }

    /// The storage of the allocation at `address` and its length, to export.
    pub(crate) fn exportable(&self, address: u64) -> Result<(Arc<Block>, u64), CuError> {
        let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        match blocks.get(&address) {
            Some(r) if r.kind == Kind::Allocation => Ok((r.storage.clone(), r.len as u64)),
            _ => Err(CuError::new(
                code::INVALID_VALUE,
                format!("{address:#x} is not the start of an allocation of this session"),
            )),
        }
    }

    /// Makes another session's exported allocation reachable here, at
    /// addresses of its own; the memory stays until every session lets go.
    pub(crate) fn open_shared(&self, storage: Arc<Block>, len: u64) -> Result<u64, CuError> {
        let memory = self.device(storage.device)?;
        let size = storage.size as u64;
        let address = memory.reserve_address(size)?;
        self.blocks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                address,
                Region {
                    storage,
                    offset: 0,
                    len: len as usize,
                    kind: Kind::Opened,
                    accessible: true,
                },
            );
        Ok(address)
    }

    /// Closes an allocation opened with [`Self::open_shared`].
    pub(crate) fn close_shared(&self, address: u64) -> Result<(), CuError> {
        let region = self.take(address, Kind::Opened, "an allocation this session opened")?;
        let (size, device) = (region.storage.size as u64, region.storage.device);
        drop(region);
        self.devices[device as usize].release_address(address, size);
        Ok(())
    }

    /// Reserves `size` bytes of `device`'s addresses (`cuMemAddressReserve`),
    /// aligned to `alignment`; nothing is allocated or charged, but what one
    /// session may reserve is bounded, since the range is every session's.
    pub(crate) fn reserve(&self, device: u32, size: u64, alignment: u64) -> Result<u64, CuError> {
        let memory = self.device(device)?;
        let invalid = |why: String| CuError::new(code::INVALID_VALUE, why);
        if size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(invalid(format!(
                "a reservation of {size} bytes: a non-zero multiple of {VMM_GRANULARITY} is needed"
            )));
        }
        let alignment = alignment.max(VMM_GRANULARITY);
        if !alignment.is_power_of_two() || alignment > (1 << 40) {
            return Err(invalid(format!("alignment {alignment}")));
        }
        let mut vmm = self.vmm.lock().unwrap_or_else(|e| e.into_inner());
        let most = memory
            .capacity
            .saturating_mul(RESERVE_PER_CAPACITY)
            .max(1 << 30);
        let held = vmm.reserved.get(&device).copied().unwrap_or(0);
        if held.saturating_add(size) > most || vmm.reservations.len() >= MAX_VMM_OBJECTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!(
                    "reserving {size} bytes: this session holds {held} of the {most} bytes of addresses it may reserve on device {device}"
                ),
            ));
        }
        // Taken with room to align inside it; the whole extent is given back.
        let extent = size + alignment - VMM_GRANULARITY;
        let taken = memory.reserve_address(extent)?;
        let start = taken.next_multiple_of(alignment);
        // The space before the aligned start and after the end goes back now.
        let mut space = memory.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if start > taken {
            space.give_back(taken, start - taken);
        }
        let tail = taken + extent + GUARD - (start + size + GUARD);
        if tail > 0 {
            space.give_back(start + size + GUARD, tail);
        }
        drop(space);
        vmm.reservations.insert(start, (size, device));
        *vmm.reserved.entry(device).or_insert(0) += size;
        Ok(start)
    }

    /// Gives back a whole reservation with nothing mapped in it (`cuMemAddressFree`).
    pub(crate) fn address_free(&self, start: u64, size: u64) -> Result<(), CuError> {
        let mut vmm = self.vmm.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(reserved, device)) = vmm.reservations.get(&start) else {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("{start:#x} is not a reservation of this session"),
            ));
        };
        if reserved != size {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("the reservation at {start:#x} is {reserved} bytes, not {size}"),
            ));
        }
        let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        if blocks.range(start..start + size).next().is_some() {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("the reservation at {start:#x} still has mappings"),
            ));
        }
        drop(blocks);
        vmm.reservations.remove(&start);
        if let Some(held) = vmm.reserved.get_mut(&device) {
            *held -= size;
        }
        self.devices[device as usize].release_address(start, size);
        Ok(())
    }

    /// Allocates `size` bytes of physical memory on `device`, mapped nowhere
    /// (`cuMemCreate`); charged to the device now, refunded when its handle is
    /// released and its last mapping gone.
    pub(crate) fn create(&self, device: u32, size: u64) -> Result<u64, CuError> {
        let memory = self.device(device)?;
        if size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("a physical allocation of {size} bytes: a non-zero multiple of {VMM_GRANULARITY} is needed"),
            ));
        }
        let too_large = || CuError::new(code::OUT_OF_MEMORY, "allocation too large");
        let len = usize::try_from(size).map_err(|_| too_large())?;
        let mut vmm = self.vmm.lock().unwrap_or_else(|e| e.into_inner());
        if vmm.handles.len() >= MAX_VMM_OBJECTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("this session holds {MAX_VMM_OBJECTS} physical allocations, its most"),
            ));
        }
        memory.charge(size)?;
        let Some(mut block) = Block::new(len, device) else {
            memory.refund(size);
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("host could not back {size} bytes"),
            ));
        };
        block.charged = Some(memory.clone());
        vmm.next_handle += 0x10;
        let handle = vmm.next_handle;
        vmm.handles.insert(handle, Arc::new(block));
        Ok(handle)
    }

    /// Releases a physical allocation's handle (`cuMemRelease`): its memory
    /// goes now if nothing maps it, else with its last mapping.
    pub(crate) fn release(&self, handle: u64) -> Result<(), CuError> {
        let mut vmm = self.vmm.lock().unwrap_or_else(|e| e.into_inner());
        vmm.handles.remove(&handle).map(drop).ok_or_else(|| {
            CuError::new(
                code::INVALID_VALUE,
                format!("{handle:#x} is not a physical allocation of this session"),
            )
        })
    }

    /// Maps `[offset, offset+size)` of physical allocation `handle` at `ptr`,
    /// inside one reservation, over nothing mapped (`cuMemMap`); reachable
    /// once its access is set.
    pub(crate) fn map(&self, ptr: u64, size: u64, offset: u64, handle: u64) -> Result<(), CuError> {
        let invalid = |why: String| CuError::new(code::INVALID_VALUE, why);
        let mut vmm = self.vmm.lock().unwrap_or_else(|e| e.into_inner());
        let storage = vmm.handles.get(&handle).cloned().ok_or_else(|| {
            invalid(format!(
                "{handle:#x} is not a physical allocation of this session"
            ))
        })?;
        let aligned = |v: u64| v.is_multiple_of(VMM_GRANULARITY);
        if size == 0 || !aligned(size) || !aligned(offset) || !aligned(ptr) {
            return Err(invalid(format!(
                "mapping {size} bytes at {ptr:#x} from offset {offset}: each a multiple of {VMM_GRANULARITY}"
            )));
        }
        let in_storage = offset
            .checked_add(size)
            .is_some_and(|end| end <= storage.size as u64);
        let end = ptr
            .checked_add(size)
            .ok_or_else(|| invalid("a mapping past the address space".into()))?;
        let reserved = vmm
            .reservations
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&start, &(len, device))| end <= start + len && device == storage.device);
        if !in_storage || !reserved {
            return Err(invalid(format!(
                "mapping [{ptr:#x}, +{size}) of offset {offset} of a {}-byte allocation: not inside it, or not inside one reservation on its device",
                storage.size
            )));
        }
        if vmm.mappings >= MAX_VMM_OBJECTS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("this session holds {MAX_VMM_OBJECTS} mappings, its most"),
            ));
        }
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        let overlaps = blocks
            .range(..end)
            .next_back()
            .is_some_and(|(&base, r)| base + r.len as u64 > ptr);
        if overlaps {
            return Err(invalid(format!("[{ptr:#x}, +{size}) is mapped already")));
        }
        blocks.insert(
            ptr,
            Region {
                storage,
                offset: offset as usize,
                len: size as usize,
                kind: Kind::Mapping,
                accessible: false,
            },
        );
        vmm.mappings += 1;
        Ok(())
    }

    /// The mappings that exactly cover `[ptr, ptr+size)`, or why not.
    fn covering(blocks: &BTreeMap<u64, Region>, ptr: u64, size: u64) -> Result<Vec<u64>, CuError> {
        let invalid = || {
            CuError::new(
                code::INVALID_VALUE,
                format!("[{ptr:#x}, +{size}) is not a run of whole mappings of this session"),
            )
        };
        let end = ptr
            .checked_add(size)
            .filter(|_| size > 0)
            .ok_or_else(invalid)?;
        let mut at = ptr;
        let mut found = Vec::new();
        for (&base, region) in blocks.range(ptr..end) {
            if base != at || region.kind != Kind::Mapping {
                return Err(invalid());
            }
            at = base + region.len as u64;
            found.push(base);
        }
        if at != end {
            return Err(invalid());
        }
        Ok(found)
    }

    /// Unmaps the whole mappings in `[ptr, ptr+size)` (`cuMemUnmap`).
    pub(crate) fn unmap(&self, ptr: u64, size: u64) -> Result<(), CuError> {
        let mut vmm = self.vmm.lock().unwrap_or_else(|e| e.into_inner());
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        let found = Self::covering(&blocks, ptr, size)?;
        for base in &found {
            blocks.remove(base);
        }
        vmm.mappings -= found.len();
        Ok(())
    }

    /// Sets whether the mappings in `[ptr, ptr+size)` may be touched
    /// (`cuMemSetAccess`; read-only access is kept as read-write).
    pub(crate) fn set_access(
        &self,
        ptr: u64,
        size: u64,
        device: u32,
        flags: u32,
    ) -> Result<(), CuError> {
        self.device(device)?;
        if flags > 3 || flags == 2 {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("access flags {flags}"),
            ));
        }
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        for base in Self::covering(&blocks, ptr, size)? {
            if let Some(region) = blocks.get_mut(&base) {
                region.accessible = flags != 0;
            }
        }
        Ok(())
    }

    /// Bytes held by this session on `device`.
    #[cfg(test)]
    pub(crate) fn held(&self, device: u32) -> u64 {
        self.held
            .get(device as usize)
            .map_or(0, |h| h.load(Ordering::Acquire))
    }
}

impl Drop for SessionMemory {
    fn drop(&mut self) {
        let blocks = std::mem::take(self.blocks.get_mut().unwrap_or_else(|e| e.into_inner()));
        // Storage refunds itself when its last use (here or in another session
        // that opened it) goes; the addresses are this session's to give back.
        for (address, region) in blocks {
            let (size, device) = (region.storage.size as u64, region.storage.device as usize);
            let kind = region.kind;
            drop(region);
            if kind != Kind::Mapping {
                self.devices[device].release_address(address, size);
            }
        }
        let vmm = std::mem::take(self.vmm.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (start, (size, device)) in vmm.reservations {
            self.devices[device as usize].release_address(start, size);
        }
    }
}

/// A locked view on one session's allocations.
pub(crate) struct View<'a> {
    blocks: &'a BTreeMap<u64, Region>,
}

impl View<'_> {
    /// Host pointer for `[address, address+len)` if it lies inside one allocation
    /// (or one mapping whose access is set).
    pub(crate) fn translate(&self, address: u64, len: u64) -> Option<*mut u8> {
        let (&base, region) = self.blocks.range(..=address).next_back()?;
        let offset = address - base;
        let end = offset.checked_add(len)?;
        (region.accessible && end <= region.len as u64).then(|| {
            // SAFETY: offset is within the region, and the region within its storage.
            unsafe { region.storage.ptr.add(region.offset + offset as usize) }
        })
    }

    /// Host pieces of `[address, address+len)`: one inside an allocation, or
    /// one per mapping of a range mapped without gaps (a copy may span
    /// several mappings of one reservation, as on a device).
    fn pieces(&self, address: u64, len: u64) -> Result<Vec<(*mut u8, usize)>, CuError> {
        let outside = || {
            CuError::new(
                code::INVALID_VALUE,
                format!("[{address:#x}, +{len}) is not inside an allocation of this session"),
            )
        };
        if let Some(ptr) = self.translate(address, len) {
            return Ok(vec![(ptr, len as usize)]);
        }
        let end = address.checked_add(len).ok_or_else(outside)?;
        let (&first, _) = self
            .blocks
            .range(..=address)
            .next_back()
            .ok_or_else(outside)?;
        let mut pieces = Vec::new();
        let mut at = address;
        for (&base, region) in self.blocks.range(first..) {
            if at >= end {
                break;
            }
            let region_end = base + region.len as u64;
            if region.kind != Kind::Mapping || !region.accessible || base > at || region_end <= at {
                return Err(outside());
            }
            let take = region_end.min(end) - at;
            let ptr = self.translate(at, take).ok_or_else(outside)?;
            pieces.push((ptr, take as usize));
            at += take;
        }
        if at < end {
            return Err(outside());
        }
        Ok(pieces)
    }
}

impl xpupool_ptx::Memory for View<'_> {
    fn translate(&self, addr: u64, len: usize) -> Option<*mut u8> {
        View::translate(self, addr, len as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_device(capacity: u64) -> Vec<Arc<DeviceMemory>> {
        DeviceMemory::devices(1, capacity)
    }

    #[test]
    fn virtual_memory_maps_physical_pieces_into_one_range_and_checks_everything() {
        const G: u64 = VMM_GRANULARITY;
        let devices = one_device(16 * G);
        let session = SessionMemory::new(devices.clone());
        let base = session.reserve(0, 8 * G, 0).unwrap();
        assert_eq!(base % G, 0);
        assert_eq!(devices[0].used(), 0, "a reservation costs no memory");
        let a = session.create(0, G).unwrap();
        let b = session.create(0, 2 * G).unwrap();
        assert_eq!(devices[0].used(), 3 * G);
        session.map(base, G, 0, a).unwrap();
        session.map(base + G, 2 * G, 0, b).unwrap();
        // Not reachable before its access is set.
        assert!(session.write(base, &[1]).is_err());
        session.set_access(base, 3 * G, 0, 3).unwrap();
        // A write, a read, a fill and a copy across the seam of the two.
        let seam = base + G - 8;
        session.write(seam, &[7; 16]).unwrap();
        assert_eq!(session.read(seam, 16).unwrap(), vec![7; 16]);
        session.fill(seam, 0x0101_0101, 4, 4).unwrap();
        assert_eq!(session.read(seam, 16).unwrap(), vec![1; 16]);
        session.copy(base + 2 * G - 4, seam, 16).unwrap();
        assert_eq!(session.read(base + 2 * G - 4, 16).unwrap(), vec![1; 16]);
        // Past the mapped run, or over a mapping, is refused.
        assert!(session.read(base + 3 * G - 8, 16).is_err());
        assert!(session.map(base + G, G, 0, a).is_err(), "over a mapping");
        assert!(
            session.map(base + 8 * G, G, 0, a).is_err(),
            "outside the reservation"
        );
        assert!(
            session.map(base + 3 * G, G, G, a).is_err(),
            "past the allocation"
        );
        assert!(
            session.map(base + 3 * G + 4096, G, 0, a).is_err(),
            "unaligned"
        );
        assert!(session.unmap(base, G + 4096).is_err(), "part of a mapping");
        assert!(session.address_free(base, 8 * G).is_err(), "still mapped");
        // Another session can neither map these handles nor reach these addresses.
        let other = SessionMemory::new(devices.clone());
        assert!(other.map(base + 3 * G, G, 0, a).is_err());
        assert!(other.read(base, 4).is_err());
        assert!(other.release(a).is_err());
        // Released while mapped, b keeps its memory until unmapped.
        session.release(b).unwrap();
        assert_eq!(devices[0].used(), 3 * G);
        assert_eq!(session.read(base + 2 * G - 4, 4).unwrap(), vec![1; 4]);
        session.unmap(base + G, 2 * G).unwrap();
        assert_eq!(devices[0].used(), G);
        assert!(session.read(base + G, 4).is_err());
        session.unmap(base, G).unwrap();
        session.release(a).unwrap();
        assert_eq!(devices[0].used(), 0);
        session.address_free(base, 8 * G).unwrap();
        // What one session may reserve is bounded, and the device's memory is.
        assert_eq!(
            session.reserve(0, 1 << 40, 0).unwrap_err().code,
            code::OUT_OF_MEMORY
        );
        let held: Vec<u64> = (0..16).map(|_| session.create(0, G).unwrap()).collect();
        assert_eq!(session.create(0, G).unwrap_err().code, code::OUT_OF_MEMORY);
        assert_eq!(
            session.create(0, G / 2).unwrap_err().code,
            code::INVALID_VALUE
        );
        // A session that ends gives back what it held, mapped or not.
        let r = session.reserve(0, 2 * G, 4 * G).unwrap();
        assert_eq!(r % (4 * G), 0, "aligned as asked");
        session.map(r, G, 0, held[0]).unwrap();
        drop(session);
        drop(other);
        assert_eq!(devices[0].used(), 0);
        let again = SessionMemory::new(devices.clone());
        assert_eq!(
            again.reserve(0, 8 * G, 0).unwrap(),
            base,
            "addresses given back"
        );
    }

    #[test]
    fn allocations_are_charged_bounded_and_refunded() {
        let devices = one_device(1 << 20);
        let session = SessionMemory::new(devices.clone());
        let a = session.alloc(0, 600 << 10).unwrap();
        assert_eq!(a % ALIGN, 0);
        let err = session.alloc(0, 600 << 10).unwrap_err();
        assert_eq!(err.code, code::OUT_OF_MEMORY);
        session.free(a).unwrap();
        assert_eq!(devices[0].used(), 0);
        let b = session.alloc(0, 600 << 10).unwrap();
        assert_eq!(a, b, "freed addresses are handed out again");
        drop(session);
        assert_eq!(
            devices[0].used(),
            0,
            "a closed session gives its memory back"
        );
    }

    #[test]
    fn each_device_has_its_own_capacity_and_addresses() {
        let devices = DeviceMemory::devices(2, 1 << 20);
        let session = SessionMemory::new(devices.clone());
        let a = session.alloc(0, 900 << 10).unwrap();
        assert_eq!(
            session.alloc(0, 200 << 10).unwrap_err().code,
            code::OUT_OF_MEMORY
        );
        let b = session.alloc(1, 900 << 10).unwrap();
        assert_eq!(
            (session.device_of(a), session.device_of(b)),
            (Some(0), Some(1))
        );
        assert_eq!((session.held(0), session.held(1)), (900 << 10, 900 << 10));
        assert_eq!(session.available(1).unwrap(), 124 << 10);
        assert_eq!(session.alloc(2, 1).unwrap_err().code, code::INVALID_DEVICE);
        session.write(a, &[5; 16]).unwrap();
        session.copy(b, a, 16).unwrap();
        assert_eq!(session.read(b, 16).unwrap(), vec![5; 16], "a peer copy");
        drop(session);
        assert_eq!((devices[0].used(), devices[1].used()), (0, 0));
    }

    #[test]
    fn pointers_are_checked_against_the_session() {
        let devices = one_device(1 << 20);
        let mine = SessionMemory::new(devices.clone());
        let theirs = SessionMemory::new(devices);
        let a = theirs.alloc(0, 4096).unwrap();
        assert_eq!(
            mine.write(a, &[1, 2, 3]).unwrap_err().code,
            code::INVALID_VALUE
        );
        assert_eq!(mine.free(a).unwrap_err().code, code::INVALID_VALUE);
        theirs.write(a + 4094, &[7, 8]).unwrap();
        assert!(
            theirs.write(a + 4095, &[7, 8]).is_err(),
            "overrun by one byte"
        );
        assert_eq!(theirs.read(a + 4094, 2).unwrap(), vec![7, 8]);
    }

    #[test]
    fn fill_and_copy() {
        let session = SessionMemory::new(one_device(1 << 20));
        let a = session.alloc(0, 64).unwrap();
        session.fill(a + 8, 0xBEEF, 2, 4).unwrap();
        session.copy(a + 32, a + 8, 8).unwrap();
        let bytes = session.read(a, 48).unwrap();
        assert_eq!(
            &bytes[8..16],
            &[0xEF, 0xBE, 0xEF, 0xBE, 0xEF, 0xBE, 0xEF, 0xBE]
        );
        assert_eq!(&bytes[32..40], &bytes[8..16]);
        assert_eq!(bytes[16], 0);
        assert!(
            session.fill(a + 1, 1, 4, 1).is_err(),
            "misaligned 32-bit memset"
        );
    }
}

/// Fills `bytes` (a whole number of patterns) with copies of `pattern`, at memset
/// speed: one pattern, then ever larger copies of what is already filled.
fn fill_pattern(bytes: &mut [u8], pattern: &[u8]) {
    if let [byte] = pattern {
        bytes.fill(*byte);
        return;
    }
    let Some(first) = bytes.get_mut(..pattern.len()) else {
        return;
    };
    first.copy_from_slice(pattern);
    let mut filled = pattern.len();
    while filled < bytes.len() {
        let n = filled.min(bytes.len() - filled);
        bytes.copy_within(..n, filled);
        filled += n;
    }
}

#[cfg(test)]
mod fill_tests {
    use super::fill_pattern;

    #[test]
    fn patterns_repeat_to_the_end() {
        for (len, pattern) in [
            (0, &[1u8][..]),
            (7, &[9]),
            (10, &[1, 2]),
            (12, &[1, 2, 3, 4]),
        ] {
            let mut bytes = vec![0u8; len];
            fill_pattern(&mut bytes, pattern);
            let want: Vec<u8> = pattern.iter().copied().cycle().take(len).collect();
            assert_eq!(bytes, want, "{len} {pattern:?}");
        }
    }
}
