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
}

impl AclnnArg {
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
