//! A code object laid out as the HIP runtime loads it: its `PT_LOAD` segments at
//! their virtual addresses in one device allocation (code reaches its variables
//! PC-relative, so code and data keep their distances), its dynamic symbols, and
//! the dynamic relocations that hold absolute addresses.

use crate::code_object::elf_header;
use crate::{AmdgpuError, Bytes};

const PT_LOAD: u32 = 1;
const SHT_DYNSYM: u32 = 11;
const SHT_RELA: u32 = 4;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
/// `R_AMDGPU_ABS64`: S + A.
const R_AMDGPU_ABS64: u32 = 3;
/// `R_AMDGPU_RELATIVE64`: B + A.
const R_AMDGPU_RELATIVE64: u32 = 13;
/// The most a code object may take once laid out; a larger one is refused before
/// anything is allocated for it.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// One dynamic symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    /// Its address relative to the load base.
    pub value: u64,
    pub size: u64,
    /// A function (`STT_FUNC`) rather than an object.
    pub function: bool,
}

/// A code object ready to be copied to a load base.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The loaded bytes from address 0 to the end of the last segment (zeros
    /// where no segment is, and for `.bss`).
    pub image: Vec<u8>,
    pub symbols: Vec<Symbol>,
    /// `(address, length)` of each executable segment.
    pub code: Vec<(u64, u64)>,
    /// `(offset, symbol value or None for base-relative, addend)` of each
    /// 64-bit absolute address to write at load.
    relocations: Vec<(u64, Option<u64>, i64)>,
}

impl Layout {
    /// The image for load base `base`, its addresses filled in.
    pub fn relocated(&self, base: u64) -> Vec<u8> {
        let mut image = self.image.clone();
        for &(offset, symbol, addend) in &self.relocations {
            let value = base
                .wrapping_add(symbol.unwrap_or(0))
                .wrapping_add(addend as u64);
            let at = offset as usize;
            image[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        image
    }

    /// The symbol called `name`.
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.name == name)
    }

    /// Module-scope variables: objects other than kernel descriptors.
    pub fn variables(&self) -> impl Iterator<Item = &Symbol> {
        self.symbols
            .iter()
            .filter(|s| !s.function && !s.name.ends_with(".kd") && !s.name.is_empty())
    }
}

struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

fn sections(bytes: &[u8]) -> Result<Vec<Section>, AmdgpuError> {
    let (shoff, shnum) = elf_header(bytes)?;
    let b = Bytes(bytes);
    (0..shnum)
        .map(|i| {
            let at = shoff + i * 64;
            Ok(Section {
                kind: b.u32(at + 4, "sh_type")?,
                offset: b.u64(at + 0x18, "sh_offset")?,
                size: b.u64(at + 0x20, "sh_size")?,
                link: b.u32(at + 0x28, "sh_link")?,
                entsize: b.u64(at + 0x38, "sh_entsize")?,
            })
        })
        .collect()
}

fn c_string(table: &[u8], at: u64) -> String {
    let tail = table.get(at as usize..).unwrap_or(&[]);
    let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

/// Lays out a code object (a raw ELF, as the bundle holds it).
pub fn layout(bytes: &[u8]) -> Result<Layout, AmdgpuError> {
    elf_header(bytes)?;
    let b = Bytes(bytes);
    let phoff = b.u64(0x20, "e_phoff")?;
    let phentsize = u64::from(b.u16(0x36, "e_phentsize")?);
    let phnum = u64::from(b.u16(0x38, "e_phnum")?);
    if phnum > 0 && phentsize != 56 {
        return Err(AmdgpuError::NotAnImage(format!(
            "program headers of {phentsize} bytes"
        )));
    }
    let mut segments = Vec::new();
    let mut code = Vec::new();
    let mut end = 0u64;
    for i in 0..phnum {
        let at = phoff + i * 56;
        if b.u32(at, "p_type")? != PT_LOAD {
            continue;
        }
        let executable = b.u32(at + 4, "p_flags")? & 1 == 1;
        let offset = b.u64(at + 8, "p_offset")?;
        let vaddr = b.u64(at + 16, "p_vaddr")?;
        let filesz = b.u64(at + 32, "p_filesz")?;
        let memsz = b.u64(at + 40, "p_memsz")?;
        let seg_end = vaddr
            .checked_add(memsz.max(filesz))
            .filter(|&e| e <= MAX_IMAGE_BYTES)
            .ok_or_else(|| {
                AmdgpuError::NotAnImage(format!(
                    "a segment at {vaddr:#x} of {memsz} bytes: past the {MAX_IMAGE_BYTES}-byte limit"
                ))
            })?;
        let data = b.slice(offset, filesz, "segment")?;
        end = end.max(seg_end);
        if executable {
            code.push((vaddr, filesz));
        }
        segments.push((vaddr, data));
    }
    if segments.is_empty() {
        return Err(AmdgpuError::NotAnImage("no loadable segment".into()));
    }
    let mut image = vec![0u8; end as usize];
    for (vaddr, data) in segments {
        image[vaddr as usize..vaddr as usize + data.len()].copy_from_slice(data);
    }
    let all = sections(bytes)?;
    let mut symbols = Vec::new();
    let mut dynsym = None;
    for (index, s) in all.iter().enumerate() {
        if s.kind != SHT_DYNSYM {
            continue;
        }
        dynsym = Some(index);
        if s.entsize != 24 {
            return Err(AmdgpuError::NotAnImage(format!(
                "symbols of {} bytes",
                s.entsize
            )));
        }
        let strtab = all
            .get(s.link as usize)
            .ok_or(AmdgpuError::Truncated("symbol names"))?;
        let names = b.slice(strtab.offset, strtab.size, "symbol names")?;
        let table = b.slice(s.offset, s.size, "symbols")?;
        let t = Bytes(table);
        for i in 1..s.size / 24 {
            let at = i * 24;
            let info = t.slice(at + 4, 1, "st_info")?[0];
            let kind = info & 0xf;
            if kind != STT_OBJECT && kind != STT_FUNC {
                continue;
            }
            let value = t.u64(at + 8, "st_value")?;
            let size = t.u64(at + 16, "st_size")?;
            if value.checked_add(size).is_none_or(|e| e > end) {
                continue;
            }
            symbols.push(Symbol {
                name: c_string(names, u64::from(t.u32(at, "st_name")?)),
                value,
                size,
                function: kind == STT_FUNC,
            });
        }
    }
    let mut relocations = Vec::new();
    for s in all.iter().filter(|s| s.kind == SHT_RELA) {
        let table = b.slice(s.offset, s.size, "relocations")?;
        let t = Bytes(table);
        for i in 0..s.size / 24 {
            let at = i * 24;
            let offset = t.u64(at, "r_offset")?;
            let info = t.u64(at + 8, "r_info")?;
            let addend = t.u64(at + 16, "r_addend")? as i64;
            if offset.checked_add(8).is_none_or(|e| e > end) {
                return Err(AmdgpuError::NotAnImage(format!(
                    "a relocation at {offset:#x}, outside the image"
                )));
            }
            let symbol = match (info & 0xffff_ffff) as u32 {
                R_AMDGPU_RELATIVE64 => None,
                R_AMDGPU_ABS64 => {
                    let index = info >> 32;
                    // Symbols are read from the one dynamic symbol table.
                    let Some(table) = dynsym.map(|d| &all[d]) else {
                        return Err(AmdgpuError::NotAnImage("a relocation without symbols".into()));
                    };
                    let entry = Bytes(b.slice(table.offset, table.size, "symbols")?);
                    Some(entry.u64(index * 24 + 8, "relocated symbol")?)
                }
                other => {
                    return Err(AmdgpuError::NotAnImage(format!(
                        "relocation type {other} (only R_AMDGPU_ABS64 and R_AMDGPU_RELATIVE64 are applied)"
                    )))
                }
            };
            relocations.push((offset, symbol, addend));
        }
    }
    Ok(Layout {
        image,
        symbols,
        code,
        relocations,
    })
}
