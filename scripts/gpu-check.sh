#!/usr/bin/env bash
# The checks that need a GPU, in one script for a GPU host that may have no Rust
# toolchain and no network: carry in the release binaries (target/release: xpupool,
# libcuda.so, libnvidia-ml.so) and the compiled test programs (tests/cuda/build).
#   1. every CUDA test program natively and through xpupool (cuda backend), side by side;
#   2. tests/python/train_small.py natively and through xpupool: both loss curves,
#      whether they are identical, and the median step times;
#   3. a call trace of bench/traces/torch_step.py through the cuda backend, with its
#      GEMMs and kernels running for real (left in $OUT as torch-step-gpu.jsonl.gz, to
#      commit beside the mock-recorded one), replayed against the mock.
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
echo "== a PyTorch step traced through the cuda backend, then replayed on the mock"
trace="$out/torch-step-gpu.jsonl"
XPUPOOL_TRACE="$trace" timeout 300 "$bin" run --backend "$backend" -- "$python" "$root/bench/traces/torch_step.py" \
    >"$out/trace.out" 2>"$out/trace.err" || tail -5 "$out/trace.err"
if [ -s "$trace" ]; then
    timeout 120 "$bin" bench replay "$trace" 2>/dev/null || echo "replay failed"
    gzip -9 -n -f "$trace" && echo "trace: $trace.gz"
fi
echo "(logs in $out)"
