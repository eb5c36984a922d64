//! Clang offload bundles: the container hipcc puts a program's device code in.
//!
//! Plain layout: the 24-byte magic `__CLANG_OFFLOAD_BUNDLE__`, a `u64` entry count,
//! then per entry `{u64 offset from the bundle's start, u64 size, u64 id length,
//! id}`, then the entries' bytes. Entry IDs are `<kind>-<triple>[-<target ID>]`
//! (`hipv4-amdgcn-amd-amdhsa--gfx90a:xnack+`, `host-x86_64-unknown-linux`).
//!
//! Compressed ("CCOB"): `"CCOB"`, `u16` version, `u16` method (0 zlib, 1 zstd),
//! the whole compressed bundle's size (`u32` in version 2, `u64` in 3, absent in
//! 1), the uncompressed size (`u32` in 1 and 2, `u64` in 3), a `u64` hash, then
//! the compressed plain bundle. The header's sizes, not a scan for the next
//! magic (which can occur inside compressed data), say where a bundle ends.

use std::io::Read;

use crate::{AmdgpuError, Bytes};

/// The plain bundle's magic.
pub const MAGIC: &[u8; 24] = b"__CLANG_OFFLOAD_BUNDLE__";
/// The compressed bundle's magic.
pub const COMPRESSED_MAGIC: &[u8; 4] = b"CCOB";
/// The most bytes a bundle may decompress to: far above any one program's (a
/// rocSPARSE bundle is about 12 MB), far below what would hurt the client.
pub const MAX_UNCOMPRESSED: u64 = 1 << 30;

/// One entry of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntry {
    /// `<kind>-<triple>[-<target ID>]`.
    pub id: String,
    /// Its bytes (a code object's ELF; empty for the host entry).
    pub data: Vec<u8>,
}

impl BundleEntry {
    /// `hipv4`, `hip`, `hcc`, `host`, `openmp`.
    pub fn kind(&self) -> &str {
        self.id.split('-').next().unwrap_or("")
    }

    /// The target ID after the four-part triple (`gfx90a:xnack+`), if any.
    pub fn target(&self) -> Option<&str> {
        let (_, rest) = self.id.split_once('-')?;
        let parts: Vec<&str> = rest.splitn(5, '-').collect();
        parts.get(4).copied().filter(|t| !t.is_empty())
    }
}

/// The entries of a bundle, plain or compressed, that starts at `bytes[0]`
/// (bytes after its end are ignored).
pub fn parse_bundle(bytes: &[u8]) -> Result<Vec<BundleEntry>, AmdgpuError> {
    if bytes.starts_with(COMPRESSED_MAGIC) {
        let plain = decompress(bytes)?;
        return parse_plain(&plain);
    }
    parse_plain(bytes)
}

fn parse_plain(bytes: &[u8]) -> Result<Vec<BundleEntry>, AmdgpuError> {
    let b = Bytes(bytes);
    if !bytes.starts_with(MAGIC) {
        return Err(AmdgpuError::NotAnImage("no offload bundle magic".into()));
    }
    let count = b.u64(24, "entry count")?;
    // Each entry's header takes 24 bytes at least: a count the bytes cannot hold
    // is refused before anything is allocated for it.
    if count > (bytes.len() as u64).saturating_sub(32) / 24 {
        return Err(AmdgpuError::Truncated("entry headers"));
    }
    let mut at = 32u64;
    let mut entries = Vec::with_capacity(count as usize);
    // Entries do not overlap: all of them together are no longer than the
    // bundle, so copying them costs no more than its size.
    let mut copied = 0u64;
    for _ in 0..count {
        let offset = b.u64(at, "entry offset")?;
        let size = b.u64(at + 8, "entry size")?;
        let id_len = b.u64(at + 16, "entry id length")?;
        let id = b.slice(at + 24, id_len, "entry id")?;
        let id = std::str::from_utf8(id)
            .map_err(|_| AmdgpuError::NotAnImage("an entry id that is not text".into()))?;
        let data = b.slice(offset, size, "entry data")?;
        copied += size;
        if copied > bytes.len() as u64 {
            return Err(AmdgpuError::NotAnImage(
                "entries that overlap (together longer than the bundle)".into(),
            ));
        }
        entries.push(BundleEntry {
            id: id.to_owned(),
            data: data.to_vec(),
        });
        at += 24 + id_len;
    }
    Ok(entries)
}

/// The layout of a compressed bundle's header.
struct Compressed {
    method: u16,
    header: u64,
    total: Option<u64>,
    uncompressed: u64,
}

fn compressed_header(bytes: &[u8]) -> Result<Compressed, AmdgpuError> {
    let b = Bytes(bytes);
    let version = b.u16(4, "compressed bundle version")?;
    let method = b.u16(6, "compressed bundle method")?;
    let (header, total, uncompressed) = match version {
        1 => (20, None, u64::from(b.u32(8, "uncompressed size")?)),
        2 => (
            24,
            Some(u64::from(b.u32(8, "compressed size")?)),
            u64::from(b.u32(12, "uncompressed size")?),
        ),
        3 => (
            32,
            Some(b.u64(8, "compressed size")?),
            b.u64(16, "uncompressed size")?,
        ),
        v => {
            return Err(AmdgpuError::Compression(format!(
                "version {v} (1, 2 and 3 are known)"
            )))
        }
    };
    if total.is_some_and(|t| t < header) {
        return Err(AmdgpuError::Compression(
            "a size smaller than its header".into(),
        ));
    }
    Ok(Compressed {
        method,
        header,
        total,
        uncompressed,
    })
}

/// The plain bundle a compressed one holds.
fn decompress(bytes: &[u8]) -> Result<Vec<u8>, AmdgpuError> {
    let h = compressed_header(bytes)?;
    if h.uncompressed > MAX_UNCOMPRESSED {
        return Err(AmdgpuError::Compression(format!(
            "{} bytes uncompressed, over the limit of {MAX_UNCOMPRESSED}",
            h.uncompressed
        )));
    }
    let end = h.total.unwrap_or(bytes.len() as u64);
    let len = end
        .checked_sub(h.header)
        .ok_or(AmdgpuError::Truncated("compressed bundle header"))?;
    let payload = Bytes(bytes).slice(h.header, len, "compressed payload")?;
    // One byte more than declared is read, to tell a longer stream from an exact one.
    let limit = h.uncompressed + 1;
    let mut out = Vec::new();
    let read = match h.method {
        0 => flate2::read::ZlibDecoder::new(payload)
            .take(limit)
            .read_to_end(&mut out),
        1 => {
            let mut source = payload;
            let decoder = ruzstd::decoding::StreamingDecoder::new(&mut source)
                .map_err(|e| AmdgpuError::Compression(e.to_string()))?;
            decoder.take(limit).read_to_end(&mut out)
        }
        m => {
            return Err(AmdgpuError::Compression(format!(
                "method {m} (0 zlib and 1 zstd are known)"
            )))
        }
    };
    read.map_err(|e| AmdgpuError::Compression(e.to_string()))?;
    if out.len() as u64 != h.uncompressed {
        return Err(AmdgpuError::Compression(format!(
            "{} bytes decompressed, the header says {}",
            out.len(),
            h.uncompressed
        )));
    }
    Ok(out)
}

/// The length of the image at `bytes[0]`, for callers given an image without
/// its size (`hipModuleLoadData`): a code object's ELF, a plain bundle or a
/// compressed one (of version 2 or 3; version 1 does not record its size).
pub fn image_len(bytes: &[u8]) -> Result<usize, AmdgpuError> {
    let len = if bytes.starts_with(COMPRESSED_MAGIC) {
        compressed_header(bytes)?.total.ok_or_else(|| {
            AmdgpuError::Compression(
                "a version 1 compressed bundle does not record its size".into(),
            )
        })?
    } else if bytes.starts_with(MAGIC) {
        plain_len(bytes)?
    } else if bytes.starts_with(crate::code_object::ELF_MAGIC) {
        crate::code_object::elf_len(bytes)?
    } else {
        return Err(AmdgpuError::NotAnImage(
            "neither an offload bundle nor an ELF".into(),
        ));
    };
    if len > bytes.len() as u64 {
        return Err(AmdgpuError::Truncated("image"));
    }
    Ok(len as usize)
}

/// Where a plain bundle's last byte is: its headers', or its entries' end.
fn plain_len(bytes: &[u8]) -> Result<u64, AmdgpuError> {
    let b = Bytes(bytes);
    let count = b.u64(24, "entry count")?;
    if count > (bytes.len() as u64).saturating_sub(32) / 24 {
        return Err(AmdgpuError::Truncated("entry headers"));
    }
    let mut at = 32u64;
    let mut end = 32u64;
    for _ in 0..count {
        let offset = b.u64(at, "entry offset")?;
        let size = b.u64(at + 8, "entry size")?;
        let id_len = b.u64(at + 16, "entry id length")?;
        at = at
            .checked_add(24)
            .and_then(|a| a.checked_add(id_len))
            .ok_or(AmdgpuError::Truncated("entry id"))?;
        let data_end = offset
            .checked_add(size)
            .ok_or(AmdgpuError::Truncated("entry data"))?;
        end = end.max(at).max(data_end);
    }
    Ok(end)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain bundle of `entries`, each entry's data aligned to 16 bytes.
    pub(crate) fn plain(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let headers: usize = entries.iter().map(|(id, _)| 24 + id.len()).sum();
        let mut data_at = (32 + headers).next_multiple_of(16);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        let mut places = Vec::new();
        for (id, data) in entries {
            out.extend_from_slice(&(data_at as u64).to_le_bytes());
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(&(id.len() as u64).to_le_bytes());
            out.extend_from_slice(id.as_bytes());
            places.push(data_at);
            data_at = (data_at + data.len()).next_multiple_of(16);
        }
        for ((_, data), at) in entries.iter().zip(places) {
            out.resize(at, 0);
            out.extend_from_slice(data);
        }
        out
    }

    /// A compressed bundle of `plain` (version 2 or 3, method 0 or 1).
    pub(crate) fn compressed(plain: &[u8], version: u16, method: u16) -> Vec<u8> {
        let payload = match method {
            0 => {
                use std::io::Write;
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            _ => ruzstd::encoding::compress_to_vec(
                plain,
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        };
        let mut out = COMPRESSED_MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&method.to_le_bytes());
        if version == 3 {
            out.extend_from_slice(&((32 + payload.len()) as u64).to_le_bytes());
            out.extend_from_slice(&(plain.len() as u64).to_le_bytes());
        } else {
            out.extend_from_slice(&((24 + payload.len()) as u32).to_le_bytes());
            out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn a_plain_bundle_reads_back_with_kinds_and_targets() {
        let b = plain(&[
            ("host-x86_64-unknown-linux", b""),
            ("hipv4-amdgcn-amd-amdhsa--gfx90a:xnack+", b"first"),
            ("hipv4-amdgcn-amd-amdhsa--gfx1030", b"second!"),
        ]);
        let entries = parse_bundle(&b).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!((entries[0].kind(), entries[0].target()), ("host", None));
        assert_eq!(entries[1].target(), Some("gfx90a:xnack+"));
        assert_eq!(entries[1].data, b"first");
        assert_eq!(
            (entries[2].kind(), entries[2].target()),
            ("hipv4", Some("gfx1030"))
        );
        // The length is the last entry's end; what follows is not the bundle's.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xee; 100]);
        assert_eq!(image_len(&longer).unwrap(), b.len());
    }

    #[test]
    fn compressed_bundles_of_every_version_and_method_read_back() {
        let inner = plain(&[("hipv4-amdgcn-amd-amdhsa--gfx90a", &[7u8; 5000][..])]);
        for (version, method) in [(2, 0), (2, 1), (3, 0), (3, 1)] {
            let c = compressed(&inner, version, method);
            let entries = parse_bundle(&c).unwrap();
            assert_eq!(entries[0].data, [7u8; 5000], "v{version} m{method}");
            let mut followed = c.clone();
            followed.extend_from_slice(b"CCOB and more");
            assert_eq!(
                image_len(&followed).unwrap(),
                c.len(),
                "v{version} m{method}"
            );
        }
    }

    #[test]
    fn hostile_bundles_are_errors_not_panics_or_huge_allocations() {
        let good = plain(&[("hipv4-amdgcn-amd-amdhsa--gfx90a", b"code")]);
        for cut in 0..good.len() {
            let _ = parse_bundle(&good[..cut]);
            let _ = image_len(&good[..cut]);
        }
        // A count of 2^60 entries in a 40-byte input.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse_bundle(&huge),
            Err(AmdgpuError::Truncated("entry headers"))
        );
        // An entry whose data lies past the end, or wraps around.
        for offset in [1u64 << 40, u64::MAX - 2] {
            let mut b = good.clone();
            b[32..40].copy_from_slice(&offset.to_le_bytes());
            assert!(parse_bundle(&b).is_err());
            assert!(image_len(&b).is_err());
        }
        // Many entries all naming the whole bundle: refused, not copied each time.
        let mut overlapping = MAGIC.to_vec();
        overlapping.extend_from_slice(&100u64.to_le_bytes());
        let whole = 32 + 100 * 25;
        for _ in 0..100 {
            overlapping.extend_from_slice(&0u64.to_le_bytes());
            overlapping.extend_from_slice(&(whole as u64).to_le_bytes());
            overlapping.extend_from_slice(&1u64.to_le_bytes());
            overlapping.push(b'x');
        }
        assert!(matches!(
            parse_bundle(&overlapping),
            Err(AmdgpuError::NotAnImage(_))
        ));
        // A version 1 compressed bundle shorter than its header.
        for len in 8..20 {
            let mut v1 = COMPRESSED_MAGIC.to_vec();
            v1.extend_from_slice(&1u16.to_le_bytes());
            v1.extend_from_slice(&0u16.to_le_bytes());
            v1.resize(len, 0);
            assert!(parse_bundle(&v1).is_err(), "{len}");
        }
        // A compressed bundle claiming 2^40 bytes, or more than it holds.
        let inner = plain(&[("hipv4-amdgcn-amd-amdhsa--gfx90a", b"code")]);
        let mut c = compressed(&inner, 3, 1);
        c[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(parse_bundle(&c), Err(AmdgpuError::Compression(_))));
        let mut c = compressed(&inner, 2, 0);
        c[12..16].copy_from_slice(&((inner.len() - 1) as u32).to_le_bytes());
        assert!(matches!(parse_bundle(&c), Err(AmdgpuError::Compression(_))));
        let mut c = compressed(&inner, 2, 7);
        c[6..8].copy_from_slice(&7u16.to_le_bytes());
        assert!(matches!(parse_bundle(&c), Err(AmdgpuError::Compression(_))));
        assert!(image_len(b"neither").is_err());
    }
}
