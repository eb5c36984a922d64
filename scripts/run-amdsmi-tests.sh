#!/usr/bin/env bash
# The AMD SMI / ROCm SMI stand-in's tests (tests/amdsmi): builds it
# (cargo build --release -p xpupool-amdsmi) and its unit tests, checks that
# libamd_smi.so exports every name in amdsmi/src/{amdsmi,rsmi}-symbols.txt, then
# builds tests/amdsmi/smi.c against the real rocm_smi.h (Debian bookworm's
# librocm-smi-dev 5.2.3, downloaded with apt-get download and unpacked into a cache
# folder, nothing installed) and tests/amdsmi/amdsmi_abi.h, and runs it through
# `xpupool run` and its embedded mock server. Then, when python3 and pip are there,
# runs tests/amdsmi/torch_calls.py with the `amdsmi` Python package from PyPI (the
# wheel, unpacked into the cache folder) finding the stand-in as libamd_smi.so, as
# PyTorch's ROCm code paths do. The HIP part of smi.c needs the HIP stand-in built
# (scripts/build-hip-libs.sh); without it that part is skipped. Needs the CLI built
# (cargo build --release -p xpupool). Idempotent.
#   XPUPOOL_AMDSMI_CACHE  the cache folder (default ~/.cache/xpupool-amdsmi)
#   AMDSMI_PY_VERSION     the amdsmi wheel to test with (default 7.0.2; empty: skip)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}/release"
bin="${XPUPOOL_BIN:-$target/xpupool}"
cache="${XPUPOOL_AMDSMI_CACHE:-$HOME/.cache/xpupool-amdsmi}"
py_version="${AMDSMI_PY_VERSION-7.0.2}"
failed=0

cargo build --release -p xpupool-amdsmi --manifest-path "$root/Cargo.toml" >&2
cargo test --release -p xpupool-amdsmi --lib --manifest-path "$root/Cargo.toml" >&2 || failed=1
lib="$target/libamd_smi.so"
want=$(cat "$root"/amdsmi/src/amdsmi-symbols.txt "$root"/amdsmi/src/rsmi-symbols.txt | sed 's/#.*//' | awk 'NF {print $1}' | sort)
have=$(nm -D --defined-only "$lib" | awk '$2 == "T" {print $3}' | sort)
missing=$(comm -23 <(echo "$want") <(echo "$have"))
if [ -z "$missing" ]; then
    echo "ok    libamd_smi.so exports all $(echo "$want" | wc -l) listed names"
else
    echo "FAIL  libamd_smi.so lacks: $(echo "$missing" | head -5 | tr '\n' ' ')"
    failed=1
fi

# The stand-in under the names callers load, on LD_LIBRARY_PATH after what
# `xpupool run` puts there (it links these itself when it finds libamd_smi.so).
libs="$cache/lib"
mkdir -p "$libs"
for name in libamd_smi.so libamd_smi.so.24 libamd_smi.so.25 libamd_smi.so.26 \
    librocm_smi64.so librocm_smi64.so.1 librocm_smi64.so.5 librocm_smi64.so.6 librocm_smi64.so.7; do
    ln -sfn "$lib" "$libs/$name"
done

# Debian's rocm_smi.h, unpacked (not installed) into the cache.
headers="$cache/rocm-smi-dev"
if [ ! -f "$headers/usr/include/rocm_smi/rocm_smi.h" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download librocm-smi-dev >&2)
    rm -rf "$headers"
    dpkg-deb -x "$tmp"/librocm-smi-dev_*.deb "$headers"
    rm -rf "$tmp"
fi
build="$cache/build"
mkdir -p "$build"
gcc -O1 -Wall -Wno-pointer-arith -I"$headers/usr/include" -I"$root/tests/amdsmi" \
    -o "$build/smi" "$root/tests/amdsmi/smi.c" -L"$libs" -lamd_smi -Wl,-rpath,"$libs" -ldl
if LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$bin" run -- "$build/smi"; then :; else
    echo "FAIL  tests/amdsmi/smi.c"
    failed=1
fi

# The amdsmi Python package, as PyTorch uses it.
if [ -n "$py_version" ] && command -v python3 >/dev/null; then
    py="$cache/amdsmi-$py_version"
    if [ ! -f "$py/amdsmi/__init__.py" ]; then
        tmp=$(mktemp -d)
        # pip from the test venv when there is one (CI's python3 may have none).
        pip_python=python3
        [ -x "${XPUPOOL_PY_ENV:-}/bin/python" ] && pip_python="$XPUPOOL_PY_ENV/bin/python"
        "$pip_python" -m pip download --quiet --no-deps --only-binary=:all: "amdsmi==$py_version" -d "$tmp" >&2
        rm -rf "$py"
        python3 -m zipfile -e "$tmp"/amdsmi-*.whl "$py"
        rm -rf "$tmp"
    fi
    if env -u ROCM_PATH -u ROCM_HOME PYTHONPATH="$py" \
        LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$bin" run -- python3 "$root/tests/amdsmi/torch_calls.py"; then :; else
        echo "FAIL  tests/amdsmi/torch_calls.py (amdsmi $py_version)"
        failed=1
    fi
else
    echo "skip  tests/amdsmi/torch_calls.py (no python3, or AMDSMI_PY_VERSION empty)"
fi
exit $failed
