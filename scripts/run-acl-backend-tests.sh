#!/usr/bin/env bash
# The acl backend (server/src/acl), tested the way run-hip-backend-tests.sh tests
# the hip backend: `xpupool server --backend acl` loads xpupool's OWN CANN
# stand-in (XPUPOOL_ACL_LIBRARY_DIR: the libascendcl.so, libnnopbase.so and
# libopapi.so scripts/build-acl-libs.sh makes) as the host's CANN, and that
# stand-in's XPUPOOL_SERVER is a mock server with a 1 GiB device started here.
# tests/npu then runs through the chain
#   torch_npu -> client (stand-in) -> server (acl backend, a worker process per
#     session: descriptors made again, operators called through libopapi's C
#     types) -> CANN ABI (the stand-in again) -> server (mock: operators on the CPU).
# Prints what run-npu-tests.sh prints, then whether the backend outlived the suite;
# exits non-zero if anything failed. Idempotent.
# Needs `cargo build --release` (the CLI and the CANN core, libxpupool_acl.so).
#   XPUPOOL_BIN   the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}
[ -x "$bin" ] || { echo "missing $bin (cargo build --release)" >&2; exit 2; }
libs=$("$root/scripts/build-acl-libs.sh") || { echo "scripts/build-acl-libs.sh failed" >&2; exit 2; }
logs=$(mktemp -d)
cleanup() {
    for pid in ${acl_pid:-} ${mock_pid:-}; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    rm -rf "$logs"
}
trap cleanup EXIT
. "$root/scripts/servers.sh"

port=$((20000 + RANDOM % 20000))
start_server mock "$logs" --backend mock --listen "127.0.0.1:$port" --mock-memory-mib 1024 --mock-devices 2 \
    || { echo "FAIL  the mock server did not start"; exit 1; }
mock_pid=$server_pid
acl_port=$((port + 1))
XPUPOOL_ACL_LIBRARY_DIR="$libs" XPUPOOL_SERVER="127.0.0.1:$port" XPUPOOL_SERVER_CERT="$server_cert" \
    XPUPOOL_TOKEN="$server_token" start_server acl "$logs" --backend acl --listen "127.0.0.1:$acl_port" \
    || { echo "FAIL  the acl backend did not start"; exit 1; }
acl_pid=$server_pid
echo "ok    acl-backend-start ($(sed -n 's/^devices: /devices /p' "$logs/acl-server.out"))"

status=0
export XPUPOOL_TOKEN=$server_token
XPUPOOL_NPU_RUN_ARGS="--server 127.0.0.1:$acl_port --cert $server_cert" XPUPOOL_EXPECT_ACL_BACKEND=1 \
    XPUPOOL_EXPECT_MEMORY_LIMIT=$((1 << 30)) XPUPOOL_BIN="$bin" "$root/scripts/run-npu-tests.sh" || status=1
# The suite's operators ran on the acl backend, each counted and timed as a launch.
if "$bin" status --server "127.0.0.1:$acl_port" --cert "$server_cert" --json >"$logs/status.json" \
    && python3 - "$logs/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
t = s["tenants"][0]
print(f"ok    acl-backend-accounting ({s['backend']} backend: {t['kernel_launches']} executions, "
      f"{t['busy_seconds'] * 1000:.0f} ms busy, device {s['devices'][0]['name']})")
sys.exit(0 if s["backend"] == "acl" and t["kernel_launches"] > 1000 and t["busy_seconds"] > 0 else 1)
PY
then :; else
    echo "FAIL  acl-backend-accounting"; cat "$logs/status.json"; status=1
fi
# No operator's failure took the server down with it.
if ! kill -0 "$acl_pid" 2>/dev/null; then
    echo "FAIL  acl-backend-alive: the server exited"; sed 's/^/      | /' "$logs/acl-server.err" | tail -n 20
    status=1
else
    echo "ok    acl-backend-alive"
fi
if [ "$status" -ne 0 ]; then
    echo "-- the acl backend's log:"; tail -n 30 "$logs/acl-server.err" | sed 's/^/      | /'
fi
exit "$status"
