#!/usr/bin/env bash
# Checkpoints written by training load in transformers unchanged. Makes a small bf16 Llama
# with `init-model`, trains it briefly with `tpo-engine dpo` (examples/pairs.jsonl) and
# `tpo-engine sft` (examples/sft.jsonl), then loads each written model with transformers
# and checks, for examples/sft.jsonl, that its completion log-probs equal what
# `tpo-engine logprobs` reports (scripts/check_checkpoint_hf.py). Needs scripts/python-env.sh.
# Usage: scripts/check-checkpoint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/python-env.sh first" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/tpo-engine
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" init-model --out "$work/base" --hidden 64 --layers 2 --heads 4 --kv-heads 2 \
  --intermediate 160 --vocab 1024 --max-positions 256 --dtype bf16
"$bin" dpo --model "$work/base" --pairs examples/pairs.jsonl --out "$work/dpo" \
  --lr 1e-3 --epochs 3 --batch-size 2 --save-steps 2
"$bin" sft --model "$work/base" --data examples/sft.jsonl --out "$work/sft" --lr 1e-3 --epochs 2
for model in "$work/dpo/checkpoint-2" "$work/dpo/model" "$work/sft/model"; do
  "$bin" logprobs --model "$model" --input examples/sft.jsonl --out "$work/ours.jsonl"
  .venv/bin/python scripts/check_checkpoint_hf.py "$model" examples/sft.jsonl "$work/ours.jsonl"
done
echo "all checkpoints load in transformers with matching log-probs"
