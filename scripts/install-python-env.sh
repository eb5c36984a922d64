#!/usr/bin/env bash
# Creates (once) a virtual environment with the unmodified PyTorch wheel from PyPI and
# the other packages of tests/python/requirements.txt, and prints its python.
#   XPUPOOL_PY_ENV   where the venv lives (default: .venv at the repository root)
# Idempotent: reinstalls only when the requirements change.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req="$root/tests/python/requirements.txt"
venv=${XPUPOOL_PY_ENV:-$root/.venv}
stamp="$venv/.installed-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "installing $(grep -c '^[a-z]' "$req") Python packages (PyTorch with its CUDA libraries: a few GB, cached by pip) into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off -r "$req" >&2
    touch "$stamp"
fi
echo "$venv/bin/python"
