//! aclnn operators on the host's `libopapi`: the client's serialised
//! parameters made into CANN's own descriptors (every tensor's memory checked
//! to lie inside the session's allocations first) and passed to the operator's
//! first phase through a pointer of its header's exact C type (generated from
//! vendor-headers/aclnn-ops.tsv by server/build.rs).

use std::ffi::{c_void, CString};

use xpupool_protocol::aclnn::{AclnnArg, TensorDesc};
use xpupool_protocol::{code, CuError};

use super::runtime::{Cann, Handle};
use crate::checks::invalid_value;

/// A parameter's kind, as the operator's header declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tensor,
    Scalar,
    IntArray,
    // No operator of the pinned headers takes a float array or a scalar list
    // yet; the client can send them, and they are checked as any other kind.
    #[allow(dead_code)]
    FloatArray,
    BoolArray,
    TensorList,
    #[allow(dead_code)]
    ScalarList,
    Str,
    F64,
    F32,
    I64,
    U64,
    I32,
    I8,
    Bool,
}

/// One operator of the pinned headers.
pub(crate) struct Operator {
    pub(crate) name: &'static str,
    pub(crate) kinds: &'static [Kind],
    /// Calls its first phase, `f`, with one value per kind.
    pub(crate) first_phase: unsafe fn(*const c_void, &[CValue], *mut u64, *mut *mut c_void) -> i32,
}

/// One C argument of a first phase.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CValue {
    Pointer(*const c_void),
    F64(f64),
    F32(f32),
    I64(i64),
    U64(u64),
    I32(i32),
    I8(i8),
    Byte(u8),
}

/// The value as the generated callers pass it; [`arguments`] made each of the
/// kind its parameter declares, so the defaults are never used.
impl CValue {
    fn pointer(&self) -> *const c_void {
        match *self {
            CValue::Pointer(p) => p,
            _ => std::ptr::null(),
        }
    }
    fn f64(&self) -> f64 {
        match *self {
            CValue::F64(v) => v,
            _ => 0.0,
        }
    }
    fn f32(&self) -> f32 {
        match *self {
            CValue::F32(v) => v,
            _ => 0.0,
        }
    }
    fn i64(&self) -> i64 {
        match *self {
            CValue::I64(v) => v,
            _ => 0,
        }
    }
    fn u64(&self) -> u64 {
        match *self {
            CValue::U64(v) => v,
            _ => 0,
        }
    }
    fn i32(&self) -> i32 {
        match *self {
            CValue::I32(v) => v,
            _ => 0,
        }
    }
    fn i8(&self) -> i8 {
        match *self {
            CValue::I8(v) => v,
            _ => 0,
        }
    }
    fn byte(&self) -> u8 {
        match *self {
            CValue::Byte(v) => v,
            _ => 0,
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/aclnn_callers.rs"));

/// The operator `name` of the pinned headers.
pub(crate) fn find(name: &str) -> Option<&'static Operator> {
    OPERATORS
        .binary_search_by(|o| o.name.cmp(name))
        .ok()
        .map(|i| &OPERATORS[i])
}

/// A descriptor made for a first phase, with how it is destroyed.
#[derive(Debug, Clone, Copy)]
enum Made {
    Tensor(Handle),
    Scalar(Handle),
    IntArray(Handle),
    FloatArray(Handle),
    BoolArray(Handle),
    /// Destroying a list destroys the descriptors in it.
    TensorList(Handle),
    ScalarList(Handle),
}

/// The descriptors of one operator's parameters, and the host values they point
/// at, kept until its executor has run.
#[derive(Default)]
pub(crate) struct Parameters {
    made: Vec<Made>,
    /// The memory the tensors reach: `(address, bytes)`, checked again before
    /// the operator runs (it may have been freed since).
    spans: Vec<(u64, u64)>,
    strings: Vec<CString>,
    /// Scalars' values (16 bytes each, the largest `aclDataType`), each boxed so
    /// that its address, which a descriptor may keep, stays put as more are added.
    #[allow(clippy::vec_box)]
    scalars: Vec<Box<[u8; 16]>>,
}

// SAFETY: the descriptors are CANN's heap objects, used only by the session that
// made them, one request at a time.
unsafe impl Send for Parameters {}

impl Parameters {
    /// The memory the tensors reach, as `(address, bytes)`.
    pub(crate) fn spans(&self) -> &[(u64, u64)] {
        &self.spans
    }

    /// Destroys every descriptor.
    pub(crate) fn destroy(self, cann: &Cann) {
        let d = &cann.descriptors;
        for made in self.made {
            // SAFETY: each descriptor was made here and is destroyed once (a list's
            // members are not in `made`: the list destroys them).
            unsafe {
                match made {
                    Made::Tensor(h) => (d.aclDestroyTensor)(h),
                    Made::Scalar(h) => (d.aclDestroyScalar)(h),
                    Made::IntArray(h) => (d.aclDestroyIntArray)(h),
                    Made::FloatArray(h) => (d.aclDestroyFloatArray)(h),
                    Made::BoolArray(h) => (d.aclDestroyBoolArray)(h),
                    Made::TensorList(h) => (d.aclDestroyTensorList)(h),
                    Made::ScalarList(h) => (d.aclDestroyScalarList)(h),
                };
            }
        }
    }

    fn tensor(
        &mut self,
        cann: &Cann,
        t: &TensorDesc,
        inside: &dyn Fn(u64, u64) -> Result<(), CuError>,
    ) -> Result<Handle, CuError> {
        let bytes = t.byte_extent().map_err(invalid_value)?;
        if bytes > 0 {
            inside(t.data, bytes)?;
            self.spans.push((t.data, bytes));
        }
        // SAFETY: the shape arrays live through the call (CANN copies them); the
        // memory the tensor describes is the session's, checked above.
        let h = unsafe {
            (cann.descriptors.aclCreateTensor)(
                t.dims.as_ptr(),
                t.dims.len() as u64,
                t.dtype,
                t.strides.as_ptr(),
                t.offset,
                t.format,
                t.storage_dims.as_ptr(),
                t.storage_dims.len() as u64,
                t.data as *mut c_void,
            )
        };
        made(cann, h, "aclCreateTensor")
    }

    fn scalar(&mut self, cann: &Cann, dtype: i32, value: &[u8]) -> Result<Handle, CuError> {
        let mut held = Box::new([0u8; 16]);
        held[..value.len().min(16)].copy_from_slice(&value[..value.len().min(16)]);
        let p = held.as_mut_ptr().cast();
        self.scalars.push(held);
        // SAFETY: 16 bytes, enough for any aclDataType's value, kept with the descriptor.
        made(
            cann,
            unsafe { (cann.descriptors.aclCreateScalar)(p, dtype) },
            "aclCreateScalar",
        )
    }
}

/// `h`, or the runtime's reason it is NULL.
fn made(cann: &Cann, h: Handle, what: &str) -> Result<Handle, CuError> {
    if h.is_null() {
        let said = cann
            .recent_message()
            .unwrap_or_else(|| "it returned NULL".into());
        Err(CuError::new(code::INVALID_VALUE, format!("{what}: {said}")))
    } else {
        Ok(h)
    }
}

/// Whether the client's `arg` may stand for a parameter of kind `kind`.
fn fits(kind: Kind, arg: &AclnnArg) -> bool {
    use AclnnArg as A;
    matches!(
        (kind, arg),
        (
            Kind::Tensor
                | Kind::Scalar
                | Kind::IntArray
                | Kind::FloatArray
                | Kind::BoolArray
                | Kind::TensorList
                | Kind::ScalarList
                | Kind::Str,
            A::Null
        ) | (Kind::Tensor, A::Tensor(_))
            | (Kind::Scalar, A::Scalar(..))
            | (Kind::IntArray, A::IntArray(_))
            | (Kind::FloatArray, A::FloatArray(_))
            | (Kind::BoolArray, A::BoolArray(_))
            | (Kind::TensorList, A::TensorList(_))
            | (Kind::ScalarList, A::ScalarList(_))
            | (Kind::Str, A::Str(_))
            | (Kind::F64, A::F64(_))
            | (Kind::F32, A::F32(_))
            | (Kind::I64, A::I64(_))
            | (Kind::U64, A::U64(_))
            | (Kind::I32, A::I32(_))
            | (Kind::I8, A::I8(_))
            | (Kind::Bool, A::Bool(_))
    )
}

/// The C arguments of `op`'s first phase for the client's `args`, with the
/// descriptors made for them. `inside(address, len)` checks that a tensor's
/// memory is the session's. Nothing is made unless every parameter has the
/// kind its header declares and is within the protocol's bounds.
pub(crate) fn arguments(
    cann: &Cann,
    op: &Operator,
    args: &[AclnnArg],
    inside: &dyn Fn(u64, u64) -> Result<(), CuError>,
) -> Result<(Vec<CValue>, Parameters), CuError> {
    if args.len() != op.kinds.len() {
        return Err(invalid_value(format!(
            "{}: {} parameters for the {} its header declares",
            op.name,
            args.len(),
            op.kinds.len()
        )));
    }
    for (i, (&kind, arg)) in op.kinds.iter().zip(args).enumerate() {
        arg.check()
            .map_err(|e| invalid_value(format!("{}: parameter {i}: {e}", op.name)))?;
        if !fits(kind, arg) {
            return Err(invalid_value(format!(
                "{}: parameter {i} is declared {kind:?}",
                op.name
            )));
        }
    }
    let mut p = Parameters::default();
    match make(cann, args, inside, &mut p) {
        Ok(values) => Ok((values, p)),
        Err(e) => {
            p.destroy(cann);
            Err(e)
        }
    }
}

fn make(
    cann: &Cann,
    args: &[AclnnArg],
    inside: &dyn Fn(u64, u64) -> Result<(), CuError>,
    p: &mut Parameters,
) -> Result<Vec<CValue>, CuError> {
    let d = &cann.descriptors;
    let mut values = Vec::with_capacity(args.len());
    for arg in args {
        // SAFETY (every create below): the host arrays live through the call
        // (CANN copies them); their lengths are the protocol's, bounded.
        let value = match arg {
            AclnnArg::Null => CValue::Pointer(std::ptr::null()),
            AclnnArg::Tensor(t) => {
                let h = p.tensor(cann, t, inside)?;
                p.made.push(Made::Tensor(h));
                CValue::Pointer(h)
            }
            AclnnArg::Scalar(dtype, bytes) => {
                let h = p.scalar(cann, *dtype, bytes)?;
                p.made.push(Made::Scalar(h));
                CValue::Pointer(h)
            }
            AclnnArg::IntArray(v) => {
                let h = unsafe { (d.aclCreateIntArray)(v.as_ptr(), v.len() as u64) };
                let h = made(cann, h, "aclCreateIntArray")?;
                p.made.push(Made::IntArray(h));
                CValue::Pointer(h)
            }
            AclnnArg::FloatArray(v) => {
                let h = unsafe { (d.aclCreateFloatArray)(v.as_ptr(), v.len() as u64) };
                let h = made(cann, h, "aclCreateFloatArray")?;
                p.made.push(Made::FloatArray(h));
                CValue::Pointer(h)
            }
            AclnnArg::BoolArray(v) => {
                let h = unsafe { (d.aclCreateBoolArray)(v.as_ptr(), v.len() as u64) };
                let h = made(cann, h, "aclCreateBoolArray")?;
                p.made.push(Made::BoolArray(h));
                CValue::Pointer(h)
            }
            AclnnArg::TensorList(list) => {
                let mut members = Vec::with_capacity(list.len());
                let mut result = Ok(());
                for t in list {
                    match t.as_ref().map(|t| p.tensor(cann, t, inside)) {
                        None => members.push(std::ptr::null_mut()),
                        Some(Ok(h)) => members.push(h),
                        Some(Err(e)) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let h = result.and_then(|()| {
                    let h =
                        unsafe { (d.aclCreateTensorList)(members.as_ptr(), members.len() as u64) };
                    made(cann, h, "aclCreateTensorList")
                });
                match h {
                    Ok(h) => {
                        p.made.push(Made::TensorList(h));
                        CValue::Pointer(h)
                    }
                    Err(e) => {
                        // Members not yet in a list are destroyed on their own.
                        for h in members.into_iter().filter(|h| !h.is_null()) {
                            p.made.push(Made::Tensor(h));
                        }
                        return Err(e);
                    }
                }
            }
            AclnnArg::ScalarList(list) => {
                let mut members = Vec::with_capacity(list.len());
                let mut result = Ok(());
                for (dtype, bytes) in list {
                    match p.scalar(cann, *dtype, bytes) {
                        Ok(h) => members.push(h),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let h = result.and_then(|()| {
                    let h =
                        unsafe { (d.aclCreateScalarList)(members.as_ptr(), members.len() as u64) };
                    made(cann, h, "aclCreateScalarList")
                });
                match h {
                    Ok(h) => {
                        p.made.push(Made::ScalarList(h));
                        CValue::Pointer(h)
                    }
                    Err(e) => {
                        p.made.extend(members.into_iter().map(Made::Scalar));
                        return Err(e);
                    }
                }
            }
            AclnnArg::Str(s) => {
                let s = CString::new(s.as_str())
                    .map_err(|_| invalid_value("a string parameter with a NUL in it"))?;
                let ptr = s.as_ptr().cast();
                p.strings.push(s);
                CValue::Pointer(ptr)
            }
            AclnnArg::F64(v) => CValue::F64(*v),
            AclnnArg::F32(v) => CValue::F32(*v),
            AclnnArg::I64(v) => CValue::I64(*v),
            AclnnArg::U64(v) => CValue::U64(*v),
            AclnnArg::I32(v) => CValue::I32(*v),
            AclnnArg::I8(v) => CValue::I8(*v),
            AclnnArg::Bool(v) => CValue::Byte(u8::from(*v)),
        };
        values.push(value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_operator_sorted_with_its_kinds() {
        assert_eq!(OPERATORS.len(), 744);
        assert!(OPERATORS.windows(2).all(|w| w[0].name < w[1].name));
        let add = find("aclnnAdd").unwrap();
        assert_eq!(
            add.kinds,
            [Kind::Tensor, Kind::Tensor, Kind::Scalar, Kind::Tensor]
        );
        assert_eq!(find("aclnnMm").unwrap().kinds.last(), Some(&Kind::I8));
        assert!(find("aclnnNoSuchThing").is_none());
    }

    #[test]
    fn parameters_fit_only_their_declared_kinds() {
        assert!(fits(Kind::Tensor, &AclnnArg::Null));
        assert!(fits(Kind::Str, &AclnnArg::Null));
        assert!(!fits(Kind::F64, &AclnnArg::Null));
        assert!(!fits(
            Kind::Tensor,
            &AclnnArg::Scalar(0, Default::default())
        ));
        assert!(!fits(Kind::I64, &AclnnArg::I32(1)));
        assert!(fits(Kind::Bool, &AclnnArg::Bool(true)));
    }
}
