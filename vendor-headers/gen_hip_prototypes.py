#!/usr/bin/env python3
"""Writes hip/src/generated/prototypes.rs: the C signature of every HIP runtime
function that HIP 5.2.3's headers declare (hip_runtime_api.h, and hip_ext.h's
C++ launch calls) (Debian's libamdhip64-dev, the headers
hipcc builds against), as a Rust function-pointer type named after the function.
hip/build.rs checks each function the libamdhip64 stand-in implements against its
type, so an export with a parameter too many, too few or of another type does
not compile (as shim/src/boundary.rs does for CUDA's driver).

The headers are read with clang's JSON AST dump (clang-15 comes with hipcc). C
types map to Rust by their meaning: integers and floats by size and signedness,
`size_t` to usize, enums (HIP passes them as int) to c_int, pointers keep their
constness, handles (pointers to opaque structs) and function pointers to
`*mut c_void`, and the structs the stand-in defines to its own types (TYPES).
A function that takes or returns another struct by value is left out, and listed.

  python3 vendor-headers/gen_hip_prototypes.py [--include DIR] [--clang CLANG]
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "hip/src/generated/prototypes.rs"

# C names the stand-in has Rust types for.
TYPES = {
    "hipError_t": "crate::HipError",
    "dim3": "crate::launch::Dim3",
    "hipDeviceProp_t": "crate::device::DeviceProp",
    "hipFuncAttributes": "crate::attributes::FuncAttributes",
    "hipChannelFormatDesc": "crate::ChannelFormatDesc",
    "hipUUID": "[u8; 16]",
}
# Their tags too (`struct hipFuncAttributes *`).
TYPES.update({f"struct {name}": rust for name, rust in list(TYPES.items())})

BUILTINS = {
    "void": "c_void",
    "char": "c_char",
    "signed char": "i8",
    "unsigned char": "u8",
    "short": "i16",
    "unsigned short": "u16",
    "int": "c_int",
    "unsigned int": "c_uint",
    "long": "i64",
    "unsigned long": "u64",
    "long long": "i64",
    "unsigned long long": "u64",
    "float": "f32",
    "double": "f64",
    "_Bool": "bool",
    "size_t": "usize",
    "int8_t": "i8",
    "uint8_t": "u8",
    "int16_t": "i16",
    "uint16_t": "u16",
    "int32_t": "i32",
    "uint32_t": "u32",
    "int64_t": "i64",
    "uint64_t": "u64",
}


OPAQUE = "<opaque>"


class ByValue(Exception):
    """A struct passed by value that the stand-in has no type for."""


def ast(include, clang, header="hip/hip_runtime_api.h", language="c"):
    with tempfile.NamedTemporaryFile("w", suffix=".c") as f:
        f.write(f"#include <{header}>\n")
        f.flush()
        out = subprocess.run(
            [clang, "-x", language, "-fsyntax-only", "-Xclang", "-ast-dump=json",
             "-D__HIP_PLATFORM_AMD__", "-I", include, f.name],
            capture_output=True, text=True, check=False)
    if not out.stdout:
        sys.exit(f"{clang} read no AST: {out.stderr[:2000]}")
    return json.loads(out.stdout)


def split(ctype):
    """'const char *const *' -> ('char', True, [False]) : the base, whether it
    is const, and for each pointer level above the first whether its pointee
    (the pointer below) is const."""
    parts = ctype.split("*")
    base = parts[0]
    const = bool(re.search(r"\bconst\b", base))
    base = re.sub(r"\b(const|volatile|restrict|__restrict)\b", "", base).strip()
    levels = [bool(re.search(r"\bconst\b", p)) for p in parts[1:-1]]
    return base, const, len(parts) - 1, levels


class Mapper:
    def __init__(self, tree):
        self.typedefs = {}
        for node in tree["inner"]:
            if node.get("kind") == "TypedefDecl":
                t = node["type"]
                self.typedefs[node["name"]] = t.get("desugaredQualType", t["qualType"])

    def base(self, name):
        """The Rust type of a C type without pointers of its own; OPAQUE for a
        struct or union the stand-in has no type for."""
        if name in TYPES:
            return TYPES[name]
        if name in BUILTINS:
            return BUILTINS[name]
        if name.startswith("enum "):
            return "c_int"
        if name.startswith(("struct ", "union ")):
            return OPAQUE
        if name in self.typedefs:
            under = self.typedefs[name]
            if "(*)" in under:
                return "*mut c_void"  # a function pointer
            return self.rust(under, by_value_ok=True)
        raise KeyError(name)

    def rust(self, ctype, by_value_ok=False):
        ctype = re.sub(r"\[\d*\]$", "*", ctype.strip())  # an array parameter decays
        base, const, depth, levels = split(ctype)
        out = self.base(base)
        if out == OPAQUE:
            if depth == 0:
                if by_value_ok:
                    return OPAQUE
                raise ByValue(base)
            out = "c_void"
        for level in range(depth):
            pointee_const = const if level == 0 else levels[level - 1]
            out = f"*{'const' if pointee_const else 'mut'} {out}"
        return out


def walk(node):
    """Every hip* function declaration in a C++ AST, nested ones too."""
    if node.get("kind") == "FunctionDecl" and node.get("name", "").startswith("hip"):
        yield node
    for child in node.get("inner", []) or []:
        yield from walk(child)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--include", default="/usr/include")
    p.add_argument("--clang", default="clang-15")
    args = p.parse_args()
    tree = ast(args.include, args.clang)
    m = Mapper(tree)
    lines, skipped, seen = [], [], set()
    for node in tree["inner"]:
        if node.get("kind") != "FunctionDecl" or not node["name"].startswith("hip"):
            continue
        name = node["name"]
        if name in seen:
            continue
        seen.add(name)
        returns = node["type"]["qualType"].split("(")[0].strip()
        params = [q["type"]["qualType"] for q in node.get("inner", []) if q.get("kind") == "ParmVarDecl"]
        try:
            rust_params = [m.rust(t) for t in params]
            ret = "" if returns == "void" else f" -> {m.rust(returns)}"
        except ByValue as e:
            skipped.append(f"{name} ({e})")
            continue
        variadic = ", ..." if node.get("variadic") else ""
        lines.append(f"pub(crate) type {name} = unsafe extern \"C\" fn({', '.join(rust_params)}{variadic}){ret};")
    # hip_ext.h is C++ (its functions are exported mangled): those it adds, where
    # every declaration of a name agrees (no overloads) and its types map.
    declared = {}
    for node in walk(ast(args.include, args.clang, "hip/hip_ext.h", "c++")):
        declared.setdefault(node["name"], set()).add(node["type"]["qualType"])
    for name, types in sorted(declared.items()):
        if name in seen or len(types) != 1 or not name.startswith(("hipExt", "hipHcc")):
            continue
        node_type = next(iter(types))
        returns, _, params = node_type.partition("(")
        params = [t.strip() for t in params.rstrip(")").split(",") if t.strip()]
        try:
            rust_params = [m.rust(t) for t in params]
            ret = m.rust(returns.strip())
        except (KeyError, ByValue):
            continue
        seen.add(name)
        lines.append(f"pub(crate) type {name} = unsafe extern \"C\" fn({', '.join(rust_params)}) -> {ret};")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w") as f:
        f.write("// @generated by vendor-headers/gen_hip_prototypes.py from HIP 5.2.3's hip_runtime_api.h and hip_ext.h — do not edit\n")
        f.write("//! Each HIP runtime function's C signature as a function-pointer type.\n")
        f.write(f"//! Left out (a struct by value the stand-in has no type for): {len(skipped)}.\n")
        for s in skipped:
            f.write(f"//!   {s}\n")
        f.write("#![allow(non_camel_case_types, dead_code)]\n")
        f.write("use std::ffi::{c_char, c_int, c_uint, c_void};\n\n")
        f.write("\n".join(sorted(lines)) + "\n")
    print(f"wrote {OUT}: {len(lines)} prototypes, {len(skipped)} left out", file=sys.stderr)


if __name__ == "__main__":
    main()
