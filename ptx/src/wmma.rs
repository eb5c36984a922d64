//! `wmma` fragments: where a lane keeps which elements, and the warp-wide
//! multiply-accumulate. The layout is the interpreter's own (PTX leaves it
//! unspecified): slot `s = lane * per_lane + j` of a fragment holds element
//! `s mod elements` of its matrix, row by row.

use crate::ir::{Frag, WmmaEl};
use crate::ops::{bf16_to_f32, f16_to_f32, f32_to_f16};

/// Rows and columns of a fragment's matrix.
pub(crate) fn dims(frag: Frag, [m, n, k]: [u32; 3]) -> (usize, usize) {
    let (m, n, k) = (m as usize, n as usize, k as usize);
    match frag {
        Frag::A => (m, k),
        Frag::B => (k, n),
        Frag::C => (m, n),
    }
}

/// The matrix element slot `j` of `lane` holds, for a fragment of `regs`
/// registers of `el`.
pub(crate) fn element(lane: usize, j: usize, regs: usize, el: WmmaEl, elements: usize) -> usize {
    (lane * regs * el.per_reg() + j) % elements
}

/// Where slot `j` of `lane` sits in an `mma.sync` fragment (row, column), in
/// the layouts the PTX ISA gives: `g` = lane / 4 and `t` = lane % 4, each
/// register holding one tf32 or two 16-bit elements side by side in a row (of
/// A and C) or down a column (of B).
pub(crate) fn mma_position(
    frag: Frag,
    shape: [u32; 3],
    el: WmmaEl,
    lane: usize,
    j: usize,
) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    match (frag, el) {
        // tf32: one element a register.
        (Frag::A, WmmaEl::Tf32) => (g + 8 * (j % 2), t + 4 * (j / 2)),
        (Frag::B, WmmaEl::Tf32) => (t + 4 * j, g),
        // 16-bit inputs: pairs.
        (Frag::A, _) => {
            let pair = j / 2;
            (g + 8 * (pair % 2), 2 * t + j % 2 + 8 * (pair / 2))
        }
        (Frag::B, _) => (2 * t + j % 2 + 8 * (j / 2), g),
        // Accumulators (f32 one a register, f16 two): c0 c1 on row g, c2 c3 on g + 8.
        (Frag::C, _) => {
            let _ = shape;
            (g + 8 * (j / 2), 2 * t + j % 2)
        }
    }
}

/// Element `j` of a lane's registers (`regs[j / per_reg]`, low half first).
pub(crate) fn get(regs: &[u64], j: usize, el: WmmaEl) -> u64 {
    let r = regs[j / el.per_reg()];
    match el.per_reg() {
        2 => (r >> (16 * (j % 2))) & 0xFFFF,
        _ => r & 0xFFFF_FFFF,
    }
}

/// Sets element `j` in a lane's registers.
pub(crate) fn put(regs: &mut [u64], j: usize, el: WmmaEl, v: u64) {
    let r = &mut regs[j / el.per_reg()];
    match el.per_reg() {
        2 => {
            let shift = 16 * (j % 2);
            *r = (*r & !(0xFFFF << shift)) | ((v & 0xFFFF) << shift);
        }
        _ => *r = v & 0xFFFF_FFFF,
    }
}

/// An element's value.
pub(crate) fn value(bits: u64, el: WmmaEl) -> f32 {
    match el {
        WmmaEl::F16 => f16_to_f32(bits as u16),
        WmmaEl::Bf16 => bf16_to_f32(bits as u16),
        // The tensor cores read a tf32 input's top 19 bits.
        WmmaEl::Tf32 => f32::from_bits(bits as u32 & 0xFFFF_E000),
        WmmaEl::F32 => f32::from_bits(bits as u32),
    }
}

/// An accumulator's bits.
pub(crate) fn bits(v: f32, el: WmmaEl) -> u64 {
    match el {
        WmmaEl::F16 => u64::from(f32_to_f16(v)),
        _ => u64::from(v.to_bits()),
    }
}

/// D = A·B + C, each matrix row by row (`a` m×k, `b` k×n, `c` m×n), summed in
/// f32 in order of k.
pub(crate) fn mma(shape: [u32; 3], a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let [m, n, k] = shape.map(|x| x as usize);
    let mut d = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = c[i * n + j];
            for kk in 0..k {
                acc += a[i * k + kk] * b[kk * n + j];
            }
            d[i * n + j] = acc;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_every_element_and_pack_two_halves_a_register() {
        // f16 A of m16n16k16: 8 registers, 16 halves a lane, each element twice.
        let mut seen = vec![0; 256];
        for lane in 0..32 {
            for j in 0..16 {
                seen[element(lane, j, 8, WmmaEl::F16, 256)] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 2));
        let mut regs = [0u64; 2];
        put(&mut regs, 1, WmmaEl::F16, 0xABCD);
        put(&mut regs, 2, WmmaEl::F16, 0x1234);
        assert_eq!(regs, [0xABCD_0000, 0x1234]);
        assert_eq!(get(&regs, 1, WmmaEl::F16), 0xABCD);
        let d = mma(
            [2, 2, 2],
            &[1.0, 2.0, 3.0, 4.0],
            &[5.0, 6.0, 7.0, 8.0],
            &[1.0; 4],
        );
        assert_eq!(d, [20.0, 23.0, 44.0, 51.0]);
    }
}
