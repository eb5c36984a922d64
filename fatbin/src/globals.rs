//! Module-scope variables (`__device__`, `__constant__`) of a cubin, from its ELF symbol
//! table: what a server needs to give an image's globals device memory and their
//! initial values when it cannot (or need not) run the image's code.

use crate::nvinfo::sections;
use crate::{to_len, Bytes, FatbinError};

/// One variable: its name, size and initial bytes (at most `size`; the rest zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CubinGlobal {
    /// Symbol name (mangled as the device side names it).
    pub name: String,
    /// Size in bytes.
    pub size: usize,
    /// Initial value: the section's bytes, or none for `.nv.global` (no file data:
    /// all zero, however large it claims to be).
    pub init: Vec<u8>,
}

/// `STT_OBJECT`
const STT_OBJECT: u8 = 1;
/// Size of an `Elf64_Sym`.
const SYM_SIZE: usize = 24;

/// Sections that hold user variables: global memory (zeroed or initialised) and
/// the user constant banks (not bank 0, which holds each kernel's parameters).
fn holds_variables(section: &[u8]) -> bool {
    section == b".nv.global"
        || section == b".nv.global.init"
        || (section.starts_with(b".nv.constant") && !section.starts_with(b".nv.constant0"))
}

/// Every variable defined in a 64-bit little-endian cubin.
pub fn cubin_globals(elf: &[u8]) -> Result<Vec<CubinGlobal>, FatbinError> {
    let sections = sections(elf)?;
    let find = |name: &[u8]| sections.iter().find(|s| s.name == name).map(|s| s.data);
    let (Some(symtab), Some(strtab)) = (find(b".symtab"), find(b".strtab")) else {
        return Ok(Vec::new());
    };
    let symbols = Bytes { data: symtab };
    let mut globals = Vec::new();
    for at in (0..symtab.len() / SYM_SIZE).map(|i| i * SYM_SIZE) {
        let info = symbols.slice("ELF symbol", at + 4, 1)?[0];
        let section = usize::from(symbols.u16("ELF symbol", at + 6)?);
        if info & 0xf != STT_OBJECT {
            continue;
        }
        let Some(holder) = sections.get(section).filter(|s| holds_variables(s.name)) else {
            continue;
        };
        let name_at = symbols.u32("ELF symbol", at)? as usize;
        let value = to_len("ELF st_value", symbols.u64("ELF symbol", at + 8)?)?;
        let size = to_len("ELF st_size", symbols.u64("ELF symbol", at + 16)?)?;
        let name = strtab.get(name_at..).ok_or(FatbinError::Invalid {
            what: "ELF symbol name offset",
            value: name_at as u64,
        })?;
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        let init = if holder.data.is_empty() {
            Vec::new()
        } else {
            Bytes { data: holder.data }
                .slice("ELF variable", value, size)?
                .to_vec()
        };
        globals.push(CubinGlobal {
            name: String::from_utf8_lossy(name).into_owned(),
            size,
            init,
        });
    }
    Ok(globals)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    #[test]
    fn variables_of_an_nvcc_cubin() {
        let elf = std::fs::read(format!("{FIXTURES}/globals.cubin")).unwrap();
        let globals = cubin_globals(&elf).unwrap();
        let get = |name: &str| {
            globals
                .iter()
                .find(|g| g.name == name)
                .unwrap_or_else(|| panic!("{name} in {globals:?}"))
        };
        assert_eq!(
            get("coef").init,
            [1.0f32, 2.0, 3.0, 4.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );
        assert_eq!(get("table").size, 1024);
        assert!(get("table").init.iter().all(|&b| b == 0));
        assert_eq!(get("seed").init, 42i64.to_le_bytes());
        assert_eq!(globals.len(), 3, "{globals:?}");
    }

    #[test]
    fn a_cubin_without_variables_has_none_and_garbage_is_an_error() {
        let elf = std::fs::read(format!("{FIXTURES}/kernel.cubin")).unwrap();
        assert!(cubin_globals(&elf).unwrap().is_empty());
        assert!(cubin_globals(b"not an elf at all").is_err());
        assert!(cubin_globals(&elf[..200]).is_err());
    }
}
