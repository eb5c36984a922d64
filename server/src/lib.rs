//! The xpupool pool server.
//!
//! A QUIC listener ([`server`]) authenticates each client by its tenant token and
//! gives it a session on a [`Backend`]. Every handle and device pointer a request
//! names is checked against that session's own tables, and everything a session
//! holds is freed when its client disconnects or dies. Backends: [`mock`] (a CPU
//! stand-in that interprets PTX and gfx90a code), [`cuda`] (NVIDIA's driver) and
//! [`hip`] (AMD's HIP runtime) and [`acl`] (Huawei's CANN), the last three with
//! each session in its own [`worker`] process.

pub mod acl;
pub mod ascend_elf;
pub mod backend;
mod checks;
pub mod config;
pub mod cuda;
mod dynlib;
pub mod embedded;
pub mod hip;
pub mod membership;
pub mod metrics;
pub mod mock;
pub mod module_cache;
mod placement;
pub mod quota;
pub mod scheduler;
pub mod server;
pub mod tenancy;
mod timing;
pub mod tls;
pub mod worker;

pub use backend::{Backend, Tenant};
pub use mock::MockBackend;
pub use server::{Server, ServerConfig, TokenEntry};

/// Set as sessions end: the heap then has free memory to give back.
static TRIM_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Notes that a session has ended and freed what it held.
pub(crate) fn trim_heap() {
    TRIM_PENDING.store(true, std::sync::atomic::Ordering::Release);
}

/// Every two seconds, if sessions have ended since, gives the heap's free memory
/// back to the system, so a server's footprint follows its sessions down (glibc
/// keeps what each session thread freed in that thread's arena otherwise).
pub(crate) async fn trim_heap_now_and_then() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        if TRIM_PENDING.swap(false, std::sync::atomic::Ordering::AcqRel) {
            // SAFETY: malloc_trim only releases free memory; it is safe at any time.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// A fresh random token (32 hex characters).
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Parses a byte size: a number with an optional unit (`B`, `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, `T`/`TiB`; powers of 1024; `KB`, `MB`, `GB` likewise).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 512MiB or 2GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let bytes = number * (1u64 << shift) as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse() {
        assert_eq!(super::parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(super::parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(super::parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("12 parsecs").is_err());
        assert!(super::parse_size("0").is_err());
    }
}
