//! Decoding gfx90a machine code: each instruction's format from its leading bits,
//! its mnemonic from the format's opcode table (generated from LLVM's
//! disassembler, [`super::opcodes`]), its operands into one shape for all formats.

use super::opcodes;

/// Encoding formats (AMD's "Vega" / CDNA ISA documents, chapter "Microcode Formats").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Sop2,
    Sopk,
    Sop1,
    Sopc,
    Sopp,
    Smem,
    Vop2,
    Vop1,
    Vopc,
    Vop3,
    Vop3p,
    Ds,
    Flat,
    Global,
    /// Buffer instructions: run on the private segment only.
    Mubuf,
}

/// Operand encodings with a meaning of their own.
pub(crate) mod src {
    pub(crate) const VCC: u16 = 106;
    pub(crate) const SDWA: u16 = 0xF9;
    pub(crate) const DPP: u16 = 0xFA;
    pub(crate) const LITERAL: u16 = 255;
    pub(crate) const VGPR0: u16 = 256;
    /// `off` in a global instruction's `saddr`.
    pub(crate) const OFF: u16 = 0x7F;
}

/// SDWA: sub-dword operands and result of a VOP1/VOP2/VOPC instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sdwa {
    /// Selects: 0-3 a byte, 4-5 a word, 6 the dword.
    pub(crate) dst_sel: u8,
    /// 0: zeros around the result, 1: its sign extended, 2: the old bits kept.
    pub(crate) dst_unused: u8,
    pub(crate) sel: [u8; 2],
    pub(crate) sext: [bool; 2],
}

/// DPP: source 0 read from another lane of the row (or wave).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dpp {
    pub(crate) ctrl: u16,
    /// A lane whose source is out of range or disabled reads 0 (else it is not written).
    pub(crate) bound_ctrl: bool,
    pub(crate) bank_mask: u8,
    pub(crate) row_mask: u8,
}

/// The extra dword some VOP1/VOP2/VOPC forms carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extra {
    None,
    Sdwa(Sdwa),
    Dpp(Dpp),
}

/// One decoded instruction. Sources are 9-bit operand encodings (VGPR n is
/// 256 + n); which fields mean something depends on the format.
#[derive(Debug, Clone)]
pub(crate) struct Instr {
    pub(crate) format: Format,
    pub(crate) name: &'static str,
    /// Byte address in the code object, and length.
    pub(crate) at: u64,
    pub(crate) len: u8,
    /// SALU/SMEM destination (SGPR encoding), VALU/DS/FLAT destination VGPR.
    pub(crate) dst: u16,
    /// A VALU instruction's scalar destination (carry-out, compare result), as an
    /// SGPR encoding.
    pub(crate) sdst: u16,
    pub(crate) src: [u16; 3],
    pub(crate) literal: u32,
    /// SOPK/SOPP immediate (sign-extended), SMEM/FLAT offset, DS offset0.
    pub(crate) imm: i64,
    /// DS offset1; SMEM soffset SGPR (or 0xFFFF).
    pub(crate) imm2: u32,
    /// VOP3 `abs` (bit per source), `neg`; VOP3P `neg_hi`, `op_sel`, `op_sel_hi`.
    pub(crate) abs: u8,
    pub(crate) neg: u8,
    pub(crate) neg_hi: u8,
    pub(crate) op_sel: u8,
    pub(crate) op_sel_hi: u8,
    pub(crate) clamp: bool,
    pub(crate) omod: u8,
    /// A FLAT atomic's GLC bit: it returns the value before.
    pub(crate) glc: bool,
    /// SDWA or DPP, for the VOP1/VOP2/VOPC forms that have them.
    pub(crate) extra: Extra,
    /// A form the interpreter does not run (AccVGPR operands, GDS, …).
    pub(crate) unsupported_form: Option<&'static str>,
}

/// Why a word cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError {
    pub(crate) at: u64,
    pub(crate) what: String,
}

fn name_of(table: &'static [(u16, &'static str)], op: u32) -> Option<&'static str> {
    table
        .iter()
        .find(|&&(o, _)| u32::from(o) == op)
        .map(|&(_, n)| n)
}

/// VOP3 forms that write a scalar destination in bits 14:8 (VOP3b).
fn is_vop3b(name: &str) -> bool {
    matches!(
        name,
        "v_add_co_u32"
            | "v_sub_co_u32"
            | "v_subrev_co_u32"
            | "v_addc_co_u32"
            | "v_subb_co_u32"
            | "v_subbrev_co_u32"
            | "v_div_scale_f32"
            | "v_div_scale_f64"
            | "v_mad_u64_u32"
            | "v_mad_i64_i32"
    )
}

impl Instr {
    pub(crate) fn new(format: Format, name: &'static str, at: u64) -> Instr {
        Instr {
            format,
            name,
            at,
            len: 4,
            dst: 0,
            sdst: 0xFFFF,
            src: [0; 3],
            literal: 0,
            imm: 0,
            imm2: 0,
            abs: 0,
            neg: 0,
            neg_hi: 0,
            op_sel: 0,
            op_sel_hi: 0,
            clamp: false,
            omod: 0,
            glc: false,
            extra: Extra::None,
            unsupported_form: None,
        }
    }
}

fn sext(value: u32, bits: u32) -> i64 {
    let shift = 64 - bits;
    (i64::from(value) << shift) >> shift
}

/// Decodes the instruction at byte `at` of `code` (whose first byte is at address
/// `base`).
pub(crate) fn decode(code: &[u8], base: u64, at: usize) -> Result<Instr, DecodeError> {
    let addr = base + at as u64;
    let word = |i: usize| -> Result<u32, DecodeError> {
        code.get(at + 4 * i..at + 4 * i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| DecodeError {
                at: addr,
                what: "an instruction cut off by the end of the code".into(),
            })
    };
    let w = word(0)?;
    let unknown = |format: &str, op: u32| DecodeError {
        at: addr,
        what: format!("{format} opcode {op:#x} (word {w:#010x}) is not a gfx90a instruction"),
    };
    let (format, table, op) = if w >> 31 == 0 {
        match w >> 25 {
            0x3F => (Format::Vop1, opcodes::VOP1, (w >> 9) & 0xff),
            0x3E => (Format::Vopc, opcodes::VOPC, (w >> 17) & 0xff),
            _ => (Format::Vop2, opcodes::VOP2, (w >> 25) & 0x3f),
        }
    } else if w >> 30 == 2 {
        match w >> 23 {
            0x17D => (Format::Sop1, opcodes::SOP1, (w >> 8) & 0xff),
            0x17E => (Format::Sopc, opcodes::SOPC, (w >> 16) & 0x7f),
            0x17F => (Format::Sopp, opcodes::SOPP, (w >> 16) & 0x7f),
            _ if w >> 28 == 0xB => (Format::Sopk, opcodes::SOPK, (w >> 23) & 0x1f),
            _ => (Format::Sop2, opcodes::SOP2, (w >> 23) & 0x7f),
        }
    } else {
        match w >> 26 {
            0x30 => (Format::Smem, opcodes::SMEM, (w >> 18) & 0xff),
            0x34 if w >> 23 == 0x1A7 => (Format::Vop3p, opcodes::VOP3P, (w >> 16) & 0x7f),
            0x34 => (Format::Vop3, opcodes::VOP3, (w >> 16) & 0x3ff),
            0x36 => (Format::Ds, opcodes::DS, (w >> 17) & 0xff),
            0x37 => match (w >> 14) & 3 {
                0 => (Format::Flat, opcodes::FLAT, (w >> 18) & 0x7f),
                2 => (Format::Global, opcodes::GLOBAL, (w >> 18) & 0x7f),
                _ => {
                    return Err(DecodeError {
                        at: addr,
                        what: format!(
                            "scratch instruction (word {w:#010x}): private memory is not supported"
                        ),
                    })
                }
            },
            0x38 => (Format::Mubuf, opcodes::MUBUF, (w >> 18) & 0x7f),
            other => {
                let family = match other {
                    0x3A => "MTBUF (typed buffer)",
                    0x3C => "MIMG (image)",
                    0x32 => "VINTRP",
                    _ => "unknown",
                };
                return Err(DecodeError {
                    at: addr,
                    what: format!("{family} instruction (word {w:#010x}) is not supported"),
                });
            }
        }
    };
    let name = name_of(table, op).ok_or_else(|| unknown(&format!("{format:?}"), op))?;
    let mut i = Instr::new(format, name, addr);
    let mut needs_literal = false;
    match format {
        Format::Sop2 => {
            i.dst = ((w >> 16) & 0x7f) as u16;
            i.src = [(w & 0xff) as u16, ((w >> 8) & 0xff) as u16, 0];
        }
        Format::Sopk => {
            i.dst = ((w >> 16) & 0x7f) as u16;
            i.imm = sext(w & 0xffff, 16);
            needs_literal = name == "s_setreg_imm32_b32";
        }
        Format::Sop1 => {
            i.dst = ((w >> 16) & 0x7f) as u16;
            i.src = [(w & 0xff) as u16, 0, 0];
        }
        Format::Sopc => i.src = [(w & 0xff) as u16, ((w >> 8) & 0xff) as u16, 0],
        Format::Sopp => i.imm = sext(w & 0xffff, 16),
        Format::Smem => {
            let w1 = word(1)?;
            i.len = 8;
            i.src = [((w & 0x3f) * 2) as u16, 0, 0];
            i.dst = ((w >> 6) & 0x7f) as u16;
            let soe = (w >> 14) & 1 == 1;
            let imm = (w >> 17) & 1 == 1;
            if imm {
                i.imm = sext(w1 & 0x1f_ffff, 21);
                i.imm2 = if soe { (w1 >> 25) & 0x7f } else { 0xFFFF };
            } else {
                // The offset is an SGPR's value.
                i.imm = 0;
                i.imm2 = w1 & 0x7f;
            }
        }
        Format::Vop2 => {
            i.src = [(w & 0x1ff) as u16, src::VGPR0 + ((w >> 9) & 0xff) as u16, 0];
            i.dst = ((w >> 17) & 0xff) as u16;
            if matches!(name, "v_madmk_f32" | "v_madak_f32") {
                needs_literal = true;
            }
            if name.contains("_co_") || name == "v_cndmask_b32" {
                // Carry-out and carry-in (and cndmask's mask) are VCC in this form.
                i.sdst = src::VCC;
                i.src[2] = src::VCC;
            }
        }
        Format::Vop1 => {
            i.src = [(w & 0x1ff) as u16, 0, 0];
            i.dst = ((w >> 17) & 0xff) as u16;
        }
        Format::Vopc => {
            i.src = [(w & 0x1ff) as u16, src::VGPR0 + ((w >> 9) & 0xff) as u16, 0];
            i.sdst = src::VCC;
        }
        Format::Vop3 => {
            let w1 = word(1)?;
            i.len = 8;
            i.dst = (w & 0xff) as u16;
            i.src = [
                (w1 & 0x1ff) as u16,
                ((w1 >> 9) & 0x1ff) as u16,
                ((w1 >> 18) & 0x1ff) as u16,
            ];
            i.clamp = (w >> 15) & 1 == 1;
            i.omod = ((w1 >> 27) & 3) as u8;
            i.neg = ((w1 >> 29) & 7) as u8;
            if is_vop3b(name) {
                i.sdst = ((w >> 8) & 0x7f) as u16;
            } else {
                i.abs = ((w >> 8) & 7) as u8;
                i.op_sel = ((w >> 11) & 0xf) as u8;
            }
            if op < 0x100 {
                // A compare: its destination is a scalar pair.
                i.sdst = i.dst;
            }
        }
        Format::Vop3p => {
            let w1 = word(1)?;
            i.len = 8;
            i.dst = (w & 0xff) as u16;
            i.neg_hi = ((w >> 8) & 7) as u8;
            i.op_sel = ((w >> 11) & 7) as u8;
            i.op_sel_hi = (((w >> 14) & 1) << 2) as u8 | ((w1 >> 27) & 3) as u8;
            i.clamp = (w >> 15) & 1 == 1;
            i.src = [
                (w1 & 0x1ff) as u16,
                ((w1 >> 9) & 0x1ff) as u16,
                ((w1 >> 18) & 0x1ff) as u16,
            ];
            i.neg = ((w1 >> 29) & 7) as u8;
        }
        Format::Ds => {
            let w1 = word(1)?;
            i.len = 8;
            i.imm = i64::from(w & 0xff);
            i.imm2 = (w >> 8) & 0xff;
            if (w >> 16) & 1 == 1 {
                i.unsupported_form = Some("GDS");
            }
            if (w >> 25) & 1 == 1 {
                i.unsupported_form = Some("AccVGPR operands");
            }
            i.src = [
                src::VGPR0 + (w1 & 0xff) as u16,
                src::VGPR0 + ((w1 >> 8) & 0xff) as u16,
                src::VGPR0 + ((w1 >> 16) & 0xff) as u16,
            ];
            i.dst = ((w1 >> 24) & 0xff) as u16;
        }
        Format::Mubuf => {
            let w1 = word(1)?;
            i.len = 8;
            i.imm = i64::from(w & 0xfff);
            // op_sel bit 0: OFFEN, the VGPR offset is added.
            i.op_sel = ((w >> 12) & 1) as u8;
            i.glc = (w >> 14) & 1 == 1;
            if (w >> 13) & 1 == 1 {
                i.unsupported_form = Some("indexed buffer access");
            }
            if (w >> 16) & 1 == 1 {
                i.unsupported_form = Some("loads into LDS");
            }
            if (w1 >> 23) & 1 == 1 {
                i.unsupported_form = Some("AccVGPR operands");
            }
            i.src = [
                src::VGPR0 + (w1 & 0xff) as u16,
                src::VGPR0 + ((w1 >> 8) & 0xff) as u16,
                (((w1 >> 16) & 0x1f) * 4) as u16,
            ];
            i.dst = ((w1 >> 8) & 0xff) as u16;
            i.imm2 = (w1 >> 24) & 0xff;
        }
        Format::Flat | Format::Global => {
            let w1 = word(1)?;
            i.len = 8;
            i.imm = if format == Format::Flat {
                i64::from(w & 0xfff)
            } else {
                sext(w & 0x1fff, 13)
            };
            i.glc = (w >> 16) & 1 == 1;
            if (w >> 13) & 1 == 1 {
                i.unsupported_form = Some("loads into LDS");
            }
            if (w1 >> 23) & 1 == 1 {
                i.unsupported_form = Some("AccVGPR operands");
            }
            i.src = [
                src::VGPR0 + (w1 & 0xff) as u16,
                src::VGPR0 + ((w1 >> 8) & 0xff) as u16,
                ((w1 >> 16) & 0x7f) as u16,
            ];
            i.dst = ((w1 >> 24) & 0xff) as u16;
        }
    }
    if matches!(format, Format::Vop1 | Format::Vop2 | Format::Vopc) {
        match i.src[0] {
            src::SDWA => {
                let e = word(1)?;
                i.len = 8;
                let bit = |b: u32| (e >> b) & 1 == 1;
                let field = |at: u32, bits: u32| ((e >> at) & ((1 << bits) - 1)) as u8;
                i.src[0] = if bit(23) {
                    (e & 0xff) as u16
                } else {
                    src::VGPR0 + (e & 0xff) as u16
                };
                if bit(31) && format != Format::Vop1 {
                    // Source 1 is the SGPR the VSRC1 field names.
                    i.src[1] = i.src[1].saturating_sub(src::VGPR0);
                }
                i.neg = u8::from(bit(20)) | u8::from(bit(28)) << 1;
                i.abs = u8::from(bit(21)) | u8::from(bit(29)) << 1;
                let mut dst_sel = field(8, 3);
                let mut dst_unused = field(11, 2);
                if format == Format::Vopc {
                    if bit(15) {
                        i.sdst = u16::from(field(8, 7));
                    }
                    dst_sel = 6;
                    dst_unused = 0;
                } else {
                    i.clamp = bit(13);
                    i.omod = field(14, 2);
                }
                i.extra = Extra::Sdwa(Sdwa {
                    dst_sel,
                    dst_unused,
                    sel: [field(16, 3), field(24, 3)],
                    sext: [bit(19), bit(27)],
                });
                if dst_sel > 6 || dst_unused > 2 || field(16, 3) > 6 || field(24, 3) > 6 {
                    i.unsupported_form = Some("an SDWA select out of range");
                }
            }
            src::DPP => {
                let e = word(1)?;
                i.len = 8;
                let bit = |b: u32| (e >> b) & 1 == 1;
                i.src[0] = src::VGPR0 + (e & 0xff) as u16;
                i.neg = u8::from(bit(20)) | u8::from(bit(22)) << 1;
                i.abs = u8::from(bit(21)) | u8::from(bit(23)) << 1;
                let ctrl = ((e >> 8) & 0x1ff) as u16;
                let known = matches!(ctrl, 0x000..=0x0ff | 0x101..=0x10f | 0x111..=0x11f | 0x121..=0x12f
                    | 0x130 | 0x134 | 0x138 | 0x13c | 0x140..=0x143);
                if !known {
                    i.unsupported_form = Some("a DPP control the interpreter does not know");
                }
                i.extra = Extra::Dpp(Dpp {
                    ctrl,
                    bound_ctrl: bit(19),
                    bank_mask: ((e >> 24) & 0xf) as u8,
                    row_mask: ((e >> 28) & 0xf) as u8,
                });
            }
            _ => {}
        }
    }
    if matches!(
        format,
        Format::Sop2 | Format::Sop1 | Format::Sopc | Format::Vop1 | Format::Vop2 | Format::Vopc
    ) && i.src[..2].contains(&src::LITERAL)
    {
        needs_literal = true;
    }
    if needs_literal && i.unsupported_form.is_none() {
        i.literal = word(i.len as usize / 4)?;
        i.len += 4;
    }
    Ok(i)
}
