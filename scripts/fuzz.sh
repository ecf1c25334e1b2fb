#!/usr/bin/env bash
# Runs the fuzz targets under fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each, two at a time:
# safetensors_header, jsonl_inputs, thought_parser, chat_template, judge_answers.
# Needs a nightly toolchain (rustup) and cargo-fuzz (`cargo install cargo-fuzz`, done here if
# missing). A crash leaves its input in fuzz/artifacts/TARGET/; copy it to
# fuzz/regressions/TARGET/ so that `cargo test` (tests/fuzz_regressions.rs) replays it.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 600 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_header jsonl_inputs thought_parser chat_template judge_answers)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || { echo "no nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
cd fuzz
for t in "${targets[@]}"; do cargo +nightly fuzz build --release "$t"; done
mkdir -p logs
run() {
  local t=$1
  mkdir -p "corpus/$t"
  if [ -d "seeds/$t" ]; then cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
  cargo +nightly fuzz run --release "$t" "corpus/$t" -- -max_total_time="$secs" \
    -rss_limit_mb=4096 -timeout=10 > "logs/$t.log" 2>&1
}
status=0
# Two at a time: one per core.
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do run "$t" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
done
for t in "${targets[@]}"; do
  echo "$t: $(grep -E 'Done [0-9]+ runs' "logs/$t.log" | tail -1)"
  ls "artifacts/$t" 2>/dev/null | sed "s|^|  crash input: fuzz/artifacts/$t/|" || true
done
exit $status
