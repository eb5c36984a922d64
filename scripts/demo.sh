#!/usr/bin/env bash
# The README's first command: builds xpupool, installs NVIDIA's compiler and runtime
# from PyPI (pinned, into .cuda/), compiles examples/saxpy.cu as any CUDA program is
# compiled, and runs it unmodified through `xpupool run` on the embedded server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
# protoc, which the etcd client's build needs (Debian's protobuf-compiler).
scripts/install-system-packages.sh --build-only
echo "== building xpupool (cargo build --release)" >&2
cargo build --release --quiet
T=$(scripts/install-cuda-toolchain.sh)
mkdir -p examples/build
if [ ! examples/build/saxpy -nt examples/saxpy.cu ]; then
    echo "== compiling examples/saxpy.cu with nvcc -cudart shared" >&2
    "$T/bin/nvcc" -cudart shared -L"$T/lib" -Xlinker -rpath -Xlinker "$T/lib" \
        -gencode arch=compute_90,code=[sm_90,compute_90] -O2 -o examples/build/saxpy examples/saxpy.cu
fi
echo "== $target/release/xpupool run -- examples/build/saxpy" >&2
exec "$target/release/xpupool" run -- examples/build/saxpy
