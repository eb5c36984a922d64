#!/usr/bin/env bash
# Runs every CUDA test program (tests/cuda/build, made by scripts/build-cuda-tests.sh)
# through xpupool: each one under `xpupool run` (the embedded server), then a few
# against a separately started `xpupool server` to cover that path, including a
# wrong token being refused. Prints one line per program and a closing
# "N passed, N failed" line; exits non-zero if anything failed.
#   XPUPOOL_BIN   the xpupool binary (default: $CARGO_TARGET_DIR or target/, then release/xpupool);
#                 its libcuda.so is the one beside it
#   TEST_TIMEOUT  seconds per program (default 300)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}
shim=$(dirname "$bin")/libcuda.so
build=$root/tests/cuda/build
timeout_s=${TEST_TIMEOUT:-300}
[ -x "$bin" ] || { echo "missing $bin (cargo build --release)" >&2; exit 2; }
[ -d "$build" ] || { echo "missing $build (scripts/build-cuda-tests.sh)" >&2; exit 2; }

passed=0 failed=0 failures=()
logs=$(mktemp -d)
trap 'rm -rf "$logs"; [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; true' EXIT

check() { # name, command...
    local name=$1; shift
    local start=$SECONDS
    if timeout "$timeout_s" "$@" >"$logs/$name.log" 2>&1 && grep -q "^PASS" "$logs/$name.log"; then
        passed=$((passed + 1)); echo "ok    $name ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "FAIL  $name ($((SECONDS - start)) s)"
        sed 's/^/      | /' "$logs/$name.log" | tail -n 25
    fi
}

programs=()
for p in "$build"/*; do [ -f "$p" ] && [ -x "$p" ] && programs+=("$p"); done
[ ${#programs[@]} -gt 0 ] || { echo "no test programs in $build" >&2; exit 2; }

echo "== through xpupool run (embedded mock server)"
for p in "${programs[@]}"; do
    check "$(basename "$p")" "$bin" run -- "$p"
done

# --memory-limit: the device reports the limit as its memory.
if "$bin" run --memory-limit 256MiB -- "$build/device_query" >"$logs/limit.log" 2>&1 && grep -q " 256 MiB" "$logs/limit.log"; then
    passed=$((passed + 1)); echo "ok    memory-limit-reported"
else
    failed=$((failed + 1)); failures+=("memory-limit-reported"); echo "FAIL  memory-limit-reported"; sed 's/^/      | /' "$logs/limit.log"
fi

# Virtual memory on a small device: physical allocations until it is full, then
# out of memory, and everything back once released.
if [ -x "$build/vmm" ]; then
    check vmm-under-limit "$bin" run --memory-limit 64MiB -- "$build/vmm"
    if ! grep -q "filled the device with" "$logs/vmm-under-limit.log"; then
        failed=$((failed + 1)); failures+=("vmm-under-limit (did not fill the device)"); echo "FAIL  vmm-under-limit did not fill the device"
    fi
fi

# Graph memory on a small device: an allocation larger than the device refused.
if [ -x "$build/graph_memory" ]; then
    check graph_memory-under-limit "$bin" run --memory-limit 64MiB -- "$build/graph_memory"
    if ! grep -q "refused a graph allocation" "$logs/graph_memory-under-limit.log"; then
        failed=$((failed + 1)); failures+=("graph_memory-under-limit (no refusal)"); echo "FAIL  graph_memory-under-limit did not check the refusal"
    fi
fi

# Managed memory moves only what changed: the program's last allocation has one
# word written on the host, read and changed by a kernel, read back: one page
# written back, one first window (64 KiB) fetched, two faults.
if [ -x "$build/managed" ]; then
    page=$(getconf PAGESIZE)
    expected="(3145828 bytes) freed: 2 faults, 65536 bytes fetched, $page bytes written back"
    if XPUPOOL_LOG=debug "$bin" run -- "$build/managed" >"$logs/managed-figures.log" 2>&1 \
        && grep -qF "$expected" "$logs/managed-figures.log"; then
        passed=$((passed + 1)); echo "ok    managed-moves-only-what-changed"
    else
        failed=$((failed + 1)); failures+=("managed-moves-only-what-changed")
        echo "FAIL  managed-moves-only-what-changed (expected: $expected)"
        grep -F "(3145828 bytes)" "$logs/managed-figures.log" | sed 's/^/      | /'
    fi
fi

# Module images are cached by content hash: a second run of a program uploads none.
uploads() { XDG_CACHE_HOME="$logs/cache" XPUPOOL_LOG=debug "$bin" run -- "$build/vector_add" 2>&1 | grep -c "uploading a module image"; }
first=$(uploads); second=$(uploads)
if [ "$first" -ge 1 ] && [ "$second" = 0 ]; then
    passed=$((passed + 1)); echo "ok    module-cache (uploads: first run $first, second run $second)"
else
    failed=$((failed + 1)); failures+=("module-cache"); echo "FAIL  module-cache (uploads: first run $first, second run $second)"
fi

# XPUPOOL_TRACE records every driver call and request without the data, and
# `xpupool bench replay` replays the steps between cudaProfilerStart/Stop: each step
# may wait for the server only at the trace's synchronisation points.
trace=$logs/steps.trace
if XPUPOOL_TRACE="$trace" "$bin" run -- "$build/profiled_steps" >"$logs/trace-run.log" 2>&1 \
    && "$bin" bench replay "$trace" --json >"$logs/replay.json" 2>"$logs/replay.err" \
    && python3 - "$trace" "$logs/replay.json" >"$logs/trace-check.log" 2>&1 <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert lines[0]["trace"] == "xpupool", lines[0]
calls = [l["call"] for l in lines if "call" in l]
ops = [l for l in lines if "op" in l]
assert calls.count("cuProfilerStart") == 4 and calls.count("cuProfilerStop") == 4, calls
# 4 copies of 256 KiB: lengths recorded, bytes not. Over the Unix socket they go
# through the shared-memory region; in a message, the data is left out.
def copied(o):
    if "MemcpyHtoDShared" in o["op"]:
        return o["op"]["MemcpyHtoDShared"]["len"]
    assert o["op"]["MemcpyHtoD"]["data"] == [], o
    return o["bytes"]
copies = [copied(o) for o in ops if "MemcpyHtoD" in o["op"] or "MemcpyHtoDShared" in o["op"]]
assert copies == [1 << 18] * 4, copies
assert sum(len(json.dumps(l)) for l in lines) < 1 << 18, "the trace holds data"
launches = [o for o in ops if "LaunchKernel" in o["op"]]
assert len(launches) == 8 and not any(o["wait"] for o in launches), launches
replay = json.load(open(sys.argv[2]))
for transport in ("quic", "local"):
    r = replay["replay"][transport]
    assert r["steps"] == 4, r
    # per step: the copy back and the stream synchronise, nothing else
    assert r["sync_points_per_step"] == 2 and r["round_trips_per_step"] == 2, r
    assert r["posted_per_step"] == 3, r
print("trace ok:", len(lines), "lines;", replay["replay"]["local"])
PY
then
    passed=$((passed + 1)); echo "ok    trace-record-and-replay ($(tail -c 200 "$logs/trace-check.log"))"
else
    failed=$((failed + 1)); failures+=("trace-record-and-replay"); echo "FAIL  trace-record-and-replay"
    cat "$logs/trace-run.log" "$logs/replay.err" "$logs/trace-check.log" 2>/dev/null | sed 's/^/      | /' | tail -n 25
fi

# The same with a captured graph, a CUDA array and a texture object in the trace:
# each is made again by the replay, and all four steps run.
trace=$logs/graph-steps.trace
if XPUPOOL_TRACE="$trace" "$bin" run -- "$build/profiled_steps" graph >"$logs/graph-trace-run.log" 2>&1 \
    && "$bin" bench replay "$trace" --json >"$logs/graph-replay.json" 2>"$logs/graph-replay.err" \
    && python3 - "$trace" "$logs/graph-replay.json" >"$logs/graph-trace-check.log" 2>&1 <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ops = [next(iter(l["op"])) for l in lines if "op" in l]
for name in ("GraphCreate", "GraphLaunch", "ArrayCreate", "TexObjectCreate", "MemcpyArrayDevice", "MemcpyFromArray"):
    assert name in ops, (name, sorted(set(ops)))
launches = [l for l in lines if "op" in l and "GraphLaunch" in l["op"]]
assert len(launches) == 4, launches
replay = json.load(open(sys.argv[2]))
for transport in ("quic", "local"):
    assert replay["replay"][transport]["steps"] == 4, replay["replay"][transport]
print("graph trace ok:", replay["replay"]["local"])
PY
then
    passed=$((passed + 1)); echo "ok    trace-replay-of-graphs-and-arrays ($(tail -c 200 "$logs/graph-trace-check.log"))"
else
    failed=$((failed + 1)); failures+=("trace-replay-of-graphs-and-arrays"); echo "FAIL  trace-replay-of-graphs-and-arrays"
    cat "$logs/graph-trace-run.log" "$logs/graph-replay.err" "$logs/graph-trace-check.log" 2>/dev/null | sed 's/^/      | /' | tail -n 25
fi

echo "== against a separate xpupool server"
state=$logs/server-state
port=$((20000 + RANDOM % 20000))
"$bin" server --backend mock --listen "127.0.0.1:$port" --state-dir "$state" --mock-memory-mib 4096 \
    >"$logs/server.out" 2>"$logs/server.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^token file:' "$logs/server.out" 2>/dev/null && break; sleep 0.1; done
cert=$(sed -n 's/^certificate: //p' "$logs/server.out")
fingerprint=$(sed -n 's/^fingerprint: //p' "$logs/server.out")
token=$(cat "$state/token" 2>/dev/null)
if [ -z "$cert" ] || [ -z "$token" ]; then
    failed=$((failed + 1)); failures+=("server-start"); echo "FAIL  server-start"; cat "$logs/server.err"
else
    # LD_PRELOAD by hand, as the README shows, verifying by certificate.
    check server-preload-vector_add env LD_PRELOAD="$shim" \
        XPUPOOL_SERVER="127.0.0.1:$port" XPUPOOL_SERVER_CERT="$cert" XPUPOOL_TOKEN="$token" "$build/vector_add"
    # On this host the client moves to the server's Unix socket by itself, unless
    # XPUPOOL_TRANSPORT=quic; both run the program.
    moved() { XPUPOOL_LOG=debug env LD_PRELOAD="$shim" XPUPOOL_SERVER="127.0.0.1:$port" XPUPOOL_SERVER_CERT="$cert" \
        XPUPOOL_TOKEN="$token" "$@" "$build/memops" 2>&1 | grep -c -e "using its Unix socket" -e "^PASS"; }
    via_unix=$(moved env); via_quic=$(XPUPOOL_TRANSPORT=quic moved env)
    if [ "$via_unix" = 2 ] && [ "$via_quic" = 1 ]; then
        passed=$((passed + 1)); echo "ok    same-host-server-uses-unix-socket"
    else
        failed=$((failed + 1)); failures+=("same-host-server-uses-unix-socket")
        echo "FAIL  same-host-server-uses-unix-socket (moved+passed: $via_unix; with XPUPOOL_TRANSPORT=quic: $via_quic, expected 2 and 1)"
    fi
    # A program that exits closes its QUIC connection from the driver's atexit
    # handler: no panic (a runtime driven after the thread's locals are gone).
    if env LD_PRELOAD="$shim" XPUPOOL_TRANSPORT=quic XPUPOOL_SERVER="127.0.0.1:$port" XPUPOOL_SERVER_CERT="$cert" \
        XPUPOOL_TOKEN="$token" timeout 120 "$build/vector_add" >"$logs/quic-exit.log" 2>&1 \
        && grep -q "^PASS" "$logs/quic-exit.log" && ! grep -qi "panic" "$logs/quic-exit.log"; then
        passed=$((passed + 1)); echo "ok    quic-exit-without-panic"
    else
        failed=$((failed + 1)); failures+=("quic-exit-without-panic"); echo "FAIL  quic-exit-without-panic"
        sed 's/^/      | /' "$logs/quic-exit.log" | tail -n 25
    fi
    # xpupool run --server, verifying by pinned fingerprint.
    check server-run-driver_api "$bin" run --server "127.0.0.1:$port" --fingerprint "$fingerprint" --token "$token" -- "$build/driver_api"
    # A wrong token must be refused: cudart then reports no usable device.
    if XPUPOOL_LOG=error timeout 60 env LD_PRELOAD="$shim" XPUPOOL_SERVER="127.0.0.1:$port" \
        XPUPOOL_SERVER_CERT="$cert" XPUPOOL_TOKEN="wrong" "$build/vector_add" >"$logs/badtoken.log" 2>&1; then
        failed=$((failed + 1)); failures+=("wrong-token-refused"); echo "FAIL  wrong-token-refused (program succeeded)"
    elif grep -q "unknown tenant token" "$logs/badtoken.log"; then
        passed=$((passed + 1)); echo "ok    wrong-token-refused"
    else
        failed=$((failed + 1)); failures+=("wrong-token-refused"); echo "FAIL  wrong-token-refused"; cat "$logs/badtoken.log"
    fi
    # The cuda backend, with xpupool's own libcuda.so.1 standing in for NVIDIA's
    # driver and this mock server behind it: every program through the chain
    # client -> server (cuda backend) -> driver ABI -> server (mock).
    # Its NVML is xpupool's too (over the same mock server): the memory each
    # session worker holds, which the ledger is reconciled with in the metrics.
    cuda_port=$((port + 1))
    cuda_metrics=$((port + 2))
    XPUPOOL_CUDA_DRIVER="$shim" XPUPOOL_NVML_LIBRARY="$(dirname "$bin")/libnvidia_ml.so" \
        XPUPOOL_SERVER="127.0.0.1:$port" XPUPOOL_SERVER_CERT="$cert" XPUPOOL_TOKEN="$token" \
        "$bin" server --backend cuda --listen "127.0.0.1:$cuda_port" --state-dir "$logs/cuda-state" \
        --metrics-listen "127.0.0.1:$cuda_metrics" \
        >"$logs/cuda-server.out" 2>"$logs/cuda-server.err" &
    cuda_pid=$!
    for _ in $(seq 100); do grep -q '^token file:' "$logs/cuda-server.out" 2>/dev/null && break; sleep 0.1; done
    cuda_cert=$(sed -n 's/^certificate: //p' "$logs/cuda-server.out")
    cuda_token=$(cat "$logs/cuda-state/token" 2>/dev/null)
    if [ -z "$cuda_cert" ] || [ -z "$cuda_token" ]; then
        failed=$((failed + 1)); failures+=("cuda-backend-start"); echo "FAIL  cuda-backend-start"; cat "$logs/cuda-server.err"
    else
        for p in "${programs[@]}"; do
            check "cuda-backend-$(basename "$p")" "$bin" run --server "127.0.0.1:$cuda_port" --cert "$cuda_cert" --token "$cuda_token" -- "$p"
        done
        # The ledger against the driver's own figures: while a program holds 64 MiB
        # through the cuda backend, the memory NVML counts for its session worker
        # and what the ledger charges it differ by less than 4 MiB.
        spin="$root/tests/tenancy/build/spin"
        "$bin" run --server "127.0.0.1:$cuda_port" --cert "$cuda_cert" --token "$cuda_token" -- "$spin" hold 64 4 \
            >"$logs/cuda-drift-hold.log" 2>&1 &
        hold_pid=$!
        sleep 2
        curl -s "http://127.0.0.1:$cuda_metrics/metrics" >"$logs/cuda-drift.metrics"
        wait "$hold_pid"
        if python3 - "$logs/cuda-drift.metrics" >"$logs/cuda-drift.log" 2>&1 <<'PY'
import sys
values = {}
for line in open(sys.argv[1]):
    if line.startswith(("xpupool_accounting_drift_bytes", "xpupool_device_memory_used_bytes")):
        name, value = line.rsplit(" ", 1)
        values[name.split("{")[0]] = float(value)
drift = values.get("xpupool_accounting_drift_bytes")
used = values.get("xpupool_device_memory_used_bytes", 0)
print(f"drift {drift} bytes, device memory used {used:.0f} bytes")
ok = drift is not None and abs(drift) < 4 << 20 and used >= 64 << 20
print("PASS cuda-backend-drift" if ok else "FAIL cuda-backend-drift")
sys.exit(0 if ok else 1)
PY
        then
            passed=$((passed + 1)); echo "ok    cuda-backend-drift ($(head -1 "$logs/cuda-drift.log"))"
        else
            failed=$((failed + 1)); failures+=("cuda-backend-drift"); echo "FAIL  cuda-backend-drift"
            sed 's/^/      | /' "$logs/cuda-drift.log" "$logs/cuda-drift-hold.log" | tail -n 20
        fi
    fi
    kill "$cuda_pid" 2>/dev/null; wait "$cuda_pid" 2>/dev/null

    # Last, since it kills the server: a program whose server disappears gets error
    # codes from every call, and neither crashes nor hangs.
    # Once on the Unix socket it moved to, once on QUIC.
    flag=$logs/server-alive
    touch "$flag"
    env LD_PRELOAD="$shim" XPUPOOL_SERVER="127.0.0.1:$port" XPUPOOL_SERVER_CERT="$cert" XPUPOOL_TOKEN="$token" \
        timeout 120 "$build/resilience" lost "$flag" >"$logs/lost.log" 2>&1 &
    client=$!
    env LD_PRELOAD="$shim" XPUPOOL_TRANSPORT=quic XPUPOOL_SERVER="127.0.0.1:$port" XPUPOOL_SERVER_CERT="$cert" \
        XPUPOOL_TOKEN="$token" timeout 120 "$build/resilience" lost "$flag" >"$logs/lost-quic.log" 2>&1 &
    quic_client=$!
    for _ in $(seq 200); do grep -q READY "$logs/lost.log" && grep -q READY "$logs/lost-quic.log" && break; sleep 0.05; done
    kill "$server_pid"; wait "$server_pid" 2>/dev/null; server_pid=
    rm -f "$flag"
    for run in lost:$client lost-quic:$quic_client; do
        name=${run%%:*}
        if wait "${run##*:}" && grep -q "^PASS" "$logs/$name.log"; then
            passed=$((passed + 1)); echo "ok    server-$name"
        else
            failed=$((failed + 1)); failures+=("server-$name"); echo "FAIL  server-$name"; sed 's/^/      | /' "$logs/$name.log"
        fi
    done
fi

echo
[ $failed -eq 0 ] || echo "failed: ${failures[*]}"
echo "cuda: $passed passed, $failed failed"
[ $failed -eq 0 ]
