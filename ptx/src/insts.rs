//! Opcode decoding: turns one parsed instruction statement into [`Inst`]s.

use crate::decode::{DResult, FnDecoder};
use crate::ir::*;
use crate::parser::{Operand, PInst};

fn cmp_op(s: &str) -> Option<Cmp> {
    Some(match s {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" | "lo" => Cmp::Lt,
        "le" | "ls" => Cmp::Le,
        "gt" | "hi" => Cmp::Gt,
        "ge" | "hs" => Cmp::Ge,
        "equ" => Cmp::Equ,
        "neu" => Cmp::Neu,
        "ltu" => Cmp::Ltu,
        "leu" => Cmp::Leu,
        "gtu" => Cmp::Gtu,
        "geu" => Cmp::Geu,
        "num" => Cmp::Num,
        "nan" => Cmp::Nan,
        _ => return None,
    })
}

fn rnd_of(mods: &[&str]) -> Rnd {
    for m in mods {
        let r = match *m {
            "rn" => Rnd::Rn,
            "rz" => Rnd::Rz,
            "rm" => Rnd::Rm,
            "rp" => Rnd::Rp,
            "rni" => Rnd::Rni,
            "rzi" => Rnd::Rzi,
            "rmi" => Rnd::Rmi,
            "rpi" => Rnd::Rpi,
            _ => continue,
        };
        return r;
    }
    Rnd::None
}

fn space_of(mods: &[&str]) -> MSp {
    for m in mods {
        let base = m.split("::").next().unwrap_or(m);
        match base {
            "global" | "const" => return MSp::Global,
            "shared" => return MSp::Shared,
            "local" => return MSp::Local,
            "param" => return MSp::KParam,
            _ => {}
        }
    }
    MSp::Generic
}

/// Types that the interpreter cannot compute with.
fn bad_type(m: &str) -> bool {
    matches!(
        m,
        "tf32" | "e4m3" | "e5m2" | "e4m3x2" | "e5m2x2" | "e2m1x2" | "b128" | "f64x2" | "f32x2"
    )
}

/// The registers of a `wmma` or `mma` fragment operand `{…}`.
fn fragment<'o, 'a>(o: &'o Operand<'a>) -> DResult<Vec<&'o Operand<'a>>> {
    match o {
        Operand::Vec(v) => Ok(v.iter().collect()),
        _ => Err("expected a fragment {…}".into()),
    }
}

/// The element types a `wmma` or `mma` opcode names, in order.
fn matrix_elements(mods: &[&str]) -> Vec<WmmaEl> {
    mods.iter()
        .filter_map(|m| match *m {
            "f16" => Some(WmmaEl::F16),
            "bf16" => Some(WmmaEl::Bf16),
            "tf32" => Some(WmmaEl::Tf32),
            "f32" => Some(WmmaEl::F32),
            _ => None,
        })
        .collect()
}

/// Lane type of a packed two-lane type name.
fn x2_lane(m: &str) -> Option<Ty> {
    match m {
        "f16x2" => Some(Ty::F16),
        "bf16x2" => Some(Ty::BF16),
        "u16x2" => Some(Ty::U16),
        "s16x2" => Some(Ty::S16),
        _ => None,
    }
}

impl<'a> FnDecoder<'_, '_, 'a> {
    /// Packed two-lane arithmetic and conversions; `None` if `base` treats
    /// the packed type as plain 32 bits.
    fn packed(
        &mut self,
        i: &PInst<'a>,
        base: &str,
        mods: &[&str],
        lane: Ty,
    ) -> Option<DResult<()>> {
        let ops = &i.ops;
        let op = match base {
            "add" => PackedOp::Bin(BinOp::Add),
            "sub" => PackedOp::Bin(BinOp::Sub),
            "mul" => PackedOp::Bin(BinOp::MulLo),
            "min" => PackedOp::Bin(BinOp::Min),
            "max" => PackedOp::Bin(BinOp::Max),
            "neg" => PackedOp::Un(UnOp::Neg),
            "abs" => PackedOp::Un(UnOp::Abs),
            "fma" => PackedOp::Fma,
            "cvt" => {
                let r = (|| {
                    Self::ops_n(i, 3)?;
                    let st = mods
                        .iter()
                        .rev()
                        .find_map(|m| Ty::parse(m))
                        .ok_or("missing source type")?;
                    let d = self.dst(&ops[0])?;
                    let a = self.src(&ops[1], st)?;
                    let b = self.src(&ops[2], st)?;
                    self.emit(
                        i,
                        Inst::CvtX2 {
                            dt: lane,
                            st,
                            rnd: rnd_of(mods),
                            d,
                            a,
                            b,
                        },
                    )
                })();
                return Some(r);
            }
            "mov" | "ld" | "ldu" | "st" | "selp" | "and" | "or" | "xor" | "not" | "shfl"
            | "prmt" => return None,
            _ => return Some(Err("packed operation not supported".into())),
        };
        let r = (|| {
            let n = match op {
                PackedOp::Un(_) => 2,
                PackedOp::Bin(_) => 3,
                PackedOp::Fma => 4,
            };
            Self::ops_n(i, n)?;
            if mods.contains(&"sat") || mods.contains(&"relu") {
                return Err(".sat/.relu on packed types not supported".to_string());
            }
            let d = self.dst(&ops[0])?;
            let a = self.src(&ops[1], Ty::B32)?;
            let b = if n > 2 {
                self.src(&ops[2], Ty::B32)?
            } else {
                Op::I(0)
            };
            let c = if n > 3 {
                self.src(&ops[3], Ty::B32)?
            } else {
                Op::I(0)
            };
            self.emit(
                i,
                Inst::Packed {
                    op,
                    t: lane,
                    d,
                    a,
                    b,
                    c,
                },
            )
        })();
        Some(r)
    }

    /// `wmma.load`, `wmma.store` and `wmma.mma` (f16, bf16 and tf32 inputs,
    /// f16 or f32 accumulators, the m16n16k16, m32n8k16, m8n32k16 and m16n16k8
    /// shapes). A fragment's layout is the interpreter's own (element e of the
    /// matrix, row by row, at slot e of the warp's slots, lane by lane, repeated
    /// where the slots outnumber the elements), as PTX leaves it unspecified.
    fn wmma(&mut self, i: &PInst<'a>, mods: &[&str]) -> DResult<()> {
        let ops = &i.ops;
        let has = |s: &str| mods.contains(&s);
        let shape = mods
            .iter()
            .find_map(|m| match *m {
                "m16n16k16" => Some([16, 16, 16]),
                "m32n8k16" => Some([32, 8, 16]),
                "m8n32k16" => Some([8, 32, 16]),
                "m16n16k8" => Some([16, 16, 8]),
                _ => None,
            })
            .ok_or("wmma shape not supported (m16n16k16, m32n8k16, m8n32k16, m16n16k8 are)")?;
        let els = matrix_elements(mods);
        // Elements of a matrix, and whether a lane's registers hold at least
        // its share of them.
        let elements = |frag: Frag| -> usize {
            let [m, n, k] = shape.map(|x| x as usize);
            match frag {
                Frag::A => m * k,
                Frag::B => k * n,
                Frag::C => m * n,
            }
        };
        let enough = |count: usize, el: WmmaEl, frag: Frag| -> DResult<()> {
            if count * el.per_reg() * 32 < elements(frag) || count > 16 {
                Err(format!(
                    "a {frag:?} fragment of {count} registers of {el:?}"
                ))
            } else {
                Ok(())
            }
        };
        if has("load") || has("store") {
            let load = has("load");
            let frag = if has("a") {
                Frag::A
            } else if has("b") {
                Frag::B
            } else {
                Frag::C
            };
            let el = *els.first().ok_or("missing wmma element type")?;
            let row = has("row");
            Self::ops_n(i, 3)?;
            let (values, address) = if load {
                (&ops[0], &ops[1])
            } else {
                (&ops[1], &ops[0])
            };
            let (sp, addr) = self.addr(address, space_of(mods))?;
            let stride = self.src(&ops[2], Ty::U32)?;
            let list = fragment(values)?;
            enough(list.len(), el, frag)?;
            if load {
                let d = list
                    .iter()
                    .map(|o| self.dst(o))
                    .collect::<DResult<Vec<_>>>()?;
                self.emit(
                    i,
                    Inst::WmmaLoad {
                        frag,
                        shape,
                        el,
                        row,
                        sp,
                        addr,
                        stride,
                        d,
                    },
                )
            } else {
                let s = list
                    .iter()
                    .map(|o| self.src(o, Ty::B32))
                    .collect::<DResult<Vec<_>>>()?;
                self.emit(
                    i,
                    Inst::WmmaStore {
                        shape,
                        el,
                        row,
                        sp,
                        addr,
                        stride,
                        s,
                    },
                )
            }
        } else if has("mma") {
            if has("satfinite") {
                return Err("wmma.mma.satfinite not supported".into());
            }
            // f16: .dtype.ctype; bf16 and tf32: .dtype.atype.btype.ctype.
            let (d_el, ab, c_el) = match els.as_slice() {
                [d, c] => (*d, WmmaEl::F16, *c),
                [d, a, _, c] => (*d, *a, *c),
                _ => return Err("wmma.mma types".into()),
            };
            Self::ops_n(i, 4)?;
            let d = fragment(&ops[0])?
                .iter()
                .map(|o| self.dst(o))
                .collect::<DResult<Vec<_>>>()?;
            let src = |me: &mut Self, o: &Operand<'a>| -> DResult<Vec<Op>> {
                fragment(o)?.iter().map(|o| me.src(o, Ty::B32)).collect()
            };
            let a = src(self, &ops[1])?;
            let b = src(self, &ops[2])?;
            let c = src(self, &ops[3])?;
            enough(a.len(), ab, Frag::A)?;
            enough(b.len(), ab, Frag::B)?;
            enough(c.len(), c_el, Frag::C)?;
            enough(d.len(), d_el, Frag::C)?;
            self.emit(
                i,
                Inst::WmmaMma {
                    mma_sync: false,
                    shape,
                    ab,
                    c_el,
                    d_el,
                    d,
                    a,
                    b,
                    c,
                },
            )
        } else {
            Err("wmma operation not supported".into())
        }
    }

    /// `mma.sync.aligned` on the shapes and types whose fragment layouts the
    /// interpreter knows (m16n8k16 and m16n8k8 with f16 or bf16 inputs,
    /// m16n8k8 and m16n8k4 with tf32; f32 or f16 accumulators), row-major A
    /// and column-major B.
    fn mma_sync(&mut self, i: &PInst<'a>, mods: &[&str]) -> DResult<()> {
        let ops = &i.ops;
        let shape = mods
            .iter()
            .find_map(|m| match *m {
                "m16n8k16" => Some([16, 8, 16]),
                "m16n8k8" => Some([16, 8, 8]),
                "m16n8k4" => Some([16, 8, 4]),
                _ => None,
            })
            .ok_or("mma shape not supported (m16n8k16, m16n8k8, m16n8k4 are)")?;
        if !(mods.contains(&"row") && mods.contains(&"col")) || mods.contains(&"satfinite") {
            return Err("mma.sync other than .row.col not supported".into());
        }
        let els = matrix_elements(mods);
        let [d_el, ab, b_el, c_el] = els.as_slice() else {
            return Err("mma.sync types (.dtype.atype.btype.ctype)".into());
        };
        let supported = ab == b_el
            && matches!(
                (shape, ab),
                ([16, 8, 16] | [16, 8, 8], WmmaEl::F16 | WmmaEl::Bf16)
                    | ([16, 8, 8] | [16, 8, 4], WmmaEl::Tf32)
            )
            && matches!(c_el, WmmaEl::F32 | WmmaEl::F16)
            && matches!(d_el, WmmaEl::F32 | WmmaEl::F16)
            && (*ab == WmmaEl::F16 || (*c_el == WmmaEl::F32 && *d_el == WmmaEl::F32));
        if !supported {
            return Err(format!("mma.sync with {els:?} on {shape:?} not supported"));
        }
        Self::ops_n(i, 4)?;
        let (dl, al, bl, cl) = (
            fragment(&ops[0])?,
            fragment(&ops[1])?,
            fragment(&ops[2])?,
            fragment(&ops[3])?,
        );
        // Registers each lane holds: its elements over the elements per register.
        let want = |frag: Frag, el: WmmaEl| {
            let (r, c) = crate::wmma::dims(frag, shape);
            r * c / 32 / el.per_reg()
        };
        if al.len() != want(Frag::A, *ab)
            || bl.len() != want(Frag::B, *ab)
            || cl.len() != want(Frag::C, *c_el)
            || dl.len() != want(Frag::C, *d_el)
        {
            return Err("mma.sync fragment sizes".into());
        }
        let d = dl
            .iter()
            .map(|o| self.dst(o))
            .collect::<DResult<Vec<_>>>()?;
        let a = al
            .iter()
            .map(|o| self.src(o, Ty::B32))
            .collect::<DResult<Vec<_>>>()?;
        let b = bl
            .iter()
            .map(|o| self.src(o, Ty::B32))
            .collect::<DResult<Vec<_>>>()?;
        let c = cl
            .iter()
            .map(|o| self.src(o, Ty::B32))
            .collect::<DResult<Vec<_>>>()?;
        self.emit(
            i,
            Inst::WmmaMma {
                mma_sync: true,
                shape,
                ab: *ab,
                c_el: *c_el,
                d_el: *d_el,
                d,
                a,
                b,
                c,
            },
        )
    }

    fn ops_n(i: &PInst<'a>, n: usize) -> DResult<()> {
        if i.ops.len() < n {
            Err(format!("expected {n} operands"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn inst(&mut self, i: &PInst<'a>) -> DResult<()> {
        if let Some(e) = &i.bad {
            return Err(format!("cannot parse operands ({e})"));
        }
        let mut parts = i.opcode.split('.');
        let base = parts.next().unwrap_or("");
        let mods: Vec<&str> = parts.collect();
        if base == "wmma" {
            return self.wmma(i, &mods);
        }
        if base == "mma" {
            return self.mma_sync(i, &mods);
        }
        if base == "cvt" && mods.first() != Some(&"f32") && mods.contains(&"tf32") {
            // f32 to tf32 (for the tensor cores); other tf32 conversions are not.
            if mods.last() != Some(&"f32") {
                return Err("cvt to tf32 from other than f32 not supported".into());
            }
            let round = if mods.contains(&"rna") {
                Some(true)
            } else if mods.contains(&"rn") {
                Some(false)
            } else if mods.contains(&"rz") {
                None
            } else {
                return Err("cvt to tf32 needs .rna, .rn or .rz".into());
            };
            Self::ops_n(i, 2)?;
            let d = self.dst(&i.ops[0])?;
            let a = self.src(&i.ops[1], Ty::F32)?;
            return self.emit(
                i,
                Inst::Un {
                    op: UnOp::Tf32(round),
                    t: Ty::B32,
                    d,
                    a,
                },
            );
        }
        if let Some(m) = mods.iter().find(|m| bad_type(m)) {
            return Err(format!("type .{m} not supported"));
        }
        let x2 = mods.iter().find_map(|m| x2_lane(m));
        if let Some(lane) = x2 {
            if let Some(r) = self.packed(i, base, &mods, lane) {
                return r;
            }
        }
        // Elsewhere (mov, ld, st, selp, ...) a packed pair is just 32 bits.
        let types: Vec<Ty> = mods
            .iter()
            .filter_map(|m| Ty::parse(m).or(x2_lane(m).map(|_| Ty::B32)))
            .collect();
        let has = |s: &str| mods.contains(&s);
        let t = types.last().copied();
        let ty = || t.ok_or_else(|| "missing type".to_string());
        if matches!(t, Some(Ty::F16 | Ty::BF16))
            && matches!(base, "atom" | "red" | "shfl" | "redux")
        {
            return Err("f16 atomics/warp operations not supported".into());
        }
        let ops = &i.ops;
        match base {
            "mov" => {
                let t = ty()?;
                Self::ops_n(i, 2)?;
                if matches!((&ops[0], &ops[1]), (Operand::Vec(v), _) | (_, Operand::Vec(v)) if v.is_empty())
                {
                    return Err("an empty vector operand".into());
                }
                match (&ops[0], &ops[1]) {
                    (Operand::Vec(ds), a) => {
                        let d = ds
                            .iter()
                            .map(|o| self.dst(o))
                            .collect::<DResult<Vec<_>>>()?;
                        let a = self.src(a, t)?;
                        let ebits = t.bits() / d.len() as u32;
                        self.emit(i, Inst::Unpack { ebits, d, a })
                    }
                    (d, Operand::Vec(ss)) => {
                        let ebits = t.bits() / ss.len() as u32;
                        let et = match ebits {
                            8 => Ty::B8,
                            16 => Ty::B16,
                            32 => Ty::B32,
                            _ => Ty::B64,
                        };
                        let s = ss
                            .iter()
                            .map(|o| self.src(o, et))
                            .collect::<DResult<Vec<_>>>()?;
                        let d = self.dst(d)?;
                        self.emit(i, Inst::Pack { ebits, d, s })
                    }
                    (d, a) => {
                        let d = self.dst(d)?;
                        let a = self.src(a, t)?;
                        self.emit(i, Inst::Mov { d, a })
                    }
                }
            }
            "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "and" | "or" | "xor"
            | "shl" | "shr" | "copysign" | "addc" | "subc" | "mul24" => {
                let t = ty()?;
                Self::ops_n(i, 3)?;
                if t == Ty::Pred {
                    let op = match base {
                        "and" => BoolOp::And,
                        "or" => BoolOp::Or,
                        "xor" => BoolOp::Xor,
                        _ => return Err("bad predicate operation".into()),
                    };
                    let d = self.dst(&ops[0])?;
                    let a = self.src(&ops[1], t)?;
                    let b = self.src(&ops[2], t)?;
                    return self.emit(i, Inst::PredBin { op, d, a, b });
                }
                let (cin, cout) = (base.ends_with('c'), has("cc"));
                let op = match base {
                    "add" | "addc" if cin || cout => BinOp::AddX { cin, cout },
                    "sub" | "subc" if cin || cout => BinOp::SubX { cin, cout },
                    "add" => BinOp::Add,
                    "sub" => BinOp::Sub,
                    "mul" if t.is_float() => BinOp::MulLo,
                    "mul" if has("hi") => BinOp::MulHi,
                    "mul" if has("wide") => BinOp::MulWide,
                    "mul" => BinOp::MulLo,
                    "mul24" if has("lo") => BinOp::Mul24Lo,
                    "div" => BinOp::Div,
                    "rem" => BinOp::Rem,
                    "min" => BinOp::Min,
                    "max" => BinOp::Max,
                    "and" => BinOp::And,
                    "or" => BinOp::Or,
                    "xor" => BinOp::Xor,
                    "shl" => BinOp::Shl,
                    "shr" => BinOp::Shr,
                    "copysign" => BinOp::CopySign,
                    _ => return Err("unsupported variant".into()),
                };
                if has("sat") && !t.is_float() {
                    return Err("integer .sat not supported".into());
                }
                if ops.len() > 3 {
                    return Err("three-input min/max not supported".into());
                }
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], t)?;
                let bt = if matches!(op, BinOp::Shl | BinOp::Shr) {
                    Ty::U32
                } else {
                    t
                };
                let b = self.src(&ops[2], bt)?;
                self.emit(i, Inst::Bin { op, t, d, a, b })?;
                self.sat(i, t, d, has("sat"))
            }
            "mad" | "fma" | "mad24" | "madc" | "sad" => {
                let t = ty()?;
                Self::ops_n(i, 4)?;
                let op = match base {
                    _ if t.is_float() => TernOp::Fma,
                    "sad" => TernOp::Sad,
                    "mad24" if has("lo") => TernOp::Mad24Lo,
                    "mad" | "madc" if base == "madc" || has("cc") => {
                        if !has("lo") && !has("hi") {
                            return Err("carry variant needs .lo or .hi".into());
                        }
                        TernOp::MadX {
                            hi: has("hi"),
                            cin: base == "madc",
                            cout: has("cc"),
                        }
                    }
                    "mad" if has("hi") => TernOp::MadHi,
                    "mad" if has("wide") => TernOp::MadWide,
                    "mad" if has("lo") => TernOp::MadLo,
                    _ => return Err("unsupported variant".into()),
                };
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], t)?;
                let b = self.src(&ops[2], t)?;
                let ct = match (op, t) {
                    (TernOp::MadWide, Ty::S32) => Ty::S64,
                    (TernOp::MadWide, _) => Ty::U64,
                    _ => t,
                };
                let c = self.src(&ops[3], ct)?;
                self.emit(i, Inst::Tern { op, t, d, a, b, c })?;
                self.sat(i, t, d, has("sat"))
            }
            "abs" | "neg" | "not" | "cnot" | "popc" | "clz" | "brev" | "bfind" | "sqrt"
            | "rsqrt" | "rcp" | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
                let t = ty()?;
                Self::ops_n(i, 2)?;
                let op = match base {
                    "abs" => UnOp::Abs,
                    "neg" => UnOp::Neg,
                    "not" => UnOp::Not,
                    "cnot" => UnOp::CNot,
                    "popc" => UnOp::Popc,
                    "clz" => UnOp::Clz,
                    "brev" => UnOp::Brev,
                    "bfind" if has("shiftamt") => UnOp::BfindShift,
                    "bfind" => UnOp::Bfind,
                    "sqrt" => UnOp::Sqrt,
                    "rsqrt" => UnOp::Rsqrt,
                    "rcp" => UnOp::Rcp,
                    "ex2" => UnOp::Ex2,
                    "lg2" => UnOp::Lg2,
                    "sin" => UnOp::Sin,
                    "cos" => UnOp::Cos,
                    _ => UnOp::Tanh,
                };
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], t)?;
                self.emit(i, Inst::Un { op, t, d, a })?;
                self.sat(i, t, d, has("sat"))
            }
            "bfe" | "prmt" | "shf" | "selp" => {
                let t = ty()?;
                Self::ops_n(i, 4)?;
                let op = match base {
                    "bfe" => TernOp::Bfe,
                    "selp" => TernOp::Selp,
                    "shf" => match (has("l"), has("clamp")) {
                        (true, false) => TernOp::ShfL,
                        (true, true) => TernOp::ShfLClamp,
                        (false, false) => TernOp::ShfR,
                        (false, true) => TernOp::ShfRClamp,
                    },
                    _ => {
                        let mode = ["f4e", "b4e", "rc8", "ecl", "ecr", "rc16"]
                            .iter()
                            .position(|m| has(m))
                            .map_or(0, |p| p as u8 + 1);
                        TernOp::Prmt(mode)
                    }
                };
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], t)?;
                let b = self.src(&ops[2], if op == TernOp::Bfe { Ty::U32 } else { t })?;
                let c = if op == TernOp::Selp {
                    match self.pred(&ops[3])? {
                        (p, false) => p,
                        (_, true) => return Err("negated selp predicate".into()),
                    }
                } else {
                    self.src(&ops[3], Ty::U32)?
                };
                self.emit(i, Inst::Tern { op, t, d, a, b, c })
            }
            "bfi" => {
                let t = ty()?;
                Self::ops_n(i, 5)?;
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], t)?;
                let b = self.src(&ops[2], t)?;
                let c = self.src(&ops[3], Ty::U32)?;
                let e = self.src(&ops[4], Ty::U32)?;
                self.emit(i, Inst::Bfi { t, d, a, b, c, e })
            }
            "setp" | "set" => {
                let t = ty()?;
                Self::ops_n(i, 3)?;
                let cmp = mods
                    .first()
                    .and_then(|m| cmp_op(m))
                    .ok_or("missing comparison")?;
                let comb_op = mods.iter().find_map(|m| match *m {
                    "and" => Some(BoolOp::And),
                    "or" => Some(BoolOp::Or),
                    "xor" => Some(BoolOp::Xor),
                    _ => None,
                });
                let comb = match comb_op {
                    Some(op) => {
                        Self::ops_n(i, 4)?;
                        let (p, neg) = self.pred(&ops[3])?;
                        Some((op, p, neg))
                    }
                    None => None,
                };
                let a = self.src(&ops[1], t)?;
                let b = self.src(&ops[2], t)?;
                if base == "setp" {
                    let (d, d2) = match &ops[0] {
                        Operand::Pair(x, y) => (self.reg(x)?, self.reg(y)?),
                        o => (self.dst(o)?, SINK_REG),
                    };
                    self.emit(
                        i,
                        Inst::Setp {
                            cmp,
                            t,
                            d,
                            d2,
                            a,
                            b,
                            comb,
                        },
                    )
                } else {
                    let dt = *types.first().ok_or("missing type")?;
                    let t = *types.get(1).ok_or("missing source type")?;
                    let d = self.dst(&ops[0])?;
                    self.emit(
                        i,
                        Inst::Set {
                            cmp,
                            dt,
                            t,
                            d,
                            a,
                            b,
                            comb,
                        },
                    )
                }
            }
            "testp" => {
                let t = ty()?;
                Self::ops_n(i, 2)?;
                let op = match mods.first().copied() {
                    Some("finite") => TestP::Finite,
                    Some("infinite") => TestP::Infinite,
                    Some("number") => TestP::Number,
                    Some("notanumber") => TestP::NotANumber,
                    Some("normal") => TestP::Normal,
                    Some("subnormal") => TestP::Subnormal,
                    _ => return Err("unknown testp mode".into()),
                };
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], t)?;
                self.emit(i, Inst::TestP { op, t, d, a })
            }
            "cvt" => {
                Self::ops_n(i, 2)?;
                if types.len() != 2 {
                    return Err("cvt needs two types".into());
                }
                let (dt, st) = (types[0], types[1]);
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], st)?;
                let rnd = rnd_of(&mods);
                self.emit(
                    i,
                    Inst::Cvt {
                        dt,
                        st,
                        rnd,
                        sat: has("sat"),
                        d,
                        a,
                    },
                )
            }
            "cvta" | "isspacep" => {
                Self::ops_n(i, 2)?;
                let sp = space_of(&mods);
                if sp == MSp::Generic {
                    return Err("missing state space".into());
                }
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], Ty::U64)?;
                if base == "isspacep" {
                    self.emit(i, Inst::IsSpace { sp, d, a })
                } else {
                    self.emit(
                        i,
                        Inst::Cvta {
                            to: has("to"),
                            sp,
                            d,
                            a,
                        },
                    )
                }
            }
            "ld" | "ldu" | "st" => {
                let t = ty()?;
                Self::ops_n(i, 2)?;
                let n = if has("v2") {
                    2
                } else if has("v4") {
                    4
                } else if has("v8") {
                    return Err(".v8 not supported".into());
                } else {
                    1
                };
                let sp = space_of(&mods);
                let (vals, ao) = if base == "st" {
                    (&ops[1], &ops[0])
                } else {
                    (&ops[0], &ops[1])
                };
                let (sp, addr) = self.addr(ao, sp)?;
                let list: Vec<&Operand<'a>> = match vals {
                    Operand::Vec(v) => v.iter().collect(),
                    o => vec![o],
                };
                if list.len() != n as usize {
                    return Err("vector size mismatch".into());
                }
                if base == "st" {
                    let mut s = [Op::I(0); 4];
                    for (k, o) in list.iter().enumerate() {
                        s[k] = self.src(o, t)?;
                    }
                    self.emit(i, Inst::St { sp, t, n, s, addr })
                } else {
                    let mut d = [SINK_REG; 4];
                    for (k, o) in list.iter().enumerate() {
                        d[k] = self.dst(o)?;
                    }
                    self.emit(i, Inst::Ld { sp, t, n, d, addr })
                }
            }
            "tex" | "tld4" | "suld" | "sust" => {
                use crate::tex::Geom;
                let geom = mods
                    .iter()
                    .find_map(|m| Geom::parse(m))
                    .ok_or("multisample textures and surfaces not supported")?;
                let sampled = matches!(base, "tex" | "tld4");
                if !sampled && matches!(geom, Geom::Cube | Geom::ACube) {
                    return Err("cube surfaces are addressed as a2d".into());
                }
                if base == "tld4" && matches!(geom, Geom::D1 | Geom::D3 | Geom::A1) {
                    return Err("tld4 gathers from 2-D textures only".into());
                }
                if has("level") || has("grad") || has("p") {
                    return Err(format!(
                        "{} with levels, gradients or formatted data not supported",
                        base
                    ));
                }
                Self::ops_n(i, 2)?;
                let (addr, values) = if base == "sust" {
                    (&ops[0], &ops[1])
                } else {
                    (&ops[1], &ops[0])
                };
                let Operand::TexAddr(object, coords) = addr else {
                    return Err("expected [object, coordinates]".into());
                };
                let coord_ty = if sampled { ty()? } else { Ty::S32 };
                let coords: Vec<&Operand<'a>> = match coords.as_ref() {
                    Operand::Vec(v) => v.iter().collect(),
                    o => vec![o],
                };
                // A layered geometry's vector starts with the layer index.
                let first = usize::from(geom.layered());
                if coords.len() < first + geom.coords() {
                    return Err("too few coordinates".into());
                }
                let layer = if geom.layered() {
                    self.src(coords[0], Ty::S32)?
                } else {
                    Op::I(0)
                };
                let mut c = [Op::I(0); 3];
                for k in 0..geom.coords() {
                    c[k] = self.src(coords[first + k], coord_ty)?;
                }
                let handle = self.src(&Operand::Name(object), Ty::U64)?;
                let list: Vec<&Operand<'a>> = match values {
                    Operand::Vec(v) => v.iter().collect(),
                    o => vec![o],
                };
                if sampled {
                    if list.len() != 4 {
                        return Err(format!("{base} returns four values"));
                    }
                    let mut d = [SINK_REG; 4];
                    for (k, o) in list.iter().enumerate() {
                        d[k] = self.dst(o)?;
                    }
                    let gather = if base == "tld4" {
                        Some(
                            ["r", "g", "b", "a"]
                                .iter()
                                .position(|comp| has(comp))
                                .ok_or("tld4 without a component")?
                                as u8,
                        )
                    } else {
                        None
                    };
                    let int_coords = coord_ty != Ty::F32;
                    return self.emit(
                        i,
                        Inst::Tex {
                            geom,
                            int_coords,
                            gather,
                            d,
                            tex: handle,
                            c,
                            layer,
                        },
                    );
                }
                let t = *types.first().ok_or("missing type")?;
                if !matches!(t, Ty::B8 | Ty::B16 | Ty::B32 | Ty::B64) {
                    return Err("surface data must be .b8, .b16, .b32 or .b64".into());
                }
                let n = if has("v4") {
                    4
                } else if has("v2") {
                    2
                } else {
                    1
                };
                if list.len() != n as usize {
                    return Err("vector size mismatch".into());
                }
                let mode = if has("zero") {
                    crate::tex::Boundary::Zero
                } else if has("clamp") {
                    crate::tex::Boundary::Clamp
                } else {
                    crate::tex::Boundary::Trap
                };
                if base == "suld" {
                    let mut d = [SINK_REG; 4];
                    for (k, o) in list.iter().enumerate() {
                        d[k] = self.dst(o)?;
                    }
                    self.emit(
                        i,
                        Inst::Suld {
                            geom,
                            t,
                            n,
                            mode,
                            d,
                            surf: handle,
                            c,
                            layer,
                        },
                    )
                } else {
                    let mut sv = [Op::I(0); 4];
                    for (k, o) in list.iter().enumerate() {
                        sv[k] = self.src(o, t)?;
                    }
                    self.emit(
                        i,
                        Inst::Sust {
                            geom,
                            t,
                            n,
                            mode,
                            s: sv,
                            surf: handle,
                            c,
                            layer,
                        },
                    )
                }
            }
            "atom" | "red" => {
                let t = ty()?;
                if has("v2") || has("v4") {
                    return Err("vector atomics not supported".into());
                }
                let op = mods
                    .iter()
                    .find_map(|m| {
                        Some(match *m {
                            "add" => AtomOp::Add,
                            "min" => AtomOp::Min,
                            "max" => AtomOp::Max,
                            "exch" => AtomOp::Exch,
                            "cas" => AtomOp::Cas,
                            "and" => AtomOp::And,
                            "or" => AtomOp::Or,
                            "xor" => AtomOp::Xor,
                            "inc" => AtomOp::Inc,
                            "dec" => AtomOp::Dec,
                            _ => return None,
                        })
                    })
                    .ok_or("unknown atomic operation")?;
                let sp = space_of(&mods);
                let first = if base == "atom" { 1 } else { 0 };
                Self::ops_n(i, first + 2 + usize::from(op == AtomOp::Cas))?;
                let d = if base == "atom" {
                    self.dst(&ops[0])?
                } else {
                    SINK_REG
                };
                let (sp, addr) = self.addr(&ops[first], sp)?;
                if matches!(sp, MSp::KParam | MSp::FParam) {
                    return Err("atomic on param space".into());
                }
                let b = self.src(&ops[first + 1], t)?;
                let c = if op == AtomOp::Cas {
                    self.src(&ops[first + 2], t)?
                } else {
                    Op::I(0)
                };
                self.emit(
                    i,
                    Inst::Atom {
                        sp,
                        op,
                        t,
                        d,
                        addr,
                        b,
                        c,
                    },
                )
            }
            "bra" | "brx" => {
                if base == "brx" {
                    return Err("indirect branch".into());
                }
                match ops.first() {
                    Some(Operand::Name(l)) => self.branch(i, l),
                    _ => Err("bad branch target".into()),
                }
            }
            "call" => self.call(i),
            "dp4a" | "dp2a" => {
                Self::ops_n(i, 4)?;
                if types.len() != 2 {
                    return Err("dp4a/dp2a need two types".into());
                }
                let two = base == "dp2a";
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], Ty::B32)?;
                let b = self.src(&ops[2], Ty::B32)?;
                let c = self.src(&ops[3], Ty::B32)?;
                let (sa, sb) = (types[0].is_signed(), types[1].is_signed());
                self.emit(
                    i,
                    Inst::Dp {
                        two,
                        hi: has("hi"),
                        sa,
                        sb,
                        d,
                        a,
                        b,
                        c,
                    },
                )
            }
            "cp" if mods.first() == Some(&"async") => {
                if has("commit_group") || has("wait_group") || has("wait_all") {
                    return self.emit(i, Inst::Nop);
                }
                if has("bulk") || has("mbarrier") {
                    return Err("bulk/mbarrier cp.async not supported".into());
                }
                Self::ops_n(i, 3)?;
                let (dsp, dst) = self.addr(&ops[0], MSp::Shared)?;
                let (ssp, src) = self.addr(&ops[1], MSp::Global)?;
                if dsp != MSp::Shared || ssp != MSp::Global {
                    return Err("unexpected state spaces".into());
                }
                let size = match self.src(&ops[2], Ty::U32)? {
                    Op::I(v @ (4 | 8 | 16)) => v as u32,
                    _ => return Err("cp-size must be 4, 8 or 16".into()),
                };
                let src_size = match ops.get(3) {
                    Some(o @ (Operand::Name(_) | Operand::Imm(_))) => Some(self.src(o, Ty::U32)?),
                    _ => None,
                };
                self.emit(
                    i,
                    Inst::CpAsync {
                        dst,
                        src,
                        size,
                        src_size,
                    },
                )
            }
            "ret" => self.emit(i, Inst::Ret),
            "exit" => self.emit(i, Inst::Exit),
            "trap" => self.emit(i, Inst::Trap),
            "membar" | "fence" | "prefetch" | "prefetchu" | "nanosleep" | "pmevent" | "brkpt"
            | "griddepcontrol" | "discard" | "applypriority" => self.emit(i, Inst::Nop),
            "bar" | "barrier" => {
                if has("warp") {
                    let mask = match ops.first() {
                        Some(o) => self.src(o, Ty::U32)?,
                        None => Op::I(0xFFFF_FFFF),
                    };
                    return self.emit(i, Inst::WarpSync { mask });
                }
                if has("red") {
                    let op = if has("popc") {
                        ReduxOp::Add
                    } else if has("and") {
                        ReduxOp::And
                    } else if has("or") {
                        ReduxOp::Or
                    } else {
                        return Err("unknown bar.red operation".into());
                    };
                    Self::ops_n(i, 3)?;
                    let d = self.dst(&ops[0])?;
                    let id = self.src(&ops[1], Ty::U32)?;
                    let (p, neg) = self.pred(ops.last().unwrap())?;
                    if ops.len() > 3 {
                        return Err("bar.red with thread count not supported".into());
                    }
                    return self.emit(
                        i,
                        Inst::BarRed {
                            op,
                            popc: has("popc"),
                            id,
                            d,
                            p,
                            neg,
                        },
                    );
                }
                let arrive = has("arrive");
                if !arrive && !has("sync") && !mods.is_empty() && !has("cta") && !has("aligned") {
                    return Err("unknown barrier variant".into());
                }
                let id = match ops.first() {
                    Some(o) => self.src(o, Ty::U32)?,
                    None => Op::I(0),
                };
                let count = match ops.get(1) {
                    Some(o) => Some(self.src(o, Ty::U32)?),
                    None => None,
                };
                self.emit(i, Inst::Bar { id, count, arrive })
            }
            "shfl" => {
                Self::ops_n(i, 4)?;
                let mode = if has("up") {
                    ShflMode::Up
                } else if has("down") {
                    ShflMode::Down
                } else if has("bfly") {
                    ShflMode::Bfly
                } else if has("idx") {
                    ShflMode::Idx
                } else {
                    return Err("unknown shfl mode".into());
                };
                let (d, p) = match &ops[0] {
                    Operand::Pair(x, y) => (self.reg(x)?, self.reg(y)?),
                    o => (self.dst(o)?, SINK_REG),
                };
                let a = self.src(&ops[1], Ty::B32)?;
                let b = self.src(&ops[2], Ty::U32)?;
                let c = self.src(&ops[3], Ty::U32)?;
                let mask = match ops.get(4) {
                    Some(o) => self.src(o, Ty::U32)?,
                    None => Op::I(0xFFFF_FFFF),
                };
                self.emit(
                    i,
                    Inst::Shfl {
                        mode,
                        d,
                        p,
                        a,
                        b,
                        c,
                        mask,
                    },
                )
            }
            "vote" => {
                Self::ops_n(i, 2)?;
                let mode = if has("all") {
                    VoteMode::All
                } else if has("any") {
                    VoteMode::Any
                } else if has("uni") {
                    VoteMode::Uni
                } else if has("ballot") {
                    VoteMode::Ballot
                } else {
                    return Err("unknown vote mode".into());
                };
                let d = self.dst(&ops[0])?;
                let (a, neg) = self.pred(&ops[1])?;
                let mask = match ops.get(2) {
                    Some(o) => self.src(o, Ty::U32)?,
                    None => Op::I(0xFFFF_FFFF),
                };
                self.emit(
                    i,
                    Inst::Vote {
                        mode,
                        d,
                        a,
                        neg,
                        mask,
                    },
                )
            }
            "activemask" => {
                Self::ops_n(i, 1)?;
                let d = self.dst(&ops[0])?;
                self.emit(i, Inst::Activemask { d })
            }
            "redux" => {
                let t = ty()?;
                Self::ops_n(i, 3)?;
                let op = if has("add") {
                    ReduxOp::Add
                } else if has("min") {
                    ReduxOp::Min
                } else if has("max") {
                    ReduxOp::Max
                } else if has("and") {
                    ReduxOp::And
                } else if has("or") {
                    ReduxOp::Or
                } else if has("xor") {
                    ReduxOp::Xor
                } else {
                    return Err("unknown redux operation".into());
                };
                if t.is_float() {
                    return Err("float redux not supported".into());
                }
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], t)?;
                let mask = self.src(&ops[2], Ty::U32)?;
                self.emit(i, Inst::Redux { op, t, d, a, mask })
            }
            "match" => {
                let t = ty()?;
                Self::ops_n(i, 3)?;
                let a = self.src(&ops[1], t)?;
                let mask = self.src(&ops[2], Ty::U32)?;
                if has("any") {
                    let d = self.dst(&ops[0])?;
                    self.emit(i, Inst::MatchAny { t, d, a, mask })
                } else {
                    let (d, p) = match &ops[0] {
                        Operand::Pair(x, y) => (self.reg(x)?, self.reg(y)?),
                        o => (self.dst(o)?, SINK_REG),
                    };
                    self.emit(i, Inst::MatchAll { t, d, p, a, mask })
                }
            }
            _ => Err("not supported by the interpreter".into()),
        }
    }

    /// Appends the float `.sat` clamp to [0, 1] after an arithmetic result.
    fn sat(&mut self, i: &PInst<'a>, t: Ty, d: u32, sat: bool) -> DResult<()> {
        if sat && t.is_float() {
            self.emit(
                i,
                Inst::Cvt {
                    dt: t,
                    st: t,
                    rnd: Rnd::None,
                    sat: true,
                    d,
                    a: Op::R(d),
                },
            )?;
        }
        Ok(())
    }
}
