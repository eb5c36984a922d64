//! The stand-in device's 2-D convolutions (`aclnnConvolution` and its
//! backward) and max pooling (`aclnnMaxPool2dWithIndices` and
//! `aclnnMaxPool2dWithMask`, and their backward), on
//! NCHW tensors of the float types, as PyTorch defines them. Products accumulate
//! in f64 and are rounded once to the output's type. Shapes are checked at the
//! first phase, and the multiply-adds of one operator are bounded as a matrix
//! product's are.

use xpupool_protocol::aclnn::{AclnnArg, TensorDesc};
use xpupool_protocol::CuError;

use super::super::memory::SessionMemory;
use super::{
    invalid, is_float, load, masked_outputs, maybe_tensor, numel, round, store, store_rounded,
    tensor, unsupported, values_of, MAX_ELEMENTS, MAX_PRODUCT,
};

/// Strides, paddings, dilations and kernel sizes beyond this are refused (the
/// index arithmetic then stays far inside i64).
const MAX_GEOMETRY: i64 = 1 << 20;

/// An int array parameter (`None`: NULL).
fn ints(a: &[AclnnArg], i: usize) -> Option<&[i64]> {
    match &a[i] {
        AclnnArg::IntArray(v) => Some(v),
        _ => None,
    }
}

/// A pair (height, width) from an array of one or two values.
fn pair(what: &str, v: Option<&[i64]>, least: i64) -> Result<[i64; 2], CuError> {
    let p = match v {
        Some([x]) => [*x, *x],
        Some([y, x]) => [*y, *x],
        _ => {
            return Err(invalid(format!(
                "{what}: one or two values for a 2-D operator"
            )))
        }
    };
    if p.iter().any(|&x| x < least || x > MAX_GEOMETRY) {
        return Err(invalid(format!("{what} {p:?}")));
    }
    Ok(p)
}

/// A 4-D tensor's shape, as unsigned sizes.
fn nchw(what: &str, t: &TensorDesc) -> Result<[usize; 4], CuError> {
    // Empty tensors' other dimensions are not bounded by their element count.
    if t.dims.iter().any(|&d| d > MAX_ELEMENTS as i64) {
        return Err(invalid(format!("{what} of shape {:?}", t.dims)));
    }
    match t.dims[..] {
        [n, c, h, w] if is_float(t.dtype) => Ok([n as usize, c as usize, h as usize, w as usize]),
        [..] if !is_float(t.dtype) => Err(unsupported(format!(
            "{what} of aclDataType {} (the stand-in convolves and pools float types)",
            t.dtype
        ))),
        _ => Err(invalid(format!(
            "{what} of shape {:?}: NCHW (4-D) is needed",
            t.dims
        ))),
    }
}

/// An output size: `(size + 2 pad - dilation (kernel - 1) - 1) / stride + 1`,
/// rounded up with `ceil` (a window starting in the padding on the right is
/// then dropped, as PyTorch drops it).
fn out_size(
    size: i64,
    kernel: i64,
    stride: i64,
    pad: i64,
    dilation: i64,
    ceil: bool,
) -> Result<i64, CuError> {
    let span = size + 2 * pad - dilation * (kernel - 1) - 1;
    if span < 0 {
        return Err(invalid(format!(
            "a window of {kernel} (dilation {dilation}) does not fit {size} with padding {pad}"
        )));
    }
    let mut out = if ceil {
        (span + stride - 1) / stride + 1
    } else {
        span / stride + 1
    };
    if ceil && (out - 1) * stride >= size + pad {
        out -= 1;
    }
    Ok(out)
}

/// A convolution's sizes.
struct Conv {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oc: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    groups: usize,
    stride: [i64; 2],
    pad: [i64; 2],
    dilation: [i64; 2],
}

impl Conv {
    /// From the input, the weight and the parameters at `at` (stride, padding,
    /// dilation, transposed, output padding, groups), checked and bounded.
    fn of(
        input: &TensorDesc,
        weight: &TensorDesc,
        a: &[AclnnArg],
        at: usize,
    ) -> Result<Self, CuError> {
        if matches!(a[at + 3], AclnnArg::Bool(true)) {
            return Err(unsupported(
                "a transposed convolution on the stand-in device",
            ));
        }
        let [n, c, h, w] = nchw("a convolution's input", input)?;
        let [oc, icg, kh, kw] = nchw("a convolution's weight", weight)?;
        let groups = super::int_arg(a, at + 5);
        let stride = pair("stride", ints(a, at), 1)?;
        let pad = pair("padding", ints(a, at + 1), 0)?;
        let dilation = pair("dilation", ints(a, at + 2), 1)?;
        if groups < 1
            || groups > MAX_ELEMENTS as i64
            || c as i64 % groups != 0
            || oc as i64 % groups != 0
            || icg as i64 * groups != c as i64
        {
            return Err(invalid(format!(
                "groups {groups} for {c} input and {oc} output channels and a weight of {:?}",
                weight.dims
            )));
        }
        if kh == 0 || kw == 0 {
            return Err(invalid("an empty convolution kernel"));
        }
        let oh = out_size(h as i64, kh as i64, stride[0], pad[0], dilation[0], false)?;
        let ow = out_size(w as i64, kw as i64, stride[1], pad[1], dilation[1], false)?;
        let conv = Conv {
            n,
            c,
            h,
            w,
            oc,
            kh,
            kw,
            oh: oh as usize,
            ow: ow as usize,
            groups: groups as usize,
            stride,
            pad,
            dilation,
        };
        let work = [n, oc, conv.oh, conv.ow, icg, kh, kw]
            .iter()
            .try_fold(1u64, |m, &x| m.checked_mul(x as u64))
            .filter(|&m| m <= MAX_PRODUCT);
        if work.is_none() {
            return Err(invalid(format!(
                "a convolution of more than {MAX_PRODUCT} multiply-adds on the stand-in device"
            )));
        }
        Ok(conv)
    }

    fn out_dims(&self) -> Vec<i64> {
        [self.n, self.oc, self.oh, self.ow]
            .iter()
            .map(|&x| x as i64)
            .collect()
    }

    /// Each (output position, input position, weight position) the convolution
    /// multiplies, as flat row-major indices: `f(out, input, weight)`.
    fn each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let icg = self.c / self.groups;
        let ocg = self.oc / self.groups;
        for n in 0..self.n {
            for o in 0..self.oc {
                let g = o / ocg;
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let out = ((n * self.oc + o) * self.oh + oy) * self.ow + ox;
                        for i in 0..icg {
                            let ci = g * icg + i;
                            for ky in 0..self.kh {
                                let y = oy as i64 * self.stride[0] - self.pad[0]
                                    + ky as i64 * self.dilation[0];
                                if y < 0 || y >= self.h as i64 {
                                    continue;
                                }
                                for kx in 0..self.kw {
                                    let x = ox as i64 * self.stride[1] - self.pad[1]
                                        + kx as i64 * self.dilation[1];
                                    if x < 0 || x >= self.w as i64 {
                                        continue;
                                    }
                                    let input = ((n * self.c + ci) * self.h + y as usize) * self.w
                                        + x as usize;
                                    let weight = ((o * icg + i) * self.kh + ky) * self.kw + kx;
                                    f(out, input, weight);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn same_dims(what: &str, t: &TensorDesc, dims: &[i64]) -> Result<(), CuError> {
    if t.dims == dims {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} of shape {:?}, not {dims:?}",
            t.dims
        )))
    }
}

/// `aclnnConvolution(input, weight, bias, stride, padding, dilation,
/// transposed, outputPadding, groups, output, cubeMathType)`.
pub(super) fn validate_forward(a: &[AclnnArg]) -> Result<(), CuError> {
    let conv = Conv::of(tensor(a, 0), tensor(a, 1), a, 3)?;
    if let Some(bias) = maybe_tensor(a, 2) {
        same_dims("a convolution's bias", bias, &[conv.oc as i64])?;
    }
    nchw("a convolution's output", tensor(a, 9))?;
    same_dims("a convolution's output", tensor(a, 9), &conv.out_dims())
}

pub(super) fn forward(memory: &SessionMemory, a: &[AclnnArg]) -> Result<(), CuError> {
    let conv = Conv::of(tensor(a, 0), tensor(a, 1), a, 3)?;
    let input = load(memory, tensor(a, 0))?.f64s();
    let weight = load(memory, tensor(a, 1))?.f64s();
    let out_t = tensor(a, 9);
    let mut out = vec![0.0; conv.n * conv.oc * conv.oh * conv.ow];
    conv.each(|o, i, w| out[o] += input[i] * weight[w]);
    if let Some(bias) = maybe_tensor(a, 2) {
        let bias = load(memory, bias)?.f64s();
        let plane = conv.oh * conv.ow;
        for (k, v) in out.iter_mut().enumerate() {
            *v += bias[(k / plane) % conv.oc];
        }
    }
    let dtype = out_t.dtype;
    store(
        memory,
        out_t,
        &values_of(dtype, out.into_iter().map(|v| round(dtype, v)).collect()),
    )
}

/// `aclnnConvolutionBackward(gradOutput, input, weight, biasSizes, stride,
/// padding, dilation, transposed, outputPadding, groups, outputMask,
/// cubeMathType, gradInput, gradWeight, gradBias)`.
pub(super) fn validate_backward(a: &[AclnnArg]) -> Result<(), CuError> {
    let (input, weight) = (tensor(a, 1), tensor(a, 2));
    let conv = Conv::of(input, weight, a, 4)?;
    nchw("a convolution's output gradient", tensor(a, 0))?;
    same_dims(
        "a convolution's output gradient",
        tensor(a, 0),
        &conv.out_dims(),
    )?;
    let [gi, gw, gb] = masked_outputs(a, 10, 12)?;
    if let Some(t) = gi {
        nchw("an input gradient", t)?;
        same_dims("an input gradient", t, &input.dims)?;
    }
    if let Some(t) = gw {
        nchw("a weight gradient", t)?;
        same_dims("a weight gradient", t, &weight.dims)?;
    }
    if let Some(t) = gb {
        if !is_float(t.dtype) {
            return Err(unsupported("a bias gradient of an integer type"));
        }
        same_dims("a bias gradient", t, &[conv.oc as i64])?;
    }
    Ok(())
}

pub(super) fn backward(memory: &SessionMemory, a: &[AclnnArg]) -> Result<(), CuError> {
    let conv = Conv::of(tensor(a, 1), tensor(a, 2), a, 4)?;
    let grad = load(memory, tensor(a, 0))?.f64s();
    let [gi, gw, gb] = masked_outputs(a, 10, 12)?;
    if let Some(t) = gi {
        let weight = load(memory, tensor(a, 2))?.f64s();
        let mut out = vec![0.0; numel(&t.dims)? as usize];
        conv.each(|o, i, w| out[i] += grad[o] * weight[w]);
        store_rounded(memory, t, out)?;
    }
    if let Some(t) = gw {
        let input = load(memory, tensor(a, 1))?.f64s();
        let mut out = vec![0.0; numel(&t.dims)? as usize];
        conv.each(|o, i, w| out[w] += grad[o] * input[i]);
        store_rounded(memory, t, out)?;
    }
    if let Some(t) = gb {
        let plane = conv.oh * conv.ow;
        let mut out = vec![0.0; conv.oc];
        for (k, g) in grad.iter().enumerate() {
            out[(k / plane) % conv.oc] += g;
        }
        store_rounded(memory, t, out)?;
    }
    Ok(())
}

/// A max pooling's sizes.
struct Pool {
    planes: usize,
    h: usize,
    w: usize,
    kernel: [i64; 2],
    stride: [i64; 2],
    pad: [i64; 2],
    dilation: [i64; 2],
    oh: usize,
    ow: usize,
}

impl Pool {
    /// From the input and the parameters at `at` (kernel, stride, padding,
    /// dilation, ceil mode).
    fn of(input: &TensorDesc, a: &[AclnnArg], at: usize) -> Result<Self, CuError> {
        let [n, c, h, w] = nchw("a pooling's input", input)?;
        let kernel = pair("kernel size", ints(a, at), 1)?;
        // An empty stride is the kernel's.
        let stride = match ints(a, at + 1) {
            Some([]) => kernel,
            s => pair("stride", s, 1)?,
        };
        let pad = pair("padding", ints(a, at + 2), 0)?;
        let dilation = pair("dilation", ints(a, at + 3), 1)?;
        let ceil = matches!(a[at + 4], AclnnArg::Bool(true));
        if pad[0] * 2 > kernel[0] || pad[1] * 2 > kernel[1] {
            return Err(invalid(format!(
                "padding {pad:?} over half the kernel {kernel:?}"
            )));
        }
        let oh = out_size(h as i64, kernel[0], stride[0], pad[0], dilation[0], ceil)?;
        let ow = out_size(w as i64, kernel[1], stride[1], pad[1], dilation[1], ceil)?;
        let pool = Pool {
            planes: n * c,
            h,
            w,
            kernel,
            stride,
            pad,
            dilation,
            oh: oh as usize,
            ow: ow as usize,
        };
        let work = [
            n,
            c,
            pool.oh,
            pool.ow,
            kernel[0] as usize,
            kernel[1] as usize,
        ]
        .iter()
        .try_fold(1u64, |m, &x| m.checked_mul(x as u64))
        .filter(|&m| m <= MAX_PRODUCT);
        if work.is_none() {
            return Err(invalid(format!(
                "a pooling of more than {MAX_PRODUCT} comparisons on the stand-in device"
            )));
        }
        Ok(pool)
    }

    fn out_dims(&self, input: &TensorDesc) -> Vec<i64> {
        vec![input.dims[0], input.dims[1], self.oh as i64, self.ow as i64]
    }

    /// The mask `aclnnMaxPool2dWithMask` gives torch_npu, whose shape torch_npu
    /// allocates: a row of bytes for each place in the window,
    /// `(ceil(outputs / 16) + 1) × 32` of them, at least two per output. Here
    /// bit `p` of a place's row is set when that place was output `p`'s largest.
    fn mask_dims(&self, input: &TensorDesc) -> Vec<i64> {
        let places = self.kernel[0] * self.kernel[1];
        let row = ((self.oh * self.ow).div_ceil(16) as i64 + 1) * 32;
        vec![input.dims[0], input.dims[1], places, row]
    }

    /// The input position (within its plane) of output `(oy, ox)`'s window place `k`.
    fn position(&self, oy: usize, ox: usize, k: usize) -> Option<usize> {
        let (ky, kx) = ((k as i64) / self.kernel[1], (k as i64) % self.kernel[1]);
        let y = oy as i64 * self.stride[0] - self.pad[0] + ky * self.dilation[0];
        let x = ox as i64 * self.stride[1] - self.pad[1] + kx * self.dilation[1];
        (y >= 0 && y < self.h as i64 && x >= 0 && x < self.w as i64)
            .then(|| y as usize * self.w + x as usize)
    }

    /// For each output position, the flat index (within its plane) of its
    /// window's largest input (NaN wins, the first of equals wins), as PyTorch's,
    /// and that input's place in the window.
    fn argmax(&self, input: &[f64]) -> Vec<(usize, usize)> {
        let mut out = Vec::with_capacity(self.planes * self.oh * self.ow);
        for p in 0..self.planes {
            let plane = &input[p * self.h * self.w..(p + 1) * self.h * self.w];
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    let mut best: Option<(usize, usize)> = None;
                    for ky in 0..self.kernel[0] {
                        let y = oy as i64 * self.stride[0] - self.pad[0] + ky * self.dilation[0];
                        if y < 0 || y >= self.h as i64 {
                            continue;
                        }
                        for kx in 0..self.kernel[1] {
                            let x =
                                ox as i64 * self.stride[1] - self.pad[1] + kx * self.dilation[1];
                            if x < 0 || x >= self.w as i64 {
                                continue;
                            }
                            let at = y as usize * self.w + x as usize;
                            let v = plane[at];
                            if best.is_none_or(|(b, _)| {
                                v > plane[b] || (v.is_nan() && !plane[b].is_nan())
                            }) {
                                best = Some((at, (ky * self.kernel[1] + kx) as usize));
                            }
                        }
                    }
                    // A window always holds an input (padding is at most half the kernel).
                    out.push(best.unwrap_or((0, 0)));
                }
            }
        }
        out
    }
}

/// `aclnnMaxPool2dWithIndices(self, kernelSize, stride, padding, dilation,
/// ceilMode, out, indices)` and `aclnnMaxPool2dWithMask(…, out, mask)`.
pub(super) fn validate_pool(a: &[AclnnArg], mask: bool) -> Result<(), CuError> {
    let input = tensor(a, 0);
    let pool = Pool::of(input, a, 1)?;
    same_dims("a pooling's output", tensor(a, 6), &pool.out_dims(input))?;
    which(&pool, input, tensor(a, 7), mask)
}

/// The indices (or mask) tensor is of the shape and type the operator gives it.
fn which(pool: &Pool, input: &TensorDesc, t: &TensorDesc, mask: bool) -> Result<(), CuError> {
    if mask {
        same_dims("a pooling's mask", t, &pool.mask_dims(input))?;
        if !matches!(t.dtype, 2 | 4) {
            return Err(invalid("a pooling's mask of a type other than int8"));
        }
    } else {
        same_dims("a pooling's indices", t, &pool.out_dims(input))?;
        if is_float(t.dtype) {
            return Err(invalid("a pooling's indices of a float type"));
        }
    }
    Ok(())
}

pub(super) fn pool(memory: &SessionMemory, a: &[AclnnArg], mask: bool) -> Result<(), CuError> {
    let input = tensor(a, 0);
    let pool = Pool::of(input, a, 1)?;
    let values = load(memory, input)?.f64s();
    let best = pool.argmax(&values);
    let plane = pool.h * pool.w;
    let per = pool.oh * pool.ow;
    let out: Vec<f64> = best
        .iter()
        .enumerate()
        .map(|(k, &(b, _))| values[(k / per) * plane + b])
        .collect();
    let (out_t, which_t) = (tensor(a, 6), tensor(a, 7));
    store(memory, out_t, &values_of(out_t.dtype, out))?;
    if !mask {
        return store(
            memory,
            which_t,
            &values_of(which_t.dtype, best.iter().map(|&(b, _)| b as f64).collect()),
        );
    }
    let dims = pool.mask_dims(input);
    let (places, row) = (dims[2] as usize, dims[3] as usize);
    let mut bits = vec![0.0; pool.planes * places * row];
    for (k, &(_, place)) in best.iter().enumerate() {
        let (p, o) = (k / per, k % per);
        let byte = (p * places + place) * row + o / 8;
        bits[byte] = f64::from(bits[byte] as u8 | (1 << (o % 8)));
    }
    store(memory, which_t, &values_of(which_t.dtype, bits))
}

/// `aclnnMaxPool2dWithIndicesBackward(gradOutput, self, indices, kernelSize,
/// stride, padding, dilation, ceilMode, gradInput)`, and `…WithMaskBackward`.
pub(super) fn validate_pool_backward(a: &[AclnnArg], mask: bool) -> Result<(), CuError> {
    let input = tensor(a, 1);
    let pool = Pool::of(input, a, 3)?;
    same_dims(
        "a pooling's output gradient",
        tensor(a, 0),
        &pool.out_dims(input),
    )?;
    which(&pool, input, tensor(a, 2), mask)?;
    same_dims("a pooling's input gradient", tensor(a, 8), &input.dims)
}

pub(super) fn pool_backward(
    memory: &SessionMemory,
    a: &[AclnnArg],
    mask: bool,
) -> Result<(), CuError> {
    let input = tensor(a, 1);
    let pool = Pool::of(input, a, 3)?;
    let grad = load(memory, tensor(a, 0))?.f64s();
    let which_v = load(memory, tensor(a, 2))?.f64s();
    let plane = pool.h * pool.w;
    let per = pool.oh * pool.ow;
    let mut out = vec![0.0; pool.planes * plane];
    let dims = pool.mask_dims(input);
    let (places, row) = (dims[2] as usize, dims[3] as usize);
    for (k, &g) in grad.iter().enumerate() {
        let (p, o) = (k / per, k % per);
        let at = if mask {
            // The window place whose bit is set for this output.
            (0..places)
                .find(|&place| {
                    (which_v[(p * places + place) * row + o / 8] as i64 as u8) & (1 << (o % 8)) != 0
                })
                .and_then(|place| pool.position(o / pool.ow, o % pool.ow, place))
        } else {
            let i = which_v[k];
            (i >= 0.0 && (i as usize) < plane).then_some(i as usize)
        };
        let at =
            at.ok_or_else(|| invalid("a pooling's indices (or mask) point outside the input"))?;
        out[p * plane + at] += g;
    }
    let t = tensor(a, 8);
    store_rounded(memory, t, out)
}

/// `aclnnAdaptiveAvgPool2d(self, outputSize, out)`: each output the mean of
/// its window, rows `[floor(i H / oH), ceil((i + 1) H / oH))` and likewise for
/// columns, as PyTorch's.
struct Adaptive {
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl Adaptive {
    fn of(input: &TensorDesc, size: Option<&[i64]>) -> Result<Self, CuError> {
        let [n, c, h, w] = nchw("an adaptive pooling's input", input)?;
        let [oh, ow] = pair("output size", size, 1)?;
        if h == 0 || w == 0 {
            return Err(invalid("an adaptive pooling of an empty plane"));
        }
        let pool = Adaptive {
            planes: n * c,
            h,
            w,
            oh: oh as usize,
            ow: ow as usize,
        };
        // Each input is read by at most about two windows a dimension, each
        // output once: bounded as the tensors are, and the outputs by this.
        if (pool.planes as u64).saturating_mul(pool.oh as u64 * pool.ow as u64) > MAX_PRODUCT {
            return Err(invalid("an adaptive pooling of too many outputs"));
        }
        Ok(pool)
    }

    fn window(i: usize, size: usize, out: usize) -> (usize, usize) {
        (i * size / out, ((i + 1) * size).div_ceil(out))
    }

    /// For each output, in order: `f(output index, plane, rows, columns)`.
    fn each(&self, mut f: impl FnMut(usize, usize, (usize, usize), (usize, usize))) {
        for p in 0..self.planes {
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    let k = (p * self.oh + oy) * self.ow + ox;
                    f(
                        k,
                        p,
                        Self::window(oy, self.h, self.oh),
                        Self::window(ox, self.w, self.ow),
                    );
                }
            }
        }
    }
}

pub(super) fn validate_adaptive(a: &[AclnnArg]) -> Result<(), CuError> {
    let input = tensor(a, 0);
    let pool = Adaptive::of(input, ints(a, 1))?;
    let dims = vec![input.dims[0], input.dims[1], pool.oh as i64, pool.ow as i64];
    same_dims("an adaptive pooling's output", tensor(a, 2), &dims)
}

pub(super) fn adaptive(memory: &SessionMemory, a: &[AclnnArg]) -> Result<(), CuError> {
    let input = tensor(a, 0);
    let pool = Adaptive::of(input, ints(a, 1))?;
    let x = load(memory, input)?.f64s();
    let mut out = vec![0.0; pool.planes * pool.oh * pool.ow];
    let plane = pool.h * pool.w;
    pool.each(|k, p, (y0, y1), (x0, x1)| {
        let mut sum = 0.0;
        for y in y0..y1 {
            for xx in x0..x1 {
                sum += x[p * plane + y * pool.w + xx];
            }
        }
        out[k] = sum / ((y1 - y0) * (x1 - x0)) as f64;
    });
    let t = tensor(a, 2);
    store_rounded(memory, t, out)
}

/// `aclnnAdaptiveAvgPool2dBackward(gradOutput, self, gradInput)`.
pub(super) fn validate_adaptive_backward(a: &[AclnnArg]) -> Result<(), CuError> {
    let (grad, input) = (tensor(a, 0), tensor(a, 1));
    let g = nchw("an adaptive pooling's output gradient", grad)?;
    Adaptive::of(input, Some(&grad.dims[2..]))?;
    if g[..2] != [input.dims[0] as usize, input.dims[1] as usize] {
        return Err(invalid(
            "an adaptive pooling's gradient of another batch or channels",
        ));
    }
    same_dims(
        "an adaptive pooling's input gradient",
        tensor(a, 2),
        &input.dims,
    )
}

pub(super) fn adaptive_backward(memory: &SessionMemory, a: &[AclnnArg]) -> Result<(), CuError> {
    let (grad_t, input) = (tensor(a, 0), tensor(a, 1));
    let pool = Adaptive::of(input, Some(&grad_t.dims[2..]))?;
    let g = load(memory, grad_t)?.f64s();
    let plane = pool.h * pool.w;
    let mut out = vec![0.0; pool.planes * plane];
    pool.each(|k, p, (y0, y1), (x0, x1)| {
        let share = g[k] / ((y1 - y0) * (x1 - x0)) as f64;
        for y in y0..y1 {
            for xx in x0..x1 {
                out[p * plane + y * pool.w + xx] += share;
            }
        }
    });
    let t = tensor(a, 2);
    store_rounded(memory, t, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xpupool_protocol::code;

    fn t(dims: &[i64], dtype: i32) -> AclnnArg {
        super::super::dense(dims, dtype)
    }

    fn ints(v: &[i64]) -> AclnnArg {
        AclnnArg::IntArray(v.to_vec())
    }

    /// `aclnnConvolution`'s parameters.
    fn conv(
        input: &[i64],
        weight: &[i64],
        stride: i64,
        groups: i64,
        transposed: bool,
        out: &[i64],
    ) -> Vec<AclnnArg> {
        vec![
            t(input, 0),
            t(weight, 0),
            AclnnArg::Null,
            ints(&[stride, stride]),
            ints(&[1, 1]),
            ints(&[1, 1]),
            AclnnArg::Bool(transposed),
            ints(&[0, 0]),
            AclnnArg::I64(groups),
            t(out, 0),
            AclnnArg::I8(0),
        ]
    }

    #[test]
    fn convolutions_are_checked_and_bounded_at_the_first_phase() {
        assert!(validate_forward(&conv(
            &[2, 4, 8, 8],
            &[6, 4, 3, 3],
            1,
            1,
            false,
            &[2, 6, 8, 8]
        ))
        .is_ok());
        assert!(validate_forward(&conv(
            &[2, 4, 8, 8],
            &[6, 2, 3, 3],
            2,
            2,
            false,
            &[2, 6, 4, 4]
        ))
        .is_ok());
        let refused = |a: Vec<AclnnArg>| validate_forward(&a).unwrap_err().code;
        // The wrong output shape, groups that do not divide, a stride of 0 or far too large.
        assert_eq!(
            refused(conv(
                &[2, 4, 8, 8],
                &[6, 4, 3, 3],
                1,
                1,
                false,
                &[2, 6, 7, 8]
            )),
            code::INVALID_VALUE
        );
        assert_eq!(
            refused(conv(
                &[2, 4, 8, 8],
                &[6, 2, 3, 3],
                1,
                3,
                false,
                &[2, 6, 8, 8]
            )),
            code::INVALID_VALUE
        );
        assert_eq!(
            refused(conv(
                &[2, 4, 8, 8],
                &[6, 4, 3, 3],
                0,
                1,
                false,
                &[2, 6, 8, 8]
            )),
            code::INVALID_VALUE
        );
        assert_eq!(
            refused(conv(
                &[2, 4, 8, 8],
                &[6, 4, 3, 3],
                1 << 40,
                1,
                false,
                &[2, 6, 1, 1]
            )),
            code::INVALID_VALUE
        );
        // A kernel larger than the padded input; an integer or 3-D tensor.
        assert_eq!(
            refused(conv(
                &[1, 1, 2, 2],
                &[1, 1, 5, 5],
                1,
                1,
                false,
                &[1, 1, 1, 1]
            )),
            code::INVALID_VALUE
        );
        let mut ints_in = conv(&[1, 1, 4, 4], &[1, 1, 3, 3], 1, 1, false, &[1, 1, 4, 4]);
        ints_in[0] = t(&[1, 1, 4, 4], 3);
        assert_eq!(refused(ints_in), code::NOT_SUPPORTED);
        assert_eq!(
            refused(conv(&[1, 4, 4], &[1, 1, 3, 3], 1, 1, false, &[1, 1, 4, 4])),
            code::INVALID_VALUE
        );
        // Transposed convolutions are not the stand-in's.
        assert_eq!(
            refused(conv(
                &[1, 1, 4, 4],
                &[1, 1, 3, 3],
                1,
                1,
                true,
                &[1, 1, 4, 4]
            )),
            code::NOT_SUPPORTED
        );
        // More multiply-adds than a product may have, though each tensor is within bounds.
        let e = validate_forward(&conv(
            &[64, 64, 64, 64],
            &[64, 64, 3, 3],
            1,
            1,
            false,
            &[64, 64, 64, 64],
        ))
        .unwrap_err();
        assert!(e.message.contains("multiply-adds"), "{}", e.message);
    }

    #[test]
    fn a_convolution_backward_computes_what_its_mask_asks_and_has_the_tensors_for() {
        let backward = |mask: Vec<bool>, grads: [AclnnArg; 3]| {
            let mut a = vec![
                t(&[1, 2, 4, 4], 0),
                t(&[1, 3, 4, 4], 0),
                t(&[2, 3, 3, 3], 0),
                ints(&[2]),
                ints(&[1, 1]),
                ints(&[1, 1]),
                ints(&[1, 1]),
                AclnnArg::Bool(false),
                ints(&[0, 0]),
                AclnnArg::I32(1),
                AclnnArg::BoolArray(mask),
                AclnnArg::I8(0),
            ];
            a.extend(grads);
            validate_backward(&a)
        };
        let all = || [t(&[1, 3, 4, 4], 0), t(&[2, 3, 3, 3], 0), t(&[2], 0)];
        assert!(backward(vec![true, true, true], all()).is_ok());
        assert!(backward(
            vec![false, true, false],
            [AclnnArg::Null, t(&[2, 3, 3, 3], 0), AclnnArg::Null]
        )
        .is_ok());
        // Asked for without its tensor; a gradient of the wrong shape; a mask of two.
        assert!(backward(
            vec![true, true, true],
            [AclnnArg::Null, t(&[2, 3, 3, 3], 0), t(&[2], 0)]
        )
        .is_err());
        assert!(backward(
            vec![true, true, true],
            [t(&[1, 3, 4, 5], 0), t(&[2, 3, 3, 3], 0), t(&[2], 0)]
        )
        .is_err());
        assert!(backward(vec![true, true], all()).is_err());
    }

    #[test]
    fn poolings_check_their_indices_or_mask() {
        let pool = |kernel: i64, padding: i64, which: AclnnArg, mask: bool| {
            validate_pool(
                &[
                    t(&[2, 3, 8, 8], 0),
                    ints(&[kernel]),
                    ints(&[]),
                    ints(&[padding]),
                    ints(&[1]),
                    AclnnArg::Bool(false),
                    t(&[2, 3, 8 / kernel, 8 / kernel], 0),
                    which,
                ],
                mask,
            )
        };
        assert!(pool(2, 0, t(&[2, 3, 4, 4], 9), false).is_ok());
        // torch_npu's mask: a row per window place, (ceil(16 / 16) + 1) × 32 bytes.
        assert!(pool(2, 0, t(&[2, 3, 4, 64], 2), true).is_ok());
        assert!(
            pool(2, 0, t(&[2, 3, 4, 32], 2), true).is_err(),
            "a mask too small"
        );
        assert!(
            pool(2, 0, t(&[2, 3, 4, 64], 0), true).is_err(),
            "a float mask"
        );
        assert!(
            pool(2, 0, t(&[2, 3, 4, 4], 0), false).is_err(),
            "float indices"
        );
        assert!(
            pool(2, 2, t(&[2, 3, 4, 4], 9), false).is_err(),
            "padding over half the kernel"
        );
    }

    #[test]
    fn adaptive_poolings_check_their_sizes() {
        let adaptive = |input: &[i64], size: &[i64], out: &[i64]| {
            validate_adaptive(&[t(input, 0), ints(size), t(out, 0)])
        };
        assert!(adaptive(&[2, 3, 7, 9], &[1, 1], &[2, 3, 1, 1]).is_ok());
        assert!(adaptive(&[2, 3, 7, 9], &[4], &[2, 3, 4, 4]).is_ok());
        assert!(
            adaptive(&[2, 3, 7, 9], &[0, 1], &[2, 3, 0, 1]).is_err(),
            "an empty output size"
        );
        assert!(
            adaptive(&[2, 3, 0, 9], &[1, 1], &[2, 3, 1, 1]).is_err(),
            "an empty plane"
        );
        assert!(
            adaptive(&[2, 3, 7, 9], &[2, 2], &[2, 3, 2, 3]).is_err(),
            "the wrong output"
        );
        assert!(
            adaptive(&[2, 3, 7, 9], &[1 << 30, 1], &[2, 3, 1, 1]).is_err(),
            "a size past the bound"
        );
    }
}
