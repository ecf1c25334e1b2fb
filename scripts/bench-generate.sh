#!/usr/bin/env bash
# Generation throughput of tpo-engine and of transformers' generate, on one machine, in one
# run: the benchmark config (Llama, hidden 256, 4 layers, 8 heads, 4 KV heads, intermediate
# 688, vocab 8192), 4 prompts of 32 tokens, 8 samples each, 64 new tokens (EOS ignored on
# both sides), temperature 0.8, top-p 0.95. Needs scripts/python-env.sh first.
# Usage: scripts/bench-generate.sh [THREADS]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
out=bench-out
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/tpo-engine
[ -d "$out/model" ] || "$bin" init-model --out "$out/model" --seed 1
.venv/bin/python scripts/make_bench_prompts.py "$out/model" "$out/prompts.jsonl" 4 32
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
for i in 1 2 3 4 5; do
  "$bin" --threads "$threads" generate --model "$out/model" --prompts "$out/prompts.jsonl" --no-chat-template \
    --samples 8 --max-new-tokens 64 --temperature 0.8 --top-p 0.95 --ignore-eos --seed "$i" \
    --out "$out/completions.jsonl" 2>&1 | sed 's/^/tpo-engine: /'
done > "$out/ours.log"
cat "$out/ours.log"
# The first "(N tokens/s)" of each summary line is the whole generation's rate.
grep -o '([0-9]* tokens/s)' "$out/ours.log" | awk 'NR % 3 == 1' | tr -dc '0-9\n' | sort -n \
  | awk '{ r[NR] = $1 } END { printf "tpo-engine: 2048 tokens; tokens/s best %d, median %d (5 runs)\n", r[NR], r[3] }'
OMP_NUM_THREADS=$threads .venv/bin/python scripts/bench_generate_hf.py "$out/model" "$out/prompts.jsonl" "$threads" 2>&1 \
  | grep -v -i warn
