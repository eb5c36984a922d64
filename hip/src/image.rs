//! Device code as a HIP program hands it over: the fat binary wrapper hipcc
//! registers, and images given by address alone (`hipModuleLoadData`, the
//! wrapper's bundle): a code object's ELF, a clang offload bundle or a compressed
//! ("CCOB") one, whose size is read from their headers here, touching no byte past
//! the ones those headers say are there. The code object for the device
//! ([`crate::device::GCN_ARCH_NAME`]) is chosen as the HIP runtime chooses it
//! (`xpupool_amdgpu::target`), and only it is sent to the server.

use std::ffi::c_void;

use xpupool_amdgpu::{bundle, code_object, AmdgpuError};

use crate::HipError;

/// `hipErrorInvalidImage`.
pub(crate) const HIP_ERROR_INVALID_IMAGE: HipError = 200;
/// `hipErrorNoBinaryForGpu`.
pub(crate) const HIP_ERROR_NO_BINARY_FOR_GPU: HipError = 209;

/// `__hip_fatbin_wrapper`'s magic ("HIPF") and version.
pub(crate) const WRAPPER_MAGIC: u32 = 0x4849_5046;
pub(crate) const WRAPPER_VERSION: u32 = 1;

/// What hipcc puts in `.hipFatBinSegment` and registers.
#[repr(C)]
pub(crate) struct FatbinWrapper {
    pub(crate) magic: u32,
    pub(crate) version: u32,
    pub(crate) binary: *const u8,
    pub(crate) unused: *const c_void,
}

/// The bundle a wrapper points to, or why it is not a HIP fat binary wrapper.
///
/// # Safety
/// `wrapper` is NULL or points to 24 readable bytes.
pub(crate) unsafe fn wrapper_bundle(wrapper: *const c_void) -> Result<*const u8, String> {
    if wrapper.is_null() {
        return Err("a NULL wrapper".into());
    }
    // SAFETY: the caller's 24 bytes (unaligned reads: hipcc aligns it, but a
    // caller of the API might not).
    let w = unsafe { wrapper.cast::<FatbinWrapper>().read_unaligned() };
    if w.magic != WRAPPER_MAGIC || w.version != WRAPPER_VERSION {
        return Err(format!(
            "magic {:#x}, version {} (a HIP fat binary has {WRAPPER_MAGIC:#x}, version {WRAPPER_VERSION})",
            w.magic, w.version
        ));
    }
    if w.binary.is_null() {
        return Err("its bundle pointer is NULL".into());
    }
    Ok(w.binary)
}

/// The largest image taken from memory without a size (a whole library's
/// `.hip_fatbin` is at most about 1.3 GB; one bundle far less).
const MAX_IMAGE: u64 = 1 << 32;
/// Bundle entries and entry-id lengths beyond these are not headers.
const MAX_ENTRIES: u64 = 1 << 16;
const MAX_ID: u64 = 1 << 12;

/// Reads little-endian fields of an image known only by its address, never
/// past `len` bytes the headers read so far vouch for.
struct Raw(*const u8);

impl Raw {
    /// Whether the image starts with `magic`, reading one byte at a time and no
    /// further than the first that differs (garbage of a few bytes is not over-read).
    unsafe fn starts_with(&self, magic: &[u8]) -> bool {
        // SAFETY: byte i is read only when bytes 0..i matched, so the image goes on.
        magic
            .iter()
            .enumerate()
            .all(|(i, &m)| unsafe { self.0.add(i).read() } == m)
    }

    unsafe fn u16(&self, at: u64) -> u16 {
        // SAFETY: the caller vouches for the bytes.
        unsafe { self.0.add(at as usize).cast::<u16>().read_unaligned() }
    }

    unsafe fn u32(&self, at: u64) -> u32 {
        // SAFETY: as above.
        unsafe { self.0.add(at as usize).cast::<u32>().read_unaligned() }
    }

    unsafe fn u64(&self, at: u64) -> u64 {
        // SAFETY: as above.
        unsafe { self.0.add(at as usize).cast::<u64>().read_unaligned() }
    }
}

fn invalid(why: impl std::fmt::Display) -> String {
    why.to_string()
}

/// The image at `base`, sized by its headers and checked by
/// `xpupool_amdgpu::bundle::image_len`.
///
/// # Safety
/// `base` is NULL or the start of an image the program handed over (whose
/// headers tell the truth about its size, as the HIP runtime also trusts).
pub(crate) unsafe fn image_at<'a>(base: *const u8) -> Result<&'a [u8], String> {
    if base.is_null() {
        return Err("a NULL image".into());
    }
    let raw = Raw(base);
    // SAFETY (every read below): within the bytes the headers read before vouch for.
    let need = unsafe {
        if raw.starts_with(code_object::ELF_MAGIC) {
            elf_extent(&raw)?
        } else if raw.starts_with(bundle::COMPRESSED_MAGIC) {
            // "CCOB", u16 version, u16 method, then (v2) u32 or (v3) u64 total size.
            match raw.u16(4) {
                2 => u64::from(raw.u32(8)),
                3 => raw.u64(8),
                v => {
                    return Err(format!(
                        "a compressed bundle of version {v}, whose size is not recorded"
                    ))
                }
            }
        } else if raw.starts_with(bundle::MAGIC) {
            bundle_extent(&raw)?
        } else {
            return Err("neither a code object, an offload bundle nor a compressed one".into());
        }
    };
    if need > MAX_IMAGE || need == 0 {
        return Err(format!("an image of {need} bytes"));
    }
    // SAFETY: `need` bytes, as the headers say the image has.
    let bytes = unsafe { std::slice::from_raw_parts(base, need as usize) };
    let len = bundle::image_len(bytes).map_err(invalid)?;
    Ok(&bytes[..len.min(bytes.len())])
}

/// An ELF64's extent: its section table's end, or its last section's with bytes.
unsafe fn elf_extent(raw: &Raw) -> Result<u64, String> {
    // SAFETY: an ELF starts with a 64-byte header (class checked first: a 32-bit
    // one's is shorter, and is not code for an AMD GPU anyway).
    let class = unsafe { raw.0.add(4).read() };
    if class != 2 {
        return Err("not an ELF64 file".into());
    }
    let (shoff, shentsize, shnum) = unsafe { (raw.u64(0x28), raw.u16(0x3a), raw.u16(0x3c)) };
    let shnum = u64::from(shnum);
    if shnum != 0 && shentsize != 64 {
        return Err(format!("ELF section headers of {shentsize} bytes"));
    }
    let table_end = shoff
        .checked_add(shnum * 64)
        .filter(|&e| e <= MAX_IMAGE)
        .ok_or_else(|| invalid("ELF section table out of range"))?;
    let mut end = table_end.max(64);
    for i in 0..shnum {
        let at = shoff + i * 64;
        // SAFETY: the section table, which the header says is there.
        let (kind, offset, size) =
            unsafe { (raw.u32(at + 4), raw.u64(at + 0x18), raw.u64(at + 0x20)) };
        const SHT_NOBITS: u32 = 8;
        if kind != SHT_NOBITS {
            let section_end = offset
                .checked_add(size)
                .filter(|&e| e <= MAX_IMAGE)
                .ok_or_else(|| invalid("ELF section out of range"))?;
            end = end.max(section_end);
        }
    }
    Ok(end)
}

/// A plain bundle's extent: its headers', or its entries' end.
unsafe fn bundle_extent(raw: &Raw) -> Result<u64, String> {
    // SAFETY: magic (24 bytes, matched) and the u64 count.
    let count = unsafe { raw.u64(24) };
    if count == 0 || count > MAX_ENTRIES {
        return Err(format!("an offload bundle of {count} entries"));
    }
    let mut at = 32u64;
    let mut end = at;
    // Headers come before every entry's data: reading on past the first data
    // offset seen would be reading garbage (and, for a hostile count, far).
    let mut first_data = MAX_IMAGE;
    for _ in 0..count {
        if at + 24 > first_data {
            return Err(invalid("bundle headers run into an entry's data"));
        }
        // SAFETY: entry headers follow one another, as the count says, and all
        // lie before the first entry's data, which lies in the image.
        let (offset, size, id_len) = unsafe { (raw.u64(at), raw.u64(at + 8), raw.u64(at + 16)) };
        if id_len > MAX_ID {
            return Err(format!("a bundle entry id of {id_len} bytes"));
        }
        at += 24 + id_len;
        let entry_end = offset
            .checked_add(size)
            .filter(|&e| e <= MAX_IMAGE)
            .ok_or_else(|| invalid("bundle entry out of range"))?;
        if size > 0 {
            first_data = first_data.min(offset);
        }
        end = end.max(entry_end).max(at);
    }
    if at > first_data {
        return Err(invalid("bundle headers run into an entry's data"));
    }
    Ok(end)
}

/// The code object in `image` (an ELF, or a bundle's entry for `target`) to send
/// to the server, or the HIP error and why.
pub(crate) fn code_object_for(image: &[u8], target: &str) -> Result<Vec<u8>, (HipError, String)> {
    if image.starts_with(code_object::ELF_MAGIC) {
        return Ok(image.to_vec());
    }
    let entries =
        bundle::parse_bundle(image).map_err(|e| (HIP_ERROR_INVALID_IMAGE, e.to_string()))?;
    match xpupool_amdgpu::code_object_for(&entries, target) {
        Ok(entry) => Ok(entry.data.clone()),
        Err(e @ AmdgpuError::NoBinaryForDevice { .. }) => {
            Err((HIP_ERROR_NO_BINARY_FOR_GPU, e.to_string()))
        }
        Err(e) => Err((HIP_ERROR_INVALID_IMAGE, e.to_string())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain bundle of `entries` (id, data), entries 8-aligned after the headers.
    pub(crate) fn bundle(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let header: usize = 32 + entries.iter().map(|(id, _)| 24 + id.len()).sum::<usize>();
        let mut offset = header.next_multiple_of(8);
        let mut out = bundle::MAGIC.to_vec();
        out.extend((entries.len() as u64).to_le_bytes());
        let mut data = Vec::new();
        for (id, bytes) in entries {
            out.extend((offset as u64).to_le_bytes());
            out.extend((bytes.len() as u64).to_le_bytes());
            out.extend((id.len() as u64).to_le_bytes());
            out.extend(id.as_bytes());
            data.push((offset, *bytes));
            offset = (offset + bytes.len()).next_multiple_of(8);
        }
        for (at, bytes) in data {
            out.resize(at, 0);
            out.extend_from_slice(bytes);
        }
        out
    }

    /// A minimal AMD GPU ELF64: header, one PROGBITS section of `body`, section table.
    pub(crate) fn elf(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(code_object::ELF_MAGIC);
        out[4] = 2; // ELF64
        out[5] = 1; // little-endian
        out[6] = 1;
        out[7] = code_object::ELFOSABI_AMDGPU_HSA;
        out[8] = 2;
        out[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        out[18..20].copy_from_slice(&code_object::EM_AMDGPU.to_le_bytes());
        out.extend_from_slice(body);
        let shoff = out.len().next_multiple_of(8) as u64;
        out.resize(shoff as usize, 0);
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        out.extend([0u8; 64]); // the null section
        let mut section = [0u8; 64];
        section[4..8].copy_from_slice(&1u32.to_le_bytes()); // PROGBITS
        section[0x18..0x20].copy_from_slice(&64u64.to_le_bytes());
        section[0x20..0x28].copy_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend(section);
        out
    }

    #[test]
    fn a_wrapper_is_checked_and_gives_its_bundle() {
        let bytes = [1u8; 4];
        let good = FatbinWrapper {
            magic: WRAPPER_MAGIC,
            version: 1,
            binary: bytes.as_ptr(),
            unused: std::ptr::null(),
        };
        let at = |w: &FatbinWrapper| (w as *const FatbinWrapper).cast::<c_void>();
        // SAFETY: live wrappers.
        unsafe {
            assert_eq!(wrapper_bundle(at(&good)), Ok(bytes.as_ptr()));
            let bad_magic = FatbinWrapper {
                magic: 0x466243b1,
                ..good
            };
            assert!(wrapper_bundle(at(&bad_magic))
                .unwrap_err()
                .contains("magic 0x466243b1"));
            let bad_version = FatbinWrapper { version: 2, ..good };
            assert!(wrapper_bundle(at(&bad_version)).is_err());
            let no_bundle = FatbinWrapper {
                binary: std::ptr::null(),
                ..good
            };
            assert!(wrapper_bundle(at(&no_bundle)).is_err());
            assert!(wrapper_bundle(std::ptr::null()).is_err());
        }
    }

    #[test]
    fn images_are_sized_by_their_headers() {
        let code = elf(b"kernel code");
        let image = bundle(&[
            ("host-x86_64-unknown-linux", b""),
            ("hipv4-amdgcn-amd-amdhsa--gfx90a:xnack+", b"other"),
            ("hipv4-amdgcn-amd-amdhsa--gfx90a", &code),
        ]);
        let mut memory = image.clone();
        memory.extend([0xAB; 100]); // what follows the image in memory
                                    // SAFETY: live buffers holding whole images.
        unsafe {
            assert_eq!(image_at(memory.as_ptr()).unwrap(), &image[..]);
            let mut elf_memory = code.clone();
            elf_memory.extend([7; 10]);
            assert_eq!(image_at(elf_memory.as_ptr()).unwrap(), &code[..]);
            let garbage = *b"garbage!\0";
            assert!(image_at(garbage.as_ptr()).is_err());
            // A bundle claiming 60000 entries whose second header would lie in
            // its first entry's data: refused there, not read on for megabytes.
            let mut hostile = b"__CLANG_OFFLOAD_BUNDLE__".to_vec();
            hostile.extend(60000u64.to_le_bytes());
            hostile.extend(64u64.to_le_bytes()); // offset
            hostile.extend(8u64.to_le_bytes()); // size
            hostile.extend(0u64.to_le_bytes()); // id length
            hostile.extend([0u8; 16]);
            assert!(image_at(hostile.as_ptr()).is_err());
            assert!(image_at(std::ptr::null()).is_err());
        }
        // The device's entry, not the first gfx90a one (xnack+ is not the device's).
        let device = crate::device::GCN_ARCH_NAME;
        assert_eq!(code_object_for(&image, device).unwrap(), code);
        assert_eq!(code_object_for(&code, device).unwrap(), code);
        let other = bundle(&[("hipv4-amdgcn-amd-amdhsa--gfx1030", &code)]);
        assert_eq!(
            code_object_for(&other, device).unwrap_err().0,
            HIP_ERROR_NO_BINARY_FOR_GPU
        );
        assert_eq!(
            code_object_for(b"__CLANG_OFFLOAD_BUNDLE__", device)
                .unwrap_err()
                .0,
            HIP_ERROR_INVALID_IMAGE
        );
    }
}
