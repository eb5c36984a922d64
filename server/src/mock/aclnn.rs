//! The mock's stand-in for an Ascend device's aclnn operators: each runs on the
//! CPU over the session's device memory, as the operator's CANN documentation
//! defines it. Results are those of CPU PyTorch bit for bit where the operation
//! is exact (elementwise arithmetic, copies, casts, fills: each step rounded to
//! the result's type as PyTorch's CPU kernels round it); reductions and matrix
//! products accumulate in f64 and round once, so they may differ from PyTorch's
//! own (f32, blocked) order in the last bits. An operator not here is refused
//! at its first phase, by name.

use std::collections::HashMap;

use xpupool_protocol::aclnn::{AclnnArg, TensorDesc};
use xpupool_protocol::{code, CuError};

use super::memory::SessionMemory;

/// Executors a session may hold between their two phases.
pub(super) const MAX_EXECUTORS: usize = 4096;
/// Elements one tensor of an operator may have here: the values are held as
/// f64 or i64 (8 bytes each) while the operator runs.
const MAX_ELEMENTS: u64 = 1 << 27;

/// An operator the stand-in device runs, and the parameters of its first phase.
pub(super) struct Prepared {
    op: Op,
    args: Vec<AclnnArg>,
}

/// `aclDataType` values.
mod dt {
    pub(super) const FLOAT: i32 = 0;
    pub(super) const FLOAT16: i32 = 1;
    pub(super) const INT8: i32 = 2;
    pub(super) const INT32: i32 = 3;
    pub(super) const UINT8: i32 = 4;
    pub(super) const INT16: i32 = 6;
    pub(super) const UINT16: i32 = 7;
    pub(super) const UINT32: i32 = 8;
    pub(super) const INT64: i32 = 9;
    pub(super) const UINT64: i32 = 10;
    pub(super) const DOUBLE: i32 = 11;
    pub(super) const BOOL: i32 = 12;
    pub(super) const BF16: i32 = 27;
}

fn elem_size(dtype: i32) -> Option<usize> {
    Some(match dtype {
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::FLOAT16 | dt::BF16 | dt::INT16 | dt::UINT16 => 2,
        dt::INT8 | dt::UINT8 | dt::BOOL => 1,
        dt::INT64 | dt::UINT64 | dt::DOUBLE => 8,
        _ => return None,
    })
}

fn is_float(dtype: i32) -> bool {
    matches!(dtype, dt::FLOAT | dt::FLOAT16 | dt::BF16 | dt::DOUBLE)
}

fn unsupported(why: impl Into<String>) -> CuError {
    CuError::new(code::NOT_SUPPORTED, why)
}

fn invalid(why: impl Into<String>) -> CuError {
    CuError::new(code::INVALID_VALUE, why)
}

/// Rounds `x` to a value of `dtype`, as storing it there would.
fn round(dtype: i32, x: f64) -> f64 {
    match dtype {
        dt::FLOAT => x as f32 as f64,
        dt::FLOAT16 => f16_to_f64(f64_to_f16(x)),
        dt::BF16 => bf16_to_f64(f64_to_bf16(x)),
        dt::DOUBLE => x,
        // Integers: toward zero, saturating, as a cast.
        dt::BOOL => f64::from(u8::from(x != 0.0)),
        _ => from_i64(dtype, x as i64) as f64,
    }
}

/// An elementwise result stored as `dtype`: PyTorch's CPU kernels compute the
/// half types in f32 (their "opmath" type) and round that, so they are rounded
/// to f32 first.
fn round_result(dtype: i32, x: f64) -> f64 {
    match dtype {
        dt::FLOAT16 | dt::BF16 => round(dtype, x as f32 as f64),
        _ => round(dtype, x),
    }
}

/// Wraps `v` to `dtype`'s range, as C's conversion to it does.
fn from_i64(dtype: i32, v: i64) -> i64 {
    match dtype {
        dt::INT8 => i64::from(v as i8),
        dt::UINT8 => i64::from(v as u8),
        dt::INT16 => i64::from(v as i16),
        dt::UINT16 => i64::from(v as u16),
        dt::INT32 => i64::from(v as i32),
        dt::UINT32 => i64::from(v as u32),
        dt::BOOL => i64::from(v != 0),
        _ => v,
    }
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        0x1f if frac == 0.0 => f64::INFINITY,
        0x1f => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Round to nearest, ties to even.
fn f64_to_f16(x: f64) -> u16 {
    let sign: u16 = if x.is_sign_negative() { 0x8000 } else { 0 };
    let a = x.abs();
    if a.is_nan() {
        return sign | 0x7e00;
    }
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    // In units of the smallest subnormal (2^-24) below 2^-14, else of the
    // exponent's ulp.
    let exp = if a < 2f64.powi(-14) {
        -14
    } else {
        a.log2().floor() as i32
    };
    let ulp = 2f64.powi(exp - 10);
    let q = (a / ulp).round_ties_even();
    let (exp, q) = if q >= 2048.0 {
        (exp + 1, q / 2.0)
    } else {
        (exp, q)
    };
    if q < 1024.0 {
        // Subnormal (exp is -14 here).
        return sign | q as u16;
    }
    sign | (((exp + 15) as u16) << 10) | ((q as u16) & 0x3ff)
}

fn bf16_to_f64(b: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(b) << 16))
}

fn f64_to_bf16(x: f64) -> u16 {
    let bits = (x as f32).to_bits();
    if (x as f32).is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// A tensor's elements in row-major order of its view: f64 for float types,
/// i64 for the others.
#[derive(Debug, Clone)]
enum Values {
    F(Vec<f64>),
    I(Vec<i64>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::F(v) => v.len(),
            Values::I(v) => v.len(),
        }
    }

    fn f64s(&self) -> Vec<f64> {
        match self {
            Values::F(v) => v.clone(),
            Values::I(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    fn get_f(&self, i: usize) -> f64 {
        match self {
            Values::F(v) => v[i],
            Values::I(v) => v[i] as f64,
        }
    }
}

fn numel(dims: &[i64]) -> Result<u64, CuError> {
    dims.iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            invalid(format!(
                "a tensor of shape {dims:?} (at most {MAX_ELEMENTS} elements here)"
            ))
        })
}

/// The element offsets (from `data`, in elements) of a view, in row-major order.
fn offsets(t: &TensorDesc) -> Result<Vec<u64>, CuError> {
    let n = numel(&t.dims)? as usize;
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    let rank = t.dims.len();
    let mut index = vec![0i64; rank];
    for _ in 0..n {
        let at = index
            .iter()
            .zip(&t.strides)
            .try_fold(t.offset, |acc, (&i, &s)| acc.checked_add(i.checked_mul(s)?))
            .filter(|&a| a >= 0)
            .ok_or_else(|| invalid("a tensor view reaches before its storage"))?;
        out.push(at as u64);
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < t.dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

/// The span of device memory a view touches: `(first byte, bytes)`.
fn span(t: &TensorDesc, offsets: &[u64]) -> Result<(u64, u64), CuError> {
    let size = elem_size(t.dtype)
        .ok_or_else(|| unsupported(format!("aclDataType {} on the stand-in device", t.dtype)))?
        as u64;
    let (Some(&lo), Some(&hi)) = (offsets.iter().min(), offsets.iter().max()) else {
        return Ok((t.data, 0));
    };
    let start = lo
        .checked_mul(size)
        .and_then(|b| t.data.checked_add(b))
        .ok_or_else(|| invalid("a tensor past the address space"))?;
    Ok((start, (hi - lo + 1) * size))
}

fn load(memory: &SessionMemory, t: &TensorDesc) -> Result<Values, CuError> {
    let at = offsets(t)?;
    let (start, bytes) = span(t, &at)?;
    if bytes == 0 {
        return Ok(if is_float(t.dtype) {
            Values::F(vec![])
        } else {
            Values::I(vec![])
        });
    }
    let raw = memory.read(start, bytes)?;
    let size = elem_size(t.dtype).unwrap_or(1);
    let lo = at.iter().min().copied().unwrap_or(0);
    let elem = |o: u64| &raw[(o - lo) as usize * size..][..size];
    let le2 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    let le4 = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    let le8 = |b: &[u8]| [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    Ok(match t.dtype {
        dt::FLOAT => Values::F(
            at.iter()
                .map(|&o| f64::from(f32::from_le_bytes(le4(elem(o)))))
                .collect(),
        ),
        dt::DOUBLE => Values::F(
            at.iter()
                .map(|&o| f64::from_le_bytes(le8(elem(o))))
                .collect(),
        ),
        dt::FLOAT16 => Values::F(at.iter().map(|&o| f16_to_f64(le2(elem(o)))).collect()),
        dt::BF16 => Values::F(at.iter().map(|&o| bf16_to_f64(le2(elem(o)))).collect()),
        dt::INT8 => Values::I(at.iter().map(|&o| i64::from(elem(o)[0] as i8)).collect()),
        dt::UINT8 => Values::I(at.iter().map(|&o| i64::from(elem(o)[0])).collect()),
        dt::BOOL => Values::I(at.iter().map(|&o| i64::from(elem(o)[0] != 0)).collect()),
        dt::INT16 => Values::I(at.iter().map(|&o| i64::from(le2(elem(o)) as i16)).collect()),
        dt::UINT16 => Values::I(at.iter().map(|&o| i64::from(le2(elem(o)))).collect()),
        dt::INT32 => Values::I(
            at.iter()
                .map(|&o| i64::from(i32::from_le_bytes(le4(elem(o)))))
                .collect(),
        ),
        dt::UINT32 => Values::I(
            at.iter()
                .map(|&o| i64::from(u32::from_le_bytes(le4(elem(o)))))
                .collect(),
        ),
        dt::INT64 | dt::UINT64 => Values::I(
            at.iter()
                .map(|&o| i64::from_le_bytes(le8(elem(o))))
                .collect(),
        ),
        other => {
            return Err(unsupported(format!(
                "aclDataType {other} on the stand-in device"
            )))
        }
    })
}

/// Writes `values` (in the view's row-major order) into `t`, converted to its type.
fn store(memory: &SessionMemory, t: &TensorDesc, values: &Values) -> Result<(), CuError> {
    let at = offsets(t)?;
    if at.len() != values.len() {
        return Err(invalid(format!(
            "an operator made {} values for a tensor of {}",
            values.len(),
            at.len()
        )));
    }
    let (start, bytes) = span(t, &at)?;
    if bytes == 0 {
        return Ok(());
    }
    // Read first: a strided view leaves the bytes between its elements as they are.
    let mut raw = memory.read(start, bytes)?;
    let size = elem_size(t.dtype).unwrap_or(1);
    let lo = at.iter().min().copied().unwrap_or(0);
    for (i, &o) in at.iter().enumerate() {
        let out = &mut raw[(o - lo) as usize * size..][..size];
        let int = |v: &Values| match v {
            Values::I(v) => v[i],
            Values::F(v) => v[i] as i64,
        };
        match t.dtype {
            dt::FLOAT => out.copy_from_slice(&(values.get_f(i) as f32).to_le_bytes()),
            dt::DOUBLE => out.copy_from_slice(&values.get_f(i).to_le_bytes()),
            dt::FLOAT16 => out.copy_from_slice(&f64_to_f16(values.get_f(i)).to_le_bytes()),
            dt::BF16 => out.copy_from_slice(&f64_to_bf16(values.get_f(i)).to_le_bytes()),
            dt::BOOL => out[0] = u8::from(values.get_f(i) != 0.0),
            dt::INT8 | dt::UINT8 => out[0] = int(values) as u8,
            dt::INT16 | dt::UINT16 => out.copy_from_slice(&(int(values) as u16).to_le_bytes()),
            dt::INT32 | dt::UINT32 => out.copy_from_slice(&(int(values) as u32).to_le_bytes()),
            _ => out.copy_from_slice(&int(values).to_le_bytes()),
        }
    }
    memory.write(start, &raw)
}

/// `values` of shape `from`, broadcast to shape `to` (NumPy's rules).
fn broadcast(values: &Values, from: &[i64], to: &[i64]) -> Result<Values, CuError> {
    if from == to {
        return Ok(values.clone());
    }
    if from.len() > to.len() {
        return Err(invalid(format!(
            "shape {from:?} does not broadcast to {to:?}"
        )));
    }
    let pad = to.len() - from.len();
    for (i, &d) in from.iter().enumerate() {
        if d != 1 && d != to[pad + i] {
            return Err(invalid(format!(
                "shape {from:?} does not broadcast to {to:?}"
            )));
        }
    }
    let n = numel(to)? as usize;
    let mut source = Vec::with_capacity(n);
    let mut index = vec![0i64; to.len()];
    for _ in 0..n {
        let mut at = 0i64;
        for (i, &d) in from.iter().enumerate() {
            at = at * d + if d == 1 { 0 } else { index[pad + i] };
        }
        source.push(at as usize);
        for d in (0..to.len()).rev() {
            index[d] += 1;
            if index[d] < to[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(match values {
        Values::F(v) => Values::F(source.iter().map(|&i| v[i]).collect()),
        Values::I(v) => Values::I(source.iter().map(|&i| v[i]).collect()),
    })
}

/// A scalar's value.
fn scalar(dtype: i32, bytes: &[u8]) -> Result<f64, CuError> {
    let size =
        elem_size(dtype).ok_or_else(|| unsupported(format!("a scalar of aclDataType {dtype}")))?;
    if bytes.len() < size {
        return Err(invalid(format!(
            "a scalar of aclDataType {dtype} in {} bytes",
            bytes.len()
        )));
    }
    let b = bytes;
    Ok(match dtype {
        dt::FLOAT => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        dt::DOUBLE => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        dt::FLOAT16 => f16_to_f64(u16::from_le_bytes([b[0], b[1]])),
        dt::BF16 => bf16_to_f64(u16::from_le_bytes([b[0], b[1]])),
        dt::INT8 => f64::from(b[0] as i8),
        dt::UINT8 => f64::from(b[0]),
        dt::BOOL => f64::from(u8::from(b[0] != 0)),
        dt::INT16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
        dt::UINT16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
        dt::INT32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        dt::UINT32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        _ => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64,
    })
}

/// The operators the stand-in device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Fill(Fill),
    Binary(Binary, Form),
    /// A binary operator over lists of tensors; with a scalar second operand.
    Foreach(Binary, bool),
    Unary(Unary),
    Cast,
    InplaceCopy,
    Mm,
    Addmm,
    ThresholdBackward,
    MseLoss,
    MseLossBackward,
    Reduce(Reduce),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    One,
    Zero,
    Scalar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

/// How a binary operator takes its operands: `(self, other[, alpha], out)` with
/// `other` a tensor or a scalar, or in place into `self`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Form {
    scalar_other: bool,
    in_place: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unary {
    Neg,
    Relu,
    InplaceRelu,
    Abs,
    Sqrt,
    Exp,
    Sigmoid,
    Tanh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduce {
    Sum,
    Mean,
}

/// The operator `name`, and the parameter kinds its header gives it.
fn operator(name: &str) -> Option<(Op, &'static str)> {
    let binary = |b, scalar_other, in_place| {
        Op::Binary(
            b,
            Form {
                scalar_other,
                in_place,
            },
        )
    };
    Some(match name {
        "aclnnInplaceOne" => (Op::Fill(Fill::One), "T"),
        "aclnnInplaceZero" => (Op::Fill(Fill::Zero), "T"),
        "aclnnInplaceFillScalar" => (Op::Fill(Fill::Scalar), "TS"),
        "aclnnAdd" => (binary(Binary::Add, false, false), "TTST"),
        "aclnnAdds" => (binary(Binary::Add, true, false), "TSST"),
        "aclnnInplaceAdd" => (binary(Binary::Add, false, true), "TTS"),
        "aclnnInplaceAdds" => (binary(Binary::Add, true, true), "TSS"),
        "aclnnSub" => (binary(Binary::Sub, false, false), "TTST"),
        "aclnnSubs" => (binary(Binary::Sub, true, false), "TSST"),
        "aclnnInplaceSub" => (binary(Binary::Sub, false, true), "TTS"),
        "aclnnInplaceSubs" => (binary(Binary::Sub, true, true), "TSS"),
        "aclnnMul" => (binary(Binary::Mul, false, false), "TTT"),
        "aclnnMuls" => (binary(Binary::Mul, true, false), "TST"),
        "aclnnInplaceMul" => (binary(Binary::Mul, false, true), "TT"),
        "aclnnInplaceMuls" => (binary(Binary::Mul, true, true), "TS"),
        "aclnnDiv" => (binary(Binary::Div, false, false), "TTT"),
        "aclnnDivs" => (binary(Binary::Div, true, false), "TST"),
        "aclnnInplaceDiv" => (binary(Binary::Div, false, true), "TT"),
        "aclnnInplaceDivs" => (binary(Binary::Div, true, true), "TS"),
        "aclnnForeachAddListV2" => (Op::Foreach(Binary::Add, false), "LLSL"),
        "aclnnForeachAddScalarV2" => (Op::Foreach(Binary::Add, true), "LSL"),
        "aclnnForeachMulScalarV2" => (Op::Foreach(Binary::Mul, true), "LSL"),
        "aclnnNeg" => (Op::Unary(Unary::Neg), "TT"),
        "aclnnRelu" => (Op::Unary(Unary::Relu), "TT"),
        "aclnnInplaceRelu" => (Op::Unary(Unary::InplaceRelu), "T"),
        "aclnnAbs" => (Op::Unary(Unary::Abs), "TT"),
        "aclnnSqrt" => (Op::Unary(Unary::Sqrt), "TT"),
        "aclnnExp" => (Op::Unary(Unary::Exp), "TT"),
        "aclnnSigmoid" => (Op::Unary(Unary::Sigmoid), "TT"),
        "aclnnTanh" => (Op::Unary(Unary::Tanh), "TT"),
        "aclnnCast" => (Op::Cast, "TIT"),
        "aclnnInplaceCopy" => (Op::InplaceCopy, "TT"),
        "aclnnMm" | "aclnnMatmul" => (Op::Mm, "TTTI"),
        "aclnnAddmm" => (Op::Addmm, "TTTSSTI"),
        "aclnnThresholdBackward" => (Op::ThresholdBackward, "TTST"),
        "aclnnMseLoss" => (Op::MseLoss, "TTIT"),
        "aclnnMseLossBackward" => (Op::MseLossBackward, "TTTIT"),
        "aclnnReduceSum" => (Op::Reduce(Reduce::Sum), "TABIT"),
        "aclnnMean" => (Op::Reduce(Reduce::Mean), "TABIT"),
        _ => return None,
    })
}

/// Whether `arg` is of the kind `k` stands for: T tensor, S scalar, I an
/// integer, A an int array, B a bool, L a tensor list.
fn fits(k: char, arg: &AclnnArg) -> bool {
    matches!(
        (k, arg),
        ('T', AclnnArg::Tensor(_))
            | ('S', AclnnArg::Scalar(..))
            | ('I', AclnnArg::I64(_) | AclnnArg::I32(_) | AclnnArg::I8(_))
            | ('A', AclnnArg::IntArray(_))
            | ('B', AclnnArg::Bool(_))
            | ('L', AclnnArg::TensorList(_))
    )
}

/// The first phase: the operator is one the stand-in device runs, with the
/// parameters its header gives it.
pub(super) fn prepare(name: &str, args: Vec<AclnnArg>) -> Result<Prepared, CuError> {
    let (op, kinds) = operator(name).ok_or_else(|| {
        unsupported(format!(
            "{name} is not implemented by the mock's stand-in Ascend device"
        ))
    })?;
    if args.len() != kinds.len() || !kinds.chars().zip(&args).all(|(k, a)| fits(k, a)) {
        return Err(invalid(format!(
            "{name}: parameters {args:?} are not those its header declares"
        )));
    }
    for a in &args {
        a.check().map_err(|why| invalid(format!("{name}: {why}")))?;
        let tensors: Vec<&TensorDesc> = match a {
            AclnnArg::Tensor(t) => vec![t],
            AclnnArg::TensorList(l) => l.iter().flatten().collect(),
            _ => vec![],
        };
        for t in tensors {
            numel(&t.dims)?;
            elem_size(t.dtype).ok_or_else(|| {
                unsupported(format!(
                    "{name}: aclDataType {} on the stand-in device",
                    t.dtype
                ))
            })?;
        }
    }
    Ok(Prepared { op, args })
}

fn tensor(args: &[AclnnArg], i: usize) -> &TensorDesc {
    match &args[i] {
        AclnnArg::Tensor(t) => t,
        other => unreachable!("checked by prepare: {other:?}"),
    }
}

fn scalar_arg(args: &[AclnnArg], i: usize) -> Result<f64, CuError> {
    match &args[i] {
        AclnnArg::Scalar(dtype, bytes) => scalar(*dtype, bytes),
        other => unreachable!("checked by prepare: {other:?}"),
    }
}

fn int_arg(args: &[AclnnArg], i: usize) -> i64 {
    match &args[i] {
        AclnnArg::I64(v) => *v,
        AclnnArg::I32(v) => i64::from(*v),
        AclnnArg::I8(v) => i64::from(*v),
        other => unreachable!("checked by prepare: {other:?}"),
    }
}

/// `f(a, b)` elementwise over `a` and `b` broadcast to `out`'s shape, in
/// `out`'s type (each result rounded to it).
fn elementwise(
    memory: &SessionMemory,
    inputs: &[&TensorDesc],
    out: &TensorDesc,
    f: impl Fn(&[f64]) -> f64,
) -> Result<(), CuError> {
    let columns = inputs
        .iter()
        .map(|t| Ok(broadcast(&load(memory, t)?, &t.dims, &out.dims)?.f64s()))
        .collect::<Result<Vec<_>, CuError>>()?;
    let n = numel(&out.dims)? as usize;
    let mut row = vec![0.0; columns.len()];
    let mut result = Vec::with_capacity(n);
    for i in 0..n {
        for (r, c) in row.iter_mut().zip(&columns) {
            *r = c[i];
        }
        result.push(round_result(out.dtype, f(&row)));
    }
    store(memory, out, &values_of(out.dtype, result))
}

/// f64 results as the values of a tensor of `dtype`.
fn values_of(dtype: i32, v: Vec<f64>) -> Values {
    if is_float(dtype) {
        Values::F(v)
    } else {
        Values::I(v.into_iter().map(|x| x as i64).collect())
    }
}

/// Runs the second phase.
pub(super) fn run(p: &Prepared, memory: &SessionMemory) -> Result<(), CuError> {
    let a = &p.args;
    match p.op {
        Op::Fill(fill) => {
            let t = tensor(a, 0);
            let v = match fill {
                Fill::One => 1.0,
                Fill::Zero => 0.0,
                Fill::Scalar => scalar_arg(a, 1)?,
            };
            let n = numel(&t.dims)? as usize;
            store(memory, t, &values_of(t.dtype, vec![round(t.dtype, v); n]))
        }
        Op::Binary(op, form) => {
            let this = tensor(a, 0);
            let out = if form.in_place {
                this
            } else {
                tensor(a, a.len() - 1)
            };
            let alpha = if matches!(op, Binary::Add | Binary::Sub) {
                Some(scalar_arg(a, 2)?)
            } else {
                None
            };
            let other = if form.scalar_other {
                Other::Scalar(scalar_arg(a, 1)?)
            } else {
                Other::Tensor(tensor(a, 1))
            };
            binary(memory, op, this, other, alpha, out)
        }
        Op::Foreach(op, scalar_other) => {
            let list = |i: usize| match &a[i] {
                AclnnArg::TensorList(l) => l
                    .iter()
                    .map(|t| {
                        t.as_ref()
                            .ok_or_else(|| invalid("a NULL tensor in a foreach list"))
                    })
                    .collect::<Result<Vec<_>, _>>(),
                other => unreachable!("checked by prepare: {other:?}"),
            };
            let (xs, outs) = (list(0)?, list(a.len() - 1)?);
            let (others, alpha) = if scalar_other {
                (vec![Other::Scalar(scalar_arg(a, 1)?); xs.len()], None)
            } else {
                let alpha = if op == Binary::Add {
                    Some(scalar_arg(a, 2)?)
                } else {
                    None
                };
                (list(1)?.into_iter().map(Other::Tensor).collect(), alpha)
            };
            if others.len() != xs.len() || outs.len() != xs.len() {
                return Err(invalid("foreach lists of different lengths"));
            }
            for ((x, other), out) in xs.into_iter().zip(others).zip(outs) {
                binary(memory, op, x, other, alpha, out)?;
            }
            Ok(())
        }
        Op::Unary(u) => {
            let this = tensor(a, 0);
            let out = if u == Unary::InplaceRelu {
                this
            } else {
                tensor(a, 1)
            };
            let single = out.dtype == dt::FLOAT;
            elementwise(memory, &[this], out, |v| {
                let x = v[0];
                // Transcendentals in the result's precision, as PyTorch's f32 kernels.
                let f = |g: fn(f32) -> f32, h: fn(f64) -> f64| {
                    if single {
                        f64::from(g(x as f32))
                    } else {
                        h(x)
                    }
                };
                match u {
                    Unary::Neg => -x,
                    Unary::Relu | Unary::InplaceRelu => {
                        if x > 0.0 || x.is_nan() {
                            x
                        } else {
                            0.0
                        }
                    }
                    Unary::Abs => x.abs(),
                    Unary::Sqrt => x.sqrt(),
                    Unary::Exp => f(f32::exp, f64::exp),
                    Unary::Sigmoid => f(|x| 1.0 / (1.0 + (-x).exp()), |x| 1.0 / (1.0 + (-x).exp())),
                    Unary::Tanh => f(f32::tanh, f64::tanh),
                }
            })
        }
        Op::Cast => {
            let (this, out) = (tensor(a, 0), tensor(a, 2));
            if int_arg(a, 1) != i64::from(out.dtype) {
                return Err(invalid("aclnnCast: the type asked is not the output's"));
            }
            copy_into(memory, this, out)
        }
        Op::InplaceCopy => copy_into(memory, tensor(a, 1), tensor(a, 0)),
        Op::Mm => mm(memory, tensor(a, 0), tensor(a, 1), None, tensor(a, 2)),
        Op::Addmm => {
            let (beta, alpha) = (scalar_arg(a, 3)?, scalar_arg(a, 4)?);
            mm(
                memory,
                tensor(a, 1),
                tensor(a, 2),
                Some((tensor(a, 0), beta, alpha)),
                tensor(a, 5),
            )
        }
        Op::ThresholdBackward => {
            let threshold = scalar_arg(a, 2)?;
            elementwise(memory, &[tensor(a, 0), tensor(a, 1)], tensor(a, 3), |v| {
                if v[1] <= threshold {
                    0.0
                } else {
                    v[0]
                }
            })
        }
        Op::MseLoss => {
            let (x, y, out) = (tensor(a, 0), tensor(a, 1), tensor(a, 3));
            let dtype = out.dtype;
            let shape = broadcast_shape(&x.dims, &y.dims)?;
            let xs = broadcast(&load(memory, x)?, &x.dims, &shape)?.f64s();
            let ys = broadcast(&load(memory, y)?, &y.dims, &shape)?.f64s();
            let sq: Vec<f64> = xs
                .iter()
                .zip(&ys)
                .map(|(p, q)| {
                    let d = round(dtype, p - q);
                    round(dtype, d * d)
                })
                .collect();
            let reduced = match int_arg(a, 2) {
                0 => return store(memory, out, &values_of(dtype, sq)),
                1 => sq.iter().sum::<f64>() / sq.len().max(1) as f64,
                2 => sq.iter().sum::<f64>(),
                r => return Err(invalid(format!("aclnnMseLoss: reduction {r}"))),
            };
            store(memory, out, &values_of(dtype, vec![round(dtype, reduced)]))
        }
        Op::MseLossBackward => {
            let (g, x, y, out) = (tensor(a, 0), tensor(a, 1), tensor(a, 2), tensor(a, 4));
            let n = numel(&out.dims)? as f64;
            let scale = match int_arg(a, 3) {
                1 => 2.0 / n,
                0 | 2 => 2.0,
                r => return Err(invalid(format!("aclnnMseLossBackward: reduction {r}"))),
            };
            let dtype = out.dtype;
            elementwise(memory, &[g, x, y], out, |v| {
                let d = round(dtype, v[1] - v[2]);
                round(dtype, round(dtype, scale * d) * v[0])
            })
        }
        Op::Reduce(r) => {
            let (x, out) = (tensor(a, 0), tensor(a, 4));
            let dims = match &a[1] {
                AclnnArg::IntArray(d) => d.clone(),
                _ => vec![],
            };
            reduce(memory, x, &dims, out, r)
        }
    }
}

/// A binary operator's second operand.
#[derive(Clone, Copy)]
enum Other<'a> {
    Tensor(&'a TensorDesc),
    Scalar(f64),
}

/// `out = this (op) alpha × other`, elementwise, broadcast, in `out`'s type.
fn binary(
    memory: &SessionMemory,
    op: Binary,
    this: &TensorDesc,
    other: Other<'_>,
    alpha: Option<f64>,
    out: &TensorDesc,
) -> Result<(), CuError> {
    let dtype = out.dtype;
    let alpha = alpha.map(|a| round(dtype, a));
    let apply = move |x: f64, y: f64| -> f64 {
        // As PyTorch's CPU kernels, a fused multiply-add: alpha × other is exact
        // in f64 for the narrower float types, rounded once with the sum.
        let y = alpha.map_or(y, |a| a * y);
        match op {
            Binary::Add => x + y,
            Binary::Sub => x - y,
            Binary::Mul => x * y,
            Binary::Div if is_float(dtype) => x / y,
            Binary::Div => (x / y).floor(),
        }
    };
    match other {
        Other::Scalar(y) => {
            let y = round(dtype, y);
            elementwise(memory, &[this], out, |v| apply(v[0], y))
        }
        Other::Tensor(t) => elementwise(memory, &[this, t], out, |v| apply(v[0], v[1])),
    }
}

/// `out[i] = src[i]` converted to `out`'s type, with `src` broadcast.
fn copy_into(memory: &SessionMemory, src: &TensorDesc, out: &TensorDesc) -> Result<(), CuError> {
    let values = broadcast(&load(memory, src)?, &src.dims, &out.dims)?;
    let converted = match (values, is_float(out.dtype)) {
        (Values::F(v), true) => Values::F(v.into_iter().map(|x| round(out.dtype, x)).collect()),
        (Values::F(v), false) => Values::I(
            v.into_iter()
                .map(|x| {
                    from_i64(
                        out.dtype,
                        if out.dtype == dt::BOOL {
                            i64::from(x != 0.0)
                        } else {
                            x as i64
                        },
                    )
                })
                .collect(),
        ),
        (Values::I(v), true) => {
            Values::F(v.into_iter().map(|x| round(out.dtype, x as f64)).collect())
        }
        (Values::I(v), false) => Values::I(v.into_iter().map(|x| from_i64(out.dtype, x)).collect()),
    };
    store(memory, out, &converted)
}

fn broadcast_shape(a: &[i64], b: &[i64]) -> Result<Vec<i64>, CuError> {
    let n = a.len().max(b.len());
    let at = |s: &[i64], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n]
        } else {
            1
        }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(invalid(format!("shapes {a:?} and {b:?} do not broadcast"))),
        })
        .collect()
}

/// `out = beta × bias + alpha × (x @ w)` (or `x @ w`), over 2-D operands.
fn mm(
    memory: &SessionMemory,
    x: &TensorDesc,
    w: &TensorDesc,
    bias: Option<(&TensorDesc, f64, f64)>,
    out: &TensorDesc,
) -> Result<(), CuError> {
    let (&[m, k], &[k2, n]) = (&x.dims[..], &w.dims[..]) else {
        return Err(unsupported(format!(
            "matrix products of shapes {:?} and {:?} on the stand-in device (2-D only)",
            x.dims, w.dims
        )));
    };
    if k != k2 || out.dims != [m, n] {
        return Err(invalid(format!(
            "a product of {:?} and {:?} into {:?}",
            x.dims, w.dims, out.dims
        )));
    }
    let (m, k, n) = (m as usize, k as usize, n as usize);
    let xs = load(memory, x)?.f64s();
    let ws = load(memory, w)?.f64s();
    let bias = match bias {
        Some((b, beta, alpha)) => Some((
            broadcast(&load(memory, b)?, &b.dims, &out.dims)?.f64s(),
            beta,
            alpha,
        )),
        None => None,
    };
    let dtype = out.dtype;
    let mut result = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| xs[i * k + p] * ws[p * n + j]).sum();
            let dot = round(dtype, dot);
            result[i * n + j] = match &bias {
                Some((b, beta, alpha)) => {
                    let scaled = if *alpha == 1.0 {
                        dot
                    } else {
                        round(dtype, alpha * dot)
                    };
                    let base = if *beta == 1.0 {
                        b[i * n + j]
                    } else {
                        round(dtype, beta * b[i * n + j])
                    };
                    round(dtype, base + scaled)
                }
                None => dot,
            };
        }
    }
    store(memory, out, &values_of(dtype, result))
}

/// Sums (or means) of `x` over `dims` (every dimension when empty).
fn reduce(
    memory: &SessionMemory,
    x: &TensorDesc,
    dims: &[i64],
    out: &TensorDesc,
    r: Reduce,
) -> Result<(), CuError> {
    let rank = x.dims.len() as i64;
    let mut axes = vec![false; x.dims.len()];
    for &d in dims {
        let d = if d < 0 { d + rank } else { d };
        if !(0..rank.max(1)).contains(&d) {
            return Err(invalid(format!("dimension {d} of a tensor of {rank}")));
        }
        if rank > 0 {
            axes[d as usize] = true;
        }
    }
    if dims.is_empty() {
        axes.iter_mut().for_each(|a| *a = true);
    }
    let values = load(memory, x)?.f64s();
    let kept: Vec<i64> = x
        .dims
        .iter()
        .zip(&axes)
        .map(|(&d, &a)| if a { 1 } else { d })
        .collect();
    let groups = numel(&kept)? as usize;
    if numel(&out.dims)? as usize != groups {
        return Err(invalid(format!(
            "a reduction of {:?} over {dims:?} into {:?}",
            x.dims, out.dims
        )));
    }
    let mut sums = vec![0.0; groups];
    let mut counts = vec![0usize; groups];
    let mut index = vec![0i64; x.dims.len()];
    for v in values {
        let mut g = 0i64;
        for (i, &d) in kept.iter().enumerate() {
            g = g * d + if axes[i] { 0 } else { index[i] };
        }
        sums[g as usize] += v;
        counts[g as usize] += 1;
        for d in (0..x.dims.len()).rev() {
            index[d] += 1;
            if index[d] < x.dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
    let result = sums
        .iter()
        .zip(&counts)
        .map(|(&s, &c)| {
            round(
                out.dtype,
                if r == Reduce::Mean {
                    s / c.max(1) as f64
                } else {
                    s
                },
            )
        })
        .collect();
    store(memory, out, &values_of(out.dtype, result))
}

/// A session's executors between their two phases.
#[derive(Default)]
pub(super) struct Executors {
    held: HashMap<u64, Prepared>,
}

impl Executors {
    pub(super) fn insert(&mut self, handle: u64, p: Prepared) -> Result<(), CuError> {
        if self.held.len() >= MAX_EXECUTORS {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!("{MAX_EXECUTORS} aclnn executors wait for their second phase"),
            ));
        }
        self.held.insert(handle, p);
        Ok(())
    }

    pub(super) fn take(&mut self, handle: u64) -> Result<Prepared, CuError> {
        self.held
            .remove(&handle)
            .ok_or_else(|| crate::checks::invalid_handle("aclnn executor", handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_round_to_nearest_even() {
        for (x, h) in [
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (1e6, 0x7c00),
            (5.960464477539063e-8, 1),
        ] {
            assert_eq!(f64_to_f16(x), h, "{x}");
            if h != 0x7c00 {
                assert_eq!(f16_to_f64(h), x);
            }
        }
        // 1 + 2^-11 is halfway between 1 and the next half: to even (1).
        assert_eq!(f64_to_f16(1.0 + 2f64.powi(-11)), 0x3c00);
        assert_eq!(f64_to_f16(1.0 + 3.0 * 2f64.powi(-11)), 0x3c02);
        assert_eq!(f64_to_bf16(1.0), 0x3f80);
        assert_eq!(bf16_to_f64(0x4040), 3.0);
    }

    #[test]
    fn broadcasting_follows_numpys_rules() {
        let v = Values::F(vec![1.0, 2.0]);
        let b = broadcast(&v, &[2, 1], &[2, 3]).unwrap().f64s();
        assert_eq!(b, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        let b = broadcast(&v, &[2], &[3, 2]).unwrap().f64s();
        assert_eq!(b, [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        assert!(broadcast(&v, &[2], &[3]).is_err());
    }

    #[test]
    fn an_unknown_operator_or_wrong_parameters_are_refused_by_name() {
        let e = prepare("aclnnFoo", vec![]).err().unwrap();
        assert_eq!(e.code, code::NOT_SUPPORTED);
        assert!(e.message.contains("aclnnFoo"), "{}", e.message);
        let e = prepare("aclnnAdd", vec![AclnnArg::I64(1)]).err().unwrap();
        assert_eq!(e.code, code::INVALID_VALUE);
        let huge = TensorDesc {
            dtype: dt::FLOAT,
            dims: vec![1 << 20, 1 << 20],
            strides: vec![0, 0],
            offset: 0,
            format: 2,
            storage_dims: vec![1],
            data: 0x1000,
        };
        let e = prepare("aclnnInplaceOne", vec![AclnnArg::Tensor(huge)])
            .err()
            .unwrap();
        assert!(e.message.contains("at most"), "{}", e.message);
    }
}
