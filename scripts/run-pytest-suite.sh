#!/usr/bin/env bash
# Runs one pytest suite under tests/ (tenancy, pool) against the release xpupool,
# in the venv of scripts/install-python-env.sh; further arguments go to pytest.
#   scripts/run-pytest-suite.sh SUITE [PYTEST ARGS...]
#   XPUPOOL_BIN   the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:?usage: run-pytest-suite.sh SUITE [PYTEST ARGS...]}
shift
export XPUPOOL_BIN=${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}
python=$("$root/scripts/install-python-env.sh")
cd "$root/tests/$suite"
exec "$python" -m pytest -q -s -p no:cacheprovider -rfE "$@" .
