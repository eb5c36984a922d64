#!/usr/bin/env python3
"""Generate the cuGetProcAddress mapping table from CUDA's *Typedefs.h headers.

Rule (docs/FACTS-cuda-driver.md section 2, "Deriving the complete mapping table"):
  * every `typedef CUresult (CUDAAPI *PFN_<name>_v<NNNN>[_ptds|_ptsz])(...)` is one ABI
    version of <name> (the __CUDA_API_VERSION_INTERNAL block included);
  * the legacy versions V0 < V1 < ... of a name export `name`, `name_v2`, `name_v3`, ...;
  * a per-thread version Vp exports (legacy symbol with the largest Vi <= Vp) + _ptds/_ptsz.

Outputs:
  vendor-headers/procaddr-table-13.2.tsv   (human-readable table)
  shim/src/generated/procaddr.rs           (the table the shim's cuGetProcAddress uses)
  shim/src/generated/prototypes.rs         (each exported symbol's C signature as a Rust
                                            function-pointer type: the shim's `export!`
                                            checks every implemented function against it)

Usage: gen_procaddr.py [INCLUDE_DIR]   (default: the toolkit printed by
scripts/install-cuda-toolchain.sh, plus /include). Standard library only.
"""
import os
import re
import subprocess
import sys

HEADERS = [
    "cudaTypedefs.h",
    "cudaGLTypedefs.h",
    "cudaEGLTypedefs.h",
    "cudaVDPAUTypedefs.h",
    "cudaProfilerTypedefs.h",
]
CUDA_VERSION_LABEL = "13.2"
LEGACY = "legacy(flags 0/1)"
PER_THREAD = "per-thread(flags 2)"

# Tolerates `typedef CUresult(CUDAAPI *` (no space) and arbitrary whitespace/newlines.
TYPEDEF_RE = re.compile(
    r"typedef\s+CUresult\s*\(\s*CUDAAPI\s*\*\s*PFN_(\w+)_v(\d+)(?:_(ptds|ptsz))?\s*\)"
)


def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def include_dir(argv):
    if len(argv) > 1:
        return argv[1]
    script = os.path.join(repo_root(), "scripts", "install-cuda-toolchain.sh")
    toolkit = subprocess.run(
        ["bash", script], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip().splitlines()[-1]
    return os.path.join(toolkit, "include")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def parse(inc):
    legacy = {}  # name -> set(versions)
    per_thread = {}  # name -> set((version, suffix))
    for header in HEADERS:
        with open(os.path.join(inc, header), encoding="utf-8") as f:
            text = strip_comments(f.read())
        for m in TYPEDEF_RE.finditer(text):
            name, version, suffix = m.group(1), int(m.group(2)), m.group(3)
            if suffix:
                per_thread.setdefault(name, set()).add((version, suffix))
            else:
                legacy.setdefault(name, set()).add(version)
    return legacy, per_thread


PROTO_RE = re.compile(
    r"typedef\s+CUresult\s*\(\s*CUDAAPI\s*\*\s*PFN_(\w+)_v(\d+)(?:_(ptds|ptsz))?\s*\)\s*\((.*?)\)\s*;",
    re.S,
)

# C spellings of the scalar types the prototypes use, and their Rust names.
SCALARS = {
    "size_t": "usize",
    "unsigned int": "c_uint",
    "unsigned": "c_uint",
    "int": "c_int",
    "unsigned long long": "c_ulonglong",
    "unsigned char": "c_uchar",
    "unsigned short": "c_ushort",
    "char": "c_char",
    "float": "f32",
    "void": "c_void",
    # Inside cuda.h's __CUDA_API_VERSION_INTERNAL block, so not in the bindings.
    "CUdeviceptr_v1": "c_uint",
}


def known_types(root):
    """The type names the committed bindings of cuda.h define."""
    path = os.path.join(root, "cuda-types", "src", "generated", "cuda.rs")
    with open(path, encoding="utf-8") as f:
        found = re.findall(r"pub (?:type|struct|union|enum) (\w+)|pub use self::\w+ as (\w+)", f.read())
    return {a or b for a, b in found}


def split_params(params):
    """Top-level comma-separated parameters (function-pointer types have inner commas)."""
    parts, depth, cur = [], 0, ""
    for ch in params:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [" ".join(p.split()) for p in parts]


def rust_type(param):
    """The Rust type of one C parameter (`const CUgraphNode *from`, `size_t n`)."""
    if re.search(r"\*\s*const\b", param) or "[" in param:
        # `T *const *` and arrays would need more than this reading of a type.
        sys.exit("error: cannot read the C type %r (a const pointer or an array)" % param)
    param = param.replace("*", " * ")
    words = [w for w in param.split() if w != "CUDAAPI"]
    if words and words[-1] != "*" and len(words) > 1:
        words = words[:-1]  # the parameter's name
    const = "const" in words
    words = [w for w in words if w != "const"]
    stars = words.count("*")
    base = " ".join(w for w in words if w != "*")
    rust = SCALARS.get(base, base)
    if not re.fullmatch(r"\w+", rust):
        sys.exit("error: cannot read the C type %r" % param)
    # `const` qualifies what the innermost pointer points at.
    for level in range(stars):
        rust = "*%s %s" % ("const" if const and level == 0 else "mut", rust)
    return rust


# The headers whose parameter types are all CUDA's own (the graphics-interop ones
# use OpenGL, EGL and VDPAU types, which xpupool does not define).
PROTOTYPE_HEADERS = ["cudaTypedefs.h", "cudaProfilerTypedefs.h"]


def parse_prototypes(inc):
    """(name, version, suffix or None) -> [Rust parameter types]."""
    protos = {}
    for header in PROTOTYPE_HEADERS:
        with open(os.path.join(inc, header), encoding="utf-8") as f:
            text = strip_comments(f.read())
        for m in PROTO_RE.finditer(text):
            params = m.group(4).strip()
            types = [] if params in ("", "void") else [rust_type(p) for p in split_params(params)]
            protos[(m.group(1), int(m.group(2)), m.group(3))] = types
    return protos


def write_prototypes(path, rows, protos, known):
    by_symbol = {}
    builtin = set(SCALARS.values())
    for name, pt, v, sym in rows:
        suffix = sym.rsplit("_", 1)[1] if pt else None
        types = protos.get((name, v, suffix))
        if types is None:
            continue  # a graphics-interop entry point
        names = {t.split()[-1] for t in types}
        if not names <= known | builtin:
            continue  # a legacy entry point whose structures the bindings leave out
        if by_symbol.setdefault(sym, types) != types:
            sys.exit("error: %s has two prototypes" % sym)
    out = [
        "// @generated by vendor-headers/gen_procaddr.py — do not edit",
        "//! Each exported symbol's signature in the CUDA %s *Typedefs.h headers, as a"
        % CUDA_VERSION_LABEL,
        "//! function-pointer type: `export!` checks each implemented function against",
        "//! its own, so a wrong parameter type or count does not compile.",
        "#![allow(non_camel_case_types, dead_code)]",
        "",
        "use std::ffi::{c_char, c_int, c_uchar, c_uint, c_ulonglong, c_ushort, c_void};",
        "use xpupool_cuda_types::*;",
        "",
    ]
    for sym in sorted(by_symbol):
        out.append(
            'pub(crate) type %s = unsafe extern "C" fn(%s) -> CUresult;'
            % (sym, ", ".join(by_symbol[sym]))
        )
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def build_rows(legacy, per_thread):
    """Rows (base, per_thread, min_version, symbol) sorted by (base, per_thread, version)."""
    rows = []
    for name in set(legacy) | set(per_thread):
        versions = sorted(legacy.get(name, ()))
        symbols = [name if i == 0 else "%s_v%d" % (name, i + 1) for i in range(len(versions))]
        for v, s in zip(versions, symbols):
            rows.append((name, False, v, s))
        pt = sorted(per_thread.get(name, ()))
        if len({v for v, _ in pt}) != len(pt):
            sys.exit("error: %s has both _ptds and _ptsz at one version" % name)
        for vp, suffix in pt:
            base_sym = None
            for v, s in zip(versions, symbols):
                if v <= vp:
                    base_sym = s
            if base_sym is None:
                sys.exit("error: per-thread %s_v%d has no legacy version <= it" % (name, vp))
            rows.append((name, True, vp, "%s_%s" % (base_sym, suffix)))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


def write_tsv(path, rows):
    lines = [
        "# Derived from CUDA %s %s" % (CUDA_VERSION_LABEL, " + ".join(HEADERS)),
        "# rule: for (name, cudaVersion, flags) pick the row with the largest min_version"
        " <= cudaVersion in the matching class;",
        "#       flags&2 and no per-thread rows for that name -> use legacy rows;"
        " no row <= cudaVersion -> VERSION_NOT_SUFFICIENT",
        "base_name\tclass\tmin_version\texported_symbol",
    ]
    for name, pt, v, sym in rows:
        lines.append("%s\t%s\t%d\t%s" % (name, PER_THREAD if pt else LEGACY, v, sym))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def write_rs(path, rows):
    out = [
        "// @generated by vendor-headers/gen_procaddr.py — do not edit",
        "//! cuGetProcAddress mapping table derived from the CUDA %s *Typedefs.h headers."
        % CUDA_VERSION_LABEL,
        "",
        "/// One ABI version of a driver entry point.",
        "pub(crate) struct ProcRow {",
        "    /// Name as passed to cuGetProcAddress (no version suffix).",
        "    pub(crate) base: &'static str,",
        "    /// Row applies to flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM.",
        "    pub(crate) per_thread: bool,",
        "    /// Smallest cudaVersion argument that selects this row.",
        "    pub(crate) min_version: u32,",
        "    /// Exported symbol implementing this ABI version.",
        "    pub(crate) symbol: &'static str,",
        "}",
        "",
        "/// All rows, sorted by (base, per_thread, min_version).",
        "pub(crate) static PROC_ROWS: &[ProcRow] = &[",
    ]
    for name, pt, v, sym in rows:
        out.append(
            '    ProcRow { base: "%s", per_thread: %s, min_version: %d, symbol: "%s" },'
            % (name, "true" if pt else "false", v, sym)
        )
    out.append("];")
    out.append("")
    out.append("/// Every distinct exported symbol, sorted.")
    out.append("#[cfg_attr(not(test), allow(dead_code))] // read by shim/build.rs, checked by the tests")
    out.append("pub(crate) static ALL_SYMBOLS: &[&str] = &[")
    for sym in sorted({r[3] for r in rows}):
        out.append('    "%s",' % sym)
    out.append("];")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def main(argv):
    inc = include_dir(argv)
    legacy, per_thread = parse(inc)
    rows = build_rows(legacy, per_thread)
    root = repo_root()
    write_tsv(os.path.join(root, "vendor-headers", "procaddr-table-%s.tsv" % CUDA_VERSION_LABEL), rows)
    gen_dir = os.path.join(root, "shim", "src", "generated")
    os.makedirs(gen_dir, exist_ok=True)
    write_rs(os.path.join(gen_dir, "procaddr.rs"), rows)
    write_prototypes(
        os.path.join(gen_dir, "prototypes.rs"), rows, parse_prototypes(inc), known_types(root)
    )
    names = len({r[0] for r in rows})
    symbols = len({r[3] for r in rows})
    print("%d rows, %d base names, %d symbols" % (len(rows), names, symbols), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
