#!/usr/bin/env bash
# The GPU check: every GPU test on a machine with a GPU, in one call.
#
# The GPU machine has no crate registry, so the test binaries are built here and carried:
#   bash scripts/gpu-check.sh --build      # here: builds the tests, copies them to device-bin/
#   bash scripts/gpu-check.sh              # there (device-bin/ carried): runs them
#
# It finds the driver's libcuda and cuBLAS (the CUDA install, or PyTorch's nvidia/*/lib
# folders) and puts them on LD_LIBRARY_PATH. Kernel benchmarks against PyTorch are to come
# with the CUDA backend's benches (issue 5); today it runs the kernel tests.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=device-bin

if [ "${1:-}" = "--build" ]; then
    bash scripts/install-cuda-toolchain.sh >/dev/null
    rm -rf "$BIN" && mkdir -p "$BIN"
    cargo test --release --no-run --quiet || { echo "gpu-check: the build failed" >&2; exit 1; }
    cargo test --release --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
        case "$name" in
            gpu_kernels) strip -o "$BIN/gpu_kernels" "$exe" ;;
            gpu_heads) strip -o "$BIN/gpu_heads" "$exe" ;;
            tpo_engine) strip -o "$BIN/lib_tests" "$exe" ;;
        esac
    done
    for b in gpu_kernels gpu_heads lib_tests; do
        [ -x "$BIN/$b" ] || { echo "gpu-check: $BIN/$b was not built" >&2; exit 1; }
    done
    ls -l "$BIN"
    exit 0
fi

[ -d "$BIN" ] || { echo "gpu-check: no $BIN/ (run with --build first, and carry it)" >&2; exit 1; }
libs=()
for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && libs+=("$d")
done
py=$(python3 -c 'import os, nvidia; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)))' 2>/dev/null || true)
for d in $py; do [ -d "$d" ] && libs+=("$d"); done
export LD_LIBRARY_PATH="$(IFS=:; echo "${libs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"

# Here a skipped GPU test is a failure.
export TPO_REQUIRE_GPU=1
status=0
results=()
run() {
    local name=$1; shift
    local started=$(date +%s)
    if "$@" > "/tmp/gpu-check-$name.log" 2>&1; then r=pass; else r=FAIL; status=1; fi
    grep -E "skipped|panicked|test result" "/tmp/gpu-check-$name.log" | head -20
    results+=("| $name | $r | $(( $(date +%s) - started )) s |")
}
run gpu_kernels "$BIN/gpu_kernels" --nocapture --test-threads 1
run gpu_heads "$BIN/gpu_heads" --nocapture --test-threads 1
run kernels_ptx "$BIN/lib_tests" backend::kernels --nocapture
echo
echo "| check | result | time |"
echo "|---|---|---|"
printf '%s\n' "${results[@]}"
exit $status
