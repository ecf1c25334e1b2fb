#!/usr/bin/env bash
# Our CPU speed against an earlier revision of ours, on one machine, in one run: the train
# bench (criterion dpo_train_step/7m-8x256, the 7m config of scripts/bench-train.sh) and the
# generation bench (the config of scripts/bench-generate.sh, 5 runs each), the two builds
# taking turns. For a change that must not cost speed (a refactor): both figures of both
# builds, with the CPU model and the date.
# Usage: scripts/bench-compare.sh REV [THREADS]   (REV: a commit, e.g. main~3; default 2 threads)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: scripts/bench-compare.sh REV [THREADS]}
threads=${2:-2}
out=bench-out/compare
old=$out/old-tree
mkdir -p "$out"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
echo "machine: $(nproc) cores, $cpu, $(date -u +%F); $threads threads; $rev against the working tree"

rm -rf "$old"
git worktree prune
git worktree add --detach "$old" "$rev" >/dev/null
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || true' EXIT
# The old tree builds into its own target dir, with the same nvcc (the kernels do not
# matter on the CPU, but build.rs wants one or warns).
[ -d .cuda-toolchain ] && ln -s "$PWD/.cuda-toolchain" "$old/.cuda-toolchain"
# The old tree's build is kept between runs in its own target dir.
old_target=$PWD/$out/old-target
for tree in "$old" .; do
  target=$([ "$tree" = . ] && echo "$PWD/target" || echo "$old_target")
  (cd "$tree" && CARGO_TARGET_DIR=$target cargo build --release --quiet \
    && CARGO_TARGET_DIR=$target cargo bench --bench train --no-run --quiet)
done

train_s() { # criterion's middle estimate of the 7m train step, in seconds
  awk '/dpo_train_step\/(7m-)?8x256/ { found = 1 }
    found && /time:/ { sub(/.*\[/, ""); v = $3; u = $4
      f = u == "s" ? 1 : u == "ms" ? 1e-3 : (u == "µs" || u == "us") ? 1e-6 : 0
      printf "%.6f\n", v * f; exit }' "$1"
}
[ -d "$out/model" ] || target/release/tpo-engine init-model --out "$out/model" --seed 1 >/dev/null
python3 - "$out/prompts.jsonl" <<'PY'
import json, sys
# 4 prompts; the model's tokenizer splits these into about 32 tokens each.
words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing".split()
with open(sys.argv[1], "w") as f:
    for i in range(4):
        f.write(json.dumps({"prompt": " ".join(words[i:] + words[:i]) * 2}) + "\n")
PY
gen_rate() { # tokens/s of one generate run with binary $1
  "$1" --threads "$threads" generate --model "$out/model" --prompts "$out/prompts.jsonl" \
    --no-chat-template --samples 8 --max-new-tokens 64 --temperature 0.8 --top-p 0.95 \
    --ignore-eos --seed "$2" --out "$out/completions.jsonl" 2>&1 \
    | grep -o '([0-9]* tokens/s)' | head -1 | tr -dc '0-9'
}
for round in 1 2; do
  for tree in "$old" .; do
    name=$([ "$tree" = . ] && echo new || echo old)
    target=$([ "$tree" = . ] && echo "$PWD/target" || echo "$old_target")
    (cd "$tree" && CARGO_TARGET_DIR=$target RAYON_NUM_THREADS=$threads \
      cargo bench --bench train -- --noplot 2>&1) > "$out/train-$name-$round.log"
    echo "train $name round $round: $(train_s "$out/train-$name-$round.log") s per step"
    rates=""
    for seed in 1 2 3 4 5; do rates="$rates $(gen_rate "$target/release/tpo-engine" "$seed")"; done
    echo "generate $name round $round: tokens/s$rates"
  done
done
