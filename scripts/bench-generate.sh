#!/usr/bin/env bash
# Generation throughput of tpo-engine (--precision f32 and bf16) and of transformers' generate
# (f32 and bf16), on one
# machine, in one run; sampling at temperature 0.8, top-p 0.95, EOS ignored on both sides.
# SHAPE 7m: the benchmark config (Llama, hidden 256, 4 layers, 8 heads, 4 KV heads,
# intermediate 688, vocab 8192), 4 prompts of 32 tokens, 8 samples each, 64 new tokens.
# SHAPE 135m: a real small checkpoint's shape (hidden 576, 30 layers, 9 heads, 3 KV heads,
# intermediate 1536, vocab 49152, tied), 8 prompts of 32 tokens, 8 samples, 128 new tokens.
# Random weights (init-model). Needs scripts/python-env.sh first.
# Usage: scripts/bench-generate.sh [THREADS] [SHAPE]   (defaults 2, 7m)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
shape=${2:-7m}
out=bench-out
case $shape in
  7m) prompts=4 new=64 init=() ;;
  135m) prompts=8 new=128
    init=(--hidden 576 --layers 30 --heads 9 --kv-heads 3 --intermediate 1536 --vocab 49152
      --max-positions 2048 --tie-embeddings) ;;
  *) echo "SHAPE: expected 7m or 135m, got '$shape'" >&2; exit 1 ;;
esac
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/tpo-engine
model=$out/model-$shape
[ -d "$model" ] || "$bin" init-model --out "$model" --seed 1 "${init[@]}"
.venv/bin/python scripts/make_bench_prompts.py "$model" "$out/prompts-$shape.jsonl" "$prompts" 32
tokens=$((prompts * 8 * new))
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | xargs)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($flags), $(date -u +%F); shape $shape"
for precision in f32 bf16; do
  for i in 1 2 3 4 5; do
    "$bin" --threads "$threads" --precision "$precision" generate --model "$model" \
      --prompts "$out/prompts-$shape.jsonl" --no-chat-template \
      --samples 8 --max-new-tokens "$new" --temperature 0.8 --top-p 0.95 --ignore-eos --seed "$i" \
      --out "$out/completions.jsonl" 2>&1 | sed "s/^/tpo-engine $precision: /"
  done > "$out/ours-$shape-$precision.log"
  cat "$out/ours-$shape-$precision.log"
  # The first "(N tokens/s)" of each summary line is the whole generation's rate.
  grep -o '([0-9]* tokens/s)' "$out/ours-$shape-$precision.log" | awk 'NR % 3 == 1' | tr -dc '0-9\n' | sort -n \
    | awk -v t="$tokens" -v p="$precision" '{ r[NR] = $1 } END { printf "tpo-engine %s: %d tokens; tokens/s best %d, median %d (5 runs)\n", p, t, r[NR], r[3] }'
done
for dtype in f32 bf16; do
  OMP_NUM_THREADS=$threads .venv/bin/python scripts/bench_generate_hf.py "$model" "$out/prompts-$shape.jsonl" \
    "$threads" --dtype "$dtype" --new-tokens "$new" 2>&1 | grep -v -i warn
done
