#!/usr/bin/env bash
# Validates the deployment files under deploy/: the Kubernetes manifests against the
# API schemas with kubernetes-validate (from PyPI, in a venv of its own), strictly
# (unknown fields are errors), and the systemd unit with systemd-analyze where the
# machine has it.
#   XPUPOOL_DEPLOY_ENV   where the venv lives (default: .venv-deploy at the repository root)
#   KUBERNETES_VERSION   the API version to check against (default below)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${XPUPOOL_DEPLOY_ENV:-$root/.venv-deploy}
version=${KUBERNETES_VERSION:-1.31.0}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "installing kubernetes-validate into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off "kubernetes-validate==1.31.0" >&2
fi
"$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" "$root"/deploy/k8s/*.yaml
if command -v systemd-analyze >/dev/null; then
    # The unit names paths of the host it is installed on; only its syntax is checked.
    problems=$(systemd-analyze verify --man=no "$root/deploy/systemd/xpupool-server.service" 2>&1 \
        | grep -v -e "Command /opt/xpupool/xpupool is not executable" || true)
    if [ -n "$problems" ]; then
        echo "$problems" >&2
        exit 1
    fi
    echo "deploy/systemd/xpupool-server.service: systemd-analyze verify passed"
else
    echo "systemd-analyze is not on this machine: the unit's syntax was not checked" >&2
fi
