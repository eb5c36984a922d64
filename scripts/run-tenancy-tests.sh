#!/usr/bin/env bash
# Runs tests/tenancy: pool servers with several tenants (server.toml) on the mock
# backend, unmodified CUDA programs of each through `xpupool run --server`, and the
# metrics endpoint read with the Prometheus project's parser. Needs the programs of
# scripts/build-cuda-tests.sh and the venv of scripts/install-python-env.sh.
#   XPUPOOL_BIN          the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
#   XPUPOOL_SOAK_SECONDS how long the eight-tenant test runs (60)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export XPUPOOL_BIN=${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}
python=$("$root/scripts/install-python-env.sh")
cd "$root/tests/tenancy"
exec "$python" -m pytest -q -s -p no:cacheprovider -rfE "$@" .
