//! CUDA driver API types and constants from CUDA 13.2 `cuda.h`, for code on both sides of
//! the wire (shim and server) that must agree with the C ABI.
//!
//! The bindings are generated offline by `vendor-headers/regen-bindings.sh` (bindgen over the
//! pinned CUDA 13.2 headers) and committed, so building this crate needs neither libclang nor
//! the headers. Enums are plain integer constants without the enum-name prefix: `CUresult`
//! is a `u32` alias and `CUDA_SUCCESS`, `CUDA_ERROR_INVALID_VALUE`,
//! `CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK` are constants of it. No functions are declared.

#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    rustdoc::all
)]

#[rustfmt::skip]
#[path = "generated/cuda.rs"]
mod cuda;

pub use cuda::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_values() {
        assert_eq!(CUDA_VERSION, 13020);
        let ok: CUresult = CUDA_SUCCESS;
        assert_eq!(ok, 0);
        assert_eq!(CUDA_ERROR_INVALID_VALUE, 1);
        assert_eq!(CUDA_ERROR_NOT_FOUND, 500);
        assert_eq!(CUDA_ERROR_NO_BINARY_FOR_GPU, 209);
        assert_eq!(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1);
        assert_eq!(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, 33);
        assert_eq!(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, 34);
        assert_eq!(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, 50);
        assert_eq!(CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, 2);
        assert_eq!(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT, 2);
        assert_eq!(std::mem::size_of::<CUuuid>(), 16);
        assert_eq!(std::mem::size_of::<CUdeviceptr>(), 8);
        let _: CUdevprop = Default::default();
    }
}

/// What one channel of a `CUarray_format` is: (0 unsigned, 1 signed or 2 float
/// integer kind, bits); `None` for the formats xpupool does not take (packed,
/// block-compressed, 10-bit and the like).
pub fn array_format_parts(format: CUarray_format) -> Option<(u8, u8)> {
    Some(match format {
        CU_AD_FORMAT_UNSIGNED_INT8 => (0, 8),
        CU_AD_FORMAT_UNSIGNED_INT16 => (0, 16),
        CU_AD_FORMAT_UNSIGNED_INT32 => (0, 32),
        CU_AD_FORMAT_SIGNED_INT8 => (1, 8),
        CU_AD_FORMAT_SIGNED_INT16 => (1, 16),
        CU_AD_FORMAT_SIGNED_INT32 => (1, 32),
        CU_AD_FORMAT_HALF => (2, 16),
        CU_AD_FORMAT_FLOAT => (2, 32),
        _ => return None,
    })
}

/// The `CUarray_format` of a channel kind and width ([`array_format_parts`]).
pub fn array_format_of(kind: u8, bits: u8) -> Option<CUarray_format> {
    Some(match (kind, bits) {
        (0, 8) => CU_AD_FORMAT_UNSIGNED_INT8,
        (0, 16) => CU_AD_FORMAT_UNSIGNED_INT16,
        (0, 32) => CU_AD_FORMAT_UNSIGNED_INT32,
        (1, 8) => CU_AD_FORMAT_SIGNED_INT8,
        (1, 16) => CU_AD_FORMAT_SIGNED_INT16,
        (1, 32) => CU_AD_FORMAT_SIGNED_INT32,
        (2, 16) => CU_AD_FORMAT_HALF,
        (2, 32) => CU_AD_FORMAT_FLOAT,
        _ => return None,
    })
}
