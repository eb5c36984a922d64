//! Module building and linking: collects module variables, lays out each
//! kernel together with the functions it calls (registers, local memory,
//! param scratch, static/dynamic shared memory) and drives the per-function
//! decoder.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::builtins::Builtin;
use crate::decode::{imm_bits, FnDecoder};
use crate::ir::*;
use crate::parser::{InitVal, Operand, PFunc, PInst, PModule, PVar, Stmt, VSpace};
use crate::{GlobalVar, KernelInfo, Module, ParamInfo, ParseError, Space};

pub(crate) fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a.max(1)) * a.max(1)
}

fn global_var(v: &PVar<'_>) -> GlobalVar {
    let esz = v.ty.bytes();
    let size = v.size();
    // Only as many bytes as the initializer gives: the rest is zero, and a huge
    // uninitialised array costs nothing here (an allocation of its size was a
    // fuzzer's find).
    let given = v
        .init
        .as_ref()
        .map_or(0, |vals| vals.len().saturating_mul(esz));
    let mut init = vec![0u8; given.min(size)];
    let mut relocs = Vec::new();
    if let Some(vals) = &v.init {
        for (i, val) in vals.iter().enumerate() {
            let at = i * esz;
            if at + esz > init.len() {
                break;
            }
            match val {
                InitVal::Num(n) => {
                    let bits = imm_bits(*n, v.ty);
                    init[at..at + esz].copy_from_slice(&bits.to_le_bytes()[..esz]);
                }
                InitVal::Sym(sym) if esz == 8 => relocs.push((at, sym.to_string())),
                InitVal::Sym(_) => tracing::warn!(
                    "a symbol's address in `{}`, an array of {esz}-byte elements: left as zero",
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
        relocs,
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
    // Functions whose address the module takes: named in a variable's
    // initializer (a vtable, a table of function pointers) or as an operand
    // other than a call's target.
    let mut address_taken = std::collections::BTreeSet::new();
    for v in &pm.vars {
        for val in v.init.iter().flatten() {
            if let InitVal::Sym(sym) = val {
                if let Some(&f) = fmap.get(sym) {
                    address_taken.insert(f);
                }
            }
        }
    }
    for f in &pm.funcs {
        for i in insts(f) {
            if i.opcode.starts_with("call") {
                continue;
            }
            let mut names = Vec::new();
            i.ops.iter().for_each(|o| operand_names(o, &mut names));
            for n in names {
                if let Some(&g) = fmap.get(n) {
                    if pm.funcs[g].body.is_some() && !pm.funcs[g].entry {
                        address_taken.insert(g);
                    }
                }
            }
        }
    }
    address_taken.retain(|&f| pm.funcs[f].body.is_some() && !pm.funcs[f].entry);
    let linker = Linker {
        pm,
        address_taken,
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
    let by_name = kernels
        .iter()
        .enumerate()
        .map(|(i, k)| (k.name.clone(), i))
        .collect();
    let function_addresses = linker
        .address_taken
        .iter()
        .map(|&f| (pm.funcs[f].name.to_string(), function_address(f)))
        .collect();
    Ok(Module {
        kernels,
        globals,
        progs,
        by_name,
        function_addresses,
    })
}

/// The value a function's address has ([`crate::FUNCTION_ADDRESS_TAG`]).
pub(crate) fn function_address(f: usize) -> u64 {
    crate::FUNCTION_ADDRESS_TAG | f as u64
}

pub(crate) struct Linker<'m, 'a> {
    pub(crate) pm: &'m PModule<'a>,
    /// Functions whose address is taken (targets of indirect calls).
    pub(crate) address_taken: std::collections::BTreeSet<usize>,
    pub(crate) fmap: HashMap<&'a str, usize>,
    pub(crate) mshared: HashMap<&'a str, &'m PVar<'a>>,
    pub(crate) mglobal: HashSet<&'a str>,
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
        Operand::TexAddr(object, coords) => {
            out.push(object);
            operand_names(coords, out)
        }
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
pub(crate) struct Formals {
    pub(crate) params: Vec<Formal>,
    pub(crate) rets: Vec<Formal>,
    pub(crate) entry_pc: u32,
}

/// Where a `.func` formal lives: param scratch (offset, size) or a register.
#[derive(Clone, Copy)]
pub(crate) enum Formal {
    Scratch(u32, u32),
    Reg(u32),
}

pub(crate) struct Layout<'a> {
    pub(crate) shared_mod: HashMap<&'a str, usize>,
    pub(crate) shared_fn: HashMap<(usize, &'a str), usize>,
    pub(crate) dyn_base: usize,
    pub(crate) formals: HashMap<usize, Formals>,
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
                    if t.starts_with('%') {
                        // Through a register: any function whose address is
                        // taken may be the target (each may call on).
                        for &g in &l.address_taken {
                            if !order.contains(&g) && !stack.contains(&g) {
                                visit(l, g, stack, order)?;
                            }
                        }
                        continue;
                    }
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
            uses_heap: false,
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
            indirect_fixups: Vec::new(),
            unsupported: None,
        };
        info.uses_heap = order.iter().any(|&f| {
            let func = &self.pm.funcs[f];
            func.body.is_none() && Builtin::by_name(func.name).is_some_and(Builtin::uses_heap)
        });
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
        for (pc, k, f) in std::mem::take(&mut st.indirect_fixups) {
            let tgt = layout.formals[&f].entry_pc;
            if let Inst::CallIndirect { cases, .. } = &mut st.code[pc].inst {
                cases[k].tgt = tgt;
            }
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

pub(crate) struct LinkState {
    pub(crate) code: Vec<Instr>,
    pub(crate) next_reg: u32,
    pub(crate) local: usize,
    pub(crate) pscratch: usize,
    pub(crate) gsyms: Vec<String>,
    pub(crate) gmap: HashMap<String, u32>,
    pub(crate) call_fixups: Vec<(usize, usize)>,
    /// Indirect calls' cases to point at their functions: (pc, case, function).
    pub(crate) indirect_fixups: Vec<(usize, usize, usize)>,
    pub(crate) unsupported: Option<String>,
}
