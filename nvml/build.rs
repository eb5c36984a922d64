//! Exports a `NVML_ERROR_NOT_SUPPORTED` stub for every NVML symbol in
//! src/symbols.txt that no hand-written function implements, and `SYMTAB` of every
//! exported symbol (see `xpupool_cabi::build`).

use std::collections::BTreeSet;
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let src = manifest.join("src");
    let required: BTreeSet<String> = std::fs::read_to_string(src.join("symbols.txt"))
        .expect("src/symbols.txt")
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(
        required.len() >= 300,
        "symbols.txt has only {} names",
        required.len()
    );
    let spec = xpupool_cabi::build::Stubs {
        prefix: "nvml",
        required,
        src: &src,
        skip: None,
        return_type: "crate::boundary::NvmlReturn",
        unsupported_fn: "crate::boundary::unsupported",
        generator: "nvml/build.rs",
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let generated = xpupool_cabi::build::generate(&spec, &out);
    println!(
        "cargo:rustc-env=XPUPOOL_NVML_IMPLEMENTED_COUNT={}",
        generated.implemented.len()
    );
    // The shared object answers to the name pynvml and PyTorch dlopen.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
}
