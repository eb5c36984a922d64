//! Pure arithmetic semantics of PTX instructions on raw register bits.

use crate::ir::*;

#[inline]
pub(crate) fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[inline]
pub(crate) fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

#[inline]
fn f32v(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

#[inline]
fn f64v(v: u64) -> f64 {
    f64::from_bits(v)
}

#[inline]
fn b32(v: f32) -> u64 {
    v.to_bits() as u64
}

/// Reads a float register of type `t` as f64 (f32 and f16 widen exactly).
pub(crate) fn fget(t: Ty, v: u64) -> f64 {
    match t {
        Ty::F32 => f32v(v) as f64,
        Ty::F16 => f16_to_f32(v as u16) as f64,
        Ty::BF16 => bf16_to_f32(v as u16) as f64,
        _ => f64v(v),
    }
}

fn float_bin(op: BinOp, t: Ty, a: u64, b: u64) -> u64 {
    macro_rules! go {
        ($x:expr, $y:expr, $to:expr) => {{
            let (x, y) = ($x, $y);
            $to(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::MulLo | BinOp::MulHi | BinOp::MulWide | BinOp::Mul24Lo => x * y,
                BinOp::Div => x / y,
                BinOp::Rem => x % y,
                BinOp::Min => x.min(y),
                BinOp::Max => x.max(y),
                BinOp::CopySign => y.copysign(x),
                _ => x,
            })
        }};
    }
    match t {
        Ty::F32 => go!(f32v(a), f32v(b), b32),
        Ty::F16 => go!(h2f(a), h2f(b), f2h),
        Ty::BF16 => go!(bf16_to_f32(a as u16), bf16_to_f32(b as u16), f2bf),
        _ => go!(f64v(a), f64v(b), f64::to_bits),
    }
}

#[inline]
fn h2f(v: u64) -> f32 {
    f16_to_f32(v as u16)
}

#[inline]
fn f2h(v: f32) -> u64 {
    f32_to_f16(v) as u64
}

#[inline]
fn f2bf(v: f32) -> u64 {
    f32_to_bf16(v) as u64
}

pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 -> bf16, round to nearest even.
pub(crate) fn f32_to_bf16(f: f32) -> u16 {
    let x = f.to_bits();
    if f.is_nan() {
        return ((x >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((x >> 16) & 1);
    (x.wrapping_add(round) >> 16) as u16
}

/// Two-operand arithmetic. `cc` is the carry flag of the thread.
pub(crate) fn bin(op: BinOp, t: Ty, a: u64, b: u64, cc: &mut u64) -> u64 {
    if t.is_float() {
        return float_bin(op, t, a, b);
    }
    let bits = t.bits();
    let m = mask(bits);
    let (ua, ub) = (a & m, b & m);
    let signed = t.is_signed();
    let (sa, sb) = (sext(a, bits), sext(b, bits));
    match op {
        BinOp::Add => ua.wrapping_add(ub) & m,
        BinOp::Sub => ua.wrapping_sub(ub) & m,
        BinOp::MulLo => ua.wrapping_mul(ub) & m,
        BinOp::MulHi => {
            let p = if signed {
                ((sa as i128 * sb as i128) >> bits) as u64
            } else {
                ((ua as u128 * ub as u128) >> bits) as u64
            };
            p & m
        }
        BinOp::MulWide => {
            let p = if signed {
                sa.wrapping_mul(sb) as u64
            } else {
                ua.wrapping_mul(ub)
            };
            p & mask(bits * 2)
        }
        BinOp::Mul24Lo => {
            let p = if signed {
                sext(a, 24).wrapping_mul(sext(b, 24)) as u64
            } else {
                (a & 0xFF_FFFF).wrapping_mul(b & 0xFF_FFFF)
            };
            p & m
        }
        BinOp::Div => {
            if ub == 0 {
                m
            } else if signed {
                sa.wrapping_div(sb) as u64 & m
            } else {
                ua / ub
            }
        }
        BinOp::Rem => {
            if ub == 0 {
                ua
            } else if signed {
                sa.wrapping_rem(sb) as u64 & m
            } else {
                ua % ub
            }
        }
        BinOp::Min => {
            if signed {
                sa.min(sb) as u64 & m
            } else {
                ua.min(ub)
            }
        }
        BinOp::Max => {
            if signed {
                sa.max(sb) as u64 & m
            } else {
                ua.max(ub)
            }
        }
        BinOp::And => ua & ub,
        BinOp::Or => ua | ub,
        BinOp::Xor => ua ^ ub,
        BinOp::Shl => {
            let s = b & 0xFFFF_FFFF;
            if s >= bits as u64 {
                0
            } else {
                (ua << s) & m
            }
        }
        BinOp::Shr => {
            let s = b & 0xFFFF_FFFF;
            if signed {
                (sa >> s.min(63)) as u64 & m
            } else if s >= bits as u64 {
                0
            } else {
                ua >> s
            }
        }
        BinOp::CopySign => ub,
        BinOp::AddX { cin, cout } => {
            let c = if cin { *cc & 1 } else { 0 };
            let wide = ua as u128 + ub as u128 + c as u128;
            if cout {
                *cc = ((wide >> bits) & 1) as u64;
            }
            wide as u64 & m
        }
        BinOp::SubX { cin, cout } => {
            let c = if cin { *cc & 1 } else { 0 };
            let r = (ua as i128) - (ub as i128) - (c as i128);
            if cout {
                *cc = u64::from(r < 0);
            }
            r as u64 & m
        }
    }
}

fn float_un(op: UnOp, t: Ty, a: u64) -> u64 {
    macro_rules! go {
        ($x:expr, $to:expr) => {{
            let x = $x;
            $to(match op {
                UnOp::Abs => x.abs(),
                UnOp::Neg => -x,
                UnOp::Sqrt => x.sqrt(),
                UnOp::Rsqrt => 1.0 / x.sqrt(),
                UnOp::Rcp => 1.0 / x,
                UnOp::Ex2 => x.exp2(),
                UnOp::Lg2 => x.log2(),
                UnOp::Sin => x.sin(),
                UnOp::Cos => x.cos(),
                UnOp::Tanh => x.tanh(),
                _ => x,
            })
        }};
    }
    match t {
        Ty::F32 => go!(f32v(a), b32),
        Ty::F16 => go!(h2f(a), f2h),
        Ty::BF16 => go!(bf16_to_f32(a as u16), f2bf),
        _ => go!(f64v(a), f64::to_bits),
    }
}

/// One-operand arithmetic.
pub(crate) fn un(op: UnOp, t: Ty, a: u64) -> u64 {
    if let UnOp::Tf32(round) = op {
        return u64::from(to_tf32(a as u32, round));
    }
    if t.is_float() {
        return float_un(op, t, a);
    }
    if t == Ty::Pred {
        return match op {
            UnOp::Not => (a & 1) ^ 1,
            _ => a & 1,
        };
    }
    let bits = t.bits();
    let m = mask(bits);
    let ua = a & m;
    let sa = sext(a, bits);
    match op {
        UnOp::Abs => sa.wrapping_abs() as u64 & m,
        UnOp::Neg => sa.wrapping_neg() as u64 & m,
        UnOp::Not => !ua & m,
        UnOp::CNot => u64::from(ua == 0),
        UnOp::Popc => ua.count_ones() as u64,
        UnOp::Clz => (ua.leading_zeros() - (64 - bits)) as u64,
        UnOp::Brev => ua.reverse_bits() >> (64 - bits),
        UnOp::Bfind | UnOp::BfindShift => {
            let x = if t.is_signed() && sa < 0 { !ua & m } else { ua };
            if x == 0 {
                0xFFFF_FFFF
            } else {
                let pos = 63 - x.leading_zeros() as u64;
                if op == UnOp::BfindShift {
                    bits as u64 - 1 - pos
                } else {
                    pos
                }
            }
        }
        _ => ua,
    }
}

fn prmt(a: u64, b: u64, c: u64, mode: u8) -> u64 {
    let tmp = ((b & 0xFFFF_FFFF) << 32) | (a & 0xFFFF_FFFF);
    let byte = |i: u64| (tmp >> (8 * (i & 7))) & 0xFF;
    let sel = c & 0xFFFF;
    let idx: [u64; 4] = match mode {
        0 => {
            let mut r = 0u64;
            for i in 0..4 {
                let s = (sel >> (4 * i)) & 0xF;
                let mut v = byte(s & 7);
                if s & 8 != 0 {
                    v = if v & 0x80 != 0 { 0xFF } else { 0 };
                }
                r |= v << (8 * i);
            }
            return r;
        }
        1 => {
            let s = sel & 7;
            [s, (s + 1) & 7, (s + 2) & 7, (s + 3) & 7]
        }
        2 => {
            let s = sel & 7;
            [s, (s + 7) & 7, (s + 6) & 7, (s + 5) & 7]
        }
        3 => [sel & 3; 4],
        4 => match sel & 3 {
            0 => [0, 1, 2, 3],
            1 => [1, 1, 2, 3],
            2 => [2, 2, 2, 3],
            _ => [3, 3, 3, 3],
        },
        5 => match sel & 3 {
            0 => [0, 0, 0, 0],
            1 => [0, 1, 1, 1],
            2 => [0, 1, 2, 2],
            _ => [0, 1, 2, 3],
        },
        _ => {
            let s = (sel & 1) * 2;
            [s, s + 1, s, s + 1]
        }
    };
    idx.iter()
        .enumerate()
        .fold(0, |r, (i, &s)| r | (byte(s) << (8 * i)))
}

/// Three-operand arithmetic.
pub(crate) fn tern(op: TernOp, t: Ty, a: u64, b: u64, c: u64, cc: &mut u64) -> u64 {
    let bits = t.bits();
    let m = mask(bits);
    match op {
        TernOp::Fma => match t {
            Ty::F32 => b32(f32v(a).mul_add(f32v(b), f32v(c))),
            // The f16 product is exact in f64; one rounding of the sum to f32, then f16.
            Ty::F16 => f2h((h2f(a) as f64 * h2f(b) as f64 + h2f(c) as f64) as f32),
            Ty::BF16 => f2bf((fget(t, a) * fget(t, b) + fget(t, c)) as f32),
            _ => f64v(a).mul_add(f64v(b), f64v(c)).to_bits(),
        },
        TernOp::MadLo => bin(BinOp::MulLo, t, a, b, cc).wrapping_add(c) & m,
        TernOp::MadHi => bin(BinOp::MulHi, t, a, b, cc).wrapping_add(c) & m,
        TernOp::MadWide => bin(BinOp::MulWide, t, a, b, cc).wrapping_add(c) & mask(bits * 2),
        TernOp::Mad24Lo => bin(BinOp::Mul24Lo, t, a, b, cc).wrapping_add(c) & m,
        TernOp::MadX { hi, cin, cout } => {
            let p = bin(if hi { BinOp::MulHi } else { BinOp::MulLo }, t, a, b, cc);
            bin(BinOp::AddX { cin, cout }, t, p, c, cc)
        }
        TernOp::Sad => {
            let d = if t.is_signed() {
                sext(a, bits).abs_diff(sext(b, bits))
            } else {
                (a & m).abs_diff(b & m)
            };
            d.wrapping_add(c) & m
        }
        TernOp::Selp => {
            if c & 1 != 0 {
                a
            } else {
                b
            }
        }
        TernOp::Bfe => {
            let pos = (b & 0xFF) as u32;
            let len = (c & 0xFF) as u32;
            let ua = a & m;
            let sbit = if t.is_signed() && len > 0 {
                let hi = (pos + len - 1).min(bits - 1);
                (ua >> hi) & 1
            } else {
                0
            };
            let mut r = 0u64;
            for i in 0..bits {
                let bit = if i < len && pos + i < bits {
                    (ua >> (pos + i)) & 1
                } else {
                    sbit
                };
                r |= bit << i;
            }
            r
        }
        TernOp::ShfL | TernOp::ShfR | TernOp::ShfLClamp | TernOp::ShfRClamp => {
            let n = if matches!(op, TernOp::ShfL | TernOp::ShfR) {
                c & 31
            } else {
                (c & 0xFFFF_FFFF).min(32)
            };
            let wide = ((b & 0xFFFF_FFFF) << 32) | (a & 0xFFFF_FFFF);
            if matches!(op, TernOp::ShfL | TernOp::ShfLClamp) {
                ((wide as u128) << n >> 32) as u64 & 0xFFFF_FFFF
            } else {
                (wide >> n) & 0xFFFF_FFFF
            }
        }
        TernOp::Prmt(mode) => prmt(a, b, c, mode),
    }
}

/// `bfi`: insert `len` bits of `a` into `b` at `pos`.
pub(crate) fn bfi(t: Ty, a: u64, b: u64, pos: u64, len: u64) -> u64 {
    let bits = t.bits() as u64;
    let (pos, len) = (pos & 0xFF, len & 0xFF);
    let mut r = b & mask(bits as u32);
    for i in 0..len {
        if pos + i >= bits {
            break;
        }
        let bit = (a >> i) & 1;
        r = (r & !(1 << (pos + i))) | (bit << (pos + i));
    }
    r
}

/// Comparison of `setp`/`set`.
pub(crate) fn compare(cmp: Cmp, t: Ty, a: u64, b: u64) -> bool {
    if t.is_float() {
        let (x, y) = (fget(t, a), fget(t, b));
        let nan = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => !nan && x == y,
            Cmp::Ne => !nan && x != y,
            Cmp::Lt => !nan && x < y,
            Cmp::Le => !nan && x <= y,
            Cmp::Gt => !nan && x > y,
            Cmp::Ge => !nan && x >= y,
            Cmp::Equ => nan || x == y,
            Cmp::Neu => nan || x != y,
            Cmp::Ltu => nan || x < y,
            Cmp::Leu => nan || x <= y,
            Cmp::Gtu => nan || x > y,
            Cmp::Geu => nan || x >= y,
            Cmp::Num => !nan,
            Cmp::Nan => nan,
        };
    }
    let bits = t.bits();
    let o = if t.is_signed() {
        sext(a, bits).cmp(&sext(b, bits))
    } else {
        (a & mask(bits)).cmp(&(b & mask(bits)))
    };
    use std::cmp::Ordering::*;
    match cmp {
        Cmp::Eq | Cmp::Equ => o == Equal,
        Cmp::Ne | Cmp::Neu => o != Equal,
        Cmp::Lt | Cmp::Ltu => o == Less,
        Cmp::Le | Cmp::Leu => o != Greater,
        Cmp::Gt | Cmp::Gtu => o == Greater,
        Cmp::Ge | Cmp::Geu => o != Less,
        Cmp::Num => true,
        Cmp::Nan => false,
    }
}

pub(crate) fn testp(op: TestP, t: Ty, a: u64) -> bool {
    let x = fget(t, a);
    let sub = match t {
        Ty::F32 => f32v(a).is_subnormal(),
        Ty::F16 => a & 0x7C00 == 0 && a & 0x3FF != 0,
        Ty::BF16 => a & 0x7F80 == 0 && a & 0x7F != 0,
        _ => x.is_subnormal(),
    };
    match op {
        TestP::Finite => x.is_finite(),
        TestP::Infinite => x.is_infinite(),
        TestP::Number => !x.is_nan(),
        TestP::NotANumber => x.is_nan(),
        TestP::Normal => x.is_normal() && !sub,
        TestP::Subnormal => sub,
    }
}

/// An f32's bits rounded to tf32 (the low 13 bits cleared): ties away from
/// zero (`Some(true)`), to even (`Some(false)`), or toward zero (`None`).
/// NaN and infinity stay as they are.
pub(crate) fn to_tf32(bits: u32, round: Option<bool>) -> u32 {
    if (bits >> 23) & 0xFF == 0xFF {
        return bits;
    }
    let low = bits & 0x1FFF;
    let kept = bits & !0x1FFF;
    let up = match round {
        None => false,
        Some(true) => low >= 0x1000,
        Some(false) => low > 0x1000 || (low == 0x1000 && (kept >> 13) & 1 == 1),
    };
    if up {
        kept.wrapping_add(0x2000)
    } else {
        kept
    }
}

pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x3FF) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: value = man * 2^-24.
            let v = man as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        0x1F => sign | 0x7F80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

pub(crate) fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    if f.is_nan() {
        return sign | 0x7E00;
    }
    let a = f.abs();
    if a >= 65520.0 {
        return sign | 0x7C00;
    }
    if a < f32::from_bits(0x3880_0000) {
        // Subnormal half (or zero): quantum 2^-24, round half to even.
        let q = (a / f32::from_bits(0x3380_0000)).round_ties_even();
        return sign | q as u16;
    }
    let exp = ((x >> 23) & 0xFF) as i32 - 127 + 15;
    let man = x & 0x7F_FFFF;
    let mut h = ((exp as u32) << 10) | (man >> 13);
    let rest = man & 0x1FFF;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 != 0) {
        h += 1;
    }
    sign | h as u16
}

fn next_toward(v: f64, up: bool, f32mode: bool) -> f64 {
    if f32mode {
        let f = v as f32;
        let b = f.to_bits();
        let r = if f == 0.0 {
            if up {
                f32::from_bits(1)
            } else {
                -f32::from_bits(1)
            }
        } else if (f > 0.0) == up {
            f32::from_bits(b + 1)
        } else {
            f32::from_bits(b - 1)
        };
        r as f64
    } else {
        let b = v.to_bits();
        if v == 0.0 {
            if up {
                f64::from_bits(1)
            } else {
                -f64::from_bits(1)
            }
        } else if (v > 0.0) == up {
            f64::from_bits(b + 1)
        } else {
            f64::from_bits(b - 1)
        }
    }
}

/// Rounds `nearest` (the round-to-nearest result for exact value compared by
/// `cmp_exact`: Less if nearest < exact) according to a directed mode.
fn directed(nearest: f64, ord: std::cmp::Ordering, rnd: Rnd, neg: bool, f32mode: bool) -> f64 {
    use std::cmp::Ordering::*;
    match (rnd, ord) {
        (Rnd::Rz | Rnd::Rzi, Greater) if !neg => next_toward(nearest, false, f32mode),
        (Rnd::Rz | Rnd::Rzi, Less) if neg => next_toward(nearest, true, f32mode),
        (Rnd::Rm | Rnd::Rmi, Greater) => next_toward(nearest, false, f32mode),
        (Rnd::Rp | Rnd::Rpi, Less) => next_toward(nearest, true, f32mode),
        _ => nearest,
    }
}

fn store_float(dt: Ty, v: f64) -> u64 {
    match dt {
        Ty::F32 => b32(v as f32),
        Ty::F16 => f32_to_f16(v as f32) as u64,
        Ty::BF16 => f32_to_bf16(v as f32) as u64,
        _ => v.to_bits(),
    }
}

fn round_int(x: f64, rnd: Rnd) -> f64 {
    match rnd {
        Rnd::Rzi | Rnd::Rz => x.trunc(),
        Rnd::Rmi | Rnd::Rm => x.floor(),
        Rnd::Rpi | Rnd::Rp => x.ceil(),
        Rnd::Rni | Rnd::Rn => x.round_ties_even(),
        Rnd::None => x.trunc(),
    }
}

/// `cvt.rnd.sat.dt.st`.
pub(crate) fn cvt(dt: Ty, st: Ty, rnd: Rnd, sat: bool, a: u64) -> u64 {
    let dbits = dt.bits();
    if st.is_float() {
        let x = fget(st, a);
        if dt.is_float() {
            let mut y = if matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi) {
                round_int(x, rnd)
            } else {
                x
            };
            if sat {
                y = if y.is_nan() { 0.0 } else { y.clamp(0.0, 1.0) };
            }
            if dt == Ty::F32 && st == Ty::F64 && !matches!(rnd, Rnd::None | Rnd::Rn) {
                let n = y as f32 as f64;
                if n.is_finite() {
                    let ord = n.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                    return b32(directed(n, ord, rnd, y < 0.0, true) as f32);
                }
            }
            return store_float(dt, y);
        }
        let r = round_int(x, rnd);
        // Signed sub-word results are sign-extended into the register, like loads.
        return match dt {
            Ty::S8 => r as i8 as u64,
            Ty::S16 => r as i16 as u64,
            Ty::S32 => r as i32 as u64,
            Ty::S64 => r as i64 as u64,
            Ty::U8 | Ty::B8 => r as u8 as u64,
            Ty::U16 | Ty::B16 => r as u16 as u64,
            Ty::U32 | Ty::B32 => r as u32 as u64,
            _ => r as u64,
        };
    }
    let sbits = st.bits();
    let v: i128 = if st.is_signed() {
        sext(a, sbits) as i128
    } else {
        (a & mask(sbits)) as i128
    };
    if dt.is_float() {
        let f32mode = dt != Ty::F64;
        let n = if f32mode { v as f32 as f64 } else { v as f64 };
        let back = n as i128;
        let ord = back.cmp(&v);
        let mut y = directed(n, ord, rnd, v < 0, f32mode);
        if sat {
            y = y.clamp(0.0, 1.0);
        }
        return store_float(dt, y);
    }
    let mut w = v;
    if sat {
        let (lo, hi) = if dt.is_signed() {
            (-(1i128 << (dbits - 1)), (1i128 << (dbits - 1)) - 1)
        } else {
            (0, (1i128 << dbits) - 1)
        };
        w = w.clamp(lo, hi);
    }
    let r = (w as u64) & mask(dbits);
    if dt.is_signed() {
        sext(r, dbits) as u64
    } else {
        r
    }
}

/// Two 16-bit lanes of `t` at once.
pub(crate) fn packed(op: PackedOp, t: Ty, a: u64, b: u64, c: u64, cc: &mut u64) -> u64 {
    let mut r = 0u64;
    for s in [0, 16] {
        let (x, y, z) = ((a >> s) & 0xFFFF, (b >> s) & 0xFFFF, (c >> s) & 0xFFFF);
        let v = match op {
            PackedOp::Bin(o) => bin(o, t, x, y, cc),
            PackedOp::Un(o) => un(o, t, x),
            PackedOp::Fma => tern(TernOp::Fma, t, x, y, z, cc),
        };
        r |= (v & 0xFFFF) << s;
    }
    r
}

/// `dp4a` (four byte products) / `dp2a` (two 16x8-bit products) plus `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot(two: bool, hi: bool, sa: bool, sb: bool, a: u64, b: u64, c: u64) -> u64 {
    let ext = |v: u64, bits: u32, signed: bool| {
        if signed {
            sext(v, bits)
        } else {
            (v & mask(bits)) as i64
        }
    };
    let mut acc = c as u32 as i64;
    if two {
        let boff = if hi { 16 } else { 0 };
        for k in 0..2 {
            acc += ext(a >> (16 * k), 16, sa) * ext(b >> (boff + 8 * k), 8, sb);
        }
    } else {
        for k in 0..4 {
            acc += ext(a >> (8 * k), 8, sa) * ext(b >> (8 * k), 8, sb);
        }
    }
    acc as u64 & 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_ops() {
        let mut cc = 0;
        assert_eq!(
            bin(BinOp::MulHi, Ty::S32, (-2i32) as u32 as u64, 3, &mut cc),
            0xFFFF_FFFF
        );
        assert_eq!(
            bin(BinOp::MulWide, Ty::S32, (-2i32) as u32 as u64, 3, &mut cc),
            (-6i64) as u64
        );
        assert_eq!(
            bin(BinOp::Shr, Ty::S32, 0x8000_0000, 40, &mut cc),
            0xFFFF_FFFF
        );
        assert_eq!(
            bin(BinOp::Div, Ty::S32, (-7i32) as u32 as u64, 2, &mut cc),
            (-3i32) as u32 as u64
        );
        let (cin, cout) = (true, true);
        assert_eq!(
            bin(
                BinOp::AddX { cin: false, cout },
                Ty::U32,
                0xFFFF_FFFF,
                1,
                &mut cc
            ),
            0
        );
        assert_eq!(cc, 1);
        assert_eq!(bin(BinOp::AddX { cin, cout }, Ty::U32, 1, 1, &mut cc), 3);
        assert_eq!(cc, 0);
        assert_eq!(
            bin(BinOp::SubX { cin: false, cout }, Ty::U32, 0, 1, &mut cc),
            0xFFFF_FFFF
        );
        assert_eq!(
            bin(BinOp::SubX { cin, cout: false }, Ty::U32, 5, 1, &mut cc),
            3
        );
        let hi = tern(
            TernOp::MadX {
                hi: true,
                cin: false,
                cout,
            },
            Ty::U32,
            0x8000_0000,
            4,
            0xFFFF_FFFF,
            &mut cc,
        );
        assert_eq!((hi, cc), (1, 1));
        assert_eq!(un(UnOp::Clz, Ty::B32, 1), 31);
        assert_eq!(un(UnOp::Brev, Ty::B32, 1), 0x8000_0000);
        assert_eq!(un(UnOp::Bfind, Ty::U32, 0x100), 8);
        assert_eq!(tern(TernOp::Bfe, Ty::S32, 0xF0, 4, 4, &mut cc), 0xFFFF_FFFF);
        assert_eq!(tern(TernOp::Bfe, Ty::U32, 0xF0, 4, 3, &mut cc), 7);
        assert_eq!(bfi(Ty::B32, 0b101, 0xFFFF_0000, 4, 3), 0xFFFF_0050);
        assert_eq!(
            tern(
                TernOp::Prmt(0),
                Ty::B32,
                0x4433_2211,
                0x8877_6655,
                0x3210,
                &mut cc
            ),
            0x4433_2211
        );
        assert_eq!(
            tern(
                TernOp::Prmt(0),
                Ty::B32,
                0x4433_2211,
                0x8877_6655,
                0x7654,
                &mut cc
            ),
            0x8877_6655
        );
        assert_eq!(
            tern(
                TernOp::Prmt(0),
                Ty::B32,
                0x4433_2211,
                0x8877_6655,
                0x000F,
                &mut cc
            ),
            0x1111_11FF
        );
        assert_eq!(tern(TernOp::ShfL, Ty::B32, 0x8000_0000, 1, 1, &mut cc), 3);
    }

    #[test]
    fn conversions() {
        let f = |x: f32| x.to_bits() as u64;
        assert_eq!(cvt(Ty::S32, Ty::F32, Rnd::Rni, false, f(2.5)), 2);
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::Rmi, false, f(-2.5)),
            (-3i64) as u64
        );
        assert_eq!(cvt(Ty::U32, Ty::F32, Rnd::Rzi, false, f(-2.5)), 0);
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::Rzi, false, f(1e20)),
            i32::MAX as u64
        );
        assert_eq!(cvt(Ty::S32, Ty::F32, Rnd::Rzi, false, f(f32::NAN)), 0);
        assert_eq!(
            cvt(Ty::S32, Ty::S8, Rnd::None, false, 0x80) as u32,
            0xFFFF_FF80
        );
        assert_eq!(
            cvt(Ty::U8, Ty::S32, Rnd::None, true, (-5i32) as u32 as u64),
            0
        );
        assert_eq!(cvt(Ty::S8, Ty::S32, Rnd::None, true, 300), 127);
        let x = cvt(Ty::F32, Ty::U32, Rnd::Rz, false, 0xFFFF_FFFF);
        assert_eq!(f32::from_bits(x as u32), 4294967040.0);
        let x = cvt(Ty::F32, Ty::U32, Rnd::Rn, false, 0xFFFF_FFFF);
        assert_eq!(f32::from_bits(x as u32), 4294967296.0);
        let x = cvt(
            Ty::F32,
            Ty::S32,
            Rnd::Rm,
            false,
            (-16777217i32) as u32 as u64,
        );
        assert_eq!(f32::from_bits(x as u32), -16777218.0);
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80); // 1 + 2^-8: tie to even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82); // tie to even (up)
        assert_eq!(bf16_to_f32(0xC040), -3.0);
        let mut cc = 0;
        let p = packed(
            PackedOp::Bin(BinOp::Max),
            Ty::S16,
            0x8000_0005,
            0x0001_0003,
            0,
            &mut cc,
        );
        assert_eq!(p, 0x0001_0005);
        assert_eq!(
            dot(false, false, true, true, 0xFF02_0304, 0x0101_0101, 7),
            7 + 4 + 3 + 2 - 1
        );
        assert_eq!(
            dot(true, true, false, false, 0x0002_0003, 0x0504_0000, 1),
            1 + 3 * 4 + 2 * 5
        );
        for v in [0.0f32, 1.0, -2.5, 65504.0, 1e-5, 6e-8, 0.1] {
            let h = f32_to_f16(v);
            let back = f16_to_f32(h);
            assert!((back - v).abs() <= v.abs() * 1e-3 + 6e-8, "{v} -> {back}");
        }
    }
}
