//! A code object: an ELF64 file for `EM_AMDGPU` (224) with the HSA OS ABI, whose
//! note of type `NT_AMDGPU_METADATA` (32, owner `AMDGPU`) is a MessagePack map:
//! `amdhsa.version` (`[1, 1]` code-object v4, `[1, 2]` v5), `amdhsa.target`, and
//! `amdhsa.kernels`, each with its name, kernel-descriptor symbol, segment sizes
//! and arguments (`.offset`, `.size`, `.value_kind`). Arguments whose kind
//! starts with `hidden_` are the runtime's to fill; the others are the
//! program's, in order.

use crate::msgpack::{self, Value};
use crate::{AmdgpuError, Bytes};

/// The ELF magic.
pub const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// `e_machine` of AMD GPU code.
pub const EM_AMDGPU: u16 = 224;
/// `EI_OSABI` of code for the HSA runtime.
pub const ELFOSABI_AMDGPU_HSA: u8 = 64;
/// The metadata note's type.
pub const NT_AMDGPU_METADATA: u32 = 32;
const SHT_NOTE: u32 = 7;
const SHT_NOBITS: u32 = 8;
const SECTION_HEADER: u64 = 64;

/// What a code object holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeObject {
    /// 4, 5, … (from `EI_ABIVERSION`: 2 is v4, 3 is v5).
    pub version: u8,
    /// `amdgcn-amd-amdhsa--gfx90a`.
    pub target: String,
    pub kernels: Vec<KernelInfo>,
}

/// One kernel, as its metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// The (mangled) name a program looks it up by.
    pub name: String,
    /// Its kernel descriptor's symbol (`<name>.kd`).
    pub symbol: String,
    /// Bytes of the kernarg segment: explicit and hidden arguments (and, in v5,
    /// the implicit block).
    pub kernarg_size: u32,
    pub kernarg_align: u32,
    /// Static LDS bytes, and private (scratch) bytes per work-item.
    pub group_segment_size: u32,
    pub private_segment_size: u32,
    pub max_flat_workgroup_size: u32,
    /// 32 or 64.
    pub wavefront_size: u32,
    pub args: Vec<KernelArg>,
}

/// One argument in the kernarg segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArg {
    pub offset: u32,
    pub size: u32,
    pub kind: ArgKind,
}

/// What an argument is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgKind {
    /// A value the program passes (`by_value`).
    ByValue,
    /// A pointer the program passes (`global_buffer`, `dynamic_shared_pointer`, …:
    /// the value kind as written).
    Pointer(String),
    /// One the runtime fills (`hidden_block_count_x`, …: the value kind).
    Hidden(String),
}

impl KernelInfo {
    /// The arguments the program passes, in order: `(offset, size)` each.
    pub fn explicit_args(&self) -> Vec<(u32, u32)> {
        self.args
            .iter()
            .filter(|a| !matches!(a.kind, ArgKind::Hidden(_)))
            .map(|a| (a.offset, a.size))
            .collect()
    }
}

fn bad(why: impl Into<String>) -> AmdgpuError {
    AmdgpuError::Metadata(why.into())
}

/// Checks the ELF header of an AMD GPU code object: `(section table offset,
/// section count)`.
pub(crate) fn elf_header(bytes: &[u8]) -> Result<(u64, u64), AmdgpuError> {
    let b = Bytes(bytes);
    let ident = b.slice(0, 16, "ELF identification")?;
    if &ident[..4] != ELF_MAGIC || ident[4] != 2 || ident[5] != 1 {
        return Err(AmdgpuError::NotAnImage(
            "not a little-endian ELF64 file".into(),
        ));
    }
    let machine = b.u16(18, "e_machine")?;
    if machine != EM_AMDGPU || ident[7] != ELFOSABI_AMDGPU_HSA {
        return Err(AmdgpuError::NotAnImage(format!(
            "an ELF for machine {machine}, OS ABI {}: not AMD GPU code",
            ident[7]
        )));
    }
    let shoff = b.u64(0x28, "e_shoff")?;
    let shentsize = b.u16(0x3a, "e_shentsize")?;
    let shnum = b.u16(0x3c, "e_shnum")?;
    if shnum != 0 && u64::from(shentsize) != SECTION_HEADER {
        return Err(AmdgpuError::NotAnImage(format!(
            "section headers of {shentsize} bytes"
        )));
    }
    Ok((shoff, u64::from(shnum)))
}

/// `(type, offset, size)` of each section.
fn sections(bytes: &[u8]) -> Result<Vec<(u32, u64, u64)>, AmdgpuError> {
    let (shoff, shnum) = elf_header(bytes)?;
    let b = Bytes(bytes);
    b.slice(shoff, shnum * SECTION_HEADER, "section headers")?;
    (0..shnum)
        .map(|i| {
            let at = shoff + i * SECTION_HEADER;
            Ok((
                b.u32(at + 4, "sh_type")?,
                b.u64(at + 0x18, "sh_offset")?,
                b.u64(at + 0x20, "sh_size")?,
            ))
        })
        .collect()
}

/// Where a code object's last byte is (its section table's end, or its last
/// section's with contents).
pub fn elf_len(bytes: &[u8]) -> Result<u64, AmdgpuError> {
    let (shoff, shnum) = elf_header(bytes)?;
    let mut end = shoff
        .checked_add(shnum * SECTION_HEADER)
        .ok_or(AmdgpuError::Truncated("section headers"))?;
    for (kind, offset, size) in sections(bytes)? {
        if kind != SHT_NOBITS {
            let section_end = offset
                .checked_add(size)
                .ok_or(AmdgpuError::Truncated("section"))?;
            end = end.max(section_end);
        }
    }
    Ok(end)
}

/// The metadata note's MessagePack bytes.
fn metadata_note(bytes: &[u8]) -> Result<&[u8], AmdgpuError> {
    let b = Bytes(bytes);
    for (kind, offset, size) in sections(bytes)? {
        if kind != SHT_NOTE {
            continue;
        }
        let notes = b.slice(offset, size, "note section")?;
        let n = Bytes(notes);
        let mut at = 0u64;
        while at + 12 <= size {
            let name_len = u64::from(n.u32(at, "note name size")?);
            let desc_len = u64::from(n.u32(at + 4, "note size")?);
            let kind = n.u32(at + 8, "note type")?;
            let name = n.slice(at + 12, name_len, "note name")?;
            let desc_at = at + 12 + name_len.next_multiple_of(4);
            let desc = n.slice(desc_at, desc_len, "note contents")?;
            if kind == NT_AMDGPU_METADATA && name.strip_suffix(b"\0").unwrap_or(name) == b"AMDGPU" {
                return Ok(desc);
            }
            at = desc_at + desc_len.next_multiple_of(4);
        }
    }
    Err(bad("no NT_AMDGPU_METADATA note"))
}

fn number(map: &Value, key: &str, kernel: &str) -> Result<u32, AmdgpuError> {
    map.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(format!("{kernel}: {key} missing or out of range")))
}

fn text(map: &Value, key: &str, kernel: &str) -> Result<String, AmdgpuError> {
    map.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("{kernel}: {key} missing")))
}

fn kernel(map: &Value) -> Result<KernelInfo, AmdgpuError> {
    let name = text(map, ".name", "a kernel")?;
    let kernarg_size = number(map, ".kernarg_segment_size", &name)?;
    let mut args = Vec::new();
    for arg in map.get(".args").and_then(Value::as_array).unwrap_or(&[]) {
        let offset = number(arg, ".offset", &name)?;
        let size = number(arg, ".size", &name)?;
        let kind = text(arg, ".value_kind", &name)?;
        if offset
            .checked_add(size)
            .is_none_or(|end| end > kernarg_size)
        {
            return Err(bad(format!(
                "{name}: an argument at {offset} of {size} bytes past its {kernarg_size}-byte kernarg segment"
            )));
        }
        let kind = if kind.starts_with("hidden_") {
            ArgKind::Hidden(kind)
        } else if kind == "by_value" {
            ArgKind::ByValue
        } else {
            ArgKind::Pointer(kind)
        };
        args.push(KernelArg { offset, size, kind });
    }
    Ok(KernelInfo {
        symbol: text(map, ".symbol", &name)?,
        kernarg_align: number(map, ".kernarg_segment_align", &name)?,
        group_segment_size: number(map, ".group_segment_fixed_size", &name)?,
        private_segment_size: number(map, ".private_segment_fixed_size", &name)?,
        max_flat_workgroup_size: number(map, ".max_flat_workgroup_size", &name)?,
        wavefront_size: number(map, ".wavefront_size", &name)?,
        kernarg_size,
        args,
        name,
    })
}

/// The target and kernels of a code object.
pub fn read_code_object(bytes: &[u8]) -> Result<CodeObject, AmdgpuError> {
    elf_header(bytes)?;
    let version = match bytes[8] {
        // EI_ABIVERSION: 2 is code-object v4, 3 is v5, 4 is v6.
        v @ 2..=4 => v + 2,
        v => {
            return Err(AmdgpuError::NotAnImage(format!(
                "EI_ABIVERSION {v} (code objects v4 to v6 are known)"
            )))
        }
    };
    let metadata = msgpack::decode(metadata_note(bytes)?)?;
    let target = text(&metadata, "amdhsa.target", "the code object")?;
    let kernels = metadata
        .get("amdhsa.kernels")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no amdhsa.kernels"))?
        .iter()
        .map(kernel)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CodeObject {
        version,
        target,
        kernels,
    })
}
