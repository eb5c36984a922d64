#!/usr/bin/env bash
# Records bench/traces/torch-train-step.jsonl.gz, the PyTorch trace that `xpupool bench`
# replays: torch_step.py through `xpupool run` on the embedded mock, which skips every
# kernel (--kernels skip: PyTorch's kernels are SASS the interpreter cannot run, and
# a trace needs the calls, not the results). Needs the Python environment of
# scripts/install-python-env.sh and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${XPUPOOL_PY_ENV:-$PWD/.venv}/bin/python"
[ -x "$python" ] || { echo "no Python environment at $python; run scripts/install-python-env.sh" >&2; exit 1; }
cargo build --release -p xpupool -p xpupool-shim -p xpupool-nvml
out=bench/traces/torch-train-step.jsonl
rm -f "$out" "$out.gz"
XPUPOOL_TRACE="$PWD/$out" target/release/xpupool run --backend mock --kernels skip -- \
    "$python" bench/traces/torch_step.py
gzip -9 -n "$out"
echo "recorded $out.gz ($(stat -c %s "$out.gz") bytes)"
