#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, if they are missing:
#   protobuf-compiler  protoc, which the etcd-client crate's build runs
#   etcd-server        etcd, which tests/pool starts for the managers' shared state
#   libamdhip64-dev    HIP's headers and the real libamdhip64.so.5, which tests/hip builds
#                      its loader test against (scripts/run-hip-tests.sh)
#   hipcc              the HIP compiler (clang with the ROCm device libraries), which
#                      scripts/build-hip-tests.sh builds tests/hip/*.hip with
#   g++                tests/npu/cpu_torch.cpp (scripts/install-npu-env.sh)
# Idempotent; uses sudo when not root. Prints nothing when all are there.
#   --build-only   only what the build needs (protoc)
set -euo pipefail
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ "${1:-}" != "--build-only" ]; then
    command -v etcd >/dev/null || missing+=(etcd-server)
    [ -f /usr/include/hip/hip_runtime_api.h ] || missing+=(libamdhip64-dev)
    command -v hipcc >/dev/null || missing+=(hipcc)
    command -v g++ >/dev/null || missing+=(g++)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing ${missing[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >&2 || true
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
# Debian starts etcd as a service on install; the tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    $sudo systemctl stop etcd >&2 || true
fi
