#!/usr/bin/env bash
# Runs tests/pool: a pool manager with three mock servers of different sizes, jobs
# placed by each policy, 50 placements at once, quotas, a client without a lease, a
# killed server, metering against the servers' own figures, and two managers on etcd
# (one killed, both restarted). Needs spin from scripts/build-cuda-tests.sh, etcd
# (scripts/install-system-packages.sh) and the venv of scripts/install-python-env.sh.
#   XPUPOOL_BIN   the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export XPUPOOL_BIN=${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}
python=$("$root/scripts/install-python-env.sh")
cd "$root/tests/pool"
exec "$python" -m pytest -q -s -p no:cacheprovider -rfE "$@" .
