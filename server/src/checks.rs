//! The checks and errors every backend's session shares: handles that are not
//! the session's, values out of range, address ranges that wrap, a memset's
//! element.

use std::collections::BTreeMap;

pub(crate) use serde_bytes::ByteBuf;
pub(crate) use xpupool_protocol::api;
pub(crate) use xpupool_protocol::{code, CuError, MAX_COPY_CHUNK};

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

/// Whether `[address, end)` lies inside one of `ranges` (base → size).
pub(crate) fn within(ranges: &BTreeMap<u64, u64>, address: u64, end: u64) -> bool {
    ranges
        .range(..=address)
        .next_back()
        .is_some_and(|(&base, &size)| end <= base.saturating_add(size))
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

/// The Ascend-only methods of an [`Api`](xpupool_protocol::Api) implementation
/// whose backend runs no Ascend operators or kernels: an operator's first phase
/// is refused by name, no executor exists, and argument-string launches are
/// refused.
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

        fn launch_with_args(
            &mut self,
            _function: u64,
            _blocks: u32,
            _stream: u64,
            _args: serde_bytes::ByteBuf,
            _placeholders: Vec<xpupool_protocol::api::Placeholder>,
        ) -> Result<(), CuError> {
            Err(CuError::new(
                code::NOT_SUPPORTED,
                concat!(
                    "launches with an argument string are Ascend's; the ",
                    $backend,
                    " backend runs none"
                ),
            ))
        }

        fn launch_with_device_args(
            &mut self,
            _function: u64,
            _blocks: u32,
            _stream: u64,
            _args: u64,
            _size: u64,
        ) -> Result<(), CuError> {
            Err(CuError::new(
                code::NOT_SUPPORTED,
                concat!(
                    "launches with arguments in device memory are Ascend's; the ",
                    $backend,
                    " backend runs none"
                ),
            ))
        }
    };
}
pub(crate) use no_aclnn_methods;

/// `width` elements of `elem_size` bytes in each of `height` rows `pitch` apart:
/// the bytes of a row and the span from the first row's start to the last's end.
pub(crate) fn rows_span(
    elem_size: u8,
    pitch: u64,
    width: u64,
    height: u64,
) -> Result<(u64, u64), CuError> {
    let row = width
        .checked_mul(u64::from(elem_size))
        .ok_or_else(|| invalid_value("memset2D too large"))?;
    if row > pitch && height > 1 {
        return Err(invalid_value("memset2D width exceeds pitch"));
    }
    let span = height
        .saturating_sub(1)
        .checked_mul(pitch)
        .and_then(|v| v.checked_add(row))
        .ok_or_else(|| invalid_value("memset2D too large"))?;
    Ok((row, span))
}

/// Whether all `elem_size` bytes of `value` are one byte (then a byte fill will do).
pub(crate) fn uniform_bytes(value: u32, elem_size: u8) -> bool {
    let bytes = value.to_le_bytes();
    bytes[..elem_size as usize].iter().all(|&b| b == bytes[0])
}

/// A session's memset of `count` elements of `elem_size` bytes at `dst`: the
/// element and the range (`range(address, bytes)`) checked, then, unless it is
/// empty, `fill(dst, count)`.
pub(crate) fn memset_in(
    dst: u64,
    elem_size: u8,
    count: u64,
    range: impl Fn(u64, u64) -> Result<(), CuError>,
    fill: impl FnOnce(u64, u64) -> Result<(), CuError>,
) -> Result<(), CuError> {
    memset_element(dst, elem_size)?;
    let len = count
        .checked_mul(u64::from(elem_size))
        .ok_or_else(|| invalid_value("memset too large"))?;
    range(dst, len)?;
    if count == 0 {
        return Ok(());
    }
    fill(dst, count)
}

/// A session's 2-D memset: `height` rows of `width` elements, `pitch` apart,
/// checked as [`memset_in`]; one `fill(start, elements)` where the rows touch,
/// else one per row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn memset_2d_in(
    dst: u64,
    pitch: u64,
    elem_size: u8,
    width: u64,
    height: u64,
    range: impl Fn(u64, u64) -> Result<(), CuError>,
    mut fill: impl FnMut(u64, u64) -> Result<(), CuError>,
) -> Result<(), CuError> {
    memset_element(dst, elem_size)?;
    let (row, span) = rows_span(elem_size, pitch, width, height)?;
    if width == 0 || height == 0 {
        return Ok(());
    }
    range(dst, span)?;
    if row == pitch || height == 1 {
        return fill(dst, width * height);
    }
    // Row by row; every row lies inside the range checked above.
    for r in 0..height {
        fill(dst + r * pitch, width)?;
    }
    Ok(())
}

/// Fills `bytes` bytes with the `elem_size`-byte `value` by copying the pattern
/// from the host, a chunk (a whole number of elements) at a time:
/// `copy(offset, chunk)`. For runtimes without word-wide fills.
pub(crate) fn fill_by_copies(
    value: u32,
    elem_size: u8,
    bytes: u64,
    mut copy: impl FnMut(u64, &[u8]) -> Result<(), CuError>,
) -> Result<(), CuError> {
    let element = &value.to_le_bytes()[..elem_size as usize];
    let chunk_len = (bytes as usize).min(MAX_COPY_CHUNK);
    let chunk: Vec<u8> = element.iter().copied().cycle().take(chunk_len).collect();
    let mut at = 0u64;
    while at < bytes {
        let len = (bytes - at).min(chunk_len as u64) as usize;
        copy(at, &chunk[..len])?;
        at += len as u64;
    }
    Ok(())
}

/// The [`Api`](xpupool_protocol::Api) methods of a backend that has no IPC,
/// textures, surfaces, arrays or linker to offer (HIP's module API and ACL have
/// none of them in CUDA's terms), and the copies the transport
/// answers itself. `unsupported(&str) -> CuError` must be in scope: the refusal
/// that names the backend.
macro_rules! refused_families {
    () => {
        fn memcpy_htod_shared(
            &mut self,
            _: u64,
            _: u64,
            _: u64,
            _: u64,
        ) -> Result<(), $crate::checks::CuError> {
            Err($crate::checks::api::transport_only("memcpy_htod_shared"))
        }

        fn memcpy_dtoh_shared(
            &mut self,
            _: u64,
            _: u64,
            _: u64,
            _: u64,
        ) -> Result<(), $crate::checks::CuError> {
            Err($crate::checks::api::transport_only("memcpy_dtoh_shared"))
        }

        fn ipc_get_mem_handle(
            &mut self,
            _: u64,
        ) -> Result<$crate::checks::ByteBuf, $crate::checks::CuError> {
            Err(unsupported("interprocess memory"))
        }

        fn ipc_open_mem_handle(
            &mut self,
            _: u32,
            _: $crate::checks::ByteBuf,
        ) -> Result<(u64, u64), $crate::checks::CuError> {
            Err(unsupported("interprocess memory"))
        }

        fn ipc_close_mem_handle(&mut self, _: u64) -> Result<(), $crate::checks::CuError> {
            Err(unsupported("interprocess memory"))
        }

        fn ipc_get_event_handle(
            &mut self,
            _: u64,
        ) -> Result<$crate::checks::ByteBuf, $crate::checks::CuError> {
            Err(unsupported("interprocess events"))
        }

        fn ipc_open_event_handle(
            &mut self,
            _: u32,
            _: $crate::checks::ByteBuf,
        ) -> Result<u64, $crate::checks::CuError> {
            Err(unsupported("interprocess events"))
        }

        fn tex_object_create(
            &mut self,
            _: u32,
            _: $crate::checks::api::TextureDesc,
        ) -> Result<u64, $crate::checks::CuError> {
            Err(unsupported("texture objects"))
        }

        fn tex_object_destroy(&mut self, handle: u64) -> Result<(), $crate::checks::CuError> {
            Err($crate::checks::invalid_handle("texture object", handle))
        }

        fn surf_object_create(
            &mut self,
            _: u32,
            _: $crate::checks::api::TextureDesc,
        ) -> Result<u64, $crate::checks::CuError> {
            Err(unsupported("surface objects"))
        }

        fn surf_object_destroy(&mut self, handle: u64) -> Result<(), $crate::checks::CuError> {
            Err($crate::checks::invalid_handle("surface object", handle))
        }

        fn array_create(
            &mut self,
            _: u32,
            _: $crate::checks::api::ArrayDesc,
        ) -> Result<u64, $crate::checks::CuError> {
            Err(unsupported("arrays"))
        }

        fn array_destroy(&mut self, array: u64) -> Result<(), $crate::checks::CuError> {
            Err($crate::checks::invalid_handle("array", array))
        }

        fn memcpy_to_array(
            &mut self,
            array: u64,
            _: $crate::checks::api::ArrayBox,
            _: $crate::checks::ByteBuf,
            _: u64,
        ) -> Result<(), $crate::checks::CuError> {
            Err($crate::checks::invalid_handle("array", array))
        }

        fn memcpy_from_array(
            &mut self,
            array: u64,
            _: $crate::checks::api::ArrayBox,
            _: u64,
        ) -> Result<$crate::checks::ByteBuf, $crate::checks::CuError> {
            Err($crate::checks::invalid_handle("array", array))
        }

        fn memcpy_array_device(
            &mut self,
            array: u64,
            _: $crate::checks::api::ArrayBox,
            _: u64,
            _: u64,
            _: u64,
            _: bool,
            _: u64,
        ) -> Result<(), $crate::checks::CuError> {
            Err($crate::checks::invalid_handle("array", array))
        }

        fn memcpy_array_array(
            &mut self,
            dst: u64,
            _: [u64; 3],
            _: u64,
            _: $crate::checks::api::ArrayBox,
            _: u64,
        ) -> Result<(), $crate::checks::CuError> {
            Err($crate::checks::invalid_handle("array", dst))
        }

        fn link(
            &mut self,
            _: u32,
            _: Vec<$crate::checks::api::LinkInput>,
        ) -> Result<$crate::checks::ByteBuf, $crate::checks::CuError> {
            Err(unsupported("linking (cuLink*)"))
        }
    };
}
pub(crate) use refused_families;

/// The virtual-memory methods (`cuMem*`) of a backend without them (HIP's
/// module API); as [`refused_families`], `unsupported` must be in scope.
macro_rules! refused_vmm {
    () => {
        fn mem_address_reserve(
            &mut self,
            _: u32,
            _: u64,
            _: u64,
        ) -> Result<u64, $crate::checks::CuError> {
            Err(unsupported("virtual memory (cuMemAddressReserve)"))
        }

        fn mem_address_free(&mut self, _: u64, _: u64) -> Result<(), $crate::checks::CuError> {
            Err(unsupported("virtual memory (cuMemAddressFree)"))
        }

        fn mem_create(&mut self, _: u32, _: u64) -> Result<u64, $crate::checks::CuError> {
            Err(unsupported("virtual memory (cuMemCreate)"))
        }

        fn mem_release(&mut self, _: u64) -> Result<(), $crate::checks::CuError> {
            Err(unsupported("virtual memory (cuMemRelease)"))
        }

        fn mem_map(
            &mut self,
            _: u64,
            _: u64,
            _: u64,
            _: u64,
        ) -> Result<(), $crate::checks::CuError> {
            Err(unsupported("virtual memory (cuMemMap)"))
        }

        fn mem_unmap(&mut self, _: u64, _: u64) -> Result<(), $crate::checks::CuError> {
            Err(unsupported("virtual memory (cuMemUnmap)"))
        }

        fn mem_set_access(
            &mut self,
            _: u64,
            _: u64,
            _: u32,
            _: u32,
        ) -> Result<(), $crate::checks::CuError> {
            Err(unsupported("virtual memory (cuMemSetAccess)"))
        }
    };
}
pub(crate) use refused_vmm;
