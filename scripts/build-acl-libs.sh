#!/usr/bin/env bash
# Makes xpupool's CANN stand-in in <target>/release/acl/: the libraries torch_npu
# links or opens by bare name (libascendcl.so, libopapi.so, libhccl.so, …), each an
# object with its real SONAME whose only dependency is the core, and whose only
# function is aclAppLog (acl/tools/applog.c: a C variadic call Rust cannot read)
# (libxpupool_acl.so, beside them, found by $ORIGIN). A dlsym on any of their
# handles searches the core, so whichever a process opens it has one state, and a
# function the core does not export is NULL there as it would be in a CANN
# release without it. Needs the core built (cargo build --release -p xpupool-acl)
# and gcc. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}/release"
out="$target/acl"
core="$target/libxpupool_acl.so"
[ -f "$core" ] || { echo "the CANN core is not built: cargo build --release -p xpupool-acl" >&2; exit 2; }
mkdir -p "$out"
# A link, not a copy: a rebuilt core is what the next program loads.
ln -sfn ../libxpupool_acl.so "$out/libxpupool_acl.so"
# torch_npu's NEEDED (libascendcl, libhccl, libacl_op_compiler, libge_runner,
# libgraph, libacl_tdt_channel) and what it or aclnn's callers open by name.
for name in ascendcl acl_rt runtime hccl opapi nnopbase cust_opapi acl_op_compiler \
        ge_runner graph acl_tdt_channel ascend_hal dcmi msprofiler msprof profapi \
        ascend_dump ascend_protobuf fmk_parser; do
    gcc -shared -fPIC -O1 -Wall -o "$out/lib$name.so" "$root/acl/tools/applog.c" -Wl,-soname,"lib$name.so" \
        -Wl,--no-as-needed -L"$out" -lxpupool_acl -Wl,-rpath,'$ORIGIN'
done
# npu-smi (`npu-smi info`) over the stand-in's libdcmi; `xpupool run` puts bin/ on PATH.
mkdir -p "$out/bin"
gcc -O1 -Wall -o "$out/bin/npu-smi" "$root/acl/tools/npu-smi.c" -L"$out" -ldcmi -lxpupool_acl -Wl,-rpath,'$ORIGIN/..'

# The folder is also the process's ASCEND_HOME_PATH (`xpupool run` sets it):
# torch_npu checks that a CANN install there has runtime/, compiler/ and an
# operator package (ASCEND_OPP_PATH, opp/), and reads its version from an
# ascend_*_install.info. The stand-in follows CANN 9's headers.
mkdir -p "$out/runtime" "$out/compiler" "$out/opp"
printf 'package_name=xpupool CANN stand-in\nversion=9.0.0\n' > "$out/ascend_xpupool_install.info"
echo "$out"
