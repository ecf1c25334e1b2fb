#!/usr/bin/env bash
# Memory and speed of LoRA DPO against full DPO on the CPU, through `tpo-engine dpo` itself:
#  - the 135m shape (hidden 576, 30 layers, 9/3 heads, intermediate 1536, vocab 49152, tied;
#    random weights): 4 pairs of about 64 + 190 tokens per update, 3 updates, full and LoRA
#    (r 16, alpha 32, every Linear), with f32 and with bf16 products;
#  - the 1B shape (Llama-3.2-1B's: hidden 2048, 16 layers, 32/8 heads, intermediate 8192,
#    vocab 128256, tied; random bf16 weights): full DPO must be refused up front by the
#    memory estimate, and LoRA DPO (2 pairs of about 16 + 48 tokens, 1 update) must run.
# Peak RSS from /usr/bin/time; tokens/s is the median of the updates after the first (the
# first one also pays for the page faults of its first touch of the buffers).
# About 2.3 tokens a made-up word: 27 + 82 words make about 64 + 190 tokens.
# Usage: scripts/measure-lora.sh [THREADS]   (default 2). Writes bench-out/lora/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
out=bench-out/lora
bin=target/release/tpo-engine
cargo build --release --quiet
mkdir -p "$out"
cpu=$(lscpu | grep -m1 'Model name' | cut -d: -f2 | xargs)
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | xargs)
mem=$(free -g | awk '/^Mem:/ {print $2}')
echo "machine: $(nproc) cores, $cpu ($flags), ${mem} GiB, $(date -u +%F); $threads threads"

# pairs FILE N PROMPT_WORDS COMPLETION_WORDS: N pairs of made-up words.
pairs() {
  python3 - "$@" <<'PY'
import json, random, sys
path, n, pw, cw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(0)
syll = ["ta", "ro", "mi", "ke", "su", "na", "lo", "ve", "pi", "du", "sha", "gor"]
word = lambda: "".join(rng.choice(syll) for _ in range(rng.randint(1, 3)))
text = lambda k: " ".join(word() for _ in range(k))
with open(path, "w") as f:
    for _ in range(n):
        f.write(json.dumps({"prompt": text(pw), "chosen": text(cw), "rejected": text(cw)}) + "\n")
PY
}

# run NAME ARGS...: one dpo run under /usr/bin/time; prints "NAME rss_mib tokens_per_s".
run() {
  local name=$1
  shift
  rm -rf "${out:?}/$name"
  /usr/bin/time -v -o "$out/$name.time" "$bin" --threads "$threads" dpo --out "$out/$name" "$@" \
    >"$out/$name.log" 2>&1 || { cat "$out/$name.log" >&2; echo "$name failed" >&2; return 1; }
  local rss
  rss=$(awk -F: '/Maximum resident set size/ {print int($2 / 1024)}' "$out/$name.time")
  python3 - "$out/$name/metrics.jsonl" "$name" "$rss" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
rates = [l["tokens_per_s"] for l in lines[1:]] or [lines[0]["tokens_per_s"]]
print(sys.argv[2], sys.argv[3], round(statistics.median(rates), 1), lines[0]["tokens"])
PY
}

m135=$out/model-135m
[ -d "$m135" ] || "$bin" init-model --out "$m135" --hidden 576 --layers 30 --heads 9 --kv-heads 3 \
  --intermediate 1536 --vocab 49152 --max-positions 2048 --tie-embeddings >/dev/null 2>&1
pairs "$out/pairs-135m.jsonl" 4 27 82
common=(--model "$m135" --pairs "$out/pairs-135m.jsonl" --batch-size 4 --epochs 3 --lr 1e-4)
lora=(--lora-r 16 --lora-alpha 32)
results=()
results+=("$(run full-f32 "${common[@]}")")
results+=("$(run lora-f32 "${common[@]}" "${lora[@]}")")
results+=("$(run full-bf16 --precision bf16 "${common[@]}")")
results+=("$(run lora-bf16 --precision bf16 "${common[@]}" "${lora[@]}")")

m1b=$out/model-1b
[ -d "$m1b" ] || "$bin" init-model --out "$m1b" --hidden 2048 --layers 16 --heads 32 --kv-heads 8 \
  --intermediate 8192 --vocab 128256 --max-positions 2048 --tie-embeddings --dtype bf16 >/dev/null 2>&1
pairs "$out/pairs-1b.jsonl" 2 12 36
common=(--model "$m1b" --pairs "$out/pairs-1b.jsonl" --batch-size 2 --epochs 1 --lr 1e-4)
rm -rf "$out/full-1b"
if "$bin" --threads "$threads" dpo --out "$out/full-1b" "${common[@]}" >"$out/full-1b.log" 2>&1; then
  echo "full DPO on the 1B shape was not refused" >&2
  exit 1
fi
refusal=$(grep -m1 'would need' "$out/full-1b.log")
[ ! -e "$out/full-1b" ] || { echo "the refused run left $out/full-1b" >&2; exit 1; }
echo "full 1B: $refusal"
results+=("$(run lora-1b "${common[@]}" "${lora[@]}")")

printf '%s\n' "${results[@]}" >"$out/results.txt"
CPU="$cpu" FLAGS="$flags" MEM="$mem" THREADS=$threads REFUSAL="$refusal" ROWS="$out/results.txt" \
  OUT=$out/results.json python3 - <<'PY'
import datetime, json, os
e = os.environ
rows = {}
for line in open(e["ROWS"]):
    name, rss, rate, tokens = line.split()
    rows[name] = {"peak_rss_mib": int(rss), "tokens_per_s": float(rate), "tokens_per_update": int(tokens)}
doc = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "cpu": e["CPU"],
       "cpu_flags": e["FLAGS"], "memory_gib": int(e["MEM"]), "threads": int(e["THREADS"]), "runs": rows,
       "full_1b_refusal": e["REFUSAL"]}
for p in ("f32", "bf16"):
    lora, full = rows[f"lora-{p}"], rows[f"full-{p}"]
    doc[f"lora_time_fraction_{p}"] = round(full["tokens_per_s"] / lora["tokens_per_s"], 3)
    doc[f"lora_rss_fraction_{p}"] = round(lora["peak_rss_mib"] / full["peak_rss_mib"], 3)
json.dump(doc, open(e["OUT"], "w"), indent=1)
print("| run | peak RSS (MiB) | tokens/update | tokens/s |")
print("|---|---|---|---|")
for name, r in rows.items():
    print("| %s | %d | %d | %.1f |" % (name, r["peak_rss_mib"], r["tokens_per_update"], r["tokens_per_s"]))
for p in ("f32", "bf16"):
    print("%s: a LoRA update takes %.2f of a full one's time; peak RSS %.2f of full" %
          (p, doc[f"lora_time_fraction_{p}"], doc[f"lora_rss_fraction_{p}"]))
PY
echo "wrote $out/results.json"
