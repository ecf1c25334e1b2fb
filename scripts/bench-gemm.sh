#!/usr/bin/env bash
# Our matrix products at the 135m shape's real product shapes (benches/gemm.rs: f32, and bf16
# on every kernel this CPU runs) beside
# torch.matmul in f32 and bf16 on the same machine, in one run: GFLOP/s of each, and ours as
# a fraction of the best f32 and the best bf16 rate torch reached here (the measured peaks).
# Needs scripts/python-env.sh first. Usage: scripts/bench-gemm.sh [THREADS]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
out=bench-out
mkdir -p "$out"
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/python-env.sh first" >&2; exit 1; }
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | xargs)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($flags), $(date -u +%F); $threads threads"
RAYON_NUM_THREADS=$threads cargo bench --bench gemm 2>/dev/null | grep '^{' > "$out/gemm-ours.jsonl"
# The LM head's chunk: as many rows as the log-prob pass holds at once for V = 49152.
rows=$(python3 -c 'import json,sys; print([r["n"] for r in map(json.loads, open(sys.argv[1])) if r["name"] == "lm_head_chunk"][0])' "$out/gemm-ours.jsonl")
OMP_NUM_THREADS=$threads .venv/bin/python scripts/gemm_torch.py "$threads" "$rows" > "$out/gemm-torch.jsonl"
python3 - "$out/gemm-ours.jsonl" "$out/gemm-torch.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for f in sys.argv[1:] for l in open(f)]
peak = {t: max(r["gflops"] for r in rows if r["impl"] == t) for t in ["torch-f32", "torch-bf16"]}
by = {(r["impl"], r["name"], r["pass"]): r for r in rows}
print(f"measured peaks: torch f32 {peak['torch-f32']:.0f} GFLOP/s, torch bf16 {peak['torch-bf16']:.0f} GFLOP/s")
print(f"{'ours':28} {'product':14} {'pass':8} {'shape':>18} {'ours':>7} {'torch f32':>9} {'torch bf16':>10} "
      f"{'ours/f32 peak':>13} {'ours/bf16 peak':>14}")
for r in rows:
    if not r["impl"].startswith("tpo-engine"):
        continue
    f, b = by[("torch-f32", r["name"], r["pass"])], by[("torch-bf16", r["name"], r["pass"])]
    shape = f"{r['n']}x{r['c']}x{r['oc']}"
    print(f"{r['impl']:28} {r['name']:14} {r['pass']:8} {shape:>18} {r['gflops']:7.0f} {f['gflops']:9.0f} {b['gflops']:10.0f} "
          f"{r['gflops'] / peak['torch-f32']:13.2f} {r['gflops'] / peak['torch-bf16']:14.2f}")
PY
