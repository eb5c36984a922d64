#!/usr/bin/env bash
# Runs tests/pool: a pool manager with three mock servers of different sizes, jobs
# placed by each policy, 50 placements at once, quotas, a client without a lease, a
# server that may not take over a live one's address, a killed server, metering
# against the servers' own figures, and two managers on etcd (one killed, both
# restarted). Needs spin from scripts/build-cuda-tests.sh, etcd
# (scripts/install-system-packages.sh) and the venv of scripts/install-python-env.sh.
#   XPUPOOL_BIN   the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
exec "$(dirname "$0")/run-pytest-suite.sh" pool "$@"
