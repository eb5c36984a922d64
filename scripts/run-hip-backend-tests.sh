#!/usr/bin/env bash
# The hip backend (server/src/hip), tested the way run-cuda-tests.sh tests the cuda
# backend: `xpupool server --backend hip` loads xpupool's OWN libamdhip64 stand-in
# (XPUPOOL_HIP_LIBRARY; made by scripts/build-hip-libs.sh) as the host's HIP runtime,
# and that stand-in's XPUPOOL_SERVER is a mock server started here. Every HIP test
# program then runs through the chain
#   client (stand-in) -> server (hip backend, a worker process per session)
#     -> HIP ABI (the stand-in again) -> server (mock: gfx90a code on its interpreter).
# Programs: memory streams device (tests/hip/*.c, built here with gcc as
# scripts/run-hip-tests.sh builds them) and the hipcc ones HIP_KERNEL_TESTS names
# (tests/hip/build, made by scripts/build-hip-tests.sh, run here when hipcc is there
# or the programs are already built). Prints ok/FAIL per program and a closing
# "N passed, N failed" line; exits non-zero if anything failed. Idempotent.
# Needs `cargo build --release` (the CLI and the HIP core, libxpupool_hip.so).
#   XPUPOOL_BIN   the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool)
#   TEST_TIMEOUT  seconds per program (default 300)
set -uo pipefail
# Every tests/hip program (build-hip-tests.sh --list), unless HIP_KERNEL_TESTS names some.
HIP_KERNEL_TESTS="${HIP_KERNEL_TESTS-$("$(dirname "$0")/build-hip-tests.sh" --list)}"
# A kernel the interpreter runs longer than this fails (tests/hip/timeout.hip
# checks that; a test that would hang fails instead).
export XPUPOOL_KERNEL_TIME_LIMIT="${XPUPOOL_KERNEL_TIME_LIMIT:-3}"
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}
build=$root/tests/hip/build
timeout_s=${TEST_TIMEOUT:-300}
[ -x "$bin" ] || { echo "missing $bin (cargo build --release)" >&2; exit 2; }
libs=$("$root/scripts/build-hip-libs.sh") || { echo "scripts/build-hip-libs.sh failed" >&2; exit 2; }
standin=$libs/libamdhip64.so
[ -f "$standin" ] || { echo "missing $standin" >&2; exit 2; }

passed=0 failed=0 failures=()
logs=$(mktemp -d)
cleanup() {
    for pid in ${hip_pid:-} ${mock_pid:-}; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    rm -rf "$logs"
}
trap cleanup EXIT

fail() { # name, why
    failed=$((failed + 1)); failures+=("$1"); echo "FAIL  $1${2:+ ($2)}"
}

check() { # name, command...
    local name=$1; shift
    local start=$SECONDS
    if timeout "$timeout_s" "$@" >"$logs/$name.log" 2>&1; then
        if grep -q 'internal error in the HIP stand-in' "$logs/$name.log"; then
            # A panic the stand-in caught (at exit, say) is a bug, not a pass.
            fail "$name" "the HIP stand-in panicked"
            grep -m3 'internal error' "$logs/$name.log" | sed 's/^/      | /'
            return
        fi
        passed=$((passed + 1)); echo "ok    $name ($((SECONDS - start)) s)"
    else
        fail "$name" "$((SECONDS - start)) s"
        sed 's/^/      | /' "$logs/$name.log" | tail -n 25
    fi
}

. "$root/scripts/servers.sh"

# The programs: the C ones built here, the hipcc ones where they can be.
mkdir -p "$build"
programs=()
for test in memory streams device; do
    if [ ! -x "$build/$test" ] || [ "$root/tests/hip/$test.c" -nt "$build/$test" ] \
        || [ "$root/tests/hip/check.h" -nt "$build/$test" ]; then
        gcc -D__HIP_PLATFORM_AMD__ -O1 -o "$build/$test" "$root/tests/hip/$test.c" \
            /usr/lib/x86_64-linux-gnu/libamdhip64.so.5 -Wl,--allow-shlib-undefined \
            >"$logs/gcc-$test.log" 2>&1 \
            || { fail "build-$test"; sed 's/^/      | /' "$logs/gcc-$test.log" | tail -n 10; continue; }
    fi
    programs+=("$test")
done
if [ -n "$HIP_KERNEL_TESTS" ]; then
    if command -v hipcc >/dev/null; then
        "$root/scripts/build-hip-tests.sh" >"$logs/hipcc.log" 2>&1 \
            || { fail "build-hip-tests"; sed 's/^/      | /' "$logs/hipcc.log" | tail -n 20; }
    fi
    for test in $HIP_KERNEL_TESTS; do
        if [ -x "$build/$test" ]; then programs+=("$test"); else fail "$test" "not built: scripts/build-hip-tests.sh"; fi
    done
fi

# The mock server behind the stand-in.
port=$((20000 + RANDOM % 20000))
if ! start_server mock "$logs" --backend mock --listen "127.0.0.1:$port" --mock-memory-mib 4096 --mock-devices 2; then
    fail mock-server-start; echo "$passed passed, $failed failed"; exit 1
fi
mock_pid=$server_pid

# The hip backend, on the stand-in over that mock server.
hip_port=$((port + 1))
if ! XPUPOOL_HIP_LIBRARY="$standin" XPUPOOL_SERVER="127.0.0.1:$port" XPUPOOL_SERVER_CERT="$server_cert" \
    XPUPOOL_TOKEN="$server_token" start_server hip "$logs" --backend hip --listen "127.0.0.1:$hip_port"; then
    fail hip-backend-start; echo "$passed passed, $failed failed"; exit 1
fi
hip_pid=$server_pid hip_cert=$server_cert hip_token=$server_token
passed=$((passed + 1)); echo "ok    hip-backend-start ($(grep -c . "$logs/hip-server.out") lines: $(sed -n 's/^devices: /devices /p' "$logs/hip-server.out"))"

for test in "${programs[@]}"; do
    check "hip-backend-$test" "$bin" run --server "127.0.0.1:$hip_port" --cert "$hip_cert" \
        --token "$hip_token" -- "$build/$test"
done

# No program's failure (or kernel fault) took the server down with it.
if ! kill -0 "$hip_pid" 2>/dev/null; then
    fail hip-backend-alive "the server exited"; sed 's/^/      | /' "$logs/hip-server.err" | tail -n 20
fi

echo "$passed passed, $failed failed${failures[*]:+: ${failures[*]}}"
[ "$failed" -eq 0 ]
