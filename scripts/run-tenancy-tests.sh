#!/usr/bin/env bash
# Runs tests/tenancy: pool servers with several tenants (server.toml) on the mock
# backend, unmodified CUDA programs of each through `xpupool run --server`, and the
# metrics endpoint read with the Prometheus project's parser. Needs the programs of
# scripts/build-cuda-tests.sh and the venv of scripts/install-python-env.sh.
#   XPUPOOL_BIN          the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
#   XPUPOOL_SOAK_SECONDS how long the eight-tenant test runs (60)
exec "$(dirname "$0")/run-pytest-suite.sh" tenancy "$@"
