//! `libcuda.so.1` for xpupool: a stand-in for NVIDIA's user-space driver that
//! forwards device work to an xpupool pool server over QUIC.
//!
//! Load it with `LD_PRELOAD` (or put its folder first on `LD_LIBRARY_PATH`); NVIDIA's
//! unmodified runtime then initialises on it. It exports every driver symbol of the
//! CUDA 13.2 headers: the implemented ones are in [`api`], every other one answers
//! `CUDA_ERROR_NOT_SUPPORTED` and logs its name once. Configuration comes from the
//! environment: `XPUPOOL_SERVER`, `XPUPOOL_SERVER_CERT` or
//! `XPUPOOL_SERVER_FINGERPRINT`, `XPUPOOL_TOKEN`, and `XPUPOOL_LOG`.

// The exported functions mirror C names and take raw pointers by design.
#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

mod api;
mod boundary;
mod dark;
mod generated;
mod integrity;
mod log;
mod procaddr;
mod state;

mod unsupported {
    include!(concat!(env!("OUT_DIR"), "/unsupported.rs"));
}

mod symtab {
    include!(concat!(env!("OUT_DIR"), "/symtab.rs"));
}

/// How many driver functions have a real implementation (the rest answer NOT_SUPPORTED).
pub const IMPLEMENTED_FUNCTIONS: &str = env!("XPUPOOL_IMPLEMENTED_COUNT");

#[cfg(test)]
mod tests {
    #[test]
    fn every_header_symbol_is_exported_and_resolvable() {
        let symtab: Vec<&str> = crate::symtab::SYMTAB
            .iter()
            .map(|(name, _)| *name)
            .collect();
        assert!(
            symtab.windows(2).all(|w| w[0] < w[1]),
            "SYMTAB is sorted for binary search"
        );
        for name in crate::generated::procaddr::ALL_SYMBOLS {
            assert!(symtab.binary_search(name).is_ok(), "{name} is not exported");
        }
        assert!(crate::IMPLEMENTED_FUNCTIONS.parse::<usize>().unwrap() > 150);
    }
}
