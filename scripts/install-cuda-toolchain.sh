#!/usr/bin/env bash
# Installs NVIDIA's CUDA 13.2 compiler, runtime and headers from PyPI (pinned, hashed) into
# .cuda/ at the repository root. Idempotent: does nothing when the pinned set is present.
# Prints the toolkit root (the folder holding bin/nvcc, include/, lib/) on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req="$root/vendor-headers/requirements-cuda-13.2.txt"
prefix="$root/.cuda"
stamp="$prefix/.installed-$(sha256sum "$req" | cut -c1-16)"
toolkit="$prefix/nvidia/cu13"
if [ ! -f "$stamp" ]; then
    echo "installing CUDA 13.2 toolchain from PyPI into $prefix" >&2
    rm -rf "$prefix"
    mkdir -p "$prefix"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --require-hashes --target "$prefix" -r "$req" >&2
    # nvcc links -lcudart; the wheel ships only the versioned name.
    ln -sf libcudart.so.13 "$toolkit/lib/libcudart.so"
    touch "$stamp"
fi
[ -x "$toolkit/bin/nvcc" ] || { echo "nvcc missing under $toolkit" >&2; exit 1; }
echo "$toolkit"
