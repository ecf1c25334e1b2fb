#!/usr/bin/env bash
# Measures the thought-format options (--prefill-thought, --force-response,
# --max-thought-tokens) on the built-in demonstration's task, with the demonstration's
# settings (src/tpo/demo.rs: 3 iterations of 128 prompts, K 8, 500 held out, the same
# prompts and judge), for two seeds:
#   seed    the demonstration's seed (assets/seed), which follows the thought format;
#   direct  tests/fixtures/direct-seed, the same seed fine-tuned to answer the thought prompt
#           directly (scripts/make-direct-seed.sh), which never writes the format.
# and five settings: off (--no-prefill-thought --no-force-response), prefill only
# (--no-force-response), train's defaults (prefill and force), and the defaults with a thought
# budget of 64 and of 32 tokens. Each run's summary table (malformed and forced rates,
# held-out score and win rate by iteration) is printed, and kept under OUT_DIR (default
# target/measure-format). About 3.5 minutes on 2 cores (10 runs, up to 30 s each).
#
#   bash scripts/measure-format.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/measure-format}
THREADS=${THREADS:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
BIN=$CARGO_TARGET_DIR/release/tpo-engine
rm -rf "$OUT"
mkdir -p "$OUT"
"$BIN" task-data --what seed --out "$OUT/seed"
"$BIN" task-data --what prompts --count 384 --seed 1 --out "$OUT/prompts.jsonl"
"$BIN" task-data --what prompts --count 500 --seed 2 --out "$OUT/heldout.jsonl"

# The demonstration's settings (src/tpo/demo.rs, `config`).
demo=(--judge builtin:last-digit --judge-retries 0 --judge-batch-size 256 --iterations 3
      --prompts-per-iteration 128 --samples 8 --max-new-tokens 96 --temperature 0.8
      --top-p 0.95 --gen-batch-size 64 --eval-temperature 0 --rho 0 --reference previous
      --loss sigmoid --beta 0.3 --lr 5e-5 --lr-schedule constant --weight-decay 0
      --max-grad-norm 1 --epochs 1 --batch-size 16 --micro-batch-tokens 4096 --seed 0)

run() { # NAME MODEL [OPTIONS...]
    local name=$1 model=$2
    shift 2
    local started=$(date +%s)
    echo
    echo "## $name: ${*:-no options}"
    if "$BIN" --threads "$THREADS" train --model "$model" --prompts "$OUT/prompts.jsonl" \
        --heldout "$OUT/heldout.jsonl" "${demo[@]}" "$@" --out "$OUT/$name" \
        >"$OUT/$name.stdout" 2>"$OUT/$name.log"; then
        cat "$OUT/$name.stdout"
    else
        echo "stopped: $(grep -m1 '^Error' "$OUT/$name.log" || tail -n 1 "$OUT/$name.log")"
    fi
    echo "($(( $(date +%s) - started )) s)"
}

for model in seed direct; do
    dir=$OUT/seed
    [ "$model" = direct ] && dir=tests/fixtures/direct-seed
    run "$model-off" "$dir" --no-prefill-thought --no-force-response
    run "$model-prefill" "$dir" --no-force-response
    run "$model-default" "$dir"
    run "$model-budget64" "$dir" --max-thought-tokens 64
    run "$model-budget32" "$dir" --max-thought-tokens 32
done
