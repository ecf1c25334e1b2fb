#!/usr/bin/env bash
# One DPO training step, tpo-engine against PyTorch, on one machine, in one run. SHAPE is 7m
# (Llama, hidden 256, 4 layers, 8 heads, 4 KV heads, intermediate 688, vocab 8192) or 135m (a
# real small checkpoint's shape: hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate
# 1536, vocab 49152, tied); random weights. 4 pairs = 8 sequences of 256 tokens (64 prompt +
# 192 completion), sigmoid loss, backward, clipping, AdamW. Ours is the criterion benches
# dpo_train_step/SHAPE-8x256 (f32 products) and dpo_train_step_bf16/SHAPE-8x256 (bf16
# products on the best kernel this CPU has) in benches/train.rs on the global rayon pool;
# PyTorch's is
# scripts/bench_train_torch.py twice: eager attention in f32, and SDPA under bf16 autocast.
# Every token of the batch counts: 2048 per step. Needs scripts/python-env.sh first.
# Usage: scripts/bench-train.sh [THREADS] [SHAPE]   (defaults 2, 7m)
# Prints the three rates and our ratios; writes them with the machine to bench-out/train-SHAPE.json.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
shape=${2:-7m}
tokens=2048
out=bench-out
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/python-env.sh first" >&2; exit 1; }
case $shape in 7m | 135m) ;; *) echo "SHAPE: expected 7m or 135m, got '$shape'" >&2; exit 1 ;; esac
mkdir -p "$out"
cpu=$(lscpu | grep -m1 'Model name' | cut -d: -f2 | xargs)
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | xargs)
echo "machine: $(nproc) cores, $cpu ($flags), $(date -u +%F); $threads threads; shape $shape"

TPO_BENCH_SHAPE=$shape RAYON_NUM_THREADS=$threads cargo bench --bench train -- --noplot 2>&1 \
  | tee "$out/train-ours-$shape.log"
# criterion: "ID   time:   [low unit mid unit high unit]", the time on the id's line or a
# later one. The middle value is the estimate.
criterion_s() {
  awk -v id="$1/$shape-8x256" '
    index($0, id) { found = 1 }
    found && /time:/ {
      sub(/.*\[/, ""); v = $3; u = $4
      f = u == "s" ? 1 : u == "ms" ? 1e-3 : (u == "µs" || u == "us") ? 1e-6 : u == "ns" ? 1e-9 : 0
      if (f) printf "%.9f\n", v * f
      exit
    }' "$out/train-ours-$shape.log"
}
ours_s=$(criterion_s dpo_train_step)
ours_bf16_s=$(criterion_s dpo_train_step_bf16)
bf16_path=$(grep -m1 -o 'bf16 products on .*' "$out/train-ours-$shape.log" | sed 's/bf16 products on //')
if [ -z "$ours_s" ] || [ -z "$ours_bf16_s" ]; then
  echo "no 'dpo_train_step[_bf16]/$shape-8x256 ... time: [...]' lines in the cargo bench output ($out/train-ours-$shape.log)" >&2
  exit 1
fi

torch_run() {
  local o
  o=$(OMP_NUM_THREADS=$threads .venv/bin/python scripts/bench_train_torch.py --threads "$threads" \
    --shape "$shape" --precision "$1" 2>&1) || { echo "$o" >&2; echo "bench_train_torch.py failed" >&2; exit 1; }
  grep '^{"impl"' <<<"$o" || { echo "$o" >&2; echo "no JSON line from bench_train_torch.py" >&2; exit 1; }
}
eager=$(torch_run f32)
bf16=$(torch_run bf16)
OURS_S=$ours_s OURS_BF16_S=$ours_bf16_s BF16_PATH="$bf16_path" EAGER=$eager BF16=$bf16 CPU="$cpu" FLAGS="$flags" NPROC=$(nproc) THREADS=$threads \
  TOKENS=$tokens SHAPE=$shape OUT=$out/train-$shape.json .venv/bin/python - <<'PY'
import datetime, json, os
e = os.environ
eager, bf16 = json.loads(e["EAGER"]), json.loads(e["BF16"])
tokens = int(e["TOKENS"])
ours = tokens / float(e["OURS_S"])
ours_bf16 = tokens / float(e["OURS_BF16_S"])
result = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    "cpu": e["CPU"], "cpu_flags": e["FLAGS"], "nproc": int(e["NPROC"]), "threads": int(e["THREADS"]),
    "shape": e["SHAPE"], "tokens_per_step": tokens,
    "tpo_engine": {"step_ms": round(1e3 * float(e["OURS_S"]), 3), "tokens_per_s": round(ours, 1),
                   "source": f"criterion estimate of dpo_train_step/{e['SHAPE']}-8x256"},
    "tpo_engine_bf16": {"step_ms": round(1e3 * float(e["OURS_BF16_S"]), 3), "tokens_per_s": round(ours_bf16, 1),
                        "kernel": e["BF16_PATH"],
                        "source": f"criterion estimate of dpo_train_step_bf16/{e['SHAPE']}-8x256"},
    "pytorch_eager_f32": eager,
    "pytorch_sdpa_bf16": bf16,
    "ratio_eager_f32": round(ours / eager["tokens_per_s_median"], 3),
    "ratio_sdpa_bf16": round(ours / bf16["tokens_per_s_median"], 3),
    "ratio_bf16_sdpa_bf16": round(ours_bf16 / bf16["tokens_per_s_median"], 3),
}
with open(e["OUT"], "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
print(f"tpo-engine f32:    {ours:8.0f} tokens/s ({1e3 * float(e['OURS_S']):.1f} ms/step, criterion estimate)")
print(f"tpo-engine bf16:   {ours_bf16:8.0f} tokens/s ({1e3 * float(e['OURS_BF16_S']):.1f} ms/step; {e['BF16_PATH']})")
for name, run in [("pytorch eager f32", eager), ("pytorch sdpa bf16", bf16)]:
    print(f"{name}: {run['tokens_per_s_median']:8.0f} tokens/s ({run['step_ms_median']:.1f} ms/step, median; "
          f"torch {run['torch']}); ours f32 / it: {ours / run['tokens_per_s_median']:.2f}x, "
          f"ours bf16 / it: {ours_bf16 / run['tokens_per_s_median']:.2f}x")
print(f"wrote {e['OUT']}")
PY
