#!/usr/bin/env bash
# Runs tests/python (unmodified PyTorch and pynvml) through `xpupool run` with a
# memory limit, on the mock backend. Installs the Python packages on first use.
#   XPUPOOL_BIN   the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}
python=$("$root/scripts/install-python-env.sh")
limit=$((1 << 30))
cd "$root/tests/python"
XPUPOOL_EXPECT_MEMORY_LIMIT=$limit XPUPOOL_NO_SKIP=1 \
    "$bin" run --memory-limit 1GiB -- "$python" -m pytest -q -p no:cacheprovider -rfE .
