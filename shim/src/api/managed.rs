//! Managed memory (`cuMemAllocManaged`): one address that the application uses on
//! the host and in kernels, kept coherent across the network by this client.
//!
//! The server holds the device copy, an ordinary allocation. Here the same
//! address is mapped in this process, over a memory file with a second, private
//! view through which only this module reads and writes. Each host page is in
//! one of three states, and its protection says which:
//!
//! - **on the device** (no access): the device may have changed it; the first
//!   host access faults, and the fault fetches it (and the pages after it still
//!   on the device, a window that doubles while the faults run sequentially);
//! - **shared** (read-only): both copies are equal; a write faults and makes the
//!   page dirty;
//! - **dirty** (read-write): the host copy is newer.
//!
//! Before device work that could see a page (any launch or graph launch for
//! memory attached globally or to the launch's stream; a copy or memset for the
//! pages it reads or writes) the dirty pages are written back in that stream,
//! ahead of the work, and the pages the work may change go back to the device.
//! So only pages the host wrote travel to the device, and only pages the host
//! touches after the device may have changed them travel back.
//!
//! The device reports `concurrentManagedAccess` 0, as GPUs without hardware
//! page faulting do: the host may touch managed memory only while no kernel
//! that can see it runs. A fault fetches in the legacy stream (or the stream the
//! memory is attached to), so a program that reads too early still waits for
//! the work before it instead of seeing stale data. System calls given managed
//! memory whose pages are on the device fail with `EFAULT` (the kernel does not
//! raise the fault here); touch the memory first. Prefetches move pages as
//! asked; advice is kept and reported back but changes nothing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{c_int, c_uint, c_void};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use xpupool_cuda_types::*;
use xpupool_protocol::{Calls, CuError, Request};

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock, stream_arg, Driver};

/// `CU_STREAM_LEGACY`, the server's name for the legacy default stream.
const LEGACY: u64 = 1;
/// `CU_DEVICE_CPU`.
const CPU: CUdevice = -1;
/// `CU_DEVICE_INVALID`.
const INVALID: CUdevice = -2;
/// The first fetch after a miss, and the most one sequential fault fetches.
const FIRST_WINDOW: usize = 64 << 10;
const LARGEST_WINDOW: usize = 4 << 20;
/// Allocations tried when the address the server chose is taken in this process.
const PLACEMENT_TRIES: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Page {
    Device,
    Shared,
    Dirty,
}

/// Which kernels may see an allocation (`cuStreamAttachMemAsync`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attach {
    Global,
    Host,
    Single(u64),
}

impl Attach {
    fn seen_by(self, stream: u64) -> bool {
        match self {
            Attach::Global => true,
            Attach::Host => false,
            Attach::Single(s) => s == stream,
        }
    }
}

/// The advice and prefetches of one page: devices, [`CPU`], or [`INVALID`] for none.
#[derive(Clone, Copy)]
struct Hints {
    read_mostly: bool,
    preferred: CUdevice,
    prefetched: CUdevice,
    /// Bit `d` for device `d`, bit 63 for the CPU.
    accessed_by: u64,
}

const NO_HINTS: Hints = Hints {
    read_mostly: false,
    preferred: INVALID,
    prefetched: INVALID,
    accessed_by: 0,
};

/// What one allocation cost: for the debug log when it is freed.
#[derive(Default, Clone, Copy)]
struct Figures {
    faults: u64,
    fetched: u64,
    written_back: u64,
}

struct Region {
    /// Bytes the application asked for.
    len: u64,
    /// Bytes mapped: `len` in whole pages.
    span: usize,
    /// The server allocation's address (at or below the region's).
    allocation: u64,
    /// This module's read-write view of the same pages.
    shadow: usize,
    /// Whether the address lies in the device range this process reserved, which
    /// it goes back to when freed.
    in_reservation: bool,
    pages: Vec<Page>,
    hints: Vec<Hints>,
    attach: Attach,
    /// What the allocation's flags gave: where `attach` goes back to when the
    /// stream it was attached to is destroyed.
    allocated: Attach,
    /// Where the last fetch ended, and how far the next one reaches.
    last_end: usize,
    window: usize,
    figures: Figures,
}

// SAFETY: `shadow` is the address of a mapping this module owns; every access to it
// happens under the registry's lock.
unsafe impl Send for Region {}

/// Live managed allocations by address; their count, read without the lock on
/// every stream operation.
fn regions() -> &'static Mutex<BTreeMap<u64, Region>> {
    static REGIONS: OnceLock<Mutex<BTreeMap<u64, Region>>> = OnceLock::new();
    REGIONS.get_or_init(Default::default)
}
static LIVE: AtomicUsize = AtomicUsize::new(0);

fn page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *SIZE.get_or_init(|| {
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
    })
}

fn protect(address: u64, len: usize, prot: c_int) -> Res {
    // SAFETY: only ever called on pages of a region this module mapped.
    if unsafe { libc::mprotect(address as *mut c_void, len, prot) } != 0 {
        tracing::error!(
            "managed memory: mprotect of {len} bytes at {address:#x} failed: {}",
            std::io::Error::last_os_error()
        );
        return Err(CUDA_ERROR_UNKNOWN);
    }
    Ok(())
}

/// The runs of consecutive pages in `range` for which `pick` holds.
fn runs(pages: &[Page], range: Range<usize>, pick: impl Fn(Page) -> bool) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for p in range {
        if !pick(pages[p]) {
            continue;
        }
        match out.last_mut() {
            Some(run) if run.end == p => run.end = p + 1,
            _ => out.push(p..p + 1),
        }
    }
    out
}

impl Region {
    fn resident(&self) -> bool {
        self.pages.iter().any(|&p| p != Page::Device)
    }

    /// The pages `[address, address+len)` covers, if it overlaps this region at `base`.
    fn pages_of(&self, base: u64, address: u64, len: u64) -> Option<Range<usize>> {
        let end = address.saturating_add(len).min(base + self.span as u64);
        let start = address.max(base);
        (start < end).then(|| {
            let ps = page_size() as u64;
            ((start - base) / ps) as usize..(end - base).div_ceil(ps) as usize
        })
    }

    /// The shadow view of pages `run`.
    fn shadow(&mut self, run: &Range<usize>) -> &mut [u8] {
        let ps = page_size();
        // SAFETY: the shadow view maps `span` bytes read-write for as long as the
        // region lives, and `run` lies inside it.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self.shadow + run.start * ps) as *mut u8,
                run.len() * ps,
            )
        }
    }

    /// Before device work in `stream` that reads pages `range` (`keep`: the host
    /// copy stays valid) or may change them: the host stops writing them (or
    /// touching them at all), their dirty pages are written back ahead of the
    /// work, and they are marked accordingly.
    fn hand_over(
        &mut self,
        d: &Driver,
        base: u64,
        range: Range<usize>,
        keep: bool,
        stream: u64,
    ) -> Res {
        let ps = page_size();
        let (prot, stopping): (c_int, fn(Page) -> bool) = if keep {
            (libc::PROT_READ, |p| p == Page::Dirty)
        } else {
            (libc::PROT_NONE, |p| p != Page::Device)
        };
        for run in runs(&self.pages, range.clone(), stopping) {
            protect(base + (run.start * ps) as u64, run.len() * ps, prot)?;
        }
        for run in runs(&self.pages, range.clone(), |p| p == Page::Dirty) {
            let address = base + (run.start * ps) as u64;
            d.conn
                .copy_to_device(address, self.shadow(&run), stream)
                .map_err(fail)?;
            self.figures.written_back += (run.len() * ps) as u64;
            for p in run {
                self.pages[p] = Page::Shared;
            }
        }
        if !keep {
            self.pages[range].fill(Page::Device);
        }
        Ok(())
    }

    /// Fetches pages `run` (all on the device) into the host copy, read-only.
    fn fetch(&mut self, d: &Driver, base: u64, run: Range<usize>) -> Res<()> {
        let ps = page_size();
        let stream = match self.attach {
            Attach::Single(s) => s,
            _ => LEGACY,
        };
        let address = base + (run.start * ps) as u64;
        d.conn
            .copy_from_device(address, self.shadow(&run), stream)
            .map_err(fail)?;
        self.figures.fetched += (run.len() * ps) as u64;
        protect(address, run.len() * ps, libc::PROT_READ)?;
        self.pages[run].fill(Page::Shared);
        Ok(())
    }
}

/// What a stream operation does with managed memory, for [`before`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Touch {
    /// A kernel or a graph: it may read and change any memory it can see.
    Launch,
    /// Reads `[address, address+len)` on the device.
    Read(u64, u64),
    /// Changes `[address, address+len)` on the device.
    Write(u64, u64),
}

/// Called before device work in `stream` is sent: makes the managed memory it
/// can see current on the device, and takes it from the host where the work may
/// change it.
pub(crate) fn before(touch: Touch, stream: u64) -> Res {
    if LIVE.load(Ordering::Acquire) == 0 {
        return Ok(());
    }
    let d = driver()?;
    let mut regions = lock(regions());
    for (&base, region) in regions.iter_mut() {
        let (range, keep) = match touch {
            Touch::Launch if region.attach.seen_by(stream) && region.resident() => {
                (0..region.pages.len(), false)
            }
            Touch::Launch => continue,
            Touch::Read(address, len) | Touch::Write(address, len) => {
                match region.pages_of(base, address, len) {
                    Some(range) => (range, matches!(touch, Touch::Read(..))),
                    None => continue,
                }
            }
        };
        region.hand_over(d, base, range, keep, stream)?;
    }
    Ok(())
}

/// [`before`] for a request about to be sent.
pub(crate) fn before_request(request: &Request) -> Res {
    if LIVE.load(Ordering::Acquire) == 0 {
        return Ok(());
    }
    match *request {
        Request::LaunchKernel { stream, .. }
        | Request::LaunchCooperative { stream, .. }
        | Request::LaunchClustered { stream, .. } => before(Touch::Launch, stream),
        Request::Memset {
            dst,
            elem_size,
            count,
            stream,
            ..
        } => before(
            Touch::Write(dst, count.saturating_mul(elem_size as u64)),
            stream,
        ),
        Request::Memset2D {
            dst,
            pitch,
            elem_size,
            width,
            height,
            stream,
            ..
        } => {
            let span = height
                .saturating_sub(1)
                .saturating_mul(pitch)
                .saturating_add(width.saturating_mul(elem_size as u64));
            before(Touch::Write(dst, span), stream)
        }
        Request::MemcpyDtoD {
            dst,
            src,
            len,
            stream,
        } => {
            before(Touch::Read(src, len), stream)?;
            before(Touch::Write(dst, len), stream)
        }
        Request::MemcpyArrayDevice {
            region,
            ptr,
            pitch,
            slice_pitch,
            to_array,
            stream,
            ..
        } => {
            // A span past the address space touches everything from `ptr` on.
            let span = region.linear_span(pitch, slice_pitch).unwrap_or(u64::MAX);
            let touch = if to_array {
                Touch::Read(ptr, span)
            } else {
                Touch::Write(ptr, span)
            };
            before(touch, stream)
        }
        _ => Ok(()),
    }
}

/// Whether `address` is managed memory.
pub(crate) fn contains(address: u64) -> bool {
    if LIVE.load(Ordering::Acquire) == 0 {
        return false;
    }
    let regions = lock(regions());
    regions
        .range(..=address)
        .next_back()
        .is_some_and(|(&base, r)| address < base + r.len.max(1))
}

/// Forgets the managed allocation at `address` (`cuMemFree`), unmapping it here;
/// returns the server allocation to free, or `None` if it is not managed memory.
pub(crate) fn release(address: u64) -> Option<u64> {
    if LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let region = lock(regions()).remove(&address)?;
    LIVE.fetch_sub(1, Ordering::AcqRel);
    let Figures {
        faults,
        fetched,
        written_back,
    } = region.figures;
    tracing::debug!(
        "managed memory at {address:#x} ({} bytes) freed: {faults} faults, {fetched} bytes fetched, {written_back} bytes written back",
        region.len
    );
    unmap(address, region.span, region.shadow, region.in_reservation);
    Some(region.allocation)
}

fn unmap(address: u64, span: usize, shadow: usize, in_reservation: bool) {
    // SAFETY: both views were mapped by `map` with these sizes; inside the reserved
    // device range the address goes back to being reserved, as it was.
    unsafe {
        libc::munmap(shadow as *mut c_void, span);
        if in_reservation {
            libc::mmap(
                address as *mut c_void,
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            );
        } else {
            libc::munmap(address as *mut c_void, span);
        }
    }
}

enum MapError {
    /// Something of this process already lives at the address.
    Taken,
    Failed(std::io::Error),
}

/// Maps `span` bytes of a fresh memory file at `address` (read-only) and
/// anywhere (read-write, the shadow view); returns the shadow's address.
fn map(address: u64, span: usize, in_reservation: bool) -> Result<usize, MapError> {
    let last = || MapError::Failed(std::io::Error::last_os_error());
    // SAFETY: plain system calls on a descriptor made here; the fixed mapping
    // either replaces this process's own reservation of the device range, or
    // (MAP_FIXED_NOREPLACE) nothing.
    unsafe {
        let fd = libc::memfd_create(c"xpupool-managed".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return Err(last());
        }
        if libc::ftruncate(fd, span as libc::off_t) != 0 {
            let e = last();
            libc::close(fd);
            return Err(e);
        }
        let shadow = libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if shadow == libc::MAP_FAILED {
            let e = last();
            libc::close(fd);
            return Err(e);
        }
        let fixed = if in_reservation {
            libc::MAP_FIXED
        } else {
            libc::MAP_FIXED_NOREPLACE
        };
        let user = libc::mmap(
            address as *mut c_void,
            span,
            libc::PROT_READ,
            libc::MAP_SHARED | fixed,
            fd,
            0,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if user == libc::MAP_FAILED || user as u64 != address {
            if user != libc::MAP_FAILED {
                // A kernel that does not know MAP_FIXED_NOREPLACE mapped it elsewhere.
                libc::munmap(user, span);
            }
            libc::munmap(shadow, span);
            return Err(match error.raw_os_error() {
                Some(libc::EEXIST) | None => MapError::Taken,
                _ if user != libc::MAP_FAILED => MapError::Taken,
                _ => MapError::Failed(error),
            });
        }
        Ok(shadow as usize)
    }
}

fn alloc(out: *mut CUdeviceptr, bytes: usize, flags: c_uint) -> Res {
    if out.is_null() || bytes == 0 || !matches!(flags, CU_MEM_ATTACH_GLOBAL | CU_MEM_ATTACH_HOST) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    let device = d.current_context()?.device as u32;
    install_fault_handler()?;
    let ps = page_size();
    let span = bytes
        .checked_next_multiple_of(ps)
        .filter(|span| span.checked_add(ps).is_some())
        .ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    let (start, end) = d.conn.welcome.device_address_range;
    // The server's allocation, with a page to spare so that a page boundary lies
    // inside it: host pages are the unit of coherence, and none may hold two
    // allocations.
    let mut taken = Vec::new();
    let placed = loop {
        let allocation = match d.conn.mem_alloc(device, (span + ps) as u64) {
            Ok(a) => a,
            Err(e) => break Err(fail(e)),
        };
        let address = allocation.next_multiple_of(ps as u64);
        let in_reservation = d.device_ranges.fixed_range_reserved()
            && address >= start
            && address + span as u64 <= end;
        match map(address, span, in_reservation) {
            Ok(shadow) => break Ok((allocation, address, shadow, in_reservation)),
            Err(MapError::Taken) if taken.len() + 1 < PLACEMENT_TRIES => taken.push(allocation),
            Err(MapError::Taken) => {
                taken.push(allocation);
                tracing::warn!(
                    "managed memory: {PLACEMENT_TRIES} device addresses in a row are taken in this process"
                );
                break Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
            Err(MapError::Failed(e)) => {
                taken.push(allocation);
                tracing::warn!("managed memory: cannot map {span} bytes here: {e}");
                break Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
        }
    };
    for allocation in taken {
        let _ = d.conn.post(Request::MemFree { ptr: allocation });
    }
    let (allocation, address, shadow, in_reservation) = placed?;
    // The device copy starts as the fresh host pages do: zero.
    let zeroed = d
        .conn
        .post(Request::Memset {
            dst: address,
            value: 0,
            elem_size: 1,
            count: span as u64,
            stream: LEGACY,
        })
        .and_then(|()| d.conn.stream_synchronize(LEGACY));
    if let Err(e) = zeroed {
        unmap(address, span, shadow, in_reservation);
        let _ = d.conn.post(Request::MemFree { ptr: allocation });
        return Err(fail(e));
    }
    let pages = span / ps;
    let allocated = if flags == CU_MEM_ATTACH_HOST {
        Attach::Host
    } else {
        Attach::Global
    };
    lock(regions()).insert(
        address,
        Region {
            len: bytes as u64,
            span,
            allocation,
            shadow,
            in_reservation,
            pages: vec![Page::Shared; pages],
            hints: vec![NO_HINTS; pages],
            attach: allocated,
            allocated,
            last_end: usize::MAX,
            window: FIRST_WINDOW,
            figures: Figures::default(),
        },
    );
    LIVE.fetch_add(1, Ordering::AcqRel);
    // Mapped here by `map` already.
    d.device_ranges.add_mapped(address, bytes as u64, true);
    put(out, address)
}

/// Runs `f` on the region holding all of `[address, address+len)`.
fn with_region<T>(address: u64, len: u64, f: impl FnOnce(u64, &mut Region) -> Res<T>) -> Res<T> {
    let mut regions = lock(regions());
    let (&base, region) = regions
        .range_mut(..=address)
        .next_back()
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let end = address.checked_add(len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if end > base + region.len {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    f(base, region)
}

/// A location as the driver's older entry points name one: a device, or [`CPU`].
fn checked_location(d: &Driver, device: CUdevice) -> Res<CUdevice> {
    if device == CPU || (0..d.device_count() as CUdevice).contains(&device) {
        Ok(device)
    } else {
        Err(CUDA_ERROR_INVALID_DEVICE)
    }
}

/// A `CUmemLocation` as a device or [`CPU`].
fn location(d: &Driver, location: CUmemLocation) -> Res<CUdevice> {
    match location.type_ {
        // SAFETY: `id` is the union's only member.
        CU_MEM_LOCATION_TYPE_DEVICE => checked_location(d, unsafe { location.__bindgen_anon_1.id }),
        CU_MEM_LOCATION_TYPE_HOST
        | CU_MEM_LOCATION_TYPE_HOST_NUMA
        | CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT => Ok(CPU),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// `cuMemPrefetchAsync`: to the CPU, the pages are fetched once the stream's work
/// before it is done; to a device, the host's changes are written back in the
/// stream (the host copy stays readable until work that may change it).
fn prefetch(address: u64, len: usize, to: CUdevice, stream: u64) -> Res {
    let d = driver()?;
    d.stream_device(stream)?;
    if len == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if to == CPU {
        super::graph::not_in_capture(stream)?;
        d.conn.stream_synchronize(stream).map_err(fail)?;
    } else if super::graph::status(stream).0 != CU_STREAM_CAPTURE_STATUS_NONE {
        // A hint with nothing to record in a graph.
        return Ok(());
    }
    with_region(address, len as u64, |base, region| {
        let range = region
            .pages_of(base, address, len as u64)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if to == CPU {
            for run in runs(&region.pages, range.clone(), |p| p == Page::Device) {
                region.fetch(d, base, run)?;
            }
        } else {
            region.hand_over(d, base, range.clone(), true, stream)?;
        }
        for h in &mut region.hints[range] {
            h.prefetched = to;
        }
        Ok(())
    })
}

fn advise(address: u64, len: usize, advice: CUmem_advise, at: CUdevice) -> Res {
    let device_bit = |at: CUdevice| {
        if at == CPU {
            1u64 << 63
        } else {
            1u64 << (at as u32).min(62)
        }
    };
    with_region(address, len as u64, |base, region| {
        let range = region
            .pages_of(base, address, len.max(1) as u64)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let change: Box<dyn Fn(&mut Hints)> = match advice {
            CU_MEM_ADVISE_SET_READ_MOSTLY => Box::new(|h| h.read_mostly = true),
            CU_MEM_ADVISE_UNSET_READ_MOSTLY => Box::new(|h| h.read_mostly = false),
            CU_MEM_ADVISE_SET_PREFERRED_LOCATION => Box::new(move |h| h.preferred = at),
            CU_MEM_ADVISE_UNSET_PREFERRED_LOCATION => Box::new(|h| h.preferred = INVALID),
            CU_MEM_ADVISE_SET_ACCESSED_BY => Box::new(move |h| h.accessed_by |= device_bit(at)),
            CU_MEM_ADVISE_UNSET_ACCESSED_BY => Box::new(move |h| h.accessed_by &= !device_bit(at)),
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        };
        region.hints[range].iter_mut().for_each(change);
        Ok(())
    })
}

/// `cuMemRangeGetAttribute`: what every page of the range has in common.
fn range_attribute(
    data: *mut c_void,
    size: usize,
    attribute: CUmem_range_attribute,
    address: u64,
    len: usize,
) -> Res {
    if data.is_null() || len == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver()?;
    let hints = with_region(address, len as u64, |base, region| {
        let range = region
            .pages_of(base, address, len as u64)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        Ok(region.hints[range].to_vec())
    })?;
    let common = |pick: fn(&Hints) -> CUdevice| {
        let first = pick(&hints[0]);
        if hints.iter().all(|h| pick(h) == first) {
            first
        } else {
            INVALID
        }
    };
    let one = |value: i32| {
        if size != 4 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(data.cast::<i32>(), value)
    };
    // (type, id) of a location: devices by ordinal, the host with id 0.
    let typed = |at: CUdevice| match at {
        CPU => (CU_MEM_LOCATION_TYPE_HOST as i32, 0),
        INVALID => (CU_MEM_LOCATION_TYPE_INVALID as i32, INVALID),
        device => (CU_MEM_LOCATION_TYPE_DEVICE as i32, device),
    };
    match attribute {
        CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY => one(hints.iter().all(|h| h.read_mostly) as i32),
        CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION => one(common(|h| h.preferred)),
        CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION => one(common(|h| h.prefetched)),
        CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_TYPE => one(typed(common(|h| h.preferred)).0),
        CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_ID => one(typed(common(|h| h.preferred)).1),
        CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION_TYPE => {
            one(typed(common(|h| h.prefetched)).0)
        }
        CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION_ID => one(typed(common(|h| h.prefetched)).1),
        CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY => {
            if size == 0 || !size.is_multiple_of(4) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let all = hints.iter().fold(u64::MAX, |acc, h| acc & h.accessed_by);
            let mut found: Vec<CUdevice> = (0..d.device_count().min(63) as CUdevice)
                .filter(|&dev| all & (1 << dev) != 0)
                .collect();
            if all & (1 << 63) != 0 {
                found.push(CPU);
            }
            let slots = size / 4;
            for i in 0..slots {
                // SAFETY: the caller gave `size` writable bytes at `data`.
                unsafe { *data.cast::<i32>().add(i) = found.get(i).copied().unwrap_or(INVALID) };
            }
            Ok(())
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

fn attach(stream: u64, address: u64, len: usize, flags: c_uint) -> Res {
    let d = driver()?;
    d.stream_device(stream)?;
    let attach = match flags {
        CU_MEM_ATTACH_GLOBAL => Attach::Global,
        CU_MEM_ATTACH_HOST => Attach::Host,
        // Attaching to the legacy stream would attach to every stream.
        CU_MEM_ATTACH_SINGLE if stream > 1 => Attach::Single(stream),
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    super::graph::not_in_capture(stream)?;
    let mut regions = lock(regions());
    let region = regions.get_mut(&address).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if len != 0 && len as u64 != region.len {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    region.attach = attach;
    Ok(())
}

/// A stream is destroyed: memory attached to it alone goes back to the
/// visibility its allocation gave it.
pub(crate) fn stream_destroyed(stream: u64) {
    if LIVE.load(Ordering::Acquire) == 0 {
        return;
    }
    for region in lock(regions()).values_mut() {
        if region.attach == Attach::Single(stream) {
            region.attach = region.allocated;
        }
    }
}

// ---- the page fault handler ----

/// The SIGSEGV action that was there before ours, to pass on faults that are
/// not managed memory's.
fn previous_action() -> &'static Mutex<Option<libc::sigaction>> {
    static PREVIOUS: OnceLock<Mutex<Option<libc::sigaction>>> = OnceLock::new();
    PREVIOUS.get_or_init(Default::default)
}

thread_local! {
    /// While this thread runs the previous handler: the siginfo it was given and
    /// where `on_fault`'s frame was on the stack; zeros otherwise. A call back
    /// into ours with that siginfo from deeper down is the previous handler
    /// handing the fault back. Any other (a new fault, after that handler left
    /// by `siglongjmp` and never cleared this) has a siginfo of its own.
    static PASSING_ON: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Puts our SIGSEGV handler first, passing what is not ours to the handler it
/// replaces. Checked at each allocation: a runtime that installs its own later
/// (Python's faulthandler, a JVM) is put behind ours again. The look and the
/// install happen under one lock, so two threads allocating at once cannot
/// save our own handler as the one to pass faults on to.
fn install_fault_handler() -> Res {
    let mut saved = lock(previous_action());
    // SAFETY: sigaction with valid, fully initialised structures.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut current);
        if current.sa_sigaction == on_fault as *const () as usize {
            return Ok(());
        }
        let mut ours: libc::sigaction = std::mem::zeroed();
        ours.sa_sigaction = on_fault as *const () as usize;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut ours.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, &ours, &mut previous) != 0 {
            tracing::warn!(
                "managed memory: cannot install the page fault handler: {}",
                std::io::Error::last_os_error()
            );
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        if previous.sa_sigaction != on_fault as *const () as usize {
            *saved = Some(previous);
        }
    }
    Ok(())
}

enum Fault {
    Handled,
    NotOurs,
    Failed(String),
}

extern "C" fn on_fault(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSEGV.
    let address = unsafe { (*info).si_addr() } as u64;
    // A fault on a page mapped without access (SEGV_ACCERR) can be managed
    // memory's; one on an unmapped address (SEGV_MAPERR) never is.
    // SAFETY: as above.
    let ours = unsafe { (*info).si_code } == SEGV_ACCERR;
    let outcome = if ours {
        std::panic::catch_unwind(|| fault(address)).unwrap_or(Fault::NotOurs)
    } else {
        Fault::NotOurs
    };
    match outcome {
        Fault::Handled => {}
        Fault::NotOurs => pass_on(signal, info, context, &address as *const u64 as usize),
        Fault::Failed(reason) => {
            let message = format!(
                "xpupool: managed memory at {address:#x} could not be fetched from the server ({reason}); the program cannot go on\n"
            );
            // SAFETY: writing a buffer we own to stderr.
            unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
            default_action();
        }
    }
}

/// The fault again, under the default action: the program ends as it would have.
fn default_action() {
    // SAFETY: resetting a signal's disposition.
    unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
}

/// `si_code` of a fault on a mapped page the access is not allowed to.
const SEGV_ACCERR: c_int = 2;

/// Calls the handler ours replaced, as the kernel would have: with its mask
/// blocked, and reset first where it asked for `SA_RESETHAND`. `here` is an
/// address in `on_fault`'s frame. (Its `SA_ONSTACK` is not honoured: it runs on
/// whatever stack ours runs on.)
fn pass_on(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void, here: usize) {
    let previous = {
        let mut saved = lock(previous_action());
        let previous = *saved;
        if let Some(p) = saved
            .as_mut()
            .filter(|p| p.sa_flags & libc::SA_RESETHAND != 0)
        {
            p.sa_sigaction = libc::SIG_DFL;
        }
        previous
    };
    let Some(previous) = previous else {
        return default_action();
    };
    let handler = previous.sa_sigaction;
    let (outer_info, outer_here) = PASSING_ON.get();
    // The stack grows down: the same fault, in a frame below the one that
    // passed it on, is that handler calling back into ours.
    let handed_back = outer_info == info as usize && here < outer_here;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN || handed_back {
        return default_action();
    }
    PASSING_ON.set((info as usize, here));
    // SAFETY: the handler the process had installed, called as the kernel would
    // have called it, under the mask it asked for (sigprocmask with valid sets):
    // its own, and SIGSEGV unblocked where it asked for SA_NODEFER.
    unsafe {
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &previous.sa_mask, &mut before);
        if previous.sa_flags & libc::SA_NODEFER != 0 {
            let mut segv: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut segv);
            libc::sigaddset(&mut segv, libc::SIGSEGV);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &segv, std::ptr::null_mut());
        }
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                std::mem::transmute(handler);
            f(signal, info, context);
        } else {
            let f: extern "C" fn(c_int) = std::mem::transmute(handler);
            f(signal);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
    }
    PASSING_ON.set((0, 0));
}

/// Serves a host access to a managed page: a page on the device is fetched
/// (with the pages after it, the window growing while the faults run in
/// order), a shared page written to becomes dirty.
fn fault(address: u64) -> Fault {
    if LIVE.load(Ordering::Acquire) == 0 {
        return Fault::NotOurs;
    }
    let Ok(d) = driver() else {
        return Fault::NotOurs;
    };
    let ps = page_size();
    let mut regions = lock(regions());
    let Some((&base, region)) = regions.range_mut(..=address).next_back() else {
        return Fault::NotOurs;
    };
    if address >= base + region.span as u64 {
        return Fault::NotOurs;
    }
    region.figures.faults += 1;
    let p = ((address - base) / ps as u64) as usize;
    let page = base + (p * ps) as u64;
    let outcome = match region.pages[p] {
        Page::Device => {
            region.window = if p == region.last_end {
                (region.window * 2).min(LARGEST_WINDOW)
            } else {
                FIRST_WINDOW
            };
            let most = region.window / ps;
            let end = (p..region.pages.len())
                .take(most)
                .take_while(|&q| region.pages[q] == Page::Device)
                .last()
                .map_or(p + 1, |q| q + 1);
            region.last_end = end;
            // A copy back also reports an earlier posted operation's error; that
            // one is not the page's, which a second try fetches. The fault has
            // no caller to return it to: it is kept for the next synchronising
            // call, where it would have come out.
            region.fetch(d, base, p..end).or_else(|code| {
                tracing::debug!(
                    "an error of earlier work (CUDA error {code}) came back with a managed-memory fault; fetching again"
                );
                region.fetch(d, base, p..end)?;
                d.conn.defer(CuError::new(
                    code,
                    "an earlier operation failed (reported after a managed-memory fault)",
                ));
                Ok(())
            })
        }
        // A write to a page both sides agree on.
        Page::Shared => protect(page, ps, libc::PROT_READ | libc::PROT_WRITE).map(|()| {
            region.pages[p] = Page::Dirty;
        }),
        // A hand-over that failed half way left it protected: as it was.
        Page::Dirty => protect(page, ps, libc::PROT_READ | libc::PROT_WRITE),
    };
    match outcome {
        Ok(()) => Fault::Handled,
        Err(code) => Fault::Failed(format!("CUDA error {code}")),
    }
}

export! {
    fn cuMemAllocManaged(out: *mut CUdeviceptr, bytes: usize, flags: c_uint) { alloc(out, bytes, flags) }

    fn cuStreamAttachMemAsync(s: CUstream, ptr: CUdeviceptr, len: usize, flags: c_uint) { attach(stream_arg(s, false), ptr, len, flags) }
    fn cuStreamAttachMemAsync_ptsz(s: CUstream, ptr: CUdeviceptr, len: usize, flags: c_uint) { attach(stream_arg(s, true), ptr, len, flags) }

    fn cuMemPrefetchAsync(ptr: CUdeviceptr, len: usize, to: CUdevice, s: CUstream) {
        prefetch(ptr, len, checked_location(driver()?, to)?, stream_arg(s, false))
    }
    fn cuMemPrefetchAsync_ptsz(ptr: CUdeviceptr, len: usize, to: CUdevice, s: CUstream) {
        prefetch(ptr, len, checked_location(driver()?, to)?, stream_arg(s, true))
    }
    fn cuMemPrefetchAsync_v2(ptr: CUdeviceptr, len: usize, to: CUmemLocation, flags: c_uint, s: CUstream) {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        prefetch(ptr, len, location(driver()?, to)?, stream_arg(s, false))
    }
    fn cuMemPrefetchAsync_v2_ptsz(ptr: CUdeviceptr, len: usize, to: CUmemLocation, flags: c_uint, s: CUstream) {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        prefetch(ptr, len, location(driver()?, to)?, stream_arg(s, true))
    }

    fn cuMemAdvise(ptr: CUdeviceptr, len: usize, advice: CUmem_advise, device: CUdevice) {
        advise(ptr, len, advice, checked_location(driver()?, device)?)
    }
    fn cuMemAdvise_v2(ptr: CUdeviceptr, len: usize, advice: CUmem_advise, at: CUmemLocation) {
        advise(ptr, len, advice, location(driver()?, at)?)
    }

    fn cuMemRangeGetAttribute(data: *mut c_void, size: usize, attribute: CUmem_range_attribute, ptr: CUdeviceptr, len: usize) {
        range_attribute(data, size, attribute, ptr, len)
    }
    fn cuMemRangeGetAttributes(data: *mut *mut c_void, sizes: *mut usize, attributes: *mut CUmem_range_attribute, count: usize, ptr: CUdeviceptr, len: usize) {
        if count == 0 || data.is_null() || sizes.is_null() || attributes.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        for i in 0..count {
            // SAFETY: the caller gave `count` entries in each array.
            let (data, size, attribute) = unsafe { (*data.add(i), *sizes.add(i), *attributes.add(i)) };
            range_attribute(data, size, attribute, ptr, len)?;
        }
        Ok(())
    }
}
