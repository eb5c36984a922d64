#!/usr/bin/env bash
# The checks that need a GPU, in one script for a GPU host that may have no Rust
# toolchain and no network. Prepare it here with scripts/gpu-bundle.sh (stripped release
# binaries in .gpu/, the test programs in tests/cuda/build and tests/tenancy/build), carry
# those three folders, and run this script there. Sections, most telling first:
#   1. every CUDA test program natively and through xpupool (cuda backend), side by side;
#   2. tenancy on the cuda backend: a server with two tenants (0.7 high / 0.3 with an
#      SM ceiling of 0.5 through a green context), their busy-time shares under
#      contention, each one's launch rate alone (b's green context halves it), the
#      devices each sees, a high-priority tenant's latency beside the
#      other's load, and the metrics, with the ledger's drift from the driver's figures;
#   3. tests/python/train_small.py natively and through xpupool: both loss curves,
#      whether they are identical, and the median step times;
#   4. PyTorch under each allocator setting (default, backend:cudaMallocAsync,
#      expandable_segments:True): training steps and a torch.cuda.graph capture and
#      replay, natively and through xpupool, side by side;
#   5. a call trace of bench/traces/torch_step.py through the cuda backend, with its
#      GEMMs and kernels running for real (left in $OUT as torch-step-gpu.jsonl.gz),
#      replayed against the mock;
#   6. (on request) a matrix product in three dtypes natively and through xpupool, with
#      cuBLASLt's log and the call trace, to place a cuBLAS failure.
# Each section has a time budget (XPUPOOL_GPU_CHECK_SCALE multiplies them; the whole
# script stays under about 7 minutes) and the logs are packed into $OUT/logs.tar.gz
# after each, so a run cut short still brings back what it did.
#   XPUPOOL_BIN   xpupool binary (default .gpu/xpupool, else target/release/xpupool)
#   PYTHON        python with PyTorch (default python3)
#   XPUPOOL_GPU_CHECK_SECTIONS  the sections to run, in order (default "1 2 3 4 5")
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPUPOOL_BIN:-$root/.gpu/xpupool}
[ -x "$bin" ] || bin=$root/target/release/xpupool
python=${PYTHON:-python3}
build=$root/tests/cuda/build
out=${OUT:-$(mktemp -d)}
backend=${XPUPOOL_GPU_CHECK_BACKEND:-cuda}
scale=${XPUPOOL_GPU_CHECK_SCALE:-1}
export PYTHONUNBUFFERED=1
mkdir -p "$out/logs"
# section NAME SECONDS: starts a section with a time budget; budget S prints the seconds
# left of it, at most S (at least 1: timeout 0 would mean none); pack keeps the logs so far in $out/logs.tar.gz.
section() { echo "== $1 (budget $(($2 * scale)) s)"; section_end=$((SECONDS + $2 * scale)); }
budget() { local left=$((section_end - SECONDS)); [ "$left" -gt "$1" ] && left=$1; [ "$left" -lt 1 ] && left=1; echo "$left"; }
pack() { tar -czf "$out/logs.tar.gz" -C "$out" logs 2>/dev/null; }
# The test programs link libcudart.so.13 with an rpath to this build machine's toolkit:
# they find the carried one (or the host's) through LD_LIBRARY_PATH, given to them alone.
cudart=$root/.gpu/lib
[ -e "$cudart/libcudart.so.13" ] || cudart=/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'

L=$out/logs
check1() {
    section "CUDA test programs: native vs xpupool --backend $backend (exit codes)" 170
    # The carried runtime on this host's driver, natively; else the host's own.
    if ! LD_LIBRARY_PATH=$cudart timeout 30 "$build/vector_add" >/dev/null 2>&1 && [ -e /usr/local/cuda/lib64/libcudart.so.13 ]; then
        cudart=/usr/local/cuda/lib64
    fi
    echo "libcudart for the test programs: $cudart"
    # driver_api links a relocatable cubin (link_lib.cubin, made by this build machine's
    # ptxas 13.2): a host driver older than that ptxas refuses it, so the host's own
    # ptxas, when there is one, makes it again.
    ptxas=$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)
    if [ -x "$ptxas" ] && "$build/driver_api" --print-link-lib >"$L/link_lib.ptx" 2>/dev/null \
        && "$ptxas" -arch=sm_90 -c -o "$build/link_lib.cubin" "$L/link_lib.ptx"; then
        echo "link_lib.cubin made again with $("$ptxas" --version | tail -1)"
    fi
    printf '%-20s %-8s %-8s %s\n' program native xpupool seconds
    differ=0
    for p in "$build"/*; do
        [ -f "$p" ] && [ -x "$p" ] || continue
        name=$(basename "$p")
        [ $((section_end - SECONDS)) -lt 5 ] && { echo "$name: skipped (section budget spent)"; continue; }
        t0=$SECONDS
        LD_LIBRARY_PATH=$cudart timeout "$(budget 30)" "$p" >"$L/$name.native.log" 2>&1; native=$?
        t1=$SECONDS
        LD_LIBRARY_PATH=$cudart timeout "$(budget 60)" "$bin" run --backend "$backend" -- "$p" >"$L/$name.xpupool.log" 2>&1; remote=$?
        printf '%-20s %-8s %-8s %s/%s\n' "$name" "$native" "$remote" "$((t1 - t0))" "$((SECONDS - t1))"
        [ "$native" = "$remote" ] || differ=$((differ + 1))
    done
    echo "notes the programs printed natively (error codes a real driver gives):"
    grep -h "^note:" "$L"/*.native.log 2>/dev/null | sort -u | head -30
    echo "failures:"
    grep -H -m3 -e "^FAIL" -e "panicked" -e "ERROR" "$L"/*.log 2>/dev/null | head -40
    echo "programs whose outcome differs: $differ"
    # The JIT linker with a relocatable cubin input (driver_api): natively, and through
    # the cuda backend, whose driver links it on the server.
    for side in native xpupool; do
        echo "driver_api cubin link, $side: $(grep -h -e "relocatable cubin" -e "cubin link input" "$L/driver_api.$side.log" 2>/dev/null || echo "no line")"
    done
    echo "nvidia-smi through xpupool (the NVML stand-in):"
    timeout "$(budget 20)" "$bin" run --backend "$backend" -- nvidia-smi 2>&1 | head -20
}

check2() {
    section "tenancy on the $backend backend: two tenants, shares, SM ceiling, devices, metrics and drift" 85
    tb=$root/tests/tenancy/build
    if [ -x "$tb/spin" ]; then
        for t in a b; do head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$out/$t.token"; done
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
        XPUPOOL_LOG=info "$bin" server --config "$out/server.toml" --state-dir "$out/tenancy-state" >"$L/tenancy-server.out" 2>&1 &
        spid=$!
        for _ in $(seq 150); do grep -q '^metrics:' "$L/tenancy-server.out" 2>/dev/null && break; sleep 0.1; done
        fp=$(sed -n 's/^fingerprint: //p' "$L/tenancy-server.out")
        client() { local t=$1; shift; LD_LIBRARY_PATH=$cudart timeout "$(budget 40)" "$bin" run --server 127.0.0.1:7870 --fingerprint "$fp" --token-file "$out/$t.token" -- "$@"; }
        iters=400000; [ "$backend" = mock ] && iters=2000  # about a millisecond a kernel on an H100
        busy() { curl -s http://127.0.0.1:9470/metrics | awk -v t="$1" '$1 ~ "^xpupool_tenant_busy_seconds_total" && $1 ~ "tenant=\"" t "\"" {s += $2} END {printf "%.4f", s}'; }
        client a "$tb/two_devices" count 2>&1 | sed 's/^/a: /'
        client b "$tb/two_devices" count 2>&1 | sed 's/^/b: /'
        client a "$tb/spin" latency 50 "$((iters / 20))" 2>&1 | sed 's/^/a alone: /'
        # Each alone for 3 s: b's green context of half the SMs runs spin's
        # 128-block kernels at about half a's rate.
        client a "$tb/spin" load 3 "$iters" 2>&1 | tail -1 | sed 's/^/a alone, all SMs: /'
        client b "$tb/spin" load 3 "$iters" 2>&1 | tail -1 | sed 's/^/b alone, sm_limit 0.5 (expect about half of a): /'
        # Both saturating for 8 s, kernels of about a millisecond: busy-time shares.
        a0=$(busy a); b0=$(busy b)
        client a "$tb/spin" load 8 "$iters" >"$L/tenancy-a-load.log" 2>&1 & pa=$!
        client b "$tb/spin" load 8 "$iters" >"$L/tenancy-b-load.log" 2>&1 & pb=$!
        wait $pa $pb
        a1=$(busy a); b1=$(busy b)
        tail -1 "$L/tenancy-a-load.log" | sed 's/^/a load: /'; tail -1 "$L/tenancy-b-load.log" | sed 's/^/b load: /'
        awk -v a0="$a0" -v a1="$a1" -v b0="$b0" -v b1="$b1" \
            'BEGIN { a = a1 - a0; b = b1 - b0; t = a + b; if (t > 0) printf "shares under contention (asked 70/30): a %.1f%%, b %.1f%% of %.2f busy s\n", 100*a/t, 100*b/t, t; else print "no busy time measured" }'
        # The high-priority tenant's latency beside the other's load.
        client b "$tb/spin" load 6 "$iters" >"$L/tenancy-b-load2.log" 2>&1 & pb=$!
        sleep 1
        client a "$tb/spin" latency 50 "$((iters / 20))" 2>&1 | sed 's/^/a beside b: /'
        curl -s http://127.0.0.1:9470/metrics >"$L/metrics.txt"
        wait $pb; tail -1 "$L/tenancy-b-load2.log" | sed 's/^/b load: /'
        grep -E '^xpupool_(tenant_(busy|memory_used|kernel_launches|throttled)|device|accounting)' "$L/metrics.txt" | head -30
        sed 's/\x1b\[[0-9;]*m//g' "$L/tenancy-server.out" | grep -iE 'green|sm_limit|mps| WARN | ERROR ' | head -8
        kill $spid 2>/dev/null; wait $spid 2>/dev/null
    else
        echo "tests/tenancy/build not carried"
    fi
}

check3() {
    section "train_small.py: native vs xpupool" 150
    timeout "$(budget 70)" "$python" "$root/tests/python/train_small.py" >"$L/train.native.json" 2>"$L/train.native.err" || tail -5 "$L/train.native.err"
    timeout "$(budget 150)" "$bin" run --backend "$backend" -- "$python" "$root/tests/python/train_small.py" >"$L/train.xpupool.json" 2>"$L/train.xpupool.err" || tail -5 "$L/train.xpupool.err"
    "$python" - "$L/train.native.json" "$L/train.xpupool.json" <<'PY'
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
}

check4() {
    section "PyTorch allocator settings and torch.cuda.graph: native vs xpupool" 100
    for conf in "" "backend:cudaMallocAsync" "expandable_segments:True"; do
        tag=${conf%%:*}; tag=${tag:-default}
        PYTORCH_CUDA_ALLOC_CONF=$conf timeout "$(budget 25)" "$python" "$root/tests/python/gpu_allocators.py" 2>"$L/alloc.$tag.native.err" | tail -1 | sed 's/^/native:  /'
        PYTORCH_CUDA_ALLOC_CONF=$conf timeout "$(budget 40)" "$bin" run --backend "$backend" -- "$python" "$root/tests/python/gpu_allocators.py" 2>"$L/alloc.$tag.xpupool.err" | tail -1 | sed 's/^/xpupool: /'
        grep -iE "error|Traceback" "$L/alloc.$tag.xpupool.err" | head -3
    done
}

check5() {
    section "a PyTorch step traced through the cuda backend, then replayed on the mock" 50
    trace="$out/torch-step-gpu.jsonl"
    XPUPOOL_TRACE="$trace" timeout "$(budget 35)" "$bin" run --backend "$backend" -- "$python" "$root/bench/traces/torch_step.py" \
        >"$L/trace.out" 2>"$L/trace.err" || tail -5 "$L/trace.err"
    if [ -s "$trace" ]; then
        timeout "$(budget 15)" "$bin" bench replay "$trace" 2>/dev/null || echo "replay failed"
        gzip -9 -n -f "$trace" && echo "trace: $trace.gz"
    fi
}

check6() {
    section "cuBLAS products natively and through xpupool, with cuBLASLt's log and the call trace" 60
    timeout "$(budget 25)" "$python" "$root/tests/python/gpu_blas_probe.py" 2>&1 | sed 's/^/native:  /'
    CUBLASLT_LOG_LEVEL=5 CUBLASLT_LOG_FILE="$L/cublaslt.log" XPUPOOL_TRACE="$L/blas-trace.jsonl" \
        timeout "$(budget 35)" "$bin" run --backend "$backend" -- "$python" "$root/tests/python/gpu_blas_probe.py" 2>&1 | sed 's/^/xpupool: /'
    "$python" - "$L/blas-trace.jsonl" <<'PY'
import collections, json, sys
calls = [json.loads(line) for line in open(sys.argv[1]) if '"call"' in line]
failed = collections.Counter((c["call"], c["result"]) for c in calls if c.get("result"))
print(f"trace: {len(calls)} calls; refused: {dict(failed.most_common(25))}")
print("last calls:", " ".join(f'{c["call"]}={c["result"]}' for c in calls[-40:]))
PY
    grep -iE "error|fail|not supported|heuristic" "$L/cublaslt.log" 2>/dev/null | head -15
}

for n in ${XPUPOOL_GPU_CHECK_SECTIONS:-1 2 3 4 5}; do
    "check$n"
    pack
done
echo "(logs in $out/logs.tar.gz)"
