//! Ascend kernel binaries as ACL loads them (`aclrtBinaryLoadFromData`,
//! `rtDevBinaryRegister`): ELF objects for the AI Core (`e_machine` 0x1029)
//! whose kernels are the defined, global function symbols. The mock reads the
//! kernels' names from here to answer look-ups it cannot run; the acl backend
//! to know which functions to resolve through CANN.

use xpupool_protocol::{code, CuError};

/// `e_machine` of an Ascend AI Core object.
pub const EM_ASCEND: u16 = 0x1029;
/// Kernels one binary may have: a bound on what a load's reply carries.
pub const MAX_KERNELS: usize = 16_384;
/// Symbols read of one binary's table (a bound on the work a load costs).
pub const MAX_SYMBOLS: usize = 1 << 16;
/// Bytes of one kernel's name, and of all of them together.
pub const MAX_NAME: usize = 4 << 10;
pub const MAX_NAMES: usize = 1 << 20;
/// Section indexes from here on are special (`SHN_ABS`, `SHN_COMMON`, …), not
/// a section a function's code lies in.
const SHN_LORESERVE: u16 = 0xff00;

/// `ACL_RT_BINARY_MAGIC_ELF_AICORE`, `_VECTOR_CORE` and `_CUBE_CORE`: the
/// magic numbers ACL loads AI Core objects with (the default the first).
pub const MAGICS: [u32; 3] = [0x4355_4245, 0x4141_5246, 0x4149_4343];

/// Refuses a magic number ACL does not load AI Core objects with.
pub fn check_magic(magic: u32) -> Result<(), CuError> {
    if MAGICS.contains(&magic) {
        Ok(())
    } else {
        Err(invalid(format!("magic number {magic:#x}")))
    }
}

const SHT_SYMTAB: u32 = 2;
const STT_FUNC: u8 = 2;
const SYMBOL_BYTES: usize = 24;
const SECTION_BYTES: usize = 64;

/// Whether `bytes` is a 64-bit little-endian ELF object for the AI Core.
pub fn is_ascend(bytes: &[u8]) -> bool {
    bytes.len() >= 64
        && bytes[..4] == *b"\x7fELF"
        && bytes[4] == 2
        && bytes[5] == 1
        && u16::from_le_bytes([bytes[18], bytes[19]]) == EM_ASCEND
}

fn invalid(what: impl std::fmt::Display) -> CuError {
    CuError::new(code::INVALID_IMAGE, format!("Ascend kernel binary: {what}"))
}

/// `len` bytes at `at`, or an error naming `what` if they are not all there.
fn slice<'a>(bytes: &'a [u8], at: u64, len: u64, what: &str) -> Result<&'a [u8], CuError> {
    let end = at
        .checked_add(len)
        .filter(|&end| end <= bytes.len() as u64)
        .ok_or_else(|| invalid(format!("{what} at {at:#x}+{len} lies past its end")))?;
    Ok(&bytes[at as usize..end as usize])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The kernels of an AI Core binary: its defined global (or weak) function
/// symbols, in symbol-table order, each once. Only the first symbol table is
/// read (an object has one), at most [`MAX_SYMBOLS`] of its symbols, and names
/// are bounded ([`MAX_NAME`], [`MAX_NAMES`]): what a load costs is bounded
/// whatever the bytes say.
pub fn kernels(bytes: &[u8]) -> Result<Vec<String>, CuError> {
    if !is_ascend(bytes) {
        return Err(invalid("not a 64-bit little-endian AI Core ELF object"));
    }
    let shoff = u64_at(bytes, 0x28);
    let shentsize = u16_at(bytes, 0x3a) as usize;
    let shnum = u16_at(bytes, 0x3c) as u64;
    if shnum > 0 && shentsize != SECTION_BYTES {
        return Err(invalid(format!("section headers of {shentsize} bytes")));
    }
    let sections = slice(
        bytes,
        shoff,
        shnum * SECTION_BYTES as u64,
        "section headers",
    )?;
    let section = |i: usize| &sections[i * SECTION_BYTES..(i + 1) * SECTION_BYTES];
    let mut names = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut name_bytes = 0usize;
    if let Some(i) = (0..shnum as usize).find(|&i| u32_at(section(i), 4) == SHT_SYMTAB) {
        let sh = section(i);
        let symbols = slice(bytes, u64_at(sh, 24), u64_at(sh, 32), "symbol table")?;
        if symbols.len() / SYMBOL_BYTES > MAX_SYMBOLS {
            return Err(invalid(format!(
                "{} symbols (at most {MAX_SYMBOLS})",
                symbols.len() / SYMBOL_BYTES
            )));
        }
        let link = u32_at(sh, 40) as usize;
        if link >= shnum as usize {
            return Err(invalid(format!("symbol table names section {link}")));
        }
        let strings = slice(
            bytes,
            u64_at(section(link), 24),
            u64_at(section(link), 32),
            "string table",
        )?;
        for sym in symbols.chunks_exact(SYMBOL_BYTES) {
            let info = sym[4];
            let binding = info >> 4;
            let shndx = u16_at(sym, 6);
            let defined = shndx != 0 && shndx < SHN_LORESERVE;
            if info & 0xf != STT_FUNC || !(binding == 1 || binding == 2) || !defined {
                continue;
            }
            let at = u32_at(sym, 0) as usize;
            // The NUL is looked for within MAX_NAME bytes only.
            let rest = strings
                .get(at..)
                .ok_or_else(|| invalid(format!("symbol name at {at} lies past its table")))?;
            let window = &rest[..rest.len().min(MAX_NAME + 1)];
            let name = window
                .iter()
                .position(|&c| c == 0)
                .map(|n| &window[..n])
                .ok_or_else(|| {
                    invalid(format!(
                        "the symbol name at {at} is longer than {MAX_NAME} bytes or unterminated"
                    ))
                })?;
            let name = String::from_utf8_lossy(name).into_owned();
            if !name.is_empty() && !seen.contains(&name) {
                name_bytes += name.len();
                if names.len() >= MAX_KERNELS || name_bytes > MAX_NAMES {
                    return Err(invalid(format!(
                        "more than {MAX_KERNELS} kernels or {MAX_NAMES} bytes of their names"
                    )));
                }
                seen.insert(name.clone());
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// A minimal AI Core object, for tests: a symbol table with `kernels` as
/// global functions, plus a local function and an undefined one that are not
/// kernels, and 32 bytes of code that is not code.
#[doc(hidden)]
pub fn sample_object(kernels: &[&str]) -> Vec<u8> {
    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; SYMBOL_BYTES];
    let mut symbol = |name: &str, info: u8, shndx: u16| {
        let at = strtab.len() as u32;
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        let mut s = [0u8; SYMBOL_BYTES];
        s[0..4].copy_from_slice(&at.to_le_bytes());
        s[4] = info;
        s[6..8].copy_from_slice(&shndx.to_le_bytes());
        symtab.extend_from_slice(&s);
    };
    symbol("local_helper", STT_FUNC, 3);
    symbol("undefined_import", 0x10 | STT_FUNC, 0);
    for k in kernels {
        symbol(k, 0x10 | STT_FUNC, 3);
    }
    let text = vec![0u8; 32];
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&EM_ASCEND.to_le_bytes());
    let mut place = |data: &[u8]| {
        let at = out.len() as u64;
        out.extend_from_slice(data);
        at
    };
    let sym_at = place(&symtab);
    let str_at = place(&strtab);
    let text_at = place(&text);
    let shoff = out.len() as u64;
    let header = |kind: u32, at: u64, size: u64, link: u32| {
        let mut h = [0u8; SECTION_BYTES];
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[24..32].copy_from_slice(&at.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..44].copy_from_slice(&link.to_le_bytes());
        h[56..64].copy_from_slice(&(SYMBOL_BYTES as u64).to_le_bytes());
        h
    };
    out.extend_from_slice(&[0u8; SECTION_BYTES]);
    out.extend_from_slice(&header(SHT_SYMTAB, sym_at, symtab.len() as u64, 2));
    out.extend_from_slice(&header(3, str_at, strtab.len() as u64, 0));
    out.extend_from_slice(&header(1, text_at, 32, 0));
    out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&(SECTION_BYTES as u16).to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_global_functions() {
        let o = sample_object(&["add_custom", "dvm_mix_aic"]);
        assert!(is_ascend(&o));
        assert_eq!(kernels(&o).unwrap(), ["add_custom", "dvm_mix_aic"]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let o = sample_object(&["k"]);
        let mut other = o.clone();
        other[18] = 190; // a cubin
        assert!(!is_ascend(&other));
        assert!(kernels(&other).is_err());
        // Section headers past the end.
        let mut cut = o.clone();
        cut.truncate(o.len() - 10);
        assert!(kernels(&cut).unwrap_err().message.contains("past its end"));
        // A symbol table whose string table index is out of range.
        let mut bad_link = o.clone();
        let shoff = u64_at(&o, 0x28) as usize;
        bad_link[shoff + SECTION_BYTES + 40..shoff + SECTION_BYTES + 44]
            .copy_from_slice(&9u32.to_le_bytes());
        assert!(kernels(&bad_link).is_err());
        // A symbol table whose size wraps the file.
        let mut huge = o;
        huge[shoff + SECTION_BYTES + 32..shoff + SECTION_BYTES + 40]
            .copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(kernels(&huge).is_err());
    }

    #[test]
    fn what_a_load_costs_is_bounded() {
        let long = "k".repeat(MAX_NAME + 1);
        let message = kernels(&sample_object(&[&long])).unwrap_err().message;
        assert!(message.contains("longer than"), "{message}");
        assert_eq!(kernels(&sample_object(&[&long[1..]])).unwrap().len(), 1);
        let many: Vec<String> = (0..MAX_KERNELS + 1).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let message = kernels(&sample_object(&refs)).unwrap_err().message;
        assert!(message.contains("kernels or"), "{message}");
        let lots: Vec<String> = (0..MAX_SYMBOLS).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = lots.iter().map(String::as_str).collect();
        let message = kernels(&sample_object(&refs)).unwrap_err().message;
        assert!(message.contains("symbols (at most"), "{message}");
    }
}
