//! Kernel parameter layouts from a cubin's `.nv.info.<kernel>` sections
//! (docs/FACTS-cuda-driver.md §6): what a server falls back to when the driver has no
//! `cuFuncGetParamInfo` (before CUDA 12.4).
//!
//! Each `.nv.info.<mangled name>` section is a stream of attribute records, `u8 format,
//! u8 attribute` followed by the value: formats 1–3 carry an inline `u16` (4 bytes in
//! all), format 4 (`EIFMT_SVAL`) a `u16` length and that many bytes. Every
//! `EIATTR_KPARAM_INFO` (0x17) record describes one parameter: `u32 index, u16 ordinal,
//! u16 offset, u32 packed` with the size in bytes in bits 18–31 of `packed`.

use std::collections::HashMap;

use crate::elf::ELF_MAGIC;
use crate::{to_len, Bytes, FatbinError};

/// `EIFMT_SVAL`: a record with a `u16` length and that many bytes.
const EIFMT_SVAL: u8 = 4;
/// `EIATTR_KPARAM_INFO`: one kernel parameter.
const EIATTR_KPARAM_INFO: u8 = 0x17;
/// Prefix of the per-kernel attribute sections.
const NV_INFO_PREFIX: &str = ".nv.info.";
/// Parameter ordinals beyond this are treated as corrupt (the PTX limit is far lower).
const MAX_PARAMS: usize = 1 << 14;

/// One section of a 64-bit ELF: name and file contents.
pub(crate) struct Section<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) data: &'a [u8],
}

/// Every section of a 64-bit little-endian ELF with its name (from `.shstrtab`).
pub(crate) fn sections(elf: &[u8]) -> Result<Vec<Section<'_>>, FatbinError> {
    let b = Bytes { data: elf };
    let ident = b.slice("ELF header", 0, 16)?;
    if ident[..4] != ELF_MAGIC[..] {
        return Err(FatbinError::UnknownFormat);
    }
    if ident[4] != 2 {
        return Err(FatbinError::Unsupported("32-bit ELF cubin"));
    }
    if ident[5] != 1 {
        return Err(FatbinError::Unsupported("big-endian ELF"));
    }
    let shoff = to_len("ELF e_shoff", b.u64("ELF header", 0x28)?)?;
    let shentsize = usize::from(b.u16("ELF header", 0x3a)?);
    let shnum = usize::from(b.u16("ELF header", 0x3c)?);
    let shstrndx = usize::from(b.u16("ELF header", 0x3e)?);
    if shoff == 0 || shnum == 0 {
        return Ok(Vec::new());
    }
    if shentsize < 0x40 {
        return Err(FatbinError::Invalid {
            what: "ELF e_shentsize",
            value: shentsize as u64,
        });
    }
    let header = |i: usize| -> Result<(u32, &[u8]), FatbinError> {
        let base = shoff
            .checked_add(i * shentsize)
            .ok_or(FatbinError::Invalid {
                what: "ELF section header offset",
                value: shoff as u64,
            })?;
        let name = b.u32("ELF section header", base)?;
        let sh_type = b.u32("ELF section header", base + 4)?;
        let data = if sh_type == 8 {
            &[][..] // SHT_NOBITS: no file contents
        } else {
            let offset = to_len("ELF sh_offset", b.u64("ELF section header", base + 0x18)?)?;
            let size = to_len("ELF sh_size", b.u64("ELF section header", base + 0x20)?)?;
            b.slice("ELF section", offset, size)?
        };
        Ok((name, data))
    };
    if shstrndx >= shnum {
        return Err(FatbinError::Invalid {
            what: "ELF e_shstrndx",
            value: shstrndx as u64,
        });
    }
    let (_, names) = header(shstrndx)?;
    (0..shnum)
        .map(|i| {
            let (name, data) = header(i)?;
            let rest = names.get(name as usize..).ok_or(FatbinError::Invalid {
                what: "ELF section name offset",
                value: u64::from(name),
            })?;
            let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
            Ok(Section {
                name: &rest[..end],
                data,
            })
        })
        .collect()
}

/// The parameters one `.nv.info.<kernel>` section describes, in ordinal order.
fn kernel_params(info: &[u8]) -> Result<Vec<(u32, u32)>, FatbinError> {
    let b = Bytes { data: info };
    let mut params: Vec<(u16, u32, u32)> = Vec::new();
    let mut pos = 0;
    while pos < info.len() {
        let head = b.slice(".nv.info record", pos, 4)?;
        let (format, attribute) = (head[0], head[1]);
        let len = match format {
            1..=3 => 0,
            EIFMT_SVAL => usize::from(u16::from_le_bytes([head[2], head[3]])),
            other => {
                return Err(FatbinError::Invalid {
                    what: ".nv.info record format",
                    value: u64::from(other),
                })
            }
        };
        let value = b.slice(".nv.info record value", pos + 4, len)?;
        if format == EIFMT_SVAL && attribute == EIATTR_KPARAM_INFO {
            if len < 12 {
                return Err(FatbinError::Invalid {
                    what: "EIATTR_KPARAM_INFO length",
                    value: len as u64,
                });
            }
            let v = Bytes { data: value };
            let ordinal = v.u16("EIATTR_KPARAM_INFO", 4)?;
            let offset = v.u16("EIATTR_KPARAM_INFO", 6)?;
            let packed = v.u32("EIATTR_KPARAM_INFO", 8)?;
            params.push((ordinal, u32::from(offset), packed >> 18));
        }
        pos += 4 + len;
    }
    // Records come in descending ordinal order; put them in declaration order and
    // insist on exactly one record per ordinal 0..n.
    params.sort_by_key(|p| p.0);
    if params.len() > MAX_PARAMS {
        return Err(FatbinError::TooLarge {
            what: "kernel parameter count",
            size: params.len() as u64,
        });
    }
    for (i, p) in params.iter().enumerate() {
        if usize::from(p.0) != i {
            return Err(FatbinError::Invalid {
                what: "EIATTR_KPARAM_INFO ordinal",
                value: u64::from(p.0),
            });
        }
    }
    Ok(params.into_iter().map(|(_, o, s)| (o, s)).collect())
}

/// The parameter layout `(offset, size)` of every kernel in a cubin, by mangled name,
/// read from its `.nv.info.<name>` sections. A kernel without parameters maps to an
/// empty list.
pub fn cubin_param_layouts(elf: &[u8]) -> Result<HashMap<String, Vec<(u32, u32)>>, FatbinError> {
    let mut layouts = HashMap::new();
    for section in sections(elf)? {
        let Some(name) = section.name.strip_prefix(NV_INFO_PREFIX.as_bytes()) else {
            continue;
        };
        let name = std::str::from_utf8(name).map_err(|_| FatbinError::Invalid {
            what: ".nv.info section name (not UTF-8)",
            value: 0,
        })?;
        layouts.insert(name.to_owned(), kernel_params(section.data)?);
    }
    Ok(layouts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `EIATTR_KPARAM_INFO` record.
    fn kparam(ordinal: u16, offset: u16, size: u32) -> Vec<u8> {
        let mut r = vec![EIFMT_SVAL, EIATTR_KPARAM_INFO, 12, 0];
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&ordinal.to_le_bytes());
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&((size << 18) | (0x1f << 12)).to_le_bytes());
        r
    }

    #[test]
    fn records_in_descending_order_give_the_declared_layout() {
        // The cuBLAS example of FACTS §6: a 48-byte struct, then three pointers.
        let mut info = vec![3, 0x50, 0, 0]; // an HVAL record to skip
        for (ordinal, offset, size) in [(3, 0x40, 8), (2, 0x38, 8), (1, 0x30, 8), (0, 0, 0x30)] {
            info.extend(kparam(ordinal, offset, size));
        }
        info.extend([3, 0x19, 0x48, 0]); // CBANK_PARAM_SIZE
        assert_eq!(
            kernel_params(&info).unwrap(),
            vec![(0, 0x30), (0x30, 8), (0x38, 8), (0x40, 8)]
        );
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let mut info = kparam(0, 0, 8);
        info.truncate(10);
        assert!(kernel_params(&info).is_err(), "truncated value");
        assert!(kernel_params(&[9, 0x17, 0, 0]).is_err(), "unknown format");
        let mut gap = kparam(0, 0, 8);
        gap.extend(kparam(2, 8, 8));
        assert!(kernel_params(&gap).is_err(), "missing ordinal 1");
        assert!(kernel_params(&[1, 2]).is_err(), "half a record");
        assert_eq!(kernel_params(&[]).unwrap(), vec![]);
        assert!(cubin_param_layouts(b"\x7fELF").is_err());
        assert!(cubin_param_layouts(b"not an elf at all").is_err());
    }

    /// `(offset, size)` of each `.entry`'s parameters, laid out as FACTS §6 says PTX
    /// does (each at the next offset aligned to its natural or `.align` alignment).
    fn ptx_layouts(ptx: &str) -> HashMap<String, Vec<(u32, u32)>> {
        let mut out = HashMap::new();
        let mut lines = ptx.lines();
        while let Some(line) = lines.next() {
            let Some(rest) = line.trim().strip_prefix(".visible .entry ") else {
                continue;
            };
            let name = rest.trim_end_matches('(').trim().to_owned();
            let (mut params, mut end) = (Vec::new(), 0u32);
            for param in lines.by_ref() {
                let param = param.trim();
                if param.starts_with(')') {
                    break;
                }
                let words: Vec<&str> = param.trim_end_matches(',').split_whitespace().collect();
                let (align, size) = match words.iter().position(|&w| w == ".align") {
                    Some(i) => {
                        let align: u32 = words[i + 1].parse().unwrap();
                        let count = words.last().unwrap().split('[').nth(1).unwrap();
                        (align, count.trim_end_matches(']').parse().unwrap())
                    }
                    None => {
                        let bits: u32 = words[1][2..].parse().unwrap();
                        (bits / 8, bits / 8)
                    }
                };
                let offset = end.div_ceil(align) * align;
                params.push((offset, size));
                end = offset + size;
            }
            out.insert(name, params);
        }
        out
    }

    #[test]
    fn the_nvcc_cubin_agrees_with_its_ptx() {
        let cubin = include_bytes!("../tests/fixtures/kernel.cubin");
        let layouts = cubin_param_layouts(cubin).unwrap();
        let ptx = ptx_layouts(include_str!("../tests/fixtures/kernel.ptx"));
        assert_eq!(ptx.len(), 2, "{ptx:?}");
        assert_eq!(layouts, ptx);
        assert_eq!(layouts["axpy"], vec![(0, 4), (8, 8), (16, 8), (24, 4)]);
        assert_eq!(layouts["fill"], vec![(0, 8), (8, 4), (12, 4)]);
    }

    #[test]
    fn every_cubin_of_a_multi_arch_fatbin_agrees() {
        let entries =
            crate::parse_fatbin(include_bytes!("../tests/fixtures/multi.fatbin")).unwrap();
        let ptx = ptx_layouts(include_str!("../tests/fixtures/kernel.ptx"));
        let mut cubins = 0;
        for e in entries.iter().filter(|e| e.kind == crate::EntryKind::Elf) {
            assert_eq!(cubin_param_layouts(&e.data).unwrap(), ptx, "sm_{}", e.arch);
            cubins += 1;
        }
        assert_eq!(cubins, 3);
    }
}
