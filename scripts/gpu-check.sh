#!/usr/bin/env bash
# The checks that need a GPU, in one script for a GPU host (no Rust needed there).
# Carry in: the release binaries (target/release/xpupool, target/release/libcuda.so)
# and the compiled test programs (tests/cuda/build). For every test program it runs
# the program natively on NVIDIA's driver and through xpupool, and prints both
# outcomes side by side; differences are what to look at. Through xpupool means the
# mock backend until the cuda backend exists, so this also confirms on real hardware
# the behaviours the mock imitates (error codes, limits) that CI cannot check.
#   XPUPOOL_BIN   xpupool binary (default target/release/xpupool)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPUPOOL_BIN:-$root/target/release/xpupool}
build=$root/tests/cuda/build
out=${OUT:-$(mktemp -d)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
printf '%-20s %-8s %-8s\n' program native xpupool
differ=0
for p in "$build"/*; do
    [ -f "$p" ] && [ -x "$p" ] || continue
    name=$(basename "$p")
    timeout 120 "$p" >"$out/$name.native.log" 2>&1; native=$?
    timeout 300 "$bin" run -- "$p" >"$out/$name.xpupool.log" 2>&1; remote=$?
    printf '%-20s %-8s %-8s\n' "$name" "$native" "$remote"
    [ "$native" = "$remote" ] || differ=$((differ + 1))
done
echo "== notes the programs printed natively (error codes a real driver gives)"
grep -h "^note:" "$out"/*.native.log 2>/dev/null | sort -u
echo "== failures"
grep -h "^FAIL" "$out"/*.log 2>/dev/null | head -40
echo "programs whose outcome differs: $differ (logs in $out)"
