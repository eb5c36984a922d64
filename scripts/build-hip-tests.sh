#!/usr/bin/env bash
# Builds the HIP kernel test programs with hipcc for gfx90a (the device the HIP
# stand-in reports):
#   tests/hip/<name>.hip      -> tests/hip/build/<name>  (programs; hipcc registers their
#                                kernels with __hipRegisterFatBinary at start-up)
#   tests/hip/module_kernels.hip -> tests/hip/build/module_kernels.co  (a code object alone,
#                                hipcc --genco, which module.hip and errors.hip load)
# Installs hipcc first when it is missing (scripts/install-system-packages.sh). Idempotent:
# an output newer than its source and tests/hip/check.h is skipped. Prints what it builds;
# exits non-zero if any compile fails (after trying all of them).
#
# Options: -f / --force  rebuild everything.
#          --list        print the programs' names (what the test scripts run), build nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
force=0
src="$root/tests/hip"
# The programs: every tests/hip/*.hip but module_kernels.hip, the code object
# module.hip loads.
programs() {
    for source in "$src"/*.hip; do
        name=$(basename "$source" .hip)
        [ "$name" = module_kernels ] || echo "$name"
    done
}
while [ $# -gt 0 ]; do
    case "$1" in
        -f|--force) force=1 ;;
        --list) programs | tr '\n' ' '; echo; exit 0 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
command -v hipcc >/dev/null || "$root/scripts/install-system-packages.sh"
out="$src/build"
mkdir -p "$out"
ARCH=gfx90a
failed=0

# Whether $1 must be (re)built from $2.
stale() {
    [ "$force" = 1 ] || [ ! -e "$1" ] || [ "$2" -nt "$1" ] || [ "$src/check.h" -nt "$1" ]
}

build() { # output, source, hipcc flags...
    local output=$1 source=$2
    shift 2
    if stale "$output" "$source"; then
        echo "hipcc $(basename "$source") -> ${output#"$root"/}" >&2
        # hipcc asks rocm_agent_enumerator for the machine's GPUs, which fails noisily
        # without one; the target is given, so that is harmless.
        if hipcc --offload-arch="$ARCH" -O2 "$@" -o "$output" "$source" 2> "$output.log"; then
            rm -f "$output.log"
        else
            cat "$output.log" >&2
            rm -f "$output"
            failed=1
        fi
    fi
}

build "$out/module_kernels.co" "$src/module_kernels.hip" --genco
for name in $(programs); do
    build "$out/$name" "$src/$name.hip"
done
exit $failed
