//! The single-operator path's objects (`aclCreateTensorDesc`,
//! `aclCreateDataBuffer`, `aclopCreateAttr` and their getters and setters), kept
//! in the client, and `aclopCompileAndExecute`, which the pool does not run: it
//! runs operators at the aclnn boundary. torch_npu takes this path for an
//! operator whose aclnn form it does not call; the refusal names the operator
//! and its inputs, and the objects behave as CANN's do, so that torch_npu's
//! clean-up after the refusal succeeds (its failure there would end the
//! process) and the program sees a `RuntimeError` it can handle.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Mutex, MutexGuard};

use crate::*;

/// Boxed objects handed to C as pointers: a pointer handed back is used only if
/// it is one of them.
pub(crate) struct Registry<T> {
    live: Mutex<Option<HashMap<usize, Box<T>>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new() -> Self {
        Self {
            live: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<HashMap<usize, Box<T>>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn make(&self, value: T) -> *mut c_void {
        let boxed = Box::new(value);
        let p = &*boxed as *const T as usize;
        self.lock()
            .get_or_insert_with(HashMap::new)
            .insert(p, boxed);
        p as *mut c_void
    }

    /// `f` on the object at `p`, if it is a live one.
    pub(crate) fn with<R>(&self, p: *const c_void, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.lock().as_mut()?.get_mut(&(p as usize)).map(|b| f(b))
    }

    pub(crate) fn destroy(&self, p: *const c_void) -> Option<T> {
        self.lock().as_mut()?.remove(&(p as usize)).map(|b| *b)
    }
}

/// An `aclTensorDesc`.
struct Desc {
    dtype: i32,
    dims: Vec<i64>,
    format: i32,
}

static DESCS: Registry<Desc> = Registry::new();
/// `aclDataBuffer`s: their address and size.
static BUFFERS: Registry<(usize, usize)> = Registry::new();
/// `aclopAttr`s: how many attributes were set (their values are not needed).
static ATTRS: Registry<usize> = Registry::new();

/// `ACL_DT_UNDEFINED` and `ACL_FORMAT_UNDEFINED`: what the getters answer for a
/// pointer that is no descriptor.
const UNDEFINED: c_int = -1;

fn dims_of<'a>(n: c_int, dims: *const i64) -> Option<&'a [i64]> {
    match n {
        0 => Some(&[]),
        n if n > 0 && n as usize <= xpupool_protocol::aclnn::MAX_DIMS && !dims.is_null() => {
            // SAFETY: ACL's contract: `n` dimensions at `dims` (checked non-NULL, bounded).
            Some(unsafe { std::slice::from_raw_parts(dims, n as usize) })
        }
        _ => None,
    }
}

#[no_mangle]
pub extern "C" fn aclCreateTensorDesc(
    dtype: c_int,
    n: c_int,
    dims: *const i64,
    format: c_int,
) -> *mut c_void {
    guard(|| match dims_of(n, dims) {
        Some(d) => DESCS.make(Desc {
            dtype,
            dims: d.to_vec(),
            format,
        }),
        None => std::ptr::null_mut(),
    })
    .unwrap_or(std::ptr::null_mut())
}

#[no_mangle]
pub extern "C" fn aclDestroyTensorDesc(desc: *const c_void) {
    let _ = guard(|| DESCS.destroy(desc));
}

fn set(desc: *mut c_void, f: impl FnOnce(&mut Desc) -> Result<(), Failure>) -> AclError {
    call(|| {
        DESCS.with(desc, f).unwrap_or_else(|| {
            Err(Failure::new(
                ACL_ERROR_INVALID_PARAM,
                "not a tensor description",
            ))
        })
    })
}

#[no_mangle]
pub extern "C" fn aclSetTensorFormat(desc: *mut c_void, format: c_int) -> AclError {
    set(desc, |d| {
        d.format = format;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclSetTensorShape(desc: *mut c_void, n: c_int, dims: *const i64) -> AclError {
    let shape = dims_of(n, dims).map(<[i64]>::to_vec);
    set(desc, |d| {
        d.dims = shape.ok_or_else(|| Failure::new(ACL_ERROR_INVALID_PARAM, "a shape"))?;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclSetTensorPlaceMent(desc: *mut c_void, _memory: c_int) -> AclError {
    set(desc, |_| Ok(()))
}

#[no_mangle]
pub extern "C" fn aclSetTensorDescName(desc: *mut c_void, _name: *const c_char) {
    let _ = set(desc, |_| Ok(()));
}

#[no_mangle]
pub extern "C" fn aclGetTensorDescType(desc: *const c_void) -> c_int {
    guard(|| DESCS.with(desc, |d| d.dtype))
        .flatten()
        .unwrap_or(UNDEFINED)
}

#[no_mangle]
pub extern "C" fn aclGetTensorDescFormat(desc: *const c_void) -> c_int {
    guard(|| DESCS.with(desc, |d| d.format))
        .flatten()
        .unwrap_or(UNDEFINED)
}

#[no_mangle]
pub extern "C" fn aclGetTensorDescNumDims(desc: *const c_void) -> usize {
    guard(|| DESCS.with(desc, |d| d.dims.len()))
        .flatten()
        .unwrap_or(0)
}

#[no_mangle]
pub extern "C" fn aclGetTensorDescDimV2(
    desc: *const c_void,
    index: usize,
    size: *mut i64,
) -> AclError {
    call(|| {
        let dim = DESCS
            .with(desc as *mut c_void, |d| d.dims.get(index).copied())
            .flatten()
            .ok_or_else(|| Failure::new(ACL_ERROR_INVALID_PARAM, format!("dimension {index}")))?;
        put(size, dim)
    })
}

#[no_mangle]
pub extern "C" fn aclCreateDataBuffer(data: *mut c_void, size: usize) -> *mut c_void {
    guard(|| BUFFERS.make((data as usize, size))).unwrap_or(std::ptr::null_mut())
}

#[no_mangle]
pub extern "C" fn aclDestroyDataBuffer(buffer: *const c_void) -> AclError {
    call(|| {
        BUFFERS
            .destroy(buffer)
            .map(|_| ())
            .ok_or_else(|| Failure::new(ACL_ERROR_INVALID_PARAM, "not a data buffer"))
    })
}

#[no_mangle]
pub extern "C" fn aclopCreateAttr() -> *mut c_void {
    guard(|| ATTRS.make(0)).unwrap_or(std::ptr::null_mut())
}

#[no_mangle]
pub extern "C" fn aclopDestroyAttr(attr: *const c_void) {
    let _ = guard(|| ATTRS.destroy(attr));
}

/// Counts an attribute set on `attr` (their values matter only to an operator
/// compiler, which the pool has not).
fn set_attr(attr: *mut c_void) -> AclError {
    call(|| {
        ATTRS
            .with(attr, |n| *n += 1)
            .ok_or_else(|| Failure::new(ACL_ERROR_INVALID_PARAM, "not an operator attribute set"))
    })
}

/// `aclopSetAttrBool`, `…Int`, `…Float`, `…String`, `…DataType` and the list
/// forms: each takes the attribute set, a name and the value(s).
macro_rules! attr_setters {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name(attr: *mut c_void, _name: *const c_char, $($arg: $ty),*) -> AclError {
            $(let _ = $arg;)*
            set_attr(attr)
        }
    )*};
}

attr_setters! {
    aclopSetAttrBool(value: u8);
    aclopSetAttrInt(value: i64);
    aclopSetAttrFloat(value: f32);
    aclopSetAttrString(value: *const c_char);
    aclopSetAttrDataType(value: c_int);
    aclopSetAttrListBool(n: c_int, values: *const u8);
    aclopSetAttrListInt(n: c_int, values: *const i64);
    aclopSetAttrListFloat(n: c_int, values: *const f32);
    aclopSetAttrListListInt(n: c_int, counts: *const c_int, values: *const *const i64);
}

/// The single-operator path: refused, naming the operator and its inputs.
///
/// # Safety
/// `op_type` is NULL or a C string; `inputs` has `n_inputs` descriptions (ACL's contract).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclopCompileAndExecute(
    op_type: *const c_char,
    n_inputs: c_int,
    inputs: *const *const c_void,
    _input_data: *const *const c_void,
    _n_outputs: c_int,
    _outputs: *const *const c_void,
    _output_data: *const *mut c_void,
    _attr: *const c_void,
    _engine: c_int,
    _compile: c_int,
    _path: *const c_char,
    _stream: *mut c_void,
) -> AclError {
    call(|| {
        let name = if op_type.is_null() {
            "(unnamed)".to_owned()
        } else {
            // SAFETY: the caller's C string (checked non-NULL).
            unsafe { CStr::from_ptr(op_type) }
                .to_string_lossy()
                .chars()
                .take(128)
                .collect()
        };
        let mut shapes = Vec::new();
        if !inputs.is_null() {
            for i in 0..n_inputs.clamp(0, 16) as usize {
                // SAFETY: `n_inputs` descriptions at `inputs` (ACL's contract).
                let desc = unsafe { *inputs.add(i) };
                shapes.push(
                    DESCS
                        .with(desc, |d| format!("{:?} of type {}", d.dims, d.dtype))
                        .unwrap_or_else(|| "?".into()),
                );
            }
        }
        Err(Failure::new(
            ACL_ERROR_API_NOT_SUPPORT,
            format!(
                "the operator {name} (inputs {}) came by the single-operator path (aclopCompileAndExecute), which xpupool does not run: the pool runs operators at the aclnn boundary",
                shapes.join(", ")
            ),
        ))
    })
}
