#!/usr/bin/env bash
# The HIP stand-in's tests (tests/hip): makes the per-name libraries
# (scripts/build-hip-libs.sh), checks that each exports exactly the real library's
# symbols in the real nodes, then builds tests/hip/loader.c against Debian's HIP headers
# and real libamdhip64.so.5 (libamdhip64-dev, which scripts/install-system-packages.sh
# installs) and runs it on the
# stand-in; and tests/hip/memory.c, streams.c and device.c through `xpupool run`. Then
# builds the hipcc programs tests/hip/*.hip (scripts/build-hip-tests.sh) and runs each
# through `xpupool run`, its kernels on the mock's gfx90a interpreter (each checks its
# results against the CPU, prints one "ok ..." line and exits non-zero on a wrong one;
# HIP_KERNEL_TESTS narrows the list). Needs the core and the CLI built:
# cargo build --release.
set -euo pipefail
# Every tests/hip program (build-hip-tests.sh --list), unless HIP_KERNEL_TESTS names some.
HIP_KERNEL_TESTS="${HIP_KERNEL_TESTS-$("$(dirname "$0")/build-hip-tests.sh" --list)}"
# A kernel the interpreter runs longer than this fails (tests/hip/timeout.hip
# checks that; a test that would hang fails instead).
export XPUPOOL_KERNEL_TIME_LIMIT="${XPUPOOL_KERNEL_TIME_LIMIT:-3}"
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-system-packages.sh"
libs=$("$root/scripts/build-hip-libs.sh")
# libamdhip64.so.5: exactly Debian's 5.2.3 symbols in their nodes; the others those and
# ROCm 6 and 7's further ones.
table="$root/vendor-headers/hip-symbols-5.2.3.tsv"
newer="$root/vendor-headers/hip-symbols-clr.tsv"
exports() { grep -hv '^#' "$@" | grep -v '^symbol' | awk -F'\t' '{print $1 "@@" $2}' | sort; }
want5=$(exports "$table")
want7=$(exports "$table" "$newer")
failed=0
for name in libamdhip64.so libamdhip64.so.5 libamdhip64.so.6 libamdhip64.so.7; do
    want=$want7
    [ "$name" = libamdhip64.so.5 ] && want=$want5
    have=$(nm -D --defined-only "$libs/$name" | awk '$2 != "A" {print $3}' | sort)
    soname=$(readelf -d "$libs/$name" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
    if [ "$have" = "$want" ] && [ "$soname" = "$name" ]; then
        echo "ok    $name: SONAME $soname, $(echo "$have" | wc -l) symbols in the real nodes"
    else
        echo "FAIL  $name: SONAME $soname; symbols differing from the tables:"
        diff <(echo "$want") <(echo "$have") | head -10
        failed=1
    fi
done
build="$root/tests/hip/build"
mkdir -p "$build"
gcc -D__HIP_PLATFORM_AMD__ -O1 -o "$build/loader" "$root/tests/hip/loader.c" \
    /usr/lib/x86_64-linux-gnu/libamdhip64.so.5 -Wl,--allow-shlib-undefined -ldl
if env -u XPUPOOL_SERVER LD_LIBRARY_PATH="$libs" "$build/loader"; then :; else failed=1; fi
# A ROCm 6 program: linked against the stand-in's libamdhip64.so.6, importing
# hipGetDevicePropertiesR0600@hip_6.0, run through `xpupool run` below.
gcc -D__HIP_PLATFORM_AMD__ -O1 -o "$build/r0600" "$root/tests/hip/r0600.c" \
    "$libs/libamdhip64.so.6" -Wl,--allow-shlib-undefined
if nm -D "$build/r0600" | grep -q 'hipGetDevicePropertiesR0600@hip_6.0'; then :; else
    echo "FAIL  r0600 does not import hipGetDevicePropertiesR0600@hip_6.0"; failed=1
fi
# Through `xpupool run` and its embedded mock server, as a user runs a HIP program.
bin="${XPUPOOL_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/xpupool}"
for test in memory streams device; do
    gcc -D__HIP_PLATFORM_AMD__ -O1 -o "$build/$test" "$root/tests/hip/$test.c" \
        /usr/lib/x86_64-linux-gnu/libamdhip64.so.5 -Wl,--allow-shlib-undefined
    if "$bin" run -- "$build/$test"; then :; else failed=1; fi
done
if "$bin" run -- "$build/r0600"; then :; else failed=1; fi
if [ -n "$HIP_KERNEL_TESTS" ]; then
    "$root/scripts/build-hip-tests.sh" || failed=1
    # Two mock devices, for streamdev's stream of another device.
    for test in $HIP_KERNEL_TESTS; do
        if "$bin" run --mock-devices 2 -- "$build/$test"; then :; else
            echo "FAIL  $test (tests/hip/$test.hip)"
            failed=1
        fi
    done
fi
exit $failed
