//! `cuGetProcAddress` name resolution.
//!
//! cudart asks for a *base name* plus the ABI version of the variant it wants and a flags
//! word; the answer is the concrete exported symbol implementing that ABI. The table comes
//! from `vendor-headers/gen_procaddr.py` (rule in docs/FACTS-cuda-driver.md §2).

use crate::generated::procaddr::{ProcRow, PROC_ROWS};

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
const PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// Outcome of a lookup, mirroring `CUdriverProcAddressQueryResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcStatus {
    /// `CU_GET_PROC_ADDRESS_SUCCESS`: the exported symbol to return.
    Found(&'static str),
    /// `CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND`: the name is unknown (or empty).
    SymbolNotFound,
    /// `CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT`: the name exists, but no variant is old
    /// enough for the requested version.
    VersionNotSufficient,
}

/// All rows for `name` (a contiguous run, since `PROC_ROWS` is sorted by base name).
fn rows_for(name: &str) -> &'static [ProcRow] {
    let start = PROC_ROWS.partition_point(|r| r.base < name);
    let len = PROC_ROWS[start..].partition_point(|r| r.base == name);
    &PROC_ROWS[start..start + len]
}

/// Resolves `(name, cudaVersion, flags)` as the real driver does.
///
/// Flags 0 (default) is treated as legacy: the driver cannot see how the caller was
/// compiled. With `flags & 2` the per-thread rows are used if the name has any; a request
/// below the first per-thread version does not fall back to legacy.
pub(crate) fn lookup(name: &str, cuda_version: i32, flags: u64) -> ProcStatus {
    let rows = rows_for(name);
    if rows.is_empty() {
        return ProcStatus::SymbolNotFound;
    }
    let has_per_thread = rows.iter().any(|r| r.per_thread);
    let per_thread = flags & PER_THREAD_DEFAULT_STREAM != 0 && has_per_thread;
    let Ok(version) = u32::try_from(cuda_version) else {
        return ProcStatus::VersionNotSufficient;
    };
    rows.iter()
        .filter(|r| r.per_thread == per_thread && r.min_version <= version)
        .max_by_key(|r| r.min_version)
        .map_or(ProcStatus::VersionNotSufficient, |r| {
            ProcStatus::Found(r.symbol)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated::procaddr::ALL_SYMBOLS;

    fn render_tsv() -> String {
        let mut out = String::from(
            "# Derived from CUDA 13.2 cudaTypedefs.h + cudaGLTypedefs.h + cudaEGLTypedefs.h \
             + cudaVDPAUTypedefs.h + cudaProfilerTypedefs.h\n\
             # rule: for (name, cudaVersion, flags) pick the row with the largest min_version \
             <= cudaVersion in the matching class;\n\
             #       flags&2 and no per-thread rows for that name -> use legacy rows; \
             no row <= cudaVersion -> VERSION_NOT_SUFFICIENT\n\
             base_name\tclass\tmin_version\texported_symbol\n",
        );
        for r in PROC_ROWS {
            let class = if r.per_thread {
                "per-thread(flags 2)"
            } else {
                "legacy(flags 0/1)"
            };
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                r.base, class, r.min_version, r.symbol
            ));
        }
        out
    }

    #[test]
    fn table_matches_reference_tsv() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../vendor-headers/procaddr-table-13.2.tsv"
        );
        let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("reference table {path} is missing or unreadable ({e}); it is kept in vendor-headers/")
        });
        let actual = render_tsv();
        if actual != expected {
            let first = actual
                .lines()
                .zip(expected.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(actual.lines().count().min(expected.lines().count()));
            panic!(
                "generated table differs from {path} at line {} ({} vs {} lines)",
                first + 1,
                actual.lines().count(),
                expected.lines().count()
            );
        }
    }

    #[test]
    fn rows_sorted_and_symbols_complete() {
        assert!(PROC_ROWS.windows(2).all(|w| {
            (w[0].base, w[0].per_thread, w[0].min_version)
                < (w[1].base, w[1].per_thread, w[1].min_version)
        }));
        assert_eq!(ALL_SYMBOLS.len(), 700);
        assert!(ALL_SYMBOLS.windows(2).all(|w| w[0] < w[1]));
        for r in PROC_ROWS {
            assert!(ALL_SYMBOLS.binary_search(&r.symbol).is_ok(), "{}", r.symbol);
        }
        let bases: std::collections::BTreeSet<_> = PROC_ROWS.iter().map(|r| r.base).collect();
        assert_eq!(bases.len(), 497);
    }

    #[test]
    fn facts_worked_examples() {
        use ProcStatus::*;
        let cases: &[(&str, i32, u64, ProcStatus)] = &[
            ("cuMemAlloc", 3000, 0, Found("cuMemAlloc")),
            ("cuMemAlloc", 3020, 0, Found("cuMemAlloc_v2")),
            ("cuMemAlloc", 13020, 0, Found("cuMemAlloc_v2")),
            ("cuMemAlloc", 1000, 0, VersionNotSufficient),
            ("cuCtxCreate", 3020, 0, Found("cuCtxCreate_v2")),
            ("cuCtxCreate", 12000, 0, Found("cuCtxCreate_v3")),
            ("cuCtxCreate", 13000, 0, Found("cuCtxCreate_v4")),
            (
                "cuStreamGetCaptureInfo",
                10010,
                0,
                Found("cuStreamGetCaptureInfo"),
            ),
            (
                "cuStreamGetCaptureInfo",
                11030,
                0,
                Found("cuStreamGetCaptureInfo_v2"),
            ),
            (
                "cuStreamGetCaptureInfo",
                12030,
                0,
                Found("cuStreamGetCaptureInfo_v3"),
            ),
            (
                "cuStreamGetCaptureInfo",
                12030,
                2,
                Found("cuStreamGetCaptureInfo_v3_ptsz"),
            ),
            ("cuMemcpyAsync", 4000, 0, Found("cuMemcpyAsync")),
            ("cuMemcpyAsync", 7000, 2, Found("cuMemcpyAsync_ptsz")),
            ("cuMemcpyAsync", 13020, 2, Found("cuMemcpyAsync_ptsz")),
            ("cuMemcpyHtoD", 3020, 0, Found("cuMemcpyHtoD_v2")),
            ("cuMemcpyHtoD", 7000, 2, Found("cuMemcpyHtoD_v2_ptds")),
            ("cuMemcpyHtoD", 3020, 2, VersionNotSufficient),
            ("cuLaunchKernel", 7000, 2, Found("cuLaunchKernel_ptsz")),
            ("cuLaunchKernel", 13020, 1, Found("cuLaunchKernel")),
            ("cuLaunchKernel", 13020, 0, Found("cuLaunchKernel")),
            ("cuGetProcAddress", 11030, 0, Found("cuGetProcAddress")),
            ("cuGetProcAddress", 12000, 0, Found("cuGetProcAddress_v2")),
            ("cuGetProcAddress", 12000, 2, Found("cuGetProcAddress_v2")),
            (
                "cuEventElapsedTime",
                12080,
                0,
                Found("cuEventElapsedTime_v2"),
            ),
            (
                "cuGraphInstantiate",
                11000,
                0,
                Found("cuGraphInstantiate_v2"),
            ),
            (
                "cuGraphInstantiate",
                13020,
                0,
                Found("cuGraphInstantiate_v2"),
            ),
            (
                "cuDeviceGetAttribute",
                2000,
                0,
                Found("cuDeviceGetAttribute"),
            ),
            ("cuDriverGetVersion", 2020, 0, Found("cuDriverGetVersion")),
            ("cuDeviceGetUuid", 9020, 0, Found("cuDeviceGetUuid")),
            ("cuCtxSynchronize", 13000, 0, Found("cuCtxSynchronize_v2")),
            (
                "cuLaunchHostFunc",
                13010,
                2,
                Found("cuLaunchHostFunc_v2_ptsz"),
            ),
            ("cuLaunchHostFunc", 12000, 2, Found("cuLaunchHostFunc_ptsz")),
            ("", 0, 0, SymbolNotFound),
            ("", 13020, 2, SymbolNotFound),
            ("cuNoSuchFunction", 13020, 0, SymbolNotFound),
            ("cuMemAlloc_v2", 13020, 0, SymbolNotFound),
            ("cuInit", -1, 0, VersionNotSufficient),
            ("cuInit", 2000, 0, Found("cuInit")),
        ];
        for &(name, version, flags, expected) in cases {
            assert_eq!(
                lookup(name, version, flags),
                expected,
                "lookup({name:?}, {version}, {flags})"
            );
        }
    }
}
