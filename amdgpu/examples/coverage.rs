//! Says, for each kernel of a code object or bundle, whether the gfx90a
//! interpreter can run it, and if not, why:
//!     cargo run -p xpupool-amdgpu --example coverage -- FILE...
//! (a bundle's gfx90a entry is the one checked). With `--list`, every gfx90a
//! mnemonic and whether the interpreter runs it.

use xpupool_amdgpu::interp::Program;
use xpupool_amdgpu::{code_object_for, parse_bundle};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--list") {
        for (name, runs) in xpupool_amdgpu::interp::instructions() {
            println!("{}\t{name}", if runs { "runs" } else { "no" });
        }
        return;
    }
    let mut unsupported = 0;
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let object = match parse_bundle(&bytes) {
            Ok(entries) => code_object_for(&entries, "gfx90a:sramecc+:xnack-")
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .data
                .clone(),
            Err(_) => bytes,
        };
        let program = Program::load(&object).unwrap_or_else(|e| panic!("{path}: {e}"));
        for kernel in program.kernels() {
            match program.unsupported(&kernel.name) {
                None => println!("ok    {path}: {}", kernel.name),
                Some(why) => {
                    unsupported += 1;
                    println!("FAIL  {path}: {}: {why}", kernel.name);
                }
            }
        }
    }
    std::process::exit(i32::from(unsupported > 0));
}
