#!/usr/bin/env bash
# Makes the built-in demo's seed model (assets/seed/) with the engine's own commands:
# init-model (tokenizer trained on the task's text, digits split), then sft in two stages on
# the task's seed data (see src/tpo/task/seed_data.rs): first working-only examples (thought prompt,
# the running-digit working, the answer), which teach the working's copy-and-add steps;
# then the full mix (direct answers, and thought-prompt answers with the working or one of
# two useless thoughts), which teaches the formats and the style mix and keeps the working.
# A one-off: about 6.5 minutes on 2 otherwise idle cores (377 s, plus the build). The
# binary embeds the result, so rebuild after running it.
#
#   bash scripts/make-seed.sh [OUT_DIR]     (default: assets/seed)
#
# Knobs (environment): THREADS (2), WORKING (stage-1 examples), EXAMPLES (stage-2
# examples), BATCH, KEEP_METRICS (a path prefix: keep both stages' sft metrics there).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-assets/seed}
THREADS=${THREADS:-2}
WORKING=${WORKING:-32000}
EXAMPLES=${EXAMPLES:-24000}
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
"$BIN" task-data --what working --count "$WORKING" --seed 102 --out "$WORK/working.jsonl"
"$BIN" --threads "$THREADS" sft --model "$WORK/init" --data "$WORK/working.jsonl" \
    --out "$WORK/stage1" --lr 2e-3 --lr-schedule cosine --warmup-steps 30 \
    --batch-size "$BATCH" --weight-decay 0.01 --seed 103
"$BIN" task-data --what sft --count "$EXAMPLES" --seed 104 --out "$WORK/sft.jsonl"
"$BIN" --threads "$THREADS" sft --model "$WORK/stage1/model" --data "$WORK/sft.jsonl" \
    --out "$WORK/stage2" --lr 1e-3 --lr-schedule cosine \
    --batch-size "$BATCH" --weight-decay 0.01 --seed 105

mkdir -p "$OUT"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
    cp "$WORK/stage2/model/$f" "$OUT/$f"
done
if [ -n "${KEEP_METRICS:-}" ]; then
    cp "$WORK/stage1/metrics.jsonl" "$KEEP_METRICS.stage1.jsonl"
    cp "$WORK/stage2/metrics.jsonl" "$KEEP_METRICS.stage2.jsonl"
fi
echo "seed written to $OUT in $(( $(date +%s) - start )) s"
