//! AMD GPU code objects as HIP programs carry them.
//!
//! - [`bundle`]: clang offload bundles, plain and compressed ("CCOB", zlib or
//!   zstd), which hipcc puts in a program's `.hip_fatbin` section and libraries
//!   load with `hipModuleLoadData`; [`image_len`] sizes an image given without
//!   its size.
//! - [`target`]: target IDs (`gfx90a:sramecc+:xnack-`) and the code object of a
//!   bundle a device can run, as the HIP runtime chooses it.
//! - [`code_object`]: a code object's ELF, its `NT_AMDGPU_METADATA` note
//!   ([`msgpack`]) and the kernels it describes: argument offsets and sizes,
//!   which are explicit (the program passes them) and which are hidden (the
//!   runtime fills them), and the kernarg segment's size.
//!
//! - [`loader`]: a code object laid out as the runtime loads it (segments at
//!   their addresses, symbols, relocations).
//! - [`interp`]: an interpreter for its gfx90a machine code, so that a server
//!   without an AMD GPU runs HIP kernels.
//!
//! Every offset, size and count is read from the bytes and checked against them:
//! a truncated or hostile image is an error, never a panic or a huge allocation.

pub mod bundle;
pub mod code_object;
pub mod interp;
pub mod loader;
pub mod msgpack;
pub mod target;

pub use bundle::{image_len, parse_bundle, BundleEntry};
pub use code_object::{read_code_object, ArgKind, CodeObject, KernelArg, KernelInfo};
pub use target::{code_object_for, TargetId};

/// Why an image could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmdgpuError {
    /// The bytes end before `what` does.
    #[error("truncated image: {0}")]
    Truncated(&'static str),
    /// Neither an offload bundle, a compressed one nor an AMD GPU ELF.
    #[error("not an AMD GPU image: {0}")]
    NotAnImage(String),
    /// A compressed bundle that does not decompress as its header says.
    #[error("compressed bundle: {0}")]
    Compression(String),
    /// A code object whose metadata note is missing or malformed.
    #[error("code object metadata: {0}")]
    Metadata(String),
    /// No entry of the bundle runs on the device.
    #[error("no code object for {device} (the image has {offered})")]
    NoBinaryForDevice {
        /// The device's target ID.
        device: String,
        /// The entries' IDs, comma-separated.
        offered: String,
    },
}

/// Reads little-endian integers at checked offsets.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl<'a> Bytes<'a> {
    pub(crate) fn slice(
        &self,
        at: u64,
        len: u64,
        what: &'static str,
    ) -> Result<&'a [u8], AmdgpuError> {
        let end = at.checked_add(len).ok_or(AmdgpuError::Truncated(what))?;
        if end > self.0.len() as u64 {
            return Err(AmdgpuError::Truncated(what));
        }
        Ok(&self.0[at as usize..end as usize])
    }

    pub(crate) fn u16(&self, at: u64, what: &'static str) -> Result<u16, AmdgpuError> {
        Ok(u16::from_le_bytes(
            self.slice(at, 2, what)?.try_into().expect("2 bytes"),
        ))
    }

    pub(crate) fn u32(&self, at: u64, what: &'static str) -> Result<u32, AmdgpuError> {
        Ok(u32::from_le_bytes(
            self.slice(at, 4, what)?.try_into().expect("4 bytes"),
        ))
    }

    pub(crate) fn u64(&self, at: u64, what: &'static str) -> Result<u64, AmdgpuError> {
        Ok(u64::from_le_bytes(
            self.slice(at, 8, what)?.try_into().expect("8 bytes"),
        ))
    }
}
