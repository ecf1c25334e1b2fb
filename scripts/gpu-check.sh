#!/usr/bin/env bash
# The GPU check: every GPU test, then the kernel benchmarks beside PyTorch on the same card,
# in one call of under 8 minutes, ending in two tables (tests; benchmarks).
#
# The GPU machine has no crate registry, so the binaries are built here and carried:
#   bash scripts/gpu-check.sh --build      # here: builds the tests and benches/gpu.rs, strips them into device-bin/
#   bash scripts/gpu-check.sh              # there (device-bin/ carried): tests, then benchmarks
#   bash scripts/gpu-check.sh --tests-only | --bench-only
#
# It finds the driver's libcuda and cuBLAS (the CUDA install, or PyTorch's nvidia/*/lib
# folders) and puts them on LD_LIBRARY_PATH for the Rust binaries (PyTorch keeps its own).
# The benchmarks: device-bin/gpu_bench (benches/gpu.rs) and scripts/gpu_bench_torch.py, each
# one JSON line per measurement, joined by scripts/gpu_bench_table.py. The raw lines, the
# table and the test logs go to bench-out/gpu-check/ and, where $OUT is set, to $OUT.
# The exit status is the tests'; a failed or timed-out benchmark shows in the table.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=device-bin

if [ "${1:-}" = "--build" ]; then
    bash scripts/install-cuda-toolchain.sh >/dev/null
    rm -rf "$BIN" && mkdir -p "$BIN"
    cargo test --release --no-run --quiet || { echo "gpu-check: the test build failed" >&2; exit 1; }
    cargo bench --no-run --bench gpu --quiet || { echo "gpu-check: the bench build failed" >&2; exit 1; }
    { cargo test --release --no-run --message-format=json 2>/dev/null
      cargo bench --no-run --bench gpu --message-format=json 2>/dev/null; } |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["target"]["kind"][0], m["executable"])
' | while read -r name kind exe; do
        case "$kind:$name" in
            test:gpu_kernels | test:gpu_heads | test:gpu_attention | test:gpu_model)
                strip -o "$BIN/$name" "$exe" ;;
            bench:gpu) strip -o "$BIN/gpu_bench" "$exe" ;;
        esac
    done
    # The binary itself, for the built-in demonstration on the GPU (TPO end to end).
    cargo build --release --quiet || { echo "gpu-check: the binary's build failed" >&2; exit 1; }
    strip -o "$BIN/tpo-engine" target/release/tpo-engine
    for b in gpu_kernels gpu_heads gpu_attention gpu_model gpu_bench tpo-engine; do
        [ -x "$BIN/$b" ] || { echo "gpu-check: $BIN/$b was not built" >&2; exit 1; }
    done
    # The tests read fixtures and kernel sources at the path they were built in.
    pwd > "$BIN/build-root"
    ls -l "$BIN"
    du -sh "$BIN"
    exit 0
fi

tests=1 bench=1
case "${1:-}" in
    "") ;;
    --tests-only) bench=0 ;;
    --bench-only) tests=0 ;;
    *) echo "usage: $0 [--build | --tests-only | --bench-only]" >&2; exit 2 ;;
esac

[ -d "$BIN" ] || { echo "gpu-check: no $BIN/ (run with --build first, and carry it)" >&2; exit 1; }
# The whole call, tests and benchmarks, stays inside this many seconds (the issue: under 8 min).
DEADLINE=450
SECONDS=0
left() { echo $((DEADLINE - SECONDS)); }
# min(cap, seconds left - reserve), at least 10.
budget() { local b=$(($(left) - $2)); [ "$b" -gt "$1" ] && b=$1; [ "$b" -lt 10 ] && b=10; echo "$b"; }

LOGS=bench-out/gpu-check
rm -rf "$LOGS" && mkdir -p "$LOGS"
TORCH_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
libs=()
for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && libs+=("$d")
done
py=$(python3 -c 'import os, nvidia; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)))' 2>/dev/null || true)
for d in $py; do [ -d "$d" ] && libs+=("$d"); done
export LD_LIBRARY_PATH="$(IFS=:; echo "${libs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"

# The test binaries look for tests/fixtures and kernels/ where they were built: point that
# path here when it does not exist on this machine.
root=$(cat "$BIN/build-root" 2>/dev/null || true)
if [ -n "$root" ] && [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then
    if mkdir -p "$(dirname "$root")" 2>/dev/null && ln -s "$PWD" "$root" 2>/dev/null; then
        echo "gpu-check: $root -> $PWD (the build path the tests read fixtures from)"
    else
        echo "gpu-check: cannot link $root to $PWD: tests that read fixtures will fail" >&2
    fi
fi

# Here a skipped GPU test is a failure.
export TPO_REQUIRE_GPU=1
status=0
results=()
run() {
    local name=$1 cap=$2; shift 2
    local started=$SECONDS r
    timeout -k 5 "$cap" "$@" > "$LOGS/test-$name.log" 2>&1
    case $? in
        0) r=pass ;;
        124 | 137) r="FAIL (timed out after $cap s)"; status=1 ;;
        *) r=FAIL; status=1 ;;
    esac
    grep -E "^device:|skipped|panicked|test result" "$LOGS/test-$name.log" | head -20
    results+=("| $name | $r | $((SECONDS - started)) s |")
}
if [ "$tests" = 1 ]; then
    # Each test binary may take what is left once the benchmarks' share (240 s) is kept.
    reserve=$([ "$bench" = 1 ] && echo 240 || echo 0)
    run gpu_kernels "$(budget 120 "$reserve")" "$BIN/gpu_kernels" --nocapture --test-threads 1
    run gpu_heads "$(budget 120 "$reserve")" "$BIN/gpu_heads" --nocapture --test-threads 1
    run gpu_attention "$(budget 120 "$reserve")" "$BIN/gpu_attention" --nocapture --test-threads 1
    run gpu_model "$(budget 120 "$reserve")" "$BIN/gpu_model" --nocapture --test-threads 1
    # (The PTX checks of the library's unit tests need no GPU: CI runs them.)
    # TPO end to end on the GPU: the built-in demonstration at its quick size (sampling,
    # judging, reference log-probs, DPO and evaluation, all with --device cuda).
    run demo_cuda "$(budget 120 "$reserve")" "$BIN/tpo-engine" --device cuda train --quick --out "$LOGS/demo"
    [ -f "$LOGS/demo/summary.md" ] && cat "$LOGS/demo/summary.md"
fi

bench_note=()
if [ "$bench" = 1 ]; then
    # tpo-engine first (about 1 to 2 min on an H100), then PyTorch with what is left.
    cap=$(budget 210 90)
    started=$SECONDS
    timeout -k 5 "$cap" "$BIN/gpu_bench" > "$LOGS/gpu_bench_tpo.jsonl" 2> "$LOGS/gpu_bench_tpo.err"
    rc=$?
    [ "$rc" = 0 ] || bench_note+=("- tpo-engine bench: exit $rc after $((SECONDS - started)) s$([ "$rc" = 124 ] && echo " (timed out at $cap s)"); stderr: $(tail -c 300 "$LOGS/gpu_bench_tpo.err" | tr '\n' ' ')")
    cap=$(budget 210 5)
    started=$SECONDS
    LD_LIBRARY_PATH=$TORCH_LD_LIBRARY_PATH PYTHONUNBUFFERED=1 timeout -k 5 "$cap" \
        python3 scripts/gpu_bench_torch.py > "$LOGS/gpu_bench_torch.jsonl" 2> "$LOGS/gpu_bench_torch.err"
    rc=$?
    [ "$rc" = 0 ] || bench_note+=("- PyTorch bench: exit $rc after $((SECONDS - started)) s$([ "$rc" = 124 ] && echo " (timed out at $cap s)"); stderr: $(tail -c 300 "$LOGS/gpu_bench_torch.err" | tr '\n' ' ')")
    python3 scripts/gpu_bench_table.py "$LOGS/gpu_bench_tpo.jsonl" "$LOGS/gpu_bench_torch.jsonl" \
        > "$LOGS/gpu_bench_table.md" 2>&1
    [ ${#bench_note[@]} -eq 0 ] || printf '%s\n' "${bench_note[@]}" >> "$LOGS/gpu_bench_table.md"
fi

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cat "$LOGS"/test-*.log > "$OUT/gpu_check_tests.log" 2>/dev/null
    for f in gpu_bench_tpo.jsonl gpu_bench_torch.jsonl gpu_bench_table.md; do
        [ -f "$LOGS/$f" ] && cp "$LOGS/$f" "$OUT/$f"
    done
fi

echo
if [ "$tests" = 1 ]; then
    echo "| check | result | time |"
    echo "|---|---|---|"
    printf '%s\n' "${results[@]}"
    echo
fi
if [ "$bench" = 1 ]; then
    cat "$LOGS/gpu_bench_table.md"
    echo
fi
echo "gpu-check: $SECONDS s in all; logs in $LOGS/"
exit $status
