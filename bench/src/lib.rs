//! Benchmarks of xpupool live in `benches/`; run them with `cargo bench -p xpupool-bench`.
