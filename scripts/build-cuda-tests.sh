#!/usr/bin/env bash
# Builds the end-to-end CUDA test programs:
#   tests/cuda/*.cu      -> tests/cuda/build/<name>  (nvcc, SASS for sm_90 + PTX for compute_90)
#   tests/driver/*.c     -> tests/cuda/build/<name>  (gcc, dlopen()s libcuda.so.1 at run time)
#   tests/tenancy/*.cu   -> tests/tenancy/build/<name>  (the same nvcc flags; programs the
#                           tenancy tests run with arguments, on servers of their own)
# Installs the CUDA toolchain first (scripts/install-cuda-toolchain.sh). Idempotent: a program
# whose output is newer than its source (and the shared header) is skipped. Prints what it
# builds; exits non-zero if any compile fails (after trying all of them).
#
# Options: -f / --force  rebuild everything.
#          -j N          parallel compiles (default: number of CPUs, at most 4).
#
# The programs link libcudart.so.13 dynamically with an rpath to the toolkit's lib folder, so
# they run without LD_LIBRARY_PATH; libcuda.so.1 is found the usual way (preload / ld path).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
force=0
jobs=$(nproc 2>/dev/null || echo 2)
[ "$jobs" -gt 4 ] && jobs=4
while [ $# -gt 0 ]; do
    case "$1" in
        -f|--force) force=1 ;;
        -j) shift; jobs="$1" ;;
        -j*) jobs="${1#-j}" ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

T=$("$root/scripts/install-cuda-toolchain.sh")
cuda_dir="$root/tests/cuda"
driver_dir="$root/tests/driver"
out="$cuda_dir/build"
tenancy_out="$root/tests/tenancy/build"
mkdir -p "$out" "$tenancy_out"

NVCC_FLAGS=(-cudart shared -L"$T/lib" -Xlinker -rpath -Xlinker "$T/lib"
            -gencode "arch=compute_90,code=[sm_90,compute_90]" -O2 -std=c++17
            -Xcompiler -Wall,-Wextra -I"$cuda_dir")
GCC_FLAGS=(-O2 -std=c11 -Wall -Wextra -I"$T/include")

# Newest mtime among the shared headers each kind of program includes.
newest() { local m=0 f t; for f in "$@"; do [ -e "$f" ] || continue; t=$(stat -c %Y "$f"); [ "$t" -gt "$m" ] && m=$t; done; echo "$m"; }
cu_deps=$(newest "$cuda_dir"/*.cuh)
c_deps=$(newest "$driver_dir"/*.h)

up_to_date() {  # up_to_date <source> <output> <extra-deps-mtime>
    [ "$force" = 0 ] && [ -x "$2" ] && [ "$2" -nt "$1" ] && [ "$(stat -c %Y "$2")" -ge "$3" ]
}

logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

# check_fatbin <binary>: the .nv_fatbin section must hold a PTX entry for compute_90 that
# declares at least one .entry, and an sm_90 ELF (SASS). nvcc 13 compresses fatbin entries with
# zstd by default (entry flag 0x8000); they are decompressed with the zstd CLI when present.
check_fatbin() {
    local bin=$1 sec
    sec=$(mktemp)
    objcopy -O binary --only-section=.nv_fatbin "$bin" "$sec" || { rm -f "$sec"; return 1; }
    python3 - "$sec" <<'PY'
import shutil, struct, subprocess, sys
data = open(sys.argv[1], "rb").read()
ptx = elf = entries = 0
notes = []
off = 0
while off + 16 <= len(data):
    magic, _ver, hsz, fsz = struct.unpack_from("<IHHQ", data, off)
    if magic != 0xBA55ED50:
        off += 8  # containers are 8-byte aligned; skip padding
        continue
    p, end = off + hsz, off + hsz + fsz
    while p + 16 <= end:
        kind, _ever, ehsz, payload = struct.unpack_from("<HHIQ", data, p)
        arch, = struct.unpack_from("<I", data, p + 28)
        flags, = struct.unpack_from("<Q", data, p + 40)
        body = data[p + ehsz:p + ehsz + payload]
        if kind == 2 and arch == 90:
            elf += 1
        if kind == 1 and arch == 90:
            ptx += 1
            text = body
            if body[:4] == b"\x28\xb5\x2f\xfd":
                notes.append("zstd")
                if shutil.which("zstd"):
                    text = subprocess.run(["zstd", "-dcq"], input=body, capture_output=True).stdout
                else:
                    text = None
            if text is not None:
                entries += text.count(b".entry")
            else:
                entries = -1  # cannot look inside; trust the entry's presence
        p += ehsz + payload
    off = end
if ptx == 0 or elf == 0 or entries == 0:
    print(f"fatbin: ptx(compute_90)={ptx} elf(sm_90)={elf} .entry={entries}", file=sys.stderr)
    sys.exit(1)
PY
    local rc=$?
    rm -f "$sec"
    return $rc
}

build_one() {  # build_one <kind> <source> <output>
    local kind=$1 src=$2 dst=$3 tmp="$3.tmp.$$"
    rm -f "$tmp"
    if [ "$kind" = cu ]; then
        "$T/bin/nvcc" "${NVCC_FLAGS[@]}" -o "$tmp" "$src" || { rm -f "$tmp"; return 1; }
        # Every CUDA program must embed PTX (the mock backend interprets it) and sm_90 SASS.
        check_fatbin "$tmp" || { echo "$src: fatbin check failed" >&2; rm -f "$tmp"; return 1; }
    else
        gcc "${GCC_FLAGS[@]}" -o "$tmp" "$src" -ldl -lm || { rm -f "$tmp"; return 1; }
        # The driver test carries hand-written PTX (printed by --print-ptx): ptxas must accept it.
        if "$tmp" --print-ptx >"$tmp.ptx" 2>/dev/null; then
            "$T/bin/ptxas" -arch=sm_90 -o /dev/null "$tmp.ptx" || { rm -f "$tmp" "$tmp.ptx"; return 1; }
        fi
        rm -f "$tmp.ptx"
        # driver_api links PTX with a relocatable cubin of its library where a GPU
        # host's linker can: made here, beside it (not executable, so not a test).
        if [ "$(basename "$dst")" = driver_api ]; then
            "$tmp" --print-link-lib >"$tmp.lib.ptx" \
                && "$T/bin/ptxas" -arch=sm_90 -c -o "$(dirname "$dst")/link_lib.cubin" "$tmp.lib.ptx" \
                || { rm -f "$tmp" "$tmp.lib.ptx"; return 1; }
            chmod 644 "$(dirname "$dst")/link_lib.cubin"
            rm -f "$tmp.lib.ptx"
        fi
    fi
    mv -f "$tmp" "$dst"
}

names=()
shopt -s nullglob
for src in "$cuda_dir"/*.cu "$driver_dir"/*.c "$root"/tests/tenancy/*.cu; do
    name=$(basename "${src%.*}")
    dst="$out/$name"
    case "$src" in "$root"/tests/tenancy/*) dst="$tenancy_out/$name" ;; esac
    case "$src" in *.cu) kind=cu; deps=$cu_deps ;; *) kind=c; deps=$c_deps ;; esac
    if up_to_date "$src" "$dst" "$deps"; then
        echo "up to date: $name"
        continue
    fi
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 0.2; done
    echo "building:   $name  ($src)"
    ( set +e; build_one "$kind" "$src" "$dst"; echo $? >"$logdir/$name.rc" ) >"$logdir/$name.log" 2>&1 &
    names+=("$name")
done
wait

failed=()
for name in "${names[@]}"; do
    rc=$(cat "$logdir/$name.rc" 2>/dev/null || echo 1)
    if [ -s "$logdir/$name.log" ]; then
        echo "---- $name (exit $rc):"
        cat "$logdir/$name.log"
    fi
    [ "$rc" = 0 ] || failed+=("$name")
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED to build: ${failed[*]}" >&2
    exit 1
fi
echo "all CUDA test programs built in $out"
