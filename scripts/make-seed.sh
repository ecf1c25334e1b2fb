#!/usr/bin/env bash
# Makes the built-in demo's seed model (assets/seed/) with the engine's own commands:
# init-model (tokenizer trained on the task's text, digits split), then sft on the task's
# seed data (direct answers, and thought-prompt answers with a mix of thought styles; see
# src/tpo/task.rs). A one-off: about 9 minutes on 2 cores. The binary embeds the result,
# so rebuild after running it.
#
#   bash scripts/make-seed.sh [OUT_DIR]     (default: assets/seed)
#
# PROVISIONAL: the seed this makes (the one in assets/seed/) has learned the formats and
# the style mix but NOT the running-digit working (its working is random digits), so
# thinking does not help it yet; see the commit message.
# Knobs (environment): THREADS (2), EXAMPLES (SFT examples), BATCH.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-assets/seed}
THREADS=${THREADS:-2}
EXAMPLES=${EXAMPLES:-40000}
BATCH=${BATCH:-32}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
BIN=$CARGO_TARGET_DIR/release/tpo-engine
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

"$BIN" task-data --what corpus --count 4000 --seed 101 --out "$WORK/corpus.txt"
"$BIN" init-model --out "$WORK/init" --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
    --intermediate 384 --vocab 512 --max-positions 256 --corpus "$WORK/corpus.txt" \
    --split-digits --seed 1
"$BIN" task-data --what sft --count "$EXAMPLES" --seed 102 --out "$WORK/sft.jsonl"
"$BIN" --threads "$THREADS" sft --model "$WORK/init" --data "$WORK/sft.jsonl" \
    --out "$WORK/run" --lr 3e-3 --lr-schedule cosine --warmup-steps 50 \
    --batch-size "$BATCH" --weight-decay 0.01 --seed 103

mkdir -p "$OUT"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
    cp "$WORK/run/model/$f" "$OUT/$f"
done
echo "seed written to $OUT in $(( $(date +%s) - start )) s (sft metrics: $WORK/run/metrics.jsonl, removed)"
