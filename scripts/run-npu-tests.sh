#!/usr/bin/env bash
# Runs tests/npu (unmodified torch_npu 2.14.0 and torch 2.14.0 from PyPI, and the
# CANN stand-in's libraries) through `xpupool run` with a memory limit, on the mock
# backend's stand-in Ascend device. Installs the Python packages on first use
# (scripts/install-npu-env.sh) and makes the libraries (scripts/build-acl-libs.sh).
#   XPUPOOL_BIN   the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
#   XPUPOOL_NPU_RUN_ARGS  what `xpupool run` is given before the program (default:
#                 --memory-limit 1GiB --mock-devices 2, the embedded mock with two
#                 devices); scripts/run-acl-backend-tests.sh names a server instead.
#                 XPUPOOL_EXPECT_MEMORY_LIMIT: the device memory the tests expect
#                 (default 1 GiB); XPUPOOL_EXPECT_DEVICES: the devices (default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}
"$root/scripts/build-acl-libs.sh" >/dev/null
python=$("$root/scripts/install-npu-env.sh")
# The table of CANN functions torch_npu imports comes from this wheel: regenerated
# from it, it must not change. (vendor-headers/aclnn-ops.tsv comes from CANN's
# operator repositories, which CI does not fetch: gen_aclnn_ops.py says how.)
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 "$root/vendor-headers/gen_acl_symbols.py" "$site/torch_npu" >/dev/null
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
    && ! git -C "$root" diff --quiet -- vendor-headers/acl-symbols-torch_npu-2.14.0.tsv; then
    echo "vendor-headers/acl-symbols-torch_npu-2.14.0.tsv differs from what gen_acl_symbols.py writes" >&2
    exit 1
fi
limit=${XPUPOOL_EXPECT_MEMORY_LIMIT:-$((1 << 30))}
read -r -a run_args <<< "${XPUPOOL_NPU_RUN_ARGS:---memory-limit 1GiB --mock-devices 2}"
cd "$root/tests/npu"
# cpu_torch.so: see tests/npu/cpu_torch.cpp (PyPI has no x86-64 CPU build of torch).
LD_PRELOAD="$(dirname "$(dirname "$python")")/cpu_torch.so${LD_PRELOAD:+ $LD_PRELOAD}" \
XPUPOOL_EXPECT_MEMORY_LIMIT=$limit XPUPOOL_EXPECT_DEVICES=${XPUPOOL_EXPECT_DEVICES:-2} XPUPOOL_NO_SKIP=1 \
    "$bin" run "${run_args[@]}" -- "$python" -m pytest -q -p no:cacheprovider -rfE .
