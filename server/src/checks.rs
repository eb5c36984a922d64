//! The checks and errors every backend's session shares: handles that are not
//! the session's, values out of range, address ranges that wrap, the one device
//! served, a memset's element.

use xpupool_protocol::{code, CuError};

pub(crate) fn invalid_handle(what: &str, handle: u64) -> CuError {
    CuError::new(
        code::INVALID_HANDLE,
        format!("{what} {handle:#x} does not belong to this session"),
    )
}

pub(crate) fn invalid_value(message: impl Into<String>) -> CuError {
    CuError::new(code::INVALID_VALUE, message)
}

/// `base + len`, or an error instead of wrapping.
pub(crate) fn end_of(base: u64, len: u64) -> Result<u64, CuError> {
    base.checked_add(len)
        .ok_or_else(|| invalid_value(format!("[{base:#x}, +{len}) wraps around")))
}

/// Device 0, the one a cuda or hip backend serves.
pub(crate) fn only_device_zero(device: u32) -> Result<(), CuError> {
    if device == 0 {
        Ok(())
    } else {
        Err(CuError::new(
            code::INVALID_DEVICE,
            format!("device {device}"),
        ))
    }
}

/// A memset's element: 1, 2 or 4 bytes, and `dst` aligned to it.
pub(crate) fn memset_element(dst: u64, elem_size: u8) -> Result<(), CuError> {
    if matches!(elem_size, 1 | 2 | 4) && dst.is_multiple_of(u64::from(elem_size)) {
        Ok(())
    } else {
        Err(invalid_value("memset element size or alignment"))
    }
}

/// What a backend without Ascend's operators answers to the first phase of one.
pub(crate) fn no_aclnn(backend: &str, operator: &str) -> CuError {
    CuError::new(
        code::NOT_SUPPORTED,
        format!("{operator}: the {backend} backend runs no Ascend operators"),
    )
}

/// The aclnn methods of an [`Api`](xpupool_protocol::Api) implementation whose
/// backend runs no Ascend operators: the first phase is refused by name, and
/// no executor exists.
macro_rules! no_aclnn_methods {
    ($backend:literal) => {
        fn aclnn_prepare(
            &mut self,
            _device: u32,
            operator: String,
            _args: Vec<xpupool_protocol::aclnn::AclnnArg>,
        ) -> Result<xpupool_protocol::aclnn::AclnnPlan, CuError> {
            Err($crate::checks::no_aclnn($backend, &operator))
        }

        fn aclnn_run(&mut self, executor: u64, _: u64, _: u64, _: u64) -> Result<(), CuError> {
            Err($crate::checks::invalid_handle("aclnn executor", executor))
        }

        fn aclnn_destroy(&mut self, executor: u64) -> Result<(), CuError> {
            Err($crate::checks::invalid_handle("aclnn executor", executor))
        }
    };
}
pub(crate) use no_aclnn_methods;
