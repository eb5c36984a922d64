//! What travels for an aclnn operator (Ascend's two-phase operator interface):
//! the operator's name and its first phase's parameters, in order, with the
//! tensor, scalar and array descriptors the client made serialised
//! ([`crate::api::Request::AclnnPrepare`]). Every size here comes from a client,
//! so [`AclnnArg::check`] bounds each before a server works on it.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Dimensions a tensor may have (CANN's limit, `ACL_MAX_DIM_CNT`).
pub const MAX_DIMS: usize = 128;
/// Parameters an operator may have.
pub const MAX_ARGS: usize = 64;
/// Elements of one array or list parameter.
pub const MAX_LIST: usize = 4096;
/// Executors a session may hold between their two phases.
pub const MAX_EXECUTORS: usize = 4096;

/// The bytes of one element of `aclDataType` `dtype` (`aclDataType` of CANN's
/// `acl_base.h`), for the types whose elements are whole bytes; `None` for the
/// others (strings, sub-byte integers, types this list does not know).
pub fn dtype_size(dtype: i32) -> Option<u64> {
    Some(match dtype {
        // INT8, UINT8, BOOL, HIFLOAT8 and the FLOAT8s.
        2 | 4 | 12 | 34..=36 => 1,
        // FLOAT16, INT16, UINT16, BF16.
        1 | 6 | 7 | 27 => 2,
        // FLOAT, INT32, UINT32, COMPLEX32.
        0 | 3 | 8 | 33 => 4,
        // INT64, UINT64, DOUBLE, COMPLEX64.
        9..=11 | 16 => 8,
        // COMPLEX128.
        17 => 16,
        _ => return None,
    })
}

/// An `aclTensor`: a view of device memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorDesc {
    /// `aclDataType`.
    pub dtype: i32,
    /// The view's shape.
    pub dims: Vec<i64>,
    /// Its strides, in elements.
    pub strides: Vec<i64>,
    /// Its first element's offset from `data`, in elements.
    pub offset: i64,
    /// `aclFormat` (ND is 2).
    pub format: i32,
    /// The storage's shape.
    pub storage_dims: Vec<i64>,
    /// The storage's device address.
    pub data: u64,
}

/// One parameter of an operator's first phase, as its header declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AclnnArg {
    /// A NULL descriptor (an optional parameter not given).
    Null,
    Tensor(TensorDesc),
    /// An `aclScalar`: its `aclDataType` and its value's bytes.
    Scalar(i32, ByteBuf),
    IntArray(Vec<i64>),
    FloatArray(Vec<f32>),
    BoolArray(Vec<bool>),
    /// An `aclTensorList` (an entry may be NULL).
    TensorList(Vec<Option<TensorDesc>>),
    /// An `aclScalarList`.
    ScalarList(Vec<(i32, ByteBuf)>),
    F64(f64),
    F32(f32),
    I64(i64),
    U64(u64),
    /// Also enums (`aclDataType`, reductions).
    I32(i32),
    I8(i8),
    Bool(bool),
    /// A C string (NULL is `Null`).
    Str(String),
}

impl TensorDesc {
    /// Whether its sizes are within bounds and its shape consistent.
    pub fn check(&self) -> Result<(), String> {
        if self.dims.len() > MAX_DIMS || self.storage_dims.len() > MAX_DIMS {
            return Err(format!("a tensor of {} dimensions", self.dims.len()));
        }
        if self.strides.len() != self.dims.len() {
            return Err(format!(
                "a tensor of {} dimensions with {} strides",
                self.dims.len(),
                self.strides.len()
            ));
        }
        if self.dims.iter().chain(&self.storage_dims).any(|&d| d < 0) || self.offset < 0 {
            return Err("a tensor with a negative size or offset".into());
        }
        Ok(())
    }

    /// How many bytes from `data` the tensor may touch: its storage's, and as far
    /// as its view reaches (which a device does not check against the storage).
    /// An error for a view that reaches before `data`, a type whose elements are
    /// not whole bytes, or sizes that overflow.
    pub fn byte_extent(&self) -> Result<u64, String> {
        self.check()?;
        let size = dtype_size(self.dtype)
            .ok_or_else(|| format!("a tensor of aclDataType {}", self.dtype))?;
        let too_large = || format!("a tensor of shape {:?} is too large", self.dims);
        let storage = self
            .storage_dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(too_large)?;
        // The view's lowest and highest element offsets (none if it is empty).
        let mut reach = 0u64;
        if self.dims.iter().all(|&d| d > 0) {
            let (mut lo, mut hi) = (i128::from(self.offset), i128::from(self.offset));
            for (&d, &s) in self.dims.iter().zip(&self.strides) {
                // Each span fits an i128 (two i64s multiplied); their sum may not.
                let span = i128::from(d - 1) * i128::from(s);
                let sum = if span < 0 {
                    lo.checked_add(span)
                } else {
                    hi.checked_add(span)
                };
                let sum = sum.ok_or_else(too_large)?;
                if span < 0 {
                    lo = sum;
                } else {
                    hi = sum;
                }
            }
            if lo < 0 {
                return Err("a tensor view reaches before its storage".into());
            }
            reach = u64::try_from(hi + 1).map_err(|_| too_large())?;
        }
        storage.max(reach).checked_mul(size).ok_or_else(too_large)
    }
}

/// Bytes of parameters a session's waiting executors may hold together.
pub const MAX_HELD_BYTES: u64 = 64 << 20;

impl AclnnArg {
    /// About how many bytes it takes where a server keeps it (what a session's
    /// waiting executors are budgeted by).
    pub fn held_bytes(&self) -> u64 {
        let tensor = |t: &TensorDesc| {
            64 + 8 * (t.dims.len() + t.strides.len() + t.storage_dims.len()) as u64
        };
        32 + match self {
            AclnnArg::Tensor(t) => tensor(t),
            AclnnArg::TensorList(l) => l.iter().map(|t| 8 + t.as_ref().map_or(0, tensor)).sum(),
            AclnnArg::ScalarList(l) => 32 * l.len() as u64,
            AclnnArg::IntArray(v) => 8 * v.len() as u64,
            AclnnArg::FloatArray(v) => 4 * v.len() as u64,
            AclnnArg::BoolArray(v) => v.len() as u64,
            AclnnArg::Str(v) => v.len() as u64,
            _ => 0,
        }
    }

    /// Whether its sizes are within bounds.
    pub fn check(&self) -> Result<(), String> {
        let list = |n: usize| {
            if n > MAX_LIST {
                Err(format!("a list of {n} elements (at most {MAX_LIST})"))
            } else {
                Ok(())
            }
        };
        match self {
            AclnnArg::Tensor(t) => t.check(),
            AclnnArg::Scalar(_, b) => {
                if b.len() > 16 {
                    Err(format!("a scalar of {} bytes", b.len()))
                } else {
                    Ok(())
                }
            }
            AclnnArg::IntArray(v) => list(v.len()),
            AclnnArg::FloatArray(v) => list(v.len()),
            AclnnArg::BoolArray(v) => list(v.len()),
            AclnnArg::TensorList(v) => {
                list(v.len())?;
                v.iter().flatten().try_for_each(TensorDesc::check)
            }
            AclnnArg::ScalarList(v) => {
                list(v.len())?;
                if v.iter().any(|(_, b)| b.len() > 16) {
                    return Err("a scalar of more than 16 bytes".into());
                }
                Ok(())
            }
            AclnnArg::Str(s) => list(s.len()),
            _ => Ok(()),
        }
    }
}

/// What an operator's first phase answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclnnPlan {
    /// Device memory the second phase needs as its workspace, in bytes.
    pub workspace_size: u64,
    /// The server's executor, which the second phase runs (once).
    pub executor: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dims: &[i64], strides: &[i64], offset: i64, storage: &[i64]) -> TensorDesc {
        TensorDesc {
            dtype: 0,
            dims: dims.to_vec(),
            strides: strides.to_vec(),
            offset,
            format: 2,
            storage_dims: storage.to_vec(),
            data: 0x1000,
        }
    }

    #[test]
    fn a_tensors_extent_covers_its_storage_and_its_view() {
        // A contiguous 2x3 float tensor: 24 bytes.
        assert_eq!(tensor(&[2, 3], &[3, 1], 0, &[6]).byte_extent(), Ok(24));
        // A view reaching past a small storage reaches that far.
        assert_eq!(
            tensor(&[2, 3], &[100, 1], 5, &[6]).byte_extent(),
            Ok(4 * 108)
        );
        // Negative strides are fine while the view stays at or after `data`.
        assert_eq!(tensor(&[3], &[-1], 2, &[3]).byte_extent(), Ok(12));
        assert!(tensor(&[3], &[-1], 1, &[3]).byte_extent().is_err());
        // An empty view touches only its storage.
        assert_eq!(
            tensor(&[0, 1 << 40], &[1, 1 << 40], 0, &[0]).byte_extent(),
            Ok(0)
        );
        // Sizes that overflow are errors, not wrapped.
        for (dims, strides, storage) in [
            (&[2i64][..], &[i64::MAX][..], &[1i64][..]),
            (&[1], &[1], &[1 << 62, 8]),
            (&[1 << 62], &[4], &[1]),
            (&[i64::MAX; 3][..], &[i64::MAX; 3][..], &[1][..]),
        ] {
            assert!(
                tensor(dims, strides, 0, storage).byte_extent().is_err(),
                "{dims:?} {strides:?}"
            );
        }
        // Sums of spans that would wrap back into range.
        let mut wrapping = tensor(&[(1 << 62) + 1; 16], &[1 << 62; 16], 0, &[1]);
        wrapping.dims.push(2);
        wrapping.strides.push(7);
        assert!(
            wrapping.byte_extent().is_err(),
            "a sum that wraps is refused"
        );
        let mut down = tensor(&[(1 << 62) + 1; 16], &[-(1 << 62); 16], 0, &[1]);
        down.offset = i64::MAX;
        assert!(
            down.byte_extent().is_err(),
            "a negative sum that wraps is refused"
        );
        // Types without whole-byte elements have no extent.
        let mut t = tensor(&[1], &[1], 0, &[1]);
        t.dtype = 29; // INT4
        assert!(t.byte_extent().is_err());
        t.dtype = 17; // COMPLEX128
        assert_eq!(t.byte_extent(), Ok(16));
    }
}
