//! The fatbin container: a 16-byte header and a run of entries.

use std::io::Read;

use crate::{to_len, Bytes, Entry, EntryKind, FatbinError, FATBIN_MAGIC, OLD_FATBIN_MAGIC};

/// Size of the fatbin header.
const HEADER_LEN: usize = 16;
/// Fixed part of an entry header (entries may declare a larger `header_size`).
const ENTRY_FIXED_LEN: usize = 64;

const KIND_PTX: u16 = 1;
const KIND_ELF: u16 = 2;

const FLAG_LZ4: u64 = 0x2000;
const FLAG_ZSTD: u64 = 0x8000;

/// `(header_size, fat_size)` of the fatbin header at the start of `bytes`.
fn header(bytes: &[u8]) -> Result<(usize, usize), FatbinError> {
    let b = Bytes { data: bytes };
    let magic = b.u32("fatbin header", 0)?;
    if magic != FATBIN_MAGIC {
        if magic == OLD_FATBIN_MAGIC {
            return Err(FatbinError::Unsupported("pre-CUDA-4 fatbin (0x1EE55A01)"));
        }
        return Err(FatbinError::BadMagic {
            what: "fatbin",
            found: magic,
        });
    }
    let header_size = usize::from(b.u16("fatbin header", 6)?);
    let fat_size = b.u64("fatbin header", 8)?;
    if header_size < HEADER_LEN {
        return Err(FatbinError::Invalid {
            what: "fatbin header_size",
            value: header_size as u64,
        });
    }
    Ok((header_size, to_len("fatbin fat_size", fat_size)?))
}

/// Total length of the fatbin starting at `bytes` (`header_size + fat_size`): what to copy
/// and ship. Only the header is read, so `bytes` may be just its first 16 bytes.
pub fn fatbin_total_len(bytes: &[u8]) -> Result<usize, FatbinError> {
    let (header_size, fat_size) = header(bytes)?;
    header_size
        .checked_add(fat_size)
        .ok_or(FatbinError::TooLarge {
            what: "fatbin",
            size: u64::MAX,
        })
}

/// Parses the one fatbin at the start of `bytes` (bytes after its `header_size + fat_size`
/// are ignored) into its PTX and cubin entries, decompressed.
///
/// Entries of other kinds (e.g. LTO IR, kind 8) are skipped. Zero padding after the last
/// entry is tolerated.
pub fn parse_fatbin(bytes: &[u8]) -> Result<Vec<Entry>, FatbinError> {
    let total = fatbin_total_len(bytes)?;
    let (header_size, _) = header(bytes)?;
    let all = Bytes { data: bytes };
    let fat = Bytes {
        data: all.slice("fatbin", 0, total)?,
    };
    let mut entries = Vec::new();
    let mut off = header_size;
    while off < total {
        if fat.data[off..].iter().all(|&b| b == 0) {
            break;
        }
        let (entry, next) = parse_entry(&fat, off)?;
        if let Some(entry) = entry {
            entries.push(entry);
        }
        off = next;
    }
    Ok(entries)
}

/// Parses the entry at `off`; returns it (None for kinds we skip) and the next offset.
fn parse_entry(fat: &Bytes<'_>, off: usize) -> Result<(Option<Entry>, usize), FatbinError> {
    const WHAT: &str = "fatbin entry header";
    fat.slice(WHAT, off, ENTRY_FIXED_LEN)?;
    let kind = fat.u16(WHAT, off)?;
    let header_size = fat.u32(WHAT, off + 4)?;
    let padded_size = fat.u64(WHAT, off + 8)?;
    let compressed_size = fat.u32(WHAT, off + 16)?;
    let minor = fat.u16(WHAT, off + 24)?;
    let major = fat.u16(WHAT, off + 26)?;
    let arch = fat.u32(WHAT, off + 28)?;
    let flags = fat.u64(WHAT, off + 40)?;
    let uncompressed_size = fat.u64(WHAT, off + 56)?;

    let header_size = to_len("entry header_size", u64::from(header_size))?;
    if header_size < ENTRY_FIXED_LEN {
        return Err(FatbinError::Invalid {
            what: "entry header_size",
            value: header_size as u64,
        });
    }
    let padded_size = to_len("entry payload", padded_size)?;
    let payload_off = off + header_size;
    let payload = fat.slice("fatbin entry payload", payload_off, padded_size)?;
    let next = payload_off + padded_size;

    let kind = match kind {
        KIND_PTX => EntryKind::Ptx,
        KIND_ELF => EntryKind::Elf,
        _ => return Ok((None, next)),
    };

    let mut data = if flags & (FLAG_LZ4 | FLAG_ZSTD) != 0 {
        let csize = to_len("compressed size", u64::from(compressed_size))?;
        if csize > payload.len() {
            return Err(FatbinError::Invalid {
                what: "entry compressed size",
                value: csize as u64,
            });
        }
        let input = &payload[..csize];
        let usize_ = to_len("uncompressed size", uncompressed_size)?;
        if flags & FLAG_LZ4 != 0 {
            lz4_block(input, usize_)?
        } else {
            zstd_frames(input, usize_)?
        }
    } else {
        payload.to_vec()
    };
    if kind == EntryKind::Ptx {
        while data.last() == Some(&0) {
            data.pop();
        }
    }
    Ok((
        Some(Entry {
            kind,
            arch,
            version: (major, minor),
            data,
        }),
        next,
    ))
}

fn lz4_block(input: &[u8], size: usize) -> Result<Vec<u8>, FatbinError> {
    let err = |detail: String| FatbinError::Decompress {
        codec: "lz4",
        detail,
    };
    // An LZ4 block expands at most ~255:1; refuse sizes no valid block can reach before
    // allocating.
    if size as u64 > (input.len() as u64).saturating_mul(255).saturating_add(64) {
        return Err(err(format!(
            "declared size {size} impossible for {} input bytes",
            input.len()
        )));
    }
    let mut out = vec![0u8; size];
    let n = lz4_flex::block::decompress_into(input, &mut out).map_err(|e| err(e.to_string()))?;
    if n != size {
        return Err(err(format!("decoded {n} bytes, header says {size}")));
    }
    Ok(out)
}

fn zstd_frames(input: &[u8], size: usize) -> Result<Vec<u8>, FatbinError> {
    let err = |detail: String| FatbinError::Decompress {
        codec: "zstd",
        detail,
    };
    // The decoder is third-party code fed untrusted bytes: contain any panic it might raise.
    let result = std::panic::catch_unwind(|| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() && !rest.iter().all(|&b| b == 0) {
            let mut decoder =
                ruzstd::decoding::StreamingDecoder::new(&mut rest).map_err(|e| e.to_string())?;
            let limit = (size - out.len()) as u64 + 1;
            (&mut decoder)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
            if out.len() > size {
                return Err(format!("output exceeds declared size {size}"));
            }
        }
        Ok(out)
    });
    let out = match result {
        Ok(r) => r.map_err(err)?,
        Err(_) => return Err(err("decoder panicked".into())),
    };
    if out.len() != size {
        return Err(err(format!(
            "decoded {} bytes, header says {size}",
            out.len()
        )));
    }
    Ok(out)
}

/// Test helpers building fatbins by hand (also used by the image tests).
#[cfg(test)]
pub(crate) mod build {
    /// Builds one entry: header (with `ext` extra header bytes) + payload padded to 8.
    pub(crate) fn entry(
        kind: u16,
        arch: u32,
        version: (u16, u16),
        flags: u64,
        payload: &[u8],
        uncompressed: u64,
        ext: usize,
    ) -> Vec<u8> {
        let padded = payload.len().div_ceil(8) * 8;
        let header_size = 64 + ext;
        let mut v = Vec::new();
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&0x0101u16.to_le_bytes());
        v.extend_from_slice(&(header_size as u32).to_le_bytes());
        v.extend_from_slice(&(padded as u64).to_le_bytes());
        let compressed = if flags & 0xa000 != 0 {
            payload.len() as u32
        } else {
            0
        };
        v.extend_from_slice(&compressed.to_le_bytes());
        v.extend_from_slice(&0x40u32.to_le_bytes());
        v.extend_from_slice(&version.1.to_le_bytes());
        v.extend_from_slice(&version.0.to_le_bytes());
        v.extend_from_slice(&arch.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&uncompressed.to_le_bytes());
        v.resize(header_size, 0xee);
        v.extend_from_slice(payload);
        v.resize(header_size + padded, 0);
        v
    }

    /// Wraps entries in a fatbin header.
    pub(crate) fn fatbin(entries: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = entries.concat();
        let mut v = Vec::new();
        v.extend_from_slice(&crate::FATBIN_MAGIC.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&16u16.to_le_bytes());
        v.extend_from_slice(&(body.len() as u64).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::build::{entry, fatbin};
    use super::*;

    const PTX: &[u8] = b".version 9.2\n.target sm_90\n.address_size 64\n";

    #[test]
    fn uncompressed_and_header_extension() {
        let mut ptx = PTX.to_vec();
        ptx.extend_from_slice(&[0, 0]);
        let f = fatbin(&[
            entry(2, 90, (1, 8), 0x11, b"\x7fELFcubin", 0, 0),
            entry(1, 90, (9, 2), 0x11, &ptx, 0, 16),
            entry(2, 100, (1, 8), 0x0100_0011, b"\x7fELFbig", 0, 48),
        ]);
        let es = parse_fatbin(&f).unwrap();
        assert_eq!(es.len(), 3);
        assert_eq!(es[0].kind, EntryKind::Elf);
        assert_eq!(es[0].arch, 90);
        assert_eq!(es[0].version, (1, 8));
        // Cubin payloads keep their padding (the driver ignores it).
        assert_eq!(&es[0].data[..9], b"\x7fELFcubin");
        assert_eq!(es[0].data.len(), 16);
        assert_eq!(es[1].kind, EntryKind::Ptx);
        assert_eq!(es[1].version, (9, 2));
        assert_eq!(es[1].data, PTX);
        assert_eq!(es[2].arch, 100);
        assert_eq!(fatbin_total_len(&f).unwrap(), f.len());
        assert_eq!(fatbin_total_len(&f[..16]).unwrap(), f.len());
    }

    #[test]
    fn lz4_and_zstd_entries() {
        let text: Vec<u8> = PTX.iter().cycle().take(3000).copied().collect();
        let mut with_nul = text.clone();
        with_nul.push(0);
        let lz4 = lz4_flex::block::compress(&with_nul);
        let zstd = ruzstd::encoding::compress_to_vec(
            &with_nul[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let n = with_nul.len() as u64;
        let f = fatbin(&[
            entry(1, 80, (9, 2), 0x2011, &lz4, n, 16),
            entry(1, 90, (9, 2), 0x8011, &zstd, n, 16),
        ]);
        let es = parse_fatbin(&f).unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].data, text);
        assert_eq!(es[1].data, text);

        // Wrong declared sizes are errors, not silent truncation.
        let bad = fatbin(&[entry(1, 80, (9, 2), 0x2011, &lz4, n + 1, 0)]);
        assert!(matches!(
            parse_fatbin(&bad),
            Err(FatbinError::Decompress { codec: "lz4", .. })
        ));
        let bad = fatbin(&[entry(1, 80, (9, 2), 0x8011, &zstd, n - 1, 0)]);
        assert!(matches!(
            parse_fatbin(&bad),
            Err(FatbinError::Decompress { codec: "zstd", .. })
        ));
        let bad = fatbin(&[entry(1, 80, (9, 2), 0x2011, &lz4, 1 << 31, 0)]);
        assert!(parse_fatbin(&bad).is_err());
    }

    #[test]
    fn skips_unknown_kinds_and_padding() {
        let mut f = fatbin(&[
            entry(8, 90, (0, 0), 0x11, b"lto-ir..", 0, 56),
            entry(1, 90, (9, 2), 0x11, PTX, 0, 0),
        ]);
        // Zero padding inside fat_size after the last entry.
        let extra = 24u64;
        let fat_size = u64::from_le_bytes(f[8..16].try_into().unwrap()) + extra;
        f[8..16].copy_from_slice(&fat_size.to_le_bytes());
        f.extend(std::iter::repeat_n(0, extra as usize));
        // Trailing bytes after the fatbin are ignored.
        f.extend_from_slice(b"trailing");
        let es = parse_fatbin(&f).unwrap();
        assert_eq!(es.len(), 1);
        assert_eq!(es[0].kind, EntryKind::Ptx);
    }

    #[test]
    fn header_errors() {
        assert!(matches!(
            parse_fatbin(&[0x50, 0xed]),
            Err(FatbinError::Truncated { .. })
        ));
        assert!(matches!(
            parse_fatbin(&[0u8; 16]),
            Err(FatbinError::BadMagic { .. })
        ));
        let mut old = vec![0u8; 16];
        old[..4].copy_from_slice(&OLD_FATBIN_MAGIC.to_le_bytes());
        assert!(matches!(
            parse_fatbin(&old),
            Err(FatbinError::Unsupported(_))
        ));
        let mut f = fatbin(&[entry(1, 90, (9, 2), 0x11, PTX, 0, 0)]);
        f[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse_fatbin(&f),
            Err(FatbinError::TooLarge { .. })
        ));
        let mut f = fatbin(&[entry(1, 90, (9, 2), 0x11, PTX, 0, 0)]);
        f[16 + 4..16 + 8].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(parse_fatbin(&f), Err(FatbinError::Invalid { .. })));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let f = fatbin(&[
            entry(2, 90, (1, 8), 0x11, b"\x7fELFcubin", 0, 0),
            entry(1, 90, (9, 2), 0x11, PTX, 0, 16),
        ]);
        for len in 0..f.len() {
            assert!(parse_fatbin(&f[..len]).is_err(), "len {len}");
        }
    }
}

/// The fatbin reduced to what a device of compute capability `sm` (e.g. 90) can
/// use: its ELF entries for exactly that architecture and the newest PTX entry not
/// newer than it, byte for byte (still compressed). `None` when every entry is
/// needed, or when nothing would remain (the server then says so itself).
pub fn retain_for_device(bytes: &[u8], sm: u32) -> Result<Option<Vec<u8>>, FatbinError> {
    const WHAT: &str = "fatbin entry header";
    let total = fatbin_total_len(bytes)?;
    let (header_size, _) = header(bytes)?;
    let fat = Bytes {
        data: Bytes { data: bytes }.slice("fatbin", 0, total)?,
    };
    // (offset, length, kind, arch) of every entry, without decompressing any.
    let mut entries = Vec::new();
    let mut off = header_size;
    while off < total && !fat.data[off..].iter().all(|&b| b == 0) {
        fat.slice(WHAT, off, ENTRY_FIXED_LEN)?;
        let kind = fat.u16(WHAT, off)?;
        let entry_header = to_len("entry header_size", u64::from(fat.u32(WHAT, off + 4)?))?;
        let payload = to_len("entry payload", fat.u64(WHAT, off + 8)?)?;
        let arch = fat.u32(WHAT, off + 28)?;
        let len = entry_header
            .checked_add(payload)
            .filter(|&len| len >= ENTRY_FIXED_LEN && off + len <= total)
            .ok_or(FatbinError::Invalid {
                what: "fatbin entry size",
                value: payload as u64,
            })?;
        entries.push((off, len, kind, arch));
        off += len;
    }
    let best_ptx = entries
        .iter()
        .filter(|e| e.2 == KIND_PTX && e.3 <= sm)
        .map(|e| e.3)
        .max();
    let keep: Vec<&(usize, usize, u16, u32)> = entries
        .iter()
        .filter(|e| (e.2 == KIND_ELF && e.3 == sm) || (e.2 == KIND_PTX && Some(e.3) == best_ptx))
        .collect();
    if keep.is_empty() || keep.len() == entries.len() {
        return Ok(None);
    }
    let body: usize = keep.iter().map(|e| e.1).sum();
    let mut out = Vec::with_capacity(header_size + body);
    out.extend_from_slice(&bytes[..header_size]);
    out[8..16].copy_from_slice(&(body as u64).to_le_bytes());
    for &&(off, len, _, _) in &keep {
        out.extend_from_slice(&bytes[off..off + len]);
    }
    Ok(Some(out))
}
