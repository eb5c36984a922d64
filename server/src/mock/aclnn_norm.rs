//! The stand-in device's batch normalisation (`aclnnBatchNorm` and its
//! backward), over channel dimension 1 of a tensor of 2 to 5 dimensions, in
//! training (batch statistics, running statistics updated) and in evaluation
//! (running statistics), as PyTorch defines it. Sums accumulate in f64 and each
//! result is rounded once to its tensor's type.

use xpupool_protocol::aclnn::{AclnnArg, TensorDesc};
use xpupool_protocol::CuError;

use super::super::memory::SessionMemory;
use super::{
    invalid, is_float, load, masked_outputs, maybe_tensor, numel, store_rounded, tensor,
    unsupported, MAX_ELEMENTS,
};

fn f64_arg(a: &[AclnnArg], i: usize) -> f64 {
    match a[i] {
        AclnnArg::F64(v) => v,
        AclnnArg::F32(v) => f64::from(v),
        _ => 0.0,
    }
}

fn flag(a: &[AclnnArg], i: usize) -> bool {
    matches!(a[i], AclnnArg::Bool(true))
}

/// `(batch, channels, inner)`: the input as `batch × channels × inner` values.
fn layout(input: &TensorDesc) -> Result<(usize, usize, usize), CuError> {
    if !is_float(input.dtype) {
        return Err(unsupported("batch normalisation of an integer type"));
    }
    if !(2..=5).contains(&input.dims.len()) {
        return Err(invalid(format!(
            "batch normalisation of a tensor of shape {:?} (2 to 5 dimensions)",
            input.dims
        )));
    }
    numel(&input.dims)?;
    // Empty tensors' other dimensions are not bounded by their element count.
    if input.dims.iter().any(|&d| d > MAX_ELEMENTS as i64) {
        return Err(invalid(format!(
            "batch normalisation of a tensor of shape {:?}",
            input.dims
        )));
    }
    let inner: i64 = input.dims[2..].iter().product();
    Ok((
        input.dims[0] as usize,
        input.dims[1] as usize,
        inner as usize,
    ))
}

/// Each per-channel tensor given is a float vector of `channels`.
fn per_channel(ts: &[Option<&TensorDesc>], channels: usize) -> Result<(), CuError> {
    for t in ts.iter().flatten() {
        if t.dims != [channels as i64] || !is_float(t.dtype) {
            return Err(invalid(format!(
                "a per-channel tensor of shape {:?} for {channels} channels",
                t.dims
            )));
        }
    }
    Ok(())
}

/// A per-channel tensor's values, or `fill` for each channel without one.
fn channel_values(
    memory: &SessionMemory,
    t: Option<&TensorDesc>,
    c: usize,
    fill: f64,
) -> Result<Vec<f64>, CuError> {
    match t {
        Some(t) => Ok(load(memory, t)?.f64s()),
        None => Ok(vec![fill; c]),
    }
}

/// Each channel's mean and biased variance over the batch and inner dimensions.
fn statistics(x: &[f64], (n, c, inner): (usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
    let count = (n * inner).max(1) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for (k, v) in x.iter().enumerate() {
        mean[(k / inner) % c] += v;
    }
    mean.iter_mut().for_each(|m| *m /= count);
    for (k, v) in x.iter().enumerate() {
        let d = v - mean[(k / inner) % c];
        var[(k / inner) % c] += d * d;
    }
    var.iter_mut().for_each(|s| *s /= count);
    (mean, var)
}

/// `aclnnBatchNorm(input, weight, bias, runningMean, runningVar, training,
/// momentum, eps, output, saveMean, saveInvstd)`.
pub(super) fn validate_forward(a: &[AclnnArg]) -> Result<(), CuError> {
    let (n, c, inner) = layout(tensor(a, 0))?;
    per_channel(
        &[
            maybe_tensor(a, 1),
            maybe_tensor(a, 2),
            maybe_tensor(a, 3),
            maybe_tensor(a, 4),
        ],
        c,
    )?;
    if tensor(a, 8).dims != tensor(a, 0).dims {
        return Err(invalid(
            "a batch normalisation's output is not its input's shape",
        ));
    }
    if flag(a, 5) {
        if maybe_tensor(a, 9).is_none() || maybe_tensor(a, 10).is_none() {
            return Err(invalid(
                "batch normalisation in training without its saved statistics",
            ));
        }
        per_channel(&[maybe_tensor(a, 9), maybe_tensor(a, 10)], c)?;
        if n * inner == 0 {
            return Err(invalid("batch statistics of no values"));
        }
    } else if maybe_tensor(a, 3).is_none() || maybe_tensor(a, 4).is_none() {
        return Err(invalid(
            "batch normalisation in evaluation without running statistics",
        ));
    }
    Ok(())
}

pub(super) fn forward(memory: &SessionMemory, a: &[AclnnArg]) -> Result<(), CuError> {
    let input = tensor(a, 0);
    let shape = layout(input)?;
    let (n, c, inner) = shape;
    let x = load(memory, input)?.f64s();
    let (training, momentum, eps) = (flag(a, 5), f64_arg(a, 6), f64_arg(a, 7));
    let weight = channel_values(memory, maybe_tensor(a, 1), c, 1.0)?;
    let bias = channel_values(memory, maybe_tensor(a, 2), c, 0.0)?;
    let (mean, var) = if training {
        statistics(&x, shape)
    } else {
        (
            channel_values(memory, maybe_tensor(a, 3), c, 0.0)?,
            channel_values(memory, maybe_tensor(a, 4), c, 1.0)?,
        )
    };
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let out: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let ch = (k / inner) % c;
            (v - mean[ch]) * invstd[ch] * weight[ch] + bias[ch]
        })
        .collect();
    store_rounded(memory, tensor(a, 8), out)?;
    if training {
        if let (Some(m), Some(i)) = (maybe_tensor(a, 9), maybe_tensor(a, 10)) {
            store_rounded(memory, m, mean.clone())?;
            store_rounded(memory, i, invstd)?;
        }
        // The running statistics, with the variance unbiased, as PyTorch keeps them.
        let count = (n * inner) as f64;
        let unbiased = if count > 1.0 {
            count / (count - 1.0)
        } else {
            1.0
        };
        if let Some(rm) = maybe_tensor(a, 3) {
            let old = load(memory, rm)?.f64s();
            let new = old
                .iter()
                .zip(&mean)
                .map(|(o, m)| (1.0 - momentum) * o + momentum * m)
                .collect();
            store_rounded(memory, rm, new)?;
        }
        if let Some(rv) = maybe_tensor(a, 4) {
            let old = load(memory, rv)?.f64s();
            let new = old
                .iter()
                .zip(&var)
                .map(|(o, v)| (1.0 - momentum) * o + momentum * v * unbiased)
                .collect();
            store_rounded(memory, rv, new)?;
        }
    }
    Ok(())
}

/// `aclnnBatchNormBackward(gradOut, input, weight, runningMean, runningVar,
/// saveMean, saveInvstd, training, eps, outputMask, gradInput, gradWeight,
/// gradBias)`.
pub(super) fn validate_backward(a: &[AclnnArg]) -> Result<(), CuError> {
    let input = tensor(a, 1);
    let (_, c, _) = layout(input)?;
    if tensor(a, 0).dims != input.dims {
        return Err(invalid(
            "a batch normalisation's gradient is not its input's shape",
        ));
    }
    per_channel(
        &[
            maybe_tensor(a, 2),
            maybe_tensor(a, 3),
            maybe_tensor(a, 4),
            maybe_tensor(a, 5),
            maybe_tensor(a, 6),
        ],
        c,
    )?;
    let [gi, gw, gb] = masked_outputs(a, 9, 10)?;
    if gi.is_some_and(|t| t.dims != input.dims) {
        return Err(invalid("an input gradient is not the input's shape"));
    }
    per_channel(&[gw, gb], c)?;
    let stats = if flag(a, 7) { (5, 6) } else { (3, 4) };
    if maybe_tensor(a, stats.0).is_none() || maybe_tensor(a, stats.1).is_none() {
        return Err(invalid(
            "a batch normalisation backward without the statistics it needs",
        ));
    }
    Ok(())
}

pub(super) fn backward(memory: &SessionMemory, a: &[AclnnArg]) -> Result<(), CuError> {
    let input = tensor(a, 1);
    let (n, c, inner) = layout(input)?;
    let g = load(memory, tensor(a, 0))?.f64s();
    let x = load(memory, input)?.f64s();
    let training = flag(a, 7);
    let weight = channel_values(memory, maybe_tensor(a, 2), c, 1.0)?;
    let (mean, invstd) = if training {
        (
            channel_values(memory, maybe_tensor(a, 5), c, 0.0)?,
            channel_values(memory, maybe_tensor(a, 6), c, 1.0)?,
        )
    } else {
        let eps = f64_arg(a, 8);
        let var = channel_values(memory, maybe_tensor(a, 4), c, 1.0)?;
        (
            channel_values(memory, maybe_tensor(a, 3), c, 0.0)?,
            var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
        )
    };
    let ch = |k: usize| (k / inner) % c;
    let mut sum_g = vec![0.0; c];
    let mut sum_gx = vec![0.0; c];
    for (k, (gv, xv)) in g.iter().zip(&x).enumerate() {
        sum_g[ch(k)] += gv;
        sum_gx[ch(k)] += gv * (xv - mean[ch(k)]) * invstd[ch(k)];
    }
    let [gi, gw, gb] = masked_outputs(a, 9, 10)?;
    if let Some(t) = gi {
        let count = (n * inner).max(1) as f64;
        let out = g
            .iter()
            .zip(&x)
            .enumerate()
            .map(|(k, (gv, xv))| {
                let c = ch(k);
                if training {
                    let xhat = (xv - mean[c]) * invstd[c];
                    weight[c] * invstd[c] * (gv - sum_g[c] / count - xhat * sum_gx[c] / count)
                } else {
                    gv * weight[c] * invstd[c]
                }
            })
            .collect();
        store_rounded(memory, t, out)?;
    }
    if let Some(t) = gw {
        store_rounded(memory, t, sum_gx)?;
    }
    if let Some(t) = gb {
        store_rounded(memory, t, sum_g)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xpupool_protocol::code;

    fn t(dims: &[i64]) -> AclnnArg {
        super::super::dense(dims, 0)
    }

    fn forward_args(input: &[i64], channels: i64, training: bool, saved: bool) -> Vec<AclnnArg> {
        let c = || t(&[channels]);
        let s = |yes: bool| if yes { c() } else { AclnnArg::Null };
        vec![
            t(input),
            c(),
            c(),
            c(),
            c(),
            AclnnArg::Bool(training),
            AclnnArg::F64(0.1),
            AclnnArg::F64(1e-5),
            t(input),
            s(saved),
            s(saved),
        ]
    }

    #[test]
    fn batch_normalisation_is_checked_at_the_first_phase() {
        assert!(validate_forward(&forward_args(&[4, 3, 5, 5], 3, true, true)).is_ok());
        assert!(validate_forward(&forward_args(&[4, 3], 3, false, false)).is_ok());
        let refused = |a: Vec<AclnnArg>| validate_forward(&a).unwrap_err().code;
        // Per-channel tensors of the wrong size; training without its saved statistics.
        assert_eq!(
            refused(forward_args(&[4, 3, 5, 5], 4, true, true)),
            code::INVALID_VALUE
        );
        assert_eq!(
            refused(forward_args(&[4, 3, 5, 5], 3, true, false)),
            code::INVALID_VALUE
        );
        // A 1-D or 6-D input; an empty input whose other dimensions are huge.
        assert_eq!(
            refused(forward_args(&[3], 3, false, false)),
            code::INVALID_VALUE
        );
        assert_eq!(
            refused(forward_args(&[1, 3, 1, 1, 1, 1], 3, false, false)),
            code::INVALID_VALUE
        );
        assert_eq!(
            refused(forward_args(&[0, 1 << 40, 1 << 40], 1 << 40, false, false)),
            code::INVALID_VALUE
        );
        // Batch statistics of nothing.
        assert_eq!(
            refused(forward_args(&[0, 3, 5, 5], 3, true, true)),
            code::INVALID_VALUE
        );
    }
}
