//! Exports a `CUDA_ERROR_NOT_SUPPORTED` stub for every driver symbol of the CUDA 13.2
//! headers (src/generated/procaddr.rs, `ALL_SYMBOLS`) that no hand-written function
//! implements, and `SYMTAB` of every exported symbol, which `cuGetProcAddress`
//! resolves through (see `xpupool_cabi::build`).

use std::collections::BTreeSet;
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let src = manifest.join("src");
    let generated_dir = src.join("generated");
    let table = std::fs::read_to_string(generated_dir.join("procaddr.rs"))
        .expect("src/generated/procaddr.rs");
    let all_start = table
        .find("ALL_SYMBOLS")
        .expect("ALL_SYMBOLS in procaddr.rs");
    let required: BTreeSet<String> = table[all_start..]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(
        required.len() >= 700,
        "ALL_SYMBOLS has only {} names",
        required.len()
    );
    let spec = xpupool_cabi::build::Stubs {
        prefix: "cu",
        required,
        src: &src,
        skip: Some(&generated_dir),
        return_type: "crate::boundary::CUresult",
        unsupported_fn: "crate::boundary::unsupported",
        generator: "shim/build.rs",
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let generated = xpupool_cabi::build::generate(&spec, &out);
    println!(
        "cargo:rustc-env=XPUPOOL_IMPLEMENTED_COUNT={}",
        generated.implemented.len()
    );
    // The shared object answers to the name cudart dlopens.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
}
