#!/usr/bin/env bash
# The checks that need a GPU, in one script for a GPU host that may have no Rust
# toolchain and no network: carry in the release binaries (target/release: xpupool,
# libcuda.so, libnvidia-ml.so) and the compiled test programs (tests/cuda/build).
#   1. every CUDA test program natively and through xpupool (cuda backend), side by side;
#   2. tests/python/train_small.py natively and through xpupool: both loss curves,
#      whether they are identical, and the median step times;
#   3. a call trace of bench/traces/torch_step.py through the cuda backend, with its
#      GEMMs and kernels running for real (left in $OUT as torch-step-gpu.jsonl.gz, to
#      commit beside the mock-recorded one), replayed against the mock;
#   4. tenancy on the cuda backend: a server with two tenants (tests/tenancy's spin
#      load beside two_devices), the devices each sees, and the metrics, with the
#      ledger's drift from the driver's figures and the power NVML reports
#      (xpupool_device_power_watts) (carry tests/tenancy/build too);
#   5. PyTorch under each allocator setting (default, backend:cudaMallocAsync,
#      expandable_segments:True): training steps and a torch.cuda.graph capture and
#      replay, natively and through xpupool, side by side.
# Designed to finish in a few minutes; prints everything to stdout.
#   XPUPOOL_BIN   xpupool binary (default target/release/xpupool)
#   PYTHON        python with PyTorch (default python3)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPUPOOL_BIN:-$root/target/release/xpupool}
python=${PYTHON:-python3}
build=$root/tests/cuda/build
out=${OUT:-$(mktemp -d)}
backend=${XPUPOOL_GPU_CHECK_BACKEND:-cuda}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'

echo "== CUDA test programs: native vs xpupool --backend $backend (exit codes)"
printf '%-20s %-8s %-8s\n' program native xpupool
differ=0
for p in "$build"/*; do
    [ -f "$p" ] && [ -x "$p" ] || continue
    name=$(basename "$p")
    timeout 120 "$p" >"$out/$name.native.log" 2>&1; native=$?
    timeout 300 "$bin" run --backend "$backend" -- "$p" >"$out/$name.xpupool.log" 2>&1; remote=$?
    printf '%-20s %-8s %-8s\n' "$name" "$native" "$remote"
    [ "$native" = "$remote" ] || differ=$((differ + 1))
done
echo "notes the programs printed natively (error codes a real driver gives):"
grep -h "^note:" "$out"/*.native.log 2>/dev/null | sort -u
grep -h "^FAIL" "$out"/*.log 2>/dev/null | head -20
echo "programs whose outcome differs: $differ"
# The JIT linker with a relocatable cubin input (driver_api): natively, and through
# the cuda backend, whose driver links it on the server.
for side in native xpupool; do
    echo "driver_api cubin link, $side: $(grep -h -e "relocatable cubin" -e "cubin link input" "$out/driver_api.$side.log" 2>/dev/null || echo "no line")"
done

echo "== train_small.py: native vs xpupool"
timeout 240 "$python" "$root/tests/python/train_small.py" >"$out/train.native.json" 2>"$out/train.native.err" || tail -5 "$out/train.native.err"
timeout 300 "$bin" run --backend "$backend" -- "$python" "$root/tests/python/train_small.py" >"$out/train.xpupool.json" 2>"$out/train.xpupool.err" || tail -5 "$out/train.xpupool.err"
"$python" - "$out/train.native.json" "$out/train.xpupool.json" <<'PY'
import json, sys
def load(path):
    try:
        return json.loads(open(path).read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": str(e)}
native, remote = load(sys.argv[1]), load(sys.argv[2])
for key in ("mlp", "lm"):
    a, b = native.get(f"{key}_losses"), remote.get(f"{key}_losses")
    print(f"{key}: native {a}")
    print(f"{key}: xpupool {b}")
    print(f"{key}: identical={a == b}  median step native {native.get(f'{key}_step_ms')} ms, xpupool {remote.get(f'{key}_step_ms')} ms")
print("compiled:", native.get("compiled"), remote.get("compiled"), native.get("compiled") == remote.get("compiled"))
for side, r in (("native", native), ("xpupool", remote)):
    if "error" in r:
        print(f"{side}: no result ({r['error']})")
PY
echo "== PyTorch allocator settings and torch.cuda.graph: native vs xpupool"
for conf in "" "backend:cudaMallocAsync" "expandable_segments:True"; do
    PYTORCH_CUDA_ALLOC_CONF=$conf timeout 180 "$python" "$root/tests/python/gpu_allocators.py" 2>"$out/alloc.native.err" | tail -1 | sed 's/^/native:  /' || tail -3 "$out/alloc.native.err"
    PYTORCH_CUDA_ALLOC_CONF=$conf timeout 300 "$bin" run --backend "$backend" -- "$python" "$root/tests/python/gpu_allocators.py" 2>"$out/alloc.xpupool.err" | tail -1 | sed 's/^/xpupool: /' || tail -3 "$out/alloc.xpupool.err"
    grep -iE "error|Traceback" "$out/alloc.xpupool.err" | head -3
done
echo "== a PyTorch step traced through the cuda backend, then replayed on the mock"
trace="$out/torch-step-gpu.jsonl"
XPUPOOL_TRACE="$trace" timeout 300 "$bin" run --backend "$backend" -- "$python" "$root/bench/traces/torch_step.py" \
    >"$out/trace.out" 2>"$out/trace.err" || tail -5 "$out/trace.err"
if [ -s "$trace" ]; then
    timeout 120 "$bin" bench replay "$trace" 2>/dev/null || echo "replay failed"
    gzip -9 -n -f "$trace" && echo "trace: $trace.gz"
fi
echo "== tenancy on the $backend backend: two tenants, devices, metrics and drift"
tb=$root/tests/tenancy/build
if [ -x "$tb/spin" ]; then
    printf 'a=%s\nb=%s\n' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$out/tokens"
    sed -n 's/^a=//p' "$out/tokens" >"$out/a.token"; sed -n 's/^b=//p' "$out/tokens" >"$out/b.token"
    chmod 600 "$out"/*.token
    cat >"$out/server.toml" <<TOML
listen = "127.0.0.1:7870"
backend = "$backend"
metrics_listen = "127.0.0.1:9470"
[[tenant]]
name = "a"
token_file = "$out/a.token"
compute_share = 0.7
priority = "high"
[[tenant]]
name = "b"
token_file = "$out/b.token"
memory_limit = "8GiB"
compute_share = 0.3
sm_limit = 0.5
TOML
    "$bin" server --config "$out/server.toml" --state-dir "$out/tenancy-state" >"$out/tenancy-server.out" 2>&1 &
    spid=$!
    for _ in $(seq 100); do grep -q '^metrics:' "$out/tenancy-server.out" 2>/dev/null && break; sleep 0.1; done
    fp=$(sed -n 's/^fingerprint: //p' "$out/tenancy-server.out")
    client() { local t=$1; shift; timeout 120 "$bin" run --server 127.0.0.1:7870 --fingerprint "$fp" --token-file "$out/$t.token" -- "$@"; }
    client b "$tb/spin" load 5 2000 >"$out/tenancy-b.log" 2>&1 &
    sleep 1
    client a "$tb/two_devices" count 2>&1 | sed 's/^/a: /'
    client b "$tb/two_devices" count 2>&1 | sed 's/^/b: /'
    client a "$tb/spin" latency 20 2000 2>&1 | sed 's/^/a: /'
    curl -s http://127.0.0.1:9470/metrics | grep -E '^xpupool_(tenant_(busy|memory_used|launches)|device|accounting)' | head -40
    wait %1 2>/dev/null; tail -2 "$out/tenancy-b.log" | sed 's/^/b: /'
    curl -s http://127.0.0.1:9470/metrics | grep -E '^xpupool_accounting_drift' 
    grep -iE 'warn|error' "$out/tenancy-server.out" | head -5
    kill $spid 2>/dev/null; wait $spid 2>/dev/null
else
    echo "tests/tenancy/build not carried"
fi
echo "(logs in $out)"
