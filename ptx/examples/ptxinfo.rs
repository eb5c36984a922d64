//! Prints the kernels of a PTX file with their layout and support status.
//!
//! `cargo run -p xpupool-ptx --example ptxinfo -- file.ptx`

fn main() {
    let path = std::env::args().nth(1).expect("usage: ptxinfo FILE.ptx");
    let src = std::fs::read_to_string(&path).expect("read PTX file");
    match xpupool_ptx::parse_module(&src) {
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
        Ok(m) => {
            for g in m.globals() {
                println!(
                    "{:?} {} ({} bytes, align {})",
                    g.space, g.name, g.size, g.align
                );
            }
            for k in m.kernels() {
                println!(
                    "{}: params {} bytes, shared {} B, local {} B, {}",
                    k.name,
                    k.param_bytes,
                    k.static_shared_bytes,
                    k.local_bytes,
                    k.unsupported
                        .as_deref()
                        .map_or("ok".to_string(), |u| format!("UNSUPPORTED: {u}"))
                );
            }
        }
    }
}
