//! What each instruction does to a wave: its semantics, resolved once per decoded
//! instruction ([`semantics`]) into a function the wave loop calls.
//!
//! A wave is 64 lanes: 32-bit SGPRs it shares (with SCC, VCC, EXEC, M0 among
//! them) and VGPRs with a value per lane. Vector instructions act on the lanes
//! EXEC enables. Memory operations complete at once (so `s_waitcnt` has nothing
//! to wait for); global atomics are atomic across workgroups running on other
//! threads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::decode::{src, Dpp, Extra, Format, Instr, Sdwa};
use super::Env;

/// What the wave does after an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Next,
    /// Go on at this code address (relative to the code object).
    Jump(u64),
    Barrier,
    End,
}

/// Why a wave stopped.
pub(crate) type Fault = String;

pub(crate) type Exec = fn(&mut Ctx<'_>, &Instr) -> Result<Flow, Fault>;

pub(crate) const LANES: usize = 64;

/// The high 32 bits of the flat-address apertures: a flat address whose high
/// half is `SHARED_HI` is LDS; `PRIVATE_HI`, private memory.
pub(crate) const SHARED_HI: u32 = 0x1000_0000;
pub(crate) const PRIVATE_HI: u32 = 0x2000_0000;
/// The base a wave's private segment buffer resource (its first user SGPRs)
/// holds: 48 bits, as a buffer resource's base is.
pub(crate) const PRIVATE_RESOURCE: u64 = 0xF000_0000_0000;

/// `HW_REG_SH_MEM_BASES`: the apertures' top 16 bits (shared in 31:16, private
/// in 15:0), which code reads with `s_getreg_b32` to make flat addresses.
const HW_REG_SH_MEM_BASES: usize = 15;

fn initial_hwregs() -> [u32; 32] {
    let mut r = [0; 32];
    r[HW_REG_SH_MEM_BASES] = (SHARED_HI >> 16) << 16 | PRIVATE_HI >> 16;
    r
}

/// One wave's registers.
pub(crate) struct Wave {
    pub(crate) s: [u32; 128],
    pub(crate) scc: bool,
    pub(crate) v: Vec<u32>,
    pub(crate) vgprs: usize,
    /// The next instruction's address (relative to the code object).
    pub(crate) pc: u64,
    pub(crate) hwreg: [u32; 32],
    /// Private memory, `private.len() / 64` bytes per lane.
    pub(crate) private: Vec<u8>,
}

impl Wave {
    pub(crate) fn new(vgprs: usize) -> Wave {
        Wave {
            s: [0; 128],
            scc: false,
            v: vec![0; vgprs * LANES],
            vgprs,
            pc: 0,
            hwreg: initial_hwregs(),
            private: Vec::new(),
        }
    }

    pub(crate) fn exec(&self) -> u64 {
        u64::from(self.s[126]) | u64::from(self.s[127]) << 32
    }

    pub(crate) fn set_exec(&mut self, mask: u64) {
        self.s[126] = mask as u32;
        self.s[127] = (mask >> 32) as u32;
    }
}

/// A wave at work: its registers, its workgroup's LDS, the launch.
pub(crate) struct Ctx<'a> {
    pub(crate) w: &'a mut Wave,
    pub(crate) lds: &'a mut [u8],
    pub(crate) env: &'a Env<'a>,
    /// A DPP instruction's source 0 as it was before it ran, and EXEC then
    /// (the lanes it may read from).
    pub(crate) dpp_source: [u32; 2 * LANES],
    pub(crate) dpp_exec: u64,
}

fn lanes(mask: u64) -> impl Iterator<Item = usize> {
    (0..LANES).filter(move |l| mask >> l & 1 == 1)
}

fn inline_f32(enc: u16) -> Option<f32> {
    Some(match enc {
        240 => 0.5,
        241 => -0.5,
        242 => 1.0,
        243 => -1.0,
        244 => 2.0,
        245 => -2.0,
        246 => 4.0,
        247 => -4.0,
        248 => 0.159_154_94,
        _ => return None,
    })
}

fn inline_f64(enc: u16) -> Option<f64> {
    Some(match enc {
        248 => 0.159_154_943_091_895_35,
        _ => f64::from(inline_f32(enc)?),
    })
}

/// How a 64-bit operand's inline constant or literal widens.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wide {
    Int,
    Float,
    /// Two 32-bit halves (v_pk_mov_b32, v_pk_*_f32).
    Pair,
}

impl Ctx<'_> {
    // ---- operands ----

    fn sreg(&self, enc: u16) -> Result<u32, Fault> {
        self.w
            .s
            .get(enc as usize)
            .copied()
            .ok_or_else(|| format!("scalar register {enc} out of range"))
    }

    /// A 32-bit source operand of a scalar instruction (or a vector one's,
    /// uniform across lanes).
    pub(crate) fn scalar(&self, i: &Instr, enc: u16) -> Result<u32, Fault> {
        Ok(match enc {
            0..=127 => self.sreg(enc)?,
            128..=192 => u32::from(enc - 128),
            193..=208 => (-(i32::from(enc) - 192)) as u32,
            235 => SHARED_HI,
            236 => SHARED_HI,
            237 => PRIVATE_HI,
            238 => PRIVATE_HI,
            240..=248 => inline_f32(enc).unwrap_or(0.0).to_bits(),
            251 => u32::from(self.vcc() == 0),
            252 => u32::from(self.w.exec() == 0),
            253 => u32::from(self.w.scc),
            src::LITERAL => i.literal,
            _ => return Err(format!("operand encoding {enc} is not supported")),
        })
    }

    pub(crate) fn scalar64(&self, i: &Instr, enc: u16, wide: Wide) -> Result<u64, Fault> {
        Ok(match enc {
            0..=127 => u64::from(self.sreg(enc)?) | u64::from(self.sreg(enc + 1)?) << 32,
            128..=208 => self.scalar(i, enc)? as i32 as i64 as u64,
            235..=238 => u64::from(self.scalar(i, enc)?) << 32,
            // A 64-bit operand's float constant is the double, integer or not;
            // a pair of singles (gfx90a's packed f32) has the single in each half.
            240..=248 => match wide {
                Wide::Float | Wide::Int => inline_f64(enc).unwrap_or(0.0).to_bits(),
                Wide::Pair => {
                    let bits = u64::from(self.scalar(i, enc)?);
                    bits | bits << 32
                }
            },
            src::LITERAL => match wide {
                Wide::Float => u64::from(i.literal) << 32,
                Wide::Int | Wide::Pair => u64::from(i.literal),
            },
            _ => u64::from(self.scalar(i, enc)?),
        })
    }

    fn vgpr_index(&self, reg: usize) -> Result<usize, Fault> {
        if reg < self.w.vgprs {
            Ok(reg * LANES)
        } else {
            Err(format!(
                "v{reg}: past the {} VGPRs the kernel asked for",
                self.w.vgprs
            ))
        }
    }

    pub(crate) fn vget(&self, reg: usize, lane: usize) -> Result<u32, Fault> {
        Ok(self.w.v[self.vgpr_index(reg)? + lane])
    }

    pub(crate) fn vset(&mut self, reg: usize, lane: usize, value: u32) -> Result<(), Fault> {
        let at = self.vgpr_index(reg)? + lane;
        self.w.v[at] = value;
        Ok(())
    }

    fn vset64(&mut self, reg: usize, lane: usize, value: u64) -> Result<(), Fault> {
        self.vset(reg, lane, value as u32)?;
        self.vset(reg + 1, lane, (value >> 32) as u32)
    }

    /// Source `n`'s 32-bit value in `lane`.
    pub(crate) fn src(&self, i: &Instr, n: usize, lane: usize) -> Result<u32, Fault> {
        let enc = i.src[n];
        let v = if enc >= src::VGPR0 {
            match self.source_lane(i, n, lane) {
                Some(l) if self.dpp_reads(i, n) => self.dpp_source[l],
                Some(l) => self.vget(usize::from(enc - src::VGPR0), l)?,
                None => 0,
            }
        } else {
            self.scalar(i, enc)?
        };
        Ok(match &i.extra {
            Extra::Sdwa(s) if n < 2 => sdwa_select(s.sel[n], s.sext[n], v),
            _ => v,
        })
    }

    /// Whether source `n` is DPP's, read from the snapshot taken before the
    /// instruction (every lane reads the values from before any lane wrote).
    fn dpp_reads(&self, i: &Instr, n: usize) -> bool {
        n == 0 && matches!(i.extra, Extra::Dpp(_))
    }

    /// Takes DPP's snapshot of source 0 (two registers, for 64-bit sources).
    pub(crate) fn snapshot_dpp_source(&mut self, i: &Instr) -> Result<(), Fault> {
        let r = usize::from(i.src[0] - src::VGPR0);
        self.dpp_exec = self.w.exec();
        for l in 0..LANES {
            self.dpp_source[l] = self.vget(r, l)?;
            self.dpp_source[LANES + l] = if r + 1 < self.w.vgprs {
                self.vget(r + 1, l)?
            } else {
                0
            };
        }
        Ok(())
    }

    /// The lane a VGPR source is read from: `lane`, or under DPP (source 0) the
    /// lane its control names (`None`: out of range or disabled, which reads 0).
    fn source_lane(&self, i: &Instr, n: usize, lane: usize) -> Option<usize> {
        match &i.extra {
            Extra::Dpp(d) if n == 0 => {
                dpp_source(d.ctrl, lane).filter(|&l| self.dpp_exec >> l & 1 == 1)
            }
            _ => Some(lane),
        }
    }

    pub(crate) fn src64(&self, i: &Instr, n: usize, lane: usize, wide: Wide) -> Result<u64, Fault> {
        let enc = i.src[n];
        if enc >= src::VGPR0 {
            let r = usize::from(enc - src::VGPR0);
            let Some(lane) = self.source_lane(i, n, lane) else {
                return Ok(0);
            };
            if self.dpp_reads(i, n) {
                return Ok(u64::from(self.dpp_source[lane])
                    | u64::from(self.dpp_source[LANES + lane]) << 32);
            }
            Ok(u64::from(self.vget(r, lane)?) | u64::from(self.vget(r + 1, lane)?) << 32)
        } else {
            self.scalar64(i, enc, wide)
        }
    }

    fn f32_src(&self, i: &Instr, n: usize, lane: usize) -> Result<f32, Fault> {
        let mut x = f32::from_bits(self.src(i, n, lane)?);
        if i.abs >> n & 1 == 1 {
            x = x.abs();
        }
        if i.neg >> n & 1 == 1 {
            x = -x;
        }
        Ok(x)
    }

    /// The half of `word` a 16-bit source `n` reads: the high one when VOP3's
    /// `op_sel` says so.
    fn half_of(i: &Instr, n: usize, word: u32) -> u16 {
        let high = i.format == Format::Vop3 && i.op_sel >> n & 1 == 1;
        (if high { word >> 16 } else { word }) as u16
    }

    /// A half-precision source's bits, its `abs` and `neg` applied (to the sign
    /// bit, as the hardware does, NaNs included).
    fn f16_bits(&self, i: &Instr, n: usize, lane: usize) -> Result<u16, Fault> {
        let mut bits = Self::half_of(i, n, self.src16_word(i, n, lane, true)?);
        if i.abs >> n & 1 == 1 {
            bits &= 0x7fff;
        }
        if i.neg >> n & 1 == 1 {
            bits ^= 0x8000;
        }
        Ok(bits)
    }

    /// A half-precision source, widened.
    fn f16_src(&self, i: &Instr, n: usize, lane: usize) -> Result<f32, Fault> {
        Ok(f16_to_f32(self.f16_bits(i, n, lane)?))
    }

    /// Writes a 16-bit result: the low half, the high half zeroed (the high half
    /// kept, and written, when VOP3 `op_sel` names the destination's).
    fn set16(&mut self, i: &Instr, lane: usize, h: u16) -> Result<(), Fault> {
        let h = u32::from(h);
        let v = if i.format == Format::Vop3 && i.op_sel & 8 != 0 {
            (self.vget(i.dst.into(), lane)? & 0xffff) | h << 16
        } else {
            h
        };
        self.vset(i.dst.into(), lane, v)
    }

    /// Writes a half-precision result.
    fn set_f16(&mut self, i: &Instr, lane: usize, x: f32) -> Result<(), Fault> {
        self.set16(i, lane, f32_to_f16(Self::omod_f32(i, x)))
    }

    fn f16_op(
        &mut self,
        i: &Instr,
        arity: usize,
        f: impl Fn([f32; 3]) -> f32,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let a = c.sources(i, l, arity, Self::f16_src)?;
            c.set_f16(i, l, f(a))
        })
    }

    /// The 32-bit word a 16-bit operand's halves are picked from. Inline
    /// constants as the hardware makes them: integers sign-extended to 32 bits;
    /// float constants the half value in the low 16 bits (zeros above) for half
    /// operations, the single's bits for integer ones.
    fn src16_word(&self, i: &Instr, n: usize, lane: usize, half: bool) -> Result<u32, Fault> {
        let enc = i.src[n];
        match inline_f32(enc) {
            Some(_) if half && enc == 248 => Ok(0x3118),
            Some(x) if half => Ok(u32::from(f32_to_f16(x))),
            _ => self.src(i, n, lane),
        }
    }

    /// A 16-bit integer source (VOP3 `op_sel` picks the high half).
    fn u16_src(&self, i: &Instr, n: usize, lane: usize) -> Result<u32, Fault> {
        Ok(u32::from(Self::half_of(i, n, self.src(i, n, lane)?)))
    }

    /// A 16-bit integer op: the low half of the result, the high half zeroed
    /// (or, under VOP3 `op_sel` of the destination, the high half written).
    fn u16_op(
        &mut self,
        i: &Instr,
        arity: usize,
        f: impl Fn([u32; 3]) -> u32,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let a = c.sources(i, l, arity, Self::u16_src)?;
            c.set16(i, l, f(a) as u16)
        })
    }

    /// One half of a packed (VOP3P) source: `op_sel` picks it for the low
    /// result, `op_sel_hi` for the high one. Inline constants are the low half.
    fn packed_half(&self, i: &Instr, n: usize, lane: usize, high: bool) -> Result<u16, Fault> {
        let v = self.src16_word(i, n, lane, i.name.ends_with("f16"))?;
        let sel = if high {
            i.op_sel_hi >> n & 1
        } else {
            i.op_sel >> n & 1
        };
        Ok((v >> (16 * u32::from(sel))) as u16)
    }

    fn packed_u16(
        &mut self,
        i: &Instr,
        arity: usize,
        f: impl Fn([u32; 3]) -> u32,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let mut out = 0u32;
            for half in 0..2 {
                let mut a = [0u32; 3];
                for (n, x) in a.iter_mut().enumerate().take(arity) {
                    *x = u32::from(c.packed_half(i, n, l, half == 1)?);
                }
                out |= (f(a) & 0xffff) << (16 * half);
            }
            c.vset(i.dst.into(), l, out)
        })
    }

    fn packed_f16(
        &mut self,
        i: &Instr,
        arity: usize,
        f: impl Fn([f32; 3]) -> f32,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let mut out = 0u32;
            for half in 0..2 {
                let neg = if half == 0 { i.neg } else { i.neg_hi };
                let mut a = [0f32; 3];
                for (n, x) in a.iter_mut().enumerate().take(arity) {
                    *x = f16_to_f32(c.packed_half(i, n, l, half == 1)?);
                    if neg >> n & 1 == 1 {
                        *x = -*x;
                    }
                }
                let mut r = f(a);
                if i.clamp {
                    r = r.clamp(0.0, 1.0);
                }
                out |= u32::from(f32_to_f16(r)) << (16 * half);
            }
            c.vset(i.dst.into(), l, out)
        })
    }

    fn f64_src(&self, i: &Instr, n: usize, lane: usize) -> Result<f64, Fault> {
        let mut x = f64::from_bits(self.src64(i, n, lane, Wide::Float)?);
        if i.abs >> n & 1 == 1 {
            x = x.abs();
        }
        if i.neg >> n & 1 == 1 {
            x = -x;
        }
        Ok(x)
    }

    fn omod_f32(i: &Instr, x: f32) -> f32 {
        let x = match i.omod {
            1 => x * 2.0,
            2 => x * 4.0,
            3 => x * 0.5,
            _ => x,
        };
        if i.clamp {
            x.clamp(0.0, 1.0)
        } else {
            x
        }
    }

    fn omod_f64(i: &Instr, x: f64) -> f64 {
        let x = match i.omod {
            1 => x * 2.0,
            2 => x * 4.0,
            3 => x * 0.5,
            _ => x,
        };
        if i.clamp {
            x.clamp(0.0, 1.0)
        } else {
            x
        }
    }

    pub(crate) fn vcc(&self) -> u64 {
        u64::from(self.w.s[106]) | u64::from(self.w.s[107]) << 32
    }

    /// Writes a scalar destination (SGPR or special register).
    pub(crate) fn sset(&mut self, enc: u16, value: u32) -> Result<(), Fault> {
        match enc {
            0..=127 => {
                self.w.s[enc as usize] = value;
                Ok(())
            }
            _ => Err(format!("scalar destination {enc} is not writable")),
        }
    }

    pub(crate) fn sset64(&mut self, enc: u16, value: u64) -> Result<(), Fault> {
        self.sset(enc, value as u32)?;
        self.sset(enc + 1, (value >> 32) as u32)
    }

    // ---- vector shapes ----

    fn each(
        &mut self,
        mut body: impl FnMut(&mut Self, usize) -> Result<(), Fault>,
    ) -> Result<Flow, Fault> {
        for lane in lanes(self.w.exec()) {
            body(self, lane)?;
        }
        Ok(Flow::Next)
    }

    fn u32_op(
        &mut self,
        i: &Instr,
        arity: usize,
        f: impl Fn([u32; 3]) -> u32,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let a = c.sources(i, l, arity, Self::src)?;
            c.vset(i.dst.into(), l, f(a))
        })
    }

    fn f32_op(
        &mut self,
        i: &Instr,
        arity: usize,
        f: impl Fn([f32; 3]) -> f32,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let a = c.sources(i, l, arity, Self::f32_src)?;
            c.vset(i.dst.into(), l, Self::omod_f32(i, f(a)).to_bits())
        })
    }

    fn f64_op(
        &mut self,
        i: &Instr,
        arity: usize,
        f: impl Fn([f64; 3]) -> f64,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let a = c.sources(i, l, arity, Self::f64_src)?;
            c.vset64(i.dst.into(), l, Self::omod_f64(i, f(a)).to_bits())
        })
    }

    /// The first `arity` sources of `lane`, each read by `read`.
    fn sources<T: Copy + Default>(
        &self,
        i: &Instr,
        lane: usize,
        arity: usize,
        read: fn(&Self, &Instr, usize, usize) -> Result<T, Fault>,
    ) -> Result<[T; 3], Fault> {
        let mut a = [T::default(); 3];
        for (n, x) in a.iter_mut().enumerate().take(arity) {
            *x = read(self, i, n, lane)?;
        }
        Ok(a)
    }

    /// VGPR `r` of `lane`, or the pair from `r` (low first) when `wide`.
    fn vget_wide(&self, r: usize, lane: usize, wide: bool) -> Result<u64, Fault> {
        let low = u64::from(self.vget(r, lane)?);
        Ok(if wide {
            low | u64::from(self.vget(r + 1, lane)?) << 32
        } else {
            low
        })
    }

    /// Writes `value` to VGPR `r` of `lane`, or to the pair from `r` when `wide`.
    fn vset_wide(&mut self, r: usize, lane: usize, value: u64, wide: bool) -> Result<(), Fault> {
        if wide {
            self.vset64(r, lane, value)
        } else {
            self.vset(r, lane, value as u32)
        }
    }

    /// A 64-bit result from 32- or 64-bit sources.
    fn u64_op(
        &mut self,
        i: &Instr,
        wide: [bool; 3],
        f: fn([u64; 3]) -> u64,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let mut a = [0u64; 3];
            for (n, x) in a.iter_mut().enumerate() {
                if wide[n] {
                    *x = c.src64(i, n, l, Wide::Int)?;
                } else if n < 2 || i.format == Format::Vop3 {
                    *x = u64::from(c.src(i, n, l)?);
                }
            }
            c.vset64(i.dst.into(), l, f(a))
        })
    }

    /// A single-precision result from one float source (modifiers applied).
    fn f32_from(
        &mut self,
        i: &Instr,
        read: fn(&Self, &Instr, usize) -> Result<f32, Fault>,
    ) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let x = read(c, i, l)?;
            c.vset(i.dst.into(), l, Self::omod_f32(i, x).to_bits())
        })
    }

    /// An integer result from a single-precision source (modifiers applied).
    fn u32_from_f32(&mut self, i: &Instr, f: fn(f32) -> u32) -> Result<Flow, Fault> {
        self.each(|c, l| {
            let x = c.f32_src(i, 0, l)?;
            c.vset(i.dst.into(), l, f(x))
        })
    }

    /// A conversion or other op from 32-bit to a 32-bit destination, any types.
    fn map32(&mut self, i: &Instr, f: fn(u32) -> u32) -> Result<Flow, Fault> {
        self.u32_op(i, 1, |a| f(a[0]))
    }

    /// A compare: the mask of lanes where it holds (0 for inactive lanes),
    /// into its scalar destination; the `v_cmpx` forms also into EXEC.
    fn compare(
        &mut self,
        i: &Instr,
        holds: impl Fn(&Self, usize) -> Result<bool, Fault>,
    ) -> Result<Flow, Fault> {
        let mut mask = 0u64;
        for l in lanes(self.w.exec()) {
            if holds(self, l)? {
                mask |= 1 << l;
            }
        }
        self.sset64(i.sdst, mask)?;
        if i.name.starts_with("v_cmpx") {
            self.w.set_exec(mask);
        }
        Ok(Flow::Next)
    }

    /// Add or subtract with carry: `f(a, b, carry_in) -> (result, carry_out)`.
    fn carry_op(
        &mut self,
        i: &Instr,
        uses_carry: bool,
        f: fn(u32, u32, u32) -> (u32, bool),
    ) -> Result<Flow, Fault> {
        let carry_in = if uses_carry {
            self.scalar64(i, i.src[2], Wide::Int)?
        } else {
            0
        };
        let mut out = 0u64;
        for l in lanes(self.w.exec()) {
            let (r, c) = f(
                self.src(i, 0, l)?,
                self.src(i, 1, l)?,
                (carry_in >> l & 1) as u32,
            );
            self.vset(i.dst.into(), l, r)?;
            if c {
                out |= 1 << l;
            }
        }
        self.sset64(i.sdst, out)?;
        Ok(Flow::Next)
    }

    // ---- memory ----

    fn read_global(&self, addr: u64, lane: usize, out: &mut [u8]) -> Result<(), Fault> {
        if addr >> 32 == u64::from(PRIVATE_HI) {
            let at = self.private_range(lane, addr & 0xffff_ffff, out.len())?;
            out.copy_from_slice(&self.w.private[at..at + out.len()]);
            return Ok(());
        }
        if addr >> 32 == u64::from(SHARED_HI) {
            let at = (addr & 0xffff_ffff) as usize;
            let lds = self.lds.get(at..at + out.len()).ok_or_else(|| {
                format!(
                    "LDS read of {} bytes at {at:#x} past its {} bytes",
                    out.len(),
                    self.lds.len()
                )
            })?;
            out.copy_from_slice(lds);
            return Ok(());
        }
        self.env.read(addr, out)
    }

    fn write_global(&mut self, addr: u64, lane: usize, data: &[u8]) -> Result<(), Fault> {
        if addr >> 32 == u64::from(PRIVATE_HI) {
            let at = self.private_range(lane, addr & 0xffff_ffff, data.len())?;
            self.w.private[at..at + data.len()].copy_from_slice(data);
            return Ok(());
        }
        if addr >> 32 == u64::from(SHARED_HI) {
            let at = (addr & 0xffff_ffff) as usize;
            let n = self.lds.len();
            let lds = self.lds.get_mut(at..at + data.len()).ok_or_else(|| {
                format!(
                    "LDS write of {} bytes at {at:#x} past its {n} bytes",
                    data.len()
                )
            })?;
            lds.copy_from_slice(data);
            return Ok(());
        }
        self.env.write(addr, data)
    }

    fn lds_range(&self, at: u64, len: usize) -> Result<usize, Fault> {
        let end = at.saturating_add(len as u64);
        if end > self.lds.len() as u64 {
            return Err(format!(
                "LDS access of {len} bytes at {at:#x}, past the workgroup's {} bytes",
                self.lds.len()
            ));
        }
        Ok(at as usize)
    }

    fn lds_read(&self, at: u64, out: &mut [u8]) -> Result<(), Fault> {
        let a = self.lds_range(at, out.len())?;
        out.copy_from_slice(&self.lds[a..a + out.len()]);
        Ok(())
    }

    fn lds_write(&mut self, at: u64, data: &[u8]) -> Result<(), Fault> {
        let a = self.lds_range(at, data.len())?;
        self.lds[a..a + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// A FLAT/GLOBAL instruction's address in `lane`.
    fn flat_address(&self, i: &Instr, lane: usize) -> Result<u64, Fault> {
        let base = if i.format == Format::Global && i.src[2] != src::OFF {
            self.scalar64(i, i.src[2], Wide::Int)?
                .wrapping_add(u64::from(self.src(i, 0, lane)?))
        } else {
            self.src64(i, 0, lane, Wide::Int)?
        };
        Ok(base.wrapping_add(i.imm as u64))
    }

    /// Where `len` bytes at `offset` of `lane`'s private memory are in the wave's.
    fn private_range(&self, lane: usize, offset: u64, len: usize) -> Result<usize, Fault> {
        let per_lane = self.w.private.len() / LANES;
        if offset.saturating_add(len as u64) > per_lane as u64 {
            return Err(format!(
                "a private access of {len} bytes at {offset:#x}, past the {per_lane} bytes per work-item the kernel declared"
            ));
        }
        Ok(lane * per_lane + offset as usize)
    }

    /// A MUBUF instruction's private offset in `lane`: its buffer resource must
    /// be the private segment's (as the wave was given it), whose base and
    /// `soffset` count wave-scaled bytes (64 per work-item byte); the VGPR offset
    /// and the immediate count a work-item's bytes.
    fn scratch_offset(&self, i: &Instr, lane: usize) -> Result<u64, Fault> {
        let base =
            u64::from(self.sreg(i.src[2])?) | u64::from(self.sreg(i.src[2] + 1)? & 0xffff) << 32;
        let wave = base
            .checked_sub(PRIVATE_RESOURCE)
            .ok_or_else(|| format!("a buffer resource with base {base:#x}: only the private segment's is supported"))?
            .wrapping_add(u64::from(self.scalar(i, i.imm2 as u16)?));
        if wave % LANES as u64 != 0 {
            return Err(format!(
                "a private segment offset of {wave:#x} wave bytes, not a whole work-item byte"
            ));
        }
        let mut offset = wave / LANES as u64 + i.imm as u64;
        if i.op_sel & 1 == 1 {
            offset = offset.wrapping_add(u64::from(self.src(i, 0, lane)?));
        }
        Ok(offset)
    }

    /// A compare's float operand of type `ty` (`f16`, `f32`, `f64`), widened.
    fn float_operand(&self, i: &Instr, n: usize, lane: usize, ty: &str) -> Result<f64, Fault> {
        Ok(match ty {
            "f16" => f64::from(self.f16_src(i, n, lane)?),
            "f32" => f64::from(self.f32_src(i, n, lane)?),
            _ => self.f64_src(i, n, lane)?,
        })
    }

    /// A compare's integer operand of type `ty`, widened by its signedness.
    fn int_operand(&self, i: &Instr, n: usize, lane: usize, ty: &str) -> Result<i128, Fault> {
        Ok(match ty {
            "i16" => i128::from(self.u16_src(i, n, lane)? as u16 as i16),
            "u16" => i128::from(self.u16_src(i, n, lane)?),
            "i32" => i128::from(self.src(i, n, lane)? as i32),
            "u32" => i128::from(self.src(i, n, lane)?),
            "i64" => i128::from(self.src64(i, n, lane, Wide::Int)? as i64),
            _ => i128::from(self.src64(i, n, lane, Wide::Int)?),
        })
    }

    /// Writes loaded bytes to VGPRs from `dst` on: a byte or a short widened
    /// (sign-extended or not), else whole dwords.
    fn put_loaded(
        &mut self,
        dst: usize,
        lane: usize,
        bytes: &[u8],
        sign: bool,
    ) -> Result<(), Fault> {
        let value = match *bytes {
            [b] if sign => b as i8 as i32 as u32,
            [b] => u32::from(b),
            [a, b] if sign => i16::from_le_bytes([a, b]) as i32 as u32,
            [a, b] => u32::from(u16::from_le_bytes([a, b])),
            _ => {
                for (n, word) in bytes.chunks(4).enumerate() {
                    self.vset(dst + n, lane, le_u32(word))?;
                }
                return Ok(());
            }
        };
        self.vset(dst, lane, value)
    }

    /// The bytes a store of `bytes` takes from VGPRs from `data` on.
    fn gather_stored(&self, data: usize, lane: usize, bytes: usize) -> Result<[u8; 16], Fault> {
        let mut buf = [0u8; 16];
        for n in 0..bytes.div_ceil(4) {
            buf[n * 4..n * 4 + 4].copy_from_slice(&self.vget(data + n, lane)?.to_le_bytes());
        }
        Ok(buf)
    }

    fn ds_address(&self, i: &Instr, lane: usize) -> Result<u64, Fault> {
        Ok(u64::from(self.src(i, 0, lane)?))
    }
}

/// An SDWA source select: a byte or word of `v` (sign-extended or not), or all of it.
fn sdwa_select(sel: u8, sext: bool, v: u32) -> u32 {
    match sel {
        0..=3 => {
            let b = (v >> (8 * u32::from(sel))) & 0xff;
            if sext {
                b as u8 as i8 as i32 as u32
            } else {
                b
            }
        }
        4 | 5 => {
            let h = (v >> (16 * u32::from(sel - 4))) & 0xffff;
            if sext {
                h as u16 as i16 as i32 as u32
            } else {
                h
            }
        }
        _ => v,
    }
}

/// An SDWA result placed in its destination: `result`'s low byte or word at
/// the selected place, the other bits zero, the sign, or `old`'s.
pub(crate) fn sdwa_place(s: &Sdwa, old: u32, result: u32) -> u32 {
    let (shift, bits) = match s.dst_sel {
        0..=3 => (8 * u32::from(s.dst_sel), 8),
        4 | 5 => (16 * u32::from(s.dst_sel - 4), 16),
        _ => return result,
    };
    let field_mask = ((1u64 << bits) - 1) as u32;
    let field = (result & field_mask) << shift;
    let mask = field_mask << shift;
    match s.dst_unused {
        2 => (old & !mask) | field,
        1 => {
            // Sign-extend upward from the field's top bit.
            let top = (result >> (bits - 1)) & 1 == 1;
            let above = if shift + bits >= 32 {
                0
            } else {
                u32::MAX << (shift + bits)
            };
            field | if top { above } else { 0 }
        }
        _ => field,
    }
}

/// The lane DPP control `ctrl` reads for `lane` (`None`: out of its row or the wave).
pub(crate) fn dpp_source(ctrl: u16, lane: usize) -> Option<usize> {
    let row = lane & !15;
    let in_row = lane & 15;
    let within = |k: isize| -> Option<usize> { (0..16).contains(&k).then(|| row + k as usize) };
    match ctrl {
        0x000..=0x0ff => Some((lane & !3) + ((ctrl as usize >> ((lane & 3) * 2)) & 3)),
        0x101..=0x10f => within(in_row as isize + (ctrl - 0x100) as isize),
        0x111..=0x11f => within(in_row as isize - (ctrl - 0x110) as isize),
        0x121..=0x12f => Some(row + (in_row + 16 - (ctrl - 0x120) as usize) % 16),
        0x130 => (lane + 1 < LANES).then_some(lane + 1),
        0x134 => Some((lane + 1) % LANES),
        0x138 => lane.checked_sub(1),
        0x13c => Some((lane + LANES - 1) % LANES),
        0x140 => Some(row + 15 - in_row),
        0x141 => Some((lane & !7) + 7 - (lane & 7)),
        // row_bcast15: lane 15 of the previous row, to the rows after the first.
        0x142 => (row > 0).then(|| row - 1),
        // row_bcast31: lane 31 to rows 2 and 3.
        0x143 => (row >= 32).then_some(31),
        _ => None,
    }
}

/// The lanes a DPP instruction writes: row and bank masks, and, without
/// `bound_ctrl`, not the lanes whose source is out of range or disabled.
pub(crate) fn dpp_write_mask(d: &Dpp, exec: u64) -> u64 {
    let mut mask = 0u64;
    for lane in 0..LANES {
        let row = lane / 16;
        let bank = (lane % 16) / 4;
        if d.row_mask >> row & 1 == 0 || d.bank_mask >> bank & 1 == 0 {
            continue;
        }
        let valid = dpp_source(d.ctrl, lane).is_some_and(|l| exec >> l & 1 == 1);
        if valid || d.bound_ctrl {
            mask |= 1 << lane;
        }
    }
    mask
}

/// Reads `T` (a plain integer type) from little-endian bytes.
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

// ---- scalar ALU ----

fn sop2_u32(
    c: &mut Ctx<'_>,
    i: &Instr,
    f: fn(u32, u32, bool) -> (u32, Option<bool>),
) -> Result<Flow, Fault> {
    let (a, b) = (c.scalar(i, i.src[0])?, c.scalar(i, i.src[1])?);
    let (r, scc) = f(a, b, c.w.scc);
    c.sset(i.dst, r)?;
    if let Some(s) = scc {
        c.w.scc = s;
    }
    Ok(Flow::Next)
}

fn sop2_u64(c: &mut Ctx<'_>, i: &Instr, f: fn(u64, u64) -> u64) -> Result<Flow, Fault> {
    let a = c.scalar64(i, i.src[0], Wide::Int)?;
    let b = c.scalar64(i, i.src[1], Wide::Int)?;
    let r = f(a, b);
    c.sset64(i.dst, r)?;
    c.w.scc = r != 0;
    Ok(Flow::Next)
}

/// Shifts and bit-field ops of 64-bit values by a 32-bit amount.
fn sop2_u64_by(c: &mut Ctx<'_>, i: &Instr, f: fn(u64, u32) -> u64) -> Result<Flow, Fault> {
    let a = c.scalar64(i, i.src[0], Wide::Int)?;
    let b = c.scalar(i, i.src[1])?;
    let r = f(a, b);
    c.sset64(i.dst, r)?;
    c.w.scc = r != 0;
    Ok(Flow::Next)
}

fn sopc(c: &mut Ctx<'_>, i: &Instr, f: fn(u32, u32) -> bool) -> Result<Flow, Fault> {
    c.w.scc = f(c.scalar(i, i.src[0])?, c.scalar(i, i.src[1])?);
    Ok(Flow::Next)
}

fn sopk_cmp(c: &mut Ctx<'_>, i: &Instr, f: fn(u32, u32) -> bool) -> Result<Flow, Fault> {
    let signed = i.name.ends_with("_i32");
    let k = if signed {
        i.imm as i32 as u32
    } else {
        (i.imm as u32) & 0xffff
    };
    c.w.scc = f(c.sreg(i.dst)?, k);
    Ok(Flow::Next)
}

fn sop1_u32(c: &mut Ctx<'_>, i: &Instr, f: fn(u32) -> u32) -> Result<Flow, Fault> {
    let r = f(c.scalar(i, i.src[0])?);
    c.sset(i.dst, r).map(|()| Flow::Next)
}

fn sop1_u64(c: &mut Ctx<'_>, i: &Instr, f: fn(u64) -> u64, scc: bool) -> Result<Flow, Fault> {
    let r = f(c.scalar64(i, i.src[0], Wide::Int)?);
    c.sset64(i.dst, r)?;
    if scc {
        c.w.scc = r != 0;
    }
    Ok(Flow::Next)
}

/// `s_*_saveexec_b64`: the old EXEC to the destination, `f(source, exec)` to EXEC.
fn saveexec(c: &mut Ctx<'_>, i: &Instr, f: fn(u64, u64) -> u64) -> Result<Flow, Fault> {
    let s = c.scalar64(i, i.src[0], Wide::Int)?;
    let old = c.w.exec();
    c.sset64(i.dst, old)?;
    let new = f(s, old);
    c.w.set_exec(new);
    c.w.scc = new != 0;
    Ok(Flow::Next)
}

fn branch_if(i: &Instr, taken: bool) -> Result<Flow, Fault> {
    Ok(if taken {
        Flow::Jump(i.at.wrapping_add(4).wrapping_add((i.imm * 4) as u64))
    } else {
        Flow::Next
    })
}

fn smem_load(c: &mut Ctx<'_>, i: &Instr, dwords: usize, buffer: bool) -> Result<Flow, Fault> {
    let base = if buffer {
        let lo = c.sreg(i.src[0])?;
        let hi = c.sreg(i.src[0] + 1)? & 0xffff;
        u64::from(lo) | u64::from(hi) << 32
    } else {
        c.scalar64(i, i.src[0], Wide::Int)?
    };
    let mut offset = i.imm as u64;
    if i.imm2 != 0xFFFF {
        offset = offset.wrapping_add(u64::from(c.sreg(i.imm2 as u16)?));
    }
    let mut bytes = vec![0u8; dwords * 4];
    c.env.read(base.wrapping_add(offset), &mut bytes)?;
    for (n, chunk) in bytes.chunks(4).enumerate() {
        c.sset(i.dst + n as u16, le_u32(chunk))?;
    }
    Ok(Flow::Next)
}

/// A bit-field extract of a `bits`-wide value: offset in `ctl`'s low bits,
/// width in bits 22:16, sign-extended or not.
fn bfe(v: u64, ctl: u32, bits: u32, signed: bool) -> u64 {
    let off = ctl & (bits - 1);
    let width = ((ctl >> 16) & 0x7f).min(bits - off);
    if width == 0 {
        return 0;
    }
    let field = (v >> off) << (64 - width);
    let widened = if signed {
        ((field as i64) >> (64 - width)) as u64
    } else {
        field >> (64 - width)
    };
    widened & (u64::MAX >> (64 - bits))
}

fn bfe_u32(v: u32, ctl: u32) -> u32 {
    bfe(u64::from(v), ctl, 32, false) as u32
}

fn bfe_i32(v: u32, ctl: u32) -> u32 {
    bfe(u64::from(v), ctl, 32, true) as u32
}

fn bfe_u64(v: u64, ctl: u32) -> u64 {
    bfe(v, ctl, 64, false)
}

fn bfe_i64(v: u64, ctl: u32) -> u64 {
    bfe(v, ctl, 64, true)
}

fn add_i32(a: u32, b: u32) -> (u32, Option<bool>) {
    let (r, o) = (a as i32).overflowing_add(b as i32);
    (r as u32, Some(o))
}

fn sub_i32(a: u32, b: u32) -> (u32, Option<bool>) {
    let (r, o) = (a as i32).overflowing_sub(b as i32);
    (r as u32, Some(o))
}

fn first_one(v: u64, bits: u32) -> u32 {
    if v == 0 {
        u32::MAX
    } else {
        v.trailing_zeros().min(bits)
    }
}

fn leading(v: u32) -> u32 {
    if v == 0 {
        u32::MAX
    } else {
        v.leading_zeros()
    }
}

fn leading_signed(v: u32) -> u32 {
    let x = v as i32;
    if x == 0 || x == -1 {
        u32::MAX
    } else if x < 0 {
        (!v).leading_zeros()
    } else {
        v.leading_zeros()
    }
}

// ---- float helpers ----

fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | (113 - shift) << 23 | m << 13
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, m) => sign | 0x7fc0_0000 | m << 13,
        (e, m) => sign | (e + 112) << 23 | m << 13,
    };
    f32::from_bits(bits)
}

fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    if x.is_nan() {
        return sign | 0x7e00;
    }
    let a = x.abs();
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 6.103_515_6e-5 {
        // Subnormal half (or zero): round to nearest even multiple of 2^-24.
        let q = (a * 16_777_216.0).round_ties_even();
        return sign | q as u16;
    }
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    let mut h = (exp as u32) << 10 | mant >> 13;
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

/// Single to half, rounding toward zero (`v_cvt_pkrtz_f16_f32`).
fn f32_to_f16_rtz(x: f32) -> u16 {
    let h = f32_to_f16(x);
    // Rounding to nearest went away from zero: step back one toward it.
    if x.is_finite() && f16_to_f32(h).abs() > x.abs() {
        h - 1
    } else {
        h
    }
}

/// `v_trig_preop_f64`: 53 bits of 2/pi from bit `53 * segment` on (further for
/// large inputs), scaled to where they sit in 2/pi.
fn trig_preop(x: f64, segment: u32) -> f64 {
    let exponent = ((x.to_bits() >> 52) & 0x7ff) as u32;
    let mut shift = (segment & 31) * 53;
    if exponent > 1077 {
        shift += exponent - 1077;
    }
    // The table holds 1201 fraction bits of 2/pi; past them, zeros.
    let bit = |k: u32| -> u64 {
        if k > 1200 {
            return 0;
        }
        super::two_over_pi::TWO_OVER_PI[(k / 64) as usize] >> (63 - k % 64) & 1
    };
    let mut bits = 0u64;
    for k in shift..shift + 53 {
        bits = bits << 1 | bit(k);
    }
    let mut scale = -53 - shift as i32;
    if exponent >= 1968 {
        scale += 128;
    }
    ldexp64(bits as f64, scale)
}

fn cvt_i32(x: f64) -> u32 {
    if x.is_nan() {
        0
    } else {
        x.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 as u32
    }
}

fn cvt_u32(x: f64) -> u32 {
    if x.is_nan() {
        0
    } else {
        x.clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

/// `v_cmp_class_*`: whether `mask` has the bit of the class of the IEEE value
/// `bits` (`exp_bits` of exponent, `mant_bits` of mantissa): 0 signalling NaN,
/// 1 quiet NaN, 2-5 negative infinity, normal, subnormal, zero, 6-9 the positive
/// ones in the opposite order.
fn class_of(bits: u64, exp_bits: u32, mant_bits: u32, mask: u32) -> bool {
    let negative = bits >> (exp_bits + mant_bits) & 1 == 1;
    let exp = (bits >> mant_bits) & ((1 << exp_bits) - 1);
    let mant = bits & ((1 << mant_bits) - 1);
    let all_ones = (1 << exp_bits) - 1;
    let (neg, pos) = match (exp, mant) {
        (e, m) if e == all_ones && m != 0 => {
            let quiet = u32::from(m >> (mant_bits - 1) & 1 == 1);
            (quiet, quiet)
        }
        (e, _) if e == all_ones => (2, 9),
        (0, 0) => (5, 6),
        (0, _) => (4, 7),
        _ => (3, 8),
    };
    mask >> (if negative { neg } else { pos }) & 1 == 1
}

fn class_f16(h: u16, mask: u32) -> bool {
    class_of(u64::from(h), 5, 10, mask)
}

fn class_f32(x: f32, mask: u32) -> bool {
    class_of(u64::from(x.to_bits()), 8, 23, mask)
}

fn class_f64(x: f64, mask: u32) -> bool {
    class_of(x.to_bits(), 11, 52, mask)
}

/// `v_div_fixup`: the quotient `q` of `n / d`, with IEEE's answers where the
/// division is special (NaN, infinity, zero).
fn div_fixup_f64(q: f64, d: f64, n: f64) -> f64 {
    if n.is_nan() || d.is_nan() || d == 0.0 || d.is_infinite() || n.is_infinite() {
        n / d
    } else {
        q
    }
}

fn div_fixup_f32(q: f32, d: f32, n: f32) -> f32 {
    if n.is_nan() || d.is_nan() || d == 0.0 || d.is_infinite() || n.is_infinite() {
        n / d
    } else {
        q
    }
}

fn fmin(a: f32, b: f32) -> f32 {
    a.min(b)
}

fn fmax(a: f32, b: f32) -> f32 {
    a.max(b)
}

fn med3<T: PartialOrd + Copy>(a: T, b: T, c: T) -> T {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if c < lo {
        lo
    } else if c > hi {
        hi
    } else {
        c
    }
}

fn fract32(x: f32) -> f32 {
    (x - x.floor()).min(f32::from_bits(0x3f7f_ffff))
}

fn fract64(x: f64) -> f64 {
    (x - x.floor()).min(f64::from_bits(0x3fef_ffff_ffff_ffff))
}

fn frexp_exp32(x: f32) -> u32 {
    if x == 0.0 || !x.is_finite() {
        0
    } else {
        let (_, e) = frexp(f64::from(x));
        e as u32
    }
}

fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let mut e = ((x.to_bits() >> 52) & 0x7ff) as i32;
    let mut y = x;
    if e == 0 {
        y = x * f64::from_bits(0x4350_0000_0000_0000); // 2^54
        e = ((y.to_bits() >> 52) & 0x7ff) as i32 - 54;
    }
    let exp = e - 1022;
    let mant = f64::from_bits((y.to_bits() & !(0x7ff << 52)) | (1022u64 << 52));
    (mant, exp)
}

fn ldexp64(x: f64, e: i32) -> f64 {
    let mut x = x;
    let mut e = e;
    while e > 1000 {
        x *= 2f64.powi(1000);
        e -= 1000;
    }
    while e < -1000 {
        x *= 2f64.powi(-1000);
        e += 1000;
    }
    x * 2f64.powi(e)
}

// ---- vector memory ----

fn global_load(c: &mut Ctx<'_>, i: &Instr, bytes: usize, sign: bool) -> Result<Flow, Fault> {
    c.each(|c, l| {
        let addr = c.flat_address(i, l)?;
        let mut buf = [0u8; 16];
        c.read_global(addr, l, &mut buf[..bytes])?;
        c.put_loaded(usize::from(i.dst), l, &buf[..bytes], sign)
    })
}

fn global_store(c: &mut Ctx<'_>, i: &Instr, bytes: usize) -> Result<Flow, Fault> {
    let data = usize::from(i.src[1] - src::VGPR0);
    c.each(|c, l| {
        let addr = c.flat_address(i, l)?;
        let buf = c.gather_stored(data, l, bytes)?;
        c.write_global(addr, l, &buf[..bytes])
    })
}

/// `buffer_load_*` / `buffer_store_*` on the private segment.
fn scratch_rw(
    c: &mut Ctx<'_>,
    i: &Instr,
    read: bool,
    bytes: usize,
    sign: bool,
) -> Result<Flow, Fault> {
    let data = usize::from(i.src[1] - src::VGPR0);
    c.each(|c, l| {
        let at = c.private_range(l, c.scratch_offset(i, l)?, bytes)?;
        if read {
            let mut buf = [0u8; 16];
            buf[..bytes].copy_from_slice(&c.w.private[at..at + bytes]);
            c.put_loaded(data, l, &buf[..bytes], sign)
        } else {
            let buf = c.gather_stored(data, l, bytes)?;
            c.w.private[at..at + bytes].copy_from_slice(&buf[..bytes]);
            Ok(())
        }
    })
}

/// A read-modify-write of 4 or 8 bytes at `addr`: atomic in global memory,
/// plain in LDS (one thread runs a workgroup). Returns the value before.
fn rmw(c: &mut Ctx<'_>, addr: u64, wide: bool, f: &dyn Fn(u64) -> u64) -> Result<u64, Fault> {
    let len = if wide { 8 } else { 4 };
    if addr >> 32 == u64::from(SHARED_HI) {
        return rmw_lds(c, addr & 0xffff_ffff, wide, f);
    }
    let ptr = c.env.translate(addr, len)?;
    if !(ptr as usize).is_multiple_of(len) {
        return Err(format!("a misaligned {len}-byte atomic at {addr:#x}"));
    }
    if wide {
        // SAFETY: translate gave a live, aligned 8-byte range of device memory.
        let cell = unsafe { AtomicU64::from_ptr(ptr.cast()) };
        let mut old = cell.load(Ordering::SeqCst);
        loop {
            match cell.compare_exchange_weak(old, f(old), Ordering::SeqCst, Ordering::SeqCst) {
                Ok(v) => return Ok(v),
                Err(v) => old = v,
            }
        }
    } else {
        // SAFETY: as above, 4 bytes.
        let cell = unsafe { AtomicU32::from_ptr(ptr.cast()) };
        let mut old = cell.load(Ordering::SeqCst);
        loop {
            match cell.compare_exchange_weak(
                old,
                f(u64::from(old)) as u32,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(v) => return Ok(u64::from(v)),
                Err(v) => old = v,
            }
        }
    }
}

fn rmw_lds(c: &mut Ctx<'_>, at: u64, wide: bool, f: &dyn Fn(u64) -> u64) -> Result<u64, Fault> {
    let len = if wide { 8 } else { 4 };
    let mut buf = [0u8; 8];
    c.lds_read(at, &mut buf[..len])?;
    let old = u64::from_le_bytes(buf);
    let new = f(old);
    c.lds_write(at, &new.to_le_bytes()[..len])?;
    Ok(old)
}

/// `(old, data, 64-bit) -> new`: what an atomic does.
type AtomicFn = fn(u64, u64, bool) -> u64;

/// What an atomic does to the old value with the data.
fn atomic_fn(op: &str, wide: bool) -> Option<AtomicFn> {
    // (old, data, wide) -> new
    Some(match op {
        "swap" | "wrxchg_rtn" => |_, d, _| d,
        "add" => |o, d, w| {
            if w {
                o.wrapping_add(d)
            } else {
                (o as u32).wrapping_add(d as u32) as u64
            }
        },
        "sub" => |o, d, w| {
            if w {
                o.wrapping_sub(d)
            } else {
                (o as u32).wrapping_sub(d as u32) as u64
            }
        },
        "rsub" => |o, d, w| {
            if w {
                d.wrapping_sub(o)
            } else {
                (d as u32).wrapping_sub(o as u32) as u64
            }
        },
        "smin" | "min_i" => |o, d, w| {
            if w {
                (o as i64).min(d as i64) as u64
            } else {
                (o as i32).min(d as i32) as u32 as u64
            }
        },
        "smax" | "max_i" => |o, d, w| {
            if w {
                (o as i64).max(d as i64) as u64
            } else {
                (o as i32).max(d as i32) as u32 as u64
            }
        },
        "umin" | "min_u" => |o, d, w| {
            if w {
                o.min(d)
            } else {
                (o as u32).min(d as u32) as u64
            }
        },
        "umax" | "max_u" => |o, d, w| {
            if w {
                o.max(d)
            } else {
                (o as u32).max(d as u32) as u64
            }
        },
        "and" => |o, d, _| o & d,
        "or" => |o, d, _| o | d,
        "xor" => |o, d, _| o ^ d,
        "inc" => |o, d, w| {
            if w {
                if o >= d {
                    0
                } else {
                    o + 1
                }
            } else if o as u32 >= d as u32 {
                0
            } else {
                u64::from(o as u32 + 1)
            }
        },
        "dec" => |o, d, w| {
            if w {
                if o == 0 || o > d {
                    d
                } else {
                    o - 1
                }
            } else if o as u32 == 0 || o as u32 > d as u32 {
                d & 0xffff_ffff
            } else {
                u64::from(o as u32 - 1)
            }
        },
        "add_f32" => {
            |o, d, _| u64::from((f32::from_bits(o as u32) + f32::from_bits(d as u32)).to_bits())
        }
        "min_f32" => {
            |o, d, _| u64::from(fmin(f32::from_bits(o as u32), f32::from_bits(d as u32)).to_bits())
        }
        "max_f32" => {
            |o, d, _| u64::from(fmax(f32::from_bits(o as u32), f32::from_bits(d as u32)).to_bits())
        }
        "add_f64" => |o, d, _| (f64::from_bits(o) + f64::from_bits(d)).to_bits(),
        "min_f64" => |o, d, _| f64::from_bits(o).min(f64::from_bits(d)).to_bits(),
        "max_f64" => |o, d, _| f64::from_bits(o).max(f64::from_bits(d)).to_bits(),
        _ => {
            let _ = wide;
            return None;
        }
    })
}

fn global_atomic(
    c: &mut Ctx<'_>,
    i: &Instr,
    op: fn(u64, u64, bool) -> u64,
    wide: bool,
    cmpswap: bool,
) -> Result<Flow, Fault> {
    let data = usize::from(i.src[1] - src::VGPR0);
    let words = if wide { 2 } else { 1 };
    c.each(|c, l| {
        let addr = c.flat_address(i, l)?;
        let get = |c: &Ctx<'_>, r: usize| c.vget_wide(r, l, wide);
        let value = get(c, data)?;
        let old = if cmpswap {
            let compare = get(c, data + words)?;
            rmw(c, addr, wide, &|o| if o == compare { value } else { o })?
        } else {
            rmw(c, addr, wide, &|o| op(o, value, wide))?
        };
        if i.glc {
            c.vset_wide(i.dst.into(), l, old, wide)?;
        }
        Ok(())
    })
}

fn ds_rw(c: &mut Ctx<'_>, i: &Instr, read: bool, bytes: usize, sign: bool) -> Result<Flow, Fault> {
    let offset = (i.imm as u64) | u64::from(i.imm2) << 8;
    let data = usize::from(i.src[1] - src::VGPR0);
    c.each(|c, l| {
        let at = c.ds_address(i, l)? + offset;
        if read {
            let mut buf = [0u8; 16];
            c.lds_read(at, &mut buf[..bytes])?;
            c.put_loaded(usize::from(i.dst), l, &buf[..bytes], sign)
        } else {
            let buf = c.gather_stored(data, l, bytes)?;
            c.lds_write(at, &buf[..bytes])
        }
    })
}

/// `ds_read2*` / `ds_write2*`: two elements at offset0 and offset1 (in elements,
/// times 64 for the `st64` forms).
fn ds_rw2(
    c: &mut Ctx<'_>,
    i: &Instr,
    read: bool,
    wide: bool,
    stride64: bool,
) -> Result<Flow, Fault> {
    let size: u64 = if wide { 8 } else { 4 };
    let scale = size * if stride64 { 64 } else { 1 };
    let offsets = [i.imm as u64 * scale, u64::from(i.imm2) * scale];
    let words = size as usize / 4;
    c.each(|c, l| {
        let base = c.ds_address(i, l)?;
        for (k, off) in offsets.iter().enumerate() {
            let at = base + off;
            let mut buf = [0u8; 8];
            if read {
                c.lds_read(at, &mut buf[..size as usize])?;
                for n in 0..words {
                    c.vset(usize::from(i.dst) + k * words + n, l, le_u32(&buf[n * 4..]))?;
                }
            } else {
                let data = usize::from(i.src[1 + k] - src::VGPR0);
                for n in 0..words {
                    buf[n * 4..n * 4 + 4].copy_from_slice(&c.vget(data + n, l)?.to_le_bytes());
                }
                c.lds_write(at, &buf[..size as usize])?;
            }
        }
        Ok(())
    })
}

fn ds_atomic(
    c: &mut Ctx<'_>,
    i: &Instr,
    op: fn(u64, u64, bool) -> u64,
    wide: bool,
    ret: bool,
    cmpst: bool,
) -> Result<Flow, Fault> {
    let offset = (i.imm as u64) | u64::from(i.imm2) << 8;
    let data0 = usize::from(i.src[1] - src::VGPR0);
    let data1 = usize::from(i.src[2] - src::VGPR0);
    c.each(|c, l| {
        let at = c.ds_address(i, l)? + offset;
        let get = |c: &Ctx<'_>, r: usize| c.vget_wide(r, l, wide);
        let d0 = get(c, data0)?;
        let old = if cmpst {
            // MEM = MEM == DATA0 ? DATA1 : MEM
            let d1 = get(c, data1)?;
            rmw_lds(c, at, wide, &|o| if o == d0 { d1 } else { o })?
        } else {
            rmw_lds(c, at, wide, &|o| op(o, d0, wide))?
        };
        if ret {
            c.vset_wide(i.dst.into(), l, old, wide)?;
        }
        Ok(())
    })
}

/// Cross-lane: `ds_bpermute_b32` (each lane reads the lane its address names),
/// `ds_permute_b32` (each lane writes to it), `ds_swizzle_b32`.
fn ds_cross_lane(c: &mut Ctx<'_>, i: &Instr, kind: u8) -> Result<Flow, Fault> {
    let offset = (i.imm as u32) | i.imm2 << 8;
    let data = usize::from(i.src[1] - src::VGPR0);
    let exec = c.w.exec();
    let mut values = [0u32; LANES];
    for (l, v) in values.iter_mut().enumerate() {
        *v = c.vget(data, l)?;
    }
    let mut out = [0u32; LANES];
    match kind {
        0 | 1 => {
            for l in lanes(exec) {
                let other = ((c.src(i, 0, l)?.wrapping_add(offset) / 4) % 64) as usize;
                if kind == 0 {
                    // Inactive lanes read as 0.
                    out[l] = if exec >> other & 1 == 1 {
                        values[other]
                    } else {
                        0
                    };
                } else {
                    out[other] = values[l];
                }
            }
        }
        _ => {
            for l in lanes(exec) {
                let other = if offset & 0x8000 != 0 {
                    let sel = (offset >> ((l % 4) * 2)) & 3;
                    (l & !3) + sel as usize
                } else {
                    let and = (offset & 0x1f) as usize;
                    let or = ((offset >> 5) & 0x1f) as usize;
                    let xor = ((offset >> 10) & 0x1f) as usize;
                    (l & !0x1f) | ((((l & 0x1f) & and) | or) ^ xor)
                };
                out[l] = if exec >> other & 1 == 1 {
                    values[other]
                } else {
                    0
                };
            }
        }
    }
    for l in lanes(exec) {
        c.vset(i.dst.into(), l, out[l])?;
    }
    Ok(Flow::Next)
}

macro_rules! op {
    (|$c:ident, $i:ident| $body:expr) => {
        Some(|$c: &mut Ctx<'_>, $i: &Instr| -> Result<Flow, Fault> { $body })
    };
}

/// What `i` does, or `None` when the interpreter cannot run it.
pub(crate) fn semantics(i: &Instr) -> Option<Exec> {
    if i.unsupported_form.is_some() {
        return None;
    }
    match i.format {
        Format::Sop2 | Format::Sopk | Format::Sop1 | Format::Sopc | Format::Sopp => {
            scalar_semantics(i.name)
        }
        Format::Smem => smem_semantics(i.name),
        Format::Vop1 | Format::Vop2 | Format::Vopc | Format::Vop3 | Format::Vop3p => {
            vector_semantics(i.name)
        }
        Format::Ds => ds_semantics(i.name),
        Format::Flat | Format::Global => flat_semantics(i.name),
        Format::Mubuf => mubuf_semantics(i.name),
    }
}

fn scalar_semantics(name: &str) -> Option<Exec> {
    match name {
        // SOP2
        "s_add_u32" => op!(|c, i| sop2_u32(c, i, |a, b, _| {
            let (r, o) = a.overflowing_add(b);
            (r, Some(o))
        })),
        "s_sub_u32" => op!(|c, i| sop2_u32(c, i, |a, b, _| {
            let (r, o) = a.overflowing_sub(b);
            (r, Some(o))
        })),
        "s_add_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| add_i32(a, b))),
        "s_sub_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| sub_i32(a, b))),
        "s_addc_u32" => op!(|c, i| sop2_u32(c, i, |a, b, s| {
            let r = u64::from(a) + u64::from(b) + u64::from(s);
            (r as u32, Some(r >> 32 != 0))
        })),
        "s_subb_u32" => op!(|c, i| sop2_u32(c, i, |a, b, s| {
            let r = u64::from(a)
                .wrapping_sub(u64::from(b))
                .wrapping_sub(u64::from(s));
            (r as u32, Some(u64::from(b) + u64::from(s) > u64::from(a)))
        })),
        "s_min_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (
            (a as i32).min(b as i32) as u32,
            Some((a as i32) < (b as i32))
        ))),
        "s_min_u32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (a.min(b), Some(a < b)))),
        "s_max_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (
            (a as i32).max(b as i32) as u32,
            Some((a as i32) > (b as i32))
        ))),
        "s_max_u32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (a.max(b), Some(a > b)))),
        "s_cselect_b32" => op!(|c, i| sop2_u32(c, i, |a, b, s| (if s { a } else { b }, None))),
        "s_cselect_b64" => op!(|c, i| {
            let (a, b) = (
                c.scalar64(i, i.src[0], Wide::Int)?,
                c.scalar64(i, i.src[1], Wide::Int)?,
            );
            let r = if c.w.scc { a } else { b };
            c.sset64(i.dst, r).map(|()| Flow::Next)
        }),
        "s_and_b32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (a & b, Some(a & b != 0)))),
        "s_or_b32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (a | b, Some(a | b != 0)))),
        "s_xor_b32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (a ^ b, Some(a ^ b != 0)))),
        "s_andn2_b32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (a & !b, Some(a & !b != 0)))),
        "s_orn2_b32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (a | !b, Some(a | !b != 0)))),
        "s_nand_b32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (!(a & b), Some(!(a & b) != 0)))),
        "s_nor_b32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (!(a | b), Some(!(a | b) != 0)))),
        "s_xnor_b32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (!(a ^ b), Some(!(a ^ b) != 0)))),
        "s_and_b64" => op!(|c, i| sop2_u64(c, i, |a, b| a & b)),
        "s_or_b64" => op!(|c, i| sop2_u64(c, i, |a, b| a | b)),
        "s_xor_b64" => op!(|c, i| sop2_u64(c, i, |a, b| a ^ b)),
        "s_andn2_b64" => op!(|c, i| sop2_u64(c, i, |a, b| a & !b)),
        "s_orn2_b64" => op!(|c, i| sop2_u64(c, i, |a, b| a | !b)),
        "s_nand_b64" => op!(|c, i| sop2_u64(c, i, |a, b| !(a & b))),
        "s_nor_b64" => op!(|c, i| sop2_u64(c, i, |a, b| !(a | b))),
        "s_xnor_b64" => op!(|c, i| sop2_u64(c, i, |a, b| !(a ^ b))),
        "s_lshl_b32" => {
            op!(|c, i| sop2_u32(c, i, |a, b, _| (a << (b & 31), Some(a << (b & 31) != 0))))
        }
        "s_lshr_b32" => {
            op!(|c, i| sop2_u32(c, i, |a, b, _| (a >> (b & 31), Some(a >> (b & 31) != 0))))
        }
        "s_ashr_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| {
            let r = ((a as i32) >> (b & 31)) as u32;
            (r, Some(r != 0))
        })),
        "s_lshl_b64" => op!(|c, i| sop2_u64_by(c, i, |a, b| a << (b & 63))),
        "s_lshr_b64" => op!(|c, i| sop2_u64_by(c, i, |a, b| a >> (b & 63))),
        "s_ashr_i64" => op!(|c, i| sop2_u64_by(c, i, |a, b| ((a as i64) >> (b & 63)) as u64)),
        "s_bfm_b32" => op!(|c, i| bfm_fix(c, i)),
        "s_mul_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (
            (a as i32).wrapping_mul(b as i32) as u32,
            None
        ))),
        "s_mul_hi_u32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (
            ((u64::from(a) * u64::from(b)) >> 32) as u32,
            None
        ))),
        "s_mul_hi_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| (
            ((i64::from(a as i32) * i64::from(b as i32)) >> 32) as u32,
            None
        ))),
        "s_bfe_u32" => op!(|c, i| sop2_u32(c, i, |a, b, _| {
            let r = bfe_u32(a, b);
            (r, Some(r != 0))
        })),
        "s_bfe_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| {
            let r = bfe_i32(a, b);
            (r, Some(r != 0))
        })),
        "s_bfe_u64" => op!(|c, i| sop2_u64_by(c, i, bfe_u64)),
        "s_bfe_i64" => op!(|c, i| sop2_u64_by(c, i, bfe_i64)),
        "s_absdiff_i32" => op!(|c, i| sop2_u32(c, i, |a, b, _| {
            let r = (a as i32).wrapping_sub(b as i32).wrapping_abs() as u32;
            (r, Some(r != 0))
        })),
        "s_lshl1_add_u32" | "s_lshl2_add_u32" | "s_lshl3_add_u32" | "s_lshl4_add_u32" => {
            op!(|c, i| {
                let shift = u32::from(i.name.as_bytes()[6] - b'0');
                let (a, b) = (c.scalar(i, i.src[0])?, c.scalar(i, i.src[1])?);
                let r = (u64::from(a) << shift) + u64::from(b);
                c.sset(i.dst, r as u32)?;
                c.w.scc = r >> 32 != 0;
                Ok(Flow::Next)
            })
        }
        "s_pack_ll_b32_b16" => op!(|c, i| sop2_u32(c, i, |a, b, _| ((a & 0xffff) | b << 16, None))),
        "s_pack_lh_b32_b16" => {
            op!(|c, i| sop2_u32(c, i, |a, b, _| ((a & 0xffff) | (b & 0xffff_0000), None)))
        }
        "s_pack_hh_b32_b16" => {
            op!(|c, i| sop2_u32(c, i, |a, b, _| (a >> 16 | (b & 0xffff_0000), None)))
        }
        // SOPK
        "s_movk_i32" => op!(|c, i| c.sset(i.dst, i.imm as i32 as u32).map(|()| Flow::Next)),
        "s_cmovk_i32" => op!(|c, i| {
            if c.w.scc {
                c.sset(i.dst, i.imm as i32 as u32)?;
            }
            Ok(Flow::Next)
        }),
        "s_addk_i32" => op!(|c, i| {
            let (r, o) = add_i32(c.sreg(i.dst)?, i.imm as i32 as u32);
            c.sset(i.dst, r)?;
            c.w.scc = o == Some(true);
            Ok(Flow::Next)
        }),
        "s_mulk_i32" => op!(|c, i| {
            let r = (c.sreg(i.dst)? as i32).wrapping_mul(i.imm as i32);
            c.sset(i.dst, r as u32).map(|()| Flow::Next)
        }),
        "s_cmpk_eq_i32" | "s_cmpk_eq_u32" => op!(|c, i| sopk_cmp(c, i, |a, b| a == b)),
        "s_cmpk_lg_i32" | "s_cmpk_lg_u32" => op!(|c, i| sopk_cmp(c, i, |a, b| a != b)),
        "s_cmpk_gt_i32" => op!(|c, i| sopk_cmp(c, i, |a, b| (a as i32) > (b as i32))),
        "s_cmpk_ge_i32" => op!(|c, i| sopk_cmp(c, i, |a, b| (a as i32) >= (b as i32))),
        "s_cmpk_lt_i32" => op!(|c, i| sopk_cmp(c, i, |a, b| (a as i32) < (b as i32))),
        "s_cmpk_le_i32" => op!(|c, i| sopk_cmp(c, i, |a, b| (a as i32) <= (b as i32))),
        "s_cmpk_gt_u32" => op!(|c, i| sopk_cmp(c, i, |a, b| a > b)),
        "s_cmpk_ge_u32" => op!(|c, i| sopk_cmp(c, i, |a, b| a >= b)),
        "s_cmpk_lt_u32" => op!(|c, i| sopk_cmp(c, i, |a, b| a < b)),
        "s_cmpk_le_u32" => op!(|c, i| sopk_cmp(c, i, |a, b| a <= b)),
        // Hardware registers (MODE and the like) are kept, not acted on.
        "s_getreg_b32" => op!(|c, i| {
            let (id, off, size) = hwreg_fields(i.imm as u32);
            let v = (c.w.hwreg[id] >> off) & mask_bits(size);
            c.sset(i.dst, v).map(|()| Flow::Next)
        }),
        "s_setreg_b32" | "s_setreg_imm32_b32" => op!(|c, i| {
            let (id, off, size) = hwreg_fields(i.imm as u32);
            let v = if i.name == "s_setreg_b32" {
                c.sreg(i.dst)?
            } else {
                i.literal
            };
            let m = mask_bits(size) << off;
            c.w.hwreg[id] = (c.w.hwreg[id] & !m) | ((v << off) & m);
            Ok(Flow::Next)
        }),
        // SOP1
        "s_mov_b32" => op!(|c, i| sop1_u32(c, i, |a| a)),
        "s_mov_b64" => op!(|c, i| sop1_u64(c, i, |a| a, false)),
        "s_cmov_b32" => op!(|c, i| {
            if c.w.scc {
                let v = c.scalar(i, i.src[0])?;
                c.sset(i.dst, v)?;
            }
            Ok(Flow::Next)
        }),
        "s_cmov_b64" => op!(|c, i| {
            if c.w.scc {
                let v = c.scalar64(i, i.src[0], Wide::Int)?;
                c.sset64(i.dst, v)?;
            }
            Ok(Flow::Next)
        }),
        "s_not_b32" => op!(|c, i| {
            let r = !c.scalar(i, i.src[0])?;
            c.w.scc = r != 0;
            c.sset(i.dst, r).map(|()| Flow::Next)
        }),
        "s_not_b64" => op!(|c, i| sop1_u64(c, i, |a| !a, true)),
        "s_brev_b32" => op!(|c, i| sop1_u32(c, i, u32::reverse_bits)),
        "s_brev_b64" => op!(|c, i| sop1_u64(c, i, u64::reverse_bits, false)),
        "s_bcnt1_i32_b32" | "s_bcnt0_i32_b32" | "s_bcnt1_i32_b64" | "s_bcnt0_i32_b64" => {
            op!(|c, i| {
                let wide = i.name.ends_with("64");
                let v = if wide {
                    c.scalar64(i, i.src[0], Wide::Int)?
                } else {
                    u64::from(c.scalar(i, i.src[0])?)
                };
                let ones = v.count_ones();
                let r = if i.name.starts_with("s_bcnt1") {
                    ones
                } else if wide {
                    64 - ones
                } else {
                    32 - ones
                };
                c.w.scc = r != 0;
                c.sset(i.dst, r).map(|()| Flow::Next)
            })
        }
        "s_ff1_i32_b32" => op!(|c, i| sop1_u32(c, i, |a| first_one(u64::from(a), 32))),
        "s_ff1_i32_b64" => op!(|c, i| {
            let v = c.scalar64(i, i.src[0], Wide::Int)?;
            c.sset(i.dst, first_one(v, 64)).map(|()| Flow::Next)
        }),
        "s_ff0_i32_b32" => op!(|c, i| sop1_u32(c, i, |a| first_one(u64::from(!a), 32))),
        "s_ff0_i32_b64" => op!(|c, i| {
            let v = c.scalar64(i, i.src[0], Wide::Int)?;
            c.sset(i.dst, first_one(!v, 64)).map(|()| Flow::Next)
        }),
        "s_flbit_i32_b32" => op!(|c, i| sop1_u32(c, i, leading)),
        "s_flbit_i32" => op!(|c, i| sop1_u32(c, i, leading_signed)),
        "s_flbit_i32_b64" => op!(|c, i| {
            let v = c.scalar64(i, i.src[0], Wide::Int)?;
            c.sset(i.dst, if v == 0 { u32::MAX } else { v.leading_zeros() })
                .map(|()| Flow::Next)
        }),
        "s_sext_i32_i8" => op!(|c, i| sop1_u32(c, i, |a| a as i8 as i32 as u32)),
        "s_sext_i32_i16" => op!(|c, i| sop1_u32(c, i, |a| a as i16 as i32 as u32)),
        "s_abs_i32" => op!(|c, i| {
            let r = (c.scalar(i, i.src[0])? as i32).wrapping_abs() as u32;
            c.w.scc = r != 0;
            c.sset(i.dst, r).map(|()| Flow::Next)
        }),
        "s_bitset0_b32" => op!(|c, i| {
            let b = c.scalar(i, i.src[0])? & 31;
            let v = c.sreg(i.dst)? & !(1 << b);
            c.sset(i.dst, v).map(|()| Flow::Next)
        }),
        "s_bitset1_b32" => op!(|c, i| {
            let b = c.scalar(i, i.src[0])? & 31;
            let v = c.sreg(i.dst)? | 1 << b;
            c.sset(i.dst, v).map(|()| Flow::Next)
        }),
        "s_getpc_b64" => op!(|c, i| {
            let pc = c.env.code_base + i.at + u64::from(i.len);
            c.sset64(i.dst, pc).map(|()| Flow::Next)
        }),
        "s_setpc_b64" => op!(|c, i| {
            let target = c.scalar64(i, i.src[0], Wide::Int)?;
            Ok(Flow::Jump(target.wrapping_sub(c.env.code_base)))
        }),
        "s_swappc_b64" => op!(|c, i| {
            let target = c.scalar64(i, i.src[0], Wide::Int)?;
            let ret = c.env.code_base + i.at + u64::from(i.len);
            c.sset64(i.dst, ret)?;
            Ok(Flow::Jump(target.wrapping_sub(c.env.code_base)))
        }),
        "s_and_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| s & e)),
        "s_or_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| s | e)),
        "s_xor_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| s ^ e)),
        "s_andn2_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| s & !e)),
        "s_orn2_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| s | !e)),
        "s_nand_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| !(s & e))),
        "s_nor_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| !(s | e))),
        "s_xnor_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| !(s ^ e))),
        "s_andn1_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| !s & e)),
        "s_orn1_saveexec_b64" => op!(|c, i| saveexec(c, i, |s, e| !s | e)),
        "s_andn1_wrexec_b64" | "s_andn2_wrexec_b64" => op!(|c, i| {
            let s = c.scalar64(i, i.src[0], Wide::Int)?;
            let e = c.w.exec();
            let r = if i.name == "s_andn1_wrexec_b64" {
                !s & e
            } else {
                s & !e
            };
            c.w.set_exec(r);
            c.sset64(i.dst, r)?;
            c.w.scc = r != 0;
            Ok(Flow::Next)
        }),
        // SOPC
        "s_cmp_eq_i32" | "s_cmp_eq_u32" => op!(|c, i| sopc(c, i, |a, b| a == b)),
        "s_cmp_lg_i32" | "s_cmp_lg_u32" => op!(|c, i| sopc(c, i, |a, b| a != b)),
        "s_cmp_gt_i32" => op!(|c, i| sopc(c, i, |a, b| (a as i32) > (b as i32))),
        "s_cmp_ge_i32" => op!(|c, i| sopc(c, i, |a, b| (a as i32) >= (b as i32))),
        "s_cmp_lt_i32" => op!(|c, i| sopc(c, i, |a, b| (a as i32) < (b as i32))),
        "s_cmp_le_i32" => op!(|c, i| sopc(c, i, |a, b| (a as i32) <= (b as i32))),
        "s_cmp_gt_u32" => op!(|c, i| sopc(c, i, |a, b| a > b)),
        "s_cmp_ge_u32" => op!(|c, i| sopc(c, i, |a, b| a >= b)),
        "s_cmp_lt_u32" => op!(|c, i| sopc(c, i, |a, b| a < b)),
        "s_cmp_le_u32" => op!(|c, i| sopc(c, i, |a, b| a <= b)),
        "s_bitcmp0_b32" => op!(|c, i| sopc(c, i, |a, b| a >> (b & 31) & 1 == 0)),
        "s_bitcmp1_b32" => op!(|c, i| sopc(c, i, |a, b| a >> (b & 31) & 1 == 1)),
        "s_cmp_eq_u64" | "s_cmp_lg_u64" | "s_bitcmp0_b64" | "s_bitcmp1_b64" => op!(|c, i| {
            let a = c.scalar64(i, i.src[0], Wide::Int)?;
            c.w.scc = match i.name {
                "s_cmp_eq_u64" => a == c.scalar64(i, i.src[1], Wide::Int)?,
                "s_cmp_lg_u64" => a != c.scalar64(i, i.src[1], Wide::Int)?,
                name => {
                    let bit = a >> (c.scalar(i, i.src[1])? & 63) & 1;
                    bit == u64::from(name == "s_bitcmp1_b64")
                }
            };
            Ok(Flow::Next)
        }),
        // SOPP
        "s_nop" | "s_waitcnt" | "s_sleep" | "s_setprio" | "s_icache_inv" | "s_incperflevel"
        | "s_decperflevel" | "s_ttracedata" | "s_set_gpr_idx_off" | "s_code_end" | "s_wakeup" => {
            op!(|_c, _i| Ok(Flow::Next))
        }
        "s_endpgm" => op!(|_c, _i| Ok(Flow::End)),
        "s_barrier" => op!(|_c, _i| Ok(Flow::Barrier)),
        "s_branch" => op!(|_c, i| branch_if(i, true)),
        "s_cbranch_scc0" => op!(|c, i| branch_if(i, !c.w.scc)),
        "s_cbranch_scc1" => op!(|c, i| branch_if(i, c.w.scc)),
        "s_cbranch_vccz" => op!(|c, i| branch_if(i, c.vcc() == 0)),
        "s_cbranch_vccnz" => op!(|c, i| branch_if(i, c.vcc() != 0)),
        "s_cbranch_execz" => op!(|c, i| branch_if(i, c.w.exec() == 0)),
        "s_cbranch_execnz" => op!(|c, i| branch_if(i, c.w.exec() != 0)),
        _ => None,
    }
}

/// `s_bfm_b32`: a mask of `a` ones shifted left by `b`.
fn bfm_fix(c: &mut Ctx<'_>, i: &Instr) -> Result<Flow, Fault> {
    let (a, b) = (c.scalar(i, i.src[0])? & 31, c.scalar(i, i.src[1])? & 31);
    c.sset(i.dst, (((1u64 << a) - 1) as u32) << b)
        .map(|()| Flow::Next)
}

fn hwreg_fields(simm: u32) -> (usize, u32, u32) {
    (
        (simm & 0x3f) as usize % 32,
        (simm >> 6) & 31,
        ((simm >> 11) & 31) + 1,
    )
}

fn mask_bits(n: u32) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1 << n) - 1
    }
}

fn smem_semantics(name: &str) -> Option<Exec> {
    match name {
        "s_load_dword" => op!(|c, i| smem_load(c, i, 1, false)),
        "s_load_dwordx2" => op!(|c, i| smem_load(c, i, 2, false)),
        "s_load_dwordx4" => op!(|c, i| smem_load(c, i, 4, false)),
        "s_load_dwordx8" => op!(|c, i| smem_load(c, i, 8, false)),
        "s_load_dwordx16" => op!(|c, i| smem_load(c, i, 16, false)),
        "s_buffer_load_dword" => op!(|c, i| smem_load(c, i, 1, true)),
        "s_buffer_load_dwordx2" => op!(|c, i| smem_load(c, i, 2, true)),
        "s_buffer_load_dwordx4" => op!(|c, i| smem_load(c, i, 4, true)),
        "s_buffer_load_dwordx8" => op!(|c, i| smem_load(c, i, 8, true)),
        "s_buffer_load_dwordx16" => op!(|c, i| smem_load(c, i, 16, true)),
        "s_dcache_inv" | "s_dcache_wb" | "s_dcache_inv_vol" | "s_dcache_wb_vol" => {
            op!(|_c, _i| Ok(Flow::Next))
        }
        "s_memtime" | "s_memrealtime" => op!(|c, i| {
            let t = c.env.started.elapsed().as_nanos() as u64 / 10;
            c.sset64(i.dst, t).map(|()| Flow::Next)
        }),
        _ => None,
    }
}

fn vector_semantics(name: &str) -> Option<Exec> {
    match name {
        "v_nop" => op!(|_c, _i| Ok(Flow::Next)),
        "v_mov_b32" => op!(|c, i| c.map32(i, |a| a)),
        "v_readfirstlane_b32" => op!(|c, i| {
            let exec = c.w.exec();
            let lane = if exec == 0 {
                0
            } else {
                exec.trailing_zeros() as usize
            };
            let v = c.src(i, 0, lane)?;
            c.sset(i.dst, v).map(|()| Flow::Next)
        }),
        "v_readlane_b32" => op!(|c, i| {
            let lane = (c.scalar(i, i.src[1])? & 63) as usize;
            let v = c.src(i, 0, lane)?;
            c.sset(i.dst, v).map(|()| Flow::Next)
        }),
        "v_writelane_b32" => op!(|c, i| {
            let lane = (c.scalar(i, i.src[1])? & 63) as usize;
            let v = c.scalar(i, i.src[0])?;
            c.vset(i.dst.into(), lane, v).map(|()| Flow::Next)
        }),
        "v_cndmask_b32" => op!(|c, i| {
            let mask = c.scalar64(i, i.src[2], Wide::Int)?;
            c.each(|c, l| {
                // Float modifiers apply to the sources as bits (abs/neg).
                let n = if mask >> l & 1 == 1 { 1 } else { 0 };
                let mut v = c.src(i, n, l)?;
                if i.abs >> n & 1 == 1 {
                    v &= 0x7fff_ffff;
                }
                if i.neg >> n & 1 == 1 {
                    v ^= 0x8000_0000;
                }
                c.vset(i.dst.into(), l, v)
            })
        }),
        // f32 arithmetic
        "v_add_f32" => op!(|c, i| c.f32_op(i, 2, |a| a[0] + a[1])),
        "v_sub_f32" => op!(|c, i| c.f32_op(i, 2, |a| a[0] - a[1])),
        "v_subrev_f32" => op!(|c, i| c.f32_op(i, 2, |a| a[1] - a[0])),
        "v_mul_f32" => op!(|c, i| c.f32_op(i, 2, |a| a[0] * a[1])),
        "v_mul_legacy_f32" => op!(|c, i| c.f32_op(i, 2, |a| if a[0] == 0.0 || a[1] == 0.0 {
            0.0
        } else {
            a[0] * a[1]
        })),
        "v_min_f32" => op!(|c, i| c.f32_op(i, 2, |a| fmin(a[0], a[1]))),
        "v_max_f32" => op!(|c, i| c.f32_op(i, 2, |a| fmax(a[0], a[1]))),
        "v_mac_f32" | "v_fmac_f32" => op!(|c, i| {
            c.each(|c, l| {
                let (a, b) = (c.f32_src(i, 0, l)?, c.f32_src(i, 1, l)?);
                let d = f32::from_bits(c.vget(i.dst.into(), l)?);
                let r = if i.name == "v_fmac_f32" {
                    a.mul_add(b, d)
                } else {
                    a * b + d
                };
                c.vset(i.dst.into(), l, Ctx::omod_f32(i, r).to_bits())
            })
        }),
        "v_madmk_f32" => op!(|c, i| {
            // D = S0 * K + S1
            c.each(|c, l| {
                let (a, b) = (c.f32_src(i, 0, l)?, c.f32_src(i, 1, l)?);
                c.vset(
                    i.dst.into(),
                    l,
                    (a * f32::from_bits(i.literal) + b).to_bits(),
                )
            })
        }),
        "v_madak_f32" => op!(|c, i| {
            // D = S0 * S1 + K
            c.each(|c, l| {
                let (a, b) = (c.f32_src(i, 0, l)?, c.f32_src(i, 1, l)?);
                c.vset(
                    i.dst.into(),
                    l,
                    (a * b + f32::from_bits(i.literal)).to_bits(),
                )
            })
        }),
        "v_mad_f32" | "v_mad_legacy_f32" => op!(|c, i| c.f32_op(i, 3, |a| a[0] * a[1] + a[2])),
        "v_fma_f32" => op!(|c, i| c.f32_op(i, 3, |a| a[0].mul_add(a[1], a[2]))),
        "v_min3_f32" => op!(|c, i| c.f32_op(i, 3, |a| fmin(fmin(a[0], a[1]), a[2]))),
        "v_max3_f32" => op!(|c, i| c.f32_op(i, 3, |a| fmax(fmax(a[0], a[1]), a[2]))),
        "v_med3_f32" => op!(|c, i| c.f32_op(i, 3, |a| med3(a[0], a[1], a[2]))),
        "v_ldexp_f32" => op!(|c, i| {
            c.each(|c, l| {
                let x = c.f32_src(i, 0, l)?;
                let e = c.src(i, 1, l)? as i32;
                c.vset(i.dst.into(), l, (ldexp64(f64::from(x), e) as f32).to_bits())
            })
        }),
        "v_div_fixup_f32" => op!(|c, i| c.f32_op(i, 3, |a| div_fixup_f32(a[0], a[1], a[2]))),
        "v_div_fmas_f32" => op!(|c, i| c.f32_op(i, 3, |a| a[0].mul_add(a[1], a[2]))),
        "v_div_scale_f32" => op!(|c, i| {
            // No scaling: the quotient's inputs are used as they are (VCC 0), which
            // is exact for operands away from the ends of the exponent range.
            c.each(|c, l| {
                let a = c.f32_src(i, 0, l)?;
                c.vset(i.dst.into(), l, a.to_bits())
            })?;
            c.sset64(i.sdst, 0).map(|()| Flow::Next)
        }),
        "v_rcp_f32" | "v_rcp_iflag_f32" => op!(|c, i| c.f32_op(i, 1, |a| 1.0 / a[0])),
        "v_rsq_f32" => op!(|c, i| c.f32_op(i, 1, |a| 1.0 / a[0].sqrt())),
        "v_sqrt_f32" => op!(|c, i| c.f32_op(i, 1, |a| a[0].sqrt())),
        "v_exp_f32" => op!(|c, i| c.f32_op(i, 1, |a| a[0].exp2())),
        "v_log_f32" => op!(|c, i| c.f32_op(i, 1, |a| a[0].log2())),
        "v_sin_f32" => op!(|c, i| c.f32_op(
            i,
            1,
            |a| (f64::from(a[0]) * std::f64::consts::TAU).sin() as f32
        )),
        "v_cos_f32" => op!(|c, i| c.f32_op(
            i,
            1,
            |a| (f64::from(a[0]) * std::f64::consts::TAU).cos() as f32
        )),
        "v_fract_f32" => op!(|c, i| c.f32_op(i, 1, |a| fract32(a[0]))),
        "v_trunc_f32" => op!(|c, i| c.f32_op(i, 1, |a| a[0].trunc())),
        "v_ceil_f32" => op!(|c, i| c.f32_op(i, 1, |a| a[0].ceil())),
        "v_floor_f32" => op!(|c, i| c.f32_op(i, 1, |a| a[0].floor())),
        "v_rndne_f32" => op!(|c, i| c.f32_op(i, 1, |a| a[0].round_ties_even())),
        "v_frexp_mant_f32" => op!(|c, i| c.f32_op(i, 1, |a| if a[0].is_finite() {
            frexp(f64::from(a[0])).0 as f32
        } else {
            a[0]
        })),
        "v_frexp_exp_i32_f32" => op!(|c, i| c.u32_from_f32(i, frexp_exp32)),
        "v_cmp_class_f32" | "v_cmpx_class_f32" => op!(|c, i| {
            c.compare(i, |c, l| {
                Ok(class_f32(c.f32_src(i, 0, l)?, c.src(i, 1, l)?))
            })
        }),
        // f64 arithmetic
        "v_add_f64" => op!(|c, i| c.f64_op(i, 2, |a| a[0] + a[1])),
        "v_mul_f64" => op!(|c, i| c.f64_op(i, 2, |a| a[0] * a[1])),
        "v_min_f64" => op!(|c, i| c.f64_op(i, 2, |a| a[0].min(a[1]))),
        "v_max_f64" => op!(|c, i| c.f64_op(i, 2, |a| a[0].max(a[1]))),
        "v_fma_f64" => op!(|c, i| c.f64_op(i, 3, |a| a[0].mul_add(a[1], a[2]))),
        "v_fmac_f64" => op!(|c, i| {
            c.each(|c, l| {
                let (a, b) = (c.f64_src(i, 0, l)?, c.f64_src(i, 1, l)?);
                let d = usize::from(i.dst);
                let acc =
                    f64::from_bits(u64::from(c.vget(d, l)?) | u64::from(c.vget(d + 1, l)?) << 32);
                c.vset64(d, l, Ctx::omod_f64(i, a.mul_add(b, acc)).to_bits())
            })
        }),
        "v_ldexp_f64" => op!(|c, i| {
            c.each(|c, l| {
                let x = c.f64_src(i, 0, l)?;
                let e = c.src(i, 1, l)? as i32;
                c.vset64(i.dst.into(), l, ldexp64(x, e).to_bits())
            })
        }),
        "v_div_fixup_f64" => op!(|c, i| c.f64_op(i, 3, |a| div_fixup_f64(a[0], a[1], a[2]))),
        "v_trig_preop_f64" => op!(|c, i| {
            c.each(|c, l| {
                let x = c.f64_src(i, 0, l)?;
                let segment = c.src(i, 1, l)?;
                c.vset64(i.dst.into(), l, trig_preop(x, segment).to_bits())
            })
        }),
        // half precision: computed in f32 (exact for one add or multiply of
        // halves), fused ones in f64, then rounded to half
        "v_add_f16" => op!(|c, i| c.f16_op(i, 2, |a| a[0] + a[1])),
        "v_sub_f16" => op!(|c, i| c.f16_op(i, 2, |a| a[0] - a[1])),
        "v_subrev_f16" => op!(|c, i| c.f16_op(i, 2, |a| a[1] - a[0])),
        "v_mul_f16" => op!(|c, i| c.f16_op(i, 2, |a| a[0] * a[1])),
        "v_min_f16" => op!(|c, i| c.f16_op(i, 2, |a| fmin(a[0], a[1]))),
        "v_max_f16" => op!(|c, i| c.f16_op(i, 2, |a| fmax(a[0], a[1]))),
        "v_fma_f16" | "v_mad_f16" => op!(|c, i| c.f16_op(i, 3, |a| f64::from(a[0])
            .mul_add(f64::from(a[1]), f64::from(a[2]))
            as f32)),
        "v_mac_f16" | "v_fmac_f16" => op!(|c, i| {
            c.each(|c, l| {
                let (a, b) = (c.f16_src(i, 0, l)?, c.f16_src(i, 1, l)?);
                let d = f16_to_f32(c.vget(i.dst.into(), l)? as u16);
                c.set_f16(
                    i,
                    l,
                    f64::from(a).mul_add(f64::from(b), f64::from(d)) as f32,
                )
            })
        }),
        "v_ldexp_f16" => op!(|c, i| c.each(|c, l| {
            let x = c.f16_src(i, 0, l)?;
            let e = c.src(i, 1, l)? as i16 as i32;
            c.set_f16(i, l, ldexp64(f64::from(x), e) as f32)
        })),
        "v_sqrt_f16" => op!(|c, i| c.f16_op(i, 1, |a| a[0].sqrt())),
        "v_rcp_f16" => op!(|c, i| c.f16_op(i, 1, |a| 1.0 / a[0])),
        "v_rsq_f16" => op!(|c, i| c.f16_op(i, 1, |a| 1.0 / a[0].sqrt())),
        "v_exp_f16" => op!(|c, i| c.f16_op(i, 1, |a| a[0].exp2())),
        "v_log_f16" => op!(|c, i| c.f16_op(i, 1, |a| a[0].log2())),
        "v_floor_f16" => op!(|c, i| c.f16_op(i, 1, |a| a[0].floor())),
        "v_ceil_f16" => op!(|c, i| c.f16_op(i, 1, |a| a[0].ceil())),
        "v_trunc_f16" => op!(|c, i| c.f16_op(i, 1, |a| a[0].trunc())),
        "v_rndne_f16" => op!(|c, i| c.f16_op(i, 1, |a| a[0].round_ties_even())),
        "v_fract_f16" => op!(|c, i| c.f16_op(i, 1, |a| fract32(a[0]))),
        "v_max3_f16" => op!(|c, i| c.f16_op(i, 3, |a| fmax(fmax(a[0], a[1]), a[2]))),
        "v_min3_f16" => op!(|c, i| c.f16_op(i, 3, |a| fmin(fmin(a[0], a[1]), a[2]))),
        "v_med3_f16" => op!(|c, i| c.f16_op(i, 3, |a| med3(a[0], a[1], a[2]))),
        "v_div_fixup_f16" => op!(|c, i| c.f16_op(i, 3, |a| div_fixup_f32(a[0], a[1], a[2]))),
        "v_cvt_f16_u16" => op!(|c, i| c.each(|c, l| {
            let v = c.src(i, 0, l)? as u16;
            c.set_f16(i, l, f32::from(v))
        })),
        "v_cvt_f16_i16" => op!(|c, i| c.each(|c, l| {
            let v = c.src(i, 0, l)? as i16;
            c.set_f16(i, l, f32::from(v))
        })),
        "v_cvt_u16_f16" => op!(|c, i| c.each(|c, l| {
            let x = c.f16_src(i, 0, l)?;
            c.vset(i.dst.into(), l, cvt_u32(f64::from(x)).min(0xffff))
        })),
        "v_cvt_i16_f16" => op!(|c, i| c.each(|c, l| {
            let x = c.f16_src(i, 0, l)?;
            let v = (cvt_i32(f64::from(x)) as i32).clamp(-32768, 32767) as i16;
            c.vset(i.dst.into(), l, u32::from(v as u16))
        })),
        "v_cvt_pkrtz_f16_f32" => op!(|c, i| c.each(|c, l| {
            let (a, b) = (c.f32_src(i, 0, l)?, c.f32_src(i, 1, l)?);
            c.vset(
                i.dst.into(),
                l,
                u32::from(f32_to_f16_rtz(a)) | u32::from(f32_to_f16_rtz(b)) << 16,
            )
        })),
        "v_pack_b32_f16" => op!(|c, i| c.each(|c, l| {
            let (a, b) = (c.f16_src(i, 0, l)?, c.f16_src(i, 1, l)?);
            c.vset(
                i.dst.into(),
                l,
                u32::from(f32_to_f16(a)) | u32::from(f32_to_f16(b)) << 16,
            )
        })),
        // 16-bit integers
        "v_add_u16" | "v_add_i16" | "v_sub_u16" | "v_sub_i16" | "v_subrev_u16" => op!(|c, i| {
            let f = int_add_sub(i.name, i.clamp, 16);
            c.u16_op(i, 2, |a| f(a[0], a[1]))
        }),
        "v_mul_lo_u16" => op!(|c, i| c.u16_op(i, 2, |a| a[0].wrapping_mul(a[1]))),
        "v_lshlrev_b16" => op!(|c, i| c.u16_op(i, 2, |a| a[1] << (a[0] & 15))),
        "v_lshrrev_b16" => op!(|c, i| c.u16_op(i, 2, |a| a[1] >> (a[0] & 15))),
        "v_ashrrev_i16" => op!(
            |c, i| c.u16_op(i, 2, |a| ((a[1] as u16 as i16) >> (a[0] & 15)) as u16
                as u32)
        ),
        "v_max_u16" => op!(|c, i| c.u16_op(i, 2, |a| a[0].max(a[1]))),
        "v_min_u16" => op!(|c, i| c.u16_op(i, 2, |a| a[0].min(a[1]))),
        "v_max_i16" => {
            op!(|c, i| c.u16_op(
                i,
                2,
                |a| (a[0] as u16 as i16).max(a[1] as u16 as i16) as u16 as u32
            ))
        }
        "v_min_i16" => {
            op!(|c, i| c.u16_op(
                i,
                2,
                |a| (a[0] as u16 as i16).min(a[1] as u16 as i16) as u16 as u32
            ))
        }
        "v_mad_u16" | "v_mad_legacy_u16" => {
            op!(|c, i| c.u16_op(i, 3, |a| a[0].wrapping_mul(a[1]).wrapping_add(a[2])))
        }
        "v_mad_i16" | "v_mad_legacy_i16" => {
            op!(|c, i| c.u16_op(i, 3, |a| a[0].wrapping_mul(a[1]).wrapping_add(a[2])))
        }
        // packed 16-bit
        "v_pk_add_f16" => op!(|c, i| c.packed_f16(i, 2, |a| a[0] + a[1])),
        "v_pk_mul_f16" => op!(|c, i| c.packed_f16(i, 2, |a| a[0] * a[1])),
        "v_pk_min_f16" => op!(|c, i| c.packed_f16(i, 2, |a| fmin(a[0], a[1]))),
        "v_pk_max_f16" => op!(|c, i| c.packed_f16(i, 2, |a| fmax(a[0], a[1]))),
        "v_pk_fma_f16" => op!(|c, i| c.packed_f16(i, 3, |a| f64::from(a[0])
            .mul_add(f64::from(a[1]), f64::from(a[2]))
            as f32)),
        "v_pk_add_u16" | "v_pk_add_i16" => {
            op!(|c, i| c.packed_u16(i, 2, |a| a[0].wrapping_add(a[1])))
        }
        "v_pk_sub_u16" | "v_pk_sub_i16" => {
            op!(|c, i| c.packed_u16(i, 2, |a| a[0].wrapping_sub(a[1])))
        }
        "v_pk_mul_lo_u16" => op!(|c, i| c.packed_u16(i, 2, |a| a[0].wrapping_mul(a[1]))),
        "v_pk_mad_u16" | "v_pk_mad_i16" => {
            op!(|c, i| c.packed_u16(i, 3, |a| a[0].wrapping_mul(a[1]).wrapping_add(a[2])))
        }
        "v_pk_lshlrev_b16" => op!(|c, i| c.packed_u16(i, 2, |a| a[1] << (a[0] & 15))),
        "v_pk_lshrrev_b16" => op!(|c, i| c.packed_u16(i, 2, |a| a[1] >> (a[0] & 15))),
        "v_pk_ashrrev_i16" => op!(|c, i| c
            .packed_u16(i, 2, |a| ((a[1] as u16 as i16) >> (a[0] & 15)) as u16
                as u32)),
        "v_pk_max_u16" => op!(|c, i| c.packed_u16(i, 2, |a| a[0].max(a[1]))),
        "v_pk_min_u16" => op!(|c, i| c.packed_u16(i, 2, |a| a[0].min(a[1]))),
        "v_pk_max_i16" => op!(|c, i| c.packed_u16(i, 2, |a| (a[0] as u16 as i16)
            .max(a[1] as u16 as i16)
            as u16 as u32)),
        "v_pk_min_i16" => op!(|c, i| c.packed_u16(i, 2, |a| (a[0] as u16 as i16)
            .min(a[1] as u16 as i16)
            as u16 as u32)),
        "v_cmp_class_f16" | "v_cmpx_class_f16" => op!(|c, i| {
            c.compare(i, |c, l| {
                // Classified from the half's own bits (its NaNs and subnormals).
                Ok(class_f16(c.f16_bits(i, 0, l)?, c.src(i, 1, l)?))
            })
        }),
        "v_div_fmas_f64" => op!(|c, i| c.f64_op(i, 3, |a| a[0].mul_add(a[1], a[2]))),
        "v_div_scale_f64" => op!(|c, i| {
            c.each(|c, l| {
                let a = c.f64_src(i, 0, l)?;
                c.vset64(i.dst.into(), l, a.to_bits())
            })?;
            c.sset64(i.sdst, 0).map(|()| Flow::Next)
        }),
        "v_rcp_f64" => op!(|c, i| c.f64_op(i, 1, |a| 1.0 / a[0])),
        "v_rsq_f64" => op!(|c, i| c.f64_op(i, 1, |a| 1.0 / a[0].sqrt())),
        "v_sqrt_f64" => op!(|c, i| c.f64_op(i, 1, |a| a[0].sqrt())),
        "v_fract_f64" => op!(|c, i| c.f64_op(i, 1, |a| fract64(a[0]))),
        "v_trunc_f64" => op!(|c, i| c.f64_op(i, 1, |a| a[0].trunc())),
        "v_ceil_f64" => op!(|c, i| c.f64_op(i, 1, |a| a[0].ceil())),
        "v_floor_f64" => op!(|c, i| c.f64_op(i, 1, |a| a[0].floor())),
        "v_rndne_f64" => op!(|c, i| c.f64_op(i, 1, |a| a[0].round_ties_even())),
        "v_frexp_mant_f64" => op!(|c, i| c.f64_op(i, 1, |a| if a[0].is_finite() {
            frexp(a[0]).0
        } else {
            a[0]
        })),
        "v_frexp_exp_i32_f64" => op!(|c, i| {
            c.each(|c, l| {
                let x = c.f64_src(i, 0, l)?;
                let e = if x == 0.0 || !x.is_finite() {
                    0
                } else {
                    frexp(x).1
                };
                c.vset(i.dst.into(), l, e as u32)
            })
        }),
        "v_cmp_class_f64" | "v_cmpx_class_f64" => op!(|c, i| {
            c.compare(i, |c, l| {
                Ok(class_f64(c.f64_src(i, 0, l)?, c.src(i, 1, l)?))
            })
        }),
        // conversions
        "v_cvt_f32_i32" => op!(|c, i| c.map32(i, |a| (a as i32 as f32).to_bits())),
        "v_cvt_f32_u32" => op!(|c, i| c.map32(i, |a| (a as f32).to_bits())),
        "v_cvt_i32_f32" => op!(|c, i| c.each(|c, l| {
            let x = c.f32_src(i, 0, l)?;
            c.vset(i.dst.into(), l, cvt_i32(f64::from(x)))
        })),
        "v_cvt_u32_f32" => op!(|c, i| c.each(|c, l| {
            let x = c.f32_src(i, 0, l)?;
            c.vset(i.dst.into(), l, cvt_u32(f64::from(x)))
        })),
        "v_cvt_i32_f64" => op!(|c, i| c.each(|c, l| {
            let x = c.f64_src(i, 0, l)?;
            c.vset(i.dst.into(), l, cvt_i32(x))
        })),
        "v_cvt_u32_f64" => op!(|c, i| c.each(|c, l| {
            let x = c.f64_src(i, 0, l)?;
            c.vset(i.dst.into(), l, cvt_u32(x))
        })),
        "v_cvt_f64_i32" => op!(|c, i| c.each(|c, l| {
            let x = c.src(i, 0, l)? as i32;
            c.vset64(i.dst.into(), l, f64::from(x).to_bits())
        })),
        "v_cvt_f64_u32" => op!(|c, i| c.each(|c, l| {
            let x = c.src(i, 0, l)?;
            c.vset64(i.dst.into(), l, f64::from(x).to_bits())
        })),
        "v_cvt_f32_f64" => op!(|c, i| c.each(|c, l| {
            let x = c.f64_src(i, 0, l)?;
            c.vset(i.dst.into(), l, Ctx::omod_f32(i, x as f32).to_bits())
        })),
        "v_cvt_f64_f32" => op!(|c, i| c.each(|c, l| {
            let x = c.f32_src(i, 0, l)?;
            c.vset64(i.dst.into(), l, Ctx::omod_f64(i, f64::from(x)).to_bits())
        })),
        "v_cvt_f16_f32" => op!(|c, i| c.each(|c, l| {
            let x = c.f32_src(i, 0, l)?;
            c.vset(i.dst.into(), l, u32::from(f32_to_f16(x)))
        })),
        "v_cvt_f32_f16" => op!(|c, i| c.f32_from(i, |c, i, l| c.f16_src(i, 0, l))),
        "v_cvt_f32_ubyte0" => op!(|c, i| c.map32(i, |a| ((a & 0xff) as f32).to_bits())),
        "v_cvt_f32_ubyte1" => op!(|c, i| c.map32(i, |a| (((a >> 8) & 0xff) as f32).to_bits())),
        "v_cvt_f32_ubyte2" => op!(|c, i| c.map32(i, |a| (((a >> 16) & 0xff) as f32).to_bits())),
        "v_cvt_f32_ubyte3" => op!(|c, i| c.map32(i, |a| ((a >> 24) as f32).to_bits())),
        "v_cvt_rpi_i32_f32" => {
            op!(|c, i| c.u32_from_f32(i, |x| cvt_i32(f64::from((x + 0.5).floor()))))
        }
        "v_cvt_flr_i32_f32" => op!(|c, i| c.u32_from_f32(i, |x| cvt_i32(f64::from(x.floor())))),
        // integer
        // With VOP3's clamp, integer adds and subtracts saturate.
        "v_add_u32" | "v_sub_u32" | "v_subrev_u32" | "v_add_i32" | "v_sub_i32" => op!(|c, i| {
            let f = int_add_sub(i.name, i.clamp, 32);
            c.u32_op(i, 2, |a| f(a[0], a[1]))
        }),
        "v_add_co_u32" => op!(|c, i| c.carry_op(i, false, |a, b, _| a.overflowing_add(b))),
        "v_sub_co_u32" => op!(|c, i| c.carry_op(i, false, |a, b, _| a.overflowing_sub(b))),
        "v_subrev_co_u32" => op!(|c, i| c.carry_op(i, false, |a, b, _| b.overflowing_sub(a))),
        "v_addc_co_u32" => op!(|c, i| c.carry_op(i, true, |a, b, k| {
            let r = u64::from(a) + u64::from(b) + u64::from(k);
            (r as u32, r >> 32 != 0)
        })),
        "v_subb_co_u32" => op!(|c, i| c.carry_op(i, true, |a, b, k| {
            (
                a.wrapping_sub(b).wrapping_sub(k),
                u64::from(b) + u64::from(k) > u64::from(a),
            )
        })),
        "v_subbrev_co_u32" => op!(|c, i| c.carry_op(i, true, |a, b, k| {
            (
                b.wrapping_sub(a).wrapping_sub(k),
                u64::from(a) + u64::from(k) > u64::from(b),
            )
        })),
        "v_mul_lo_u32" => op!(|c, i| c.u32_op(i, 2, |a| a[0].wrapping_mul(a[1]))),
        "v_mul_hi_u32" => {
            op!(|c, i| c.u32_op(i, 2, |a| ((u64::from(a[0]) * u64::from(a[1])) >> 32) as u32))
        }
        "v_mul_hi_i32" => op!(|c, i| c.u32_op(i, 2, |a| ((i64::from(a[0] as i32)
            * i64::from(a[1] as i32))
            >> 32) as u32)),
        "v_mul_u32_u24" => {
            op!(|c, i| c.u32_op(i, 2, |a| (a[0] & 0xff_ffff).wrapping_mul(a[1] & 0xff_ffff)))
        }
        "v_mul_hi_u32_u24" => op!(|c, i| c.u32_op(i, 2, |a| ((u64::from(a[0] & 0xff_ffff)
            * u64::from(a[1] & 0xff_ffff))
            >> 32) as u32)),
        "v_mul_i32_i24" => op!(|c, i| c.u32_op(i, 2, |a| (sext24(a[0]) * sext24(a[1])) as u32)),
        "v_mul_hi_i32_i24" => {
            op!(|c, i| c.u32_op(i, 2, |a| ((sext24(a[0]) * sext24(a[1])) >> 32) as u32))
        }
        "v_mad_u32_u24" => op!(|c, i| c.u32_op(i, 3, |a| (a[0] & 0xff_ffff)
            .wrapping_mul(a[1] & 0xff_ffff)
            .wrapping_add(a[2]))),
        "v_mad_i32_i24" => op!(
            |c, i| c.u32_op(i, 3, |a| ((sext24(a[0]) * sext24(a[1])) as u32)
                .wrapping_add(a[2]))
        ),
        "v_mad_u64_u32" | "v_mad_i64_i32" => op!(|c, i| {
            let signed = i.name == "v_mad_i64_i32";
            c.each(|c, l| {
                let (a, b) = (c.src(i, 0, l)?, c.src(i, 1, l)?);
                let acc = c.src64(i, 2, l, Wide::Int)?;
                let p = if signed {
                    (i64::from(a as i32) * i64::from(b as i32)) as u64
                } else {
                    u64::from(a) * u64::from(b)
                };
                c.vset64(i.dst.into(), l, p.wrapping_add(acc))
            })?;
            // The carry-out is not modelled: VCC-style destination cleared.
            c.sset64(i.sdst, 0).map(|()| Flow::Next)
        }),
        "v_min_i32" => op!(|c, i| c.u32_op(i, 2, |a| (a[0] as i32).min(a[1] as i32) as u32)),
        "v_max_i32" => op!(|c, i| c.u32_op(i, 2, |a| (a[0] as i32).max(a[1] as i32) as u32)),
        "v_min_u32" => op!(|c, i| c.u32_op(i, 2, |a| a[0].min(a[1]))),
        "v_max_u32" => op!(|c, i| c.u32_op(i, 2, |a| a[0].max(a[1]))),
        "v_min3_i32" => op!(|c, i| c
            .u32_op(i, 3, |a| (a[0] as i32).min(a[1] as i32).min(a[2] as i32)
                as u32)),
        "v_max3_i32" => op!(|c, i| c
            .u32_op(i, 3, |a| (a[0] as i32).max(a[1] as i32).max(a[2] as i32)
                as u32)),
        "v_min3_u32" => op!(|c, i| c.u32_op(i, 3, |a| a[0].min(a[1]).min(a[2]))),
        "v_max3_u32" => op!(|c, i| c.u32_op(i, 3, |a| a[0].max(a[1]).max(a[2]))),
        "v_med3_i32" => {
            op!(|c, i| c.u32_op(i, 3, |a| med3(a[0] as i32, a[1] as i32, a[2] as i32) as u32))
        }
        "v_med3_u32" => op!(|c, i| c.u32_op(i, 3, |a| med3(a[0], a[1], a[2]))),
        "v_lshlrev_b32" => op!(|c, i| c.u32_op(i, 2, |a| a[1] << (a[0] & 31))),
        "v_lshrrev_b32" => op!(|c, i| c.u32_op(i, 2, |a| a[1] >> (a[0] & 31))),
        "v_ashrrev_i32" => op!(|c, i| c.u32_op(i, 2, |a| ((a[1] as i32) >> (a[0] & 31)) as u32)),
        "v_lshlrev_b64" => op!(|c, i| c.u64_op(i, [false, true, false], |a| a[1] << (a[0] & 63))),
        "v_lshrrev_b64" => op!(|c, i| c.u64_op(i, [false, true, false], |a| a[1] >> (a[0] & 63))),
        "v_ashrrev_i64" => op!(|c, i| c
            .u64_op(i, [false, true, false], |a| ((a[1] as i64) >> (a[0] & 63))
                as u64)),
        "v_and_b32" => op!(|c, i| c.u32_op(i, 2, |a| a[0] & a[1])),
        "v_or_b32" => op!(|c, i| c.u32_op(i, 2, |a| a[0] | a[1])),
        "v_xor_b32" => op!(|c, i| c.u32_op(i, 2, |a| a[0] ^ a[1])),
        "v_xnor_b32" => op!(|c, i| c.u32_op(i, 2, |a| !(a[0] ^ a[1]))),
        "v_not_b32" => op!(|c, i| c.map32(i, |a| !a)),
        "v_bfrev_b32" => op!(|c, i| c.map32(i, u32::reverse_bits)),
        "v_ffbh_u32" => op!(|c, i| c.map32(i, leading)),
        "v_ffbh_i32" => op!(|c, i| c.map32(i, leading_signed)),
        "v_ffbl_b32" => op!(|c, i| c.map32(i, |a| first_one(u64::from(a), 32))),
        "v_bcnt_u32_b32" => op!(|c, i| c.u32_op(i, 2, |a| a[0].count_ones() + a[1])),
        // The width is S2[4:0]: a width of 32 is 0.
        "v_bfe_u32" => {
            op!(|c, i| c.u32_op(i, 3, |a| bfe_u32(a[0], (a[1] & 31) | (a[2] & 31) << 16)))
        }
        "v_bfe_i32" => {
            op!(|c, i| c.u32_op(i, 3, |a| bfe_i32(a[0], (a[1] & 31) | (a[2] & 31) << 16)))
        }
        "v_bfi_b32" => op!(|c, i| c.u32_op(i, 3, |a| (a[0] & a[1]) | (!a[0] & a[2]))),
        "v_bfm_b32" => op!(
            |c, i| c.u32_op(i, 2, |a| (((1u64 << (a[0] & 31)) - 1) as u32)
                << (a[1] & 31))
        ),
        "v_alignbit_b32" => op!(|c, i| c.u32_op(i, 3, |a| ((u64::from(a[0]) << 32
            | u64::from(a[1]))
            >> (a[2] & 31)) as u32)),
        "v_alignbyte_b32" => op!(|c, i| c.u32_op(i, 3, |a| ((u64::from(a[0]) << 32
            | u64::from(a[1]))
            >> ((a[2] & 3) * 8))
            as u32)),
        "v_perm_b32" => op!(|c, i| c.u32_op(i, 3, |a| {
            let bytes = (u64::from(a[0]) << 32 | u64::from(a[1])).to_le_bytes();
            let mut r = 0u32;
            for k in 0..4 {
                let sel = (a[2] >> (8 * k)) & 0xff;
                let b = match sel {
                    0..=7 => u32::from(bytes[sel as usize]),
                    8..=11 => {
                        // Sign of a 16-bit half: replicated.
                        let src_byte = bytes[(sel as usize - 8) * 2 + 1];
                        if src_byte & 0x80 != 0 {
                            0xff
                        } else {
                            0
                        }
                    }
                    12 => 0,
                    _ => 0xff,
                };
                r |= b << (8 * k);
            }
            r
        })),
        "v_xad_u32" => op!(|c, i| c.u32_op(i, 3, |a| (a[0] ^ a[1]).wrapping_add(a[2]))),
        "v_lshl_add_u32" => {
            op!(|c, i| c.u32_op(i, 3, |a| (a[0] << (a[1] & 31)).wrapping_add(a[2])))
        }
        "v_add_lshl_u32" => op!(|c, i| c.u32_op(i, 3, |a| a[0].wrapping_add(a[1]) << (a[2] & 31))),
        "v_add3_u32" => op!(|c, i| c.u32_op(i, 3, |a| a[0].wrapping_add(a[1]).wrapping_add(a[2]))),
        "v_lshl_or_b32" => op!(|c, i| c.u32_op(i, 3, |a| (a[0] << (a[1] & 31)) | a[2])),
        "v_and_or_b32" => op!(|c, i| c.u32_op(i, 3, |a| (a[0] & a[1]) | a[2])),
        "v_or3_b32" => op!(|c, i| c.u32_op(i, 3, |a| a[0] | a[1] | a[2])),
        "v_mbcnt_lo_u32_b32" => op!(|c, i| c.each(|c, l| {
            let (m, acc) = (c.src(i, 0, l)?, c.src(i, 1, l)?);
            let below = if l >= 32 { m } else { m & ((1u32 << l) - 1) };
            c.vset(i.dst.into(), l, below.count_ones() + acc)
        })),
        "v_mbcnt_hi_u32_b32" => op!(|c, i| c.each(|c, l| {
            let (m, acc) = (c.src(i, 0, l)?, c.src(i, 1, l)?);
            let below = if l < 32 {
                0
            } else {
                m & ((1u64 << (l - 32)) - 1) as u32
            };
            c.vset(i.dst.into(), l, below.count_ones() + acc)
        })),
        // gfx90a packed f32
        "v_pk_mov_b32" => op!(|c, i| c.each(|c, l| {
            // D.lo = op_sel[0] ? S0.hi : S0.lo; D.hi = op_sel[1] ? S1.hi : S1.lo
            let s0 = c.src64(i, 0, l, Wide::Pair)?;
            let s1 = c.src64(i, 1, l, Wide::Pair)?;
            let lo = if i.op_sel & 1 == 1 {
                s0 >> 32
            } else {
                s0 & 0xffff_ffff
            };
            let hi = if i.op_sel & 2 == 2 {
                s1 >> 32
            } else {
                s1 & 0xffff_ffff
            };
            c.vset64(i.dst.into(), l, lo | hi << 32)
        })),
        "v_pk_add_f32" | "v_pk_mul_f32" | "v_pk_fma_f32" => op!(|c, i| c.each(|c, l| {
            let arity = if i.name == "v_pk_fma_f32" { 3 } else { 2 };
            let mut out = 0u64;
            for half in 0..2 {
                let mut a = [0f32; 3];
                for (n, x) in a.iter_mut().enumerate().take(arity) {
                    let v = c.src64(i, n, l, Wide::Pair)?;
                    let sel = if half == 0 {
                        i.op_sel >> n & 1
                    } else {
                        i.op_sel_hi >> n & 1
                    };
                    *x = f32::from_bits((v >> (32 * u64::from(sel))) as u32);
                    let neg = if half == 0 { i.neg } else { i.neg_hi };
                    if neg >> n & 1 == 1 {
                        *x = -*x;
                    }
                }
                let r = match i.name {
                    "v_pk_add_f32" => a[0] + a[1],
                    "v_pk_mul_f32" => a[0] * a[1],
                    _ => a[0].mul_add(a[1], a[2]),
                };
                out |= u64::from(r.to_bits()) << (32 * half);
            }
            c.vset64(i.dst.into(), l, out)
        })),
        _ => compare_semantics(name),
    }
}

/// An integer add or subtract of `bits`-wide values (`v_{add,sub,subrev}_{u,i}{32,16}`),
/// saturating when clamped, wrapping otherwise.
fn int_add_sub(name: &str, clamp: bool, bits: u32) -> impl Fn(u32, u32) -> u32 {
    let signed = name.contains("_i");
    let (sub, rev) = (name.contains("sub"), name.contains("subrev"));
    let mask = u64::MAX >> (64 - bits);
    move |a: u32, b: u32| {
        let (a, b) = if rev { (b, a) } else { (a, b) };
        let widen = |x: u32| -> i64 {
            let x = u64::from(x) & mask;
            if signed && x >> (bits - 1) & 1 == 1 {
                (x | !mask) as i64
            } else {
                x as i64
            }
        };
        let r = if sub {
            widen(a) - widen(b)
        } else {
            widen(a) + widen(b)
        };
        let r = if clamp {
            let (lo, hi) = if signed {
                (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
            } else {
                (0, mask as i64)
            };
            r.clamp(lo, hi)
        } else {
            r
        };
        (r as u64 & mask) as u32
    }
}

fn sext24(v: u32) -> i64 {
    i64::from(((v << 8) as i32) >> 8)
}

/// `v_cmp[x]_<cond>_<type>`.
fn compare_semantics(name: &str) -> Option<Exec> {
    let (cond, ty) = compare_parts(name)?;
    let known = match ty {
        "f16" | "f32" | "f64" => float_cond(cond).is_some(),
        "i16" | "u16" | "i32" | "u32" | "i64" | "u64" => int_cond(cond).is_some(),
        _ => false,
    };
    if !known {
        return None;
    }
    op!(|c, i| {
        let (cond, ty) = compare_parts(i.name).expect("checked at decode");
        match float_cond(cond).filter(|_| ty.starts_with('f')) {
            Some(test) => c.compare(i, |c, l| {
                Ok(test(
                    c.float_operand(i, 0, l, ty)?,
                    c.float_operand(i, 1, l, ty)?,
                ))
            }),
            None => {
                let test = int_cond(cond).expect("checked at decode");
                c.compare(i, |c, l| {
                    Ok(test(
                        c.int_operand(i, 0, l, ty)?,
                        c.int_operand(i, 1, l, ty)?,
                    ))
                })
            }
        }
    })
}

/// `(condition, type)` of a `v_cmp[x]_<condition>_<type>` name.
fn compare_parts(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix("v_cmpx_")
        .or_else(|| name.strip_prefix("v_cmp_"))?
        .rsplit_once('_')
}

/// Float conditions, named as in the ISA ("n" forms hold on NaN).
fn float_cond(cond: &str) -> Option<fn(f64, f64) -> bool> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    Some(match cond {
        "f" => |_, _| false,
        "lt" => |a, b| matches!(a.partial_cmp(&b), Some(Less)),
        "eq" => |a, b| matches!(a.partial_cmp(&b), Some(Equal)),
        "le" => |a, b| matches!(a.partial_cmp(&b), Some(Less | Equal)),
        "gt" => |a, b| matches!(a.partial_cmp(&b), Some(Greater)),
        "lg" => |a, b| matches!(a.partial_cmp(&b), Some(Less | Greater)),
        "ge" => |a, b| matches!(a.partial_cmp(&b), Some(Greater | Equal)),
        "o" => |a, b| a.partial_cmp(&b).is_some(),
        "u" => |a, b| a.partial_cmp(&b).is_none(),
        "nge" => |a, b| !matches!(a.partial_cmp(&b), Some(Greater | Equal)),
        "nlg" => |a, b| !matches!(a.partial_cmp(&b), Some(Less | Greater)),
        "ngt" => |a, b| !matches!(a.partial_cmp(&b), Some(Greater)),
        "nle" => |a, b| !matches!(a.partial_cmp(&b), Some(Less | Equal)),
        "neq" => |a, b| !matches!(a.partial_cmp(&b), Some(Equal)),
        "nlt" => |a, b| !matches!(a.partial_cmp(&b), Some(Less)),
        "tru" => |_, _| true,
        _ => return None,
    })
}

/// Integer conditions, on values widened to i128 as their type says.
fn int_cond(cond: &str) -> Option<fn(i128, i128) -> bool> {
    Some(match cond {
        "f" => |_, _| false,
        "lt" => |a, b| a < b,
        "eq" => |a, b| a == b,
        "le" => |a, b| a <= b,
        "gt" => |a, b| a > b,
        "ne" | "lg" => |a, b| a != b,
        "ge" => |a, b| a >= b,
        "t" => |_, _| true,
        _ => return None,
    })
}

fn ds_semantics(name: &str) -> Option<Exec> {
    match name {
        "ds_nop" => op!(|_c, _i| Ok(Flow::Next)),
        "ds_read_b32" => op!(|c, i| ds_rw(c, i, true, 4, false)),
        "ds_read_b64" => op!(|c, i| ds_rw(c, i, true, 8, false)),
        "ds_read_b96" => op!(|c, i| ds_rw(c, i, true, 12, false)),
        "ds_read_b128" => op!(|c, i| ds_rw(c, i, true, 16, false)),
        "ds_read_u8" => op!(|c, i| ds_rw(c, i, true, 1, false)),
        "ds_read_i8" => op!(|c, i| ds_rw(c, i, true, 1, true)),
        "ds_read_u16" => op!(|c, i| ds_rw(c, i, true, 2, false)),
        "ds_read_i16" => op!(|c, i| ds_rw(c, i, true, 2, true)),
        "ds_write_b32" => op!(|c, i| ds_rw(c, i, false, 4, false)),
        "ds_write_b64" => op!(|c, i| ds_rw(c, i, false, 8, false)),
        "ds_write_b96" => op!(|c, i| ds_rw(c, i, false, 12, false)),
        "ds_write_b128" => op!(|c, i| ds_rw(c, i, false, 16, false)),
        "ds_write_b8" => op!(|c, i| ds_rw(c, i, false, 1, false)),
        "ds_write_b16" => op!(|c, i| ds_rw(c, i, false, 2, false)),
        "ds_read2_b32" => op!(|c, i| ds_rw2(c, i, true, false, false)),
        "ds_read2_b64" => op!(|c, i| ds_rw2(c, i, true, true, false)),
        "ds_read2st64_b32" => op!(|c, i| ds_rw2(c, i, true, false, true)),
        "ds_read2st64_b64" => op!(|c, i| ds_rw2(c, i, true, true, true)),
        "ds_write2_b32" => op!(|c, i| ds_rw2(c, i, false, false, false)),
        "ds_write2_b64" => op!(|c, i| ds_rw2(c, i, false, true, false)),
        "ds_write2st64_b32" => op!(|c, i| ds_rw2(c, i, false, false, true)),
        "ds_write2st64_b64" => op!(|c, i| ds_rw2(c, i, false, true, true)),
        "ds_bpermute_b32" => op!(|c, i| ds_cross_lane(c, i, 0)),
        "ds_permute_b32" => op!(|c, i| ds_cross_lane(c, i, 1)),
        "ds_swizzle_b32" => op!(|c, i| ds_cross_lane(c, i, 2)),
        _ => {
            // ds_<op>[_rtn]_<type>
            let rest = name.strip_prefix("ds_")?;
            let ret = rest.contains("_rtn_");
            let rest = rest.replace("_rtn", "");
            let (op, ty) = rest.rsplit_once('_')?;
            let wide = ty.ends_with("64");
            let key = match (op, ty) {
                ("min", "i32" | "i64") => "min_i",
                ("max", "i32" | "i64") => "max_i",
                ("min", "u32" | "u64") => "min_u",
                ("max", "u32" | "u64") => "max_u",
                ("add", "f32") => "add_f32",
                ("min", "f32") => "min_f32",
                ("max", "f32") => "max_f32",
                ("add", "f64") => "add_f64",
                ("min", "f64") => "min_f64",
                ("max", "f64") => "max_f64",
                ("wrxchg", _) => "swap",
                ("cmpst", "b32" | "b64") => "cmpst",
                (o @ ("add" | "sub" | "rsub" | "and" | "or" | "xor" | "inc" | "dec"), _) => o,
                _ => return None,
            };
            if key != "cmpst" {
                atomic_fn(key, wide)?;
            }
            match (key, wide, ret) {
                ("cmpst", false, false) => {
                    op!(|c, i| ds_atomic(c, i, |o, _, _| o, false, false, true))
                }
                ("cmpst", false, true) => {
                    op!(|c, i| ds_atomic(c, i, |o, _, _| o, false, true, true))
                }
                ("cmpst", true, false) => {
                    op!(|c, i| ds_atomic(c, i, |o, _, _| o, true, false, true))
                }
                ("cmpst", true, true) => op!(|c, i| ds_atomic(c, i, |o, _, _| o, true, true, true)),
                _ => op!(|c, i| {
                    let (f, wide, ret) = ds_atomic_of(i.name).expect("checked at decode");
                    ds_atomic(c, i, f, wide, ret, false)
                }),
            }
        }
    }
}

fn ds_atomic_of(name: &str) -> Option<(AtomicFn, bool, bool)> {
    let rest = name.strip_prefix("ds_")?;
    let ret = rest.contains("_rtn_");
    let rest = rest.replace("_rtn", "");
    let (op, ty) = rest.rsplit_once('_')?;
    let wide = ty.ends_with("64");
    let key = match (op, ty) {
        ("min", "i32" | "i64") => "min_i",
        ("max", "i32" | "i64") => "max_i",
        ("min", "u32" | "u64") => "min_u",
        ("max", "u32" | "u64") => "max_u",
        ("add" | "min" | "max", "f32" | "f64") => {
            return atomic_fn(&format!("{op}_{ty}"), wide).map(|f| (f, wide, ret))
        }
        ("wrxchg", _) => "swap",
        (o, _) => o,
    };
    atomic_fn(key, wide).map(|f| (f, wide, ret))
}

fn mubuf_semantics(name: &str) -> Option<Exec> {
    match name {
        "buffer_load_ubyte" => op!(|c, i| scratch_rw(c, i, true, 1, false)),
        "buffer_load_sbyte" => op!(|c, i| scratch_rw(c, i, true, 1, true)),
        "buffer_load_ushort" => op!(|c, i| scratch_rw(c, i, true, 2, false)),
        "buffer_load_sshort" => op!(|c, i| scratch_rw(c, i, true, 2, true)),
        "buffer_load_dword" => op!(|c, i| scratch_rw(c, i, true, 4, false)),
        "buffer_load_dwordx2" => op!(|c, i| scratch_rw(c, i, true, 8, false)),
        "buffer_load_dwordx3" => op!(|c, i| scratch_rw(c, i, true, 12, false)),
        "buffer_load_dwordx4" => op!(|c, i| scratch_rw(c, i, true, 16, false)),
        "buffer_store_byte" => op!(|c, i| scratch_rw(c, i, false, 1, false)),
        "buffer_store_short" => op!(|c, i| scratch_rw(c, i, false, 2, false)),
        "buffer_store_dword" => op!(|c, i| scratch_rw(c, i, false, 4, false)),
        "buffer_store_dwordx2" => op!(|c, i| scratch_rw(c, i, false, 8, false)),
        "buffer_store_dwordx3" => op!(|c, i| scratch_rw(c, i, false, 12, false)),
        "buffer_store_dwordx4" => op!(|c, i| scratch_rw(c, i, false, 16, false)),
        "buffer_wbl2" | "buffer_invl2" | "buffer_wbinvl1" | "buffer_wbinvl1_vol" => {
            op!(|_c, _i| Ok(Flow::Next))
        }
        _ => None,
    }
}

fn flat_semantics(name: &str) -> Option<Exec> {
    let op = name
        .strip_prefix("global_")
        .or_else(|| name.strip_prefix("flat_"))?;
    match op {
        "load_ubyte" => op!(|c, i| global_load(c, i, 1, false)),
        "load_sbyte" => op!(|c, i| global_load(c, i, 1, true)),
        "load_ushort" => op!(|c, i| global_load(c, i, 2, false)),
        "load_sshort" => op!(|c, i| global_load(c, i, 2, true)),
        "load_dword" => op!(|c, i| global_load(c, i, 4, false)),
        "load_dwordx2" => op!(|c, i| global_load(c, i, 8, false)),
        "load_dwordx3" => op!(|c, i| global_load(c, i, 12, false)),
        "load_dwordx4" => op!(|c, i| global_load(c, i, 16, false)),
        "store_byte" => op!(|c, i| global_store(c, i, 1)),
        "store_short" => op!(|c, i| global_store(c, i, 2)),
        "store_dword" => op!(|c, i| global_store(c, i, 4)),
        "store_dwordx2" => op!(|c, i| global_store(c, i, 8)),
        "store_dwordx3" => op!(|c, i| global_store(c, i, 12)),
        "store_dwordx4" => op!(|c, i| global_store(c, i, 16)),
        "atomic_cmpswap" => op!(|c, i| global_atomic(c, i, |o, _, _| o, false, true)),
        "atomic_cmpswap_x2" => op!(|c, i| global_atomic(c, i, |o, _, _| o, true, true)),
        _ => {
            let atomic = op.strip_prefix("atomic_")?;
            let (key, wide) = match atomic.strip_suffix("_x2") {
                Some(k) => (k, true),
                None => (atomic, atomic.ends_with("f64")),
            };
            atomic_fn(key, wide)?;
            op!(|c, i| {
                let op = i.name.split_once("atomic_").expect("checked at decode").1;
                let (key, wide) = match op.strip_suffix("_x2") {
                    Some(k) => (k, true),
                    None => (op, op.ends_with("f64")),
                };
                let f = atomic_fn(key, wide).expect("checked at decode");
                global_atomic(c, i, f, wide, false)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpp_controls_name_the_lanes_the_isa_says() {
        // quad_perm [3,2,1,0]
        assert_eq!(dpp_source(0x1b, 5), Some(6));
        // row_shl:1 / row_shr:1 stop at the row's edge
        assert_eq!(dpp_source(0x101, 15), None);
        assert_eq!(dpp_source(0x101, 14), Some(15));
        assert_eq!(dpp_source(0x111, 16), None);
        assert_eq!(dpp_source(0x111, 17), Some(16));
        // row_ror:4 wraps within the row
        assert_eq!(dpp_source(0x124, 33), Some(45));
        // wave_shr:1, wave_rol:1
        assert_eq!(dpp_source(0x138, 0), None);
        assert_eq!(dpp_source(0x134, 63), Some(0));
        // row_mirror, row_half_mirror, row_bcast15, row_bcast31
        assert_eq!(dpp_source(0x140, 18), Some(29));
        assert_eq!(dpp_source(0x141, 9), Some(14));
        assert_eq!(dpp_source(0x142, 20), Some(15));
        assert_eq!(dpp_source(0x142, 3), None);
        assert_eq!(dpp_source(0x143, 40), Some(31));
        assert_eq!(dpp_source(0x143, 20), None);
    }

    #[test]
    fn dpp_writes_only_lanes_with_a_source_unless_bound_ctrl() {
        let d = Dpp {
            ctrl: 0x111,
            bound_ctrl: false,
            bank_mask: 0xf,
            row_mask: 0xf,
        };
        let mask = dpp_write_mask(&d, u64::MAX);
        assert_eq!(
            mask & 0x1_0001_0001_0001,
            0,
            "each row's lane 0 has no source"
        );
        assert_eq!(mask.count_ones(), 60);
        // A disabled source lane is no source either.
        assert_eq!(dpp_write_mask(&d, !2) >> 2 & 1, 0);
        let bound = Dpp {
            bound_ctrl: true,
            ..d
        };
        assert_eq!(dpp_write_mask(&bound, u64::MAX), u64::MAX);
        let rows = Dpp {
            row_mask: 0b0010,
            bank_mask: 0b0001,
            ..bound
        };
        assert_eq!(dpp_write_mask(&rows, u64::MAX), 0xf << 16);
    }

    #[test]
    fn sdwa_selects_and_places_bytes_and_words() {
        assert_eq!(sdwa_select(1, false, 0x1234_80ff), 0x80);
        assert_eq!(sdwa_select(1, true, 0x1234_80ff), 0xffff_ff80);
        assert_eq!(sdwa_select(5, false, 0x8234_0000), 0x8234);
        assert_eq!(sdwa_select(5, true, 0x8234_0000), 0xffff_8234);
        let s = |dst_sel, dst_unused| Sdwa {
            dst_sel,
            dst_unused,
            sel: [6, 6],
            sext: [false, false],
        };
        assert_eq!(sdwa_place(&s(1, 0), 0xaaaa_aaaa, 0x1ff), 0x0000_ff00);
        assert_eq!(sdwa_place(&s(1, 2), 0xaaaa_aaaa, 0x1ff), 0xaaaa_ffaa);
        assert_eq!(sdwa_place(&s(1, 1), 0xaaaa_aaaa, 0x180), 0xffff_8000);
        assert_eq!(sdwa_place(&s(4, 2), 0xaaaa_aaaa, 0x1234_5678), 0xaaaa_5678);
        assert_eq!(sdwa_place(&s(6, 0), 0, 0x1234_5678), 0x1234_5678);
    }

    #[test]
    fn halves_convert_as_ieee_says() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0x3555, 0.333_251_95),
        ] {
            assert_eq!(f16_to_f32(h), f);
            assert_eq!(f32_to_f16(f), h);
        }
        // Ties to even, overflow to infinity, NaN stays NaN.
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02);
        assert_eq!(f32_to_f16(70000.0), 0x7c00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        assert_eq!(f32_to_f16_rtz(1.0 + 3.0 / 2048.0), 0x3c01);
    }

    struct NoMemory;
    impl super::super::Memory for NoMemory {
        fn translate(&self, _: u64, _: usize) -> Option<*mut u8> {
            None
        }
    }

    /// Runs the instruction `bytes` encode on a wave whose VGPR n holds `v[n]`
    /// in every lane; returns the wave.
    fn run_one(bytes: &[u8], v: &[u32]) -> Wave {
        let i = super::super::decode::decode(bytes, 0, 0).expect("decodes");
        let run = semantics(&i).expect("runs");
        let mem = NoMemory;
        let env = Env {
            mem: &mem,
            kernarg: Vec::new(),
            packet: [0; 64],
            code_base: 0,
            started: std::time::Instant::now(),
        };
        let mut w = Wave::new(8);
        w.set_exec(u64::MAX);
        for (r, &x) in v.iter().enumerate() {
            for l in 0..LANES {
                w.v[r * LANES + l] = x;
            }
        }
        let mut lds = [0u8; 0];
        let mut c = Ctx {
            w: &mut w,
            lds: &mut lds,
            env: &env,
            dpp_source: [0; 2 * LANES],
            dpp_exec: 0,
        };
        run(&mut c, &i).expect("no fault");
        w
    }

    #[test]
    fn a_64_bit_operands_float_constant_is_the_double() {
        // s_mov_b64 s[0:1], 1.0
        let w = run_one(&[0xf2, 0x01, 0x80, 0xbe], &[]);
        assert_eq!(u64::from(w.s[0]) | u64::from(w.s[1]) << 32, 1f64.to_bits());
    }

    #[test]
    fn clamped_integer_adds_and_subtracts_saturate() {
        // v_add_u32_e64 v1, v2, v3 clamp; v_sub_u32_e64 v1, v2, v3 clamp
        let add = run_one(
            &[0x01, 0x80, 0x34, 0xd1, 0x02, 0x07, 0x02, 0x00],
            &[0, 0, 0xffff_fff0, 0x20],
        );
        assert_eq!(add.v[LANES], u32::MAX);
        let sub = run_one(
            &[0x01, 0x80, 0x35, 0xd1, 0x02, 0x07, 0x02, 0x00],
            &[0, 0, 5, 9],
        );
        assert_eq!(sub.v[LANES], 0);
        assert_eq!(
            int_add_sub("v_sub_i32", true, 32)(i32::MIN as u32, 1),
            i32::MIN as u32
        );
        assert_eq!(int_add_sub("v_add_i16", true, 16)(0x7fff, 1), 0x7fff);
        assert_eq!(int_add_sub("v_subrev_u16", false, 16)(1, 0), 0xffff);
    }

    #[test]
    fn conversions_apply_source_modifiers() {
        // v_cvt_f32_f16_e64 v1, -v2 with v2 = 1.5 (half)
        let w = run_one(
            &[0x01, 0x00, 0x4b, 0xd1, 0x02, 0x01, 0x00, 0x20],
            &[0, 0, 0x3e00],
        );
        assert_eq!(f32::from_bits(w.v[LANES]), -1.5);
    }

    #[test]
    fn half_classes_come_from_the_halfs_bits() {
        assert!(class_f16(0x0001, 1 << 7), "a positive subnormal half");
        assert!(class_f16(0x7d00, 1 << 0), "a signalling NaN");
        assert!(class_f16(0x7e00, 1 << 1), "a quiet NaN");
        assert!(class_f16(0xfc00, 1 << 2), "negative infinity");
        assert!(!class_f16(0x3c00, 1 << 7));
        assert!(class_f32(-0.0, 1 << 5) && class_f32(f32::MIN_POSITIVE / 2.0, 1 << 7));
        assert!(class_f64(f64::NEG_INFINITY, 1 << 2) && class_f64(-1.0, 1 << 3));
        assert!(class_f64(f64::NAN, 1 << 1) && !class_f64(f64::NAN, 1 << 0));
    }

    #[test]
    fn bit_field_extracts_clip_at_the_top_and_extend_signs() {
        assert_eq!(bfe_u32(0xabcd_1234, 8 | 8 << 16), 0x12);
        assert_eq!(bfe_i32(0xabcd_1284, 8 << 16), 0xffff_ff84);
        assert_eq!(
            bfe_u32(0xabcd_1234, 28 | 8 << 16),
            0xa,
            "the width clips at bit 31"
        );
        assert_eq!(bfe_i32(0xabcd_1234, 28 | 8 << 16), 0xffff_fffa);
        assert_eq!(bfe_u32(0xabcd_1234, 4), 0, "width 0");
        assert_eq!(bfe_u32(0xabcd_1234, 32 << 16), 0xabcd_1234);
        assert_eq!(bfe_i64(0x8000_0000_0000_0000, 60 | 4 << 16), u64::MAX - 7);
        assert_eq!(bfe_u64(u64::MAX, 1 | 64 << 16), u64::MAX >> 1);
    }

    #[test]
    fn trig_preop_segments_are_two_over_pi() {
        let two_over_pi = 2.0 / std::f64::consts::PI;
        let s0 = trig_preop(1.0, 0);
        // The first 53 bits, truncated: within an ulp below the rounded value.
        assert!(
            s0 <= two_over_pi && two_over_pi - s0 <= f64::EPSILON,
            "{s0}"
        );
        let s1 = trig_preop(1.0, 1);
        assert!(s1 > 0.0 && s1 < 2f64.powi(-52), "{s1}");
        // Together the segments carry 2/pi far past double precision.
        assert!((s0 - two_over_pi).abs() + s1 < 2f64.powi(-50));
    }
}
