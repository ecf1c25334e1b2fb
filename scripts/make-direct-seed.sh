#!/usr/bin/env bash
# Makes a "direct" variant of the built-in demo's seed (tests/fixtures/direct-seed/): the
# embedded seed (assets/seed/, see scripts/make-seed.sh), fine-tuned with the engine's own sft
# on the task's instructions wrapped in the generic thought prompt and answered directly,
# with no marker ("The answer is 7."; `task-data --what direct`, see direct_sft_data in
# src/tpo/task/seed_data.rs). Why: tests of forcing the thought format at decoding time need
# a model that never writes it by itself. Asked the thought prompt, this one writes "The
# answer is N." and stops: no "My private thoughts:" or "My response:" in 0 of 4096 samples
# at temperature 0.8, 1.0 or 1.5 (the seed writes them in nearly all). With the markers put
# in its turn it still goes on: after "My private thoughts: The answer is 7.\nMy response:"
# it writes " The answer is N." (76%) or " A=d so d." (23%), never nothing. Few updates on
# purpose: longer fine-tuning (1024 examples) leaves the first-token marker odds as low but
# spoils what it writes after forced markers ("." alone, " answer is 7.").
# Same architecture and tokenizer as the seed; model.safetensors 3.7 MB. 256 examples, 16
# updates: 3 s on 2 cores (plus the build); the same bytes for any thread count.
#
#   bash scripts/make-direct-seed.sh [OUT_DIR]     (default: tests/fixtures/direct-seed)
#
# Knobs (environment): THREADS (2), EXAMPLES (256), BATCH (16).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-tests/fixtures/direct-seed}
THREADS=${THREADS:-2}
EXAMPLES=${EXAMPLES:-256}
BATCH=${BATCH:-16}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
BIN=$CARGO_TARGET_DIR/release/tpo-engine
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

"$BIN" task-data --what seed --out "$WORK/seed"
"$BIN" task-data --what direct --count "$EXAMPLES" --seed 201 --out "$WORK/direct.jsonl"
"$BIN" --threads "$THREADS" sft --model "$WORK/seed" --data "$WORK/direct.jsonl" \
    --out "$WORK/sft" --lr 1e-3 --lr-schedule cosine \
    --batch-size "$BATCH" --seed 202

mkdir -p "$OUT"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
    cp "$WORK/sft/model/$f" "$OUT/$f"
done
echo "direct seed written to $OUT in $(( $(date +%s) - start )) s"
