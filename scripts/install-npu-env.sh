#!/usr/bin/env bash
# Creates (once) a virtual environment with torch_npu 2.14.0 and torch 2.14.0 from
# PyPI (tests/npu/requirements.txt), for tests/npu, and prints its python.
#   XPUPOOL_NPU_ENV  where the venv lives (default: .venv-npu at the repository root)
#   XPUPOOL_PY_ENV   the venv of tests/python, whose CUDA libraries this one shares
# Also builds tests/npu/cpu_torch.cpp into the venv (see that file: it lets
# torch_npu load beside PyPI's x86-64 torch, the CUDA build, as it does beside the
# CPU build it is meant for). Idempotent: reinstalls only when the requirements or
# that file change.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req="$root/tests/npu/requirements.txt"
venv=${XPUPOOL_NPU_ENV:-$root/.venv-npu}
stamp="$venv/.installed-$(cat "$req" "$root/tests/npu/cpu_torch.cpp" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    main_python=$("$root/scripts/install-python-env.sh")
    main_site=$("$main_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "installing torch 2.14.0 and torch_npu 2.14.0 (about 1 GB, cached by pip) into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off \
        --no-deps -r "$req" >&2
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # torch's RPATH looks in site-packages/nvidia/*/lib: the other venv's libraries.
    for dir in "$main_site"/nvidia/*/; do
        name=$(basename "$dir")
        if [ -d "$site/nvidia/$name" ]; then
            for lib in "$dir"lib/*; do
                [ -e "$site/nvidia/$name/lib/$(basename "$lib")" ] || ln -s "$lib" "$site/nvidia/$name/lib/"
            done
        else
            ln -s "$dir" "$site/nvidia/$name"
        fi
    done
    g++ -shared -fPIC -O2 -o "$venv/cpu_torch.so" "$root/tests/npu/cpu_torch.cpp" -ldl
    touch "$stamp"
fi
echo "$venv/bin/python"
