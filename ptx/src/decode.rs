//! Per-function decoding: turns a function's statements into [`Instr`]s.
//! Registers become slot indices, symbols become offsets or module-variable
//! indices, labels become program counters (opcodes are in `insts.rs`).

use std::collections::HashMap;

use crate::ir::*;
use crate::link::{align_up, Formal, Layout, LinkState, Linker};
use crate::mem::{LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW};
use crate::parser::{Imm, Operand, PFunc, PInst, PVar, Stmt, VSpace};

/// Converts an immediate to the bit pattern of type `t`.
pub(crate) fn imm_bits(imm: Imm, t: Ty) -> u64 {
    match (imm, t) {
        (Imm::Int(v), Ty::F32) => (v as i64 as f32).to_bits() as u64,
        (Imm::Int(v), Ty::F64) => (v as i64 as f64).to_bits(),
        (Imm::Int(v), _) => v,
        (Imm::F32(b), Ty::F64) => (f32::from_bits(b) as f64).to_bits(),
        (Imm::F32(b), _) => b as u64,
        (Imm::F64(b), Ty::F32) => (f64::from_bits(b) as f32).to_bits() as u64,
        (Imm::F64(b), _) => b,
        (Imm::Dec(f), Ty::F32) => (f as f32).to_bits() as u64,
        (Imm::Dec(f), Ty::F64) => f.to_bits(),
        (Imm::Dec(f), _) => f as i64 as u64,
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Sym {
    Reg(u32),
    Range(u32, u32),
    Local(u32),
    Shared(u32),
    FParam(u32),
    KParam(u32),
}

pub(crate) struct FnDecoder<'x, 'm, 'a> {
    pub(crate) l: &'x Linker<'m, 'a>,
    pub(crate) layout: &'x Layout<'a>,
    pub(crate) st: &'x mut LinkState,
    pub(crate) fidx: usize,
    pub(crate) func: &'m PFunc<'a>,
    pub(crate) scopes: Vec<HashMap<&'a str, Sym>>,
    pub(crate) labels: HashMap<&'a str, u32>,
    pub(crate) fixups: Vec<(usize, &'a str, u32)>,
}

pub(crate) type DResult<T> = Result<T, String>;

impl<'x, 'm, 'a> FnDecoder<'x, 'm, 'a> {
    pub(crate) fn run(&mut self) {
        let func = self.func;
        let entry = func.entry;
        // Formal parameters.
        if entry {
            let mut end = 0usize;
            for p in &func.params {
                let off = align_up(end, p.align);
                self.scopes[0].insert(p.name, Sym::KParam(off as u32));
                end = off + p.size();
            }
        } else {
            let fo = self.layout.formals[&self.fidx].clone();
            for (p, f) in func
                .params
                .iter()
                .zip(&fo.params)
                .chain(func.rets.iter().zip(&fo.rets))
            {
                let sym = match *f {
                    Formal::Scratch(off, _) => Sym::FParam(off),
                    Formal::Reg(r) => Sym::Reg(r),
                };
                self.scopes[0].insert(p.name, sym);
            }
        }
        for s in func.body.iter().flatten() {
            match s {
                Stmt::Open => self.scopes.push(HashMap::new()),
                Stmt::Close => {
                    if self.scopes.len() > 1 {
                        self.scopes.pop();
                    }
                }
                Stmt::Label(l) => {
                    self.labels.insert(l, self.st.code.len() as u32);
                }
                Stmt::Reg { name, count, .. } => {
                    let n = count.unwrap_or(1);
                    let base = self.st.next_reg;
                    self.st.next_reg += n;
                    let sym = if count.is_some() {
                        Sym::Range(base, n)
                    } else {
                        Sym::Reg(base)
                    };
                    self.scopes.last_mut().unwrap().insert(name, sym);
                }
                Stmt::Var(v) => self.declare(v),
                Stmt::Inst(i) => {
                    let before = self.st.code.len();
                    if let Err(e) = self.inst(i) {
                        self.st.code.truncate(before);
                        if self.st.unsupported.is_none() {
                            let fname = if entry {
                                String::new()
                            } else {
                                format!(" in function `{}`", func.name)
                            };
                            self.st.unsupported = Some(format!(
                                "instruction {} at line {}{fname}: {e}",
                                i.opcode, i.line
                            ));
                        }
                        self.push(i, Inst::Unsupported);
                    }
                }
            }
        }
        // Falling off the end of a function returns.
        self.st.code.push(Instr {
            guard: None,
            inst: Inst::Ret,
            line: func.line,
        });
        for (pc, label, line) in std::mem::take(&mut self.fixups) {
            match self.labels.get(label) {
                Some(&t) => {
                    if let Inst::Bra { tgt } = &mut self.st.code[pc].inst {
                        *tgt = t;
                    }
                }
                None => {
                    self.st.code[pc].inst = Inst::Unsupported;
                    if self.st.unsupported.is_none() {
                        self.st.unsupported =
                            Some(format!("branch to unknown label `{label}` at line {line}"));
                    }
                }
            }
        }
    }

    fn declare(&mut self, v: &PVar<'a>) {
        let sym = match v.space {
            VSpace::Local => {
                let off = align_up(self.st.local, v.align);
                self.st.local = off + v.size();
                Sym::Local(off as u32)
            }
            VSpace::Param => {
                let off = align_up(self.st.pscratch, v.align);
                self.st.pscratch = off + v.size();
                Sym::FParam(off as u32)
            }
            VSpace::Shared => match self.layout.shared_fn.get(&(self.fidx, v.name)) {
                Some(&o) => Sym::Shared(o as u32),
                None => Sym::Shared(self.layout.dyn_base as u32),
            },
            VSpace::Global | VSpace::Const | VSpace::Reg => {
                if self.st.unsupported.is_none() {
                    self.st.unsupported = Some(format!(
                        "function-scope .global/.const variable `{}` at line {}",
                        v.name, v.line
                    ));
                }
                return;
            }
        };
        self.scopes.last_mut().unwrap().insert(v.name, sym);
    }

    pub(crate) fn push(&mut self, i: &PInst<'a>, inst: Inst) {
        self.st.code.push(Instr {
            guard: None,
            inst,
            line: i.line,
        });
    }

    /// Pushes an instruction that carries the statement's guard.
    pub(crate) fn emit(&mut self, i: &PInst<'a>, inst: Inst) -> DResult<()> {
        let guard = match i.guard {
            Some((p, neg)) => Some((self.reg(p)?, neg)),
            None => None,
        };
        self.st.code.push(Instr {
            guard,
            inst,
            line: i.line,
        });
        Ok(())
    }

    pub(crate) fn branch(&mut self, i: &PInst<'a>, label: &'a str) -> DResult<()> {
        self.fixups.push((self.st.code.len(), label, i.line));
        self.emit(i, Inst::Bra { tgt: 0 })
    }

    pub(crate) fn call(&mut self, i: &PInst<'a>) -> DResult<()> {
        let mut lists = Vec::new();
        let mut target = None;
        let mut prototype = false;
        for o in &i.ops {
            match o {
                Operand::List(v) => lists.push((target.is_some(), v)),
                Operand::Name(n) if target.is_none() => target = Some(*n),
                // `call (r), %fp, (a), prototype_N;` names its prototype last.
                Operand::Name(_) if !prototype => prototype = true,
                _ => return Err("unsupported call syntax".into()),
            }
        }
        let target = target.ok_or("call without target")?;
        if target.starts_with('%') {
            return self.call_indirect(i, target, &lists);
        }
        let f = *self.l.fmap.get(target).ok_or("unknown call target")?;
        let fo = self
            .layout
            .formals
            .get(&f)
            .ok_or("call target not linked")?
            .clone();
        let (args, rets) = self.call_moves(&lists, &fo)?;
        self.st.call_fixups.push((self.st.code.len(), f));
        self.emit(i, Inst::Call { tgt: 0, args, rets })
    }

    /// A call through a function pointer: one case for each function whose
    /// address the module takes and that takes as many parameters and results.
    fn call_indirect(
        &mut self,
        i: &PInst<'a>,
        target: &'a str,
        lists: &[(bool, &Vec<Operand<'a>>)],
    ) -> DResult<()> {
        let pointer = self.src(&Operand::Name(target), Ty::U64)?;
        let (nargs, nrets) = lists.iter().fold((0, 0), |(a, r), (after, l)| {
            if *after {
                (a + l.len(), r)
            } else {
                (a, r + l.len())
            }
        });
        let mut cases = Vec::new();
        let candidates: Vec<usize> = self.l.address_taken.iter().copied().collect();
        for f in candidates {
            let Some(fo) = self.layout.formals.get(&f).cloned() else {
                continue;
            };
            if fo.params.len() != nargs || fo.rets.len() != nrets {
                continue;
            }
            let (args, rets) = self.call_moves(lists, &fo)?;
            cases.push(IndirectCase {
                function: f as u32,
                tgt: 0,
                args,
                rets,
            });
        }
        let pc = self.st.code.len();
        for (k, case) in cases.iter().enumerate() {
            self.st
                .indirect_fixups
                .push((pc, k, case.function as usize));
        }
        self.emit(i, Inst::CallIndirect { pointer, cases })
    }

    /// The moves of a call's arguments into `fo`'s parameters and of its
    /// results back.
    fn call_moves(
        &mut self,
        lists: &[(bool, &Vec<Operand<'a>>)],
        fo: &crate::link::Formals,
    ) -> DResult<(Vec<ParamMove>, Vec<ParamMove>)> {
        let mut args = Vec::new();
        let mut rets = Vec::new();
        for &(after, list) in lists {
            let (formals, out) = if after {
                (&fo.params, &mut args)
            } else {
                (&fo.rets, &mut rets)
            };
            if list.len() != formals.len() {
                return Err("call argument count mismatch".into());
            }
            for (o, &formal) in list.iter().zip(formals) {
                let caller = self.lookup(o_name(o).unwrap_or(""));
                let mv = match (formal, caller) {
                    (Formal::Scratch(foff, size), Some(Sym::FParam(off))) => {
                        let (src, dst) = if after { (off, foff) } else { (foff, off) };
                        ParamMove::Copy { src, dst, size }
                    }
                    (Formal::Scratch(foff, size), _) if after => ParamMove::FromOp {
                        op: self.src(o, Ty::B64)?,
                        dst: foff,
                        size,
                    },
                    (Formal::Scratch(foff, size), _) => ParamMove::ToReg {
                        src: foff,
                        reg: self.dst(o)?,
                        size,
                    },
                    (Formal::Reg(r), _) if after => ParamMove::RegMove {
                        op: self.src(o, Ty::B64)?,
                        reg: r,
                    },
                    (Formal::Reg(r), _) => ParamMove::RegMove {
                        op: Op::R(r),
                        reg: self.dst(o)?,
                    },
                };
                out.push(mv);
            }
        }
        Ok((args, rets))
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<Sym> {
        for s in self.scopes.iter().rev() {
            if let Some(sym) = s.get(name) {
                return Some(*sym);
            }
            let digits = name.bytes().rev().take_while(u8::is_ascii_digit).count();
            if digits > 0 && digits < name.len() {
                let (pre, num) = name.split_at(name.len() - digits);
                if let Some(Sym::Range(base, n)) = s.get(pre) {
                    if let Ok(k) = num.parse::<u32>() {
                        if k < *n {
                            return Some(Sym::Reg(base + k));
                        }
                    }
                }
            }
        }
        if let Some(&off) = self.layout.shared_mod.get(name) {
            return Some(Sym::Shared(off as u32));
        }
        if self.l.mshared.contains_key(name) {
            return Some(Sym::Shared(self.layout.dyn_base as u32));
        }
        None
    }

    fn global_index(&mut self, name: &str) -> Option<u32> {
        if !self.l.mglobal.contains(name) {
            return None;
        }
        if let Some(&i) = self.st.gmap.get(name) {
            return Some(i);
        }
        let i = self.st.gsyms.len() as u32;
        self.st.gsyms.push(name.to_string());
        self.st.gmap.insert(name.to_string(), i);
        Some(i)
    }

    pub(crate) fn reg(&self, name: &str) -> DResult<u32> {
        match self.lookup(name) {
            Some(Sym::Reg(r)) => Ok(r),
            _ => Err(format!("`{name}` is not a register")),
        }
    }

    pub(crate) fn dst(&self, o: &Operand<'a>) -> DResult<u32> {
        match o {
            Operand::Name(n) => self.reg(n),
            Operand::Sink => Ok(SINK_REG),
            _ => Err(format!("bad destination operand {o:?}")),
        }
    }

    /// Value of a symbol used as an operand (its address in its own space).
    fn sym_value(&mut self, name: &str) -> Option<Op> {
        match self.lookup(name) {
            Some(Sym::Reg(r)) => Some(Op::R(r)),
            Some(Sym::Local(o) | Sym::Shared(o) | Sym::FParam(o) | Sym::KParam(o)) => {
                Some(Op::I(o as u64))
            }
            Some(Sym::Range(..)) => None,
            None => self.global_index(name).map(Op::G),
        }
    }

    pub(crate) fn src(&mut self, o: &Operand<'a>, t: Ty) -> DResult<Op> {
        match o {
            Operand::Imm(imm) => Ok(Op::I(imm_bits(*imm, t))),
            Operand::Name(n) => {
                if let Some(op) = self.sym_value(n) {
                    return Ok(op);
                }
                if let Some(s) = special(n) {
                    return Ok(Op::S(s));
                }
                // A function's address (a function pointer).
                if let Some(&f) = self.l.fmap.get(n) {
                    if self.l.address_taken.contains(&f) {
                        return Ok(Op::I(crate::link::function_address(f)));
                    }
                }
                Err(format!("unknown operand `{n}`"))
            }
            Operand::SymOff(n, off) => match self.sym_value(n) {
                Some(Op::I(v)) => Ok(Op::I(v.wrapping_add(*off as u64))),
                _ => Err(format!("unsupported symbol expression `{n}+{off}`")),
            },
            _ => Err(format!("bad source operand {o:?}")),
        }
    }

    /// Predicate operand, possibly negated.
    pub(crate) fn pred(&mut self, o: &Operand<'a>) -> DResult<(Op, bool)> {
        match o {
            Operand::Not(n) => Ok((Op::R(self.reg(n)?), true)),
            _ => Ok((self.src(o, Ty::Pred)?, false)),
        }
    }

    /// Address operand for an access in space `sp`; returns the (possibly
    /// refined) space.
    pub(crate) fn addr(&mut self, o: &Operand<'a>, sp: MSp) -> DResult<(MSp, Addr)> {
        let Operand::Addr(base, off) = o else {
            return Err(format!("expected address operand, found {o:?}"));
        };
        let off = *off;
        match &**base {
            Operand::Imm(Imm::Int(v)) => Ok((
                sp,
                Addr {
                    base: Op::I(*v),
                    off,
                },
            )),
            Operand::Name(n) => {
                let sym = self.lookup(n);
                let (nsp, base) = match (sym, sp) {
                    (Some(Sym::Reg(r)), MSp::KParam) if !self.func.entry => (MSp::FParam, Op::R(r)),
                    (Some(Sym::Reg(r)), _) => (sp, Op::R(r)),
                    (Some(Sym::KParam(o)), MSp::KParam | MSp::FParam) => {
                        (MSp::KParam, Op::I(o as u64))
                    }
                    (Some(Sym::KParam(o)), MSp::Generic) => {
                        (MSp::Generic, Op::I(PARAM_WINDOW + o as u64))
                    }
                    (Some(Sym::FParam(o)), MSp::KParam | MSp::FParam) => {
                        (MSp::FParam, Op::I(o as u64))
                    }
                    (Some(Sym::Local(o)), MSp::Local) => (sp, Op::I(o as u64)),
                    (Some(Sym::Local(o)), MSp::Generic) => (sp, Op::I(LOCAL_WINDOW + o as u64)),
                    (Some(Sym::Shared(o)), MSp::Shared) => (sp, Op::I(o as u64)),
                    (Some(Sym::Shared(o)), MSp::Generic) => (sp, Op::I(SHARED_WINDOW + o as u64)),
                    (None, MSp::Global | MSp::Generic) => match self.global_index(n) {
                        Some(g) => (sp, Op::G(g)),
                        None => return Err(format!("unknown symbol `{n}`")),
                    },
                    _ => return Err(format!("symbol `{n}` used in wrong state space")),
                };
                Ok((nsp, Addr { base, off }))
            }
            _ => Err(format!("bad address operand {o:?}")),
        }
    }
}

fn o_name<'a>(o: &Operand<'a>) -> Option<&'a str> {
    match o {
        Operand::Name(n) => Some(n),
        _ => None,
    }
}

fn dim(s: &str) -> Option<u8> {
    match s {
        "x" => Some(0),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    }
}

/// Special register by name (`%tid.x`, `%laneid`, ...).
pub(crate) fn special(name: &str) -> Option<Sreg> {
    if let Some((base, d)) = name.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Sreg::Tid(d),
            "%ntid" => Sreg::Ntid(d),
            "%ctaid" => Sreg::Ctaid(d),
            "%nctaid" => Sreg::Nctaid(d),
            _ => return None,
        });
    }
    Some(match name {
        "%laneid" => Sreg::LaneId,
        "%warpid" => Sreg::WarpId,
        "%nwarpid" => Sreg::NWarpId,
        "%lanemask_eq" => Sreg::LaneMaskEq,
        "%lanemask_lt" => Sreg::LaneMaskLt,
        "%lanemask_le" => Sreg::LaneMaskLe,
        "%lanemask_gt" => Sreg::LaneMaskGt,
        "%lanemask_ge" => Sreg::LaneMaskGe,
        "%clock" => Sreg::Clock,
        "%clock64" => Sreg::Clock64,
        "%globaltimer" | "%globaltimer_lo" => Sreg::GlobalTimer,
        "%smid" => Sreg::SmId,
        "%nsmid" => Sreg::NSmId,
        "%gridid" => Sreg::GridId,
        "%dynamic_smem_size" => Sreg::DynSmem,
        "%total_smem_size" => Sreg::TotalSmem,
        _ => {
            let n: u8 = name.strip_prefix("%envreg")?.parse().ok()?;
            return (n < 32).then_some(Sreg::EnvReg(n));
        }
    })
}
