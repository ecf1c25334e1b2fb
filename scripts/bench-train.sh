#!/usr/bin/env bash
# One DPO training step, tpo-engine against PyTorch eager, on one machine, in one run: the
# benchmark config (Llama, hidden 256, 4 layers, 8 heads, 4 KV heads, intermediate 688, vocab
# 8192), 4 pairs = 8 sequences of 256 tokens (64 prompt + 192 completion), sigmoid loss,
# backward, clipping, AdamW. Ours is the criterion bench dpo_train_step/8x256 in
# benches/train.rs on the global rayon pool; PyTorch's is scripts/bench_train_torch.py. Both
# count every token of the batch: 2048 per step. Needs scripts/python-env.sh first.
# Usage: scripts/bench-train.sh [THREADS]   (default 2)
# Prints both rates and their ratio; writes them with the machine to bench-out/train.json.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
tokens=2048
out=bench-out
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/python-env.sh first" >&2; exit 1; }
if [ ! -f benches/train.rs ] || ! grep -q '^name = "train"' Cargo.toml; then
  echo "no Rust train bench yet: benches/train.rs and a [[bench]] name = \"train\" entry in Cargo.toml are needed" >&2
  exit 1
fi
mkdir -p "$out"
cpu=$(lscpu | grep -m1 'Model name' | cut -d: -f2 | xargs)
echo "machine: $(nproc) cores, $cpu, $(date -u +%F); $threads threads"

RAYON_NUM_THREADS=$threads cargo bench --bench train -- --noplot 2>&1 | tee "$out/train-ours.log"
# criterion: "dpo_train_step/8x256   time:   [low unit mid unit high unit]", the time on the
# id's line or a later one. The middle value is the estimate.
ours_s=$(awk '
  /dpo_train_step\/8x256/ { found = 1 }
  found && /time:/ {
    sub(/.*\[/, ""); v = $3; u = $4
    f = u == "s" ? 1 : u == "ms" ? 1e-3 : (u == "µs" || u == "us") ? 1e-6 : u == "ns" ? 1e-9 : 0
    if (f) printf "%.9f\n", v * f
    exit
  }' "$out/train-ours.log")
if [ -z "$ours_s" ]; then
  echo "no 'dpo_train_step/8x256 ... time: [...]' line in the cargo bench output ($out/train-ours.log)" >&2
  exit 1
fi

torch_out=$(OMP_NUM_THREADS=$threads .venv/bin/python scripts/bench_train_torch.py --threads "$threads" 2>&1) \
  || { echo "$torch_out" >&2; echo "bench_train_torch.py failed" >&2; exit 1; }
torch_json=$(grep '^{"impl"' <<<"$torch_out") \
  || { echo "$torch_out" >&2; echo "no JSON line from bench_train_torch.py" >&2; exit 1; }
OURS_S=$ours_s TORCH_JSON=$torch_json CPU=$cpu NPROC=$(nproc) THREADS=$threads TOKENS=$tokens OUT=$out/train.json \
  .venv/bin/python - <<'EOF'
import datetime, json, os
torch_run = json.loads(os.environ["TORCH_JSON"])
tokens = int(os.environ["TOKENS"])
ours = tokens / float(os.environ["OURS_S"])
theirs = torch_run["tokens_per_s_median"]
result = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    "cpu": os.environ["CPU"], "nproc": int(os.environ["NPROC"]), "threads": int(os.environ["THREADS"]),
    "tokens_per_step": tokens,
    "tpo_engine": {"step_ms": round(1e3 * float(os.environ["OURS_S"]), 3), "tokens_per_s": round(ours, 1),
                   "source": "criterion estimate of dpo_train_step/8x256"},
    "pytorch_eager": torch_run,
    "ratio": round(ours / theirs, 3),
}
with open(os.environ["OUT"], "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
print(f"tpo-engine:    {ours:8.0f} tokens/s ({1e3 * float(os.environ['OURS_S']):.1f} ms/step, criterion estimate)")
print(f"pytorch-eager: {theirs:8.0f} tokens/s ({torch_run['step_ms_median']:.1f} ms/step, median; "
      f"torch {torch_run['torch']})")
print(f"ratio: {ours / theirs:.2f}x; wrote {os.environ['OUT']}")
EOF
