//! NVIDIA fatbin containers and the other images a CUDA module-load call accepts.
//!
//! The shim copies whatever a `cuModuleLoadData`-style call (or cudart's registration) hands
//! it into an owned [`Image`] so it can be shipped to a server; the server (or a test) can
//! list the [`Entry`]s inside, decompressed. Layouts follow docs/FACTS-cuda-driver.md §5:
//!
//! * `__fatBinC_Wrapper_t` (magic `0x466243B1`): v1 points at one fatbin, v2 additionally at
//!   a NULL-terminated list of prelinked fatbins;
//! * fatbin header (magic `0xBA55ED50`, `header_size`, `fat_size`) followed by entries with
//!   their own `header_size`, kind PTX (1) or ELF (2), arch, PTX version and flags, payloads
//!   optionally LZ4-block (flag `0x2000`) or ZSTD-frame (flag `0x8000`) compressed.
//!
//! Nothing here panics on malformed input; every parse returns [`FatbinError`].

mod elf;
mod fatbin;
mod globals;
mod image;
pub mod nvinfo;

pub use fatbin::{fatbin_total_len, parse_fatbin, retain_for_device};
pub use globals::{cubin_globals, CubinGlobal};
pub use image::{image_from_bytes, image_from_ptr, Image};
pub use nvinfo::cubin_param_layouts;

/// Magic of `__fatBinC_Wrapper_t` (`FATBINC_MAGIC`).
pub const FATBINC_MAGIC: u32 = 0x4662_43B1;
/// Magic of a fatbin header.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// Magic of the pre-CUDA-4 fatbin format (not supported).
pub const OLD_FATBIN_MAGIC: u32 = 0x1EE5_5A01;

/// Errors from parsing fatbins and images.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FatbinError {
    /// The input ends before a structure it announces.
    #[error("truncated {what}: need {need} bytes at offset {offset}, have {have}")]
    Truncated {
        /// Which structure was being read.
        what: &'static str,
        /// Offset of the structure.
        offset: usize,
        /// Bytes needed from `offset`.
        need: usize,
        /// Bytes available from `offset`.
        have: usize,
    },
    /// A magic number does not match.
    #[error("bad {what} magic {found:#010x}")]
    BadMagic {
        /// Which structure.
        what: &'static str,
        /// The value found.
        found: u32,
    },
    /// A structurally invalid field.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A format that is recognised but not handled.
    #[error("unsupported image: {0}")]
    Unsupported(&'static str),
    /// Not a wrapper, fatbin, ELF or PTX text.
    #[error("unrecognised image format")]
    UnknownFormat,
    /// LZ4 or ZSTD decompression failed or produced the wrong size.
    #[error("{codec} decompression failed: {detail}")]
    Decompress {
        /// `"lz4"` or `"zstd"`.
        codec: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// PTX text that is not UTF-8.
    #[error("PTX text is not valid UTF-8")]
    InvalidUtf8,
    /// A size beyond what this crate will allocate.
    #[error("{what} of {size} bytes exceeds the limit")]
    TooLarge {
        /// Which size.
        what: &'static str,
        /// The size asked for.
        size: u64,
    },
}

/// Kind of a fatbin entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// PTX text (JIT-compiled by the driver).
    Ptx,
    /// A cubin (ELF for one SM).
    Elf,
}

/// One image inside a fatbin, decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// PTX or cubin.
    pub kind: EntryKind,
    /// SM number (`90` for sm_90 / compute_90).
    pub arch: u32,
    /// `(major, minor)`: the PTX ISA version for PTX, the ELF format version for cubins.
    pub version: (u16, u16),
    /// Decompressed payload; PTX without its trailing NULs.
    pub data: Vec<u8>,
}

/// The PTX entry with the largest arch not above `sm` (what the driver JITs for that SM).
pub fn best_ptx(entries: &[Entry], sm: u32) -> Option<&Entry> {
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::Ptx && e.arch <= sm)
        .max_by_key(|e| e.arch)
}

/// The cubin built for exactly `sm`.
pub fn cubin_for(entries: &[Entry], sm: u32) -> Option<&Entry> {
    entries
        .iter()
        .find(|e| e.kind == EntryKind::Elf && e.arch == sm)
}

/// Largest single image or decompressed payload accepted (guards allocations on bad input).
pub(crate) const MAX_IMAGE_BYTES: u64 = 1 << 32;

/// Bounds-checked little-endian reads on a byte slice.
pub(crate) struct Bytes<'a> {
    pub(crate) data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub(crate) fn slice(
        &self,
        what: &'static str,
        offset: usize,
        len: usize,
    ) -> Result<&'a [u8], FatbinError> {
        let have = self.data.len().saturating_sub(offset);
        // An empty slice past the end is out of range too (found by fuzzing).
        if len > have || offset > self.data.len() {
            return Err(FatbinError::Truncated {
                what,
                offset,
                need: len,
                have,
            });
        }
        Ok(&self.data[offset..offset + len])
    }

    pub(crate) fn u16(&self, what: &'static str, offset: usize) -> Result<u16, FatbinError> {
        let s = self.slice(what, offset, 2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    pub(crate) fn u32(&self, what: &'static str, offset: usize) -> Result<u32, FatbinError> {
        let s = self.slice(what, offset, 4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub(crate) fn u64(&self, what: &'static str, offset: usize) -> Result<u64, FatbinError> {
        let s = self.slice(what, offset, 8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Ok(u64::from_le_bytes(b))
    }
}

/// `u64` to `usize`, failing (rather than truncating) on 32-bit hosts or absurd sizes.
pub(crate) fn to_len(what: &'static str, v: u64) -> Result<usize, FatbinError> {
    if v > MAX_IMAGE_BYTES {
        return Err(FatbinError::TooLarge { what, size: v });
    }
    usize::try_from(v).map_err(|_| FatbinError::TooLarge { what, size: v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_slice_past_the_end_is_an_error_not_a_panic() {
        let bytes = Bytes { data: &[1, 2, 3] };
        assert!(bytes.slice("x", 3, 0).is_ok());
        assert!(bytes.slice("x", 4, 0).is_err());
        assert!(bytes.slice("x", usize::MAX, 0).is_err());
    }

    fn e(kind: EntryKind, arch: u32) -> Entry {
        Entry {
            kind,
            arch,
            version: (0, 0),
            data: vec![],
        }
    }

    #[test]
    fn choose_images() {
        let entries = [
            e(EntryKind::Elf, 75),
            e(EntryKind::Ptx, 75),
            e(EntryKind::Elf, 80),
            e(EntryKind::Elf, 90),
            e(EntryKind::Ptx, 90),
        ];
        assert_eq!(best_ptx(&entries, 86).map(|e| e.arch), Some(75));
        assert_eq!(best_ptx(&entries, 90).map(|e| e.arch), Some(90));
        assert_eq!(best_ptx(&entries, 120).map(|e| e.arch), Some(90));
        assert!(best_ptx(&entries, 70).is_none());
        assert_eq!(cubin_for(&entries, 80).map(|e| e.arch), Some(80));
        assert!(cubin_for(&entries, 86).is_none());
        assert!(best_ptx(&[], 90).is_none());
    }
}
