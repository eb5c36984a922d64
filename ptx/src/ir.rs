//! Decoded instruction form executed by the interpreter.

/// Scalar PTX types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    BF16,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub(crate) fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "bf16" => Ty::BF16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    pub(crate) fn bits(self) -> u32 {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::BF16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
            Ty::Pred => 1,
        }
    }

    /// Size in bytes in memory (predicates are not storable; treat as 1).
    pub(crate) fn bytes(self) -> usize {
        (self.bits() as usize).div_ceil(8)
    }

    pub(crate) fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::BF16 | Ty::F32 | Ty::F64)
    }
}

/// Source operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op {
    /// Register slot of the current thread.
    R(u32),
    /// Immediate bits (floats already converted to the instruction's type).
    I(u64),
    /// Special register.
    S(Sreg),
    /// Device address of module variable `n` (resolved per launch).
    G(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sreg {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    LaneMaskEq,
    LaneMaskLt,
    LaneMaskLe,
    LaneMaskGt,
    LaneMaskGe,
    Clock,
    Clock64,
    GlobalTimer,
    SmId,
    NSmId,
    GridId,
    DynSmem,
    TotalSmem,
    /// `%envreg<n>`: what the driver passes a kernel; here the grid-sync
    /// workspace of a cooperative launch (1: its high half, 2: its low half).
    EnvReg(u8),
}

/// Address operand: `base + off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Addr {
    pub(crate) base: Op,
    pub(crate) off: i64,
}

/// Memory state space of a load/store/atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MSp {
    /// Device memory (`.global` and `.const`).
    Global,
    Shared,
    Local,
    /// Kernel parameter buffer.
    KParam,
    /// Per-thread `.param` scratch of `.func` calls.
    FParam,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    MulLo,
    MulHi,
    MulWide,
    Mul24Lo,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
    CopySign,
    /// Add with carry-in from / carry-out to the CC register.
    AddX {
        cin: bool,
        cout: bool,
    },
    /// Subtract with borrow-in / borrow-out.
    SubX {
        cin: bool,
        cout: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnOp {
    Abs,
    Neg,
    Not,
    CNot,
    Popc,
    Clz,
    Brev,
    Bfind,
    BfindShift,
    Sqrt,
    Rsqrt,
    Rcp,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
    /// `cvt.{rna,rn,rz}.tf32.f32`: an f32 rounded to tf32's 10 mantissa bits
    /// (`true`: away from zero at a tie, `false`: to even; `None` in the
    /// rounding slot below means toward zero), held in 32 bits.
    Tf32(Option<bool>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TernOp {
    MadLo,
    MadHi,
    MadWide,
    Mad24Lo,
    Fma,
    Bfe,
    Sad,
    ShfL,
    ShfR,
    ShfLClamp,
    ShfRClamp,
    Prmt(u8),
    Selp,
    /// mad.lo/hi with carry-in and/or carry-out.
    MadX {
        hi: bool,
        cin: bool,
        cout: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PackedOp {
    Bin(BinOp),
    Un(UnOp),
    Fma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoolOp {
    And,
    Or,
    Xor,
}

/// Rounding mode of `cvt` and float arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rnd {
    /// No explicit mode given.
    None,
    Rn,
    Rz,
    Rm,
    Rp,
    Rni,
    Rzi,
    Rmi,
    Rpi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtomOp {
    Add,
    Min,
    Max,
    Exch,
    Cas,
    And,
    Or,
    Xor,
    Inc,
    Dec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReduxOp {
    Add,
    Min,
    Max,
    And,
    Or,
    Xor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestP {
    Finite,
    Infinite,
    Number,
    NotANumber,
    Normal,
    Subnormal,
}

/// Byte copy between per-thread param scratch / registers for `call`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ParamMove {
    /// Copy `size` bytes of scratch from `src` to `dst`.
    Copy { src: u32, dst: u32, size: u32 },
    /// Write operand into scratch at `dst`.
    FromOp { op: Op, dst: u32, size: u32 },
    /// Read scratch at `src` into register.
    ToReg { src: u32, reg: u32, size: u32 },
    /// Register (or immediate) to register, for `.reg` formals.
    RegMove { op: Op, reg: u32 },
}

/// Decoded instruction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inst {
    Mov {
        d: u32,
        a: Op,
    },
    Bin {
        op: BinOp,
        t: Ty,
        d: u32,
        a: Op,
        b: Op,
    },
    Un {
        op: UnOp,
        t: Ty,
        d: u32,
        a: Op,
    },
    Tern {
        op: TernOp,
        t: Ty,
        d: u32,
        a: Op,
        b: Op,
        c: Op,
    },
    Bfi {
        t: Ty,
        d: u32,
        a: Op,
        b: Op,
        c: Op,
        e: Op,
    },
    Setp {
        cmp: Cmp,
        t: Ty,
        d: u32,
        d2: u32,
        a: Op,
        b: Op,
        comb: Option<(BoolOp, Op, bool)>,
    },
    Set {
        cmp: Cmp,
        dt: Ty,
        t: Ty,
        d: u32,
        a: Op,
        b: Op,
        comb: Option<(BoolOp, Op, bool)>,
    },
    /// Predicate logic: and/or/xor/not on .pred.
    PredBin {
        op: BoolOp,
        d: u32,
        a: Op,
        b: Op,
    },
    TestP {
        op: TestP,
        t: Ty,
        d: u32,
        a: Op,
    },
    Cvt {
        dt: Ty,
        st: Ty,
        rnd: Rnd,
        sat: bool,
        d: u32,
        a: Op,
    },
    /// cvta: `to` = generic -> space, else space -> generic.
    Cvta {
        to: bool,
        sp: MSp,
        d: u32,
        a: Op,
    },
    IsSpace {
        sp: MSp,
        d: u32,
        a: Op,
    },
    Ld {
        sp: MSp,
        t: Ty,
        n: u8,
        d: [u32; 4],
        addr: Addr,
    },
    St {
        sp: MSp,
        t: Ty,
        n: u8,
        s: [Op; 4],
        addr: Addr,
    },
    Atom {
        sp: MSp,
        op: AtomOp,
        t: Ty,
        d: u32,
        addr: Addr,
        b: Op,
        c: Op,
    },
    /// `mov.b64 %rd, {%r1, %r2}`.
    Pack {
        ebits: u32,
        d: u32,
        s: Vec<Op>,
    },
    /// `mov.b64 {%r1, %r2}, %rd`.
    Unpack {
        ebits: u32,
        d: Vec<u32>,
        a: Op,
    },
    Bra {
        tgt: u32,
    },
    Call {
        tgt: u32,
        args: Vec<ParamMove>,
        rets: Vec<ParamMove>,
    },
    Ret,
    Exit,
    Trap,
    Nop,
    Bar {
        id: Op,
        count: Option<Op>,
        arrive: bool,
    },
    /// bar.red.popc/and/or: d = reduction over block.
    BarRed {
        op: ReduxOp,
        popc: bool,
        id: Op,
        d: u32,
        p: Op,
        neg: bool,
    },
    Shfl {
        mode: ShflMode,
        d: u32,
        p: u32,
        a: Op,
        b: Op,
        c: Op,
        mask: Op,
    },
    Vote {
        mode: VoteMode,
        d: u32,
        a: Op,
        neg: bool,
        mask: Op,
    },
    Activemask {
        d: u32,
    },
    /// `bar.warp.sync` / `__syncwarp`.
    WarpSync {
        mask: Op,
    },
    Redux {
        op: ReduxOp,
        t: Ty,
        d: u32,
        a: Op,
        mask: Op,
    },
    MatchAny {
        t: Ty,
        d: u32,
        a: Op,
        mask: Op,
    },
    MatchAll {
        t: Ty,
        d: u32,
        p: u32,
        a: Op,
        mask: Op,
    },
    /// Body of a device-runtime function; `params`/`ret` are (offset, size)
    /// of its formals in the param scratch.
    Builtin {
        which: crate::builtins::Builtin,
        params: Vec<(u32, u32)>,
        ret: Option<(u32, u32)>,
    },
    /// `cp.async` (executed synchronously): shared `dst` <- global `src`.
    CpAsync {
        dst: Addr,
        src: Addr,
        size: u32,
        src_size: Option<Op>,
    },
    /// Two-lane packed arithmetic (`add.f16x2`, `max.s16x2`, ...) on 16-bit lanes of type `t`.
    Packed {
        op: PackedOp,
        t: Ty,
        d: u32,
        a: Op,
        b: Op,
        c: Op,
    },
    /// `cvt.rn.f16x2.f32 d, a, b`: d = {hi: cvt(a), lo: cvt(b)}.
    CvtX2 {
        dt: Ty,
        st: Ty,
        rnd: Rnd,
        d: u32,
        a: Op,
        b: Op,
    },
    /// `dp4a` / `dp2a.lo|hi` dot products; `sa`/`sb`: operands signed.
    Dp {
        two: bool,
        hi: bool,
        sa: bool,
        sb: bool,
        d: u32,
        a: Op,
        b: Op,
        c: Op,
    },
    /// `tex.{1d,2d,3d,a1d,a2d,cube,acube}.v4.{f32,s32,u32}.{f32,s32}`: four
    /// results; with `gather`, `tld4.{r,g,b,a}` of that component.
    Tex {
        geom: crate::tex::Geom,
        int_coords: bool,
        gather: Option<u8>,
        d: [u32; 4],
        tex: Op,
        c: [Op; 3],
        /// The layer index of a layered geometry.
        layer: Op,
    },
    /// `suld.b.{1d,2d,3d,a1d,a2d}{.v2,.v4}.{b8..b64}.{trap,clamp,zero}`.
    Suld {
        geom: crate::tex::Geom,
        t: Ty,
        n: u8,
        mode: crate::tex::Boundary,
        d: [u32; 4],
        surf: Op,
        c: [Op; 3],
        layer: Op,
    },
    /// `sust.b.{1d,2d,3d,a1d,a2d}{.v2,.v4}.{b8..b64}.{trap,clamp,zero}`.
    Sust {
        geom: crate::tex::Geom,
        t: Ty,
        n: u8,
        mode: crate::tex::Boundary,
        s: [Op; 4],
        surf: Op,
        c: [Op; 3],
        layer: Op,
    },
    /// A call through a function pointer: the case of the function it names.
    CallIndirect {
        pointer: Op,
        cases: Vec<IndirectCase>,
    },
    /// `wmma.load.{a,b,c}`: this lane's part of a fragment, from memory.
    WmmaLoad {
        frag: Frag,
        shape: [u32; 3],
        el: WmmaEl,
        row: bool,
        sp: MSp,
        addr: Addr,
        stride: Op,
        d: Vec<u32>,
    },
    /// `wmma.store.d`: this lane's part of a fragment, to memory.
    WmmaStore {
        shape: [u32; 3],
        el: WmmaEl,
        row: bool,
        sp: MSp,
        addr: Addr,
        stride: Op,
        s: Vec<Op>,
    },
    /// `wmma.mma` and `mma.sync`: D = A·B + C over the whole warp's fragments
    /// (`mma.sync`'s in the layout the PTX ISA gives them).
    WmmaMma {
        mma_sync: bool,
        shape: [u32; 3],
        ab: WmmaEl,
        c_el: WmmaEl,
        d_el: WmmaEl,
        d: Vec<u32>,
        a: Vec<Op>,
        b: Vec<Op>,
        c: Vec<Op>,
    },
    /// Placeholder for an instruction the interpreter cannot run.
    Unsupported,
}

/// One possible target of an indirect call, and how its arguments and results
/// move.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IndirectCase {
    /// The function's number in its module.
    pub(crate) function: u32,
    pub(crate) tgt: u32,
    pub(crate) args: Vec<ParamMove>,
    pub(crate) rets: Vec<ParamMove>,
}

/// Which matrix a `wmma` fragment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frag {
    A,
    B,
    C,
}

/// The element type of a `wmma` fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WmmaEl {
    F16,
    Bf16,
    Tf32,
    F32,
}

impl WmmaEl {
    /// Elements per 32-bit register.
    pub(crate) fn per_reg(self) -> usize {
        match self {
            WmmaEl::F16 | WmmaEl::Bf16 => 2,
            WmmaEl::Tf32 | WmmaEl::F32 => 1,
        }
    }

    /// Bytes of one element in memory.
    pub(crate) fn bytes(self) -> usize {
        4 / self.per_reg()
    }
}

impl Inst {
    /// Does this instruction synchronise the threads of a warp?
    pub(crate) fn is_warp_op(&self) -> bool {
        matches!(
            self,
            Inst::Shfl { .. }
                | Inst::Vote { .. }
                | Inst::Activemask { .. }
                | Inst::WarpSync { .. }
                | Inst::Redux { .. }
                | Inst::MatchAny { .. }
                | Inst::MatchAll { .. }
                | Inst::WmmaMma { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Instr {
    /// Predicate register and whether it is negated.
    pub(crate) guard: Option<(u32, bool)>,
    pub(crate) inst: Inst,
    pub(crate) line: u32,
}

/// A kernel linked with all functions it calls, ready to run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prog {
    pub(crate) name: String,
    pub(crate) code: Vec<Instr>,
    /// Register slots per thread (including the carry flag and sink slots).
    pub(crate) nregs: usize,
    pub(crate) local_bytes: usize,
    pub(crate) pscratch_bytes: usize,
    pub(crate) static_shared: usize,
    /// Offset of dynamic (extern) shared memory.
    pub(crate) dyn_shared_base: usize,
    /// Module variables referenced by `Op::G(i)`.
    pub(crate) gsyms: Vec<String>,
    pub(crate) uses_warp_ops: bool,
}

/// Register slot holding the carry flag of add.cc/addc.
pub(crate) const CC_REG: u32 = 0;
/// Register slot that absorbs writes to `_`.
pub(crate) const SINK_REG: u32 = 1;
