//! A steady host-to-device copy load for a profiler:
//! `cargo run --release -p xpupool-bench --example copy_loop -- quic|local [MiB] [seconds]`,
//! e.g. under `perf record -g`. Prints the GB/s reached.

use xpupool_bench::{copy_loop, Transport};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let transport = match args.next().as_deref() {
        Some("quic") | None => Transport::Quic,
        Some("local") => Transport::Local,
        Some(other) => anyhow::bail!("unknown transport {other:?} (quic or local)"),
    };
    let mib: u64 = args.next().map_or(Ok(256), |a| a.parse())?;
    let seconds: f64 = args.next().map_or(Ok(5.0), |a| a.parse())?;
    let gbps = copy_loop(transport, mib << 20, seconds)?;
    println!(
        "{}: {mib} MiB uploads for {seconds} s: {gbps:.3} GB/s",
        transport.name()
    );
    Ok(())
}
