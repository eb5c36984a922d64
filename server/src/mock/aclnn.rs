//! The mock's stand-in for an Ascend device's aclnn operators: each runs on the
//! CPU over the session's device memory, as the operator's CANN documentation
//! defines it. Results are those of CPU PyTorch bit for bit where the operation
//! is exact (elementwise arithmetic, copies, casts, fills: each step rounded to
//! the result's type as PyTorch's CPU kernels round it); reductions and matrix
//! products accumulate in f64 and round once, so they may differ from PyTorch's
//! own (f32, blocked) order in the last bits. An operator not here is refused
//! at its first phase, by name.

use std::collections::HashMap;

use xpupool_protocol::aclnn::{dtype_size, AclnnArg, TensorDesc, MAX_EXECUTORS, MAX_HELD_BYTES};
use xpupool_protocol::{code, CuError};

use super::memory::SessionMemory;

#[path = "aclnn_conv.rs"]
mod conv;
#[path = "aclnn_norm.rs"]
mod norm;

/// Elements one tensor of an operator may have here: the values are held as
/// f64 or i64 (8 bytes each) while the operator runs.
const MAX_ELEMENTS: u64 = 1 << 24;
/// Elements all the tensors of one operator may have together (its memory and
/// its time on the CPU are about proportional).
const MAX_WORK: u64 = 1 << 26;
/// Multiply-adds of one matrix product (a few seconds of the CPU).
const MAX_PRODUCT: u64 = 1 << 31;

/// An operator the stand-in device runs, and the parameters of its first phase.
pub(super) struct Prepared {
    op: Op,
    args: Vec<AclnnArg>,
    /// About how many bytes its parameters take here.
    bytes: u64,
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

/// The element size of a type the stand-in device computes in: integers, bool
/// and the IEEE and brain floats (not the complex or 8-bit float types).
fn elem_size(dtype: i32) -> Option<usize> {
    let computed = matches!(
        dtype,
        dt::FLOAT
            | dt::FLOAT16
            | dt::BF16
            | dt::DOUBLE
            | dt::INT8
            | dt::UINT8
            | dt::INT16
            | dt::UINT16
            | dt::INT32
            | dt::UINT32
            | dt::INT64
            | dt::UINT64
            | dt::BOOL
    );
    dtype_size(dtype).filter(|_| computed).map(|n| n as usize)
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
        // As c10::Half and c10::BFloat16 are made: from a float.
        dt::FLOAT16 => f16_to_f64(f64_to_f16(x as f32 as f64)),
        dt::BF16 => bf16_to_f64(f64_to_bf16(x)),
        dt::DOUBLE => x,
        // Integers: toward zero, saturating, as a cast.
        dt::BOOL => f64::from(u8::from(x != 0.0)),
        _ => from_i64(dtype, x as i64) as f64,
    }
}

/// A scalar operand as PyTorch's CPU kernels take it for an output of `dtype`:
/// the half types compute in f32 (their "opmath" type), so their scalars are f32.
fn opmath(dtype: i32, x: f64) -> f64 {
    match dtype {
        dt::FLOAT16 | dt::BF16 => x as f32 as f64,
        _ => round(dtype, x),
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

    fn f64s(self) -> Vec<f64> {
        match self {
            Values::F(v) => v,
            Values::I(v) => v.into_iter().map(|x| x as f64).collect(),
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

/// The bytes of a view's elements, packed in row-major order. A view whose
/// elements lie close together is read in one piece; a sparse one (strides far
/// wider than its elements) element by element, so a view never costs more
/// than its own elements.
fn gather(memory: &SessionMemory, t: &TensorDesc, at: &[u64]) -> Result<Vec<u8>, CuError> {
    let size = elem_size(t.dtype)
        .ok_or_else(|| unsupported(format!("aclDataType {} on the stand-in device", t.dtype)))?;
    let mut packed = vec![0u8; at.len() * size];
    match compact_span(at, size) {
        Some((lo, bytes)) => {
            let raw = memory.read(element_address(t, lo, size)?, bytes)?;
            for (chunk, &o) in packed.chunks_exact_mut(size).zip(at) {
                let from = ((o - lo) as usize) * size;
                chunk.copy_from_slice(&raw[from..from + size]);
            }
        }
        None => {
            for (chunk, &o) in packed.chunks_exact_mut(size).zip(at) {
                memory.read_into(element_address(t, o, size)?, chunk)?;
            }
        }
    }
    Ok(packed)
}

/// Writes packed element bytes back where [`gather`] read them.
fn scatter(
    memory: &SessionMemory,
    t: &TensorDesc,
    at: &[u64],
    packed: &[u8],
) -> Result<(), CuError> {
    if at.is_empty() {
        return Ok(());
    }
    let size = packed.len() / at.len();
    match compact_span(at, size) {
        // A dense view in order (the common case) is written as it is.
        Some((lo, bytes))
            if bytes == packed.len() as u64 && at.windows(2).all(|w| w[1] == w[0] + 1) =>
        {
            memory.write(element_address(t, lo, size)?, packed)
        }
        Some((lo, bytes)) => {
            // Read first: a strided view leaves the bytes between its elements as they are.
            let start = element_address(t, lo, size)?;
            let mut raw = memory.read(start, bytes)?;
            for (chunk, &o) in packed.chunks_exact(size).zip(at) {
                let to = ((o - lo) as usize) * size;
                raw[to..to + size].copy_from_slice(chunk);
            }
            memory.write(start, &raw)
        }
        None => {
            for (chunk, &o) in packed.chunks_exact(size).zip(at) {
                memory.write(element_address(t, o, size)?, chunk)?;
            }
            Ok(())
        }
    }
}

/// The device address of element offset `o` of `t`'s storage.
fn element_address(t: &TensorDesc, o: u64, size: usize) -> Result<u64, CuError> {
    o.checked_mul(size as u64)
        .and_then(|b| t.data.checked_add(b))
        .ok_or_else(|| invalid("a tensor past the address space"))
}

/// `(lowest offset, bytes from it through the highest element)` of a view
/// whose elements lie close enough together to move in one piece (at most four
/// times their own bytes, and 4 KiB); `None` for a sparse or empty one.
fn compact_span(at: &[u64], size: usize) -> Option<(u64, u64)> {
    let (&lo, &hi) = (at.iter().min()?, at.iter().max()?);
    let bytes = (hi - lo).checked_add(1)?.checked_mul(size as u64)?;
    (bytes <= 4 * (at.len() * size) as u64 + 4096).then_some((lo, bytes))
}

fn load(memory: &SessionMemory, t: &TensorDesc) -> Result<Values, CuError> {
    let at = offsets(t)?;
    let raw = gather(memory, t, &at)?;
    let size = elem_size(t.dtype).unwrap_or(1);
    let elems = raw.chunks_exact(size);
    let le2 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    let le4 = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    let le8 = |b: &[u8]| [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    Ok(match t.dtype {
        dt::FLOAT => Values::F(
            elems
                .map(|e| f64::from(f32::from_le_bytes(le4(e))))
                .collect(),
        ),
        dt::DOUBLE => Values::F(elems.map(|e| f64::from_le_bytes(le8(e))).collect()),
        dt::FLOAT16 => Values::F(elems.map(|e| f16_to_f64(le2(e))).collect()),
        dt::BF16 => Values::F(elems.map(|e| bf16_to_f64(le2(e))).collect()),
        dt::INT8 => Values::I(elems.map(|e| i64::from(e[0] as i8)).collect()),
        dt::UINT8 => Values::I(elems.map(|e| i64::from(e[0])).collect()),
        dt::BOOL => Values::I(elems.map(|e| i64::from(e[0] != 0)).collect()),
        dt::INT16 => Values::I(elems.map(|e| i64::from(le2(e) as i16)).collect()),
        dt::UINT16 => Values::I(elems.map(|e| i64::from(le2(e))).collect()),
        dt::INT32 => Values::I(
            elems
                .map(|e| i64::from(i32::from_le_bytes(le4(e))))
                .collect(),
        ),
        dt::UINT32 => Values::I(
            elems
                .map(|e| i64::from(u32::from_le_bytes(le4(e))))
                .collect(),
        ),
        dt::INT64 | dt::UINT64 => Values::I(elems.map(|e| i64::from_le_bytes(le8(e))).collect()),
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
    let size = elem_size(t.dtype)
        .ok_or_else(|| unsupported(format!("aclDataType {} on the stand-in device", t.dtype)))?;
    let mut packed = vec![0u8; at.len() * size];
    for (i, out) in packed.chunks_exact_mut(size).enumerate() {
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
    scatter(memory, t, &at, &packed)
}

/// `values` of shape `from`, broadcast to shape `to` (NumPy's rules).
fn broadcast(values: Values, from: &[i64], to: &[i64]) -> Result<Values, CuError> {
    if from == to {
        return Ok(values);
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

/// An integer scalar's value, exactly.
fn scalar_int(dtype: i32, bytes: &[u8]) -> Result<i64, CuError> {
    let size =
        elem_size(dtype).ok_or_else(|| unsupported(format!("a scalar of aclDataType {dtype}")))?;
    if bytes.len() < size {
        return Err(invalid(format!(
            "a scalar of aclDataType {dtype} in {} bytes",
            bytes.len()
        )));
    }
    let mut b = [0u8; 8];
    b[..size].copy_from_slice(&bytes[..size]);
    Ok(match dtype {
        dt::INT8 => i64::from(b[0] as i8),
        dt::INT16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
        dt::INT32 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        dt::BOOL => i64::from(b[0] != 0),
        _ => i64::from_le_bytes(b),
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
    /// Along one dimension: softmax, log-softmax, their backward, argmax, max.
    Along(Along),
    /// Cross-entropy's second half, and its backward.
    NllLoss,
    NllLossBackward,
    /// Elementwise equality, into a bool tensor; with a scalar.
    Eq(bool),
    /// Another elementwise function over lists of tensors (optimizers' steps).
    ForeachMap(Fm),
    /// The same function over single tensors; in place into the first.
    Map(Fm, bool),
    Arange,
    ConstantPadNd,
    Cat,
    /// 2-D convolution and its backward; max pooling and its backward.
    Conv,
    ConvBackward,
    /// With indices, or (true) with torch_npu's mask.
    MaxPool(bool),
    MaxPoolBackward(bool),
    /// Adaptive average pooling and its backward.
    AdaptiveAvgPool,
    AdaptiveAvgPoolBackward,
    /// Batch normalisation and its backward.
    BatchNorm,
    BatchNormBackward,
}

/// The functions of [`Op::ForeachMap`]: of each input list's element, and the
/// scalars, in the order the header gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fm {
    LerpScalar,
    LerpList,
    MulList,
    DivList,
    DivScalar,
    SubList,
    SubScalar,
    Addcmul,
    Addcdiv,
    Sqrt,
    MaximumScalar,
    PowScalar,
}

impl Fm {
    fn apply(self, v: &[f64], s: &[f64]) -> f64 {
        let lerp = |x: f64, y: f64, w: f64| {
            // As PyTorch's: from the nearer end.
            if w.abs() < 0.5 {
                x + w * (y - x)
            } else {
                y - (y - x) * (1.0 - w)
            }
        };
        match self {
            Fm::LerpScalar => lerp(v[0], v[1], s[0]),
            Fm::LerpList => lerp(v[0], v[1], v[2]),
            Fm::MulList => v[0] * v[1],
            Fm::DivList => v[0] / v[1],
            Fm::DivScalar => v[0] / s[0],
            Fm::SubList => v[0] - s[0] * v[1],
            Fm::SubScalar => v[0] - s[0],
            Fm::Addcmul => v[0] + s[0] * v[1] * v[2],
            Fm::Addcdiv => v[0] + s[0] * v[1] / v[2],
            Fm::Sqrt => v[0].sqrt(),
            Fm::MaximumScalar => {
                if v[0].is_nan() || v[0] > s[0] {
                    v[0]
                } else {
                    s[0]
                }
            }
            Fm::PowScalar => v[0].powf(s[0]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Along {
    Softmax,
    LogSoftmax,
    SoftmaxBackward,
    LogSoftmaxBackward,
    ArgMax,
    MaxDim,
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
        "aclnnSoftmax" => (Op::Along(Along::Softmax), "TIT"),
        "aclnnLogSoftmax" => (Op::Along(Along::LogSoftmax), "TIT"),
        "aclnnSoftmaxBackward" => (Op::Along(Along::SoftmaxBackward), "TTIT"),
        "aclnnLogSoftmaxBackward" => (Op::Along(Along::LogSoftmaxBackward), "TTIT"),
        "aclnnArgMax" => (Op::Along(Along::ArgMax), "TIBT"),
        "aclnnMaxDim" => (Op::Along(Along::MaxDim), "TIBTT"),
        "aclnnNLLLoss" => (Op::NllLoss, "TTUIITT"),
        "aclnnNLLLossBackward" => (Op::NllLossBackward, "TTTUIITT"),
        "aclnnEqTensor" => (Op::Eq(false), "TTT"),
        "aclnnArange" => (Op::Arange, "SSST"),
        "aclnnCat" => (Op::Cat, "LIT"),
        "aclnnConstantPadNd" => (Op::ConstantPadNd, "TAST"),
        "aclnnPowTensorScalar" => (Op::Map(Fm::PowScalar, false), "TST"),
        "aclnnAddcmul" => (Op::Map(Fm::Addcmul, false), "TTTST"),
        "aclnnInplaceAddcmul" => (Op::Map(Fm::Addcmul, true), "TTTS"),
        "aclnnAddcdiv" => (Op::Map(Fm::Addcdiv, false), "TTTST"),
        "aclnnInplaceAddcdiv" => (Op::Map(Fm::Addcdiv, true), "TTTS"),
        "aclnnLerp" => (Op::Map(Fm::LerpList, false), "TTTT"),
        "aclnnInplaceLerp" => (Op::Map(Fm::LerpList, true), "TTT"),
        "aclnnForeachLerpScalar" => (Op::ForeachMap(Fm::LerpScalar), "LLSL"),
        "aclnnForeachLerpList" => (Op::ForeachMap(Fm::LerpList), "LLLL"),
        "aclnnForeachMulList" => (Op::ForeachMap(Fm::MulList), "LLL"),
        "aclnnForeachDivList" => (Op::ForeachMap(Fm::DivList), "LLL"),
        "aclnnForeachDivScalarV2" => (Op::ForeachMap(Fm::DivScalar), "LSL"),
        "aclnnForeachSubListV2" => (Op::ForeachMap(Fm::SubList), "LLSL"),
        "aclnnForeachSubScalarV2" => (Op::ForeachMap(Fm::SubScalar), "LSL"),
        "aclnnForeachAddcmulScalarV2" => (Op::ForeachMap(Fm::Addcmul), "LLLSL"),
        "aclnnForeachAddcdivScalarV2" => (Op::ForeachMap(Fm::Addcdiv), "LLLSL"),
        "aclnnForeachSqrt" => (Op::ForeachMap(Fm::Sqrt), "LL"),
        "aclnnForeachMaximumScalarV2" => (Op::ForeachMap(Fm::MaximumScalar), "LSL"),
        "aclnnForeachPowScalarV2" => (Op::ForeachMap(Fm::PowScalar), "LSL"),
        "aclnnEqScalar" => (Op::Eq(true), "TST"),
        "aclnnMean" => (Op::Reduce(Reduce::Mean), "TABIT"),
        "aclnnConvolution" => (Op::Conv, "TTUAAABAITI"),
        "aclnnConvolutionBackward" => (Op::ConvBackward, "TTTaAAABAIMIUUU"),
        "aclnnMaxPool2dWithIndices" => (Op::MaxPool(false), "TAAAABTT"),
        "aclnnMaxPool2dWithIndicesBackward" => (Op::MaxPoolBackward(false), "TTTAAAABT"),
        "aclnnMaxPool2dWithMask" => (Op::MaxPool(true), "TAAAABTT"),
        "aclnnBatchNorm" => (Op::BatchNorm, "TUUUUBFFTUU"),
        "aclnnAdaptiveAvgPool2d" => (Op::AdaptiveAvgPool, "TAT"),
        "aclnnAdaptiveAvgPool2dBackward" => (Op::AdaptiveAvgPoolBackward, "TTT"),
        "aclnnBatchNormBackward" => (Op::BatchNormBackward, "TTUUUUUBFMUUU"),
        "aclnnMaxPool2dWithMaskBackward" => (Op::MaxPoolBackward(true), "TTTAAAABT"),
        _ => return None,
    })
}

/// Whether `arg` is of the kind `k` stands for: T tensor, S scalar, I an
/// integer, F a float, A an int array, a an int array or NULL, B a bool, M a
/// bool array, L a tensor list, U a tensor or NULL.
fn fits(k: char, arg: &AclnnArg) -> bool {
    matches!(
        (k, arg),
        ('T' | 'U', AclnnArg::Tensor(_))
            | ('U', AclnnArg::Null)
            | ('S', AclnnArg::Scalar(..))
            | ('I', AclnnArg::I64(_) | AclnnArg::I32(_) | AclnnArg::I8(_))
            | ('A' | 'a', AclnnArg::IntArray(_))
            | ('a', AclnnArg::Null)
            | ('M', AclnnArg::BoolArray(_))
            | ('F', AclnnArg::F64(_) | AclnnArg::F32(_))
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
        let given: Vec<&str> = args.iter().take(16).map(kind_name).collect();
        return Err(invalid(format!(
            "{name}: parameters ({}{}) are not those its header declares",
            given.join(", "),
            if args.len() > 16 { ", …" } else { "" }
        )));
    }
    let mut work = 0u64;
    for a in &args {
        a.check().map_err(|why| invalid(format!("{name}: {why}")))?;
        for t in tensors_of(a) {
            work += numel(&t.dims)?;
            elem_size(t.dtype).ok_or_else(|| {
                unsupported(format!(
                    "{name}: aclDataType {} on the stand-in device",
                    t.dtype
                ))
            })?;
        }
    }
    if work > MAX_WORK {
        return Err(invalid(format!(
            "{name}: {work} elements in all (at most {MAX_WORK} on the stand-in device)"
        )));
    }
    validate(op, &args).map_err(|e| CuError::new(e.code, format!("{name}: {}", e.message)))?;
    let bytes = args.iter().map(AclnnArg::held_bytes).sum();
    Ok(Prepared { op, args, bytes })
}

fn kind_name(a: &AclnnArg) -> &'static str {
    match a {
        AclnnArg::Null => "NULL",
        AclnnArg::Tensor(_) => "tensor",
        AclnnArg::Scalar(..) => "scalar",
        AclnnArg::IntArray(_) => "int array",
        AclnnArg::FloatArray(_) => "float array",
        AclnnArg::BoolArray(_) => "bool array",
        AclnnArg::TensorList(_) => "tensor list",
        AclnnArg::ScalarList(_) => "scalar list",
        AclnnArg::F64(_) | AclnnArg::F32(_) => "float",
        AclnnArg::I64(_) | AclnnArg::U64(_) | AclnnArg::I32(_) | AclnnArg::I8(_) => "integer",
        AclnnArg::Bool(_) => "bool",
        AclnnArg::Str(_) => "string",
    }
}

/// The tensors a parameter holds.
pub(super) fn tensors_of(a: &AclnnArg) -> Vec<&TensorDesc> {
    match a {
        AclnnArg::Tensor(t) => vec![t],
        AclnnArg::TensorList(l) => l.iter().flatten().collect(),
        _ => vec![],
    }
}

/// Whether shape `from` broadcasts to shape `to` (NumPy's rules).
fn broadcasts(from: &[i64], to: &[i64]) -> bool {
    from.len() <= to.len()
        && from
            .iter()
            .zip(&to[to.len() - from.len()..])
            .all(|(&f, &t)| f == 1 || f == t)
}

fn fits_in(inputs: &[&TensorDesc], out: &TensorDesc) -> Result<(), CuError> {
    match inputs.iter().find(|t| !broadcasts(&t.dims, &out.dims)) {
        Some(t) => Err(invalid(format!(
            "shape {:?} does not broadcast to the output's {:?}",
            t.dims, out.dims
        ))),
        None => Ok(()),
    }
}

/// The axes a reduction over `dims` of a tensor of `rank` dimensions keeps out
/// (every one when `dims` is empty).
fn reduced_axes(dims: &[i64], rank: usize) -> Result<Vec<bool>, CuError> {
    let mut axes = vec![dims.is_empty(); rank];
    for &d in dims {
        let at = if d < 0 {
            d.checked_add(rank as i64)
        } else {
            Some(d)
        };
        match at {
            Some(a) if (0..rank as i64).contains(&a) => axes[a as usize] = true,
            // A scalar's dimension 0 (or -1) is itself.
            Some(0) | Some(-1) if rank == 0 => {}
            _ => return Err(invalid(format!("dimension {d} of a tensor of {rank}"))),
        }
    }
    Ok(axes)
}

/// The first phase's checks of shapes and types: what CANN refuses before any
/// work is queued.
fn validate(op: Op, a: &[AclnnArg]) -> Result<(), CuError> {
    match op {
        Op::Fill(_) => Ok(()),
        Op::Binary(_, form) => {
            let this = tensor(a, 0);
            let out = if form.in_place {
                this
            } else {
                tensor(a, a.len() - 1)
            };
            if form.scalar_other {
                fits_in(&[this], out)
            } else {
                fits_in(&[this, tensor(a, 1)], out)
            }
        }
        Op::Foreach(_, scalar_other) => {
            let (inputs, outs) = foreach_lists(a)?;
            if inputs.len() != if scalar_other { 1 } else { 2 } {
                return Err(invalid(
                    "a foreach operator's lists are not those its header declares",
                ));
            }
            for (i, out) in outs.iter().enumerate() {
                let row: Vec<&TensorDesc> = inputs.iter().map(|l| l[i]).collect();
                fits_in(&row, out)?;
            }
            Ok(())
        }
        Op::Unary(u) => {
            let this = tensor(a, 0);
            fits_in(
                &[this],
                if u == Unary::InplaceRelu {
                    this
                } else {
                    tensor(a, 1)
                },
            )
        }
        Op::Cast => {
            if int_arg(a, 1) != i64::from(tensor(a, 2).dtype) {
                return Err(invalid("the type asked is not the output's"));
            }
            fits_in(&[tensor(a, 0)], tensor(a, 2))
        }
        Op::InplaceCopy => fits_in(&[tensor(a, 1)], tensor(a, 0)),
        Op::Mm | Op::Addmm => {
            let (x, w, out) = match op {
                Op::Mm => (tensor(a, 0), tensor(a, 1), tensor(a, 2)),
                _ => (tensor(a, 1), tensor(a, 2), tensor(a, 5)),
            };
            let (m, k, n) = product_shape(x, w, out)?;
            let product = (m as u64).saturating_mul(k as u64).saturating_mul(n as u64);
            if product > MAX_PRODUCT {
                return Err(invalid(format!(
                    "a product of {product} multiply-adds (at most {MAX_PRODUCT} on the stand-in device)"
                )));
            }
            if op == Op::Addmm {
                fits_in(&[tensor(a, 0)], out)?;
            }
            Ok(())
        }
        Op::ThresholdBackward => fits_in(&[tensor(a, 0), tensor(a, 1)], tensor(a, 3)),
        Op::MseLoss => {
            let (x, y, out) = (tensor(a, 0), tensor(a, 1), tensor(a, 3));
            let shape = broadcast_shape(&x.dims, &y.dims)?;
            match int_arg(a, 2) {
                0 if out.dims == shape => Ok(()),
                1 | 2 if numel(&out.dims)? == 1 => Ok(()),
                r => Err(invalid(format!(
                    "reduction {r} of {shape:?} into {:?}",
                    out.dims
                ))),
            }
        }
        Op::MseLossBackward => match int_arg(a, 3) {
            0..=2 => fits_in(&[tensor(a, 0), tensor(a, 1), tensor(a, 2)], tensor(a, 4)),
            r => Err(invalid(format!("reduction {r}"))),
        },
        Op::Along(along) => {
            let x = tensor(a, 0);
            let (dim, out) = match along {
                Along::SoftmaxBackward | Along::LogSoftmaxBackward => (int_arg(a, 2), tensor(a, 3)),
                Along::ArgMax | Along::MaxDim => (int_arg(a, 1), tensor(a, 3)),
                _ => (int_arg(a, 1), tensor(a, 2)),
            };
            let (outer, size, inner) = split_at_dim(&x.dims, dim)?;
            // The groups are looped over even when they are empty: bounded too.
            let groups = outer
                .checked_mul(inner)
                .filter(|&g| g <= MAX_ELEMENTS)
                .ok_or_else(|| invalid(format!("{:?} has too many groups along {dim}", x.dims)))?;
            if matches!(along, Along::ArgMax | Along::MaxDim) && size == 0 && groups > 0 {
                return Err(invalid("the maximum of an empty dimension"));
            }
            let want = match along {
                Along::ArgMax | Along::MaxDim => groups,
                _ => groups * size,
            };
            if numel(&out.dims)? != want {
                return Err(invalid(format!(
                    "{:?} along {dim} of {:?} into {:?}",
                    along, x.dims, out.dims
                )));
            }
            if matches!(along, Along::SoftmaxBackward | Along::LogSoftmaxBackward)
                && tensor(a, 1).dims != x.dims
            {
                return Err(invalid("a gradient and an output of different shapes"));
            }
            if along == Along::MaxDim && numel(&tensor(a, 4).dims)? != want {
                return Err(invalid("max's indices of another shape than its values"));
            }
            Ok(())
        }
        Op::NllLoss | Op::NllLossBackward => {
            let backward = op == Op::NllLossBackward;
            let at = usize::from(backward);
            let (x, target) = (tensor(a, at), tensor(a, at + 1));
            let (n, c) = match x.dims[..] {
                [n, c] => (n, c),
                [c] => (1, c),
                _ => {
                    return Err(invalid(format!(
                        "nll_loss of an input of shape {:?}",
                        x.dims
                    )))
                }
            };
            if numel(&target.dims)? != n as u64 || c as u64 > MAX_ELEMENTS {
                return Err(invalid(format!(
                    "nll_loss of {:?} with targets {:?}",
                    x.dims, target.dims
                )));
            }
            let per_item = if int_arg(a, at + 3) == 0 { n as u64 } else { 1 };
            let (loss, total) = if backward {
                (tensor(a, 0), tensor(a, 6))
            } else {
                (tensor(a, 5), tensor(a, 6))
            };
            if numel(&loss.dims)? != per_item || numel(&total.dims)? != 1 {
                return Err(invalid(format!(
                    "nll_loss with a loss of {:?} and a total weight of {:?}",
                    loss.dims, total.dims
                )));
            }
            if backward && tensor(a, 7).dims != x.dims {
                return Err(invalid("nll_loss's gradient is not of its input's shape"));
            }
            if let AclnnArg::Tensor(w) = &a[at + 2] {
                if numel(&w.dims)? != c as u64 {
                    return Err(invalid(format!(
                        "nll_loss of {c} classes with {:?} weights",
                        w.dims
                    )));
                }
            }
            match int_arg(a, at + 3) {
                0..=2 => Ok(()),
                r => Err(invalid(format!("reduction {r}"))),
            }
        }
        Op::Map(_, in_place) => {
            let (inputs, out) = map_tensors(a, in_place);
            fits_in(&inputs, out)
        }
        Op::Arange => Ok(()),
        Op::Cat => cat_parts(a).map(|_| ()),
        Op::Conv => conv::validate_forward(a),
        Op::ConvBackward => conv::validate_backward(a),
        Op::MaxPool(mask) => conv::validate_pool(a, mask),
        Op::MaxPoolBackward(mask) => conv::validate_pool_backward(a, mask),
        Op::BatchNorm => norm::validate_forward(a),
        Op::AdaptiveAvgPool => conv::validate_adaptive(a),
        Op::AdaptiveAvgPoolBackward => conv::validate_adaptive_backward(a),
        Op::BatchNormBackward => norm::validate_backward(a),
        Op::ConstantPadNd => padded_shape(a).map(|_| ()),
        Op::ForeachMap(_) => {
            let (inputs, outs) = foreach_lists(a)?;
            for (i, out) in outs.iter().enumerate() {
                let row: Vec<&TensorDesc> = inputs.iter().map(|l| l[i]).collect();
                fits_in(&row, out)?;
            }
            Ok(())
        }
        Op::Eq(scalar_other) => {
            if scalar_other {
                fits_in(&[tensor(a, 0)], tensor(a, 2))
            } else {
                fits_in(&[tensor(a, 0), tensor(a, 1)], tensor(a, 2))
            }
        }
        Op::Reduce(_) => {
            let (x, out) = (tensor(a, 0), tensor(a, 4));
            let dims = match &a[1] {
                AclnnArg::IntArray(d) => d.as_slice(),
                _ => &[],
            };
            let axes = reduced_axes(dims, x.dims.len())?;
            let kept: Vec<i64> = x
                .dims
                .iter()
                .zip(&axes)
                .map(|(&d, &r)| if r { 1 } else { d })
                .collect();
            if numel(&kept)? != numel(&out.dims)? {
                return Err(invalid(format!(
                    "a reduction of {:?} over {dims:?} into {:?}",
                    x.dims, out.dims
                )));
            }
            Ok(())
        }
    }
}

fn tensor(args: &[AclnnArg], i: usize) -> &TensorDesc {
    match &args[i] {
        AclnnArg::Tensor(t) => t,
        other => unreachable!("checked by prepare: {other:?}"),
    }
}

/// The optional tensor parameter `i` (`None`: NULL).
fn maybe_tensor(args: &[AclnnArg], i: usize) -> Option<&TensorDesc> {
    match &args[i] {
        AclnnArg::Tensor(t) => Some(t),
        _ => None,
    }
}

/// The gradients a backward operator's output mask (three flags, parameter
/// `mask`) asks for, whose tensors are the parameters from `first` on: each
/// asked for must be given.
fn masked_outputs(
    args: &[AclnnArg],
    mask: usize,
    first: usize,
) -> Result<[Option<&TensorDesc>; 3], CuError> {
    let flags = match &args[mask] {
        AclnnArg::BoolArray(m) if m.len() == 3 => [m[0], m[1], m[2]],
        _ => return Err(invalid("a backward operator's output mask of three flags")),
    };
    let mut outs = [None; 3];
    for (k, wanted) in flags.into_iter().enumerate() {
        match (wanted, maybe_tensor(args, first + k)) {
            (true, Some(t)) => outs[k] = Some(t),
            (true, None) => return Err(invalid("a gradient asked for without its tensor")),
            (false, _) => {}
        }
    }
    Ok(outs)
}

/// Stores f64 results in `t`, each rounded once to its type.
fn store_rounded(memory: &SessionMemory, t: &TensorDesc, v: Vec<f64>) -> Result<(), CuError> {
    store(
        memory,
        t,
        &values_of(t.dtype, v.into_iter().map(|x| round(t.dtype, x)).collect()),
    )
}

/// A row-major `dims` tensor of `dtype` at a fixed address, for the tests of
/// the first phase.
#[cfg(test)]
fn dense(dims: &[i64], dtype: i32) -> AclnnArg {
    let mut strides = vec![1i64; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1].max(1);
    }
    AclnnArg::Tensor(TensorDesc {
        dtype,
        dims: dims.to_vec(),
        strides,
        offset: 0,
        format: 2,
        storage_dims: dims.to_vec(),
        data: 0x1000,
    })
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
        .map(|t| Ok(broadcast(load(memory, t)?, &t.dims, &out.dims)?.f64s()))
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
            let n = numel(&t.dims)? as usize;
            let values = match (fill, &a.get(1)) {
                // An integer tensor filled with an integer scalar: exactly, in i64.
                (Fill::Scalar, Some(AclnnArg::Scalar(sd, bytes)))
                    if !is_float(t.dtype) && !is_float(*sd) =>
                {
                    Values::I(vec![from_i64(t.dtype, scalar_int(*sd, bytes)?); n])
                }
                _ => {
                    let v = match fill {
                        Fill::One => 1.0,
                        Fill::Zero => 0.0,
                        Fill::Scalar => scalar_arg(a, 1)?,
                    };
                    values_of(t.dtype, vec![round(t.dtype, v); n])
                }
            };
            store(memory, t, &values)
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
            let (inputs, outs) = foreach_lists(a)?;
            let alpha = if !scalar_other && op == Binary::Add {
                Some(scalar_arg(a, 2)?)
            } else {
                None
            };
            for (i, out) in outs.into_iter().enumerate() {
                let other = match inputs.get(1) {
                    Some(ys) => Other::Tensor(ys[i]),
                    None => Other::Scalar(scalar_arg(a, 1)?),
                };
                binary(memory, op, inputs[0][i], other, alpha, out)?;
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
            let xs = broadcast(load(memory, x)?, &x.dims, &shape)?.f64s();
            let ys = broadcast(load(memory, y)?, &y.dims, &shape)?.f64s();
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
            let dtype = out.dtype;
            // ATen's norm, a scalar of the type it multiplies.
            let scale = opmath(
                dtype,
                match int_arg(a, 3) {
                    1 => 2.0 / n,
                    0 | 2 => 2.0,
                    r => return Err(invalid(format!("aclnnMseLossBackward: reduction {r}"))),
                },
            );
            elementwise(memory, &[g, x, y], out, |v| {
                let d = round(dtype, v[1] - v[2]);
                round(dtype, round(dtype, scale * d) * v[0])
            })
        }
        Op::Along(along) => along_dim(memory, along, a),
        Op::Arange => {
            let (start, step, out) = (scalar_arg(a, 0)?, scalar_arg(a, 2)?, tensor(a, 3));
            let n = numel(&out.dims)? as usize;
            // As PyTorch's: start + i × step, each in the output's type.
            let values = (0..n)
                .map(|i| round(out.dtype, start + i as f64 * step))
                .collect();
            store(memory, out, &values_of(out.dtype, values))
        }
        Op::Conv => conv::forward(memory, a),
        Op::ConvBackward => conv::backward(memory, a),
        Op::MaxPool(mask) => conv::pool(memory, a, mask),
        Op::MaxPoolBackward(mask) => conv::pool_backward(memory, a, mask),
        Op::BatchNorm => norm::forward(memory, a),
        Op::AdaptiveAvgPool => conv::adaptive(memory, a),
        Op::AdaptiveAvgPoolBackward => conv::adaptive_backward(memory, a),
        Op::BatchNormBackward => norm::backward(memory, a),
        Op::Cat => {
            let (parts, out, dim) = cat_parts(a)?;
            let (outer, _, inner) = split_at_dim(&out.dims, dim)?;
            let loaded = parts
                .iter()
                .map(|t| Ok((load(memory, t)?, split_at_dim(&t.dims, dim)?.1)))
                .collect::<Result<Vec<_>, CuError>>()?;
            let mut result = Vec::with_capacity(numel(&out.dims)? as usize);
            for o in 0..outer as usize {
                for (values, size) in &loaded {
                    let run = *size as usize * inner as usize;
                    result.extend((o * run..(o + 1) * run).map(|i| values.get_f(i)));
                }
            }
            let result = result.into_iter().map(|v| round(out.dtype, v)).collect();
            store(memory, out, &values_of(out.dtype, result))
        }
        Op::ConstantPadNd => {
            let (x, out) = (tensor(a, 0), tensor(a, 3));
            let before = padded_shape(a)?;
            let xs = load(memory, x)?;
            let value = scalar_arg(a, 2)?;
            let n = numel(&out.dims)? as usize;
            let rank = out.dims.len();
            let mut index = vec![0i64; rank];
            let mut result = Vec::with_capacity(n);
            for _ in 0..n {
                // The source element, if this one is inside the input.
                let mut at = Some(0usize);
                for d in 0..rank {
                    let i = index[d] - before[d];
                    at = at
                        .filter(|_| (0..x.dims[d]).contains(&i))
                        .map(|a| a * x.dims[d] as usize + i as usize);
                }
                result.push(at.map_or(value, |i| xs.get_f(i)));
                for d in (0..rank).rev() {
                    index[d] += 1;
                    if index[d] < out.dims[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
            let result = result.into_iter().map(|v| round(out.dtype, v)).collect();
            store(memory, out, &values_of(out.dtype, result))
        }
        Op::Map(f, in_place) => {
            let (inputs, out) = map_tensors(a, in_place);
            let s = scalars(a)?
                .into_iter()
                .map(|x| opmath(out.dtype, x))
                .collect::<Vec<_>>();
            elementwise(memory, &inputs, out, |v| f.apply(v, &s))
        }
        Op::ForeachMap(f) => {
            let (inputs, outs) = foreach_lists(a)?;
            let scalars = scalars(a)?;
            for (i, out) in outs.into_iter().enumerate() {
                let row: Vec<&TensorDesc> = inputs.iter().map(|l| l[i]).collect();
                let s: Vec<f64> = scalars.iter().map(|&x| opmath(out.dtype, x)).collect();
                elementwise(memory, &row, out, |v| f.apply(v, &s))?;
            }
            Ok(())
        }
        Op::NllLoss => nll_loss(memory, a),
        Op::NllLossBackward => nll_loss_backward(memory, a),
        Op::Eq(scalar_other) => {
            let out = tensor(a, 2);
            let x = broadcast(load(memory, tensor(a, 0))?, &tensor(a, 0).dims, &out.dims)?;
            let y = if scalar_other {
                let n = x.len();
                match &a[1] {
                    AclnnArg::Scalar(d, b) if !is_float(*d) => {
                        Values::I(vec![scalar_int(*d, b)?; n])
                    }
                    _ => Values::F(vec![scalar_arg(a, 1)?; n]),
                }
            } else {
                broadcast(load(memory, tensor(a, 1))?, &tensor(a, 1).dims, &out.dims)?
            };
            let equal: Vec<i64> = match (&x, &y) {
                (Values::I(p), Values::I(q)) => {
                    p.iter().zip(q).map(|(p, q)| i64::from(p == q)).collect()
                }
                _ => (0..x.len())
                    .map(|i| i64::from(x.get_f(i) == y.get_f(i)))
                    .collect(),
            };
            store(memory, out, &Values::I(equal))
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

/// A `Cat`'s non-empty parts, its output and the dimension (normalised), its
/// shapes checked: equal but along the dimension, whose sizes add up.
#[allow(clippy::type_complexity)]
fn cat_parts(a: &[AclnnArg]) -> Result<(Vec<&TensorDesc>, &TensorDesc, i64), CuError> {
    let (lists, out) = (foreach_lists(&a[..1])?, tensor(a, 2));
    // PyTorch leaves out 1-D empty tensors from a concatenation.
    // Parts with no elements add nothing (and are not looped over).
    let parts: Vec<&TensorDesc> = lists
        .1
        .into_iter()
        .filter(|t| t.dims != [0] && !t.dims.contains(&0))
        .collect();
    let rank = out.dims.len() as i64;
    let dim = int_arg(a, 1);
    let dim = if dim < 0 {
        dim.checked_add(rank)
    } else {
        Some(dim)
    }
    .filter(|d| (0..rank).contains(d))
    .ok_or_else(|| invalid(format!("dimension {dim} of a tensor of {rank}")))?;
    let mut total = 0i64;
    for t in &parts {
        let same = t.dims.len() == out.dims.len()
            && t.dims
                .iter()
                .zip(&out.dims)
                .enumerate()
                .all(|(d, (x, y))| d as i64 == dim || x == y);
        if !same {
            return Err(invalid(format!(
                "{:?} concatenated into {:?} along {dim}",
                t.dims, out.dims
            )));
        }
        total = total
            .checked_add(t.dims[dim as usize])
            .ok_or_else(|| invalid("parts past i64 along the dimension"))?;
    }
    if out.dims.contains(&0) {
        return Ok((vec![], out, dim));
    }
    if total != out.dims[dim as usize] {
        return Err(invalid(format!(
            "parts of {total} along {dim} into {:?}",
            out.dims
        )));
    }
    Ok((parts, out, dim))
}

/// The padding before each dimension of a `ConstantPadNd`, its output's shape
/// checked: `pad` pairs (before, after) from the last dimension, negative ones
/// refused (cropping is not done here).
fn padded_shape(a: &[AclnnArg]) -> Result<Vec<i64>, CuError> {
    let (x, out) = (tensor(a, 0), tensor(a, 3));
    let pad = match &a[1] {
        AclnnArg::IntArray(p) => p,
        other => unreachable!("checked by prepare: {other:?}"),
    };
    let rank = x.dims.len();
    if pad.len() % 2 != 0
        || pad.len() / 2 > rank
        || pad.iter().any(|&p| p < 0)
        || out.dims.len() != rank
    {
        return Err(invalid(format!(
            "padding {pad:?} of a tensor of {rank} dimensions"
        )));
    }
    let mut before = vec![0i64; rank];
    let mut shape = x.dims.clone();
    for (k, pair) in pad.chunks(2).enumerate() {
        let d = rank - 1 - k;
        before[d] = pair[0];
        shape[d] = shape[d]
            .checked_add(pair[0])
            .and_then(|s| s.checked_add(pair[1]))
            .ok_or_else(|| invalid("padding past i64"))?;
    }
    if shape != out.dims {
        return Err(invalid(format!(
            "{:?} padded by {pad:?} into {:?}",
            x.dims, out.dims
        )));
    }
    Ok(before)
}

/// The tensors of a [`Op::Map`]: its inputs, and its output (the last, or
/// in place the first).
fn map_tensors(a: &[AclnnArg], in_place: bool) -> (Vec<&TensorDesc>, &TensorDesc) {
    let mut all: Vec<&TensorDesc> = a.iter().flat_map(tensors_of).collect();
    let out = if in_place {
        all[0]
    } else {
        all.pop().expect("checked by prepare: tensors")
    };
    (all, out)
}

/// The scalars among an operator's parameters, in order.
fn scalars(a: &[AclnnArg]) -> Result<Vec<f64>, CuError> {
    a.iter()
        .filter_map(|x| match x {
            AclnnArg::Scalar(d, b) => Some(scalar(*d, b)),
            _ => None,
        })
        .collect()
}

/// The input lists of a foreach operator and its output list (the last), each
/// of the same length, with no NULL entry.
#[allow(clippy::type_complexity)]
fn foreach_lists(a: &[AclnnArg]) -> Result<(Vec<Vec<&TensorDesc>>, Vec<&TensorDesc>), CuError> {
    let mut lists = a
        .iter()
        .filter_map(|x| match x {
            AclnnArg::TensorList(l) => Some(
                l.iter()
                    .map(|t| {
                        t.as_ref()
                            .ok_or_else(|| invalid("a NULL tensor in a foreach list"))
                    })
                    .collect::<Result<Vec<_>, _>>(),
            ),
            _ => None,
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = lists
        .pop()
        .ok_or_else(|| invalid("a foreach operator without lists"))?;
    if lists.iter().any(|l| l.len() != out.len()) {
        return Err(invalid("foreach lists of different lengths"));
    }
    Ok((lists, out))
}

/// `(outer, size, inner)` of a row-major tensor of shape `dims` split at `dim`.
fn split_at_dim(dims: &[i64], dim: i64) -> Result<(u64, u64, u64), CuError> {
    let rank = dims.len().max(1) as i64;
    let d = if dim < 0 {
        dim.checked_add(rank)
    } else {
        Some(dim)
    }
    .filter(|d| (0..rank).contains(d))
    .ok_or_else(|| invalid(format!("dimension {dim} of a tensor of {}", dims.len())))?
        as usize;
    if dims.is_empty() {
        return Ok((1, 1, 1));
    }
    Ok((numel(&dims[..d])?, dims[d] as u64, numel(&dims[d + 1..])?))
}

/// Softmax and its kin, each group along the dimension at a time; in f64, each
/// result rounded to the output's type.
fn along_dim(memory: &SessionMemory, along: Along, a: &[AclnnArg]) -> Result<(), CuError> {
    let x = tensor(a, 0);
    let dim = match along {
        Along::SoftmaxBackward | Along::LogSoftmaxBackward => int_arg(a, 2),
        _ => int_arg(a, 1),
    };
    let (outer, size, inner) = split_at_dim(&x.dims, dim)?;
    let (outer, size, inner) = (outer as usize, size as usize, inner as usize);
    let xs = load(memory, x)?.f64s();
    if xs.is_empty() {
        return Ok(());
    }
    let at = |o: usize, k: usize, i: usize| (o * size + k) * inner + i;
    match along {
        Along::ArgMax | Along::MaxDim => {
            let (mut values, mut indices) = (
                Vec::with_capacity(outer * inner),
                Vec::with_capacity(outer * inner),
            );
            for o in 0..outer {
                for i in 0..inner {
                    // The first of equal maxima; NaN is the maximum, as PyTorch's.
                    let mut best = 0;
                    for k in 1..size {
                        let (v, b) = (xs[at(o, k, i)], xs[at(o, best, i)]);
                        if !b.is_nan() && (v > b || v.is_nan()) {
                            best = k;
                        }
                    }
                    values.push(xs[at(o, best, i)]);
                    indices.push(best as i64);
                }
            }
            if along == Along::ArgMax {
                return store(memory, tensor(a, 3), &Values::I(indices));
            }
            let out = tensor(a, 3);
            store(memory, out, &values_of(out.dtype, values))?;
            store(memory, tensor(a, 4), &Values::I(indices))
        }
        Along::Softmax | Along::LogSoftmax => {
            let out = tensor(a, 2);
            let mut result = vec![0.0; xs.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let m = (0..size)
                        .map(|k| xs[at(o, k, i)])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = (0..size).map(|k| (xs[at(o, k, i)] - m).exp()).sum();
                    for k in 0..size {
                        let v = xs[at(o, k, i)] - m;
                        result[at(o, k, i)] = if along == Along::Softmax {
                            v.exp() / sum
                        } else {
                            v - sum.ln()
                        };
                    }
                }
            }
            store(
                memory,
                out,
                &values_of(
                    out.dtype,
                    result.into_iter().map(|v| round(out.dtype, v)).collect(),
                ),
            )
        }
        Along::SoftmaxBackward | Along::LogSoftmaxBackward => {
            // x is the gradient, a[1] the forward's output.
            let ys = load(memory, tensor(a, 1))?.f64s();
            let out = tensor(a, 3);
            let mut result = vec![0.0; xs.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let idx = |k| at(o, k, i);
                    if along == Along::SoftmaxBackward {
                        let dot: f64 = (0..size).map(|k| xs[idx(k)] * ys[idx(k)]).sum();
                        for k in 0..size {
                            result[idx(k)] = ys[idx(k)] * (xs[idx(k)] - dot);
                        }
                    } else {
                        let sum: f64 = (0..size).map(|k| xs[idx(k)]).sum();
                        for k in 0..size {
                            result[idx(k)] = xs[idx(k)] - ys[idx(k)].exp() * sum;
                        }
                    }
                }
            }
            store(
                memory,
                out,
                &values_of(
                    out.dtype,
                    result.into_iter().map(|v| round(out.dtype, v)).collect(),
                ),
            )
        }
    }
}

/// The targets of an nll_loss, each checked to be a class (or the ignored index).
fn targets(
    memory: &SessionMemory,
    t: &TensorDesc,
    classes: i64,
    ignore: i64,
) -> Result<Vec<i64>, CuError> {
    let ts = match load(memory, t)? {
        Values::I(v) => v,
        Values::F(_) => return Err(invalid("nll_loss's targets are not integers")),
    };
    match ts
        .iter()
        .find(|&&c| c != ignore && !(0..classes).contains(&c))
    {
        Some(c) => Err(invalid(format!(
            "target {c} is out of bounds ({classes} classes)"
        ))),
        None => Ok(ts),
    }
}

/// `(inputs as f64, classes, weight per class)` of an nll_loss from parameter `at` on.
fn nll_inputs(
    memory: &SessionMemory,
    a: &[AclnnArg],
    at: usize,
) -> Result<(Vec<f64>, usize, Vec<f64>), CuError> {
    let x = tensor(a, at);
    let classes = *x.dims.last().unwrap_or(&1) as usize;
    let xs = load(memory, x)?.f64s();
    let weight = match &a[at + 2] {
        AclnnArg::Tensor(w) => load(memory, w)?.f64s(),
        _ => vec![1.0; classes],
    };
    Ok((xs, classes, weight))
}

/// `aclnnNLLLoss(self, target, weight, reduction, ignoreIndex, out, totalWeight)`.
fn nll_loss(memory: &SessionMemory, a: &[AclnnArg]) -> Result<(), CuError> {
    let (xs, classes, weight) = nll_inputs(memory, a, 0)?;
    let (reduction, ignore) = (int_arg(a, 3), int_arg(a, 4));
    let ts = targets(memory, tensor(a, 1), classes as i64, ignore)?;
    let (out, total) = (tensor(a, 5), tensor(a, 6));
    let dtype = out.dtype;
    let mut losses = Vec::with_capacity(ts.len());
    let mut total_weight = 0.0;
    for (i, &t) in ts.iter().enumerate() {
        if t == ignore {
            losses.push(0.0);
            continue;
        }
        let w = weight[t as usize];
        total_weight += w;
        losses.push(-w * xs[i * classes + t as usize]);
    }
    if reduction == 0 {
        store(
            memory,
            out,
            &values_of(dtype, losses.into_iter().map(|v| round(dtype, v)).collect()),
        )?;
    } else {
        let sum: f64 = losses.iter().sum();
        let loss = if reduction == 1 {
            sum / total_weight
        } else {
            sum
        };
        store(memory, out, &values_of(dtype, vec![round(dtype, loss)]))?;
    }
    let n = numel(&total.dims)? as usize;
    store(
        memory,
        total,
        &values_of(total.dtype, vec![round(total.dtype, total_weight); n]),
    )
}

/// `aclnnNLLLossBackward(gradOutput, self, target, weight, reduction,
/// ignoreIndex, totalWeight, out)`.
fn nll_loss_backward(memory: &SessionMemory, a: &[AclnnArg]) -> Result<(), CuError> {
    let (_, classes, weight) = nll_inputs(memory, a, 1)?;
    let (reduction, ignore) = (int_arg(a, 4), int_arg(a, 5));
    let ts = targets(memory, tensor(a, 2), classes as i64, ignore)?;
    let grads = load(memory, tensor(a, 0))?.f64s();
    let total_weight = load(memory, tensor(a, 6))?
        .f64s()
        .first()
        .copied()
        .unwrap_or(1.0);
    let out = tensor(a, 7);
    let mut result = vec![0.0; ts.len() * classes];
    for (i, &t) in ts.iter().enumerate() {
        if t == ignore {
            continue;
        }
        let g = if reduction == 0 {
            grads.get(i).copied().unwrap_or(0.0)
        } else {
            grads.first().copied().unwrap_or(0.0)
        };
        let scale = if reduction == 1 { total_weight } else { 1.0 };
        result[i * classes + t as usize] = -weight[t as usize] * g / scale;
    }
    store(
        memory,
        out,
        &values_of(
            out.dtype,
            result.into_iter().map(|v| round(out.dtype, v)).collect(),
        ),
    )
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
    if !is_float(dtype) {
        return integer_binary(memory, op, this, other, alpha, out);
    }
    let alpha = alpha.map(|a| opmath(dtype, a));
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
            let y = opmath(dtype, y);
            elementwise(memory, &[this], out, |v| apply(v[0], y))
        }
        Other::Tensor(t) => elementwise(memory, &[this, t], out, |v| apply(v[0], v[1])),
    }
}

/// [`binary`] into an integer (or bool) output: in i64, wrapping as C's integer
/// arithmetic does, then to the output's width; division floors, and by zero is
/// refused (PyTorch raises ZeroDivisionError).
fn integer_binary(
    memory: &SessionMemory,
    op: Binary,
    this: &TensorDesc,
    other: Other<'_>,
    alpha: Option<f64>,
    out: &TensorDesc,
) -> Result<(), CuError> {
    let ints = |t: &TensorDesc| -> Result<Vec<i64>, CuError> {
        Ok(match broadcast(load(memory, t)?, &t.dims, &out.dims)? {
            Values::I(v) => v,
            Values::F(v) => v.into_iter().map(|x| x as i64).collect(),
        })
    };
    let xs = ints(this)?;
    let ys = match other {
        Other::Tensor(t) => ints(t)?,
        Other::Scalar(y) => vec![y as i64; xs.len()],
    };
    let alpha = alpha.map_or(1, |a| a as i64);
    let result = xs
        .iter()
        .zip(&ys)
        .map(|(&x, &y)| {
            let y = y.wrapping_mul(alpha);
            Ok(from_i64(
                out.dtype,
                match op {
                    Binary::Add => x.wrapping_add(y),
                    Binary::Sub => x.wrapping_sub(y),
                    Binary::Mul => x.wrapping_mul(y),
                    Binary::Div if y == 0 => return Err(invalid("integer division by zero")),
                    Binary::Div => {
                        x.wrapping_div(y) - i64::from((x % y != 0) && ((x < 0) != (y < 0)))
                    }
                },
            ))
        })
        .collect::<Result<Vec<_>, CuError>>()?;
    store(memory, out, &Values::I(result))
}

/// `out[i] = src[i]` converted to `out`'s type, with `src` broadcast.
fn copy_into(memory: &SessionMemory, src: &TensorDesc, out: &TensorDesc) -> Result<(), CuError> {
    let values = broadcast(load(memory, src)?, &src.dims, &out.dims)?;
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

/// `(m, k, n)` of a product of `x` (m×k) and `w` (k×n) into `out` (m×n).
fn product_shape(
    x: &TensorDesc,
    w: &TensorDesc,
    out: &TensorDesc,
) -> Result<(i64, i64, i64), CuError> {
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
    Ok((m, k, n))
}

/// `out = beta × bias + alpha × (x @ w)` (or `x @ w`), over 2-D operands.
fn mm(
    memory: &SessionMemory,
    x: &TensorDesc,
    w: &TensorDesc,
    bias: Option<(&TensorDesc, f64, f64)>,
    out: &TensorDesc,
) -> Result<(), CuError> {
    let (m, k, n) = product_shape(x, w, out)?;
    let (m, k, n) = (m as usize, k as usize, n as usize);
    let xs = load(memory, x)?.f64s();
    let ws = load(memory, w)?.f64s();
    let bias = match bias {
        Some((b, beta, alpha)) => Some((
            broadcast(load(memory, b)?, &b.dims, &out.dims)?.f64s(),
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
                    // beta 0 ignores the bias, NaN and infinity in it too.
                    let base = if *beta == 0.0 {
                        0.0
                    } else if *beta == 1.0 {
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
    let axes = reduced_axes(dims, x.dims.len())?;
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
                // The mean of nothing is 0/0, NaN, as PyTorch's.
                if r == Reduce::Mean { s / c as f64 } else { s },
            )
        })
        .collect();
    store(memory, out, &values_of(out.dtype, result))
}

/// A session's executors between their two phases.
#[derive(Default)]
pub(super) struct Executors {
    held: HashMap<u64, Prepared>,
    /// Bytes their parameters take.
    bytes: u64,
}

impl Executors {
    pub(super) fn insert(&mut self, handle: u64, p: Prepared) -> Result<(), CuError> {
        if self.held.len() >= MAX_EXECUTORS || self.bytes + p.bytes > MAX_HELD_BYTES {
            return Err(CuError::new(
                code::OUT_OF_MEMORY,
                format!(
                    "{} aclnn executors of {} bytes wait for their second phase (at most {MAX_EXECUTORS}, {MAX_HELD_BYTES} bytes)",
                    self.held.len(),
                    self.bytes
                ),
            ));
        }
        self.bytes += p.bytes;
        self.held.insert(handle, p);
        Ok(())
    }

    /// Whether `handle` is a waiting executor.
    pub(super) fn has(&self, handle: u64) -> bool {
        self.held.contains_key(&handle)
    }

    pub(super) fn take(&mut self, handle: u64) -> Result<Prepared, CuError> {
        let p = self
            .held
            .remove(&handle)
            .ok_or_else(|| crate::checks::invalid_handle("aclnn executor", handle))?;
        self.bytes -= p.bytes;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

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
        let b = broadcast(v.clone(), &[2, 1], &[2, 3]).unwrap().f64s();
        assert_eq!(b, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        let b = broadcast(v.clone(), &[2], &[3, 2]).unwrap().f64s();
        assert_eq!(b, [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        assert!(broadcast(v.clone(), &[2], &[3]).is_err());
    }

    fn f32_tensor(dims: &[i64], strides: &[i64], data: u64) -> TensorDesc {
        TensorDesc {
            dtype: dt::FLOAT,
            dims: dims.to_vec(),
            strides: strides.to_vec(),
            offset: 0,
            format: 2,
            storage_dims: dims.to_vec(),
            data,
        }
    }

    fn memory() -> (SessionMemory, u64) {
        let memory = SessionMemory::new(super::super::memory::DeviceMemory::devices(1, 1 << 20));
        let base = memory.alloc(0, 4096).unwrap();
        (memory, base)
    }

    fn run_op(memory: &SessionMemory, name: &str, args: Vec<AclnnArg>) -> Result<(), CuError> {
        run(&prepare(name, args)?, memory)
    }

    #[test]
    fn an_elementwise_operator_reads_and_writes_strided_views() {
        let (memory, base) = memory();
        let values: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
        memory.write(base, &values).unwrap();
        // x is 2×4 row-major; out its transpose's layout (4×2 viewed as 2×4 with strides 1, 2).
        let x = f32_tensor(&[2, 4], &[4, 1], base);
        let out = f32_tensor(&[2, 4], &[1, 2], base + 256);
        let two = AclnnArg::Scalar(dt::FLOAT, ByteBuf::from(2f32.to_le_bytes().to_vec()));
        run_op(
            &memory,
            "aclnnMuls",
            vec![AclnnArg::Tensor(x), two, AclnnArg::Tensor(out)],
        )
        .unwrap();
        let got: Vec<f32> = memory
            .read(base + 256, 32)
            .unwrap()
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got, [0.0, 8.0, 2.0, 10.0, 4.0, 12.0, 6.0, 14.0]);
    }

    #[test]
    fn views_that_overflow_or_leave_their_allocation_fail_without_panicking() {
        let (memory, base) = memory();
        for stride in [(1i64 << 62) - 1, 1 << 62, 1 << 40, 2000] {
            let x = f32_tensor(&[2], &[stride], base);
            let e = run_op(&memory, "aclnnInplaceOne", vec![AclnnArg::Tensor(x)]).err();
            assert!(e.is_some(), "stride {stride} was written");
        }
        // A negative stride reaching before the storage.
        let x = f32_tensor(&[2], &[-1], base);
        assert!(run_op(&memory, "aclnnInplaceOne", vec![AclnnArg::Tensor(x)]).is_err());
        // Memory that is not the session's.
        let x = f32_tensor(&[4], &[1], base + (1 << 30));
        assert!(run_op(&memory, "aclnnInplaceOne", vec![AclnnArg::Tensor(x)]).is_err());
    }

    #[test]
    fn shapes_are_checked_and_work_is_bounded_at_the_first_phase() {
        let t = |dims: &[i64]| AclnnArg::Tensor(f32_tensor(dims, &vec![0; dims.len()], 0x1000));
        let e = prepare("aclnnMul", vec![t(&[3]), t(&[4]), t(&[4])])
            .err()
            .unwrap();
        assert!(e.message.contains("does not broadcast"), "{}", e.message);
        let e = prepare(
            "aclnnMm",
            vec![t(&[2, 3]), t(&[4, 2]), t(&[2, 2]), AclnnArg::I8(0)],
        )
        .err()
        .unwrap();
        assert!(e.message.contains("a product of"), "{}", e.message);
        let e = prepare(
            "aclnnMm",
            vec![t(&[2, 3, 4]), t(&[4, 2]), t(&[2, 2]), AclnnArg::I8(0)],
        )
        .err()
        .unwrap();
        assert_eq!(e.code, code::NOT_SUPPORTED);
        // Stride-0 views of one element: each tensor within bounds, the product not.
        let big = [1 << 12, 1 << 12];
        let e = prepare("aclnnMm", vec![t(&big), t(&big), t(&big), AclnnArg::I8(0)])
            .err()
            .unwrap();
        assert!(e.message.contains("multiply-adds"), "{}", e.message);
        let many = || {
            AclnnArg::TensorList(vec![
                Some(f32_tensor(&[1 << 12, 1 << 12], &[0, 0], 0x1000));
                3
            ])
        };
        let two = AclnnArg::Scalar(dt::FLOAT, ByteBuf::from(2f32.to_le_bytes().to_vec()));
        let e = prepare("aclnnForeachMulScalarV2", vec![many(), two, many()])
            .err()
            .unwrap();
        assert!(e.message.contains("elements in all"), "{}", e.message);
        let e = prepare(
            "aclnnReduceSum",
            vec![
                t(&[2, 3]),
                AclnnArg::IntArray(vec![i64::MIN]),
                AclnnArg::Bool(false),
                AclnnArg::I32(0),
                t(&[2]),
            ],
        )
        .err()
        .unwrap();
        assert!(e.message.contains("dimension"), "{}", e.message);
    }

    #[test]
    fn waiting_executors_are_bounded_in_number_and_bytes() {
        let mut held = Executors::default();
        let list = AclnnArg::TensorList(vec![Some(f32_tensor(&[1; 100], &[1; 100], 0x1000)); 4000]);
        let big = || {
            prepare(
                "aclnnForeachAddScalarV2",
                vec![
                    list.clone(),
                    AclnnArg::Scalar(dt::FLOAT, ByteBuf::from(vec![0; 4])),
                    list.clone(),
                ],
            )
            .unwrap()
        };
        let mut refused = None;
        for i in 0..100 {
            if let Err(e) = held.insert(i, big()) {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.expect("64 MiB of parameters is the most held");
        assert!(i > 0 && e.code == code::OUT_OF_MEMORY, "{i}: {}", e.message);
        held.take(0).unwrap();
        held.insert(1000, big()).unwrap();
        assert!(held.take(0).is_err(), "taken once");
    }

    #[test]
    fn integer_arithmetic_wraps_as_cs_and_division_by_zero_is_refused() {
        let (memory, base) = memory();
        let i64s = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        memory
            .write(base, &i64s(&[i64::MAX, -7, (1 << 53) + 1]))
            .unwrap();
        memory.write(base + 64, &i64s(&[1, 2, 1])).unwrap();
        let t = |at: u64| {
            AclnnArg::Tensor(TensorDesc {
                dtype: dt::INT64,
                ..f32_tensor(&[3], &[1], at)
            })
        };
        let one = AclnnArg::Scalar(dt::INT64, ByteBuf::from(1i64.to_le_bytes().to_vec()));
        run_op(
            &memory,
            "aclnnAdd",
            vec![t(base), t(base + 64), one, t(base + 128)],
        )
        .unwrap();
        let got: Vec<i64> = memory
            .read(base + 128, 24)
            .unwrap()
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, [i64::MIN, -5, (1 << 53) + 2]);
        run_op(
            &memory,
            "aclnnDiv",
            vec![t(base), t(base + 64), t(base + 128)],
        )
        .unwrap();
        let got: Vec<i64> = memory
            .read(base + 128, 24)
            .unwrap()
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, [i64::MAX, -4, (1 << 53) + 1], "floor division");
        memory.write(base + 64, &i64s(&[0, 0, 0])).unwrap();
        assert!(run_op(
            &memory,
            "aclnnDiv",
            vec![t(base), t(base + 64), t(base + 128)]
        )
        .is_err());
    }

    #[test]
    fn empty_tensors_with_huge_other_dimensions_cost_nothing() {
        let t = |dims: &[i64]| AclnnArg::Tensor(f32_tensor(dims, &vec![1; dims.len()], 0x1000));
        let big = 1 << 24;
        // Groups of an empty dimension: too many to loop over, or no maximum.
        assert!(prepare(
            "aclnnSoftmax",
            vec![t(&[big, 0, big]), AclnnArg::I64(1), t(&[0])]
        )
        .is_err());
        let e = prepare(
            "aclnnArgMax",
            vec![t(&[3, 0]), AclnnArg::I64(1), AclnnArg::Bool(false), t(&[3])],
        )
        .err()
        .unwrap();
        assert!(e.message.contains("empty dimension"), "{}", e.message);
        // Classes by the million with nothing to classify.
        let nll = vec![
            t(&[0, 1 << 40]),
            t(&[0]),
            AclnnArg::Null,
            AclnnArg::I64(1),
            AclnnArg::I64(-100),
            t(&[]),
            t(&[]),
        ];
        assert!(prepare("aclnnNLLLoss", nll).is_err());
        // Concatenating empty parts is done at once, whatever their count.
        let (memory, _) = memory();
        let parts = AclnnArg::TensorList(vec![Some(f32_tensor(&[big, 0], &[1, 1], 0x1000)); 4096]);
        let started = std::time::Instant::now();
        run_op(
            &memory,
            "aclnnCat",
            vec![parts, AclnnArg::I64(1), t(&[big, 0])],
        )
        .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Parts whose sizes overflow i64 are refused.
        let parts = AclnnArg::TensorList(vec![
            Some(f32_tensor(&[1, i64::MAX], &[0, 0], 0x1000)),
            Some(f32_tensor(&[1, 1], &[0, 0], 0x1000)),
        ]);
        assert!(prepare("aclnnCat", vec![parts, AclnnArg::I64(1), t(&[1, i64::MAX])]).is_err());
    }

    #[test]
    fn nll_loss_refuses_a_target_outside_its_classes() {
        let (memory, base) = memory();
        memory.write(base, &[0u8; 64]).unwrap();
        memory.write(base + 64, &7i64.to_le_bytes()).unwrap();
        let x = AclnnArg::Tensor(f32_tensor(&[1, 4], &[4, 1], base));
        let target = AclnnArg::Tensor(TensorDesc {
            dtype: dt::INT64,
            ..f32_tensor(&[1], &[1], base + 64)
        });
        let out = || AclnnArg::Tensor(f32_tensor(&[], &[], base + 128));
        let args = vec![
            x,
            target,
            AclnnArg::Null,
            AclnnArg::I64(1),
            AclnnArg::I64(-100),
            out(),
            out(),
        ];
        let e = run_op(&memory, "aclnnNLLLoss", args).unwrap_err();
        assert!(
            e.message.contains("target 7 is out of bounds"),
            "{}",
            e.message
        );
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
