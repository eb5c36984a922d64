//! Warp-synchronous instructions (`shfl.sync`, `vote.sync`, `activemask`,
//! `redux.sync`, `match.sync`, `bar.warp.sync`), executed for a whole group of
//! lanes once they have all arrived.

use crate::exec::{Block, St};
use crate::ir::*;
use crate::ops::{mask, sext};

impl Block<'_> {
    /// Executes every warp operation whose participants have all arrived.
    /// With `force`, runs waiting groups even if lanes named in the member
    /// mask are elsewhere (they are treated as inactive), to avoid deadlock.
    pub(crate) fn resolve_warps(&mut self, force: bool) -> Result<bool, crate::ExecError> {
        if !self.env.prog.uses_warp_ops {
            return Ok(false);
        }
        let mut progressed = false;
        for lo in (0..self.nt).step_by(32) {
            let hi = (lo + 32).min(self.nt);
            let mut live = 0u32;
            let mut pcs: Vec<(u32, u32)> = Vec::new();
            for t in lo..hi {
                let bit = 1u32 << (t - lo);
                match self.th[t].st {
                    St::Exit => continue,
                    St::Warp => {
                        let pc = self.th[t].pc;
                        match pcs.iter_mut().find(|e| e.0 == pc) {
                            Some(e) => e.1 |= bit,
                            None => pcs.push((pc, bit)),
                        }
                    }
                    _ => {}
                }
                live |= bit;
            }
            for (pc, arrived) in pcs {
                // The lanes at one instruction form one operation per member
                // mask: lanes naming different masks (`0x55555555` on even
                // lanes, `0xaaaaaaaa` on odd ones) are different operations.
                let inst = &self.env.prog.code[pc as usize].inst;
                let mask_operand = match inst {
                    Inst::Shfl { mask, .. }
                    | Inst::Vote { mask, .. }
                    | Inst::WarpSync { mask }
                    | Inst::Redux { mask, .. }
                    | Inst::MatchAny { mask, .. }
                    | Inst::MatchAll { mask, .. } => Some(*mask),
                    _ => None,
                };
                let mut operations: Vec<(u32, u32)> = Vec::new(); // (required, lanes)
                for l in 0..hi - lo {
                    if arrived & (1 << l) == 0 {
                        continue;
                    }
                    let required = match mask_operand {
                        Some(m) => self.opv(lo + l, m) as u32 & live,
                        None => arrived,
                    };
                    match operations.iter_mut().find(|o| o.0 == required) {
                        Some(o) => o.1 |= 1 << l,
                        None => operations.push((required, 1 << l)),
                    }
                }
                for (required, group) in operations {
                    if !force && required & !group != 0 {
                        continue;
                    }
                    self.warp_op(pc, lo, hi, group);
                    for t in lo..hi {
                        if group & (1 << (t - lo)) != 0 {
                            self.th[t].pc += 1;
                            self.th[t].st = St::Run;
                        }
                    }
                    progressed = true;
                    if force {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(progressed)
    }

    fn warp_op(&mut self, pc: u32, lo: usize, hi: usize, group: u32) {
        let env = self.env;
        let inst = &env.prog.code[pc as usize].inst;
        let lanes: Vec<usize> = (0..hi - lo).filter(|l| group & (1 << l) != 0).collect();
        let n = hi - lo;
        match *inst {
            Inst::Shfl {
                mode,
                d,
                p,
                a,
                b,
                c,
                ..
            } => {
                let vals: Vec<u64> = (0..n).map(|l| self.opv(lo + l, a) & 0xFFFF_FFFF).collect();
                for &l in &lanes {
                    let t = lo + l;
                    let bv = self.opv(t, b) as u32;
                    let cv = self.opv(t, c) as u32;
                    let clamp = cv & 0x1F;
                    let seg = (cv >> 8) & 0x1F;
                    let lane = l as u32;
                    let max_lane = (lane & seg) | (clamp & !seg);
                    let min_lane = lane & seg;
                    let (j, ok) = match mode {
                        ShflMode::Up => {
                            let j = lane as i64 - bv as i64;
                            (j, j >= min_lane as i64)
                        }
                        ShflMode::Down => {
                            let j = lane as i64 + bv as i64;
                            (j, j <= max_lane as i64)
                        }
                        ShflMode::Bfly => {
                            let j = (lane ^ bv) as i64;
                            (j, j <= max_lane as i64)
                        }
                        ShflMode::Idx => {
                            let j = (min_lane | (bv & 0x1F & !seg)) as i64;
                            (j, j <= max_lane as i64)
                        }
                    };
                    let src = if ok && (0..n as i64).contains(&j) {
                        j as usize
                    } else {
                        l
                    };
                    self.set_reg(t, d, vals[src]);
                    self.set_reg(t, p, ok as u64);
                }
            }
            Inst::Vote {
                mode, d, a, neg, ..
            } => {
                let mut ballot = 0u32;
                for &l in &lanes {
                    if (self.opv(lo + l, a) & 1 != 0) != neg {
                        ballot |= 1 << l;
                    }
                }
                let r = match mode {
                    VoteMode::Ballot => ballot as u64,
                    VoteMode::All => (ballot == group) as u64,
                    VoteMode::Any => (ballot != 0) as u64,
                    VoteMode::Uni => (ballot == group || ballot == 0) as u64,
                };
                for &l in &lanes {
                    self.set_reg(lo + l, d, r);
                }
            }
            Inst::WmmaMma {
                mma_sync,
                shape,
                ab,
                c_el,
                d_el,
                ref d,
                ref a,
                ref b,
                ref c,
            } => {
                use crate::wmma;
                // Each element from the (first) slot holding it.
                let gather = |me: &Self, regs: &[Op], el: WmmaEl, frag: Frag| -> Vec<f32> {
                    let (rows, cols) = wmma::dims(frag, shape);
                    let per_lane = regs.len() * el.per_reg();
                    let mut out = vec![0f32; rows * cols];
                    if mma_sync {
                        for lane in 0..n.min(32) {
                            let vals: Vec<u64> =
                                regs.iter().map(|&o| me.opv(lo + lane, o)).collect();
                            for j in 0..per_lane {
                                let (r, col) = wmma::mma_position(frag, shape, el, lane, j);
                                out[r * cols + col] = wmma::value(wmma::get(&vals, j, el), el);
                            }
                        }
                        return out;
                    }
                    for (e, slot) in out.iter_mut().enumerate() {
                        let (lane, j) = (e / per_lane, e % per_lane);
                        let vals: Vec<u64> = regs
                            .iter()
                            .map(|&o| me.opv(lo + lane.min(n - 1), o))
                            .collect();
                        *slot = wmma::value(wmma::get(&vals, j, el), el);
                    }
                    out
                };
                let am = gather(self, a, ab, Frag::A);
                let bm = gather(self, b, ab, Frag::B);
                let cm = gather(self, c, c_el, Frag::C);
                let dm = wmma::mma(shape, &am, &bm, &cm);
                let per_lane = d.len() * d_el.per_reg();
                let cols = wmma::dims(Frag::C, shape).1;
                for &l in &lanes {
                    let mut regs = vec![0u64; d.len()];
                    for j in 0..per_lane {
                        let e = if mma_sync {
                            let (r, col) = wmma::mma_position(Frag::C, shape, d_el, l, j);
                            r * cols + col
                        } else {
                            wmma::element(l, j, d.len(), d_el, dm.len())
                        };
                        wmma::put(&mut regs, j, d_el, wmma::bits(dm[e], d_el));
                    }
                    for (&dk, &v) in d.iter().zip(&regs) {
                        self.set_reg(lo + l, dk, v);
                    }
                }
            }
            Inst::Activemask { d } => {
                for &l in &lanes {
                    self.set_reg(lo + l, d, group as u64);
                }
            }
            Inst::Redux { op, t, d, a, .. } => {
                let bits = t.bits();
                let vals: Vec<u64> = lanes
                    .iter()
                    .map(|&l| self.opv(lo + l, a) & mask(bits))
                    .collect();
                let signed = t.is_signed();
                let r = vals.iter().copied().reduce(|x, y| match op {
                    ReduxOp::Add => x.wrapping_add(y) & mask(bits),
                    ReduxOp::And => x & y,
                    ReduxOp::Or => x | y,
                    ReduxOp::Xor => x ^ y,
                    ReduxOp::Min if signed => {
                        if sext(x, bits) <= sext(y, bits) {
                            x
                        } else {
                            y
                        }
                    }
                    ReduxOp::Max if signed => {
                        if sext(x, bits) >= sext(y, bits) {
                            x
                        } else {
                            y
                        }
                    }
                    ReduxOp::Min => x.min(y),
                    ReduxOp::Max => x.max(y),
                });
                for &l in &lanes {
                    self.set_reg(lo + l, d, r.unwrap_or(0));
                }
            }
            Inst::MatchAny { t, d, a, .. } => {
                let m = mask(t.bits());
                let vals: Vec<u64> = lanes.iter().map(|&l| self.opv(lo + l, a) & m).collect();
                for (i, &l) in lanes.iter().enumerate() {
                    let same = lanes
                        .iter()
                        .zip(&vals)
                        .filter(|(_, &v)| v == vals[i])
                        .fold(0u64, |acc, (&k, _)| acc | (1 << k));
                    self.set_reg(lo + l, d, same);
                }
            }
            Inst::MatchAll { t, d, p, a, .. } => {
                let m = mask(t.bits());
                let vals: Vec<u64> = lanes.iter().map(|&l| self.opv(lo + l, a) & m).collect();
                let all = vals.windows(2).all(|w| w[0] == w[1]);
                for &l in &lanes {
                    self.set_reg(lo + l, d, if all { group as u64 } else { 0 });
                    self.set_reg(lo + l, p, all as u64);
                }
            }
            _ => {}
        }
    }
}
