#!/usr/bin/env bash
# The whole test suite, as CI runs it (README: "run the tests"). Installs what it
# needs (NVIDIA's CUDA 13.2 compiler and runtime from PyPI into .cuda/), then:
#   0. checks that the code generated from CUDA's headers (vendor-headers/) is current;
#   1. the Rust tests of every crate (unit and integration, release profile so the
#      binaries built for step 3 are shared), among them the fault tests (servers
#      and clients killed, in processes of their own, on loopback) and a bounded
#      run of every fuzz target (fuzz/);
#   2. compiles the CUDA test programs with nvcc -cudart shared (SASS + PTX);
#   3. runs each through xpupool against the mock backend; they check their own
#      results against CPU references;
#   3b. makes the HIP stand-in's per-SONAME libraries and runs tests/hip on them
#      (Debian's libamdhip64-dev is installed for its headers and real library), and
#      the HIP programs built with Debian's hipcc, their kernels on the mock's gfx90a
#      interpreter, then again through the hip backend (on xpupool's own
#      libamdhip64, a mock server behind it);
#   4. runs the unmodified PyTorch wheel (and pynvml) through xpupool: tests/python,
#      in a venv made by scripts/install-python-env.sh (XPUPOOL_PY_ENV); then the
#      AMD SMI / ROCm SMI stand-in (tests/amdsmi: C, and the amdsmi Python package);
#   4b. runs torch_npu 2.14.0 (PyPI) through xpupool on the mock's stand-in Ascend
#      device, and checks the CANN stand-in's libraries (tests/npu), in a venv made
#      by scripts/install-npu-env.sh (XPUPOOL_NPU_ENV); then again through the acl
#      backend (on xpupool's own CANN libraries, a mock server behind them);
#   5. runs tests/tenancy: servers with several tenants (server.toml), their shares,
#      priorities, ledgers, devices and metrics, with the programs of step 2;
#   6. runs tests/pool: a pool manager with three servers, placement by each policy,
#      leases, quotas, metering, and two managers on etcd;
#   7. validates the deployment files (deploy/: kubernetes-validate, systemd-analyze).
# Debian's protobuf-compiler (for the etcd client's build) and etcd-server (for step
# 6) are installed with apt-get if missing (scripts/install-system-packages.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=never

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 with pip is required" >&2; exit 2; }
for tool in gcc objcopy; do
    command -v "$tool" >/dev/null || { echo "$tool is required (Debian: apt-get install gcc binutils)" >&2; exit 2; }
done

echo "== toolchain"
scripts/install-system-packages.sh
scripts/install-cuda-toolchain.sh

echo "== generated code is what the headers give"
# The driver's entry-point table, prototypes and error strings are generated from the
# toolkit's headers (vendor-headers/); regenerated here, they must not change.
python3 vendor-headers/gen_procaddr.py
python3 vendor-headers/gen_errors.py
# The gfx90a opcode tables come from LLVM's disassembler (llvm-mc-15, which hipcc
# brings), 2/pi's bits from exact arithmetic.
if command -v llvm-mc-15 >/dev/null; then
    python3 amdgpu/gen/opcodes.py > amdgpu/src/interp/opcodes.rs
fi
python3 amdgpu/gen/two_over_pi.py > amdgpu/src/interp/two_over_pi.rs
# The HIP functions' C signatures, from Debian's HIP headers (libamdhip64-dev) read
# with clang-15; the libamdhip64 stand-in's exports are checked against them.
if command -v clang-15 >/dev/null && [ -e /usr/include/hip/hip_runtime_api.h ]; then
    python3 vendor-headers/gen_hip_prototypes.py
fi
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
    && ! git -C "$root" diff --quiet -- shim/src/generated vendor-headers amdgpu/src/interp hip/src/generated; then
    git -C "$root" diff --stat -- shim/src/generated vendor-headers amdgpu/src/interp hip/src/generated >&2
    echo "generated code differs from what its scripts write: commit what vendor-headers/*.py and amdgpu/gen/*.py write" >&2
    exit 1
fi

echo "== cargo build --release"
cargo build --release --workspace --all-targets
# The CANN stand-in's libraries: server/tests/acl_backend.rs loads them as the host's CANN.
scripts/build-acl-libs.sh >/dev/null

echo "== cargo test --release (with the fault tests, cli/tests/faults.rs, and every fuzz target for XPUPOOL_FUZZ_SECONDS each)"
export XPUPOOL_FUZZ_SECONDS=${XPUPOOL_FUZZ_SECONDS:-10}
cargo test --release --workspace

echo "== CUDA test programs"
scripts/build-cuda-tests.sh
XPUPOOL_BIN="${CARGO_TARGET_DIR:-$root/target}/release/xpupool" scripts/run-cuda-tests.sh

echo "== the HIP stand-in's libraries and loader test, and HIP programs (tests/hip)"
scripts/run-hip-tests.sh

echo "== the hip backend: tests/hip through a server on xpupool's own libamdhip64, a mock server behind it"
scripts/run-hip-backend-tests.sh

echo "== PyTorch and NVML through xpupool (tests/python)"
scripts/run-python-tests.sh

echo "== the AMD SMI / ROCm SMI stand-in (tests/amdsmi)"
scripts/run-amdsmi-tests.sh

echo "== torch_npu through xpupool on the mock's stand-in Ascend device (tests/npu)"
XPUPOOL_BIN="${CARGO_TARGET_DIR:-$root/target}/release/xpupool" scripts/run-npu-tests.sh

echo "== the acl backend: tests/npu through a server on xpupool's own CANN libraries, a mock server behind it"
XPUPOOL_BIN="${CARGO_TARGET_DIR:-$root/target}/release/xpupool" scripts/run-acl-backend-tests.sh

echo "== many tenants on one server (tests/tenancy)"
XPUPOOL_BIN="${CARGO_TARGET_DIR:-$root/target}/release/xpupool" scripts/run-tenancy-tests.sh

echo "== a pool of many servers (tests/pool)"
XPUPOOL_BIN="${CARGO_TARGET_DIR:-$root/target}/release/xpupool" scripts/run-pool-tests.sh

echo "== deployment files (deploy/)"
scripts/validate-deploy.sh
