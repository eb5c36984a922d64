//! Just enough ELF to find how long an in-memory cubin is and which SM it targets.

use crate::{image::Mem, to_len, Bytes, FatbinError, MAX_IMAGE_BYTES};

pub(crate) const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const SHT_NOBITS: u32 = 8;
/// Section/program header counts beyond this are treated as corrupt.
const MAX_HEADERS: u64 = 1 << 20;

/// Field offsets for one ELF class.
struct Layout {
    ehsize: usize,
    phoff: usize,
    shoff: usize,
    phentsize: usize,
    word: usize,
    /// (p_offset, p_filesz) within a program header.
    ph_fields: (usize, usize),
    min_phentsize: u64,
    /// (sh_type, sh_offset, sh_size) within a section header.
    sh_fields: (usize, usize, usize),
    min_shentsize: u64,
}

const ELF64: Layout = Layout {
    ehsize: 64,
    phoff: 0x20,
    shoff: 0x28,
    phentsize: 0x36,
    word: 8,
    ph_fields: (0x08, 0x20),
    min_phentsize: 0x38,
    sh_fields: (0x04, 0x18, 0x20),
    min_shentsize: 0x40,
};

const ELF32: Layout = Layout {
    ehsize: 52,
    phoff: 0x1c,
    shoff: 0x20,
    phentsize: 0x2a,
    word: 4,
    ph_fields: (0x04, 0x10),
    min_phentsize: 0x20,
    sh_fields: (0x04, 0x10, 0x14),
    min_shentsize: 0x28,
};

fn word(b: &Bytes<'_>, l: &Layout, off: usize) -> Result<u64, FatbinError> {
    if l.word == 8 {
        b.u64("ELF header", off)
    } else {
        b.u32("ELF header", off).map(u64::from)
    }
}

fn end(what: &'static str, a: u64, b: u64) -> Result<u64, FatbinError> {
    match a.checked_add(b) {
        Some(v) if v <= MAX_IMAGE_BYTES => Ok(v),
        _ => Err(FatbinError::TooLarge {
            what,
            size: a.saturating_add(b),
        }),
    }
}

/// `addr + off` without overflow.
fn at(addr: usize, off: u64) -> Result<usize, FatbinError> {
    addr.checked_add(to_len("ELF offset", off)?)
        .ok_or(FatbinError::Invalid {
            what: "ELF offset",
            value: off,
        })
}

/// Length of the ELF image at `addr`: the furthest of the header, the section and program
/// header tables and every section/segment with file contents.
pub(crate) fn elf_len(mem: &dyn Mem, addr: usize) -> Result<usize, FatbinError> {
    let ident = mem.read("ELF header", addr, 16)?;
    let layout = match ident[4] {
        ELFCLASS64 => &ELF64,
        ELFCLASS32 => &ELF32,
        c => {
            return Err(FatbinError::Invalid {
                what: "ELF class",
                value: u64::from(c),
            })
        }
    };
    if ident[5] != 1 {
        return Err(FatbinError::Unsupported("big-endian ELF"));
    }
    let hdr = mem.read("ELF header", addr, layout.ehsize)?;
    let h = Bytes { data: &hdr };
    let phoff = word(&h, layout, layout.phoff)?;
    let shoff = word(&h, layout, layout.shoff)?;
    let phentsize = u64::from(h.u16("ELF header", layout.phentsize)?);
    let phnum = u64::from(h.u16("ELF header", layout.phentsize + 2)?);
    let shentsize = u64::from(h.u16("ELF header", layout.phentsize + 4)?);
    let mut shnum = u64::from(h.u16("ELF header", layout.phentsize + 6)?);

    let mut len = layout.ehsize as u64;

    if shoff != 0 {
        if shentsize < layout.min_shentsize {
            return Err(FatbinError::Invalid {
                what: "ELF e_shentsize",
                value: shentsize,
            });
        }
        if shnum == 0 {
            // Extended numbering: the count is in section 0's sh_size.
            let s0 = mem.read("ELF section header", at(addr, shoff)?, shentsize as usize)?;
            shnum = word(&Bytes { data: &s0 }, layout, layout.sh_fields.2)?;
        }
        if shnum > MAX_HEADERS {
            return Err(FatbinError::Invalid {
                what: "ELF section count",
                value: shnum,
            });
        }
        let table_len = shnum * shentsize;
        len = len.max(end("ELF section headers", shoff, table_len)?);
        let table = mem.read(
            "ELF section headers",
            at(addr, shoff)?,
            to_len("ELF section headers", table_len)?,
        )?;
        let t = Bytes { data: &table };
        for i in 0..shnum as usize {
            let base = i * shentsize as usize;
            let sh_type = t.u32("ELF section header", base + layout.sh_fields.0)?;
            if sh_type == SHT_NOBITS || (i == 0 && sh_type == 0) {
                continue;
            }
            let off = word(&t, layout, base + layout.sh_fields.1)?;
            let size = word(&t, layout, base + layout.sh_fields.2)?;
            len = len.max(end("ELF section", off, size)?);
        }
    }

    if phoff != 0 && phnum != 0 {
        if phentsize < layout.min_phentsize {
            return Err(FatbinError::Invalid {
                what: "ELF e_phentsize",
                value: phentsize,
            });
        }
        let table_len = phnum * phentsize;
        len = len.max(end("ELF program headers", phoff, table_len)?);
        let table = mem.read(
            "ELF program headers",
            at(addr, phoff)?,
            to_len("ELF program headers", table_len)?,
        )?;
        let t = Bytes { data: &table };
        for i in 0..phnum as usize {
            let base = i * phentsize as usize;
            let off = word(&t, layout, base + layout.ph_fields.0)?;
            let size = word(&t, layout, base + layout.ph_fields.1)?;
            len = len.max(end("ELF segment", off, size)?);
        }
    }
    to_len("ELF image", len)
}

/// SM number of a cubin (bits 8..16 of `e_flags`, EM_CUDA), or 0 if not a 64-bit cubin.
pub(crate) fn cubin_arch(elf: &[u8]) -> u32 {
    let b = Bytes { data: elf };
    match (b.slice("ELF", 0, 5), b.u32("ELF", 0x30)) {
        (Ok(id), Ok(flags)) if id[..4] == ELF_MAGIC[..] && id[4] == ELFCLASS64 => {
            (flags >> 8) & 0xff
        }
        _ => 0,
    }
}
