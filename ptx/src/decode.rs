//! Links each kernel with the functions it calls and decodes their statements
//! into [`Instr`]s: registers become slot indices, symbols become offsets or
//! module-variable indices, labels become program counters.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::builtins::Builtin;
use crate::ir::*;
use crate::mem::{LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW};
use crate::parser::{Imm, InitVal, Operand, PFunc, PInst, PModule, PVar, Stmt, VSpace};
use crate::{GlobalVar, KernelInfo, Module, ParamInfo, ParseError, Space};

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a.max(1)) * a.max(1)
}

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

fn global_var(v: &PVar<'_>) -> GlobalVar {
    let esz = v.ty.bytes();
    let size = v.size();
    let mut init = vec![0u8; size];
    if let Some(vals) = &v.init {
        for (i, val) in vals.iter().enumerate() {
            let at = i * esz;
            if at + esz > size {
                break;
            }
            match val {
                InitVal::Num(n) => {
                    let bits = imm_bits(*n, v.ty);
                    init[at..at + esz].copy_from_slice(&bits.to_le_bytes()[..esz]);
                }
                InitVal::Sym => tracing::warn!(
                    "address initializer in `{}` is not supported; left as zero",
                    v.name
                ),
            }
        }
    }
    GlobalVar {
        name: v.name.to_string(),
        space: if v.space == VSpace::Const {
            Space::Const
        } else {
            Space::Global
        },
        size,
        align: v.align,
        init,
    }
}

/// Builds the public [`Module`] from a parsed module.
pub(crate) fn build_module(pm: &PModule<'_>) -> Result<Module, ParseError> {
    let mut globals = Vec::new();
    let mut seen = HashSet::new();
    for v in &pm.vars {
        if matches!(v.space, VSpace::Global | VSpace::Const) && !v.is_extern {
            if !seen.insert(v.name) {
                return Err(ParseError::Duplicate {
                    name: v.name.to_string(),
                    line: v.line,
                });
            }
            globals.push(global_var(v));
        }
    }
    let mut fmap: HashMap<&str, usize> = HashMap::new();
    for (i, f) in pm.funcs.iter().enumerate() {
        match fmap.get(f.name) {
            Some(&j) if pm.funcs[j].body.is_some() && f.body.is_some() => {
                return Err(ParseError::Duplicate {
                    name: f.name.to_string(),
                    line: f.line,
                })
            }
            Some(&j) if pm.funcs[j].body.is_some() => {}
            _ => {
                fmap.insert(f.name, i);
            }
        }
    }
    let linker = Linker {
        pm,
        fmap,
        mshared: pm
            .vars
            .iter()
            .filter(|v| v.space == VSpace::Shared)
            .map(|v| (v.name, v))
            .collect(),
        mglobal: pm
            .vars
            .iter()
            .filter(|v| matches!(v.space, VSpace::Global | VSpace::Const))
            .map(|v| v.name)
            .collect(),
    };
    let mut kernels = Vec::new();
    let mut progs = Vec::new();
    for (i, f) in pm.funcs.iter().enumerate() {
        if f.entry && f.body.is_some() {
            let (info, prog) = linker.link(i);
            kernels.push(info);
            progs.push(Arc::new(prog));
        }
    }
    Ok(Module {
        kernels,
        globals,
        progs,
    })
}

struct Linker<'m, 'a> {
    pm: &'m PModule<'a>,
    fmap: HashMap<&'a str, usize>,
    mshared: HashMap<&'a str, &'m PVar<'a>>,
    mglobal: HashSet<&'a str>,
}

fn insts<'m, 'a>(f: &'m PFunc<'a>) -> impl Iterator<Item = &'m PInst<'a>> {
    f.body.iter().flatten().filter_map(|s| match s {
        Stmt::Inst(i) => Some(i),
        _ => None,
    })
}

fn operand_names<'a>(op: &Operand<'a>, out: &mut Vec<&'a str>) {
    match op {
        Operand::Name(n) | Operand::Not(n) | Operand::SymOff(n, _) => out.push(n),
        Operand::Pair(a, b) => {
            out.push(a);
            out.push(b)
        }
        Operand::Addr(b, _) => operand_names(b, out),
        Operand::Vec(v) | Operand::List(v) => v.iter().for_each(|o| operand_names(o, out)),
        Operand::Imm(_) | Operand::Sink => {}
    }
}

fn call_target<'a>(i: &PInst<'a>) -> Option<&'a str> {
    if !i.opcode.starts_with("call") {
        return None;
    }
    i.ops.iter().find_map(|o| match o {
        Operand::Name(n) => Some(*n),
        _ => None,
    })
}

/// Per-function layout of formal parameters in the per-thread param scratch.
#[derive(Clone, Default)]
struct Formals {
    params: Vec<Formal>,
    rets: Vec<Formal>,
    entry_pc: u32,
}

/// Where a `.func` formal lives: param scratch (offset, size) or a register.
#[derive(Clone, Copy)]
enum Formal {
    Scratch(u32, u32),
    Reg(u32),
}

struct Layout<'a> {
    shared_mod: HashMap<&'a str, usize>,
    shared_fn: HashMap<(usize, &'a str), usize>,
    dyn_base: usize,
    formals: HashMap<usize, Formals>,
}

impl<'m, 'a> Linker<'m, 'a> {
    /// Functions reachable from `k` (k first), or the reason linking fails.
    fn reachable(&self, k: usize) -> Result<Vec<usize>, String> {
        fn visit(
            l: &Linker<'_, '_>,
            f: usize,
            stack: &mut Vec<usize>,
            order: &mut Vec<usize>,
        ) -> Result<(), String> {
            if stack.contains(&f) {
                return Err(format!("recursive call to `{}`", l.pm.funcs[f].name));
            }
            if order.contains(&f) {
                return Ok(());
            }
            order.push(f);
            stack.push(f);
            for inst in insts(&l.pm.funcs[f]) {
                if let Some(t) = call_target(inst) {
                    match l.fmap.get(t) {
                        Some(&g) if l.pm.funcs[g].body.is_some() => visit(l, g, stack, order)?,
                        Some(&g) if Builtin::by_name(t).is_some() => {
                            if !order.contains(&g) {
                                order.push(g);
                            }
                        }
                        Some(_) => {
                            return Err(format!(
                                "call to external function `{t}` at line {}",
                                inst.line
                            ))
                        }
                        None => {
                            return Err(format!(
                                "instruction {} at line {} (indirect or unknown call target `{t}`)",
                                inst.opcode, inst.line
                            ))
                        }
                    }
                }
            }
            stack.pop();
            Ok(())
        }
        let mut order = Vec::new();
        visit(self, k, &mut Vec::new(), &mut order)?;
        Ok(order)
    }

    fn layout(&self, order: &[usize], pscratch: &mut usize, next_reg: &mut u32) -> Layout<'a> {
        let mut off = 0usize;
        let mut shared_mod = HashMap::new();
        let mut shared_fn = HashMap::new();
        let mut ext_align = 16usize;
        for &f in order {
            let func = &self.pm.funcs[f];
            for s in func.body.iter().flatten() {
                if let Stmt::Var(v) = s {
                    if v.space == VSpace::Shared {
                        if v.is_extern || v.count.is_none() {
                            ext_align = ext_align.max(v.align);
                        } else {
                            off = align_up(off, v.align);
                            shared_fn.insert((f, v.name), off);
                            off += v.size();
                        }
                    }
                }
            }
            let mut names = Vec::new();
            for i in insts(func) {
                i.ops.iter().for_each(|o| operand_names(o, &mut names));
            }
            for n in names {
                if let Some(v) = self.mshared.get(n) {
                    if v.is_extern || v.count.is_none() {
                        ext_align = ext_align.max(v.align);
                    } else if !shared_mod.contains_key(n) {
                        off = align_up(off, v.align);
                        shared_mod.insert(n, off);
                        off += v.size();
                    }
                }
            }
        }
        let static_end = off;
        let mut formals = HashMap::new();
        for &f in order.iter().skip(1) {
            let func = &self.pm.funcs[f];
            let mut fo = Formals::default();
            for (list, out) in [(&func.params, &mut fo.params), (&func.rets, &mut fo.rets)] {
                for p in list {
                    if p.space == VSpace::Reg {
                        out.push(Formal::Reg(*next_reg));
                        *next_reg += 1;
                        continue;
                    }
                    *pscratch = align_up(*pscratch, p.align);
                    out.push(Formal::Scratch(*pscratch as u32, p.size() as u32));
                    *pscratch += p.size();
                }
            }
            formals.insert(f, fo);
        }
        let _ = static_end;
        Layout {
            dyn_base: align_up(off, ext_align),
            shared_mod,
            shared_fn,
            formals,
        }
    }

    fn link(&self, k: usize) -> (KernelInfo, Prog) {
        let kf = &self.pm.funcs[k];
        let mut params = Vec::new();
        let mut end = 0usize;
        for p in &kf.params {
            let offset = align_up(end, p.align);
            params.push(ParamInfo {
                offset,
                size: p.size(),
                align: p.align,
            });
            end = offset + p.size();
        }
        let mut info = KernelInfo {
            name: kf.name.to_string(),
            params,
            param_bytes: end,
            static_shared_bytes: 0,
            local_bytes: 0,
            max_threads_per_block: kf.ntid.map(|d| d[0] * d[1] * d[2]),
            unsupported: None,
        };
        let mut prog = Prog {
            name: kf.name.to_string(),
            ..Prog::default()
        };
        let order = match self.reachable(k) {
            Ok(o) => o,
            Err(e) => {
                info.unsupported = Some(e);
                return (info, prog);
            }
        };
        let mut pscratch = 0usize;
        let mut next_reg = 2;
        let mut layout = self.layout(&order, &mut pscratch, &mut next_reg);
        let mut st = LinkState {
            code: Vec::new(),
            next_reg,
            local: 0,
            pscratch,
            gsyms: Vec::new(),
            gmap: HashMap::new(),
            call_fixups: Vec::new(),
            unsupported: None,
        };
        for &f in &order {
            let entry_pc = st.code.len() as u32;
            let fo = layout.formals.entry(f).or_default();
            fo.entry_pc = entry_pc;
            let func = &self.pm.funcs[f];
            if let (None, Some(which)) = (&func.body, Builtin::by_name(func.name)) {
                let scratch = |v: &Vec<Formal>| -> Vec<(u32, u32)> {
                    v.iter()
                        .map(|f| match *f {
                            Formal::Scratch(o, s) => (o, s),
                            Formal::Reg(_) => (0, 0),
                        })
                        .collect()
                };
                let (params, rets) = (scratch(&fo.params), scratch(&fo.rets));
                for inst in [
                    Inst::Builtin {
                        which,
                        params,
                        ret: rets.first().copied(),
                    },
                    Inst::Ret,
                ] {
                    st.code.push(Instr {
                        guard: None,
                        inst,
                        line: func.line,
                    });
                }
                continue;
            }
            let mut fd = FnDecoder {
                l: self,
                layout: &layout,
                st: &mut st,
                fidx: f,
                func: &self.pm.funcs[f],
                scopes: vec![HashMap::new()],
                labels: HashMap::new(),
                fixups: Vec::new(),
            };
            fd.run();
        }
        for (pc, f) in std::mem::take(&mut st.call_fixups) {
            let tgt = layout.formals[&f].entry_pc;
            if let Inst::Call { tgt: t, .. } = &mut st.code[pc].inst {
                *t = tgt;
            }
        }
        let mut static_shared = 0;
        for (&(f, n), &off) in &layout.shared_fn {
            let v = self.pm.funcs[f]
                .body
                .iter()
                .flatten()
                .find_map(|s| match s {
                    Stmt::Var(v) if v.name == n && v.space == VSpace::Shared => Some(v),
                    _ => None,
                });
            static_shared = static_shared.max(off + v.map_or(0, |v| v.size()));
        }
        for (&n, &off) in &layout.shared_mod {
            static_shared = static_shared.max(off + self.mshared[n].size());
        }
        info.static_shared_bytes = static_shared;
        info.local_bytes = st.local;
        info.unsupported = st.unsupported.clone();
        prog.uses_warp_ops = st.code.iter().any(|i| i.inst.is_warp_op());
        prog.code = st.code;
        prog.nregs = st.next_reg as usize;
        prog.local_bytes = st.local;
        prog.pscratch_bytes = st.pscratch;
        prog.static_shared = static_shared;
        prog.dyn_shared_base = layout.dyn_base.max(static_shared);
        prog.gsyms = st.gsyms;
        (info, prog)
    }
}

struct LinkState {
    code: Vec<Instr>,
    next_reg: u32,
    local: usize,
    pscratch: usize,
    gsyms: Vec<String>,
    gmap: HashMap<String, u32>,
    call_fixups: Vec<(usize, usize)>,
    unsupported: Option<String>,
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
    l: &'x Linker<'m, 'a>,
    layout: &'x Layout<'a>,
    st: &'x mut LinkState,
    pub(crate) fidx: usize,
    pub(crate) func: &'m PFunc<'a>,
    scopes: Vec<HashMap<&'a str, Sym>>,
    labels: HashMap<&'a str, u32>,
    fixups: Vec<(usize, &'a str, u32)>,
}

pub(crate) type DResult<T> = Result<T, String>;

impl<'x, 'm, 'a> FnDecoder<'x, 'm, 'a> {
    fn run(&mut self) {
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
        for o in &i.ops {
            match o {
                Operand::List(v) => lists.push((target.is_some(), v)),
                Operand::Name(n) if target.is_none() => target = Some(*n),
                _ => return Err("unsupported call syntax".into()),
            }
        }
        let target = target.ok_or("call without target")?;
        let f = *self.l.fmap.get(target).ok_or("unknown call target")?;
        let fo = self
            .layout
            .formals
            .get(&f)
            .ok_or("call target not linked")?
            .clone();
        let mut args = Vec::new();
        let mut rets = Vec::new();
        for (after, list) in lists {
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
        self.st.call_fixups.push((self.st.code.len(), f));
        self.emit(i, Inst::Call { tgt: 0, args, rets })
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
        _ => return None,
    })
}
