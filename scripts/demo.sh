#!/usr/bin/env bash
# The main job on a fresh machine, no downloads: make a small random Llama checkpoint (once),
# sample 8 completions for each prompt of examples/prompts.jsonl, then train it by DPO on
# examples/pairs.jsonl for a few updates.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/tpo-engine
model=target/demo/model
[ -d "$model" ] || "$bin" init-model --out "$model"
"$bin" generate --model "$model" --prompts examples/prompts.jsonl --samples 8 --max-new-tokens 64 \
  --temperature 0.8 --top-p 0.95 --seed 0 --out target/demo/completions.jsonl
echo "first completion of the first prompt (random weights, so the text is noise):"
head -n 1 target/demo/completions.jsonl | cut -c 1-400
rm -rf target/demo/dpo
"$bin" dpo --model "$model" --pairs examples/pairs.jsonl --out target/demo/dpo --lr 1e-4 \
  --epochs 4 --batch-size 4
echo "DPO metrics, first and last update (target/demo/dpo/metrics.jsonl):"
sed -n '1p;$p' target/demo/dpo/metrics.jsonl | cut -c 1-300
