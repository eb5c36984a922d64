#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a GPU host that has no Rust toolchain and
# no network, small enough to send along (the device tool carries at most 64 MiB):
#   .gpu/xpupool, .gpu/libcuda.so, .gpu/libnvidia_ml.so   release builds, debug info stripped
#   .gpu/lib/libcudart.so.13                              the runtime the test programs link
#   tests/cuda/build, tests/tenancy/build                 the CUDA test programs (sm_90 SASS + PTX)
# Then run it there as: scripts/gpu-check.sh   (it finds .gpu/ by itself).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet -p xpupool -p xpupool-shim -p xpupool-nvml
scripts/build-cuda-tests.sh >/dev/null
T=$(scripts/install-cuda-toolchain.sh)
target=${CARGO_TARGET_DIR:-$root/target}/release
rm -rf .gpu
mkdir -p .gpu/lib
for f in xpupool libcuda.so libnvidia_ml.so; do
    objcopy --strip-debug "$target/$f" ".gpu/$f"
done
cp -L "$T/lib/libcudart.so.13" .gpu/lib/
du -sh .gpu tests/cuda/build tests/tenancy/build | sed 's/^/bundle: /'
