#!/usr/bin/env bash
# Runs tests/tenancy: pool servers with several tenants (server.toml) on the mock
# backend, unmodified CUDA programs of each through `xpupool run --server`, and the
# metrics endpoint read with the Prometheus project's parser. Needs the programs of
# scripts/build-cuda-tests.sh, the venv of scripts/install-python-env.sh, and for its
# Ascend tenant that of scripts/install-npu-env.sh (and scripts/build-acl-libs.sh).
#   XPUPOOL_BIN          the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
#   XPUPOOL_SOAK_SECONDS how long the eight-tenant test runs (60)
scripts=$(dirname "$0")
"$scripts/build-acl-libs.sh" >/dev/null
XPUPOOL_NPU_PYTHON=$("$scripts/install-npu-env.sh")
export XPUPOOL_NPU_PYTHON
exec "$scripts/run-pytest-suite.sh" tenancy "$@"
