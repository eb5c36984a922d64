//! Launch validation, block distribution over OS threads, per-block thread
//! scheduling and the instruction loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::access::Cx;
use crate::ir::*;
use crate::mem::{self, Win, LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW, WINDOW_SIZE};
use crate::ops;
use crate::{ExecError, KernelInfo, Launch, Memory};

/// Maximum shared memory per block (static + dynamic), as on sm_90.
pub(crate) const MAX_SHARED: usize = 227 * 1024;

/// Launch-wide read-only state.
pub(crate) struct Env<'a> {
    pub(crate) prog: &'a Prog,
    pub(crate) mem: &'a dyn Memory,
    pub(crate) params: &'a [u8],
    pub(crate) gsyms: Vec<u64>,
    pub(crate) grid: [u32; 3],
    pub(crate) block: [u32; 3],
    pub(crate) dyn_smem: u32,
    pub(crate) shared_size: usize,
    pub(crate) start: Instant,
    pub(crate) workers: usize,
    /// A cooperative launch's grid-sync workspace (0: none).
    pub(crate) grid_workspace: u64,
    pub(crate) deadline: Option<Instant>,
    /// The scheduler's checkpoint, also reached inside a long block
    /// ([`CHECKPOINT_EVERY`]).
    pub(crate) checkpoint: Option<&'a (dyn Fn() + Sync)>,
}

/// How often a block being run reaches the scheduler's checkpoint between its
/// threads: a `high` tenant's kernel waits about this long for a running one
/// to pause, rather than for its whole block (its threads all run on this
/// worker, so pausing it pauses the block whole).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_micros(200);

impl Env<'_> {
    pub(crate) fn illegal(
        &self,
        addr: u64,
        len: usize,
        space: &'static str,
        line: u32,
    ) -> ExecError {
        ExecError::IllegalAddress {
            addr,
            len,
            space,
            kernel: self.prog.name.clone(),
            line,
        }
    }

    pub(crate) fn sreg(&self, s: Sreg, ctaid: [u32; 3], t: usize) -> u64 {
        let [bx, by, _] = self.block;
        let (bx, by) = (bx as usize, by as usize);
        let lane = (t % 32) as u32;
        let le = ((1u64 << (lane + 1)) - 1) & 0xFFFF_FFFF;
        let lt = (1u64 << lane) - 1;
        match s {
            Sreg::Tid(0) => (t % bx) as u64,
            Sreg::Tid(1) => ((t / bx) % by) as u64,
            Sreg::Tid(_) => (t / (bx * by)) as u64,
            Sreg::Ntid(d) => self.block[d as usize] as u64,
            Sreg::Ctaid(d) => ctaid[d as usize] as u64,
            Sreg::Nctaid(d) => self.grid[d as usize] as u64,
            Sreg::LaneId => lane as u64,
            Sreg::WarpId => (t / 32) as u64,
            Sreg::NWarpId => (bx * by * self.block[2] as usize).div_ceil(32) as u64,
            Sreg::LaneMaskEq => 1 << lane,
            Sreg::LaneMaskLt => lt,
            Sreg::LaneMaskLe => le,
            Sreg::LaneMaskGt => !le & 0xFFFF_FFFF,
            Sreg::LaneMaskGe => !lt & 0xFFFF_FFFF,
            Sreg::Clock => self.start.elapsed().as_nanos() as u64 & 0xFFFF_FFFF,
            Sreg::Clock64 | Sreg::GlobalTimer => self.start.elapsed().as_nanos() as u64,
            Sreg::SmId | Sreg::GridId => 0,
            Sreg::NSmId => self.workers as u64,
            Sreg::DynSmem => self.dyn_smem as u64,
            Sreg::TotalSmem => self.shared_size as u64,
            Sreg::EnvReg(1) => self.grid_workspace >> 32,
            Sreg::EnvReg(2) => self.grid_workspace & 0xFFFF_FFFF,
            Sreg::EnvReg(_) => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum St {
    Run,
    Bar,
    Warp,
    Exit,
}

pub(crate) struct Thread {
    pub(crate) pc: u32,
    pub(crate) st: St,
    stack: Vec<u32>,
}

/// One block's state; reused for every block a worker runs.
pub(crate) struct Block<'a> {
    pub(crate) env: &'a Env<'a>,
    pub(crate) ctaid: [u32; 3],
    pub(crate) nt: usize,
    pub(crate) regs: Vec<u64>,
    local: Vec<u8>,
    pscratch: Vec<u8>,
    shared: Vec<u8>,
    pub(crate) th: Vec<Thread>,
}

fn validate(info: &KernelInfo, prog: &Prog, l: &Launch<'_>) -> Result<usize, ExecError> {
    let bad = |m: String| Err(ExecError::InvalidLaunch(m));
    let [bx, by, bz] = l.block;
    let [gx, gy, gz] = l.grid;
    if l.block.contains(&0) || l.grid.contains(&0) {
        return bad(format!(
            "zero dimension: grid {:?}, block {:?}",
            l.grid, l.block
        ));
    }
    if bx > 1024 || by > 1024 || bz > 64 {
        return bad(format!(
            "block dimensions {:?} exceed (1024, 1024, 64)",
            l.block
        ));
    }
    let nt = bx as u64 * by as u64 * bz as u64;
    if nt > 1024 {
        return bad(format!("{nt} threads per block exceed 1024"));
    }
    if let Some(m) = info.max_threads_per_block {
        if nt > m as u64 {
            return bad(format!(
                "{nt} threads per block exceed the kernel's .maxntid/.reqntid {m}"
            ));
        }
    }
    if gx >= 1 << 31 || gy > 65535 || gz > 65535 {
        return bad(format!("grid dimensions {:?} too large", l.grid));
    }
    let shared = prog.static_shared + l.dynamic_shared_bytes as usize;
    if shared > MAX_SHARED {
        return bad(format!(
            "{shared} bytes of shared memory exceed {MAX_SHARED}"
        ));
    }
    if l.params.len() < info.param_bytes {
        return bad(format!(
            "parameter buffer has {} bytes, kernel needs {}",
            l.params.len(),
            info.param_bytes
        ));
    }
    Ok(nt as usize)
}

/// Validates and runs a launch.
pub(crate) fn run(
    info: &KernelInfo,
    prog: &Prog,
    l: &Launch<'_>,
    mem: &dyn Memory,
) -> Result<(), ExecError> {
    if let Some(why) = &info.unsupported {
        return Err(ExecError::Unsupported(format!(
            "kernel `{}`: {why}",
            info.name
        )));
    }
    let nt = validate(info, prog, l)?;
    let mut gsyms = Vec::with_capacity(prog.gsyms.len());
    for name in &prog.gsyms {
        match (l.symbols)(name) {
            Some(a) => gsyms.push(a),
            None => {
                return Err(ExecError::InvalidLaunch(format!(
                    "device address of module variable `{name}` is unknown"
                )))
            }
        }
    }
    // A kernel whose first instruction ends every thread unconditionally does
    // nothing observable: no thread needs to run.
    if matches!(
        prog.code.first(),
        Some(Instr {
            guard: None,
            inst: Inst::Ret | Inst::Exit,
            ..
        })
    ) {
        return Ok(());
    }
    let shared_size = if l.dynamic_shared_bytes > 0 {
        prog.dyn_shared_base + l.dynamic_shared_bytes as usize
    } else {
        prog.static_shared
    };
    let nblocks = l.grid.iter().map(|&g| g as u64).product::<u64>();
    // A cooperative grid runs all its blocks at once (the caller bounds it).
    let workers = if l.grid_workspace != 0 {
        nblocks as usize
    } else {
        (l.workers.max(1) as u64).min(nblocks) as usize
    };
    let env = Env {
        prog,
        mem,
        params: l.params,
        gsyms,
        grid: l.grid,
        block: l.block,
        dyn_smem: l.dynamic_shared_bytes,
        shared_size,
        start: Instant::now(),
        workers,
        grid_workspace: l.grid_workspace,
        deadline: l.deadline,
        checkpoint: l.between_blocks,
    };
    let next = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let first_err: Mutex<Option<(u64, ExecError)>> = Mutex::new(None);
    let work = || {
        let mut b = Block::new(&env, nt);
        loop {
            if abort.load(Ordering::Relaxed) {
                break;
            }
            if let Some(checkpoint) = l.between_blocks {
                checkpoint();
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= nblocks {
                break;
            }
            let gx = l.grid[0] as u64;
            let gy = l.grid[1] as u64;
            let ctaid = [
                (i % gx) as u32,
                ((i / gx) % gy) as u32,
                (i / (gx * gy)) as u32,
            ];
            if let Err(e) = b.run(ctaid) {
                abort.store(true, Ordering::Relaxed);
                let mut g = first_err.lock().unwrap_or_else(|p| p.into_inner());
                if g.as_ref().is_none_or(|(j, _)| i < *j) {
                    *g = Some((i, e));
                }
                break;
            }
        }
    };
    if workers <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(work);
            }
        });
    }
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

fn boolop(op: BoolOp, a: bool, b: bool) -> bool {
    match op {
        BoolOp::And => a && b,
        BoolOp::Or => a || b,
        BoolOp::Xor => a ^ b,
    }
}

/// Where a surface access of `n` values of `size` bytes goes (`None`: outside
/// the surface in zero mode), or the fault.
#[allow(clippy::too_many_arguments)]
fn surface_at(
    cx: &Cx<'_>,
    surf: Op,
    c: &[Op; 3],
    layer: Op,
    size: usize,
    n: u8,
    geom: crate::tex::Geom,
    mode: crate::tex::Boundary,
    line: u32,
) -> Result<Option<u64>, ExecError> {
    let handle = cx.v(surf);
    let len = size * usize::from(n);
    let coords = [cx.v(c[0]), cx.v(c[1]), cx.v(c[2])];
    let layer = cx.v(layer) as u32;
    crate::tex::surface_address(cx.env.mem, handle, coords, layer, len as u64, geom, mode)
        .map_err(|()| cx.env.illegal(coords[0], len, "surface", line))
}

/// Loop iterations a thread runs before yielding to the other threads of its block.
const YIELD_AFTER_BACK_EDGES: u32 = 1 << 14;

/// Runs one thread until it exits, blocks on a barrier / warp operation, or
/// yields after many loop iterations (then it stays runnable).
fn exec(cx: &mut Cx<'_>, th: &mut Thread) -> Result<(), ExecError> {
    let code = &cx.env.prog.code[..];
    let mut pc = th.pc as usize;
    let mut budget = YIELD_AFTER_BACK_EDGES;
    loop {
        let ins = &code[pc];
        if let Some((p, neg)) = ins.guard {
            if (cx.regs[p as usize] & 1 != 0) == neg {
                pc += 1;
                continue;
            }
        }
        match &ins.inst {
            &Inst::Mov { d, a } => {
                let v = cx.v(a);
                cx.set(d, v);
            }
            &Inst::Bin { op, t, d, a, b } => {
                let (x, y) = (cx.v(a), cx.v(b));
                let r = ops::bin(op, t, x, y, &mut cx.regs[CC_REG as usize]);
                cx.set(d, r);
            }
            &Inst::Un { op, t, d, a } => {
                let r = ops::un(op, t, cx.v(a));
                cx.set(d, r);
            }
            &Inst::Tern { op, t, d, a, b, c } => {
                let (x, y, z) = (cx.v(a), cx.v(b), cx.v(c));
                let r = ops::tern(op, t, x, y, z, &mut cx.regs[CC_REG as usize]);
                cx.set(d, r);
            }
            &Inst::Bfi { t, d, a, b, c, e } => {
                let r = ops::bfi(t, cx.v(a), cx.v(b), cx.v(c), cx.v(e));
                cx.set(d, r);
            }
            &Inst::Setp {
                cmp,
                t,
                d,
                d2,
                a,
                b,
                comb,
            } => {
                let mut r = ops::compare(cmp, t, cx.v(a), cx.v(b));
                let mut r2 = !r;
                if let Some((op, p, neg)) = comb {
                    let q = (cx.v(p) & 1 != 0) != neg;
                    r = boolop(op, r, q);
                    r2 = boolop(op, r2, q);
                }
                cx.set(d, r as u64);
                cx.set(d2, r2 as u64);
            }
            &Inst::Set {
                cmp,
                dt,
                t,
                d,
                a,
                b,
                comb,
            } => {
                let mut r = ops::compare(cmp, t, cx.v(a), cx.v(b));
                if let Some((op, p, neg)) = comb {
                    r = boolop(op, r, (cx.v(p) & 1 != 0) != neg);
                }
                let v = match (dt, r) {
                    (Ty::F32, true) => 1.0f32.to_bits() as u64,
                    (_, true) => ops::mask(dt.bits()),
                    (_, false) => 0,
                };
                cx.set(d, v);
            }
            &Inst::PredBin { op, d, a, b } => {
                let r = boolop(op, cx.v(a) & 1 != 0, cx.v(b) & 1 != 0);
                cx.set(d, r as u64);
            }
            &Inst::TestP { op, t, d, a } => {
                let r = ops::testp(op, t, cx.v(a));
                cx.set(d, r as u64);
            }
            &Inst::Cvt {
                dt,
                st,
                rnd,
                sat,
                d,
                a,
            } => {
                let r = ops::cvt(dt, st, rnd, sat, cx.v(a));
                cx.set(d, r);
            }
            &Inst::Cvta { to, sp, d, a } => {
                let v = cx.v(a);
                let win = match sp {
                    MSp::Shared => SHARED_WINDOW,
                    MSp::Local => LOCAL_WINDOW,
                    MSp::KParam | MSp::FParam => PARAM_WINDOW,
                    MSp::Global | MSp::Generic => 0,
                };
                let r = match (to, win) {
                    (_, 0) => v,
                    (true, w) => v.wrapping_sub(w),
                    (false, w) => w + (v & (WINDOW_SIZE - 1)),
                };
                cx.set(d, r);
            }
            &Inst::IsSpace { sp, d, a } => {
                let w = mem::window(cx.v(a));
                let r = matches!(
                    (sp, w),
                    (MSp::Global, Win::Device)
                        | (MSp::Shared, Win::Shared(_))
                        | (MSp::Local, Win::Local(_))
                        | (MSp::KParam, Win::Param(_))
                );
                cx.set(d, r as u64);
            }
            Inst::Tex {
                geom,
                int_coords,
                gather,
                d,
                tex,
                c,
                layer,
            } => {
                let handle = cx.v(*tex);
                let coords = [cx.v(c[0]), cx.v(c[1]), cx.v(c[2])];
                let layer = cx.v(*layer) as u32;
                let out = crate::tex::sample(
                    cx.env.mem,
                    handle,
                    *geom,
                    coords,
                    layer,
                    *int_coords,
                    *gather,
                )
                .ok_or_else(|| cx.env.illegal(handle, 0, "texture object", ins.line))?;
                for k in 0..4 {
                    cx.set(d[k], u64::from(out[k]));
                }
            }
            Inst::Suld {
                geom,
                t,
                n,
                mode,
                d,
                surf,
                c,
                layer,
            } => {
                let size = t.bytes();
                let at = surface_at(cx, *surf, c, *layer, size, *n, *geom, *mode, ins.line)?;
                for (k, &dk) in d.iter().enumerate().take(usize::from(*n)) {
                    let v = match at {
                        Some(a) => {
                            let a = a + (k * size) as u64;
                            cx.read_at(MSp::Global, a, size, "surface", ins.line)?
                        }
                        None => 0,
                    };
                    cx.set(dk, v);
                }
            }
            Inst::Sust {
                geom,
                t,
                n,
                mode,
                s,
                surf,
                c,
                layer,
            } => {
                let size = t.bytes();
                let at = surface_at(cx, *surf, c, *layer, size, *n, *geom, *mode, ins.line)?;
                if let Some(a) = at {
                    for (k, &sk) in s.iter().enumerate().take(usize::from(*n)) {
                        let v = cx.v(sk);
                        let a = a + (k * size) as u64;
                        cx.write_at(MSp::Global, a, size, v, "surface", ins.line)?;
                    }
                }
            }
            Inst::WmmaLoad {
                frag,
                shape,
                el,
                row,
                sp,
                addr,
                stride,
                d,
            } => {
                let base = cx.v(addr.base).wrapping_add(addr.off as u64);
                let stride = cx.v(*stride) & 0xFFFF_FFFF;
                let (rows, cols) = crate::wmma::dims(*frag, *shape);
                let lane = cx.t % 32;
                let mut regs = vec![0u64; d.len()];
                for j in 0..d.len() * el.per_reg() {
                    let e = crate::wmma::element(lane, j, d.len(), *el, rows * cols);
                    let (r, c) = ((e / cols) as u64, (e % cols) as u64);
                    let index = if *row { r * stride + c } else { c * stride + r };
                    let a = base.wrapping_add(index * el.bytes() as u64);
                    let v = cx.read_at(*sp, a, el.bytes(), "global", ins.line)?;
                    crate::wmma::put(&mut regs, j, *el, v);
                }
                for (&dk, &v) in d.iter().zip(&regs) {
                    cx.set(dk, v);
                }
            }
            Inst::WmmaStore {
                shape,
                el,
                row,
                sp,
                addr,
                stride,
                s,
            } => {
                let base = cx.v(addr.base).wrapping_add(addr.off as u64);
                let stride = cx.v(*stride) & 0xFFFF_FFFF;
                let (rows, cols) = crate::wmma::dims(Frag::C, *shape);
                let lane = cx.t % 32;
                let regs: Vec<u64> = s.iter().map(|&o| cx.v(o)).collect();
                // Each element once: the slots past the matrix repeat it.
                for j in 0..(s.len() * el.per_reg()).min(rows * cols) {
                    let e = crate::wmma::element(lane, j, s.len(), *el, rows * cols);
                    if lane * s.len() * el.per_reg() + j >= rows * cols {
                        break;
                    }
                    let (r, c) = ((e / cols) as u64, (e % cols) as u64);
                    let index = if *row { r * stride + c } else { c * stride + r };
                    let a = base.wrapping_add(index * el.bytes() as u64);
                    let v = crate::wmma::get(&regs, j, *el);
                    cx.write_at(*sp, a, el.bytes(), v, "global", ins.line)?;
                }
            }
            Inst::Ld { sp, t, n, d, addr } => {
                let a = cx.v(addr.base).wrapping_add(addr.off as u64);
                cx.load(*sp, *t, *n, d, a, ins.line)?;
            }
            Inst::St { sp, t, n, s, addr } => {
                let a = cx.v(addr.base).wrapping_add(addr.off as u64);
                cx.store(*sp, *t, *n, s, a, ins.line)?;
            }
            &Inst::Atom {
                sp,
                op,
                t,
                d,
                addr,
                b,
                c,
            } => {
                let a = cx.v(addr.base).wrapping_add(addr.off as u64);
                let (b, c) = (cx.v(b), cx.v(c));
                let old = cx.atom(sp, op, t, a, b, c, ins.line)?;
                cx.set(d, mem::extend(t, old));
            }
            Inst::Pack { ebits, d, s } => {
                let m = ops::mask(*ebits);
                let mut r = 0u64;
                for (k, &o) in s.iter().enumerate() {
                    r |= (cx.v(o) & m) << (k as u32 * ebits);
                }
                cx.set(*d, r);
            }
            Inst::Unpack { ebits, d, a } => {
                let v = cx.v(*a);
                let m = ops::mask(*ebits);
                for (k, &dk) in d.iter().enumerate() {
                    cx.set(dk, (v >> (k as u32 * ebits)) & m);
                }
            }
            &Inst::Bra { tgt } => {
                if (tgt as usize) <= pc {
                    // Loop back-edge: let other threads run now and then, so a
                    // thread spinning on a flag another thread sets cannot hang.
                    budget -= 1;
                    if budget == 0 {
                        th.pc = tgt;
                        // In a cooperative grid, a block spinning at the grid's
                        // barrier gives its core to the blocks it waits for.
                        if cx.env.grid_workspace != 0 {
                            std::thread::yield_now();
                        }
                        return Ok(());
                    }
                }
                pc = tgt as usize;
                continue;
            }
            Inst::Call { tgt, args, .. } => {
                cx.param_moves(args);
                th.stack.push(pc as u32);
                pc = *tgt as usize;
                continue;
            }
            Inst::CallIndirect { pointer, cases } => {
                let value = cx.v(*pointer);
                let case = (value & !0xFFFF_FFFF == crate::FUNCTION_ADDRESS_TAG)
                    .then(|| {
                        cases
                            .iter()
                            .position(|c| u64::from(c.function) == value & 0xFFFF_FFFF)
                    })
                    .flatten()
                    .ok_or_else(|| cx.env.illegal(value, 0, "function pointer", ins.line))?;
                cx.param_moves(&cases[case].args);
                // The case under the return address, for the results' moves.
                th.stack.push(case as u32);
                th.stack.push(pc as u32);
                pc = cases[case].tgt as usize;
                continue;
            }
            Inst::Ret => match th.stack.pop() {
                Some(cpc) => {
                    match &code[cpc as usize].inst {
                        Inst::Call { rets, .. } => cx.param_moves(rets),
                        Inst::CallIndirect { cases, .. } => {
                            let case = th.stack.pop().unwrap_or(0) as usize;
                            if let Some(c) = cases.get(case) {
                                cx.param_moves(&c.rets);
                            }
                        }
                        _ => {}
                    }
                    pc = cpc as usize + 1;
                    continue;
                }
                None => {
                    th.st = St::Exit;
                    return Ok(());
                }
            },
            Inst::Exit => {
                th.st = St::Exit;
                return Ok(());
            }
            Inst::Trap => return Err(ExecError::Trap),
            Inst::Nop => {}
            Inst::Bar { arrive: true, .. } => {}
            Inst::Bar { .. } | Inst::BarRed { .. } => {
                th.pc = pc as u32;
                th.st = St::Bar;
                return Ok(());
            }
            Inst::Shfl { .. }
            | Inst::Vote { .. }
            | Inst::Activemask { .. }
            | Inst::WarpSync { .. }
            | Inst::Redux { .. }
            | Inst::MatchAny { .. }
            | Inst::MatchAll { .. }
            | Inst::WmmaMma { .. } => {
                th.pc = pc as u32;
                th.st = St::Warp;
                return Ok(());
            }
            &Inst::Packed { op, t, d, a, b, c } => {
                let (x, y, z) = (cx.v(a), cx.v(b), cx.v(c));
                let r = ops::packed(op, t, x, y, z, &mut cx.regs[CC_REG as usize]);
                cx.set(d, r);
            }
            &Inst::CvtX2 {
                dt,
                st,
                rnd,
                d,
                a,
                b,
            } => {
                let hi = ops::cvt(dt, st, rnd, false, cx.v(a)) & 0xFFFF;
                let lo = ops::cvt(dt, st, rnd, false, cx.v(b)) & 0xFFFF;
                cx.set(d, hi << 16 | lo);
            }
            &Inst::Dp {
                two,
                hi,
                sa,
                sb,
                d,
                a,
                b,
                c,
            } => {
                let r = ops::dot(two, hi, sa, sb, cx.v(a), cx.v(b), cx.v(c));
                cx.set(d, r);
            }
            Inst::Builtin { which, params, ret } => cx.builtin(*which, params, *ret)?,
            Inst::CpAsync {
                dst,
                src,
                size,
                src_size,
            } => {
                let d = cx.v(dst.base).wrapping_add(dst.off as u64);
                let a = cx.v(src.base).wrapping_add(src.off as u64);
                let n = src_size
                    .map_or(*size as u64, |o| cx.v(o) & 0xFFFF_FFFF)
                    .min(*size as u64);
                cx.cp_async(d, a, *size as usize, n as usize, ins.line)?;
            }
            Inst::Unsupported => {
                return Err(ExecError::Unsupported(format!(
                    "instruction at PTX line {} of `{}`",
                    ins.line, cx.env.prog.name
                )))
            }
        }
        pc += 1;
    }
}

impl<'a> Block<'a> {
    fn new(env: &'a Env<'a>, nt: usize) -> Self {
        let p = env.prog;
        Block {
            env,
            ctaid: [0; 3],
            nt,
            regs: vec![0; nt * p.nregs],
            local: vec![0; nt * p.local_bytes],
            pscratch: vec![0; nt * p.pscratch_bytes],
            shared: vec![0; env.shared_size],
            th: (0..nt)
                .map(|_| Thread {
                    pc: 0,
                    st: St::Run,
                    stack: Vec::new(),
                })
                .collect(),
        }
    }

    /// Value of operand `o` for thread `t` (outside the instruction loop).
    pub(crate) fn opv(&self, t: usize, o: Op) -> u64 {
        match o {
            Op::R(r) => self.regs[t * self.env.prog.nregs + r as usize],
            Op::I(i) => i,
            Op::S(s) => self.env.sreg(s, self.ctaid, t),
            Op::G(g) => self.env.gsyms[g as usize],
        }
    }

    pub(crate) fn set_reg(&mut self, t: usize, r: u32, v: u64) {
        let n = self.env.prog.nregs;
        self.regs[t * n + r as usize] = v;
    }

    fn run_thread(&mut self, t: usize) -> Result<(), ExecError> {
        let p = self.env.prog;
        let (nr, lb, pb) = (p.nregs, p.local_bytes, p.pscratch_bytes);
        let mut cx = Cx {
            env: self.env,
            regs: &mut self.regs[t * nr..(t + 1) * nr],
            local: &mut self.local[t * lb..(t + 1) * lb],
            ps: &mut self.pscratch[t * pb..(t + 1) * pb],
            shared: &mut self.shared,
            ctaid: self.ctaid,
            t,
        };
        exec(&mut cx, &mut self.th[t])
    }

    fn run(&mut self, ctaid: [u32; 3]) -> Result<(), ExecError> {
        self.ctaid = ctaid;
        self.regs.fill(0);
        self.local.fill(0);
        self.pscratch.fill(0);
        self.shared.fill(0);
        for th in &mut self.th {
            th.pc = 0;
            th.st = St::Run;
            th.stack.clear();
        }
        let mut checked = Instant::now();
        loop {
            for t in 0..self.nt {
                if self.th[t].st == St::Run {
                    self.run_thread(t)?;
                    if let Some(checkpoint) = self.env.checkpoint {
                        if checked.elapsed() >= CHECKPOINT_EVERY {
                            checkpoint();
                            checked = Instant::now();
                        }
                    }
                }
            }
            if self.th.iter().all(|t| t.st == St::Exit) {
                return Ok(());
            }
            if self.env.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ExecError::TimedOut(self.env.prog.name.clone()));
            }
            let runnable = self.th.iter().any(|t| t.st == St::Run);
            let released = self.resolve_warps(false)? | self.resolve_barriers();
            if runnable || released || self.resolve_warps(true)? {
                continue;
            }
            return Err(ExecError::Deadlock(format!(
                "block {:?} of `{}`: threads wait at barriers that can never be released",
                self.ctaid, self.env.prog.name
            )));
        }
    }

    /// Releases barriers whose arrival condition holds.
    fn resolve_barriers(&mut self) -> bool {
        let code = &self.env.prog.code;
        let live = self.th.iter().filter(|t| t.st != St::Exit).count();
        let mut ids: Vec<(u64, Vec<usize>, Option<u64>)> = Vec::new();
        for t in 0..self.nt {
            if self.th[t].st != St::Bar {
                continue;
            }
            let (id, count) = match &code[self.th[t].pc as usize].inst {
                Inst::Bar { id, count, .. } => (self.opv(t, *id), count.map(|c| self.opv(t, c))),
                Inst::BarRed { id, .. } => (self.opv(t, *id), None),
                _ => (0, None),
            };
            match ids.iter_mut().find(|e| e.0 == id) {
                Some(e) => e.1.push(t),
                None => ids.push((id, vec![t], count)),
            }
        }
        let mut released = false;
        for (_, waiting, count) in ids {
            let needed = count.map_or(live, |c| c as usize).min(live);
            if waiting.len() < needed {
                continue;
            }
            released = true;
            // bar.red: reduce the predicates of all participants.
            let red = match &code[self.th[waiting[0]].pc as usize].inst {
                Inst::BarRed { op, p, neg, .. } => {
                    let vals: Vec<bool> = waiting
                        .iter()
                        .map(|&t| (self.opv(t, *p) & 1 != 0) != *neg)
                        .collect();
                    Some(match op {
                        ReduxOp::Add => vals.iter().filter(|&&v| v).count() as u64,
                        ReduxOp::And => vals.iter().all(|&v| v) as u64,
                        _ => vals.iter().any(|&v| v) as u64,
                    })
                }
                _ => None,
            };
            for &t in &waiting {
                if let (Some(r), Inst::BarRed { d, .. }) = (red, &code[self.th[t].pc as usize].inst)
                {
                    self.set_reg(t, *d, r);
                }
                self.th[t].pc += 1;
                self.th[t].st = St::Run;
            }
        }
        released
    }
}
